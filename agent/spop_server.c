/* spop_server.c -- SPOP connections on a libev loop (see spop_server.h).
 *
 * Each connection is a small state machine: HELLO -> READY -> CLOSING.
 * Bytes are read into a per-connection buffer that grows up to the frame
 * size allowed at that point (ours before HELLO, the negotiated one after),
 * so a frame announced too big is refused from its 4-byte prefix before any
 * byte of it is buffered. Complete frames are decoded in place; a NOTIFY is
 * validated whole before any handler runs (a malformed tail never leaves a
 * half-applied decision), then becomes a tx that owns its ACK buffer.
 * Replies are queued whole in the connection's output buffer and flushed at
 * the end of each read batch, so a frame is never split by us and several
 * ACKs share one write under load. Timeouts are timers: one per connection
 * (hello, idle, closing linger) and one per tx that outlives its dispatch
 * (processing timeout). A tx whose connection is gone is "abandoned": it is
 * kept only until the handler's holds are released, then freed.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "list.h"
#include "log.h"
#include "net.h"
#include "spop_server.h"

#define CONN_RBUF_INIT   16388u      /* a 16 KiB frame + prefix */
/* Buffers grown past this for large frames (prompts of megabytes) are given
 * back when the connection's timer finds them empty: HAProxy keeps many SPOP
 * connections open, and each would otherwise hold the largest frame it ever
 * carried. Not at once: a fresh buffer costs a page fault every 4 KiB, a
 * quarter of the agent's time on a 4 MiB prompt. */
#define CONN_BUF_KEEP    (256u * 1024)
#define TX_INLINE_BUF    512u
#define TX_FREELIST_MAX  1024u
#define CLOSE_LINGER     2.0         /* seconds to flush a DISCONNECT */
#define MAX_HANDLERS     32u

enum conn_state { CS_HELLO, CS_READY, CS_CLOSING };

struct conn {
	struct spop_server *srv;
	int fd;
	ev_io rio, wio;
	ev_timer timer;              /* hello, idle or linger, by state */
	enum conn_state state;
	uint32_t max_frame;
	uint8_t *rbuf;
	size_t rlen, rcap;
	uint8_t *wbuf;
	size_t wlen, woff, wcap;
	unsigned inflight;
	struct spop_tx *txs;         /* frames in flight on this connection */
	ev_tstamp last_activity;
	bool in_process;             /* inside conn_process(): defer flush/free */
	bool paused;                 /* max_inflight reached: not reading */
	bool dead;                   /* closed while in_process: free at its end */
	bool dirty;                  /* on srv->dirty: output to flush */
	struct conn *prev, *next;
	struct conn *dprev, *dnext;  /* srv->dirty list */
};

struct spop_tx {
	struct spop_server *srv;
	struct conn *conn;           /* NULL once abandoned */
	uint64_t sid, fid;
	int holds;
	uint32_t max_frame;
	ev_timer ptimer;             /* processing timeout, armed if async */
	ev_timer delay;              /* tx_delay() */
	struct spop_wbuf w;
	struct spop_tx *prev, *next; /* in conn->txs or srv->orphans */
	uint8_t inline_buf[TX_INLINE_BUF];
};

struct handler {
	char name[64];
	size_t len;
	spop_msg_fn fn;
	void *ctx;
};

struct spop_server {
	struct ev_loop *loop;
	const struct tg_config *cfg;
	int tcp_fd, unix_fd;
	ev_io tcp_w, unix_w;
	struct conn *conns;
	struct conn *dirty;          /* connections with output queued */
	ev_prepare flush_w;          /* flushes them before the loop blocks */
	struct spop_tx *orphans;
	struct spop_tx *freelist;
	unsigned nfree;
	struct handler handlers[MAX_HANDLERS];
	unsigned nhandlers;
	bool draining;
	ev_timer drain_timer;
	struct spop_stats stats;
};

