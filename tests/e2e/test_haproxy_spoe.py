"""test_haproxy_spoe.py -- the agent behind a real HAProxy 2.6 over SPOP.

What it proves, with Debian's haproxy and ${BUILD:-build}/tollgate started on
free loopback ports (tests/e2e/harness.py) and the mock upstream behind them:
  - every SPOP type HAProxy encodes (STR, SINT, BOOL, IPV4, IPV6, BIN) comes
    back from the diagnostic message `tollgate-echo` as a txn variable HAProxy
    can use, and a NULL argument unsets a variable;
  - pipelining with real HAProxy: sequential, keep-alive and concurrent
    requests (out-of-order ACKs forced by `delay_ms`) each get their own values;
  - the agent over a unix socket;
  - no verdict (agent down, or slower than `timeout processing`) sets
    `txn.tg.err` (`option set-on-error`) and the configuration turns it into a
    503: a missing verdict never lets a request through;
  - `option spop-check` health checks mark the agent UP / DOWN;
  - an agent restart, an agent SIGHUP, an agent SIGTERM with frames in flight
    and an haproxy reload (master-worker, SIGUSR2) all recover.
"""
import os
import random
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
from tcase import case, main  # noqa: E402

SPOE_CONF = """\
[tollgate]
spoe-agent tollgate-agent
    messages tollgate-echo
    option var-prefix tg
    option set-on-error err
    option set-process-time ptime
    no option async
    no option send-frag-payload
    option pipelining
    timeout hello 2s
    timeout idle 30s
    timeout processing 500ms
    use-backend agents

spoe-message tollgate-echo
    args method=method path=path ip=src hdr=req.hdr(x-test) n=int(42) neg=int(-7) b=bool(1) ip6=ipv6(2001:db8::1) bin=bin(414243) delay_ms=req.hdr_val(x-delay)
    event on-frontend-http-request
"""

HAPROXY_CFG = """\
global
    log stderr format raw local0 info
    stats socket {sock} mode 600 level admin
    nbthread 2

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe
    bind 127.0.0.1:{fe}
    filter spoe engine tollgate config spoe.conf
    # Runs before the SPOE event: the echo of a NULL x-test must unset it.
    tcp-request content set-var(txn.tg.hdr) str(preset)
    # A missing verdict (agent down, slow, frame error) is a 503, never a pass.
    http-request return status 503 content-type text/plain lf-string "no verdict (err=%[var(txn.tg.err)])" hdr x-tg-err "%[var(txn.tg.err)]" if {{ var(txn.tg.err) -m found }}
    http-request return status 503 content-type text/plain string "no verdict" unless {{ var(txn.tg.method) -m found }}
    http-response set-header x-tg-method "%[var(txn.tg.method)]"
    http-response set-header x-tg-path "%[var(txn.tg.path)]"
    http-response set-header x-tg-ip "%[var(txn.tg.ip)]"
    http-response set-header x-tg-ip-masked "%[var(txn.tg.ip),ipmask(24)]"
    http-response set-header x-tg-hdr "%[var(txn.tg.hdr)]" if {{ var(txn.tg.hdr) -m found }}
    http-response set-header x-tg-n "%[var(txn.tg.n)]"
    http-response set-header x-tg-n-plus-1 "%[var(txn.tg.n),add(1)]"
    http-response set-header x-tg-neg "%[var(txn.tg.neg)]"
    http-response set-header x-tg-b "%[var(txn.tg.b)]"
    http-response set-header x-tg-ip6 "%[var(txn.tg.ip6)]"
    http-response set-header x-tg-bin "%[var(txn.tg.bin),hex]"
    http-response set-header x-tg-delay-echoed "%[var(txn.tg.delay_ms)]" if {{ var(txn.tg.delay_ms) -m found }}
    http-response set-header x-tg-ptime "%[var(txn.tg.ptime)]"
    default_backend upstream

backend agents
    mode tcp
    balance roundrobin
    timeout connect 1s
    timeout server 3m
    option spop-check
    server agent {agent_addr} check inter 500ms

backend upstream
    server up 127.0.0.1:{up}
"""


