/*
 * test_e2e_qemu.c: a real Linux utility VM (the qemu backend: QEMU under
 * TCG here, the build's kernel and initramfs with our guest agent)
 * live-migrated between two lmshim processes by a real lmctl, the VMM's
 * stream carried inside our own (hcs/PROTOCOL.md, "The VMM's stream").
 *
 * What it proves: after `lmctl migrate` exits 0, exactly one QEMU runs
 * the guest, the destination's, and it runs (QEMU's own status through
 * Inspect); the source's QEMU is gone; a migration cancelled in the
 * middle leaves the source's guest running and no QEMU behind on the
 * destination; a container on its own two-layer rootfs (read-only disks
 * of the VM) moves onto the destination's copies of its layers, and a
 * destination whose copy differs is refused before any page moves; a
 * guest that arrived by migration moves on to a third host; task Create
 * hot-plugs a container's layers, Delete detaches them (more Creates than
 * the VM has disk slots), and a Create's stdout may be a FIFO, as
 * containerd gives it. Skips (77) without qemu-system-x86_64 or the
 * build's guest image. No QEMU process of this test is left at its end.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/e2e/e2e.h"
#include "cgroups_metrics.pb-c.h"
#include "google/protobuf/any.pb-c.h"
#include "sandbox_api.pb-c.h"
#include "task.pb-c.h"

/* QEMU processes that `shim` started (their parent): how many, and the
 * pid of one in *pid (may be NULL). */
static int qemu_of_pid(pid_t shim, pid_t *pid)
{
	return e2e_qemu_procs(NULL, shim, pid);
}

static int qemu_of(pid_t shim)
{
	return qemu_of_pid(shim, NULL);
}

/* Inspect: the compute system's state word and whether the guest runs. */
static int props(struct e2e_shim *s, char *state, size_t sl, int *running)
{
	static const char q[] = "{}";
	struct lm_rpc_call_opts co = { .timeout_ns = 10ll * 1000000000 };
	struct lm_rpc_result r = {0};
	int rc = lm_rpc_client_call(s->c, "lmshim.v1.Inspect", "Properties", q, sizeof(q) - 1, &co, &r);
	if (rc < 0)
		return rc;
	rc = r.code;
	if (rc == 0) {
		json_t *j = json_loadb((const char *)r.payload, r.len, 0, NULL);
		snprintf(state, sl, "%s", json_string_value(json_object_get(j, "State")) ?: "");
		*running = json_is_true(json_object_get(json_object_get(j, "Statistics"), "GuestRunning"));
		json_decref(j);
	}
	lm_rpc_result_free(&r);
	return rc;
}

static char skip_why[256];

/* Any QEMU booting the build's initramfs still running. */
/* Any QEMU this test process's shims started still running (orphans
 * included: e2e_qemu_mark). */
static bool leftover_qemu(void)
{
	return e2e_qemu_procs(e2e_qemu_mark(), 0, NULL) > 0;
}

static int have_qemu(void)
{
	if (access(LM_E2E_KERNEL, R_OK) != 0 || access(LM_E2E_INITRAMFS, R_OK) != 0) {
		snprintf(skip_why, sizeof(skip_why), "no guest image (%s, %s)", LM_E2E_KERNEL, LM_E2E_INITRAMFS);
		return 0;
	}
	if (system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0) {
		snprintf(skip_why, sizeof(skip_why), "qemu-system-x86_64 is not installed");
		return 0;
	}
	return 1;
}

struct fx {
	char dir[256];
	struct e2e_shim src, dst;
	struct e2e_shim third;        /* a second hop's destination: stopped by
					 teardown if a case failed first */
};

/* A qemu source (sargs) named src and an idle destination named dst in
 * f->dir: 0, or -1 with neither left running. */
static int start_pair(struct fx *f, const char *src, const char *const *sargs, const char *dst,
		      const char *dst_faults)
{
	/* a slowed destination carries QEMU's stream in our records, where
	 * its fault point can slow each one (on the link it reads none) */
	const char *dargs[] = { "--idle", "--insecure-migration", "--vmm-stream", "carry", NULL };
	if (e2e_shim_start(&f->src, f->dir, src, NULL, NULL, sargs) < 0 ||
	    (dst_faults && strstr(dst_faults, "transfer.recv")
		     ? e2e_shim_start(&f->dst, f->dir, dst, NULL, dst_faults, dargs)
		     : e2e_dest_start(&f->dst, f->dir, dst, dst_faults)) < 0) {
		e2e_shim_stop(&f->src);
		e2e_shim_stop(&f->dst);
		return -1;
	}
	return 0;
}

static int setup_with(void **state, const char *dst_faults)
{
	struct fx *f = calloc(1, sizeof(*f));
	e2e_tmpdir(f->dir);
	const char *sargs[] = { "--backend", "qemu", "--vm-size-mb", "256", NULL };
	if (start_pair(f, "qsrc", sargs, "qdst", dst_faults) < 0) {
		e2e_rmdir(f->dir);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, NULL);
}

/* The destination takes each record 100 ms late: the transfer lasts. */
static int setup_slow(void **state)
{
	return setup_with(state, "transfer.recv:delay_ms=100");
}

/* On the link: the destination's QEMU takes its stream 4 s late (the
 * source's QEMU waits on a full socket), so the stream lasts. */
static int setup_link_held(void **state)
{
	return setup_with(state, "qemu.incoming:delay_ms=4000");
}

static int teardown(void **state)
{
	struct fx *f = *state;
	pid_t sp = f->src.pid, dp = f->dst.pid;
	int a = e2e_shim_stop(&f->src), b = e2e_shim_stop(&f->dst);
	(void)e2e_shim_stop(&f->third);   /* a case that failed midway */
	e2e_rmdir(f->dir);
	free(f);
	/* a shim that stops takes its QEMU with it (orphans are re-parented:
	 * look for any QEMU running our guest image) */
	(void)sp;
	(void)dp;
	bool left = leftover_qemu();
	if (a || b || left)
		printf("# teardown: source shim exited %d, destination %d, QEMU left behind: %s\n", a, b,
		       left ? "yes" : "no");
	return a == 0 && b == 0 && !left ? 0 : -1;
}

static void test_a_linux_guest_moves_and_runs_only_on_the_destination(void **state)
{
	struct fx *f = *state;
	char st[32];
	int run = 0;
	assert_int_equal(props(&f->src, st, sizeof(st), &run), 0);
	assert_true(run);
	assert_int_equal(qemu_of(f->src.pid), 1);
	assert_int_equal(qemu_of(f->dst.pid), 0);
	/* the teardown's leftover check sees this process's QEMUs (by the
	 * mark in their command lines), this one included */
	assert_int_equal(e2e_qemu_procs(e2e_qemu_mark(), 0, NULL), 1);
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "qemu-1", NULL };
	uint64_t t0 = (uint64_t)time(NULL);
	int rc = e2e_lmctl(args, out, 180000);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: lmctl migrate exited %d after ~%llu s\n%s", rc,
	       (unsigned long long)((uint64_t)time(NULL) - t0), t);
	free(t);
	if (rc != 0) {
		e2e_shim_dump(&f->src);
		e2e_shim_dump(&f->dst);
	}
	assert_int_equal(rc, 0);
	/* one copy: the destination's QEMU runs the guest, the source's is gone */
	assert_int_equal(props(&f->dst, st, sizeof(st), &run), 0);
	assert_true(run);
	assert_int_equal(qemu_of(f->dst.pid), 1);
	assert_int_equal(qemu_of(f->src.pid), 0);
	/* the source has no compute system left */
	assert_int_equal(props(&f->src, st, sizeof(st), &run), E2E_NOT_FOUND);
	/* on a unix link the two QEMUs spoke on it themselves, and both
	 * sides said so (hcs/PROTOCOL.md, "The VMM on the link") */
	char *sl = e2e_slurp(f->src.log), *dl = e2e_slurp(f->dst.log);
	assert_non_null(strstr(sl, "msg=\"outgoing stream opened\""));
	assert_non_null(strstr(strstr(sl, "msg=\"outgoing stream opened\""), "on_link=1"));
	assert_non_null(strstr(dl, "msg=\"incoming stream opened\""));
	assert_non_null(strstr(strstr(dl, "msg=\"incoming stream opened\""), "on_link=1"));
	free(sl);
	free(dl);
}

static void test_cancel_mid_transfer_keeps_the_source_running(void **state)
{
	struct fx *f = *state;
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	/* a slow destination keeps it in the middle; Ctrl-C there rolls back */
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "qemu-2", NULL };
	pid_t p = e2e_lmctl_spawn(args, out);
	int ph = e2e_wait_phase(&f->src, "qemu-2", 2 /* TransferInProgress */, 60000, NULL);
	assert_true(ph >= 0);
	kill(p, SIGINT);
	int rc = e2e_wait(p, 30000);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: Ctrl-C mid-transfer: lmctl exited %d\n%s", rc, t);
	free(t);
	char st[32];
	int run = 0;
	assert_int_equal(props(&f->src, st, sizeof(st), &run), 0);
	assert_true(run);
	assert_int_equal(qemu_of(f->src.pid), 1);
	/* carried: the destination's operator said so, and the source heard */
	char *sl = e2e_slurp(f->src.log);
	assert_non_null(strstr(sl, "msg=\"outgoing stream opened\""));
	assert_non_null(strstr(strstr(sl, "msg=\"outgoing stream opened\""), "on_link=0"));
	free(sl);
	/* the destination's QEMU (it waited for the stream) is gone */
	uint64_t end = (uint64_t)time(NULL) + 10;
	while (qemu_of(f->dst.pid) && (uint64_t)time(NULL) < end)
		usleep(50000);
	assert_int_equal(qemu_of(f->dst.pid), 0);
}

/* The destination's QEMU killed (-9) in the middle of the transfer: the
 * move fails, the source's guest runs on, nothing runs on the destination.
 * Carried (setup_slow) and with the QEMUs on the link (setup_link_held). */
static void kill_dst_qemu_mid_transfer(struct fx *f, const char *session, bool on_link)
{
	char out[300], work[300];
	snprintf(out, sizeof(out), "%s/lmctl.out", f->dir);
	snprintf(work, sizeof(work), "%s/work", f->dir);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", session, NULL };
	pid_t p = e2e_lmctl_spawn(args, out);
	assert_true(e2e_wait_phase(&f->src, session, 2 /* TransferInProgress */, 60000, NULL) >= 0);
	if (on_link)
		usleep(500000);   /* the source's QEMU writes; the destination's waits */
	pid_t q = 0;
	assert_int_equal(qemu_of_pid(f->dst.pid, &q), 1);
	assert_int_equal(kill(q, SIGKILL), 0);
	int rc = e2e_wait(p, 60000);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: destination QEMU killed mid-transfer (%s): lmctl exited %d\n%s",
	       on_link ? "on the link" : "carried", rc, t);
	free(t);
	assert_int_equal(rc, 1);
	char st[32];
	int run = 0;
	assert_int_equal(props(&f->src, st, sizeof(st), &run), 0);
	assert_true(run);
	assert_int_equal(qemu_of(f->src.pid), 1);
	uint64_t end = (uint64_t)time(NULL) + 10;
	while (qemu_of(f->dst.pid) && (uint64_t)time(NULL) < end)
		usleep(50000);
	assert_int_equal(qemu_of(f->dst.pid), 0);
	char *sl = e2e_slurp(f->src.log);
	const char *opened = strstr(sl, "msg=\"outgoing stream opened\"");
	assert_non_null(opened);
	assert_non_null(strstr(opened, on_link ? "on_link=1" : "on_link=0"));
	free(sl);
}

static void test_a_destination_qemu_killed_mid_transfer_leaves_the_source_running(void **state)
{
	kill_dst_qemu_mid_transfer(*state, "qemu-3", false);
}