static void conn_process(struct conn *c);
static void conn_close(struct conn *c);
static void conn_disconnect(struct conn *c, enum spop_status st, const char *msg);
static void conn_arm_timer(struct conn *c);
static void drain_check(struct spop_server *srv);

/* ---- output --------------------------------------------------------- */

static void dirty_del(struct conn *c)
{
	if (!c->dirty)
		return;
	LIST_DEL_AT(c->srv->dirty, c, dprev, dnext);
	c->dirty = false;
}

static void dirty_add(struct conn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	LIST_PUSH_AT(c->srv->dirty, c, dprev, dnext);
}

/* Write what can be written now. May close (and free) the connection: call
 * it last, never with c used afterwards. */
static void conn_flush(struct conn *c)
{
	dirty_del(c);
	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			log_debug("spop: write: %s", strerror(errno));
			conn_close(c);
			return;
		}
		c->woff += (size_t)n;
	}
	if (c->woff == c->wlen) {
		c->woff = c->wlen = 0;
		ev_io_stop(c->srv->loop, &c->wio);
		if (c->state == CS_CLOSING)
			conn_close(c);
	} else {
		ev_io_start(c->srv->loop, &c->wio);
	}
}

/* Append one whole frame to the output. It leaves before the loop next
 * blocks (flush_cb, after the embedded store's log write: see main.c):
 * replies made in one loop iteration share one write, and queueing never
 * closes the connection under the caller's feet. */
static void conn_queue(struct conn *c, const uint8_t *p, size_t len)
{
	if (c->wlen + len > c->wcap) {
		size_t cap = c->wcap ? c->wcap : 4096;
		uint8_t *nb;

		while (cap < c->wlen + len)
			cap *= 2;
		nb = realloc(c->wbuf, cap);
		if (!nb) {                      /* HAProxy times the frame out */
			log_error("spop: out of memory for output, frame dropped");
			return;
		}
		c->wbuf = nb;
		c->wcap = cap;
	}
	memcpy(c->wbuf + c->wlen, p, len);
	c->wlen += len;
	c->srv->stats.frames_out++;
	if (!c->in_process)
		dirty_add(c);
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct spop_server *srv = w->data;

	(void)loop; (void)revents;
	while (srv->dirty)
		conn_flush(srv->dirty);
}

/* Writable again: the write happens in flush_cb, after the store has logged
 * what this loop iteration decided (main.c), never before. */
static void wio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop; (void)revents;
	dirty_add(w->data);
}

/* ---- transactions (one NOTIFY each) -------------------------------- */

static struct spop_tx *tx_new(struct conn *c, uint64_t sid, uint64_t fid)
{
	struct spop_server *srv = c->srv;
	struct spop_tx *tx = srv->freelist;

	if (tx) {
		srv->freelist = tx->next;
		srv->nfree--;
	} else if (!(tx = malloc(sizeof(*tx)))) {
		return NULL;
	}
	tx->srv = srv;
	tx->conn = c;
	tx->sid = sid;
	tx->fid = fid;
	tx->holds = 1;
	tx->max_frame = c->max_frame;
	ev_init(&tx->ptimer, NULL);
	ev_init(&tx->delay, NULL);
	spop_wbuf_init(&tx->w, tx->inline_buf, sizeof(tx->inline_buf));
	spop_enc_frame_begin(&tx->w, SPOP_FRM_ACK, SPOP_FLAG_FIN, sid, fid);
	LIST_PUSH(c->txs, tx);
	c->inflight++;
	c->srv->stats.inflight++;
	return tx;
}

static void tx_free(struct spop_tx *tx)
{
	struct spop_server *srv = tx->srv;

	ev_timer_stop(srv->loop, &tx->ptimer);
	ev_timer_stop(srv->loop, &tx->delay);
	if (tx->w.buf != tx->inline_buf)
		free(tx->w.buf);
	if (srv->nfree < TX_FREELIST_MAX) {
		tx->next = srv->freelist;
		srv->freelist = tx;
		srv->nfree++;
	} else {
		free(tx);
	}
}

