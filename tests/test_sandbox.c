/*
 * test_sandbox.c: the sandbox model (pods, containers, the simulated task
 * lifecycle, re-keying by a patch) and its snapshot (determinism, round
 * trip, every rejection of import). Parked Waits need rpc calls: they are
 * tested through the task service in test_task_service.c.
 *
 * Snapshots to reject are built with the generated protobuf-c code from a
 * valid two-pod fixture with one field broken; each rejection must name
 * the field and leave *out and *vm untouched (ASan checks nothing leaks).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "actors/patcher.h"
#include "shim/sandbox.h"
#include "shim/vmdoc.h"
#include "google/protobuf/any.pb-c.h"
#include "mailbox/msg.h"
#include "snapshot.pb-c.h"

/* ---- helpers ------------------------------------------------------------ */

static void add(lm_sandbox_t *sb, const char *id, const char *pod, enum lm_ctr_type t, unsigned layers)
{
	struct lm_container_spec s = {
		.id = id, .pod_id = pod, .type = t, .bundle = "/b", .rootfs = "/b/rootfs",
		.scratch = "/s", .n_layers = layers, .stdout_path = "/out",
		.process_spec = (const uint8_t *)"{\"args\":[\"sh\"]}", .process_spec_len = 16,
		.containerds = true,
	};
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), 0);
}

static lm_sandbox_t *two_pods(void)
{
	lm_sandbox_t *sb;
	assert_int_equal(lm_sandbox_create(&sb), 0);
	assert_int_equal(lm_sandbox_add_pod(sb, "p1", "netns:/run/netns/p1"), 0);
	assert_int_equal(lm_sandbox_add_pod(sb, "p2", NULL), 0);
	add(sb, "p1", "p1", LM_CTR_SANDBOX, 1);
	add(sb, "web", "p1", LM_CTR_CONTAINER, 3);
	add(sb, "p2", "p2", LM_CTR_SANDBOX, 1);
	add(sb, "db", "p2", LM_CTR_CONTAINER, 2);
	return sb;
}

static struct lm_snapshot_region regions[] = {{0, 1u << 30}, {1ull << 32, 1u << 20}};
static struct lm_snapshot_device devices[] = {{"disk", "scsi0", "/var/vm.img", true}};
static uint8_t compat[] = {1, 2, 3, 0, 255};

static struct lm_snapshot_vm test_vm(void)
{
	struct lm_snapshot_vm vm = {
		.vm_id = "vm-1", .document = "{\"VirtualMachine\":{}}", .compat = compat,
		.compat_len = sizeof compat, .vcpus = 2, .memory_bytes = 1u << 30,
		.regions = regions, .n_regions = 2, .devices = devices, .n_devices = 1,
		.generation = 7,
	};
	return vm;
}

/* ---- the model ------------------------------------------------------------ */

static void test_add_assigns_unique_increasing_pids(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	assert_int_equal(lm_sandbox_find(sb, "p1")->pid, LM_SANDBOX_FIRST_PID);
	assert_int_equal(lm_sandbox_find(sb, "web")->pid, LM_SANDBOX_FIRST_PID + 1);
	assert_int_equal(lm_sandbox_find(sb, "db")->pid, LM_SANDBOX_FIRST_PID + 3);
	assert_int_equal(lm_sandbox_next_pid(sb), LM_SANDBOX_FIRST_PID + 4);
	assert_int_equal(lm_sandbox_find(sb, "web")->state, LM_CTR_CREATED);
	assert_int_equal(lm_sandbox_find(sb, "web")->n_layers, 3);
	assert_string_equal(lm_sandbox_find(sb, "web")->layers[2], "layer2");
	lm_sandbox_destroy(sb);
}

static void test_add_rejects_duplicate_missing_pod_and_second_sandbox(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	struct lm_container_spec s = {.id = "web", .pod_id = "p1", .type = LM_CTR_CONTAINER};
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), -EEXIST);
	s.id = "x";
	s.pod_id = "nope";
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), -ENOENT);
	s.pod_id = "p1";
	s.type = LM_CTR_SANDBOX;
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), -EINVAL);
	s.id = "";
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), -EINVAL);
	assert_int_equal(lm_sandbox_add_pod(sb, "p1", NULL), -EEXIST);
	assert_int_equal(lm_sandbox_add_pod(sb, "", NULL), -EINVAL);
	assert_int_equal(lm_sandbox_count(sb), 4);
	lm_sandbox_destroy(sb);
}

static void test_start_then_kill_stops_with_128_plus_signal(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	uint32_t pid = 0;
	assert_int_equal(lm_sandbox_start(sb, "web", &pid), 0);
	assert_int_equal(pid, lm_sandbox_find(sb, "web")->pid);
	assert_int_equal(lm_sandbox_find(sb, "web")->state, LM_CTR_RUNNING);
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), -EBUSY);
	assert_int_equal(lm_sandbox_kill(sb, "web", 0), -EINVAL);
	assert_int_equal(lm_sandbox_kill(sb, "web", 65), -EINVAL);
	assert_int_equal(lm_sandbox_kill(sb, "web", 9), 0);
	const struct lm_container *c = lm_sandbox_find(sb, "web");
	assert_int_equal(c->state, LM_CTR_STOPPED);
	assert_int_equal(c->exit_status, 137);
	assert_true(c->exited_at_ns > 0);
	assert_int_equal(lm_sandbox_kill(sb, "web", 15), -ESRCH);
	assert_int_equal(lm_sandbox_kill(sb, "nope", 15), -ENOENT);
	assert_int_equal(lm_sandbox_start(sb, "nope", NULL), -ENOENT);
	assert_int_equal(lm_sandbox_exit(sb, "db", 3), 0);
	assert_int_equal(lm_sandbox_find(sb, "db")->exit_status, 3);
	assert_int_equal(lm_sandbox_exit(sb, "db", 4), -ESRCH);
	lm_sandbox_destroy(sb);
}

static void test_delete_refuses_running_and_reports_exit(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	uint32_t pid = 0, st = 0;
	uint64_t at = 0;
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_delete(sb, "web", &pid, &st, &at), -EBUSY);
	assert_int_equal(lm_sandbox_kill(sb, "web", 15), 0);
	assert_int_equal(lm_sandbox_delete(sb, "web", &pid, &st, &at), 0);
	assert_int_equal(pid, LM_SANDBOX_FIRST_PID + 1);
	assert_int_equal(st, 143);
	assert_true(at > 0);
	assert_null(lm_sandbox_find(sb, "web"));
	assert_int_equal(lm_sandbox_delete(sb, "web", NULL, NULL, NULL), -ENOENT);
	/* a created (never started) container deletes too */
	assert_int_equal(lm_sandbox_delete(sb, "db", NULL, NULL, NULL), 0);
	assert_int_equal(lm_sandbox_count(sb), 2);
	lm_sandbox_destroy(sb);
}

static void test_pids_lists_init_until_stopped(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	uint32_t pids[4] = {0};
	assert_int_equal(lm_sandbox_pids(sb, "db", pids, 4), 1);
	assert_int_equal(pids[0], lm_sandbox_find(sb, "db")->pid);
	assert_int_equal(lm_sandbox_start(sb, "db", NULL), 0);
	assert_int_equal(lm_sandbox_pids(sb, "db", pids, 4), 1);
	assert_int_equal(lm_sandbox_kill(sb, "db", 2), 0);
	assert_int_equal(lm_sandbox_pids(sb, "db", pids, 4), 0);
	assert_int_equal(lm_sandbox_pids(sb, "nope", pids, 4), -ENOENT);
	lm_sandbox_destroy(sb);
}

static void test_iteration_is_in_id_order(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	const char *want[] = {"db", "p1", "p2", "web"};
	assert_int_equal(lm_sandbox_count(sb), 4);
	for (size_t i = 0; i < 4; i++)
		assert_string_equal(lm_sandbox_at(sb, i)->id, want[i]);
	assert_null(lm_sandbox_at(sb, 4));
	assert_int_equal(lm_sandbox_pod_count(sb), 2);
	assert_string_equal(lm_sandbox_pod_at(sb, 0)->id, "p1");
	assert_string_equal(lm_sandbox_pod_at(sb, 0)->network, "netns:/run/netns/p1");
	assert_string_equal(lm_sandbox_pod_at(sb, 1)->network, "");
	lm_sandbox_destroy(sb);
}

static void test_remove_pod_removes_its_containers(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	assert_int_equal(lm_sandbox_remove_pod(sb, "p1"), 0);
	assert_int_equal(lm_sandbox_remove_pod(sb, "p1"), -ENOENT);
	assert_null(lm_sandbox_find(sb, "web"));
	assert_null(lm_sandbox_find(sb, "p1"));
	assert_non_null(lm_sandbox_find(sb, "db"));
	assert_int_equal(lm_sandbox_count(sb), 2);
	assert_int_equal(lm_sandbox_remove(sb, "db"), 0);
	assert_int_equal(lm_sandbox_remove(sb, "db"), -ENOENT);
	assert_int_equal(lm_sandbox_count(sb), 1);
	lm_sandbox_destroy(sb);
}

