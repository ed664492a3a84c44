/*
 * fuzz_stream_bound.c: fuzz_stream's target for a destination whose link
 * is a TLS session (lm__xfer_opts_t.bound): the hello must carry the
 * session's 32-byte binding (hcs/PROTOCOL.md, flag 0x10); here it is 32
 * bytes of 0xb1. Seeds: tests/fuzz/corpus/stream_bound.
 */
#define LM_FUZZ_BOUND 1
#include "fuzz_stream.c"
