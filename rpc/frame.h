/*
 * frame.h: the ttrpc wire codec: frame headers, Request decoding,
 * Response/Request/Data encoding. Pure functions over caller buffers; no
 * allocation, no I/O, no state (docs/ttrpc.md).
 *
 *   frame = uint32 length (BE) | uint32 stream_id (BE) | uint8 type |
 *           uint8 flags | data[length]        (length <= 4 MiB)
 *
 * DESIGN. The server decodes a Request in place: the decoded view points
 * into the frame's bytes (service, method, payload, metadata), so a request
 * costs no allocation until it becomes a call. The decoder is written for
 * hostile input (it is the fuzz target's subject): every varint and length
 * is bounds-checked against the buffer, unknown fields are skipped as
 * protobuf requires (wire types 0, 1, 2, 5), and anything else (a
 * truncated field, a group, a known field with the wrong wire type, a
 * length past the end) is -EPROTO with a message saying what was wrong,
 * which the server sends back as "unmarshal request error: <why>".
 * Repeated scalars follow protobuf's last-one-wins; `metadata` (field 5)
 * may repeat and is walked with an iterator over the raw bytes.
 *
 * Encoding writes the same bytes as containerd's Go implementation: fields
 * in number order, zero values omitted, an OK status omitted entirely.
 */
#ifndef LM_RPC_FRAME_H
#define LM_RPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LM_TTRPC_HDR_LEN  10u
#define LM_TTRPC_MAX_DATA (4u << 20)   /* largest data[] accepted or sent */

enum lm_ttrpc_type {
	LM_TTRPC_REQUEST  = 1,
	LM_TTRPC_RESPONSE = 2,
	LM_TTRPC_DATA     = 3,
};

/* Flags on a Request: 0 unary; REMOTE_CLOSED server streaming (client
 * sends nothing more); REMOTE_OPEN client streaming. On Data:
 * REMOTE_CLOSED the sender is done; NO_DATA no message in this frame. */
#define LM_TTRPC_F_REMOTE_CLOSED 0x01u
#define LM_TTRPC_F_REMOTE_OPEN   0x02u
#define LM_TTRPC_F_NO_DATA       0x04u

/* gRPC status codes (ttrpc uses gRPC's numbering). */
enum lm_rpc_code {
	LM_RPC_OK = 0,
	LM_RPC_CANCELED = 1,
	LM_RPC_UNKNOWN = 2,
	LM_RPC_INVALID_ARGUMENT = 3,
	LM_RPC_DEADLINE_EXCEEDED = 4,
	LM_RPC_NOT_FOUND = 5,
	LM_RPC_ALREADY_EXISTS = 6,
	LM_RPC_PERMISSION_DENIED = 7,
	LM_RPC_RESOURCE_EXHAUSTED = 8,
	LM_RPC_FAILED_PRECONDITION = 9,
	LM_RPC_ABORTED = 10,
	LM_RPC_OUT_OF_RANGE = 11,
	LM_RPC_UNIMPLEMENTED = 12,
	LM_RPC_INTERNAL = 13,
	LM_RPC_UNAVAILABLE = 14,
	LM_RPC_DATA_LOSS = 15,
	LM_RPC_UNAUTHENTICATED = 16,
};

/* Thread: any. "OK", "InvalidArgument", ... ("Code(N)" style for others
 * is not provided: returns "Unknown" for out-of-range codes). */
const char *lm_rpc_code_name(int code);

struct lm_ttrpc_hdr {
	uint32_t len;      /* data bytes after the header */
	uint32_t stream;   /* stream ID */
	uint8_t type;      /* enum lm_ttrpc_type (others are ignored by peers) */
	uint8_t flags;     /* LM_TTRPC_F_* */
};

/* Thread: any. Writes/reads the 10-byte header. */
void lm_ttrpc_hdr_encode(uint8_t out[LM_TTRPC_HDR_LEN], const struct lm_ttrpc_hdr *h);
void lm_ttrpc_hdr_decode(const uint8_t in[LM_TTRPC_HDR_LEN], struct lm_ttrpc_hdr *h);

