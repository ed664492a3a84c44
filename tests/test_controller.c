/*
 * test_controller.c: the controller actor on its own, in the runtime's
 * step mode: the Migration state machine call by call (the idle shim's
 * rules, the session ID rules, calls out of order, Cancel in each state,
 * the socket wait's timeout and its retry, a socket that arrives late or
 * after a Cancel, Finalize retries joining the one in flight, Cleanup),
 * with assertions on every answer (code and reason) and on what the
 * controller told its notifier and its transport.
 *
 * Seams. The controller is spawned as the shim spawns it
 * (lm_controller_spawn) beside two fakes: a notifier that records each
 * message (events, subscribers, END_ALL, GONE) and a transport that
 * records each ADOPT/ABORT and lets the test answer with a socket of its
 * choosing. Calls are real ttrpc calls: the Migration service of
 * lm_migration_service_init on an lm_rpc_server that serves one end of a
 * socket pair; the test writes Request frames on the other end itself and
 * reads the answers in the order the server wrote them. The compute
 * service is the real one with the sim backend (a small, idle VM); its
 * completions come from its threads as messages, which the test waits for
 * (lm_runtime_wait) and runs.
 *
 * Determinism. Every actor runs on the test's thread, only when the test
 * steps the runtime; the socket wait's timer is on the virtual clock, so
 * "200 ms passed" is lm_runtime_advance(rt, 200). The server writes
 * answers in the order the controller gave them, so a probe call that is
 * answered at once (PrepareAndExportSandbox with an empty session ID: the
 * state's name, or "session_id is empty" when idle) proves no other
 * answer was given before it, and tells the state. A call "answered at
 * once" is one whose answer arrives without the runtime being stepped
 * again after the controller took the call. Nothing sleeps.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "actors/controller.h"
#include "actors/notifier.h"
#include "actors/transport.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "migration.pb-c.h"
#include "rpc/frame.h"
#include "rpc/server.h"
#include "runtime/runtime.h"
#include "shim/shim.h"
#include "util/clock.h"
#include "util/log.h"

#define SEC 1000000000ll
#define SID "sess-1"
#define WAIT (60 * SEC)          /* bound of every wait (a failure, never a pass) */

static const char *VM_DOC =
	"{\"Id\":\"vm-ctl\",\"VirtualMachine\":{\"Backend\":\"sim\","
	"\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":16},\"Processor\":{\"Count\":1}},"
	"\"GuestWorkload\":{\"RateMBps\":2,\"Pattern\":\"HotSet\",\"Fill\":\"Random\"}}}";

static const struct lm_shim_container CTRS[] = {
	{ "pod-a", "pod-a", true, 1 },
	{ "c1", "pod-a", false, 2 },
};

/* ---- the fake notifier: records what the controller tells it ------------ */

#define MAX_EV 256

struct fake_nt {
	int phase[MAX_EV];           /* phase transitions, in order (no progress) */
	int origin[MAX_EV];
	int pstate[MAX_EV];
	unsigned nev;
	unsigned progress;           /* TRANSFER_IN_PROGRESS events */
	char failure[256];           /* the last FAILED event's reason */
	lm_rpc_call_t *subs[8];
	int sub_origin[8];
	unsigned nsubs, subscribes, end_alls, gones;
};

static void nt_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct fake_nt *n = lm_actor_state(self);
	switch (m->type) {
	case LM_NOTIFY_SUBSCRIBE: {
		struct lm_notify_subscribe *p = LM_MSG_PAYLOAD(m, struct lm_notify_subscribe);
		assert_true(n->nsubs < 8);
		n->sub_origin[n->nsubs] = p->origin;
		n->subs[n->nsubs++] = p->call;
		p->call = NULL;              /* stolen: answered at END_ALL or GONE */
		n->subscribes++;
		break;
	}
	case LM_NOTIFY_EVENT: {
		struct lm_notify_event *e = LM_MSG_PAYLOAD(m, struct lm_notify_event);
		if (e->phase == LM_PHASE_TRANSFER_IN_PROGRESS) {
			n->progress++;
			break;
		}
		if (n->nev < MAX_EV) {
			n->phase[n->nev] = e->phase;
			n->origin[n->nev] = e->origin;
			n->pstate[n->nev++] = e->state;
		}
		if (e->has_failure)
			snprintf(n->failure, sizeof(n->failure), "%s", e->failure);
		break;
	}
	case LM_NOTIFY_END_ALL:
		for (unsigned i = 0; i < n->nsubs; i++)
			lm_rpc_call_end(n->subs[i], 0, NULL);
		n->nsubs = 0;
		n->end_alls++;
		break;
	case LM_NOTIFY_GONE: {
		lm_rpc_call_t *call = LM_MSG_PAYLOAD(m, struct lm_notify_gone)->call;
		for (unsigned i = 0; i < n->nsubs; i++)
			if (n->subs[i] == call) {
				lm_rpc_call_end(call, LM_RPC_CANCELED, "gone");
				n->subs[i] = n->subs[--n->nsubs];
				break;
			}
		n->gones++;
		break;
	}
	default:
		break;
	}
}

static void nt_free(void *p)
{
	struct fake_nt *n = p;
	for (unsigned i = 0; i < n->nsubs; i++)
		lm_rpc_call_end(n->subs[i], LM_RPC_UNAVAILABLE, "stopping");
	free(n);
}

/* ---- the fake transport: records requests, answers when told ------------ */

struct fake_xp {
	unsigned adopts, aborts;
	uint64_t gen;                /* of the last ADOPT */
	uint64_t deadline_ns;
	uint8_t desc[512];
	size_t desc_len;
	lm_mailbox_t *reply_to;      /* of the last ADOPT (reference held) */
};

static void xp_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct fake_xp *x = lm_actor_state(self);
	if (m->type == LM_XPORT_ADOPT) {
		struct lm_xport_adopt *a = LM_MSG_PAYLOAD(m, struct lm_xport_adopt);
		x->adopts++;
		x->gen = a->gen;
		x->deadline_ns = a->deadline_ns;
		x->desc_len = a->len < sizeof(x->desc) ? a->len : sizeof(x->desc);
		memcpy(x->desc, a->desc, x->desc_len);
		if (x->reply_to)
			lm_mailbox_unref(x->reply_to);
		x->reply_to = m->reply_to;
		m->reply_to = NULL;          /* stolen */
	} else if (m->type == LM_XPORT_ABORT) {
		x->aborts++;
	}
}

static void xp_free(void *p)
{
	struct fake_xp *x = p;
	if (x->reply_to)
		lm_mailbox_unref(x->reply_to);
	free(x);
}

/* ---- one shim's controller with its server and fakes --------------------- */

struct side {
	const char *name;
	lm_actor_t *ctl, *nt, *xp;
	struct fake_nt *nts;
	struct fake_xp *xps;
	lm_rpc_server_t *srv;
	struct lm_rpc_service mig, inspect, recovery;
	struct lm_rpc_method methods[16];   /* the Migration service's, wrapped */
	const struct lm_rpc_method *orig;   /* lm_migration_service_init's table */
	atomic_uint posted;          /* calls the service has posted to the controller */
	atomic_uint gone;            /* clients gone, posted likewise */
	int fd, fd2;                 /* our ends of the two adopted connections */
	uint32_t next_stream[2];
	lm_mailbox_t boot;           /* LM_CTL_BOOT's answer */
};

