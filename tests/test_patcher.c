/*
 * test_patcher.c: the patcher actor's verdicts on patch requests: the
 * accepted request (resources moved, the imported PID), every mismatch
 * (annotation absent or naming another container, container type
 * disagreement, layer count, paths), a container patched before spawn,
 * no latched grant (the sandbox decides "patched once"), a rejection that
 * does not use up the patch, lm_task_answer_patch's code mapping, and the
 * send/ownership rules.
 *
 * The test thread plays the controller: it sends LM_PATCH_REQ with
 * reply_to = a plain mailbox it sleeps on and reads LM_PATCH_RESULT back.
 * Requests carry no rpc call here (answering the Create is
 * lm_task_answer_patch's job, tested in test_task_service.c).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "actors/patcher.h"
#include "util/fault.h"
#include "shim/task_service.h"
#include "rpc/frame.h"
#include "util/clock.h"

static lm_mailbox_t inbox;
static lm_runtime_t *rt;

static int setup(void **state)
{
	(void)state;
	struct lm_runtime_config cfg = {.workers = 2};
	assert_int_equal(lm_mailbox_init(&inbox, 1024, NULL, NULL, NULL, NULL), 0);
	assert_int_equal(lm_runtime_create(&rt, &cfg), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	lm_runtime_destroy(rt);
	lm_mailbox_destroy(&inbox);
	lm_msg_pool_trim();
	return 0;
}

static lm_actor_t *spawn(const char *src, enum lm_ctr_type type, unsigned layers, uint32_t pid)
{
	struct lm_container c;
	memset(&c, 0, sizeof c);
	c.id = (char *)src;
	c.source_id = (char *)src;
	c.type = type;
	c.n_layers = layers;
	c.pid = pid;
	lm_actor_t *a;
	assert_int_equal(lm_patcher_spawn(rt, &a, &c), 0);
	return a;
}

static struct lm_patch_request *request(const char *new_id, const char *src, const char *type,
					unsigned layers)
{
	struct lm_patch_request *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	r->new_id = strdup(new_id);
	r->bundle = strdup("/run/b/new");
	r->source_id = src ? strdup(src) : NULL;
	r->container_type = type ? strdup(type) : NULL;
	r->rootfs = strdup("/run/b/new/rootfs");
	r->scratch = strdup("/var/scratch/new");
	r->n_layers = layers;
	r->layers = layers ? calloc(layers, sizeof(char *)) : NULL;
	for (unsigned i = 0; i < layers; i++) {
		char name[32];
		snprintf(name, sizeof name, "/layers/%u", i);
		r->layers[i] = strdup(name);
	}
	r->stdin_path = strdup("");
	r->stdout_path = strdup("/run/fifo/out");
	r->stderr_path = strdup("binary:///usr/bin/logger?x=1");
	return r;
}

/* Sends req to the patcher and returns its result (owned by the caller). */
static struct lm_patch_result *ask(lm_actor_t *p, struct lm_patch_request *req)
{
	assert_int_equal(lm_patch_send(p, &inbox, req), 0);
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	for (;;) {
		lm_msg_t *m = lm_mailbox_recv(&inbox);
		if (m) {
			assert_int_equal(m->type, LM_PATCH_RESULT);
			struct lm_patch_result *r = LM_MSG_PAYLOAD(m, struct lm_patch_result_msg)->res;
			LM_MSG_PAYLOAD(m, struct lm_patch_result_msg)->res = NULL;
			lm_msg_free(m);
			assert_non_null(r);
			return r;
		}
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			fail_msg("no patch result within 5 s");
		lm_mailbox_wait(&inbox, (int64_t)(deadline - now));
	}
}

static void expect(lm_actor_t *p, struct lm_patch_request *req, int code, const char *needle)
{
	struct lm_patch_result *r = ask(p, req);
	assert_int_equal(r->code, code);
	if (!strstr(r->message, needle))
		fail_msg("message \"%s\" does not say \"%s\"", r->message, needle);
	lm_patch_result_free(r);
}