static void test_a_destination_qemu_killed_mid_stream_on_the_link_leaves_the_source_running(void **state)
{
	kill_dst_qemu_mid_transfer(*state, "qemu-3l", true);
}

/* ---- a pod of real processes ------------------------------------------ */

#define COUNTER_CMD "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"
#define WRITER_CMD "while :; do date >> /data/log; echo lines $(wc -l < /data/log); sleep 0.3; done"

/* The numbers at the start of each line of a file (at most cap); count. */
static size_t numbers_of(const char *path, const char *prefix, long *v, size_t cap)
{
	char *t = e2e_slurp(path);
	size_t n = 0, pl = strlen(prefix);
	for (char *l = strtok(t, "\n"); l && n < cap; l = strtok(NULL, "\n"))
		if (!strncmp(l, prefix, pl))
			v[n++] = strtol(l + pl, NULL, 10);
	free(t);
	return n;
}

/* Waits until `path` has at least `lines` lines (true) or timeout_s. */
static bool wait_lines(const char *path, const char *prefix, size_t lines, int timeout_s)
{
	static long v[100000];
	uint64_t end = (uint64_t)time(NULL) + (uint64_t)timeout_s;
	while ((uint64_t)time(NULL) < end) {
		if (numbers_of(path, prefix, v, 100000) >= lines)
			return true;
		usleep(100000);
	}
	return false;
}

/* The two hosts' files hold one stream: consecutive values, each once. */
static void assert_one_stream(const char *src, const char *dst, const char *prefix, bool from_zero)
{
	static long a[100000], b[100000];
	size_t na = numbers_of(src, prefix, a, 100000), nb = numbers_of(dst, prefix, b, 100000);
	printf("# %s: source %zu lines (%ld..%ld), destination %zu lines (%ld..%ld)\n", prefix, na,
	       na ? a[0] : -1, na ? a[na - 1] : -1, nb, nb ? b[0] : -1, nb ? b[nb - 1] : -1);
	assert_true(na > 0 && nb > 0);
	if (from_zero)
		assert_int_equal(a[0], 0);
	for (size_t i = 1; i < na; i++)
		assert_int_equal(a[i], a[i - 1] + 1);
	assert_int_equal(b[0], a[na - 1] + 1);   /* no reset, no gap, no repeat */
	for (size_t i = 1; i < nb; i++)
		assert_int_equal(b[i], b[i - 1] + 1);
}

static void why_it_stopped(struct e2e_shim *s);

/* A counter's output (`src`, from 0) goes on in `dst` on the destination:
 * one stream. */
static void goes_on_at_the_destination(struct fx *f, const char *src, const char *dst)
{
	bool ok = wait_lines(dst, "", 5, 60);
	if (!ok)
		why_it_stopped(&f->dst);
	assert_true(ok);
	assert_one_stream(src, dst, "", true);
}

static int task_kill(struct e2e_shim *s, const char *id, uint32_t sig)
{
	Containerd__Task__V2__KillRequest rq = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
	rq.id = (char *)id;
	rq.signal = sig;
	char msg[256] = "";
	int rc = e2e_call(s, "containerd.task.v2.Task", "Kill", &rq.base, NULL, NULL, msg, sizeof msg);
	if (rc)
		printf("# Kill %s: %d %s\n", id, rc, msg);
	return rc;
}

/* Pause (resume false) or Resume: 0 or the gRPC code. */
static int task_pause(struct e2e_shim *s, const char *id, bool resume)
{
	Containerd__Task__V2__PauseRequest rq = CONTAINERD__TASK__V2__PAUSE_REQUEST__INIT;
	rq.id = (char *)id;   /* (ResumeRequest: the same field) */
	char msg[256] = "";
	int rc = e2e_call(s, "containerd.task.v2.Task", resume ? "Resume" : "Pause", &rq.base, NULL, NULL, msg,
			  sizeof msg);
	if (rc)
		printf("# %s %s: %d %s\n", resume ? "Resume" : "Pause", id, rc, msg);
	return rc;
}

/* Pids: how many (at most cap in pids), or minus the gRPC code. */
static int task_pids(struct e2e_shim *s, const char *id, uint32_t *pids, size_t cap)
{
	Containerd__Task__V2__PidsRequest rq = CONTAINERD__TASK__V2__PIDS_REQUEST__INIT;
	rq.id = (char *)id;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "containerd.task.v2.Task", "Pids", &rq.base,
			  &containerd__task__v2__pids_response__descriptor, &resp, NULL, 0);
	if (rc)
		return -rc;
	Containerd__Task__V2__PidsResponse *r = (Containerd__Task__V2__PidsResponse *)resp;
	int n = (int)r->n_processes;
	for (size_t i = 0; i < r->n_processes && i < cap; i++)
		pids[i] = r->processes[i]->pid;
	protobuf_c_message_free_unpacked(resp, NULL);
	return n;
}

/* What Stats answers of a container: its cgroup v2 figures. */
struct stats_of {
	uint64_t cpu_usec, mem, pids;
	uint64_t mem_limit, pids_limit, nr_periods;
};

/* Stats: the container's cgroup v2 metrics (0), or the gRPC code. */
static int task_stats(struct e2e_shim *s, const char *id, struct stats_of *out)
{
	Containerd__Task__V2__StatsRequest rq = CONTAINERD__TASK__V2__STATS_REQUEST__INIT;
	rq.id = (char *)id;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "containerd.task.v2.Task", "Stats", &rq.base,
			  &containerd__task__v2__stats_response__descriptor, &resp, NULL, 0);
	if (rc)
		return rc;
	Containerd__Task__V2__StatsResponse *r = (Containerd__Task__V2__StatsResponse *)resp;
	Io__Containerd__Cgroups__V2__Metrics *m = NULL;
	if (r->stats && !strcmp(r->stats->type_url, "io.containerd.cgroups.v2.Metrics"))
		m = io__containerd__cgroups__v2__metrics__unpack(NULL, r->stats->value.len, r->stats->value.data);
	rc = m && m->cpu && m->memory && m->pids ? 0 : 13;
	if (!rc)
		*out = (struct stats_of){ .cpu_usec = m->cpu->usage_usec, .mem = m->memory->usage,
					  .pids = m->pids->current, .mem_limit = m->memory->usage_limit,
					  .pids_limit = m->pids->limit, .nr_periods = m->cpu->nr_periods };
	if (m)
		io__containerd__cgroups__v2__metrics__free_unpacked(m, NULL);
	protobuf_c_message_free_unpacked(resp, NULL);
	return rc;
}

/* Update with the runtime-spec's LinuxResources (JSON), as containerd
 * sends it: 0 or the gRPC code. */
static int task_update(struct e2e_shim *s, const char *id, const char *json)
{
	Containerd__Task__V2__UpdateTaskRequest rq = CONTAINERD__TASK__V2__UPDATE_TASK_REQUEST__INIT;
	Google__Protobuf__Any a = GOOGLE__PROTOBUF__ANY__INIT;
	a.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
	a.value.data = (uint8_t *)json;
	a.value.len = strlen(json);
	rq.id = (char *)id;
	rq.resources = &a;
	char msg[300];
	int rc = e2e_call(s, "containerd.task.v2.Task", "Update", &rq.base, NULL, NULL, msg, sizeof msg);
	if (rc)
		printf("# Update %s: %d %s\n", id, rc, msg);
	return rc;
}

/* How many numbered lines the file has now. */
static size_t lines_now(const char *path, const char *prefix)
{
	static long v[100000];
	return numbers_of(path, prefix, v, 100000);
}

static int task_wait(struct e2e_shim *s, const char *id, uint32_t *status)
{
	Containerd__Task__V2__WaitRequest rq = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
	rq.id = (char *)id;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "containerd.task.v2.Task", "Wait", &rq.base,
			  &containerd__task__v2__wait_response__descriptor, &resp, NULL, 0);
	if (rc == 0) {
		*status = ((Containerd__Task__V2__WaitResponse *)resp)->exit_status;
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	return rc;
}

static int task_delete(struct e2e_shim *s, const char *id)
{
	Containerd__Task__V2__DeleteRequest rq = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
	rq.id = (char *)id;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "containerd.task.v2.Task", "Delete", &rq.base,
			  &containerd__task__v2__delete_response__descriptor, &resp, NULL, 0);
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	return rc;
}

/* The writer's own rootfs, two layers in `dir`: lbase (busybox and its
 * applets, /data) and ltop (/marker: `marker`); `rootfs` is the
 * --container-rootfs argument for container `id`. */
static void make_layers(const char *dir, const char *marker, const char *id, char *rootfs,
			size_t cap)
{
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "set -e; b='%s/lbase'; t='%s/ltop'; rm -rf \"$b\" \"$t\"; "
		 "mkdir -p \"$b/bin\" \"$b/data\" \"$b/proc\" \"$b/dev\" \"$b/sys\" \"$b/tmp\" \"$t\"; "
		 "cp /bin/busybox \"$b/bin/\"; for a in $(/bin/busybox --list); do "
		 "[ \"$a\" = busybox ] || ln -s busybox \"$b/bin/$a\"; done; "
		 "printf '%%s' '%s' > \"$t/marker\"", dir, dir, marker);
	assert_int_equal(system(cmd), 0);
	snprintf(rootfs, cap, "%s=%s/lbase:%s/ltop", id, dir, dir);
}

/* The writer runs on its own two layers and says what its top layer holds. */
#define WRITER_L_CMD "while :; do date >> /data/log; echo lines $(wc -l < /data/log) $(cat /marker); " \
		     "sleep 0.3; done"

static int start_pod_with(struct fx *f, const char *src, const char *dst, const char *dst_faults)
{
	char rootfs[700];
	make_layers(f->dir, "layer-top", "writer", rootfs, sizeof rootfs);
	const char *sargs[] = { "--backend", "qemu", "--vm-size-mb", "256",
				"--containers", "pod1:sandbox,pod1:counter,pod1:writer",
				"--container-cmd", "counter=" COUNTER_CMD,
				"--container-cmd", "writer=" WRITER_L_CMD,
				"--container-rootfs", rootfs, NULL };
	return start_pair(f, src, sargs, dst, dst_faults);
}

