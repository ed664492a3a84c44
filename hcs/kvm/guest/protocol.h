/*
 * protocol.h: the contract between the kvm backend's VMM and its guest.
 *
 * The guest is a small freestanding program of ours (guest.c, built at build
 * time into a flat binary and embedded in the library). The VMM lays out
 * guest-physical memory as below, starts the guest directly in 64-bit long
 * mode at LM_KVM_GUEST_LOAD with RDI = vCPU index, and talks to it through
 * two pages:
 *
 *  - the config page (host writes, guest reads at every iteration): which
 *    pattern to dirty memory with, how many pages per iteration, the TSC
 *    pacing, the seed, and a list of pages for controlled runs;
 *  - the status page (guest writes, host reads at any time): per vCPU, the
 *    monotonic iteration counter, the running checksum, the TSC of the last
 *    iteration, the longest gap seen between iterations, and a one-entry
 *    journal of the write in flight.
 *
 * Checksum invariant: the checksum of vCPU i is the XOR of every 64-bit word
 * of vCPU i's share of the data area. The guest updates a word and then the
 * checksum; the journal (addr, old, new) is written before the word, and
 * cleared after the checksum, so that a vCPU stopped between the two stores
 * can still be checked exactly (lm_kvm_vm_verify in vmm.h).
 *
 * The guest never writes to the page tables (A/D bits are preset by the
 * VMM), the GDT, its code or the config page; its only writes outside the
 * data area are to the status page and to its own stack page. Those two are
 * the "private pages" that dirty-log tests account for.
 *
 * Layout (guest-physical):
 *   0x001000 GDT            0x002000 PML4        0x003000 PDPT
 *   0x004000 PDs (up to 16 pages: identity map of 16 GiB with 2 MiB pages)
 *   0x014000 config page    0x015000 status page
 *   0x016000 stacks (one 4 KiB page per vCPU, up to LM_KVM_MAX_VCPUS)
 *   0x01e000 page table mapping the first 2 MiB with 4 KiB pages
 *   0x020000 guest code (up to 0x60000 bytes)
 *   0x100000 data area, to the end of memory
 *
 * This header is included by both the host (C11, hosted) and the guest
 * (freestanding), so it uses only <stdint.h>.
 */
#ifndef LM_HCS_KVM_GUEST_PROTOCOL_H
#define LM_HCS_KVM_GUEST_PROTOCOL_H

#include <stdint.h>

#define LM_KVM_PAGE_SIZE      4096u
#define LM_KVM_GDT_GPA        0x1000u
#define LM_KVM_PML4_GPA       0x2000u
#define LM_KVM_PDPT_GPA       0x3000u
#define LM_KVM_PD_GPA         0x4000u
#define LM_KVM_PD_MAX         16u
#define LM_KVM_CONFIG_GPA     0x14000u
#define LM_KVM_STATUS_GPA     0x15000u
#define LM_KVM_STACK_GPA      0x16000u
#define LM_KVM_MAX_VCPUS      8u
#define LM_KVM_PT_GPA         0x1e000u
#define LM_KVM_GUEST_LOAD     0x20000u
#define LM_KVM_GUEST_MAX      0x60000u
#define LM_KVM_DATA_GPA       0x100000u

#define LM_KVM_CONFIG_MAGIC   0x4c4d4b564d434647ull /* "LMKVMCFG" */
#define LM_KVM_STATUS_MAGIC   0x4c4d4b564d535441ull /* "LMKVMSTA" */

/* Port the guest writes to (one 32-bit OUT) when it hits a fatal condition;
 * the value is one of lm_kvm_guest_fault. Any I/O exit is unexpected
 * otherwise. */
#define LM_KVM_PORT_FAULT     0x00f4u
/* Port the guest writes to (one 32-bit OUT, value in microseconds) when its
 * TSC pacing has it wait longer than LM_KVM_SLEEP_MIN_US: the vCPU thread
 * sleeps that long (at most 10 ms, less if paused or stopped) instead of
 * the guest spinning, so that an idle or slow guest costs little CPU. */
#define LM_KVM_PORT_SLEEP     0x00f5u
#define LM_KVM_SLEEP_MIN_US   200u
enum lm_kvm_guest_fault {
	LM_KVM_GUEST_FAULT_BAD_CONFIG = 1,
	LM_KVM_GUEST_FAULT_BAD_VCPU = 2,
	LM_KVM_GUEST_FAULT_FPU_LOST = 3, /* x87 check value lost: FPU state not restored */
};

enum lm_kvm_pattern {
	LM_KVM_PATTERN_IDLE = 0,       /* iterate, write nothing */
	LM_KVM_PATTERN_UNIFORM = 1,    /* random pages over the vCPU's share */
	LM_KVM_PATTERN_HOT = 2,        /* random pages within the first hot_pages */
	LM_KVM_PATTERN_SEQUENTIAL = 3, /* a cursor sweeping the share */
	LM_KVM_PATTERN_LIST = 4,       /* write list[] once per list_seq, then idle */
};

#define LM_KVM_LIST_MAX       480u

/* The config page. All fields are written by the host only; the guest reads
 * them with volatile loads at the top of every iteration, so the host may
 * change them while the guest runs. */
struct lm_kvm_guest_config {
	uint64_t magic;          /* LM_KVM_CONFIG_MAGIC */
	uint32_t pattern;        /* enum lm_kvm_pattern */
	uint32_t n_vcpus;        /* vCPUs sharing the data area */
	uint64_t seed;           /* PRNG seed (mixed with the vCPU index) */
	uint64_t data_page;      /* first data page number (gpa >> 12) */
	uint64_t data_pages;     /* pages in the data area (split among vCPUs) */
	uint64_t hot_pages;      /* hot-set size per vCPU for PATTERN_HOT */
	uint64_t pages_per_iter; /* pages written per iteration */
	uint64_t tsc_per_iter;   /* pacing: minimum TSC ticks per iteration, 0 = flat out */
	uint64_t list_seq;       /* PATTERN_LIST: bump to have the list written once more */
	uint64_t list_count;     /* PATTERN_LIST: entries in list[] (vCPU 0 writes them) */
	uint64_t tsc_khz;        /* TSC frequency, for LM_KVM_PORT_SLEEP; 0 = never sleep */
	uint64_t reserved[5];
	uint64_t list[LM_KVM_LIST_MAX]; /* PATTERN_LIST: absolute page numbers */
};

/* One vCPU's status slot; the status page holds LM_KVM_MAX_VCPUS of them.
 * Written by that vCPU only. */
struct lm_kvm_guest_status {
	uint64_t magic;          /* LM_KVM_STATUS_MAGIC once the vCPU booted */
	uint64_t iterations;     /* monotonic iteration counter */
	uint64_t checksum;       /* XOR of all words of this vCPU's share */
	uint64_t last_tsc;       /* TSC at the end of the last iteration */
	uint64_t max_gap_tsc;    /* longest TSC gap between two iterations */
	uint64_t pages_written;  /* total page writes */
	uint64_t j_addr;         /* journal: gpa of the word in flight, 0 = none */
	uint64_t j_old;          /* journal: its value before the write */
	uint64_t j_new;          /* journal: its value after the write */
	uint64_t list_done_seq;  /* PATTERN_LIST: last list_seq fully written */
	uint64_t fpu_shadow;     /* copy of the value the guest keeps in the x87 stack */
	uint64_t reserved[5];
};

#endif
