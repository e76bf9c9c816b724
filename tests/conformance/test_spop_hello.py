"""test_spop_hello.py -- HELLO handshake (doc/spop-behaviour.md "HELLO").

A fake HAProxy (spop.py, independent of spoe/) against one shared agent with
agent.max_frame_size 16384. Every expected AGENT-DISCONNECT is followed by a
check that the socket is closed and that the agent still serves a new
connection."""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main  # noqa: E402
import spop as S  # noqa: E402
from agent import Shared, assert_serving, logged  # noqa: E402

AGENT_MAX = 16384


def check_agent_hello(f, max_frame_size):
    """AGENT-HELLO exactly as the contract says."""
    assert f.type == S.AGENT_HELLO, f
    assert f.flags == S.FIN, "AGENT-HELLO flags %#x" % f.flags
    assert (f.stream_id, f.frame_id) == (0, 0), (f.stream_id, f.frame_id)
    kv = f.kv()
    assert [k for k, _ in kv] == ["version", "max-frame-size", "capabilities"], \
        "AGENT-HELLO keys/order: %r" % kv
    d = dict(kv)
    assert d["version"] == S.STR("2.0"), d["version"]
    assert d["max-frame-size"] == S.UINT32(max_frame_size), \
        "max-frame-size %r, expected UINT32(%d)" % (d["max-frame-size"],
                                                    max_frame_size)
    assert d["capabilities"] == S.STR("pipelining"), d["capabilities"]


def hello_expect(a, status, kv=None, flags=S.FIN, raw=None):
    """Send a HELLO (kv list or raw frame bytes), expect AGENT-DISCONNECT."""
    with a.client() as c:
        c.send(raw if raw is not None else S.hello_frame(kv, flags=flags).encode())
        c.expect_disconnect(status)
    assert_serving(a)


def hello_ok(a, kv, max_frame_size=AGENT_MAX):
    with a.client() as c:
        c.send_frame(S.hello_frame(kv))
        check_agent_hello(c.recv_frame(), max_frame_size)
        # the connection is usable: a NOTIFY is answered
        c.notify(1, 1)
        c.expect_ack(1, 1)


def kv_without(key, **kw):
    return [(k, v) for k, v in S.hello_kv(**kw) if k != key]


def kv_with(key, value, **kw):
    return [(k, value if k == key else v) for k, v in S.hello_kv(**kw)]


@case
@logged
def hello_good(s):
    a = s.get()
    with a.client() as c:
        c.send_frame(S.hello_frame(versions="2.0", max_frame_size=AGENT_MAX,
                                   capabilities="pipelining"))
        check_agent_hello(c.recv_frame(), AGENT_MAX)
        c.expect_silence(0.1)          # no extra frame, no close
        c.notify(3, 4)
        f = c.expect_ack(3, 4)
        assert f.payload == b"", f


@case
@logged
def hello_max_frame_size_is_min(s):
    a = s.get()
    for mine, expected in [(256, 256), (257, 257), (1000, 1000),
                           (AGENT_MAX - 1, AGENT_MAX - 1), (AGENT_MAX, AGENT_MAX),
                           (AGENT_MAX + 1, AGENT_MAX), (1 << 20, AGENT_MAX),
                           (0xFFFFFFFF, AGENT_MAX)]:
        with a.client() as c:
            f = c.hello(max_frame_size=mine)
            try:
                check_agent_hello(f, expected)
            except AssertionError as e:
                raise AssertionError("HAProxy max-frame-size %d: %s" % (mine, e))


@case
@logged
def hello_frame_size_too_small(s):
    a = s.get()
    for v in (255, 0, 1, 128):
        hello_expect(a, S.ST_BAD_FRAME_SIZE, S.hello_kv(max_frame_size=v))


@case
@logged
def hello_missing_supported_versions(s):
    hello_expect(s.get(), S.ST_NO_VSN, kv_without("supported-versions"))


