/*
 * vm.h: one QEMU process running one utility VM, driven over QMP.
 *
 * lm_qemu_vm_launch starts qemu-system-x86_64 from a config (machine
 * microvm or q35, memory, vCPUs, kernel, initrd, command line, the guest
 * agent's virtio-serial port, virtio-blk disks, an incoming migration) and
 * returns once QEMU's monitor is ready, with the guest not yet running
 * (QEMU always starts with -S). lm_qemu_vm_boot then runs it and waits
 * until the guest opened its agent port (QEMU's VSERPORT_CHANGE event: the
 * guest agent, or the test init, is up). A migration destination is never
 * booted: it waits for the incoming stream (migrate.h) and runs only when
 * lm_qemu_vm_cont says so, after the stream completed: at most one copy of
 * a guest ever runs.
 *
 * The process: QEMU is forked on the VM's loop thread (loop.h says why)
 * with exactly these fds: 0 /dev/null, 1 the console pipe, 2 the stderr
 * pipe, 3 its end of the QMP socketpair (the monitor has no path anyone
 * else could connect to), 4 the incoming migration socket if any; a
 * minimal environment; its own process group; PR_SET_PDEATHSIG(SIGKILL),
 * so a shim that dies never leaves a guest running. We hold a pidfd: the
 * exit is seen on the loop (reaped with waitid), signals go through the
 * pidfd, so a recycled pid is never hit. The console (ttyS0) and QEMU's
 * stderr are kept in bounded tail buffers (the console may go to a file
 * instead); every stderr line is also logged, so a failure says why.
 *
 * Accelerator: LM_QEMU_ACCEL_AUTO uses KVM only where it runs a normal
 * Linux guest at a usable speed. Some of our hosts have /dev/kvm as
 * nested KVM-PVM, which does not. So the first AUTO launch in the process
 * decides by trying (lm_qemu_accel_decide): no usable /dev/kvm means TCG;
 * otherwise a throwaway probe VM boots the same kernel and initrd under
 * KVM, and KVM is chosen only if the guest opened its agent port within
 * the deadline (kvm_probe_timeout_ms). The choice and its reason are
 * logged once and kept for the process (a destination cannot be probed by
 * booting it); each VM reports its own (lm_qemu_vm_accel). Under TCG the
 * kernel command line gets tsc_early_khz=<host kHz>: without it microvm
 * hangs at boot about half the time on a loaded host.
 *
 * Every wait has a deadline; every failure of launch or boot kills QEMU
 * (SIGKILL through the pidfd, then reaped) before returning.
 *
 * Events: QMP events of the VM become typed lm_qemu_event_t values for
 * on_event, on the loop thread, in QEMU's order, plus two of ours:
 * LM_QEMU_EV_BLACKOUT_START (the source stopped the guest to finish an
 * outgoing migration: QEMU's STOP while migrating) and LM_QEMU_EV_EXITED
 * (QEMU reaped; always the last event). The callback must not block or
 * call the synchronous functions below (they return -EDEADLK there). The
 * state the waiting functions look at is updated before the event goes
 * to on_event, so a wait may return before the callback for the same
 * event has run.
 *
 * DESIGN / threads: the functions below wait, so they run on any thread
 * but the VM's loop thread. Several threads may call them for one VM at
 * once (QMP commands are serialised by QEMU; VM state is under a mutex),
 * except lm_qemu_vm_destroy, which must be the last call. Fault points:
 * "qemu.launch" (launch fails as if QEMU had not started), "qemu.boot".
 */
#ifndef LM_HCS_QEMU_VM_H
#define LM_HCS_QEMU_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hcs/qemu/loop.h"
#include "hcs/qemu/qmp.h"

#define LM_QEMU_MAX_DISKS 16
#define LM_QEMU_AGENT_PORT "lmshim.agent" /* the virtserialport's name */

typedef struct lm_qemu_vm lm_qemu_vm_t;
struct lm_qemu_event;
typedef struct lm_qemu_migrate_params lm_qemu_migrate_params_t; /* migrate.h */

