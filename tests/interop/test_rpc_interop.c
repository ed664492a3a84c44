/*
 * test_rpc_interop: our server against peers we did not write.
 *
 *  - the Go ttrpc client of Debian's golang-github-containerd-ttrpc-dev
 *    (tests/interop/ttrpc_peer, built offline into the build tree): unary
 *    echo, error status, unknown method/service, metadata, deadline, 200
 *    concurrent calls on one connection;
 *  - Debian's `ctr shim --id ID state` (containerd 1.6), which finds the
 *    shim at the socket path containerd computes (or the abstract
 *    fallback) and calls containerd.task.v2.Task/State. A test task
 *    service here answers it; the product ships no fake.
 *
 * Each test skips, printing why, only when its peer cannot be had.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_service.h"
#include "mailbox/msg.h"
#include "rpc/server.h"
#include "task.pb-c.h"

/* Runs cmd, captures up to cap-1 bytes of its stdout+stderr into out,
 * returns its exit status (or -1). */
static int run(const char *cmd, char *out, size_t cap)
{
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	if (!p)
		return -1;
	while (n + 1 < cap) {
		size_t r = fread(out + n, 1, cap - 1 - n, p);
		if (r == 0)
			break;
		n += r;
	}
	out[n] = 0;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_go_ttrpc_client_against_our_server(void **state)
{
	const char *peer = LM_TTRPC_PEER;
	if (!peer[0] || access(peer, X_OK) != 0) {
		print_message("SKIP: the Go ttrpc peer was not built (golang-go and "
			      "golang-github-containerd-ttrpc-dev are needed; see .ci/packages)\n");
		skip();
	}
	char path[108], cmd[512], out[8192];
	snprintf(path, sizeof path, "/tmp/lm-interop-%d.sock", (int)getpid());
	lm_rpc_server_t *s;
	assert_int_equal(lm_rpc_server_create(&s, NULL), 0);
	assert_int_equal(lm_rpc_server_register(s, &ts_service), 0);
	assert_int_equal(lm_rpc_server_listen(s, path), 0);
	assert_int_equal(lm_rpc_server_start(s), 0);
	snprintf(cmd, sizeof cmd, "%s interop %s 2>&1", peer, path);
	int rc = run(cmd, out, sizeof out);
	print_message("%s", out);
	lm_rpc_server_destroy(s);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(out, "interop: 8 passed, 0 failed"));
}

/* containerd.task.v2.Task/State for the ctr test. */
static void task_state(lm_rpc_call_t *c, void *arg)
{
	size_t n;
	const uint8_t *p = lm_rpc_call_payload(c, &n);
	Containerd__Task__V2__StateRequest *req =
		containerd__task__v2__state_request__unpack(NULL, n, p);
	if (!req) {
		lm_rpc_call_fail(c, LM_RPC_INVALID_ARGUMENT, "bad StateRequest");
		return;
	}
	Containerd__Task__V2__StateResponse r = CONTAINERD__TASK__V2__STATE_RESPONSE__INIT;
	r.id = req->id;
	r.bundle = "/run/test/bundle";
	r.pid = 4242;
	r.status = CONTAINERD__V1__TYPES__STATUS__RUNNING;
	uint8_t buf[512];
	size_t len = containerd__task__v2__state_response__pack(&r, buf);
	containerd__task__v2__state_request__free_unpacked(req, NULL);
	lm_rpc_call_reply(c, buf, len);
}

static const struct lm_rpc_method task_methods[] = {
	{"State", LM_RPC_UNARY, task_state, NULL, NULL},
};
static const struct lm_rpc_service task_service = {
	"containerd.task.v2.Task", task_methods, 1, NULL};

static const char *get_ctr(void)
{
	static char ctr[512];
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "%s %s 2>&1", LM_FETCH_CTR, LM_CTR_DIR);
	if (run(cmd, ctr, sizeof ctr) != 0) {
		print_message("SKIP: Debian's containerd package (ctr) cannot be had: %s\n", ctr);
		return NULL;
	}
	ctr[strcspn(ctr, "\n")] = 0;
	return ctr;
}

static void ctr_state_at(const char *ctr, const char *listen, const char *id)
{
	char cmd[1024], out[4096];
	lm_rpc_server_t *s;
	assert_int_equal(lm_rpc_server_create(&s, NULL), 0);
	assert_int_equal(lm_rpc_server_register(s, &task_service), 0);
	assert_int_equal(lm_rpc_server_listen(s, listen), 0);
	assert_int_equal(lm_rpc_server_start(s), 0);
	snprintf(cmd, sizeof cmd, "timeout 20 %s --namespace default shim --id %s state 2>&1", ctr, id);
	int rc = run(cmd, out, sizeof out);
	print_message("%s", out);
	lm_rpc_server_destroy(s);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(out, "\"pid\": 4242"));
	assert_non_null(strstr(out, "\"bundle\": \"/run/test/bundle\""));
	char want_id[128];
	snprintf(want_id, sizeof want_id, "\"id\": \"%s\"", id);
	assert_non_null(strstr(out, want_id));
}

static void test_ctr_shim_state_at_containerd_socket_path(void **state)
{
	const char *ctr = get_ctr();
	if (!ctr)
		skip();
	char id[64], cmd[256], hex[128], path[256];
	snprintf(id, sizeof id, "lm-interop-%d", (int)getpid());
	/* containerd: /run/containerd/s/<sha256 of "ADDRESS/NAMESPACE/ID"> */
	snprintf(cmd, sizeof cmd,
		 "printf %%s /run/containerd/containerd.sock/default/%s | sha256sum | cut -d' ' -f1", id);
	assert_int_equal(run(cmd, hex, sizeof hex), 0);
	hex[strcspn(hex, "\n")] = 0;
	assert_int_equal(strlen(hex), 64);
	if (mkdir("/run/containerd", 0711) < 0 && errno != EEXIST) {
		print_message("SKIP: /run/containerd is not writable here\n");
		skip();
	}
	if (mkdir("/run/containerd/s", 0711) < 0 && errno != EEXIST) {
		print_message("SKIP: /run/containerd/s is not writable here\n");
		skip();
	}
	snprintf(path, sizeof path, "/run/containerd/s/%s", hex);
	ctr_state_at(ctr, path, id);
}

static void test_ctr_shim_state_at_abstract_fallback(void **state)
{
	const char *ctr = get_ctr();
	if (!ctr)
		skip();
	char id[64], sock[160];
	snprintf(id, sizeof id, "lm-interop-abs-%d", (int)getpid());
	snprintf(sock, sizeof sock, "@/containerd-shim/default/%s/shim.sock", id);
	ctr_state_at(ctr, sock, id);
}

static int teardown(void **state)
{
	lm_msg_pool_trim();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_go_ttrpc_client_against_our_server, teardown),
		cmocka_unit_test_teardown(test_ctr_shim_state_at_containerd_socket_path, teardown),
		cmocka_unit_test_teardown(test_ctr_shim_state_at_abstract_fallback, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
