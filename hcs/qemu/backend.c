/*
 * backend.c: the "qemu" backend behind the hcs seam (hcs/backend.h), an
 * adapter over one QEMU process per VM (vm.h) and QEMU's own live
 * migration (migrate.h).
 *
 * QEMU keeps the guest's memory, its dirty log and its device state to
 * itself, so this backend has no regions, dirty log or state blob for the
 * engine (those ops return -ENOTSUP, as does set_throttle: QEMU throttles
 * with auto-converge): it migrates through the VMM's own stream instead
 * (stream_open / stream_status / stream_abort). On a unix link the engine
 * lends the link itself (stream_on_link): the source's QEMU writes its
 * stream on a copy of it and the destination's reads it there. Otherwise
 * the source's QEMU writes into one end of a socketpair and the engine
 * reads the other, the destination's QEMU reads one end of a socketpair
 * and the engine writes the other, and the engine carries those bytes in
 * its own records. Either way the handshake, aborts and the handover are
 * the engine's (hcs/PROTOCOL.md, "The VMM's stream", "The VMM on the
 * link"). A destination is launched with `-incoming defer` and takes its
 * stream at stream_open (migrate-incoming fd:).
 *
 * The document: the seam's memory size (a MiB multiple) and vCPU count,
 * and "VirtualMachine": {"Qemu": {...}} for the rest (Kernel, Initrd,
 * Machine, Accel, Cpu, Cmdline, BootTimeoutMs, Rootfs; see parse_doc).
 * Kernel, initrd and the containers' image (a read-only virtio-blk disk
 * with serial "rootfs") default to $LM_QEMU_KERNEL / $LM_QEMU_INITRD /
 * $LM_QEMU_ROOTFS, else to the build's guest (guest/: LM_GUEST_KERNEL_DIR/
 * vmlinuz, LM_GUEST_INITRAMFS, LM_GUEST_ROOTFS), resolved on each host. The
 * guest agent's chardev socket lives in a private directory (mkdtemp,
 * 0700, in $TMPDIR or /tmp) that destroy removes.
 *
 * Lifecycle: create launches QEMU with the guest not running (-S); start
 * boots it (and waits for the guest to open its agent port), or, on a
 * destination, runs it once its incoming stream completed (from then on
 * it is an ordinary VM, which may migrate on to a third host); pause/resume
 * are QMP stop/cont; terminate kills QEMU. Every failure after the launch
 * kills QEMU (vm.c does for launch and boot; create's own failures destroy
 * it), so no QEMU process outlives a failed call or destroy.
 *
 * DESIGN / threads (the seam's three kinds): the hcs operation thread
 * (owner) runs create, destroy, start, pause, resume, terminate; the
 * memory-transfer thread runs stream_* (and, on failure, resume through
 * the engine); stats and compat_* come from any thread. All of them call
 * into vm.h / migrate.h, which wait and may run on any thread but the VM's
 * loop thread (QMP commands are serialised by QEMU). Our own state is
 * small: what create decided is immutable afterwards; `mu` guards the
 * lifecycle flags, the stream fd, and the disk list with its compat text
 * (disk_add, on the owner's thread, appends a hot-plugged disk); `blackout` is an atomic written by
 * on_event on the VM's loop thread (it only sets it) and by the transfer
 * thread; `last` is the transfer thread's alone. Nothing here runs on the
 * loop thread but on_event, which never blocks.
 *
 * QEMU answers no QMP command while it holds its big lock, which the
 * source does for its whole blackout (the guest stopped, the last pass
 * and the device state sent): stream_status then answers from the events
 * instead of asking (blackout_answer), so that the engine's loop keeps
 * its pace through the blackout.
 */
#include "hcs/qemu/backend.h"
#include "hcs/backend.h"
#include "hcs/qemu/disks.h"
#include "hcs/qemu/migrate.h"
#include "hcs/qemu/vm.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "util/clock.h"
#include "util/log.h"

#define MOD "hcs.qemu"
#define MiB (1024ull * 1024ull)
#define OP_MS 5000              /* one QMP command (stop, cont, set) */
#define STATUS_MS 2000          /* stream_status / stats: one query */
#define IN_QUERY_MS 500         /* destination: query-migrate at least this often */
#define IN_CPU_MS 50            /* ... and its CPU time, at most this often */
#define COMPLETED_FIGURES_MS 200 /* source: completed, its figures asked until */
#define ABORT_MS 10000          /* migrate_cancel until cancelled */
#define KILL_MS 5000            /* SIGKILL until reaped */
#define BOOT_TCG_MS 60000       /* default boot bound under TCG */
#define BOOT_KVM_MS 20000       /* ... and under KVM */
#define UNLIMITED_BW (1ll << 40) /* "unlimited by us": QEMU's own default
				    max-bandwidth is 32 MiB/s */
#define CMDLINE_MAX 1024

#ifndef LM_GUEST_KERNEL_DIR
#define LM_GUEST_KERNEL_DIR ""
#endif
#ifndef LM_GUEST_INITRAMFS
#define LM_GUEST_INITRAMFS ""
#endif
#ifndef LM_GUEST_ROOTFS
#define LM_GUEST_ROOTFS ""
#endif

struct lm_vm {
	/* immutable after create */
	lm_qemu_vm_t *q;
	char name[64];              /* QEMU's name and ours in logs: the Id,
				       made safe (safe_name) */
	char dir[64];               /* the private directory */
	char agent[96];             /* dir/agent.sock */
	atomic_bool incoming;       /* created as a migration destination, until
				       its guest starts (qemu_start): from then
				       on an ordinary VM, which may migrate on */
	enum lm_qemu_machine machine;
	unsigned memory_mib, vcpus;
	char cpu[64];               /* "" = QEMU's default model */
	char cpu_compat[64];        /* the compat data's cpu= */
	unsigned boot_ms;           /* boot bound (agent port) */

	int evfd;                   /* eventfd: on_event writes it on a change
				       of the stream (stream_event_fd) */
	/* transfer thread and on_event: sticky for the current outgoing
	 * stream (stream_open clears it before QEMU starts). A flag with no
	 * data behind it: the default (seq_cst) order, no edge needed */
	atomic_bool blackout;
	_Atomic uint64_t blackout_ns; /* ... the guest's STOP (lm_now_ns), 0 unknown */
	/* transfer thread only: the source's last full status, the answer
	 * while QEMU is in its blackout (see stream_status) */
	lm_vmm_stream_status_t last;
	uint64_t in_query_ns;       /* transfer thread: destination, the last
				       query-migrate (incoming_answer) */
	uint64_t in_cpu_ns, in_cpu_at; /* ... and QEMU's CPU time, when read */

	/* under mu */
	pthread_mutex_t mu;
	int stream_fd;              /* ours: source, the end the engine reads;
				       destination, the end it writes; -1 */
	bool started;               /* start succeeded (the guest ran) */
	bool terminated;            /* terminate ran: QEMU is gone for good */
	bool out_opened;            /* source: stream_open started a migration */
	bool in_opened;             /* destination: stream_open handed the fd */
	bool was_running;           /* source: the guest ran at stream_open */
	bool one_pass;              /* source under TCG: QEMU syncs its dirty
				       log only with the guest stopped
				       (stream_open, stream_status) */
	struct {                    /* the disks by slot (root port): create's
				       and disk_add's, what the compat data
				       names; serial "" = a free slot */
		char serial[21];
		char id[16];        /* QEMU's node id */
		char image[PATH_MAX]; /* the file attached */
		bool made;          /* image made by us (in dir): removed with it */
		uint64_t digest;
	} dsk[LM_QEMU_MAX_DISKS];
	unsigned n_dsk;             /* slots in use */
	char compat[256];           /* compat_get's text (compat_refresh) */
};

/* ---- helpers ---------------------------------------------------------- */

/* Thread: the VM's loop (vm.h: must not block). */
static void on_event(void *arg, const lm_qemu_event_t *ev)
{
	struct lm_vm *vm = arg;
	if (ev->type == LM_QEMU_EV_BLACKOUT_START) {
		atomic_store(&vm->blackout_ns, ev->mono_ns);
		atomic_store(&vm->blackout, true);
	}
	/* the stream's state may have changed: the transfer thread asks
	 * (a full counter only drops the hint; the waiter wakes anyway) */
	if (ev->type == LM_QEMU_EV_BLACKOUT_START || ev->type == LM_QEMU_EV_MIGRATION ||
	    ev->type == LM_QEMU_EV_QMP_CLOSED || ev->type == LM_QEMU_EV_EXITED) {
		uint64_t one = 1;
		if (write(vm->evfd, &one, sizeof(one)) < 0) { /* EAGAIN: already signalled */ }
	}
}

