/* spop-load.c -- a SPOP load generator (HAProxy doc/SPOE.txt, section 3).
 *
 * Plays HAProxy's side of SPOP against an agent: each connection sends a
 * HAPROXY-HELLO (version 2.0, max-frame-size 16380, capability pipelining),
 * checks the AGENT-HELLO, then keeps `depth` NOTIFY frames in flight, matches
 * every ACK by (stream-id, frame-id), checks that it is well formed (and, for
 * the diagnostic message tollgate-echo, that it echoes exactly what was sent)
 * and records the NOTIFY->ACK latency in a log-linear histogram. At the end
 * each connection sends HAPROXY-DISCONNECT and expects AGENT-DISCONNECT with
 * status 0.
 *
 * The SPOP encoder/decoder here is deliberately independent of spoe/: the
 * generator must not share bugs with the agent it measures. `--selftest`
 * checks it against byte vectors computed by hand from the spec.
 *
 * Output: one machine-readable line on stdout, e.g.
 *   spop-load: transport=tcp conns=4 depth=64 threads=1 frames=1234567
 *   secs=5.00 rate=246913/s p50=120.0us p90=... p99=480.0us p99.9=...
 *   max=...us errors=0
 * Exit 0 if no protocol error happened and at least one frame was ACKed,
 * 1 on any protocol error or mismatched ACK, 2 on usage/connection errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- protocol constants (SPOE.txt 3.1, 3.2.2, 3.4) -------------------- */

enum {
	FT_HAPROXY_HELLO = 1, FT_HAPROXY_DISCONNECT = 2, FT_NOTIFY = 3,
	FT_AGENT_HELLO = 101, FT_AGENT_DISCONNECT = 102, FT_ACK = 103,
};
enum {
	DT_NULL = 0, DT_BOOL = 1, DT_INT32 = 2, DT_UINT32 = 3, DT_INT64 = 4,
	DT_UINT64 = 5, DT_IPV4 = 6, DT_IPV6 = 7, DT_STR = 8, DT_BIN = 9,
};
#define FLAG_FIN   1u
#define FLAG_ABORT 2u
#define ACT_SET_VAR   1
#define ACT_UNSET_VAR 2
#define SCOPE_TXN 2
#define OUR_MAX_FRAME 16380u

/* ---- varints (3.1) -----------------------------------------------------
 * X < 240 is one byte. Otherwise the first byte carries the low 4 bits of X
 * with its high nibble set (0xF0 | ...), and (X - 240) >> 4 follows 7 bits at
 * a time, each byte with bit 7 set except the last; each continuation
 * subtracts the 128 that its set bit 7 stands for. */
static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	if (v < 240) {
		p[n++] = (uint8_t)v;
		return n;
	}
	p[n++] = (uint8_t)(v | 0xF0);
	v = (v - 240) >> 4;
	while (v >= 128) {
		p[n++] = (uint8_t)(v | 0x80);
		v = (v - 128) >> 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

static int get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
	const uint8_t *p = *pp;
	if (p >= end)
		return -1;
	uint64_t v = *p++;
	if (v >= 240) {
		unsigned shift = 4;
		for (;;) {
			if (p >= end || shift > 60)
				return -1;
			uint8_t b = *p++;
			v += (uint64_t)b << shift;
			shift += 7;
			if (b < 128)
				break;
		}
	}
	*pp = p;
	*out = v;
	return 0;
}

static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);  p[3] = (uint8_t)v;
}

/* <STRING>: varint length + bytes (message names, KV names, var names). */
static size_t put_str(uint8_t *p, const char *s, size_t len)
{
	size_t n = put_varint(p, len);
	memcpy(p + n, s, len);
	return n + len;
}
static int get_str(const uint8_t **pp, const uint8_t *end, const uint8_t **s, size_t *len)
{
	uint64_t l;
	const uint8_t *p = *pp;
	if (get_varint(&p, end, &l) || l > (uint64_t)(end - p))
		return -1;
	*s = p; *len = (size_t)l;
	*pp = p + l;
	return 0;
}

/* A decoded TYPED-DATA: type, integer value, or a view (STR/BIN/IP). */
struct tdata {
	int type;
	bool b;
	uint64_t u;
	const uint8_t *ptr;
	size_t len;
};

static int get_data(const uint8_t **pp, const uint8_t *end, struct tdata *d)
{
	const uint8_t *p = *pp;
	if (p >= end)
		return -1;
	uint8_t tb = *p++;
	memset(d, 0, sizeof(*d));
	d->type = tb & 0x0F;
	switch (d->type) {
	case DT_NULL:
		break;
	case DT_BOOL:
		d->b = (tb & 0x10) != 0;
		break;
	case DT_INT32: case DT_UINT32: case DT_INT64: case DT_UINT64:
		if (get_varint(&p, end, &d->u))
			return -1;
		if ((d->type == DT_INT32 || d->type == DT_UINT32) && d->u > 0xFFFFFFFFu)
			return -1;
		break;
	case DT_IPV4: case DT_IPV6:
		d->len = d->type == DT_IPV4 ? 4 : 16;
		if ((size_t)(end - p) < d->len)
			return -1;
		d->ptr = p;
		p += d->len;
		break;
	case DT_STR: case DT_BIN:
		if (get_str(&p, end, &d->ptr, &d->len))
			return -1;
		break;
	default:
		return -1;
	}
	*pp = p;
	return 0;
}

/* ---- frame encoding ------------------------------------------------------ */

/* Frame header after the 4-byte length: type, flags, stream-id, frame-id. */
static size_t put_frame_head(uint8_t *p, uint8_t type, uint32_t flags,
                             uint64_t sid, uint64_t fid)
{
	size_t n = 4;                   /* length prefix, patched by the caller */
	p[n++] = type;
	put_be32(p + n, flags); n += 4;
	n += put_varint(p + n, sid);
	n += put_varint(p + n, fid);
	return n;
}

