# notifier: the notifier actor against a real ttrpc server and clients
# (order and ids, replay-last, slow subscriber, disconnect, Cleanup's end,
# 1000 subscribers). Built from notifier.c directly so that it does not
# depend on the other lm_shim components being complete.
if(TARGET lm_shim)
  lm_add_test(test_notifier
    SOURCES test_notifier.c ${PROJECT_SOURCE_DIR}/actors/notifier.c
    LIBS lm_actors lm_rpc lm_proto lm_util
    TIMEOUT 120)
endif()
