/*
 * backend.h (hcs/qemu): the qemu backend as seen from hcs and tests. The
 * ops table itself is declared in hcs/backend.h (lm_hcs_qemu_ops, defined
 * in backend.c); this adds the two accessors that are specific to it: the
 * QEMU process behind a VM created through the seam (tests read its
 * console; a caller may send it QMP commands the seam does not carry), and
 * the path of the guest agent's socket (hcs/agent/ connects there).
 *
 * Both stay valid from create to destroy and may be used from any thread
 * (vm.h's thread rules apply to the QEMU process: not from its loop).
 */
#ifndef LM_HCS_QEMU_BACKEND_H
#define LM_HCS_QEMU_BACKEND_H

#include "hcs/backend.h"
#include "hcs/qemu/vm.h"

/* Thread: any. The QEMU process of a VM created by lm_hcs_qemu_ops.create
 * (NULL for NULL). Never pass a VM of another backend; never destroy it
 * (the backend's destroy does). */
lm_qemu_vm_t *lm_hcs_qemu_vm(lm_vm_t *vm);

/* Thread: any. The unix socket QEMU listens on for the guest agent's
 * virtio-serial port (in the VM's private directory), NULL for NULL. */
const char *lm_hcs_qemu_agent_socket(lm_vm_t *vm);

/* Thread: any. The QEMU process's pid (the VMM: what a sandbox's PID is
 * to containerd), 0 for NULL or before it was launched. */
pid_t lm_hcs_qemu_pid(lm_vm_t *vm);

#endif