static size_t enc_hello(uint8_t *p, uint32_t max_frame)
{
	size_t n = put_frame_head(p, FT_HAPROXY_HELLO, FLAG_FIN, 0, 0);
	n += put_str(p + n, "supported-versions", 18);
	p[n++] = DT_STR; n += put_str(p + n, "2.0", 3);
	n += put_str(p + n, "max-frame-size", 14);
	p[n++] = DT_UINT32; n += put_varint(p + n, max_frame);
	n += put_str(p + n, "capabilities", 12);
	p[n++] = DT_STR; n += put_str(p + n, "pipelining", 10);
	put_be32(p, (uint32_t)(n - 4));
	return n;
}

static size_t enc_disconnect(uint8_t *p, uint32_t status, const char *msg)
{
	size_t n = put_frame_head(p, FT_HAPROXY_DISCONNECT, FLAG_FIN, 0, 0);
	n += put_str(p + n, "status-code", 11);
	p[n++] = DT_UINT32; n += put_varint(p + n, status);
	n += put_str(p + n, "message", 7);
	p[n++] = DT_STR; n += put_str(p + n, msg, strlen(msg));
	put_be32(p, (uint32_t)(n - 4));
	return n;
}

/* The NOTIFY payload: one message with three args, str (STR), int (INT32,
 * varying per frame so a misrouted ACK is caught) and ip (IPV4). Everything
 * up to the int's value is constant and pre-encoded once. */
static const char ARG_STR[] = "x-tollgate-bench-0123456789abcdefghijklmnopqrstuvwxyz"
                              "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
static const uint8_t ARG_IP[4] = { 127, 0, 0, 1 };

struct notify_tpl {
	uint8_t pre[512];      /* name, nb-args, "str" kv, "int" name + type byte */
	size_t pre_len;
	uint8_t post[32];      /* "ip" kv */
	size_t post_len;
	size_t str_len;
};

static void tpl_init(struct notify_tpl *t, const char *msg, size_t str_len)
{
	size_t n = 0;
	n += put_str(t->pre + n, msg, strlen(msg));
	t->pre[n++] = 3;                                  /* NB-ARGS */
	n += put_str(t->pre + n, "str", 3);
	t->pre[n++] = DT_STR; n += put_str(t->pre + n, ARG_STR, str_len);
	n += put_str(t->pre + n, "int", 3);
	t->pre[n++] = DT_INT32;
	t->pre_len = n;
	n = 0;
	n += put_str(t->post + n, "ip", 2);
	t->post[n++] = DT_IPV4;
	memcpy(t->post + n, ARG_IP, 4); n += 4;
	t->post_len = n;
	t->str_len = str_len;
}

static size_t enc_notify(uint8_t *p, const struct notify_tpl *t, uint64_t sid,
                         uint64_t fid, uint32_t ival)
{
	size_t n = put_frame_head(p, FT_NOTIFY, FLAG_FIN, sid, fid);
	memcpy(p + n, t->pre, t->pre_len); n += t->pre_len;
	n += put_varint(p + n, ival);
	memcpy(p + n, t->post, t->post_len); n += t->post_len;
	put_be32(p, (uint32_t)(n - 4));
	return n;
}
#define NOTIFY_MAX 400          /* bound on one encoded NOTIFY (str <= 100) */

/* ---- latency histogram (log-linear, ns) ---------------------------------
 * Values < 64 ns are exact; above, each power of two is split in 32 equal
 * buckets (relative error < 1.6%). */
#define H_SUB_BITS 5
#define H_SUB      (1u << H_SUB_BITS)
#define H_NBUCKETS (2 * H_SUB + (64 - H_SUB_BITS - 1) * H_SUB)

struct hist {
	uint64_t b[H_NBUCKETS];
	uint64_t count, max, sum;
};

static inline unsigned h_index(uint64_t v)
{
	if (v < 2 * H_SUB)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);       /* >= 6 */
	unsigned sub = (unsigned)(v >> (e - H_SUB_BITS)) & (H_SUB - 1);
	return 2 * H_SUB + (e - H_SUB_BITS - 1) * H_SUB + sub;
}
/* Midpoint of bucket i. */
static double h_value(unsigned i)
{
	if (i < 2 * H_SUB)
		return i;
	unsigned e = (i - 2 * H_SUB) / H_SUB + H_SUB_BITS + 1;
	unsigned sub = (i - 2 * H_SUB) % H_SUB;
	double lo = (double)((uint64_t)(H_SUB + sub) << (e - H_SUB_BITS));
	double w = (double)((uint64_t)1 << (e - H_SUB_BITS));
	return lo + w / 2;
}
static inline void h_add(struct hist *h, uint64_t v)
{
	h->b[h_index(v)]++;
	h->count++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}
