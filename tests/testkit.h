/*
 * testkit.h: test-and-benchmark kit of hcs (used by tests/test_hcs*.c and
 * bench/bench_transfer.c, never by the product):
 * sim VMs, socket pairs (unix and TCP loopback), an event log that
 * records the transfer engine's events, and a relay thread that limits
 * bandwidth or cuts the stream after N bytes (the "bad link").
 *
 * DESIGN: the relay owns its thread and the two inner socket ends; the
 * event log is written by engine threads and read by the test thread under
 * its mutex.
 */
#ifndef LM_HCS_TESTKIT_H
#define LM_HCS_TESTKIT_H

#include "hcs/backend.h"
#include "hcs/sim/sim.h"
#include "hcs/xfer/xfer.h"
#include "util/clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static inline lm_vm_t *ht_vm(uint64_t mib, double rate, enum lm_workload_pattern pat,
			     enum lm_mem_fill fill, bool incoming)
{
	lm_vm_config_t c;
	memset(&c, 0, sizeof(c));
	snprintf(c.id, sizeof(c.id), "t");
	snprintf(c.backend, sizeof(c.backend), "sim");
	c.memory_bytes = mib << 20;
	c.vcpus = 1;
	c.incoming = incoming;
	c.workload.threads = 1;
	c.workload.rate_mbps = rate;
	c.workload.pattern = pat;
	c.workload.hot_fraction = 0.05;
	c.workload.seed = 42;
	c.workload.fill = fill;
	lm_vm_t *vm = NULL;
	if (lm_hcs_sim_ops.create(&vm, &c) < 0)
		return NULL;
	return vm;
}

/* sv[0], sv[1]: connected stream sockets, unix or TCP over 127.0.0.1. */
static inline int ht_pair(int sv[2], bool tcp)
{
	if (!tcp)
		return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) < 0)
		return -1;
	sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(sv[0], (struct sockaddr *)&a, sizeof(a)) < 0)
		return -1;
	sv[1] = accept(l, NULL, NULL);
	close(l);
	return sv[1] < 0 ? -1 : 0;
}

struct ht_log {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int count[16];
	int fail_err;
	int fail_result;
	char fail_msg[160];
	uint64_t fail_ns;       /* when FAILED arrived */
	lm__xfer_event_t last_progress;
	unsigned progress;
	uint64_t last_progress_ns;
	uint64_t max_progress_gap_ns; /* between consecutive progress events */
	FILE *csv;              /* optional per-pass CSV (bench) */
	const char *csv_tag;
};

static inline void ht_log_init(struct ht_log *l)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
}

static inline void ht_log_destroy(struct ht_log *l)
{
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
}

static inline void ht_on_event(void *arg, const lm__xfer_event_t *e)
{
	struct ht_log *l = arg;
	pthread_mutex_lock(&l->mu);
	l->count[e->type]++;
	if (e->type == LM_XEV_FAILED) {
		l->fail_err = e->err;
		l->fail_result = e->result;
		l->fail_ns = lm_now_ns();
		snprintf(l->fail_msg, sizeof(l->fail_msg), "%s", e->msg);
	}
	if (e->type == LM_XEV_PROGRESS) {
		uint64_t now = lm_now_ns();
		if (l->last_progress_ns && now - l->last_progress_ns > l->max_progress_gap_ns)
			l->max_progress_gap_ns = now - l->last_progress_ns;
		l->last_progress_ns = now;
		l->progress++;
		l->last_progress = *e;
		if (l->csv)
			fprintf(l->csv, "%s,%.3f,%u,%llu,%llu,%.1f,%.1f,%u\n", l->csv_tag,
				(double)e->elapsed_ns / 1e6, e->pass,
				(unsigned long long)e->bytes_sent,
				(unsigned long long)e->pages_remaining, e->bandwidth_mbps,
				e->dirty_rate_mbps, e->throttle_pct);
	}
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

static inline bool ht_wait(struct ht_log *l, int type, int timeout_ms)
{
	struct timespec ts = lm_timespec_in(CLOCK_REALTIME, (int64_t)timeout_ms * 1000000);
	pthread_mutex_lock(&l->mu);
	while (l->count[type] == 0)
		if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) != 0)
			break;
	bool ok = l->count[type] > 0;
	pthread_mutex_unlock(&l->mu);
	return ok;
}

