/*
 * container.c: containers and their processes inside the utility VM:
 * root file systems from the host's disks, namespaces, cgroups, the
 * processes' birth (clone) and death (the reaper), signals, freezing,
 * statistics, deletion. Everything here runs on the agent thread.
 *
 * The root file system, the LCOW way: each read-only layer is a
 * virtio-blk disk the host attached, found by its serial in
 * /sys/block/<dev>/serial (stable across hosts, unlike vdX names) and
 * mounted read-only under LM_AGENT_RUN_DIR/<id>/l<i>; the writable scratch
 * (a tmpfs, or a disk) holds overlayfs's upper and work directories; the
 * overlay of them all is LM_AGENT_RUN_DIR/<id>/rootfs.
 *
 * Birth. The init is cloned (a raw clone(2), fork-like, no new stack)
 * into new mount, PID, UTS and IPC namespaces and put into the
 * container's cgroup (LM_AGENT_CGROUP/<id>) by the agent before it may
 * run anything. In the child (which shares nothing with the agent's other
 * threads, so it uses only system calls and stack buffers, never malloc)
 * it makes its mounts private, mounts /proc, a small /dev (tmpfs with
 * the usual nodes, its own devpts), /dev/shm and /sys, pivot_roots into
 * the rootfs, sets the hostname, changes to the cwd and looks the program
 * up in the spec's PATH; then it reports READY on a pipe and waits for the
 * byte that Start writes, and execs. A failing step is reported on the
 * same pipe (stage, errno) and ends the child; the pipe is close-on-exec,
 * so a successful exec reads as end of file.
 * An exec'd process is cloned by a short-lived thread of the agent after
 * setns() into the init's PID namespace (which only affects the children
 * of the calling thread), so it is the agent's own child, whose exit status the agent itself reaps; the
 * child then joins the init's mount, UTS and IPC namespaces (it is single
 * threaded, which setns(CLONE_NEWNS) requires) and goes on as above.
 *
 * Death. The agent is PID 1 of the VM: it reaps every child (SIGCHLD
 * through a signalfd on its loop), keeps the status of the processes it
 * started until the host deletes them, and discards the rest (orphans
 * re-parented to it). When a container's init dies the kernel kills the
 * rest of its PID namespace.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>
#include <pthread.h>
#include <linux/close_range.h>

#include "guest/agent/agent.h"
#include "util/clock.h"
#include "util/log.h"

#define MOD "agent"
#define REPORT_TIMEOUT_MS 10000
#define DISK_WAIT_MS 5000      /* a hot-plugged disk under TCG: about a second */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- small file helpers ----------------------------------------------- */

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, s, strlen(s));
	int rc = n < 0 ? -errno : 0;
	close(fd);
	return rc;
}

/* Reads a small file into buf (NUL-terminated); bytes read or -errno. */
static ssize_t read_str(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t got = 0;
	while (got + 1 < n) {
		ssize_t r = read(fd, buf + got, n - 1 - got);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int rc = -errno;
			close(fd);
			return rc;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	buf[got] = 0;
	close(fd);
	return (ssize_t)got;
}

static uint64_t read_u64(const char *dir, const char *file, bool *ok)
{
	char p[256], b[64];
	snprintf(p, sizeof p, "%s/%s", dir, file);
	if (read_str(p, b, sizeof b) <= 0) {
		*ok = false;
		return 0;
	}
	if (!strncmp(b, "max", 3))
		return 0;
	return strtoull(b, NULL, 10);
}

/* "key value" lines: the value of key, or 0. */
static uint64_t read_keyed(const char *dir, const char *file, const char *key)
{
	char p[256], b[2048];
	snprintf(p, sizeof p, "%s/%s", dir, file);
	if (read_str(p, b, sizeof b) <= 0)
		return 0;
	size_t kl = strlen(key);
	for (char *l = b; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, key, kl) && l[kl] == ' ')
			return strtoull(l + kl + 1, NULL, 10);
	return 0;
}

static void ms_sleep(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000l};
	nanosleep(&ts, NULL);
}

/* ---- lookups ---------------------------------------------------------- */

struct container *lm_agent_find(const char *id)
{
	for (struct container *c = lm_agent.containers; c; c = c->next)
		if (!strcmp(c->id, id))
			return c;
	return NULL;
}

struct proc *lm_agent_find_proc(struct container *c, const char *exec_id)
{
	for (struct proc *p = c->procs; p; p = p->next)
		if (!strcmp(p->exec_id, exec_id))
			return p;
	return NULL;
}

/* /dev/<name> of the virtio-blk disk whose serial is `serial`. */
static int find_disk(const char *serial, char *dev, size_t n)
{
	uint64_t until = lm_now_ns() + (uint64_t)DISK_WAIT_MS * 1000000ull;
	do {
		DIR *d = opendir("/sys/block");
		if (!d)
			return -errno;
		struct dirent *e;
		while ((e = readdir(d))) {
			char p[300], s[64];
			if (e->d_name[0] == '.')
				continue;
			snprintf(p, sizeof p, "/sys/block/%s/serial", e->d_name);
			if (read_str(p, s, sizeof s) <= 0)
				continue;
			s[strcspn(s, "\n")] = 0;
			if (!strcmp(s, serial)) {
				snprintf(dev, n, "/dev/%s", e->d_name);
				closedir(d);
				return 0;
			}
		}
		closedir(d);
		ms_sleep(20);                   /* hot-plugged disks show up late */
	} while (lm_now_ns() < until);
	return -ENOENT;
}

/* ---- cgroups ---------------------------------------------------------- */

int lm_agent_cgroup_init(void)
{
	static const char *ctl[] = {"+cpu", "+memory", "+pids"};
	if (mkdir(LM_AGENT_CGROUP, 0755) < 0 && errno != EEXIST)
		return -errno;
	for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++) {
		int rc = write_str("/sys/fs/cgroup/cgroup.subtree_control", ctl[i]);
		if (rc == 0)
			rc = write_str(LM_AGENT_CGROUP "/cgroup.subtree_control", ctl[i]);
		if (rc < 0)
			lm_log_warn(MOD, "cgroup controller unavailable", "controller=%s errno=%d",
				    ctl[i] + 1, -rc);
	}
	return 0;
}

static int cgroup_join(struct container *c, pid_t pid)
{
	char p[160], b[24];
	snprintf(p, sizeof p, "%s/cgroup.procs", c->cgroup);
	snprintf(b, sizeof b, "%d", (int)pid);
	return write_str(p, b);
}

