"""governance.py -- several HAProxy + agent pairs sharing one store, for the
token-governance tests (test_governance.py, test_faults.py).

    import harness as H, gateway as G, governance as V
    with H.Env("gov") as env:
        up = env.mock_upstream()
        red = env.redis()
        cfg = G.config(G.provider("up", up.port, path=V.UP_PATH), {"alice": K},
                       [{"name": "r", "provider": "up", "models": ["m-*"],
                         "auth": {"enabled": True, "allow": ["alice"]},
                         "plugins": {"ai-token-ratelimit": G.ratelimit(token_per_minute=500)}}],
                       redis=red)                  # local-redis.static -> that Redis
        pairs = V.start_pairs(env, cfg, 3)        # 3 x (tollgate + haproxy)
        body, hdrs, cost = V.exact_chat("m-1", ctok=20)
        pairs[0].post("/v1/chat/completions", body, dict(hdrs, **{"x-api-key": K}))

A pair is a gateway.Gateway (same client helpers: post, metrics, tokens,
quota, ...), started exactly as gateway.start_gateway() does it
(`tollgate check`, `tollgate haproxy-config`, `haproxy -c -dW`, then the
agent and `haproxy -f`), except that every pair has its own name, ports,
rendered directory, stats socket and state_dir, so N of them run in one Env
(gateway.start_gateway() names its processes "agent"/"haproxy" and can run
once per Env).

exact_chat() builds a chat request whose admission estimate equals what the
recording mock upstream (tests/e2e/mock_upstream.py) will charge, so budget
arithmetic in the tests is exact:
  the agent estimates  prompt = ceil(len(content)/4) + 4 per message object
                       (agent/meter.c) + max_tokens
  the mock charges     ceil(len(raw body)/4) + x-mock-completion-tokens
x-mock-completion-tokens is chosen so both are equal.
"""
import json
import os
import threading
import time

import harness as H
import gateway as G

CHAT = "/v1/chat/completions"


# --------------------------------------------------------------- pairs

def start_pair(env, cfg, name="p0", zero_warning=True, timeout=15.0, master_worker=False):
    """One tollgate agent + one haproxy from cfg (gateway.start_gateway, with
    failure_status 503 unless cfg says otherwise); its files and processes
    are NAME-*."""
    cfg = json.loads(json.dumps(cfg))
    cfg.setdefault("haproxy", {}).setdefault("failure_status", 503)
    return G.start_gateway(env, cfg, zero_warning, timeout, name, master_worker)


def start_pairs(env, cfg, n, prefix="p", **kw):
    """n pairs from the same configuration (store.instances = n unless the
    configuration sets it)."""
    cfg = json.loads(json.dumps(cfg))
    if "store" in cfg:
        cfg["store"].setdefault("instances", n)
    return [start_pair(env, cfg, "%s%d" % (prefix, i), **kw) for i in range(n)]


def wait_spoe(gw, timeout=15.0):
    """Wait until HAProxy gets verdicts from its agent (its SPOE applets
    connected): a request with no key for no model is answered by the agent
    (401 or 404), not with the failure status."""
    H.wait_for(lambda: gw.post(CHAT, {"model": "none"}, {}, timeout=3.0)[0] in (401, 404),
               timeout, 0.05, "%s: verdicts from the agent" % getattr(gw, "name", "gw"))


# -------------------------------------------------------------- config
# (the configuration itself: gateway.config() and its helpers)

UP_PATH = "/compatible-mode/v1"     # the recording mock upstream, qwen-style


def redis_store(red, **extra):
    s = {"redis": red.url}
    s.update(extra)
    return s


# ------------------------------------------------------------ requests

def est_prompt(content):
    """The agent's prompt estimate of one ASCII user message."""
    return (len(content.encode()) + 3) // 4 + 4


