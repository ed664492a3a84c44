/*
 * test_e2e.c: end-to-end tests with real processes: lmshim source and
 * destination processes on unix sockets in a temp dir, driven by lmctl
 * (a child process) and by the test's own ttrpc calls. The default suite:
 * the happy path (unix and TCP), the contract's codes for wrong states and
 * session IDs, the second socket, Transfer before the socket, and the
 * command lines (flags, containerd's start/delete). Cancels, kills and
 * network namespaces are in test_e2e_faults.c (label e2e-slow).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/sha.h>

#include "e2e.h"
#include "actors/tls_gcm.h"
#include "hcs/xfer/xfer_wire.h"
#include "tests/tlskit.h"
#include "events.pb-c.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "events_sink.h"
#include "util/sched.h"
#include "migration.pb-c.h"
#include "runtime_options.pb-c.h"
#include "task.pb-c.h"

struct fx {
	char dir[256];
	struct e2e_shim src, dst;
	pid_t daemon;              /* a detached lmshim the test started */
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	e2e_tmpdir(f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	/* every shim must stop cleanly on SIGTERM (a sanitizer report or a
	 * crash at shutdown fails the test here) */
	int bad = 0;
	struct e2e_shim *shims[] = { &f->src, &f->dst };
	for (int i = 0; i < 2; i++) {
		if (shims[i]->pid > 0 && e2e_shim_stop(shims[i]) != 0) {
			fprintf(stderr, "e2e: lmshim %s did not stop cleanly\n", shims[i]->name);
			e2e_shim_dump(shims[i]);
			bad = -1;
		}
		e2e_shim_stop(shims[i]);
	}
	if (f->daemon > 0)
		kill(f->daemon, SIGKILL);
	e2e_rmdir(f->dir);
	free(f);
	return bad;
}

static void dump_on(bool cond, struct fx *f, const char *out)
{
	if (!cond)
		return;
	if (out) {
		char *t = e2e_slurp(out);
		fprintf(stderr, "---- lmctl output ----\n%s\n", t);
		free(t);
	}
	if (f->src.log[0])
		e2e_shim_dump(&f->src);
	if (f->dst.log[0])
		e2e_shim_dump(&f->dst);
}

/* lmctl migrate between two processes; the containers run on the
 * destination under their new IDs with their init PIDs; the source's
 * are gone; both shims stop cleanly. */
/* The guest's workload moves on (its checksum changes) within 2 s. */
static void assert_workload_moves(struct e2e_shim *s)
{
	char d1[32], c1[32], d2[32], c2[32];
	assert_int_equal(e2e_digest(s, d1, c1), 0);
	bool moved = false;
	for (int i = 0; i < 40 && !moved; i++) {
		usleep(50 * 1000);
		assert_int_equal(e2e_digest(s, d2, c2), 0);
		moved = strcmp(c1, c2) != 0;
	}
	assert_true(moved);
}

static void migrate_and_check(struct fx *f, const char *const *extra)
{
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 64, 50, NULL), 0);
	/* the destination forwards task events to a containerd stand-in */
	char evp[300];
	snprintf(evp, sizeof evp, "%s/containerd.sock.ttrpc", f->dir);
	static struct sink sk;   /* static: outlives a failed test's frame */
	assert_int_equal(sink_start(&sk, evp), 0);
	const char *dargs[] = { "--idle", "--insecure-migration", "--events-address", evp, NULL };
	assert_int_equal(e2e_shim_start(&f->dst, f->dir, "dst", NULL, NULL, dargs), 0);
	uint32_t pid_sb = 0, pid_c1 = 0;
	int st = 0;
	assert_int_equal(e2e_state(&f->src, "sandbox", &pid_sb, &st), 0);
	assert_int_equal(st, 2);
	assert_int_equal(e2e_state(&f->src, "c1", &pid_c1, &st), 0);
	assert_int_equal(st, 2);
	assert_true(pid_sb > 0 && pid_c1 > 0 && pid_sb != pid_c1);

	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *args[32] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
				 "--quiet", "--verify", "--session", "e2e-session-1" };
	int k = 11;
	for (int i = 0; extra && extra[i]; i++)
		args[k++] = extra[i];
	args[k] = NULL;
	int rc = e2e_lmctl(args, out, 120000);
	dump_on(rc != 0, f, out);
	assert_int_equal(rc, 0);
	char *text = e2e_slurp(out);
	/* stdout: "SRC NEW PID" per container */
	char line[128];
	snprintf(line, sizeof(line), "sandbox sandbox-m %u", pid_sb);
	assert_non_null(strstr(text, line));
	snprintf(line, sizeof(line), "c1 c1-m %u", pid_c1);
	assert_non_null(strstr(text, line));
	assert_non_null(strstr(text, "verified: memory digest"));
	assert_non_null(strstr(text, "(message_id gaps: 0)"));
	/* how each transfer thread ran, as the shims report it */
	const char *tt = strstr(text, "lmctl: transfer threads: source ");
	assert_non_null(tt);
	if (!lm_sched_permitted())
		assert_null(strstr(tt, "source deadline"));
	free(text);

	uint32_t pid = 0;
	assert_int_equal(e2e_state(&f->dst, "sandbox-m", &pid, &st), 0);
	assert_int_equal(pid, pid_sb);
	assert_int_equal(st, 2);
	assert_int_equal(e2e_state(&f->dst, "c1-m", &pid, &st), 0);
	assert_int_equal(pid, pid_c1);
	assert_int_equal(st, 2);
	/* the source is torn down */
	rc = e2e_state(&f->src, "c1", &pid, &st);
	assert_true(rc == E2E_NOT_FOUND || (rc == 0 && st == 3));
	/* the destination's VM runs: its workload moves on */
	assert_workload_moves(&f->dst);
	/* lmctl's patch-path Creates are not containerd's: containerd, which
	 * never saw those tasks, gets no event of them */
	assert_int_equal(sink_wait(&sk, 1, 300), 0);
	sink_free(&sk);
	/* lmshim's default: each side's transfer thread asked for its 90% CPU
	 * reservation and got it, or the shim said why not: no CAP_SYS_NICE,
	 * or the kernel's admission test (other reservations on this host) */
	for (int i = 0; i < 2; i++) {
		char *log = e2e_slurp(i ? f->dst.log : f->src.log);
		assert_non_null(log);
		const char *no = strstr(log, "msg=\"transfer thread not reserved\"");
		if (!lm_sched_permitted())
			assert_non_null(no);
		else if (no)
			assert_non_null(strstr(no, "Device or resource busy"));
		else
			assert_non_null(strstr(log, "msg=\"transfer thread reserved\""));
		assert_non_null(strstr(log, "cpu_pct=90"));
		free(log);
	}
	/* both shims are idle again: a new session is accepted by the destination */
	assert_int_equal(e2e_mig_simple(&f->dst, "Cleanup", "anything"), 0);
	int s1 = e2e_shim_stop(&f->src), s2 = e2e_shim_stop(&f->dst);
	dump_on(s1 != 0 || s2 != 0, f, NULL);
	assert_int_equal(s1, 0);
	assert_int_equal(s2, 0);
}

static void test_migrate_moves_sandbox_to_destination_process(void **state)
{
	migrate_and_check(*state, NULL);
}

static void test_migrate_over_tcp_loopback(void **state)
{
	const char *extra[] = { "--transport", "tcp", "--checksum", NULL };
	migrate_and_check(*state, extra);
}

static void test_migrate_with_duplicated_socket_pair(void **state)
{
	const char *extra[] = { "--transport", "dup", NULL };
	migrate_and_check(*state, extra);
}

static void test_migrate_with_compression_and_pass_limits(void **state)
{
	const char *extra[] = { "--compression-workers", "2", "--max-passes", "4", "--target-passes", "2", NULL };
	migrate_and_check(*state, extra);
}

/* Strangers on a destination's TCP listener: they connect as soon as it
 * listens (before the source dials), one sends junk, one another
 * session's HELLO, one nothing; each is closed without a byte, and the
 * source that comes after them migrates. */
struct stranger {
	int port;
	int fds[3];
	int connected;
	char got[3];                   /* a byte one of them received: must stay 0 */
	bool eof[3];
	int stop;                      /* set by the test, read by the thread (atomic) */
};

