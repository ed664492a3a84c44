# bench_shim: migration throughput loaded vs unloaded (RPC load + subscribers).
if(TARGET lm_shim)
  pkg_check_modules(LM_JANSSON_B REQUIRED IMPORTED_TARGET jansson)
  lm_add_bench(bench_shim SOURCES bench_shim.c LIBS lm_shim PkgConfig::LM_JANSSON_B)
endif()
