/*
 * service.c: the Agent ttrpc service (proto/agent.proto): the method
 * table, the rpc-thread half of every call (decode with protobuf-c, check
 * with validate.h, queue as a job) and the agent-thread half (find the
 * container and process, run the operation).
 *
 * Errors: malformed protobuf and failed checks are InvalidArgument saying
 * which method and which field; an unknown container or process is
 * NotFound; an operation that does not fit the state (start twice, exec
 * into a stopped container, delete a running one) is FailedPrecondition.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "guest/agent/agent.h"
#include "guest/agent/validate.h"
#include "guest/agent/wire.h"
#include "util/log.h"

#define MOD "agent"

/* ---- packing ---------------------------------------------------------- */

static int pack_and(lm_rpc_call_t *call, const ProtobufCMessage *m, bool item)
{
	uint8_t stackbuf[512];
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *b = n <= sizeof stackbuf ? stackbuf : malloc(n);
	if (!b) {
		if (item)
			return -ENOMEM;
		return lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
	}
	protobuf_c_message_pack(m, b);
	int rc = item ? lm_rpc_call_send(call, b, n) : lm_rpc_call_reply(call, b, n);
	if (b != stackbuf)
		free(b);
	return rc;
}

int lm_agent_reply(lm_rpc_call_t *call, const ProtobufCMessage *m)
{
	return pack_and(call, m, false);
}

int lm_agent_send(lm_rpc_call_t *call, const ProtobufCMessage *m)
{
	return pack_and(call, m, true);
}

/* ---- rpc thread: Info, decode, check, queue ---------------------------- */

static void info(lm_rpc_call_t *call)
{
	Lmshim__Agent__V1__InfoResponse r = LMSHIM__AGENT__V1__INFO_RESPONSE__INIT;
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	r.agent_version = (char *)LM_AGENT_VERSION;
	r.protocol_version = LM_AGENT_PROTOCOL;
	r.boot_id = lm_agent.boot_id;
	r.uptime_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	r.containers = atomic_load(&lm_agent.n_containers);
	r.kernel_release = lm_agent.release;
	lm_agent_reply(call, &r.base);
}

static void post_job(struct job *j)
{
	pthread_mutex_lock(&lm_agent.job_mu);
	if (lm_agent.jobs_tail)
		lm_agent.jobs_tail->next = j;
	else
		lm_agent.jobs = j;
	lm_agent.jobs_tail = j;
	pthread_mutex_unlock(&lm_agent.job_mu);
	ev_async_send(lm_agent.loop, &lm_agent.job_w);
}

/* rpc thread: every method but Info. */
static void handle(lm_rpc_call_t *call, enum lm_agent_method m)
{
	size_t len;
	const uint8_t *p = lm_rpc_call_payload(call, &len);
	char why[256];
	if (m == M_INFO) {
		info(call);
		return;
	}
	ProtobufCMessage *req = protobuf_c_message_unpack(lm_agent_methods[m].req, NULL, len, p);
	if (!req) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: malformed request (%zu bytes are not a %s)",
				 lm_agent_methods[m].name, len, lm_agent_methods[m].req->name);
		return;
	}
	if (lm_agent_check_request(m, req, why, sizeof why) < 0) {
		protobuf_c_message_free_unpacked(req, NULL);
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: %s", lm_agent_methods[m].name, why);
		return;
	}
	struct job *j = calloc(1, sizeof(*j));
	if (!j) {
		protobuf_c_message_free_unpacked(req, NULL);
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	j->method = m;
	j->call = call;
	j->req = req;
	post_job(j);
}

/* rpc thread: a Wait or Output the agent keeps was cancelled. */
static void on_cancel(lm_rpc_call_t *call, enum lm_rpc_cancel why, void *arg)
{
	(void)why;
	(void)arg;
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return;   /* the call stays listed until the process ends it */
	lm_rpc_call_ref(call);
	j->cancel = true;
	j->call = call;
	post_job(j);
}