static void h_merge(struct hist *dst, const struct hist *src)
{
	for (unsigned i = 0; i < H_NBUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->count += src->count;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
}
static double h_quantile(const struct hist *h, double q)
{
	if (!h->count)
		return 0;
	uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
	if (rank < 1)
		rank = 1;
	uint64_t acc = 0;
	for (unsigned i = 0; i < H_NBUCKETS; i++) {
		acc += h->b[i];
		if (acc >= rank) {
			double v = h_value(i);
			return v > (double)h->max ? (double)h->max : v;
		}
	}
	return (double)h->max;
}

/* ---- configuration and shared state -------------------------------------- */

static struct {
	const char *tcp, *unix_path;
	int conns, depth, threads;
	double duration, warmup, drain;
	uint64_t total;
	const char *message;
	size_t str_len;
	bool echo;              /* message is tollgate-echo: check the echo */
	bool quiet;
	struct notify_tpl tpl;
	uint64_t t0, t_start, t_end, t_drain_end;
	struct sockaddr_storage addr;
	socklen_t addrlen;
} G = {
	.conns = 1, .depth = 1, .threads = 1, .duration = 5, .drain = 5,
	.message = "tollgate-echo", .str_len = 30,
};

static atomic_int n_errmsgs;

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

enum cstate { C_RUN, C_DRAIN, C_BYE, C_DONE };

struct slot {
	uint64_t fid;
	uint64_t t_sent;
	uint32_t ival;
	bool busy;
};

struct thr;
struct conn {
	int fd, id;
	struct thr *t;
	enum cstate st;
	uint32_t max_frame;
	uint8_t *rbuf; size_t rlen, rcap;
	uint8_t *wbuf; size_t wlen, woff, wcap;
	bool want_out;
	struct slot *slots;     /* index = stream-id - 1 */
	uint32_t *freel; unsigned nfree;
	unsigned inflight;
	uint64_t next_fid;
	uint64_t budget;        /* frames left to send (-n), else UINT64_MAX */
};

struct thr {
	pthread_t tid;
	int ep;
	struct conn **cv; int nc;
	int live;
	bool stopping;
	struct hist h;
	uint64_t acked_win, acked_all, sent, errors;
	uint64_t last_ack, started;
};

static void errmsg(const char *fmt, ...)
{
	if (atomic_fetch_add(&n_errmsgs, 1) >= 20)
		return;
	va_list ap;
	va_start(ap, fmt);
	fputs("spop-load: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0) {
		if (c->t && c->t->ep >= 0)
			epoll_ctl(c->t->ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	}
	if (c->st != C_DONE) {
		c->st = C_DONE;
		if (c->t)
			c->t->live--;
	}
}

static void conn_fail(struct conn *c, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	errmsg("conn %d: %s (in flight %u)", c->id, buf, c->inflight);
	if (c->t)
		c->t->errors++;
	conn_close(c);
}

static struct conn *conn_new(int id)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = -1;
	c->id = id;
	c->rcap = 2 * (OUR_MAX_FRAME + 4) + 65536;
	c->wcap = (size_t)G.depth * NOTIFY_MAX + 4096;
	c->rbuf = malloc(c->rcap);
	c->wbuf = malloc(c->wcap);
	c->slots = calloc((size_t)G.depth, sizeof(*c->slots));
	c->freel = malloc((size_t)G.depth * sizeof(*c->freel));
	if (!c->rbuf || !c->wbuf || !c->slots || !c->freel)
		return NULL;
	/* pop order: stream-id 1 first */
	for (int i = 0; i < G.depth; i++)
		c->freel[i] = (uint32_t)(G.depth - 1 - i);
	c->nfree = (unsigned)G.depth;
	c->next_fid = 1;
	c->budget = UINT64_MAX;
	c->max_frame = OUR_MAX_FRAME;
	return c;
}

/* ---- ACK validation ------------------------------------------------------ */

/* Checks the LIST-OF-ACTIONS of an ACK. In echo mode it must be exactly
 * set-var(txn, "str"/"int"/"ip") with the values sent; otherwise any
 * well-formed list. Returns NULL if fine, else what is wrong. */
static const char *check_actions(const uint8_t *p, const uint8_t *end,
                                 const struct slot *s)
{
	unsigned k = 0;
	while (p < end) {
		uint8_t type = *p++;
		if (p >= end)
			return "truncated action";
		uint8_t nargs = *p++;
		if (type != ACT_SET_VAR && type != ACT_UNSET_VAR)
			return "unknown action type";
		if ((type == ACT_SET_VAR && nargs != 3) || (type == ACT_UNSET_VAR && nargs != 2))
			return "wrong NB-ARGS for action";
		if (p >= end)
			return "truncated action";
		uint8_t scope = *p++;
		if (scope > 4)
			return "bad variable scope";
		const uint8_t *name; size_t nlen;
		if (get_str(&p, end, &name, &nlen))
			return "truncated variable name";
		struct tdata d = { 0 };
		if (type == ACT_SET_VAR && get_data(&p, end, &d))
			return "malformed variable value";
		if (G.echo) {
			static const char *const names[3] = { "str", "int", "ip" };
			if (k >= 3)
				return "echo: more than 3 actions";
			if (type != ACT_SET_VAR || scope != SCOPE_TXN)
				return "echo: expected set-var(txn, ...)";
			if (nlen != strlen(names[k]) || memcmp(name, names[k], nlen))
				return "echo: wrong variable name or order";
			switch (k) {
			case 0:
				if (d.type != DT_STR || d.len != G.str_len || memcmp(d.ptr, ARG_STR, d.len))
					return "echo: str value differs";
				break;
			case 1:
				if (d.type != DT_INT32 || d.u != s->ival)
					return "echo: int value differs (ACK for another frame?)";
				break;
			case 2:
				if (d.type != DT_IPV4 || memcmp(d.ptr, ARG_IP, 4))
					return "echo: ip value differs";
				break;
			}
		}
		k++;
	}
	if (G.echo && k != 3)
		return "echo: fewer than 3 actions";
	return NULL;
}

/* Handles one whole frame (bytes after the length prefix). 0 or -1 (the
 * connection has been failed). */
static int handle_frame(struct conn *c, const uint8_t *f, size_t len, uint64_t now)
{
	const uint8_t *p = f, *end = f + len;
	uint64_t sid, fid;
	if (len < 7)
		return conn_fail(c, "frame too short (%zu bytes)", len), -1;
	uint8_t type = *p++;
	uint32_t flags = get_be32(p); p += 4;
	if (get_varint(&p, end, &sid) || get_varint(&p, end, &fid))
		return conn_fail(c, "truncated frame header"), -1;

	if (type == FT_ACK) {
		if (c->st != C_RUN && c->st != C_DRAIN)
			return conn_fail(c, "ACK after HAPROXY-DISCONNECT (sid=%" PRIu64 " fid=%" PRIu64 ")", sid, fid), -1;
		if (flags != FLAG_FIN)
			return conn_fail(c, "ACK flags 0x%08x, expected FIN only", flags), -1;
		if (sid < 1 || sid > (uint64_t)G.depth)
			return conn_fail(c, "ACK for unknown stream-id %" PRIu64, sid), -1;
		struct slot *s = &c->slots[sid - 1];
		if (!s->busy || s->fid != fid)
			return conn_fail(c, "ACK (sid=%" PRIu64 ", fid=%" PRIu64 ") matches no NOTIFY in flight", sid, fid), -1;
		const char *why = check_actions(p, end, s);
		if (why)
			return conn_fail(c, "bad ACK (sid=%" PRIu64 ", fid=%" PRIu64 "): %s", sid, fid, why), -1;
		s->busy = false;
		c->freel[c->nfree++] = (uint32_t)(sid - 1);
		c->inflight--;
		if (c->t) {
			struct thr *t = c->t;
			t->acked_all++;
			t->last_ack = now;
			if (now >= G.t_start && now <= G.t_end) {
				t->acked_win++;
				h_add(&t->h, now > s->t_sent ? now - s->t_sent : 0);
			}
		}
		return 0;
	}
	if (type == FT_AGENT_DISCONNECT) {
		uint64_t status = UINT64_MAX;
		const uint8_t *msg = (const uint8_t *)""; size_t mlen = 0;
		while (p < end) {
			const uint8_t *k; size_t klen; struct tdata d;
			if (get_str(&p, end, &k, &klen) || get_data(&p, end, &d))
				return conn_fail(c, "malformed AGENT-DISCONNECT"), -1;
			if (klen == 11 && !memcmp(k, "status-code", 11) && d.type == DT_UINT32)
				status = d.u;
			else if (klen == 7 && !memcmp(k, "message", 7) && d.type == DT_STR)
				msg = d.ptr, mlen = d.len;
		}
		if (flags != FLAG_FIN || sid || fid || status == UINT64_MAX)
			return conn_fail(c, "malformed AGENT-DISCONNECT (flags/ids/status-code)"), -1;
		if (c->st == C_BYE && status == 0) {
			conn_close(c);
			return -1;      /* done, stop parsing */
		}
		return conn_fail(c, "AGENT-DISCONNECT status=%" PRIu64 " message=\"%.*s\"",
		                 status, (int)mlen, (const char *)msg), -1;
	}
	return conn_fail(c, "unexpected frame type %u", type), -1;
}

/* Consumes whole frames from the read buffer. */
static int parse_input(struct conn *c, uint64_t now)
{
	size_t off = 0;
	while (c->rlen - off >= 4) {
		uint32_t l = get_be32(c->rbuf + off);
		if (l == 0 || l > c->max_frame)
			return conn_fail(c, "frame length %u (negotiated max %u)", l, c->max_frame), -1;
		if (c->rlen - off - 4 < l)
			break;
		if (handle_frame(c, c->rbuf + off + 4, l, now))
			return -1;
		off += 4 + (size_t)l;
	}
	if (off) {
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
	}
	return 0;
}

/* ---- I/O ----------------------------------------------------------------- */

static void set_out_interest(struct conn *c, bool want)
{
	if (c->want_out == want || c->fd < 0)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };
	epoll_ctl(c->t->ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->want_out = want;
}

static int conn_flush(struct conn *c)
{
	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
		if (n > 0) {
			c->woff += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			set_out_interest(c, true);
			return 0;
		}
		return conn_fail(c, "send: %s", n < 0 ? strerror(errno) : "0 bytes"), -1;
	}
	c->woff = c->wlen = 0;
	set_out_interest(c, false);
	return 0;
}

