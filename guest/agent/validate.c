/*
 * validate.c: request checks (see validate.h). Pure; any thread.
 */
#include "guest/agent/validate.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int bad(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static bool name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-' || c == '.';
}

static int check_name(const char *field, const char *s, size_t max, bool allow_empty,
		      char *why, size_t n)
{
	if (!s || !*s) {
		if (allow_empty)
			return 0;
		return bad(why, n, "%s: must not be empty", field);
	}
	size_t len = strnlen(s, max + 1);
	if (len > max)
		return bad(why, n, "%s: longer than %zu characters", field, max);
	for (size_t i = 0; i < len; i++)
		if (!name_char(s[i]))
			return bad(why, n, "%s: character %zu (0x%02x) is not one of [A-Za-z0-9_.-]",
				   field, i, (unsigned char)s[i]);
	if (!strcmp(s, ".") || !strcmp(s, ".."))
		return bad(why, n, "%s: \"%s\" is not a name", field, s);
	return 0;
}

int lm_agent_check_id(const char *field, const char *id, bool allow_empty, char *why, size_t n)
{
	return check_name(field, id, LM_AGENT_MAX_ID, allow_empty, why, n);
}

int lm_agent_check_path(const char *field, const char *path, char *why, size_t n)
{
	size_t len = strnlen(path, LM_AGENT_MAX_PATH + 1);
	if (len > LM_AGENT_MAX_PATH)
		return bad(why, n, "%s: longer than %u bytes", field, LM_AGENT_MAX_PATH);
	if (path[0] != '/')
		return bad(why, n, "%s: \"%.64s\" is not an absolute path", field, path);
	for (const char *p = path; *p;) {
		while (*p == '/')
			p++;
		const char *e = p;
		while (*e && *e != '/')
			e++;
		if (e - p == 2 && p[0] == '.' && p[1] == '.')
			return bad(why, n, "%s: \"%.64s\" escapes the container's root (\"..\")",
				   field, path);
		p = e;
	}
	return 0;
}

int lm_agent_check_process(const Lmshim__Agent__V1__Process *p, char *why, size_t n)
{
	size_t total = 0;
	if (!p)
		return bad(why, n, "process: missing");
	if (p->n_args == 0)
		return bad(why, n, "process.args: empty (args[0] is the program)");
	if (p->n_args > LM_AGENT_MAX_ARGS)
		return bad(why, n, "process.args: %zu entries, at most %u", p->n_args, LM_AGENT_MAX_ARGS);
	if (p->n_env > LM_AGENT_MAX_ENV)
		return bad(why, n, "process.env: %zu entries, at most %u", p->n_env, LM_AGENT_MAX_ENV);
	if (!p->args[0][0])
		return bad(why, n, "process.args[0]: empty");
	for (size_t i = 0; i < p->n_args; i++) {
		size_t l = strnlen(p->args[i], LM_AGENT_MAX_STR + 1);
		if (l > LM_AGENT_MAX_STR)
			return bad(why, n, "process.args[%zu]: longer than %u bytes", i, LM_AGENT_MAX_STR);
		total += l + 1;
	}
	if (strnlen(p->args[0], LM_AGENT_MAX_PATH + 1) > LM_AGENT_MAX_PATH)
		return bad(why, n, "process.args[0]: longer than %u bytes", LM_AGENT_MAX_PATH);
	for (size_t i = 0; i < p->n_env; i++) {
		size_t l = strnlen(p->env[i], LM_AGENT_MAX_STR + 1);
		if (l > LM_AGENT_MAX_STR)
			return bad(why, n, "process.env[%zu]: longer than %u bytes", i, LM_AGENT_MAX_STR);
		const char *eq = strchr(p->env[i], '=');
		if (!eq || eq == p->env[i])
			return bad(why, n, "process.env[%zu]: \"%.32s\" is not KEY=value", i, p->env[i]);
		total += l + 1;
	}
	if (total > LM_AGENT_MAX_ARGV_BYTES)
		return bad(why, n, "process: args and env take %zu bytes, at most %u", total,
			   LM_AGENT_MAX_ARGV_BYTES);
	if (p->cwd && p->cwd[0]) {
		int rc = lm_agent_check_path("process.cwd", p->cwd, why, n);
		if (rc)
			return rc;
	}
	if (p->console_size && (p->console_size->width > 0xffff || p->console_size->height > 0xffff))
		return bad(why, n, "process.console_size: %ux%u is larger than 65535x65535",
			   p->console_size->width, p->console_size->height);
	return 0;
}