enum lm_qemu_machine {
	LM_QEMU_MICROVM = 0,    /* virtio-mmio devices; boots fastest */
	LM_QEMU_Q35 = 1,        /* PCI (virtio-*-pci), SeaBIOS */
};

enum lm_qemu_accel {
	LM_QEMU_ACCEL_AUTO = 0, /* KVM if it boots the guest in time, else TCG */
	LM_QEMU_ACCEL_KVM = 1,
	LM_QEMU_ACCEL_TCG = 2,
};

typedef struct lm_qemu_disk {
	const char *id;         /* QEMU's node and device id, [A-Za-z][A-Za-z0-9_-]*,
				   at most 31 characters, unique in the VM */
	const char *serial;     /* virtio-blk serial the guest sees in
				   /sys/block/vdX/serial (at most 20 of
				   [A-Za-z0-9_.-]), NULL none */
	const char *path;       /* raw image file or block device */
	bool read_only;
	unsigned slot;          /* q35: its root port (rpN); 0: its index in
				   the config's disks */
} lm_qemu_disk_t;

/* Strings are copied by launch. Zero means "default" for every number. */
typedef struct lm_qemu_vm_config {
	const char *name;       /* for logs, QEMU's -name and thread names:
				   [A-Za-z0-9_.-], at most 63 */
	const char *qemu;       /* the binary; NULL: $LM_QEMU, else
				   qemu-system-x86_64 from PATH */
	enum lm_qemu_machine machine;
	unsigned memory_mib;    /* >= 16 */
	unsigned vcpus;         /* 1..64; 0 means 1 */
	const char *cpu;        /* -cpu model, NULL: QEMU's default (the same
				   on both sides of a migration) */
	const char *kernel;     /* required */
	const char *initrd;     /* NULL none */
	const char *cmdline;    /* appended to "console=ttyS0 quiet panic=-1" */
	const char *agent_socket; /* path of the agent chardev (a listening
				   unix socket QEMU creates), NULL: no agent
				   port (then boot cannot wait for it) */
	const lm_qemu_disk_t *disks;
	unsigned n_disks;       /* <= LM_QEMU_MAX_DISKS */
	int incoming_fd;        /* >= 0: the VM is a migration destination
				   and reads the stream from this connected
				   socket (QEMU gets its own copy; the caller
				   keeps and closes its fd); -1: none.
				   Note: 0 is a valid fd, so set -1. */
	bool incoming_later;    /* with incoming_fd -1: a migration
				   destination whose stream comes later,
				   through lm_qemu_migrate_incoming */
	const lm_qemu_migrate_params_t *incoming_params; /* applied before the
				   incoming stream is accepted (capabilities
				   that must match the source), NULL none */
	enum lm_qemu_accel accel;
	unsigned qmp_timeout_ms;       /* QEMU started and negotiated QMP;
					  default 10000 */
	unsigned kvm_probe_timeout_ms; /* AUTO: the KVM probe's boot deadline;
					  default 10000 */
	const char *console_log; /* the console goes to this file (appended)
				    instead of the tail buffer; NULL */
	void (*on_event)(void *arg, const struct lm_qemu_event *ev);
	void *event_arg;
	lm_qemu_loop_t *loop;   /* NULL: the VM makes and owns its own */
} lm_qemu_vm_config_t;

/* QEMU's run state (query-status "status"), the ones we tell apart. */
enum lm_qemu_runstate {
	LM_QEMU_RS_OTHER = 0,   /* any other (see status text) */
	LM_QEMU_RS_PRELAUNCH,   /* -S, never ran */
	LM_QEMU_RS_RUNNING,
	LM_QEMU_RS_PAUSED,      /* stopped by us (or after an incoming migration) */
	LM_QEMU_RS_INMIGRATE,   /* destination waiting for / reading the stream */
	LM_QEMU_RS_FINISH_MIGRATE, /* source in its blackout */
	LM_QEMU_RS_POSTMIGRATE, /* source after a completed migration */
	LM_QEMU_RS_SHUTDOWN,
	LM_QEMU_RS_GUEST_PANICKED,
	LM_QEMU_RS_INTERNAL_ERROR,
};