/* PIDs in the container's cgroup; count or -errno. */
static int cgroup_pids(struct container *c, pid_t *out, int max)
{
	char p[160];
	static char b[64 << 10];
	snprintf(p, sizeof p, "%s/cgroup.procs", c->cgroup);
	ssize_t n = read_str(p, b, sizeof b);
	if (n < 0)
		return (int)n;
	int k = 0;
	for (char *s = b; *s && k < max;) {
		char *e;
		long v = strtol(s, &e, 10);
		if (e == s)
			break;
		out[k++] = (pid_t)v;
		s = e;
		while (*s == '\n')
			s++;
	}
	return k;
}

/* ---- the child -------------------------------------------------------- */

enum stage {
	S_READY = 0, S_STDIO, S_MOUNT, S_PIVOT, S_HOSTNAME, S_SETNS, S_CWD, S_LOOKUP,
	S_IDS, S_EXEC, S_START,
};

static const char *stage_name[] = {
	[S_READY] = "ready", [S_STDIO] = "set up stdio", [S_MOUNT] = "mount",
	[S_PIVOT] = "pivot_root", [S_HOSTNAME] = "sethostname", [S_SETNS] = "setns",
	[S_CWD] = "chdir to cwd", [S_LOOKUP] = "look up the program", [S_IDS] = "set uid/gid",
	[S_EXEC] = "exec", [S_START] = "wait for start",
};

struct report {
	int32_t stage;
	int32_t err;
	char what[120];               /* the path or step concerned */
};

/* What the child needs, prepared by the parent (no allocation after clone). */
struct spawn {
	bool new_container;
	const char *rootfs;           /* new container: the overlay mount */
	const char *hostname;
	int ns_fd[3];                 /* exec: mnt, uts, ipc of the init */
	char *const *argv;
	char *const *envp;
	const char *cwd;
	const char *path;             /* PATH to search */
	uid_t uid;
	gid_t gid;
	bool tty;
	int stdio[3];                 /* become 0, 1, 2 */
	int report_fd, start_fd;
	unsigned short rows, cols;
};

static void child_report(const struct spawn *sp, int stage, int err, const char *what)
{
	struct report r = {stage, err, {0}};
	if (what) {
		size_t l = strlen(what);
		if (l >= sizeof r.what)
			l = sizeof r.what - 1;
		memcpy(r.what, what, l);
	}
	ssize_t w = write(sp->report_fd, &r, sizeof r);
	(void)w;
}

static __attribute__((noreturn)) void child_fail(const struct spawn *sp, int stage, const char *what)
{
	child_report(sp, stage, errno, what);
	_exit(127);
}

/* Path join into a stack buffer, no allocation. */
static void join(char *out, size_t n, const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la + 1 + lb >= n) {
		out[0] = 0;
		return;
	}
	memcpy(out, a, la);
	out[la] = '/';
	memcpy(out + la + 1, b, lb + 1);
}

static void child_mounts(const struct spawn *sp)
{
	struct {
		const char *src, *dst, *type;
		unsigned long flags;
		const char *data;
		mode_t mode;
	} m[] = {
		{"proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555},
		{"tmpfs", "dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k", 0755},
		{"devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0755},
		{"shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k", 01777},
		{"sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555},
	};
	static const struct {
		const char *name;
		unsigned maj, min;
	} nodes[] = {{"dev/null", 1, 3}, {"dev/zero", 1, 5}, {"dev/full", 1, 7},
		     {"dev/random", 1, 8}, {"dev/urandom", 1, 9}, {"dev/tty", 5, 0}};
	static const char *links[][2] = {{"pts/ptmx", "dev/ptmx"}, {"/proc/self/fd", "dev/fd"},
		{"/proc/self/fd/0", "dev/stdin"}, {"/proc/self/fd/1", "dev/stdout"},
		{"/proc/self/fd/2", "dev/stderr"}};

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		child_fail(sp, S_MOUNT, "make / private");
	if (mount(sp->rootfs, sp->rootfs, NULL, MS_BIND | MS_REC, NULL) < 0)
		child_fail(sp, S_MOUNT, sp->rootfs);
	if (chdir(sp->rootfs) < 0)
		child_fail(sp, S_MOUNT, sp->rootfs);
	for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
		if (mkdir(m[i].dst, m[i].mode) < 0 && errno != EEXIST)
			child_fail(sp, S_MOUNT, m[i].dst);
		if (mount(m[i].src, m[i].dst, m[i].type, m[i].flags, m[i].data) < 0) {
			if (!strcmp(m[i].type, "sysfs"))
				continue;           /* optional */
			child_fail(sp, S_MOUNT, m[i].dst);
		}
		if (!strcmp(m[i].dst, "dev")) {
			for (size_t k = 0; k < sizeof nodes / sizeof nodes[0]; k++)
				if (mknod(nodes[k].name, S_IFCHR | 0666, makedev(nodes[k].maj, nodes[k].min)) < 0)
					child_fail(sp, S_MOUNT, nodes[k].name);
		}
	}
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
		if (symlink(links[i][0], links[i][1]) < 0 && errno != EEXIST)
			child_fail(sp, S_MOUNT, links[i][1]);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		child_fail(sp, S_PIVOT, sp->rootfs);
	if (umount2(".", MNT_DETACH) < 0)
		child_fail(sp, S_PIVOT, "detach the old root");
	if (chdir("/") < 0)
		child_fail(sp, S_PIVOT, "/");
	if (sethostname(sp->hostname, strlen(sp->hostname)) < 0)
		child_fail(sp, S_HOSTNAME, sp->hostname);
}

/* Finds argv[0] in PATH (or as given, with a '/'); fills `out`. */
static void child_lookup(const struct spawn *sp, char *out, size_t n)
{
	const char *prog = sp->argv[0];
	struct stat st;
	if (strchr(prog, '/')) {
		if (strlen(prog) >= n) {
			errno = ENAMETOOLONG;
			child_fail(sp, S_LOOKUP, prog);
		}
		memcpy(out, prog, strlen(prog) + 1);
		if (stat(out, &st) < 0)
			child_fail(sp, S_LOOKUP, prog);
		return;
	}
	for (const char *d = sp->path; *d;) {
		const char *e = strchr(d, ':');
		size_t dl = e ? (size_t)(e - d) : strlen(d);
		char dir[PATH_MAX];
		if (dl == 0) {
			dir[0] = '.';
			dl = 1;
		} else if (dl < sizeof dir) {
			memcpy(dir, d, dl);
		} else {
			dl = 0;
		}
		if (dl) {
			dir[dl] = 0;
			join(out, n, dir, prog);
			if (out[0] && stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
				return;
		}
		if (!e)
			break;
		d = e + 1;
	}
	errno = ENOENT;
	child_fail(sp, S_LOOKUP, prog);
}

static __attribute__((noreturn)) void child_main(const struct spawn *sp)
{
	sigset_t all;
	struct sigaction dfl;
	char prog[PATH_MAX];

	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP)
			sigaction(s, &dfl, NULL);      /* glibc's own signals say EINVAL */
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	if (setsid() < 0)
		child_fail(sp, S_STDIO, "setsid");
	for (int i = 0; i < 3; i++)
		if (dup2(sp->stdio[i], i) < 0)
			child_fail(sp, S_STDIO, "dup2");
	if (sp->tty) {
		if (ioctl(0, TIOCSCTTY, 0) < 0)
			child_fail(sp, S_STDIO, "TIOCSCTTY");
		if (sp->rows && sp->cols) {
			struct winsize ws = {.ws_row = sp->rows, .ws_col = sp->cols};
			ioctl(0, TIOCSWINSZ, &ws);
		}
	}
	/* everything else the agent holds must not reach the program */
	if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) < 0)
		child_fail(sp, S_STDIO, "close_range");
	umask(0);
	if (sp->new_container) {
		child_mounts(sp);
	} else {
		static const int nst[3] = {CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC};
		for (int i = 0; i < 3; i++)
			if (setns(sp->ns_fd[i], nst[i]) < 0)
				child_fail(sp, S_SETNS, i == 0 ? "mnt" : i == 1 ? "uts" : "ipc");
	}
	umask(022);
	if (chdir(sp->cwd) < 0)
		child_fail(sp, S_CWD, sp->cwd);
	child_lookup(sp, prog, sizeof prog);
	child_report(sp, S_READY, 0, NULL);
	char go;
	ssize_t r;
	do
		r = read(sp->start_fd, &go, 1);
	while (r < 0 && errno == EINTR);
	if (r != 1)
		_exit(127);                         /* deleted before Start */
	if (setgroups(0, NULL) < 0 || setgid(sp->gid) < 0 || setuid(sp->uid) < 0)
		child_fail(sp, S_IDS, "setgroups/setgid/setuid");
	execve(prog, sp->argv, sp->envp);
	child_fail(sp, S_EXEC, prog);
}

