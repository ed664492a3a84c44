/*
 * shim_options.h: lmshim's runtime options, as containerd hands them over.
 *
 * containerd gives a shim its runtime options twice: packed in a
 * google.protobuf.Any on the stdin of `shim start`, and in every
 * CreateTaskRequest.options. For a runtime that is not runc the type is
 * runtimeoptions.v1.Options (proto/runtime_options.proto): `ctr run
 * --runtime-config-path PATH`, or the CRI's options table with
 * ConfigPath. Its config_path names lmshim's options file, a JSON object
 * (config_body, when there is no path, may carry the same JSON):
 *
 *   { "vm_memory_mb": 512,              utility VM memory before the
 *                                       containers' limits (default 256)
 *     "vcpus": 2,                       at least this many vCPUs (default 1)
 *     "migration_tls_dir": "/etc/lmshim/tls",  mutual TLS on migration links
 *     "insecure_migration": false,      plain TCP links without TLS
 *     "checksum": true,                 batch checksums on sent migrations
 *     "vmm_stream_on_link": true,       QEMU's stream on a unix link itself
 *                                       (false: carried in our records)
 *     "stall_timeout_ms": 10000,        the migration link's liveness
 *     "orphan_timeout_ms": 60000,       a session left by its orchestrator
 *     "transfer_cpu": 90,               percent of a core for the transfer
 *     "debug": false }                  debug logging (as containerd's -debug)
 *
 * Every key is optional; an unknown key, a value of the wrong type or out
 * of range is refused naming the key, so a typo in a host's options fails
 * the first `ctr run` loudly instead of being ignored. `start` reads and
 * checks the options (a refusal is the start's error, which containerd
 * shows) and hands the daemon the JSON text; the daemon applies it.
 *
 * Thread: the caller's (both run before the shim's threads exist).
 */
#ifndef LM_CMD_SHIM_OPTIONS_H
#define LM_CMD_SHIM_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lm_shim_options {
	unsigned long vm_memory_mb;  /* default 256 */
	unsigned long vcpus;         /* default 1 */
	char *migration_tls_dir;     /* NULL: none (heap) */
	bool insecure_migration;
	bool checksum;               /* default true */
	bool vmm_on_link;            /* default true */
	unsigned long stall_ms;      /* default 10000 */
	unsigned long orphan_ms;     /* default LM_SHIM_ORPHAN_MS_DEFAULT */
	unsigned long transfer_cpu;  /* default LM_SHIM_TRANSFER_CPU_DEFAULT */
	bool debug;
};

/* The defaults (what a shim without options runs with). */
void lm_shim_options_default(struct lm_shim_options *o);
void lm_shim_options_clear(struct lm_shim_options *o);

/* The Any containerd wrote on start's stdin (len bytes; 0 = no options).
 * 0 with *json_out the options' JSON text (heap; NULL when the Any names
 * no file and no body), or -EINVAL with err saying why (not an Any; a
 * type lmshim does not take; a config file that cannot be read). */
int lm_shim_options_from_any(const uint8_t *buf, size_t len, char **json_out, char *err,
			     size_t errlen);

/* Parses and checks the JSON text into *o (over its current values).
 * 0, or -EINVAL with err naming the key and why. */
int lm_shim_options_parse(const char *json, struct lm_shim_options *o, char *err, size_t errlen);

#endif