static struct {
	lm_runtime_t *rt;
	struct side src, dst;
	char dir[64];
} F;

static lm_runtime_t *F_rt(void)
{
	return F.rt;
}

static struct side *side_of(void *ctl)
{
	return ctl == F.src.ctl ? &F.src : &F.dst;
}

static bool mailbox_has_mail(void *arg)
{
	return lm_mailbox_size(arg) > 0;
}

/* The Migration service's handlers, wrapped: the real one posts the call
 * to the controller, then the wrapper counts it and wakes the stepping
 * thread, so the test knows exactly when a call is in the controller's
 * mailbox. Same for the cancel callback (a client gone). */
static struct side *side_of(void *ctl);

static const struct lm_rpc_method *orig_method(struct side *s, const char *name)
{
	for (size_t i = 0; i < s->mig.n_methods; i++)
		if (!strcmp(s->orig[i].name, name))
			return &s->orig[i];
	fail_msg("no method %s", name);
	return NULL;
}

static void wrapped_handler(lm_rpc_call_t *call, void *arg)
{
	struct side *s = side_of(arg);
	orig_method(s, lm_rpc_call_method(call))->handler(call, arg);
	atomic_fetch_add(&s->posted, 1);
	lm_runtime_wake(F_rt());
}

static void wrapped_cancel(lm_rpc_call_t *call, enum lm_rpc_cancel why, void *arg)
{
	struct side *s = side_of(arg);
	orig_method(s, lm_rpc_call_method(call))->cancel(call, why, arg);
	atomic_fetch_add(&s->gone, 1);
	lm_runtime_wake(F_rt());
}

static bool counter_reached(atomic_uint *c, unsigned want)
{
	return atomic_load(c) >= want;
}

/* Waits (without running anything) until the counter reaches want. */
static void wait_counter(atomic_uint *c, unsigned want)
{
	uint64_t deadline = lm_now_ns() + WAIT;
	while (!counter_reached(c, want)) {
		assert_true(lm_now_ns() < deadline);
		int rc = lm_runtime_wait(F_rt(), -1, 0, (int64_t)(deadline - lm_now_ns()));
		assert_true(rc == 0 || rc == -ETIMEDOUT);
		if (!counter_reached(c, want))
			sched_yield();   /* woken by other mail: the wake is on its way */
	}
}

static void side_create(struct side *s, const char *name, bool source, unsigned nctrs)
{
	char state_dir[128];
	snprintf(state_dir, sizeof(state_dir), "%s/%s", F.dir, name);
	struct lm_shim_config cfg = {
		.id = name, .ns = "test", .state_dir = state_dir, .any_uid = true,
		.vm_document = source ? VM_DOC : NULL,
		.containers = source ? CTRS : NULL, .n_containers = source ? nctrs : 0,
	};
	struct lm_rpc_server_config scfg = { .any_uid = true };
	int a[2], b[2];

	s->name = name;
	s->nts = calloc(1, sizeof(*s->nts));
	s->xps = calloc(1, sizeof(*s->xps));
	assert_int_equal(lm_actor_spawn(F.rt, &s->nt, "fake-notifier", nt_dispatch, s->nts, nt_free, 0), 0);
	assert_int_equal(lm_actor_spawn(F.rt, &s->xp, "fake-transport", xp_dispatch, s->xps, xp_free, 0), 0);
	assert_int_equal(lm_controller_spawn(F.rt, &s->ctl, &cfg, s->nt, s->xp, NULL), 0);
	assert_int_equal(lm_rpc_server_create(&s->srv, &scfg), 0);
	lm_migration_service_init(&s->mig, &s->inspect, &s->recovery, s->ctl);
	assert_true(s->mig.n_methods <= 16);
	s->orig = s->mig.methods;
	for (size_t i = 0; i < s->mig.n_methods; i++) {
		s->methods[i] = s->orig[i];
		s->methods[i].handler = wrapped_handler;
		if (s->orig[i].cancel)
			s->methods[i].cancel = wrapped_cancel;
	}
	s->mig.methods = s->methods;
	assert_int_equal(lm_rpc_server_register(s->srv, &s->mig), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
	assert_int_equal(lm_rpc_server_adopt(s->srv, a[0]), 0);
	assert_int_equal(lm_rpc_server_adopt(s->srv, b[0]), 0);
	assert_int_equal(lm_rpc_server_start(s->srv), 0);
	s->fd = a[1];
	s->fd2 = b[1];
	s->next_stream[0] = s->next_stream[1] = 1;
	/* 8 slots, not 4: see test_transport.c */
	assert_int_equal(lm_mailbox_init(&s->boot, 8, NULL, NULL, NULL, NULL), 0);
	if (!source)
		return;
	/* the standalone boot, as lm_controller_boot does it, answered to a
	 * mailbox of ours while this thread runs the controller */
	lm_msg_t *m = lm_msg_alloc(LM_CTL_BOOT, 0);
	lm_msg_set_reply_to(m, &s->boot);
	assert_int_equal(lm_actor_send(s->ctl, m), 0);
	assert_int_equal(lm_runtime_run_until(F.rt, mailbox_has_mail, &s->boot, WAIT), 0);
	lm_msg_t *r = lm_mailbox_recv(&s->boot);
	assert_int_equal(r->status, 0);
	lm_msg_free(r);
}

struct quiesce_job { lm_actor_t *ctl; atomic_int done; };

static void *quiesce_main(void *arg)
{
	struct quiesce_job *j = arg;
	lm_controller_quiesce(j->ctl);       /* blocks until the controller answers */
	atomic_store(&j->done, 1);
	lm_runtime_wake(F.rt);
	return NULL;
}

static bool job_done(void *arg)
{
	return atomic_load(&((struct quiesce_job *)arg)->done) != 0;
}

static void side_destroy(struct side *s)
{
	if (!s->ctl)
		return;
	/* quiesce (VM closed on its closer thread, streams ended) on a thread
	 * of its own, since it waits for the controller this thread runs */
	struct quiesce_job j = { .ctl = s->ctl };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, quiesce_main, &j), 0);
	assert_int_equal(lm_runtime_run_until(F.rt, job_done, &j, WAIT), 0);
	pthread_join(th, NULL);
	close(s->fd);
	close(s->fd2);
	lm_rpc_server_destroy(s->srv);
	lm_actor_stop(s->ctl);
	lm_actor_stop(s->xp);
	lm_actor_stop(s->nt);
	assert_true(lm_runtime_run_until_quiet(F.rt, 0) >= 0);
	lm_actor_unref(s->ctl);
	lm_actor_unref(s->xp);
	lm_actor_unref(s->nt);
	lm_mailbox_destroy(&s->boot);
	memset(s, 0, sizeof(*s));
}

