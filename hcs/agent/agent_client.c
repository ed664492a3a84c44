/*
 * agent_client.c: the host's client of the guest agent (see
 * agent_client.h for the contract and DESIGN).
 *
 * Lock order: a->mu (the handle's) before p->mu (a watch's): a pump
 * checks its stop flag while it waits for a connection; nothing takes
 * a->mu while holding p->mu. Nothing blocks on I/O while holding either.
 */
#include "hcs/agent/agent_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.pb-c.h"
#include "guest/agent/wire.h"
#include "rpc/client.h"
#include "util/clock.h"
#include "util/log.h"

#define MOD "agent-client"
#define ACK_EVERY (64u << 10)          /* acknowledge output this often */
#define CALL_TIMEOUT_NS 10000000000ll  /* internal calls (acks) */
#define HANDOVER_ACK_NS 120000000000ll /* a handover watch's ack: outlasts
					  any blackout and its rollback */

struct conn {
	lm_rpc_client_t *rpc;
	unsigned users;               /* references held by calls and pumps */
	uint64_t gen;                 /* which connection this is */
};

struct lm_agent {
	pthread_mutex_t mu;
	pthread_cond_t cv;            /* a connection came, or users dropped */
	struct conn *cur;             /* NULL while disconnected */
	struct conn *old;             /* being retired: waits for users == 0 */
	uint64_t gen;                 /* connections made so far */
	bool closing;
	bool draining;                /* lm_agent_disconnect_quiet: no new handover ack */
	unsigned acks;                /* handover acks in flight */
	char boot_id[40];
};

struct lm_agent_proc {
	lm_agent_t *a;
	char id[65], exec_id[65];
	struct lm_agent_io_cbs cbs;
	pthread_t thread;
	pthread_mutex_t mu;           /* guards the fields below */
	pthread_cond_t cv;
	bool stop;                    /* unwatch asked */
	bool done;                    /* exit delivered and both outputs ended */
	bool gone;                    /* the agent forgot the process */
	bool exit_delivered;
	uint64_t next[2];             /* stdout/stderr bytes delivered */
	bool eof[2];
	uint64_t stdin_off;           /* stdin bytes the agent has taken */
	uint64_t stdin_room;          /* what it said it would take, UINT64_MAX: unknown */
	uint64_t oom_seen;            /* the container's OOM kills counted so far */
	bool oom_based;               /* oom_seen holds the agent's first figure
	                                 (what happened before this watch, on this
	                                 host or the previous one, is not told) */
};

static __thread int last_code;
static __thread char last_msg[512];

int lm_agent_last_error(const char **message)
{
	if (message)
		*message = last_msg;
	return last_code;
}

static int code_errno(int code)
{
	switch (code) {
	case LM_RPC_OK: return 0;
	case LM_RPC_NOT_FOUND: return -ENOENT;
	case LM_RPC_ALREADY_EXISTS: return -EEXIST;
	case LM_RPC_INVALID_ARGUMENT: return -EINVAL;
	case LM_RPC_FAILED_PRECONDITION: return -EBUSY;
	case LM_RPC_OUT_OF_RANGE: return -ERANGE;
	case LM_RPC_DEADLINE_EXCEEDED: return -ETIMEDOUT;
	case LM_RPC_RESOURCE_EXHAUSTED: return -ENOSPC;
	case LM_RPC_CANCELED: return -ECANCELED;
	case LM_RPC_UNIMPLEMENTED: return -ENOSYS;
	default: return -EIO;
	}
}

/* ---- connections ------------------------------------------------------ */

static struct conn *conn_get(lm_agent_t *a)
{
	pthread_mutex_lock(&a->mu);
	struct conn *c = a->cur;
	if (c)
		c->users++;
	pthread_mutex_unlock(&a->mu);
	return c;
}

static void conn_put(lm_agent_t *a, struct conn *c)
{
	pthread_mutex_lock(&a->mu);
	if (--c->users == 0)
		pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

/* Takes the current connection away and closes it once unused. */
static void retire(lm_agent_t *a)
{
	pthread_mutex_lock(&a->mu);
	struct conn *c = a->cur;
	a->cur = NULL;
	if (!c) {
		pthread_mutex_unlock(&a->mu);
		return;
	}
	lm_rpc_client_shutdown(c->rpc);         /* calls in flight: -EPIPE now */
	while (c->users)
		pthread_cond_wait(&a->cv, &a->mu);
	pthread_mutex_unlock(&a->mu);
	lm_rpc_client_close(c->rpc);
	free(c);
}

static int dial(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000l};
	nanosleep(&ts, NULL);
}

/* Waits for ACK(nonce) until `until`; consumes the bytes up to its end and
 * no further. 0, -ETIMEDOUT, -EPIPE. */
