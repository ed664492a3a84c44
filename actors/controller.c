/*
 * controller.c: the session state machine of the Migration contract, and
 * the sandbox's owner.
 *
 * DESIGN. One actor, one switch on the message type. The controller keeps
 * the state (`st`), the side (source or destination), the session ID, the
 * compute system (`vm`) and the sandbox (`sb`), and parks the rpc calls
 * that wait for something:
 *   - op_call: the call waiting for the current compute-service operation
 *     (PrepareAndExport's initialize and export, PrepareSandbox's create,
 *     FinalizeSandbox's finalize; finalize retries join it);
 *   - sock_call: the CreateDuplicateSocket waiting for the transport;
 *   - xfer_waiters: every TransferSandbox waiting for the socket or for
 *     the transfer's end (duplicates join);
 *   - cancel_waiters: Cancel calls waiting for the compute service's
 *     cancel to complete (acts at once, never queued behind other work).
 * Compute-service operations complete on hcs threads; their callbacks only
 * post LM_CTL_HCS_DONE with the operation kind and the generation it was
 * started in. Cancel and Cleanup bump the generation, so a completion of
 * an abandoned operation is recognised and only its resources are kept
 * (a destination VM created after a Cancel is still closed by Cleanup).
 *
 * Closing a compute system joins its threads, so it happens on a short
 * "closer" thread that reports LM_CTL_CLOSED; the actor never blocks.
 *
 * Every log line of a migration carries session= and side=.
 */
#include "actors/controller.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/notifier.h"
#include "actors/patcher.h"
#include "shim/publisher.h"
#include "shim/sandbox.h"
#include "shim/task_service.h"
#include "actors/transport.h"
#include "events.pb-c.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "shim/convert.h"
#include "hcs/hcs.h"
#include "migration.pb-c.h"
#include "rpc/server.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

/* gRPC codes used here */
enum {
	C_OK = 0, C_INVALID = 3, C_DEADLINE = 4, C_NOT_FOUND = 5, C_EXISTS = 6,
	C_EXHAUSTED = 8, C_PRECONDITION = 9, C_ABORTED = 10, C_INTERNAL = 13,
	C_UNAVAILABLE = 14,
};

enum st {
	ST_IDLE, ST_SOURCE_PREPARED, ST_SOURCE_EXPORTED, ST_DEST_IMPORTED,
	ST_DEST_PREPARED, ST_SOCKET_WAITING, ST_SOCKET_READY, ST_TRANSFERRING,
	ST_TRANSFER_COMPLETED, ST_FINALIZED, ST_CANCELLING, ST_CANCELLED, ST_FAILED,
};

static const char *st_name[] = {
	"Idle", "SourcePrepared", "SourceExported", "DestinationImported",
	"DestinationPrepared", "SocketWaiting", "SocketReady", "Transferring",
	"TransferCompleted", "Finalized", "Cancelling", "Cancelled", "Failed",
};

enum side { SIDE_NONE = 0, SIDE_SOURCE = 1, SIDE_DEST = 2 };

/* compute-service operations the controller waits for */
enum op {
	OP_NONE, OP_BOOT_CREATE, OP_BOOT_START, OP_INIT, OP_EXPORT_PROPS,
	OP_DEST_CREATE, OP_MIG_START, OP_TRANSFER, OP_FINALIZE, OP_CANCEL,
	OP_QUERY,
};

static const char *mig_name[LM_MIG_N] = {
	"PrepareAndExportSandbox", "ImportSandbox", "PrepareSandbox",
	"CreateDuplicateSocket", "Notifications", "TransferSandbox",
	"FinalizeSandbox", "Cancel", "Cleanup",
};

#define DEFAULT_TRANSFER_WAIT_NS (600ull * 1000000000ull)   /* 10 minutes */
#define MAX_WAITERS 64

struct patcher_ref {
	char *source_id;
	lm_actor_t *actor;
};

struct ctl {
	lm_actor_t *self;
	lm_actor_t *notifier;
	lm_actor_t *transport;
	lm_publisher_t *pub;         /* task events to containerd, or NULL (the shim's) */
	char *document;              /* the VM's document (standalone config or snapshot) */
	struct lm_shim_config cfg;   /* strings not kept beyond boot */
	struct lm_shim_container *boot_ctrs;
	unsigned n_boot_ctrs;

	/* the VM and the sandbox */
	lm_hcs_system_t *vm;
	bool vm_running;
	lm_sandbox_t *sb;
	struct lm_snapshot_vm imported;   /* destination: the snapshot's VM part */
	bool have_imported;
	struct patcher_ref *patchers;
	unsigned n_patchers;
	unsigned closing;                /* closer threads running */

	/* the session */
	enum st st;
	enum side side;
	char session[256];
	uint64_t gen;                    /* bumped by Cancel and Cleanup */
	enum st before_wait;             /* where a socket-wait timeout returns to */
	bool socket_registered;          /* CreateDuplicateSocket succeeded */
	bool mig_started;                /* the compute service owns the socket */
	bool transfer_started;
	bool handshake_done;             /* migration_start completed */
	bool want_transfer;              /* a TransferSandbox waits for the handshake */
	int finalize_action;             /* the finalize in flight (1 stop, 2 resume) */
	char *init_json;                 /* MigrationInitializeOptions of the session */

	/* parked calls */
	enum op op;                      /* the operation op_call waits for */
	uint64_t op_gen;
	lm_rpc_call_t *op_call;
	int op_method;
	lm_rpc_call_t *op_joined[MAX_WAITERS];   /* finalize retries */
	unsigned n_op_joined;
	lm_rpc_call_t *sock_call;
	uint64_t sock_gen;
	lm_rpc_call_t *xfer_waiters[MAX_WAITERS];
	unsigned n_xfer_waiters;
	uint64_t wait_timer_gen;
	lm_rpc_call_t *cancel_waiters[MAX_WAITERS];
	unsigned n_cancel_waiters;
	bool cancel_in_flight;

	/* the transfer's outcome */
	int xfer_code;
	char xfer_msg[640];
	char last_failure[256];          /* from a MigrationFailed event */

	/* events the notifier could not take yet (its mailbox was full):
	 * phase transitions are kept and re-published in order */
	struct lm_notify_event pending_ev[32];
	unsigned n_pending_ev;
	bool retry_armed;

	/* boot / quiesce waiters (plain mailboxes of non-worker threads) */
	lm_mailbox_t *boot_reply;
	char boot_err[256];
	int boot_rc;
	lm_mailbox_t *quiesce_reply;
};

static void on_sandbox_event(void *arg, enum lm_sandbox_event type, const struct lm_container *k);

struct hcs_op_ctx {
	lm_actor_t *ctl;                 /* reference held */
	enum op op;
	uint64_t gen;
	lm_rpc_call_t *call;             /* OP_QUERY: the Inspect call */
};

struct hcs_done_msg {
	enum op op;
	uint64_t gen;
	int err;
	char *json;                      /* result JSON or NULL (freed by dtor) */
	lm_rpc_call_t *call;             /* OP_QUERY: the Inspect call */
};

struct hcs_event_msg {
	char *json;
};

struct closed_msg {
	unsigned unused;
};

/* ---- small helpers ------------------------------------------------------ */

static const char *side_name(const struct ctl *c)
{
	return c->side == SIDE_SOURCE ? "source" : c->side == SIDE_DEST ? "destination" : "none";
}

static void logi(struct ctl *c, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void logi(struct ctl *c, const char *msg, const char *fmt, ...)
{
	char tail[512] = "";
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(tail, sizeof(tail), fmt, ap);
		va_end(ap);
	}
	lm_log_info("controller", msg, "session=%s side=%s state=%s%s%s",
		    c->session[0] ? c->session : "-", side_name(c), st_name[c->st],
		    tail[0] ? " " : "", tail);
}

static void set_state(struct ctl *c, enum st st)
{
	if (c->st != st) {
		enum st old = c->st;
		c->st = st;
		logi(c, "state changed", "from=%s", st_name[old]);
	}
}

/* Posts a message to the controller from a foreign thread; completions
 * must not be lost, so a full mailbox is waited out. */
static void post(lm_actor_t *ctl, lm_msg_t *m)
{
	int rc;
	while ((rc = lm_actor_send(ctl, m)) == -EAGAIN)
		usleep(200);
	if (rc)
		lm_msg_free(m);
}

static void done_dtor(lm_msg_t *m)
{
	struct hcs_done_msg *d = LM_MSG_PAYLOAD(m, struct hcs_done_msg);
	free(d->json);
	if (d->call)   /* never answered (the controller is gone) */
		lm_rpc_call_fail(d->call, C_UNAVAILABLE, "the shim is shutting down");
}

static void hcs_done_cb(void *arg, int err, const char *json)
{
	struct hcs_op_ctx *x = arg;
	lm_msg_t *m = lm_msg_alloc(LM_CTL_HCS_DONE, sizeof(struct hcs_done_msg));
	if (m) {
		struct hcs_done_msg *d = LM_MSG_PAYLOAD(m, struct hcs_done_msg);
		d->op = x->op;
		d->gen = x->gen;
		d->err = err;
		d->json = json ? strdup(json) : NULL;
		d->call = x->call;
		m->dtor = done_dtor;
		post(x->ctl, m);
	}
	lm_actor_unref(x->ctl);
	free(x);
	lm_msg_cache_flush();
}

