/*
 * vmdoc.c: the utility VM's disk list in its document (see vmdoc.h),
 * edited with jansson. Nothing here touches a file or keeps state.
 */
#include "shim/vmdoc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

void lm_vmdoc_serial(unsigned index, unsigned layer, char out[LM_VMDOC_SERIAL_CAP])
{
	snprintf(out, LM_VMDOC_SERIAL_CAP, "c%u.l%u", index % 100000u, layer % 10000u);
}

static json_t *load(const char *doc, char *err, size_t errlen)
{
	json_error_t je;
	json_t *j = json_loads(doc ? doc : "", 0, &je);
	if (!j || !json_is_object(j)) {
		snprintf(err, errlen, "the VM document is not a JSON object%s%s", j ? "" : ": ",
			 j ? "" : je.text);
		json_decref(j);
		return NULL;
	}
	return j;
}

/* VirtualMachine.Qemu of j, made if absent; NULL if one of them is not an
 * object. */
static json_t *qemu_obj(json_t *j)
{
	json_t *vm = json_object_get(j, "VirtualMachine");
	if (!vm) {
		vm = json_object();
		if (!vm || json_object_set_new(j, "VirtualMachine", vm))
			return NULL;
	}
	if (!json_is_object(vm))
		return NULL;
	json_t *q = json_object_get(vm, "Qemu");
	if (!q) {
		q = json_object();
		if (!q || json_object_set_new(vm, "Qemu", q))
			return NULL;
	}
	return json_is_object(q) ? q : NULL;
}

/* One disk's entry (Slot only when given). */
static json_t *disk_json(const struct lm_vmdoc_disk *d)
{
	json_t *e = json_pack("{s:s, s:s, s:s, s:I}", "Serial", d->serial, "Path", d->path,
			      "Container", d->container, "Layer", (json_int_t)d->layer);
	if (e && d->slot && json_object_set_new(e, "Slot", json_integer(d->slot))) {
		json_decref(e);
		return NULL;
	}
	return e;
}

/* VirtualMachine.Qemu.Disks of j (NULL if absent or not a list). */
static json_t *disks_of(json_t *j)
{
	json_t *a = json_object_get(json_object_get(json_object_get(j, "VirtualMachine"), "Qemu"),
				    "Disks");
	return json_is_array(a) ? a : NULL;
}

/* The slot of entry i of the list: its Slot, else i + 1. */
static unsigned slot_at(json_t *d, size_t i)
{
	json_t *v = json_object_get(d, "Slot");
	return json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) < 32
		       ? (unsigned)json_integer_value(v) : (unsigned)i + 1;
}

static int dump(json_t *j, char **out)
{
	*out = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(j);
	return *out ? 0 : -ENOMEM;
}

int lm_vmdoc_set_disks(const char *doc, const struct lm_vmdoc_disk *disks, unsigned n,
		       char **out, char *err, size_t errlen)
{
	*out = NULL;
	json_t *j = load(doc, err, errlen);
	if (!j)
		return -EINVAL;
	if (!n)
		return dump(j, out);
	json_t *q = qemu_obj(j);
	json_t *a = json_array();
	if (!q || !a) {
		snprintf(err, errlen, "VirtualMachine.Qemu of the VM document is not an object");
		json_decref(a);
		json_decref(j);
		return q ? -ENOMEM : -EINVAL;
	}
	for (unsigned i = 0; i < n; i++) {
		json_t *d = disk_json(&disks[i]);
		if (!d || json_array_append_new(a, d)) {
			json_decref(a);
			json_decref(j);
			return -ENOMEM;
		}
	}
	if (json_object_set_new(q, "Disks", a)) {
		json_decref(j);
		return -ENOMEM;
	}
	return dump(j, out);
}

int lm_vmdoc_add_disk(const char *doc, const struct lm_vmdoc_disk *disk, char **out, char *err,
		      size_t errlen)
{
	*out = NULL;
	json_t *j = load(doc, err, errlen);
	if (!j)
		return -EINVAL;
	json_t *q = qemu_obj(j);
	json_t *a = q ? json_object_get(q, "Disks") : NULL;
	if (q && !a) {
		a = json_array();
		if (!a || json_object_set_new(q, "Disks", a)) {
			json_decref(j);
			return -ENOMEM;
		}
	}
	if (!q || !json_is_array(a)) {
		snprintf(err, errlen, "VirtualMachine.Qemu.Disks of the VM document is not a list");
		json_decref(j);
		return -EINVAL;
	}
	json_t *d = disk_json(disk);
	if (!d || json_array_append_new(a, d)) {
		json_decref(j);
		return -ENOMEM;
	}
	return dump(j, out);
}

