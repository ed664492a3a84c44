/*
 * guest.h: the sandbox's containers as real processes in the utility VM
 * (the "qemu" backend), run by the guest agent (guest/agent/) through the
 * host's agent client (hcs/agent/agent_client.h).
 *
 * One lm_guest_t is the shim's side of one VM's agent: its connection,
 * a worker thread that makes the agent calls, and a watch per process (a
 * container's init, or a process exec'd in it: a process is named by
 * its container's guest_id and its exec ID, "" or NULL for the init)
 * that writes its stdout/stderr to the process's stdio files and
 * reports its exit once, and, when the process has a stdin, a stdin
 * pump: a thread that reads the stdin file (containerd's FIFO: it waits
 * for a writer) and hands the bytes to the agent, exactly once even
 * across a reconnect (lm_agent_proc_write), and closes the init's stdin
 * at the file's end. It reads no more than the agent says it would take
 * (its buffer, in guest memory, moves with the guest), and a suspend
 * (the copy's start) stops it reading and waits for what it read to be
 * taken: no stdin byte is lost across a migration (what it did not read
 * stays in the source's file); the destination reads its own stdin file.
 *
 * Live migration. A container keeps its agent ID (guest_id, carried by
 * the snapshot) and its guest PID wherever the VM goes. Every watch is a
 * handover watch (agent_client.h): a chunk of output is acknowledged to
 * the agent before it is written, so the source stops at exactly what the
 * guest counted when it stopped, and the destination, which adopts each
 * running container once its VM runs (lm_guest_adopt), goes on from
 * there: the two hosts' stdout files together hold the stream once. An
 * exit the source reported before the blackout is reported on the
 * destination too (its snapshot was taken before): each host reports it
 * once to its own containerd.
 *
 * DESIGN / threads. Every call here is "Thread: any" and never blocks on
 * the guest: calls queue a job for the worker, which runs them in order
 * (so a Kill queued after a create finds the container) and calls the
 * job's `done` on the worker thread. Exits are reported on the watch's
 * pump thread through cbs.exit, exactly once per watched container, or,
 * if the watch ends first (delete, close), cbs.drop is called with the
 * same context instead: every exit context comes back exactly once. `mu`
 * guards the job queue and the watch list; the agent handle is the
 * worker's, except lm_agent_disconnect from close (the client's own lock
 * makes that safe), which fails a call in flight at once.
 */
#ifndef LM_SHIM_GUEST_H
#define LM_SHIM_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hcs/agent/agent_client.h"

typedef struct lm_guest lm_guest_t;

#define LM_GUEST_ID_LEN 64u           /* the agent's container IDs */

/* A job's completion, on the worker thread: err 0 or -errno, why (never
 * NULL) says what failed, pid the init's guest PID (create). */
typedef void (*lm_guest_done_fn)(void *ctx, int err, const char *why, uint32_t pid);

struct lm_guest_cbs {
	/* a watched init exited (pump thread); exit_ctx is the watch's */
	void (*exit)(void *exit_ctx, const char *guest_id, const struct lm_agent_exit *e);
	/* the watch ended without an exit: exit_ctx comes back unused */
	void (*drop)(void *exit_ctx);
	/* the kernel killed processes of container guest_id for want of
	 * memory (pump thread; oom_kills: its count so far); NULL: not told */
	void (*oom)(void *arg, const char *guest_id, uint64_t oom_kills);
	void *arg;                    /* oom's */
};

/* What lm_guest_create runs: one container whose rootfs is its read-only
 * layers (erofs disks of the VM, by serial) overlaid under a tmpfs
 * scratch (in guest memory, so it migrates with the VM), its init `args`.
 * Strings are copied. */
#define LM_GUEST_MAX_LAYERS 16
struct lm_guest_ctr_spec {
	const char *guest_id;         /* 1..64 of [A-Za-z0-9_.-] */
	const char *const *layer_serials; /* the VM disks, base layer first */
	unsigned n_layers;            /* 1..LM_GUEST_MAX_LAYERS */
	const char *const *args;      /* argv; args[0] looked up in PATH */
	size_t n_args;
	const char *const *env;       /* "KEY=value"; none: PATH and HOME */
	size_t n_env;
	const char *cwd;              /* NULL: "/" */
	bool created_only;            /* created, not started: lm_guest_start
					 starts it (task Create, then Start) */
	const char *hostname;         /* NULL: guest_id */
	const char *stdout_path;      /* "" or NULL: dropped */
	const char *stderr_path;
	const char *stdin_path;       /* "" or NULL: /dev/null; else a FIFO
					 (containerd's) or file read into the
					 init's stdin until its end */
	bool terminal;                /* a pty: stdout carries both streams */
	uint16_t width, height;       /* the pty's size, 0: the agent's */
	uint64_t memory_max;          /* its cgroup's memory.max, 0: none */
};

/* Thread: any. A guest whose agent answers on `agent_socket` (QEMU's
 * chardev socket); the connection is made by the worker's first job,
 * within timeout_ns, and its failure fails every job queued behind it.
 * 0, -ENOMEM, -errno (thread). */
int lm_guest_open(lm_guest_t **out, const char *agent_socket, int64_t timeout_ns,
		  const struct lm_guest_cbs *cbs);

/* Thread: any but the worker and pumps. Drops the connection (a call in
 * flight fails at once), completes every queued job with -ECANCELED,
 * ends every watch (drop), joins the threads and frees. NULL is a no-op.
 * The guest's processes are not touched. */
void lm_guest_close(lm_guest_t *g);

