"""test_lua_filter.py -- haproxy/tollgate.lua inside a real HAProxy (any version).

No agent here: the variables the agent would set (txn.tg.rid, ctx,
hide_usage, body_new, body_len) are set by `http-request set-var` rules from
test headers. Upstreams: tests/e2e/mock_upstream.py (a process) and a scripted
upstream in this file that writes exact bytes in exact HTTP chunks with delays
(events split anywhere, CRLF, garbage). The settlement records (doc/gateway.md
"Settlement record") leave HAProxy through `log ring@tollgate_settle`; a
reader in this file follows the ring on HAProxy's CLI as the agent does
(`show events tollgate_settle -w`), which proves the record format and shows
the final variables (SSE headers leave before the body, so response headers
cannot carry them).

What it proves:
  - SSE passes byte-exact (client bytes == upstream bytes) when hide_usage is
    off; with hide_usage on, exactly the usage-only event is removed, also
    when it arrives split across several chunks with delays, or cut at
    random places (a fixed seed);
  - usage (prompt/completion and input/output tokens) and the characters of
    generated text are found, in chat, Responses API and split events;
  - the first byte is not delayed (it arrives before the upstream's second
    chunk is even written), nor is a split ordinary event when hiding;
  - a client abort mid-stream still yields a record with seen_chars > 0;
  - a JSON body larger than the 16 KiB buffer still gives u_in/u_out and the
    4 KiB tail;
  - the request body swap, with content-length from body_len;
  - no rid: the filter does nothing; garbage never breaks a stream.
"""
import base64
import json
import os
import random
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
from tcase import case as _case, main  # noqa: E402

LUA = os.path.join(H.REPO, "haproxy", "tollgate.lua")

RECORD_FMT = ("tg1 %ID %[var(txn.tg.rid)] %[var(txn.tg.ctx)] %ST %ts "
              "%[var(txn.tg.u_in)] %[var(txn.tg.u_out)] %[var(txn.tg.seen_chars)] %B")
RECORD_RE = re.compile(r"^tg1 (\S+) (\S+) (\S+) (\d{3}) (\S\S) (-|\d+) (-|\d+) (-|\d+) (\d+)$")

HAPROXY_CFG = """\
global
    log stderr format raw local0 warning
.if version_atleast(3.1)
    tune.lua.bool-sample-conversion normal
.endif
    lua-load-per-thread {lua}
    nbthread 2
    stats socket {sock} mode 600 level admin

ring tollgate_settle
    format raw
    maxlen 16384
    size 1048576

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe
    bind 127.0.0.1:{fe}
    option http-buffer-request
    option http-no-delay
    unique-id-format %[uuid()]
    log ring@tollgate_settle format raw local0 info
    log-format "{record}"
    filter lua.tollgate
    http-request set-var(txn.tg.rid) req.hdr(x-t-rid) if {{ req.hdr(x-t-rid) -m found }}
    http-request set-var(txn.tg.ctx) req.fhdr(x-t-ctx) if {{ req.hdr(x-t-ctx) -m found }}
    http-request set-var(txn.tg.hide_usage) bool(true) if {{ req.hdr(x-t-hide) -m found }}
    http-request set-var(txn.tg.body_new) req.fhdr(x-t-body) if {{ req.hdr(x-t-body) -m found }}
    http-request set-var(txn.tg.body_len) var(txn.tg.body_new),length if {{ var(txn.tg.body_new) -m found }}
    # only a content-length request is re-framed; a chunked one is re-chunked by HAProxy
    http-request set-header content-length %[var(txn.tg.body_len)] if {{ var(txn.tg.body_len) -m found }} {{ req.hdr(content-length) -m found }}
    http-request del-header x-t-body
    # request-side variables are visible to response rules; the filter's
    # usage variables are not there yet when the headers leave
    http-response set-header x-tg-rid "%[var(txn.tg.rid)]" if {{ var(txn.tg.rid) -m found }}
    http-response set-header x-tg-u-out-at-headers "%[var(txn.tg.u_out)]" if {{ var(txn.tg.u_out) -m found }}
    use_backend scripted if {{ path_beg /s/ }}
    default_backend mock

# The same filter; the record carries the JSON tail (base64) for the tail test,
# and a response rule after wait-for-body shows what the SPOE response
# message could see of it.
frontend fe_tail
    bind 127.0.0.1:{fe_tail}
    option http-buffer-request
    unique-id-format %[uuid()]
    log ring@tollgate_settle len 16384 format raw local0 info
    # %B makes HAProxy log at the very end (without it: right after the request)
    log-format "tgtail %[var(txn.tg.rid)] %[var(txn.tg.u_in)] %[var(txn.tg.u_out)] %[var(txn.tg.tail),length] %[var(txn.tg.tail),base64] %B"
    filter lua.tollgate
    http-request set-var(txn.tg.rid) req.hdr(x-t-rid) if {{ req.hdr(x-t-rid) -m found }}
    http-response wait-for-body time 2s
    http-response set-header x-tail-at-rules "%[var(txn.tg.tail),length]" if {{ var(txn.tg.tail) -m found }}
    http-response set-header x-body-at-rules "%[res.body,length]"
    use_backend scripted if {{ path_beg /s/ }}
    default_backend mock

backend mock
    server up 127.0.0.1:{mock}

backend scripted
    server sc 127.0.0.1:{scripted}
"""