static void rm_private_dir(const char *dir)
{
	if (!dir[0])
		return;
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	if (rmdir(dir) < 0)
		lm_log_warn(MOD, "private directory not removed", "dir=%s err=%d", dir, errno);
}

/* QEMU's -name: the Id with anything outside [A-Za-z0-9_.-] made '_'. */
static void safe_name(char *out, size_t cap, const char *id)
{
	size_t n = 0;
	for (const char *p = id; *p && n + 1 < cap; p++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
		out[n++] = ok ? c : '_';
	}
	out[n] = 0;
	if (!n)
		snprintf(out, cap, "vm");
}

/* The guest is gone (QEMU exited): its exit and the last stderr line. */
static void exit_reason(struct lm_vm *vm, char *out, size_t cap)
{
	lm_qemu_exit_t ex;
	char tail[512];
	if (lm_qemu_vm_wait_exit(vm->q, 0, &ex) != 0) {
		snprintf(out, cap, "QEMU's monitor closed");
		return;
	}
	size_t n = lm_qemu_vm_stderr(vm->q, tail, sizeof(tail), NULL);
	while (n && (tail[n - 1] == '\n' || tail[n - 1] == '\r'))
		tail[--n] = 0;
	char *last = strrchr(tail, '\n');
	snprintf(out, cap, "QEMU exited (%s %d)%s%s", ex.signaled ? "signal" : "status", ex.code,
		 n ? ": " : "", n ? (last ? last + 1 : tail) : "");
}

/* The compat text: the VM's shape and its disks (how many, and one
 * XXH3-64 over each one's slot, serial and image digest). Thread:
 * create's (before anyone sees vm), or under mu. */
static void compat_refresh(struct lm_vm *vm)
{
	XXH3_state_t *dg = XXH3_createState();
	uint64_t h = 0;
	vm->n_dsk = 0;
	for (unsigned i = 0; i < LM_QEMU_MAX_DISKS; i++)
		vm->n_dsk += vm->dsk[i].serial[0] != 0;
	if (dg) {
		XXH3_64bits_reset(dg);
		for (uint32_t i = 0; i < LM_QEMU_MAX_DISKS; i++) {
			if (!vm->dsk[i].serial[0])
				continue;
			XXH3_64bits_update(dg, &i, sizeof(i));
			XXH3_64bits_update(dg, vm->dsk[i].serial, strlen(vm->dsk[i].serial) + 1);
			XXH3_64bits_update(dg, &vm->dsk[i].digest, sizeof(vm->dsk[i].digest));
		}
		h = XXH3_64bits_digest(dg);
		XXH3_freeState(dg);
	}
	snprintf(vm->compat, sizeof(vm->compat), "qemu machine=%s vcpus=%u memory=%" PRIu64
		 " cpu=%s disks=%u:%016" PRIx64, vm->machine == LM_QEMU_Q35 ? "q35" : "microvm",
		 vm->vcpus, (uint64_t)(vm->memory_mib * MiB), vm->cpu_compat, vm->n_dsk, h);
}

/* ---- the document ----------------------------------------------------- */

struct qopts {
	char kernel[PATH_MAX];
	char initrd[PATH_MAX];      /* "" none */
	enum lm_qemu_machine machine;
	enum lm_qemu_accel accel;
	char cpu[64];
	char cmdline[CMDLINE_MAX];
	unsigned boot_ms;           /* 0: by the accelerator */
	char rootfs[PATH_MAX];      /* the containers' image, disk "rootfs"; "" none */
	struct qdisk {              /* "Disks": the containers' own layers */
		char serial[21];    /* what the guest finds it by */
		char path[PATH_MAX]; /* a directory (packed) or an erofs image */
		char id[16];        /* QEMU's node id: disk<slot> */
		char image[PATH_MAX]; /* create: the file attached */
		uint64_t digest;    /* create: its XXH3-64 */
		unsigned slot;      /* "Slot", else its index + 1 */
	} disks[LM_QEMU_MAX_DISKS - 1];
	unsigned n_disks;
};

static int bad_field(const char *id, const char *field, const char *why)
{
	lm_log_error(MOD, "bad document", "id=%s field=VirtualMachine.Qemu.%s why=\"%s\"", id,
		     field, why);
	return -EINVAL;
}

static int get_string(json_t *v, const char *id, const char *field, char *out, size_t cap,
		      bool may_be_empty);

static bool serial_ok(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 20 || !strcmp(s, "rootfs"))
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '-'))
			return false;
	return true;
}

/* "Disks": [{"Serial": S, "Path": P, "Container": C, "Layer": N,
 * "Slot": K}, ...]: one read-only virtio-blk disk per container layer, in
 * slot K (1..15: q35's root port K; the shared image "rootfs" has slot 0),
 * by default its index + 1 (the same on both sides of a migration: a disk
 * hot-plugged or removed leaves the others where they are). Container and
 * Layer are the shim's (which container layer it is, so that a
 * destination can name its own copy); the backend only checks their
 * types. */
static int parse_disks(json_t *a, const char *id, struct qopts *o)
{
	char f[64];
	if (!json_is_array(a))
		return bad_field(id, "Disks", "must be an array");
	if (json_array_size(a) > LM_QEMU_MAX_DISKS - 1)
		return bad_field(id, "Disks", "at most 15 disks");
	size_t i;
	json_t *e;
	json_array_foreach(a, i, e) {
		snprintf(f, sizeof(f), "Disks[%zu]", i);
		if (!json_is_object(e))
			return bad_field(id, f, "must be an object");
		struct qdisk *d = &o->disks[i];
		const char *key;
		json_t *v;
		bool has_serial = false, has_path = false;
		json_object_foreach(e, key, v) {
			int rc = 0;
			snprintf(f, sizeof(f), "Disks[%zu].%s", i, key);
			if (!strcmp(key, "Serial")) {
				rc = get_string(v, id, f, d->serial, sizeof(d->serial), false);
				if (!rc && !serial_ok(d->serial))
					rc = bad_field(id, f, "1..20 of [A-Za-z0-9_.-], not 'rootfs'");
				has_serial = true;
			} else if (!strcmp(key, "Path")) {
				rc = get_string(v, id, f, d->path, sizeof(d->path), false);
				if (!rc && d->path[0] != '/')
					rc = bad_field(id, f, "must be an absolute path");
				if (!rc && strchr(d->path, ','))
					rc = bad_field(id, f, "must not hold ','");
				has_path = true;
			} else if (!strcmp(key, "Container")) {
				if (!json_is_string(v))
					rc = bad_field(id, f, "must be a string");
			} else if (!strcmp(key, "Layer")) {
				if (!json_is_integer(v) || json_integer_value(v) < 0)
					rc = bad_field(id, f, "must be an integer >= 0");
			} else if (!strcmp(key, "Slot")) {
				if (!json_is_integer(v) || json_integer_value(v) < 1 ||
				    json_integer_value(v) >= LM_QEMU_MAX_DISKS)
					rc = bad_field(id, f, "must be an integer, 1..15");
				else
					d->slot = (unsigned)json_integer_value(v);
			} else {
				rc = bad_field(id, f, "unknown key (Serial, Path, Container, Layer, Slot)");
			}
			if (rc)
				return rc;
		}
		snprintf(f, sizeof(f), "Disks[%zu]", i);
		if (!has_serial || !has_path)
			return bad_field(id, f, "needs Serial and Path");
		if (!d->slot)
			d->slot = (unsigned)i + 1;
		for (size_t j = 0; j < i; j++) {
			if (!strcmp(o->disks[j].serial, d->serial))
				return bad_field(id, f, "Serial used twice");
			if (o->disks[j].slot == d->slot)
				return bad_field(id, f, "Slot used twice");
		}
	}
	o->n_disks = (unsigned)json_array_size(a);
	return 0;
}

static int get_string(json_t *v, const char *id, const char *field, char *out, size_t cap,
		      bool may_be_empty)
{
	const char *s = json_string_value(v);
	if (!s || (!may_be_empty && !*s))
		return bad_field(id, field, may_be_empty ? "must be a string"
							 : "must be a non-empty string");
	if (strlen(s) >= cap)
		return bad_field(id, field, "too long");
	if (strchr(s, '\n'))
		return bad_field(id, field, "must be one line");
	snprintf(out, cap, "%s", s);
	return 0;
}

/* The backend's keys under VirtualMachine.Qemu; unknown keys are refused
 * (a misspelt "Kernal" must not silently boot the default guest). */
