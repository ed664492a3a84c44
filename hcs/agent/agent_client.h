/*
 * agent_client.h: the host's client of the guest agent (guest/agent/,
 * proto/agent.proto): a typed C API over rpc/client.h on the QEMU
 * chardev's unix socket of the agent's virtio-serial port.
 *
 * One lm_agent_t is the host's handle on one guest. It survives the loss
 * of its connection: after a live migration (or a shim restart) the
 * owner calls lm_agent_reconnect with the destination QEMU's socket, the
 * client checks that the agent there runs in the same guest boot (Info's
 * boot ID) and every watched process picks up where it was: its output
 * from the offsets delivered so far (nothing lost, nothing twice) and its
 * exit status, which the agent keeps until the process is deleted and the
 * client delivers exactly once.
 *
 * Connecting: the socket is dialled until it answers (QEMU may still be
 * starting), then the HELLO/ACK handshake of guest/agent/wire.h finds the
 * agent (resent while the guest boots: the guest drops bytes that arrive
 * before the agent opened the port), all within the caller's deadline.
 *
 * Errors: negative errno. A call the agent refused returns the errno of
 * its status code (NotFound -ENOENT, AlreadyExists -EEXIST,
 * InvalidArgument -EINVAL, FailedPrecondition -EBUSY, OutOfRange -ERANGE,
 * DeadlineExceeded -ETIMEDOUT, ResourceExhausted -ENOSPC, Canceled
 * -ECANCELED, Unimplemented -ENOSYS, others -EIO) and leaves the code
 * and the agent's message in lm_agent_last_error (per thread). Transport
 * failures: -ENOTCONN while disconnected, -EPIPE when the connection
 * broke during the call, -ETIMEDOUT when the deadline passed.
 *
 * DESIGN. Threads meet on the handle's mutex: the current connection is
 * reference counted; calls and watchers hold a reference while they use
 * it; (re)connecting shuts the old one down (its calls fail with -EPIPE
 * at once), waits for the last user and closes it. Each watched process
 * has one pump thread that reads its Output stream, delivers to the
 * callbacks, acknowledges what it delivered (AckOutput) so the agent can
 * free it, and after a broken connection waits for the next one.
 */
#ifndef LM_HCS_AGENT_CLIENT_H
#define LM_HCS_AGENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lm_agent lm_agent_t;
typedef struct lm_agent_proc lm_agent_proc_t;

struct lm_agent_info {
	char version[32];
	uint32_t protocol;
	char boot_id[40];
	uint64_t uptime_ns;
	uint32_t containers;
	char kernel[65];
};

struct lm_agent_process_spec {
	const char *const *args;      /* args[0] is looked up in env's PATH */
	size_t n_args;
	const char *const *env;       /* "KEY=value" */
	size_t n_env;
	const char *cwd;              /* NULL: "/" */
	bool terminal;                /* a pty: stdout carries both streams */
	bool open_stdin;              /* a stdin pipe (else /dev/null) */
	uint32_t uid, gid;
	uint16_t width, height;       /* the terminal's size, 0: default */
};

struct lm_agent_layer {
	const char *serial;           /* the virtio-blk disk's serial */
	const char *fstype;           /* NULL: erofs */
};

struct lm_agent_container_spec {
	const char *id;
	const struct lm_agent_layer *layers;  /* lowest first */
	size_t n_layers;
	const char *scratch_serial;   /* NULL: a tmpfs scratch */
	const char *scratch_fstype;   /* NULL: ext4 */
	uint64_t scratch_tmpfs_bytes; /* 0: 64 MiB */
	const char *hostname;         /* NULL: the ID */
	uint64_t memory_max;          /* bytes, 0: no limit */
	uint64_t pids_max;            /* 0: no limit */
	struct lm_agent_process_spec process;
};

struct lm_agent_exit {
	uint32_t status;              /* exit code, or 128 + signal */
	uint64_t exited_at_ns;        /* the guest's wall clock */
	uint32_t pid;
};

struct lm_agent_stats {
	uint64_t cpu_usage_usec, cpu_user_usec, cpu_system_usec;
	uint64_t memory_current, memory_max;  /* max 0: no limit */
	uint64_t pids_current, pids_max;
	bool frozen;
	uint64_t cpu_nr_periods, cpu_nr_throttled, cpu_throttled_usec;
	uint64_t cpu_quota_us, cpu_period_us;  /* cpu.max; quota 0: no limit */
	uint32_t cpu_weight;
};

