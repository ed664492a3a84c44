/*
 * shim_driver.h: an orchestrator in a header, for the in-process shim
 * tests and bench_shim: two whole shims on sockets in a temp dir, and the
 * contract's calls made over real ttrpc connections (each returns the
 * gRPC status code, or a negative DRIVER_* value when no usable answer
 * came).
 */
#ifndef LM_TESTS_SHIM_DRIVER_H
#define LM_TESTS_SHIM_DRIVER_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "actors/controller.h"
#include "shim/shim.h"
#include "google/protobuf/any.pb-c.h"
#include "migration.pb-c.h"
#include "rpc/client.h"
#include "task.pb-c.h"

#define DRIVER_NO_ANSWER (-1)
#define DRIVER_BAD_ANSWER (-2)

static bool driver_verbose = true;
/* the shims' lm_shim_config.transfer_cpu_pct (bench_shim --transfer-cpu) */
static unsigned driver_transfer_cpu = LM_SHIM_TRANSFER_CPU_DEFAULT;
/* the shims' orphan timeout (0 = never: the tests drive every call) and
 * the migration link's stall timeout (0 = the default) */
static unsigned driver_orphan_ms;
static unsigned driver_stall_ms;

#define SESSION "sess-1"

struct env {
	char dir[128];
	char src_sock[200], dst_sock[200], mig_sock[200];
	lm_shim_t *src, *dst;
	lm_rpc_client_t *sc, *dc;
};

static const struct lm_shim_container CTRS[] = {
	{ "pod-a", "pod-a", true, 1 },
	{ "c1", "pod-a", false, 2 },
};

/* Two shims (source booted from vm_doc with the containers of CTRS,
 * destination idle) on sockets in a fresh temp dir, and a client each.
 * 0 or -1. */
