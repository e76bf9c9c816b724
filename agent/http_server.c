/* http_server.c -- HTTP/1.1 on a libev loop (see http_server.h).
 *
 * Each connection is a small state machine:
 *
 *   HEAD  --head parsed, body announced-->  BODY  --body complete-->  BUSY
 *   HEAD  --head parsed, no body-------------------------------------> BUSY
 *   BUSY  --final answer, keep-alive--> HEAD (next pipelined request)
 *   BUSY  --final answer, close------->  CLOSING --flushed--> LINGER --EOF/timer--> closed
 *   any   --parse error / limit------->  CLOSING (error answer queued)
 *
 * Input is read into a fixed 32 KiB buffer; a head must fit in its first
 * 16 KiB, a body is moved out of it into the request as it arrives, and
 * pipelined requests simply wait in it (reading stops when it is full). The
 * request owns a copy of its head and its body, so it can outlive its
 * connection (the detach scheme in http_server.h).
 *
 * Output is queued in a per-connection buffer and flushed from an ev_prepare
 * watcher (the "dirty" list) or the write watcher, never from inside an API
 * call: handlers are never re-entered and a connection is only closed from
 * a loop callback (read, write, timer, prepare) -- never under a handler's
 * feet. The next pipelined request is parsed once the previous answer is
 * complete and less than 256 KiB of output is waiting.
 *
 * One timer per connection, armed from the state: idle (keep-alive wait),
 * request (first byte to last byte of a request: slow senders get 408),
 * send (no write progress: slow readers are dropped), linger.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hex.h"
#include "http_server.h"
#include "list.h"
#include "log.h"
#include "net.h"

#define RBUF_SIZE        (32u * 1024u)
#define WBUF_SOFT_MAX    (256u * 1024u)
#define STREAM_WBUF_MAX  (8u * 1024u * 1024u)
#define BODY_INIT        (64u * 1024u)
#define LINGER_TIME      2.0
#define ACCEPT_PAUSE     0.5
#define MAX_ROUTES       64u
#define MAX_CONNS        4096u
#define ACCEPT_BATCH     64
#define MAX_METHOD       16u

enum conn_state { CS_HEAD, CS_BODY, CS_BUSY, CS_CLOSING, CS_LINGER };
enum req_state  { RQ_NEW, RQ_HANDLER, RQ_DEFERRED, RQ_STREAMING };

struct http_hdr {
	const char *name, *value;
};

struct http_req {
	struct http_conn *conn;          /* NULL once detached */
	enum req_state state;
	const char *method, *path, *query;
	int minor;                       /* HTTP/1.minor */
	int status;                      /* of a stream, for the stats */
	bool is_head, keepalive, expect_continue, chunked_out;
	size_t content_length;
	char *body;
	size_t body_len, body_cap;
	http_cancel_fn cancel;
	void *cancel_arg;
	char peer[INET6_ADDRSTRLEN];
	bool peer_local;
	unsigned nhdr;
	struct http_hdr hdr[HTTP_MAX_HEADERS];
	char head[];                     /* the head's bytes, split in place */
};

struct http_conn {
	struct http_server *srv;
	int fd;
	ev_io rio, wio;
	ev_timer timer;
	enum conn_state state;
	char *rbuf;
	size_t rlen, scan;               /* scan: bytes of the head validated */
	bool line_ok;                    /* the request line was validated */
	char *wbuf;
	size_t wlen, woff, wcap;
	struct http_req *req;            /* being read or answered */
	ev_tstamp idle_since, req_start, last_write;
	bool reading, writing;
	bool rd_eof;                     /* the client half-closed */
	bool failed;                     /* close at the next flush */
	bool need_process;               /* buffered input may hold a request */
	bool dirty;
	char peer[INET6_ADDRSTRLEN];
	bool peer_local;
	struct http_conn *prev, *next;
	struct http_conn *dprev, *dnext;
};

struct route {
	char method[MAX_METHOD + 1];     /* "" = any */
	char *prefix;
	size_t plen;
	bool exact;
	http_handler_fn fn;
	void *ctx;
};

struct http_server {
	struct ev_loop *loop;
	int fd;
	ev_io accept_w;
	ev_timer accept_pause;
	ev_prepare flush_w;
	struct http_conn *conns, *dirty;
	unsigned nconns;
	double idle_timeout, request_timeout, send_timeout;
	size_t max_body;
	struct route routes[MAX_ROUTES];
	unsigned nroutes;
	struct http_stats stats;
	time_t date_sec;
	char date[40];
};

static void conn_process(struct http_conn *c);
static void conn_close(struct http_conn *c);
static void conn_update(struct http_conn *c);
static void conn_error(struct http_conn *c, int status);

/* ---- small helpers -------------------------------------------------- */

const char *http_status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Payload Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	}
	return status < 200 ? "Informational" : status < 300 ? "Success" :
	       status < 400 ? "Redirection" : status < 500 ? "Client Error" : "Server Error";
}

