"""test_redis_trouble.py -- the agent facing a Redis it cannot use, on real
redis-servers started here (agent/store_redis.c, "Connection trouble").

Four agents start together and are watched for OBSERVE_S seconds (longer
than the log interval, 10 s), each against a different trouble:
  - none:      a port with nothing listening (connection refused);
  - noauth:    a redis-server with requirepass, the agent without password
               (a whole HAProxy + agent pair, store.failure_mode closed);
  - wrongpass: the same kind of Redis, the agent with a wrong password;
  - denied:    a redis-server in protected mode (no password, every
               interface), reached on this machine's own non-loopback
               address, so it answers DENIED (skipped without one).

What it proves:
  - retries back off: Redis counts the agent's connections (INFO stats:
    total_connections_received, less the test's own), a handful in the
    window, not one every 50 ms; from the 7th second on they come about
    every 2 s (the cap); tollgate_store_reconnects_total counts them;
  - one log line per distinct trouble per 10 s: the first at once, the
    next says "(repeated N times in the last 10s)"; NOAUTH, WRONGPASS and
    DENIED lines carry the hint of what to do;
  - recovery: Redis made reachable (started on the port; requirepass
    removed; protected mode off) -> the agent logs that it is connected
    after N failed attempts, and Redis serves governance again: through
    HAProxy the request refused with 503 while Redis refused (failure_mode
    closed, unchanged) is admitted, the next one meets the rate limit kept
    in Redis (429); the quota admin API reads Redis's balance again.
"""
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
import governance as V  # noqa: E402
from tcase import FAILED, case, main, skip  # noqa: E402

OBSERVE_S = 13.0            # > LOG_INTERVAL (10 s) + one capped backoff (2 s)
MID_S = 7.0                 # the backoff has reached its cap by then (3.15 s + 2 s)
PASSWORD = "s3cret-pw"
KEY = "key-trouble"
CHAT_BODY, CHAT_HDRS, CHAT_COST = V.exact_chat("tr-model", content="t" * 40, max_tokens=20)


class Ctx:
    pass


