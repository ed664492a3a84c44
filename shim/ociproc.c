/*
 * ociproc.c: the OCI "process" object read for the guest agent (see
 * ociproc.h), with jansson. Every refusal names the field.
 */
#include "shim/ociproc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

void lm_oci_proc_clear(struct lm_oci_proc *p)
{
	for (size_t i = 0; p->args && i < p->n_args; i++)
		free(p->args[i]);
	free(p->args);
	for (size_t i = 0; p->env && i < p->n_env; i++)
		free(p->env[i]);
	free(p->env);
	free(p->cwd);
	memset(p, 0, sizeof(*p));
}

/* A list of strings (checked) copied; false when out of memory. */
static bool strv_of(json_t *a, char ***out, size_t *n)
{
	*n = json_array_size(a);
	*out = NULL;
	if (!*n)
		return true;
	char **v = calloc(*n, sizeof(char *));
	if (!v)
		return false;
	*out = v;
	for (size_t i = 0; i < *n; i++)
		if (!(v[i] = strdup(json_string_value(json_array_get(a, i)))))
			return false;
	return true;
}

int lm_oci_proc_parse(const char *json, size_t len, const char *where, struct lm_oci_proc *out,
		      char *why, size_t whylen)
{
	memset(out, 0, sizeof(*out));
	json_error_t je;
	json_t *p = json && len ? json_loadb(json, len, 0, &je) : NULL;
	json_t *args = json_object_get(p, "args"), *env = json_object_get(p, "env");
	json_t *cwd = json_object_get(p, "cwd");
	json_t *cs = json_object_get(p, "consoleSize");
	json_t *cw = json_object_get(cs, "width"), *ch = json_object_get(cs, "height");
	int rc = -EINVAL;
	size_t i;
	json_t *v;
	if (json && len && !p) {
		snprintf(why, whylen, "%s: not JSON (line %d: %s)", where, je.line, je.text);
		goto out;
	}
	if (p && !json_is_object(p)) {
		snprintf(why, whylen, "%s: not a JSON object", where);
		goto out;
	}
	if (!json_is_array(args) || !json_array_size(args)) {
		snprintf(why, whylen, "%s.args must be a non-empty list", where);
		goto out;
	}
	json_array_foreach(args, i, v) if (!json_is_string(v)) {
		snprintf(why, whylen, "%s.args[%zu] is not a string", where, i);
		goto out;
	}
	if (env && !json_is_array(env)) {
		snprintf(why, whylen, "%s.env must be a list", where);
		goto out;
	}
	json_array_foreach(env, i, v) if (!json_is_string(v)) {
		snprintf(why, whylen, "%s.env[%zu] is not a string", where, i);
		goto out;
	}
	if (cwd && !json_is_string(cwd)) {
		snprintf(why, whylen, "%s.cwd is not a string", where);
		goto out;
	}
	if (cs && (!json_is_integer(cw) || !json_is_integer(ch) || json_integer_value(cw) < 1 ||
		   json_integer_value(cw) > 65535 || json_integer_value(ch) < 1 ||
		   json_integer_value(ch) > 65535)) {
		snprintf(why, whylen, "%s.consoleSize needs width and height, each 1..65535", where);
		goto out;
	}
	out->width = cs ? (uint16_t)json_integer_value(cw) : 80;
	out->height = cs ? (uint16_t)json_integer_value(ch) : 24;
	bool ok = strv_of(args, &out->args, &out->n_args) && strv_of(env, &out->env, &out->n_env);
	if (ok && cwd)
		ok = (out->cwd = strdup(json_string_value(cwd))) != NULL;
	if (ok) {
		rc = 0;
	} else {
		rc = -ENOMEM;
		snprintf(why, whylen, "%s: out of memory", where);
	}
out:
	if (rc)
		lm_oci_proc_clear(out);
	json_decref(p);
	return rc;
}
