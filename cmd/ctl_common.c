/*
 * ctl_common.c: lmctl's connection to a shim, its calls with the error
 * report the CLI promises (call, side, cause), and the progress display
 * fed by Notifications.
 *
 * The progress detail (a TransferProgress message in the Notification's
 * phase_details oneof, field 100, added by the notifier's author) is read
 * by protobuf-c reflection, field by name, so lmctl does not depend on
 * the exact field list: any numeric field whose name contains "pass",
 * "bytes_sent", "remaining", "dirty", "bandwidth", "eta" or "elapsed" is
 * picked up. Without that detail the bar shows the phases only.
 */
#include <errno.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd/ctl.h"

/* lmctl names itself on every call (shim/task_service.h LM_CLIENT_MD): a
 * task it creates on a migration's patch path is not containerd's, and
 * gets no task events. */
static const char *const client_md[] = { "lmshim-client", "lmctl" };

static const char *const code_names[] = {
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
	"NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
	"FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
	"Internal", "Unavailable", "DataLoss", "Unauthenticated",
};

const char *ctl_code_name(int code)
{
	if (code >= 0 && code < (int)(sizeof(code_names) / sizeof(code_names[0])))
		return code_names[code];
	return "Code?";
}

const char *ctl_phase_name(int p)
{
	static const char *const n[] = {
		"UNSPECIFIED", "SETUP_DONE", "TRANSFER_IN_PROGRESS", "BLACKOUT_STARTED",
		"OFFLINE_DONE", "BLACKOUT_EXITED", "DONE", "RECOVERY_DONE", "FAILED",
	};
	return p >= 0 && p < 9 ? n[p] : "PHASE?";
}

const char *ctl_state_name(int s)
{
	static const char *const n[] = {
		"UNSPECIFIED", "SUCCESS", "CANCELLED", "GUEST_INITIATED_CANCELLATION",
		"SOURCE_FAILED", "DESTINATION_FAILED", "RECOVERY_FAILED",
	};
	return s >= 0 && s < 7 ? n[s] : "STATE?";
}

const char *ctl_origin_name(int o)
{
	return o == 1 ? "source" : o == 2 ? "destination" : "unspecified";
}

int64_t ctl_parse_duration(const char *s)
{
	if (!s || !*s)
		return -1;
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -1;
	double mul = 1e9;
	if (!strcmp(end, "ms"))
		mul = 1e6;
	else if (!strcmp(end, "s") || !*end)
		mul = 1e9;
	else if (!strcmp(end, "m"))
		mul = 60e9;
	else if (!strcmp(end, "h"))
		mul = 3600e9;
	else
		return -1;
	return (int64_t)(v * mul);
}

void ctl_uuid(char out[37])
{
	uint8_t b[16] = {0};
	FILE *f = fopen("/dev/urandom", "rb");
	if (!f || fread(b, 1, sizeof(b), f) != sizeof(b)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
		for (int i = 0; i < 16; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			b[i] = (uint8_t)(x >> 56);
		}
	}
	if (f)
		fclose(f);
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	snprintf(out, 37,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
		 b[12], b[13], b[14], b[15]);
}

/* ------------------------------------------------------------ connections */

int ctl_side_connect(struct ctl_side *s, int wait_ms)
{
	int rc = -ENOENT;
	for (int waited = 0;; waited += 50) {
		rc = lm_rpc_client_connect(&s->c, s->path);
		if (rc == 0)
			return 0;
		if (waited >= wait_ms || (rc != -ENOENT && rc != -ECONNREFUSED))
			break;
		usleep(50 * 1000);
	}
	s->c = NULL;
	fprintf(stderr, "lmctl: connect to %s (%s): %s\n", s->name, s->path, strerror(-rc));
	return rc;
}

void ctl_side_abandon(struct ctl_side *s)
{
	if (s->c && !s->silent) {
		fprintf(stderr, "lmctl: giving up on the %s (%s): it does not answer\n", s->name, s->path);
		s->silent = true;
		lm_rpc_client_shutdown(s->c);
	}
}

void ctl_side_close(struct ctl_side *s)
{
	if (s->c)
		lm_rpc_client_close(s->c);
	s->c = NULL;
}

/* ---- Ctrl-C ------------------------------------------------------------ */

/* Written by the signal handler, read by every thread: lock-free atomics
 * (async-signal-safe). */
static int interrupted;
static int64_t interrupted_at_us;

bool ctl_is_interrupted(void)
{
	return __atomic_load_n(&interrupted, __ATOMIC_ACQUIRE) != 0;
}

