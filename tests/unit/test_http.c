/* test_http.c -- the agent's HTTP server, /metrics and the mock provider,
 * over real sockets.
 *
 * The program forks: the child runs an http_server (short timeouts), the
 * mock provider, the metrics routes and a few test routes on its own libev
 * loop; the parent is a plain blocking client speaking raw HTTP/1.1, so
 * every byte on the wire is what we assert. The last case asks the child to
 * quit and checks it exits 0 (under ASan, that includes the leak check of
 * everything the server allocated).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "http_server.h"
#include "metrics.h"
#include "mock_provider.h"

#define TIMEOUT_S 1.0      /* the child's idle, request and send timeouts */
#ifndef FUZZ_ITERS
#define FUZZ_ITERS 400     /* mutated requests (-DFUZZ_ITERS=N for a longer run) */
#endif

static int port;
static pid_t child;
static unsigned pace_ms;   /* the client sleeps this long before each read */

/* ==== the server (child) ============================================== */

struct tstate {
	struct ev_loop *loop;
	struct http_server *srv;
	struct mock_provider *mp;
	struct metrics *m;
	unsigned cancelled, late_dropped;
	struct ajob *jobs;
	ev_timer quit;
};

/* An async answer: a timer, and a cancel callback that only takes note (the
 * late reply is then dropped by the server, like a Redis reply in flight),
 * or, for streams, ends the stream at once. */
struct ajob {
	struct tstate *t;
	struct http_req *req;
	ev_timer timer;
	unsigned left;
	bool stream;
	struct ajob *next;
};

static unsigned query_uint(const struct http_req *req, const char *name, unsigned dflt)
{
	char v[32];
	const char *q = http_req_query(req);

	if (http_form_get(q, strlen(q), name, v, sizeof(v)) < 0)
		return dflt;
	return (unsigned)strtoul(v, NULL, 10);
}

static void ajob_free(struct ajob *j)
{
	struct ajob **pp = &j->t->jobs;

	while (*pp != j)
		pp = &(*pp)->next;
	*pp = j->next;
	ev_timer_stop(j->t->loop, &j->timer);
	free(j);
}

static void ajob_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ajob *j = w->data;
	char line[32];

	(void)loop; (void)revents;
	if (!j->stream) {
		if (http_reply(j->req, 200, "text/plain", "late\n", 5) != 0)
			j->t->late_dropped++;
		ajob_free(j);
		return;
	}
	snprintf(line, sizeof(line), "chunk %u\n", j->left);
	if (http_stream_write(j->req, line, strlen(line)) != 0 || --j->left == 0) {
		http_stream_end(j->req);
		ajob_free(j);
	}
}

static void ajob_cancel(struct http_req *req, void *arg)
{
	struct ajob *j = arg;

	(void)req;
	j->t->cancelled++;
	if (j->stream) {                       /* end it now */
		http_stream_end(j->req);
		ajob_free(j);
	}
}

static void ajob_start(struct tstate *t, struct http_req *req, bool stream, double after,
                       unsigned n)
{
	struct ajob *j = calloc(1, sizeof(*j));

	j->t = t;
	j->req = req;
	j->stream = stream;
	j->left = n;
	j->next = t->jobs;
	t->jobs = j;
	ev_timer_init(&j->timer, ajob_fire, after, stream ? after : 0);
	j->timer.data = j;
	ev_timer_start(t->loop, &j->timer);
	http_req_defer(req, ajob_cancel, j);
}

static void h_hello(struct http_req *req, void *ctx)
{
	(void)ctx;
	http_reply(req, 200, "text/plain", "hello", 5);
}

static void h_echo(struct http_req *req, void *ctx)
{
	size_t len;
	const char *b = http_req_body(req, &len);
	char extra[64];

	(void)ctx;
	snprintf(extra, sizeof(extra), "X-Len: %zu\r\n", len);
	http_reply_ex(req, 200, "application/octet-stream", extra, b, len);
}

static void h_header(struct http_req *req, void *ctx)
{
	char name[64];
	const char *q = http_req_query(req), *v;

	(void)ctx;
	if (http_form_get(q, strlen(q), "name", name, sizeof(name)) < 0 ||
	    !(v = http_req_header(req, name))) {
		http_reply(req, 204, NULL, NULL, 0);
		return;
	}
	http_reply(req, 200, "text/plain", v, strlen(v));
}

static void h_async(struct http_req *req, void *ctx)
{
	ajob_start(ctx, req, false, query_uint(req, "ms", 10) / 1000.0, 0);
}

static void h_stream(struct http_req *req, void *ctx)
{
	unsigned n = query_uint(req, "n", 3), ms = query_uint(req, "ms", 10);

	http_stream_begin(req, 200, "text/plain");
	ajob_start(ctx, req, true, ms / 1000.0, n ? n : 1);
}

static void h_big(struct http_req *req, void *ctx)
{
	unsigned n = query_uint(req, "n", 1000);
	char *b = malloc(n);

	(void)ctx;
	for (unsigned i = 0; i < n; i++)
		b[i] = (char)('a' + i % 26);
	http_reply(req, 200, "application/octet-stream", b, n);
	free(b);
}

static void h_noanswer(struct http_req *req, void *ctx)
{
	(void)req; (void)ctx;                  /* the server answers 500 */
}

static void h_stats(struct http_req *req, void *ctx)
{
	struct tstate *t = ctx;
	const struct http_stats *st = http_server_stats(t->srv);
	char b[256];
	int n = snprintf(b, sizeof(b), "cancelled=%u late_dropped=%u mock_active=%u "
	                 "http_cancelled=%llu timeouts=%llu conns=%llu",
	                 t->cancelled, t->late_dropped, mock_provider_active(t->mp),
	                 (unsigned long long)st->cancelled, (unsigned long long)st->timeouts,
	                 (unsigned long long)st->conns_active);

	http_reply(req, 200, "text/plain", b, (size_t)n);
}

