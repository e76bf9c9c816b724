"""test_gateway.py -- the gateway's front door on real HAProxy 2.6 + the agent.

One gateway for the module, started exactly as a user does (tests/e2e/
gateway.py: `tollgate haproxy-config` renders haproxy.cfg + spoe.conf +
tollgate.lua, then `tollgate --config` and `haproxy -f`), in front of the
recording mock upstream (tests/e2e/mock_upstream.py). The configuration is
the Higress walkthrough (three aliyun-* consumers, key auth, ai-quota with
its admin API) plus routes for Azure, a private route and an open one.

What it proves (exact statuses, OpenAI-shaped error bodies, and what the
upstream recorded -- usually: nothing):
  - key auth: no key 401; two different keys (x-api-key + Authorization
    Bearer) 401; unknown key 403; a consumer outside the route's allow list
    403; `Authorization: Bearer <consumer key>` (OpenAI SDK style) works;
    unknown model 404; the model from `x-higress-llm-model` when the body
    has none;
  - credential stripping: the upstream never sees the consumer's key (in
    x-api-key or Authorization) nor a client-sent x-mse-consumer; it sees
    `x-mse-consumer: <consumer>` set by the gateway and `Authorization:
    Bearer <provider key>` (two api_keys used in turn); Azure gets
    `api-key`, the deployment path (or the model's) and `api-version`;
    model_mapping rewrites the body's model;
  - the ai-quota admin API through HAProxy with the walkthrough's curl
    commands (query, refresh, delta; with and without x-higress-llm-model);
    a non-admin gets 403;
  - agent down: every request gets the configured failure status (503),
    never an unauthenticated pass (the upstream records nothing); the
    gateway recovers when the agent is back.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import gateway as G  # noqa: E402
from tcase import FAILED, case, main  # noqa: E402

ADMIN, USER1, USER2, OUTSIDER = "admin-key-123", "user1-key-123", "user2-key-123", "outsider-key-9"
CONSUMER_KEYS = (ADMIN, USER1, USER2, OUTSIDER)
PROVIDER_KEYS = ("pk-one", "pk-two")
CHAT = "/v1/chat/completions"


def config(up_port):
    allow = ["aliyun-admin", "aliyun-user1", "aliyun-user2"]
    return G.config(
        [G.provider("aliyun", up_port, PROVIDER_KEYS,
                    model_mapping={"gpt-mapped": "qwen-upstream"}),
         G.provider("az", up_port, ["az-key"], "azure", "", api_version="2024-10-21",
                    deployment="my-deploy"),
         G.provider("az2", up_port, ["az2-key"], "azure", "", api_version="2024-06-01")],
        {"aliyun-admin": ADMIN, "aliyun-user1": USER1, "aliyun-user2": USER2,
         "outsider": OUTSIDER},
        [{"name": "aliyun", "provider": "aliyun", "models": ["qwen-*", "gpt-mapped"],
          "auth": {"enabled": True, "allow": allow},
          "plugins": {"ai-quota": G.quota("chat_quota:", "aliyun-admin", timeout=2000)}},
         {"name": "azure", "provider": "az", "models": ["azure-*"],
          "auth": {"enabled": True, "allow": ["aliyun-user1"]}},
         {"name": "azure-model", "provider": "az2", "models": ["azm-*"],
          "auth": {"enabled": True, "allow": ["aliyun-user1"]}},
         {"name": "private", "provider": "aliyun", "models": ["private-*", "private-one"],
          "auth": {"enabled": True, "allow": ["outsider"]}},
         {"name": "open", "provider": "aliyun", "models": ["open-*", "open-exact"]},
         {"name": "clamp", "provider": "aliyun", "models": ["clamp-*"],
          "auth": {"enabled": True, "allow": ["aliyun-user2"]},
          "plugins": {"ai-token-ratelimit": dict(G.ratelimit("clamp_rule", token_per_minute=300),
                                                 clamp_max_tokens=True)}}],
        store={"failure_mode": "local"}, key_headers=("x-api-key", "authorization"))


class Ctx:
    pass




def setup():
    c = Ctx()
    c.env = H.Env("gateway")
    try:
        c.up = c.env.mock_upstream()
        c.gw = G.start_gateway(c.env, config(c.up.port))
        for who in ("aliyun-admin", "aliyun-user1", "aliyun-user2"):
            c.gw.set_quota(who, 1000000)
    except BaseException:
        c.env.close(failed=True)
        raise
    return c


def teardown(c):
    c.env.close(failed=bool(FAILED))


def chat_body(model="qwen-max", content="hello", **extra):
    b = {"messages": [{"role": "user", "content": content}]}
    if model is not None:
        b["model"] = model
    b.update(extra)
    return b


def new_records(c, before):
    return c.up.requests()[before:]


def expect_error(c, method, path, body, headers, code_status, where):
    """One request that must be refused with code_status and an OpenAI error
    body, and must not reach the upstream. Returns the error object."""
    n = len(c.up.requests())
    st, h, data = c.gw.request(method, path, body, headers)
    assert st == code_status, "%s: expected %d, got %d %r" % (where, code_status, st, data[:300])
    ctype = h.get("content-type") or ""
    assert ctype.startswith("application/json"), "%s: content-type %r" % (where, ctype)
    e = G.error_json(data, where)
    recs = new_records(c, n)
    assert not recs, "%s: the upstream saw %r" % (where, recs)
    return e


# ---------------------------------------------------------------- key auth

@case
def chat_with_x_api_key(c):
    st, h, data = c.gw.post(CHAT, chat_body(max_tokens=3), {"x-api-key": USER1})
    assert st == 200, (st, data[:300])
    assert (h.get("content-type") or "").startswith("application/json"), h.get("content-type")
    obj = json.loads(data)
    assert obj["object"] == "chat.completion", obj
    assert obj["choices"][0]["message"]["content"] == "tok tok tok", obj
    assert obj["usage"]["completion_tokens"] == 3, obj


@case
def no_key_is_401(c):
    e = expect_error(c, "POST", CHAT, chat_body(), {}, 401, "no key")
    assert "API key" in e["message"] or "key" in e["message"].lower(), e
    # a client-sent x-mse-consumer is not an identity
    expect_error(c, "POST", CHAT, chat_body(), {"x-mse-consumer": "aliyun-admin"}, 401,
                 "no key + x-mse-consumer")
    # an Authorization header that is not "Bearer <key>" carries no key
    expect_error(c, "POST", CHAT, chat_body(), {"Authorization": "Basic " + USER1}, 401,
                 "Authorization Basic")


@case
def two_different_keys_is_401(c):
    expect_error(c, "POST", CHAT, chat_body(),
                 {"x-api-key": USER1, "Authorization": "Bearer " + USER2}, 401,
                 "x-api-key + Authorization Bearer (two consumers)")
    expect_error(c, "POST", CHAT, chat_body(),
                 {"x-api-key": USER1, "Authorization": "Bearer sk-unknown"}, 401,
                 "x-api-key + Authorization Bearer (one unknown)")


@case
def unknown_key_is_403(c):
    expect_error(c, "POST", CHAT, chat_body(), {"x-api-key": "nobody-key"}, 403,
                 "unknown x-api-key")
    expect_error(c, "POST", CHAT, chat_body(), {"Authorization": "Bearer nobody-key"}, 403,
                 "unknown Bearer key")


@case
def consumer_not_allowed_is_403(c):
    expect_error(c, "POST", CHAT, chat_body(), {"x-api-key": OUTSIDER}, 403,
                 "outsider on the aliyun route")
    expect_error(c, "POST", CHAT, chat_body("private-1"), {"x-api-key": USER1}, 403,
                 "aliyun-user1 on the private route")
    expect_error(c, "POST", CHAT, chat_body("azure-gpt"), {"x-api-key": USER2}, 403,
                 "aliyun-user2 on the azure route")
    st, _, data = c.gw.post(CHAT, chat_body("private-1", max_tokens=1), {"x-api-key": OUTSIDER})
    assert st == 200, ("outsider on its own route", st, data[:300])


@case
def bearer_consumer_key_works(c):
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT, chat_body(max_tokens=2), {"Authorization": "Bearer " + USER2})
    assert st == 200, (st, data[:300])
    assert json.loads(data)["choices"][0]["message"]["content"] == "tok tok"
    recs = new_records(c, n)
    assert len(recs) == 1, recs
    assert recs[0]["headers"].get("x-mse-consumer") == "aliyun-user2", recs[0]["headers"]


@case
def unknown_model_is_404(c):
    e = expect_error(c, "POST", CHAT, chat_body("nope-7"), {"x-api-key": USER1}, 404,
                     "unknown model in the body")
    assert "nope-7" in e["message"], e
    expect_error(c, "POST", CHAT, chat_body(None), {"x-api-key": USER1,
                 "x-higress-llm-model": "nope-8"}, 404, "unknown model in x-higress-llm-model")



@case
def unusable_body_is_400_as_openai_says(c):
    e = expect_error(c, "POST", CHAT, chat_body(None), {"x-api-key": USER1}, 400,
                     "no model at all")
    assert e["type"] == "invalid_request_error" and e["code"] == "missing_model", e
    assert e["message"] == "you must provide a model parameter", e
    e = expect_error(c, "POST", CHAT, '{"model": "qwen-max", "messages": [',
                     {"x-api-key": USER1, "Content-Type": "application/json"}, 400,
                     "a body that is not JSON")
    assert e["type"] == "invalid_request_error" and e["code"] == "invalid_json", e
    assert e["message"].startswith("We could not parse the JSON body of your request."), e
    # the admin API on the same path still takes its form bodies
    st, _, data = c.gw.post(CHAT + "/quota/delta", "consumer=aliyun-user1&value=0",
                            {"x-api-key": ADMIN, "x-higress-llm-model": "qwen-max",
                             "Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200 and b"delta quota successful" in data, (st, data)


# ------------------------------------------------------------------ models

def models_of(c, headers):
    st, h, data = c.gw.get("/v1/models", headers)
    assert st == 200, (st, data[:300])
    assert (h.get("content-type") or "").startswith("application/json"), h.get("content-type")
    body = json.loads(data)
    assert body["object"] == "list", body
    for m in body["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int), m
    return {m["id"]: m["owned_by"] for m in body["data"]}


@case
def models_listed_for_the_caller(c):
    n = len(c.up.requests())
    # exact names of the routes the caller may use (globs are not listed),
    # and the client-side names of model_mapping
    assert models_of(c, {"x-api-key": USER1}) == {"gpt-mapped": "aliyun",
                                                  "open-exact": "aliyun"}
    assert models_of(c, {"Authorization": "Bearer " + OUTSIDER}) == {"private-one": "aliyun",
                                                                     "open-exact": "aliyun"}
    # no key: what needs none (the open route)
    assert models_of(c, {}) == {"open-exact": "aliyun"}
    expect_error(c, "GET", "/v1/models", None, {"x-api-key": "no-such-key"}, 403,
                 "an unknown key")
    expect_error(c, "GET", "/v1/models", None, {"x-api-key": USER1, "Authorization":
                                                "Bearer " + USER2}, 401, "two keys")
    assert len(c.up.requests()) == n, "a models call reached the upstream"


@case
def model_retrieved_as_it_would_be_routed(c):
    st, _, data = c.gw.get("/v1/models/qwen-max", {"x-api-key": USER1})
    assert st == 200, (st, data[:300])
    assert json.loads(data) == {"id": "qwen-max", "object": "model", "created": 0,
                                "owned_by": "aliyun"}, data
    st, _, data = c.gw.get("/v1/models/azure-4o", {"x-api-key": USER1})
    assert st == 200 and json.loads(data)["owned_by"] == "az", (st, data)
    e = expect_error(c, "GET", "/v1/models/qwen-max", None, {"x-api-key": OUTSIDER}, 404,
                     "a model of a route the caller may not use")
    assert e["code"] == "model_not_found" and "qwen-max" in e["message"], e
    expect_error(c, "GET", "/v1/models/nope-1", None, {"x-api-key": USER1}, 404,
                 "no route has it")


@case
def duplicate_key_is_400(c):
    # cJSON keeps the first "model", most providers the last: a body naming
    # a member twice could be routed and charged as one model, served as
    # another. It is refused, and the upstream never sees it.
    body = '{"model":"qwen-max","model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}'
    e = expect_error(c, "POST", CHAT, body, {"x-api-key": USER1,
                     "Content-Type": "application/json"}, 400, "duplicate model")
    assert e["code"] == "duplicate_key", e
    body = ('{"model":"qwen-max","stream":true,"stream_options":'
            '{"include_usage":false,"include_usage":true},"messages":[]}')
    expect_error(c, "POST", CHAT, body, {"x-api-key": USER1,
                 "Content-Type": "application/json"}, 400, "duplicate include_usage")


@case
def model_from_header(c):
    n = len(c.up.requests())
    body = chat_body(None, max_tokens=4)
    st, _, data = c.gw.post(CHAT, body, {"x-api-key": USER1, "x-higress-llm-model": "qwen-max"})
    assert st == 200, (st, data[:300])
    assert json.loads(data)["usage"]["completion_tokens"] == 4
    recs = new_records(c, n)
    assert len(recs) == 1, recs
    assert recs[0]["path"] == "/v1/chat/completions", recs[0]["path"]
    assert json.loads(recs[0]["body"]) == body, recs[0]["body"]
    # the header routes even to Azure: model from the header, deployment from the provider
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT, chat_body(None, max_tokens=1),
                            {"x-api-key": USER1, "x-higress-llm-model": "azure-gpt"})
    assert st == 200, (st, data[:300])
    assert new_records(c, n)[0]["path"] == "/openai/deployments/my-deploy/chat/completions"


# ---------------------------------------------------------------- credentials

def assert_no_consumer_secret(rec, where):
    for k, v in rec["header_list"]:
        for key in CONSUMER_KEYS:
            assert key not in v, "%s: upstream header %s carries a consumer key: %r" % (where, k, v)
    for key in CONSUMER_KEYS:
        assert key not in rec["body"], "%s: upstream body carries a consumer key" % where
        assert key not in rec["query"], "%s: upstream query carries a consumer key" % where
    names = [k.lower() for k, _ in rec["header_list"]]
    assert "x-api-key" not in names, "%s: upstream saw x-api-key: %r" % (where, rec["header_list"])


def mse_values(rec):
    return [v for k, v in rec["header_list"] if k.lower() == "x-mse-consumer"]


@case
def upstream_never_sees_consumer_credentials(c):
    n = len(c.up.requests())
    for hdrs in ({"x-api-key": USER1, "x-mse-consumer": "aliyun-admin"},
                 {"Authorization": "Bearer " + USER1, "X-Mse-Consumer": "aliyun-admin"},
                 {"x-api-key": USER1, "Authorization": "Bearer " + USER1}):
        st, _, data = c.gw.post(CHAT, chat_body(max_tokens=1), hdrs)
        assert st == 200, (hdrs, st, data[:300])
    recs = new_records(c, n)
    assert len(recs) == 3, recs
    for i, rec in enumerate(recs):
        where = "request %d" % i
        assert_no_consumer_secret(rec, where)
        assert mse_values(rec) == ["aliyun-user1"], (where, rec["header_list"])
        auth = [v for k, v in rec["header_list"] if k.lower() == "authorization"]
        assert len(auth) == 1 and auth[0] in ["Bearer " + k for k in PROVIDER_KEYS], \
            (where, auth)


@case
def provider_keys_used_in_turn(c):
    n = len(c.up.requests())
    for _ in range(4):
        st, _, data = c.gw.post(CHAT, chat_body(max_tokens=1), {"x-api-key": USER2})
        assert st == 200, (st, data[:300])
    auth = [r["headers"].get("authorization") for r in new_records(c, n)]
    assert len(auth) == 4, auth
    assert set(auth) == {"Bearer pk-one", "Bearer pk-two"}, auth
    assert auth[0] != auth[1] and auth[0] == auth[2] and auth[1] == auth[3], \
        "keys not used in turn: %r" % auth


@case
def azure_provider_rewrite(c):
    n = len(c.up.requests())
    body = chat_body("azure-gpt", max_tokens=2)
    st, _, data = c.gw.post(CHAT, body, {"x-api-key": USER1})
    assert st == 200, (st, data[:300])
    assert json.loads(data)["choices"][0]["message"]["content"] == "tok tok"
    recs = new_records(c, n)
    assert len(recs) == 1, recs
    r = recs[0]
    assert r["path"] == "/openai/deployments/my-deploy/chat/completions", r["path"]
    assert r["query"] == "api-version=2024-10-21", r["query"]
    assert r["headers"].get("api-key") == "az-key", r["headers"]
    assert "authorization" not in r["headers"], r["headers"]
    assert mse_values(r) == ["aliyun-user1"], r["header_list"]
    assert_no_consumer_secret(r, "azure")
    assert json.loads(r["body"]) == body, r["body"]
    # a client query string does not survive in place of api-version
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT + "?api-version=1999-01-01", chat_body("azure-gpt", max_tokens=1),
                            {"x-api-key": USER1})
    assert st == 200, (st, data[:300])
    assert new_records(c, n)[0]["args"].get("api-version") == ["2024-10-21"], new_records(c, n)


@case
def azure_deployment_from_model(c):
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT, chat_body("azm-4o", max_tokens=1),
                            {"Authorization": "Bearer " + USER1})
    assert st == 200, (st, data[:300])
    r = new_records(c, n)[0]
    assert r["path"] == "/openai/deployments/azm-4o/chat/completions", r["path"]
    assert r["query"] == "api-version=2024-06-01", r["query"]
    assert r["headers"].get("api-key") == "az2-key", r["headers"]
    assert "authorization" not in r["headers"], r["headers"]
    assert_no_consumer_secret(r, "azure by model")


@case
def model_mapping_rewrites_body(c):
    n = len(c.up.requests())
    body = chat_body("gpt-mapped", content="map me", max_tokens=2, temperature=0.5)
    st, _, data = c.gw.post(CHAT, body, {"x-api-key": USER1})
    assert st == 200, (st, data[:300])
    assert json.loads(data)["model"] == "qwen-upstream", data[:300]
    r = new_records(c, n)[0]
    got = json.loads(r["body"])
    want = dict(body, model="qwen-upstream")
    assert got == want, (got, want)
    assert r["body_len"] == len(r["body"].encode()), r
    if "content-length" in r["headers"]:
        assert int(r["headers"]["content-length"]) == r["body_len"], r["headers"]


@case
def clamp_max_tokens_lowers_the_cap(c):
    """clamp_max_tokens: a request asking for more output than the tightest
    limit still allows reaches the provider with max_tokens lowered to that
    budget (300 a minute minus the prompt estimate and what was used); one
    within budget is forwarded untouched; one without a cap gets one."""
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT, chat_body("clamp-1", max_tokens=5000), {"x-api-key": USER2})
    assert st == 200, (st, data[:300])
    first = json.loads(new_records(c, n)[0]["body"])["max_tokens"]
    assert 250 <= first < 300, first
    n = len(c.up.requests())
    body = chat_body("clamp-1", max_tokens=3)
    st, _, data = c.gw.post(CHAT, body, {"x-api-key": USER2})
    assert st == 200, (st, data[:300])
    assert json.loads(new_records(c, n)[0]["body"]) == body, "a request within budget was rewritten"
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT, chat_body("clamp-1"), {"x-api-key": USER2})
    assert st == 200, (st, data[:300])
    third = json.loads(new_records(c, n)[0]["body"]).get("max_tokens")
    assert third is not None and 1 <= third < first, (third, first)


@case
def open_route_drops_client_consumer_header(c):
    n = len(c.up.requests())
    st, _, data = c.gw.post(CHAT, chat_body("open-1", max_tokens=1),
                            {"x-mse-consumer": "aliyun-admin"})
    assert st == 200, (st, data[:300])
    r = new_records(c, n)[0]
    assert mse_values(r) == [], "client-sent x-mse-consumer reached the upstream: %r" % (
        r["header_list"],)


# ---------------------------------------------------------------- quota admin

def curl(c, *args):
    url = "http://127.0.0.1:%d%s" % (c.gw.port, args[0])
    return H.curl_request(url, *args[1:])


@case
def quota_admin_walkthrough(c):
    """The curl commands of the walkthrough, verbatim but for host and keys."""
    n = len(c.up.requests())
    for model_hdr in (["-H", "x-higress-llm-model: qwen-max"], []):
        # refresh quota
        st, h, body = curl(c, "/v1/chat/completions/quota/refresh",
                           "-d", "consumer=aliyun-user1&quota=100",
                           "-H", "x-api-key:" + ADMIN, *model_hdr)
        assert (st, body) == (200, b"refresh quota successful"), (model_hdr, st, body)
        # query quota
        st, h, body = curl(c, "/v1/chat/completions/quota?consumer=aliyun-user1",
                           "-H", "x-api-key:" + ADMIN, *model_hdr)
        assert st == 200, (model_hdr, st, body)
        assert (h.get("content-type") or "").startswith("application/json"), h.get("content-type")
        assert json.loads(body) == {"consumer": "aliyun-user1", "quota": 100}, body
        # delta quota
        st, h, body = curl(c, "/v1/chat/completions/quota/delta",
                           "-d", "consumer=aliyun-user1&value=100",
                           "-H", "x-api-key:" + ADMIN, *model_hdr)
        assert (st, body) == (200, b"delta quota successful"), (model_hdr, st, body)
        st, h, body = curl(c, "/v1/chat/completions/quota?consumer=aliyun-user1",
                           "-H", "x-api-key:" + ADMIN, *model_hdr)
        assert json.loads(body) == {"consumer": "aliyun-user1", "quota": 200}, body
        st, h, body = curl(c, "/v1/chat/completions/quota/delta",
                           "-d", "consumer=aliyun-user1&value=-30",
                           "-H", "x-api-key:" + ADMIN, *model_hdr)
        assert (st, body) == (200, b"delta quota successful"), (model_hdr, st, body)
        st, h, body = curl(c, "/v1/chat/completions/quota?consumer=aliyun-user1",
                           "-H", "x-api-key:" + ADMIN, *model_hdr)
        assert json.loads(body) == {"consumer": "aliyun-user1", "quota": 170}, body
    # the same balance through the agent's JSON API
    assert c.gw.quota("aliyun-user1") == 170
    # a consumer never set reads 0
    st, h, body = curl(c, "/v1/chat/completions/quota?consumer=aliyun-nobody",
                       "-H", "x-api-key:" + ADMIN)
    assert (st, json.loads(body)) == (200, {"consumer": "aliyun-nobody", "quota": 0}), (st, body)
    assert not new_records(c, n), "admin calls reached the upstream: %r" % new_records(c, n)
    c.gw.set_quota("aliyun-user1", 1000000)


@case
def quota_admin_refused_to_others(c):
    n = len(c.up.requests())
    before = c.gw.quota("aliyun-user2")
    for key, status in ((USER1, 403), ("nobody-key", 403), (None, 401)):
        hdr = ["-H", "x-api-key:" + key] if key else []
        for args in ((["/v1/chat/completions/quota?consumer=aliyun-user2"]),
                     (["/v1/chat/completions/quota/refresh", "-d",
                       "consumer=aliyun-user2&quota=5"]),
                     (["/v1/chat/completions/quota/delta", "-d",
                       "consumer=aliyun-user2&value=5"])):
            st, h, body = curl(c, args[0], *(args[1:] + hdr +
                                             ["-H", "x-higress-llm-model: qwen-max"]))
            assert st == status, (key, args, st, body)
            G.error_json(body, "quota admin as %r" % key)
    assert c.gw.quota("aliyun-user2") == before
    assert not new_records(c, n), new_records(c, n)


# ---------------------------------------------------------------- agent down

@case
def agent_down_fails_closed(c):
    """Last: stops the agent. Every request gets 503; nothing reaches the
    upstream; the gateway recovers when the agent is back."""
    gw = c.gw
    n = len(c.up.requests())
    gw.agent.stop(timeout=10.0, sig=signal.SIGTERM)
    assert not gw.agent.alive()
    tries = [
        ("POST", CHAT, chat_body(), {"x-api-key": USER1}),
        ("POST", CHAT, chat_body(), {"Authorization": "Bearer " + USER1}),
        ("POST", CHAT, chat_body(stream=True), {"x-api-key": USER1}),
        ("POST", CHAT, chat_body(), {}),
        ("POST", CHAT, chat_body(), {"x-mse-consumer": "aliyun-user1"}),
        ("POST", CHAT, chat_body("open-1"), {}),
        ("POST", CHAT, chat_body("nope-1"), {"x-api-key": "nobody"}),
        ("GET", "/v1/models", None, {"x-api-key": USER1}),
        ("GET", "/v1/chat/completions/quota?consumer=aliyun-user1", None, {"x-api-key": ADMIN}),
        ("POST", "/v1/embeddings", {"model": "qwen-emb", "input": "x"}, {"x-api-key": USER1}),
    ]
    for _ in range(3):
        for method, path, body, hdrs in tries:
            st, h, data = gw.request(method, path, body, hdrs)
            assert st == 503, "agent down: %s %s %r -> %d %r" % (method, path, hdrs, st, data[:200])
            G.error_json(data, "agent down %s %s" % (method, path))
    recs = new_records(c, n)
    assert not recs, "with the agent down the upstream saw %r" % recs
    # back up: verdicts again
    gw.agent.restart(15.0)
    gw.wait_verdicts(lambda: gw.post(CHAT, chat_body(max_tokens=1), {"x-api-key": USER1})[0])
    st, _, data = gw.post(CHAT, chat_body(max_tokens=1), {"x-api-key": USER1})
    assert st == 200, (st, data[:300])
    st, _, data = gw.post(CHAT, chat_body(), {})
    assert st == 401, (st, data[:300])


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
