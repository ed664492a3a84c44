/*
 * convert.c: proto <-> HCS JSON conversion helpers and the SessionId rule
 * (see convert.h). JSON through jansson, SHA-256 through OpenSSL's
 * libcrypto; nothing hand-rolled.
 */
#include "shim/convert.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int lm_hcs_init_options_to_json(const InitializeOptions *o, int origin, char **out,
				char *err, size_t errlen)
{
	if (!out || (origin != 1 && origin != 2)) {
		snprintf(err, errlen, "Origin must be Source or Destination");
		return -EINVAL;
	}
	json_t *j = json_pack("{s:s}", "Origin", origin == 1 ? "Source" : "Destination");
	if (!j)
		return -ENOMEM;
	int rc = 0;
	if (o) {
		if (o->memory_transport != MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP) {
			snprintf(err, errlen, "memory_transport must be MEMORY_TRANSPORT_TCP (got %d)",
				 (int)o->memory_transport);
			rc = -EINVAL;
			goto out;
		}
		json_object_set_new(j, "MemoryTransport", json_string("TCP"));
		const MemoryTransferThrottleParams *t = o->memory_transfer_throttle_params;
		if (t) {
			json_t *tj = json_object();
			if (t->_skip_throttling_case)
				json_object_set_new(tj, "SkipThrottling", json_boolean(t->skip_throttling));
			if (t->_throttling_scale_case) {
				if (!(t->throttling_scale >= 1 && t->throttling_scale <= 100)) {
					snprintf(err, errlen, "throttling_scale must be within 1..100");
					json_decref(tj);
					rc = -EINVAL;
					goto out;
				}
				json_object_set_new(tj, "ThrottlingScale", json_real(t->throttling_scale));
			}
			if (t->_minimum_throttle_percentage_case) {
				if (t->minimum_throttle_percentage > 100) {
					snprintf(err, errlen, "minimum_throttle_percentage must be within 0..100");
					json_decref(tj);
					rc = -EINVAL;
					goto out;
				}
				json_object_set_new(tj, "MinimumThrottlePercentage",
						    json_integer(t->minimum_throttle_percentage));
			}
			if (t->_target_number_of_brownout_transfer_passes_case)
				json_object_set_new(tj, "TargetNumberOfBrownoutTransferPasses",
						    json_integer(t->target_number_of_brownout_transfer_passes));
			if (t->_starting_brownout_pass_number_for_throttling_case)
				json_object_set_new(tj, "StartingBrownoutPassNumberForThrottling",
						    json_integer(t->starting_brownout_pass_number_for_throttling));
			if (t->_maximum_number_of_brownout_transfer_passes_case) {
				uint32_t mx = t->maximum_number_of_brownout_transfer_passes;
				if (mx == 0 || (t->_target_number_of_brownout_transfer_passes_case &&
						mx < t->target_number_of_brownout_transfer_passes)) {
					snprintf(err, errlen, "maximum_number_of_brownout_transfer_passes must be >= 1 and >= target_number_of_brownout_transfer_passes");
					json_decref(tj);
					rc = -EINVAL;
					goto out;
				}
				json_object_set_new(tj, "MaximumNumberOfBrownoutTransferPasses", json_integer(mx));
			}
			if (t->_target_blackout_transfer_time_case)
				json_object_set_new(tj, "TargetBlackoutTransferTime",
						    json_integer(t->target_blackout_transfer_time));
			if (t->_blackout_time_threshold_for_cancelling_migration_case)
				json_object_set_new(tj, "BlackoutTimeThresholdForCancellingMigration",
						    json_integer(t->blackout_time_threshold_for_cancelling_migration));
			json_object_set_new(j, "MemoryTransferThrottleParams", tj);
		}
		if (o->compression_settings) {
			json_t *cj = json_object();
			if (o->compression_settings->_throttle_worker_count_case) {
				if (o->compression_settings->throttle_worker_count > 64) {
					snprintf(err, errlen, "throttle_worker_count must be within 0..64");
					json_decref(cj);
					rc = -EINVAL;
					goto out;
				}
				json_object_set_new(cj, "ThrottleWorkerCount",
						    json_integer(o->compression_settings->throttle_worker_count));
			}
			json_object_set_new(j, "CompressionSettings", cj);
		}
		json_object_set_new(j, "ChecksumVerification", json_boolean(o->checksum_verification));
		json_object_set_new(j, "PerfTracingEnabled", json_boolean(o->perf_tracing_enabled));
		json_object_set_new(j, "CancelIfBlackoutThresholdExceeds",
				    json_boolean(o->cancel_if_blackout_threshold_exceeds));
		json_object_set_new(j, "PrepareMemoryTransferMode",
				    json_boolean(o->prepare_memory_transfer_mode));
	}
	*out = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	if (!*out)
		rc = -ENOMEM;
out:
	json_decref(j);
	return rc;
}