/* ---- the parent's side of a birth ------------------------------------- */

/* Reads one report within the timeout: 1 and *r, 0 at end of file, -errno. */
static int read_report(int fd, struct report *r)
{
	struct pollfd p = {fd, POLLIN, 0};
	int n;
	do
		n = poll(&p, 1, REPORT_TIMEOUT_MS);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return -ETIMEDOUT;
	if (n < 0)
		return -errno;
	ssize_t got;
	do
		got = read(fd, r, sizeof *r);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		return -errno;
	if (got == 0)
		return 0;
	if (got != sizeof *r)
		return -EPROTO;
	r->what[sizeof r->what - 1] = 0;
	return 1;
}

static void fail_report(lm_rpc_call_t *call, const char *who, const struct report *r, int rc)
{
	if (rc == 1) {
		int code = r->stage == S_LOOKUP || r->stage == S_CWD || r->stage == S_EXEC
				   ? LM_RPC_FAILED_PRECONDITION : LM_RPC_INTERNAL;
		const char *st = r->stage >= 0 && r->stage <= S_START ? stage_name[r->stage] : "?";
		lm_rpc_call_fail(call, code, "%s: %s %s: %s%s", who, st, r->what, strerror(r->err),
				 r->stage == S_LOOKUP && r->err == ENOENT ? " (not in the rootfs or its $PATH)" : "");
	} else if (rc == 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: the process ended during setup", who);
	} else {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: no report from the process: %s", who,
				 strerror(-rc));
	}
}

/* argv/envp arrays of a spec, pointing into the decoded request (which
 * outlives the clone: the child copies the address space). */
struct argvec {
	char **argv, **envp;
	const char *path;
};

static int argvec_make(struct argvec *a, const Lmshim__Agent__V1__Process *p)
{
	a->argv = calloc(p->n_args + 1, sizeof(char *));
	a->envp = calloc(p->n_env + 1, sizeof(char *));
	if (!a->argv || !a->envp)
		return -ENOMEM;
	for (size_t i = 0; i < p->n_args; i++)
		a->argv[i] = p->args[i];
	a->path = DEFAULT_PATH;
	for (size_t i = 0; i < p->n_env; i++) {
		a->envp[i] = p->env[i];
		if (!strncmp(p->env[i], "PATH=", 5))
			a->path = p->env[i] + 5;
	}
	return 0;
}

static void argvec_free(struct argvec *a)
{
	free(a->argv);
	free(a->envp);
}

/* The process's stdio in the parent: the child's ends in sp->stdio, ours
 * handed to the proc's I/O. */
struct stdio_fds {
	int child[3];                 /* to close after clone */
	int out, err, in, pty;        /* ours */
};

static void stdio_close_child(struct stdio_fds *s)
{
	for (int i = 0; i < 3; i++) {
		bool dup = false;
		for (int k = 0; k < i; k++)
			dup |= s->child[k] == s->child[i];
		if (s->child[i] >= 0 && !dup)
			close(s->child[i]);
		s->child[i] = -1;
	}
}