/* Detach a tx from its connection: its ACK will never be sent there. */
static void tx_orphan(struct spop_tx *tx)
{
	struct conn *c = tx->conn;

	if (!c)
		return;
	LIST_DEL(c->txs, tx);
	c->inflight--;
	tx->srv->stats.inflight--;
	tx->conn = NULL;
	ev_timer_stop(tx->srv->loop, &tx->ptimer);
	LIST_PUSH(tx->srv->orphans, tx);
}

/* Send the ACK (or an empty one) and take the tx off its connection. */
static void tx_send_ack(struct spop_tx *tx, bool empty)
{
	struct conn *c = tx->conn;

	if (empty || spop_enc_frame_end(&tx->w, tx->max_frame) != SPOP_OK) {
		if (tx->w.buf != tx->inline_buf)
			free(tx->w.buf);
		spop_wbuf_init(&tx->w, tx->inline_buf, sizeof(tx->inline_buf));
		spop_enc_frame_begin(&tx->w, SPOP_FRM_ACK, SPOP_FLAG_FIN, tx->sid, tx->fid);
		spop_enc_frame_end(&tx->w, tx->max_frame);
	}
	conn_queue(c, tx->w.buf, tx->w.len);
	c->srv->stats.ack++;
	c->last_activity = ev_now(c->srv->loop);
}

void tx_release(struct spop_tx *tx)
{
	struct conn *c = tx->conn;

	if (--tx->holds > 0)
		return;
	if (!c) {                               /* abandoned: just forget it */
		LIST_DEL(tx->srv->orphans, tx);
		tx_free(tx);
		return;
	}
	tx_send_ack(tx, false);
	LIST_DEL(c->txs, tx);
	c->inflight--;
	c->srv->stats.inflight--;
	tx_free(tx);
	if (c->state == CS_CLOSING)
		return;
	if (c->srv->draining && c->inflight == 0) {
		conn_disconnect(c, SPOP_ST_NONE, "agent shutting down");
		return;
	}
	if (c->paused && !c->in_process) {
		c->paused = false;
		conn_process(c);                /* frames already buffered */
	}
}

void tx_hold(struct spop_tx *tx)
{
	tx->holds++;
}

static void ptimer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct spop_tx *tx = w->data;
	struct conn *c = tx->conn;

	(void)loop; (void)revents;
	if (!c)
		return;
	log_warn("spop: frame %llu/%llu not answered within processing_timeout: empty ACK",
	         (unsigned long long)tx->sid, (unsigned long long)tx->fid);
	c->srv->stats.ack_timeout++;
	tx_send_ack(tx, true);
	tx_orphan(tx);
	if (c->srv->draining && c->inflight == 0 && c->state != CS_CLOSING)
		conn_disconnect(c, SPOP_ST_NONE, "agent shutting down");
}

static void delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop; (void)revents;
	tx_release(w->data);
}

void tx_delay(struct spop_tx *tx, double seconds)
{
	if (ev_is_active(&tx->delay))
		return;
	tx_hold(tx);
	ev_timer_init(&tx->delay, delay_cb, seconds, 0.);
	tx->delay.data = tx;
	ev_timer_start(tx->srv->loop, &tx->delay);
}

int tx_abandoned(const struct spop_tx *tx)
{
	return tx->conn == NULL;
}

struct ev_loop *tx_loop(const struct spop_tx *tx)
{
	return tx->srv->loop;
}

const struct tg_config *tx_config(const struct spop_tx *tx)
{
	return tx->srv->cfg;
}

/* Make room for `need` more bytes in the ACK, up to the frame size. */
static bool tx_reserve(struct spop_tx *tx, size_t need)
{
	size_t limit = (size_t)tx->max_frame + SPOP_FRAME_HDR_LEN, cap;
	uint8_t *nb;

	if (tx->w.len + need <= tx->w.cap)
		return true;
	if (tx->w.len + need > limit)
		return false;
	cap = tx->w.cap * 2;
	while (cap < tx->w.len + need)
		cap *= 2;
	if (cap > limit)
		cap = limit;
	if (tx->w.buf == tx->inline_buf) {
		nb = malloc(cap);
		if (nb)
			memcpy(nb, tx->w.buf, tx->w.len);
	} else {
		nb = realloc(tx->w.buf, cap);
	}
	if (!nb)
		return false;
	tx->w.buf = nb;
	tx->w.cap = cap;
	return true;
}