static bool is_tchar(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_vchar_or_obs(unsigned char ch)
{
	return ch == '\t' || ch == ' ' || (ch > 0x20 && ch != 0x7f);
}

static const char *date_header(struct http_server *srv)
{
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const mons[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t now = (time_t)ev_now(srv->loop);
	struct tm tm;

	if (now != srv->date_sec && gmtime_r(&now, &tm)) {
		srv->date_sec = now;
		snprintf(srv->date, sizeof(srv->date), "%s, %02d %s %04d %02d:%02d:%02d GMT",
		         days[tm.tm_wday % 7], tm.tm_mday, mons[tm.tm_mon % 12],
		         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	}
	return srv->date;
}

/* ---- lists ---------------------------------------------------------- */

static void dirty_add(struct http_conn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	LIST_PUSH_AT(c->srv->dirty, c, dprev, dnext);
}

static void dirty_del(struct http_conn *c)
{
	if (!c->dirty)
		return;
	LIST_DEL_AT(c->srv->dirty, c, dprev, dnext);
	c->dirty = false;
}

/* ---- output buffer -------------------------------------------------- */

static size_t pending_out(const struct http_conn *c)
{
	return c->wlen - c->woff;
}

static int wbuf_reserve(struct http_conn *c, size_t n)
{
	size_t cap;
	char *p;

	if (c->woff == c->wlen) {
		c->woff = c->wlen = 0;
		c->last_write = ev_now(c->srv->loop);   /* the send timeout starts now */
	}
	if (c->wcap - c->wlen >= n)
		return 0;
	if (c->woff > 0) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
		if (c->wcap - c->wlen >= n)
			return 0;
	}
	cap = c->wcap ? c->wcap : 4096;
	while (cap - c->wlen < n)
		cap *= 2;
	p = realloc(c->wbuf, cap);
	if (!p)
		return -1;
	c->wbuf = p;
	c->wcap = cap;
	return 0;
}

static int wbuf_put(struct http_conn *c, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	if (wbuf_reserve(c, n) != 0) {
		c->failed = true;
		return -1;
	}
	memcpy(c->wbuf + c->wlen, p, n);
	c->wlen += n;
	return 0;
}

static int wbuf_printf(struct http_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int wbuf_printf(struct http_conn *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || wbuf_reserve(c, (size_t)n + 1) != 0) {
		c->failed = true;
		return -1;
	}
	va_start(ap, fmt);
	vsnprintf(c->wbuf + c->wlen, (size_t)n + 1, fmt, ap);
	va_end(ap);
	c->wlen += (size_t)n;
	return 0;
}

/* Status line and headers. content_length < 0: chunked (HTTP/1.1) or
 * unframed until close (HTTP/1.0). */
static void write_head(struct http_conn *c, int minor, int status, const char *ctype,
                       const char *extra, long long content_length, bool keepalive)
{
	size_t elen = extra ? strlen(extra) : 0;

	wbuf_printf(c, "HTTP/1.1 %d %s\r\nServer: tollgate\r\nDate: %s\r\n", status,
	            http_status_text(status), date_header(c->srv));
	if (ctype)
		wbuf_printf(c, "Content-Type: %s\r\n", ctype);
	if (status < 200 || status == 204 || status == 304)
		;                                  /* no body, no framing */
	else if (content_length >= 0)
		wbuf_printf(c, "Content-Length: %lld\r\n", content_length);
	else if (minor >= 1)
		wbuf_printf(c, "Transfer-Encoding: chunked\r\n");
	if (!keepalive)
		wbuf_printf(c, "Connection: close\r\n");
	else if (minor == 0)
		wbuf_printf(c, "Connection: keep-alive\r\n");
	if (elen) {
		wbuf_put(c, extra, elen);
		if (elen < 2 || extra[elen - 2] != '\r' || extra[elen - 1] != '\n')
			wbuf_put(c, "\r\n", 2);
	}
	wbuf_put(c, "\r\n", 2);
}

static void count_response(struct http_server *srv, int status)
{
	int cls = status / 100;

	srv->stats.responses[cls >= 1 && cls <= 5 ? cls : 0]++;
}

/* ---- requests ------------------------------------------------------- */

static void req_free(struct http_req *req)
{
	if (!req)
		return;
	free(req->body);
	free(req);
}

const char *http_req_method(const struct http_req *req) { return req->method; }
const char *http_req_path(const struct http_req *req) { return req->path; }
const char *http_req_query(const struct http_req *req) { return req->query; }
const char *http_req_peer(const struct http_req *req) { return req->peer; }
bool http_req_peer_is_local(const struct http_req *req) { return req->peer_local; }
bool http_req_connected(const struct http_req *req) { return req->conn != NULL; }
size_t http_req_header_count(const struct http_req *req) { return req->nhdr; }

const char *http_req_header(const struct http_req *req, const char *name)
{
	for (unsigned i = 0; i < req->nhdr; i++)
		if (strcasecmp(req->hdr[i].name, name) == 0)
			return req->hdr[i].value;
	return NULL;
}

void http_req_header_at(const struct http_req *req, size_t i, const char **name,
                        const char **value)
{
	*name = i < req->nhdr ? req->hdr[i].name : NULL;
	*value = i < req->nhdr ? req->hdr[i].value : NULL;
}

const char *http_req_body(const struct http_req *req, size_t *len)
{
	if (len)
		*len = req->body_len;
	return req->body ? req->body : "";
}

void http_req_defer(struct http_req *req, http_cancel_fn cancel, void *arg)
{
	if (req->state == RQ_HANDLER || req->state == RQ_NEW)
		req->state = RQ_DEFERRED;
	req->cancel = cancel;
	req->cancel_arg = arg;
}

/* ---- parsing -------------------------------------------------------- */

/* Validates a request line [p, p+len) (without CRLF). Returns 0 and the
 * pieces' lengths, or an HTTP status. */
static int parse_request_line(const char *p, size_t len, size_t *mlen, size_t *tlen,
                              int *minor)
{
	size_t i = 0, t0;

	if (len > HTTP_MAX_LINE)
		return 414;
	while (i < len && is_tchar((unsigned char)p[i]))
		i++;
	if (i == 0 || i > MAX_METHOD || i >= len || p[i] != ' ')
		return 400;
	*mlen = i++;
	t0 = i;
	while (i < len && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f)
		i++;
	if (i == t0 || i >= len || p[i] != ' ' || p[t0] != '/')
		return 400;
	*tlen = i - t0;
	i++;
	if (len - i != 8 || memcmp(p + i, "HTTP/", 5) != 0 || p[i + 6] != '.' ||
	    p[i + 5] < '0' || p[i + 5] > '9' || p[i + 7] < '0' || p[i + 7] > '9')
		return 400;
	if (p[i + 5] != '1')
		return 505;
	*minor = p[i + 7] - '0';
	return 0;
}

/* Splits one header line (NUL-terminated, no CRLF) in place. */
static int parse_header_line(struct http_req *req, char *line)
{
	char *colon, *v, *end;

	if (line[0] == ' ' || line[0] == '\t')
		return 400;                       /* obsolete line folding */
	for (colon = line; is_tchar((unsigned char)*colon); colon++)
		;
	if (colon == line || *colon != ':')
		return 400;
	*colon = 0;
	for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
		;
	for (end = v; *end; end++)
		if (!is_vchar_or_obs((unsigned char)*end))
			return 400;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	*end = 0;
	if (req->nhdr >= HTTP_MAX_HEADERS)
		return 431;
	req->hdr[req->nhdr].name = line;
	req->hdr[req->nhdr].value = v;
	req->nhdr++;
	return 0;
}

static bool token_in_list(const char *list, const char *tok)
{
	size_t tl = strlen(tok);
	const char *p = list;

	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *s = p;
		while (*p && *p != ',')
			p++;
		const char *e = p;
		while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if ((size_t)(e - s) == tl && strncasecmp(s, tok, tl) == 0)
			return true;
	}
	return false;
}

static int parse_content_length(const char *v, size_t max, size_t *out)
{
	size_t n = 0;

	if (!*v)
		return 400;
	for (; *v; v++) {
		if (*v < '0' || *v > '9')
			return 400;
		n = n * 10 + (size_t)(*v - '0');
		if (n > max)
			return 413;
	}
	*out = n;
	return 0;
}

/* Framing and connection semantics from the header fields. */
static int check_headers(struct http_req *req)
{
	bool have_cl = false, have_host = false;
	const char *conn = NULL;

	for (unsigned i = 0; i < req->nhdr; i++) {
		const char *n = req->hdr[i].name, *v = req->hdr[i].value;
		size_t cl;
		int st;

		if (strcasecmp(n, "transfer-encoding") == 0)
			return 411;
		if (strcasecmp(n, "content-length") == 0) {
			if ((st = parse_content_length(v, req->conn->srv->max_body, &cl)) != 0)
				return st;
			if (have_cl && cl != req->content_length)
				return 400;
			have_cl = true;
			req->content_length = cl;
		} else if (strcasecmp(n, "host") == 0) {
			if (have_host)
				return 400;
			have_host = true;
		} else if (strcasecmp(n, "connection") == 0) {
			conn = v;
		} else if (strcasecmp(n, "expect") == 0) {
			req->expect_continue = strcasecmp(v, "100-continue") == 0;
		}
	}
	if (req->minor >= 1 && !have_host)
		return 400;
	if (req->minor >= 1)
		req->keepalive = !(conn && token_in_list(conn, "close"));
	else
		req->keepalive = conn && token_in_list(conn, "keep-alive");
	return 0;
}

/* Builds a request from a complete head of hlen bytes (ending in CRLFCRLF). */
static int parse_head(struct http_conn *c, size_t hlen, struct http_req **out)
{
	struct http_req *req = calloc(1, sizeof(*req) + hlen + 1);
	size_t mlen, tlen;
	char *line, *eol, *target, *q;
	int st;

	if (!req)
		return 503;
	*out = req;
	req->conn = c;
	memcpy(req->head, c->rbuf, hlen);
	req->head[hlen] = 0;
	eol = strstr(req->head, "\r\n");
	if ((st = parse_request_line(req->head, (size_t)(eol - req->head), &mlen, &tlen,
	                             &req->minor)) != 0)
		return st;
	req->head[mlen] = 0;
	req->method = req->head;
	target = req->head + mlen + 1;
	target[tlen] = 0;
	q = strchr(target, '?');
	if (q)
		*q++ = 0;
	req->path = target;
	req->query = q ? q : "";
	req->is_head = strcmp(req->method, "HEAD") == 0;
	for (line = eol + 2; line < req->head + hlen - 2; line = eol + 2) {
		eol = strstr(line, "\r\n");
		*eol = 0;
		if ((st = parse_header_line(req, line)) != 0)
			return st;
	}
	memcpy(req->peer, c->peer, sizeof(req->peer));
	req->peer_local = c->peer_local;
	return check_headers(req);
}

static void rbuf_consume(struct http_conn *c, size_t n)
{
	memmove(c->rbuf, c->rbuf + n, c->rlen - n);
	c->rlen -= n;
	c->scan = 0;
	c->line_ok = false;
}

/* Validates the head's new bytes [c->scan, lim): no NUL, no bare CR or LF,
 * the request line as soon as it is complete. Returns the head's length
 * once its empty line is seen, 0 if more is needed, or -status. */
static long head_scan(struct http_conn *c, size_t lim)
{
	const char *b = c->rbuf;
	size_t ml, tl;
	int minor, st;

	for (size_t i = c->scan; i < lim; i++) {
		if (b[i] == 0 || (i > 0 && b[i - 1] == '\r' && b[i] != '\n'))
			return -400;
		if (b[i] != '\n')
			continue;
		if (i == 0 || b[i - 1] != '\r')
			return -400;
		if (!c->line_ok) {
			if ((st = parse_request_line(b, i - 1, &ml, &tl, &minor)) != 0)
				return -st;
			c->line_ok = true;
		}
		if (i >= 3 && b[i - 2] == '\n' && b[i - 3] == '\r')
			return (long)i + 1;
	}
	c->scan = lim;
	if (!c->line_ok && lim > HTTP_MAX_LINE + 2)
		return -414;
	if (lim >= HTTP_MAX_HEAD)
		return -431;
	return 0;
}

/* 1: c->req built (state BODY), 0: need more bytes, -1: error queued. */
static int head_step(struct http_conn *c)
{
	long hlen;
	int st;

	while (c->rlen >= 2 && c->rbuf[0] == '\r' && c->rbuf[1] == '\n')
		rbuf_consume(c, 2);           /* empty lines before a request */
	if (c->rlen == 0)
		return 0;
	hlen = head_scan(c, c->rlen < HTTP_MAX_HEAD ? c->rlen : HTTP_MAX_HEAD);
	if (hlen == 0)
		return 0;
	if (hlen < 0) {
		conn_error(c, (int)-hlen);
		return -1;
	}
	st = parse_head(c, (size_t)hlen, &c->req);
	rbuf_consume(c, (size_t)hlen);
	if (st != 0) {
		conn_error(c, st);
		return -1;
	}
	c->state = CS_BODY;
	return 1;
}

/* 1: body complete, 0: need more bytes, -1: error. */
static int body_step(struct http_conn *c)
{
	struct http_req *req = c->req;
	size_t want = req->content_length - req->body_len, n;

	if (!req->body && req->content_length > 0) {
		req->body_cap = req->content_length < BODY_INIT ? req->content_length : BODY_INIT;
		if (!(req->body = malloc(req->body_cap + 1))) {
			conn_error(c, 503);
			return -1;
		}
		if (req->expect_continue && req->minor >= 1 && c->rlen < want)
			wbuf_put(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	}
	n = c->rlen < want ? c->rlen : want;
	if (req->body_len + n > req->body_cap) {
		size_t cap = req->body_cap * 2;
		char *p;

		if (cap < req->body_len + n)
			cap = req->body_len + n;
		if (cap > req->content_length)
			cap = req->content_length;
		if (!(p = realloc(req->body, cap + 1))) {
			conn_error(c, 503);
			return -1;
		}
		req->body = p;
		req->body_cap = cap;
	}
	if (n) {
		memcpy(req->body + req->body_len, c->rbuf, n);
		req->body_len += n;
		rbuf_consume(c, n);
	}
	if (req->body)
		req->body[req->body_len] = 0;
	return req->body_len == req->content_length;
}

/* ---- routing -------------------------------------------------------- */

static bool route_path_match(const struct route *r, const char *path)
{
	if (r->exact)
		return strcmp(path, r->prefix) == 0;
	if (strncmp(path, r->prefix, r->plen) != 0)
		return false;
	return r->prefix[r->plen - 1] == '/' || path[r->plen] == 0 || path[r->plen] == '/';
}

static bool route_method_match(const struct route *r, const char *method)
{
	return !r->method[0] || strcmp(r->method, method) == 0 ||
	       (strcmp(method, "HEAD") == 0 && strcmp(r->method, "GET") == 0);
}

/* The best route, or NULL with *path_matched telling 405 from 404. */
static const struct route *route_find(const struct http_server *srv, const struct http_req *req,
                                      bool *path_matched)
{
	const struct route *best = NULL;

	*path_matched = false;
	for (unsigned i = 0; i < srv->nroutes; i++) {
		const struct route *r = &srv->routes[i];

		if (!route_path_match(r, req->path))
			continue;
		*path_matched = true;
		if (route_method_match(r, req->method) && (!best || r->plen > best->plen))
			best = r;
	}
	return best;
}

/* "Allow: GET, POST\r\n" for a 405. */
static void allow_header(const struct http_server *srv, const char *path, char *out, size_t len)
{
	size_t n = (size_t)snprintf(out, len, "Allow:");

	for (unsigned i = 0; i < srv->nroutes && n < len; i++) {
		const struct route *r = &srv->routes[i];

		if (route_path_match(r, path) && r->method[0])
			n += (size_t)snprintf(out + n, len - n, "%s %s", n > 6 ? "," : "", r->method);
	}
	if (n < len)
		snprintf(out + n, len - n, "\r\n");
}

int http_server_route(struct http_server *srv, const char *method, const char *path_prefix,
                      http_handler_fn fn, void *ctx)
{
	struct route *r;
	size_t plen;

	if (srv->nroutes >= MAX_ROUTES || !fn || !path_prefix || path_prefix[0] != '/')
		return -1;
	if (method && strcmp(method, "*") != 0 && strlen(method) > MAX_METHOD)
		return -1;
	r = &srv->routes[srv->nroutes];
	memset(r, 0, sizeof(*r));
	plen = strlen(path_prefix);
	r->exact = path_prefix[plen - 1] == '$';
	if (r->exact)
		plen--;
	if (plen == 0 || !(r->prefix = strndup(path_prefix, plen)))
		return -1;
	r->plen = plen;
	if (method && strcmp(method, "*") != 0)
		snprintf(r->method, sizeof(r->method), "%s", method);
	r->fn = fn;
	r->ctx = ctx;
	srv->nroutes++;
	return 0;
}

/* ---- answering ------------------------------------------------------ */

/* The final call happened: the connection moves on. */
static void conn_answer_done(struct http_conn *c, struct http_req *req, int status)
{
	bool keep = req->keepalive && !c->failed;

	count_response(c->srv, status);
	c->req = NULL;
	req_free(req);
	c->state = keep ? CS_HEAD : CS_CLOSING;
	c->idle_since = ev_now(c->srv->loop);
	c->req_start = 0;
	c->need_process = true;
	dirty_add(c);
}

int http_reply_ex(struct http_req *req, int status, const char *content_type,
                  const char *extra_headers, const void *body, size_t len)
{
	struct http_conn *c = req->conn;

	if (req->state == RQ_STREAMING) {
		log_error("http: reply on a streaming request %s %s", req->method, req->path);
		http_stream_end(req);
		return -1;
	}
	if (!c) {
		req_free(req);
		return -1;
	}
	if (status < 200 || status == 204 || status == 304)
		len = 0;
	write_head(c, req->minor, status, content_type, extra_headers, (long long)len,
	           req->keepalive);
	if (!req->is_head)
		wbuf_put(c, body, len);
	conn_answer_done(c, req, status);
	return 0;
}

int http_reply(struct http_req *req, int status, const char *content_type,
               const void *body, size_t len)
{
	return http_reply_ex(req, status, content_type, NULL, body, len);
}

int http_stream_begin_ex(struct http_req *req, int status, const char *content_type,
                         const char *extra_headers)
{
	struct http_conn *c = req->conn;

	if (req->state == RQ_STREAMING)
		return -1;
	req->state = RQ_STREAMING;
	if (!c)
		return -1;
	if (req->minor == 0)
		req->keepalive = false;
	req->chunked_out = req->minor >= 1;
	req->content_length = 0;
	write_head(c, req->minor, status, content_type, extra_headers, -1, req->keepalive);
	req->status = status;
	dirty_add(c);
	return c->failed ? -1 : 0;
}

int http_stream_begin(struct http_req *req, int status, const char *content_type)
{
	return http_stream_begin_ex(req, status, content_type, NULL);
}

int http_stream_write(struct http_req *req, const void *data, size_t len)
{
	struct http_conn *c = req->conn;

	if (!c || req->state != RQ_STREAMING || c->failed)
		return -1;
	if (len == 0 || req->is_head)
		return 0;
	if (pending_out(c) > STREAM_WBUF_MAX) {
		log_warn("http: client %s too slow for %s, dropping it", c->peer, req->path);
		c->failed = true;
		dirty_add(c);
		return -1;
	}
	if (req->chunked_out)
		wbuf_printf(c, "%zx\r\n", len);
	wbuf_put(c, data, len);
	if (req->chunked_out)
		wbuf_put(c, "\r\n", 2);
	dirty_add(c);
	return c->failed ? -1 : 0;
}

int http_stream_end(struct http_req *req)
{
	struct http_conn *c = req->conn;

	if (!c || req->state != RQ_STREAMING) {
		if (c && req->state != RQ_STREAMING)
			return http_reply(req, 500, NULL, NULL, 0);
		req_free(req);
		return -1;
	}
	if (req->chunked_out && !req->is_head)
		wbuf_put(c, "0\r\n\r\n", 5);
	conn_answer_done(c, req, req->status);
	return 0;
}

/* Error bodies from the server itself: OpenAI-shaped JSON. */
static int error_body(char *buf, size_t len, int status)
{
	return snprintf(buf, len,
	                "{\"error\":{\"message\":\"%s\",\"type\":\"http_error\",\"code\":%d}}\n",
	                http_status_text(status), status);
}

/* A request that cannot be parsed: answer, then close. */
static void conn_error(struct http_conn *c, int status)
{
	int minor = c->req ? c->req->minor : 1;
	char body[160];
	int n = error_body(body, sizeof(body), status);

	c->srv->stats.bad_requests++;
	log_debug("http: %s: answering %d", c->peer, status);
	if (c->req && c->req->state == RQ_NEW) {
		req_free(c->req);
		c->req = NULL;
	}
	write_head(c, minor, status, "application/json", NULL, n, false);
	wbuf_put(c, body, (size_t)n);
	count_response(c->srv, status);
	c->state = CS_CLOSING;
	dirty_add(c);
}

/* ---- dispatch ------------------------------------------------------- */

static void conn_dispatch(struct http_conn *c)
{
	struct http_server *srv = c->srv;
	struct http_req *req = c->req;
	const struct route *r;
	bool path_matched;
	char extra[256], body[160];
	int n, st;

	srv->stats.requests++;
	c->state = CS_BUSY;
	req->state = RQ_HANDLER;
	r = route_find(srv, req, &path_matched);
	if (!r) {
		st = path_matched ? 405 : 404;
		extra[0] = 0;
		if (path_matched)
			allow_header(srv, req->path, extra, sizeof(extra));
		n = error_body(body, sizeof(body), st);
		http_reply_ex(req, st, "application/json", extra, body, (size_t)n);
		return;
	}
	r->fn(req, r->ctx);
	if (c->req && c->req->state == RQ_HANDLER) {
		log_error("http: handler for %s %s returned without answering", req->method,
		          req->path);
		http_reply(req, 500, NULL, NULL, 0);
	}
}

/* Runs the connection's state machine over its buffered input. Never closes
 * the connection: failures set c->failed for the next flush. */
static void conn_process(struct http_conn *c)
{
	bool blocked = false;
	int r;

	c->need_process = false;
	while (!c->failed) {
		if (c->state == CS_HEAD) {
			if (pending_out(c) > WBUF_SOFT_MAX) {
				blocked = c->need_process = true;
				break;
			}
			if (c->rlen > 0 && c->req_start == 0)
				c->req_start = ev_now(c->srv->loop);
			if ((r = head_step(c)) <= 0)
				break;
		}
		if (c->state == CS_BODY) {
			if ((r = body_step(c)) <= 0)
				break;
			conn_dispatch(c);
			continue;
		}
		break;
	}
	if (!blocked && c->rd_eof) {
		if (c->state == CS_BUSY)
			c->failed = true;          /* half-closed while its answer is pending */
		else if (c->state == CS_HEAD && c->rlen == 0 && !c->req)
			c->state = CS_CLOSING;
		else if (c->state == CS_HEAD || c->state == CS_BODY)
			c->failed = true;          /* ended inside a request */
	}
	if (c->failed || c->state == CS_CLOSING)
		dirty_add(c);
	conn_update(c);
}

/* ---- I/O and timers ------------------------------------------------- */

static void conn_linger(struct http_conn *c)
{
	if (c->rd_eof) {
		conn_close(c);
		return;
	}
	shutdown(c->fd, SHUT_WR);
	c->state = CS_LINGER;
	ev_timer_stop(c->srv->loop, &c->timer);
	ev_timer_set(&c->timer, LINGER_TIME, 0);
	ev_timer_start(c->srv->loop, &c->timer);
	conn_update(c);
}

/* Writes what is queued. May close c. */
static void conn_flush(struct http_conn *c)
{
	dirty_del(c);
	if (c->failed) {
		conn_close(c);
		return;
	}
	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			conn_close(c);
			return;
		}
		c->woff += (size_t)n;
		c->last_write = ev_now(c->srv->loop);
	}
	if (c->woff == c->wlen && c->state == CS_CLOSING) {
		conn_linger(c);
		return;
	}
	if (c->woff == c->wlen && c->need_process)
		conn_process(c);
	else
		conn_update(c);
}

