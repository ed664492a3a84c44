/*
 * kvm_backend.h: the kvm backend as seen from hcs and tests. The ops table
 * itself is declared in hcs/backend.h (lm_hcs_kvm_ops); this adds the one
 * backend-specific accessor tests need: the VMM core behind a VM created
 * through the seam (to check the guest's checksum against its memory,
 * read its status page, or drive a controlled run).
 */
#ifndef LM_HCS_KVM_BACKEND_H
#define LM_HCS_KVM_BACKEND_H

#include "hcs/backend.h"
#include "hcs/kvm/vmm.h"

/* Thread: any. The VMM of a VM created by lm_hcs_kvm_ops.create (NULL for
 * NULL). Never pass a VM of another backend. */
lm_kvm_vm_t *lm_hcs_kvm_vmm(lm_vm_t *vm);

#endif
