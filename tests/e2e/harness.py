"""harness.py -- real processes on free loopback ports, for end-to-end tests.

An Env owns one temporary work directory and the processes started in it (the
tollgate agent, haproxy, redis-server, the mock upstream, anything else). Each
process writes its stdout and stderr to files in the work directory; when a test
fails their tails are printed on stderr. Processes are stopped in reverse start
order (SIGTERM, then SIGKILL of the process group after a timeout) when the Env
closes, and an atexit hook plus SIGTERM/SIGHUP handlers (and, for processes
started from the main thread, PR_SET_PDEATHSIG) make sure nothing outlives the
test program, whatever happens.

    import harness as H
    with H.Env("echo") as env:                  # a failing block dumps the logs
        agent = env.agent({"agent": {"debug_messages": True}})
        up = env.mock_upstream()
        fe = env.free_port()
        env.write("spoe.conf", SPOE)
        env.haproxy(CFG.format(fe=fe, agent=agent.port, up=up.port), wait_ports=[fe])
        status, headers, body = H.http_request(fe, "GET", "/echo/1")

API (each documented where it is defined)
  Env(name)                      work dir + processes; context manager
    .path(*parts) / .write(name, content)       files in the work dir
    .free_port()                 same as free_port()
    .start(name, argv, ...)      any child, awaited on TCP port / unix socket / ready()
    .agent(config, ...)          ${BUILD}/tollgate --config (dict -> YAML, ports filled)
    .haproxy(cfg_text, ...)      haproxy -c -dW, then haproxy -f -db [-W]; awaits ports
    .haproxy_check(cfg_path)     haproxy -c only
    .redis()                     redis-server on a free port, no persistence
    .mock_upstream()             tests/e2e/mock_upstream.py, .requests() = what it saw
    .run(name, argv)             a one-shot command (tollgate check, ...)
    .stop_all() / .dump() / .close(failed)
  Proc                           .pid .alive() .send_signal() .stop() .kill()
                                 .restart() .wait_exit() .stdout() .stderr() .tail()
  wait_for(pred, timeout)        poll until truthy; TimeoutError naming what
  free_port(), tcp_accepts(), unix_accepts(), parse_listen(), to_yaml()
  http_request(port|conn, ...)   -> (status, HTTPMessage headers, bytes body)
  http_json(), http_connection() JSON body; a keep-alive connection
  curl(args), curl_request(url)  the real client: CompletedProcess / (status, h, body)
  parse_sse(body)                [(event, data)] of a text/event-stream body
  run_parallel(fn, items, n)     fn over items on n threads, results in order
  redis_cmd(port, *args)         one RESP command
  haproxy_cli(sock, cmd), haproxy_stat(sock, px, sv), server_status(sock, px, sv)
  haproxy_reload(proc, sock)     SIGUSR2 a master-worker haproxy, await a new worker
  read_jsonl(path), agent_binary(), build_dir()

Environment: BUILD (default "build") locates ${BUILD}/tollgate; KEEP=1 keeps the
work directory of a failed Env (KEEP=all keeps every one); HARNESS_VERBOSE=1
prints process starts and stops; HAPROXY / REDIS_SERVER override the binaries.

Rules followed here and expected from tests: every wait has a timeout and polls
(wait_for), never a bare sleep; ports come from free_port(); relative paths in
a haproxy configuration are relative to the work directory (haproxy runs there);
the agent runs from the repository root. Readiness probes open and close a TCP
connection: use `option dontlognull` to keep them out of haproxy's log.
"""
import atexit
import ctypes
import grp
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAPROXY = os.environ.get("HAPROXY", "haproxy")
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")
MOCK_UPSTREAM = os.path.join(REPO, "tests", "e2e", "mock_upstream.py")
VERBOSE = os.environ.get("HARNESS_VERBOSE") == "1"