static void test_clear_empties_but_keeps_pid_counter(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	uint32_t next = lm_sandbox_next_pid(sb);
	lm_sandbox_clear(sb);
	assert_int_equal(lm_sandbox_count(sb), 0);
	assert_int_equal(lm_sandbox_pod_count(sb), 0);
	assert_int_equal(lm_sandbox_next_pid(sb), next);
	assert_int_equal(lm_sandbox_add_pod(sb, "p1", NULL), 0);
	add(sb, "a", "p1", LM_CTR_CONTAINER, 0);
	assert_int_equal(lm_sandbox_find(sb, "a")->pid, next);
	lm_sandbox_destroy(sb);
}

/* ---- export / import ------------------------------------------------------- */

static void export(lm_sandbox_t *sb, uint8_t **out, size_t *len)
{
	struct lm_snapshot_vm vm = test_vm();
	assert_int_equal(lm_sandbox_export(sb, &vm, out, len), 0);
	assert_true(*len > 0);
}

static void test_export_twice_gives_identical_bytes(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	uint8_t *a, *b;
	size_t la, lb;
	export(sb, &a, &la);
	export(sb, &b, &lb);
	assert_int_equal(la, lb);
	assert_memory_equal(a, b, la);
	/* an Any with our type URL */
	Google__Protobuf__Any *any = google__protobuf__any__unpack(NULL, la, a);
	assert_non_null(any);
	assert_string_equal(any->type_url, LM_SNAPSHOT_TYPE_URL);
	Lmshim__V1__SandboxSnapshot *s = lmshim__v1__sandbox_snapshot__unpack(NULL, any->value.len, any->value.data);
	assert_non_null(s);
	assert_int_equal(s->schema_version, 1);
	assert_int_equal(s->n_pods, 2);
	assert_string_equal(s->pods[0]->id, "p1");
	assert_int_equal(s->pods[0]->n_containers, 2);
	assert_string_equal(s->pods[0]->containers[0]->id, "p1");
	assert_string_equal(s->pods[0]->containers[1]->id, "web");
	assert_string_equal(s->pods[1]->containers[0]->id, "db");
	assert_int_equal(s->counters->next_pid, LM_SANDBOX_FIRST_PID + 4);
	lmshim__v1__sandbox_snapshot__free_unpacked(s, NULL);
	google__protobuf__any__free_unpacked(any, NULL);
	free(a);
	free(b);
	lm_sandbox_destroy(sb);
}

static void test_export_requires_vm_fields(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	uint8_t *out = NULL;
	size_t len = 0;
	struct lm_snapshot_vm vm = test_vm();
	assert_int_equal(lm_sandbox_export(sb, NULL, &out, &len), -EINVAL);
	vm.document = NULL;
	assert_int_equal(lm_sandbox_export(sb, &vm, &out, &len), -EINVAL);
	vm = test_vm();
	vm.vcpus = 0;
	assert_int_equal(lm_sandbox_export(sb, &vm, &out, &len), -EINVAL);
	assert_null(out);
	lm_sandbox_destroy(sb);
}

/* A valid two-pod snapshot in generated structs, for import tests. */
struct snapfx {
	Lmshim__V1__SandboxSnapshot s;
	Lmshim__V1__VmSnapshot vm;
	Lmshim__V1__Counters cnt;
	Lmshim__V1__PodSnapshot pods[2];
	Lmshim__V1__PodSnapshot *podp[2];
	Lmshim__V1__ContainerSnapshot cs[4];
	Lmshim__V1__ContainerSnapshot *csp[4];
	Lmshim__V1__InitProcess ip[4];
};

static void snapfx_init(struct snapfx *f, bool reversed)
{
	static const char *ids[4] = {"p1", "web", "p2", "db"};
	static const char *pods[2] = {"p1", "p2"};
	memset(f, 0, sizeof(*f));
	lmshim__v1__sandbox_snapshot__init(&f->s);
	lmshim__v1__vm_snapshot__init(&f->vm);
	lmshim__v1__counters__init(&f->cnt);
	f->vm.vm_id = "vm-1";
	f->vm.document = "{}";
	f->vm.vcpus = 1;
	f->vm.memory_bytes = 4096;
	f->cnt.next_pid = 1004;
	f->s.schema_version = 1;
	f->s.vm = &f->vm;
	f->s.counters = &f->cnt;
	for (int i = 0; i < 4; i++) {
		lmshim__v1__container_snapshot__init(&f->cs[i]);
		lmshim__v1__init_process__init(&f->ip[i]);
		f->cs[i].id = (char *)ids[i];
		f->cs[i].type = i % 2 == 0 ? LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX
					   : LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_CONTAINER;
		f->ip[i].pid = 1000 + (uint32_t)i;
		f->ip[i].state = LM_CTR_RUNNING;
		f->ip[i].bundle = "/bundle";
		f->cs[i].init = &f->ip[i];
	}
	/* sorted: p1 [p1, web], p2 [db, p2]; reversed: p2 [p2, db], p1 [web, p1] */
	static const int order[2][2][3] = {
		{{0, 0, 1}, {1, 3, 2}},
		{{1, 2, 3}, {0, 1, 0}},
	};
	for (int p = 0; p < 2; p++) {
		const int *o = order[reversed ? 1 : 0][p];
		lmshim__v1__pod_snapshot__init(&f->pods[p]);
		f->pods[p].id = (char *)pods[o[0]];
		f->pods[p].n_containers = 2;
		f->pods[p].containers = &f->csp[2 * p];
		f->csp[2 * p] = &f->cs[o[1]];
		f->csp[2 * p + 1] = &f->cs[o[2]];
		f->podp[p] = &f->pods[p];
	}
	f->s.n_pods = 2;
	f->s.pods = f->podp;
}

static uint8_t *pack_any(const Lmshim__V1__SandboxSnapshot *s, const char *url, size_t *len)
{
	size_t n = lmshim__v1__sandbox_snapshot__get_packed_size(s);
	uint8_t *body = malloc(n + 1);
	assert_non_null(body);
	lmshim__v1__sandbox_snapshot__pack(s, body);
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	any.type_url = (char *)url;
	any.value.data = body;
	any.value.len = n;
	*len = google__protobuf__any__get_packed_size(&any);
	uint8_t *out = malloc(*len + 1);
	assert_non_null(out);
	google__protobuf__any__pack(&any, out);
	free(body);
	return out;
}

static void test_export_ignores_wire_and_insertion_order(void **state)
{
	(void)state;
	struct snapfx f1, f2;
	snapfx_init(&f1, false);
	snapfx_init(&f2, true);
	size_t l1, l2;
	uint8_t *b1 = pack_any(&f1.s, LM_SNAPSHOT_TYPE_URL, &l1);
	uint8_t *b2 = pack_any(&f2.s, LM_SNAPSHOT_TYPE_URL, &l2);
	assert_memory_not_equal(b1, b2, l1 < l2 ? l1 : l2);   /* the inputs differ in order */
	lm_sandbox_t *s1, *s2;
	struct lm_snapshot_vm v1, v2;
	char err[256];
	assert_int_equal(lm_sandbox_import(b1, l1, &s1, &v1, err, sizeof err), 0);
	assert_int_equal(lm_sandbox_import(b2, l2, &s2, &v2, err, sizeof err), 0);
	uint8_t *e1, *e2;
	size_t el1, el2;
	assert_int_equal(lm_sandbox_export(s1, &v1, &e1, &el1), 0);
	assert_int_equal(lm_sandbox_export(s2, &v2, &e2, &el2), 0);
	assert_int_equal(el1, el2);
	assert_memory_equal(e1, e2, el1);
	/* the sorted input is already canonical */
	assert_int_equal(el1, l1);
	assert_memory_equal(e1, b1, l1);
	free(b1);
	free(b2);
	free(e1);
	free(e2);
	lm_sandbox_destroy(s1);
	lm_sandbox_destroy(s2);
	lm_snapshot_vm_clear(&v1);
	lm_snapshot_vm_clear(&v2);
}

static void test_round_trip_keeps_everything_and_marks_imported(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_kill(sb, "db", 9), 0);
	uint8_t *a;
	size_t la;
	export(sb, &a, &la);
	lm_sandbox_t *im = NULL;
	struct lm_snapshot_vm vm;
	char err[256] = "";
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	assert_string_equal(vm.vm_id, "vm-1");
	assert_string_equal(vm.document, "{\"VirtualMachine\":{}}");
	assert_int_equal(vm.compat_len, sizeof compat);
	assert_memory_equal(vm.compat, compat, sizeof compat);
	assert_int_equal(vm.vcpus, 2);
	assert_int_equal(vm.memory_bytes, 1u << 30);
	assert_int_equal(vm.n_regions, 2);
	assert_int_equal(vm.regions[1].gpa, 1ull << 32);
	assert_int_equal(vm.n_devices, 1);
	assert_string_equal(vm.devices[0].path, "/var/vm.img");
	assert_true(vm.devices[0].read_only);
	assert_int_equal(vm.generation, 7);
	assert_int_equal(lm_sandbox_count(im), 4);
	assert_int_equal(lm_sandbox_next_pid(im), lm_sandbox_next_pid(sb));
	for (size_t i = 0; i < 4; i++) {
		const struct lm_container *x = lm_sandbox_at(sb, i), *y = lm_sandbox_at(im, i);
		assert_string_equal(x->id, y->id);
		assert_string_equal(x->pod_id, y->pod_id);
		assert_int_equal(x->type, y->type);
		assert_int_equal(x->state, y->state);
		assert_int_equal(x->pid, y->pid);
		assert_int_equal(x->exit_status, y->exit_status);
		assert_int_equal(x->exited_at_ns, y->exited_at_ns);
		assert_int_equal(x->n_layers, y->n_layers);
		assert_string_equal(x->rootfs, y->rootfs);
		assert_string_equal(x->stdout_path, y->stdout_path);
		assert_int_equal(x->process_spec_len, y->process_spec_len);
		assert_memory_equal(x->process_spec, y->process_spec, x->process_spec_len);
		assert_null(x->source_id);
		assert_string_equal(y->source_id, y->id);
		assert_false(y->patched);
	}
	assert_string_equal(lm_sandbox_find_pod(im, "p1")->network, "netns:/run/netns/p1");
	/* re-export: the same bytes */
	uint8_t *b;
	size_t lb;
	assert_int_equal(lm_sandbox_export(im, &vm, &b, &lb), 0);
	assert_int_equal(la, lb);
	assert_memory_equal(a, b, la);
	/* new containers on the destination never reuse a PID */
	add(im, "new", "p1", LM_CTR_CONTAINER, 0);
	assert_int_equal(lm_sandbox_find(im, "new")->pid, lm_sandbox_next_pid(sb));
	free(a);
	free(b);
	lm_snapshot_vm_clear(&vm);
	lm_sandbox_destroy(im);
	lm_sandbox_destroy(sb);
}