#define H(fn, m) static void fn(lm_rpc_call_t *c, void *a) { (void)a; handle(c, m); }
H(h_info, M_INFO) H(h_create, M_CREATE) H(h_start, M_START) H(h_exec, M_EXEC)
H(h_kill, M_KILL) H(h_wait, M_WAIT) H(h_ps, M_PS) H(h_stats, M_STATS)
H(h_pause, M_PAUSE) H(h_resume, M_RESUME) H(h_resize, M_RESIZE) H(h_stdin, M_STDIN)
H(h_close_stdin, M_CLOSE_STDIN) H(h_output, M_OUTPUT) H(h_ack, M_ACK)
H(h_delete_proc, M_DELETE_PROC) H(h_delete_container, M_DELETE_CONTAINER) H(h_update, M_UPDATE)
#undef H

static const struct lm_rpc_method methods[M_COUNT] = {
	[M_INFO] = {"Info", LM_RPC_UNARY, h_info, NULL, NULL},
	[M_CREATE] = {"CreateContainer", LM_RPC_UNARY, h_create, NULL, NULL},
	[M_START] = {"Start", LM_RPC_UNARY, h_start, NULL, NULL},
	[M_EXEC] = {"Exec", LM_RPC_UNARY, h_exec, NULL, NULL},
	[M_KILL] = {"Kill", LM_RPC_UNARY, h_kill, NULL, NULL},
	[M_WAIT] = {"Wait", LM_RPC_UNARY, h_wait, on_cancel, NULL},
	[M_PS] = {"ListProcesses", LM_RPC_UNARY, h_ps, NULL, NULL},
	[M_STATS] = {"Stats", LM_RPC_UNARY, h_stats, NULL, NULL},
	[M_PAUSE] = {"Pause", LM_RPC_UNARY, h_pause, NULL, NULL},
	[M_RESUME] = {"Resume", LM_RPC_UNARY, h_resume, NULL, NULL},
	[M_RESIZE] = {"ResizePty", LM_RPC_UNARY, h_resize, NULL, NULL},
	[M_STDIN] = {"WriteStdin", LM_RPC_UNARY, h_stdin, NULL, NULL},
	[M_CLOSE_STDIN] = {"CloseStdin", LM_RPC_UNARY, h_close_stdin, NULL, NULL},
	[M_OUTPUT] = {"Output", LM_RPC_SERVER_STREAM, h_output, on_cancel, NULL},
	[M_ACK] = {"AckOutput", LM_RPC_UNARY, h_ack, NULL, NULL},
	[M_DELETE_PROC] = {"DeleteProcess", LM_RPC_UNARY, h_delete_proc, NULL, NULL},
	[M_DELETE_CONTAINER] = {"DeleteContainer", LM_RPC_UNARY, h_delete_container, NULL, NULL},
	[M_UPDATE] = {"Update", LM_RPC_UNARY, h_update, NULL, NULL},
};

const struct lm_rpc_service lm_agent_service = {LM_AGENT_SERVICE, methods, M_COUNT, NULL};

/* ---- agent thread: run a job ------------------------------------------ */

static struct container *need_container(lm_rpc_call_t *call, const char *id)
{
	struct container *c = lm_agent_find(id);
	if (!c)
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "container %s: not found", id);
	return c;
}

static struct proc *need_proc(lm_rpc_call_t *call, const char *cid, const char *eid)
{
	struct container *c = need_container(call, cid);
	if (!c)
		return NULL;
	struct proc *p = lm_agent_find_proc(c, eid);
	if (!p)
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "container %s: process %s: not found", cid,
				 eid[0] ? eid : "(init)");
	return p;
}

