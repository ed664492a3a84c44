/*
 * test_task_service.c: containerd.task.v2.Task over the simulated sandbox,
 * end to end through a real ttrpc server: the lifecycle (Create, Start,
 * State, Pids, Kill, Wait, Delete, Connect), the gating table of the
 * contract, garbage requests, Wait never gated and failed by a teardown,
 * and the task Create patch path with every mismatch (not imported,
 * already patched, patch path closed, container type disagreement, layer
 * count mismatch, bad config.json), re-keying and the pod re-key.
 *
 * A small controller-like actor owns the sandbox: it runs lm_task_handle
 * for each LM_CTL_TASK_CALL, sends patch requests to the patchers it
 * spawned at import and applies their results, as the real controller
 * does. The server is fed through a socketpair (lm_rpc_server_adopt) and
 * the test thread is the client. Bundles with config.json files live in
 * a fresh temporary directory.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "actors/patcher.h"
#include "shim/sandbox.h"
#include "actors/controller.h"
#include "shim/ocires.h"
#include "shim/task_service.h"
#include "google/protobuf/any.pb-c.h"
#include "mount.pb-c.h"
#include "rpc/client.h"
#include "rpc/frame.h"
#include "rpc/server.h"
#include "cgroups_metrics.pb-c.h"
#include "task.pb-c.h"
#include "util/clock.h"

enum { T_RUN = 0x1fe };   /* test only: run a function on the controller's thread */

/* ---- the controller-like actor ----------------------------------------- */

#define MAX_PATCHERS 16

struct ctl {
	lm_sandbox_t *sb;
	struct lm_task_gate gate;
	lm_runtime_t *rt;
	lm_actor_t *patchers[MAX_PATCHERS];
	char *patcher_src[MAX_PATCHERS];
	unsigned n_patchers;
	bool hold;                 /* keep patch results instead of applying them */
	struct lm_patch_result *held[4];
	unsigned n_held;
	unsigned exits;            /* LM_TASK_EXIT results (Shutdown, nothing left) */
};

static void apply_result(struct ctl *c, struct lm_patch_result *r)
{
	int rc = r->code == LM_RPC_OK ? lm_sandbox_apply_patch(c->sb, r) : 0;
	lm_task_answer_patch(r, rc);
	lm_patch_result_free(r);
}

struct run_msg {
	void (*fn)(struct ctl *c, void *arg);
	void *arg;
};

static lm_mailbox_t done_box;   /* T_RUN completions, for the test thread */

static void ctl_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct ctl *c = lm_actor_state(self);
	switch (m->type) {
	case LM_CTL_TASK_CALL: {
		struct lm_ctl_call *p = LM_MSG_PAYLOAD(m, struct lm_ctl_call);
		lm_rpc_call_t *call = p->call;
		p->call = NULL;
		struct lm_patch_request *req = NULL;
		int res = lm_task_handle(c->sb, &c->gate, call, p->method, &req);
		if (res == LM_TASK_EXIT)
			c->exits++;
		if (res == LM_TASK_PATCH) {
			lm_actor_t *to = NULL;
			for (unsigned i = 0; i < c->n_patchers; i++)
				if (strcmp(c->patcher_src[i], req->source_id) == 0)
					to = c->patchers[i];
			if (!to || lm_patch_send(to, lm_actor_mailbox(self), req) < 0)
				lm_patch_request_free(req);   /* fails the Create */
		}
		break;
	}
	case LM_PATCH_RESULT: {
		struct lm_patch_result_msg *p = LM_MSG_PAYLOAD(m, struct lm_patch_result_msg);
		struct lm_patch_result *r = p->res;
		p->res = NULL;
		if (c->hold && c->n_held < 4)
			c->held[c->n_held++] = r;
		else
			apply_result(c, r);
		break;
	}
	case T_RUN: {
		struct run_msg *r = LM_MSG_PAYLOAD(m, struct run_msg);
		r->fn(c, r->arg);
		lm_msg_t *d = lm_msg_alloc(T_RUN, 0);
		assert_non_null(d);
		assert_int_equal(lm_mailbox_send(&done_box, d), 0);
		break;
	}
	default:
		break;
	}
}

static void ctl_free(void *p)
{
	struct ctl *c = p;
	for (unsigned i = 0; i < c->n_held; i++)
		lm_patch_result_free(c->held[i]);
	lm_sandbox_destroy(c->sb);
	for (unsigned i = 0; i < c->n_patchers; i++) {
		lm_actor_stop(c->patchers[i]);
		lm_actor_unref(c->patchers[i]);
		free(c->patcher_src[i]);
	}
	free(c);
}

/* ---- fixture --------------------------------------------------------------- */

static struct {
	lm_runtime_t *rt;
	lm_actor_t *ctl;
	lm_rpc_server_t *s;
	lm_rpc_client_t *c;
	struct lm_rpc_service svc;
	char dir[64];
} F;

static int setup(void **state)
{
	(void)state;
	struct lm_runtime_config rc = {.workers = 2};
	struct lm_rpc_server_config sc = {.any_uid = true};
	int sv[2];
	memset(&F, 0, sizeof F);
	assert_int_equal(lm_mailbox_init(&done_box, 64, NULL, NULL, NULL, NULL), 0);
	assert_int_equal(lm_runtime_create(&F.rt, &rc), 0);
	struct ctl *c = calloc(1, sizeof(*c));
	assert_non_null(c);
	assert_int_equal(lm_sandbox_create(&c->sb), 0);
	c->rt = F.rt;
	c->gate.vm_running = true;
	assert_int_equal(lm_actor_spawn(F.rt, &F.ctl, "ctl", ctl_dispatch, c, ctl_free, 0), 0);
	lm_task_service_init(&F.svc, F.ctl);
	assert_int_equal(lm_rpc_server_create(&F.s, &sc), 0);
	assert_int_equal(lm_rpc_server_register(F.s, &F.svc), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(lm_rpc_server_adopt(F.s, sv[0]), 0);
	assert_int_equal(lm_rpc_server_start(F.s), 0);
	assert_int_equal(lm_rpc_client_from_fd(&F.c, sv[1]), 0);
	snprintf(F.dir, sizeof F.dir, "/tmp/lm-task-XXXXXX");
	assert_non_null(mkdtemp(F.dir));
	return 0;
}

static int rm_rf(const char *dir)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd);
}

static int teardown(void **state)
{
	(void)state;
	lm_rpc_client_close(F.c);
	lm_rpc_server_destroy(F.s);
	lm_actor_stop(F.ctl);
	lm_actor_unref(F.ctl);
	lm_runtime_destroy(F.rt);
	lm_mailbox_destroy(&done_box);
	assert_int_equal(rm_rf(F.dir), 0);
	lm_msg_pool_trim();
	return 0;
}

/* Runs fn on the controller's thread and waits for it. */
static void on_ctl(void (*fn)(struct ctl *c, void *arg), void *arg)
{
	lm_msg_t *m = lm_msg_alloc(T_RUN, sizeof(struct run_msg));
	assert_non_null(m);
	LM_MSG_PAYLOAD(m, struct run_msg)->fn = fn;
	LM_MSG_PAYLOAD(m, struct run_msg)->arg = arg;
	assert_int_equal(lm_actor_send(F.ctl, m), 0);
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	for (;;) {
		lm_msg_t *d = lm_mailbox_recv(&done_box);
		if (d) {
			lm_msg_free(d);
			return;
		}
		if (lm_now_ns() >= deadline)
			fail_msg("controller did not run the function");
		lm_mailbox_wait(&done_box, 100000000);
	}
}

static void set_gate_fn(struct ctl *c, void *arg)
{
	c->gate = *(struct lm_task_gate *)arg;
}

static void set_gate(bool session, bool vm, bool importing)
{
	struct lm_task_gate g = {session, vm, importing};
	on_ctl(set_gate_fn, &g);
}

/* ---- calls --------------------------------------------------------------- */

static int call(const char *method, const ProtobufCMessage *req, struct lm_rpc_result *res)
{
	uint8_t buf[4096];
	size_t n = req ? protobuf_c_message_pack(req, buf) : 0;
	memset(res, 0, sizeof(*res));
	assert_int_equal(lm_rpc_client_call(F.c, LM_TASK_SERVICE_NAME, method, buf, n, NULL, res), 0);
	return res->code;
}

static void expect(const char *method, const ProtobufCMessage *req, int code, const char *needle)
{
	struct lm_rpc_result r;
	call(method, req, &r);
	if (r.code != code)
		fail_msg("%s: code %d (\"%s\"), want %d", method, r.code, r.message, code);
	if (needle && !strstr(r.message, needle))
		fail_msg("%s: message \"%s\" does not say \"%s\"", method, r.message, needle);
	lm_rpc_result_free(&r);
}

/* Requests with only id (field 1) and exec_id (field 2) share the
 * StateRequest encoding (State, Start, Delete, Pids, Wait, Connect, ...). */
static void expect_id(const char *method, const char *id, int code, const char *needle)
{
	Containerd__Task__V2__StateRequest q = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	q.id = (char *)id;
	expect(method, &q.base, code, needle);
}

static Containerd__Task__V2__StateResponse *state_of(const char *id)
{
	Containerd__Task__V2__StateRequest q = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	struct lm_rpc_result r;
	q.id = (char *)id;
	if (call("State", &q.base, &r) != 0)
		fail_msg("State %s: %d %s", id, r.code, r.message);
	Containerd__Task__V2__StateResponse *s =
		containerd__task__v2__state_response__unpack(NULL, r.len, r.payload);
	assert_non_null(s);
	lm_rpc_result_free(&r);
	return s;
}

