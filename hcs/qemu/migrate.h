/*
 * migrate.h: QEMU's own live migration, driven over QMP.
 *
 * The source gets a connected stream socket from us (in the shim, the
 * migration link itself, or one end of a socketpair whose other end our
 * transfer thread carries inside our framed stream): lm_qemu_migrate_start
 * passes it to QEMU with "getfd" (SCM_RIGHTS) and starts "migrate" to
 * "fd:NAME". A destination launched with incoming_later (QEMU starts with
 * -incoming defer, paused) gets its socket the same way from
 * lm_qemu_migrate_incoming ("migrate-incoming" to "fd:NAME"); one launched
 * with incoming_fd gets it at launch (migrate-incoming fd:4). Both sides report status changes as LM_QEMU_EV_MIGRATION events
 * (QEMU's "events" capability is always on), the source also each RAM
 * pass and, ours, LM_QEMU_EV_BLACKOUT_START when it stops the guest for
 * the last pass. When the destination's status is "completed" the guest
 * there is paused; it runs only on lm_qemu_vm_cont.
 *
 * Tuning (QEMU 7.2 names): downtime-limit (ms: the blackout QEMU aims
 * for), max-bandwidth (bytes/s; QEMU's default is 32 MiB/s, far below a
 * local socket), auto-converge with cpu-throttle-initial/-increment/
 * -tailslow/max-cpu-throttle (slow the guest's vCPUs until the dirty rate
 * fits the link), pause-before-switchover (the source stops in status
 * pre-switchover until lm_qemu_migrate_continue: a switchover point for
 * the caller). Capabilities that change the stream's format (multifd,
 * xbzrle, ...) must match on both sides: give the destination the same
 * params through incoming_params.
 *
 * Threads: as vm.h (any thread but the VM's loop; they wait). Fault
 * points: "qemu.migrate" (lm_qemu_migrate_start fails before QEMU hears of
 * it), "qemu.incoming" (the same for lm_qemu_migrate_incoming).
 */
#ifndef LM_HCS_QEMU_MIGRATE_H
#define LM_HCS_QEMU_MIGRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "hcs/qemu/vm.h"

/* -1 (or LM_QEMU_TRI_KEEP) leaves a value as QEMU has it. */
#define LM_QEMU_KEEP (-1)

struct lm_qemu_migrate_params {
	int64_t downtime_limit_ms;      /* downtime-limit, 0..2000000 */
	int64_t max_bandwidth;          /* max-bandwidth, bytes/s */
	int cpu_throttle_initial;       /* percent, 1..99 */
	int cpu_throttle_increment;     /* percent, 1..99 */
	int cpu_throttle_tailslow;      /* 0/1 */
	int max_cpu_throttle;           /* percent, 1..99 */
	int auto_converge;              /* capability, 0/1 */
	int pause_before_switchover;    /* capability, 0/1 */
	int xbzrle;                     /* capability, 0/1 (both sides) */
};

/* Thread: any. Every field LM_QEMU_KEEP. */
void lm_qemu_migrate_params_init(lm_qemu_migrate_params_t *p);

/* Thread: any but the loop's. Sets the capabilities, then the parameters,
 * that p does not leave as they are; before a migration starts. 0,
 * -EINVAL (out of range), -EREMOTEIO (QEMU refused: errbuf says why),
 * other QMP errors. */
int lm_qemu_migrate_set(lm_qemu_vm_t *vm, const lm_qemu_migrate_params_t *p,
			unsigned timeout_ms, char *errbuf, size_t errlen);

/* Thread: any but the loop's. Source: gives QEMU `fd` (a connected stream
 * socket; QEMU gets its own copy, the caller keeps and closes its fd
 * when it likes) and starts the migration. Returns when QEMU accepted
 * it; follow it with events, lm_qemu_migrate_query or _wait. -EBUSY if a
 * migration is already under way; -EPERM on a destination. */
int lm_qemu_migrate_start(lm_qemu_vm_t *vm, int fd, unsigned timeout_ms,
			  char *errbuf, size_t errlen);