static void compact_wbuf(struct conn *c)
{
	if (c->woff) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
	}
}

static void send_bye(struct conn *c)
{
	compact_wbuf(c);
	c->wlen += enc_disconnect(c->wbuf + c->wlen, 0, "spop-load done");
	c->st = C_BYE;
}

/* Tops the connection up to `depth` NOTIFYs in flight (frames are appended
 * to the write buffer and leave in one send). */
static void conn_fill(struct conn *c, uint64_t now)
{
	if (c->st == C_RUN) {
		if (c->inflight < (unsigned)G.depth && c->budget)
			compact_wbuf(c);
		while (c->nfree && c->budget) {
			if (c->wlen + NOTIFY_MAX > c->wcap)
				break;
			uint32_t si = c->freel[--c->nfree];
			struct slot *s = &c->slots[si];
			s->fid = c->next_fid++;
			s->ival = (uint32_t)(s->fid & 0x7FFFFFFF);
			s->t_sent = now;
			s->busy = true;
			c->wlen += enc_notify(c->wbuf + c->wlen, &G.tpl, si + 1, s->fid, s->ival);
			c->inflight++;
			c->budget--;
			if (c->t)
				c->t->sent++;
		}
		if (!c->budget && !c->inflight)
			send_bye(c);
	} else if (c->st == C_DRAIN && !c->inflight) {
		send_bye(c);
	}
}

static void conn_read(struct conn *c)
{
	for (int i = 0; i < 4 && c->fd >= 0; i++) {
		ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
		if (n > 0) {
			c->rlen += (size_t)n;
			if (parse_input(c, mono_ns()))
				return;
			if ((size_t)n < c->rcap / 2)
				break;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n == 0)
			conn_fail(c, c->st == C_BYE ? "EOF without AGENT-DISCONNECT after HAPROXY-DISCONNECT"
			                            : "agent closed the connection");
		else
			conn_fail(c, "recv: %s", strerror(errno));
		return;
	}
	if (c->fd < 0)
		return;
	conn_fill(c, mono_ns());
	conn_flush(c);
}

static void *thr_main(void *arg)
{
	struct thr *t = arg;
	struct epoll_event evs[256];
	uint64_t now = mono_ns();

	t->started = now;
	for (int i = 0; i < t->nc; i++) {
		struct conn *c = t->cv[i];
		conn_fill(c, now);
		conn_flush(c);
	}
	while (t->live > 0) {
		now = mono_ns();
		if (!t->stopping && now >= G.t_end) {
			t->stopping = true;
			for (int i = 0; i < t->nc; i++) {
				struct conn *c = t->cv[i];
				if (c->st == C_RUN) {
					c->st = C_DRAIN;
					conn_fill(c, now);
					conn_flush(c);
				}
			}
		}
		/* a connection with frames in flight and no ACK for --drain
		 * seconds has stalled */
		uint64_t stall_ns = (uint64_t)(G.drain * 1e9);
		uint64_t seen = t->last_ack > t->started ? t->last_ack : t->started;
		if (now > seen + stall_ns) {
			for (int i = 0; i < t->nc; i++) {
				struct conn *c = t->cv[i];
				if (c->st != C_DONE && c->inflight)
					conn_fail(c, "stalled: no ACK for %.1f s", G.drain);
			}
			t->started = now;
		}
		uint64_t limit = t->stopping ? G.t_drain_end : G.t_end;
		if (t->stopping && now >= limit) {
			for (int i = 0; i < t->nc; i++) {
				struct conn *c = t->cv[i];
				if (c->st != C_DONE)
					conn_fail(c, c->st == C_BYE ? "no AGENT-DISCONNECT after HAPROXY-DISCONNECT"
					                            : "timeout waiting for ACKs");
			}
			break;
		}
		int tmo = 100;
		if (limit) {
			uint64_t left = limit > now ? (limit - now) / 1000000 + 1 : 0;
			if (left < (uint64_t)tmo)
				tmo = (int)left;
		}
		int n = epoll_wait(t->ep, evs, 256, tmo);
		if (n < 0 && errno != EINTR) {
			perror("epoll_wait");
			t->errors++;
			break;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->fd < 0)
				continue;
			if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
				conn_read(c);
			if (c->fd >= 0 && (evs[i].events & EPOLLOUT))
				conn_flush(c);
		}
	}
	return NULL;
}

