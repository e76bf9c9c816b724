"""test_docker_static.py -- the docker-compose demo stack (docker/), checked
without a Docker engine (`make docker-test` runs the stack on one:
tests/docker/e2e/test_compose_stack.py).

What it proves:
  - docker/docker-compose.yml, docker-compose.grafana.yml, prometheus.yml
    and the Grafana provisioning files parse (a strict reader of the plain
    YAML subset they are written in: block mappings and lists, flow lists,
    quoted and plain scalars; anything else -- anchors, tags, multi-line
    scalars -- is refused, so the files stay readable here without PyYAML);
  - compose: no top-level `name:` (compose 1.29 refuses it); four services
    in docker-compose.yml and Grafana in docker-compose.grafana.yml (no
    Debian package, so no stand-in: the stack runs without it); the five
    services, merged, exist with an image or a build; every file or
    directory it mounts or builds from exists; named volumes are declared;
    published host ports are unique and are the seed's (8080 gateway, 8001
    agent, 9090 Prometheus, 3000 Grafana) and match what the services listen
    on; depends_on names existing services, has no cycle, and every
    `service_healthy` target has a healthcheck (in compose or its image's
    Dockerfile); every ${VAR} of docker/tollgate.yaml without a default is
    given by the agent's environment; the agent's listeners are reachable
    from other containers; docker/README.md's command and ports are these;
  - the HAProxy hand-over: the haproxy service loads haproxy.cfg from a
    volume the agent mounts at the same path (read-only for haproxy), and
    the agent's entrypoint renders into that path; HAProxy starts with the
    GLIBC_TUNABLES `tollgate glibc-tunables` advises for its image's version;
  - Dockerfile: both stages are debian:bookworm-slim; every COPY source
    exists and survives docker/Dockerfile.dockerignore; COPY --from names a
    stage; the build stage installs the -dev package of every library the
    Makefile's LDLIBS links (found with dpkg -S) and runs `make
    build/tollgate`; the runtime stage installs the package of every shared
    library the binary needs (ldd + dpkg -S), runs as a non-root USER, has a
    HEALTHCHECK on /healthz and the scripts it names; every apt package named
    exists in Debian 12 (`apt-cache show`);
  - the stand-ins of `make docker-test` (docker/standin/): one per
    third-party image but Grafana's, FROM debian:bookworm-slim, labelled with
    the tag compose runs, installing packages of Debian 12;
  - `tollgate check --config docker/tollgate.yaml` passes with the compose
    environment; docker/entrypoint.sh renders HAProxy's files
    (`tollgate haproxy-config`) and `haproxy -c` accepts them once the
    compose service names (`agent`, `redis`, ...) are replaced by 127.0.0.1
    -- they resolve only inside the compose network -- with the mock
    provider and with PROVIDER_TYPE=qwen; the rendered files are
    world-readable (the haproxy container runs as another user), name each
    other inside the rendered directory, and every `server` is a compose
    service on a port it listens on, never a wildcard or loopback address;
  - Prometheus scrapes the agent's service name and HTTP port at /metrics;
    Grafana's datasource is the prometheus service and its dashboard
    provider reads the directory compose mounts;
  - the Grafana dashboard JSON parses; every PromQL expression (panels and
    template variables) names only metrics of agent/metrics.h (histograms
    with _bucket/_sum/_count), only their labels, and known functions; the
    seed's views are there (tokens in/out, by provider/model, by consumer,
    rejections by decision/status, admission p99, quota remaining, store
    breaker, limit decisions); panel ids are unique and panels do not overlap;
  - the stack without containers: docker/entrypoint.sh runs the agent on
    docker/tollgate.yaml (its addresses moved to free loopback ports, Redis a
    local redis-server), docker/healthcheck.sh reports it healthy, /metrics
    declares every metric the dashboard uses, and HAProxy on the rendered
    configuration answers the walkthrough (chat 200 then 429, admin quota).

What it cannot prove without an engine: that the images build and pull,
that volumes get the image's ownership, that containers resolve each other.

Environment: BUILD (default build) locates ${BUILD}/tollgate.
"""
import fnmatch
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

from tcase import case, main, skip  # noqa: E402
import harness as H  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DOCKER = os.path.join(REPO, "docker")
COMPOSE = os.path.join(DOCKER, "docker-compose.yml")
COMPOSE_GRAFANA = os.path.join(DOCKER, "docker-compose.grafana.yml")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
DOCKERIGNORE = os.path.join(DOCKER, "Dockerfile.dockerignore")
TG_YAML = os.path.join(DOCKER, "tollgate.yaml")
PROM_YML = os.path.join(DOCKER, "prometheus.yml")
DASHBOARD = os.path.join(DOCKER, "grafana", "dashboards", "tollgate.json")
GF_DS = os.path.join(DOCKER, "grafana", "provisioning", "datasources", "prometheus.yml")
GF_DASH = os.path.join(DOCKER, "grafana", "provisioning", "dashboards", "dashboards.yml")
METRICS_H = os.path.join(REPO, "agent", "metrics.h")
MAKEFILE = os.path.join(REPO, "Makefile")

SERVICES = ["redis", "agent", "haproxy", "prometheus", "grafana"]
SEED_PORTS = {"haproxy": 8080, "agent": 8001, "prometheus": 9090, "grafana": 3000}


# ---------------------------------------------------------------- YAML subset

class YamlSubsetError(ValueError):
    pass


def _strip_comment(line):
    """The line without its comment (a # at the start or after a blank,
    outside quotes)."""
    q = None
    for i, c in enumerate(line):
        if q:
            if c == q:
                q = None
        elif c in "'\"":
            q = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _split_flow(text, where):
    """Items of a flow list body, split on commas outside quotes."""
    items, cur, q = [], "", None
    for c in text:
        if q:
            cur += c
            if c == q:
                q = None
        elif c in "'\"":
            q = c
            cur += c
        elif c == ",":
            items.append(cur.strip())
            cur = ""
        elif c in "[]{}":
            raise YamlSubsetError("%s: nested flow collections are not in the subset" % where)
        else:
            cur += c
    if q:
        raise YamlSubsetError("%s: unterminated quote" % where)
    if cur.strip():
        items.append(cur.strip())
    elif items:
        raise YamlSubsetError("%s: empty flow item" % where)
    return items


def _scalar(text, where):
    t = text.strip()
    if t == "" or t in ("~", "null"):
        return None
    if t[0] in "&*!|>%@`":
        raise YamlSubsetError("%s: %r is not in the subset (anchor, alias, tag, block scalar)"
                              % (where, t))
    if t[0] == '"':
        if len(t) < 2 or t[-1] != '"':
            raise YamlSubsetError("%s: bad double-quoted scalar %r" % (where, t))
        try:
            return json.loads(t)
        except ValueError:
            raise YamlSubsetError("%s: unsupported escape in %r" % (where, t))
    if t[0] == "'":
        if len(t) < 2 or t[-1] != "'":
            raise YamlSubsetError("%s: bad single-quoted scalar %r" % (where, t))
        return t[1:-1].replace("''", "'")
    if t[0] == "[":
        if t[-1] != "]":
            raise YamlSubsetError("%s: flow list must close on its line: %r" % (where, t))
        return [_scalar(x, where) for x in _split_flow(t[1:-1], where)]
    if t[0] == "{":
        if t != "{}":
            raise YamlSubsetError("%s: flow mappings are not in the subset: %r" % (where, t))
        return {}
    if t in ("true", "True", "TRUE"):
        return True
    if t in ("false", "False", "FALSE"):
        return False
    if re.fullmatch(r"[-+]?[0-9]+", t):
        return int(t)
    if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", t):
        return float(t)
    if ": " in t or t.endswith(":") or " #" in t:
        raise YamlSubsetError("%s: ambiguous plain scalar %r (quote it)" % (where, t))
    return t


