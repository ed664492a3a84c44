# tests/kvm.cmake: the kvm backend's tests (skip cleanly without /dev/kvm).
#   test_kvm          the VMM core: boot, counter, pause, dirty log, state
#                     save/restore into a second VM, compat, throttle
#   test_kvm_backend  the same VM through the hcs seam, and an in-process
#                     live migration through the hcs transfer engine
if(TARGET lm_hcs_kvm)
  lm_add_test(test_kvm SOURCES test_kvm.c LIBS lm_hcs_kvm TIMEOUT 120 LABELS kvm)
endif()
if(TARGET lm_hcs_kvm AND TARGET lm_hcs AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/test_kvm_backend.c)
  lm_add_test(test_kvm_backend SOURCES test_kvm_backend.c LIBS lm_hcs TIMEOUT 180 LABELS kvm)
endif()