# --------------------------------------------------------------------------
# The settlement ring, followed on HAProxy's CLI

class SettleReceiver:
    """The settlement ring read as the agent reads it (agent/ring_reader.c):
    `show events tollgate_settle -w` on HAProxy's CLI, one record a line."""
    def __init__(self, sock_path):
        self.lock = threading.Lock()
        self.messages = []
        self.closed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock_path)
        self.sock.sendall(b"show events tollgate_settle -w\n")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                b = self.sock.recv(65536)
            except OSError:
                return
            if not b:
                return
            buf += b
            *lines, buf = buf.split(b"\n")
            with self.lock:
                for line in lines:
                    if line:
                        self.messages.append(line.decode("utf-8", "replace"))

    def records(self):
        with self.lock:
            return list(self.messages)

    def record(self, rid, prefix="tg1 ", timeout=10.0):
        """The record whose rid field is rid (waits for it)."""
        def find():
            for m in self.records():
                parts = m.split(" ")
                if m.startswith(prefix) and len(parts) > 2 and \
                        parts[2 if prefix == "tg1 " else 1] == rid:
                    return m
            return None
        return H.wait_for(find, timeout, what="settlement record for %s" % rid)

    def close(self):
        self.closed = True
        self.sock.close()


def parse_record(line):
    m = RECORD_RE.match(line)
    assert m, "record does not match the contract format: %r" % line
    uid, rid, ctx, status, ts, u_in, u_out, seen, nbytes = m.groups()
    num = (lambda v: None if v == "-" else int(v))
    return {"id": uid, "rid": rid, "ctx": ctx, "status": int(status), "ts": ts,
            "u_in": num(u_in), "u_out": num(u_out), "seen": num(seen),
            "bytes": int(nbytes)}


# --------------------------------------------------------------------------
# The scripted upstream: exact bytes, exact chunks, exact delays

class ScriptedUpstream:
    """Serves /s/<name>: scripts[name] = dict(pieces=[(delay_s, bytes)...],
    ctype=..., clen=False). Each piece is one HTTP chunk (or, with clen, raw
    bytes of a content-length body). Records the time each piece was written."""

    def __init__(self):
        self.port = H.free_port()
        self.scripts = {}
        self.written = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        try:
            f = c.makefile("rb")
            line = f.readline()
            path = line.split(b" ")[1].decode()
            clen = 0
            while True:
                h = f.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                if k.strip().lower() == "content-length":
                    clen = int(v.strip())
            if clen:
                f.read(clen)
            name = path.split("/")[2]
            sc = self.scripts[name]
            pieces = sc["pieces"]
            head = "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n" % sc.get("ctype", "text/event-stream")
            if sc.get("clen"):
                head += "Content-Length: %d\r\n" % sum(len(p) for _, p in pieces)
            else:
                head += "Transfer-Encoding: chunked\r\n"
            head += "Connection: close\r\n\r\n"
            c.sendall(head.encode())
            times = []
            for delay, data in pieces:
                if delay:
                    time.sleep(delay)
                if sc.get("clen"):
                    c.sendall(data)
                else:
                    c.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                times.append(time.monotonic())
            if not sc.get("clen"):
                c.sendall(b"0\r\n\r\n")
            self.written[name] = times
        except (OSError, KeyError, IndexError):
            pass
        finally:
            c.close()

    def close(self):
        self.closed = True
        self.sock.close()