static void test_accepts_matching_request_with_imported_pid(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 2, 1234);
	struct lm_patch_result *r = ask(p, request("web-new", "web", "container", 2));
	assert_int_equal(r->code, LM_RPC_OK);
	assert_int_equal(r->pid, 1234);
	assert_string_equal(r->source_id, "web");
	assert_string_equal(r->new_id, "web-new");
	assert_string_equal(r->bundle, "/run/b/new");
	assert_string_equal(r->rootfs, "/run/b/new/rootfs");
	assert_string_equal(r->scratch, "/var/scratch/new");
	assert_int_equal(r->n_layers, 2);
	assert_string_equal(r->layers[1], "/layers/1");
	assert_string_equal(r->stdout_path, "/run/fifo/out");
	assert_null(r->call);
	lm_patch_result_free(r);
	lm_actor_unref(p);
}

static void test_type_annotation_is_optional(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("pod", LM_CTR_SANDBOX, 1, 1000);
	expect(p, request("pod2", "pod", NULL, 1), LM_RPC_OK, "patched");
	lm_actor_unref(p);
}

static void test_rejects_absent_annotation(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 2, 1);
	expect(p, request("n", NULL, "container", 2), LM_RPC_INVALID_ARGUMENT,
	       LM_ANNOT_SOURCE_ID " absent");
	expect(p, request("n", "", "container", 2), LM_RPC_INVALID_ARGUMENT, "absent");
	lm_actor_unref(p);
}

static void test_rejects_annotation_naming_another_container(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 2, 1);
	expect(p, request("n", "db", "container", 2), LM_RPC_INVALID_ARGUMENT,
	       "names \"db\", not the imported container \"web\"");
	lm_actor_unref(p);
}

static void test_rejects_container_type_disagreement(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("pod", LM_CTR_SANDBOX, 1, 1);
	expect(p, request("n", "pod", "container", 1), LM_RPC_INVALID_ARGUMENT,
	       "disagrees with the imported type \"sandbox\"");
	expect(p, request("n", "pod", "vm", 1), LM_RPC_INVALID_ARGUMENT, "neither sandbox nor container");
	lm_actor_t *q = spawn("web", LM_CTR_CONTAINER, 1, 2);
	expect(q, request("n", "web", "sandbox", 1), LM_RPC_INVALID_ARGUMENT,
	       "disagrees with the imported type \"container\"");
	lm_actor_unref(p);
	lm_actor_unref(q);
}

static void test_rejects_layer_count_mismatch(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 3, 1);
	expect(p, request("n", "web", "container", 2), LM_RPC_INVALID_ARGUMENT,
	       "2 read-only layers, the imported container \"web\" has 3");
	expect(p, request("n", "web", "container", 4), LM_RPC_INVALID_ARGUMENT, "4 read-only layers");
	lm_actor_unref(p);
}

static void test_rejects_bad_paths(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 1, 1);
	struct lm_patch_request *r = request("n", "web", NULL, 1);
	free(r->bundle);
	r->bundle = strdup("relative/bundle");
	expect(p, r, LM_RPC_INVALID_ARGUMENT, "bundle \"relative/bundle\"");
	r = request("n", "web", NULL, 1);
	free(r->rootfs);
	r->rootfs = strdup("");
	expect(p, r, LM_RPC_INVALID_ARGUMENT, "rootfs");
	r = request("n", "web", NULL, 1);
	free(r->scratch);
	r->scratch = strdup("scratch");
	expect(p, r, LM_RPC_INVALID_ARGUMENT, "scratch \"scratch\"");
	r = request("n", "web", NULL, 1);
	free(r->stdout_path);
	r->stdout_path = strdup("out.log");
	expect(p, r, LM_RPC_INVALID_ARGUMENT, "stdio");
	r = request("", "web", NULL, 1);
	expect(p, r, LM_RPC_INVALID_ARGUMENT, "id empty");
	/* none of these used up the one patch */
	expect(p, request("n", "web", NULL, 1), LM_RPC_OK, "patched");
	lm_actor_unref(p);
}

static void test_refuses_container_patched_before_spawn(void **state)
{
	(void)state;
	struct lm_container c;
	memset(&c, 0, sizeof c);
	c.id = "web-new";
	c.source_id = "web";
	c.patched = true;
	lm_actor_t *p;
	assert_int_equal(lm_patcher_spawn(rt, &p, &c), 0);
	expect(p, request("b", "web", NULL, 0), LM_RPC_FAILED_PRECONDITION, "already patched");
	lm_actor_unref(p);
}

