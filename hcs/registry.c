/*
 * registry.c: backends by name. The document's "Backend" field picks one;
 * "sim", "kvm" (whose create fails with a reason where /dev/kvm cannot
 * run it) and "qemu" (hcs/qemu/backend.c: a QEMU process per VM; create
 * fails with QEMU's reason where it cannot start). A const table: any
 * thread.
 */
#include "hcs/backend.h"

#include <string.h>

static const lm_backend_ops_t *const backends[] = {
	&lm_hcs_sim_ops,
	&lm_hcs_kvm_ops,
	&lm_hcs_qemu_ops,
};

const lm_backend_ops_t *lm_backend_find(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(backends[i]->name, name) == 0)
			return backends[i];
	return NULL;
}
