/*
 * sandbox.c: the sandbox model (pods, simulated containers, parked Waits)
 * and its snapshot export/import. See sandbox.h.
 *
 * Containers and pods live in arrays of pointers sorted by ID (binary
 * search; insertion by memmove): the public struct lm_container of a
 * container keeps its address until the container is removed, and
 * iteration is in ID order, which makes the snapshot deterministic.
 *
 * DESIGN. Single owner (the controller actor); no locks. Parked Wait
 * calls are answered with lm_rpc_call_reply/fail, which any thread may
 * call.
 */
#include "shim/sandbox.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/patcher.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "rpc/frame.h"
#include "snapshot.pb-c.h"
#include "task.pb-c.h"
#include "util/clock.h"
#include "util/log.h"

struct waiter {
	lm_rpc_call_t *call;       /* one reference, answered exactly once */
	struct waiter *next;
};

struct xproc {
	struct lm_exec x;          /* first: lm_exec * <-> xproc * */
	struct waiter *waiters;
	bool exit_pending;         /* its exit came before its start (x.exit_status) */
};

struct ctr {
	struct lm_container c;     /* first: lm_container * <-> ctr * */
	struct waiter *waiters;
	struct xproc **xs;         /* its exec'd processes, sorted by x.id */
	size_t xcap;               /* (their count is c.n_execs) */
};

struct lm_sandbox {
	struct ctr **v;            /* sorted by c.id */
	size_t n, cap;
	struct lm_pod **pods;      /* sorted by id */
	size_t np, pcap;
	uint32_t next_pid;         /* never goes backwards */
	lm_sandbox_event_fn ev;    /* task events (containerd's publisher), or NULL */
	void *ev_arg;
};

/* A task event, for a task containerd created (it knows no other). */
static void emit(const lm_sandbox_t *sb, enum lm_sandbox_event type, const struct lm_container *c)
{
	if (sb->ev && c->containerds)
		sb->ev(sb->ev_arg, type, c, NULL);
}

/* An exec'd process's event; none for one that came with a snapshot. */
static void emit_exec(const lm_sandbox_t *sb, enum lm_sandbox_event type, const struct lm_container *c,
		      const struct lm_exec *x)
{
	if (sb->ev && c->containerds && !x->imported)
		sb->ev(sb->ev_arg, type, c, x);
}

/* A task containerd just took (a patch, an adoption): it may run already,
 * be paused or have stopped on the source: its create, then its state. */
static void announce(const lm_sandbox_t *sb, const struct lm_container *c)
{
	emit(sb, LM_SB_EV_CREATE, c);
	if (c->state == LM_CTR_RUNNING || c->state == LM_CTR_PAUSED)
		emit(sb, LM_SB_EV_START, c);
	if (c->state == LM_CTR_PAUSED)
		emit(sb, LM_SB_EV_PAUSED, c);
	else if (c->state == LM_CTR_STOPPED)
		emit(sb, LM_SB_EV_EXIT, c);
}

void lm_sandbox_set_event_fn(lm_sandbox_t *sb, lm_sandbox_event_fn fn, void *arg)
{
	sb->ev = fn;
	sb->ev_arg = arg;
}

/* ---- small helpers ---------------------------------------------------- */

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

