/*
 * lmshim.c: the shim daemon.
 *
 * Two ways to run it:
 *
 * 1. As containerd runs a v2 shim:
 *      lmshim -namespace NS -address ADDR -publish-binary BIN -id ID [-bundle DIR] [-debug] start
 *    computes the socket containerd expects,
 *    /run/containerd/s/<sha256 hex of "ADDR/NS/ID">, starts the daemon (a
 *    re-exec of itself, detached in a new session) unless one already
 *    answers there, writes the address to ./address as containerd's shims
 *    do, and prints unix://<path>.
 *      lmshim -namespace NS -address ADDR -id ID delete
 *    cleans up (removes a stale socket) and writes a DeleteResponse
 *    (pid 0, exit status 137, exited now) on stdout, as containerd 1.6's
 *    shims do.
 *      lmshim -namespace NS -address ADDR -id ID [-socket PATH]
 *    (no action) is the daemon itself, idle (no VM) until it imports one.
 *    It forwards task events to containerd's ttrpc socket named by
 *    TTRPC_ADDRESS in its environment (containerd sets it; the forked
 *    daemon inherits it), as containerd's v2 shims do; -publish-binary is
 *    accepted and not used. A task Shutdown that leaves no container and
 *    no session stops it. Flags are Go-style: -flag value, -flag=value,
 *    --flag value.
 *
 * 2. Standalone, with a sandbox to run:
 *      lmshim serve --socket PATH [--vm-size-mb N] [--backend sim|kvm|qemu]
 *             [--workload-rate MBps] [--workload-pattern uniform|hotset|sequential]
 *             [--containers pod1:sandbox,pod1:c1,...] [--idle] [--id ID]
 *             [--state-dir DIR] [--workers N] [--transfer-cpu PCT]
 *             [--events-address ADDR]
 *
 * Either way it fills struct lm_shim_config and calls lm_shim_create
 * (shim/shim.h); SIGTERM/SIGINT stop it gracefully (lm_shim_destroy).
 * Logs go to stderr in logfmt (util/log.h); LM_FAULTS arms fault points.
 *
 * DESIGN. The main thread only parses flags, creates the shim and waits
 * for a signal (sigwait on a blocked set, so no handler runs on any of the
 * shim's threads); every other thread belongs to the shim.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <poll.h>

#include "cmd/shim_options.h"
#include "cmd/shim_socket.h"
#include "shim/shim.h"
#include "task.pb-c.h"
#include "util/fault.h"
#include "util/log.h"
#include "util/sched.h"

#define SOCKET_ROOT LM_CONTAINERD_SOCKET_ROOT

static const char usage[] =
	"usage: lmshim [containerd flags] start|delete\n"
	"       lmshim [containerd flags]                (the daemon)\n"
	"       lmshim serve --socket PATH [options]     (standalone)\n"
	"\n"
	"containerd flags (Go style, -flag value):\n"
	"  -namespace NS  -id ID  -address ADDR  -publish-binary BIN  -bundle DIR  -debug\n"
	"  -socket PATH   serve here instead of the address containerd computes\n"
	"  start reads containerd's runtime options on stdin: runtimeoptions.v1.Options whose\n"
	"  config_path (ctr run --runtime-config-path FILE; ConfigPath in the CRI's options)\n"
	"  names a JSON file: {\"vm_memory_mb\": 256, \"vcpus\": 1, \"migration_tls_dir\": DIR,\n"
	"  \"insecure_migration\": false, \"checksum\": true, \"vmm_stream_on_link\": true,\n"
	"  \"stall_timeout_ms\": 10000, \"orphan_timeout_ms\": 60000, \"transfer_cpu\": 90,\n"
	"  \"debug\": false} (all optional;\n"
	"  an unknown key fails the start, naming it)\n"
	"  start: a bundle whose config.json has io.kubernetes.cri.sandbox-id=P is served by\n"
	"  the shim of P (one shim, one utility VM per pod); the first task Create boots the VM\n"
	"\n"
	"serve options:\n"
	"  --socket PATH                   ttrpc socket to serve (required)\n"
	"  --id ID                         shim id (default: standalone)\n"
	"  --namespace NS                  containerd namespace (default: default)\n"
	"  --vm-size-mb N                  guest memory (default 256)\n"
	"  --vcpus N                       vCPUs (default 1)\n"
	"  --backend sim|kvm|qemu          VM backend (default sim; qemu: a Linux\n"
	"                                  utility VM under QEMU, the build's guest image)\n"
	"  --workload-rate MBps            guest dirtying rate (default 100; 0 = idle guest)\n"
	"  --workload-pattern uniform|hotset|sequential   (default uniform)\n"
	"  --memory-fill zero|random|zero90  guest memory at boot (default zero: untouched)\n"
	"  --containers POD:ID,...         containers; ID 'sandbox' (or POD:ID:sandbox) is the pod's\n"
	"                                  sandbox container; POD:ID:layers=N sets its layer count\n"
	"                                  (default pod1:sandbox)\n"
	"  --container-cmd ID=COMMAND      backend qemu: container ID's init runs /bin/sh -c COMMAND\n"
	"                                  in the utility VM, on busybox (default: sleep; repeatable)\n"
	"  --container-rootfs ID=PATH[:PATH...]  backend qemu: container ID's rootfs is these\n"
	"                                  read-only layers, base first (directories, packed\n"
	"                                  into erofs images, or erofs image files), one VM disk\n"
	"                                  each, under a writable scratch (default: the build's\n"
	"                                  busybox image, shared; repeatable)\n"
	"  --idle                          no VM: a migration destination\n"
	"  --migration-tls-dir DIR         mutual TLS 1.3 on every migration link: DIR holds\n"
	"                                  ca-cert.pem, server-cert.pem, server-key.pem (this host\n"
	"                                  as a destination: serverAuth), client-cert.pem,\n"
	"                                  client-key.pem (as a source: clientAuth)\n"
	"  --insecure-migration            without --migration-tls-dir, allow plain TCP links\n"
	"                                  (default: only a unix socket may carry a plain link)\n"
	"  --no-checksum                   migrations this shim sends carry batch checksums only\n"
	"                                  when the orchestrator asks (default: always)\n"
	"  --vmm-stream link|carry         backend qemu: on a plain unix link the two QEMUs speak\n"
	"                                  on the link themselves (link, the default), or QEMU's\n"
	"                                  stream travels in our records (carry: our checksums;\n"
	"                                  TCP and TLS links always carry)\n"
	"  --boot-on-create                with --idle and --backend qemu: the first plain task\n"
	"                                  Create boots the VM (--vm-size-mb plus the container's\n"
	"                                  memory limit, at least --vcpus), as the shim that\n"
	"                                  containerd starts does\n"
	"  --state-dir DIR                 the boot containers' bundles and stdio, one folder\n"
	"                                  per container (default /run/lmshim)\n"
	"  --workers N                     actor worker threads (default: cores)\n"
	"  --transfer-cpu PCT              CPU reserved for a migration's memory-transfer thread,\n"
	"                                  percent of one core, 0..95 (default 90; 0 = none):\n"
	"                                  SCHED_DEADLINE reclaiming idle time, else nice -20\n"
	"  --stall-timeout-ms MS           the migration link's liveness: a peer that says nothing\n"
	"                                  this long has stalled (default 10000)\n"
	"  --orphan-timeout-ms MS          a migration session with no orchestrator call this long\n"
	"                                  resolves itself: the guest runs on one side, both shims\n"
	"                                  go idle (default 60000; 0 = never)\n"
	"  --events-address ADDR           containerd's ttrpc socket for task events\n"
	"                                  (/tasks/create|start|exit|delete; default $TTRPC_ADDRESS;\n"
	"                                  '' = none)\n"
	"  --debug                         debug logging\n"
	"  --help                          this text\n";

static int bad(const char *what)
{
	fprintf(stderr, "lmshim: %s (see 'lmshim --help')\n", what);
	return 2;
}

/* ------------------------------------------------------------ containerd */