_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'"""
                  r"""|[^\s'"\[\]{},#&*!|>%@`-][^:]*?|-[^\s:][^:]*?)"""
                  r"""\s*:(?:\s+(.*))?$""")


def yaml_subset_load(text, name="<yaml>"):
    """Parse the YAML subset: block mappings and sequences, flow lists of
    scalars, `{}`, quoted and plain scalars, comments. Raises YamlSubsetError
    (naming the line) on anything else."""
    lines = []
    for no, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError("%s:%d: tab in indentation" % (name, no))
        s = _strip_comment(raw)
        if not s.strip():
            continue
        if s.strip() in ("---", "..."):
            raise YamlSubsetError("%s:%d: document markers are not in the subset" % (name, no))
        ind = len(s) - len(s.lstrip(" "))
        lines.append([ind, s.strip(), no])
    if not lines:
        return None
    pos = [0]

    def where(i):
        return "%s:%d" % (name, lines[i][2])

    def block(indent):
        i = pos[0]
        if lines[i][0] != indent:
            raise YamlSubsetError("%s: bad indentation" % where(i))
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            return seq(indent)
        return mapping(indent)

    def value_after(i, indent, rest, seq_same_indent):
        """The value of a key or item whose inline part is rest."""
        if rest is not None and rest.strip() != "":
            pos[0] = i + 1
            return _scalar(rest, where(i))
        pos[0] = i + 1
        if pos[0] < len(lines):
            nind, ntext = lines[pos[0]][0], lines[pos[0]][1]
            if nind > indent:
                return block(nind)
            if seq_same_indent and nind == indent and (ntext == "-" or ntext.startswith("- ")):
                return seq(indent)
        return None

    def mapping(indent):
        out = {}
        while pos[0] < len(lines) and lines[pos[0]][0] == indent:
            i = pos[0]
            text = lines[i][1]
            if text == "-" or text.startswith("- "):
                break
            m = _KEY.match(text)
            if not m:
                raise YamlSubsetError("%s: expected KEY: VALUE, got %r" % (where(i), text))
            key = _scalar(m.group(1), where(i))
            if not isinstance(key, (str, int)):
                raise YamlSubsetError("%s: bad key %r" % (where(i), m.group(1)))
            key = str(key)
            if key in out:
                raise YamlSubsetError("%s: duplicate key %r" % (where(i), key))
            out[key] = value_after(i, indent, m.group(2), True)
        if pos[0] < len(lines) and lines[pos[0]][0] > indent:
            raise YamlSubsetError("%s: bad indentation" % where(pos[0]))
        return out

    def seq(indent):
        out = []
        while pos[0] < len(lines) and lines[pos[0]][0] == indent:
            i = pos[0]
            text = lines[i][1]
            if not (text == "-" or text.startswith("- ")):
                break
            rest = text[1:].lstrip(" ")
            if rest and _KEY.match(rest):
                # "- key: value": a mapping whose lines sit at the key's column
                col = indent + (len(text) - len(rest))
                lines[i][0], lines[i][1] = col, rest
                pos[0] = i
                out.append(mapping(col))
            else:
                out.append(value_after(i, indent, rest, False))
        if pos[0] < len(lines) and lines[pos[0]][0] > indent:
            raise YamlSubsetError("%s: bad indentation" % where(pos[0]))
        return out

    result = block(lines[0][0])
    if pos[0] != len(lines):
        raise YamlSubsetError("%s: unexpected content" % where(pos[0]))
    return result


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml_subset_load(f.read(), os.path.relpath(path, REPO))


# ---------------------------------------------------------- compose helpers

_INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}"
                     r"|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(s, env=None):
    """Compose's variable interpolation, with env (default: empty, so the
    file's defaults apply)."""
    env = env or {}
    if not isinstance(s, str):
        return s

    def rep(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, dflt = m.group(2), m.group(3)
        val = env.get(name)
        if op == ":-":
            return val if val else interpolate(dflt, env)
        if op == "-":
            return val if val is not None else interpolate(dflt, env)
        if op in (":?", "?"):
            if not val:
                raise AssertionError("compose variable %s is required: %s" % (name, dflt))
            return val
        return val or ""
    return _INTERP.sub(rep, s)


def interp_tree(v, env=None):
    if isinstance(v, dict):
        return {k: interp_tree(x, env) for k, x in v.items()}
    if isinstance(v, list):
        return [interp_tree(x, env) for x in v]
    return interpolate(v, env)


_compose_cache = {}


def compose_file(path):
    if path not in _compose_cache:
        _compose_cache[path] = interp_tree(load_yaml(path))
    return _compose_cache[path]


def compose():
    """docker-compose.yml with docker-compose.grafana.yml added, as compose
    merges them: the second file adds a service and its volume."""
    if "merged" not in _compose_cache:
        base, extra = compose_file(COMPOSE), compose_file(COMPOSE_GRAFANA)
        merged = dict(base)
        merged["services"] = dict(base["services"])
        merged["volumes"] = dict(base.get("volumes") or {})
        for name, svc in extra["services"].items():
            assert name not in merged["services"], \
                "docker-compose.grafana.yml redefines %s" % name
            merged["services"][name] = svc
        merged["volumes"].update(extra.get("volumes") or {})
        _compose_cache["merged"] = merged
    return _compose_cache["merged"]


def service(name):
    svc = compose()["services"].get(name)
    assert svc is not None, "docker-compose.yml has no service %r" % name
    return svc


def env_of(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        out = {}
        for item in e:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {k: "" if v is None else str(v) for k, v in e.items()}


def parse_volume(spec):
    """(source, target, mode) of a short-syntax volume."""
    parts = spec.split(":")
    if len(parts) == 1:
        return None, parts[0], "rw"
    if len(parts) == 2:
        return parts[0], parts[1], "rw"
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise AssertionError("volume %r: unexpected form" % spec)


def is_bind(src):
    return src is not None and (src.startswith(".") or src.startswith("/") or src.startswith("~"))


def parse_port(spec):
    """(host ip, host port, container port) of a short-syntax port."""
    s = str(spec).split("/")[0]
    parts = s.rsplit(":", 2)
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2])
    if len(parts) == 2:
        return "", int(parts[0]), int(parts[1])
    return "", None, int(parts[0])


def agent_env():
    """The environment the agent container gets (compose defaults)."""
    return env_of(service("agent"))


# --------------------------------------------------------- Dockerfile helpers