static void test_ok_not_applied_does_not_block_retry(void **state)
{
	(void)state;
	/* the controller could not apply the first OK (say the new ID was
	 * taken): a retry under another ID gets a fresh verdict */
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 0, 7);
	expect(p, request("taken", "web", NULL, 0), LM_RPC_OK, "patched");
	expect(p, request("free", "web", NULL, 0), LM_RPC_OK, "patched");
	lm_actor_unref(p);
}

/* The fault point of the patch path's Create: the call fails with the
 * reason, and a retry (the fault spent) is patched. */
static void test_task_create_fault_point(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 0, 7);
	assert_int_equal(lm_fault_arm("task.create:errno=EIO:times=1"), 0);
	expect(p, request("web-m", "web", NULL, 0), LM_RPC_INTERNAL, "failed (fault)");
	expect(p, request("web-m", "web", NULL, 0), LM_RPC_OK, "patched");
	lm_fault_disarm_all();
	lm_actor_unref(p);
}

static void test_answer_patch_maps_apply_errors(void **state)
{
	(void)state;
	struct lm_patch_result r;
	memset(&r, 0, sizeof r);
	r.new_id = "n";
	r.source_id = "web";
	assert_int_equal(lm_task_answer_patch(&r, 0), LM_RPC_OK);
	assert_int_equal(lm_task_answer_patch(&r, -EALREADY), LM_RPC_FAILED_PRECONDITION);
	assert_int_equal(lm_task_answer_patch(&r, -ENOENT), LM_RPC_NOT_FOUND);
	assert_int_equal(lm_task_answer_patch(&r, -EEXIST), LM_RPC_ALREADY_EXISTS);
	assert_int_equal(lm_task_answer_patch(&r, -ENOMEM), LM_RPC_INTERNAL);
	r.code = LM_RPC_INVALID_ARGUMENT;   /* the patcher's verdict wins */
	assert_int_equal(lm_task_answer_patch(&r, 0), LM_RPC_INVALID_ARGUMENT);
}

static void test_spawn_refuses_container_not_imported(void **state)
{
	(void)state;
	struct lm_container c;
	memset(&c, 0, sizeof c);
	c.id = "local";
	lm_actor_t *a = NULL;
	assert_int_equal(lm_patcher_spawn(rt, &a, &c), -EINVAL);
	assert_int_equal(lm_patcher_spawn(rt, &a, NULL), -EINVAL);
	assert_null(a);
}

static void test_send_to_stopped_patcher_leaves_request_with_caller(void **state)
{
	(void)state;
	lm_actor_t *p = spawn("web", LM_CTR_CONTAINER, 0, 7);
	lm_actor_stop(p);
	struct lm_patch_request *r = request("a", "web", NULL, 0);
	int rc = -EPIPE;
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	/* the stop is asynchronous: sends succeed until the actor has closed */
	while (lm_now_ns() < deadline) {
		rc = lm_patch_send(p, &inbox, r);
		if (rc == 0) {
			r = request("a", "web", NULL, 0);
			continue;
		}
		if (rc != -EAGAIN)
			break;
		usleep(1000);   /* full: the patcher is still draining */
	}
	assert_int_equal(rc, -EPIPE);
	assert_string_equal(r->new_id, "a");   /* still ours */
	lm_patch_request_free(r);
	/* results of requests that did get in before the stop, if any */
	lm_msg_t *m;
	while ((m = lm_mailbox_recv(&inbox)))
		lm_msg_free(m);
	lm_actor_unref(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_accepts_matching_request_with_imported_pid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_type_annotation_is_optional, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rejects_absent_annotation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rejects_annotation_naming_another_container, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rejects_container_type_disagreement, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rejects_layer_count_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rejects_bad_paths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses_container_patched_before_spawn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ok_not_applied_does_not_block_retry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_task_create_fault_point, setup, teardown),
		cmocka_unit_test_setup_teardown(test_answer_patch_maps_apply_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spawn_refuses_container_not_imported, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_to_stopped_patcher_leaves_request_with_caller, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
