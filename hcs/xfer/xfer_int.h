/*
 * xfer_int.h: the memory-transfer engine's private state, shared by its
 * three files: xfer.c (the handshake and the stream of pages, both sides),
 * vmm.c (the stream of a VMM that migrates its own guest, in place of the
 * pages) and handover.c (what follows the stream: who runs the guest).
 * Nothing outside hcs/xfer/ includes it.
 *
 * Thread contract: the engine thread owns everything in struct lm__xfer
 * but `go`, `cancel`, `destroy` (atomics, any thread), `pub` (under
 * `stmu`) and `ho` (under `ho.mu`, see handover.c), and `wakefd`, which
 * any thread writes to interrupt the engine's poll().
 */
#ifndef LM_HCS_XFER_XFER_INT_H
#define LM_HCS_XFER_XFER_INT_H

#include "hcs/xfer/xfer.h"
#include "hcs/xfer/xfer_wire.h"
#include "util/held.h"

#include <pthread.h>
#include <stdatomic.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#define CQ_MAX 256               /* pages per compression round */

/* The handover's state (handover.c). Guarded by `mu`; `cv` is signalled
 * at every change. The engine thread is the only one that reads or
 * writes the socket; other threads ask it to send by setting the want_*
 * flags and waking it. */
struct lm__xf_ho {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool active;                  /* the handover runs (after ACK) */
	enum lm__ho_state state;
	enum lm__ho_link link;
	bool peer_final;              /* the peer's final word arrived */
	bool sent_final;              /* our final word left */
	bool want_commit_req, want_grant, want_revoke, want_committing,
	     want_release, want_bye;
	bool bye_sent, bye_received;
	bool settled;                 /* both final words known: the link may close */
	uint8_t secret[LM_XF_SECRET_LEN];      /* ours: grant (src) / release (dst) */
	uint8_t peer_commit[32];      /* SHA-256 of the peer's secret (handshake) */
	uint8_t peer_secret[LM_XF_SECRET_LEN]; /* revealed by the peer */
	bool have_peer_secret;
	char why[160];                /* the last link event, for messages */
};

/* Compression worker pool: `n` threads plus the engine thread share a
 * round's pages through the atomic `next` index. The job (the engine's cq
 * arrays) is published under `mu` by bumping `gen`; each worker reports
 * its end under `mu` (busy--), which publishes its clen[] results to the
 * engine thread that waits for busy == 0. */
struct cpool {
	struct lm__xfer *x;
	pthread_t th[64];
	unsigned n;
	pthread_mutex_t mu;
	pthread_cond_t go_cv, done_cv;
	unsigned gen;                 /* mu */
	unsigned busy;                /* mu */
	bool stop;                    /* mu */
	atomic_uint next;
};

struct lm__xfer {
	enum lm__xfer_role role;
	const lm_backend_ops_t *ops;
	lm_vm_t *vm;
	int sock;
	int wakefd;
	lm__xfer_opts_t o;
	lm__xfer_event_fn fn;
	void *arg;
	pthread_t th;
	bool thread_started;
	bool joined;
	atomic_bool go;
	atomic_bool cancel;
	atomic_bool destroy;          /* close now: the VM is going away */
	atomic_bool finished;         /* the engine thread returned */

	bool vmm;                     /* the backend streams its VMM's own
					 migration (backend.h): vmm.c */
	bool vmm_started;             /* stream_open succeeded */
	int ring_own, ring_peer;      /* the rings' memfds during the handshake
					 (hcs/ring_link.h; -1: none) */
	bool ring_direct;             /* the link is the rings themselves (no
					 record layer): checksummed pages are
					 copied and summed in one pass */
	bool vmm_link;                /* both sides agreed: the VMMs speak on
					 the link themselves (vmm.c) */
	int io_rc;                    /* lm__xf_await_ack's I/O failure */
	const lm_mem_region_t *reg;   /* backend's region array */
	int nreg;
	uint64_t *bitmap[LM_MAX_REGIONS];
	size_t words[LM_MAX_REGIONS];
	bool use_mincore;             /* no swap: residency == not a hole */
	int spipe[2];                 /* source, plain unix link: guest pages
					 go out by reference through this
					 pipe (vmsplice, splice); -1 when not */
	lm_held_t cbuf;               /* source, plain TCP link: what is sent
					 is copied here first, then sent
					 CBUF_SEND at a time (link_copy_send;
					 .buf NULL on other links) */
	uint8_t *resid;               /* WINDOW_PAGES residency bytes */