/* Imports `bytes`; asserts -EINVAL with `needle` in the message and no
 * output touched. */
static void expect_reject(const uint8_t *bytes, size_t len, const char *needle)
{
	lm_sandbox_t *sentinel = (lm_sandbox_t *)(uintptr_t)0x1;
	lm_sandbox_t *out = sentinel;
	struct lm_snapshot_vm vm;
	memset(&vm, 0xab, sizeof vm);
	struct lm_snapshot_vm before = vm;
	char err[256] = "";
	assert_int_equal(lm_sandbox_import(bytes, len, &out, &vm, err, sizeof err), -EINVAL);
	assert_ptr_equal(out, sentinel);
	assert_memory_equal(&vm, &before, sizeof vm);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" does not name \"%s\"", err, needle);
}

static void reject_fx(struct snapfx *f, const char *url, const char *needle)
{
	size_t len;
	uint8_t *b = pack_any(&f->s, url, &len);
	expect_reject(b, len, needle);
	free(b);
}

static void test_import_rejects_bad_type_url(void **state)
{
	(void)state;
	struct snapfx f;
	snapfx_init(&f, false);
	reject_fx(&f, "type.googleapis.com/lmshim.v1.Other", "type_url");
	reject_fx(&f, "", "type_url");
}

static void test_import_rejects_other_schema_version(void **state)
{
	(void)state;
	struct snapfx f;
	snapfx_init(&f, false);
	f.s.schema_version = 2;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "schema_version 2");
	f.s.schema_version = 0;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "schema_version 0");
}

static void test_import_rejects_undecodable_bytes(void **state)
{
	(void)state;
	const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	expect_reject(junk, sizeof junk, "not a google.protobuf.Any");
	/* a good Any around a bad value */
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	any.type_url = (char *)LM_SNAPSHOT_TYPE_URL;
	any.value.data = (uint8_t *)junk;
	any.value.len = sizeof junk;
	uint8_t buf[128];
	size_t n = google__protobuf__any__pack(&any, buf);
	expect_reject(buf, n, "does not decode");
}

static void test_import_rejects_missing_vm_fields(void **state)
{
	(void)state;
	struct snapfx f;
	snapfx_init(&f, false);
	f.s.vm = NULL;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "vm missing");
	snapfx_init(&f, false);
	f.vm.vm_id = "";
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "vm.vm_id");
	snapfx_init(&f, false);
	f.vm.document = "";
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "vm.document");
	snapfx_init(&f, false);
	f.vm.vcpus = 0;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "vm.vcpus");
	snapfx_init(&f, false);
	f.vm.memory_bytes = 0;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "vm.memory_bytes");
	snapfx_init(&f, false);
	f.s.counters = NULL;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "counters missing");
	snapfx_init(&f, false);
	Lmshim__V1__MemoryRegion r = LMSHIM__V1__MEMORY_REGION__INIT;
	Lmshim__V1__MemoryRegion *rp = &r;
	f.vm.n_regions = 1;
	f.vm.regions = &rp;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "vm.regions[0]");
}

static void test_import_rejects_container_in_two_pods(void **state)
{
	(void)state;
	struct snapfx f;
	snapfx_init(&f, false);
	f.cs[3].id = "web";   /* "db" in p2 becomes a second "web" */
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "\"web\" in two pods (\"p1\", \"p2\")");
	snapfx_init(&f, false);
	f.cs[1].id = "p1";    /* twice in p1 */
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "twice in pod");
}

static void test_import_rejects_bad_pods_and_containers(void **state)
{
	(void)state;
	struct snapfx f;
	snapfx_init(&f, false);
	f.pods[1].id = "p1";
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "pods[1].id \"p1\" duplicate");
	snapfx_init(&f, false);
	f.pods[0].id = "";
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "pods[0].id empty");
	snapfx_init(&f, false);
	f.cs[1].id = "";
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "pods[0].containers[1].id empty");
	snapfx_init(&f, false);
	f.cs[1].init = NULL;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "\"web\": init missing");
	snapfx_init(&f, false);
	f.ip[1].pid = 0;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "init.pid is 0");
	snapfx_init(&f, false);
	f.ip[3].pid = 1000;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "share init.pid 1000");
	snapfx_init(&f, false);
	f.cnt.next_pid = 1003;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "counters.next_pid 1003");
	snapfx_init(&f, false);
	f.ip[2].state = 7;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "init.state 7");
	snapfx_init(&f, false);
	f.ip[2].state = LM_CTR_PAUSED;   /* paused, but no process in a guest */
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "init.state 4 invalid");
	snapfx_init(&f, false);
	f.cs[1].type = LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_SANDBOX;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "more than one sandbox");
	snapfx_init(&f, false);
	f.cs[1].type = (Lmshim__V1__ContainerType)9;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "type 9");
}

/* ---- patches ------------------------------------------------------------ */

static lm_sandbox_t *imported(void)
{
	lm_sandbox_t *sb = two_pods(), *im;
	uint8_t *a;
	size_t la;
	struct lm_snapshot_vm vm;
	char err[128];
	export(sb, &a, &la);
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	free(a);
	lm_snapshot_vm_clear(&vm);
	lm_sandbox_destroy(sb);
	return im;
}

static void test_pending_patches_names_unpatched_imports(void **state)
{
	(void)state;
	lm_sandbox_t *im = imported();
	char buf[64];
	assert_int_equal(lm_sandbox_pending_patches(im, buf, sizeof buf), 4);
	assert_string_equal(buf, "db,p1,p2,web");
	char small[8];
	assert_int_equal(lm_sandbox_pending_patches(im, small, sizeof small), 4);
	assert_string_equal(small, "db,p...");
	assert_int_equal(lm_sandbox_pending_patches(im, NULL, 0), 4);
	lm_sandbox_t *fresh = two_pods();
	assert_int_equal(lm_sandbox_pending_patches(fresh, buf, sizeof buf), 0);
	assert_string_equal(buf, "");
	lm_sandbox_destroy(fresh);
	lm_sandbox_destroy(im);
}

static struct lm_patch_result result(const char *src, const char *new_id, unsigned n_layers, char **layers)
{
	struct lm_patch_result r;
	memset(&r, 0, sizeof r);
	r.source_id = (char *)src;
	r.new_id = (char *)new_id;
	r.bundle = "/new/bundle";
	r.rootfs = "/new/bundle/rootfs";
	r.scratch = "/new/scratch";
	r.layers = layers;
	r.n_layers = n_layers;
	r.stdout_path = "/new/out";
	r.containerds = true;
	return r;
}

static void test_apply_patch_rekeys_container(void **state)
{
	(void)state;
	lm_sandbox_t *im = imported();
	uint32_t pid = lm_sandbox_find(im, "web")->pid;
	char *layers[] = {"/l/a", "/l/b", "/l/c"};
	struct lm_patch_result r = result("web", "web-new", 3, layers);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	assert_null(lm_sandbox_find(im, "web"));
	const struct lm_container *c = lm_sandbox_find(im, "web-new");
	assert_non_null(c);
	assert_int_equal(c->pid, pid);
	assert_true(c->patched);
	assert_string_equal(c->source_id, "web");
	assert_string_equal(c->bundle, "/new/bundle");
	assert_string_equal(c->scratch, "/new/scratch");
	assert_string_equal(c->layers[2], "/l/c");
	assert_string_equal(c->stdout_path, "/new/out");
	assert_string_equal(c->pod_id, "p1");
	assert_ptr_equal(lm_sandbox_find_source(im, "web"), c);
	/* still in ID order */
	for (size_t i = 1; i < lm_sandbox_count(im); i++)
		assert_true(strcmp(lm_sandbox_at(im, i - 1)->id, lm_sandbox_at(im, i)->id) < 0);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -EALREADY);
	char buf[64];
	assert_int_equal(lm_sandbox_pending_patches(im, buf, sizeof buf), 3);
	assert_string_equal(buf, "db,p1,p2");
	lm_sandbox_destroy(im);
}

