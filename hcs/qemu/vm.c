/*
 * vm.c: one QEMU process per VM (see vm.h for the contract).
 *
 * Launch, in order: check the config; pick the accelerator (AUTO may run
 * the KVM probe once per process); build QEMU's command line; make the
 * socketpair for QMP and the pipes for stdout/stderr; fork and exec on the
 * loop thread (PR_SET_PDEATHSIG belongs to the forking thread); take a
 * pidfd; adopt our QMP end; wait for the negotiation; turn on migration
 * events; for a destination, start the incoming stream. Any failure from
 * the fork on kills QEMU and reaps it before launch returns.
 *
 * On the loop: the pidfd (QEMU exited: drain its pipes, reap, record the
 * status, EXITED), the console and stderr pipes (into bounded tails;
 * stderr lines to the log), and the QMP events, which update the shared
 * state under vm->mu and are then handed to the user's callback outside
 * the lock.
 */
#include "hcs/qemu/vm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define MOD "qemu"
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define CONSOLE_TAIL (64u << 10)
#define STDERR_TAIL (16u << 10)
#define STDERR_LOG_LINES 64         /* stderr lines logged per VM at most */
#define AGENT_PORT_ID "lmagent0"    /* the virtserialport's QOM id */
#define INCOMING_FD 4               /* where QEMU finds the incoming stream */
#define QMP_FD 3
#define SETUP_TIMEOUT_MS 5000       /* one setup command during launch */
#define KILL_WAIT_MS 5000

static const char *const runstate_names[] = {
	[LM_QEMU_RS_OTHER] = "other",
	[LM_QEMU_RS_PRELAUNCH] = "prelaunch",
	[LM_QEMU_RS_RUNNING] = "running",
	[LM_QEMU_RS_PAUSED] = "paused",
	[LM_QEMU_RS_INMIGRATE] = "inmigrate",
	[LM_QEMU_RS_FINISH_MIGRATE] = "finish-migrate",
	[LM_QEMU_RS_POSTMIGRATE] = "postmigrate",
	[LM_QEMU_RS_SHUTDOWN] = "shutdown",
	[LM_QEMU_RS_GUEST_PANICKED] = "guest-panicked",
	[LM_QEMU_RS_INTERNAL_ERROR] = "internal-error",
};

const char *lm_qemu_runstate_name(enum lm_qemu_runstate s)
{
	if ((unsigned)s < sizeof(runstate_names) / sizeof(runstate_names[0]))
		return runstate_names[s];
	return "?";
}

const char *lm_qemu_accel_name(enum lm_qemu_accel a)
{
	switch (a) {
	case LM_QEMU_ACCEL_KVM: return "kvm";
	case LM_QEMU_ACCEL_TCG: return "tcg";
	default: return "auto";
	}
}

static void errf(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void errf(char *buf, size_t len, const char *fmt, ...)
{
	if (!buf || !len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* ---- tails ------------------------------------------------------------ */

static int tail_init(struct lm__tail *t, size_t cap)
{
	t->buf = malloc(cap);
	t->cap = cap;
	t->pos = t->len = 0;
	t->total = 0;
	return t->buf ? 0 : -ENOMEM;
}

static void tail_append(struct lm__tail *t, const char *p, size_t n)
{
	t->total += n;
	if (n >= t->cap) {
		p += n - t->cap;
		n = t->cap;
	}
	size_t first = t->cap - t->pos < n ? t->cap - t->pos : n;
	memcpy(t->buf + t->pos, p, first);
	memcpy(t->buf, p + first, n - first);
	t->pos = (t->pos + n) % t->cap;
	t->len = t->len + n > t->cap ? t->cap : t->len + n;
}

/* Copies the last min(len, cap-1) bytes, NUL-terminated. */
static size_t tail_copy(const struct lm__tail *t, char *buf, size_t cap)
{
	if (!cap)
		return 0;
	size_t n = t->len < cap - 1 ? t->len : cap - 1;
	size_t start = (t->pos + t->cap - n) % t->cap;
	size_t first = t->cap - start < n ? t->cap - start : n;
	memcpy(buf, t->buf + start, first);
	memcpy(buf + first, t->buf, n - first);
	buf[n] = 0;
	return n;
}

/* ---- shared state helpers -------------------------------------------- */

int lm__vm_wait_locked(lm_qemu_vm_t *vm, const struct timespec *until)
{
	return pthread_cond_timedwait(&vm->cv, &vm->mu, until);
}

int lm__vm_exec(lm_qemu_vm_t *vm, const char *cmd, json_t *args, int fd,
		unsigned timeout_ms, json_t **ret, char *errbuf, size_t errlen)
{
	char e[320];
	int rc = lm_qmp_exec(vm->qmp, cmd, args, fd, timeout_ms, ret, e, sizeof(e));
	if (rc) {
		errf(errbuf, errlen, "%s: %s", cmd, e);
		lm_log_debug(MOD, "command failed", "vm=%s cmd=%s err=%d", vm->name, cmd, -rc);
	}
	return rc;
}

static void emit(lm_qemu_vm_t *vm, lm_qemu_event_t *ev)
{
	if (!ev->mono_ns)
		ev->mono_ns = lm_now_ns();
	if (vm->on_event)
		vm->on_event(vm->event_arg, ev);
}

/* ---- loop: pipes, exit ------------------------------------------------ */

static void log_stderr_line(lm_qemu_vm_t *vm)
{
	if (!vm->err_line_len)
		return;
	vm->err_line[vm->err_line_len] = 0;
	if (vm->err_lines_logged < STDERR_LOG_LINES) {
		char q[600];
		lm_log_warn(MOD, "qemu stderr", "vm=%s line=%s", vm->name,
			    lm_log_quote(q, sizeof(q), vm->err_line));
	} else if (vm->err_lines_logged == STDERR_LOG_LINES) {
		lm_log_warn(MOD, "qemu stderr: more lines not logged", "vm=%s", vm->name);
	}
	vm->err_lines_logged++;
	vm->err_line_len = 0;
}

/* loop: reads what a pipe has now into its tail. false at EOF/error. */
static bool drain_pipe(lm_qemu_vm_t *vm, int fd, bool is_err)
{
	char buf[16384];
	for (int rounds = 0; rounds < 16; rounds++) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK;
		}
		if (n == 0) {
			if (is_err)
				log_stderr_line(vm);
			return false;
		}
		pthread_mutex_lock(&vm->mu);
		tail_append(is_err ? &vm->err : &vm->con, buf, (size_t)n);
		pthread_mutex_unlock(&vm->mu);
		if (is_err)
			for (ssize_t i = 0; i < n; i++) {
				if (buf[i] == '\n') {
					log_stderr_line(vm);
				} else if (vm->err_line_len < sizeof(vm->err_line) - 1) {
					vm->err_line[vm->err_line_len++] = buf[i];
				}
			}
	}
	return true;
}

static void stop_pipe(lm_qemu_vm_t *vm, ev_io *w, int *fd)
{
	if (*fd < 0)
		return;
	ev_io_stop(lm_qemu_loop_ev(vm->loop), w);
	close(*fd);
	*fd = -1;
}

static void on_out(struct ev_loop *ev, ev_io *w, int revents)
{
	lm_qemu_vm_t *vm = w->data;
	(void)ev;
	(void)revents;
	if (!drain_pipe(vm, vm->out_fd, false))
		stop_pipe(vm, &vm->out_w, &vm->out_fd);
}

static void on_err(struct ev_loop *ev, ev_io *w, int revents)
{
	lm_qemu_vm_t *vm = w->data;
	(void)ev;
	(void)revents;
	if (!drain_pipe(vm, vm->err_fd, true))
		stop_pipe(vm, &vm->err_w, &vm->err_fd);
}

/* loop: sends the EXITED event held back by on_pidfd, once. */
static void send_exit_event(lm_qemu_vm_t *vm)
{
	if (!vm->exit_event_due)
		return;
	vm->exit_event_due = false;
	ev_timer_stop(lm_qemu_loop_ev(vm->loop), &vm->exit_w);
	emit(vm, &vm->exit_event);
}

static void on_exit_timer(struct ev_loop *ev, ev_timer *t, int revents)
{
	(void)ev;
	(void)revents;
	send_exit_event(t->data);
}

static void on_pidfd(struct ev_loop *ev, ev_io *w, int revents)
{
	lm_qemu_vm_t *vm = w->data;
	(void)revents;
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid((idtype_t)P_PIDFD, (id_t)vm->pidfd, &si, WEXITED | WNOHANG) < 0) {
		if (errno == EINTR || errno == EAGAIN)
			return;
		/* ECHILD: someone else reaped it (a waitpid(-1) elsewhere in
		 * the process); we only know it is gone */
		lm_log_error(MOD, "waitid on QEMU's pidfd failed", "vm=%s pid=%d errno=%d",
			     vm->name, (int)vm->pid, errno);
		si.si_pid = vm->pid;
		si.si_code = CLD_KILLED;
		si.si_status = 0;
	} else if (si.si_pid == 0) {
		return;         /* not yet */
	}
	ev_io_stop(ev, w);
	/* the pipes hold all it wrote before dying */
	if (vm->out_fd >= 0 && !drain_pipe(vm, vm->out_fd, false))
		stop_pipe(vm, &vm->out_w, &vm->out_fd);
	if (vm->err_fd >= 0 && !drain_pipe(vm, vm->err_fd, true))
		stop_pipe(vm, &vm->err_w, &vm->err_fd);
	log_stderr_line(vm);
	lm_qemu_event_t e = {.type = LM_QEMU_EV_EXITED, .name = "EXITED", .mono_ns = lm_now_ns()};
	e.u.exited.exited = true;
	e.u.exited.signaled = si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED;
	e.u.exited.code = si.si_status;
	pthread_mutex_lock(&vm->mu);
	vm->exit = e.u.exited;
	vm->running = false;
	bool qmp_open = !vm->qmp_closed;
	pthread_cond_broadcast(&vm->cv);
	pthread_mutex_unlock(&vm->mu);
	lm_log_info(MOD, "qemu exited", "vm=%s pid=%d %s=%d", vm->name, (int)vm->pid,
		    e.u.exited.signaled ? "signal" : "status", e.u.exited.code);
	if (vm->shutdown_guest) {
		/* the guest ended itself (a kernel panic reboots, and QEMU
		 * does not reboot): its console's last lines say why */
		char tail[3000];
		pthread_mutex_lock(&vm->mu);
		size_t n = tail_copy(&vm->con, tail, sizeof(tail) - 1);
		pthread_mutex_unlock(&vm->mu);
		tail[n] = 0;
		for (size_t i = 0; i < n; i++)
			if (tail[i] == '\n' || tail[i] == '\r' || tail[i] == '"')
				tail[i] = tail[i] == '"' ? '\'' : '|';
		lm_log_warn(MOD, "the guest ended itself", "vm=%s console_tail=\"%s\"", vm->name, tail);
	}
	vm->exit_event = e;
	vm->exit_event_due = true;
	if (qmp_open) {
		/* its monitor's EOF is on its way (maybe in this very loop
		 * iteration): EXITED goes after QMP_CLOSED */
		ev_timer_start(ev, &vm->exit_w);
		return;
	}
	send_exit_event(vm);
}

