"""test_faults.py -- token governance when things break, on real HAProxy 2.6
+ tollgate agents + a real redis-server.

One Env for the module (tests/e2e/governance.py): the recording mock
upstream, one redis-server, and three sets of two HAProxy + agent pairs
sharing that Redis, one set per store.failure_mode (local, open, closed),
all with lease_ttl 2s and instances 2 (failure_mode local enforces half of
each rate limit per agent while Redis is away).

What it proves:
  - Redis SIGKILLed under load (three client threads per set, for seconds):
    with failure_mode local and open no request gets a 5xx (only 200 and
    429), none hangs (each answered in < 1 s); local still enforces, each
    agent with its share (a fresh budget of 2.5 requests' worth admits two
    requests per agent, the third is 429); open admits unchecked; closed
    answers 503 (the store's OpenAI-shaped error) within the deadline;
    while Redis is down /metrics shows the open breaker and counts the
    decisions taken without Redis (outage_decisions_are_counted: DESIGN
    "nothing fails open silently");
  - Redis restarted on the same port: within a few seconds enforcement is
    global again for every mode -- on a limit of 2.5 requests' worth
    shared by the two pairs, requests alternating between them get 200,
    200, 200, 429;
  - an agent SIGKILLed with three streams in flight that hold the whole
    budget: the other pair refuses until the leases (2 s) lapse, then
    admits -- the dead agent's reservations do not hold budget forever,
    and do not free early; the streams themselves finish (HAProxy needs no
    agent to forward them); when the agent is back, HAProxy's buffered
    settlement records still charge the usage (settled late);
  - a settlement record read twice (the agent restarted and replayed
    HAProxy's ring, with a SIGTERM and with a SIGKILL) settles once: the
    replays answer duplicate, the Redis balance moves once;
  - a client that disconnects mid-stream is charged > 0 and at most its
    reservation, on the Redis balance.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
import governance as V  # noqa: E402
from tcase import FAILED, case, main  # noqa: E402

CHAT = V.CHAT
MODES = ("local", "open", "closed")
LEASE_S = 2.0
BOUND_S = 1.0               # every answer within this, Redis or not
GLOBAL_AGAIN_S = 5.0        # Redis back: global enforcement within this

LOAD_BODY, LOAD_HDRS, LOAD_COST = V.exact_chat("ld-model", content="l" * 80, max_tokens=30)
LOAD_LIMIT = LOAD_COST * 40                     # per minute: 429s come soon under load
PROBE_BODY, PROBE_HDRS, PROBE_COST = V.exact_chat("pb-model", content="p" * 40, max_tokens=20)
PROBE_LIMIT = int(PROBE_COST * 2.5)             # global: 3 admitted; half each: 2 per agent
# streams: estimate = prompt estimate + max_tokens
STREAM_CONTENT = "s" * 40
STREAM_MAX = 40
STREAM_EST = V.est_prompt(STREAM_CONTENT) + STREAM_MAX
LEASE_LIMIT = 3 * STREAM_EST                    # three streams hold all of it

KEYS = {"loader": "key-loader", "prober": "key-prober", "leaser": "key-leaser",
        "streamer": "key-streamer", "aliyun-admin": "key-admin"}


def config(up_port, red, mode):
    allow = sorted(KEYS)
    routes = [
        {"name": "load", "provider": "up", "models": ["ld-*"], "auth": {"enabled": True, "allow": allow},
         "plugins": {"ai-token-ratelimit": G.ratelimit("load_rule", token_per_minute=LOAD_LIMIT)}},
        {"name": "probe", "provider": "up", "models": ["pb-*"], "auth": {"enabled": True, "allow": allow},
         "plugins": {"ai-token-ratelimit": G.ratelimit("probe_rule", header="x-probe",
                                                       token_per_minute=PROBE_LIMIT)}},
        {"name": "lease", "provider": "up", "models": ["ls-*"], "auth": {"enabled": True, "allow": allow},
         "plugins": {"ai-token-ratelimit": G.ratelimit("lease_rule", header="x-lease",
                                                       token_per_minute=LEASE_LIMIT)}},
        {"name": "stream", "provider": "up", "models": ["st-*"], "auth": {"enabled": True, "allow": allow},
         "plugins": {"ai-quota": G.quota("fault_quota:", "aliyun-admin", timeout=2000)}},
    ]
    store = V.redis_store(red, failure_mode=mode, lease_ttl="2s", instances=2)
    return G.config(G.provider("up", up_port, path=V.UP_PATH), KEYS, routes, redis=red, store=store)


class Ctx:
    pass




def note(msg):
    print("NOTE: " + msg, flush=True)


def setup():
    c = Ctx()
    c.env = H.Env("faults")
    try:
        c.up = c.env.mock_upstream()
        c.red = c.env.redis()
        c.sets = {}
        for mode in MODES:
            c.sets[mode] = V.start_pairs(c.env, config(c.up.port, c.red, mode), 2,
                                         prefix=mode + "-")
        for pairs in c.sets.values():
            for gw in pairs:
                V.wait_spoe(gw)
    except BaseException:
        c.env.close(failed=True)
        raise
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))] if xs else 0.0


# ------------------------------------------------------------ Redis dies

def probe(gw, value, timeout=5.0):
    return V.timed_post(gw, PROBE_BODY, dict(PROBE_HDRS, **{"x-api-key": KEYS["prober"],
                                                           "x-probe": value}), timeout)


def probe_pattern(pairs, value, n=4):
    """n sequential probes on one fresh budget, alternating pairs."""
    return [probe(pairs[i % len(pairs)], value) for i in range(n)]


class Load:
    """Client threads hammering the load route of one set of pairs."""

    def __init__(self, mode, pairs, threads=3):
        self.mode, self.pairs = mode, pairs
        self.results = []           # governance.Result, in completion order
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def run(self, i):
        hdrs = dict(LOAD_HDRS, **{"x-api-key": KEYS["loader"]})
        n = 0
        while not self.stop.is_set():
            gw = self.pairs[(i + n) % len(self.pairs)]
            n += 1
            r = V.timed_post(gw, LOAD_BODY, hdrs, timeout=5.0)
            with self.lock:
                self.results.append(r)
            time.sleep(0.005)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def window(self, t0, t1):
        return [r for r in self.results if t0 <= r.t0 < t1]


def summary(rs):
    st = {}
    for r in rs:
        k = r.status if r.error is None else "error:%s" % type(r.error).__name__
        st[k] = st.get(k, 0) + 1
    lat = [r.secs for r in rs]
    return st, pct(lat, 50), pct(lat, 99), max(lat) if lat else 0.0


@case
def redis_killed_under_load(c):
    red = c.red
    loads = {m: Load(m, c.sets[m]) for m in MODES}
    for ld in loads.values():
        ld.start()
    time.sleep(1.5)
    t_kill = time.monotonic()
    red.kill()                                          # SIGKILL, no goodbye
    assert not red.alive()
    time.sleep(1.0)                                     # breakers open
    # during the outage, on fresh budgets
    during = {m: probe_pattern(c.sets[m][:1], "down-%s" % m, 3) for m in MODES}
    # every decision taken without Redis is visible in /metrics
    seen = {}
    for m in MODES:
        ms = [gw.metrics() for gw in c.sets[m]]
        breaker = [sum(v for n, _, v in x if n == "tollgate_store_breaker_open") for x in ms]
        fallback = sum(v for x in ms for n, lb, v in x
                       if ("fallback" in n and n.endswith("_total"))
                       or (n == "tollgate_requests_total"
                           and lb.get("decision", "").startswith("store_")))
        errors = sum(v for x in ms for n, _, v in x if n == "tollgate_store_errors_total")
        seen[m] = (breaker, fallback, errors)
    time.sleep(max(0.0, t_kill + 3.5 - time.monotonic()))
    t_restart = time.monotonic()
    red.restart()                                       # same port, empty
    # enforcement global again?
    back = {}
    deadline = t_restart + 15.0
    pending = set(MODES)
    k = 0
    while pending and time.monotonic() < deadline:
        for m in sorted(pending):
            k += 1
            pat = probe_pattern(c.sets[m], "up-%s-%d" % (m, k))
            if [r.status for r in pat] == [200, 200, 200, 429]:
                back[m] = pat[0].t0 - t_restart
                pending.discard(m)
        time.sleep(0.1)
    time.sleep(0.5)
    for ld in loads.values():
        ld.finish()

    wrong = []
    for m in MODES:
        ld = loads[m]
        st_all, p50, p99, mx = summary(ld.results)
        st_out, _, _, mx_out = summary(ld.window(t_kill, t_restart))
        note("failure_mode %s: %d requests, statuses %r, p50 %.1f ms, p99 %.1f ms, max %.0f ms; "
             "during the outage %r (max %.0f ms); global again %s after the restart"
             % (m, len(ld.results), st_all, p50 * 1e3, p99 * 1e3, mx * 1e3, st_out,
                mx_out * 1e3, "%.2fs" % back[m] if m in back else "NOT within 15 s"))
        slow = [r for r in ld.results if r.secs >= BOUND_S or r.error]
        if slow:
            wrong.append("%s: %d answers took >= %.1fs or failed (max %.2fs, errors %r)"
                         % (m, len(slow), BOUND_S, max(r.secs for r in slow),
                            [repr(r.error) for r in slow if r.error][:3]))
        outage = ld.window(t_kill + 0.05, t_restart)
        if not outage:
            wrong.append("%s: no request completed during the outage" % m)
        if m in ("local", "open"):
            bad = {s: n for s, n in st_all.items() if s not in (200, 429)}
            if bad:
                wrong.append("%s: answers other than 200/429 with Redis killed: %r" % (m, bad))
        else:
            bad = {s: n for s, n in st_all.items() if s not in (200, 429, 503)}
            if bad:
                wrong.append("closed: unexpected answers %r" % bad)
            # once the breaker is open every admission is refused
            late_outage = [r for r in outage if r.t0 > t_kill + 0.5]
            if not late_outage or any(r.status != 503 for r in late_outage):
                wrong.append("closed: with Redis down for > 0.5 s, statuses %r (want only 503)"
                             % summary(late_outage)[0])
            for r in outage:
                if r.status == 503:
                    e = G.error_json(r.body, "closed 503")
                    if "store" not in e["code"] and "store" not in e["message"].lower():
                        wrong.append("closed: the 503 is not the store's: %r" % r.body[:200])
                        break
            if any(r.status == 503 and r.secs >= 0.5 for r in outage):
                wrong.append("closed: a 503 took %.0f ms (SPOE processing timeout 500 ms)"
                             % (1e3 * max(r.secs for r in outage if r.status == 503)))
        if m not in back or back[m] > GLOBAL_AGAIN_S:
            wrong.append("%s: enforcement not global again within %.0f s of the Redis restart "
                         "(%s)" % (m, GLOBAL_AGAIN_S, "%.2fs" % back[m] if m in back
                                   else "not within 15 s"))
    # the probes during the outage, on one agent: local enforces half the limit
    st = {m: [r.status for r in during[m]] for m in MODES}
    note("fresh budget of 2.5 requests' worth, 3 requests on one agent during the outage: %r" % st)
    if st["local"] != [200, 200, 429]:
        wrong.append("local: during the outage one agent should admit its share (2 of 3), got %r"
                     % st["local"])
    if st["open"] != [200, 200, 200]:
        wrong.append("open: during the outage every request is admitted, got %r" % st["open"])
    if st["closed"] != [503, 503, 503]:
        wrong.append("closed: during the outage every request is 503, got %r" % st["closed"])
    for m in MODES:
        for r in during[m]:
            if r.secs >= BOUND_S:
                wrong.append("%s: a probe during the outage took %.2fs" % (m, r.secs))
    c.outage_metrics = seen           # asserted by outage_decisions_are_counted
    assert not wrong, "\n".join(wrong)


@case
def outage_decisions_are_counted(c):
    """DESIGN: "nothing fails open silently -- every such decision is
    counted": /metrics, sampled while Redis was down (redis_killed_under_load),
    shows the open breaker and counts the admissions decided without Redis."""
    seen = getattr(c, "outage_metrics", None)
    assert seen, "redis_killed_under_load did not get as far as the outage"
    wrong = []
    for m in MODES:
        breaker, fallback, errors = seen[m]
        note("%s, Redis down: tollgate_store_breaker_open per agent %r, decisions counted as "
             "taken without Redis %d, tollgate_store_errors_total %d"
             % (m, breaker, fallback, errors))
        if breaker != [1, 1]:
            wrong.append("%s: tollgate_store_breaker_open %r with Redis down for 1 s" % (m, breaker))
        if fallback <= 0:
            wrong.append("%s: with Redis down, no metric counts the decisions taken without it "
                         "(no tollgate_requests_total{decision=\"store_*\"}, no *fallback*_total; "
                         "they are counted as decision=\"allow\"/\"ratelimit\")" % m)
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------ agent dies

def stream_body(model, stream_max=STREAM_MAX):
    return {"model": model, "messages": [{"role": "user", "content": STREAM_CONTENT}],
            "max_tokens": stream_max, "stream": True}


@case
def agent_killed_leases_expire(c):
    a, b = c.sets["local"]
    value = "lease-%d" % int(time.time() * 1000)
    hdrs = {"x-api-key": KEYS["leaser"], "x-lease": value, "x-mock-delay-ms": "150",
            "x-mock-completion-tokens": "20"}
    nrec = len(c.up.requests())
    out = [None] * 3

    def run(i):
        try:
            out[i] = G.sse_stream(a.port, CHAT, stream_body("ls-model"), hdrs, timeout=30.0)
        except Exception as e:  # noqa: BLE001 -- asserted below
            out[i] = e
    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(3)]
    res0 = set(V.redis_keys(c.red, "tollgate:v1:res:*"))
    t_first = time.monotonic()
    for t in ts:
        t.start()
    H.wait_for(lambda: len(c.up.requests()) - nrec >= 3, 10.0, 0.01, "three streams upstream")
    t_admitted = time.monotonic()
    # each reservation records its lease's end on Redis's clock ("<exp>|...",
    # agent/store_redis_lua.h); the test's clock is tied to Redis's by TIME
    exps = sorted(int(H.redis_cmd(c.red.port, "GET", k).split("|", 1)[0])
                  for k in set(V.redis_keys(c.red, "tollgate:v1:res:*")) - res0)
    assert len(exps) == 3, exps
    sec, usec = H.redis_cmd(c.red.port, "TIME")
    redis_minus_mono = int(sec) * 1000 + int(usec) // 1000 - time.monotonic() * 1000
    late0 = a.settlements("late")
    a.agent.kill()                                      # SIGKILL, streams in flight
    t_kill = time.monotonic()
    # the budget is held by the dead agent's reservations...
    pb = V.timed_post(b, dict(LOAD_BODY, model="ls-model"),
                      dict(LOAD_HDRS, **{"x-api-key": KEYS["leaser"], "x-lease": value}))
    assert pb.status == 429, "with three streams holding the budget: %r %r" % (pb.status, pb.body)
    # ...until their leases lapse
    seen = []
    t_back = None
    while time.monotonic() < t_admitted + LEASE_S + 5.0:
        r = V.timed_post(b, dict(LOAD_BODY, model="ls-model"),
                         dict(LOAD_HDRS, **{"x-api-key": KEYS["leaser"], "x-lease": value}))
        seen.append((round(r.t0 - t_first, 2), r.status))
        if r.status == 200:
            t_back = r.t0
            break
        assert r.status == 429, (r.status, r.body)
        time.sleep(0.1)
    note("agent SIGKILLed %.2fs after the first stream started; budget back %s after it "
         "(lease_ttl %.0fs); probes %r" % (t_kill - t_first, "%.2fs" % (t_back - t_first)
                                           if t_back else "NEVER", LEASE_S, seen[-3:]))
    assert t_back is not None, "the budget never came back after the leases: %r" % seen
    # not early: no probe admitted before the first lease's end (Redis time,
    # 20 ms for the clock tie and the probe's own path)
    back_ms = t_back * 1000 + redis_minus_mono
    assert back_ms >= exps[0] - 20, \
        "budget back %d ms before the first lease ended (leases end at %r, Redis ms)" % (
            exps[0] - back_ms, exps)
    assert t_back - t_first >= LEASE_S - 0.1, \
        "budget back %.2fs after the first request, before the %.0fs lease" % (
            t_back - t_first, LEASE_S)
    assert back_ms <= exps[-1] + 1500, \
        "budget back only %d ms after the last lease ended" % (back_ms - exps[-1])
    # the streams finish without their agent
    for t in ts:
        t.join(30)
    for i, s in enumerate(out):
        assert not isinstance(s, Exception), "stream %d: %r" % (i, s)
        assert s.status == 200 and b"[DONE]" in s.body, (i, s.status, s.body[-200:])
    # the agent comes back: HAProxy's ring delivers the three records, which
    # charge the usage late (the lease lapsed, the tokens were spent)
    a.agent.restart(15.0)
    H.wait_for(a.agent_ready, 15.0, 0.05, "the restarted agent")
    V.wait_spoe(a)
    try:
        H.wait_for(lambda: a.settlements("late") - late0 >= 3, 20.0, 0.2,
                   "three late settlements")
    except TimeoutError:
        raise AssertionError("after the agent restart, settlements: late %d settled %d "
                             "unknown %d (want 3 late)"
                             % (a.settlements("late"), a.settlements("settled"),
                                a.settlements("unknown"))) from None


# ------------------------------------------------------- records by hand

def find_new_rid(red, before, timeout=10.0):
    def new():
        keys = set(V.redis_keys(red, "tollgate:v1:res:*")) - before
        return keys and sorted(keys)
    keys = H.wait_for(new, timeout, 0.01, "a new reservation in Redis")
    assert len(keys) == 1, keys
    return keys[0][len("tollgate:v1:res:"):]


@case
def settlement_record_twice(c):
    gw = c.sets["closed"][0]
    red = c.red
    prefix = "fault_quota:"
    gw.set_quota("streamer", 100000)
    q0 = V.redis_int(red, prefix + "streamer")
    assert q0 == 100000, q0
    tok0 = sum(gw.tokens(consumer="streamer"))
    settled0 = gw.settlements("settled")
    s = G.sse_stream(gw.port, CHAT, stream_body("st-model"),
                     {"x-api-key": KEYS["streamer"], "x-mock-delay-ms": "20",
                      "x-mock-completion-tokens": "12"}, timeout=30.0)
    assert s.status == 200 and b"[DONE]" in s.body, s.body[-200:]
    gw.wait_metric("tollgate_settlements_total", settled0 + 1, result="settled")
    H.wait_for(lambda: V.redis_int(red, prefix + "streamer") < q0, 5.0, 0.05, "the charge")
    charged = q0 - V.redis_int(red, prefix + "streamer")
    assert charged > 0 and sum(gw.tokens(consumer="streamer")) == tok0 + charged
    # every restart replays the ring: the record is read again, and again
    for how in ("SIGTERM", "SIGKILL"):
        if how == "SIGKILL":
            gw.agent.kill()
            gw.agent.restart(15.0)
            H.wait_for(gw.agent_ready, 15.0, 0.05, "the restarted agent")
        else:
            gw.restart_agent()
        H.wait_for(lambda: gw.settlements("duplicate") >= 1, 10.0, 0.05,
                   "the replayed record answered duplicate after a %s" % how)
        time.sleep(0.3)
        assert gw.settlements("settled") == 0 and gw.settlements("late") == 0, how
        assert V.redis_int(red, prefix + "streamer") == q0 - charged, \
            "a replayed record was charged after a %s" % how
    # token counters are the agent's own (persisted): unchanged too
    assert sum(gw.tokens(consumer="streamer")) == tok0 + charged


@case
def in_flight_settled_exactly_across_agent_stop_and_kill(c):
    """Streams and JSON answers in flight across an agent SIGTERM and a
    SIGKILL, on Redis: the balance moves by exactly what the upstream
    answered, once."""
    gw = c.sets["closed"][0]
    red = c.red
    prefix = "fault_quota:"
    for how in ("SIGTERM", "SIGKILL"):
        gw.set_quota("streamer", 100000)
        q0 = V.redis_int(red, prefix + "streamer")
        tok0 = gw.tokens(consumer="streamer")
        tin, tout = G.in_flight_across(gw, c.up, {"x-api-key": KEYS["streamer"]},
                                                     "st-flight", how)
        H.wait_for(lambda: V.redis_int(red, prefix + "streamer") == q0 - tin - tout, 15.0, 0.05,
                   "balance %d after a %s" % (q0 - tin - tout, how))
        gw.wait_tokens((tok0[0] + tin, tok0[1] + tout), timeout=10.0, consumer="streamer")
        time.sleep(0.5)     # and nothing more arrives
        assert V.redis_int(red, prefix + "streamer") == q0 - tin - tout, how
        assert gw.tokens(consumer="streamer") == (tok0[0] + tin, tok0[1] + tout), how


@case
def in_flight_settled_exactly_across_haproxy_reload(c):
    """The same across a master-worker HAProxy reload, on Redis: the old
    worker's streams and answers are charged once, from its ring."""
    cfg = config(c.up.port, c.red, "closed")
    gw = V.start_pair(c.env, cfg, "reload", master_worker=True)
    red = c.red
    prefix = "fault_quota:"
    try:
        gw.set_quota("streamer", 100000)
        q0 = V.redis_int(red, prefix + "streamer")
        tok0 = gw.tokens(consumer="streamer")
        tin, tout = G.in_flight_across(gw, c.up, {"x-api-key": KEYS["streamer"]},
                                       "st-reload", "reload")
        H.wait_for(lambda: V.redis_int(red, prefix + "streamer") == q0 - tin - tout, 15.0, 0.05,
                   "balance %d after the reload" % (q0 - tin - tout))
        gw.wait_tokens((tok0[0] + tin, tok0[1] + tout), timeout=10.0, consumer="streamer")
        time.sleep(0.5)     # and nothing more arrives
        assert V.redis_int(red, prefix + "streamer") == q0 - tin - tout
    finally:
        gw.haproxy.stop()
        gw.agent.stop()


