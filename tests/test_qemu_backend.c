/*
 * test_qemu_backend.c: the "qemu" backend through the hcs seam only
 * (hcs/qemu/backend.c behind lm_backend_ops_t), with real QEMU processes
 * under TCG.
 *
 * The guest is the one of test_qemu.c: the build's kernel with the
 * busybox initramfs of tests/qemu/mkinitramfs.sh (opens the agent port,
 * counts "lmtick N" on the console every 100 ms; lm_dirty=MIB[:MBPS]
 * starts a memory writer). The console is read through the one accessor
 * the backend adds (hcs/qemu/backend.h). A migration here is what the
 * transfer engine does with a VMM's stream, minus its records: the source's
 * stream_open fd is copied by a relay thread into the destination's
 * stream_open fd while both sides' stream_status are polled.
 *
 * Every case but the registry's skips, saying why, when
 * qemu-system-x86_64 or the kernel is missing; the last checks that no
 * QEMU process this test started is left. Figures are printed with a
 * "# qemu-backend:" prefix.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hcs/backend.h"
#include "hcs/qemu/backend.h"
#include "hcs/qemu/migrate.h"
#include "hcs/qemu/vm.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define BOOT_MS 30000           /* the document's BootTimeoutMs */
#define OP_MS 5000
#define MIGRATE_MS 60000        /* both sides completed, at most */
#define MEM_MIB 128

static char skip_why[512];
static char dir[64];
static char initrd[128], kernel[400];
static const lm_backend_ops_t *ops;

static double ms_since(uint64_t t0)
{
	return (lm_now_ns() - t0) / 1e6;
}

#define NEED_QEMU()                                         \
	do {                                                \
		if (skip_why[0]) {                          \
			print_message("skipped: %s\n", skip_why); \
			skip();                             \
		}                                           \
	} while (0)

/* ---- VMs of the running case (destroyed by its teardown if it failed) -- */

static lm_vm_t *live[8];

static lm_vm_t *track(lm_vm_t *vm)
{
	for (int i = 0; i < 8; i++)
		if (!live[i]) {
			live[i] = vm;
			break;
		}
	return vm;
}

static void vm_destroy(lm_vm_t *vm)
{
	for (int i = 0; i < 8; i++)
		if (live[i] == vm)
			live[i] = NULL;
	ops->destroy(vm);
}

static int case_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 8; i++)
		if (live[i]) {
			ops->destroy(live[i]);
			live[i] = NULL;
		}
	return 0;
}

/* ---- the document and the VM ------------------------------------------ */

/* A compute-system document with our guest: {"VirtualMachine": {"Qemu":
 * {...}}}; `extra` (may be NULL) is merged into the Qemu object. Returns
 * a malloc'd string. */
static char *make_doc(const char *cmdline, json_t *extra)
{
	json_t *q = json_pack("{s:s, s:s, s:s, s:s, s:i}", "Initrd", initrd, "Machine", "microvm",
			      "Accel", "tcg", "Cmdline", cmdline ? cmdline : "",
			      "BootTimeoutMs", BOOT_MS);
	/* the kernel is the backend's default (the build's guest kernel),
	 * which is also the one the initramfs's modules belong to */
	if (extra) {
		json_object_update(q, extra);
		json_decref(extra);
	}
	json_t *d = json_pack("{s:s, s:{s:s, s:o}}", "Id", "doc", "VirtualMachine", "Backend",
			      "qemu", "Qemu", q);
	char *s = json_dumps(d, JSON_COMPACT);
	json_decref(d);
	return s;
}

static void cfg_init(lm_vm_config_t *c, const char *id, bool incoming, const char *doc)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->id, sizeof(c->id), "%s", id);
	snprintf(c->backend, sizeof(c->backend), "qemu");
	c->memory_bytes = (uint64_t)MEM_MIB << 20;
	c->vcpus = 1;
	c->incoming = incoming;
	c->document_json = doc;
}

static lm_vm_t *make_vm(const char *id, bool incoming, const char *cmdline)
{
	char *doc = make_doc(cmdline, NULL);
	lm_vm_config_t c;
	cfg_init(&c, id, incoming, doc);
	lm_vm_t *vm = NULL;
	int rc = ops->create(&vm, &c);
	free(doc);
	if (rc)
		fail_msg("create %s: %d", id, rc);
	return track(vm);
}

/* A booted guest (start through the seam), its boot time in *ms. */
static lm_vm_t *boot_vm(const char *id, const char *cmdline, double *ms)
{
	lm_vm_t *vm = make_vm(id, false, cmdline);
	uint64_t t0 = lm_now_ns();
	int rc = ops->start(vm);
	if (rc)
		fail_msg("start %s: %d", id, rc);
	if (ms)
		*ms = ms_since(t0);
	return vm;
}

static bool qemu_running(lm_vm_t *vm)
{
	lm_guest_stats_t st;
	assert_int_equal(ops->stats(vm, &st), 0);
	return st.running;
}

static enum lm_qemu_runstate runstate(lm_vm_t *vm)
{
	lm_qemu_status_t st;
	assert_int_equal(lm_qemu_vm_status(lm_hcs_qemu_vm(vm), &st, OP_MS), 0);
	return st.state;
}

/* QEMU's migration parameter `name` (an integer) and capability `cap`. */
static long long mig_param(lm_vm_t *vm, const char *name)
{
	json_t *r = NULL;
	assert_int_equal(lm_qmp_exec(lm_qemu_vm_qmp(lm_hcs_qemu_vm(vm)),
				     "query-migrate-parameters", NULL, -1, OP_MS, &r, NULL, 0), 0);
	json_t *v = json_object_get(r, name);
	long long x = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
	json_decref(r);
	return x;
}

static bool mig_cap(lm_vm_t *vm, const char *cap)
{
	json_t *r = NULL;
	assert_int_equal(lm_qmp_exec(lm_qemu_vm_qmp(lm_hcs_qemu_vm(vm)),
				     "query-migrate-capabilities", NULL, -1, OP_MS, &r, NULL, 0), 0);
	bool on = false;
	size_t i;
	json_t *c;
	json_array_foreach(r, i, c) {
		const char *n = json_string_value(json_object_get(c, "capability"));
		if (n && !strcmp(n, cap))
			on = json_is_true(json_object_get(c, "state"));
	}
	json_decref(r);
	return on;
}

/* ---- the guest's console (as test_qemu.c reads it) -------------------- */

/* The number of the last (or first) complete "lmtick N" line on the
 * console, 0 if none. */
static long tick(lm_vm_t *vm, bool first)
{
	static char buf[65536];
	size_t n = lm_qemu_vm_console(lm_hcs_qemu_vm(vm), buf, sizeof(buf), NULL);
	long found = 0;
	for (size_t i = 0; i < n;) {
		char *nl = memchr(buf + i, '\n', n - i);
		if (!nl)
			break;
		size_t start = i;
		while (start < (size_t)(nl - buf) && buf[start] == '\r')
			start++;
		if (!strncmp(buf + start, "lmtick ", 7)) {
			long v = strtol(buf + start + 7, NULL, 10);
			if (v > 0) {
				found = v;
				if (first)
					return found;
			}
		}
		i = (size_t)(nl - buf) + 1;
	}
	return found;
}