static void event_dtor(lm_msg_t *m)
{
	free(LM_MSG_PAYLOAD(m, struct hcs_event_msg)->json);
}

static void hcs_event_cb(void *arg, const char *json)
{
	lm_actor_t *ctl = arg;
	lm_msg_t *m = lm_msg_alloc(LM_CTL_HCS_EVENT, sizeof(struct hcs_event_msg));
	if (!m)
		return;
	LM_MSG_PAYLOAD(m, struct hcs_event_msg)->json = strdup(json ? json : "{}");
	m->dtor = event_dtor;
	post(ctl, m);
}

static struct hcs_op_ctx *op_ctx(struct ctl *c, enum op op)
{
	struct hcs_op_ctx *x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	x->ctl = c->self;
	lm_actor_ref(c->self);
	x->op = op;
	x->gen = c->gen;
	return x;
}

static void op_ctx_drop(struct hcs_op_ctx *x)
{
	lm_actor_unref(x->ctl);
	free(x);
}

static int code_for_errno(int err)
{
	switch (err) {
	case -EINVAL: return C_INVALID;
	case -EPERM: case -EBUSY: case -EALREADY: return C_PRECONDITION;
	case -ENOENT: return C_NOT_FOUND;
	case -EEXIST: return C_EXISTS;
	case -ETIMEDOUT: return C_DEADLINE;
	case -ECANCELED: return C_ABORTED;
	case -ECONNRESET: case -EPIPE: case -ENOTCONN: case -ECONNREFUSED:
	case -EHOSTUNREACH: case -ECONNABORTED:
		return C_UNAVAILABLE;
	case -ENOMEM: return C_EXHAUSTED;
	default: return C_INTERNAL;
	}
}

/* ---- rpc call helpers ---------------------------------------------------- */

static void fail(lm_rpc_call_t *call, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fail(lm_rpc_call_t *call, int code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	lm_rpc_call_fail(call, code, "%s", msg);
}

/* An empty protobuf message (all our empty responses). */
static void ok(lm_rpc_call_t *call)
{
	lm_rpc_call_reply(call, "", 0);
}

static bool waiters_add(lm_rpc_call_t **arr, unsigned *n, lm_rpc_call_t *call)
{
	if (*n >= MAX_WAITERS)
		return false;
	arr[(*n)++] = call;
	return true;
}

static bool waiters_remove(lm_rpc_call_t **arr, unsigned *n, lm_rpc_call_t *call)
{
	for (unsigned i = 0; i < *n; i++)
		if (arr[i] == call) {
			arr[i] = arr[--*n];
			return true;
		}
	return false;
}

static void answer_xfer_waiters(struct ctl *c, int code, const char *msg)
{
	for (unsigned i = 0; i < c->n_xfer_waiters; i++) {
		if (code == C_OK)
			ok(c->xfer_waiters[i]);
		else
			lm_rpc_call_fail(c->xfer_waiters[i], code, "%s", msg);
	}
	c->n_xfer_waiters = 0;
}

static void answer_op(struct ctl *c, int code, const char *msg)
{
	if (c->op_call) {
		if (code == C_OK)
			ok(c->op_call);
		else
			lm_rpc_call_fail(c->op_call, code, "%s", msg);
	}
	for (unsigned i = 0; i < c->n_op_joined; i++) {
		if (code == C_OK)
			ok(c->op_joined[i]);
		else
			lm_rpc_call_fail(c->op_joined[i], code, "%s", msg);
	}
	c->op_call = NULL;
	c->n_op_joined = 0;
	c->op = OP_NONE;
}

/* ---- the VM's life ----------------------------------------------------------- */

static void *closer_main(void *arg)
{
	void **a = arg;
	lm_hcs_system_t *vm = a[0];
	lm_actor_t *ctl = a[1];
	free(a);
	lm_hcs_system_close(vm);
	lm_msg_t *m = lm_msg_alloc(LM_CTL_CLOSED, sizeof(struct closed_msg));
	if (m)
		post(ctl, m);
	lm_actor_unref(ctl);
	lm_msg_cache_flush();
	return NULL;
}

/* Closes the VM on a closer thread (lm_hcs_system_close joins threads). */
static void close_vm(struct ctl *c)
{
	if (!c->vm)
		return;
	lm_hcs_system_t *vm = c->vm;
	c->vm = NULL;
	c->vm_running = false;
	void **a = malloc(2 * sizeof(void *));
	pthread_t th;
	pthread_attr_t at;
	if (a) {
		a[0] = vm;
		a[1] = c->self;
		lm_actor_ref(c->self);
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &at, closer_main, a) == 0) {
			c->closing++;
			pthread_attr_destroy(&at);
			return;
		}
		pthread_attr_destroy(&at);
		lm_actor_unref(c->self);
		free(a);
	}
	/* no thread: close here (blocks this worker briefly; never expected) */
	lm_hcs_system_close(vm);
}

static void stop_patchers(struct ctl *c)
{
	for (unsigned i = 0; i < c->n_patchers; i++) {
		lm_actor_stop(c->patchers[i].actor);
		lm_actor_unref(c->patchers[i].actor);
		free(c->patchers[i].source_id);
	}
	free(c->patchers);
	c->patchers = NULL;
	c->n_patchers = 0;
}

static lm_actor_t *patcher_for(struct ctl *c, const char *source_id)
{
	for (unsigned i = 0; i < c->n_patchers; i++)
		if (!strcmp(c->patchers[i].source_id, source_id))
			return c->patchers[i].actor;
	return NULL;
}

/* Forgets the session: back to Idle. */
static void reset_session(struct ctl *c)
{
	c->gen++;
	c->side = SIDE_NONE;
	c->session[0] = '\0';
	c->socket_registered = false;
	c->mig_started = false;
	c->transfer_started = false;
	c->handshake_done = false;
	c->want_transfer = false;
	c->finalize_action = 0;
	c->xfer_code = 0;
	c->xfer_msg[0] = '\0';
	c->last_failure[0] = '\0';
	free(c->init_json);
	c->init_json = NULL;
	stop_patchers(c);
	if (c->have_imported) {
		lm_snapshot_vm_clear(&c->imported);
		c->have_imported = false;
	}
	set_state(c, ST_IDLE);
}

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

/* Publishes an event. The notifier's mailbox is large and drained in
 * microseconds, but if it is full a phase transition must not be lost:
 * it waits here, in order, and is retried shortly (a progress event is
 * simply dropped then: a later one supersedes it). */
static void publish(struct ctl *c, const struct lm_notify_event *ev)
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

/* ---- events ------------------------------------------------------------------ */

static uint64_t json_u64(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (json_is_integer(v) && json_integer_value(v) >= 0)
		return (uint64_t)json_integer_value(v);
	if (json_is_real(v) && json_real_value(v) >= 0)
		return (uint64_t)json_real_value(v);
	return 0;
}

static void on_event(struct ctl *c, const char *json)
{
	Notification *n = NULL;
	struct lm_notify_event ev = { 0 };

	if (lm_hcs_event_to_notification(json, &n) != 0 || !n)
		return;
	ev.origin = n->origin;
	ev.phase = n->phase;
	ev.state = n->state;
	ev.wall_ns = lm_wall_ns();
	if (n->phase_details_case == NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED && n->blackout_exited) {
		ev.has_blackout = true;
		ev.blackout_duration_ms = n->blackout_exited->blackout_duration_milliseconds;
		if (n->blackout_exited->blackout_stop_timestamp)
			ev.blackout_stop_wall_ns =
				(uint64_t)n->blackout_exited->blackout_stop_timestamp->seconds * 1000000000ull +
				(uint64_t)n->blackout_exited->blackout_stop_timestamp->nanos;
	}
	if (n->phase == PHASE__PHASE_TRANSFER_IN_PROGRESS) {
		json_t *root = json_loads(json, 0, NULL);
		json_t *d = root ? json_object_get(root, "AdditionalDetails") : NULL;
		if (json_is_object(d)) {
			ev.has_progress = true;
			ev.progress.pass = (uint32_t)json_u64(d, "Pass");
			ev.progress.bytes_sent = json_u64(d, "BytesSent");
			ev.progress.bytes_total = json_u64(d, "MemoryBytes");
			ev.progress.pages_remaining = json_u64(d, "PagesRemaining");
			ev.progress.dirty_rate = (uint64_t)(json_u64(d, "DirtyRateMBps") * 1000000u / 4096u);
			ev.progress.bandwidth = json_u64(d, "BandwidthMBps") * 1000000u;
			ev.progress.elapsed_ms = json_u64(d, "ElapsedMs");
			ev.progress.eta_ms = json_u64(d, "EtaMs");
		}
		json_decref(root);
	} else {
		logi(c, "migration phase", "phase=%d result=%d", n->phase, n->state);
	}
	if (n->phase == PHASE__PHASE_FAILED) {
		json_t *root = json_loads(json, 0, NULL);
		json_t *d = root ? json_object_get(root, "AdditionalDetails") : NULL;
		json_t *msg = json_is_object(d) ? json_object_get(d, "Message") : NULL;
		if (json_is_string(msg))
			snprintf(c->last_failure, sizeof(c->last_failure), "%s", json_string_value(msg));
		json_decref(root);
	}
	lm_hcs_notification_free(n);
	publish(c, &ev);
}