class Stack:
    """agent + mock upstream + haproxy, started in env."""

    def __init__(self, env, unix=False, agent_up=True, master_worker=False):
        self.env = env
        self.upstream = env.mock_upstream()
        self.fe = env.free_port()
        self.sock = env.path("haproxy.sock")
        agent_cfg = {"agent": {"debug_messages": True}}
        if unix:
            self.unix_path = env.path("agent.sock")
            agent_cfg["agent"]["unix"] = self.unix_path
            agent_addr = "unix@" + self.unix_path
        else:
            self.agent_port = env.free_port()
            agent_cfg["agent"]["listen"] = "127.0.0.1:%d" % self.agent_port
            agent_addr = "127.0.0.1:%d" % self.agent_port
        self.agent = env.agent(agent_cfg) if agent_up else None
        env.write("spoe.conf", SPOE_CONF)
        self.haproxy = env.haproxy(
            HAPROXY_CFG.format(sock=self.sock, fe=self.fe, up=self.upstream.port,
                               agent_addr=agent_addr),
            wait_ports=[self.fe], wait_unix=[self.sock], master_worker=master_worker)

    def get(self, path="/echo", headers=None, timeout=10.0):
        return H.http_request(self.fe, "GET", path, headers=headers, timeout=timeout)

    def agent_status(self):
        return H.server_status(self.sock, "agents", "agent")


def agent_metric(stack, name):
    """A metric without labels from the agent's /metrics."""
    st, _, body = H.http_request(stack.agent.http_port, "GET", "/metrics")
    assert st == 200, st
    m = re.search(r"(?m)^%s (\S+)$" % re.escape(name), body.decode())
    assert m, "%s not in /metrics" % name
    return float(m.group(1))


def echoed_ok(stack, tag, delay=None, conn=None):
    """One request carrying x-test: tag; assert every echoed value."""
    hdrs = {"x-test": tag}
    if delay is not None:
        hdrs["x-delay"] = str(delay)
    path = "/echo/" + tag
    st, h, body = H.http_request(conn if conn is not None else stack.fe, "GET", path,
                                 headers=hdrs)
    assert st == 200, (tag, st, dict(h), body)
    assert h.get("x-tg-hdr") == tag, (tag, dict(h))
    assert h.get("x-tg-path") == path, (tag, dict(h))
    assert h.get("x-tg-err") is None, (tag, dict(h))
    return h


@case
def echo_every_type_reaches_haproxy():
    with H.Env("echo") as env:
        s = Stack(env)
        st, h, body = s.get("/v1/models?x=1", headers={"x-test": "hello world"})
        assert st == 200, (st, dict(h), body)
        want = {
            "x-tg-method": "GET",                  # METH sent as STR
            "x-tg-path": "/v1/models",             # STR
            "x-tg-ip": "127.0.0.1",                # IPV4
            "x-tg-ip-masked": "127.0.0.0",
            "x-tg-hdr": "hello world",             # STR from a header
            "x-tg-n": "42",                        # SINT
            "x-tg-n-plus-1": "43",
            "x-tg-neg": "-7",
            "x-tg-b": "1",                         # BOOL
            "x-tg-ip6": "2001:db8::1",             # IPV6
            "x-tg-bin": "414243",                  # BIN
        }
        got = {k: h.get(k) for k in want}
        assert got == want, "echoed variables differ:\n got %r\nwant %r" % (got, want)
        assert h.get("x-tg-delay-echoed") is None, "delay_ms (NULL here) must not come back"
        assert b'"mock-model"' in body, body
        seen = s.upstream.requests()
        assert len(seen) == 1 and seen[0]["path"] == "/v1/models", seen
        assert seen[0]["headers"].get("x-test") == "hello world", seen[0]

        # A NULL argument (no x-test) unsets the variable the config preset.
        st, h, _ = s.get("/echo/no-header")
        assert st == 200, st
        assert h.get("x-tg-hdr") is None, "NULL arg must unset txn.tg.hdr: %r" % dict(h)
        assert h.get("x-tg-method") == "GET", dict(h)

        # delay_ms is consumed by the agent, never echoed; the answer waits.
        t0 = time.monotonic()
        h = echoed_ok(s, "delayed", delay=150)
        assert time.monotonic() - t0 >= 0.14, "delay_ms did not delay the ACK"
        assert h.get("x-tg-delay-echoed") is None, dict(h)
        assert int(h.get("x-tg-ptime")) >= 140, dict(h)