/* A container that runs in the guest keeps its agent ID and guest PID
 * through a snapshot and a patch (the agent knows it by that ID on every
 * host); the PID counter moves past a guest PID. */
static void test_guest_id_and_pid_survive_export_import_and_patch(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "web", 4242), 0);
	assert_int_equal(lm_sandbox_set_guest(sb, "nope", "x", 1), -ENOENT);
	assert_int_equal(lm_sandbox_set_guest(sb, "db", "", 1), -EINVAL);
	assert_int_equal(lm_sandbox_set_guest(sb, "db", "db", 0), -EINVAL);
	assert_int_equal(lm_sandbox_find(sb, "web")->pid, 4242);
	assert_true(lm_sandbox_next_pid(sb) > 4242);
	assert_ptr_equal(lm_sandbox_find_guest(sb, "web"), lm_sandbox_find(sb, "web"));
	assert_null(lm_sandbox_find_guest(sb, "db"));
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	uint8_t *a;
	size_t la;
	export(sb, &a, &la);
	lm_sandbox_t *im = NULL;
	struct lm_snapshot_vm vm;
	char err[256] = "";
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	const struct lm_container *c = lm_sandbox_find(im, "web");
	assert_non_null(c);
	assert_string_equal(c->guest_id, "web");
	assert_int_equal(c->pid, 4242);
	assert_null(lm_sandbox_find(im, "db")->guest_id);   /* simulated stays simulated */
	char *layers[] = {"/l/a", "/l/b", "/l/c"};
	struct lm_patch_result r = result("web", "web-new", 3, layers);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	c = lm_sandbox_find_guest(im, "web");   /* found by its agent ID under its new one */
	assert_non_null(c);
	assert_string_equal(c->id, "web-new");
	assert_int_equal(c->pid, 4242);
	lm_snapshot_vm_clear(&vm);
	lm_sandbox_destroy(im);
	free(a);
	lm_sandbox_destroy(sb);
}

/* The VM's disks in its document: the source names its layers; the
 * destination keeps the list and its order and points each disk at its
 * own copy, the layer the patch path gave the container of that guest ID
 * (found under its new ID); a container or layer it lacks is named. */
static void test_vm_document_disks_follow_the_patched_layers(void **state)
{
	(void)state;
	char s0[LM_VMDOC_SERIAL_CAP], s1[LM_VMDOC_SERIAL_CAP];
	lm_vmdoc_serial(2, 0, s0);
	lm_vmdoc_serial(2, 1, s1);
	assert_string_equal(s0, "c2.l0");
	struct lm_vmdoc_disk d[] = {
		{.serial = s0, .path = "/src/base", .container = "web", .layer = 0},
		{.serial = s1, .path = "/src/top", .container = "web", .layer = 1},
	};
	const char *doc = "{\"Id\":\"vm\",\"VirtualMachine\":{\"Backend\":\"qemu\"}}";
	char *out = NULL, err[300] = "";
	assert_int_equal(lm_vmdoc_set_disks(doc, d, 2, &out, err, sizeof err), 0);
	assert_non_null(strstr(out, "\"Disks\":[{\"Serial\":\"c2.l0\",\"Path\":\"/src/base\""));
	assert_non_null(strstr(out, "\"Backend\":\"qemu\""));

	/* a layer hot-plugged later goes at the end, and counts */
	assert_int_equal(lm_vmdoc_n_disks(out), 2);
	assert_int_equal(lm_vmdoc_n_disks(doc), 0);
	struct lm_vmdoc_disk hot = {.serial = "d2", .path = "/src/new", .container = "web", .layer = 0};
	char *more = NULL;
	assert_int_equal(lm_vmdoc_add_disk(out, &hot, &more, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_n_disks(more), 3);
	assert_true(lm_vmdoc_has_serial(more, "d2"));
	assert_false(lm_vmdoc_has_serial(out, "d2"));
	assert_true(strstr(more, "c2.l1") < strstr(more, "\"d2\""));
	free(more);
	assert_int_equal(lm_vmdoc_add_disk(doc, &hot, &more, err, sizeof err), 0);   /* the first */
	assert_int_equal(lm_vmdoc_n_disks(more), 1);
	free(more);

	/* the destination: web arrived as web-new with its own two layers */
	lm_sandbox_t *sb = imported();
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "web", 42), 0);
	char *layers[] = {"/dst/base", "/dst/top"};
	struct lm_patch_result r = result("web", "web-new", 2, layers);
	assert_int_equal(lm_sandbox_apply_patch(sb, &r), 0);
	char *moved = NULL;
	assert_int_equal(lm_vmdoc_relocate(out, sb, &moved, err, sizeof err), 0);
	assert_non_null(strstr(moved, "\"Serial\":\"c2.l0\",\"Path\":\"/dst/base\""));
	assert_non_null(strstr(moved, "\"Serial\":\"c2.l1\",\"Path\":\"/dst/top\""));
	assert_null(strstr(moved, "/src/"));
	assert_true(strstr(moved, "c2.l0") < strstr(moved, "c2.l1"));   /* the order kept */
	free(moved);

	/* a layer the destination lacks, a guest container it lacks */
	d[1].layer = 2;
	free(out);
	assert_int_equal(lm_vmdoc_set_disks(doc, d, 2, &out, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_relocate(out, sb, &moved, err, sizeof err), -ENOENT);
	assert_null(moved);
	assert_non_null(strstr(err, "disk c2.l1: container web-new has no layer 2"));
	d[1].layer = 1;
	d[1].container = "db";
	free(out);
	assert_int_equal(lm_vmdoc_set_disks(doc, d, 2, &out, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_relocate(out, sb, &moved, err, sizeof err), -ENOENT);
	assert_non_null(strstr(err, "no container here runs as guest container db"));
	free(out);
	/* a simulated layer (not a path) cannot stand for a disk */
	char *rel[] = {"layer0", "/dst/top"};
	lm_sandbox_t *sb2 = imported();
	assert_int_equal(lm_sandbox_set_guest(sb2, "web", "web", 42), 0);
	struct lm_patch_result r2 = result("web", "web-2", 2, rel);
	assert_int_equal(lm_sandbox_apply_patch(sb2, &r2), 0);
	d[1].container = "web";
	assert_int_equal(lm_vmdoc_set_disks(doc, d, 2, &out, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_relocate(out, sb2, &moved, err, sizeof err), -ENOENT);
	assert_non_null(strstr(err, "disk c2.l0"));
	free(out);

	/* no disks: the document as it is; not a document: refused */
	assert_int_equal(lm_vmdoc_relocate(doc, sb, &moved, err, sizeof err), 0);
	assert_non_null(strstr(moved, "\"Backend\":\"qemu\""));
	free(moved);
	assert_int_equal(lm_vmdoc_set_disks("[1]", d, 2, &out, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "not a JSON object"));
	assert_int_equal(lm_vmdoc_relocate("{\"VirtualMachine\":{\"Qemu\":{\"Disks\":[{}]}}}", sb,
					   &moved, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "Disks[0]"));
	lm_sandbox_destroy(sb);
	lm_sandbox_destroy(sb2);
}

/* A deleted container's disks leave the document; the others keep their
 * slots (written on the first removal), and a freed slot shows free. */
static void test_vm_document_disk_removal_keeps_the_other_slots(void **state)
{
	(void)state;
	struct lm_vmdoc_disk d[] = {
		{.serial = "c0.l0", .path = "/l/a", .container = "web", .layer = 0},
		{.serial = "c1.l0", .path = "/l/b", .container = "db", .layer = 0},
		{.serial = "c1.l1", .path = "/l/c", .container = "db", .layer = 1},
	};
	const char *doc = "{\"VirtualMachine\":{\"Qemu\":{}}}";
	char *out = NULL, *more = NULL, *less = NULL, err[200] = "";
	assert_int_equal(lm_vmdoc_slots(doc), 0);
	assert_int_equal(lm_vmdoc_set_disks(doc, d, 3, &out, err, sizeof err), 0);
	assert_null(strstr(out, "Slot"));                     /* boot disks: by index */
	assert_int_equal(lm_vmdoc_slots(out), (1u << 1) | (1u << 2) | (1u << 3));
	struct lm_vmdoc_disk hot = {.serial = "d0", .path = "/l/n", .container = "new", .layer = 0,
				    .slot = 7};
	assert_int_equal(lm_vmdoc_add_disk(out, &hot, &more, err, sizeof err), 0);
	assert_non_null(strstr(more, "\"Serial\":\"d0\",\"Path\":\"/l/n\",\"Container\":\"new\","
			       "\"Layer\":0,\"Slot\":7"));
	assert_int_equal(lm_vmdoc_slots(more), (1u << 1) | (1u << 2) | (1u << 3) | (1u << 7));

	char serials[4][LM_VMDOC_SERIAL_CAP];
	assert_int_equal(lm_vmdoc_disks_of(more, "db", serials, 4), 2);
	assert_string_equal(serials[0], "c1.l0");
	assert_string_equal(serials[1], "c1.l1");
	assert_int_equal(lm_vmdoc_disks_of(more, "db", serials, 1), 1);   /* at most cap */
	assert_int_equal(lm_vmdoc_disks_of(more, "nobody", serials, 4), 0);

	/* a disk whose container is not in the sandbox (deleted, its
	 * detach failed) is an orphan; the others are not */
	lm_sandbox_t *sb = imported();
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "web", 42), 0);
	assert_int_equal(lm_vmdoc_orphans(more, sb, serials, 4), 3);     /* db's two, new's */
	assert_string_equal(serials[0], "c1.l0");
	assert_string_equal(serials[1], "c1.l1");
	assert_string_equal(serials[2], "d0");
	assert_int_equal(lm_vmdoc_orphans(more, sb, serials, 2), 2);     /* at most cap */
	assert_int_equal(lm_vmdoc_orphans(doc, sb, serials, 4), 0);
	assert_int_equal(lm_vmdoc_orphans("[", sb, serials, 4), 0);
	lm_sandbox_destroy(sb);

	/* db's first disk goes: c1.l1 stays in slot 3, slot 2 is free */
	assert_int_equal(lm_vmdoc_remove_disk(more, "c1.l0", &less, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_n_disks(less), 3);
	assert_false(lm_vmdoc_has_serial(less, "c1.l0"));
	assert_non_null(strstr(less, "\"Serial\":\"c1.l1\",\"Path\":\"/l/c\",\"Container\":\"db\","
			       "\"Layer\":1,\"Slot\":3"));
	assert_int_equal(lm_vmdoc_slots(less), (1u << 1) | (1u << 3) | (1u << 7));
	free(more);
	more = NULL;
	assert_int_equal(lm_vmdoc_remove_disk(less, "c1.l0", &more, err, sizeof err), -ENOENT);
	assert_null(more);
	assert_non_null(strstr(err, "no disk c1.l0"));
	assert_int_equal(lm_vmdoc_remove_disk("[", "d0", &more, err, sizeof err), -EINVAL);
	assert_int_equal(lm_vmdoc_slots("["), ~0u);            /* unreadable: nothing free */
	free(less);
	free(out);
}

/* A snapshot whose guest_id is longer than the agent's IDs is refused,
 * naming the container and the field. */
static void test_import_rejects_oversized_guest_id(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	char big[LM_GUEST_ID_MAX + 2];
	memset(big, 'g', sizeof big - 1);
	big[sizeof big - 1] = 0;
	assert_int_equal(lm_sandbox_set_guest(sb, "web", big, 7), 0);
	uint8_t *a;
	size_t la;
	export(sb, &a, &la);
	lm_sandbox_t *im = NULL;
	struct lm_snapshot_vm vm;
	char err[256] = "";
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), -EINVAL);
	assert_null(im);
	assert_non_null(strstr(err, "container \"web\": guest_id longer than 64 bytes"));
	free(a);
	lm_sandbox_destroy(sb);
}

