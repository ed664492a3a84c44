# sandbox: the sandbox model and snapshot, the task service over a real
# ttrpc server, the patcher actor (engineer A's part of lm_shim).
if(TARGET lm_shim)
  lm_add_test(test_sandbox SOURCES test_sandbox.c LIBS lm_shim TIMEOUT 60)
  lm_add_test(test_task_service SOURCES test_task_service.c LIBS lm_shim TIMEOUT 120)
  lm_add_test(test_patcher SOURCES test_patcher.c LIBS lm_shim TIMEOUT 60)
endif()
