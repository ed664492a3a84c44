# sources.cmake: the kvm backend library (included by hcs/kvm/CMakeLists.txt).
#
# lm_hcs_kvm  the VMM core (vmm.c, state.c), the hcs backend adapter
#             (kvm_backend.c) and the guest program, built here from source:
#             guest/guest.c is compiled freestanding with the host compiler,
#             linked at its load address (guest/guest.ld), turned into a
#             flat binary with objcopy and embedded as a generated C array.
#             Nothing generated is committed.
set(LM_KVM_DIR ${CMAKE_CURRENT_LIST_DIR})
# kvm_backend.c needs hcs/backend.h only (a header): no link to lm_hcs.
find_program(LM_OBJCOPY NAMES objcopy ${CMAKE_OBJCOPY} REQUIRED)

set(lm_kvm_guest_elf ${CMAKE_CURRENT_BINARY_DIR}/kvm_guest.elf)
set(lm_kvm_guest_bin ${CMAKE_CURRENT_BINARY_DIR}/kvm_guest.bin)
set(lm_kvm_guest_c   ${CMAKE_CURRENT_BINARY_DIR}/kvm_guest_blob.c)
# No sanitizer, no PIE, no red zone (no IDT, but keep the habit), no SSE
# from the compiler (the guest uses xmm7 itself), no CET notes.
set(lm_kvm_guest_flags
  -m64 -O2 -std=gnu11 -ffreestanding -fno-builtin -nostdlib -static
  -fno-pic -fno-pie -mno-red-zone -mgeneral-regs-only -fno-stack-protector
  -fno-asynchronous-unwind-tables -fcf-protection=none -fno-sanitize=all
  -Wall -Wextra -Werror
  -Wl,--build-id=none -Wl,-T,${LM_KVM_DIR}/guest/guest.ld)
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  list(APPEND lm_kvm_guest_flags -no-pie)
endif()
add_custom_command(
  OUTPUT ${lm_kvm_guest_c}
  COMMAND ${CMAKE_C_COMPILER} ${lm_kvm_guest_flags} -o ${lm_kvm_guest_elf}
          ${LM_KVM_DIR}/guest/guest.c
  COMMAND ${LM_OBJCOPY} -O binary ${lm_kvm_guest_elf} ${lm_kvm_guest_bin}
  COMMAND ${CMAKE_COMMAND} -DIN=${lm_kvm_guest_bin} -DOUT=${lm_kvm_guest_c}
          -P ${LM_KVM_DIR}/guest/embed.cmake
  DEPENDS ${LM_KVM_DIR}/guest/guest.c ${LM_KVM_DIR}/guest/protocol.h
          ${LM_KVM_DIR}/guest/guest.ld ${LM_KVM_DIR}/guest/embed.cmake
  COMMENT "Building the kvm guest program"
  VERBATIM)

add_library(lm_hcs_kvm STATIC
  ${LM_KVM_DIR}/vmm.c ${LM_KVM_DIR}/state.c ${LM_KVM_DIR}/kvm_backend.c
  ${lm_kvm_guest_c})
target_include_directories(lm_hcs_kvm PUBLIC ${LM_KVM_DIR}/../..)
target_link_libraries(lm_hcs_kvm PUBLIC lm_util Threads::Threads)
