# Tests of the foundation: util (fault points, CPU reservation), mailbox, actors.
lm_add_test(test_fault SOURCES test_fault.c LIBS lm_util TIMEOUT 120)
lm_add_test(test_sched SOURCES test_sched.c LIBS lm_util TIMEOUT 60)
lm_add_test(test_mailbox SOURCES test_mailbox.c LIBS lm_mailbox lm_util TIMEOUT 600)
lm_add_test(test_actors SOURCES test_actors.c LIBS lm_actors lm_mailbox lm_util TIMEOUT 600)