typedef struct lm_qemu_status {
	bool running;
	enum lm_qemu_runstate state;
	char text[32];          /* QEMU's word for it */
} lm_qemu_status_t;

/* Migration status (QEMU's MigrationStatus), see migrate.h. */
enum lm_qemu_mig_status {
	LM_QEMU_MIG_NONE = 0,
	LM_QEMU_MIG_SETUP,
	LM_QEMU_MIG_CANCELLING,
	LM_QEMU_MIG_CANCELLED,
	LM_QEMU_MIG_ACTIVE,
	LM_QEMU_MIG_POSTCOPY_ACTIVE,
	LM_QEMU_MIG_POSTCOPY_PAUSED,
	LM_QEMU_MIG_POSTCOPY_RECOVER,
	LM_QEMU_MIG_COMPLETED,
	LM_QEMU_MIG_FAILED,
	LM_QEMU_MIG_COLO,
	LM_QEMU_MIG_PRE_SWITCHOVER,
	LM_QEMU_MIG_DEVICE,
	LM_QEMU_MIG_WAIT_UNPLUG,
	LM_QEMU_MIG_UNKNOWN,    /* a word this build does not know */
};

enum lm_qemu_event_type {
	LM_QEMU_EV_OTHER = 0,   /* an event not listed here (name says which) */
	LM_QEMU_EV_STOP,        /* the guest stopped running */
	LM_QEMU_EV_RESUME,      /* the guest runs */
	LM_QEMU_EV_SHUTDOWN,    /* QEMU is shutting the VM down (u.shutdown) */
	LM_QEMU_EV_POWERDOWN,   /* the power button was pressed (by us) */
	LM_QEMU_EV_RESET,
	LM_QEMU_EV_GUEST_PANICKED, /* u.panic */
	LM_QEMU_EV_MIGRATION,   /* status change (u.migration) */
	LM_QEMU_EV_MIGRATION_PASS, /* a new RAM pass began (u.pass) */
	LM_QEMU_EV_BLACKOUT_START, /* ours: the source stopped the guest to
				      finish an outgoing migration */
	LM_QEMU_EV_AGENT_PORT,  /* the guest opened/closed the agent port (u.port) */
	LM_QEMU_EV_QMP_CLOSED,  /* the monitor's stream ended (u.closed) */
	LM_QEMU_EV_EXITED,      /* QEMU was reaped (u.exited); the last event */
};

typedef struct lm_qemu_exit {
	bool exited;            /* reaped */
	bool signaled;          /* killed by `code` (a signal number) */
	int code;               /* exit status or signal number */
} lm_qemu_exit_t;

typedef struct lm_qemu_event {
	enum lm_qemu_event_type type;
	const char *name;       /* QMP's event name, or ours ("BLACKOUT_START",
				   "QMP_CLOSED", "EXITED") */
	uint64_t qemu_ts_us;    /* QEMU's timestamp (wall clock), 0 for ours */
	uint64_t mono_ns;       /* when we received it (lm_now_ns) */
	union {
		struct { bool guest; char reason[32]; } shutdown; /* reason:
					 "guest-shutdown", "host-qmp-quit",
					 "guest-reset", ... */
		struct { char action[16]; } panic;
		struct { enum lm_qemu_mig_status status; } migration;
		struct { uint64_t pass; } pass;
		struct { bool open; } port;
		struct { int err; } closed;
		lm_qemu_exit_t exited;
	} u;
} lm_qemu_event_t;

/* Thread: any but a VM loop's. Validates cfg, launches QEMU and waits (at
 * most qmp_timeout_ms) until its monitor is negotiated; then turns on
 * QEMU's migration events and, for a destination, applies
 * incoming_params and starts reading the incoming stream. The guest is
 * not running. 0 and *out; or a negative errno with the reason in errbuf
 * (may be NULL), QEMU killed and reaped, nothing left: -EINVAL (config),
 * -EBADF (incoming_fd not open), -ENOENT (no QEMU binary, kernel or initrd), -ETIMEDOUT, -ECHILD (QEMU
 * exited: its stderr is in the reason), -EPIPE/-EPROTO (its monitor),
 * -EREMOTEIO (QEMU refused a setup command). */
