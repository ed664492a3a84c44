/*
 * e2e.c: helpers of the end-to-end tests (e2e.h): spawning lmshim and
 * lmctl, and the test's own ttrpc calls to the shims.
 */
#include "e2e.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "google/protobuf/duration.pb-c.h"
#include "migration.pb-c.h"
#include "task.pb-c.h"

#ifndef LM_E2E_LMSHIM
#error "LM_E2E_LMSHIM must name the lmshim binary"
#endif
#ifndef LM_E2E_LMCTL
#error "LM_E2E_LMCTL must name the lmctl binary"
#endif

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void e2e_tmpdir(char *out)
{
	snprintf(out, 256, "/tmp/lm-e2e-XXXXXX");
	if (!mkdtemp(out)) {
		perror("mkdtemp");
		abort();
	}
}

void e2e_rmdir(const char *dir)
{
	if (strncmp(dir, "/tmp/lm-e2e-", 12) != 0)
		return;
	const char *argv[] = { "/bin/rm", "-rf", dir, NULL };
	e2e_wait(e2e_spawn(argv, NULL), 10000);
}

static char qemu_mark[256];

static void qemu_mark_remove(void)
{
	e2e_rmdir(qemu_mark);
}

const char *e2e_qemu_mark(void)
{
	if (!qemu_mark[0]) {
		e2e_tmpdir(qemu_mark);
		setenv("TMPDIR", qemu_mark, 1);
		atexit(qemu_mark_remove);
	}
	return qemu_mark;
}

pid_t e2e_spawn(const char *const *argv, const char *out)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		if (out) {
			int fd = open(out, O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

int e2e_wait(pid_t pid, int timeout_ms)
{
	if (pid <= 0)
		return -1;
	int64_t end = now_ms() + timeout_ms;
	int st;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		if (r < 0)
			return -1;
		if (now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -1;
		}
		usleep(10000);
	}
}

char *e2e_slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return strdup("");
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
	size_t got = n > 0 ? fread(b, 1, (size_t)n, f) : 0;
	b[got] = 0;
	fclose(f);
	return b;
}

int e2e_shim_start(struct e2e_shim *s, const char *dir, const char *name, const char *netns,
		   const char *faults, const char *const *args)
{
	memset(s, 0, sizeof(*s));
	snprintf(s->name, sizeof(s->name), "%s", name);
	snprintf(s->sock, sizeof(s->sock), "%s/%s.sock", dir, name);
	snprintf(s->log, sizeof(s->log), "%s/%s.log", dir, name);
	char state[300];
	snprintf(state, sizeof(state), "%s/%s-state", dir, name);
	const char *argv[48];
	int k = 0;
	if (netns) {
		argv[k++] = "/usr/bin/env";
		argv[k++] = "ip";
		argv[k++] = "netns";
		argv[k++] = "exec";
		argv[k++] = netns;
	}
	argv[k++] = LM_E2E_LMSHIM;
	argv[k++] = "serve";
	argv[k++] = "--socket";
	argv[k++] = s->sock;
	argv[k++] = "--id";
	argv[k++] = name;
	argv[k++] = "--state-dir";
	argv[k++] = state;
	argv[k++] = "--workers";
	argv[k++] = "2";
	for (int i = 0; args && args[i] && k < 46; i++)
		argv[k++] = args[i];
	argv[k] = NULL;
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		if (faults)
			setenv("LM_FAULTS", faults, 1);
		else
			unsetenv("LM_FAULTS");
		int fd = open(s->log, O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	s->pid = pid;
	for (int64_t end = now_ms() + 30000; now_ms() < end;) {
		if (lm_rpc_client_connect(&s->c, s->sock) == 0)
			return 0;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			s->pid = 0;
			fprintf(stderr, "e2e: lmshim %s exited at start\n", name);
			e2e_shim_dump(s);
			return -1;
		}
		usleep(20000);
	}
	fprintf(stderr, "e2e: lmshim %s did not serve within 30 s\n", name);
	e2e_shim_dump(s);
	return -1;
}