@case
@logged
def hello_missing_max_frame_size(s):
    hello_expect(s.get(), S.ST_NO_FRAME_SIZE, kv_without("max-frame-size"))


@case
@logged
def hello_missing_capabilities(s):
    hello_expect(s.get(), S.ST_NO_CAP, kv_without("capabilities"))


@case
@logged
def hello_empty_kv_list(s):
    # everything missing: some "not found" status (5, 6 or 7), the contract
    # does not order them; supported-versions comes first in the table
    a = s.get()
    with a.client() as c:
        c.send_frame(S.hello_frame([]))
        f = c.recv_frame()
        assert f.type == S.AGENT_DISCONNECT, f
        st = f.kvdict()["status-code"].value
        assert st in (5, 6, 7), st
        c.expect_eof()
    assert_serving(a)


@case
@logged
def hello_mistyped_fields(s):
    a = s.get()
    variants = [
        ("max-frame-size as STR", kv_with("max-frame-size", S.STR("16384"))),
        ("max-frame-size as BOOL", kv_with("max-frame-size", S.BOOL(True))),
        ("max-frame-size as NULL", kv_with("max-frame-size", S.NULL())),
        ("supported-versions as INT32", kv_with("supported-versions", S.INT32(2))),
        ("supported-versions as BIN", kv_with("supported-versions", S.BIN(b"2.0"))),
        ("capabilities as UINT32", kv_with("capabilities", S.UINT32(1))),
        ("capabilities as NULL", kv_with("capabilities", S.NULL())),
        ("healthcheck as STR", S.hello_kv() + [("healthcheck", S.STR("true"))]),
    ]
    for label, kv in variants:
        try:
            hello_expect(a, S.ST_INVALID, kv)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (label, e))


@case
@logged
def hello_unsupported_versions(s):
    a = s.get()
    for v in ("1.0", "1.0,1.5", "3.0", "", "20.0", "12.0", "0.2"):
        try:
            hello_expect(a, S.ST_BAD_VSN, S.hello_kv(versions=v))
        except AssertionError as e:
            raise AssertionError("supported-versions %r: %s" % (v, e))


@case
@logged
def hello_versions_lists_accepted(s):
    a = s.get()
    for v in (" 1.0 , 2.0", "2.0,1.0", "1.5, 2.3", "2.1", " 2.0 ", "3.0,2.0"):
        try:
            hello_ok(a, S.hello_kv(versions=v))
        except AssertionError as e:
            raise AssertionError("supported-versions %r: %s" % (v, e))


@case
@logged
def hello_capabilities_variants(s):
    a = s.get()
    for caps in ("", "pipelining", " pipelining , async ",
                 "fragmentation,async", "async,pipelining,fragmentation", "foo"):
        try:
            hello_ok(a, S.hello_kv(capabilities=caps))
        except AssertionError as e:
            raise AssertionError("capabilities %r: %s" % (caps, e))


@case
@logged
def hello_healthcheck(s):
    a = s.get()
    with a.client() as c:
        c.send_frame(S.hello_frame(healthcheck=True))
        check_agent_hello(c.recv_frame(), AGENT_MAX)
        c.expect_eof()                 # closed, and no DISCONNECT frame
    assert_serving(a)


@case
@logged
def hello_healthcheck_false(s):
    hello_ok(s.get(), S.hello_kv(healthcheck=False))


@case
@logged
def hello_any_key_order_and_extra_keys(s):
    kv = list(reversed(S.hello_kv(engine_id="0f3c2a9e-engine")))
    kv.insert(1, ("x-unknown-ip6", S.IPV6("2001:db8::1")))
    kv.insert(2, ("x-unknown-null", S.NULL()))
    kv.append(("x-unknown-bin", S.BIN(b"\x00\x01\xff")))
    kv.append(("x-unknown-u64", S.UINT64(S.U64)))
    hello_ok(s.get(), kv)


