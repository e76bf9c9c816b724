"""test_metering.py -- token metering and settlement, end to end.

One gateway for the module (tests/e2e/gateway.py: rendered by `tollgate
haproxy-config`, real HAProxy 2.6, the agent on its embedded store) in front
of the recording mock upstream, whose token accounting is deterministic
(prompt = ceil(request bytes / 4), completion = x-mock-completion-tokens or
min(10, max_tokens)): the expected usage of every request is computed from
what the upstream recorded, and compared with the agent's
`tollgate_tokens_total{direction,route,provider,model,consumer}` and with the
consumer's ai-quota balance. Each case uses its own model name, so its
series are its own.

What it proves:
  - a JSON chat is metered exactly and settled exactly once (the SPOP
    `response` message settles, and HAProxy then emits no settlement record:
    no duplicate arrives);
  - SSE with stream_options.include_usage: the client sees the usage event,
    bytes pass unchanged, usage is exact;
  - SSE without it: the agent rewrote the body (the upstream saw
    include_usage true), the client's bytes are the upstream's bytes minus
    the usage-only event, usage still exact;
  - a JSON answer larger than HAProxy's buffer (x-mock-pad-bytes) is still
    metered exactly (the Lua filter's tail);
  - embeddings and the Responses API (JSON and streamed) are metered;
  - the built-in `mock` provider is metered like any other, and so is a
    route without ai-quota or ai-token-ratelimit;
  - every quota balance falls by exactly the provider's total tokens;
  - the first SSE byte is not delayed (x-mock-delay-ms between events),
    and events are not batched;
  - a client that disconnects mid-stream is charged > 0 and no more than
    its reservation, settled exactly once, and a second record for the same
    reservation changes nothing;
  - an agent restart (SIGTERM, start again on the same state_dir) loses no
    counted token: /metrics token totals and quota balances are identical;
    a stream that finishes while the agent restarts is settled exactly by
    the new process.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
from tcase import FAILED, case, main  # noqa: E402

KEY_A, KEY_B, KEY_ADMIN = "meter-a-key", "meter-b-key", "meter-admin-key"
CHAT = "/v1/chat/completions"
QUOTA0 = 1000000


def config(up_port):
    quota = G.quota("meter_quota:", "meter-admin")
    allow = ["meter-a", "meter-b", "meter-admin"]
    return G.config(
        [G.provider("up", up_port, ["pk-meter"]), {"name": "builtin", "type": "mock"}],
        {"meter-a": KEY_A, "meter-b": KEY_B, "meter-admin": KEY_ADMIN},
        [{"name": "meter", "provider": "up", "models": ["m-*"],
          "auth": {"enabled": True, "allow": allow}, "plugins": {"ai-quota": quota}},
         {"name": "builtin", "provider": "builtin", "models": ["mock-*"],
          "auth": {"enabled": True, "allow": allow}, "plugins": {"ai-quota": quota}},
         # no ai-quota, no ai-token-ratelimit: metered all the same
         {"name": "plain", "provider": "up", "models": ["p-*"],
          "auth": {"enabled": True, "allow": allow}}],
        # the smallest buffer: an answer above 16 KiB is larger than what SPOP sees
        haproxy={"bufsize": 16384}, key_headers=("x-api-key", "authorization"))


class Ctx:
    pass




def setup():
    c = Ctx()
    c.env = H.Env("metering")
    try:
        c.up = c.env.mock_upstream()
        c.gw = G.start_gateway(c.env, config(c.up.port))
        for who in ("meter-a", "meter-b"):
            c.gw.set_quota(who, QUOTA0)
    except BaseException:
        c.env.close(failed=True)
        raise
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED))


def chat(model, content="How many tokens is this?", **extra):
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    b.update(extra)
    return b


class Before:
    """Counters before a request, to check what it added."""

    def __init__(self, c, model, consumer="meter-a"):
        self.c, self.model, self.consumer = c, model, consumer
        self.tokens = c.gw.tokens(model=model, consumer=consumer)
        self.quota = c.gw.quota(consumer)
        self.settled = c.gw.settlements("settled")
        self.duplicate = c.gw.settlements("duplicate")
        self.nrec = len(c.up.requests())

    def records(self):
        return self.c.up.requests()[self.nrec:]

    def one_record(self):
        recs = self.records()
        assert len(recs) == 1, "the upstream saw %d requests: %r" % (len(recs), recs)
        return recs[0]

    def expect(self, tin, tout):
        """The request is metered (tin, tout) on top of what was there, the
        quota fell by tin + tout, and it was settled once, by one settlement
        attempt: a JSON answer by SPOP (HAProxy then silences its record),
        anything else by its record."""
        gw = self.c.gw
        gw.wait_tokens((self.tokens[0] + tin, self.tokens[1] + tout),
                       model=self.model, consumer=self.consumer)
        H.wait_for(lambda: gw.quota(self.consumer) == self.quota - tin - tout, 5.0, 0.05,
                   "quota of %s == %d" % (self.consumer, self.quota - tin - tout))
        want = self.settled + 1
        gw.wait_metric("tollgate_settlements_total", want, result="settled")
        # nothing more arrives: no second charge
        time.sleep(0.3)
        assert gw.settlements("settled") == want, "settled more than once"
        assert gw.settlements("duplicate") == self.duplicate, \
            "%d duplicate settlements" % (gw.settlements("duplicate") - self.duplicate)
        assert gw.tokens(model=self.model, consumer=self.consumer) == \
            (self.tokens[0] + tin, self.tokens[1] + tout)
        assert gw.quota(self.consumer) == self.quota - tin - tout


def split_events(body):
    """Raw SSE events (bytes, each with its trailing blank line)."""
    out, pos = [], 0
    while pos < len(body):
        i = body.find(b"\n\n", pos)
        if i < 0:
            out.append(body[pos:])
            break
        out.append(body[pos:i + 2])
        pos = i + 2
    return out


def is_usage_only(ev):
    for line in ev.split(b"\n"):
        if line.startswith(b"data: ") and line[6:].strip() not in (b"[DONE]", b""):
            obj = json.loads(line[6:])
            return obj.get("choices") == [] and "usage" in obj
    return False


# ---------------------------------------------------------------- JSON

@case
def json_chat_exact(c):
    b = Before(c, "m-json")
    st, h, data = c.gw.post(CHAT, chat("m-json"), {"x-api-key": KEY_A,
                                                  "x-mock-completion-tokens": "7"})
    assert st == 200, (st, data[:300])
    usage = json.loads(data)["usage"]
    rec = b.one_record()
    tin, tout = G.upstream_usage(rec)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (tin, tout) == (tin, 7), usage
    b.expect(tin, tout)


@case
def large_json_answer_exact(c):
    bufsize = G.haproxy_sizes(c.gw)[1]
    pad = max(40000, 2 * bufsize)
    b = Before(c, "m-large")
    st, h, data = c.gw.post(CHAT, chat("m-large"), {"x-api-key": KEY_A,
                                                   "x-mock-completion-tokens": "9",
                                                   "x-mock-pad-bytes": str(pad)})
    assert st == 200, (st, data[:300])
    assert len(data) > pad > bufsize, (len(data), bufsize)
    obj = json.loads(data)
    assert obj["usage"]["completion_tokens"] == 9, obj["usage"]
    tin, tout = G.upstream_usage(b.one_record())
    assert (obj["usage"]["prompt_tokens"], 9) == (tin, tout)
    # a body larger than the buffer skips the SPOP response message (SPOP
    # would see only its head): the record, with the usage the Lua filter
    # found in the tail, is the one settlement
    b.expect(tin, tout)


@case
def embeddings_metered(c):
    b = Before(c, "m-embed")
    st, h, data = c.gw.post("/v1/embeddings", {"model": "m-embed",
                                               "input": ["alpha", "beta", "gamma"]},
                            {"x-api-key": KEY_A})
    assert st == 200, (st, data[:300])
    obj = json.loads(data)
    assert len(obj["data"]) == 3, obj
    tin, tout = G.upstream_usage(b.one_record())
    assert obj["usage"] == {"prompt_tokens": tin, "total_tokens": tin}, obj["usage"]
    b.expect(tin, 0)


@case
def responses_api_metered(c):
    b = Before(c, "m-resp")
    st, h, data = c.gw.post("/v1/responses", {"model": "m-resp", "input": "Say tok",
                                              "max_output_tokens": 4}, {"x-api-key": KEY_A})
    assert st == 200, (st, data[:300])
    obj = json.loads(data)
    rec = b.one_record()
    assert rec["path"] == "/v1/responses", rec["path"]
    tin, tout = G.upstream_usage(rec)
    assert (obj["usage"]["input_tokens"], obj["usage"]["output_tokens"]) == (tin, tout) == (tin, 4)
    b.expect(tin, tout)


@case
def route_without_limits_metered(c):
    """Metering does not depend on a limit: a route with neither ai-quota nor
    ai-token-ratelimit is metered and settled like any other (its quota
    balance, which no plugin uses, does not move)."""
    gw = c.gw
    b = Before(c, "p-json")
    st, _, data = gw.post(CHAT, chat("p-json", max_tokens=3), {"x-api-key": KEY_A})
    assert st == 200, (st, data[:300])
    tin, tout = G.upstream_usage(b.one_record())
    s = G.sse_stream(gw.port, CHAT, chat("p-json", max_tokens=2, stream=True),
                     {"x-api-key": KEY_A})
    assert s.status == 200, (s.status, s.body[:300])
    rec = b.records()[-1]
    sin, sout = G.upstream_usage(rec)
    gw.wait_tokens((b.tokens[0] + tin + sin, b.tokens[1] + tout + sout),
                   model="p-json", consumer="meter-a")
    gw.wait_metric("tollgate_settlements_total", b.settled + 2, result="settled")
    assert gw.quota("meter-a") == b.quota


# ---------------------------------------------------------------- SSE

@case
def sse_with_include_usage(c):
    body = chat("m-sse-inc", stream=True, stream_options={"include_usage": True})
    b = Before(c, "m-sse-inc")
    s = G.sse_stream(c.gw.port, CHAT, body, {"x-api-key": KEY_A,
                                             "x-mock-completion-tokens": "5"})
    assert s.status == 200, (s.status, s.body[:300])
    assert s.headers.get("content-type", "").startswith("text/event-stream"), s.headers
    rec = b.one_record()
    assert json.loads(rec["body"]) == body, "the body was rewritten: %r" % rec["body"]
    tin, tout = G.upstream_usage(rec)
    events = H.parse_sse(s.body)
    assert events[-1] == (None, "[DONE]"), events[-3:]
    last = json.loads(events[-2][1])
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": tin, "completion_tokens": 5, "total_tokens": tin + 5}, last
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "")
                   for _, d in events[:-2])
    assert text == "tok tok tok tok tok", text
    # the client's bytes are exactly the upstream's
    assert s.body == G.replay_upstream(c.up.port, rec), "SSE bytes changed in transit"
    b.expect(tin, tout)


@case
def sse_without_include_usage(c):
    body = chat("m-sse-hide", stream=True)
    b = Before(c, "m-sse-hide")
    s = G.sse_stream(c.gw.port, CHAT, body, {"x-api-key": KEY_A,
                                             "x-mock-completion-tokens": "6"})
    assert s.status == 200, (s.status, s.body[:300])
    rec = b.one_record()
    sent = json.loads(rec["body"])
    assert sent.get("stream_options", {}).get("include_usage") is True, \
        "the upstream did not get include_usage: %r" % rec["body"]
    del sent["stream_options"]
    assert sent == body, "the rest of the body changed: %r" % rec["body"]
    assert rec["body_len"] == len(rec["body"].encode())
    tin, tout = G.upstream_usage(rec)
    assert tout == 6
    events = H.parse_sse(s.body)
    assert events[-1] == (None, "[DONE]"), events[-3:]
    assert not any("usage" in json.loads(d) for _, d in events[:-1]), \
        "the client saw the usage event it did not ask for: %r" % s.body[-400:]
    upstream = G.replay_upstream(c.up.port, rec)
    up_events = split_events(upstream)
    hidden = [e for e in up_events if is_usage_only(e)]
    assert len(hidden) == 1, up_events
    assert s.body == b"".join(e for e in up_events if not is_usage_only(e)), \
        "client bytes != upstream bytes minus the usage event:\n%r\n%r" % (s.body, upstream)
    b.expect(tin, tout)


@case
def responses_stream_metered(c):
    body = {"model": "m-resp-sse", "input": "Stream tok", "max_output_tokens": 3,
            "stream": True}
    b = Before(c, "m-resp-sse")
    s = G.sse_stream(c.gw.port, "/v1/responses", body, {"x-api-key": KEY_A})
    assert s.status == 200, (s.status, s.body[:300])
    events = H.parse_sse(s.body)
    assert [e for e, _ in events][-1] == "response.completed", events
    rec = b.one_record()
    tin, tout = G.upstream_usage(rec)
    done = json.loads(events[-1][1])
    assert done["response"]["usage"]["input_tokens"] == tin and tout == 3, done
    b.expect(tin, tout)
    # the Responses API has no stream_options.include_usage (its usage is
    # always in response.completed; OpenAI refuses unknown parameters): the
    # request must reach the provider as sent
    assert json.loads(rec["body"]) == body, \
        "a Responses API request was rewritten: %r" % rec["body"]


@case
def builtin_mock_provider_metered(c):
    b = Before(c, "mock-chat")
    st, h, data = c.gw.post(CHAT, chat("mock-chat", max_tokens=5), {"x-api-key": KEY_A})
    assert st == 200, (st, data[:300])
    u = json.loads(data)["usage"]
    # agent/mock_provider.h's token rule, by hand: "How many tokens is this?"
    # is 24 code points -> ceil(24 / 4) = 6; max_tokens 5 -> 5 words
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (6, 5, 11), u
    assert not b.records(), "the mock provider is the agent's, not the upstream's"
    b.expect(6, 5)
    # streamed, with include_usage: the usage the client sees is what is charged
    b = Before(c, "mock-chat")
    s = G.sse_stream(c.gw.port, CHAT, chat("mock-chat", max_tokens=5, stream=True,
                                           stream_options={"include_usage": True}),
                     {"x-api-key": KEY_A})
    assert s.status == 200, (s.status, s.body[:300])
    usage = [json.loads(d)["usage"] for _, d in H.parse_sse(s.body)
             if d != "[DONE]" and json.loads(d).get("usage")]
    assert len(usage) == 1, s.body[-500:]
    assert (usage[0]["prompt_tokens"], usage[0]["completion_tokens"]) == (6, 5), usage
    b.expect(6, 5)


@case
def sse_first_byte_not_delayed(c):
    b = Before(c, "m-sse-slow")
    s = G.sse_stream(c.gw.port, CHAT, chat("m-sse-slow", stream=True),
                     {"x-api-key": KEY_A, "x-mock-delay-ms": "300",
                      "x-mock-completion-tokens": "4"})
    assert s.status == 200, (s.status, s.body[:300])
    data_blocks = [(t, d) for t, d in s.blocks if b"data:" in d]
    assert data_blocks, s.blocks
    first, last = data_blocks[0][0], data_blocks[-1][0]
    # role, 4 tokens, stop, (hidden usage), [DONE]: 7 pauses of 300 ms upstream
    assert first < 0.25, "first event after %.3fs" % first
    assert last >= 1.8, "last event after %.3fs: events were not paced" % last
    assert last - first >= 1.5, (first, last)
    # events reach the client as they are produced, not batched at the end
    early = [t for t, _ in data_blocks if t < last - 0.5]
    assert len(early) >= 4, "only %d blocks before the end: %r" % (
        len(early), [(round(t, 3), d[:40]) for t, d in s.blocks])
    tin, tout = G.upstream_usage(b.one_record())
    b.expect(tin, tout)


@case
def sse_events_not_batched(c):
    """Each event leaves HAProxy when it arrives (option http-no-delay on
    the prov_*_obs backends): without it HAProxy batches them ~200 ms
    apart, which pacing at 300 ms does not show."""
    b = Before(c, "m-sse-pace")
    s = G.sse_stream(c.gw.port, CHAT, chat("m-sse-pace", stream=True),
                     {"x-api-key": KEY_A, "x-mock-delay-ms": "40",
                      "x-mock-completion-tokens": "20"})
    assert s.status == 200, (s.status, s.body[:300])
    times = [t for t, d in s.blocks if b"data:" in d]
    gaps = [round((y - x) * 1000) for x, y in zip(times, times[1:])]
    assert len(times) >= 20, "%d blocks, gaps %r ms" % (len(times), gaps)
    assert max(gaps[:-1]) < 150, "events batched: gaps %r ms" % gaps
    tin, tout = G.upstream_usage(b.one_record())
    b.expect(tin, tout)


@case
def client_disconnect_mid_stream(c):
    gw = c.gw
    model = "m-abort"
    b = Before(c, model)
    rec_before = gw.settlements("settled")

    def enough(st):                     # three token events received
        return st.body.count(b"tok") >= 3
    s = G.sse_stream(gw.port, CHAT, chat(model, stream=True, max_tokens=40),
                     {"x-api-key": KEY_A, "x-mock-delay-ms": "100",
                      "x-mock-completion-tokens": "40"}, stop=enough)
    assert s.status == 200, (s.status, s.body[:300])
    assert b"[DONE]" not in s.body, "the stream finished before the abort"
    # the mock's completion text is "tok" words joined by spaces, one token
    # event each ("tok", " tok", ...): 4k - 1 characters for k events
    seen = [json.loads(d)["choices"][0]["delta"].get("content", "")
            for _, d in H.parse_sse(s.body) if d != "[DONE]"]
    seen_events = sum(1 for t in seen if t.strip() == "tok")
    assert seen_events >= 3, seen
    gw.wait_metric("tollgate_settlements_total", rec_before + 1, timeout=15.0,
                   result="settled")
    tin, tout = gw.tokens(model=model, consumer="meter-a")
    tin -= b.tokens[0]
    tout -= b.tokens[1]
    assert tin + tout > 0, "an aborted stream with output was charged nothing"
    # without usage the output is estimated at 4 characters a token (README):
    # at least the events the client saw (HAProxy forwarded those), at most
    # what the reservation allowed
    assert seen_events <= tout <= 40, "output charged %d for %d token events seen (max 40)" % (
        tout, seen_events)
    lines = [u for u in gw.usage_lines() if u.get("model") == model]
    assert len(lines) == 1, lines
    u = lines[0]
    assert u["estimated"] is True and u["input_tokens"] == tin and u["output_tokens"] == tout, u
    assert gw.quota("meter-a") == b.quota - tin - tout
    # settled once: nothing more after a while
    time.sleep(0.5)
    assert gw.settlements("settled") == rec_before + 1
    # the record again: a restarted agent replays HAProxy's whole ring
    # (agent/ring_reader.c); the rid is settled, so it changes nothing
    gw.restart_agent()
    H.wait_for(lambda: gw.settlements("duplicate") + gw.settlements("unknown") >= 1, 10.0,
               0.05, "the replayed record answered duplicate or unknown")
    time.sleep(0.3)
    assert gw.settlements("settled") == 0 and gw.settlements("late") == 0, \
        "a replayed record settled again"
    assert gw.tokens(model=model, consumer="meter-a") == (b.tokens[0] + tin, b.tokens[1] + tout)
    assert gw.quota("meter-a") == b.quota - tin - tout


# ---------------------------------------------------------------- restart

@case
def agent_restart_keeps_counts(c):
    gw = c.gw
    # one more for meter-b so two consumers have history
    b = Before(c, "m-json", consumer="meter-b")
    st, _, data = gw.post(CHAT, chat("m-json", max_tokens=3), {"x-api-key": KEY_B})
    assert st == 200, (st, data[:300])
    tin, tout = G.upstream_usage(b.one_record())
    b.expect(tin, tout)
    tokens = gw.series("tollgate_tokens_total")
    assert tokens and sum(tokens.values()) > 0, tokens
    quotas = {who: gw.quota(who) for who in ("meter-a", "meter-b", "meter-admin")}
    assert quotas["meter-a"] < QUOTA0 and quotas["meter-b"] < QUOTA0, quotas
    old_pid = gw.agent.pid
    gw.restart_agent()
    assert gw.agent.pid != old_pid
    after = gw.series("tollgate_tokens_total")
    # a series at 0 may be absent after the restart: 0 either way
    changed = {dict(k)["model"] + "/" + dict(k)["direction"] + "/" + dict(k)["consumer"]:
               (tokens.get(k, 0), after.get(k, 0))
               for k in set(tokens) | set(after) if tokens.get(k, 0) != after.get(k, 0)}
    assert not changed, "token totals changed across the restart (before, after): %r" % changed
    assert {who: gw.quota(who) for who in quotas} == quotas
    # HAProxy gets verdicts again, and counting goes on from the restored totals
    # (probed with a request the agent refuses: it leaves no settlement behind)
    gw.wait_verdicts(lambda: gw.post(CHAT, chat("m-json", max_tokens=1), {})[0])
    st = gw.post(CHAT, chat("m-json"), {})
    assert st[0] == 401, st
    b = Before(c, "m-json", consumer="meter-b")
    st, _, data = gw.post(CHAT, chat("m-json", max_tokens=2), {"x-api-key": KEY_B})
    assert st == 200, (st, data[:300])
    tin, tout = G.upstream_usage(b.one_record())
    b.expect(tin, tout)


@case
def stream_settled_across_agent_restart(c):
    """A stream admitted by one agent process and finished while the agent
    restarts is settled exactly by the next one (HAProxy's ring buffers the
    record; ctx labels it; the reservation survives in state_dir)."""
    import threading
    gw = c.gw
    b = Before(c, "m-sse-restart")
    out = {}

    def run():
        try:
            out["s"] = G.sse_stream(gw.port, CHAT, chat("m-sse-restart", stream=True),
                                    {"x-api-key": KEY_A, "x-mock-delay-ms": "150",
                                     "x-mock-completion-tokens": "8"}, timeout=30.0)
        except Exception as e:  # noqa: BLE001 -- reported below
            out["err"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    H.wait_for(lambda: len(b.records()) == 1, 10.0, 0.02, "the stream reaching the upstream")
    gw.restart_agent()
    assert t.is_alive(), "the stream ended before the agent restarted"
    t.join(30.0)
    assert not t.is_alive(), "the stream did not finish"
    assert "err" not in out, out.get("err")
    s = out["s"]
    assert s.status == 200 and b"[DONE]" in s.body, (s.status, s.body[-300:])
    assert not any("usage" in json.loads(d) for _, d in H.parse_sse(s.body) if d != "[DONE]")
    tin, tout = G.upstream_usage(b.one_record())
    gw.wait_tokens((b.tokens[0] + tin, b.tokens[1] + tout), timeout=15.0,
                   model="m-sse-restart", consumer="meter-a")
    H.wait_for(lambda: gw.quota("meter-a") == b.quota - tin - tout, 5.0, 0.05,
               "quota of meter-a == %d" % (b.quota - tin - tout))


@case
def in_flight_settled_exactly_across_agent_stop_and_kill(c):
    """Streams and JSON answers in flight across an agent SIGTERM and a
    SIGKILL: each settled exactly once by the next agent process (the ring
    replayed, agent/ring_reader.c), on the embedded store."""
    gw = c.gw
    for how in ("SIGTERM", "SIGKILL"):
        model = "m-flight-%s" % how.lower()
        b = Before(c, model)
        tin, tout = G.in_flight_across(gw, c.up, {"x-api-key": KEY_A}, model, how)
        gw.wait_tokens((b.tokens[0] + tin, b.tokens[1] + tout), timeout=15.0,
                       model=model, consumer="meter-a")
        H.wait_for(lambda: gw.quota("meter-a") == b.quota - tin - tout, 5.0, 0.05,
                   "quota of meter-a == %d after a %s" % (b.quota - tin - tout, how))
        time.sleep(0.5)     # and nothing more arrives
        assert gw.tokens(model=model, consumer="meter-a") == (b.tokens[0] + tin,
                                                               b.tokens[1] + tout), how
        assert gw.quota("meter-a") == b.quota - tin - tout, how


@case
def in_flight_settled_exactly_across_haproxy_reload(c):
    """Streams and JSON answers in flight while HAProxy reloads (master-worker,
    SIGUSR2): the old worker finishes them and its records are read to its
    end, while requests on the new worker settle too; each exactly once.
    (agent.settle is a unix socket here, a TCP one everywhere else.)"""
    cfg = config(c.up.port)
    # and the ring read over a unix socket this time
    cfg.setdefault("agent", {})["settle"] = "unix:" + c.env.path("mw-settle.sock")
    gw = G.start_gateway(c.env, cfg, name="mw", master_worker=True)
    try:
        gw.set_quota("meter-a", QUOTA0)
        model = "m-flight-reload"
        tok0 = gw.tokens(model=model, consumer="meter-a")
        tin, tout = G.in_flight_across(gw, c.up, {"x-api-key": KEY_A}, model, "reload")
        # and one request on the new worker
        nrec = len(c.up.requests())
        st, _, data = gw.post(CHAT, chat(model, max_tokens=3), {"x-api-key": KEY_A})
        assert st == 200, (st, data[:300])
        n_in, n_out = G.upstream_usage(c.up.requests()[nrec])
        want = (tok0[0] + tin + n_in, tok0[1] + tout + n_out)
        gw.wait_tokens(want, timeout=15.0, model=model, consumer="meter-a")
        H.wait_for(lambda: gw.quota("meter-a") == QUOTA0 - tin - tout - n_in - n_out, 5.0, 0.05,
                   "quota of meter-a == %d" % (QUOTA0 - tin - tout - n_in - n_out))
        time.sleep(0.5)
        assert gw.tokens(model=model, consumer="meter-a") == want
    finally:
        gw.haproxy.stop()
        gw.agent.stop()


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