@case
def sequential_requests_keepalive_and_new_connections():
    with H.Env("seq") as env:
        s = Stack(env)
        conn = H.http_connection(s.fe)
        try:
            for i in range(150):
                echoed_ok(s, "ka-%d" % i, conn=conn)
        finally:
            conn.close()
        for i in range(50):
            echoed_ok(s, "new-%d" % i)
        assert len(s.upstream.requests()) == 200


@case
def concurrent_batch_with_out_of_order_acks():
    with H.Env("conc") as env:
        s = Stack(env)
        rnd = random.Random(1234)
        delays = [rnd.choice([0, 0, 5, 20, 60]) for _ in range(200)]
        local = threading.local()

        def one(i):
            if not hasattr(local, "conn"):
                local.conn = H.http_connection(s.fe)
            return echoed_ok(s, "c-%d" % i, delay=delays[i] or None, conn=local.conn)

        t0 = time.monotonic()
        H.run_parallel(one, range(200), threads=20)
        elapsed = time.monotonic() - t0
        tags = sorted(r["headers"]["x-test"] for r in s.upstream.requests())
        assert tags == sorted("c-%d" % i for i in range(200)), "upstream saw %d" % len(tags)
        row = H.haproxy_stat(s.sock, "agents", "agent")[0]
        # Connections opened to the agent: `connect` (the server's connection
        # attempts). `stot` means connections on 2.6's `mode tcp` agent backend
        # but streams (one per exchange) on 3.1+'s `mode spop`.
        opened = int(row["connect"])
        sys.stderr.write("concurrent: 200 requests in %.2fs; haproxy opened %d SPOP "
                         "connections (connect), stot %s\n" % (elapsed, opened, row.get("stot")))
        assert opened >= 1, row
        # Pipelining: far fewer agent connections than requests.
        assert opened < 100, row


@case
def agent_over_unix_socket():
    with H.Env("unix") as env:
        s = Stack(env, unix=True)
        h = echoed_ok(s, "via-unix")
        assert h.get("x-tg-ip") == "127.0.0.1" and h.get("x-tg-n") == "42", dict(h)
        H.run_parallel(lambda i: echoed_ok(s, "u-%d" % i, delay=(i % 3) * 10 or None),
                       range(60), threads=10)
        H.wait_for(lambda: s.agent_status() == "UP", 5, what="unix agent UP")


@case
def agent_down_gives_error_var_and_503():
    with H.Env("down") as env:
        s = Stack(env, agent_up=False)
        t0 = time.monotonic()
        st, h, body = s.get(headers={"x-test": "x"})
        took = time.monotonic() - t0
        assert st == 503, (st, dict(h), body)
        err = h.get("x-tg-err")
        assert err is not None and err.isdigit() and int(err) > 0, (dict(h), body)
        assert s.upstream.requests() == [], "a request without verdict reached upstream"
        sys.stderr.write("agent down: 503 with err=%s after %.3fs\n" % (err, took))
        H.wait_for(lambda: s.agent_status() == "DOWN", 5, what="agent DOWN")