/* ---- setup: connect and HELLO (blocking, before the clock starts) -------- */

static int resolve(void)
{
	if (G.unix_path) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&G.addr;
		if (strlen(G.unix_path) >= sizeof(sun->sun_path)) {
			fprintf(stderr, "spop-load: unix path too long\n");
			return -1;
		}
		sun->sun_family = AF_UNIX;
		strcpy(sun->sun_path, G.unix_path);
		G.addrlen = sizeof(*sun);
		return 0;
	}
	char host[256];
	const char *colon = strrchr(G.tcp, ':');
	if (!colon || colon == G.tcp || (size_t)(colon - G.tcp) >= sizeof(host)) {
		fprintf(stderr, "spop-load: --tcp wants host:port\n");
		return -1;
	}
	memcpy(host, G.tcp, (size_t)(colon - G.tcp));
	host[colon - G.tcp] = 0;
	char *h = host;
	if (h[0] == '[' && h[strlen(h) - 1] == ']') {
		h[strlen(h) - 1] = 0;
		h++;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
	int rc = getaddrinfo(h, colon + 1, &hints, &res);
	if (rc) {
		fprintf(stderr, "spop-load: %s: %s\n", G.tcp, gai_strerror(rc));
		return -1;
	}
	memcpy(&G.addr, res->ai_addr, res->ai_addrlen);
	G.addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Reads one whole frame with a blocking socket. */
static int read_frame_blocking(int fd, uint8_t *buf, size_t cap, size_t *len)
{
	uint8_t hdr[4];
	size_t got = 0;
	while (got < 4) {
		ssize_t n = recv(fd, hdr + got, 4 - got, 0);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	uint32_t l = get_be32(hdr);
	if (l == 0 || l > cap)
		return -2;
	got = 0;
	while (got < l) {
		ssize_t n = recv(fd, buf + got, l - got, 0);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	*len = l;
	return 0;
}

/* Checks an AGENT-HELLO (bytes after the length prefix). Returns NULL if
 * fine (and sets *max_frame), else what is wrong. */
static const char *check_agent_hello(const uint8_t *f, size_t len, uint32_t *max_frame,
                                     char *why, size_t whylen)
{
	const uint8_t *p = f, *end = f + len;
	uint64_t sid, fid;
	if (len < 7)
		return "AGENT-HELLO too short";
	uint8_t type = *p++;
	uint32_t flags = get_be32(p); p += 4;
	if (get_varint(&p, end, &sid) || get_varint(&p, end, &fid))
		return "truncated frame header";
	bool has_v = false, has_m = false, has_c = false, pipe = false;
	uint64_t status = UINT64_MAX;
	const uint8_t *msg = NULL; size_t mlen = 0;
	while (p < end) {
		const uint8_t *k; size_t klen; struct tdata d;
		if (get_str(&p, end, &k, &klen) || get_data(&p, end, &d))
			return "malformed KV-LIST";
		if (type == FT_AGENT_DISCONNECT) {
			if (klen == 11 && !memcmp(k, "status-code", 11) && d.type == DT_UINT32)
				status = d.u;
			if (klen == 7 && !memcmp(k, "message", 7) && d.type == DT_STR)
				msg = d.ptr, mlen = d.len;
			continue;
		}
		if (klen == 7 && !memcmp(k, "version", 7)) {
			if (d.type != DT_STR || d.len < 2 || d.ptr[0] != '2' || d.ptr[1] != '.')
				return "version is not a 2.x STR";
			has_v = true;
		} else if (klen == 14 && !memcmp(k, "max-frame-size", 14)) {
			if (d.type != DT_UINT32)
				return "max-frame-size is not UINT32";
			if (d.u < 256 || d.u > OUR_MAX_FRAME)
				return "max-frame-size outside [256, 16380]";
			*max_frame = (uint32_t)d.u;
			has_m = true;
		} else if (klen == 12 && !memcmp(k, "capabilities", 12)) {
			if (d.type != DT_STR)
				return "capabilities is not a STR";
			has_c = true;
			/* comma-separated, spaces ignored */
			size_t i = 0;
			while (i < d.len) {
				while (i < d.len && (d.ptr[i] == ' ' || d.ptr[i] == ','))
					i++;
				size_t s = i;
				while (i < d.len && d.ptr[i] != ',' && d.ptr[i] != ' ')
					i++;
				if (i - s == 10 && !memcmp(d.ptr + s, "pipelining", 10))
					pipe = true;
			}
		}
	}
	if (type == FT_AGENT_DISCONNECT) {
		snprintf(why, whylen, "AGENT-DISCONNECT instead of AGENT-HELLO: status=%" PRIu64 " message=\"%.*s\"",
		         status, (int)mlen, msg ? (const char *)msg : "");
		return why;
	}
	if (type != FT_AGENT_HELLO)
		return "first frame is not AGENT-HELLO";
	if (flags != FLAG_FIN || sid || fid)
		return "AGENT-HELLO flags must be FIN, stream-id and frame-id 0";
	if (!has_v || !has_m || !has_c)
		return "AGENT-HELLO lacks version, max-frame-size or capabilities";
	if (G.depth > 1 && !pipe)
		return "agent does not announce pipelining (needed for -p > 1)";
	return NULL;
}

static int conn_open(struct conn *c)
{
	int fd = socket(G.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("spop-load: socket");
		return -1;
	}
	struct timeval tv = { .tv_sec = 5 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&G.addr, G.addrlen)) {
		fprintf(stderr, "spop-load: connect %s: %s\n", G.unix_path ? G.unix_path : G.tcp, strerror(errno));
		close(fd);
		return -1;
	}
	if (G.addr.ss_family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	uint8_t buf[OUR_MAX_FRAME + 4];
	size_t n = enc_hello(buf, OUR_MAX_FRAME);
	if (send(fd, buf, n, MSG_NOSIGNAL) != (ssize_t)n) {
		fprintf(stderr, "spop-load: conn %d: sending HELLO failed\n", c->id);
		close(fd);
		return -1;
	}
	size_t len;
	int rc = read_frame_blocking(fd, buf, OUR_MAX_FRAME, &len);
	if (rc) {
		fprintf(stderr, "spop-load: conn %d: %s\n", c->id,
		        rc == -2 ? "AGENT-HELLO length invalid" : "no AGENT-HELLO (EOF, error or 5 s timeout)");
		close(fd);
		return -1;
	}
	char why[256];
	const char *err = check_agent_hello(buf, len, &c->max_frame, why, sizeof(why));
	if (err) {
		fprintf(stderr, "spop-load: conn %d: %s\n", c->id, err);
		close(fd);
		return -1;
	}
	tv.tv_sec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	c->fd = fd;
	return 0;
}

/* ---- self-test: hand-computed vectors ------------------------------------ */

static int st_fail;
static void st_check(bool ok, const char *what)
{
	printf("%s: selftest %s\n", ok ? "PASS" : "FAIL", what);
	if (!ok)
		st_fail++;
}
static bool bytes_eq(const uint8_t *a, size_t alen, const char *b, size_t blen)
{
	return alen == blen && !memcmp(a, b, blen);
}

/* Runs an ACK frame (with length prefix) through the real parser against a
 * fake connection that has (sid 1, fid 300, ival 300) in flight. Returns
 * true if it was accepted. */
static bool st_ack(const uint8_t *frame, size_t len)
{
	struct conn *c = conn_new(0);
	bool ok;
	c->fd = -1;
	struct slot *s = &c->slots[0];
	s->fid = 300; s->ival = 300; s->busy = true;
	c->inflight = 1;
	c->nfree--;
	memcpy(c->rbuf, frame, len);
	c->rlen = len;
	int saved = atomic_exchange(&n_errmsgs, 1000);   /* silence expected errors */
	ok = parse_input(c, 0) == 0 && c->st == C_RUN && c->inflight == 0 && c->rlen == 0;
	atomic_store(&n_errmsgs, saved);
	free(c->rbuf); free(c->wbuf); free(c->slots); free(c->freel); free(c);
	return ok;
}

static int selftest(void)
{
	static const struct { uint64_t v; const char *b; size_t n; } vi[] = {
		{ 0, "\x00", 1 },
		{ 239, "\xEF", 1 },
		{ 240, "\xF0\x00", 2 },
		{ 255, "\xFF\x00", 2 },
		{ 256, "\xF0\x01", 2 },
		{ 300, "\xFC\x03", 2 },
		{ 2287, "\xFF\x7F", 2 },
		{ 2288, "\xF0\x80\x00", 3 },
		{ 16380, "\xFC\xF0\x06", 3 },
		{ 264431, "\xFF\xFF\x7F", 3 },
		{ 264432, "\xF0\x80\x80\x00", 4 },
		{ 4294967295u, "\xFF\xF0\xFE\xFE\x7E", 5 },
	};
	uint8_t buf[1024];
	for (size_t i = 0; i < sizeof(vi) / sizeof(vi[0]); i++) {
		char what[64];
		size_t n = put_varint(buf, vi[i].v);
		snprintf(what, sizeof(what), "varint encode %" PRIu64, vi[i].v);
		st_check(bytes_eq(buf, n, vi[i].b, vi[i].n), what);
		const uint8_t *p = (const uint8_t *)vi[i].b;
		uint64_t v = 0;
		snprintf(what, sizeof(what), "varint decode %" PRIu64, vi[i].v);
		st_check(get_varint(&p, p + vi[i].n, &v) == 0 && v == vi[i].v &&
		         p == (const uint8_t *)vi[i].b + vi[i].n, what);
		if (vi[i].n > 1) {
			p = (const uint8_t *)vi[i].b;
			snprintf(what, sizeof(what), "varint truncated %" PRIu64 " rejected", vi[i].v);
			st_check(get_varint(&p, p + vi[i].n - 1, &v) != 0, what);
		}
	}
	/* round trip over boundaries and a pseudo-random sweep */
	bool rt = true;
	uint64_t x = 88172645463325252ull;
	for (int i = 0; i < 200000 && rt; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		uint64_t v = i < 100000 ? (uint64_t)i * 37 : x >> (x & 63);
		size_t n = put_varint(buf, v);
		const uint8_t *p = buf;
		uint64_t w;
		rt = get_varint(&p, buf + n, &w) == 0 && w == v && p == buf + n;
	}
	st_check(rt, "varint round trip (200000 values)");

	/* HAPROXY-HELLO, computed by hand: 75 bytes after the prefix */
	static const char hello[] =
		"\x00\x00\x00\x4B" "\x01" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x12" "supported-versions" "\x08\x03" "2.0"
		"\x0E" "max-frame-size" "\x03" "\xFC\xF0\x06"
		"\x0C" "capabilities" "\x08\x0A" "pipelining";
	size_t n = enc_hello(buf, 16380);
	st_check(bytes_eq(buf, n, hello, sizeof(hello) - 1), "HAPROXY-HELLO bytes");

	/* NOTIFY sid 1, fid 300, int 300: 74 bytes after the prefix */
	struct notify_tpl t;
	tpl_init(&t, "tollgate-echo", 30);
	static const char notify[] =
		"\x00\x00\x00\x4A" "\x03" "\x00\x00\x00\x01" "\x01" "\xFC\x03"
		"\x0D" "tollgate-echo" "\x03"
		"\x03" "str" "\x08\x1E" "x-tollgate-bench-0123456789abc"
		"\x03" "int" "\x02" "\xFC\x03"
		"\x02" "ip" "\x06" "\x7F\x00\x00\x01";
	n = enc_notify(buf, &t, 1, 300, 300);
	st_check(bytes_eq(buf, n, notify, sizeof(notify) - 1), "NOTIFY bytes");

	/* HAPROXY-DISCONNECT status 0 "bye" */
	static const char bye[] =
		"\x00\x00\x00\x22" "\x02" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x0B" "status-code" "\x03" "\x00"
		"\x07" "message" "\x08\x03" "bye";
	n = enc_disconnect(buf, 0, "bye");
	st_check(bytes_eq(buf, n, bye, sizeof(bye) - 1), "HAPROXY-DISCONNECT bytes");

	/* AGENT-HELLO accepted; a DISCONNECT in its place is reported */
	static const char ahello[] =
		"\x65" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x07" "version" "\x08\x03" "2.0"
		"\x0E" "max-frame-size" "\x03" "\xFC\xF0\x06"
		"\x0C" "capabilities" "\x08\x0A" "pipelining";
	uint32_t mf = 0;
	char why[256];
	st_check(check_agent_hello((const uint8_t *)ahello, sizeof(ahello) - 1, &mf, why, sizeof(why)) == NULL &&
	         mf == 16380, "AGENT-HELLO accepted");
	G.depth = 4;
	static const char ahello_nopipe[] =
		"\x65" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x07" "version" "\x08\x03" "2.0"
		"\x0E" "max-frame-size" "\x03" "\xFC\xF0\x06"
		"\x0C" "capabilities" "\x08\x00";
	st_check(check_agent_hello((const uint8_t *)ahello_nopipe, sizeof(ahello_nopipe) - 1, &mf, why, sizeof(why)) != NULL,
	         "AGENT-HELLO without pipelining refused for depth > 1");
	static const char adisc[] =
		"\x66" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x0B" "status-code" "\x03" "\x08"
		"\x07" "message" "\x08\x03" "vsn";
	const char *e = check_agent_hello((const uint8_t *)adisc, sizeof(adisc) - 1, &mf, why, sizeof(why));
	st_check(e && strstr(e, "status=8"), "AGENT-DISCONNECT instead of HELLO reported");

	/* ACK echoing the NOTIFY above (sid 1, fid 300): 68 bytes after the prefix */
	G.echo = true;
	G.str_len = 30;
	static const char ack[] =
		"\x00\x00\x00\x44" "\x67" "\x00\x00\x00\x01" "\x01" "\xFC\x03"
		"\x01\x03\x02" "\x03" "str" "\x08\x1E" "x-tollgate-bench-0123456789abc"
		"\x01\x03\x02" "\x03" "int" "\x02" "\xFC\x03"
		"\x01\x03\x02" "\x02" "ip" "\x06" "\x7F\x00\x00\x01";
	size_t al = sizeof(ack) - 1;
	st_check(get_be32((const uint8_t *)ack) == al - 4, "ACK vector length");
	st_check(st_ack((const uint8_t *)ack, al), "echo ACK accepted");
	uint8_t m[256];
	memcpy(m, ack, al); m[11] = 0x04;                       /* fid 300 -> 316 */
	st_check(!st_ack(m, al), "ACK with unknown frame-id refused");
	memcpy(m, ack, al); m[9] = 0x02;                        /* sid 2 */
	st_check(!st_ack(m, al), "ACK with wrong stream-id refused");
	memcpy(m, ack, al); m[8] = 0x00;                        /* no FIN */
	st_check(!st_ack(m, al), "ACK without FIN refused");
	memcpy(m, ack, al); m[al - 1] = 0x02;                   /* ip differs */
	st_check(!st_ack(m, al), "ACK with a different echoed value refused");
	memcpy(m, ack, al); m[60] = 0x04;                       /* int 300 -> 316 */
	st_check(!st_ack(m, al), "ACK echoing another frame's int refused");
	memcpy(m, ack, al); m[3] = 0x43;                        /* truncated action */
	st_check(!st_ack(m, al - 1), "truncated ACK refused");
	memcpy(m, ack, al); m[4] = 0x66;                        /* DISCONNECT mid-run */
	st_check(!st_ack(m, al), "unexpected frame type refused");
	/* two ACK frames in one buffer, the second for an unknown frame */
	memcpy(m, ack, al); memcpy(m + al, ack, al);
	st_check(!st_ack(m, 2 * al), "duplicate ACK refused");
	/* generic mode: an empty action list is well formed */
	G.echo = false;
	static const char empty_ack[] = "\x00\x00\x00\x08" "\x67" "\x00\x00\x00\x01" "\x01" "\xFC\x03";
	st_check(st_ack((const uint8_t *)empty_ack, sizeof(empty_ack) - 1), "empty ACK accepted (generic mode)");
	static const char bad_act[] = "\x00\x00\x00\x0B" "\x67" "\x00\x00\x00\x01" "\x01" "\xFC\x03" "\x07\x01\x02";
	st_check(!st_ack((const uint8_t *)bad_act, sizeof(bad_act) - 1), "unknown action type refused");

	/* histogram: exact below 64, < 1.6% error above */
	struct hist *h = calloc(1, sizeof(*h));
	for (uint64_t v = 1; v <= 100000; v++)
		h_add(h, v);
	double p50 = h_quantile(h, 0.5), p99 = h_quantile(h, 0.99);
	st_check(p50 > 50000 * 0.984 && p50 < 50000 * 1.016 && p99 > 99000 * 0.984 && p99 < 99000 * 1.016,
	         "histogram quantiles");
	bool mono = true;
	for (uint64_t v = 1; v < (1ull << 40); v = v * 3 / 2 + 1)
		mono = mono && h_index(v) < H_NBUCKETS && h_value(h_index(v)) >= (double)v * 0.984 &&
		       h_value(h_index(v)) <= (double)v * 1.016 + 1;
	st_check(mono, "histogram bucket bounds");
	free(h);

	printf("%d failed\n", st_fail);
	return st_fail ? 1 : 0;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
	"usage: spop-load (--tcp HOST:PORT | --unix PATH) [options]\n"
	"  -c N            connections (default 1)\n"
	"  -p N            NOTIFY frames in flight per connection (default 1)\n"
	"  -d SECS         measure for SECS seconds (default 5)\n"
	"  -n N            send N frames in total instead of -d\n"
	"  -w SECS         warm-up before measuring (with -d; default 0)\n"
	"  -t N            threads (default 1; connections spread round-robin)\n"
	"  --message NAME  SPOE message name (default tollgate-echo; any other\n"
	"                  name only gets its ACK checked for well-formedness)\n"
	"  --str-len N     length of the STR argument (default 30, max 99)\n"
	"  --drain SECS    how long to wait for the last ACKs (default 5)\n"
	"  -q              only the summary line\n"
	"  --selftest      check the encoder/decoder against hand-made vectors\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "tcp", required_argument, 0, 'T' },
		{ "unix", required_argument, 0, 'U' },
		{ "message", required_argument, 0, 'm' },
		{ "str-len", required_argument, 0, 'L' },
		{ "drain", required_argument, 0, 'D' },
		{ "selftest", no_argument, 0, 'S' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "c:p:d:n:w:t:qh", lo, NULL)) != -1) {
		switch (o) {
		case 'T': G.tcp = optarg; break;
		case 'U': G.unix_path = optarg; break;
		case 'm': G.message = optarg; break;
		case 'L': G.str_len = (size_t)atoi(optarg); break;
		case 'D': G.drain = atof(optarg); break;
		case 'S': return selftest();
		case 'c': G.conns = atoi(optarg); break;
		case 'p': G.depth = atoi(optarg); break;
		case 'd': G.duration = atof(optarg); break;
		case 'n': G.total = strtoull(optarg, NULL, 10); break;
		case 'w': G.warmup = atof(optarg); break;
		case 't': G.threads = atoi(optarg); break;
		case 'q': G.quiet = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!G.tcp == !G.unix_path || G.conns < 1 || G.depth < 1 || G.depth > 65536 ||
	    G.threads < 1 || G.duration <= 0 || G.warmup < 0 || G.str_len > sizeof(ARG_STR) - 1 ||
	    strlen(G.message) > 100 || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (G.threads > G.conns)
		G.threads = G.conns;
	G.echo = !strcmp(G.message, "tollgate-echo");
	tpl_init(&G.tpl, G.message, G.str_len);
	signal(SIGPIPE, SIG_IGN);
	if (resolve())
		return 2;

	struct conn **cv = calloc((size_t)G.conns, sizeof(*cv));
	struct thr *tv = calloc((size_t)G.threads, sizeof(*tv));
	if (!cv || !tv)
		return 2;
	for (int i = 0; i < G.threads; i++) {
		tv[i].ep = epoll_create1(EPOLL_CLOEXEC);
		tv[i].cv = calloc((size_t)G.conns, sizeof(struct conn *));
		if (tv[i].ep < 0 || !tv[i].cv)
			return 2;
	}
	for (int i = 0; i < G.conns; i++) {
		cv[i] = conn_new(i);
		if (!cv[i])
			return 2;
		if (G.total)
			cv[i]->budget = G.total / (uint64_t)G.conns + ((uint64_t)i < G.total % (uint64_t)G.conns);
		if (conn_open(cv[i]))
			return 2;
		struct thr *t = &tv[i % G.threads];
		cv[i]->t = t;
		t->cv[t->nc++] = cv[i];
		t->live++;
		if (cv[i]->budget == 0) {       /* -n smaller than -c */
			conn_fill(cv[i], 0);
		}
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = cv[i] };
		if (epoll_ctl(t->ep, EPOLL_CTL_ADD, cv[i]->fd, &ev))
			return 2;
	}

	bool count_mode = G.total != 0;
	G.t0 = mono_ns();
	if (count_mode) {              /* no deadline: run the budget out */
		G.t_start = G.t0;
		G.t_end = UINT64_MAX;
		G.t_drain_end = UINT64_MAX;
	} else {
		G.t_start = G.t0 + (uint64_t)(G.warmup * 1e9);
		G.t_end = G.t_start + (uint64_t)(G.duration * 1e9);
		G.t_drain_end = G.t_end + (uint64_t)(G.drain * 1e9);
	}
	for (int i = 0; i < G.threads; i++) {
		if (pthread_create(&tv[i].tid, NULL, thr_main, &tv[i])) {
			perror("pthread_create");
			return 2;
		}
	}
	struct hist *h = calloc(1, sizeof(*h));
	uint64_t frames = 0, errors = 0, sent = 0, acked = 0, last = 0;
	for (int i = 0; i < G.threads; i++) {
		pthread_join(tv[i].tid, NULL);
		h_merge(h, &tv[i].h);
		frames += tv[i].acked_win;
		acked += tv[i].acked_all;
		sent += tv[i].sent;
		errors += tv[i].errors;
		if (tv[i].last_ack > last)
			last = tv[i].last_ack;
	}
	double secs = count_mode ? (double)(last > G.t0 ? last - G.t0 : 0) / 1e9 : G.duration;
	double rate = secs > 0 ? (double)frames / secs : 0;
	if (!G.quiet)
		fprintf(stderr, "spop-load: sent=%" PRIu64 " acked=%" PRIu64 " (measured %" PRIu64 ")\n",
		        sent, acked, frames);
	if (sent != acked && !errors)
		errors++;
	printf("spop-load: transport=%s conns=%d depth=%d threads=%d frames=%" PRIu64
	       " secs=%.2f rate=%.0f/s p50=%.1fus p90=%.1fus p99=%.1fus p99.9=%.1fus max=%.1fus errors=%" PRIu64 "\n",
	       G.unix_path ? "unix" : "tcp", G.conns, G.depth, G.threads, frames, secs, rate,
	       h_quantile(h, 0.50) / 1e3, h_quantile(h, 0.90) / 1e3, h_quantile(h, 0.99) / 1e3,
	       h_quantile(h, 0.999) / 1e3, (double)h->max / 1e3, errors);
	fflush(stdout);
	if (errors)
		return 1;
	return frames ? 0 : 1;
}
