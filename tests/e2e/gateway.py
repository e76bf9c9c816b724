"""gateway.py -- the whole product on loopback ports, for end-to-end tests.

    import harness as H, gateway as G
    with H.Env("gw") as env:
        up = env.mock_upstream()
        gw = G.start_gateway(env, {
            "providers": [{"name": "up", "type": "openai-compatible",
                           "base_url": "http://127.0.0.1:%d/v1" % up.port,
                           "api_keys": ["pk-1"]}],
            "consumers": [{"name": "alice", "credential": "alice-key"}],
            "routes": [{"name": "r", "provider": "up", "models": ["m-*"],
                        "auth": {"enabled": True, "allow": ["alice"]}}]})
        status, hdrs, body = gw.post("/v1/chat/completions", {...},
                                     {"x-api-key": "alice-key"})

start_gateway() runs the user's flow exactly: it writes the YAML, runs
`tollgate check` and `tollgate haproxy-config --config F --out DIR`, checks
DIR/haproxy.cfg with `haproxy -c -dW` (warnings are errors), starts the agent
(`tollgate --config F`, from the repository root) and `haproxy -f
DIR/haproxy.cfg -db` (from DIR), and waits until both listen. Ports and the
state directory are filled in when the dict does not give them.

Gateway (returned)
  .port          the HAProxy frontend          .http_port    agent.http
  .settle_port   agent.settle                  .cfg          the YAML dict
  .out_dir       rendered files                .agent .haproxy  Procs
  .request(method, path, body=None, headers=None) -> (status, headers, bytes)
  .post(path, body, headers) / .get(path, headers)
  .metrics() -> [(name, {labels}, value)]      .metric(name, **labels) sum
  .tokens(consumer=..., model=..., ...) -> (input, output) sums
  .quota(consumer) -> balance via the agent's JSON admin API
  .set_quota(consumer, n)                      JSON admin API refresh
  .wait_metric(name, value, labels, timeout)   poll until the sum == value
  .usage_lines() -> the agent's "usage {...}" log lines, parsed
  .restart_agent()                             SIGTERM, start again, wait

Helpers: sse_stream(port, path, body, headers, ...) reads an SSE answer over a
raw socket with the arrival time of every byte block; replay_upstream()
asks the mock upstream directly for the same answer; error_json() checks the
OpenAI error shape. config(), provider(), quota() and ratelimit() build the
suites' configurations.
"""
import json
import os
import re
import socket
import time

import harness as H

METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> [(name, {label: value}, float)]."""
    out = []
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        m = METRIC_RE.match(line.strip())
        if not m:
            continue
        labels = {k: bytes(v, "utf-8").decode("unicode_escape")
                  for k, v in LABEL_RE.findall(m.group(2) or "")}
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            pass
    return out


def error_json(body, where=""):
    """Assert body is an OpenAI-shaped error {"error":{"message","type","code"}}
    and return the inner object."""
    try:
        obj = json.loads(body)
    except ValueError:
        raise AssertionError("%s: error body is not JSON: %r" % (where, body[:300]))
    assert isinstance(obj, dict) and isinstance(obj.get("error"), dict), \
        "%s: not an OpenAI error object: %r" % (where, obj)
    e = obj["error"]
    for k in ("message", "type", "code"):
        assert k in e, "%s: error object lacks %r: %r" % (where, k, obj)
    assert isinstance(e["message"], str) and e["message"], "%s: empty message %r" % (where, obj)
    return e


class Gateway:
    def __init__(self, env, cfg, cfg_path, out_dir):
        self.env, self.cfg, self.cfg_path, self.out_dir = env, cfg, cfg_path, out_dir
        self.port = H.parse_listen(cfg["haproxy"]["listen"])[0]
        a = cfg["agent"]
        self.http_port = H.parse_listen(a["http"])[0]
        self.settle_port = H.parse_listen(a["settle"])[0]
        self.agent = None
        self.haproxy = None

    # -- client side -----------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=15.0):
        return H.http_request(self.port, method, path, body, headers, timeout)

    def post(self, path, body, headers=None, timeout=15.0):
        return self.request("POST", path, body, headers, timeout)

    def get(self, path, headers=None, timeout=15.0):
        return self.request("GET", path, None, headers, timeout)

    # -- the agent's HTTP port -------------------------------------------

    def agent_http(self, method, path, body=None):
        return H.http_request(self.http_port, method, path, body, None, 10.0)

    def metrics(self):
        status, _, body = self.agent_http("GET", "/metrics")
        assert status == 200, "GET /metrics: %d %r" % (status, body[:200])
        return parse_metrics(body.decode())

    def metric(self, name, **labels):
        """Sum of the series of `name` whose labels include `labels`."""
        return sum(v for n, lb, v in self.metrics()
                   if n == name and all(lb.get(k) == str(x) for k, x in labels.items()))

    def series(self, name):
        """{frozenset(labels.items()): value} of one family."""
        return {frozenset(lb.items()): v for n, lb, v in self.metrics() if n == name}

    def tokens(self, **labels):
        """(input, output) sums of tollgate_tokens_total over matching series."""
        ms = self.metrics()

        def total(direction):
            return int(sum(v for n, lb, v in ms if n == "tollgate_tokens_total"
                           and lb.get("direction") == direction
                           and all(lb.get(k) == str(x) for k, x in labels.items())))
        return total("input"), total("output")

    def settlements(self, result):
        return int(self.metric("tollgate_settlements_total", result=result))

    def wait_metric(self, name, value, timeout=10.0, **labels):
        """Poll until the sum of `name` over `labels` equals value."""
        last = [None]

        def check():
            last[0] = self.metric(name, **labels)
            return last[0] == value
        try:
            H.wait_for(check, timeout, 0.05, "%s%r == %r" % (name, labels, value))
        except TimeoutError:
            raise AssertionError("%s%r stayed %r, expected %r"
                                 % (name, labels, last[0], value)) from None

    def wait_tokens(self, expected, timeout=10.0, **labels):
        """Poll until tokens(**labels) == expected (a pair); assert on timeout."""
        last = [None]

        def check():
            last[0] = self.tokens(**labels)
            return last[0] == tuple(expected)
        try:
            H.wait_for(check, timeout, 0.05, "tokens %r == %r" % (labels, expected))
        except TimeoutError:
            raise AssertionError("tokens %r: got (input, output) %r, expected %r"
                                 % (labels, last[0], tuple(expected))) from None

    def quota(self, consumer):
        status, _, body = self.agent_http("GET", "/v1/quota?consumer=" + consumer)
        assert status == 200, "quota query %s: %d %r" % (consumer, status, body)
        obj = json.loads(body)
        assert obj.get("consumer") == consumer, obj
        return obj["quota"]

    def set_quota(self, consumer, n):
        status, _, body = self.agent_http("POST", "/v1/quota/refresh",
                                          {"consumer": consumer, "quota": n})
        assert status == 200, "quota refresh %s: %d %r" % (consumer, status, body)

    def usage_lines(self):
        """The agent's usage log lines ("... usage {json}"), parsed."""
        out = []
        for line in self.agent.stderr().split("\n") + self.agent.stdout().split("\n"):
            i = line.find(" usage {")
            if i >= 0:
                try:
                    out.append(json.loads(line[i + 7:]))
                except ValueError:
                    pass
        return out

    # -- processes -------------------------------------------------------

    def agent_ready(self):
        return H.tcp_accepts(self.http_port) and \
            self.agent_http("GET", "/healthz")[0] == 200

    def restart_agent(self, timeout=15.0):
        """SIGTERM the agent, start it again with the same config and state
        directory, wait until its HTTP port answers."""
        self.agent.restart(timeout)
        H.wait_for(self.agent_ready, timeout, 0.05, "the restarted agent's /healthz")

    def wait_verdicts(self, probe, timeout=15.0, in_a_row=3):
        """Poll until probe() (a request through HAProxy) returns a status
        other than the failure status `in_a_row` times running: HAProxy's SPOE
        reconnected. (After an agent restart 2.6, 3.2 and 3.4 answer at once;
        2.8.0 and 3.0.0 answer the failure status for about 1.7 s.)"""
        fs = self.cfg["haproxy"].get("failure_status", 503)
        run = [0]

        def ok():
            run[0] = run[0] + 1 if probe() != fs else 0
            return run[0] >= in_a_row
        return H.wait_for(ok, timeout, 0.1, "HAProxy getting verdicts from the agent again")


# ---------------------------------------------------------- configuration
# The one builder of the suites' configurations: each suite says which
# providers, consumers and routes its cases need, the shape is written here.

def provider(name, up_port, keys=("pk-test",), ptype="openai-compatible", path="/v1", **extra):
    """A provider at a mock upstream on up_port (base_url http://127.0.0.1:PORT
    + path). extra: model_mapping, api_version, deployment, ..."""
    p = {"name": name, "type": ptype, "base_url": "http://127.0.0.1:%d%s" % (up_port, path),
         "api_keys": list(keys)}
    p.update(extra)
    return p