static int setup_pod_with(void **state, const char *dst_faults)
{
	struct fx *f = calloc(1, sizeof(*f));
	e2e_tmpdir(f->dir);
	if (start_pod_with(f, "qsrc", "qdst", dst_faults) < 0) {
		e2e_rmdir(f->dir);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int setup_pod(void **state)
{
	return setup_pod_with(state, NULL);
}

/* The destination's first disk hot-plug fails (fault point hcs.disk_add),
 * and so does its 17th detach (hcs.disk_remove). */
static int setup_pod_dst_disk_fault(void **state)
{
	return setup_pod_with(state, "hcs.disk_add:errno=EIO:times=1,"
				     "hcs.disk_remove:errno=EIO:after=16:times=1");
}

/* A migrated container's output stopped: the shim's log says why (a
 * guest whose kernel crashed "ended itself", with its console: the page
 * a dirty-log sync with the guest running could lose under TCG,
 * hcs/qemu/README.md, which the backend no longer lets happen). */
static void why_it_stopped(struct e2e_shim *s)
{
	char *t = e2e_slurp(s->log);
	if (t && strstr(t, "the guest ended itself"))
		printf("# the migrated guest's kernel crashed: %s's log\n", s->name);
	else
		printf("# the migrated container's output stopped: %s's log\n", s->name);
	free(t);
	e2e_shim_dump(s);
}

/* One migration of the pod, on to a third host, everything asserted. */
static void pod_moves(struct fx *f, const char *session)
{
	char sc[400], sw[400], dc[400], dw[400], out[300], work[300];
	snprintf(sc, sizeof sc, "%s/%s-state/counter/stdout", f->dir, f->src.name);
	snprintf(sw, sizeof sw, "%s/%s-state/writer/stdout", f->dir, f->src.name);
	snprintf(work, sizeof work, "%s/work-%s", f->dir, session);
	snprintf(dc, sizeof dc, "%s/bundles/counter-m/stdout.log", work);
	snprintf(dw, sizeof dw, "%s/bundles/writer-m/stdout.log", work);
	snprintf(out, sizeof out, "%s/lmctl.out", f->dir);
	assert_true(wait_lines(sc, "", 10, 60));
	assert_true(wait_lines(sw, "lines ", 3, 60));
	uint32_t pid_c = 0, pid_w = 0, pid = 0;
	int st = 0;
	assert_int_equal(e2e_state(&f->src, "counter", &pid_c, &st), 0);
	assert_int_equal(st, 2);
	assert_int_equal(e2e_state(&f->src, "writer", &pid_w, &st), 0);
	assert_true(pid_c > 1 && pid_c < 1000 && pid_w > 1 && pid_w != pid_c);   /* the guest's */

	/* Pids: the guest's processes of the container, its init first (the
	 * counter's shell and its sleep) */
	uint32_t pids[16];
	int np = task_pids(&f->src, "counter", pids, 16);
	assert_true(np >= 1);
	assert_int_equal(pids[0], pid_c);
	/* Stats: its cgroup's figures, as containerd's cgroup v2 metrics */
	struct stats_of so, so1;
	assert_int_equal(task_stats(&f->src, "counter", &so), 0);
	printf("# counter: Pids %d, Stats cpu %llu us, memory %llu B, pids %llu\n", np,
	       (unsigned long long)so.cpu_usec, (unsigned long long)so.mem, (unsigned long long)so.pids);
	assert_true(so.cpu_usec > 0 && so.mem > 0 && so.pids >= 1);
	/* Update sets its cgroup's limits in the guest: Stats reads them
	 * back, and a CPU quota counts periods */
	assert_int_equal(task_update(&f->src, "counter", "{\"memory\":{\"limit\":100663296},"
				     "\"cpu\":{\"quota\":80000,\"period\":100000},\"pids\":{\"limit\":50}}"), 0);
	assert_int_equal(task_stats(&f->src, "counter", &so), 0);
	assert_int_equal(so.mem_limit, 96u << 20);
	assert_int_equal(so.pids_limit, 50);
	usleep(500000);
	assert_int_equal(task_stats(&f->src, "counter", &so1), 0);
	printf("# counter after Update: memory limit %llu, pids limit %llu, cpu periods %llu -> %llu\n",
	       (unsigned long long)so1.mem_limit, (unsigned long long)so1.pids_limit,
	       (unsigned long long)so.nr_periods, (unsigned long long)so1.nr_periods);
	assert_true(so1.nr_periods > so.nr_periods);
	assert_int_equal(task_update(&f->src, "counter", "{\"cpu\":{\"quota\":\"x\"}}"), 3);
	/* Pause freezes the counter: its output stops, State says paused;
	 * Resume thaws it and it counts on */
	assert_int_equal(task_pause(&f->src, "counter", false), 0);
	assert_int_equal(e2e_state(&f->src, "counter", NULL, &st), 0);
	assert_int_equal(st, 4);
	assert_int_equal(task_pause(&f->src, "counter", false), 9);   /* FailedPrecondition */
	usleep(300000);                 /* a line already on its way lands */
	size_t n0 = lines_now(sc, "");
	usleep(1000000);
	assert_int_equal(lines_now(sc, ""), n0);
	assert_int_equal(task_pause(&f->src, "counter", true), 0);
	assert_true(wait_lines(sc, "", n0 + 3, 30));
	assert_int_equal(e2e_state(&f->src, "counter", NULL, &st), 0);
	assert_int_equal(st, 2);
	/* the writer moves paused: it stays so on the destination until
	 * Resumed there */
	assert_int_equal(task_pause(&f->src, "writer", false), 0);

	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", session, NULL };
	int rc = e2e_lmctl(args, out, 180000);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: pod migrate exited %d\n%s", rc, t);
	free(t);
	if (rc) {
		e2e_shim_dump(&f->src);
		e2e_shim_dump(&f->dst);
	}
	assert_int_equal(rc, 0);
	/* the source has nothing left; the destination runs both, same PIDs */
	assert_int_equal(e2e_state(&f->src, "counter", NULL, NULL), E2E_NOT_FOUND);
	assert_int_equal(e2e_state(&f->dst, "counter-m", &pid, &st), 0);
	assert_int_equal(pid, pid_c);
	assert_int_equal(e2e_state(&f->dst, "writer-m", &pid, &st), 0);
	assert_int_equal(pid, pid_w);
	assert_int_equal(st, 4);
	assert_int_equal(task_pause(&f->dst, "writer-m", true), 0);
	assert_int_equal(e2e_state(&f->dst, "writer-m", NULL, &st), 0);
	assert_int_equal(st, 2);
	bool dc_ok = wait_lines(dc, "", 10, 60), dw_ok = wait_lines(dw, "lines ", 3, 60);
	if (!dc_ok || !dw_ok)
		why_it_stopped(&f->dst);
	assert_true(dc_ok && dw_ok);
	assert_int_equal(e2e_state(&f->dst, "counter-m", NULL, &st), 0);
	assert_int_equal(st, 2);
	assert_one_stream(sc, dc, "", true);
	/* its limits came with the guest */
	assert_int_equal(task_stats(&f->dst, "counter-m", &so), 0);
	assert_int_equal(so.mem_limit, 96u << 20);
	assert_int_equal(so.pids_limit, 50);
	/* the writer counts the lines of its file: it grew on from before */
	assert_one_stream(sw, dw, "lines ", false);
	/* ... on its own layers, the destination's copies (the top one over
	 * the base: the marker is the top layer's) */
	char *wt = e2e_slurp(dw);
	char *last = strrchr(wt, '\n');
	while (last && last > wt && last[1] == 0) {
		*last = 0;
		last = strrchr(wt, '\n');
	}
	assert_non_null(strstr(last ? last : wt, " layer-top"));
	free(wt);

	/* the destination's task service drives the real processes */
	assert_int_equal(task_kill(&f->dst, "counter-m", 9), 0);
	uint32_t status = 0;
	assert_int_equal(task_wait(&f->dst, "counter-m", &status), 0);
	assert_int_equal(status, 137);
	assert_int_equal(e2e_state(&f->dst, "counter-m", NULL, &st), 0);
	assert_int_equal(st, 3);
	assert_int_equal(task_delete(&f->dst, "counter-m"), 0);
	assert_int_equal(e2e_state(&f->dst, "counter-m", NULL, NULL), E2E_NOT_FOUND);
	/* the writer, still running, is not touched by that */
	assert_int_equal(e2e_state(&f->dst, "writer-m", NULL, &st), 0);
	assert_int_equal(st, 2);

	/* and the pod moves on, from the host it arrived on to a third one:
	 * same PID, the file grows on, the third's agent connection drives it */
	char name[40], w3[400], tw[500], s3[80];
	snprintf(name, sizeof name, "%s3", f->dst.name);
	snprintf(s3, sizeof s3, "%s-on", session);
	snprintf(w3, sizeof w3, "%s/work-%s", f->dir, s3);
	snprintf(tw, sizeof tw, "%s/bundles/writer-m-m/stdout.log", w3);
	assert_int_equal(e2e_dest_start(&f->third, f->dir, name, NULL), 0);
	const char *a3[] = { "migrate", "--from", f->dst.sock, "--to", f->third.sock, "--workdir", w3,
			     "--quiet", "--session", s3, NULL };
	rc = e2e_lmctl(a3, out, 180000);
	t = e2e_slurp(out);
	printf("# qemu e2e: the pod's second hop: lmctl migrate exited %d\n%s", rc, t);
	free(t);
	if (rc) {
		e2e_shim_dump(&f->dst);
		e2e_shim_dump(&f->third);
	}
	assert_int_equal(rc, 0);
	assert_int_equal(e2e_state(&f->dst, "writer-m", NULL, NULL), E2E_NOT_FOUND);
	assert_int_equal(qemu_of(f->dst.pid), 0);
	assert_int_equal(qemu_of(f->third.pid), 1);
	assert_int_equal(e2e_state(&f->third, "writer-m-m", &pid, &st), 0);
	assert_int_equal(pid, pid_w);
	assert_int_equal(st, 2);
	bool tw_ok = wait_lines(tw, "lines ", 3, 60);
	if (!tw_ok)
		why_it_stopped(&f->third);
	assert_true(tw_ok);
	assert_one_stream(dw, tw, "lines ", false);
	assert_int_equal(task_kill(&f->third, "writer-m-m", 9), 0);
	assert_int_equal(task_wait(&f->third, "writer-m-m", &status), 0);
	assert_int_equal(status, 137);
	assert_int_equal(e2e_shim_stop(&f->third), 0);
}

/* Two containers that are real processes in the utility VM move with it:
 * the same guest PIDs, the counter's output goes on from where it was on
 * the other host (the two stdout files hold one stream: no reset, no
 * gap, no line twice), the file written before the move is there after,
 * and the destination's task service drives them (Kill, Wait with the
 * real exit status, Delete); then the pod moves on to a third host. */
static void test_a_pod_of_real_processes_moves_and_keeps_running(void **state)
{
	pod_moves(*state, "qemu-pod");
}

/* A destination whose copy of a container's layer differs from the
 * source's (another tree under the same --layer-map) refuses the source
 * at the handshake, before any page moved, saying that the disk images
 * differ; the source's container runs on, and no QEMU is left on the
 * destination. */
static void test_a_destination_with_other_layers_is_refused(void **state)
{
	struct fx *f = *state;
	char other[300], out[300], work[300], sw[400], map[700], rootfs[700];
	snprintf(other, sizeof other, "%s/other", f->dir);
	assert_int_equal(mkdir(other, 0700), 0);
	make_layers(other, "another-top", "writer", rootfs, sizeof rootfs);
	snprintf(map, sizeof map, "%s=%s", f->dir, other);
	snprintf(out, sizeof out, "%s/lmctl.out", f->dir);
	snprintf(work, sizeof work, "%s/work-layers", f->dir);
	snprintf(sw, sizeof sw, "%s/%s-state/writer/stdout", f->dir, f->src.name);
	assert_true(wait_lines(sw, "lines ", 2, 60));
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "qemu-layers", "--layer-map", map, NULL };
	int rc = e2e_lmctl(args, out, 180000);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: other layers: lmctl exited %d\n%s", rc, t);
	assert_int_equal(rc, 1);
	assert_non_null(strstr(t, "disk images differ"));
	assert_non_null(strstr(t, "rolled back"));
	free(t);
	uint32_t pid = 0;
	int st = 0;
	assert_int_equal(e2e_state(&f->src, "writer", &pid, &st), 0);
	assert_int_equal(st, 2);
	static long v[100000];
	size_t before = numbers_of(sw, "lines ", v, 100000);
	assert_true(wait_lines(sw, "lines ", before + 3, 30));    /* it goes on */
	uint64_t end = (uint64_t)time(NULL) + 10;
	while (qemu_of(f->dst.pid) && (uint64_t)time(NULL) < end)
		usleep(50000);
	assert_int_equal(qemu_of(f->dst.pid), 0);
	assert_int_equal(qemu_of(f->src.pid), 1);
}

/* A failure at each of lmctl's steps before the transfer (the export,
 * the import, the prepare, the socket: each fails like a failed call)
 * rolls back with the guest running on the source only, its counter
 * going on, no QEMU left on the destination; then the same pair migrates
 * the pod. */
static void test_a_failure_at_each_step_leaves_the_guest_on_the_source(void **state)
{
	struct fx *f = *state;
	char sc[400], out[300], work[400], session[32];
	snprintf(sc, sizeof sc, "%s/%s-state/counter/stdout", f->dir, f->src.name);
	snprintf(out, sizeof out, "%s/lmctl.out", f->dir);
	assert_true(wait_lines(sc, "", 5, 60));
	static const char *const steps[] = {"lmctl.export", "lmctl.import", "lmctl.prepare",
					    "lmctl.socket"};
	static long v[100000];
	for (size_t i = 0; i <= sizeof steps / sizeof steps[0]; i++) {
		bool last = i == sizeof steps / sizeof steps[0];
		snprintf(session, sizeof session, "qemu-step-%zu", i);
		snprintf(work, sizeof work, "%s/work-%s", f->dir, session);
		char faults[80];
		if (!last) {
			snprintf(faults, sizeof faults, "%s:errno=EIO", steps[i]);
			setenv("LM_FAULTS", faults, 1);
		}
		const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock,
				       "--workdir", work, "--quiet", "--session", session, NULL };
		int rc = e2e_lmctl(args, out, 180000);
		unsetenv("LM_FAULTS");
		char *t = e2e_slurp(out);
		printf("# qemu e2e: %s: lmctl exited %d\n%s", last ? "no fault" : steps[i], rc, t);
		free(t);
		if (last)
			break;
		assert_int_equal(rc, 1);
		/* the guest runs on the source, and only there */
		char st[32];
		int run = 0;
		assert_int_equal(props(&f->src, st, sizeof st, &run), 0);
		assert_true(run);
		assert_int_equal(qemu_of(f->src.pid), 1);
		uint64_t end = (uint64_t)time(NULL) + 10;
		while (qemu_of(f->dst.pid) && (uint64_t)time(NULL) < end)
			usleep(50000);
		assert_int_equal(qemu_of(f->dst.pid), 0);
		int cst = 0;
		assert_int_equal(e2e_state(&f->src, "counter", NULL, &cst), 0);
		assert_int_equal(cst, 2);
		size_t before = numbers_of(sc, "", v, 100000);
		assert_true(wait_lines(sc, "", before + 3, 30));      /* it goes on */
	}
	/* the pair still migrates */
	char dc[500];
	snprintf(dc, sizeof dc, "%s/bundles/counter-m/stdout.log", work);
	goes_on_at_the_destination(f, sc, dc);
	assert_int_equal(qemu_of(f->src.pid), 0);
	assert_int_equal(qemu_of(f->dst.pid), 1);
}