static int setup(void **state)
{
	(void)state;
	struct lm_runtime_config cfg = { .step = true };
	memset(&F, 0, sizeof(F));
	snprintf(F.dir, sizeof(F.dir), "/tmp/lm-ctl-XXXXXX");
	assert_non_null(mkdtemp(F.dir));
	assert_int_equal(lm_runtime_create(&F.rt, &cfg), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	side_destroy(&F.src);
	side_destroy(&F.dst);
	lm_runtime_destroy(F.rt);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", F.dir);
	assert_int_equal(system(cmd), 0);
	lm_msg_pool_trim();
	return 0;
}

/* ---- raw ttrpc: requests out, answers in the server's order ---------------- */

struct ans {
	uint32_t stream;
	uint8_t type, flags;
	int code;
	char msg[700];
	uint8_t *payload;            /* malloc'd (free it), or NULL */
	size_t len;
};

static void write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		assert_true(w > 0);
		p += w;
		n -= (size_t)w;
	}
}

static void read_all(int fd, uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		assert_true(r > 0);
		p += r;
		n -= (size_t)r;
	}
}

/* Writes a Request on connection `conn` (0 or 1); returns its stream. */
static uint32_t send_req(struct side *s, int conn, const char *method, const ProtobufCMessage *req,
			 uint8_t flags)
{
	uint8_t body[4096];
	size_t blen = req ? protobuf_c_message_pack(req, body) : 0;
	struct lm_ttrpc_request_out r = { .service = "Migration", .method = method,
					  .payload = body, .payload_len = blen };
	size_t n = lm_ttrpc_request_frame_size(&r);
	uint8_t *f = malloc(n);
	uint32_t stream = s->next_stream[conn];
	s->next_stream[conn] += 2;
	lm_ttrpc_request_frame_encode(f, stream, flags, &r);
	write_all(conn ? s->fd2 : s->fd, f, n);
	free(f);
	return stream;
}

static bool readable(int fd, int timeout_ms)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, timeout_ms) == 1;
}

static void read_frame(int fd, struct ans *a)
{
	uint8_t hdr[LM_TTRPC_HDR_LEN];
	struct lm_ttrpc_hdr h;
	read_all(fd, hdr, sizeof(hdr));
	lm_ttrpc_hdr_decode(hdr, &h);
	uint8_t *data = malloc(h.len + 1);
	read_all(fd, data, h.len);
	memset(a, 0, sizeof(*a));
	a->stream = h.stream;
	a->type = h.type;
	a->flags = h.flags;
	if (h.type == LM_TTRPC_RESPONSE) {
		struct lm_ttrpc_response r;
		const char *why = NULL;
		assert_int_equal(lm_ttrpc_response_decode(data, h.len, &r, &why), 0);
		a->code = r.code;
		snprintf(a->msg, sizeof(a->msg), "%.*s", (int)r.message.len, (const char *)r.message.p);
		if (r.payload.len) {
			a->payload = malloc(r.payload.len);
			memcpy(a->payload, r.payload.p, r.payload.len);
			a->len = r.payload.len;
		}
	} else if (h.len) {
		a->payload = malloc(h.len);
		memcpy(a->payload, data, h.len);
		a->len = h.len;
	}
	free(data);
}

/* The next frame the server writes on connection `conn`, running the
 * actors (and waiting for mail from the rpc loop and hcs threads) until
 * it comes. */
static void next_answer(struct side *s, int conn, struct ans *a)
{
	int fd = conn ? s->fd2 : s->fd;
	uint64_t deadline = lm_now_ns() + WAIT;
	while (!readable(fd, 0)) {
		assert_true(lm_runtime_run_until_quiet(F.rt, deadline) >= 0);
		if (readable(fd, 0))
			break;
		assert_true(lm_now_ns() < deadline);
		int rc = lm_runtime_wait(F.rt, fd, POLLIN, (int64_t)(deadline - lm_now_ns()));
		assert_true(rc == 0 || rc == -ETIMEDOUT);
	}
	read_frame(fd, a);
}

/* A call: its answer must be the next frame. Returns the code; the
 * message goes to why (if not NULL), the payload to *a (if not NULL). */
static int call_on(struct side *s, const char *method, const ProtobufCMessage *req, struct ans *out)
{
	struct ans a;
	uint32_t st = send_req(s, 0, method, req, 0);
	next_answer(s, 0, &a);
	if (a.stream != st)
		print_error("%s: %s: the answer of stream %u came first (code %d \"%s\")\n",
			    s->name, method, a.stream, a.code, a.msg);
	assert_int_equal(a.stream, st);
	assert_int_equal(a.type, LM_TTRPC_RESPONSE);
	if (out)
		*out = a;
	else
		free(a.payload);
	return a.code;
}

/* The call's code, and that its message contains `want`. */
static void expect(struct side *s, const char *method, const ProtobufCMessage *req, int code,
		   const char *want)
{
	struct ans a;
	int got = call_on(s, method, req, &a);
	if (got != code || (want && !strstr(a.msg, want)))
		print_error("%s: %s -> %d \"%s\" (wanted %d \"%s\")\n", s->name, method, got, a.msg,
			    code, want ? want : "");
	assert_int_equal(got, code);
	if (want)
		assert_non_null(strstr(a.msg, want));
	free(a.payload);
}

/* A call answered at once: after the controller took it (the first mail
 * after the request), its answer arrives without the runtime being
 * stepped again. */
static void expect_at_once(struct side *s, const char *method, const ProtobufCMessage *req,
			   int code, const char *want)
{
	struct ans a;
	unsigned before = atomic_load(&s->posted);
	uint32_t st = send_req(s, 0, method, req, 0);
	wait_counter(&s->posted, before + 1);
	assert_true(lm_runtime_run_until_quiet(F.rt, 0) >= 1);
	/* no more stepping: only the rpc loop moves now */
	assert_true(readable(s->fd, (int)(WAIT / 1000000)));
	read_frame(s->fd, &a);
	if (a.stream != st || a.code != code || (want && !strstr(a.msg, want)))
		print_error("%s: %s -> stream %u %d \"%s\" (wanted %u %d \"%s\")\n", s->name, method,
			    a.stream, a.code, a.msg, st, code, want ? want : "");
	assert_int_equal(a.stream, st);
	assert_int_equal(a.code, code);
	if (want)
		assert_non_null(strstr(a.msg, want));
	free(a.payload);
}

/* The state, by a probe answered at once that changes nothing
 * (PrepareAndExportSandbox with an empty ID): also proves that no other
 * answer was written before it. */
static const char *state_of(struct side *s)
{
	static char st[64];
	PrepareAndExportSandboxRequest r = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
	r.session_id = "";
	struct ans a;
	int code = call_on(s, "PrepareAndExportSandbox", &r.base, &a);
	free(a.payload);
	if (code == LM_RPC_INVALID_ARGUMENT && strstr(a.msg, "session_id is empty"))
		return "Idle";
	assert_int_equal(code, LM_RPC_FAILED_PRECONDITION);
	const char *p = strstr(a.msg, "not allowed in state ");
	assert_non_null(p);
	p += strlen("not allowed in state ");
	size_t n = strcspn(p, " ");
	snprintf(st, sizeof(st), "%.*s", (int)n, p);
	return st;
}

