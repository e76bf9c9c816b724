"""test_large_bodies.py -- prompts of megabytes, with the default configuration.

A gateway rendered from a YAML that says nothing about sizes (real HAProxy,
the agent on its embedded store, ai-quota on the route) in front of the
recording mock upstream, whose accounting is deterministic (prompt =
ceil(request bytes / 4), completion = min(10, max_tokens)); curl is the
client. Bodies are built to an exact byte size.

What it proves:
  - the default ceiling is 4 MiB (haproxy.max_body), and HAProxy runs with
    a tune.bufsize that holds a body that size with its headers (and 2.8+
    keeps such buffers in its thread caches: tune.memory.hot-size);
  - HAProxy 2.6 started without the glibc setting of haproxy/README.md
    runs the default at 117760 bytes, and its 413 says why; 2.8+ keeps
    4 MiB without it;
  - prompts of 60 KB, 200 KB, 1 MiB and just under 4 MiB, with the model
    first and with it last (the OpenAI SDKs write `messages` first), are
    answered 200, reach the upstream byte for byte, and are metered and
    charged to the quota exactly;
  - a streamed 4 MiB prompt without stream_options is rewritten (the
    upstream sees include_usage; content-length follows), the client sees no
    usage event, and the tokens are exact;
  - a body of exactly max_body bytes passes, one byte more is answered 413
    in OpenAI's format naming the limit and never reaches the upstream; the
    same for a chunked body with no content-length;
  - the built-in mock provider (the demo's upstream) takes a 4 MiB prompt;
  - a megabyte that is not JSON is a 400 invalid_json, not a hang;
  - haproxy.max_body set lower moves the ceiling to it;
  - the largest buffer the YAML accepts (8323072) passes `haproxy -c`: from
    8 MiB on, 2.6 to 3.0 crash building the agent's health check.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
from tcase import FAILED, case, main  # noqa: E402

KEY, KEY_ADMIN = "large-user-key", "large-admin-key"
CHAT = "/v1/chat/completions"
MIB = 1 << 20
MAX_BODY = 4 * MIB          # the default haproxy.max_body
QUOTA0 = 10 ** 9


def config(up_port, haproxy=None):
    return G.config(
        [G.provider("up", up_port, ["pk-large"]), {"name": "builtin", "type": "mock"}],
        {"large-user": KEY, "large-admin": KEY_ADMIN},
        [{"name": "large", "provider": "up", "models": ["big-*"],
          "auth": {"enabled": True, "allow": ["large-user", "large-admin"]},
          "plugins": {"ai-quota": G.quota("large_quota:", "large-admin")}},
         {"name": "builtin", "provider": "builtin", "models": ["mock-*"],
          "auth": {"enabled": True, "allow": ["large-user"]}}],
        haproxy=dict(haproxy or {}))


class Ctx:
    pass


def setup():
    c = Ctx()
    c.env = H.Env("large-bodies")
    try:
        c.up = c.env.mock_upstream()
        c.gw = G.start_gateway(c.env, config(c.up.port))
        c.gw.set_quota("large-user", QUOTA0)
    except BaseException:
        c.env.close(failed=True)
        raise
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED))


def body_of_size(size, model, model_last=False, **extra):
    """A chat body of exactly `size` bytes: one user message padded with text."""
    def build(n):
        msgs = [{"role": "user", "content": "x" * n}]
        pairs = [("messages", msgs)] + sorted(extra.items())
        pairs = pairs + [("model", model)] if model_last else [("model", model)] + pairs
        return json.dumps(dict(pairs), separators=(",", ":")).encode()
    skeleton = len(build(0))
    assert size >= skeleton, (size, skeleton)
    b = build(size - skeleton)
    assert len(b) == size, (len(b), size)
    return b


def curl(c, port, body, headers=None, chunked=False, stream=False, path=CHAT):
    """POST body with curl; (status, response bytes)."""
    name = "body-%d-%d" % (len(body), time.monotonic_ns())
    src = c.env.write(name, body.decode("latin-1"))
    out = src + ".out"
    argv = ["curl", "-sS", "-o", out, "-w", "%{http_code}", "--max-time", "60",
            "-H", "content-type: application/json", "--data-binary", "@" + src]
    if chunked:
        argv += ["-H", "transfer-encoding: chunked"]
    if stream:
        argv += ["-N"]
    for k, v in (headers or {}).items():
        argv += ["-H", "%s: %s" % (k, v)]
    argv.append("http://127.0.0.1:%d%s" % (port, path))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, "curl %d: %s" % (r.returncode, r.stderr)
    data = open(out, "rb").read()
    os.unlink(src)
    os.unlink(out)
    return int(r.stdout.strip() or 0), data


class Before:
    """Counters before a request, to check what it added."""

    def __init__(self, c, model):
        self.c, self.model = c, model
        self.tokens = c.gw.tokens(model=model, consumer="large-user")
        self.quota = c.gw.quota("large-user")
        self.nrec = len(c.up.requests())

    def records(self):
        return self.c.up.requests()[self.nrec:]

    def expect(self, tin, tout):
        gw = self.c.gw
        gw.wait_tokens((self.tokens[0] + tin, self.tokens[1] + tout),
                       model=self.model, consumer="large-user")
        H.wait_for(lambda: gw.quota("large-user") == self.quota - tin - tout, 5.0, 0.05,
                   "quota falls by %d" % (tin + tout))


def check_one_passed(c, before, body, data, status):
    assert status == 200, (status, data[:300])
    recs = before.records()
    assert len(recs) == 1, "the upstream saw %d requests" % len(recs)
    rec = recs[0]
    assert rec["body_len"] == len(body), (rec["body_len"], len(body))
    assert rec["body"] == body.decode(), "the upstream saw other bytes"
    tin, tout = G.upstream_usage(rec)
    usage = json.loads(data)["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (tin, tout), usage
    before.expect(tin, tout)


@case
def default_ceiling_is_4mib(c):
    text = open(os.path.join(c.gw.out_dir, "haproxy.cfg")).read()
    assert G.haproxy_sizes(c.gw) == (MAX_BODY, MAX_BODY + 1024 + 8192), G.haproxy_sizes(c.gw)
    assert '    setenv TOLLGATE_MAX_BODY %d\n' % MAX_BODY in text
    assert 'if { req.hdr_val(content-length) gt "${TOLLGATE_MAX_BODY}" }' in text
    # 2.8+: 64 such buffers a thread stay cached (haproxy/README.md)
    assert ".if version_atleast(2.8)\n    tune.memory.hot-size %d\n.endif" % (
        64 * (MAX_BODY + 9216)) in text


def _sizes_case(size, model_last):
    def run(c):
        model = "big-%d-%s" % (size, "last" if model_last else "first")
        body = body_of_size(size, model, model_last, max_tokens=5)
        b = Before(c, model)
        st, data = curl(c, c.gw.port, body, {"x-api-key": KEY})
        check_one_passed(c, b, body, data, st)
    run.__name__ = "prompt_%s_model_%s" % (
        {60000: "60k", 200000: "200k", MIB: "1mib", MAX_BODY - 100: "4mib"}[size],
        "last" if model_last else "first")
    return run


for _size in (60000, 200000, MIB, MAX_BODY - 100):
    for _last in (False, True):
        case(_sizes_case(_size, _last))


@case
def stream_4mib_rewritten_and_exact(c):
    model = "big-stream"
    body = body_of_size(MAX_BODY - 100, model, True, max_tokens=4, stream=True)
    b = Before(c, model)
    st, data = curl(c, c.gw.port, body, {"x-api-key": KEY}, stream=True)
    assert st == 200, (st, data[:300])
    recs = b.records()
    assert len(recs) == 1, len(recs)
    sent = json.loads(recs[0]["body"])
    assert sent["stream_options"] == {"include_usage": True}, sent.get("stream_options")
    assert sent["messages"] == json.loads(body)["messages"]
    assert recs[0]["body_len"] == len(body) + len(',"stream_options":{"include_usage":true}')
    events = [l for l in data.split(b"\n") if l.startswith(b"data: ")]
    assert events and events[-1].strip() == b"data: [DONE]", data[-300:]
    for ev in events[:-1]:
        obj = json.loads(ev[6:])
        assert "usage" not in obj or obj["usage"] is None, "a usage event reached the client"
    b.expect(*G.upstream_usage(recs[0]))


@case
def ceiling_exact_and_one_byte_over(c):
    b = Before(c, "big-edge")
    body = body_of_size(MAX_BODY, "big-edge", max_tokens=1)
    st, data = curl(c, c.gw.port, body, {"x-api-key": KEY})
    check_one_passed(c, b, body, data, st)
    b = Before(c, "big-edge")
    st, data = curl(c, c.gw.port, body_of_size(MAX_BODY + 1, "big-edge", max_tokens=1),
                    {"x-api-key": KEY})
    assert st == 413, (st, data[:300])
    err = G.error_json(data, "413")
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error", err
    assert "%d bytes" % MAX_BODY in err["message"], err["message"]
    assert not b.records(), "a body over the ceiling reached the upstream"


@case
def ceiling_chunked(c):
    b = Before(c, "big-chunked")
    body = body_of_size(MIB, "big-chunked", max_tokens=1)
    st, data = curl(c, c.gw.port, body, {"x-api-key": KEY}, chunked=True)
    check_one_passed(c, b, body, data, st)
    b = Before(c, "big-chunked")
    st, data = curl(c, c.gw.port, body_of_size(MAX_BODY + 1, "big-chunked", max_tokens=1),
                    {"x-api-key": KEY}, chunked=True)
    assert st == 413, (st, data[:300])
    assert G.error_json(data, "413")["code"] == "request_too_large"
    assert not b.records(), "a chunked body over the ceiling reached the upstream"


@case
def builtin_mock_takes_4mib(c):
    """The demo's upstream: the agent's own HTTP server reads the prompt."""
    before = c.gw.tokens(model="mock-large", consumer="large-user")
    st, data = curl(c, c.gw.port, body_of_size(MAX_BODY - 100, "mock-large", True,
                                               max_tokens=3), {"x-api-key": KEY})
    assert st == 200, (st, data[:300])
    usage = json.loads(data)["usage"]
    assert usage["prompt_tokens"] > MAX_BODY // 8, usage
    c.gw.wait_tokens((before[0] + usage["prompt_tokens"],
                      before[1] + usage["completion_tokens"]),
                     model="mock-large", consumer="large-user")


@case
def megabyte_not_json_is_400(c):
    t0 = time.monotonic()
    st, data = curl(c, c.gw.port, b"{\"model\":\"big-x\",\"messages\":[" + b"1," * (MIB // 2),
                    {"x-api-key": KEY})
    assert st == 400, (st, data[:300])
    assert G.error_json(data, "400")["code"] == "invalid_json"
    assert time.monotonic() - t0 < 5


@case
def max_body_setting_moves_the_ceiling(c):
    gw = G.start_gateway(c.env, config(c.up.port, {"max_body": 100000}), name="small")
    gw.set_quota("large-user", QUOTA0)
    nrec = len(c.up.requests())
    st, data = curl(c, gw.port, body_of_size(100000, "big-small", max_tokens=1),
                    {"x-api-key": KEY})
    assert st == 200, (st, data[:300])
    st, data = curl(c, gw.port, body_of_size(100001, "big-small", max_tokens=1),
                    {"x-api-key": KEY})
    assert st == 413, (st, data[:300])
    assert "100000 bytes" in G.error_json(data, "413")["message"]
    assert len(c.up.requests()) == nrec + 1


@case
def default_without_glibc_setting(c):
    """haproxy/README.md: 2.6 needs GLIBC_TUNABLES for cheap 4 MiB buffers;
    without it the rendered default keeps a buffer under 128 KiB there."""
    small = 126976 - 9216
    gw = G.start_gateway(c.env, config(c.up.port), name="noglibc",
                         haproxy_env={"GLIBC_TUNABLES": ""})
    gw.set_quota("large-user", QUOTA0)
    if H.haproxy_version()[:2] != (2, 6):
        assert G.haproxy_sizes(gw) == (MAX_BODY, MAX_BODY + 9216), G.haproxy_sizes(gw)
        st, data = curl(c, gw.port, body_of_size(MIB, "big-noglibc", max_tokens=1),
                        {"x-api-key": KEY})
        assert st == 200, (st, data[:300])
        return
    assert G.haproxy_sizes(gw) == (small, 126976), G.haproxy_sizes(gw)
    nrec = len(c.up.requests())
    st, data = curl(c, gw.port, body_of_size(small, "big-noglibc", max_tokens=1),
                    {"x-api-key": KEY})
    assert st == 200, (st, data[:300])
    st, data = curl(c, gw.port, body_of_size(small + 1, "big-noglibc", max_tokens=1),
                    {"x-api-key": KEY})
    assert st == 413, (st, data[:300])
    msg = G.error_json(data, "413")["message"]
    assert "%d bytes" % small in msg and "GLIBC_TUNABLES" in msg, msg
    assert len(c.up.requests()) == nrec + 1


@case
def largest_bufsize_passes_haproxy_check(c):
    cfg = G.fill_config(c.env, config(c.up.port, {"bufsize": 8323072}), "biggest")
    out = c.env.path("biggest-rendered")
    os.makedirs(out, exist_ok=True)
    G.render(c.env, cfg, out, "biggest")
    c.env.haproxy_check(os.path.join(out, "haproxy.cfg"))


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