static void *stranger_main(void *arg)
{
	struct stranger *st = arg;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)st->port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	uint64_t end = (uint64_t)time(NULL) + 60;
	while (st->connected < 3 && !__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE) && (uint64_t)time(NULL) < end) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
			close(fd);
			if (st->connected)   /* the listener is gone: a source came */
				break;
			usleep(1000);
			continue;
		}
		int k = st->connected++;
		st->fds[k] = fd;
		if (k == 0) {
			if (write(fd, "GET / HTTP/1.0\r\n\r\n", 18) < 0) { /* seen below */ }
		} else if (k == 1) {
			lm_xf_hello_t h;
			memset(&h, 0, sizeof h);
			h.magic = LM_XF_MAGIC;
			h.version = LM_XF_VERSION;
			h.hdr_len = sizeof h;
			h.session_id = 12345;
			if (write(fd, &h, sizeof h) < 0) { /* seen below */ }
		}
	}
	for (int k = 0; k < st->connected; k++) {
		struct pollfd q = { st->fds[k], POLLIN, 0 };
		if (poll(&q, 1, 30000) == 1) {
			char b;
			ssize_t n = read(st->fds[k], &b, 1);
			st->eof[k] = n == 0 || (n < 0 && errno == ECONNRESET);
			if (n > 0)
				st->got[k] = b ? b : 1;
		}
		close(st->fds[k]);
	}
	return NULL;
}

static void test_strangers_on_the_listener_do_not_stop_the_source(void **state)
{
	struct fx *f = *state;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof a;
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
	close(s);
	struct stranger st = { .port = ntohs(a.sin_port) };
	char addr[64];
	snprintf(addr, sizeof addr, "127.0.0.1:%d", st.port);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, stranger_main, &st), 0);
	const char *extra[] = { "--transport", "tcp", "--listen", addr, NULL };
	migrate_and_check(f, extra);
	__atomic_store_n(&st.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	printf("# strangers connected first: %d\n", st.connected);
	/* (any stranger that got in did so before the source was taken: the
	 * listener closes then; the three kinds are each tested on their own
	 * in test_transport) */
	assert_true(st.connected >= 1);
	for (int k = 0; k < st.connected; k++) {
		assert_int_equal(st.got[k], 0);       /* told nothing */
		assert_true(st.eof[k]);
	}
	char *log = e2e_slurp(f->dst.log);
	assert_non_null(strstr(log, "peers refused: not this session's source"));
	free(log);
}

/* Integrity by default: bits flipped on the wire (fault point
 * transfer.corrupt on the source, in every batch after the fifth) are
 * caught by the page checksums the source sends though lmctl asked for
 * none: the migration fails with DataLoss and the guest runs on at the
 * source. (Every batch: a page damaged in brownout that the running guest
 * writes again arrives whole the next time, which is no loss; with one
 * damaged page the outcome would depend on the guest's writes.) */
static void test_a_flipped_bit_is_caught_without_asking(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 64, 50,
					  "transfer.corrupt:errno=EIO:after=5"), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", NULL), 0);
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "e2e-flip", NULL };
	int rc = e2e_lmctl(args, out, 120000);
	char *text = e2e_slurp(out);
	printf("# a flipped bit: lmctl exited %d\n", rc);
	assert_int_not_equal(rc, 0);
	if (!strstr(text, "DataLoss"))
		printf("%s", text);
	assert_non_null(strstr(text, "DataLoss"));
	free(text);
	uint32_t pid = 0;
	int st = 0;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);                            /* the source runs on */
	assert_workload_moves(&f->src);
	assert_int_equal(e2e_shim_stop(&f->src), 0);
	assert_int_equal(e2e_shim_stop(&f->dst), 0);
}

/* ---- the migration link's TLS ---------------------------------------------- */

static struct tk_ca e2e_ca, e2e_other_ca;

/* TLS directories under f->dir: "tls-src", "tls-dst" (our CA), "tls-foreign"
 * (signed by another CA). */
static void tls_dirs(struct fx *f)
{
	if (!e2e_ca.cert) {
		assert_true(tk_ca_make(&e2e_ca, "e2e CA"));
		assert_true(tk_ca_make(&e2e_other_ca, "someone else's CA"));
	}
	char p[300];
	snprintf(p, sizeof p, "%s/tls-src", f->dir);
	assert_true(tk_dir(p, &e2e_ca, &e2e_ca, false, 86400));
	snprintf(p, sizeof p, "%s/tls-dst", f->dir);
	assert_true(tk_dir(p, &e2e_ca, &e2e_ca, false, 86400));
	snprintf(p, sizeof p, "%s/tls-foreign", f->dir);
	assert_true(tk_dir(p, &e2e_ca, &e2e_other_ca, false, 86400));
}

/* A source and a destination shim; tls: their directory's name under
 * f->dir, or NULL for none; src_faults: the source's fault points. */
static void tls_pair_faults(struct fx *f, const char *src_tls, const char *dst_tls, const char *src_faults)
{
	char sd[300], dd[300];
	snprintf(sd, sizeof sd, "%s/%s", f->dir, src_tls ? src_tls : "");
	snprintf(dd, sizeof dd, "%s/%s", f->dir, dst_tls ? dst_tls : "");
	const char *sargs[] = { "--vm-size-mb", "64", "--workload-rate", "50", "--containers", "pod1:sandbox,pod1:c1",
				src_tls ? "--migration-tls-dir" : NULL, sd, NULL };
	const char *dargs[] = { "--idle", dst_tls ? "--migration-tls-dir" : NULL, dd, NULL };
	assert_int_equal(e2e_shim_start(&f->src, f->dir, "src", NULL, src_faults, sargs), 0);
	assert_int_equal(e2e_shim_start(&f->dst, f->dir, "dst", NULL, NULL, dargs), 0);
}

static void tls_pair(struct fx *f, const char *src_tls, const char *dst_tls)
{
	tls_pair_faults(f, src_tls, dst_tls, NULL);
}

/* lmctl migrate src -> dst with extra args; its exit status, output in *text. */
static int tls_migrate(struct fx *f, const char *session, const char *const *extra, char **text)
{
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl-%s.out", f->dir, session);
	snprintf(work, sizeof(work), "%s/work-%s", f->dir, session);
	const char *args[24] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
				 "--quiet", "--session", session };
	int k = 10;
	for (int i = 0; extra && extra[i]; i++)
		args[k++] = extra[i];
	args[k] = NULL;
	int rc = e2e_lmctl(args, out, 120000);
	*text = e2e_slurp(out);
	return rc;
}

static void assert_source_runs(struct fx *f)
{
	uint32_t pid = 0;
	int st = 0;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
}

/* Two shims with certificates of one CA migrate over TLS, over a unix
 * socket and over TCP; each log names the link (TLS 1.3, its cipher).
 * Over unix, with our records, they go through shared-memory rings
 * (hcs/ring_link.h), and each log says so. */
static void test_migrate_over_mutual_tls(void **state)
{
	struct fx *f = *state;
	tls_dirs(f);
	static const char *const how[][4] = { { NULL }, { "--transport", "tcp", NULL } };
	for (int i = 0; i < 2; i++) {
		tls_pair(f, "tls-src", "tls-dst");
		char *text = NULL, session[32];
		snprintf(session, sizeof session, "e2e-tls-%d", i);
		int rc = tls_migrate(f, session, how[i], &text);
		dump_on(rc != 0, f, NULL);
		if (rc)
			printf("%s", text);
		assert_int_equal(rc, 0);
		free(text);
		uint32_t pid = 0;
		int st = 0;
		assert_int_equal(e2e_state(&f->dst, "c1-m", &pid, &st), 0);
		assert_int_equal(st, 2);
		for (int side = 0; side < 2; side++) {
			char *log = e2e_slurp(side ? f->dst.log : f->src.log);
			const char *l = strstr(log, "msg=\"migration socket adopted\"");
			assert_non_null(l);
			assert_non_null(strstr(l, "link=\"TLS 1.3 TLS_"));
			/* the engine seals and opens the records itself (ours
			 * where the CPU has VAES), or the kernel does (where it
			 * has the tls module): no relay */
			const char *eol = strchr(l, '\n');
			const char *k = strstr(l, lm_gcm_available() ? "(user space, in the engine; lmshim records"
								     : "(user space, in the engine;");
			if (!k || (eol && k > eol))
				k = strstr(l, "(kernel;");
			assert_true(k && (!eol || k < eol));
			/* (the logs go on from the unix case: one each) */
			int rings = 0;
			for (const char *r = log; (r = strstr(r, "msg=\"shared-memory ring\"")); r++)
				rings++;
			assert_int_equal(rings, lm_gcm_available() ? 1 : 0);
			free(log);
		}
		assert_int_equal(e2e_shim_stop(&f->src), 0);
		assert_int_equal(e2e_shim_stop(&f->dst), 0);
	}
}

/* A peer that does not authenticate is refused on both sides (a
 * certificate from another CA; a plain peer), and a plain TCP link
 * without --insecure-migration is refused saying what to do; each time
 * the guest runs on at the source. */
