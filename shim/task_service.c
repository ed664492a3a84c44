/*
 * task_service.c: containerd.task.v2.Task over the simulated sandbox: the
 * ttrpc handlers (loop thread: pack the call into a controller message)
 * and lm_task_handle (controller thread: decode, gate, operate, answer).
 * See task_service.h for the gating and the Create paths.
 *
 * DESIGN. on_call runs on the ttrpc loop thread and only allocates and
 * sends a message; everything else runs on the controller's thread
 * inside lm_task_handle, which is the one place that touches the sandbox
 * for a task call. Reading a bundle's config.json is a bounded read of a
 * regular file opened with O_NONBLOCK (a FIFO or device there is refused,
 * not waited on).
 */
#define _GNU_SOURCE 1
#include "shim/task_service.h"
#include "shim/glue.h"
#include "shim/ociproc.h"
#include "shim/ocires.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroups_metrics.pb-c.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "mount.pb-c.h"
#include "rpc/frame.h"
#include "task.pb-c.h"
#include "task_types.pb-c.h"
#include "util/log.h"

#define CONFIG_MAX (1u << 20)   /* config.json larger than this is refused */

enum { GATE_NONE = 0, GATE_SESSION = 1, GATE_VM = 2 };

static const struct {
	const char *name;
	const ProtobufCMessageDescriptor *req;
	unsigned gate;
} methods[LM_TASK_N_METHODS] = {
	[LM_TASK_STATE] = {"State", &containerd__task__v2__state_request__descriptor, GATE_SESSION},
	[LM_TASK_CREATE] = {"Create", &containerd__task__v2__create_task_request__descriptor, GATE_NONE},
	[LM_TASK_START] = {"Start", &containerd__task__v2__start_request__descriptor, GATE_VM},
	[LM_TASK_DELETE] = {"Delete", &containerd__task__v2__delete_request__descriptor, GATE_SESSION},
	[LM_TASK_PIDS] = {"Pids", &containerd__task__v2__pids_request__descriptor, GATE_VM},
	/* (a migration's snapshot holds the state: none changes in one) */
	[LM_TASK_PAUSE] = {"Pause", &containerd__task__v2__pause_request__descriptor, GATE_VM | GATE_SESSION},
	[LM_TASK_RESUME] = {"Resume", &containerd__task__v2__resume_request__descriptor, GATE_VM | GATE_SESSION},
	[LM_TASK_CHECKPOINT] = {"Checkpoint", &containerd__task__v2__checkpoint_task_request__descriptor, GATE_VM},
	[LM_TASK_KILL] = {"Kill", &containerd__task__v2__kill_request__descriptor, GATE_SESSION},
	[LM_TASK_EXEC] = {"Exec", &containerd__task__v2__exec_process_request__descriptor, GATE_VM | GATE_SESSION},
	[LM_TASK_RESIZE_PTY] = {"ResizePty", &containerd__task__v2__resize_pty_request__descriptor, GATE_VM},
	[LM_TASK_CLOSE_IO] = {"CloseIO", &containerd__task__v2__close_iorequest__descriptor, GATE_VM},
	[LM_TASK_UPDATE] = {"Update", &containerd__task__v2__update_task_request__descriptor, GATE_VM},
	[LM_TASK_WAIT] = {"Wait", &containerd__task__v2__wait_request__descriptor, GATE_NONE},
	[LM_TASK_STATS] = {"Stats", &containerd__task__v2__stats_request__descriptor, GATE_VM},
	[LM_TASK_CONNECT] = {"Connect", &containerd__task__v2__connect_request__descriptor, GATE_NONE},
	[LM_TASK_SHUTDOWN] = {"Shutdown", &containerd__task__v2__shutdown_request__descriptor, GATE_NONE},
};

const char *lm_task_method_name(int method)
{
	if (method < 0 || method >= LM_TASK_N_METHODS)
		return "?";
	return methods[method].name;
}

static int method_index(const char *name)
{
	for (int i = 0; i < LM_TASK_N_METHODS; i++)
		if (strcmp(methods[i].name, name) == 0)
			return i;
	return -1;
}

/* ---- the ttrpc glue (loop thread) --------------------------------------- */

static void on_call(lm_rpc_call_t *call, void *arg)
{
	char what[64];
	snprintf(what, sizeof(what), "task %s", lm_rpc_call_method(call));
	lm__shim_post_call(arg, LM_CTL_TASK_CALL, call, method_index(lm_rpc_call_method(call)), what);
}

#define M(name) {name, LM_RPC_UNARY, on_call, NULL, NULL}
static const struct lm_rpc_method method_table[] = {
	M("State"), M("Create"), M("Start"), M("Delete"), M("Pids"), M("Pause"),
	M("Resume"), M("Checkpoint"), M("Kill"), M("Exec"), M("ResizePty"),
	M("CloseIO"), M("Update"), M("Wait"), M("Stats"), M("Connect"), M("Shutdown"),
};
#undef M

void lm_task_service_init(struct lm_rpc_service *svc, lm_actor_t *controller)
{
	svc->name = LM_TASK_SERVICE_NAME;
	svc->methods = method_table;
	svc->n_methods = sizeof method_table / sizeof method_table[0];
	svc->arg = controller;
}

/* ---- helpers (controller thread) ---------------------------------------- */

