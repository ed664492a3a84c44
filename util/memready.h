/*
 * memready.h: making a destination's guest memory ready before a
 * migration writes into it, so that no first-touch cost lands in the
 * transfer (or in the blackout).
 *
 * Populating (MADV_POPULATE_WRITE) is not always enough. Measured on a
 * nested KVM-PVM host (kernel 6.18), 256 MiB of populated memfd memory:
 * the first socket read() into it took 420 ms, the second 37 ms; a user
 * memset first did not help the socket read (457 ms after a 10 ms
 * memset), nor did a kernel write help a later user memset: the kernel's
 * and the user's accesses pay their first touch of each page apart
 * (~5 us a page, 1.4 s per GiB each). So, after the populate, every page
 * is read once by us (user mode) and written once by the kernel (a
 * readv() from a pipe of one byte into each page, the byte it held):
 * then both a socket read (55 ms) and a memset (9 ms) into it are fast.
 * Both steps are timed, for the log: on a host where the populate
 * suffices they cost a few ms per GiB.
 */
#ifndef LM_UTIL_MEMREADY_H
#define LM_UTIL_MEMREADY_H

#include <stdbool.h>
#include <stddef.h>

struct lm_mem_ready {
	bool populated;        /* MADV_POPULATE_WRITE took */
	bool kernel_touched;   /* the pipe path ran (else: user stores) */
	double populate_ms;    /* its time (0 when it failed) */
	double touch_ms;       /* every page read, then written by the kernel */
};

/* Thread: any (it runs up to one helper thread per CPU, joined before it
 * returns); nobody else may write the memory meanwhile (a VM being
 * created). p and len page-aligned; contents are kept. */
void lm_mem_make_ready(void *p, size_t len, struct lm_mem_ready *out);

#endif
