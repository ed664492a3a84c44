/*
 * hcs.c: the compute service. Turns HCS-shaped calls into work on a VM
 * backend and the transfer engine, and their outcomes into completion
 * callbacks and typed events (hcs.h).
 *
 * DESIGN: each compute system has one operation thread that runs its
 * queued operations in order (create, start, pause, properties, finalize,
 * ...). The transfer engine runs on its own thread; its events are turned
 * into hcs events here, on that thread, and complete the operations that
 * wait for a phase (migration_start waits for SetupDone, migration_transfer
 * for the end of the transfer). Cancel does not queue: it signals the
 * engine directly and then queues only its completion, so it is never
 * blocked behind a long operation. `mu` guards the system's state and the
 * pending-operation slots; `evmu` serializes event callbacks. The VM's
 * lifecycle ops run only on the operation thread, except the blackout
 * pause/resume of the engine, which runs while the operation thread does
 * not touch the VM (the migration states forbid it).
 */
#include "hcs/hcs.h"
#include "hcs/xfer/xfer.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"
#include "util/sched.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MOD "hcs"

enum mig_state {
	MS_NONE,
	MS_INITIALIZED,   /* source: options accepted */
	MS_STARTING,      /* engine handshaking */
	MS_SETUP_DONE,
	MS_TRANSFERRING,
	MS_COMPLETED,
	MS_FAILED,
	MS_FINALIZED,
};

enum op_kind {
	OP_CREATE, OP_START, OP_PAUSE, OP_RESUME, OP_TERMINATE, OP_PROPERTIES,
	OP_MIG_INIT, OP_MIG_START, OP_MIG_TRANSFER, OP_MIG_FINALIZE, OP_MIG_RECOVER, OP_DONE_ONLY,
	OP_DISK_ADD,
	OP_DISK_REMOVE,
};

/* One queued operation. Exactly one of done / pdone is set. */
struct op {
	struct op *next;
	enum op_kind kind;
	char *doc;                       /* OP_CREATE: the document; OP_DISK_ADD: the path */
	char serial[24];                 /* OP_DISK_ADD, OP_DISK_REMOVE */
	unsigned slot;                   /* OP_DISK_ADD */
	lm_hcs_migration_options_t mo;   /* OP_MIG_INIT */
	lm_hcs_migration_start_t start;  /* OP_MIG_START */
	enum lm_hcs_finalize_op fin;     /* OP_MIG_FINALIZE */
	unsigned query;                  /* OP_PROPERTIES */
	enum lm_hcs_recover_op rec;      /* OP_MIG_RECOVER */
	uint8_t secret[32];              /* OP_MIG_RECOVER */
	size_t secret_len;
	int sock;                        /* OP_MIG_START */
	int err;                         /* OP_DONE_ONLY */
	char why[256];                   /* OP_DONE_ONLY */
	lm_hcs_done_fn done;
	lm_hcs_properties_fn pdone;
	void *arg;
};

struct lm_hcs_system {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct op *head, *tail;
	bool stopping;

	pthread_mutex_t evmu;
	lm_hcs_event_fn ev;
	void *ev_arg;

	char id[128];
	char backend[16];
	uint64_t memory_bytes;
	unsigned vcpus;
	const lm_backend_ops_t *ops;
	lm_vm_t *vm;
	enum lm_hcs_vm_state vs;  /* mu */
	bool destination;
	enum mig_state ms;        /* mu */
	lm__xfer_opts_t xo;
	lm__xfer_t *xfer;
	/* operations waiting for an engine phase (mu) */
	lm_hcs_done_fn start_done;
	void *start_arg;
	lm_hcs_done_fn xfer_done;
	void *xfer_arg;
	int mig_err;              /* final engine result */
	char mig_msg[256];        /* and its reason */
	uint64_t dst_blackout_t0; /* destination: BlackoutStarted time */
	lm__xfer_stats_t last_stats;
	bool recovered;           /* source: the engine's recovery (or its failure) was reported */
	pthread_cond_t mcv;       /* signalled on engine phases (mu) */
	/* engines of earlier migrations still settling their handover: they
	 * keep their link open until both sides said their word (closing
	 * earlier would tell the peer that our VM is gone) */
	lm__xfer_t **old;
	unsigned n_old;
	/* the fast lane: completions that must not wait behind the queue
	 * (cancel), run on their own thread */
	pthread_t fth;
	pthread_cond_t fcv;
	struct op *fhead, *ftail; /* mu */
};

const char *lm_hcs_vm_state_name(enum lm_hcs_vm_state v)
{
	switch (v) {
	case LM_HCS_VM_CREATED: return "Created";
	case LM_HCS_VM_RUNNING: return "Running";
	case LM_HCS_VM_PAUSED: return "Paused";
	case LM_HCS_VM_STOPPED: return "Stopped";
	default: return "None";
	}
}

const char *lm_hcs_handover_state_name(enum lm_hcs_handover_state s)
{
	return lm__ho_state_name((enum lm__ho_state)s);
}

const char *lm_hcs_handover_link_name(enum lm_hcs_handover_link l)
{
	return lm__ho_link_name((enum lm__ho_link)l);
}

const char *lm_hcs_event_name(enum lm_hcs_event_kind k)
{
	switch (k) {
	case LM_HCS_EV_SETUP_DONE: return "SetupDone";
	case LM_HCS_EV_TRANSFER_IN_PROGRESS: return "TransferInProgress";
	case LM_HCS_EV_BLACKOUT_STARTED: return "BlackoutStarted";
	case LM_HCS_EV_OFFLINE_DONE: return "OfflineDone";
	case LM_HCS_EV_BLACKOUT_EXITED: return "BlackoutExited";
	case LM_HCS_EV_MIGRATION_DONE: return "MigrationDone";
	case LM_HCS_EV_RECOVERY_DONE: return "MigrationRecoveryDone";
	case LM_HCS_EV_MIGRATION_FAILED: return "MigrationFailed";
	case LM_HCS_EV_SYSTEM_EXITED: return "SystemExited";
	case LM_HCS_EV_HANDOVER: return "Handover";
	}
	return "Unknown";
}

/* ------------------------------------------------------------- options */

void lm_hcs_migration_options_default(lm_hcs_migration_options_t *o, enum lm_hcs_origin origin)
{
	lm__xfer_opts_t x;
	lm__xfer_opts_default(&x);
	memset(o, 0, sizeof(*o));
	o->origin = origin;
	o->skip_throttling = x.skip_throttling;
	o->throttling_scale = x.throttling_scale;
	o->min_throttle_pct = x.min_throttle_pct;
	o->target_passes = x.target_passes;
	o->start_throttle_pass = x.start_throttle_pass;
	o->max_passes = x.max_passes;
	o->target_blackout_ms = x.target_blackout_ms;
	o->blackout_cancel_ms = x.blackout_cancel_ms;
	o->cancel_if_blackout_exceeds = x.cancel_if_blackout_exceeds;
	o->compress_workers = x.compress_workers;
	o->checksum = x.checksum;
	o->perf_tracing = x.perf_tracing;
}

