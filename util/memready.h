/*
 * memready.h: making a destination's guest memory ready before a
 * migration writes into it, so that no first-touch cost lands in the
 * transfer (or in the blackout).
 *
 * Populating (MADV_POPULATE_WRITE) is not always enough: on a nested
 * KVM-PVM host it maps every page in but the first store to each page
 * afterwards still costs ~5 us (1.4 s per GiB, paid by the receiving
 * socket copy); one store per page after the populate makes the memory
 * fast. So both are done, timed, and the times returned to be logged:
 * on a host where the populate suffices the stores cost a few ms per GiB.
 */
#ifndef LM_UTIL_MEMREADY_H
#define LM_UTIL_MEMREADY_H

#include <stdbool.h>
#include <stddef.h>

struct lm_mem_ready {
	bool populated;        /* MADV_POPULATE_WRITE took */
	double populate_ms;    /* its time (0 when it failed) */
	double touch_ms;       /* one store per page, after it */
};

/* Thread: any; nobody else may write the memory meanwhile (a VM being
 * created). p and len page-aligned; contents are kept (each touched byte
 * is written back as read). */
void lm_mem_make_ready(void *p, size_t len, struct lm_mem_ready *out);

#endif