/* ---- requests ----------------------------------------------------------------- */

static ProtobufCMessage *req_cancel(const char *sid)
{
	static CancelRequest r;
	cancel_request__init(&r);
	r.session_id = (char *)sid;
	return &r.base;
}

static ProtobufCMessage *req_cleanup(const char *sid)
{
	static CleanupRequest r;
	cleanup_request__init(&r);
	r.session_id = (char *)sid;
	return &r.base;
}

static ProtobufCMessage *req_finalize(const char *sid, int action)
{
	static FinalizeSandboxRequest r;
	finalize_sandbox_request__init(&r);
	r.session_id = (char *)sid;
	r.action = action;
	return &r.base;
}

#define STOP FINALIZE_ACTION__FINALIZE_ACTION_STOP
#define RESUME FINALIZE_ACTION__FINALIZE_ACTION_RESUME

static ProtobufCMessage *req_transfer(const char *sid, int64_t timeout_ms)
{
	static TransferSandboxRequest r;
	static Google__Protobuf__Duration d;
	transfer_sandbox_request__init(&r);
	google__protobuf__duration__init(&d);
	r.session_id = (char *)sid;
	if (timeout_ms) {
		d.seconds = timeout_ms / 1000;
		d.nanos = (int32_t)((timeout_ms % 1000) * 1000000);
		r.timeout = &d;
	}
	return &r.base;
}

static ProtobufCMessage *req_prepare(const char *sid)
{
	static PrepareSandboxRequest r;
	prepare_sandbox_request__init(&r);
	r.session_id = (char *)sid;
	return &r.base;
}

static ProtobufCMessage *req_export(const char *sid)
{
	static PrepareAndExportSandboxRequest r;
	prepare_and_export_sandbox_request__init(&r);
	r.session_id = (char *)sid;
	return &r.base;
}

static ProtobufCMessage *req_notifications(const char *sid)
{
	static NotificationsRequest r;
	notifications_request__init(&r);
	r.session_id = (char *)sid;
	return &r.base;
}

static uint8_t desc_buf[512];

/* A CreateDuplicateSocket with a connect descriptor (the fake transport
 * records it and answers as told). */
static ProtobufCMessage *req_socket(const char *sid, const char *addr)
{
	static CreateDuplicateSocketRequest r;
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT;
	d.connect = (char *)addr;
	create_duplicate_socket_request__init(&r);
	r.session_id = (char *)sid;
	r.protocol_info.data = desc_buf;
	r.protocol_info.len = linux_socket_descriptor__pack(&d, desc_buf);
	return &r.base;
}

/* PrepareAndExportSandbox on the source; returns the config (free it). */
static Google__Protobuf__Any *export_ok(struct side *s)
{
	struct ans a;
	assert_int_equal(call_on(s, "PrepareAndExportSandbox", req_export(SID), &a), 0);
	PrepareAndExportSandboxResponse *resp =
		prepare_and_export_sandbox_response__unpack(NULL, a.len, a.payload);
	free(a.payload);
	assert_non_null(resp);
	assert_non_null(resp->config);
	assert_true(resp->config->type_url && resp->config->type_url[0]);
	assert_true(resp->config->value.len > 0);
	Google__Protobuf__Any *config = resp->config;
	resp->config = NULL;
	prepare_and_export_sandbox_response__free_unpacked(resp, NULL);
	return config;
}

static ProtobufCMessage *req_import(const char *sid, const char *sandbox, Google__Protobuf__Any *config)
{
	static ImportSandboxRequest r;
	import_sandbox_request__init(&r);
	r.session_id = (char *)sid;
	r.sandbox_id = (char *)sandbox;
	r.config = config;
	return &r.base;
}

/* The fake transport answers the last ADOPT. fd >= 0: a socket (given
 * away); otherwise a refusal with code and msg. */
static void xport_answer(struct side *s, uint64_t gen, int fd, int code, const char *msg)
{
	lm_msg_t *m = lm_msg_alloc(LM_CTL_SOCKET, sizeof(struct lm_ctl_socket));
	struct lm_ctl_socket *so = LM_MSG_PAYLOAD(m, struct lm_ctl_socket);
	memset(so, 0, sizeof(*so));
	so->gen = gen;
	so->fd = fd;
	so->err = fd >= 0 ? 0 : -ECONNREFUSED;
	so->code = code;
	snprintf(so->msg, sizeof(so->msg), "%s", msg ? msg : "");
	snprintf(so->how, sizeof(so->how), "connect test");
	assert_non_null(s->xps->reply_to);
	assert_int_equal(lm_mailbox_send(s->xps->reply_to, m), 0);
}

/* ---- the idle shim ---------------------------------------------------------------- */

