/*
 * ctl_containerd.c: after a migration, containerd on both hosts learns
 * where the containers are, when `lmctl migrate` is told their addresses
 * (--src-containerd, --dst-containerd). containerd 1.6's API has no call
 * to adopt a running task, so its own client (ctr) does what containerd
 * understands:
 *
 *   destination: for each migrated container (the pod's sandbox first),
 *     `ctr containers create` of the source's image under the new ID, with
 *     the migration's annotation (io.microsoft.migration.source-container-
 *     id) and the pod's (io.kubernetes.cri.sandbox-id: the destination
 *     shim's group, so containerd's `lmshim start` names the shim that
 *     runs the guest), then `ctr tasks start -d --null-io`: containerd's
 *     Create reaches that shim, which takes the task over (it runs
 *     already: shim/sandbox.h lm_sandbox_adopt) and answers the next Start
 *     with its PID. containerd lists it RUNNING.
 *   source: the shim ended containerd's tasks when the guest left (exit
 *     status 0, lm_sandbox_leave); `ctr tasks delete` and `ctr containers
 *     delete` remove them (the app containers first, then the sandbox:
 *     its shim exits with the last).
 *
 * This runs after FinalizeSandbox and Cleanup, never inside the handover:
 * a failure here leaves the guest running on the destination and says
 * which step failed (lmctl exits 4). Each ctr runs with a 60 s deadline.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include "cmd/ctl.h"
#include "cmd/shim_socket.h"

#define CTR_DEADLINE_MS 60000
#define ANNOT_SOURCE "io.microsoft.migration.source-container-id"
#define ANNOT_SANDBOX "io.kubernetes.cri.sandbox-id"
#define ANNOT_TYPE "io.kubernetes.cri.container-type"

/* Runs `ctr --address ADDR --namespace NS ARGS...` (argv NULL-terminated):
 * its exit status (0 ok), or -1; out gets what it printed (both streams,
 * at most cap - 1 bytes). */