static int parse_doc(const char *doc, const char *id, struct qopts *o)
{
	const char *k = getenv("LM_QEMU_KERNEL"), *i = getenv("LM_QEMU_INITRD");
	if (k && *k)
		snprintf(o->kernel, sizeof(o->kernel), "%s", k);
	else if (LM_GUEST_KERNEL_DIR[0])
		snprintf(o->kernel, sizeof(o->kernel), "%s/vmlinuz", LM_GUEST_KERNEL_DIR);
	if (i)
		snprintf(o->initrd, sizeof(o->initrd), "%s", i);
	else
		snprintf(o->initrd, sizeof(o->initrd), "%s", LM_GUEST_INITRAMFS);
	/* the containers' image: each host's own (a document that travels
	 * with a migration does not carry the source's path by default) */
	const char *r = getenv("LM_QEMU_ROOTFS");
	snprintf(o->rootfs, sizeof(o->rootfs), "%s", r ? r : LM_GUEST_ROOTFS);
	const char *cl = getenv("LM_QEMU_CMDLINE");
	if (cl)
		snprintf(o->cmdline, sizeof(o->cmdline), "%s", cl);
	/* q35 by default: it boots as fast as microvm here (2.4 s under TCG)
	 * and can hot-plug a disk (a new container's layers) */
	const char *m = getenv("LM_QEMU_MACHINE");
	o->machine = m && !strcmp(m, "microvm") ? LM_QEMU_MICROVM : LM_QEMU_Q35;
	o->accel = LM_QEMU_ACCEL_AUTO;
	if (!doc)
		return 0;
	json_error_t je;
	json_t *j = json_loads(doc, 0, &je);
	if (!j) {
		lm_log_error(MOD, "bad document", "id=%s why=\"not JSON: %s\"", id, je.text);
		return -EINVAL;
	}
	int rc = 0;
	json_t *qj = json_object_get(json_object_get(j, "VirtualMachine"), "Qemu");
	if (!qj)
		goto out;
	if (!json_is_object(qj)) {
		lm_log_error(MOD, "bad document", "id=%s field=VirtualMachine.Qemu "
			     "why=\"must be an object\"", id);
		rc = -EINVAL;
		goto out;
	}
	const char *key;
	json_t *v;
	json_object_foreach(qj, key, v) {
		if (!strcmp(key, "Kernel")) {
			rc = get_string(v, id, key, o->kernel, sizeof(o->kernel), false);
		} else if (!strcmp(key, "Initrd")) {
			/* "" boots the kernel without an initrd */
			rc = get_string(v, id, key, o->initrd, sizeof(o->initrd), true);
		} else if (!strcmp(key, "Machine")) {
			const char *s = json_string_value(v);
			if (s && !strcmp(s, "microvm"))
				o->machine = LM_QEMU_MICROVM;
			else if (s && !strcmp(s, "q35"))
				o->machine = LM_QEMU_Q35;
			else
				rc = bad_field(id, key, "must be 'microvm' or 'q35'");
		} else if (!strcmp(key, "Accel")) {
			const char *s = json_string_value(v);
			if (s && !strcmp(s, "auto"))
				o->accel = LM_QEMU_ACCEL_AUTO;
			else if (s && !strcmp(s, "kvm"))
				o->accel = LM_QEMU_ACCEL_KVM;
			else if (s && !strcmp(s, "tcg"))
				o->accel = LM_QEMU_ACCEL_TCG;
			else
				rc = bad_field(id, key, "must be 'auto', 'kvm' or 'tcg'");
		} else if (!strcmp(key, "Cpu")) {
			rc = get_string(v, id, key, o->cpu, sizeof(o->cpu), false);
		} else if (!strcmp(key, "Rootfs")) {
			/* "" attaches no container image */
			rc = get_string(v, id, key, o->rootfs, sizeof(o->rootfs), true);
		} else if (!strcmp(key, "Cmdline")) {
			rc = get_string(v, id, key, o->cmdline, sizeof(o->cmdline), true);
		} else if (!strcmp(key, "Disks")) {
			rc = parse_disks(v, id, o);
		} else if (!strcmp(key, "BootTimeoutMs")) {
			if (!json_is_integer(v) || json_integer_value(v) < 1 ||
			    json_integer_value(v) > 3600000)
				rc = bad_field(id, key, "must be an integer within 1..3600000");
			else
				o->boot_ms = (unsigned)json_integer_value(v);
		} else {
			rc = bad_field(id, key, "unknown key (Kernel, Initrd, Machine, Accel, Cpu, "
					       "Cmdline, BootTimeoutMs, Rootfs, Disks)");
		}
		if (rc)
			break;
	}
out:
	json_decref(j);
	return rc;
}

/* ---- lifecycle -------------------------------------------------------- */

static void qemu_destroy(lm_vm_t *vm);

