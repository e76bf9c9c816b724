"""test_render.py -- `tollgate haproxy-config` (agent/render.c).

What it proves, with ${BUILD:-build}/tollgate and Debian's haproxy 2.6:
  - examples/token-control.yaml and every tests/configs/good-*.yaml render to
    a directory HAProxy accepts with `haproxy -c` without any warning (but,
    offline, the start-up resolution of a provider's public host name);
  - the rendered files keep the contract of doc/gateway.md: the SPOE
    messages and their arguments, the settlement record, one
    `http-request return` per status the agent answers (rejected_code
    included, with Retry-After / X-TokenRateLimit-Reset), TLS-verified
    provider backends, the mock provider on agent.http, the version guards
    of DESIGN.md "HAProxy 3.x", and tollgate.lua byte-identical to
    haproxy/tollgate.lua;
  - errors are reported, never half-rendered files;
  - the example itself runs: agent + HAProxy from the rendered files answer
    the seed's walkthrough (quota refresh, chat 200 with x-ratelimit-*
    headers and no client credential upstream, 429 with Retry-After, 401,
    403, streaming through the mock, 413 above the buffer, and the failure
    policy's 503 when the agent is down).
"""
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gateway as G  # noqa: E402
import harness as H  # noqa: E402
from tcase import case, main  # noqa: E402

EXAMPLE = os.path.join(H.REPO, "examples", "token-control.yaml")
CONFIGS = os.path.join(H.REPO, "tests", "configs")
LUA = os.path.join(H.REPO, "haproxy", "tollgate.lua")


def render(env, yaml_path, out, check=True):
    r = subprocess.run([H.agent_binary(), "haproxy-config", "--config", yaml_path, "--out", out],
                       capture_output=True, text=True, timeout=30, cwd=env.workdir)
    if check:
        assert r.returncode == 0, "haproxy-config failed (%d): %s%s" % (r.returncode, r.stdout,
                                                                       r.stderr)
    return r


UNRESOLVED = re.compile(r"could not resolve address '([^']+)', disabling server")


def haproxy_check(out):
    """haproxy -c: no warning at all, except (offline) a provider host name
    that does not resolve at start -- the rendered `resolvers` section keeps
    trying at run time. Returns the unresolved names."""
    r = subprocess.run([H.HAPROXY, "-c", "-f", os.path.join(out, "haproxy.cfg")],
                       capture_output=True, text=True, timeout=30, cwd=out)
    text = r.stdout + r.stderr
    warnings = [l for l in text.split("\n") if "[WARNING]" in l or "[ALERT]" in l]
    unresolved = [UNRESOLVED.search(l).group(1) for l in warnings if UNRESOLVED.search(l)]
    other = [l for l in warnings if not UNRESOLVED.search(l)]
    assert r.returncode == 0 and not other, "haproxy -c refused %s:\n%s\n%s" % (
        out, text, H._numbered(open(os.path.join(out, "haproxy.cfg")).read()))
    for name in unresolved:
        assert not re.match(r"^[0-9.:]+$", name), "an IP address did not resolve: %s" % name
    return unresolved


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return f.read()


def self_signed_pem(env):
    """A throwaway certificate + key (openssl): one PEM with both."""
    key, crt = env.path("k.pem"), env.path("c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=tollgate.test", "-keyout", key, "-out", crt],
                   check=True, capture_output=True, timeout=60)
    pem = env.path("gateway.pem")
    with open(pem, "w") as f:
        f.write(open(crt).read() + open(key).read())
    return pem


# --------------------------------------------------------------------------