static bool wait_tick(lm_vm_t *vm, long at_least, unsigned ms)
{
	uint64_t end = lm_now_ns() + (uint64_t)ms * 1000000u;
	while (lm_now_ns() < end) {
		if (tick(vm, false) >= at_least)
			return true;
		usleep(20000);
	}
	char con[2000];
	uint64_t total;
	lm_qemu_vm_console(lm_hcs_qemu_vm(vm), con, sizeof(con), &total);
	print_message("no lmtick %ld within %u ms; console (%llu bytes) ends with:\n%s\n",
		      at_least, ms, (unsigned long long)total, con);
	return false;
}

/* QEMU processes that are our children (alive or zombie). */
static int qemu_children(void)
{
	DIR *d = opendir("/proc");
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		char p[300], b[512];
		snprintf(p, sizeof(p), "/proc/%s/stat", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		size_t len = fread(b, 1, sizeof(b) - 1, f);
		fclose(f);
		b[len] = 0;
		char *rp = strrchr(b, ')');
		if (!rp || !strstr(b, "qemu"))
			continue;
		char st;
		int ppid;
		if (sscanf(rp + 1, " %c %d", &st, &ppid) == 2 && ppid == getpid())
			n++;
	}
	if (d)
		closedir(d);
	return n;
}

/* The private directories of the backend's VMs (ours: TMPDIR is the
 * suite's directory). */
static size_t private_dirs(void)
{
	glob_t g;
	char pat[128];
	snprintf(pat, sizeof(pat), "%s/lmqemu-vm-*", dir);
	size_t n = glob(pat, GLOB_NOSORT, NULL, &g) == 0 ? g.gl_pathc : 0;
	globfree(&g);
	return n;
}

/* ---- the relay: what the engine's records carry ----------------------- */

