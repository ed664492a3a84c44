/*
 * ocires.c: the OCI "LinuxResources" object read into cgroup v2 limits
 * (see ocires.h), with jansson. Every refusal names the field.
 */
#include "shim/ocires.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

static void note(struct lm_oci_resources *r, const char *field)
{
	size_t n = strlen(r->ignored);
	snprintf(r->ignored + n, sizeof r->ignored - n, "%s%s", n ? ", " : "", field);
}

/* An integer field of obj, or absent (*present false). -EINVAL with why
 * when it is not an integer. */
static int int_field(json_t *obj, const char *parent, const char *key, bool *present, json_int_t *v,
		     char *why, size_t whylen)
{
	json_t *x = json_object_get(obj, key);
	*present = x && !json_is_null(x);
	if (!*present)
		return 0;
	if (!json_is_integer(x)) {
		snprintf(why, whylen, "resources.%s.%s: not an integer", parent, key);
		return -EINVAL;
	}
	*v = json_integer_value(x);
	return 0;
}

/* The spec's rule for a limit: > 0 sets it, -1 lifts it (0 here), 0
 * leaves it. -EINVAL below -1. */
static int limit_of(json_int_t v, const char *field, bool *set, uint64_t *out, char *why, size_t whylen)
{
	if (v < -1) {
		snprintf(why, whylen, "resources.%s: %lld (above 0 sets a limit, -1 lifts it)", field,
			 (long long)v);
		return -EINVAL;
	}
	if (v != 0) {
		*set = true;
		*out = v > 0 ? (uint64_t)v : 0;
	}
	return 0;
}

static int memory_of(json_t *m, struct lm_oci_resources *r, char *why, size_t whylen)
{
	bool p;
	json_int_t v = 0;
	int rc = int_field(m, "memory", "limit", &p, &v, why, whylen);
	if (rc || (p && (rc = limit_of(v, "memory.limit", &r->set_memory, &r->memory_max, why, whylen))))
		return rc;
	static const char *const other[] = { "reservation", "swap", "kernel", "kernelTCP", "swappiness",
					     "disableOOMKiller", "useHierarchy", "checkBeforeUpdate" };
	for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
		json_t *x = json_object_get(m, other[i]);
		if (x && !json_is_null(x) && !(json_is_integer(x) && json_integer_value(x) == 0) &&
		    !json_is_false(x)) {
			char f[48];
			snprintf(f, sizeof f, "memory.%s", other[i]);
			note(r, f);
		}
	}
	return 0;
}

static int cpu_of(json_t *c, struct lm_oci_resources *r, char *why, size_t whylen)
{
	bool pq, pp, ps;
	json_int_t q = 0, per = 0, sh = 0;
	int rc;
	if ((rc = int_field(c, "cpu", "quota", &pq, &q, why, whylen)) ||
	    (rc = int_field(c, "cpu", "period", &pp, &per, why, whylen)) ||
	    (rc = int_field(c, "cpu", "shares", &ps, &sh, why, whylen)))
		return rc;
	if (pp && per != 0 && (per < 1000 || per > 1000000)) {
		snprintf(why, whylen, "resources.cpu.period: %lld us is outside 1000..1000000", (long long)per);
		return -EINVAL;
	}
	if (pq && q > 0 && q < 1000) {
		snprintf(why, whylen, "resources.cpu.quota: %lld us is below 1000 (-1 lifts the limit)",
			 (long long)q);
		return -EINVAL;
	}
	if (pq && (rc = limit_of(q, "cpu.quota", &r->set_cpu_max, &r->cpu_quota_us, why, whylen)))
		return rc;
	if (r->set_cpu_max)
		r->cpu_period_us = pp && per > 0 ? (uint64_t)per : 0;
	else if (pp && per > 0)
		note(r, "cpu.period (without cpu.quota)");
	if (ps && sh != 0) {
		if (sh < 2 || sh > 262144) {
			snprintf(why, whylen, "resources.cpu.shares: %lld is outside 2..262144", (long long)sh);
			return -EINVAL;
		}
		r->set_cpu_weight = true;
		r->cpu_weight = (uint32_t)(1 + ((sh - 2) * 9999) / 262142);
	}
	static const char *const other[] = { "cpus", "mems", "realtimeRuntime", "realtimePeriod", "idle" };
	for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
		json_t *x = json_object_get(c, other[i]);
		if (x && !json_is_null(x) && !(json_is_string(x) && !*json_string_value(x)) &&
		    !(json_is_integer(x) && json_integer_value(x) == 0)) {
			char f[48];
			snprintf(f, sizeof f, "cpu.%s", other[i]);
			note(r, f);
		}
	}
	return 0;
}

int lm_oci_resources_parse(const uint8_t *json, size_t len, struct lm_oci_resources *out, char *why,
			   size_t whylen)
{
	memset(out, 0, sizeof *out);
	json_error_t je;
	json_t *root = json_loadb((const char *)json, len, 0, &je);
	if (!root || !json_is_object(root)) {
		if (root)
			snprintf(why, whylen, "resources: not a JSON object");
		else
			snprintf(why, whylen, "resources: not JSON (%s)", je.text);
		json_decref(root);
		return -EINVAL;
	}
	int rc = 0;
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v) {
		if (json_is_null(v))
			continue;
		bool obj = json_is_object(v);
		if (!strcmp(key, "memory") && obj) {
			rc = memory_of(v, out, why, whylen);
		} else if (!strcmp(key, "cpu") && obj) {
			rc = cpu_of(v, out, why, whylen);
		} else if (!strcmp(key, "pids") && obj) {
			bool p;
			json_int_t l = 0;
			rc = int_field(v, "pids", "limit", &p, &l, why, whylen);
			if (!rc && p)
				rc = limit_of(l, "pids.limit", &out->set_pids, &out->pids_max, why, whylen);
		} else if (!strcmp(key, "memory") || !strcmp(key, "cpu") || !strcmp(key, "pids")) {
			snprintf(why, whylen, "resources.%s: not an object", key);
			rc = -EINVAL;
		} else if (!(json_is_array(v) && !json_array_size(v)) &&
			   !(json_is_object(v) && !json_object_size(v))) {
			note(out, key);
		}
		if (rc)
			break;
	}
	json_decref(root);
	return rc;
}