int lm_qemu_vm_launch(lm_qemu_vm_t **out, const lm_qemu_vm_config_t *cfg,
		      char *errbuf, size_t errlen);

/* Thread: any but the loop's. Runs a launched (non-incoming) guest for the
 * first time and, if timeout_ms > 0 and the VM has an agent port, waits
 * until the guest opened it. 0; -EPERM (a destination, or not in
 * prelaunch); -ETIMEDOUT, -ECHILD (QEMU exited), -EPIPE: the guest did not
 * come up, and QEMU has been killed. errbuf as for launch. */
int lm_qemu_vm_boot(lm_qemu_vm_t *vm, unsigned timeout_ms, char *errbuf, size_t errlen);

/* lm_qemu_vm_cont flags. */
#define LM_QEMU_CONT_AFTER_MIGRATION 1u /* resume a source whose outgoing
					   migration completed (only when the
					   destination's copy is known dead
					   and never ran) */

/* Thread: any but the loop's. Resumes the guest ("cont"). Refused with
 * -EBUSY on a destination whose incoming stream has not completed, and
 * with -EPERM on a source after a completed outgoing migration (unless
 * LM_QEMU_CONT_AFTER_MIGRATION). QMP errors as lm_qmp_exec. */
int lm_qemu_vm_cont(lm_qemu_vm_t *vm, unsigned flags, unsigned timeout_ms);

/* Thread: any but the loop's. Pauses the guest ("stop"); returns once it
 * no longer runs. */
int lm_qemu_vm_stop(lm_qemu_vm_t *vm, unsigned timeout_ms);

enum lm_qemu_shutdown_how {
	LM_QEMU_SHUTDOWN_GUEST = 1,  /* the guest powered off (power button) */
	LM_QEMU_SHUTDOWN_QUIT,       /* QEMU quit when told to */
	LM_QEMU_SHUTDOWN_KILLED,     /* SIGKILL was needed */
	LM_QEMU_SHUTDOWN_ALREADY,    /* QEMU had already exited */
};

/* Thread: any but the loop's. Graceful stop: the power button
 * (system_powerdown), at most grace_ms for the guest to power off, then
 * "quit" (2 s), then SIGKILL. Returns once QEMU is reaped: 0 with *how
 * (may be NULL), or -ETIMEDOUT if even SIGKILL left no exit within 5 s
 * (never seen; the process is then a zombie we keep trying to reap). */
int lm_qemu_vm_shutdown(lm_qemu_vm_t *vm, unsigned grace_ms,
			enum lm_qemu_shutdown_how *how);

/* Thread: any but the loop's. SIGKILL (through the pidfd) and wait for the
 * reap, at most timeout_ms. 0 (also if QEMU had exited), -ETIMEDOUT. */
int lm_qemu_vm_kill(lm_qemu_vm_t *vm, unsigned timeout_ms);

/* Thread: any but the loop's. Waits at most timeout_ms (0: just look) for
 * QEMU to exit. 0 and *out (may be NULL), or -ETIMEDOUT. */
int lm_qemu_vm_wait_exit(lm_qemu_vm_t *vm, unsigned timeout_ms, lm_qemu_exit_t *out);

/* Thread: any but the loop's, last. Kills QEMU if it still runs, reaps
 * it, closes the monitor, stops the loop if the VM owns it, frees. No
 * event is delivered after it returns. NULL is a no-op. */
void lm_qemu_vm_destroy(lm_qemu_vm_t *vm);

/* Thread: any. QEMU's pid (set at launch, never changes). */
pid_t lm_qemu_vm_pid(const lm_qemu_vm_t *vm);

/* Thread: any but the loop's. query-status. */
int lm_qemu_vm_status(lm_qemu_vm_t *vm, lm_qemu_status_t *out, unsigned timeout_ms);