struct relay {
	int from, to;
	pthread_t th;
	atomic_bool stop;
	uint64_t bytes;         /* bytes and err: read after the join */
	int err;                /* 0, or the errno that ended it */
	atomic_bool eof;        /* the source's QEMU closed its end (polled
				   while the relay runs) */
};

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	static char buf[1 << 16];
	while (!atomic_load(&r->stop)) {
		struct pollfd p = {.fd = r->from, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = read(r->from, buf, sizeof(buf));
		if (n == 0) {
			atomic_store(&r->eof, true);
			break;
		}
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			r->err = errno;
			break;
		}
		for (ssize_t off = 0; off < n && !atomic_load(&r->stop);) {
			struct pollfd w = {.fd = r->to, .events = POLLOUT};
			if (poll(&w, 1, 100) <= 0)
				continue;
			ssize_t k = send(r->to, buf + off, (size_t)(n - off),
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (k < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (k < 0) {
				r->err = errno;
				return NULL;
			}
			off += k;
			r->bytes += (uint64_t)k;
		}
	}
	return NULL;
}

static void relay_start(struct relay *r, int from, int to)
{
	memset(r, 0, sizeof(*r));
	r->from = from;
	r->to = to;
	assert_int_equal(pthread_create(&r->th, NULL, relay_main, r), 0);
}

static void relay_join(struct relay *r)
{
	atomic_store(&r->stop, true);
	pthread_join(r->th, NULL);
}

/* Asks both sides' stream_status every 20 ms, and at once when the
 * source's event fd fires (as the engine does), until both completed (or
 * one failed, or the deadline); *src_st / *dst_st get the last. Reports
 * whether the source's blackout was seen before its completion, and the
 * longest the source's stream_status took. The source's first completed
 * answer carries QEMU's figures (asked right on its event, before QEMU
 * has computed them, the backend asks again). */
static void wait_both_completed(lm_vm_t *src, lm_vm_t *dst, lm_vmm_stream_status_t *src_st,
				lm_vmm_stream_status_t *dst_st, bool *blackout_before_done,
				double *max_status_ms)
{
	uint64_t end = lm_now_ns() + (uint64_t)MIGRATE_MS * 1000000u;
	bool src_done = false;
	assert_non_null(ops->stream_event_fd);
	assert_true(ops->stream_event_fd(src) >= 0);
	*blackout_before_done = false;
	*max_status_ms = 0;
	for (;;) {
		uint64_t t0 = lm_now_ns();
		assert_int_equal(ops->stream_status(src, src_st), 0);
		if (ms_since(t0) > *max_status_ms)
			*max_status_ms = ms_since(t0);
		assert_int_equal(ops->stream_status(dst, dst_st), 0);
		if (src_st->blackout && src_st->state == LM_VS_ACTIVE)
			*blackout_before_done = true;
		if (src_st->state == LM_VS_FAILED || src_st->state == LM_VS_CANCELLED ||
		    dst_st->state == LM_VS_FAILED || dst_st->state == LM_VS_CANCELLED)
			fail_msg("migration ended: source %d (%s), destination %d (%s)",
				 src_st->state, src_st->error, dst_st->state, dst_st->error);
		if (src_st->state == LM_VS_COMPLETED && !src_done) {
			src_done = true;
			assert_true(src_st->total_ms > 0);
		}
		if (src_st->state == LM_VS_COMPLETED && dst_st->state == LM_VS_COMPLETED)
			return;
		if (lm_now_ns() > end)
			fail_msg("not completed in %d ms: source %d, destination %d", MIGRATE_MS,
				 src_st->state, dst_st->state);
		struct pollfd q = { ops->stream_event_fd(src), POLLIN, 0 };
		if (poll(&q, 1, 20) > 0) {
			uint64_t v;
			assert_int_equal(read(q.fd, &v, sizeof(v)), (ssize_t)sizeof(v));
		}
	}
}

/* ---- cases ------------------------------------------------------------ */

static void test_registry_finds_the_qemu_backend(void **state)
{
	(void)state;
	const lm_backend_ops_t *b = lm_backend_find("qemu");
	assert_non_null(b);
	assert_ptr_equal(b, &lm_hcs_qemu_ops);
	assert_string_equal(b->name, "qemu");
	/* the VMM's stream, not the engine's pages */
	assert_non_null(b->stream_open);
	assert_non_null(b->stream_status);
	assert_non_null(b->stream_abort);
	assert_non_null(lm_backend_find("sim"));
	assert_null(lm_backend_find("qemu2"));
}

static void test_start_boots_and_pause_resume_stop_and_run_the_guest(void **state)
{
	(void)state;
	NEED_QEMU();
	double boot_ms;
	lm_vm_t *vm = boot_vm("boot", NULL, &boot_ms);
	print_message("# qemu-backend: create+start to agent port %.0f ms (TCG, microvm, %d MiB)\n",
		      boot_ms, MEM_MIB);
	lm_qemu_vm_info_t info;
	assert_int_equal(lm_qemu_vm_info(lm_hcs_qemu_vm(vm), &info, OP_MS), 0);
	assert_true(info.agent_open);                       /* booted = the agent port */
	assert_int_equal(info.memory_bytes, (uint64_t)MEM_MIB << 20);
	assert_int_equal(info.accel, LM_QEMU_ACCEL_TCG);
	const char *agent = lm_hcs_qemu_agent_socket(vm);
	struct stat sb;
	assert_int_equal(stat(agent, &sb), 0);
	assert_true(S_ISSOCK(sb.st_mode));
	char pdir[128];
	snprintf(pdir, sizeof(pdir), "%s", agent);
	*strrchr(pdir, '/') = 0;
	assert_int_equal(stat(pdir, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0700);          /* private */
	assert_int_equal(strncmp(pdir, dir, strlen(dir)), 0); /* in $TMPDIR */
	assert_int_equal(private_dirs(), 1);
	assert_true(qemu_running(vm));
	assert_int_equal(runstate(vm), LM_QEMU_RS_RUNNING);
	assert_true(wait_tick(vm, 3, 10000));
	assert_int_equal(ops->start(vm), 0);                /* idempotent */

	/* pause stops the guest */
	assert_int_equal(ops->pause(vm), 0);
	assert_int_equal(runstate(vm), LM_QEMU_RS_PAUSED);
	assert_false(qemu_running(vm));
	long t1 = tick(vm, false);
	usleep(500000);
	assert_int_equal(tick(vm, false), t1);
	assert_int_equal(ops->pause(vm), 0);                /* idempotent */
	assert_int_equal(runstate(vm), LM_QEMU_RS_PAUSED);
	/* resume runs it */
	assert_int_equal(ops->resume(vm), 0);
	assert_int_equal(ops->resume(vm), 0);
	assert_true(qemu_running(vm));
	assert_true(wait_tick(vm, t1 + 3, 10000));

	/* what the engine cannot have from QEMU */
	const lm_mem_region_t *reg;
	uint64_t bm[1];
	char blob[64];
	assert_int_equal(ops->regions(vm, &reg), -ENOTSUP);
	assert_int_equal(ops->dirty_log_start(vm), -ENOTSUP);
	assert_int_equal(ops->dirty_log_fetch(vm, 0, bm, 1), -ENOTSUP);
	assert_int_equal(ops->dirty_log_stop(vm), -ENOTSUP);
	assert_int_equal(ops->set_throttle(vm, 10), -ENOTSUP);
	assert_int_equal(ops->state_save(vm, blob, sizeof(blob)), -ENOTSUP);
	assert_int_equal(ops->state_load(vm, blob, sizeof(blob)), -ENOTSUP);
	/* no stream yet */
	lm_vmm_stream_status_t vs;
	assert_int_equal(ops->stream_status(vm, &vs), 0);
	assert_int_equal(vs.state, LM_VS_IDLE);
	assert_int_equal(ops->stream_abort(vm), 0);

	char c[256];
	int n = ops->compat_get(vm, c, sizeof(c));
	assert_true(n > 0);
	c[n] = 0;
	print_message("# qemu-backend: compat \"%s\"\n", c);
	/* the shape, then the disks: the build's busybox image, by digest */
	const char *shape = "qemu machine=microvm vcpus=1 memory=134217728 cpu=default disks=1:";
	assert_int_equal(strncmp(c, shape, strlen(shape)), 0);
	assert_int_equal(strlen(c), strlen(shape) + 16);
	assert_int_equal(ops->compat_get(vm, c, 4), -ENOSPC);

	/* terminate: QEMU is gone for good */
	assert_int_equal(ops->terminate(vm), 0);
	lm_qemu_exit_t ex;
	assert_int_equal(lm_qemu_vm_wait_exit(lm_hcs_qemu_vm(vm), 0, &ex), 0);
	assert_true(ex.exited);
	assert_false(qemu_running(vm));
	assert_int_equal(ops->terminate(vm), 0);
	assert_int_equal(ops->start(vm), -ESRCH);
	assert_int_equal(ops->resume(vm), -ESRCH);
	vm_destroy(vm);
	assert_int_equal(access(pdir, F_OK), -1);           /* removed at destroy */
	assert_int_equal(private_dirs(), 0);
	assert_int_equal(qemu_children(), 0);
}

/* Creates with `doc` (and the seam's cfg tweaked by mem/vcpus when not 0)
 * and expects `want`; the log must name `field`. */
static void expect_refused(const char *doc, uint64_t mem, unsigned vcpus, int want,
			   const char *field)
{
	int lf = memfd_create("log", 0);
	assert_true(lf >= 0);
	lm_log_set_fd(lf);
	lm_vm_config_t c;
	cfg_init(&c, "bad", false, doc);
	if (mem)
		c.memory_bytes = mem;
	if (vcpus)
		c.vcpus = vcpus == ~0u ? 0 : vcpus;
	lm_vm_t *vm = (lm_vm_t *)1;
	int rc = ops->create(&vm, &c);
	lm_log_set_fd(2);
	char log[4096];
	ssize_t n = pread(lf, log, sizeof(log) - 1, 0);
	close(lf);
	log[n > 0 ? n : 0] = 0;
	if (rc != want || !strstr(log, field))
		fail_msg("create: rc %d (want %d); log (want %s): %s", rc, want, field, log);
	assert_null(vm);
	print_message("# qemu-backend: refused (%d): %s", rc, log);
}

static char *doc_with(const char *key, json_t *v)
{
	json_t *x = json_object();
	json_object_set_new(x, key, v);
	return make_doc(NULL, x);
}

static void test_bad_document_field_is_einval_and_names_it(void **state)
{
	(void)state;
	NEED_QEMU();
	size_t dirs = private_dirs();
	struct { const char *key; json_t *v; } bad[] = {
		{"Machine", json_string("pc")},
		{"Accel", json_string("hvf")},
		{"BootTimeoutMs", json_string("soon")},
		{"BootTimeoutMs", json_integer(0)},
		{"Kernel", json_integer(42)},
		{"Kernel", json_string("")},
		{"Initrd", json_true()},
		{"Cmdline", json_string("a\nb")},
		{"Kernal", json_string("/boot/vmlinuz")},   /* misspelt: not ignored */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *d = doc_with(bad[i].key, bad[i].v);
		char field[64];
		snprintf(field, sizeof(field), "VirtualMachine.Qemu.%s", bad[i].key);
		expect_refused(d, 0, 0, -EINVAL, field);
		free(d);
	}
	expect_refused("{\"VirtualMachine\": {\"Qemu\": 7}}", 0, 0, -EINVAL,
		       "VirtualMachine.Qemu");
	expect_refused("not json", 0, 0, -EINVAL, "not JSON");
	char *d = make_doc(NULL, NULL);
	expect_refused(d, (MEM_MIB << 20) + 4096, 0, -EINVAL, "memory_bytes");
	expect_refused(d, 0, ~0u, -EINVAL, "vcpus");
	free(d);
	/* a kernel that is not there: QEMU is never started, nothing is left */
	d = doc_with("Kernel", json_string("/nonexistent/vmlinuz"));
	expect_refused(d, 0, 0, -ENOENT, "/nonexistent/vmlinuz");
	free(d);
	assert_int_equal(private_dirs(), dirs);
	assert_int_equal(qemu_children(), 0);
}

/* A layer folder in dir: busybox and a file /marker holding `marker`. */
static void make_layer(const char *name, const char *marker, char *out, size_t cap)
{
	char cmd[1200];
	snprintf(out, cap, "%s/%s", dir, name);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s/bin' && cp /bin/busybox '%s/bin/' && "
		 "printf '%%s' '%s' > '%s/marker'", out, out, out, marker, out);
	assert_int_equal(system(cmd), 0);
}

/* A created (not started) VM whose Disks are `layers` (n of them, serials
 * d0, d1, ...); its compat text in `compat`. */
static lm_vm_t *vm_with_layers(const char *id, bool incoming, const char *const *layers, unsigned n,
			       char *compat, size_t cap)
{
	json_t *a = json_array();
	for (unsigned i = 0; i < n; i++) {
		char serial[8];
		snprintf(serial, sizeof(serial), "d%u", i);
		json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:i}", "Serial", serial, "Path",
						   layers[i], "Container", "c", "Layer", (int)i));
	}
	json_t *x = json_object();
	json_object_set_new(x, "Disks", a);
	char *doc = make_doc(NULL, x);
	lm_vm_config_t c;
	cfg_init(&c, id, incoming, doc);
	char why[200] = "";
	c.why = why;
	c.why_cap = sizeof(why);
	lm_vm_t *vm = NULL;
	int rc = ops->create(&vm, &c);
	free(doc);
	if (rc)
		fail_msg("create %s: %d %s", id, rc, why);
	int k = ops->compat_get(vm, compat, cap - 1);
	assert_true(k > 0);
	compat[k] = 0;
	return track(vm);
}

