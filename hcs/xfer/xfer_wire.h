/*
 * xfer_wire.h: the wire format of the memory-transfer stream, version 3.
 * hcs/PROTOCOL.md is the prose description; this header is the truth for
 * the byte layout. All integers are little-endian; every struct is
 * naturally aligned with no padding (checked by static asserts).
 */
#ifndef LM_HCS_XFER_WIRE_H
#define LM_HCS_XFER_WIRE_H

#include <assert.h>
#include <stdint.h>

#define LM_XF_MAGIC 0x58464d4cu   /* bytes "LMFX" */
#define LM_XF_VERSION 3u
#define LM_XF_COMPAT_MAX 4096u    /* compatibility data bytes */
#define LM_XF_MAX_DESCS 4096u     /* page descriptors per batch */
#define LM_XF_MAX_DATA (16u << 20) /* data bytes per batch */
#define LM_XF_MAX_RECORD (LM_XF_MAX_DATA + LM_XF_MAX_DESCS * 16u + LM_XF_SUM_LEN + \
			  LM_XF_MAX_PAGE_SUMS * 8u)

/* hello.flags */
#define LM_XF_HELLO_CHECKSUM 0x1u /* PAGES batches carry checksums */
#define LM_XF_HELLO_COMPRESS 0x2u /* PAGES may carry LZ4 pages */
#define LM_XF_HELLO_HANDOVER 0x4u /* after ACK, the handover (PROTOCOL.md):
				     the destination runs the guest only
				     with the source's GRANT */
#define LM_XF_HELLO_VMM 0x8u      /* the VMM's own stream in VMM records
				     instead of pages and a state blob
				     (nregions 0; PROTOCOL.md) */
#define LM_XF_MAX_VMM (1u << 20)  /* bytes per VMM record */
#define LM_XF_HELLO_BOUND 0x10u   /* the link is a TLS session: LM_XF_BINDING_LEN
				     bytes of its exported keying material follow
				     the compatibility data */
#define LM_XF_BINDING_LEN 32u
#define LM_XF_HELLO_VMM_LINK 0x20u /* with LM_XF_HELLO_VMM: the source may
				     hand the link to its VMM for the stream
				     (VMM_LINK .. VMM_LOADED, PROTOCOL.md);
				     taken only if the answer's flags say so */

#define LM_XF_HELLO_RING 0x40u    /* pages: the source offers a shared-memory
				     ring (hcs/ring_link.h); its memfd rides
				     the hello's first byte (SCM_RIGHTS, unix
				     sockets); taken only if the answer's
				     flags say so */

/* hello_ack.flags */
#define LM_XF_ACK_VMM_LINK 0x1u   /* the destination hands the link to its
				     VMM too: the stream goes on the link */
#define LM_XF_ACK_RING 0x2u       /* the destination takes the ring: its own
				     ring's memfd rides the answer's first
				     byte; both sides' next bytes go through
				     the rings */

#define LM_XF_SECRET_LEN 32u      /* handover secrets; their SHA-256 is
				     committed to in the handshake */

/* Source -> destination, first bytes on the socket. Followed by
 * nregions lm_xf_region_t and compat_len bytes of compatibility data. */
typedef struct lm_xf_hello {
	uint32_t magic;
	uint16_t version;
	uint16_t hdr_len;        /* sizeof(lm_xf_hello_t) */
	uint32_t session_id;
	uint32_t page_size;
	uint32_t flags;
	uint32_t nregions;       /* 1..LM_MAX_REGIONS; 0 with LM_XF_HELLO_VMM */
	uint32_t compat_len;     /* 0..LM_XF_COMPAT_MAX */
	uint32_t reserved;
	uint64_t total_bytes;    /* sum of region sizes (VMM: guest memory) */
	uint8_t commit[32];      /* SHA-256 of the source's grant secret */
	uint32_t keepalive_ms;   /* the source sends a KEEPALIVE when idle this long */
	uint32_t stall_ms;       /* silence after which a side is stalled */
} lm_xf_hello_t;
static_assert(sizeof(lm_xf_hello_t) == 80, "hello layout");

typedef struct lm_xf_region {
	uint64_t gpa;
	uint64_t size;
} lm_xf_region_t;

/* Destination -> source, answer to hello. status 0 = accepted, else a
 * positive errno; reason is a NUL-terminated human message. */
typedef struct lm_xf_hello_ack {
	uint32_t magic;
	uint16_t version;
	uint16_t flags;          /* LM_XF_ACK_*; 0 from a side that knows none */
	int32_t status;
	char reason[116];
	uint8_t commit[32];      /* SHA-256 of the destination's release secret */
} lm_xf_hello_ack_t;
static_assert(sizeof(lm_xf_hello_ack_t) == 160, "hello ack layout");