struct cflags {
	const char *ns, *id, *address, *publish, *bundle, *socket;
	const char *options_json;     /* the daemon's: start hands it the options */
	bool debug;
	const char *action;
};

/* Go's flag package: -x v, -x=v, --x v, --x=v; bools take no value. */
static int parse_cflags(int argc, char **argv, struct cflags *f)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-' || !a[1]) {
			if (f->action)
				return bad("more than one action");
			f->action = a;
			if (i + 1 < argc)
				return bad("flags must come before the action");
			continue;
		}
		const char *name = a + 1;
		if (*name == '-')
			name++;
		char key[64];
		const char *val = NULL;
		const char *eq = strchr(name, '=');
		size_t kl = eq ? (size_t)(eq - name) : strlen(name);
		if (kl >= sizeof(key))
			return bad("unknown flag");
		memcpy(key, name, kl);
		key[kl] = 0;
		if (eq)
			val = eq + 1;
		if (!strcmp(key, "help") || !strcmp(key, "h")) {
			fputs(usage, stdout);
			return -1;
		}
		if (!strcmp(key, "debug")) {
			f->debug = !val || !strcmp(val, "true") || !strcmp(val, "1");
			continue;
		}
		if (!strcmp(key, "v")) {
			printf("lmshim 0.1\n");
			return -1;
		}
		const char **dst = NULL;
		if (!strcmp(key, "namespace")) dst = &f->ns;
		else if (!strcmp(key, "id")) dst = &f->id;
		else if (!strcmp(key, "address")) dst = &f->address;
		else if (!strcmp(key, "publish-binary")) dst = &f->publish;
		else if (!strcmp(key, "bundle")) dst = &f->bundle;
		else if (!strcmp(key, "socket")) dst = &f->socket;
		else if (!strcmp(key, "options-json")) dst = &f->options_json;
		if (!dst) {
			char m[128];
			snprintf(m, sizeof(m), "unknown flag '-%s'", key);
			return bad(m);
		}
		if (!val) {
			if (i + 1 >= argc) {
				char m[128];
				snprintf(m, sizeof(m), "flag '-%s' needs a value", key);
				return bad(m);
			}
			val = argv[++i];
		}
		*dst = val;
	}
	return 0;
}