static inline int ht_count(struct ht_log *l, int type)
{
	pthread_mutex_lock(&l->mu);
	int n = l->count[type];
	pthread_mutex_unlock(&l->mu);
	return n;
}

/* The bad link: relays a<->b (the outer ends are handed to the engines).
 * Forward direction (source->destination) limited to `bps` bytes/s (0 =
 * unlimited) and cut (both directions shut) after `cut_after` bytes (0 =
 * never). */
struct ht_relay {
	int a, b;               /* inner ends */
	uint64_t bps, cut_after;
	pthread_t th;
	uint64_t forwarded;
	int frozen;             /* set (atomically) to stop forwarding, both ways,
				   with both connections open: a stalled path */
};

static inline void *ht_relay_main(void *arg)
{
	struct ht_relay *r = arg;
	static __thread char buf[65536];
	uint64_t t0 = 0; /* rate limit from the first forwarded byte on */
	for (;;) {
		if (__atomic_load_n(&r->frozen, __ATOMIC_ACQUIRE)) {
			struct pollfd x[2] = { { r->a, POLLRDHUP, 0 }, { r->b, POLLRDHUP, 0 } };
			if (poll(x, 2, 20) > 0 && ((x[0].revents | x[1].revents) & (POLLRDHUP | POLLHUP)))
				break;
			continue;
		}
		struct pollfd p[2] = { { r->a, POLLIN, 0 }, { r->b, POLLIN, 0 } };
		if (poll(p, 2, 100) < 0)
			break;
		if (p[1].revents) {
			ssize_t n = recv(r->b, buf, sizeof(buf), MSG_DONTWAIT);
			if (n <= 0 && !(n < 0 && errno == EAGAIN))
				break;
			if (n > 0 && send(r->a, buf, (size_t)n, MSG_NOSIGNAL) != n)
				break;
		}
		if (p[0].revents) {
			size_t want = sizeof(buf);
			if (r->bps)
				want = 16384;
			if (r->cut_after && r->cut_after - r->forwarded < want)
				want = (size_t)(r->cut_after - r->forwarded);
			ssize_t n = recv(r->a, buf, want, MSG_DONTWAIT);
			if (n <= 0 && !(n < 0 && errno == EAGAIN))
				break;
			if (n > 0) {
				if (!t0)
					t0 = lm_now_ns();
				if (send(r->b, buf, (size_t)n, MSG_NOSIGNAL) != n)
					break;
				r->forwarded += (uint64_t)n;
				if (r->cut_after && r->forwarded >= r->cut_after)
					break;
				if (r->bps) {
					uint64_t due = t0 + r->forwarded * 1000000000ull / r->bps;
					uint64_t now = lm_now_ns();
					if (due > now) {
						struct timespec ts = { 0, (long)(due - now) };
						if (due - now >= 1000000000ull)
							ts = (struct timespec){ 1, 0 };
						nanosleep(&ts, NULL);
					}
				}
			}
		}
	}
	shutdown(r->a, SHUT_RDWR);
	shutdown(r->b, SHUT_RDWR);
	return NULL;
}

/* Gives back src_fd/dst_fd (outer ends) for the engines. */
static inline int ht_relay_start(struct ht_relay *r, uint64_t bps, uint64_t cut_after,
				 int *src_fd, int *dst_fd)
{
	int s1[2], s2[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s1) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s2) < 0)
		return -errno;
	memset(r, 0, sizeof(*r));
	r->a = s1[1];
	r->b = s2[0];
	r->bps = bps;
	r->cut_after = cut_after;
	*src_fd = s1[0];
	*dst_fd = s2[1];
	return pthread_create(&r->th, NULL, ht_relay_main, r) == 0 ? 0 : -EAGAIN;
}

static inline void ht_relay_stop(struct ht_relay *r)
{
	shutdown(r->a, SHUT_RDWR);
	shutdown(r->b, SHUT_RDWR);
	pthread_join(r->th, NULL);
	close(r->a);
	close(r->b);
}

#endif