static inline int driver_env_create(struct env **out, const char *vm_doc)
{
	struct env *e = calloc(1, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/tmp/lmshim-test-XXXXXX");
	if (!mkdtemp(e->dir))
		return -1;
	snprintf(e->src_sock, sizeof(e->src_sock), "%s/src.sock", e->dir);
	snprintf(e->dst_sock, sizeof(e->dst_sock), "%s/dst.sock", e->dir);
	snprintf(e->mig_sock, sizeof(e->mig_sock), "%s/mig.sock", e->dir);
	char sstate[200], dstate[200];
	snprintf(sstate, sizeof(sstate), "%s/src-state", e->dir);
	snprintf(dstate, sizeof(dstate), "%s/dst-state", e->dir);
	struct lm_shim_config sc = {
		.socket = e->src_sock, .id = "src", .ns = "test", .vm_document = vm_doc,
		.containers = CTRS, .n_containers = 2, .state_dir = sstate, .workers = 2,
		.any_uid = true, .transfer_cpu_pct = driver_transfer_cpu,
		.orphan_ms = driver_orphan_ms, .stall_ms = driver_stall_ms,
	};
	struct lm_shim_config dc = {
		.socket = e->dst_sock, .id = "dst", .ns = "test", .state_dir = dstate,
		.workers = 2, .any_uid = true, .transfer_cpu_pct = driver_transfer_cpu,
		.orphan_ms = driver_orphan_ms, .stall_ms = driver_stall_ms,
	};
	if (lm_shim_create(&e->src, &sc) || lm_shim_create(&e->dst, &dc))
		return -1;
	if (lm_rpc_client_connect(&e->sc, e->src_sock) || lm_rpc_client_connect(&e->dc, e->dst_sock))
		return -1;
	*out = e;
	return 0;
}

static inline void driver_env_destroy(struct env *e)
{
	lm_rpc_client_close(e->sc);
	lm_rpc_client_close(e->dc);
	lm_shim_destroy(e->src);
	lm_shim_destroy(e->dst);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cleanup of %s failed\n", e->dir);
	free(e);
}

/* One unary call with a packed protobuf request; returns the status code
 * and (optionally) keeps the response. */
static inline int call(lm_rpc_client_t *c, const char *service, const char *method,
		const ProtobufCMessage *req, struct lm_rpc_result *out)
{
	size_t len = req ? protobuf_c_message_get_packed_size(req) : 0;
	uint8_t *buf = malloc(len + 1);
	struct lm_rpc_result r = { 0 };
	struct lm_rpc_call_opts opts = { .timeout_ns = 60ll * 1000000000ll };
	if (req)
		protobuf_c_message_pack(req, buf);
	int rc = lm_rpc_client_call(c, service, method, buf, len, &opts, &r);
	free(buf);
	if (rc) {
		fprintf(stderr, "    %s/%s: no answer: %s\n", service, method, strerror(-rc));
		return DRIVER_NO_ANSWER;
	}
	int code = r.code;
	if (code && driver_verbose)
		fprintf(stderr, "    %s/%s -> %d %s\n", service, method, code, r.message);
	if (out)
		*out = r;
	else
		lm_rpc_result_free(&r);
	return code;
}

static inline int mig(lm_rpc_client_t *c, const char *method, const ProtobufCMessage *req)
{
	return call(c, "Migration", method, req, NULL);
}

static inline int cancel(lm_rpc_client_t *c, const char *sid)
{
	CancelRequest r = CANCEL_REQUEST__INIT;
	r.session_id = (char *)sid;
	return mig(c, "Cancel", &r.base);
}

static inline int cleanup(lm_rpc_client_t *c, const char *sid)
{
	CleanupRequest r = CLEANUP_REQUEST__INIT;
	r.session_id = (char *)sid;
	return mig(c, "Cleanup", &r.base);
}

static inline int finalize(lm_rpc_client_t *c, const char *sid, int action)
{
	FinalizeSandboxRequest r = FINALIZE_SANDBOX_REQUEST__INIT;
	r.session_id = (char *)sid;
	r.action = action;
	return mig(c, "FinalizeSandbox", &r.base);
}

static inline int transfer(lm_rpc_client_t *c, const char *sid, int64_t timeout_ms)
{
	TransferSandboxRequest r = TRANSFER_SANDBOX_REQUEST__INIT;
	Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
	r.session_id = (char *)sid;
	if (timeout_ms) {
		d.seconds = timeout_ms / 1000;
		d.nanos = (int32_t)((timeout_ms % 1000) * 1000000);
		r.timeout = &d;
	}
	return mig(c, "TransferSandbox", &r.base);
}

static inline int socket_desc(lm_rpc_client_t *c, const char *sid, bool listen, const char *addr)
{
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	if (listen) {
		d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN;
		d.listen = (char *)addr;
	} else {
		d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT;
		d.connect = (char *)addr;
	}
	uint8_t buf[512];
	size_t n = linux_socket_descriptor__pack(&d, buf);
	CreateDuplicateSocketRequest r = CREATE_DUPLICATE_SOCKET_REQUEST__INIT;
	r.session_id = (char *)sid;
	r.protocol_info.data = buf;
	r.protocol_info.len = n;
	return mig(c, "CreateDuplicateSocket", &r.base);
}

/* PrepareAndExport on the source; *config gets the Any (free with
 * google__protobuf__any__free_unpacked). */
static inline int export_sandbox(struct env *e, Google__Protobuf__Any **config)
{
	PrepareAndExportSandboxRequest r = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
	r.session_id = SESSION;
	struct lm_rpc_result res;
	int code = call(e->sc, "Migration", "PrepareAndExportSandbox", &r.base, &res);
	if (code == 0) {
		PrepareAndExportSandboxResponse *resp =
			prepare_and_export_sandbox_response__unpack(NULL, res.len, res.payload);
		if (!resp || !resp->config) {
			if (resp)
				prepare_and_export_sandbox_response__free_unpacked(resp, NULL);
			lm_rpc_result_free(&res);
			return DRIVER_BAD_ANSWER;
		}
		*config = resp->config;
		resp->config = NULL;
		prepare_and_export_sandbox_response__free_unpacked(resp, NULL);
	}
	lm_rpc_result_free(&res);
	return code;
}

static inline int import_sandbox(struct env *e, Google__Protobuf__Any *config)
{
	ImportSandboxRequest r = IMPORT_SANDBOX_REQUEST__INIT;
	r.session_id = SESSION;
	r.sandbox_id = "pod-a";
	r.config = config;
	return mig(e->dc, "ImportSandbox", &r.base);
}

/* The patch path: a task Create on the destination for imported
 * container `src_id`, as an orchestrator makes it. */
static inline int patch_create(struct env *e, const char *src_id, const char *new_id, bool sandbox,
			unsigned layers, uint32_t *pid)
{
	char bundle[300], path[400], rootfs[400];
	snprintf(bundle, sizeof(bundle), "%s/bundles/%s", e->dir, new_id);
	snprintf(path, sizeof(path), "%s/bundles", e->dir);
	mkdir(path, 0700);
	mkdir(bundle, 0700);
	snprintf(rootfs, sizeof(rootfs), "%s/rootfs", bundle);
	mkdir(rootfs, 0700);
	snprintf(path, sizeof(path), "%s/config.json", bundle);
	FILE *f = fopen(path, "w");
	if (!f)
		return DRIVER_BAD_ANSWER;
	fprintf(f, "{\"ociVersion\":\"1.0.2\",\"root\":{\"path\":\"rootfs\"},"
		"\"annotations\":{\"io.microsoft.migration.source-container-id\":\"%s\","
		"\"io.kubernetes.cri.container-type\":\"%s\"}}", src_id, sandbox ? "sandbox" : "container");
	fclose(f);

	char lower[300] = "lowerdir=", upper[400], work[400];
	for (unsigned i = 0; i < layers; i++) {
		char l[64];
		snprintf(l, sizeof(l), "%s/layers/%s-%u", "/var/lib/test", new_id, i);
		if (i)
			strcat(lower, ":");
		strcat(lower, l);
	}
	snprintf(upper, sizeof(upper), "upperdir=%s/scratch/upper", bundle);
	snprintf(work, sizeof(work), "workdir=%s/scratch/work", bundle);
	char *opts[] = { lower, upper, work };
	Containerd__Types__Mount m = CONTAINERD__TYPES__MOUNT__INIT;
	m.type = "overlay";
	m.source = "overlay";
	m.options = opts;
	m.n_options = layers ? 3 : 2;
	if (!layers)
		m.options = opts + 1;
	Containerd__Types__Mount *mounts[] = { &m };
	Containerd__Task__V2__CreateTaskRequest r = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
	r.id = (char *)new_id;
	r.bundle = bundle;
	r.rootfs = mounts;
	r.n_rootfs = 1;
	struct lm_rpc_result res;
	int code = call(e->dc, "containerd.task.v2.Task", "Create", &r.base, &res);
	if (code == 0 && pid) {
		Containerd__Task__V2__CreateTaskResponse *resp =
			containerd__task__v2__create_task_response__unpack(NULL, res.len, res.payload);
		*pid = resp ? resp->pid : 0;
		if (resp)
			containerd__task__v2__create_task_response__free_unpacked(resp, NULL);
	}
	lm_rpc_result_free(&res);
	return code;
}

static inline int task_state(lm_rpc_client_t *c, const char *id, uint32_t *pid)
{
	Containerd__Task__V2__StateRequest r = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	r.id = (char *)id;
	struct lm_rpc_result res;
	int code = call(c, "containerd.task.v2.Task", "State", &r.base, &res);
	if (code == 0 && pid) {
		Containerd__Task__V2__StateResponse *s =
			containerd__task__v2__state_response__unpack(NULL, res.len, res.payload);
		*pid = s ? s->pid : 0;
		if (s)
			containerd__task__v2__state_response__free_unpacked(s, NULL);
	}
	lm_rpc_result_free(&res);
	return code;
}

/* Properties of a shim's VM (our Inspect service), or NULL. */
static inline json_t *inspect(lm_rpc_client_t *c)
{
	const char *q = "{\"PropertyTypes\":[\"MemoryDigest\"]}";
	struct lm_rpc_result res = { 0 };
	struct lm_rpc_call_opts opts = { .timeout_ns = 60ll * 1000000000ll };
	if (lm_rpc_client_call(c, LM_INSPECT_SERVICE, "Properties", q, strlen(q), &opts, &res))
		return NULL;
	json_t *j = res.code ? NULL : json_loadb((const char *)res.payload, res.len, 0, NULL);
	lm_rpc_result_free(&res);
	return j;
}

struct async_call {
	pthread_t th;
	lm_rpc_client_t *c;
	int kind;          /* 0 transfer, 1 listen socket */
	const char *addr;
	int code;
};

static inline void *async_main(void *arg)
{
	struct async_call *a = arg;
	if (a->kind == 0)
		a->code = transfer(a->c, SESSION, 0);
	else
		a->code = socket_desc(a->c, SESSION, true, a->addr);
	return NULL;
}

static inline void async_start(struct async_call *a, lm_rpc_client_t *c, int kind, const char *addr)
{
	a->c = c;
	a->kind = kind;
	a->addr = addr;
	a->code = -1;
	pthread_create(&a->th, NULL, async_main, a);
}

static inline int async_join(struct async_call *a)
{
	pthread_join(a->th, NULL);
	return a->code;
}

/* Export, import, patch every container, prepare: both sides ready for
 * the socket. 0, or the first failing call's code. */
static inline int prepare_both(struct env *e)
{
	Google__Protobuf__Any *config = NULL;
	int code = export_sandbox(e, &config);
	if (code)
		return code;
	code = import_sandbox(e, config);
	google__protobuf__any__free_unpacked(config, NULL);
	if (code)
		return code;
	uint32_t pid_pod = 0, pid_c1 = 0;
	if ((code = patch_create(e, "pod-a", "pod-a-new", true, 1, &pid_pod)) ||
	    (code = patch_create(e, "c1", "c1-new", false, 2, &pid_c1)))
		return code;
	if (!(pid_pod > 0 && pid_c1 > 0 && pid_pod != pid_c1))
		return DRIVER_BAD_ANSWER;
	PrepareSandboxRequest p = PREPARE_SANDBOX_REQUEST__INIT;
	p.session_id = SESSION;
	return mig(e->dc, "PrepareSandbox", &p.base);
}

/* Both sockets: the destination listens, the source connects (retrying
 * until the destination's listener is up). */
static inline int connect_both(struct env *e)
{
	char addr[256];
	struct async_call l;
	snprintf(addr, sizeof(addr), "unix:%s", e->mig_sock);
	async_start(&l, e->dc, 1, addr);
	int code = -1;
	for (int i = 0; i < 200 && code != 0; i++) {
		code = socket_desc(e->sc, SESSION, false, addr);
		if (code)
			usleep(20000);
	}
	int lcode = async_join(&l);
	return code ? code : lcode;
}

#endif