/* containerd's SocketAddress for these flags (shim_socket.h). */
static int socket_path(const struct cflags *f, char *out, size_t len)
{
	return lm_containerd_shim_socket(f->address, f->ns, f->id, out, len);
}

static bool socket_answers(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(fd);
	return ok;
}

/* The shim a container's `start` names: its pod's. A bundle whose
 * config.json says io.kubernetes.cri.sandbox-id=P (the CRI's sandbox
 * container and app containers alike) is served by the shim of P, as
 * containerd's runc-v2 shim groups a pod; otherwise by its own. `group`
 * gets the ID (at most cap bytes; a sandbox ID that is not a plain name
 * is ignored). */
static void shim_group(const struct cflags *f, char *group, size_t cap)
{
	snprintf(group, cap, "%s", f->id);
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/config.json", f->bundle && *f->bundle ? f->bundle : ".");
	json_t *cfg = json_load_file(p, 0, NULL);
	const char *sb = json_string_value(json_object_get(json_object_get(cfg, "annotations"),
							   "io.kubernetes.cri.sandbox-id"));
	bool plain = sb && *sb && strlen(sb) < cap && strlen(sb) <= 128;
	for (const char *c = sb; plain && *c; c++)
		plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
			*c == '_' || *c == '.' || *c == '-';
	if (plain)
		snprintf(group, cap, "%s", sb);
	json_decref(cfg);
}

/* containerd writes the runtime options (a protobuf Any) on start's stdin
 * and closes it; a terminal is not read. At most 64 KiB within 5 s. 0 with
 * *json (heap, or NULL: no options), or 1 having said why on stderr. */
static int start_options(char **json)
{
	*json = NULL;
	if (isatty(0))
		return 0;
	size_t cap = 64u << 10, len = 0;
	uint8_t *buf = malloc(cap + 1);
	if (!buf)
		return 1;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		long left = 5000 - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
		struct pollfd p = { .fd = 0, .events = POLLIN };
		int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0) {
			fprintf(stderr, "lmshim: start: runtime options on stdin: %s\n",
				pr ? strerror(errno) : "not closed within 5 s");
			free(buf);
			return 1;
		}
		ssize_t n = read(0, buf + len, cap + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EBADF || errno == EINVAL))   /* no stdin */
			break;
		if (n < 0) {
			fprintf(stderr, "lmshim: start: runtime options on stdin: %s\n", strerror(errno));
			free(buf);
			return 1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > cap) {
			fprintf(stderr, "lmshim: start: runtime options on stdin: more than 64 KiB\n");
			free(buf);
			return 1;
		}
	}
	char err[512];
	int rc = lm_shim_options_from_any(buf, len, json, err, sizeof err);
	free(buf);
	struct lm_shim_options o;
	lm_shim_options_default(&o);
	if (!rc && *json)
		rc = lm_shim_options_parse(*json, &o, err, sizeof err);
	lm_shim_options_clear(&o);
	if (rc) {
		fprintf(stderr, "lmshim: start: %s\n", err);
		free(*json);
		*json = NULL;
		return 1;
	}
	return 0;
}