	/* source batch under construction */
	lm_xf_page_t *descs;          /* also the receive buffer (dest) */
	uint8_t *hdrbuf;              /* rec header + descs + checksum */
	struct iovec *iov;
	unsigned ndesc, niov;
	size_t data_bytes;
	/* compression (source, ThrottleWorkerCount > 0): pages wait in the
	 * queue cq until a round compresses them on the pool + this thread */
	struct cpool *pool;
	uint64_t cq_pfn[CQ_MAX];
	uint8_t *cq_host[CQ_MAX];
	int clen[CQ_MAX];             /* LZ4 size per queued page (workers) */
	uint8_t *cout;                /* CQ_MAX slots of CSLOT bytes */
	unsigned cq_n;
	uint64_t comp_in, comp_out, comp_ns;   /* decayed totals */
	uint64_t link_bytes, link_ns;          /* time spent sending */
	uint64_t raw_pages_since_sample;

	bool at_boundary;             /* between records on our send side */
	bool peer_gone;
	bool peer_eof;                /* the peer closed cleanly (EOF) */
	bool stalled;                 /* the peer was silent for stall_ms */
	bool end_sent;                /* source: END left; the destination may be complete */
	bool deadline_hit;            /* the blackout bound expired */
	uint64_t deadline_ns;         /* lm_now_ns() bound of the current wait; 0 = none */
	uint64_t last_rx_ns;          /* the last byte from the peer */
	uint64_t last_tx_ns;          /* the last byte we sent (progress) */
	bool keepalives;              /* idle waits send KEEPALIVEs (after the handshake) */
	uint8_t ka[16];               /* a KEEPALIVE record being sent ... */
	unsigned ka_off, ka_len;      /* ... ka_len > 0 until all of it left (a
					 non-blocking send may take part of it) */
	bool paused_by_us;
	bool fresh;                   /* dest: pass 1, memory still all zero */
	uint64_t *suspect[LM_MAX_REGIONS]; /* dest: pages whose last copy failed
					 its sum in brownout (a bit per page, made
					 at the first such batch); the source must
					 send each again before the end */
	uint64_t nsuspect;            /* bits set in suspect */
	uint64_t *psums;              /* dest with checksums: a batch's page sums as
					 sent, then (from LM_XF_MAX_PAGE_SUMS) as
					 received */
	char remote_msg[128];
	unsigned remote_reason;

	/* progress */
	uint64_t t_go, last_progress, pass_t0, pass_bytes0;
	unsigned pass;
	double bw_mbps, dirty_mbps;
	double write_mbps;            /* guest page writes over the last pass
					 (0: the backend does not count them) */
	uint64_t written0;            /* guest pages_written at pass start */
	uint64_t pages_remaining;
	unsigned throttle;
	lm__xfer_stats_t st;          /* engine thread only */
	pthread_mutex_t stmu;
	lm__xfer_stats_t pub;         /* copy under stmu */
	int result;

	struct lm__xf_ho ho;          /* the handover (handover.c) */
};


/* ---- xfer.c helpers that handover.c uses (engine thread only) ---------- */

const char *lm__xf_side(const struct lm__xfer *x);
const char *lm__xf_peer(const struct lm__xfer *x);
void lm__xf_emit(struct lm__xfer *x, enum lm__xfer_event_type type, lm__xfer_event_t *ev);
int lm__xf_send_rec(struct lm__xfer *x, uint32_t type, uint32_t count, const void *payload, size_t len);
/* A keepalive now if the link has been quiet on our side for keepalive_ms
 * and we are between records. */
/* engine thread: the keepalive interval (at least 4 per stall bound) and
 * the poll tick of the engine's waits. */
unsigned lm__xf_keepalive_ms(const struct lm__xfer *x);
int lm__xf_tick_ms(const struct lm__xfer *x);
void lm__xf_maybe_keepalive(struct lm__xfer *x);
void lm__xf_wake(struct lm__xfer *x);
/* SHA-256 of a secret. */
void lm__xf_commitment(const uint8_t secret[LM_XF_SECRET_LEN], uint8_t out[32]);