@case
def example_renders_and_haproxy_accepts_it():
    with H.Env("render-ex") as env:
        out = env.path("out")           # created by the renderer
        r = render(env, EXAMPLE, out)
        assert "haproxy.cfg" in r.stdout, r.stdout
        haproxy_check(out)
        with open(os.path.join(out, "tollgate.lua"), "rb") as a, open(LUA, "rb") as b:
            assert a.read() == b.read(), "rendered tollgate.lua differs from haproxy/tollgate.lua"
        cfg = read(out, "haproxy.cfg")
        spoe = read(out, "spoe.conf")
        # absolute paths: haproxy may run from anywhere
        assert "lua-load-per-thread %s/tollgate.lua" % os.path.realpath(out) in cfg
        assert "filter spoe engine tollgate config %s/spoe.conf" % os.path.realpath(out) in cfg
        assert "filter lua.tollgate" in cfg
        assert cfg.index("filter spoe") < cfg.index("filter lua.tollgate")
        # the contract of doc/gateway.md
        assert re.search(r"^spoe-agent tollgate$", spoe, re.M)
        assert "option var-prefix tg" in spoe and "option set-on-error error" in spoe
        assert ("args method=method path=path query=query hdrs=req.hdrs_bin body=req.body "
                "ip=src") in spoe
        assert "event on-frontend-http-request" in spoe
        assert ("args rid=var(txn.tg.rid) ctx=var(txn.tg.ctx) status=status body=res.body "
                "tail=var(txn.tg.tail)") in spoe
        assert re.search(r"^spoe-group response\n    messages response$", spoe, re.M)
        assert ('log-format "tg1 %ID %[var(txn.tg.rid)] %[var(txn.tg.ctx)] %ST %ts '
                '%[var(txn.tg.u_in)] %[var(txn.tg.u_out)] %[var(txn.tg.seen_chars)] %B"') in cfg
        assert "log ring@tollgate_settle" in cfg
        assert "stats socket ipv4@127.0.0.1:12346 level operator" in cfg
        assert re.search(r"^ring tollgate_settle\n(    .*\n)*?    size \d+\n\n", cfg, re.M)
        assert "log-proto" not in cfg, "the ring has no TCP forwarder"
        # version guards (DESIGN.md "HAProxy 3.x")
        assert re.search(r"\.if version_atleast\(3\.1\)\n    tune\.lua\.bool-sample-conversion "
                         r"normal\n\.endif\n(.*\n)*?    lua-load-per-thread", cfg)
        assert re.search(r"\.if version_atleast\(3\.1\)\n    mode spop\n\.else\n    mode tcp\n"
                         r"\.endif", cfg)
        assert "option spop-check" in cfg
        assert re.search(r"\.if !version_atleast\(3\.1\)\n    no option async\n"
                         r"    no option send-frag-payload\n", spoe)
        # the mock provider is the agent's /mock responder on agent.http
        assert re.search(r"backend prov_aliyun\n    server mock 127\.0\.0\.1:8001\n", cfg), cfg
        # 2.6 needs literal statuses: every status the agent answers
        for st in (200, 400, 401, 403, 404, 405, 413, 429, 500, 503):
            assert re.search(r"http-request return status %d content-type application/json "
                             r"lf-string \"%%\[var\(txn\.tg\.body\)\]\"" % st, cfg), st
        assert re.search(r"return status 429 .*hdr Retry-After \"%\[var\(txn\.tg\.retry_after\)\]\" "
                         r"hdr X-TokenRateLimit-Reset", cfg)
        # rendering again replaces the files
        render(env, EXAMPLE, out)
        haproxy_check(out)


@case
def every_good_config_renders_and_passes():
    names = sorted(n for n in os.listdir(CONFIGS) if n.startswith("good-") and n.endswith(".yaml"))
    assert names, "no tests/configs/good-*.yaml"
    with H.Env("render-good") as env:
        pem = self_signed_pem(env)
        for n in names:
            text = open(os.path.join(CONFIGS, n)).read()
            # the example paths of good-full.yaml, made real for haproxy -c
            text = text.replace("/etc/tollgate/gateway.pem", pem)
            text = text.replace("/run/tollgate/", env.path("run") + "/")
            text = text.replace("/var/lib/tollgate", env.path("state"))
            y = env.write(n, text)
            out = env.path("out-" + n[:-5])
            render(env, y, out)
            unresolved = haproxy_check(out)
            sys.stderr.write("%s: rendered, haproxy -c ok%s\n" % (
                n, " (offline: %s not resolved at start)" % ", ".join(unresolved)
                if unresolved else ", no warning"))


