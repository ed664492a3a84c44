/*
 * vm_internal.h: the VM object shared by vm.c and migrate.c (internal to
 * hcs/qemu).
 *
 * Ownership: the immutable part is written by launch before the VM is
 * returned. The loop part belongs to the loop thread. The shared part is
 * written on the loop (events, exit) or by API calls, always under `mu`,
 * and every change broadcasts `cv` (waiters re-check their condition).
 */
#ifndef LM_HCS_QEMU_VM_INTERNAL_H
#define LM_HCS_QEMU_VM_INTERNAL_H

#include <ev.h>
#include <pthread.h>

#include "hcs/qemu/migrate.h"
#include "hcs/qemu/vm.h"

/* A bounded tail of a byte stream (console, stderr). Under vm->mu. */
struct lm__tail {
	char *buf;
	size_t cap;
	size_t pos;             /* next write index */
	size_t len;             /* valid bytes (<= cap) */
	uint64_t total;         /* bytes ever appended */
};

struct lm_qemu_vm {
	/* immutable after launch */
	char name[64];
	lm_qemu_loop_t *loop;
	bool own_loop;
	lm_qmp_t *qmp;
	pid_t pid;
	int pidfd;
	bool has_agent;
	enum lm_qemu_accel accel;
	enum lm_qemu_machine machine;
	char accel_reason[160];
	void (*on_event)(void *arg, const lm_qemu_event_t *ev);
	void *event_arg;

	/* loop */
	ev_io pid_w, out_w, err_w;
	int out_fd, err_fd;         /* our ends of QEMU's stdout/stderr, -1 */
	char err_line[512];         /* stderr line being assembled for the log */
	size_t err_line_len;
	unsigned err_lines_logged;
	bool exit_event_due;        /* reaped, EXITED not sent: it waits for
				       QMP_CLOSED (EXITED is the last event) */
	ev_timer exit_w;            /* ... at most this long */
	lm_qemu_event_t exit_event;

	/* shared, under mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;          /* CLOCK_MONOTONIC */
	bool incoming;              /* a destination that has not run yet */
	bool running;               /* STOP/RESUME */
	bool agent_open;            /* VSERPORT_CHANGE of our port */
	enum lm_qemu_mig_status mig_status; /* from MIGRATION events */
	unsigned mig_seq;           /* bumped by every change of mig_status from
				       an event or our own start; a query-migrate
				       answer counts only if none came while it
				       was asked (lm__mig_status_from_query) */
	bool mig_outgoing;          /* lm_qemu_migrate_start ran on this VM */
	bool outgoing_completed;    /* ... and it completed: no cont */
	bool blackout_reported;     /* BLACKOUT_START sent for this migration */
	uint64_t sync_running;      /* the first MIGRATION_PASS after the
				       first (a dirty-log sync) that came while
				       the guest ran, this migration; 0 none */
	unsigned user_stops;        /* lm_qemu_vm_stop calls in flight: their
				       STOP is no blackout */
	bool shutdown_seen;         /* SHUTDOWN event */
	bool shutdown_guest;        /* ... initiated by the guest */
	bool qmp_closed;
	int qmp_err;
	lm_qemu_exit_t exit;
	struct lm__tail con, err;
};

/* Thread: any but the loop's. Waits on vm->cv, holding vm->mu (the
 * caller holds it), until the absolute CLOCK_MONOTONIC deadline:
 * 0 or ETIMEDOUT (positive, as pthread). */
int lm__vm_wait_locked(lm_qemu_vm_t *vm, const struct timespec *until);

/* Under vm->mu. The migration status as an event or our own start says
 * (authoritative), and as a query-migrate answer says, `seq` being
 * mig_seq when the query was sent: an answer QEMU wrote before an event
 * that we handled first must not take the status back (seen in CI: a
 * stale "active" after the event "completed" left a source reporting its
 * blackout until the bound ran out). True if the status changed. */
void lm__mig_status_from_event(lm_qemu_vm_t *vm, enum lm_qemu_mig_status s);
bool lm__mig_status_from_query(lm_qemu_vm_t *vm, unsigned seq, enum lm_qemu_mig_status s);

/* Thread: any. Sends `cmd` and copies QMP's error text into errbuf. */
int lm__vm_exec(lm_qemu_vm_t *vm, const char *cmd, json_t *args, int fd,
		unsigned timeout_ms, json_t **ret, char *errbuf, size_t errlen);

#endif
