"""test_dropin.py -- Tollgate added to an existing HAProxy with one more -f.

Debian's stock /etc/haproxy/haproxy.cfg, unedited (chroot /var/lib/haproxy,
user and group haproxy, its admin socket), plus a configuration of the
operator's own: a site frontend and a TLS frontend whose /v1/ paths go to
Tollgate with one line (`use_backend tollgate_llm if { path_beg /v1/ }`),
plus `tollgate haproxy-config --fragment`. HAProxy runs as the packaged
service runs it (started as root, chrooted, user haproxy). Proves:
  - `haproxy -c -dW` accepts the three files together (no warning);
  - the site and TLS frontends answer as before;
  - the LLM path through the TLS frontend is authenticated (401 without a
    key), governed (the ai-quota balance falls by exactly the usage) and
    metered (tollgate_tokens_total equals what the upstream charged);
  - the worker runs as user haproxy, chrooted in /var/lib/haproxy (the chroot
    is read from /proc/PID/root: a skip where that needs CAP_SYS_PTRACE).
Skipped where it cannot be: not root, no Debian stock configuration, no
haproxy user, no openssl.
"""
import os
import pwd
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import gateway as G  # noqa: E402
from tcase import FAILED, case, main, skip  # noqa: E402

STOCK = "/etc/haproxy/haproxy.cfg"
KEY = "dropin-key-1"
CHAT = "/v1/chat/completions"

SITE = """\
frontend site
    bind 127.0.0.1:{site}
    http-request return status 200 content-type text/plain string "site ok"

frontend site_tls
    bind 127.0.0.1:{tls} ssl crt {pem}
    http-request return status 200 content-type text/plain string "tls site ok" if !{{ path_beg /v1/ }}
    use_backend tollgate_llm if {{ path_beg /v1/ }}
"""


def config(up_port):
    return G.config(
        G.provider("up", up_port, ["pk-drop"]),
        {"dropper": KEY, "drop-admin": "dropin-admin"},
        [{"name": "drop", "provider": "up", "models": ["d-*"],
          "auth": {"enabled": True, "allow": ["dropper", "drop-admin"]},
          "plugins": {"ai-quota": G.quota("drop_quota:", "drop-admin", service=False)}}],
        key_headers=("x-api-key", "authorization"))


class Ctx:
    pass


def why_not():
    if os.geteuid() != 0:
        return "not root: the packaged service starts as root and drops to haproxy"
    if not os.path.isfile(STOCK) or "chroot" not in open(STOCK).read():
        return "no Debian stock %s" % STOCK
    if not H.haproxy_user():
        return "no haproxy user"
    if not shutil.which("openssl"):
        return "no openssl for the TLS frontend's certificate"
    return None


