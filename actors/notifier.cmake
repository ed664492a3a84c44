# notifier: the Notifications subscribers of the shim (actors/notifier.h).
target_sources(lm_shim PRIVATE ${CMAKE_CURRENT_LIST_DIR}/notifier.c)