static void test_an_idle_shim_answers_every_call_at_once_and_tells_nobody(void **state)
{
	(void)state;
	side_create(&F.dst, "dst", false, 0);
	struct side *d = &F.dst;
	/* a session ID names no session */
	expect_at_once(d, "PrepareSandbox", req_prepare(SID), LM_RPC_INVALID_ARGUMENT,
		       "PrepareSandbox: session_id \"sess-1\" names no session (this shim is idle)");
	expect_at_once(d, "CreateDuplicateSocket", req_socket(SID, "unix:/nowhere"),
		       LM_RPC_INVALID_ARGUMENT, "names no session");
	expect_at_once(d, "TransferSandbox", req_transfer(SID, 100), LM_RPC_INVALID_ARGUMENT,
		       "names no session");
	/* but Finalize, Cancel and Cleanup are OK whatever the (non-empty) ID */
	expect_at_once(d, "FinalizeSandbox", req_finalize("other", STOP), LM_RPC_OK, NULL);
	expect_at_once(d, "Cancel", req_cancel("other"), LM_RPC_OK, NULL);
	expect_at_once(d, "Cleanup", req_cleanup("other"), LM_RPC_OK, NULL);
	/* an empty ID is always InvalidArgument, and so is a finalize action */
	expect_at_once(d, "Cancel", req_cancel(""), LM_RPC_INVALID_ARGUMENT, "Cancel: session_id is empty");
	expect_at_once(d, "Cleanup", req_cleanup(""), LM_RPC_INVALID_ARGUMENT, "Cleanup: session_id is empty");
	expect_at_once(d, "FinalizeSandbox", req_finalize("", STOP), LM_RPC_INVALID_ARGUMENT,
		       "session_id is empty");
	expect_at_once(d, "FinalizeSandbox", req_finalize(SID, FINALIZE_ACTION__FINALIZE_ACTION_UNSPECIFIED),
		       LM_RPC_INVALID_ARGUMENT, "action must be STOP or RESUME");
	/* nothing to export without a VM */
	expect_at_once(d, "PrepareAndExportSandbox", req_export(SID), LM_RPC_FAILED_PRECONDITION,
		       "no running VM to export");
	/* an import needs a sandbox ID and a config; a bad one leaves no trace */
	expect_at_once(d, "ImportSandbox", req_import(SID, "", NULL), LM_RPC_INVALID_ARGUMENT,
		       "sandbox_id is empty");
	expect_at_once(d, "ImportSandbox", req_import(SID, "pod-a", NULL), LM_RPC_INVALID_ARGUMENT,
		       "config is missing");
	Google__Protobuf__Any bad = GOOGLE__PROTOBUF__ANY__INIT;
	bad.type_url = "type.googleapis.com/something.Else";
	bad.value.data = (uint8_t *)"\x08\x01";
	bad.value.len = 2;
	expect_at_once(d, "ImportSandbox", req_import(SID, "pod-a", &bad), LM_RPC_INVALID_ARGUMENT,
		       "ImportSandbox: config:");
	/* garbage for every method names the method */
	static const char *const methods[] = { "PrepareAndExportSandbox", "ImportSandbox",
		"PrepareSandbox", "CreateDuplicateSocket", "TransferSandbox", "FinalizeSandbox",
		"Cancel", "Cleanup" };
	static const uint8_t junk[] = { 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f };
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		ProtobufCBinaryData bd = { sizeof(junk), (uint8_t *)junk };
		struct lm_ttrpc_request_out r = { .service = "Migration", .method = methods[i],
						  .payload = bd.data, .payload_len = bd.len };
		uint8_t f[256];
		uint32_t st = d->next_stream[0];
		d->next_stream[0] += 2;
		write_all(d->fd, f, lm_ttrpc_request_frame_encode(f, st, 0, &r));
		struct ans a;
		next_answer(d, 0, &a);
		char want[80];
		snprintf(want, sizeof(want), "%s: request does not decode", methods[i]);
		assert_int_equal(a.stream, st);
		assert_int_equal(a.code, LM_RPC_INVALID_ARGUMENT);
		assert_string_equal(a.msg, want);
		free(a.payload);
	}
	/* Notifications on an idle shim: the stream ends with InvalidArgument */
	uint32_t st = send_req(d, 0, "Notifications", req_notifications(SID), LM_TTRPC_F_REMOTE_CLOSED);
	struct ans a;
	next_answer(d, 0, &a);
	assert_int_equal(a.stream, st);
	assert_int_equal(a.code, LM_RPC_INVALID_ARGUMENT);
	assert_non_null(strstr(a.msg, "Notifications: session_id \"sess-1\" names no session"));
	free(a.payload);
	/* still idle; the notifier and the transport heard nothing */
	assert_string_equal(state_of(d), "Idle");
	assert_int_equal(d->nts->nev, 0);
	assert_int_equal(d->nts->subscribes, 0);
	assert_int_equal(d->nts->end_alls, 0);
	assert_int_equal(d->xps->adopts, 0);
	assert_int_equal(lm_runtime_next_timer_ns(F.rt), -1);
}

/* ---- session identity and order ------------------------------------------------------ */

static void test_session_rules_and_calls_out_of_order_on_the_source(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 2);
	struct side *s = &F.src;
	assert_string_equal(state_of(s), "Idle");
	Google__Protobuf__Any *config = export_ok(s);
	assert_string_equal(state_of(s), "SourceExported");
	/* in a session, another ID is InvalidArgument, for every call */
	expect(s, "Cancel", req_cancel("other"), LM_RPC_INVALID_ARGUMENT,
	       "Cancel: session_id \"other\" does not match the session in progress");
	expect(s, "Cleanup", req_cleanup("other"), LM_RPC_INVALID_ARGUMENT, "does not match");
	expect(s, "FinalizeSandbox", req_finalize("other", RESUME), LM_RPC_INVALID_ARGUMENT, "does not match");
	expect(s, "TransferSandbox", req_transfer("other", 0), LM_RPC_INVALID_ARGUMENT, "does not match");
	expect(s, "CreateDuplicateSocket", req_socket("other", "unix:/x"), LM_RPC_INVALID_ARGUMENT,
	       "does not match");
	expect(s, "PrepareSandbox", req_prepare("other"), LM_RPC_INVALID_ARGUMENT, "does not match");
	/* a side's first call while a session is active: the state, whatever the ID */
	expect(s, "PrepareAndExportSandbox", req_export("other"), LM_RPC_FAILED_PRECONDITION,
	       "PrepareAndExportSandbox: not allowed in state SourceExported on the source");
	expect(s, "PrepareAndExportSandbox", req_export(SID), LM_RPC_FAILED_PRECONDITION,
	       "not allowed in state SourceExported");
	expect(s, "ImportSandbox", req_import(SID, "pod-a", config), LM_RPC_FAILED_PRECONDITION,
	       "ImportSandbox: not allowed in state SourceExported");
	/* the destination's calls and the end's calls, too early */
	expect(s, "PrepareSandbox", req_prepare(SID), LM_RPC_FAILED_PRECONDITION,
	       "PrepareSandbox: not allowed in state SourceExported on the source");
	expect(s, "FinalizeSandbox", req_finalize(SID, STOP), LM_RPC_FAILED_PRECONDITION,
	       "FinalizeSandbox: not allowed in state SourceExported");
	expect(s, "Cleanup", req_cleanup(SID), LM_RPC_FAILED_PRECONDITION,
	       "Cleanup: not allowed in state SourceExported");
	expect(s, "TransferSandbox", req_transfer(SID, -5), LM_RPC_INVALID_ARGUMENT, "timeout is negative");
	/* nothing moved; no socket was asked for, no timer armed */
	assert_string_equal(state_of(s), "SourceExported");
	assert_int_equal(s->xps->adopts, 0);
	assert_int_equal(lm_runtime_next_timer_ns(F.rt), -1);

	/* the destination: the import opens the patch path; the rest waits for it */
	side_create(&F.dst, "dst", false, 0);
	struct side *d = &F.dst;
	expect_at_once(d, "ImportSandbox", req_import(SID, "pod-a", config), LM_RPC_OK, NULL);
	assert_string_equal(state_of(d), "DestinationImported");
	expect(d, "ImportSandbox", req_import(SID, "pod-a", config), LM_RPC_FAILED_PRECONDITION,
	       "ImportSandbox: not allowed in state DestinationImported on the destination");
	expect(d, "PrepareSandbox", req_prepare(SID), LM_RPC_FAILED_PRECONDITION,
	       "2 container(s) not yet created on this shim");
	expect(d, "CreateDuplicateSocket", req_socket(SID, "unix:/x"), LM_RPC_FAILED_PRECONDITION,
	       "CreateDuplicateSocket: not allowed in state DestinationImported");
	expect(d, "TransferSandbox", req_transfer(SID, 0), LM_RPC_FAILED_PRECONDITION,
	       "TransferSandbox: not allowed in state DestinationImported");
	expect(d, "FinalizeSandbox", req_finalize(SID, RESUME), LM_RPC_FAILED_PRECONDITION,
	       "FinalizeSandbox: not allowed in state DestinationImported");
	/* Notifications in the session: the call goes to the notifier with the side */
	unsigned before = atomic_load(&d->posted);
	uint32_t nst = send_req(d, 1, "Notifications", req_notifications(SID), LM_TTRPC_F_REMOTE_CLOSED);
	wait_counter(&d->posted, before + 1);   /* in the mailbox before the probe on conn 0 */
	assert_string_equal(state_of(d), "DestinationImported");
	assert_int_equal(d->nts->subscribes, 1);
	assert_int_equal(d->nts->sub_origin[0], 2);
	/* a destination cancelled right after its import: Cancelled at once;
	 * Cleanup then forgets it and ends the stream cleanly */
	expect_at_once(d, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(d), "Cancelled");
	expect_at_once(d, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);     /* idempotent */
	expect_at_once(d, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(d), "Idle");
	assert_int_equal(d->nts->end_alls, 1);
	struct ans a;
	next_answer(d, 1, &a);
	assert_int_equal(a.stream, nst);
	assert_int_equal(a.type, LM_TTRPC_DATA);
	assert_int_equal(a.flags, LM_TTRPC_F_REMOTE_CLOSED | LM_TTRPC_F_NO_DATA);   /* the clean end */
	free(a.payload);
	assert_int_equal(d->nts->nev, 0);
	google__protobuf__any__free_unpacked(config, NULL);

	/* the source: Cancel needs the compute service; then only RESUME */
	expect(s, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(s), "Cancelled");
	expect(s, "TransferSandbox", req_transfer(SID, 0), LM_RPC_FAILED_PRECONDITION,
	       "the session was cancelled before any transfer started");
	expect(s, "FinalizeSandbox", req_finalize(SID, STOP), LM_RPC_FAILED_PRECONDITION,
	       "the migration did not complete (state Cancelled): finalize with RESUME");
	expect(s, "Cleanup", req_cleanup(SID), LM_RPC_FAILED_PRECONDITION,
	       "the source was cancelled: finalize with RESUME first");
	expect(s, "FinalizeSandbox", req_finalize(SID, RESUME), LM_RPC_OK, NULL);
	assert_string_equal(state_of(s), "Finalized");
	expect_at_once(s, "FinalizeSandbox", req_finalize(SID, RESUME), LM_RPC_OK, NULL);   /* idempotent */
	expect_at_once(s, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
	expect_at_once(s, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(s), "Idle");
	/* a new session starts */
	config = export_ok(s);
	google__protobuf__any__free_unpacked(config, NULL);
	assert_string_equal(state_of(s), "SourceExported");
}