# --------------------------------------------------------------------------
# A raw client: chunk arrival times, aborts, chunked request bodies

def stream_request(port, path, body=b"", headers=None, abort_after=None,
                   chunked_body=False, timeout=15.0):
    """POST path; returns dict(status, headers, body, chunks=[(t, bytes)], t0).
    abort_after=N closes the connection once N body bytes arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    hdrs = {"Host": "tollgate.test", "Content-Type": "application/json",
            "Connection": "close"}
    hdrs.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    if chunked_body:
        hdrs["Transfer-Encoding"] = "chunked"
        mid = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:mid], body[mid:]) if p)
        payload += b"0\r\n\r\n"
    else:
        hdrs["Content-Length"] = str(len(body))
        payload = body
    req = "POST %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    t0 = time.monotonic()
    s.sendall(req.encode() + payload)
    f = s.makefile("rb")
    status = int(f.readline().split(b" ")[1])
    rh = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        rh[k.strip().lower()] = v.strip()
    out = {"status": status, "headers": rh, "chunks": [], "t0": t0, "aborted": False}
    data = b""
    try:
        if "chunked" in rh.get("transfer-encoding", ""):
            while True:
                size = int(f.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    f.readline()
                    break
                c = f.read(size)
                f.readline()
                out["chunks"].append((time.monotonic() - t0, c))
                data += c
                if abort_after is not None and len(data) >= abort_after:
                    out["aborted"] = True
                    break
        elif "content-length" in rh:
            data = f.read(int(rh["content-length"]))
            out["chunks"].append((time.monotonic() - t0, data))
        else:
            data = f.read()
    finally:
        f.close()
        s.close()
    out["body"] = data
    return out


def mock_direct(up_port, path, body, headers=None):
    """The same request straight to the mock: the upstream's own bytes."""
    return stream_request(up_port, path, body, headers)


def norm(b):
    """The mock numbers its answers (ids "...mock-N"): make two answers
    comparable byte for byte."""
    return re.sub(rb"mock-\d+", b"mock-N", b)


def sse_events_raw(b):
    """Split an SSE body (LF endings) into its raw events, separators kept."""
    return [e + b"\n\n" for e in b.split(b"\n\n") if e]


# --------------------------------------------------------------------------
# The stack

class Stack:
    def __init__(self, env):
        self.env = env
        self.mock = env.mock_upstream()
        self.scripted = ScriptedUpstream()
        self.fe = env.free_port()
        self.fe_tail = env.free_port()
        self.sock = env.path("haproxy.sock")
        self.haproxy = env.haproxy(HAPROXY_CFG.format(
            lua=LUA, sock=self.sock, fe=self.fe,
            fe_tail=self.fe_tail, record=RECORD_FMT, mock=self.mock.port,
            scripted=self.scripted.port), wait_ports=[self.fe, self.fe_tail])
        self.settle = SettleReceiver(self.sock)

    def close(self):
        self.settle.close()
        self.scripted.close()

    def check_alive(self):
        assert self.haproxy.alive(), self.haproxy.tail()
        err = self.haproxy.stderr()
        assert "tollgate.lua" not in err, "Lua filter reported an error:\n" + err[-2000:]


_stack = {}


def setup():
    env = H.Env("lua")
    try:
        st = Stack(env)
    except Exception:
        env.close(failed=True)
        raise
    _stack["s"] = st
    return st


def teardown(st):
    failed = getattr(st, "failed", False)
    st.close()
    st.env.close(failed=failed)


CHAT = "/v1/chat/completions"


