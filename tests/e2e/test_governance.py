"""test_governance.py -- token governance end to end, on real HAProxy 2.6 +
tollgate agents + a real redis-server, for both stores.

One Env for the module (tests/e2e/governance.py): the recording mock
upstream (tests/e2e/mock_upstream.py) as a `qwen` provider, one redis-server,
ONE pair (HAProxy + agent) on the embedded store, and SIX pairs sharing the
Redis (the Higress service `local-redis.static` points at it). Every pair
is rendered by `tollgate haproxy-config` from the same YAML (the Higress
walkthrough, /work/shared/seed/token-control.md, plus routes for the
concurrency and sliding-window cases); only ports, state_dir and the
service address differ.

Requests of the concurrency and sliding-window cases are built by
governance.exact_chat(): their admission estimate equals what the mock
upstream charges, so the budget arithmetic is exact and "overshoot" means
the store admitted more than the semantics allow, never estimation error.

What it proves:
  - the walkthrough as curl runs it, on the embedded store and on Redis:
    quota refresh / query / delta answer exactly as Higress; with
    token_per_minute 5 the first chat passes and carries
    x-ratelimit-limit/remaining/reset-tokens, the next within the minute is
    429 with Retry-After and X-TokenRateLimit-Reset; a consumer
    with quota 0 gets 403 "Request denied by ai quota check, No quota
    left"; the balance falls by exactly the provider's total tokens; on
    Redis the balance is the plain integer at `chat_quota:aliyun-user1`
    (GET), i.e. the Higress key, and a second pair sharing the Redis sees
    the same rate bucket, and a balance SET in Redis is read back;
  - those reset headers are within the minute (1..60 s, as Higress's are;
    minute_limit_reset_within_the_minute);
  - concurrency: 200 simultaneous requests over 1, 3 and 6 pairs sharing
    one Redis (and over the embedded pair) against a token_per_minute limit
    and, separately, a quota, each 20.5 requests' worth: only 200 / 429
    (403) answers, the tokens admitted beyond the limit are at most one
    request's worth, and once everything settled the Redis balance, the
    Redis window and tollgate_tokens_total summed over the agents all equal
    the usage the mock upstream charged, exactly. These pairs use
    store.timeout_ms 250 so that they measure what Redis admits; three more
    pairs with the defaults (timeout_ms 50, failure_mode local) take the
    same bursts (concurrency_redis_default_deadline): there the bound must
    hold too, unless Redis calls missed the 50 ms deadline under the burst
    (a loaded machine: measured once in 40 runs, in a container on CI);
    then they were decided by failure_mode local, and every request beyond
    the bound must be one of those counted decisions
    (tollgate_store_fallback_decisions_total), the overshoot is noted, and
    the counts must still settle exactly;
  - the window slides: with token_per_second, a burst that fills the limit
    late in one wall-clock second and a second burst 0.6 s later (in the
    next wall-clock second, where a fixed window would have started afresh)
    are together refused beyond the limit; a request more than one window
    after the first burst settled passes. Both stores.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
import governance as V  # noqa: E402
from tcase import FAILED, case, main  # noqa: E402

CHAT = V.CHAT
ADMIN, USER1, USER2 = "admin-key-gov", "user1-key-gov", "user2-key-gov"
N_REQ = 200                 # concurrent requests per burst
WORTH = 20.5                # limits, in requests' worth
DELAY_MS = 300              # upstream latency: admitted requests overlap
PAIR_COUNTS = (1, 3, 6)
STORE_DEADLINE_MS = 250     # store.timeout_ms of the r* pairs (SPOE processing: 500 ms)

# One request shape per route; the model names have the same length, so
# the cost (= estimate = mock charge) is the same for both.
RL_BODY, RL_HDRS, COST = V.exact_chat("crl-model", content="c" * 240, max_tokens=60)
Q_BODY, Q_HDRS, Q_COST = V.exact_chat("cqt-model", content="c" * 240, max_tokens=60)
assert COST == Q_COST
LIMIT = int(COST * WORTH)
SW_BODY, SW_HDRS, SW_COST = V.exact_chat("sw-model", content="s" * 40, max_tokens=20)
SW_LIMIT = int(SW_COST * 3.5)   # 4 sequential requests fill it (0, 1, 2, 3 < 3.5)


def conc_consumers():
    out = {}
    for store in ("emb", "redis"):
        for kind in ("rl", "q"):
            for n in PAIR_COUNTS:
                if store == "emb" and n != 1:
                    continue
                out["conc-%s-%s-%d" % (kind, store, n)] = "key-conc-%s-%s-%d" % (kind, store, n)
    for kind in ("rl", "q"):
        out["conc-%s-dflt-3" % kind] = "key-conc-%s-dflt-3" % kind
    return out


CONC = conc_consumers()
SLIDE_KEY = "key-slide"
EST_LIMIT = 100000


def config(up_port, red=None, store=None):
    users = ["aliyun-admin", "aliyun-user1", "aliyun-user2"]
    consumers = {"aliyun-admin": ADMIN, "aliyun-user1": USER1, "aliyun-user2": USER2}
    consumers.update(CONC)
    consumers["slider"] = SLIDE_KEY
    routes = [
        # the walkthrough, verbatim plugin blocks
        {"name": "aliyun", "provider": "aliyun", "models": ["qwen-*"],
         "auth": {"enabled": True, "allow": users},
         "plugins": {"ai-quota": G.quota("chat_quota:", "aliyun-admin", timeout=2000),
                     "ai-token-ratelimit": G.ratelimit(token_per_minute=5)}},
        # concurrency: a rate limit alone, a quota alone
        {"name": "conc-rl", "provider": "aliyun", "models": ["crl-*"],
         "auth": {"enabled": True, "allow": sorted(c for c in CONC if "-rl-" in c)},
         "plugins": {"ai-token-ratelimit": G.ratelimit("conc_rule", token_per_minute=LIMIT)}},
        {"name": "conc-q", "provider": "aliyun", "models": ["cqt-*"],
         "auth": {"enabled": True,
                  "allow": ["aliyun-admin"] + sorted(c for c in CONC if "-q-" in c)},
         "plugins": {"ai-quota": G.quota("chat_quota:", "aliyun-admin", timeout=2000)}},
        # the admission estimate, read back from x-ratelimit-remaining-tokens
        {"name": "estimate", "provider": "aliyun", "models": ["est-*"],
         "auth": {"enabled": True, "allow": ["slider"]},
         "plugins": {"ai-token-ratelimit": G.ratelimit("est_rule", header="x-est",
                                                       token_per_minute=EST_LIMIT)}},
        # sliding window: one budget per x-slide value, 1 s window
        {"name": "slide", "provider": "aliyun", "models": ["sw-*"],
         "auth": {"enabled": True, "allow": ["slider"]},
         "plugins": {"ai-token-ratelimit": G.ratelimit("slide_rule", header="x-slide",
                                                       token_per_second=SW_LIMIT)}},
    ]
    return G.config(G.provider("aliyun", up_port, ptype="qwen", path=V.UP_PATH), consumers,
                    routes, redis=red, store=store)


class Ctx:
    pass


REPORT = []


def note(msg):
    REPORT.append(msg)
    print("NOTE: " + msg, flush=True)


def setup():
    c = Ctx()
    c.env = H.Env("governance")
    c.resets = []                   # (what, seconds, lowest allowed) from the walkthroughs
    try:
        c.up = c.env.mock_upstream()
        c.red = c.env.redis()
        c.emb = V.start_pair(c.env, config(c.up.port), "emb")
        # a deadline that a loaded 2-CPU box does not miss: these pairs
        # measure what the Redis store admits, not its failure mode
        c.rpairs = V.start_pairs(c.env, config(c.up.port, c.red, {"timeout_ms": STORE_DEADLINE_MS}),
                                 6, prefix="r")
        # the product defaults (timeout_ms 50, failure_mode local)
        c.dpairs = V.start_pairs(c.env, config(c.up.port, c.red, {}), 3, prefix="d")
        for gw in [c.emb] + c.rpairs + c.dpairs:
            V.wait_spoe(gw)
    except BaseException:
        c.env.close(failed=True)
        raise
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED))


def records_of(c, consumer, since=0):
    return [r for r in c.up.requests()[since:]
            if r["headers"].get("x-mse-consumer") == consumer]


# ------------------------------------------------------------ walkthrough

def curl(gw, path, *args):
    return H.curl_request("http://127.0.0.1:%d%s" % (gw.port, path), *args)


def admin_args(*extra):
    return ("-H", "x-api-key:" + ADMIN, "-H", "x-higress-llm-model: qwen-max") + extra


SEED_CHAT = json.dumps({"model": "qwen-max",
                        "messages": [{"role": "user", "content": "你是谁"}]},
                       ensure_ascii=False)


def seed_chat(gw, key):
    return curl(gw, CHAT, "-H", "x-api-key:" + key, "-H", "Content-Type: application/json",
                "-d", SEED_CHAT)


def int_header(h, name, where):
    v = h.get(name)
    assert v is not None, "%s: no %s header in %r" % (where, name, dict(h))
    try:
        return int(v)
    except ValueError:
        raise AssertionError("%s: %s is not an integer: %r" % (where, name, v)) from None


def walkthrough(c, gw, other, red):
    """other: a second pair on the same store (or None); red: the redis Proc
    (or None for the embedded store)."""
    where = "redis" if red else "embedded"

    def balance_via_curl():
        st, h, body = curl(gw, CHAT + "/quota?consumer=aliyun-user1", *admin_args())
        assert st == 200, (where, st, body)
        obj = json.loads(body)
        assert obj["consumer"] == "aliyun-user1", obj
        return obj["quota"]

    nrec = len(c.up.requests())
    # refresh, query, delta, query: Higress's answers, byte for byte
    st, h, body = curl(gw, CHAT + "/quota/refresh", *admin_args("-d", "consumer=aliyun-user1&quota=100"))
    assert (st, body) == (200, b"refresh quota successful"), (where, st, body)
    st, h, body = curl(gw, CHAT + "/quota?consumer=aliyun-user1", *admin_args())
    assert st == 200 and (h.get("content-type") or "").startswith("application/json"), (st, dict(h))
    assert body.strip() == b'{"consumer":"aliyun-user1","quota":100}', (where, body)
    if red:
        assert H.redis_cmd(red.port, "GET", "chat_quota:aliyun-user1") == "100", \
            "the Higress key chat_quota:aliyun-user1 is not the plain integer 100: %r" % (
                H.redis_cmd(red.port, "GET", "chat_quota:aliyun-user1"),)
    st, h, body = curl(gw, CHAT + "/quota/delta", *admin_args("-d", "consumer=aliyun-user1&value=100"))
    assert (st, body) == (200, b"delta quota successful"), (where, st, body)
    assert balance_via_curl() == 200
    if red:
        assert V.redis_int(red, "chat_quota:aliyun-user1") == 200
        # the migration contract the other way: a balance written by Higress
        # (or redis-cli) is the one the gateway reads
        H.redis_cmd(red.port, "SET", "chat_quota:aliyun-user1", "250")
        assert balance_via_curl() == 250, "a balance SET in Redis is not read back"
        H.redis_cmd(red.port, "DECRBY", "chat_quota:aliyun-user1", "50")
        assert balance_via_curl() == 200
    st, h, body = curl(gw, CHAT + "/quota/refresh", *admin_args("-d", "consumer=aliyun-user2&quota=0"))
    assert (st, body) == (200, b"refresh quota successful"), (st, body)
    assert not c.up.requests()[nrec:], "admin calls reached the upstream"

    # the first chat passes, with the x-ratelimit-* headers of the 5/min rule
    st, h, body = seed_chat(gw, USER1)
    assert st == 200, (where, st, body[:300])
    usage = json.loads(body)["usage"]
    total = usage["total_tokens"]
    assert total == usage["prompt_tokens"] + usage["completion_tokens"] > 0, usage
    assert int_header(h, "x-ratelimit-limit-tokens", where) == 5
    rem = int_header(h, "x-ratelimit-remaining-tokens", where)
    assert 0 <= rem <= 5, rem
    reset = int_header(h, "x-ratelimit-reset-tokens", where)
    assert reset >= 0, reset
    c.resets.append(("%s: first chat via %s: x-ratelimit-reset-tokens" % (where, gw.name),
                     reset, 0))
    recs = records_of(c, "aliyun-user1", nrec)
    assert len(recs) == 1, recs
    assert V.mock_cost(recs[0]) == total, (recs[0], usage)

    # the balance falls by exactly the provider's total tokens
    H.wait_for(lambda: balance_via_curl() == 200 - total, 5.0, 0.05,
               "%s: balance 200 - %d" % (where, total))
    if red:
        assert H.redis_cmd(red.port, "GET", "chat_quota:aliyun-user1") == str(200 - total)

    # the next chat within the minute: 429 (through the other pair as well)
    for g in [gw] + ([other] if other else []):
        st, h, body = seed_chat(g, USER1)
        assert st == 429, (where, g.name, st, body[:300])
        e = G.error_json(body, "%s 429" % where)
        assert e["type"] == "rate_limit_exceeded" or e["code"] == "rate_limit_exceeded", e
        ra = int_header(h, "Retry-After", where + " 429")
        rs = int_header(h, "X-TokenRateLimit-Reset", where + " 429")
        assert ra >= 1 and rs >= 1, (ra, rs)
        c.resets.append(("%s: second chat via %s: Retry-After" % (where, g.name), ra, 1))
        c.resets.append(("%s: second chat via %s: X-TokenRateLimit-Reset" % (where, g.name),
                         rs, 1))
    assert len(records_of(c, "aliyun-user1", nrec)) == 1, "a refused request reached the upstream"
    assert balance_via_curl() == 200 - total, "a refused request was charged"

    # quota 0: 403 with Higress's message
    st, h, body = seed_chat(gw, USER2)
    assert st == 403, (where, st, body[:300])
    e = G.error_json(body, where + " 403")
    assert e["message"] == "Request denied by ai quota check, No quota left", e
    assert not records_of(c, "aliyun-user2", nrec), "a consumer with no quota reached the upstream"
    # the settlement is complete and happened once
    H.wait_for(lambda: gw.settlements("settled") >= 1, 5.0, 0.05, "a settlement")
    time.sleep(0.3)
    assert balance_via_curl() == 200 - total


@case
def walkthrough_embedded(c):
    walkthrough(c, c.emb, None, None)


@case
def walkthrough_redis(c):
    walkthrough(c, c.rpairs[0], c.rpairs[1], c.red)


@case
def minute_limit_reset_within_the_minute(c):
    """The walkthrough's token_per_minute limit: Retry-After,
    X-TokenRateLimit-Reset and x-ratelimit-reset-tokens are seconds within
    the one-minute window (Higress's are <= 60), both stores."""
    assert c.resets, "the walkthroughs recorded no header"
    wrong = ["%s = %d (want %d..60)" % (what, v, lo) for what, v, lo in c.resets
             if not lo <= v <= 60]
    for w in wrong:
        note("DISCREPANCY " + w)
    assert not wrong, "; ".join(wrong)


# ------------------------------------------------------------ concurrency

def why(c, pairs):
    """The likely cause of an overshoot: Redis calls that missed their
    deadline were decided by store.failure_mode (local: this agent's share
    of the rate limit, the quota against the balance Redis last reported),
    on top of what Redis admitted."""
    if not c.store_errors:
        return ""
    deadline = pairs[0].cfg.get("store", {}).get("timeout_ms", 50)
    return ("; %d Redis calls failed or missed their %d ms deadline during the burst "
            "(tollgate_store_errors_total) and were decided by failure_mode %s"
            % (c.store_errors, deadline,
               pairs[0].cfg.get("store", {}).get("failure_mode", "local")))


def label(pairs, red):
    if red is None:
        return "embedded"
    return "redis timeout_ms %d" % pairs[0].cfg.get("store", {}).get("timeout_ms", 50)


def store_errors(pairs):
    """Redis calls failed or past their deadline, over the agents."""
    return int(sum(gw.metric("tollgate_store_errors_total") for gw in pairs))


def fallbacks(pairs):
    """Admissions decided without Redis, over the agents."""
    return int(sum(gw.metric("tollgate_store_fallback_decisions_total") for gw in pairs))


def check_bound(c, pairs, consumer, admitted, limit, what, deadline_may_miss):
    """At most one request beyond the limit; where the deadline may be
    missed (the default 50 ms on a loaded machine), the requests beyond it
    must each be a counted decision taken without Redis."""
    beyond = admitted - (limit + COST)
    if beyond > 0 and deadline_may_miss and c.store_errors:
        note("%s: %d request(s) beyond the bound, decided by failure_mode local after %d "
             "Redis calls missed the 50 ms deadline (%d decisions without Redis counted)"
             % (consumer, -(-beyond // COST), c.store_errors, c.fallbacks))
        assert beyond <= c.fallbacks * COST, \
            "%s: %d tokens admitted %s %d: %d requests beyond the bound, only %d " \
            "decisions without Redis counted%s" % (
                consumer, admitted, what, limit, -(-beyond // COST), c.fallbacks, why(c, pairs))
        return
    assert beyond <= 0, \
        "%s: %d tokens admitted %s %d: more than one request (%d) beyond%s" % (
            consumer, admitted, what, limit, COST, why(c, pairs))


def conc_burst(c, pairs, consumer, body, hdrs):
    key = CONC[consumer]
    headers = dict(hdrs, **{"x-api-key": key, "x-mock-delay-ms": str(DELAY_MS)})
    nrec = len(c.up.requests())
    jobs = [(lambda gw=pairs[i % len(pairs)]: V.timed_post(gw, body, headers, 30.0))
            for i in range(N_REQ)]
    err0, fb0 = store_errors(pairs), fallbacks(pairs)
    t0 = time.monotonic()
    res = V.burst(jobs, timeout=90.0)
    took = time.monotonic() - t0
    c.store_errors = store_errors(pairs) - err0
    c.fallbacks = fallbacks(pairs) - fb0
    errors = [r.error for r in res if r.error]
    assert not errors, "%s: %d client errors, first %r" % (consumer, len(errors), errors[0])
    statuses = {}
    for r in res:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return res, statuses, nrec, took


def check_settled(c, pairs, consumer, expected, red, rule):
    """Every agent's tokens, and the Redis window, sum to `expected`."""
    V.wait_tokens_total(pairs, expected, timeout=20.0, consumer=consumer)
    if red is not None and rule:
        # the Redis window of the consumer's bucket (store_redis.h layout)
        H.wait_for(lambda: V.redis_window_sum(red, "tollgate:v2:win:tollgate:{%s}:rl:%s:*"
                                              % (consumer, rule))[0] == expected,
                   10.0, 0.1, "Redis window of %s == %d" % (consumer, expected))


def concurrency_rl(c, pairs, consumer, red, deadline_may_miss=False):
    res, statuses, nrec, took = conc_burst(c, pairs, consumer, RL_BODY, RL_HDRS)
    bad = {s: n for s, n in statuses.items() if s not in (200, 429)}
    recs = records_of(c, consumer, nrec)
    ok = statuses.get(200, 0)
    admitted = sum(V.mock_cost(r) for r in recs)
    note("rate limit, %s, %d pair(s): %d/%d admitted in %.1fs, %d tokens for a limit of %d "
         "(overshoot %d = %.2f request), statuses %r, store errors/timeouts %d"
         % (label(pairs, red), len(pairs), ok, N_REQ, took, admitted, LIMIT,
            admitted - LIMIT, (admitted - LIMIT) / COST, statuses, c.store_errors))
    assert not bad, "%s: answers other than 200/429: %r" % (consumer, statuses)
    assert len(recs) == ok, "%d answers 200 but the upstream saw %d" % (ok, len(recs))
    assert all(V.mock_cost(r) == COST for r in recs)
    check_bound(c, pairs, consumer, admitted, LIMIT, "for a limit of", deadline_may_miss)
    assert admitted > LIMIT - COST, \
        "%s: only %d tokens admitted for a limit of %d (requests refused below the limit)" % (
            consumer, admitted, LIMIT)
    for r in res:
        if r.status == 429:
            ra = int(r.headers.get("Retry-After") or 0)
            assert 1 <= ra <= 61, ("Retry-After", ra)
    # the Redis window holds what Redis admitted; a local decision's usage
    # is in that agent's local store (store_redis.h, "Failure")
    check_settled(c, pairs, consumer, admitted, None if c.fallbacks else red, "conc_rule")
    assert V.settlements_sum(pairs, "unknown") == 0


def concurrency_quota(c, pairs, consumer, red, deadline_may_miss=False):
    q0 = LIMIT
    pairs[0].set_quota(consumer, q0)
    if red is not None:
        assert V.redis_int(red, "chat_quota:" + consumer) == q0
    res, statuses, nrec, took = conc_burst(c, pairs, consumer, Q_BODY, Q_HDRS)
    bad = {s: n for s, n in statuses.items() if s not in (200, 403)}
    recs = records_of(c, consumer, nrec)
    ok = statuses.get(200, 0)
    admitted = sum(V.mock_cost(r) for r in recs)
    note("quota, %s, %d pair(s): %d/%d admitted in %.1fs, %d tokens for a balance of %d "
         "(overshoot %d = %.2f request), statuses %r, store errors/timeouts %d"
         % (label(pairs, red), len(pairs), ok, N_REQ, took, admitted, q0,
            admitted - q0, (admitted - q0) / COST, statuses, c.store_errors))
    assert not bad, "%s: answers other than 200/403: %r" % (consumer, statuses)
    assert len(recs) == ok, "%d answers 200 but the upstream saw %d" % (ok, len(recs))
    for r in res:
        if r.status == 403:
            assert G.error_json(r.body)["message"] == \
                "Request denied by ai quota check, No quota left", r.body
    check_bound(c, pairs, consumer, admitted, q0, "on a balance of", deadline_may_miss)
    assert admitted > q0 - COST, \
        "%s: only %d tokens admitted on a balance of %d" % (consumer, admitted, q0)
    # the balance is exactly what the provider charged
    last = [None]

    def settled():
        last[0] = pairs[0].quota(consumer)
        return last[0] == q0 - admitted
    try:
        H.wait_for(settled, 20.0, 0.1, "balance of %s" % consumer)
    except TimeoutError:
        raise AssertionError("%s: balance %r after the burst, expected %d - %d = %d"
                             % (consumer, last[0], q0, admitted, q0 - admitted)) from None
    if red is not None:
        assert V.redis_int(red, "chat_quota:" + consumer) == q0 - admitted, \
            H.redis_cmd(red.port, "GET", "chat_quota:" + consumer)
    for gw in pairs[1:]:
        assert gw.quota(consumer) == q0 - admitted
    check_settled(c, pairs, consumer, admitted, None, None)


@case
def concurrency_embedded(c):
    concurrency_rl(c, [c.emb], "conc-rl-emb-1", None)
    concurrency_quota(c, [c.emb], "conc-q-emb-1", None)


@case
def concurrency_redis_1_pair(c):
    concurrency_rl(c, c.rpairs[:1], "conc-rl-redis-1", c.red)
    concurrency_quota(c, c.rpairs[:1], "conc-q-redis-1", c.red)


@case
def concurrency_redis_3_pairs(c):
    concurrency_rl(c, c.rpairs[:3], "conc-rl-redis-3", c.red)
    concurrency_quota(c, c.rpairs[:3], "conc-q-redis-3", c.red)


@case
def concurrency_redis_6_pairs(c):
    concurrency_rl(c, c.rpairs[:6], "conc-rl-redis-6", c.red)
    concurrency_quota(c, c.rpairs[:6], "conc-q-redis-6", c.red)


@case
def concurrency_redis_default_deadline(c):
    """The same bursts over three pairs with the store's defaults
    (timeout_ms 50, failure_mode local): DESIGN's bound (one request
    beyond the limit) still holds, unless Redis calls missed the deadline
    under the burst: then every request beyond it is a counted decision
    of failure_mode local, and the counts still settle exactly."""
    concurrency_rl(c, c.dpairs, "conc-rl-dflt-3", c.red, deadline_may_miss=True)
    concurrency_quota(c, c.dpairs, "conc-q-dflt-3", c.red, deadline_may_miss=True)


# ------------------------------------------------------------- estimate

@case
def admission_estimate_pinned(c):
    """The reservation of a request, read back from the tightest rule's
    x-ratelimit-remaining-tokens on a fresh key, against figures written by
    hand from the documented rule (agent/meter.h, README): the prompt is 1
    token per 4 ASCII bytes (rounded up over a text) plus 1 per other code
    point, plus 4 per message object; the output is max_tokens. These pin
    what governance.est_prompt() computes for the other cases."""
    cases = [
        # (body, reservation)
        ({"messages": [{"role": "user", "content": "x" * 200}], "max_tokens": 60},
         50 + 4 + 60),
        ({"messages": [{"role": "user", "content": "\u4f60\u597dab"}], "max_tokens": 10},
         1 + 2 + 4 + 10),
        ({"messages": [{"role": "system", "content": "hello"},
                       {"role": "user", "content": "world!!!"}], "max_tokens": 5},
         (2 + 4) + (2 + 4) + 5),
        ({"prompt": "abcdefghi", "max_tokens": 1}, 3 + 1),
    ]
    assert V.est_prompt("x" * 200) == 54, "governance.est_prompt disagrees with the rule"
    for i, (body, want) in enumerate(cases):
        body = dict(body, model="est-model")
        st, h, data = c.emb.post(CHAT, body, {"x-api-key": SLIDE_KEY,
                                              "x-est": "est-%d-%d" % (i, time.time_ns())})
        assert st == 200, (i, st, data[:200])
        rem = int(h.get("x-ratelimit-remaining-tokens"))
        assert EST_LIMIT - rem == want, "body %d reserved %d, the rule says %d" % (
            i, EST_LIMIT - rem, want)


# ---------------------------------------------------------- sliding window

def slide_post(gw, value):
    return V.timed_post(gw, SW_BODY, dict(SW_HDRS, **{"x-api-key": SLIDE_KEY,
                                                     "x-slide": value}), 10.0)


def sliding_attempt(gws, value):
    """One attempt; returns True when done, or a reason to retry when the
    timing (the run across one second boundary) could not be arranged."""
    gw = gws[0]
    # start filling late in a wall-clock second: the retry 0.6 s later falls
    # in the next second, where a fixed one-second window would be empty
    frac = time.time() % 1.0
    time.sleep((0.55 - frac) % 1.0)
    fill = []
    for _ in range(8):
        r = slide_post(gws[len(fill) % len(gws)], value)
        fill.append(r)
        if r.status != 200:
            break
    st = [r.status for r in fill]
    assert st == [200, 200, 200, 200, 429], \
        "filling a limit of 3.5 requests/s sequentially: %r" % st
    first, last_ok = fill[0], fill[3]
    wall_first = time.time() - (time.monotonic() - first.t0)
    wall_fill = time.time() - (time.monotonic() - last_ok.t1)
    if last_ok.t1 - first.t0 > 0.3:
        return "filling took %.2fs" % (last_ok.t1 - first.t0)
    # 0.6 s later, a burst of three (one per pair when several)
    time.sleep(max(0.0, last_ok.t1 + 0.6 - time.monotonic()))
    wall_retry = time.time()
    again = V.burst([lambda g=gws[i % len(gws)]: slide_post(g, value) for i in range(3)])
    # the first request's tokens count until >= its settlement + 1 s, and
    # it settled after first.t0: a request sent before first.t0 + 1 s
    # must be refused (with the first four still in the window)
    late = [r for r in again if r.t0 >= first.t0 + 0.97]
    if late:
        return "the second burst was sent %.2fs after the first" % (late[0].t0 - first.t0)
    st2 = [r.status for r in again]
    assert st2 == [429, 429, 429], \
        "a second burst %.2fs after filling the %d tokens/s limit was admitted: %r" % (
            again[0].t0 - last_ok.t1, SW_LIMIT, st2)
    # what tells a sliding window from a fixed one: the fill inside one
    # wall-clock second (the clock of both stores: Redis's TIME is this
    # machine's), the refused burst in the next one, where a fixed window
    # would have started empty
    if not (int(wall_first) == int(wall_fill) and int(wall_retry) == int(wall_fill) + 1):
        return "the fill (%.3f..%.3f) and the burst (%.3f) were not on both sides of one " \
               "second boundary" % (wall_first % 10, wall_fill % 10, wall_retry % 10)
    for r in again:
        ra = int(r.headers.get("Retry-After") or 0)
        assert 1 <= ra <= 2, "Retry-After %r on a one-second window" % ra
    # more than one window after the last settlement: the budget is back
    time.sleep(max(0.0, last_ok.t1 + 1.0 + 0.017 + 0.25 - time.monotonic()))
    r = slide_post(gw, value)
    assert r.status == 200, "%.2fs after the first burst settled: %d %r" % (
        r.t0 - last_ok.t1, r.status, r.body[:200])
    return True


def sliding_window(c, gws, label):
    reason = None
    for attempt in range(4):
        out = sliding_attempt(gws, "%s-%d-%d" % (label, attempt, int(time.time() * 1000)))
        if out is True:
            note("sliding window, %s: filled within one wall-clock second, refused 0.6 s "
                 "later in the next one, admitted 1.27 s after; attempt %d"
                 % (label, attempt + 1))
            return
        reason = out
    raise AssertionError("sliding window %s: could not arrange the run across a second "
                         "boundary (%s) in 4 attempts" % (label, reason))


@case
def sliding_window_embedded(c):
    sliding_window(c, [c.emb], "embedded")


@case
def sliding_window_redis(c):
    # two pairs: the window is the shared one
    sliding_window(c, c.rpairs[:2], "redis")


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