static void quit_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w; (void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void h_quit(struct http_req *req, void *ctx)
{
	struct tstate *t = ctx;

	http_reply(req, 200, "text/plain", "bye", 3);
	ev_timer_start(t->loop, &t->quit);
}

static int server_main(int wfd)
{
	struct tstate t = { 0 };
	char err[256];

	signal(SIGPIPE, SIG_IGN);
	t.loop = ev_default_loop(0);
	t.srv = http_server_new(t.loop, "127.0.0.1:0", err, sizeof(err));
	if (!t.srv) {
		fprintf(stderr, "server: %s\n", err);
		return 1;
	}
	http_server_set_timeouts(t.srv, TIMEOUT_S, TIMEOUT_S, TIMEOUT_S);
	http_server_route(t.srv, "GET", "/test/hello", h_hello, &t);
	http_server_route(t.srv, "POST", "/test/echo", h_echo, &t);
	http_server_route(t.srv, "GET", "/test/header", h_header, &t);
	http_server_route(t.srv, "GET", "/test/async", h_async, &t);
	http_server_route(t.srv, "GET", "/test/stream", h_stream, &t);
	http_server_route(t.srv, "GET", "/test/big", h_big, &t);
	http_server_route(t.srv, "GET", "/test/noanswer", h_noanswer, &t);
	http_server_route(t.srv, "GET", "/test/stats", h_stats, &t);
	http_server_route(t.srv, "POST", "/test/quit", h_quit, &t);
	t.m = metrics_new();
	t.mp = mock_provider_new(t.srv);
	if (!t.m || !t.mp || metrics_http_register(t.m, t.srv) != 0)
		return 1;
	ev_timer_init(&t.quit, quit_cb, 0.1, 0);
	port = http_server_port(t.srv);
	if (write(wfd, &port, sizeof(port)) != sizeof(port))
		return 1;
	close(wfd);
	ev_run(t.loop, 0);
	/* main.c's order: the mock ends its streams, then the server detaches
	 * what is still pending (our async jobs: their replies are dropped) */
	mock_provider_free(t.mp);
	http_server_free(t.srv);
	while (t.jobs) {
		if (http_reply(t.jobs->req, 200, NULL, NULL, 0) == 0)
			return 3;                      /* should have been detached */
		ajob_free(t.jobs);
	}
	metrics_free(t.m);
	ev_timer_stop(t.loop, &t.quit);
	ev_loop_destroy(t.loop);
	return 0;
}

/* ==== the client (parent) ============================================= */

struct cli {
	int fd;
	char buf[1 << 16];
	size_t len;
};

struct resp {
	int status;
	char head[HTTP_MAX_HEAD + 1];
	char *body;
	size_t blen;
	bool eof;                  /* the server closed after it */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void msleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int cli_open(struct cli *c)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { 5, 0 };
	int one = 1;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->len = 0;
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return connect(c->fd, (struct sockaddr *)&sin, sizeof(sin));
}

static void cli_close(struct cli *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int cli_send(struct cli *c, const char *s, size_t n)
{
	while (n) {
		ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);

		if (w <= 0)
			return -1;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

static int cli_sends(struct cli *c, const char *s)
{
	return cli_send(c, s, strlen(s));
}

/* More bytes into the buffer: >0 read, 0 EOF, -1 error or timeout. */
static ssize_t cli_fill(struct cli *c)
{
	ssize_t n;

	if (c->len == sizeof(c->buf))
		return -1;
	if (pace_ms)
		msleep(pace_ms);
	n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
	if (n > 0)
		c->len += (size_t)n;
	return n;
}

static void cli_take(struct cli *c, char *out, size_t n)
{
	if (out)
		memcpy(out, c->buf, n);
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
}

/* Exactly n bytes (appended to r->body). */
static int read_exact(struct cli *c, struct resp *r, size_t n)
{
	char *b = realloc(r->body, r->blen + n + 1);

	if (!b)
		return -1;
	r->body = b;
	while (n) {
		size_t k;

		if (c->len == 0 && cli_fill(c) <= 0)
			return -1;
		k = c->len < n ? c->len : n;
		cli_take(c, r->body + r->blen, k);
		r->blen += k;
		n -= k;
	}
	r->body[r->blen] = 0;
	return 0;
}

/* One CRLF-terminated line (without it) into out. */
static int read_line(struct cli *c, char *out, size_t len)
{
	char *eol;

	while (!(eol = memmem(c->buf, c->len, "\r\n", 2)))
		if (cli_fill(c) <= 0)
			return -1;
	if ((size_t)(eol - c->buf) >= len)
		return -1;
	cli_take(c, out, (size_t)(eol - c->buf));
	out[eol - c->buf] = 0;
	cli_take(c, NULL, 2);
	return 0;
}

static const char *hdr(const struct resp *r, const char *name, char *out, size_t len)
{
	size_t nl = strlen(name);

	for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
		const char *line = p + 2, *end = strstr(line, "\r\n");

		if (end && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
			const char *v = line + nl + 1;

			while (*v == ' ')
				v++;
			snprintf(out, len, "%.*s", (int)(end - v), v);
			return out;
		}
	}
	return NULL;
}

static int read_chunked(struct cli *c, struct resp *r)
{
	char line[64];

	for (;;) {
		unsigned long n;

		if (read_line(c, line, sizeof(line)) != 0)
			return -1;
		n = strtoul(line, NULL, 16);
		if (n == 0)
			return read_line(c, line, sizeof(line));
		if (read_exact(c, r, n) != 0 || read_line(c, line, sizeof(line)) != 0 || line[0])
			return -1;
	}
}

/* Reads one response. no_body: the answer to a HEAD. */
static int read_resp(struct cli *c, struct resp *r, bool no_body)
{
	char *end, v[64];
	size_t hl;

	free(r->body);
	memset(r, 0, sizeof(*r));
	while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
		if (cli_fill(c) <= 0)
			return -1;
	hl = (size_t)(end - c->buf) + 4;
	if (hl > HTTP_MAX_HEAD)
		return -1;
	cli_take(c, r->head, hl);
	r->head[hl] = 0;
	r->status = atoi(r->head + 9);
	r->body = calloc(1, 1);
	if (no_body || r->status == 100 || r->status == 204)
		return 0;
	if (hdr(r, "transfer-encoding", v, sizeof(v)))
		return read_chunked(c, r);
	if (hdr(r, "content-length", v, sizeof(v)))
		return read_exact(c, r, strtoul(v, NULL, 10));
	while (cli_fill(c) > 0)
		;
	r->eof = true;
	return read_exact(c, r, c->len);
}

/* True if the server closes the connection (EOF) within the read timeout. */
static bool sees_eof(struct cli *c)
{
	char b[4096];
	ssize_t n;

	while ((n = recv(c->fd, b, sizeof(b), 0)) > 0)
		;
	return n == 0;
}

static void resp_free(struct resp *r)
{
	free(r->body);
	r->body = NULL;
}

/* One request on a fresh connection. */
static int roundtrip(const char *req, struct resp *r)
{
	struct cli *c = malloc(sizeof(*c));
	int rc;

	cli_open(c);
	rc = cli_sends(c, req) == 0 ? read_resp(c, r, false) : -1;
	cli_close(c);
	free(c);
	return rc;
}

static int post_json(const char *path, const char *extra, const char *json, struct resp *r)
{
	char *req = NULL;
	int rc;

	if (asprintf(&req, "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
	             "%sContent-Length: %zu\r\n\r\n%s", path, extra, strlen(json), json) < 0)
		return -1;
	rc = roundtrip(req, r);
	free(req);
	return rc;
}

static unsigned stat_of(const char *name)
{
	struct resp r = { 0 };
	char key[64];
	const char *p;
	unsigned v = 9999;

	snprintf(key, sizeof(key), "%s=", name);
	if (roundtrip("GET /test/stats HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0 &&
	    (p = strstr(r.body, key)))
		v = (unsigned)strtoul(p + strlen(key), NULL, 10);
	resp_free(&r);
	return v;
}

#define AUTH "Authorization: Bearer sk-test\r\n"

/* ---- HTTP cases ----------------------------------------------------- */

CASE(basic_get)
{
	struct resp r = { 0 };
	char v[64];

	CHECK(roundtrip("GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0);
	CHECK(r.status == 200);
	CHECK(strcmp(r.body, "hello") == 0);
	CHECK(hdr(&r, "content-length", v, sizeof(v)) && strcmp(v, "5") == 0);
	CHECK(hdr(&r, "content-type", v, sizeof(v)) && strcmp(v, "text/plain") == 0);
	CHECK(hdr(&r, "date", v, sizeof(v)) && strstr(v, " GMT"));
	CHECK(hdr(&r, "connection", v, sizeof(v)) == NULL);
	resp_free(&r);
}

CASE(keep_alive)
{
	struct cli c;
	struct resp r = { 0 };

	cli_open(&c);
	for (int i = 0; i < 5; i++) {
		CHECK(cli_sends(&c, "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
		CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "hello") == 0);
	}
	CHECK(cli_sends(&c, "GET /test/hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200);
	CHECK(strstr(r.head, "\r\nConnection: close\r\n") != NULL);
	CHECK(sees_eof(&c));
	resp_free(&r);
	cli_close(&c);
}

CASE(pipelining_in_order)
{
	struct cli c;
	struct resp r = { 0 };
	char v[32];

	cli_open(&c);
	CHECK(cli_sends(&c,
	                "GET /test/async?ms=80 HTTP/1.1\r\nHost: t\r\n\r\n"
	                "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
	                "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
	                "\r\n"                              /* a stray empty line is fine */
	                "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "late\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "abc") == 0);
	CHECK(hdr(&r, "x-len", v, sizeof(v)) && strcmp(v, "3") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 404);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "hello") == 0);
	resp_free(&r);
	cli_close(&c);
}

CASE(not_found_and_405)
{
	struct cli c;
	struct resp r = { 0 };
	char v[64];

	cli_open(&c);
	CHECK(cli_sends(&c, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 404);
	CHECK(strstr(r.body, "\"code\":404") != NULL);
	CHECK(cli_sends(&c, "GET /mock/v1/chat/completions HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 405);
	CHECK(hdr(&r, "allow", v, sizeof(v)) && strcmp(v, "POST") == 0);
	/* the connection survived both */
	CHECK(cli_sends(&c, "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200);
	/* /metricsx is not /metrics; / matches only itself */
	CHECK(cli_sends(&c, "GET /metricsx HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 404);
	CHECK(cli_sends(&c, "GET /x/ HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 404);
	resp_free(&r);
	cli_close(&c);
}

CASE(too_large_413)
{
	struct cli c;
	struct resp r = { 0 };

	cli_open(&c);
	CHECK(cli_sends(&c, "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"
	                    "partial body") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 413);
	CHECK(strstr(r.head, "Connection: close") != NULL);
	CHECK(sees_eof(&c));
	cli_close(&c);
	/* exactly 1 MiB is accepted */
	{
		size_t n = HTTP_MAX_BODY;
		char *big = malloc(n + 200);
		int h = snprintf(big, 200, "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu"
		                 "\r\n\r\n", n);

		memset(big + h, 'z', n);
		cli_open(&c);
		CHECK(cli_send(&c, big, (size_t)h + n) == 0);
		CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && r.blen == n);
		cli_close(&c);
		free(big);
	}
	resp_free(&r);
}

/* Sends raw bytes, expects `status` and a close. */
static bool rejects(const char *raw, size_t len, int status)
{
	struct cli c;
	struct resp r = { 0 };
	bool ok;

	cli_open(&c);
	ok = cli_send(&c, raw, len) == 0 && read_resp(&c, &r, false) == 0 && r.status == status &&
	     sees_eof(&c);
	if (!ok)
		fprintf(stderr, "  expected %d for %.40s..., got %d\n", status, raw, r.status);
	resp_free(&r);
	cli_close(&c);
	return ok;
}

#define REJECTS(s, st) rejects(s, sizeof(s) - 1, st)

CASE(malformed_requests)
{
	char *big;

	CHECK(REJECTS("GARBAGE\r\n\r\n", 400));
	CHECK(REJECTS("GET\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400));
	CHECK(REJECTS("GET  /x HTTP/1.1\r\nHost: t\r\n\r\n", 400));
	CHECK(REJECTS("GET http://a/x HTTP/1.1\r\nHost: t\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505));
	CHECK(REJECTS("GET /x FTP/1.1\r\nHost: t\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1\r\n\r\n", 400));                      /* no Host */
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\r\nBad Header: v\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\r\nA: b\r\n folded\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1\nHost: t\n\n", 400));                 /* bare LF */
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400));    /* bare CR */
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\r\nA: b\0c\r\n\r\n", 400));
	CHECK(REJECTS("GET /x HTTP/1.1\r\nHost: t\r\nA: b\x01\r\n\r\n", 400));
	CHECK(REJECTS("POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400));
	CHECK(REJECTS("POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400));
	CHECK(REJECTS("POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
	              "Content-Length: 4\r\n\r\nabcd", 400));
	CHECK(REJECTS("POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
	              "3\r\nabc\r\n0\r\n\r\n", 411));
	CHECK(REJECTS("POST /test/echo HTTP/1.1\r\nHost: t\r\n"
	              "Content-Length: 99999999999999999999999\r\n\r\n", 413));
	big = malloc(40000);
	memcpy(big, "GET /", 5);
	memset(big + 5, 'a', 9000);
	CHECK(rejects(big, 9005, 414));                              /* before its end arrives */
	memcpy(big, "GET / HTTP/1.1\r\nHost: t\r\nX: ", 28);
	memset(big + 28, 'b', 17000);
	CHECK(rejects(big, 28 + 17000, 431));
	{
		size_t n = (size_t)snprintf(big, 40000, "GET / HTTP/1.1\r\nHost: t\r\n");

		for (int i = 0; i < 101; i++)
			n += (size_t)snprintf(big + n, 40000 - n, "H%d: v\r\n", i);
		n += (size_t)snprintf(big + n, 40000 - n, "\r\n");
		CHECK(rejects(big, n, 431));                         /* too many fields */
	}
	free(big);
}

CASE(headers_lookup)
{
	struct resp r = { 0 };

	CHECK(roundtrip("GET /test/header?name=x-thing HTTP/1.1\r\nHost: t\r\n"
	                "X-Thing: \t  some value \t\r\n\r\n", &r) == 0);
	CHECK(r.status == 200 && strcmp(r.body, "some value") == 0);
	CHECK(roundtrip("GET /test/header?name=absent HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0);
	CHECK(r.status == 204 && strstr(r.head, "Content-Length") == NULL);
	resp_free(&r);
}

CASE(http10_and_head)
{
	struct cli c;
	struct resp r = { 0 };
	char v[32];

	CHECK(roundtrip("GET /test/hello HTTP/1.0\r\n\r\n", &r) == 0);
	CHECK(r.status == 200 && strcmp(r.body, "hello") == 0);
	CHECK(strstr(r.head, "Connection: close") != NULL);
	cli_open(&c);
	CHECK(cli_sends(&c, "GET /test/hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
	                    "HEAD /test/hello HTTP/1.1\r\nHost: t\r\n\r\n"
	                    "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200);
	CHECK(strstr(r.head, "Connection: keep-alive") != NULL);
	CHECK(read_resp(&c, &r, true) == 0 && r.status == 200);          /* HEAD: no body */
	CHECK(hdr(&r, "content-length", v, sizeof(v)) && strcmp(v, "5") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "hello") == 0);
	cli_close(&c);
	/* an HTTP/1.0 stream is unframed and ends with the close */
	CHECK(roundtrip("GET /test/stream?n=2&ms=5 HTTP/1.0\r\n\r\n", &r) == 0);
	CHECK(r.status == 200 && r.eof && strcmp(r.body, "chunk 2\nchunk 1\n") == 0);
	resp_free(&r);
}

CASE(async_reply)
{
	struct resp r = { 0 };
	double t0 = now_s();

	CHECK(roundtrip("GET /test/async?ms=100 HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0);
	CHECK(r.status == 200 && strcmp(r.body, "late\n") == 0);
	CHECK(now_s() - t0 >= 0.09);
	resp_free(&r);
}

CASE(async_client_gone)
{
	struct cli c;
	unsigned cancelled = stat_of("cancelled"), dropped = stat_of("late_dropped");

	cli_open(&c);
	CHECK(cli_sends(&c, "GET /test/async?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	msleep(50);
	cli_close(&c);                         /* gone before the answer */
	msleep(400);
	CHECK(stat_of("cancelled") == cancelled + 1);
	CHECK(stat_of("late_dropped") == dropped + 1);   /* the late reply was dropped */
	/* a half-close while the answer is pending counts as gone too */
	cli_open(&c);
	CHECK(cli_sends(&c, "GET /test/async?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	shutdown(c.fd, SHUT_WR);
	CHECK(sees_eof(&c));
	cli_close(&c);
	msleep(300);
	CHECK(stat_of("cancelled") == cancelled + 2);
	CHECK(stat_of("late_dropped") == dropped + 2);
	/* ...but a synchronous answer before the half-close is seen is delivered */
	{
		struct resp r = { 0 };

		cli_open(&c);
		CHECK(cli_sends(&c, "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
		shutdown(c.fd, SHUT_WR);
		CHECK(read_resp(&c, &r, false) == 0 && r.status == 200);
		resp_free(&r);
		cli_close(&c);
	}
}

CASE(chunked_stream)
{
	struct resp r = { 0 };
	char v[32];

	CHECK(roundtrip("GET /test/stream?n=3&ms=20 HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0);
	CHECK(r.status == 200);
	CHECK(hdr(&r, "transfer-encoding", v, sizeof(v)) && strcmp(v, "chunked") == 0);
	CHECK(strcmp(r.body, "chunk 3\nchunk 2\nchunk 1\n") == 0);
	resp_free(&r);
}

CASE(stream_client_gone)
{
	struct cli c;
	unsigned cancelled = stat_of("cancelled");
	char line[64];

	cli_open(&c);
	CHECK(cli_sends(&c, "GET /test/stream?n=1000&ms=20 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_line(&c, line, sizeof(line)) == 0 && strncmp(line, "HTTP/1.1 200", 12) == 0);
	msleep(100);
	cli_close(&c);
	msleep(200);
	CHECK(stat_of("cancelled") == cancelled + 1);
}

CASE(handler_without_answer)
{
	struct resp r = { 0 };

	CHECK(roundtrip("GET /test/noanswer HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0);
	CHECK(r.status == 500);
	resp_free(&r);
}

CASE(expect_continue)
{
	struct cli c;
	struct resp r = { 0 };

	cli_open(&c);
	CHECK(cli_sends(&c, "POST /test/echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
	                    "Content-Length: 5\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 100);
	CHECK(cli_sends(&c, "12345") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "12345") == 0);
	resp_free(&r);
	cli_close(&c);
}

CASE(slow_sender)
{
	static const char req[] = "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nslow";
	struct cli c;
	struct resp r = { 0 };

	cli_open(&c);
	for (size_t i = 0; i < sizeof(req) - 1; i++) {
		CHECK(cli_send(&c, req + i, 1) == 0);
		msleep(3);
	}
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && strcmp(r.body, "slow") == 0);
	resp_free(&r);
	cli_close(&c);
}

CASE(request_timeout_408)
{
	struct cli c;
	struct resp r = { 0 };
	double t0 = now_s();

	cli_open(&c);
	CHECK(cli_sends(&c, "GET /test/hello HTTP/1.1\r\nHost: t\r\n") == 0);   /* no end */
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 408);
	CHECK(now_s() - t0 >= TIMEOUT_S * 0.9);
	CHECK(sees_eof(&c));
	resp_free(&r);
	cli_close(&c);
}

CASE(idle_timeout)
{
	struct cli c;
	struct resp r = { 0 };
	double t0;

	cli_open(&c);
	CHECK(cli_sends(&c, "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200);
	t0 = now_s();
	CHECK(sees_eof(&c));                   /* closed quietly, no 408 */
	CHECK(now_s() - t0 >= TIMEOUT_S * 0.9 && now_s() - t0 < TIMEOUT_S + 1.5);
	resp_free(&r);
	cli_close(&c);
}

CASE(slow_reader)
{
	struct cli c;
	struct resp r = { 0 };
	unsigned timeouts = stat_of("timeouts");
	int small = 65536;

	/* reads slowly but steadily (more than the kernel buffers hold, so the
	 * server sees partial writes): gets every byte */
	cli_open(&c);
	setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	CHECK(cli_sends(&c, "GET /test/big?n=6000000 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	msleep(300);
	pace_ms = 1;
	CHECK(read_resp(&c, &r, false) == 0 && r.status == 200 && r.blen == 6000000);
	pace_ms = 0;
	CHECK(r.body && r.body[0] == 'a' && r.body[5999999] == 'a' + 5999999 % 26);
	cli_close(&c);
	/* never reads: dropped after the send timeout */
	cli_open(&c);
	setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	CHECK(cli_sends(&c, "GET /test/big?n=8000000 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	msleep((unsigned)(TIMEOUT_S * 1000) + 700);
	CHECK(stat_of("timeouts") == timeouts + 1);
	cli_close(&c);
	resp_free(&r);
}

CASE(many_connections)
{
	enum { N = 64 };
	struct cli *c = calloc(N, sizeof(*c));
	struct resp r = { 0 };
	int ok = 0;

	for (int i = 0; i < N; i++)
		cli_open(&c[i]);
	for (int i = 0; i < N; i++)
		cli_sends(&c[i], "GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n");
	for (int i = N - 1; i >= 0; i--) {
		ok += read_resp(&c[i], &r, false) == 0 && r.status == 200;
		cli_close(&c[i]);
	}
	CHECK(ok == N);
	free(c);
	resp_free(&r);
}

CASE(form_decoding)
{
	char v[16];
	const char *q = "a=1&consumer=alice%20b&plus=x+y&empty=&flag&bad=%zz&long=0123456789abcdefg";

	CHECK(http_form_get(q, strlen(q), "a", v, sizeof(v)) == 1 && strcmp(v, "1") == 0);
	CHECK(http_form_get(q, strlen(q), "consumer", v, sizeof(v)) == 7 &&
	      strcmp(v, "alice b") == 0);
	CHECK(http_form_get(q, strlen(q), "plus", v, sizeof(v)) == 3 && strcmp(v, "x y") == 0);
	CHECK(http_form_get(q, strlen(q), "empty", v, sizeof(v)) == 0 && v[0] == 0);
	CHECK(http_form_get(q, strlen(q), "flag", v, sizeof(v)) == 0);
	CHECK(http_form_get(q, strlen(q), "bad", v, sizeof(v)) == -2);
	CHECK(http_form_get(q, strlen(q), "long", v, sizeof(v)) == -2);
	CHECK(http_form_get(q, strlen(q), "none", v, sizeof(v)) == -1);
	CHECK(http_form_get("x=%4", 4, "x", v, sizeof(v)) == -2);
	CHECK(strcmp(http_status_text(429), "Too Many Requests") == 0);
}

/* Mutated requests (bytes flipped, CR/LF/NUL/space inserted, cut short),
 * each followed by a half-close: whatever the server answers, it survives. */
CASE(mutated_requests_survive)
{
	static const char *const seeds[] = {
		"GET /test/hello?a=b HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n",
		"POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
		"POST /mock/v1/chat/completions HTTP/1.1\r\nHost: t\r\n" AUTH
		"Content-Length: 86\r\n\r\n{\"model\":\"m\",\"stream\":true,\"max_tokens\":2,"
		"\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
		"POST /mock/v1/responses HTTP/1.1\r\nHost: t\r\n" AUTH
		"Content-Length: 50\r\n\r\n{\"model\":\"m\",\"input\":[{\"content\":[{\"text\":\"x\"}]}]}",
	};
	static const char inject[] = "\r\n\0 :%?/\x7f\xff";
	unsigned seed = 12345;
	struct resp r = { 0 };
	char buf[1024];

	for (int i = 0; i < FUZZ_ITERS; i++) {
		const char *s = seeds[i % 4];
		size_t n = strlen(s);
		struct cli c;

		memcpy(buf, s, n);
		for (int k = 0; k < 1 + i % 3; k++) {
			size_t at;

			seed = seed * 1103515245u + 12345u;
			at = (seed >> 8) % n;
			switch ((seed >> 4) % 4) {
			case 0: buf[at] = (char)(seed >> 16); break;
			case 1: buf[at] = inject[(seed >> 16) % (sizeof(inject) - 1)]; break;
			case 2: n = at + 1; break;
			default: buf[at] ^= 0x20; break;
			}
		}
		cli_open(&c);
		cli_send(&c, buf, n);
		shutdown(c.fd, SHUT_WR);
		sees_eof(&c);
		cli_close(&c);
	}
	CHECK(roundtrip("GET /test/hello HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0);
	CHECK(r.status == 200);
	resp_free(&r);
}

/* ---- /metrics and the dashboard ------------------------------------- */

CASE(metrics_endpoint)
{
	struct resp r = { 0 };
	char v[128];

	CHECK(roundtrip("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0 && r.status == 200);
	CHECK(hdr(&r, "content-type", v, sizeof(v)) &&
	      strcmp(v, "text/plain; version=0.0.4; charset=utf-8") == 0);
	CHECK(strstr(r.body, "# TYPE tollgate_tokens_total counter\n") != NULL);
	CHECK(strstr(r.body, "tollgate_spop_frames_total{direction=\"in\"} 0\n") != NULL);
	CHECK(roundtrip("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0 && r.status == 200);
	CHECK(strcmp(r.body, "ok\n") == 0);
	CHECK(roundtrip("GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0 && r.status == 200);
	CHECK(strstr(r.body, "<html") && strstr(r.body, "/metrics"));
	resp_free(&r);
}

/* ---- the mock provider ---------------------------------------------- */

static cJSON *json_of(const struct resp *r)
{
	return cJSON_Parse(r->body ? r->body : "");
}

static double num(const cJSON *o, const char *path)
{
	char key[64];
	const char *dot;

	while ((dot = strchr(path, '.'))) {
		snprintf(key, sizeof(key), "%.*s", (int)(dot - path), path);
		o = cJSON_GetObjectItemCaseSensitive(o, key);
		path = dot + 1;
	}
	o = cJSON_GetObjectItemCaseSensitive(o, path);
	return cJSON_IsNumber(o) ? o->valuedouble : -1;
}

static const char *str_at(const cJSON *o, const char *a, const char *b)
{
	o = cJSON_GetObjectItemCaseSensitive(o, a);
	if (b)
		o = cJSON_GetObjectItemCaseSensitive(o, b);
	return cJSON_IsString(o) ? o->valuestring : "";
}

static const cJSON *choice0(const cJSON *o)
{
	return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
}

CASE(mock_auth_required)
{
	struct resp r = { 0 };
	char v[64];
	cJSON *j;

	CHECK(post_json("/mock/v1/chat/completions", "",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 401);
	j = json_of(&r);
	CHECK(strcmp(str_at(j, "error", "code"), "invalid_api_key") == 0);
	CHECK(strcmp(str_at(j, "error", "type"), "invalid_request_error") == 0);
	cJSON_Delete(j);
	CHECK(post_json("/mock/v1/chat/completions", "Authorization: Basic abc\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 401);
	CHECK(post_json("/mock/v1/chat/completions", "Authorization: Bearer \r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 401);
	CHECK(post_json("/mock/v1/chat/completions", "api-key: k\r\nx-mse-consumer: alice\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 200);
	CHECK(hdr(&r, "x-mock-auth", v, sizeof(v)) && strcmp(v, "api-key") == 0);
	CHECK(hdr(&r, "x-mock-consumer", v, sizeof(v)) && strcmp(v, "alice") == 0);
	CHECK(hdr(&r, "x-mock-saw-api-key", v, sizeof(v)) && strcmp(v, "no") == 0);
	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-api-key: leaked\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 200);
	CHECK(hdr(&r, "x-mock-auth", v, sizeof(v)) && strcmp(v, "bearer") == 0);
	CHECK(hdr(&r, "x-mock-saw-api-key", v, sizeof(v)) && strcmp(v, "yes") == 0);
	CHECK(strstr(r.head, "sk-test") == NULL && strstr(r.body, "sk-test") == NULL);
	CHECK(roundtrip("GET /mock/health HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 0 && r.status == 200);
	resp_free(&r);
}

CASE(mock_chat_rule)
{
	struct resp r = { 0 };
	cJSON *j;
	const cJSON *c;

	/* 25 + 10 code points ("héllo wörld" counts é and ö once) -> ceil(35/4) = 9 */
	CHECK(post_json("/mock/v1/chat/completions", AUTH,
	                "{\"model\":\"qwen-max\",\"max_tokens\":5,\"messages\":["
	                "{\"role\":\"system\",\"content\":\"Hello world, how are you?\"},"
	                "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"h\xc3\xa9llo w\xc3\xb6rl\"}]}]}",
	                &r) == 0 && r.status == 200);
	j = json_of(&r);
	c = choice0(j);
	CHECK(strcmp(str_at(j, "model", NULL), "qwen-max") == 0);
	CHECK(strcmp(str_at(j, "object", NULL), "chat.completion") == 0);
	CHECK(strcmp(str_at(c, "message", "content"), "Hello! This is a deterministic") == 0);
	CHECK(strcmp(str_at(c, "finish_reason", NULL), "length") == 0);
	CHECK(num(j, "usage.prompt_tokens") == 9);
	CHECK(num(j, "usage.completion_tokens") == 5);
	CHECK(num(j, "usage.total_tokens") == 14);
	CHECK(num(j, "created") == 1700000000);
	cJSON_Delete(j);
	/* max_completion_tokens wins over max_tokens; above 12 is 12; empty prompt is 1 token */
	CHECK(post_json("/mock/v1/chat/completions", AUTH,
	                "{\"model\":\"m\",\"max_tokens\":2,\"max_completion_tokens\":50,"
	                "\"messages\":[]}", &r) == 0 && r.status == 200);
	j = json_of(&r);
	c = choice0(j);
	CHECK(strcmp(str_at(c, "message", "content"),
	             "Hello! This is a deterministic reply from the Tollgate mock LLM provider.") == 0);
	CHECK(strcmp(str_at(c, "finish_reason", NULL), "stop") == 0);
	CHECK(num(j, "usage.prompt_tokens") == 1 && num(j, "usage.completion_tokens") == 12);
	cJSON_Delete(j);
	CHECK(mock_prompt_tokens(0) == 1 && mock_prompt_tokens(4) == 1 && mock_prompt_tokens(5) == 2);
	resp_free(&r);
}

/* x-mock-words: W words (the sentence over again), max_tokens still cuts */
CASE(mock_words)
{
	static const char sentence[] =
		"Hello! This is a deterministic reply from the Tollgate mock LLM provider.";
	char want[512];
	struct resp r = { 0 };
	cJSON *j;
	const char *p;
	int n = 0;

	snprintf(want, sizeof(want), "%s %s Hello! This is a deterministic reply", sentence,
	         sentence);
	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-mock-words: 30\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 200);
	j = json_of(&r);
	CHECK(strcmp(str_at(choice0(j), "message", "content"), want) == 0);
	CHECK(strcmp(str_at(choice0(j), "finish_reason", NULL), "stop") == 0);
	CHECK(num(j, "usage.completion_tokens") == 30);
	cJSON_Delete(j);
	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-mock-words: 30\r\n",
	                "{\"model\":\"m\",\"max_tokens\":20,\"messages\":[]}", &r) == 0);
	j = json_of(&r);
	CHECK(strcmp(str_at(choice0(j), "finish_reason", NULL), "length") == 0);
	CHECK(num(j, "usage.completion_tokens") == 20);
	cJSON_Delete(j);
	/* the most words: one event each, then finish and [DONE] */
	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-mock-words: 2000\r\n",
	                "{\"model\":\"m\",\"stream\":true,\"messages\":[]}", &r) == 0 &&
	      r.status == 200);
	for (p = r.body; (p = strstr(p, "data: ")); p += 6)
		n++;
	CHECK(n == 2000 + 1 + 1);
	/* past the most: the header is ignored */
	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-mock-words: 2001\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0);
	j = json_of(&r);
	CHECK(num(j, "usage.completion_tokens") == 12);
	cJSON_Delete(j);
	resp_free(&r);
}

CASE(mock_errors)
{
	struct resp r = { 0 };
	cJSON *j;

	CHECK(post_json("/mock/v1/chat/completions", AUTH, "{not json", &r) == 0 && r.status == 400);
	CHECK(post_json("/mock/v1/chat/completions", AUTH, "{\"messages\":[]}", &r) == 0 &&
	      r.status == 400);                                  /* no model */
	CHECK(post_json("/mock/v1/chat/completions", AUTH, "{\"model\":\"m\"}", &r) == 0 &&
	      r.status == 400);                                  /* no messages */
	CHECK(post_json("/mock/v1/chat/completions", AUTH,
	                "{\"model\":\"m\",\"messages\":[],\"max_tokens\":0}", &r) == 0 &&
	      r.status == 400);
	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-mock-status: 503\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 503);
	j = json_of(&r);
	CHECK(cJSON_GetObjectItemCaseSensitive(j, "error") != NULL);
	CHECK(cJSON_GetObjectItemCaseSensitive(j, "usage") == NULL);
	cJSON_Delete(j);
	resp_free(&r);
}

/* The SSE events of a body: the payload of each "data:" line, in order. */
static int sse_events(const char *body, char ev[][2048], char names[][64], int max)
{
	int n = 0;
	const char *p = body;

	while (*p && n < max) {
		const char *end = strstr(p, "\n\n"), *d;

		if (!end)
			return -1;
		names[n][0] = 0;
		if (strncmp(p, "event: ", 7) == 0) {
			const char *nl = strchr(p, '\n');

			snprintf(names[n], 64, "%.*s", (int)(nl - p - 7), p + 7);
			p = nl + 1;
		}
		d = p;
		if (strncmp(d, "data: ", 6) != 0)
			return -1;
		snprintf(ev[n], 2048, "%.*s", (int)(end - d - 6), d + 6);
		n++;
		p = end + 2;
	}
	return n;
}

static char evs[40][2048], evnames[40][64];

CASE(mock_stream_without_usage)
{
	struct resp r = { 0 };
	char v[64], text[256] = "";
	int n;

	CHECK(post_json("/mock/v1/chat/completions", AUTH,
	                "{\"model\":\"gpt-x\",\"stream\":true,\"messages\":"
	                "[{\"role\":\"user\",\"content\":\"12345678\"}]}", &r) == 0 && r.status == 200);
	CHECK(hdr(&r, "content-type", v, sizeof(v)) && strcmp(v, "text/event-stream") == 0);
	CHECK(hdr(&r, "transfer-encoding", v, sizeof(v)) && strcmp(v, "chunked") == 0);
	n = sse_events(r.body, evs, evnames, 40);
	CHECK(n == 12 + 1 + 1);                        /* words, finish, [DONE] */
	for (int i = 0; i < 12 && i < n; i++) {
		cJSON *j = cJSON_Parse(evs[i]);
		const cJSON *c = choice0(j);

		CHECK(strcmp(str_at(j, "object", NULL), "chat.completion.chunk") == 0);
		CHECK(strcmp(str_at(j, "model", NULL), "gpt-x") == 0);
		CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "finish_reason")));
		CHECK(cJSON_GetObjectItemCaseSensitive(j, "usage") == NULL);
		CHECK((i == 0) == (strcmp(str_at(c, "delta", "role"), "assistant") == 0));
		strcat(text, str_at(c, "delta", "content"));
		cJSON_Delete(j);
	}
	CHECK(strcmp(text, "Hello! This is a deterministic reply from the Tollgate mock LLM "
	                   "provider.") == 0);
	if (n == 14) {
		cJSON *j = cJSON_Parse(evs[12]);

		CHECK(strcmp(str_at(choice0(j), "finish_reason", NULL), "stop") == 0);
		CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(choice0(j), "delta")) == 0);
		cJSON_Delete(j);
		CHECK(strcmp(evs[13], "[DONE]") == 0);
	}
	CHECK(strstr(r.body, "usage") == NULL);
	resp_free(&r);
}

CASE(mock_stream_with_usage)
{
	struct resp r = { 0 };
	int n;

	/* 9 code points -> 3 prompt tokens; max_tokens 4 -> 4 words */
	CHECK(post_json("/mock/v1/chat/completions", AUTH,
	                "{\"model\":\"gpt-x\",\"stream\":true,\"max_tokens\":4,"
	                "\"stream_options\":{\"include_usage\":true},"
	                "\"messages\":[{\"role\":\"user\",\"content\":\"123456789\"}]}", &r) == 0);
	CHECK(r.status == 200);
	n = sse_events(r.body, evs, evnames, 40);
	CHECK(n == 4 + 1 + 1 + 1);                     /* words, finish, usage, [DONE] */
	for (int i = 0; i < 5 && i < n; i++) {
		cJSON *j = cJSON_Parse(evs[i]);

		CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "usage")));
		CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "choices")) == 1);
		cJSON_Delete(j);
	}
	if (n == 7) {
		cJSON *j = cJSON_Parse(evs[4]), *u = cJSON_Parse(evs[5]);

		CHECK(strcmp(str_at(choice0(j), "finish_reason", NULL), "length") == 0);
		CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(u, "choices")));
		CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(u, "choices")) == 0);
		CHECK(num(u, "usage.prompt_tokens") == 3);
		CHECK(num(u, "usage.completion_tokens") == 4);
		CHECK(num(u, "usage.total_tokens") == 7);
		CHECK(strcmp(evs[6], "[DONE]") == 0);
		cJSON_Delete(j);
		cJSON_Delete(u);
	}
	resp_free(&r);
}

CASE(mock_stream_paced)
{
	static const char body[] = "{\"model\":\"m\",\"stream\":true,\"max_tokens\":3,"
	                           "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
	struct cli c;
	struct resp r = { 0 };
	char req[512], line[64];
	double t0 = now_s(), t_first;

	snprintf(req, sizeof(req), "POST /mock/v1/chat/completions HTTP/1.1\r\nHost: t\r\n" AUTH
	         "x-mock-delay-ms: 60\r\nContent-Length: %zu\r\n\r\n%s", sizeof(body) - 1, body);
	cli_open(&c);
	CHECK(cli_sends(&c, req) == 0);
	while (read_line(&c, line, sizeof(line)) == 0 && line[0])
		;                                           /* the head */
	CHECK(read_line(&c, line, sizeof(line)) == 0);  /* first chunk */
	t_first = now_s() - t0;
	CHECK(read_exact(&c, &r, strtoul(line, NULL, 16)) == 0);
	CHECK(read_line(&c, line, sizeof(line)) == 0 && line[0] == 0);
	CHECK(strncmp(r.body, "data: {", 7) == 0);
	CHECK(read_chunked(&c, &r) == 0);               /* the rest */
	CHECK(sse_events(r.body, evs, evnames, 40) == 5);
	/* 5 events (3 words, finish, [DONE]), 60 ms apart, the first after 60 ms */
	CHECK(t_first >= 0.05 && t_first < 0.25);
	CHECK(now_s() - t0 >= 0.29);
	cli_close(&c);
	resp_free(&r);
}

CASE(mock_stream_client_gone)
{
	static const char body[] = "{\"model\":\"m\",\"stream\":true,"
	                           "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
	struct cli c;
	char req[512], line[64];
	unsigned cancelled = stat_of("http_cancelled");

	snprintf(req, sizeof(req), "POST /mock/v1/chat/completions HTTP/1.1\r\nHost: t\r\n" AUTH
	         "x-mock-delay-ms: 100\r\nContent-Length: %zu\r\n\r\n%s", sizeof(body) - 1, body);
	cli_open(&c);
	CHECK(cli_sends(&c, req) == 0);
	CHECK(read_line(&c, line, sizeof(line)) == 0 && strncmp(line, "HTTP/1.1 200", 12) == 0);
	msleep(150);
	CHECK(stat_of("mock_active") == 1);
	cli_close(&c);
	msleep(200);
	CHECK(stat_of("mock_active") == 0);
	CHECK(stat_of("http_cancelled") == cancelled + 1);
}

CASE(mock_delayed_json)
{
	struct resp r = { 0 };
	double t0 = now_s();
	char v[32];

	CHECK(post_json("/mock/v1/chat/completions", AUTH "x-mock-delay-ms: 120\r\n",
	                "{\"model\":\"m\",\"messages\":[]}", &r) == 0 && r.status == 200);
	CHECK(now_s() - t0 >= 0.11);
	CHECK(hdr(&r, "x-mock-auth", v, sizeof(v)) && strcmp(v, "bearer") == 0);
	CHECK(strstr(r.body, "\"completion_tokens\":12") != NULL);
	resp_free(&r);
}

CASE(mock_completions)
{
	struct resp r = { 0 };
	cJSON *j;
	int n;

	/* prompt array: 8 + 9 = 17 code points -> 5 tokens */
	CHECK(post_json("/mock/v1/completions", AUTH,
	                "{\"model\":\"davinci\",\"prompt\":[\"abcdefgh\",\"123456789\"],"
	                "\"max_tokens\":2}", &r) == 0 && r.status == 200);
	j = json_of(&r);
	CHECK(strcmp(str_at(j, "object", NULL), "text_completion") == 0);
	CHECK(strcmp(str_at(choice0(j), "text", NULL), "Hello! This") == 0);
	CHECK(num(j, "usage.prompt_tokens") == 5 && num(j, "usage.completion_tokens") == 2);
	cJSON_Delete(j);
	CHECK(post_json("/mock/v1/completions", AUTH,
	                "{\"model\":\"davinci\",\"prompt\":\"x\",\"max_tokens\":2,\"stream\":true,"
	                "\"stream_options\":{\"include_usage\":true}}", &r) == 0 && r.status == 200);
	n = sse_events(r.body, evs, evnames, 40);
	CHECK(n == 2 + 1 + 1 + 1);
	if (n == 5) {
		j = cJSON_Parse(evs[1]);
		CHECK(strcmp(str_at(choice0(j), "text", NULL), " This") == 0);
		cJSON_Delete(j);
		j = cJSON_Parse(evs[3]);
		CHECK(num(j, "usage.total_tokens") == 3);
		cJSON_Delete(j);
	}
	resp_free(&r);
}

CASE(mock_embeddings)
{
	struct resp r = { 0 }, r2 = { 0 };
	cJSON *j;
	const cJSON *data;

	/* 4 + 5 code points -> ceil(9/4) = 3 tokens; 2 vectors of 7 */
	CHECK(post_json("/mock/v1/embeddings", AUTH,
	                "{\"model\":\"emb\",\"input\":[\"abcd\",\"efghi\"],\"dimensions\":7}", &r) == 0);
	CHECK(r.status == 200);
	j = json_of(&r);
	data = cJSON_GetObjectItemCaseSensitive(j, "data");
	CHECK(cJSON_GetArraySize(data) == 2);
	CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(data, 1),
	                                                           "embedding")) == 7);
	CHECK(num(j, "usage.prompt_tokens") == 3 && num(j, "usage.total_tokens") == 3);
	CHECK(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "usage"),
	                                       "completion_tokens") == NULL);
	CHECK(strcmp(str_at(j, "model", NULL), "emb") == 0);
	cJSON_Delete(j);
	/* deterministic: the same request, the same bytes */
	CHECK(post_json("/mock/v1/embeddings", AUTH,
	                "{\"model\":\"emb\",\"input\":[\"abcd\",\"efghi\"],\"dimensions\":7}", &r2) == 0);
	CHECK(r.blen == r2.blen && memcmp(r.body, r2.body, r.blen) == 0);
	/* a big one (larger than an HAProxy buffer) */
	CHECK(post_json("/mock/v1/embeddings", AUTH,
	                "{\"model\":\"emb\",\"input\":\"x\",\"dimensions\":4096}", &r) == 0);
	CHECK(r.status == 200 && r.blen > 16384 && strstr(r.body, "\"total_tokens\":1"));
	CHECK(post_json("/mock/v1/embeddings", AUTH, "{\"model\":\"emb\"}", &r) == 0 &&
	      r.status == 400);
	resp_free(&r);
	resp_free(&r2);
}

CASE(mock_responses)
{
	struct resp r = { 0 };
	cJSON *j;
	int n;

	/* instructions 4 + input 4 + 5 = 13 code points -> 4 tokens */
	CHECK(post_json("/mock/v1/responses", AUTH,
	                "{\"model\":\"gpt-4o\",\"instructions\":\"abcd\",\"max_output_tokens\":3,"
	                "\"input\":[{\"role\":\"user\",\"content\":\"efgh\"},"
	                "{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"ijklm\"}]}]}",
	                &r) == 0 && r.status == 200);
	j = json_of(&r);
	CHECK(strcmp(str_at(j, "object", NULL), "response") == 0);
	CHECK(strcmp(str_at(j, "status", NULL), "incomplete") == 0);
	CHECK(num(j, "usage.input_tokens") == 4 && num(j, "usage.output_tokens") == 3);
	CHECK(num(j, "usage.total_tokens") == 7);
	cJSON_Delete(j);
	CHECK(post_json("/mock/v1/responses", AUTH,
	                "{\"model\":\"gpt-4o\",\"input\":\"hi\",\"stream\":true}", &r) == 0);
	n = sse_events(r.body, evs, evnames, 40);
	CHECK(n == 1 + 12 + 1 + 1);
	CHECK(strcmp(evnames[0], "response.created") == 0);
	CHECK(strcmp(evnames[1], "response.output_text.delta") == 0);
	CHECK(n == 15 && strcmp(evnames[13], "response.output_text.done") == 0);
	CHECK(n == 15 && strcmp(evnames[14], "response.completed") == 0);
	if (n == 15) {
		j = cJSON_Parse(evs[14]);
		CHECK(num(j, "response.usage.input_tokens") == 1);
		CHECK(num(j, "response.usage.output_tokens") == 12);
		CHECK(strcmp(str_at(cJSON_GetObjectItemCaseSensitive(j, "response"), "status", NULL),
		             "completed") == 0);
		cJSON_Delete(j);
	}
	CHECK(strstr(r.body, "[DONE]") == NULL);
	resp_free(&r);
}

CASE(mock_azure_shape)
{
	struct resp r = { 0 };
	char v[128];
	cJSON *j;

	CHECK(post_json("/mock/openai/deployments/my-gpt4/chat/completions?api-version=2024-02-01",
	                "api-key: azure-key\r\n", "{\"messages\":[{\"role\":\"user\","
	                "\"content\":\"abcd\"}]}", &r) == 0 && r.status == 200);
	j = json_of(&r);
	CHECK(strcmp(str_at(j, "model", NULL), "my-gpt4") == 0);
	CHECK(num(j, "usage.prompt_tokens") == 1);
	cJSON_Delete(j);
	CHECK(hdr(&r, "x-mock-path", v, sizeof(v)) &&
	      strcmp(v, "/mock/openai/deployments/my-gpt4/chat/completions?api-version=2024-02-01") == 0);
	CHECK(post_json("/mock/openai/deployments/d/embeddings", "api-key: k\r\n",
	                "{\"input\":\"abc\"}", &r) == 0 && r.status == 200);
	CHECK(post_json("/mock/openai/deployments/d/nothing", "api-key: k\r\n", "{}", &r) == 0 &&
	      r.status == 404);
	CHECK(post_json("/mock/openai/deployments/d/chat/completions", "", "{}", &r) == 0 &&
	      r.status == 401);
	resp_free(&r);
}

/* ---- last: the server exits cleanly ---------------------------------- */

CASE(server_exits_cleanly)
{
	static const char body[] = "{\"model\":\"m\",\"stream\":true,\"messages\":[]}";
	struct resp r = { 0 };
	struct cli busy1, busy2;
	char req[512], line[4096];
	int status = -1;

	CHECK(stat_of("conns") <= 2);          /* closed connections were all freed */
	/* quit while a paced mock stream and an async answer are in flight */
	snprintf(req, sizeof(req), "POST /mock/v1/chat/completions HTTP/1.1\r\nHost: t\r\n" AUTH
	         "x-mock-delay-ms: 200\r\nContent-Length: %zu\r\n\r\n%s", sizeof(body) - 1, body);
	cli_open(&busy1);
	CHECK(cli_sends(&busy1, req) == 0);
	CHECK(read_line(&busy1, line, sizeof(line)) == 0 && strncmp(line, "HTTP/1.1 200", 12) == 0);
	cli_open(&busy2);
	CHECK(cli_sends(&busy2, "GET /test/async?ms=5000 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
	msleep(50);
	CHECK(stat_of("mock_active") == 1);
	CHECK(roundtrip("POST /test/quit HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r) == 0);
	CHECK(r.status == 200);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	child = 0;
	/* the stream was ended properly (terminating chunk), then closed */
	while (read_line(&busy1, line, sizeof(line)) == 0 && strcmp(line, "0") != 0)
		;
	CHECK(strcmp(line, "0") == 0);
	CHECK(sees_eof(&busy2));
	cli_close(&busy1);
	cli_close(&busy2);
	resp_free(&r);
}

int main(void)
{
	int pfd[2];

	signal(SIGPIPE, SIG_IGN);
	if (pipe(pfd) != 0)
		return 2;
	fflush(stdout);
	child = fork();
	if (child == 0) {
		close(pfd[0]);
		exit(server_main(pfd[1]));
	}
	close(pfd[1]);
	if (read(pfd[0], &port, sizeof(port)) != sizeof(port)) {
		printf("FAIL: server_start\n");
		return 1;
	}
	close(pfd[0]);
	RUN_ALL(basic_get, keep_alive, pipelining_in_order, not_found_and_405, too_large_413,
	        malformed_requests, headers_lookup, http10_and_head, async_reply, async_client_gone,
	        chunked_stream, stream_client_gone, handler_without_answer, expect_continue,
	        slow_sender, request_timeout_408, idle_timeout, slow_reader, many_connections,
	        form_decoding, mutated_requests_survive, metrics_endpoint, mock_auth_required,
	        mock_chat_rule, mock_words, mock_errors, mock_stream_without_usage,
	        mock_stream_with_usage, mock_stream_paced, mock_stream_client_gone,
	        mock_delayed_json, mock_completions, mock_embeddings, mock_responses,
	        mock_azure_shape, server_exits_cleanly);
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	DONE();
}
