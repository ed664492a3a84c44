/*
 * fuzz_qmp.c: libFuzzer target over what QEMU's monitor could send us
 * (hcs/qemu/qmp_wire.c): the input is a byte stream, split into lines by
 * the reader (with a small cap, so oversized lines are reached) in chunks
 * whose sizes come from the first input byte, and every line parsed and
 * classified, as the client does. It must refuse bad input with an error,
 * never crash, leak or hang. Seeds: tests/fuzz/corpus/qmp (a greeting,
 * replies, errors and events as QEMU 7.2 writes them).
 */
#include "hcs/qemu/qmp_wire.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static int on_line(void *arg, const char *line, size_t len)
{
	unsigned *n = arg;
	lm__qmp_msg_t m;
	char why[160];
	if (lm__qmp_parse(line, len, &m, why, sizeof(why)) == 0) {
		/* touch what the client reads */
		switch (m.kind) {
		case LM__QMP_EVENT:
			if (!m.event || !*m.event)
				__builtin_trap();
			(void)json_object_get(m.data, "status");
			break;
		case LM__QMP_ERROR:
			if (!m.err_class || !m.err_desc)
				__builtin_trap();
			break;
		case LM__QMP_RETURN:
			if (!m.ret)
				__builtin_trap();
			break;
		case LM__QMP_GREETING:
			break;
		default:
			__builtin_trap();
		}
		lm__qmp_msg_clear(&m);
	} else if (!why[0]) {
		__builtin_trap();   /* a refusal always says why */
	}
	(*n)++;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	size_t chunk = (size_t)data[0] % 64 + 1;
	data++;
	size--;
	lm__qmp_reader_t r;
	lm__qmp_reader_init(&r, 4096);
	unsigned lines = 0;
	for (size_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;
		int rc = lm__qmp_reader_feed(&r, (const char *)data + off, n, on_line, &lines);
		if (rc == -EMSGSIZE) {
			/* the client gives up on the stream here; so do we */
			break;
		}
		if (rc)
			__builtin_trap();
	}
	lm__qmp_reader_free(&r);
	return 0;
}
