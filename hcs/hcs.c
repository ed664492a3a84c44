/*
 * hcs.c: the compute service. Turns HCS-shaped calls into work on a VM
 * backend and the transfer engine, and their outcomes into completion
 * callbacks and HCS event JSON.
 *
 * DESIGN: each compute system has one operation thread that runs its
 * queued operations in order (create, start, pause, properties, finalize,
 * ...). The transfer engine runs on its own thread; its events are turned
 * into HCS events here, on that thread, and complete the operations that
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

enum vm_state { VS_NONE, VS_CREATED, VS_RUNNING, VS_PAUSED, VS_STOPPED };
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
	OP_MIG_INIT, OP_MIG_START, OP_MIG_TRANSFER, OP_MIG_FINALIZE, OP_DONE_ONLY,
};

struct op {
	struct op *next;
	enum op_kind kind;
	char *json;
	int sock;
	int err;           /* OP_DONE_ONLY */
	lm_hcs_done_fn done;
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
	const lm_backend_ops_t *ops;
	lm_vm_t *vm;
	enum vm_state vs;         /* mu */
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
	char mig_msg[160];
	uint64_t dst_blackout_t0; /* destination: BlackoutStarted time */
	lm__xfer_stats_t last_stats;
};

static const char *vs_name(enum vm_state v)
{
	switch (v) {
	case VS_CREATED: return "Created";
	case VS_RUNNING: return "Running";
	case VS_PAUSED: return "Paused";
	case VS_STOPPED: return "Stopped";
	default: return "None";
	}
}

/* --------------------------------------------------------------- events */

static void send_event(lm_hcs_system_t *s, const char *event, const char *result,
		       json_t *details)
{
	json_t *j = json_pack("{s:s, s:s, s:s}", "Origin",
			      s->destination ? "Destination" : "Source",
			      "Event", event, "Result", result);
	if (details)
		json_object_set_new(j, "AdditionalDetails", details);
	char *txt = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	pthread_mutex_lock(&s->evmu);
	if (s->ev && txt)
		s->ev(s->ev_arg, txt);
	pthread_mutex_unlock(&s->evmu);
	free(txt);
}

static const char *result_name(enum lm__xfer_result r)
{
	switch (r) {
	case LM_XR_CANCELLED: return "MigrationCancelled";
	case LM_XR_SOURCE_FAILED: return "SourceMigrationFailed";
	case LM_XR_DEST_FAILED: return "DestinationMigrationFailed";
	case LM_XR_RECOVERY_FAILED: return "MigrationRecoveryFailed";
	default: return "Success";
	}
}

static void rfc3339(char *buf, size_t n, uint64_t wall_ns)
{
	time_t t = (time_t)(wall_ns / 1000000000ull);
	struct tm tm;
	gmtime_r(&t, &tm);
	size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + k, n - k, ".%03uZ", (unsigned)(wall_ns / 1000000ull % 1000));
}