/* ---- task events ------------------------------------------------------ */

struct evlog {
	char line[32][48];
	unsigned n;
};

static void record(void *arg, enum lm_sandbox_event type, const struct lm_container *c,
		   const struct lm_exec *x)
{
	struct evlog *l = arg;
	static const char *names[] = { "?", "create", "start", "exit", "delete", "paused", "resumed",
				       "exec-added", "exec-started", "oom" };
	assert_true(l->n < 32);
	if (type == LM_SB_EV_EXIT && x)
		snprintf(l->line[l->n++], 48, "exit %s/%s %u %u", c->id, x->id, x->pid, x->exit_status);
	else if (type == LM_SB_EV_EXIT)
		snprintf(l->line[l->n++], 48, "exit %s %u", c->id, c->exit_status);
	else if (type == LM_SB_EV_EXEC_STARTED)
		snprintf(l->line[l->n++], 48, "%s %s/%s %u", names[type], c->id, x->id, x->pid);
	else if (x)
		snprintf(l->line[l->n++], 48, "%s %s/%s", names[type], c->id, x->id);
	else
		snprintf(l->line[l->n++], 48, "%s %s", names[type], c->id);
}

static void expect_events(struct evlog *l, const char *const *want)
{
	unsigned n = 0;
	while (want[n])
		n++;
	for (unsigned i = 0; i < l->n && i < n; i++)
		assert_string_equal(l->line[i], want[i]);
	assert_int_equal(l->n, n);
	l->n = 0;
}

static void test_task_events_follow_the_lifecycle_once_each(void **state)
{
	(void)state;
	lm_sandbox_t *sb;
	struct evlog l = { .n = 0 };
	assert_int_equal(lm_sandbox_create(&sb), 0);
	lm_sandbox_set_event_fn(sb, record, &l);
	assert_int_equal(lm_sandbox_add_pod(sb, "p1", NULL), 0);
	add(sb, "p1", "p1", LM_CTR_SANDBOX, 1);
	add(sb, "web", "p1", LM_CTR_CONTAINER, 1);
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), -EBUSY);   /* no second start */
	assert_int_equal(lm_sandbox_kill(sb, "web", 9), 0);
	assert_int_equal(lm_sandbox_kill(sb, "web", 9), -ESRCH);      /* no second exit */
	assert_int_equal(lm_sandbox_delete(sb, "web", NULL, NULL, NULL), 0);
	assert_int_equal(lm_sandbox_delete(sb, "p1", NULL, NULL, NULL), 0);  /* created, never ran */
	expect_events(&l, (const char *const[]){ "create p1", "create web", "start web", "exit web 137",
						 "delete web", "delete p1", NULL });
	/* refused operations say nothing */
	assert_int_equal(lm_sandbox_kill(sb, "nope", 9), -ENOENT);
	add(sb, "p1", "p1", LM_CTR_SANDBOX, 1);
	assert_int_equal(lm_sandbox_start(sb, "p1", NULL), 0);
	assert_int_equal(lm_sandbox_delete(sb, "p1", NULL, NULL, NULL), -EBUSY);
	expect_events(&l, (const char *const[]){ "create p1", "start p1", NULL });
	/* a teardown (after a migration moved the sandbox) says nothing */
	lm_sandbox_clear(sb);
	assert_int_equal(l.n, 0);
	lm_sandbox_destroy(sb);
}

/* containerd knows only the tasks it created: a container added otherwise
 * (a boot container of lmshim serve) or patched by a Create that was not
 * containerd's (lmctl's) lives its life without a task event. */
static void test_only_containerds_tasks_have_events(void **state)
{
	(void)state;
	lm_sandbox_t *sb, *im;
	struct evlog l = { .n = 0 };
	assert_int_equal(lm_sandbox_create(&sb), 0);
	lm_sandbox_set_event_fn(sb, record, &l);
	assert_int_equal(lm_sandbox_add_pod(sb, "p1", NULL), 0);
	struct lm_container_spec s = { .id = "boot", .pod_id = "p1", .type = LM_CTR_CONTAINER,
				       .n_layers = 1 };
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), 0);
	add(sb, "web", "p1", LM_CTR_CONTAINER, 1);
	assert_int_equal(lm_sandbox_start(sb, "boot", NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_oom(sb, "boot"), 0);
	assert_int_equal(lm_sandbox_oom(sb, "web"), 0);
	assert_int_equal(lm_sandbox_oom(sb, "nope"), -ENOENT);
	expect_events(&l, (const char *const[]){ "create web", "start web", "oom web", NULL });
	uint8_t *a;
	size_t la;
	struct lm_snapshot_vm vm;
	char err[160];
	export(sb, &a, &la);
	assert_int_equal(lm_sandbox_kill(sb, "boot", 9), 0);
	assert_int_equal(lm_sandbox_delete(sb, "boot", NULL, NULL, NULL), 0);
	assert_int_equal(l.n, 0);
	lm_sandbox_destroy(sb);
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	free(a);
	lm_snapshot_vm_clear(&vm);
	lm_sandbox_set_event_fn(im, record, &l);
	char *layers[] = {"/l/a"};
	struct lm_patch_result r = result("web", "web-lmctl", 1, layers);
	r.containerds = false;                      /* lmctl's Create, not containerd's */
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	r = result("boot", "boot-new", 1, layers);  /* containerd's */
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	assert_int_equal(lm_sandbox_kill(im, "web-lmctl", 9), 0);
	expect_events(&l, (const char *const[]){ "create boot-new", "start boot-new", NULL });
	lm_sandbox_destroy(im);
}

/* The guest left by migration: containerd's tasks end here with status 0
 * (an exec'd process too), each with its exit event, and stay until
 * deleted; the others go with their pods. */
static void test_leaving_ends_containerds_tasks_and_forgets_the_rest(void **state)
{
	(void)state;
	lm_sandbox_t *sb;
	struct evlog l = { .n = 0 };
	assert_int_equal(lm_sandbox_create(&sb), 0);
	assert_int_equal(lm_sandbox_add_pod(sb, "p1", NULL), 0);
	assert_int_equal(lm_sandbox_add_pod(sb, "boot", NULL), 0);
	add(sb, "web", "p1", LM_CTR_CONTAINER, 1);
	struct lm_container_spec s = { .id = "b1", .pod_id = "boot", .type = LM_CTR_CONTAINER, .n_layers = 1 };
	assert_int_equal(lm_sandbox_add(sb, &s, NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, "b1", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "g-web", 40), 0);
	struct lm_exec_spec xs = { .id = "x1" };
	assert_int_equal(lm_sandbox_exec_add(sb, "web", &xs, NULL), 0);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "x1", 41), 0);
	lm_sandbox_set_event_fn(sb, record, &l);
	assert_int_equal(lm_sandbox_leave(sb), 1);
	expect_events(&l, (const char *const[]){ "exit web/x1 41 0", "exit web 0", NULL });
	const struct lm_container *w = lm_sandbox_find(sb, "web");
	assert_non_null(w);
	assert_int_equal(w->state, LM_CTR_STOPPED);
	assert_null(w->guest_id);
	assert_null(lm_sandbox_find(sb, "b1"));
	assert_null(lm_sandbox_find_pod(sb, "boot"));
	assert_non_null(lm_sandbox_find_pod(sb, "p1"));
	uint32_t st = 9;
	assert_int_equal(lm_sandbox_delete(sb, "web", NULL, &st, NULL), 0);
	assert_int_equal(st, LM_SANDBOX_MOVED_STATUS);
	assert_int_equal(lm_sandbox_count(sb), 0);
	lm_sandbox_destroy(sb);
}