/* ---- loop: QMP events ------------------------------------------------- */

static bool mig_in_flight(enum lm_qemu_mig_status s)
{
	switch (s) {
	case LM_QEMU_MIG_SETUP:
	case LM_QEMU_MIG_ACTIVE:
	case LM_QEMU_MIG_PRE_SWITCHOVER:
	case LM_QEMU_MIG_DEVICE:
	case LM_QEMU_MIG_WAIT_UNPLUG:
	case LM_QEMU_MIG_POSTCOPY_ACTIVE:
	case LM_QEMU_MIG_POSTCOPY_PAUSED:
	case LM_QEMU_MIG_POSTCOPY_RECOVER:
	case LM_QEMU_MIG_CANCELLING:
		return true;
	default:
		return false;
	}
}

static void on_qmp_event(void *arg, const char *name, json_t *data, uint64_t ts_us)
{
	lm_qemu_vm_t *vm = arg;
	lm_qemu_event_t e = {.type = LM_QEMU_EV_OTHER, .name = name, .qemu_ts_us = ts_us,
			     .mono_ns = lm_now_ns()};
	bool blackout = false, running = false;

	pthread_mutex_lock(&vm->mu);
	if (!strcmp(name, "STOP")) {
		e.type = LM_QEMU_EV_STOP;
		vm->running = false;
		if (vm->mig_outgoing && mig_in_flight(vm->mig_status) &&
		    vm->mig_status != LM_QEMU_MIG_CANCELLING && !vm->blackout_reported &&
		    !vm->user_stops) {
			vm->blackout_reported = true;
			blackout = true;
		}
	} else if (!strcmp(name, "RESUME")) {
		e.type = LM_QEMU_EV_RESUME;
		vm->running = true;
	} else if (!strcmp(name, "SHUTDOWN")) {
		e.type = LM_QEMU_EV_SHUTDOWN;
		e.u.shutdown.guest = json_is_true(json_object_get(data, "guest"));
		const char *r = json_string_value(json_object_get(data, "reason"));
		snprintf(e.u.shutdown.reason, sizeof(e.u.shutdown.reason), "%s", r ? r : "");
		vm->shutdown_seen = true;
		vm->shutdown_guest = e.u.shutdown.guest;
	} else if (!strcmp(name, "POWERDOWN")) {
		e.type = LM_QEMU_EV_POWERDOWN;
	} else if (!strcmp(name, "RESET")) {
		e.type = LM_QEMU_EV_RESET;
	} else if (!strcmp(name, "GUEST_PANICKED")) {
		e.type = LM_QEMU_EV_GUEST_PANICKED;
		const char *a = json_string_value(json_object_get(data, "action"));
		snprintf(e.u.panic.action, sizeof(e.u.panic.action), "%s", a ? a : "");
	} else if (!strcmp(name, "MIGRATION")) {
		e.type = LM_QEMU_EV_MIGRATION;
		e.u.migration.status =
			lm_qemu_mig_status_parse(json_string_value(json_object_get(data, "status")));
		lm__mig_status_from_event(vm, e.u.migration.status);
	} else if (!strcmp(name, "MIGRATION_PASS")) {
		e.type = LM_QEMU_EV_MIGRATION_PASS;
		json_t *p = json_object_get(data, "pass");
		e.u.pass.pass = json_is_integer(p) && json_integer_value(p) > 0
					? (uint64_t)json_integer_value(p) : 0;
		/* QEMU sends it at the end of each sync of its dirty log and
		 * STOP when the guest stops, both under its big lock: their
		 * order here is the order they happened in */
		running = vm->running;
		if (vm->mig_outgoing && mig_in_flight(vm->mig_status) && running &&
		    e.u.pass.pass >= 2 && !vm->sync_running)
			vm->sync_running = e.u.pass.pass;
	} else if (!strcmp(name, "VSERPORT_CHANGE")) {
		const char *id = json_string_value(json_object_get(data, "id"));
		if (id && !strcmp(id, AGENT_PORT_ID)) {
			e.type = LM_QEMU_EV_AGENT_PORT;
			e.u.port.open = json_is_true(json_object_get(data, "open"));
			vm->agent_open = e.u.port.open;
		}
	}
	pthread_cond_broadcast(&vm->cv);
	pthread_mutex_unlock(&vm->mu);

	if (e.type == LM_QEMU_EV_MIGRATION_PASS)
		lm_log_debug(MOD, "dirty log synced", "vm=%s pass=%llu guest_running=%d", vm->name,
			     (unsigned long long)e.u.pass.pass, (int)running);
	if (e.type == LM_QEMU_EV_MIGRATION)
		lm_log_info(MOD, "migration status", "vm=%s status=%s", vm->name,
			    lm_qemu_mig_status_name(e.u.migration.status));
	emit(vm, &e);
	if (blackout) {
		lm_qemu_event_t b = {.type = LM_QEMU_EV_BLACKOUT_START, .name = "BLACKOUT_START",
				     .mono_ns = e.mono_ns};
		lm_log_info(MOD, "blackout started", "vm=%s", vm->name);
		emit(vm, &b);
	}
}