/* An Update of a container's cgroup limits: each applies when its set_
 * flag is true; a limit of 0 is none. */
struct lm_agent_update {
	bool set_memory;
	uint64_t memory_max;          /* bytes */
	bool set_pids;
	uint64_t pids_max;
	bool set_cpu_max;
	uint64_t cpu_quota_us, cpu_period_us;  /* period 0: 100000 */
	bool set_cpu_weight;
	uint32_t cpu_weight;          /* 1..10000 */
};

struct lm_agent_ps_entry {
	uint32_t pid;                 /* in the guest */
	char exec_id[65];             /* "" for the init and for processes the agent did not start */
	bool is_init;
};

/* Thread: any. The status code and message of this thread's last call
 * that the agent refused (code 0 and "" after a success). */
int lm_agent_last_error(const char **message);

/* ---- connection ------------------------------------------------------- */

/* Thread: any. Connects to the agent behind QEMU's chardev socket `path`
 * within timeout_ns (dialling and handshaking again as needed). 0,
 * -ETIMEDOUT, -ENOMEM, -errno. */
int lm_agent_connect(lm_agent_t **out, const char *path, int64_t timeout_ns);

/* Thread: any. Drops the current connection (if any) and connects to
 * `path` (the same socket, or the destination's after a migration).
 * -ESTALE if the agent there runs in another guest boot (the connection is
 * then dropped). Watched processes resume on the new connection. */
int lm_agent_reconnect(lm_agent_t *a, const char *path, int64_t timeout_ns);

/* Thread: any. Drops the current connection (as if the host left):
 * calls in flight fail with -EPIPE, later ones with -ENOTCONN until
 * lm_agent_reconnect. */
void lm_agent_disconnect(lm_agent_t *a);

/* Thread: any. Lets a handover watch's acknowledgement in flight finish
 * (within timeout_ns), starts no other, then drops the connection like
 * lm_agent_disconnect. What the next host (or this one, reconnecting)
 * delivers then starts exactly where this one stopped: an
 * acknowledgement cut by a plain disconnect leaves it unknown whether the
 * guest counted its chunk (which is then lost). 0 or -ETIMEDOUT (dropped
 * anyway). */
int lm_agent_disconnect_quiet(lm_agent_t *a, int64_t timeout_ns);

/* Thread: any, once every watch was unwatched and no call runs. */
void lm_agent_close(lm_agent_t *a);

/* Thread: any. The guest boot ID seen at connect. */
const char *lm_agent_boot_id(const lm_agent_t *a);

/* ---- calls (Thread: any; timeout_ns 0: none) ----------------------------- */

int lm_agent_info(lm_agent_t *a, struct lm_agent_info *out, int64_t timeout_ns);
int lm_agent_create(lm_agent_t *a, const struct lm_agent_container_spec *spec, uint32_t *pid,
		    int64_t timeout_ns);
int lm_agent_start(lm_agent_t *a, const char *id, uint32_t *pid, int64_t timeout_ns);
int lm_agent_exec(lm_agent_t *a, const char *id, const char *exec_id,
		  const struct lm_agent_process_spec *spec, uint32_t *pid, int64_t timeout_ns);
/* exec_id NULL or "": the init. all: every process of the container. */
int lm_agent_kill(lm_agent_t *a, const char *id, const char *exec_id, int sig, bool all,
		  int64_t timeout_ns);
/* Blocks until the process has exited (idempotent). */
int lm_agent_wait(lm_agent_t *a, const char *id, const char *exec_id, struct lm_agent_exit *out,
		  int64_t timeout_ns);
/* *out is malloc'd (free it); *n entries. */
int lm_agent_ps(lm_agent_t *a, const char *id, struct lm_agent_ps_entry **out, size_t *n,
		int64_t timeout_ns);