/* Watchers and timer from the state. */
static void conn_update(struct http_conn *c)
{
	struct ev_loop *loop = c->srv->loop;
	struct http_server *srv = c->srv;
	bool want_read, want_write = c->woff < c->wlen && !c->dirty;
	ev_tstamp at = 0;

	if (c->state == CS_LINGER)
		want_read = true;
	else if (c->state == CS_CLOSING || c->rd_eof || c->failed)
		want_read = false;
	else
		want_read = c->rlen < RBUF_SIZE;
	if (want_read != c->reading) {
		(want_read ? ev_io_start : ev_io_stop)(loop, &c->rio);
		c->reading = want_read;
	}
	if (want_write != c->writing) {
		(want_write ? ev_io_start : ev_io_stop)(loop, &c->wio);
		c->writing = want_write;
	}
	if (c->state == CS_LINGER)
		return;                            /* its timer is set once */
	if (c->woff < c->wlen)
		at = (c->last_write ? c->last_write : ev_now(loop)) + srv->send_timeout;
	else if (c->state == CS_HEAD && c->rlen == 0 && !c->req)
		at = c->idle_since + srv->idle_timeout;
	else if (c->state == CS_HEAD || c->state == CS_BODY)
		at = (c->req_start ? c->req_start : ev_now(loop)) + srv->request_timeout;
	ev_timer_stop(loop, &c->timer);
	if (at > 0) {
		ev_tstamp after = at - ev_now(loop);

		ev_timer_set(&c->timer, after > 0 ? after : 0.001, 0);
		ev_timer_start(loop, &c->timer);
	}
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct http_conn *c = w->data;

	(void)loop; (void)revents;
	if (c->state == CS_LINGER || (c->state == CS_HEAD && c->rlen == 0 && !c->req &&
	                              c->woff == c->wlen)) {
		conn_close(c);
		return;
	}
	c->srv->stats.timeouts++;
	if (c->woff < c->wlen || c->state == CS_BUSY || c->state == CS_CLOSING) {
		log_debug("http: %s: send timeout", c->peer);
		conn_close(c);
		return;
	}
	conn_error(c, 408);                    /* a request too slow to arrive */
	conn_flush(c);
}