static void on_qmp_closed(void *arg, int err)
{
	lm_qemu_vm_t *vm = arg;
	pthread_mutex_lock(&vm->mu);
	vm->qmp_closed = true;
	vm->qmp_err = err;
	pthread_cond_broadcast(&vm->cv);
	pthread_mutex_unlock(&vm->mu);
	lm_qemu_event_t e = {.type = LM_QEMU_EV_QMP_CLOSED, .name = "QMP_CLOSED"};
	e.u.closed.err = err;
	emit(vm, &e);
	send_exit_event(vm);    /* if QEMU was reaped first */
}

/* ---- the command line ------------------------------------------------- */

struct argv {
	char **v;
	size_t n, cap;
	bool oom;
};

static void arg_add(struct argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg_add(struct argv *a, const char *fmt, ...)
{
	if (a->oom)
		return;
	if (a->n + 2 > a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		char **v = realloc(a->v, cap * sizeof(*v));
		if (!v) {
			a->oom = true;
			return;
		}
		a->v = v;
		a->cap = cap;
	}
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&a->v[a->n], fmt, ap);
	va_end(ap);
	if (n < 0) {
		a->oom = true;
		return;
	}
	a->v[++a->n] = NULL;
}

static void argv_free(struct argv *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
	memset(a, 0, sizeof(*a));
}

/* QEMU's option syntax uses ',' as a separator (",," escapes it): we
 * refuse commas in paths instead of escaping them. */
static bool opt_safe(const char *s)
{
	return s && *s && !strchr(s, ',') && !strchr(s, '\n');
}

static bool word_ok(const char *s, size_t max, const char *extra)
{
	if (!s || !*s || strlen(s) > max)
		return false;
	for (const char *p = s; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr(extra, c)))
			return false;
	}
	return true;
}

/* Host TSC rate in kHz from /proc/cpuinfo's first "cpu MHz" (what TCG's
 * rdtsc counts at), 0 if unknown. */
static unsigned long host_khz(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return 0;
	char line[256];
	unsigned long khz = 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "cpu MHz", 7))
			continue;
		const char *c = strchr(line, ':');
		if (c) {
			double mhz = strtod(c + 1, NULL);
			if (mhz > 1 && mhz < 100000)
				khz = (unsigned long)(mhz * 1000.0);
		}
		break;
	}
	fclose(f);
	return khz;
}

static int build_argv(struct argv *a, const char *qemu, const lm_qemu_vm_config_t *c,
		      enum lm_qemu_accel accel, bool incoming)
{
	bool micro = c->machine == LM_QEMU_MICROVM;
	const char *bus = micro ? "device" : "pci";
	arg_add(a, "%s", qemu);
	arg_add(a, "-name");
	arg_add(a, "guest=%s,debug-threads=on", c->name);
	arg_add(a, "-M");
	arg_add(a, "%s", micro ? "microvm,rtc=on" : "q35");
	arg_add(a, "-accel");
	/* TCG: one translation thread (the vCPU under QEMU's big lock, as
	 * its migration's dirty tracking expects); guests migrated while busy
	 * crash less often on the destination this way, though the figures
	 * are noisy (hcs/qemu/README.md) */
	const char *tcg = getenv("LM_QEMU_TCG_OPTS");
	arg_add(a, "%s", accel == LM_QEMU_ACCEL_KVM ? "kvm" : tcg && *tcg ? tcg : "tcg,thread=single");
	if (c->cpu) {
		arg_add(a, "-cpu");
		arg_add(a, "%s", c->cpu);
	}
	arg_add(a, "-m");
	arg_add(a, "%u", c->memory_mib);
	arg_add(a, "-smp");
	arg_add(a, "%u", c->vcpus ? c->vcpus : 1);
	arg_add(a, "-nodefaults");
	arg_add(a, "-no-user-config");
	arg_add(a, "-display");
	arg_add(a, "none");
	arg_add(a, "-no-reboot");
	arg_add(a, "-S");
	arg_add(a, "-msg");
	arg_add(a, "timestamp=on");
	/* the console: ttyS0 into our pipe, or a file */
	arg_add(a, "-chardev");
	if (c->console_log)
		arg_add(a, "file,id=con,path=%s,append=on", c->console_log);
	else
		arg_add(a, "stdio,id=con,signal=off");
	arg_add(a, "-serial");
	arg_add(a, "chardev:con");
	/* the monitor: fd 3 is a connected socket (QEMU is the client) */
	arg_add(a, "-chardev");
	arg_add(a, "socket,id=qmp,fd=%d", QMP_FD);
	arg_add(a, "-mon");
	arg_add(a, "chardev=qmp,mode=control");
	/* the kernel */
	arg_add(a, "-kernel");
	arg_add(a, "%s", c->kernel);
	if (c->initrd) {
		arg_add(a, "-initrd");
		arg_add(a, "%s", c->initrd);
	}
	/* under TCG: the TSC's rate (a busy host makes the kernel's own
	 * calibration hang) */
	char tsc[48] = "";
	unsigned long khz = accel == LM_QEMU_ACCEL_TCG ? host_khz() : 0;
	if (khz)
		snprintf(tsc, sizeof(tsc), " tsc_early_khz=%lu", khz);
	/* oops=panic: a guest whose kernel oopsed ends (panic, no reboot:
	 * QEMU exits) instead of running on wedged */
	arg_add(a, "-append");
	arg_add(a, "console=ttyS0 quiet panic=-1 oops=panic%s%s%s", tsc, c->cmdline ? " " : "",
		c->cmdline ? c->cmdline : "");
	/* the agent's port */
	if (c->agent_socket) {
		arg_add(a, "-device");
		arg_add(a, "virtio-serial-%s,id=vser0", bus);
		arg_add(a, "-chardev");
		arg_add(a, "socket,id=agent,path=%s,server=on,wait=off", c->agent_socket);
		arg_add(a, "-device");
		arg_add(a, "virtserialport,bus=vser0.0,chardev=agent,name=%s,id=%s",
			LM_QEMU_AGENT_PORT, AGENT_PORT_ID);
	}
	/* q35: one PCIe root port per disk slot (rp0..), so that a disk can
	 * be hot-plugged later (lm_qemu_vm_disk_add) and a migration's
	 * destination, launched with every disk, has each in the same slot */
	if (!micro)
		for (unsigned i = 0; i < LM_QEMU_MAX_DISKS; i++) {
			arg_add(a, "-device");
			arg_add(a, "pcie-root-port,id=rp%u,chassis=%u,bus=pcie.0", i, i + 1);
		}
	for (unsigned i = 0; i < c->n_disks; i++) {
		const lm_qemu_disk_t *d = &c->disks[i];
		arg_add(a, "-blockdev");
		arg_add(a, "driver=file,filename=%s,node-name=f-%s,read-only=%s", d->path, d->id,
			d->read_only ? "on" : "off");
		arg_add(a, "-blockdev");
		arg_add(a, "driver=raw,file=f-%s,node-name=%s,read-only=%s", d->id, d->id,
			d->read_only ? "on" : "off");
		arg_add(a, "-device");
		if (micro)
			arg_add(a, "virtio-blk-device,drive=%s,id=dev-%s%s%s", d->id, d->id,
				d->serial ? ",serial=" : "", d->serial ? d->serial : "");
		else
			arg_add(a, "virtio-blk-pci,bus=rp%u,drive=%s,id=dev-%s%s%s",
				d->slot ? d->slot : i, d->id, d->id,
				d->serial ? ",serial=" : "", d->serial ? d->serial : "");
	}
	if (incoming) {
		arg_add(a, "-incoming");
		arg_add(a, "defer");
	}
	return a->oom ? -ENOMEM : 0;
}