int lm_hcs_migration_options_check(const lm_hcs_migration_options_t *o, char *err, size_t n)
{
	const char *why = NULL;
	if (!o)
		why = "MigrationInitializeOptions: missing";
	else if (o->origin != LM_HCS_ORIGIN_SOURCE && o->origin != LM_HCS_ORIGIN_DESTINATION)
		why = "Origin must be Source or Destination";
	else if (!(o->throttling_scale >= 1 && o->throttling_scale <= 100))
		why = "MemoryTransferThrottleParams.ThrottlingScale must be within 1..100";
	else if (o->min_throttle_pct > 100)
		why = "MemoryTransferThrottleParams.MinimumThrottlePercentage must be within 0..100";
	else if (o->max_passes == 0 || o->max_passes < o->target_passes)
		why = "MemoryTransferThrottleParams.MaximumNumberOfBrownoutTransferPasses must be >= 1 "
		      "and >= TargetNumberOfBrownoutTransferPasses";
	else if (o->compress_workers > LM_HCS_MAX_COMPRESS_WORKERS)
		why = "CompressionSettings.ThrottleWorkerCount must be within 0..64";
	if (!why)
		return 0;
	if (err && n)
		snprintf(err, n, "%s", why);
	return -EINVAL;
}

/* The engine's options from HCS's (checked). */
static void xfer_opts_from(lm__xfer_opts_t *x, const lm_hcs_migration_options_t *o)
{
	lm__xfer_opts_default(x);
	x->skip_throttling = o->skip_throttling;
	x->throttling_scale = o->throttling_scale;
	x->min_throttle_pct = o->min_throttle_pct;
	x->target_passes = o->target_passes;
	x->start_throttle_pass = o->start_throttle_pass;
	x->max_passes = o->max_passes;
	x->target_blackout_ms = o->target_blackout_ms;
	x->blackout_cancel_ms = o->blackout_cancel_ms;
	x->cancel_if_blackout_exceeds = o->cancel_if_blackout_exceeds;
	x->compress_workers = o->compress_workers;
	x->checksum = o->checksum;
	x->perf_tracing = o->perf_tracing;
}

/* --------------------------------------------------------------- events */

static void send_event(lm_hcs_system_t *s, lm_hcs_event_t *e)
{
	e->origin = s->destination ? LM_HCS_ORIGIN_DESTINATION : LM_HCS_ORIGIN_SOURCE;
	pthread_mutex_lock(&s->evmu);
	if (s->ev)
		s->ev(s->ev_arg, e);
	pthread_mutex_unlock(&s->evmu);
}

static void send_simple(lm_hcs_system_t *s, enum lm_hcs_event_kind kind, enum lm_hcs_result r)
{
	lm_hcs_event_t e = { .kind = kind, .result = r };
	send_event(s, &e);
}

static enum lm_hcs_result result_of(enum lm__xfer_result r)
{
	switch (r) {
	case LM_XR_CANCELLED: return LM_HCS_RESULT_CANCELLED;
	case LM_XR_SOURCE_FAILED: return LM_HCS_RESULT_SOURCE_FAILED;
	case LM_XR_DEST_FAILED: return LM_HCS_RESULT_DESTINATION_FAILED;
	case LM_XR_RECOVERY_FAILED: return LM_HCS_RESULT_RECOVERY_FAILED;
	default: return LM_HCS_RESULT_SUCCESS;
	}
}

static void handover_of(lm__xfer_t *x, lm_hcs_handover_t *out)
{
	lm__ho_status_t st;
	memset(out, 0, sizeof(*out));
	if (!x)
		return;
	lm__xfer_ho_status(x, &st);
	out->state = (enum lm_hcs_handover_state)st.state;
	out->link = (enum lm_hcs_handover_link)st.link;
	out->may_run = st.may_run;
	out->may_resume = st.may_resume;
	out->in_doubt = st.in_doubt;
	out->has_secret = st.has_secret;
	memcpy(out->secret, st.secret, sizeof(out->secret));
	snprintf(out->why, sizeof(out->why), "%s", st.why);
}

/* Engine thread. */
static void on_xfer_event(void *arg, const lm__xfer_event_t *xe)
{
	lm_hcs_system_t *s = arg;
	lm_hcs_done_fn done = NULL;
	void *darg = NULL;
	int derr = 0;
	lm_hcs_event_t e = { .result = LM_HCS_RESULT_SUCCESS };

	switch (xe->type) {
	case LM_XEV_HANDOVER: {
		/* the engine that reports may be an earlier migration's, still
		 * settling: only the current one speaks for the system */
		pthread_mutex_lock(&s->mu);
		lm__xfer_t *cur = s->xfer;
		pthread_mutex_unlock(&s->mu);
		if (!cur)
			break;
		e.kind = LM_HCS_EV_HANDOVER;
		handover_of(cur, &e.u.handover);
		memset(e.u.handover.secret, 0, sizeof(e.u.handover.secret));   /* not for events */
		send_event(s, &e);
		break;
	}
	case LM_XEV_SETUP_DONE:
		pthread_mutex_lock(&s->mu);
		s->ms = MS_SETUP_DONE;
		done = s->start_done;
		darg = s->start_arg;
		s->start_done = NULL;
		pthread_mutex_unlock(&s->mu);
		send_simple(s, LM_HCS_EV_SETUP_DONE, LM_HCS_RESULT_SUCCESS);
		break;
	case LM_XEV_PROGRESS: {
		lm_hcs_progress_t *p = &e.u.progress;
		e.kind = LM_HCS_EV_TRANSFER_IN_PROGRESS;
		p->pass = xe->pass;
		p->bytes_sent = xe->bytes_sent;
		p->memory_bytes = s->memory_bytes;
		p->pages_sent = xe->pages_sent;
		p->pages_remaining = xe->pages_remaining;
		p->dirty_rate_mbps = xe->dirty_rate_mbps;
		p->bandwidth_mbps = xe->bandwidth_mbps;
		p->throttle_pct = xe->throttle_pct;
		p->elapsed_ms = xe->elapsed_ns / 1000000u;
		if (xe->bandwidth_mbps > 0)
			p->eta_ms = (uint64_t)((double)xe->pages_remaining * LM_PAGE_SIZE /
					       (xe->bandwidth_mbps * 1e6) * 1e3);
		send_event(s, &e);
		break;
	}
	case LM_XEV_BLACKOUT_STARTED:
		if (s->destination)
			s->dst_blackout_t0 = lm_now_ns();
		send_simple(s, LM_HCS_EV_BLACKOUT_STARTED, LM_HCS_RESULT_SUCCESS);
		break;
	case LM_XEV_OFFLINE_DONE:
		send_simple(s, LM_HCS_EV_OFFLINE_DONE, LM_HCS_RESULT_SUCCESS);
		break;
	case LM_XEV_BLACKOUT_EXITED:
		e.kind = LM_HCS_EV_BLACKOUT_EXITED;
		e.u.blackout.duration_ns = xe->blackout_ns;
		e.u.blackout.stop_wall_ns = xe->blackout_stop_wall_ns;
		send_event(s, &e);
		break;
	case LM_XEV_COMPLETED:
		pthread_mutex_lock(&s->mu);
		s->ms = MS_COMPLETED;
		s->mig_err = 0;
		pthread_cond_broadcast(&s->mcv);
		if (!s->destination)
			s->vs = LM_HCS_VM_PAUSED;
		done = s->xfer_done;
		darg = s->xfer_arg;
		s->xfer_done = NULL;
		pthread_mutex_unlock(&s->mu);
		break;
	case LM_XEV_FAILED:
		pthread_mutex_lock(&s->mu);
		s->ms = MS_FAILED;
		s->mig_err = xe->err ? xe->err : -EIO;
		snprintf(s->mig_msg, sizeof(s->mig_msg), "%s", xe->msg);
		derr = s->mig_err;
		pthread_cond_broadcast(&s->mcv);
		if (!s->destination) {
			/* The source's operation completes once it recovered. */
		} else if (s->start_done) {
			done = s->start_done;
			darg = s->start_arg;
			s->start_done = NULL;
		} else if (s->xfer_done) {
			done = s->xfer_done;
			darg = s->xfer_arg;
			s->xfer_done = NULL;
		}
		pthread_mutex_unlock(&s->mu);
		e.kind = LM_HCS_EV_MIGRATION_FAILED;
		e.result = result_of(xe->result);
		e.u.failure.err = derr;
		snprintf(e.u.failure.message, sizeof(e.u.failure.message), "%s", xe->msg);
		send_event(s, &e);
		break;
	case LM_XEV_RECOVERY_DONE:
	case LM_XEV_RECOVERY_FAILED:
		pthread_mutex_lock(&s->mu);
		if (s->vs == LM_HCS_VM_PAUSED && xe->type == LM_XEV_RECOVERY_DONE)
			s->vs = LM_HCS_VM_RUNNING;
		s->recovered = true;
		pthread_cond_broadcast(&s->mcv);
		derr = s->mig_err ? s->mig_err : -EIO;
		if (s->start_done) {
			done = s->start_done;
			darg = s->start_arg;
			s->start_done = NULL;
		} else if (s->xfer_done) {
			done = s->xfer_done;
			darg = s->xfer_arg;
			s->xfer_done = NULL;
		}
		pthread_mutex_unlock(&s->mu);
		if (xe->type == LM_XEV_RECOVERY_DONE) {
			send_simple(s, LM_HCS_EV_RECOVERY_DONE, LM_HCS_RESULT_SUCCESS);
		} else {
			e.kind = LM_HCS_EV_MIGRATION_FAILED;
			e.result = LM_HCS_RESULT_RECOVERY_FAILED;
			e.u.failure.err = derr;
			snprintf(e.u.failure.message, sizeof(e.u.failure.message),
				 "the source could not resume after the failed migration: %s", s->mig_msg);
			send_event(s, &e);
		}
		break;
	}
	if (done)
		done(darg, derr, derr ? s->mig_msg : NULL);
}

