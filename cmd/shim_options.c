/*
 * shim_options.c: lmshim's runtime options: the Any containerd writes on
 * start's stdin, decoded to the options file's JSON, and that JSON checked
 * key by key (see shim_options.h for the keys).
 */
#include "cmd/shim_options.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "google/protobuf/any.pb-c.h"
#include "runtime_options.pb-c.h"
#include "shim/shim.h"

#define OPTIONS_FILE_MAX (64u << 10)

void lm_shim_options_default(struct lm_shim_options *o)
{
	*o = (struct lm_shim_options){ .vm_memory_mb = 256, .vcpus = 1, .checksum = true,
				       .vmm_on_link = true,
				       .stall_ms = 10000, .orphan_ms = LM_SHIM_ORPHAN_MS_DEFAULT,
				       .transfer_cpu = LM_SHIM_TRANSFER_CPU_DEFAULT };
}

void lm_shim_options_clear(struct lm_shim_options *o)
{
	free(o->migration_tls_dir);
	o->migration_tls_dir = NULL;
}

/* The file's whole text (at most OPTIONS_FILE_MAX bytes), or NULL with err. */
static char *read_small_file(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		snprintf(err, errlen, "options file %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > (off_t)OPTIONS_FILE_MAX) {
		snprintf(err, errlen, "options file %s: %s", path,
			 S_ISREG(st.st_mode) ? "larger than 64 KiB" : "not a regular file");
		close(fd);
		return NULL;
	}
	char *text = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (text && got < (size_t)st.st_size) {
		ssize_t n = read(fd, text + got, (size_t)st.st_size - got);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	if (!text || got != (size_t)st.st_size) {
		snprintf(err, errlen, "options file %s: %s", path, text ? "short read" : "out of memory");
		free(text);
		return NULL;
	}
	text[got] = 0;
	return text;
}

/* "runtimeoptions.v1.Options", bare (gogo's typeurl) or behind a
 * "type.googleapis.com/"-like prefix. */
static bool type_is(const char *url, const char *name)
{
	const char *slash = strrchr(url, '/');
	return !strcmp(slash ? slash + 1 : url, name);
}

int lm_shim_options_from_any(const uint8_t *buf, size_t len, char **json_out, char *err,
			     size_t errlen)
{
	*json_out = NULL;
	if (!len)
		return 0;
	Google__Protobuf__Any *any = google__protobuf__any__unpack(NULL, len, buf);
	if (!any || !any->type_url || !*any->type_url) {
		snprintf(err, errlen, "runtime options on stdin: %s (%zu bytes)",
			 any ? "an Any without a type" : "not a protobuf Any", len);
		if (any)
			google__protobuf__any__free_unpacked(any, NULL);
		return -EINVAL;
	}
	if (!type_is(any->type_url, "runtimeoptions.v1.Options")) {
		snprintf(err, errlen, "runtime options of type %.120s: lmshim takes runtimeoptions.v1.Options "
			 "(ctr run --runtime-config-path FILE, or ConfigPath in the CRI's runtime options)%s",
			 any->type_url,
			 type_is(any->type_url, "containerd.runc.v1.Options") ? "; these are runc's" : "");
		google__protobuf__any__free_unpacked(any, NULL);
		return -EINVAL;
	}
	Runtimeoptions__V1__Options *o =
		runtimeoptions__v1__options__unpack(NULL, any->value.len, any->value.data);
	google__protobuf__any__free_unpacked(any, NULL);
	if (!o) {
		snprintf(err, errlen, "runtime options: runtimeoptions.v1.Options does not decode");
		return -EINVAL;
	}
	int rc = 0;
	if (o->config_path && *o->config_path) {
		*json_out = read_small_file(o->config_path, err, errlen);
		rc = *json_out ? 0 : -EINVAL;
	} else if (o->config_body && *o->config_body) {
		const char *b = o->config_body;
		while (*b == ' ' || *b == '\t' || *b == '\n' || *b == '\r')
			b++;
		if (*b != '{') {
			snprintf(err, errlen, "runtime options: config_body is not JSON (lmshim's options "
				 "are a JSON object: give its file as config_path)");
			rc = -EINVAL;
		} else if (!(*json_out = strdup(o->config_body))) {
			snprintf(err, errlen, "runtime options: out of memory");
			rc = -ENOMEM;
		}
	}
	runtimeoptions__v1__options__free_unpacked(o, NULL);
	return rc;
}

/* An integer key within [lo, hi] (or 0 when zero_ok). */
static int int_key(json_t *v, const char *key, unsigned long lo, unsigned long hi, bool zero_ok,
		   unsigned long *out, char *err, size_t errlen)
{
	json_int_t n = json_is_integer(v) ? json_integer_value(v) : -1;
	if (!json_is_integer(v) || n < 0 || (unsigned long long)n > hi ||
	    ((unsigned long)n < lo && !(zero_ok && n == 0))) {
		snprintf(err, errlen, "runtime options: \"%s\" wants an integer %s%lu..%lu", key,
			 zero_ok ? "0 or " : "", lo, hi);
		return -EINVAL;
	}
	*out = (unsigned long)n;
	return 0;
}

static int bool_key(json_t *v, const char *key, bool *out, char *err, size_t errlen)
{
	if (!json_is_boolean(v)) {
		snprintf(err, errlen, "runtime options: \"%s\" wants true or false", key);
		return -EINVAL;
	}
	*out = json_is_true(v);
	return 0;
}

int lm_shim_options_parse(const char *json, struct lm_shim_options *o, char *err, size_t errlen)
{
	json_error_t je;
	json_t *root = json_loads(json, 0, &je);
	if (!root || !json_is_object(root)) {
		if (root)
			snprintf(err, errlen, "runtime options: not a JSON object");
		else
			snprintf(err, errlen, "runtime options: not JSON (line %d: %s)", je.line, je.text);
		json_decref(root);
		return -EINVAL;
	}
	const char *key;
	json_t *v;
	int rc = 0;
	json_object_foreach(root, key, v) {
		if (!strcmp(key, "vm_memory_mb"))
			rc = int_key(v, key, 64, 1ul << 20, false, &o->vm_memory_mb, err, errlen);
		else if (!strcmp(key, "vcpus"))
			rc = int_key(v, key, 1, 64, false, &o->vcpus, err, errlen);
		else if (!strcmp(key, "stall_timeout_ms"))
			rc = int_key(v, key, 100, 3600000, false, &o->stall_ms, err, errlen);
		else if (!strcmp(key, "orphan_timeout_ms"))
			rc = int_key(v, key, 100, 86400000, true, &o->orphan_ms, err, errlen);
		else if (!strcmp(key, "transfer_cpu"))
			rc = int_key(v, key, 0, 95, true, &o->transfer_cpu, err, errlen);
		else if (!strcmp(key, "insecure_migration"))
			rc = bool_key(v, key, &o->insecure_migration, err, errlen);
		else if (!strcmp(key, "checksum"))
			rc = bool_key(v, key, &o->checksum, err, errlen);
		else if (!strcmp(key, "vmm_stream_on_link"))
			rc = bool_key(v, key, &o->vmm_on_link, err, errlen);
		else if (!strcmp(key, "debug"))
			rc = bool_key(v, key, &o->debug, err, errlen);
		else if (!strcmp(key, "migration_tls_dir")) {
			const char *d = json_string_value(v);
			if (!d || d[0] != '/') {
				snprintf(err, errlen, "runtime options: \"%s\" wants an absolute path", key);
				rc = -EINVAL;
			} else {
				free(o->migration_tls_dir);
				o->migration_tls_dir = strdup(d);
				rc = o->migration_tls_dir ? 0 : -ENOMEM;
			}
		} else {
			snprintf(err, errlen, "runtime options: unknown key \"%.80s\" (vm_memory_mb, vcpus, "
				 "migration_tls_dir, insecure_migration, checksum, vmm_stream_on_link, stall_timeout_ms, "
				 "orphan_timeout_ms, transfer_cpu, debug)", key);
			rc = -EINVAL;
		}
		if (rc)
			break;
	}
	json_decref(root);
	return rc;
}