/* ---- the socket wait ---------------------------------------------------------------- */

static void test_socket_wait_times_out_on_the_virtual_clock_and_may_be_retried(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 2);
	struct side *s = &F.src;
	Google__Protobuf__Any *config = export_ok(s);
	google__protobuf__any__free_unpacked(config, NULL);
	/* TransferSandbox before any socket: it waits, up to its timeout */
	uint32_t t1 = send_req(s, 0, "TransferSandbox", req_transfer(SID, 200), 0);
	assert_string_equal(state_of(s), "SocketWaiting");      /* and t1 unanswered */
	assert_int_equal(lm_runtime_next_timer_ns(F.rt), 200 * 1000000ll);
	/* a duplicate joins it */
	uint32_t t2 = send_req(s, 0, "TransferSandbox", req_transfer(SID, 0), 0);
	assert_string_equal(state_of(s), "SocketWaiting");
	assert_int_equal(lm_runtime_advance(F.rt, 199), 0);
	assert_string_equal(state_of(s), "SocketWaiting");      /* nothing answered yet */
	assert_int_equal(lm_runtime_advance(F.rt, 1), 1);
	/* both get DeadlineExceeded; the session is back where it was */
	struct ans a;
	next_answer(s, 0, &a);
	uint32_t first = a.stream;
	assert_int_equal(a.code, LM_RPC_DEADLINE_EXCEEDED);
	assert_string_equal(a.msg, "TransferSandbox: no migration socket arrived in time");
	free(a.payload);
	next_answer(s, 0, &a);
	assert_int_equal(a.code, LM_RPC_DEADLINE_EXCEEDED);
	assert_true((first == t1 && a.stream == t2) || (first == t2 && a.stream == t1));
	free(a.payload);
	assert_string_equal(state_of(s), "SourceExported");
	assert_int_equal(s->nts->nev, 0);
	/* retry allowed: it waits again, with its own timeout */
	uint32_t t3 = send_req(s, 0, "TransferSandbox", req_transfer(SID, 50), 0);
	assert_string_equal(state_of(s), "SocketWaiting");
	assert_int_equal(lm_runtime_next_timer_ns(F.rt), 50 * 1000000ll);
	assert_int_equal(lm_runtime_advance(F.rt, 50), 1);
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, t3);
	assert_int_equal(a.code, LM_RPC_DEADLINE_EXCEEDED);
	free(a.payload);
	assert_string_equal(state_of(s), "SourceExported");
	/* the session is not poisoned: a socket is still accepted */
	uint32_t cs = send_req(s, 0, "CreateDuplicateSocket", req_socket(SID, "unix:/mig"), 0);
	assert_string_equal(state_of(s), "SourceExported");     /* cs waits for the transport */
	assert_int_equal(s->xps->adopts, 1);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	xport_answer(s, s->xps->gen, sv[0], 0, NULL);
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, cs);
	assert_int_equal(a.code, LM_RPC_OK);
	free(a.payload);
	assert_string_equal(state_of(s), "SocketReady");
	expect(s, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
	close(sv[1]);
}