static int start_shim(const struct cflags *given, const char *options)
{
	char group[160];
	shim_group(given, group, sizeof group);
	struct cflags grouped = *given;
	grouped.id = group;           /* the pod's shim: its socket, its daemon */
	const struct cflags *f = &grouped;
	char path[PATH_MAX];
	if (socket_path(f, path, sizeof(path)) < 0)
		return bad("address, namespace and id too long");
	char address[PATH_MAX + 8];
	snprintf(address, sizeof(address), "unix://%s", path);
	if (!socket_answers(path)) {
		if (mkdir("/run/containerd", 0711) < 0 && errno != EEXIST) {
			fprintf(stderr, "lmshim: mkdir /run/containerd: %s\n", strerror(errno));
			return 1;
		}
		if (mkdir(SOCKET_ROOT, 0700) < 0 && errno != EEXIST) {
			fprintf(stderr, "lmshim: mkdir %s: %s\n", SOCKET_ROOT, strerror(errno));
			return 1;
		}
		unlink(path); /* stale */
		char self[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n <= 0) {
			fprintf(stderr, "lmshim: /proc/self/exe: %s\n", strerror(errno));
			return 1;
		}
		self[n] = 0;
		/* the daemon: same flags, no action, our socket */
		char *args[20];
		int k = 0;
		args[k++] = self;
		args[k++] = "-namespace";
		args[k++] = (char *)f->ns;
		args[k++] = "-id";
		args[k++] = (char *)f->id;
		args[k++] = "-address";
		args[k++] = (char *)(f->address ? f->address : "");
		if (f->publish) {
			args[k++] = "-publish-binary";
			args[k++] = (char *)f->publish;
		}
		if (f->debug)
			args[k++] = "-debug";
		if (options) {  /* (a pod's shim already running keeps its own) */
			args[k++] = "-options-json";
			args[k++] = (char *)options;
		}
		args[k++] = "-socket";
		args[k++] = path;
		args[k] = NULL;
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "lmshim: fork: %s\n", strerror(errno));
			return 1;
		}
		if (pid == 0) {
			/* detach: a new session; a second fork so the daemon is
			 * not our child (containerd reaps only the start process) */
			setsid();
			pid_t p2 = fork();
			if (p2 != 0)
				_exit(p2 < 0 ? 1 : 0);
			/* containerd reads start's combined output to its end:
			 * the daemon must hold neither stdout nor stderr. Logs go
			 * to the bundle's "log" fifo (containerd reads it) or,
			 * without one, to ./lmshim.log. */
			int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
			if (nul >= 0) {
				dup2(nul, 0);
				dup2(nul, 1);
				dup2(nul, 2);
			}
			int log = open("log", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
			if (log >= 0)
				fcntl(log, F_SETFL, 0);
			else
				log = open("lmshim.log", O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
			if (log >= 0)
				dup2(log, 2);
			execv(self, args);
			_exit(127);
		}
		int st;
		waitpid(pid, &st, 0);
		bool up = false;
		for (int i = 0; i < 200 && !up; i++) {
			up = socket_answers(path);
			if (!up)
				usleep(50 * 1000);
		}
		if (!up) {
			fprintf(stderr, "lmshim: the daemon did not come up on %s\n", path);
			return 1;
		}
	}
	int fd = open("address", O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		ssize_t w = write(fd, address, strlen(address));
		(void)w;
		close(fd);
	}
	fputs(address, stdout);
	fflush(stdout);
	return 0;
}

static int cmd_start(int argc, char **argv, const struct cflags *given)
{
	char *options = NULL;
	if (start_options(&options))
		return 1;
	int rc = start_shim(given, options);
	free(options);
	(void)argc;
	(void)argv;
	return rc;
}

static int cmd_delete(const struct cflags *f)
{
	char path[PATH_MAX];
	if (socket_path(f, path, sizeof(path)) == 0 && !socket_answers(path))
		unlink(path);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	at.seconds = ts.tv_sec;
	at.nanos = (int32_t)ts.tv_nsec;
	Containerd__Task__V2__DeleteResponse r = CONTAINERD__TASK__V2__DELETE_RESPONSE__INIT;
	r.pid = 0;
	r.exit_status = 128 + SIGKILL;
	r.exited_at = &at;
	uint8_t buf[64];
	size_t len = containerd__task__v2__delete_response__pack(&r, buf);
	if (fwrite(buf, 1, len, stdout) != len)
		return 1;
	fflush(stdout);
	return 0;
}

/* -------------------------------------------------------------- serving */

/* lm_shim_config.on_shutdown: a task Shutdown left nothing to serve; stop
 * the way SIGTERM does (the main thread's sigwait takes it). */
static void stop_self(void *arg)
{
	(void)arg;
	kill(getpid(), SIGTERM);
}

static int run_shim(const struct lm_shim_config *cfg)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	/* blocked before any shim thread exists: they all inherit the mask */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	lm_shim_t *s = NULL;
	int rc = lm_shim_create(&s, cfg);
	if (rc < 0) {
		lm_log_error("lmshim", "start failed", "socket=%s err=\"%s\"", cfg->socket, strerror(-rc));
		return 1;
	}
	lm_log_info("lmshim", "serving", "socket=%s id=%s pid=%d vm=%s", cfg->socket, cfg->id,
		    (int)getpid(), cfg->vm_document ? "yes" : "idle");
	lm_log_debug("lmshim", "debug logging on", "id=%s", cfg->id);
	int sig = 0;
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP)
			continue;
		break;
	}
	lm_log_info("lmshim", "stopping", "signal=%d", sig);
	lm_shim_destroy(s);
	lm_log_info("lmshim", "stopped", "socket=%s", cfg->socket);
	return 0;
}

/* The utility VM a task Create boots (shim.h vm_on_create): the qemu
 * backend's, `mb` MiB before the container's own memory limit. */