void tx_set_var(struct spop_tx *tx, enum spop_scope scope, const char *name,
                const struct spop_data *d)
{
	size_t nlen = strlen(name), dlen = 0;

	if (d->type == SPOP_DATA_STR || d->type == SPOP_DATA_BIN)
		dlen = d->u.str.len;
	if (!tx_reserve(tx, 3 + 10 + nlen + 1 + 16 + dlen)) {
		log_warn("spop: ACK full, action set-var %s dropped", name);
		return;
	}
	spop_enc_set_var(&tx->w, scope, name, nlen, d);
}

void tx_set_str(struct spop_tx *tx, const char *name, const char *p, size_t len)
{
	struct spop_data d = spop_str_data(p, len);

	tx_set_var(tx, SPOP_SCOPE_TXN, name, &d);
}

void tx_set_int(struct spop_tx *tx, const char *name, int64_t v)
{
	struct spop_data d = spop_int_data(v);

	tx_set_var(tx, SPOP_SCOPE_TXN, name, &d);
}

void tx_unset_var(struct spop_tx *tx, enum spop_scope scope, const char *name)
{
	size_t nlen = strlen(name);

	if (!tx_reserve(tx, 3 + 10 + nlen)) {
		log_warn("spop: ACK full, action unset-var %s dropped", name);
		return;
	}
	spop_enc_unset_var(&tx->w, scope, name, nlen);
}

/* ---- frames --------------------------------------------------------- */

static void handle_hello(struct conn *c, const struct spop_frame *f)
{
	const struct tg_config *cfg = c->srv->cfg;
	struct spop_hello h;
	enum spop_status st;
	struct spop_wbuf w;
	uint8_t out[256];
	uint32_t max;

	if (c->state != CS_HELLO)
		return conn_disconnect(c, SPOP_ST_INVALID, "duplicate HELLO");
	if (!(f->flags & SPOP_FLAG_FIN))
		return conn_disconnect(c, SPOP_ST_FRAG_NOT_SUPP, "fragmented HELLO");
	if (spop_decode_hello(f->payload, &h, &st) != SPOP_OK)
		return conn_disconnect(c, st, spop_status_str(st));
	if (!spop_versions_accept(h.versions))
		return conn_disconnect(c, SPOP_ST_BAD_VSN, "SPOP 2.x required");
	if (h.max_frame_size < SPOP_MIN_FRAME_SIZE)
		return conn_disconnect(c, SPOP_ST_BAD_FRAME_SIZE, "max-frame-size below 256");
	max = h.max_frame_size < cfg->agent.max_frame_size ? h.max_frame_size
	                                                   : cfg->agent.max_frame_size;
	spop_wbuf_init(&w, out, sizeof(out));
	if (spop_enc_agent_hello(&w, max, "pipelining") != SPOP_OK)
		return conn_disconnect(c, SPOP_ST_UNKNOWN, "cannot encode AGENT-HELLO");
	conn_queue(c, out, w.len);
	c->max_frame = max;
	if (h.healthcheck) {
		c->srv->stats.healthchecks++;
		c->state = CS_CLOSING;          /* closed once the HELLO is written */
		ev_io_stop(c->srv->loop, &c->rio);
		conn_arm_timer(c);
		return;
	}
	c->state = CS_READY;
	conn_arm_timer(c);
	log_debug("spop: fd %d ready, max-frame-size %u", c->fd, max);
}