/* Engine thread. */
static void on_xfer_event(void *arg, const lm__xfer_event_t *e)
{
	lm_hcs_system_t *s = arg;
	lm_hcs_done_fn done = NULL;
	void *darg = NULL;
	int derr = 0;

	switch (e->type) {
	case LM_XEV_SETUP_DONE:
		pthread_mutex_lock(&s->mu);
		s->ms = MS_SETUP_DONE;
		done = s->start_done;
		darg = s->start_arg;
		s->start_done = NULL;
		pthread_mutex_unlock(&s->mu);
		send_event(s, "SetupDone", "Success", NULL);
		break;
	case LM_XEV_PROGRESS:
		send_event(s, "TransferInProgress", "Success",
			   json_pack("{s:i, s:I, s:I, s:I, s:f, s:f, s:i, s:I}",
				     "Pass", (int)e->pass,
				     "BytesSent", (json_int_t)e->bytes_sent,
				     "PagesSent", (json_int_t)e->pages_sent,
				     "PagesRemaining", (json_int_t)e->pages_remaining,
				     "DirtyRateMBps", e->dirty_rate_mbps,
				     "BandwidthMBps", e->bandwidth_mbps,
				     "ThrottlePercent", (int)e->throttle_pct,
				     "ElapsedMilliseconds", (json_int_t)(e->elapsed_ns / 1000000)));
		break;
	case LM_XEV_BLACKOUT_STARTED:
		if (s->destination)
			s->dst_blackout_t0 = lm_now_ns();
		send_event(s, "BlackoutStarted", "Success", NULL);
		break;
	case LM_XEV_OFFLINE_DONE:
		send_event(s, "OfflineDone", "Success", NULL);
		break;
	case LM_XEV_BLACKOUT_EXITED: {
		char ts[40];
		rfc3339(ts, sizeof(ts), e->blackout_stop_wall_ns);
		send_event(s, "BlackoutExited", "Success",
			   json_pack("{s:I, s:s, s:f}", "BlackoutDurationMilliseconds",
				     (json_int_t)((e->blackout_ns + 500000) / 1000000),
				     "BlackoutStopTimestamp", ts,
				     "BlackoutDurationMicroseconds", (double)e->blackout_ns / 1e3));
		break;
	}
	case LM_XEV_COMPLETED:
		pthread_mutex_lock(&s->mu);
		s->ms = MS_COMPLETED;
		s->mig_err = 0;
		if (!s->destination)
			s->vs = VS_PAUSED;
		done = s->xfer_done;
		darg = s->xfer_arg;
		s->xfer_done = NULL;
		pthread_mutex_unlock(&s->mu);
		break;
	case LM_XEV_FAILED:
		pthread_mutex_lock(&s->mu);
		s->ms = MS_FAILED;
		s->mig_err = e->err ? e->err : -EIO;
		snprintf(s->mig_msg, sizeof(s->mig_msg), "%s", e->msg);
		derr = s->mig_err;
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
		send_event(s, "MigrationFailed", result_name(e->result),
			   json_pack("{s:s, s:i}", "Error", e->msg, "Errno", -e->err));
		break;
	case LM_XEV_RECOVERY_DONE:
	case LM_XEV_RECOVERY_FAILED:
		pthread_mutex_lock(&s->mu);
		if (s->vs == VS_PAUSED && e->type == LM_XEV_RECOVERY_DONE)
			s->vs = VS_RUNNING;
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
		if (e->type == LM_XEV_RECOVERY_DONE)
			send_event(s, "MigrationRecoveryDone", "Success", NULL);
		else
			send_event(s, "MigrationFailed", "MigrationRecoveryFailed", NULL);
		break;
	}
	if (done) {
		if (derr) {
			json_t *j = json_pack("{s:s, s:i}", "Error", s->mig_msg, "Errno", -derr);
			char *txt = json_dumps(j, JSON_COMPACT);
			json_decref(j);
			done(darg, derr, txt);
			free(txt);
		} else {
			done(darg, 0, NULL);
		}
	}
}

/* -------------------------------------------------------------- parsing */

static int get_bool(json_t *o, const char *k, bool *out, char *err, size_t n)
{
	json_t *v = json_object_get(o, k);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v)) {
		snprintf(err, n, "%s must be a boolean", k);
		return -EINVAL;
	}
	*out = json_is_true(v);
	return 0;
}

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

static int parse_origin(json_t *o, int *origin, char *err, size_t n)
{
	json_t *v = json_object_get(o, "Origin");
	*origin = 0;
	if (!v)
		return 0;
	const char *s = json_string_value(v);
	if (s && strcmp(s, "Source") == 0)
		*origin = 1;
	else if (s && strcmp(s, "Destination") == 0)
		*origin = 2;
	else {
		snprintf(err, n, "Origin must be \"Source\" or \"Destination\"");
		return -EINVAL;
	}
	return 0;
}