/* Each container layer becomes a read-only disk: a folder is packed into
 * an erofs image (the same tree gives the same bytes), whose digest is in
 * the compatibility data, so that a destination whose layer differs from
 * the source's refuses it, and says so; bad Disks entries are refused by
 * name, and a layer that cannot be packed fails create with the reason. */
static void test_container_layers_are_disks_checked_across_hosts(void **state)
{
	(void)state;
	NEED_QEMU();
	if (access("/usr/bin/mkfs.erofs", X_OK) != 0)
		skip();
	char a[200], a2[200], b[200], top[200];
	make_layer("la", "one", a, sizeof(a));
	make_layer("la2", "one", a2, sizeof(a2));     /* another copy of the same tree */
	make_layer("lb", "two", b, sizeof(b));
	make_layer("ltop", "top", top, sizeof(top));
	char cs[320], cd[320], cx[320], why[200];
	const char *src_layers[] = {a, top}, *same[] = {a2, top}, *other[] = {b, top};
	lm_vm_t *src = vm_with_layers("lsrc", false, src_layers, 2, cs, sizeof(cs));
	assert_non_null(strstr(cs, " disks=3:"));          /* rootfs + 2 layers */
	lm_vm_t *dst = vm_with_layers("ldst", true, same, 2, cd, sizeof(cd));
	assert_string_equal(cs, cd);
	assert_int_equal(ops->compat_check_why(dst, cs, strlen(cs), why, sizeof(why)), 0);
	lm_vm_t *bad = vm_with_layers("lbad", true, other, 2, cx, sizeof(cx));
	assert_string_not_equal(cs, cx);
	assert_int_equal(ops->compat_check_why(bad, cs, strlen(cs), why, sizeof(why)),
			 -EPROTONOSUPPORT);
	print_message("# qemu-backend: other layer refused: %s\n", why);
	assert_non_null(strstr(why, "disk images differ"));
	/* an image file is taken as it is: the same digest as the folder's */
	char img[300], ci[320];
	snprintf(img, sizeof(img), "%s/la.erofs", dir);
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "mkfs.erofs --quiet -T0 -U6c6d7368-696d-4c61-7965-720000000000 "
		 "'%s' '%s'", img, a);
	assert_int_equal(system(cmd), 0);
	const char *as_image[] = {img, top};
	lm_vm_t *fromimg = vm_with_layers("limg", true, as_image, 2, ci, sizeof(ci));
	assert_string_equal(cs, ci);
	vm_destroy(src);
	vm_destroy(dst);
	vm_destroy(bad);
	vm_destroy(fromimg);

	/* bad entries, by name */
	struct { json_t *disk; const char *field; } bads[] = {
		{json_pack("{s:s, s:s}", "Serial", "d0", "Path", "relative/x"), "Disks[0].Path"},
		{json_pack("{s:s, s:s}", "Serial", "rootfs", "Path", a), "Disks[0].Serial"},
		{json_pack("{s:s, s:s}", "Serial", "this-serial-is-too-long", "Path", a),
		 "Disks[0].Serial"},
		{json_pack("{s:s}", "Serial", "d0"), "Disks[0]"},
		{json_pack("{s:s, s:s, s:i}", "Serial", "d0", "Path", a, "Size", 3), "Disks[0].Size"},
	};
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		json_t *arr = json_array();
		json_array_append_new(arr, bads[i].disk);
		char *d = doc_with("Disks", arr);
		char field[80];
		snprintf(field, sizeof(field), "VirtualMachine.Qemu.%s", bads[i].field);
		expect_refused(d, 0, 0, -EINVAL, field);
		free(d);
	}
	json_t *two = json_pack("[{s:s, s:s}, {s:s, s:s}]", "Serial", "d0", "Path", a, "Serial", "d0",
				"Path", b);
	char *d = doc_with("Disks", two);
	expect_refused(d, 0, 0, -EINVAL, "Serial used twice");
	free(d);
	/* a layer that is not there: create fails, saying which and why */
	json_t *gone = json_pack("[{s:s, s:s}]", "Serial", "d0", "Path", "/nonexistent/layer");
	d = doc_with("Disks", gone);
	lm_vm_config_t c;
	cfg_init(&c, "lgone", false, d);
	char w[200] = "";
	c.why = w;
	c.why_cap = sizeof(w);
	lm_vm_t *vm = NULL;
	assert_int_equal(ops->create(&vm, &c), -ENOENT);
	free(d);
	assert_null(vm);
	print_message("# qemu-backend: missing layer: %s\n", w);
	assert_non_null(strstr(w, "/nonexistent/layer"));
	assert_non_null(strstr(w, "disk d0"));
	assert_int_equal(qemu_children(), 0);
}

