"""test_sentinel.py -- the agent follows a Redis Sentinel failover without a
restart (store.redis: redis-sentinel://S1,S2,S3/MASTER), on Debian's
redis-server and redis-sentinel.

One master, one replica and three sentinels (quorum 2, down after 1 s),
started here on free ports; one HAProxy + agent pair whose store names the
sentinels, failure_mode local, an ai-quota balance in Redis.

What it proves:
  - the agent asks a sentinel for the master and governs through it (the
    reservation and the quota balance are on the master, replicated);
  - a real failover: client threads send requests, pause while the master
    is SIGKILLed (once the replica has caught up), and run on through the
    failover; the sentinels promote the replica; the agent (same process)
    finds the new master through them and governs there again;
    no request hangs or gets a 5xx (failure_mode local answers while no
    master is known), and the quota balance on the new master is exactly
    the starting balance less the tokens of every request answered 200 --
    before, during (charged locally, queued, replayed) and after the
    failover -- and no settlement finds its reservation gone: nothing lost.
    (What an asynchronous replica loses of the writes in flight when its
    master crashes is Redis's to lose, not the agent's: hence the pause.);
  - a sentinel that is down is skipped (the first one named is killed
    before the failover);
  - a manual failover (SENTINEL FAILOVER) with the old master alive: the
    sentinels demote it and close its clients; the agent, which checks
    ROLE on every new connection, follows to the new master.
"""
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
import governance as V  # noqa: E402
from tcase import FAILED, case, main, skip  # noqa: E402

SENTINEL = os.environ.get("REDIS_SENTINEL", "redis-sentinel")
MASTER = "tgmaster"
KEY = "key-sentinel"
QUOTA0 = 10 ** 7
BODY, HDRS, COST = V.exact_chat("sn-model", content="s" * 60, max_tokens=20)


class Ctx:
    pass


def start_redis(env, name, extra=()):
    port = H.free_port()
    p = env.start(name, [H.REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no", "--dir", env.workdir,
                         "--logfile", ""] + list(extra),
                  wait_tcp=port, timeout=10.0,
                  ready=lambda: H.redis_cmd(port, "PING") == "PONG")
    p.port = port
    return p


def start_sentinel(env, name, master_port):
    port = H.free_port()
    conf = env.write(name + ".conf", "\n".join([
        "port %d" % port, "bind 127.0.0.1", "daemonize no", "dir %s" % env.workdir,
        "logfile \"\"",
        "sentinel monitor %s 127.0.0.1 %d 2" % (MASTER, master_port),
        "sentinel down-after-milliseconds %s 1000" % MASTER,
        "sentinel failover-timeout %s 10000" % MASTER,
        "sentinel parallel-syncs %s 1" % MASTER, ""]))
    p = env.start(name, [SENTINEL, conf], wait_tcp=port, timeout=10.0)
    p.port = port
    return p


def master_of(sentinel_port):
    r = H.redis_cmd(sentinel_port, "SENTINEL", "get-master-addr-by-name", MASTER)
    return int(r[1]) if r else None


def repl_caught_up(master_port, replica_port):
    def field(port, name):
        info = H.redis_cmd(port, "INFO", "replication")
        for line in info.split("\r\n"):
            if line.startswith(name + ":"):
                return line.split(":", 1)[1]
        return None
    return field(master_port, "master_repl_offset") == \
        field(replica_port, "slave_repl_offset")


def balance(port):
    v = H.redis_cmd(port, "GET", "sn_quota:alice")
    return int(v) if v is not None else None


class Load:
    """Client threads sending requests until stopped; every answer kept."""

    def __init__(self, gw, threads=3):
        self.gw, self.stop, self.results = gw, threading.Event(), []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        hdrs = dict(HDRS, **{"x-api-key": KEY})
        while not self.stop.is_set():
            r = V.timed_post(self.gw, BODY, hdrs, timeout=10.0)
            with self.lock:
                self.results.append(r)
            time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def setup():
    c = Ctx()
    if not shutil.which(SENTINEL):
        c.env = None
        return c
    c.env = env = H.Env("sentinel")
    try:
        c.master = start_redis(env, "redis-a")
        c.replica = start_redis(env, "redis-b", ["--replicaof", "127.0.0.1", str(c.master.port)])
        H.wait_for(lambda: repl_caught_up(c.master.port, c.replica.port), 10, 0.1,
                   "the replica in sync")
        c.sentinels = [start_sentinel(env, "sentinel-%d" % i, c.master.port) for i in range(3)]
        # every sentinel knows the replica and the other sentinels
        H.wait_for(lambda: all(
            len(H.redis_cmd(s.port, "SENTINEL", "replicas", MASTER)) == 1 and
            len(H.redis_cmd(s.port, "SENTINEL", "sentinels", MASTER)) == 2
            for s in c.sentinels), 20, 0.2, "the sentinels discovering each other")
        url = "redis-sentinel://%s/%s" % (",".join("127.0.0.1:%d" % s.port for s in c.sentinels),
                                          MASTER)
        up = env.mock_upstream()
        cfg = G.config(G.provider("up", up.port, path=V.UP_PATH), {"alice": KEY},
                       [{"name": "r", "provider": "up", "models": ["sn-*"],
                         "auth": {"enabled": True, "allow": ["alice"]},
                         "plugins": {"ai-quota": G.quota("sn_quota:", "alice", timeout=2000)}}],
                       store={"redis": url, "failure_mode": "local"})
        H.redis_cmd(c.master.port, "SET", "sn_quota:alice", str(QUOTA0))
        c.gw = V.start_pair(env, cfg, "sn")
        V.wait_spoe(c.gw)
        c.agent_pid = c.gw.agent.pid
        c.ok = 0                 # requests answered 200 so far (all charged)
    except BaseException:
        env.close(failed=True)
        raise
    return c


