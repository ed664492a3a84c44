/*
 * convert.c: proto <-> hcs conversions and the SessionId rule (see
 * convert.h). SHA-256 through OpenSSL's libcrypto; nothing hand-rolled.
 */
#include "shim/convert.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define REFUSE(...)                                     \
	do {                                            \
		if (err && errlen)                      \
			snprintf(err, errlen, __VA_ARGS__); \
		return -EINVAL;                         \
	} while (0)

int lm_convert_init_options(const InitializeOptions *o, enum lm_hcs_origin origin,
			    lm_hcs_migration_options_t *out, char *err, size_t errlen)
{
	if (origin != LM_HCS_ORIGIN_SOURCE && origin != LM_HCS_ORIGIN_DESTINATION)
		REFUSE("origin must be the source or the destination");
	lm_hcs_migration_options_default(out, origin);
	if (!o)
		return 0;
	if (o->memory_transport != MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP)
		REFUSE("memory_transport must be MEMORY_TRANSPORT_TCP (got %d)", (int)o->memory_transport);
	const MemoryTransferThrottleParams *t = o->memory_transfer_throttle_params;
	if (t) {
		if (t->_skip_throttling_case)
			out->skip_throttling = t->skip_throttling;
		if (t->_throttling_scale_case) {
			if (!(t->throttling_scale >= 1 && t->throttling_scale <= 100))
				REFUSE("throttling_scale must be within 1..100");
			out->throttling_scale = t->throttling_scale;
		}
		if (t->_minimum_throttle_percentage_case) {
			if (t->minimum_throttle_percentage > 100)
				REFUSE("minimum_throttle_percentage must be within 0..100");
			out->min_throttle_pct = t->minimum_throttle_percentage;
		}
		if (t->_target_number_of_brownout_transfer_passes_case)
			out->target_passes = t->target_number_of_brownout_transfer_passes;
		if (t->_starting_brownout_pass_number_for_throttling_case)
			out->start_throttle_pass = t->starting_brownout_pass_number_for_throttling;
		if (t->_maximum_number_of_brownout_transfer_passes_case)
			out->max_passes = t->maximum_number_of_brownout_transfer_passes;
		if (out->max_passes == 0 || out->max_passes < out->target_passes)
			REFUSE("maximum_number_of_brownout_transfer_passes must be >= 1 and >= "
			       "target_number_of_brownout_transfer_passes");
		if (t->_target_blackout_transfer_time_case)
			out->target_blackout_ms = t->target_blackout_transfer_time;
		if (t->_blackout_time_threshold_for_cancelling_migration_case)
			out->blackout_cancel_ms = t->blackout_time_threshold_for_cancelling_migration;
	}
	if (o->compression_settings && o->compression_settings->_throttle_worker_count_case) {
		if (o->compression_settings->throttle_worker_count > LM_HCS_MAX_COMPRESS_WORKERS)
			REFUSE("throttle_worker_count must be within 0..%d", LM_HCS_MAX_COMPRESS_WORKERS);
		out->compress_workers = o->compression_settings->throttle_worker_count;
	}
	out->checksum = o->checksum_verification;
	out->perf_tracing = o->perf_tracing_enabled;
	out->cancel_if_blackout_exceeds = o->cancel_if_blackout_threshold_exceeds;
	out->prepare_memory_transfer_mode = o->prepare_memory_transfer_mode;
	/* hcs checks again (names HCS's field); both must agree */
	return lm_hcs_migration_options_check(out, err, errlen);
}

