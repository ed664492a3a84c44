/*
 * log.c: the logfmt writer behind log.h.
 *
 * Each line is formatted into a stack buffer and written with a single
 * write(2): POSIX keeps such writes to a pipe or file unbroken up to
 * PIPE_BUF, and lines longer than the buffer are truncated, never split.
 */
#include "util/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = -1;   /* -1: not read from the environment yet */
static _Atomic int log_fd = 2;

static int level_from_env(void)
{
	const char *s = getenv("LM_LOG_LEVEL");
	if (!s)
		return LM_LOG_INFO;
	if (!strcasecmp(s, "debug"))
		return LM_LOG_DEBUG;
	if (!strcasecmp(s, "warn"))
		return LM_LOG_WARN;
	if (!strcasecmp(s, "error"))
		return LM_LOG_ERROR;
	if (!strcasecmp(s, "off"))
		return LM_LOG_OFF;
	return LM_LOG_INFO;
}

void lm_log_set_level(enum lm_log_level level)
{
	atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

enum lm_log_level lm_log_get_level(void)
{
	int l = atomic_load_explicit(&log_level, memory_order_relaxed);
	if (l < 0) {
		l = level_from_env();
		atomic_store_explicit(&log_level, l, memory_order_relaxed);
	}
	return (enum lm_log_level)l;
}

void lm_log_set_fd(int fd)
{
	atomic_store_explicit(&log_fd, fd, memory_order_relaxed);
}

const char *lm_log_quote(char *buf, size_t size, const char *s)
{
	size_t n = 0;
	bool plain = s && *s;

	if (size == 0)
		return buf;
	for (const char *p = s; p && *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\')
			plain = false;
	if (plain) {
		snprintf(buf, size, "%s", s);
		return buf;
	}
	if (n + 1 < size)
		buf[n++] = '"';
	for (const char *p = s; p && *p && n + 3 < size; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			buf[n++] = '\\';
			buf[n++] = (char)c;
		} else if (c == '\n') {
			buf[n++] = '\\';
			buf[n++] = 'n';
		} else if (c < ' ') {
			buf[n++] = '?';
		} else {
			buf[n++] = (char)c;
		}
	}
	if (n + 1 < size)
		buf[n++] = '"';
	buf[n < size ? n : size - 1] = '\0';
	return buf;
}

void lm_log(enum lm_log_level level, const char *mod, const char *msg,
	    const char *fmt, ...)
{
	static const char *names[] = { "debug", "info", "warn", "error" };
	char line[2048], qmsg[512];
	struct timespec ts;
	struct tm tm;
	int n;

	if (level < lm_log_get_level() || level >= LM_LOG_OFF)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s msg=%s",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[level],
		     mod, lm_log_quote(qmsg, sizeof(qmsg), msg));
	if (fmt && *fmt && n > 0 && (size_t)n < sizeof(line) - 2) {
		va_list ap;
		line[n++] = ' ';
		va_start(ap, fmt);
		int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
		va_end(ap);
		if (m > 0)
			n += m;
	}
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = write(atomic_load_explicit(&log_fd, memory_order_relaxed), line, (size_t)n);
	(void)w;
}