def chat_body(stream=True, include_usage=True, max_tokens=None, extra=None):
    b = {"model": "mock-model", "messages": [{"role": "user", "content": "hello there"}],
         "stream": stream}
    if include_usage:
        b["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    b.update(extra or {})
    return json.dumps(b).encode()


def ptok(body):
    return (len(body) + 3) // 4


def chars_of(ctok):
    return len(" ".join(["tok"] * ctok))


# --------------------------------------------------------------------------
# Cases

def case(fn):
    """tcase's @case, remembering a failure so that teardown dumps the logs."""
    def run(st):
        try:
            fn(st)
        except Exception:
            st.failed = True
            raise
    run.__name__ = fn.__name__
    return _case(run)


@case
def sse_passthrough_is_byte_exact_and_metered(st):
    body = chat_body()
    direct = mock_direct(st.mock.port, CHAT, body)
    r = stream_request(st.fe, CHAT, body, {"x-t-rid": "pass-1", "x-t-ctx": "r,p,m,c,7,1"})
    assert r["status"] == 200 and r["headers"].get("x-tg-rid") == "pass-1", r["headers"]
    assert norm(r["body"]) == norm(direct["body"]), "client bytes differ from upstream bytes"
    assert b'"choices": [], "usage"' in r["body"]
    # the usage variables were not set yet when the headers left
    assert "x-tg-u-out-at-headers" not in r["headers"], r["headers"]
    rec = parse_record(st.settle.record("pass-1"))
    assert rec["ctx"] == "r,p,m,c,7,1" and rec["status"] == 200 and rec["ts"] == "--", rec
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (ptok(body), 10, chars_of(10)), rec
    assert re.match(r"^[0-9a-f-]{36}$", rec["id"]), rec
    st.check_alive()


@case
def sse_hide_usage_removes_exactly_the_usage_event(st):
    body = chat_body(max_tokens=4)
    direct = mock_direct(st.mock.port, CHAT, body)
    r = stream_request(st.fe, CHAT, body, {"x-t-rid": "hide-1", "x-t-hide": "1"})
    assert r["status"] == 200
    evs = sse_events_raw(norm(direct["body"]))
    usage_evs = [e for e in evs if b'"choices": []' in e and b'"usage"' in e]
    assert len(usage_evs) == 1, evs
    want = b"".join(e for e in evs if e not in usage_evs)
    assert norm(r["body"]) == want, "hidden stream differs:\n%r\n%r" % (norm(r["body"]), want)
    assert b"[DONE]" in r["body"]
    rec = parse_record(st.settle.record("hide-1"))
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (ptok(body), 4, chars_of(4)), rec
    # hide_usage without rid: the filter is off, nothing is removed
    r2 = stream_request(st.fe, CHAT, body, {"x-t-hide": "1"})
    assert norm(r2["body"]) == norm(direct["body"])
    st.check_alive()


@case
def responses_api_stream_usage_and_chars(st):
    body = json.dumps({"model": "mock-model", "input": "hi", "stream": True}).encode()
    direct = mock_direct(st.mock.port, "/v1/responses", body)
    r = stream_request(st.fe, "/v1/responses", body, {"x-t-rid": "resp-1", "x-t-hide": "1"})
    # nothing to hide in a Responses stream: byte-exact
    assert norm(r["body"]) == norm(direct["body"])
    rec = parse_record(st.settle.record("resp-1"))
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (ptok(body), 10, chars_of(10)), rec


@case
def stream_without_usage_counts_chars_only(st):
    body = chat_body(include_usage=False, max_tokens=6)
    r = stream_request(st.fe, CHAT, body, {"x-t-rid": "nousage-1"})
    assert r["status"] == 200 and b"usage" not in r["body"]
    rec = parse_record(st.settle.record("nousage-1"))
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (None, None, chars_of(6)), rec


@case
def first_byte_is_not_delayed(st):
    body = chat_body(max_tokens=3)
    hdrs = {"x-t-rid": "fb-1", "x-t-hide": "1", "x-mock-delay-ms": "400"}
    r = stream_request(st.fe, CHAT, body, hdrs)
    ts = [t for t, _ in r["chunks"]]
    assert len(ts) >= 3, r["chunks"]
    # the mock writes its first event at once, the next after 400 ms
    assert ts[0] < 0.3, "first body bytes after %.3fs" % ts[0]
    assert ts[1] - ts[0] >= 0.3, "second event not delayed by the mock? %r" % ts
    sys.stderr.write("first body byte after %.1f ms; second after %.1f ms\n"
                     % (ts[0] * 1000, ts[1] * 1000))
    rec = parse_record(st.settle.record("fb-1"))
    assert rec["u_out"] == 3 and rec["seen"] == chars_of(3), rec


def ev(obj):
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_ev(content):
    return ev({"id": "x", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]})