def haproxy_version():
    """HAPROXY's version as a tuple of ints, e.g. (2, 6, 12)."""
    global _HAPROXY_VERSION
    if _HAPROXY_VERSION is None:
        try:
            out = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout
        except OSError:                 # no HAProxy here: the suites that need one skip
            out = ""
        m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
        _HAPROXY_VERSION = tuple(int(x or 0) for x in m.groups()) if m else (0, 0, 0)
    return _HAPROXY_VERSION


_HAPROXY_VERSION = None

# HAProxy runs here as haproxy/README.md tells an operator to start it: 2.6
# with the glibc setting that keeps 4 MiB buffers cheap (`tollgate
# glibc-tunables`, agent/render.h; without it the rendered default ceiling
# falls to 117760 bytes, which a test shows with GLIBC_TUNABLES=""). Every
# process started here inherits it; 2.8+ runs with the environment as it is.
def _advise_glibc():
    if "GLIBC_TUNABLES" in os.environ or haproxy_version()[:2] != (2, 6):
        return
    try:
        out = subprocess.run([agent_binary(), "glibc-tunables", "%d.%d.%d" % haproxy_version()],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return                          # not built yet: nothing here starts HAProxy
    os.environ["GLIBC_TUNABLES"] = out


def build_dir():
    """The build directory (env BUILD, default "build"), absolute."""
    return os.path.join(REPO, os.environ.get("BUILD", "build"))


def agent_binary():
    """Path of the tollgate binary under build_dir()."""
    return os.path.join(build_dir(), "tollgate")


_advise_glibc()


def haproxy_user():
    """"haproxy" when that user exists (Debian's haproxy package makes it):
    the user a root-started HAProxy drops to in these tests; else None."""
    try:
        pwd.getpwnam("haproxy")
        grp.getgrnam("haproxy")
        return "haproxy"
    except KeyError:
        return None


def _log(msg):
    if VERBOSE:
        sys.stderr.write("[harness] %s\n" % msg)


# --------------------------------------------------------------------------
# Waiting and ports

def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or raise
    TimeoutError after timeout seconds. Exceptions from pred count as false;
    the last one is named in the TimeoutError."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 -- polling tolerates failures
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s%s" % (
                timeout, what, " (last error: %r)" % (last,) if last else ""))
        time.sleep(interval)


_given_ports = set()
_ports_lock = threading.Lock()


def free_port():
    """A TCP port on 127.0.0.1 that was free just now and that this process
    has not handed out before."""
    with _ports_lock:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _given_ports:
                _given_ports.add(port)
                return port
    raise RuntimeError("no free port found")


def tcp_accepts(port, host="127.0.0.1", timeout=0.5):
    """True if a TCP connection to host:port succeeds (then closed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_accepts(path, timeout=0.5):
    """True if a stream connection to the unix socket path succeeds."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------