static void free_strv(char **v, unsigned n)
{
	if (!v)
		return;
	for (unsigned i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Index of the first container with id >= key; *found if equal. */
static size_t ctr_lower(const lm_sandbox_t *sb, const char *key, int *found)
{
	size_t lo = 0, hi = sb->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(sb->v[mid]->c.id, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < sb->n && strcmp(sb->v[lo]->c.id, key) == 0;
	return lo;
}

static size_t pod_lower(const lm_sandbox_t *sb, const char *key, int *found)
{
	size_t lo = 0, hi = sb->np;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(sb->pods[mid]->id, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < sb->np && strcmp(sb->pods[lo]->id, key) == 0;
	return lo;
}

static struct ctr *find_ctr(const lm_sandbox_t *sb, const char *id)
{
	int found;
	if (!id)
		return NULL;
	size_t i = ctr_lower(sb, id, &found);
	return found ? sb->v[i] : NULL;
}

static void xproc_free(struct xproc *p)
{
	if (!p)
		return;
	free(p->x.id);
	free(p->x.stdin_path);
	free(p->x.stdout_path);
	free(p->x.stderr_path);
	free(p->x.process_spec);
	free(p);
}

static void ctr_free(struct ctr *k)
{
	struct lm_container *c = &k->c;
	for (size_t i = 0; i < c->n_execs; i++)
		xproc_free(k->xs[i]);
	free(k->xs);
	free(c->id);
	free(c->pod_id);
	free(c->bundle);
	free(c->rootfs);
	free(c->scratch);
	free_strv(c->layers, c->n_layers);
	free(c->stdin_path);
	free(c->stdout_path);
	free(c->stderr_path);
	free(c->process_spec);
	free(c->source_id);
	free(c->guest_id);
	free(k);
}

static void pod_free(struct lm_pod *p)
{
	if (!p)
		return;
	free(p->id);
	free(p->network);
	free(p);
}

/* ---- waiters ------------------------------------------------------------ */

static void answer_wait(lm_rpc_call_t *call, uint32_t status, uint64_t at_ns)
{
	Containerd__Task__V2__WaitResponse r = CONTAINERD__TASK__V2__WAIT_RESPONSE__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	uint8_t buf[64];
	r.exit_status = status;
	ts.seconds = (int64_t)(at_ns / 1000000000u);
	ts.nanos = (int32_t)(at_ns % 1000000000u);
	r.exited_at = &ts;
	size_t n = containerd__task__v2__wait_response__pack(&r, buf);
	lm_rpc_call_reply(call, buf, n);
}

/* The parked Waits of one process (the init's or an exec'd one's). */
static void answer_list(struct waiter **head, unsigned *n, uint32_t status, uint64_t at_ns)
{
	struct waiter *w = *head;
	*head = NULL;
	*n = 0;
	while (w) {
		struct waiter *next = w->next;
		answer_wait(w->call, status, at_ns);
		free(w);
		w = next;
	}
}

static void fail_list(struct waiter **head, unsigned *n, int code, const char *who, const char *why)
{
	struct waiter *w = *head;
	*head = NULL;
	*n = 0;
	while (w) {
		struct waiter *next = w->next;
		lm_rpc_call_fail(w->call, code, "wait %s: %s", who, why);
		free(w);
		w = next;
	}
}

static void answer_waiters(struct ctr *k)
{
	answer_list(&k->waiters, &k->c.n_waiters, k->c.exit_status, k->c.exited_at_ns);
}

/* The container's waiters and those of its exec'd processes. */
static void fail_waiters(struct ctr *k, int code, const char *why)
{
	fail_list(&k->waiters, &k->c.n_waiters, code, k->c.id, why);
	for (size_t i = 0; i < k->c.n_execs; i++)
		fail_list(&k->xs[i]->waiters, &k->xs[i]->x.n_waiters, code, k->xs[i]->x.id, why);
}

/* Drops the parked calls whose client has gone (their answer would be
 * dropped anyway): keeps the list bounded by live clients. */
static void prune_list(struct waiter **head, unsigned *n)
{
	struct waiter **pp = head;
	while (*pp) {
		struct waiter *w = *pp;
		if (lm_rpc_call_cancelled(w->call) != LM_RPC_CANCEL_NONE) {
			*pp = w->next;
			lm_rpc_call_fail(w->call, LM_RPC_CANCELED, "wait cancelled");
			free(w);
			(*n)--;
		} else {
			pp = &w->next;
		}
	}
}

/* Parks call on a list (after pruning it). */
static void park(struct waiter **head, unsigned *n, lm_rpc_call_t *call, const char *who)
{
	prune_list(head, n);
	struct waiter *w = malloc(sizeof(*w));
	if (!w) {
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "wait %s: out of memory", who);
		return;
	}
	w->call = call;
	w->next = *head;
	*head = w;
	(*n)++;
}

/* ---- lifecycle of the sandbox ------------------------------------------- */

int lm_sandbox_create(lm_sandbox_t **out)
{
	lm_sandbox_t *sb = calloc(1, sizeof(*sb));
	if (!sb)
		return -ENOMEM;
	sb->next_pid = LM_SANDBOX_FIRST_PID;
	*out = sb;
	return 0;
}

void lm_sandbox_clear(lm_sandbox_t *sb)
{
	for (size_t i = 0; i < sb->n; i++) {
		fail_waiters(sb->v[i], LM_RPC_UNAVAILABLE, "sandbox torn down");
		ctr_free(sb->v[i]);
	}
	sb->n = 0;
	for (size_t i = 0; i < sb->np; i++)
		pod_free(sb->pods[i]);
	sb->np = 0;
}

void lm_sandbox_destroy(lm_sandbox_t *sb)
{
	if (!sb)
		return;
	lm_sandbox_clear(sb);
	free(sb->v);
	free(sb->pods);
	free(sb);
}

/* ---- pods --------------------------------------------------------------- */

int lm_sandbox_add_pod(lm_sandbox_t *sb, const char *id, const char *network)
{
	int found;
	if (!id || !*id)
		return -EINVAL;
	size_t at = pod_lower(sb, id, &found);
	if (found)
		return -EEXIST;
	if (sb->np == sb->pcap) {
		size_t cap = sb->pcap ? sb->pcap * 2 : 4;
		struct lm_pod **v = realloc(sb->pods, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		sb->pods = v;
		sb->pcap = cap;
	}
	struct lm_pod *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->id = strdup(id);
	p->network = dup_or_empty(network);
	if (!p->id || !p->network) {
		pod_free(p);
		return -ENOMEM;
	}
	memmove(&sb->pods[at + 1], &sb->pods[at], (sb->np - at) * sizeof(*sb->pods));
	sb->pods[at] = p;
	sb->np++;
	return 0;
}

const struct lm_pod *lm_sandbox_find_pod(const lm_sandbox_t *sb, const char *id)
{
	int found;
	if (!id)
		return NULL;
	size_t i = pod_lower(sb, id, &found);
	return found ? sb->pods[i] : NULL;
}

size_t lm_sandbox_pod_count(const lm_sandbox_t *sb)
{
	return sb->np;
}

const struct lm_pod *lm_sandbox_pod_at(const lm_sandbox_t *sb, size_t i)
{
	return i < sb->np ? sb->pods[i] : NULL;
}

static void remove_ctr_at(lm_sandbox_t *sb, size_t i, int code, const char *why)
{
	struct ctr *k = sb->v[i];
	memmove(&sb->v[i], &sb->v[i + 1], (sb->n - i - 1) * sizeof(*sb->v));
	sb->n--;
	fail_waiters(k, code, why);
	ctr_free(k);
}

int lm_sandbox_remove_pod(lm_sandbox_t *sb, const char *id)
{
	int found;
	if (!id)
		return -ENOENT;
	size_t at = pod_lower(sb, id, &found);
	if (!found)
		return -ENOENT;
	for (size_t i = sb->n; i-- > 0;)
		if (strcmp(sb->v[i]->c.pod_id, id) == 0)
			remove_ctr_at(sb, i, LM_RPC_NOT_FOUND, "container removed");
	pod_free(sb->pods[at]);
	memmove(&sb->pods[at], &sb->pods[at + 1], (sb->np - at - 1) * sizeof(*sb->pods));
	sb->np--;
	return 0;
}

/* ---- containers ----------------------------------------------------------- */

/* Adds a container; pid 0 = a new one from the counter. */
static int add_ctr(lm_sandbox_t *sb, const struct lm_container_spec *s, uint32_t pid,
		   struct ctr **out)
{
	int found;
	if (!s->id || !*s->id || !s->pod_id || !*s->pod_id)
		return -EINVAL;
	if (s->type != LM_CTR_SANDBOX && s->type != LM_CTR_CONTAINER)
		return -EINVAL;
	size_t at = ctr_lower(sb, s->id, &found);
	if (found)
		return -EEXIST;
	if (!lm_sandbox_find_pod(sb, s->pod_id))
		return -ENOENT;
	if (s->type == LM_CTR_SANDBOX)
		for (size_t i = 0; i < sb->n; i++)
			if (sb->v[i]->c.type == LM_CTR_SANDBOX &&
			    strcmp(sb->v[i]->c.pod_id, s->pod_id) == 0)
				return -EINVAL;
	if (sb->n == sb->cap) {
		size_t cap = sb->cap ? sb->cap * 2 : 8;
		struct ctr **v = realloc(sb->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		sb->v = v;
		sb->cap = cap;
	}
	struct ctr *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	struct lm_container *c = &k->c;
	bool oom = false;
	c->id = strdup(s->id);
	c->pod_id = strdup(s->pod_id);
	c->type = s->type;
	c->state = LM_CTR_CREATED;
	c->bundle = dup_or_empty(s->bundle);
	c->rootfs = dup_or_empty(s->rootfs);
	c->scratch = dup_or_empty(s->scratch);
	c->stdin_path = dup_or_empty(s->stdin_path);
	c->stdout_path = dup_or_empty(s->stdout_path);
	c->stderr_path = dup_or_empty(s->stderr_path);
	c->terminal = s->terminal;
	c->containerds = s->containerds;
	oom = !c->id || !c->pod_id || !c->bundle || !c->rootfs || !c->scratch ||
	      !c->stdin_path || !c->stdout_path || !c->stderr_path;
	if (!oom && s->n_layers) {
		c->layers = calloc(s->n_layers, sizeof(char *));
		oom = !c->layers;
		if (!oom)
			c->n_layers = s->n_layers;
		for (unsigned i = 0; !oom && i < s->n_layers; i++) {
			if (s->layers) {
				c->layers[i] = dup_or_empty(s->layers[i]);
			} else {
				char name[32];
				snprintf(name, sizeof name, "layer%u", i);
				c->layers[i] = strdup(name);
			}
			oom = !c->layers[i];
		}
	}
	if (!oom && s->process_spec_len) {
		c->process_spec = malloc(s->process_spec_len);
		oom = !c->process_spec;
		if (!oom) {
			memcpy(c->process_spec, s->process_spec, s->process_spec_len);
			c->process_spec_len = s->process_spec_len;
		}
	}
	if (oom) {
		ctr_free(k);
		return -ENOMEM;
	}
	if (pid) {
		c->pid = pid;
	} else {
		c->pid = sb->next_pid++;
	}
	memmove(&sb->v[at + 1], &sb->v[at], (sb->n - at) * sizeof(*sb->v));
	sb->v[at] = k;
	sb->n++;
	if (out)
		*out = k;
	return 0;
}

int lm_sandbox_add(lm_sandbox_t *sb, const struct lm_container_spec *spec,
		   const struct lm_container **out)
{
	struct ctr *k;
	int rc = add_ctr(sb, spec, 0, &k);
	if (rc == 0) {
		emit(sb, LM_SB_EV_CREATE, &k->c);
		if (out)
			*out = &k->c;
	}
	return rc;
}

const struct lm_container *lm_sandbox_find(const lm_sandbox_t *sb, const char *id)
{
	struct ctr *k = find_ctr(sb, id);
	return k ? &k->c : NULL;
}

static struct ctr *find_source(const lm_sandbox_t *sb, const char *source_id)
{
	if (!source_id)
		return NULL;
	for (size_t i = 0; i < sb->n; i++)
		if (sb->v[i]->c.source_id && strcmp(sb->v[i]->c.source_id, source_id) == 0)
			return sb->v[i];
	return NULL;
}

const struct lm_container *lm_sandbox_find_source(const lm_sandbox_t *sb, const char *source_id)
{
	struct ctr *k = find_source(sb, source_id);
	return k ? &k->c : NULL;
}

int lm_sandbox_remove(lm_sandbox_t *sb, const char *id)
{
	int found;
	if (!id)
		return -ENOENT;
	size_t i = ctr_lower(sb, id, &found);
	if (!found)
		return -ENOENT;
	remove_ctr_at(sb, i, LM_RPC_NOT_FOUND, "container removed");
	return 0;
}

size_t lm_sandbox_count(const lm_sandbox_t *sb)
{
	return sb->n;
}

const struct lm_container *lm_sandbox_at(const lm_sandbox_t *sb, size_t i)
{
	return i < sb->n ? &sb->v[i]->c : NULL;
}

/* ---- the simulated task lifecycle ------------------------------------------ */

int lm_sandbox_start(lm_sandbox_t *sb, const char *id, uint32_t *pid)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	if (k->c.state != LM_CTR_CREATED)
		return -EBUSY;
	k->c.state = LM_CTR_RUNNING;
	if (pid)
		*pid = k->c.pid;
	emit(sb, LM_SB_EV_START, &k->c);
	return 0;
}

int lm_sandbox_set_paused(lm_sandbox_t *sb, const char *id, bool paused)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	if (k->c.state != (paused ? LM_CTR_RUNNING : LM_CTR_PAUSED))
		return -EBUSY;
	k->c.state = paused ? LM_CTR_PAUSED : LM_CTR_RUNNING;
	emit(sb, paused ? LM_SB_EV_PAUSED : LM_SB_EV_RESUMED, &k->c);
	return 0;
}

static int stop(lm_sandbox_t *sb, struct ctr *k, uint32_t status)
{
	if (k->c.state == LM_CTR_STOPPED)
		return -ESRCH;
	k->c.state = LM_CTR_STOPPED;
	k->c.exit_status = status;
	k->c.exited_at_ns = lm_wall_ns();
	emit(sb, LM_SB_EV_EXIT, &k->c);
	answer_waiters(k);
	return 0;
}

int lm_sandbox_kill(lm_sandbox_t *sb, const char *id, uint32_t signal)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	if (signal == 0 || signal > 64)
		return -EINVAL;
	return stop(sb, k, 128u + signal);
}

int lm_sandbox_oom(lm_sandbox_t *sb, const char *id)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	emit(sb, LM_SB_EV_OOM, &k->c);
	return 0;
}

int lm_sandbox_exit(lm_sandbox_t *sb, const char *id, uint32_t status)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	return stop(sb, k, status);
}

