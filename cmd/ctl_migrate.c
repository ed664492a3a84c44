/*
 * ctl_migrate.c: `lmctl migrate`, the whole call sequence of the
 * Migration contract against two shims:
 *
 *   source: PrepareAndExportSandbox -> destination: ImportSandbox ->
 *   destination: task Create per imported container (patch path) ->
 *   destination: PrepareSandbox -> Notifications (both) ->
 *   CreateDuplicateSocket (both) -> TransferSandbox (both, concurrently) ->
 *   FinalizeSandbox (destination RESUME, then source STOP) -> Cleanup.
 *
 * On a failure the guest is put on exactly one side by the handover's
 * rules (hcs/PROTOCOL.md): the destination is asked to give it up first
 * (Cancel), then the source resumes it, which its shim does only if it
 * never gave it away; if the guest is the destination's already, the
 * migration is finished forward instead. The exit status says where it
 * runs (1) or that it could not be made sure (3: lmctl recover). A lost
 * TransferSandbox answer is asked for again; a source that missed the
 * destination's commit is told (Recovery Stop).
 *
 * The container list comes from the snapshot (lmshim.v1.SandboxSnapshot in
 * the exported Any) or from --container flags. Each container gets a new
 * bundle directory under the work dir with a config.json carrying the
 * annotation io.microsoft.migration.source-container-id (and the CRI
 * container type), an overlay rootfs mount with one lowerdir per
 * read-only layer, and stdio files.
 *
 * The migration socket: --transport unix (default): the destination
 * listens on unix:<workdir>/migration.sock, the source connects;
 * --transport tcp: the destination listens on --listen host:port (default
 * 127.0.0.1 and a free port), the source dials --connect (default the
 * same); --transport dup: lmctl makes a socketpair and passes
 * duplicate{pid, fd} to each side (needs ptrace rights over lmctl).
 *
 * DESIGN. Main thread drives the sequence; during the transfer one thread
 * per side blocks in TransferSandbox and one per side reads Notifications,
 * all writing into a shared struct under its mutex (ctl.h).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd/ctl.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "snapshot.pb-c.h"
#include "util/fault.h"


/* Between two steps of the sequence: a Ctrl-C rolls back. */
#define CHECK_INTERRUPT()                                                          \
	do {                                                                       \
		if (ctl_is_interrupted()) {                                        \
			fprintf(stderr, "lmctl: interrupted\n");                   \
			goto fail;                                                 \
		}                                                                  \
	} while (0)

/* PrepareAndExportSandbox. A source that is still tidying up after a
 * deleted container (its disks being detached: FailedPrecondition,
 * "try again in a few seconds") is asked again every 300 ms, for at most
 * EXPORT_WAIT_MS, saying so once; any other answer is the call's. */
#define EXPORT_WAIT_MS 15000
static double now_ms(void);
static int export_waiting(struct ctl_side *src, const ProtobufCMessage *req, ProtobufCMessage **resp,
			  int64_t tmo)
{
	double t0 = now_ms();
	bool said = false;
	for (;;) {
		char msg[600];
		int rc = ctl_call(src, CTL_MIGRATION_SERVICE, "PrepareAndExportSandbox", req,
				  &prepare_and_export_sandbox_response__descriptor, resp, tmo, true, msg,
				  sizeof msg);
		bool again = rc == 9 && strstr(msg, "try again in a few seconds") &&
			     now_ms() - t0 < EXPORT_WAIT_MS && !ctl_is_interrupted();
		if (!again) {
			if (rc > 0)
				fprintf(stderr, "lmctl: PrepareAndExportSandbox on %s (%s): %s: %s\n", src->name,
					src->path, ctl_code_name(rc), msg);
			else if (rc < 0)
				fprintf(stderr, "lmctl: PrepareAndExportSandbox on %s (%s): %s\n", src->name,
					src->path,
					rc == -EPIPE ? "connection lost (the shim went away)"
					: rc == -ETIMEDOUT ? "no answer before the deadline" : msg);
			return rc;
		}
		if (!said)
			fprintf(stderr, "lmctl: the source is not ready to export yet (%s): waiting, at most "
				"%d s\n", msg, EXPORT_WAIT_MS / 1000);
		said = true;
		struct timespec ts = { 0, 300000000 };
		nanosleep(&ts, NULL);
	}
}

#define SNAPSHOT_TYPE_URL "type.googleapis.com/lmshim.v1.SandboxSnapshot"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s ? s : "");
	if (!d) {
		fprintf(stderr, "lmctl: out of memory\n");
		exit(1);
	}
	return d;
}

void ctl_migrate_result_free(struct ctl_migrate_result *res)
{
	for (size_t i = 0; i < res->n_containers; i++) {
		free(res->containers[i].src_id);
		free(res->containers[i].new_id);
		free(res->containers[i].pod_id);
		for (unsigned l = 0; res->containers[i].src_layers && l < res->containers[i].layers; l++)
			free(res->containers[i].src_layers[l]);
		free(res->containers[i].src_layers);
	}
	free(res->containers);
	res->containers = NULL;
	res->n_containers = 0;
}

/* ---------------------------------------------------------- the snapshot */

/* Fills the container list from the exported Any. 0, or -1 with the cause
 * printed. */
static int containers_from_snapshot(const Google__Protobuf__Any *any, const char *suffix,
				    struct ctl_migrate_result *res)
{
	if (!any || !any->type_url || strcmp(any->type_url, SNAPSHOT_TYPE_URL) != 0) {
		fprintf(stderr, "lmctl: PrepareAndExportSandbox on source: the snapshot's type URL is '%s', "
			"not %s; name the containers with --container\n",
			any && any->type_url ? any->type_url : "", SNAPSHOT_TYPE_URL);
		return -1;
	}
	Lmshim__V1__SandboxSnapshot *snap =
		lmshim__v1__sandbox_snapshot__unpack(NULL, any->value.len, any->value.data);
	if (!snap) {
		fprintf(stderr, "lmctl: PrepareAndExportSandbox on source: the snapshot does not decode\n");
		return -1;
	}
	size_t n = 0;
	for (size_t p = 0; p < snap->n_pods; p++)
		n += snap->pods[p]->n_containers;
	res->containers = calloc(n ? n : 1, sizeof(*res->containers));
	if (!res->containers) {
		lmshim__v1__sandbox_snapshot__free_unpacked(snap, NULL);
		return -1;
	}
	for (size_t p = 0; p < snap->n_pods; p++) {
		const Lmshim__V1__PodSnapshot *pod = snap->pods[p];
		for (size_t i = 0; i < pod->n_containers; i++) {
			const Lmshim__V1__ContainerSnapshot *cs = pod->containers[i];
			struct ctl_container *c = &res->containers[res->n_containers++];
			c->src_id = xstrdup(cs->id);
			size_t l = strlen(cs->id) + strlen(suffix) + 1;
			c->new_id = malloc(l);
			if (!c->new_id)
				exit(1);
			snprintf(c->new_id, l, "%s%s", cs->id, suffix);
			c->pod_id = xstrdup(pod->id);
			c->is_sandbox = cs->type == LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX;
			c->type_known = 1;
			c->layers = (unsigned)cs->n_layers;
			c->src_layers = c->layers ? calloc(c->layers, sizeof(char *)) : NULL;
			if (c->layers && !c->src_layers)
				exit(1);
			for (unsigned j = 0; j < c->layers; j++)
				c->src_layers[j] = xstrdup(cs->layers[j] ? cs->layers[j] : "");
		}
	}
	lmshim__v1__sandbox_snapshot__free_unpacked(snap, NULL);
	return 0;
}