static double mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void on_signal(int sig)
{
	if (__atomic_load_n(&interrupted, __ATOMIC_ACQUIRE)) {   /* the second: now */
		static const char m[] = "\nlmctl: interrupted again: exiting now\n";
		if (write(2, m, sizeof(m) - 1) < 0) { /* nothing to do */ }
		/* at once, threads and all: the raw exit_group, which is what
		 * _exit does, without a sanitizer's exit-time checks (TSan
		 * would report the threads we deliberately leave behind, and
		 * take a second to do so) */
		syscall(SYS_exit_group, 130);
		_exit(130);
	}
	(void)sig;
	__atomic_store_n(&interrupted_at_us, (int64_t)(mono_ms() * 1000), __ATOMIC_RELAXED);
	__atomic_store_n(&interrupted, 1, __ATOMIC_RELEASE);
}

void ctl_install_signals(void)
{
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

int64_t ctl_deadline(int64_t tmo)
{
	if (!ctl_is_interrupted())
		return tmo;
	double left = (double)__atomic_load_n(&interrupted_at_us, __ATOMIC_RELAXED) / 1000 + 1800 - mono_ms();   /* 2 s in all, with a margin */
	int64_t l = left > 50 ? (int64_t)(left * 1e6) : 50000000;
	return tmo && tmo < l ? tmo : l;
}

int ctl_call(struct ctl_side *s, const char *service, const char *method,
	     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rdesc,
	     ProtobufCMessage **resp, int64_t timeout_ns, bool quiet,
	     char *msgbuf, size_t msglen)
{
	if (resp)
		*resp = NULL;
	if (msgbuf && msglen)
		msgbuf[0] = 0;
	if (!s->c || s->silent) {
		if (!quiet)
			fprintf(stderr, "lmctl: %s on %s (%s): %s\n", method, s->name, s->path,
				s->silent ? "not tried: it did not answer before" : "not connected");
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", s->silent ? "the shim does not answer" : "not connected");
		return s->silent ? -ETIMEDOUT : -ENOTCONN;
	}
	timeout_ns = ctl_deadline(timeout_ns);
	size_t len = protobuf_c_message_get_packed_size(req);
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	protobuf_c_message_pack(req, buf);
	struct lm_rpc_call_opts co = { .timeout_ns = timeout_ns, .md = client_md, .n_md = 1 };
	struct lm_rpc_result r = {0};
	int rc = lm_rpc_client_call(s->c, service, method, buf, len, &co, &r);
	free(buf);
	/* no answer: the shim is silent (a connection we cut at a Ctrl-C is
	 * not the shim's doing) */
	if (rc == -ETIMEDOUT || (rc == -EPIPE && !ctl_is_interrupted()))
		s->silent = true;
	if (rc < 0) {
		if (!quiet)
			fprintf(stderr, "lmctl: %s on %s (%s): %s\n", method, s->name, s->path,
				rc == -EPIPE ? "connection lost (the shim went away)"
					     : rc == -ETIMEDOUT ? "no answer before the deadline"
								: strerror(-rc));
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", strerror(-rc));
		return rc;
	}
	if (r.code != 0) {
		if (!quiet)
			fprintf(stderr, "lmctl: %s on %s (%s): %s: %s\n", method, s->name, s->path,
				ctl_code_name(r.code), r.message ? r.message : "");
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", r.message ? r.message : "");
		rc = r.code;
		lm_rpc_result_free(&r);
		return rc;
	}
	if (rdesc && resp) {
		*resp = protobuf_c_message_unpack(rdesc, NULL, r.len, r.payload);
		if (!*resp) {
			if (!quiet)
				fprintf(stderr, "lmctl: %s on %s (%s): the answer does not decode as %s\n",
					method, s->name, s->path, rdesc->name);
			lm_rpc_result_free(&r);
			return -EPROTO;
		}
	}
	lm_rpc_result_free(&r);
	return 0;
}

int ctl_call_json(struct ctl_side *s, const char *service, const char *method, const char *req,
		  int64_t timeout_ns, bool quiet, char **out, char *msgbuf, size_t msglen)
{
	*out = NULL;
	if (msgbuf && msglen)
		msgbuf[0] = 0;
	if (!s->c || s->silent) {
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", s->silent ? "the shim does not answer" : "not connected");
		return s->silent ? -ETIMEDOUT : -ENOTCONN;
	}
	struct lm_rpc_call_opts co = { .timeout_ns = ctl_deadline(timeout_ns), .md = client_md, .n_md = 1 };
	struct lm_rpc_result r = { 0 };
	int rc = lm_rpc_client_call(s->c, service, method, req, strlen(req), &co, &r);
	if (rc == -ETIMEDOUT || rc == -EPIPE)
		s->silent = true;
	if (rc < 0) {
		if (!quiet)
			fprintf(stderr, "lmctl: %s on %s (%s): %s\n", method, s->name, s->path,
				rc == -ETIMEDOUT ? "no answer before the deadline" : strerror(-rc));
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", strerror(-rc));
		return rc;
	}
	if (r.code) {
		if (!quiet)
			fprintf(stderr, "lmctl: %s on %s (%s): %s: %s\n", method, s->name, s->path,
				ctl_code_name(r.code), r.message ? r.message : "");
		if (msgbuf && msglen)
			snprintf(msgbuf, msglen, "%s", r.message ? r.message : "");
		rc = r.code;
		lm_rpc_result_free(&r);
		return rc;
	}
	*out = malloc(r.len + 1);
	if (*out) {
		memcpy(*out, r.payload, r.len);
		(*out)[r.len] = '\0';
	}
	lm_rpc_result_free(&r);
	return *out ? 0 : -ENOMEM;
}

/* --------------------------------------------------------------- progress */

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A numeric field of a message as a double (0 when unset). */
static bool field_number(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, double *out)
{
	const char *base = (const char *)m;
	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return false;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t q = *(const uint32_t *)(base + f->quantifier_offset);
		if (q != f->id)
			return false;
	} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset) {
		if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset))
			return false;
	}
	const void *p = base + f->offset;
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
		*out = *(const int32_t *)p; return true;
	case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
		*out = *(const uint32_t *)p; return true;
	case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
		*out = (double)*(const int64_t *)p; return true;
	case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
		*out = (double)*(const uint64_t *)p; return true;
	case PROTOBUF_C_TYPE_FLOAT:
		*out = *(const float *)p; return true;
	case PROTOBUF_C_TYPE_DOUBLE:
		*out = *(const double *)p; return true;
	default:
		return false;
	}
}

