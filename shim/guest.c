/*
 * guest.c: the shim's side of the guest agent (guest.h): a job queue run
 * by one worker thread, and one handover watch per process (a container's
 * init, or a process exec'd in it: keyed by guest_id and exec ID).
 *
 * Jobs run strictly in the order they were queued. The first is always
 * the connection; if it fails, every later job fails with its reason.
 * Close marks the guest closing (no new job), disconnects the agent so
 * that a call in flight returns at once, lets the worker drain the queue
 * with -ECANCELED, joins it, then ends the watches.
 */
#include "shim/guest.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "util/clock.h"

#define MOD "guest"
#define CALL_NS 30000000000ll        /* one agent call (create mounts a disk) */
#define CONNECT_SLICE_NS 1000000000ll /* connect attempts between looks at closing */
#define SUSPEND_NS 2000000000ll      /* acknowledgements in flight, at a suspend */

enum job_kind { JOB_CONNECT, JOB_CREATE, JOB_START, JOB_ADOPT, JOB_KILL, JOB_FORGET, JOB_RECONNECT,
		JOB_SUSPEND, JOB_PS, JOB_FREEZE, JOB_STATS, JOB_CLOSE_STDIN, JOB_RESIZE, JOB_EXEC,
		JOB_DELETE_EXEC, JOB_UPDATE };

struct job {
	struct job *next;
	enum job_kind kind;
	char id[72];
	char exec[72];                /* the exec'd process, "" = the init */
	char *layers[LM_GUEST_MAX_LAYERS];
	unsigned n_layers;
	char *hostname, *out, *err, *in;
	bool terminal;
	uint16_t width, height;       /* JOB_CREATE, JOB_RESIZE */
	char **args, **env;
	size_t n_args, n_env;
	char *cwd;
	bool created_only;            /* JOB_CREATE: JOB_START starts it */
	uint64_t memory_max;          /* JOB_CREATE: the cgroup's limit, 0: none */
	int sig;
	bool all;
	bool thaw;                    /* JOB_FREEZE: resume instead */
	void *exit_ctx;
	lm_guest_done_fn done;
	lm_guest_ps_fn ps_done;       /* JOB_PS: instead of done */
	struct lm_agent_ps_entry *ps; /* JOB_PS: the agent's answer */
	size_t n_ps;
	lm_guest_stats_fn stats_done; /* JOB_STATS: instead of done */
	struct lm_agent_stats stats;
	struct lm_agent_update upd;   /* JOB_UPDATE */
	void *ctx;
};

struct watch {
	struct watch *next;
	lm_guest_t *g;
	char id[72];
	char exec[72];                /* "" = the init */
	lm_agent_proc_t *proc;
	int out_fd, err_fd;
	int in_fd;                    /* the stdin file, -1: none */
	int in_wake[2];               /* wakes the pump's poll (stop, hold, release) */
	pthread_t in_th;
	bool in_running;              /* the pump was started (joined at the end) */
	atomic_bool in_stop;
	atomic_bool in_hold;          /* a suspend: read no more of the file */
	atomic_bool in_busy;          /* the pump holds bytes the agent has not
	                                 taken (or is about to read some) */
	void *exit_ctx;
	atomic_bool fired;            /* cbs.exit ran (pump thread); read after
					 the pump was joined, or to skip twice */
};

struct lm_guest {
	struct lm_guest_cbs cbs;
	char socket[108];
	int64_t connect_ns;
	pthread_t worker;

	pthread_mutex_t mu;           /* guards the fields below */
	pthread_cond_t cv;
	struct job *head, *tail;
	bool closing;
	struct watch *watches;
	char boot_id[40];
	bool connected;               /* agent set (by the worker, once) */
	bool suspended;               /* lm_guest_suspend, until the reconnect job */

	/* the worker's (set once under mu; close disconnects it under mu) */
	lm_agent_t *agent;
	int conn_err;                 /* the connection's failure, 0 */
	char conn_why[200];
};

/* ---- helpers ---------------------------------------------------------- */

static void job_free(struct job *j)
{
	if (!j)
		return;
	for (unsigned i = 0; i < j->n_layers; i++)
		free(j->layers[i]);
	for (size_t i = 0; j->env && i < j->n_env; i++)
		free(j->env[i]);
	free(j->env);
	free(j->cwd);
	free(j->hostname);
	free(j->out);
	free(j->err);
	free(j->in);
	for (size_t i = 0; i < j->n_args; i++)
		free(j->args[i]);
	free(j->args);
	free(j->ps);
	free(j);
}

static char *dup_or_null(const char *s, bool *oom)
{
	if (!s || !*s)
		return NULL;
	char *d = strdup(s);
	if (!d)
		*oom = true;
	return d;
}

static int push(lm_guest_t *g, struct job *j)
{
	pthread_mutex_lock(&g->mu);
	if (g->closing) {
		pthread_mutex_unlock(&g->mu);
		job_free(j);
		return -EPIPE;
	}
	if (g->tail)
		g->tail->next = j;
	else
		g->head = j;
	g->tail = j;
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
	return 0;
}

/* Queues a job that starts a watch: its stdio files and exit context
 * (oom: the job's filling already ran out of memory). */
