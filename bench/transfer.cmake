# bench_transfer: the live-migration memory transfer against a plain socket
# copy of the same bytes (see bench/bench_transfer.c for the figures).
if(TARGET lm_hcs)
  lm_add_bench(bench_transfer SOURCES bench_transfer.c LIBS lm_hcs)
endif()
