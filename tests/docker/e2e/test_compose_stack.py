"""test_compose_stack.py -- the compose stack of docker/, run for real:
`make docker-test` (TESTS_ROOT=tests/docker tests/run.sh), not `make test`.

What it proves, on a Docker engine, with the compose found (`docker compose`
v2, else Debian 12's `docker-compose` 1.29):
  - the compose files are accepted as they are (1.29 refuses a top-level
    `name:`): the stack, the stack with Grafana, the stack with this test's
    upstream;
  - the images: redis:7, haproxy:2.6 and prom/prometheus:v2.53.0 are there,
    pulled, or (no registry answers) stand-ins built under the same tags from
    docker/standin/ FROM debian:bookworm-slim with Debian's packages; the agent
    image builds from docker/Dockerfile;
  - `up`: redis, agent, haproxy and prometheus come up, the agent healthy;
  - the seed's walkthrough against 127.0.0.1:8080: 401 without a key, 403
    with an unknown one; the quota admin API (query, refresh, delta) as
    aliyun-admin; aliyun-user1 chats (200) and is limited at 5 tokens a
    minute (429); aliyun-user2 without quota is refused (403);
  - the balances in Redis (redis-cli in the redis container) are what the
    admin API set, less exactly the tokens answered;
  - Prometheus (its HTTP query API) scrapes tollgate_tokens_total and holds
    the agent's own count;
  - the agent restarts: recreated with the provider moved to another
    container (tests/docker/upstream.yml, so that a stream survives the
    agent), balances and token counts are kept; then `restart agent` while a
    stream and a JSON answer are in flight: both complete, and both are
    charged once, in Redis and in the agent's counters;
  - `down -v` removes every container, network and volume of the project
    (also when a case failed: the teardown always runs it).

Where no Docker engine can be started, or debian:bookworm-slim can neither be
found, pulled nor made with debootstrap, or there is no compose and none can
be installed (Debian's docker-compose, as root), every case is a SKIP with
the reason. The stand-ins' build logs are kept in a /tmp/tg-docker-test.*
directory when a case failed (dockerd's, if it started one:
/tmp/tollgate-dockerd.log). Ports 8080, 8001 and 9090 on 127.0.0.1 must be
free (a demo stack still up: `docker compose -p tollgate ... down`).

Environment: DOCKER_TEST_PROJECT (tollgate-test), the compose project.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "pylib"))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from tcase import FAILED, case, main, skip  # noqa: E402
import harness as H  # noqa: E402
import gateway as G  # noqa: E402

LIB = os.path.join(REPO, "tests", "docker_lib.sh")
BASE = "docker/docker-compose.yml"
GRAFANA = "docker/docker-compose.grafana.yml"
UPSTREAM = "tests/docker/upstream.yml"
PROJECT = os.environ.get("DOCKER_TEST_PROJECT", "tollgate-test")
IMAGES = [("redis:7", "docker/standin/redis.Dockerfile"),
          ("haproxy:2.6", "docker/standin/haproxy.Dockerfile"),
          ("prom/prometheus:v2.53.0", "docker/standin/prometheus.Dockerfile")]
GW, AGENT, PROM = 8080, 8001, 9090
ADMIN, USER1, USER2 = "admin-key-123", "user1-key-123", "user2-key-123"
PREFIX = "chat_quota:"
CHAT = "/v1/chat/completions"


def log(msg):
    sys.stderr.write("[docker-test %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def lib(func, *args, timeout=1800):
    """Run a function of tests/docker_lib.sh; (ok, DOCKER_WHY or output)."""
    r = subprocess.run(["sh", "-c", '. "$0"; "$@" && exit 0; echo "$DOCKER_WHY"; exit 1',
                        LIB, func] + list(args), cwd=REPO, stdout=subprocess.PIPE,
                       stderr=sys.stderr, text=True, timeout=timeout)
    return r.returncode == 0, r.stdout.strip()


def compose(*args, files=(BASE,), timeout=900, check=True):
    """docker compose -p PROJECT -f FILE... ARGS (through docker_lib.sh)."""
    cmd = ["-p", PROJECT]
    for f in files:
        cmd += ["-f", f]
    r = subprocess.run(["sh", "-c", '. "$0"; docker_compose "$@"', LIB] + cmd + list(args),
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, "compose %s: exit %d\n%s" % (
            " ".join(args), r.returncode, r.stdout[-3000:])
    return r


def docker(*args, timeout=120):
    return subprocess.run(["docker"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def container(ctx, svc):
    cid = compose("ps", "-q", svc, files=ctx.files).stdout.strip()
    assert cid, "no container for %s" % svc
    return cid.splitlines()[-1]


def health(ctx, svc):
    return docker("inspect", "-f", "{{.State.Health.Status}}", container(ctx, svc)).stdout.strip()


def redis_get(ctx, key):
    r = compose("exec", "-T", "redis", "redis-cli", "GET", key, files=ctx.files, timeout=30)
    return r.stdout.strip()


def redis_int(ctx, key):
    v = redis_get(ctx, key)
    assert v.lstrip("-").isdigit(), "redis GET %s: %r" % (key, v)
    return int(v)


def admin(method, path, body=None):
    h = {"x-api-key": ADMIN, "x-higress-llm-model": "qwen-max"}
    if body is not None:
        h["Content-Type"] = "application/x-www-form-urlencoded"
    return H.http_request(GW, method, "/v1/chat/completions/quota" + path, body=body, headers=h)


def query_quota(consumer):
    status, _, body = admin("GET", "?consumer=" + consumer)
    assert status == 200, (status, body)
    doc = json.loads(body)
    assert doc.get("consumer") == consumer, doc
    return doc["quota"]


def refresh_quota(consumer, quota):
    status, _, body = admin("POST", "/refresh", "consumer=%s&quota=%d" % (consumer, quota))
    assert status == 200 and b"refresh quota successful" in body, (status, body)


def chat(key, extra=None, content="你是谁", timeout=30.0):
    body = {"model": "qwen-max", "messages": [{"role": "user", "content": content}]}
    h = {"Content-Type": "application/json"}
    if key:
        h["x-api-key"] = key
    h.update(extra or {})
    return H.http_request(GW, "POST", CHAT, body=body, headers=h, timeout=timeout)


def agent_tokens(consumer):
    """tollgate_tokens_total of one consumer, both directions, from the agent."""
    status, _, body = H.http_request(AGENT, "GET", "/metrics")
    assert status == 200, status
    return sum(v for n, lab, v in G.parse_metrics(body.decode())
               if n == "tollgate_tokens_total" and lab.get("consumer") == consumer)


def prom_query(expr):
    status, _, body = H.http_request(PROM, "GET", "/api/v1/query?query=" +
                                     urllib.parse.quote(expr))
    assert status == 200, (status, body[:300])
    doc = json.loads(body)
    assert doc.get("status") == "success", doc
    return doc["data"]["result"]


class Ctx:
    skip = None         # why nothing can run here
    up = False          # the stack came up
    files = (BASE,)
    used1 = None        # tokens aliyun-user1's chat was answered
    standins = ()


def need(ctx, up=True):
    if ctx.skip:
        skip(ctx.skip)
    if up:
        assert ctx.up, "the stack is not up (an earlier case failed)"


def port_free(port):
    return not H.tcp_accepts(port)


def setup():
    ctx = Ctx()
    ctx.work = tempfile.mkdtemp(prefix="tg-docker-test.")
    os.environ["DOCKER_LOG_DIR"] = ctx.work
    ok, why = lib("docker_engine", ctx.work, timeout=300)
    if not ok:
        ctx.skip = why
        return ctx
    ok, why = lib("docker_base_image", "debian:bookworm-slim", ctx.work)
    if not ok:
        ctx.skip = why
        return ctx
    ok, why = lib("docker_compose_ready", ctx.work, timeout=600)
    if not ok:
        ctx.skip = why
        return ctx
    r = subprocess.run(["sh", "-c", '. "$0"; docker_compose version', LIB],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log("compose: %s" % (r.stdout.strip().splitlines() or ["?"])[0])
    # what an interrupted earlier run left
    compose("down", "-v", "--remove-orphans", "-t", "3", files=(BASE, GRAFANA, UPSTREAM),
            check=False)
    return ctx


def teardown(ctx):
    if not FAILED:
        shutil.rmtree(ctx.work, ignore_errors=True)     # else its logs are kept
    if ctx.skip:
        print("SKIP: stack_removed (%s)" % ctx.skip, flush=True)
        return
    if ctx.up or H.tcp_accepts(GW):
        for svc in ("agent", "haproxy", "upstream"):
            r = compose("logs", "--no-color", "--tail", "30", svc, files=ctx.files, check=False)
            if os.environ.get("DOCKER_TEST_LOGS") or FAILED:
                sys.stderr.write(r.stdout)
    try:
        compose("down", "-v", "--remove-orphans", "-t", "5",
                files=(BASE, GRAFANA, UPSTREAM), timeout=300)
        label = "label=com.docker.compose.project=%s" % PROJECT
        left = [docker(kind, "ls", "-q", "--filter", label).stdout.split()
                for kind in ("volume", "network")]
        left.append(docker("ps", "-aq", "--filter", label).stdout.split())
        assert not any(left), "left behind (volumes, networks, containers): %r" % left
        print("PASS: stack_removed", flush=True)
    except Exception as e:  # noqa: BLE001 -- reported as the case's failure
        sys.stderr.write("stack_removed: %r\n" % e)
        print("FAIL: stack_removed", flush=True)


# ==================================================================== cases

@case
def compose_files_accepted(ctx):
    need(ctx, up=False)
    for files, want in [((BASE,), {"redis", "agent", "haproxy", "prometheus"}),
                        ((BASE, GRAFANA), {"redis", "agent", "haproxy", "prometheus",
                                           "grafana"}),
                        ((BASE, UPSTREAM), {"redis", "agent", "haproxy", "prometheus",
                                            "upstream"})]:
        compose("config", "-q", files=files)
        got = set(compose("config", "--services", files=files).stdout.split())
        assert got == want, "%s: services %s" % (" + ".join(files), sorted(got))


@case
def images_pulled_or_stand_ins_built(ctx):
    need(ctx, up=False)
    standins = []
    for tag, dockerfile in IMAGES:
        ok, why = lib("docker_image", tag, dockerfile)
        assert ok, why
        r = docker("image", "inspect", "-f",
                   '{{index .Config.Labels "org.tollgate.standin"}}', tag)
        assert r.returncode == 0, r.stdout
        if r.stdout.strip():
            standins.append(tag)
    ctx.standins = standins
    log("stand-ins in use: %s" % (", ".join(standins) or "none"))


@case
def agent_image_builds(ctx):
    need(ctx, up=False)
    t0 = time.monotonic()
    compose("build", "agent", timeout=1500)
    log("agent image built in %.0f s" % (time.monotonic() - t0))
    r = docker("run", "--rm", "tollgate:dev", "--version")
    assert r.returncode == 0 and "tollgate" in r.stdout.lower(), r.stdout


@case
def stack_comes_up_healthy(ctx):
    need(ctx, up=False)
    busy = [p for p in (GW, AGENT, PROM) if not port_free(p)]
    assert not busy, "127.0.0.1 ports %s are taken (a demo stack still up?)" % busy
    compose("up", "-d", timeout=600)
    H.wait_for(lambda: health(ctx, "agent") == "healthy", 120, 1, "a healthy agent")
    H.wait_for(lambda: H.http_request(GW, "GET", "/")[0] > 0, 60, 0.5, "HAProxy on :8080")
    H.wait_for(lambda: H.http_request(PROM, "GET", "/-/ready")[0] == 200, 60, 0.5,
               "Prometheus ready")
    r = compose("exec", "-T", "redis", "redis-cli", "ping", timeout=30)
    assert r.stdout.strip() == "PONG", r.stdout
    running = set(compose("ps", "--services", "--filter", "status=running").stdout.split())
    assert running == {"redis", "agent", "haproxy", "prometheus"}, running
    ctx.up = True


@case
def walkthrough_auth_401_and_403(ctx):
    need(ctx)
    status, _, body = chat(None)
    assert status == 401, (status, body[:300])
    status, _, body = chat("no-such-key")
    assert status == 403, (status, body[:300])


@case
def walkthrough_quota_query_refresh_delta(ctx):
    need(ctx)
    assert query_quota("aliyun-user1") == 0
    refresh_quota("aliyun-user1", 100)
    assert query_quota("aliyun-user1") == 100
    status, _, body = admin("POST", "/delta", "consumer=aliyun-user1&value=100")
    assert status == 200, (status, body)
    assert query_quota("aliyun-user1") == 200
    # only the admin consumer may use the admin API
    status, _, body = H.http_request(
        GW, "GET", "/v1/chat/completions/quota?consumer=aliyun-user1",
        headers={"x-api-key": USER1, "x-higress-llm-model": "qwen-max"})
    assert status == 403, (status, body[:300])


@case
def quota_in_redis(ctx):
    need(ctx)
    assert redis_int(ctx, PREFIX + "aliyun-user1") == 200


@case
def walkthrough_chat_then_429_at_5_tokens_a_minute(ctx):
    need(ctx)
    status, _, body = chat(USER1)
    assert status == 200, (status, body[:300])
    usage = json.loads(body)["usage"]
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert used > 5, usage      # more than the minute's 5 tokens: the next is refused
    status, headers, body = chat(USER1)
    assert status == 429 and headers.get("Retry-After"), (status, body[:300])
    # aliyun-user2 has no quota yet
    status, _, body = chat(USER2)
    assert status == 403, (status, body[:300])
    ctx.used1 = used


@case
def balance_in_redis_charged_exactly(ctx):
    need(ctx)
    assert ctx.used1, "no chat was answered"
    want = 200 - ctx.used1
    H.wait_for(lambda: redis_int(ctx, PREFIX + "aliyun-user1") == want, 15, 0.2,
               "aliyun-user1's balance %d in Redis" % want)
    assert query_quota("aliyun-user1") == want
    H.wait_for(lambda: agent_tokens("aliyun-user1") == ctx.used1, 10, 0.2,
               "the agent's tollgate_tokens_total for aliyun-user1")


@case
def prometheus_scrapes_tollgate_tokens_total(ctx):
    need(ctx)
    assert ctx.used1, "no chat was answered"
    expr = 'sum(tollgate_tokens_total{consumer="aliyun-user1"})'

    def scraped():
        res = prom_query(expr)
        return res and float(res[0]["value"][1]) == ctx.used1
    H.wait_for(scraped, 60, 1, "Prometheus: %s == %d" % (expr, ctx.used1))
    up = prom_query('up{job="tollgate"}')
    assert up and up[0]["value"][1] == "1", up


@case
def agent_recreated_keeps_balances(ctx):
    need(ctx)
    assert ctx.used1, "no chat was answered"
    want = 200 - ctx.used1
    old = container(ctx, "agent")
    ctx.files = (BASE, UPSTREAM)
    # the agent gets the provider in another container: recreated, a restart
    compose("up", "-d", files=ctx.files, timeout=600)
    assert container(ctx, "agent") != old, "the agent was not recreated"
    H.wait_for(lambda: health(ctx, "agent") == "healthy", 120, 1, "a healthy agent")
    compose("restart", "haproxy", files=ctx.files, timeout=120)    # loads the new rendering
    H.wait_for(lambda: H.http_request(GW, "GET", "/")[0] > 0, 60, 0.5, "HAProxy on :8080")
    assert redis_int(ctx, PREFIX + "aliyun-user1") == want
    H.wait_for(lambda: query_quota("aliyun-user1") == want, 30, 0.5,
               "aliyun-user1's quota %d through the restarted stack" % want)
    assert agent_tokens("aliyun-user1") == ctx.used1, "the agent's token count was not kept"


@case
def stream_in_flight_across_agent_restart_is_charged(ctx):
    need(ctx)
    assert ctx.files == (BASE, UPSTREAM), "the provider is not in its own container"
    for who in ("aliyun-user2", "aliyun-admin"):
        refresh_quota(who, 1000)
    q0 = {who: redis_int(ctx, PREFIX + who) for who in ("aliyun-user2", "aliyun-admin")}
    assert q0 == {"aliyun-user2": 1000, "aliyun-admin": 1000}, q0
    tok0 = {who: agent_tokens(who) for who in q0}
    t0 = time.monotonic()
    out = {}

    def stream():
        body = {"model": "qwen-max", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "in flight"}]}
        out["stream"] = G.sse_stream(GW, CHAT, body, {"x-api-key": USER2,
                                                      "x-mock-delay-ms": "800"}, timeout=60)

    def answer():
        out["answer"] = chat(ADMIN, {"x-mock-delay-ms": "9000"}, "in flight", timeout=60)
        out["answer_t"] = time.monotonic() - t0

    ts = [threading.Thread(target=f, daemon=True) for f in (stream, answer)]
    for t in ts:
        t.start()
    time.sleep(1.5)         # both admitted, at the upstream; the stream has begun
    r0 = time.monotonic() - t0
    compose("restart", "-t", "15", "agent", files=ctx.files, timeout=120)
    r1 = time.monotonic() - t0
    log("agent restarted from %.1f s to %.1f s" % (r0, r1))
    for t in ts:
        t.join(60)
    st = out.get("stream")
    assert st is not None and st.status == 200, st and (st.status, st.body[:300])
    assert b"[DONE]" in st.body, st.body[-300:]
    # in flight across the restart: begun before it, ended after it
    first, last = st.blocks[0][0], st.blocks[-1][0]
    assert first < r0 and last > r1, "stream %.1f..%.1f s, restart %.1f..%.1f s" % (
        first, last, r0, r1)
    status, _, body = out["answer"]
    assert status == 200, (status, body[:300])
    assert out["answer_t"] > r1, "the answer ended at %.1f s, before the restart ended" % (
        out["answer_t"])
    usage = [u for u in (json.loads(e).get("usage") for e in stream_events(st.body)) if u]
    assert len(usage) == 1, usage
    used = {"aliyun-user2": usage[0]["prompt_tokens"] + usage[0]["completion_tokens"]}
    u = json.loads(body)["usage"]
    used["aliyun-admin"] = u["prompt_tokens"] + u["completion_tokens"]
    for who, n in used.items():
        want = q0[who] - n
        H.wait_for(lambda: redis_int(ctx, PREFIX + who) == want, 30, 0.2,
                   "%s's balance %d in Redis" % (who, want))
        H.wait_for(lambda: agent_tokens(who) == tok0[who] + n, 15, 0.2,
                   "the agent's tollgate_tokens_total for %s" % who)
    time.sleep(1.0)         # and nothing more arrives: charged once
    for who, n in used.items():
        assert redis_int(ctx, PREFIX + who) == q0[who] - n, who
        assert agent_tokens(who) == tok0[who] + n, who


def stream_events(body):
    """The JSON data lines of an SSE body (not [DONE])."""
    return [line[5:].strip() for line in body.decode().split("\n")
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]")]


def _interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


if __name__ == "__main__":
    # a runner's timeout: stop the cases, still run the teardown (down -v)
    signal.signal(signal.SIGTERM, _interrupt)
    main(setup, teardown, teardown_cases=("stack_removed",))