static int push_watched(lm_guest_t *g, struct job *j, bool oom, const char *out, const char *err,
			const char *in, void *exit_ctx)
{
	j->out = dup_or_null(out, &oom);
	j->err = dup_or_null(err, &oom);
	j->in = dup_or_null(in, &oom);
	if (oom) {
		job_free(j);
		return -ENOMEM;
	}
	j->exit_ctx = exit_ctx;
	return push(g, j);
}

static struct job *job_new(enum job_kind kind, const char *id, lm_guest_done_fn done, void *ctx)
{
	if (id && strlen(id) > LM_GUEST_ID_LEN)
		return NULL;
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->kind = kind;
	snprintf(j->id, sizeof j->id, "%s", id ? id : "");
	j->done = done;
	j->ctx = ctx;
	return j;
}

/* A job about process (guest_id, exec_id), exec_id NULL or "" for the
 * init; *err -EINVAL (a name empty or too long) or -ENOMEM when NULL. */
static struct job *job_for(enum job_kind kind, const char *guest_id, const char *exec_id,
			   lm_guest_done_fn done, void *ctx, int *err)
{
	*err = -EINVAL;
	if (!guest_id || !*guest_id || strlen(guest_id) > LM_GUEST_ID_LEN ||
	    (exec_id && strlen(exec_id) > LM_GUEST_ID_LEN))
		return NULL;
	*err = -ENOMEM;
	struct job *j = job_new(kind, guest_id, done, ctx);
	if (j)
		snprintf(j->exec, sizeof j->exec, "%s", exec_id ? exec_id : "");
	return j;
}

/* The exec ID for the agent's calls: NULL for the init. */
static const char *exec_arg(const char *exec)
{
	return exec[0] ? exec : NULL;
}

/* Copies a process's argv, env and cwd into j; false when out of memory. */
static bool job_process(struct job *j, const char *const *args, size_t n_args, const char *const *env,
			size_t n_env, const char *cwd)
{
	bool oom = false;
	j->args = calloc(n_args, sizeof(char *));
	oom |= !j->args;
	for (size_t i = 0; j->args && i < n_args; i++, j->n_args++)
		if (!(j->args[i] = strdup(args[i] ? args[i] : "")))
			oom = true;
	if (n_env) {
		j->env = calloc(n_env, sizeof(char *));
		oom |= !j->env;
		for (size_t i = 0; j->env && i < n_env; i++, j->n_env++)
			if (!(j->env[i] = strdup(env[i] ? env[i] : "")))
				oom = true;
	}
	j->cwd = dup_or_null(cwd, &oom);
	return !oom;
}

/* A stdio file of a container: a file (appended) or a FIFO with a reader
 * (containerd's); opened without following a link and without waiting.
 * *fd gets it, or -1 for no path (the output is dropped). 0 or -errno,
 * with why naming the file. */
static int open_stdio(const char *path, int *fd, char *why, size_t whylen)
{
	*fd = -1;
	if (!path || !*path)
		return 0;
	int f = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0640);
	if (f < 0) {
		int e = errno;
		snprintf(why, whylen, "stdio file %s: %s", path, strerror(e));
		return -e;
	}
	int fl = fcntl(f, F_GETFL);
	if (fl >= 0)
		(void)fcntl(f, F_SETFL, fl & ~O_NONBLOCK);
	*fd = f;
	return 0;
}

/* ---- watches ------------------------------------------------------------ */

static void on_exit_cb(void *arg, const struct lm_agent_exit *e)
{
	struct watch *w = arg;
	bool was = atomic_exchange(&w->fired, true);
	if (!was && w->g->cbs.exit)
		w->g->cbs.exit(w->exit_ctx, w->id, e);   /* (exit_ctx names the exec) */
}

static void on_oom_cb(void *arg, uint64_t oom_kills)
{
	struct watch *w = arg;
	if (!w->exec[0] && w->g->cbs.oom)   /* (the init's watch: the container's count) */
		w->g->cbs.oom(w->g->cbs.arg, w->id, oom_kills);
}

#define STDIN_CHUNK 32768
#define STDIN_RETRY_NS 100000000ll    /* a write refused while disconnected */

/* Sleeps on the pump's wake pipe for at most ms (-1: until woken) and
 * drains it: a wake is a stop, a hold or a release, which the caller's
 * loop looks at. */
static void pump_nap(struct watch *w, int ms)
{
	struct pollfd z = { w->in_wake[0], POLLIN, 0 };
	if (poll(&z, 1, ms) > 0) {
		char b[16];
		if (read(w->in_wake[0], b, sizeof b) < 0) { /* drained */ }
	}
}

/* The stdin pump's thread: the stdin file into the init's stdin until
 * the file ends (then the init's stdin is closed), the watch ends, or
 * CloseIO. A FIFO opened without a writer shows no end until a writer
 * came and went (Linux), so it waits for containerd's. It reads no more
 * than the agent says it would take: what it read is the agent's within
 * one call (in guest memory, where it moves with the guest), and the rest
 * waits in the file; a suspend (stdin_hold) then finds it idle at once. */