static int run_ctr(const struct ctl_containerd_opts *o, const char *addr, char *out, size_t cap,
		   const char *const *args)
{
	const char *argv[24];
	int k = 0;
	argv[k++] = o->ctr;
	argv[k++] = "--address";
	argv[k++] = addr;
	argv[k++] = "--namespace";
	argv[k++] = o->ns;
	for (int i = 0; args[i] && k < 23; i++)
		argv[k++] = args[i];
	argv[k] = NULL;
	int p[2];
	out[0] = 0;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0)
			dup2(nul, 0);
		dup2(p[1], 1);
		dup2(p[1], 2);
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "cannot run %s: %s", argv[0], strerror(errno));
		_exit(127);
	}
	close(p[1]);
	size_t got = 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	bool timed_out = false;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		long left = CTR_DEADLINE_MS - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		int pr = left > 0 ? poll(&pf, 1, (int)left) : 0;
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0) {
			timed_out = true;
			kill(pid, SIGKILL);
			break;
		}
		char buf[512];
		ssize_t n = read(p[0], buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t room = cap - 1 - got;
		size_t c = (size_t)n < room ? (size_t)n : room;
		memcpy(out + got, buf, c);
		got += c;
		out[got] = 0;
	}
	close(p[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (timed_out) {
		snprintf(out, cap, "no answer within %d s", CTR_DEADLINE_MS / 1000);
		return -1;
	}
	while (got && (out[got - 1] == '\n' || out[got - 1] == ' '))
		out[--got] = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Is `path` (or unix://path) the socket containerd computes for shim id
 * in NS of ADDR (shim_socket.h, as lmshim start serves)? */
static bool shim_socket_is(const char *addr, const char *ns, const char *id, const char *path)
{
	char want[128];
	if (lm_containerd_shim_socket(addr, ns, id, want, sizeof want) < 0)
		return false;
	if (!strncmp(path, "unix://", 7))
		path += 7;
	return !strcmp(path, want);
}

/* The image the source's containerd made container id from (ctr
 * containers info): 0 and img, or -1 with why. */
static int source_image(const struct ctl_containerd_opts *o, const char *id, char *img, size_t cap,
			char *why, size_t whylen)
{
	static char out[1 << 16];
	const char *args[] = { "containers", "info", id, NULL };
	int rc = run_ctr(o, o->src_addr, out, sizeof out, args);
	if (rc) {
		snprintf(why, whylen, "ctr containers info %s: %.300s", id, out);
		return -1;
	}
	json_t *j = json_loads(out, 0, NULL);
	const char *im = json_string_value(json_object_get(j, "Image"));
	if (!im || !*im) {
		snprintf(why, whylen, "ctr containers info %s: no Image", id);
		json_decref(j);
		return -1;
	}
	snprintf(img, cap, "%s", im);
	json_decref(j);
	return 0;
}

int ctl_containerd_handover(const struct ctl_containerd_opts *o, const char *dst_shim,
			    const struct ctl_container *v, size_t n)
{
	char out[2048], why[600], img[512];
	int failed = 0;
	/* the destination shim's group: the new ID its socket is named after */
	const char *group = NULL;
	for (size_t i = 0; o->dst_addr && i < n && !group; i++)
		if (shim_socket_is(o->dst_addr, o->ns, v[i].new_id, dst_shim))
			group = v[i].new_id;
	if (o->dst_addr && !group) {
		fprintf(stderr, "lmctl: containerd on the destination: the destination shim (%s) is not where "
			"containerd looks for the shim of any migrated container: start it as containerd would "
			"(lmshim -namespace %s -address %s -id NEW-ID start, NEW-ID the pod's sandbox or the "
			"container), then migrate to the address it prints\n", dst_shim, o->ns, o->dst_addr);
		return 4;
	}
	/* destination: the sandbox first (its pod), then the others */
	for (int pass = 0; o->dst_addr && pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			const struct ctl_container *c = &v[i];
			if ((pass == 0) != (c->type_known && c->is_sandbox))
				continue;
			if (source_image(o, c->src_id, img, sizeof img, why, sizeof why)) {
				fprintf(stderr, "lmctl: containerd on the destination: %s (the source's containerd "
					"does not know %s: not told)\n", why, c->src_id);
				failed = 1;
				continue;
			}
			char a1[300], a2[300], a3[64];
			snprintf(a1, sizeof a1, "%s=%s", ANNOT_SOURCE, c->src_id);
			snprintf(a2, sizeof a2, "%s=%s", ANNOT_SANDBOX, group);
			snprintf(a3, sizeof a3, "%s=%s", ANNOT_TYPE, c->is_sandbox ? "sandbox" : "container");
			const char *create[16] = { "containers", "create", "--runtime", o->runtime,
						   "--annotation", a1, "--annotation", a2 };
			int k = 8;
			if (c->type_known) {
				create[k++] = "--annotation";
				create[k++] = a3;
			}
			create[k++] = img;
			create[k++] = c->new_id;
			create[k] = NULL;
			int rc = run_ctr(o, o->dst_addr, out, sizeof out, create);
			if (!rc) {
				const char *start[] = { "tasks", "start", "-d", "--null-io", c->new_id, NULL };
				rc = run_ctr(o, o->dst_addr, out, sizeof out, start);
				if (rc) {
					fprintf(stderr, "lmctl: containerd on the destination: ctr tasks start %s: %s\n",
						c->new_id, out);
					const char *undo[] = { "containers", "delete", c->new_id, NULL };
					char o2[512];
					(void)run_ctr(o, o->dst_addr, o2, sizeof o2, undo);
				}
			} else {
				fprintf(stderr, "lmctl: containerd on the destination: ctr containers create %s %s: %s\n",
					img, c->new_id, out);
			}
			if (rc)
				failed = 1;
			else
				fprintf(stderr, "lmctl: containerd on the destination runs %s (was %s on the source)\n",
					c->new_id, c->src_id);
		}
	}
	/* source: the app containers first, the sandbox last (its shim goes with it) */
	for (int pass = 0; o->src_addr && pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			const struct ctl_container *c = &v[i];
			if ((pass == 1) != (c->type_known && c->is_sandbox))
				continue;
			const char *del_task[] = { "tasks", "delete", c->src_id, NULL };
			int rc = run_ctr(o, o->src_addr, out, sizeof out, del_task);
			if (rc && !strstr(out, "not found")) {
				fprintf(stderr, "lmctl: containerd on the source: ctr tasks delete %s: %s\n", c->src_id,
					out);
				failed = 1;
				continue;
			}
			const char *del_ctr[] = { "containers", "delete", c->src_id, NULL };
			rc = run_ctr(o, o->src_addr, out, sizeof out, del_ctr);
			if (rc && !strstr(out, "not found")) {
				fprintf(stderr, "lmctl: containerd on the source: ctr containers delete %s: %s\n",
					c->src_id, out);
				failed = 1;
				continue;
			}
			fprintf(stderr, "lmctl: containerd on the source let go of %s\n", c->src_id);
		}
	}
	return failed ? 4 : 0;
}