static void test_a_socket_that_arrives_while_transfer_waits_starts_it_and_the_timer_is_ignored(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 2);
	struct side *s = &F.src;
	Google__Protobuf__Any *config = export_ok(s);
	google__protobuf__any__free_unpacked(config, NULL);
	uint32_t t1 = send_req(s, 0, "TransferSandbox", req_transfer(SID, 1000), 0);
	assert_string_equal(state_of(s), "SocketWaiting");
	/* CreateDuplicateSocket: the transport gets the caller's descriptor and
	 * the call's deadline, and answers to the controller */
	uint32_t cs = send_req(s, 0, "CreateDuplicateSocket", req_socket(SID, "unix:/mig"), 0);
	assert_string_equal(state_of(s), "SocketWaiting");
	assert_int_equal(s->xps->adopts, 1);
	LinuxSocketDescriptor *d = linux_socket_descriptor__unpack(NULL, s->xps->desc_len, s->xps->desc);
	assert_non_null(d);
	assert_int_equal(d->mode_case, LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT);
	assert_string_equal(d->connect, "unix:/mig");
	linux_socket_descriptor__free_unpacked(d, NULL);
	/* a second one while the first is being set up: AlreadyExists */
	expect(s, "CreateDuplicateSocket", req_socket(SID, "unix:/other"), LM_RPC_ALREADY_EXISTS,
	       "a socket is already registered for this session");
	assert_int_equal(s->xps->adopts, 1);
	/* an answer of an older request is ignored (and its socket closed) */
	int old[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, old), 0);
	xport_answer(s, s->xps->gen - 1, old[0], 0, NULL);
	assert_string_equal(state_of(s), "SocketWaiting");
	char c;
	assert_int_equal(read(old[1], &c, 1), 0);           /* EOF: closed by the controller */
	close(old[1]);
	/* the socket: the handshake starts on it (the peer never answers, so
	 * it stays in flight) and the waiting transfer moves on */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	xport_answer(s, s->xps->gen, sv[0], 0, NULL);
	struct ans a;
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, cs);
	assert_int_equal(a.code, LM_RPC_OK);
	free(a.payload);
	assert_string_equal(state_of(s), "Transferring");
	expect(s, "CreateDuplicateSocket", req_socket(SID, "unix:/other"), LM_RPC_ALREADY_EXISTS, NULL);
	/* the socket wait's timer still fires, and changes nothing */
	assert_int_equal(lm_runtime_advance(F.rt, 1000), 1);
	assert_string_equal(state_of(s), "Transferring");    /* t1 still unanswered */
	/* Cancel: the waiting transfer is answered Aborted at once, Cancel
	 * once the compute service has stopped */
	uint32_t cc = send_req(s, 0, "Cancel", req_cancel(SID), 0);
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, t1);
	assert_int_equal(a.code, LM_RPC_ABORTED);
	assert_string_equal(a.msg, "TransferSandbox: the transfer was cancelled");
	free(a.payload);
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, cc);
	assert_int_equal(a.code, LM_RPC_OK);
	free(a.payload);
	assert_string_equal(state_of(s), "Cancelled");
	assert_int_equal(s->xps->aborts, 0);               /* no socket was being set up */
	expect(s, "FinalizeSandbox", req_finalize(SID, RESUME), LM_RPC_OK, NULL);
	expect(s, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(s), "Idle");
	assert_int_equal(s->nts->end_alls, 1);
	close(sv[1]);
}

static void test_cancel_while_the_socket_is_set_up_aborts_the_transport_and_refuses_its_socket(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 2);
	struct side *s = &F.src;
	Google__Protobuf__Any *config = export_ok(s);
	google__protobuf__any__free_unpacked(config, NULL);
	/* a refusal of the transport is the call's answer; nothing is poisoned */
	uint32_t cs = send_req(s, 0, "CreateDuplicateSocket", req_socket(SID, "unix:/mig"), 0);
	assert_string_equal(state_of(s), "SourceExported");
	xport_answer(s, s->xps->gen, -1, LM_RPC_FAILED_PRECONDITION, "refused by the test");
	struct ans a;
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, cs);
	assert_int_equal(a.code, LM_RPC_FAILED_PRECONDITION);
	assert_string_equal(a.msg, "CreateDuplicateSocket (connect test): refused by the test");
	free(a.payload);
	assert_string_equal(state_of(s), "SourceExported");
	/* again, and Cancel while the transport works on it */
	cs = send_req(s, 0, "CreateDuplicateSocket", req_socket(SID, "unix:/mig"), 0);
	assert_string_equal(state_of(s), "SourceExported");
	assert_int_equal(s->xps->adopts, 2);
	expect(s, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
	assert_int_equal(s->xps->aborts, 1);
	assert_string_equal(state_of(s), "Cancelled");        /* cs still waits */
	/* the transport's socket comes anyway: closed, the call Aborted */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	xport_answer(s, s->xps->gen, sv[0], 0, NULL);
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, cs);
	assert_int_equal(a.code, LM_RPC_ABORTED);
	assert_non_null(strstr(a.msg, "the session moved on (state Cancelled)"));
	free(a.payload);
	char c;
	assert_int_equal(read(sv[1], &c, 1), 0);
	close(sv[1]);
	expect(s, "FinalizeSandbox", req_finalize(SID, RESUME), LM_RPC_OK, NULL);
	expect(s, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
}

/* ---- the destination: prepare, wait, cancel ----------------------------------------- */

