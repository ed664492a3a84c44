/*
 * migrate.c: QEMU's live migration over QMP (see migrate.h).
 *
 * The status we wait on comes from QEMU's MIGRATION events (vm.c keeps it
 * in vm->mig_status); waits also ask query-migrate every 500 ms, so that
 * an event we could have missed never turns into a wait that only ends at
 * its deadline. An answer counts only if no event (nor our own start)
 * changed the status while it was asked: QEMU may write an "active" answer
 * just before its "completed" event, and our loop thread may handle the
 * event before the asking thread takes the answer.
 */
#include "hcs/qemu/vm_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define MOD "qemu"
#define MIG_FDNAME "lm-migrate"
#define INCOMING_FDNAME "lm-incoming"
#define POLL_MS 500

static const char *const mig_names[] = {
	[LM_QEMU_MIG_NONE] = "none",
	[LM_QEMU_MIG_SETUP] = "setup",
	[LM_QEMU_MIG_CANCELLING] = "cancelling",
	[LM_QEMU_MIG_CANCELLED] = "cancelled",
	[LM_QEMU_MIG_ACTIVE] = "active",
	[LM_QEMU_MIG_POSTCOPY_ACTIVE] = "postcopy-active",
	[LM_QEMU_MIG_POSTCOPY_PAUSED] = "postcopy-paused",
	[LM_QEMU_MIG_POSTCOPY_RECOVER] = "postcopy-recover",
	[LM_QEMU_MIG_COMPLETED] = "completed",
	[LM_QEMU_MIG_FAILED] = "failed",
	[LM_QEMU_MIG_COLO] = "colo",
	[LM_QEMU_MIG_PRE_SWITCHOVER] = "pre-switchover",
	[LM_QEMU_MIG_DEVICE] = "device",
	[LM_QEMU_MIG_WAIT_UNPLUG] = "wait-unplug",
	[LM_QEMU_MIG_UNKNOWN] = "unknown",
};

const char *lm_qemu_mig_status_name(enum lm_qemu_mig_status s)
{
	if ((unsigned)s < sizeof(mig_names) / sizeof(mig_names[0]))
		return mig_names[s];
	return "unknown";
}

enum lm_qemu_mig_status lm_qemu_mig_status_parse(const char *s)
{
	if (!s)
		return LM_QEMU_MIG_UNKNOWN;
	for (size_t i = 0; i < LM_QEMU_MIG_UNKNOWN; i++)
		if (!strcmp(s, mig_names[i]))
			return (enum lm_qemu_mig_status)i;
	return LM_QEMU_MIG_UNKNOWN;
}

static bool is_final(enum lm_qemu_mig_status s)
{
	return s == LM_QEMU_MIG_COMPLETED || s == LM_QEMU_MIG_FAILED ||
	       s == LM_QEMU_MIG_CANCELLED;
}

static bool in_flight(enum lm_qemu_mig_status s)
{
	return !is_final(s) && s != LM_QEMU_MIG_NONE && s != LM_QEMU_MIG_UNKNOWN;
}

void lm_qemu_migrate_params_init(lm_qemu_migrate_params_t *p)
{
	p->downtime_limit_ms = LM_QEMU_KEEP;
	p->max_bandwidth = LM_QEMU_KEEP;
	p->cpu_throttle_initial = LM_QEMU_KEEP;
	p->cpu_throttle_increment = LM_QEMU_KEEP;
	p->cpu_throttle_tailslow = LM_QEMU_KEEP;
	p->max_cpu_throttle = LM_QEMU_KEEP;
	p->auto_converge = LM_QEMU_KEEP;
	p->pause_before_switchover = LM_QEMU_KEEP;
	p->xbzrle = LM_QEMU_KEEP;
}

static bool pct_ok(int v)
{
	return v == LM_QEMU_KEEP || (v >= 1 && v <= 99);
}

static bool bool_ok(int v)
{
	return v == LM_QEMU_KEEP || v == 0 || v == 1;
}

static void add_cap(json_t *caps, const char *name, int v)
{
	if (v != LM_QEMU_KEEP)
		json_array_append_new(caps, json_pack("{s:s, s:b}", "capability", name,
						      "state", v));
}

