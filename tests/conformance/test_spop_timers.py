"""test_spop_timers.py -- doc/spop-behaviour.md "Timers", with
hello_timeout 1s, idle_timeout 1s, processing_timeout 2s."""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main  # noqa: E402
import spop as S  # noqa: E402
from agent import Shared, assert_serving, logged  # noqa: E402

ECHO = "tollgate-echo"


def expect_timeout_disconnect(c, t0, lo, hi):
    c.expect_disconnect(S.ST_TIMEOUT, timeout=hi + 0.5 - (time.monotonic() - t0))
    dt = time.monotonic() - t0
    assert lo <= dt <= hi, "timeout DISCONNECT after %.3fs, expected %.1f..%.1f" % (
        dt, lo, hi)
    return dt


@case
@logged
def hello_timeout_no_bytes(s):
    a = s.get()
    with a.client() as c:
        t0 = time.monotonic()
        expect_timeout_disconnect(c, t0, 0.8, 1.8)
    assert_serving(a)


@case
@logged
def hello_timeout_partial_hello(s):
    a = s.get()
    with a.client() as c:
        t0 = time.monotonic()
        c.send(S.hello_frame().encode()[:7])
        expect_timeout_disconnect(c, t0, 0.8, 1.8)
    assert_serving(a)


@case
@logged
def hello_sent_slowly_within_hello_timeout(s):
    # a HELLO sent in 1-byte writes over 0.5 s still completes within the
    # hello timeout
    a = s.get()
    with a.client() as c:
        data = S.hello_frame().encode()
        c.send_slowly(data, pause=0.5 / len(data))
        f = c.recv_frame()
        assert f.type == S.AGENT_HELLO, f


@case
@logged
def idle_timeout_after_hello(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        t0 = time.monotonic()
        expect_timeout_disconnect(c, t0, 0.8, 1.8)
    assert_serving(a)


@case
@logged
def idle_timeout_restarts_on_frames(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        time.sleep(0.6)
        c.notify(1, 1)
        c.expect_ack(1, 1)
        t0 = time.monotonic()
        time.sleep(0.6)
        c.notify(1, 2)                   # 1.2 s after HELLO: still open
        c.expect_ack(1, 2)
        t0 = time.monotonic()
        expect_timeout_disconnect(c, t0, 0.8, 1.8)


@case
@logged
def idle_timeout_not_while_in_flight(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        t0 = time.monotonic()
        c.notify(2, 3, [(ECHO, [("delay_ms", S.UINT32(1500)), ("k", S.STR("late"))])])
        f = c.recv_frame(timeout=2.5)    # must be the ACK, not a DISCONNECT
        dt = time.monotonic() - t0
        assert f.type == S.ACK and (f.stream_id, f.frame_id) == (2, 3), \
            "got %r after %.2fs" % (f, dt)
        assert f.payload == S.encode_set_var("k", S.STR("late")), f.payload.hex()
        assert 1.4 <= dt <= 1.9, "delayed ACK after %.3fs" % dt
        t1 = time.monotonic()
        expect_timeout_disconnect(c, t1, 0.8, 1.8)


@case
@logged
def processing_timeout_gives_empty_ack(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        t0 = time.monotonic()
        c.notify(7, 8, [(ECHO, [("delay_ms", S.UINT32(2500)), ("k", S.STR("v"))])])
        f = c.expect_ack(7, 8, timeout=3.0)
        dt = time.monotonic() - t0
        assert f.payload == b"", "timed-out ACK carries actions: %s" % f.payload.hex()
        assert 1.8 <= dt <= 2.4, "empty ACK after %.3fs, expected ~2s" % dt
        # the late answer (at 2.5 s) is dropped: the next frame is the idle
        # DISCONNECT about 1 s after the empty ACK
        t1 = time.monotonic()
        expect_timeout_disconnect(c, t1, 0.8, 1.8)
    assert_serving(a)


@case
@logged
def processing_timeout_only_hits_slow_frames(s):
    a = s.get()
    with a.client() as c:
        c.hello()
        c.notify(1, 1, [(ECHO, [("delay_ms", S.UINT32(2500)), ("k", S.UINT32(1))])])
        c.notify(1, 2, [(ECHO, [("delay_ms", S.UINT32(200)), ("k", S.UINT32(2))])])
        f = c.expect_ack(1, 2)
        assert f.payload == S.encode_set_var("k", S.UINT32(2))
        f = c.expect_ack(1, 1, timeout=3.0)
        assert f.payload == b""


main(setup=lambda: Shared(name="timers"), teardown=lambda s: s.teardown(),
     teardown_cases=["timers_agent_exits_0_on_sigterm"])