static void rio_linger(struct http_conn *c)
{
	char sink[4096];
	ssize_t n = recv(c->fd, sink, sizeof(sink), 0);

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
		conn_close(c);
}

static void rio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct http_conn *c = w->data;
	ssize_t n;

	(void)loop; (void)revents;
	if (c->state == CS_LINGER) {
		rio_linger(c);
		return;
	}
	n = recv(c->fd, c->rbuf + c->rlen, RBUF_SIZE - c->rlen, 0);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n < 0) {
		conn_close(c);
		return;
	}
	if (n == 0) {
		c->rd_eof = true;
		if (c->state == CS_BUSY || (c->state == CS_HEAD && c->rlen == 0 &&
		                            !c->req && c->woff == c->wlen)) {
			conn_close(c);                 /* gone (cancels a pending answer) */
			return;
		}
	}
	c->rlen += (size_t)n;
	conn_process(c);
}

/* Writable again: the write happens in flush_cb, after the store has logged
 * what this loop iteration decided (main.c), never before. */
static void wio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop; (void)revents;
	dirty_add(w->data);
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct http_server *srv = w->data;

	(void)loop; (void)revents;
	while (srv->dirty)
		conn_flush(srv->dirty);
}

/* ---- connections ---------------------------------------------------- */

static void peer_text(const struct sockaddr_storage *ss, char *out, size_t len, bool *local)
{
	*local = false;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)len);
		*local = (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		const uint8_t *a = s6->sin6_addr.s6_addr;

		inet_ntop(AF_INET6, &s6->sin6_addr, out, (socklen_t)len);
		*local = IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr) ||
		         (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) && a[12] == 127);
	} else {
		snprintf(out, len, "unix");
		*local = true;
	}
}

