# shim: two whole shims in one process driven over real ttrpc connections
# (the controller's call sequence, states and error codes).
if(TARGET lm_shim)
  pkg_check_modules(LM_JANSSON_T REQUIRED IMPORTED_TARGET jansson)
  lm_add_test(test_shim SOURCES test_shim.c LIBS lm_shim PkgConfig::LM_JANSSON_T TIMEOUT 300)
  # task events to containerd's events service (a stand-in sink)
  lm_add_test(test_publisher SOURCES test_publisher.c LIBS lm_shim TIMEOUT 120)
endif()

# The snapshot importer parses what ImportSandbox receives: fuzz it.
if(TARGET lm_shim)
  lm_add_fuzz(fuzz_snapshot SOURCES fuzz/fuzz_snapshot.c LIBS lm_shim)
endif()
