# The controller, the Migration service glue, the transport, the shim.
find_package(PkgConfig REQUIRED)
pkg_check_modules(LM_JANSSON_CTL REQUIRED IMPORTED_TARGET jansson)
target_sources(lm_shim PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/controller.c
  ${CMAKE_CURRENT_LIST_DIR}/migration_service.c
  ${CMAKE_CURRENT_LIST_DIR}/transport.c
  ${CMAKE_CURRENT_LIST_DIR}/shim.c
  ${CMAKE_CURRENT_LIST_DIR}/publisher.c)
target_link_libraries(lm_shim PUBLIC PkgConfig::LM_JANSSON_CTL)