def own_address():
    """An IPv4 address of this machine that Redis does not count as local
    (not 127.0.0.1), or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                             timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for a in out:
        if "." in a and not a.startswith("127."):
            return a
    return None


def redis_proc(env, name, args, port):
    """redis-server on `port` with extra args; ready when it accepts."""
    argv = [H.REDIS_SERVER, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", env.workdir, "--logfile", ""] + list(args)
    p = env.start(name, argv, wait_tcp=port, timeout=10.0)
    p.port = port
    return p


def rcmd(port, *args):
    """A command as an authenticated client (AUTH first when Redis wants it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        req = b""
        for cmd in (("AUTH", PASSWORD), args) if PASSWORD_ON.get(port) else (args,):
            req += b"*%d\r\n" % len(cmd)
            for a in cmd:
                a = str(a).encode()
                req += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(req)
        f = s.makefile("rb")
        if PASSWORD_ON.get(port):
            H._resp_read(f)
        return H._resp_read(f)


PASSWORD_ON = {}            # port -> Redis still wants PASSWORD


def connections(port):
    """Connections Redis accepted so far, less this test's own INFO calls."""
    info = rcmd(port, "INFO", "stats")
    n = int([l for l in info.split("\r\n") if l.startswith("total_connections_received:")][0]
            .split(":")[1])
    OWN[port] = OWN.get(port, 0) + 1
    return n - OWN[port]


OWN = {}


def agent_cfg(env, name, url):
    """A bare agent (no HAProxy) whose store is `url`."""
    cfg = G.config({"name": "up", "type": "mock"}, {"alice": KEY},
                   [{"name": "r", "provider": "up", "models": ["tr-*"],
                     "auth": {"enabled": True, "allow": ["alice", "aliyun-admin"]},
                     "plugins": {"ai-quota": G.quota("trouble_quota:", "aliyun-admin", timeout=2000)}}],
                   store={"redis": url, "failure_mode": "closed"})
    cfg["consumers"].append({"name": "aliyun-admin", "credential": "key-admin"})
    return env.agent(cfg, name=name)


def trouble_lines(proc, port):
    """The agent's log lines about the Redis on `port` that report trouble."""
    tag = ":%d " % port
    return [l for l in proc.stderr().split("\n")
            if "redis store:" in l and tag in l and " connected to " not in l]


def metric(http_port, name):
    status, _, body = H.http_request(http_port, "GET", "/metrics", None, None, 5.0)
    assert status == 200, status
    return sum(v for n, _, v in G.parse_metrics(body.decode()) if n == name)


def setup():
    c = Ctx()
    c.env = env = H.Env("redis-trouble")
    try:
        c.addr = own_address()
        c.none_port = H.free_port()
        c.r_auth = redis_proc(env, "redis-auth", ["--bind", "127.0.0.1",
                                                  "--requirepass", PASSWORD], H.free_port())
        c.r_wrong = redis_proc(env, "redis-wrong", ["--bind", "127.0.0.1",
                                                    "--requirepass", PASSWORD], H.free_port())
        PASSWORD_ON[c.r_auth.port] = PASSWORD_ON[c.r_wrong.port] = True
        c.r_prot = None
        if c.addr:
            # Debian's redis-server without a config file: protected mode,
            # every interface, no password
            c.r_prot = redis_proc(env, "redis-prot", ["--protected-mode", "yes"],
                                  H.free_port())
        base = {p.port: connections(p.port) for p in (c.r_auth, c.r_wrong, c.r_prot) if p}
        c.t0 = time.monotonic()
        c.none = agent_cfg(env, "a-none", "redis://127.0.0.1:%d" % c.none_port)
        c.wrong = agent_cfg(env, "a-wrong", "redis://:wrong-pw@127.0.0.1:%d" % c.r_wrong.port)
        c.denied = None
        if c.r_prot:
            c.denied = agent_cfg(env, "a-denied", "redis://%s:%d" % (c.addr, c.r_prot.port))
        up = env.mock_upstream()
        cfg = G.config(G.provider("up", up.port, path=V.UP_PATH), {"alice": KEY},
                       [{"name": "r", "provider": "up", "models": ["tr-*"],
                         "auth": {"enabled": True, "allow": ["alice"]},
                         "plugins": {"ai-token-ratelimit":
                                     G.ratelimit("trouble_rule", token_per_minute=CHAT_COST)}}],
                       store={"redis": "redis://127.0.0.1:%d" % c.r_auth.port,
                              "failure_mode": "closed"})
        c.pair = V.start_pair(env, cfg, "noauth")
        V.wait_spoe(c.pair)
        agents = {"none": c.none, "wrong": c.wrong, "noauth": c.pair}
        if c.denied:
            agents["denied"] = c.denied
        # (Redis does not count the connections it denies in protected mode)
        ports = {"none": None, "wrong": c.r_wrong.port, "noauth": c.r_auth.port,
                 "denied": None}
        c.mid, c.end = {}, {}
        for when, at in ((c.mid, MID_S), (c.end, OBSERVE_S)):
            time.sleep(max(0.0, c.t0 + at - time.monotonic()))
            for k, a in agents.items():
                when[k] = {"reconnects": metric(a.http_port, "tollgate_store_reconnects_total"),
                           "conns": (connections(ports[k]) - base[ports[k]]) if ports[k] else None}
        c.logs = {"none": trouble_lines(c.none, c.none_port),
                  "wrong": trouble_lines(c.wrong, c.r_wrong.port),
                  "noauth": trouble_lines(c.pair.agent, c.r_auth.port),
                  "denied": trouble_lines(c.denied, c.r_prot.port) if c.denied else []}
        for k, lines in c.logs.items():
            print("NOTE: %s: %d trouble lines, metric mid %s end %s" % (
                k, len(lines), c.mid.get(k), c.end.get(k)), flush=True)
            for l in lines:
                print("NOTE:   " + l[:300], flush=True)
    except BaseException:
        env.close(failed=True)
        raise
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED))


def check_lines(lines, word, hint):
    """Two lines in OBSERVE_S: the first, then one with the repeat count."""
    assert len(lines) == 2, "expected 2 lines in %.0fs, got %d:\n%s" % (
        OBSERVE_S, len(lines), "\n".join(lines))
    for l in lines:
        assert word in l, "%r not in %r" % (word, l)
        assert (hint in l) if hint else (" -- " not in l), l
    assert "repeated" not in lines[0], lines[0]
    n = int(lines[1].split("(repeated ")[1].split(" times")[0])
    assert n >= 3, lines[1]
    assert "in the last 1" in lines[1], lines[1]      # 10s .. 12s
    return n


