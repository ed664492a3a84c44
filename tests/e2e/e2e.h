/*
 * e2e.h: helpers of the end-to-end tests: real lmshim processes on unix
 * sockets in a temp dir, lmctl runs as child processes, and ttrpc calls
 * made by the test itself (rpc/client.h) to check states and codes.
 *
 * The binaries' paths come from the build (LM_E2E_LMSHIM, LM_E2E_LMCTL).
 * Every process a test starts is stopped by the test itself or by its
 * teardown (which also fails the test when a shim does not exit 0 on
 * SIGTERM: a crash or a sanitizer report at shutdown).
 */
#ifndef LM_TESTS_E2E_H
#define LM_TESTS_E2E_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "rpc/client.h"

/* gRPC codes the tests name. */
enum {
	E2E_OK = 0, E2E_INVALID = 3, E2E_DEADLINE = 4, E2E_NOT_FOUND = 5, E2E_EXISTS = 6,
	E2E_PRECONDITION = 9, E2E_ABORTED = 10, E2E_UNIMPLEMENTED = 12, E2E_UNAVAILABLE = 14,
};

struct e2e_shim {
	pid_t pid;
	char name[32];
	char sock[256];
	char log[256];
	lm_rpc_client_t *c;       /* the test's own connection */
	const char *const *md;    /* metadata e2e_call sends (key, value, ...), or NULL */
	size_t n_md;              /* pairs */
};

/* Thread: test. A fresh temp dir for this test (out: 256 bytes). */
void e2e_tmpdir(char *out);
/* Thread: test. rm -rf of a temp dir made by e2e_tmpdir. */
void e2e_rmdir(const char *dir);

/* Thread: test. Starts `lmshim serve --socket DIR/NAME.sock --id NAME
 * --state-dir DIR/NAME-state ARGS...` (args NULL-terminated), in network
 * namespace `netns` when not NULL, with LM_FAULTS=faults when not NULL;
 * waits until it serves and connects s->c. 0 or -1 (log printed). */
int e2e_shim_start(struct e2e_shim *s, const char *dir, const char *name, const char *netns,
		   const char *faults, const char *const *args);
/* A source: VM of `mb` MiB, guest at `rate` MB/s, pod1 = {sandbox, c1}.
 * Both helpers allow plain TCP links (--insecure-migration); a test of
 * TLS or of that rule starts its shims with e2e_shim_start. */
int e2e_source_start(struct e2e_shim *s, const char *dir, const char *name, unsigned mb,
		     unsigned rate, const char *faults);
/* An idle destination. */
int e2e_dest_start(struct e2e_shim *s, const char *dir, const char *name, const char *faults);
/* Thread: test. SIGTERM and wait (10 s, then SIGKILL). Returns the exit
 * status (0 = clean), or -1 if killed. Idempotent. */
int e2e_shim_stop(struct e2e_shim *s);

/* The lmshim daemon serving sock (by its command line), 0 if none;
 * *count (may be NULL) gets how many match. */
pid_t e2e_find_daemon(const char *sock, int *count);
/* Thread: test. SIGKILL and reap. */
void e2e_shim_kill9(struct e2e_shim *s);

/* Live (not zombie) QEMU processes: those whose command line names image
 * (NULL: any QEMU) and whose parent is parent (0: any parent). Their
 * number, and the pid of one in *one (may be NULL). */
int e2e_qemu_procs(const char *image, pid_t parent, pid_t *one);
/* Thread: test (first call from main, before any shim starts). A
 * directory of this test process's own, made TMPDIR for the shims it
 * starts: their QEMUs' command lines name it (the agent's socket lives
 * under TMPDIR, hcs/qemu/backend.c), so e2e_qemu_procs(e2e_qemu_mark(),
 * ...) counts this process's QEMUs, orphans included, and not those of
 * another test running beside it (ctest -j). Removed at exit. */
const char *e2e_qemu_mark(void);
/* Prints the shim's log (on failures). */
void e2e_shim_dump(const struct e2e_shim *s);

/* Thread: test. Runs a program (argv[0] is a path) with stdout and stderr
 * to `out` (may be NULL: inherit). Returns its pid. */
pid_t e2e_spawn(const char *const *argv, const char *out);
/* Thread: test. Waits up to timeout_ms; exit status, 128+signal, or -1 on
 * timeout (the child is then killed). */
int e2e_wait(pid_t pid, int timeout_ms);
/* Reads a whole file (malloc'd, NUL-terminated; "" if missing). */
char *e2e_slurp(const char *path);

/* Thread: test. A unary call on the shim's test connection: returns the
 * status code (0 OK), or -errno; msg (may be NULL) gets the message;
 * *resp is unpacked with rdesc when both are not NULL. */
int e2e_call(struct e2e_shim *s, const char *service, const char *method,
	     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rdesc,
	     ProtobufCMessage **resp, char *msg, size_t msglen);
/* Migration helpers: each returns the status code. */
int e2e_export(struct e2e_shim *s, const char *session);
int e2e_mig_simple(struct e2e_shim *s, const char *method, const char *session);   /* Cancel, Cleanup */
int e2e_finalize(struct e2e_shim *s, const char *session, int action);            /* 1 STOP, 2 RESUME */
int e2e_socket_connect(struct e2e_shim *s, const char *session, const char *addr, char *msg, size_t ml);
int e2e_socket_listen(struct e2e_shim *s, const char *session, const char *addr, char *msg, size_t ml);
int e2e_transfer(struct e2e_shim *s, const char *session, int64_t timeout_ns, char *msg, size_t ml);
/* task State: code; *pid and *status (containerd Status: 2 running, 3 stopped). */
int e2e_state(struct e2e_shim *s, const char *id, uint32_t *pid, int *status);
/* Inspect: memory digest ("" while the guest runs: hcs gives a digest
 * only for a paused guest) and workload checksum (hex strings, 32 bytes);
 * -EPROTO when the answer has no workload checksum. */
int e2e_digest(struct e2e_shim *s, char *digest, char *checksum);

/* Runs lmctl with args (NULL-terminated, without "lmctl"), output to
 * `out` (may be NULL), waits up to timeout_ms. Exit status, -1 on
 * timeout, -2 if the output holds a sanitizer report. */
int e2e_lmctl(const char *const *args, const char *out, int timeout_ms);
pid_t e2e_lmctl_spawn(const char *const *args, const char *out);

/* Waits until the shim's latest notification for `session` has phase
 * >= `phase` (Notifications, replay-last); returns that phase, or -1 on
 * timeout. */
int e2e_wait_phase(struct e2e_shim *s, const char *session, int phase, int timeout_ms,
		   int *state_out);

/* A Notifications subscription kept open across an event: open it, then
 * read until a notification of exactly `phase` arrives (returns 1 and its
 * state), the stream ends (0) or timeout (-1). */
lm_rpc_stream_t *e2e_watch_open(struct e2e_shim *s, const char *session);
int e2e_watch_until(lm_rpc_stream_t *st, int phase, int timeout_ms, int *state_out);

#endif
