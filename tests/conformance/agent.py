"""agent.py -- start and stop the tollgate agent for the conformance suite.

    a = Agent(extra={"max_inflight": 4})   # extra keys of the agent: section
    a.start()                              # waits for the TCP port (5 s)
    c = a.client()                         # spop.Client on the TCP listener
    u = a.client(unix=True)                # ... on the unix socket
    a.stop()                               # SIGTERM, asserts exit status 0

Binary: ${BUILD:-build}/tollgate relative to the repository root. Each agent
gets a temporary directory holding its config, state dir, unix socket and the
log of its stdout+stderr (printed by dump_log() when a case fails).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import spop

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def binary():
    return os.path.join(REPO, os.environ.get("BUILD", "build"), "tollgate")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _yaml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return '"%s"' % v


class Agent:
    def __init__(self, extra=None, name="agent"):
        self.dir = tempfile.mkdtemp(prefix="tollgate-conf-%s-" % name[:40])
        self.port = free_port()
        self.http_port = free_port()
        self.settle_port = free_port()
        self.unix_path = os.path.join(self.dir, "spop.sock")
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "tollgate.yaml")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.settings = {
            "listen": "127.0.0.1:%d" % self.port,
            "unix": self.unix_path,
            "http": "127.0.0.1:%d" % self.http_port,
            "settle": "127.0.0.1:%d" % self.settle_port,
            "state_dir": self.state_dir,
            "max_frame_size": 16384,
            "idle_timeout": "1s",
            "hello_timeout": "1s",
            "processing_timeout": "2s",
            "drain_timeout": "5s",
            "debug_messages": True,
        }
        for k, v in (extra or {}).items():
            if v is None:
                self.settings.pop(k, None)    # leave the default
            else:
                self.settings[k] = v
        self.proc = None
        self.logf = None
        self.write_config()

    # -- configuration
    def config_text(self, settings=None):
        settings = self.settings if settings is None else settings
        lines = ["agent:"]
        for k, v in settings.items():
            if k in ("idle_timeout", "hello_timeout", "processing_timeout",
                     "drain_timeout") and isinstance(v, str):
                lines.append("  %s: %s" % (k, v))
            else:
                lines.append("  %s: %s" % (k, _yaml_value(v)))
        return "\n".join(lines) + "\n"

    def write_config(self, text=None):
        with open(self.config_path, "w") as f:
            f.write(self.config_text() if text is None else text)

    # -- process
    def start(self, timeout=5.0):
        b = binary()
        if not os.path.exists(b):
            raise RuntimeError("agent binary %s not found (build it first)" % b)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([b, "--config", self.config_path],
                                     cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("agent exited with status %d at startup\n%s"
                                   % (self.proc.returncode, self.log()))
            try:
                s = socket.create_connection(("127.0.0.1", self.port), 0.2)
                s.close()
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not listen on %d within %.0fs\n%s"
                                   % (self.port, timeout, self.log()))
            time.sleep(0.02)
        # a connection that just closes must not disturb anything; the unix
        # socket must be there too
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.unix_path):
            if time.monotonic() > deadline:
                raise RuntimeError("unix socket %s not created" % self.unix_path)
            time.sleep(0.02)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=6.0):
        """SIGTERM and wait; return the exit status (kills after timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = "killed after %.0fs" % timeout
                self._close_log()
                return rc
        self._close_log()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self.logf:
            self.logf.close()
            self.logf = None

    def cleanup(self):
        self.kill()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- logs
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def dump_log(self, title=""):
        sys.stderr.write("---- agent log %s (%s) ----\n%s---- end of log ----\n"
                         % (title, self.log_path, self.log()[-6000:]))

    # -- clients
    def addr(self, unix=False):
        return self.unix_path if unix else ("127.0.0.1", self.port)

    def client(self, unix=False, timeout=3.0):
        return spop.Client(self.addr(unix), timeout=timeout)


class Shared:
    """One agent shared by the cases of a module (tcase.main setup).

    A start failure is remembered and raised by every case, so each case is
    reported as FAIL instead of the module dying without case lines."""

    def __init__(self, extra=None, name="shared"):
        self.name = name
        self.error = None
        self.agent = None
        try:
            self.agent = Agent(extra, name).start()
        except Exception as e:  # noqa: BLE001 -- reported by each case
            self.error = e
            sys.stderr.write("agent start failed: %s\n" % e)

    def get(self):
        if self.error:
            raise RuntimeError("agent not running: %s" % self.error)
        if not self.agent.alive():
            raise RuntimeError("agent died (status %r)\n%s"
                               % (self.agent.proc.returncode, self.agent.log()))
        return self.agent

    def teardown(self):
        if self.agent is None:
            return
        rc = self.agent.stop()
        if rc != 0:
            self.agent.dump_log("after SIGTERM")
            print("FAIL: %s_agent_exits_0_on_sigterm (status %r)" % (self.name, rc),
                  flush=True)
        else:
            print("PASS: %s_agent_exits_0_on_sigterm" % self.name, flush=True)
        self.agent.cleanup()


def assert_serving(agent, unix=False):
    """The agent process is alive and a new connection completes a HELLO and
    a NOTIFY/ACK exchange."""
    assert agent.alive(), "agent died (status %r)" % (agent.proc.returncode,)
    with agent.client(unix=unix) as c:
        c.hello()
        c.notify(7, 9, [("tollgate-echo", [("alive", spop.BOOL(True))])])
        f = c.expect_ack(7, 9)
        assert f.payload == spop.encode_set_var("alive", spop.BOOL(True)), \
            "echo after the previous case: %r" % f.payload


def logged(fn):
    """Wrap a case taking a Shared: dump the agent log when it fails."""
    import functools

    @functools.wraps(fn)
    def wrapper(shared):
        try:
            fn(shared)
        except BaseException:
            if shared.agent is not None:
                shared.agent.dump_log(fn.__name__)
            raise
    return wrapper