/* A bundle for task Create of `id` in `pod`: config.json runs `cmd` under
 * /bin/sh; its stdout is the bundle's "stdout" file. */
static void new_bundle(const char *dir, const char *id, const char *pod, const char *cmd,
		       char *bundle, size_t cap)
{
	snprintf(bundle, cap, "%s/b-%s", dir, id);
	assert_int_equal(mkdir(bundle, 0700), 0);
	char p[600];
	snprintf(p, sizeof p, "%s/config.json", bundle);
	json_t *cfg = json_pack("{s:s, s:{s:[s,s,s], s:[s], s:s}, s:{s:s}, s:{s:s, s:s}}",
				"ociVersion", "1.0.2", "process", "args", "/bin/sh", "-c", cmd, "env",
				"PATH=/bin", "cwd", "/", "root", "path", "rootfs", "annotations",
				"io.kubernetes.cri.container-type", "container",
				"io.kubernetes.cri.sandbox-id", pod);
	assert_int_equal(json_dump_file(cfg, p, 0), 0);
	json_decref(cfg);
}

/* task Create of `id` from `bundle` with an overlay of `lower` (top
 * first): 0 and its pid, or the code with the message printed. */
static int task_create_io(struct e2e_shim *s, const char *id, const char *bundle, const char *lower,
			  const char *in, bool terminal, uint32_t *pid, char *msg, size_t ml)
{
	char lo[700], out[600], err[600];
	snprintf(lo, sizeof lo, "lowerdir=%s", lower);
	snprintf(out, sizeof out, "%s/stdout", bundle);
	snprintf(err, sizeof err, "%s/stderr", bundle);
	char *opts[] = {lo, "upperdir=/unused", "workdir=/unused"};
	Containerd__Types__Mount m = CONTAINERD__TYPES__MOUNT__INIT;
	m.type = "overlay";
	m.source = "overlay";
	m.options = opts;
	m.n_options = 3;
	Containerd__Types__Mount *mp = &m;
	Containerd__Task__V2__CreateTaskRequest rq = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
	rq.id = (char *)id;
	rq.bundle = (char *)bundle;
	rq.rootfs = &mp;
	rq.n_rootfs = 1;
	rq.stdout = out;
	rq.stderr = err;
	rq.stdin = (char *)(in ? in : "");
	rq.terminal = terminal;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "containerd.task.v2.Task", "Create", &rq.base,
			  &containerd__task__v2__create_task_response__descriptor, &resp, msg, ml);
	if (!rc && pid)
		*pid = ((Containerd__Task__V2__CreateTaskResponse *)resp)->pid;
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	if (rc)
		printf("# Create %s: %d %s\n", id, rc, msg);
	return rc;
}

static int task_create(struct e2e_shim *s, const char *id, const char *bundle, const char *lower,
		       uint32_t *pid, char *msg, size_t ml)
{
	return task_create_io(s, id, bundle, lower, NULL, false, pid, msg, ml);
}

static int task_close_stdin(struct e2e_shim *s, const char *id)
{
	Containerd__Task__V2__CloseIORequest rq = CONTAINERD__TASK__V2__CLOSE_IOREQUEST__INIT;
	rq.id = (char *)id;
	rq.stdin = true;
	char msg[256] = "";
	int rc = e2e_call(s, "containerd.task.v2.Task", "CloseIO", &rq.base, NULL, NULL, msg, sizeof msg);
	if (rc)
		printf("# CloseIO %s: %d %s\n", id, rc, msg);
	return rc;
}

static int task_resize(struct e2e_shim *s, const char *id, uint32_t w, uint32_t h)
{
	Containerd__Task__V2__ResizePtyRequest rq = CONTAINERD__TASK__V2__RESIZE_PTY_REQUEST__INIT;
	rq.id = (char *)id;
	rq.width = w;
	rq.height = h;
	char msg[256] = "";
	int rc = e2e_call(s, "containerd.task.v2.Task", "ResizePty", &rq.base, NULL, NULL, msg, sizeof msg);
	if (rc)
		printf("# ResizePty %s: %d %s\n", id, rc, msg);
	return rc;
}

static int task_start(struct e2e_shim *s, const char *id)
{
	Containerd__Task__V2__StartRequest rq = CONTAINERD__TASK__V2__START_REQUEST__INIT;
	rq.id = (char *)id;
	char msg[256] = "";
	int rc = e2e_call(s, "containerd.task.v2.Task", "Start", &rq.base, NULL, NULL, msg, sizeof msg);
	if (rc)
		printf("# Start %s: %d %s\n", id, rc, msg);
	return rc;
}

/* Waits until the shim's log says it detached n disks in all. */
static bool wait_detached(struct e2e_shim *s, unsigned n, int timeout_ms)
{
	for (int waited = 0; waited < timeout_ms; waited += 50) {
		char *t = e2e_slurp(s->log);
		unsigned k = 0;
		for (const char *p = t; p && (p = strstr(p, "msg=\"disk detached\"")); p++)
			k++;
		free(t);
		if (k >= n)
			return true;
		usleep(50000);
	}
	return false;
}

#define NEW_CMD "i=0; while :; do echo $i $(cat /marker); i=$((i+1)); sleep 0.1; done"

/* task Create of a new container in the running utility VM: its two
 * layers are hot-plugged as disks, it is created (not started: no
 * output) and runs on Start, its top layer over its base; the pod moves
 * with it (the destination attaches its own copies of those layers in
 * the same slots) and it goes on there; a container created on the
 * destination after the move runs too; a bad process spec is refused by
 * name. */
