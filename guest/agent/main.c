/*
 * main.c: lmshim-agent, the guest agent of lmshim's utility VM.
 *
 * The initramfs's /init (guest/image/init) mounts the kernel's file
 * systems, loads the modules and execs this program, so the agent is
 * PID 1. That is a choice: PID 1 reaps every orphan of the VM, and being
 * it means there is exactly one waiter for children, the agent itself, so
 * no exit status can be taken by anybody else (a subreaper child of a
 * shell init would share that job with its parent). The price is that an
 * agent crash panics the guest kernel; with panic=-1 and QEMU's
 * -no-reboot the VM then stops, which the host sees at once, instead of
 * a VM whose containers run on with nobody to answer for them.
 *
 * Start-up: find the virtio-serial port named LM_AGENT_PORT_NAME (waiting
 * for the driver to create it), make the cgroup parent, start the rpc
 * server (no listening socket: connections come from the relay) and the
 * relay, then run the agent loop on this thread (see agent.h for who owns
 * what). SIGCHLD is blocked in every thread and read from a signalfd.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "guest/agent/agent.h"
#include "guest/agent/relay.h"
#include "guest/agent/wire.h"
#include "util/clock.h"
#include "util/log.h"

#define MOD "agent"

struct agent lm_agent;

static void on_jobs(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	for (;;) {
		pthread_mutex_lock(&lm_agent.job_mu);
		struct job *j = lm_agent.jobs;
		lm_agent.jobs = lm_agent.jobs_tail = NULL;
		pthread_mutex_unlock(&lm_agent.job_mu);
		if (!j)
			return;
		while (j) {
			struct job *next = j->next;
			lm_agent_run_job(j);
			j = next;
		}
	}
}

static void on_sigchld(struct ev_loop *loop, ev_io *w, int revents)
{
	struct signalfd_siginfo si[16];
	(void)loop;
	(void)revents;
	while (read(w->fd, si, sizeof si) > 0)
		;
	lm_agent_reap();
}

/* /dev/<vportNpM> of the port named `name`; waits for it to appear. */
static int find_port(const char *name, char *dev, size_t n)
{
	uint64_t t0 = lm_now_ns();
	bool told = false;
	for (;;) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char p[300], b[128];
			if (e->d_name[0] == '.')
				continue;
			snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(p, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t r = read(fd, b, sizeof b - 1);
			close(fd);
			if (r <= 0)
				continue;
			b[r] = 0;
			b[strcspn(b, "\n")] = 0;
			if (!strcmp(b, name)) {
				snprintf(dev, n, "/dev/%s", e->d_name);
				closedir(d);
				return 0;
			}
		}
		if (d)
			closedir(d);
		if (!told && lm_now_ns() - t0 > 2000000000ull) {
			lm_log_warn(MOD, "waiting for the virtio-serial port", "name=%s", name);
			told = true;
		}
		struct timespec ts = {0, 10000000};
		nanosleep(&ts, NULL);
	}
}

static void read_boot_id(void)
{
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t r = fd >= 0 ? read(fd, lm_agent.boot_id, sizeof lm_agent.boot_id - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (r <= 0)
		snprintf(lm_agent.boot_id, sizeof lm_agent.boot_id, "unknown");
	else
		lm_agent.boot_id[strcspn(lm_agent.boot_id, "\n")] = 0;
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(lm_agent.release, sizeof lm_agent.release, "%s", u.release);
}

static void on_oom_scan(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	lm_agent_oom_scan();
}

static void usage(void)
{
	fprintf(stderr, "usage: lmshim-agent [--port NAME]\n"
			"  Runs as PID 1 of lmshim's utility VM and serves lmshim.agent.v1.Agent\n"
			"  on the virtio-serial port NAME (default %s).\n", LM_AGENT_PORT_NAME);
}

int main(int argc, char **argv)
{
	const char *port_name = LM_AGENT_PORT_NAME;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc) {
			port_name = argv[++i];
		} else {
			usage();
			return 2;
		}
	}
	/* before any thread: SIGCHLD only through the signalfd */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	umask(022);

	uint64_t t0 = lm_now_ns();
	read_boot_id();
	pthread_mutex_init(&lm_agent.job_mu, NULL);
	int rc = lm_agent_cgroup_init();
	if (rc < 0)
		lm_log_error(MOD, "cgroup setup failed", "errno=%d", -rc);

	lm_agent.loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!lm_agent.loop) {
		lm_log_error(MOD, "no event loop", NULL);
		return 1;
	}
	ev_async_init(&lm_agent.job_w, on_jobs);
	ev_async_start(lm_agent.loop, &lm_agent.job_w);
	lm_agent.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (lm_agent.sigfd < 0) {
		lm_log_error(MOD, "signalfd failed", "errno=%d", errno);
		return 1;
	}
	ev_io_init(&lm_agent.sig_w, on_sigchld, lm_agent.sigfd, EV_READ);
	ev_io_start(lm_agent.loop, &lm_agent.sig_w);
	ev_timer_init(&lm_agent.oom_w, on_oom_scan, LM_AGENT_OOM_SCAN_MS / 1000.,
		      LM_AGENT_OOM_SCAN_MS / 1000.);
	ev_timer_start(lm_agent.loop, &lm_agent.oom_w);

	struct lm_rpc_server_config cfg = {.max_conns = 8};
	if ((rc = lm_rpc_server_create(&lm_agent.srv, &cfg)) < 0 ||
	    (rc = lm_rpc_server_register(lm_agent.srv, &lm_agent_service)) < 0 ||
	    (rc = lm_rpc_server_start(lm_agent.srv)) < 0) {
		lm_log_error(MOD, "rpc server failed", "rc=%d", rc);
		return 1;
	}
	char dev[300];
	find_port(port_name, dev, sizeof dev);
	int port = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (port < 0) {
		lm_log_error(MOD, "cannot open the port", "dev=%s errno=%d", dev, errno);
		return 1;
	}
	lm_agent_relay_t *relay;
	if ((rc = lm_agent_relay_start(&relay, port, lm_agent.srv)) < 0) {
		lm_log_error(MOD, "relay failed", "rc=%d", rc);
		return 1;
	}
	lm_log_info(MOD, "ready", "version=%s port=%s boot_id=%s setup_ms=%llu", LM_AGENT_VERSION, dev,
		    lm_agent.boot_id, (unsigned long long)((lm_now_ns() - t0) / 1000000));
	ev_run(lm_agent.loop, 0);
	lm_agent_relay_stop(relay);
	lm_rpc_server_destroy(lm_agent.srv);
	return 0;
}