/* -------------------------------------------------------------- parsing */

static int get_uint(json_t *o, const char *k, unsigned *out, char *err, size_t n)
{
	json_t *v = json_object_get(o, k);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    json_integer_value(v) > 0xffffffffll) {
		snprintf(err, n, "%s must be an unsigned 32-bit integer", k);
		return -EINVAL;
	}
	*out = (unsigned)json_integer_value(v);
	return 0;
}

static int parse_document(const char *doc, lm_vm_config_t *cfg, char *err, size_t n)
{
	json_error_t je;
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->backend, sizeof(cfg->backend), "sim");
	cfg->vcpus = 1;
	cfg->workload.threads = 1;
	cfg->workload.hot_fraction = 0.1;
	cfg->workload.seed = 1;
	json_t *j = json_loads(doc, 0, &je);
	if (!j || !json_is_object(j)) {
		snprintf(err, n, "document is not a JSON object (%s)", je.text);
		json_decref(j);
		return -EINVAL;
	}
	int rc = 0;
	json_t *v;
	if ((v = json_object_get(j, "Id")) && json_is_string(v))
		snprintf(cfg->id, sizeof(cfg->id), "%s", json_string_value(v));
	json_t *vmj = json_object_get(j, "VirtualMachine");
	if (!json_is_object(vmj)) {
		snprintf(err, n, "VirtualMachine missing");
		rc = -EINVAL;
		goto out;
	}
	if ((v = json_object_get(vmj, "Backend"))) {
		if (!json_is_string(v) || strlen(json_string_value(v)) >= sizeof(cfg->backend)) {
			snprintf(err, n, "VirtualMachine.Backend must be a backend name");
			rc = -EINVAL;
			goto out;
		}
		snprintf(cfg->backend, sizeof(cfg->backend), "%s", json_string_value(v));
	}
	json_t *mem = json_object_get(json_object_get(json_object_get(vmj, "ComputeTopology"), "Memory"), "SizeInMB");
	if (!json_is_integer(mem) || json_integer_value(mem) <= 0 ||
	    json_integer_value(mem) > (1ll << 24)) {
		snprintf(err, n, "VirtualMachine.ComputeTopology.Memory.SizeInMB must be a positive integer");
		rc = -EINVAL;
		goto out;
	}
	cfg->memory_bytes = (uint64_t)json_integer_value(mem) << 20;
	json_t *cpu = json_object_get(json_object_get(json_object_get(vmj, "ComputeTopology"), "Processor"), "Count");
	if (cpu) {
		if (!json_is_integer(cpu) || json_integer_value(cpu) < 1 || json_integer_value(cpu) > 256) {
			snprintf(err, n, "Processor.Count must be within 1..256");
			rc = -EINVAL;
			goto out;
		}
		cfg->vcpus = (unsigned)json_integer_value(cpu);
	}
	json_t *w = json_object_get(vmj, "GuestWorkload");
	if (w) {
		if ((rc = get_uint(w, "Threads", &cfg->workload.threads, err, n)) < 0)
			goto out;
		if (cfg->workload.threads == 0 || cfg->workload.threads > 64) {
			snprintf(err, n, "GuestWorkload.Threads must be within 1..64");
			rc = -EINVAL;
			goto out;
		}
		if ((v = json_object_get(w, "RateMBps"))) {
			if (!json_is_number(v)) {
				snprintf(err, n, "GuestWorkload.RateMBps must be a number");
				rc = -EINVAL;
				goto out;
			}
			cfg->workload.rate_mbps = json_number_value(v);
		}
		if ((v = json_object_get(w, "HotSetFraction"))) {
			if (!json_is_number(v) || json_number_value(v) <= 0 || json_number_value(v) > 1) {
				snprintf(err, n, "GuestWorkload.HotSetFraction must be within (0, 1]");
				rc = -EINVAL;
				goto out;
			}
			cfg->workload.hot_fraction = json_number_value(v);
		}
		if ((v = json_object_get(w, "Seed")) && json_is_integer(v))
			cfg->workload.seed = (uint64_t)json_integer_value(v);
		const char *p = json_string_value(json_object_get(w, "Pattern"));
		if (p) {
			if (!strcmp(p, "Uniform")) cfg->workload.pattern = LM_PATTERN_UNIFORM;
			else if (!strcmp(p, "HotSet")) cfg->workload.pattern = LM_PATTERN_HOTSET;
			else if (!strcmp(p, "Sequential")) cfg->workload.pattern = LM_PATTERN_SEQUENTIAL;
			else {
				snprintf(err, n, "GuestWorkload.Pattern unknown: %s", p);
				rc = -EINVAL;
				goto out;
			}
		}
		const char *f = json_string_value(json_object_get(w, "Fill"));
		if (f) {
			if (!strcmp(f, "Zero")) cfg->workload.fill = LM_FILL_ZERO;
			else if (!strcmp(f, "Random")) cfg->workload.fill = LM_FILL_RANDOM;
			else if (!strcmp(f, "Zero90")) cfg->workload.fill = LM_FILL_ZERO90;
			else {
				snprintf(err, n, "GuestWorkload.Fill unknown: %s", f);
				rc = -EINVAL;
				goto out;
			}
		}
	}
	if (!cfg->id[0])
		snprintf(cfg->id, sizeof(cfg->id), "vm");
out:
	json_decref(j);
	return rc;
}

/* ------------------------------------------------------------ op queue */

static struct op *op_new(enum op_kind kind, lm_hcs_done_fn done, void *arg)
{
	struct op *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->kind = kind;
	o->sock = -1;
	o->done = done;
	o->arg = arg;
	return o;
}