USAGE_EV = ev({"id": "x", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 123, "completion_tokens": 45, "total_tokens": 168}})


def cut(b, *points):
    out, prev = [], 0
    for p in points:
        out.append(b[prev:p])
        prev = p
    out.append(b[prev:])
    return [x for x in out if x]


def mixed_stream():
    """A stream of every event shape the filter parses, its usage event (the
    one hide_usage removes) and the characters of generated text in it."""
    e1 = chat_ev("Hello")
    e2 = chat_ev(" wor\u00e9ld \u4f60\u597d")      # json.dumps escapes: \u00e9 \u4f60 \u597d
    e3 = (b'event: message\r\ndata: {"choices":[{"delta":{"content":"a\\"b\\n\\ud83d\\ude00"}}]}'
          b'\r\n\r\n')                               # CRLF; a"b\n + one emoji = 5 chars
    e4 = b': keep-alive comment\n\n'
    e5 = b'data: {"choices":[{"delta":\ndata: {"content":"xyz"}}]}\n\n'   # multi-line data
    e6 = "data: {\"choices\":[{\"delta\":{\"content\":\"\u00fc\u00df\"}}]}\n\n".encode()  # raw UTF-8
    # a text key before "choices" is not generated text: only "in" counts
    e7 = b'data: {"content":"outside","choices":[{"delta":{"content":"in"}}]}\n\n'
    parts = [e1, e2, e3, e4, e5, e6, e7, USAGE_EV, b"data: [DONE]\n\n"]
    want_chars = 5 + len(" wor\u00e9ld \u4f60\u597d") + 5 + 3 + 2 + 2
    return parts, want_chars


@case
def split_events_crlf_and_multiline(st):
    parts, want_chars = mixed_stream()
    e1, e2, e3, e4, e5 = parts[:5]
    stream = b"".join(parts)
    # cut everywhere awkward: inside "data:", between \r and \n, in UTF-8
    # sequences, between the two newlines of a separator
    L = len(e1)
    points = sorted({3, L - 1, L + 10, L + len(e2) + 40,
                     len(e1 + e2 + e3) - 1, len(e1 + e2 + e3) - 3,
                     len(e1 + e2 + e3 + e4 + e5) + 36,
                     len(stream) - len(USAGE_EV) - 15 + 5})
    pieces = [(0.02, p) for p in cut(stream, *points)]
    st.scripted.scripts["split"] = {"pieces": pieces}
    r = stream_request(st.fe, "/s/split", b"{}", {"x-t-rid": "split-1"})
    assert r["body"] == stream, "not byte-exact"
    rec = parse_record(st.settle.record("split-1"))
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (123, 45, want_chars), rec


@case
def random_cuts_meter_alike(st):
    """The mixed stream cut at random places (a fixed seed, so a failure
    repeats), every other one with hide_usage: the same usage and characters
    every time, byte-exact or exactly the usage event gone."""
    parts, want_chars = mixed_stream()
    stream = b"".join(parts)
    hidden = stream.replace(USAGE_EV, b"")
    rnd = random.Random(20261204)
    for i in range(16):
        points = sorted(rnd.sample(range(1, len(stream)), rnd.randint(3, 25)))
        st.scripted.scripts["rc%d" % i] = {"pieces": [(0.004, p) for p in cut(stream, *points)]}
        hdrs = {"x-t-rid": "rc-%d" % i}
        if i % 2:
            hdrs["x-t-hide"] = "1"
        r = stream_request(st.fe, "/s/rc%d" % i, b"{}", hdrs)
        assert r["body"] == (hidden if i % 2 else stream), (i, points)
        rec = parse_record(st.settle.record("rc-%d" % i))
        assert (rec["u_in"], rec["u_out"], rec["seen"]) == (123, 45, want_chars), (i, points, rec)