static void test_destination_wait_times_out_back_to_prepared_and_cancel_there_is_at_once(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 0);          /* no containers: no patch path */
	side_create(&F.dst, "dst", false, 0);
	Google__Protobuf__Any *config = export_ok(&F.src);
	struct side *d = &F.dst;
	expect(d, "ImportSandbox", req_import(SID, "pod-a", config), LM_RPC_OK, NULL);
	google__protobuf__any__free_unpacked(config, NULL);
	/* the destination VM is created by the compute service */
	expect(d, "PrepareSandbox", req_prepare(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(d), "DestinationPrepared");
	expect(d, "PrepareSandbox", req_prepare(SID), LM_RPC_FAILED_PRECONDITION,
	       "PrepareSandbox: not allowed in state DestinationPrepared");
	uint32_t t = send_req(d, 0, "TransferSandbox", req_transfer(SID, 30), 0);
	assert_string_equal(state_of(d), "SocketWaiting");
	assert_int_equal(lm_runtime_advance(F.rt, 30), 1);
	struct ans a;
	next_answer(d, 0, &a);
	assert_int_equal(a.stream, t);
	assert_int_equal(a.code, LM_RPC_DEADLINE_EXCEEDED);
	free(a.payload);
	assert_string_equal(state_of(d), "DestinationPrepared");
	/* no migration started on this side yet: Cancel has nothing to stop */
	expect_at_once(d, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(d), "Cancelled");
	expect(d, "FinalizeSandbox", req_finalize(SID, RESUME), LM_RPC_FAILED_PRECONDITION,
	       "the destination has no complete VM to resume (state Cancelled)");
	expect(d, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(d), "Idle");
	assert_int_equal(d->nts->end_alls, 1);
	expect(&F.src, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
}

/* ---- a whole migration, both controllers on one stepping thread ------------------------ */

static bool has_phase(const struct fake_nt *n, int phase)
{
	for (unsigned i = 0; i < n->nev; i++)
		if (n->phase[i] == phase)
			return true;
	return false;
}

static void test_a_whole_migration_in_step_mode_with_finalize_retries_joining(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 0);
	side_create(&F.dst, "dst", false, 0);
	struct side *s = &F.src, *d = &F.dst;
	Google__Protobuf__Any *config = export_ok(s);
	expect(d, "ImportSandbox", req_import(SID, "pod-a", config), LM_RPC_OK, NULL);
	google__protobuf__any__free_unpacked(config, NULL);
	expect(d, "PrepareSandbox", req_prepare(SID), LM_RPC_OK, NULL);
	/* each side's transport "connects" one end of a socket pair */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	uint32_t cs = send_req(s, 0, "CreateDuplicateSocket", req_socket(SID, "unix:/mig"), 0);
	uint32_t cd = send_req(d, 0, "CreateDuplicateSocket", req_socket(SID, "unix:/mig"), 0);
	assert_string_equal(state_of(s), "SourceExported");
	assert_string_equal(state_of(d), "DestinationPrepared");
	xport_answer(s, s->xps->gen, sv[0], 0, NULL);
	xport_answer(d, d->xps->gen, sv[1], 0, NULL);
	struct ans a;
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, cs);
	assert_int_equal(a.code, 0);
	free(a.payload);
	next_answer(d, 0, &a);
	assert_int_equal(a.stream, cd);
	assert_int_equal(a.code, 0);
	free(a.payload);
	/* TransferSandbox on both; answered when the transfer completes */
	uint32_t ts = send_req(s, 0, "TransferSandbox", req_transfer(SID, 0), 0);
	uint32_t td = send_req(d, 0, "TransferSandbox", req_transfer(SID, 0), 0);
	next_answer(s, 0, &a);
	assert_int_equal(a.stream, ts);
	assert_int_equal(a.code, LM_RPC_OK);
	free(a.payload);
	next_answer(d, 0, &a);
	assert_int_equal(a.stream, td);
	assert_int_equal(a.code, LM_RPC_OK);
	free(a.payload);
	assert_string_equal(state_of(s), "TransferCompleted");
	assert_string_equal(state_of(d), "TransferCompleted");
	expect_at_once(s, "TransferSandbox", req_transfer(SID, 0), LM_RPC_OK, NULL);   /* a duplicate */
	assert_false(has_phase(s->nts, LM_PHASE_FAILED));
	assert_false(has_phase(d->nts, LM_PHASE_FAILED));
	assert_true(has_phase(d->nts, LM_PHASE_SETUP_DONE));
	/* Finalize on the destination: three calls in one go, taken together:
	 * the first starts the finalize, a retry of the same action joins it,
	 * another action is refused at once */
	FinalizeSandboxRequest fr = FINALIZE_SANDBOX_REQUEST__INIT, fs = FINALIZE_SANDBOX_REQUEST__INIT;
	fr.session_id = SID;
	fr.action = RESUME;
	fs.session_id = SID;
	fs.action = STOP;
	unsigned before = atomic_load(&d->posted);
	uint32_t f1 = send_req(d, 0, "FinalizeSandbox", &fr.base, 0);
	uint32_t f2 = send_req(d, 0, "FinalizeSandbox", &fr.base, 0);
	uint32_t f3 = send_req(d, 0, "FinalizeSandbox", &fs.base, 0);
	/* the controller runs only once all three are in its mailbox */
	wait_counter(&d->posted, before + 3);
	next_answer(d, 0, &a);
	assert_int_equal(a.stream, f3);
	assert_int_equal(a.code, LM_RPC_FAILED_PRECONDITION);
	assert_string_equal(a.msg, "FinalizeSandbox: a finalize RESUME is in progress");
	free(a.payload);
	uint32_t got[2];
	for (int i = 0; i < 2; i++) {
		next_answer(d, 0, &a);
		got[i] = a.stream;
		assert_int_equal(a.code, LM_RPC_OK);
		free(a.payload);
	}
	assert_true((got[0] == f1 && got[1] == f2) || (got[0] == f2 && got[1] == f1));
	assert_string_equal(state_of(d), "Finalized");
	/* the destination's guest runs: its last phases, before the answer */
	assert_true(d->nts->nev >= 2);
	assert_int_equal(d->nts->phase[d->nts->nev - 2], LM_PHASE_BLACKOUT_EXITED);
	assert_int_equal(d->nts->phase[d->nts->nev - 1], LM_PHASE_DONE);
	for (unsigned i = 0; i < d->nts->nev; i++)
		assert_int_equal(d->nts->origin[i], 2);
	expect(s, "FinalizeSandbox", req_finalize(SID, STOP), LM_RPC_OK, NULL);
	/* the source's phases, in order, DONE (its finalize) last */
	static const int want[] = { LM_PHASE_SETUP_DONE, LM_PHASE_BLACKOUT_STARTED,
				    LM_PHASE_OFFLINE_DONE, LM_PHASE_BLACKOUT_EXITED, LM_PHASE_DONE };
	unsigned j = 0;
	for (unsigned i = 0; i < s->nts->nev && j < 5; i++)
		if (s->nts->phase[i] == want[j])
			j++;
	if (j != 5)
		for (unsigned i = 0; i < s->nts->nev; i++)
			print_error("source event %u: phase %d origin %d\n", i, s->nts->phase[i], s->nts->origin[i]);
	assert_int_equal(j, 5);
	assert_int_equal(s->nts->phase[s->nts->nev - 1], LM_PHASE_DONE);
	for (unsigned i = 0; i < s->nts->nev; i++)
		assert_int_equal(s->nts->origin[i], 1);
	expect(s, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
	expect(d, "Cleanup", req_cleanup(SID), LM_RPC_OK, NULL);
	assert_string_equal(state_of(s), "Idle");
	assert_string_equal(state_of(d), "Idle");
	/* the destination now runs the sandbox: it is the one that can export */
	config = export_ok(d);
	google__protobuf__any__free_unpacked(config, NULL);
	expect(d, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
}

/* ---- a client that goes away ---------------------------------------------------------- */

static void test_a_subscriber_that_goes_away_is_reported_to_the_notifier(void **state)
{
	(void)state;
	side_create(&F.src, "src", true, 0);
	struct side *s = &F.src;
	Google__Protobuf__Any *config = export_ok(s);
	google__protobuf__any__free_unpacked(config, NULL);
	unsigned before = atomic_load(&s->posted);
	send_req(s, 1, "Notifications", req_notifications(SID), LM_TTRPC_F_REMOTE_CLOSED);
	wait_counter(&s->posted, before + 1);   /* in the mailbox before the probe on conn 0 */
	assert_string_equal(state_of(s), "SourceExported");
	assert_int_equal(s->nts->subscribes, 1);
	assert_int_equal(s->nts->sub_origin[0], 1);
	/* its connection closes: the server reports the call gone to the
	 * controller, which passes it on to the notifier */
	close(s->fd2);
	s->fd2 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);   /* for teardown */
	wait_counter(&s->gone, 1);
	int ran = lm_runtime_run_until_quiet(F.rt, 0);
	struct fake_nt *n = s->nts;
	if (n->gones != 1)
		print_error("ran %d, gones %u, subs %u gone %u\n", ran, n->gones, n->nsubs, atomic_load(&s->gone));
	assert_true(ran >= 2);      /* CALL_GONE, then the notifier's GONE */
	assert_int_equal(n->gones, 1);
	assert_int_equal(n->nsubs, 0);
	assert_string_equal(state_of(s), "SourceExported");
	expect(s, "Cancel", req_cancel(SID), LM_RPC_OK, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_an_idle_shim_answers_every_call_at_once_and_tells_nobody, setup, teardown),
		cmocka_unit_test_setup_teardown(test_session_rules_and_calls_out_of_order_on_the_source, setup, teardown),
		cmocka_unit_test_setup_teardown(test_socket_wait_times_out_on_the_virtual_clock_and_may_be_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_socket_that_arrives_while_transfer_waits_starts_it_and_the_timer_is_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_while_the_socket_is_set_up_aborts_the_transport_and_refuses_its_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destination_wait_times_out_back_to_prepared_and_cancel_there_is_at_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_whole_migration_in_step_mode_with_finalize_retries_joining, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_subscriber_that_goes_away_is_reported_to_the_notifier, setup, teardown),
	};
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