def quota(prefix, admin, service=True, **redis):
    """An ai-quota block; with service, its redis names the `local-redis`
    service config() declares (the walkthrough's block), with redis's extra
    members (timeout)."""
    q = {"redis_key_prefix": prefix, "admin_consumer": admin, "admin_path": "/quota"}
    if service:
        q["redis"] = dict({"service_name": "local-redis.static", "service_port": 80}, **redis)
    return q


def ratelimit(rule_name="default_rule", header="x-api-key", **limits):
    """An ai-token-ratelimit block: one limit_by_per_header item, key "*"."""
    return {"rule_name": rule_name,
            "rule_items": [{"limit_by_per_header": header,
                            "limit_keys": [dict({"key": "*"}, **limits)]}],
            "redis": {"service_name": "local-redis.static", "service_port": 80}}


def config(providers, consumers, routes, redis=None, store=None, haproxy=None,
           key_headers=("x-api-key",)):
    """A whole configuration. providers: a dict or a list of them;
    consumers: {name: key}; key_auth on key_headers. The `local-redis`
    service the plugin blocks name is `redis` (a harness Proc) or the
    embedded store."""
    addr = "127.0.0.1:%d" % redis.port if redis is not None else "embedded"
    cfg = {
        "services": [{"name": "local-redis", "type": "static", "address": addr}],
        "providers": [providers] if isinstance(providers, dict) else list(providers),
        "consumers": [{"name": n, "credential": k} for n, k in consumers.items()],
        "key_auth": {"keys": list(key_headers), "in_header": True},
        "routes": routes,
    }
    if haproxy is not None:
        cfg["haproxy"] = haproxy
    if store is not None:
        cfg["store"] = store
    return cfg


def fill_config(env, cfg, name=""):
    """A deep copy of cfg with free ports, sockets and a state_dir of its own
    (prefixed with NAME- when several gateways share an env). As root, HAProxy
    runs as the packaged service runs it: chroot, user and group haproxy
    (3.4 warns when root keeps neither)."""
    pre = name + "-" if name else ""
    cfg = json.loads(json.dumps(cfg))
    hp = cfg.setdefault("haproxy", {})
    hp.setdefault("listen", "127.0.0.1:%d" % H.free_port())
    hp.setdefault("stats_socket", env.path(pre + "haproxy.sock"))
    if os.geteuid() == 0 and H.haproxy_user():
        jail = env.path(pre + "jail")
        os.makedirs(jail, mode=0o755, exist_ok=True)
        hp.setdefault("chroot", jail)
        hp.setdefault("user", H.haproxy_user())
        hp.setdefault("group", H.haproxy_user())
    a = cfg.setdefault("agent", {})
    a.setdefault("listen", "127.0.0.1:%d" % H.free_port())
    a.setdefault("http", "127.0.0.1:%d" % H.free_port())
    a.setdefault("settle", "127.0.0.1:%d" % H.free_port())
    a.setdefault("state_dir", env.path(pre + "agent-state"))
    os.makedirs(a["state_dir"], exist_ok=True)
    return cfg


def render(env, cfg, out_dir, name=""):
    """tollgate check + tollgate haproxy-config; returns the YAML path."""
    pre = name + "-" if name else ""
    cfg_path = env.write(pre + "tollgate.yaml", H.to_yaml(cfg))
    binary = H.agent_binary()
    env.run(pre + "tollgate-check", [binary, "check", "--config", cfg_path])
    env.run(pre + "tollgate-render", [binary, "haproxy-config", "--config", cfg_path,
                                      "--out", out_dir])
    for f in ("haproxy.cfg", "spoe.conf", "tollgate.lua"):
        assert os.path.isfile(os.path.join(out_dir, f)), "haproxy-config did not write %s" % f
    return cfg_path