/* The link (engine thread): every byte on x->sock goes through these,
 * so that a link with a record layer (x->o.io, hcs/link_io.h) is read and
 * written as a plain one is. Non-blocking; as sendmsg/readv/recv(PEEK):
 * bytes, 0 at end of stream (recv), or -1 with errno. */
ssize_t lm__xf_link_send(struct lm__xfer *x, const struct iovec *iov, int n);
ssize_t lm__xf_link_recv(struct lm__xfer *x, void *buf, size_t len, bool peek);
ssize_t lm__xf_link_readv(struct lm__xfer *x, const struct iovec *iov, int n);
/* poll(2) of p[0..nfds), p[sock_idx] being x->sock: bytes already on
 * this side (TLS records read ahead, which poll() cannot see) count as
 * POLLIN there, and then it does not wait. Bytes the record layer holds
 * go to the kernel meanwhile (the peer may be waiting for them). */
int lm__xf_link_poll(struct lm__xfer *x, struct pollfd *p, int nfds, int sock_idx, int timeout_ms);
/* Hands bytes the record layer holds to the kernel, without waiting: 0
 * when none is left, -EAGAIN while the socket is full, -errno. */
int lm__xf_link_flush(struct lm__xfer *x);
void lm__xf_link_shutdown_wr(struct lm__xfer *x);
/* I/O of xfer.c for vmm.c: as their static namesakes there. */
int lm__xf_send_iov(struct lm__xfer *x, struct iovec *iov, unsigned n);
int lm__xf_recv_full(struct lm__xfer *x, void *buf, size_t len);
int lm__xf_recv_hdr(struct lm__xfer *x, lm_xf_rec_t *h);
/* What the peer sent while we stream: KEEPALIVEs or an ABORT. */
int lm__xf_read_control(struct lm__xfer *x);
void lm__xf_maybe_progress(struct lm__xfer *x);
void lm__xf_send_abort(struct lm__xfer *x, int err, unsigned reason, const char *msg);
/* The destination's words for a failed receive. */
void lm__xf_recv_why(struct lm__xfer *x, int rc, char *why, size_t whylen);
/* Source, END sent: the destination's ACK (under the blackout's bound).
 * 0; a failure with `why` and *res set; or -EAGAIN for an I/O failure
 * whose error is in x->io_rc (for lm__xf_src_io_fail). */
int lm__xf_await_ack(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res);
/* Destination, END received and its VM loaded with `load_rc` (why set if
 * < 0): sends the ACK; 0 once OFFLINE_DONE was told, else the error. */
int lm__xf_dst_ack(struct lm__xfer *x, int load_rc, char *why, size_t whylen);
/* Destination, an ABORT header read: its payload into why and *res. */
int lm__xf_dst_abort(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res);
/* Source: an I/O failure `rc` in words, told to the destination. */
int lm__xf_src_io_fail(struct lm__xfer *x, int rc, char *why, size_t whylen, enum lm__xfer_result *res);

/* ---- vmm.c (engine thread): after go, in place of the pages ------------- */

bool lm__xf_link_lendable(const struct lm__xfer *x);
void lm__xf_size_link_default(int sock);
int lm__xf_src_vmm(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res);
int lm__xf_dst_vmm(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res);

/* ---- handover.c (engine thread) ----------------------------------------- */

/* Fills our secret; called before the handshake. 0 or -errno. */
int lm__xf_ho_init(struct lm__xfer *x);
void lm__xf_ho_fini(struct lm__xfer *x);
/* Runs the handover after a complete transfer (state HOLDING) or after a
 * source that failed once the destination may have been complete (state
 * REVOKED). Returns when the handover is settled and the link may close,
 * or when the engine is destroyed. */
void lm__xf_ho_run(struct lm__xfer *x, enum lm__ho_state start);
/* Makes the handover active in `start` (before the completion is told). */
void lm__xf_ho_begin(struct lm__xfer *x, enum lm__ho_state start);
/* Source, failing after END: the guest stays here (REVOKED); the REVOKE
 * is news for a destination that may be complete. */
void lm__xf_ho_revoke_now(struct lm__xfer *x);

#endif