def dockerfile(path=DOCKERFILE):
    """[(stage_index, stage_name, image, [(INSTR, args_text)])]."""
    with open(path, encoding="utf-8") as f:
        raw = f.read().splitlines()
    instrs, cur = [], ""
    for line in raw:
        st = line.strip()
        if not cur and (not st or st.startswith("#")):
            continue
        if cur and st.startswith("#"):
            continue            # comment lines inside a continued instruction
        if st.endswith("\\"):
            cur += st[:-1] + " "
            continue
        cur += st
        instrs.append(cur)
        cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    stages = []
    for text in instrs:
        word, _, args = text.partition(" ")
        word = word.upper()
        args = args.strip()
        if word == "FROM":
            toks = args.split()
            name = toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else None
            stages.append([len(stages), name, toks[0], []])
        elif word == "ARG" and not stages:
            continue
        else:
            assert stages, "Dockerfile instruction before FROM: %s" % text
            stages[-1][3].append((word, args))
    return stages


def apt_packages(run_text):
    """Packages named by `apt-get install` in a RUN text."""
    pkgs = []
    for m in re.finditer(r"apt-get\s+install\s+(.*?)(?:&&|;|\|\||$)", run_text):
        for tok in m.group(1).split():
            if not tok.startswith("-"):
                pkgs.append(tok)
    return pkgs


def stage_packages(stage):
    return [p for w, a in stage[3] if w == "RUN" for p in apt_packages(a)]


def copy_args(args):
    """(flags dict, sources, dest) of a COPY/ADD line (JSON form too)."""
    flags = {}
    rest = args.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        k, _, v = flag[2:].partition("=")
        flags[k] = v
        rest = rest.strip()
    toks = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    assert len(toks) >= 2, "COPY needs a source and a destination: %s" % args
    return flags, toks[:-1], toks[-1]