void lm_task_reply_msg(lm_rpc_call_t *call, const ProtobufCMessage *msg)
{
	uint8_t stack[512];
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = n <= sizeof stack ? stack : malloc(n);
	if (!buf) {
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	protobuf_c_message_pack(msg, buf);
	lm_rpc_call_reply(call, buf, n);
	if (buf != stack)
		free(buf);
}

int lm_task_stats_any(const struct lm_task_stats *st, uint8_t *buf, size_t cap, Google__Protobuf__Any *any)
{
	Io__Containerd__Cgroups__V2__PidsStat pids = IO__CONTAINERD__CGROUPS__V2__PIDS_STAT__INIT;
	Io__Containerd__Cgroups__V2__CPUStat cpu = IO__CONTAINERD__CGROUPS__V2__CPUSTAT__INIT;
	Io__Containerd__Cgroups__V2__MemoryStat mem = IO__CONTAINERD__CGROUPS__V2__MEMORY_STAT__INIT;
	Io__Containerd__Cgroups__V2__Metrics m = IO__CONTAINERD__CGROUPS__V2__METRICS__INIT;
	pids.current = st->pids_current;
	pids.limit = st->pids_limit;
	cpu.usage_usec = st->cpu_usage_usec;
	cpu.user_usec = st->cpu_user_usec;
	cpu.system_usec = st->cpu_system_usec;
	cpu.nr_periods = st->cpu_nr_periods;
	cpu.nr_throttled = st->cpu_nr_throttled;
	cpu.throttled_usec = st->cpu_throttled_usec;
	mem.usage = st->memory_usage;
	mem.usage_limit = st->memory_limit;
	m.pids = &pids;
	m.cpu = &cpu;
	m.memory = &mem;
	size_t n = protobuf_c_message_get_packed_size(&m.base);
	if (n > cap)
		return -ENOSPC;
	protobuf_c_message_pack(&m.base, buf);
	/* the type URL as containerd's typeurl writes it: the message's name */
	google__protobuf__any__init(any);
	any->type_url = (char *)"io.containerd.cgroups.v2.Metrics";
	any->value.data = buf;
	any->value.len = n;
	return 0;
}

void lm_task_reply_stats(lm_rpc_call_t *call, const struct lm_task_stats *st)
{
	uint8_t buf[256];
	Google__Protobuf__Any any;
	if (lm_task_stats_any(st, buf, sizeof buf, &any) < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "Stats: metrics over %zu bytes", sizeof buf);
		return;
	}
	Containerd__Task__V2__StatsResponse r = CONTAINERD__TASK__V2__STATS_RESPONSE__INIT;
	r.stats = &any;
	lm_task_reply_msg(call, &r.base);
}

static void set_ts(Google__Protobuf__Timestamp *ts, uint64_t ns)
{
	ts->seconds = (int64_t)(ns / 1000000000u);
	ts->nanos = (int32_t)(ns % 1000000000u);
}

static const char *s_or(const char *s)
{
	return s ? s : "";
}

/* The bundle's config.json: *out = NULL when there is none (no bundle, or
 * no file); -EINVAL with err filled when it is there but unusable. */
static int read_config(const char *bundle, json_t **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!bundle || !*bundle)
		return 0;
	char path[4096];
	if ((size_t)snprintf(path, sizeof path, "%s/config.json", bundle) >= sizeof path) {
		snprintf(err, errlen, "bundle path too long");
		return -EINVAL;
	}
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		snprintf(err, errlen, "config.json: %s", strerror(errno));
		return -EINVAL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)CONFIG_MAX) {
		snprintf(err, errlen, "config.json: not a regular file of at most %u bytes", CONFIG_MAX);
		close(fd);
		return -EINVAL;
	}
	size_t size = (size_t)st.st_size, got = 0;
	char *buf = malloc(size + 1);
	if (!buf) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	json_error_t je;
	json_t *root = json_loadb(buf, got, JSON_REJECT_DUPLICATES, &je);
	free(buf);
	if (!root || !json_is_object(root)) {
		snprintf(err, errlen, "config.json: %s (line %d)", root ? "not a JSON object" : je.text,
			 root ? 0 : je.line);
		json_decref(root);
		return -EINVAL;
	}
	*out = root;
	return 0;
}