/* Thread: owner. */
static int qemu_create(lm_vm_t **out, const lm_vm_config_t *cfg)
{
	*out = NULL;
	char id[64];                    /* the Id as logged and as QEMU's name */
	safe_name(id, sizeof(id), cfg->id);
	if (!cfg->memory_bytes || cfg->memory_bytes % MiB || cfg->memory_bytes < 16 * MiB ||
	    cfg->memory_bytes / MiB > (1u << 20)) {
		lm_log_error(MOD, "bad document", "id=%s field=memory_bytes why=\"a MiB multiple "
			     "within 16 MiB..1 TiB\" memory_bytes=%" PRIu64, id, cfg->memory_bytes);
		return -EINVAL;
	}
	if (cfg->vcpus < 1 || cfg->vcpus > 64) {
		lm_log_error(MOD, "bad document", "id=%s field=vcpus why=\"1..64\" vcpus=%u", id,
			     cfg->vcpus);
		return -EINVAL;
	}
	struct qopts *o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	int rc = parse_doc(cfg->document_json, id, o);
	if (rc == 0 && !o->kernel[0])
		rc = bad_field(id, "Kernel", "no kernel: set VirtualMachine.Qemu.Kernel or "
				       "LM_QEMU_KERNEL (this build has no guest kernel)");
	if (rc) {
		free(o);
		return rc;
	}

	struct lm_vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		free(o);
		return -ENOMEM;
	}
	vm->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (vm->evfd < 0) {
		rc = -errno;
		free(o);
		free(vm);
		return rc;
	}
	pthread_mutex_init(&vm->mu, NULL);
	vm->stream_fd = -1;
	vm->incoming = cfg->incoming;
	vm->machine = o->machine;
	vm->memory_mib = (unsigned)(cfg->memory_bytes / MiB);
	vm->vcpus = cfg->vcpus;
	snprintf(vm->cpu, sizeof(vm->cpu), "%s", o->cpu);
	snprintf(vm->name, sizeof(vm->name), "%s", id);

	/* $TMPDIR if short: the socket's path must fit a sockaddr_un */
	const char *tmp = getenv("TMPDIR");
	if (!tmp || tmp[0] != '/' || strlen(tmp) > 40)
		tmp = "/tmp";
	snprintf(vm->dir, sizeof(vm->dir), "%s/lmqemu-vm-XXXXXX", tmp);
	if (!mkdtemp(vm->dir)) {        /* mode 0700 */
		rc = -errno;
		lm_log_error(MOD, "mkdtemp failed", "id=%s err=%d", id, -rc);
		vm->dir[0] = 0;
		goto fail;
	}
	snprintf(vm->agent, sizeof(vm->agent), "%s/agent.sock", vm->dir);

	/* the disks: the shared image ("rootfs", each host's own; a file
	 * that is not there is left out, and a container that needs it gets
	 * the agent's "no disk with serial rootfs"), then each container
	 * layer of "Disks", packed now if it is a directory. Every image's
	 * digest goes into the compat data: the guest's page cache of a
	 * read-only disk must match the disk on both sides of a migration */
	lm_qemu_disk_t disks[LM_QEMU_MAX_DISKS];
	unsigned nd = 0;
	bool has_rootfs = o->rootfs[0] && access(o->rootfs, R_OK) == 0;
	if (o->rootfs[0] && !has_rootfs)
		lm_log_warn(MOD, "no container image", "id=%s path=%s err=%d", id, o->rootfs, errno);
	if (has_rootfs && (rc = lm_qemu_file_digest(o->rootfs, &vm->dsk[0].digest)) < 0) {
		if (cfg->why)
			snprintf(cfg->why, cfg->why_cap, "the container image %s: %s", o->rootfs,
				 strerror(-rc));
		goto fail;
	}
	if (has_rootfs) {
		disks[nd++] = (lm_qemu_disk_t){.id = "rootfs", .serial = "rootfs", .path = o->rootfs,
					       .read_only = true};
		snprintf(vm->dsk[0].serial, sizeof(vm->dsk[0].serial), "rootfs");
		snprintf(vm->dsk[0].id, sizeof(vm->dsk[0].id), "rootfs");
	}
	for (unsigned i = 0; i < o->n_disks; i++) {
		struct qdisk *d = &o->disks[i];
		char why[400];
		uint64_t t0 = lm_now_ns();
		snprintf(d->id, sizeof(d->id), "disk%u", d->slot);
		rc = lm_qemu_disk_image(d->path, vm->dir, d->serial, d->image, sizeof(d->image),
					&d->digest, why, sizeof(why));
		if (rc) {
			char q[450];
			lm_log_error(MOD, "create failed: a container layer", "id=%s serial=%s why=%s", id,
				     d->serial, lm_log_quote(q, sizeof(q), why));
			if (cfg->why)
				snprintf(cfg->why, cfg->why_cap, "disk %s: %s", d->serial, why);
			goto fail;
		}
		lm_log_info(MOD, "container layer ready", "id=%s serial=%s layer=%s image=%s "
			    "digest=%016" PRIx64 " ms=%.1f", id, d->serial, d->path, d->image, d->digest,
			    (double)(lm_now_ns() - t0) / 1e6);
		disks[nd++] = (lm_qemu_disk_t){.id = d->id, .serial = d->serial, .path = d->image,
					       .read_only = true, .slot = d->slot};
		snprintf(vm->dsk[d->slot].serial, sizeof(vm->dsk[0].serial), "%s", d->serial);
		snprintf(vm->dsk[d->slot].id, sizeof(vm->dsk[0].id), "%s", d->id);
		snprintf(vm->dsk[d->slot].image, sizeof(vm->dsk[0].image), "%s", d->image);
		vm->dsk[d->slot].made = strcmp(d->image, d->path) != 0;
		vm->dsk[d->slot].digest = d->digest;
	}
	snprintf(vm->cpu_compat, sizeof(vm->cpu_compat), "%s", o->cpu[0] ? o->cpu : "default");
	compat_refresh(vm);

	/* $LM_QEMU_CONSOLE_DIR: the guest's console goes to a file there
	 * (kept after the VM; for a post-mortem), else to our tail buffer */
	char console[PATH_MAX] = "";
	const char *cdir = getenv("LM_QEMU_CONSOLE_DIR");
	if (cdir && *cdir)
		snprintf(console, sizeof(console), "%s/%s-%s-%d.log", cdir, vm->name,
			 cfg->incoming ? "in" : "out", (int)getpid());
	lm_qemu_vm_config_t qc = {
		.console_log = console[0] ? console : NULL,
		.disks = nd ? disks : NULL, .n_disks = nd,
		.name = vm->name, .machine = o->machine, .memory_mib = vm->memory_mib,
		.vcpus = vm->vcpus, .cpu = o->cpu[0] ? o->cpu : NULL, .kernel = o->kernel,
		.initrd = o->initrd[0] ? o->initrd : NULL,
		.cmdline = o->cmdline[0] ? o->cmdline : NULL, .agent_socket = vm->agent,
		.incoming_fd = -1, .incoming_later = cfg->incoming, .accel = o->accel,
		.on_event = on_event, .event_arg = vm,
	};
	char err[512] = "";
	rc = lm_qemu_vm_launch(&vm->q, &qc, err, sizeof(err));
	if (rc) {
		char q[600];
		vm->q = NULL;           /* launch killed and reaped it */
		lm_log_error(MOD, "create failed: QEMU did not start", "id=%s err=%d why=%s", id,
			     -rc, lm_log_quote(q, sizeof(q), err));
		goto fail;
	}
	const char *why = "";
	enum lm_qemu_accel a = lm_qemu_vm_accel(vm->q, &why);
	vm->boot_ms = o->boot_ms ? o->boot_ms : a == LM_QEMU_ACCEL_KVM ? BOOT_KVM_MS : BOOT_TCG_MS;
	char qc1[300], qk[300], qi[300];
	lm_log_info(MOD, "vm created", "id=%s compat=%s accel=%s incoming=%d kernel=%s initrd=%s",
		    id, lm_log_quote(qc1, sizeof(qc1), vm->compat), lm_qemu_accel_name(a),
		    (int)cfg->incoming, lm_log_quote(qk, sizeof(qk), o->kernel),
		    lm_log_quote(qi, sizeof(qi), o->initrd[0] ? o->initrd : "-"));
	free(o);
	*out = vm;
	return 0;
fail:
	free(o);
	qemu_destroy(vm);
	return rc;
}

/* Thread: owner; nothing else runs on the VM (the seam's rule). */
static void qemu_destroy(lm_vm_t *vm)
{
	if (!vm)
		return;
	lm_qemu_vm_destroy(vm->q);     /* kills QEMU if it still runs, reaps it */
	vm->q = NULL;
	if (vm->stream_fd >= 0)
		close(vm->stream_fd);
	close(vm->evfd);               /* (QEMU's loop, its writer, is gone) */
	rm_private_dir(vm->dir);
	pthread_mutex_destroy(&vm->mu);
	free(vm);
}

static int qemu_resume(lm_vm_t *vm);

/* Thread: owner. Source: boot (until the guest opened its agent port);
 * destination: run the loaded guest, only once its stream completed. */
static int qemu_start(lm_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	bool started = vm->started, gone = vm->terminated;
	pthread_mutex_unlock(&vm->mu);
	if (gone)
		return -ESRCH;
	if (started)
		return qemu_resume(vm);
	int rc;
	if (vm->incoming) {
		lm_qemu_migration_info_t mi;
		rc = lm_qemu_migrate_query(vm->q, &mi, OP_MS); /* refreshes the status */
		if (rc == 0 && mi.status != LM_QEMU_MIG_COMPLETED) {
			lm_log_warn(MOD, "start refused: the incoming stream has not completed",
				    "vm=%s status=%s", vm->name, lm_qemu_mig_status_name(mi.status));
			return -EBUSY;
		}
		if (rc == 0)
			rc = lm_qemu_vm_cont(vm->q, 0, OP_MS);
		if (rc) {
			lm_log_error(MOD, "start failed", "vm=%s err=%d", vm->name, -rc);
			return rc;
		}
		/* the stream is spent: the guest runs here now, and a next
		 * migration takes it on as from any source */
		pthread_mutex_lock(&vm->mu);
		int fd = vm->stream_fd;
		vm->stream_fd = -1;
		atomic_store(&vm->incoming, false);
		pthread_mutex_unlock(&vm->mu);
		if (fd >= 0)
			close(fd);
	} else {
		char err[512] = "";
		rc = lm_qemu_vm_boot(vm->q, vm->boot_ms, err, sizeof(err));
		if (rc) {
			/* vm.c killed QEMU and logged QEMU's reason */
			char q[600];
			lm_log_error(MOD, "start failed: the guest did not boot", "vm=%s err=%d "
				     "boot_ms=%u why=%s", vm->name, -rc, vm->boot_ms,
				     lm_log_quote(q, sizeof(q), err));
			return rc;
		}
	}
	pthread_mutex_lock(&vm->mu);
	vm->started = true;
	pthread_mutex_unlock(&vm->mu);
	return 0;
}

/* Thread: owner, or transfer. QMP stop returns once no vCPU runs. A VM
 * that never ran, or is gone, has nothing to pause. */
static int qemu_pause(lm_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	bool idle = !vm->started || vm->terminated;
	pthread_mutex_unlock(&vm->mu);
	if (idle)
		return 0;
	int rc = lm_qemu_vm_stop(vm->q, OP_MS);
	if (rc)
		lm_log_error(MOD, "pause failed", "vm=%s err=%d", vm->name, -rc);
	return rc;
}

/* Thread: owner, or transfer. A source whose outgoing stream completed is
 * resumed only here or in stream_abort, and only because the caller (the
 * engine's handover) says the destination's copy never runs: hence the
 * flag that lets vm.c run a guest that migrated away. */
static int qemu_resume(lm_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	bool started = vm->started, gone = vm->terminated, out = vm->out_opened;
	pthread_mutex_unlock(&vm->mu);
	if (gone)
		return -ESRCH;
	if (!started) {
		lm_log_error(MOD, "resume refused: never started", "vm=%s", vm->name);
		return -EPERM;
	}
	unsigned flags = 0;
	if (out && lm_qemu_migrate_status(vm->q) == LM_QEMU_MIG_COMPLETED)
		flags = LM_QEMU_CONT_AFTER_MIGRATION;
	int rc = lm_qemu_vm_cont(vm->q, flags, OP_MS);
	if (rc)
		lm_log_error(MOD, "resume failed", "vm=%s err=%d", vm->name, -rc);
	return rc;
}