static void conn_new(struct http_server *srv, int fd, const struct sockaddr_storage *ss)
{
	struct http_conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (!c || !(c->rbuf = malloc(RBUF_SIZE))) {
		free(c);
		close(fd);
		return;
	}
	if (ss->ss_family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->srv = srv;
	c->fd = fd;
	c->state = CS_HEAD;
	c->idle_since = ev_now(srv->loop);
	peer_text(ss, c->peer, sizeof(c->peer), &c->peer_local);
	ev_io_init(&c->rio, rio_cb, fd, EV_READ);
	ev_io_init(&c->wio, wio_cb, fd, EV_WRITE);
	ev_timer_init(&c->timer, timer_cb, 0, 0);
	c->rio.data = c->wio.data = c->timer.data = c;
	LIST_PUSH(srv->conns, c);
	srv->nconns++;
	srv->stats.conns_accepted++;
	srv->stats.conns_active++;
	conn_update(c);
}

static void conn_close(struct http_conn *c)
{
	struct http_server *srv = c->srv;
	struct http_req *req = c->req;

	dirty_del(c);
	LIST_DEL(srv->conns, c);
	ev_io_stop(srv->loop, &c->rio);
	ev_io_stop(srv->loop, &c->wio);
	ev_timer_stop(srv->loop, &c->timer);
	close(c->fd);
	srv->nconns--;
	srv->stats.conns_active--;
	if (srv->fd >= 0 && !ev_is_active(&srv->accept_w) && !ev_is_active(&srv->accept_pause))
		ev_io_start(srv->loop, &srv->accept_w);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
	if (!req)
		return;
	req->conn = NULL;                      /* detached: the handler still owns it */
	if (req->state == RQ_NEW) {
		req_free(req);
		return;
	}
	srv->stats.cancelled++;
	if (req->cancel)
		req->cancel(req, req->cancel_arg);
}

static void accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct http_server *srv = w->data;

	(void)revents;
	if (srv->nconns < MAX_CONNS)
		ev_io_start(loop, &srv->accept_w);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct http_server *srv = w->data;

	(void)revents;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd;

		if (srv->nconns >= MAX_CONNS) {
			ev_io_stop(loop, &srv->accept_w);
			return;
		}
		fd = accept4(srv->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			conn_new(srv, fd, &ss);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			log_warn("http: accept: %s; pausing", strerror(errno));
			ev_io_stop(loop, &srv->accept_w);
			ev_timer_set(&srv->accept_pause, ACCEPT_PAUSE, 0);
			ev_timer_start(loop, &srv->accept_pause);
		}
		return;
	}
}