static void test_tls_refusals_leave_the_source_running(void **state)
{
	struct fx *f = *state;
	tls_dirs(f);
	static const struct { const char *src, *dst; const char *extra[4]; const char *want; } cases[] = {
		{ "tls-foreign", "tls-dst", { NULL }, "certificate was refused" },
		{ "tls-src", "tls-foreign", { NULL }, "refused" },
		{ NULL, "tls-dst", { NULL }, "TLS" },
		{ NULL, NULL, { "--transport", "tcp", NULL }, "--migration-tls-dir" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		tls_pair(f, cases[i].src, cases[i].dst);
		char *text = NULL, session[32];
		snprintf(session, sizeof session, "e2e-tls-no-%zu", i);
		int rc = tls_migrate(f, session, cases[i].extra, &text);
		printf("# case %zu: lmctl exited %d: %.300s\n", i, rc, strstr(text, "lmctl: ") ? strstr(text, "lmctl: ")
												: text);
		assert_int_not_equal(rc, 0);
		char *sl = e2e_slurp(f->src.log), *dl = e2e_slurp(f->dst.log);
		bool said = strstr(text, cases[i].want) || strstr(sl, cases[i].want) || strstr(dl, cases[i].want);
		free(sl);
		free(dl);
		free(text);
		assert_true(said);
		assert_source_runs(f);
		assert_int_equal(e2e_shim_stop(&f->src), 0);
		assert_int_equal(e2e_shim_stop(&f->dst), 0);
	}
}

/* A TCP relay that flips one bit of the source's stream after `after`
 * bytes (a man in the middle). */
struct flipper {
	int lfd;               /* listening */
	int to_port;
	size_t after;
	pthread_t th;
};

static void *flipper_main(void *arg)
{
	struct flipper *fl = arg;
	int a = accept(fl->lfd, NULL, NULL);
	if (a < 0)
		return NULL;
	int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)fl->to_port) };
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(b, (struct sockaddr *)&to, sizeof to) < 0) {
		close(a);
		close(b);
		return NULL;
	}
	size_t seen = 0;
	bool flipped = false;
	static uint8_t buf[65536];
	for (;;) {
		struct pollfd q[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };
		if (poll(q, 2, 30000) <= 0)
			break;
		if (q[0].revents) {
			ssize_t n = read(a, buf, sizeof buf);
			if (n <= 0)
				break;
			if (!flipped && seen + (size_t)n > fl->after) {
				buf[fl->after - seen] ^= 0x01;
				flipped = true;
			}
			seen += (size_t)n;
			if (write(b, buf, (size_t)n) != n)
				break;
		}
		if (q[1].revents) {
			ssize_t n = read(b, buf, sizeof buf);
			if (n <= 0 || write(a, buf, (size_t)n) != n)
				break;
		}
	}
	close(a);
	close(b);
	return NULL;
}

static int free_port(int *fd_out)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof a;
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
	if (fd_out) {
		assert_int_equal(listen(s, 4), 0);
		*fd_out = s;
	} else {
		close(s);
	}
	return ntohs(a.sin_port);
}

/* A bit flipped in the TLS stream by a relay in the middle: the
 * destination's TLS sees a record fail its authentication, the migration
 * fails with DataLoss, and the guest runs on at the source. */
static void test_a_bit_flipped_in_the_tls_stream_is_dataloss(void **state)
{
	struct fx *f = *state;
	tls_dirs(f);
	tls_pair(f, "tls-src", "tls-dst");
	struct flipper fl = { .after = 3u << 20 };
	int relay_port = free_port(&fl.lfd);
	fl.to_port = free_port(NULL);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, flipper_main, &fl), 0);
	char listen_at[64], connect_to[64];
	snprintf(listen_at, sizeof listen_at, "127.0.0.1:%d", fl.to_port);
	snprintf(connect_to, sizeof connect_to, "127.0.0.1:%d", relay_port);
	const char *extra[] = { "--transport", "tcp", "--listen", listen_at, "--connect", connect_to, NULL };
	char *text = NULL;
	int rc = tls_migrate(f, "e2e-tls-flip", extra, &text);
	printf("# a flipped bit in TLS: lmctl exited %d\n", rc);
	assert_int_not_equal(rc, 0);
	if (!strstr(text, "DataLoss"))
		printf("%s", text);
	assert_non_null(strstr(text, "DataLoss"));
	assert_non_null(strstr(text, "altered on the way"));
	free(text);
	pthread_join(th, NULL);
	close(fl.lfd);
	assert_source_runs(f);
	assert_int_equal(e2e_shim_stop(&f->src), 0);
	assert_int_equal(e2e_shim_stop(&f->dst), 0);
}

/* Over a unix socket TLS's records go through shared-memory rings: a bit
 * that flips there after the source sealed a record (fault point
 * ring.flip on the source: as another holder of the ring's memfd could
 * make it) fails that record's authentication: DataLoss, and the guest
 * runs on at the source. */
static void test_a_bit_flipped_in_the_rings_is_dataloss(void **state)
{
	struct fx *f = *state;
	if (!lm_gcm_available())
		skip();   /* (OpenSSL's records stay on the socket) */
	tls_dirs(f);
	tls_pair_faults(f, "tls-src", "tls-dst", "ring.flip:errno=EIO:after=20");
	char *text = NULL;
	int rc = tls_migrate(f, "e2e-ring-flip", NULL, &text);
	printf("# a flipped bit in the rings: lmctl exited %d\n", rc);
	assert_int_not_equal(rc, 0);
	if (!strstr(text, "DataLoss"))
		printf("%s", text);
	assert_non_null(strstr(text, "DataLoss"));
	assert_non_null(strstr(text, "altered on the way"));
	free(text);
	char *log = e2e_slurp(f->src.log);
	assert_non_null(strstr(log, "msg=\"shared-memory ring\""));
	free(log);
	assert_source_runs(f);
	assert_workload_moves(&f->src);
	assert_int_equal(e2e_shim_stop(&f->src), 0);
	assert_int_equal(e2e_shim_stop(&f->dst), 0);
}

/* What a long-lived shim holds: open fds, threads, resident KiB. */
struct footprint {
	long fds, threads, rss_kib;
};

static struct footprint footprint_of(pid_t pid)
{
	struct footprint fp = {0};
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(p);
	struct dirent *e;
	while (d && (e = readdir(d)))
		fp.fds += e->d_name[0] != '.';
	if (d)
		closedir(d);
	snprintf(p, sizeof(p), "/proc/%d/status", (int)pid);
	FILE *f = fopen(p, "r");
	char line[256];
	while (f && fgets(line, sizeof(line), f)) {
		sscanf(line, "Threads: %ld", &fp.threads);
		sscanf(line, "VmRSS: %ld", &fp.rss_kib);
	}
	if (f)
		fclose(f);
	return fp;
}

/* One migration A -> B of pod1 = {sandbox, c1}, renaming the containers
 * from `from` to `to` suffixes ("" or "-b"). */