def start_gateway(env, cfg, zero_warning=True, timeout=15.0, name="", master_worker=False,
                  haproxy_env=None):
    """Render, check, start the agent and HAProxy; returns a Gateway. With
    NAME, its files and processes are NAME-*; with master_worker, HAProxy
    runs with -W (H.haproxy_reload works). HAProxy must start without a
    warning, as `haproxy -c -dW` must accept the configuration."""
    pre = name + "-" if name else ""
    cfg = fill_config(env, cfg, name)
    out_dir = env.path(pre + "rendered")
    os.makedirs(out_dir, exist_ok=True)
    cfg_path = render(env, cfg, out_dir, name)
    gw = Gateway(env, cfg, cfg_path, out_dir)
    gw.name = name
    hcfg = os.path.join(out_dir, "haproxy.cfg")
    env.haproxy_check(hcfg, zero_warning)
    gw.agent = env.start(pre + "agent", [H.agent_binary(), "--config", cfg_path], cwd=H.REPO,
                         wait_tcp=[H.parse_listen(cfg["agent"]["listen"])[0], gw.http_port],
                         timeout=timeout)
    gw.haproxy = env.start(pre + "haproxy", [H.HAPROXY, "-f", hcfg, "-db"] +
                           (["-W"] if master_worker else []), cwd=out_dir,
                           env=haproxy_env, wait_tcp=gw.port, timeout=timeout)
    gw.haproxy.master_worker = master_worker
    if cfg["agent"].get("settle"):
        # the agent reads the worker's settlement ring before any traffic: a
        # worker replaced (reload) before the agent ever read it keeps its records
        H.wait_for(lambda: gw.metric("tollgate_settle_ring_sessions") >= 1, timeout, 0.05,
                   "the agent reading HAProxy's settlement ring")
    if zero_warning:
        warned = [l for l in gw.haproxy.stderr().split("\n") if "[WARNING]" in l]
        assert not warned, "HAProxy warned at start:\n" + "\n".join(warned)
    return gw


def haproxy_sizes(gw):
    """(max_body, bufsize) the gateway's HAProxy runs with: the rendered file
    sets them in its environment per version and glibc setting
    (TOLLGATE_MAX_BODY, TOLLGATE_BUFSIZE), asked on its stats socket."""
    out = H.haproxy_cli(("127.0.0.1", gw.settle_port), "show env")
    env = dict(l.split("=", 1) for l in out.split("\n") if "=" in l)
    return int(env["TOLLGATE_MAX_BODY"]), int(env["TOLLGATE_BUFSIZE"])


# --------------------------------------------------------------------------
# Raw streaming client

class Stream:
    """What a raw socket read of one HTTP answer gave: status, headers (lower
    names -> last value), raw body bytes (de-chunked), and `blocks`: a list of
    (seconds since the request was sent, de-chunked bytes) as they arrived."""
    status = None
    headers = None
    body = b""
    blocks = ()
    t_headers = None


def _dechunk_feed(state, data):
    """Incremental chunked decoder: state = {"buf": bytes, "left": int,
    "done": bool}; returns the payload bytes decoded from data."""
    state["buf"] += data
    out = b""
    while True:
        buf = state["buf"]
        if state["left"] > 0:
            take = buf[:state["left"]]
            out += take
            state["left"] -= len(take)
            state["buf"] = buf[len(take):]
            if state["left"] > 0:
                return out
            state["left"] = -2      # expect CRLF
            continue
        if state["left"] == -2:
            if len(buf) < 2:
                return out
            state["buf"] = buf[2:]
            state["left"] = 0
            continue
        nl = buf.find(b"\r\n")
        if nl < 0:
            return out
        size = int(buf[:nl].split(b";")[0].strip() or b"0", 16)
        state["buf"] = buf[nl + 2:]
        if size == 0:
            state["done"] = True
            return out
        state["left"] = size


def sse_stream(port, path, body, headers=None, timeout=20.0, stop=None):
    """POST body (a dict, as JSON) and read the answer over a raw socket,
    timing every block. stop(stream) -> True closes the connection early (a
    client abort) right after the block that made it true. Returns a Stream."""
    data = json.dumps(body).encode()
    hdrs = {"Host": "127.0.0.1:%d" % port, "Content-Type": "application/json",
            "Content-Length": str(len(data)), "Accept": "text/event-stream"}
    hdrs.update(headers or {})
    req = "POST %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % kv for kv in hdrs.items())
    st = Stream()
    st.blocks = []
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    deadline = time.monotonic() + timeout
    try:
        t0 = time.monotonic()
        s.sendall(req.encode() + b"\r\n" + data)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the headers: %r" % raw)
            raw += chunk
            if time.monotonic() > deadline:
                raise TimeoutError("no headers")
        head, rest = raw.split(b"\r\n\r\n", 1)
        st.t_headers = time.monotonic() - t0
        lines = head.decode("latin-1").split("\r\n")
        st.status = int(lines[0].split()[1])
        st.headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            st.headers[k.strip().lower()] = v.strip()
        chunked = "chunked" in st.headers.get("transfer-encoding", "").lower()
        clen = int(st.headers["content-length"]) if "content-length" in st.headers else None
        dstate = {"buf": b"", "left": 0, "done": False}
        body_out = b""

        def feed(b):
            nonlocal body_out
            payload = _dechunk_feed(dstate, b) if chunked else b
            if payload:
                body_out += payload
                st.blocks.append((time.monotonic() - t0, payload))
            st.body = body_out
        if rest:
            feed(rest)
        while True:
            if stop is not None and stop(st):
                return st
            if chunked and dstate["done"]:
                return st
            if clen is not None and len(body_out) >= clen:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError("stream not finished after %.1fs: %r" % (timeout, body_out[-300:]))
            chunk = s.recv(65536)
            if not chunk:
                return st
            feed(chunk)
    finally:
        s.close()