static const struct { const char *name; Phase phase; bool progress; } events[] = {
	{ "SetupDone", PHASE__PHASE_SETUP_DONE, true },
	{ "TransferInProgress", PHASE__PHASE_TRANSFER_IN_PROGRESS, true },
	{ "BlackoutStarted", PHASE__PHASE_BLACKOUT_STARTED, true },
	{ "OfflineDone", PHASE__PHASE_OFFLINE_DONE, true },
	{ "BlackoutExited", PHASE__PHASE_BLACKOUT_EXITED, true },
	{ "MigrationDone", PHASE__PHASE_DONE, true },
	{ "MigrationRecoveryDone", PHASE__PHASE_RECOVERY_DONE, true },
	{ "MigrationFailed", PHASE__PHASE_FAILED, false },
};

static const struct { const char *name; PhaseState state; } results[] = {
	{ "Success", PHASE_STATE__PHASE_STATE_SUCCESS },
	{ "MigrationCancelled", PHASE_STATE__PHASE_STATE_CANCELLED },
	{ "GuestInitiatedCancellation", PHASE_STATE__PHASE_STATE_GUEST_INITIATED_CANCELLATION },
	{ "SourceMigrationFailed", PHASE_STATE__PHASE_STATE_SOURCE_FAILED },
	{ "DestinationMigrationFailed", PHASE_STATE__PHASE_STATE_DESTINATION_FAILED },
	{ "MigrationRecoveryFailed", PHASE_STATE__PHASE_STATE_RECOVERY_FAILED },
};

/* One allocation holds the notification and its details. */
struct note {
	Notification n;
	BlackoutExitedEventDetails d;
	Google__Protobuf__Timestamp ts;
};

/* "YYYY-MM-DDTHH:MM:SS[.frac]Z" -> seconds/nanos. */
static bool parse_rfc3339(const char *s, int64_t *sec, int32_t *nanos)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	int n = 0;
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
		   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 || n != 19)
		return false;
	if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
	    tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
		return false;
	const char *p = s + 19;
	int64_t ns = 0;
	if (*p == '.') {
		int digits = 0;
		p++;
		while (isdigit((unsigned char)*p)) {
			if (digits < 9) {
				ns = ns * 10 + (*p - '0');
				digits++;
			}
			p++;
		}
		if (digits == 0)
			return false;
		while (digits++ < 9)
			ns *= 10;
	}
	if (strcmp(p, "Z") != 0)
		return false;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	*sec = (int64_t)timegm(&tm);
	*nanos = (int32_t)ns;
	return true;
}

int lm_hcs_event_to_notification(const char *event_json, Notification **out)
{
	json_t *j = event_json ? json_loads(event_json, 0, NULL) : NULL;
	if (!j || !json_is_object(j)) {
		json_decref(j);
		return -EINVAL;
	}
	struct note *nt = calloc(1, sizeof(*nt));
	if (!nt) {
		json_decref(j);
		return -ENOMEM;
	}
	notification__init(&nt->n);
	const char *origin = json_string_value(json_object_get(j, "Origin"));
	nt->n.origin = origin && !strcmp(origin, "Source") ? ORIGIN__ORIGIN_SOURCE
		       : origin && !strcmp(origin, "Destination") ? ORIGIN__ORIGIN_DESTINATION
		       : ORIGIN__ORIGIN_UNSPECIFIED;
	const char *ev = json_string_value(json_object_get(j, "Event"));
	bool progress = false;
	nt->n.phase = PHASE__PHASE_UNSPECIFIED;
	for (size_t i = 0; ev && i < sizeof(events) / sizeof(events[0]); i++)
		if (!strcmp(ev, events[i].name)) {
			nt->n.phase = events[i].phase;
			progress = events[i].progress;
		}
	json_t *rj = json_object_get(j, "Result");
	const char *res = json_string_value(rj);
	nt->n.state = PHASE_STATE__PHASE_STATE_UNSPECIFIED;
	if (!rj || json_is_null(rj)) {
		if (progress)
			nt->n.state = PHASE_STATE__PHASE_STATE_SUCCESS;
	} else {
		for (size_t i = 0; res && i < sizeof(results) / sizeof(results[0]); i++)
			if (!strcmp(res, results[i].name))
				nt->n.state = results[i].state;
	}
	if (nt->n.phase == PHASE__PHASE_BLACKOUT_EXITED) {
		json_t *d = json_object_get(j, "AdditionalDetails");
		json_t *ms = json_object_get(d, "BlackoutDurationMilliseconds");
		if (json_is_integer(ms) && json_integer_value(ms) >= 0) {
			blackout_exited_event_details__init(&nt->d);
			nt->d.blackout_duration_milliseconds = (uint64_t)json_integer_value(ms);
			const char *ts = json_string_value(json_object_get(d, "BlackoutStopTimestamp"));
			int64_t sec;
			int32_t nanos;
			if (ts && parse_rfc3339(ts, &sec, &nanos)) {
				google__protobuf__timestamp__init(&nt->ts);
				nt->ts.seconds = sec;
				nt->ts.nanos = nanos;
				nt->d.blackout_stop_timestamp = &nt->ts;
			}
			nt->n.phase_details_case = NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED;
			nt->n.blackout_exited = &nt->d;
		}
	}
	json_decref(j);
	*out = &nt->n;
	return 0;
}

void lm_hcs_notification_free(Notification *n)
{
	free(n); /* n is the first member of struct note */
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

int lm_hcs_session_id(const char *session, uint32_t *out)
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
