/*
 * make_stream_seeds.c: writes the seed inputs of fuzz_stream (and, with
 * --bound, fuzz_stream_bound) from real migrations: a source engine and a
 * destination engine over a relay that records what the source sent, so
 * the seeds are our own stream byte for byte, in the current version.
 *
 *   make_stream_seeds DIR [--bound]
 *
 * The guest is the harness's: a 1 MiB sim VM, SessionId 7 (and, with
 * --bound, the harness's binding, 32 bytes of 0xb1). Four pages hold data
 * (random, text, a repeated word, a counter) and the rest is never
 * written, so a whole stream stays far below the harness's 100000 bytes.
 * Seeds: plain (ZERO runs and RAW pages), checksummed, checksummed with
 * LZ4 pages, the hello alone, a stream of another session, and one cut in
 * the middle of a page batch.
 *
 * DESIGN: the two engines run their own threads; a relay thread here
 * forwards both ways between two socketpairs with poll() and keeps the
 * source's bytes; everything is joined and closed before the next case.
 */
#include "hcs/backend.h"
#include "hcs/xfer/xfer.h"
#include "hcs/xfer/xfer_wire.h"
#include "util/log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct relay {
	int src, dst;        /* our ends toward the source and the destination */
	uint8_t *got;        /* what the source sent */
	size_t len, cap;
};

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	bool open[2] = { true, true };
	uint8_t buf[65536];
	while (open[0] || open[1]) {
		struct pollfd p[2] = { { open[0] ? r->src : -1, POLLIN, 0 },
				       { open[1] ? r->dst : -1, POLLIN, 0 } };
		if (poll(p, 2, 10000) <= 0)
			break;
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(p[i].fd, buf, sizeof(buf));
			if (n <= 0) {
				open[i] = false;
				shutdown(i == 0 ? r->dst : r->src, SHUT_WR);
				continue;
			}
			if (i == 0) {
				if (r->len + (size_t)n > r->cap) {
					r->cap = (r->len + (size_t)n) * 2;
					r->got = realloc(r->got, r->cap);
					if (!r->got)
						abort();
				}
				memcpy(r->got + r->len, buf, (size_t)n);
				r->len += (size_t)n;
			}
			int to = i == 0 ? r->dst : r->src;
			for (ssize_t off = 0; off < n;) {
				ssize_t w = write(to, buf + off, (size_t)(n - off));
				if (w <= 0)
					break;
				off += w;
			}
		}
	}
	return NULL;
}

static lm_vm_t *make_vm(bool incoming)
{
	lm_vm_config_t c;
	memset(&c, 0, sizeof(c));
	strcpy(c.backend, "sim");
	c.memory_bytes = 1u << 20;
	c.vcpus = 1;
	c.incoming = incoming;
	c.workload.threads = 1;
	lm_vm_t *vm = NULL;
	if (lm_hcs_sim_ops.create(&vm, &c) < 0)
		return NULL;
	if (incoming)
		return vm;
	const lm_mem_region_t *reg;
	if (lm_hcs_sim_ops.regions(vm, &reg) < 1)
		return NULL;
	uint8_t *m = reg[0].host;
	uint64_t s = 0x9e3779b97f4a7c15ull;
	for (int i = 0; i < 4096; i++) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		m[3 * 4096 + i] = (uint8_t)s;                      /* random */
	}
	snprintf((char *)m + 17 * 4096, 4096, "lmshim fuzz seed: a page of text\n");
	for (int i = 0; i < 4096; i++)
		m[40 * 4096 + i] = "lmshim"[i % 6];               /* compressible */
	for (int i = 0; i < 4096 / 8; i++)
		((uint64_t *)(m + 255 * 4096))[i] = (uint64_t)i;  /* a counter */
	return vm;
}