# Processes

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _child_setup():
    # Runs in the child between fork and exec: die with the parent thread.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    """One child process. Attributes: name, argv, popen, pid, stdout_path,
    stderr_path, cwd, and whatever the starter adds (port, unix, ...)."""

    def __init__(self, env, name, argv, cwd, extra_env, ready):
        self.env, self.name, self.argv = env, name, list(argv)
        self.cwd, self.extra_env, self.ready = cwd, extra_env, ready
        self.stdout_path = env.path(name + ".stdout")
        self.stderr_path = env.path(name + ".stderr")
        self.popen = None
        self.starts = 0

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def _spawn(self):
        penv = dict(os.environ)
        penv.update(self.extra_env or {})
        mark = "--- %s start #%d: %s\n" % (time.strftime("%H:%M:%S"),
                                           self.starts + 1, " ".join(self.argv))
        out = open(self.stdout_path, "a")
        err = open(self.stderr_path, "a")
        try:
            out.write(mark)
            err.write(mark)
            out.flush()
            err.flush()
            main = threading.current_thread() is threading.main_thread()
            self.popen = subprocess.Popen(
                self.argv, cwd=self.cwd, env=penv, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
                preexec_fn=_child_setup if main else None)
        finally:
            out.close()
            err.close()
        self.starts += 1
        _log("started %s pid %d: %s" % (self.name, self.popen.pid, " ".join(self.argv)))

    def wait_ready(self, timeout=10.0):
        """Wait until ready() is true; fail at once if the process exits."""
        if self.ready is None:
            return

        def check():
            if self.popen.poll() is not None:
                raise ProcessExited("%s exited with status %s before it was ready\n%s"
                                    % (self.name, self.popen.returncode, self.tail()))
            return self.ready()
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError("%s not ready after %.1fs\n%s"
                                   % (self.name, timeout, self.tail()))
            time.sleep(0.02)

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def send_signal(self, sig):
        """Send sig to the process itself (not its group)."""
        if self.alive():
            self.popen.send_signal(sig)

    def wait_exit(self, timeout=10.0):
        """Wait for the process to exit; return its status (TimeoutError)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("%s (pid %d) still running after %.1fs"
                               % (self.name, self.pid, timeout)) from None

    def stop(self, timeout=5.0, sig=signal.SIGTERM):
        """sig (SIGTERM), wait up to timeout, then SIGKILL the process group.
        Returns the exit status (None if never started)."""
        if self.popen is None:
            return None
        p = self.popen
        if p.poll() is None:
            _log("stopping %s pid %d" % (self.name, p.pid))
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                sys.stderr.write("[harness] %s (pid %d) ignored %s for %.1fs: SIGKILL\n"
                                 % (self.name, p.pid, signal.Signals(sig).name, timeout))
                _killpg(p.pid)
                p.wait(5)
        # The group outlives its leader if the leader forked (haproxy -W workers).
        _killpg(p.pid)
        return p.returncode

    def kill(self):
        """SIGKILL the process group at once (a crash, for tests)."""
        if self.popen is not None:
            _killpg(self.popen.pid)
            self.popen.wait(5)

    def restart(self, timeout=10.0):
        """Stop (if running), start again with the same argv, wait until ready."""
        self.stop()
        self._spawn()
        self.wait_ready(timeout)
        return self

    def stdout(self):
        return _read(self.stdout_path)

    def stderr(self):
        return _read(self.stderr_path)

    def tail(self, lines=30):
        """The last lines of stderr and stdout, labelled, for error messages."""
        out = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            text = _read(path).rstrip("\n")
            if not text:
                continue
            rows = text.split("\n")[-lines:]
            out.append("----- %s %s (last %d lines, %s) -----" % (self.name, label,
                                                                 len(rows), path))
            out.extend(rows)
        return "\n".join(out)


class ProcessExited(RuntimeError):
    pass


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# --------------------------------------------------------------------------
# YAML for the agent's config (the subset it needs; stdlib has no YAML)

def to_yaml(obj, indent=0):
    """Block-style YAML of dicts, lists, str, int, float, bool and None.
    Strings are always double-quoted (JSON escapes are valid YAML)."""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            key = _yaml_key(k)
            if isinstance(v, (dict, list)) and v:
                lines.append("%s%s:\n%s" % (pad, key, to_yaml(v, indent + 1)))
            else:
                lines.append("%s%s: %s\n" % (pad, key, _yaml_scalar(v)))
    elif isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 1)
                lines.append("%s- %s" % (pad, inner.lstrip(" ")))
            else:
                lines.append("%s- %s\n" % (pad, _yaml_scalar(v)))
    else:
        lines.append(pad + _yaml_scalar(obj) + "\n")
    return "".join(lines)


def _yaml_key(k):
    k = str(k)
    if k and all(c.isalnum() or c in "_-." for c in k) and not k[0] in "-.":
        return k
    return json.dumps(k)


def _yaml_scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(str(v), ensure_ascii=False)


# --------------------------------------------------------------------------
# The environment

_live_envs = []