static int check_config(const lm_qemu_vm_config_t *c, char *errbuf, size_t errlen)
{
	if (!word_ok(c->name, 63, "_.-")) {
		errf(errbuf, errlen, "name: 1..63 of [A-Za-z0-9_.-]");
		return -EINVAL;
	}
	if (c->machine != LM_QEMU_MICROVM && c->machine != LM_QEMU_Q35) {
		errf(errbuf, errlen, "machine: microvm or q35");
		return -EINVAL;
	}
	if (c->memory_mib < 16 || c->memory_mib > (1u << 22)) {
		errf(errbuf, errlen, "memory_mib %u: 16..4194304", c->memory_mib);
		return -EINVAL;
	}
	if (c->vcpus > 64) {
		errf(errbuf, errlen, "vcpus %u: 1..64", c->vcpus);
		return -EINVAL;
	}
	if (c->cpu && !word_ok(c->cpu, 63, "_.-+=")) {
		errf(errbuf, errlen, "cpu: a model name");
		return -EINVAL;
	}
	if (c->accel > LM_QEMU_ACCEL_TCG) {
		errf(errbuf, errlen, "accel");
		return -EINVAL;
	}
	if (!opt_safe(c->kernel) || (c->initrd && !opt_safe(c->initrd)) ||
	    (c->agent_socket && !opt_safe(c->agent_socket)) ||
	    (c->console_log && !opt_safe(c->console_log))) {
		errf(errbuf, errlen, "kernel, initrd, agent_socket, console_log: non-empty paths "
				     "without ',' or newlines");
		return -EINVAL;
	}
	if (c->cmdline && strchr(c->cmdline, '\n')) {
		errf(errbuf, errlen, "cmdline: one line");
		return -EINVAL;
	}
	if (c->incoming_fd >= 0 && fcntl(c->incoming_fd, F_GETFD) < 0) {
		errf(errbuf, errlen, "incoming_fd %d is not open", c->incoming_fd);
		return -EBADF;
	}
	if (c->n_disks > LM_QEMU_MAX_DISKS || (c->n_disks && !c->disks)) {
		errf(errbuf, errlen, "disks: at most %d", LM_QEMU_MAX_DISKS);
		return -EINVAL;
	}
	for (unsigned i = 0; i < c->n_disks; i++) {
		const lm_qemu_disk_t *d = &c->disks[i];
		if (!word_ok(d->id, 31, "_-") || !((d->id[0] >= 'a' && d->id[0] <= 'z') ||
						   (d->id[0] >= 'A' && d->id[0] <= 'Z'))) {
			errf(errbuf, errlen, "disk %u: id [A-Za-z][A-Za-z0-9_-]{0,30}", i);
			return -EINVAL;
		}
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(c->disks[j].id, d->id)) {
				errf(errbuf, errlen, "disk %u: id %s used twice", i, d->id);
				return -EINVAL;
			}
		if (d->serial && !word_ok(d->serial, 20, "_.-")) {
			errf(errbuf, errlen, "disk %s: serial 1..20 of [A-Za-z0-9_.-]", d->id);
			return -EINVAL;
		}
		if (!opt_safe(d->path)) {
			errf(errbuf, errlen, "disk %s: path without ',' or newlines", d->id);
			return -EINVAL;
		}
		if (access(d->path, d->read_only ? R_OK : R_OK | W_OK) < 0) {
			int e = errno;
			errf(errbuf, errlen, "disk %s: %s: %s", d->id, d->path, strerror(e));
			return -e;
		}
	}
	if (access(c->kernel, R_OK) < 0) {
		int e = errno;
		errf(errbuf, errlen, "kernel %s: %s", c->kernel, strerror(e));
		return -e;
	}
	if (c->initrd && access(c->initrd, R_OK) < 0) {
		int e = errno;
		errf(errbuf, errlen, "initrd %s: %s", c->initrd, strerror(e));
		return -e;
	}
	return 0;
}

/* The QEMU binary as an absolute path (resolved before fork: the child
 * may only make async-signal-safe calls). */
static int find_qemu(const char *want, char *out, size_t outlen)
{
	if (!want)
		want = getenv("LM_QEMU");
	if (!want || !*want)
		want = "qemu-system-x86_64";
	if (strchr(want, '/')) {
		if (access(want, X_OK) < 0)
			return -errno;
		snprintf(out, outlen, "%s", want);
		return 0;
	}
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	while (*path) {
		const char *end = strchr(path, ':');
		size_t n = end ? (size_t)(end - path) : strlen(path);
		if (n && n + strlen(want) + 2 <= outlen) {
			snprintf(out, outlen, "%.*s/%s", (int)n, path, want);
			if (access(out, X_OK) == 0)
				return 0;
		}
		path += n + (end ? 1 : 0);
	}
	return -ENOENT;
}

/* ---- fork and exec (on the loop thread) ------------------------------ */

struct spawn {
	lm_qemu_vm_t *vm;
	const char *path;
	char **argv;
	char **envp;
	int src[5];             /* becomes fds 0..n-1 in QEMU */
	int n;
	pid_t parent;
	pid_t pid;
	int pidfd;
	int err;
};

/* Async-signal-safe decimal. */
static size_t utoa(char *b, unsigned v)
{
	char t[12];
	size_t n = 0, i = 0;
	do
		t[n++] = (char)('0' + v % 10);
	while ((v /= 10));
	while (n)
		b[i++] = t[--n];
	return i;
}

static void child_fail(const char *what, int e)
{
	char m[96];
	size_t n = 0;
	const char *p = "lmshim: qemu child: ";
	while (*p)
		m[n++] = *p++;
	while (*what && n < 70)
		m[n++] = *what++;
	p = " failed, errno ";
	while (*p)
		m[n++] = *p++;
	n += utoa(m + n, (unsigned)e);
	m[n++] = '\n';
	ssize_t w = write(2, m, n);
	(void)w;
	_exit(127);
}

/* In the child: only async-signal-safe calls from here to execve. */
static void child(const struct spawn *s)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &dfl, NULL);
	/* The shim dies: so does QEMU. PDEATHSIG follows the forking thread,
	 * the loop thread, which lives as long as the VM. The getppid check
	 * closes the window where the parent died before prctl. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		child_fail("prctl", errno);
	if (getppid() != s->parent)
		_exit(126);
	setpgid(0, 0);
	int tmp[5];
	for (int i = 0; i < s->n; i++) {
		tmp[i] = fcntl(s->src[i], F_DUPFD, 16);
		if (tmp[i] < 0)
			child_fail("dup", errno);
	}
	for (int i = 0; i < s->n; i++)
		if (dup2(tmp[i], i) < 0)
			child_fail("dup2", errno);
	if (syscall(SYS_close_range, (unsigned)s->n, ~0u, 0) < 0) {
		struct rlimit rl;
		unsigned max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1u << 20
				       ? (unsigned)rl.rlim_cur : 1u << 16;
		for (unsigned fd = (unsigned)s->n; fd < max; fd++)
			close((int)fd);
	}
	execve(s->path, s->argv, s->envp);
	child_fail("execve", errno);
}

static void spawn_on_loop(void *arg)
{
	struct spawn *s = arg;
	s->parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		s->err = -errno;
		return;
	}
	if (pid == 0)
		child(s);
	s->pid = pid;
	s->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (s->pidfd < 0) {
		/* cannot watch it safely: kill it now, while the pid is ours
		 * (unreaped, it cannot be recycled) */
		s->err = -errno;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return;
	}
	fcntl(s->pidfd, F_SETFD, FD_CLOEXEC);
	lm_qemu_vm_t *vm = s->vm;
	struct ev_loop *ev = lm_qemu_loop_ev(vm->loop);
	vm->pid = pid;
	vm->pidfd = s->pidfd;
	ev_timer_init(&vm->exit_w, on_exit_timer, 1.0, 0.);
	vm->exit_w.data = vm;
	ev_io_init(&vm->pid_w, on_pidfd, vm->pidfd, EV_READ);
	vm->pid_w.data = vm;
	ev_io_start(ev, &vm->pid_w);
	ev_io_init(&vm->out_w, on_out, vm->out_fd, EV_READ);
	vm->out_w.data = vm;
	ev_io_start(ev, &vm->out_w);
	ev_io_init(&vm->err_w, on_err, vm->err_fd, EV_READ);
	vm->err_w.data = vm;
	ev_io_start(ev, &vm->err_w);
}

/* ---- exit, kill ------------------------------------------------------- */

static int send_kill(lm_qemu_vm_t *vm)
{
	if (vm->pidfd < 0)
		return -ESRCH;
	if (syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0) < 0)
		return errno == ESRCH ? 0 : -errno;   /* ESRCH: already gone */
	return 0;
}