int e2e_source_start(struct e2e_shim *s, const char *dir, const char *name, unsigned mb,
		     unsigned rate, const char *faults)
{
	char mbs[16], rates[16];
	snprintf(mbs, sizeof(mbs), "%u", mb);
	snprintf(rates, sizeof(rates), "%u", rate);
	const char *args[] = { "--vm-size-mb", mbs, "--workload-rate", rates,
			       "--containers", "pod1:sandbox,pod1:c1", "--insecure-migration", NULL };
	return e2e_shim_start(s, dir, name, NULL, faults, args);
}

int e2e_dest_start(struct e2e_shim *s, const char *dir, const char *name, const char *faults)
{
	const char *args[] = { "--idle", "--insecure-migration", NULL };
	return e2e_shim_start(s, dir, name, NULL, faults, args);
}

int e2e_shim_stop(struct e2e_shim *s)
{
	if (s->c) {
		lm_rpc_client_close(s->c);
		s->c = NULL;
	}
	if (s->pid <= 0)
		return 0;
	kill(s->pid, SIGTERM);
	int rc = e2e_wait(s->pid, 10000);
	s->pid = 0;
	return rc;
}

void e2e_shim_kill9(struct e2e_shim *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGKILL);
		e2e_wait(s->pid, 5000);
	}
	s->pid = 0;
	if (s->c) {
		lm_rpc_client_close(s->c);
		s->c = NULL;
	}
}

int e2e_qemu_procs(const char *image, pid_t parent, pid_t *one)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		char p[300], buf[4096];
		snprintf(p, sizeof(p), "/proc/%s/stat", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		size_t k = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[k] = 0;
		/* pid (comm) state ppid ... */
		char *rp = strrchr(buf, ')'), *lp = strchr(buf, '(');
		int ppid = 0;
		char stc;
		if (!rp || !lp || sscanf(rp + 1, " %c %d", &stc, &ppid) != 2 || stc == 'Z' ||
		    (parent && ppid != parent) || strncmp(lp + 1, "qemu-system", 11) != 0)
			continue;
		if (image) {
			snprintf(p, sizeof(p), "/proc/%s/cmdline", e->d_name);
			if (!(f = fopen(p, "r")))
				continue;
			k = fread(buf, 1, sizeof(buf) - 1, f);
			fclose(f);
			buf[k] = 0;
			for (size_t i = 0; i < k; i++)
				if (!buf[i])
					buf[i] = ' ';
			if (!strstr(buf, image))
				continue;
		}
		n++;
		if (one)
			*one = (pid_t)atoi(e->d_name);
	}
	if (d)
		closedir(d);
	return n;
}

void e2e_shim_dump(const struct e2e_shim *s)
{
	char *t = e2e_slurp(s->log);
	size_t n = strlen(t);
	fprintf(stderr, "---- %s (%s), last lines ----\n%s\n----\n", s->name, s->log,
		n > 6000 ? t + n - 6000 : t);
	free(t);
}

int e2e_call(struct e2e_shim *s, const char *service, const char *method,
	     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rdesc,
	     ProtobufCMessage **resp, char *msg, size_t msglen)
{
	if (resp)
		*resp = NULL;
	if (msg && msglen)
		msg[0] = 0;
	if (!s->c)
		return -ENOTCONN;
	size_t len = protobuf_c_message_get_packed_size(req);
	uint8_t *buf = malloc(len + 1);
	protobuf_c_message_pack(req, buf);
	struct lm_rpc_call_opts co = { .timeout_ns = 60ll * 1000000000, .md = s->md, .n_md = s->n_md };
	struct lm_rpc_result r = {0};
	int rc = lm_rpc_client_call(s->c, service, method, buf, len, &co, &r);
	free(buf);
	if (rc < 0)
		return rc;
	if (msg && msglen)
		snprintf(msg, msglen, "%s", r.message ? r.message : "");
	rc = r.code;
	if (rc == 0 && rdesc && resp) {
		*resp = protobuf_c_message_unpack(rdesc, NULL, r.len, r.payload);
		if (!*resp)
			rc = -EPROTO;
	}
	lm_rpc_result_free(&r);
	return rc;
}

int e2e_export(struct e2e_shim *s, const char *session)
{
	PrepareAndExportSandboxRequest req = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
	req.session_id = (char *)session;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "Migration", "PrepareAndExportSandbox", &req.base,
			  &prepare_and_export_sandbox_response__descriptor, &resp, NULL, 0);
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	return rc;
}