static void test_task_create_of_a_new_container_in_the_running_vm(void **state)
{
	struct fx *f = *state;
	char rootfs[700], lower[700], b1[400], b2[400], b3[400], msg[512], ld[300];
	snprintf(ld, sizeof ld, "%s/fresh-layers", f->dir);
	assert_int_equal(mkdir(ld, 0700), 0);
	make_layers(ld, "fresh-top", "none", rootfs, sizeof rootfs);
	snprintf(lower, sizeof lower, "%s/ltop:%s/lbase", ld, ld);
	new_bundle(f->dir, "fresh", "pod1", NEW_CMD, b1, sizeof b1);
	uint32_t pid = 0, p2 = 0;
	int st = 0;
	assert_int_equal(task_create(&f->src, "fresh", b1, lower, &pid, msg, sizeof msg), 0);
	assert_true(pid > 1 && pid < 100000);
	assert_int_equal(e2e_state(&f->src, "fresh", &p2, &st), 0);
	assert_int_equal(st, 1);                                 /* created */
	assert_int_equal(p2, pid);
	char out[500];
	snprintf(out, sizeof out, "%s/stdout", b1);
	usleep(500000);
	char *t = e2e_slurp(out);
	assert_true(!t || !*t);                                   /* not started: silent */
	free(t);
	assert_int_equal(task_start(&f->src, "fresh"), 0);
	assert_int_equal(e2e_state(&f->src, "fresh", NULL, &st), 0);
	assert_int_equal(st, 2);
	assert_true(wait_lines(out, "", 5, 60));
	t = e2e_slurp(out);
	assert_non_null(strstr(t, " fresh-top"));
	free(t);

	/* a bad process: refused, naming it */
	new_bundle(f->dir, "badproc", "pod1", "true", b2, sizeof b2);
	char cfgp[500];
	snprintf(cfgp, sizeof cfgp, "%s/config.json", b2);
	FILE *fp = fopen(cfgp, "w");
	fputs("{\"process\":{\"args\":[]},\"annotations\":{\"io.kubernetes.cri.container-type\":"
	      "\"container\",\"io.kubernetes.cri.sandbox-id\":\"pod1\"}}", fp);
	fclose(fp);
	assert_int_equal(task_create(&f->src, "badproc", b2, lower, NULL, msg, sizeof msg),
			 3 /* InvalidArgument */);
	assert_non_null(strstr(msg, "process.args"));
	fp = fopen(cfgp, "w");
	fputs("{\"process\":{\"args\":[\"sh\"],\"terminal\":true,\"consoleSize\":{\"width\":0,"
	      "\"height\":24}},\"annotations\":{\"io.kubernetes.cri.container-type\":"
	      "\"container\",\"io.kubernetes.cri.sandbox-id\":\"pod1\"}}", fp);
	fclose(fp);
	assert_int_equal(task_create(&f->src, "badproc", b2, lower, NULL, msg, sizeof msg),
			 3 /* InvalidArgument */);
	assert_non_null(strstr(msg, "process.consoleSize"));

	/* stdout a FIFO with a reader, as containerd gives it: the lines come
	 * through it; with no reader, Create is refused naming the file, and
	 * the layers it attached are detached again */
	char b4[400], b5[400], fifo[500];
	new_bundle(f->dir, "piped", "pod1", NEW_CMD, b4, sizeof b4);
	snprintf(fifo, sizeof fifo, "%s/stdout", b4);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	int rfd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	assert_true(rfd >= 0);
	assert_int_equal(task_create(&f->src, "piped", b4, lower, NULL, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->src, "piped"), 0);
	char got[4096];
	size_t gl = 0;
	int nl = 0;
	for (int waited = 0; nl < 3 && waited < 60000 && gl + 1 < sizeof got; waited += 100) {
		struct pollfd pf = { rfd, POLLIN, 0 };
		if (poll(&pf, 1, 100) > 0) {
			ssize_t r = read(rfd, got + gl, sizeof got - 1 - gl);
			for (ssize_t i = 0; i < r; i++)
				nl += got[gl + (size_t)i] == '\n';
			if (r > 0)
				gl += (size_t)r;
		}
	}
	got[gl] = 0;
	printf("# qemu e2e: from the FIFO: %.60s...\n", got);
	assert_true(nl >= 3);
	assert_non_null(strstr(got, "0 fresh-top\n1 fresh-top\n"));
	uint32_t pst = 0;
	assert_int_equal(task_kill(&f->src, "piped", 9), 0);
	assert_int_equal(task_wait(&f->src, "piped", &pst), 0);
	assert_int_equal(pst, 137);
	assert_int_equal(task_delete(&f->src, "piped"), 0);
	close(rfd);
	new_bundle(f->dir, "noreader", "pod1", NEW_CMD, b5, sizeof b5);
	snprintf(fifo, sizeof fifo, "%s/stdout", b5);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_not_equal(task_create(&f->src, "noreader", b5, lower, NULL, msg, sizeof msg), 0);
	assert_non_null(strstr(msg, fifo));
	assert_non_null(strstr(msg, "No such device or address"));
	assert_int_equal(e2e_state(&f->src, "noreader", NULL, NULL), E2E_NOT_FOUND);
	/* (an export waits for no detach: let them finish) */
	assert_true(wait_detached(&f->src, 4, 30000));

	/* the pod moves, the new container with it */
	char work[300], lout[300];
	snprintf(work, sizeof work, "%s/work-new", f->dir);
	snprintf(lout, sizeof lout, "%s/lmctl.out", f->dir);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "qemu-new", NULL };
	int rc = e2e_lmctl(args, lout, 180000);
	t = e2e_slurp(lout);
	printf("# qemu e2e: migrate with a created container exited %d\n%s", rc, t);
	free(t);
	if (rc) {
		e2e_shim_dump(&f->src);
		e2e_shim_dump(&f->dst);
	}
	assert_int_equal(rc, 0);
	assert_int_equal(e2e_state(&f->dst, "fresh-m", &p2, &st), 0);
	assert_int_equal(p2, pid);
	char dout[500];
	snprintf(dout, sizeof dout, "%s/bundles/fresh-m/stdout.log", work);
	goes_on_at_the_destination(f, out, dout);
	t = e2e_slurp(dout);
	assert_non_null(strstr(t, " fresh-top"));
	free(t);

	/* a container created in the VM on its new host (the pod is named
	 * after its sandbox container's new ID there) */
	new_bundle(f->dir, "late", "sandbox-m", NEW_CMD, b3, sizeof b3);
	/* (its first try meets the destination's failing hot-plug: refused,
	 * saying which layer and why, and nothing of it stays) */
	assert_int_equal(task_create(&f->dst, "late", b3, lower, &pid, msg, sizeof msg),
			 13 /* Internal: EIO */);
	printf("# qemu e2e: Create with a failing hot-plug: %s\n", msg);
	assert_non_null(strstr(msg, "layer 0"));
	assert_non_null(strstr(msg, "disk add failed (fault)"));
	assert_int_equal(e2e_state(&f->dst, "late", NULL, NULL), E2E_NOT_FOUND);
	assert_int_equal(task_create(&f->dst, "late", b3, lower, &pid, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->dst, "late"), 0);
	snprintf(out, sizeof out, "%s/stdout", b3);
	assert_true(wait_lines(out, "", 5, 60));
	/* ... and again under the same ID once deleted, and again: a deleted
	 * container's disks are detached, so more Creates than the VM has
	 * disk slots (15) succeed */
	unsigned detached = 0;
	for (int round = 0; round < 9; round++) {
		uint32_t status = 0;
		assert_int_equal(task_kill(&f->dst, "late", 9), 0);
		assert_int_equal(task_wait(&f->dst, "late", &status), 0);
		assert_int_equal(status, 137);
		assert_int_equal(task_delete(&f->dst, "late"), 0);
		detached += 2;
		if (round == 8) {
			/* the last: deleted, for the move below; the first of its
			 * two detaches fails (the fault): that disk stays */
			assert_true(wait_detached(&f->dst, detached - 1, 30000));
			usleep(500000);
			t = e2e_slurp(f->dst.log);
			assert_non_null(strstr(t, "a deleted container's disk stays attached"));
			free(t);
			assert_false(wait_detached(&f->dst, detached, 50));
			break;
		}
		assert_int_equal(unlink(out), 0);
		int crc = task_create(&f->dst, "late", b3, lower, &p2, msg, sizeof msg);
		if (crc)
			printf("# round %d: Create late: %d %s\n", round, crc, msg);
		assert_int_equal(crc, 0);
		assert_int_equal(task_start(&f->dst, "late"), 0);
		assert_true(wait_lines(out, "", 2, 60));
		t = e2e_slurp(out);
		assert_non_null(strstr(t, " fresh-top"));
		free(t);
	}
	printf("# qemu e2e: 10 Creates of two layers each in one VM, %u disks detached\n", detached);

	/* the VM, its disks in the slots they kept, moves on to a third host:
	 * the export is refused at first, naming the disk left attached (no
	 * destination could rebuild the VM with it), which the source
	 * detaches again meanwhile; lmctl waits for it, and the VM moves */
	char name[40], w3[400], tout[500];
	snprintf(name, sizeof name, "%s3", f->dst.name);
	snprintf(w3, sizeof w3, "%s/work-new-on", f->dir);
	snprintf(tout, sizeof tout, "%s/bundles/fresh-m-m/stdout.log", w3);
	assert_int_equal(e2e_dest_start(&f->third, f->dir, name, NULL), 0);
	const char *a3[] = { "migrate", "--from", f->dst.sock, "--to", f->third.sock, "--workdir", w3,
			     "--quiet", "--session", "qemu-new-on", NULL };
	rc = e2e_lmctl(a3, lout, 180000);
	t = e2e_slurp(lout);
	printf("# qemu e2e: after the deletes, migrate on exited %d\n%s", rc, t);
	assert_non_null(strstr(t, "not ready to export yet"));
	assert_non_null(strstr(t, "of a deleted container is still attached to the VM"));
	free(t);
	t = e2e_slurp(f->dst.log);
	assert_non_null(strstr(t, "detaching a deleted container's disk again"));
	free(t);
	assert_true(wait_detached(&f->dst, detached, 1000));
	if (rc) {
		e2e_shim_dump(&f->dst);
		e2e_shim_dump(&f->third);
	}
	assert_int_equal(rc, 0);
	bool ok = wait_lines(tout, "", 5, 60);
	if (!ok)
		why_it_stopped(&f->third);
	assert_true(ok);
	assert_one_stream(dout, tout, "", false);
	assert_int_equal(e2e_shim_stop(&f->third), 0);
}

/* A container's stdin is containerd's FIFO: what is written reaches its
 * init, and the FIFO's end (the writer closed) closes its stdin, so `cat`
 * ends with 0; CloseIO ends it while the writer still holds the FIFO; a
 * terminal container starts at 80x24 (its config.json gives no
 * consoleSize) and ResizePty is its pty's new size. */
static void test_a_container_reads_its_stdin_and_its_terminal_resizes(void **state)
{
	struct fx *f = *state;
	char rootfs[700], lower[700], ld[300], msg[512];
	snprintf(ld, sizeof ld, "%s/io-layers", f->dir);
	assert_int_equal(mkdir(ld, 0700), 0);
	make_layers(ld, "io-top", "none", rootfs, sizeof rootfs);
	snprintf(lower, sizeof lower, "%s/ltop:%s/lbase", ld, ld);
	char b1[400], b2[400], b3[400], in1[500], in2[500], in3[500], o1[500], o2[500], o3[500];
	new_bundle(f->dir, "reader", "pod1", "cat; echo cat-ended $?", b1, sizeof b1);
	new_bundle(f->dir, "closer", "pod1", "cat; echo cat-ended $?", b2, sizeof b2);
	new_bundle(f->dir, "tty", "pod1", "while :; do echo size $(stty size); sleep 0.2; done", b3,
		   sizeof b3);
	snprintf(in1, sizeof in1, "%s/stdin", b1);
	snprintf(in2, sizeof in2, "%s/stdin", b2);
	snprintf(in3, sizeof in3, "%s/stdin", b3);
	snprintf(o1, sizeof o1, "%s/stdout", b1);
	snprintf(o2, sizeof o2, "%s/stdout", b2);
	snprintf(o3, sizeof o3, "%s/stdout", b3);
	assert_int_equal(mkfifo(in1, 0600), 0);
	assert_int_equal(mkfifo(in2, 0600), 0);
	assert_int_equal(mkfifo(in3, 0600), 0);

	/* the writer goes away: the end of stdin */
	assert_int_equal(task_create_io(&f->src, "reader", b1, lower, in1, false, NULL, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->src, "reader"), 0);
	int w1 = open(in1, O_WRONLY | O_CLOEXEC);      /* the shim reads it: no wait */
	assert_true(w1 >= 0);
	assert_int_equal(write(w1, "hello stdin\n", 12), 12);
	assert_true(wait_lines(o1, "hello stdin", 1, 60));
	assert_int_equal(write(w1, "more\n", 5), 5);
	assert_true(wait_lines(o1, "more", 1, 60));
	close(w1);
	uint32_t status = 99;
	assert_int_equal(task_wait(&f->src, "reader", &status), 0);
	assert_int_equal(status, 0);
	assert_true(wait_lines(o1, "cat-ended 0", 1, 10));

	/* CloseIO while the writer holds on */
	assert_int_equal(task_create_io(&f->src, "closer", b2, lower, in2, false, NULL, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->src, "closer"), 0);
	int w2 = open(in2, O_WRONLY | O_CLOEXEC);
	assert_true(w2 >= 0);
	assert_int_equal(write(w2, "before close\n", 13), 13);
	assert_true(wait_lines(o2, "before close", 1, 60));
	assert_int_equal(task_close_stdin(&f->src, "closer"), 0);
	status = 99;
	assert_int_equal(task_wait(&f->src, "closer", &status), 0);
	assert_int_equal(status, 0);
	close(w2);
	/* a container without stdin has none to close; nor a terminal */
	assert_int_equal(task_close_stdin(&f->src, "counter"), 9 /* FailedPrecondition */);
	assert_int_equal(task_resize(&f->src, "counter", 80, 25), 9);

	/* a terminal: ResizePty changes what stty sees */
	assert_int_equal(task_create_io(&f->src, "tty", b3, lower, in3, true, NULL, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->src, "tty"), 0);
	if (!wait_lines(o3, "size 24 80", 2, 60)) {     /* no consoleSize: 80x24 */
		char *t = e2e_slurp(o3);
		printf("# the terminal's output: [%s]\n", t ? t : "(none)");
		free(t);
		e2e_shim_dump(&f->src);
		fail_msg("no size lines from the terminal container");
	}
	assert_int_equal(task_resize(&f->src, "tty", 100, 40), 0);
	assert_true(wait_lines(o3, "size 40 100", 1, 30));
	assert_int_equal(task_resize(&f->src, "tty", 0, 40), 3 /* InvalidArgument */);
	assert_int_equal(task_kill(&f->src, "tty", 9), 0);
	assert_int_equal(task_wait(&f->src, "tty", &status), 0);
	assert_int_equal(status, 137);
	assert_int_equal(task_resize(&f->src, "tty", 80, 25), 9);   /* not running */
}

/* The stdin of a container that migrates: a writer thread feeds a FIFO
 * with a known byte stream until told to stop. */
struct feeder {
	const char *path;
	const uint8_t *data;
	size_t len, written;
	int fd;
	atomic_int stop;
	pthread_t th;
};

static void *feed_main(void *arg)
{
	struct feeder *fd = arg;
	while (fd->written < fd->len && !atomic_load(&fd->stop)) {
		struct pollfd q = { fd->fd, POLLOUT, 0 };
		if (poll(&q, 1, 50) <= 0)
			continue;
		ssize_t n = write(fd->fd, fd->data + fd->written, fd->len - fd->written);
		if (n > 0)
			fd->written += (size_t)n;
		else if (n < 0 && errno == EPIPE)
			break;      /* no reader any more (a failure: the test says so) */
	}
	return NULL;
}