/* ---- server --------------------------------------------------------- */

struct http_server *http_server_new(struct ev_loop *loop, const char *addr, char *err,
                                    size_t errlen)
{
	struct http_server *srv = calloc(1, sizeof(*srv));

	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->loop = loop;
	srv->idle_timeout = srv->request_timeout = srv->send_timeout = 30.0;
	srv->max_body = HTTP_MAX_BODY;
	srv->fd = net_listen(addr, false, err, errlen);
	if (srv->fd < 0) {
		free(srv);
		return NULL;
	}
	ev_io_init(&srv->accept_w, accept_cb, srv->fd, EV_READ);
	ev_timer_init(&srv->accept_pause, accept_pause_cb, 0, 0);
	ev_prepare_init(&srv->flush_w, flush_cb);
	srv->accept_w.data = srv->accept_pause.data = srv->flush_w.data = srv;
	ev_io_start(loop, &srv->accept_w);
	ev_prepare_start(loop, &srv->flush_w);
	ev_unref(loop);                        /* the prepare alone keeps nothing alive */
	return srv;
}

void http_server_set_timeouts(struct http_server *srv, double idle, double request, double send)
{
	if (idle > 0)
		srv->idle_timeout = idle;
	if (request > 0)
		srv->request_timeout = request;
	if (send > 0)
		srv->send_timeout = send;
}

