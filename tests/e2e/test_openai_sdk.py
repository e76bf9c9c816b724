"""test_openai_sdk.py -- the official OpenAI Node SDK through the gateway.

The gateway (tests/e2e/gateway.py: rendered configuration, real HAProxy 2.6,
the agent) fronts the recording mock upstream. tests/e2e/node/sdk_test.mjs
uses the `openai` package pinned by tests/e2e/node/package-lock.json with
the consumer key as `apiKey` and the gateway's /v1 as `baseURL`; its per-case
lines ("ok NAME" / "not ok NAME: reason") become PASS:/FAIL: sdk_NAME here.
Nothing is skipped: without node_modules this runs `npm ci --no-audit
--no-fund` itself and every case FAILS if that is impossible.

What it proves: plain and streamed chat (stream: true with and without
stream_options; the usage chunk appears only when asked for), the Responses
API and embeddings work with the SDK unchanged, and so do prompts of 1 MiB
and (streamed) 4 MiB with the default configuration; an unknown key and a
consumer outside the route raise PermissionDeniedError (403), a request
without a key AuthenticationError (401) (a custom fetch strips the SDK's
Authorization), two different keys 401, an unknown model NotFoundError
(404); and every token the SDK's calls cost upstream is metered exactly.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
from tcase import case as _case, main  # noqa: E402

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
SCRIPT = os.path.join(NODE_DIR, "sdk_test.mjs")
GOOD, OTHER, UNKNOWN = "sdk-user-key-1", "sdk-other-key-2", "sdk-unknown-key-3"

# The cases sdk_test.mjs must report; a missing line is a failure.
SDK_CASES = [
    "chat_plain", "chat_stream", "chat_stream_include_usage", "chat_stream_include_usage_false",
    "responses_plain", "embeddings", "unknown_key_permission_denied",
    "unknown_key_stream_permission_denied", "not_allowed_consumer_permission_denied",
    "no_key_authentication_error", "two_keys_authentication_error", "unknown_model_not_found",
    "models_list", "models_retrieve", "chat_prompt_1mib", "chat_stream_prompt_4mib",
]


def config(up_port):
    return G.config(
        G.provider("openai-up", up_port, ["sk-provider-sdk"]),
        {"sdk-user": GOOD, "sdk-other": OTHER},
        [{"name": "sdk", "provider": "openai-up", "models": ["qwen-*", "qwen-max"],
          "auth": {"enabled": True, "allow": ["sdk-user"]}},
         {"name": "other", "provider": "openai-up", "models": ["other-*"],
          "auth": {"enabled": True, "allow": ["sdk-other"]}}],
        key_headers=("x-api-key", "authorization"))


class Ctx:
    pass


FAILED = []


def npm_ready():
    """node_modules/openai present, else `npm ci`; returns an error text or None."""
    if os.path.isfile(os.path.join(NODE_DIR, "node_modules", "openai", "package.json")):
        return None
    if not shutil.which("npm") or not shutil.which("node"):
        return "node/npm not installed"
    try:
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "npm ci timed out"
    if r.returncode != 0:
        return "npm ci failed (%d): %s%s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return None


def setup():
    c = Ctx()
    c.results, c.error, c.output = {}, None, ""
    c.env = H.Env("openai-sdk")
    c.error = npm_ready()
    if c.error:
        return c
    try:
        c.up = c.env.mock_upstream()
        c.gw = G.start_gateway(c.env, config(c.up.port))
        base = "http://127.0.0.1:%d/v1" % c.gw.port
        r = subprocess.run(["node", SCRIPT, base, GOOD, UNKNOWN, OTHER], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        c.output = r.stdout + r.stderr
        for line in r.stdout.split("\n"):
            if line.startswith("ok "):
                c.results[line[3:].strip()] = None
            elif line.startswith("not ok "):
                name, _, why = line[7:].partition(": ")
                c.results[name.strip()] = why or "failed"
        if "done %d" % len(SDK_CASES) not in r.stdout:
            c.error = "sdk_test.mjs did not finish its %d cases (status %d):\n%s" % (
                len(SDK_CASES), r.returncode, c.output[-3000:])
    except Exception as e:  # noqa: BLE001 -- every case reports it
        c.error = "gateway or node failed: %r" % (e,)
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED) or bool(c.error))


def _sdk_case(name):
    def run(c):
        try:
            assert name in c.results, "no result for %s: %s" % (name, c.error or c.output[-2000:])
            assert c.results[name] is None, "%s: %s" % (name, c.results[name])
        except BaseException:
            FAILED.append(name)
            raise
    run.__name__ = "sdk_" + name
    return run


for _n in SDK_CASES:
    _case(_sdk_case(_n))


@_case
def sdk_package_lock_pins_openai(c):
    import json
    lock = json.load(open(os.path.join(NODE_DIR, "package-lock.json")))
    pkg = json.load(open(os.path.join(NODE_DIR, "package.json")))
    want = pkg["dependencies"]["openai"]
    got = lock["packages"]["node_modules/openai"]["version"]
    assert got == want, (got, want)
    assert not c.error or "npm" not in c.error, c.error


@_case
def sdk_calls_metered_exactly(c):
    """Every request the SDK's calls made upstream is metered exactly."""
    try:
        assert not c.error, c.error
        recs = c.up.requests()
        assert recs, "the upstream saw nothing"
        want_in = sum(G.upstream_usage(r)[0] for r in recs)
        want_out = sum(G.upstream_usage(r)[1] for r in recs)
        for r in recs:
            assert r["headers"].get("authorization") == "Bearer sk-provider-sdk", r["headers"]
            assert r["headers"].get("x-mse-consumer") == "sdk-user", r["headers"]
            for k, v in r["header_list"]:
                assert GOOD not in v and OTHER not in v, (k, v)
        c.gw.wait_tokens((want_in, want_out), consumer="sdk-user")
        assert c.gw.tokens(consumer="sdk-other") == (0, 0)
        # successful SDK calls: chat x6 (2 plain, 4 streamed), responses, embeddings
        assert len(recs) == 8, [(r["path"], r["body"][:80]) for r in recs]
    except BaseException:
        FAILED.append("sdk_calls_metered_exactly")
        raise


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