int lm__hcs_parse_init_options(const char *json, lm__xfer_opts_t *o, int *origin,
			       char *err, size_t errlen)
{
	json_error_t je;
	lm__xfer_opts_default(o);
	*origin = 0;
	if (!json)
		return 0;
	json_t *j = json_loads(json, 0, &je);
	if (!j || !json_is_object(j)) {
		snprintf(err, errlen, "MigrationInitializeOptions: not a JSON object (%s)", je.text);
		json_decref(j);
		return -EINVAL;
	}
	int rc = parse_origin(j, origin, err, errlen);
	json_t *v;
	if (!rc && (v = json_object_get(j, "MemoryTransport")) &&
	    (!json_is_string(v) || strcmp(json_string_value(v), "TCP") != 0)) {
		snprintf(err, errlen, "MemoryTransport must be \"TCP\"");
		rc = -EINVAL;
	}
	json_t *t = json_object_get(j, "MemoryTransferThrottleParams");
	if (!rc && t) {
		if (!json_is_object(t)) {
			snprintf(err, errlen, "MemoryTransferThrottleParams must be an object");
			rc = -EINVAL;
		}
		if (!rc) rc = get_bool(t, "SkipThrottling", &o->skip_throttling, err, errlen);
		if (!rc && (v = json_object_get(t, "ThrottlingScale"))) {
			if (!json_is_number(v) || json_number_value(v) < 1 || json_number_value(v) > 100) {
				snprintf(err, errlen, "ThrottlingScale must be within 1..100");
				rc = -EINVAL;
			} else {
				o->throttling_scale = json_number_value(v);
			}
		}
		if (!rc) rc = get_uint(t, "MinimumThrottlePercentage", &o->min_throttle_pct, err, errlen);
		if (!rc && o->min_throttle_pct > 100) {
			snprintf(err, errlen, "MinimumThrottlePercentage must be within 0..100");
			rc = -EINVAL;
		}
		if (!rc) rc = get_uint(t, "TargetNumberOfBrownoutTransferPasses", &o->target_passes, err, errlen);
		if (!rc) rc = get_uint(t, "StartingBrownoutPassNumberForThrottling", &o->start_throttle_pass, err, errlen);
		if (!rc) rc = get_uint(t, "MaximumNumberOfBrownoutTransferPasses", &o->max_passes, err, errlen);
		if (!rc) rc = get_uint(t, "TargetBlackoutTransferTime", &o->target_blackout_ms, err, errlen);
		if (!rc) rc = get_uint(t, "BlackoutTimeThresholdForCancellingMigration", &o->blackout_cancel_ms, err, errlen);
		if (!rc && (o->max_passes == 0 || o->max_passes < o->target_passes)) {
			snprintf(err, errlen, "MaximumNumberOfBrownoutTransferPasses must be >= 1 and >= TargetNumberOfBrownoutTransferPasses");
			rc = -EINVAL;
		}
	}
	json_t *c = json_object_get(j, "CompressionSettings");
	if (!rc && c) {
		if (!json_is_object(c)) {
			snprintf(err, errlen, "CompressionSettings must be an object");
			rc = -EINVAL;
		} else {
			rc = get_uint(c, "ThrottleWorkerCount", &o->compress_workers, err, errlen);
			if (!rc && o->compress_workers > 64) {
				snprintf(err, errlen, "ThrottleWorkerCount must be within 0..64");
				rc = -EINVAL;
			}
		}
	}
	if (!rc) rc = get_bool(j, "ChecksumVerification", &o->checksum, err, errlen);
	if (!rc) rc = get_bool(j, "PerfTracingEnabled", &o->perf_tracing, err, errlen);
	if (!rc) rc = get_bool(j, "CancelIfBlackoutThresholdExceeds", &o->cancel_if_blackout_exceeds, err, errlen);
	json_decref(j);
	return rc;
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

static int enqueue(lm_hcs_system_t *s, enum op_kind kind, const char *json, int sock,
		   int err, lm_hcs_done_fn done, void *arg)
{
	if (!s || !done)
		return -EINVAL;
	struct op *o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	if (json && !(o->json = strdup(json))) {
		free(o);
		return -ENOMEM;
	}
	o->kind = kind;
	o->sock = sock;
	o->err = err;
	o->done = done;
	o->arg = arg;
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

static void complete(struct op *o, int err, json_t *result)
{
	char *txt = result ? json_dumps(result, JSON_COMPACT) : NULL;
	json_decref(result);
	o->done(o->arg, err, txt);
	free(txt);
}

static json_t *err_json(const char *msg)
{
	return json_pack("{s:s}", "Error", msg);
}

static void fail_op(struct op *o, int err, const char *msg)
{
	lm_log_warn(MOD, "operation failed", "err=%d why=\"%s\"", err, msg);
	complete(o, err, err_json(msg));
}

static void do_create(lm_hcs_system_t *s, struct op *o)
{
	char err[200] = "";
	lm_vm_config_t cfg;
	int rc = LM_FAULT("hcs.create");
	if (rc < 0)
		return fail_op(o, rc, "create failed (fault)");
	if ((rc = parse_document(o->json, &cfg, err, sizeof(err))) < 0)
		return fail_op(o, rc, err);
	const lm_backend_ops_t *ops = lm_backend_find(cfg.backend);
	if (!ops) {
		snprintf(err, sizeof(err), "unknown backend \"%s\"", cfg.backend);
		return fail_op(o, -ENOENT, err);
	}
	cfg.incoming = s->destination;
	cfg.document_json = o->json;
	lm_vm_t *vm = NULL;
	if ((rc = ops->create(&vm, &cfg)) < 0) {
		snprintf(err, sizeof(err), "backend %s could not create the VM: %s",
			 cfg.backend, strerror(-rc));
		return fail_op(o, rc, err);
	}
	pthread_mutex_lock(&s->mu);
	s->ops = ops;
	s->vm = vm;
	s->vs = VS_CREATED;
	snprintf(s->id, sizeof(s->id), "%s", cfg.id);
	pthread_mutex_unlock(&s->mu);
	complete(o, 0, json_pack("{s:s, s:I, s:b}", "Id", cfg.id, "MemoryBytes",
				 (json_int_t)cfg.memory_bytes, "Populated", cfg.incoming));
}

static bool migrating(lm_hcs_system_t *s)
{
	return s->ms == MS_STARTING || s->ms == MS_SETUP_DONE || s->ms == MS_TRANSFERRING;
}

static void do_lifecycle(lm_hcs_system_t *s, struct op *o)
{
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	bool busy = migrating(s) || (s->ms == MS_COMPLETED && !s->destination);
	bool have = s->vm != NULL;
	enum vm_state vs = s->vs;
	bool dest_waiting = s->destination && s->ms != MS_FINALIZED;
	pthread_mutex_unlock(&s->mu);
	if (!have)
		return fail_op(o, -EPERM, "no VM (create failed or not finished)");
	if (busy && o->kind != OP_TERMINATE)
		return fail_op(o, -EPERM, "a live migration owns the VM: finalize or cancel first");
	enum vm_state next = vs;
	switch (o->kind) {
	case OP_START:
		if (dest_waiting)
			return fail_op(o, -EPERM, "a migration destination starts with finalize Resume");
		if ((rc = LM_FAULT("hcs.start")) < 0)
			return fail_op(o, rc, "start failed (fault)");
		if (vs == VS_STOPPED)
			return fail_op(o, -EPERM, "VM is stopped");
		rc = vs == VS_RUNNING ? 0 : s->ops->start(s->vm);
		next = VS_RUNNING;
		break;
	case OP_PAUSE:
		if (vs != VS_RUNNING && vs != VS_PAUSED)
			return fail_op(o, -EPERM, "VM is not running");
		rc = s->ops->pause(s->vm);
		next = VS_PAUSED;
		break;
	case OP_RESUME:
		if (vs != VS_RUNNING && vs != VS_PAUSED)
			return fail_op(o, -EPERM, "VM is not paused");
		rc = s->ops->resume(s->vm);
		next = VS_RUNNING;
		break;
	default: /* OP_TERMINATE */
		if (busy && s->xfer)
			lm__xfer_cancel(s->xfer);
		rc = s->ops->terminate(s->vm);
		next = VS_STOPPED;
		break;
	}
	if (rc < 0)
		return fail_op(o, rc, strerror(-rc));
	pthread_mutex_lock(&s->mu);
	s->vs = next;
	pthread_mutex_unlock(&s->mu);
	if (o->kind == OP_TERMINATE && vs != VS_STOPPED)
		send_event(s, "SystemExited", "Success", NULL);
	complete(o, 0, json_pack("{s:s}", "State", vs_name(next)));
}

static void do_properties(lm_hcs_system_t *s, struct op *o)
{
	int rc = LM_FAULT("hcs.properties");
	if (rc < 0)
		return fail_op(o, rc, "properties failed (fault)");
	if (!s->vm)
		return fail_op(o, -EPERM, "no VM");
	bool digest = false;
	if (o->json) {
		json_t *q = json_loads(o->json, 0, NULL);
		json_t *pt = json_object_get(q, "PropertyTypes");
		size_t i;
		json_t *v;
		if (q && !json_is_object(q)) {
			json_decref(q);
			return fail_op(o, -EINVAL, "query must be a JSON object");
		}
		json_array_foreach(pt, i, v)
			if (json_is_string(v) && !strcmp(json_string_value(v), "MemoryDigest"))
				digest = true;
		json_decref(q);
	}
	lm_guest_stats_t st;
	s->ops->stats(s->vm, &st);
	char compat[512];
	int cl = s->ops->compat_get(s->vm, compat, sizeof(compat) - 1);
	compat[cl > 0 ? cl : 0] = 0;
	pthread_mutex_lock(&s->mu);
	const char *state = vs_name(s->vs);
	int ms = s->ms;
	lm__xfer_stats_t xs = s->last_stats;
	if (s->xfer)
		lm__xfer_get_stats(s->xfer, &xs);
	pthread_mutex_unlock(&s->mu);
	char ck[20];
	snprintf(ck, sizeof(ck), "%016" PRIx64, st.checksum);
	json_t *r = json_pack("{s:s, s:s, s:{s:I, s:s, s:I, s:f, s:i, s:b}, s:s}",
			      "Id", s->id, "State", state,
			      "Statistics", "Iterations", (json_int_t)st.iterations,
			      "Checksum", ck, "PagesWritten", (json_int_t)st.pages_written,
			      "DirtyRateMBps", st.dirty_rate_mbps,
			      "ThrottlePercent", (int)st.throttle_pct,
			      "GuestRunning", st.running,
			      "CompatibilityInfo", compat);
	if (ms != MS_NONE)
		json_object_set_new(r, "Migration",
				    json_pack("{s:i, s:I, s:I, s:I, s:f, s:f, s:i, s:s}",
					      "Passes", (int)xs.passes,
					      "BytesSent", (json_int_t)xs.bytes_sent,
					      "PagesSent", (json_int_t)xs.pages_sent,
					      "ZeroPages", (json_int_t)xs.zero_pages,
					      "BlackoutMilliseconds", (double)xs.blackout_ns / 1e6,
					      "TotalMilliseconds", (double)xs.total_ns / 1e6,
					      "MaxThrottlePercent", (int)xs.max_throttle_pct,
					      "TransferThreadScheduling",
					      lm_sched_kind_name((enum lm_sched_kind)xs.sched)));
	if (digest && st.running) {
		/* the guest writes while we would read: no stable (nor race-free)
		 * value exists; say so instead of hashing moving memory */
		json_object_set_new(r, "MemoryDigestSkipped",
				    json_string("the guest is running: pause it for a stable digest"));
	} else if (digest) {
		uint64_t d;
		if ((rc = lm__mem_digest(s->ops, s->vm, &d)) < 0) {
			json_decref(r);
			return fail_op(o, rc, "digest failed");
		}
		char dh[20];
		snprintf(dh, sizeof(dh), "%016" PRIx64, d);
		json_object_set_new(r, "MemoryDigest", json_string(dh));
	}
	complete(o, 0, r);
}

static void do_mig_init(lm_hcs_system_t *s, struct op *o)
{
	char err[200] = "";
	int origin;
	lm__xfer_opts_t xo;
	int rc = lm__hcs_parse_init_options(o->json, &xo, &origin, err, sizeof(err));
	if (rc < 0)
		return fail_op(o, rc, err);
	if (origin == 2 || s->destination)
		return fail_op(o, -EINVAL, "migration_initialize is for the source (Origin \"Source\")");
	pthread_mutex_lock(&s->mu);
	if (!s->vm || (s->vs != VS_RUNNING && s->vs != VS_PAUSED) ||
	    (s->ms != MS_NONE && s->ms != MS_INITIALIZED && s->ms != MS_FINALIZED)) {
		pthread_mutex_unlock(&s->mu);
		return fail_op(o, -EPERM, "source must be running with no migration in progress");
	}
	s->xo = xo;
	s->ms = MS_INITIALIZED;
	pthread_mutex_unlock(&s->mu);
	complete(o, 0, NULL);
}

/* MigrationStartOptions: NetworkSettings.SessionId, and lmshim's own
 * TransferCpuReservePercent (the engine thread's CPU reservation, see
 * util/sched.h; absent = none). */
static int parse_start(const char *json, uint32_t *sid, unsigned *reserve, char *err, size_t n)
{
	json_t *j = json_loads(json ? json : "", 0, NULL);
	json_t *v = json_object_get(json_object_get(j, "NetworkSettings"), "SessionId");
	json_t *r = json_object_get(j, "TransferCpuReservePercent");
	int rc = 0;
	*reserve = 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0xffffffffll) {
		snprintf(err, n, "MigrationStartOptions.NetworkSettings.SessionId must be a uint32");
		rc = -EINVAL;
	} else if (r && (!json_is_integer(r) || json_integer_value(r) < 0 ||
			 json_integer_value(r) > LM_SCHED_RESERVE_MAX)) {
		snprintf(err, n, "MigrationStartOptions.TransferCpuReservePercent must be within 0..%d",
			 LM_SCHED_RESERVE_MAX);
		rc = -EINVAL;
	} else {
		*sid = (uint32_t)json_integer_value(v);
		*reserve = r ? (unsigned)json_integer_value(r) : 0;
	}
	json_decref(j);
	return rc;
}

static void do_mig_start(lm_hcs_system_t *s, struct op *o)
{
	char err[200] = "";
	uint32_t sid = 0;
	unsigned reserve = 0;
	int rc = parse_start(o->json, &sid, &reserve, err, sizeof(err));
	if (rc < 0) {
		close(o->sock);
		return fail_op(o, rc, err);
	}
	pthread_mutex_lock(&s->mu);
	bool ok = s->vm && (s->destination ? s->ms == MS_NONE : s->ms == MS_INITIALIZED);
	if (!ok) {
		pthread_mutex_unlock(&s->mu);
		close(o->sock);
		return fail_op(o, -EPERM, s->destination ? "destination not ready for a migration"
					 : "migration_initialize first");
	}
	s->xo.session_id = sid;
	s->xo.cpu_reserve_pct = reserve;
	s->ms = MS_STARTING;
	s->start_done = o->done;
	s->start_arg = o->arg;
	lm__xfer_opts_t xo = s->xo;
	pthread_mutex_unlock(&s->mu);
	lm__xfer_t *x = NULL;
	/* The engine may report SetupDone before we store the pointer: hold
	 * mu across create so its callback sees s->xfer set. */
	pthread_mutex_lock(&s->mu);
	rc = lm__xfer_create(&x, s->destination ? LM_XFER_DEST : LM_XFER_SOURCE,
			     s->ops, s->vm, o->sock, &xo, on_xfer_event, s);
	if (rc == 0)
		s->xfer = x;
	else {
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
		char m[160];
		snprintf(m, sizeof(m), "%s", s->mig_msg);
		pthread_mutex_unlock(&s->mu);
		return complete(o, e, err_json(m));
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

static void drop_xfer(lm_hcs_system_t *s)
{
	lm__xfer_t *x;
	pthread_mutex_lock(&s->mu);
	x = s->xfer;
	pthread_mutex_unlock(&s->mu);
	if (!x)
		return;
	lm__xfer_join(x);
	lm__xfer_stats_t st;
	lm__xfer_get_stats(x, &st);
	pthread_mutex_lock(&s->mu);
	s->last_stats = st;
	s->xfer = NULL;
	pthread_mutex_unlock(&s->mu);
	lm__xfer_destroy(x);
}

static void do_mig_finalize(lm_hcs_system_t *s, struct op *o)
{
	json_t *j = json_loads(o->json ? o->json : "", 0, NULL);
	const char *op = json_string_value(json_object_get(j, "FinalizedOperation"));
	bool resume = op && !strcmp(op, "Resume");
	bool stop = op && !strcmp(op, "Stop");
	json_decref(j);
	if (!resume && !stop)
		return fail_op(o, -EINVAL, "FinalizedOperation must be \"Resume\" or \"Stop\"");
	int rc = LM_FAULT("hcs.finalize");
	if (rc < 0)
		return fail_op(o, rc, "finalize failed (fault)");
	pthread_mutex_lock(&s->mu);
	enum mig_state ms = s->ms;
	bool have_vm = s->vm != NULL;
	if (migrating(s) && s->xfer) {
		/* Finalizing a running migration: cancel it first. */
		lm__xfer_cancel(s->xfer);
	}
	pthread_mutex_unlock(&s->mu);
	drop_xfer(s);
	pthread_mutex_lock(&s->mu);
	ms = s->ms == MS_FINALIZED ? MS_FINALIZED : s->ms;
	pthread_mutex_unlock(&s->mu);
	if (!have_vm)
		return fail_op(o, -EPERM, "no VM");

	if (!s->destination) {
		if (stop) {
			if (ms != MS_COMPLETED && ms != MS_FINALIZED)
				return fail_op(o, -EPERM, "source STOP only after a completed transfer: finalize with RESUME");
			s->ops->terminate(s->vm);
			pthread_mutex_lock(&s->mu);
			s->vs = VS_STOPPED;
			s->ms = MS_FINALIZED;
			pthread_mutex_unlock(&s->mu);
			send_event(s, "MigrationDone", "Success", NULL);
			return complete(o, 0, json_pack("{s:s}", "State", "Stopped"));
		}
		/* Resume: idempotent, reconciles with the real VM state. */
		pthread_mutex_lock(&s->mu);
		enum vm_state vs = s->vs;
		pthread_mutex_unlock(&s->mu);
		if (vs == VS_STOPPED)
			return fail_op(o, -EPERM, "source VM already stopped");
		if ((rc = s->ops->resume(s->vm)) < 0)
			return fail_op(o, rc, "resuming the source VM failed");
		s->ops->set_throttle(s->vm, 0);
		pthread_mutex_lock(&s->mu);
		s->vs = VS_RUNNING;
		s->ms = MS_FINALIZED;
		pthread_mutex_unlock(&s->mu);
		if (ms == MS_COMPLETED)
			send_event(s, "MigrationRecoveryDone", "Success", NULL);
		return complete(o, 0, json_pack("{s:s}", "State", "Running"));
	}
	/* Destination. */
	if (resume) {
		pthread_mutex_lock(&s->mu);
		enum vm_state vs = s->vs;
		pthread_mutex_unlock(&s->mu);
		if (ms == MS_FINALIZED && vs == VS_RUNNING)
			return complete(o, 0, json_pack("{s:s}", "State", "Running"));
		if (ms != MS_COMPLETED)
			return fail_op(o, -EPERM, "destination holds no complete VM: finalize with STOP");
		if ((rc = s->ops->start(s->vm)) < 0)
			return fail_op(o, rc, "starting the migrated VM failed");
		uint64_t bo = s->dst_blackout_t0 ? lm_now_ns() - s->dst_blackout_t0 : 0;
		pthread_mutex_lock(&s->mu);
		s->vs = VS_RUNNING;
		s->ms = MS_FINALIZED;
		pthread_mutex_unlock(&s->mu);
		char ts[40];
		rfc3339(ts, sizeof(ts), lm_wall_ns());
		send_event(s, "BlackoutExited", "Success",
			   json_pack("{s:I, s:s}", "BlackoutDurationMilliseconds",
				     (json_int_t)(bo / 1000000), "BlackoutStopTimestamp", ts));
		send_event(s, "MigrationDone", "Success", NULL);
		return complete(o, 0, json_pack("{s:s}", "State", "Running"));
	}
	/* Destination STOP: discard what was received. */
	s->ops->terminate(s->vm);
	pthread_mutex_lock(&s->mu);
	s->vs = VS_STOPPED;
	s->ms = MS_FINALIZED;
	pthread_mutex_unlock(&s->mu);
	complete(o, 0, json_pack("{s:s}", "State", "Stopped"));
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
		case OP_DONE_ONLY: complete(o, o->err, NULL); break;
		}
		free(o->json);
		free(o);
	}
}

/* ------------------------------------------------------------- the API */

int lm_hcs_system_create(lm_hcs_system_t **out, const char *document_json,
			 const char *migration_options_json, lm_hcs_event_fn ev,
			 void *ev_arg, lm_hcs_done_fn done, void *arg)
{
	if (!out || !document_json || !done)
		return -EINVAL;
	lm_hcs_system_t *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->evmu, NULL);
	s->ev = ev;
	s->ev_arg = ev_arg;
	lm__xfer_opts_default(&s->xo);
	char err[200] = "";
	int origin = 0, rc = 0;
	if (migration_options_json) {
		rc = lm__hcs_parse_init_options(migration_options_json, &s->xo, &origin, err, sizeof(err));
		if (rc == 0 && origin != 2) {
			snprintf(err, sizeof(err), "migration options at create must have Origin \"Destination\"");
			rc = -EINVAL;
		}
		s->destination = true;
	}
	if ((rc = pthread_create(&s->th, NULL, op_main, s)) != 0) {
		free(s);
		return -rc;
	}
	if (origin == 2 || !migration_options_json)
		rc = enqueue(s, OP_CREATE, document_json, -1, 0, done, arg);
	else
		rc = enqueue(s, OP_DONE_ONLY, NULL, -1, -EINVAL, done, arg);
	if (rc < 0) {
		lm_hcs_system_close(s);
		return rc;
	}
	if (migration_options_json && origin != 2)
		lm_log_warn(MOD, "create refused", "why=\"%s\"", err);
	*out = s;
	return 0;
}