/* ---- decoding requests ---------------------------------------------------------- */

/* Checks the request's session ID against the session. Returns true if
 * the call may proceed; otherwise answers it. */
static bool check_session(struct ctl *c, lm_rpc_call_t *call, const char *method, const char *sid)
{
	if (!sid || !*sid) {
		fail(call, C_INVALID, "%s: session_id is empty", method);
		return false;
	}
	if (c->st != ST_IDLE && strcmp(sid, c->session) != 0) {
		fail(call, C_INVALID, "%s: session_id \"%s\" does not match the session in progress",
		     method, sid);
		return false;
	}
	return true;
}

/* Finalize, Cancel and Cleanup answer OK on an idle shim whatever the
 * (non-empty) session ID, so an orchestrator's retries after Cleanup stay
 * idempotent; otherwise the ID must be the session's. Returns true if the
 * call may proceed (it has not been answered). */
static bool session_or_idle(struct ctl *c, lm_rpc_call_t *call, const char *method, const char *sid)
{
	if (!sid || !*sid) {
		fail(call, C_INVALID, "%s: session_id is empty", method);
		return false;
	}
	if (c->st == ST_IDLE) {
		ok(call);
		return false;
	}
	return check_session(c, call, method, sid);
}

static void not_in_state(struct ctl *c, lm_rpc_call_t *call, const char *method)
{
	fail(call, C_PRECONDITION, "%s: not allowed in state %s%s%s", method, st_name[c->st],
	     c->side ? " on the " : "", c->side ? side_name(c) : "");
}

/* ---- Migration calls ------------------------------------------------------------ */

static void do_prepare_and_export(struct ctl *c, lm_rpc_call_t *call, PrepareAndExportSandboxRequest *req)
{
	const char *M = mig_name[LM_MIG_PREPARE_AND_EXPORT];
	char err[256], *json = NULL;

	if (!check_session(c, call, M, req->session_id))
		return;
	if (c->st != ST_IDLE || c->op != OP_NONE) {
		if (c->st == ST_IDLE)
			fail(call, C_PRECONDITION, "%s: another call is in progress", M);
		else
			not_in_state(c, call, M);
		return;
	}
	if (!c->vm || !c->vm_running) {
		fail(call, C_PRECONDITION, "%s: no running VM to export", M);
		return;
	}
	if (lm_hcs_init_options_to_json(req->init_options, 1, &json, err, sizeof(err))) {
		fail(call, C_INVALID, "%s: init_options: %s", M, err);
		return;
	}
	struct hcs_op_ctx *x = op_ctx(c, OP_INIT);
	int rc = x ? lm_hcs_migration_initialize(c->vm, json, hcs_done_cb, x) : -ENOMEM;
	if (rc) {
		if (x)
			op_ctx_drop(x);
		free(json);
		fail(call, code_for_errno(rc), "%s: initialize: %s", M, strerror(-rc));
		return;
	}
	free(c->init_json);
	c->init_json = json;
	snprintf(c->session, sizeof(c->session), "%s", req->session_id);
	c->op = OP_INIT;
	c->op_gen = c->gen;
	c->op_call = call;
	c->op_method = LM_MIG_PREPARE_AND_EXPORT;
	logi(c, "prepare and export started", NULL);
}

/* Builds the snapshot from the properties JSON and answers the export. */
static void finish_export(struct ctl *c, const char *props_json)
{
	const char *M = mig_name[LM_MIG_PREPARE_AND_EXPORT];
	struct lm_snapshot_vm vm = { 0 };
	json_t *doc = json_loads(c->document ? c->document : "{}", 0, NULL);
	json_t *props = props_json ? json_loads(props_json, 0, NULL) : NULL;
	json_t *v;
	uint8_t *any = NULL;
	size_t anylen = 0;
	int rc;

	v = doc ? json_object_get(doc, "Id") : NULL;
	vm.vm_id = (char *)(json_is_string(v) ? json_string_value(v) : (c->cfg.id ? c->cfg.id : "vm"));
	vm.document = c->document;
	v = props ? json_object_get(props, "CompatibilityInfo") : NULL;
	if (json_is_string(v)) {
		vm.compat = (uint8_t *)json_string_value(v);
		vm.compat_len = strlen(json_string_value(v));
	}
	json_t *vmo = doc ? json_object_get(doc, "VirtualMachine") : NULL;
	json_t *topo = vmo ? json_object_get(vmo, "ComputeTopology") : NULL;
	json_t *mem = topo ? json_object_get(topo, "Memory") : NULL;
	json_t *cpu = topo ? json_object_get(topo, "Processor") : NULL;
	vm.memory_bytes = (mem ? json_u64(mem, "SizeInMB") : 0) * 1024 * 1024;
	vm.vcpus = cpu ? (uint32_t)json_u64(cpu, "Count") : 0;
	if (!vm.vcpus)
		vm.vcpus = 1;
	struct lm_snapshot_region region = { 0, vm.memory_bytes };
	vm.regions = &region;
	vm.n_regions = 1;
	vm.generation = 1;
	rc = lm_sandbox_export(c->sb, &vm, &any, &anylen);
	json_decref(doc);
	json_decref(props);
	if (rc) {
		set_state(c, ST_FAILED);
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "export failed on the source: %s", strerror(-rc));
		c->xfer_code = C_ABORTED;
		answer_op(c, C_INTERNAL, c->xfer_msg);
		return;
	}
	/* PrepareAndExportSandboxResponse { Any config = 1; } */
	size_t n = 0, cap = anylen + 16;
	uint8_t *resp = malloc(cap);
	if (!resp) {
		free(any);
		set_state(c, ST_FAILED);
		answer_op(c, C_EXHAUSTED, "PrepareAndExportSandbox: out of memory");
		return;
	}
	resp[n++] = 0x0a;
	size_t l = anylen;
	do {
		uint8_t b = l & 0x7f;
		l >>= 7;
		resp[n++] = b | (l ? 0x80 : 0);
	} while (l);
	memcpy(resp + n, any, anylen);
	n += anylen;
	free(any);
	set_state(c, ST_SOURCE_EXPORTED);
	logi(c, "sandbox exported", "bytes=%zu containers=%zu", anylen, lm_sandbox_count(c->sb));
	lm_rpc_call_reply(c->op_call, resp, n);
	free(resp);
	c->op_call = NULL;
	c->op = OP_NONE;
	(void)M;
}

static void do_import(struct ctl *c, lm_rpc_call_t *call, ImportSandboxRequest *req)
{
	const char *M = mig_name[LM_MIG_IMPORT];
	char err[256];

	if (!check_session(c, call, M, req->session_id))
		return;
	if (c->st != ST_IDLE || c->op != OP_NONE) {
		not_in_state(c, call, M);
		return;
	}
	if (c->vm) {
		fail(call, C_PRECONDITION, "%s: this shim already runs a VM", M);
		return;
	}
	if (lm_sandbox_count(c->sb) > 0) {
		fail(call, C_PRECONDITION, "%s: this shim already has containers", M);
		return;
	}
	if (!req->config) {
		fail(call, C_INVALID, "%s: config is missing", M);
		return;
	}
	size_t anylen = google__protobuf__any__get_packed_size(req->config);
	uint8_t *any = malloc(anylen ? anylen : 1);
	if (!any) {
		fail(call, C_EXHAUSTED, "%s: out of memory", M);
		return;
	}
	google__protobuf__any__pack(req->config, any);
	lm_sandbox_t *sb = NULL;
	struct lm_snapshot_vm vm = { 0 };
	int rc = lm_sandbox_import(any, anylen, &sb, &vm, err, sizeof(err));
	free(any);
	if (rc) {
		fail(call, rc == -ENOMEM ? C_EXHAUSTED : C_INVALID, "%s: config: %s", M, err);
		return;
	}
	/* one patcher per imported container; all or nothing */
	struct patcher_ref *ps = calloc(lm_sandbox_count(sb) + 1, sizeof(*ps));
	unsigned np = 0;
	for (size_t i = 0; ps && i < lm_sandbox_count(sb); i++) {
		const struct lm_container *ct = lm_sandbox_at(sb, i);
		if (lm_patcher_spawn(lm_actor_runtime(c->self), &ps[np].actor, ct) != 0)
			break;
		ps[np].source_id = strdup(ct->source_id ? ct->source_id : ct->id);
		np++;
	}
	if (!ps || np != lm_sandbox_count(sb)) {
		for (unsigned i = 0; ps && i < np; i++) {
			lm_actor_stop(ps[i].actor);
			lm_actor_unref(ps[i].actor);
			free(ps[i].source_id);
		}
		free(ps);
		lm_sandbox_destroy(sb);
		lm_snapshot_vm_clear(&vm);
		fail(call, C_EXHAUSTED, "%s: cannot start the patchers", M);
		return;
	}
	lm_sandbox_destroy(c->sb);
	c->sb = sb;
	lm_sandbox_set_event_fn(c->sb, on_sandbox_event, c);
	c->imported = vm;
	c->have_imported = true;
	c->patchers = ps;
	c->n_patchers = np;
	free(c->document);
	c->document = strdup(vm.document);
	snprintf(c->session, sizeof(c->session), "%s", req->session_id);
	c->side = SIDE_DEST;
	set_state(c, ST_DEST_IMPORTED);
	logi(c, "sandbox imported", "sandbox_id=%s containers=%u", req->sandbox_id ? req->sandbox_id : "", np);
	ok(call);
}

