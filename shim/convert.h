/*
 * convert.h: the conversions between the Migration service's proto
 * messages and the compute service's C types (hcs/hcs.h), and the
 * SessionId rule. They live on the shim's side so that hcs/ never needs
 * the generated proto code. Plain functions, no state: Thread: any, for
 * all of them.
 */
#ifndef LM_SHIM_CONVERT_H
#define LM_SHIM_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "actors/notifier.h"
#include "hcs/hcs.h"
#include "migration_options.pb-c.h"

/* proto InitializeOptions -> HCS migration options for `origin`. `o` NULL
 * means absent options: the defaults. Sent options are validated, and a
 * refusal names the proto field: MEMORY_TRANSPORT_UNSPECIFIED or an
 * unknown transport, throttling_scale outside 1..100,
 * minimum_throttle_percentage > 100, maximum passes 0 or below target
 * passes, more than 64 compression workers are -EINVAL with `err` set. */
int lm_convert_init_options(const InitializeOptions *o, enum lm_hcs_origin origin,
			    lm_hcs_migration_options_t *out, char *err, size_t errlen);

/* An hcs event -> the notifier's Notification fields (Origin, Phase,
 * PhaseState, blackout and progress details). The phases map 1:1;
 * SystemExited is no migration phase: returns false (nothing to notify). */
bool lm_convert_event(const lm_hcs_event_t *e, struct lm_notify_event *out);

/* Session ID string -> SessionId: a GUID (with or without braces, any
 * case) is first put in canonical lowercase 8-4-4-4-12 form; then SHA-256
 * of the string, first 4 bytes big-endian. -EINVAL for NULL or empty. */
int lm_convert_session_id(const char *session, uint32_t *out);

#endif