/* A string annotation of config.json, or NULL. */
static const char *annotation(json_t *cfg, const char *key)
{
	json_t *a = cfg ? json_object_get(cfg, "annotations") : NULL;
	json_t *v = a ? json_object_get(a, key) : NULL;
	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* What a Create brings: resolved rootfs, layers and scratch from the
 * rootfs mounts, process spec from config.json. All heap. */
struct create_facts {
	char *rootfs;
	char *scratch;
	char **layers;
	unsigned n_layers, cap_layers;
	char *process_spec;
	uint64_t memory_limit;
	uint32_t cpus;
};

static void facts_free(struct create_facts *f)
{
	free(f->rootfs);
	free(f->scratch);
	for (unsigned i = 0; i < f->n_layers; i++)
		free(f->layers[i]);
	free(f->layers);
	free(f->process_spec);
	memset(f, 0, sizeof(*f));
}

static int push_layer(struct create_facts *f, const char *s, size_t n)
{
	if (f->n_layers == f->cap_layers) {
		unsigned cap = f->cap_layers ? f->cap_layers * 2 : 4;
		char **v = realloc(f->layers, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		f->layers = v;
		f->cap_layers = cap;
	}
	char *d = strndup(s, n);
	if (!d)
		return -ENOMEM;
	f->layers[f->n_layers++] = d;
	return 0;
}

/* Rootfs mounts: an overlay mount gives its lowerdir entries (read-only
 * layers, made base first) and its upperdir (scratch); any other mount is a
 * read-only layer when its options hold "ro", else the scratch. */
static int parse_mounts(const Containerd__Task__V2__CreateTaskRequest *r, struct create_facts *f)
{
	for (size_t i = 0; i < r->n_rootfs; i++) {
		const Containerd__Types__Mount *m = r->rootfs[i];
		if (m->type && strcmp(m->type, "overlay") == 0) {
			for (size_t j = 0; j < m->n_options; j++) {
				const char *o = m->options[j];
				if (strncmp(o, "lowerdir=", 9) == 0) {
					/* overlay lists the top layer first; ours
					 * are base first */
					unsigned first = f->n_layers;
					const char *p = o + 9;
					while (*p) {
						const char *e = strchr(p, ':');
						size_t n = e ? (size_t)(e - p) : strlen(p);
						if (n && push_layer(f, p, n) < 0)
							return -ENOMEM;
						p += n;
						if (*p == ':')
							p++;
					}
					for (unsigned a = first, b = f->n_layers; a + 1 < b; a++, b--) {
						char *t = f->layers[a];
						f->layers[a] = f->layers[b - 1];
						f->layers[b - 1] = t;
					}
				} else if (strncmp(o, "upperdir=", 9) == 0 && !f->scratch) {
					if (!(f->scratch = strdup(o + 9)))
						return -ENOMEM;
				}
			}
			continue;
		}
		bool ro = false;
		for (size_t j = 0; j < m->n_options; j++)
			if (strcmp(m->options[j], "ro") == 0)
				ro = true;
		if (ro) {
			if (push_layer(f, s_or(m->source), strlen(s_or(m->source))) < 0)
				return -ENOMEM;
		} else if (!f->scratch) {
			if (!(f->scratch = strdup(s_or(m->source))))
				return -ENOMEM;
		}
	}
	return 0;
}

static int gather_facts(const Containerd__Task__V2__CreateTaskRequest *r, json_t *cfg,
			struct create_facts *f)
{
	memset(f, 0, sizeof(*f));
	if (parse_mounts(r, f) < 0)
		return -ENOMEM;
	json_t *root = cfg ? json_object_get(cfg, "root") : NULL;
	json_t *rp = root ? json_object_get(root, "path") : NULL;
	const char *path = json_is_string(rp) ? json_string_value(rp) : "rootfs";
	int n;
	if (path[0] == '/')
		n = asprintf(&f->rootfs, "%s", path);
	else if (r->bundle && *r->bundle)
		n = asprintf(&f->rootfs, "%s/%s", r->bundle, path);
	else
		n = asprintf(&f->rootfs, "%s", "");
	if (n < 0) {
		f->rootfs = NULL;
		return -ENOMEM;
	}
	/* what the VM is sized by when this Create boots it */
	json_t *res = json_object_get(json_object_get(cfg, "linux"), "resources");
	json_t *mem = json_object_get(json_object_get(res, "memory"), "limit");
	json_t *cpu = json_object_get(res, "cpu");
	json_t *quota = json_object_get(cpu, "quota"), *period = json_object_get(cpu, "period");
	if (json_is_integer(mem) && json_integer_value(mem) > 0)
		f->memory_limit = (uint64_t)json_integer_value(mem);
	if (json_is_integer(quota) && json_is_integer(period) && json_integer_value(quota) > 0 &&
	    json_integer_value(period) > 0) {
		json_int_t q = json_integer_value(quota), p = json_integer_value(period);
		json_int_t k = (q + p - 1) / p;
		f->cpus = k > 64 ? 64 : (uint32_t)k;
	}
	json_t *proc = cfg ? json_object_get(cfg, "process") : NULL;
	if (proc) {
		f->process_spec = json_dumps(proc, JSON_COMPACT | JSON_SORT_KEYS);
		if (!f->process_spec)
			return -ENOMEM;
	}
	return 0;
}

static char *dup_opt(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* ---- the methods -------------------------------------------------------- */

static void do_create(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		      const Containerd__Task__V2__CreateTaskRequest *r, int *result,
		      struct lm_patch_request **patch_out)
{
	char err[512];
	json_t *cfg = NULL;
	const char *id = s_or(r->id);
	*result = LM_TASK_ANSWERED;
	if (!*id) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Create: id empty");
		return;
	}
	int rc = read_config(r->bundle, &cfg, err, sizeof err);
	if (rc < 0) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Create %s: bundle config: %s", id, err);
		return;
	}
	const char *source_id = annotation(cfg, LM_ANNOT_SOURCE_ID);
	const char *ctype = annotation(cfg, LM_ANNOT_CONTAINER_TYPE);
	const char *sandbox_id = annotation(cfg, LM_ANNOT_SANDBOX_ID);
	struct create_facts f;
	if (gather_facts(r, cfg, &f) < 0) {
		facts_free(&f);
		json_decref(cfg);
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Create %s: out of memory", id);
		return;
	}

	if (source_id) {
		/* The patch path: state first (is an import awaiting patches?),
		 * then the annotation, then the lookup. */
		const struct lm_container *c = NULL;
		const struct lm_container *had = lm_sandbox_find(sb, id);
		if (!gate->importing && had && had->patched && !had->containerds && LM_FROM_CONTAINERD(call)) {
			/* containerd takes over a task lmctl patched here: the
			 * guest runs here already (lm_sandbox_adopt) */
			int arc = lm_sandbox_adopt(sb, id, source_id);
			if (arc)
				lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
						 "Create %s: container \"%s\" was not migrated from \"%s\" "
						 "(annotation %s)", id, id, source_id, LM_ANNOT_SOURCE_ID);
			else {
				Containerd__Task__V2__CreateTaskResponse cr =
					CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
				cr.pid = had->pid;
				lm_task_reply_msg(call, &cr.base);
			}
		} else if (!gate->importing) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
					 "Create %s: the patch path is closed (no import awaiting patches)", id);
		} else if (!*source_id) {
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT,
					 "Create %s: annotation %s is empty", id, LM_ANNOT_SOURCE_ID);
		} else if (!(c = lm_sandbox_find_source(sb, source_id))) {
			lm_rpc_call_fail(call, LM_RPC_NOT_FOUND,
					 "Create %s: container \"%s\" (annotation %s) was not imported",
					 id, source_id, LM_ANNOT_SOURCE_ID);
		} else if (c->patched) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
					 "Create %s: imported container \"%s\" is already patched (now \"%s\")",
					 id, source_id, c->id);
		} else {
			struct lm_patch_request *p = calloc(1, sizeof(*p));
			bool oom = !p;
			if (p) {
				p->new_id = strdup(id);
				p->bundle = strdup(s_or(r->bundle));
				p->source_id = strdup(source_id);
				p->container_type = dup_opt(ctype);
				p->sandbox_id = dup_opt(sandbox_id);
				p->rootfs = f.rootfs, f.rootfs = NULL;
				p->scratch = f.scratch, f.scratch = NULL;
				p->layers = f.layers, f.layers = NULL;
				p->n_layers = f.n_layers, f.n_layers = 0;
				p->stdin_path = strdup(s_or(r->stdin));
				p->stdout_path = strdup(s_or(r->stdout));
				p->stderr_path = strdup(s_or(r->stderr));
				p->terminal = r->terminal;
				p->containerds = LM_FROM_CONTAINERD(call);
				oom = !p->new_id || !p->bundle || !p->source_id || (ctype && !p->container_type) ||
				      (sandbox_id && !p->sandbox_id) || !p->stdin_path || !p->stdout_path ||
				      !p->stderr_path;
			}
			if (oom) {
				lm_patch_request_free(p);
				lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Create %s: out of memory", id);
			} else {
				p->call = call;
				*patch_out = p;
				*result = LM_TASK_PATCH;
			}
		}
		facts_free(&f);
		json_decref(cfg);
		return;
	}

	/* A plain create. */
	if (gate->session_active) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
				 "Create %s: a migration session is active", id);
		goto out;
	}
	if (!gate->vm_running && !gate->boots_vm) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Create %s: the VM is not running", id);
		goto out;
	}
	enum lm_ctr_type type = LM_CTR_CONTAINER;
	const char *pod = id;
	bool new_pod = true;
	if (ctype && strcmp(ctype, "sandbox") == 0) {
		type = LM_CTR_SANDBOX;
	} else if (ctype && strcmp(ctype, "container") == 0) {
		if (!sandbox_id || !*sandbox_id) {
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT,
					 "Create %s: annotation %s is \"container\" but %s is absent",
					 id, LM_ANNOT_CONTAINER_TYPE, LM_ANNOT_SANDBOX_ID);
			goto out;
		}
		pod = sandbox_id;
		new_pod = false;
		if (!lm_sandbox_find_pod(sb, pod)) {
			lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Create %s: pod \"%s\" not found", id, pod);
			goto out;
		}
	} else if (ctype) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT,
				 "Create %s: annotation %s \"%s\" is neither sandbox nor container",
				 id, LM_ANNOT_CONTAINER_TYPE, ctype);
		goto out;
	}
	if (lm_sandbox_find(sb, id) || (new_pod && lm_sandbox_find_pod(sb, pod))) {
		lm_rpc_call_fail(call, LM_RPC_ALREADY_EXISTS, "Create %s: already exists", id);
		goto out;
	}
	if (gate->guest) {
		/* a real process in the utility VM: its layers become disks of
		 * the running VM first (the owner answers once it runs there) */
		struct lm_guest_new *n = calloc(1, sizeof(*n));
		bool oom = !n;
		if (n) {
			n->id = strdup(id);
			n->pod_id = strdup(pod);
			n->new_pod = new_pod;
			n->type = type;
			n->bundle = strdup(s_or(r->bundle));
			n->rootfs = f.rootfs, f.rootfs = NULL;
			n->scratch = f.scratch, f.scratch = NULL;
			n->layers = f.layers, f.layers = NULL;
			n->n_layers = f.n_layers, f.n_layers = 0;
			n->stdin_path = strdup(s_or(r->stdin));
			n->stdout_path = strdup(s_or(r->stdout));
			n->stderr_path = strdup(s_or(r->stderr));
			n->terminal = r->terminal;
			n->process_spec = f.process_spec, f.process_spec = NULL;
			n->memory_limit = f.memory_limit;
			n->cpus = f.cpus;
			n->containerds = LM_FROM_CONTAINERD(call);
			oom = !n->id || !n->pod_id || !n->bundle || !n->stdin_path || !n->stdout_path ||
			      !n->stderr_path;
		}
		if (oom) {
			lm_guest_new_free(n);
			lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Create %s: out of memory", id);
		} else {
			gate->guest->create(gate->guest_arg, n, call);
		}
		goto out;
	}
	if (new_pod && (rc = lm_sandbox_add_pod(sb, pod, NULL)) < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "Create %s: pod: %s", id, strerror(-rc));
		goto out;
	}
	struct lm_container_spec spec = {
		.id = id,
		.pod_id = pod,
		.type = type,
		.bundle = r->bundle,
		.rootfs = f.rootfs,
		.scratch = f.scratch,
		.layers = (const char *const *)f.layers,
		.n_layers = f.n_layers,
		.stdin_path = r->stdin,
		.stdout_path = r->stdout,
		.stderr_path = r->stderr,
		.terminal = r->terminal,
		.process_spec = (const uint8_t *)f.process_spec,
		.process_spec_len = f.process_spec ? strlen(f.process_spec) : 0,
		.containerds = LM_FROM_CONTAINERD(call),
	};
	const struct lm_container *c;
	rc = lm_sandbox_add(sb, &spec, &c);
	if (rc < 0) {
		if (new_pod)
			lm_sandbox_remove_pod(sb, pod);
		lm_rpc_call_fail(call, rc == -EEXIST ? LM_RPC_ALREADY_EXISTS : LM_RPC_INTERNAL,
				 "Create %s: %s", id, strerror(-rc));
		goto out;
	}
	Containerd__Task__V2__CreateTaskResponse resp = CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
	resp.pid = c->pid;
	lm_task_reply_msg(call, &resp.base);