static int await_ack(int fd, const uint8_t nonce[8], uint64_t until)
{
	uint8_t want[16], buf[4096];
	memcpy(want, LM_AGENT_ACK_MAGIC, 8);
	memcpy(want + 8, nonce, 8);
	for (;;) {
		uint64_t now = lm_now_ns();
		if (now >= until)
			return -ETIMEDOUT;
		struct pollfd p = {fd, POLLIN, 0};
		int n = poll(&p, 1, (int)((until - now) / 1000000 + 1));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			continue;
		ssize_t got = recv(fd, buf, sizeof buf, MSG_PEEK);
		if (got <= 0)
			return -EPIPE;
		/* the ACK, or what precedes a possible ACK start, can go */
		size_t drop = (size_t)got;
		for (size_t i = 0; i < (size_t)got; i++) {
			if (buf[i] != 0xff)
				continue;
			size_t have = (size_t)got - i;
			if (have < LM_AGENT_ACK_LEN) {
				if (!memcmp(buf + i, want, have < 16 ? have : 16)) {
					drop = i;           /* maybe the ACK: wait for the rest */
					break;
				}
				continue;
			}
			if (!memcmp(buf + i, want, 16)) {
				size_t end = i + LM_AGENT_ACK_LEN;
				while (end) {
					ssize_t r = recv(fd, buf, end, 0);
					if (r <= 0)
						return -EPIPE;
					end -= (size_t)r;
				}
				return 0;
			}
		}
		for (size_t left = drop; left;) {
			ssize_t r = recv(fd, buf, left, 0);
			if (r <= 0)
				return -EPIPE;
			left -= (size_t)r;
		}
		if (drop == 0)
			sleep_ms(2);                    /* a partial ACK: let the rest come */
	}
}

/* Dials and handshakes within the deadline; the connected fd or -errno. */
static int open_link(const char *path, uint64_t until)
{
	int last = -ETIMEDOUT;
	while (lm_now_ns() < until) {
		int fd = dial(path);
		if (fd < 0) {
			last = fd;
			sleep_ms(10);                   /* QEMU not there yet */
			continue;
		}
		/* HELLOs on this socket: the guest drops what arrives before the
		 * agent opened the port, so send again; after a few tries a new
		 * socket (the guest sees the host leave, and resets) */
		uint64_t step = 150000000ull;
		for (int tries = 0; tries < 4 && lm_now_ns() < until; tries++) {
			uint8_t hello[LM_AGENT_HELLO_LEN];
			memcpy(hello, LM_AGENT_HELLO_MAGIC, 8);
			if (getrandom(hello + 8, 8, 0) != 8) {
				uint64_t t = lm_now_ns();
				memcpy(hello + 8, &t, 8);
			}
			if (send(fd, hello, sizeof hello, MSG_NOSIGNAL) != (ssize_t)sizeof hello) {
				last = -EPIPE;
				break;
			}
			uint64_t t = lm_now_ns() + step;
			int rc = await_ack(fd, hello + 8, t < until ? t : until);
			if (rc == 0)
				return fd;
			last = rc;
			if (rc != -ETIMEDOUT)
				break;
			if (step < 1000000000ull)
				step *= 2;
		}
		close(fd);
		sleep_ms(50);
	}
	return last;
}

static int do_connect(lm_agent_t *a, const char *path, int64_t timeout_ns, bool check_boot)
{
	uint64_t until = lm_now_ns() + (uint64_t)(timeout_ns > 0 ? timeout_ns : 30000000000ll);
	int fd = open_link(path, until);
	if (fd < 0)
		return fd;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	int rc = lm_rpc_client_from_fd(&c->rpc, fd);
	if (rc < 0) {
		free(c);
		return rc;
	}
	/* who is there? */
	struct lm_rpc_call_opts o = {.timeout_ns = (int64_t)(until > lm_now_ns() ? until - lm_now_ns() : 1)};
	struct lm_rpc_result res = {0};
	Lmshim__Agent__V1__InfoRequest rq = LMSHIM__AGENT__V1__INFO_REQUEST__INIT;
	uint8_t b[16];
	size_t n = lmshim__agent__v1__info_request__pack(&rq, b);
	rc = lm_rpc_client_call(c->rpc, LM_AGENT_SERVICE, "Info", b, n, &o, &res);
	Lmshim__Agent__V1__InfoResponse *info = NULL;
	if (rc == 0 && res.code == 0)
		info = lmshim__agent__v1__info_response__unpack(NULL, res.len, res.payload);
	if (!info) {
		rc = rc < 0 ? rc : res.code ? code_errno(res.code) : -EPROTO;
		lm_rpc_result_free(&res);
		lm_rpc_client_close(c->rpc);
		free(c);
		return rc;
	}
	lm_rpc_result_free(&res);
	if (check_boot && strcmp(info->boot_id, a->boot_id)) {
		lm_log_warn(MOD, "another guest answered", "want_boot_id=%s boot_id=%s", a->boot_id,
			    info->boot_id);
		lmshim__agent__v1__info_response__free_unpacked(info, NULL);
		lm_rpc_client_close(c->rpc);
		free(c);
		return -ESTALE;
	}
	pthread_mutex_lock(&a->mu);
	snprintf(a->boot_id, sizeof a->boot_id, "%s", info->boot_id);
	c->gen = ++a->gen;
	a->cur = c;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	lmshim__agent__v1__info_response__free_unpacked(info, NULL);
	return 0;
}

int lm_agent_connect(lm_agent_t **out, const char *path, int64_t timeout_ns)
{
	lm_agent_t *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	int rc = do_connect(a, path, timeout_ns, false);
	if (rc < 0) {
		pthread_mutex_destroy(&a->mu);
		pthread_cond_destroy(&a->cv);
		free(a);
		return rc;
	}
	*out = a;
	return 0;
}

int lm_agent_reconnect(lm_agent_t *a, const char *path, int64_t timeout_ns)
{
	retire(a);
	return do_connect(a, path, timeout_ns, true);
}