void http_server_set_max_body(struct http_server *srv, size_t max)
{
	srv->max_body = max > HTTP_MAX_BODY ? max : HTTP_MAX_BODY;
}

/* At shutdown: one non-blocking write of what is queued (a stream's
 * terminating chunk, a last answer), best effort. */
static void conn_flush_last(struct http_conn *c)
{
	ssize_t n;

	if (c->woff < c->wlen && !c->failed) {
		n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
		(void)n;
	}
}

void http_server_free(struct http_server *srv)
{
	if (!srv)
		return;
	ev_io_stop(srv->loop, &srv->accept_w);
	ev_timer_stop(srv->loop, &srv->accept_pause);
	close(srv->fd);
	srv->fd = -1;
	for (struct http_conn *c = srv->conns; c; c = c->next)
		conn_flush_last(c);
	while (srv->conns)
		conn_close(srv->conns);
	ev_ref(srv->loop);
	ev_prepare_stop(srv->loop, &srv->flush_w);
	for (unsigned i = 0; i < srv->nroutes; i++)
		free(srv->routes[i].prefix);
	free(srv);
}

struct ev_loop *http_server_loop(const struct http_server *srv)
{
	return srv->loop;
}

const struct http_stats *http_server_stats(const struct http_server *srv)
{
	return &srv->stats;
}