size_t lm_sandbox_leave(lm_sandbox_t *sb)
{
	for (size_t i = sb->n; i-- > 0;) {
		struct ctr *k = sb->v[i];
		if (!k->c.containerds) {
			remove_ctr_at(sb, i, LM_RPC_UNAVAILABLE, "sandbox torn down");
			continue;
		}
		for (size_t x = 0; x < k->c.n_execs; x++) {
			struct xproc *p = k->xs[x];
			if (p->x.state == LM_CTR_STOPPED)
				continue;
			p->x.state = LM_CTR_STOPPED;
			p->exit_pending = false;
			p->x.exit_status = LM_SANDBOX_MOVED_STATUS;
			p->x.exited_at_ns = lm_wall_ns();
			emit_exec(sb, LM_SB_EV_EXIT, &k->c, &p->x);
			answer_list(&p->waiters, &p->x.n_waiters, p->x.exit_status, p->x.exited_at_ns);
		}
		(void)stop(sb, k, LM_SANDBOX_MOVED_STATUS);
		free(k->c.guest_id);          /* no guest here any more */
		k->c.guest_id = NULL;
		k->c.adopted = false;
	}
	for (size_t i = sb->np; i-- > 0;) {
		bool used = false;
		for (size_t j = 0; j < sb->n && !used; j++)
			used = !strcmp(sb->v[j]->c.pod_id, sb->pods[i]->id);
		if (used)
			continue;
		pod_free(sb->pods[i]);
		memmove(&sb->pods[i], &sb->pods[i + 1], (sb->np - i - 1) * sizeof(*sb->pods));
		sb->np--;
	}
	return sb->n;
}

int lm_sandbox_delete(lm_sandbox_t *sb, const char *id, uint32_t *pid,
		      uint32_t *exit_status, uint64_t *exited_at_ns)
{
	int found;
	if (!id)
		return -ENOENT;
	size_t i = ctr_lower(sb, id, &found);
	if (!found)
		return -ENOENT;
	struct lm_container *c = &sb->v[i]->c;
	if (c->state == LM_CTR_RUNNING || c->state == LM_CTR_PAUSED)
		return -EBUSY;
	if (pid)
		*pid = c->pid;
	if (exit_status)
		*exit_status = c->exit_status;
	if (exited_at_ns)
		*exited_at_ns = c->exited_at_ns;
	emit(sb, LM_SB_EV_DELETE, c);
	remove_ctr_at(sb, i, LM_RPC_NOT_FOUND, "container deleted");
	return 0;
}

int lm_sandbox_pids(const lm_sandbox_t *sb, const char *id, uint32_t *pids, size_t cap)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	if (k->c.state == LM_CTR_STOPPED)
		return 0;
	if (cap < 1)
		return 0;
	pids[0] = k->c.pid;
	return 1;
}

int lm_sandbox_set_guest(lm_sandbox_t *sb, const char *id, const char *guest_id, uint32_t pid)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	if (!guest_id || !*guest_id || pid == 0)
		return -EINVAL;
	char *g = strdup(guest_id);
	if (!g)
		return -ENOMEM;
	free(k->c.guest_id);
	k->c.guest_id = g;
	k->c.pid = pid;
	if (pid >= sb->next_pid)
		sb->next_pid = pid + 1;
	return 0;
}

const struct lm_container *lm_sandbox_find_guest(const lm_sandbox_t *sb, const char *guest_id)
{
	if (!guest_id)
		return NULL;
	for (size_t i = 0; i < sb->n; i++)
		if (sb->v[i]->c.guest_id && strcmp(sb->v[i]->c.guest_id, guest_id) == 0)
			return &sb->v[i]->c;
	return NULL;
}

uint32_t lm_sandbox_next_pid(const lm_sandbox_t *sb)
{
	return sb->next_pid;
}

int lm_sandbox_wait(lm_sandbox_t *sb, const char *id, lm_rpc_call_t *call)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	if (k->c.state == LM_CTR_STOPPED)
		answer_wait(call, k->c.exit_status, k->c.exited_at_ns);
	else
		park(&k->waiters, &k->c.n_waiters, call, id);
	return 0;
}

/* ---- exec'd processes ------------------------------------------------------ */

bool lm_sandbox_exec_id_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > LM_GUEST_ID_MAX || !strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

const struct lm_exec *lm_container_exec_at(const struct lm_container *c, size_t i)
{
	const struct ctr *k = (const struct ctr *)c;
	return c && i < c->n_execs ? &k->xs[i]->x : NULL;
}