static void sandbox_document(char *doc, size_t cap, const char *id, unsigned long mb, unsigned long vcpus)
{
	snprintf(doc, cap, "{\"Id\":\"vm-%s\",\"VirtualMachine\":{\"Backend\":\"qemu\","
		 "\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":%lu},\"Processor\":{\"Count\":%lu}}}}",
		 id, mb, vcpus);
}

static int cmd_daemon(const struct cflags *f)
{
	char path[PATH_MAX];
	if (f->socket) {
		const char *p = f->socket;
		if (!strncmp(p, "unix://", 7))
			p += 7;
		snprintf(path, sizeof(path), "%s", p);
	} else if (socket_path(f, path, sizeof(path)) < 0) {
		return bad("address, namespace and id too long");
	}
	/* the runtime options `start` read from containerd (shim_options.h) */
	struct lm_shim_options o;
	lm_shim_options_default(&o);
	if (f->options_json) {
		char err[512];
		if (lm_shim_options_parse(f->options_json, &o, err, sizeof err)) {
			lm_log_error("lmshim", "bad runtime options", "why=\"%s\"", err);
			lm_shim_options_clear(&o);
			return 2;
		}
		if (o.debug)
			lm_log_set_level(LM_LOG_DEBUG);
		lm_log_info("lmshim", "runtime options", "vm_memory_mb=%lu vcpus=%lu migration_tls_dir=%s "
			    "insecure_migration=%d checksum=%d vmm_stream_on_link=%d stall_timeout_ms=%lu "
			    "orphan_timeout_ms=%lu transfer_cpu=%lu debug=%d", o.vm_memory_mb, o.vcpus,
			    o.migration_tls_dir ? o.migration_tls_dir : "-", o.insecure_migration, o.checksum,
			    o.vmm_on_link, o.stall_ms, o.orphan_ms, o.transfer_cpu, o.debug || f->debug);
	}
	struct lm_shim_config cfg = { .socket = path, .id = f->id, .ns = f->ns,
				      .transfer_cpu_pct = (unsigned)o.transfer_cpu,
				      .orphan_ms = (unsigned)o.orphan_ms, .stall_ms = (unsigned)o.stall_ms,
				      .no_checksum = !o.checksum, .vmm_carry = !o.vmm_on_link,
				      .migration_tls_dir = o.migration_tls_dir,
				      .insecure_migration = o.insecure_migration,
				      .on_shutdown = stop_self,
				      /* containerd passes its ttrpc address for events */
				      .events_address = getenv("TTRPC_ADDRESS") };
	/* the first Create boots the sandbox: a utility VM under QEMU */
	char doc[512];
	sandbox_document(doc, sizeof doc, f->id, o.vm_memory_mb, o.vcpus);
	cfg.vm_on_create = doc;
	int rc = run_shim(&cfg);
	lm_shim_options_clear(&o);
	return rc;
}

