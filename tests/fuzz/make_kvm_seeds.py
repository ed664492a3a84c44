#!/usr/bin/env python3
# make_kvm_seeds.py: seeds for fuzz_kvm_state (tests/fuzz/corpus/kvm_state),
# written from the layouts in hcs/kvm/state.c: a compatibility line as a
# source sends it, and a state blob's header with its COMPAT section. The
# first byte is the harness's selector (bit 0: compat line; bit 1: two
# vCPUs). Run from the repository's root: python3 tests/fuzz/make_kvm_seeds.py
import os
import struct

out = "tests/fuzz/corpus/kvm_state"
os.makedirs(out, exist_ok=True)

compat = (b"lmkvm-compat/1 vendor=GenuineIntel mem=67108864 vcpus=1 xsave=4096 "
          b"xcr0=0x7 tsc_khz=0 tsc_scaling=0 cpuid=1.0:00000000:00000000:04000000:00000000")

def blob(n_vcpus, sections):
    body = b""
    for typ, vcpu, data in sections:
        pad = (len(data) + 7) & ~7
        body += struct.pack("<IIII", typ, vcpu, len(data), 0) + data + b"\0" * (pad - len(data))
    # magic, version, hdr_size, total_len, n_vcpus, n_sections, mem_bytes,
    # tsc_khz, reserved0, body_hash, reserved[4] (88 bytes; the harness
    # seals lengths and hash)
    hdr = struct.pack("<8sIIQIIQIIQ32s", b"LMKVMST1", 1, 88, 88 + len(body), n_vcpus,
                      len(sections), 64 << 20, 0, 0, 0, b"\0" * 32)
    return hdr + body

with open(os.path.join(out, "compat"), "wb") as f:
    f.write(b"\x01" + compat)
with open(os.path.join(out, "compat2"), "wb") as f:
    f.write(b"\x03" + compat.replace(b"vcpus=1", b"vcpus=2"))
with open(os.path.join(out, "blob-compat"), "wb") as f:
    f.write(b"\x00" + blob(1, [(1, 0xFFFFFFFF, compat)]))
with open(os.path.join(out, "blob-empty"), "wb") as f:
    f.write(b"\x00" + blob(1, []))
