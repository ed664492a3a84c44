# rpc: the ttrpc codec against the captured bytes, and the server and
# client over real sockets (protocol errors, streaming, backpressure,
# shutdown). The interop tests against Go peers live in tests/interop/.
if(TARGET lm_rpc)
  lm_add_test(test_rpc_frame SOURCES test_rpc_frame.c LIBS lm_rpc lm_proto TIMEOUT 60)
  lm_add_test(test_rpc SOURCES test_rpc.c LIBS lm_rpc TIMEOUT 300)
  lm_add_fuzz(fuzz_ttrpc SOURCES fuzz/fuzz_ttrpc.c LIBS lm_rpc_frame lm_proto)
  include(${CMAKE_CURRENT_SOURCE_DIR}/interop/interop.cmake OPTIONAL)
endif()