/* containerd takes over a task lmctl patched: once, from the right source,
 * with its create and state events; its next Start answers the PID. */
static void test_containerd_adopts_a_task_lmctl_patched(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods(), *im;
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	uint32_t pid = lm_sandbox_find(sb, "web")->pid;
	uint8_t *a;
	size_t la;
	struct lm_snapshot_vm vm;
	char err[160];
	export(sb, &a, &la);
	lm_sandbox_destroy(sb);
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	free(a);
	lm_snapshot_vm_clear(&vm);
	struct evlog l = { .n = 0 };
	lm_sandbox_set_event_fn(im, record, &l);
	char *layers[] = {"/l/a", "/l/b", "/l/c"};
	struct lm_patch_result r = result("web", "web-m", 3, layers);
	r.containerds = false;                                  /* lmctl's */
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	assert_int_equal(l.n, 0);
	uint32_t got = 0;
	assert_int_equal(lm_sandbox_start_adopted(im, "web-m", &got), -ESRCH);   /* not adopted */
	assert_int_equal(lm_sandbox_adopt(im, "web-m", "db"), -EINVAL);          /* wrong source */
	assert_int_equal(lm_sandbox_adopt(im, "nope", "web"), -ENOENT);
	assert_int_equal(lm_sandbox_adopt(im, "web-m", "web"), 0);
	expect_events(&l, (const char *const[]){ "create web-m", "start web-m", NULL });
	assert_int_equal(lm_sandbox_adopt(im, "web-m", "web"), -EALREADY);
	assert_int_equal(lm_sandbox_start_adopted(im, "web-m", &got), 0);
	assert_int_equal(got, pid);
	assert_int_equal(lm_sandbox_start_adopted(im, "web-m", &got), -ESRCH);   /* once */
	assert_int_equal(l.n, 0);
	lm_sandbox_destroy(im);
}

/* A guest container pauses and resumes (the guest froze it): each once,
 * each with its event; a paused one is not deleted, still exits (a
 * SIGKILL reaches frozen processes), and travels in the snapshot paused,
 * announced on the destination as started then paused. A simulated
 * container cannot be paused in a snapshot. */
static void test_a_guest_container_pauses_and_travels_paused(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods(), *im;
	struct evlog l = { .n = 0 };
	assert_int_equal(lm_sandbox_set_paused(sb, "web", true), -EBUSY);     /* only created */
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, "db", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "g-web", 40), 0);
	assert_int_equal(lm_sandbox_set_guest(sb, "db", "g-db", 41), 0);
	lm_sandbox_set_event_fn(sb, record, &l);
	assert_int_equal(lm_sandbox_set_paused(sb, "web", false), -EBUSY);    /* not paused */
	assert_int_equal(lm_sandbox_set_paused(sb, "web", true), 0);
	assert_int_equal(lm_sandbox_set_paused(sb, "web", true), -EBUSY);
	assert_int_equal(lm_sandbox_find(sb, "web")->state, LM_CTR_PAUSED);
	assert_int_equal(lm_sandbox_delete(sb, "web", NULL, NULL, NULL), -EBUSY);
	assert_int_equal(lm_sandbox_set_paused(sb, "web", false), 0);
	assert_int_equal(lm_sandbox_find(sb, "web")->state, LM_CTR_RUNNING);
	assert_int_equal(lm_sandbox_set_paused(sb, "nope", true), -ENOENT);
	assert_int_equal(lm_sandbox_set_paused(sb, "db", true), 0);
	assert_int_equal(lm_sandbox_kill(sb, "db", 9), 0);                     /* paused -> stopped */
	assert_int_equal(lm_sandbox_set_paused(sb, "web", true), 0);
	expect_events(&l, (const char *const[]){ "paused web", "resumed web", "paused db", "exit db 137",
						 "paused web", NULL });
	uint8_t *a;
	size_t la;
	struct lm_snapshot_vm vm;
	char err[160];
	export(sb, &a, &la);
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	lm_snapshot_vm_clear(&vm);
	assert_int_equal(lm_sandbox_find(im, "web")->state, LM_CTR_PAUSED);
	lm_sandbox_set_event_fn(im, record, &l);
	char *layers[] = {"/l/a", "/l/b", "/l/c"};
	struct lm_patch_result r = result("web", "web-new", 3, layers);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	expect_events(&l, (const char *const[]){ "create web-new", "start web-new", "paused web-new", NULL });
	lm_sandbox_destroy(im);
	free(a);
	lm_sandbox_destroy(sb);
}

static void test_patched_import_announces_create_then_its_state(void **state)
{
	(void)state;
	/* on the source: web runs, db ran and stopped, p1 was only created */
	lm_sandbox_t *sb = two_pods(), *im;
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_start(sb, "db", NULL), 0);
	assert_int_equal(lm_sandbox_kill(sb, "db", 15), 0);
	uint8_t *a;
	size_t la;
	struct lm_snapshot_vm vm;
	char err[128];
	export(sb, &a, &la);
	struct evlog l = { .n = 0 };
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	free(a);
	lm_snapshot_vm_clear(&vm);
	lm_sandbox_destroy(sb);
	lm_sandbox_set_event_fn(im, record, &l);
	char *layers3[] = {"/l/a", "/l/b", "/l/c"}, *layers2[] = {"/l/a", "/l/b"}, *layers1[] = {"/l/a"};
	struct lm_patch_result r = result("web", "web-new", 3, layers3);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	expect_events(&l, (const char *const[]){ "create web-new", "start web-new", NULL });
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -EALREADY);
	assert_int_equal(l.n, 0);
	r = result("db", "db-new", 2, layers2);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	expect_events(&l, (const char *const[]){ "create db-new", "exit db-new 143", NULL });
	r = result("p2", "p2-new", 1, layers1);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	expect_events(&l, (const char *const[]){ "create p2-new", NULL });
	lm_sandbox_destroy(im);
}

static void test_apply_patch_of_sandbox_container_rekeys_pod(void **state)
{
	(void)state;
	lm_sandbox_t *im = imported();
	char *l1[] = {"/l/pause"};
	struct lm_patch_result r = result("p1", "pod-new", 1, l1);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	assert_null(lm_sandbox_find_pod(im, "p1"));
	assert_non_null(lm_sandbox_find_pod(im, "pod-new"));
	assert_string_equal(lm_sandbox_find(im, "pod-new")->pod_id, "pod-new");
	assert_string_equal(lm_sandbox_find(im, "web")->pod_id, "pod-new");
	assert_string_equal(lm_sandbox_find(im, "db")->pod_id, "p2");
	/* pods stay sorted: "p2" < "pod-new" */
	assert_string_equal(lm_sandbox_pod_at(im, 0)->id, "p2");
	/* the snapshot of the patched sandbox still exports and re-imports */
	struct lm_snapshot_vm vm = test_vm();
	uint8_t *a;
	size_t la;
	assert_int_equal(lm_sandbox_export(im, &vm, &a, &la), 0);
	lm_sandbox_t *again;
	struct lm_snapshot_vm v2;
	char err[128];
	assert_int_equal(lm_sandbox_import(a, la, &again, &v2, err, sizeof err), 0);
	assert_string_equal(lm_sandbox_find(again, "web")->pod_id, "pod-new");
	free(a);
	lm_snapshot_vm_clear(&v2);
	lm_sandbox_destroy(again);
	lm_sandbox_destroy(im);
}

static void test_apply_patch_errors(void **state)
{
	(void)state;
	lm_sandbox_t *im = imported();
	struct lm_patch_result r = result("nope", "x", 0, NULL);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -ENOENT);
	r = result("web", "db", 3, NULL);          /* "db" is taken */
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -EEXIST);
	r = result("p1", "p2", 1, NULL);           /* pod "p2" is taken */
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -EEXIST);
	r = result("web", "w2", 3, NULL);
	r.code = 9;
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -EINVAL);
	/* not imported: a container created here */
	add(im, "local", "p1", LM_CTR_CONTAINER, 0);
	r = result("local", "l2", 0, NULL);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), -ENOENT);
	/* nothing changed */
	assert_non_null(lm_sandbox_find(im, "web"));
	assert_non_null(lm_sandbox_find_pod(im, "p1"));
	assert_int_equal(lm_sandbox_pending_patches(im, NULL, 0), 4);
	lm_sandbox_destroy(im);
}

