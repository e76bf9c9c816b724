"""test_spop_notify.py -- NOTIFY/ACK (doc/spop-behaviour.md "After HELLO" and
"The diagnostic message tollgate-echo"): actions byte-exact for every data
type, unknown messages, ids, pipelining, disconnects and aborts with frames in
flight, the unix socket, 200 pipelined NOTIFYs."""
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main  # noqa: E402
import spop as S  # noqa: E402
from agent import Shared, assert_serving, logged  # noqa: E402

ECHO = "tollgate-echo"


def expected_actions(args):
    """The actions tollgate-echo must return for these arguments."""
    out = []
    for name, val in args:
        if name == "delay_ms" and val.type in (S.T_INT32, S.T_UINT32,
                                               S.T_INT64, S.T_UINT64):
            continue
        if val.type == S.T_NULL:
            out.append(S.encode_unset_var(name))
        else:
            out.append(S.encode_set_var(name, val))
    return out


def check_actions(frame, expected):
    """Compare an ACK payload with a list of encoded actions, action by action
    (decoded with our codec) and then byte for byte."""
    try:
        acts = S.decode_actions(frame.payload)
    except S.DecodeError as e:
        raise AssertionError("ACK payload undecodable (%s): %s"
                             % (e, frame.payload.hex()))
    exp = [S.decode_actions(x)[0] for x in expected]
    for i, (g, x) in enumerate(zip(acts, exp)):
        assert g.raw == x.raw, "action %d: got %r [%s], expected %r [%s]" % (
            i, g, g.raw.hex(), x, x.raw.hex())
    assert len(acts) == len(exp), "%d actions, expected %d: %r" % (
        len(acts), len(exp), acts)
    assert frame.payload == b"".join(expected)


def hello_client(a, unix=False):
    c = a.client(unix=unix)
    c.hello()
    return c


ALL_TYPES = [
    ("n", S.NULL()),
    ("bt", S.BOOL(True)),
    ("bf", S.BOOL(False)),
    ("i32", S.INT32(-123456)),
    ("i32min", S.INT32(-(1 << 31))),
    ("i32max", S.INT32((1 << 31) - 1)),
    ("u32", S.UINT32(0xFFFFFFFF)),
    ("u32zero", S.UINT32(0)),
    ("i64", S.INT64(-(1 << 63))),
    ("i64max", S.INT64((1 << 63) - 1)),
    ("u64", S.UINT64(S.U64)),
    ("ip4", S.IPV4("192.0.2.33")),
    ("ip6", S.IPV6("2001:db8::ff00:42:8329")),
    ("s", S.STR("hello")),
    ("se", S.STR("")),
    ("sb", S.STR(b"\x00\xff\r\n\x00tail\x80")),
    ("b", S.BIN(bytes(range(256)))),
    ("be", S.BIN(b"")),
    ("n2", S.NULL()),
]


@case
@logged
def notify_zero_messages(s):
    a = s.get()
    with hello_client(a) as c:
        c.notify(1, 1)
        f = c.expect_ack(1, 1)
        assert f.payload == b"", f
        c.notify(77, 300)
        f = c.expect_ack(77, 300)
        assert f.payload == b"", f
        # the exact bytes of an empty ACK
        c.notify(2, 3)
        raw = c.recv_raw_frame()
        assert raw == bytes.fromhex("67" "00000001" "02" "03"), raw.hex()


@case
@logged
def echo_every_data_type(s):
    a = s.get()
    with hello_client(a) as c:
        c.notify(10, 20, [(ECHO, ALL_TYPES)])
        check_actions(c.expect_ack(10, 20), expected_actions(ALL_TYPES))


@case
@logged
def echo_exact_bytes_hand_written(s):
    # independent of encode_set_var: the bytes written out by hand
    a = s.get()
    with hello_client(a) as c:
        c.notify(1, 2, [(ECHO, [("ab", S.STR("xyz")), ("z", S.NULL()),
                                ("t", S.BOOL(True)), ("u", S.UINT32(300))])])
        f = c.expect_ack(1, 2)
        exp = bytes.fromhex("010302" "02" "6162" "08" "03" "78797a"
                            "020202" "01" "7a"
                            "010302" "01" "74" "11"
                            "010302" "01" "75" "03" "fc03")
        assert f.payload == exp, "%s != %s" % (f.payload.hex(), exp.hex())


