#!/usr/bin/env python3
# make_vmm_seeds.py DIR: writes the seed inputs of fuzz_stream_vmm: what a
# source sends when it carries a VMM's own stream (hcs/PROTOCOL.md, "The
# VMM's stream"), laid out as hcs/xfer/xfer_wire.h says: a VMM hello
# (session 7, no regions, compat "fuzz"), then records.
import os
import struct
import sys

MAGIC, VERSION = 0x58464d4c, 3
CHECKSUM, HANDOVER, VMM = 0x1, 0x4, 0x8
PASS_END, END, ABORT, VMMREC, KEEPALIVE, COMMIT_REQ, GRANT = 2, 4, 6, 14, 7, 8, 9


def hello(flags, session=7, compat=b"fuzz"):
    h = struct.pack("<IHHIIIIIIQ32sII", MAGIC, VERSION, 80, session, 4096, flags | VMM, 0,
                    len(compat), 0, 256 << 20, b"\0" * 32, 1000, 10000)
    assert len(h) == 80
    return h + compat


def rec(t, payload=b"", count=0):
    return struct.pack("<IIQ", t, count, len(payload)) + payload


def vmm(data, checksum=False):
    # with checksums the record ends with XXH3-64 of the data; a seed with
    # a wrong one exercises the refusal (the fuzzer finds right ones only
    # by the plain path)
    return rec(VMMREC, data + (b"\0" * 8 if checksum else b""))


def pass_end(final):
    return rec(PASS_END, struct.pack("<QQQII", 0, 1000, 0, final, 0), count=3)


def end():
    return rec(END, struct.pack("<QQ", 0, 4096))


def abort(msg):
    return rec(ABORT, struct.pack("<iI120s", 125, 1, msg))


seeds = {
    "whole": hello(0) + vmm(b"QEVM" + bytes(range(256)) * 4) + rec(KEEPALIVE) + pass_end(1)
             + vmm(b"\x00" * 100) + end(),
    "handover": hello(HANDOVER) + vmm(b"QEVM\x00\x00\x00\x03") + pass_end(1) + end()
                + rec(GRANT, b"\x11" * 32),
    "checksum": hello(CHECKSUM) + vmm(b"QEVM", checksum=True) + end(),
    "abort": hello(0) + vmm(b"QEVM") + abort(b"cancelled on the source"),
    "hello_only": hello(0),
    "wrong_compat": hello(0, compat=b"sim!") + vmm(b"x") + end(),
}
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