void lm_agent_disconnect(lm_agent_t *a)
{
	retire(a);
}

int lm_agent_disconnect_quiet(lm_agent_t *a, int64_t timeout_ns)
{
	struct timespec ts = lm_timespec_in(CLOCK_REALTIME, timeout_ns);
	int rc = 0;
	pthread_mutex_lock(&a->mu);
	a->draining = true;
	while (a->acks && rc == 0)
		if (pthread_cond_timedwait(&a->cv, &a->mu, &ts) == ETIMEDOUT)
			rc = -ETIMEDOUT;
	pthread_mutex_unlock(&a->mu);
	retire(a);
	pthread_mutex_lock(&a->mu);
	a->draining = false;
	pthread_mutex_unlock(&a->mu);
	return rc;
}

void lm_agent_close(lm_agent_t *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	a->closing = true;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	retire(a);
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->cv);
	free(a);
}

const char *lm_agent_boot_id(const lm_agent_t *a)
{
	return a->boot_id;
}

/* ---- calls ------------------------------------------------------------ */

/* One unary call on the current connection: packs req, unpacks the answer
 * into *resp (if rdesc). */
static int call(lm_agent_t *a, const char *method, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *rdesc, ProtobufCMessage **resp, int64_t timeout_ns)
{
	uint8_t sbuf[1024];
	size_t n = protobuf_c_message_get_packed_size(req);
	uint8_t *b = n <= sizeof sbuf ? sbuf : malloc(n);
	if (!b)
		return -ENOMEM;
	protobuf_c_message_pack(req, b);
	last_code = 0;
	last_msg[0] = 0;
	struct conn *c = conn_get(a);
	if (!c) {
		if (b != sbuf)
			free(b);
		return -ENOTCONN;
	}
	struct lm_rpc_call_opts o = {.timeout_ns = timeout_ns};
	struct lm_rpc_result res = {0};
	int rc = lm_rpc_client_call(c->rpc, LM_AGENT_SERVICE, method, b, n, &o, &res);
	conn_put(a, c);
	if (b != sbuf)
		free(b);
	if (rc < 0)
		return rc;
	if (res.code != 0) {
		last_code = res.code;
		snprintf(last_msg, sizeof last_msg, "%s", res.message ? res.message : "");
		rc = code_errno(res.code);
	} else if (rdesc) {
		*resp = protobuf_c_message_unpack(rdesc, NULL, res.len, res.payload);
		if (!*resp)
			rc = -EPROTO;
	}
	lm_rpc_result_free(&res);
	return rc;
}

int lm_agent_call_raw(lm_agent_t *a, const char *method, const void *req, size_t len, int *code,
		      int64_t timeout_ns)
{
	struct conn *c = conn_get(a);
	if (!c)
		return -ENOTCONN;
	struct lm_rpc_call_opts o = {.timeout_ns = timeout_ns};
	struct lm_rpc_result res = {0};
	int rc = lm_rpc_client_call(c->rpc, LM_AGENT_SERVICE, method, req, len, &o, &res);
	conn_put(a, c);
	if (rc < 0)
		return rc;
	*code = res.code;
	last_code = res.code;
	snprintf(last_msg, sizeof last_msg, "%s", res.message ? res.message : "");
	lm_rpc_result_free(&res);
	return 0;
}

#define FREE_MSG(m) do { if (m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL); } while (0)

int lm_agent_info(lm_agent_t *a, struct lm_agent_info *out, int64_t timeout_ns)
{
	Lmshim__Agent__V1__InfoRequest rq = LMSHIM__AGENT__V1__INFO_REQUEST__INIT;
	Lmshim__Agent__V1__InfoResponse *r = NULL;
	int rc = call(a, "Info", &rq.base, &lmshim__agent__v1__info_response__descriptor,
		      (ProtobufCMessage **)&r, timeout_ns);
	if (rc < 0)
		return rc;
	memset(out, 0, sizeof *out);
	snprintf(out->version, sizeof out->version, "%s", r->agent_version);
	out->protocol = r->protocol_version;
	snprintf(out->boot_id, sizeof out->boot_id, "%s", r->boot_id);
	out->uptime_ns = r->uptime_ns;
	out->containers = r->containers;
	snprintf(out->kernel, sizeof out->kernel, "%s", r->kernel_release);
	FREE_MSG(r);
	return 0;
}

/* Fills a Process message from a spec (pointers into the spec). */
static void fill_process(Lmshim__Agent__V1__Process *p, Lmshim__Agent__V1__ConsoleSize *cs,
			 const struct lm_agent_process_spec *s)
{
	lmshim__agent__v1__process__init(p);
	lmshim__agent__v1__console_size__init(cs);
	p->n_args = s->n_args;
	p->args = (char **)s->args;
	p->n_env = s->n_env;
	p->env = (char **)s->env;
	p->cwd = (char *)(s->cwd ? s->cwd : "");
	p->terminal = s->terminal;
	p->open_stdin = s->open_stdin;
	p->uid = s->uid;
	p->gid = s->gid;
	if (s->width || s->height) {
		cs->width = s->width;
		cs->height = s->height;
		p->console_size = cs;
	}
}