@case
def hide_usage_split_across_chunks_with_delays(st):
    e1, e2 = chat_ev("one"), chat_ev(" two")
    stream = e1 + e2 + USAGE_EV + b"data: [DONE]\n\n"
    u0 = len(e1 + e2)
    pieces = [(0, e1 + e2[:30]), (0.05, e2[30:] + USAGE_EV[:20]),
              (0.05, USAGE_EV[20:60]), (0.05, USAGE_EV[60:-1]),
              (0.05, USAGE_EV[-1:] + b"data: [DO"), (0.05, b"NE]\n\n")]
    assert b"".join(p for _, p in pieces) == stream
    st.scripted.scripts["hidesplit"] = {"pieces": pieces}
    r = stream_request(st.fe, "/s/hidesplit", b"{}", {"x-t-rid": "hs-1", "x-t-hide": "1"})
    assert r["body"] == stream[:u0] + b"data: [DONE]\n\n", r["body"]
    rec = parse_record(st.settle.record("hs-1"))
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (123, 45, 7), rec
    # the same without hide_usage: byte-exact
    r = stream_request(st.fe, "/s/hidesplit", b"{}", {"x-t-rid": "hs-2"})
    assert r["body"] == stream


@case
def hiding_does_not_hold_ordinary_events(st):
    e1 = chat_ev("first")
    # the first part already shows a non-empty "choices": it must leave at once
    k = e1.index(b'"choices": [{') + 14
    pieces = [(0, e1[:k]), (0.5, e1[k:]), (0, b"data: [DONE]\n\n")]
    st.scripted.scripts["nohold"] = {"pieces": pieces}
    r = stream_request(st.fe, "/s/nohold", b"{}", {"x-t-rid": "nh-1", "x-t-hide": "1"})
    assert r["body"] == e1 + b"data: [DONE]\n\n"
    t_first = r["chunks"][0][0]
    assert len(r["chunks"][0][1]) == k and t_first < 0.35, r["chunks"]
    # a partial event that may be the usage one is held until it is known
    u = USAGE_EV
    pieces = [(0, e1 + u[:25]), (0.4, u[25:]), (0, b"data: [DONE]\n\n")]
    st.scripted.scripts["hold"] = {"pieces": pieces}
    r = stream_request(st.fe, "/s/hold", b"{}", {"x-t-rid": "nh-2", "x-t-hide": "1"})
    assert r["body"] == e1 + b"data: [DONE]\n\n", r["body"]
    assert r["chunks"][0][1] == e1 and r["chunks"][0][0] < 0.3, r["chunks"]


@case
def content_length_sse_is_never_rewritten(st):
    stream = chat_ev("abc") + USAGE_EV + b"data: [DONE]\n\n"
    st.scripted.scripts["clen"] = {"pieces": [(0, stream[:50]), (0.05, stream[50:])],
                                   "clen": True}
    r = stream_request(st.fe, "/s/clen", b"{}", {"x-t-rid": "cl-1", "x-t-hide": "1"})
    assert r["body"] == stream
    rec = parse_record(st.settle.record("cl-1"))
    assert (rec["u_in"], rec["u_out"], rec["seen"]) == (123, 45, 3), rec


@case
def client_abort_mid_stream_still_records_seen_chars(st):
    body = chat_body(max_tokens=None)
    hdrs = {"x-t-rid": "abort-1", "x-mock-delay-ms": "150", "x-mock-completion-tokens": "40"}
    r = stream_request(st.fe, CHAT, body, hdrs, abort_after=500)
    assert r["aborted"]
    rec = parse_record(st.settle.record("abort-1", timeout=15))
    assert rec["seen"] is not None and rec["seen"] > 0, rec
    assert rec["u_out"] is None, rec                # usage never came
    assert rec["ts"][0] == "C", "termination state should say client: %r" % rec
    sys.stderr.write("aborted stream record: %s\n" % rec)
    st.check_alive()