FULL = """
haproxy: { listen: "127.0.0.1:18999", failure_status: 502, bufsize: 131072 }
agent: { listen: ":19001", http: "0.0.0.0:19002", settle: "127.0.0.1:19003" }
providers:
  - { name: openai, type: openai, api_keys: [k1] }
  - { name: az, type: azure, base_url: "https://x.openai.azure.com", api_keys: [k2] }
  - { name: local, type: openai-compatible, base_url: "http://10.1.2.3:8000/v1" }
  - { name: mocky, type: mock }
consumers: [ { name: a, credential: ka } ]
key_auth: { keys: [x-api-key, api-key], in_header: true, in_query: true }
routes:
  - name: r1
    provider: openai
    models: ["gpt-*"]
    plugins:
      ai-token-ratelimit:
        rule_name: r1
        rejected_code: 503
        global_threshold: { token_per_minute: 100 }
  - name: r2
    provider: mocky
    plugins:
      ai-token-ratelimit:
        rule_name: r2
        rejected_code: 418
        global_threshold: { token_per_minute: 100 }
"""


@case
def backends_statuses_and_credentials():
    with H.Env("render-full") as env:
        y = env.write("full.yaml", FULL)
        out = env.path("out")
        render(env, y, out)
        haproxy_check(out)
        cfg = read(out, "haproxy.cfg")
        spoe = read(out, "spoe.conf")
        # https provider: verified TLS, SNI and Host, resolved at start and after
        assert re.search(r"backend prov_openai\n    http-request set-header Host api\.openai\.com\n"
                         r"    server openai api\.openai\.com:443 ssl verify required "
                         r"ca-file @system-ca sni str\(api\.openai\.com\) resolvers tollgate_dns "
                         r"init-addr libc,none\n", cfg), cfg
        assert "resolvers tollgate_dns\n    parse-resolv-conf" in cfg
        # plain http to an IP with a port: no TLS, no resolver, Host with the port
        assert re.search(r"backend prov_local\n    http-request set-header Host 10\.1\.2\.3:8000\n"
                         r"    server local 10\.1\.2\.3:8000\n", cfg), cfg
        # the backend adds no path: the agent's txn.tg.path is the full path
        assert "set-path \"%[var(txn.tg.path)]\"" in cfg
        assert not re.search(r"backend prov_\w+\n(    .*\n)*    http-request set-path", cfg)
        # wildcard listeners become loopback targets
        assert "server mock 127.0.0.1:19002" in cfg
        assert "server agent 127.0.0.1:19001 check" in cfg
        # failure policy status
        assert re.search(r"http-request return status 502 content-type application/json string "
                         r"\"\{\\\"error\\\":\{.*gateway_unavailable.*\" if !\{ var\(txn\.tg\.decision\) "
                         r"-m str allow deny admin \}", cfg), cfg
        # rejected codes: with the rate-limit headers
        for code in (429, 503, 418):
            assert re.search(r"return status %d content-type application/json lf-string "
                             r"\"%%\[var\(txn\.tg\.body\)\]\" hdr Retry-After" % code, cfg), code
        assert not re.search(r"return status 401 .*Retry-After", cfg)
        # credentials: every key header, authorization, x-mse-consumer, query params
        for h in ("x-api-key", "api-key", "authorization", "x-mse-consumer"):
            assert "http-request del-header %s\n" % h in cfg, h
        assert cfg.index("del-header api-key") < cfg.index("set-header api-key")
        assert "regsub(&x-api-key=[^&]*,,g) if { urlp(x-api-key) -m found }" in cfg
        assert "Authorization \"Bearer %[var(txn.tg.pkey)]\"" in cfg
        assert "set-header x-mse-consumer \"%[var(txn.tg.consumer)]\"" in cfg
        # sizes follow bufsize: 131072 - 1024 - 8192
        assert "setenv TOLLGATE_BUFSIZE 131072\n" in cfg and "GLIBC_TUNABLES}" not in cfg
        assert "setenv TOLLGATE_MAX_BODY 121856\n" in cfg
        assert 'tune.bufsize "${TOLLGATE_BUFSIZE}"' in cfg
        lim = 'gt "${TOLLGATE_MAX_BODY}" }'
        assert lim in cfg and lim in spoe
        assert 'acl tg_full var(txn.tollgate_blen) -m int ge "${TOLLGATE_MAX_BODY}"' in cfg
        # answers are rewritten only after wait-for-body: 3.4 defragments a
        # rewritten message there, copying the whole (4 MiB) buffer
        assert (cfg.index("http-response wait-for-body")
                < cfg.index("http-response set-header x-ratelimit-limit-tokens"))
        # secrets never rendered
        for secret in ("k1", "k2", "ka"):
            assert not re.search(r"\b%s\b" % secret, cfg + spoe), secret