int lm_agent_create(lm_agent_t *a, const struct lm_agent_container_spec *spec, uint32_t *pid,
		    int64_t timeout_ns)
{
	Lmshim__Agent__V1__CreateContainerRequest rq = LMSHIM__AGENT__V1__CREATE_CONTAINER_REQUEST__INIT;
	Lmshim__Agent__V1__Scratch sc = LMSHIM__AGENT__V1__SCRATCH__INIT;
	Lmshim__Agent__V1__Resources res = LMSHIM__AGENT__V1__RESOURCES__INIT;
	Lmshim__Agent__V1__Process proc;
	Lmshim__Agent__V1__ConsoleSize cs;
	Lmshim__Agent__V1__Layer *layers = calloc(spec->n_layers + 1, sizeof(*layers));
	Lmshim__Agent__V1__Layer **lp = calloc(spec->n_layers + 1, sizeof(*lp));
	if (!layers || !lp) {
		free(layers);
		free(lp);
		return -ENOMEM;
	}
	for (size_t i = 0; i < spec->n_layers; i++) {
		lmshim__agent__v1__layer__init(&layers[i]);
		layers[i].serial = (char *)spec->layers[i].serial;
		layers[i].fstype = (char *)(spec->layers[i].fstype ? spec->layers[i].fstype : "");
		lp[i] = &layers[i];
	}
	rq.container_id = (char *)spec->id;
	rq.n_layers = spec->n_layers;
	rq.layers = lp;
	sc.serial = (char *)(spec->scratch_serial ? spec->scratch_serial : "");
	sc.fstype = (char *)(spec->scratch_fstype ? spec->scratch_fstype : "");
	sc.tmpfs_bytes = spec->scratch_tmpfs_bytes;
	rq.scratch = &sc;
	fill_process(&proc, &cs, &spec->process);
	rq.process = &proc;
	rq.hostname = (char *)(spec->hostname ? spec->hostname : "");
	res.memory_max = spec->memory_max;
	res.pids_max = spec->pids_max;
	rq.resources = &res;
	Lmshim__Agent__V1__CreateContainerResponse *r = NULL;
	int rc = call(a, "CreateContainer", &rq.base,
		      &lmshim__agent__v1__create_container_response__descriptor,
		      (ProtobufCMessage **)&r, timeout_ns);
	free(layers);
	free(lp);
	if (rc == 0 && pid)
		*pid = r->pid;
	FREE_MSG(r);
	return rc;
}

int lm_agent_start(lm_agent_t *a, const char *id, uint32_t *pid, int64_t timeout_ns)
{
	Lmshim__Agent__V1__ProcessRequest rq = LMSHIM__AGENT__V1__PROCESS_REQUEST__INIT;
	rq.container_id = (char *)id;
	rq.exec_id = (char *)"";
	Lmshim__Agent__V1__StartResponse *r = NULL;
	int rc = call(a, "Start", &rq.base, &lmshim__agent__v1__start_response__descriptor,
		      (ProtobufCMessage **)&r, timeout_ns);
	if (rc == 0 && pid)
		*pid = r->pid;
	FREE_MSG(r);
	return rc;
}

int lm_agent_exec(lm_agent_t *a, const char *id, const char *exec_id,
		  const struct lm_agent_process_spec *spec, uint32_t *pid, int64_t timeout_ns)
{
	Lmshim__Agent__V1__ExecRequest rq = LMSHIM__AGENT__V1__EXEC_REQUEST__INIT;
	Lmshim__Agent__V1__Process proc;
	Lmshim__Agent__V1__ConsoleSize cs;
	fill_process(&proc, &cs, spec);
	rq.container_id = (char *)id;
	rq.exec_id = (char *)exec_id;
	rq.process = &proc;
	Lmshim__Agent__V1__StartResponse *r = NULL;
	int rc = call(a, "Exec", &rq.base, &lmshim__agent__v1__start_response__descriptor,
		      (ProtobufCMessage **)&r, timeout_ns);
	if (rc == 0 && pid)
		*pid = r->pid;
	FREE_MSG(r);
	return rc;
}

int lm_agent_kill(lm_agent_t *a, const char *id, const char *exec_id, int sig, bool all,
		  int64_t timeout_ns)
{
	Lmshim__Agent__V1__KillRequest rq = LMSHIM__AGENT__V1__KILL_REQUEST__INIT;
	rq.container_id = (char *)id;
	rq.exec_id = (char *)(exec_id ? exec_id : "");
	rq.signal = (uint32_t)sig;
	rq.all = all;
	return call(a, "Kill", &rq.base, NULL, NULL, timeout_ns);
}

static int proc_call_exit(lm_agent_t *a, const char *method, const char *id, const char *exec_id,
			  struct lm_agent_exit *out, int64_t timeout_ns)
{
	Lmshim__Agent__V1__ProcessRequest rq = LMSHIM__AGENT__V1__PROCESS_REQUEST__INIT;
	rq.container_id = (char *)id;
	rq.exec_id = (char *)(exec_id ? exec_id : "");
	Lmshim__Agent__V1__WaitResponse *r = NULL;
	int rc = call(a, method, &rq.base, &lmshim__agent__v1__wait_response__descriptor,
		      (ProtobufCMessage **)&r, timeout_ns);
	if (rc == 0 && out) {
		out->status = r->exit_status;
		out->exited_at_ns = r->exited_at_ns;
		out->pid = r->pid;
	}
	FREE_MSG(r);
	return rc;
}