@case
def json_body_larger_than_buffer_keeps_tail_and_usage(st):
    body = chat_body(stream=False, include_usage=False)
    hdrs = {"x-t-rid": "big-1", "x-mock-pad-bytes": "20000"}
    r = stream_request(st.fe, CHAT, body, hdrs)
    assert r["status"] == 200 and len(r["body"]) > 20000
    full = json.loads(r["body"])
    rec = parse_record(st.settle.record("big-1"))
    assert (rec["u_in"], rec["u_out"]) == (full["usage"]["prompt_tokens"],
                                          full["usage"]["completion_tokens"]), rec
    assert rec["seen"] is None, rec
    # the tail itself, through the second frontend
    r = stream_request(st.fe_tail, CHAT, body, {"x-t-rid": "big-2", "x-mock-pad-bytes": "20000"})
    line = st.settle.record("big-2", prefix="tgtail ")
    _, rid, u_in, u_out, tlen, b64, _ = line.split(" ")
    tail = base64.b64decode(b64)
    assert tlen == "4096" and tail == r["body"][-4096:], (tlen, tail[-100:])
    assert b'"usage": {' in tail and (int(u_in), int(u_out)) == (ptok(body), 10)
    # HAProxy quirk: http-response rules (and so an SPOE response message)
    # run before the filter sees the body: the tail is not there yet, and
    # res.body holds only the first buffer's worth.
    assert "x-tail-at-rules" not in r["headers"], r["headers"]
    seen = int(r["headers"]["x-body-at-rules"])
    assert seen < len(r["body"]), (seen, len(r["body"]))
    sys.stderr.write("body %d bytes; res.body at wait-for-body: %d bytes; tail 4096 bytes\n"
                     % (len(r["body"]), seen))
    # a chunked JSON body
    blob = json.dumps({"data": ["y" * 50] * 200, "usage": {"prompt_tokens": 77,
                                                          "completion_tokens": 8}}).encode()
    st.scripted.scripts["jchunk"] = {"pieces": [(0.01, p) for p in cut(blob, 3000, 6000, 9000)],
                                     "ctype": "application/json"}
    r = stream_request(st.fe_tail, "/s/jchunk", b"{}", {"x-t-rid": "jc-1"})
    assert r["body"] == blob
    f = st.settle.record("jc-1", prefix="tgtail ").split(" ")
    assert (f[2], f[3], f[4]) == ("77", "8", "4096") and base64.b64decode(f[5]) == blob[-4096:], f[:5]
    # a small JSON body: tail = the whole body
    r = stream_request(st.fe_tail, CHAT, body, {"x-t-rid": "small-1"})
    line = st.settle.record("small-1", prefix="tgtail ")
    assert base64.b64decode(line.split(" ")[5]) == r["body"]


@case
def request_body_swap_sets_body_and_length(st):
    orig = chat_body(stream=False, include_usage=False, extra={"model": "alias"})
    new = chat_body(stream=False, include_usage=False,
                    extra={"model": "real-model-name", "stream_options": {"include_usage": True}})
    assert len(new) != len(orig)
    st.mock.clear_requests()
    r = stream_request(st.fe, CHAT, orig, {"x-t-rid": "swap-1", "x-t-body": new.decode()})
    assert r["status"] == 200, r
    seen = st.mock.requests()
    assert len(seen) == 1, seen
    assert seen[0]["body"].encode() == new, seen[0]["body"]
    assert seen[0]["headers"]["content-length"] == str(len(new)), seen[0]["headers"]
    assert json.loads(r["body"])["model"] == "real-model-name"
    # a shorter body too
    short = b'{"model":"m"}'
    st.mock.clear_requests()
    r = stream_request(st.fe, CHAT, orig, {"x-t-body": short.decode()})
    seen = st.mock.requests()
    assert seen[0]["body"].encode() == short and seen[0]["body_len"] == len(short), seen
    # a chunked request body: the rule's content-length frames the new body
    st.mock.clear_requests()
    r = stream_request(st.fe, CHAT, orig, {"x-t-body": new.decode()}, chunked_body=True)
    seen = st.mock.requests()
    assert r["status"] == 200 and len(seen) == 1, (r, seen)
    assert seen[0]["body"].encode() == new, seen[0]
    sys.stderr.write("chunked request swapped: upstream saw headers %r\n"
                     % {k: v for k, v in seen[0]["headers"].items()
                        if k in ("content-length", "transfer-encoding")})
    # no body_new: the body is untouched
    st.mock.clear_requests()
    stream_request(st.fe, CHAT, orig, {"x-t-rid": "swap-3"})
    assert st.mock.requests()[0]["body"].encode() == orig