/* Every later message is a record: header then `len` payload bytes. */
enum lm_xf_type {
	LM_XF_PAGES = 1,    /* src->dst: count descs, sums, data (below) */
	LM_XF_PASS_END = 2, /* src->dst: count = pass number; lm_xf_pass_end_t */
	LM_XF_STATE = 3,    /* src->dst: the VM state blob */
	LM_XF_END = 4,      /* src->dst: no more pages; lm_xf_end_t */
	LM_XF_ACK = 5,      /* dst->src: lm_xf_ack_t, after END */
	LM_XF_ABORT = 6,    /* either way: lm_xf_abort_t */
	LM_XF_KEEPALIVE = 7,/* either way, no payload: "still here" */
	/* the handover (after ACK, with LM_XF_HELLO_HANDOVER) */
	LM_XF_COMMIT_REQ = 8, /* dst->src, no payload: may I run the guest? */
	LM_XF_GRANT = 9,    /* src->dst: the grant secret; the source never resumes */
	LM_XF_REVOKE = 10,  /* src->dst, no payload: the source keeps the guest */
	LM_XF_COMMITTING = 11, /* dst->src, no payload: the destination runs it now */
	LM_XF_RELEASE = 12, /* dst->src: the release secret; the destination never runs it */
	LM_XF_BYE = 13,     /* src->dst, no payload: the handover is settled */
	LM_XF_VMM = 14,     /* src->dst: the next bytes of the VMM's own
			       migration stream (LM_XF_HELLO_VMM), 1..LM_XF_MAX_VMM */
	LM_XF_VMM_LINK = 15,/* src->dst, no payload (LM_XF_ACK_VMM_LINK): the
			       next bytes are the VMM's own stream, written on
			       the link by the source's VMM, read by the
			       destination's; nothing else goes src->dst until
			       the destination's VMM_LOADED */
	LM_XF_VMM_LOADED = 16, /* dst->src, no payload: the destination's VMM
			       loaded the whole stream; the link is ours again */
};

typedef struct lm_xf_rec {
	uint32_t type;
	uint32_t count;
	uint64_t len;
} lm_xf_rec_t;
static_assert(sizeof(lm_xf_rec_t) == 16, "record header layout");

/* Page descriptor flags (exactly one). */
#define LM_XF_PG_ZERO 0x1u /* len = number of zero pages from pfn */
#define LM_XF_PG_RAW 0x2u  /* len = number of raw pages from pfn */
#define LM_XF_PG_LZ4 0x4u  /* one page; len = compressed bytes */

typedef struct lm_xf_page {
	uint64_t pfn;            /* guest-physical address / page size */
	uint32_t flags;
	uint32_t len;
} lm_xf_page_t;
static_assert(sizeof(lm_xf_page_t) == 16, "page descriptor layout");

/* A PAGES record's payload: `count` descriptors; a u64, XXH3-64 of the
 * descriptors; with LM_XF_HELLO_CHECKSUM, a u64 XXH3-64 of each data page
 * in descriptor order (every page of a RAW run, each LZ4 page's compressed
 * bytes); then the data. Without checksums the u64 is 0 and there are no
 * page sums. A page's sum is taken from guest memory while the guest may
 * run: PROTOCOL.md, "Integrity". */
#define LM_XF_SUM_LEN 8u
#define LM_XF_MAX_PAGE_SUMS (LM_XF_MAX_DATA / 4096u + LM_XF_MAX_DESCS)

typedef struct lm_xf_pass_end {
	uint64_t pages_sent;     /* pages described in this pass */
	uint64_t bytes_sent;     /* total stream bytes so far */
	uint64_t pages_remaining;/* dirty pages known at the end of the pass */
	uint32_t final;          /* 1 for the blackout pass */
	uint32_t reserved;
} lm_xf_pass_end_t;

typedef struct lm_xf_end {
	uint64_t total_pages;    /* pages described over all passes */
	uint64_t total_bytes;    /* stream bytes before this record */
} lm_xf_end_t;

typedef struct lm_xf_ack {
	int32_t status;          /* 0 or positive errno */
	uint32_t reserved;
} lm_xf_ack_t;

/* reason */
#define LM_XF_ABORT_CANCELLED 1u
#define LM_XF_ABORT_FAILED 2u
#define LM_XF_ABORT_BLACKOUT_THRESHOLD 3u

typedef struct lm_xf_abort {
	int32_t err;             /* positive errno of the cause */
	uint32_t reason;
	char msg[120];
} lm_xf_abort_t;
static_assert(sizeof(lm_xf_abort_t) == 128, "abort layout");

#endif