class Env:
    """A work directory plus the processes started in it. Use as a context
    manager (an exception inside the block dumps the logs), or call
    close(failed) yourself."""

    def __init__(self, name="e2e"):
        self.name = name
        self.workdir = tempfile.mkdtemp(prefix="tg-%s-" % name)
        self.procs = []
        self.closed = False
        _live_envs.append(self)

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        self.close(failed=etype is not None)
        return False

    def path(self, *parts):
        """Absolute path inside the work directory."""
        return os.path.join(self.workdir, *parts)

    def write(self, name, content):
        """Write content (str or bytes) to work-dir file name; return its path."""
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        return p

    @staticmethod
    def free_port():
        return free_port()

    # -- generic start ---------------------------------------------------

    def start(self, name, argv, cwd=None, env=None, ready=None, wait_tcp=None,
              wait_unix=None, timeout=10.0):
        """Start argv as child `name` (unique in this Env) and wait until it
        is ready: ready() true, and/or TCP port wait_tcp (int or list) and/or
        unix socket wait_unix (path or list) accepting. Returns a Proc."""
        if any(p.name == name for p in self.procs):
            raise ValueError("process name %r already used in this Env" % name)
        checks = []
        for port in _as_list(wait_tcp):
            checks.append(lambda port=port: tcp_accepts(port))
        for path in _as_list(wait_unix):
            checks.append(lambda path=path: unix_accepts(path))
        if ready is not None:
            checks.append(ready)
        ready_fn = (lambda: all(c() for c in checks)) if checks else None
        proc = Proc(self, name, argv, cwd or self.workdir, env, ready_fn)
        self.procs.append(proc)
        proc._spawn()
        proc.wait_ready(timeout)
        return proc

    def run(self, name, argv, cwd=None, timeout=30.0, check=True):
        """Run a one-shot command (e.g. `tollgate check`) to completion; its
        output goes to NAME.stdout / NAME.stderr in the work dir too. Returns
        the CompletedProcess (text); check raises RuntimeError on a non-zero
        status, with the output."""
        r = subprocess.run(argv, cwd=cwd or REPO, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        with open(self.path(name + ".stdout"), "a") as f:
            f.write(r.stdout)
        with open(self.path(name + ".stderr"), "a") as f:
            f.write(r.stderr)
        if check and r.returncode != 0:
            raise RuntimeError("%s exited with status %d:\n%s%s" % (
                " ".join(argv), r.returncode, r.stdout, r.stderr))
        return r

    # -- the agent -------------------------------------------------------

    def agent(self, config, name="agent", fill=True, wait_tcp=None, wait_unix=None,
              args=(), timeout=10.0):
        """Start ${BUILD}/tollgate --config FILE from the repo root.
        config: a dict (written as YAML) or YAML text. With a dict and fill,
        missing agent.listen / agent.http / agent.settle get free 127.0.0.1
        ports and agent.state_dir a work-dir path. The SPOP listeners are
        awaited: agent.listen "HOST:PORT" over TCP ("unix:PATH" as a unix
        socket) and agent.unix (a socket path), or the explicit wait_tcp /
        wait_unix.
        The Proc has .config_path, .config (dict or None), .port, .unix,
        .http_port, .settle_port (None when not known)."""
        binary = agent_binary()
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError("%s is not built (make BUILD=%s)"
                                    % (binary, os.environ.get("BUILD", "build")))
        cfg_dict = None
        if isinstance(config, dict):
            cfg_dict = json.loads(json.dumps(config))  # deep copy
            a = cfg_dict.setdefault("agent", {})
            if fill:
                a.setdefault("listen", "127.0.0.1:%d" % free_port())
                a.setdefault("http", "127.0.0.1:%d" % free_port())
                a.setdefault("settle", "127.0.0.1:%d" % free_port())
                a.setdefault("state_dir", self.path(name + "-state"))
            if a.get("state_dir"):
                os.makedirs(a["state_dir"], exist_ok=True)
            text = to_yaml(cfg_dict)
        else:
            text = config
        cfg_path = self.write(name + ".yaml", text)
        port = unix = http_port = settle_port = None
        if cfg_dict is not None:
            a = cfg_dict.get("agent", {})
            port, unix = parse_listen(a.get("listen"))
            if a.get("unix"):
                unix = a["unix"]
            http_port = parse_listen(a.get("http"))[0]
            settle_port = parse_listen(a.get("settle"))[0]
        wt = wait_tcp if wait_tcp is not None else port
        wu = wait_unix if wait_unix is not None else unix
        proc = self.start(name, [binary, "--config", cfg_path] + list(args), cwd=REPO,
                          wait_tcp=wt, wait_unix=wu, timeout=timeout)
        proc.config_path, proc.config = cfg_path, cfg_dict
        proc.port, proc.unix = port, unix
        proc.http_port, proc.settle_port = http_port, settle_port
        return proc

    # -- haproxy ---------------------------------------------------------

    def haproxy_check(self, cfg_path, zero_warning=True):
        """haproxy -c -f cfg_path (with -dW: warnings are errors) from the work
        dir; raise RuntimeError with haproxy's output if it is refused."""
        argv = [HAPROXY, "-c", "-f", cfg_path] + (["-dW"] if zero_warning else [])
        r = subprocess.run(argv, cwd=self.workdir, capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError("haproxy refused %s (status %d):\n%s%s\n--- config ---\n%s"
                               % (cfg_path, r.returncode, r.stdout, r.stderr,
                                  _numbered(_read(cfg_path))))
        return r.stdout + r.stderr

    def haproxy(self, cfg, name="haproxy", wait_ports=(), wait_unix=(),
                master_worker=False, zero_warning=True, timeout=10.0):
        """Write cfg (text) to NAME.cfg, validate it (haproxy_check), then run
        `haproxy -f NAME.cfg -db` (with -W when master_worker, so reload()
        works) in the work dir and wait until every port in wait_ports and
        socket in wait_unix accepts. The Proc has .cfg_path."""
        cfg_path = self.write(name + ".cfg", cfg)
        self.haproxy_check(cfg_path, zero_warning)
        argv = [HAPROXY, "-f", cfg_path, "-db"] + (["-W"] if master_worker else [])
        proc = self.start(name, argv, cwd=self.workdir, wait_tcp=list(wait_ports),
                          wait_unix=list(wait_unix), timeout=timeout)
        proc.cfg_path = cfg_path
        proc.master_worker = master_worker
        return proc

    # -- redis and the mock upstream -------------------------------------

    def redis(self, name="redis", args=(), timeout=10.0):
        """redis-server on a free port, no persistence. The Proc has .port and
        .url ("redis://127.0.0.1:PORT")."""
        port = free_port()
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.workdir,
                "--logfile", ""] + list(args)
        proc = self.start(name, argv, wait_tcp=port, timeout=timeout,
                          ready=lambda: redis_cmd(port, "PING") == "PONG")
        proc.port, proc.url = port, "redis://127.0.0.1:%d" % port
        return proc

    def mock_upstream(self, name="upstream", timeout=10.0):
        """tests/e2e/mock_upstream.py on a free port, recording to
        NAME.requests.jsonl. The Proc has .port, .record_path, .requests()
        (the recorded requests, a list of dicts) and .clear_requests()."""
        port = free_port()
        record = self.path(name + ".requests.jsonl")
        open(record, "w").close()
        argv = [sys.executable, MOCK_UPSTREAM, "--port", str(port), "--record", record]
        proc = self.start(name, argv, wait_tcp=port, timeout=timeout)
        proc.port, proc.record_path = port, record
        proc.requests = lambda: read_jsonl(record)
        proc.clear_requests = lambda: open(record, "w").close()
        return proc

    # -- the end ---------------------------------------------------------

    def stop_all(self, timeout=5.0):
        """Stop every process, the most recently started first."""
        for p in reversed(self.procs):
            try:
                p.stop(timeout)
            except Exception as e:  # noqa: BLE001 -- keep stopping the others
                sys.stderr.write("[harness] stopping %s: %r\n" % (p.name, e))

    def dump(self, lines=30):
        """Print the tails of every process's logs to stderr."""
        sys.stderr.write("===== harness env %r, work dir %s =====\n" % (self.name,
                                                                        self.workdir))
        for p in self.procs:
            state = "running" if p.alive() else "exit status %s" % (
                p.popen.returncode if p.popen else "never started")
            sys.stderr.write("== %s (pid %s, %s)\n" % (p.name, p.pid, state))
            t = p.tail(lines)
            if t:
                sys.stderr.write(t + "\n")
        sys.stderr.flush()

    def close(self, failed=False):
        """Stop everything; on failure dump the logs; remove the work dir unless
        KEEP=1 and failed (or KEEP=all)."""
        if self.closed:
            return
        self.closed = True
        # Exit statuses are only known after stop; dump after stopping so the
        # logs are complete, but collect the liveness first.
        self.stop_all()
        if self in _live_envs:
            _live_envs.remove(self)
        if failed:
            self.dump()
        keep = os.environ.get("KEEP", "")
        if keep == "all" or (keep == "1" and failed):
            sys.stderr.write("[harness] kept work dir %s\n" % self.workdir)
        else:
            if failed:
                sys.stderr.write("[harness] removed work dir %s (KEEP=1 keeps it)\n"
                                 % self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)


def _as_list(v):
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def _numbered(text):
    return "".join("%4d  %s\n" % (i + 1, l) for i, l in enumerate(text.split("\n")))


def parse_listen(addr):
    """(port, unix_path) of an address "HOST:PORT", ":PORT", "unix@PATH",
    "unix:PATH" or "/PATH"; (None, None) when absent or unknown."""
    if not addr or not isinstance(addr, str):
        return None, None
    for pfx in ("unix@", "unix:"):
        if addr.startswith(pfx):
            return None, addr[len(pfx):]
    if addr.startswith("/"):
        return None, addr
    host, _, port = addr.rpartition(":")
    return (int(port), None) if port.isdigit() else (None, None)


def _cleanup_all():
    for env in list(reversed(_live_envs)):
        try:
            env.close(failed=False)
        except Exception:  # noqa: BLE001
            pass


atexit.register(_cleanup_all)


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


if threading.current_thread() is threading.main_thread():
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_sig) in (signal.SIG_DFL, None):
            signal.signal(_sig, _on_signal)