/* A running q35 VM takes a container layer in a given slot and gives it
 * back: the compat data names it while it is attached (a destination is
 * launched with it in that slot) and not after, the slot can be taken
 * again, and what cannot be done is refused with the reason. The
 * document's Slot places a disk; a bad or repeated one is refused. */
static void test_a_layer_is_hot_plugged_in_its_slot_and_removed(void **state)
{
	(void)state;
	NEED_QEMU();
	if (access("/usr/bin/mkfs.erofs", X_OK) != 0)
		skip();
	char a[200], b[200], c1[320], c2[320], c3[320], why[300];
	make_layer("hpa", "one", a, sizeof(a));
	make_layer("hpb", "two", b, sizeof(b));
	json_t *x = json_pack("{s:s, s:[{s:s, s:s, s:i}]}", "Machine", "q35", "Disks", "Serial", "c0.l0",
			      "Path", a, "Slot", 5);
	char *doc = make_doc(NULL, x);
	lm_vm_config_t c;
	cfg_init(&c, "hplug", false, doc);
	lm_vm_t *vm = NULL;
	assert_int_equal(ops->create(&vm, &c), 0);
	free(doc);
	track(vm);
	assert_int_equal(ops->start(vm), 0);
	int k = ops->compat_get(vm, c1, sizeof(c1) - 1);
	c1[k] = 0;
	assert_non_null(strstr(c1, " disks=2:"));          /* rootfs + c0.l0 */

	/* slot 5 is c0.l0's; slot 0 is nobody's to take; the same serial twice */
	assert_int_equal(ops->disk_add(vm, "d0", b, 5, why, sizeof(why)), -EEXIST);
	assert_non_null(strstr(why, "slot 5"));
	assert_int_equal(ops->disk_add(vm, "d0", b, 0, why, sizeof(why)), -ENOSPC);
	assert_int_equal(ops->disk_add(vm, "c0.l0", b, 2, why, sizeof(why)), -EEXIST);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(ops->disk_add(vm, "d0", b, 2, why, sizeof(why)), 0);
	double add_ms = ms_since(t0);
	k = ops->compat_get(vm, c2, sizeof(c2) - 1);
	c2[k] = 0;
	assert_non_null(strstr(c2, " disks=3:"));
	/* removed: what the VM was before, and the slot is free again */
	assert_int_equal(ops->disk_remove(vm, "nosuch", why, sizeof(why)), -ENOENT);
	assert_int_equal(ops->disk_remove(vm, "rootfs", why, sizeof(why)), -ENOENT);
	t0 = lm_now_ns();
	int rc = ops->disk_remove(vm, "d0", why, sizeof(why));
	double rm_ms = ms_since(t0);
	if (rc)
		fail_msg("disk_remove d0: %d %s", rc, why);
	print_message("# qemu-backend: hot-plug %.0f ms, unplug %.0f ms (TCG)\n", add_ms, rm_ms);
	k = ops->compat_get(vm, c3, sizeof(c3) - 1);
	c3[k] = 0;
	assert_string_equal(c1, c3);
	assert_int_equal(ops->disk_add(vm, "d1", b, 2, why, sizeof(why)), 0);
	assert_int_equal(ops->disk_remove(vm, "d1", why, sizeof(why)), 0);
	/* the boot-time layer goes the same way */
	assert_int_equal(ops->disk_remove(vm, "c0.l0", why, sizeof(why)), 0);
	k = ops->compat_get(vm, c3, sizeof(c3) - 1);
	c3[k] = 0;
	assert_non_null(strstr(c3, " disks=1:"));
	assert_true(qemu_running(vm));
	vm_destroy(vm);

	/* Slot in the document, by name */
	struct { json_t *disks; const char *want; } bads[] = {
		{json_pack("[{s:s, s:s, s:i}]", "Serial", "d0", "Path", a, "Slot", 0), "Disks[0].Slot"},
		{json_pack("[{s:s, s:s, s:i}]", "Serial", "d0", "Path", a, "Slot", 16), "Disks[0].Slot"},
		{json_pack("[{s:s, s:s, s:s}]", "Serial", "d0", "Path", a, "Slot", "1"), "Disks[0].Slot"},
		{json_pack("[{s:s, s:s, s:i}, {s:s, s:s}]", "Serial", "d0", "Path", a, "Slot", 2,
			   "Serial", "d1", "Path", b), "Slot used twice"},
	};
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		char *d = doc_with("Disks", bads[i].disks);
		expect_refused(d, 0, 0, -EINVAL, bads[i].want);
		free(d);
	}
	assert_int_equal(qemu_children(), 0);
}