int lm_qemu_vm_wait_exit(lm_qemu_vm_t *vm, unsigned timeout_ms, lm_qemu_exit_t *out)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	struct timespec until = lm_timespec_in(CLOCK_MONOTONIC, (int64_t)timeout_ms * 1000000ll);
	pthread_mutex_lock(&vm->mu);
	while (!vm->exit.exited && vm->pidfd >= 0)
		if (lm__vm_wait_locked(vm, &until) == ETIMEDOUT)
			break;
	bool done = vm->exit.exited || vm->pidfd < 0;
	if (out)
		*out = vm->exit;
	pthread_mutex_unlock(&vm->mu);
	return done ? 0 : -ETIMEDOUT;
}

int lm_qemu_vm_kill(lm_qemu_vm_t *vm, unsigned timeout_ms)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	pthread_mutex_lock(&vm->mu);
	bool exited = vm->exit.exited;
	pthread_mutex_unlock(&vm->mu);
	if (!exited) {
		int rc = send_kill(vm);
		if (rc < 0)
			lm_log_error(MOD, "kill failed", "vm=%s pid=%d err=%d", vm->name,
				     (int)vm->pid, -rc);
	}
	int rc = lm_qemu_vm_wait_exit(vm, timeout_ms, NULL);
	if (rc)
		lm_log_error(MOD, "qemu not reaped after SIGKILL", "vm=%s pid=%d timeout_ms=%u",
			     vm->name, (int)vm->pid, timeout_ms);
	return rc;
}

/* ---- teardown --------------------------------------------------------- */

static void teardown_on_loop(void *arg)
{
	lm_qemu_vm_t *vm = arg;
	struct ev_loop *ev = lm_qemu_loop_ev(vm->loop);
	send_exit_event(vm);    /* the monitor is closed by now: no QMP_CLOSED */
	if (vm->pidfd >= 0) {
		ev_io_stop(ev, &vm->pid_w);
		close(vm->pidfd);
	}
	stop_pipe(vm, &vm->out_w, &vm->out_fd);
	stop_pipe(vm, &vm->err_w, &vm->err_fd);
}

static void vm_free(lm_qemu_vm_t *vm)
{
	if (vm->qmp)
		lm_qmp_close(vm->qmp);
	vm->qmp = NULL;
	if (vm->loop)
		lm_qemu_loop_call(vm->loop, teardown_on_loop, vm);
	pthread_mutex_lock(&vm->mu);
	vm->pidfd = -1;
	pthread_mutex_unlock(&vm->mu);
	if (vm->own_loop)
		lm_qemu_loop_destroy(vm->loop);
	free(vm->con.buf);
	free(vm->err.buf);
	pthread_cond_destroy(&vm->cv);
	pthread_mutex_destroy(&vm->mu);
	free(vm);
}

void lm_qemu_vm_destroy(lm_qemu_vm_t *vm)
{
	if (!vm)
		return;
	if (vm->pidfd >= 0)
		lm_qemu_vm_kill(vm, KILL_WAIT_MS);
	vm_free(vm);
}

/* ---- accelerator ------------------------------------------------------ */

static pthread_mutex_t accel_mu = PTHREAD_MUTEX_INITIALIZER;
static enum lm_qemu_accel accel_decided;      /* AUTO: not yet */
static char accel_why[160];
static char accel_dev[PATH_MAX] = "/dev/kvm";  /* test hook */
static enum lm_qemu_accel accel_probe_with = LM_QEMU_ACCEL_KVM; /* test hook */

void lm__qemu_accel_test_reset(const char *dev, enum lm_qemu_accel probe_accel)
{
	pthread_mutex_lock(&accel_mu);
	accel_decided = LM_QEMU_ACCEL_AUTO;
	accel_why[0] = 0;
	snprintf(accel_dev, sizeof(accel_dev), "%s", dev ? dev : "/dev/kvm");
	accel_probe_with = probe_accel == LM_QEMU_ACCEL_TCG ? LM_QEMU_ACCEL_TCG
							   : LM_QEMU_ACCEL_KVM;
	pthread_mutex_unlock(&accel_mu);
}

/* Boots a throwaway VM like cfg under the probe accelerator; 0 if the
 * guest opened its agent port in time. */
static int kvm_probe(const lm_qemu_vm_config_t *cfg, enum lm_qemu_accel with,
		     char *why, size_t whylen)
{
	char dir[] = "/tmp/lmqemu-probe-XXXXXX";
	if (!mkdtemp(dir)) {
		snprintf(why, whylen, "mkdtemp: %s", strerror(errno));
		return -errno;
	}
	char sock[sizeof(dir) + 16];
	snprintf(sock, sizeof(sock), "%s/agent.sock", dir);
	char name[64];
	snprintf(name, sizeof(name), "%.40s-accel-probe", cfg->name ? cfg->name : "vm");
	lm_qemu_vm_config_t p = {
		.name = name, .qemu = cfg->qemu, .machine = cfg->machine,
		.memory_mib = cfg->memory_mib < 256 ? cfg->memory_mib : 256, .vcpus = 1,
		.cpu = cfg->cpu, .kernel = cfg->kernel, .initrd = cfg->initrd,
		.cmdline = cfg->cmdline, .agent_socket = sock, .incoming_fd = -1,
		.accel = with, .qmp_timeout_ms = cfg->qmp_timeout_ms,
	};
	unsigned deadline = cfg->kvm_probe_timeout_ms ? cfg->kvm_probe_timeout_ms : 10000;
	uint64_t t0 = lm_now_ns();
	lm_qemu_vm_t *vm = NULL;
	char err[400];
	int rc = lm_qemu_vm_launch(&vm, &p, err, sizeof(err));
	if (rc == 0)
		rc = lm_qemu_vm_boot(vm, deadline, err, sizeof(err));
	unsigned ms = (unsigned)((lm_now_ns() - t0) / 1000000u);
	if (rc == 0)
		snprintf(why, whylen, "the probe guest booted under %s in %u ms",
			 lm_qemu_accel_name(with), ms);
	else if (rc == -ETIMEDOUT)
		snprintf(why, whylen, "the probe guest did not boot under %s within %u ms "
			 "(nested KVM-PVM runs a normal kernel far too slowly)",
			 lm_qemu_accel_name(with), deadline);
	else
		snprintf(why, whylen, "%s failed: %s", lm_qemu_accel_name(with), err);
	lm_qemu_vm_destroy(vm);
	unlink(sock);
	rmdir(dir);
	return rc;
}

enum lm_qemu_accel lm_qemu_accel_decide(const lm_qemu_vm_config_t *cfg, char *reason,
					size_t reasonlen)
{
	if (cfg->accel == LM_QEMU_ACCEL_KVM || cfg->accel == LM_QEMU_ACCEL_TCG) {
		errf(reason, reasonlen, "configured");
		return cfg->accel;
	}
	pthread_mutex_lock(&accel_mu);
	if (accel_decided == LM_QEMU_ACCEL_AUTO) {
		char why[160];
		int fd = open(accel_dev, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			accel_decided = LM_QEMU_ACCEL_TCG;
			snprintf(accel_why, sizeof(accel_why), "no usable %s (%s)", accel_dev,
				 strerror(errno));
		} else {
			close(fd);
			if (kvm_probe(cfg, accel_probe_with, why, sizeof(why)) == 0) {
				accel_decided = LM_QEMU_ACCEL_KVM;
			} else {
				accel_decided = LM_QEMU_ACCEL_TCG;
			}
			snprintf(accel_why, sizeof(accel_why), "%s", why);
		}
		char q[200];
		lm_log_info(MOD, "accelerator chosen", "accel=%s why=%s",
			    lm_qemu_accel_name(accel_decided),
			    lm_log_quote(q, sizeof(q), accel_why));
	}
	enum lm_qemu_accel a = accel_decided;
	errf(reason, reasonlen, "%s", accel_why);
	pthread_mutex_unlock(&accel_mu);
	return a;
}

/* ---- launch ----------------------------------------------------------- */

static const char *const qemu_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", NULL};

/* After QEMU failed to come up: let it finish dying (its stderr says
 * why), or kill it; then describe it into errbuf. */
