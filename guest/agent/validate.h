/*
 * validate.h: the agent's checks on decoded requests, pure functions (no
 * state, no I/O) shared by the rpc handlers and the fuzz target.
 *
 * protobuf-c decodes the wire (and rejects malformed protobuf); these
 * checks then hold every request to the rules of proto/agent.proto:
 * names of the allowed characters and lengths, bounded counts and sizes,
 * paths that stay inside the container's root, "KEY=value" environment
 * entries, signal numbers. Each failure names the field and the rule,
 * and is answered as InvalidArgument by the caller.
 */
#ifndef LM_GUEST_AGENT_VALIDATE_H
#define LM_GUEST_AGENT_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent.pb-c.h"

#define LM_AGENT_MAX_ID        64u           /* container and exec IDs */
#define LM_AGENT_MAX_SERIAL    20u           /* virtio-blk serial */
#define LM_AGENT_MAX_LAYERS    64u
#define LM_AGENT_MAX_ARGS      1024u
#define LM_AGENT_MAX_ENV       1024u
#define LM_AGENT_MAX_STR       (32u << 10)   /* one arg / env entry */
#define LM_AGENT_MAX_ARGV_BYTES (256u << 10) /* args + env together */
#define LM_AGENT_MAX_PATH      4095u
#define LM_AGENT_MAX_HOSTNAME  64u
#define LM_AGENT_MAX_STDIN     (1u << 20)    /* one WriteStdin's data */

/* The methods of the Agent service, in the order of the service table. */
enum lm_agent_method {
	M_INFO, M_CREATE, M_START, M_EXEC, M_KILL, M_WAIT, M_PS, M_STATS, M_PAUSE,
	M_RESUME, M_RESIZE, M_STDIN, M_CLOSE_STDIN, M_OUTPUT, M_ACK, M_DELETE_PROC,
	M_DELETE_CONTAINER, M_UPDATE, M_COUNT
};

struct lm_agent_method_desc {
	const char *name;                          /* bare method name */
	const ProtobufCMessageDescriptor *req;     /* its request message */
};
extern const struct lm_agent_method_desc lm_agent_methods[M_COUNT];

/* Thread: any. The checks of one decoded request of method m (msg is of
 * lm_agent_methods[m].req's type). 0 or -EINVAL with why. */
int lm_agent_check_request(enum lm_agent_method m, const ProtobufCMessage *msg, char *why, size_t n);

/* Thread: any. Container/exec ID: 1..64 of [A-Za-z0-9_.-], not "."/".."
 * (exec IDs may be "" where the init is meant: allow_empty). 0 or
 * -EINVAL with why filled in ("<field>: <rule>"). */
int lm_agent_check_id(const char *field, const char *id, bool allow_empty, char *why, size_t n);

/* Thread: any. An absolute path inside the root: starts with '/', no ".."
 * component, at most LM_AGENT_MAX_PATH bytes. */
int lm_agent_check_path(const char *field, const char *path, char *why, size_t n);

/* Thread: any. A process spec (args non-empty, sizes, env form, cwd). */
int lm_agent_check_process(const Lmshim__Agent__V1__Process *p, char *why, size_t n);

/* Thread: any. The whole CreateContainer request. */
int lm_agent_check_create(const Lmshim__Agent__V1__CreateContainerRequest *r, char *why, size_t n);

/* Thread: any. Signal numbers 1..64. */
int lm_agent_check_signal(uint32_t sig, char *why, size_t n);

#endif
