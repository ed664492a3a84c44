/*
 * ctl_sandbox.c: the controller's side of containerd's sandbox API
 * (shim/sandbox_api.h): one sandbox per shim, the utility VM.
 *
 * The sandbox's life, as this file keeps it: none (no CreateSandbox yet:
 * every call but CreateSandbox and Platform is NotFound), created
 * (sbx_id set, its pod made), booting (StartSandbox, or a task Create,
 * boots the VM: ctl_guest.c's lm__ctl_vm_boot; StartSandbox calls wait
 * in sbx_starts), ready (the VM runs), stopped (StopSandbox or
 * ShutdownSandbox stopped it, or it ended by itself: sbx_exited_ns set,
 * WaitSandbox answered; it never starts again). The sandbox's PID is the
 * VMM's (QEMU's), as Kata's shim answers it.
 *
 * DESIGN. Controller thread only, like every ctl_*.c: calls come as
 * LM_CTL_SANDBOX_CALL messages, the VM's boot and exit as calls from
 * ctl_guest.c and ctl_events.c. Parked calls (sbx_starts, sbx_waits) are
 * answered when the state changes, and with Unavailable at shutdown.
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "hcs/qemu/backend.h"
#include "sandbox_api.pb-c.h"
#include "shim/sandbox_api.h"
#include "shim/task_service.h"
#include "shim/vmdoc.h"
#include "util/clock.h"
#include "util/log.h"

#define SBX_EXIT_STOPPED 0u          /* WaitSandbox after StopSandbox */
#define SBX_EXIT_ENDED 255u          /* the VM ended by itself */

static void set_ts(Google__Protobuf__Timestamp *ts, uint64_t ns)
{
	ts->seconds = (int64_t)(ns / 1000000000u);
	ts->nanos = (int32_t)(ns % 1000000000u);
}

static void reply(lm_rpc_call_t *call, const ProtobufCMessage *m)
{
	lm_task_reply_msg(call, m);
}

/* QEMU's pid (0 without a qemu VM). */
static uint32_t vmm_pid(struct ctl *c)
{
	const lm_backend_ops_t *ops = NULL;
	lm_vm_t *vm = NULL;
	if (!c->vm || lm_hcs_system_vm(c->vm, &ops, &vm) || ops != &lm_hcs_qemu_ops)
		return 0;
	return (uint32_t)lm_hcs_qemu_pid(vm);
}

static const char *life(const struct ctl *c)
{
	if (c->sbx_exited_ns)
		return "stopped";
	if (c->vm_running)
		return "ready";
	if (c->vm_booting)
		return "booting";
	return "created";
}

static void answer_start(struct ctl *c, lm_rpc_call_t *call)
{
	Containerd__Runtime__Sandbox__V1__StartSandboxResponse r =
		CONTAINERD__RUNTIME__SANDBOX__V1__START_SANDBOX_RESPONSE__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	r.pid = vmm_pid(c);
	set_ts(&ts, c->sbx_created_ns);
	r.created_at = &ts;
	reply(call, &r.base);
}

static void answer_wait(struct ctl *c, lm_rpc_call_t *call)
{
	Containerd__Runtime__Sandbox__V1__WaitSandboxResponse r =
		CONTAINERD__RUNTIME__SANDBOX__V1__WAIT_SANDBOX_RESPONSE__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	r.exit_status = c->sbx_exit_status;
	set_ts(&ts, c->sbx_exited_ns);
	r.exited_at = &ts;
	reply(call, &r.base);
}

/* Parks call in w, after dropping the calls whose clients left. */
static void park(struct waiters *w, lm_rpc_call_t *call, const char *name)
{
	for (unsigned i = 0; i < w->n;) {
		if (lm_rpc_call_cancelled(w->calls[i]) != LM_RPC_CANCEL_NONE) {
			lm_rpc_call_fail(w->calls[i], LM_RPC_CANCELED, "%s: cancelled", name);
			w->calls[i] = w->calls[--w->n];
		} else {
			i++;
		}
	}
	if (!lm__ctl_waiters_add(w, call))
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s: %d calls wait already", name,
			     LM_CTL_MAX_WAITERS);
}