static void do_prepare(struct ctl *c, lm_rpc_call_t *call, PrepareSandboxRequest *req)
{
	const char *M = mig_name[LM_MIG_PREPARE];
	char err[256], pending[256], *json = NULL;

	if (!check_session(c, call, M, req->session_id))
		return;
	if (c->st != ST_DEST_IMPORTED || c->op != OP_NONE) {
		if (c->st == ST_DEST_IMPORTED)
			fail(call, C_PRECONDITION, "%s: another call is in progress", M);
		else
			not_in_state(c, call, M);
		return;
	}
	size_t np = lm_sandbox_pending_patches(c->sb, pending, sizeof(pending));
	if (np) {
		fail(call, C_PRECONDITION, "%s: %zu container(s) not yet created on this shim: %s",
		     M, np, pending);
		return;
	}
	if (lm_hcs_init_options_to_json(req->init_options, 2, &json, err, sizeof(err))) {
		fail(call, C_INVALID, "%s: init_options: %s", M, err);
		return;
	}
	struct hcs_op_ctx *x = op_ctx(c, OP_DEST_CREATE);
	lm_hcs_system_t *vm = NULL;
	int rc = x ? lm_hcs_system_create(&vm, c->document, json, hcs_event_cb, c->self,
					  hcs_done_cb, x) : -ENOMEM;
	free(json);
	if (rc) {
		if (x)
			op_ctx_drop(x);
		fail(call, code_for_errno(rc), "%s: create the VM: %s", M, strerror(-rc));
		return;
	}
	c->vm = vm;
	c->vm_running = false;
	c->op = OP_DEST_CREATE;
	c->op_gen = c->gen;
	c->op_call = call;
	c->op_method = LM_MIG_PREPARE;
	logi(c, "destination VM being created", NULL);
}

static void do_socket(struct ctl *c, lm_rpc_call_t *call, CreateDuplicateSocketRequest *req)
{
	const char *M = mig_name[LM_MIG_CREATE_DUPLICATE_SOCKET];

	if (!check_session(c, call, M, req->session_id))
		return;
	if (c->socket_registered || c->sock_call) {
		fail(call, C_EXISTS, "%s: a socket is already registered for this session", M);
		return;
	}
	if (c->st != ST_SOURCE_EXPORTED && c->st != ST_DEST_PREPARED && c->st != ST_SOCKET_WAITING) {
		not_in_state(c, call, M);
		return;
	}
	uint64_t dl = lm_rpc_call_deadline_ns(call);
	lm_msg_t *m = lm_transport_adopt_msg(++c->sock_gen, dl, req->protocol_info.data,
					     req->protocol_info.len);
	if (!m) {
		fail(call, C_EXHAUSTED, "%s: out of memory", M);
		return;
	}
	lm_msg_set_reply_to(m, lm_actor_mailbox(c->self));
	if (lm_actor_send(c->transport, m) != 0) {
		lm_msg_free(m);
		fail(call, C_UNAVAILABLE, "%s: the transport is not available", M);
		return;
	}
	c->sock_call = call;
}

static void start_transfer(struct ctl *c)
{
	char opts[64];
	if (!c->handshake_done) {
		/* the compute service runs the handshake first (migration_start);
		 * the transfer starts when it completes */
		c->want_transfer = true;
		set_state(c, ST_TRANSFERRING);
		return;
	}
	c->want_transfer = false;
	snprintf(opts, sizeof(opts), "{\"Origin\":\"%s\"}", c->side == SIDE_SOURCE ? "Source" : "Destination");
	struct hcs_op_ctx *x = op_ctx(c, OP_TRANSFER);
	int rc = x ? lm_hcs_migration_transfer(c->vm, opts, hcs_done_cb, x) : -ENOMEM;
	if (rc) {
		if (x)
			op_ctx_drop(x);
		set_state(c, ST_FAILED);
		c->xfer_code = C_ABORTED;
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "transfer could not start on the %s: %s",
			 side_name(c), strerror(-rc));
		answer_xfer_waiters(c, c->xfer_code, c->xfer_msg);
		return;
	}
	c->transfer_started = true;
	set_state(c, ST_TRANSFERRING);
	logi(c, "transfer started", NULL);
}

static void on_socket(struct ctl *c, const struct lm_ctl_socket *s)
{
	const char *M = mig_name[LM_MIG_CREATE_DUPLICATE_SOCKET];
	lm_rpc_call_t *call = c->sock_call;

	if (s->gen != c->sock_gen || !call) {
		if (s->fd >= 0)
			close(s->fd);
		return;
	}
	c->sock_call = NULL;
	if (s->fd < 0) {
		fail(call, s->code ? s->code : C_PRECONDITION, "%s (%s): %s", M, s->how, s->msg);
		return;
	}
	if (c->st == ST_CANCELLING || c->st == ST_CANCELLED || !c->vm ||
	    (c->st != ST_SOURCE_EXPORTED && c->st != ST_DEST_PREPARED && c->st != ST_SOCKET_WAITING)) {
		close(s->fd);
		fail(call, C_ABORTED, "%s: the session moved on (state %s) while the socket was set up",
		     M, st_name[c->st]);
		return;
	}
	uint32_t sid = 0;
	lm_hcs_session_id(c->session, &sid);
	char start[160];
	snprintf(start, sizeof(start),
		 "{\"NetworkSettings\":{\"SessionId\":%u},\"TransferCpuReservePercent\":%u}",
		 sid, c->cfg.transfer_cpu_pct);
	struct hcs_op_ctx *x = op_ctx(c, OP_MIG_START);
	int rc = x ? lm_hcs_migration_start(c->vm, start, s->fd, hcs_done_cb, x) : -ENOMEM;
	if (rc) {
		if (x)
			op_ctx_drop(x);
		close(s->fd);
		fail(call, code_for_errno(rc), "%s: the compute service refused the socket: %s",
		     M, strerror(-rc));
		return;
	}
	c->socket_registered = true;
	c->mig_started = true;
	logi(c, "migration socket adopted", "how=\"%s\" session_id_hash=%u", s->how, sid);
	ok(call);
	if (c->st == ST_SOCKET_WAITING)
		start_transfer(c);
	else
		set_state(c, ST_SOCKET_READY);
}

static void do_transfer(struct ctl *c, lm_rpc_call_t *call, TransferSandboxRequest *req)
{
	const char *M = mig_name[LM_MIG_TRANSFER];

	if (!check_session(c, call, M, req->session_id))
		return;
	uint64_t wait_ns = DEFAULT_TRANSFER_WAIT_NS;
	if (req->timeout) {
		if (req->timeout->seconds < 0 || req->timeout->nanos < 0) {
			fail(call, C_INVALID, "%s: timeout is negative", M);
			return;
		}
		uint64_t t = (uint64_t)req->timeout->seconds * 1000000000ull + (uint64_t)req->timeout->nanos;
		if (t)
			wait_ns = t;
	}
	switch (c->st) {
	case ST_SOURCE_EXPORTED:
	case ST_DEST_PREPARED: {
		if (!waiters_add(c->xfer_waiters, &c->n_xfer_waiters, call)) {
			fail(call, C_EXHAUSTED, "%s: too many waiting calls", M);
			return;
		}
		c->before_wait = c->st;
		set_state(c, ST_SOCKET_WAITING);
		lm_msg_t *t = lm_msg_alloc(LM_CTL_SOCKET_TIMEOUT, sizeof(uint64_t));
		if (t) {
			*LM_MSG_PAYLOAD(t, uint64_t) = ++c->wait_timer_gen;
			uint64_t ms = wait_ns / 1000000u;
			if (lm_actor_send_after(c->self, t, ms > UINT32_MAX ? UINT32_MAX : (uint32_t)(ms ? ms : 1)))
				lm_msg_free(t);
		}
		logi(c, "transfer waits for the socket", "timeout_ms=%llu", (unsigned long long)(wait_ns / 1000000u));
		break;
	}
	case ST_SOCKET_WAITING:
	case ST_TRANSFERRING:
		if (!waiters_add(c->xfer_waiters, &c->n_xfer_waiters, call))
			fail(call, C_EXHAUSTED, "%s: too many waiting calls", M);
		break;
	case ST_SOCKET_READY:
		if (!waiters_add(c->xfer_waiters, &c->n_xfer_waiters, call)) {
			fail(call, C_EXHAUSTED, "%s: too many waiting calls", M);
			return;
		}
		start_transfer(c);
		break;
	case ST_TRANSFER_COMPLETED:
		ok(call);
		break;
	case ST_FAILED:
		if (c->xfer_code)
			lm_rpc_call_fail(call, c->xfer_code, "%s", c->xfer_msg);
		else
			not_in_state(c, call, M);
		break;
	case ST_CANCELLING:
	case ST_CANCELLED:
		fail(call, C_ABORTED, "%s: the transfer was cancelled", M);
		break;
	default:
		not_in_state(c, call, M);
		break;
	}
}

