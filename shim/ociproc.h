/*
 * ociproc.h: an OCI runtime-spec "process" object (JSON) read into what
 * the guest agent runs: args, env, cwd and a terminal's first size. A
 * container's comes from its bundle's config.json (task Create), an
 * exec'd process's from the task Exec request's spec. Plain functions:
 * Thread: any.
 */
#ifndef LM_SHIM_OCIPROC_H
#define LM_SHIM_OCIPROC_H

#include <stddef.h>
#include <stdint.h>

struct lm_oci_proc {
	char **args, **env;           /* heap, n_args >= 1 */
	size_t n_args, n_env;
	char *cwd;                    /* NULL: the agent's ("/") */
	uint16_t width, height;       /* consoleSize, else 80x24 */
};

/* Parses `json` (len bytes, not NUL-terminated) into *out. args must be
 * a non-empty list of strings, env a list of strings, cwd a string,
 * consoleSize width and height 1..65535 each. 0, -EINVAL with why
 * naming `where` and the field ("config.json: process.args must be..."),
 * -ENOMEM. *out is left zeroed on failure. */
int lm_oci_proc_parse(const char *json, size_t len, const char *where, struct lm_oci_proc *out,
		      char *why, size_t whylen);

/* Frees what lm_oci_proc_parse put in *p and zeroes it. */
void lm_oci_proc_clear(struct lm_oci_proc *p);

#endif
