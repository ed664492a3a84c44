/*
 * backend.h: the seam between the compute service / transfer engine and a
 * VM backend ("sim" in hcs/sim/, "kvm" in hcs/kvm/).
 *
 * The transfer engine sees a VM only as "memory regions + dirty log +
 * stop/start + state blob"; the compute service adds lifecycle and
 * statistics. A backend is a const ops table (lm_backend_ops_t) plus an
 * opaque instance (lm_vm_t, defined privately by each backend).
 *
 * Registry: lm_backend_find("sim") / lm_backend_find("kvm") (registry.c).
 *
 * DESIGN / thread contracts. Three kinds of threads touch a VM:
 *   - the hcs operation thread of the compute system ("owner"): create,
 *     destroy, start, pause, resume, terminate, state save/load, compat;
 *   - the memory-transfer thread: regions (pointers are stable from create
 *     to destroy), dirty_log_*, set_throttle, stats, and pause/resume/
 *     state_save/state_load during the blackout (the owner does not call
 *     lifecycle ops while a transfer runs; hcs guarantees that);
 *   - the backend's own vCPU / workload threads, which write guest memory
 *     concurrently with dirty_log_fetch and with the transfer thread
 *     reading memory.
 * Every op below says which of these may call it. No op is called
 * concurrently with destroy. Results are 0 (or a count) or a negative errno.
 */
#ifndef LM_HCS_BACKEND_H
#define LM_HCS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LM_PAGE_SIZE 4096u
#define LM_MAX_REGIONS 8
#define LM_STATE_BLOB_MAX (1u << 20) /* upper bound of any state blob */

typedef struct lm_vm lm_vm_t; /* backend instance, opaque */

/* Guest workload of the sim backend (kvm may interpret rate/pattern for
 * its own guest code or ignore them). */
enum lm_workload_pattern {
	LM_PATTERN_UNIFORM = 0,
	LM_PATTERN_HOTSET = 1,
	LM_PATTERN_SEQUENTIAL = 2,
};

/* Initial memory content (sim; used by tests and benchmarks). */
enum lm_mem_fill {
	LM_FILL_ZERO = 0,   /* never written: holes in the memfd */
	LM_FILL_RANDOM = 1, /* every page incompressible */
	LM_FILL_ZERO90 = 2, /* 90% of pages zero (holes), 10% random */
};

/* Parsed compute-system document (hcs parses the JSON; backends get this).
 * `document_json` is the whole document for backend-specific keys; it
 * stays valid only during create (copy what you keep). */
typedef struct lm_vm_config {
	char id[128];                  /* "Id" / VM id */
	uint64_t memory_bytes;         /* multiple of LM_PAGE_SIZE */
	unsigned vcpus;                /* >= 1 */
	char backend[16];              /* "sim" or "kvm" */
	bool incoming;                 /* created as a migration destination:
					  populate memory now, do not start
					  the guest until state_load+start */
	struct {
		unsigned threads;          /* workload threads, >= 1 */
		double rate_mbps;          /* MB/s dirtied; 0 idle; <0 unlimited */
		enum lm_workload_pattern pattern;
		double hot_fraction;       /* hot set size / memory (0..1] */
		uint64_t seed;
		enum lm_mem_fill fill;
	} workload;
	const char *document_json;
	char *why;                     /* create may explain a failure here in
					  one line (why_cap bytes; "" none) */
	size_t why_cap;
} lm_vm_config_t;

/* One guest-memory region. `host` stays valid and fixed from create to
 * destroy. `fd` is the backing memfd, mapped MAP_SHARED at `host` (or -1),
 * with the region at `fd_offset`: the engine may use mincore() on `host`
 * or lseek(SEEK_DATA/SEEK_HOLE) on `fd` to find never-written (zero)
 * pages without reading them. */
typedef struct lm_mem_region {
	void *host;
	uint64_t gpa;              /* guest-physical base, page aligned */
	uint64_t size;             /* bytes, page multiple */
	int fd;                    /* memfd backing or -1 */
	uint64_t fd_offset;
	bool populate_at_create;   /* backend populates it at create when
				      incoming (destination) */
	bool zero_when_incoming;   /* on an incoming VM the region is
				      all zeros until the transfer writes it
				      (lets the destination skip clearing
				      ZERO pages of pass 1); leave false if
				      create loads anything into it */
} lm_mem_region_t;

/* Guest statistics (what the guest itself counts). */
typedef struct lm_guest_stats {
	uint64_t iterations;       /* workload iterations (sum of threads) */
	uint64_t checksum;         /* running checksum of what it wrote
				      (combined over threads) */
	uint64_t pages_written;    /* total page writes */
	double dirty_rate_mbps;    /* achieved, averaged over running time */
	unsigned throttle_pct;     /* current throttle (0 = full speed) */
	bool running;              /* workload/vCPUs currently running */
} lm_guest_stats_t;