/* pod:id[:sandbox|:container][:layers=N],... */
static int parse_containers(const char *spec, struct lm_shim_container **out, unsigned *n, char **store)
{
	char *s = strdup(spec);
	if (!s)
		return -ENOMEM;
	*store = s;
	unsigned cap = 1;
	for (const char *p = spec; *p; p++)
		cap += *p == ',';
	struct lm_shim_container *v = calloc(cap, sizeof(*v));
	if (!v)
		return -ENOMEM;
	unsigned k = 0;
	char *save = NULL;
	for (char *item = strtok_r(s, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *save2 = NULL;
		char *pod = strtok_r(item, ":", &save2);
		char *id = strtok_r(NULL, ":", &save2);
		if (!pod || !id || !*pod || !*id) {
			free(v);
			return -EINVAL;
		}
		struct lm_shim_container *c = &v[k++];
		c->pod_id = pod;
		c->id = id;
		c->is_sandbox = !strcmp(id, "sandbox");
		c->layers = 1;
		for (char *t = strtok_r(NULL, ":", &save2); t; t = strtok_r(NULL, ":", &save2)) {
			if (!strcmp(t, "sandbox")) {
				c->is_sandbox = true;
			} else if (!strcmp(t, "container")) {
				c->is_sandbox = false;
			} else if (!strncmp(t, "layers=", 7)) {
				char *end;
				unsigned long l = strtoul(t + 7, &end, 10);
				if (end == t + 7 || *end || l > 128) {
					free(v);
					return -EINVAL;
				}
				c->layers = (unsigned)l;
			} else {
				free(v);
				return -EINVAL;
			}
		}
	}
	*out = v;
	*n = k;
	return 0;
}

/* --container-rootfs ID=PATH[:PATH...]: container ID's layers, base
 * first; *store keeps the split string. */
static int apply_rootfs(const char *arg, struct lm_shim_container *cv, unsigned n,
			const char *backend, char **store, char *m, size_t mlen)
{
	size_t idlen = (size_t)(strchr(arg, '=') - arg);
	int il = (int)(idlen > 64 ? 64 : idlen);
	unsigned k = 0;
	while (k < n && (strlen(cv[k].id) != idlen || strncmp(cv[k].id, arg, idlen)))
		k++;
	if (k == n || strcmp(backend, "qemu")) {
		snprintf(m, mlen, "--container-rootfs %.*s: %s", il, arg,
			 k == n ? "no such container in --containers"
				: "only a qemu backend runs real processes");
		return -EINVAL;
	}
	if (cv[k].layer_paths) {
		snprintf(m, mlen, "--container-rootfs %.*s: given twice", il, arg);
		return -EINVAL;
	}
	char *s = strdup(arg + idlen + 1);
	unsigned nl = 1;
	for (const char *p = arg + idlen + 1; *p; p++)
		nl += *p == ':';
	const char **v = s ? calloc(nl, sizeof(*v)) : NULL;
	if (!v) {
		free(s);
		snprintf(m, mlen, "--container-rootfs: out of memory");
		return -ENOMEM;
	}
	*store = s;
	if (nl > 15) {
		free(v);
		snprintf(m, mlen, "--container-rootfs %.*s: at most 15 layers", il, arg);
		return -EINVAL;
	}
	unsigned l = 0;
	char *save = NULL;
	for (char *t = strtok_r(s, ":", &save); t; t = strtok_r(NULL, ":", &save)) {
		struct stat st;
		const char *why = t[0] != '/' ? "not an absolute path"
				  : stat(t, &st) < 0 ? strerror(errno)
				  : !S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)
					  ? "neither a directory nor an image file" : NULL;
		if (!why && strchr(t, ','))
			why = "a path with ',' cannot be a QEMU disk";
		if (why) {
			snprintf(m, mlen, "--container-rootfs %.*s: layer %u (%.200s): %s", il, arg, l, t,
				 why);
			free(v);
			return -EINVAL;
		}
		v[l++] = t;
	}
	if (!l) {
		free(v);
		snprintf(m, mlen, "--container-rootfs %.*s: no layer", il, arg);
		return -EINVAL;
	}
	cv[k].layer_paths = v;
	cv[k].layers = l;
	return 0;
}

static void free_layer_paths(struct lm_shim_container *cv, unsigned n)
{
	for (unsigned i = 0; cv && i < n; i++)
		free((void *)cv[i].layer_paths);
}