/* Index of the first exec of k with id >= key; *found if equal. */
static size_t exec_lower(const struct ctr *k, const char *key, int *found)
{
	size_t lo = 0, hi = k->c.n_execs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(k->xs[mid]->x.id, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < k->c.n_execs && strcmp(k->xs[lo]->x.id, key) == 0;
	return lo;
}

static struct xproc *find_xproc(const lm_sandbox_t *sb, const char *id, const char *exec_id,
				struct ctr **kout)
{
	struct ctr *k = find_ctr(sb, id);
	int found = 0;
	size_t i = k && exec_id ? exec_lower(k, exec_id, &found) : 0;
	if (kout)
		*kout = k;
	return found ? k->xs[i] : NULL;
}

const struct lm_exec *lm_sandbox_find_exec(const lm_sandbox_t *sb, const char *id, const char *exec_id)
{
	struct xproc *p = find_xproc(sb, id, exec_id, NULL);
	return p ? &p->x : NULL;
}

/* Adds an exec record to k (no event, no state check). */
static int add_xproc(struct ctr *k, const struct lm_exec_spec *s, struct xproc **out)
{
	int found;
	if (!lm_sandbox_exec_id_ok(s->id))
		return -EINVAL;
	size_t at = exec_lower(k, s->id, &found);
	if (found)
		return -EEXIST;
	if (k->c.n_execs >= LM_SANDBOX_MAX_EXECS)
		return -ENOSPC;
	if (k->c.n_execs == k->xcap) {
		size_t cap = k->xcap ? k->xcap * 2 : 4;
		struct xproc **v = realloc(k->xs, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		k->xs = v;
		k->xcap = cap;
	}
	struct xproc *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	struct lm_exec *x = &p->x;
	x->id = strdup(s->id);
	x->state = LM_CTR_CREATED;
	x->stdin_path = dup_or_empty(s->stdin_path);
	x->stdout_path = dup_or_empty(s->stdout_path);
	x->stderr_path = dup_or_empty(s->stderr_path);
	x->terminal = s->terminal;
	bool oom = !x->id || !x->stdin_path || !x->stdout_path || !x->stderr_path;
	if (!oom && s->process_spec_len) {
		oom = !(x->process_spec = malloc(s->process_spec_len));
		if (!oom) {
			memcpy(x->process_spec, s->process_spec, s->process_spec_len);
			x->process_spec_len = s->process_spec_len;
		}
	}
	if (oom) {
		xproc_free(p);
		return -ENOMEM;
	}
	memmove(&k->xs[at + 1], &k->xs[at], (k->c.n_execs - at) * sizeof(*k->xs));
	k->xs[at] = p;
	k->c.n_execs++;
	*out = p;
	return 0;
}

int lm_sandbox_exec_add(lm_sandbox_t *sb, const char *id, const struct lm_exec_spec *spec,
			const struct lm_exec **out)
{
	struct ctr *k = find_ctr(sb, id);
	struct xproc *p;
	if (!k)
		return -ENOENT;
	if (!lm_sandbox_exec_id_ok(spec->id))
		return -EINVAL;
	if (k->c.state != LM_CTR_RUNNING)
		return -EBUSY;
	int rc = add_xproc(k, spec, &p);
	if (rc)
		return rc;
	emit_exec(sb, LM_SB_EV_EXEC_ADDED, &k->c, &p->x);
	if (out)
		*out = &p->x;
	return 0;
}

int lm_sandbox_exec_start(lm_sandbox_t *sb, const char *id, const char *exec_id, uint32_t pid)
{
	struct ctr *k;
	struct xproc *p = find_xproc(sb, id, exec_id, &k);
	if (!p)
		return -ENOENT;
	if (pid == 0)
		return -EINVAL;
	if (p->x.state != LM_CTR_CREATED)
		return -EBUSY;
	p->x.state = LM_CTR_RUNNING;
	p->x.pid = pid;
	emit_exec(sb, LM_SB_EV_EXEC_STARTED, &k->c, &p->x);
	if (p->exit_pending) {
		p->exit_pending = false;
		return lm_sandbox_exec_exit(sb, id, exec_id, p->x.exit_status);
	}
	return 0;
}

int lm_sandbox_exec_exit(lm_sandbox_t *sb, const char *id, const char *exec_id, uint32_t status)
{
	struct ctr *k;
	struct xproc *p = find_xproc(sb, id, exec_id, &k);
	if (!p)
		return -ENOENT;
	if (p->x.state == LM_CTR_STOPPED || p->exit_pending)
		return -ESRCH;
	if (p->x.state == LM_CTR_CREATED && p->x.pid == 0 && !p->x.imported) {
		/* the start's answer is on its way: the exit follows it */
		p->exit_pending = true;
		p->x.exit_status = status;
		return 0;
	}
	p->x.state = LM_CTR_STOPPED;
	p->x.exit_status = status;
	p->x.exited_at_ns = lm_wall_ns();
	emit_exec(sb, LM_SB_EV_EXIT, &k->c, &p->x);
	answer_list(&p->waiters, &p->x.n_waiters, status, p->x.exited_at_ns);
	return 0;
}

int lm_sandbox_exec_delete(lm_sandbox_t *sb, const char *id, const char *exec_id, uint32_t *pid,
			   uint32_t *exit_status, uint64_t *exited_at_ns)
{
	struct ctr *k = find_ctr(sb, id);
	int found = 0;
	size_t i = k && exec_id ? exec_lower(k, exec_id, &found) : 0;
	if (!found)
		return -ENOENT;
	struct xproc *p = k->xs[i];
	if (p->x.state == LM_CTR_RUNNING)
		return -EBUSY;
	if (pid)
		*pid = p->x.pid;
	if (exit_status)
		*exit_status = p->x.exit_status;
	if (exited_at_ns)
		*exited_at_ns = p->x.exited_at_ns;
	fail_list(&p->waiters, &p->x.n_waiters, LM_RPC_NOT_FOUND, p->x.id, "exec deleted");
	xproc_free(p);
	memmove(&k->xs[i], &k->xs[i + 1], (k->c.n_execs - i - 1) * sizeof(*k->xs));
	k->c.n_execs--;
	return 0;
}

int lm_sandbox_wait_exec(lm_sandbox_t *sb, const char *id, const char *exec_id, lm_rpc_call_t *call)
{
	struct xproc *p = find_xproc(sb, id, exec_id, NULL);
	if (!p)
		return -ENOENT;
	if (p->x.state == LM_CTR_STOPPED)
		answer_wait(call, p->x.exit_status, p->x.exited_at_ns);
	else
		park(&p->waiters, &p->x.n_waiters, call, exec_id);
	return 0;
}

/* ---- migration ----------------------------------------------------------- */

size_t lm_sandbox_pending_patches(const lm_sandbox_t *sb, char *buf, size_t buflen)
{
	size_t count = 0, used = 0;
	bool truncated = false;
	if (buf && buflen)
		buf[0] = '\0';
	for (size_t i = 0; i < sb->n; i++) {
		const struct lm_container *c = &sb->v[i]->c;
		if (!c->source_id || c->patched)
			continue;
		count++;
		if (!buf || !buflen || truncated)
			continue;
		int n = snprintf(buf + used, buflen - used, "%s%s", count > 1 ? "," : "", c->source_id);
		if (n < 0 || (size_t)n >= buflen - used) {
			truncated = true;
			if (buflen >= 4)
				memcpy(buf + buflen - 4, "...", 4);
			else
				buf[buflen - 1] = '\0';
		} else {
			used += (size_t)n;
		}
	}
	return count;
}

static int ctr_cmp(const void *a, const void *b)
{
	const struct ctr *x = *(const struct ctr *const *)a;
	const struct ctr *y = *(const struct ctr *const *)b;
	return strcmp(x->c.id, y->c.id);
}

static int pod_cmp(const void *a, const void *b)
{
	const struct lm_pod *x = *(const struct lm_pod *const *)a;
	const struct lm_pod *y = *(const struct lm_pod *const *)b;
	return strcmp(x->id, y->id);
}

/* <dir>/exec-<id>.<ext>, or "" without a dir. */
static char *exec_file(const char *dir, const char *id, const char *ext)
{
	if (!*dir)
		return strdup("");
	size_t n = strlen(dir) + strlen(id) + strlen(ext) + 8;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/exec-%s.%s", dir, id, ext);
	return p;
}

int lm_sandbox_apply_patch(lm_sandbox_t *sb, const struct lm_patch_result *r)
{
	if (!r || r->code != 0 || !r->source_id || !r->new_id || !*r->new_id)
		return -EINVAL;
	struct ctr *k = find_source(sb, r->source_id);
	if (!k)
		return -ENOENT;
	struct lm_container *c = &k->c;
	if (c->patched)
		return -EALREADY;
	struct ctr *other = find_ctr(sb, r->new_id);
	if (other && other != k)
		return -EEXIST;
	struct lm_pod *pod = NULL;
	bool rekey_pod = c->type == LM_CTR_SANDBOX && strcmp(c->pod_id, r->new_id) != 0;
	if (rekey_pod) {
		int found;
		size_t pi = pod_lower(sb, c->pod_id, &found);
		if (!found)
			return -ENOENT;
		pod = sb->pods[pi];
		if (lm_sandbox_find_pod(sb, r->new_id))
			return -EEXIST;
	}

	/* Allocate everything first, then commit (no failure past here). */
	size_t members = 0;
	if (rekey_pod)
		for (size_t i = 0; i < sb->n; i++)
			if (strcmp(sb->v[i]->c.pod_id, pod->id) == 0)
				members++;
	char **pod_ids = members ? calloc(members, sizeof(char *)) : NULL;
	char *id = strdup(r->new_id);
	char *pid_new = rekey_pod ? strdup(r->new_id) : NULL;
	char *bundle = dup_or_empty(r->bundle), *rootfs = dup_or_empty(r->rootfs);
	char *scratch = dup_or_empty(r->scratch);
	char *in = dup_or_empty(r->stdin_path), *o = dup_or_empty(r->stdout_path);
	char *e = dup_or_empty(r->stderr_path);
	char **layers = r->n_layers ? calloc(r->n_layers, sizeof(char *)) : NULL;
	bool oom = !id || !bundle || !rootfs || !scratch || !in || !o || !e ||
		   (rekey_pod && !pid_new) || (members && !pod_ids) || (r->n_layers && !layers);
	for (size_t i = 0; !oom && i < members; i++)
		oom = !(pod_ids[i] = strdup(r->new_id));
	for (unsigned i = 0; !oom && i < r->n_layers; i++)
		oom = !(layers[i] = dup_or_empty(r->layers ? r->layers[i] : NULL));
	/* its exec'd processes' output goes to files of the new bundle */
	size_t nx = c->n_execs;
	char **xio = nx ? calloc(nx * 3, sizeof(char *)) : NULL;
	oom = oom || (nx && !xio);
	for (size_t i = 0; !oom && i < nx; i++) {
		const struct lm_exec *x = &k->xs[i]->x;
		xio[3 * i] = strdup("");
		xio[3 * i + 1] = exec_file(bundle, x->id, "stdout");
		xio[3 * i + 2] = x->terminal ? strdup("") : exec_file(bundle, x->id, "stderr");
		oom = !xio[3 * i] || !xio[3 * i + 1] || !xio[3 * i + 2];
	}
	if (oom) {
		free_strv(xio, (unsigned)(nx * 3));
		free_strv(pod_ids, (unsigned)members);
		free(id);
		free(pid_new);
		free(bundle);
		free(rootfs);
		free(scratch);
		free(in);
		free(o);
		free(e);
		free_strv(layers, r->n_layers);
		return -ENOMEM;
	}

	if (rekey_pod) {
		size_t j = 0;
		char *old = pod->id;
		for (size_t i = 0; i < sb->n; i++) {
			struct lm_container *m = &sb->v[i]->c;
			if (strcmp(m->pod_id, old) == 0) {
				free(m->pod_id);
				m->pod_id = pod_ids[j++];
			}
		}
		free(pod_ids);
		pod->id = pid_new;
		free(old);
		qsort(sb->pods, sb->np, sizeof(*sb->pods), pod_cmp);
	}
	free(c->id);
	c->id = id;
	free(c->bundle);
	c->bundle = bundle;
	free(c->rootfs);
	c->rootfs = rootfs;
	free(c->scratch);
	c->scratch = scratch;
	free(c->stdin_path);
	c->stdin_path = in;
	free(c->stdout_path);
	c->stdout_path = o;
	free(c->stderr_path);
	c->stderr_path = e;
	free_strv(c->layers, c->n_layers);
	c->layers = layers;
	c->n_layers = r->n_layers;
	c->terminal = r->terminal;
	c->patched = true;
	c->containerds = r->containerds;
	for (size_t i = 0; i < nx; i++) {
		struct lm_exec *x = &k->xs[i]->x;
		free(x->stdin_path);
		free(x->stdout_path);
		free(x->stderr_path);
		x->stdin_path = xio[3 * i];
		x->stdout_path = xio[3 * i + 1];
		x->stderr_path = xio[3 * i + 2];
	}
	free(xio);
	qsort(sb->v, sb->n, sizeof(*sb->v), ctr_cmp);
	lm_log_info("sandbox", "container patched", "source_id=%s id=%s pod=%s pid=%" PRIu32,
		    c->source_id, c->id, c->pod_id, c->pid);
	/* containerd created the task under its new ID; it runs already (or
	 * had stopped on the source): say so too */
	announce(sb, c);
	return 0;
}

int lm_sandbox_adopt(lm_sandbox_t *sb, const char *id, const char *source_id)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k)
		return -ENOENT;
	struct lm_container *c = &k->c;
	if (!c->patched || !c->source_id || !source_id || strcmp(c->source_id, source_id))
		return -EINVAL;
	if (c->containerds)
		return -EALREADY;
	c->containerds = true;
	c->adopted = c->state != LM_CTR_STOPPED;
	lm_log_info("sandbox", "container adopted by containerd", "id=%s source_id=%s pid=%" PRIu32, c->id,
		    c->source_id, c->pid);
	announce(sb, c);
	return 0;
}

