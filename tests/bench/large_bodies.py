#!/usr/bin/env python3
"""tests/bench/large_bodies.py -- what prompts of megabytes cost (part of `make bench`).

For each HAProxy in HAPROXY_VERSIONS (default: $HAPROXY or haproxy), one
gateway rendered from a YAML that says nothing about sizes (the defaults:
haproxy.max_body 4 MiB), metering only, in front of a second agent process
whose built-in mock provider is the upstream (C, libev: it reads 4 MiB
bodies and paces 1000 streams without becoming the bottleneck). Measured:

  small p99     wrk, one connection, small chat requests: the p99 alone; while
                UPLOADERS clients (curl) send 4 MiB prompts at UPLOAD_RATE a
                second in all straight to the upstream (bypassing: what the
                uploads cost this machine, curl and the upstream's JSON parse
                included); and while they send them through the gateway. The
                gateway's share is through minus bypassing (medians of ROUNDS
                rounds, the three alternating)
  CPU per MiB   agent and HAProxy CPU (/proc utime+stime) over N_UPLOADS
                sequential 4 MiB prompts, per MiB: plain (nothing rewritten),
                and streamed without stream_options (the agent rewrites the
                body: include_usage is added, and HAProxy swaps it)
  memory        first, before anything large has passed: HAProxy and agent
                resident memory (VmRSS, sampled every 50 ms): idle, the peak
                with STREAMS concurrent SSE streams (one event each 50 ms for
                ~3 s), and the peak with UPLOADS50 concurrent 4 MiB uploads
Small requests go to an upstream of their own (a second mock), so that they
never wait behind the mock reading a 4 MiB prompt.

Prints one markdown table row per version, then the table. Knobs: DURATION
(wrk seconds, 8), ROUNDS (3), UPLOADERS (2), UPLOAD_RATE (4), N_UPLOADS (25),
STREAMS (1000), UPLOADS50 (50).
"""
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
from benchlib import cpu_seconds, median, per_version, run_streams  # noqa: E402

DURATION = int(os.environ.get("DURATION", "8"))
UPLOADERS = int(os.environ.get("UPLOADERS", "2"))
UPLOAD_RATE = float(os.environ.get("UPLOAD_RATE", "4"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
N_UPLOADS = int(os.environ.get("N_UPLOADS", "25"))
STREAMS = int(os.environ.get("STREAMS", "1000"))
UPLOADS50 = int(os.environ.get("UPLOADS50", "50"))
MIB = 1 << 20
KEY = "bench-large-key"


def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """Peak VmRSS of some pids while it runs."""

    def __init__(self, pids):
        self.pids, self.peak, self.stop = pids, {p: 0 for p in pids}, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss_kib(p))
            time.sleep(0.05)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def chat_body(size, model="bench-large", **extra):
    """A chat body of exactly `size` bytes, the model last (as the SDKs write it)."""
    def build(n):
        d = {"messages": [{"role": "user", "content": "x" * n}]}
        d.update(extra)
        d["model"] = model
        return json.dumps(d, separators=(",", ":")).encode()
    return build(size - len(build(0)))


def curl(port, path, headers=(), url=None):
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60",
            "-H", "content-type: application/json", "-H", "x-api-key: " + KEY,
            "--data-binary", "@" + path]
    for h in headers:
        argv += ["-H", h]
    argv.append(url or "http://127.0.0.1:%d/v1/chat/completions" % port)
    r = subprocess.run(argv, capture_output=True, text=True)
    return r.stdout.strip()