bool lm_convert_event(const lm_hcs_event_t *e, struct lm_notify_event *out)
{
	static const int phase[] = {
		[LM_HCS_EV_SETUP_DONE] = LM_PHASE_SETUP_DONE,
		[LM_HCS_EV_TRANSFER_IN_PROGRESS] = LM_PHASE_TRANSFER_IN_PROGRESS,
		[LM_HCS_EV_BLACKOUT_STARTED] = LM_PHASE_BLACKOUT_STARTED,
		[LM_HCS_EV_OFFLINE_DONE] = LM_PHASE_OFFLINE_DONE,
		[LM_HCS_EV_BLACKOUT_EXITED] = LM_PHASE_BLACKOUT_EXITED,
		[LM_HCS_EV_MIGRATION_DONE] = LM_PHASE_DONE,
		[LM_HCS_EV_RECOVERY_DONE] = LM_PHASE_RECOVERY_DONE,
		[LM_HCS_EV_MIGRATION_FAILED] = LM_PHASE_FAILED,
		[LM_HCS_EV_SYSTEM_EXITED] = LM_PHASE_UNSPECIFIED,
	};
	static const int state[] = {
		[LM_HCS_RESULT_SUCCESS] = PHASE_STATE__PHASE_STATE_SUCCESS,
		[LM_HCS_RESULT_CANCELLED] = PHASE_STATE__PHASE_STATE_CANCELLED,
		[LM_HCS_RESULT_GUEST_CANCELLED] = PHASE_STATE__PHASE_STATE_GUEST_INITIATED_CANCELLATION,
		[LM_HCS_RESULT_SOURCE_FAILED] = PHASE_STATE__PHASE_STATE_SOURCE_FAILED,
		[LM_HCS_RESULT_DESTINATION_FAILED] = PHASE_STATE__PHASE_STATE_DESTINATION_FAILED,
		[LM_HCS_RESULT_RECOVERY_FAILED] = PHASE_STATE__PHASE_STATE_RECOVERY_FAILED,
	};
	memset(out, 0, sizeof(*out));
	if ((unsigned)e->kind >= sizeof(phase) / sizeof(phase[0]) ||
	    phase[e->kind] == LM_PHASE_UNSPECIFIED)
		return false;
	out->phase = phase[e->kind];
	out->origin = e->origin == LM_HCS_ORIGIN_SOURCE ? ORIGIN__ORIGIN_SOURCE
		      : e->origin == LM_HCS_ORIGIN_DESTINATION ? ORIGIN__ORIGIN_DESTINATION
		      : ORIGIN__ORIGIN_UNSPECIFIED;
	out->state = (unsigned)e->result < sizeof(state) / sizeof(state[0])
			     ? state[e->result] : PHASE_STATE__PHASE_STATE_UNSPECIFIED;
	if (e->kind == LM_HCS_EV_BLACKOUT_EXITED) {
		out->has_blackout = true;
		out->blackout_duration_ms = (e->u.blackout.duration_ns + 500000u) / 1000000u;
		out->blackout_stop_wall_ns = e->u.blackout.stop_wall_ns;
	} else if (e->kind == LM_HCS_EV_TRANSFER_IN_PROGRESS) {
		const lm_hcs_progress_t *p = &e->u.progress;
		out->has_progress = true;
		out->progress.pass = p->pass;
		out->progress.bytes_sent = p->bytes_sent;
		out->progress.bytes_total = p->memory_bytes;
		out->progress.pages_remaining = p->pages_remaining;
		out->progress.dirty_rate = (uint64_t)(p->dirty_rate_mbps * 1e6 / 4096.0);
		out->progress.bandwidth = (uint64_t)(p->bandwidth_mbps * 1e6);
		out->progress.elapsed_ms = p->elapsed_ms;
		out->progress.eta_ms = p->eta_ms;
	} else if (e->kind == LM_HCS_EV_MIGRATION_FAILED && e->u.failure.message[0]) {
		out->has_failure = true;
		snprintf(out->failure, sizeof(out->failure), "%s", e->u.failure.message);
	}
	return true;
}

static bool is_guid(const char *s, size_t len)
{
	if (len != 36)
		return false;
	for (size_t i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

int lm_convert_session_id(const char *session, uint32_t *out)
{
	if (!session || !*session || !out)
		return -EINVAL;
	size_t len = strlen(session);
	char canon[37];
	const char *msg = session;
	size_t mlen = len;
	const char *g = session;
	size_t glen = len;
	if (len == 38 && session[0] == '{' && session[37] == '}') {
		g = session + 1;
		glen = 36;
	}
	if (is_guid(g, glen)) {
		for (size_t i = 0; i < 36; i++)
			canon[i] = (char)tolower((unsigned char)g[i]);
		canon[36] = 0;
		msg = canon;
		mlen = 36;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (EVP_Digest(msg, mlen, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 4)
		return -EIO;
	*out = (uint32_t)md[0] << 24 | (uint32_t)md[1] << 16 | (uint32_t)md[2] << 8 | md[3];
	return 0;
}