bool lm_vmdoc_has_serial(const char *doc, const char *serial)
{
	char err[8];
	json_t *j = load(doc, err, sizeof err);
	if (!j)
		return true;
	json_t *a = json_object_get(json_object_get(json_object_get(j, "VirtualMachine"), "Qemu"),
				    "Disks");
	bool found = false;
	size_t i;
	json_t *d;
	json_array_foreach(a, i, d) {
		const char *s = json_string_value(json_object_get(d, "Serial"));
		found |= s && !strcmp(s, serial);
	}
	json_decref(j);
	return found;
}

unsigned lm_vmdoc_n_disks(const char *doc)
{
	char err[8];
	json_t *j = load(doc, err, sizeof err);
	unsigned n = (unsigned)json_array_size(json_object_get(
		json_object_get(json_object_get(j, "VirtualMachine"), "Qemu"), "Disks"));
	json_decref(j);
	return n;
}

unsigned lm_vmdoc_slots(const char *doc)
{
	char err[8];
	json_t *j = load(doc, err, sizeof err);
	if (!j)
		return ~0u;
	unsigned used = 0;
	size_t i;
	json_t *d;
	json_array_foreach(disks_of(j), i, d)
		used |= 1u << slot_at(d, i);
	json_decref(j);
	return used;
}

/* The serials of the disks whose Container `keep` accepts (at most cap,
 * in the list's order) into out; how many. */
static unsigned serials_where(const char *doc, bool (*keep)(const char *guest_id, const void *arg),
			      const void *arg, char (*out)[LM_VMDOC_SERIAL_CAP], unsigned cap)
{
	char err[8];
	json_t *j = load(doc, err, sizeof err);
	unsigned n = 0;
	size_t i;
	json_t *d;
	json_array_foreach(disks_of(j), i, d) {
		const char *s = json_string_value(json_object_get(d, "Serial"));
		const char *g = json_string_value(json_object_get(d, "Container"));
		if (s && g && keep(g, arg) && n < cap)
			snprintf(out[n++], LM_VMDOC_SERIAL_CAP, "%s", s);
	}
	json_decref(j);
	return n;
}

static bool is_container(const char *guest_id, const void *arg)
{
	return !strcmp(guest_id, arg);
}

static bool not_in_sandbox(const char *guest_id, const void *arg)
{
	return !lm_sandbox_find_guest(arg, guest_id);
}

unsigned lm_vmdoc_disks_of(const char *doc, const char *guest_id,
			   char (*out)[LM_VMDOC_SERIAL_CAP], unsigned cap)
{
	return serials_where(doc, is_container, guest_id, out, cap);
}

unsigned lm_vmdoc_orphans(const char *doc, const lm_sandbox_t *sb,
			  char (*out)[LM_VMDOC_SERIAL_CAP], unsigned cap)
{
	return serials_where(doc, not_in_sandbox, sb, out, cap);
}

int lm_vmdoc_remove_disk(const char *doc, const char *serial, char **out, char *err,
			 size_t errlen)
{
	*out = NULL;
	json_t *j = load(doc, err, errlen);
	if (!j)
		return -EINVAL;
	json_t *a = disks_of(j);
	size_t i, at = (size_t)-1;
	json_t *d;
	json_array_foreach(a, i, d) {
		/* every entry says its slot from now on: the list shrinks */
		if (!json_object_get(d, "Slot") &&
		    json_object_set_new(d, "Slot", json_integer(slot_at(d, i)))) {
			json_decref(j);
			return -ENOMEM;
		}
		const char *s = json_string_value(json_object_get(d, "Serial"));
		if (s && !strcmp(s, serial))
			at = i;
	}
	if (at == (size_t)-1) {
		snprintf(err, errlen, "the VM document has no disk %.20s", serial);
		json_decref(j);
		return -ENOENT;
	}
	json_array_remove(a, at);
	return dump(j, out);
}