def wrk_p99(port, lua, seconds):
    r = subprocess.run(["wrk", "-t1", "-c1", "-d%ds" % seconds, "--latency", "-s", lua,
                        "http://127.0.0.1:%d/v1/chat/completions" % port],
                       capture_output=True, text=True)
    out = r.stdout
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)", out, re.M)
    reqs = re.search(r"^\s*(\d+) requests in", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not m or not reqs or non2xx:
        raise RuntimeError("wrk: %s%s" % (out, r.stderr))
    v = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return v, int(reqs.group(1))


class Uploads:
    """UPLOADERS threads sending 4 MiB prompts at UPLOAD_RATE per second in
    all (paced: a fixed schedule, not back to back), until stop()."""

    def __init__(self, port, path, url=None, headers=()):
        self.done, self.bad, self.halt = 0, [], False
        self.t0 = time.monotonic()
        gap = UPLOADERS / UPLOAD_RATE

        def run(i):
            due = self.t0 + i * gap / UPLOADERS
            while not self.halt:
                time.sleep(max(0.0, due - time.monotonic()))
                if self.halt:
                    break
                code = curl(port, path, headers, url)
                if code == "200":
                    self.done += 1
                else:
                    self.bad.append(code)
                due += gap
        self.ths = [threading.Thread(target=run, args=(i,)) for i in range(UPLOADERS)]
        for t in self.ths:
            t.start()

    def stop(self):
        self.halt = True
        for t in self.ths:
            t.join()
        return self.done, time.monotonic() - self.t0, sorted(set(self.bad))


def open_streams(port, n, delay_ms, tokens):
    """n concurrent SSE streams through the gateway; returns when all ended.
    (number that ended with [DONE])"""
    body = json.dumps({"model": "bench-large", "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\nx-api-key: " +
           KEY.encode() + b"\r\ncontent-type: application/json\r\nx-mock-delay-ms: " +
           str(delay_ms).encode() + b"\r\nconnection: close\r\ncontent-length: " +
           str(len(body)).encode() + b"\r\n\r\n" + body)
    return run_streams(port, req, n, 60)[1]


def one_version(haproxy):
    # the harness starts 2.6 with the glibc setting haproxy/README.md advises
    # (the figures are for the advised setup); it reads HAPROXY on import
    os.environ["HAPROXY"] = haproxy
    import harness as H
    import gateway as G
    res = {"haproxy": "%d.%d.%d" % H.haproxy_version(),
           "tunables": os.environ.get("GLIBC_TUNABLES", "")}
    env = H.Env("bench-large")
    try:
        # two upstreams: the large prompts' own, so that a small request never
        # waits behind the mock reading 4 MiB (that would measure the mock)
        up = env.agent({"agent": {"log_level": "warn"}}, name="upstream")
        up_small = env.agent({"agent": {"log_level": "warn"}}, name="upstream-small")
        cfg = {
            "providers": [{"name": "up", "type": "openai-compatible",
                           "base_url": "http://127.0.0.1:%d/mock/v1" % up.http_port,
                           "api_keys": ["pk-bench"]},
                          {"name": "up-small", "type": "openai-compatible",
                           "base_url": "http://127.0.0.1:%d/mock/v1" % up_small.http_port,
                           "api_keys": ["pk-bench"]}],
            "consumers": [{"name": "bench", "credential": KEY}],
            "key_auth": {"keys": ["x-api-key"], "in_header": True},
            "routes": [{"name": "r", "provider": "up", "models": ["bench-large"],
                        "auth": {"enabled": True, "allow": ["bench"]}},
                       {"name": "small", "provider": "up-small", "models": ["bench-small"],
                        "auth": {"enabled": True, "allow": ["bench"]}}],
            "agent": {"log_level": "warn"},
        }
        if os.environ.get("MAX_BODY"):
            cfg["haproxy"] = {"max_body": int(os.environ["MAX_BODY"])}
        if os.environ.get("SPOE_PROCESSING"):
            cfg.setdefault("haproxy", {})["timeouts"] = {
                "spoe_processing": os.environ["SPOE_PROCESSING"]}
        gw = G.start_gateway(env, cfg)
        res["bufsize"] = G.haproxy_sizes(gw)[1]
        hp, ag = gw.haproxy.pid, gw.agent.pid
        big = env.path("big.json")
        open(big, "wb").write(chat_body(4 * MIB - 100, max_tokens=1))
        big_stream = env.path("big-stream.json")
        open(big_stream, "wb").write(chat_body(4 * MIB - 100, max_tokens=1, stream=True))
        small = json.dumps({"model": "bench-small", "max_tokens": 1,
                            "messages": [{"role": "user", "content": "Hello there"}]})
        lua = env.write("small.lua", "wrk.method = 'POST'\nwrk.body = %s\n"
                        "wrk.headers['content-type'] = 'application/json'\n"
                        "wrk.headers['x-api-key'] = '%s'\n" % (json.dumps(small), KEY))
        # 1. memory, before anything large has passed
        res["rss_idle"] = (rss_kib(hp), rss_kib(ag))
        s = Sampler([hp, ag])
        ok = open_streams(gw.port, STREAMS, 50, 60)
        peak = s.done()
        res["streams_ok"] = ok
        res["rss_streams"] = (peak[hp], peak[ag])
        s = Sampler([hp, ag])
        codes = []
        ths = [threading.Thread(target=lambda: codes.append(curl(gw.port, big)))
               for _ in range(UPLOADS50)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        peak = s.done()
        res["uploads_ok"] = codes.count("200")
        res["upload_codes"] = sorted(set(codes))
        res["rss_uploads"] = (peak[hp], peak[ag])
        res["rss_after"] = (rss_kib(hp), rss_kib(ag))

        # 2. p99 of small requests: alone; with paced 4 MiB uploads that
        # bypass the gateway (straight to the large prompts' upstream: what
        # the uploads cost the machine, curl and the upstream included); with
        # the same uploads through the gateway. Rounds alternate the three;
        # the gateway's share is the difference of the last two medians.
        wrk_p99(gw.port, lua, 2)                           # warm up
        direct = "http://127.0.0.1:%d/mock/v1/chat/completions" % up.http_port
        p99 = {"alone": [], "bypass": [], "through": []}
        sent = {"bypass": [0, 0.0], "through": [0, 0.0]}
        for _ in range(ROUNDS):
            p99["alone"].append(wrk_p99(gw.port, lua, DURATION)[0])
            for mode in ("bypass", "through"):
                url = direct if mode == "bypass" else None
                hdrs = ("authorization: Bearer pk-bench",) if url else ()
                pacer = Uploads(gw.port, big, url, hdrs)
                p99[mode].append(wrk_p99(gw.port, lua, DURATION)[0])
                n, secs, bad = pacer.stop()
                if bad:
                    raise RuntimeError("%s uploads answered %s" % (mode, bad))
                sent[mode][0] += n
                sent[mode][1] += secs
        for mode, v in p99.items():
            res["p99_" + mode] = median(v)
            res["p99_%s_all" % mode] = v
        res["uploads_per_s"] = sent["through"][0] / sent["through"][1]

        # 3. CPU per MiB, plain and rewritten
        for name, path in (("plain", big), ("rewritten", big_stream)):
            a0, h0 = cpu_seconds(ag), cpu_seconds(hp)
            for _ in range(N_UPLOADS):
                assert curl(gw.port, path) == "200"
            mib = N_UPLOADS * os.path.getsize(path) / MIB
            res["agent_us_per_mib_" + name] = (cpu_seconds(ag) - a0) / mib * 1e6
            res["haproxy_us_per_mib_" + name] = (cpu_seconds(hp) - h0) / mib * 1e6

    finally:
        env.close(failed=False)
    return res


def mib(kib):
    return "%.0f" % (kib / 1024)


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    rows, failed = per_version(__file__, one_version, "large_bodies")
    print()
    print("Large prompts (defaults: haproxy.max_body 4 MiB). Small p99: wrk, one connection, "
          "%d s runs, median of %d rounds; 4 MiB uploads paced at %g/s by %d clients, "
          "bypassing the gateway (straight to the upstream) or through it. %d streams, "
          "%d concurrent uploads" % (DURATION, ROUNDS, UPLOAD_RATE, UPLOADERS, STREAMS, UPLOADS50))
    print()
    print("| HAProxy | tune.bufsize | small p99 alone | uploads bypassing | uploads through "
          "| gateway's share | agent CPU/MiB plain, rewritten | HAProxy CPU/MiB plain, rewritten "
          "| RSS MiB idle (HAProxy, agent) | %d streams | %d × 4 MiB uploads |"
          % (STREAMS, UPLOADS50))
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %.2f ms | %.2f ms | %.2f ms (%.1f uploads/s) | %+.2f ms "
              "| %.0f, %.0f µs "
              "| %.0f, %.0f µs | %s, %s | %s, %s (%d/%d ended) | %s, %s (%d/%d 200) |" % (
                  r["haproxy"], r["bufsize"], r["p99_alone"], r["p99_bypass"],
                  r["p99_through"], r["uploads_per_s"], r["p99_through"] - r["p99_bypass"],
                  r["agent_us_per_mib_plain"], r["agent_us_per_mib_rewritten"],
                  r["haproxy_us_per_mib_plain"], r["haproxy_us_per_mib_rewritten"],
                  mib(r["rss_idle"][0]), mib(r["rss_idle"][1]),
                  mib(r["rss_streams"][0]), mib(r["rss_streams"][1]), r["streams_ok"], STREAMS,
                  mib(r["rss_uploads"][0]), mib(r["rss_uploads"][1]), r["uploads_ok"],
                  UPLOADS50))
    for r in rows:
        # a measurement, not a failure: 2.8.0's SPOE applet gives up (I/O
        # error, then the failure status) when a NOTIFY near the buffer's size
        # meets a partly full buffer (haproxy/README.md)
        if r["streams_ok"] != STREAMS or r["uploads_ok"] != UPLOADS50:
            print("large_bodies: %s: %d/%d streams ended, %d/%d uploads answered 200 "
                  "(answers: %s)" % (r["haproxy"], r["streams_ok"], STREAMS, r["uploads_ok"],
                                     UPLOADS50, " ".join(r["upload_codes"])))
    return failed


if __name__ == "__main__":
    sys.exit(main())