static int check_fstype(const char *field, const char *t, bool layer, char *why, size_t n)
{
	if (!t || !*t)
		return 0;
	if (!strcmp(t, "ext4") || (layer && !strcmp(t, "erofs")))
		return 0;
	return bad(why, n, "%s: \"%.32s\" is not supported (%s)", field, t,
		   layer ? "erofs or ext4" : "ext4");
}

int lm_agent_check_create(const Lmshim__Agent__V1__CreateContainerRequest *r, char *why, size_t n)
{
	char f[64];
	int rc = lm_agent_check_id("container_id", r->container_id, false, why, n);
	if (rc)
		return rc;
	if (r->n_layers == 0)
		return bad(why, n, "layers: at least one layer is needed");
	if (r->n_layers > LM_AGENT_MAX_LAYERS)
		return bad(why, n, "layers: %zu, at most %u", r->n_layers, LM_AGENT_MAX_LAYERS);
	for (size_t i = 0; i < r->n_layers; i++) {
		snprintf(f, sizeof f, "layers[%zu].serial", i);
		if ((rc = check_name(f, r->layers[i]->serial, LM_AGENT_MAX_SERIAL, false, why, n)))
			return rc;
		snprintf(f, sizeof f, "layers[%zu].fstype", i);
		if ((rc = check_fstype(f, r->layers[i]->fstype, true, why, n)))
			return rc;
	}
	if (r->scratch) {
		if ((rc = check_name("scratch.serial", r->scratch->serial, LM_AGENT_MAX_SERIAL, true, why, n)))
			return rc;
		if ((rc = check_fstype("scratch.fstype", r->scratch->fstype, false, why, n)))
			return rc;
		if (r->scratch->tmpfs_bytes && r->scratch->tmpfs_bytes < (1u << 20))
			return bad(why, n, "scratch.tmpfs_bytes: %llu is less than 1 MiB",
				   (unsigned long long)r->scratch->tmpfs_bytes);
	}
	if (r->hostname && r->hostname[0] &&
	    (rc = check_name("hostname", r->hostname, LM_AGENT_MAX_HOSTNAME, false, why, n)))
		return rc;
	return lm_agent_check_process(r->process, why, n);
}

int lm_agent_check_signal(uint32_t sig, char *why, size_t n)
{
	if (sig < 1 || sig > 64)
		return bad(why, n, "signal: %u is not a signal number (1..64)", sig);
	return 0;
}

const struct lm_agent_method_desc lm_agent_methods[M_COUNT] = {
	[M_INFO] = {"Info", &lmshim__agent__v1__info_request__descriptor},
	[M_CREATE] = {"CreateContainer", &lmshim__agent__v1__create_container_request__descriptor},
	[M_START] = {"Start", &lmshim__agent__v1__process_request__descriptor},
	[M_EXEC] = {"Exec", &lmshim__agent__v1__exec_request__descriptor},
	[M_KILL] = {"Kill", &lmshim__agent__v1__kill_request__descriptor},
	[M_WAIT] = {"Wait", &lmshim__agent__v1__process_request__descriptor},
	[M_PS] = {"ListProcesses", &lmshim__agent__v1__container_request__descriptor},
	[M_STATS] = {"Stats", &lmshim__agent__v1__container_request__descriptor},
	[M_PAUSE] = {"Pause", &lmshim__agent__v1__container_request__descriptor},
	[M_RESUME] = {"Resume", &lmshim__agent__v1__container_request__descriptor},
	[M_RESIZE] = {"ResizePty", &lmshim__agent__v1__resize_pty_request__descriptor},
	[M_STDIN] = {"WriteStdin", &lmshim__agent__v1__write_stdin_request__descriptor},
	[M_CLOSE_STDIN] = {"CloseStdin", &lmshim__agent__v1__process_request__descriptor},
	[M_OUTPUT] = {"Output", &lmshim__agent__v1__output_request__descriptor},
	[M_ACK] = {"AckOutput", &lmshim__agent__v1__ack_output_request__descriptor},
	[M_DELETE_PROC] = {"DeleteProcess", &lmshim__agent__v1__process_request__descriptor},
	[M_DELETE_CONTAINER] = {"DeleteContainer", &lmshim__agent__v1__container_request__descriptor},
	[M_UPDATE] = {"Update", &lmshim__agent__v1__update_request__descriptor},
};

