#!/usr/bin/env python3
"""mock_upstream.py -- a deterministic mock LLM provider for end-to-end tests.

    python3 tests/e2e/mock_upstream.py --port P --record FILE

Python 3 stdlib only; one thread per connection (ThreadingHTTPServer), HTTP/1.1
keep-alive. It prints "READY port=P" on stdout once it listens (--port 0 picks a
free port).

Recording. Every request is appended to FILE as one JSON line, written and
flushed BEFORE the response is sent, so once a client has its answer the line is
there:
    {"seq": N, "method", "path" (without query), "query" (raw string),
     "args" ({name: [values]} from the query), "headers" ({lower-name: last value}),
     "header_list" ([[name, value], ...] as received), "body" (text, utf-8 with
     replacement), "body_len" (bytes)}

Endpoints (OpenAI-shaped answers; anything else is 404 with an error body):
    GET  /health                                   200 "ok"
    ANY  /echo, /echo/...                          200, the request's record as JSON
    GET  /v1/models                                a one-model list
    POST /v1/chat/completions                      chat.completion
    POST /openai/deployments/NAME/chat/completions Azure: the same; model = NAME
                                                   when the body has no "model"
    POST /v1/completions                           text_completion
    POST /v1/embeddings                            list of embeddings
    POST /v1/responses                             OpenAI Responses API object
A "/v1" prefix may be preceded by any path (e.g. /compatible-mode/v1/...), so
the mock also stands in for qwen/deepseek/doubao-style base URLs.

Token accounting (deterministic):
    prompt_tokens     = ceil(len(raw request body in bytes) / 4)
    completion_tokens = x-mock-completion-tokens if given, else
                        min(10, max_tokens or max_completion_tokens or
                        max_output_tokens from the body when present)
    total_tokens      = prompt_tokens + completion_tokens
The completion text is completion_tokens times the word "tok", joined by single
spaces (one word per token). "usage" is the LAST key of a JSON answer.
Embeddings carry usage {prompt_tokens, total_tokens} (as OpenAI does), one
8-float vector per input; /v1/responses carries usage {input_tokens,
output_tokens, total_tokens} (as the Responses API does).

Streaming, when the JSON body has "stream": true (Transfer-Encoding: chunked,
Content-Type: text/event-stream):
    chat/completions, completions: a first chunk (role for chat), one chunk per
        completion token, a chunk with finish_reason "stop", then -- only when
        stream_options.include_usage is true -- a chunk with "choices": [] and
        "usage", then "data: [DONE]". Each event is "data: {json}\\n\\n" and is
        sent in its own HTTP chunk.
    responses: "event: <type>\\ndata: {json}\\n\\n" events response.created,
        one response.output_text.delta per token, response.completed (its
        "response" carries usage); no [DONE].

Behaviour switches (request headers):
    x-mock-status: N              answer status N with an OpenAI error body
                                  {"error": {"message", "type", "code"}}
    x-mock-delay-ms: N            sleep N ms before the answer, and between
                                  stream events
    x-mock-no-usage: 1            no usage at all (JSON and streams)
    x-mock-completion-tokens: N   exactly N completion tokens
    x-mock-pad-bytes: N           add "mock_padding": N times "x" to the JSON
                                  answer (before "usage"), or to the first
                                  stream event
Every answer carries "x-mock-seq: N" (the record's seq).
"""
import argparse
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREATED = 1700000000
DEFAULT_COMPLETION_TOKENS = 10


class Recorder:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.seq = 0
        self.fh = open(path, "a", encoding="utf-8") if path else None

    def record(self, entry):
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            if self.fh:
                self.fh.write(json.dumps(entry, sort_keys=False) + "\n")
                self.fh.flush()
            return self.seq


def prompt_tokens_of(raw):
    return (len(raw) + 3) // 4


