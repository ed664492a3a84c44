/*
 * shim.h: one lmshim instance: the actor runtime, the actors (controller,
 * notifier, transport, patchers), the ttrpc server with the Migration and
 * task services, and the sandbox's compute system.
 *
 * DESIGN. lm_shim_create builds everything and starts serving; the caller
 * (cmd/lmshim's main) only waits for a signal and calls lm_shim_destroy,
 * which stops serving (graceful ttrpc shutdown), cancels any migration,
 * closes the compute system and shuts the runtime down. Every RPC becomes
 * a message to the controller actor, which owns the session state
 * machine and the sandbox (pods, containers); see controller.h.
 */
#ifndef LM_SHIM_SHIM_H
#define LM_SHIM_SHIM_H

#include <stdbool.h>
#include <stdint.h>

typedef struct lm_shim lm_shim_t;

/* One container of the sandbox a standalone shim starts with. */
struct lm_shim_container {
	const char *id;            /* container ID */
	const char *pod_id;        /* the pod (sandbox) it belongs to */
	bool is_sandbox;           /* the pod's sandbox (pause) container */
	unsigned layers;           /* read-only layer count */
	const char *cmd;           /* a real guest (backend qemu): the init's shell
				      command (/bin/sh -c CMD); NULL: it sleeps */
	const char *const *layer_paths; /* backend qemu: its rootfs, `layers`
				      absolute paths (directories or erofs
				      images), base first, each a read-only
				      disk of the VM; NULL: the VM's shared
				      image (disk "rootfs") */
};

struct lm_shim_config {
	const char *socket;        /* ttrpc address: a path, or '@' + abstract name */
	const char *id;            /* shim id (containerd's -id) */
	const char *ns;            /* containerd namespace */
	/* The sandbox to run at start (standalone mode). NULL document: the
	 * shim starts idle with no VM (a migration destination). */
	const char *vm_document;   /* HCS compute-system document (JSON) */
	const struct lm_shim_container *containers;
	unsigned n_containers;
	const char *state_dir;     /* where per-container bundles/stdio live; NULL = /run/lmshim/<id> */
	unsigned workers;          /* actor workers; 0 = cores */
	bool any_uid;              /* tests only: accept peers of any uid */
	/* CPU reserved for the memory-transfer thread of a migration, in
	 * percent of one core (util/sched.h: SCHED_DEADLINE reclaiming idle
	 * time, else nice -20); 0 = none. lmshim passes
	 * LM_SHIM_TRANSFER_CPU_DEFAULT unless told otherwise. */
	unsigned transfer_cpu_pct;
	/* The migration link's liveness: a peer silent this long (no record,
	 * no keepalive) has stalled; 0 = 10 s. */
	unsigned stall_ms;
	/* A session with no orchestrator call for this long resolves itself
	 * (docs/migration-service.md, "When the orchestrator is gone"): the
	 * guest ends up running on one side, both shims go idle; 0 = never. */
	unsigned orphan_ms;
	/* Called (on the controller's thread, once per Shutdown) when a task
	 * Shutdown leaves the shim nothing to serve: no container, no
	 * migration session. It must not block; lmshim sends itself SIGTERM
	 * (a graceful stop). NULL: the shim keeps serving. */
	void (*on_shutdown)(void *arg);
	void *shutdown_arg;
	/* containerd's ttrpc address (its TTRPC_ADDRESS) for task events
	 * (shim/publisher.h), stamped with namespace `ns`; NULL: none. */
	const char *events_address;
	/* A VM document (vm_document's form) booted at the first plain task
	 * Create while the shim has no VM: a shim that containerd starts
	 * boots its sandbox so. Its memory and vCPUs follow the Create's OCI
	 * resources (docs/README: the sizing rule). NULL: such a Create is
	 * refused ("the VM is not running"). */
	const char *vm_on_create;
	/* Migrations this shim sends carry batch checksums only when the
	 * orchestrator's options ask (ChecksumVerification); false (the
	 * default): always (docs: "Integrity"). */
	bool no_checksum;
	/* A VMM's own stream (the qemu backend) always travels in our
	 * records, even where both VMMs could speak on the link itself (a
	 * plain unix link: hcs/PROTOCOL.md, "The VMM on the link"). */
	bool vmm_carry;
	/* Mutual TLS 1.3 on every migration link: the directory of
	 * actors/tls_link.h (ca-cert.pem, server-cert.pem, server-key.pem,
	 * client-cert.pem, client-key.pem), or NULL: plain links, which only
	 * a unix socket may carry unless insecure_migration. */
	const char *migration_tls_dir;
	bool insecure_migration;
};

#define LM_SHIM_TRANSFER_CPU_DEFAULT 90
#define LM_SHIM_ORPHAN_MS_DEFAULT 60000

/* Thread: main. Builds and starts the shim; with a VM document it creates
 * and starts the VM and its containers before returning. 0 or -errno
 * (logged with the cause). */
int lm_shim_create(lm_shim_t **out, const struct lm_shim_config *cfg);

/* Thread: main. Graceful stop; frees everything. */
void lm_shim_destroy(lm_shim_t *s);

#endif
