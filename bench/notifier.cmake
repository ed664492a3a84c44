# bench_notifier: what 1000 Notifications subscribers cost a stand-in
# transfer thread (throughput with and without them, publish cost) and
# the notifier's fan-out time (1000 subscribers vs 1).
if(TARGET lm_shim)
  lm_add_bench(bench_notifier
    SOURCES bench_notifier.c ${PROJECT_SOURCE_DIR}/actors/notifier.c
    LIBS lm_actors lm_rpc lm_proto lm_util)
endif()