static void *stdin_pump(void *arg)
{
	struct watch *w = arg;
	uint8_t *buf = malloc(STDIN_CHUNK);
	bool eof = false;
	uint64_t room = 0;
	bool ask = true;
	int full_ms = 10;        /* asking a full agent again: 10 ms, doubling to 500 */
	while (buf && !atomic_load(&w->in_stop)) {
		if (atomic_load(&w->in_hold)) {
			pump_nap(w, -1);
			ask = true;
			continue;
		}
		if (ask || room == 0) {
			/* how much the agent takes now (while the connection is
			 * down, a migration's copy: again every 100 ms) */
			int rc = lm_agent_proc_stdin_room(w->proc, true, &room, CALL_NS);
			ask = rc != 0;
			if (rc) {
				pump_nap(w, (int)(STDIN_RETRY_NS / 1000000));
				continue;
			}
			if (room == 0) {   /* the process is not reading */
				pump_nap(w, full_ms);
				full_ms = full_ms < 250 ? full_ms * 2 : 500;
				continue;
			}
			full_ms = 10;
		}
		struct pollfd q[2] = { { w->in_fd, POLLIN, 0 }, { w->in_wake[0], POLLIN, 0 } };
		if (poll(q, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (q[1].revents) {
			pump_nap(w, 0);
			continue;
		}
		/* busy before the hold is looked at: a suspend that saw the
		 * pump idle after holding it knows no read follows */
		atomic_store(&w->in_busy, true);
		if (atomic_load(&w->in_hold) || atomic_load(&w->in_stop)) {
			atomic_store(&w->in_busy, false);
			continue;
		}
		size_t want = room < STDIN_CHUNK ? (size_t)room : STDIN_CHUNK;
		ssize_t n = read(w->in_fd, buf, want);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			atomic_store(&w->in_busy, false);
			continue;
		}
		if (n <= 0) {
			atomic_store(&w->in_busy, false);
			eof = n == 0;
			if (n < 0)
				lm_log_warn(MOD, "stdin read failed", "id=%s err=%d", w->id, errno);
			break;
		}
		/* exactly once, across a reconnect (the agent skips what it
		 * took); while the connection is down, again every 100 ms */
		int rc;
		while ((rc = lm_agent_proc_write(w->proc, buf, (size_t)n, CALL_NS)) != 0 &&
		       (rc == -ENOTCONN || rc == -EPIPE) && !atomic_load(&w->in_stop))
			pump_nap(w, (int)(STDIN_RETRY_NS / 1000000));
		atomic_store(&w->in_busy, false);
		if (rc) {
			if (!atomic_load(&w->in_stop))
				lm_log_warn(MOD, "stdin not delivered", "id=%s err=%d", w->id, rc);
			else
				lm_log_warn(MOD, "stdin bytes read here were not delivered before the guest left",
					    "id=%s exec=%s bytes=%zd", w->id, w->exec, n);
			break;
		}
		(void)lm_agent_proc_stdin_room(w->proc, false, &room, 0);   /* its answer's figure */
		if (room == UINT64_MAX)
			room = STDIN_CHUNK;      /* an agent that does not say: as before */
	}
	free(buf);
	if (eof && !atomic_load(&w->in_stop)) {
		/* the writer is done: so is the init's stdin (a job: in order
		 * after the writes, on the worker) */
		lm_log_info(MOD, "stdin ended", "id=%s exec=%s", w->id, w->exec);
		(void)lm_guest_close_stdin(w->g, w->id, w->exec, NULL, NULL);
	}
	return NULL;
}

/* Worker. hold: every stdin pump stops reading its file, and the bytes
 * it read are given to the agent (within SUSPEND_NS: a process that does
 * not read its stdin while the agent's buffer is full keeps them; they
 * are said lost if the guest leaves). !hold: the pumps read on. */
static void stdin_hold(lm_guest_t *g, bool hold)
{
	pthread_mutex_lock(&g->mu);
	for (struct watch *w = g->watches; w; w = w->next) {
		if (!w->in_running)
			continue;
		atomic_store(&w->in_hold, hold);
		if (write(w->in_wake[1], "h", 1) < 0) { /* the pump looks anyway */ }
	}
	pthread_mutex_unlock(&g->mu);
	/* (the list changes only on this thread, the worker's) */
	uint64_t until = lm_now_ns() + (uint64_t)SUSPEND_NS;
	for (struct watch *w = g->watches; hold && w; w = w->next) {
		while (w->in_running && atomic_load(&w->in_busy) && lm_now_ns() < until) {
			struct timespec ts = {0, 2000000};
			nanosleep(&ts, NULL);
		}
		if (w->in_running && atomic_load(&w->in_busy))
			lm_log_warn(MOD, "stdin still in flight at the suspend", "id=%s exec=%s", w->id, w->exec);
	}
}

/* Opens the stdin file (no link followed, no waiting for a writer) and
 * starts the pump. 0 or -errno with why. */
static int stdin_start(struct watch *w, const char *path, char *why, size_t whylen)
{
	w->in_fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	if (w->in_fd < 0) {
		int e = errno;
		snprintf(why, whylen, "stdin file %s: %s", path, strerror(e));
		return -e;
	}
	if (pipe2(w->in_wake, O_CLOEXEC) < 0) {
		int e = errno;
		close(w->in_fd);
		w->in_fd = -1;
		snprintf(why, whylen, "stdin pump: %s", strerror(e));
		return -e;
	}
	if (pthread_create(&w->in_th, NULL, stdin_pump, w) != 0) {
		close(w->in_fd);
		close(w->in_wake[0]);
		close(w->in_wake[1]);
		w->in_fd = -1;
		snprintf(why, whylen, "stdin pump: no thread");
		return -EAGAIN;
	}
	w->in_running = true;
	return 0;
}

/* Not the pump's thread. Stops and joins the pump (idempotent). */
static void stdin_stop(struct watch *w)
{
	if (!w->in_running)
		return;
	atomic_store(&w->in_stop, true);
	if (write(w->in_wake[1], "x", 1) < 0) { /* the pipe is ours: cannot fill */ }
	pthread_join(w->in_th, NULL);
	w->in_running = false;
	close(w->in_fd);
	close(w->in_wake[0]);
	close(w->in_wake[1]);
	w->in_fd = -1;
}

/* Closes a watch's stdio files and frees it (its pumps are stopped). */
static void watch_free(struct watch *w)
{
	if (w->out_fd >= 0)
		close(w->out_fd);
	if (w->err_fd >= 0)
		close(w->err_fd);
	free(w);
}

/* Worker. Starts a watch of j's container; 0 (the watch took
 * j->exit_ctx) or -errno with why. */
static int watch_start(lm_guest_t *g, struct job *j, char *why, size_t whylen)
{
	const char *id = j->id, *out = j->out, *err = j->err;
	void *exit_ctx = j->exit_ctx;
	struct watch *w = calloc(1, sizeof(*w));
	if (!w) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	w->g = g;
	snprintf(w->id, sizeof w->id, "%s", id);
	snprintf(w->exec, sizeof w->exec, "%s", j->exec);
	w->exit_ctx = exit_ctx;
	w->in_fd = w->out_fd = w->err_fd = -1;
	int rc = open_stdio(out, &w->out_fd, why, whylen);
	if (!rc)
		rc = open_stdio(err, &w->err_fd, why, whylen);
	if (rc) {
		watch_free(w);
		return rc;
	}
	struct lm_agent_io_cbs io = {
		.exit = on_exit_cb, .oom = on_oom_cb, .out_fd = w->out_fd, .err_fd = w->err_fd, .arg = w,
		.handover = true,
	};
	rc = lm_agent_watch(g->agent, id, exec_arg(j->exec), &io, &w->proc);
	if (rc) {
		snprintf(why, whylen, "watching its output: %s", strerror(-rc));
		watch_free(w);
		return rc;
	}
	if (j->in && (rc = stdin_start(w, j->in, why, whylen)) != 0 && j->kind == JOB_ADOPT) {
		/* a migration's destination: the output matters more than a
		 * stdin it cannot read (its patch named a file it lacks) */
		lm_log_warn(MOD, "stdin not read", "id=%s why=\"%s\"", id, why);
		why[0] = 0;
		rc = 0;
	}
	if (rc) {
		lm_agent_unwatch(w->proc);
		watch_free(w);
		return rc;
	}
	pthread_mutex_lock(&g->mu);
	w->next = g->watches;
	g->watches = w;
	pthread_mutex_unlock(&g->mu);
	j->exit_ctx = NULL;
	return 0;
}

/* Not the pump's thread. Ends a watch that was taken off the list. */
static void watch_end(lm_guest_t *g, struct watch *w)
{
	stdin_stop(w);                        /* it writes through w->proc */
	lm_agent_unwatch(w->proc);            /* joins the pump */
	if (!atomic_load(&w->fired) && g->cbs.drop)
		g->cbs.drop(w->exit_ctx);
	watch_free(w);
}

/* Takes the watch of process (id, exec) off the list; exec NULL: of any
 * process of container id. */
static struct watch *watch_take(lm_guest_t *g, const char *id, const char *exec)
{
	pthread_mutex_lock(&g->mu);
	struct watch **pp = &g->watches, *w = NULL;
	while (*pp && (strcmp((*pp)->id, id) || (exec && strcmp((*pp)->exec, exec))))
		pp = &(*pp)->next;
	if (*pp) {
		w = *pp;
		*pp = w->next;
	}
	pthread_mutex_unlock(&g->mu);
	return w;
}

/* ---- the worker ------------------------------------------------------------ */

static int agent_err(int rc, const char *call, char *why, size_t whylen)
{
	const char *m = NULL;
	if (lm_agent_last_error(&m) && m && *m)
		snprintf(why, whylen, "the guest agent's %s: %s", call, m);
	else
		snprintf(why, whylen, "the guest agent's %s: %s", call, strerror(-rc));
	return rc;
}

/* agent_err naming the container: the reason is all a task call's
 * answer is made from. */
static int ctr_err(int rc, const char *call, const char *id, char *why, size_t whylen)
{
	char c[100];
	snprintf(c, sizeof c, "%s of container %s", call, id);
	return agent_err(rc, c, why, whylen);
}

static int run_create(lm_guest_t *g, struct job *j, uint32_t *pid, char *why, size_t whylen)
{
	struct lm_agent_layer layers[LM_GUEST_MAX_LAYERS];
	for (unsigned i = 0; i < j->n_layers; i++)
		layers[i] = (struct lm_agent_layer){j->layers[i], NULL};
	struct lm_agent_container_spec s = {
		.id = j->id, .layers = layers, .n_layers = j->n_layers, .hostname = j->hostname,
		.memory_max = j->memory_max,
		.process = {
			.args = (const char *const *)j->args, .n_args = j->n_args,
			.env = j->n_env ? (const char *const *)j->env
					: (const char *const[]){"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/"},
			.n_env = j->n_env ? j->n_env : 2,
			.cwd = j->cwd,
			.terminal = j->terminal,
			.open_stdin = j->in != NULL,
			.width = j->width, .height = j->height,
		},
	};
	int rc = lm_agent_create(g->agent, &s, pid, CALL_NS);
	if (rc)
		return agent_err(rc, "CreateContainer", why, whylen);
	rc = watch_start(g, j, why, whylen);
	if (rc == 0 && !j->created_only) {
		rc = lm_agent_start(g->agent, j->id, pid, CALL_NS);
		if (rc) {
			agent_err(rc, "Start", why, whylen);
			struct watch *w = watch_take(g, j->id, "");
			if (w)
				watch_end(g, w);          /* drops the exit context */
		}
	}
	if (rc)
		(void)lm_agent_delete_container(g->agent, j->id, NULL, CALL_NS);
	return rc;
}

/* An exec'd process: started by the agent at once, then watched; if the
 * watch cannot be set up, the process is killed and forgotten (nobody
 * would learn of its exit). */
static int run_exec(lm_guest_t *g, struct job *j, uint32_t *pid, char *why, size_t whylen)
{
	struct lm_agent_process_spec ps = {
		.args = (const char *const *)j->args, .n_args = j->n_args,
		.env = j->n_env ? (const char *const *)j->env
				: (const char *const[]){"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/"},
		.n_env = j->n_env ? j->n_env : 2,
		.cwd = j->cwd, .terminal = j->terminal, .open_stdin = j->in != NULL,
		.width = j->width, .height = j->height,
	};
	char c[200];
	snprintf(c, sizeof c, "Exec of %s in container %s", j->exec, j->id);
	int rc = lm_agent_exec(g->agent, j->id, j->exec, &ps, pid, CALL_NS);
	if (rc)
		return agent_err(rc, c, why, whylen);
	rc = watch_start(g, j, why, whylen);
	if (rc) {
		struct lm_agent_exit e;
		(void)lm_agent_kill(g->agent, j->id, j->exec, 9, false, CALL_NS);
		if (lm_agent_wait(g->agent, j->id, j->exec, &e, CALL_NS) == 0)
			(void)lm_agent_delete_process(g->agent, j->id, j->exec, NULL, CALL_NS);
	}
	return rc;
}

static int run_job(lm_guest_t *g, struct job *j, uint32_t *pid, char *why, size_t whylen)
{
	int rc;
	if (j->kind == JOB_CONNECT) {
		/* in slices, so that a close does not wait for the deadline */
		lm_agent_t *a = NULL;
		uint64_t end = lm_now_ns() + (uint64_t)g->connect_ns;
		do {
			int64_t left = (int64_t)(end - lm_now_ns());
			rc = lm_agent_connect(&a, g->socket, left < CONNECT_SLICE_NS ? left : CONNECT_SLICE_NS);
			pthread_mutex_lock(&g->mu);
			bool closing = g->closing;
			pthread_mutex_unlock(&g->mu);
			if (closing && rc) {
				snprintf(why, whylen, "the guest's connection is closing");
				return -ECANCELED;
			}
		} while (rc == -ETIMEDOUT && lm_now_ns() < end);
		if (rc == -ETIMEDOUT) {
			snprintf(why, whylen, "no guest agent answered on %s within %lld ms", g->socket,
				 (long long)(g->connect_ns / 1000000));
			return rc;
		}
		if (rc) {
			snprintf(why, whylen, "connecting to the guest agent on %s: %s", g->socket,
				 strerror(-rc));
			return rc;
		}
		pthread_mutex_lock(&g->mu);
		g->agent = a;
		g->connected = true;
		if (g->closing)
			lm_agent_disconnect(a);
		snprintf(g->boot_id, sizeof g->boot_id, "%s", lm_agent_boot_id(a));
		pthread_mutex_unlock(&g->mu);
		lm_log_info(MOD, "agent connected", "socket=%s boot_id=%s", g->socket, g->boot_id);
		return 0;
	}
	if (g->conn_err) {
		snprintf(why, whylen, "%s", g->conn_why);
		return g->conn_err;
	}
	switch (j->kind) {
	case JOB_CREATE:
		return run_create(g, j, pid, why, whylen);
	case JOB_START:
		rc = lm_agent_start(g->agent, j->id, pid, CALL_NS);
		return rc ? agent_err(rc, "Start", why, whylen) : 0;
	case JOB_ADOPT:
		return watch_start(g, j, why, whylen);
	case JOB_EXEC:
		return run_exec(g, j, pid, why, whylen);
	case JOB_DELETE_EXEC: {
		struct watch *w = watch_take(g, j->id, j->exec);
		if (w)
			watch_end(g, w);
		rc = lm_agent_delete_process(g->agent, j->id, j->exec, NULL, CALL_NS);
		if (rc == -ENOENT)
			rc = 0;
		return rc ? ctr_err(rc, "DeleteProcess", j->id, why, whylen) : 0;
	}
	case JOB_KILL:
		rc = lm_agent_kill(g->agent, j->id, exec_arg(j->exec), j->sig, j->all, CALL_NS);
		return rc ? agent_err(rc, "Kill", why, whylen) : 0;
	case JOB_PS:
		rc = lm_agent_ps(g->agent, j->id, &j->ps, &j->n_ps, CALL_NS);
		return rc ? ctr_err(rc, "Ps", j->id, why, whylen) : 0;
	case JOB_STATS:
		rc = lm_agent_stats(g->agent, j->id, &j->stats, CALL_NS);
		return rc ? ctr_err(rc, "Stats", j->id, why, whylen) : 0;
	case JOB_UPDATE:
		rc = lm_agent_update(g->agent, j->id, &j->upd, CALL_NS);
		return rc ? ctr_err(rc, "Update", j->id, why, whylen) : 0;
	case JOB_FREEZE:
		rc = j->thaw ? lm_agent_resume(g->agent, j->id, CALL_NS) : lm_agent_pause(g->agent, j->id, CALL_NS);
		return rc ? ctr_err(rc, j->thaw ? "Resume" : "Pause", j->id, why, whylen) : 0;
	case JOB_SUSPEND:
		/* the stdin pumps read no more, and what they read reaches the
		 * agent (guest memory: it moves with the guest) while the
		 * connection is up; then acknowledgements in flight finish (the
		 * guest runs): the next host starts exactly where this one
		 * stopped */
		stdin_hold(g, true);
		rc = lm_agent_disconnect_quiet(g->agent, SUSPEND_NS);
		lm_log_info(MOD, "agent connection suspended", "socket=%s quiet=%s", g->socket,
			    rc ? "no (timed out)" : "yes");
		return 0;
	case JOB_RECONNECT:
		rc = lm_agent_reconnect(g->agent, g->socket, g->connect_ns);
		stdin_hold(g, false);    /* the guest is this host's again */
		if (rc)
			snprintf(why, whylen, "the guest agent on %s did not answer again: %s", g->socket,
				 strerror(-rc));
		else
			lm_log_info(MOD, "agent connected again", "socket=%s", g->socket);
		return rc;
	case JOB_CLOSE_STDIN: {
		/* the pump reads no more (this job may be its own: it only
		 * sets the flag then, and ends by itself) */
		pthread_mutex_lock(&g->mu);
		for (struct watch *w = g->watches; w; w = w->next)
			if (!strcmp(w->id, j->id) && !strcmp(w->exec, j->exec) && w->in_running) {
				atomic_store(&w->in_stop, true);
				if (write(w->in_wake[1], "x", 1) < 0) { /* one byte is enough */ }
			}
		pthread_mutex_unlock(&g->mu);
		rc = lm_agent_close_stdin(g->agent, j->id, exec_arg(j->exec), CALL_NS);
		return rc ? ctr_err(rc, "CloseStdin", j->id, why, whylen) : 0;
	}
	case JOB_RESIZE:
		rc = lm_agent_resize(g->agent, j->id, exec_arg(j->exec), j->width, j->height, CALL_NS);
		return rc ? ctr_err(rc, "ResizePty", j->id, why, whylen) : 0;
	case JOB_FORGET: {
		struct watch *w;
		while ((w = watch_take(g, j->id, NULL)) != NULL)   /* the init's and the execs' */
			watch_end(g, w);
		rc = lm_agent_delete_container(g->agent, j->id, NULL, CALL_NS);
		if (rc == -ENOENT)
			rc = 0;
		return rc ? agent_err(rc, "DeleteContainer", why, whylen) : 0;
	}
	default:
		return -EINVAL;
	}
}

static void *worker_main(void *arg)
{
	lm_guest_t *g = arg;
	for (;;) {
		pthread_mutex_lock(&g->mu);
		while (!g->head && !g->closing)
			pthread_cond_wait(&g->cv, &g->mu);
		struct job *j = g->head;
		if (j) {
			g->head = j->next;
			if (!g->head)
				g->tail = NULL;
		}
		bool closing = g->closing;
		pthread_mutex_unlock(&g->mu);
		if (!j)
			return NULL;
		char why[256] = "";
		uint32_t pid = 0;
		int rc;
		if (closing) {
			rc = -ECANCELED;
			snprintf(why, sizeof why, "the guest's connection is closing");
		} else {
			rc = run_job(g, j, &pid, why, sizeof why);
			if (rc) {
				/* a close that cut the call is no failure of the call */
				pthread_mutex_lock(&g->mu);
				closing = g->closing;
				pthread_mutex_unlock(&g->mu);
				if (closing) {
					rc = -ECANCELED;
					snprintf(why, sizeof why, "the guest's connection closed");
				}
			}
		}
		if (j->kind == JOB_CONNECT && rc) {
			g->conn_err = rc;
			snprintf(g->conn_why, sizeof g->conn_why, "%s", why);
		}
		if (rc && !closing)
			lm_log_warn(MOD, "agent call failed", "id=%s job=%d err=%d why=\"%s\"", j->id,
				    (int)j->kind, rc, why);
		if (j->exit_ctx && g->cbs.drop)   /* no watch took it */
			g->cbs.drop(j->exit_ctx);
		if (j->ps_done)
			j->ps_done(j->ctx, rc, why, rc ? NULL : j->ps, rc ? 0 : j->n_ps);
		else if (j->stats_done)
			j->stats_done(j->ctx, rc, why, rc ? NULL : &j->stats);
		else if (j->done)
			j->done(j->ctx, rc, why, pid);
		job_free(j);
	}
}

/* ---- public ----------------------------------------------------------------- */

int lm_guest_open(lm_guest_t **out, const char *agent_socket, int64_t timeout_ns,
		  const struct lm_guest_cbs *cbs)
{
	if (!agent_socket || strlen(agent_socket) >= sizeof(((lm_guest_t *)0)->socket))
		return -EINVAL;
	lm_guest_t *g = calloc(1, sizeof(*g));
	struct job *j = job_new(JOB_CONNECT, NULL, NULL, NULL);
	if (!g || !j) {
		free(g);
		job_free(j);
		return -ENOMEM;
	}
	g->cbs = *cbs;
	snprintf(g->socket, sizeof g->socket, "%s", agent_socket);
	g->connect_ns = timeout_ns;
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	g->head = g->tail = j;
	int rc = pthread_create(&g->worker, NULL, worker_main, g);
	if (rc) {
		job_free(j);
		pthread_mutex_destroy(&g->mu);
		pthread_cond_destroy(&g->cv);
		free(g);
		return -rc;
	}
	*out = g;
	return 0;
}

void lm_guest_close(lm_guest_t *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->mu);
	g->closing = true;
	pthread_cond_signal(&g->cv);
	/* a call in flight fails at once (a connect in progress gives up
	 * within a slice) */
	if (g->connected)
		lm_agent_disconnect(g->agent);
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->worker, NULL);
	pthread_mutex_lock(&g->mu);
	struct watch *w = g->watches;
	g->watches = NULL;
	pthread_mutex_unlock(&g->mu);
	while (w) {
		struct watch *n = w->next;
		watch_end(g, w);
		w = n;
	}
	if (g->agent)
		lm_agent_close(g->agent);
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->cv);
	free(g);
}