# --------------------------------------------------------------------------
# Clients

def http_request(target, method="GET", path="/", body=None, headers=None,
                 timeout=10.0, host="127.0.0.1"):
    """One HTTP/1.1 request with http.client. target: a port (a new connection,
    closed afterwards) or an http.client.HTTPConnection (reused: keep-alive).
    body: bytes, str, or a dict/list (sent as JSON with its content-type).
    Returns (status, headers, body): headers is an http.client.HTTPMessage
    (case-insensitive .get(), .get_all()), body is bytes."""
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    own = not isinstance(target, http.client.HTTPConnection)
    conn = http.client.HTTPConnection(host, target, timeout=timeout) if own else target
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, data
    except Exception:
        conn.close()
        raise
    finally:
        if own:
            conn.close()


def http_json(target, method="GET", path="/", body=None, headers=None, timeout=10.0):
    """http_request, with the body parsed as JSON (None if it is not JSON)."""
    status, hdrs, data = http_request(target, method, path, body, headers, timeout)
    try:
        return status, hdrs, json.loads(data)
    except ValueError:
        return status, hdrs, None


def http_connection(port, timeout=10.0, host="127.0.0.1"):
    """A keep-alive http.client.HTTPConnection for http_request(conn, ...)."""
    return http.client.HTTPConnection(host, port, timeout=timeout)