static void soak_move(struct fx *f, struct e2e_shim *a, struct e2e_shim *b, const char *from,
		      const char *to, int round)
{
	char out[300], work[300], sess[32], c1[64], sb[64], sbid[32];
	snprintf(out, sizeof(out), "%s/soak.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	snprintf(sess, sizeof(sess), "soak-%d", round);
	snprintf(sb, sizeof(sb), "sandbox%s=sandbox%s:sandbox:layers=1", from, to);
	snprintf(c1, sizeof(c1), "c1%s=c1%s:container:layers=1", from, to);
	snprintf(sbid, sizeof(sbid), "sandbox%s", to);
	const char *args[] = { "migrate", "--from", a->sock, "--to", b->sock, "--workdir", work, "--quiet",
			       "--session", sess, "--container", sb, "--container", c1, "--sandbox-id", sbid,
			       NULL };
	int rc = e2e_lmctl(args, out, 60000);
	if (rc != 0) {
		char *t = e2e_slurp(out);
		fprintf(stderr, "%s\n", t);
		free(t);
	}
	assert_int_equal(rc, 0);
}

/* Many migrations back and forth between two long-lived shims leave
 * their fds and threads where they were and their memory flat: nothing
 * of a finished session stays behind. */
static void test_back_and_forth_migrations_leave_nothing_behind(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 20, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", NULL), 0);
	int round = 0;
	/* warm up: first use of every pool and cache */
	for (int i = 0; i < 3; i++) {
		soak_move(f, &f->src, &f->dst, "", "-b", round++);
		soak_move(f, &f->dst, &f->src, "-b", "", round++);
	}
	struct footprint s0 = footprint_of(f->src.pid), d0 = footprint_of(f->dst.pid);
	const int trips = 10;
	for (int i = 0; i < trips; i++) {
		soak_move(f, &f->src, &f->dst, "", "-b", round++);
		soak_move(f, &f->dst, &f->src, "-b", "", round++);
	}
	struct footprint s1 = footprint_of(f->src.pid), d1 = footprint_of(f->dst.pid);
	/* a VM's closer thread (detached, lm__ctl_close_vm) may still be
	 * ending the last round's VM: a leak stays, a closer goes */
	for (int i = 0; i < 100 && (s1.threads != s0.threads || d1.threads != d0.threads ||
				    s1.fds != s0.fds || d1.fds != d0.fds); i++) {
		usleep(20000);
		s1 = footprint_of(f->src.pid);
		d1 = footprint_of(f->dst.pid);
	}
	print_message("soak: %d round trips: source fds %ld -> %ld, threads %ld -> %ld, RSS %ld -> %ld KiB; "
		      "destination fds %ld -> %ld, threads %ld -> %ld, RSS %ld -> %ld KiB\n", trips,
		      s0.fds, s1.fds, s0.threads, s1.threads, s0.rss_kib, s1.rss_kib,
		      d0.fds, d1.fds, d0.threads, d1.threads, d0.rss_kib, d1.rss_kib);
	assert_int_equal(s1.fds, s0.fds);
	assert_int_equal(d1.fds, d0.fds);
	assert_int_equal(s1.threads, s0.threads);
	assert_int_equal(d1.threads, d0.threads);
	/* at both measurements the source holds the 32 MiB guest and the
	 * destination none: growth beyond allocator noise is something kept
	 * per round */
	const char *san = getenv("LM_SANITIZE");
	if (san && *san) {
		/* ASan's quarantine and TSan's shadow grow RSS by design */
		print_message("soak: RSS not judged under %s\n", san);
	} else {
		assert_true(s1.rss_kib - s0.rss_kib < 2048);
		assert_true(d1.rss_kib - d0.rss_kib < 2048);
	}
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
}

/* Every call in a wrong state answers the contract's code. */
static void test_calls_in_wrong_state_answer_contract_codes(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", NULL), 0);
	char msg[256];
	const char *S = "s-wrong-state";

	/* idle shims: only Export/Import start a session; any other call's
	 * session ID names no session */
	PrepareSandboxRequest pr = PREPARE_SANDBOX_REQUEST__INIT;
	pr.session_id = (char *)S;
	assert_int_equal(e2e_call(&f->dst, "Migration", "PrepareSandbox", &pr.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_INVALID);
	assert_non_null(strstr(msg, "names no session"));
	assert_int_equal(e2e_transfer(&f->src, S, 0, msg, sizeof(msg)), E2E_INVALID);
	assert_int_equal(e2e_socket_connect(&f->src, S, "unix:/nonexistent", msg, sizeof(msg)), E2E_INVALID);
	/* Finalize, Cancel, Cleanup on an idle shim: OK whatever the session */
	assert_int_equal(e2e_finalize(&f->dst, S, 2), 0);
	assert_int_equal(e2e_mig_simple(&f->dst, "Cancel", S), 0);
	assert_int_equal(e2e_mig_simple(&f->dst, "Cleanup", S), 0);
	/* Export on a shim with no VM */
	assert_int_equal(e2e_export(&f->dst, S), E2E_PRECONDITION);

	/* source exported */
	assert_int_equal(e2e_export(&f->src, S), 0);
	assert_int_equal(e2e_export(&f->src, S), E2E_PRECONDITION);
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), E2E_PRECONDITION); /* task gated */
	assert_int_equal(e2e_call(&f->src, "Migration", "PrepareSandbox", &pr.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_PRECONDITION);
	ImportSandboxRequest im = IMPORT_SANDBOX_REQUEST__INIT;
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	im.session_id = (char *)S;
	im.sandbox_id = "x";
	im.config = &any;
	any.type_url = "type.googleapis.com/lmshim.v1.SandboxSnapshot";
	assert_int_equal(e2e_call(&f->src, "Migration", "ImportSandbox", &im.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_PRECONDITION);
	/* source cancelled: STOP refused, RESUME then Cleanup */
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", S), 0);
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", S), 0); /* no-op */
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", S), E2E_PRECONDITION);
	assert_int_equal(e2e_finalize(&f->src, S, 1), E2E_PRECONDITION);
	assert_int_equal(e2e_finalize(&f->src, S, 0), E2E_INVALID);
	assert_int_equal(e2e_finalize(&f->src, S, 2), 0);
	assert_int_equal(e2e_finalize(&f->src, S, 2), 0); /* idempotent */
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", S), 0);
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);

	/* destination: a bad snapshot is InvalidArgument and leaves no trace */
	any.value.data = (uint8_t *)"\xff\xff\xff";
	any.value.len = 3;
	assert_int_equal(e2e_call(&f->dst, "Migration", "ImportSandbox", &im.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_INVALID);
	any.type_url = "type.googleapis.com/something.Else";
	assert_int_equal(e2e_call(&f->dst, "Migration", "ImportSandbox", &im.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_INVALID);
	/* ... no trace: the destination is still idle */
	assert_int_equal(e2e_call(&f->dst, "Migration", "PrepareSandbox", &pr.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_INVALID);
	/* unknown method */
	assert_int_equal(e2e_call(&f->dst, "Migration", "NoSuchMethod", &pr.base, NULL, NULL, msg, sizeof(msg)),
			 E2E_UNIMPLEMENTED);
}

static void test_empty_and_wrong_session_ids_are_invalid_argument(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	char msg[256];
	/* empty: always InvalidArgument, idle or not */
	assert_int_equal(e2e_export(&f->src, ""), E2E_INVALID);
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", ""), E2E_INVALID);
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", ""), E2E_INVALID);
	assert_int_equal(e2e_finalize(&f->src, "", 2), E2E_INVALID);
	assert_int_equal(e2e_export(&f->src, "s-right"), 0);
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", ""), E2E_INVALID);
	/* wrong: InvalidArgument, and the session is untouched */
	assert_int_equal(e2e_socket_connect(&f->src, "s-wrong", "unix:/nonexistent", msg, sizeof(msg)), E2E_INVALID);
	assert_int_equal(e2e_transfer(&f->src, "s-wrong", 0, msg, sizeof(msg)), E2E_INVALID);
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", "s-wrong"), E2E_INVALID);
	assert_int_equal(e2e_finalize(&f->src, "s-wrong", 2), E2E_INVALID);
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", "s-wrong"), E2E_INVALID);
	assert_int_equal(e2e_wait_phase(&f->src, "s-wrong", 0, 500, NULL), -1);
	/* the right one still works */
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", "s-right"), 0);
	assert_int_equal(e2e_finalize(&f->src, "s-right", 2), 0);
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", "s-right"), 0);
}

/* A child that listens on a unix path and accepts one peer, then waits. */
static pid_t listener_process(const char *path)
{
	pid_t pid = fork();
	if (pid == 0) {
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		if (snprintf(a.sun_path, sizeof(a.sun_path), "%s", path) >= (int)sizeof(a.sun_path) || fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4) < 0)
			_exit(1);
		int c = accept(fd, NULL, NULL);
		(void)c;
		sleep(30);
		_exit(0);
	}
	return pid;
}

/* A second CreateDuplicateSocket is AlreadyExists; a refused one does not
 * poison the session. */
static void test_second_socket_is_already_exists(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", NULL), 0);
	const char *S = "s-two-sockets";
	char msg[256], addr[300];
	snprintf(addr, sizeof(addr), "unix:%s/mig.sock", f->dir);
	assert_int_equal(e2e_export(&f->src, S), 0);
	/* nobody listens yet: refused, the session stays */
	int rc = e2e_socket_connect(&f->src, S, addr, msg, sizeof(msg));
	assert_true(rc == E2E_INVALID || rc == E2E_PRECONDITION);
	/* a listener of the test's own */
	pid_t lp = listener_process(addr + 5);
	for (int i = 0; i < 200 && access(addr + 5, F_OK) != 0; i++)
		usleep(10000);
	assert_int_equal(e2e_socket_connect(&f->src, S, addr, msg, sizeof(msg)), 0);
	assert_int_equal(e2e_socket_connect(&f->src, S, addr, msg, sizeof(msg)), E2E_EXISTS);
	kill(lp, SIGKILL);
	e2e_wait(lp, 5000);
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", S), 0);
	assert_int_equal(e2e_finalize(&f->src, S, 2), 0);
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", S), 0);
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
}

static void test_transfer_before_socket_times_out_with_deadline_exceeded(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	const char *S = "s-transfer-early";
	char msg[256];
	assert_int_equal(e2e_export(&f->src, S), 0);
	assert_int_equal(e2e_transfer(&f->src, S, -1000000000ll, msg, sizeof(msg)), E2E_INVALID);
	assert_int_equal(e2e_transfer(&f->src, S, 300 * 1000000ll, msg, sizeof(msg)), E2E_DEADLINE);
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", S), 0);
	assert_int_equal(e2e_finalize(&f->src, S, 2), 0);
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", S), 0);
}

/* lmctl's failures name the call, the side and the cause; lmctl rolls
 * back, the source keeps running. */
static void test_lmctl_error_names_call_side_and_cause_and_rolls_back(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	/* the "destination" is a second source: ImportSandbox is refused */
	struct e2e_shim *d = &f->dst;
	assert_int_equal(e2e_source_start(d, f->dir, "dst", 32, 0, NULL), 0);
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	/* options out of range: the source refuses the export, naming the field */
	const char *opt[] = { "migrate", "--from", f->src.sock, "--to", d->sock, "--workdir", work, "--quiet",
			      "--throttling-scale", "500", NULL };
	assert_int_equal(e2e_lmctl(opt, out, 60000), 1);
	char *t = e2e_slurp(out);
	char want[400];
	snprintf(want, sizeof(want), "lmctl: PrepareAndExportSandbox on source (%s): InvalidArgument: ", f->src.sock);
	if (!strstr(t, want) || !strstr(t, "throttling"))
		fprintf(stderr, "%s\n", t);
	assert_non_null(strstr(t, want));
	assert_non_null(strstr(t, "throttling"));
	free(t);
	unlink(out);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", d->sock, "--workdir", work, "--quiet", NULL };
	assert_int_equal(e2e_lmctl(args, out, 60000), 1);
	t = e2e_slurp(out);
	snprintf(want, sizeof(want), "lmctl: ImportSandbox on destination (%s): FailedPrecondition: ", d->sock);
	if (!strstr(t, want))
		fprintf(stderr, "%s\n", t);
	assert_non_null(strstr(t, want));
	assert_non_null(strstr(t, "rolling back"));
	free(t);
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
}

/* A work dir others can write, or a link to one, is refused before
 * anything is written there (another user could own the destination's
 * bundles or plant links for root to follow); the guest stays on the
 * source. */
static void test_lmctl_refuses_a_work_dir_that_is_not_private(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", NULL), 0);
	char out[300], open_dir[300], link[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(open_dir, sizeof(open_dir), "%s/shared", f->dir);
	snprintf(link, sizeof(link), "%s/link", f->dir);
	assert_int_equal(mkdir(open_dir, 0700), 0);
	assert_int_equal(chmod(open_dir, 0777), 0);
	assert_int_equal(symlink(open_dir, link), 0);
	const char *dirs[] = { open_dir, link };
	const char *why[] = { "mode 0777", "a symbolic link" };
	for (int i = 0; i < 2; i++) {
		const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", dirs[i],
				       "--quiet", NULL };
		assert_int_equal(e2e_lmctl(args, out, 60000), 1);
		char *t = e2e_slurp(out);
		if (!strstr(t, "is not private") || !strstr(t, why[i]))
			fprintf(stderr, "%s\n", t);
		assert_non_null(strstr(t, "is not private"));
		assert_non_null(strstr(t, why[i]));
		free(t);
		unlink(out);
		char bundles[400];
		struct stat st;
		snprintf(bundles, sizeof(bundles), "%s/bundles", open_dir);
		assert_int_not_equal(lstat(bundles, &st), 0);   /* nothing written there */
		uint32_t pid;
		int s2;
		assert_int_equal(e2e_state(&f->src, "c1", &pid, &s2), 0);
		assert_int_equal(s2, 2);
	}
}

static void test_lmctl_state_prints_task_state(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 0, NULL), 0);
	uint32_t pid = 0;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	char out[300], want[64];
	snprintf(out, sizeof(out), "%s/state.out", f->dir);
	const char *a1[] = { "state", "--shim", f->src.sock, "--id", "c1", NULL };
	assert_int_equal(e2e_lmctl(a1, out, 10000), 0);
	char *t = e2e_slurp(out);
	snprintf(want, sizeof(want), "id=c1 pid=%u status=running", pid);
	assert_non_null(strstr(t, want));
	free(t);
	unlink(out);
	const char *a2[] = { "state", "--shim", f->src.sock, "--id", "nope", NULL };
	assert_int_equal(e2e_lmctl(a2, out, 10000), 1);
	t = e2e_slurp(out);
	assert_non_null(strstr(t, "State on shim"));
	assert_non_null(strstr(t, "NotFound"));
	free(t);
	/* cancel on an idle shim: the shim answers OK (the contract: a no-op),
	 * lmctl says there was nothing to cancel instead of "cancelled" */
	unlink(out);
	const char *a3[] = { "cancel", "--shim", f->src.sock, "--session", "x", NULL };
	assert_int_equal(e2e_lmctl(a3, out, 10000), 1);
	t = e2e_slurp(out);
	assert_non_null(strstr(t, "nothing to cancel"));
	assert_null(strstr(t, "cancelled"));
	free(t);
}

/* A destination whose receive fails once (fault point transfer.recv):
 * both TransferSandbox calls fail naming their side, lmctl rolls back,
 * the source runs on; the next migration succeeds. */
static void test_transfer_failure_rolls_back_then_retry_succeeds(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 64, 50, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", "transfer.recv:errno=ECONNRESET:after=5:times=1"), 0);
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", NULL };
	int rc = e2e_lmctl(args, out, 60000);
	dump_on(rc != 1, f, out);
	assert_int_equal(rc, 1);
	char *t = e2e_slurp(out);
	char want[400];
	snprintf(want, sizeof(want), "lmctl: TransferSandbox on destination (%s): ", f->dst.sock);
	assert_non_null(strstr(t, want));
	assert_non_null(strstr(t, "rolling back"));
	assert_non_null(strstr(t, "reported FAILED"));
	free(t);
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
	assert_int_equal(e2e_state(&f->dst, "c1-m", &pid, &st), E2E_NOT_FOUND);
	unlink(out);
	rc = e2e_lmctl(args, out, 60000);
	dump_on(rc != 0, f, out);
	assert_int_equal(rc, 0);
	assert_int_equal(e2e_state(&f->dst, "c1-m", &pid, &st), 0);
	assert_int_equal(st, 2);
}

/* --container names the containers and their new IDs instead of the
 * snapshot; a layer count that does not match is refused by the patch
 * path and lmctl names the Create, the container and the side. */
static void test_migrate_with_explicit_container_list(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 20, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", NULL), 0);
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *bad[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work, "--quiet",
			      "--container", "sandbox=pod-new:sandbox:layers=1",
			      "--container", "c1=app-new:container:layers=3", NULL };
	int rc = e2e_lmctl(bad, out, 60000);
	dump_on(rc != 1, f, out);
	assert_int_equal(rc, 1);
	char *t = e2e_slurp(out);
	char want[400];
	snprintf(want, sizeof(want), "lmctl: task Create(app-new, source container c1) on destination (%s): ",
		 f->dst.sock);
	if (!strstr(t, want))
		fprintf(stderr, "%s\n", t);
	assert_non_null(strstr(t, want));
	free(t);
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
	/* the same with the right layer count succeeds */
	unlink(out);
	const char *good[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work, "--quiet",
			       "--container", "sandbox=pod-new:sandbox:layers=1",
			       "--container", "c1=app-new:container:layers=1", NULL };
	rc = e2e_lmctl(good, out, 60000);
	dump_on(rc != 0, f, out);
	assert_int_equal(rc, 0);
	uint32_t pid2;
	assert_int_equal(e2e_state(&f->dst, "app-new", &pid2, &st), 0);
	assert_int_equal(pid2, pid);
	assert_int_equal(st, 2);
	assert_int_equal(e2e_state(&f->dst, "pod-new", &pid2, &st), 0);
	assert_int_equal(st, 2);
}

/* The destination's RESUME fails (fault point hcs.finalize, once): lmctl
 * names it, cancels, resumes the source (it runs on), discards the
 * destination's copy; the retry succeeds. */
static void test_destination_resume_failure_resumes_source(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 32, 20, NULL), 0);
	assert_int_equal(e2e_dest_start(&f->dst, f->dir, "dst", "hcs.finalize:errno=EIO:times=1"), 0);
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", NULL };
	int rc = e2e_lmctl(args, out, 60000);
	dump_on(rc != 1, f, out);
	assert_int_equal(rc, 1);
	char *t = e2e_slurp(out);
	char want[400];
	snprintf(want, sizeof(want), "lmctl: FinalizeSandbox on destination (%s): ", f->dst.sock);
	assert_non_null(strstr(t, want));
	assert_non_null(strstr(t, "rolling back"));
	free(t);
	uint32_t pid;
	int st;
	assert_int_equal(e2e_state(&f->src, "c1", &pid, &st), 0);
	assert_int_equal(st, 2);
	assert_int_equal(e2e_state(&f->dst, "c1-m", &pid, &st), E2E_NOT_FOUND);
	unlink(out);
	rc = e2e_lmctl(args, out, 60000);
	dump_on(rc != 0, f, out);
	assert_int_equal(rc, 0);
	assert_int_equal(e2e_state(&f->dst, "c1-m", &pid, &st), 0);
	assert_int_equal(st, 2);
}