/* Writes DIR/name/config.json with the given annotations ("k", "v", ...,
 * NULL) and returns the bundle path (static buffer per call site). */
static void bundle(char *out, size_t outlen, const char *name, const char *const *ann)
{
	char path[256];
	snprintf(out, outlen, "%s/%s", F.dir, name);
	assert_int_equal(mkdir(out, 0700), 0);
	snprintf(path, sizeof path, "%s/config.json", out);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "{\"ociVersion\":\"1.1.0\",\"process\":{\"args\":[\"sleep\",\"inf\"],\"cwd\":\"/\"},"
		   "\"root\":{\"path\":\"rootfs\"},\"annotations\":{");
	for (int i = 0; ann && ann[i]; i += 2)
		fprintf(f, "%s\"%s\":\"%s\"", i ? "," : "", ann[i], ann[i + 1]);
	fprintf(f, "}}");
	fclose(f);
}

/* A Create with an overlay rootfs of `layers` lower dirs. */
/* What the next Create asks for besides: a stdin, a terminal. */
static const char *create_stdin;
static bool create_terminal;

static int create(const char *id, const char *bundle_path, unsigned layers, struct lm_rpc_result *r)
{
	Containerd__Task__V2__CreateTaskRequest q = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
	Containerd__Types__Mount m = CONTAINERD__TYPES__MOUNT__INIT;
	Containerd__Types__Mount *mp = &m;
	char lower[256] = "lowerdir=";
	char *opts[3];
	for (unsigned i = 0; i < layers; i++)
		snprintf(lower + strlen(lower), sizeof lower - strlen(lower), "%s/l/%u", i ? ":" : "", i);
	opts[0] = lower;
	opts[1] = "upperdir=/var/scratch/up";
	opts[2] = "workdir=/var/scratch/work";
	m.type = "overlay";
	m.source = "overlay";
	m.n_options = 3;
	m.options = opts;
	q.id = (char *)id;
	q.bundle = (char *)bundle_path;
	q.n_rootfs = layers ? 1 : 0;
	q.rootfs = &mp;
	q.stdout = "/run/fifo/out";
	q.stdin = (char *)(create_stdin ? create_stdin : "");
	q.terminal = create_terminal;
	return call("Create", &q.base, r);
}

static uint32_t create_ok(const char *id, const char *bundle_path, unsigned layers)
{
	struct lm_rpc_result r;
	if (create(id, bundle_path, layers, &r) != 0)
		fail_msg("Create %s: %d %s", id, r.code, r.message);
	Containerd__Task__V2__CreateTaskResponse *c =
		containerd__task__v2__create_task_response__unpack(NULL, r.len, r.payload);
	assert_non_null(c);
	uint32_t pid = c->pid;
	containerd__task__v2__create_task_response__free_unpacked(c, NULL);
	lm_rpc_result_free(&r);
	return pid;
}

static void expect_create(const char *id, const char *bundle_path, unsigned layers, int code,
			  const char *needle)
{
	struct lm_rpc_result r;
	create(id, bundle_path, layers, &r);
	if (r.code != code)
		fail_msg("Create %s: code %d (\"%s\"), want %d", id, r.code, r.message, code);
	if (needle && !strstr(r.message, needle))
		fail_msg("Create %s: message \"%s\" does not say \"%s\"", id, r.message, needle);
	lm_rpc_result_free(&r);
}

/* ---- a Wait on another thread -------------------------------------------- */

struct waiter {
	pthread_t th;
	const char *id;
	struct lm_rpc_result r;
	int rc;
};

static void *wait_thread(void *p)
{
	struct waiter *w = p;
	Containerd__Task__V2__WaitRequest q = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
	uint8_t buf[256];
	q.id = (char *)w->id;
	size_t n = containerd__task__v2__wait_request__pack(&q, buf);
	w->rc = lm_rpc_client_call(F.c, LM_TASK_SERVICE_NAME, "Wait", buf, n, NULL, &w->r);
	return NULL;
}

static void count_waiters_fn(struct ctl *c, void *arg)
{
	struct { const char *id; unsigned n; } *q = arg;
	const struct lm_container *k = lm_sandbox_find(c->sb, q->id);
	q->n = k ? k->n_waiters : 0;
}

/* Starts a Wait and returns once the controller has parked it (the
 * container then has `parked` waiters). */
static void start_wait_n(struct waiter *w, const char *id, unsigned parked)
{
	memset(w, 0, sizeof(*w));
	w->id = id;
	assert_int_equal(pthread_create(&w->th, NULL, wait_thread, w), 0);
	struct { const char *id; unsigned n; } q = {id, 0};
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	do {
		on_ctl(count_waiters_fn, &q);
		if (q.n >= parked)
			return;
		usleep(1000);
	} while (lm_now_ns() < deadline);
	fail_msg("Wait %s never parked", id);
}

static void start_wait(struct waiter *w, const char *id)
{
	start_wait_n(w, id, 1);
}

/* ---- lifecycle -------------------------------------------------------------- */