/* The VMM's own migration stream (stream_* ops below). */
typedef struct lm_vmm_stream_params {
	unsigned downtime_ms;       /* the blackout target (0: the VMM's default) */
	uint64_t max_bandwidth;     /* bytes/s (0: unlimited by us) */
	bool auto_converge;         /* throttle a guest that dirties faster
				       than the link drains */
	unsigned throttle_initial;  /* auto-converge: first step, percent (0: default) */
	unsigned throttle_increment;/* auto-converge: step, percent (0: default) */
	bool on_link;               /* the VMM speaks on the migration link
				       itself (link_fd; ops.stream_on_link) */
	int link_fd;                /* with on_link: the engine's connected
				       socket; the VMM gets its own copy */
} lm_vmm_stream_params_t;

enum lm_vmm_stream_state {
	LM_VS_IDLE = 0,             /* no stream yet */
	LM_VS_ACTIVE,               /* streaming */
	LM_VS_COMPLETED,            /* source: all sent, the guest stays stopped;
				       destination: all loaded, not running */
	LM_VS_FAILED,               /* error[] says why */
	LM_VS_CANCELLED,
};

typedef struct lm_vmm_stream_status {
	enum lm_vmm_stream_state state;
	bool blackout;              /* source: the VMM stopped the guest for
				       its last pass (stays true after) */
	uint64_t blackout_ns;       /* ... when it did (lm_now_ns), 0 unknown */
	uint64_t total_bytes;       /* guest memory */
	uint64_t transferred;       /* stream bytes so far */
	uint64_t remaining;         /* memory bytes still to send (estimate) */
	uint64_t passes;            /* the VMM's dirty passes so far */
	double dirty_rate_mbps;     /* the VMM's measured dirty rate, 0 unknown */
	unsigned throttle_pct;      /* the VMM's current throttle */
	uint64_t downtime_ms;       /* after completion: the VMM's figure */
	uint64_t total_ms;          /* after completion: the VMM's own time from
				       its migrate to completed, 0 unknown */
	uint64_t busy_ns;           /* destination: the CPU time its VMM used so
				       far (loading a stream shows as this
				       growing), 0 unknown */
	char error[128];
} lm_vmm_stream_status_t;