@case
def processing_timeout_gives_error_var_and_503():
    with H.Env("slow") as env:
        s = Stack(env)
        t0 = time.monotonic()
        st, h, body = s.get(headers={"x-test": "slow", "x-delay": "1500"})
        took = time.monotonic() - t0
        assert st == 503, (st, dict(h), body)
        assert h.get("x-tg-err") == "1", "timeout should be err 1: %r %r" % (dict(h), body)
        assert 0.4 <= took < 1.4, "answered after %.3fs, timeout processing is 500ms" % took
        assert s.upstream.requests() == []
        # The late ACK is dropped cleanly; the next requests are fine.
        for i in range(5):
            echoed_ok(s, "after-timeout-%d" % i)
        assert s.agent.alive(), s.agent.tail()


@case
def spop_healthcheck_marks_agent_up_and_down():
    with H.Env("check") as env:
        s = Stack(env)
        H.wait_for(lambda: s.agent_status() == "UP", 5, what="agent UP")
        row = H.haproxy_stat(s.sock, "agents", "agent")[0]
        assert row["check_status"] in ("L7OK", "L6OK"), row
        s.agent.stop()
        H.wait_for(lambda: s.agent_status() == "DOWN", 5, what="agent DOWN")
        s.agent.restart()
        H.wait_for(lambda: s.agent_status() == "UP", 5, what="agent UP again")
        echoed_ok(s, "after-check")


@case
def agent_restart_and_sighup_recover():
    with H.Env("restart") as env:
        s = Stack(env)
        echoed_ok(s, "before")
        s.agent.stop()
        t0 = time.monotonic()
        st, h, _ = s.get(headers={"x-test": "while-down"})
        assert st == 503 and h.get("x-tg-err"), (st, dict(h))
        sys.stderr.write("agent stopped, server still UP: 503 with err=%s after %.3fs\n"
                         % (h.get("x-tg-err"), time.monotonic() - t0))
        s.agent.restart()
        # The first request after the restart may hit a stale connection; a
        # fresh one must work within a short time.
        H.wait_for(lambda: s.get(headers={"x-test": "probe"})[0] == 200, 5,
                   0.1, "a verdict after the agent restart")
        for i in range(20):
            echoed_ok(s, "after-restart-%d" % i)
        # SIGHUP reloads the (unchanged) configuration and keeps serving.
        s.agent.send_signal(signal.SIGHUP)
        H.wait_for(lambda: "configuration reloaded from" in s.agent.stderr(), 5,
                   what="the reload's log line")
        assert "reload refused" not in s.agent.stderr(), s.agent.tail()
        for i in range(20):
            echoed_ok(s, "after-hup-%d" % i)
        assert s.agent.alive(), s.agent.tail()


@case
def agent_sigterm_finishes_frames_in_flight():
    with H.Env("drain") as env:
        s = Stack(env)
        echoed_ok(s, "warm")
        results = {}

        def slow():
            results["h"] = H.http_request(s.fe, "GET", "/echo/slow",
                                          headers={"x-test": "inflight", "x-delay": "300"})

        t = threading.Thread(target=slow)
        t.start()
        # Wait until the frame is at the agent (one NOTIFY in flight), then stop it.
        H.wait_for(lambda: agent_metric(s, "tollgate_spop_frames_in_flight") == 1, 5, 0.005,
                   "the slow frame at the agent")
        s.agent.send_signal(signal.SIGTERM)
        t.join(10)
        st, h, body = results["h"]
        assert st == 200 and h.get("x-tg-hdr") == "inflight", (st, dict(h), body)
        assert s.agent.wait_exit(5) == 0, s.agent.tail()


@case
def haproxy_reload_recovers():
    with H.Env("reload") as env:
        s = Stack(env, master_worker=True)
        for i in range(10):
            echoed_ok(s, "before-%d" % i)
        H.haproxy_reload(s.haproxy, s.sock)
        H.wait_for(lambda: s.agent_status() == "UP", 5, what="agent UP after reload")
        for i in range(20):
            echoed_ok(s, "after-reload-%d" % i)
        H.run_parallel(lambda i: echoed_ok(s, "par-%d" % i), range(40), threads=10)


if __name__ == "__main__":
    main()