out:
	facts_free(&f);
	json_decref(cfg);
}

/* State's answer for container c's init, or for its exec'd process x
 * (as runc's shim: then the process's ID is its exec ID). */
static void reply_state(lm_rpc_call_t *call, const struct lm_container *c, const struct lm_exec *x)
{
	Containerd__Task__V2__StateResponse s = CONTAINERD__TASK__V2__STATE_RESPONSE__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	enum lm_ctr_state state = x ? x->state : c->state;
	s.id = x ? x->id : c->id;
	s.exec_id = x ? x->id : (char *)"";
	s.bundle = c->bundle;
	s.pid = x ? x->pid : c->pid;
	s.status = (Containerd__V1__Types__Status)state;
	s.stdin = x ? x->stdin_path : c->stdin_path;
	s.stdout = x ? x->stdout_path : c->stdout_path;
	s.stderr = x ? x->stderr_path : c->stderr_path;
	s.terminal = x ? x->terminal : c->terminal;
	if (state == LM_CTR_STOPPED) {
		s.exit_status = x ? x->exit_status : c->exit_status;
		set_ts(&ts, x ? x->exited_at_ns : c->exited_at_ns);
		s.exited_at = &ts;
	}
	lm_task_reply_msg(call, &s.base);
}

static void do_state(lm_sandbox_t *sb, lm_rpc_call_t *call, const Containerd__Task__V2__StateRequest *r)
{
	const struct lm_container *c = lm_sandbox_find(sb, s_or(r->id));
	if (!c) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "State: container \"%s\" not found", s_or(r->id));
		return;
	}
	reply_state(call, c, NULL);
}

void lm_guest_new_free(struct lm_guest_new *n)
{
	if (!n)
		return;
	free(n->id);
	free(n->pod_id);
	free(n->bundle);
	free(n->rootfs);
	free(n->scratch);
	for (unsigned i = 0; i < n->n_layers; i++)
		free(n->layers[i]);
	free(n->layers);
	free(n->stdin_path);
	free(n->stdout_path);
	free(n->stderr_path);
	free(n->process_spec);
	free(n);
}

static void do_start(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		     const Containerd__Task__V2__StartRequest *r)
{
	const struct lm_container *c = lm_sandbox_find(sb, s_or(r->id));
	if (c && c->guest_id && gate->guest && c->state == LM_CTR_CREATED && !s_or(r->exec_id)[0]) {
		gate->guest->start(gate->guest_arg, c, call);
		return;
	}
	uint32_t pid = 0;
	int rc = s_or(r->exec_id)[0] ? -ESRCH : lm_sandbox_start_adopted(sb, s_or(r->id), &pid);
	if (rc)   /* (adopted: it runs already; containerd's Start says so) */
		rc = lm_sandbox_start(sb, s_or(r->id), &pid);
	if (rc == -ENOENT) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Start: container \"%s\" not found", s_or(r->id));
		return;
	}
	if (rc < 0) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Start: container \"%s\" is not in state created",
				 s_or(r->id));
		return;
	}
	Containerd__Task__V2__StartResponse s = CONTAINERD__TASK__V2__START_RESPONSE__INIT;
	s.pid = pid;
	lm_task_reply_msg(call, &s.base);
}