static void test_migration_through_the_stream_ops(void **state)
{
	(void)state;
	NEED_QEMU();
	lm_vm_t *src = boot_vm("msrc", NULL, NULL);
	assert_true(wait_tick(src, 5, 10000));
	lm_vm_t *dst = make_vm("mdst", true, NULL);

	/* the destination accepts the source; not another machine */
	char c[256];
	int n = ops->compat_get(src, c, sizeof(c));
	assert_true(n > 0);
	assert_int_equal(ops->compat_check(dst, c, (size_t)n), 0);
	const char *other = "qemu machine=q35 vcpus=1 memory=134217728 cpu=default";
	assert_int_equal(ops->compat_check(dst, other, strlen(other)), -EPROTONOSUPPORT);
	assert_int_equal(ops->compat_check(dst, "lmshim-sim v1", 13), -EPROTONOSUPPORT);

	/* the destination waits; it cannot run before its stream completed */
	lm_vmm_stream_status_t ss, ds;
	assert_int_equal(ops->stream_status(dst, &ds), 0);
	assert_int_equal(ds.state, LM_VS_IDLE);
	assert_int_equal(ops->start(dst), -EBUSY);
	assert_int_equal(runstate(dst), LM_QEMU_RS_INMIGRATE);

	lm_vmm_stream_params_t p = {0};     /* the VMM's defaults, bandwidth unlimited */
	uint64_t t0 = lm_now_ns();
	int sfd = ops->stream_open(src, &p);
	assert_true(sfd >= 0);
	int dfd = ops->stream_open(dst, NULL);
	assert_true(dfd >= 0);
	assert_int_equal(ops->stream_open(dst, NULL), -EBUSY); /* one incoming stream */
	struct relay r;
	relay_start(&r, sfd, dfd);
	/* the VMM's defaults, but not QEMU's 32 MiB/s bandwidth cap */
	assert_true(mig_param(src, "max-bandwidth") >= (1ll << 40));
	assert_false(mig_cap(src, "auto-converge"));
	/* TCG: one pass with the guest running, the next sync only once it
	 * stopped (downtime-limit 0: QEMU never syncs to refine its figure) */
	assert_int_equal(mig_param(src, "downtime-limit"), 0);
	bool early_blackout;
	double max_status_ms;
	wait_both_completed(src, dst, &ss, &ds, &early_blackout, &max_status_ms);
	double wall = ms_since(t0);
	/* the source's QEMU closed its end once done: the relay saw EOF */
	for (int i = 0; i < 100 && !atomic_load(&r.eof); i++)
		usleep(20000);
	relay_join(&r);
	assert_true(atomic_load(&r.eof));
	assert_int_equal(r.err, 0);
	assert_int_equal(ops->stream_status(src, &ss), 0);
	print_message("# qemu-backend: migration %d MiB idle guest through the ops: wall %.0f ms, "
		      "%.1f MB relayed, passes %llu, transferred %.1f MB, downtime %llu ms, "
		      "blackout seen while active %d, source's stream_status at most %.1f ms\n",
		      MEM_MIB, wall, r.bytes / 1e6, (unsigned long long)ss.passes,
		      ss.transferred / 1e6, (unsigned long long)ss.downtime_ms, early_blackout,
		      max_status_ms);
	assert_int_equal(ss.state, LM_VS_COMPLETED);
	assert_true(ss.blackout);
	/* when the guest stopped, as its STOP event said */
	assert_true(ss.blackout_ns > t0 && ss.blackout_ns < lm_now_ns());
	assert_true(ss.total_bytes >= (uint64_t)MEM_MIB << 20);
	assert_true(ss.transferred > 0);
	assert_true(ss.passes >= 2);
	assert_int_equal(ss.remaining, 0);
	assert_int_equal(ds.state, LM_VS_COMPLETED);
	assert_false(ds.blackout);
	/* no sync of the dirty log while the guest ran, but the first */
	assert_int_equal(lm_qemu_migrate_synced_running(lm_hcs_qemu_vm(src)), 0);

	/* the source stays stopped */
	long last = tick(src, false);
	assert_false(qemu_running(src));
	assert_int_equal(runstate(src), LM_QEMU_RS_POSTMIGRATE);
	/* the destination runs the guest, which goes on counting */
	assert_false(qemu_running(dst));
	t0 = lm_now_ns();
	assert_int_equal(ops->start(dst), 0);
	assert_true(qemu_running(dst));
	if (!wait_tick(dst, last + 3, 10000)) {
		/* a kernel that crashed says so on its console (the page the
		 * TCG sync race lost: hcs/qemu/README.md) */
		static char con[65536];
		lm_qemu_vm_console(lm_hcs_qemu_vm(dst), con, sizeof(con), NULL);
		printf("%s\n", con);
		fail_msg("the destination's counter stopped (its console is above)");
	}
	long first = tick(dst, true);
	print_message("# qemu-backend: counter: source's last %ld, destination's first %ld "
		      "(%.0f ms after start)\n", last, first, ms_since(t0));
	assert_true(first > last && first <= last + 2);   /* no reset, nothing lost */
	assert_int_equal(ops->start(dst), 0);              /* idempotent */
	assert_false(qemu_running(src));
	assert_int_equal(tick(src, false), last);
	vm_destroy(src);
	vm_destroy(dst);
}

/* The VMMs on the link: both QEMUs get a copy of one connected socket
 * (the engine's link), the source's writes its stream there and the
 * destination's reads it, with nothing of ours in between. Afterwards the
 * link is still whole for the engine's own records both ways: neither
 * QEMU shut it down, and the destination's read nothing past the stream. */
static void test_migration_on_the_link_leaves_the_link_to_us(void **state)
{
	(void)state;
	NEED_QEMU();
	lm_vm_t *src = boot_vm("lsrc", NULL, NULL);
	assert_true(wait_tick(src, 5, 10000));
	lm_vm_t *dst = make_vm("ldst", true, NULL);
	assert_true(ops->stream_on_link);
	int link[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, link), 0);
	lm_vmm_stream_params_t ip = {.on_link = true, .link_fd = link[1]};
	assert_int_equal(ops->stream_open(dst, &ip), 0);
	lm_vmm_stream_params_t p = {.on_link = true, .link_fd = link[0]};
	uint64_t t0 = lm_now_ns();
	assert_int_equal(ops->stream_open(src, &p), 0);
	lm_vmm_stream_status_t ss, ds;
	bool early_blackout;
	double max_status_ms;
	wait_both_completed(src, dst, &ss, &ds, &early_blackout, &max_status_ms);
	double wall = ms_since(t0);
	usleep(100000);         /* QEMU fills in its times a moment after "completed" */
	assert_int_equal(ops->stream_status(src, &ss), 0);
	assert_int_equal(ops->stream_status(dst, &ds), 0);
	print_message("# qemu-backend: migration %d MiB idle guest on the link: wall %.0f ms, "
		      "transferred %.1f MB, downtime %llu ms, destination's QEMU CPU %.0f ms\n",
		      MEM_MIB, wall, ss.transferred / 1e6, (unsigned long long)ss.downtime_ms,
		      ds.busy_ns / 1e6);
	assert_int_equal(ss.state, LM_VS_COMPLETED);
	assert_int_equal(ds.state, LM_VS_COMPLETED);
	assert_true(ss.transferred > 0);
	assert_true(ds.busy_ns > 0);       /* the destination's progress sign */
	/* the link is ours again, both ways, and empty */
	char b[8];
	assert_int_equal(recv(link[1], b, sizeof(b), MSG_DONTWAIT), -1);
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(send(link[0], "to-dst", 6, MSG_NOSIGNAL | MSG_DONTWAIT), 6);
	assert_int_equal(send(link[1], "to-src", 6, MSG_NOSIGNAL | MSG_DONTWAIT), 6);
	struct pollfd q = {link[1], POLLIN, 0};
	assert_int_equal(poll(&q, 1, 2000), 1);
	assert_int_equal(recv(link[1], b, sizeof(b), MSG_DONTWAIT), 6);
	assert_memory_equal(b, "to-dst", 6);
	q.fd = link[0];
	assert_int_equal(poll(&q, 1, 2000), 1);
	assert_int_equal(recv(link[0], b, sizeof(b), MSG_DONTWAIT), 6);
	assert_memory_equal(b, "to-src", 6);
	/* the destination runs the guest on from where it stopped */
	long last = tick(src, false);
	assert_false(qemu_running(src));
	assert_int_equal(ops->start(dst), 0);
	assert_true(wait_tick(dst, last + 3, 10000));
	long first = tick(dst, true);
	print_message("# qemu-backend: counter on the link: source's last %ld, destination's "
		      "first %ld\n", last, first);
	assert_true(first > last && first <= last + 2);
	close(link[0]);
	close(link[1]);
	vm_destroy(src);
	vm_destroy(dst);
}

