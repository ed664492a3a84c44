/*
 * ocires.h: an OCI runtime-spec "LinuxResources" object (JSON), as a task
 * Update carries it (UpdateTaskRequest.resources, an Any of type
 * ".../opencontainers/runtime-spec/1/LinuxResources" whose value is the
 * JSON containerd's typeurl wrote), read into the cgroup v2 limits the
 * guest agent sets on a container: memory.max, pids.max, cpu.max and
 * cpu.weight. The spec's rules: a limit above 0 sets it, -1 lifts it, 0
 * or an absent field leaves it as it is; cpu.shares maps to cpu.weight as
 * runc maps it (1 + (shares - 2) * 9999 / 262142). What the utility VM
 * does not apply (cpuset, blockIO, devices, hugepages, network, rdma,
 * unified, memory reservation/swap/kernel, realtime) is named in
 * `ignored` rather than refused. Plain functions: Thread: any.
 */
#ifndef LM_SHIM_OCIRES_H
#define LM_SHIM_OCIRES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lm_oci_resources {
	bool set_memory;
	uint64_t memory_max;          /* bytes, 0: no limit */
	bool set_pids;
	uint64_t pids_max;            /* 0: no limit */
	bool set_cpu_max;
	uint64_t cpu_quota_us;        /* 0: no limit */
	uint64_t cpu_period_us;       /* 0: the kernel's 100000 */
	bool set_cpu_weight;
	uint32_t cpu_weight;          /* 1..10000 */
	char ignored[200];            /* the given fields not applied, ", "-separated */
};

/* The type URL suffix of a LinuxResources Any. */
#define LM_OCI_RESOURCES_TYPE "opencontainers/runtime-spec/1/LinuxResources"

/* Parses `json` (len bytes, not NUL-terminated) into *out (zeroed
 * first). 0, or -EINVAL with why naming the field ("resources.cpu.quota:
 * not an integer"). */
int lm_oci_resources_parse(const uint8_t *json, size_t len, struct lm_oci_resources *out, char *why,
			   size_t whylen);

#endif