static void on_socket_timeout(struct ctl *c, uint64_t gen)
{
	if (gen != c->wait_timer_gen || c->st != ST_SOCKET_WAITING)
		return;
	answer_xfer_waiters(c, C_DEADLINE, "TransferSandbox: no migration socket arrived in time");
	set_state(c, c->before_wait);
}

static void do_finalize(struct ctl *c, lm_rpc_call_t *call, FinalizeSandboxRequest *req)
{
	const char *M = mig_name[LM_MIG_FINALIZE];

	int action = req->action;
	if (!req->session_id || !*req->session_id) {
		fail(call, C_INVALID, "%s: session_id is empty", M);
		return;
	}
	if (action != FINALIZE_ACTION__FINALIZE_ACTION_STOP &&
	    action != FINALIZE_ACTION__FINALIZE_ACTION_RESUME) {
		fail(call, C_INVALID, "%s: action must be STOP or RESUME (got %d)", M, action);
		return;
	}
	if (!session_or_idle(c, call, M, req->session_id))
		return;
	if (c->st == ST_FINALIZED) {
		ok(call);
		return;
	}
	if (c->op == OP_FINALIZE) {
		/* a retry of the finalize in flight joins it */
		if (action == c->finalize_action &&
		    waiters_add(c->op_joined, &c->n_op_joined, call))
			return;
		fail(call, C_PRECONDITION, "%s: another finalize is in progress", M);
		return;
	}
	if (c->st != ST_TRANSFER_COMPLETED && c->st != ST_CANCELLED && c->st != ST_FAILED) {
		not_in_state(c, call, M);
		return;
	}
	if (c->op != OP_NONE) {
		fail(call, C_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	bool stop = action == FINALIZE_ACTION__FINALIZE_ACTION_STOP;
	if (c->side == SIDE_SOURCE && stop && c->st != ST_TRANSFER_COMPLETED) {
		fail(call, C_PRECONDITION, "%s: the migration did not complete (state %s): finalize with RESUME",
		     M, st_name[c->st]);
		return;
	}
	if (c->side == SIDE_DEST && !stop && (c->st != ST_TRANSFER_COMPLETED || !c->vm)) {
		fail(call, C_PRECONDITION, "%s: the destination has no complete VM to resume (state %s)",
		     M, st_name[c->st]);
		return;
	}
	if (!c->vm) {
		/* a destination cancelled before PrepareSandbox: nothing to discard but the import */
		lm_sandbox_clear(c->sb);
		set_state(c, ST_FINALIZED);
		ok(call);
		return;
	}
	char opts[128];
	snprintf(opts, sizeof(opts), "{\"Origin\":\"%s\",\"FinalizedOperation\":\"%s\"}",
		 c->side == SIDE_SOURCE ? "Source" : "Destination", stop ? "Stop" : "Resume");
	struct hcs_op_ctx *x = op_ctx(c, OP_FINALIZE);
	int rc = x ? lm_hcs_migration_finalize(c->vm, opts, hcs_done_cb, x) : -ENOMEM;
	if (rc) {
		if (x)
			op_ctx_drop(x);
		fail(call, code_for_errno(rc), "%s: %s", M, strerror(-rc));
		return;
	}
	c->op = OP_FINALIZE;
	c->op_gen = c->gen;
	c->op_call = call;
	c->op_method = LM_MIG_FINALIZE;
	c->finalize_action = action;
	logi(c, "finalize started", "action=%s", stop ? "stop" : "resume");
}

static void finish_cancel(struct ctl *c)
{
	c->cancel_in_flight = false;
	set_state(c, ST_CANCELLED);
	for (unsigned i = 0; i < c->n_cancel_waiters; i++)
		ok(c->cancel_waiters[i]);
	c->n_cancel_waiters = 0;
}

static void do_cancel(struct ctl *c, lm_rpc_call_t *call, CancelRequest *req)
{
	const char *M = mig_name[LM_MIG_CANCEL];

	if (!session_or_idle(c, call, M, req->session_id))
		return;
	switch (c->st) {
	case ST_CANCELLING:
		if (!waiters_add(c->cancel_waiters, &c->n_cancel_waiters, call))
			ok(call);
		return;
	case ST_CANCELLED:
	case ST_FINALIZED:
		ok(call);
		return;
	case ST_DEST_IMPORTED:
		c->gen++;
		set_state(c, ST_CANCELLED);
		logi(c, "cancelled", NULL);
		ok(call);
		return;
	default:
		break;
	}
	/* stop everything at once */
	c->gen++;
	set_state(c, ST_CANCELLING);
	logi(c, "cancelling", NULL);
	if (c->sock_call) {
		lm_msg_t *a = lm_msg_alloc(LM_XPORT_ABORT, 0);
		if (a && lm_actor_send(c->transport, a) != 0)
			lm_msg_free(a);
	}
	answer_xfer_waiters(c, C_ABORTED, "TransferSandbox: the transfer was cancelled");
	if (c->op != OP_NONE && c->op != OP_FINALIZE) {
		/* the operation's completion is now stale; its caller learns now */
		char msg[128];
		snprintf(msg, sizeof(msg), "%s: cancelled", mig_name[c->op_method]);
		lm_rpc_call_t *oc = c->op_call;
		c->op_call = NULL;
		if (oc)
			lm_rpc_call_fail(oc, C_ABORTED, "%s", msg);
		/* keep c->op so a late completion's resources are reclaimed */
	}
	waiters_add(c->cancel_waiters, &c->n_cancel_waiters, call);
	if (c->vm && (c->side == SIDE_SOURCE || c->mig_started || c->op == OP_DEST_CREATE)) {
		char opts[64];
		snprintf(opts, sizeof(opts), "{\"Origin\":\"%s\"}", c->side == SIDE_SOURCE ? "Source" : "Destination");
		struct hcs_op_ctx *x = op_ctx(c, OP_CANCEL);
		int rc = x ? lm_hcs_migration_cancel(c->vm, opts, hcs_done_cb, x) : -ENOMEM;
		if (rc == 0) {
			c->cancel_in_flight = true;
			return;
		}
		if (x)
			op_ctx_drop(x);
		logi(c, "compute service cancel refused", "err=%d", rc);
	}
	finish_cancel(c);
}

static void do_cleanup(struct ctl *c, lm_rpc_call_t *call, CleanupRequest *req)
{
	const char *M = mig_name[LM_MIG_CLEANUP];

	if (!session_or_idle(c, call, M, req->session_id))
		return;
	if (c->st == ST_CANCELLED && c->side == SIDE_SOURCE) {
		fail(call, C_PRECONDITION, "%s: the source was cancelled: finalize with RESUME first", M);
		return;
	}
	if (c->st != ST_FINALIZED && !(c->st == ST_CANCELLED && c->side == SIDE_DEST)) {
		not_in_state(c, call, M);
		return;
	}
	if (c->op != OP_NONE && c->op_call) {
		fail(call, C_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	if (c->st == ST_CANCELLED && c->side == SIDE_DEST) {
		/* tear down what ImportSandbox (and PrepareSandbox) created */
		close_vm(c);
		lm_sandbox_clear(c->sb);
	}
	if (c->notifier)
		lm_notifier_end_all(c->notifier);
	logi(c, "cleaned up", NULL);
	reset_session(c);
	ok(call);
}

static void do_notifications(struct ctl *c, lm_rpc_call_t *call, NotificationsRequest *req)
{
	const char *M = mig_name[LM_MIG_NOTIFICATIONS];

	if (!req->session_id || !*req->session_id) {
		lm_rpc_call_end(call, C_INVALID, "Notifications: session_id is empty");
	} else if (c->st == ST_IDLE) {
		lm_rpc_call_end(call, C_PRECONDITION, "Notifications: no migration session");
	} else if (strcmp(req->session_id, c->session) != 0) {
		char msg[400];
		snprintf(msg, sizeof(msg), "%s: session_id \"%s\" does not match the session in progress",
			 M, req->session_id);
		lm_rpc_call_end(call, C_INVALID, msg);
	} else if (lm_notifier_subscribe(c->notifier, call, c->side) != 0) {
		lm_rpc_call_end(call, C_UNAVAILABLE, "Notifications: the notifier is not available");
	}
}

/* The request message of each Migration method, in enum lm_mig_method order. */
static const ProtobufCMessageDescriptor *const mig_req[LM_MIG_N] = {
	[LM_MIG_PREPARE_AND_EXPORT] = &prepare_and_export_sandbox_request__descriptor,
	[LM_MIG_IMPORT] = &import_sandbox_request__descriptor,
	[LM_MIG_PREPARE] = &prepare_sandbox_request__descriptor,
	[LM_MIG_CREATE_DUPLICATE_SOCKET] = &create_duplicate_socket_request__descriptor,
	[LM_MIG_NOTIFICATIONS] = &notifications_request__descriptor,
	[LM_MIG_TRANSFER] = &transfer_sandbox_request__descriptor,
	[LM_MIG_FINALIZE] = &finalize_sandbox_request__descriptor,
	[LM_MIG_CANCEL] = &cancel_request__descriptor,
	[LM_MIG_CLEANUP] = &cleanup_request__descriptor,
};

/* Decodes the request once for every method (garbage -> InvalidArgument
 * naming the method), runs its handler, frees the request. */
static void on_mig_call(struct ctl *c, struct lm_ctl_call *mc)
{
	size_t len = 0;
	const uint8_t *p = lm_rpc_call_payload(mc->call, &len);
	lm_rpc_call_t *call = mc->call;
	mc->call = NULL;
	if (mc->method < 0 || mc->method >= LM_MIG_N) {
		fail(call, 12, "method %d", mc->method);
		return;
	}
	ProtobufCMessage *req = protobuf_c_message_unpack(mig_req[mc->method], NULL, len, p);
	if (!req) {
		if (mc->method == LM_MIG_NOTIFICATIONS) {   /* a stream: ends with the status */
			lm_rpc_call_end(call, C_INVALID, "Notifications: request does not decode");
		} else {
			fail(call, C_INVALID, "%s: request does not decode", mig_name[mc->method]);
		}
		return;
	}
	switch (mc->method) {
	case LM_MIG_PREPARE_AND_EXPORT: do_prepare_and_export(c, call, (void *)req); break;
	case LM_MIG_IMPORT: do_import(c, call, (void *)req); break;
	case LM_MIG_PREPARE: do_prepare(c, call, (void *)req); break;
	case LM_MIG_CREATE_DUPLICATE_SOCKET: do_socket(c, call, (void *)req); break;
	case LM_MIG_NOTIFICATIONS: do_notifications(c, call, (void *)req); break;
	case LM_MIG_TRANSFER: do_transfer(c, call, (void *)req); break;
	case LM_MIG_FINALIZE: do_finalize(c, call, (void *)req); break;
	case LM_MIG_CANCEL: do_cancel(c, call, (void *)req); break;
	case LM_MIG_CLEANUP: do_cleanup(c, call, (void *)req); break;
	}
	protobuf_c_message_free_unpacked(req, NULL);
}

/* A client went away: a parked TransferSandbox stops waiting (the
 * transfer goes on); a Notifications subscriber is removed. */
static void on_call_gone(struct ctl *c, lm_rpc_call_t *call)
{
	if (waiters_remove(c->xfer_waiters, &c->n_xfer_waiters, call)) {
		lm_rpc_call_fail(call, 1, "TransferSandbox: the caller went away");
		return;
	}
	if (waiters_remove(c->cancel_waiters, &c->n_cancel_waiters, call)) {
		lm_rpc_call_fail(call, 1, "Cancel: the caller went away");
		return;
	}
	if (c->notifier)
		lm_notifier_call_gone(c->notifier, call);
}

/* ---- compute-service completions ------------------------------------------ */

static void boot_answer(struct ctl *c, int rc, const char *msg)
{
	c->boot_rc = rc;
	snprintf(c->boot_err, sizeof(c->boot_err), "%s", msg ? msg : "");
	if (c->boot_reply) {
		lm_msg_t *m = lm_msg_alloc(LM_CTL_BOOT, 0);
		if (m) {
			m->status = (uint32_t)-rc;
			if (lm_mailbox_send(c->boot_reply, m) != 0)
				lm_msg_free(m);
		}
		lm_mailbox_unref(c->boot_reply);
		c->boot_reply = NULL;
	}
}

/* Creates the boot containers, running. */
static int boot_containers(struct ctl *c)
{
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		const struct lm_shim_container *bc = &c->boot_ctrs[i];
		if (!lm_sandbox_find_pod(c->sb, bc->pod_id)) {
			int rc = lm_sandbox_add_pod(c->sb, bc->pod_id, NULL);
			if (rc)
				return rc;
		}
	}
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		const struct lm_shim_container *bc = &c->boot_ctrs[i];
		char bundle[512], rootfs[600], scratch[600], out[600], errp[600];
		const char *dir = c->cfg.state_dir ? c->cfg.state_dir : "/run/lmshim";
		snprintf(bundle, sizeof(bundle), "%s/%s", dir, bc->id);
		snprintf(rootfs, sizeof(rootfs), "%s/rootfs", bundle);
		snprintf(scratch, sizeof(scratch), "%s/scratch", bundle);
		snprintf(out, sizeof(out), "%s/stdout", bundle);
		snprintf(errp, sizeof(errp), "%s/stderr", bundle);
		struct lm_container_spec spec = {
			.id = bc->id, .pod_id = bc->pod_id,
			.type = bc->is_sandbox ? LM_CTR_SANDBOX : LM_CTR_CONTAINER,
			.bundle = bundle, .rootfs = rootfs, .scratch = scratch,
			.n_layers = bc->layers, .stdout_path = out, .stderr_path = errp,
		};
		int rc = lm_sandbox_add(c->sb, &spec, NULL);
		if (!rc)
			rc = lm_sandbox_start(c->sb, bc->id, NULL);
		if (rc)
			return rc;
	}
	return 0;
}

static void on_hcs_done(struct ctl *c, struct hcs_done_msg *d)
{
	char msg[400];
	bool stale = d->gen != c->gen;

	switch (d->op) {
	case OP_BOOT_CREATE:
		if (d->err) {
			boot_answer(c, d->err, "the VM could not be created");
			return;
		}
		{
			struct hcs_op_ctx *x = op_ctx(c, OP_BOOT_START);
			int rc = x ? lm_hcs_system_start(c->vm, hcs_done_cb, x) : -ENOMEM;
			if (rc) {
				if (x)
					op_ctx_drop(x);
				boot_answer(c, rc, "the VM could not be started");
			}
		}
		return;
	case OP_BOOT_START:
		if (d->err) {
			boot_answer(c, d->err, "the VM could not be started");
			return;
		}
		c->vm_running = true;
		{
			int rc = boot_containers(c);
			boot_answer(c, rc, rc ? "the containers could not be created" : NULL);
		}
		return;
	case OP_INIT:
		if (stale) {
			c->op = c->op == OP_INIT ? OP_NONE : c->op;
			return;
		}
		if (d->err) {
			/* the prepare step failed: nothing changed, the call may be retried */
			c->session[0] = '\0';
			free(c->init_json);
			c->init_json = NULL;
			snprintf(msg, sizeof(msg), "PrepareAndExportSandbox: prepare failed on the source: %s",
				 strerror(-d->err));
			answer_op(c, code_for_errno(d->err), msg);
			return;
		}
		c->side = SIDE_SOURCE;
		set_state(c, ST_SOURCE_PREPARED);
		{
			struct hcs_op_ctx *x = op_ctx(c, OP_EXPORT_PROPS);
			int rc = x ? lm_hcs_system_properties(c->vm, NULL, hcs_done_cb, x) : -ENOMEM;
			if (rc) {
				if (x)
					op_ctx_drop(x);
				set_state(c, ST_FAILED);
				answer_op(c, C_INTERNAL, "PrepareAndExportSandbox: export failed on the source");
				return;
			}
			c->op = OP_EXPORT_PROPS;
		}
		return;
	case OP_EXPORT_PROPS:
		if (stale) {
			c->op = OP_NONE;
			return;
		}
		if (d->err) {
			set_state(c, ST_FAILED);
			snprintf(msg, sizeof(msg), "PrepareAndExportSandbox: export failed on the source: %s",
				 strerror(-d->err));
			answer_op(c, C_INTERNAL, msg);
			return;
		}
		finish_export(c, d->json);
		return;
	case OP_DEST_CREATE:
		if (stale) {
			/* cancelled meanwhile: the VM exists; Cleanup closes it */
			c->op = OP_NONE;
			return;
		}
		if (d->err) {
			snprintf(msg, sizeof(msg), "PrepareSandbox: the destination VM could not be created: %s",
				 strerror(-d->err));
			close_vm(c);
			answer_op(c, code_for_errno(d->err), msg);
			return;
		}
		set_state(c, ST_DEST_PREPARED);
		answer_op(c, C_OK, NULL);
		return;
	case OP_MIG_START:
		if (stale)
			return;
		if (!d->err) {
			c->handshake_done = true;
			logi(c, "handshake done", NULL);
			if (c->want_transfer && c->st == ST_TRANSFERRING)
				start_transfer(c);
			return;
		}
		/* the handshake was refused: the transfer cannot happen */
		if (c->st == ST_CANCELLING || c->st == ST_CANCELLED)
			return;
		c->xfer_code = code_for_errno(d->err) == C_UNAVAILABLE ? C_UNAVAILABLE : C_ABORTED;
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "TransferSandbox: the handshake failed on the %s: %s%s%s",
			 side_name(c), strerror(-d->err), c->last_failure[0] ? ": " : "", c->last_failure);
		if (c->st != ST_TRANSFERRING || c->want_transfer) {
			c->want_transfer = false;
			set_state(c, ST_FAILED);
			answer_xfer_waiters(c, c->xfer_code, c->xfer_msg);
		}
		return;
	case OP_TRANSFER:
		if (c->st == ST_CANCELLING || c->st == ST_CANCELLED || stale) {
			answer_xfer_waiters(c, C_ABORTED, "TransferSandbox: the transfer was cancelled");
			return;
		}
		if (d->err == 0) {
			set_state(c, ST_TRANSFER_COMPLETED);
			if (c->side == SIDE_SOURCE)
				c->vm_running = false;   /* paused at the blackout */
			logi(c, "transfer completed", NULL);
			answer_xfer_waiters(c, C_OK, NULL);
			return;
		}
		set_state(c, ST_FAILED);
		if (!c->xfer_code) {
			c->xfer_code = code_for_errno(d->err) == C_UNAVAILABLE ? C_UNAVAILABLE : C_ABORTED;
			snprintf(c->xfer_msg, sizeof(c->xfer_msg), "TransferSandbox: the transfer failed on the %s: %s%s%s",
				 side_name(c), strerror(-d->err), c->last_failure[0] ? ": " : "", c->last_failure);
		}
		logi(c, "transfer failed", "err=%d reason=\"%s\"", d->err, c->xfer_msg);
		answer_xfer_waiters(c, c->xfer_code, c->xfer_msg);
		return;
	case OP_FINALIZE:
		if (c->op != OP_FINALIZE)
			return;
		if (d->err) {
			snprintf(msg, sizeof(msg), "FinalizeSandbox: %s on the %s failed: %s",
				 c->finalize_action == FINALIZE_ACTION__FINALIZE_ACTION_STOP ? "STOP" : "RESUME",
				 side_name(c), strerror(-d->err));
			answer_op(c, code_for_errno(d->err) == C_INVALID ? C_INTERNAL : code_for_errno(d->err), msg);
			return;
		}
		if (c->finalize_action == FINALIZE_ACTION__FINALIZE_ACTION_STOP) {
			/* source: the migration succeeded; destination: discard */
			close_vm(c);
			lm_sandbox_clear(c->sb);
		} else {
			c->vm_running = true;
		}
		set_state(c, ST_FINALIZED);
		logi(c, "finalized", "action=%s",
		     c->finalize_action == FINALIZE_ACTION__FINALIZE_ACTION_STOP ? "stop" : "resume");
		answer_op(c, C_OK, NULL);
		return;
	case OP_QUERY:
		if (d->err || !d->json)
			fail(d->call, code_for_errno(d->err), "Properties: %s", strerror(-d->err));
		else
			lm_rpc_call_reply(d->call, d->json, strlen(d->json));
		d->call = NULL;
		return;
	case OP_CANCEL:
		if (d->err)
			logi(c, "compute service cancel failed", "err=%d", d->err);
		if (c->st == ST_CANCELLING)
			finish_cancel(c);
		return;
	default:
		return;
	}
}

static void on_inspect(struct ctl *c, struct lm_ctl_call *ic)
{
	lm_rpc_call_t *call = ic->call;
	size_t len = 0;
	const uint8_t *p = lm_rpc_call_payload(call, &len);
	char query[256];

	ic->call = NULL;
	if (!c->vm) {
		fail(call, C_NOT_FOUND, "Properties: this shim has no VM");
		return;
	}
	if (len >= sizeof(query)) {
		fail(call, C_INVALID, "Properties: query too long");
		return;
	}
	memcpy(query, p, len);
	query[len] = '\0';
	struct hcs_op_ctx *x = op_ctx(c, OP_QUERY);
	if (x)
		x->call = call;
	int rc = x ? lm_hcs_system_properties(c->vm, len ? query : NULL, hcs_done_cb, x) : -ENOMEM;
	if (rc) {
		if (x)
			op_ctx_drop(x);
		fail(call, code_for_errno(rc), "Properties: %s", strerror(-rc));
	}
}

/* ---- boot and quiesce ---------------------------------------------------- */

static void on_boot(struct ctl *c, lm_msg_t *m)
{
	c->boot_reply = m->reply_to;
	m->reply_to = NULL;           /* stolen */
	if (!c->document) {
		boot_answer(c, 0, NULL);
		return;
	}
	struct hcs_op_ctx *x = op_ctx(c, OP_BOOT_CREATE);
	lm_hcs_system_t *vm = NULL;
	int rc = x ? lm_hcs_system_create(&vm, c->document, NULL, hcs_event_cb, c->self,
					  hcs_done_cb, x) : -ENOMEM;
	if (rc) {
		if (x)
			op_ctx_drop(x);
		boot_answer(c, rc, "the VM document was refused");
		return;
	}
	c->vm = vm;
}

static void on_quiesce(struct ctl *c, lm_msg_t *m)
{
	/* stop any migration, close the VM, end every stream */
	answer_xfer_waiters(c, C_UNAVAILABLE, "TransferSandbox: the shim is shutting down");
	if (c->op_call)
		answer_op(c, C_UNAVAILABLE, "the shim is shutting down");
	if (c->sock_call) {
		lm_rpc_call_fail(c->sock_call, C_UNAVAILABLE, "CreateDuplicateSocket: the shim is shutting down");
		c->sock_call = NULL;
		lm_msg_t *a = lm_msg_alloc(LM_XPORT_ABORT, 0);
		if (a && lm_actor_send(c->transport, a) != 0)
			lm_msg_free(a);
	}
	for (unsigned i = 0; i < c->n_cancel_waiters; i++)
		ok(c->cancel_waiters[i]);
	c->n_cancel_waiters = 0;
	if (c->notifier)
		lm_notifier_end_all(c->notifier);
	close_vm(c);
	lm_sandbox_clear(c->sb);
	c->quiesce_reply = m->reply_to;
	m->reply_to = NULL;
	if (c->closing == 0 && c->quiesce_reply) {
		lm_msg_t *r = lm_msg_alloc(LM_CTL_CLOSED, 0);
		if (r && lm_mailbox_send(c->quiesce_reply, r) != 0)
			lm_msg_free(r);
		lm_mailbox_unref(c->quiesce_reply);
		c->quiesce_reply = NULL;
	}
}

/* ---- task service ---------------------------------------------------------- */

static void on_task_call(struct ctl *c, struct lm_task_call_msg *tm)
{
	struct lm_patch_request *patch = NULL;
	struct lm_task_gate gate = {
		.session_active = c->st != ST_IDLE,
		.vm_running = c->vm_running,
		.importing = c->st == ST_DEST_IMPORTED,
	};
	lm_rpc_call_t *call = tm->call;
	tm->call = NULL;
	int r = lm_task_handle(c->sb, &gate, call, tm->method, &patch);
	if (r == LM_TASK_EXIT) {
		lm_log_info("controller", "shutdown", "why=\"task Shutdown with no container and no session\" exits=%s",
			    c->cfg.on_shutdown ? "yes" : "no (embedded)");
		if (c->cfg.on_shutdown)
			c->cfg.on_shutdown(c->cfg.shutdown_arg);
		return;
	}
	if (r != LM_TASK_PATCH || !patch)
		return;
	lm_actor_t *p = patcher_for(c, patch->source_id ? patch->source_id : "");
	if (!p || lm_patch_send(p, lm_actor_mailbox(c->self), patch) != 0) {
		/* lm_patch_request_free fails the call with Unavailable */
		lm_patch_request_free(patch);
	}
}

static void on_patch_result(struct ctl *c, struct lm_patch_result_msg *pm)
{
	struct lm_patch_result *r = pm->res;
	int rc = 0;
	pm->res = NULL;
	if (!r)
		return;
	if (r->code == 0) {
		if (c->st != ST_DEST_IMPORTED) {
			r->code = C_PRECONDITION;
			snprintf(r->message, sizeof(r->message),
				 "Create: the import is no longer open (state %s)", st_name[c->st]);
		} else {
			rc = lm_sandbox_apply_patch(c->sb, r);
		}
	}
	int code = lm_task_answer_patch(r, rc);
	logi(c, "container patched", "source_id=%s new_id=%s code=%d",
	     r->source_id ? r->source_id : "-", r->new_id ? r->new_id : "-", code);
	lm_patch_result_free(r);
}

/* ---- dispatch -------------------------------------------------------------- */

static void dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct ctl *c = lm_actor_state(self);

	switch (m->type) {
	case LM_CTL_BOOT:
		on_boot(c, m);
		break;
	case LM_CTL_MIG_CALL:
		on_mig_call(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_CTL_TASK_CALL:
		on_task_call(c, LM_MSG_PAYLOAD(m, struct lm_task_call_msg));
		break;
	case LM_CTL_CALL_GONE: {
		struct lm_ctl_call *g = LM_MSG_PAYLOAD(m, struct lm_ctl_call);
		on_call_gone(c, g->call);
		break;      /* the dtor drops the extra reference */
	}
	case LM_CTL_HCS_DONE:
		on_hcs_done(c, LM_MSG_PAYLOAD(m, struct hcs_done_msg));
		break;
	case LM_CTL_HCS_EVENT:
		on_event(c, LM_MSG_PAYLOAD(m, struct hcs_event_msg)->json);
		break;
	case LM_CTL_SOCKET: {
		struct lm_ctl_socket *s = LM_MSG_PAYLOAD(m, struct lm_ctl_socket);
		on_socket(c, s);
		s->fd = -1;
		break;
	}
	case LM_CTL_NOTIFY_RETRY:
		c->retry_armed = false;
		if (!flush_events(c))
			arm_retry(c);
		break;
	case LM_CTL_SOCKET_TIMEOUT:
		on_socket_timeout(c, *LM_MSG_PAYLOAD(m, uint64_t));
		break;
	case LM_PATCH_RESULT:
		on_patch_result(c, LM_MSG_PAYLOAD(m, struct lm_patch_result_msg));
		break;
	case LM_CTL_CLOSED:
		if (c->closing)
			c->closing--;
		if (c->closing == 0 && c->quiesce_reply) {
			lm_msg_t *r = lm_msg_alloc(LM_CTL_CLOSED, 0);
			if (r && lm_mailbox_send(c->quiesce_reply, r) != 0)
				lm_msg_free(r);
			lm_mailbox_unref(c->quiesce_reply);
			c->quiesce_reply = NULL;
		}
		break;
	case LM_CTL_QUIESCE:
		on_quiesce(c, m);
		break;
	case LM_CTL_INSPECT:
		on_inspect(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_MSG_SYS_STOP:
		break;
	default:
		break;
	}
}

static void state_free(void *p)
{
	struct ctl *c = p;
	/* calls still parked get Unavailable (dropped if their clients left) */
	answer_xfer_waiters(c, C_UNAVAILABLE, "the shim is shutting down");
	if (c->op_call)
		answer_op(c, C_UNAVAILABLE, "the shim is shutting down");
	if (c->sock_call)
		lm_rpc_call_fail(c->sock_call, C_UNAVAILABLE, "the shim is shutting down");
	for (unsigned i = 0; i < c->n_cancel_waiters; i++)
		ok(c->cancel_waiters[i]);
	if (c->vm)
		lm_hcs_system_close(c->vm);
	stop_patchers(c);
	lm_sandbox_destroy(c->sb);
	if (c->have_imported)
		lm_snapshot_vm_clear(&c->imported);
	if (c->boot_reply)
		lm_mailbox_unref(c->boot_reply);
	if (c->quiesce_reply)
		lm_mailbox_unref(c->quiesce_reply);
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		free((char *)c->boot_ctrs[i].id);
		free((char *)c->boot_ctrs[i].pod_id);
	}
	free(c->boot_ctrs);
	free((char *)c->cfg.state_dir);
	free((char *)c->cfg.id);
	free(c->document);
	free(c->init_json);
	if (c->notifier)
		lm_actor_unref(c->notifier);
	if (c->transport)
		lm_actor_unref(c->transport);
	free(c);
}

static void call_gone_dtor(lm_msg_t *m)
{
	lm_rpc_call_unref(LM_MSG_PAYLOAD(m, struct lm_ctl_call)->call);
}

/* The sandbox's task events, as containerd's (api/events/task.proto), to
 * the publisher: controller thread, never blocks. */
static void on_sandbox_event(void *arg, enum lm_sandbox_event type, const struct lm_container *k)
{
	struct ctl *c = arg;
	if (!c->pub)
		return;
	Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	at.seconds = (int64_t)(k->exited_at_ns / 1000000000ull);
	at.nanos = (int32_t)(k->exited_at_ns % 1000000000ull);
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
		e.id = k->id;          /* the init process: its exec ID is the container's */
		e.pid = k->pid;
		e.exit_status = k->exit_status;
		e.exited_at = &at;
		lm_publisher_publish(c->pub, "/tasks/exit", "containerd.events.TaskExit", &e.base);
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
	}
}