def upstream_usage(rec):
    """The usage the mock upstream answered for one recorded request (its
    deterministic accounting, tests/e2e/mock_upstream.py): (in, out)."""
    ptok = (rec["body_len"] + 3) // 4
    h = rec["headers"]
    path = rec["path"]
    if path.endswith("/embeddings"):
        return ptok, 0
    if "x-mock-completion-tokens" in h:
        ctok = int(h["x-mock-completion-tokens"])
    else:
        ctok = 10
        try:
            body = json.loads(rec["body"])
        except ValueError:
            body = {}
        for k in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            if isinstance(body.get(k), int) and body[k] >= 0:
                ctok = min(ctok, body[k])
                break
    return ptok, ctok


def in_flight_across(gw, up, headers, model, how, streams=3, answers=3):
    """`streams` SSE streams and `answers` JSON answers in flight (all
    admitted, all at the upstream) while the agent is stopped (how =
    "SIGTERM") or killed ("SIGKILL") and started again with the same state,
    or while HAProxy reloads ("reload": a gateway started with
    master_worker; the old worker finishes them). Every request must still
    succeed; returns the usage the upstream answered for them, summed:
    (in, out)."""
    import threading
    chat = "/v1/chat/completions"
    nrec = len(up.requests())
    out = [None] * (streams + answers)

    def run(i):
        body = {"model": model, "messages": [{"role": "user", "content": "in flight %d" % i}],
                "max_tokens": 20}
        try:
            if i < streams:
                body["stream"] = True
                out[i] = sse_stream(gw.port, chat, body,
                                    dict(headers, **{"x-mock-delay-ms": "150",
                                                     "x-mock-completion-tokens": "8"}),
                                    timeout=30.0)
            else:
                out[i] = gw.post(chat, body, dict(headers, **{"x-mock-delay-ms": "1200"}),
                                 timeout=30.0)
        except Exception as e:  # noqa: BLE001 -- asserted below
            out[i] = e
    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(out))]
    for t in ts:
        t.start()
    H.wait_for(lambda: len(up.requests()) - nrec >= len(out), 10.0, 0.01,
               "%d requests at the upstream" % len(out))
    if how == "SIGKILL":
        gw.agent.kill()
        gw.agent.restart(15.0)
        H.wait_for(gw.agent_ready, 15.0, 0.05, "the restarted agent's /healthz")
    elif how == "reload":
        H.haproxy_reload(gw.haproxy, gw.cfg["haproxy"]["stats_socket"])
    else:
        assert how == "SIGTERM", how
        gw.restart_agent()
    for t in ts:
        t.join(30.0)
    for i, r in enumerate(out):
        assert not isinstance(r, Exception), "request %d: %r" % (i, r)
        st = r.status if i < streams else r[0]
        assert st == 200, "request %d answered %r" % (i, st)
        if i < streams:
            assert b"[DONE]" in r.body, r.body[-200:]
    recs = up.requests()[nrec:]
    assert len(recs) == len(out), "the upstream saw %d requests" % len(recs)
    usage = [upstream_usage(rec) for rec in recs]
    return sum(u[0] for u in usage), sum(u[1] for u in usage)


def replay_upstream(up_port, rec):
    """Send a recorded request again straight to the mock upstream; returns
    the raw body bytes with the new seq replaced by the recorded one."""
    hdrs = {k: v for k, v in rec["headers"].items()
            if k.startswith("x-mock-") or k == "content-type"}
    path = rec["path"] + ("?" + rec["query"] if rec["query"] else "")
    status, rh, body = H.http_request(up_port, rec["method"], path,
                                      rec["body"].encode(), hdrs)
    assert status == 200, (status, body[:200])
    seq = rh.get("x-mock-seq")
    return body.replace(b"mock-%s\"" % seq.encode(), b"mock-%d\"" % rec["seq"])
