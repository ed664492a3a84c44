# bench_rpc: unary ttrpc calls/s and latency, our server against a Go
# ttrpc server built from the same Debian package, both driven by the same
# Go ttrpc client (tests/interop/ttrpc_peer), in the same run.
if(TARGET lm_rpc)
  find_program(LM_GO go)
  set(LM_BENCH_PEER ${CMAKE_BINARY_DIR}/tests/interop/ttrpc_peer)
  if(NOT TARGET ttrpc_peer AND LM_GO)
    add_custom_command(
      OUTPUT ${LM_BENCH_PEER}
      COMMAND ${PROJECT_SOURCE_DIR}/tests/interop/build_go.sh ${LM_BENCH_PEER}
              ${PROJECT_SOURCE_DIR}/tests/interop/ttrpc_peer ${CMAKE_BINARY_DIR}/go
      DEPENDS ${PROJECT_SOURCE_DIR}/tests/interop/ttrpc_peer/main.go
      COMMENT "go build ttrpc_peer (offline, Debian's ttrpc)"
      VERBATIM)
    add_custom_target(ttrpc_peer ALL DEPENDS ${LM_BENCH_PEER})
  endif()
  lm_add_bench(bench_rpc SOURCES bench_rpc.c LIBS lm_rpc)
  target_compile_definitions(bench_rpc PRIVATE LM_TTRPC_PEER="${LM_BENCH_PEER}")
  if(TARGET ttrpc_peer)
    add_dependencies(bench_rpc ttrpc_peer)
  endif()
endif()