@case
@logged
def echo_one_type_per_message(s):
    # each type alone in its own NOTIFY, so a failure names the type
    a = s.get()
    with hello_client(a) as c:
        for i, (name, val) in enumerate(ALL_TYPES):
            c.notify(5, 100 + i, [(ECHO, [(name, val)])])
            f = c.expect_ack(5, 100 + i)
            try:
                check_actions(f, expected_actions([(name, val)]))
            except AssertionError as e:
                raise AssertionError("%s=%r: %s" % (name, val, e))


@case
@logged
def echo_integer_varint_boundaries(s):
    a = s.get()
    args = []
    for v in (0, 239, 240, 2287, 2288, 264431, 264432, 33818863, 33818864,
              (1 << 31) - 1):
        args.append(("u%d" % v, S.UINT32(v)))
        args.append(("i%d" % v, S.INT64(v)))
        args.append(("m%d" % v, S.INT64(-v - 1)))
    for v in (1 << 32, (1 << 35) + 17, (1 << 56) - 1, 1 << 63):
        args.append(("U%d" % v, S.UINT64(v)))
    with hello_client(a) as c:
        c.notify(1, 1, [(ECHO, args)])
        check_actions(c.expect_ack(1, 1), expected_actions(args))


@case
@logged
def echo_negative_int32_sign_extension(s):
    # a negative INT32 is sent as its 64-bit two's complement (how HAProxy's C
    # code encodes signed values); the echo must give back the same value
    a = s.get()
    args = [("a", S.INT32(-1)), ("b", S.INT32(-240)), ("c", S.INT32(-(1 << 31)))]
    with hello_client(a) as c:
        c.notify(1, 1, [(ECHO, args)])
        f = c.expect_ack(1, 1)
        acts = S.decode_actions(f.payload)
        assert [(x.name, x.value) for x in acts] == \
            [(b"a", S.INT32(-1)), (b"b", S.INT32(-240)), (b"c", S.INT32(-(1 << 31)))], acts
        check_actions(f, expected_actions(args))


@case
@logged
def unknown_message_ignored(s):
    a = s.get()
    with hello_client(a) as c:
        c.notify(3, 4, [("check-client-ip", [("ip", S.IPV4("10.1.2.3")),
                                             ("n", S.NULL())])])
        f = c.expect_ack(3, 4)
        assert f.payload == b"", f
        c.notify(3, 5, [("tollgate-echo2", [("x", S.STR("y"))]),
                        ("tollgate-ech", [("x", S.STR("y"))])])
        f = c.expect_ack(3, 5)
        assert f.payload == b"", f


@case
@logged
def several_messages_in_one_notify(s):
    a = s.get()
    m1 = [("first", S.UINT32(1))]
    m2 = [("second", S.STR("two")), ("third", S.NULL())]
    m3 = []
    m4 = [("fourth", S.IPV6("::1"))]
    with hello_client(a) as c:
        c.notify(8, 9, [(ECHO, m1), ("other", [("x", S.BOOL(True))]),
                        (ECHO, m2), (ECHO, m3), ("", []), (ECHO, m4)])
        check_actions(c.expect_ack(8, 9), expected_actions(m1 + m2 + m3 + m4))


@case
@logged
def large_stream_and_frame_ids(s):
    a = s.get()
    ids = [(0, 0), (239, 240), (2287, 2288), (264431, 264432),
           (33818864, 33818863), (0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 1)]
    with hello_client(a) as c:
        for sid, fid in ids:
            c.notify(sid, fid, [(ECHO, [("sid", S.UINT64(sid))])])
            f = c.expect_ack(sid, fid)
            check_actions(f, [S.encode_set_var("sid", S.UINT64(sid))])