int http_server_port(const struct http_server *srv)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (getsockname(srv->fd, (struct sockaddr *)&ss, &sl) != 0)
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

/* ---- forms ---------------------------------------------------------- */

/* Decodes [s, s+n) into out (NUL-terminated). Length, or -2. */
static int form_decode(const char *s, size_t n, char *out, size_t outlen)
{
	size_t o = 0;

	if (outlen == 0)
		return -2;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];

		if (ch == '+') {
			ch = ' ';
		} else if (ch == '%') {
			int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
			int lo = i + 2 < n ? hexval(s[i + 2]) : -1;

			if (hi < 0 || lo < 0)
				return -2;
			ch = (char)(hi * 16 + lo);
			i += 2;
		}
		if (o + 1 >= outlen)
			return -2;
		out[o++] = ch;
	}
	out[o] = 0;
	return (int)o;
}

int http_form_get(const char *s, size_t len, const char *name, char *out, size_t outlen)
{
	size_t i = 0;
	char key[256];

	while (i < len) {
		size_t start = i, eq, end;

		while (i < len && s[i] != '&')
			i++;
		end = i++;
		for (eq = start; eq < end && s[eq] != '='; eq++)
			;
		if (form_decode(s + start, eq - start, key, sizeof(key)) < 0 ||
		    strcmp(key, name) != 0)
			continue;
		if (eq == end)
			return form_decode("", 0, out, outlen);
		return form_decode(s + eq + 1, end - eq - 1, out, outlen);
	}
	return -1;
}