static void do_delete(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		      const Containerd__Task__V2__DeleteRequest *r)
{
	const char *id = s_or(r->id);
	const struct lm_container *c = lm_sandbox_find(sb, id);
	char *pod = c ? strdup(c->pod_id) : NULL;
	char *guest_id = c && c->guest_id && c->state != LM_CTR_RUNNING && c->state != LM_CTR_PAUSED
				 ? strdup(c->guest_id) : NULL;
	uint32_t pid = 0, status = 0;
	uint64_t at = 0;
	int rc = lm_sandbox_delete(sb, id, &pid, &status, &at);
	if (rc == -ENOENT) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Delete: container \"%s\" not found", id);
	} else if (rc < 0) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Delete: container \"%s\" is running", id);
	} else {
		/* A pod whose last container is gone goes too. */
		bool empty = pod != NULL;
		for (size_t i = 0; empty && i < lm_sandbox_count(sb); i++)
			if (strcmp(lm_sandbox_at(sb, i)->pod_id, pod) == 0)
				empty = false;
		if (empty)
			lm_sandbox_remove_pod(sb, pod);
		Containerd__Task__V2__DeleteResponse d = CONTAINERD__TASK__V2__DELETE_RESPONSE__INIT;
		Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
		d.pid = pid;
		d.exit_status = status;
		set_ts(&ts, at);
		d.exited_at = &ts;
		if (guest_id && gate->guest)   /* queued before the answer goes out */
			gate->guest->forget(gate->guest_arg, guest_id);
		lm_task_reply_msg(call, &d.base);
	}
	free(pod);
	free(guest_id);
}

static void do_pids(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		    const Containerd__Task__V2__PidsRequest *r)
{
	const struct lm_container *c = lm_sandbox_find(sb, s_or(r->id));
	if (c && c->guest_id && gate->guest && gate->guest->pids &&
	    (c->state == LM_CTR_RUNNING || c->state == LM_CTR_PAUSED)) {
		gate->guest->pids(gate->guest_arg, c, call);   /* its real processes */
		return;
	}
	uint32_t pids[1];
	int n = lm_sandbox_pids(sb, s_or(r->id), pids, 1);
	if (n < 0) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Pids: container \"%s\" not found", s_or(r->id));
		return;
	}
	Containerd__Task__V2__PidsResponse p = CONTAINERD__TASK__V2__PIDS_RESPONSE__INIT;
	Containerd__V1__Types__ProcessInfo info = CONTAINERD__V1__TYPES__PROCESS_INFO__INIT;
	Containerd__V1__Types__ProcessInfo *infos[1] = {&info};
	if (n > 0) {
		info.pid = pids[0];
		p.n_processes = 1;
		p.processes = infos;
	}
	lm_task_reply_msg(call, &p.base);
}

/* The container of a call about its cgroup (Stats, Update): a guest
 * container, when the owner has the hook (has_hook); else the call is
 * failed and NULL: NotFound; Unimplemented for a simulated container
 * (the sim backend's records have no cgroup) or an owner without the
 * hook. */
static const struct lm_container *cgroup_ctr(lm_sandbox_t *sb, bool has_hook, lm_rpc_call_t *call,
					     const char *name, const char *id)
{
	const struct lm_container *c = lm_sandbox_find(sb, id);
	if (!c) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "%s: container \"%s\" not found", name, id);
		return NULL;
	}
	if (!c->guest_id) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s %s: a simulated container has no cgroup "
				 "(the qemu backend's containers have)", name, id);
		return NULL;
	}
	if (!has_hook) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s %s: this shim's guest link does not "
				 "serve %s", name, id, name);
		return NULL;
	}
	return c;
}

/* Stats: a guest container's cgroup figures, from the guest; a
 * simulated container has no cgroup. */
static void do_stats(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call, const char *id)
{
	const struct lm_container *c = cgroup_ctr(sb, gate->guest && gate->guest->stats, call, "Stats", id);
	if (!c)
		return;
	if (c->state != LM_CTR_RUNNING && c->state != LM_CTR_PAUSED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Stats %s: the container is not running", id);
		return;
	}
	gate->guest->stats(gate->guest_arg, c, call);
}

/* Update: a guest container's cgroup limits, from the runtime-spec
 * LinuxResources the request carries (shim/ocires.h); a simulated
 * container has no cgroup. An Update without resources (annotations
 * only) changes nothing. */
static void do_update(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		      const Containerd__Task__V2__UpdateTaskRequest *r)
{
	const char *id = s_or(r->id);
	const struct lm_container *c = cgroup_ctr(sb, gate->guest && gate->guest->update, call, "Update", id);
	if (!c)
		return;
	if (c->state == LM_CTR_STOPPED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Update %s: the container has stopped", id);
		return;
	}
	if (!r->resources) {
		lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
		return;
	}
	const char *url = s_or(r->resources->type_url);
	size_t ul = strlen(url), tl = strlen(LM_OCI_RESOURCES_TYPE);
	if (ul < tl || strcmp(url + ul - tl, LM_OCI_RESOURCES_TYPE)) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Update %s: resources of type \"%.120s\" (lmshim "
				 "takes the runtime-spec's %s)", id, url, LM_OCI_RESOURCES_TYPE);
		return;
	}
	struct lm_oci_resources res;
	char why[256];
	if (lm_oci_resources_parse(r->resources->value.data, r->resources->value.len, &res, why,
				   sizeof why)) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Update %s: %s", id, why);
		return;
	}
	if (!res.set_memory && !res.set_pids && !res.set_cpu_max && !res.set_cpu_weight) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Update %s: no limit lmshim applies in the "
				 "utility VM (memory.limit, cpu.quota/period, cpu.shares, pids.limit)%s%s", id,
				 res.ignored[0] ? "; given: " : "", res.ignored);
		return;
	}
	if (res.ignored[0])
		lm_log_info("task", "Update: fields not applied in the utility VM", "id=%s fields=\"%s\"", id,
			    res.ignored);
	gate->guest->update(gate->guest_arg, c, &res, call);
}

static const char *const state_names[] = { "unknown", "created", "running", "stopped", "paused" };

static const char *state_name(enum lm_ctr_state s)
{
	return state_names[s <= LM_CTR_PAUSED ? s : 0];
}

