"""test_spop_frames.py -- frame-level rules (doc/spop-behaviour.md "After
HELLO"): ordering, frame types, sizes, fragmentation, malformed payloads.

Every expected AGENT-DISCONNECT is checked byte-exactly (flags FIN, ids 0,
status-code UINT32 then message STR), then the close, then that the agent
still serves a new connection."""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main  # noqa: E402
import spop as S  # noqa: E402
from agent import Shared, assert_serving, logged  # noqa: E402

ECHO = "tollgate-echo"


def raw_frame(body):
    return struct.pack(">I", len(body)) + body


def meta(ftype, flags=S.FIN, sid=1, fid=1):
    return bytes([ftype]) + struct.pack(">I", flags) + S.encode_varint(sid) \
        + S.encode_varint(fid)


def after_hello_expect(a, status, data, label=""):
    with a.client() as c:
        c.hello()
        c.send(data)
        try:
            c.expect_disconnect(status)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (label, e))
    assert_serving(a)


def before_hello_expect(a, status, data, label=""):
    with a.client() as c:
        c.send(data)
        try:
            c.expect_disconnect(status)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (label, e))
    assert_serving(a)


# ---------------------------------------------------------------- ordering

@case
@logged
def notify_before_hello(s):
    before_hello_expect(s.get(), S.ST_INVALID, S.notify_frame(1, 1).encode())


@case
@logged
def other_frames_before_hello(s):
    a = s.get()
    for t in (S.UNSET, S.AGENT_HELLO, S.AGENT_DISCONNECT, S.ACK, 4, 50, 255):
        before_hello_expect(a, S.ST_INVALID, raw_frame(meta(t, sid=0, fid=0)),
                            "type %d before HELLO" % t)


@case
@logged
def duplicate_hello(s):
    after_hello_expect(s.get(), S.ST_INVALID, S.hello_frame().encode())


@case
@logged
def agent_side_frame_types_from_haproxy(s):
    a = s.get()
    for t, payload in ((S.AGENT_HELLO, S.encode_kvlist(S.hello_kv())),
                       (S.AGENT_DISCONNECT, S.disconnect_frame().payload),
                       (S.ACK, b"")):
        after_hello_expect(a, S.ST_INVALID, raw_frame(meta(t, sid=0, fid=0) + payload),
                           "type %d after HELLO" % t)


