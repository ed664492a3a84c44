/*
 * agent.h: the guest agent's internals, shared by its files.
 *
 * The agent is PID 1 of the utility VM (the initramfs's /init execs it).
 * Threads:
 *   - the agent thread (main): owns every container and process, the
 *     child reaper (a signalfd for SIGCHLD), the processes' pipes and
 *     ptys, and runs the requests; a libev loop (`loop`).
 *   - the rpc loop thread (rpc/server.h): decodes and checks requests
 *     (service.c) and hands each one to the agent thread as a job; only
 *     Info is answered there.
 *   - the relay thread (relay.h): port <-> socketpair.
 * DESIGN. Jobs cross from the rpc thread to the agent thread through a
 * locked list and an ev_async (coalescing: the callback drains the list).
 * A job holds the call's handler reference; whoever answers releases it.
 * Answers leave from the agent thread (lm_rpc_call_reply/send/end are
 * thread-safe). A call that the agent keeps open (a Wait before the exit,
 * an Output stream) may be cancelled by the rpc thread (the host left):
 * the cancel callback queues a CANCEL job holding an extra reference, and
 * the agent thread forgets the call and drops its answer.
 *
 * Nothing here is visible to any other thread; the only state shared with
 * the rpc thread is the job list (under job_mu) and n_containers (atomic,
 * for Info).
 */
#ifndef LM_GUEST_AGENT_AGENT_H
#define LM_GUEST_AGENT_AGENT_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.pb-c.h"
#include "guest/agent/validate.h"
#include "rpc/server.h"

#define LM_AGENT_VERSION "0.1"
#define LM_AGENT_RUN_DIR "/run/lmshim"
#define LM_AGENT_CGROUP  "/sys/fs/cgroup/lmshim"
#define LM_AGENT_OUT_CAP (512u << 10)   /* output kept per stream until acked */
#define LM_AGENT_IN_CAP  (1u << 20)     /* stdin bytes held for a slow reader */


struct job {
	struct job *next;
	bool cancel;                 /* a CANCEL for `call` (holds an extra ref) */
	enum lm_agent_method method;
	lm_rpc_call_t *call;         /* the handler's reference (or the extra one) */
	ProtobufCMessage *req;       /* decoded request, freed after the job runs */
};

/* One output stream of a process (stdout or stderr): a ring of the bytes
 * read from the pipe and not yet acknowledged by the host. */
struct outbuf {
	uint8_t *buf;                /* cap bytes; offset o lives at buf[o % cap] */
	size_t cap;
	uint64_t base;               /* acked: bytes before this are gone */
	uint64_t end;                /* read from the pipe so far */
	uint64_t sent;               /* sent on the current Output stream */
	int fd;                      /* read end (pipe or pty master), -1 at EOF */
	bool eof;                    /* the pipe reached end of file */
	bool eof_sent;               /* the current stream has the EOF event */
	ev_io w;                     /* readable; stopped while the ring is full */
};

struct waiter {
	struct waiter *next;
	lm_rpc_call_t *call;
};

enum proc_state { P_CREATED, P_RUNNING, P_EXITED };

struct proc {
	struct proc *next;           /* the container's list (init first) */
	struct container *c;
	char exec_id[65];            /* "" for the init */
	pid_t pid;
	enum proc_state state;
	bool terminal;
	uint32_t status;             /* exit code or 128+signal, once exited */
	uint64_t exited_at;          /* wall ns */
	int start_fd;                /* CREATED init: write a byte to let it exec */
	int report_fd;               /* CREATED init: its setup/exec error reports */
	int pty;                     /* pty master, -1 without a terminal */
	struct outbuf out[2];        /* stdout, stderr (stderr unused with a pty) */
	/* stdin */
	int in_fd;                   /* write end (or a dup of the pty master); -1 closed */
	uint8_t *in_buf;             /* bytes taken, not yet written to the process */
	size_t in_len;
	uint64_t in_off;             /* bytes taken in total (WriteStdin's offset) */
	bool in_close;               /* close once in_buf is written */
	ev_io in_w;
	/* the host's calls kept open */
	struct waiter *waiters;      /* Wait calls until the exit */
	lm_rpc_call_t *sub;          /* the Output stream, or NULL */
	bool exit_sent;              /* the current stream has the exit event */
};

enum container_state { C_CREATED, C_RUNNING, C_STOPPED };