/* Pause / Resume: a guest container's processes are frozen or thawed by
 * the guest (its cgroup's freezer); a simulated container has none. */
static void do_pause(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call, const char *id,
		     bool resume)
{
	const char *name = resume ? "Resume" : "Pause";
	const struct lm_container *c = lm_sandbox_find(sb, id);
	if (!c) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "%s: container \"%s\" not found", name, id);
		return;
	}
	if (!c->guest_id || !gate->guest || !gate->guest->pause) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s %s: a simulated container has no processes "
				 "to freeze (the qemu backend's containers pause)", name, id);
		return;
	}
	enum lm_ctr_state want = resume ? LM_CTR_PAUSED : LM_CTR_RUNNING;
	if (c->state != want) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "%s %s: the container is %s, not %s", name, id,
				 state_name(c->state), state_name(want));
		return;
	}
	gate->guest->pause(gate->guest_arg, c, resume, call);
}

static void do_kill(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		    const Containerd__Task__V2__KillRequest *r)
{
	const char *id = s_or(r->id);
	const struct lm_container *c = lm_sandbox_find(sb, id);
	if (c && c->guest_id && gate->guest) {
		/* a real process: the signal goes to it, and its exit (if it
		 * exits) comes back through the guest's watch */
		if (c->state == LM_CTR_STOPPED)
			lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Kill %s: process already finished", id);
		else if (r->signal == 0 || r->signal > 64)
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Kill %s: signal %" PRIu32 " invalid",
					 id, r->signal);
		else
			gate->guest->kill(gate->guest_arg, c, NULL, r->signal, r->all, call);
		return;
	}
	int rc = lm_sandbox_kill(sb, id, r->signal);
	if (rc == -ENOENT)
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Kill: container \"%s\" not found", id);
	else if (rc == -ESRCH)
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Kill %s: process already finished", id);
	else if (rc < 0)
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Kill %s: signal %" PRIu32 " invalid", id,
				 r->signal);
	else
		lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
}

/* The container a CloseIO / ResizePty may act on: a guest container,
 * running or paused; else the call is answered (NotFound, Unimplemented
 * for a simulated one, FailedPrecondition) and NULL. */
static const struct lm_container *io_target(lm_sandbox_t *sb, const struct lm_task_gate *gate,
					    lm_rpc_call_t *call, const char *name, const char *id,
					    bool has_hook)
{
	const struct lm_container *c = lm_sandbox_find(sb, id);
	if (!c) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "%s: container \"%s\" not found", name, id);
		return NULL;
	}
	if (!c->guest_id || !gate->guest || !has_hook) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s %s: a simulated container has no stdio "
				 "(the qemu backend's containers have)", name, id);
		return NULL;
	}
	if (c->state != LM_CTR_RUNNING && c->state != LM_CTR_PAUSED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "%s %s: the container is not running",
				 name, id);
		return NULL;
	}
	return c;
}

/* CloseIO: the init's stdin ends (containerd asks it with stdin true;
 * without, there is nothing to close). */
static void do_close_io(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
			const Containerd__Task__V2__CloseIORequest *r)
{
	const char *id = s_or(r->id);
	const struct lm_container *c =
		io_target(sb, gate, call, "CloseIO", id, gate->guest && gate->guest->close_io);
	if (!c)
		return;
	if (!r->stdin) {
		lm_rpc_call_reply(call, NULL, 0);
		return;
	}
	if (!c->stdin_path || !c->stdin_path[0]) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "CloseIO %s: the container was created "
				 "without stdin", id);
		return;
	}
	gate->guest->close_io(gate->guest_arg, c, NULL, call);
}

/* ResizePty: the init's terminal takes the new size. */
static void do_resize(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		      const Containerd__Task__V2__ResizePtyRequest *r)
{
	const char *id = s_or(r->id);
	const struct lm_container *c =
		io_target(sb, gate, call, "ResizePty", id, gate->guest && gate->guest->resize);
	if (!c)
		return;
	if (!c->terminal) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "ResizePty %s: the container has no "
				 "terminal", id);
		return;
	}
	if (r->width == 0 || r->height == 0 || r->width > 65535 || r->height > 65535) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "ResizePty %s: width and height must be "
				 "1..65535, not %" PRIu32 "x%" PRIu32, id, r->width, r->height);
		return;
	}
	gate->guest->resize(gate->guest_arg, c, NULL, r->width, r->height, call);
}

static void do_wait(lm_sandbox_t *sb, lm_rpc_call_t *call, const Containerd__Task__V2__WaitRequest *r)
{
	if (lm_sandbox_wait(sb, s_or(r->id), call) < 0)
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Wait: container \"%s\" not found", s_or(r->id));
}

static void do_connect(lm_sandbox_t *sb, lm_rpc_call_t *call, const Containerd__Task__V2__ConnectRequest *r)
{
	Containerd__Task__V2__ConnectResponse c = CONTAINERD__TASK__V2__CONNECT_RESPONSE__INIT;
	const char *id = s_or(r->id);
	if (*id) {
		const struct lm_container *k = lm_sandbox_find(sb, id);
		if (!k) {
			lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Connect: container \"%s\" not found", id);
			return;
		}
		c.task_pid = k->pid;
	}
	c.shim_pid = (uint32_t)getpid();
	c.version = (char *)"2";
	lm_task_reply_msg(call, &c.base);
}

/* ---- exec'd processes ------------------------------------------------------ */

/* Exec: an extra process in a running guest container, recorded here
 * (created, /tasks/exec-added); Start runs it. Its spec (an Any holding
 * the OCI process as JSON, containerd's
 * types.containerd.io/opencontainers/runtime-spec/1/Process) is checked
 * now, so that a bad one fails this call, not the Start. */