int lm_controller_spawn(lm_runtime_t *rt, lm_actor_t **out,
			const struct lm_shim_config *cfg, lm_actor_t *notifier,
			lm_actor_t *transport, lm_publisher_t *pub)
{
	struct ctl *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return -ENOMEM;
	(void)call_gone_dtor;
	rc = lm_sandbox_create(&c->sb);
	if (rc) {
		free(c);
		return rc;
	}
	c->pub = pub;
	lm_sandbox_set_event_fn(c->sb, on_sandbox_event, c);
	c->cfg = *cfg;
	c->cfg.socket = NULL;
	c->cfg.ns = NULL;
	c->cfg.vm_document = NULL;
	c->cfg.containers = NULL;
	c->cfg.id = cfg->id ? strdup(cfg->id) : NULL;
	c->cfg.state_dir = cfg->state_dir ? strdup(cfg->state_dir) : NULL;
	c->document = cfg->vm_document ? strdup(cfg->vm_document) : NULL;
	if (cfg->n_containers) {
		c->boot_ctrs = calloc(cfg->n_containers, sizeof(*c->boot_ctrs));
		for (unsigned i = 0; c->boot_ctrs && i < cfg->n_containers; i++) {
			c->boot_ctrs[i] = cfg->containers[i];
			c->boot_ctrs[i].id = strdup(cfg->containers[i].id);
			c->boot_ctrs[i].pod_id = strdup(cfg->containers[i].pod_id);
		}
		c->n_boot_ctrs = c->boot_ctrs ? cfg->n_containers : 0;
	}
	c->notifier = notifier;
	if (notifier)
		lm_actor_ref(notifier);
	c->transport = transport;
	if (transport)
		lm_actor_ref(transport);
	c->st = ST_IDLE;
	rc = lm_actor_spawn(rt, out, "controller", dispatch, c, state_free, 8192);
	if (rc) {
		state_free(c);
		return rc;
	}
	c->self = *out;
	return 0;
}