int lm_agent_check_request(enum lm_agent_method m, const ProtobufCMessage *msg, char *why, size_t n)
{
	int rc;
	switch (m) {
	case M_INFO:
		return 0;
	case M_CREATE:
		return lm_agent_check_create((const void *)msg, why, n);
	case M_START: case M_WAIT: case M_CLOSE_STDIN: case M_DELETE_PROC: {
		const Lmshim__Agent__V1__ProcessRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)))
			return rc;
		return lm_agent_check_id("exec_id", r->exec_id, true, why, n);
	}
	case M_EXEC: {
		const Lmshim__Agent__V1__ExecRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)) ||
		    (rc = lm_agent_check_id("exec_id", r->exec_id, false, why, n)))
			return rc;
		return lm_agent_check_process(r->process, why, n);
	}
	case M_KILL: {
		const Lmshim__Agent__V1__KillRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)) ||
		    (rc = lm_agent_check_id("exec_id", r->exec_id, true, why, n)))
			return rc;
		return lm_agent_check_signal(r->signal, why, n);
	}
	case M_PS: case M_STATS: case M_PAUSE: case M_RESUME: case M_DELETE_CONTAINER: {
		const Lmshim__Agent__V1__ContainerRequest *r = (const void *)msg;
		return lm_agent_check_id("container_id", r->container_id, false, why, n);
	}
	case M_UPDATE: {
		const Lmshim__Agent__V1__UpdateRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)))
			return rc;
		if (r->set_cpu_max && r->cpu_period_us && (r->cpu_period_us < 1000 || r->cpu_period_us > 1000000))
			return bad(why, n, "cpu_period_us: %llu is outside 1000..1000000",
				   (unsigned long long)r->cpu_period_us);
		if (r->set_cpu_max && r->cpu_quota_us && r->cpu_quota_us < 1000)
			return bad(why, n, "cpu_quota_us: %llu is below 1000 (0: no limit)",
				   (unsigned long long)r->cpu_quota_us);
		if (r->set_cpu_weight && (r->cpu_weight < 1 || r->cpu_weight > 10000))
			return bad(why, n, "cpu_weight: %u is outside 1..10000", r->cpu_weight);
		if (!r->set_memory && !r->set_pids && !r->set_cpu_max && !r->set_cpu_weight)
			return bad(why, n, "no limit to set (set_memory, set_pids, set_cpu_max, set_cpu_weight)");
		return 0;
	}
	case M_RESIZE: {
		const Lmshim__Agent__V1__ResizePtyRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)) ||
		    (rc = lm_agent_check_id("exec_id", r->exec_id, true, why, n)))
			return rc;
		if (r->width > 0xffff || r->height > 0xffff) {
			snprintf(why, n, "width/height: %ux%u is larger than 65535x65535", r->width, r->height);
			return -EINVAL;
		}
		return 0;
	}
	case M_STDIN: {
		const Lmshim__Agent__V1__WriteStdinRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)) ||
		    (rc = lm_agent_check_id("exec_id", r->exec_id, true, why, n)))
			return rc;
		if (r->data.len > LM_AGENT_MAX_STDIN) {
			snprintf(why, n, "data: %zu bytes, at most %u per call", r->data.len, LM_AGENT_MAX_STDIN);
			return -EINVAL;
		}
		return 0;
	}
	case M_OUTPUT: {
		const Lmshim__Agent__V1__OutputRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)))
			return rc;
		return lm_agent_check_id("exec_id", r->exec_id, true, why, n);
	}
	case M_ACK: {
		const Lmshim__Agent__V1__AckOutputRequest *r = (const void *)msg;
		if ((rc = lm_agent_check_id("container_id", r->container_id, false, why, n)))
			return rc;
		return lm_agent_check_id("exec_id", r->exec_id, true, why, n);
	}
	case M_COUNT:
		break;
	}
	snprintf(why, n, "unknown method");
	return -EINVAL;
}