/* The progress sub-message of a Notification, if its phase_details holds
 * a message other than blackout_exited. */
static const ProtobufCMessage *progress_detail(const Notification *n)
{
	const ProtobufCMessageDescriptor *d = n->base.descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->id == 4)
			continue;
		if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			continue;
		uint32_t q = *(const uint32_t *)((const char *)n + f->quantifier_offset);
		if (q != f->id)
			continue;
		return *(ProtobufCMessage *const *)((const char *)n + f->offset);
	}
	return NULL;
}

static bool name_has(const char *name, const char *part)
{
	return strstr(name, part) != NULL;
}

void ctl_progress_note(struct ctl_progress *p, const NotificationsResponse *r)
{
	const Notification *n = r->notification;
	if (!n)
		return;
	int o = (n->origin == 1 || n->origin == 2) ? (int)n->origin : 0;
	pthread_mutex_lock(&p->mu);
	if (p->events[o] && r->message_id != p->last_id[o] + 1)
		p->id_gaps[o]++;
	p->events[o]++;
	p->last_id[o] = r->message_id;
	p->phase[o] = n->phase;
	p->state[o] = n->state;
	if (n->phase == PHASE__PHASE_FAILED) {
		p->failed = true;
		p->fail_state[o] = n->state;
	}
	if (n->phase_details_case == NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED && n->blackout_exited &&
	    (o == 1 || p->blackout_ms < 0))
		p->blackout_ms = (int64_t)n->blackout_exited->blackout_duration_milliseconds;
	const ProtobufCMessage *d = progress_detail(n);
	if (d && (o == 1 || o == 0)) {
		const ProtobufCMessageDescriptor *dd = d->descriptor;
		p->eta_ms = -1;
		for (unsigned i = 0; i < dd->n_fields; i++) {
			const ProtobufCFieldDescriptor *f = &dd->fields[i];
			double v;
			if (!field_number(d, f, &v))
				continue;
			const char *nm = f->name;
			/* units by name: *_mbps are MB/s; dirty_rate is pages/s
			 * and bandwidth bytes/s (TransferProgress) */
			bool mbps = name_has(nm, "mbps");
			if (name_has(nm, "pass"))
				p->pass = v;
			else if (name_has(nm, "bytes_sent"))
				p->bytes_sent = v;
			else if (name_has(nm, "bytes_total"))
				p->bytes_total = v;
			else if (name_has(nm, "remaining"))
				p->pages_remaining = v;
			else if (name_has(nm, "dirty"))
				p->dirty_mbps = mbps ? v : v * 4096.0 / 1e6;
			else if (name_has(nm, "bandwidth"))
				p->bw_mbps = mbps ? v : v / 1e6;
			else if (name_has(nm, "eta"))
				p->eta_ms = v > 0 ? v : -1;
			else if (name_has(nm, "elapsed"))
				p->elapsed_ms = v;
		}
		p->have_progress = true;
	}
	if (n->phase != PHASE__PHASE_TRANSFER_IN_PROGRESS || !d) {
		snprintf(p->last_line, sizeof(p->last_line), "%s %s %s", ctl_origin_name(o),
			 ctl_phase_name(n->phase), ctl_state_name(n->state));
	}
	p->dirty = true;
	pthread_mutex_unlock(&p->mu);
}