int e2e_mig_simple(struct e2e_shim *s, const char *method, const char *session)
{
	CancelRequest req = CANCEL_REQUEST__INIT; /* Cancel and Cleanup: field 1 only */
	req.session_id = (char *)session;
	return e2e_call(s, "Migration", method, &req.base, NULL, NULL, NULL, 0);
}

int e2e_finalize(struct e2e_shim *s, const char *session, int action)
{
	FinalizeSandboxRequest req = FINALIZE_SANDBOX_REQUEST__INIT;
	req.session_id = (char *)session;
	req.action = (FinalizeAction)action;
	return e2e_call(s, "Migration", "FinalizeSandbox", &req.base, NULL, NULL, NULL, 0);
}

static int send_socket(struct e2e_shim *s, const char *session, LinuxSocketDescriptor *d, char *msg,
		       size_t ml)
{
	uint8_t buf[512];
	size_t len = linux_socket_descriptor__pack(d, buf);
	CreateDuplicateSocketRequest req = CREATE_DUPLICATE_SOCKET_REQUEST__INIT;
	req.session_id = (char *)session;
	req.protocol_info.data = buf;
	req.protocol_info.len = len;
	return e2e_call(s, "Migration", "CreateDuplicateSocket", &req.base, NULL, NULL, msg, ml);
}

int e2e_socket_connect(struct e2e_shim *s, const char *session, const char *addr, char *msg, size_t ml)
{
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT;
	d.connect = (char *)addr;
	return send_socket(s, session, &d, msg, ml);
}

int e2e_socket_listen(struct e2e_shim *s, const char *session, const char *addr, char *msg, size_t ml)
{
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN;
	d.listen = (char *)addr;
	return send_socket(s, session, &d, msg, ml);
}

int e2e_transfer(struct e2e_shim *s, const char *session, int64_t timeout_ns, char *msg, size_t ml)
{
	TransferSandboxRequest req = TRANSFER_SANDBOX_REQUEST__INIT;
	Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
	req.session_id = (char *)session;
	if (timeout_ns) {
		d.seconds = timeout_ns / 1000000000;
		d.nanos = (int32_t)(timeout_ns % 1000000000);
		req.timeout = &d;
	}
	return e2e_call(s, "Migration", "TransferSandbox", &req.base, NULL, NULL, msg, ml);
}