/* Thread: owner. Kills QEMU: the guest stops for good. */
static int qemu_terminate(lm_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	vm->terminated = true;
	pthread_mutex_unlock(&vm->mu);
	int rc = lm_qemu_vm_kill(vm->q, KILL_MS);
	if (rc == 0)
		lm_log_info(MOD, "terminated", "vm=%s", vm->name);
	return rc;
}

/* ---- what the engine cannot have from QEMU ---------------------------- */

/* Thread: any. QEMU keeps the guest's memory, dirty log and device state
 * to itself: the engine uses stream_* instead. */
static int qemu_regions(lm_vm_t *vm, const lm_mem_region_t **out)
{
	*out = NULL;
	return -ENOTSUP;
}

/* Thread: transfer. */
static int qemu_dirty_log_start(lm_vm_t *vm) { return -ENOTSUP; }
/* Thread: transfer. */
static int qemu_dirty_log_stop(lm_vm_t *vm) { return -ENOTSUP; }
/* Thread: transfer. */
static int64_t qemu_dirty_log_fetch(lm_vm_t *vm, unsigned idx, uint64_t *bitmap, size_t words)
{
	return -ENOTSUP;
}
/* Thread: transfer or owner. QEMU throttles itself (auto-converge). */
static int qemu_set_throttle(lm_vm_t *vm, unsigned percent) { return -ENOTSUP; }
/* Thread: owner or transfer. */
static int qemu_state_save(lm_vm_t *vm, void *buf, size_t cap) { return -ENOTSUP; }
/* Thread: owner or transfer. */
static int qemu_state_load(lm_vm_t *vm, const void *buf, size_t len) { return -ENOTSUP; }

/* ---- disks added to a running VM -------------------------------------- */

/* Thread: owner. A container layer hot-plugged (q35): its image made as
 * create makes them, attached in slot `slot` (the document's: a
 * destination is launched with it there), its digest added to the
 * compat data. */
static int qemu_disk_add(lm_vm_t *vm, const char *serial, const char *path, unsigned slot,
			 char *why, size_t why_cap)
{
	if (!serial_ok(serial)) {
		snprintf(why, why_cap, "disk serial \"%.30s\": 1..20 of [A-Za-z0-9_.-], not 'rootfs'",
			 serial);
		return -EINVAL;
	}
	if (vm->machine != LM_QEMU_Q35) {
		snprintf(why, why_cap, "disk %s: a microvm machine cannot hot-plug a disk "
			 "(VirtualMachine.Qemu.Machine q35 can)", serial);
		return -ENOTSUP;
	}
	if (slot < 1 || slot >= LM_QEMU_MAX_DISKS) {
		snprintf(why, why_cap, "disk %s: slot %u: the VM has slots 1..%d", serial, slot,
			 LM_QEMU_MAX_DISKS - 1);
		return -ENOSPC;
	}
	pthread_mutex_lock(&vm->mu);
	bool dup = false, gone = vm->terminated, taken = vm->dsk[slot].serial[0] != 0;
	for (unsigned i = 0; i < LM_QEMU_MAX_DISKS; i++)
		dup |= !strcmp(vm->dsk[i].serial, serial);
	pthread_mutex_unlock(&vm->mu);
	if (dup || gone || taken) {
		snprintf(why, why_cap, dup ? "disk %s: this VM has a disk of that serial already"
				       : gone ? "disk %s: the VM is gone"
					      : "disk %s: slot %u holds another disk", serial, slot);
		return dup || taken ? -EEXIST : -ESRCH;
	}
	char image[PATH_MAX], w[400], id[16];
	uint64_t digest = 0, t0 = lm_now_ns();
	int rc = lm_qemu_disk_image(path, vm->dir, serial, image, sizeof(image), &digest, w,
				    sizeof(w));
	if (rc) {
		snprintf(why, why_cap, "disk %s: %s", serial, w);
		return rc;
	}
	snprintf(id, sizeof(id), "hdisk%u", slot);
	lm_qemu_disk_t d = {.id = id, .serial = serial, .path = image, .read_only = true};
	rc = lm_qemu_vm_disk_add(vm->q, &d, slot, OP_MS, w, sizeof(w));
	if (rc) {
		snprintf(why, why_cap, "disk %s: QEMU: %s", serial, w);
		if (strcmp(image, path))
			unlink(image);
		return rc;
	}
	pthread_mutex_lock(&vm->mu);
	snprintf(vm->dsk[slot].serial, sizeof(vm->dsk[slot].serial), "%s", serial);
	snprintf(vm->dsk[slot].id, sizeof(vm->dsk[slot].id), "%s", id);
	snprintf(vm->dsk[slot].image, sizeof(vm->dsk[slot].image), "%s", image);
	vm->dsk[slot].made = strcmp(image, path) != 0;
	vm->dsk[slot].digest = digest;
	compat_refresh(vm);
	pthread_mutex_unlock(&vm->mu);
	lm_log_info(MOD, "container layer hot-plugged", "vm=%s serial=%s layer=%s slot=%u "
		    "digest=%016" PRIx64 " ms=%.1f", vm->name, serial, path, slot, digest,
		    (double)(lm_now_ns() - t0) / 1e6);
	return 0;
}

#define UNPLUG_MS 30000   /* the guest's PCIe hot-plug waits 5 s; TCG is slow */

/* Thread: owner. A container layer unplugged: QEMU's device and nodes go,
 * then the image we made; its slot is free and it leaves the compat
 * data. The shared image "rootfs" stays. */
static int qemu_disk_remove(lm_vm_t *vm, const char *serial, char *why, size_t why_cap)
{
	pthread_mutex_lock(&vm->mu);
	unsigned slot = LM_QEMU_MAX_DISKS;
	for (unsigned i = 1; i < LM_QEMU_MAX_DISKS; i++)
		if (!strcmp(vm->dsk[i].serial, serial))
			slot = i;
	bool gone = vm->terminated;
	char id[16] = "";
	if (slot < LM_QEMU_MAX_DISKS)
		snprintf(id, sizeof(id), "%s", vm->dsk[slot].id);
	pthread_mutex_unlock(&vm->mu);
	if (slot == LM_QEMU_MAX_DISKS || gone) {
		snprintf(why, why_cap, gone ? "disk %s: the VM is gone"
					    : "disk %s: no such container layer in this VM", serial);
		return gone ? -ESRCH : -ENOENT;
	}
	if (vm->machine != LM_QEMU_Q35) {
		snprintf(why, why_cap, "disk %s: a microvm machine cannot unplug a disk", serial);
		return -ENOTSUP;
	}
	char w[400];
	uint64_t t0 = lm_now_ns();
	int rc = lm_qemu_vm_disk_remove(vm->q, id, UNPLUG_MS, w, sizeof(w));
	if (rc) {
		snprintf(why, why_cap, "disk %s: QEMU: %s", serial, w);
		return rc;
	}
	pthread_mutex_lock(&vm->mu);
	if (vm->dsk[slot].made)
		unlink(vm->dsk[slot].image);
	memset(&vm->dsk[slot], 0, sizeof(vm->dsk[slot]));
	compat_refresh(vm);
	pthread_mutex_unlock(&vm->mu);
	lm_log_info(MOD, "container layer unplugged", "vm=%s serial=%s slot=%u ms=%.1f", vm->name,
		    serial, slot, (double)(lm_now_ns() - t0) / 1e6);
	return 0;
}

/* ---- compatibility and statistics ------------------------------------- */

/* Thread: any. */
static int qemu_compat_get(lm_vm_t *vm, void *buf, size_t cap)
{
	pthread_mutex_lock(&vm->mu);
	size_t n = strlen(vm->compat);
	if (cap >= n)
		memcpy(buf, vm->compat, n);
	pthread_mutex_unlock(&vm->mu);
	return cap < n ? -ENOSPC : (int)n;
}

/* The value of `key=` in a compat text ("" if absent). */
static void compat_field(const char *text, const char *key, char *out, size_t cap)
{
	out[0] = 0;
	size_t kl = strlen(key);
	for (const char *p = text; (p = strstr(p, key)); p += kl) {
		if ((p == text || p[-1] == ' ') && p[kl] == '=') {
			size_t n = strcspn(p + kl + 1, " ");
			snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), p + kl + 1);
			return;
		}
	}
}

