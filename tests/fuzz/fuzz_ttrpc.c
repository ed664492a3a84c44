/*
 * fuzz_ttrpc: the frame and request decoder against arbitrary bytes.
 *
 * The input is read as a stream of frames, as the server reads a socket:
 * each header is decoded, its length checked against the 4 MiB limit, and
 * each body decoded as a Request (and as a Response, the client's side).
 * Differential check: whenever protobuf-c accepts a body as a
 * ttrpc.Request, our decoder must accept it too and agree on every field
 * (our decoder may be stricter only where protobuf-c is lax: protobuf-c
 * accepts field number 0, which protobuf forbids and Go's decoder
 * rejects as "illegal tag 0", and a 10-byte varint whose last byte
 * overflows 64 bits, which Go rejects as "integer overflow"; so do we).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/frame.h"
#include "ttrpc.pb-c.h"

static void check_request(const uint8_t *p, size_t n)
{
	struct lm_ttrpc_request r;
	const char *why;
	int rc = lm_ttrpc_request_decode(p, n, &r, &why);
	Ttrpc__Request *ref = ttrpc__request__unpack(NULL, n, p);
	if (rc == 0) {
		/* walk the metadata: must not read out of bounds */
		struct lm_ttrpc_md_iter it;
		struct lm_ttrpc_kv kv;
		unsigned count = 0;
		lm_ttrpc_md_iter_init(&it, &r);
		while (lm_ttrpc_md_next(&it, &kv)) {
			if (kv.key.len && kv.key.p[kv.key.len - 1] == 0xff && kv.value.len > n)
				abort();
			count++;
		}
		if (count != r.n_metadata)
			abort();
	}
	if (ref && rc != 0 && (strcmp(why, "illegal tag") == 0 || strcmp(why, "integer overflow") == 0)) {
		ttrpc__request__free_unpacked(ref, NULL);
		ref = NULL;
	}
	if (ref) {
		if (rc != 0)
			abort();
		if (ref->payload.len != r.payload.len ||
		    (r.payload.len && memcmp(ref->payload.data, r.payload.p, r.payload.len)))
			abort();
		if (ref->timeout_nano != r.timeout_nano || ref->n_metadata != r.n_metadata)
			abort();
		if (strlen(ref->service) == r.service.len &&
		    memcmp(ref->service, r.service.p, r.service.len))
			abort();
		ttrpc__request__free_unpacked(ref, NULL);
	}
	struct lm_ttrpc_response resp;
	(void)lm_ttrpc_response_decode(p, n, &resp, &why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* the whole input as one body */
	check_request(data, size);
	/* and as a stream of frames */
	while (size >= LM_TTRPC_HDR_LEN) {
		struct lm_ttrpc_hdr h;
		lm_ttrpc_hdr_decode(data, &h);
		data += LM_TTRPC_HDR_LEN;
		size -= LM_TTRPC_HDR_LEN;
		if (h.len > LM_TTRPC_MAX_DATA || h.len > size)
			break;
		if (h.type == LM_TTRPC_REQUEST)
			check_request(data, h.len);
		data += h.len;
		size -= h.len;
	}
	return 0;
}