@case
def errors_are_reported_and_nothing_half_written():
    with H.Env("render-err") as env:
        y = env.write("bad.yaml", FULL.replace("name: local,", "name: \"lo cal\","))
        out = env.path("out-bad")
        r = render(env, y, out, check=False)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "providers[2].name" in r.stderr and "lo cal" in r.stderr, r.stderr
        assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)
        # a failed render over a good one leaves the good files as they were,
        # all three, and no temporary file
        good = env.path("out-good")
        render(env, env.write("full.yaml", FULL), good)
        names = sorted(os.listdir(good))
        assert names == ["haproxy.cfg", "spoe.conf", "tollgate.lua"], names
        before = {n: open(os.path.join(good, n), "rb").read() for n in names}
        r = render(env, y, good, check=False)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert sorted(os.listdir(good)) == names, os.listdir(good)
        for n in names:
            assert open(os.path.join(good, n), "rb").read() == before[n], "%s changed" % n
        # an output path that cannot be a directory
        blocker = env.write("file", "x")
        r = render(env, env.path("full.yaml"), os.path.join(blocker, "sub"), check=False)
        assert r.returncode == 1 and "file/sub" in r.stderr, (r.returncode, r.stderr)
        # a mock provider needs agent.http
        y = env.write("nohttp.yaml", FULL.replace('http: "0.0.0.0:19002", ', 'http: "", '))
        r = render(env, y, env.path("out-nohttp"), check=False)
        assert r.returncode == 1 and "agent.http" in r.stderr, r.stderr
        assert not os.path.exists(env.path("out-nohttp")) or \
            os.listdir(env.path("out-nohttp")) == [], os.listdir(env.path("out-nohttp"))


# --------------------------------------------------------------------------
# The example, running

def example_stack(env):
    ports = {k: H.free_port() for k in ("fe", "spop", "http", "settle")}
    y = env.write("token-control.yaml", open(EXAMPLE).read())
    envvars = {"TOLLGATE_LISTEN": "127.0.0.1:%d" % ports["fe"],
               "TOLLGATE_AGENT_LISTEN": "127.0.0.1:%d" % ports["spop"],
               "TOLLGATE_SETTLE": "127.0.0.1:%d" % ports["settle"],
               "TOLLGATE_HTTP": "127.0.0.1:%d" % ports["http"],
               "TOLLGATE_STATE_DIR": env.path("state")}
    os.makedirs(env.path("state"), exist_ok=True)
    out = env.path("rendered")
    r = subprocess.run([H.agent_binary(), "haproxy-config", "--config", y, "--out", out],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, **envvars))
    assert r.returncode == 0, r.stderr
    haproxy_check(out)
    agent = env.start("agent", [H.agent_binary(), "--config", y], cwd=H.REPO, env=envvars,
                      wait_tcp=[ports["spop"], ports["http"]])
    hap = env.start("haproxy", [H.HAPROXY, "-f", os.path.join(out, "haproxy.cfg"), "-db"],
                    cwd=out, wait_tcp=ports["fe"])
    return ports, agent, hap