def dockerignore_patterns():
    pats = []
    with open(DOCKERIGNORE, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            p = line[1:] if neg else line
            p = os.path.normpath(p.strip("/")) if p.strip("/") else "."
            pats.append((neg, p))
    return pats


def ignored(path, pats):
    """Docker's rule: the last pattern matching the path or one of its parent
    directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    out = False
    for neg, p in pats:
        if any(fnmatch.fnmatchcase(x, p) for x in prefixes):
            out = not neg
    return out


# ------------------------------------------------------------ tool helpers

def binary():
    b = H.build_dir()
    path = os.path.join(b, "tollgate")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError("%s is not built (make BUILD=%s)"
                                % (path, os.environ.get("BUILD", "build")))
    return path


def run(argv, env=None, cwd=REPO, timeout=60):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def clean_env(extra=None):
    """This process's environment without the variables docker/tollgate.yaml
    reads, plus extra."""
    with open(TG_YAML, encoding="utf-8") as f:
        names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", f.read()))
    e = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("TOLLGATE")}
    e.update(extra or {})
    return e


def dpkg_owners(paths):
    """{path: Debian package owning it} in one dpkg -S call (paths given as
    found, so symlinked /lib vs /usr/lib spellings are tried both ways)."""
    paths = sorted(set(paths))
    variants = {}
    for p in paths:
        variants[p] = p
        if p.startswith("/usr/lib/"):
            variants[p[4:]] = p
        elif p.startswith("/lib"):
            variants["/usr" + p] = p
    r = run(["dpkg", "-S"] + sorted(variants))
    out = {}
    for line in r.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        if path.strip() in variants:
            out.setdefault(variants[path.strip()], pkgs.split(",")[0].split(":")[0].strip())
    missing = [p for p in paths if p not in out]
    assert not missing, "dpkg -S finds no package for %s" % missing
    return out


def is_debian12():
    try:
        with open("/etc/debian_version") as f:
            return f.read().strip().startswith("12")
    except OSError:
        return False


def service_names():
    return list(compose()["services"].keys())


WILDCARDS = ("0.0.0.0", "", "*", "[::]", "::")


def tg_agent_listeners():
    """{listen|http|settle: (host, port)} of docker/tollgate.yaml's agent block
    (settle is where the agent connects: HAProxy's CLI)."""
    with open(TG_YAML, encoding="utf-8") as f:
        text = "\n".join(_strip_comment(line) for line in f)
    m = re.search(r"(?m)^agent:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", text)
    assert m, "docker/tollgate.yaml has no agent block"
    out = {}
    for key in ("listen", "http", "settle"):
        km = re.search(r'(?m)^\s+%s:\s*"?([^"\s]*?):(\d+)"?\s*$' % key, m.group(1))
        assert km, "docker/tollgate.yaml: agent.%s is not HOST:PORT" % key
        out[key] = (km.group(1), int(km.group(2)))
    return out


def substitute_hosts(text):
    """host:port of a compose service name -> 127.0.0.1:port (the names
    resolve only inside the compose network)."""
    names = "|".join(re.escape(n) for n in service_names())
    return re.sub(r"(?<![\w.-])(%s):(\d+)" % names, r"127.0.0.1:\2", text)


def render_with_entrypoint(config, out_dir, extra_env=None):
    """docker/entrypoint.sh render, with the local binary; returns the
    CompletedProcess."""
    e = clean_env(agent_env())
    e.update({"TOLLGATE": binary(), "TOLLGATE_CONFIG": config,
              "TOLLGATE_HAPROXY_DIR": out_dir})
    e.update(extra_env or {})
    return run(["sh", os.path.join(DOCKER, "entrypoint.sh"), "render"], env=e)


# ------------------------------------------------------------------ metrics

def metric_families():
    """{family name: (type, [labels])} from agent/metrics.h's enum comments."""
    fams = {}
    with open(METRICS_H, encoding="utf-8") as f:
        text = f.read()
    for m in re.finditer(r"TGM_[A-Z_]+,\s*/\*\s*(tollgate_[a-z0-9_]+)\s*(\[([^\]]*)\])?([^*]*)\*/",
                         text):
        name, labels, rest = m.group(1), m.group(3), m.group(4)
        typ = "histogram" if "histogram" in rest else (
            "gauge" if "gauge" in rest or not name.endswith("_total") else "counter")
        labs = [x.split("=")[0] for x in (labels or "").split()]
        fams[name] = (typ, labs)
    assert len(fams) >= 10, "too few metric families found in agent/metrics.h: %r" % fams
    return fams


def series_names(fams):
    """{series name: (family, allowed labels)}."""
    out = {}
    target = ["job", "instance"]
    for name, (typ, labs) in fams.items():
        if typ == "histogram":
            out[name + "_bucket"] = (name, labs + ["le"] + target)
            out[name + "_sum"] = (name, labs + target)
            out[name + "_count"] = (name, labs + target)
        else:
            out[name] = (name, labs + target)
    return out


PROMQL_FUNCS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta",
    "deriv", "exp", "floor", "group", "histogram_quantile", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "max", "max_over_time", "min",
    "min_over_time", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar",
    "sort", "sort_desc", "stddev", "stdvar", "sum", "sum_over_time", "time", "timestamp",
    "topk", "vector",
}
PROMQL_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promql_check(expr, series):
    """Tokenizes expr; returns (metrics used, problems)."""
    used, problems, grouping = [], [], []
    lv = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)\s*", expr)
    if lv:                      # Grafana's variable query, not PromQL
        if lv.group(1) not in series:
            return [], ["unknown metric %r" % lv.group(1)]
        if lv.group(2) not in series[lv.group(1)][1]:
            return [lv.group(1)], ["%s has no label %r" % (lv.group(1), lv.group(2))]
        return [lv.group(1)], []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = expr.index(c, i + 1) if c in expr[i + 1:] else n
            i = j + 1
        elif c == "[":
            j = expr.find("]", i)
            if j < 0:
                problems.append("unclosed [ in %r" % expr)
                break
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = re.match(r"[0-9.]+(e[-+]?[0-9]+)?", expr[i:], re.I)
            i += m.end()
        elif c.isalpha() or c in "_:":
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", expr[i:])
            word = m.group(0)
            i += m.end()
            k = i
            while k < n and expr[k] == " ":
                k += 1
            nxt = expr[k] if k < n else ""
            if word in PROMQL_GROUPING:
                if nxt == "(":
                    j = expr.find(")", k)
                    grouping += [x.strip() for x in expr[k + 1:j].split(",") if x.strip()]
                    i = j + 1
            elif word.lower() in PROMQL_WORDS:
                continue
            elif word in PROMQL_FUNCS and (nxt == "(" or re.match(r"(by|without)\s*\(",
                                                                  expr[k:])):
                continue
            elif nxt == "(":
                problems.append("unknown function %r" % word)
            elif word in series:
                used.append(word)
                if nxt == "{":
                    j = expr.find("}", k)
                    body = expr[k + 1:j]
                    for lm in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"", body):
                        if lm.group(1) not in series[word][1]:
                            problems.append("%s has no label %r" % (word, lm.group(1)))
                    i = j + 1
            else:
                problems.append("unknown metric %r" % word)
        elif c == "$":
            m = re.match(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", expr[i:])
            i += m.end() if m else 1
        else:
            i += 1
    allowed = set()
    for u in used:
        allowed |= set(series[u][1])
    for g in grouping:
        if g not in allowed:
            problems.append("grouping label %r is not a label of %s" % (g, sorted(set(used))))
    return used, problems


def dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(d):
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(d):
    """[(where, expr)] of every panel target and template variable query."""
    out = []
    for p in all_panels(d):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append(("panel %r" % p.get("title"), t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            out.append(("variable %r" % v.get("name"), q))
    return out


# ==================================================================== cases

@case
def yaml_subset_reader_is_strict():
    doc = yaml_subset_load(
        "a: 1\nb:\n  - x\n  - {}\n  - k: v\n    l: [1, \"two\", 'th''ree']\n"
        "c:\n- y\nd: \"q: r\"  # c\ne:\nf: 'x # y'\n")
    assert doc == {"a": 1, "b": ["x", {}, {"k": "v", "l": [1, "two", "th'ree"]}],
                   "c": ["y"], "d": "q: r", "e": None, "f": "x # y"}, doc
    for bad in ["a: &x 1\n", "a: *x\n", "a: |\n  t\n", "a: {b: 1}\n", "a: 1\na: 2\n",
                "a:\n  b: 1\n c: 2\n", "a: !!str 1\n", "---\na: 1\n", "a: [[1]]\n"]:
        try:
            yaml_subset_load(bad)
        except YamlSubsetError:
            continue
        raise AssertionError("accepted %r" % bad)


@case
def compose_parses_with_the_five_services():
    # compose 1.29 (Debian 12) refuses a top-level `name:`; Grafana (no
    # Debian package: no stand-in) comes in a file of its own
    for path in (COMPOSE, COMPOSE_GRAFANA):
        top = set(compose_file(path))
        assert top <= {"services", "volumes", "networks"}, "%s: %s" % (path, sorted(top))
    assert sorted(compose_file(COMPOSE)["services"]) == sorted(
        s for s in SERVICES if s != "grafana"), sorted(compose_file(COMPOSE)["services"])
    assert list(compose_file(COMPOSE_GRAFANA)["services"]) == ["grafana"]
    c = compose()
    for s in SERVICES:
        svc = service(s)
        assert svc.get("image") or svc.get("build"), "%s: no image and no build" % s
    assert sorted(c["services"]) == sorted(SERVICES), sorted(c["services"])
    assert service("haproxy")["image"] == "haproxy:2.6", service("haproxy")["image"]
    assert service("redis")["image"].startswith("redis:7"), service("redis")["image"]
    b = service("agent")["build"]
    assert b["dockerfile"] == "docker/Dockerfile", b
    for other in ("prometheus", "grafana"):
        assert ":" in service(other)["image"], "%s: pin the image tag" % other


@case
def compose_files_and_volumes_exist():
    c = compose()
    declared = set((c.get("volumes") or {}).keys())
    used = set()
    for name, svc in c["services"].items():
        b = svc.get("build")
        if b:
            ctx = b.get("context", ".") if isinstance(b, dict) else b
            ctx = os.path.normpath(os.path.join(DOCKER, ctx))
            assert os.path.isdir(ctx), "%s: build context %s missing" % (name, ctx)
            df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
            assert os.path.isfile(df), "%s: dockerfile %s missing" % (name, df)
            assert os.path.samefile(df, DOCKERFILE), \
                "%s builds %s, not docker/Dockerfile" % (name, df)
        for spec in svc.get("volumes") or []:
            src, target, mode = parse_volume(spec)
            assert target.startswith("/"), "%s: volume target %r not absolute" % (name, target)
            assert mode in ("ro", "rw"), "%s: volume mode %r" % (name, mode)
            if is_bind(src):
                host = os.path.normpath(os.path.join(DOCKER, src))
                assert host.startswith(REPO + os.sep), "%s: %s outside the repository" % (name, src)
                assert os.path.exists(host), "%s: bind mount source %s missing" % (name, src)
            elif src:
                used.add(src)
                assert src in declared, "%s: named volume %r not declared" % (name, src)
    assert used == declared, "declared but unused volumes: %s" % sorted(declared - used)


@case
def compose_ports_unique_and_the_seeds():
    seen = {}
    by_service = {}
    for name, svc in compose()["services"].items():
        for spec in svc.get("ports") or []:
            ip, host, cont = parse_port(spec)
            assert host is not None, "%s: port %r has no host port" % (name, spec)
            assert host not in seen, "host port %d published twice (%s and %s)" % (
                host, seen[host], name)
            seen[host] = name
            by_service.setdefault(name, []).append((host, cont))
    for name, port in SEED_PORTS.items():
        assert (port, port) in by_service.get(name, []), "%s must publish %d:%d, has %r" % (
            name, port, port, by_service.get(name))
    # what the services listen on: haproxy.listen and agent.http of docker/tollgate.yaml
    with open(TG_YAML, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r'^haproxy:\s*\n(?:\s+.*\n)*?\s+listen:\s*"?[^"\n]*:(\d+)"?', text, re.M)
    assert m and int(m.group(1)) == 8080, "haproxy.listen of docker/tollgate.yaml is not :8080"
    lis = tg_agent_listeners()
    assert lis["http"][1] == 8001, "agent.http of docker/tollgate.yaml is not port 8001"
    # what other containers connect to must be an address the agent listens on
    hostname = service("agent").get("hostname")
    # agent.settle is HAProxy's CLI, by service name, on the port HAProxy binds
    assert lis["settle"][0] == "haproxy" and "haproxy" in service_names(), \
        "agent.settle must name the haproxy service: %r" % (lis["settle"],)
    m = re.search(r'(?m)^\s+settle_bind:\s*"?([^"\s]*):(\d+)"?', text)
    assert m and m.group(1) in WILDCARDS and int(m.group(2)) == lis["settle"][1], \
        "haproxy.settle_bind must bind agent.settle's port on every interface: %r" % (
            m and m.groups(),)
    for key in ("listen", "http"):
        host = lis[key][0]
        assert host in WILDCARDS or host == hostname, \
            "agent.%s listens on %r: in a container that must be all interfaces or the " \
            "agent's own hostname (compose `hostname: %s`)" % (key, host, host)


@case
def readme_command_and_ports_match_compose():
    with open(os.path.join(DOCKER, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert "docker compose -p tollgate -f docker/docker-compose.yml up --build" in text
    assert "-f docker/docker-compose.grafana.yml" in text and "make docker-test" in text
    published = {parse_port(p)[1] for svc in compose()["services"].values()
                 for p in svc.get("ports") or []}
    used = {int(p) for p in re.findall(r"localhost:(\d+)", text)}
    assert used and used <= published, "README uses ports %s, compose publishes %s" % (
        sorted(used), sorted(published))


@case
def compose_depends_on_targets_exist_without_cycles():
    svcs = compose()["services"]
    graph = {}
    for name, svc in svcs.items():
        dep = svc.get("depends_on") or {}
        deps = dep if isinstance(dep, list) else list(dep.keys())
        graph[name] = deps
        for d in deps:
            assert d in svcs, "%s depends on unknown service %r" % (name, d)
            cond = "service_started"
            if isinstance(dep, dict):
                cond = (dep[d] or {}).get("condition", cond)
            assert cond in ("service_started", "service_healthy",
                            "service_completed_successfully"), "%s -> %s: condition %r" % (
                                name, d, cond)
            if cond == "service_healthy":
                has = bool(svcs[d].get("healthcheck"))
                if not has and svcs[d].get("build"):
                    has = any(w == "HEALTHCHECK" and not a.upper().startswith("NONE")
                              for w, a in dockerfile()[-1][3])
                assert has, "%s waits for %s to be healthy, but %s has no healthcheck" % (
                    name, d, d)
    state = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError("depends_on cycle: %s" % " -> ".join(path + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for d in graph[n]:
            visit(d, path + [n])
        state[n] = 2
    for n in graph:
        visit(n, [])
    # the order the stack needs
    assert "agent" in graph["haproxy"] and \
        svcs["haproxy"]["depends_on"]["agent"]["condition"] == "service_healthy", \
        "haproxy must wait for a healthy agent (the rendered configuration)"


@case
def compose_gives_the_agent_its_variables():
    env = agent_env()
    with open(TG_YAML, encoding="utf-8") as f:
        text = "\n".join(_strip_comment(line) for line in f)
    for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)?", text):
        name, has_default = m.group(1), m.group(2)
        if not has_default:
            assert name in env, "docker/tollgate.yaml reads ${%s} with no default; " \
                "the agent service does not set it" % name
    for k in ("ADMIN_KEY", "USER1_KEY", "USER2_KEY", "PROVIDER_TYPE"):
        assert env.get(k), "agent environment: %s is empty" % k


@case
def compose_haproxy_loads_what_the_agent_renders():
    agent, hap = service("agent"), service("haproxy")
    cmd = hap.get("command")
    cmd = cmd if isinstance(cmd, list) else shlex.split(cmd)
    assert "-f" in cmd, "haproxy command has no -f: %r" % cmd
    cfg = cmd[cmd.index("-f") + 1]
    out_dir = os.path.dirname(cfg)
    env = agent_env()
    assert env.get("TOLLGATE_HAPROXY_DIR", "/run/tollgate/haproxy") == out_dir, \
        "the agent renders into %r, haproxy loads %r" % (env.get("TOLLGATE_HAPROXY_DIR"), cfg)
    hv = {parse_volume(v)[1]: parse_volume(v) for v in hap.get("volumes") or []}
    av = {parse_volume(v)[1]: parse_volume(v) for v in agent.get("volumes") or []}
    assert out_dir in hv and out_dir in av, \
        "%s must be a volume mounted by both agent and haproxy (same path)" % out_dir
    assert hv[out_dir][0] == av[out_dir][0] and not is_bind(hv[out_dir][0]), \
        "agent and haproxy must share one named volume at %s" % out_dir
    assert hv[out_dir][2] == "ro", "haproxy should mount the rendered files read-only"
    assert av[out_dir][2] == "rw", "the agent must write the rendered files"
    # the configuration the agent reads is the mounted docker/tollgate.yaml
    conf = env.get("TOLLGATE_CONFIG", "/etc/tollgate/tollgate.yaml")
    assert conf in av and os.path.samefile(os.path.join(DOCKER, av[conf][0]), TG_YAML), \
        "the agent's TOLLGATE_CONFIG %s is not docker/tollgate.yaml" % conf
    # the state volume is the agent's state_dir
    with open(TG_YAML, encoding="utf-8") as f:
        m = re.search(r"^\s+state_dir:\s*\"?([^\"\s#]+)", f.read(), re.M)
    assert m and m.group(1) in av and not is_bind(av[m.group(1)][0]), \
        "agent.state_dir %r must be a named volume (quota balances survive)" % (m and m.group(1))


@case
def compose_haproxy_runs_with_the_advised_glibc_setting():
    """haproxy/README.md: the 4 MiB default needs this value on 2.6 (the
    rendered file compares it byte for byte); the compose file writes it
    out, `tollgate glibc-tunables` is where it is kept."""
    hap = service("haproxy")
    version = hap["image"].split(":", 1)[1]
    r = run([binary(), "glibc-tunables", version + ".0"])
    assert r.returncode == 0, r.stderr
    got = (env_of(hap) or {}).get("GLIBC_TUNABLES")
    assert got == r.stdout.strip(), \
        "haproxy's GLIBC_TUNABLES %r; tollgate glibc-tunables %s says %r" % (
            got, version, r.stdout.strip())


@case
def dockerfile_stages_copies_and_ignore_file():
    stages = dockerfile()
    assert len(stages) == 2, "want a build and a runtime stage, got %d" % len(stages)
    names = [s[1] for s in stages]
    for s in stages:
        assert s[2] == "debian:bookworm-slim", "stage %s: FROM %s" % (s[1] or s[0], s[2])
    pats = dockerignore_patterns()
    for s in stages:
        for word, args in s[3]:
            if word == "ADD":
                raise AssertionError("use COPY, not ADD: %s" % args)
            if word != "COPY":
                continue
            flags, srcs, dest = copy_args(args)
            if "from" in flags:
                assert flags["from"] in names[:s[0]], \
                    "COPY --from=%s: no earlier stage" % flags["from"]
                continue
            for src in srcs:
                rel = os.path.normpath(src)
                path = os.path.join(REPO, rel)
                assert os.path.exists(path), "COPY source %s missing" % src
                files = [rel]
                if os.path.isdir(path):
                    files = [os.path.relpath(os.path.join(d, f), REPO)
                             for d, _, fs in os.walk(path) for f in fs]
                    assert files, "COPY source %s is empty" % src
                for f in files:
                    assert not ignored(f, pats), \
                        "%s is excluded by docker/Dockerfile.dockerignore" % f
    # build stage: runs make build/tollgate
    build_runs = " ".join(a for w, a in stages[0][3] if w == "RUN")
    assert re.search(r"\bmake\b[^&;]*\bbuild/tollgate\b", build_runs), build_runs
    # the context reduction keeps the build dirs and .git out
    for f in ("build/tollgate", ".git/HEAD", "tests/run.sh", "state/x"):
        assert ignored(f, pats), "%s would be sent in the build context" % f


@case
def dockerfile_runtime_user_healthcheck_entrypoint():
    rt = dockerfile()[-1][3]
    users = [a for w, a in rt if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime runs as root"
    hc = [a for w, a in rt if w == "HEALTHCHECK"]
    assert len(hc) == 1 and "CMD" in hc[0], "runtime needs one HEALTHCHECK CMD: %r" % hc
    copied = {}
    for w, a in rt:
        if w == "COPY":
            flags, srcs, dest = copy_args(a)
            for s in srcs:
                copied[os.path.join(dest, os.path.basename(s)) if dest.endswith("/") else dest] = s
    for word in ("HEALTHCHECK", "ENTRYPOINT"):
        text = [a for w, a in rt if w == word][-1]
        scripts = re.findall(r"(/usr/local/bin/[\w.-]+\.sh)", text)
        assert scripts, "%s names no script: %s" % (word, text)
        for sc in scripts:
            assert sc in copied, "%s runs %s, which no COPY puts there" % (word, sc)
            assert os.access(os.path.join(REPO, copied[sc]), os.X_OK), \
                "%s is not executable in the repository" % copied[sc]
    with open(os.path.join(REPO, copied["/usr/local/bin/healthcheck.sh"])) as f:
        assert "/healthz" in f.read(), "the healthcheck does not ask /healthz"
    assert "/usr/local/bin/tollgate" in [d for w, a in rt if w == "COPY"
                                         for d in [copy_args(a)[2]]], "binary not copied"


@case
def dockerfile_packages_cover_the_makefile_ldlibs():
    stages = dockerfile()
    build_pkgs, rt_pkgs = set(stage_packages(stages[0])), set(stage_packages(stages[-1]))
    assert "build-essential" in build_pkgs, sorted(build_pkgs)
    with open(MAKEFILE, encoding="utf-8") as f:
        m = re.search(r"^LDLIBS_ALL\s*[:?]?=\s*(.*)$", f.read(), re.M)
    assert m, "no LDLIBS_ALL in the Makefile"
    libs = re.findall(r"-l([A-Za-z0-9_+.-]+)", m.group(1))
    assert "ev" in libs and "yaml" in libs, libs
    cc = os.environ.get("CC", "cc")
    sos = {}
    for lib in libs:
        found = [os.path.normpath(run([cc, "-print-file-name=lib%s.%s" % (lib, ext)])
                                  .stdout.strip()) for ext in ("so", "a")]
        found = [f for f in found if os.path.isabs(f) and os.path.exists(f)]
        assert found, "lib%s.so not found here (install its -dev package)" % lib
        sos[lib] = found[0]
    owners = dpkg_owners(list(sos.values()) + [os.path.realpath(x) for x in sos.values()])
    for lib, so in sos.items():
        dev = owners[so]
        if dev == "libc6-dev":
            continue                    # -lm -lpthread: build-essential / the base image
        assert so.endswith(".so"), "-l%s links statically (%s)" % (lib, so)
        assert dev in build_pkgs, "-l%s needs %s in the build stage (has %s)" % (
            lib, dev, sorted(build_pkgs))
        runtime = owners[os.path.realpath(so)]
        assert runtime in rt_pkgs, "-l%s needs %s in the runtime stage (has %s)" % (
            lib, runtime, sorted(rt_pkgs))
    # and what the built binary really loads
    r = run(["ldd", binary()])
    assert r.returncode == 0, r.stderr
    loaded = re.findall(r"=>\s*(/\S+)", r.stdout)
    assert loaded, r.stdout
    base = {"libc6", "libgcc-s1", "libstdc++6"}
    # a sanitizer build (make asan) also loads its runtime: not the image's
    loaded = [p for p in loaded if not re.search(r"/lib(asan|ubsan|lsan|tsan)\.so", p)]
    for path, pkg in dpkg_owners(loaded).items():
        assert pkg in rt_pkgs or pkg in base, "%s (%s) is not installed by the runtime stage" % (
            path, pkg)


@case
def dockerfile_packages_exist_in_debian12():
    pkgs = []
    for s in dockerfile():
        pkgs += stage_packages(s)
    assert pkgs
    if not is_debian12():
        skip("not Debian 12: apt-cache cannot vouch for bookworm package names")
    pkgs = sorted(set(pkgs))
    r = run(["apt-cache", "show", "--no-all-versions"] + pkgs)
    found = set(re.findall(r"(?m)^Package: (\S+)$", r.stdout))
    missing = [p for p in pkgs if p not in found]
    assert not missing, "not in Debian 12 (apt-cache show): %s %s" % (
        missing, r.stderr.strip()[:300])


@case
def standin_dockerfiles_match_compose_images():
    """make docker-test builds a stand-in under each third-party image's tag
    where no registry answers: docker/standin/SERVICE.Dockerfile, FROM
    debian:bookworm-slim, labelled with the tag compose names, Debian 12
    packages only. Grafana has none (no Debian package)."""
    pkgs = []
    for name in ("redis", "haproxy", "prometheus"):
        path = os.path.join(DOCKER, "standin", name + ".Dockerfile")
        assert os.path.isfile(path), "no stand-in %s" % path
        stages = dockerfile(path)
        assert len(stages) == 1 and stages[0][2] == "debian:bookworm-slim", stages
        labels = [a for w, a in stages[0][3] if w == "LABEL"]
        m = re.match(r'org\.tollgate\.standin="(\S+) ', labels[0] if labels else "")
        assert m and m.group(1) == service(name)["image"], \
            "%s: labelled %r, compose runs %s" % (path, labels, service(name)["image"])
        pkgs += stage_packages(stages[0])
    assert not os.path.exists(os.path.join(DOCKER, "standin", "grafana.Dockerfile"))
    assert {"redis-server", "haproxy", "prometheus"} <= set(pkgs), pkgs
    if not is_debian12():
        skip("not Debian 12: apt-cache cannot vouch for bookworm package names")
    r = run(["apt-cache", "show", "--no-all-versions"] + sorted(set(pkgs)))
    found = set(re.findall(r"(?m)^Package: (\S+)$", r.stdout))
    assert set(pkgs) <= found, "not in Debian 12: %s" % sorted(set(pkgs) - found)


@case
def tollgate_check_accepts_the_stack_config():
    r = run([binary(), "check", "--config", TG_YAML], env=clean_env(agent_env()))
    assert r.returncode == 0 and "ok" in r.stdout, "tollgate check refused docker/tollgate.yaml " \
        "(exit %d): %s%s" % (r.returncode, r.stdout, r.stderr)


def check_rendered(tmp, extra_env, mock):
    """Render docker/tollgate.yaml through docker/entrypoint.sh with the
    agent's compose environment plus extra_env; check what HAProxy gets."""
    out = os.path.join(tmp, "run", "tollgate", "haproxy")
    os.makedirs(out)
    r = render_with_entrypoint(TG_YAML, out, extra_env)
    assert r.returncode == 0, "entrypoint.sh render failed (%d): %s%s" % (
        r.returncode, r.stdout, r.stderr)
    files = sorted(os.listdir(out))
    assert "haproxy.cfg" in files, files
    assert not [f for f in files if f.startswith(".")], "render left %s" % files
    for f in files:
        mode = os.stat(os.path.join(out, f)).st_mode
        assert mode & stat.S_IROTH, "%s is not world-readable (haproxy runs as uid 99)" % f
    with open(os.path.join(out, "haproxy.cfg")) as f:
        cfg = f.read()
    # every server HAProxy connects to is reachable from its container:
    # a compose service on a port it listens on, never loopback/wildcard
    lis = tg_agent_listeners()
    agent_ports = {lis["listen"][1], lis["http"][1]}
    servers = re.findall(r"(?m)^\s*server\s+(\S+)\s+(\S+):(\d+)\b", cfg)
    assert servers, "no server lines in haproxy.cfg"
    for name, host, port in servers:
        assert host not in ("127.0.0.1", "0.0.0.0", "localhost", "::1", "::", "*", ""), \
            "server %s %s:%s: the haproxy container cannot reach the agent there " \
            "(it is `agent` on the compose network)" % (name, host, port)
        if host == "agent":
            assert int(port) in agent_ports, "server %s agent:%s: the agent does not " \
                "listen on that port (%s)" % (name, port, sorted(agent_ports))
    targets = {(h, int(p)) for _, h, p in servers}
    want = [("agent", 12345)]
    if mock:
        want.append(("agent", lis["http"][1]))
    for w in want:
        assert w in targets, "haproxy.cfg has no server %s:%d (SPOP, mock provider): %s" % (
            w[0], w[1], sorted(targets))
    # the agent reads the settlement ring on this socket, from its container
    assert re.search(r"(?m)^\s*stats socket ipv4@0\.0\.0\.0:%d level operator$"
                     % lis["settle"][1], cfg), "no stats socket for agent.settle on all interfaces"
    assert re.search(r"(?m)^\s*bind\s+\S*:8080\b", cfg), "no bind on :8080"
    # every file the configuration names is in the rendered directory
    named = re.findall(r"(?m)^\s*(?:lua-load(?:-per-thread)?|filter spoe .*\bconfig)\s+(/\S+)",
                       cfg)
    assert len(named) >= 2, "no lua-load / SPOE config path in haproxy.cfg"
    for path in named:
        assert os.path.dirname(path) == os.path.realpath(out), \
            "haproxy.cfg names %s, outside the rendered directory" % path
        assert os.path.exists(path), "haproxy.cfg names %s, not rendered" % path
    # service names resolve only inside the compose network: check a copy
    # with them replaced by 127.0.0.1 (zero warnings unless a real provider
    # host cannot be resolved offline)
    checked = os.path.join(tmp, "haproxy-check.cfg")
    with open(checked, "w") as f:
        f.write(substitute_hosts(cfg))
    r = run([H.HAPROXY, "-c", "-f", checked] + (["-dW"] if mock else []), cwd=tmp)
    assert r.returncode == 0, "haproxy -c refused the rendered configuration " \
        "(service names -> 127.0.0.1):\n%s%s" % (r.stdout, r.stderr)


@case
def rendered_haproxy_config_passes_haproxy_check():
    with tempfile.TemporaryDirectory(prefix="tg-docker-") as tmp:
        check_rendered(tmp, {}, mock=True)


@case
def rendered_haproxy_config_with_a_real_provider():
    # PROVIDER_TYPE=qwen (docker/README.md): the provider is outside, the
    # agent still is `agent`
    with tempfile.TemporaryDirectory(prefix="tg-docker-") as tmp:
        check_rendered(tmp, {"PROVIDER_TYPE": "qwen", "DASHSCOPE_API_KEY": "sk-test"},
                       mock=False)


@case
def prometheus_scrapes_the_agent():
    p = load_yaml(PROM_YML)
    jobs = p.get("scrape_configs") or []
    targets = []
    for j in jobs:
        assert j.get("metrics_path", "/metrics") == "/metrics", j
        for sc in j.get("static_configs") or []:
            targets += sc.get("targets") or []
    assert "agent:8001" in targets, "prometheus.yml does not scrape agent:8001: %r" % targets
    for t in targets:
        host = t.rsplit(":", 1)[0]
        assert host in service_names(), "scrape target %r is not a compose service" % t
    # compose mounts this file where the image reads it
    vols = [parse_volume(v) for v in service("prometheus").get("volumes") or []]
    assert ("./prometheus.yml", "/etc/prometheus/prometheus.yml", "ro") in vols, vols


@case
def grafana_provisioning_matches_compose():
    ds = load_yaml(GF_DS)["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus", ds
    assert ds[0]["url"] == "http://prometheus:9090", ds[0]["url"]
    assert (9090, 9090) in [parse_port(x)[1:] for x in service("prometheus")["ports"]]
    uid = ds[0]["uid"]
    prov = load_yaml(GF_DASH)["providers"]
    path = prov[0]["options"]["path"]
    vols = {parse_volume(v)[1]: parse_volume(v)[0] for v in service("grafana")["volumes"]}
    assert path in vols and os.path.samefile(os.path.join(DOCKER, vols[path]),
                                             os.path.dirname(DASHBOARD)), \
        "dashboard provider path %s is not the mounted docker/grafana/dashboards" % path
    assert "/etc/grafana/provisioning" in vols and os.path.samefile(
        os.path.join(DOCKER, vols["/etc/grafana/provisioning"]),
        os.path.join(DOCKER, "grafana", "provisioning"))
    home = env_of(service("grafana")).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == os.path.join(path, os.path.basename(DASHBOARD)), home
    # every datasource reference in the dashboard is the provisioned one
    d = dashboard()
    refs = []
    for p in all_panels(d):
        for obj in [p] + p.get("targets", []):
            dsr = obj.get("datasource")
            if isinstance(dsr, dict) and dsr.get("type") == "prometheus":
                refs.append(dsr.get("uid"))
    for v in d["templating"]["list"]:
        if isinstance(v.get("datasource"), dict):
            refs.append(v["datasource"].get("uid"))
    assert refs and set(refs) == {uid}, "dashboard datasource uids %s, provisioned %s" % (
        sorted(set(map(str, refs))), uid)


@case
def dashboard_promql_uses_only_agent_metrics():
    d = dashboard()
    series = series_names(metric_families())
    exprs = dashboard_exprs(d)
    assert len(exprs) >= 10, exprs
    bad, used = [], set()
    for where, expr in exprs:
        u, problems = promql_check(expr, series)
        if not u:
            problems.append("names no metric")
        used |= {series[x][0] for x in u}
        bad += ["%s: %s: %s" % (where, expr, p) for p in problems]
    assert not bad, "\n".join(bad)
    # the seed's views
    joined = "\n".join(e for _, e in exprs)
    need = [
        (r'tollgate_tokens_total\{[^}]*direction="input"', "input tokens/s"),
        (r'tollgate_tokens_total\{[^}]*direction="output"'
         r"|by \(direction\)[^\n]*tollgate_tokens_total", "output tokens/s"),
        (r"by \((provider, model|model, provider)\)[^\n]*tollgate_tokens_total",
         "by provider/model"),
        (r"by \(consumer[^)]*\)[^\n]*tollgate_tokens_total", "tokens by consumer"),
        (r"by \(decision, status\)[^\n]*tollgate_requests_total", "rejections by decision/status"),
        (r"histogram_quantile\(0\.99,[^\n]*tollgate_admission_seconds_bucket", "admission p99"),
        (r"tollgate_quota_remaining", "quota remaining"),
        (r"tollgate_store_breaker_open", "store breaker"),
        (r"by \(rule, outcome\)[^\n]*tollgate_limit_decisions_total", "limit decisions"),
    ]
    missing = [what for rx, what in need if not re.search(rx, joined)]
    assert not missing, "dashboard lacks: %s" % missing
    # a sanity check of the checker itself
    assert promql_check('rate(tollgate_nope_total[1m])', series)[1]
    assert promql_check('sum by (model) (tollgate_quota_remaining)', series)[1]
    assert promql_check('tollgate_tokens_total{colour="x"}', series)[1]
    assert promql_check('frobnicate(tollgate_tokens_total)', series)[1]
    assert promql_check('label_values(tollgate_tokens_total, colour)', series)[1]
    assert not promql_check('sum without (route) (rate(tollgate_tokens_total[5m]))', series)[1]


@case
def dashboard_layout_is_sane():
    d = dashboard()
    assert d.get("uid") and d.get("title") and isinstance(d.get("schemaVersion"), int)
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, "panels %r and %r overlap" % (cells[(x, y)], p["title"])
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            assert p.get("targets"), "panel %r has no query" % p["title"]
    for v in d["templating"]["list"]:
        for where, expr in dashboard_exprs({"templating": {"list": [v]}}):
            assert re.fullmatch(r"label_values\(\w+, *\w+\)", expr), expr


# ------------------------------------------- the stack, without containers

def local_stack_config(env):
    """docker/tollgate.yaml with its listeners on free loopback ports, the
    service names pointing at local processes, the state in the work dir."""
    with open(TG_YAML, encoding="utf-8") as f:
        text = f.read()
    ports = {p: H.free_port() for p in (12345, 12346, 8001, 8080)}
    redis = env.redis()
    text = text.replace('":8080"', '"127.0.0.1:%d"' % ports[8080])
    for p in (12345, 12346, 8001):
        text = text.replace("0.0.0.0:%d" % p, "127.0.0.1:%d" % ports[p])
        text = re.sub(r"(?<![\w.-])(agent|haproxy):%d\b" % p, "127.0.0.1:%d" % ports[p], text)
    text = re.sub(r"(?<![\w.-])redis:6379\b", "127.0.0.1:%d" % redis.port, text)
    text = text.replace("/var/lib/tollgate", env.path("state"))
    assert "0.0.0.0" not in text and \
        not re.search(r"(?<![\w.-])(agent|redis|haproxy):\d", text), text
    return env.write("tollgate.yaml", text), ports


@case
def stack_runs_without_containers():
    with H.Env("docker-static") as env:
        cfg, ports = local_stack_config(env)
        out = env.path("haproxy")
        e = clean_env(agent_env())
        e.update({"TOLLGATE": binary(), "TOLLGATE_CONFIG": cfg, "TOLLGATE_HAPROXY_DIR": out})
        env.start("agent", ["sh", os.path.join(DOCKER, "entrypoint.sh")], cwd=REPO, env=e,
                  wait_tcp=[ports[12345], ports[8001]], timeout=15)
        hc_env = dict(os.environ, TOLLGATE_HEALTH_HOST="127.0.0.1",
                      TOLLGATE_HEALTH_PORT=str(ports[8001]), TOLLGATE_HAPROXY_DIR=out)
        r = run(["bash", os.path.join(DOCKER, "healthcheck.sh")], env=hc_env, timeout=10)
        assert r.returncode == 0, "healthcheck.sh: %s%s" % (r.stdout, r.stderr)
        r = run(["bash", os.path.join(DOCKER, "healthcheck.sh")],
                env=dict(hc_env, TOLLGATE_HEALTH_PORT=str(H.free_port())), timeout=10)
        assert r.returncode != 0, "healthcheck.sh is healthy with nothing listening"
        # /metrics declares every family the dashboard uses (what Prometheus scrapes)
        status, _, body = H.http_request(ports[8001], "GET", "/metrics")
        assert status == 200, status
        declared = set(re.findall(r"(?m)^# TYPE (\S+) ", body.decode()))
        series = series_names(metric_families())
        for where, expr in dashboard_exprs(dashboard()):
            for u in promql_check(expr, series)[0]:
                assert series[u][0] in declared, "%s uses %s, not in /metrics" % (where, u)
        # HAProxy on the rendered configuration: the walkthrough
        hp = env.start("haproxy", [H.HAPROXY, "-f", os.path.join(out, "haproxy.cfg"), "-db"],
                       wait_tcp=[ports[8080]], timeout=15)
        assert hp.alive()
        fe = ports[8080]
        admin, user1 = agent_env()["ADMIN_KEY"], agent_env()["USER1_KEY"]
        chat = json.dumps({"model": "qwen-max",
                           "messages": [{"role": "user", "content": "你是谁"}]})
        ah = {"x-api-key": admin, "x-higress-llm-model": "qwen-max"}
        form = dict(ah, **{"Content-Type": "application/x-www-form-urlencoded"})
        # the walkthrough: the admin gives aliyun-user1 a quota, user1 chats
        status, _, body = H.http_request(fe, "POST", "/v1/chat/completions/quota/refresh",
                                         body="consumer=aliyun-user1&quota=100", headers=form)
        assert status == 200 and b"refresh quota successful" in body, (status, body)
        status, _, body = H.http_request(
            fe, "GET", "/v1/chat/completions/quota?consumer=aliyun-user1", headers=ah)
        assert status == 200 and json.loads(body) == {"consumer": "aliyun-user1", "quota": 100}, \
            (status, body)
        h = {"x-api-key": user1, "Content-Type": "application/json"}
        status, _, body = H.http_request(fe, "POST", "/v1/chat/completions", body=chat, headers=h)
        assert status == 200, (status, body[:300])
        assert json.loads(body)["usage"]["completion_tokens"] > 0, body[:300]
        status, headers, body = H.http_request(fe, "POST", "/v1/chat/completions", body=chat,
                                               headers=h)
        assert status == 429 and headers.get("Retry-After"), (status, body[:300])
        status, _, body = H.http_request(fe, "POST", "/v1/chat/completions",
                                         body=chat, headers={"Content-Type": "application/json"})
        assert status == 401, (status, body[:300])


if __name__ == "__main__":
    main()