def setup():
    c = Ctx()
    c.skip = why_not()
    if c.skip:
        return c
    c.env = H.Env("dropin")
    try:
        env = c.env
        c.up = env.mock_upstream()
        cfg = G.fill_config(env, config(c.up.port), "drop")
        out = env.path("fragment")
        os.makedirs(out)
        G.render(env, cfg, out, "drop")
        env.run("fragment", [H.agent_binary(), "haproxy-config", "--config",
                             env.path("drop-tollgate.yaml"), "--out", out, "--fragment"])
        for f in os.listdir(out):          # the packaged service reads them as haproxy
            os.chmod(os.path.join(out, f), 0o644)
        os.chmod(out, 0o755)
        key, crt, pem = env.path("site.key"), env.path("site.crt"), env.path("site.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", crt, "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True, timeout=60)
        with open(pem, "w") as f:
            f.write(open(crt).read() + open(key).read())
        c.site, c.tls = H.free_port(), H.free_port()
        site = env.write("site.cfg", SITE.format(site=c.site, tls=c.tls, pem=pem))
        c.files = [STOCK, site, os.path.join(out, "tollgate.cfg")]
        os.makedirs("/run/haproxy", exist_ok=True)   # the stock admin socket's directory
        c.check = subprocess.run([H.HAPROXY, "-c", "-dW"] + sum((["-f", f] for f in c.files), []),
                                 capture_output=True, text=True, timeout=60)
        c.gw = G.Gateway(env, cfg, env.path("drop-tollgate.yaml"), out)
        c.gw.agent = env.start("drop-agent", [H.agent_binary(), "--config",
                                              env.path("drop-tollgate.yaml")], cwd=H.REPO,
                               wait_tcp=[H.parse_listen(cfg["agent"]["listen"])[0],
                                         c.gw.http_port])
        c.gw.haproxy = env.start("drop-haproxy", [H.HAPROXY] + sum((["-f", f] for f in c.files), [])
                                 + ["-db"], wait_tcp=[c.site, c.tls, c.gw.port], timeout=20)
        H.wait_for(lambda: c.gw.metric("tollgate_settle_ring_sessions") >= 1, 15.0, 0.05,
                   "the agent reading the ring")
        c.gw.set_quota("dropper", 100000)
    except BaseException:
        c.env.close(failed=True)
        raise
    return c


def teardown(c):
    if not c.skip:
        c.env.close(failed=bool(FAILED))


def need(c):
    if c.skip:
        skip(c.skip)


def tls(c, path, *args):
    return H.curl_request("https://127.0.0.1:%d%s" % (c.tls, path), "-k", *args)


@case
def stock_site_and_fragment_are_warning_free(c):
    need(c)
    assert c.check.returncode == 0, c.check.stdout + c.check.stderr
    warned = [l for l in (c.check.stdout + c.check.stderr).split("\n") if "WARNING" in l]
    assert not warned, warned
    warned = [l for l in c.gw.haproxy.stderr().split("\n") if "[WARNING]" in l]
    assert not warned, "HAProxy warned at start: %r" % warned


@case
def site_and_tls_frontends_answer_as_before(c):
    need(c)
    st, _, body = H.http_request(c.site, "GET", "/")
    assert (st, body) == (200, b"site ok"), (st, body)
    st, _, body = tls(c, "/index.html")
    assert (st, body) == (200, b"tls site ok"), (st, body)


@case
def llm_path_through_tls_authenticated_governed_metered(c):
    need(c)
    body = '{"model":"d-1","messages":[{"role":"user","content":"through the TLS site"}],' \
           '"max_tokens":5}'
    st, _, data = tls(c, CHAT, "-H", "Content-Type: application/json", "-d", body)
    assert st == 401, (st, data)
    n = len(c.up.requests())
    q0, tok0 = c.gw.quota("dropper"), c.gw.tokens(consumer="dropper")
    st, _, data = tls(c, CHAT, "-H", "Content-Type: application/json", "-H",
                      "x-api-key: " + KEY, "-d", body)
    assert st == 200, (st, data[:300])
    recs = c.up.requests()[n:]
    assert len(recs) == 1, recs
    assert recs[0]["headers"].get("x-api-key") is None, "the consumer key reached the provider"
    tin, tout = G.upstream_usage(recs[0])
    c.gw.wait_tokens((tok0[0] + tin, tok0[1] + tout), consumer="dropper")
    H.wait_for(lambda: c.gw.quota("dropper") == q0 - tin - tout, 5.0, 0.05,
               "the balance of dropper down by %d" % (tin + tout))


def children(pid):
    """The processes whose parent is pid (from /proc: no procps needed)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open("/proc/%s/stat" % d).read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def haproxy_pids(c):
    return children(c.gw.haproxy.popen.pid) or [c.gw.haproxy.popen.pid]


@case
def haproxy_runs_as_user_haproxy(c):
    need(c)
    for pid in haproxy_pids(c):
        status = open("/proc/%d/status" % pid).read()
        uid = [l.split()[1] for l in status.split("\n") if l.startswith("Uid:")][0]
        assert pwd.getpwuid(int(uid)).pw_name == "haproxy", (pid, uid)


@case
def haproxy_runs_chrooted(c):
    need(c)
    for pid in haproxy_pids(c):
        try:
            root = os.readlink("/proc/%d/root" % pid)
        except PermissionError:
            # reading another user's /proc/PID/root needs CAP_SYS_PTRACE,
            # which a container's root usually lacks
            skip("/proc/%d/root is not readable here (no CAP_SYS_PTRACE)" % pid)
        assert root == "/var/lib/haproxy", (pid, root)


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
