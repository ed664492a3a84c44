/*
 * fault.c: the rule table behind LM_FAULT.
 *
 * Rules live in a small fixed table (tests arm a handful at a time). The
 * mutex is taken only on armed hits, so disarmed builds pay one load.
 */
#include "util/fault.h"
#include "util/log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RULES 32
#define NAME_MAX_LEN 64

struct rule {
	char name[NAME_MAX_LEN];
	int err;             /* errno to fail with, 0 = do not fail */
	unsigned delay_ms;   /* sleep before acting */
	bool kill;           /* SIGKILL the process */
	unsigned after;      /* hits to let pass first */
	unsigned times;      /* max firings, 0 = unlimited */
	unsigned reached;    /* hits seen */
	unsigned fired;      /* firings done */
};

atomic_int lm__faults_armed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static int nrules;

static const struct { const char *name; int err; } errnames[] = {
	{ "EPERM", EPERM }, { "ENOENT", ENOENT }, { "EINTR", EINTR },
	{ "EIO", EIO }, { "EBADF", EBADF }, { "EAGAIN", EAGAIN },
	{ "ENOMEM", ENOMEM }, { "EACCES", EACCES }, { "EBUSY", EBUSY },
	{ "EEXIST", EEXIST }, { "EINVAL", EINVAL }, { "ENOSPC", ENOSPC },
	{ "EPIPE", EPIPE }, { "ERANGE", ERANGE }, { "ENOSYS", ENOSYS },
	{ "EPROTO", EPROTO }, { "EMSGSIZE", EMSGSIZE },
	{ "ECONNABORTED", ECONNABORTED }, { "ECONNRESET", ECONNRESET },
	{ "ENOTCONN", ENOTCONN }, { "ETIMEDOUT", ETIMEDOUT },
	{ "ECONNREFUSED", ECONNREFUSED }, { "EHOSTUNREACH", EHOSTUNREACH },
	{ "ECANCELED", ECANCELED }, { "EBADMSG", EBADMSG },
};

static int parse_uint(const char *s, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > 0x7fffffffUL)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static int parse_errno(const char *s, int *out)
{
	unsigned v;
	for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
		if (!strcmp(s, errnames[i].name)) {
			*out = errnames[i].err;
			return 0;
		}
	if (parse_uint(s, &v) == 0 && v > 0 && v < 4096) {
		*out = (int)v;
		return 0;
	}
	return -EINVAL;
}

/* Parses one rule ("name:opt:opt") into r. */
static int parse_rule(char *text, struct rule *r)
{
	char *save = NULL, *tok = strtok_r(text, ":", &save);

	memset(r, 0, sizeof(*r));
	if (!tok || !*tok || strlen(tok) >= NAME_MAX_LEN)
		return -EINVAL;
	strcpy(r->name, tok);
	while ((tok = strtok_r(NULL, ":", &save))) {
		char *eq = strchr(tok, '=');
		const char *val = eq ? eq + 1 : NULL;
		if (eq)
			*eq = '\0';
		if (!strcmp(tok, "kill") && !val) {
			r->kill = true;
		} else if (!strcmp(tok, "errno") && val) {
			if (parse_errno(val, &r->err))
				return -EINVAL;
		} else if (!strcmp(tok, "delay_ms") && val) {
			if (parse_uint(val, &r->delay_ms))
				return -EINVAL;
		} else if (!strcmp(tok, "after") && val) {
			if (parse_uint(val, &r->after))
				return -EINVAL;
		} else if (!strcmp(tok, "times") && val) {
			if (parse_uint(val, &r->times))
				return -EINVAL;
		} else {
			return -EINVAL;
		}
	}
	if (!r->err && !r->delay_ms && !r->kill)
		return -EINVAL;      /* a rule must do something */
	return 0;
}