@case
@logged
def sixty_four_bit_stream_and_frame_ids(s):
    a = s.get()
    with hello_client(a) as c:
        for sid, fid in [(1 << 32, (1 << 32) + 1), (1 << 63, S.U64), (S.U64, S.U64)]:
            c.notify(sid, fid)
            f = c.expect_ack(sid, fid)
            assert f.payload == b""


@case
@logged
def delay_ms_not_echoed_any_integer_type(s):
    a = s.get()
    with hello_client(a) as c:
        for i, d in enumerate([S.UINT32(20), S.INT32(20), S.INT64(20),
                               S.UINT64(20), S.UINT32(0)]):
            args = [("before", S.UINT32(i)), ("delay_ms", d), ("after", S.STR("x"))]
            t0 = time.monotonic()
            c.notify(1, i, [(ECHO, args)])
            f = c.expect_ack(1, i)
            check_actions(f, expected_actions(args))
            if d.value:
                assert time.monotonic() - t0 >= 0.015, "delay_ms %r not applied" % d


@case
@logged
def pipelining_out_of_order(s):
    a = s.get()
    with hello_client(a) as c:
        frames = [(21, 1, 300), (22, 2, 100), (23, 3, 0)]
        data = b""
        for sid, fid, d in frames:
            data += S.notify_frame(sid, fid, [(ECHO, [("delay_ms", S.UINT32(d)),
                                                      ("fid", S.UINT32(fid))])]).encode()
        t0 = time.monotonic()
        c.send(data)                    # back to back, one write
        got = []
        for _ in frames:
            f = c.recv_frame()
            got.append((f.type, f.flags, f.stream_id, f.frame_id,
                        round(time.monotonic() - t0, 3)))
            assert f.type == S.ACK and f.flags == S.FIN, f
            check_actions(f, [S.encode_set_var("fid", S.UINT32(f.frame_id))])
        order = [(g[2], g[3]) for g in got]
        assert order == [(23, 3), (22, 2), (21, 1)], "ACK order %r" % got
        assert got[0][4] < 0.09, "delay 0 ACK took %.3fs" % got[0][4]
        assert got[1][4] >= 0.09, "delay 100 ACK at %.3fs" % got[1][4]
        assert 0.29 <= got[2][4] < 1.0, "delay 300 ACK at %.3fs" % got[2][4]
        c.expect_silence(0.1)


@case
@logged
def notify_split_into_single_bytes(s):
    a = s.get()
    with hello_client(a) as c:
        args = [("k", S.STR("split")), ("v", S.UINT64(1 << 40))]
        c.send_slowly(S.notify_frame(300, 2288, [(ECHO, args)]).encode(), pause=0.002)
        check_actions(c.expect_ack(300, 2288), expected_actions(args))


@case
@logged
def haproxy_disconnect_with_frame_in_flight(s):
    a = s.get()
    with hello_client(a) as c:
        c.notify(1, 1, [(ECHO, [("delay_ms", S.UINT32(400)), ("x", S.BOOL(True))])])
        time.sleep(0.05)
        c.send_frame(S.disconnect_frame(0, "reload"))
        t0 = time.monotonic()
        c.expect_disconnect(S.ST_NORMAL)    # first frame back, then close
        assert time.monotonic() - t0 < 0.3, "DISCONNECT waited for the delayed frame"
    time.sleep(0.45)                        # the delayed timer fires meanwhile
    assert_serving(a)


@case
@logged
def haproxy_disconnect_after_hello(s):
    a = s.get()
    with hello_client(a) as c:
        c.send_frame(S.disconnect_frame(3, "frame too big"))
        c.expect_disconnect(S.ST_NORMAL)
    assert_serving(a)


@case
@logged
def frames_after_haproxy_disconnect_ignored(s):
    a = s.get()
    with hello_client(a) as c:
        c.send(S.disconnect_frame(0, "bye").encode() + S.notify_frame(1, 1).encode())
        c.expect_disconnect(S.ST_NORMAL)    # no ACK before or after
    assert_serving(a)