def exact_chat(model, content="x" * 200, max_tokens=60, **extra):
    """(body, headers, cost): a chat whose admission estimate equals the
    mock upstream's total tokens (= cost)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens}
    body.update(extra)
    raw = json.dumps(body).encode()          # what H.http_request sends
    ptok = (len(raw) + 3) // 4
    est = est_prompt(content) + max_tokens
    ctok = est - ptok
    assert ctok >= 1, "max_tokens %d too small for exact accounting" % max_tokens
    return body, {"x-mock-completion-tokens": str(ctok)}, est


def mock_cost(rec):
    """Total tokens the mock upstream charged for one recorded request."""
    tin, tout = G.upstream_usage(rec)
    return tin + tout


class Result:
    __slots__ = ("status", "headers", "body", "t0", "t1", "pair", "tag", "error")

    def __init__(self):
        self.status = self.headers = self.body = self.error = None
        self.t0 = self.t1 = 0.0
        self.pair = self.tag = None

    @property
    def secs(self):
        return self.t1 - self.t0


def timed_post(gw, body, headers, timeout=15.0):
    r = Result()
    r.t0 = time.monotonic()
    try:
        r.status, r.headers, r.body = gw.post(CHAT, body, headers, timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- recorded, asserted by the caller
        r.error = e
    r.t1 = time.monotonic()
    return r


def burst(jobs, threads=None, start_together=True, timeout=60.0):
    """Run jobs (callables returning a Result) on one thread each (or
    `threads`), released together by a barrier; results in job order."""
    n = len(jobs)
    threads = threads or n
    out = [None] * n
    barrier = threading.Barrier(min(threads, n)) if start_together else None
    lock = threading.Lock()
    idx = [0]

    def worker():
        if barrier is not None:
            try:
                barrier.wait(30)
            except threading.BrokenBarrierError:
                pass
        while True:
            with lock:
                i = idx[0]
                idx[0] += 1
            if i >= n:
                return
            out[i] = jobs[i]()
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(min(threads, n))]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in ts), "burst: threads still running after %.0fs" % timeout
    return out


# --------------------------------------------------------------- redis

def redis_int(red, key):
    v = H.redis_cmd(red.port, "GET", key)
    return None if v is None else int(v)


def redis_keys(red, pattern):
    """SCAN for keys matching pattern."""
    out, cursor = [], "0"
    while True:
        cursor, keys = H.redis_cmd(red.port, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        out.extend(keys)
        if cursor == "0":
            return sorted(set(out))


def redis_window_sum(red, pattern):
    """Sum of the settled amounts in the rate-window hashes whose key
    matches pattern (store_redis.h: tollgate:v2:win:<bucket key>, a hash
    sub-window -> tokens, and "" -> "sum:low", which must agree)."""
    total = 0
    keys = redis_keys(red, pattern)
    for k in keys:
        flat = H.redis_cmd(red.port, "HGETALL", k) or []
        fields = dict(zip(flat[0::2], flat[1::2]))
        agg = fields.pop("", None)
        amounts = sum(int(v) for v in fields.values())
        if fields:
            assert agg is not None, "window %s has no \"\" field" % k
            assert int(agg.split(":")[0]) == amounts, \
                "window %s: \"\" says %s, its sub-windows sum to %d" % (k, agg, amounts)
        total += amounts
    return total, keys


# ------------------------------------------------------------- metrics

def tokens_sum(pairs, **labels):
    """input + output of tollgate_tokens_total over every pair's agent."""
    return sum(sum(gw.tokens(**labels)) for gw in pairs)


def settlements_sum(pairs, result):
    return sum(gw.settlements(result) for gw in pairs)


def wait_tokens_total(pairs, expected, timeout=15.0, **labels):
    last = [None]

    def check():
        last[0] = tokens_sum(pairs, **labels)
        return last[0] == expected
    try:
        H.wait_for(check, timeout, 0.1, "tokens %r == %d" % (labels, expected))
    except TimeoutError:
        raise AssertionError("tollgate_tokens_total%r over %d agents: got %r, expected %d"
                             % (labels, len(pairs), last[0], expected)) from None