int lm_sandbox_start_adopted(lm_sandbox_t *sb, const char *id, uint32_t *pid)
{
	struct ctr *k = find_ctr(sb, id);
	if (!k || !k->c.adopted || (k->c.state != LM_CTR_RUNNING && k->c.state != LM_CTR_PAUSED))
		return -ESRCH;
	k->c.adopted = false;
	*pid = k->c.pid;
	return 0;
}

/* ---- snapshot export ----------------------------------------------------- */

int lm_sandbox_export(const lm_sandbox_t *sb, const struct lm_snapshot_vm *vm,
		      uint8_t **out, size_t *len)
{
	if (!vm || !vm->vm_id || !*vm->vm_id || !vm->document || !*vm->document ||
	    vm->vcpus == 0 || vm->memory_bytes == 0)
		return -EINVAL;

	int rc = -ENOMEM;
	Lmshim__V1__SandboxSnapshot snap = LMSHIM__V1__SANDBOX_SNAPSHOT__INIT;
	Lmshim__V1__VmSnapshot v = LMSHIM__V1__VM_SNAPSHOT__INIT;
	Lmshim__V1__Counters counters = LMSHIM__V1__COUNTERS__INIT;
	Lmshim__V1__MemoryRegion *regions = NULL, **regp = NULL;
	Lmshim__V1__DeviceAttachment *devs = NULL, **devp = NULL;
	Lmshim__V1__PodSnapshot *pods = NULL, **podp = NULL;
	Lmshim__V1__ContainerSnapshot *cs = NULL, **csp = NULL;
	Lmshim__V1__InitProcess *inits = NULL;
	Lmshim__V1__ExecProcess *xs = NULL, **xsp = NULL;
	uint8_t *body = NULL, *anyb = NULL;

	v.vm_id = vm->vm_id;
	v.document = vm->document;
	v.compatibility.data = vm->compat;
	v.compatibility.len = vm->compat ? vm->compat_len : 0;
	v.vcpus = vm->vcpus;
	v.memory_bytes = vm->memory_bytes;
	v.generation = vm->generation;
	if (vm->n_regions) {
		regions = calloc(vm->n_regions, sizeof(*regions));
		regp = calloc(vm->n_regions, sizeof(*regp));
		if (!regions || !regp)
			goto out;
		for (size_t i = 0; i < vm->n_regions; i++) {
			lmshim__v1__memory_region__init(&regions[i]);
			regions[i].gpa = vm->regions[i].gpa;
			regions[i].size = vm->regions[i].size;
			regp[i] = &regions[i];
		}
		v.n_regions = vm->n_regions;
		v.regions = regp;
	}
	if (vm->n_devices) {
		devs = calloc(vm->n_devices, sizeof(*devs));
		devp = calloc(vm->n_devices, sizeof(*devp));
		if (!devs || !devp)
			goto out;
		for (size_t i = 0; i < vm->n_devices; i++) {
			const struct lm_snapshot_device *d = &vm->devices[i];
			lmshim__v1__device_attachment__init(&devs[i]);
			devs[i].kind = d->kind ? d->kind : (char *)"";
			devs[i].id = d->id ? d->id : (char *)"";
			devs[i].path = d->path ? d->path : (char *)"";
			devs[i].read_only = d->read_only;
			devp[i] = &devs[i];
		}
		v.n_devices = vm->n_devices;
		v.devices = devp;
	}
	counters.next_pid = sb->next_pid;
	snap.schema_version = LM_SNAPSHOT_SCHEMA_VERSION;
	snap.vm = &v;
	snap.counters = &counters;

	if (sb->np) {
		pods = calloc(sb->np, sizeof(*pods));
		podp = calloc(sb->np, sizeof(*podp));
		if (!pods || !podp)
			goto out;
	}
	if (sb->n) {
		cs = calloc(sb->n, sizeof(*cs));
		csp = calloc(sb->n, sizeof(*csp));
		inits = calloc(sb->n, sizeof(*inits));
		if (!cs || !csp || !inits)
			goto out;
	}
	size_t total_x = 0, used_x = 0;
	for (size_t i = 0; i < sb->n; i++)
		total_x += sb->v[i]->c.n_execs;
	if (total_x) {
		xs = calloc(total_x, sizeof(*xs));
		xsp = calloc(total_x, sizeof(*xsp));
		if (!xs || !xsp)
			goto out;
	}
	/* Pods in ID order; each pod's containers in ID order (sb->v is
	 * sorted, so filtering keeps the order). csp is one array carved
	 * into consecutive per-pod slices. */
	size_t used = 0;
	for (size_t p = 0; p < sb->np; p++) {
		Lmshim__V1__PodSnapshot *ps = &pods[p];
		lmshim__v1__pod_snapshot__init(ps);
		ps->id = sb->pods[p]->id;
		ps->network = sb->pods[p]->network;
		ps->containers = csp ? &csp[used] : NULL;
		for (size_t i = 0; i < sb->n; i++) {
			const struct lm_container *c = &sb->v[i]->c;
			if (strcmp(c->pod_id, ps->id) != 0)
				continue;
			Lmshim__V1__ContainerSnapshot *x = &cs[used];
			Lmshim__V1__InitProcess *ip = &inits[used];
			lmshim__v1__container_snapshot__init(x);
			lmshim__v1__init_process__init(ip);
			x->id = c->id;
			x->type = c->type == LM_CTR_SANDBOX ? LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX
							     : LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_CONTAINER;
			x->n_layers = c->n_layers;
			x->layers = c->layers;
			x->scratch = c->scratch;
			x->rootfs = c->rootfs;
			x->guest_id = c->guest_id ? c->guest_id : (char *)"";
			ip->pid = c->pid;
			ip->bundle = c->bundle;
			ip->process_spec.data = c->process_spec;
			ip->process_spec.len = c->process_spec_len;
			ip->stdin = c->stdin_path;
			ip->stdout = c->stdout_path;
			ip->stderr = c->stderr_path;
			ip->terminal = c->terminal;
			ip->state = (uint32_t)c->state;
			ip->exit_status = c->exit_status;
			ip->exited_at_ns = c->exited_at_ns;
			x->init = ip;
			x->execs = xsp ? &xsp[used_x] : NULL;
			for (size_t e = 0; e < c->n_execs; e++) {
				const struct lm_exec *src = &sb->v[i]->xs[e]->x;
				Lmshim__V1__ExecProcess *xp = &xs[used_x];
				lmshim__v1__exec_process__init(xp);
				xp->id = src->id;
				xp->pid = src->pid;
				xp->process_spec.data = src->process_spec;
				xp->process_spec.len = src->process_spec_len;
				xp->stdin = src->stdin_path;
				xp->stdout = src->stdout_path;
				xp->stderr = src->stderr_path;
				xp->terminal = src->terminal;
				xp->state = (uint32_t)src->state;
				xp->exit_status = src->exit_status;
				xp->exited_at_ns = src->exited_at_ns;
				xsp[used_x++] = xp;
				x->n_execs++;
			}
			csp[used++] = x;
			ps->n_containers++;
		}
		podp[p] = ps;
	}
	snap.n_pods = sb->np;
	snap.pods = podp;

	size_t blen = lmshim__v1__sandbox_snapshot__get_packed_size(&snap);
	body = malloc(blen ? blen : 1);
	if (!body)
		goto out;
	lmshim__v1__sandbox_snapshot__pack(&snap, body);

	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	any.type_url = (char *)LM_SNAPSHOT_TYPE_URL;
	any.value.data = body;
	any.value.len = blen;
	size_t alen = google__protobuf__any__get_packed_size(&any);
	anyb = malloc(alen ? alen : 1);
	if (!anyb)
		goto out;
	google__protobuf__any__pack(&any, anyb);
	*out = anyb;
	*len = alen;
	anyb = NULL;
	rc = 0;
out:
	free(anyb);
	free(body);
	free(xsp);
	free(xs);
	free(inits);
	free(csp);
	free(cs);
	free(podp);
	free(pods);
	free(devp);
	free(devs);
	free(regp);
	free(regions);
	return rc;
}