/* Thread: any. The refusal is logged, and said in `why`. */
static int qemu_compat_check_why(lm_vm_t *vm, const void *buf, size_t len, char *why,
				 size_t why_cap)
{
	char theirs[320];
	if (len >= sizeof(theirs) || memchr(buf, 0, len)) {
		snprintf(why, why_cap, "compatibility data of %zu bytes is not a qemu VM's", len);
		lm_log_error(MOD, "incompatible source", "vm=%s why=\"compat data of %zu bytes is "
			     "not ours\"", vm->name, len);
		return -EPROTONOSUPPORT;
	}
	memcpy(theirs, buf, len);
	theirs[len] = 0;
	char mine[sizeof(vm->compat)];
	pthread_mutex_lock(&vm->mu);
	memcpy(mine, vm->compat, sizeof(mine));
	pthread_mutex_unlock(&vm->mu);
	if (strncmp(theirs, "qemu ", 5) != 0) {
		char q[300];
		snprintf(why, why_cap, "the source is not a qemu VM");
		lm_log_error(MOD, "incompatible source", "vm=%s why=\"not a qemu VM\" theirs=%s",
			     vm->name, lm_log_quote(q, sizeof(q), theirs));
		return -EPROTONOSUPPORT;
	}
	if (!strcmp(theirs, mine))
		return 0;
	static const char *const keys[] = {"machine", "vcpus", "memory", "cpu", "disks"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		char a[96], b[96];
		compat_field(theirs, keys[i], a, sizeof(a));
		compat_field(mine, keys[i], b, sizeof(b));
		if (strcmp(a, b)) {
			if (!strcmp(keys[i], "disks"))
				snprintf(why, why_cap, "the containers' disk images differ: source %s, "
					 "here %s", a[0] ? a : "-", b);
			else
				snprintf(why, why_cap, "%s differs: source %s, here %s", keys[i],
					 a[0] ? a : "-", b);
			lm_log_error(MOD, "incompatible source", "vm=%s field=%s source=%s here=%s",
				     vm->name, keys[i], a[0] ? a : "-", b);
			return -EPROTONOSUPPORT;
		}
	}
	char q1[300], q2[300];
	snprintf(why, why_cap, "compatibility data differs");
	lm_log_error(MOD, "incompatible source", "vm=%s source=%s here=%s", vm->name,
		     lm_log_quote(q1, sizeof(q1), theirs), lm_log_quote(q2, sizeof(q2), mine));
	return -EPROTONOSUPPORT;
}

/* Thread: any. */
static int qemu_compat_check(lm_vm_t *vm, const void *buf, size_t len)
{
	char why[200];
	return qemu_compat_check_why(vm, buf, len, why, sizeof(why));
}

static bool mig_in_flight(enum lm_qemu_mig_status s);

/* Thread: any. Only "running" is known (QEMU's status); the guest's own
 * counters are the guest's business. A QEMU that is gone runs nothing,
 * nor does a source in its blackout (where QEMU would not answer). */
static int qemu_stats(lm_vm_t *vm, lm_guest_stats_t *out)
{
	memset(out, 0, sizeof(*out));
	if (!vm->incoming && atomic_load(&vm->blackout) &&
	    mig_in_flight(lm_qemu_migrate_status(vm->q)))
		return 0;
	lm_qemu_status_t st;
	int rc = lm_qemu_vm_status(vm->q, &st, STATUS_MS);
	if (rc == -EPIPE || rc == -ECHILD)
		return 0;
	if (rc)
		return rc;
	out->running = st.running;
	return 0;
}

/* ---- the VMM's stream ------------------------------------------------- */

static bool mig_in_flight(enum lm_qemu_mig_status s)
{
	return s != LM_QEMU_MIG_NONE && s != LM_QEMU_MIG_COMPLETED && s != LM_QEMU_MIG_FAILED &&
	       s != LM_QEMU_MIG_CANCELLED;
}

static int clamp_pct(unsigned v)
{
	return v == 0 ? LM_QEMU_KEEP : v > 99 ? 99 : (int)v;
}

/* Thread: transfer. Destination: QEMU (waiting since create) starts
 * reading its incoming stream from the link, or from a new socketpair
 * whose other end is returned. */
static int stream_open_incoming(lm_vm_t *vm, const lm_vmm_stream_params_t *p)
{
	pthread_mutex_lock(&vm->mu);
	bool again = vm->in_opened;
	vm->in_opened = true;
	pthread_mutex_unlock(&vm->mu);
	if (again) {
		lm_log_error(MOD, "stream_open refused: the incoming stream was opened before",
			     "vm=%s", vm->name);
		return -EBUSY;
	}
	bool on_link = p && p->on_link;
	int sv[2] = {-1, -1};
	if (!on_link && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		int rc = -errno;
		lm_log_error(MOD, "stream_open: socketpair failed", "vm=%s err=%d", vm->name, -rc);
		return rc;
	}
	char err[512] = "";
	int rc = lm_qemu_migrate_incoming(vm->q, on_link ? p->link_fd : sv[1], OP_MS, err,
					  sizeof(err));
	if (sv[1] >= 0)
		close(sv[1]);   /* QEMU has its own copy (or none: failed) */
	if (rc) {
		char q[600];
		if (sv[0] >= 0)
			close(sv[0]);
		lm_log_error(MOD, "stream_open: QEMU did not take the incoming stream", "vm=%s "
			     "err=%d why=%s", vm->name, -rc, lm_log_quote(q, sizeof(q), err));
		return rc;
	}
	pthread_mutex_lock(&vm->mu);
	vm->stream_fd = sv[0];
	pthread_mutex_unlock(&vm->mu);
	lm_log_info(MOD, "incoming stream opened", "vm=%s on_link=%d", vm->name, (int)on_link);
	return on_link ? 0 : sv[0];
}

/* Thread: transfer. Source: set QEMU's parameters, start its outgoing
 * migration on the link or into a new socketpair (the end it does not
 * write returned). Destination: stream_open_incoming. */
static int qemu_stream_open(lm_vm_t *vm, const lm_vmm_stream_params_t *p)
{
	pthread_mutex_lock(&vm->mu);
	bool started = vm->started, gone = vm->terminated;
	pthread_mutex_unlock(&vm->mu);
	if (gone) {
		lm_log_error(MOD, "stream_open refused: terminated", "vm=%s", vm->name);
		return -ESRCH;
	}
	if (vm->incoming)
		return stream_open_incoming(vm, p);
	if (!started) {
		lm_log_error(MOD, "stream_open refused: the guest was never started", "vm=%s",
			     vm->name);
		return -EPERM;
	}

	lm_qemu_migrate_params_t mp;
	lm_qemu_migrate_params_init(&mp);
	lm_vmm_stream_params_t dflt = {0};
	if (!p)
		p = &dflt;
	if (p->downtime_ms)
		mp.downtime_limit_ms = p->downtime_ms > 2000000 ? 2000000 : p->downtime_ms;
	mp.max_bandwidth = p->max_bandwidth && p->max_bandwidth < (uint64_t)UNLIMITED_BW
				   ? (int64_t)p->max_bandwidth : UNLIMITED_BW;
	mp.auto_converge = p->auto_converge ? 1 : 0; /* either way: no leftover from before */
	/* TCG: QEMU's dirty sync can miss a store that races with it while
	 * the vCPU runs (the guest then resumes on the destination with a
	 * stale page and crashes: hcs/qemu/README.md). So under TCG QEMU
	 * makes one pass with the guest running and syncs again only once it
	 * stopped it: with a downtime limit of 0 its pending figure is never
	 * below its threshold, so it never syncs to refine it, and it
	 * switches over when the bulk pass is done (the guest stopped, the
	 * sync, what was dirtied meanwhile, the device state: the blackout).
	 * stream_status fails a stream in which QEMU synced with the guest
	 * running anyway. $LM_QEMU_TCG_ONE_PASS=0 turns both off. */
	const char *why_accel = "";
	const char *op = getenv("LM_QEMU_TCG_ONE_PASS");
	bool one_pass = lm_qemu_vm_accel(vm->q, &why_accel) == LM_QEMU_ACCEL_TCG &&
			!(op && !strcmp(op, "0"));
	if (one_pass)
		mp.downtime_limit_ms = 0;
	if (p->auto_converge) {
		mp.cpu_throttle_initial = clamp_pct(p->throttle_initial);
		mp.cpu_throttle_increment = clamp_pct(p->throttle_increment);
	}
	char err[512] = "";
	int rc = lm_qemu_migrate_set(vm->q, &mp, OP_MS, err, sizeof(err));
	if (rc) {
		char q[600];
		lm_log_error(MOD, "stream_open: QEMU refused the migration parameters", "vm=%s "
			     "err=%d why=%s", vm->name, -rc, lm_log_quote(q, sizeof(q), err));
		return rc;
	}
	lm_qemu_status_t st;
	if ((rc = lm_qemu_vm_status(vm->q, &st, OP_MS)) != 0) {
		lm_log_error(MOD, "stream_open: no QEMU status", "vm=%s err=%d", vm->name, -rc);
		return rc;
	}
	bool on_link = p->on_link;
	int sv[2] = {-1, -1};
	if (!on_link && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		rc = -errno;
		lm_log_error(MOD, "stream_open: socketpair failed", "vm=%s err=%d", vm->name, -rc);
		return rc;
	}
	atomic_store(&vm->blackout, false);
	atomic_store(&vm->blackout_ns, 0);
	memset(&vm->last, 0, sizeof(vm->last));
	rc = lm_qemu_migrate_start(vm->q, on_link ? p->link_fd : sv[0], OP_MS, err, sizeof(err));
	if (sv[0] >= 0)
		close(sv[0]);   /* QEMU has its own copy: its close is the engine's EOF */
	if (rc) {
		char q[600];
		if (sv[1] >= 0)
			close(sv[1]);
		lm_log_error(MOD, "stream_open: QEMU did not start its migration", "vm=%s err=%d "
			     "why=%s", vm->name, -rc, lm_log_quote(q, sizeof(q), err));
		return rc;
	}
	pthread_mutex_lock(&vm->mu);
	if (vm->stream_fd >= 0)
		close(vm->stream_fd);   /* the previous stream's */
	vm->stream_fd = sv[1];      /* -1 on the link: the engine's own socket */
	vm->out_opened = true;
	vm->was_running = st.running;
	vm->one_pass = one_pass;
	pthread_mutex_unlock(&vm->mu);
	lm_log_info(MOD, "outgoing stream opened", "vm=%s downtime_ms=%u max_bandwidth=%" PRIu64
		    " auto_converge=%d throttle=%u+%u was_running=%d tcg_one_pass=%d on_link=%d",
		    vm->name, p->downtime_ms, p->max_bandwidth, (int)p->auto_converge,
		    p->throttle_initial, p->throttle_increment, (int)st.running, (int)one_pass,
		    (int)on_link);
	return on_link ? 0 : sv[1];
}

