# Benchmarks of the foundation: mailbox and actor runtime.
lm_add_bench(bench_mailbox SOURCES bench_mailbox.c LIBS lm_actors lm_mailbox lm_util)