static int enqueue(lm_hcs_system_t *s, struct op *o)
{
	if (!o)
		return -ENOMEM;
	pthread_mutex_lock(&s->mu);
	if (s->tail)
		s->tail->next = o;
	else
		s->head = o;
	s->tail = o;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static int enqueue_simple(lm_hcs_system_t *s, enum op_kind kind, lm_hcs_done_fn done, void *arg)
{
	if (!s || !done)
		return -EINVAL;
	return enqueue(s, op_new(kind, done, arg));
}

static void complete(struct op *o, int err, const char *why)
{
	if (o->pdone)
		o->pdone(o->arg, err, why, NULL);
	else
		o->done(o->arg, err, err ? why : NULL);
}

static void fail_op(struct op *o, int err, const char *why)
{
	lm_log_warn(MOD, "operation failed", "err=%d why=\"%s\"", err, why);
	complete(o, err, why);
}

static void do_create(lm_hcs_system_t *s, struct op *o)
{
	char err[400] = "";
	lm_vm_config_t cfg;
	int rc = LM_FAULT("hcs.create");
	if (rc < 0)
		return fail_op(o, rc, "create failed (fault)");
	if ((rc = parse_document(o->doc, &cfg, err, sizeof(err))) < 0)
		return fail_op(o, rc, err);
	const lm_backend_ops_t *ops = lm_backend_find(cfg.backend);
	if (!ops) {
		snprintf(err, sizeof(err), "unknown backend \"%s\"", cfg.backend);
		return fail_op(o, -ENOENT, err);
	}
	cfg.incoming = s->destination;
	cfg.document_json = o->doc;
	char why[200] = "";
	cfg.why = why;
	cfg.why_cap = sizeof(why);
	lm_vm_t *vm = NULL;
	if ((rc = ops->create(&vm, &cfg)) < 0) {
		snprintf(err, sizeof(err), "backend %s could not create the VM: %s",
			 cfg.backend, why[0] ? why : strerror(-rc));
		return fail_op(o, rc, err);
	}
	pthread_mutex_lock(&s->mu);
	s->ops = ops;
	s->vm = vm;
	s->vs = LM_HCS_VM_CREATED;
	s->memory_bytes = cfg.memory_bytes;
	s->vcpus = cfg.vcpus;
	snprintf(s->id, sizeof(s->id), "%s", cfg.id);
	snprintf(s->backend, sizeof(s->backend), "%s", cfg.backend);
	pthread_mutex_unlock(&s->mu);
	complete(o, 0, NULL);
}

static bool migrating(lm_hcs_system_t *s)
{
	return s->ms == MS_STARTING || s->ms == MS_SETUP_DONE || s->ms == MS_TRANSFERRING;
}

/* A disk attached to, or detached from, the running VM (o->kind). */
static void do_disk(lm_hcs_system_t *s, struct op *o)
{
	bool add = o->kind == OP_DISK_ADD;
	pthread_mutex_lock(&s->mu);
	bool quiet = s->ms == MS_NONE || s->ms == MS_FINALIZED;
	bool have = s->vm != NULL;
	enum lm_hcs_vm_state vs = s->vs;
	pthread_mutex_unlock(&s->mu);
	if (!have)
		return fail_op(o, -EPERM, "no VM (create failed or not finished)");
	if (!quiet)
		return fail_op(o, -EBUSY, "a live migration session holds the VM's shape");
	if (vs != LM_HCS_VM_RUNNING && vs != LM_HCS_VM_PAUSED)
		return fail_op(o, -EPERM, "the VM is not running");
	if (add ? !s->ops->disk_add : !s->ops->disk_remove)
		return fail_op(o, -ENOTSUP, add ? "this backend attaches no disk to a running VM"
						: "this backend detaches no disk from a running VM");
	int rc = LM_FAULT(add ? "hcs.disk_add" : "hcs.disk_remove");
	if (rc < 0)
		return fail_op(o, rc, add ? "disk add failed (fault)" : "disk remove failed (fault)");
	char why[256] = "";
	rc = add ? s->ops->disk_add(s->vm, o->serial, o->doc, o->slot, why, sizeof(why))
		 : s->ops->disk_remove(s->vm, o->serial, why, sizeof(why));
	if (rc < 0)
		return fail_op(o, rc, why[0] ? why : strerror(-rc));
	complete(o, 0, NULL);
}

static void do_lifecycle(lm_hcs_system_t *s, struct op *o)
{
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	bool busy = migrating(s) || (s->ms == MS_COMPLETED && !s->destination);
	bool have = s->vm != NULL;
	enum lm_hcs_vm_state vs = s->vs;
	bool dest_waiting = s->destination && s->ms != MS_FINALIZED;
	pthread_mutex_unlock(&s->mu);
	if (!have)
		return fail_op(o, -EPERM, "no VM (create failed or not finished)");
	if (busy && o->kind != OP_TERMINATE)
		return fail_op(o, -EPERM, "a live migration owns the VM: finalize or cancel first");
	enum lm_hcs_vm_state next = vs;
	switch (o->kind) {
	case OP_START:
		if (dest_waiting)
			return fail_op(o, -EPERM, "a migration destination starts with finalize Resume");
		if ((rc = LM_FAULT("hcs.start")) < 0)
			return fail_op(o, rc, "start failed (fault)");
		if (vs == LM_HCS_VM_STOPPED)
			return fail_op(o, -EPERM, "VM is stopped");
		rc = vs == LM_HCS_VM_RUNNING ? 0 : s->ops->start(s->vm);
		next = LM_HCS_VM_RUNNING;
		break;
	case OP_PAUSE:
		if (vs != LM_HCS_VM_RUNNING && vs != LM_HCS_VM_PAUSED)
			return fail_op(o, -EPERM, "VM is not running");
		rc = s->ops->pause(s->vm);
		next = LM_HCS_VM_PAUSED;
		break;
	case OP_RESUME:
		if (vs != LM_HCS_VM_RUNNING && vs != LM_HCS_VM_PAUSED)
			return fail_op(o, -EPERM, "VM is not paused");
		rc = s->ops->resume(s->vm);
		next = LM_HCS_VM_RUNNING;
		break;
	default: /* OP_TERMINATE */
		if (busy && s->xfer)
			lm__xfer_cancel(s->xfer);
		rc = s->ops->terminate(s->vm);
		next = LM_HCS_VM_STOPPED;
		break;
	}
	if (rc < 0)
		return fail_op(o, rc, strerror(-rc));
	pthread_mutex_lock(&s->mu);
	s->vs = next;
	pthread_mutex_unlock(&s->mu);
	if (o->kind == OP_TERMINATE && vs != LM_HCS_VM_STOPPED)
		send_simple(s, LM_HCS_EV_SYSTEM_EXITED, LM_HCS_RESULT_SUCCESS);
	complete(o, 0, NULL);
}

static void do_properties(lm_hcs_system_t *s, struct op *o)
{
	int rc = LM_FAULT("hcs.properties");
	if (rc < 0)
		return fail_op(o, rc, "properties failed (fault)");
	if (!s->vm)
		return fail_op(o, -EPERM, "no VM");
	lm_hcs_properties_t *p = calloc(1, sizeof(*p));
	if (!p)
		return fail_op(o, -ENOMEM, "out of memory");
	s->ops->stats(s->vm, &p->stats);
	int cl = s->ops->compat_get(s->vm, p->compat, sizeof(p->compat));
	p->compat_len = cl > 0 ? (size_t)cl : 0;
	pthread_mutex_lock(&s->mu);
	snprintf(p->id, sizeof(p->id), "%s", s->id);
	snprintf(p->backend, sizeof(p->backend), "%s", s->backend);
	p->state = s->vs;
	p->memory_bytes = s->memory_bytes;
	p->vcpus = s->vcpus;
	p->has_migration = s->ms != MS_NONE;
	lm__xfer_stats_t xs = s->last_stats;
	if (s->xfer)
		lm__xfer_get_stats(s->xfer, &xs);
	pthread_mutex_unlock(&s->mu);
	p->migration.passes = xs.passes;
	p->migration.bytes_sent = xs.bytes_sent;
	p->migration.pages_sent = xs.pages_sent;
	p->migration.zero_pages = xs.zero_pages;
	p->migration.blackout_ns = xs.blackout_ns;
	p->migration.total_ns = xs.total_ns;
	p->migration.max_throttle_pct = xs.max_throttle_pct;
	p->migration.sched = xs.sched;
	if ((o->query & LM_HCS_QUERY_DIGEST) && p->stats.running) {
		/* the guest writes while we would read: no stable (nor race-free)
		 * value exists; say so instead of hashing moving memory */
		p->digest_skipped = "the guest is running: pause it for a stable digest";
	} else if ((o->query & LM_HCS_QUERY_DIGEST) && s->ops->stream_open) {
		p->digest_skipped = "the VMM keeps the guest's memory to itself (no digest)";
	} else if (o->query & LM_HCS_QUERY_DIGEST) {
		if ((rc = lm__mem_digest(s->ops, s->vm, &p->digest)) < 0) {
			free(p);
			return fail_op(o, rc, "digest failed");
		}
		p->has_digest = true;
	}
	o->pdone(o->arg, 0, NULL, p);
	free(p);
}

/* mu held. The engine of an earlier migration (of a system that was
 * migrated here and is migrated on now) may still be settling its
 * handover: it keeps its link until both sides said their word. */
static void retire_xfer(lm_hcs_system_t *s)
{
	unsigned k = 0;
	for (unsigned i = 0; i < s->n_old; i++) {
		if (lm__xfer_finished(s->old[i]))
			lm__xfer_destroy(s->old[i]);   /* its thread is done: no wait */
		else
			s->old[k++] = s->old[i];
	}
	s->n_old = k;
	if (!s->xfer)
		return;
	lm__xfer_stats_t st;
	lm__xfer_get_stats(s->xfer, &st);
	s->last_stats = st;
	lm__xfer_t **n = realloc(s->old, (s->n_old + 1) * sizeof(*n));
	if (n) {
		s->old = n;
		s->old[s->n_old++] = s->xfer;
	} else {
		lm__xfer_destroy(s->xfer);     /* out of memory: only the close is left */
	}
	s->xfer = NULL;
}

static void do_mig_init(lm_hcs_system_t *s, struct op *o)
{
	char err[200] = "";
	int frc = LM_FAULT("hcs.migration_initialize");
	if (frc < 0)
		return fail_op(o, frc, "migration_initialize failed (fault)");
	if (lm_hcs_migration_options_check(&o->mo, err, sizeof(err)) < 0)
		return fail_op(o, -EINVAL, err);
	if (o->mo.origin != LM_HCS_ORIGIN_SOURCE)
		return fail_op(o, -EINVAL, "migration_initialize is for the source (Origin Source)");
	pthread_mutex_lock(&s->mu);
	if (s->destination && s->ms == MS_FINALIZED && s->vs == LM_HCS_VM_RUNNING) {
		/* a system that arrived by migration and runs is an ordinary
		 * one: it may be migrated on (as a source) */
		s->destination = false;
		s->ms = MS_NONE;
	}
	if (s->destination) {
		pthread_mutex_unlock(&s->mu);
		return fail_op(o, -EPERM, "this system is a migration destination that has not run yet");
	}
	if (!s->vm || (s->vs != LM_HCS_VM_RUNNING && s->vs != LM_HCS_VM_PAUSED) ||
	    (s->ms != MS_NONE && s->ms != MS_INITIALIZED && s->ms != MS_FINALIZED)) {
		pthread_mutex_unlock(&s->mu);
		return fail_op(o, -EPERM, "source must be running with no migration in progress");
	}
	xfer_opts_from(&s->xo, &o->mo);
	retire_xfer(s);   /* the last migration's engine is no longer ours to drive */
	s->ms = MS_INITIALIZED;
	pthread_mutex_unlock(&s->mu);
	complete(o, 0, NULL);
}

static void do_mig_start(lm_hcs_system_t *s, struct op *o)
{
	char err[200];
	int sock = o->sock;
	lm_link_io_t *io = o->start.io;
	o->sock = -1;
	o->start.io = NULL;
	int frc = LM_FAULT("hcs.migration_start");
	if (frc < 0) {
		lm_link_close(sock, io);
		return fail_op(o, frc, "migration_start failed (fault)");
	}
	if (o->start.transfer_cpu_pct > LM_SCHED_RESERVE_MAX) {
		lm_link_close(sock, io);
		snprintf(err, sizeof(err), "MigrationStartOptions.TransferCpuReservePercent must be within 0..%d",
			 LM_SCHED_RESERVE_MAX);
		return fail_op(o, -EINVAL, err);
	}
	pthread_mutex_lock(&s->mu);
	bool ok = s->vm && (s->destination ? s->ms == MS_NONE : s->ms == MS_INITIALIZED);
	if (!ok) {
		pthread_mutex_unlock(&s->mu);
		lm_link_close(sock, io);
		return fail_op(o, -EPERM, s->destination ? "destination not ready for a migration"
					 : "migration_initialize first");
	}
	retire_xfer(s);
	s->xo.session_id = o->start.session_id;
	s->xo.cpu_reserve_pct = o->start.transfer_cpu_pct;
	s->xo.handover = true;
	s->xo.stall_ms = o->start.stall_ms ? o->start.stall_ms : 10000;
	s->xo.keepalive_ms = o->start.keepalive_ms ? o->start.keepalive_ms : 1000;
	s->xo.bound = o->start.bound;
	s->xo.vmm_carry = o->start.vmm_carry;
	memcpy(s->xo.binding, o->start.binding, sizeof s->xo.binding);
	s->recovered = false;
	s->ms = MS_STARTING;
	s->start_done = o->done;
	s->start_arg = o->arg;
	lm__xfer_opts_t xo = s->xo;
	xo.io = io;                 /* (this link's only: not kept in s->xo) */
	/* The engine may report SetupDone before we store the pointer: hold
	 * mu across create so its callback sees s->xfer set. */
	lm__xfer_t *x = NULL;
	int rc = lm__xfer_create(&x, s->destination ? LM_XFER_DEST : LM_XFER_SOURCE,
				 s->ops, s->vm, sock, &xo, on_xfer_event, s);
	if (rc == 0) {
		s->xfer = x;
	} else {
		s->start_done = NULL;
		s->ms = s->destination ? MS_NONE : MS_INITIALIZED;
	}
	pthread_mutex_unlock(&s->mu);
	if (rc < 0)
		fail_op(o, rc, "could not start the transfer engine");
	/* else: completed by SetupDone / MigrationFailed */
}

static void do_mig_transfer(lm_hcs_system_t *s, struct op *o)
{
	pthread_mutex_lock(&s->mu);
	if (s->ms == MS_COMPLETED) {
		pthread_mutex_unlock(&s->mu);
		return complete(o, 0, NULL);
	}
	if (s->ms == MS_FAILED) {
		int e = s->mig_err;
		char m[sizeof(s->mig_msg)];
		snprintf(m, sizeof(m), "%s", s->mig_msg);
		pthread_mutex_unlock(&s->mu);
		return complete(o, e, m);
	}
	if (s->ms == MS_TRANSFERRING) {
		pthread_mutex_unlock(&s->mu);
		return fail_op(o, -EALREADY, "transfer already running");
	}
	if (s->ms != MS_SETUP_DONE || !s->xfer) {
		pthread_mutex_unlock(&s->mu);
		return fail_op(o, -EPERM, "migration_start must complete first");
	}
	s->ms = MS_TRANSFERRING;
	s->xfer_done = o->done;
	s->xfer_arg = o->arg;
	lm__xfer_go(s->xfer);
	pthread_mutex_unlock(&s->mu);
}

static void set_vm_state(lm_hcs_system_t *s, enum lm_hcs_vm_state vs, enum mig_state ms)
{
	pthread_mutex_lock(&s->mu);
	s->vs = vs;
	s->ms = ms;
	pthread_mutex_unlock(&s->mu);
}

/* How long a finalize waits for the peer's word: the link's own bound. */
static uint64_t peer_wait_ns(lm_hcs_system_t *s)
{
	return (uint64_t)(s->xo.stall_ms ? s->xo.stall_ms : 10000) * 1000000ull;
}

/* Op thread. A finalize of a running transfer stops it first; the engine
 * then fails and (source) recovers the VM: wait for that (bounded). */
static void stop_running_transfer(lm_hcs_system_t *s)
{
	pthread_mutex_lock(&s->mu);
	if (migrating(s) && s->xfer) {
		lm__xfer_cancel(s->xfer);
		uint64_t deadline = lm_now_ns() + 10000000000ull;
		while ((migrating(s) || (!s->destination && s->ms == MS_FAILED && !s->recovered)) &&
		       lm_now_ns() < deadline) {
			struct timespec ts = lm_timespec_in(CLOCK_REALTIME, 100000000ll);
			pthread_cond_timedwait(&s->mcv, &s->mu, &ts);
		}
	}
	pthread_mutex_unlock(&s->mu);
}

static void dest_started(lm_hcs_system_t *s)
{
	uint64_t bo = s->dst_blackout_t0 ? lm_now_ns() - s->dst_blackout_t0 : 0;
	set_vm_state(s, LM_HCS_VM_RUNNING, MS_FINALIZED);
	lm_hcs_event_t e = { .kind = LM_HCS_EV_BLACKOUT_EXITED };
	e.u.blackout.duration_ns = bo;
	e.u.blackout.stop_wall_ns = lm_wall_ns();
	send_event(s, &e);
	send_simple(s, LM_HCS_EV_MIGRATION_DONE, LM_HCS_RESULT_SUCCESS);
}

static void do_mig_finalize(lm_hcs_system_t *s, struct op *o)
{
	bool stop = o->fin == LM_HCS_FINALIZE_STOP;
	char why[256] = "";
	int rc = LM_FAULT("hcs.finalize");
	if (rc < 0)
		return fail_op(o, rc, "finalize failed (fault)");
	if (!s->vm)
		return fail_op(o, -EPERM, "no VM");
	stop_running_transfer(s);
	pthread_mutex_lock(&s->mu);
	enum mig_state ms = s->ms;
	enum lm_hcs_vm_state vs = s->vs;
	lm__xfer_t *x = s->xfer;
	pthread_mutex_unlock(&s->mu);
	lm_hcs_handover_t ho;
	handover_of(x, &ho);

	if (!s->destination) {
		if (stop) {
			if (ms == MS_FINALIZED && vs == LM_HCS_VM_STOPPED)
				return complete(o, 0, NULL);
			if (ms != MS_COMPLETED)
				return fail_op(o, -EPERM, "source STOP only after a completed transfer: finalize with RESUME");
			/* the paused copy goes only once the destination runs the guest */
			if ((rc = lm__xfer_ho_wait_committed(x, peer_wait_ns(s), why, sizeof(why))) < 0)
				return fail_op(o, rc, why);
			s->ops->terminate(s->vm);
			set_vm_state(s, LM_HCS_VM_STOPPED, MS_FINALIZED);
			send_simple(s, LM_HCS_EV_MIGRATION_DONE, LM_HCS_RESULT_SUCCESS);
			return complete(o, 0, NULL);
		}
		/* Resume: idempotent, reconciles with the real VM state. After a
		 * complete transfer the source keeps the guest only if it never
		 * granted it, and says so before it runs it again. */
		if (vs == LM_HCS_VM_STOPPED)
			return fail_op(o, -EPERM, "source VM already stopped");
		if (ho.state != LM_HCS_HO_NONE &&
		    (rc = lm__xfer_ho_revoke(x, true, why, sizeof(why))) < 0)
			return fail_op(o, rc, why);
		if ((rc = s->ops->resume(s->vm)) < 0)
			return fail_op(o, rc, "resuming the source VM failed");
		s->ops->set_throttle(s->vm, 0);
		set_vm_state(s, LM_HCS_VM_RUNNING, MS_FINALIZED);
		if (ms == MS_COMPLETED || (ms == MS_FAILED && vs == LM_HCS_VM_PAUSED))
			send_simple(s, LM_HCS_EV_RECOVERY_DONE, LM_HCS_RESULT_SUCCESS);
		return complete(o, 0, NULL);
	}
	/* Destination. */
	if (!stop) {
		if (ms == MS_FINALIZED && vs == LM_HCS_VM_RUNNING)
			return complete(o, 0, NULL);
		if (ms != MS_COMPLETED)
			return fail_op(o, -EPERM, "destination holds no complete VM: finalize with STOP");
		/* the guest runs here only with the source's grant */
		if ((rc = lm__xfer_ho_commit(x, peer_wait_ns(s), why, sizeof(why))) < 0)
			return fail_op(o, rc, why);
		if ((rc = s->ops->start(s->vm)) < 0)
			return fail_op(o, rc, "starting the migrated VM failed");
		dest_started(s);
		return complete(o, 0, NULL);
	}
	/* Destination STOP: discard what was received, never to run it. */
	if (ho.state != LM_HCS_HO_NONE && (rc = lm__xfer_ho_release(x, why, sizeof(why))) < 0)
		return fail_op(o, rc, why);
	s->ops->terminate(s->vm);
	set_vm_state(s, LM_HCS_VM_STOPPED, MS_FINALIZED);
	complete(o, 0, NULL);
}

/* Recovery across a broken link (lm_hcs_migration_recover). */
static void do_mig_recover(lm_hcs_system_t *s, struct op *o)
{
	char why[256] = "";
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	lm__xfer_t *x = s->xfer;
	enum mig_state ms = s->ms;
	pthread_mutex_unlock(&s->mu);
	if (!s->vm || !x || ms != MS_COMPLETED)
		return fail_op(o, -EPERM, "no complete transfer to recover");
	lm_hcs_handover_t ho;
	handover_of(x, &ho);
	switch (o->rec) {
	case LM_HCS_RECOVER_COMMIT:
	case LM_HCS_RECOVER_FORCE_COMMIT:
		if (!s->destination)
			return fail_op(o, -EINVAL, "COMMIT is for the destination");
		rc = o->rec == LM_HCS_RECOVER_COMMIT
			     ? lm__xfer_ho_commit_token(x, o->secret, o->secret_len, why, sizeof(why))
			     : lm__xfer_ho_force_commit(x, why, sizeof(why));
		if (rc < 0)
			return fail_op(o, rc, why);
		if ((rc = s->ops->start(s->vm)) < 0)
			return fail_op(o, rc, "starting the migrated VM failed");
		dest_started(s);
		return complete(o, 0, NULL);
	case LM_HCS_RECOVER_RESUME:
	case LM_HCS_RECOVER_FORCE_RESUME:
		if (s->destination)
			return fail_op(o, -EINVAL, "RESUME is for the source");
		rc = o->rec == LM_HCS_RECOVER_RESUME
			     ? lm__xfer_ho_release_token(x, o->secret, o->secret_len, why, sizeof(why))
			     : lm__xfer_ho_force_resume(x, why, sizeof(why));
		if (rc < 0)
			return fail_op(o, rc, why);
		if ((rc = s->ops->resume(s->vm)) < 0)
			return fail_op(o, rc, "resuming the source VM failed");
		s->ops->set_throttle(s->vm, 0);
		set_vm_state(s, LM_HCS_VM_RUNNING, MS_FINALIZED);
		send_simple(s, LM_HCS_EV_RECOVERY_DONE, LM_HCS_RESULT_SUCCESS);
		return complete(o, 0, NULL);
	case LM_HCS_RECOVER_GRANT:
		if (s->destination)
			return fail_op(o, -EINVAL, "GRANT is for the source");
		if ((rc = lm__xfer_ho_grant(x, why, sizeof(why))) < 0)
			return fail_op(o, rc, why);
		return complete(o, 0, NULL);
	case LM_HCS_RECOVER_STOP:
		if (s->destination)
			return fail_op(o, -EINVAL, "STOP is for the source");
		if (ho.state != LM_HCS_HO_GRANTED && ho.state != LM_HCS_HO_COMMITTED)
			return fail_op(o, -EPERM, "the source has not given the guest away");
		s->ops->terminate(s->vm);
		set_vm_state(s, LM_HCS_VM_STOPPED, MS_FINALIZED);
		send_simple(s, LM_HCS_EV_MIGRATION_DONE, LM_HCS_RESULT_SUCCESS);
		return complete(o, 0, NULL);
	}
	fail_op(o, -EINVAL, "unknown recovery");
}

static void op_free(struct op *o)
{
	lm_link_close(o->sock, o->start.io);
	free(o->doc);
	free(o);
}

static void *op_main(void *arg)
{
	lm_hcs_system_t *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->head && !s->stopping)
			pthread_cond_wait(&s->cv, &s->mu);
		struct op *o = s->head;
		if (!o) {
			pthread_mutex_unlock(&s->mu);
			return NULL;
		}
		s->head = o->next;
		if (!s->head)
			s->tail = NULL;
		pthread_mutex_unlock(&s->mu);
		switch (o->kind) {
		case OP_CREATE: do_create(s, o); break;
		case OP_START:
		case OP_PAUSE:
		case OP_RESUME:
		case OP_TERMINATE: do_lifecycle(s, o); break;
		case OP_PROPERTIES: do_properties(s, o); break;
		case OP_MIG_INIT: do_mig_init(s, o); break;
		case OP_MIG_START: do_mig_start(s, o); break;
		case OP_MIG_TRANSFER: do_mig_transfer(s, o); break;
		case OP_MIG_FINALIZE: do_mig_finalize(s, o); break;
		case OP_MIG_RECOVER: do_mig_recover(s, o); break;
		case OP_DONE_ONLY: complete(o, o->err, o->why[0] ? o->why : "refused"); break;
		case OP_DISK_ADD:
		case OP_DISK_REMOVE: do_disk(s, o); break;
		}
		op_free(o);
	}
}