static enum lm_vmm_stream_state map_state(enum lm_qemu_mig_status s)
{
	switch (s) {
	case LM_QEMU_MIG_NONE: return LM_VS_IDLE;
	case LM_QEMU_MIG_COMPLETED: return LM_VS_COMPLETED;
	case LM_QEMU_MIG_FAILED: return LM_VS_FAILED;
	case LM_QEMU_MIG_CANCELLED: return LM_VS_CANCELLED;
	default: return LM_VS_ACTIVE;  /* setup, active, cancelling, device... */
	}
}

/* The source in its blackout: QEMU holds its big lock from the stop of
 * the guest to the end of the stream, and a QMP command waits for it, so
 * the answer comes from the events (BLACKOUT_START, then MIGRATION
 * completed/failed/cancelled) and the last figures. A lost event cannot
 * hang the engine: it bounds the blackout itself. */
static int blackout_answer(lm_vm_t *vm, lm_vmm_stream_status_t *out)
{
	*out = vm->last;
	out->state = LM_VS_ACTIVE;
	out->blackout = true;
	out->blackout_ns = atomic_load(&vm->blackout_ns);
	out->error[0] = 0;
	return 0;
}

/* The CPU time QEMU has used so far (/proc/PID/stat utime + stime), 0 when
 * unknown. QEMU reports no progress of an incoming stream, and it reads
 * it with recvmsg, which no byte counter of /proc shows; a destination
 * that loads spends CPU, one that waits for a stream that stopped spends
 * next to none (a QMP answer now and then). This is how a destination
 * whose VMM reads the link itself sees the stream move. */
static uint64_t qemu_cpu_ns(lm_vm_t *vm)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)lm_qemu_vm_pid(vm->q));
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *p = strrchr(buf, ')');   /* the name may hold spaces */
	unsigned long long ut, st;
	if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
			 &ut, &st) != 2)
		return 0;
	long hz = sysconf(_SC_CLK_TCK);
	return (ut + st) * (1000000000ull / (uint64_t)(hz > 0 ? hz : 100));
}

/* A destination's status from QEMU's MIGRATION events, without asking
 * QEMU (the engine asks on each event and every 50 ms while the VMM reads
 * the link itself): true with *out filled, false when it is time to ask
 * (a failure or cancel, whose error only query-migrate gives, or
 * IN_QUERY_MS since the last query: an event we could have missed is
 * never missed for long). Completed is answered from the event: it is the
 * guest's pause that waits for it. */
static bool incoming_answer(lm_vm_t *vm, lm_vmm_stream_status_t *out)
{
	enum lm_qemu_mig_status s = lm_qemu_migrate_status(vm->q);
	uint64_t now = lm_now_ns();
	if (s == LM_QEMU_MIG_COMPLETED) {
		/* loaded: QEMU sets it last, once the state is in (the
		 * engine's wait ends here on the event, with no query on the
		 * guest's pause) */
		out->state = LM_VS_COMPLETED;
		out->total_bytes = (uint64_t)vm->memory_mib * MiB;
		out->busy_ns = vm->in_cpu_ns;
		return true;
	}
	if (!mig_in_flight(s) || now - vm->in_query_ns >= IN_QUERY_MS * 1000000ull) {
		vm->in_query_ns = now;
		return false;
	}
	lm_qemu_exit_t ex;
	if (lm_qemu_vm_wait_exit(vm->q, 0, &ex) == 0)
		return false;           /* query-migrate says how it ended */
	if (now - vm->in_cpu_at >= IN_CPU_MS * 1000000ull) {
		vm->in_cpu_ns = qemu_cpu_ns(vm);
		vm->in_cpu_at = now;
	}
	out->state = LM_VS_ACTIVE;
	out->total_bytes = (uint64_t)vm->memory_mib * MiB;
	out->busy_ns = vm->in_cpu_ns;
	return true;
}

/* Thread: transfer. A source's query said completed without QEMU's
 * figures: QEMU says completed (its event, which woke the engine) a moment
 * before its migration thread has computed total-time and downtime. Asks
 * again, 1 ms apart for up to COMPLETED_FIGURES_MS, and takes only an
 * answer: a query that fails leaves *mi (completed) as it was. The
 * engine's END waits for the destination's load meanwhile. */
static void completed_figures(lm_vm_t *vm, lm_qemu_migration_info_t *mi)
{
	uint64_t t0 = lm_now_ns();
	while (mi->total_time_ms <= 0 && lm_now_ns() - t0 < COMPLETED_FIGURES_MS * 1000000ull) {
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
		lm_qemu_migration_info_t again;
		if (lm_qemu_migrate_query(vm->q, &again, OP_MS) != 0)
			return;
		*mi = again;
	}
	if (mi->total_time_ms <= 0)
		lm_log_warn(MOD, "stream_status: QEMU completed without its figures",
			    "vm=%s query=query-migrate field=total-time waited_ms=%u", vm->name,
			    COMPLETED_FIGURES_MS);
}

/* Thread: transfer. One query-migrate (plus, on a source in flight whose
 * blackout we have not seen yet, one query-status; on a source just
 * completed, more until QEMU's figures are in); none during the source's
 * blackout (blackout_answer). Under TCG a source whose QEMU
 * synced its dirty log with the guest running is failed: its copy may
 * lack a page (stream_open). */
