#!/usr/bin/env python3
"""gen_corpus.py -- writes the seed corpus of fuzz_spop into tests/fuzz/corpus/.

Owns: small hand-made SPOP frames (HAProxy doc/SPOE.txt section 3), written
from the spec with this file's own tiny encoder, independent of spoe/. Each
seed is <steer byte><frames...>; fuzz_spop.c reads the first byte as its
knobs (bit 7 set: no frame size limit; bit 0: read every arg). Re-run after
changing it; the output is deterministic.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def varint(x):                       # 3.1, Peers encoding
    if x < 240:
        return bytes([x])
    out = [(x | 0xF0) & 0xFF]
    x = (x - 240) >> 4
    while x >= 128:
        out.append((x | 0x80) & 0xFF)
        x = (x - 128) >> 7
    out.append(x)
    return bytes(out)


def s(b):                            # <STRING>
    if isinstance(b, str):
        b = b.encode()
    return varint(len(b)) + b


def null(): return b"\x00"
def boolean(v): return b"\x11" if v else b"\x01"
def i32(v): return b"\x02" + varint(v & 0xFFFFFFFFFFFFFFFF)
def u32(v): return b"\x03" + varint(v)
def i64(v): return b"\x04" + varint(v & 0xFFFFFFFFFFFFFFFF)
def u64(v): return b"\x05" + varint(v)
def ipv4(a): return b"\x06" + bytes(a)
def ipv6(a): return b"\x07" + bytes(a)
def string(v): return b"\x08" + s(v)
def binary(v): return b"\x09" + s(v)
def kv(name, val): return s(name) + val


def frame(ftype, payload, flags=1, sid=0, fid=0):   # 3.2
    body = bytes([ftype]) + struct.pack(">I", flags) + varint(sid) + varint(fid) + payload
    return struct.pack(">I", len(body)) + body


def msg(name, *args):                # 3.2.6
    return s(name) + bytes([len(args)]) + b"".join(kv(n, v) for n, v in args)


def hdrs(*pairs, end=True):
    out = b"".join(s(n) + s(v) for n, v in pairs)
    return out + (b"\x00\x00" if end else b"")


HELLO = (kv("supported-versions", string("2.0")) + kv("max-frame-size", u32(16380)) +
         kv("capabilities", string("pipelining,async")) + kv("engine-id", string("6F1A")))

SEEDS = {
    "hello": frame(1, HELLO),
    "hello_healthcheck": frame(1, HELLO + kv("healthcheck", boolean(True))),
    "hello_versions": frame(1, kv("supported-versions", string(" 1.0 , 2.0")) +
                            kv("max-frame-size", u32(256)) + kv("capabilities", string(""))),
    "hello_missing_caps": frame(1, kv("supported-versions", string("2.0")) +
                                kv("max-frame-size", u32(16380))),
    "hello_bad_type": frame(1, kv("supported-versions", string("2.0")) +
                            kv("max-frame-size", string("16380")) + kv("capabilities", string(""))),
    "agent_hello": frame(101, kv("version", string("2.0")) + kv("max-frame-size", u32(16380)) +
                         kv("capabilities", string("pipelining"))),
    "disconnect": frame(2, kv("status-code", u32(0)) + kv("message", string("normal"))),
    "agent_disconnect": frame(102, kv("status-code", u32(4)) + kv("message", string("invalid"))),
    "notify": frame(3, msg("tollgate-check",
                           ("ip", ipv4([10, 0, 0, 1])),
                           ("path", string("/v1/chat/completions")),
                           ("hdrs", binary(hdrs(("host", "api"), ("authorization", "Bearer k")))),
                           ("body_len", i64(1234)),
                           ("t", u64(2 ** 64 - 1))),
                    sid=240, fid=2288),
    "notify_types": frame(3, msg("types", ("n", null()), ("b", boolean(False)),
                                 ("i", i32(-5)), ("u", u32(4294967295)),
                                 ("l", i64(-2 ** 63)), ("v6", ipv6(range(16))),
                                 ("x", binary(b"\x00\xff"))) + msg("empty"),
                          sid=1, fid=1),
    "notify_two": frame(3, msg("a", ("k", string("v"))), sid=7, fid=1) +
                  frame(3, msg("b"), sid=7, fid=2),
    "notify_hdrs_noend": frame(3, msg("h", ("hdrs", binary(hdrs(("a", "b"), end=False)))), sid=3, fid=3),
    "ack": frame(103, b"\x01\x03\x02" + s("tokens") + i64(42) + b"\x02\x02\x03" + s("gone"),
                 sid=9, fid=9),
    "unset_frag": frame(0, msg("frag", ("a", u32(1))), flags=0, sid=5, fid=5),
    "unknown_type": frame(200, HELLO, sid=1, fid=1),
    "zero_len": b"\x00\x00\x00\x00",
    "too_big": b"\x00\x01\x00\x00\x03",
}

# knob bytes: 0x81 = no size limit + every arg, 0x7F = limit 4064, 0x08 = limit 256
STEER = {"too_big": 0x08, "notify_two": 0x7F, "ack": 0x7E}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(bytes([STEER.get(name, 0x81)]) + data)
    print(f"{len(SEEDS)} seeds in {OUT}")
