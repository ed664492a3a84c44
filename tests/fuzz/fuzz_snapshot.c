/*
 * fuzz_snapshot: libFuzzer target over the snapshot importer (the bytes an
 * ImportSandbox call hands the destination). Any input must be rejected
 * cleanly or imported; an imported snapshot must export, re-import and
 * re-export to the same bytes (the export is deterministic).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shim/sandbox.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lm_sandbox_t *sb = NULL, *sb2 = NULL;
	struct lm_snapshot_vm vm = { 0 }, vm2 = { 0 };
	char err[256];
	uint8_t *a = NULL, *b = NULL;
	size_t la = 0, lb = 0;

	if (lm_sandbox_import(data, size, &sb, &vm, err, sizeof(err)) != 0)
		return 0;
	if (lm_sandbox_export(sb, &vm, &a, &la) == 0 &&
	    lm_sandbox_import(a, la, &sb2, &vm2, err, sizeof(err)) == 0 &&
	    lm_sandbox_export(sb2, &vm2, &b, &lb) == 0) {
		if (la != lb || memcmp(a, b, la) != 0)
			abort();     /* the export is not deterministic */
	}
	free(a);
	free(b);
	lm_sandbox_destroy(sb);
	lm_sandbox_destroy(sb2);
	lm_snapshot_vm_clear(&vm);
	lm_snapshot_vm_clear(&vm2);
	return 0;
}
