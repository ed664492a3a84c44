/*
 * registry.c: backends by name. The document's "Backend" field picks one;
 * "sim" is always present, "kvm" when hcs/kvm is built (LM_HCS_HAVE_KVM).
 */
#include "hcs/backend.h"

#include <string.h>

static const lm_backend_ops_t *const backends[] = {
	&lm_hcs_sim_ops,
#ifdef LM_HCS_HAVE_KVM
	&lm_hcs_kvm_ops,
#endif
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
