/*
 * fuzz_kvm_state: libFuzzer target over the two things a KVM destination
 * reads from a source (hcs/kvm/state.c): the compatibility line of the
 * handshake and the vCPU/device state blob of the blackout. No /dev/kvm
 * is needed: the VM is a stand-in with the fields the parsers read (one
 * or two vCPUs, a CPUID table, an XSAVE size) and no file descriptors, so
 * a blob that passes every check reaches ioctls that fail with EBADF.
 *
 * The first input byte picks the parser (bit 0) and the vCPU count (bit
 * 1); the rest is the compatibility line, or the blob, whose header is
 * sealed first (lm__kvm_state_seal: magic, lengths, shape and hash made
 * right) so that the fuzzer spends its time in the sections, where the
 * length and count fields are.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hcs/kvm/vmm_internal.h"
#include "util/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct kvm_cpuid2 *stand_in_cpuid(void)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 3 * sizeof(c->entries[0]));
	if (!c)
		abort();
	c->nent = 3;
	c->entries[0].function = 0;                 /* vendor: GenuineIntel */
	c->entries[0].ebx = 0x756e6547;
	c->entries[0].edx = 0x49656e69;
	c->entries[0].ecx = 0x6c65746e;
	c->entries[1].function = 1;
	c->entries[1].ecx = 1u << 26;               /* XSAVE */
	c->entries[2].function = 0xd;
	c->entries[2].eax = 7;                      /* x87, SSE, AVX */
	return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	if (!quiet) {
		lm_log_set_level(LM_LOG_OFF);
		quiet = true;
	}
	if (size < 1)
		return 0;
	lm_kvm_vm_t *vm = calloc(1, sizeof(*vm));
	if (!vm)
		abort();
	vm->kvm_fd = vm->vm_fd = vm->mem_fd = -1;
	vm->mem_bytes = 64u << 20;
	vm->n_vcpus = (data[0] & 2) ? 2 : 1;
	vm->xsave_size = 4096;
	vm->xcr0 = 7;
	vm->cpuid = stand_in_cpuid();
	pthread_mutex_init(&vm->lock, NULL);
	for (unsigned i = 0; i < LM_KVM_MAX_VCPUS; i++)
		vm->vcpus[i].fd = -1;
	if (data[0] & 1) {
		char why[256];
		(void)lm_kvm_vm_compat_check(vm, data + 1, size - 1, why, sizeof why);
	} else {
		uint8_t *blob = malloc(size - 1 ? size - 1 : 1);
		if (!blob)
			abort();
		memcpy(blob, data + 1, size - 1);
		lm__kvm_state_seal(vm, blob, size - 1);
		(void)lm_kvm_vm_state_load(vm, blob, size - 1);
		free(blob);
	}
	pthread_mutex_destroy(&vm->lock);
	free(vm->cpuid);
	free(vm);
	return 0;
}