static int stdio_make(struct stdio_fds *s, const Lmshim__Agent__V1__Process *p)
{
	for (int i = 0; i < 3; i++)
		s->child[i] = -1;
	s->out = s->err = s->in = s->pty = -1;
	if (p->terminal) {
		int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		char name[64];
		if (m < 0)
			return -errno;
		if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof name) != 0) {
			int rc = -errno;
			close(m);
			return rc;
		}
		int sl = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (sl < 0) {
			int rc = -errno;
			close(m);
			return rc;
		}
		if (p->console_size && p->console_size->width && p->console_size->height) {
			struct winsize ws = {.ws_row = (unsigned short)p->console_size->height,
					     .ws_col = (unsigned short)p->console_size->width};
			ioctl(m, TIOCSWINSZ, &ws);
		}
		s->child[0] = s->child[1] = s->child[2] = sl;
		s->pty = m;
		s->out = m;
		s->in = fcntl(m, F_DUPFD_CLOEXEC, 3);
		return s->in < 0 ? -errno : 0;
	}
	int o[2], e[2], i[2];
	if (pipe2(o, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(e, O_CLOEXEC) < 0) {
		close(o[0]);
		close(o[1]);
		return -errno;
	}
	s->out = o[0];
	s->child[1] = o[1];
	s->err = e[0];
	s->child[2] = e[1];
	if (p->open_stdin) {
		if (pipe2(i, O_CLOEXEC) < 0)
			return -errno;
		s->child[0] = i[0];
		s->in = i[1];
	} else {
		s->child[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (s->child[0] < 0)
			return -errno;
	}
	return 0;
}

static void stdio_close_ours(struct stdio_fds *s)
{
	if (s->out >= 0)
		close(s->out);
	if (s->err >= 0)
		close(s->err);
	if (s->in >= 0)
		close(s->in);
	s->out = s->err = s->in = s->pty = -1;
}

static struct proc *proc_new(struct container *c, const char *exec_id)
{
	struct proc *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->c = c;
	snprintf(p->exec_id, sizeof p->exec_id, "%s", exec_id);
	p->start_fd = p->report_fd = p->pty = p->in_fd = -1;
	p->out[0].fd = p->out[1].fd = -1;
	return p;
}

static void proc_free(struct proc *p)
{
	lm_agent_proc_io_free(p);
	if (p->start_fd >= 0)
		close(p->start_fd);
	if (p->report_fd >= 0)
		close(p->report_fd);
	free(p);
}

static void proc_link(struct container *c, struct proc *p)
{
	struct proc **pp = &c->procs;
	while (*pp)
		pp = &(*pp)->next;
	*pp = p;
}

static void proc_unlink(struct container *c, struct proc *p)
{
	for (struct proc **pp = &c->procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			return;
		}
}

/* Kills and reaps a child that failed before it was ever visible. */
static void reap_now(pid_t pid)
{
	kill(pid, SIGKILL);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
}

/* An exec'd process is cloned from a short-lived thread that first joins
 * the container's PID namespace for its children: setns(CLONE_NEWPID)
 * changes only the calling thread's namespace for children, and 6.1
 * refuses to set it back (EINVAL), so the agent thread itself never
 * does it. The child is a copy of this thread; when the thread ends its
 * children pass to the agent's other threads, and the agent thread reaps
 * them like any other child (waitpid sees the whole thread group's). */
struct exec_clone {
	pthread_t thread;
	const struct spawn *sp;
	int pidns;                    /* the init's /proc/PID/ns/pid */
	pid_t pid;                    /* out: the child, or -1 */
	int err;                      /* out: errno of the failed step */
	bool setns_failed;
};

static void *exec_clone_main(void *arg)
{
	struct exec_clone *ec = arg;
	ec->pid = -1;
	if (setns(ec->pidns, CLONE_NEWPID) < 0) {
		ec->err = errno;
		ec->setns_failed = true;
		return NULL;
	}
	pid_t pid = (pid_t)syscall(SYS_clone, SIGCHLD, NULL, NULL, NULL, NULL);
	if (pid == 0)
		child_main(ec->sp);
	ec->err = errno;
	ec->pid = pid;
	return NULL;
}

/* Clones and prepares a process: the stdio, the report/start pipes, the
 * cgroup. On success the child waits (READY read) for its start byte;
 * p->pid, p->start_fd, p->report_fd are set and the I/O is set up. */
static int spawn(lm_rpc_call_t *call, struct container *c, struct proc *p,
		 const Lmshim__Agent__V1__Process *spec, bool new_container, const int ns_fd[4])
{
	struct argvec av = {0};
	struct stdio_fds io;
	struct spawn sp;
	int rep[2] = {-1, -1}, st[2] = {-1, -1};
	const char *who = new_container ? "container init" : "exec";
	char rootfs[160];
	struct report r;

	if (argvec_make(&av, spec) < 0) {
		argvec_free(&av);
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return -ENOMEM;
	}
	int rc = stdio_make(&io, spec);
	if (rc < 0) {
		stdio_close_child(&io);
		stdio_close_ours(&io);
		argvec_free(&av);
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: stdio: %s", who, strerror(-rc));
		return rc;
	}
	if (pipe2(rep, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0) {
		rc = -errno;
		goto fail_fds;
	}
	snprintf(rootfs, sizeof rootfs, "%s/rootfs", c->dir);
	memset(&sp, 0, sizeof sp);
	sp.new_container = new_container;
	sp.rootfs = rootfs;
	sp.hostname = c->id;
	sp.argv = av.argv;
	sp.envp = av.envp;
	sp.cwd = spec->cwd && spec->cwd[0] ? spec->cwd : "/";
	sp.path = av.path;
	sp.uid = spec->uid;
	sp.gid = spec->gid;
	sp.tty = spec->terminal;
	for (int i = 0; i < 3; i++)
		sp.stdio[i] = io.child[i];
	sp.report_fd = rep[1];
	sp.start_fd = st[0];
	if (spec->console_size) {
		sp.rows = (unsigned short)spec->console_size->height;
		sp.cols = (unsigned short)spec->console_size->width;
	}
	pid_t pid;
	int clone_errno;
	if (new_container) {
		if (c->hostname)
			sp.hostname = c->hostname;
		pid = (pid_t)syscall(SYS_clone, SIGCHLD | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS |
				     CLONE_NEWIPC, NULL, NULL, NULL, NULL);
		clone_errno = errno;
		if (pid == 0)
			child_main(&sp);
	} else {
		for (int i = 0; i < 3; i++)
			sp.ns_fd[i] = ns_fd[i];
		struct exec_clone ec = {.sp = &sp, .pidns = ns_fd[3]};
		rc = pthread_create(&ec.thread, NULL, exec_clone_main, &ec);
		if (rc == 0)
			pthread_join(ec.thread, NULL);
		pid = rc ? -1 : ec.pid;
		clone_errno = rc ? rc : ec.err;
		if (ec.setns_failed) {
			rc = -clone_errno;
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "exec: join the PID namespace: %s",
					 strerror(clone_errno));
			goto fail_quiet;
		}
	}
	if (pid < 0) {
		rc = -clone_errno;
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: clone: %s", who, strerror(clone_errno));
		goto fail_quiet;
	}
	close(rep[1]);
	close(st[0]);
	rep[1] = st[0] = -1;
	stdio_close_child(&io);
	rc = cgroup_join(c, pid);
	if (rc < 0) {
		reap_now(pid);
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: join cgroup %s: %s", who, c->cgroup,
				 strerror(-rc));
		goto fail_quiet;
	}
	rc = read_report(rep[0], &r);
	if (rc != 1 || r.stage != S_READY) {
		reap_now(pid);
		fail_report(call, who, &r, rc);
		rc = -EIO;
		goto fail_quiet;
	}
	p->pid = pid;
	p->terminal = spec->terminal;
	p->report_fd = rep[0];
	p->start_fd = st[1];
	rc = lm_agent_proc_io_init(p, io.out, io.err, io.in, io.pty);
	argvec_free(&av);
	if (rc < 0) {
		reap_now(pid);
		p->pid = 0;
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s: output buffers: %s", who,
				 strerror(-rc));
		return rc;
	}
	return 0;