int lm_agent_wait(lm_agent_t *a, const char *id, const char *exec_id, struct lm_agent_exit *out,
		  int64_t timeout_ns)
{
	return proc_call_exit(a, "Wait", id, exec_id, out, timeout_ns);
}

int lm_agent_delete_process(lm_agent_t *a, const char *id, const char *exec_id,
			    struct lm_agent_exit *out, int64_t timeout_ns)
{
	return proc_call_exit(a, "DeleteProcess", id, exec_id, out, timeout_ns);
}

int lm_agent_close_stdin(lm_agent_t *a, const char *id, const char *exec_id, int64_t timeout_ns)
{
	Lmshim__Agent__V1__ProcessRequest rq = LMSHIM__AGENT__V1__PROCESS_REQUEST__INIT;
	rq.container_id = (char *)id;
	rq.exec_id = (char *)(exec_id ? exec_id : "");
	return call(a, "CloseStdin", &rq.base, NULL, NULL, timeout_ns);
}

static int container_call(lm_agent_t *a, const char *method, const char *id,
			  const ProtobufCMessageDescriptor *rdesc, ProtobufCMessage **resp,
			  int64_t timeout_ns)
{
	Lmshim__Agent__V1__ContainerRequest rq = LMSHIM__AGENT__V1__CONTAINER_REQUEST__INIT;
	rq.container_id = (char *)id;
	return call(a, method, &rq.base, rdesc, resp, timeout_ns);
}

int lm_agent_delete_container(lm_agent_t *a, const char *id, struct lm_agent_exit *out,
			      int64_t timeout_ns)
{
	Lmshim__Agent__V1__WaitResponse *r = NULL;
	int rc = container_call(a, "DeleteContainer", id, &lmshim__agent__v1__wait_response__descriptor,
				(ProtobufCMessage **)&r, timeout_ns);
	if (rc == 0 && out) {
		out->status = r->exit_status;
		out->exited_at_ns = r->exited_at_ns;
		out->pid = r->pid;
	}
	FREE_MSG(r);
	return rc;
}

int lm_agent_ps(lm_agent_t *a, const char *id, struct lm_agent_ps_entry **out, size_t *n,
		int64_t timeout_ns)
{
	Lmshim__Agent__V1__ListProcessesResponse *r = NULL;
	int rc = container_call(a, "ListProcesses", id,
				&lmshim__agent__v1__list_processes_response__descriptor,
				(ProtobufCMessage **)&r, timeout_ns);
	if (rc < 0)
		return rc;
	*out = calloc(r->n_processes + 1, sizeof(**out));
	if (!*out) {
		FREE_MSG(r);
		return -ENOMEM;
	}
	for (size_t i = 0; i < r->n_processes; i++) {
		(*out)[i].pid = r->processes[i]->pid;
		snprintf((*out)[i].exec_id, sizeof (*out)[i].exec_id, "%s", r->processes[i]->exec_id);
		(*out)[i].is_init = r->processes[i]->is_init;
	}
	*n = r->n_processes;
	FREE_MSG(r);
	return 0;
}

int lm_agent_stats(lm_agent_t *a, const char *id, struct lm_agent_stats *out, int64_t timeout_ns)
{
	Lmshim__Agent__V1__StatsResponse *r = NULL;
	int rc = container_call(a, "Stats", id, &lmshim__agent__v1__stats_response__descriptor,
				(ProtobufCMessage **)&r, timeout_ns);
	if (rc < 0)
		return rc;
	out->cpu_usage_usec = r->cpu_usage_usec;
	out->cpu_user_usec = r->cpu_user_usec;
	out->cpu_system_usec = r->cpu_system_usec;
	out->memory_current = r->memory_current;
	out->memory_max = r->memory_max;
	out->pids_current = r->pids_current;
	out->pids_max = r->pids_max;
	out->frozen = r->frozen;
	out->cpu_nr_periods = r->cpu_nr_periods;
	out->cpu_nr_throttled = r->cpu_nr_throttled;
	out->cpu_throttled_usec = r->cpu_throttled_usec;
	out->cpu_quota_us = r->cpu_quota_us;
	out->cpu_period_us = r->cpu_period_us;
	out->cpu_weight = r->cpu_weight;
	FREE_MSG(r);
	return 0;
}

int lm_agent_pause(lm_agent_t *a, const char *id, int64_t timeout_ns)
{
	return container_call(a, "Pause", id, NULL, NULL, timeout_ns);
}

int lm_agent_resume(lm_agent_t *a, const char *id, int64_t timeout_ns)
{
	return container_call(a, "Resume", id, NULL, NULL, timeout_ns);
}

int lm_agent_update(lm_agent_t *a, const char *id, const struct lm_agent_update *u, int64_t timeout_ns)
{
	Lmshim__Agent__V1__UpdateRequest rq = LMSHIM__AGENT__V1__UPDATE_REQUEST__INIT;
	rq.container_id = (char *)id;
	rq.set_memory = u->set_memory;
	rq.memory_max = u->memory_max;
	rq.set_pids = u->set_pids;
	rq.pids_max = u->pids_max;
	rq.set_cpu_max = u->set_cpu_max;
	rq.cpu_quota_us = u->cpu_quota_us;
	rq.cpu_period_us = u->cpu_period_us;
	rq.set_cpu_weight = u->set_cpu_weight;
	rq.cpu_weight = u->cpu_weight;
	return call(a, "Update", &rq.base, NULL, NULL, timeout_ns);
}