int lm_fault_arm(const char *spec)
{
	struct rule parsed[MAX_RULES];
	int n = 0, rc = 0;
	char *copy, *save = NULL, *tok;

	if (!spec)
		return -EINVAL;
	copy = strdup(spec);
	if (!copy)
		return -ENOMEM;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == MAX_RULES) {
			rc = -ENOSPC;
			break;
		}
		/* parse_rule uses its own strtok_r state on the sub-string */
		char rule_text[256];
		if (strlen(tok) >= sizeof(rule_text)) {
			rc = -EINVAL;
			break;
		}
		strcpy(rule_text, tok);
		rc = parse_rule(rule_text, &parsed[n]);
		if (rc)
			break;
		n++;
	}
	free(copy);
	if (rc == 0 && n == 0)
		rc = -EINVAL;
	if (rc)
		return rc;

	pthread_mutex_lock(&lock);
	if (nrules + n > MAX_RULES) {
		pthread_mutex_unlock(&lock);
		return -ENOSPC;
	}
	for (int i = 0; i < n; i++) {
		/* a rule for a name already armed replaces it */
		int j;
		for (j = 0; j < nrules; j++)
			if (!strcmp(rules[j].name, parsed[i].name))
				break;
		rules[j] = parsed[i];
		if (j == nrules)
			nrules++;
	}
	atomic_store_explicit(&lm__faults_armed, 1, memory_order_release);
	pthread_mutex_unlock(&lock);
	return 0;
}

void lm_fault_disarm_all(void)
{
	pthread_mutex_lock(&lock);
	nrules = 0;
	atomic_store_explicit(&lm__faults_armed, 0, memory_order_release);
	pthread_mutex_unlock(&lock);
}

int lm_fault_init_from_env(void)
{
	const char *spec = getenv("LM_FAULTS");
	int rc;

	if (!spec || !*spec)
		return 0;
	rc = lm_fault_arm(spec);
	if (rc)
		lm_log_error("fault", "bad LM_FAULTS", "spec=\"%s\" err=%d", spec, rc);
	else
		lm_log_warn("fault", "fault points armed", "spec=\"%s\"", spec);
	return rc;
}

static struct rule *find(const char *name)
{
	for (int i = 0; i < nrules; i++)
		if (!strcmp(rules[i].name, name))
			return &rules[i];
	return NULL;
}

static int hit(const char *name, bool sleep_here, unsigned *delay_out);

int lm__fault_hit(const char *name)
{
	return hit(name, true, NULL);
}

int lm_fault_take(const char *name, unsigned *delay_ms)
{
	*delay_ms = 0;
	if (!atomic_load_explicit(&lm__faults_armed, memory_order_relaxed))
		return 0;
	return hit(name, false, delay_ms);
}

static int hit(const char *name, bool sleep_here, unsigned *delay_out)
{
	struct rule *r;
	int err = 0;
	unsigned delay = 0;
	bool kill_self = false;

	pthread_mutex_lock(&lock);
	r = find(name);
	if (r) {
		r->reached++;
		if (r->reached > r->after && (r->times == 0 || r->fired < r->times)) {
			r->fired++;
			err = r->err;
			delay = r->delay_ms;
			kill_self = r->kill;
		}
	}
	pthread_mutex_unlock(&lock);

	if (!r || (!err && !delay && !kill_self))
		return 0;
	lm_log_warn("fault", "fault point fired", "point=%s errno=%d delay_ms=%u kill=%d",
		    name, err, delay, kill_self);
	if (delay && !sleep_here) {
		*delay_out = delay;
		delay = 0;
	}
	if (delay) {
		struct timespec ts = { delay / 1000, (long)(delay % 1000) * 1000000L };
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
	}
	if (kill_self)
		raise(SIGKILL);
	return -err;
}

unsigned lm_fault_fired(const char *name)
{
	unsigned n = 0;
	pthread_mutex_lock(&lock);
	struct rule *r = find(name);
	if (r)
		n = r->fired;
	pthread_mutex_unlock(&lock);
	return n;
}

unsigned lm_fault_reached(const char *name)
{
	unsigned n = 0;
	pthread_mutex_lock(&lock);
	struct rule *r = find(name);
	if (r)
		n = r->reached;
	pthread_mutex_unlock(&lock);
	return n;
}
