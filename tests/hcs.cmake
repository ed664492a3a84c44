# hcs tests: the transfer engine and sim backend, the compute-service API,
# the JSON/proto conversion helpers; the stream parser fuzz target.
if(TARGET lm_hcs)
  lm_add_test(test_hcs_xfer SOURCES test_hcs_xfer.c LIBS lm_hcs TIMEOUT 300 LABELS hcs)
  # Its 1 GiB case is opt-in (seconds of fill and populate):
  #   LM_TEST_BIG=1 build/tests/test_hcs_xfer
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/test_hcs_api.c)
    lm_add_test(test_hcs_api SOURCES test_hcs_api.c LIBS lm_hcs TIMEOUT 300 LABELS hcs)
  endif()
  lm_add_fuzz(fuzz_stream SOURCES fuzz/fuzz_stream.c LIBS lm_hcs)
endif()
if(TARGET lm_hcs_convert AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/test_hcs_convert.c)
  lm_add_test(test_hcs_convert SOURCES test_hcs_convert.c LIBS lm_hcs_convert TIMEOUT 60 LABELS hcs)
endif()