static void run(enum lm_agent_method m, lm_rpc_call_t *call, ProtobufCMessage *msg)
{
	struct container *c;
	struct proc *p;
	switch (m) {
	case M_CREATE:
		lm_agent_create(call, (const void *)msg);
		return;
	case M_START: {
		const Lmshim__Agent__V1__ProcessRequest *r = (const void *)msg;
		if (r->exec_id[0]) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
					 "Start: exec %s already runs (Exec starts processes)", r->exec_id);
			return;
		}
		if ((c = need_container(call, r->container_id)))
			lm_agent_start(call, c);
		return;
	}
	case M_EXEC: {
		const Lmshim__Agent__V1__ExecRequest *r = (const void *)msg;
		if ((c = need_container(call, r->container_id)))
			lm_agent_exec(call, c, r);
		return;
	}
	case M_KILL: {
		const Lmshim__Agent__V1__KillRequest *r = (const void *)msg;
		if ((p = need_proc(call, r->container_id, r->exec_id)))
			lm_agent_kill(call, p->c, p, r->signal, r->all);
		return;
	}
	case M_WAIT: {
		const Lmshim__Agent__V1__ProcessRequest *r = (const void *)msg;
		if ((p = need_proc(call, r->container_id, r->exec_id)))
			lm_agent_wait(call, p);
		return;
	}
	case M_PS: case M_STATS: case M_PAUSE: case M_RESUME: case M_DELETE_CONTAINER: {
		const Lmshim__Agent__V1__ContainerRequest *r = (const void *)msg;
		if (!(c = need_container(call, r->container_id)))
			return;
		if (m == M_PS)
			lm_agent_ps(call, c);
		else if (m == M_STATS)
			lm_agent_stats(call, c);
		else if (m == M_PAUSE || m == M_RESUME)
			lm_agent_freeze(call, c, m == M_PAUSE);
		else
			lm_agent_delete_container(call, c);
		return;
	}
	case M_UPDATE: {
		const Lmshim__Agent__V1__UpdateRequest *r = (const void *)msg;
		if ((c = need_container(call, r->container_id)))
			lm_agent_update(call, c, r);
		return;
	}
	case M_RESIZE: {
		const Lmshim__Agent__V1__ResizePtyRequest *r = (const void *)msg;
		if ((p = need_proc(call, r->container_id, r->exec_id)))
			lm_agent_resize(call, p, r->width, r->height);
		return;
	}
	case M_STDIN: {
		const Lmshim__Agent__V1__WriteStdinRequest *r = (const void *)msg;
		if ((p = need_proc(call, r->container_id, r->exec_id)))
			lm_agent_stdin(call, p, r->offset, r->data.data, r->data.len);
		return;
	}
	case M_CLOSE_STDIN: case M_DELETE_PROC: {
		const Lmshim__Agent__V1__ProcessRequest *r = (const void *)msg;
		if (!(p = need_proc(call, r->container_id, r->exec_id)))
			return;
		if (m == M_CLOSE_STDIN)
			lm_agent_close_stdin(call, p);
		else
			lm_agent_delete_proc(call, p);
		return;
	}
	case M_OUTPUT: {
		const Lmshim__Agent__V1__OutputRequest *r = (const void *)msg;
		if ((p = need_proc(call, r->container_id, r->exec_id)))
			lm_agent_output(call, p, r->stdout_offset, r->stderr_offset, r->from_acknowledged);
		else
			return;
		return;
	}
	case M_ACK: {
		const Lmshim__Agent__V1__AckOutputRequest *r = (const void *)msg;
		if ((p = need_proc(call, r->container_id, r->exec_id)))
			lm_agent_ack(call, p, r->stdout_offset, r->stderr_offset);
		return;
	}
	case M_INFO:
	case M_COUNT:
		break;
	}
	lm_rpc_call_fail(call, LM_RPC_INTERNAL, "method %d has no runner", (int)m);
}

void lm_agent_run_job(struct job *j)
{
	if (j->cancel) {
		lm_agent_forget_call(j->call);
		lm_rpc_call_unref(j->call);          /* the cancel's extra reference */
	} else {
		run(j->method, j->call, j->req);
	}
	if (j->req)
		protobuf_c_message_free_unpacked(j->req, NULL);
	free(j);
}
