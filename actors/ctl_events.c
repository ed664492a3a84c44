/*
 * ctl_events.c: what the controller tells others. Compute-service events
 * become Notifications (through the notifier, in order, a phase never
 * lost: what the notifier's full mailbox refuses waits here and is
 * re-published first); a MigrationFailed event's reason is kept for the
 * TransferSandbox answer. The sandbox's task events become containerd's
 * (/tasks/create, start, exit, delete) for the publisher thread.
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "events.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "shim/convert.h"
#include "util/clock.h"
#include "util/log.h"

/* ---- notifications --------------------------------------------------------- */

/* Re-publishes what the notifier refused; true when nothing is left. */
static bool flush_events(struct ctl *c)
{
	unsigned i = 0;
	while (i < c->n_pending_ev && lm_notifier_publish(c->notifier, &c->pending_ev[i]) != -EAGAIN)
		i++;
	memmove(c->pending_ev, c->pending_ev + i, (c->n_pending_ev - i) * sizeof(c->pending_ev[0]));
	c->n_pending_ev -= i;
	return c->n_pending_ev == 0;
}

static void arm_retry(struct ctl *c)
{
	if (c->retry_armed)
		return;
	lm_msg_t *m = lm_msg_alloc(LM_CTL_NOTIFY_RETRY, 0);
	if (m && lm_actor_send_after(c->self, m, 5) == 0)
		c->retry_armed = true;
	else
		lm_msg_free(m);
}

void lm__ctl_notify_retry(struct ctl *c)
{
	c->retry_armed = false;
	if (!flush_events(c))
		arm_retry(c);
}

/* Publishes an event. The notifier's mailbox is large and drained in
 * microseconds, but if it is full a phase transition must not be lost:
 * it waits here, in order, and is retried shortly (a progress event is
 * simply dropped then: a later one supersedes it). */
void lm__ctl_publish(struct ctl *c, const struct lm_notify_event *ev)
{
	if (!c->notifier)
		return;
	if (flush_events(c) && lm_notifier_publish(c->notifier, ev) != -EAGAIN)
		return;
	if (ev->phase == LM_PHASE_TRANSFER_IN_PROGRESS)
		return;
	if (c->n_pending_ev < sizeof(c->pending_ev) / sizeof(c->pending_ev[0]))
		c->pending_ev[c->n_pending_ev++] = *ev;
	else
		lm_log_error("controller", "notification lost: notifier unreachable", "phase=%d", ev->phase);
	arm_retry(c);
}

void lm__ctl_on_event(struct ctl *c, const lm_hcs_event_t *e)
{
	struct lm_notify_event ev;
	if (e->kind == LM_HCS_EV_SYSTEM_EXITED && c->vm && c->st == ST_IDLE)
		lm__ctl_sandbox_vm_exited(c);   /* (a VM we close is c->vm no more) */
	if (e->kind == LM_HCS_EV_HANDOVER) {
		const lm_hcs_handover_t *h = &e->u.handover;
		lm__ctl_log(c, "handover", "handover=%s link=%s in_doubt=%s why=\"%s\"",
			    lm_hcs_handover_state_name(h->state), lm_hcs_handover_link_name(h->link),
			    h->in_doubt ? "yes" : "no", h->why);
		return;
	}
	if (!lm_convert_event(e, &ev))
		return;
	ev.wall_ns = lm_wall_ns();
	if (e->kind == LM_HCS_EV_MIGRATION_FAILED) {
		snprintf(c->last_failure, sizeof(c->last_failure), "%s", e->u.failure.message);
		lm__ctl_log(c, "migration phase", "phase=%s result=%d why=\"%s\"",
			    lm_hcs_event_name(e->kind), (int)e->result, e->u.failure.message);
	} else if (e->kind != LM_HCS_EV_TRANSFER_IN_PROGRESS) {
		lm__ctl_log(c, "migration phase", "phase=%s result=%d", lm_hcs_event_name(e->kind),
			    (int)e->result);
	}
	lm__ctl_publish(c, &ev);
}

/* ---- task events to containerd --------------------------------------------- */

/* The sandbox's task events, as containerd's (api/events/task.proto), to
 * the publisher: controller thread, never blocks. */