static struct handler *find_handler(struct spop_server *srv, struct spop_str name)
{
	for (unsigned i = 0; i < srv->nhandlers; i++)
		if (srv->handlers[i].len == name.len &&
		    memcmp(srv->handlers[i].name, name.ptr, name.len) == 0)
			return &srv->handlers[i];
	return NULL;
}

static void handle_notify(struct conn *c, const struct spop_frame *f)
{
	struct spop_server *srv = c->srv;
	struct spop_cursor cur = f->payload;
	struct spop_msg m;
	struct spop_tx *tx;
	int rc;

	if (!(f->flags & SPOP_FLAG_FIN))
		return conn_disconnect(c, SPOP_ST_FRAG_NOT_SUPP, "fragmentation not supported");
	/* Validate the whole payload before any handler acts on it
	 * (spop_next_msg checks every argument of the message it returns). */
	while ((rc = spop_next_msg(&cur, &m)) == SPOP_OK)
		;
	if (rc != SPOP_END)
		return conn_disconnect(c, SPOP_ST_INVALID, "malformed NOTIFY");
	srv->stats.notify++;
	tx = tx_new(c, f->stream_id, f->frame_id);
	if (!tx)
		return conn_disconnect(c, SPOP_ST_RES, "out of memory");
	cur = f->payload;
	while (spop_next_msg(&cur, &m) == SPOP_OK) {
		struct handler *h = find_handler(srv, m.name);

		if (h)
			h->fn(tx, &m, h->ctx);
		else
			srv->stats.unknown_messages++;
	}
	if (tx->holds > 1 && tx->conn) {
		double t = srv->cfg->agent.processing_timeout;

		ev_timer_init(&tx->ptimer, ptimer_cb, t, 0.);
		tx->ptimer.data = tx;
		ev_timer_start(srv->loop, &tx->ptimer);
	}
	tx_release(tx);
}

static void handle_frame(struct conn *c, const uint8_t *p, size_t len)
{
	struct spop_frame f;
	struct spop_disconnect d;
	enum spop_status st;

	c->srv->stats.frames_in++;
	if (spop_decode_frame(p, len, &f, &st) != SPOP_OK)
		return conn_disconnect(c, st, "malformed frame");
	if (c->state == CS_HELLO && f.type != SPOP_FRM_HAPROXY_HELLO &&
	    f.type != SPOP_FRM_HAPROXY_DISCONNECT)
		return conn_disconnect(c, SPOP_ST_INVALID, "HELLO expected");
	switch (f.type) {
	case SPOP_FRM_HAPROXY_HELLO:
		return handle_hello(c, &f);
	case SPOP_FRM_NOTIFY:
		return handle_notify(c, &f);
	case SPOP_FRM_HAPROXY_DISCONNECT:
		c->srv->stats.disconnect_in++;
		if (spop_decode_disconnect(f.payload, &d, &st) == SPOP_OK && d.status != 0)
			log_info("spop: HAProxy disconnects: status %u (%.*s)", d.status,
			         (int)d.message.len, d.message.ptr);
		return conn_disconnect(c, SPOP_ST_NONE, "bye");
	case SPOP_FRM_UNSET:
		return conn_disconnect(c, SPOP_ST_FRAG_NOT_SUPP, "fragmentation not supported");
	case SPOP_FRM_AGENT_HELLO:
	case SPOP_FRM_AGENT_DISCONNECT:
	case SPOP_FRM_ACK:
		return conn_disconnect(c, SPOP_ST_INVALID, "agent frame type from HAProxy");
	default:
		return;                         /* 3.2.2: unknown frames may be skipped */
	}
}

/* ---- connections ---------------------------------------------------- */