static int cmd_serve(int argc, char **argv)
{
	enum { O_SOCKET = 1, O_ID, O_NS, O_MB, O_VCPUS, O_BACKEND, O_RATE, O_PATTERN, O_CONT, O_IDLE,
	       O_STATE, O_WORKERS, O_DEBUG, O_ANYUID, O_HELP, O_FILL, O_XCPU, O_EVENTS, O_STALL,
	       O_ORPHAN, O_CCMD, O_CROOT, O_BOOTC, O_NOCSUM, O_TLSDIR, O_INSECURE, O_VMMSTREAM };
	static const struct option lo[] = {
		{ "socket", required_argument, 0, O_SOCKET }, { "id", required_argument, 0, O_ID },
		{ "namespace", required_argument, 0, O_NS },
		{ "vm-size-mb", required_argument, 0, O_MB }, { "vcpus", required_argument, 0, O_VCPUS },
		{ "backend", required_argument, 0, O_BACKEND },
		{ "workload-rate", required_argument, 0, O_RATE },
		{ "workload-pattern", required_argument, 0, O_PATTERN },
		{ "memory-fill", required_argument, 0, O_FILL },
		{ "containers", required_argument, 0, O_CONT }, { "idle", no_argument, 0, O_IDLE },
		{ "state-dir", required_argument, 0, O_STATE },
		{ "workers", required_argument, 0, O_WORKERS }, { "debug", no_argument, 0, O_DEBUG },
		{ "any-uid", no_argument, 0, O_ANYUID },
		{ "transfer-cpu", required_argument, 0, O_XCPU },
		{ "events-address", required_argument, 0, O_EVENTS },
		{ "stall-timeout-ms", required_argument, 0, O_STALL },
		{ "orphan-timeout-ms", required_argument, 0, O_ORPHAN },
		{ "container-cmd", required_argument, 0, O_CCMD },
		{ "container-rootfs", required_argument, 0, O_CROOT },
		{ "boot-on-create", no_argument, 0, O_BOOTC },
		{ "no-checksum", no_argument, 0, O_NOCSUM },
		{ "migration-tls-dir", required_argument, 0, O_TLSDIR },
		{ "insecure-migration", no_argument, 0, O_INSECURE },
		{ "vmm-stream", required_argument, 0, O_VMMSTREAM },
		{ "help", no_argument, 0, O_HELP }, { 0, 0, 0, 0 },
	};
	const char *sock = NULL, *id = "standalone", *ns = "default", *backend = "sim";
	const char *pattern = "Uniform", *conts = "pod1:sandbox", *state = NULL, *fill = "Zero";
	unsigned long mb = 256, vcpus = 1, rate = 100, workers = 0;
	unsigned long xcpu = LM_SHIM_TRANSFER_CPU_DEFAULT;
	unsigned long stall = 10000, orphan = LM_SHIM_ORPHAN_MS_DEFAULT;
	const char *events = getenv("TTRPC_ADDRESS");
	bool idle = false, any_uid = false, boot_on_create = false, no_checksum = false, insecure = false;
	bool vmm_carry = false;
	const char *tls_dir = NULL;
	const char *ccmd[32], *croot[32];
	unsigned n_ccmd = 0, n_croot = 0;
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		char *end;
		switch (c) {
		case O_SOCKET: sock = optarg; break;
		case O_ID: id = optarg; break;
		case O_NS: ns = optarg; break;
		case O_MB:
			mb = strtoul(optarg, &end, 10);
			if (end == optarg || *end || mb == 0 || mb > (1ul << 20))
				return bad("--vm-size-mb wants a size in MiB");
			break;
		case O_VCPUS:
			vcpus = strtoul(optarg, &end, 10);
			if (end == optarg || *end || vcpus == 0 || vcpus > 64)
				return bad("--vcpus wants 1..64");
			break;
		case O_BACKEND:
			if (strcmp(optarg, "sim") && strcmp(optarg, "kvm") && strcmp(optarg, "qemu"))
				return bad("--backend must be sim, kvm or qemu");
			backend = optarg;
			break;
		case O_RATE:
			rate = strtoul(optarg, &end, 10);
			if (end == optarg || *end || rate > 100000)
				return bad("--workload-rate wants MB/s");
			break;
		case O_PATTERN:
			if (!strcmp(optarg, "uniform")) pattern = "Uniform";
			else if (!strcmp(optarg, "hotset")) pattern = "HotSet";
			else if (!strcmp(optarg, "sequential")) pattern = "Sequential";
			else return bad("--workload-pattern must be uniform, hotset or sequential");
			break;
		case O_FILL:
			if (!strcmp(optarg, "zero")) fill = "Zero";
			else if (!strcmp(optarg, "random")) fill = "Random";
			else if (!strcmp(optarg, "zero90")) fill = "Zero90";
			else return bad("--memory-fill must be zero, random or zero90");
			break;
		case O_CONT: conts = optarg; break;
		case O_CCMD: {
			const char *eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1])
				return bad("--container-cmd wants ID=COMMAND");
			if (n_ccmd == sizeof(ccmd) / sizeof(ccmd[0]))
				return bad("--container-cmd: at most 32");
			ccmd[n_ccmd++] = optarg;
			break;
		}
		case O_CROOT: {
			const char *eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1])
				return bad("--container-rootfs wants ID=PATH[:PATH...]");
			if (n_croot == sizeof(croot) / sizeof(croot[0]))
				return bad("--container-rootfs: at most 32");
			croot[n_croot++] = optarg;
			break;
		}
		case O_IDLE: idle = true; break;
		case O_BOOTC: boot_on_create = true; break;
		case O_NOCSUM: no_checksum = true; break;
		case O_TLSDIR: tls_dir = optarg; break;
		case O_INSECURE: insecure = true; break;
		case O_VMMSTREAM:
			if (!strcmp(optarg, "link") || !strcmp(optarg, "carry")) {
				vmm_carry = !strcmp(optarg, "carry");
				break;
			}
			return bad("--vmm-stream wants link or carry");
		case O_STATE: state = optarg; break;
		case O_WORKERS:
			workers = strtoul(optarg, &end, 10);
			if (end == optarg || *end || workers > 256)
				return bad("--workers wants a number");
			break;
		case O_EVENTS: events = optarg; break;
		case O_XCPU:
			xcpu = strtoul(optarg, &end, 10);
			if (end == optarg || *end || xcpu > LM_SCHED_RESERVE_MAX)
				return bad("--transfer-cpu wants a percentage within 0..95");
			break;
		case O_STALL:
			stall = strtoul(optarg, &end, 10);
			if (end == optarg || *end || stall < 100 || stall > 3600000)
				return bad("--stall-timeout-ms wants 100..3600000");
			break;
		case O_ORPHAN:
			orphan = strtoul(optarg, &end, 10);
			if (end == optarg || *end || (orphan && orphan < 100) || orphan > 86400000)
				return bad("--orphan-timeout-ms wants 0 (never) or 100..86400000");
			break;
		case O_DEBUG: lm_log_set_level(LM_LOG_DEBUG); break;
		case O_ANYUID: any_uid = true; break;
		case O_HELP: fputs(usage, stdout); return 0;
		default: {
			char m[160];
			snprintf(m, sizeof(m), "serve: unknown or incomplete option '%s'", argv[optind - 1]);
			return bad(m);
		}
		}
	}
	if (optind < argc)
		return bad("serve: unexpected argument");
	if (!sock)
		return bad("serve: --socket is required");
	struct lm_shim_config cfg = { .socket = sock, .id = id, .ns = ns, .state_dir = state,
				      .workers = (unsigned)workers, .any_uid = any_uid,
				      .transfer_cpu_pct = (unsigned)xcpu, .on_shutdown = stop_self,
				      .events_address = events, .stall_ms = (unsigned)stall,
				      .orphan_ms = (unsigned)orphan, .no_checksum = no_checksum,
				      .migration_tls_dir = tls_dir, .insecure_migration = insecure,
				      .vmm_carry = vmm_carry };
	char doc[1024], cdoc[512];
	if (boot_on_create) {
		if (!idle || strcmp(backend, "qemu"))
			return bad("serve: --boot-on-create needs --idle and --backend qemu");
		sandbox_document(cdoc, sizeof cdoc, id, mb, vcpus);
		cfg.vm_on_create = cdoc;
	}
	struct lm_shim_container *cv = NULL;
	char *store = NULL, *lstore[32] = {NULL};
	if (!idle) {
		snprintf(doc, sizeof(doc),
			 "{\"Id\":\"vm-%s\",\"VirtualMachine\":{\"Backend\":\"%s\","
			 "\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":%lu},\"Processor\":{\"Count\":%lu}},"
			 "\"GuestWorkload\":{\"Threads\":1,\"RateMBps\":%lu,\"Pattern\":\"%s\",\"Seed\":1,"
			 "\"Fill\":\"%s\"}}}",
			 id, backend, mb, vcpus, rate, pattern, fill);
		cfg.vm_document = doc;
		unsigned n = 0;
		int rc = parse_containers(conts, &cv, &n, &store);
		if (rc < 0) {
			free(store);
			return bad("serve: --containers wants POD:ID[:sandbox|:container][:layers=N],...");
		}
		for (unsigned i = 0; i < n_ccmd; i++) {
			size_t idlen = (size_t)(strchr(ccmd[i], '=') - ccmd[i]);
			unsigned k = 0;
			while (k < n && (strlen(cv[k].id) != idlen || strncmp(cv[k].id, ccmd[i], idlen)))
				k++;
			if (k == n || strcmp(backend, "qemu")) {
				char m[200];
				snprintf(m, sizeof(m), "--container-cmd %.*s: %s", (int)(idlen > 64 ? 64 : idlen),
					 ccmd[i], k == n ? "no such container in --containers"
							 : "only a qemu backend runs real processes");
				free(cv);
				free(store);
				return bad(m);
			}
			cv[k].cmd = ccmd[i] + idlen + 1;
		}
		for (unsigned i = 0; i < n_croot; i++) {
			char m[400];
			rc = apply_rootfs(croot[i], cv, n, backend, &lstore[i], m, sizeof(m));
			if (rc) {
				for (unsigned k = 0; k <= i; k++)
					free(lstore[k]);
				free_layer_paths(cv, n);
				free(cv);
				free(store);
				return bad(m);
			}
		}
		cfg.containers = cv;
		cfg.n_containers = n;
	}
	int rc = run_shim(&cfg);
	for (unsigned k = 0; k < n_croot; k++)
		free(lstore[k]);
	free_layer_paths(cv, cfg.n_containers);
	free(cv);
	free(store);
	return rc;
}