fail_fds:
	lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: pipes: %s", who, strerror(-rc));
fail_quiet:
	for (int i = 0; i < 2; i++) {
		if (rep[i] >= 0)
			close(rep[i]);
		if (st[i] >= 0)
			close(st[i]);
	}
	stdio_close_child(&io);
	stdio_close_ours(&io);
	argvec_free(&av);
	return rc;
}

/* Lets a prepared process exec; 0, or fails the call. */
static int release(lm_rpc_call_t *call, struct proc *p, const char *who)
{
	struct report r;
	char go = 1;
	ssize_t w = write(p->start_fd, &go, 1);
	close(p->start_fd);
	p->start_fd = -1;
	if (w != 1) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: the process is gone", who);
		close(p->report_fd);
		p->report_fd = -1;
		return -EIO;
	}
	int rc = read_report(p->report_fd, &r);
	close(p->report_fd);
	p->report_fd = -1;
	if (rc == 0) {
		p->state = P_RUNNING;
		return 0;
	}
	fail_report(call, who, &r, rc);
	p->state = P_RUNNING;                   /* it exits with 127: the reaper records it */
	return -EIO;
}

/* ---- containers ------------------------------------------------------- */

static void container_unmount(struct container *c)
{
	char p[200];
	if (c->rootfs_mounted) {
		snprintf(p, sizeof p, "%s/rootfs", c->dir);
		if (umount2(p, MNT_DETACH) < 0)
			lm_log_warn(MOD, "umount failed", "path=%s errno=%d", p, errno);
		rmdir(p);
		c->rootfs_mounted = false;
	}
	if (c->scratch_mounted) {
		snprintf(p, sizeof p, "%s/scratch", c->dir);
		if (umount2(p, MNT_DETACH) < 0)
			lm_log_warn(MOD, "umount failed", "path=%s errno=%d", p, errno);
		c->scratch_mounted = false;
	}
	snprintf(p, sizeof p, "%s/scratch", c->dir);
	rmdir(p);
	snprintf(p, sizeof p, "%s/rootfs", c->dir);
	rmdir(p);
	while (c->layers_mounted) {
		snprintf(p, sizeof p, "%s/l%u", c->dir, --c->layers_mounted);
		if (umount2(p, MNT_DETACH) < 0)
			lm_log_warn(MOD, "umount failed", "path=%s errno=%d", p, errno);
	}
	for (unsigned i = 0; i < c->n_layers; i++) {
		snprintf(p, sizeof p, "%s/l%u", c->dir, i);
		rmdir(p);
	}
	rmdir(c->dir);
}

static void container_free(struct container *c)
{
	while (c->procs) {
		struct proc *p = c->procs;
		c->procs = p->next;
		proc_free(p);
	}
	container_unmount(c);
	if (c->cgroup_made && rmdir(c->cgroup) < 0)
		lm_log_warn(MOD, "cgroup removal failed", "path=%s errno=%d", c->cgroup, errno);
	free(c->hostname);
	free(c);
}

/* Mounts layers, scratch and the overlay; fails the call on error. */
static int container_mount(lm_rpc_call_t *call, struct container *c,
			   const Lmshim__Agent__V1__CreateContainerRequest *r)
{
	char p[200], dev[64];
	if (mkdir(LM_AGENT_RUN_DIR, 0700) < 0 && errno != EEXIST)
		goto sys;
	if (mkdir(c->dir, 0700) < 0)
		goto sys;
	c->n_layers = (unsigned)r->n_layers;
	for (size_t i = 0; i < r->n_layers; i++) {
		const Lmshim__Agent__V1__Layer *l = r->layers[i];
		const char *t = l->fstype && l->fstype[0] ? l->fstype : "erofs";
		if (find_disk(l->serial, dev, sizeof dev) < 0) {
			lm_rpc_call_fail(call, LM_RPC_NOT_FOUND,
					 "CreateContainer: layers[%zu]: no disk with serial %s", i, l->serial);
			return -ENOENT;
		}
		snprintf(p, sizeof p, "%s/l%zu", c->dir, i);
		if (mkdir(p, 0755) < 0)
			goto sys;
		/* a hot-plugged disk: its serial shows before the block device
		 * takes I/O (ENXIO seen), so a mount may be tried again */
		int mrc;
		uint64_t until = lm_now_ns() + (uint64_t)DISK_WAIT_MS * 1000000ull;
		while ((mrc = mount(dev, p, t, MS_RDONLY, NULL)) < 0 &&
		       (errno == ENXIO || errno == ENODEV || errno == ENOENT) && lm_now_ns() < until)
			ms_sleep(20);
		if (mrc < 0) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
					 "CreateContainer: layers[%zu]: mount %s (serial %s) as %s: %s", i,
					 dev, l->serial, t, strerror(errno));
			return -errno;
		}
		c->layers_mounted++;
	}
	snprintf(p, sizeof p, "%s/scratch", c->dir);
	if (mkdir(p, 0755) < 0)
		goto sys;
	if (r->scratch && r->scratch->serial && r->scratch->serial[0]) {
		const char *t = r->scratch->fstype && r->scratch->fstype[0] ? r->scratch->fstype : "ext4";
		if (find_disk(r->scratch->serial, dev, sizeof dev) < 0) {
			lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "CreateContainer: scratch: no disk with serial %s",
					 r->scratch->serial);
			return -ENOENT;
		}
		if (mount(dev, p, t, 0, NULL) < 0) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
					 "CreateContainer: scratch: mount %s as %s: %s", dev, t, strerror(errno));
			return -errno;
		}
	} else {
		char opt[64];
		uint64_t sz = r->scratch && r->scratch->tmpfs_bytes ? r->scratch->tmpfs_bytes : 64u << 20;
		snprintf(opt, sizeof opt, "size=%llu,mode=0755", (unsigned long long)sz);
		if (mount("scratch", p, "tmpfs", 0, opt) < 0)
			goto sys;
	}
	c->scratch_mounted = true;
	char up[220], work[220];
	snprintf(up, sizeof up, "%s/scratch/upper", c->dir);
	snprintf(work, sizeof work, "%s/scratch/work", c->dir);
	if ((mkdir(up, 0755) < 0 && errno != EEXIST) || (mkdir(work, 0755) < 0 && errno != EEXIST))
		goto sys;
	/* lowerdir lists the top layer first */
	char *opts = malloc(200 * (r->n_layers + 3));
	if (!opts) {
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return -ENOMEM;
	}
	size_t o = (size_t)sprintf(opts, "lowerdir=");
	for (size_t i = r->n_layers; i-- > 0;)
		o += (size_t)sprintf(opts + o, "%s%s/l%zu", i + 1 == r->n_layers ? "" : ":", c->dir, i);
	sprintf(opts + o, ",upperdir=%s,workdir=%s", up, work);
	snprintf(p, sizeof p, "%s/rootfs", c->dir);
	int rc = mkdir(p, 0755) < 0 ? -errno : 0;
	if (rc == 0 && mount("overlay", p, "overlay", 0, opts) < 0)
		rc = -errno;
	free(opts);
	if (rc < 0) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "CreateContainer: overlay %s: %s", p,
				 strerror(-rc));
		return rc;
	}
	c->rootfs_mounted = true;
	return 0;