def curl(port, path, *args):
    return H.curl_request("http://127.0.0.1:%d%s" % (port, path), *args)


def err_json(body):
    obj = json.loads(body)
    assert set(obj["error"]) >= {"message", "type", "code"}, obj
    return obj["error"]


@case
def example_runs_the_seed_walkthrough():
    with H.Env("render-run") as env:
        ports, agent, hap = example_stack(env)
        fe = ports["fe"]
        admin, user1 = "x-api-key: admin-key-123", "x-api-key: user1-key-123"

        # verdicts flow once the SPOP check marks the agent up
        H.wait_for(lambda: curl(fe, "/v1/chat/completions", "-d", "{}")[0] != 503, 10, 0.1,
                   "a verdict from the agent")
        st, h, body = curl(fe, "/v1/chat/completions/quota/refresh", "-H", admin,
                           "-d", "consumer=aliyun-user1&quota=100000")
        assert (st, body) == (200, b"refresh quota successful"), (st, body)
        st, h, body = curl(fe, "/v1/chat/completions/quota?consumer=aliyun-user1", "-H", admin)
        assert st == 200 and json.loads(body) == {"consumer": "aliyun-user1", "quota": 100000}
        assert h.get("content-type", "").startswith("application/json"), dict(h)
        st, h, body = curl(fe, "/v1/chat/completions/quota?consumer=aliyun-user1", "-H", user1)
        assert st == 403, (st, body)
        err_json(body)

        chat = json.dumps({"model": "qwen-turbo",
                           "messages": [{"role": "user", "content": "Who are you?"}]})
        st, h, body = curl(fe, "/v1/chat/completions", "-H", user1,
                           "-H", "content-type: application/json", "-d", chat)
        assert st == 200, (st, body)
        assert json.loads(body)["choices"][0]["message"]["content"], body
        # what the provider saw (the mock echoes it): the gateway's credential,
        # the consumer, never the client's key
        assert h.get("x-mock-auth") == "bearer" and h.get("x-mock-saw-api-key") == "no", dict(h)
        assert h.get("x-mock-consumer") == "aliyun-user1", dict(h)
        assert h.get("x-mock-path") == "/mock/v1/chat/completions", dict(h)
        assert h.get("x-ratelimit-limit-tokens") == "5", dict(h)
        assert h.get("x-ratelimit-remaining-tokens") is not None, dict(h)

        # 5 tokens per minute: the next one within the minute is refused
        st, h, body = curl(fe, "/v1/chat/completions", "-H", user1, "-d", chat)
        assert st == 429, (st, body)
        e = err_json(body)
        assert int(h.get("retry-after")) > 0 and int(h.get("x-tokenratelimit-reset")) > 0, dict(h)
        assert h.get("content-type", "").startswith("application/json"), dict(h)
        sys.stderr.write("429: Retry-After %s, message %r\n" % (h.get("retry-after"),
                                                               e["message"]))

        # key auth
        st, h, body = curl(fe, "/v1/chat/completions", "-d", chat)
        assert st == 401, (st, body)
        err_json(body)
        st, h, body = curl(fe, "/v1/chat/completions", "-H", "x-api-key: wrong", "-d", chat)
        assert st == 403, (st, body)
        err_json(body)

        # streaming through the mock, another consumer (its own bucket)
        st, h, body = curl(fe, "/v1/chat/completions/quota/refresh", "-H", admin,
                           "-d", "consumer=aliyun-user2&quota=100000")
        assert st == 200
        sse = json.dumps({"model": "qwen-turbo", "stream": True,
                          "messages": [{"role": "user", "content": "Stream, please"}]})
        st, h, body = curl(fe, "/v1/chat/completions", "-N", "-H", "x-api-key: user2-key-123",
                           "-d", sse)
        assert st == 200 and h.get("content-type", "").startswith("text/event-stream"), (st, dict(h))
        events = H.parse_sse(body)
        assert events and events[-1][1] == "[DONE]", body[-300:]
        # the gateway added include_usage on the client's behalf: the usage-only
        # event is hidden from the client
        assert not any('"usage"' in d and '"choices":[]' in d.replace(" ", "")
                       for _, d in events), body[-500:]

        # a body above haproxy.max_body (4 MiB by default): 413, OpenAI-shaped,
        # naming the limit
        big = json.dumps({"model": "qwen-turbo",
                          "messages": [{"role": "user", "content": "x" * (4 << 20)}]})
        p = env.write("big.json", big)
        st, h, body = curl(fe, "/v1/chat/completions", "-H", user1, "--data-binary", "@" + p)
        assert st == 413 and err_json(body)["code"] == "request_too_large", (st, body)
        assert "4194304 bytes" in err_json(body)["message"], body

        # the agent down: the failure policy, never a pass
        agent.stop()
        st, h, body = curl(fe, "/v1/chat/completions", "-H", user1, "-d", chat)
        assert st == 503 and err_json(body)["code"] == "gateway_unavailable", (st, body)
        assert hap.alive(), hap.tail()