/* The README's main job, smaller: lmctl demo starts its own two shims,
 * migrates, verifies and exits 0 only if everything verified. */
static void test_lmctl_demo_verifies_the_migration(void **state)
{
	struct fx *f = *state;
	char out[300];
	snprintf(out, sizeof(out), "%s/demo.out", f->dir);
	const char *args[] = { "demo", "--backend", "sim", "--vm-size-mb", "128", "--rate", "100", NULL };
	int rc = e2e_lmctl(args, out, 120000);
	char *t = e2e_slurp(out);
	if (rc != 0)
		fprintf(stderr, "%s\n", t);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(t, "lmctl demo: VERIFIED"));
	assert_non_null(strstr(t, "ok   web -> web-migrated running on the destination"));
	assert_non_null(strstr(t, "ok   source torn down"));
	assert_non_null(strstr(t, "equal, workload checksum"));
	free(t);
}

/* lmctl demo --backend kvm: the same with a real KVM guest. */
static void test_lmctl_demo_on_kvm_verifies_the_migration(void **state)
{
	struct fx *f = *state;
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		print_message("SKIP: /dev/kvm is not usable here: lmctl demo --backend kvm is not tested\n");
		skip();
	}
	char out[300];
	snprintf(out, sizeof(out), "%s/demo-kvm.out", f->dir);
	const char *args[] = { "demo", "--backend", "kvm", "--vm-size-mb", "256", "--rate", "100", NULL };
	int rc = e2e_lmctl(args, out, 120000);
	char *t = e2e_slurp(out);
	if (rc != 0)
		fprintf(stderr, "%s\n", t);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(t, "lmctl demo: VERIFIED"));
	assert_non_null(strstr(t, "after resume"));
	assert_non_null(strstr(t, "ok   source torn down"));
	free(t);
}

