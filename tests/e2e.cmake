# End-to-end tests: real lmshim and lmctl processes on sockets in a temp
# dir (tests/e2e/). Built once both programs exist. test_e2e is the
# default suite; test_e2e_faults (cancels, kill -9, network namespaces)
# carries the label e2e-slow: `ctest -L e2e-slow` runs it, `ctest -LE
# e2e-slow` leaves it out. The ctr check fetches Debian's ctr with
# tests/interop/fetch_ctr.sh (as the rpc interop test does) or skips.
if(TARGET lmshim AND TARGET lmctl)
  pkg_check_modules(LM_E2E_JANSSON REQUIRED IMPORTED_TARGET jansson)
  pkg_check_modules(LM_E2E_CRYPTO REQUIRED IMPORTED_TARGET libcrypto)
  foreach(t test_e2e test_e2e_faults)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/e2e/${t}.c)
      if(t STREQUAL "test_e2e")
        lm_add_test(${t} SOURCES e2e/${t}.c e2e/e2e.c
                    LIBS lm_rpc lm_proto lm_util PkgConfig::LM_E2E_JANSSON PkgConfig::LM_E2E_CRYPTO
                    TIMEOUT 300 LABELS e2e)
      else()
        lm_add_test(${t} SOURCES e2e/${t}.c e2e/e2e.c
                    LIBS lm_rpc lm_proto lm_util PkgConfig::LM_E2E_JANSSON PkgConfig::LM_E2E_CRYPTO
                    TIMEOUT 600 LABELS "e2e;e2e-slow")
      endif()
      target_compile_definitions(${t} PRIVATE
        LM_E2E_LMSHIM="$<TARGET_FILE:lmshim>" LM_E2E_LMCTL="$<TARGET_FILE:lmctl>"
        LM_E2E_FETCH_CTR="${CMAKE_CURRENT_SOURCE_DIR}/interop/fetch_ctr.sh"
        LM_E2E_CTR_DIR="${CMAKE_BINARY_DIR}/tests/interop/ctr")
      add_dependencies(${t} lmshim lmctl)
    endif()
  endforeach()
endif()