@case
@logged
def unknown_frame_types_skipped(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        junk = b"\x0c\xff\xff\xff garbage that is no KV list"
        data = b""
        for t in (4, 50, 100, 104, 200, 255):
            data += raw_frame(meta(t, sid=9, fid=9) + junk)
        # also a FIN-clear unknown frame and one with only metadata
        data += raw_frame(meta(50, flags=0, sid=1, fid=2))
        c.send(data)
        c.notify(11, 12, [(ECHO, [("after", S.STR("unknown"))])])
        f = c.expect_ack(11, 12)       # the first frame back is the ACK
        assert f.payload == S.encode_set_var("after", S.STR("unknown")), f
        c.expect_silence(0.1)


@case
@logged
def unknown_frame_type_50_then_notify(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        c.send(raw_frame(meta(50) + S.encode_kvlist([("x", S.UINT32(1))])))
        c.notify(1, 1)
        f = c.expect_ack(1, 1)
        assert f.payload == b""


# ---------------------------------------------------------------- sizes

@case
@logged
def prefix_over_negotiated_size_refused_from_prefix_alone(s):
    a = s.get()
    with a.client() as c:
        c.hello()                       # negotiated 16384
        c.send(struct.pack(">I", 1 << 20))   # prefix only, payload never sent
        c.expect_disconnect(S.ST_TOO_BIG)
    assert_serving(a)


def sized_notify(size, sid=1, fid=1):
    """A NOTIFY of exactly size bytes (frame without prefix): one unknown
    message with a STR argument used as padding."""
    for n in range(size, -1, -1):
        f = S.notify_frame(sid, fid, [("pad-msg", [("p", S.STR(b"x" * n))])])
        if len(f.body()) == size:
            return f
        if len(f.body()) < size:
            break
    raise AssertionError("cannot build a NOTIFY of %d bytes" % size)


@case
@logged
def frame_size_limit_is_the_negotiated_one(s):
    a = s.get()
    with a.client() as c:
        f = c.hello(max_frame_size=1024)
        assert f.kvdict()["max-frame-size"] == S.UINT32(1024)
        c.send_frame(sized_notify(1024, 1, 1))      # exactly the limit: fine
        assert c.expect_ack(1, 1).payload == b""
        c.send(struct.pack(">I", 1025))             # one byte over: refused
        c.expect_disconnect(S.ST_TOO_BIG)
    with a.client() as c:
        c.hello(max_frame_size=256)
        c.send_frame(sized_notify(256, 2, 2))
        assert c.expect_ack(2, 2).payload == b""
        c.send_frame(sized_notify(257, 3, 3))      # whole frame sent this time
        c.expect_disconnect(S.ST_TOO_BIG)
    assert_serving(a)


@case
@logged
def zero_length_frame(s):
    a = s.get()
    after_hello_expect(a, S.ST_INVALID, b"\x00\x00\x00\x00", "after HELLO")
    before_hello_expect(a, S.ST_INVALID, b"\x00\x00\x00\x00", "before HELLO")


# ---------------------------------------------------------------- fragmentation

@case
@logged
def fragmented_notify_fin_clear(s):
    a = s.get()
    msgs = [(ECHO, [("k", S.STR("v"))])]
    after_hello_expect(a, S.ST_FRAG_NOT_SUPPORTED,
                       S.notify_frame(1, 1, msgs, flags=0).encode(), "NOTIFY")
    after_hello_expect(a, S.ST_FRAG_NOT_SUPPORTED,
                       S.notify_frame(1, 1, msgs, flags=S.ABORT).encode(),
                       "NOTIFY ABORT without FIN")
    after_hello_expect(a, S.ST_FRAG_NOT_SUPPORTED,
                       raw_frame(meta(S.UNSET, flags=0)), "UNSET")


@case
@logged
def notify_with_abort_and_fin_processed(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        c.notify(4, 5, [(ECHO, [("k", S.INT32(-7))])], flags=S.FIN | S.ABORT)
        f = c.expect_ack(4, 5)
        assert f.payload == S.encode_set_var("k", S.INT32(-7)), f.payload.hex()


# ---------------------------------------------------------------- malformed

def notify_raw(payload, sid=1, fid=1):
    return raw_frame(meta(S.NOTIFY, sid=sid, fid=fid) + payload)


MALFORMED = [
    ("message name length past end",
     notify_raw(S.encode_varint(50) + b"abc")),
    ("argument name length past end",
     notify_raw(S.encode_string(ECHO) + b"\x01" + S.encode_varint(40) + b"k")),
    ("STR value length past end",
     notify_raw(S.encode_string(ECHO) + b"\x01" + S.encode_string("k")
                + b"\x08" + S.encode_varint(300) + b"short")),
    ("BIN value length past end in an unknown message",
     notify_raw(S.encode_string("other") + b"\x01" + S.encode_string("k")
                + b"\x09\x05ab")),
    ("data type 12",
     notify_raw(S.encode_string(ECHO) + b"\x01" + S.encode_string("k") + b"\x0c")),
    ("data type 10 in an unknown message",
     notify_raw(S.encode_string("other") + b"\x01" + S.encode_string("k") + b"\x0a\x00")),
    ("data type 15 with a flag",
     notify_raw(S.encode_string(ECHO) + b"\x01" + S.encode_string("k") + b"\x1f")),
    ("truncated varint in a UINT32 value",
     notify_raw(S.encode_string(ECHO) + b"\x01" + S.encode_string("k") + b"\x03\xf0\x80")),
    ("truncated varint in a message name length",
     notify_raw(b"\xf5")),
    ("truncated IPV6",
     notify_raw(S.encode_string(ECHO) + b"\x01" + S.encode_string("k") + b"\x07" + b"\x00" * 9)),
    ("nb-args larger than the arguments present",
     notify_raw(S.encode_string(ECHO) + b"\x03" + S.encode_string("k") + b"\x03\x01")),
    ("missing nb-args",
     notify_raw(S.encode_string(ECHO))),
    ("truncated varint in frame-id",
     raw_frame(bytes([S.NOTIFY]) + struct.pack(">I", S.FIN) + b"\x01\xf0")),
    ("truncated varint in stream-id",
     raw_frame(bytes([S.NOTIFY]) + struct.pack(">I", S.FIN) + b"\xff\x80")),
    ("metadata cut in the flags",
     raw_frame(bytes([S.NOTIFY]) + b"\x00\x00")),
]


@case
@logged
def malformed_notify_payloads(s):
    a = s.get()
    for label, data in MALFORMED:
        after_hello_expect(a, S.ST_INVALID, data, label)


@case
@logged
def malformed_disconnect_is_still_answered_or_refused(s):
    # a HAPROXY-DISCONNECT whose KV list is truncated: either status 0 (the
    # frame is a DISCONNECT) or 4 (malformed); the socket must be closed
    a = s.get()
    with a.client() as c:
        c.hello()
        c.send(raw_frame(meta(S.HAPROXY_DISCONNECT, sid=0, fid=0) + b"\x0bstatus"))
        f = c.recv_frame()
        assert f.type == S.AGENT_DISCONNECT, f
        assert f.kvdict()["status-code"].value in (0, 4), f.kv()
        c.expect_eof()
    assert_serving(a)


main(setup=lambda: Shared(name="frames"), teardown=lambda s: s.teardown(),
     teardown_cases=["frames_agent_exits_0_on_sigterm"])