typedef struct lm_backend_ops {
	const char *name; /* "sim", "kvm" */

	/* Thread: owner. Creates the VM (memory mapped, populated if
	 * cfg->incoming, guest not running). */
	int (*create)(lm_vm_t **out, const lm_vm_config_t *cfg);
	/* Thread: owner. Stops everything and frees. NULL is a no-op. */
	void (*destroy)(lm_vm_t *vm);

	/* Thread: owner (or transfer thread during blackout for pause/
	 * resume). start: first run (or, on a destination, run from the
	 * loaded state). pause returns only once no vCPU/workload thread
	 * writes memory any more. resume undoes pause. terminate stops the
	 * guest for good (memory stays mapped until destroy). All are
	 * idempotent: pausing a paused VM returns 0. */
	int (*start)(lm_vm_t *vm);
	int (*pause)(lm_vm_t *vm);
	int (*resume)(lm_vm_t *vm);
	int (*terminate)(lm_vm_t *vm);

	/* Thread: any. Fills *out with a pointer to the VM's region array
	 * (stable until destroy) and returns the count (1..LM_MAX_REGIONS). */
	int (*regions)(lm_vm_t *vm, const lm_mem_region_t **out);

	/* Thread: transfer. Start / stop dirty tracking of all regions.
	 * start clears the log. */
	int (*dirty_log_start)(lm_vm_t *vm);
	int (*dirty_log_stop)(lm_vm_t *vm);
	/* Thread: transfer (concurrently with running vCPUs). Fetch-and-clear
	 * the dirty log of region `idx` and OR it into `bitmap` (bit i of word
	 * i/64 = page i of the region; `words` = ceil(pages/64)). A page
	 * written after its bit was cleared is reported again by a later
	 * fetch (write-then-mark or mark-then-write with the page re-read
	 * after the fetch: either way, no write is lost). Returns the number
	 * of dirty pages found. */
	int64_t (*dirty_log_fetch)(lm_vm_t *vm, unsigned idx, uint64_t *bitmap,
				   size_t words);

	/* Thread: transfer or owner. Slow the guest: `percent` of vCPU time
	 * is taken away (0 = full speed, 99 max). */
	int (*set_throttle)(lm_vm_t *vm, unsigned percent);

	/* Thread: owner or transfer; VM paused. Writes the versioned
	 * vCPU/device/workload state into buf; returns its size, or -ENOSPC
	 * if cap is too small. */
	int (*state_save)(lm_vm_t *vm, void *buf, size_t cap);
	/* Thread: owner or transfer; VM not running. Loads a blob written by
	 * state_save of a compatible VM; -EINVAL / -EPROTO if it does not
	 * parse or its version is unknown. */
	int (*state_load)(lm_vm_t *vm, const void *buf, size_t len);

	/* Thread: any. Compatibility data of this VM (backend name, version,
	 * CPU features...): returns its size or -ENOSPC. */
	int (*compat_get)(lm_vm_t *vm, void *buf, size_t cap);
	/* Thread: any. 0 if a VM with `buf` compat data can migrate into this
	 * one, else -EPROTONOSUPPORT (logged with the reason). */
	int (*compat_check)(lm_vm_t *vm, const void *buf, size_t len);
	/* Thread: any. Optional: compat_check that also says why in one line
	 * (which the transfer's handshake sends back to the source). */
	int (*compat_check_why)(lm_vm_t *vm, const void *buf, size_t len, char *why,
				size_t why_cap);

	/* Thread: owner. Optional: attaches a read-only disk to the running
	 * VM (a container layer: a directory packed into an image, or an
	 * image file), which the guest finds by `serial`, in slot `slot`
	 * (where the VM document says it is: a migration's destination is
	 * launched with it there); it joins the compat data. -ENOTSUP when
	 * the VM cannot, with `why`. */
	int (*disk_add)(lm_vm_t *vm, const char *serial, const char *path, unsigned slot,
			char *why, size_t why_cap);
	/* Thread: owner. Optional: detaches the disk of `serial` added by
	 * create or disk_add (the guest no longer uses it: the container on
	 * it is gone); it leaves the compat data and its slot is free. */
	int (*disk_remove)(lm_vm_t *vm, const char *serial, char *why, size_t why_cap);

	/* Thread: any. */
	int (*stats)(lm_vm_t *vm, lm_guest_stats_t *out);

	/* The VMM's own stream (NULL for sim and kvm). A backend whose VMM
	 * keeps the dirty log and the device state to itself (QEMU) cannot
	 * give the engine its memory: it sets these three, and leaves
	 * regions, dirty_log_* and state_* unused (they may be NULL). The
	 * engine then carries the VMM's migration stream inside its own
	 * records (hcs/PROTOCOL.md, "The VMM's stream"), so the handshake,
	 * keepalives, aborts and the handover are the same for every
	 * backend. */
	/* Thread: transfer. Source: the VMM starts its outgoing migration
	 * with `p` and writes its stream to a socket whose other end is
	 * returned. Destination (a VM created incoming; p NULL or only
	 * on_link/link_fd set): the VMM starts reading its incoming stream
	 * from a socket whose other end is returned. Either way the fd stays
	 * the backend's (closed at destroy or at the next stream_open); the
	 * engine makes it non-blocking and only reads (source) or writes
	 * (destination) it. With p->on_link (only where stream_on_link):
	 * the VMM writes (source) or reads (destination) its stream on
	 * p->link_fd itself, through a copy of it, and 0 is returned. A
	 * negative errno with the reason logged. */
	int (*stream_open)(lm_vm_t *vm, const struct lm_vmm_stream_params *p);
	/* stream_open takes on_link: the engine may hand the link to the
	 * VMM for its stream (hcs/PROTOCOL.md, "The VMM on the link") */
	bool stream_on_link;
	/* Thread: transfer, or its status thread (never at the same time as
	 * another stream_* call). Where the VMM's migration stands (a VMM
	 * query, or a few: may wait while the VMM finishes its stream). */
	int (*stream_status)(lm_vm_t *vm, struct lm_vmm_stream_status *out);
	/* Thread: any. May be NULL. A descriptor that polls readable when
	 * the VMM's stream may have changed (its status, the blackout's
	 * start, the VMM gone): the engine waits on it instead of asking
	 * stream_status every few ms, and reads it (8 bytes) to clear it:
	 * it must be O_NONBLOCK (an eventfd made with EFD_NONBLOCK). Only a
	 * hint: the answer is stream_status's. The backend's, valid until
	 * destroy; -1 when there is none. */
	int (*stream_event_fd)(lm_vm_t *vm);
	/* Thread: transfer. Source: the outgoing migration is over without
	 * a handover: cancel it if it still runs, and leave the guest running
	 * as it was before the stream (the VMM's cancel resumes a guest it
	 * stopped; a stream that already completed is resumed here).
	 * Destination: stop reading (the VM is then destroyed). */
	int (*stream_abort)(lm_vm_t *vm);
} lm_backend_ops_t;

/* Thread: any. The backend registered under `name`, or NULL. */
const lm_backend_ops_t *lm_backend_find(const char *name);

extern const lm_backend_ops_t lm_hcs_sim_ops;
extern const lm_backend_ops_t lm_hcs_kvm_ops;
extern const lm_backend_ops_t lm_hcs_qemu_ops;

#endif