static void test_import_rejects_too_many_containers(void **state)
{
	(void)state;
	size_t n = LM_SNAPSHOT_MAX_CONTAINERS + 1;
	struct snapfx f;
	snapfx_init(&f, false);
	Lmshim__V1__ContainerSnapshot *cs = calloc(n, sizeof(*cs));
	Lmshim__V1__ContainerSnapshot **csp = calloc(n, sizeof(*csp));
	Lmshim__V1__InitProcess *ip = calloc(n, sizeof(*ip));
	char (*ids)[16] = calloc(n, sizeof(*ids));
	assert_non_null(cs);
	assert_non_null(csp);
	assert_non_null(ip);
	assert_non_null(ids);
	for (size_t i = 0; i < n; i++) {
		lmshim__v1__container_snapshot__init(&cs[i]);
		lmshim__v1__init_process__init(&ip[i]);
		snprintf(ids[i], sizeof ids[i], "c%05zu", i);
		cs[i].id = ids[i];
		cs[i].type = LMSHIM__V1__CONTAINER_TYPE__CONTAINER_TYPE_CONTAINER;
		ip[i].pid = 2000 + (uint32_t)i;
		ip[i].state = LM_CTR_RUNNING;
		cs[i].init = &ip[i];
		csp[i] = &cs[i];
	}
	f.cnt.next_pid = 2000 + (uint32_t)n;
	f.pods[1].n_containers = n;
	f.pods[1].containers = csp;
	reject_fx(&f, LM_SNAPSHOT_TYPE_URL, "over the limit");
	/* at the limit it imports (and fast: uniqueness is checked by sorting) */
	f.pods[1].n_containers = LM_SNAPSHOT_MAX_CONTAINERS - 2;
	size_t len;
	uint8_t *b = pack_any(&f.s, LM_SNAPSHOT_TYPE_URL, &len);
	lm_sandbox_t *sb;
	struct lm_snapshot_vm vm;
	char err[256] = "";
	if (lm_sandbox_import(b, len, &sb, &vm, err, sizeof err) != 0)
		fail_msg("import at the limit: %s", err);
	assert_int_equal(lm_sandbox_count(sb), LM_SNAPSHOT_MAX_CONTAINERS);
	lm_sandbox_destroy(sb);
	lm_snapshot_vm_clear(&vm);
	free(b);
	free(cs);
	free(csp);
	free(ip);
	free(ids);
}

/* ---- exec'd processes ---------------------------------------------------- */

static void add_exec(lm_sandbox_t *sb, const char *id, const char *xid, bool terminal, int want)
{
	struct lm_exec_spec x = {
		.id = xid, .stdin_path = "/src/in", .stdout_path = "/src/out", .stderr_path = "/src/err",
		.terminal = terminal, .process_spec = (const uint8_t *)"{\"args\":[\"ps\"]}",
		.process_spec_len = 15,
	};
	assert_int_equal(lm_sandbox_exec_add(sb, id, &x, NULL), want);
}

/* Exec'd processes of a running guest container: created, started with
 * a guest PID, stopped, deleted, each once, with containerd's events in
 * order even when the exit is reported before the start is applied; the
 * refusals say why (errno); at most LM_SANDBOX_MAX_EXECS at once. */
static void test_exec_lifecycle_and_events(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods();
	struct evlog l = { .n = 0 };
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "g-web", 40), 0);
	lm_sandbox_set_event_fn(sb, record, &l);
	add_exec(sb, "db", "e1", false, -EBUSY);          /* created, not running */
	add_exec(sb, "nope", "e1", false, -ENOENT);
	add_exec(sb, "web", "a/b", false, -EINVAL);
	add_exec(sb, "web", "..", false, -EINVAL);
	add_exec(sb, "web", "e1", false, 0);
	add_exec(sb, "web", "e1", false, -EEXIST);
	add_exec(sb, "web", "e0", false, 0);
	const struct lm_container *k = lm_sandbox_find(sb, "web");
	assert_int_equal(k->n_execs, 2);
	assert_string_equal(lm_container_exec_at(k, 0)->id, "e0");   /* ID order */
	assert_string_equal(lm_container_exec_at(k, 1)->id, "e1");
	assert_null(lm_container_exec_at(k, 2));
	assert_string_equal(lm_sandbox_find_exec(sb, "web", "e1")->stdout_path, "/src/out");
	assert_int_equal(lm_sandbox_find_exec(sb, "web", "e1")->state, LM_CTR_CREATED);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e1", 0), -EINVAL);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e1", 500), 0);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e1", 501), -EBUSY);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e9", 501), -ENOENT);
	/* e0's exit is reported before its start is applied: held, then in order */
	assert_int_equal(lm_sandbox_exec_exit(sb, "web", "e0", 7), 0);
	assert_int_equal(lm_sandbox_find_exec(sb, "web", "e0")->state, LM_CTR_CREATED);
	assert_int_equal(lm_sandbox_exec_exit(sb, "web", "e0", 7), -ESRCH);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e0", 600), 0);
	assert_int_equal(lm_sandbox_find_exec(sb, "web", "e0")->state, LM_CTR_STOPPED);
	assert_int_equal(lm_sandbox_find_exec(sb, "web", "e0")->exit_status, 7);
	assert_int_equal(lm_sandbox_exec_exit(sb, "web", "e1", 2), 0);
	assert_int_equal(lm_sandbox_exec_exit(sb, "web", "e1", 2), -ESRCH);
	expect_events(&l, (const char *const[]){ "exec-added web/e1", "exec-added web/e0",
						 "exec-started web/e1 500", "exec-started web/e0 600",
						 "exit web/e0 600 7", "exit web/e1 500 2", NULL });
	uint32_t pid = 0, st = 0;
	uint64_t at = 0;
	assert_int_equal(lm_sandbox_exec_delete(sb, "web", "e1", &pid, &st, &at), 0);
	assert_int_equal(pid, 500);
	assert_int_equal(st, 2);
	assert_true(at > 0);
	assert_null(lm_sandbox_find_exec(sb, "web", "e1"));
	assert_int_equal(lm_sandbox_exec_delete(sb, "web", "e1", NULL, NULL, NULL), -ENOENT);
	add_exec(sb, "web", "e2", false, 0);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e2", 700), 0);
	assert_int_equal(lm_sandbox_exec_delete(sb, "web", "e2", NULL, NULL, NULL), -EBUSY);
	assert_int_equal(l.n, 2);                         /* deletes say nothing */
	/* the container's own state is untouched */
	assert_int_equal(lm_sandbox_find(sb, "web")->state, LM_CTR_RUNNING);
	/* a bounded number at once */
	lm_sandbox_set_event_fn(sb, NULL, NULL);
	for (unsigned i = lm_sandbox_find(sb, "web")->n_execs; i < LM_SANDBOX_MAX_EXECS; i++) {
		char xid[16];
		snprintf(xid, sizeof xid, "x%u", i);
		add_exec(sb, "web", xid, false, 0);
	}
	add_exec(sb, "web", "one-more", false, -ENOSPC);
	lm_sandbox_destroy(sb);
}

/* Exec'd processes travel in the snapshot with their state, guest PID and
 * exit; on the destination they raise no event (containerd there never
 * created them), and the patch gives them output files in the new bundle
 * and no stdin. */
static void test_execs_travel_in_the_snapshot(void **state)
{
	(void)state;
	lm_sandbox_t *sb = two_pods(), *im;
	assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
	assert_int_equal(lm_sandbox_set_guest(sb, "web", "g-web", 40), 0);
	add_exec(sb, "web", "e1", false, 0);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e1", 500), 0);
	add_exec(sb, "web", "e2", true, 0);
	assert_int_equal(lm_sandbox_exec_start(sb, "web", "e2", 501), 0);
	assert_int_equal(lm_sandbox_exec_exit(sb, "web", "e2", 5), 0);
	add_exec(sb, "web", "e3", false, 0);
	uint8_t *a;
	size_t la;
	struct lm_snapshot_vm vm;
	char err[256];
	export(sb, &a, &la);
	assert_int_equal(lm_sandbox_import(a, la, &im, &vm, err, sizeof err), 0);
	lm_snapshot_vm_clear(&vm);
	free(a);
	const struct lm_container *k = lm_sandbox_find(im, "web");
	assert_int_equal(k->n_execs, 3);
	const struct lm_exec *e1 = lm_sandbox_find_exec(im, "web", "e1");
	const struct lm_exec *e2 = lm_sandbox_find_exec(im, "web", "e2");
	assert_int_equal(e1->state, LM_CTR_RUNNING);
	assert_int_equal(e1->pid, 500);
	assert_true(e1->imported);
	assert_int_equal(e1->process_spec_len, 15);
	assert_memory_equal(e1->process_spec, "{\"args\":[\"ps\"]}", 15);
	assert_int_equal(e2->state, LM_CTR_STOPPED);
	assert_int_equal(e2->exit_status, 5);
	assert_int_equal(e2->exited_at_ns, lm_sandbox_find_exec(sb, "web", "e2")->exited_at_ns);
	assert_true(e2->terminal);
	assert_int_equal(lm_sandbox_find_exec(im, "web", "e3")->state, LM_CTR_CREATED);
	struct evlog l = { .n = 0 };
	lm_sandbox_set_event_fn(im, record, &l);
	char *layers[] = {"/l/a", "/l/b", "/l/c"};
	struct lm_patch_result r = result("web", "web-new", 3, layers);
	assert_int_equal(lm_sandbox_apply_patch(im, &r), 0);
	expect_events(&l, (const char *const[]){ "create web-new", "start web-new", NULL });
	e1 = lm_sandbox_find_exec(im, "web-new", "e1");
	e2 = lm_sandbox_find_exec(im, "web-new", "e2");
	assert_string_equal(e1->stdin_path, "");
	assert_string_equal(e1->stdout_path, "/new/bundle/exec-e1.stdout");
	assert_string_equal(e1->stderr_path, "/new/bundle/exec-e1.stderr");
	assert_string_equal(e2->stdout_path, "/new/bundle/exec-e2.stdout");
	assert_string_equal(e2->stderr_path, "");         /* a terminal: one stream */
	/* its exit here says nothing to this containerd either */
	assert_int_equal(lm_sandbox_exec_exit(im, "web-new", "e1", 0), 0);
	assert_int_equal(lm_sandbox_find_exec(im, "web-new", "e1")->state, LM_CTR_STOPPED);
	assert_int_equal(l.n, 0);
	lm_sandbox_destroy(im);
	lm_sandbox_destroy(sb);
}