/* A string or bytes field: points into the decoded buffer, not
 * NUL-terminated. */
struct lm_ttrpc_bytes {
	const uint8_t *p;
	size_t len;
};

/* A decoded Request; every pointer points into the buffer given to
 * lm_ttrpc_request_decode, which must outlive the view. */
struct lm_ttrpc_request {
	struct lm_ttrpc_bytes service;   /* 1 */
	struct lm_ttrpc_bytes method;    /* 2 */
	struct lm_ttrpc_bytes payload;   /* 3 */
	int64_t timeout_nano;            /* 4; <= 0: no deadline */
	unsigned n_metadata;             /* 5, count of KeyValue entries */
	const uint8_t *raw;              /* the whole message, for the iterator */
	size_t raw_len;
};

/* Thread: any. Decodes a Request message (the data of a type-1 frame).
 * 0, or -EPROTO with *why set to a static description of the defect. */
int lm_ttrpc_request_decode(const uint8_t *buf, size_t len,
			    struct lm_ttrpc_request *out, const char **why);

/* Iterates the metadata of a decoded request, in wire order. */
struct lm_ttrpc_md_iter {
	const uint8_t *p, *end;
};
struct lm_ttrpc_kv {
	struct lm_ttrpc_bytes key, value;
};
/* Thread: any. */
void lm_ttrpc_md_iter_init(struct lm_ttrpc_md_iter *it, const struct lm_ttrpc_request *r);
/* Thread: any. true and the next entry, or false at the end. Only valid on
 * a request that lm_ttrpc_request_decode accepted. */
bool lm_ttrpc_md_next(struct lm_ttrpc_md_iter *it, struct lm_ttrpc_kv *kv);

/* A decoded Response (client side); pointers into the decoded buffer. */
struct lm_ttrpc_response {
	int32_t code;                    /* status.code; 0 when status absent */
	struct lm_ttrpc_bytes message;   /* status.message */
	struct lm_ttrpc_bytes payload;   /* 2 */
};

/* Thread: any. 0 or -EPROTO (why as above). */
int lm_ttrpc_response_decode(const uint8_t *buf, size_t len,
			     struct lm_ttrpc_response *out, const char **why);

/* Bytes of a whole Response frame (header included) carrying code/msg
 * (omitted when code is 0 and msg empty) and payload. */
size_t lm_ttrpc_response_frame_size(int code, size_t msg_len, size_t payload_len);
/* Thread: any. Writes that frame into out (sized by the function above);
 * returns the bytes written. */
size_t lm_ttrpc_response_frame_encode(uint8_t *out, uint32_t stream, int code,
				      const char *msg, size_t msg_len,
				      const void *payload, size_t payload_len);

/* Bytes of a Data frame of `len` message bytes (header included). */
static inline size_t lm_ttrpc_data_frame_size(size_t len) { return LM_TTRPC_HDR_LEN + len; }
/* Thread: any. Writes a Data frame; returns the bytes written. */
size_t lm_ttrpc_data_frame_encode(uint8_t *out, uint32_t stream, uint8_t flags,
				  const void *data, size_t len);

/* A request to encode (client side). */
struct lm_ttrpc_request_out {
	const char *service;
	const char *method;
	const void *payload;
	size_t payload_len;
	int64_t timeout_nano;            /* 0: none */
	const char *const *md;           /* key, value, key, value, ... */
	size_t n_md;                     /* number of pairs */
};
/* Bytes of the Request frame (header included). */
size_t lm_ttrpc_request_frame_size(const struct lm_ttrpc_request_out *r);
/* Thread: any. Writes it; returns bytes written. */
size_t lm_ttrpc_request_frame_encode(uint8_t *out, uint32_t stream, uint8_t flags,
				     const struct lm_ttrpc_request_out *r);

#endif