def int_header(headers, name, default=None):
    v = headers.get(name)
    if v is None:
        return default
    try:
        return int(v.strip())
    except ValueError:
        return default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without TCP_NODELAY, Nagle plus
    # the peer's delayed ACK adds 40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    server_version = "mock-upstream/1"
    sys_version = ""

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    # -- request plumbing -------------------------------------------------

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def handle_any(self):
        raw = self.read_body()
        url = urllib.parse.urlsplit(self.path)
        entry = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "args": urllib.parse.parse_qs(url.query, keep_blank_values=True),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": [[k, v] for k, v in self.headers.items()],
            "body": raw.decode("utf-8", "replace"),
            "body_len": len(raw),
        }
        self.seq = self.server.recorder.record(entry)
        self.entry = entry
        try:
            self.dispatch(url.path, raw)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

    def send_json(self, status, obj, extra_headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-mock-seq", str(self.seq))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(self, status, message, etype="mock_error"):
        self.send_json(status, {"error": {"message": message, "type": etype,
                                          "code": status}})

    # -- routing ----------------------------------------------------------

    def dispatch(self, path, raw):
        h = self.headers
        delay = int_header(h, "x-mock-delay-ms", 0) / 1000.0
        if path == "/health":
            return self.send_text(200, "ok\n")
        if path == "/echo" or path.startswith("/echo/"):
            return self.send_json(200, self.entry)
        status = int_header(h, "x-mock-status")
        if status is not None and status != 200:
            if delay:
                time.sleep(delay)
            return self.send_error_json(status, "mock error status %d" % status)
        if path == "/v1/models" or path.endswith("/v1/models"):
            return self.send_json(200, {"object": "list", "data": [
                {"id": "mock-model", "object": "model", "created": CREATED,
                 "owned_by": "mock"}]})
        kind, model = self.classify(path)
        if kind is None:
            return self.send_error_json(404, "no such endpoint: %s" % path,
                                        "invalid_request_error")
        if self.command != "POST":
            return self.send_error_json(405, "use POST", "invalid_request_error")
        try:
            req = json.loads(raw) if raw else {}
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            return self.send_error_json(400, "body is not a JSON object",
                                        "invalid_request_error")
        model = req.get("model") or model or "mock-model"
        ptok = prompt_tokens_of(raw)
        ctok = int_header(h, "x-mock-completion-tokens")
        if ctok is None:
            ctok = DEFAULT_COMPLETION_TOKENS
            for k in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                if isinstance(req.get(k), int) and req[k] >= 0:
                    ctok = min(ctok, req[k])
                    break
        opts = {
            "model": model, "ptok": ptok, "ctok": ctok, "delay": delay,
            "usage": h.get("x-mock-no-usage") is None,
            "pad": int_header(h, "x-mock-pad-bytes", 0),
        }
        if kind == "embeddings":
            return self.embeddings(req, opts)
        if delay and not req.get("stream"):
            time.sleep(delay)
        if req.get("stream") is True:
            so = req.get("stream_options") or {}
            opts["include_usage"] = bool(isinstance(so, dict) and so.get("include_usage"))
            return self.stream(kind, opts)
        return self.send_json(200, self.full_answer(kind, opts))

    @staticmethod
    def classify(path):
        parts = [p for p in path.split("/") if p]
        if len(parts) == 5 and parts[:2] == ["openai", "deployments"] \
                and parts[3:] == ["chat", "completions"]:
            return "chat", parts[2]
        for suffix, kind in (("/v1/chat/completions", "chat"),
                             ("/v1/completions", "completions"),
                             ("/v1/embeddings", "embeddings"),
                             ("/v1/responses", "responses")):
            if path.endswith(suffix):
                return kind, None
        return None, None

    def send_text(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-mock-seq", str(self.seq))
        self.end_headers()
        self.wfile.write(data)

    # -- answers ----------------------------------------------------------

    @staticmethod
    def text_of(ctok):
        return " ".join(["tok"] * ctok)

    def usage_of(self, opts):
        return {"prompt_tokens": opts["ptok"], "completion_tokens": opts["ctok"],
                "total_tokens": opts["ptok"] + opts["ctok"]}

    def full_answer(self, kind, opts):
        text = self.text_of(opts["ctok"])
        rid = "mock-%d" % self.seq
        if kind == "chat":
            obj = {"id": "chatcmpl-" + rid, "object": "chat.completion",
                   "created": CREATED, "model": opts["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}}]}
        elif kind == "completions":
            obj = {"id": "cmpl-" + rid, "object": "text_completion",
                   "created": CREATED, "model": opts["model"],
                   "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                "logprobs": None}]}
        else:  # responses
            obj = self.response_object(opts, "completed")
            obj.pop("usage", None)
        if opts["pad"] > 0:
            obj["mock_padding"] = "x" * opts["pad"]
        if opts["usage"]:
            if kind == "responses":
                obj["usage"] = self.responses_usage(opts)
            else:
                obj["usage"] = self.usage_of(opts)
        return obj

    def responses_usage(self, opts):
        return {"input_tokens": opts["ptok"], "output_tokens": opts["ctok"],
                "total_tokens": opts["ptok"] + opts["ctok"]}

    def response_object(self, opts, status):
        obj = {"id": "resp_mock-%d" % self.seq, "object": "response",
               "created_at": CREATED, "status": status, "model": opts["model"],
               "output": []}
        if status == "completed":
            obj["output"] = [{"type": "message", "id": "msg_mock-%d" % self.seq,
                              "status": "completed", "role": "assistant",
                              "content": [{"type": "output_text",
                                           "text": self.text_of(opts["ctok"]),
                                           "annotations": []}]}]
            if opts["usage"]:
                obj["usage"] = self.responses_usage(opts)
        return obj

    def embeddings(self, req, opts):
        inp = req.get("input", "")
        n = len(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else 1
        if opts["delay"]:
            time.sleep(opts["delay"])
        obj = {"object": "list", "model": opts["model"],
               "data": [{"object": "embedding", "index": i,
                         "embedding": [round((i + 1) * 0.001 * (k + 1), 6)
                                       for k in range(8)]} for i in range(n)]}
        if opts["pad"] > 0:
            obj["mock_padding"] = "x" * opts["pad"]
        if opts["usage"]:
            obj["usage"] = {"prompt_tokens": opts["ptok"], "total_tokens": opts["ptok"]}
        return self.send_json(200, obj)

    # -- streaming --------------------------------------------------------

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def stream(self, kind, opts):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-mock-seq", str(self.seq))
        self.end_headers()
        self.wfile.flush()
        events = self.responses_events(opts) if kind == "responses" \
            else self.chat_events(kind, opts)
        first = True
        for ev in events:
            if not first and opts["delay"]:
                time.sleep(opts["delay"])
            first = False
            self.write_chunk(ev)
        self.write_chunk(b"")  # the zero-size chunk ends the body

    def chat_events(self, kind, opts):
        rid = "mock-%d" % self.seq
        chat = kind == "chat"
        base = {"id": ("chatcmpl-" if chat else "cmpl-") + rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": CREATED, "model": opts["model"]}

        def ev(choices, **extra):
            obj = dict(base, choices=choices)
            obj.update(extra)
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def choice(content, finish=None):
            if chat:
                return {"index": 0, "delta": content, "finish_reason": finish}
            return {"index": 0, "text": content.get("content", ""),
                    "finish_reason": finish, "logprobs": None}

        pad = {"mock_padding": "x" * opts["pad"]} if opts["pad"] > 0 else {}
        yield ev([choice({"role": "assistant", "content": ""} if chat
                         else {"content": ""})], **pad)
        for i in range(opts["ctok"]):
            yield ev([choice({"content": "tok" if i == 0 else " tok"})])
        yield ev([choice({}, "stop")])
        if opts["include_usage"] and opts["usage"]:
            yield ev([], usage=self.usage_of(opts))
        yield b"data: [DONE]\n\n"

    def responses_events(self, opts):
        def ev(etype, obj):
            obj = dict({"type": etype}, **obj)
            return ("event: %s\ndata: %s\n\n" % (etype, json.dumps(obj))).encode()

        created = {"response": self.response_object(opts, "in_progress")}
        if opts["pad"] > 0:
            created["mock_padding"] = "x" * opts["pad"]
        yield ev("response.created", created)
        for i in range(opts["ctok"]):
            yield ev("response.output_text.delta",
                     {"item_id": "msg_mock-%d" % self.seq, "output_index": 0,
                      "content_index": 0, "delta": "tok" if i == 0 else " tok"})
        yield ev("response.completed",
                 {"response": self.response_object(opts, "completed")})


def main():
    ap = argparse.ArgumentParser(description="deterministic mock LLM provider")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--record", default=None, help="JSON-lines file of requests")
    args = ap.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.request_queue_size = 256
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.recorder = Recorder(args.record)
    print("READY port=%d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