/* The snapshot's execs are checked like the rest: named as the agent
 * takes them, unique and in order, in an exec's states, with a PID once
 * running, and only for a guest container. */
static void test_import_rejects_bad_execs(void **state)
{
	(void)state;
	static const struct { const char *id0, *id1; uint32_t state, pid; bool no_guest; const char *needle; }
	cases[] = {
		{ "a/b", NULL, 2, 9, false, "execs[0].id \"a/b\" invalid" },
		{ "", NULL, 2, 9, false, "execs[0].id \"\" invalid" },
		{ "e2", "e1", 2, 9, false, "execs[1].id \"e1\" duplicate or out of order" },
		{ "e1", "e1", 2, 9, false, "execs[1].id \"e1\" duplicate or out of order" },
		{ "e1", NULL, 4, 9, false, "exec \"e1\": state 4 invalid" },
		{ "e1", NULL, 0, 9, false, "exec \"e1\": state 0 invalid" },
		{ "e1", NULL, 2, 0, false, "exec \"e1\": running without a pid" },
		{ "e1", NULL, 2, 9, true, "container \"web\": execs without a guest_id" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		lm_sandbox_t *sb = two_pods();
		assert_int_equal(lm_sandbox_start(sb, "web", NULL), 0);
		assert_int_equal(lm_sandbox_set_guest(sb, "web", "g-web", 40), 0);
		add_exec(sb, "web", "x1", false, 0);
		add_exec(sb, "web", "x2", false, 0);
		uint8_t *a;
		size_t la;
		export(sb, &a, &la);
		Google__Protobuf__Any *any = google__protobuf__any__unpack(NULL, la, a);
		assert_non_null(any);
		Lmshim__V1__SandboxSnapshot *s =
			lmshim__v1__sandbox_snapshot__unpack(NULL, any->value.len, any->value.data);
		assert_non_null(s);
		Lmshim__V1__ContainerSnapshot *web = NULL;
		for (size_t p = 0; p < s->n_pods; p++)
			for (size_t j = 0; j < s->pods[p]->n_containers; j++)
				if (!strcmp(s->pods[p]->containers[j]->id, "web"))
					web = s->pods[p]->containers[j];
		assert_non_null(web);
		assert_int_equal(web->n_execs, 2);
		char *keep0 = web->execs[0]->id, *keep1 = web->execs[1]->id, *keepg = web->guest_id;
		web->execs[0]->id = (char *)cases[i].id0;
		web->execs[0]->state = cases[i].state;
		web->execs[0]->pid = cases[i].pid;
		if (cases[i].id1)
			web->execs[1]->id = (char *)cases[i].id1;
		else
			web->n_execs = 1;
		if (cases[i].no_guest)
			web->guest_id = (char *)"";
		size_t len;
		uint8_t *b = pack_any(s, LM_SNAPSHOT_TYPE_URL, &len);
		expect_reject(b, len, cases[i].needle);
		free(b);
		web->execs[0]->id = keep0;
		web->execs[1]->id = keep1;
		web->guest_id = keepg;
		web->n_execs = 2;
		lmshim__v1__sandbox_snapshot__free_unpacked(s, NULL);
		google__protobuf__any__free_unpacked(any, NULL);
		free(a);
		lm_sandbox_destroy(sb);
	}
}

/* The VM a Create (or StartSandbox) boots is sized by the container's
 * limits: memory = the document's + the limit rounded up to MiB, vCPUs
 * at least the CPU quota's; both capped; a broken document is refused. */
static void test_vm_document_sized_for_a_container(void **state)
{
	(void)state;
	const char *doc = "{\"Id\":\"vm-x\",\"VirtualMachine\":{\"Backend\":\"qemu\",\"ComputeTopology\":"
			  "{\"Memory\":{\"SizeInMB\":256},\"Processor\":{\"Count\":1}}}}";
	char *out = NULL, err[200];
	assert_int_equal(lm_vmdoc_sized(doc, (64u << 20) + 1, 2, &out, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_memory_mb(out), 256 + 65);
	assert_non_null(strstr(out, "\"Count\":2"));
	assert_non_null(strstr(out, "\"Backend\":\"qemu\""));
	free(out);
	assert_int_equal(lm_vmdoc_sized(doc, 0, 0, &out, err, sizeof err), 0);   /* no limits: as written */
	assert_int_equal(lm_vmdoc_memory_mb(out), 256);
	assert_non_null(strstr(out, "\"Count\":1"));
	free(out);
	assert_int_equal(lm_vmdoc_sized(doc, UINT64_MAX / 2, 1000, &out, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_memory_mb(out), 65536);
	assert_non_null(strstr(out, "\"Count\":64"));
	free(out);
	/* no topology: 256 MiB and one vCPU to start from */
	assert_int_equal(lm_vmdoc_sized("{\"VirtualMachine\":{}}", 1u << 20, 0, &out, err, sizeof err), 0);
	assert_int_equal(lm_vmdoc_memory_mb(out), 257);
	free(out);
	assert_int_equal(lm_vmdoc_sized("not json", 0, 0, &out, err, sizeof err), -EINVAL);
	assert_null(out);
	assert_non_null(strstr(err, "not a JSON object"));
	assert_int_equal(lm_vmdoc_sized("{\"Id\":1}", 0, 0, &out, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "no VirtualMachine object"));
	assert_int_equal(lm_vmdoc_memory_mb("{}"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_assigns_unique_increasing_pids),
		cmocka_unit_test(test_task_events_follow_the_lifecycle_once_each),
		cmocka_unit_test(test_only_containerds_tasks_have_events),
		cmocka_unit_test(test_leaving_ends_containerds_tasks_and_forgets_the_rest),
		cmocka_unit_test(test_containerd_adopts_a_task_lmctl_patched),
		cmocka_unit_test(test_patched_import_announces_create_then_its_state),
		cmocka_unit_test(test_a_guest_container_pauses_and_travels_paused),
		cmocka_unit_test(test_exec_lifecycle_and_events),
		cmocka_unit_test(test_execs_travel_in_the_snapshot),
		cmocka_unit_test(test_import_rejects_bad_execs),
		cmocka_unit_test(test_vm_document_sized_for_a_container),
		cmocka_unit_test(test_add_rejects_duplicate_missing_pod_and_second_sandbox),
		cmocka_unit_test(test_start_then_kill_stops_with_128_plus_signal),
		cmocka_unit_test(test_delete_refuses_running_and_reports_exit),
		cmocka_unit_test(test_pids_lists_init_until_stopped),
		cmocka_unit_test(test_iteration_is_in_id_order),
		cmocka_unit_test(test_remove_pod_removes_its_containers),
		cmocka_unit_test(test_clear_empties_but_keeps_pid_counter),
		cmocka_unit_test(test_export_twice_gives_identical_bytes),
		cmocka_unit_test(test_export_requires_vm_fields),
		cmocka_unit_test(test_export_ignores_wire_and_insertion_order),
		cmocka_unit_test(test_round_trip_keeps_everything_and_marks_imported),
		cmocka_unit_test(test_import_rejects_bad_type_url),
		cmocka_unit_test(test_import_rejects_other_schema_version),
		cmocka_unit_test(test_import_rejects_undecodable_bytes),
		cmocka_unit_test(test_import_rejects_missing_vm_fields),
		cmocka_unit_test(test_import_rejects_container_in_two_pods),
		cmocka_unit_test(test_import_rejects_bad_pods_and_containers),
		cmocka_unit_test(test_import_rejects_too_many_containers),
		cmocka_unit_test(test_pending_patches_names_unpatched_imports),
		cmocka_unit_test(test_apply_patch_rekeys_container),
		cmocka_unit_test(test_apply_patch_of_sandbox_container_rekeys_pod),
		cmocka_unit_test(test_apply_patch_errors),
		cmocka_unit_test(test_guest_id_and_pid_survive_export_import_and_patch),
		cmocka_unit_test(test_import_rejects_oversized_guest_id),
		cmocka_unit_test(test_vm_document_disks_follow_the_patched_layers),
		cmocka_unit_test(test_vm_document_disk_removal_keeps_the_other_slots),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	lm_msg_pool_trim();
	return rc;
}
