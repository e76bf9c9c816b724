#!/usr/bin/env python3
"""tests/bench/streams.py -- what a streamed event costs (part of `make bench`).

For each HAProxy in HAPROXY_VERSIONS (default: $HAPROXY or haproxy), side by
side in one run, the same load through:

  plain      HAProxy alone, tuned as an operator would (nbthread = cores,
             http-reuse always, and http-no-delay for SSE: without it the
             kernel holds events back, 181 ms at p99 here), in front of the
             upstream
  lua floor  the plain HAProxy with an empty Lua data filter on the answer
             (LUA_FLOOR below: it forwards what it is given and nothing
             else): what HAProxy itself charges for calling any Lua filter
             once per event, the floor of a gateway that meters in Lua
  gateway    HAProxy rendered by `tollgate haproxy-config` + the agent,
             metering only: key auth, routing, the Lua filter reading every
             event, exactly-once settlement

The upstream is the agent's built-in mock provider (C, libev) in a process of
its own: STREAMS concurrent chat streams, each EVENTS words paced DELAY_MS
apart, one write per event (x-mock-words, x-mock-delay-ms). The client sends
no stream_options, as the OpenAI SDKs do: the gateway adds include_usage and
removes the usage event again, so both setups deliver the same events.
ROUNDS rounds alternate the setups; medians are reported.

Measured per setup: CPU per delivered event (utime + stime from /proc of
HAProxy, plus the agent for the gateway, over the round, divided by the
events the clients received), and the p99 of the gap between two events of
one stream as the client sees it (DELAY_MS when every event is forwarded the
moment it arrives). Checked in every gateway round: every stream ends with
[DONE] and the output tokens the gateway metered equal the words sent,
exactly; then ABORTS streams cut after half their events are settled with an
estimate (output tokens > 0, from the characters seen).

Targets (issue 9): CPU per event, gateway / plain <= 1.5x (stretch 1.2x).
Knobs: STREAMS (200), EVENTS (200), DELAY_MS (10), ROUNDS (3), ABORTS (20),
MAX_BODY (the gateway's haproxy.max_body; default: the YAML's default).
"""
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
from benchlib import cpu_seconds, median, per_version, run_streams  # noqa: E402

STREAMS = int(os.environ.get("STREAMS", "200"))
EVENTS = int(os.environ.get("EVENTS", "200"))
DELAY_MS = int(os.environ.get("DELAY_MS", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ABORTS = int(os.environ.get("ABORTS", "20"))
KEY = "bench-stream-key"
TIMEOUT = 60 + EVENTS * DELAY_MS / 1000.0   # s, for a round of streams


def request(path, headers, events):
    body = json.dumps({"model": "bench-stream", "stream": True,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]})
    head = "".join("%s: %s\r\n" % kv for kv in headers.items())
    return ("POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            "x-mock-words: %d\r\nx-mock-delay-ms: %d\r\n%sconnection: close\r\n"
            "content-length: %d\r\n\r\n%s" % (path, events, DELAY_MS, head, len(body), body)
            ).encode()


# The empty Lua data filter of the "lua floor" setup.
LUA_FLOOR = """
local F = {}
F.id = "floor"
F.flags = filter.FLT_CFG_FL_HTX
F.__index = F
function F:new() return setmetatable({}, F) end
function F:http_headers(txn, msg)
    if msg.channel:is_resp() then filter.register_data_filter(self, msg.channel) end
    return filter.CONTINUE
end
function F:http_payload(txn, msg) return msg:input() end
core.register_filter("floor", F, function(f, args) return f end)
"""


def p99(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * 0.99))] if v else float("nan")