/* A shim that cannot start fails the demo at once, with its log's last
 * lines in lmctl's own output (it waited 60 s, the cause only in a log). */
static void test_lmctl_demo_fails_fast_when_a_shim_cannot_start(void **state)
{
	struct fx *f = *state;
	char out[300];
	snprintf(out, sizeof(out), "%s/demo-fail.out", f->dir);
	setenv("LM_FAULTS", "hcs.create:errno=EIO", 1);     /* inherited by the shims */
	const char *args[] = { "demo", "--backend", "sim", "--vm-size-mb", "32", NULL };
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	int rc = e2e_lmctl(args, out, 60000);
	clock_gettime(CLOCK_MONOTONIC, &b);
	double took = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
	unsetenv("LM_FAULTS");
	char *t = e2e_slurp(out);
	print_message("demo with a source that cannot boot: rc %d after %.0f ms\n", rc, took);
	if (rc != 1 || !strstr(t, "before serving"))
		fprintf(stderr, "%s\n", t);
	assert_int_equal(rc, 1);
	assert_true(took < 5000);
	/* it exited before serving, or (a slow machine: it listens before
	 * its VM boots) just after lmctl connected */
	assert_true(strstr(t, "the source shim exited (status 1) before serving") ||
		    strstr(t, "source shim exited with status 1"));
	assert_non_null(strstr(t, "boot failed"));      /* the log's own line */
	free(t);
}

static void test_command_lines_help_and_bad_flags(void **state)
{
	struct fx *f = *state;
	char out[300];
	snprintf(out, sizeof(out), "%s/o", f->dir);
	const char *h1[] = { "--help", NULL };
	assert_int_equal(e2e_lmctl(h1, out, 5000), 0);
	const char *cmds[] = { "migrate", "watch", "state", "cancel", "demo" };
	for (int i = 0; i < 5; i++) {
		const char *h[] = { cmds[i], "--help", NULL };
		assert_int_equal(e2e_lmctl(h, out, 5000), 0);
		const char *b[] = { cmds[i], "--no-such-flag", NULL };
		assert_int_equal(e2e_lmctl(b, out, 5000), 2);
	}
	const char *m1[] = { "migrate", "--from", "/x", NULL };
	assert_int_equal(e2e_lmctl(m1, out, 5000), 2);
	const char *m2[] = { "migrate", "--from", "/x", "--to", "/y", "--transport", "carrier-pigeon", NULL };
	assert_int_equal(e2e_lmctl(m2, out, 5000), 2);
	const char *m5[] = { "demo", "--rate", "-5", NULL };    /* no wrap to 2^64-5 MB/s */
	assert_int_equal(e2e_lmctl(m5, out, 5000), 2);
	const char *m3[] = { "frobnicate", NULL };
	assert_int_equal(e2e_lmctl(m3, out, 5000), 2);
	const char *m4[] = { "state", "--shim", "/nonexistent.sock", "--id", "c1", NULL };
	assert_int_equal(e2e_lmctl(m4, out, 5000), 1);
	const char *m6[] = { "state", "--shim", "/nonexistent.sock", NULL };   /* no --id */
	assert_int_equal(e2e_lmctl(m6, out, 5000), 2);

	const char *s1[] = { LM_E2E_LMSHIM, "--help", NULL };
	assert_int_equal(e2e_wait(e2e_spawn(s1, out), 5000), 0);
	const char *s2[] = { LM_E2E_LMSHIM, "serve", "--help", NULL };
	assert_int_equal(e2e_wait(e2e_spawn(s2, out), 5000), 0);
	const char *s3[] = { LM_E2E_LMSHIM, "serve", "--socket", "/tmp/x", "--backend", "xen", NULL };
	assert_int_equal(e2e_wait(e2e_spawn(s3, out), 5000), 2);
	const char *s4[] = { LM_E2E_LMSHIM, "serve", NULL };
	assert_int_equal(e2e_wait(e2e_spawn(s4, out), 5000), 2);
	const char *s5[] = { LM_E2E_LMSHIM, "-namespace", "ns", "-bogus", "1", "start", NULL };
	assert_int_equal(e2e_wait(e2e_spawn(s5, out), 5000), 2);
	const char *s6[] = { LM_E2E_LMSHIM, "-namespace", "ns", "start", NULL }; /* no -id */
	assert_int_equal(e2e_wait(e2e_spawn(s6, out), 5000), 2);
	const char *s7[] = { LM_E2E_LMSHIM, "serve", "--socket", "/tmp/x", "--containers", "nocolon", NULL };
	assert_int_equal(e2e_wait(e2e_spawn(s7, out), 5000), 2);
}

/* The socket containerd computes for a shim: /run/containerd/s/<sha256
 * of ADDRESS/NS/ID>. */
static void shim_socket(const char *addr, const char *ns, const char *id, char *out, size_t cap)
{
	char joined[600];
	int jl = snprintf(joined, sizeof(joined), "%s/%s/%s", addr, ns, id);
	uint8_t d[32];
	SHA256((const unsigned char *)joined, (size_t)jl, d);
	int k = snprintf(out, cap, "/run/containerd/s/");
	for (int i = 0; i < 32; i++)
		k += snprintf(out + k, cap - (size_t)k, "%02x", d[i]);
}

/* containerd's shim protocol: `start` prints unix:///run/containerd/s/
 * <sha256 of ADDRESS/NS/ID>, the daemon answers there; `delete` prints a
 * DeleteResponse. */
static void test_lmshim_start_and_delete_follow_containerd(void **state)
{
	struct fx *f = *state;
	char id[64], addr[300], out[300], sockpath[256], want[300];
	snprintf(id, sizeof(id), "e2e-%d", (int)getpid());
	snprintf(addr, sizeof(addr), "%s/containerd.sock", f->dir);
	snprintf(out, sizeof(out), "%s/start.out", f->dir);
	shim_socket(addr, "e2e", id, sockpath, sizeof sockpath);
	snprintf(want, sizeof(want), "unix://%s", sockpath);

	char cwd[4096];
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(f->dir), 0);
	const char *start[] = { LM_E2E_LMSHIM, "-namespace", "e2e", "-address", addr, "-publish-binary",
				"/bin/true", "-id", id, "start", NULL };
	int rc = e2e_wait(e2e_spawn(start, out), 20000);
	char *addrfile = e2e_slurp("address");
	assert_int_equal(chdir(cwd), 0);
	assert_int_equal(rc, 0);
	char *printed = e2e_slurp(out);
	assert_string_equal(printed, want);
	assert_string_equal(addrfile, want);
	free(printed);
	free(addrfile);

	/* the daemon serves the task and Migration services there */
	struct e2e_shim s = {0};
	snprintf(s.sock, sizeof(s.sock), "%s", sockpath);
	snprintf(s.name, sizeof(s.name), "containerd-shim");
	assert_int_equal(lm_rpc_client_connect(&s.c, sockpath), 0);
	assert_int_equal(e2e_mig_simple(&s, "Cleanup", "x"), 0);
	int n = 0;
	pid_t daemon = e2e_find_daemon(sockpath, &n);
	f->daemon = daemon;
	assert_int_equal(n, 1);
	assert_true(daemon > 1 && daemon != getpid());
	/* a second start finds the running daemon and prints the same address */
	assert_int_equal(chdir(f->dir), 0);
	unlink(out);
	rc = e2e_wait(e2e_spawn(start, out), 20000);
	assert_int_equal(chdir(cwd), 0);
	assert_int_equal(rc, 0);
	printed = e2e_slurp(out);
	assert_string_equal(printed, want);
	free(printed);
	assert_int_equal(e2e_find_daemon(sockpath, &n), daemon);
	assert_int_equal(n, 1);
	lm_rpc_client_close(s.c);
	/* graceful stop of the daemon, then delete */
	assert_int_equal(kill(daemon, SIGTERM), 0);
	for (int i = 0; i < 500 && kill(daemon, 0) == 0; i++)
		usleep(20000);
	assert_int_not_equal(kill(daemon, 0), 0);
	f->daemon = 0;
	const char *del[] = { LM_E2E_LMSHIM, "-namespace", "e2e", "-address", addr, "-id", id, "delete", NULL };
	unlink(out);
	assert_int_equal(e2e_wait(e2e_spawn(del, out), 10000), 0);
	char *bytes = e2e_slurp(out);
	struct stat sb;
	assert_int_equal(stat(out, &sb), 0);
	Containerd__Task__V2__DeleteResponse *dr =
		containerd__task__v2__delete_response__unpack(NULL, (size_t)sb.st_size, (const uint8_t *)bytes);
	assert_non_null(dr);
	assert_int_equal(dr->exit_status, 137);
	assert_non_null(dr->exited_at);
	assert_true(dr->exited_at->seconds > 0);
	containerd__task__v2__delete_response__free_unpacked(dr, NULL);
	free(bytes);
	assert_int_not_equal(access(sockpath, F_OK), 0); /* stale socket removed */
}