typedef struct lm_qemu_vm_info {
	pid_t pid;              /* QEMU's pid (for logs; signal through us) */
	unsigned qemu_version;  /* e.g. 70222 for 7.2.22 */
	enum lm_qemu_accel accel; /* KVM or TCG, as launched */
	char accel_reason[160]; /* why that accelerator */
	uint64_t memory_bytes;  /* query-memory-size-summary base-memory */
	unsigned vcpus;         /* query-cpus-fast entries */
	int vcpu_tids[8];       /* host thread ids of the first vCPUs */
	bool agent_open;        /* the guest holds the agent port open */
	lm_qemu_exit_t exit;    /* exited yet? */
} lm_qemu_vm_info_t;

/* Thread: any but the loop's. What QEMU says (memory, vCPUs) and what we
 * know (pid, accelerator, exit). */
int lm_qemu_vm_info(lm_qemu_vm_t *vm, lm_qemu_vm_info_t *out, unsigned timeout_ms);

/* Thread: any but the loop's. Hot-plugs disk `d` (its image's file and
 * raw nodes, then a virtio-blk-pci device) into root port `slot` of a q35
 * machine; a failure removes what it added. 0; -ENOTSUP on microvm (no
 * hot-plug), -ENOSPC for a slot out of range, else QMP's error (errbuf
 * says it). The caller keeps the slots in the order a migration's
 * destination is launched with (disk i at root port i). */
int lm_qemu_vm_disk_add(lm_qemu_vm_t *vm, const lm_qemu_disk_t *d, unsigned slot,
			unsigned timeout_ms, char *errbuf, size_t errlen);

/* Thread: any but the loop's. Unplugs disk `id` (added by launch or
 * lm_qemu_vm_disk_add): device_del, then waits until the guest let the
 * device go (a PCIe unplug goes through the guest's hot-plug driver,
 * which waits 5 s for the button press to be taken back), then removes
 * its nodes. 0; -ETIMEDOUT when the guest did not let it go within
 * timeout_ms (the disk stays, in use), else QMP's error (errbuf). */
int lm_qemu_vm_disk_remove(lm_qemu_vm_t *vm, const char *id, unsigned timeout_ms, char *errbuf,
			   size_t errlen);

/* Thread: any. The accelerator the VM runs with and why. */
enum lm_qemu_accel lm_qemu_vm_accel(lm_qemu_vm_t *vm, const char **reason);

/* Thread: any. The VM's QMP client, for commands this API does not wrap
 * (valid until destroy). */
lm_qmp_t *lm_qemu_vm_qmp(lm_qemu_vm_t *vm);

/* Thread: any. The VM's name (as configured). */
const char *lm_qemu_vm_name(const lm_qemu_vm_t *vm);

/* Thread: any. Copies the last bytes of the console (or of QEMU's stderr)
 * into buf, NUL-terminated; returns their count. *total (may be NULL)
 * gets how many bytes were ever seen. */
size_t lm_qemu_vm_console(lm_qemu_vm_t *vm, char *buf, size_t cap, uint64_t *total);
size_t lm_qemu_vm_stderr(lm_qemu_vm_t *vm, char *buf, size_t cap, uint64_t *total);

/* Thread: any. Names, for logs. */
const char *lm_qemu_accel_name(enum lm_qemu_accel a);
const char *lm_qemu_runstate_name(enum lm_qemu_runstate s);

/* Thread: any but a VM loop's. The accelerator an AUTO launch of `cfg`
 * uses, deciding it now (a KVM probe boot, see above) if the process has
 * not yet; explicit KVM/TCG configs are returned as they are. reason gets
 * why. Serialised: concurrent callers wait for one decision. */
enum lm_qemu_accel lm_qemu_accel_decide(const lm_qemu_vm_config_t *cfg,
					char *reason, size_t reasonlen);

/* For tests only: forget the decision, and probe with `dev` instead of
 * /dev/kvm and, if probe_accel is TCG, probe with TCG in place of KVM
 * (NULL / AUTO restore the defaults). Thread: any, with no launch running. */
void lm__qemu_accel_test_reset(const char *dev, enum lm_qemu_accel probe_accel);

#endif