static void do_exec(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
		    const Containerd__Task__V2__ExecProcessRequest *r)
{
	const char *id = s_or(r->id), *xid = s_or(r->exec_id);
	const struct lm_container *c = lm_sandbox_find(sb, id);
	if (!c) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Exec: container \"%s\" not found", id);
		return;
	}
	if (!c->guest_id || !gate->guest || !gate->guest->exec_start) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "Exec %s: a simulated container has no processes "
				 "(the qemu backend's containers exec)", id);
		return;
	}
	if (!lm_sandbox_exec_id_ok(xid)) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Exec %s: exec_id \"%.80s\" invalid "
				 "(1..64 of [A-Za-z0-9_.-], not . or ..)", id, xid);
		return;
	}
	if (c->state != LM_CTR_RUNNING) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Exec %s/%s: the container is %s, not "
				 "running", id, xid, state_name(c->state));
		return;
	}
	if (lm_sandbox_find_exec(sb, id, xid)) {
		lm_rpc_call_fail(call, LM_RPC_ALREADY_EXISTS, "Exec %s/%s: exec ID already in use", id, xid);
		return;
	}
	if (!r->spec || !r->spec->value.len) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Exec %s/%s: spec missing (an OCI process)",
				 id, xid);
		return;
	}
	char why[300], where[200];
	struct lm_oci_proc proc;
	snprintf(where, sizeof where, "Exec %s/%s: spec", id, xid);
	int rc = lm_oci_proc_parse((const char *)r->spec->value.data, r->spec->value.len, where, &proc,
				   why, sizeof why);
	if (rc) {
		lm_rpc_call_fail(call, rc == -ENOMEM ? LM_RPC_RESOURCE_EXHAUSTED : LM_RPC_INVALID_ARGUMENT,
				 "%s", why);
		return;
	}
	lm_oci_proc_clear(&proc);
	struct lm_exec_spec xs = {
		.id = xid, .stdin_path = r->stdin, .stdout_path = r->stdout, .stderr_path = r->stderr,
		.terminal = r->terminal, .process_spec = r->spec->value.data,
		.process_spec_len = r->spec->value.len,
	};
	rc = lm_sandbox_exec_add(sb, id, &xs, NULL);
	if (rc == -ENOSPC)
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Exec %s/%s: the container has %u exec'd "
				 "processes already (delete some)", id, xid, LM_SANDBOX_MAX_EXECS);
	else if (rc)
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "Exec %s/%s: %s", id, xid, strerror(-rc));
	else
		lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
}

/* A task call about exec'd process xid of container id (every method
 * that has an exec_id but Exec itself). */
static void do_exec_call(lm_sandbox_t *sb, const struct lm_task_gate *gate, lm_rpc_call_t *call,
			 int method, const ProtobufCMessage *req, const char *id, const char *xid)
{
	const char *name = methods[method].name;
	const struct lm_container *c = lm_sandbox_find(sb, id);
	const struct lm_exec *x = c ? lm_sandbox_find_exec(sb, id, xid) : NULL;
	if (!c) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "%s: container \"%s\" not found", name, id);
		return;
	}
	if (!x) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "%s %s: exec \"%.80s\" not found", name, id, xid);
		return;
	}
	bool hooks = c->guest_id && gate->guest;
	switch (method) {
	case LM_TASK_STATE:
		reply_state(call, c, x);
		return;
	case LM_TASK_WAIT:
		(void)lm_sandbox_wait_exec(sb, id, xid, call);
		return;
	case LM_TASK_DELETE: {
		uint32_t pid = 0, status = 0;
		uint64_t at = 0;
		if (x->state == LM_CTR_RUNNING) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Delete %s: exec \"%s\" is running",
					 id, xid);
			return;
		}
		char *keep = strdup(xid);
		int rc = keep ? lm_sandbox_exec_delete(sb, id, xid, &pid, &status, &at) : -ENOMEM;
		if (rc) {
			free(keep);
			lm_rpc_call_fail(call, LM_RPC_INTERNAL, "Delete %s: exec \"%s\": %s", id, xid,
					 strerror(-rc));
			return;
		}
		Containerd__Task__V2__DeleteResponse d = CONTAINERD__TASK__V2__DELETE_RESPONSE__INIT;
		Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
		d.pid = pid;
		d.exit_status = status;
		set_ts(&ts, at);
		d.exited_at = &ts;
		if (hooks && gate->guest->exec_forget && pid)   /* it ran: the guest holds its status */
			gate->guest->exec_forget(gate->guest_arg, c, keep);
		free(keep);
		lm_task_reply_msg(call, &d.base);
		return;
	}
	default:
		break;
	}
	if (method == LM_TASK_START && gate->session_active) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Start %s/%s: a migration session is active",
				 id, xid);
		return;
	}
	if (!hooks) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s %s/%s: not a guest container", name, id, xid);
		return;
	}
	if (method == LM_TASK_START) {
		if (x->state != LM_CTR_CREATED) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Start %s/%s: the exec is %s, not "
					 "created", id, xid, state_name(x->state));
		} else if (c->state != LM_CTR_RUNNING) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Start %s/%s: the container is %s, "
					 "not running", id, xid, state_name(c->state));
		} else {
			gate->guest->exec_start(gate->guest_arg, c, x, call);
		}
		return;
	}
	if (x->state == LM_CTR_STOPPED && method == LM_TASK_KILL) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Kill %s/%s: process already finished", id, xid);
		return;
	}
	if (x->state != LM_CTR_RUNNING) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "%s %s/%s: the exec is %s, not running",
				 name, id, xid, state_name(x->state));
		return;
	}
	switch (method) {
	case LM_TASK_KILL: {
		const Containerd__Task__V2__KillRequest *r = (const void *)req;
		if (r->signal == 0 || r->signal > 64)
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "Kill %s/%s: signal %" PRIu32 " invalid",
					 id, xid, r->signal);
		else
			gate->guest->kill(gate->guest_arg, c, x, r->signal, false, call);
		return;
	}
	case LM_TASK_CLOSE_IO: {
		const Containerd__Task__V2__CloseIORequest *r = (const void *)req;
		if (!r->stdin)
			lm_rpc_call_reply(call, NULL, 0);
		else if (!x->stdin_path[0])
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "CloseIO %s/%s: the exec has no "
					 "stdin", id, xid);
		else if (!gate->guest->close_io)
			lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "CloseIO %s/%s: not supported", id, xid);
		else
			gate->guest->close_io(gate->guest_arg, c, x, call);
		return;
	}
	case LM_TASK_RESIZE_PTY: {
		const Containerd__Task__V2__ResizePtyRequest *r = (const void *)req;
		if (!x->terminal)
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "ResizePty %s/%s: the exec has no "
					 "terminal", id, xid);
		else if (r->width == 0 || r->height == 0 || r->width > 65535 || r->height > 65535)
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "ResizePty %s/%s: width and height "
					 "must be 1..65535, not %" PRIu32 "x%" PRIu32, id, xid, r->width,
					 r->height);
		else if (!gate->guest->resize)
			lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "ResizePty %s/%s: not supported", id, xid);
		else
			gate->guest->resize(gate->guest_arg, c, x, r->width, r->height, call);
		return;
	}
	default:
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: no exec handling", name);
		return;
	}
}

/* Field n (a string) of the requests that have an exec_id: every one of
 * them starts with `string id = 1; string exec_id = 2;`. NULL for the
 * others. */