@case
@logged
def hello_fin_clear(s):
    hello_expect(s.get(), S.ST_FRAG_NOT_SUPPORTED, S.hello_kv(), flags=0)


@case
@logged
def hello_truncated_payload(s):
    a = s.get()
    full = S.encode_kvlist(S.hello_kv())
    # cut inside the last string, inside a key name, between the STR type
    # byte and its length, inside the first key name
    tail = len(full) - len("pipelining")
    for cut in (len(full) - 3, tail - 2 - 5, tail - 1, 10):
        body = bytes([S.HAPROXY_HELLO]) + b"\x00\x00\x00\x01\x00\x00" + full[:cut]
        raw = len(body).to_bytes(4, "big") + body
        try:
            hello_expect(a, S.ST_INVALID, raw=raw)
        except AssertionError as e:
            raise AssertionError("cut at %d: %s" % (cut, e))


@case
@logged
def hello_reserved_data_type(s):
    a = s.get()
    payload = S.encode_kvlist(S.hello_kv()) + S.encode_string("x") + b"\x0c\x00"
    f = S.Frame(S.HAPROXY_HELLO, S.FIN, 0, 0, payload)
    hello_expect(a, S.ST_INVALID, raw=f.encode())


@case
@logged
def hello_split_into_single_bytes(s):
    a = s.get()
    with a.client() as c:
        c.send_slowly(S.hello_frame().encode(), pause=0.003)
        check_agent_hello(c.recv_frame(), AGENT_MAX)
        c.send_slowly(S.notify_frame(5, 6, [("tollgate-echo", [("k", S.UINT32(9))])])
                      .encode(), pause=0.003)
        f = c.expect_ack(5, 6)
        assert f.payload == S.encode_set_var("k", S.UINT32(9)), f


@case
@logged
def hello_and_notify_in_one_write(s):
    a = s.get()
    with a.client() as c:
        c.send(S.hello_frame().encode()
               + S.notify_frame(1, 2, [("tollgate-echo", [("k", S.STR("v"))])]).encode())
        check_agent_hello(c.recv_frame(), AGENT_MAX)
        f = c.expect_ack(1, 2)
        assert f.payload == S.encode_set_var("k", S.STR("v")), f


def sized_hello(size):
    """A valid HELLO whose frame (without the 4-byte prefix) is size bytes."""
    for n in range(size, 0, -1):
        f = S.hello_frame(S.hello_kv(extra=[("pad", S.STR(b"p" * n))]))
        if len(f.body()) == size:
            return f
        if len(f.body()) < size:
            break
    raise AssertionError("cannot build a HELLO of %d bytes" % size)


@case
@logged
def hello_of_exactly_agent_max_accepted(s):
    a = s.get()
    f = sized_hello(AGENT_MAX)
    with a.client() as c:
        c.send_frame(f)
        check_agent_hello(c.recv_frame(), AGENT_MAX)


@case
@logged
def hello_prefix_over_agent_max_refused(s):
    a = s.get()
    for size in (AGENT_MAX + 1, 1 << 24, 0xFFFFFFFF):
        with a.client() as c:
            c.send(size.to_bytes(4, "big"))      # the prefix alone
            try:
                c.expect_disconnect(S.ST_TOO_BIG)
            except AssertionError as e:
                raise AssertionError("prefix %d: %s" % (size, e))
    assert_serving(a)


@case
@logged
def haproxy_disconnect_before_hello(s):
    a = s.get()
    with a.client() as c:
        c.send_frame(S.disconnect_frame(0, "going away"))
        c.expect_disconnect(S.ST_NORMAL)
    assert_serving(a)


@case
@logged
def connect_and_close_without_bytes(s):
    a = s.get()
    for _ in range(5):
        a.client().close()
    time.sleep(0.05)
    assert_serving(a)


main(setup=lambda: Shared(name="hello"), teardown=lambda s: s.teardown(),
     teardown_cases=["hello_agent_exits_0_on_sigterm"])