/* Thread: any. Queue a job; `done(ctx, ...)` is called exactly once
 * (also when the guest closes first) unless the queueing itself failed
 * (-ENOMEM, -EPIPE when closing), which then returns the error and calls
 * nothing. */

/* Create, start and watch a container. Once queued, exit_ctx comes back
 * exactly once: to cbs.exit when the init exits, else to cbs.drop (the
 * job failed, the watch ended, the guest closed). */
int lm_guest_create(lm_guest_t *g, const struct lm_guest_ctr_spec *spec, void *exit_ctx,
		    lm_guest_done_fn done, void *ctx);
/* Start a container created with created_only; done gets its pid. */
int lm_guest_start(lm_guest_t *g, const char *guest_id, lm_guest_done_fn done, void *ctx);
/* Watch a process that already runs in this guest (a migration's
 * destination): its output from where the previous host's ended, its
 * stdin (if it has one) from stdin_path on. */
int lm_guest_adopt(lm_guest_t *g, const char *guest_id, const char *exec_id, const char *stdout_path,
		   const char *stderr_path, const char *stdin_path, void *exit_ctx,
		   lm_guest_done_fn done, void *ctx);
/* Closes a process's stdin (its reader sees the end; the shim reads no
 * more of its stdin file). */
int lm_guest_close_stdin(lm_guest_t *g, const char *guest_id, const char *exec_id,
			 lm_guest_done_fn done, void *ctx);
/* Resizes a process's terminal. */
int lm_guest_resize(lm_guest_t *g, const char *guest_id, const char *exec_id, uint16_t width,
		    uint16_t height, lm_guest_done_fn done, void *ctx);
/* A signal to a process (all, for the init: every process of the
 * container). */
int lm_guest_kill(lm_guest_t *g, const char *guest_id, const char *exec_id, int sig, bool all,
		  lm_guest_done_fn done, void *ctx);

/* An extra process in a running container (task Exec, then Start): the
 * agent starts it at once in the container's namespaces and cgroup.
 * Strings are copied. */
struct lm_guest_exec_spec {
	const char *guest_id;         /* its container */
	const char *exec_id;          /* 1..64 of [A-Za-z0-9_.-], unique in it */
	const char *const *args;      /* argv (n_args >= 1) */
	size_t n_args;
	const char *const *env;       /* none: PATH and HOME */
	size_t n_env;
	const char *cwd;              /* NULL: "/" */
	const char *stdin_path, *stdout_path, *stderr_path;   /* as the init's */
	bool terminal;
	uint16_t width, height;
};
/* Starts and watches an exec'd process; done gets its guest PID. Once
 * queued, exit_ctx comes back exactly once (cbs.exit or cbs.drop), as
 * lm_guest_create's. A process whose watch cannot be set up is killed
 * and forgotten (the job fails). */
int lm_guest_exec(lm_guest_t *g, const struct lm_guest_exec_spec *spec, void *exit_ctx,
		  lm_guest_done_fn done, void *ctx);
/* Ends the watch of an exec'd process and has the agent forget it (its
 * exit status). done may be NULL. */
int lm_guest_delete_exec(lm_guest_t *g, const char *guest_id, const char *exec_id,
			 lm_guest_done_fn done, void *ctx);
/* The processes of a container (its init and everything in its PID
 * namespace): done gets them on the worker thread, valid during the call
 * (NULL, 0 on failure). */
typedef void (*lm_guest_ps_fn)(void *ctx, int err, const char *why, const struct lm_agent_ps_entry *e,
			       size_t n);
int lm_guest_ps(lm_guest_t *g, const char *guest_id, lm_guest_ps_fn done, void *ctx);
/* A container's cgroup figures (CPU, memory, PIDs): done gets them on
 * the worker thread (NULL on failure). */
typedef void (*lm_guest_stats_fn)(void *ctx, int err, const char *why, const struct lm_agent_stats *st);
int lm_guest_stats(lm_guest_t *g, const char *guest_id, lm_guest_stats_fn done, void *ctx);
/* Sets a container's cgroup limits (those u sets). */
int lm_guest_update(lm_guest_t *g, const char *guest_id, const struct lm_agent_update *u,
		    lm_guest_done_fn done, void *ctx);
/* Freezes every process of a container (its cgroup's freezer), or thaws
 * them (thaw). */
int lm_guest_freeze(lm_guest_t *g, const char *guest_id, bool thaw, lm_guest_done_fn done, void *ctx);
/* Ends the watches (the init's and its exec'd processes') and deletes the
 * container in the guest (whatever is left of it is killed, its mounts
 * and cgroup removed). done may be NULL. */
int lm_guest_forget(lm_guest_t *g, const char *guest_id, lm_guest_done_fn done, void *ctx);

/* Thread: any. Suspend (a job, after those queued): the acknowledgements
 * of output in flight finish, then the agent's connection is dropped
 * (watches wait; output and exits stay in the agent); resume: it is made
 * again (a job). While a
 * live migration copies the guest, its port to the host is kept quiet
 * this way: with bytes moving on the virtio-serial port during the copy,
 * QEMU 7.2 under TCG handed over guests whose kernel crashed right after
 * resume (hcs/qemu/README.md). resume of a guest not suspended is a
 * no-op; both return 0 or -errno. */
int lm_guest_suspend(lm_guest_t *g);
int lm_guest_resume(lm_guest_t *g);

/* Thread: any. The agent's guest boot ID once connected, else "". */
void lm_guest_boot_id(lm_guest_t *g, char *buf, size_t len);

#endif
