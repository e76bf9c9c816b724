/* http_server.h -- the agent's small HTTP/1.1 server (agent.http): /metrics,
 * the dashboard, the JSON admin API and the mock provider.
 *
 * Owns: listening, connections, request parsing, routing and response
 * framing on one libev loop. Handlers get a parsed request and answer it in
 * one of three ways:
 *
 *   at once     http_reply() / http_reply_ex() before the handler returns;
 *   later       http_req_defer() in the handler, then http_reply() from any
 *               loop callback (timer, Redis reply, ...);
 *   streamed    http_stream_begin(), http_stream_write()..., http_stream_end()
 *               (chunked transfer encoding; SSE).
 *
 * The request's lifetime (the reference scheme). A request is referenced by
 * its connection and by its handler. The handler's reference lasts from the
 * dispatch until its FINAL call -- exactly one of http_reply(),
 * http_reply_ex() or http_stream_end() -- which always frees the request;
 * `req` must not be used after it. If the client goes away first (EOF, reset,
 * send timeout, http_server_free()), the connection drops its reference: the
 * request is "detached", the cancel callback given to http_req_defer() (if
 * any) runs once, and every later write is a silent no-op returning -1. The
 * handler must still make its final call (possibly from inside the cancel
 * callback); the request stays valid until then, so a late callback that
 * cannot be cancelled (a Redis reply in flight) simply answers into the void.
 * A handler that returns without answering and without deferring gets a 500
 * from the server (and a log line): nothing hangs silently.
 *
 * A client that half-closes (EOF) while its answer is pending is treated as
 * gone, as nginx does by default; answers produced synchronously before the
 * EOF is seen are still delivered.
 *
 * Limits: request line + headers at most 16 KiB (431; a request line over
 * 8 KiB is 414), at most 100 header fields (431), bodies only with
 * Content-Length and at most 1 MiB or what http_server_set_max_body() says
 * (413). A chunked request body
 * (Transfer-Encoding) is refused with 411 and the connection is closed.
 * HTTP/1.1 requests need a Host header (400). Every error answer closes the
 * connection (after a lingering close, so the client reads the answer).
 * Keep-alive and pipelining: requests of one connection are handled strictly
 * one at a time, in order; the next is parsed when the previous is answered.
 *
 * Routes: a request goes to the route with the longest matching path prefix
 * whose method matches (NULL or "*" = any method; HEAD matches GET routes and
 * gets no body). A prefix matches the path itself, or a longer path when the
 * prefix ends with '/' or the path continues with '/': "/metrics" matches
 * "/metrics" and "/metrics/x" but not "/metricsx"; "/mock/" matches all under
 * it; "/" matches everything (a fallback). A prefix ending in '$' matches
 * exactly: "/$" is the root page only. A path matched only by routes of
 * other methods answers 405, no path match 404. Paths are matched raw (not
 * percent-decoded).
 *
 * Not for use from handlers: http_server_free(). Single-threaded.
 */
#ifndef TOLLGATE_HTTP_SERVER_H
#define TOLLGATE_HTTP_SERVER_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEAD     (16u * 1024u)    /* request line + headers */
#define HTTP_MAX_LINE     (8u * 1024u)     /* request line */
#define HTTP_MAX_HEADERS  100u
#define HTTP_MAX_BODY     (1024u * 1024u)

struct http_server;
struct http_req;

typedef void (*http_handler_fn)(struct http_req *req, void *ctx);
/* The client went away before the final call; see the lifetime rules above. */
typedef void (*http_cancel_fn)(struct http_req *req, void *arg);

struct http_stats {
	uint64_t conns_accepted, conns_active;
	uint64_t requests, responses[6];     /* responses by class: [2] = 2xx ... */
	uint64_t bad_requests;               /* parse errors and limits (4xx by us) */
	uint64_t cancelled;                  /* client gone before the final call */
	uint64_t timeouts;                   /* idle, request and send timeouts */
};

/* ---- server --------------------------------------------------------- */

/* Listens on addr ("host:port", ":port", "[v6]:port", "unix:/path").
 * NULL with a message in err on failure. */