static void test_stream_abort_mid_stream_leaves_the_source_running(void **state)
{
	(void)state;
	NEED_QEMU();
	/* a writer keeps 32 MiB dirty; 8 MiB/s cannot finish before the abort */
	lm_vm_t *src = boot_vm("asrc", "lm_dirty=32:20", NULL);
	assert_true(wait_tick(src, 3, 10000));
	lm_vm_t *dst = make_vm("adst", true, "lm_dirty=32:20");
	lm_vmm_stream_params_t p = {.max_bandwidth = 8 << 20, .auto_converge = true,
				    .throttle_initial = 20, .throttle_increment = 10};
	int sfd = ops->stream_open(src, &p);
	assert_true(sfd >= 0);
	int dfd = ops->stream_open(dst, NULL);
	assert_true(dfd >= 0);
	/* QEMU got our parameters */
	assert_int_equal(mig_param(src, "max-bandwidth"), 8 << 20);
	assert_true(mig_cap(src, "auto-converge"));
	assert_int_equal(mig_param(src, "cpu-throttle-initial"), 20);
	assert_int_equal(mig_param(src, "cpu-throttle-increment"), 10);
	struct relay r;
	relay_start(&r, sfd, dfd);
	lm_vmm_stream_status_t ss, ds;
	uint64_t end = lm_now_ns() + 15000000000ull;
	do {
		usleep(50000);
		assert_int_equal(ops->stream_status(src, &ss), 0);
	} while ((ss.state != LM_VS_ACTIVE || ss.transferred < (4u << 20)) && lm_now_ns() < end);
	assert_int_equal(ss.state, LM_VS_ACTIVE);
	assert_false(ss.blackout);
	assert_true(ss.remaining > 0);
	assert_int_equal(ops->stream_status(dst, &ds), 0);
	assert_int_equal(ds.state, LM_VS_ACTIVE);
	print_message("# qemu-backend: mid-stream: transferred %.1f MB of %.1f MB, remaining "
		      "%.1f MB, pass %llu, dirty %.0f MB/s\n", ss.transferred / 1e6,
		      ss.total_bytes / 1e6, ss.remaining / 1e6, (unsigned long long)ss.passes,
		      ss.dirty_rate_mbps);
	long before = tick(src, false);

	uint64_t t0 = lm_now_ns();
	assert_int_equal(ops->stream_abort(src), 0);
	print_message("# qemu-backend: source stream_abort mid-stream %.1f ms\n", ms_since(t0));
	assert_int_equal(ops->stream_status(src, &ss), 0);
	assert_int_equal(ss.state, LM_VS_CANCELLED);
	assert_false(ss.blackout);
	assert_true(qemu_running(src));
	assert_true(wait_tick(src, before + 3, 10000));
	/* the source's QEMU closed its end; the destination's is closed by us */
	for (int i = 0; i < 100 && !atomic_load(&r.eof); i++)
		usleep(20000);
	relay_join(&r);
	assert_true(atomic_load(&r.eof));
	assert_int_equal(ops->stream_abort(dst), 0);
	assert_int_equal(ops->stream_open(dst, NULL), -EBUSY);
	/* its QEMU saw the stream end in the middle: it failed (QEMU 7.2
	 * exits then), and the guest never runs there */
	end = lm_now_ns() + 5000000000ull;
	do {
		usleep(20000);
		assert_int_equal(ops->stream_status(dst, &ds), 0);
	} while (ds.state != LM_VS_FAILED && lm_now_ns() < end);
	print_message("# qemu-backend: destination after its abort: state %d: %s\n", ds.state,
		      ds.error);
	assert_int_equal(ds.state, LM_VS_FAILED);
	assert_true(ds.error[0] != 0);
	int rc = ops->start(dst);
	assert_true(rc == -EBUSY || rc == -EPIPE);
	assert_int_equal(tick(dst, false), 0);
	vm_destroy(dst);
	/* and the source can stream again later */
	assert_int_equal(ops->stream_abort(src), 0);        /* nothing left to abort */
	assert_true(qemu_running(src));
	vm_destroy(src);
}