/* Every byte written to a migrating container's stdin is read by it once
 * or still in the source's FIFO: none is lost between the source shim's
 * read and the agent (the source's pump hands what it read to the agent,
 * in guest memory, before the guest leaves), none is read twice. The
 * container cats its stdin after 2 s, so when the copy starts the agent's
 * buffer is full and the pump holds bytes it read. */
static void test_stdin_moves_with_its_container_exactly_once(void **state)
{
	struct fx *f = *state;
	char rootfs[700], lower[700], ld[300], msg[512], b[400], in[500], so[500], work[400], dso[600],
	     lout[500];
	snprintf(ld, sizeof ld, "%s/sink-layers", f->dir);
	assert_int_equal(mkdir(ld, 0700), 0);
	make_layers(ld, "sink-top", "none", rootfs, sizeof rootfs);
	snprintf(lower, sizeof lower, "%s/ltop:%s/lbase", ld, ld);
	new_bundle(f->dir, "sink", "pod1", "sleep 2; cat", b, sizeof b);
	snprintf(in, sizeof in, "%s/stdin", b);
	snprintf(so, sizeof so, "%s/stdout", b);
	assert_int_equal(mkfifo(in, 0600), 0);
	/* 1.25 MiB of numbered lines: more than the agent holds (1 MiB) plus
	 * the FIFO and one read of the pump */
	size_t len = 163840 * 8;
	char *data = malloc(len + 1);
	assert_non_null(data);
	for (size_t i = 0; i < len / 8; i++)
		snprintf(data + i * 8, 9, "%07zu\n", i);
	assert_int_equal(task_create_io(&f->src, "sink", b, lower, in, false, NULL, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->src, "sink"), 0);
	static struct feeder fd;   /* static: outlives a failed test's frame */
	memset(&fd, 0, sizeof fd);
	fd.path = in;
	fd.data = (const uint8_t *)data;
	fd.len = len;
	fd.fd = open(in, O_WRONLY | O_NONBLOCK | O_CLOEXEC);   /* the shim reads it */
	assert_true(fd.fd >= 0);
	assert_int_equal(pthread_create(&fd.th, NULL, feed_main, &fd), 0);
	snprintf(work, sizeof work, "%s/work-stdin", f->dir);
	snprintf(lout, sizeof lout, "%s/lmctl-stdin.out", f->dir);
	snprintf(dso, sizeof dso, "%s/bundles/sink-m/stdout.log", work);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "stdin-moves", NULL };
	int rc = e2e_lmctl(args, lout, 180000);
	atomic_store(&fd.stop, 1);
	pthread_join(fd.th, NULL);
	char *t = e2e_slurp(lout);
	printf("# qemu e2e: migrate with stdin in flight exited %d (%zu bytes written)\n%s", rc, fd.written,
	       t ? t : "");
	free(t);
	if (rc) {
		e2e_shim_dump(&f->src);
		e2e_shim_dump(&f->dst);
	}
	assert_int_equal(rc, 0);
	/* what no one read is still in the source's FIFO */
	int rd = open(in, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	assert_true(rd >= 0);
	close(fd.fd);
	size_t rest = 0;
	char *restb = malloc(len);
	for (;;) {
		ssize_t n = read(rd, restb + rest, len - rest);
		if (n <= 0)
			break;
		rest += (size_t)n;
	}
	close(rd);
	/* the destination's cat reads what the agent holds: its output
	 * settles */
	struct stat st1, st2;
	off_t last = -1;
	for (int i = 0; i < 120; i++) {
		off_t a = stat(so, &st1) == 0 ? st1.st_size : 0, c = stat(dso, &st2) == 0 ? st2.st_size : 0;
		if (a + c == last && (size_t)(a + c) + rest >= fd.written)
			break;
		last = a + c;
		usleep(500000);
	}
	char *o1 = e2e_slurp(so), *o2 = e2e_slurp(dso);
	size_t l1 = o1 ? strlen(o1) : 0, l2 = o2 ? strlen(o2) : 0;
	printf("# stdin: %zu bytes written, read by the container %zu on the source + %zu on the destination, "
	       "%zu left in the source's FIFO\n", fd.written, l1, l2, rest);
	assert_int_equal(l1 + l2 + rest, fd.written);
	assert_true(l1 + l2 > 0);
	if (l1 + l2 <= (1u << 20))   /* (the copy began before the agent's buffer filled) */
		printf("# stdin: the agent's buffer was not full at the copy's start this time\n");
	assert_memory_equal(o1 ? o1 : "", data, l1);
	assert_memory_equal(o2 ? o2 : "", data + l1, l2);
	assert_memory_equal(restb, data + l1 + l2, rest);
	free(o1);
	free(o2);
	free(restb);
	free(data);
}

/* task Exec of process `xid` in container `id` running `cmd` under sh,
 * its stdout to `out`: 0 or the code (message printed). */
static int task_exec(struct e2e_shim *s, const char *id, const char *xid, const char *cmd, const char *out,
		     char *msg, size_t ml)
{
	json_t *p = json_pack("{s:[s,s,s], s:[s], s:s}", "args", "/bin/sh", "-c", cmd, "env", "PATH=/bin",
			      "cwd", "/");
	char *js = json_dumps(p, JSON_COMPACT);
	json_decref(p);
	Google__Protobuf__Any spec = GOOGLE__PROTOBUF__ANY__INIT;
	spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process";
	spec.value.data = (uint8_t *)js;
	spec.value.len = strlen(js);
	Containerd__Task__V2__ExecProcessRequest rq = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
	rq.id = (char *)id;
	rq.exec_id = (char *)xid;
	rq.stdout = (char *)out;
	rq.spec = &spec;
	int rc = e2e_call(s, "containerd.task.v2.Task", "Exec", &rq.base, NULL, NULL, msg, ml);
	free(js);
	if (rc)
		printf("# Exec %s/%s: %d %s\n", id, xid, rc, msg);
	return rc;
}

/* A call about exec'd process xid of id: Start (*pid), Wait (*status),
 * Kill (sig), Delete (*status), State (*status: its containerd state,
 * *pid). 0 or the code, the message printed. */
static int exec_do(struct e2e_shim *s, const char *method, const char *id, const char *xid, uint32_t sig,
		   uint32_t *pid, uint32_t *status, char *msg, size_t ml)
{
	ProtobufCMessage *resp = NULL;
	const ProtobufCMessageDescriptor *d = NULL;
	int rc;
	if (!strcmp(method, "Kill")) {
		Containerd__Task__V2__KillRequest rq = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
		rq.id = (char *)id;
		rq.exec_id = (char *)xid;
		rq.signal = sig;
		rc = e2e_call(s, "containerd.task.v2.Task", method, &rq.base, NULL, NULL, msg, ml);
	} else {
		/* Start, Wait, Delete and State requests share fields 1 and 2 */
		Containerd__Task__V2__StateRequest rq = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
		rq.id = (char *)id;
		rq.exec_id = (char *)xid;
		d = !strcmp(method, "Start") ? &containerd__task__v2__start_response__descriptor
		  : !strcmp(method, "Wait") ? &containerd__task__v2__wait_response__descriptor
		  : !strcmp(method, "Delete") ? &containerd__task__v2__delete_response__descriptor
		  : &containerd__task__v2__state_response__descriptor;
		rc = e2e_call(s, "containerd.task.v2.Task", method, &rq.base, d, &resp, msg, ml);
	}
	if (!rc && resp) {
		if (d == &containerd__task__v2__start_response__descriptor && pid)
			*pid = ((Containerd__Task__V2__StartResponse *)resp)->pid;
		if (d == &containerd__task__v2__wait_response__descriptor && status)
			*status = ((Containerd__Task__V2__WaitResponse *)resp)->exit_status;
		if (d == &containerd__task__v2__delete_response__descriptor && status)
			*status = ((Containerd__Task__V2__DeleteResponse *)resp)->exit_status;
		if (d == &containerd__task__v2__state_response__descriptor) {
			if (status)
				*status = ((Containerd__Task__V2__StateResponse *)resp)->status;
			if (pid)
				*pid = ((Containerd__Task__V2__StateResponse *)resp)->pid;
		}
	}
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	if (rc)
		printf("# %s %s/%s: %d %s\n", method, id, xid, rc, msg);
	return rc;
}

static bool has_pid(struct e2e_shim *s, const char *id, uint32_t pid)
{
	uint32_t pids[64];
	int n = task_pids(s, id, pids, 64);
	for (int i = 0; i < n && i < 64; i++)
		if (pids[i] == pid)
			return true;
	return false;
}

#define EXEC_COUNTER "i=0; while :; do echo x $i; i=$((i+1)); sleep 0.1; done"

/* task Exec in a running container: the process is created, runs on
 * Start inside the container (its PID among the container's), its output
 * goes to its own file, its exit status is Wait's, and Delete forgets
 * it; a program that does not exist fails the Start by name. A process
 * exec'd on the source moves with the pod: same PID on the destination,
 * its output goes on there (one stream across the two hosts), and Kill,
 * Wait and Delete work there. */