void ctl_notification_line(const NotificationsResponse *r, char *buf, size_t len)
{
	const Notification *n = r->notification;
	if (!n) {
		snprintf(buf, len, "id=%" PRIu32 " (empty notification)", r->message_id);
		return;
	}
	int k = snprintf(buf, len, "id=%" PRIu32 " origin=%s phase=%s state=%s", r->message_id,
			 ctl_origin_name(n->origin), ctl_phase_name(n->phase), ctl_state_name(n->state));
	if (k < 0 || (size_t)k >= len)
		return;
	if (n->phase_details_case == NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED && n->blackout_exited)
		k += snprintf(buf + k, len - (size_t)k, " blackout_ms=%" PRIu64,
			      n->blackout_exited->blackout_duration_milliseconds);
	const ProtobufCMessage *d = progress_detail(n);
	if (d) {
		for (unsigned i = 0; i < d->descriptor->n_fields && (size_t)k < len; i++) {
			double v;
			const ProtobufCFieldDescriptor *f = &d->descriptor->fields[i];
			if (field_number(d, f, &v))
				k += snprintf(buf + k, len - (size_t)k, " %s=%.6g", f->name, v);
		}
	}
	if (r->update_time && (size_t)k < len)
		snprintf(buf + k, len - (size_t)k, " time=%" PRId64 ".%03d", r->update_time->seconds,
			 (int)(r->update_time->nanos / 1000000));
}

void ctl_progress_render(struct ctl_progress *p, bool tty, bool final, uint64_t vm_bytes)
{
	pthread_mutex_lock(&p->mu);
	if (!p->dirty && !final) {
		pthread_mutex_unlock(&p->mu);
		return;
	}
	p->dirty = false;
	char line[640];
	if (p->have_progress) {
		double gib = p->bytes_sent / (1024.0 * 1024.0 * 1024.0);
		double eta = p->eta_ms;
		if (eta < 0 && p->bw_mbps > 0)
			eta = p->pages_remaining * 4096.0 / (p->bw_mbps * 1e6) * 1000.0;
		char bar[21];
		double frac = 0;
		double total = p->bytes_total > 0 ? p->bytes_total : (double)vm_bytes;
		if (total > 0)
			frac = p->bytes_sent / total;
		if (frac > 1)
			frac = 1;
		int fill = (int)(frac * 20);
		for (int i = 0; i < 20; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[20] = 0;
		snprintf(line, sizeof(line),
			 "[%s] pass %.0f  %.2f GiB sent  dirty %.0f MB/s  bw %.0f MB/s  remaining %.0f pages  ETA %.1fs  (%s)",
			 bar, p->pass, gib, p->dirty_mbps, p->bw_mbps, p->pages_remaining,
			 eta >= 0 ? eta / 1000.0 : 0.0, p->last_line[0] ? p->last_line : "starting");
	} else {
		snprintf(line, sizeof(line), "migration: %s", p->last_line[0] ? p->last_line : "starting");
	}
	/* plain output: a line when the phase changes, progress at most once
	 * a second */
	bool phase_changed = strcmp(p->last_line, p->printed_line) != 0;
	double t = now_ms();
	if (!tty && !final && !phase_changed && t - p->printed_at < 1000) {
		pthread_mutex_unlock(&p->mu);
		return;
	}
	snprintf(p->printed_line, sizeof(p->printed_line), "%s", p->last_line);
	p->printed_at = t;
	pthread_mutex_unlock(&p->mu);
	if (tty)
		fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
	else
		fprintf(stderr, "%s\n", line);
	fflush(stderr);
}

int ctl_guest_runs(struct ctl_side *s)
{
	char *out = NULL, msg[256];
	int rc = ctl_call_json(s, "lmshim.v1.Inspect", "Properties", "{}", 10ll * 1000000000, true, &out,
			       msg, sizeof(msg));
	if (rc == 5)   /* NotFound: no compute system */
		return -5;
	if (rc != 0)
		return -1;
	json_t *j = json_loads(out, 0, NULL);
	free(out);
	int r = json_is_true(json_object_get(json_object_get(j, "Statistics"), "GuestRunning")) ? 1 : 0;
	json_decref(j);
	return r;
}