struct container {
	struct container *next;
	char id[65];
	enum container_state state;
	bool paused;
	struct proc *init;
	struct proc *procs;          /* init first, then exec'd processes */
	unsigned n_layers;
	bool scratch_mounted, rootfs_mounted;
	unsigned layers_mounted;
	bool cgroup_made;
	char dir[128];               /* LM_AGENT_RUN_DIR/<id> */
	char cgroup[128];            /* LM_AGENT_CGROUP/<id> */
	char *hostname;              /* the spec's, or NULL: the ID */
	uint64_t oom_kills;          /* memory.events oom_kill, last read */
};

struct agent {
	struct ev_loop *loop;        /* the agent thread's */
	ev_async job_w;
	pthread_mutex_t job_mu;
	struct job *jobs, *jobs_tail;  /* under job_mu */
	ev_io sig_w;                 /* SIGCHLD signalfd */
	ev_timer oom_w;              /* looks for OOM kills (lm_agent_oom_scan) */
	int sigfd;
	struct container *containers;
	atomic_uint n_containers;    /* for Info on the rpc thread */
	char boot_id[40];
	char release[65];
	lm_rpc_server_t *srv;
};

extern struct agent lm_agent;

/* service.c: the rpc service. Thread: the agent thread, before the server
 * starts. */
extern const struct lm_rpc_service lm_agent_service;
/* Thread: the agent thread. Runs a job and frees it. */
void lm_agent_run_job(struct job *j);
/* Thread: agent. Packs and sends a reply / a stream item. */
int lm_agent_reply(lm_rpc_call_t *call, const ProtobufCMessage *m);
int lm_agent_send(lm_rpc_call_t *call, const ProtobufCMessage *m);

/* container.c. Thread: agent. Each answers the call (consumes it). */
void lm_agent_create(lm_rpc_call_t *call, const Lmshim__Agent__V1__CreateContainerRequest *r);
void lm_agent_start(lm_rpc_call_t *call, struct container *c);
void lm_agent_exec(lm_rpc_call_t *call, struct container *c, const Lmshim__Agent__V1__ExecRequest *r);
void lm_agent_kill(lm_rpc_call_t *call, struct container *c, struct proc *p, uint32_t sig, bool all);
void lm_agent_ps(lm_rpc_call_t *call, struct container *c);
void lm_agent_stats(lm_rpc_call_t *call, struct container *c);
void lm_agent_freeze(lm_rpc_call_t *call, struct container *c, bool freeze);
void lm_agent_update(lm_rpc_call_t *call, struct container *c, const Lmshim__Agent__V1__UpdateRequest *r);
/* Thread: agent (a timer, every LM_AGENT_OOM_SCAN_MS). Reads each
 * container's memory.events; a grown oom_kill goes on its init's Output
 * stream (lm_agent_proc_oom). */
#define LM_AGENT_OOM_SCAN_MS 250
void lm_agent_oom_scan(void);
/* io.c. Thread: agent. Sends the container's OOM kill count on p's
 * stream, if one is open. */
void lm_agent_proc_oom(struct proc *p, uint64_t oom_kills);
void lm_agent_delete_container(lm_rpc_call_t *call, struct container *c);
void lm_agent_delete_proc(lm_rpc_call_t *call, struct proc *p);
struct container *lm_agent_find(const char *id);
struct proc *lm_agent_find_proc(struct container *c, const char *exec_id);
/* Thread: agent. SIGCHLD: reaps every exited child. */
void lm_agent_reap(void);
/* Thread: agent, at start. Makes the cgroup parent. */
int lm_agent_cgroup_init(void);

/* io.c. Thread: agent. */
int lm_agent_proc_io_init(struct proc *p, int out_fd, int err_fd, int in_fd, int pty);
void lm_agent_proc_io_free(struct proc *p);
/* The process exited: drain its pipes, answer waiters, tell the stream. */
void lm_agent_proc_exited(struct proc *p);
void lm_agent_wait(lm_rpc_call_t *call, struct proc *p);
void lm_agent_output(lm_rpc_call_t *call, struct proc *p, uint64_t out_off, uint64_t err_off,
		     bool from_acknowledged);
void lm_agent_ack(lm_rpc_call_t *call, struct proc *p, uint64_t out_off, uint64_t err_off);
void lm_agent_stdin(lm_rpc_call_t *call, struct proc *p, uint64_t off, const uint8_t *d, size_t n);
void lm_agent_close_stdin(lm_rpc_call_t *call, struct proc *p);
void lm_agent_resize(lm_rpc_call_t *call, struct proc *p, uint32_t w, uint32_t h);
/* A kept call was cancelled: forget it if it is still ours. */
void lm_agent_forget_call(lm_rpc_call_t *call);
/* Ends the kept calls of p (delete): waiters and the stream get code/msg. */
void lm_agent_proc_end_calls(struct proc *p, int code, const char *msg);

#endif