/* The fast lane: completions that must not wait behind a long operation
 * in the queue (a Cancel answered while a finalize waits for its peer). */
static void *fast_main(void *arg)
{
	lm_hcs_system_t *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->fhead && !s->stopping)
			pthread_cond_wait(&s->fcv, &s->mu);
		struct op *o = s->fhead;
		if (!o) {
			pthread_mutex_unlock(&s->mu);
			return NULL;
		}
		s->fhead = o->next;
		if (!s->fhead)
			s->ftail = NULL;
		pthread_mutex_unlock(&s->mu);
		complete(o, o->err, o->why[0] ? o->why : "refused");
		op_free(o);
	}
}

/* ------------------------------------------------------------- the API */

int lm_hcs_system_create(lm_hcs_system_t **out, const char *document_json,
			 const lm_hcs_migration_options_t *dest, lm_hcs_event_fn ev,
			 void *ev_arg, lm_hcs_done_fn done, void *arg)
{
	char err[200];
	if (!out || !document_json || !done)
		return -EINVAL;
	if (dest && (lm_hcs_migration_options_check(dest, err, sizeof(err)) < 0 ||
		     dest->origin != LM_HCS_ORIGIN_DESTINATION)) {
		lm_log_warn(MOD, "create refused", "why=\"%s\"",
			    dest->origin != LM_HCS_ORIGIN_DESTINATION
				    ? "migration options at create must have Origin Destination" : err);
		return -EINVAL;
	}
	lm_hcs_system_t *s = calloc(1, sizeof(*s));
	struct op *o = op_new(OP_CREATE, done, arg);
	if (!s || !o || !(o->doc = strdup(document_json))) {
		free(s);
		if (o)
			op_free(o);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_cond_init(&s->mcv, NULL);
	pthread_cond_init(&s->fcv, NULL);
	pthread_mutex_init(&s->evmu, NULL);
	s->ev = ev;
	s->ev_arg = ev_arg;
	lm__xfer_opts_default(&s->xo);
	if (dest) {
		xfer_opts_from(&s->xo, dest);
		s->destination = true;
	}
	int rc = pthread_create(&s->th, NULL, op_main, s);
	if (rc == 0 && (rc = pthread_create(&s->fth, NULL, fast_main, s)) != 0) {
		pthread_mutex_lock(&s->mu);
		s->stopping = true;
		pthread_cond_signal(&s->cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->th, NULL);
	}
	if (rc != 0) {
		op_free(o);
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cv);
		pthread_cond_destroy(&s->mcv);
		pthread_cond_destroy(&s->fcv);
		pthread_mutex_destroy(&s->evmu);
		free(s);
		return -rc;
	}
	enqueue(s, o);
	*out = s;
	return 0;
}

