"""tests/bench/benchlib.py -- what the Python benchmarks share: CPU time of a
process from /proc, medians, and the driver that runs a benchmark once per
HAProxy in HAPROXY_VERSIONS, each in a process of its own (the harness reads
HAPROXY when it is imported)."""
import json
import os
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of pid, in seconds."""
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


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