def one_version(haproxy):
    os.environ["HAPROXY"] = haproxy
    import harness as H
    import gateway as G
    res = {"haproxy": "%d.%d.%d" % H.haproxy_version(), "plain": [], "lua floor": [],
           "gateway": []}
    env = H.Env("bench-streams")
    try:
        up = env.agent({"agent": {"log_level": "warn"}}, name="upstream")
        gw = G.start_gateway(env, G.config(
            G.provider("up", up.http_port, ["pk-bench"], path="/mock/v1"),
            {"bench": KEY},
            [{"name": "r", "provider": "up", "models": ["bench-*"],
              "auth": {"enabled": True, "allow": ["bench"]}}],
            haproxy={"max_body": int(os.environ["MAX_BODY"])} if os.environ.get("MAX_BODY")
            else None))
        def plain_haproxy(name, lua):
            port = H.free_port()
            glob = fe = ""
            if lua:
                # 3.1+ warns (an error under -dW) unless this is said first
                glob = (".if version_atleast(3.1)\n    tune.lua.bool-sample-conversion normal\n"
                        ".endif\n    lua-load-per-thread %s\n"
                        % env.write(name + ".lua", LUA_FLOOR))
                fe = "    filter lua.floor\n"
            proc = env.haproxy(
                "global\n    maxconn 4096\n    nbthread %d\n%s"
                "defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n"
                "    timeout server 60s\n"
                "frontend plain\n    bind 127.0.0.1:%d\n%s    default_backend up\n"
                "backend up\n    http-reuse always\n    option http-no-delay\n"
                "    server u 127.0.0.1:%d\n"
                % (os.cpu_count(), glob, port, fe, up.http_port), name=name, wait_ports=[port])
            return port, proc
        plain_port, plain = plain_haproxy("plain", False)
        floor_port, floor = plain_haproxy("luafloor", True)
        plain_req = request("/mock/v1/chat/completions", {"authorization": "Bearer pk-bench"},
                            EVENTS)
        setups = {
            "plain": (plain_port, [plain.pid], plain_req),
            "lua floor": (floor_port, [floor.pid], plain_req),
            "gateway": (gw.port, [gw.haproxy.pid, gw.agent.pid],
                        request("/v1/chat/completions", {"x-api-key": KEY}, EVENTS)),
        }
        run_streams(gw.port, setups["gateway"][2], 4, TIMEOUT)            # warm up both
        run_streams(plain_port, setups["plain"][2], 4, TIMEOUT)
        run_streams(floor_port, setups["lua floor"][2], 4, TIMEOUT)
        for _ in range(ROUNDS):
            for name, (port, pids, req) in setups.items():
                out0 = gw.tokens(consumer="bench")[1]
                c0 = [cpu_seconds(p) for p in pids]
                events, done, gaps = run_streams(port, req, STREAMS, TIMEOUT)
                cpu = [cpu_seconds(p) - c for p, c in zip(pids, c0)]
                if done != STREAMS:
                    raise RuntimeError("%s: %d of %d streams ended with [DONE]"
                                       % (name, done, STREAMS))
                if name == "gateway":
                    want = out0 + STREAMS * EVENTS
                    try:
                        gw.wait_metric("tollgate_tokens_total", want, 15.0,
                                       consumer="bench", direction="output")
                    except Exception:
                        raise RuntimeError("metered %d output tokens, the upstream sent %d"
                                           % (gw.tokens(consumer="bench")[1] - out0,
                                              STREAMS * EVENTS))
                res[name].append({"us_per_event": sum(cpu) / events * 1e6, "events": events,
                                  "haproxy_us": cpu[0] / events * 1e6, "gap_p99": p99(gaps)})
        # aborted streams: settled with an estimate of what was seen
        res["aborted"] = {"streams": 0, "events_seen": 0, "output_tokens": 0}
        if not ABORTS:
            return res
        out0 = gw.tokens(consumer="bench")[1]
        events, _, _ = run_streams(gw.port, setups["gateway"][2], ABORTS, TIMEOUT,
                                   cut_after=EVENTS // 2)
        H.wait_for(lambda: gw.tokens(consumer="bench")[1] > out0, 15.0, 0.1,
                   "an estimate for the aborted streams")
        time.sleep(1.0)
        res["aborted"] = {"streams": ABORTS, "events_seen": events,
                          "output_tokens": gw.tokens(consumer="bench")[1] - out0}
    finally:
        env.close(failed=False)
    return res


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    rows, failed = per_version(__file__, one_version, "streams")
    print()
    print("Streams: %d concurrent, %d events each %d ms apart, %d rounds (medians); "
          "CPU per delivered event from /proc" % (STREAMS, EVENTS, DELAY_MS, ROUNDS))
    print()
    print("| HAProxy | plain HAProxy µs/event | plain + empty Lua data filter (floor) "
          "| gateway (HAProxy + agent) µs/event | of which HAProxy | ratio (target ≤ 1.5×) "
          "| floor / plain | event gap p99 plain, gateway | usage "
          "| %d streams cut at half |" % ABORTS)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pl = median([x["us_per_event"] for x in r["plain"]])
        fl = median([x["us_per_event"] for x in r["lua floor"]])
        gw = median([x["us_per_event"] for x in r["gateway"]])
        a = r["aborted"]
        print("| %s | %.1f | %.1f | %.1f | %.1f | %.2f× | %.2f× | %.1f, %.1f ms | exact "
              "| %d events seen, %d output tokens estimated |" % (
                  r["haproxy"], pl, fl, gw, median([x["haproxy_us"] for x in r["gateway"]]),
                  gw / pl, fl / pl,
                  median([x["gap_p99"] for x in r["plain"]]),
                  median([x["gap_p99"] for x in r["gateway"]]),
                  a["events_seen"], a["output_tokens"]))
    return failed


if __name__ == "__main__":
    sys.exit(main())