int lm_hcs_system_start(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue_simple(s, OP_START, done, arg);
}

int lm_hcs_system_disk_add(lm_hcs_system_t *s, const char *serial, const char *path,
			   unsigned slot, lm_hcs_done_fn done, void *arg)
{
	if (!s || !done || !serial || !path || strlen(serial) >= sizeof(((struct op *)0)->serial))
		return -EINVAL;
	struct op *o = op_new(OP_DISK_ADD, done, arg);
	if (!o || !(o->doc = strdup(path))) {
		if (o)
			free(o);
		return -ENOMEM;
	}
	snprintf(o->serial, sizeof(o->serial), "%s", serial);
	o->slot = slot;
	return enqueue(s, o);
}

int lm_hcs_system_disk_remove(lm_hcs_system_t *s, const char *serial, lm_hcs_done_fn done,
			      void *arg)
{
	if (!s || !done || !serial || strlen(serial) >= sizeof(((struct op *)0)->serial))
		return -EINVAL;
	struct op *o = op_new(OP_DISK_REMOVE, done, arg);
	if (!o)
		return -ENOMEM;
	snprintf(o->serial, sizeof(o->serial), "%s", serial);
	return enqueue(s, o);
}

int lm_hcs_system_pause(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue_simple(s, OP_PAUSE, done, arg);
}