/* The sandbox is stopped now: WaitSandbox calls are answered. */
static void stopped(struct ctl *c, uint32_t status)
{
	c->sbx_exited_ns = lm_wall_ns();
	c->sbx_exit_status = status;
	for (unsigned i = 0; i < c->sbx_waits.n; i++)
		answer_wait(c, c->sbx_waits.calls[i]);
	c->sbx_waits.n = 0;
	lm__ctl_waiters_answer(&c->sbx_starts, LM_RPC_FAILED_PRECONDITION,
			       "StartSandbox: the sandbox was stopped meanwhile");
}

/* StopSandbox, ShutdownSandbox: the VM goes, and every process in it
 * with it (its containers and exec'd processes end as SIGKILL does). */
static void stop_vm(struct ctl *c)
{
	for (size_t i = 0; i < lm_sandbox_count(c->sb); i++) {
		const struct lm_container *k = lm_sandbox_at(c->sb, i);
		for (size_t e = 0; e < k->n_execs; e++) {
			const struct lm_exec *x = lm_container_exec_at(k, e);
			if (x->state == LM_CTR_RUNNING)
				(void)lm_sandbox_exec_exit(c->sb, k->id, x->id, 137);
		}
		if (k->state != LM_CTR_STOPPED)
			(void)lm_sandbox_exit(c->sb, k->id, 137);
	}
	lm__ctl_close_vm(c);
	stopped(c, SBX_EXIT_STOPPED);
	lm_log_info("controller", "sandbox stopped", "id=%s", c->sbx_id);
}

void lm__ctl_sandbox_booted(struct ctl *c, int err, const char *why)
{
	if (err) {
		lm__ctl_waiters_answer(&c->sbx_starts, lm__ctl_code_for_errno(err), why);
		return;
	}
	c->sbx_created_ns = lm_wall_ns();
	for (unsigned i = 0; i < c->sbx_starts.n; i++)
		answer_start(c, c->sbx_starts.calls[i]);
	c->sbx_starts.n = 0;
}

void lm__ctl_sandbox_vm_exited(struct ctl *c)
{
	if (c->sbx_id && !c->sbx_exited_ns) {
		lm_log_warn("controller", "the sandbox's VM ended by itself", "id=%s", c->sbx_id);
		stopped(c, SBX_EXIT_ENDED);
	}
}

void lm__ctl_sandbox_drop(struct ctl *c)
{
	lm__ctl_waiters_answer(&c->sbx_starts, LM_RPC_UNAVAILABLE, "StartSandbox: the shim is shutting down");
	lm__ctl_waiters_answer(&c->sbx_waits, LM_RPC_UNAVAILABLE, "WaitSandbox: the shim is shutting down");
	free(c->sbx_id);
	c->sbx_id = NULL;
}

/* CPU (utime, stime) and resident memory of process pid, from /proc. */
static int proc_usage(uint32_t pid, uint64_t *user_us, uint64_t *sys_us, uint64_t *rss)
{
	char p[64], buf[1024];
	snprintf(p, sizeof p, "/proc/%u/stat", pid);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = 0;
	const char *s = strrchr(buf, ')');    /* after the command's name */
	unsigned long long ut = 0, st = 0;
	long long rss_pages = 0;
	if (!s || sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
			 "%*d %*u %*u %lld", &ut, &st, &rss_pages) != 3)
		return -EIO;
	long hz = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	*user_us = hz > 0 ? ut * 1000000ull / (unsigned long long)hz : 0;
	*sys_us = hz > 0 ? st * 1000000ull / (unsigned long long)hz : 0;
	*rss = rss_pages > 0 && page > 0 ? (uint64_t)rss_pages * (uint64_t)page : 0;
	return 0;
}

static void do_metrics(struct ctl *c, lm_rpc_call_t *call)
{
	uint32_t pid = vmm_pid(c);
	struct lm_task_stats st = {0};
	int rc = pid ? proc_usage(pid, &st.cpu_user_usec, &st.cpu_system_usec, &st.memory_usage) : -ESRCH;
	if (rc) {
		lm__ctl_fail(call, LM_RPC_UNAVAILABLE, "SandboxMetrics: the VMM's usage cannot be read (%s)",
			     strerror(-rc));
		return;
	}
	st.cpu_usage_usec = st.cpu_user_usec + st.cpu_system_usec;
	st.memory_limit = (uint64_t)lm_vmdoc_memory_mb(c->document) << 20;   /* the guest's RAM */
	uint8_t buf[256];
	Google__Protobuf__Any any;
	if (lm_task_stats_any(&st, buf, sizeof buf, &any) < 0) {
		lm__ctl_fail(call, LM_RPC_INTERNAL, "SandboxMetrics %s: metrics over %zu bytes", c->sbx_id, sizeof buf);
		return;
	}
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	set_ts(&ts, lm_wall_ns());
	Containerd__Types__Metric m = CONTAINERD__TYPES__METRIC__INIT;
	m.timestamp = &ts;
	m.id = c->sbx_id;
	m.data = &any;
	Containerd__Runtime__Sandbox__V1__SandboxMetricsResponse r =
		CONTAINERD__RUNTIME__SANDBOX__V1__SANDBOX_METRICS_RESPONSE__INIT;
	r.metrics = &m;
	reply(call, &r.base);
}