sys:
	rc = -errno;
	lm_rpc_call_fail(call, LM_RPC_INTERNAL, "CreateContainer: %s: %s", c->dir, strerror(errno));
	return rc;
}

static int container_cgroup(lm_rpc_call_t *call, struct container *c,
			    const Lmshim__Agent__V1__Resources *res)
{
	char p[200], v[32];
	if (mkdir(c->cgroup, 0755) < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "CreateContainer: cgroup %s: %s", c->cgroup,
				 strerror(errno));
		return -errno;
	}
	c->cgroup_made = true;
	if (res && res->memory_max) {
		snprintf(p, sizeof p, "%s/memory.max", c->cgroup);
		snprintf(v, sizeof v, "%llu", (unsigned long long)res->memory_max);
		int rc = write_str(p, v);
		if (rc < 0) {
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "CreateContainer: resources.memory_max %s: %s",
					 v, strerror(-rc));
			return rc;
		}
	}
	if (res && res->pids_max) {
		snprintf(p, sizeof p, "%s/pids.max", c->cgroup);
		snprintf(v, sizeof v, "%llu", (unsigned long long)res->pids_max);
		int rc = write_str(p, v);
		if (rc < 0) {
			lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "CreateContainer: resources.pids_max %s: %s",
					 v, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

void lm_agent_create(lm_rpc_call_t *call, const Lmshim__Agent__V1__CreateContainerRequest *r)
{
	if (lm_agent_find(r->container_id)) {
		lm_rpc_call_fail(call, LM_RPC_ALREADY_EXISTS, "CreateContainer: container %s already exists",
				 r->container_id);
		return;
	}
	struct container *c = calloc(1, sizeof(*c));
	struct proc *p = c ? proc_new(c, "") : NULL;
	if (!p) {
		free(c);
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	snprintf(c->id, sizeof c->id, "%s", r->container_id);
	snprintf(c->dir, sizeof c->dir, "%s/%s", LM_AGENT_RUN_DIR, c->id);
	snprintf(c->cgroup, sizeof c->cgroup, "%s/%s", LM_AGENT_CGROUP, c->id);
	if (r->hostname && r->hostname[0])
		c->hostname = strdup(r->hostname);
	uint64_t t0 = lm_now_ns();
	if (container_mount(call, c, r) < 0 || container_cgroup(call, c, r->resources) < 0 ||
	    spawn(call, c, p, r->process, true, NULL) < 0) {
		free(p);
		container_free(c);
		return;
	}
	c->init = p;
	proc_link(c, p);
	c->state = C_CREATED;
	c->next = lm_agent.containers;
	lm_agent.containers = c;
	atomic_fetch_add(&lm_agent.n_containers, 1);
	lm_log_info(MOD, "container created", "id=%s pid=%d layers=%zu ms=%llu", c->id, (int)p->pid,
		    r->n_layers, (unsigned long long)((lm_now_ns() - t0) / 1000000));
	Lmshim__Agent__V1__CreateContainerResponse resp = LMSHIM__AGENT__V1__CREATE_CONTAINER_RESPONSE__INIT;
	resp.pid = (uint32_t)p->pid;
	lm_agent_reply(call, &resp.base);
}

void lm_agent_start(lm_rpc_call_t *call, struct container *c)
{
	if (c->state != C_CREATED || c->init->state != P_CREATED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Start: container %s was already started",
				 c->id);
		return;
	}
	if (release(call, c->init, "Start") < 0) {
		c->state = C_RUNNING;               /* until the reaper sees the 127 */
		return;
	}
	c->state = C_RUNNING;
	Lmshim__Agent__V1__StartResponse resp = LMSHIM__AGENT__V1__START_RESPONSE__INIT;
	resp.pid = (uint32_t)c->init->pid;
	lm_agent_reply(call, &resp.base);
}

void lm_agent_exec(lm_rpc_call_t *call, struct container *c, const Lmshim__Agent__V1__ExecRequest *r)
{
	static const char *ns[4] = {"mnt", "uts", "ipc", "pid"};
	int fds[4] = {-1, -1, -1, -1};
	if (c->state != C_RUNNING || c->init->state != P_RUNNING) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Exec: container %s is not running", c->id);
		return;
	}
	if (c->paused) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Exec: container %s is paused", c->id);
		return;
	}
	if (lm_agent_find_proc(c, r->exec_id)) {
		lm_rpc_call_fail(call, LM_RPC_ALREADY_EXISTS, "Exec: container %s: exec %s already exists",
				 c->id, r->exec_id);
		return;
	}
	struct proc *p = proc_new(c, r->exec_id);
	if (!p) {
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	for (int i = 0; i < 4; i++) {
		char path[64];
		snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)c->init->pid, ns[i]);
		fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0) {
			lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Exec: container %s: %s: %s",
					 c->id, path, strerror(errno));
			goto out;
		}
	}
	if (spawn(call, c, p, r->process, false, fds) < 0)
		goto out;
	proc_link(c, p);
	p->state = P_CREATED;
	if (release(call, p, "Exec") == 0) {
		Lmshim__Agent__V1__StartResponse resp = LMSHIM__AGENT__V1__START_RESPONSE__INIT;
		resp.pid = (uint32_t)p->pid;
		lm_agent_reply(call, &resp.base);
	}
	p = NULL;