static int launch_failed(lm_qemu_vm_t *vm, int rc, const char *what, char *errbuf,
			 size_t errlen)
{
	lm_qemu_exit_t ex;
	/* EOF on the monitor usually means QEMU is exiting: give it a moment
	 * to be reaped so its status and stderr are complete */
	if (lm_qemu_vm_wait_exit(vm, rc == -EPIPE ? 2000 : 0, &ex) < 0 || !ex.exited) {
		lm_qemu_vm_kill(vm, KILL_WAIT_MS);
		lm_qemu_vm_wait_exit(vm, 0, &ex);
	} else {
		rc = -ECHILD;
	}
	char tail[600];
	pthread_mutex_lock(&vm->mu);
	tail_copy(&vm->err, tail, sizeof(tail));
	pthread_mutex_unlock(&vm->mu);
	/* the last line or two of stderr is what QEMU said last */
	for (char *p = tail; *p; p++)
		if (*p == '\n' && p[1])
			*p = ' ';
	if (rc == -ECHILD)
		errf(errbuf, errlen, "QEMU exited (%s %d) during %s: %s",
		     ex.signaled ? "signal" : "status", ex.code, what, tail[0] ? tail : "(no stderr)");
	else
		errf(errbuf, errlen, "%s: %s%s%s", what, lm_qmp_strerror(rc), tail[0] ? "; stderr: " : "",
		     tail);
	return rc;
}

int lm_qemu_vm_launch(lm_qemu_vm_t **out, const lm_qemu_vm_config_t *cfg, char *errbuf,
		      size_t errlen)
{
	if (!out || !cfg) {
		errf(errbuf, errlen, "no config");
		return -EINVAL;
	}
	*out = NULL;
	int rc = check_config(cfg, errbuf, errlen);
	if (rc)
		return rc;
	char qemu[PATH_MAX];
	rc = find_qemu(cfg->qemu, qemu, sizeof(qemu));
	if (rc) {
		errf(errbuf, errlen, "QEMU binary %s not found", cfg->qemu ? cfg->qemu
				     : "qemu-system-x86_64");
		return rc;
	}
	rc = LM_FAULT("qemu.launch");
	if (rc) {
		errf(errbuf, errlen, "fault point qemu.launch");
		return rc;
	}
	uint64_t t0 = lm_now_ns();
	bool incoming = cfg->incoming_fd >= 0 || cfg->incoming_later;
	char why[160];
	enum lm_qemu_accel accel = lm_qemu_accel_decide(cfg, why, sizeof(why));

	lm_qemu_vm_t *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	snprintf(vm->name, sizeof(vm->name), "%s", cfg->name);
	vm->pidfd = -1;
	vm->out_fd = vm->err_fd = -1;
	vm->has_agent = cfg->agent_socket != NULL;
	vm->accel = accel;
	vm->machine = cfg->machine;
	snprintf(vm->accel_reason, sizeof(vm->accel_reason), "%s", why);
	vm->on_event = cfg->on_event;
	vm->event_arg = cfg->event_arg;
	vm->incoming = incoming;
	pthread_mutex_init(&vm->mu, NULL);
	lm_cond_init_monotonic(&vm->cv);
	if (tail_init(&vm->con, CONSOLE_TAIL) || tail_init(&vm->err, STDERR_TAIL)) {
		vm_free(vm);
		return -ENOMEM;
	}
	if (cfg->loop) {
		vm->loop = cfg->loop;
	} else {
		char tn[16];
		snprintf(tn, sizeof(tn), "qemu-%.10s", cfg->name);
		rc = lm_qemu_loop_create(&vm->loop, tn);
		if (rc) {
			vm_free(vm);
			return rc;
		}
		vm->own_loop = true;
	}

	struct argv av = {0};
	rc = build_argv(&av, qemu, cfg, accel, incoming);
	int qsv[2] = {-1, -1}, po[2] = {-1, -1}, pe[2] = {-1, -1}, devnull = -1;
	if (rc == 0 && (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qsv) < 0 ||
			pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0 ||
			(devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0))
		rc = -errno;
	if (rc) {
		errf(errbuf, errlen, "setting up: %s", strerror(-rc));
		goto fail_fds;
	}
	fcntl(po[0], F_SETFL, O_NONBLOCK);
	fcntl(pe[0], F_SETFL, O_NONBLOCK);
	vm->out_fd = po[0];
	vm->err_fd = pe[0];
	po[0] = pe[0] = -1;
	struct spawn sp = {.vm = vm, .path = qemu, .argv = av.v, .envp = (char **)qemu_env,
			   .src = {devnull, po[1], pe[1], qsv[1], cfg->incoming_fd},
			   .n = cfg->incoming_fd >= 0 ? 5 : 4, .pidfd = -1};
	rc = lm_qemu_loop_call(vm->loop, spawn_on_loop, &sp);
	if (!rc)
		rc = sp.err;
	if (rc) {
		errf(errbuf, errlen, "starting QEMU: %s", strerror(-rc));
		goto fail_fds;
	}
	close(devnull);
	close(po[1]);
	close(pe[1]);
	close(qsv[1]);
	devnull = po[1] = pe[1] = qsv[1] = -1;
	if (lm_log_get_level() <= LM_LOG_DEBUG) {
		size_t len = 0;
		for (size_t i = 0; i < av.n; i++)
			len += strlen(av.v[i]) + 1;
		char *line = malloc(len + 1);
		if (line) {
			line[0] = 0;
			for (size_t i = 0; i < av.n; i++) {
				strcat(line, av.v[i]);
				strcat(line, " ");
			}
			lm_log_debug(MOD, "exec", "vm=%s pid=%d argv=\"%s\"", vm->name,
				     (int)vm->pid, line);
			free(line);
		}
	}
	argv_free(&av);

	lm_qmp_config_t qc = {.on_event = on_qmp_event, .on_closed = on_qmp_closed, .arg = vm,
			      .name = vm->name};
	rc = lm_qmp_open(&vm->qmp, vm->loop, qsv[0], &qc);
	qsv[0] = -1;
	if (rc) {
		vm->qmp = NULL;
		rc = launch_failed(vm, rc, "opening QMP", errbuf, errlen);
		goto fail;
	}
	unsigned qto = cfg->qmp_timeout_ms ? cfg->qmp_timeout_ms : 10000;
	rc = lm_qmp_wait_ready(vm->qmp, qto);
	if (rc) {
		rc = launch_failed(vm, rc, "QMP negotiation", errbuf, errlen);
		goto fail;
	}
	char e[320];
	json_t *caps = json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "events",
				 "state", 1);
	rc = lm__vm_exec(vm, "migrate-set-capabilities", caps, -1, SETUP_TIMEOUT_MS, NULL, e,
			 sizeof(e));
	if (!rc && incoming && cfg->incoming_params)
		rc = lm_qemu_migrate_set(vm, cfg->incoming_params, SETUP_TIMEOUT_MS, e, sizeof(e));
	if (!rc && cfg->incoming_fd >= 0) {
		pthread_mutex_lock(&vm->mu);
		lm__mig_status_from_event(vm, LM_QEMU_MIG_SETUP);
		pthread_mutex_unlock(&vm->mu);
		char uri[16];
		snprintf(uri, sizeof(uri), "fd:%d", INCOMING_FD);
		rc = lm__vm_exec(vm, "migrate-incoming", json_pack("{s:s}", "uri", uri), -1,
				 SETUP_TIMEOUT_MS, NULL, e, sizeof(e));
	}
	if (rc) {
		rc = launch_failed(vm, rc, e, errbuf, errlen);
		goto fail;
	}
	lm_log_info(MOD, "launched", "vm=%s pid=%d qemu=%u accel=%s machine=%s mem_mib=%u "
		    "vcpus=%u incoming=%d ms=%.1f", vm->name, (int)vm->pid,
		    lm_qmp_qemu_version(vm->qmp), lm_qemu_accel_name(accel),
		    cfg->machine == LM_QEMU_Q35 ? "q35" : "microvm", cfg->memory_mib,
		    cfg->vcpus ? cfg->vcpus : 1, incoming, (lm_now_ns() - t0) / 1e6);
	*out = vm;
	return 0;