def host_provider_config(base_url):
    return {"providers": [{"name": "up", "type": "openai-compatible", "base_url": base_url,
                           "api_keys": ["pk-host"]}],
            "consumers": [{"name": "alice", "credential": "alice-key"}],
            "routes": [{"name": "r", "provider": "up", "models": ["m-*"],
                        "auth": {"enabled": True, "allow": ["alice"]}}]}


@case
def provider_by_host_name_and_verified_tls():
    body = {"model": "m-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    # a host name (resolved by libc at start: /etc/hosts), a base path
    with H.Env("render-host") as env:
        up = env.mock_upstream()
        gw = G.start_gateway(env, host_provider_config("http://localhost:%d/base/v1" % up.port))
        st, h, data = gw.post("/v1/chat/completions", body, {"x-api-key": "alice-key"})
        assert st == 200, (st, data[:300])
        rec = up.requests()[-1]
        assert rec["path"] == "/base/v1/chat/completions", rec["path"]
        assert rec["headers"]["host"] == "localhost:%d" % up.port, rec["headers"]
        assert rec["headers"]["authorization"] == "Bearer pk-host", rec["headers"]
    # https: the certificate is verified against the system CAs, with SNI --
    # a self-signed upstream is refused, never spoken to in clear
    with H.Env("render-tls") as env:
        pem = self_signed_pem(env)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        seen = {"sni": [], "requests": 0}
        ctx.sni_callback = lambda sock, name, c: seen["sni"].append(name)
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        port = srv.getsockname()[1]

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                try:
                    t = ctx.wrap_socket(c, server_side=True)
                    if t.recv(1):
                        seen["requests"] += 1
                    t.close()
                except (ssl.SSLError, OSError):
                    c.close()
        threading.Thread(target=serve, daemon=True).start()
        try:
            gw = G.start_gateway(env, host_provider_config("https://localhost:%d/v1" % port))
            cfg = open(os.path.join(gw.out_dir, "haproxy.cfg")).read()
            assert "ssl verify required ca-file @system-ca sni str(localhost)" in cfg
            st, h, data = gw.post("/v1/chat/completions", body, {"x-api-key": "alice-key"})
            assert st in (502, 503), (st, data[:300])
            assert seen["sni"] and set(seen["sni"]) == {"localhost"}, seen
            assert seen["requests"] == 0, "a request went over an unverified TLS connection"
        finally:
            srv.close()


if __name__ == "__main__":
    main()
