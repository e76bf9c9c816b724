"""tests/bench/benchlib.py -- what the Python benchmarks share: CPU time of a
process from /proc, medians, many concurrent SSE streams read on one
selector, and the driver that runs a benchmark once per HAProxy in
HAPROXY_VERSIONS, each in a process of its own (the harness reads HAPROXY
when it is imported)."""
import json
import os
import selectors
import socket
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of pid, in seconds."""
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def run_streams(port, req, n, timeout, cut_after=None):
    """n connections to 127.0.0.1:port, each sending the raw request `req`
    and reading its SSE answer, all at once on one selector; returns (events
    received, streams that ended with [DONE], gaps between a stream's events
    in ms, from its second event on). cut_after: close each stream once it
    has received that many events."""
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, {"buf": b"", "events": 0, "last": None})
    events, done, gaps, open_n = 0, 0, [], n
    deadline = time.monotonic() + timeout
    while open_n and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            st, s = key.data, key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            now = time.monotonic()
            if data:
                got = data.count(b"data: ")
                if got:
                    if st["last"] is not None and st["events"] >= 2:
                        gaps.append((now - st["last"]) * 1000.0)
                    st["last"] = now
                    st["events"] += got
                st["buf"] = (st["buf"] + data)[-64:]
                if cut_after is None or st["events"] < cut_after:
                    continue
            events += st["events"]
            if b"[DONE]" in st["buf"]:
                done += 1
            sel.unregister(s)
            s.close()
            open_n -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return events, done, gaps


def per_version(script, one_version, name):
    """`script --one HAPROXY` prints one_version(HAPROXY) as a RESULT line;
    without --one, run it for each HAProxy in HAPROXY_VERSIONS (default:
    $HAPROXY or haproxy). Returns (rows, failed)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print("RESULT " + json.dumps(one_version(sys.argv[2])))
        sys.exit(0)
    versions = (os.environ.get("HAPROXY_VERSIONS") or os.environ.get("HAPROXY") or
                "haproxy").split()
    rows, failed = [], 0
    for hp in versions:
        r = subprocess.run([sys.executable, os.path.abspath(script), "--one", hp],
                           capture_output=True, text=True)
        line = [l for l in r.stdout.split("\n") if l.startswith("RESULT ")]
        if r.returncode != 0 or not line:
            print("%s: %s failed:\n%s%s" % (name, hp, r.stdout[-3000:], r.stderr[-3000:]))
            failed = 1
            continue
        rows.append(json.loads(line[0][7:]))
    return rows, failed