static void test_exec_runs_in_a_container_and_moves_with_it(void **state)
{
	struct fx *f = *state;
	char msg[512], o1[400], o2[400], o3[400];
	uint32_t pid = 0, pid2 = 0, status = 99;
	snprintf(o1, sizeof o1, "%s/x1.out", f->dir);
	snprintf(o2, sizeof o2, "%s/x2.out", f->dir);
	snprintf(o3, sizeof o3, "%s/x3.out", f->dir);
	assert_int_equal(task_exec(&f->src, "counter", "x1", "echo exec-says $(hostname); exit 3", o1, msg,
				   sizeof msg), 0);
	assert_int_equal(exec_do(&f->src, "State", "counter", "x1", 0, &pid, &status, msg, sizeof msg), 0);
	assert_int_equal(status, 1);                       /* created: not run yet */
	assert_int_equal(pid, 0);
	assert_int_equal(task_exec(&f->src, "counter", "x1", "true", o1, msg, sizeof msg), 6 /* AlreadyExists */);
	assert_int_equal(exec_do(&f->src, "Start", "counter", "x1", 0, &pid, NULL, msg, sizeof msg), 0);
	assert_true(pid > 1 && pid < 100000);
	assert_int_equal(exec_do(&f->src, "Wait", "counter", "x1", 0, NULL, &status, msg, sizeof msg), 0);
	assert_int_equal(status, 3);
	char *t = e2e_slurp(o1);
	printf("# qemu e2e: exec x1 (pid %u) said: %s", pid, t ? t : "(nothing)\n");
	assert_non_null(t);
	assert_non_null(strstr(t, "exec-says counter"));  /* the container's UTS namespace */
	free(t);
	assert_int_equal(exec_do(&f->src, "Delete", "counter", "x1", 0, NULL, &status, msg, sizeof msg), 0);
	assert_int_equal(status, 3);
	assert_int_equal(exec_do(&f->src, "State", "counter", "x1", 0, NULL, NULL, msg, sizeof msg),
			 5 /* NotFound */);
	/* no such program: the Start fails, naming the exec; it can go */
	Google__Protobuf__Any bad = GOOGLE__PROTOBUF__ANY__INIT;
	bad.value.data = (uint8_t *)"{\"args\":[\"/no/such/program\"]}";
	bad.value.len = strlen((const char *)bad.value.data);
	Containerd__Task__V2__ExecProcessRequest xr = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
	xr.id = "counter";
	xr.exec_id = "x3";
	xr.stdout = o3;
	xr.spec = &bad;
	assert_int_equal(e2e_call(&f->src, "containerd.task.v2.Task", "Exec", &xr.base, NULL, NULL, msg,
				  sizeof msg), 0);
	assert_int_not_equal(exec_do(&f->src, "Start", "counter", "x3", 0, NULL, NULL, msg, sizeof msg), 0);
	printf("# qemu e2e: Start of a missing program: %s\n", msg);
	assert_non_null(strstr(msg, "x3"));
	assert_int_equal(exec_do(&f->src, "Delete", "counter", "x3", 0, NULL, NULL, msg, sizeof msg), 0);

	/* a process that runs on, and moves */
	assert_int_equal(task_exec(&f->src, "counter", "x2", EXEC_COUNTER, o2, msg, sizeof msg), 0);
	assert_int_equal(exec_do(&f->src, "Start", "counter", "x2", 0, &pid, NULL, msg, sizeof msg), 0);
	assert_true(wait_lines(o2, "x ", 5, 60));
	assert_true(has_pid(&f->src, "counter", pid));     /* in the container's PID namespace */
	char work[300], lout[300], dout[500];
	snprintf(work, sizeof work, "%s/work-exec", f->dir);
	snprintf(lout, sizeof lout, "%s/lmctl.out", f->dir);
	snprintf(dout, sizeof dout, "%s/bundles/counter-m/exec-x2.stdout", work);
	const char *args[] = { "migrate", "--from", f->src.sock, "--to", f->dst.sock, "--workdir", work,
			       "--quiet", "--session", "qemu-exec", NULL };
	int rc = e2e_lmctl(args, lout, 180000);
	t = e2e_slurp(lout);
	printf("# qemu e2e: migrate with an exec'd process exited %d\n%s", rc, t);
	free(t);
	if (rc) {
		e2e_shim_dump(&f->src);
		e2e_shim_dump(&f->dst);
	}
	assert_int_equal(rc, 0);
	assert_int_equal(exec_do(&f->dst, "State", "counter-m", "x2", 0, &pid2, &status, msg, sizeof msg), 0);
	assert_int_equal(status, 2);                       /* running */
	assert_int_equal(pid2, pid);                       /* the same process */
	bool ok = wait_lines(dout, "x ", 5, 60);
	if (!ok)
		why_it_stopped(&f->dst);
	assert_true(ok);
	assert_one_stream(o2, dout, "x ", true);
	assert_true(has_pid(&f->dst, "counter-m", pid));
	assert_int_equal(exec_do(&f->dst, "Kill", "counter-m", "x2", 15, NULL, NULL, msg, sizeof msg), 0);
	assert_int_equal(exec_do(&f->dst, "Wait", "counter-m", "x2", 0, NULL, &status, msg, sizeof msg), 0);
	assert_int_equal(status, 143);
	assert_int_equal(exec_do(&f->dst, "Delete", "counter-m", "x2", 0, NULL, NULL, msg, sizeof msg), 0);
	/* the container itself runs on */
	int st = 0;
	assert_int_equal(e2e_state(&f->dst, "counter-m", NULL, &st), 0);
	assert_int_equal(st, 2);
}

/* ---- a shim whose first Create boots the VM (as containerd starts it) ---- */