void lm__ctl_on_sandbox_event(void *arg, enum lm_sandbox_event type, const struct lm_container *k,
			      const struct lm_exec *x)
{
	struct ctl *c = arg;
	if (!c->pub)
		return;
	Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	uint64_t exited = x ? x->exited_at_ns : k->exited_at_ns;
	at.seconds = (int64_t)(exited / 1000000000ull);
	at.nanos = (int32_t)(exited % 1000000000ull);
	switch (type) {
	case LM_SB_EV_CREATE: {
		Containerd__Events__TaskCreate e = CONTAINERD__EVENTS__TASK_CREATE__INIT;
		Containerd__Events__TaskIO io = CONTAINERD__EVENTS__TASK_IO__INIT;
		io.stdin = k->stdin_path ? k->stdin_path : (char *)"";
		io.stdout = k->stdout_path ? k->stdout_path : (char *)"";
		io.stderr = k->stderr_path ? k->stderr_path : (char *)"";
		io.terminal = k->terminal;
		e.container_id = k->id;
		e.bundle = k->bundle ? k->bundle : (char *)"";
		e.io = &io;
		e.pid = k->pid;
		lm_publisher_publish(c->pub, "/tasks/create", "containerd.events.TaskCreate", &e.base);
		break;
	}
	case LM_SB_EV_START: {
		Containerd__Events__TaskStart e = CONTAINERD__EVENTS__TASK_START__INIT;
		e.container_id = k->id;
		e.pid = k->pid;
		lm_publisher_publish(c->pub, "/tasks/start", "containerd.events.TaskStart", &e.base);
		break;
	}
	case LM_SB_EV_EXIT: {
		Containerd__Events__TaskExit e = CONTAINERD__EVENTS__TASK_EXIT__INIT;
		e.container_id = k->id;
		e.id = x ? x->id : k->id;   /* the init process: its exec ID is the container's */
		e.pid = x ? x->pid : k->pid;
		e.exit_status = x ? x->exit_status : k->exit_status;
		e.exited_at = &at;
		lm_publisher_publish(c->pub, "/tasks/exit", "containerd.events.TaskExit", &e.base);
		break;
	}
	case LM_SB_EV_EXEC_ADDED: {
		Containerd__Events__TaskExecAdded e = CONTAINERD__EVENTS__TASK_EXEC_ADDED__INIT;
		e.container_id = k->id;
		e.exec_id = x ? x->id : (char *)"";
		lm_publisher_publish(c->pub, "/tasks/exec-added", "containerd.events.TaskExecAdded", &e.base);
		break;
	}
	case LM_SB_EV_EXEC_STARTED: {
		Containerd__Events__TaskExecStarted e = CONTAINERD__EVENTS__TASK_EXEC_STARTED__INIT;
		e.container_id = k->id;
		e.exec_id = x ? x->id : (char *)"";
		e.pid = x ? x->pid : 0;
		lm_publisher_publish(c->pub, "/tasks/exec-started", "containerd.events.TaskExecStarted",
				     &e.base);
		break;
	}
	case LM_SB_EV_DELETE: {
		Containerd__Events__TaskDelete e = CONTAINERD__EVENTS__TASK_DELETE__INIT;
		e.container_id = k->id;
		e.id = k->id;          /* the init process */
		e.pid = k->pid;
		e.exit_status = k->exit_status;
		e.exited_at = &at;
		lm_publisher_publish(c->pub, "/tasks/delete", "containerd.events.TaskDelete", &e.base);
		break;
	}
	case LM_SB_EV_PAUSED: {
		Containerd__Events__TaskPaused e = CONTAINERD__EVENTS__TASK_PAUSED__INIT;
		e.container_id = k->id;
		lm_publisher_publish(c->pub, "/tasks/paused", "containerd.events.TaskPaused", &e.base);
		break;
	}
	case LM_SB_EV_OOM: {
		Containerd__Events__TaskOOM e = CONTAINERD__EVENTS__TASK_OOM__INIT;
		e.container_id = k->id;
		lm_publisher_publish(c->pub, "/tasks/oom", "containerd.events.TaskOOM", &e.base);
		break;
	}
	case LM_SB_EV_RESUMED: {
		Containerd__Events__TaskResumed e = CONTAINERD__EVENTS__TASK_RESUMED__INIT;
		e.container_id = k->id;
		lm_publisher_publish(c->pub, "/tasks/resumed", "containerd.events.TaskResumed", &e.base);
		break;
	}
	}
}
