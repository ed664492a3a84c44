/*
 * log.h: structured logging in logfmt, one line per event, to stderr.
 *
 *   ts=2026-11-25T19:49:46.123Z level=info mod=rpc msg="peer refused" uid=1000
 *
 * The caller passes the key=value tail already formatted (printf-style);
 * values with spaces must be quoted by the caller (lm_log_quote helps).
 * Lines are written with one write(2) so that threads never interleave
 * within a line. The level threshold comes from LM_LOG_LEVEL
 * (debug|info|warn|error, default info) or lm_log_set_level().
 */
#ifndef LM_UTIL_LOG_H
#define LM_UTIL_LOG_H

#include <stddef.h>

enum lm_log_level { LM_LOG_DEBUG, LM_LOG_INFO, LM_LOG_WARN, LM_LOG_ERROR, LM_LOG_OFF };

/* Thread: any (call before threads start to avoid a benign race). */
void lm_log_set_level(enum lm_log_level level);
/* Thread: any. */
enum lm_log_level lm_log_get_level(void);
/* Thread: any. Redirect output to fd (default 2). */
void lm_log_set_fd(int fd);

/* Thread: any. `mod` names the module, `msg` the event; `fmt` formats the
 * key=value tail (may be NULL). */
void lm_log(enum lm_log_level level, const char *mod, const char *msg,
	    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Thread: any. Writes `s` as a logfmt value (quoted and escaped if needed)
 * into buf; returns buf. */
const char *lm_log_quote(char *buf, size_t size, const char *s);

#define lm_log_debug(mod, msg, ...) \
	do { if (lm_log_get_level() <= LM_LOG_DEBUG) lm_log(LM_LOG_DEBUG, mod, msg, __VA_ARGS__); } while (0)
#define lm_log_info(mod, msg, ...)  lm_log(LM_LOG_INFO, mod, msg, __VA_ARGS__)
#define lm_log_warn(mod, msg, ...)  lm_log(LM_LOG_WARN, mod, msg, __VA_ARGS__)
#define lm_log_error(mod, msg, ...) lm_log(LM_LOG_ERROR, mod, msg, __VA_ARGS__)

#endif