def curl(args, timeout=30.0, check=False):
    """Run `curl ARGS` (a list) and return the CompletedProcess (stdout and
    stderr as bytes). Add "-sS" yourself when wanted."""
    return subprocess.run(["curl"] + list(args), capture_output=True,
                          timeout=timeout, check=check)


def curl_request(url, *args, timeout=30.0):
    """curl -sS URL ARGS...; returns (status, headers, body) like http_request
    (headers of the last response when curl followed redirects or 100s)."""
    with tempfile.TemporaryDirectory(prefix="tg-curl-") as d:
        hpath, bpath = os.path.join(d, "h"), os.path.join(d, "b")
        r = curl(["-sS", "-D", hpath, "-o", bpath] + list(args) + [url], timeout)
        if r.returncode != 0:
            raise RuntimeError("curl %s failed (%d): %s" % (url, r.returncode,
                                                            r.stderr.decode(errors="replace")))
        raw = open(hpath, "rb").read()
        body = open(bpath, "rb").read()
    blocks = [b for b in raw.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    lines = blocks[-1].decode("latin-1").split("\n")
    status = int(lines[0].split()[1])
    msg = http.client.HTTPMessage()
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            msg[k.strip()] = v.strip()
    return status, msg, body


def parse_sse(body):
    """The events of a text/event-stream body: a list of (event, data) with
    event None when the event has no "event:" line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        ev, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                ev = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            out.append((ev, "\n".join(data)))
    return out


def read_jsonl(path):
    """The JSON objects of a JSON-lines file (a partial last line is skipped)."""
    out = []
    for line in _read(path).split("\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def redis_cmd(port, *args, host="127.0.0.1", timeout=2.0):
    """One Redis command over RESP; returns str, int, list, or None; raises
    RuntimeError on an error reply."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        req = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            req += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(req)
        f = s.makefile("rb")
        return _resp_read(f)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError("redis error: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise ValueError("bad RESP reply %r" % line)


def haproxy_cli(sock_path, command, timeout=5.0):
    """Send one command to haproxy's stats socket (or master CLI) at sock_path,
    a unix socket's path or a (host, port); return the full answer text."""
    s = socket.socket(socket.AF_INET if isinstance(sock_path, tuple) else socket.AF_UNIX,
                      socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode(errors="replace")
    finally:
        s.close()


def haproxy_stat(sock_path, proxy=None, server=None):
    """`show stat` as a list of dicts (CSV columns: pxname, svname, status,
    check_status, ...), filtered on proxy and server names when given."""
    text = haproxy_cli(sock_path, "show stat")
    lines = [l for l in text.split("\n") if l.strip()]
    if not lines or not lines[0].startswith("# "):
        raise RuntimeError("unexpected show stat answer: %r" % text[:200])
    cols = lines[0][2:].split(",")
    rows = [dict(zip(cols, l.split(","))) for l in lines[1:]]
    return [r for r in rows if (proxy is None or r.get("pxname") == proxy)
            and (server is None or r.get("svname") == server)]


def server_status(sock_path, proxy, server):
    """The status column of one server in `show stat` ("UP", "DOWN", "no
    check", ...), or None if it is not listed."""
    rows = haproxy_stat(sock_path, proxy, server)
    return rows[0]["status"] if rows else None


def haproxy_reload(proc, sock_path, timeout=10.0):
    """Reload a master-worker haproxy (SIGUSR2 to the master) and wait until
    the stats socket at sock_path answers from a new worker (its Pid in
    `show info` changed). Returns the new worker's pid."""
    if not getattr(proc, "master_worker", False):
        raise ValueError("haproxy was not started with master_worker=True")
    old = _haproxy_pid(sock_path)
    proc.send_signal(signal.SIGUSR2)
    seen = []

    def new_pid():
        p = _haproxy_pid(sock_path)
        seen.append(p)
        return p if p and p != old else None
    try:
        return wait_for(new_pid, timeout, 0.05, "a new haproxy worker")
    except TimeoutError as e:
        raise TimeoutError("%s: the stats socket answered from pids %r (old %r)"
                           % (e, sorted(set(seen), key=str), old)) from None


def _haproxy_pid(sock_path):
    for line in haproxy_cli(sock_path, "show info").split("\n"):
        if line.startswith("Pid:"):
            return int(line.split(":", 1)[1])
    return None


def run_parallel(fn, items, threads=20, timeout=60.0):
    """fn(item) for every item on `threads` threads; returns the results in
    item order. The first exception is re-raised (after all finish)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=threads) as ex:
        futs = [ex.submit(fn, it) for it in items]
        return [f.result(timeout=timeout) for f in futs]