static void conn_free(struct conn *c)
{
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

static void conn_close(struct conn *c)
{
	struct spop_server *srv = c->srv;

	if (c->fd < 0)
		return;
	ev_io_stop(srv->loop, &c->rio);
	ev_io_stop(srv->loop, &c->wio);
	ev_timer_stop(srv->loop, &c->timer);
	close(c->fd);
	c->fd = -1;
	dirty_del(c);
	while (c->txs)
		tx_orphan(c->txs);
	LIST_DEL(srv->conns, c);
	srv->stats.conns_active--;
	if (c->in_process)
		c->dead = true;
	else
		conn_free(c);
	drain_check(srv);
}

static void conn_disconnect(struct conn *c, enum spop_status st, const char *msg)
{
	struct spop_wbuf w;
	uint8_t out[512];
	uint32_t max = c->max_frame > sizeof(out) - SPOP_FRAME_HDR_LEN
	               ? (uint32_t)(sizeof(out) - SPOP_FRAME_HDR_LEN) : c->max_frame;

	if (c->state == CS_CLOSING)
		return;
	if (st != SPOP_ST_NONE)
		log_info("spop: fd %d: AGENT-DISCONNECT status %d (%s)", c->fd, (int)st, msg);
	c->srv->stats.disconnect_out++;
	c->srv->stats.errors[st <= SPOP_ST_UNKNOWN ? st : SPOP_ST_UNKNOWN]++;
	while (c->txs)                          /* their ACKs are never sent */
		tx_orphan(c->txs);
	c->state = CS_CLOSING;
	ev_io_stop(c->srv->loop, &c->rio);
	conn_arm_timer(c);
	spop_wbuf_init(&w, out, sizeof(out));
	if (spop_enc_agent_disconnect(&w, max, st, msg) == SPOP_OK)
		conn_queue(c, out, w.len);
	else if (!c->in_process)
		conn_close(c);
}

/* Give back buffers grown for large frames, when they are empty. */
static void conn_trim(struct conn *c)
{
	if (c->rcap > CONN_BUF_KEEP && c->rlen <= CONN_RBUF_INIT) {
		uint8_t *nb = realloc(c->rbuf, CONN_RBUF_INIT);

		if (nb) {
			c->rbuf = nb;
			c->rcap = CONN_RBUF_INIT;
		}
	}
	if (c->wcap > CONN_BUF_KEEP && c->wlen == 0) {
		free(c->wbuf);
		c->wbuf = NULL;
		c->wcap = 0;
	}
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn *c = w->data;
	const struct tg_config *cfg = c->srv->cfg;
	ev_tstamp idle;

	(void)revents;
	switch (c->state) {
	case CS_HELLO:
		conn_disconnect(c, SPOP_ST_TIMEOUT, "hello timeout");
		return;
	case CS_CLOSING:
		conn_close(c);
		return;
	case CS_READY:
		conn_trim(c);
		idle = ev_now(loop) - c->last_activity;
		if (c->inflight == 0 && idle >= cfg->agent.idle_timeout) {
			conn_disconnect(c, SPOP_ST_TIMEOUT, "idle timeout");
			return;
		}
		ev_timer_set(&c->timer, c->inflight ? cfg->agent.idle_timeout
		                                    : cfg->agent.idle_timeout - idle, 0.);
		ev_timer_start(loop, &c->timer);
		return;
	}
}

static void conn_arm_timer(struct conn *c)
{
	const struct tg_config *cfg = c->srv->cfg;
	double t = c->state == CS_HELLO ? cfg->agent.hello_timeout
	         : c->state == CS_READY ? cfg->agent.idle_timeout : CLOSE_LINGER;

	ev_timer_stop(c->srv->loop, &c->timer);
	ev_timer_set(&c->timer, t, 0.);
	ev_timer_start(c->srv->loop, &c->timer);
}

static bool conn_grow_rbuf(struct conn *c, size_t need)
{
	uint8_t *nb;

	if (need <= c->rcap)
		return true;
	nb = realloc(c->rbuf, need);
	if (!nb)
		return false;
	c->rbuf = nb;
	c->rcap = need;
	return true;
}

/* Decode and handle every complete frame in the input buffer. */
static void conn_process(struct conn *c)
{
	const struct tg_config *cfg = c->srv->cfg;
	size_t off = 0;

	c->in_process = true;
	while (c->state != CS_CLOSING && !c->dead) {
		uint32_t flen = 0;
		enum spop_status st = SPOP_ST_NONE;
		int rc = spop_frame_check(c->rbuf + off, c->rlen - off, c->max_frame, &flen, &st);

		if (rc == SPOP_NEED_MORE) {
			if (flen && !conn_grow_rbuf(c, (size_t)flen + SPOP_FRAME_HDR_LEN))
				conn_disconnect(c, SPOP_ST_RES, "out of memory");
			break;
		}
		if (rc != SPOP_OK) {
			conn_disconnect(c, st, st == SPOP_ST_TOO_BIG ? "frame too big" : "bad frame length");
			break;
		}
		handle_frame(c, c->rbuf + off + SPOP_FRAME_HDR_LEN, flen);
		off += SPOP_FRAME_HDR_LEN + flen;
		if (c->state == CS_READY && c->inflight >= cfg->agent.max_inflight) {
			c->paused = true;
			ev_io_stop(c->srv->loop, &c->rio);
			break;
		}
	}
	if (!c->dead) {
		if (off) {
			memmove(c->rbuf, c->rbuf + off, c->rlen - off);
			c->rlen -= off;
		}
		if (!c->paused && c->state != CS_CLOSING && !c->srv->draining)
			ev_io_start(c->srv->loop, &c->rio);
	}
	c->in_process = false;
	if (c->dead) {
		conn_free(c);
		return;
	}
	dirty_add(c);   /* flush_cb, after the store has logged what was decided */
}

static void rio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;
	ssize_t n;

	(void)revents;
	if (c->rlen == c->rcap && !conn_grow_rbuf(c, c->rcap * 2))
		return conn_disconnect(c, SPOP_ST_RES, "out of memory");
	n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
	if (n == 0) {
		log_debug("spop: fd %d: EOF", c->fd);
		return conn_close(c);
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		log_debug("spop: fd %d: read: %s", c->fd, strerror(errno));
		return conn_close(c);
	}
	c->rlen += (size_t)n;
	c->last_activity = ev_now(loop);
	conn_process(c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct spop_server *srv = w->data;
	int one = 1;

	(void)revents;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct conn *c;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				log_warn("spop: accept: %s", strerror(errno));
			return;
		}
		if (w == &srv->tcp_w)
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = calloc(1, sizeof(*c));
		if (!c || !(c->rbuf = malloc(CONN_RBUF_INIT))) {
			log_error("spop: out of memory accepting a connection");
			free(c);
			close(fd);
			continue;
		}
		c->srv = srv;
		c->fd = fd;
		c->rcap = CONN_RBUF_INIT;
		c->max_frame = srv->cfg->agent.max_frame_size;
		c->state = CS_HELLO;
		c->last_activity = ev_now(loop);
		ev_io_init(&c->rio, rio_cb, fd, EV_READ);
		ev_io_init(&c->wio, wio_cb, fd, EV_WRITE);
		ev_init(&c->timer, conn_timer_cb);
		c->rio.data = c->wio.data = c->timer.data = c;
		LIST_PUSH(srv->conns, c);
		srv->stats.conns_accepted++;
		srv->stats.conns_active++;
		ev_io_start(loop, &c->rio);
		conn_arm_timer(c);
	}
}