/* `lmshim ... start` run in dir with `len` bytes of `in` on its stdin,
 * as containerd runs it; its output in dir/start.out. The exit status. */
static int start_fed(const char *dir, const char *addr, const char *id, bool debug, const void *in,
		     size_t len)
{
	char inp[300], out[300];
	snprintf(inp, sizeof inp, "%s/stdin.bin", dir);
	snprintf(out, sizeof out, "%s/start.out", dir);
	unlink(out);
	FILE *fp = fopen(inp, "w");
	if (!fp || fwrite(in, 1, len, fp) != len) {
		if (fp)
			fclose(fp);
		return -1;
	}
	fclose(fp);
	const char *argv[] = { LM_E2E_LMSHIM, "-namespace", "e2e", "-address", addr, "-id", id,
			       debug ? "-debug" : "-publish-binary", debug ? "start" : "/bin/true",
			       debug ? NULL : "start", NULL };
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		int ifd = open(inp, O_RDONLY);
		int ofd = open(out, O_CREAT | O_WRONLY | O_APPEND, 0600);
		if (ifd < 0 || ofd < 0 || chdir(dir) < 0)
			_exit(126);
		dup2(ifd, 0);
		dup2(ofd, 1);
		dup2(ofd, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return e2e_wait(pid, 20000);
}

/* An Any of type_url around value (protobuf-c packed into buf). */
static size_t pack_any(uint8_t *buf, const char *type_url, const uint8_t *value, size_t len)
{
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	any.type_url = (char *)type_url;
	any.value.data = (uint8_t *)value;
	any.value.len = len;
	return google__protobuf__any__pack(&any, buf);
}

/* containerd writes the runtime options (an Any) on start's stdin: bytes
 * that are not one, another runtime's options, a missing options file and
 * a bad key each fail the start saying which; lmshim's options reach the
 * daemon, and -debug turns its debug log on. */
static void test_lmshim_start_reads_runtime_options(void **state)
{
	struct fx *f = *state;
	char id[64], addr[300], out[300], sockpath[256], logp[300];
	snprintf(id, sizeof(id), "e2e-opt-%d", (int)getpid());
	snprintf(addr, sizeof(addr), "%s/containerd.sock", f->dir);
	snprintf(out, sizeof(out), "%s/start.out", f->dir);
	snprintf(logp, sizeof(logp), "%s/lmshim.log", f->dir);
	shim_socket(addr, "e2e", id, sockpath, sizeof sockpath);
	uint8_t any[1024], opt[512];
	struct { const void *in; size_t len; const char *says; } bad[5];
	bad[0].in = "\xff\xff\xff\xff";
	bad[0].len = 4;
	bad[0].says = "runtime options on stdin: not a protobuf Any";
	size_t runc = pack_any(any, "containerd.runc.v1.Options", (const uint8_t *)"", 0);
	bad[1].in = any;
	bad[1].len = runc;
	bad[1].says = "these are runc's";
	Runtimeoptions__V1__Options o = RUNTIMEOPTIONS__V1__OPTIONS__INIT;
	o.config_path = "/nonexistent/lmshim.json";
	size_t ol = runtimeoptions__v1__options__pack(&o, opt);
	uint8_t any2[1024], any3[1024];
	bad[2].in = any2;
	bad[2].len = pack_any(any2, "runtimeoptions.v1.Options", opt, ol);
	bad[2].says = "options file /nonexistent/lmshim.json: No such file or directory";
	o.config_path = "";
	o.config_body = "{\"vcpus\": 0}";
	ol = runtimeoptions__v1__options__pack(&o, opt);
	bad[3].in = any3;
	bad[3].len = pack_any(any3, "runtimeoptions.v1.Options", opt, ol);
	bad[3].says = "\"vcpus\" wants an integer 1..64";
	uint8_t any4[1024];
	o.config_body = "{\"vmm_stream_on_link\": \"no\"}";
	ol = runtimeoptions__v1__options__pack(&o, opt);
	bad[4].in = any4;
	bad[4].len = pack_any(any4, "runtimeoptions.v1.Options", opt, ol);
	bad[4].says = "\"vmm_stream_on_link\" wants true or false";
	for (int i = 0; i < 5; i++) {
		assert_int_equal(start_fed(f->dir, addr, id, false, bad[i].in, bad[i].len), 1);
		char *said = e2e_slurp(out);
		assert_non_null(said);
		if (!strstr(said, bad[i].says))
			fail_msg("case %d: start said '%s', not '%s'", i, said, bad[i].says);
		free(said);
		assert_int_not_equal(access(sockpath, F_OK), 0);   /* no daemon */
	}
	/* lmshim's options, in config_body, with containerd's -debug */
	o.config_body = "{\"vm_memory_mb\": 300, \"stall_timeout_ms\": 5000, "
			"\"vmm_stream_on_link\": false}";
	ol = runtimeoptions__v1__options__pack(&o, opt);
	size_t al = pack_any(any, "type.googleapis.com/runtimeoptions.v1.Options", opt, ol);
	assert_int_equal(start_fed(f->dir, addr, id, true, any, al), 0);
	int n = 0;
	f->daemon = e2e_find_daemon(sockpath, &n);
	assert_int_equal(n, 1);
	assert_int_equal(kill(f->daemon, SIGTERM), 0);
	for (int i = 0; i < 500 && kill(f->daemon, 0) == 0; i++)
		usleep(20000);
	assert_int_not_equal(kill(f->daemon, 0), 0);
	f->daemon = 0;
	char *log = e2e_slurp(logp);
	assert_non_null(log);
	if (!strstr(log, "msg=\"runtime options\" vm_memory_mb=300 vcpus=1") ||
	    !strstr(log, "vmm_stream_on_link=0 stall_timeout_ms=5000") ||
	    !strstr(log, "level=debug mod=lmshim msg=\"debug logging on\""))
		fail_msg("the daemon's log lacks its options or its debug line:\n%.900s", log);
	free(log);
}

static int task_call(struct e2e_shim *s, const char *method, const ProtobufCMessage *req)
{
	char msg[200];
	int rc = e2e_call(s, "containerd.task.v2.Task", method, req, NULL, NULL, msg, sizeof(msg));
	if (rc)
		fprintf(stderr, "e2e: %s -> %d %s\n", method, rc, msg);
	return rc;
}

/* containerd calls Shutdown after each task's Delete: the shim answers
 * and stays while it has containers (or a session), then exits cleanly. */
static void test_task_shutdown_exits_only_when_nothing_is_left(void **state)
{
	struct fx *f = *state;
	assert_int_equal(e2e_source_start(&f->src, f->dir, "src", 64, 0, NULL), 0);
	Containerd__Task__V2__ShutdownRequest sh = CONTAINERD__TASK__V2__SHUTDOWN_REQUEST__INIT;
	sh.id = "c1";
	assert_int_equal(task_call(&f->src, "Shutdown", &sh.base), 0);
	/* a session holds it too */
	assert_int_equal(e2e_export(&f->src, "sess-shutdown"), 0);
	const char *ids[] = { "c1", "sandbox" };
	for (int i = 0; i < 2; i++) {
		Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
		k.id = (char *)ids[i];
		k.signal = 9;
		/* gated by the session: FailedPrecondition */
		assert_int_equal(task_call(&f->src, "Kill", &k.base), 9);
	}
	assert_int_equal(e2e_mig_simple(&f->src, "Cancel", "sess-shutdown"), 0);
	assert_int_equal(e2e_finalize(&f->src, "sess-shutdown", 2), 0);
	assert_int_equal(e2e_mig_simple(&f->src, "Cleanup", "sess-shutdown"), 0);
	for (int i = 0; i < 2; i++) {
		Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
		k.id = (char *)ids[i];
		k.signal = 9;
		assert_int_equal(task_call(&f->src, "Kill", &k.base), 0);
		uint32_t pid;
		int st = 0;
		for (int t = 0; t < 100 && st != 3; t++) {
			assert_int_equal(e2e_state(&f->src, ids[i], &pid, &st), 0);
			if (st != 3)
				usleep(10000);
		}
		assert_int_equal(st, 3);
		Containerd__Task__V2__DeleteRequest d = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
		d.id = (char *)ids[i];
		assert_int_equal(task_call(&f->src, "Delete", &d.base), 0);
		assert_int_equal(task_call(&f->src, "Shutdown", &sh.base), 0);
		if (i == 0) {
			usleep(100000);
			assert_int_equal(kill(f->src.pid, 0), 0);   /* still serving "sandbox" */
		}
	}
	/* nothing left: the shim stops by itself, cleanly */
	lm_rpc_client_close(f->src.c);
	f->src.c = NULL;
	int rc = e2e_wait(f->src.pid, 10000);
	if (rc != 0)
		e2e_shim_dump(&f->src);
	assert_int_equal(rc, 0);
	f->src.pid = 0;
	char *log = e2e_slurp(f->src.log);
	assert_non_null(strstr(log, "msg=shutdown"));
	assert_non_null(strstr(log, "msg=stopped"));
	free(log);
}

/* A field of a decoded event by name (0 / NULL when the message has none). */
static const void *event_field(const ProtobufCMessage *m, const char *name)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
	return f ? (const char *)m + f->offset : NULL;
}