static int qemu_stream_status(lm_vm_t *vm, lm_vmm_stream_status_t *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&vm->mu);
	bool one_pass = vm->one_pass && vm->out_opened;
	pthread_mutex_unlock(&vm->mu);
	uint64_t pass = one_pass && !vm->incoming ? lm_qemu_migrate_synced_running(vm->q) : 0;
	if (pass) {
		out->state = LM_VS_FAILED;
		out->blackout = atomic_load(&vm->blackout);
		snprintf(out->error, sizeof(out->error), "QEMU synced its dirty log (pass %" PRIu64 ") "
			 "while the guest ran under TCG, which can miss a page the guest wrote: "
			 "its copy is not used", pass);
		return 0;
	}
	if (!vm->incoming && atomic_load(&vm->blackout) &&
	    mig_in_flight(lm_qemu_migrate_status(vm->q)))
		return blackout_answer(vm, out);
	if (vm->incoming && incoming_answer(vm, out))
		return 0;
	lm_qemu_migration_info_t mi;
	int rc = lm_qemu_migrate_query(vm->q, &mi, STATUS_MS);
	if (rc == 0 && !vm->incoming && mi.status == LM_QEMU_MIG_COMPLETED && mi.total_time_ms <= 0)
		completed_figures(vm, &mi);
	if (rc == -ETIMEDOUT && !vm->incoming && atomic_load(&vm->blackout))
		return blackout_answer(vm, out);     /* it began while we asked */
	if (rc == -EPIPE || rc == -ECHILD) {
		out->state = LM_VS_FAILED;
		out->blackout = !vm->incoming && atomic_load(&vm->blackout);
		exit_reason(vm, out->error, sizeof(out->error));
		return 0;
	}
	if (rc) {
		lm_log_error(MOD, "stream_status: query-migrate failed", "vm=%s err=%d", vm->name,
			     -rc);
		return rc;
	}
	out->state = map_state(mi.status);
	if (mi.status == LM_QEMU_MIG_FAILED)
		snprintf(out->error, sizeof(out->error), "%s",
			 mi.error_desc[0] ? mi.error_desc : "QEMU's migration failed");
	if (vm->incoming) {
		/* the destination reports its status only; "setup" is QEMU
		 * waiting for the first byte */
		pthread_mutex_lock(&vm->mu);
		bool opened = vm->in_opened;
		pthread_mutex_unlock(&vm->mu);
		if (mi.status == LM_QEMU_MIG_SETUP && !opened)
			out->state = LM_VS_IDLE;
		out->total_bytes = (uint64_t)vm->memory_mib * MiB;
		out->busy_ns = qemu_cpu_ns(vm);
		return 0;
	}
	out->total_bytes = mi.ram_total;
	out->transferred = mi.ram_transferred;
	out->remaining = mi.status == LM_QEMU_MIG_COMPLETED ? 0 : mi.ram_remaining;
	out->passes = mi.dirty_sync_count;
	out->dirty_rate_mbps = (double)mi.dirty_pages_rate *
			       (double)(mi.page_size ? mi.page_size : LM_PAGE_SIZE) / 1e6;
	out->throttle_pct = mi.cpu_throttle_percentage > 0 ? (unsigned)mi.cpu_throttle_percentage
							   : 0;
	if (mi.status == LM_QEMU_MIG_COMPLETED && mi.downtime_ms > 0)
		out->downtime_ms = (uint64_t)mi.downtime_ms;
	if (mi.status == LM_QEMU_MIG_COMPLETED && mi.total_time_ms > 0)
		out->total_ms = (uint64_t)mi.total_time_ms;
	bool b = atomic_load(&vm->blackout);
	if (!b && mi.status == LM_QEMU_MIG_COMPLETED) {
		b = true;       /* it went through finish-migrate to get there */
	} else if (!b && mig_in_flight(mi.status)) {
		lm_qemu_status_t st;
		if (lm_qemu_vm_status(vm->q, &st, STATUS_MS) == 0 &&
		    (st.state == LM_QEMU_RS_FINISH_MIGRATE || st.state == LM_QEMU_RS_POSTMIGRATE))
			b = true;
	}
	if (b)
		atomic_store(&vm->blackout, true);
	out->blackout = b;
	out->blackout_ns = b ? atomic_load(&vm->blackout_ns) : 0;
	vm->last = *out;
	return 0;
}

/* Thread: transfer. Source: end the stream (our end shut: QEMU's writes
 * fail), cancel a migration still in flight (QEMU resumes a guest it
 * stopped for it), resume a guest whose stream already completed; either
 * way the guest runs again if it ran at stream_open.
 * Destination: close our end (QEMU's incoming stream ends; the VM is
 * destroyed next). */
/* Thread: any. The eventfd on_event signals (see struct lm_vm). */
static int qemu_stream_event_fd(lm_vm_t *vm)
{
	return vm->evfd;
}

static int qemu_stream_abort(lm_vm_t *vm)
{
	if (vm->incoming) {
		pthread_mutex_lock(&vm->mu);
		int fd = vm->stream_fd;
		vm->stream_fd = -1;
		pthread_mutex_unlock(&vm->mu);
		if (fd >= 0)
			close(fd);
		lm_log_info(MOD, "incoming stream aborted", "vm=%s", vm->name);
		return 0;
	}
	pthread_mutex_lock(&vm->mu);
	bool opened = vm->out_opened, was_running = vm->was_running, gone = vm->terminated;
	/* QEMU writes its blackout holding its big lock: if no one reads
	 * the stream any more, it answers no command until its write fails */
	if (opened && vm->stream_fd >= 0)
		shutdown(vm->stream_fd, SHUT_RDWR);
	pthread_mutex_unlock(&vm->mu);
	if (!opened)
		return 0;
	if (gone)
		return -ESRCH;
	lm_qemu_migration_info_t mi;
	int rc = lm_qemu_migrate_query(vm->q, &mi, OP_MS);
	if (rc) {
		lm_log_error(MOD, "stream_abort: query-migrate failed", "vm=%s err=%d", vm->name,
			     -rc);
		return rc;
	}
	enum lm_qemu_mig_status s = mi.status;
	if (mig_in_flight(s)) {
		rc = lm_qemu_migrate_cancel(vm->q, ABORT_MS, &s);
		if (rc) {
			lm_log_error(MOD, "stream_abort: the migration was not cancelled in time",
				     "vm=%s err=%d status=%s", vm->name, -rc,
				     lm_qemu_mig_status_name(s));
			return rc;
		}
	}
	rc = 0;
	if (was_running) {
		/* completed: QEMU keeps the guest stopped (postmigrate);
		 * cancelled or failed during the blackout: QEMU has resumed
		 * it before it said so; make sure either way */
		/* a cont QEMU refuses while its migration thread still winds
		 * down (the status says failed a moment before it resumed the
		 * guest itself: seen under load) is asked again, for a while */
		uint64_t end = lm_now_ns() + (uint64_t)ABORT_MS * 1000000ull;
		for (;;) {
			lm_qemu_status_t st;
			rc = lm_qemu_vm_status(vm->q, &st, OP_MS);
			if (rc == 0 && !st.running)
				rc = lm_qemu_vm_cont(vm->q, LM_QEMU_CONT_AFTER_MIGRATION, OP_MS);
			if (rc != -EREMOTEIO || lm_now_ns() >= end)
				break;
			struct timespec ts = {0, 20000000};
			nanosleep(&ts, NULL);
		}
	}
	if (rc)
		lm_log_error(MOD, "stream_abort: the guest was not resumed", "vm=%s err=%d "
			     "status=%s", vm->name, -rc, lm_qemu_mig_status_name(s));
	else
		lm_log_info(MOD, "outgoing stream aborted", "vm=%s status=%s guest_runs=%d",
			    vm->name, lm_qemu_mig_status_name(s), (int)was_running);
	return rc;
}

const lm_backend_ops_t lm_hcs_qemu_ops = {
	.name = "qemu",
	.create = qemu_create,
	.destroy = qemu_destroy,
	.start = qemu_start,
	.pause = qemu_pause,
	.resume = qemu_resume,
	.terminate = qemu_terminate,
	.regions = qemu_regions,
	.dirty_log_start = qemu_dirty_log_start,
	.dirty_log_stop = qemu_dirty_log_stop,
	.dirty_log_fetch = qemu_dirty_log_fetch,
	.set_throttle = qemu_set_throttle,
	.state_save = qemu_state_save,
	.state_load = qemu_state_load,
	.compat_get = qemu_compat_get,
	.compat_check = qemu_compat_check,
	.compat_check_why = qemu_compat_check_why,
	.disk_add = qemu_disk_add,
	.disk_remove = qemu_disk_remove,
	.stats = qemu_stats,
	.stream_open = qemu_stream_open,
	.stream_status = qemu_stream_status,
	.stream_abort = qemu_stream_abort,
	.stream_event_fd = qemu_stream_event_fd,
	.stream_on_link = true,
};

lm_qemu_vm_t *lm_hcs_qemu_vm(lm_vm_t *vm)
{
	return vm ? vm->q : NULL;
}

const char *lm_hcs_qemu_agent_socket(lm_vm_t *vm)
{
	return vm ? vm->agent : NULL;
}

pid_t lm_hcs_qemu_pid(lm_vm_t *vm)
{
	return vm && vm->q ? lm_qemu_vm_pid(vm->q) : 0;
}