int lm_hcs_system_start(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_START, NULL, -1, 0, done, arg);
}

int lm_hcs_system_pause(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_PAUSE, NULL, -1, 0, done, arg);
}

int lm_hcs_system_resume(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_RESUME, NULL, -1, 0, done, arg);
}

int lm_hcs_system_terminate(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_TERMINATE, NULL, -1, 0, done, arg);
}

int lm_hcs_system_shutdown(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_TERMINATE, NULL, -1, 0, done, arg);
}

int lm_hcs_system_properties(lm_hcs_system_t *s, const char *query_json,
			     lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_PROPERTIES, query_json, -1, 0, done, arg);
}

int lm_hcs_migration_initialize(lm_hcs_system_t *s, const char *options_json,
				lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_MIG_INIT, options_json, -1, 0, done, arg);
}

int lm_hcs_migration_start(lm_hcs_system_t *s, const char *start_options_json,
			   int sock, lm_hcs_done_fn done, void *arg)
{
	if (sock < 0)
		return -EBADF;
	return enqueue(s, OP_MIG_START, start_options_json, sock, 0, done, arg);
}

int lm_hcs_migration_transfer(lm_hcs_system_t *s, const char *options_json,
			      lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_MIG_TRANSFER, options_json, -1, 0, done, arg);
}

int lm_hcs_migration_finalize(lm_hcs_system_t *s, const char *options_json,
			      lm_hcs_done_fn done, void *arg)
{
	return enqueue(s, OP_MIG_FINALIZE, options_json, -1, 0, done, arg);
}

int lm_hcs_migration_cancel(lm_hcs_system_t *s, const char *options_json,
			    lm_hcs_done_fn done, void *arg)
{
	if (!s || !done)
		return -EINVAL;
	pthread_mutex_lock(&s->mu);
	if (s->xfer)
		lm__xfer_cancel(s->xfer);
	else if (s->ms == MS_INITIALIZED)
		s->ms = MS_NONE;
	pthread_mutex_unlock(&s->mu);
	return enqueue(s, OP_DONE_ONLY, NULL, -1, 0, done, arg);
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
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->th, NULL);
	drop_xfer(s);
	if (s->vm)
		s->ops->destroy(s->vm);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->evmu);
	free(s);
}