int main(int argc, char **argv)
{
	int frc = lm_fault_init_from_env();
	if (frc < 0) {
		fprintf(stderr, "lmshim: LM_FAULTS: %s\n", strerror(-frc));
		return 2;
	}
	if (argc >= 2 && !strcmp(argv[1], "serve"))
		return cmd_serve(argc - 1, argv + 1);
	if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
		fputs(usage, stdout);
		return 0;
	}
	struct cflags f = {0};
	int rc = parse_cflags(argc, argv, &f);
	if (rc)
		return rc < 0 ? 0 : rc;
	if (f.debug)
		lm_log_set_level(LM_LOG_DEBUG);
	if (f.action && !strcmp(f.action, "serve"))
		return bad("'serve' comes first: lmshim serve --socket PATH ...");
	if (f.action && strcmp(f.action, "start") && strcmp(f.action, "delete")) {
		char m[160];
		snprintf(m, sizeof(m), "unknown action '%s' (start, delete, serve)", f.action);
		return bad(m);
	}
	if (!f.ns || !*f.ns)
		return bad("-namespace is required");
	if (!f.id || !*f.id)
		return bad("-id is required");
	if (f.action && !strcmp(f.action, "start"))
		return cmd_start(argc, argv, &f);
	if (f.action && !strcmp(f.action, "delete"))
		return cmd_delete(&f);
	return cmd_daemon(&f);
}