static int setup_boot(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	e2e_tmpdir(f->dir);
	const char *args[] = { "--idle", "--backend", "qemu", "--boot-on-create", NULL };
	/* its first VM start fails (fault point hcs.start) */
	if (e2e_shim_start(&f->src, f->dir, "qboot", NULL, "hcs.start:errno=EIO:times=1", args) < 0) {
		e2e_rmdir(f->dir);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

/* A lone container's bundle (no pod annotations) running `cmd`, with a
 * memory limit of `limit_mib` and a CPU quota of 1.5 CPUs. */
static void lone_bundle(const char *dir, const char *id, const char *cmd, unsigned limit_mib, char *bundle,
			size_t cap)
{
	snprintf(bundle, cap, "%s/b-%s", dir, id);
	assert_int_equal(mkdir(bundle, 0700), 0);
	char p[600];
	snprintf(p, sizeof p, "%s/config.json", bundle);
	json_t *cfg = json_pack("{s:s, s:{s:[s,s,s], s:[s], s:s}, s:{s:s}, s:{s:{s:{s:I}, s:{s:I, s:I}}}}",
				"ociVersion", "1.0.2", "process", "args", "/bin/sh", "-c", cmd, "env",
				"PATH=/bin", "cwd", "/", "root", "path", "rootfs", "linux", "resources",
				"memory", "limit", (json_int_t)limit_mib << 20, "cpu", "quota",
				(json_int_t)150000, "period", (json_int_t)100000);
	assert_int_equal(json_dump_file(cfg, p, 0), 0);
	json_decref(cfg);
}

/* Whether QEMU's command line (pid) has `flag` followed by `value`. */
static bool qemu_arg(pid_t pid, const char *flag, const char *value)
{
	char p[64], buf[8192];
	snprintf(p, sizeof p, "/proc/%d/cmdline", (int)pid);
	FILE *fp = fopen(p, "r");
	if (!fp)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, fp);
	fclose(fp);
	buf[n] = 0;
	for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
		if (!strcmp(buf + i, flag) && i + strlen(flag) + 1 < n)
			return !strcmp(buf + i + strlen(flag) + 1, value);
	return false;
}

/* The shim containerd starts has no VM until a task Create: the first
 * Create boots the utility VM sized by the container's OCI resources
 * (256 MiB + its 64 MiB limit, 2 vCPUs for a quota of 1.5), then creates
 * the container in it; a VM that fails to start fails that Create by
 * name and leaves no QEMU, and the next Create boots it; the last Delete
 * and Shutdown stop the shim and its VM. */
static void test_the_first_create_boots_the_sandbox_vm(void **state)
{
	struct fx *f = *state;
	char rootfs[700], lower[700], ld[300], msg[512], b1[400], b2[400], out[500];
	snprintf(ld, sizeof ld, "%s/boot-layers", f->dir);
	assert_int_equal(mkdir(ld, 0700), 0);
	make_layers(ld, "boot-top", "none", rootfs, sizeof rootfs);
	snprintf(lower, sizeof lower, "%s/ltop:%s/lbase", ld, ld);
	lone_bundle(f->dir, "solo", "echo hi from $(hostname) $(cat /marker); exit 7", 64, b1, sizeof b1);
	assert_int_equal(qemu_of(f->src.pid), 0);          /* no VM yet */
	uint32_t pid = 0, status = 0;
	int rc = task_create(&f->src, "solo", b1, lower, &pid, msg, sizeof msg);
	printf("# qemu e2e: the first Create with a failing VM start: %d %s\n", rc, msg);
	assert_int_not_equal(rc, 0);
	assert_non_null(strstr(msg, "booting the sandbox VM"));
	for (int i = 0; i < 100 && qemu_of(f->src.pid); i++)
		usleep(100000);
	assert_int_equal(qemu_of(f->src.pid), 0);          /* nothing left of it */
	assert_int_equal(e2e_state(&f->src, "solo", NULL, NULL), E2E_NOT_FOUND);
	assert_int_equal(task_create(&f->src, "solo", b1, lower, &pid, msg, sizeof msg), 0);
	assert_true(pid > 1);
	pid_t q = 0;
	assert_int_equal(qemu_of_pid(f->src.pid, &q), 1);
	assert_true(qemu_arg(q, "-m", "320"));
	assert_true(qemu_arg(q, "-smp", "2"));
	assert_int_equal(task_start(&f->src, "solo"), 0);
	assert_int_equal(task_wait(&f->src, "solo", &status), 0);
	assert_int_equal(status, 7);
	snprintf(out, sizeof out, "%s/stdout", b1);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: the booted container said: %s", t);
	assert_non_null(strstr(t, "hi from solo boot-top"));
	free(t);
	/* a second container joins the running VM */
	lone_bundle(f->dir, "solo2", "echo second; exit 0", 16, b2, sizeof b2);
	assert_int_equal(task_create(&f->src, "solo2", b2, lower, NULL, msg, sizeof msg), 0);
	assert_int_equal(qemu_of(f->src.pid), 1);
	assert_int_equal(task_start(&f->src, "solo2"), 0);
	assert_int_equal(task_wait(&f->src, "solo2", &status), 0);
	assert_int_equal(status, 0);
	assert_int_equal(task_delete(&f->src, "solo2"), 0);
	assert_int_equal(task_delete(&f->src, "solo"), 0);
	/* containerd's Shutdown after the last Delete: the shim goes, its VM too */
	Containerd__Task__V2__ShutdownRequest sd = CONTAINERD__TASK__V2__SHUTDOWN_REQUEST__INIT;
	sd.id = "solo";
	assert_int_equal(e2e_call(&f->src, "containerd.task.v2.Task", "Shutdown", &sd.base, NULL, NULL, msg,
				  sizeof msg), 0);
	pid_t sp = f->src.pid;
	assert_int_equal(e2e_wait(sp, 20000), 0);
	f->src.pid = 0;
	assert_int_equal(qemu_of(sp), 0);
	assert_false(leftover_qemu());
}

/* ---- containerd's sandbox API (containerd.runtime.sandbox.v1) ------------ */

#define SBX "containerd.runtime.sandbox.v1.Sandbox"

/* A sandbox API call whose request is just {sandbox_id = id}: the code
 * (message in msg), the response in *resp when rdesc is given. */
static int sbx_call(struct e2e_shim *s, const char *method, const char *id,
		    const ProtobufCMessageDescriptor *rdesc, ProtobufCMessage **resp, char *msg, size_t ml)
{
	Containerd__Runtime__Sandbox__V1__PingRequest rq = CONTAINERD__RUNTIME__SANDBOX__V1__PING_REQUEST__INIT;
	rq.sandbox_id = (char *)id;   /* every request's field 1 */
	int rc = e2e_call(s, SBX, method, &rq.base, rdesc, resp, msg, ml);
	if (rc)
		printf("# %s %s: %d %s\n", method, id, rc, msg);
	return rc;
}

struct sbx_waiter {
	struct e2e_shim s;            /* its own connection */
	int rc;
	uint32_t status;
	uint64_t exited_s;
};

static void *sbx_wait_main(void *arg)
{
	struct sbx_waiter *w = arg;
	char msg[256];
	ProtobufCMessage *r = NULL;
	w->rc = sbx_call(&w->s, "WaitSandbox", "sb1", &containerd__runtime__sandbox__v1__wait_sandbox_response__descriptor,
			 &r, msg, sizeof msg);
	if (!w->rc) {
		Containerd__Runtime__Sandbox__V1__WaitSandboxResponse *x = (void *)r;
		w->status = x->exit_status;
		w->exited_s = x->exited_at ? (uint64_t)x->exited_at->seconds : 0;
		protobuf_c_message_free_unpacked(r, NULL);
	}
	return NULL;
}

static int setup_sandbox_api(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	e2e_tmpdir(f->dir);
	const char *args[] = { "--idle", "--backend", "qemu", "--boot-on-create", NULL };
	if (e2e_shim_start(&f->src, f->dir, "qsbx", NULL, NULL, args) < 0) {
		e2e_rmdir(f->dir);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

/* containerd 1.7's sandbox API, with our own client: CreateSandbox names
 * the shim's one sandbox (a second is refused), StartSandbox boots its
 * VM and answers QEMU's pid, Status/Ping/Platform/Metrics look at it (the
 * metrics are QEMU's own CPU and memory), a pod's container joins it,
 * StopSandbox stops the VM and what runs in it (a WaitSandbox parked
 * before is answered), it never starts again, ShutdownSandbox ends the
 * shim. Calls before CreateSandbox or for another ID are NotFound. */
static void test_the_sandbox_api_runs_the_vm(void **state)
{
	struct fx *f = *state;
	char msg[512];
	ProtobufCMessage *r = NULL;
	assert_int_equal(sbx_call(&f->src, "StartSandbox", "sb1", NULL, NULL, msg, sizeof msg), E2E_NOT_FOUND);
	assert_non_null(strstr(msg, "no CreateSandbox yet"));
	Containerd__Runtime__Sandbox__V1__CreateSandboxRequest cr =
		CONTAINERD__RUNTIME__SANDBOX__V1__CREATE_SANDBOX_REQUEST__INIT;
	cr.sandbox_id = "";
	assert_int_equal(e2e_call(&f->src, SBX, "CreateSandbox", &cr.base, NULL, NULL, msg, sizeof msg), E2E_INVALID);
	cr.sandbox_id = "sb1";
	cr.netns_path = "/run/netns/sb1";
	assert_int_equal(e2e_call(&f->src, SBX, "CreateSandbox", &cr.base, NULL, NULL, msg, sizeof msg), 0);
	cr.sandbox_id = "sb2";
	assert_int_equal(e2e_call(&f->src, SBX, "CreateSandbox", &cr.base, NULL, NULL, msg, sizeof msg), E2E_EXISTS);
	assert_non_null(strstr(msg, "this shim serves sandbox \"sb1\""));
	assert_int_equal(sbx_call(&f->src, "PingSandbox", "sb1", NULL, NULL, msg, sizeof msg), E2E_PRECONDITION);
	assert_non_null(strstr(msg, "the sandbox is created, not ready"));
	assert_int_equal(sbx_call(&f->src, "SandboxStatus", "sb2", NULL, NULL, msg, sizeof msg), E2E_NOT_FOUND);
	assert_int_equal(qemu_of(f->src.pid), 0);

	/* StartSandbox: the VM, QEMU's pid */
	assert_int_equal(sbx_call(&f->src, "StartSandbox", "sb1",
				  &containerd__runtime__sandbox__v1__start_sandbox_response__descriptor, &r, msg,
				  sizeof msg), 0);
	Containerd__Runtime__Sandbox__V1__StartSandboxResponse *st = (void *)r;
	pid_t q = 0;
	assert_int_equal(qemu_of_pid(f->src.pid, &q), 1);
	assert_int_equal(st->pid, (uint32_t)q);
	assert_non_null(st->created_at);
	assert_true(st->created_at->seconds > 1700000000);
	protobuf_c_message_free_unpacked(r, NULL);
	Containerd__Runtime__Sandbox__V1__SandboxStatusRequest sr =
		CONTAINERD__RUNTIME__SANDBOX__V1__SANDBOX_STATUS_REQUEST__INIT;
	sr.sandbox_id = "sb1";
	sr.verbose = true;
	assert_int_equal(e2e_call(&f->src, SBX, "SandboxStatus", &sr.base,
				  &containerd__runtime__sandbox__v1__sandbox_status_response__descriptor, &r, msg,
				  sizeof msg), 0);
	Containerd__Runtime__Sandbox__V1__SandboxStatusResponse *ss = (void *)r;
	assert_string_equal(ss->sandbox_id, "sb1");
	assert_string_equal(ss->state, "SANDBOX_READY");
	assert_int_equal(ss->pid, (uint32_t)q);
	bool life_ready = false;
	for (size_t i = 0; i < ss->n_info; i++)
		life_ready |= !strcmp(ss->info[i]->key, "life") && !strcmp(ss->info[i]->value, "ready");
	assert_true(life_ready);
	protobuf_c_message_free_unpacked(r, NULL);
	assert_int_equal(sbx_call(&f->src, "PingSandbox", "sb1", NULL, NULL, msg, sizeof msg), 0);
	assert_int_equal(sbx_call(&f->src, "Platform", "sb1",
				  &containerd__runtime__sandbox__v1__platform_response__descriptor, &r, msg,
				  sizeof msg), 0);
	Containerd__Runtime__Sandbox__V1__PlatformResponse *pf = (void *)r;
	assert_non_null(pf->platform);
	assert_string_equal(pf->platform->os, "linux");
	assert_string_equal(pf->platform->architecture, "amd64");
	protobuf_c_message_free_unpacked(r, NULL);
	assert_int_equal(sbx_call(&f->src, "SandboxMetrics", "sb1",
				  &containerd__runtime__sandbox__v1__sandbox_metrics_response__descriptor, &r, msg,
				  sizeof msg), 0);
	Containerd__Runtime__Sandbox__V1__SandboxMetricsResponse *mr = (void *)r;
	assert_non_null(mr->metrics);
	assert_string_equal(mr->metrics->id, "sb1");
	assert_non_null(mr->metrics->data);
	assert_string_equal(mr->metrics->data->type_url, "io.containerd.cgroups.v2.Metrics");
	Io__Containerd__Cgroups__V2__Metrics *m = io__containerd__cgroups__v2__metrics__unpack(
		NULL, mr->metrics->data->value.len, mr->metrics->data->value.data);
	assert_non_null(m);
	assert_true(m->cpu && m->memory);
	printf("# qemu e2e: sandbox metrics: cpu %" PRIu64 " us, memory %" PRIu64 " of %" PRIu64 " bytes\n",
	       m->cpu->usage_usec, m->memory->usage, m->memory->usage_limit);
	assert_true(m->cpu->usage_usec > 0);              /* QEMU booted a kernel */
	assert_true(m->memory->usage > (16u << 20));
	assert_int_equal(m->memory->usage_limit, 256u << 20);
	io__containerd__cgroups__v2__metrics__free_unpacked(m, NULL);
	protobuf_c_message_free_unpacked(r, NULL);

	/* a container of the pod joins the sandbox's VM */
	char ld[300], rootfs[700], lower[700], b1[400];
	snprintf(ld, sizeof ld, "%s/sbx-layers", f->dir);
	assert_int_equal(mkdir(ld, 0700), 0);
	make_layers(ld, "sbx-top", "none", rootfs, sizeof rootfs);
	snprintf(lower, sizeof lower, "%s/ltop:%s/lbase", ld, ld);
	new_bundle(f->dir, "a1", "sb1", "while :; do sleep 1; done", b1, sizeof b1);
	assert_int_equal(task_create(&f->src, "a1", b1, lower, NULL, msg, sizeof msg), 0);
	assert_int_equal(task_start(&f->src, "a1"), 0);
	assert_int_equal(qemu_of(f->src.pid), 1);

	/* WaitSandbox parked, then StopSandbox */
	struct sbx_waiter w = { .s = f->src };
	w.s.c = NULL;
	assert_int_equal(lm_rpc_client_connect(&w.s.c, f->src.sock), 0);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, sbx_wait_main, &w), 0);
	usleep(300000);
	Containerd__Runtime__Sandbox__V1__StopSandboxRequest stp = CONTAINERD__RUNTIME__SANDBOX__V1__STOP_SANDBOX_REQUEST__INIT;
	stp.sandbox_id = "sb1";
	assert_int_equal(e2e_call(&f->src, SBX, "StopSandbox", &stp.base, NULL, NULL, msg, sizeof msg), 0);
	pthread_join(th, NULL);
	lm_rpc_client_close(w.s.c);
	assert_int_equal(w.rc, 0);
	assert_int_equal(w.status, 0);
	assert_true(w.exited_s > 1700000000);
	uint32_t status = 0;
	assert_int_equal(task_wait(&f->src, "a1", &status), 0);
	assert_int_equal(status, 137);                     /* it went with the VM */
	for (int i = 0; i < 100 && qemu_of(f->src.pid); i++)
		usleep(100000);
	assert_int_equal(qemu_of(f->src.pid), 0);
	assert_int_equal(sbx_call(&f->src, "StartSandbox", "sb1", NULL, NULL, msg, sizeof msg), E2E_PRECONDITION);
	assert_non_null(strstr(msg, "stopped"));
	assert_int_equal(e2e_call(&f->src, SBX, "SandboxStatus", &sr.base,
				  &containerd__runtime__sandbox__v1__sandbox_status_response__descriptor, &r, msg,
				  sizeof msg), 0);
	ss = (void *)r;
	assert_string_equal(ss->state, "SANDBOX_NOTREADY");
	assert_non_null(ss->exited_at);
	protobuf_c_message_free_unpacked(r, NULL);
	/* nor does a task Create boot it again */
	char b2[400];
	new_bundle(f->dir, "a2", "sb1", "true", b2, sizeof b2);
	assert_int_equal(task_create(&f->src, "a2", b2, lower, NULL, msg, sizeof msg), E2E_PRECONDITION);
	assert_int_equal(qemu_of(f->src.pid), 0);
	/* ShutdownSandbox: the shim goes */
	assert_int_equal(sbx_call(&f->src, "ShutdownSandbox", "sb1", NULL, NULL, msg, sizeof msg), 0);
	pid_t sp = f->src.pid;
	assert_int_equal(e2e_wait(sp, 20000), 0);
	f->src.pid = 0;
	assert_false(leftover_qemu());
}

/* lmctl demo --backend qemu: a Linux guest migrated and verified by
 * where it runs (QEMU keeps its memory: no digest). */
static void test_lmctl_demo_on_qemu(void **state)
{
	(void)state;
	char dir[256], out[300];
	e2e_tmpdir(dir);
	snprintf(out, sizeof(out), "%s/demo.out", dir);
	const char *args[] = { "demo", "--vm-size-mb", "256", NULL };   /* qemu: the default */
	int rc = e2e_lmctl(args, out, 180000);
	char *t = e2e_slurp(out);
	printf("# qemu e2e: lmctl demo --backend qemu exited %d\n%s", rc, t);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(t, "the counter went on"));
	assert_non_null(strstr(t, "the writer's file kept its"));
	assert_non_null(strstr(t, "the Linux guest runs on the destination's QEMU"));
	assert_non_null(strstr(t, "lmctl demo: VERIFIED"));
	free(t);
	e2e_rmdir(dir);
	assert_false(leftover_qemu());
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);   /* a FIFO whose reader went says EPIPE */
	if (!have_qemu()) {
		printf("# skipped: %s\n", skip_why);
		return 77;
	}
	(void)e2e_qemu_mark();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lmctl_demo_on_qemu),
		cmocka_unit_test_setup_teardown(test_cancel_mid_transfer_keeps_the_source_running, setup_slow, teardown),
		cmocka_unit_test_setup_teardown(test_a_destination_qemu_killed_mid_transfer_leaves_the_source_running, setup_slow, teardown),
		cmocka_unit_test_setup_teardown(test_a_destination_qemu_killed_mid_stream_on_the_link_leaves_the_source_running,
						setup_link_held, teardown),
		cmocka_unit_test_setup_teardown(test_a_linux_guest_moves_and_runs_only_on_the_destination, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_destination_with_other_layers_is_refused, setup_pod, teardown),
		cmocka_unit_test_setup_teardown(test_a_failure_at_each_step_leaves_the_guest_on_the_source, setup_pod, teardown),
		cmocka_unit_test_setup_teardown(test_a_container_reads_its_stdin_and_its_terminal_resizes,
						setup_pod, teardown),
		cmocka_unit_test_setup_teardown(test_the_first_create_boots_the_sandbox_vm, setup_boot, teardown),
		cmocka_unit_test_setup_teardown(test_the_sandbox_api_runs_the_vm, setup_sandbox_api, teardown),
		cmocka_unit_test_setup_teardown(test_stdin_moves_with_its_container_exactly_once, setup_pod,
						teardown),
		cmocka_unit_test_setup_teardown(test_exec_runs_in_a_container_and_moves_with_it, setup_pod,
						teardown),
		cmocka_unit_test_setup_teardown(test_task_create_of_a_new_container_in_the_running_vm,
						setup_pod_dst_disk_fault, teardown),
		cmocka_unit_test_setup_teardown(test_a_pod_of_real_processes_moves_and_keeps_running, setup_pod, teardown),
	};
	/* LM_TEST_FILTER=test_a_pod* runs the matching tests only (local use) */
	if (getenv("LM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LM_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