def check_backoff(c, k):
    """A handful of attempts, spaced by the cap once it is reached."""
    mid, end = c.mid[k]["reconnects"], c.end[k]["reconnects"]
    # 50 ms doubling to 2 s: 6 retries by 3.2 s, then one every 2 s
    assert 5 <= mid <= 8, "reconnects at %.0fs: %s" % (MID_S, mid)
    assert 2 <= end - mid <= 4, "reconnects %s -> %s from %.0fs to %.0fs" % (
        mid, end, MID_S, OBSERVE_S)
    if c.end[k]["conns"] is not None:
        # Redis saw each attempt (the agent's first connection included)
        assert abs(c.end[k]["conns"] - (end + 1)) <= 1, (c.end[k], end)


@case
def refused_connection_backs_off_and_logs_once_per_interval(c):
    n = check_lines(c.logs["none"], "Connection refused", None)
    check_backoff(c, "none")
    assert n <= c.end["none"]["reconnects"] + 1


@case
def noauth_is_retried_with_backoff_and_a_hint(c):
    check_lines(c.logs["noauth"], "NOAUTH", "give it in store.redis")
    check_backoff(c, "noauth")


@case
def wrongpass_is_retried_with_backoff_and_a_hint(c):
    check_lines(c.logs["wrong"], "WRONGPASS", "check the password")
    check_backoff(c, "wrong")


@case
def protected_mode_denied_with_a_hint(c):
    if not c.denied:
        skip("no non-loopback IPv4 address on this machine to reach Redis from outside")
    lines = c.logs["denied"]
    # one report per attempt: the server's reply (DENIED), never also the
    # connection it closes right after
    check_lines(lines, "DENIED Redis is running in protected mode", "protected mode")
    assert all(len(l) < 600 for l in lines), "the server's page of text is cut"
    check_backoff(c, "denied")


@case
def governance_resumes_once_redis_accepts(c):
    gw = c.pair
    hdrs = dict(CHAT_HDRS, **{"x-api-key": KEY})
    st, _, _ = gw.post(V.CHAT, CHAT_BODY, hdrs)
    assert st == 503, "failure_mode closed while Redis refuses: got %d" % st
    rcmd(c.r_auth.port, "CONFIG", "SET", "requirepass", "")
    PASSWORD_ON[c.r_auth.port] = False
    t = time.monotonic()
    H.wait_for(lambda: any(" connected to 127.0.0.1:%d after " % c.r_auth.port in l
                           for l in gw.agent.stderr().split("\n")),
               8.0, 0.05, "the agent connected again")
    # the backoff was at its cap: back within one capped interval (+ the breaker's probe)
    assert time.monotonic() - t < 4.0
    H.wait_for(lambda: gw.post(V.CHAT, CHAT_BODY, hdrs)[0] == 200, 5.0, 0.1,
               "a request admitted through Redis")
    st, _, _ = gw.post(V.CHAT, CHAT_BODY, hdrs)
    assert st == 429, "the rate limit kept in Redis: got %d" % st
    keys = H.redis_cmd(c.r_auth.port, "KEYS", "tollgate:v2:win:*trouble_rule*")
    assert keys, "no rate window in Redis"


@case
def recovers_when_redis_starts_and_when_protected_mode_ends(c):
    redis_proc(c.env, "redis-late", ["--bind", "127.0.0.1"], c.none_port)
    H.wait_for(lambda: any(" connected to 127.0.0.1:%d after " % c.none_port in l
                           for l in c.none.stderr().split("\n")),
               8.0, 0.05, "the agent connected to the Redis started late")
    H.redis_cmd(c.none_port, "SET", "trouble_quota:alice", "42")
    H.wait_for(lambda: H.http_request(c.none.http_port, "GET", "/v1/quota?consumer=alice",
                                      None, None, 5.0)[0] == 200, 5.0, 0.1, "quota API")
    st, _, body = H.http_request(c.none.http_port, "GET", "/v1/quota?consumer=alice",
                                 None, None, 5.0)
    assert b'"quota":42' in body.replace(b" ", b""), body
    if c.denied:
        H.redis_cmd(c.r_prot.port, "CONFIG", "SET", "protected-mode", "no")
        H.wait_for(lambda: any(" connected to %s:%d after " % (c.addr, c.r_prot.port) in l
                               for l in c.denied.stderr().split("\n")),
                   8.0, 0.05, "the agent connected once protected mode was off")


if __name__ == "__main__":
    main(setup, teardown)