int lm_guest_create(lm_guest_t *g, const struct lm_guest_ctr_spec *spec, void *exit_ctx,
		    lm_guest_done_fn done, void *ctx)
{
	if (!spec->guest_id || !*spec->guest_id || !spec->n_layers || !spec->layer_serials ||
	    spec->n_layers > LM_GUEST_MAX_LAYERS || !spec->n_args)
		return -EINVAL;
	for (unsigned i = 0; i < spec->n_layers; i++)
		if (!spec->layer_serials[i] || !*spec->layer_serials[i])
			return -EINVAL;
	struct job *j = job_new(JOB_CREATE, spec->guest_id, done, ctx);
	if (!j)
		return strlen(spec->guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	bool oom = false;
	for (; j->n_layers < spec->n_layers; j->n_layers++)
		j->layers[j->n_layers] = dup_or_null(spec->layer_serials[j->n_layers], &oom);
	j->hostname = dup_or_null(spec->hostname, &oom);
	j->terminal = spec->terminal;
	j->memory_max = spec->memory_max;
	j->width = spec->width;
	j->height = spec->height;
	oom |= !job_process(j, spec->args, spec->n_args, spec->env, spec->n_env, spec->cwd);
	j->created_only = spec->created_only;
	return push_watched(g, j, oom, spec->stdout_path, spec->stderr_path, spec->stdin_path, exit_ctx);
}

/* Queues a job that needs nothing but the container's ID. */
static int push_plain(lm_guest_t *g, enum job_kind kind, const char *guest_id,
		      lm_guest_done_fn done, void *ctx)
{
	if (!guest_id || !*guest_id)
		return -EINVAL;
	struct job *j = job_new(kind, guest_id, done, ctx);
	if (!j)
		return strlen(guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	return push(g, j);
}

int lm_guest_start(lm_guest_t *g, const char *guest_id, lm_guest_done_fn done, void *ctx)
{
	return push_plain(g, JOB_START, guest_id, done, ctx);
}

int lm_guest_adopt(lm_guest_t *g, const char *guest_id, const char *exec_id, const char *stdout_path,
		   const char *stderr_path, const char *stdin_path, void *exit_ctx,
		   lm_guest_done_fn done, void *ctx)
{
	int err;
	struct job *j = job_for(JOB_ADOPT, guest_id, exec_id, done, ctx, &err);
	if (!j)
		return err;
	return push_watched(g, j, false, stdout_path, stderr_path, stdin_path, exit_ctx);
}

int lm_guest_close_stdin(lm_guest_t *g, const char *guest_id, const char *exec_id,
			 lm_guest_done_fn done, void *ctx)
{
	int err;
	struct job *j = job_for(JOB_CLOSE_STDIN, guest_id, exec_id, done, ctx, &err);
	return j ? push(g, j) : err;
}

int lm_guest_resize(lm_guest_t *g, const char *guest_id, const char *exec_id, uint16_t width,
		    uint16_t height, lm_guest_done_fn done, void *ctx)
{
	int err;
	if (!width || !height)
		return -EINVAL;
	struct job *j = job_for(JOB_RESIZE, guest_id, exec_id, done, ctx, &err);
	if (!j)
		return err;
	j->width = width;
	j->height = height;
	return push(g, j);
}

int lm_guest_kill(lm_guest_t *g, const char *guest_id, const char *exec_id, int sig, bool all,
		  lm_guest_done_fn done, void *ctx)
{
	int err;
	if (sig <= 0 || sig > 64)
		return -EINVAL;
	struct job *j = job_for(JOB_KILL, guest_id, exec_id, done, ctx, &err);
	if (!j)
		return err;
	j->sig = sig;
	j->all = all;
	return push(g, j);
}

int lm_guest_ps(lm_guest_t *g, const char *guest_id, lm_guest_ps_fn done, void *ctx)
{
	if (!guest_id || !*guest_id || !done)
		return -EINVAL;
	struct job *j = job_new(JOB_PS, guest_id, NULL, ctx);
	if (!j)
		return strlen(guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	j->ps_done = done;
	return push(g, j);
}

int lm_guest_stats(lm_guest_t *g, const char *guest_id, lm_guest_stats_fn done, void *ctx)
{
	if (!guest_id || !*guest_id || !done)
		return -EINVAL;
	struct job *j = job_new(JOB_STATS, guest_id, NULL, ctx);
	if (!j)
		return strlen(guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	j->stats_done = done;
	return push(g, j);
}

int lm_guest_update(lm_guest_t *g, const char *guest_id, const struct lm_agent_update *u,
		    lm_guest_done_fn done, void *ctx)
{
	if (!guest_id || !*guest_id)
		return -EINVAL;
	struct job *j = job_new(JOB_UPDATE, guest_id, done, ctx);
	if (!j)
		return strlen(guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	j->upd = *u;
	return push(g, j);
}

int lm_guest_freeze(lm_guest_t *g, const char *guest_id, bool thaw, lm_guest_done_fn done, void *ctx)
{
	if (!guest_id || !*guest_id)
		return -EINVAL;
	struct job *j = job_new(JOB_FREEZE, guest_id, done, ctx);
	if (!j)
		return strlen(guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	j->thaw = thaw;
	return push(g, j);
}

int lm_guest_forget(lm_guest_t *g, const char *guest_id, lm_guest_done_fn done, void *ctx)
{
	if (!guest_id || !*guest_id)
		return -EINVAL;
	struct job *j = job_new(JOB_FORGET, guest_id, done, ctx);
	if (!j)
		return strlen(guest_id) > LM_GUEST_ID_LEN ? -EINVAL : -ENOMEM;
	return push(g, j);
}

int lm_guest_exec(lm_guest_t *g, const struct lm_guest_exec_spec *spec, void *exit_ctx,
		  lm_guest_done_fn done, void *ctx)
{
	int err;
	if (!spec->exec_id || !*spec->exec_id || !spec->n_args || !spec->args)
		return -EINVAL;
	struct job *j = job_for(JOB_EXEC, spec->guest_id, spec->exec_id, done, ctx, &err);
	if (!j)
		return err;
	bool oom = !job_process(j, spec->args, spec->n_args, spec->env, spec->n_env, spec->cwd);
	j->terminal = spec->terminal;
	j->width = spec->width;
	j->height = spec->height;
	return push_watched(g, j, oom, spec->stdout_path, spec->stderr_path, spec->stdin_path, exit_ctx);
}

int lm_guest_delete_exec(lm_guest_t *g, const char *guest_id, const char *exec_id,
			 lm_guest_done_fn done, void *ctx)
{
	int err;
	if (!exec_id || !*exec_id)
		return -EINVAL;
	struct job *j = job_for(JOB_DELETE_EXEC, guest_id, exec_id, done, ctx, &err);
	return j ? push(g, j) : err;
}

int lm_guest_suspend(lm_guest_t *g)
{
	pthread_mutex_lock(&g->mu);
	bool was = g->suspended;
	g->suspended = true;
	pthread_mutex_unlock(&g->mu);
	if (was)
		return 0;
	struct job *j = job_new(JOB_SUSPEND, NULL, NULL, NULL);
	return j ? push(g, j) : -ENOMEM;
}

int lm_guest_resume(lm_guest_t *g)
{
	pthread_mutex_lock(&g->mu);
	bool was = g->suspended;
	g->suspended = false;
	pthread_mutex_unlock(&g->mu);
	if (!was)
		return 0;
	struct job *j = job_new(JOB_RECONNECT, NULL, NULL, NULL);
	return j ? push(g, j) : -ENOMEM;
}

void lm_guest_boot_id(lm_guest_t *g, char *buf, size_t len)
{
	pthread_mutex_lock(&g->mu);
	snprintf(buf, len, "%s", g->boot_id);
	pthread_mutex_unlock(&g->mu);
}