@case
@logged
def abrupt_close_mid_frame(s):
    a = s.get()
    n = S.notify_frame(1, 1, [(ECHO, [("k", S.STR("x" * 100))])]).encode()
    for cut in (2, 4, 9, len(n) // 2, len(n) - 1):
        c = hello_client(a)
        c.send(n[:cut])
        time.sleep(0.01)
        c.close()
    c = a.client()
    c.send(S.hello_frame().encode()[:20])   # mid-HELLO
    c.close()
    time.sleep(0.05)
    assert_serving(a)


@case
@logged
def abrupt_close_with_frames_in_flight(s):
    a = s.get()
    bystander = hello_client(a)
    bystander.notify(9, 9, [(ECHO, [("delay_ms", S.UINT32(250)), ("b", S.STR("by"))])])
    for reset in (False, True):
        c = hello_client(a)
        for i in range(5):
            c.notify(1, i, [(ECHO, [("delay_ms", S.UINT32(100 + 20 * i)),
                                    ("k", S.STR("x"))])])
        c.notify(2, 0)
        c.expect_ack(2, 0)
        if reset:
            c.reset()
        else:
            c.close()
    # another connection is not disturbed
    f = bystander.expect_ack(9, 9)
    assert f.payload == S.encode_set_var("b", S.STR("by")), f.payload.hex()
    bystander.close()
    time.sleep(0.2)                         # the timers fire on freed connections
    assert_serving(a)


@case
@logged
def unix_socket_hello_and_notify(s):
    a = s.get()
    with a.client(unix=True) as c:
        f = c.hello(max_frame_size=4096)
        kv = f.kv()
        assert kv == [("version", S.STR("2.0")), ("max-frame-size", S.UINT32(4096)),
                      ("capabilities", S.STR("pipelining"))], kv
        assert f.flags == S.FIN and (f.stream_id, f.frame_id) == (0, 0)
        args = [("ip", S.IPV4("127.0.0.1")), ("n", S.NULL()), ("s", S.STR("unix"))]
        c.notify(42, 43, [(ECHO, args)])
        check_actions(c.expect_ack(42, 43), expected_actions(args))
        c.send_frame(S.disconnect_frame(0, "bye"))
        c.expect_disconnect(S.ST_NORMAL)
    with a.client(unix=True) as c:
        c.send(S.notify_frame(1, 1).encode())
        c.expect_disconnect(S.ST_INVALID)
    assert_serving(a, unix=True)


@case
@logged
def two_hundred_pipelined_notifies(s):
    a = s.get()
    N = 200
    with hello_client(a) as c:
        data = b""
        expect = {}
        for i in range(N):
            sid, fid = 1000 + i // 10, i
            args = [("delay_ms", S.UINT32((i * 37) % 60)), ("i", S.UINT32(i))]
            data += S.notify_frame(sid, fid, [(ECHO, args)]).encode()
            expect[(sid, fid)] = S.encode_set_var("i", S.UINT32(i))
        c.send(data)
        seen = {}
        deadline = time.monotonic() + 5
        while len(seen) < N:
            f = c.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
            assert f.type == S.ACK and f.flags == S.FIN, f
            key = (f.stream_id, f.frame_id)
            assert key in expect, "ACK for unknown ids %r" % (key,)
            assert key not in seen, "second ACK for %r" % (key,)
            assert f.payload == expect[key], (key, f.payload.hex())
            seen[key] = True
        c.expect_silence(0.2)


@case
@logged
def concurrent_connections_keep_their_acks(s):
    # ACKs leave on the NOTIFY's connection: same ids on three connections,
    # each gets its own answer
    a = s.get()
    cs = [hello_client(a) for _ in range(3)]
    try:
        for n, c in enumerate(cs):
            c.notify(1, 1, [(ECHO, [("delay_ms", S.UINT32(100 - 40 * n)),
                                    ("conn", S.UINT32(n))])])
        for n, c in enumerate(cs):
            check_actions(c.expect_ack(1, 1), [S.encode_set_var("conn", S.UINT32(n))])
            c.expect_silence(0.05)
    finally:
        for c in cs:
            c.close()


main(setup=lambda: Shared(name="notify"), teardown=lambda s: s.teardown(),
     teardown_cases=["notify_agent_exits_0_on_sigterm"])