static void test_stream_abort_after_completion_runs_the_source_again(void **state)
{
	(void)state;
	NEED_QEMU();
	lm_vm_t *src = boot_vm("csrc", NULL, NULL);
	assert_true(wait_tick(src, 3, 10000));
	lm_vm_t *dst = make_vm("cdst", true, NULL);
	lm_vmm_stream_params_t p = {.downtime_ms = 300};
	setenv("LM_QEMU_TCG_ONE_PASS", "0", 1);   /* QEMU's own passes */
	int sfd = ops->stream_open(src, &p);
	unsetenv("LM_QEMU_TCG_ONE_PASS");
	assert_true(sfd >= 0);
	int dfd = ops->stream_open(dst, NULL);
	assert_true(dfd >= 0);
	struct relay r;
	relay_start(&r, sfd, dfd);
	assert_int_equal(mig_param(src, "downtime-limit"), 300);
	lm_vmm_stream_status_t ss, ds;
	bool early;
	double max_ms;
	wait_both_completed(src, dst, &ss, &ds, &early, &max_ms);
	relay_join(&r);
	long last = tick(src, false);
	assert_false(qemu_running(src));
	/* no handover: the destination's copy never runs, the source's again */
	assert_int_equal(ops->stream_abort(dst), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(ops->stream_abort(src), 0);
	print_message("# qemu-backend: source stream_abort after completion %.1f ms\n",
		      ms_since(t0));
	assert_true(qemu_running(src));
	assert_int_equal(runstate(src), LM_QEMU_RS_RUNNING);
	assert_true(wait_tick(src, last + 3, 10000));
	assert_int_equal(ops->stream_abort(src), 0);        /* idempotent: it runs */
	assert_true(qemu_running(src));
	/* pause and resume as before the stream */
	assert_int_equal(ops->pause(src), 0);
	assert_false(qemu_running(src));
	assert_int_equal(ops->resume(src), 0);
	assert_true(qemu_running(src));
	vm_destroy(dst);
	vm_destroy(src);
}

/* Under TCG a sync of QEMU's dirty log with the guest running can miss a
 * page the guest writes: the backend keeps QEMU from making one, and if
 * QEMU makes one anyway (here: the downtime limit raised behind the
 * backend's back, so that QEMU syncs to refine its figure at the end of
 * the bulk pass), the source's stream fails, saying why, and its copy is
 * not used: the source's guest runs on. */
static void test_a_sync_while_the_guest_runs_fails_the_stream(void **state)
{
	(void)state;
	NEED_QEMU();
	lm_vm_t *src = boot_vm("ssrc", NULL, NULL);
	assert_true(wait_tick(src, 3, 10000));
	lm_vm_t *dst = make_vm("sdst", true, NULL);
	lm_vmm_stream_params_t p = {0};
	int sfd = ops->stream_open(src, &p);
	assert_true(sfd >= 0);
	lm_qemu_migrate_params_t mp;
	lm_qemu_migrate_params_init(&mp);
	mp.downtime_limit_ms = 300;
	char err[200] = "";
	assert_int_equal(lm_qemu_migrate_set(lm_hcs_qemu_vm(src), &mp, 5000, err, sizeof(err)), 0);
	int dfd = ops->stream_open(dst, NULL);
	assert_true(dfd >= 0);
	struct relay r;
	relay_start(&r, sfd, dfd);
	lm_vmm_stream_status_t ss;
	uint64_t end = lm_now_ns() + (uint64_t)MIGRATE_MS * 1000000u;
	do {
		usleep(20000);
		assert_int_equal(ops->stream_status(src, &ss), 0);
	} while (ss.state != LM_VS_FAILED && ss.state != LM_VS_COMPLETED && lm_now_ns() < end);
	print_message("# qemu-backend: a sync with the guest running: state %d: %s\n", ss.state,
		      ss.error);
	assert_true(lm_qemu_migrate_synced_running(lm_hcs_qemu_vm(src)) >= 2);
	assert_int_equal(ss.state, LM_VS_FAILED);
	assert_non_null(strstr(ss.error, "dirty log"));
	/* the engine's abort: the destination gives its copy up, the source
	 * runs its guest on, though no one reads its stream any more (QEMU,
	 * blocked writing its blackout, answers no command until its write
	 * fails: stream_abort shuts the stream) */
	relay_join(&r);          /* (before the destination's end closes) */
	assert_int_equal(ops->stream_abort(dst), 0);
	long last = tick(src, false);
	assert_int_equal(ops->stream_abort(src), 0);
	assert_true(qemu_running(src));
	assert_true(wait_tick(src, last + 3, 10000));
	vm_destroy(dst);
	vm_destroy(src);
}

/* The QEMU layer's fault points: a QEMU that cannot be launched fails the
 * VM's create or start with the error and leaves no QEMU and no private
 * folder behind, and the next VM launches; a migration QEMU refuses to
 * start fails stream_open and leaves the guest running, and the next
 * stream opens. */
static void test_a_failed_launch_or_migrate_leaves_nothing_and_the_guest_running(void **state)
{
	(void)state;
	NEED_QEMU();
	int q0 = qemu_children();
	size_t d0 = private_dirs();
	assert_int_equal(lm_fault_arm("qemu.launch:errno=EIO:times=1"), 0);
	char *doc = make_doc(NULL, NULL);
	lm_vm_config_t c;
	cfg_init(&c, "flaunch", false, doc);
	lm_vm_t *vm = NULL;
	int rc = ops->create(&vm, &c);
	if (rc == 0) {
		track(vm);
		rc = ops->start(vm);
	}
	free(doc);
	assert_int_equal(rc, -EIO);
	if (vm)
		vm_destroy(vm);
	assert_int_equal(qemu_children(), q0);
	assert_int_equal(private_dirs(), d0);
	lm_fault_disarm_all();
	lm_vm_t *src = boot_vm("fmig", NULL, NULL);
	assert_true(wait_tick(src, 3, 10000));
	assert_int_equal(lm_fault_arm("qemu.migrate:errno=EIO:times=1"), 0);
	assert_true(ops->stream_open(src, NULL) < 0);
	lm_fault_disarm_all();
	long before = tick(src, false);
	assert_true(qemu_running(src));
	assert_true(wait_tick(src, before + 3, 10000));
	int sfd = ops->stream_open(src, NULL);
	assert_true(sfd >= 0);
	assert_int_equal(ops->stream_abort(src), 0);
	assert_true(qemu_running(src));
	vm_destroy(src);
	assert_int_equal(qemu_children(), q0);
}

static void test_zz_no_qemu_process_is_left(void **state)
{
	(void)state;
	NEED_QEMU();
	assert_int_equal(qemu_children(), 0);
}

/* ---- setup ------------------------------------------------------------ */

static bool on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[512];
	while (path && *path) {
		const char *e = strchr(path, ':');
		size_t n = e ? (size_t)(e - path) : strlen(path);
		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, prog);
		if (access(buf, X_OK) == 0)
			return true;
		path += n + (e ? 1 : 0);
	}
	return false;
}

static int suite_setup(void **state)
{
	(void)state;
	ops = lm_backend_find("qemu");
	if (!ops)
		return -1;
	snprintf(kernel, sizeof(kernel), "%s/vmlinuz", LM_TEST_KERNEL_DIR);
	if (!on_path("qemu-system-x86_64") && !getenv("LM_QEMU")) {
		snprintf(skip_why, sizeof(skip_why), "qemu-system-x86_64 not found "
			 "(Debian: qemu-system-x86)");
		return 0;
	}
	if (access(kernel, R_OK) < 0) {
		snprintf(skip_why, sizeof(skip_why), "no guest kernel at %s (the build fetches "
			 "it: guest/image/fetch-kernel.sh)", kernel);
		return 0;
	}
	/* the backend's default kernel is the build's; make sure */
	unsetenv("LM_QEMU_KERNEL");
	unsetenv("LM_QEMU_INITRD");
	snprintf(dir, sizeof(dir), "/tmp/lmqemu-btest-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(initrd, sizeof(initrd), "%s/initrd.cpio.gz", dir);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "sh %s %s %s %s", LM_TEST_MKINITRAMFS, initrd,
		 LM_TEST_KERNEL_DIR, LM_TEST_LMDIRTY);
	if (system(cmd) != 0) {
		fprintf(stderr, "test_qemu_backend: %s failed\n", cmd);
		return -1;
	}
	/* the VMs' private directories go here (counted, removed with it) */
	setenv("TMPDIR", dir, 1);
	return 0;
}

static int suite_teardown(void **state)
{
	(void)state;
	if (dir[0]) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd) != 0)
			return -1;
	}
	return 0;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_WARN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registry_finds_the_qemu_backend),
		cmocka_unit_test_teardown(test_start_boots_and_pause_resume_stop_and_run_the_guest,
					  case_teardown),
		cmocka_unit_test_teardown(test_bad_document_field_is_einval_and_names_it,
					  case_teardown),
		cmocka_unit_test_teardown(test_container_layers_are_disks_checked_across_hosts,
					  case_teardown),
		cmocka_unit_test_teardown(test_a_layer_is_hot_plugged_in_its_slot_and_removed,
					  case_teardown),
		cmocka_unit_test_teardown(test_migration_through_the_stream_ops, case_teardown),
		cmocka_unit_test_teardown(test_migration_on_the_link_leaves_the_link_to_us,
					  case_teardown),
		cmocka_unit_test_teardown(test_stream_abort_mid_stream_leaves_the_source_running,
					  case_teardown),
		cmocka_unit_test_teardown(test_stream_abort_after_completion_runs_the_source_again,
					  case_teardown),
		cmocka_unit_test_teardown(test_a_sync_while_the_guest_runs_fails_the_stream, case_teardown),
		cmocka_unit_test_teardown(test_a_failed_launch_or_migrate_leaves_nothing_and_the_guest_running,
					  case_teardown),
		cmocka_unit_test_teardown(test_zz_no_qemu_process_is_left, case_teardown),
	};
	if (getenv("LM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LM_TEST_FILTER"));
	return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