static const char *id_field(int method, const ProtobufCMessage *m, unsigned n)
{
	switch (method) {
	case LM_TASK_STATE: case LM_TASK_START: case LM_TASK_DELETE: case LM_TASK_KILL:
	case LM_TASK_WAIT: case LM_TASK_RESIZE_PTY: case LM_TASK_CLOSE_IO:
		break;
	default:
		return NULL;
	}
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(m->descriptor, n);
	return f && f->type == PROTOBUF_C_TYPE_STRING ? *(char *const *)((const char *)m + f->offset) : NULL;
}

int lm_task_handle(lm_sandbox_t *sb, const struct lm_task_gate *gate,
		   lm_rpc_call_t *call, int method, struct lm_patch_request **patch_out)
{
	if (patch_out)
		*patch_out = NULL;
	if (method < 0 || method >= LM_TASK_N_METHODS) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s/%s not implemented",
				 lm_rpc_call_service(call), lm_rpc_call_method(call));
		return LM_TASK_ANSWERED;
	}
	const char *name = methods[method].name;
	size_t len = 0;
	const uint8_t *payload = lm_rpc_call_payload(call, &len);
	ProtobufCMessage *req = protobuf_c_message_unpack(methods[method].req, NULL, len, payload);
	if (!req) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: request does not decode as %s", name,
				 methods[method].req->name);
		return LM_TASK_ANSWERED;
	}
	if ((methods[method].gate & GATE_SESSION) && gate->session_active) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: a migration session is active", name);
		goto out;
	}
	if ((methods[method].gate & GATE_VM) && !gate->vm_running) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: the VM is not running", name);
		goto out;
	}
	const char *exec_id = id_field(method, req, 2);
	if (exec_id && *exec_id) {
		do_exec_call(sb, gate, call, method, req, s_or(id_field(method, req, 1)), exec_id);
		goto out;
	}
	int result = LM_TASK_ANSWERED;
	switch (method) {
	case LM_TASK_STATE:
		do_state(sb, call, (const Containerd__Task__V2__StateRequest *)req);
		break;
	case LM_TASK_CREATE: {
		struct lm_patch_request *p = NULL;
		do_create(sb, gate, call, (const Containerd__Task__V2__CreateTaskRequest *)req, &result, &p);
		if (result == LM_TASK_PATCH) {
			if (patch_out) {
				*patch_out = p;
			} else {
				lm_patch_request_free(p);   /* fails the call */
				result = LM_TASK_ANSWERED;
			}
		}
		break;
	}
	case LM_TASK_START:
		do_start(sb, gate, call, (const Containerd__Task__V2__StartRequest *)req);
		break;
	case LM_TASK_DELETE:
		do_delete(sb, gate, call, (const Containerd__Task__V2__DeleteRequest *)req);
		break;
	case LM_TASK_PIDS:
		do_pids(sb, gate, call, (const Containerd__Task__V2__PidsRequest *)req);
		break;
	case LM_TASK_KILL:
		do_kill(sb, gate, call, (const Containerd__Task__V2__KillRequest *)req);
		break;
	case LM_TASK_STATS:
		do_stats(sb, gate, call, s_or(((const Containerd__Task__V2__StatsRequest *)req)->id));
		break;
	case LM_TASK_PAUSE:
		do_pause(sb, gate, call, s_or(((const Containerd__Task__V2__PauseRequest *)req)->id), false);
		break;
	case LM_TASK_RESUME:
		do_pause(sb, gate, call, s_or(((const Containerd__Task__V2__ResumeRequest *)req)->id), true);
		break;
	case LM_TASK_WAIT:
		do_wait(sb, call, (const Containerd__Task__V2__WaitRequest *)req);
		break;
	case LM_TASK_UPDATE:
		do_update(sb, gate, call, (const Containerd__Task__V2__UpdateTaskRequest *)req);
		break;
	case LM_TASK_CLOSE_IO:
		do_close_io(sb, gate, call, (const Containerd__Task__V2__CloseIORequest *)req);
		break;
	case LM_TASK_EXEC:
		do_exec(sb, gate, call, (const Containerd__Task__V2__ExecProcessRequest *)req);
		break;
	case LM_TASK_RESIZE_PTY:
		do_resize(sb, gate, call, (const Containerd__Task__V2__ResizePtyRequest *)req);
		break;
	case LM_TASK_CONNECT:
		do_connect(sb, call, (const Containerd__Task__V2__ConnectRequest *)req);
		break;
	case LM_TASK_SHUTDOWN:
		/* containerd's rule (the runc shim's): answer, and exit only
		 * when nothing is left to serve */
		if (lm_sandbox_count(sb) == 0 && !gate->session_active)
			result = LM_TASK_EXIT;
		if (result == LM_TASK_EXIT && gate->exit_call) {
			*gate->exit_call = call;       /* answered by the owner */
			break;
		}
		lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
		break;
	default:
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s: not implemented by lmshim", name);
		break;
	}
	protobuf_c_message_free_unpacked(req, NULL);
	return result;
out:
	protobuf_c_message_free_unpacked(req, NULL);
	return LM_TASK_ANSWERED;
}

int lm_task_answer_patch(struct lm_patch_result *r, int apply_rc)
{
	lm_rpc_call_t *call = r->call;
	const char *id = s_or(r->new_id);
	int code;
	r->call = NULL;
	if (r->code != LM_RPC_OK) {
		code = r->code;
		if (call)
			lm_rpc_call_fail(call, code, "%s", r->message);
		return code;
	}
	switch (apply_rc) {
	case 0: code = LM_RPC_OK; break;
	case -EALREADY: code = LM_RPC_FAILED_PRECONDITION; break;
	case -ENOENT: code = LM_RPC_NOT_FOUND; break;
	case -EEXIST: code = LM_RPC_ALREADY_EXISTS; break;
	default: code = LM_RPC_INTERNAL; break;
	}
	if (!call)
		return code;
	if (code != LM_RPC_OK) {
		lm_rpc_call_fail(call, code, "Create %s: patching imported container \"%s\": %s", id,
				 s_or(r->source_id),
				 apply_rc == -EALREADY ? "already patched" :
				 apply_rc == -ENOENT ? "not imported" :
				 apply_rc == -EEXIST ? "new ID already in use" : strerror(-apply_rc));
		return code;
	}
	Containerd__Task__V2__CreateTaskResponse resp = CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
	resp.pid = r->pid;
	lm_task_reply_msg(call, &resp.base);
	return LM_RPC_OK;
}