@case
def client_disconnect_mid_stream(c):
    gw = c.sets["open"][0]
    red = c.red
    prefix = "fault_quota:"
    gw.set_quota("streamer", 100000)
    q0 = V.redis_int(red, prefix + "streamer")
    settled0 = gw.settlements("settled")
    tok0 = sum(gw.tokens(consumer="streamer"))

    def enough(st):
        return st.body.count(b"tok") >= 3
    s = G.sse_stream(gw.port, CHAT, stream_body("st-model"),
                     {"x-api-key": KEYS["streamer"], "x-mock-delay-ms": "100",
                      "x-mock-completion-tokens": str(STREAM_MAX)}, stop=enough)
    assert s.status == 200, (s.status, s.body[:300])
    assert b"[DONE]" not in s.body
    gw.wait_metric("tollgate_settlements_total", settled0 + 1, timeout=15.0, result="settled")
    H.wait_for(lambda: V.redis_int(red, prefix + "streamer") != q0, 5.0, 0.05, "a charge")
    time.sleep(0.5)
    charged = q0 - V.redis_int(red, prefix + "streamer")
    note("client disconnect after 3 of %d tokens: charged %d, reservation %d"
         % (STREAM_MAX, charged, STREAM_EST))
    assert 0 < charged <= STREAM_EST, "charged %d, reservation %d" % (charged, STREAM_EST)
    assert sum(gw.tokens(consumer="streamer")) == tok0 + charged
    assert gw.settlements("settled") == settled0 + 1


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
