/*
 * glue.h: how the ttrpc services' handlers hand a call to the controller,
 * one policy for every service (Migration, Inspect, task).
 *
 * A handler runs on the rpc loop thread and must not wait: it packs the
 * call (its handler reference moves into the message) and posts it. If
 * the controller's mailbox is full (a burst of 8192 calls not yet taken)
 * the call is answered Unavailable at once ("overloaded", retryable, as
 * gRPC means it); if the controller is gone, Unavailable ("shutting
 * down"); out of memory, ResourceExhausted. A posted message that is
 * dropped undelivered (shutdown) fails its call with Unavailable.
 */
#ifndef LM_SHIM_GLUE_H
#define LM_SHIM_GLUE_H

#include <stdint.h>

#include "rpc/server.h"
#include "runtime/runtime.h"

/* Thread: the rpc loop. Posts `call` to the controller as a message of
 * `type` whose payload is struct lm_ctl_call {call, method}; answers the
 * call itself when it cannot. `what` names the call in errors. */
void lm__shim_post_call(lm_actor_t *ctl, uint32_t type, lm_rpc_call_t *call, int method,
			const char *what);

#endif