static void test_lifecycle_create_start_kill_wait_delete(void **state)
{
	(void)state;
	char b[256];
	const char *ann[] = {LM_ANNOT_CONTAINER_TYPE, "sandbox", NULL};
	bundle(b, sizeof b, "pod1", ann);
	uint32_t pid = create_ok("pod1", b, 2);
	assert_true(pid >= LM_SANDBOX_FIRST_PID);

	Containerd__Task__V2__StateResponse *s = state_of("pod1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__CREATED);
	assert_int_equal(s->pid, pid);
	assert_string_equal(s->bundle, b);
	assert_string_equal(s->stdout, "/run/fifo/out");
	containerd__task__v2__state_response__free_unpacked(s, NULL);

	/* Start answers the init PID */
	Containerd__Task__V2__StartRequest st = CONTAINERD__TASK__V2__START_REQUEST__INIT;
	struct lm_rpc_result r;
	st.id = "pod1";
	assert_int_equal(call("Start", &st.base, &r), 0);
	Containerd__Task__V2__StartResponse *sr = containerd__task__v2__start_response__unpack(NULL, r.len, r.payload);
	assert_int_equal(sr->pid, pid);
	containerd__task__v2__start_response__free_unpacked(sr, NULL);
	lm_rpc_result_free(&r);
	expect_id("Start", "pod1", LM_RPC_FAILED_PRECONDITION, "not in state created");

	/* Pids lists the init process */
	Containerd__Task__V2__PidsRequest pq = CONTAINERD__TASK__V2__PIDS_REQUEST__INIT;
	pq.id = "pod1";
	assert_int_equal(call("Pids", &pq.base, &r), 0);
	Containerd__Task__V2__PidsResponse *pr = containerd__task__v2__pids_response__unpack(NULL, r.len, r.payload);
	assert_int_equal(pr->n_processes, 1);
	assert_int_equal(pr->processes[0]->pid, pid);
	containerd__task__v2__pids_response__free_unpacked(pr, NULL);
	lm_rpc_result_free(&r);

	/* Delete refuses a running task */
	expect_id("Delete", "pod1", LM_RPC_FAILED_PRECONDITION, "running");

	/* a parked Wait is answered by Kill */
	struct waiter w;
	start_wait(&w, "pod1");
	Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
	k.id = "pod1";
	k.signal = 9;
	expect("Kill", &k.base, LM_RPC_OK, NULL);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_int_equal(w.rc, 0);
	assert_int_equal(w.r.code, LM_RPC_OK);
	Containerd__Task__V2__WaitResponse *wr = containerd__task__v2__wait_response__unpack(NULL, w.r.len, w.r.payload);
	assert_non_null(wr);
	assert_int_equal(wr->exit_status, 137);
	assert_non_null(wr->exited_at);
	assert_true(wr->exited_at->seconds > 1600000000);
	containerd__task__v2__wait_response__free_unpacked(wr, NULL);
	lm_rpc_result_free(&w.r);
	expect("Kill", &k.base, LM_RPC_NOT_FOUND, "already finished");

	s = state_of("pod1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__STOPPED);
	assert_int_equal(s->exit_status, 137);
	containerd__task__v2__state_response__free_unpacked(s, NULL);

	/* a Wait on a stopped task answers at once */
	expect_id("Wait", "pod1", LM_RPC_OK, NULL);

	Containerd__Task__V2__DeleteRequest d = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
	d.id = "pod1";
	assert_int_equal(call("Delete", &d.base, &r), 0);
	Containerd__Task__V2__DeleteResponse *dr = containerd__task__v2__delete_response__unpack(NULL, r.len, r.payload);
	assert_int_equal(dr->pid, pid);
	assert_int_equal(dr->exit_status, 137);
	containerd__task__v2__delete_response__free_unpacked(dr, NULL);
	lm_rpc_result_free(&r);
	expect_id("State", "pod1", LM_RPC_NOT_FOUND, "not found");
	expect_id("Wait", "pod1", LM_RPC_NOT_FOUND, "not found");
}

static void test_create_joins_pod_named_by_sandbox_id(void **state)
{
	(void)state;
	char b1[256], b2[256], b3[256];
	const char *a1[] = {LM_ANNOT_CONTAINER_TYPE, "sandbox", NULL};
	const char *a2[] = {LM_ANNOT_CONTAINER_TYPE, "container", LM_ANNOT_SANDBOX_ID, "pod1", NULL};
	const char *a3[] = {LM_ANNOT_CONTAINER_TYPE, "container", LM_ANNOT_SANDBOX_ID, "nopod", NULL};
	bundle(b1, sizeof b1, "pod1", a1);
	bundle(b2, sizeof b2, "web", a2);
	bundle(b3, sizeof b3, "orphan", a3);
	uint32_t p1 = create_ok("pod1", b1, 1);
	uint32_t p2 = create_ok("web", b2, 3);
	assert_int_not_equal(p1, p2);
	expect_create("web", b2, 3, LM_RPC_ALREADY_EXISTS, "exists");
	expect_create("orphan", b3, 1, LM_RPC_NOT_FOUND, "pod \"nopod\"");
	expect_create("", b1, 1, LM_RPC_INVALID_ARGUMENT, "id empty");
	/* no bundle at all: a container in its own pod */
	create_ok("bare", "", 0);
	Containerd__Task__V2__StateResponse *s = state_of("bare");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__CREATED);
	containerd__task__v2__state_response__free_unpacked(s, NULL);
}

static void check_web_fn(struct ctl *c, void *arg)
{
	(void)arg;
	const struct lm_container *w = lm_sandbox_find(c->sb, "web");
	assert_non_null(w);
	assert_string_equal(w->pod_id, "pod1");
	assert_int_equal(w->n_layers, 3);
	/* lowerdir=/l/0:/l/1:/l/2 lists the top first; ours are base first */
	assert_string_equal(w->layers[0], "/l/2");
	assert_string_equal(w->layers[2], "/l/0");
	assert_string_equal(w->scratch, "/var/scratch/up");
	assert_true(strstr(w->rootfs, "/web/rootfs") != NULL);
	assert_true(w->process_spec_len > 0);
	assert_non_null(memmem(w->process_spec, w->process_spec_len, "\"sleep\"", 7));
}

static void test_create_records_layers_scratch_and_process_spec(void **state)
{
	(void)state;
	char b1[256], b2[256];
	const char *a1[] = {LM_ANNOT_CONTAINER_TYPE, "sandbox", NULL};
	const char *a2[] = {LM_ANNOT_CONTAINER_TYPE, "container", LM_ANNOT_SANDBOX_ID, "pod1", NULL};
	bundle(b1, sizeof b1, "pod1", a1);
	bundle(b2, sizeof b2, "web", a2);
	create_ok("pod1", b1, 1);
	create_ok("web", b2, 3);
	on_ctl(check_web_fn, NULL);
}

static void test_bad_config_json_is_invalid_argument(void **state)
{
	(void)state;
	char b[256], path[300];
	snprintf(b, sizeof b, "%s/bad", F.dir);
	assert_int_equal(mkdir(b, 0700), 0);
	snprintf(path, sizeof path, "%s/config.json", b);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("{\"annotations\": {", f);
	fclose(f);
	expect_create("bad", b, 0, LM_RPC_INVALID_ARGUMENT, "config.json");
	/* a FIFO is refused, not waited on */
	snprintf(b, sizeof b, "%s/fifo", F.dir);
	assert_int_equal(mkdir(b, 0700), 0);
	snprintf(path, sizeof path, "%s/config.json", b);
	assert_int_equal(mkfifo(path, 0600), 0);
	expect_create("fifo", b, 0, LM_RPC_INVALID_ARGUMENT, "not a regular file");
}

static void test_garbage_request_is_invalid_argument_naming_method(void **state)
{
	(void)state;
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff};
	const char *methods[] = {"State", "Create", "Kill", "Wait", "Exec"};
	for (size_t i = 0; i < 5; i++) {
		struct lm_rpc_result r;
		memset(&r, 0, sizeof r);
		assert_int_equal(lm_rpc_client_call(F.c, LM_TASK_SERVICE_NAME, methods[i], junk, sizeof junk,
						    NULL, &r), 0);
		assert_int_equal(r.code, LM_RPC_INVALID_ARGUMENT);
		if (strncmp(r.message, methods[i], strlen(methods[i])) != 0)
			fail_msg("message \"%s\" does not name %s", r.message, methods[i]);
		lm_rpc_result_free(&r);
	}
}

static void test_exec_id_names_no_process(void **state)
{
	(void)state;
	create_ok("c1", "", 0);
	Containerd__Task__V2__StateRequest q = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	q.id = "c1";
	q.exec_id = "e1";
	expect("State", &q.base, LM_RPC_NOT_FOUND, "exec \"e1\"");
	expect("Wait", &q.base, LM_RPC_NOT_FOUND, "exec \"e1\"");
	expect("Start", &q.base, LM_RPC_NOT_FOUND, "exec \"e1\"");
}

static void test_connect_answers_shim_and_task_pid(void **state)
{
	(void)state;
	uint32_t pid = create_ok("c1", "", 0);
	Containerd__Task__V2__ConnectRequest q = CONTAINERD__TASK__V2__CONNECT_REQUEST__INIT;
	struct lm_rpc_result r;
	q.id = "c1";
	assert_int_equal(call("Connect", &q.base, &r), 0);
	Containerd__Task__V2__ConnectResponse *c = containerd__task__v2__connect_response__unpack(NULL, r.len, r.payload);
	assert_int_equal(c->shim_pid, (uint32_t)getpid());
	assert_int_equal(c->task_pid, pid);
	containerd__task__v2__connect_response__free_unpacked(c, NULL);
	lm_rpc_result_free(&r);
	expect_id("Connect", "nope", LM_RPC_NOT_FOUND, "not found");
}

/* ---- gating ---------------------------------------------------------------- */