fail_fds:
	argv_free(&av);
	{
		int fds[] = {qsv[0], qsv[1], po[0], po[1], pe[0], pe[1], devnull};
		for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
			if (fds[i] >= 0)
				close(fds[i]);
	}
	vm_free(vm);
	return rc;
fail:
	{
		char q[600];
		lm_log_error(MOD, "launch failed", "vm=%s err=%d why=%s", vm->name, -rc,
			     lm_log_quote(q, sizeof(q), errbuf ? errbuf : ""));
	}
	lm_qemu_vm_destroy(vm);
	return rc;
}

/* ---- lifecycle -------------------------------------------------------- */

int lm_qemu_vm_boot(lm_qemu_vm_t *vm, unsigned timeout_ms, char *errbuf, size_t errlen)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	uint64_t t0 = lm_now_ns();
	pthread_mutex_lock(&vm->mu);
	bool incoming = vm->incoming;
	pthread_mutex_unlock(&vm->mu);
	if (incoming) {
		errf(errbuf, errlen, "a migration destination is not booted");
		return -EPERM;
	}
	lm_qemu_status_t st;
	int rc = lm_qemu_vm_status(vm, &st, SETUP_TIMEOUT_MS);
	if (!rc && st.state != LM_QEMU_RS_PRELAUNCH) {
		errf(errbuf, errlen, "not in prelaunch (%s)", st.text);
		return -EPERM;
	}
	if (!rc)
		rc = LM_FAULT("qemu.boot");
	if (!rc)
		rc = lm__vm_exec(vm, "cont", NULL, -1, SETUP_TIMEOUT_MS, NULL, errbuf, errlen);
	if (!rc && timeout_ms && vm->has_agent) {
		struct timespec until = lm_timespec_in(CLOCK_MONOTONIC,
						       (int64_t)timeout_ms * 1000000ll);
		pthread_mutex_lock(&vm->mu);
		while (!vm->agent_open && !vm->exit.exited && !vm->qmp_closed)
			if (lm__vm_wait_locked(vm, &until) == ETIMEDOUT)
				break;
		if (vm->agent_open)
			rc = 0;
		else if (vm->exit.exited || vm->qmp_closed)
			rc = -ECHILD;
		else
			rc = -ETIMEDOUT;
		pthread_mutex_unlock(&vm->mu);
		if (rc == -ETIMEDOUT)
			errf(errbuf, errlen, "the guest did not open its agent port within %u ms",
			     timeout_ms);
	}
	if (rc) {
		if (rc == -ECHILD || rc == -EPIPE) {
			rc = launch_failed(vm, -EPIPE, "boot", errbuf, errlen);
		} else {
			lm_qemu_vm_kill(vm, KILL_WAIT_MS);
		}
		char q[600];
		lm_log_error(MOD, "boot failed, qemu killed", "vm=%s err=%d why=%s", vm->name, -rc,
			     lm_log_quote(q, sizeof(q), errbuf ? errbuf : ""));
		return rc;
	}
	lm_log_info(MOD, "booted", "vm=%s accel=%s ms=%.1f waited_for_agent=%d", vm->name,
		    lm_qemu_accel_name(vm->accel), (lm_now_ns() - t0) / 1e6,
		    timeout_ms && vm->has_agent);
	return 0;
}

int lm_qemu_vm_cont(lm_qemu_vm_t *vm, unsigned flags, unsigned timeout_ms)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	pthread_mutex_lock(&vm->mu);
	bool incoming = vm->incoming;
	enum lm_qemu_mig_status ms = vm->mig_status;
	bool done_out = vm->outgoing_completed;
	pthread_mutex_unlock(&vm->mu);
	if (incoming && ms != LM_QEMU_MIG_COMPLETED) {
		lm_log_warn(MOD, "cont refused: incoming migration not completed", "vm=%s status=%s",
			    vm->name, lm_qemu_mig_status_name(ms));
		return -EBUSY;
	}
	if (done_out && !(flags & LM_QEMU_CONT_AFTER_MIGRATION)) {
		lm_log_warn(MOD, "cont refused: the guest migrated away", "vm=%s", vm->name);
		return -EPERM;
	}
	int rc = lm__vm_exec(vm, "cont", NULL, -1, timeout_ms, NULL, NULL, 0);
	if (rc == 0) {
		pthread_mutex_lock(&vm->mu);
		vm->incoming = false;           /* from now on an ordinary VM */
		if (done_out)
			vm->outgoing_completed = false;
		pthread_mutex_unlock(&vm->mu);
		lm_log_info(MOD, "resumed", "vm=%s%s", vm->name,
			    incoming ? " after incoming migration" :
			    done_out ? " after a completed outgoing migration (recovery)" : "");
	}
	return rc;
}

int lm_qemu_vm_disk_add(lm_qemu_vm_t *vm, const lm_qemu_disk_t *d, unsigned slot,
			unsigned timeout_ms, char *errbuf, size_t errlen)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	if (vm->machine != LM_QEMU_Q35) {
		errf(errbuf, errlen, "a microvm machine cannot hot-plug a disk (Machine q35 can)");
		return -ENOTSUP;
	}
	if (slot >= LM_QEMU_MAX_DISKS) {
		errf(errbuf, errlen, "no free disk slot (at most %d disks)", LM_QEMU_MAX_DISKS);
		return -ENOSPC;
	}
	char fnode[40], dev[40], bus[16];
	snprintf(fnode, sizeof(fnode), "f-%s", d->id);
	snprintf(dev, sizeof(dev), "dev-%s", d->id);
	snprintf(bus, sizeof(bus), "rp%u", slot);
	json_t *a1 = json_pack("{s:s, s:s, s:s, s:b}", "driver", "file", "filename", d->path,
			       "node-name", fnode, "read-only", d->read_only);
	int rc = lm__vm_exec(vm, "blockdev-add", a1, -1, timeout_ms, NULL, errbuf, errlen);
	if (rc)
		return rc;
	json_t *a2 = json_pack("{s:s, s:s, s:s, s:b}", "driver", "raw", "file", fnode, "node-name",
			       d->id, "read-only", d->read_only);
	rc = lm__vm_exec(vm, "blockdev-add", a2, -1, timeout_ms, NULL, errbuf, errlen);
	if (rc) {
		lm__vm_exec(vm, "blockdev-del", json_pack("{s:s}", "node-name", fnode), -1, timeout_ms,
			    NULL, NULL, 0);
		return rc;
	}
	json_t *a3 = json_pack("{s:s, s:s, s:s, s:s}", "driver", "virtio-blk-pci", "bus", bus,
			       "drive", d->id, "id", dev);
	if (a3 && d->serial)
		json_object_set_new(a3, "serial", json_string(d->serial));
	rc = lm__vm_exec(vm, "device_add", a3, -1, timeout_ms, NULL, errbuf, errlen);
	if (rc) {
		lm__vm_exec(vm, "blockdev-del", json_pack("{s:s}", "node-name", d->id), -1, timeout_ms,
			    NULL, NULL, 0);
		lm__vm_exec(vm, "blockdev-del", json_pack("{s:s}", "node-name", fnode), -1, timeout_ms,
			    NULL, NULL, 0);
		return rc;
	}
	lm_log_info(MOD, "disk hot-plugged", "vm=%s id=%s serial=%s slot=%u path=%s", vm->name, d->id,
		    d->serial ? d->serial : "-", slot, d->path);
	return 0;
}

/* Is device `dev` still a peripheral of the machine? 1 yes, 0 no, < 0
 * QMP's error. */
static int has_device(lm_qemu_vm_t *vm, const char *dev, unsigned timeout_ms)
{
	json_t *ret = NULL;
	int rc = lm__vm_exec(vm, "qom-list", json_pack("{s:s}", "path", "/machine/peripheral"), -1,
			     timeout_ms, &ret, NULL, 0);
	if (rc)
		return rc;
	int found = 0;
	size_t i;
	json_t *e;
	json_array_foreach(ret, i, e) {
		const char *n = json_string_value(json_object_get(e, "name"));
		if (n && !strcmp(n, dev))
			found = 1;
	}
	json_decref(ret);
	return found;
}

