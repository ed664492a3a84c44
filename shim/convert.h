/*
 * convert.h: the conversion helpers between the Migration service's proto
 * messages and the compute service's HCS JSON, and the SessionId rule.
 * Plain functions, no state: Thread: any, for all of them.
 */
#ifndef LM_SHIM_CONVERT_H
#define LM_SHIM_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "migration_options.pb-c.h"

/* proto InitializeOptions -> MigrationInitializeOptions JSON with the HCS
 * key names, Origin "Source" (origin 1) or "Destination" (origin 2). `o`
 * NULL means absent options: defaults ({"Origin":...} only). Sent options
 * are validated: MEMORY_TRANSPORT_UNSPECIFIED or an unknown transport,
 * throttling_scale outside 1..100, minimum_throttle_percentage > 100,
 * maximum passes below target passes, a zero maximum, more than 64
 * compression workers, are -EINVAL with `err` naming the field. On 0,
 * *out is a malloc'd NUL-terminated JSON string (free()). */
int lm_hcs_init_options_to_json(const InitializeOptions *o, int origin, char **out,
				char *err, size_t errlen);

/* HCS event JSON {Origin, Event, Result, AdditionalDetails} -> proto
 * Notification. Event and Result map 1:1 onto Phase / PhaseState; an
 * unknown Event or Result is UNSPECIFIED; a progress phase without a
 * Result is SUCCESS. BlackoutExited details become the blackout_exited
 * oneof when BlackoutDurationMilliseconds is a non-negative integer (the
 * timestamp, RFC 3339 UTC, is added when it parses); bad details are
 * dropped and the event kept. -EINVAL only if the JSON is not an object.
 * Free *out with lm_hcs_notification_free. */
int lm_hcs_event_to_notification(const char *event_json, Notification **out);
void lm_hcs_notification_free(Notification *n);

/* Session ID string -> SessionId: a GUID (with or without braces, any
 * case) is first put in canonical lowercase 8-4-4-4-12 form; then SHA-256
 * of the string, first 4 bytes big-endian. -EINVAL for NULL or empty. */
int lm_hcs_session_id(const char *session, uint32_t *out);

#endif
