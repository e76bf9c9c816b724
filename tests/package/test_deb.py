"""test_deb.py -- the Debian package, built with Debian's tools from debian/,
installed with dpkg, run from the installed paths, purged (`make deb-test`).

Not part of `make test`: it installs a package on the machine (root only)
and takes about half a minute to build. The tree is copied (the files git
tracks or would track) to a scratch directory, because dpkg-buildpackage
writes its .deb next to the source directory.

What it proves:
  - dpkg-buildpackage -b builds tollgate_VERSION_ARCH.deb (debhelper, the
    project's own `make install`), holding the agent, the Lua filter, the
    example configuration as a conffile in /etc/tollgate, the systemd unit
    and the docs, with library dependencies computed by dh_shlibdeps;
  - `make install` honours PREFIX and DESTDIR (the unit names the binary
    and the configuration where they were installed);
  - dpkg -i installs it: the `tollgate` system user, /var/lib/tollgate
    owned by it; the unit is sandboxed (dedicated user, ProtectSystem=strict,
    StateDirectory, NoNewPrivileges, reload by SIGHUP) and passes
    `systemd-analyze verify`;
  - `tollgate check` accepts the installed configuration; the agent started
    as the unit starts it (its user, its environment, the installed paths)
    answers /metrics, writes its store in /var/lib/tollgate, reloads on
    SIGHUP (what ExecReload sends) and stops cleanly on SIGTERM;
  - dpkg --purge removes the files, the configuration and the state.
A machine where a tollgate package is already installed is left alone (the
install cases skip, saying so).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

import harness as H  # noqa: E402
from tcase import case, main, skip  # noqa: E402

REPO = H.REPO
UNIT = "/lib/systemd/system/tollgate.service"
CONF = "/etc/tollgate/tollgate.yaml"


class Ctx:
    pass


def run(argv, cwd=None, timeout=300, env=None):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def version():
    with open(os.path.join(REPO, "debian", "changelog")) as f:
        return re.match(r"tollgate \(([^)]+)\)", f.readline()).group(1)


def installed():
    r = run(["dpkg-query", "-W", "-f=${Status}", "tollgate"])
    return r.returncode == 0 and "ok installed" in r.stdout


def tree_files():
    """The files of the tree: git's view when it is a checkout, else all but
    build outputs."""
    r = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO)
    if r.returncode == 0 and r.stdout.strip():
        return [f for f in r.stdout.split("\n") if f and os.path.isfile(os.path.join(REPO, f))]
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", "build", "build-asan", "node_modules")]
        out += [os.path.relpath(os.path.join(root, f), REPO) for f in files]
    return out


def setup():
    c = Ctx()
    c.tmp = tempfile.mkdtemp(prefix="tg-deb-")
    c.version = version()
    c.src = os.path.join(c.tmp, "tollgate-" + c.version)
    for f in tree_files():
        dst = os.path.join(c.src, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(REPO, f), dst)
    c.deb = None
    c.preinstalled = installed()
    c.mine = False              # this run installed the package
    return c


def teardown(c):
    if c.mine and installed():
        run(["dpkg", "--purge", "tollgate"])
    if os.environ.get("KEEP"):
        print("NOTE: kept %s" % c.tmp, flush=True)
    else:
        shutil.rmtree(c.tmp, ignore_errors=True)


def need_install(c):
    if os.geteuid() != 0:
        skip("not root: dpkg -i needs root")
    if c.preinstalled:
        skip("a tollgate package is already installed on this machine: left alone")
    if not c.mine:
        skip("the package was not installed (see install_with_dpkg)")


@case
def builds_with_dpkg_buildpackage(c):
    if not shutil.which("dpkg-buildpackage") or not shutil.which("dh"):
        skip("dpkg-dev / debhelper missing (tests/deps.sh installs them)")
    r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=c.src, timeout=600)
    with open(os.path.join(c.tmp, "build.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    assert r.returncode == 0, "dpkg-buildpackage failed:\n" + (r.stdout + r.stderr)[-3000:]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    c.deb = os.path.join(c.tmp, "tollgate_%s_%s.deb" % (c.version, arch))
    assert os.path.isfile(c.deb), os.listdir(c.tmp)
    # built with Debian's flags (hardening), warning-free (-Werror)
    assert "-D_FORTIFY_SOURCE=2" in r.stdout and "-z,now" in r.stdout, "no Debian build flags"
    listing = run(["dpkg-deb", "-c", c.deb]).stdout
    for path in ("./usr/bin/tollgate", "./usr/share/tollgate/tollgate.lua", "./etc/tollgate/tollgate.yaml",
                 "." + UNIT, "./usr/share/doc/tollgate/examples/token-control.yaml",
                 "./usr/share/doc/tollgate/README.md"):
        assert re.search(r" %s(\.gz)?\n" % re.escape(path), listing), "%s not in the .deb:\n%s" % (
            path, listing)
    depends = run(["dpkg-deb", "-f", c.deb, "Depends"]).stdout
    for lib in ("libev4", "libhiredis", "libmsgpackc", "libcjson", "libyaml", "libssl3", "zlib1g",
                "adduser"):
        assert lib in depends, "Depends lacks %s: %s" % (lib, depends)
    ctl = os.path.join(c.tmp, "control")
    assert run(["dpkg-deb", "-e", c.deb, ctl]).returncode == 0
    with open(os.path.join(ctl, "conffiles")) as f:
        assert CONF in f.read().split()


@case
def make_install_honours_prefix_and_destdir(c):
    if not os.path.isfile(os.path.join(c.src, "build", "tollgate")):
        skip("no agent built by the package build")
    dest = os.path.join(c.tmp, "staging")
    r = run(["make", "install", "DESTDIR=" + dest, "PREFIX=/opt/tollgate"], cwd=c.src)
    assert r.returncode == 0, r.stdout + r.stderr
    for path in ("bin/tollgate", "share/tollgate/tollgate.lua", "etc/tollgate/tollgate.yaml",
                 "lib/systemd/system/tollgate.service", "share/doc/tollgate/README.md",
                 "share/doc/tollgate/examples/token-control.yaml"):
        assert os.path.isfile(os.path.join(dest, "opt/tollgate", path)), path
    with open(os.path.join(dest, "opt/tollgate/lib/systemd/system/tollgate.service")) as f:
        unit = f.read()
    assert ("\nExecStart=/opt/tollgate/bin/tollgate --config "
            "/opt/tollgate/etc/tollgate/tollgate.yaml\n") in unit, unit
    assert "@BINDIR@" not in unit and "@SYSCONFDIR@" not in unit
    with open(os.path.join(REPO, "haproxy", "tollgate.lua"), "rb") as a, \
            open(os.path.join(dest, "opt/tollgate/share/tollgate/tollgate.lua"), "rb") as b:
        assert a.read() == b.read()


@case
def install_with_dpkg(c):
    if os.geteuid() != 0:
        skip("not root: dpkg -i needs root")
    if c.preinstalled:
        skip("a tollgate package is already installed on this machine: left alone")
    assert c.deb, "no .deb was built"
    r = run(["dpkg", "-i", c.deb])
    c.mine = True
    assert r.returncode == 0, "dpkg -i failed:\n" + r.stdout + r.stderr
    assert installed()
    assert os.access("/usr/bin/tollgate", os.X_OK)
    ent = run(["getent", "passwd", "tollgate"]).stdout.split(":")
    assert len(ent) > 6 and ent[0] == "tollgate" and int(ent[2]) < 1000, ent
    assert ent[6].strip() in ("/usr/sbin/nologin", "/bin/false"), "a login shell: %r" % ent[6]
    st = os.stat("/var/lib/tollgate")
    assert st.st_uid == int(ent[2]) and (st.st_mode & 0o777) == 0o750, st
    r = run(["/usr/bin/tollgate", "--version"])
    assert r.stdout.strip() == "tollgate " + c.version, r.stdout


@case
def unit_is_sandboxed_and_verifies(c):
    need_install(c)
    with open(UNIT) as f:
        unit = f.read()
    for line in ("User=tollgate", "ProtectSystem=strict", "StateDirectory=tollgate",
                 "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID",
                 "ExecStart=/usr/bin/tollgate --config " + CONF, "ProtectHome=yes",
                 "CapabilityBoundingSet=", "PrivateTmp=yes"):
        assert re.search(r"^%s$" % re.escape(line), unit, re.M), "unit lacks %r" % line
    assert "@" not in "".join(l for l in unit.split("\n") if l.startswith("Exec")), \
        "unsubstituted @...@ in the unit"
    if not shutil.which("systemd-analyze"):
        skip("no systemd-analyze here: the unit was checked line by line only")
    r = run(["systemd-analyze", "verify", UNIT])
    assert r.returncode == 0 and not r.stderr.strip(), "systemd-analyze verify:\n" + r.stderr


@case
def check_accepts_installed_config(c):
    need_install(c)
    r = run(["/usr/bin/tollgate", "check", "--config", CONF])
    assert r.returncode == 0 and r.stdout.strip() == CONF + ": ok", r.stdout + r.stderr


@case
def agent_runs_from_installed_paths(c):
    need_install(c)
    if not shutil.which("setpriv"):
        skip("no setpriv (util-linux) to drop to the tollgate user")
    http, spop, settle = H.free_port(), H.free_port(), H.free_port()
    env = {"PATH": "/usr/bin:/bin", "TOLLGATE_STATE_DIR": "/var/lib/tollgate",
           "TOLLGATE_HTTP": "127.0.0.1:%d" % http, "TOLLGATE_AGENT_LISTEN": "127.0.0.1:%d" % spop,
           "TOLLGATE_SETTLE": "127.0.0.1:%d" % settle}
    log = open(os.path.join(c.tmp, "agent.log"), "w+")
    # as the unit runs it: its user and group, no privilege, from /
    p = subprocess.Popen(["setpriv", "--reuid=tollgate", "--regid=tollgate", "--init-groups",
                          "--no-new-privs", "/usr/bin/tollgate", "--config", CONF],
                         cwd="/", env=env, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    try:
        H.wait_for(lambda: H.tcp_accepts(http) and H.tcp_accepts(spop), 10.0, 0.05,
                   "the installed agent listening")
        st, _, body = H.http_request(http, "GET", "/metrics", None, None, 5.0)
        assert st == 200, st
        assert ('tollgate_build_info{version="%s"} 1' % c.version) in body.decode(), body[:500]
        owners = {os.stat(os.path.join(root, f)).st_uid
                  for root, _, files in os.walk("/var/lib/tollgate") for f in files}
        uid = int(run(["id", "-u", "tollgate"]).stdout)
        assert owners == {uid}, "state files %r, expected the tollgate user's" % owners
        p.send_signal(signal.SIGHUP)          # what ExecReload sends
        H.wait_for(lambda: "configuration reloaded from " + CONF in open(log.name).read(),
                   5.0, 0.05, "the agent reloading on SIGHUP")
        assert H.http_request(http, "GET", "/healthz", None, None, 5.0)[0] == 200
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.seek(0)
        print("NOTE: agent log:\n" + "".join("NOTE:   " + l for l in log.readlines()[-8:]),
              flush=True)


@case
def purge_removes_everything(c):
    need_install(c)
    r = run(["dpkg", "--purge", "tollgate"])
    assert r.returncode == 0, r.stdout + r.stderr
    c.mine = False
    assert not installed()
    for path in ("/usr/bin/tollgate", CONF, "/etc/tollgate", UNIT, "/var/lib/tollgate",
                 "/usr/share/tollgate"):
        assert not os.path.exists(path), "%s left after purge" % path


if __name__ == "__main__":
    main(setup, teardown)