int lm_hcs_system_resume(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue_simple(s, OP_RESUME, done, arg);
}

int lm_hcs_system_terminate(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue_simple(s, OP_TERMINATE, done, arg);
}

int lm_hcs_system_shutdown(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue_simple(s, OP_TERMINATE, done, arg);
}

int lm_hcs_system_properties(lm_hcs_system_t *s, unsigned query,
			     lm_hcs_properties_fn done, void *arg)
{
	if (!s || !done)
		return -EINVAL;
	struct op *o = op_new(OP_PROPERTIES, NULL, arg);
	if (o) {
		o->pdone = done;
		o->query = query;
	}
	return enqueue(s, o);
}

int lm_hcs_migration_initialize(lm_hcs_system_t *s, const lm_hcs_migration_options_t *mo,
				lm_hcs_done_fn done, void *arg)
{
	if (!s || !mo || !done)
		return -EINVAL;
	struct op *o = op_new(OP_MIG_INIT, done, arg);
	if (o)
		o->mo = *mo;
	return enqueue(s, o);
}

int lm_hcs_migration_start(lm_hcs_system_t *s, const lm_hcs_migration_start_t *p,
			   int sock, lm_hcs_done_fn done, void *arg)
{
	lm_link_io_t *io = p ? p->io : NULL;
	if (sock < 0) {
		lm_link_close(-1, io);
		return -EBADF;
	}
	if (!s || !p || !done) {
		lm_link_close(sock, io);
		return -EINVAL;
	}
	struct op *o = op_new(OP_MIG_START, done, arg);
	if (!o) {
		lm_link_close(sock, io);
		return -ENOMEM;
	}
	o->start = *p;
	o->sock = sock;
	return enqueue(s, o);
}