/* One migration; the source's bytes in *out (malloc'd). */
static int capture(bool checksum, bool lz4, bool bound, uint32_t session, uint8_t **out, size_t *len)
{
	lm_vm_t *src = make_vm(false), *dst = make_vm(true);
	int a[2], b[2];
	if (!src || !dst || socketpair(AF_UNIX, SOCK_STREAM, 0, a) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, b) < 0)
		return -1;
	if (lm_hcs_sim_ops.start(src) < 0)
		return -1;
	lm__xfer_opts_t o;
	lm__xfer_opts_default(&o);
	o.session_id = session;
	o.checksum = checksum;
	o.compress_workers = lz4 ? 1 : 0;
	o.bound = bound;
	memset(o.binding, 0xb1, sizeof o.binding);
	lm__xfer_opts_t od = o;
	od.session_id = 7;
	struct relay r = { a[1], b[0], NULL, 0, 0 };
	pthread_t t;
	pthread_create(&t, NULL, relay_main, &r);
	lm__xfer_t *xd = NULL, *xs = NULL;
	int rc = lm__xfer_create(&xd, LM_XFER_DEST, &lm_hcs_sim_ops, dst, b[1], &od, NULL, NULL);
	if (rc == 0)
		rc = lm__xfer_create(&xs, LM_XFER_SOURCE, &lm_hcs_sim_ops, src, a[0], &o, NULL, NULL);
	if (rc == 0) {
		lm__xfer_go(xd);
		lm__xfer_go(xs);
		int rs = lm__xfer_join(xs), rd = lm__xfer_join(xd);
		if (session == 7 && (rs < 0 || rd < 0)) {
			fprintf(stderr, "make_stream_seeds: migration failed (source %d, destination %d)\n",
				rs, rd);
			rc = -1;
		}
	}
	lm__xfer_destroy(xs); /* closes a[0], b[1]: the relay sees EOF */
	lm__xfer_destroy(xd);
	pthread_join(t, NULL);
	close(a[1]);
	close(b[0]);
	lm_hcs_sim_ops.destroy(src);
	lm_hcs_sim_ops.destroy(dst);
	*out = r.got;
	*len = r.len;
	return rc;
}

static int save(const char *dir, const char *name, const uint8_t *p, size_t n)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		fprintf(stderr, "make_stream_seeds: %s: %s\n", path, strerror(errno));
		return -1;
	}
	printf("%s: %zu bytes\n", path, n);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || (argc > 2 && strcmp(argv[2], "--bound"))) {
		fprintf(stderr, "usage: %s DIR [--bound]\n"
			"writes fuzz_stream's seeds (fuzz_stream_bound's with --bound) into DIR\n",
			argv[0]);
		return argc < 2 ? 2 : !strcmp(argv[1], "--help") ? 0 : 2;
	}
	const char *dir = argv[1];
	bool bound = argc > 2;
	lm_log_set_level(LM_LOG_OFF);
	signal(SIGPIPE, SIG_IGN); /* the relay writes to a side that may have left */
	struct {
		const char *name;
		bool checksum, lz4;
		uint32_t session;
	} cases[] = {
		{ "full_stream", false, false, 7 },
		{ "checksummed", true, false, 7 },
		{ "lz4_page", true, true, 7 },
		{ "bad_session", false, false, 8 },
	};
	uint8_t *plain = NULL;
	size_t plain_len = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t *p = NULL;
		size_t n = 0;
		if (capture(cases[i].checksum, cases[i].lz4, bound, cases[i].session, &p, &n) < 0 ||
		    n == 0 || n > 100000 || save(dir, cases[i].name, p, n) < 0)
			return 1;
		if (i == 0) {
			plain = p;
			plain_len = n;
		} else {
			free(p);
		}
	}
	/* the hello alone (80 bytes, one region, the compat string, the
	 * binding), and the plain stream cut inside its first page's data */
	lm_xf_hello_t h;
	if (plain_len < sizeof(h))
		return 1;
	memcpy(&h, plain, sizeof(h));
	size_t hello = sizeof(h) + h.nregions * sizeof(lm_xf_region_t) + h.compat_len +
		       (bound ? LM_XF_BINDING_LEN : 0);
	if (hello + sizeof(lm_xf_rec_t) > plain_len)
		return 1;
	if (save(dir, "hello_only", plain, hello) < 0 ||
	    save(dir, "truncated", plain, plain_len / 2) < 0)
		return 1;
	free(plain);
	return 0;
}