struct http_server *http_server_new(struct ev_loop *loop, const char *addr,
                                    char *err, size_t errlen);
/* Seconds: idle keep-alive connection (default 30), receiving one request
 * from its first byte to its last (default 30, then 408), no progress while
 * sending (default 30, then the connection is dropped). 0 keeps a value. */
void http_server_set_timeouts(struct http_server *srv, double idle, double request,
                              double send);
/* The largest request body (never below HTTP_MAX_BODY): the built-in mock
 * provider receives prompts as large as haproxy.max_body. */
void http_server_set_max_body(struct http_server *srv, size_t max);
/* Adds a route (see the rules above). -1 if the table is full or an argument
 * is invalid. The strings are copied. */
int  http_server_route(struct http_server *srv, const char *method,
                       const char *path_prefix, http_handler_fn fn, void *ctx);
/* Closes the listener and every connection (after one non-blocking write of
 * what each has queued); pending requests are detached (cancel callbacks
 * run). */
void http_server_free(struct http_server *srv);
struct ev_loop *http_server_loop(const struct http_server *srv);
const struct http_stats *http_server_stats(const struct http_server *srv);
/* The bound TCP port (useful with ":0"), or 0 for a unix socket. */
int  http_server_port(const struct http_server *srv);

/* ---- the request (valid until the handler's final call) ------------- */

const char *http_req_method(const struct http_req *req);
const char *http_req_path(const struct http_req *req);     /* before '?' */
const char *http_req_query(const struct http_req *req);    /* after '?', "" if none */
/* First header of that name (case-insensitive), value trimmed; NULL if absent. */
const char *http_req_header(const struct http_req *req, const char *name);
size_t      http_req_header_count(const struct http_req *req);
void        http_req_header_at(const struct http_req *req, size_t i,
                               const char **name, const char **value);
/* The body (NUL-terminated for convenience; *len excludes the NUL). */
const char *http_req_body(const struct http_req *req, size_t *len);
/* Client address as text ("127.0.0.1", "::1", "unix"), and whether it is a
 * loopback or unix peer (the admin API's default access rule). */
const char *http_req_peer(const struct http_req *req);
bool        http_req_peer_is_local(const struct http_req *req);
/* False once the client is gone (the request is detached). */
bool        http_req_connected(const struct http_req *req);

/* ---- answering ------------------------------------------------------ */

/* Answer later; cancel (may be NULL) runs if the client goes away first. May
 * be called again to change the callback; also valid while streaming. */
void http_req_defer(struct http_req *req, http_cancel_fn cancel, void *arg);

/* Final calls: queue the whole answer and free req. 0 if queued, -1 if the
 * client was gone (dropped). extra_headers: NULL or preformatted
 * "Name: value\r\n" lines. content_type NULL = no Content-Type header. */
int http_reply(struct http_req *req, int status, const char *content_type,
               const void *body, size_t len);
int http_reply_ex(struct http_req *req, int status, const char *content_type,
                  const char *extra_headers, const void *body, size_t len);

/* Streaming: headers now, then chunks, then http_stream_end() (final call).
 * HTTP/1.0 clients get an unframed body and a close. Writes of 0 bytes are
 * ignored. -1: the client is gone (stop producing; still call _end), or the
 * request is not streaming, or the client is so slow that 8 MiB are queued
 * (the connection is then dropped). */
int http_stream_begin(struct http_req *req, int status, const char *content_type);
int http_stream_begin_ex(struct http_req *req, int status, const char *content_type,
                         const char *extra_headers);
int http_stream_write(struct http_req *req, const void *data, size_t len);
int http_stream_end(struct http_req *req);

/* ---- helpers -------------------------------------------------------- */

/* Reason phrase of a status ("Not Found"). */
const char *http_status_text(int status);
/* Looks name up in an application/x-www-form-urlencoded string (a query or
 * a form body) of length len, decoding %XX and '+'. Returns the decoded
 * length (value NUL-terminated in out), -1 if absent, -2 if it does not fit
 * or is malformed. */
int http_form_get(const char *s, size_t len, const char *name, char *out, size_t outlen);

#endif