out:
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (p)
		proc_free(p);
}

/* ---- signals, listing, statistics, freezing --------------------------- */

void lm_agent_kill(lm_rpc_call_t *call, struct container *c, struct proc *p, uint32_t sig, bool all)
{
	Lmshim__Agent__V1__Empty e = LMSHIM__AGENT__V1__EMPTY__INIT;
	if (all) {
		char path[200];
		if (sig == SIGKILL) {
			snprintf(path, sizeof path, "%s/cgroup.kill", c->cgroup);
			int rc = write_str(path, "1");
			if (rc < 0) {
				lm_rpc_call_fail(call, LM_RPC_INTERNAL, "Kill: %s: %s", path, strerror(-rc));
				return;
			}
		} else {
			static pid_t pids[4096];
			int n = cgroup_pids(c, pids, 4096);
			for (int i = 0; i < n; i++)
				kill(pids[i], (int)sig);
		}
		lm_agent_reply(call, &e.base);
		return;
	}
	if (p->state == P_EXITED) {
		lm_rpc_call_fail(call, LM_RPC_NOT_FOUND, "Kill: container %s: process %s has already exited",
				 c->id, p->exec_id[0] ? p->exec_id : "(init)");
		return;
	}
	/* the pid cannot be reused: only this thread reaps it */
	if (kill(p->pid, (int)sig) < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "Kill: pid %d: %s", (int)p->pid, strerror(errno));
		return;
	}
	lm_agent_reply(call, &e.base);
}

void lm_agent_ps(lm_rpc_call_t *call, struct container *c)
{
	static pid_t pids[4096];
	int n = c->cgroup_made ? cgroup_pids(c, pids, 4096) : 0;
	if (n < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "ListProcesses: %s: %s", c->cgroup, strerror(-n));
		return;
	}
	Lmshim__Agent__V1__ListProcessesResponse resp = LMSHIM__AGENT__V1__LIST_PROCESSES_RESPONSE__INIT;
	Lmshim__Agent__V1__ProcessEntry *ents = calloc((size_t)n + 1, sizeof(*ents));
	Lmshim__Agent__V1__ProcessEntry **ptrs = calloc((size_t)n + 1, sizeof(*ptrs));
	if (!ents || !ptrs) {
		free(ents);
		free(ptrs);
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	for (int i = 0; i < n; i++) {
		lmshim__agent__v1__process_entry__init(&ents[i]);
		ents[i].pid = (uint32_t)pids[i];
		ents[i].exec_id = (char *)"";
		for (struct proc *p = c->procs; p; p = p->next)
			if (p->pid == pids[i] && p->state != P_EXITED) {
				ents[i].exec_id = p->exec_id;
				ents[i].is_init = p == c->init;
			}
		ptrs[i] = &ents[i];
	}
	resp.n_processes = (size_t)n;
	resp.processes = ptrs;
	lm_agent_reply(call, &resp.base);
	free(ents);
	free(ptrs);
}

void lm_agent_stats(lm_rpc_call_t *call, struct container *c)
{
	Lmshim__Agent__V1__StatsResponse r = LMSHIM__AGENT__V1__STATS_RESPONSE__INIT;
	bool ok = true;
	r.cpu_usage_usec = read_keyed(c->cgroup, "cpu.stat", "usage_usec");
	r.cpu_user_usec = read_keyed(c->cgroup, "cpu.stat", "user_usec");
	r.cpu_system_usec = read_keyed(c->cgroup, "cpu.stat", "system_usec");
	r.memory_current = read_u64(c->cgroup, "memory.current", &ok);
	r.memory_max = read_u64(c->cgroup, "memory.max", &ok);
	r.pids_current = read_u64(c->cgroup, "pids.current", &ok);
	r.pids_max = read_u64(c->cgroup, "pids.max", &ok);
	r.frozen = read_keyed(c->cgroup, "cgroup.events", "frozen") == 1;
	r.cpu_nr_periods = read_keyed(c->cgroup, "cpu.stat", "nr_periods");
	r.cpu_nr_throttled = read_keyed(c->cgroup, "cpu.stat", "nr_throttled");
	r.cpu_throttled_usec = read_keyed(c->cgroup, "cpu.stat", "throttled_usec");
	char p[256], b[64];
	snprintf(p, sizeof p, "%s/cpu.max", c->cgroup);
	if (read_str(p, b, sizeof b) > 0) {   /* "max 100000" or "QUOTA PERIOD" */
		char *sp = strchr(b, ' ');
		r.cpu_quota_us = strncmp(b, "max", 3) ? strtoull(b, NULL, 10) : 0;
		r.cpu_period_us = sp ? strtoull(sp + 1, NULL, 10) : 0;
	}
	r.cpu_weight = (uint32_t)read_u64(c->cgroup, "cpu.weight", &ok);
	if (!ok)
		lm_log_debug(MOD, "some cgroup statistics are missing", "id=%s", c->id);
	lm_agent_reply(call, &r.base);
}

void lm_agent_freeze(lm_rpc_call_t *call, struct container *c, bool freeze)
{
	const char *m = freeze ? "Pause" : "Resume";
	char p[200];
	if (c->state != C_RUNNING || c->init->state == P_EXITED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: container %s is not running", m, c->id);
		return;
	}
	snprintf(p, sizeof p, "%s/cgroup.freeze", c->cgroup);
	int rc = write_str(p, freeze ? "1" : "0");
	if (rc < 0) {
		lm_rpc_call_fail(call, LM_RPC_INTERNAL, "%s: %s: %s", m, p, strerror(-rc));
		return;
	}
	/* the freeze completes asynchronously: wait for cgroup.events */
	uint64_t until = lm_now_ns() + 2000000000ull;
	while (freeze && read_keyed(c->cgroup, "cgroup.events", "frozen") != 1) {
		if (lm_now_ns() > until) {
			write_str(p, "0");
			lm_rpc_call_fail(call, LM_RPC_DEADLINE_EXCEEDED, "Pause: container %s did not freeze in 2 s",
					 c->id);
			return;
		}
		ms_sleep(2);
	}
	c->paused = freeze;
	Lmshim__Agent__V1__Empty e = LMSHIM__AGENT__V1__EMPTY__INIT;
	lm_agent_reply(call, &e.base);
}