@case
def no_rid_means_no_metering(st):
    body = chat_body(max_tokens=2)
    r = stream_request(st.fe, CHAT, body, {"x-t-ctx": "norid-ctx"})
    assert r["status"] == 200

    def find():
        for m in st.settle.records():
            if " norid-ctx " in m:
                return m
        return None
    rec = parse_record(H.wait_for(find, 10, what="record without rid"))
    assert (rec["rid"], rec["u_in"], rec["u_out"], rec["seen"]) == ("-", None, None, None), rec


@case
def garbage_never_breaks_a_stream(st):
    rnd = random.Random(4242)
    nasty = [b'data: {"usage": {', b'data: {"usage": {"prompt_tokens": 99999999999999999999}}\n\n',
             b'data: {"choices": [], "usage": {"prompt_tokens": "x"}}\n\n',
             b'data: {"choices":[{"delta":{"content":"unterminated', b"\x00\xff\xfe\r\r\n",
             b'data: {"choices":[{"delta":{"content":"\\u12"}}]}\n\n', b"data:\n\n",
             b'data: {"type":"response.output_text.delta","delta":"\\', b"\n\n" * 5,
             b"data: " + b"{" * 3000 + b"\n\n", b'event: x\n', b"\xc3"]
    for i in range(20):
        parts = []
        for _ in range(rnd.randint(5, 40)):
            if rnd.random() < 0.4:
                parts.append(rnd.choice(nasty))
            else:
                parts.append(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300))))
        blob = b"".join(parts)
        points = sorted(rnd.sample(range(1, len(blob)), min(10, len(blob) - 1)))
        name = "garbage%d" % i
        st.scripted.scripts[name] = {"pieces": [(0, p) for p in cut(blob, *points)]}
        hide = {"x-t-hide": "1"} if i % 2 else {}
        r = stream_request(st.fe, "/s/" + name, b"{}", dict({"x-t-rid": "g-%d" % i}, **hide))
        assert r["status"] == 200
        if not hide:
            assert r["body"] == blob, "garbage %d altered" % i
        rec = parse_record(st.settle.record("g-%d" % i))
        assert rec["status"] == 200 and rec["ts"] == "--", rec
    # a JSON garbage body too
    st.scripted.scripts["jg"] = {"pieces": [(0, b'{"usage": {"prompt_tokens": 5, "x'),
                                            (0.01, b"\xff" * 5000)], "ctype": "application/json"}
    r = stream_request(st.fe, "/s/jg", b"{}", {"x-t-rid": "jg-1"})
    rec = parse_record(st.settle.record("jg-1"))
    assert rec["status"] == 200
    st.check_alive()


@case
def concurrent_streams_each_get_their_record(st):
    def one(i):
        body = chat_body(max_tokens=1 + i % 7)
        hide = {"x-t-hide": "1"} if i % 2 else {}
        r = stream_request(st.fe, CHAT, body, dict({"x-t-rid": "cc-%d" % i}, **hide))
        assert r["status"] == 200
        assert (b'"usage"' in r["body"]) == (not hide), i
        return body

    bodies = H.run_parallel(one, range(60), threads=12)
    for i, body in enumerate(bodies):
        rec = parse_record(st.settle.record("cc-%d" % i))
        n = 1 + i % 7
        assert (rec["u_in"], rec["u_out"], rec["seen"]) == (ptok(body), n, chars_of(n)), (i, rec)
    st.check_alive()


@case
def records_are_complete_lines(st):
    recs = [m for m in st.settle.records() if m.startswith("tg1 ")]
    assert recs, "no records"
    for m in recs:
        parse_record(m)
    ids = [m.split(" ")[1] for m in recs]
    assert len(ids) == len(set(ids)), "a transaction logged twice"


if __name__ == "__main__":
    main(setup=setup, teardown=teardown)