int lm_qemu_migrate_set(lm_qemu_vm_t *vm, const lm_qemu_migrate_params_t *p,
			unsigned timeout_ms, char *errbuf, size_t errlen)
{
	if (!p || !pct_ok(p->cpu_throttle_initial) || !pct_ok(p->cpu_throttle_increment) ||
	    !pct_ok(p->max_cpu_throttle) || !bool_ok(p->cpu_throttle_tailslow) ||
	    !bool_ok(p->auto_converge) || !bool_ok(p->pause_before_switchover) ||
	    !bool_ok(p->xbzrle) ||
	    (p->downtime_limit_ms != LM_QEMU_KEEP &&
	     (p->downtime_limit_ms < 0 || p->downtime_limit_ms > 2000000)) ||
	    (p->max_bandwidth != LM_QEMU_KEEP && p->max_bandwidth < 0)) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "migration parameter out of range");
		return -EINVAL;
	}
	json_t *caps = json_array();
	add_cap(caps, "auto-converge", p->auto_converge);
	add_cap(caps, "pause-before-switchover", p->pause_before_switchover);
	add_cap(caps, "xbzrle", p->xbzrle);
	int rc = 0;
	if (!caps)
		return -ENOMEM;
	if (json_array_size(caps))
		rc = lm__vm_exec(vm, "migrate-set-capabilities",
				 json_pack("{s:o}", "capabilities", caps), -1, timeout_ms, NULL,
				 errbuf, errlen);
	else
		json_decref(caps);
	if (rc)
		return rc;
	json_t *a = json_object();
	if (!a)
		return -ENOMEM;
	if (p->downtime_limit_ms != LM_QEMU_KEEP)
		json_object_set_new(a, "downtime-limit", json_integer(p->downtime_limit_ms));
	if (p->max_bandwidth != LM_QEMU_KEEP)
		json_object_set_new(a, "max-bandwidth", json_integer(p->max_bandwidth));
	if (p->cpu_throttle_initial != LM_QEMU_KEEP)
		json_object_set_new(a, "cpu-throttle-initial", json_integer(p->cpu_throttle_initial));
	if (p->cpu_throttle_increment != LM_QEMU_KEEP)
		json_object_set_new(a, "cpu-throttle-increment",
				    json_integer(p->cpu_throttle_increment));
	if (p->cpu_throttle_tailslow != LM_QEMU_KEEP)
		json_object_set_new(a, "cpu-throttle-tailslow",
				    json_boolean(p->cpu_throttle_tailslow));
	if (p->max_cpu_throttle != LM_QEMU_KEEP)
		json_object_set_new(a, "max-cpu-throttle", json_integer(p->max_cpu_throttle));
	if (!json_object_size(a)) {
		json_decref(a);
		return 0;
	}
	return lm__vm_exec(vm, "migrate-set-parameters", a, -1, timeout_ms, NULL, errbuf, errlen);
}

/* The fault point, then QEMU gets `fd` as fdname (getfd, SCM_RIGHTS) and
 * runs cmd with uri "fd:fdname": a migration's start on either side. */
static int exec_on_fd(lm_qemu_vm_t *vm, const char *fault, const char *fdname, const char *cmd,
		      int fd, unsigned timeout_ms, char *errbuf, size_t errlen)
{
	int rc = LM_FAULT(fault);
	if (!rc)
		rc = lm__vm_exec(vm, "getfd", json_pack("{s:s}", "fdname", fdname), fd, timeout_ms,
				 NULL, errbuf, errlen);
	if (!rc)
		rc = lm__vm_exec(vm, cmd, json_pack("{s:s+}", "uri", "fd:", fdname), -1,
				 timeout_ms, NULL, errbuf, errlen);
	return rc;
}

int lm_qemu_migrate_start(lm_qemu_vm_t *vm, int fd, unsigned timeout_ms, char *errbuf,
			  size_t errlen)
{
	if (fd < 0) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "no socket");
		return -EINVAL;
	}
	pthread_mutex_lock(&vm->mu);
	int rc = 0;
	if (vm->incoming)
		rc = -EPERM;
	else if (in_flight(vm->mig_status))
		rc = -EBUSY;
	enum lm_qemu_mig_status was = vm->mig_status;
	if (!rc) {
		vm->mig_outgoing = true;
		vm->outgoing_completed = false;
		vm->blackout_reported = false;
		vm->sync_running = 0;
		lm__mig_status_from_event(vm, LM_QEMU_MIG_SETUP);
	}
	pthread_mutex_unlock(&vm->mu);
	if (rc) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "%s", rc == -EPERM ? "a destination cannot migrate out"
				 : "a migration is already under way");
		return rc;
	}
	rc = exec_on_fd(vm, "qemu.migrate", MIG_FDNAME, "migrate", fd, timeout_ms, errbuf, errlen);
	if (rc) {
		pthread_mutex_lock(&vm->mu);
		if (vm->mig_status == LM_QEMU_MIG_SETUP) {
			vm->mig_status = was;
			vm->mig_seq++;
		}
		pthread_cond_broadcast(&vm->cv);
		pthread_mutex_unlock(&vm->mu);
		lm_log_error(MOD, "migration did not start", "vm=%s err=%d", vm->name, -rc);
		return rc;
	}
	lm_log_info(MOD, "migration started", "vm=%s", vm->name);
	return 0;
}