static void do_status(struct ctl *c, lm_rpc_call_t *call, bool verbose)
{
	Containerd__Runtime__Sandbox__V1__SandboxStatusResponse r =
		CONTAINERD__RUNTIME__SANDBOX__V1__SANDBOX_STATUS_RESPONSE__INIT;
	Google__Protobuf__Timestamp cts = GOOGLE__PROTOBUF__TIMESTAMP__INIT, ets = cts;
	Containerd__Runtime__Sandbox__V1__SandboxStatusResponse__InfoEntry e[3];
	Containerd__Runtime__Sandbox__V1__SandboxStatusResponse__InfoEntry *ep[3];
	char n[24], pid[24];
	r.sandbox_id = c->sbx_id;
	r.pid = vmm_pid(c);
	/* the CRI's words for a pod sandbox's state */
	r.state = (char *)(c->vm_running && !c->sbx_exited_ns ? "SANDBOX_READY" : "SANDBOX_NOTREADY");
	if (c->sbx_created_ns) {
		set_ts(&cts, c->sbx_created_ns);
		r.created_at = &cts;
	}
	if (c->sbx_exited_ns) {
		set_ts(&ets, c->sbx_exited_ns);
		r.exited_at = &ets;
	}
	if (verbose) {
		snprintf(n, sizeof n, "%zu", lm_sandbox_count(c->sb));
		snprintf(pid, sizeof pid, "%d", (int)getpid());
		const char *kv[3][2] = { {"life", life(c)}, {"containers", n}, {"shim_pid", pid} };
		for (int i = 0; i < 3; i++) {
			containerd__runtime__sandbox__v1__sandbox_status_response__info_entry__init(&e[i]);
			e[i].key = (char *)kv[i][0];
			e[i].value = (char *)kv[i][1];
			ep[i] = &e[i];
		}
		r.n_info = 3;
		r.info = ep;
	}
	reply(call, &r.base);
}

static void do_platform(lm_rpc_call_t *call)
{
	struct utsname u;
	const char *arch = "amd64";
	if (uname(&u) == 0 && !strcmp(u.machine, "aarch64"))
		arch = "arm64";
	Containerd__Types__Platform p = CONTAINERD__TYPES__PLATFORM__INIT;
	p.os = (char *)"linux";
	p.architecture = (char *)arch;
	Containerd__Runtime__Sandbox__V1__PlatformResponse r = CONTAINERD__RUNTIME__SANDBOX__V1__PLATFORM_RESPONSE__INIT;
	r.platform = &p;
	reply(call, &r.base);
}

static void do_create(struct ctl *c, lm_rpc_call_t *call,
		      const Containerd__Runtime__Sandbox__V1__CreateSandboxRequest *r, const char *id)
{
	if (!*id) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "CreateSandbox: sandbox_id empty");
		return;
	}
	if (c->sbx_id) {
		lm__ctl_fail(call, LM_RPC_ALREADY_EXISTS, "CreateSandbox %s: this shim serves sandbox \"%s\" "
			     "(one per shim)", id, c->sbx_id);
		return;
	}
	if (c->st != ST_IDLE) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "CreateSandbox %s: a migration session is active",
			     id);
		return;
	}
	char *keep = strdup(id);
	int rc = keep ? 0 : -ENOMEM;
	if (!rc && !lm_sandbox_find_pod(c->sb, id))
		rc = lm_sandbox_add_pod(c->sb, id, r->netns_path && *r->netns_path ? r->netns_path : NULL);
	if (rc) {
		free(keep);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "CreateSandbox %s: %s", id, strerror(-rc));
		return;
	}
	c->sbx_id = keep;
	c->sbx_exited_ns = 0;
	lm_log_info("controller", "sandbox created", "id=%s netns=%s", id, r->netns_path ? r->netns_path : "");
	lm__ctl_ok(call);
}