/* ---- server --------------------------------------------------------- */

struct spop_server *spop_server_new(struct ev_loop *loop, const struct tg_config *cfg,
                                    char *err, size_t errlen)
{
	struct spop_server *srv = calloc(1, sizeof(*srv));

	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->loop = loop;
	srv->cfg = cfg;
	srv->tcp_fd = srv->unix_fd = -1;
	ev_prepare_init(&srv->flush_w, flush_cb);
	srv->flush_w.data = srv;
	ev_prepare_start(loop, &srv->flush_w);
	return srv;
}

int spop_server_listen(struct spop_server *srv, char *err, size_t errlen)
{
	const struct tg_agent_cfg *a = &srv->cfg->agent;

	if (a->listen && *a->listen) {
		srv->tcp_fd = net_listen(a->listen, false, err, errlen);
		if (srv->tcp_fd < 0)
			return -1;
		ev_io_init(&srv->tcp_w, accept_cb, srv->tcp_fd, EV_READ);
		srv->tcp_w.data = srv;
		ev_io_start(srv->loop, &srv->tcp_w);
	}
	if (a->unix_path && *a->unix_path) {
		char addr[4096];

		snprintf(addr, sizeof(addr), "unix:%s", a->unix_path);
		srv->unix_fd = net_listen(addr, false, err, errlen);
		if (srv->unix_fd < 0)
			return -1;
		ev_io_init(&srv->unix_w, accept_cb, srv->unix_fd, EV_READ);
		srv->unix_w.data = srv;
		ev_io_start(srv->loop, &srv->unix_w);
	}
	if (srv->tcp_fd < 0 && srv->unix_fd < 0) {
		snprintf(err, errlen, "agent.listen and agent.unix are both empty");
		return -1;
	}
	return 0;
}