/* ---- snapshot import ----------------------------------------------------- */

void lm_snapshot_vm_clear(struct lm_snapshot_vm *vm)
{
	if (!vm)
		return;
	free(vm->vm_id);
	free(vm->document);
	free(vm->compat);
	free(vm->regions);
	for (size_t i = 0; i < vm->n_devices; i++) {
		free(vm->devices[i].kind);
		free(vm->devices[i].id);
		free(vm->devices[i].path);
	}
	free(vm->devices);
	memset(vm, 0, sizeof(*vm));
}

static int reject(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int reject(char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static int copy_vm(const Lmshim__V1__VmSnapshot *v, struct lm_snapshot_vm *vm)
{
	memset(vm, 0, sizeof(*vm));
	vm->vm_id = strdup(v->vm_id);
	vm->document = strdup(v->document);
	if (!vm->vm_id || !vm->document)
		goto oom;
	if (v->compatibility.len) {
		vm->compat = malloc(v->compatibility.len);
		if (!vm->compat)
			goto oom;
		memcpy(vm->compat, v->compatibility.data, v->compatibility.len);
		vm->compat_len = v->compatibility.len;
	}
	vm->vcpus = v->vcpus;
	vm->memory_bytes = v->memory_bytes;
	vm->generation = v->generation;
	if (v->n_regions) {
		vm->regions = calloc(v->n_regions, sizeof(*vm->regions));
		if (!vm->regions)
			goto oom;
		vm->n_regions = v->n_regions;
		for (size_t i = 0; i < v->n_regions; i++) {
			vm->regions[i].gpa = v->regions[i]->gpa;
			vm->regions[i].size = v->regions[i]->size;
		}
	}
	if (v->n_devices) {
		vm->devices = calloc(v->n_devices, sizeof(*vm->devices));
		if (!vm->devices)
			goto oom;
		vm->n_devices = v->n_devices;
		for (size_t i = 0; i < v->n_devices; i++) {
			struct lm_snapshot_device *d = &vm->devices[i];
			d->kind = strdup(v->devices[i]->kind);
			d->id = strdup(v->devices[i]->id);
			d->path = strdup(v->devices[i]->path);
			d->read_only = v->devices[i]->read_only;
			if (!d->kind || !d->id || !d->path)
				goto oom;
		}
	}
	return 0;
oom:
	lm_snapshot_vm_clear(vm);
	return -ENOMEM;
}

/* Uniqueness in O(n log n) (a snapshot may hold many containers): pod
 * IDs, container IDs across all pods, init PIDs. */
struct ref {
	const char *id;            /* container or pod ID */
	size_t pod;                /* index of its pod */
	uint32_t pid;
};

static int ref_by_id(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;
	int c = strcmp(x->id, y->id);
	if (c)
		return c;
	return x->pod < y->pod ? -1 : x->pod > y->pod;
}

static int ref_by_pid(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;
	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return ref_by_id(a, b);
}

static int check_unique(const Lmshim__V1__SandboxSnapshot *s, size_t total, char *err, size_t errlen)
{
	size_t n = total > s->n_pods ? total : s->n_pods;
	int rc = 0;
	if (n < 2)
		return 0;
	struct ref *v = calloc(n, sizeof(*v));
	if (!v) {
		reject(err, errlen, "snapshot: out of memory");
		return -ENOMEM;
	}
	for (size_t p = 0; p < s->n_pods; p++)
		v[p] = (struct ref){s->pods[p]->id, p, 0};
	qsort(v, s->n_pods, sizeof(*v), ref_by_id);
	for (size_t i = 1; i < s->n_pods; i++)
		if (strcmp(v[i - 1].id, v[i].id) == 0) {
			rc = reject(err, errlen, "snapshot: pods[%zu].id \"%s\" duplicate", v[i].pod, v[i].id);
			goto out;
		}
	size_t k = 0;
	for (size_t p = 0; p < s->n_pods; p++)
		for (size_t j = 0; j < s->pods[p]->n_containers; j++) {
			const Lmshim__V1__ContainerSnapshot *c = s->pods[p]->containers[j];
			v[k++] = (struct ref){c->id, p, c->init->pid};
		}
	qsort(v, total, sizeof(*v), ref_by_id);
	for (size_t i = 1; i < total; i++)
		if (strcmp(v[i - 1].id, v[i].id) == 0) {
			if (v[i - 1].pod == v[i].pod)
				rc = reject(err, errlen, "snapshot: container \"%s\" twice in pod \"%s\"",
					    v[i].id, s->pods[v[i].pod]->id);
			else
				rc = reject(err, errlen, "snapshot: container \"%s\" in two pods (\"%s\", \"%s\")",
					    v[i].id, s->pods[v[i - 1].pod]->id, s->pods[v[i].pod]->id);
			goto out;
		}
	qsort(v, total, sizeof(*v), ref_by_pid);
	for (size_t i = 1; i < total; i++)
		if (v[i - 1].pid == v[i].pid) {
			rc = reject(err, errlen, "snapshot: containers \"%s\" and \"%s\" share init.pid %" PRIu32,
				    v[i - 1].id, v[i].id, v[i].pid);
			goto out;
		}
out:
	free(v);
	return rc;
}

/* A container's exec'd processes: a guest container's only, named as
 * the agent takes them, in strictly increasing ID order (so unique), each
 * in a state an exec has, with a PID once started. */
static int validate_execs(const Lmshim__V1__ContainerSnapshot *c, char *err, size_t errlen)
{
	if (c->n_execs && (!c->guest_id || !*c->guest_id))
		return reject(err, errlen, "snapshot: container \"%s\": execs without a guest_id", c->id);
	if (c->n_execs > LM_SANDBOX_MAX_EXECS)
		return reject(err, errlen, "snapshot: container \"%s\": %zu execs, over the limit of %u",
			      c->id, c->n_execs, LM_SANDBOX_MAX_EXECS);
	for (size_t e = 0; e < c->n_execs; e++) {
		const Lmshim__V1__ExecProcess *x = c->execs[e];
		if (!lm_sandbox_exec_id_ok(x->id))
			return reject(err, errlen, "snapshot: container \"%s\": execs[%zu].id \"%.80s\" "
				      "invalid (1..64 of [A-Za-z0-9_.-])", c->id, e, x->id ? x->id : "");
		if (e && strcmp(c->execs[e - 1]->id, x->id) >= 0)
			return reject(err, errlen, "snapshot: container \"%s\": execs[%zu].id \"%s\" "
				      "duplicate or out of order", c->id, e, x->id);
		if (x->state < LM_CTR_CREATED || x->state > LM_CTR_STOPPED)
			return reject(err, errlen, "snapshot: container \"%s\": exec \"%s\": state %" PRIu32
				      " invalid", c->id, x->id, x->state);
		if (x->state == LM_CTR_RUNNING && x->pid == 0)
			return reject(err, errlen, "snapshot: container \"%s\": exec \"%s\": running "
				      "without a pid", c->id, x->id);
	}
	return 0;
}

/* Structural checks of a decoded snapshot; builds nothing. */
static int validate(const Lmshim__V1__SandboxSnapshot *s, char *err, size_t errlen)
{
	if (s->schema_version != LM_SNAPSHOT_SCHEMA_VERSION)
		return reject(err, errlen, "snapshot: schema_version %" PRIu32 " unsupported (want %u)",
			      s->schema_version, LM_SNAPSHOT_SCHEMA_VERSION);
	const Lmshim__V1__VmSnapshot *v = s->vm;
	if (!v)
		return reject(err, errlen, "snapshot: vm missing");
	if (!v->vm_id || !*v->vm_id)
		return reject(err, errlen, "snapshot: vm.vm_id empty");
	if (!v->document || !*v->document)
		return reject(err, errlen, "snapshot: vm.document empty");
	if (v->vcpus == 0)
		return reject(err, errlen, "snapshot: vm.vcpus is 0");
	if (v->memory_bytes == 0)
		return reject(err, errlen, "snapshot: vm.memory_bytes is 0");
	for (size_t i = 0; i < v->n_regions; i++)
		if (v->regions[i]->size == 0 || v->regions[i]->gpa + v->regions[i]->size < v->regions[i]->gpa)
			return reject(err, errlen, "snapshot: vm.regions[%zu] invalid (size 0 or wraps)", i);
	if (!s->counters)
		return reject(err, errlen, "snapshot: counters missing");
	uint32_t next_pid = s->counters->next_pid;
	size_t total = 0;

	for (size_t p = 0; p < s->n_pods; p++) {
		const Lmshim__V1__PodSnapshot *pod = s->pods[p];
		if (!pod->id || !*pod->id)
			return reject(err, errlen, "snapshot: pods[%zu].id empty", p);
		unsigned sandboxes = 0;
		for (size_t j = 0; j < pod->n_containers; j++) {
			const Lmshim__V1__ContainerSnapshot *c = pod->containers[j];
			if (!c->id || !*c->id)
				return reject(err, errlen, "snapshot: pods[%zu].containers[%zu].id empty", p, j);
			if (c->type != LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX &&
			    c->type != LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_CONTAINER)
				return reject(err, errlen, "snapshot: container \"%s\": type %d unknown",
					      c->id, (int)c->type);
			if (c->type == LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX && ++sandboxes > 1)
				return reject(err, errlen, "snapshot: pod \"%s\": more than one sandbox container",
					      pod->id);
			const Lmshim__V1__InitProcess *ip = c->init;
			if (!ip)
				return reject(err, errlen, "snapshot: container \"%s\": init missing", c->id);
			if (ip->pid == 0)
				return reject(err, errlen, "snapshot: container \"%s\": init.pid is 0", c->id);
			if (ip->pid >= next_pid)
				return reject(err, errlen,
					      "snapshot: counters.next_pid %" PRIu32 " not above container \"%s\" init.pid %" PRIu32,
					      next_pid, c->id, ip->pid);
			if (c->guest_id && strlen(c->guest_id) > LM_GUEST_ID_MAX)
				return reject(err, errlen, "snapshot: container \"%s\": guest_id longer than %u bytes",
					      c->id, LM_GUEST_ID_MAX);
			if (ip->state < LM_CTR_CREATED || ip->state > LM_CTR_PAUSED ||
			    (ip->state == LM_CTR_PAUSED && (!c->guest_id || !*c->guest_id)))
				return reject(err, errlen, "snapshot: container \"%s\": init.state %" PRIu32 " invalid",
					      c->id, ip->state);
			int rc = validate_execs(c, err, errlen);
			if (rc)
				return rc;
			total++;
		}
	}
	if (total > LM_SNAPSHOT_MAX_CONTAINERS || s->n_pods > LM_SNAPSHOT_MAX_CONTAINERS)
		return reject(err, errlen, "snapshot: %zu pods, %zu containers: over the limit of %u",
			      s->n_pods, total, LM_SNAPSHOT_MAX_CONTAINERS);
	return check_unique(s, total, err, errlen);
}

int lm_sandbox_import(const uint8_t *any, size_t len, lm_sandbox_t **out,
		      struct lm_snapshot_vm *vm, char *err, size_t errlen)
{
	Google__Protobuf__Any *a = google__protobuf__any__unpack(NULL, len, any);
	if (!a)
		return reject(err, errlen, "snapshot: not a google.protobuf.Any");
	if (!a->type_url || strcmp(a->type_url, LM_SNAPSHOT_TYPE_URL) != 0) {
		int rc = reject(err, errlen, "snapshot: type_url \"%s\" is not %s",
				a->type_url ? a->type_url : "", LM_SNAPSHOT_TYPE_URL);
		google__protobuf__any__free_unpacked(a, NULL);
		return rc;
	}
	Lmshim__V1__SandboxSnapshot *s =
		lmshim__v1__sandbox_snapshot__unpack(NULL, a->value.len, a->value.data);
	google__protobuf__any__free_unpacked(a, NULL);
	if (!s)
		return reject(err, errlen, "snapshot: value does not decode as lmshim.v1.SandboxSnapshot");
	int rc = validate(s, err, errlen);
	if (rc < 0) {
		lmshim__v1__sandbox_snapshot__free_unpacked(s, NULL);
		return rc;
	}

	lm_sandbox_t *sb = NULL;
	struct lm_snapshot_vm tmp;
	memset(&tmp, 0, sizeof tmp);
	rc = lm_sandbox_create(&sb);
	if (rc == 0)
		rc = copy_vm(s->vm, &tmp);
	for (size_t p = 0; rc == 0 && p < s->n_pods; p++) {
		const Lmshim__V1__PodSnapshot *pod = s->pods[p];
		rc = lm_sandbox_add_pod(sb, pod->id, pod->network);
		for (size_t j = 0; rc == 0 && j < pod->n_containers; j++) {
			const Lmshim__V1__ContainerSnapshot *c = pod->containers[j];
			const Lmshim__V1__InitProcess *ip = c->init;
			struct lm_container_spec spec = {
				.id = c->id,
				.pod_id = pod->id,
				.type = c->type == LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX
						? LM_CTR_SANDBOX : LM_CTR_CONTAINER,
				.bundle = ip->bundle,
				.rootfs = c->rootfs,
				.scratch = c->scratch,
				.layers = (const char *const *)c->layers,
				.n_layers = (unsigned)c->n_layers,
				.stdin_path = ip->stdin,
				.stdout_path = ip->stdout,
				.stderr_path = ip->stderr,
				.terminal = ip->terminal,
				.process_spec = ip->process_spec.data,
				.process_spec_len = ip->process_spec.len,
			};
			struct ctr *k = NULL;
			rc = add_ctr(sb, &spec, ip->pid, &k);
			if (rc == 0) {
				k->c.state = (enum lm_ctr_state)ip->state;
				k->c.exit_status = ip->exit_status;
				k->c.exited_at_ns = ip->exited_at_ns;
				k->c.source_id = strdup(c->id);
				if (!k->c.source_id)
					rc = -ENOMEM;
				if (rc == 0 && c->guest_id && *c->guest_id &&
				    !(k->c.guest_id = strdup(c->guest_id)))
					rc = -ENOMEM;
				for (size_t e = 0; rc == 0 && e < c->n_execs; e++) {
					const Lmshim__V1__ExecProcess *x = c->execs[e];
					struct lm_exec_spec xs = {
						.id = x->id, .stdin_path = x->stdin, .stdout_path = x->stdout,
						.stderr_path = x->stderr, .terminal = x->terminal,
						.process_spec = x->process_spec.data,
						.process_spec_len = x->process_spec.len,
					};
					struct xproc *xp = NULL;
					rc = add_xproc(k, &xs, &xp);
					if (rc == 0) {
						xp->x.state = (enum lm_ctr_state)x->state;
						xp->x.pid = x->pid;
						xp->x.exit_status = x->exit_status;
						xp->x.exited_at_ns = x->exited_at_ns;
						xp->x.imported = true;
					} else if (rc != -ENOMEM) {
						rc = reject(err, errlen, "snapshot: container \"%s\": exec \"%s\" "
							    "rejected (%s)", c->id, x->id, strerror(-rc));
					}
				}
			} else if (rc != -ENOMEM) {
				/* validate() rules these out; keep the message precise anyway */
				rc = reject(err, errlen, "snapshot: container \"%s\" rejected (%s)",
					    c->id, strerror(-rc));
			}
		}
	}
	if (rc == 0)
		sb->next_pid = s->counters->next_pid;
	lmshim__v1__sandbox_snapshot__free_unpacked(s, NULL);
	if (rc < 0) {
		if (rc == -ENOMEM)
			reject(err, errlen, "snapshot: out of memory");
		lm_sandbox_destroy(sb);
		lm_snapshot_vm_clear(&tmp);
		return rc;
	}
	*out = sb;
	*vm = tmp;
	return 0;
}