static void do_start(struct ctl *c, lm_rpc_call_t *call, const char *id)
{
	if (c->sbx_exited_ns) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "StartSandbox %s: the sandbox was stopped "
			     "(it does not start again)", id);
		return;
	}
	if (c->vm_running) {
		if (!c->sbx_created_ns)
			c->sbx_created_ns = lm_wall_ns();
		answer_start(c, call);
		return;
	}
	if (c->vm_booting) {
		park(&c->sbx_starts, call, "StartSandbox");
		return;
	}
	if (c->st != ST_IDLE || c->vm) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "StartSandbox %s: the VM is not running here "
			     "(%s)", id, c->st != ST_IDLE ? "a migration session is active" : "it is stopping");
		return;
	}
	if (!c->cfg.vm_on_create) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "StartSandbox %s: this shim boots no VM (lmshim "
			     "serve without --boot-on-create; the shim containerd starts does)", id);
		return;
	}
	park(&c->sbx_starts, call, "StartSandbox");
	lm__ctl_vm_boot(c, id, 0, 0);
}

void lm__ctl_on_sandbox_call(struct ctl *c, struct lm_ctl_call *tm)
{
	lm_rpc_call_t *call = tm->call;
	tm->call = NULL;
	const char *id = NULL;
	ProtobufCMessage *req = lm_sandbox_api_decode(call, tm->method, &id);
	if (!req)
		return;
	const char *name = lm_sandbox_api_method_name(tm->method);
	if (tm->method == LM_SBX_CREATE) {
		do_create(c, call, (const Containerd__Runtime__Sandbox__V1__CreateSandboxRequest *)req, id);
		goto out;
	}
	if (!c->sbx_id || strcmp(c->sbx_id, id)) {
		if (c->sbx_id)
			lm__ctl_fail(call, LM_RPC_NOT_FOUND, "%s: sandbox \"%s\" not found (this shim serves \"%s\")",
				     name, id, c->sbx_id);
		else
			lm__ctl_fail(call, LM_RPC_NOT_FOUND, "%s: sandbox \"%s\" not found (no CreateSandbox yet)",
				     name, id);
		goto out;
	}
	switch (tm->method) {
	case LM_SBX_START:
		do_start(c, call, id);
		break;
	case LM_SBX_PLATFORM:
		do_platform(call);
		break;
	case LM_SBX_STATUS:
		do_status(c, call, ((const Containerd__Runtime__Sandbox__V1__SandboxStatusRequest *)req)->verbose);
		break;
	case LM_SBX_WAIT:
		if (c->sbx_exited_ns)
			answer_wait(c, call);
		else
			park(&c->sbx_waits, call, "WaitSandbox");
		break;
	case LM_SBX_PING:
		if (c->vm_running && !c->sbx_exited_ns)
			lm__ctl_ok(call);
		else
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "PingSandbox %s: the sandbox is %s, not "
				     "ready", id, life(c));
		break;
	case LM_SBX_METRICS:
		if (c->vm_running && !c->sbx_exited_ns)
			do_metrics(c, call);
		else
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "SandboxMetrics %s: the sandbox is %s, "
				     "not ready", id, life(c));
		break;
	case LM_SBX_STOP:
	case LM_SBX_SHUTDOWN:
		if (c->st != ST_IDLE) {
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s %s: a migration session is active",
				     name, id);
			break;
		}
		if (c->vm_booting) {
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s %s: the sandbox is booting: ask again "
				     "once it started", name, id);
			break;
		}
		if (!c->sbx_exited_ns)
			stop_vm(c);
		lm__ctl_ok(call);
		if (tm->method == LM_SBX_SHUTDOWN && c->cfg.on_shutdown) {
			lm_log_info("controller", "shutdown", "why=\"ShutdownSandbox\"");
			c->cfg.on_shutdown(c->cfg.shutdown_arg);
		}
		break;
	default:
		lm__ctl_fail(call, LM_RPC_UNIMPLEMENTED, "%s: not implemented", name);
		break;
	}
out:
	protobuf_c_message_free_unpacked(req, NULL);
}