static int containers_from_flags(const struct ctl_migrate_opts *o, struct ctl_migrate_result *res)
{
	res->containers = calloc(o->n_containers ? o->n_containers : 1, sizeof(*res->containers));
	if (!res->containers)
		return -1;
	for (size_t i = 0; i < o->n_containers; i++) {
		const struct ctl_container *f = &o->containers[i];
		struct ctl_container *c = &res->containers[res->n_containers++];
		*c = *f;
		c->src_id = xstrdup(f->src_id);
		c->pod_id = xstrdup(f->pod_id);
		if (f->new_id) {
			c->new_id = xstrdup(f->new_id);
		} else {
			size_t l = strlen(f->src_id) + strlen(o->id_suffix) + 1;
			c->new_id = malloc(l);
			if (!c->new_id)
				return -1;
			snprintf(c->new_id, l, "%s%s", f->src_id, o->id_suffix);
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- bundles */

static int mkdir_p(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
				return -errno;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* The work dir holds the destination's bundles and the migration socket:
 * it must be ours alone. A folder given by the operator is made if
 * missing and then checked (a real folder, not a link, owned by us,
 * writable by nobody else); without one, a fresh folder is made
 * atomically (mkdtemp: 0700, ours). Everything inside is then out of
 * other users' reach. 0, or -1 with the reason printed. */
static int private_workdir(const char *given, const char *session, char *out, size_t outlen)
{
	if (!given) {
		const char *tmp = getenv("TMPDIR");
		char safe[48];
		size_t k = 0;
		for (const char *p = session; *p && k < sizeof(safe) - 1; p++)
			safe[k++] = (isalnum((unsigned char)*p) || *p == '-' || *p == '_') ? *p : '_';
		safe[k] = 0;
		if (snprintf(out, outlen, "%s/lmctl-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", safe) >= (int)outlen ||
		    !mkdtemp(out)) {
			fprintf(stderr, "lmctl: cannot make a private work dir %s: %s\n", out, strerror(errno));
			return -1;
		}
		return 0;
	}
	snprintf(out, outlen, "%s", given);
	int rc = mkdir_p(out);
	struct stat st;
	if (rc < 0 || lstat(out, &st) < 0) {
		fprintf(stderr, "lmctl: cannot create the work dir %s: %s\n", out, strerror(rc < 0 ? -rc : errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
		fprintf(stderr, "lmctl: the work dir %s is not private (%s, owner uid %u, mode %04o): "
			"give a folder only you can write, or leave --workdir out for a fresh one\n", out,
			S_ISLNK(st.st_mode) ? "a symbolic link" : S_ISDIR(st.st_mode) ? "a folder" : "not a folder",
			(unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
		return -1;
	}
	return 0;
}

/* Opens a file of the work dir for writing, never through a link. */
static FILE *open_private(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
		close(fd);
		errno = EPERM;
		return NULL;
	}
	FILE *f = fdopen(fd, "w");
	if (!f)
		close(fd);
	return f;
}

/* A JSON string literal of s (IDs and paths: escape what JSON needs). */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

/* Writes <workdir>/<new_id>/{config.json,rootfs,layerN,scratch,work}. */
static int write_bundle(const char *workdir, const struct ctl_container *c, const char *sandbox_new_id,
			char *bundle, size_t blen)
{
	char p[4200];
	int rc = -ENAMETOOLONG;
	if (snprintf(bundle, blen, "%s/bundles/%s", workdir, c->new_id) >= (int)blen)
		goto fail;
	rc = mkdir_p(bundle);
	if (rc < 0)
		goto fail;
	const char *sub[] = { "rootfs", "scratch", "work" };
	for (int i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", bundle, sub[i]);
		if ((rc = mkdir_p(p)) < 0)
			goto fail;
	}
	for (unsigned i = 0; i < c->layers; i++) {
		snprintf(p, sizeof(p), "%s/layer%u", bundle, i);
		if ((rc = mkdir_p(p)) < 0)
			goto fail;
	}
	snprintf(p, sizeof(p), "%s/config.json", bundle);
	FILE *f = open_private(p);
	if (!f) {
		rc = -errno;
		goto fail;
	}
	fprintf(f, "{\"ociVersion\":\"1.0.2\",\"process\":{\"args\":[\"/pause\"],\"cwd\":\"/\"},"
		   "\"root\":{\"path\":\"rootfs\"},\"annotations\":{");
	json_str(f, CTL_ANNOT_SOURCE_ID);
	fputc(':', f);
	json_str(f, c->src_id);
	if (c->type_known) {
		fputc(',', f);
		json_str(f, CTL_ANNOT_TYPE);
		fputc(':', f);
		json_str(f, c->is_sandbox ? "sandbox" : "container");
	}
	if (sandbox_new_id) {
		fputc(',', f);
		json_str(f, "io.kubernetes.cri.sandbox-id");
		fputc(':', f);
		json_str(f, sandbox_new_id);
	}
	fprintf(f, "}}\n");
	if (fclose(f) != 0) {
		rc = -errno;
		goto fail;
	}
	const char *io[] = { "stdout", "stderr" };
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof(p), "%s/%s.log", bundle, io[i]);
		int fd = open(p, O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0)
			close(fd);
	}
	return 0;
fail:
	fprintf(stderr, "lmctl: writing the bundle of %s in %s: %s\n", c->new_id, bundle, strerror(-rc));
	return -1;
}

/* The destination's copy of layer l of c: the source's layer itself, or
 * under --layer-map FROM=TO the same path under TO, when it is an
 * absolute path that exists here (a real container's layer, a disk of
 * the utility VM); else the bundle's empty layer<l> (a simulated one). */
static void dest_layer(const struct ctl_migrate_opts *o, const struct ctl_container *c, unsigned l,
		       const char *bundle, char *out, size_t cap)
{
	const char *src = c->src_layers ? c->src_layers[l] : "";
	snprintf(out, cap, "%s/layer%u", bundle, l);
	if (src[0] != '/')
		return;
	char p[4096];
	snprintf(p, sizeof(p), "%s", src);
	for (size_t i = 0; i < o->n_layer_map; i++) {
		const char *eq = strchr(o->layer_map[i], '=');
		size_t fl = (size_t)(eq - o->layer_map[i]);
		if (!strncmp(src, o->layer_map[i], fl) && (src[fl] == '/' || src[fl] == 0)) {
			snprintf(p, sizeof(p), "%s%s", eq + 1, src + fl);
			break;
		}
	}
	struct stat st;
	if (stat(p, &st) == 0)
		snprintf(out, cap, "%s", p);
}

/* task Create on the destination for one container (patch path). */
static int create_on_destination(const struct ctl_migrate_opts *o, struct ctl_side *dst,
				 const char *workdir, struct ctl_container *c,
				 const char *sandbox_new_id, int64_t tmo)
{
	char bundle[4096];
	if (write_bundle(workdir, c, sandbox_new_id, bundle, sizeof(bundle)) < 0)
		return -1;
	/* overlay: lowerdir=layerN-1:...:layer0 (top first), upperdir, workdir */
	size_t cap = 64 + (size_t)c->layers * 4200;
	char *lower = malloc(cap);
	char upper[4200], work[4200], out[4200], err[4200];
	if (!lower)
		return -1;
	int k = snprintf(lower, cap, "lowerdir=");
	for (unsigned i = c->layers; i-- > 0;) {
		char lp[4200];
		dest_layer(o, c, i, bundle, lp, sizeof(lp));
		k += snprintf(lower + k, cap - (size_t)k, "%s%s", i + 1 == c->layers ? "" : ":", lp);
	}
	snprintf(upper, sizeof(upper), "upperdir=%s/scratch", bundle);
	snprintf(work, sizeof(work), "workdir=%s/work", bundle);
	snprintf(out, sizeof(out), "%s/stdout.log", bundle);
	snprintf(err, sizeof(err), "%s/stderr.log", bundle);
	char *opts[3] = { lower, upper, work };
	Containerd__Types__Mount m = CONTAINERD__TYPES__MOUNT__INIT;
	m.type = "overlay";
	m.source = "overlay";
	m.options = opts;
	m.n_options = 3;
	Containerd__Types__Mount *mounts[1] = { &m };
	Containerd__Task__V2__CreateTaskRequest req = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
	req.id = c->new_id;
	req.bundle = bundle;
	req.rootfs = mounts;
	req.n_rootfs = c->layers ? 1 : 0;
	req.stdout = out;
	req.stderr = err;
	ProtobufCMessage *resp = NULL;
	char msg[512];
	int rc = ctl_call(dst, CTL_TASK_SERVICE, "Create", &req.base,
			  &containerd__task__v2__create_task_response__descriptor, &resp, tmo, true,
			  msg, sizeof(msg));
	free(lower);
	if (rc != 0) {
		fprintf(stderr, "lmctl: task Create(%s, source container %s) on destination (%s): %s: %s\n",
			c->new_id, c->src_id, dst->path, rc > 0 ? ctl_code_name(rc) : "transport",
			rc > 0 ? msg : strerror(-rc));
		return rc;
	}
	c->pid = ((Containerd__Task__V2__CreateTaskResponse *)resp)->pid;
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

/* ---------------------------------------------------------- socket setup */

static int free_tcp_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int port = -1;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &al) == 0)
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static int send_socket(struct ctl_side *s, const char *session, const LinuxSocketDescriptor *d,
		       int64_t tmo, bool quiet, char *msg, size_t msglen)
{
	size_t len = linux_socket_descriptor__get_packed_size(d);
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	linux_socket_descriptor__pack(d, buf);
	CreateDuplicateSocketRequest req = CREATE_DUPLICATE_SOCKET_REQUEST__INIT;
	req.session_id = (char *)session;
	req.protocol_info.data = buf;
	req.protocol_info.len = len;
	int rc = ctl_call(s, CTL_MIGRATION_SERVICE, "CreateDuplicateSocket", &req.base, NULL, NULL, tmo,
			  quiet, msg, msglen);
	free(buf);
	return rc;
}

struct listen_arg {
	struct ctl_side *side;
	const char *session;
	const char *addr;
	int64_t tmo;
	int rc;
	volatile int done;
};

static void *listen_thread(void *a)
{
	struct listen_arg *la = a;
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN;
	d.listen = (char *)la->addr;
	la->rc = send_socket(la->side, la->session, &d, la->tmo, false, NULL, 0);
	__atomic_store_n(&la->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Gives both sides their migration socket. 0 or -1 (printed). */
static int setup_socket(const struct ctl_migrate_opts *o, struct ctl_side *src, struct ctl_side *dst,
			const char *session, const char *workdir)
{
	const char *tr = o->transport ? o->transport : "unix";
	if (!strcmp(tr, "dup")) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			fprintf(stderr, "lmctl: socketpair: %s\n", strerror(errno));
			return -1;
		}
		LinuxSocketDescriptor__Duplicate dup = LINUX_SOCKET_DESCRIPTOR__DUPLICATE__INIT;
		LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
		d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_DUPLICATE;
		d.duplicate = &dup;
		dup.pid = (uint32_t)getpid();
		dup.fd = sv[0];
		int rc = send_socket(dst, session, &d, o->call_timeout_ns, false, NULL, 0);
		if (rc == 0) {
			dup.fd = sv[1];
			rc = send_socket(src, session, &d, o->call_timeout_ns, false, NULL, 0);
		}
		/* the shims hold their duplicates now: ours go */
		close(sv[0]);
		close(sv[1]);
		return rc == 0 ? 0 : -1;
	}
	char listen_addr[4200], connect_addr[4200];
	if (!strcmp(tr, "unix")) {
		if (o->listen)
			snprintf(listen_addr, sizeof(listen_addr), "unix:%s",
				 strncmp(o->listen, "unix:", 5) ? o->listen : o->listen + 5);
		else
			snprintf(listen_addr, sizeof(listen_addr), "unix:%s/migration-%.8s.sock", workdir,
				 session);
		unlink(listen_addr + 5);
		if (o->connect)   /* e.g. a relay in front of the destination */
			snprintf(connect_addr, sizeof(connect_addr), "unix:%s",
				 strncmp(o->connect, "unix:", 5) ? o->connect : o->connect + 5);
		else
			snprintf(connect_addr, sizeof(connect_addr), "%s", listen_addr);
	} else if (!strcmp(tr, "tcp")) {
		if (o->listen) {
			snprintf(listen_addr, sizeof(listen_addr), "%s", o->listen);
		} else {
			int port = free_tcp_port();
			if (port < 0) {
				fprintf(stderr, "lmctl: no free TCP port on 127.0.0.1\n");
				return -1;
			}
			snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", port);
		}
		snprintf(connect_addr, sizeof(connect_addr), "%s", o->connect ? o->connect : listen_addr);
	} else {
		fprintf(stderr, "lmctl: unknown transport '%s' (unix, tcp, dup)\n", tr);
		return -1;
	}
	/* The destination's listen may answer only once a peer connected, so
	 * it runs on its own thread while the source dials (retrying while
	 * the listener is not up yet: a refused dial never poisons the
	 * source's session). */
	struct listen_arg la = { .side = dst, .session = session, .addr = listen_addr,
				 .tmo = o->call_timeout_ns };
	pthread_t th;
	if (pthread_create(&th, NULL, listen_thread, &la) != 0) {
		fprintf(stderr, "lmctl: cannot start a thread\n");
		return -1;
	}
	LinuxSocketDescriptor d = LINUX_SOCKET_DESCRIPTOR__INIT;
	d.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT;
	d.connect = connect_addr;
	int rc = -1;
	char msg[512] = "";
	double t0 = now_ms();
	for (int attempt = 0;; attempt++) {
		if (!__atomic_load_n(&la.done, __ATOMIC_ACQUIRE) || la.rc == 0) {
			usleep(attempt ? 50000 : 20000);
		}
		if (__atomic_load_n(&la.done, __ATOMIC_ACQUIRE) && la.rc != 0)
			break; /* the destination refused: its error is printed */
		rc = send_socket(src, session, &d, o->call_timeout_ns, true, msg, sizeof(msg));
		if (rc == 0)
			break;
		bool retry = (rc == 3 || rc == 9 || rc == 14) && now_ms() - t0 < 10000 && !ctl_is_interrupted();
		if (!retry) {
			fprintf(stderr, "lmctl: CreateDuplicateSocket on source (%s): %s: %s\n", src->path,
				rc > 0 ? ctl_code_name(rc) : "transport", rc > 0 ? msg : strerror(-rc));
			break;
		}
	}
	pthread_join(th, NULL);
	if (la.rc != 0 || rc != 0)
		return -1;
	return 0;
}

/* ------------------------------------------------------------- transfer */

/* The guest is paused from the blackout until the destination's
 * FinalizeSandbox(RESUME): the main loop waits for the two
 * TransferSandbox answers on xfer_cv, woken the moment one comes, not
 * at its next 100 ms tick. */
static pthread_mutex_t xfer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t xfer_cv = PTHREAD_COND_INITIALIZER;

struct xfer_thread {
	struct ctl_side *side;
	const char *session;
	int64_t timeout_ns;
	int rc;
	char msg[512];
	volatile int done;
	pthread_t th;
};

static void *transfer_thread(void *a)
{
	struct xfer_thread *x = a;
	TransferSandboxRequest req = TRANSFER_SANDBOX_REQUEST__INIT;
	Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
	req.session_id = (char *)x->session;
	if (x->timeout_ns > 0) {
		d.seconds = x->timeout_ns / 1000000000;
		d.nanos = (int32_t)(x->timeout_ns % 1000000000);
		req.timeout = &d;
	}
	/* no rpc deadline: the call lasts as long as the transfer */
	x->rc = ctl_call(x->side, CTL_MIGRATION_SERVICE, "TransferSandbox", &req.base, NULL, NULL, 0, true,
			 x->msg, sizeof(x->msg));
	pthread_mutex_lock(&xfer_mu);
	__atomic_store_n(&x->done, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&xfer_cv);
	pthread_mutex_unlock(&xfer_mu);
	return NULL;
}

/* Thread: main. Up to `ms`, or until a TransferSandbox call that was
 * running when the main loop last looked (was_done false) has ended. */
static void xfer_wait(const struct xfer_thread *a, const struct xfer_thread *b, bool a_was, bool b_was,
		      unsigned ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_nsec += (long)(ms % 1000) * 1000000l;
	dl.tv_sec += ms / 1000 + dl.tv_nsec / 1000000000l;
	dl.tv_nsec %= 1000000000l;
	pthread_mutex_lock(&xfer_mu);
	while (__atomic_load_n(&a->done, __ATOMIC_ACQUIRE) == a_was &&
	       __atomic_load_n(&b->done, __ATOMIC_ACQUIRE) == b_was &&
	       pthread_cond_timedwait(&xfer_cv, &xfer_mu, &dl) == 0)
		;
	pthread_mutex_unlock(&xfer_mu);
}

/* Each stream has a connection of its own: a call cut by its deadline or
 * a Ctrl-C takes its connection with it (reconnect), and a stream on that
 * connection would go with it. */
struct notif_thread {
	struct ctl_side *side;
	const char *session;
	struct ctl_progress *prog;
	lm_rpc_client_t *c;
	lm_rpc_stream_t *st;
	int end;              /* 1 clean end, <0 error (atomic: reader thread -> main) */
	volatile int stop;
	pthread_t th;
	bool started;
};

static void *notif_thread(void *a)
{
	struct notif_thread *n = a;
	while (!__atomic_load_n(&n->stop, __ATOMIC_ACQUIRE)) {
		uint8_t *msg = NULL;
		size_t len = 0;
		int rc = lm_rpc_stream_recv(n->st, &msg, &len, 200 * 1000000ll);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc <= 0) {
			__atomic_store_n(&n->end, rc == 0 ? 1 : rc, __ATOMIC_RELEASE);
			break;
		}
		NotificationsResponse *r = notifications_response__unpack(NULL, len, msg);
		free(msg);
		if (r) {
			ctl_progress_note(n->prog, r);
			notifications_response__free_unpacked(r, NULL);
		}
	}
	return NULL;
}

static int open_notifications(struct notif_thread *n)
{
	NotificationsRequest req = NOTIFICATIONS_REQUEST__INIT;
	req.session_id = (char *)n->session;
	size_t len = notifications_request__get_packed_size(&req);
	uint8_t buf[512];
	if (len > sizeof(buf))
		return -EINVAL;
	notifications_request__pack(&req, buf);
	int rc = lm_rpc_client_connect(&n->c, n->side->path);
	if (rc == 0)
		rc = lm_rpc_client_stream_open(n->c, CTL_MIGRATION_SERVICE, "Notifications", buf, len,
					       NULL, &n->st);
	if (rc < 0) {
		fprintf(stderr, "lmctl: Notifications on %s (%s): %s\n", n->side->name, n->side->path,
			strerror(-rc));
		if (n->c)
			lm_rpc_client_close(n->c);
		n->c = NULL;
		return rc;
	}
	if (pthread_create(&n->th, NULL, notif_thread, n) != 0) {
		lm_rpc_stream_close(n->st);
		n->st = NULL;
		lm_rpc_client_close(n->c);
		n->c = NULL;
		return -EAGAIN;
	}
	n->started = true;
	return 0;
}

static void close_notifications(struct notif_thread *n, int wait_ms)
{
	if (!n->started)
		return;
	/* Cleanup ends the streams; give them a moment to end cleanly */
	for (int w = 0; w < wait_ms && !__atomic_load_n(&n->end, __ATOMIC_ACQUIRE); w += 10)
		usleep(10000);
	__atomic_store_n(&n->stop, 1, __ATOMIC_RELEASE);
	pthread_join(n->th, NULL);
	lm_rpc_stream_close(n->st);
	n->st = NULL;
	lm_rpc_client_close(n->c);
	n->c = NULL;
	n->started = false;
}

/* ------------------------------------------------------------- verify */

/* Verification: lmshim.v1.Inspect/Properties (our own service beside the
 * contract's, actors/controller.h): the request is an HCS properties query
 * as JSON bytes, the answer the compute system's properties as JSON:
 * "MemoryDigest" (XXH3-64 of all guest memory) and
 * "Statistics":{"Checksum"} (the guest workload's running checksum). Taken
 * after TransferSandbox, while the source is paused and the destination
 * not yet resumed: both must equal the state at blackout. */
static int query_props(struct ctl_side *s, char *digest, size_t dl, char *sum, size_t sl,
		       int64_t *iters, char *sched, size_t schl, char *why, size_t wl)
{
	static const char qd[] = "{\"PropertyTypes\":[\"MemoryDigest\"]}";
	const char *q = digest ? qd : "{}";
	struct lm_rpc_result r = {0};
	struct lm_rpc_call_opts co = { .timeout_ns = 60ll * 1000000000 };
	int rc = lm_rpc_client_call(s->c, "lmshim.v1.Inspect", "Properties", q, strlen(q), &co, &r);
	if (rc < 0) {
		snprintf(why, wl, "Properties on %s (%s): %s", s->name, s->path, strerror(-rc));
		return -1;
	}
	if (r.code != 0) {
		snprintf(why, wl, "Properties on %s (%s): %s: %s", s->name, s->path, ctl_code_name(r.code),
			 r.message);
		lm_rpc_result_free(&r);
		return -1;
	}
	json_error_t je;
	json_t *j = json_loadb((const char *)r.payload, r.len, 0, &je);
	lm_rpc_result_free(&r);
	if (!j) {
		snprintf(why, wl, "Properties on %s (%s): the answer is not JSON: %s", s->name, s->path, je.text);
		return -1;
	}
	const char *d = json_string_value(json_object_get(j, "MemoryDigest"));
	const char *c = json_string_value(json_object_get(json_object_get(j, "Statistics"), "Checksum"));
	json_t *it = json_object_get(json_object_get(j, "Statistics"), "Iterations");
	if (iters)
		*iters = json_is_integer(it) ? (int64_t)json_integer_value(it) : -1;
	if (sched) {   /* how the shim's transfer thread ran (util/sched.h) */
		const char *k = json_string_value(json_object_get(json_object_get(j, "Migration"),
								  "TransferThreadScheduling"));
		snprintf(sched, schl, "%s", k ? k : "");
	}
	if (!digest) {
		json_decref(j);
		return 0;
	}
	if (!d) {
		const char *sk = json_string_value(json_object_get(j, "MemoryDigestSkipped"));
		snprintf(why, wl, "Properties on %s (%s): no MemoryDigest in the answer%s%s", s->name, s->path,
			 sk ? ": " : "", sk ? sk : "");
		json_decref(j);
		return -1;
	}
	snprintf(digest, dl, "%s", d);
	snprintf(sum, sl, "%s", c ? c : "none");
	json_decref(j);
	return 0;
}

/* ------------------------------------------------------------ sequence */

/* lmctl's own fault points (LM_FAULTS in its environment; the fault tests
 * use them to land a fault between two steps): a failing one fails the
 * step as a failed call would. After the destination resumed, a failure
 * only skips ahead (the guest is the destination's). */
#define STEP(name)                               \
	do {                                     \
		if (LM_FAULT(name) < 0)          \
			goto fail;               \
	} while (0)
#define STEP_LATE(name) ((void)LM_FAULT(name))


/* Where the guest is after a failure, as lmctl learned it. */
enum placement { ON_SOURCE = 0, ON_DESTINATION = 1, IN_DOUBT = 2 };

/* Ctrl-C while a call waits: the watcher cuts both connections a second
 * after the first Ctrl-C (the call returns at once), unless the main
 * thread already went on to the rollback (which reconnects). */
struct watcher {
	pthread_t th;
	pthread_mutex_t mu;
	struct ctl_side *src, *dst;
	bool rolling_back;            /* mu */
	volatile int stop;
};

static void *watcher_main(void *arg)
{
	struct watcher *w = arg;
	while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) && !ctl_is_interrupted())
		usleep(50 * 1000);
	if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
		return NULL;
	for (int i = 0; i < 20 && !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE); i++)
		usleep(50 * 1000);
	pthread_mutex_lock(&w->mu);
	if (!w->rolling_back && !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
		if (w->src->c)
			lm_rpc_client_shutdown(w->src->c);
		if (w->dst->c)
			lm_rpc_client_shutdown(w->dst->c);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* A fresh connection after the one of an interrupted call was cut. */
static int reconnect(struct ctl_side *s)
{
	ctl_side_close(s);
	return ctl_side_connect(s, 0);
}

static int finalize(struct ctl_side *s, const char *session, int action, int64_t tmo,
		    char *msg, size_t ml)
{
	FinalizeSandboxRequest f = FINALIZE_SANDBOX_REQUEST__INIT;
	f.session_id = (char *)session;
	f.action = action;
	return ctl_call(s, CTL_MIGRATION_SERVICE, "FinalizeSandbox", &f.base, NULL, NULL, tmo, false, msg, ml);
}

static int simple(struct ctl_side *s, const char *method, const char *session, int64_t tmo,
		  char *msg, size_t ml)
{
	CancelRequest c = CANCEL_REQUEST__INIT;   /* Cancel and Cleanup requests have one field */
	c.session_id = (char *)session;
	return ctl_call(s, CTL_MIGRATION_SERVICE, method, &c.base, NULL, NULL, tmo, false, msg, ml);
}

/* After a failure: put the guest on exactly one side. The destination is
 * asked to give the guest up first; the source then resumes it, which its
 * shim does only if the destination cannot run it (the source never gave
 * it away: hcs/PROTOCOL.md, "Handover"). If the guest turned out to be the
 * destination's already, the migration is finished forward instead. If
 * neither can be made sure, nothing more is touched and lmctl says where
 * things stand and how to recover. */
static enum placement rollback(struct ctl_side *src, struct ctl_side *dst, const char *session,
			       int64_t tmo, bool src_started, bool dst_started, bool transfer_began)
{
	char msg[512];
	bool dst_runs = false, dst_released = false;
	fprintf(stderr, "lmctl: rolling back: the destination gives the guest up, the source resumes it\n");
	if (dst_started) {
		int rc = simple(dst, "Cancel", session, tmo, msg, sizeof(msg));
		if (rc == LM_RPC_FAILED_PRECONDITION && strstr(msg, "runs on the destination"))
			dst_runs = true;
		dst_released = rc == 0;
	}
	if (dst_runs) {
		/* the guest is the destination's (it may only hold the grant
		 * yet): make sure it runs there, then stop the source */
		fprintf(stderr, "lmctl: the guest is the destination's already: finishing forward\n");
		if (finalize(dst, session, FINALIZE_ACTION__FINALIZE_ACTION_RESUME, tmo, msg, sizeof(msg)) != 0) {
			fprintf(stderr, "lmctl: the destination did not confirm it runs the guest: %s\n", msg);
			return IN_DOUBT;
		}
		int rc = finalize(src, session, FINALIZE_ACTION__FINALIZE_ACTION_STOP, tmo, msg, sizeof(msg));
		simple(dst, "Cleanup", session, tmo, NULL, 0);
		if (rc == 0)
			simple(src, "Cleanup", session, tmo, NULL, 0);
		return ON_DESTINATION;
	}
	if (src_started) {
		simple(src, "Cancel", session, tmo, NULL, 0);
		int rc = finalize(src, session, FINALIZE_ACTION__FINALIZE_ACTION_RESUME, tmo, msg, sizeof(msg));
		/* the destination released the guest, but its RELEASE may still
		 * be on its way to the source: let it arrive (2 s at most) */
		for (int i = 0; i < 20 && dst_released && rc == LM_RPC_FAILED_PRECONDITION && strstr(msg, "granted");
		     i++) {
			usleep(100 * 1000);
			rc = finalize(src, session, FINALIZE_ACTION__FINALIZE_ACTION_RESUME, tmo, msg, sizeof(msg));
		}
		if (rc == LM_RPC_FAILED_PRECONDITION &&
		    (strstr(msg, "granted") || strstr(msg, "runs on the destination"))) {
			/* the source gave the guest away (or heard the destination
			 * commit): it is the destination's */
			fprintf(stderr, "lmctl: the source gave the guest to the destination: finishing forward\n");
			if (finalize(dst, session, FINALIZE_ACTION__FINALIZE_ACTION_RESUME, tmo, NULL, 0) == 0 &&
			    finalize(src, session, FINALIZE_ACTION__FINALIZE_ACTION_STOP, tmo, NULL, 0) == 0) {
				simple(dst, "Cleanup", session, tmo, NULL, 0);
				simple(src, "Cleanup", session, tmo, NULL, 0);
				return ON_DESTINATION;
			}
			return IN_DOUBT;
		}
		if (rc != 0)
			return IN_DOUBT;
	}
	if (src_started && transfer_began && !src->silent && ctl_guest_runs(src) == -5) {
		/* the source answered, and has no VM: its session had already
		 * ended by itself (its orphan timeout, while lmctl waited for a
		 * silent destination) by stopping its copy, which it does only
		 * once the destination committed. Its OK to the RESUME above
		 * was an idle shim's. */
		fprintf(stderr, "lmctl: the source had already stopped its copy by itself (its session was "
			"orphaned) after the destination took the guest\n");
		return ON_DESTINATION;
	}
	if (dst_started) {
		finalize(dst, session, FINALIZE_ACTION__FINALIZE_ACTION_STOP, tmo, NULL, 0);
		simple(dst, "Cleanup", session, tmo, NULL, 0);
	}
	if (src_started)
		simple(src, "Cleanup", session, tmo, NULL, 0);
	return ON_SOURCE;
}

int ctl_migrate(const struct ctl_migrate_opts *o, struct ctl_migrate_result *res)
{
	memset(res, 0, sizeof(*res));
	res->blackout_ms = -1;
	res->transfer_ms = res->resumed_ms = -1;
	double t0 = now_ms();
	char session[256];
	if (o->session && strlen(o->session) >= sizeof(session)) {
		fprintf(stderr, "lmctl: the session ID is longer than %zu bytes\n", sizeof(session) - 1);
		return 1;
	}
	if (o->session)
		snprintf(session, sizeof(session), "%s", o->session);
	else
		ctl_uuid(session);
	int64_t tmo = o->call_timeout_ns;
	struct ctl_side src = { .name = "source", .path = o->from };
	struct ctl_side dst = { .name = "destination", .path = o->to };
	bool src_started = false, dst_started = false, transfer_began = false;
	int rc = 1;
	ProtobufCMessage *export_resp = NULL;
	struct ctl_progress prog = { .blackout_ms = -1, .eta_ms = -1 };
	pthread_mutex_init(&prog.mu, NULL);
	struct notif_thread ns = { .side = &src, .session = session, .prog = &prog };
	struct notif_thread nd = { .side = &dst, .session = session, .prog = &prog };
	bool tty = isatty(2) && !o->quiet_progress;
	char workdir[4096];
	struct watcher watch = { 0 };
	bool watch_started = false;

	if (ctl_side_connect(&src, 0) < 0 || ctl_side_connect(&dst, 0) < 0)
		goto out;
	fprintf(stderr, "lmctl: session %s: %s -> %s\n", session, o->from, o->to);
	pthread_mutex_init(&watch.mu, NULL);
	watch.src = &src;
	watch.dst = &dst;
	watch_started = pthread_create(&watch.th, NULL, watcher_main, &watch) == 0;

	/* 1. export */
	STEP("lmctl.export");
	PrepareAndExportSandboxRequest ex = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
	ex.session_id = session;
	ex.init_options = o->init;
	src_started = true;
	if (export_waiting(&src, &ex.base, &export_resp, tmo) != 0)
		goto fail;
	Google__Protobuf__Any *cfg = ((PrepareAndExportSandboxResponse *)export_resp)->config;
	if (o->n_containers) {
		if (containers_from_flags(o, res) < 0)
			goto fail;
	} else if (containers_from_snapshot(cfg, o->id_suffix, res) < 0) {
		goto fail;
	}
	const char *sandbox_new = NULL;
	for (size_t i = 0; i < res->n_containers; i++)
		if (res->containers[i].is_sandbox && res->containers[i].type_known)
			sandbox_new = res->containers[i].new_id;

	CHECK_INTERRUPT();

	/* 2. import */
	STEP("lmctl.import");
	ImportSandboxRequest im = IMPORT_SANDBOX_REQUEST__INIT;
	im.session_id = session;
	im.sandbox_id = (char *)(o->sandbox_id ? o->sandbox_id : sandbox_new ? sandbox_new : session);
	im.config = cfg;
	dst_started = true;
	if (ctl_call(&dst, CTL_MIGRATION_SERVICE, "ImportSandbox", &im.base, NULL, NULL, tmo, false, NULL, 0) != 0)
		goto fail;

	CHECK_INTERRUPT();

	/* the work dir holds the new bundles and the unix migration socket:
	 * made only once a migration really starts on both sides */
	if (private_workdir(o->workdir, session, workdir, sizeof(workdir)) < 0)
		goto fail;
	if (!o->workdir)
		fprintf(stderr, "lmctl: work dir %s (the destination's bundles: leave it in place)\n", workdir);

	/* 3. the patch path, once per imported container */
	STEP("lmctl.prepare");
	for (size_t i = 0; i < res->n_containers; i++) {
		struct ctl_container *c = &res->containers[i];
		if (create_on_destination(o, &dst, workdir, c, sandbox_new, tmo) != 0)
			goto fail;
		fprintf(stderr, "lmctl: container %s -> %s (pid %" PRIu32 ")\n", c->src_id, c->new_id, c->pid);
	}

	CHECK_INTERRUPT();

	/* 4. prepare */
	PrepareSandboxRequest pr = PREPARE_SANDBOX_REQUEST__INIT;
	pr.session_id = session;
	pr.init_options = o->init;
	if (ctl_call(&dst, CTL_MIGRATION_SERVICE, "PrepareSandbox", &pr.base, NULL, NULL, tmo, false, NULL, 0) != 0)
		goto fail;

	/* 6. notifications (before the socket: SETUP_DONE is seen) */
	if (open_notifications(&ns) < 0 || open_notifications(&nd) < 0)
		goto fail;

	CHECK_INTERRUPT();

	/* 5. the migration socket */
	STEP("lmctl.socket");
	if (setup_socket(o, &src, &dst, session, workdir) < 0)
		goto fail;

	CHECK_INTERRUPT();

	/* 7. transfer, both sides at once */
	struct xfer_thread xs = { .side = &src, .session = session, .timeout_ns = o->transfer_timeout_ns };
	struct xfer_thread xd = { .side = &dst, .session = session, .timeout_ns = o->transfer_timeout_ns };
	if (pthread_create(&xd.th, NULL, transfer_thread, &xd) != 0)
		goto fail;
	if (pthread_create(&xs.th, NULL, transfer_thread, &xs) != 0) {
		pthread_join(xd.th, NULL);
		goto fail;
	}
	transfer_began = true;   /* from here the guest may move */
	double transfer_t0 = now_ms(), transfer_answered = 0;
	bool cancelled = false;
	double one_failed_at = 0, cancelled_at = 0, one_ok_at = 0;
	struct ctl_side *late = NULL;   /* its answer is asked for again */
	while (!__atomic_load_n(&xs.done, __ATOMIC_ACQUIRE) || !__atomic_load_n(&xd.done, __ATOMIC_ACQUIRE)) {
		if (!o->quiet_progress)
			ctl_progress_render(&prog, tty, false, o->vm_bytes);
		/* one side finished well and the other says nothing for a call
		 * deadline: its answer may be lost. TransferSandbox is
		 * idempotent (a finished transfer answers again at once): cut
		 * the silent call and ask again on a fresh connection below. */
		bool sok = __atomic_load_n(&xs.done, __ATOMIC_ACQUIRE) && xs.rc == 0;
		bool dok = __atomic_load_n(&xd.done, __ATOMIC_ACQUIRE) && xd.rc == 0;
		if (!late && !cancelled && (sok || dok)) {
			if (one_ok_at == 0)
				one_ok_at = now_ms();
			else if (now_ms() - one_ok_at > (double)tmo / 1e6) {
				late = sok ? &dst : &src;
				pthread_mutex_lock(&watch.mu);
				if (late->c)
					lm_rpc_client_shutdown(late->c);
				pthread_mutex_unlock(&watch.mu);
			}
		}
		/* one side failed: the other may wait for a peer that is gone;
		 * give it a moment to fail on its own, then cancel it */
		bool sdone = __atomic_load_n(&xs.done, __ATOMIC_ACQUIRE);
		bool ddone = __atomic_load_n(&xd.done, __ATOMIC_ACQUIRE);
		if (!cancelled && ((sdone && xs.rc != 0 && !ddone) || (ddone && xd.rc != 0 && !sdone))) {
			if (one_failed_at == 0)
				one_failed_at = now_ms();
			else if (now_ms() - one_failed_at > 2000) {
				struct ctl_side *other = sdone ? &dst : &src;
				fprintf(stderr, "\nlmctl: the %s failed; cancelling the %s\n",
					sdone ? "source" : "destination", other->name);
				CancelRequest c = CANCEL_REQUEST__INIT;
				c.session_id = session;
				ctl_call(other, CTL_MIGRATION_SERVICE, "Cancel", &c.base, NULL, NULL, tmo, false,
					 NULL, 0);
				cancelled = true;
				cancelled_at = now_ms();
			}
		}
		if (ctl_is_interrupted() && !cancelled) {
			cancelled = true;
			cancelled_at = now_ms();
			fprintf(stderr, "\nlmctl: interrupted: cancelling the migration (Ctrl-C again to quit at once)\n");
			CancelRequest c = CANCEL_REQUEST__INIT;
			c.session_id = session;
			ctl_call(&src, CTL_MIGRATION_SERVICE, "Cancel", &c.base, NULL, NULL, tmo, false, NULL, 0);
			ctl_call(&dst, CTL_MIGRATION_SERVICE, "Cancel", &c.base, NULL, NULL, tmo, false, NULL, 0);
		}
		/* a side that does not end its TransferSandbox soon after the
		 * cancel (a frozen shim) is given up: its call is cut */
		if (cancelled && now_ms() - cancelled_at > (ctl_is_interrupted() ? 500 : 3000)) {
			if (!__atomic_load_n(&xs.done, __ATOMIC_ACQUIRE))
				ctl_side_abandon(&src);
			if (!__atomic_load_n(&xd.done, __ATOMIC_ACQUIRE))
				ctl_side_abandon(&dst);
		}
		xfer_wait(&xs, &xd, sdone, ddone, 100);
	}
	pthread_join(xs.th, NULL);
	pthread_join(xd.th, NULL);
	if (late) {
		struct xfer_thread *lx = late == &src ? &xs : &xd;
		fprintf(stderr, "\nlmctl: no answer to TransferSandbox from the %s %.0f ms after the %s's: asking again\n",
			late->name, (double)tmo / 1e6, late == &src ? "destination" : "source");
		lx->msg[0] = '\0';
		late->silent = false;   /* we cut its call: it did not miss a deadline */
		lx->rc = reconnect(late);
		if (lx->rc == 0) {
			TransferSandboxRequest again = TRANSFER_SANDBOX_REQUEST__INIT;
			again.session_id = session;
			lx->rc = ctl_call(late, CTL_MIGRATION_SERVICE, "TransferSandbox", &again.base, NULL, NULL, tmo,
					  false, lx->msg, sizeof(lx->msg));
		}
	}
	transfer_answered = now_ms();    /* both answers, a late one asked for again included */
	res->transfer_ms = transfer_answered - transfer_t0;
	/* the progress line ends here (the summary line, printed once the
	 * notifications ended, has the last figures) */
	if (!o->quiet_progress)
		ctl_progress_render(&prog, tty, true, o->vm_bytes);
	if (xs.rc != 0 || xd.rc != 0) {
		if (xs.rc != 0)
			fprintf(stderr, "lmctl: TransferSandbox on source (%s): %s: %s\n", src.path,
				xs.rc > 0 ? ctl_code_name(xs.rc) : "transport",
				xs.rc > 0 ? xs.msg : strerror(-xs.rc));
		if (xd.rc != 0)
			fprintf(stderr, "lmctl: TransferSandbox on destination (%s): %s: %s\n", dst.path,
				xd.rc > 0 ? ctl_code_name(xd.rc) : "transport",
				xd.rc > 0 ? xd.msg : strerror(-xd.rc));
		goto fail;
	}
	if (cancelled)
		goto fail;

	/* verification, while the source is paused and the destination not yet resumed */
	if (o->verify) {
		char why[512] = "";
		if (query_props(&src, res->src_digest, sizeof(res->src_digest), res->src_sum,
				sizeof(res->src_sum), &res->src_iters, res->src_sched, sizeof(res->src_sched),
				why, sizeof(why)) == 0 &&
		    query_props(&dst, res->dst_digest, sizeof(res->dst_digest), res->dst_sum,
				sizeof(res->dst_sum), &res->dst_iters, res->dst_sched, sizeof(res->dst_sched),
				why, sizeof(why)) == 0) {
			/* memory, the workload's checksum and its iteration counter
			 * all as they were at the blackout */
			bool eq = !strcmp(res->src_digest, res->dst_digest) &&
				  !strcmp(res->src_sum, res->dst_sum) &&
				  res->src_iters == res->dst_iters;
			res->verified = eq ? 1 : -1;
			if (!eq) {
				fprintf(stderr, "lmctl: verification failed: memory digest %s vs %s, workload checksum %s vs %s, "
					"guest counter %" PRId64 " vs %" PRId64 "\n",
					res->src_digest, res->dst_digest, res->src_sum, res->dst_sum,
					res->src_iters, res->dst_iters);
				goto fail;
			}
		} else {
			res->verified = 0;
			fprintf(stderr, "lmctl: verification unavailable (%s)\n", why);
			if (o->require_verify)
				goto fail;
		}
	}

	/* 8. finalize: the destination takes over first, then the source stops */
	FinalizeSandboxRequest fi = FINALIZE_SANDBOX_REQUEST__INIT;
	fi.session_id = session;
	fi.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;
	if (ctl_call(&dst, CTL_MIGRATION_SERVICE, "FinalizeSandbox", &fi.base, NULL, NULL, tmo, false, NULL, 0) != 0)
		goto fail;
	res->resumed_ms = now_ms() - transfer_answered;
	if (res->verified == 1) {
		/* the guest goes on from where it was: its counter never resets
		 * nor goes back, and it advances on the destination */
		char why[512] = "";
		res->dst_iters_after = -1;
		for (int i = 0; i < 100; i++) {
			int64_t now_it = -1;
			if (query_props(&dst, NULL, 0, NULL, 0, &now_it, NULL, 0, why, sizeof(why)) != 0)
				break;
			if (now_it < res->dst_iters) {
				fprintf(stderr, "lmctl: verification failed: the guest counter went back on the destination "
					"(%" PRId64 " after resume, %" PRId64 " at blackout)\n", now_it, res->dst_iters);
				res->verified = -1;
				break;
			}
			res->dst_iters_after = now_it;
			if (now_it > res->dst_iters || res->dst_iters < 0)
				break;
			usleep(20 * 1000);
		}
		if (res->verified == 1 && res->dst_iters >= 0 && res->dst_iters_after <= res->dst_iters) {
			fprintf(stderr, "lmctl: verification: the guest does not advance on the destination "
				"(counter %" PRId64 ")\n", res->dst_iters_after);
			res->verified = -1;
		}
	}
	STEP_LATE("lmctl.finalize");
	fi.action = FINALIZE_ACTION__FINALIZE_ACTION_STOP;
	res->placement = ON_DESTINATION;   /* whatever fails from here */
	char smsg[512] = "";
	if (ctl_call(&src, CTL_MIGRATION_SERVICE, "FinalizeSandbox", &fi.base, NULL, NULL, tmo, false, smsg,
		     sizeof(smsg)) != 0) {
		/* The VM runs on the destination (its RESUME answered OK). A
		 * source whose link broke before it heard the commit refuses
		 * the STOP: we saw the destination run it, and say so
		 * (Recovery Stop). Otherwise its copy stays paused (it gave the
		 * guest away and never resumes it) and its shim ends it. */
		bool told = false;
		if (!src.silent && strstr(smsg, "has not confirmed")) {
			char req[400], *out = NULL;
			snprintf(req, sizeof(req), "{\"SessionId\":\"%s\",\"Action\":\"Stop\"}", session);
			told = ctl_call_json(&src, "lmshim.v1.Recovery", "Act", req, tmo, false, &out, NULL, 0) == 0;
			free(out);
			if (told)
				fprintf(stderr, "lmctl: the source had not heard the destination's commit: told it the "
					"destination runs the guest; it stopped its copy\n");
		}
		if (!told)
			fprintf(stderr, "lmctl: the VM runs on the destination but the source did not confirm its stop: "
				"its copy stays paused (it never resumes a guest it gave away); if its shim does not "
				"hear the commit, run: lmctl recover --session %s --from %s --to %s\n",
				session, o->from, o->to);
		res->ok = told;
	} else {
		res->ok = true;
	}

	/* 9. cleanup */
	STEP_LATE("lmctl.cleanup");
	CleanupRequest cl = CLEANUP_REQUEST__INIT;
	cl.session_id = session;
	int c1 = ctl_call(&src, CTL_MIGRATION_SERVICE, "Cleanup", &cl.base, NULL, NULL, tmo, false, NULL, 0);
	int c2 = ctl_call(&dst, CTL_MIGRATION_SERVICE, "Cleanup", &cl.base, NULL, NULL, tmo, false, NULL, 0);
	close_notifications(&ns, 2000);
	close_notifications(&nd, 2000);
	/* the guest moved: a cleanup that failed leaves only the session's
	 * bookkeeping, which the shim ends itself (its orphan timeout) */
	if (c1 != 0 || c2 != 0)
		fprintf(stderr, "lmctl: warning: Cleanup failed on the %s; that shim ends the session itself "
			"once no orchestrator drives it (lmshim --orphan-timeout-ms)\n",
			c1 && c2 ? "source and the destination" : c1 ? "source" : "destination");
	rc = res->ok ? 0 : 1;
	goto summary;

fail:
	if (tty && !o->quiet_progress)
		fputc('\n', stderr);
	if (watch_started) {
		pthread_mutex_lock(&watch.mu);
		watch.rolling_back = true;
		pthread_mutex_unlock(&watch.mu);
	}
	if (ctl_is_interrupted()) {
		/* the calls cut at the Ctrl-C took their connections with them */
		if (!src.silent)
			reconnect(&src);
		if (!dst.silent)
			reconnect(&dst);
	}
	res->placement = rollback(&src, &dst, session, tmo, src_started, dst_started, transfer_began);
	res->rolled_back = src_started && res->placement == ON_SOURCE;
	close_notifications(&ns, ctl_is_interrupted() ? 200 : 2000);
	close_notifications(&nd, ctl_is_interrupted() ? 200 : 2000);
	rc = res->placement == IN_DOUBT ? 3 : 1;
summary:
	res->total_ms = now_ms() - t0;
	pthread_mutex_lock(&prog.mu);
	res->blackout_ms = prog.blackout_ms;
	pthread_mutex_unlock(&prog.mu);
	fprintf(stderr, "lmctl: %s in %.0f ms",
		rc == 0 ? "migrated"
		: res->placement == ON_DESTINATION ? "migration FAILED late, but the guest runs on the destination"
		: res->placement == IN_DOUBT ? "migration FAILED and is NOT settled"
		: "migration FAILED (rolled back: the guest runs on the source)",
		res->total_ms);
	if (res->transfer_ms >= 0)
		fprintf(stderr, " (transfer %.0f ms)", res->transfer_ms);
	if (res->blackout_ms >= 0)
		fprintf(stderr, ", blackout %" PRId64 " ms", res->blackout_ms);
	if (res->resumed_ms >= 0)
		fprintf(stderr, " + %.0f ms to the destination's resume", res->resumed_ms);
	if (prog.have_progress)
		fprintf(stderr, ", %.0f passes, %.2f GiB sent", prog.pass,
			prog.bytes_sent / (1024.0 * 1024.0 * 1024.0));
	fprintf(stderr, ", notifications: %" PRIu32 " source, %" PRIu32 " destination (message_id gaps: %" PRIu32 ")\n",
		prog.events[1], prog.events[2], prog.id_gaps[1] + prog.id_gaps[2] + prog.id_gaps[0]);
	if (prog.failed) {
		for (int side = 1; side <= 2; side++)
			if (prog.fail_state[side])
				fprintf(stderr, "lmctl: the %s reported FAILED (%s)\n", ctl_origin_name(side),
					ctl_state_name(prog.fail_state[side]));
	}
	if (res->placement == IN_DOUBT && rc != 0) {
		fprintf(stderr, "lmctl: where the guest is could not be made sure: it is paused on the source%s, and runs "
			"nowhere. The shims settle it themselves once they hear each other again, or\n"
			"lmctl: run: lmctl recover --session %s --from %s --to %s\n",
			dst.silent ? " (the destination does not answer)" : src.silent ? " (the source does not answer)" : "",
			session, o->from, o->to);
	}
	if (rc == 0 && o->verify) {
		if (res->verified == 1)
			fprintf(stderr, "lmctl: verified: memory digest %s = %s, workload checksum %s = %s, "
				"guest counter %" PRId64 " = %" PRId64 " at blackout, %" PRId64 " after resume\n",
				res->src_digest, res->dst_digest, res->src_sum, res->dst_sum,
				res->src_iters, res->dst_iters, res->dst_iters_after);
		if (res->src_sched[0] || res->dst_sched[0])
			fprintf(stderr, "lmctl: transfer threads: source %s, destination %s "
				"(deadline = CPU reserved; lmshim --transfer-cpu)\n",
				res->src_sched[0] ? res->src_sched : "?", res->dst_sched[0] ? res->dst_sched : "?");
		if (res->verified == -1)
			rc = 1;
	}
out:
	if (watch_started) {
		__atomic_store_n(&watch.stop, 1, __ATOMIC_RELEASE);
		pthread_join(watch.th, NULL);
		pthread_mutex_destroy(&watch.mu);
	}
	if (export_resp)
		protobuf_c_message_free_unpacked(export_resp, NULL);
	ctl_side_close(&src);
	ctl_side_close(&dst);
	pthread_mutex_destroy(&prog.mu);
	return rc;
}