int e2e_state(struct e2e_shim *s, const char *id, uint32_t *pid, int *status)
{
	Containerd__Task__V2__StateRequest req = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	req.id = (char *)id;
	ProtobufCMessage *resp = NULL;
	int rc = e2e_call(s, "containerd.task.v2.Task", "State", &req.base,
			  &containerd__task__v2__state_response__descriptor, &resp, NULL, 0);
	if (rc == 0) {
		Containerd__Task__V2__StateResponse *r = (void *)resp;
		if (pid)
			*pid = r->pid;
		if (status)
			*status = r->status;
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	return rc;
}

int e2e_digest(struct e2e_shim *s, char *digest, char *checksum)
{
	static const char q[] = "{\"PropertyTypes\":[\"MemoryDigest\"]}";
	struct lm_rpc_call_opts co = { .timeout_ns = 60ll * 1000000000 };
	struct lm_rpc_result r = {0};
	int rc = lm_rpc_client_call(s->c, "lmshim.v1.Inspect", "Properties", q, sizeof(q) - 1, &co, &r);
	if (rc < 0)
		return rc;
	rc = r.code;
	if (rc == 0) {
		json_t *j = json_loadb((const char *)r.payload, r.len, 0, NULL);
		const char *d = json_string_value(json_object_get(j, "MemoryDigest"));
		const char *c = json_string_value(json_object_get(json_object_get(j, "Statistics"), "Checksum"));
		/* a running guest has no stable digest: hcs leaves it out */
		snprintf(digest, 32, "%s", d ? d : "");
		snprintf(checksum, 32, "%s", c ? c : "");
		if (!c)
			rc = -EPROTO;
		json_decref(j);
	}
	lm_rpc_result_free(&r);
	return rc;
}

pid_t e2e_lmctl_spawn(const char *const *args, const char *out)
{
	const char *argv[64];
	int k = 0;
	argv[k++] = LM_E2E_LMCTL;
	for (int i = 0; args[i] && k < 63; i++)
		argv[k++] = args[i];
	argv[k] = NULL;
	return e2e_spawn(argv, out);
}

int e2e_lmctl(const char *const *args, const char *out, int timeout_ms)
{
	int rc = e2e_wait(e2e_lmctl_spawn(args, out), timeout_ms);
	if (out && strcmp(out, "/dev/null") != 0) {
		/* a sanitizer report is a failure whatever the exit status */
		char *t = e2e_slurp(out);
		if (strstr(t, "Sanitizer") || strstr(t, "runtime error:")) {
			fprintf(stderr, "e2e: lmctl reported a sanitizer error:\n%s\n", t);
			rc = -2;
		}
		free(t);
	}
	return rc;
}

int e2e_wait_phase(struct e2e_shim *s, const char *session, int phase, int timeout_ms, int *state_out)
{
	int got = -1;
	int64_t end = now_ms() + timeout_ms;
	/* the session may not exist yet: subscribe again until it does */
	while (got < 0 && now_ms() < end) {
		lm_rpc_stream_t *st = e2e_watch_open(s, session);
		if (!st)
			return -1;
		while (now_ms() < end) {
			uint8_t *m = NULL;
			size_t ml = 0;
			int rc = lm_rpc_stream_recv(st, &m, &ml, 100 * 1000000ll);
			if (rc == -ETIMEDOUT)
				continue;
			if (rc <= 0)
				break;
			NotificationsResponse *r = notifications_response__unpack(NULL, ml, m);
			free(m);
			if (r && r->notification && (int)r->notification->phase >= phase) {
				got = r->notification->phase;
				if (state_out)
					*state_out = r->notification->state;
			}
			if (r)
				notifications_response__free_unpacked(r, NULL);
			if (got >= 0)
				break;
		}
		lm_rpc_stream_close(st);
		if (got < 0)
			usleep(20000);
	}
	return got;
}

lm_rpc_stream_t *e2e_watch_open(struct e2e_shim *s, const char *session)
{
	NotificationsRequest req = NOTIFICATIONS_REQUEST__INIT;
	req.session_id = (char *)session;
	uint8_t buf[256];
	size_t len = notifications_request__pack(&req, buf);
	lm_rpc_stream_t *st = NULL;
	if (lm_rpc_client_stream_open(s->c, "Migration", "Notifications", buf, len, NULL, &st) < 0)
		return NULL;
	return st;
}

int e2e_watch_until(lm_rpc_stream_t *st, int phase, int timeout_ms, int *state_out)
{
	int64_t end = now_ms() + timeout_ms;
	while (now_ms() < end) {
		uint8_t *m = NULL;
		size_t ml = 0;
		int rc = lm_rpc_stream_recv(st, &m, &ml, 100 * 1000000ll);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc <= 0)
			return 0;
		NotificationsResponse *r = notifications_response__unpack(NULL, ml, m);
		free(m);
		int hit = 0;
		if (r && r->notification && (int)r->notification->phase == phase) {
			hit = 1;
			if (state_out)
				*state_out = r->notification->state;
		}
		if (r)
			notifications_response__free_unpacked(r, NULL);
		if (hit)
			return 1;
	}
	return -1;
}

/* The lmshim daemon serving `sock` (not a `start` invocation), found by
 * its command line; *count (may be NULL) gets how many there are. */
pid_t e2e_find_daemon(const char *sock, int *count)
{
	int dummy;
	if (!count)
		count = &dummy;
	*count = 0;
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;
	while (d && (e = readdir(d))) {
		char path[300], buf[4096];
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		FILE *fp = fopen(path, "rb");
		if (!fp)
			continue;
		size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
		fclose(fp);
		for (size_t i = 0; i < n; i++)
			if (!buf[i])
				buf[i] = ' ';
		buf[n] = 0;
		if (strstr(buf, "lmshim") && strstr(buf, sock) && !strstr(buf, " start")) {
			found = (pid_t)atoi(e->d_name);
			(*count)++;
		}
	}
	if (d)
		closedir(d);
	return found;
}
