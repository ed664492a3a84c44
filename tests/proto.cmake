# proto: generated messages encode to the bytes the contract implies.
if(TARGET lm_proto)
  lm_add_test(test_proto SOURCES test_proto.c LIBS lm_proto TIMEOUT 60)
endif()
