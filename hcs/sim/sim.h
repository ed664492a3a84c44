/*
 * sim.h: extras of the sim backend beyond the ops table, for tests and
 * benchmarks (the ops table itself is lm_hcs_sim_ops in backend.h).
 */
#ifndef LM_HCS_SIM_H
#define LM_HCS_SIM_H

#include "hcs/backend.h"

/* Thread: owner; VM paused or never started. Runs `iterations` workload
 * iterations of every workload thread synchronously on the caller's thread
 * (the same deterministic sequence the threads would run). Two VMs with
 * equal memory and equal state blobs stay equal under equal steps: tests
 * use it to prove a migrated guest continues exactly. 0 or -EBUSY if
 * running, -EINVAL if `vm` is not a sim VM. */
int lm_sim_step(lm_vm_t *vm, const lm_backend_ops_t *ops, uint64_t iterations);

/* Thread: any. The memfd of a sim VM's memory (for tests). */
int lm_sim_memfd(lm_vm_t *vm);

#endif