def teardown(c):
    if c.env:
        for line in c.gw.agent.stderr().split("\n") if getattr(c, "gw", None) else []:
            if "redis store:" in line:
                print("NOTE: agent: " + line[:240], flush=True)
        c.env.close(failed=bool(FAILED))


def need(c):
    if not c.env:
        skip("no %s here (Debian package redis-sentinel, in tests/deps.sh)" % SENTINEL)


def post(c):
    return c.gw.post(V.CHAT, BODY, dict(HDRS, **{"x-api-key": KEY}))[0]


def settled_balance(port, expected, timeout=15.0):
    """Wait for the balance to reach `expected` (settlements and replays
    land asynchronously); return what it is."""
    try:
        H.wait_for(lambda: balance(port) == expected, timeout, 0.1, "balance %d" % expected)
    except TimeoutError:
        pass
    return balance(port)


@case
def governs_through_the_master_the_sentinels_name(c):
    need(c)
    for _ in range(5):
        assert post(c) == 200
    c.ok += 5
    assert settled_balance(c.master.port, QUOTA0 - c.ok * COST) == QUOTA0 - c.ok * COST
    H.wait_for(lambda: balance(c.replica.port) == QUOTA0 - c.ok * COST, 5, 0.05, "replicated")
    assert any(" connected to 127.0.0.1:%d" % c.master.port in l
               for l in c.gw.agent.stderr().split("\n"))


@case
def follows_a_failover_under_load_nothing_lost(c):
    need(c)
    # the first sentinel named is down: the agent must ask the others
    c.sentinels[0].kill()
    old, new = c.master, c.replica
    with Load(c.gw) as load:
        time.sleep(1.0)
        load.stop.set()                      # quiesce: replication catches up
        for t in load.threads:
            t.join(15)
        H.wait_for(lambda: repl_caught_up(old.port, new.port), 10, 0.05, "replica caught up")
        t_kill = time.monotonic()
        old.kill()
        load.stop.clear()                    # and the load runs on through the failover
        load.threads = [threading.Thread(target=load.run, daemon=True) for _ in range(3)]
        for t in load.threads:
            t.start()
        H.wait_for(lambda: master_of(c.sentinels[1].port) == new.port, 30, 0.1,
                   "the sentinels promoting the replica")
        t_promoted = time.monotonic()
        H.wait_for(lambda: any(" connected to 127.0.0.1:%d" % new.port in l
                               for l in c.gw.agent.stderr().split("\n")),
                   15, 0.05, "the agent on the new master")
        time.sleep(1.0)                      # governed by the new master for a while
    res = load.results
    statuses = {}
    for r in res:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    local = c.gw.metric("tollgate_store_fallback_decisions_total", mode="local")
    print("NOTE: %d requests, statuses %r, %d decided locally; promoted %.1fs after the kill"
          % (len(res), statuses, local, t_promoted - t_kill), flush=True)
    assert local > 0, "no request while no master was known: the failover was not exercised"
    assert not [r for r in res if r.error], [r.error for r in res if r.error][:3]
    assert set(statuses) == {200}, statuses
    assert max(r.secs for r in res) < 2.0, max(r.secs for r in res)
    assert c.gw.agent.pid == c.agent_pid and c.gw.agent.alive(), "the agent restarted"
    assert c.gw.settlements("unknown") == 0, "settlements whose reservation Redis lost"
    c.ok += statuses[200]
    want = QUOTA0 - c.ok * COST
    got = settled_balance(new.port, want)
    assert got == want, "balance on the new master %r, expected %d (%+d tokens)" % (
        got, want, (got or 0) - want)
    # and it governs there: a request now reserves on the new master
    assert post(c) == 200
    c.ok += 1
    assert settled_balance(new.port, QUOTA0 - c.ok * COST) == QUOTA0 - c.ok * COST
    c.master, c.replica = new, None


@case
def follows_a_manual_failover_with_the_old_master_alive(c):
    need(c)
    # the killed master comes back as a replica of the new one
    old = start_redis(c.env, "redis-c", ["--replicaof", "127.0.0.1", str(c.master.port)])
    H.wait_for(lambda: repl_caught_up(c.master.port, old.port), 10, 0.1, "the new replica")
    H.wait_for(lambda: any(r[r.index("flags") + 1] == "slave" and
                           int(r[r.index("port") + 1]) == old.port
                           for r in H.redis_cmd(c.sentinels[1].port, "SENTINEL", "replicas",
                                                MASTER)),
               20, 0.2, "the sentinels listing the new replica")
    was = c.master

    def failover():
        # NOGOODSLAVE until the sentinel has had an INFO reply of the replica itself
        try:
            return H.redis_cmd(c.sentinels[1].port, "SENTINEL", "FAILOVER", MASTER) == "OK"
        except RuntimeError as e:
            if "NOGOODSLAVE" not in str(e):
                raise
            return False
    H.wait_for(failover, 30, 0.5, "SENTINEL FAILOVER accepted")
    H.wait_for(lambda: master_of(c.sentinels[1].port) == old.port, 30, 0.1, "promotion")
    H.wait_for(lambda: any(" connected to 127.0.0.1:%d" % old.port in l
                           for l in c.gw.agent.stderr().split("\n")),
               15, 0.05, "the agent on the promoted master")
    H.wait_for(lambda: repl_caught_up(old.port, was.port), 10, 0.1, "old master now replica")
    before = c.ok
    for _ in range(3):
        assert post(c) == 200
    c.ok += 3
    want = QUOTA0 - c.ok * COST
    assert settled_balance(old.port, want) == want, (balance(old.port), want, before)
    assert c.gw.agent.pid == c.agent_pid


if __name__ == "__main__":
    main(setup, teardown)