/* The first event on `topic` for container `id`: its pid and exit status
 * (0 where the event has none) and its index in the sink. */
static const struct sink_event *find_event(struct sink *sk, const char *topic, const char *id,
					    uint32_t *pid, uint32_t *status, int *index)
{
	static const struct {
		const char *topic;
		const ProtobufCMessageDescriptor *d;
	} kinds[] = {
		{ "/tasks/create", &containerd__events__task_create__descriptor },
		{ "/tasks/start", &containerd__events__task_start__descriptor },
		{ "/tasks/exit", &containerd__events__task_exit__descriptor },
		{ "/tasks/delete", &containerd__events__task_delete__descriptor },
	};
	const ProtobufCMessageDescriptor *d = NULL;
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
		if (!strcmp(kinds[k].topic, topic))
			d = kinds[k].d;
	assert_non_null(d);
	for (unsigned i = 0; i < sk->n; i++) {
		const struct sink_event *x = &sk->ev[i];
		if (strcmp(x->topic, topic))
			continue;
		ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, x->len, x->value);
		assert_non_null(m);
		const char *const *cid = event_field(m, "container_id");
		const uint32_t *p = event_field(m, "pid"), *st = event_field(m, "exit_status");
		Google__Protobuf__Timestamp *const *at = event_field(m, "exited_at");
		if (at) {   /* exit and delete carry the time of the exit */
			assert_non_null(*at);
			assert_true((*at)->seconds > 1600000000);
		}
		bool match = !strcmp(*cid, id);
		if (match) {
			*pid = p ? *p : 0;
			*status = st ? *st : 0;
			*index = (int)i;
		}
		protobuf_c_message_free_unpacked(m, NULL);
		if (match)
			return x;
	}
	return NULL;
}

/* containerd learns of task changes only through the events a shim
 * forwards to its ttrpc socket (TTRPC_ADDRESS, here --events-address), and
 * only of the tasks it created: the boot containers and a Create of
 * another client (lmctl's, which says so in its metadata) say nothing. */
static void test_task_events_reach_containerds_events_service(void **state)
{
	struct fx *f = *state;
	char path[300];
	snprintf(path, sizeof(path), "%s/containerd.sock.ttrpc", f->dir);
	static struct sink sk;   /* static: outlives a failed test's frame */
	assert_int_equal(sink_start(&sk, path), 0);
	const char *args[] = { "--vm-size-mb", "64", "--workload-rate", "0", "--namespace", "k8s.io",
			       "--containers", "pod1:sandbox,pod1:c1", "--events-address", path, NULL };
	assert_int_equal(e2e_shim_start(&f->src, f->dir, "src", NULL, NULL, args), 0);
	/* containerd's task c2, and c3 created by another client (lmctl) */
	static const char *const lmctl_md[] = { "lmshim-client", "lmctl" };
	Containerd__Task__V2__CreateTaskRequest cr = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
	cr.bundle = f->dir;
	cr.id = "c2";
	assert_int_equal(task_call(&f->src, "Create", &cr.base), 0);
	f->src.md = lmctl_md;
	f->src.n_md = 1;
	cr.id = "c3";
	assert_int_equal(task_call(&f->src, "Create", &cr.base), 0);
	f->src.md = NULL;
	f->src.n_md = 0;
	Containerd__Task__V2__StartRequest sr = CONTAINERD__TASK__V2__START_REQUEST__INIT;
	Containerd__Task__V2__KillRequest k = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
	Containerd__Task__V2__DeleteRequest d = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
	k.signal = 9;
	const char *ids[] = { "c3", "c1", "c2" };
	for (int i = 0; i < 3; i++) {
		sr.id = k.id = d.id = (char *)ids[i];
		if (i != 1)   /* (c1 runs since the boot) */
			assert_int_equal(task_call(&f->src, "Start", &sr.base), 0);
		assert_int_equal(task_call(&f->src, "Kill", &k.base), 0);
		assert_int_equal(task_call(&f->src, "Delete", &d.base), 0);
	}
	assert_int_equal(sink_wait(&sk, 4, 10000), 4);
	assert_int_equal(sink_wait(&sk, 5, 500), 4);      /* and nothing more */
	uint32_t pid_c2 = 0, pid, st;
	int ic, is, ix, id;
	assert_non_null(find_event(&sk, "/tasks/create", "c2", &pid_c2, &st, &ic));
	assert_true(pid_c2 > 0);
	assert_non_null(find_event(&sk, "/tasks/start", "c2", &pid, &st, &is));
	assert_int_equal(pid, pid_c2);
	assert_non_null(find_event(&sk, "/tasks/exit", "c2", &pid, &st, &ix));
	assert_int_equal(pid, pid_c2);
	assert_int_equal(st, 137);
	assert_string_equal(sk.ev[ix].type_url, "containerd.events.TaskExit");
	assert_non_null(find_event(&sk, "/tasks/delete", "c2", &pid, &st, &id));
	assert_int_equal(pid, pid_c2);
	assert_int_equal(st, 137);
	assert_true(ic < is && is < ix && ix < id);
	assert_string_equal(sk.ev[ic].type_url, "containerd.events.TaskCreate");
	for (unsigned i = 0; i < sk.n; i++)
		assert_string_equal(sk.ev[i].ns, "k8s.io");
	int rc = e2e_shim_stop(&f->src);
	assert_int_equal(rc, 0);
	sink_free(&sk);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_migrate_moves_sandbox_to_destination_process, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_over_tcp_loopback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_strangers_on_the_listener_do_not_stop_the_source, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_a_flipped_bit_is_caught_without_asking, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_over_mutual_tls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tls_refusals_leave_the_source_running, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_bit_flipped_in_the_tls_stream_is_dataloss, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_bit_flipped_in_the_rings_is_dataloss, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_with_duplicated_socket_pair, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_with_compression_and_pass_limits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_back_and_forth_migrations_leave_nothing_behind, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmctl_refuses_a_work_dir_that_is_not_private, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmctl_state_prints_task_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_task_shutdown_exits_only_when_nothing_is_left, setup, teardown),
		cmocka_unit_test_setup_teardown(test_task_events_reach_containerds_events_service, setup, teardown),
		cmocka_unit_test_setup_teardown(test_calls_in_wrong_state_answer_contract_codes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_empty_and_wrong_session_ids_are_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_second_socket_is_already_exists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_transfer_before_socket_times_out_with_deadline_exceeded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmctl_error_names_call_side_and_cause_and_rolls_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_transfer_failure_rolls_back_then_retry_succeeds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_with_explicit_container_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destination_resume_failure_resumes_source, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmctl_demo_verifies_the_migration, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmctl_demo_on_kvm_verifies_the_migration, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmctl_demo_fails_fast_when_a_shim_cannot_start, setup, teardown),
		cmocka_unit_test_setup_teardown(test_command_lines_help_and_bad_flags, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmshim_start_and_delete_follow_containerd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmshim_start_reads_runtime_options, setup, teardown),
	};
	/* LM_TEST_FILTER=test_strangers* runs the matching tests only (local use) */
	if (getenv("LM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LM_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