int lm_hcs_migration_transfer(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue_simple(s, OP_MIG_TRANSFER, done, arg);
}

int lm_hcs_migration_finalize(lm_hcs_system_t *s, enum lm_hcs_finalize_op op,
			      lm_hcs_done_fn done, void *arg)
{
	if (!s || !done)
		return -EINVAL;
	if (op != LM_HCS_FINALIZE_RESUME && op != LM_HCS_FINALIZE_STOP)
		return -EINVAL;
	struct op *o = op_new(OP_MIG_FINALIZE, done, arg);
	if (o)
		o->fin = op;
	return enqueue(s, o);
}

int lm_hcs_migration_cancel(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	if (!s || !done)
		return -EINVAL;
	struct op *o = op_new(OP_DONE_ONLY, done, arg);
	if (!o)
		return -ENOMEM;
	pthread_mutex_lock(&s->mu);
	lm__xfer_t *x = s->xfer;
	bool dest = s->destination;
	if (!x && s->ms == MS_INITIALIZED)
		s->ms = MS_NONE;
	if (x) {
		lm__ho_status_t st;
		lm__xfer_ho_status(x, &st);
		if (st.state == LM_HO_NONE)
			lm__xfer_cancel(x);      /* a transfer runs: stop it */
		else if (dest)                   /* the handover: decide, never wait */
			o->err = lm__xfer_ho_release(x, o->why, sizeof(o->why));
		else
			o->err = lm__xfer_ho_revoke(x, false, o->why, sizeof(o->why));
	}
	/* to the fast lane, never behind the queue */
	if (s->ftail)
		s->ftail->next = o;
	else
		s->fhead = o;
	s->ftail = o;
	pthread_cond_signal(&s->fcv);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

void lm_hcs_migration_handover(lm_hcs_system_t *s, lm_hcs_handover_t *out)
{
	pthread_mutex_lock(&s->mu);
	handover_of(s->xfer, out);
	pthread_mutex_unlock(&s->mu);
}

int lm_hcs_migration_recover(lm_hcs_system_t *s, enum lm_hcs_recover_op op, const uint8_t *secret,
			     size_t len, lm_hcs_done_fn done, void *arg)
{
	if (!s || !done || len > 32 || (len && !secret))
		return -EINVAL;
	if (op < LM_HCS_RECOVER_COMMIT || op > LM_HCS_RECOVER_FORCE_RESUME)
		return -EINVAL;
	struct op *o = op_new(OP_MIG_RECOVER, done, arg);
	if (!o)
		return -ENOMEM;
	o->rec = op;
	if (len)
		memcpy(o->secret, secret, len);
	o->secret_len = len;
	return enqueue(s, o);
}

int lm_hcs_system_vm(lm_hcs_system_t *s, const lm_backend_ops_t **ops, lm_vm_t **vm)
{
	pthread_mutex_lock(&s->mu);
	*ops = s->ops;
	*vm = s->vm;
	pthread_mutex_unlock(&s->mu);
	return *vm ? 0 : -ENOENT;
}

void lm_hcs_system_close(lm_hcs_system_t *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	if (s->xfer)
		lm__xfer_cancel(s->xfer);
	s->stopping = true;
	pthread_cond_signal(&s->cv);
	pthread_cond_signal(&s->fcv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->th, NULL);
	pthread_join(s->fth, NULL);
	/* the VM goes away: its links close, whatever they were saying (a
	 * close without a word tells the peer exactly that) */
	lm__xfer_destroy(s->xfer);
	for (unsigned i = 0; i < s->n_old; i++)
		lm__xfer_destroy(s->old[i]);
	free(s->old);
	if (s->vm)
		s->ops->destroy(s->vm);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->mcv);
	pthread_cond_destroy(&s->fcv);
	pthread_mutex_destroy(&s->evmu);
	free(s);
}

/* ------------------------------------------------- HCS's external formats */

char *lm_hcs_properties_to_json(const lm_hcs_properties_t *p)
{
	char ck[20], compat[sizeof(p->compat) + 1];
	snprintf(ck, sizeof(ck), "%016" PRIx64, p->stats.checksum);
	size_t cl = p->compat_len < sizeof(p->compat) ? p->compat_len : sizeof(p->compat);
	memcpy(compat, p->compat, cl);
	compat[cl] = '\0';
	json_t *r = json_pack("{s:s, s:s, s:{s:I, s:s, s:I, s:f, s:i, s:b}, s:s}",
			      "Id", p->id, "State", lm_hcs_vm_state_name(p->state),
			      "Statistics", "Iterations", (json_int_t)p->stats.iterations,
			      "Checksum", ck, "PagesWritten", (json_int_t)p->stats.pages_written,
			      "DirtyRateMBps", p->stats.dirty_rate_mbps,
			      "ThrottlePercent", (int)p->stats.throttle_pct,
			      "GuestRunning", p->stats.running,
			      "CompatibilityInfo", compat);
	if (!r)
		return NULL;
	if (p->has_migration)
		json_object_set_new(r, "Migration",
				    json_pack("{s:i, s:I, s:I, s:I, s:f, s:f, s:i, s:s}",
					      "Passes", (int)p->migration.passes,
					      "BytesSent", (json_int_t)p->migration.bytes_sent,
					      "PagesSent", (json_int_t)p->migration.pages_sent,
					      "ZeroPages", (json_int_t)p->migration.zero_pages,
					      "BlackoutMilliseconds", (double)p->migration.blackout_ns / 1e6,
					      "TotalMilliseconds", (double)p->migration.total_ns / 1e6,
					      "MaxThrottlePercent", (int)p->migration.max_throttle_pct,
					      "TransferThreadScheduling",
					      lm_sched_kind_name((enum lm_sched_kind)p->migration.sched)));
	if (p->has_digest) {
		char dh[20];
		snprintf(dh, sizeof(dh), "%016" PRIx64, p->digest);
		json_object_set_new(r, "MemoryDigest", json_string(dh));
	} else if (p->digest_skipped) {
		json_object_set_new(r, "MemoryDigestSkipped", json_string(p->digest_skipped));
	}
	char *txt = json_dumps(r, JSON_COMPACT);
	json_decref(r);
	return txt;
}

int lm_hcs_query_parse(const char *json, unsigned *query)
{
	*query = 0;
	if (!json || !*json)
		return 0;
	json_t *q = json_loads(json, 0, NULL);
	json_t *pt = json_object_get(q, "PropertyTypes");
	int rc = 0;
	if (!json_is_object(q) || (pt && !json_is_array(pt))) {
		rc = -EINVAL;
	} else {
		size_t i;
		json_t *v;
		json_array_foreach(pt, i, v) {
			if (!json_is_string(v)) {
				rc = -EINVAL;
				break;
			}
			if (!strcmp(json_string_value(v), "MemoryDigest"))
				*query |= LM_HCS_QUERY_DIGEST;
		}
	}
	json_decref(q);
	return rc;
}