static void test_session_gates_state_delete_kill(void **state)
{
	(void)state;
	create_ok("c1", "", 0);
	set_gate(true, true, false);
	expect_id("State", "c1", LM_RPC_FAILED_PRECONDITION, "State: a migration session is active");
	expect_id("Delete", "c1", LM_RPC_FAILED_PRECONDITION, "Delete: a migration session is active");
	Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
	k.id = "c1";
	k.signal = 15;
	expect("Kill", &k.base, LM_RPC_FAILED_PRECONDITION, "Kill: a migration session is active");
	/* a plain Create too */
	expect_create("c2", "", 0, LM_RPC_FAILED_PRECONDITION, "session is active");
	/* the VM runs: Start and Pids are not gated by the session */
	expect_id("Start", "c1", LM_RPC_OK, NULL);
	expect_id("Pids", "c1", LM_RPC_OK, NULL);
	expect_id("Connect", "c1", LM_RPC_OK, NULL);
	/* after the session: the container was untouched and still runs */
	set_gate(false, true, false);
	Containerd__Task__V2__StateResponse *s = state_of("c1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__RUNNING);
	containerd__task__v2__state_response__free_unpacked(s, NULL);
}

static void test_vm_not_running_gates_vm_methods(void **state)
{
	(void)state;
	create_ok("c1", "", 0);
	set_gate(false, false, false);
	const char *gated[] = {"Start", "Pids", "Exec", "Pause", "Resume", "Checkpoint",
			       "ResizePty", "CloseIO", "Update", "Stats"};
	for (size_t i = 0; i < sizeof gated / sizeof gated[0]; i++) {
		char want[64];
		snprintf(want, sizeof want, "%s: the VM is not running", gated[i]);
		expect_id(gated[i], "c1", LM_RPC_FAILED_PRECONDITION, want);
	}
	expect_create("c2", "", 0, LM_RPC_FAILED_PRECONDITION, "VM is not running");
	/* not gated by the VM */
	expect_id("State", "c1", LM_RPC_OK, NULL);
	expect_id("Connect", "c1", LM_RPC_OK, NULL);
	expect_id("Shutdown", "c1", LM_RPC_OK, NULL);
}

/* ---- a sandbox whose containers run in the guest --------------------------- */

/* What the guest hooks saw (controller thread; read after on_ctl). */
static struct {
	unsigned kills, forgets, creates, starts, pids, pauses, resumes, close_ios, resizes;
	unsigned exec_starts, exec_forgets, updates;
	struct lm_oci_resources res;   /* the last Update's */
	uint32_t width, height;
	uint32_t signal;
	bool all;
	char guest_id[64], forgot[64], created[64], base_layer[64], started[64];
	char exec[64];                 /* the exec'd process of the last hook, "" for the init */
	char exec_args0[64];           /* what the Start found in the exec's spec */
	unsigned n_layers;
	bool has_spec;
} hooked;

static void hook_create(void *arg, struct lm_guest_new *n, lm_rpc_call_t *call)
{
	(void)arg;
	hooked.creates++;
	snprintf(hooked.created, sizeof hooked.created, "%s", n->id);
	hooked.n_layers = n->n_layers;
	snprintf(hooked.base_layer, sizeof hooked.base_layer, "%s", n->n_layers ? n->layers[0] : "");
	hooked.has_spec = n->process_spec && strstr(n->process_spec, "\"sleep\"");
	Containerd__Task__V2__CreateTaskResponse r = CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
	r.pid = 88;
	lm_task_reply_msg(call, &r.base);
	lm_guest_new_free(n);
}

static void hook_start(void *arg, const struct lm_container *k, lm_rpc_call_t *call)
{
	(void)arg;
	hooked.starts++;
	snprintf(hooked.started, sizeof hooked.started, "%s", k->guest_id);
	Containerd__Task__V2__StartResponse r = CONTAINERD__TASK__V2__START_RESPONSE__INIT;
	r.pid = k->pid;
	lm_task_reply_msg(call, &r.base);
}

static void hook_kill(void *arg, const struct lm_container *k, const struct lm_exec *x, uint32_t signal,
		      bool all, lm_rpc_call_t *call)
{
	(void)arg;
	hooked.kills++;
	snprintf(hooked.exec, sizeof hooked.exec, "%s", x ? x->id : "");
	hooked.signal = signal;
	hooked.all = all;
	snprintf(hooked.guest_id, sizeof hooked.guest_id, "%s", k->guest_id);
	lm_rpc_call_reply(call, NULL, 0);   /* the guest took the signal */
}

static void hook_forget(void *arg, const char *guest_id)
{
	(void)arg;
	hooked.forgets++;
	snprintf(hooked.forgot, sizeof hooked.forgot, "%s", guest_id);
}

/* the guest's processes of k: its init and a child */
static void hook_pids(void *arg, const struct lm_container *k, lm_rpc_call_t *call)
{
	(void)arg;
	hooked.pids++;
	Containerd__V1__Types__ProcessInfo a = CONTAINERD__V1__TYPES__PROCESS_INFO__INIT, b = a;
	a.pid = k->pid;
	b.pid = k->pid + 5;
	Containerd__V1__Types__ProcessInfo *v[] = {&a, &b};
	Containerd__Task__V2__PidsResponse r = CONTAINERD__TASK__V2__PIDS_RESPONSE__INIT;
	r.n_processes = 2;
	r.processes = v;
	lm_task_reply_msg(call, &r.base);
}

/* the guest froze (thawed) it: the owner records it (arg: the ctl) */
static void hook_pause(void *arg, const struct lm_container *k, bool resume, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	if (resume)
		hooked.resumes++;
	else
		hooked.pauses++;
	char id[64];
	snprintf(id, sizeof id, "%s", k->id);
	assert_int_equal(lm_sandbox_set_paused(c->sb, id, !resume), 0);
	lm_rpc_call_reply(call, NULL, 0);
}

/* the guest's cgroup figures of k */
static void hook_stats(void *arg, const struct lm_container *k, lm_rpc_call_t *call)
{
	(void)arg;
	(void)k;
	struct lm_task_stats st = { .cpu_usage_usec = 1500, .cpu_user_usec = 1000, .cpu_system_usec = 500,
				    .memory_usage = 4u << 20, .memory_limit = 0, .pids_current = 2, .pids_limit = 64 };
	lm_task_reply_stats(call, &st);
}

static void hook_update(void *arg, const struct lm_container *k, const struct lm_oci_resources *r,
			lm_rpc_call_t *call)
{
	(void)arg;
	hooked.updates++;
	hooked.res = *r;
	snprintf(hooked.guest_id, sizeof hooked.guest_id, "%s", k->guest_id);
	lm_rpc_call_reply(call, NULL, 0);
}

static void hook_close_io(void *arg, const struct lm_container *k, const struct lm_exec *x,
			  lm_rpc_call_t *call)
{
	(void)arg;
	hooked.close_ios++;
	snprintf(hooked.exec, sizeof hooked.exec, "%s", x ? x->id : "");
	snprintf(hooked.guest_id, sizeof hooked.guest_id, "%s", k->guest_id);
	lm_rpc_call_reply(call, NULL, 0);
}

static void hook_resize(void *arg, const struct lm_container *k, const struct lm_exec *x, uint32_t width,
			uint32_t height, lm_rpc_call_t *call)
{
	(void)arg;
	hooked.resizes++;
	snprintf(hooked.exec, sizeof hooked.exec, "%s", x ? x->id : "");
	hooked.width = width;
	hooked.height = height;
	snprintf(hooked.guest_id, sizeof hooked.guest_id, "%s", k->guest_id);
	lm_rpc_call_reply(call, NULL, 0);
}

/* the guest ran the exec'd process as guest PID 300 (arg: the ctl) */
static void hook_exec_start(void *arg, const struct lm_container *k, const struct lm_exec *x,
			    lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	hooked.exec_starts++;
	snprintf(hooked.exec, sizeof hooked.exec, "%s", x->id);
	const char *a = x->process_spec ? strstr((const char *)x->process_spec, "\"args\":[\"") : NULL;
	snprintf(hooked.exec_args0, sizeof hooked.exec_args0, "%.*s", a ? (int)strcspn(a + 9, "\"") : 0,
		 a ? a + 9 : "");
	assert_int_equal(lm_sandbox_exec_start(c->sb, k->id, x->id, 300), 0);
	Containerd__Task__V2__StartResponse r = CONTAINERD__TASK__V2__START_RESPONSE__INIT;
	r.pid = 300;
	lm_task_reply_msg(call, &r.base);
}

static void hook_exec_forget(void *arg, const struct lm_container *k, const char *exec_id)
{
	(void)arg;
	(void)k;
	hooked.exec_forgets++;
	snprintf(hooked.forgot, sizeof hooked.forgot, "%s", exec_id);
}

static const struct lm_task_guest_ops guest_ops = {hook_create, hook_start, hook_kill, hook_forget,
						   hook_pids, hook_pause, hook_stats, hook_update, hook_close_io,
						   hook_resize, hook_exec_start, hook_exec_forget};

static void guest_gate_fn(struct ctl *c, void *arg)
{
	(void)arg;
	c->gate.vm_running = true;
	c->gate.guest = &guest_ops;
	c->gate.guest_arg = c;
	assert_int_equal(lm_sandbox_start(c->sb, "g1", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(c->sb, "g1", "agent-g1", 77), 0);
	assert_int_equal(lm_sandbox_set_guest(c->sb, "g0", "agent-g0", 76), 0);   /* created */
}

/* the session over: the gate as guest_gate_fn left it */
static void guest_gate_back_fn(struct ctl *c, void *arg)
{
	(void)arg;
	c->gate.session_active = false;
	c->gate.vm_running = true;
	c->gate.guest = &guest_ops;
	c->gate.guest_arg = c;
}

static void guest_exits_fn(struct ctl *c, void *arg)
{
	(void)arg;
	assert_int_equal(lm_sandbox_exit(c->sb, "g1", 137), 0);
}

/* Kill of a container that is a real process goes to the guest (its exit
 * comes back by the guest's watch, not from Kill); the checks before it
 * stay the task service's; Delete of it tells the guest to forget it; a
 * plain Create and the Start of a created one go to the guest. */
static void test_guest_containers_go_to_the_guest(void **state)
{
	(void)state;
	memset(&hooked, 0, sizeof hooked);
	create_ok("g1", "", 0);
	create_ok("g0", "", 0);
	on_ctl(guest_gate_fn, NULL);
	Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
	k.id = "g1";
	k.signal = 15;
	k.all = true;
	expect("Kill", &k.base, LM_RPC_OK, NULL);
	assert_int_equal(hooked.kills, 1);
	assert_int_equal(hooked.signal, 15);
	assert_true(hooked.all);
	assert_string_equal(hooked.guest_id, "agent-g1");
	Containerd__Task__V2__StateResponse *s = state_of("g1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__RUNNING);   /* not simulated */
	assert_int_equal(s->pid, 77);                                           /* the guest's */
	containerd__task__v2__state_response__free_unpacked(s, NULL);
	k.signal = 0;
	expect("Kill", &k.base, LM_RPC_INVALID_ARGUMENT, "signal 0 invalid");
	assert_int_equal(hooked.kills, 1);
	/* a plain Create goes to the guest with what it needs (layers base
	 * first, the process), and the guest's answer is the Create's */
	char b[256];
	bundle(b, sizeof b, "g2", NULL);
	assert_int_equal(create_ok("g2", b, 2), 88);
	assert_int_equal(hooked.creates, 1);
	assert_string_equal(hooked.created, "g2");
	assert_int_equal(hooked.n_layers, 2);
	assert_string_equal(hooked.base_layer, "/l/1");
	assert_true(hooked.has_spec);
	/* ... but not an ID the sandbox has */
	expect_create("g1", "", 0, LM_RPC_ALREADY_EXISTS, "already exists");
	assert_int_equal(hooked.creates, 1);
	/* Start of a created guest container goes to the guest; of a running
	 * one it is the task service's refusal */
	expect_id("Start", "g0", LM_RPC_OK, NULL);
	assert_int_equal(hooked.starts, 1);
	assert_string_equal(hooked.started, "agent-g0");
	expect_id("Start", "g1", LM_RPC_FAILED_PRECONDITION, "not in state created");
	assert_int_equal(hooked.starts, 1);
	expect_id("Delete", "g1", LM_RPC_FAILED_PRECONDITION, "running");
	assert_int_equal(hooked.forgets, 0);
	/* Pids are the guest's processes */
	Containerd__Task__V2__StateRequest q = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	q.id = "g1";
	struct lm_rpc_result res;
	assert_int_equal(call("Pids", &q.base, &res), LM_RPC_OK);
	Containerd__Task__V2__PidsResponse *pr = containerd__task__v2__pids_response__unpack(NULL, res.len, res.payload);
	assert_non_null(pr);
	assert_int_equal(pr->n_processes, 2);
	assert_int_equal(pr->processes[0]->pid, 77);
	assert_int_equal(pr->processes[1]->pid, 82);
	containerd__task__v2__pids_response__free_unpacked(pr, NULL);
	lm_rpc_result_free(&res);
	assert_int_equal(hooked.pids, 1);
	/* Stats: the guest's figures as containerd's cgroup v2 metrics */
	assert_int_equal(call("Stats", &q.base, &res), LM_RPC_OK);
	Containerd__Task__V2__StatsResponse *sr = containerd__task__v2__stats_response__unpack(NULL, res.len, res.payload);
	assert_non_null(sr);
	assert_non_null(sr->stats);
	assert_string_equal(sr->stats->type_url, "io.containerd.cgroups.v2.Metrics");
	Io__Containerd__Cgroups__V2__Metrics *m =
		io__containerd__cgroups__v2__metrics__unpack(NULL, sr->stats->value.len, sr->stats->value.data);
	assert_non_null(m);
	assert_true(m->cpu && m->memory && m->pids);
	assert_int_equal(m->cpu->usage_usec, 1500);
	assert_int_equal(m->cpu->system_usec, 500);
	assert_int_equal(m->memory->usage, 4u << 20);
	assert_int_equal(m->pids->current, 2);
	assert_int_equal(m->pids->limit, 64);
	io__containerd__cgroups__v2__metrics__free_unpacked(m, NULL);
	containerd__task__v2__stats_response__free_unpacked(sr, NULL);
	lm_rpc_result_free(&res);
	/* Update: the runtime-spec's LinuxResources (JSON in an Any) become
	 * the cgroup limits the guest sets; what the VM does not apply is
	 * named; a wrong type or field is refused naming it */
	Containerd__Task__V2__UpdateTaskRequest up = CONTAINERD__TASK__V2__UPDATE_TASK_REQUEST__INIT;
	Google__Protobuf__Any ra = GOOGLE__PROTOBUF__ANY__INIT;
	up.id = "g1";
	expect("Update", &up.base, LM_RPC_OK, NULL);              /* annotations only */
	assert_int_equal(hooked.updates, 0);
	up.resources = &ra;
	ra.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
	const char *js = "{\"memory\":{\"limit\":67108864,\"swap\":67108864},\"cpu\":{\"shares\":1024,"
			 "\"quota\":50000,\"period\":100000,\"cpus\":\"0-1\"},\"pids\":{\"limit\":32},"
			 "\"devices\":[{\"allow\":false,\"access\":\"rwm\"}]}";
	ra.value.data = (uint8_t *)js;
	ra.value.len = strlen(js);
	expect("Update", &up.base, LM_RPC_OK, NULL);
	assert_int_equal(hooked.updates, 1);
	assert_string_equal(hooked.guest_id, "agent-g1");
	assert_true(hooked.res.set_memory && hooked.res.set_pids && hooked.res.set_cpu_max &&
		    hooked.res.set_cpu_weight);
	assert_int_equal(hooked.res.memory_max, 64u << 20);
	assert_int_equal(hooked.res.pids_max, 32);
	assert_int_equal(hooked.res.cpu_quota_us, 50000);
	assert_int_equal(hooked.res.cpu_period_us, 100000);
	assert_int_equal(hooked.res.cpu_weight, 39);              /* runc's map of 1024 shares */
	assert_string_equal(hooked.res.ignored, "memory.swap, cpu.cpus, devices");
	js = "{\"memory\":{\"limit\":-1},\"pids\":{\"limit\":0}}";   /* lift one, keep one */
	ra.value.data = (uint8_t *)js;
	ra.value.len = strlen(js);
	expect("Update", &up.base, LM_RPC_OK, NULL);
	assert_true(hooked.res.set_memory && !hooked.res.set_pids && !hooked.res.set_cpu_max);
	assert_int_equal(hooked.res.memory_max, 0);
	static const struct { const char *js, *says; } bad[] = {
		{ "{\"cpu\":{\"quota\":\"x\"}}", "Update g1: resources.cpu.quota: not an integer" },
		{ "{\"memory\":{\"limit\":-5}}", "resources.memory.limit: -5" },
		{ "{\"cpu\":{\"quota\":20000,\"period\":10}}", "resources.cpu.period: 10 us is outside" },
		{ "{\"cpu\":{\"shares\":1}}", "resources.cpu.shares: 1 is outside 2..262144" },
		{ "{\"pids\":5}", "resources.pids: not an object" },
		{ "[1]", "resources: not a JSON object" },
		{ "{\"cpu\":{\"cpus\":\"0\"}}", "no limit lmshim applies in the utility VM" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ra.value.data = (uint8_t *)bad[i].js;
		ra.value.len = strlen(bad[i].js);
		expect("Update", &up.base, LM_RPC_INVALID_ARGUMENT, bad[i].says);
	}
	ra.type_url = "containerd.runc.v1.Options";
	expect("Update", &up.base, LM_RPC_INVALID_ARGUMENT, "resources of type \"containerd.runc.v1.Options\"");
	assert_int_equal(hooked.updates, 2);
	/* Pause and Resume go to the guest, each from the right state; the
	 * State says paused in between; a paused container is not deleted */
	expect_id("Resume", "g1", LM_RPC_FAILED_PRECONDITION, "Resume g1: the container is running, not paused");
	expect_id("Pause", "g1", LM_RPC_OK, NULL);
	assert_int_equal(hooked.pauses, 1);
	s = state_of("g1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__PAUSED);
	containerd__task__v2__state_response__free_unpacked(s, NULL);
	expect_id("Pause", "g1", LM_RPC_FAILED_PRECONDITION, "Pause g1: the container is paused, not running");
	expect_id("Delete", "g1", LM_RPC_FAILED_PRECONDITION, "running");
	assert_int_equal(call("Pids", &q.base, &res), LM_RPC_OK);   /* paused: still its processes */
	lm_rpc_result_free(&res);
	assert_int_equal(hooked.pids, 2);
	/* not while a migration is in progress (its snapshot holds the state) */
	set_gate(true, true, false);
	expect_id("Resume", "g1", LM_RPC_FAILED_PRECONDITION, "a migration session is active");
	on_ctl(guest_gate_back_fn, NULL);
	expect_id("Resume", "g1", LM_RPC_OK, NULL);
	assert_int_equal(hooked.resumes, 1);
	s = state_of("g1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__RUNNING);
	containerd__task__v2__state_response__free_unpacked(s, NULL);
	expect_id("Pause", "nope", LM_RPC_NOT_FOUND, "not found");
	on_ctl(guest_exits_fn, NULL);   /* what the guest's watch reports */
	expect_id("Stats", "g1", LM_RPC_FAILED_PRECONDITION, "not running");
	ra.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
	expect("Update", &up.base, LM_RPC_FAILED_PRECONDITION, "Update g1: the container has stopped");
	k.signal = 9;
	expect("Kill", &k.base, LM_RPC_NOT_FOUND, "already finished");
	assert_int_equal(hooked.kills, 1);
	expect_id("Delete", "g1", LM_RPC_OK, NULL);
	assert_int_equal(hooked.forgets, 1);
	assert_string_equal(hooked.forgot, "agent-g1");
}

static void io_gate_fn(struct ctl *c, void *arg)
{
	(void)arg;
	c->gate.vm_running = true;
	c->gate.guest = &guest_ops;
	c->gate.guest_arg = c;
	assert_int_equal(lm_sandbox_start(c->sb, "g1", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(c->sb, "g1", "agent-g1", 77), 0);
	assert_int_equal(lm_sandbox_start(c->sb, "t1", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(c->sb, "t1", "agent-t1", 78), 0);
}

static void t1_exits_fn(struct ctl *c, void *arg)
{
	(void)arg;
	assert_int_equal(lm_sandbox_exit(c->sb, "t1", 0), 0);
}

/* CloseIO and ResizePty of a guest container go to the guest, when it
 * has what they act on (a stdin, a terminal) and runs; the checks before
 * are the task service's, each naming why. */
static void test_guest_stdin_and_terminal_calls_go_to_the_guest(void **state)
{
	(void)state;
	memset(&hooked, 0, sizeof hooked);
	create_ok("g1", "", 0);
	create_stdin = "/run/fifo/in";
	create_terminal = true;
	create_ok("t1", "", 0);
	create_stdin = NULL;
	create_terminal = false;
	on_ctl(io_gate_fn, NULL);
	Containerd__Task__V2__StateResponse *s = state_of("t1");
	assert_string_equal(s->stdin, "/run/fifo/in");
	assert_true(s->terminal);
	containerd__task__v2__state_response__free_unpacked(s, NULL);

	Containerd__Task__V2__CloseIORequest ci = CONTAINERD__TASK__V2__CLOSE_IOREQUEST__INIT;
	ci.id = "g1";
	ci.stdin = true;
	expect("CloseIO", &ci.base, LM_RPC_FAILED_PRECONDITION, "CloseIO g1: the container was created without stdin");
	ci.id = "t1";
	ci.stdin = false;
	expect("CloseIO", &ci.base, LM_RPC_OK, NULL);          /* nothing to close */
	assert_int_equal(hooked.close_ios, 0);
	ci.stdin = true;
	expect("CloseIO", &ci.base, LM_RPC_OK, NULL);
	assert_int_equal(hooked.close_ios, 1);
	assert_string_equal(hooked.guest_id, "agent-t1");
	ci.exec_id = "e1";
	expect("CloseIO", &ci.base, LM_RPC_NOT_FOUND, "exec \"e1\" not found");
	ci.exec_id = "";
	ci.id = "nope";
	expect("CloseIO", &ci.base, LM_RPC_NOT_FOUND, "CloseIO: container \"nope\" not found");

	Containerd__Task__V2__ResizePtyRequest rz = CONTAINERD__TASK__V2__RESIZE_PTY_REQUEST__INIT;
	rz.id = "g1";
	rz.width = 100;
	rz.height = 40;
	expect("ResizePty", &rz.base, LM_RPC_FAILED_PRECONDITION, "ResizePty g1: the container has no terminal");
	rz.id = "t1";
	rz.width = 0;
	expect("ResizePty", &rz.base, LM_RPC_INVALID_ARGUMENT, "width and height must be 1..65535, not 0x40");
	rz.width = 70000;
	expect("ResizePty", &rz.base, LM_RPC_INVALID_ARGUMENT, "not 70000x40");
	assert_int_equal(hooked.resizes, 0);
	rz.width = 100;
	expect("ResizePty", &rz.base, LM_RPC_OK, NULL);
	assert_int_equal(hooked.resizes, 1);
	assert_int_equal(hooked.width, 100);
	assert_int_equal(hooked.height, 40);
	/* not once it stopped */
	on_ctl(t1_exits_fn, NULL);
	expect("ResizePty", &rz.base, LM_RPC_FAILED_PRECONDITION, "ResizePty t1: the container is not running");
	expect("CloseIO", &ci.base, LM_RPC_NOT_FOUND, "not found");
	ci.id = "t1";
	expect("CloseIO", &ci.base, LM_RPC_FAILED_PRECONDITION, "CloseIO t1: the container is not running");
	assert_int_equal(hooked.resizes, 1);
	assert_int_equal(hooked.close_ios, 1);
}

/* An Exec request of process xid in container id running `json`. */
static int exec_call(const char *id, const char *xid, const char *json, const char *out, bool terminal,
		     int want, const char *msg)
{
	Containerd__Task__V2__ExecProcessRequest r = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
	Google__Protobuf__Any spec = GOOGLE__PROTOBUF__ANY__INIT;
	spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process";
	spec.value.data = (uint8_t *)json;
	spec.value.len = json ? strlen(json) : 0;
	r.id = (char *)id;
	r.exec_id = (char *)xid;
	r.stdout = (char *)out;
	r.terminal = terminal;
	r.spec = json ? &spec : NULL;
	expect("Exec", &r.base, want, msg);
	return 0;
}

static void e1_exits_fn(struct ctl *c, void *arg)
{
	(void)arg;
	assert_int_equal(lm_sandbox_exec_exit(c->sb, "g1", "e1", 3), 0);
}

static void exec_state(const char *id, const char *xid, uint32_t want_status, uint32_t want_pid)
{
	Containerd__Task__V2__StateRequest q = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	struct lm_rpc_result res;
	q.id = (char *)id;
	q.exec_id = (char *)xid;
	assert_int_equal(call("State", &q.base, &res), LM_RPC_OK);
	Containerd__Task__V2__StateResponse *s =
		containerd__task__v2__state_response__unpack(NULL, res.len, res.payload);
	assert_non_null(s);
	assert_int_equal(s->status, want_status);
	assert_int_equal(s->pid, want_pid);
	assert_string_equal(s->exec_id, xid);
	assert_string_equal(s->id, xid);        /* runc's shim: the process's ID */
	containerd__task__v2__state_response__free_unpacked(s, NULL);
	lm_rpc_result_free(&res);
}

/* Exec, then Start, Kill, Wait, State and Delete with its exec_id: the
 * checks are the task service's (each refusal names why), the process
 * runs in the guest (the hooks), its exit comes from the guest's watch. */
static void test_guest_exec_lifecycle(void **state)
{
	(void)state;
	memset(&hooked, 0, sizeof hooked);
	create_ok("g1", "", 0);
	create_ok("t1", "", 0);
	on_ctl(io_gate_fn, NULL);
	const char *sh = "{\"args\":[\"sh\",\"-c\",\"exit 3\"],\"cwd\":\"/\"}";
	exec_call("nope", "e1", sh, "", false, LM_RPC_NOT_FOUND, "Exec: container \"nope\" not found");
	exec_call("g1", "../x", sh, "", false, LM_RPC_INVALID_ARGUMENT, "exec_id \"../x\" invalid");
	exec_call("g1", "", sh, "", false, LM_RPC_INVALID_ARGUMENT, "exec_id \"\" invalid");
	exec_call("g1", "e1", NULL, "", false, LM_RPC_INVALID_ARGUMENT, "Exec g1/e1: spec missing");
	exec_call("g1", "e1", "{\"args\":[]}", "", false, LM_RPC_INVALID_ARGUMENT,
		  "Exec g1/e1: spec.args must be a non-empty list");
	exec_call("g1", "e1", "{\"args\":[\"sh\"],\"env\":[1]}", "", false, LM_RPC_INVALID_ARGUMENT,
		  "spec.env[0] is not a string");
	exec_call("g1", "e1", "not json", "", false, LM_RPC_INVALID_ARGUMENT, "Exec g1/e1: spec: not JSON");
	exec_call("g1", "e1", sh, "/run/e1.out", false, LM_RPC_OK, NULL);
	exec_call("g1", "e1", sh, "", false, LM_RPC_ALREADY_EXISTS, "exec ID already in use");
	exec_state("g1", "e1", CONTAINERD__V1__TYPES__STATUS__CREATED, 0);
	Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
	k.id = "g1";
	k.exec_id = "e1";
	k.signal = 15;
	expect("Kill", &k.base, LM_RPC_FAILED_PRECONDITION, "Kill g1/e1: the exec is created, not running");
	assert_int_equal(hooked.kills, 0);
	Containerd__Task__V2__StartRequest st = CONTAINERD__TASK__V2__START_REQUEST__INIT;
	st.id = "g1";
	st.exec_id = "e9";
	expect("Start", &st.base, LM_RPC_NOT_FOUND, "Start g1: exec \"e9\" not found");
	/* no Start of an exec while a migration is in progress */
	set_gate(true, true, false);
	st.exec_id = "e1";
	expect("Start", &st.base, LM_RPC_FAILED_PRECONDITION, "a migration session is active");
	exec_call("g1", "e2", sh, "", false, LM_RPC_FAILED_PRECONDITION, "a migration session is active");
	on_ctl(guest_gate_back_fn, NULL);
	struct lm_rpc_result res;
	assert_int_equal(call("Start", &st.base, &res), LM_RPC_OK);
	Containerd__Task__V2__StartResponse *sr = containerd__task__v2__start_response__unpack(NULL, res.len,
											       res.payload);
	assert_non_null(sr);
	assert_int_equal(sr->pid, 300);
	containerd__task__v2__start_response__free_unpacked(sr, NULL);
	lm_rpc_result_free(&res);
	assert_int_equal(hooked.exec_starts, 1);
	assert_string_equal(hooked.exec, "e1");
	assert_string_equal(hooked.exec_args0, "sh");
	exec_state("g1", "e1", CONTAINERD__V1__TYPES__STATUS__RUNNING, 300);
	expect("Start", &st.base, LM_RPC_FAILED_PRECONDITION, "Start g1/e1: the exec is running, not created");
	/* signals go to the exec'd process, never to all */
	k.all = true;
	expect("Kill", &k.base, LM_RPC_OK, NULL);
	assert_int_equal(hooked.kills, 1);
	assert_string_equal(hooked.exec, "e1");
	assert_false(hooked.all);
	k.signal = 65;
	expect("Kill", &k.base, LM_RPC_INVALID_ARGUMENT, "Kill g1/e1: signal 65 invalid");
	Containerd__Task__V2__ResizePtyRequest rz = CONTAINERD__TASK__V2__RESIZE_PTY_REQUEST__INIT;
	rz.id = "g1";
	rz.exec_id = "e1";
	rz.width = rz.height = 10;
	expect("ResizePty", &rz.base, LM_RPC_FAILED_PRECONDITION, "ResizePty g1/e1: the exec has no terminal");
	Containerd__Task__V2__CloseIORequest ci = CONTAINERD__TASK__V2__CLOSE_IOREQUEST__INIT;
	ci.id = "g1";
	ci.exec_id = "e1";
	ci.stdin = true;
	expect("CloseIO", &ci.base, LM_RPC_FAILED_PRECONDITION, "CloseIO g1/e1: the exec has no stdin");
	Containerd__Task__V2__DeleteRequest d = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
	d.id = "g1";
	d.exec_id = "e1";
	expect("Delete", &d.base, LM_RPC_FAILED_PRECONDITION, "Delete g1: exec \"e1\" is running");
	/* the guest's watch reports its exit: Wait answers it, State shows it */
	on_ctl(e1_exits_fn, NULL);
	Containerd__Task__V2__WaitRequest w = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
	w.id = "g1";
	w.exec_id = "e1";
	assert_int_equal(call("Wait", &w.base, &res), LM_RPC_OK);
	Containerd__Task__V2__WaitResponse *wr = containerd__task__v2__wait_response__unpack(NULL, res.len,
											    res.payload);
	assert_non_null(wr);
	assert_int_equal(wr->exit_status, 3);
	containerd__task__v2__wait_response__free_unpacked(wr, NULL);
	lm_rpc_result_free(&res);
	exec_state("g1", "e1", CONTAINERD__V1__TYPES__STATUS__STOPPED, 300);
	k.signal = 9;
	expect("Kill", &k.base, LM_RPC_NOT_FOUND, "Kill g1/e1: process already finished");
	/* the container itself is untouched */
	Containerd__Task__V2__StateResponse *s = state_of("g1");
	assert_int_equal(s->status, CONTAINERD__V1__TYPES__STATUS__RUNNING);
	containerd__task__v2__state_response__free_unpacked(s, NULL);
	assert_int_equal(call("Delete", &d.base, &res), LM_RPC_OK);
	Containerd__Task__V2__DeleteResponse *dr = containerd__task__v2__delete_response__unpack(NULL, res.len,
											      res.payload);
	assert_non_null(dr);
	assert_int_equal(dr->pid, 300);
	assert_int_equal(dr->exit_status, 3);
	containerd__task__v2__delete_response__free_unpacked(dr, NULL);
	lm_rpc_result_free(&res);
	assert_int_equal(hooked.exec_forgets, 1);
	assert_string_equal(hooked.forgot, "e1");
	expect("Wait", &w.base, LM_RPC_NOT_FOUND, "Wait g1: exec \"e1\" not found");
	/* a created exec may be deleted (the guest never ran it: no forget) */
	exec_call("g1", "e3", sh, "", true, LM_RPC_OK, NULL);
	d.exec_id = "e3";
	expect("Delete", &d.base, LM_RPC_OK, NULL);
	assert_int_equal(hooked.exec_forgets, 1);
	/* not into a container that stopped */
	on_ctl(t1_exits_fn, NULL);
	exec_call("t1", "e1", sh, "", false, LM_RPC_FAILED_PRECONDITION,
		  "Exec t1/e1: the container is stopped, not running");
}

static void test_outside_subset_is_unimplemented(void **state)
{
	(void)state;
	create_ok("c1", "", 0);
	const char *unimpl[] = {"Exec", "Pause", "Resume", "Checkpoint", "ResizePty",
				"CloseIO", "Update", "Stats"};
	for (size_t i = 0; i < sizeof unimpl / sizeof unimpl[0]; i++)
		expect_id(unimpl[i], "c1", LM_RPC_UNIMPLEMENTED, NULL);
	/* a method the service does not have: the server's own answer */
	expect_id("NoSuchMethod", "c1", LM_RPC_UNIMPLEMENTED, NULL);
}

static void exits_fn(struct ctl *c, void *arg)
{
	*(unsigned *)arg = c->exits;
}

/* on_ctl runs after every message sent before it: the count is final */
static unsigned exits(void)
{
	unsigned n = 0;
	on_ctl(exits_fn, &n);
	return n;
}

static void delete_fn(struct ctl *c, void *arg)
{
	uint32_t pid, status;
	uint64_t at;
	assert_int_equal(lm_sandbox_kill(c->sb, arg, 9), 0);
	assert_int_equal(lm_sandbox_delete(c->sb, arg, &pid, &status, &at), 0);
}

static void test_shutdown_answers_and_exits_only_with_nothing_left(void **state)
{
	(void)state;
	Containerd__Task__V2__ShutdownRequest r = CONTAINERD__TASK__V2__SHUTDOWN_REQUEST__INIT;
	r.id = "c1";
	create_ok("c1", "", 0);
	create_ok("c2", "", 0);
	/* containers left: OK, and the shim stays (containerd calls Shutdown
	 * after each task's Delete) */
	expect("Shutdown", &r.base, LM_RPC_OK, NULL);
	assert_int_equal(exits(), 0);
	on_ctl(delete_fn, "c1");
	expect("Shutdown", &r.base, LM_RPC_OK, NULL);
	assert_int_equal(exits(), 0);
	on_ctl(delete_fn, "c2");
	/* a migration session holds the shim even with no container */
	set_gate(true, true, false);
	expect("Shutdown", &r.base, LM_RPC_OK, NULL);
	assert_int_equal(exits(), 0);
	set_gate(false, true, false);
	expect("Shutdown", &r.base, LM_RPC_OK, NULL);
	assert_int_equal(exits(), 1);
	/* garbage is still InvalidArgument, and no exit */
	struct lm_rpc_result res;
	uint8_t junk[] = { 0xff, 0xff, 0xff };
	memset(&res, 0, sizeof(res));
	assert_int_equal(lm_rpc_client_call(F.c, LM_TASK_SERVICE_NAME, "Shutdown", junk, sizeof junk, NULL, &res), 0);
	assert_int_equal(res.code, LM_RPC_INVALID_ARGUMENT);
	lm_rpc_result_free(&res);
	assert_int_equal(exits(), 1);
}

static void kill_fn(struct ctl *c, void *arg)
{
	assert_int_equal(lm_sandbox_kill(c->sb, arg, 15), 0);
}

static void test_wait_is_never_gated(void **state)
{
	(void)state;
	create_ok("c1", "", 0);
	set_gate(true, false, false);
	struct waiter w;
	start_wait(&w, "c1");               /* parked while everything else is gated */
	on_ctl(kill_fn, "c1");
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_int_equal(w.r.code, LM_RPC_OK);
	Containerd__Task__V2__WaitResponse *wr = containerd__task__v2__wait_response__unpack(NULL, w.r.len, w.r.payload);
	assert_int_equal(wr->exit_status, 143);
	containerd__task__v2__wait_response__free_unpacked(wr, NULL);
	lm_rpc_result_free(&w.r);
	expect_id("Wait", "c1", LM_RPC_OK, NULL);   /* and at once when stopped */
}

static void clear_fn(struct ctl *c, void *arg)
{
	(void)arg;
	lm_sandbox_clear(c->sb);
}

static void test_wait_fails_when_sandbox_torn_down(void **state)
{
	(void)state;
	create_ok("c1", "", 0);
	struct waiter w1, w2;
	start_wait_n(&w1, "c1", 1);
	start_wait_n(&w2, "c1", 2);
	on_ctl(clear_fn, NULL);
	assert_int_equal(pthread_join(w1.th, NULL), 0);
	assert_int_equal(pthread_join(w2.th, NULL), 0);
	assert_int_equal(w1.r.code, LM_RPC_UNAVAILABLE);
	assert_non_null(strstr(w1.r.message, "torn down"));
	assert_int_equal(w2.r.code, LM_RPC_UNAVAILABLE);
	lm_rpc_result_free(&w1.r);
	lm_rpc_result_free(&w2.r);
	expect_id("State", "c1", LM_RPC_NOT_FOUND, NULL);
}

static void test_stopped_controller_answers_unavailable(void **state)
{
	(void)state;
	lm_actor_stop(F.ctl);
	/* calls racing the stop are failed by the message's dtor, later ones
	 * by the handler's failed send: Unavailable either way */
	for (int i = 0; i < 3; i++)
		expect_id("State", "x", LM_RPC_UNAVAILABLE, "task State");
}

/* ---- the patch path ---------------------------------------------------------- */

/* The source: pod "p1" (sandbox container "p1", 1 layer) with "web" (3
 * layers) and pod "p2" with "p2" (1 layer) and "db" (2 layers), all
 * running. Imported into the controller's sandbox, one patcher per
 * container, gate: session active, VM not running, importing. */
static void src_add(lm_sandbox_t *sb, const char *id, const char *pod, enum lm_ctr_type t, unsigned layers)
{
	struct lm_container_spec sp = {.id = id, .pod_id = pod, .type = t, .n_layers = layers,
				       .bundle = "/src/bundle", .rootfs = "/src/rootfs"};
	assert_int_equal(lm_sandbox_add(sb, &sp, NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, id, NULL), 0);
}

static void import_fn(struct ctl *c, void *arg)
{
	(void)arg;
	lm_sandbox_t *src, *im;
	assert_int_equal(lm_sandbox_create(&src), 0);
	assert_int_equal(lm_sandbox_add_pod(src, "p1", NULL), 0);
	assert_int_equal(lm_sandbox_add_pod(src, "p2", NULL), 0);
	src_add(src, "p1", "p1", LM_CTR_SANDBOX, 1);
	src_add(src, "web", "p1", LM_CTR_CONTAINER, 3);
	src_add(src, "p2", "p2", LM_CTR_SANDBOX, 1);
	src_add(src, "db", "p2", LM_CTR_CONTAINER, 2);
	struct lm_snapshot_vm vm = {.vm_id = "vm", .document = "{}", .vcpus = 1, .memory_bytes = 1u << 20};
	uint8_t *bytes;
	size_t len;
	char err[128];
	assert_int_equal(lm_sandbox_export(src, &vm, &bytes, &len), 0);
	struct lm_snapshot_vm got;
	assert_int_equal(lm_sandbox_import(bytes, len, &im, &got, err, sizeof err), 0);
	free(bytes);
	lm_snapshot_vm_clear(&got);
	lm_sandbox_destroy(src);
	lm_sandbox_destroy(c->sb);
	c->sb = im;
	for (size_t i = 0; i < lm_sandbox_count(im); i++) {
		const struct lm_container *k = lm_sandbox_at(im, i);
		assert_int_equal(lm_patcher_spawn(c->rt, &c->patchers[c->n_patchers], k), 0);
		c->patcher_src[c->n_patchers++] = strdup(k->source_id);
	}
	c->gate = (struct lm_task_gate){.session_active = true, .vm_running = false, .importing = true};
}

struct query {
	const char *id;
	char pending[128];
	size_t n_pending;
	bool found;
	bool patched;
	uint32_t pid;
	char pod[64];
	char source[64];
};

static void query_fn(struct ctl *c, void *arg)
{
	struct query *q = arg;
	q->n_pending = lm_sandbox_pending_patches(c->sb, q->pending, sizeof q->pending);
	const struct lm_container *k = q->id ? lm_sandbox_find(c->sb, q->id) : NULL;
	q->found = k != NULL;
	if (k) {
		q->patched = k->patched;
		q->pid = k->pid;
		snprintf(q->pod, sizeof q->pod, "%s", k->pod_id);
		snprintf(q->source, sizeof q->source, "%s", k->source_id ? k->source_id : "");
	}
}

static struct query query(const char *id)
{
	struct query q;
	memset(&q, 0, sizeof q);
	q.id = id;
	on_ctl(query_fn, &q);
	return q;
}

static void patch_bundle(char *out, size_t outlen, const char *name, const char *src, const char *type)
{
	const char *ann[] = {LM_ANNOT_SOURCE_ID, src, type ? LM_ANNOT_CONTAINER_TYPE : NULL, type, NULL};
	bundle(out, outlen, name, ann);
}

static void test_patch_create_answers_existing_pid_and_rekeys(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	struct query before = query("web");
	assert_true(before.found);
	assert_int_equal(before.n_pending, 4);
	char b[256];
	patch_bundle(b, sizeof b, "web-new", "web", "container");
	uint32_t pid = create_ok("web-new", b, 3);
	assert_int_equal(pid, before.pid);
	struct query after = query("web-new");
	assert_true(after.found);
	assert_true(after.patched);
	assert_int_equal(after.pid, before.pid);
	assert_string_equal(after.source, "web");
	assert_string_equal(after.pod, "p1");
	assert_false(query("web").found);
	assert_int_equal(after.n_pending, 3);
	assert_string_equal(after.pending, "db,p1,p2");
}

static void test_patch_of_sandbox_container_rekeys_pod(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	char b[256], b2[256];
	patch_bundle(b, sizeof b, "pod-new", "p1", "sandbox");
	create_ok("pod-new", b, 1);
	assert_string_equal(query("pod-new").pod, "pod-new");
	assert_string_equal(query("web").pod, "pod-new");     /* follows its pod */
	assert_string_equal(query("db").pod, "p2");
	/* patch everything: nothing pending */
	patch_bundle(b2, sizeof b2, "web-new", "web", NULL);
	create_ok("web-new", b2, 3);
	patch_bundle(b2, sizeof b2, "p2-new", "p2", "sandbox");
	create_ok("p2-new", b2, 1);
	patch_bundle(b2, sizeof b2, "db-new", "db", "container");
	create_ok("db-new", b2, 2);
	struct query q = query("db-new");
	assert_int_equal(q.n_pending, 0);
	assert_string_equal(q.pod, "p2-new");
}

static void test_patch_twice_is_failed_precondition(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	char b[256], b2[256];
	patch_bundle(b, sizeof b, "web-new", "web", "container");
	create_ok("web-new", b, 3);
	patch_bundle(b2, sizeof b2, "web-again", "web", "container");
	expect_create("web-again", b2, 3, LM_RPC_FAILED_PRECONDITION, "already patched");
}

static void test_patch_of_container_not_imported_is_not_found(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	char b[256];
	patch_bundle(b, sizeof b, "ghost-new", "ghost", "container");
	expect_create("ghost-new", b, 0, LM_RPC_NOT_FOUND, "\"ghost\"");
	/* nothing imported at all: NotFound too */
	on_ctl(clear_fn, NULL);
	expect_create("ghost-new", b, 0, LM_RPC_NOT_FOUND, "was not imported");
}

static void test_patch_type_disagreement_is_rejected(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	char b[256], b2[256];
	patch_bundle(b, sizeof b, "pod-new", "p1", "container");
	expect_create("pod-new", b, 1, LM_RPC_INVALID_ARGUMENT, "disagrees with the imported type \"sandbox\"");
	patch_bundle(b2, sizeof b2, "web-new", "web", "sandbox");
	expect_create("web-new", b2, 3, LM_RPC_INVALID_ARGUMENT, "disagrees with the imported type \"container\"");
	assert_int_equal(query(NULL).n_pending, 4);
}

static void test_patch_layer_count_mismatch_is_rejected(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	char b[256];
	patch_bundle(b, sizeof b, "web-new", "web", "container");
	expect_create("web-new", b, 2, LM_RPC_INVALID_ARGUMENT, "2 read-only layers");
	expect_create("web-new", b, 0, LM_RPC_INVALID_ARGUMENT, "0 read-only layers");
	/* the rejections did not use up the patch */
	assert_int_equal(query(NULL).n_pending, 4);
	create_ok("web-new", b, 3);
	assert_int_equal(query(NULL).n_pending, 3);
}

static void test_patch_path_closed_outside_import(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	set_gate(true, false, false);   /* e.g. after PrepareSandbox */
	char b[256];
	patch_bundle(b, sizeof b, "web-new", "web", "container");
	expect_create("web-new", b, 3, LM_RPC_FAILED_PRECONDITION, "patch path is closed");
	/* a Create without the annotation is no patch: gated like any create */
	char b2[256];
	const char *ann[] = {LM_ANNOT_CONTAINER_TYPE, "sandbox", NULL};
	bundle(b2, sizeof b2, "plain", ann);
	set_gate(true, false, true);
	expect_create("plain", b2, 0, LM_RPC_FAILED_PRECONDITION, "session is active");
}

struct creator {
	pthread_t th;
	const char *id;
	char bundle[256];
	struct lm_rpc_result r;
};

static void *create_thread(void *p)
{
	struct creator *k = p;
	create(k->id, k->bundle, 3, &k->r);
	return NULL;
}

static void hold_fn(struct ctl *c, void *arg)
{
	c->hold = *(bool *)arg;
}

static void held_fn(struct ctl *c, void *arg)
{
	*(unsigned *)arg = c->n_held;
}

static void flush_fn(struct ctl *c, void *arg)
{
	(void)arg;
	for (unsigned i = 0; i < c->n_held; i++)
		apply_result(c, c->held[i]);
	c->n_held = 0;
	c->hold = false;
}

static void test_racing_creates_patch_once(void **state)
{
	(void)state;
	on_ctl(import_fn, NULL);
	bool on = true;
	on_ctl(hold_fn, &on);
	/* two Creates for "web" both pass lm_task_handle and the patcher
	 * before either result is applied */
	struct creator a = {.id = "web-a"}, b = {.id = "web-b"};
	patch_bundle(a.bundle, sizeof a.bundle, "web-a", "web", "container");
	patch_bundle(b.bundle, sizeof b.bundle, "web-b", "web", "container");
	assert_int_equal(pthread_create(&a.th, NULL, create_thread, &a), 0);
	assert_int_equal(pthread_create(&b.th, NULL, create_thread, &b), 0);
	unsigned held = 0;
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	while (held < 2 && lm_now_ns() < deadline) {
		usleep(1000);
		on_ctl(held_fn, &held);
	}
	assert_int_equal(held, 2);
	on_ctl(flush_fn, NULL);
	assert_int_equal(pthread_join(a.th, NULL), 0);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	/* exactly one wins; the other is FailedPrecondition */
	int ok = (a.r.code == LM_RPC_OK) + (b.r.code == LM_RPC_OK);
	assert_int_equal(ok, 1);
	struct lm_rpc_result *lost = a.r.code == LM_RPC_OK ? &b.r : &a.r;
	assert_int_equal(lost->code, LM_RPC_FAILED_PRECONDITION);
	assert_non_null(strstr(lost->message, "already patched"));
	const char *winner = a.r.code == LM_RPC_OK ? "web-a" : "web-b";
	assert_true(query(winner).patched);
	assert_int_equal(query(NULL).n_pending, 3);
	lm_rpc_result_free(&a.r);
	lm_rpc_result_free(&b.r);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_lifecycle_create_start_kill_wait_delete),
		T(test_create_joins_pod_named_by_sandbox_id),
		T(test_create_records_layers_scratch_and_process_spec),
		T(test_bad_config_json_is_invalid_argument),
		T(test_garbage_request_is_invalid_argument_naming_method),
		T(test_exec_id_names_no_process),
		T(test_connect_answers_shim_and_task_pid),
		T(test_session_gates_state_delete_kill),
		T(test_vm_not_running_gates_vm_methods),
		T(test_shutdown_answers_and_exits_only_with_nothing_left),
		T(test_guest_containers_go_to_the_guest),
		T(test_guest_stdin_and_terminal_calls_go_to_the_guest),
		T(test_guest_exec_lifecycle),
		T(test_outside_subset_is_unimplemented),
		T(test_wait_is_never_gated),
		T(test_wait_fails_when_sandbox_torn_down),
		T(test_stopped_controller_answers_unavailable),
		T(test_patch_create_answers_existing_pid_and_rekeys),
		T(test_patch_of_sandbox_container_rekeys_pod),
		T(test_patch_twice_is_failed_precondition),
		T(test_patch_of_container_not_imported_is_not_found),
		T(test_patch_type_disagreement_is_rejected),
		T(test_patch_layer_count_mismatch_is_rejected),
		T(test_patch_path_closed_outside_import),
		T(test_racing_creates_patch_once),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