int lm_qemu_migrate_incoming(lm_qemu_vm_t *vm, int fd, unsigned timeout_ms, char *errbuf,
			     size_t errlen)
{
	if (fd < 0) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "no socket");
		return -EINVAL;
	}
	pthread_mutex_lock(&vm->mu);
	int rc = !vm->incoming ? -EPERM : vm->mig_status != LM_QEMU_MIG_NONE ? -EBUSY : 0;
	if (!rc)
		lm__mig_status_from_event(vm, LM_QEMU_MIG_SETUP);
	pthread_mutex_unlock(&vm->mu);
	if (rc) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "%s", rc == -EPERM ? "not a migration destination"
				 : "its incoming stream already started");
		return rc;
	}
	rc = exec_on_fd(vm, "qemu.incoming", INCOMING_FDNAME, "migrate-incoming", fd, timeout_ms,
			errbuf, errlen);
	if (rc) {
		lm_log_error(MOD, "incoming migration did not start", "vm=%s err=%d", vm->name, -rc);
		return rc;       /* the status stays setup: the VM is destroyed next */
	}
	lm_log_info(MOD, "incoming migration started", "vm=%s", vm->name);
	return 0;
}

static int64_t get_i64(json_t *o, const char *k, int64_t dflt)
{
	json_t *v = json_object_get(o, k);
	return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static uint64_t get_u64(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v)
							       : 0;
}

void lm__mig_status_from_event(lm_qemu_vm_t *vm, enum lm_qemu_mig_status s)
{
	vm->mig_status = s;
	vm->mig_seq++;
	if (vm->mig_outgoing && s == LM_QEMU_MIG_COMPLETED)
		vm->outgoing_completed = true;
}

bool lm__mig_status_from_query(lm_qemu_vm_t *vm, unsigned seq, enum lm_qemu_mig_status s)
{
	if (vm->mig_seq != seq || s == LM_QEMU_MIG_NONE || s == vm->mig_status)
		return false;
	vm->mig_status = s;
	if (vm->mig_outgoing && s == LM_QEMU_MIG_COMPLETED)
		vm->outgoing_completed = true;
	return true;
}

int lm_qemu_migrate_query(lm_qemu_vm_t *vm, lm_qemu_migration_info_t *out,
			  unsigned timeout_ms)
{
	memset(out, 0, sizeof(*out));
	out->total_time_ms = out->setup_time_ms = out->downtime_ms =
		out->expected_downtime_ms = -1;
	json_t *r = NULL;
	pthread_mutex_lock(&vm->mu);
	unsigned seq = vm->mig_seq;
	pthread_mutex_unlock(&vm->mu);
	int rc = lm__vm_exec(vm, "query-migrate", NULL, -1, timeout_ms, &r, NULL, 0);
	if (rc)
		return rc;
	if (!json_is_object(r)) {
		json_decref(r);
		return -EPROTO;
	}
	const char *s = json_string_value(json_object_get(r, "status"));
	out->status = s ? lm_qemu_mig_status_parse(s) : LM_QEMU_MIG_NONE;
	out->total_time_ms = get_i64(r, "total-time", -1);
	out->setup_time_ms = get_i64(r, "setup-time", -1);
	out->downtime_ms = get_i64(r, "downtime", -1);
	out->expected_downtime_ms = get_i64(r, "expected-downtime", -1);
	out->cpu_throttle_percentage = (int)get_i64(r, "cpu-throttle-percentage", 0);
	json_t *ram = json_object_get(r, "ram");
	out->ram_transferred = get_u64(ram, "transferred");
	out->ram_remaining = get_u64(ram, "remaining");
	out->ram_total = get_u64(ram, "total");
	out->ram_duplicate = get_u64(ram, "duplicate");
	out->ram_normal = get_u64(ram, "normal");
	out->dirty_pages_rate = get_u64(ram, "dirty-pages-rate");
	out->dirty_sync_count = get_u64(ram, "dirty-sync-count");
	out->page_size = get_u64(ram, "page-size");
	json_t *mbps = json_object_get(ram, "mbps");
	out->mbps = json_is_number(mbps) ? json_number_value(mbps) : 0;
	const char *ed = json_string_value(json_object_get(r, "error-desc"));
	if (ed)
		snprintf(out->error_desc, sizeof(out->error_desc), "%s", ed);
	json_decref(r);
	/* a status we see here counts as much as one from an event, unless
	 * an event came while we asked: it is newer */
	if (s) {
		pthread_mutex_lock(&vm->mu);
		if (lm__mig_status_from_query(vm, seq, out->status))
			pthread_cond_broadcast(&vm->cv);
		pthread_mutex_unlock(&vm->mu);
	}
	return 0;
}

