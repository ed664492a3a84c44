# sandbox: the sandbox model and its snapshot, the containerd task service
# glue and the patcher actor (engineer A's part of lm_shim).
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
target_sources(lm_shim PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/sandbox.c
  ${CMAKE_CURRENT_LIST_DIR}/task_service.c
  ${CMAKE_CURRENT_LIST_DIR}/patcher.c)
target_link_libraries(lm_shim PUBLIC PkgConfig::JANSSON)