int lm_agent_stats(lm_agent_t *a, const char *id, struct lm_agent_stats *out, int64_t timeout_ns);
int lm_agent_pause(lm_agent_t *a, const char *id, int64_t timeout_ns);
int lm_agent_resume(lm_agent_t *a, const char *id, int64_t timeout_ns);
int lm_agent_update(lm_agent_t *a, const char *id, const struct lm_agent_update *u, int64_t timeout_ns);
int lm_agent_resize(lm_agent_t *a, const char *id, const char *exec_id, uint16_t width,
		    uint16_t height, int64_t timeout_ns);
int lm_agent_close_stdin(lm_agent_t *a, const char *id, const char *exec_id, int64_t timeout_ns);
/* out may be NULL. */
int lm_agent_delete_process(lm_agent_t *a, const char *id, const char *exec_id,
			    struct lm_agent_exit *out, int64_t timeout_ns);
int lm_agent_delete_container(lm_agent_t *a, const char *id, struct lm_agent_exit *out,
			      int64_t timeout_ns);

/* Thread: any. A raw call (for tests of the agent's input checks): sends
 * `req` as the request of `method`; 0 with the agent's status code in
 * *code and message in lm_agent_last_error, or a transport -errno. */
int lm_agent_call_raw(lm_agent_t *a, const char *method, const void *req, size_t len, int *code,
		      int64_t timeout_ns);

/* ---- watched processes ------------------------------------------------ */

/* Callbacks run on the watch's pump thread, one at a time, in stream
 * order; they must not call lm_agent_unwatch on their own watch. */
struct lm_agent_io_cbs {
	/* stdout (fd 1) / stderr (fd 2) bytes; NULL: written to out_fd/err_fd */
	void (*output)(void *arg, int fd, const uint8_t *data, size_t len);
	/* the exit, exactly once per watch */
	void (*exit)(void *arg, const struct lm_agent_exit *e);
	/* a container init's watch: OOM kills in the container grew to
	 * oom_kills (counted from the watch's first stream: kills before it,
	 * which a previous host reported, are not told again). NULL: not
	 * told. */
	void (*oom)(void *arg, uint64_t oom_kills);
	int out_fd, err_fd;           /* used when output is NULL; -1: drop */
	void *arg;
	/* The process's output moves between hosts with its guest (live
	 * migration): each chunk is acknowledged to the agent before it is
	 * delivered (a chunk whose acknowledgement got no answer is never
	 * delivered here: the guest may have stopped before it counted it),
	 * and the stream starts where the acknowledged output ends. The
	 * source's and the destination's watches then deliver one stream
	 * between them with no byte twice and none lost. Costs a round trip
	 * per chunk. */
	bool handover;
};

/* Thread: any. Starts delivering the process's output (from its first
 * byte) and exit. The watch lives until lm_agent_unwatch. 0 or -errno
 * (-ENOTCONN while disconnected is fine: it starts on the next
 * connection). */
int lm_agent_watch(lm_agent_t *a, const char *id, const char *exec_id,
		   const struct lm_agent_io_cbs *cbs, lm_agent_proc_t **out);

/* Thread: any. Writes all of data to the process's stdin, exactly once
 * even across a reconnect (the agent skips bytes it already took): on
 * -EPIPE/-ENOTCONN call it again with the same bytes after reconnecting.
 * 0 or -errno. */
int lm_agent_proc_write(lm_agent_proc_t *p, const void *data, size_t len, int64_t timeout_ns);

/* Thread: any. Waits until the exit was delivered and both outputs ended
 * (0), or timeout_ns (-ETIMEDOUT); -ENOENT if the stream ended because the
 * process is gone from the agent (deleted). */
int lm_agent_proc_wait_done(lm_agent_proc_t *p, int64_t timeout_ns);

/* Thread: any. How many stdin bytes the agent would take now: the figure
 * its last answer gave, or (ask) a fresh one (a write of no bytes).
 * UINT64_MAX: an agent that does not say. 0 or a transport -errno. */
int lm_agent_proc_stdin_room(lm_agent_proc_t *p, bool ask, uint64_t *room, int64_t timeout_ns);

/* Thread: any. Bytes of stdout/stderr delivered so far. */
void lm_agent_proc_offsets(lm_agent_proc_t *p, uint64_t *out, uint64_t *err);

/* Thread: any but the pump's. Stops the pump thread and frees the watch. */
void lm_agent_unwatch(lm_agent_proc_t *p);

#endif
