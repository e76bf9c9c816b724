"""test_spop_signals.py -- doc/spop-behaviour.md "Signals" (graceful drain on
SIGTERM, drain timeout, SIGHUP reload) and max_inflight backpressure. Each
case runs its own agent."""
import os
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main  # noqa: E402
import spop as S  # noqa: E402
from agent import Agent, assert_serving  # noqa: E402

ECHO = "tollgate-echo"


def own_agent(fn):
    """Run a case with a fresh agent; dump its log when the case fails."""
    import functools

    @functools.wraps(fn)
    def wrapper():
        a = Agent(name=fn.__name__, extra=getattr(wrapper, "extra", None))
        try:
            a.start()
            fn(a)
        except BaseException:
            a.dump_log(fn.__name__)
            raise
        finally:
            a.cleanup()
    return wrapper


def extra(**kw):
    def deco(fn):
        fn.extra = kw
        return fn
    return deco


def refused(addr, deadline):
    """Poll until connecting to addr is refused (listener closed): the
    connection refused, or the unix socket gone. A timeout or any other error
    is not a refusal: it is retried until the deadline."""
    while True:
        fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(addr)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            pass
        finally:
            s.close()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@case
@own_agent
def sigterm_graceful_drain(a):
    # The bounds are taken from when each frame was sent, not from a sleep
    # (a loaded machine oversleeps): the listeners must be closed while both
    # delayed frames are still in flight, and each ACK comes no earlier than
    # its delay after its frame was sent.
    busy = a.client()
    busy.hello()
    idle = a.client()
    idle.hello()
    ux = a.client(unix=True)
    ux.hello()
    t_busy = time.monotonic()
    busy.notify(5, 6, [(ECHO, [("delay_ms", S.UINT32(1500)), ("k", S.STR("drained"))])])
    t_ux = time.monotonic()
    ux.notify(7, 8, [(ECHO, [("delay_ms", S.UINT32(1000)), ("u", S.UINT32(1))])])
    time.sleep(0.05)
    a.signal(signal.SIGTERM)

    assert refused(a.addr(), t_ux + 0.9), "TCP listener still accepting after SIGTERM"
    assert refused(a.addr(unix=True), t_ux + 0.9), \
        "unix listener still accepting after SIGTERM"

    f = ux.expect_ack(7, 8, timeout=3)
    dt = time.monotonic() - t_ux
    assert f.payload == S.encode_set_var("u", S.UINT32(1)), f.payload.hex()
    assert dt >= 0.95, "delayed ACK cut short (%.3fs of 1 s)" % dt
    ux.expect_disconnect(S.ST_NORMAL)

    f = busy.expect_ack(5, 6, timeout=3)
    dt = time.monotonic() - t_busy
    assert f.payload == S.encode_set_var("k", S.STR("drained")), f.payload.hex()
    assert dt >= 1.45, "delayed ACK cut short (%.3fs of 1.5 s)" % dt
    busy.expect_disconnect(S.ST_NORMAL)

    idle.expect_disconnect(S.ST_NORMAL)
    rc = a.wait(3)
    assert rc == 0, "exit status %r after drain" % (rc,)
    for c in (busy, idle, ux):
        c.close()


@case
@extra(drain_timeout="1s", processing_timeout="8s")
@own_agent
def sigterm_drain_timeout(a):
    c = a.client()
    c.hello()
    c.notify(1, 1, [(ECHO, [("delay_ms", S.UINT32(6000))])])
    time.sleep(0.05)
    t0 = time.monotonic()
    a.signal(signal.SIGTERM)
    rc = a.wait(3)
    dt = time.monotonic() - t0
    assert rc is not None, "agent still running 3 s after SIGTERM (drain_timeout 1s)"
    assert 0.8 <= dt <= 2.0, "exited %.3fs after SIGTERM, drain_timeout is 1s" % dt
    sys.stderr.write("drain timeout: exit status %r after %.2fs\n" % (rc, dt))
    # how: a normal exit (status 0, not a signal or a crash), said in the
    # log; the frame still in flight is never acknowledged, the connection
    # just ends
    assert rc == 0, "exit status %r after the drain timeout" % (rc,)
    assert "drain_timeout reached, exiting with frames in flight" in a.log(), a.log()[-800:]
    c.expect_eof(timeout=1.0)
    c.close()