int lm_agent_resize(lm_agent_t *a, const char *id, const char *exec_id, uint16_t width,
		    uint16_t height, int64_t timeout_ns)
{
	Lmshim__Agent__V1__ResizePtyRequest rq = LMSHIM__AGENT__V1__RESIZE_PTY_REQUEST__INIT;
	rq.container_id = (char *)id;
	rq.exec_id = (char *)(exec_id ? exec_id : "");
	rq.width = width;
	rq.height = height;
	return call(a, "ResizePty", &rq.base, NULL, NULL, timeout_ns);
}

/* ---- watched processes ------------------------------------------------ */

static void deliver_output(lm_agent_proc_t *p, int fd, const uint8_t *d, size_t n)
{
	if (p->cbs.output) {
		p->cbs.output(p->cbs.arg, fd, d, n);
		return;
	}
	int to = fd == 1 ? p->cbs.out_fd : p->cbs.err_fd;
	while (to >= 0 && n) {
		ssize_t w = write(to, d, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		d += w;
		n -= (size_t)w;
	}
}

static int ack_within(lm_agent_proc_t *p, struct conn *c, uint64_t out, uint64_t err,
		      int64_t timeout_ns);

static int ack(lm_agent_proc_t *p, struct conn *c, uint64_t out, uint64_t err)
{
	return ack_within(p, c, out, err, CALL_TIMEOUT_NS);
}

static int ack_within(lm_agent_proc_t *p, struct conn *c, uint64_t out, uint64_t err,
		      int64_t timeout_ns)
{
	Lmshim__Agent__V1__AckOutputRequest rq = LMSHIM__AGENT__V1__ACK_OUTPUT_REQUEST__INIT;
	uint8_t b[256];
	rq.container_id = p->id;
	rq.exec_id = p->exec_id;
	rq.stdout_offset = out;
	rq.stderr_offset = err;
	size_t n = lmshim__agent__v1__ack_output_request__pack(&rq, b);
	struct lm_rpc_call_opts o = {.timeout_ns = timeout_ns};
	struct lm_rpc_result res = {0};
	int rc = lm_rpc_client_call(c->rpc, LM_AGENT_SERVICE, "AckOutput", b, n, &o, &res);
	if (rc == 0 && res.code)
		rc = code_errno(res.code);
	lm_rpc_result_free(&res);
	return rc;
}

/* Handles one event: 0, or the error of a handover watch's
 * acknowledgement (nothing was delivered then). */
static int on_event(lm_agent_proc_t *p, struct conn *c, const Lmshim__Agent__V1__OutputEvent *ev)
{
	int i = ev->fd == LMSHIM__AGENT__V1__FD__FD_STDERR ? 1 : 0;
	if (ev->data.len) {
		uint64_t off = ev->offset, end = off + ev->data.len;
		if (off > p->next[i] && p->cbs.handover && !p->next[i]) {
			/* this watch delivered nothing of it yet and the
			 * stream starts at the acknowledged output: what is
			 * before went out through an earlier host */
			lm_log_info(MOD, "output resumes", "id=%s exec=%s fd=%d at=%llu", p->id,
				    p->exec_id, i + 1, (unsigned long long)off);
			pthread_mutex_lock(&p->mu);
			p->next[i] = off;
			pthread_mutex_unlock(&p->mu);
		} else if (off > p->next[i]) {
			lm_log_error(MOD, "output gap", "id=%s exec=%s fd=%d have=%llu got=%llu", p->id,
				     p->exec_id, i + 1, (unsigned long long)p->next[i],
				     (unsigned long long)off);
		}
		if (end > p->next[i] && p->cbs.handover) {
			uint64_t o[2] = {p->next[0], p->next[1]};
			o[i] = end;
			/* an answer that does not come means the guest stopped
			 * (a migration's blackout): it comes after a rollback,
			 * or the connection breaks when this host lets go */
			lm_agent_t *a = p->a;
			pthread_mutex_lock(&a->mu);
			bool draining = a->draining;
			if (!draining)
				a->acks++;
			pthread_mutex_unlock(&a->mu);
			if (draining)
				return -EAGAIN;   /* not counted, not delivered: the next host's */
			int rc = ack_within(p, c, o[0], o[1], HANDOVER_ACK_NS);
			pthread_mutex_lock(&a->mu);
			a->acks--;
			pthread_cond_broadcast(&a->cv);
			pthread_mutex_unlock(&a->mu);
			if (rc)
				return rc;
		}
		if (end > p->next[i]) {
			size_t skip = off < p->next[i] ? (size_t)(p->next[i] - off) : 0;
			deliver_output(p, i + 1, ev->data.data + skip, ev->data.len - skip);
			pthread_mutex_lock(&p->mu);
			p->next[i] = end;
			pthread_mutex_unlock(&p->mu);
		}
	}
	if (ev->oom_count) {
		pthread_mutex_lock(&p->mu);
		/* a stream's first figure is the base of a watch that had none */
		bool grew = p->oom_based && ev->oom_kills > p->oom_seen;
		if (ev->oom_kills > p->oom_seen)
			p->oom_seen = ev->oom_kills;
		p->oom_based = true;
		pthread_mutex_unlock(&p->mu);
		if (grew && p->cbs.oom)
			p->cbs.oom(p->cbs.arg, ev->oom_kills);
	}
	if (ev->eof) {
		pthread_mutex_lock(&p->mu);
		p->eof[i] = true;
		pthread_mutex_unlock(&p->mu);
	}
	if (ev->exited) {
		pthread_mutex_lock(&p->mu);
		bool first = !p->exit_delivered;
		pthread_mutex_unlock(&p->mu);
		if (first) {
			struct lm_agent_exit e = {ev->exit_status, ev->exited_at_ns, 0};
			if (p->cbs.exit)
				p->cbs.exit(p->cbs.arg, &e);
			pthread_mutex_lock(&p->mu);
			p->exit_delivered = true;
			pthread_cond_broadcast(&p->cv);
			pthread_mutex_unlock(&p->mu);
		}
	}
	return 0;
}

static bool should_stop(lm_agent_proc_t *p)
{
	pthread_mutex_lock(&p->mu);
	bool s = p->stop;
	pthread_mutex_unlock(&p->mu);
	return s;
}

static void finish(lm_agent_proc_t *p, bool gone)
{
	pthread_mutex_lock(&p->mu);
	p->done = !gone;
	p->gone = gone;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* The pump: one Output stream per connection until the stream ends. */
static void *pump_main(void *arg)
{
	lm_agent_proc_t *p = arg;
	lm_agent_t *a = p->a;
	uint64_t failed_gen = 0;
	for (;;) {
		/* a usable connection, or the stop */
		pthread_mutex_lock(&a->mu);
		while (!a->closing && (!a->cur || a->cur->gen == failed_gen) && !should_stop(p)) {
			struct timespec ts = lm_timespec_in(CLOCK_REALTIME, 100000000);
			pthread_cond_timedwait(&a->cv, &a->mu, &ts);
		}
		struct conn *c = a->closing || should_stop(p) ? NULL : a->cur;
		if (c)
			c->users++;
		pthread_mutex_unlock(&a->mu);
		if (!c)
			return NULL;

		Lmshim__Agent__V1__OutputRequest rq = LMSHIM__AGENT__V1__OUTPUT_REQUEST__INIT;
		uint8_t b[256];
		rq.container_id = p->id;
		rq.exec_id = p->exec_id;
		pthread_mutex_lock(&p->mu);
		rq.stdout_offset = p->next[0];
		rq.stderr_offset = p->next[1];
		pthread_mutex_unlock(&p->mu);
		rq.from_acknowledged = p->cbs.handover;
		uint64_t acked[2] = {rq.stdout_offset, rq.stderr_offset};
		size_t n = lmshim__agent__v1__output_request__pack(&rq, b);
		lm_rpc_stream_t *st = NULL;
		int rc = lm_rpc_client_stream_open(c->rpc, LM_AGENT_SERVICE, "Output", b, n, NULL, &st);
		bool ended = false, gone = false;
		while (rc == 0) {
			uint8_t *msg = NULL;
			size_t len = 0;
			rc = lm_rpc_stream_recv(st, &msg, &len, 100000000);
			if (rc == -ETIMEDOUT) {
				rc = should_stop(p) ? -ECANCELED : 0;
				continue;
			}
			if (rc == 0) {
				ended = true;           /* exit delivered, both at EOF */
				break;
			}
			if (rc < 0)
				break;
			Lmshim__Agent__V1__OutputEvent *ev =
				lmshim__agent__v1__output_event__unpack(NULL, len, msg);
			free(msg);
			rc = 0;
			if (!ev) {
				lm_log_error(MOD, "undecodable output event", "id=%s", p->id);
				continue;
			}
			rc = on_event(p, c, ev);
			lmshim__agent__v1__output_event__free_unpacked(ev, NULL);
			if (rc) {
				/* unacknowledged: not delivered; the next stream
				 * (on this connection or the next) asks again */
				lm_log_info(MOD, "output ack failed", "id=%s exec=%s err=%d", p->id,
					    p->exec_id, rc);
				break;
			}
			pthread_mutex_lock(&p->mu);
			uint64_t no = p->next[0], ne = p->next[1];
			pthread_mutex_unlock(&p->mu);
			if (no - acked[0] + ne - acked[1] >= ACK_EVERY && ack(p, c, no, ne) == 0) {
				acked[0] = no;
				acked[1] = ne;
			}
		}
		if (rc == -EREMOTEIO) {
			const char *m = NULL;
			int code = lm_rpc_stream_status(st, &m);
			if (code == LM_RPC_NOT_FOUND || code == LM_RPC_ABORTED) {
				lm_log_info(MOD, "output stream ended", "id=%s exec=%s code=%d msg=\"%s\"",
					    p->id, p->exec_id, code, m ? m : "");
				gone = true;
			}
		} else if (rc == -ENOENT || rc == -EBUSY) {
			gone = true;
		}
		if (st)
			lm_rpc_stream_close(st);
		if (ended) {
			pthread_mutex_lock(&p->mu);
			uint64_t no = p->next[0], ne = p->next[1];
			pthread_mutex_unlock(&p->mu);
			ack(p, c, no, ne);              /* the agent may free it all */
		}
		failed_gen = c->gen;                /* if we go on: wait for the next one */
		conn_put(a, c);                     /* c may be freed from here on */
		if (ended || gone) {
			finish(p, gone);
			return NULL;
		}
		if (rc == -ECANCELED)
			return NULL;
	}
}

int lm_agent_watch(lm_agent_t *a, const char *id, const char *exec_id,
		   const struct lm_agent_io_cbs *cbs, lm_agent_proc_t **out)
{
	lm_agent_proc_t *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->a = a;
	p->stdin_room = UINT64_MAX;
	snprintf(p->id, sizeof p->id, "%s", id);
	snprintf(p->exec_id, sizeof p->exec_id, "%s", exec_id ? exec_id : "");
	p->cbs = *cbs;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	int rc = pthread_create(&p->thread, NULL, pump_main, p);
	if (rc) {
		pthread_mutex_destroy(&p->mu);
		pthread_cond_destroy(&p->cv);
		free(p);
		return -rc;
	}
	*out = p;
	return 0;
}

int lm_agent_proc_write(lm_agent_proc_t *p, const void *data, size_t len, int64_t timeout_ns)
{
	const uint8_t *d = data;
	pthread_mutex_lock(&p->mu);
	uint64_t start = p->stdin_off;
	pthread_mutex_unlock(&p->mu);
	/* the caller's bytes begin at `start`; a retry after -EPIPE resends
	 * them from there and the agent skips what it had taken */
	uint64_t until = timeout_ns > 0 ? lm_now_ns() + (uint64_t)timeout_ns : 0;
	size_t done = 0;
	while (done < len) {
		Lmshim__Agent__V1__WriteStdinRequest rq = LMSHIM__AGENT__V1__WRITE_STDIN_REQUEST__INIT;
		rq.container_id = p->id;
		rq.exec_id = p->exec_id;
		rq.offset = start + done;
		rq.data.data = (uint8_t *)d + done;
		rq.data.len = len - done > (512u << 10) ? (512u << 10) : len - done;
		Lmshim__Agent__V1__WriteStdinResponse *r = NULL;
		int64_t left = until ? (int64_t)(until - lm_now_ns()) : 0;
		if (until && left <= 0)
			return -ETIMEDOUT;
		int rc = call(p->a, "WriteStdin", &rq.base, &lmshim__agent__v1__write_stdin_response__descriptor,
			      (ProtobufCMessage **)&r, left);
		if (rc < 0)
			return rc;
		uint64_t got = r->offset;
		uint64_t room = r->room_known ? r->room : UINT64_MAX;
		FREE_MSG(r);
		if (got < start + done)
			return -EPROTO;
		pthread_mutex_lock(&p->mu);
		p->stdin_room = room;
		pthread_mutex_unlock(&p->mu);
		if (got == start + done)
			sleep_ms(5);                    /* the process is not reading yet */
		done = (size_t)(got - start) < len ? (size_t)(got - start) : len;
		pthread_mutex_lock(&p->mu);
		if (got > p->stdin_off)
			p->stdin_off = got;
		pthread_mutex_unlock(&p->mu);
	}
	return 0;
}

int lm_agent_proc_stdin_room(lm_agent_proc_t *p, bool ask, uint64_t *room, int64_t timeout_ns)
{
	if (ask) {
		pthread_mutex_lock(&p->mu);
		uint64_t off = p->stdin_off;
		pthread_mutex_unlock(&p->mu);
		Lmshim__Agent__V1__WriteStdinRequest rq = LMSHIM__AGENT__V1__WRITE_STDIN_REQUEST__INIT;
		rq.container_id = p->id;
		rq.exec_id = p->exec_id;
		rq.offset = off;                          /* no bytes: the agent says its room */
		Lmshim__Agent__V1__WriteStdinResponse *r = NULL;
		int rc = call(p->a, "WriteStdin", &rq.base, &lmshim__agent__v1__write_stdin_response__descriptor,
			      (ProtobufCMessage **)&r, timeout_ns);
		if (rc < 0)
			return rc;
		pthread_mutex_lock(&p->mu);
		p->stdin_room = r->room_known ? r->room : UINT64_MAX;
		if (r->offset > p->stdin_off)
			p->stdin_off = r->offset;
		pthread_mutex_unlock(&p->mu);
		FREE_MSG(r);
	}
	pthread_mutex_lock(&p->mu);
	*room = p->stdin_room;
	pthread_mutex_unlock(&p->mu);
	return 0;
}

int lm_agent_proc_wait_done(lm_agent_proc_t *p, int64_t timeout_ns)
{
	struct timespec ts = lm_timespec_in(CLOCK_REALTIME, timeout_ns);
	int rc = 0;
	pthread_mutex_lock(&p->mu);
	while (!p->done && !p->gone && rc == 0)
		rc = pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	int out = p->done ? 0 : p->gone ? -ENOENT : -ETIMEDOUT;
	pthread_mutex_unlock(&p->mu);
	return out;
}

void lm_agent_proc_offsets(lm_agent_proc_t *p, uint64_t *out, uint64_t *err)
{
	pthread_mutex_lock(&p->mu);
	*out = p->next[0];
	*err = p->next[1];
	pthread_mutex_unlock(&p->mu);
}

void lm_agent_unwatch(lm_agent_proc_t *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_mutex_unlock(&p->mu);
	pthread_mutex_lock(&p->a->mu);
	pthread_cond_broadcast(&p->a->cv);
	pthread_mutex_unlock(&p->a->mu);
	pthread_join(p->thread, NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