void spop_server_set_config(struct spop_server *srv, const struct tg_config *cfg)
{
	srv->cfg = cfg;
}

void spop_server_handle(struct spop_server *srv, const char *name, spop_msg_fn fn, void *ctx)
{
	struct handler *h;
	size_t len = strlen(name);

	if (srv->nhandlers == MAX_HANDLERS || len >= sizeof(h->name))
		return;
	h = &srv->handlers[srv->nhandlers++];
	memcpy(h->name, name, len + 1);
	h->len = len;
	h->fn = fn;
	h->ctx = ctx;
}

static void close_listeners(struct spop_server *srv)
{
	if (srv->tcp_fd >= 0) {
		ev_io_stop(srv->loop, &srv->tcp_w);
		close(srv->tcp_fd);
		srv->tcp_fd = -1;
	}
	if (srv->unix_fd >= 0) {
		ev_io_stop(srv->loop, &srv->unix_w);
		close(srv->unix_fd);
		srv->unix_fd = -1;
		if (srv->cfg->agent.unix_path)
			unlink(srv->cfg->agent.unix_path);
	}
}

static void drain_check(struct spop_server *srv)
{
	if (srv->draining && !srv->conns) {
		ev_timer_stop(srv->loop, &srv->drain_timer);
		ev_break(srv->loop, EVBREAK_ALL);
	}
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w; (void)revents;
	log_warn("spop: drain_timeout reached, exiting with frames in flight");
	ev_break(loop, EVBREAK_ALL);
}

void spop_server_drain(struct spop_server *srv)
{
	struct conn *c, *next;

	if (srv->draining)
		return;
	srv->draining = true;
	close_listeners(srv);
	ev_timer_init(&srv->drain_timer, drain_timeout_cb, srv->cfg->agent.drain_timeout, 0.);
	ev_timer_start(srv->loop, &srv->drain_timer);
	for (c = srv->conns; c; c = next) {
		next = c->next;
		ev_io_stop(srv->loop, &c->rio);
		if (c->state != CS_CLOSING && c->inflight == 0)
			conn_disconnect(c, SPOP_ST_NONE, "agent shutting down");
	}
	drain_check(srv);
}

void spop_server_free(struct spop_server *srv)
{
	struct spop_tx *tx;

	if (!srv)
		return;
	close_listeners(srv);
	while (srv->conns)
		conn_close(srv->conns);
	while ((tx = srv->orphans)) {
		LIST_DEL(srv->orphans, tx);
		tx->srv->nfree = TX_FREELIST_MAX;   /* free, do not recycle */
		tx_free(tx);
	}
	while ((tx = srv->freelist)) {
		srv->freelist = tx->next;
		free(tx);
	}
	ev_timer_stop(srv->loop, &srv->drain_timer);
	ev_prepare_stop(srv->loop, &srv->flush_w);
	free(srv);
}

const struct spop_stats *spop_server_stats(const struct spop_server *srv)
{
	return &srv->stats;
}