int lm_vmdoc_relocate(const char *doc, const lm_sandbox_t *sb, char **out, char *err,
		      size_t errlen)
{
	*out = NULL;
	json_t *j = load(doc, err, errlen);
	if (!j)
		return -EINVAL;
	json_t *a = json_object_get(json_object_get(json_object_get(j, "VirtualMachine"), "Qemu"),
				    "Disks");
	if (!a)
		return dump(j, out);
	if (!json_is_array(a)) {
		snprintf(err, errlen, "VirtualMachine.Qemu.Disks of the VM document is not a list");
		json_decref(j);
		return -EINVAL;
	}
	size_t i;
	json_t *d;
	json_array_foreach(a, i, d) {
		const char *serial = json_string_value(json_object_get(d, "Serial"));
		const char *gid = json_string_value(json_object_get(d, "Container"));
		json_t *lj = json_object_get(d, "Layer");
		if (!serial || !gid || !json_is_integer(lj) || json_integer_value(lj) < 0) {
			snprintf(err, errlen, "VirtualMachine.Qemu.Disks[%zu] of the VM document lacks "
				 "Serial, Container or Layer", i);
			json_decref(j);
			return -EINVAL;
		}
		json_int_t layer = json_integer_value(lj);
		const struct lm_container *k = lm_sandbox_find_guest(sb, gid);
		if (!k) {
			snprintf(err, errlen, "disk %.20s: no container here runs as guest container "
				 "%.64s", serial, gid);
			json_decref(j);
			return -ENOENT;
		}
		if (layer >= (json_int_t)k->n_layers || !k->layers[layer] || k->layers[layer][0] != '/') {
			snprintf(err, errlen, "disk %.20s: container %.64s has no layer %lld here "
				 "(%u layer(s)%s%.200s): its Create must name this host's copy of the "
				 "source's layer", serial, k->id, (long long)layer, k->n_layers,
				 layer < (json_int_t)k->n_layers ? ", given " : "",
				 layer < (json_int_t)k->n_layers && k->layers[layer] ? k->layers[layer] : "");
			json_decref(j);
			return -ENOENT;
		}
		if (json_object_set_new(d, "Path", json_string(k->layers[layer]))) {
			json_decref(j);
			return -ENOMEM;
		}
	}
	return dump(j, out);
}

int lm_vmdoc_sized(const char *doc, uint64_t memory_limit, uint32_t cpus, char **out, char *err,
		   size_t errlen)
{
	*out = NULL;
	json_t *j = load(doc, err, errlen);
	if (!j)
		return -EINVAL;
	json_t *vm = json_object_get(j, "VirtualMachine");
	json_t *top = json_object_get(vm, "ComputeTopology");
	if (!json_is_object(vm) || (top && !json_is_object(top))) {
		snprintf(err, errlen, "the VM document has no VirtualMachine object");
		json_decref(j);
		return -EINVAL;
	}
	if (!top && json_object_set_new(vm, "ComputeTopology", top = json_object()))
		goto oom;
	json_t *mem = json_object_get(top, "Memory"), *proc = json_object_get(top, "Processor");
	if (!json_is_object(mem) && json_object_set_new(top, "Memory", mem = json_object()))
		goto oom;
	if (!json_is_object(proc) && json_object_set_new(top, "Processor", proc = json_object()))
		goto oom;
	json_t *mb = json_object_get(mem, "SizeInMB"), *n = json_object_get(proc, "Count");
	uint64_t base = json_is_integer(mb) && json_integer_value(mb) > 0 ? (uint64_t)json_integer_value(mb) : 256;
	uint64_t add = (memory_limit + (1u << 20) - 1) >> 20;
	uint64_t total = base + add > 65536 ? 65536 : base + add;
	uint64_t count = json_is_integer(n) && json_integer_value(n) > 0 ? (uint64_t)json_integer_value(n) : 1;
	if (cpus > count)
		count = cpus > 64 ? 64 : cpus;
	if (json_object_set_new(mem, "SizeInMB", json_integer((json_int_t)total)) ||
	    json_object_set_new(proc, "Count", json_integer((json_int_t)count)))
		goto oom;
	return dump(j, out);
oom:
	json_decref(j);
	return -ENOMEM;
}

unsigned lm_vmdoc_memory_mb(const char *doc)
{
	char err[8];
	json_t *j = load(doc, err, sizeof err);
	json_t *mb = json_object_get(json_object_get(json_object_get(json_object_get(j, "VirtualMachine"),
								     "ComputeTopology"), "Memory"), "SizeInMB");
	json_int_t v = json_is_integer(mb) ? json_integer_value(mb) : 0;
	json_decref(j);
	return v > 0 && v < (json_int_t)UINT32_MAX ? (unsigned)v : 0;
}