/* A cgroup limit as its file takes it: the number, or "max" for 0. */
static const char *limit_str(char *v, size_t n, uint64_t limit)
{
	if (limit)
		snprintf(v, n, "%llu", (unsigned long long)limit);
	else
		snprintf(v, n, "max");
	return v;
}

void lm_agent_oom_scan(void)
{
	for (struct container *c = lm_agent.containers; c; c = c->next) {
		if (!c->cgroup_made || !c->init)
			continue;
		uint64_t n = read_keyed(c->cgroup, "memory.events", "oom_kill");
		if (n <= c->oom_kills)
			continue;
		lm_log_warn(MOD, "out of memory: processes killed", "id=%s oom_kills=%llu", c->id,
			    (unsigned long long)n);
		c->oom_kills = n;
		lm_agent_proc_oom(c->init, n);
	}
}

/* One cgroup file of an Update: 0, or the call failed naming it. */
static int update_file(lm_rpc_call_t *call, struct container *c, const char *file, const char *v,
		       const char *field)
{
	char p[200];
	snprintf(p, sizeof p, "%s/%s", c->cgroup, file);
	int rc = write_str(p, v);
	if (rc < 0)
		lm_rpc_call_fail(call, rc == -EINVAL || rc == -EBUSY ? LM_RPC_INVALID_ARGUMENT : LM_RPC_INTERNAL,
				 "Update: container %s: %s %s (%s): %s", c->id, field, v, file, strerror(-rc));
	return rc;
}

void lm_agent_update(lm_rpc_call_t *call, struct container *c, const Lmshim__Agent__V1__UpdateRequest *r)
{
	char v[48];
	if (c->state == C_STOPPED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION, "Update: container %s has stopped", c->id);
		return;
	}
	if (r->set_memory && update_file(call, c, "memory.max", limit_str(v, sizeof v, r->memory_max),
					 "memory_max"))
		return;
	if (r->set_pids && update_file(call, c, "pids.max", limit_str(v, sizeof v, r->pids_max), "pids_max"))
		return;
	if (r->set_cpu_max) {
		unsigned long long period = r->cpu_period_us ? r->cpu_period_us : 100000;
		if (r->cpu_quota_us)
			snprintf(v, sizeof v, "%llu %llu", (unsigned long long)r->cpu_quota_us, period);
		else
			snprintf(v, sizeof v, "max %llu", period);
		if (update_file(call, c, "cpu.max", v, "cpu_quota_us/cpu_period_us"))
			return;
	}
	if (r->set_cpu_weight) {
		snprintf(v, sizeof v, "%u", r->cpu_weight);
		if (update_file(call, c, "cpu.weight", v, "cpu_weight"))
			return;
	}
	lm_log_info(MOD, "container updated", "id=%s memory=%d pids=%d cpu_max=%d cpu_weight=%d", c->id,
		    r->set_memory, r->set_pids, r->set_cpu_max, r->set_cpu_weight);
	Lmshim__Agent__V1__Empty e = LMSHIM__AGENT__V1__EMPTY__INIT;
	lm_agent_reply(call, &e.base);
}

/* ---- death and deletion ----------------------------------------------- */

static struct proc *proc_by_pid(pid_t pid)
{
	for (struct container *c = lm_agent.containers; c; c = c->next)
		for (struct proc *p = c->procs; p; p = p->next)
			if (p->pid == pid && p->state != P_EXITED)
				return p;
	return NULL;
}

static void record_exit(struct proc *p, int st)
{
	p->state = P_EXITED;
	p->status = WIFEXITED(st) ? (uint32_t)WEXITSTATUS(st) : 128u + (uint32_t)WTERMSIG(st);
	p->exited_at = lm_wall_ns();
	if (p == p->c->init)
		p->c->state = C_STOPPED;
	lm_log_info(MOD, "process exited", "id=%s exec=%s pid=%d status=%u", p->c->id,
		    p->exec_id[0] ? p->exec_id : "(init)", (int)p->pid, p->status);
	lm_agent_proc_exited(p);
}

void lm_agent_reap(void)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			return;
		struct proc *p = proc_by_pid(pid);
		if (p)
			record_exit(p, st);
	}
}

static void wait_reply(lm_rpc_call_t *call, struct proc *p)
{
	Lmshim__Agent__V1__WaitResponse r = LMSHIM__AGENT__V1__WAIT_RESPONSE__INIT;
	r.exit_status = p->status;
	r.exited_at_ns = p->exited_at;
	r.pid = (uint32_t)p->pid;
	lm_agent_reply(call, &r.base);
}

void lm_agent_delete_proc(lm_rpc_call_t *call, struct proc *p)
{
	struct container *c = p->c;
	if (p == c->init) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
				 "DeleteProcess: the init of container %s goes with DeleteContainer", c->id);
		return;
	}
	if (p->state != P_EXITED) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
				 "DeleteProcess: container %s: process %s is still running", c->id, p->exec_id);
		return;
	}
	wait_reply(call, p);
	lm_agent_proc_end_calls(p, LM_RPC_NOT_FOUND, "the process was deleted");
	proc_unlink(c, p);
	proc_free(p);
}

void lm_agent_delete_container(lm_rpc_call_t *call, struct container *c)
{
	struct proc *init = c->init;
	if (init->state == P_RUNNING) {
		lm_rpc_call_fail(call, LM_RPC_FAILED_PRECONDITION,
				 "DeleteContainer: container %s is running (kill it first)", c->id);
		return;
	}
	if (init->state == P_CREATED) {
		/* never started: it waits for its start byte; end it here */
		int st;
		kill(init->pid, SIGKILL);
		while (waitpid(init->pid, &st, 0) < 0 && errno == EINTR)
			;
		record_exit(init, st);
	}
	char p[200];
	snprintf(p, sizeof p, "%s/cgroup.kill", c->cgroup);
	if (c->cgroup_made)
		write_str(p, "1");
	pid_t pids[16];
	uint64_t until = lm_now_ns() + 2000000000ull;
	while (c->cgroup_made && cgroup_pids(c, pids, 16) > 0 && lm_now_ns() < until)
		ms_sleep(5);
	lm_agent_reap();                        /* exec'd processes killed just now */
	for (struct proc *q = c->procs; q; q = q->next)
		lm_agent_proc_end_calls(q, LM_RPC_NOT_FOUND, "the container was deleted");
	for (struct container **pp = &lm_agent.containers; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	atomic_fetch_sub(&lm_agent.n_containers, 1);   /* before the answer: Info agrees */
	wait_reply(call, init);
	lm_log_info(MOD, "container deleted", "id=%s", c->id);
	container_free(c);
}