/* Thread: any but the loop's. Destination launched with incoming_later:
 * gives QEMU `fd` (a connected stream socket; QEMU gets its own copy, as
 * for lm_qemu_migrate_start) with "getfd" and starts reading its incoming
 * stream from it ("migrate-incoming fd:NAME"). -EPERM on a VM that is not
 * a waiting destination, -EBUSY if its incoming stream already started. */
int lm_qemu_migrate_incoming(lm_qemu_vm_t *vm, int fd, unsigned timeout_ms,
			     char *errbuf, size_t errlen);

/* query-migrate, parsed. Fields QEMU did not report are 0 (-1 for times). */
typedef struct lm_qemu_migration_info {
	enum lm_qemu_mig_status status;
	int64_t total_time_ms;          /* so far, or in all when completed */
	int64_t setup_time_ms;
	int64_t downtime_ms;            /* when completed: the blackout */
	int64_t expected_downtime_ms;   /* while active: QEMU's estimate */
	uint64_t ram_transferred;       /* bytes */
	uint64_t ram_remaining;         /* bytes still dirty */
	uint64_t ram_total;             /* bytes of guest RAM */
	uint64_t ram_duplicate;         /* zero pages (sent as a flag) */
	uint64_t ram_normal;            /* pages sent whole */
	uint64_t dirty_pages_rate;      /* pages/s in the last pass */
	uint64_t dirty_sync_count;      /* passes (dirty bitmap syncs) */
	uint64_t page_size;
	double mbps;                    /* throughput of the last period */
	int cpu_throttle_percentage;    /* auto-converge's throttle now */
	char error_desc[256];           /* when failed */
} lm_qemu_migration_info_t;

/* Thread: any but the loop's. query-migrate into *out. */
int lm_qemu_migrate_query(lm_qemu_vm_t *vm, lm_qemu_migration_info_t *out,
			  unsigned timeout_ms);

/* Thread: any but the loop's. migrate_cancel: the source keeps (or goes
 * back to) running; returns once the status is no longer active
 * (cancelled, or failed/completed if it had got there first: that status
 * in *final, may be NULL). */
int lm_qemu_migrate_cancel(lm_qemu_vm_t *vm, unsigned timeout_ms,
			   enum lm_qemu_mig_status *final);

/* Thread: any but the loop's. With pause_before_switchover, lets a source
 * waiting in status pre-switchover go on to the blackout. */
int lm_qemu_migrate_continue(lm_qemu_vm_t *vm, unsigned timeout_ms);

/* Thread: any but the loop's. Waits (at most timeout_ms) until the VM's
 * migration reached a final status (completed, failed, cancelled), on
 * either side, or QEMU exited (-ECHILD), or until the status is `stop_at`
 * (e.g. LM_QEMU_MIG_PRE_SWITCHOVER; LM_QEMU_MIG_NONE for none). 0 and the
 * status in *final (may be NULL), or -ETIMEDOUT. */
int lm_qemu_migrate_wait(lm_qemu_vm_t *vm, unsigned timeout_ms,
			 enum lm_qemu_mig_status stop_at,
			 enum lm_qemu_mig_status *final);

/* Thread: any. The status as the events last said (no QMP round trip). */
enum lm_qemu_mig_status lm_qemu_migrate_status(lm_qemu_vm_t *vm);

/* Thread: any. The source's current outgoing migration: the number of the
 * first sync of QEMU's dirty log, after its first, that QEMU made while
 * the guest ran (its MIGRATION_PASS came before the guest's STOP), or 0.
 * Under TCG such a sync may miss a store that races with it (README.md). */
uint64_t lm_qemu_migrate_synced_running(lm_qemu_vm_t *vm);

/* Thread: any. QEMU's word for a status, and back (LM_QEMU_MIG_UNKNOWN). */
const char *lm_qemu_mig_status_name(enum lm_qemu_mig_status s);
enum lm_qemu_mig_status lm_qemu_mig_status_parse(const char *s);

#endif