static void free_waiter_mailbox(lm_mailbox_t *mb, void *arg)
{
	(void)arg;
	lm_mailbox_destroy(mb);
	free(mb);
}

/* Sends `type` to the controller with a plain mailbox as reply_to and
 * waits for the answer (non-worker threads only). The mailbox is on the
 * heap and freed by its last reference: if the controller answers after
 * the timeout, or keeps its reference longer, nothing waits for it. */
static int call_and_wait(lm_actor_t *ctl, uint32_t type, int64_t timeout_ns, uint32_t *status)
{
	lm_mailbox_t *mb = malloc(sizeof(*mb));
	if (!mb)
		return -ENOMEM;
	int rc = lm_mailbox_init(mb, 16, NULL, NULL, free_waiter_mailbox, NULL);
	if (rc) {
		free(mb);
		return rc;
	}
	lm_msg_t *m = lm_msg_alloc(type, 0);
	if (!m) {
		lm_mailbox_unref(mb);
		return -ENOMEM;
	}
	lm_msg_set_reply_to(m, mb);
	rc = lm_actor_send(ctl, m);
	if (rc) {
		lm_msg_free(m);
		lm_mailbox_unref(mb);
		return rc;
	}
	uint64_t deadline = lm_now_ns() + (uint64_t)timeout_ns;
	lm_msg_t *r = NULL;
	while (!(r = lm_mailbox_recv(mb))) {
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			break;
		lm_mailbox_wait(mb, (int64_t)(deadline - now));
	}
	if (r) {
		if (status)
			*status = r->status;
		lm_msg_free(r);
		rc = 0;
	} else {
		rc = -ETIMEDOUT;
	}
	lm_mailbox_unref(mb);
	return rc;
}

int lm_controller_boot(lm_actor_t *ctl, char *err, size_t errlen)
{
	uint32_t status = 0;
	int rc = call_and_wait(ctl, LM_CTL_BOOT, 120ll * 1000000000ll, &status);
	struct ctl *c = lm_actor_state(ctl);
	if (rc == 0 && status)
		rc = -(int)status;
	if (err && errlen)
		snprintf(err, errlen, "%s", rc ? c->boot_err : "");
	return rc;
}

void lm_controller_quiesce(lm_actor_t *ctl)
{
	call_and_wait(ctl, LM_CTL_QUIESCE, 30ll * 1000000000ll, NULL);
}

/* For the Migration service glue. */
void lm__controller_call_gone_dtor(lm_msg_t *m);
void lm__controller_call_gone_dtor(lm_msg_t *m)
{
	call_gone_dtor(m);
}