@case
@own_agent
def sigint_drains_like_sigterm(a):
    c = a.client()
    c.hello()
    a.signal(signal.SIGINT)
    c.expect_disconnect(S.ST_NORMAL)
    rc = a.wait(3)
    assert rc == 0, "exit status %r" % (rc,)
    c.close()


@case
@own_agent
def sigterm_without_connections_exits_0(a):
    a.signal(signal.SIGTERM)
    rc = a.wait(3)
    assert rc == 0, "exit status %r" % (rc,)


@case
@own_agent
def sighup_invalid_config_keeps_serving(a):
    c = a.client()
    c.hello()
    log_before = len(a.log())
    a.write_config("agent: [this is : not\n  - valid: {yaml\n\t\x00garbage")
    a.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert a.alive(), "agent died on SIGHUP with an invalid config"
    new_lines = a.log()[log_before:]
    assert "reload refused, keeping the running configuration" in new_lines, \
        "no log line for the refused reload: %r" % new_lines[-500:]
    # the existing connection still works, with debug messages still on
    c.notify(1, 1, [(ECHO, [("still", S.BOOL(True))])])
    f = c.expect_ack(1, 1)
    assert f.payload == S.encode_set_var("still", S.BOOL(True)), f.payload.hex()
    assert_serving(a)
    assert_serving(a, unix=True)
    c.close()
    # a valid file back, with debug messages off this time: the reload is
    # logged as done, and the new configuration is the one in force
    log_before = len(a.log())
    a.settings["debug_messages"] = False
    a.write_config()
    a.signal(signal.SIGHUP)
    H_wait = time.monotonic() + 5
    while "configuration reloaded from" not in a.log()[log_before:]:
        assert time.monotonic() < H_wait, "no reload line: %r" % a.log()[log_before:][-500:]
        time.sleep(0.02)
    with a.client() as c2:
        c2.hello()
        c2.notify(1, 1, [(ECHO, [("off", S.BOOL(True))])])
        f = c2.expect_ack(1, 1)
        assert f.payload == b"", "tollgate-echo still answered after the reload: %s" % (
            f.payload.hex())
    rc = a.stop()
    assert rc == 0, "exit status %r" % (rc,)


@case
@own_agent
def sighup_reload_applies_debug_messages(a):
    with a.client() as c:
        c.hello()
        c.notify(1, 1, [(ECHO, [("on", S.BOOL(True))])])
        assert c.expect_ack(1, 1).payload == S.encode_set_var("on", S.BOOL(True))
    a.settings["debug_messages"] = False
    a.write_config()
    a.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert a.alive()
    with a.client() as c:
        c.hello()
        c.notify(1, 2, [(ECHO, [("on", S.BOOL(True))])])
        f = c.expect_ack(1, 2)
        assert f.payload == b"", \
            "tollgate-echo still answered after reload with debug_messages false"
    rc = a.stop()
    assert rc == 0, "exit status %r" % (rc,)


@case
@extra(debug_messages=None)
@own_agent
def debug_messages_off_by_default(a):
    assert "debug_messages:" not in a.config_text()
    with a.client() as c:
        c.hello()
        c.notify(1, 1, [(ECHO, [("x", S.UINT32(1))])])
        assert c.expect_ack(1, 1).payload == b""


@case
@extra(max_inflight=2)
@own_agent
def max_inflight_backpressure(a):
    with a.client() as c:
        c.hello()
        data = b""
        for i in range(6):
            data += S.notify_frame(1, i, [(ECHO, [("delay_ms", S.UINT32(300)),
                                                  ("i", S.UINT32(i))])]).encode()
        t0 = time.monotonic()
        c.send(data)
        times = {}
        while len(times) < 6:
            f = c.recv_frame(timeout=3)
            assert f.type == S.ACK, f
            assert f.frame_id not in times, "second ACK for %d" % f.frame_id
            assert f.payload == S.encode_set_var("i", S.UINT32(f.frame_id))
            times[f.frame_id] = time.monotonic() - t0
        ts = sorted(times.values())
        early = [t for t in ts if t < 0.45]
        assert len(early) <= 2, "more than max_inflight=2 processed at once: %r" % ts
        assert 0.8 <= ts[-1] <= 1.5, "last ACK at %.3fs, expected ~0.9s: %r" % (ts[-1], ts)


main()
