/*
 * test_transport.c: the transport actor on its own, in step mode: the
 * three ways a CreateDuplicateSocket payload becomes a connected stream
 * socket (duplicate a process's descriptor, connect, listen and accept
 * one peer) over socket pairs, unix paths and TCP loopback; every refusal
 * with its status code and reason (bad descriptors, not a socket, not a
 * stream socket, not connected, no such process, bad addresses, garbage
 * payloads); the abort (Cancel) of a listen in progress; a deadline that
 * has passed; a second request while one runs.
 *
 * The actor runs only on the test's thread (lm_runtime_run_until_quiet /
 * _run_until); its connect/accept threads report back by message, which
 * the test waits for with lm_runtime_run_until. Answers (LM_CTL_SOCKET)
 * go to a plain mailbox the test reads. Nothing sleeps: the one wait with
 * no event to wait on (a listener's socket appearing on its path) is a
 * bounded retry of connect(2).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "actors/controller.h"
#include "actors/transport.h"
#include "hcs/xfer/xfer_wire.h"
#include "util/fault.h"
#include "migration.pb-c.h"
#include "rpc/frame.h"
#include "runtime/runtime.h"
#include "util/clock.h"
#include "util/log.h"

#define SEC 1000000000ll

static struct {
	lm_runtime_t *rt;
	lm_actor_t *t;
	lm_mailbox_t answers;          /* reply_to of every request */
	char dir[64];
	char path[96];
} F;