int lm_qemu_vm_disk_remove(lm_qemu_vm_t *vm, const char *id, unsigned timeout_ms, char *errbuf,
			   size_t errlen)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	char fnode[40], dev[40];
	snprintf(fnode, sizeof(fnode), "f-%s", id);
	snprintf(dev, sizeof(dev), "dev-%s", id);
	uint64_t t0 = lm_now_ns(), end = t0 + (uint64_t)timeout_ms * 1000000u;
	unsigned step = timeout_ms < 2000 ? timeout_ms : 2000;
	int rc = lm__vm_exec(vm, "device_del", json_pack("{s:s}", "id", dev), -1, step, NULL, errbuf,
			     errlen);
	if (rc)
		return rc;
	/* the guest takes it (QEMU says DEVICE_DELETED then): ask every 100 ms */
	while ((rc = has_device(vm, dev, step)) == 1 && lm_now_ns() < end) {
		struct timespec ts = {0, 100000000};
		nanosleep(&ts, NULL);
	}
	if (rc == 1) {
		errf(errbuf, errlen, "the guest did not release device %s within %u ms", dev, timeout_ms);
		return -ETIMEDOUT;
	}
	if (rc < 0) {
		errf(errbuf, errlen, "qom-list: %s", strerror(-rc));
		return rc;
	}
	/* the device lets go of its node a moment after it left the tree
	 * (QEMU finalizes it later): "Node ... is in use" until then */
	for (;;) {
		rc = lm__vm_exec(vm, "blockdev-del", json_pack("{s:s}", "node-name", id), -1, step,
				 NULL, errbuf, errlen);
		if (rc != -EREMOTEIO || lm_now_ns() >= end)
			break;
		struct timespec ts = {0, 20000000};
		nanosleep(&ts, NULL);
	}
	if (!rc)
		rc = lm__vm_exec(vm, "blockdev-del", json_pack("{s:s}", "node-name", fnode), -1, step,
				 NULL, errbuf, errlen);
	lm_log_info(MOD, "disk unplugged", "vm=%s id=%s rc=%d ms=%.1f", vm->name, id, rc,
		    (double)(lm_now_ns() - t0) / 1e6);
	return rc;
}

int lm_qemu_vm_stop(lm_qemu_vm_t *vm, unsigned timeout_ms)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	pthread_mutex_lock(&vm->mu);
	vm->user_stops++;
	pthread_mutex_unlock(&vm->mu);
	int rc = lm__vm_exec(vm, "stop", NULL, -1, timeout_ms, NULL, NULL, 0);
	pthread_mutex_lock(&vm->mu);
	vm->user_stops--;
	pthread_mutex_unlock(&vm->mu);
	return rc;
}

int lm_qemu_vm_shutdown(lm_qemu_vm_t *vm, unsigned grace_ms, enum lm_qemu_shutdown_how *how)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	enum lm_qemu_shutdown_how h = LM_QEMU_SHUTDOWN_ALREADY;
	int rc = 0;
	uint64_t t0 = lm_now_ns();
	if (lm_qemu_vm_wait_exit(vm, 0, NULL) == 0)
		goto out;
	if (lm__vm_exec(vm, "system_powerdown", NULL, -1, 2000, NULL, NULL, 0) == 0 &&
	    lm_qemu_vm_wait_exit(vm, grace_ms, NULL) == 0) {
		h = LM_QEMU_SHUTDOWN_GUEST;
		goto out;
	}
	lm__vm_exec(vm, "quit", NULL, -1, 2000, NULL, NULL, 0);
	if (lm_qemu_vm_wait_exit(vm, 2000, NULL) == 0) {
		h = LM_QEMU_SHUTDOWN_QUIT;
		goto out;
	}
	h = LM_QEMU_SHUTDOWN_KILLED;
	rc = lm_qemu_vm_kill(vm, KILL_WAIT_MS);
out:
	if (how)
		*how = h;
	lm_log_info(MOD, "shut down", "vm=%s how=%s ms=%.1f", vm->name,
		    h == LM_QEMU_SHUTDOWN_GUEST ? "guest" : h == LM_QEMU_SHUTDOWN_QUIT ? "quit" :
		    h == LM_QEMU_SHUTDOWN_KILLED ? "killed" : "already", (lm_now_ns() - t0) / 1e6);
	return rc;
}

static enum lm_qemu_runstate runstate_parse(const char *s)
{
	for (size_t i = 1; i < sizeof(runstate_names) / sizeof(runstate_names[0]); i++)
		if (s && !strcmp(s, runstate_names[i]))
			return (enum lm_qemu_runstate)i;
	return LM_QEMU_RS_OTHER;
}

int lm_qemu_vm_status(lm_qemu_vm_t *vm, lm_qemu_status_t *out, unsigned timeout_ms)
{
	json_t *r = NULL;
	memset(out, 0, sizeof(*out));
	int rc = lm__vm_exec(vm, "query-status", NULL, -1, timeout_ms, &r, NULL, 0);
	if (rc)
		return rc;
	const char *s = json_string_value(json_object_get(r, "status"));
	if (!s) {
		json_decref(r);
		return -EPROTO;
	}
	out->running = json_is_true(json_object_get(r, "running"));
	out->state = runstate_parse(s);
	snprintf(out->text, sizeof(out->text), "%s", s);
	json_decref(r);
	return 0;
}

int lm_qemu_vm_info(lm_qemu_vm_t *vm, lm_qemu_vm_info_t *out, unsigned timeout_ms)
{
	memset(out, 0, sizeof(*out));
	out->pid = vm->pid;
	out->qemu_version = lm_qmp_qemu_version(vm->qmp);
	out->accel = vm->accel;
	snprintf(out->accel_reason, sizeof(out->accel_reason), "%s", vm->accel_reason);
	pthread_mutex_lock(&vm->mu);
	out->agent_open = vm->agent_open;
	out->exit = vm->exit;
	pthread_mutex_unlock(&vm->mu);
	json_t *r = NULL;
	int rc = lm__vm_exec(vm, "query-memory-size-summary", NULL, -1, timeout_ms, &r, NULL, 0);
	if (rc)
		return rc;
	json_t *b = json_object_get(r, "base-memory");
	out->memory_bytes = json_is_integer(b) && json_integer_value(b) > 0
				    ? (uint64_t)json_integer_value(b) : 0;
	json_decref(r);
	rc = lm__vm_exec(vm, "query-cpus-fast", NULL, -1, timeout_ms, &r, NULL, 0);
	if (rc)
		return rc;
	if (!json_is_array(r)) {
		json_decref(r);
		return -EPROTO;
	}
	out->vcpus = (unsigned)json_array_size(r);
	for (size_t i = 0; i < json_array_size(r) && i < 8; i++) {
		json_t *t = json_object_get(json_array_get(r, i), "thread-id");
		out->vcpu_tids[i] = json_is_integer(t) ? (int)json_integer_value(t) : 0;
	}
	json_decref(r);
	return 0;
}

enum lm_qemu_accel lm_qemu_vm_accel(lm_qemu_vm_t *vm, const char **reason)
{
	if (reason)
		*reason = vm->accel_reason;
	return vm->accel;
}

lm_qmp_t *lm_qemu_vm_qmp(lm_qemu_vm_t *vm)
{
	return vm->qmp;
}

const char *lm_qemu_vm_name(const lm_qemu_vm_t *vm)
{
	return vm->name;
}

size_t lm_qemu_vm_console(lm_qemu_vm_t *vm, char *buf, size_t cap, uint64_t *total)
{
	pthread_mutex_lock(&vm->mu);
	size_t n = tail_copy(&vm->con, buf, cap);
	if (total)
		*total = vm->con.total;
	pthread_mutex_unlock(&vm->mu);
	return n;
}

size_t lm_qemu_vm_stderr(lm_qemu_vm_t *vm, char *buf, size_t cap, uint64_t *total)
{
	pthread_mutex_lock(&vm->mu);
	size_t n = tail_copy(&vm->err, buf, cap);
	if (total)
		*total = vm->err.total;
	pthread_mutex_unlock(&vm->mu);
	return n;
}

pid_t lm_qemu_vm_pid(const lm_qemu_vm_t *vm)
{
	return vm ? vm->pid : 0;
}