int lm_qemu_migrate_wait(lm_qemu_vm_t *vm, unsigned timeout_ms,
			 enum lm_qemu_mig_status stop_at, enum lm_qemu_mig_status *final)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	uint64_t end = lm_now_ns() + (uint64_t)timeout_ms * 1000000u;
	for (;;) {
		uint64_t now = lm_now_ns();
		uint64_t slice = end > now ? end - now : 0;
		if (slice > (uint64_t)POLL_MS * 1000000u)
			slice = (uint64_t)POLL_MS * 1000000u;
		struct timespec until = lm_timespec_in(CLOCK_MONOTONIC, (int64_t)slice);
		pthread_mutex_lock(&vm->mu);
		for (;;) {
			enum lm_qemu_mig_status s = vm->mig_status;
			if (is_final(s) || (stop_at != LM_QEMU_MIG_NONE && s == stop_at)) {
				if (final)
					*final = s;
				pthread_mutex_unlock(&vm->mu);
				return 0;
			}
			if (vm->exit.exited || vm->qmp_closed) {
				if (final)
					*final = s;
				pthread_mutex_unlock(&vm->mu);
				return -ECHILD;
			}
			if (lm__vm_wait_locked(vm, &until) == ETIMEDOUT)
				break;
		}
		pthread_mutex_unlock(&vm->mu);
		if (lm_now_ns() >= end) {
			if (final)
				*final = lm_qemu_migrate_status(vm);
			return -ETIMEDOUT;
		}
		lm_qemu_migration_info_t info;
		lm_qemu_migrate_query(vm, &info, POLL_MS); /* refreshes vm->mig_status */
	}
}

int lm_qemu_migrate_cancel(lm_qemu_vm_t *vm, unsigned timeout_ms,
			   enum lm_qemu_mig_status *final)
{
	if (lm_qemu_loop_on_thread(vm->loop))
		return -EDEADLK;
	uint64_t t0 = lm_now_ns();
	int rc = lm__vm_exec(vm, "migrate_cancel", NULL, -1, timeout_ms, NULL, NULL, 0);
	if (rc)
		return rc;
	uint64_t spent = (lm_now_ns() - t0) / 1000000u;
	unsigned left = spent < timeout_ms ? timeout_ms - (unsigned)spent : 1;
	enum lm_qemu_mig_status s = LM_QEMU_MIG_NONE;
	pthread_mutex_lock(&vm->mu);
	bool never = !in_flight(vm->mig_status);
	s = vm->mig_status;
	pthread_mutex_unlock(&vm->mu);
	if (!never)
		rc = lm_qemu_migrate_wait(vm, left, LM_QEMU_MIG_NONE, &s);
	if (final)
		*final = s;
	lm_log_info(MOD, "migration cancel", "vm=%s status=%s err=%d ms=%.1f", vm->name,
		    lm_qemu_mig_status_name(s), -rc, (lm_now_ns() - t0) / 1e6);
	return rc;
}

int lm_qemu_migrate_continue(lm_qemu_vm_t *vm, unsigned timeout_ms)
{
	return lm__vm_exec(vm, "migrate-continue", json_pack("{s:s}", "state", "pre-switchover"),
			   -1, timeout_ms, NULL, NULL, 0);
}

uint64_t lm_qemu_migrate_synced_running(lm_qemu_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	uint64_t pass = vm->sync_running;
	pthread_mutex_unlock(&vm->mu);
	return pass;
}

enum lm_qemu_mig_status lm_qemu_migrate_status(lm_qemu_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	enum lm_qemu_mig_status s = vm->mig_status;
	pthread_mutex_unlock(&vm->mu);
	return s;
}