static int setup(void **state)
{
	(void)state;
	struct lm_runtime_config cfg = { .step = true };
	memset(&F, 0, sizeof(F));
	assert_int_equal(lm_runtime_create(&F.rt, &cfg), 0);
	assert_int_equal(lm_transport_spawn(F.rt, &F.t), 0);
	assert_int_equal(lm_mailbox_init(&F.answers, 16, NULL, NULL, NULL, NULL), 0);
	snprintf(F.dir, sizeof(F.dir), "/tmp/lm-xport-XXXXXX");
	assert_non_null(mkdtemp(F.dir));
	snprintf(F.path, sizeof(F.path), "%s/mig.sock", F.dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	lm_actor_stop(F.t);
	assert_true(lm_runtime_run_until_quiet(F.rt, 0) >= 0);
	lm_actor_unref(F.t);
	lm_runtime_destroy(F.rt);
	lm_msg_t *m;
	while ((m = lm_mailbox_recv(&F.answers))) {
		struct lm_ctl_socket *s = LM_MSG_PAYLOAD(m, struct lm_ctl_socket);
		if (s->fd >= 0)
			close(s->fd);
		lm_msg_free(m);
	}
	lm_mailbox_destroy(&F.answers);
	unlink(F.path);
	rmdir(F.dir);
	lm_msg_pool_trim();
	return 0;
}

/* ---- requests and answers ---------------------------------------------------- */

static lm_msg_t *adopt_msg(uint64_t gen, uint64_t deadline_ns, const LinuxSocketDescriptor *d)
{
	uint8_t buf[512];
	size_t n = linux_socket_descriptor__pack(d, buf);
	lm_msg_t *m = lm_transport_adopt_msg(gen, deadline_ns, buf, n);
	assert_non_null(m);
	lm_msg_set_reply_to(m, &F.answers);
	return m;
}

static void send_adopt(uint64_t gen, uint64_t deadline_ns, const LinuxSocketDescriptor *d)
{
	assert_int_equal(lm_actor_send(F.t, adopt_msg(gen, deadline_ns, d)), 0);
}

static void send_duplicate(uint64_t gen, uint32_t pid, int fd)
{
	LinuxSocketDescriptor__Duplicate dup = LINUX_SOCKET_DESCRIPTOR__DUPLICATE__INIT;
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	dup.pid = pid;
	dup.fd = fd;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_DUPLICATE;
	d.duplicate = &dup;
	send_adopt(gen, 0, &d);
}

static void send_addr(uint64_t gen, bool listen, const char *addr, uint64_t deadline_ns)
{
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = listen ? LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN : LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT;
	if (listen)
		d.listen = (char *)addr;
	else
		d.connect = (char *)addr;
	send_adopt(gen, deadline_ns, &d);
}

static bool have_answer(void *arg)
{
	(void)arg;
	return lm_mailbox_size(&F.answers) > 0;
}

/* The next answer, after running the transport (and waiting for its
 * thread's report) until one came. The caller frees it. */
static lm_msg_t *answer(void)
{
	assert_int_equal(lm_runtime_run_until(F.rt, have_answer, NULL, 30 * SEC), 0);
	lm_msg_t *m = lm_mailbox_recv(&F.answers);
	assert_non_null(m);
	assert_int_equal(m->type, LM_CTL_SOCKET);
	return m;
}

static struct lm_ctl_socket *sock_of(lm_msg_t *m)
{
	return LM_MSG_PAYLOAD(m, struct lm_ctl_socket);
}

/* A refusal: no descriptor, the code, a reason containing `why`. */
static void expect_refused(uint64_t gen, int code, const char *why)
{
	lm_msg_t *m = answer();
	struct lm_ctl_socket *s = sock_of(m);
	if (s->fd >= 0 || s->code != code || !strstr(s->msg, why))
		print_error("answer: fd=%d code=%d err=%d msg=\"%s\" how=\"%s\"\n",
			    s->fd, s->code, s->err, s->msg, s->how);
	assert_int_equal(s->gen, gen);
	assert_int_equal(s->fd, -1);
	assert_true(s->err < 0);
	assert_int_equal(s->code, code);
	assert_non_null(strstr(s->msg, why));
	lm_msg_free(m);
}

/* Takes the descriptor of a successful answer. */
static int expect_socket(uint64_t gen, const char *how)
{
	lm_msg_t *m = answer();
	struct lm_ctl_socket *s = sock_of(m);
	if (s->fd < 0)
		print_error("answer: code=%d err=%d msg=\"%s\" how=\"%s\"\n", s->code, s->err, s->msg, s->how);
	assert_int_equal(s->gen, gen);
	assert_true(s->fd >= 0);
	assert_non_null(strstr(s->how, how));
	int fd = s->fd;
	s->fd = -1;
	lm_msg_free(m);
	return fd;
}

/* Bytes written on one end come out of the other, both ways. */
static void assert_connected(int a, int b)
{
	char buf[8] = { 0 };
	assert_int_equal(write(a, "ping", 4), 4);
	assert_int_equal(read(b, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "ping", 4);
	assert_int_equal(write(b, "pong", 4), 4);
	assert_int_equal(read(a, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "pong", 4);
}

/* Whether pidfd_getfd works here (seccomp or an old kernel may refuse). */
static bool can_duplicate(void)
{
	int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (pidfd < 0)
		return false;
	int fd = (int)syscall(SYS_pidfd_getfd, pidfd, 0, 0);
	close(pidfd);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* connect(2) to a unix path, retried until the listener is there (it binds
 * and listens on its own thread: no event says when). Bounded. */
static int connect_when_listening(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	uint64_t deadline = lm_now_ns() + 30 * SEC;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(fd >= 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
			return fd;
		int e = errno;
		close(fd);
		assert_true(e == ENOENT || e == ECONNREFUSED);
		assert_true(lm_now_ns() < deadline);
		sched_yield();
	}
}

/* ---- duplicate ---------------------------------------------------------------- */

static void test_duplicate_adopts_a_copy_of_the_callers_connected_socket(void **state)
{
	(void)state;
	if (!can_duplicate())
		skip();
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	send_duplicate(7, (uint32_t)getpid(), sv[0]);
	/* done in the actor itself: answered within one run */
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	assert_int_equal(lm_mailbox_size(&F.answers), 1);
	int fd = expect_socket(7, "duplicate pid=");
	assert_int_not_equal(fd, sv[0]);
	/* the same socket: closing the caller's copy does not close ours */
	close(sv[0]);
	assert_connected(fd, sv[1]);
	close(fd);
	close(sv[1]);
}

static void test_duplicate_refuses_what_is_not_a_connected_stream_socket(void **state)
{
	(void)state;
	if (!can_duplicate())
		skip();
	uint32_t me = (uint32_t)getpid();
	int p[2], dg[2];
	assert_int_equal(pipe(p), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), 0);
	int lone = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(lone >= 0);

	send_duplicate(1, me, p[0]);
	expect_refused(1, LM_RPC_INVALID_ARGUMENT, "not a socket");
	send_duplicate(2, me, dg[0]);
	expect_refused(2, LM_RPC_FAILED_PRECONDITION, "not a stream socket");
	send_duplicate(3, me, lone);
	expect_refused(3, LM_RPC_FAILED_PRECONDITION, "not connected");
	/* a descriptor the process does not have (a high number: a freed
	 * low one would be reused by the actor's own pidfd) */
	int closed = 1000;
	assert_int_equal(fcntl(closed, F_GETFD), -1);
	send_duplicate(4, me, closed);
	expect_refused(4, LM_RPC_INVALID_ARGUMENT, "pidfd_getfd");
	/* the caller's copies are untouched: nothing was closed or taken */
	assert_true(fcntl(p[0], F_GETFD) >= 0);
	assert_true(fcntl(lone, F_GETFD) >= 0);
	close(p[0]);
	close(p[1]);
	close(dg[0]);
	close(dg[1]);
	close(lone);
}

static void test_duplicate_refuses_a_missing_pid_or_fd_and_a_process_that_does_not_exist(void **state)
{
	(void)state;
	send_duplicate(1, 0, 3);
	expect_refused(1, LM_RPC_INVALID_ARGUMENT, "needs a pid and an fd");
	send_duplicate(2, (uint32_t)getpid(), -1);
	expect_refused(2, LM_RPC_INVALID_ARGUMENT, "needs a pid and an fd");
	/* pid_max is at most 2^22: this pid cannot exist */
	send_duplicate(3, 1u << 23, 3);
	expect_refused(3, LM_RPC_INVALID_ARGUMENT, "pidfd_open");
}

/* ---- payloads ------------------------------------------------------------------ */

static void test_garbage_or_an_empty_descriptor_is_invalid_argument(void **state)
{
	(void)state;
	static const uint8_t junk[] = { 0x12, 0xff, 0xff, 0xff, 0xff, 0x0f };
	lm_msg_t *m = lm_transport_adopt_msg(5, 0, junk, sizeof(junk));
	assert_non_null(m);
	lm_msg_set_reply_to(m, &F.answers);
	assert_int_equal(lm_actor_send(F.t, m), 0);
	expect_refused(5, LM_RPC_INVALID_ARGUMENT, "not a LinuxSocketDescriptor");
	LinuxSocketDescriptor none = LINUX_SOCKET_DESCRIPTOR__INIT;
	send_adopt(6, 0, &none);
	expect_refused(6, LM_RPC_INVALID_ARGUMENT, "no mode set");
}

static void test_bad_addresses_are_invalid_argument(void **state)
{
	(void)state;
	send_addr(1, false, "", 0);
	expect_refused(1, LM_RPC_INVALID_ARGUMENT, "empty or too long address");
	char longaddr[300];
	memset(longaddr, 'x', sizeof(longaddr) - 1);
	longaddr[sizeof(longaddr) - 1] = '\0';
	send_addr(2, true, longaddr, 0);
	expect_refused(2, LM_RPC_INVALID_ARGUMENT, "empty or too long address");
	send_addr(3, false, "no-port-here", 0);
	expect_refused(3, LM_RPC_INVALID_ARGUMENT, "bad address");
	send_addr(4, true, "unix:", 0);
	expect_refused(4, LM_RPC_INVALID_ARGUMENT, "bad unix address");
	send_addr(5, false, "[::1:80", 0);
	expect_refused(5, LM_RPC_INVALID_ARGUMENT, "want [v6]:port");
}

/* ---- connect -------------------------------------------------------------------- */

static void test_connect_to_a_unix_path_gives_a_blocking_connected_socket(void **state)
{
	(void)state;
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", F.path);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	send_addr(9, false, addr, 0);
	int fd = expect_socket(9, "connect unix:");
	int peer = accept(l, NULL, NULL);
	assert_true(peer >= 0);
	/* the memory-transfer engine does blocking I/O on it */
	assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	assert_connected(fd, peer);
	close(fd);
	close(peer);
	close(l);
}

static void test_connect_over_tcp_loopback(void **state)
{
	(void)state;
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(a.sin_port));
	send_addr(3, false, addr, 0);
	int fd = expect_socket(3, "connect 127.0.0.1:");
	int peer = accept(l, NULL, NULL);
	assert_true(peer >= 0);
	assert_connected(fd, peer);
	close(fd);
	close(peer);
	close(l);
}

static void test_connect_to_nothing_is_refused_with_the_reason(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);   /* no such file */
	send_addr(4, false, addr, 0);
	expect_refused(4, LM_RPC_INVALID_ARGUMENT, "cannot connect to");
	/* a socket file nobody listens on */
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", F.path);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	send_addr(5, false, addr, 0);
	expect_refused(5, LM_RPC_FAILED_PRECONDITION, "Connection refused");
	close(l);
}

/* ---- listen ----------------------------------------------------------------------- */

static void test_listen_on_a_unix_path_accepts_one_peer_then_removes_the_path(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	send_addr(11, true, addr, 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	assert_int_equal(lm_mailbox_size(&F.answers), 0);     /* waits for a peer */
	int peer = connect_when_listening(F.path);
	int fd = expect_socket(11, "listen unix:");
	assert_connected(fd, peer);
	struct stat st;
	assert_int_equal(stat(F.path, &st), -1);               /* path removed */
	assert_int_equal(errno, ENOENT);
	close(fd);
	close(peer);
}

/* A listen for this session's source (lm_transport_adopt_expect_hello). */
static void send_listen_for(uint64_t gen, const char *addr, uint64_t deadline_ns, uint32_t session_id)
{
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN;
	d.listen = (char *)addr;
	lm_msg_t *m = adopt_msg(gen, deadline_ns, &d);
	lm_transport_adopt_expect_hello(m, session_id);
	assert_int_equal(lm_actor_send(F.t, m), 0);
}

static lm_xf_hello_t hello_of_session(uint32_t session_id)
{
	lm_xf_hello_t h;
	memset(&h, 0, sizeof h);
	h.magic = LM_XF_MAGIC;
	h.version = LM_XF_VERSION;
	h.hdr_len = sizeof h;
	h.session_id = session_id;
	h.page_size = 4096;
	return h;
}

/* The peer was closed without a word: EOF, no byte, within 10 s. */
static void assert_dropped_silently(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };
	assert_int_equal(poll(&p, 1, 10000), 1);
	char b[64];
	ssize_t n = read(fd, b, sizeof b);
	assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
	close(fd);
}

/* A destination listening for its source: strangers that connect first
 * (garbage, another session's HELLO, one that says nothing) take no slot
 * and learn nothing; the source that comes after them gets through with
 * its HELLO unread. */
static void test_a_listening_destination_hands_over_only_its_sessions_source(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	send_listen_for(21, addr, lm_now_ns() + 30 * SEC, 0xC0FFEEu);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	int junk = connect_when_listening(F.path);
	int other = connect_when_listening(F.path);
	int mute = connect_when_listening(F.path);
	assert_int_equal(write(junk, "GET / HTTP/1.0\r\n\r\n", 18), 18);
	lm_xf_hello_t h = hello_of_session(0xBADu);
	assert_int_equal(write(other, &h, sizeof h), (ssize_t)sizeof h);
	assert_dropped_silently(junk);
	assert_dropped_silently(other);
	assert_int_equal(lm_mailbox_size(&F.answers), 0);     /* still waiting */
	int src = connect_when_listening(F.path);
	h = hello_of_session(0xC0FFEEu);
	assert_int_equal(write(src, &h, sizeof h), (ssize_t)sizeof h);
	int fd = expect_socket(21, "listen unix:");
	lm_xf_hello_t got;
	assert_int_equal(read(fd, &got, sizeof got), (ssize_t)sizeof got);   /* left for the engine */
	assert_memory_equal(&got, &h, sizeof h);
	assert_connected(fd, src);
	assert_dropped_silently(mute);                          /* the others go with the wait */
	close(fd);
	close(src);
}

/* Only strangers until the deadline: DeadlineExceeded, counting them. */
static void test_a_listen_that_meets_only_strangers_times_out_saying_so(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	send_listen_for(22, addr, lm_now_ns() + 3 * SEC, 7u);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	int a = connect_when_listening(F.path);
	lm_xf_hello_t h = hello_of_session(8u);
	assert_int_equal(write(a, &h, sizeof h), (ssize_t)sizeof h);
	int b = connect_when_listening(F.path);
	assert_int_equal(write(b, "x", 1), 1);
	expect_refused(22, LM_RPC_DEADLINE_EXCEEDED, "no source of this session connected");
	assert_dropped_silently(a);
	assert_dropped_silently(b);
}

static void test_abort_ends_a_listen_in_progress_with_aborted(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	send_addr(12, true, addr, 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	lm_msg_t *a = lm_msg_alloc(LM_XPORT_ABORT, 0);
	assert_non_null(a);
	assert_int_equal(lm_actor_send(F.t, a), 0);
	expect_refused(12, LM_RPC_ABORTED, "cancelled");
	struct stat st;
	assert_int_equal(lstat(F.path, &st), -1);   /* no stale socket file left */
	/* the transport is free again: a new request is served */
	send_addr(13, false, "no-port-here", 0);
	expect_refused(13, LM_RPC_INVALID_ARGUMENT, "bad address");
}

static void test_abort_with_nothing_in_progress_changes_nothing(void **state)
{
	(void)state;
	lm_msg_t *a = lm_msg_alloc(LM_XPORT_ABORT, 0);
	assert_int_equal(lm_actor_send(F.t, a), 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	assert_int_equal(lm_mailbox_size(&F.answers), 0);
	if (!can_duplicate())
		return;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	send_duplicate(2, (uint32_t)getpid(), sv[0]);
	int fd = expect_socket(2, "duplicate");
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

/* The transport's fault points: a listen that fails leaves no socket
 * file; an accept that fails (a peer had connected) answers with the
 * reason and removes the file too; a connect that fails says so. */
static void test_listen_accept_and_connect_fault_points(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	assert_int_equal(lm_fault_arm("transport.listen:errno=EACCES:times=1"), 0);
	send_addr(18, true, addr, 0);
	expect_refused(18, LM_RPC_FAILED_PRECONDITION, "cannot listen on");
	struct stat st;
	assert_int_equal(lstat(F.path, &st), -1);
	assert_int_equal(lm_fault_arm("transport.accept:errno=ECONNABORTED:times=1"), 0);
	send_addr(19, true, addr, 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	int peer = connect_when_listening(F.path);
	expect_refused(19, LM_RPC_FAILED_PRECONDITION, "accept on");
	assert_int_equal(lstat(F.path, &st), -1);
	close(peer);
	/* and the connecting side's */
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", F.path);
	assert_int_equal(bind(l, (struct sockaddr *)&u, sizeof(u)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(lm_fault_arm("transport.connect:errno=ECONNREFUSED:times=1"), 0);
	send_addr(20, false, addr, 0);
	expect_refused(20, LM_RPC_FAILED_PRECONDITION, "cannot connect to");
	close(l);
	unlink(F.path);
	lm_fault_disarm_all();
}

static void test_a_passed_deadline_is_deadline_exceeded(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	/* the deadline is on the real clock (the socket's own wait): one that
	 * has already passed ends the wait at its first check */
	send_addr(14, true, addr, lm_now_ns() - 1);
	expect_refused(14, LM_RPC_DEADLINE_EXCEEDED, "timed out");
	struct stat st;
	assert_int_equal(lstat(F.path, &st), -1);   /* no stale socket file left */
}

/* Listen never removes what is not a stale socket: a file is refused
 * and kept, a live listener is refused and keeps answering; a stale
 * socket (nobody answers) is replaced. */
static void test_listen_replaces_only_a_stale_socket(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	int fd = open(F.path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "keep", 4), 4);
	close(fd);
	send_addr(15, true, addr, 0);
	expect_refused(15, LM_RPC_FAILED_PRECONDITION, "is not a socket");
	struct stat st;
	assert_int_equal(lstat(F.path, &st), 0);
	assert_true(S_ISREG(st.st_mode) && st.st_size == 4);
	unlink(F.path);

	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", F.path);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(l, (struct sockaddr *)&u, sizeof(u)), 0);
	assert_int_equal(listen(l, 4), 0);
	send_addr(16, true, addr, 0);
	expect_refused(16, LM_RPC_FAILED_PRECONDITION, "another listener answers there");
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(c, (struct sockaddr *)&u, sizeof(u)), 0);   /* still there */
	close(c);
	close(l);                                     /* now stale: replaced */
	send_addr(17, true, addr, 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	int peer = connect_when_listening(F.path);
	fd = expect_socket(17, "listen unix:");
	assert_connected(fd, peer);
	close(fd);
	close(peer);
}

static void test_a_second_request_while_one_runs_is_refused_on_its_own_reply_to(void **state)
{
	(void)state;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", F.path);
	send_addr(20, true, addr, 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	/* the second asker has its own mailbox */
	lm_mailbox_t other;
	/* 8 slots: below 64 bytes lm_mailbox_init asks aligned_alloc for less
	 * than its alignment, which ASan rejects */
	assert_int_equal(lm_mailbox_init(&other, 8, NULL, NULL, NULL, NULL), 0);
	lm_msg_t *m = lm_transport_adopt_msg(21, 0, (const uint8_t *)"", 0);
	lm_msg_set_reply_to(m, &other);
	assert_int_equal(lm_actor_send(F.t, m), 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	lm_msg_t *r = lm_mailbox_recv(&other);
	assert_non_null(r);
	assert_int_equal(sock_of(r)->gen, 21);
	assert_int_equal(sock_of(r)->fd, -1);
	assert_int_equal(sock_of(r)->err, -EBUSY);
	assert_int_equal(sock_of(r)->code, LM_RPC_FAILED_PRECONDITION);
	assert_non_null(strstr(sock_of(r)->msg, "another socket is being set up"));
	lm_msg_free(r);
	assert_int_equal(lm_mailbox_size(&F.answers), 0);
	/* the first goes on and is answered on its reply_to */
	int peer = connect_when_listening(F.path);
	int fd = expect_socket(20, "listen");
	assert_connected(fd, peer);
	close(fd);
	close(peer);
	assert_null(lm_mailbox_recv(&other));
	lm_mailbox_destroy(&other);
}

static void test_a_request_without_reply_to_is_dropped_and_changes_nothing(void **state)
{
	(void)state;
	lm_msg_t *m = lm_transport_adopt_msg(30, 0, (const uint8_t *)"", 0);
	assert_int_equal(lm_actor_send(F.t, m), 0);
	assert_int_equal(lm_runtime_run_until_quiet(F.rt, 0), 1);
	assert_int_equal(lm_mailbox_size(&F.answers), 0);
	send_addr(31, false, "no-port-here", 0);
	expect_refused(31, LM_RPC_INVALID_ARGUMENT, "bad address");
}

static void test_check_socket_names_each_defect(void **state)
{
	(void)state;
	char why[256];
	int sv[2], p[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(lm_transport_check_socket(sv[0], why, sizeof(why)), 0);
	assert_int_equal(lm_transport_check_socket(p[0], why, sizeof(why)), -ENOTSOCK);
	assert_non_null(strstr(why, "not a socket"));
	int lone = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(lm_transport_check_socket(lone, why, sizeof(why)), -ENOTCONN);
	int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_int_equal(lm_transport_check_socket(udp, why, sizeof(why)), -EPROTOTYPE);
	close(sv[0]);
	close(sv[1]);
	close(p[0]);
	close(p[1]);
	close(lone);
	close(udp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_duplicate_adopts_a_copy_of_the_callers_connected_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_refuses_what_is_not_a_connected_stream_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_refuses_a_missing_pid_or_fd_and_a_process_that_does_not_exist, setup, teardown),
		cmocka_unit_test_setup_teardown(test_garbage_or_an_empty_descriptor_is_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_addresses_are_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_to_a_unix_path_gives_a_blocking_connected_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_over_tcp_loopback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_to_nothing_is_refused_with_the_reason, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_listening_destination_hands_over_only_its_sessions_source,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_listen_that_meets_only_strangers_times_out_saying_so,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_on_a_unix_path_accepts_one_peer_then_removes_the_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_ends_a_listen_in_progress_with_aborted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_replaces_only_a_stale_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_accept_and_connect_fault_points, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_with_nothing_in_progress_changes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_passed_deadline_is_deadline_exceeded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_second_request_while_one_runs_is_refused_on_its_own_reply_to, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_request_without_reply_to_is_dropped_and_changes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_socket_names_each_defect, setup, teardown),
	};
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
