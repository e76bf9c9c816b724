/* store_redis.c -- token budgets in Redis. The contract, the key layout and
 * the failure policy are in store_redis.h; the scripts in store_redis_lua.h.
 *
 * Shape. One hiredis async connection on the agent's loop carries every
 * call, pipelined. The scripted calls (admit, settle, release, replay) one
 * loop iteration makes go at its end in ONE command, the batch script
 * (store_redis_lua.h), which runs each as its own script would, in order;
 * a call made alone goes as its own EVALSHA, and the others (GET, SET,
 * INCRBY, PING) go at once: one round trip an iteration, not a request.
 * A call (struct call) has two halves that end separately: its ANSWER
 * (the caller's callback, exactly once: reply, deadline, failure or close)
 * and its REPLY (hiredis cannot cancel a command, it always calls back,
 * with NULL when the connection goes). `answered` and `pending` track them;
 * call_done() frees the call when both are over, so a deadline never frees
 * memory hiredis still points to.
 *
 * Around the connection: a reconnect timer (backoff), a connect timeout
 * (hiredis 0.14 has none), the breaker and its cooldown timer, the replay
 * queue (usage that must still reach Redis), and the table of local
 * admissions (rid -> quota buckets) so their settlement goes to the local
 * store and their quota charge to the queue. A 1 s tick forgets old local
 * rids and restarts a stalled replay.
 *
 * Dropping the connection is always deferred to its own timer: hiredis
 * answers every pending command synchronously while it frees a context, and
 * doing that from inside a call's own failure path would free the call
 * under our feet.
 *
 * Connection trouble. A connection counts as good only once Redis has
 * answered something on it without an error: a TCP connect alone proves
 * nothing (a Redis in protected mode, or one wanting a password, accepts and
 * then refuses). So the backoff (BACKOFF_MIN doubling to BACKOFF_MAX) is
 * reset by the first good reply of a connection, not by its connect. A
 * connection whose setup Redis refuses for who we are (NOAUTH, WRONGPASS,
 * DENIED) is dropped and tried again later, with AUTH again, as a lost one
 * is. Each attempt reports at most one failure, and the reports go through a
 * small table (struct errlog): a message is logged when first seen, its
 * repeats within LOG_INTERVAL are counted, not logged, and the next line
 * says how many there were; the first good reply logs the recovery with the
 * count of failed attempts. The refusals that an operator must act on carry
 * a one-line hint (auth_hint()).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include "buf.h"
#include "log.h"
#include "store_redis.h"
#include "store_redis_lua.h"

#define PREFIX          "tollgate:v1:"   /* the keys of layout version 1 */
#define WIN_PREFIX      "tollgate:v2:win:" /* rate windows: version 2 */
#define GRACE_MS        3600000     /* a reservation record outlives its lease this long */
#define DONE_MS         300000      /* settled markers: only tell a duplicate from an unknown */
#define MARKER_MS       3600000     /* replayed-charge markers: a replay applies once */
#define DEFAULT_TIMEOUT 50          /* ms */
#define BACKOFF_MIN     0.05        /* s, doubled per failed attempt... */
#define BACKOFF_MAX     2.0         /* ...up to this (reset by a good reply) */
#define CONNECT_TIMEOUT 1.0         /* s, at least (hiredis 0.14 has none) */
#define KNOWN_SLOTS     4096        /* quota balances remembered (a power of 2) */
#define SILENT_DROP     5.0         /* s without any reply + a failed probe: reconnect */
#define TICK            1.0         /* s */
#define LOG_INTERVAL    10.0        /* s: one line per distinct trouble per interval */
#define ERRLOG_SLOTS    4           /* distinct troubles remembered at once */
#define ERRMSG_MAX      200         /* a trouble's text, cut at its first sentence */
#define REPLAY_WINDOW   64          /* replayed items in flight */
#define REPLAY_TRIES    3           /* error replies before an item is dropped */
#define LOCAL_RIDS_MAX  1000000
#define AMOUNT_MAX      ((int64_t)1 << 40)  /* as store_mem.c */
#define LIMIT_MAX       ((int64_t)1 << 50)  /* exact in Lua's doubles, sums included */
#define WEIGHT_MAX      1e6
#define RID_MAX         64          /* as store.h's rid[] */
#define ARGS_MAX        (11 + 8 * STORE_MAX_BUCKETS)
#define ARGS_BUF        (16 * 1024)
#define BATCH_MAX       64          /* calls in one batch script call */

/* ------------------------------------------------------------------ types */

/* The batch script runs the three others (store_redis_lua.h): its text is
 * put together at open (batch_script()), and the ids are its `fns` indices
 * less one. */
enum script_id { SCRIPT_ADMIT, SCRIPT_SETTLE, SCRIPT_CHARGE, SCRIPT_BATCH, SCRIPT_N };

static const struct { const char *name, *text; size_t len; } script_src[SCRIPT_BATCH] = {
	{ "admit", STORE_REDIS_LUA_ADMIT, sizeof(STORE_REDIS_LUA_ADMIT) - 1 },
	{ "settle", STORE_REDIS_LUA_SETTLE, sizeof(STORE_REDIS_LUA_SETTLE) - 1 },
	{ "charge", STORE_REDIS_LUA_CHARGE, sizeof(STORE_REDIS_LUA_CHARGE) - 1 },
};

struct rstore;

struct script {
	struct rstore *s;
	enum script_id id;
	char sha[41];                /* "" until Redis has loaded it: EVAL until then */
};

enum call_kind {
	CALL_ADMIT, CALL_SETTLE, CALL_QGET, CALL_QSET, CALL_QADD,
	CALL_RELEASE,                /* settle(rid, 0, 0) of a late "admitted" */
	CALL_REPLAY,                 /* a queued settlement or quota charge */
	CALL_PROBE,                  /* the half-open breaker's PING */
};

enum fail_kind {
	FAIL_TIMEOUT,                /* past the deadline */
	FAIL_CONN,                   /* no connection, or lost with the command */
	FAIL_SERVICE,                /* Redis refused service (LOADING, NOAUTH, OOM...) */
	FAIL_REPLY,                  /* this call only (script error, bad value) */
};

struct replay_item {
	struct replay_item *next;
	bool charge;                 /* a quota charge, else a settlement */
	unsigned tries;
	unsigned idx;                /* charge: the bucket's index (marker key) */
	int64_t in, out;             /* settlement */
	int64_t amount;              /* charge */
	char rid[64];
	char key[STORE_KEY_MAX];     /* charge: the quota balance */
};

struct call {
	struct rstore *s;
	enum call_kind kind;
	unsigned pending;            /* hiredis replies still to come */
	bool answered;               /* the caller has had its answer */
	bool retried;                /* NOSCRIPT recovery done */
	ev_timer deadline;
	ev_tstamp t0;
	union {
		store_admit_cb admit;
		store_settle_cb settle;
		store_quota_cb quota;
	} cb;
	void *arg;
	struct store_admit_req *req; /* CALL_ADMIT: the caller's request, copied */
	struct replay_item *item;    /* CALL_REPLAY */
	int64_t in, out, value;
	char rid[64];
	char key[STORE_KEY_MAX];
};

/* A trouble already logged: repeats within LOG_INTERVAL are only counted. */
struct errlog {
	char msg[ERRMSG_MAX];        /* "" : a free slot */
	char where[80];              /* host:port it was about */
	ev_tstamp logged_at;
	unsigned repeats;            /* seen since logged_at, not logged */
};

/* A request admitted by the local store: its settlement goes there, and the
 * quota it could not check is charged to Redis later. */
struct local_quota {
	char key[STORE_KEY_MAX];
	int64_t estimate;
	double w_in, w_out;
};

/* What Redis last said a quota balance has left (balance - reserved, from an
 * admission's answer or a quota call), less the estimates this instance
 * admitted locally since: failure_mode local refuses a quota it knows spent
 * instead of admitting it unchecked. Direct-mapped (KNOWN_SLOTS): a key
 * whose slot another key took is unknown again, and admitted unchecked. */
struct known_quota {
	char key[STORE_KEY_MAX];
	int64_t remaining;
};

struct local_rid {
	struct local_rid *next;      /* hash chain */
	ev_tstamp forget_at;
	bool reserved;               /* the local store holds a reservation */
	bool settled;
	bool queued;                 /* not a local admission: a Redis reservation whose
	                                settlement waits in the replay queue */
	unsigned nq;
	char rid[64];
	struct local_quota q[];
};

struct rstore {
	struct store pub;            /* what callers hold: pub.impl == this */
	struct ev_loop *loop;
	char *host, *username, *password;
	uint16_t port;
	int db;
	double timeout;              /* s */
	enum tg_failure_mode mode;
	unsigned threshold;
	double cooldown;             /* s */
	struct store *local;
	double share;
	int64_t test_now;            /* < 0: Redis TIME */
	bool closing;

	/* Sentinel: the master's address (host, port) is asked of them at each
	 * connection attempt, one after the other, the last one that answered
	 * first. n_sentinels 0: host and port are Redis. */
	char *master_name;
	unsigned n_sentinels, sentinel_i, sentinel_tried;
	struct { char *host; uint16_t port; } sentinels[TG_SENTINELS_MAX];
	redisAsyncContext *sac;      /* the query in flight */
	char sentinel_err[ERRMSG_MAX];

	redisAsyncContext *ac;       /* NULL: disconnected (reconnect timer runs) */
	bool connected;              /* ac finished connecting */
	bool healthy;                /* Redis answered on ac without an error */
	bool attempt_failed;         /* this attempt's failure was reported */
	bool attempted;              /* a first attempt was made (the next ones count) */
	unsigned failed_attempts;    /* since the last healthy connection */
	ev_tstamp trouble_since;
	char drop_why[ERRMSG_MAX];   /* why the drop timer runs ("": no answer) */
	struct errlog errlog[ERRLOG_SLOTS];
	double backoff;
	ev_tstamp last_reply;
	ev_timer reconnect, connect_timeout, drop;
	struct script scripts[SCRIPT_N];

	enum store_redis_breaker breaker;
	unsigned fails;              /* consecutive, while closed */
	ev_tstamp opened_at;
	ev_timer cooldown_timer;

	struct replay_item *q_head, *q_tail;
	size_t q_len;
	unsigned replay_inflight;

	struct local_rid **rids;
	size_t rids_cap, rids_len;
	struct known_quota **known;  /* KNOWN_SLOTS of them */

	ev_timer tick;
	struct store_redis_stats st;

	/* scripted calls made during this loop iteration: sent at its end, in
	 * one batch script call (or alone, when only one was made) */
	char *batch_text;
	size_t batch_len;
	struct call **wait;
	unsigned n_wait, cap_wait;
	ev_prepare flush;
};

static void call_done(struct call *c);
static void call_fail(struct call *c, enum fail_kind why);
static int call_start(struct call *c);
static void replay_kick(struct rstore *s);
static void breaker_probe(struct rstore *s);
static void conn_start(struct rstore *s);

/* -------------------------------------------------------------- helpers */

static int64_t clamp(int64_t v, int64_t hi)
{
	return v < 0 ? 0 : v > hi ? hi : v;
}

static double clamp_weight(double w)
{
	return !(w > 0) ? 0 : w > WEIGHT_MAX ? WEIGHT_MAX : w;
}

/* ceil(in * w_in + out * w_out), never negative; as store_mem.c and the
 * settle script (a product a hair above an integer is that integer). */
static int64_t settle_amount(int64_t in, int64_t out, double w_in, double w_out)
{
	double a = ceil((double)in * w_in + (double)out * w_out - 1e-6);

	if (!(a > 0))
		return 0;
	return a >= (double)AMOUNT_MAX ? AMOUNT_MAX : (int64_t)a;
}

static bool str_ok(const char *s, size_t max)
{
	size_t n = strnlen(s, max);

	return n > 0 && n < max;
}

static bool admit_valid(const struct store_admit_req *req)
{
	if (req->n > STORE_MAX_BUCKETS || !str_ok(req->rid, sizeof(req->rid)))
		return false;
	for (unsigned i = 0; i < req->n; i++)
		if (!str_ok(req->b[i].key, STORE_KEY_MAX) || req->b[i].window_ms < 0)
			return false;
	return true;
}

static const char *mode_name(enum tg_failure_mode m)
{
	return m == TG_FAIL_OPEN ? "open" : m == TG_FAIL_CLOSED ? "closed" : "local";
}

/* Does the error reply msg carry this code ("NOAUTH Authentication ...")? */
static bool has_code(const char *msg, const char *code)
{
	size_t n = strlen(code);

	return strncmp(msg, code, n) == 0 && (msg[n] == ' ' || msg[n] == 0);
}

/* Error replies that say Redis cannot serve anyone right now (they count
 * toward the breaker); any other error concerns one call only. */
static bool service_error(const char *msg)
{
	static const char *const codes[] = {
		"LOADING", "BUSY", "NOAUTH", "WRONGPASS", "DENIED", "NOPERM", "MASTERDOWN",
		"READONLY", "OOM", "MISCONF", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS",
	};

	for (size_t i = 0; i < sizeof(codes) / sizeof(*codes); i++)
		if (has_code(msg, codes[i]))
			return true;
	return false;
}

/* ------------------------------------------------------- command builder */

/* A command's arguments; numbers and derived keys live in `buf`, so the
 * whole thing sits on the stack until hiredis has formatted it. */
struct args {
	int argc;
	unsigned nkeys;             /* a script's key count (script_args()) */
	bool overflow;
	const char *argv[ARGS_MAX];
	size_t len[ARGS_MAX];
	size_t used;
	char buf[ARGS_BUF];
};

static void args_raw(struct args *a, const char *p, size_t len)
{
	if (a->argc == ARGS_MAX) {
		a->overflow = true;
		return;
	}
	a->argv[a->argc] = p;
	a->len[a->argc++] = len;
}

static void args_str(struct args *a, const char *p)
{
	args_raw(a, p, strlen(p));
}

static void args_fmt(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void args_fmt(struct args *a, const char *fmt, ...)
{
	size_t room = sizeof(a->buf) - a->used;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(a->buf + a->used, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room) {
		a->overflow = true;
		return;
	}
	args_raw(a, a->buf + a->used, (size_t)n);
	a->used += (size_t)n + 1;
}

/* v in decimal, as "%lld" writes it, at the end of t (no NUL): its first
 * digit (or '-'), *n its length. Built from the last digit backwards: no
 * printf on the path every admission and settlement takes. */
static const char *int_text(char t[24], long long v, size_t *n)
{
	char *p = t + 24;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

	do
		*--p = (char)('0' + u % 10);
	while (u /= 10);
	if (v < 0)
		*--p = '-';
	*n = (size_t)(t + 24 - p);
	return p;
}

/* One argument: the two pieces end to end, copied into a->buf. */
static void args_copy(struct args *a, const char *p1, size_t n1, const char *p2, size_t n2)
{
	if (n1 + n2 >= sizeof(a->buf) - a->used) {
		a->overflow = true;
		return;
	}
	memcpy(a->buf + a->used, p1, n1);
	memcpy(a->buf + a->used + n1, p2, n2);
	a->buf[a->used + n1 + n2] = '\0';
	args_raw(a, a->buf + a->used, n1 + n2);
	a->used += n1 + n2 + 1;
}

static void args_int(struct args *a, long long v)
{
	char t[24];
	size_t n;
	const char *p = int_text(t, v, &n);

	args_copy(a, p, n, "", 0);
}

/* prefix then str, as "prefix%s" would */
static void args_cat(struct args *a, const char *prefix, const char *str)
{
	args_copy(a, prefix, strlen(prefix), str, strlen(str));
}

/* a weight as "%.17g" writes it; a whole one (1, the usual) as an integer,
 * which is the same text */
static void args_weight(struct args *a, double w)
{
	if (w > -1e15 && w < 1e15 && w == (double)(long long)w)
		args_int(a, (long long)w);
	else
		args_fmt(a, "%.17g", w);
}

static const char *script_name(enum script_id id)
{
	return id == SCRIPT_BATCH ? "batch" : script_src[id].name;
}

static const char *script_text(const struct rstore *s, enum script_id id, size_t *len)
{
	if (id == SCRIPT_BATCH) {
		*len = s->batch_len;
		return s->batch_text;
	}
	*len = script_src[id].len;
	return script_src[id].text;
}

/* EVALSHA when Redis has the script, EVAL (which loads it) until then. */
static void script_cmd(const struct rstore *s, enum script_id id, const char **argv, size_t *len)
{
	const struct script *sc = &s->scripts[id];

	if (sc->sha[0]) {
		argv[0] = "EVALSHA";
		len[0] = 7;
		argv[1] = sc->sha;
		len[1] = 40;
	} else {
		argv[0] = "EVAL";
		len[0] = 4;
		argv[1] = script_text(s, id, &len[1]);
	}
}

static void script_args(struct args *a, unsigned nkeys)
{
	a->argc = 2;
	a->overflow = false;
	a->used = 0;
	a->nkeys = nkeys;
	args_int(a, nkeys);
}

/* ------------------------------------------------------------ call sending */

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);

/* Send c's command; its reply goes to on_reply() (`pending` is the
 * caller's to count). */
static int send_argv(struct call *c, struct args *a)
{
	struct rstore *s = c->s;

	if (a->overflow) {
		log_error("redis store: command too large (%s)",
		          c->req ? c->req->rid : c->key[0] ? c->key : c->rid);
		return -1;
	}
	if (!s->ac || redisAsyncCommandArgv(s->ac, on_reply, c, a->argc, a->argv, a->len) != REDIS_OK)
		return -1;
	s->st.sent++;
	return 0;
}

static int send_args(struct call *c, struct args *a)
{
	if (send_argv(c, a) != 0)
		return -1;
	c->pending++;
	return 0;
}

/* A scripted call's command, but for its first two words (script_cmd()):
 * the key count, the keys, the arguments. */
static void build_admit(const struct call *c, struct args *a)
{
	const struct store_admit_req *req = c->req;
	const struct rstore *s = c->s;

	script_args(a, 2 + 2 * req->n);
	args_cat(a, PREFIX "res:", req->rid);
	args_cat(a, PREFIX "done:", req->rid);
	for (unsigned i = 0; i < req->n; i++) {
		const struct store_bucket *b = &req->b[i];

		if (b->window_ms > 0)
			args_cat(a, WIN_PREFIX, b->key);
		else
			args_str(a, b->key);
		args_cat(a, PREFIX "inf:", b->key);
	}
	args_str(a, req->rid);
	args_int(a, req->lease_ms > 0 ? req->lease_ms : 1);
	args_str(a, req->strict ? "1" : "0");
	args_int(a, req->n);
	args_int(a, s->test_now);
	args_int(a, GRACE_MS);
	for (unsigned i = 0; i < req->n; i++) {
		const struct store_bucket *b = &req->b[i];

		args_str(a, b->key);
		args_int(a, b->window_ms);
		args_int(a, clamp(b->limit, LIMIT_MAX));
		args_int(a, clamp(b->estimate, AMOUNT_MAX));
		args_weight(a, clamp_weight(b->w_in));
		args_weight(a, clamp_weight(b->w_out));
	}
}

static void build_settle(const struct call *c, struct args *a)
{
	script_args(a, 2);
	args_cat(a, PREFIX "res:", c->rid);
	args_cat(a, PREFIX "done:", c->rid);
	args_str(a, c->rid);
	args_int(a, c->in);
	args_int(a, c->out);
	args_int(a, c->s->test_now);
	args_int(a, DONE_MS);
}

static void build_charge(const struct call *c, struct args *a)
{
	script_args(a, 2);
	args_str(a, c->item->key);
	args_fmt(a, PREFIX "chg:%s:%u", c->item->rid, c->item->idx);
	args_int(a, c->item->amount);
	args_int(a, MARKER_MS);
}

static int send_plain(struct call *c)
{
	struct args a;

	a.argc = 0;
	a.overflow = false;
	a.used = 0;
	switch (c->kind) {
	case CALL_QGET:
		args_str(&a, "GET");
		args_str(&a, c->key);
		break;
	case CALL_QSET:
	case CALL_QADD:
		args_str(&a, c->kind == CALL_QSET ? "SET" : "INCRBY");
		args_str(&a, c->key);
		args_int(&a, c->value);
		break;
	default:
		args_str(&a, "PING");
		break;
	}
	return send_args(c, &a);
}

static enum script_id call_script(const struct call *c)
{
	if (c->kind == CALL_ADMIT)
		return SCRIPT_ADMIT;
	if (c->kind == CALL_REPLAY && c->item->charge)
		return SCRIPT_CHARGE;
	return SCRIPT_SETTLE;
}

static enum script_id build_call(const struct call *c, struct args *a)
{
	enum script_id id = call_script(c);

	if (id == SCRIPT_ADMIT)
		build_admit(c, a);
	else if (id == SCRIPT_CHARGE)
		build_charge(c, a);
	else
		build_settle(c, a);
	return id;
}

/* --------------------------------------------------------------- batching
 *
 * A scripted call (admit, settle, release, replay) waits in s->wait until
 * the end of the loop iteration that made it (an ev_prepare: it runs when
 * every callback of the iteration has), where the iteration's calls go in
 * one batch script call (BATCH_MAX at most; one alone goes as itself). A
 * waiting call counts in `pending` as a sent one does: what answers it
 * meanwhile (its deadline, a close) cannot free it. Each call keeps its own
 * deadline and answer; the batch's reply is split, element i to call i, and
 * each goes the way its own reply would (reply_one()). */

struct batch {
	struct rstore *s;
	unsigned n;
	struct call *c[];
};

/* A growing array of (offset, length) strings in one buffer. */
struct strs {
	struct buf text;        /* the strings, end to end; text.oom: any failure */
	size_t *off, *len;      /* string i is text.data[off[i] .. off[i] + len[i]) */
	unsigned n, cap_n;
};

static void strs_push(struct strs *v, const char *p, size_t len)
{
	if (v->text.oom)
		return;
	if (v->n == v->cap_n) {
		unsigned cap = v->cap_n ? 2 * v->cap_n : 256;
		size_t *off = realloc(v->off, cap * sizeof(*off));
		size_t *ln = off ? realloc(v->len, cap * sizeof(*ln)) : NULL;

		if (off)
			v->off = off;
		if (!ln) {
			v->text.oom = true;
			return;
		}
		v->len = ln;
		v->cap_n = cap;
	}
	v->off[v->n] = v->text.len;
	if (buf_put(&v->text, p, len) == 0)
		v->len[v->n++] = len;
}

static void strs_num(struct strs *v, long long x)
{
	char t[24];
	size_t n;
	const char *p = int_text(t, x, &n);

	strs_push(v, p, n);
}

static void strs_free(struct strs *v)
{
	buf_free(&v->text);
	free(v->off);
	free(v->len);
}

static void on_batch_reply(redisAsyncContext *ac, void *r, void *privdata);
static void reply_one(struct call *c, redisReply *r);

/* One call alone, as its own script (its `pending` counted already). */
static int send_one(struct call *c)
{
	struct rstore *s = c->s;
	struct args a;
	enum script_id id = build_call(c, &a);

	script_cmd(s, id, a.argv, a.len);
	return send_argv(c, &a);
}

/* n > 1 calls in one batch script call. */
static int send_batch(struct rstore *s, struct call **calls, unsigned n)
{
	struct strs keys = { 0 }, args = { 0 };
	struct batch *b = malloc(sizeof(*b) + n * sizeof(*b->c));
	const char **argv = NULL;
	size_t *len = NULL;
	unsigned argc = 0;
	int rc = -1;
	struct args a;

	if (!b)
		return -1;
	strs_num(&args, n);
	for (unsigned i = 0; i < n; i++) {
		enum script_id id = build_call(calls[i], &a);
		unsigned nk = a.nkeys;

		if (a.overflow || 3 + nk > (unsigned)a.argc)
			goto out;
		strs_num(&args, id + 1);
		strs_num(&args, nk);
		strs_num(&args, a.argc - 3 - nk);
		for (int j = 3; j < a.argc; j++)
			strs_push((unsigned)j < 3 + nk ? &keys : &args, a.argv[j], a.len[j]);
	}
	if (keys.text.oom || args.text.oom ||
	    !(argv = malloc((4 + keys.n + args.n) * sizeof(*argv))) ||
	    !(len = malloc((4 + keys.n + args.n) * sizeof(*len))))
		goto out;
	script_cmd(s, SCRIPT_BATCH, argv, len);
	argc = 2;
	{
		char nk[24];

		argv[argc] = int_text(nk, keys.n, &len[argc]);
		argc++;
		for (unsigned i = 0; i < keys.n; i++, argc++) {
			argv[argc] = keys.text.data + keys.off[i];
			len[argc] = keys.len[i];
		}
		for (unsigned i = 0; i < args.n; i++, argc++) {
			argv[argc] = args.text.data + args.off[i];
			len[argc] = args.len[i];
		}
		b->s = s;
		b->n = n;
		memcpy(b->c, calls, n * sizeof(*calls));
		if (s->ac && redisAsyncCommandArgv(s->ac, on_batch_reply, b, (int)argc, argv, len) == REDIS_OK) {
			s->st.sent++;
			s->st.batches++;
			s->st.batched += n;
			b = NULL;
			rc = 0;
		}
	}
out:
	free(b);
	free(argv);
	free(len);
	strs_free(&keys);
	strs_free(&args);
	return rc;
}

static void on_flush(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct rstore *s = w->data;

	(void)revents;
	/* a call failed here may make another: the loop takes it too */
	while (s->n_wait) {
		struct call **calls = s->wait;
		unsigned n = s->n_wait;

		s->wait = NULL;
		s->n_wait = s->cap_wait = 0;
		for (unsigned i = 0; i < n; i += BATCH_MAX) {
			unsigned k = n - i < BATCH_MAX ? n - i : BATCH_MAX;

			if (k > 1 && send_batch(s, calls + i, k) == 0)
				continue;
			/* alone, or a batch that could not be made (no memory, a
			 * call too large): each call on its own, as before batches */
			for (unsigned j = i; j < i + k; j++)
				if (send_one(calls[j]) != 0)
					reply_one(calls[j], NULL);
		}
		free(calls);
	}
	ev_prepare_stop(loop, w);
}

/* Fail the calls still waiting (the store closes). */
static void batch_drop(struct rstore *s)
{
	ev_prepare_stop(s->loop, &s->flush);
	while (s->n_wait)
		reply_one(s->wait[--s->n_wait], NULL);
	free(s->wait);
	s->wait = NULL;
	s->cap_wait = 0;
}

static int batch_add(struct call *c)
{
	struct rstore *s = c->s;

	if (!s->ac || s->closing)
		return -1;
	if (s->n_wait == s->cap_wait) {
		unsigned cap = s->cap_wait ? 2 * s->cap_wait : 64;
		struct call **w = realloc(s->wait, cap * sizeof(*w));

		if (!w) {
			c->pending++;
			if (send_one(c) == 0)
				return 0;
			c->pending--;
			return -1;
		}
		s->wait = w;
		s->cap_wait = cap;
	}
	s->wait[s->n_wait++] = c;
	c->pending++;
	ev_prepare_start(s->loop, &s->flush);
	return 0;
}

static int call_send(struct call *c)
{
	switch (c->kind) {
	case CALL_ADMIT:
	case CALL_SETTLE:
	case CALL_RELEASE:
	case CALL_REPLAY:
		return batch_add(c);
	default:
		return send_plain(c);
	}
}

/* --------------------------------------------------------------- breaker */

static void breaker_open(struct rstore *s)
{
	s->breaker = STORE_REDIS_OPEN;
	s->fails = 0;
	s->opened_at = ev_now(s->loop);
	s->st.breaker_opens++;
	ev_timer_stop(s->loop, &s->cooldown_timer);
	ev_timer_set(&s->cooldown_timer, s->cooldown, s->cooldown);
	ev_timer_start(s->loop, &s->cooldown_timer);
}

static void breaker_close(struct rstore *s)
{
	if (s->breaker != STORE_REDIS_CLOSED)
		log_info("redis store: circuit breaker closed, Redis serves again");
	s->breaker = STORE_REDIS_CLOSED;
	s->fails = 0;
	ev_timer_stop(s->loop, &s->cooldown_timer);
	replay_kick(s);
}

/* A failure of a call sent (or refused) while the breaker was closed. */
static void breaker_failure(struct rstore *s)
{
	if (s->breaker != STORE_REDIS_CLOSED || ++s->fails < s->threshold)
		return;
	log_warn("redis store: circuit breaker open after %u consecutive failures; "
	         "failure_mode %s for %.0f ms", s->threshold, mode_name(s->mode),
	         s->cooldown * 1000);
	breaker_open(s);
}

static void on_cooldown(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct rstore *s = w->data;

	(void)loop; (void)revents;
	if (s->breaker == STORE_REDIS_OPEN && s->connected)
		breaker_probe(s);
}

static void breaker_probe(struct rstore *s)
{
	struct call *c = calloc(1, sizeof(*c));

	if (!c)
		return;
	c->s = s;
	c->kind = CALL_PROBE;
	s->breaker = STORE_REDIS_HALF_OPEN;
	if (call_start(c) != 0)
		s->breaker = STORE_REDIS_OPEN;
}

/* May a call go to Redis now? */
static bool usable(const struct rstore *s)
{
	return s->ac && s->breaker == STORE_REDIS_CLOSED;
}

/* A call that will not be sent: counted, and fed to the closed breaker
 * (a lost connection must open it even when nothing is in flight). */
static void reject(struct rstore *s)
{
	s->st.rejected++;
	if (!s->ac)
		breaker_failure(s);
}

/* ------------------------------------------------------------ connection */

static void conn_retry(struct rstore *s)
{
	s->connected = false;
	if (s->closing)
		return;
	ev_timer_stop(s->loop, &s->connect_timeout);
	ev_timer_stop(s->loop, &s->reconnect);
	ev_timer_set(&s->reconnect, s->backoff, 0.);
	ev_timer_start(s->loop, &s->reconnect);
	s->backoff = s->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : s->backoff * 2;
}

/* What an operator should do about a refusal of who we are, or "". */
static const char *auth_hint(const char *msg)
{
	static const struct { const char *code, *hint; } hints[] = {
		{ "NOAUTH", "Redis wants a password: give it in store.redis "
		  "(redis://:PASSWORD@host:port, redis://USER:PASSWORD@host:port for an "
		  "ACL user) or in the plugin's redis block (password, username)" },
		{ "WRONGPASS", "Redis refuses this user and password: check the password (and "
		  "ACL user) in store.redis or the plugin's redis block against Redis's "
		  "requirepass or ACL LIST" },
		{ "DENIED", "Redis is in protected mode and accepts only local clients: set a "
		  "password (requirepass, or an ACL user) and give it in store.redis, "
		  "or configure Redis's bind and protected-mode" },
		{ "NOPERM", "the ACL user lacks a permission: it needs EVAL, EVALSHA, SCRIPT, "
		  "GET, SET, INCRBY, PING and the budget keys (e.g. +@all ~*)" },
		{ "READONLY", "this address is a replica: point store.redis at the primary, "
		  "or name the sentinels (redis-sentinel://HOST:PORT,.../MASTER)" },
	};

	for (size_t i = 0; i < sizeof(hints) / sizeof(*hints); i++)
		if (has_code(msg, hints[i].code))
			return hints[i].hint;
	return "";
}

/* Refusals that no command on this connection can get past: drop it and
 * connect again (AUTH again; with Sentinel, asking for the master again)
 * with backoff. READONLY: the address is a replica (a failover happened). */
static bool refuses_connection(const char *msg)
{
	return has_code(msg, "NOAUTH") || has_code(msg, "WRONGPASS") || has_code(msg, "DENIED") ||
	       has_code(msg, "READONLY");
}

/* msg, cut at the end of its first sentence when it is long (the protected
 * mode text is a page), into out[ERRMSG_MAX]. */
static void trouble_text(char *out, const char *msg)
{
	const char *dot = strstr(msg, ". ");
	size_t n = strlen(msg);

	if (n > 120 && dot)
		n = (size_t)(dot - msg) + 1;
	if (n >= ERRMSG_MAX)
		n = ERRMSG_MAX - 1;
	memcpy(out, msg, n);
	out[n] = 0;
}

static void repeated(char *out, size_t len, unsigned n, double secs)
{
	if (n == 1)
		snprintf(out, len, " (repeated once in the last %.0fs)", secs);
	else
		snprintf(out, len, " (repeated %u times in the last %.0fs)", n, secs);
}

/* Log a trouble once per LOG_INTERVAL; its repeats in between are counted
 * and said on its next line. */
static void errlog_report(struct rstore *s, enum log_level lvl, const char *what, const char *msg)
{
	ev_tstamp now = ev_now(s->loop);
	struct errlog *e = NULL, *oldest = &s->errlog[0];
	char text[ERRMSG_MAX], rep[96] = "", where[80];
	const char *hint;

	trouble_text(text, msg);
	snprintf(where, sizeof(where), "%s:%u", s->host, s->port);
	for (int i = 0; i < ERRLOG_SLOTS && !e; i++) {
		if (s->errlog[i].msg[0] && strcmp(s->errlog[i].msg, text) == 0 &&
		    strcmp(s->errlog[i].where, where) == 0)
			e = &s->errlog[i];
		else if (!s->errlog[i].msg[0] || s->errlog[i].logged_at < oldest->logged_at)
			oldest = &s->errlog[i];
	}
	if (e && now - e->logged_at < LOG_INTERVAL) {
		e->repeats++;
		return;
	}
	if (e)
		repeated(rep, sizeof(rep), e->repeats + 1, now - e->logged_at);
	else
		e = oldest;
	snprintf(e->msg, sizeof(e->msg), "%s", text);
	snprintf(e->where, sizeof(e->where), "%s", where);
	e->logged_at = now;
	e->repeats = 0;
	hint = auth_hint(text);
	log_msg(lvl, "redis store: %s %s: %s%s%s%s", where, what, text, rep,
	        hint[0] ? " -- " : "", hint);
}

/* Repeats not said yet are said now (the trouble is over), and forgotten. */
static void errlog_flush(struct rstore *s)
{
	ev_tstamp now = ev_now(s->loop);
	char rep[96];

	for (int i = 0; i < ERRLOG_SLOTS; i++) {
		struct errlog *e = &s->errlog[i];

		if (e->msg[0] && e->repeats) {
			repeated(rep, sizeof(rep), e->repeats, now - e->logged_at);
			log_warn("redis store: %s: %s%s", e->where, e->msg, rep);
		}
		e->msg[0] = 0;
		e->repeats = 0;
	}
}

/* This connection attempt failed (at most one report per attempt). */
static void conn_down(struct rstore *s, const char *why)
{
	if (s->attempt_failed)
		return;
	s->attempt_failed = true;
	if (!s->failed_attempts++)
		s->trouble_since = ev_now(s->loop);
	errlog_report(s, LOG_WARN, "unavailable, retrying", why);
}

/* Redis answered on this connection without an error: it is good, the
 * backoff starts over, and a trouble before it is over. */
static void conn_good(struct rstore *s)
{
	if (s->healthy || !s->ac)
		return;
	s->healthy = true;
	s->backoff = BACKOFF_MIN;
	errlog_flush(s);
	if (s->failed_attempts)
		log_info("redis store: connected to %s:%u after %u failed attempt%s in %.1fs",
		         s->host, s->port, s->failed_attempts, s->failed_attempts > 1 ? "s" : "",
		         ev_now(s->loop) - s->trouble_since);
	else
		log_info("redis store: connected to %s:%u", s->host, s->port);
	s->failed_attempts = 0;
}

/* Redis refused who we are on this connection: report it, and drop it from
 * our own timer (never under hiredis's feet). */
static void conn_refused(struct rstore *s, const char *msg)
{
	if (s->drop_why[0] || !s->ac)
		return;
	trouble_text(s->drop_why, msg);
	conn_down(s, msg);
	ev_timer_stop(s->loop, &s->drop);
	ev_timer_set(&s->drop, 0., 0.);
	ev_timer_start(s->loop, &s->drop);
}

/* A reply to a setup command (AUTH, SELECT, SCRIPT LOAD). */
static void setup_reply(struct rstore *s, const redisAsyncContext *ac, const redisReply *r,
                        const char *what)
{
	if (!r || s->ac != ac)
		return;
	if (r->type != REDIS_REPLY_ERROR) {
		conn_good(s);
	} else if (refuses_connection(r->str)) {
		conn_refused(s, r->str);
	} else {
		char msg[ERRMSG_MAX + 32];

		snprintf(msg, sizeof(msg), "%s failed: %s", what, r->str);
		errlog_report(s, LOG_ERROR, "refused a setup command", msg);
	}
}

static const char *errstr(const redisAsyncContext *ac, const char *dflt)
{
	return ac->errstr && ac->errstr[0] ? ac->errstr : dflt;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
	struct rstore *s = ac->data;

	if (s->ac != ac)
		return;
	ev_timer_stop(s->loop, &s->connect_timeout);
	if (status != REDIS_OK) {
		conn_down(s, errstr(ac, "connect failed"));
		s->ac = NULL;           /* hiredis frees it after this callback */
		conn_retry(s);
		return;
	}
	s->connected = true;
	s->last_reply = ev_now(s->loop);
	s->st.connects++;
	log_debug("redis store: TCP connection to %s:%u established", s->host, s->port);
	if (s->breaker == STORE_REDIS_CLOSED)
		replay_kick(s);
	else if (s->breaker == STORE_REDIS_OPEN && ev_now(s->loop) - s->opened_at >= s->cooldown)
		breaker_probe(s);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
	struct rstore *s = ac->data;

	(void)status;
	if (s->ac != ac)
		return;                 /* we dropped it ourselves */
	s->ac = NULL;
	conn_down(s, s->drop_why[0] ? s->drop_why : errstr(ac, "connection closed"));
	s->drop_why[0] = 0;
	ev_timer_stop(s->loop, &s->drop);
	conn_retry(s);
}

/* Free the connection now: hiredis answers every pending command with NULL.
 * Only from a timer of our own (never inside a call's failure path). */
static void conn_drop(struct rstore *s)
{
	redisAsyncContext *ac = s->ac;

	if (!ac)
		return;
	s->ac = NULL;
	s->connected = false;
	redisAsyncFree(ac);
	conn_retry(s);
}

static void on_drop(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct rstore *s = w->data;

	(void)loop; (void)revents;
	conn_down(s, s->drop_why[0] ? s->drop_why : "no answer");
	s->drop_why[0] = 0;
	conn_drop(s);
}

static void connect_timer(struct rstore *s)
{
	ev_timer_stop(s->loop, &s->connect_timeout);
	ev_timer_set(&s->connect_timeout,
	             s->timeout * 20 > CONNECT_TIMEOUT ? s->timeout * 20 : CONNECT_TIMEOUT, 0.);
	ev_timer_start(s->loop, &s->connect_timeout);
}

/* ------------------------------------------------------------- sentinel */

static void sentinel_ask(struct rstore *s);
static void master_connect(struct rstore *s);

/* The sentinel asked did not name the master: ask the next one; when every
 * one has been asked, this attempt failed. */
static void sentinel_failed(struct rstore *s, const char *why)
{
	snprintf(s->sentinel_err, sizeof(s->sentinel_err), "sentinel %s:%u: %s",
	         s->sentinels[s->sentinel_i].host, s->sentinels[s->sentinel_i].port, why);
	s->sentinel_i = (s->sentinel_i + 1) % s->n_sentinels;
	if (++s->sentinel_tried < s->n_sentinels) {
		sentinel_ask(s);
		return;
	}
	{
		char msg[ERRMSG_MAX + 64];

		snprintf(msg, sizeof(msg), "no sentinel named master %s (last: %s)",
		         s->master_name, s->sentinel_err);
		conn_down(s, msg);
	}
	conn_retry(s);
}

/* SENTINEL get-master-addr-by-name: [ip, port], or nil (unknown master). */
static void on_sentinel_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	struct rstore *s = ac->data;
	redisReply *reply = r;
	char *host;
	long port;

	(void)privdata;
	if (s->sac != ac)
		return;
	s->sac = NULL;
	if (!reply) {
		sentinel_failed(s, errstr(ac, "connection closed"));
		return;
	}
	redisAsyncDisconnect(ac);    /* after this callback (hiredis defers it) */
	if (reply->type == REDIS_REPLY_ERROR) {
		sentinel_failed(s, reply->str);
		return;
	}
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
	    reply->element[0]->type != REDIS_REPLY_STRING ||
	    reply->element[1]->type != REDIS_REPLY_STRING ||
	    (port = strtol(reply->element[1]->str, NULL, 10)) <= 0 || port > 65535) {
		sentinel_failed(s, "does not know this master");
		return;
	}
	if (!(host = strdup(reply->element[0]->str))) {
		sentinel_failed(s, "out of memory");
		return;
	}
	if (strcmp(host, s->host) != 0 || s->port != (uint16_t)port)
		log_info("redis store: sentinel %s:%u names %s:%ld master %s",
		         s->sentinels[s->sentinel_i].host, s->sentinels[s->sentinel_i].port,
		         host, port, s->master_name);
	free(s->host);
	s->host = host;
	s->port = (uint16_t)port;
	ev_timer_stop(s->loop, &s->connect_timeout);
	master_connect(s);
}

static void on_sentinel_connect(const redisAsyncContext *ac, int status)
{
	struct rstore *s = ac->data;

	if (s->sac != ac || status == REDIS_OK)
		return;
	s->sac = NULL;              /* hiredis frees it after this callback */
	ev_timer_stop(s->loop, &s->connect_timeout);
	sentinel_failed(s, errstr(ac, "connect failed"));
}

static void on_sentinel_disconnect(const redisAsyncContext *ac, int status)
{
	struct rstore *s = ac->data;

	(void)status;
	if (s->sac != ac)
		return;                 /* answered, or dropped by us */
	s->sac = NULL;
	ev_timer_stop(s->loop, &s->connect_timeout);
	sentinel_failed(s, errstr(ac, "connection closed"));
}

static void sentinel_ask(struct rstore *s)
{
	const char *host = s->sentinels[s->sentinel_i].host;
	redisAsyncContext *sac = redisAsyncConnect(host, s->sentinels[s->sentinel_i].port);

	if (!sac || sac->err) {
		if (sac)
			redisAsyncFree(sac);
		sentinel_failed(s, sac ? "cannot connect" : "out of memory");
		return;
	}
	sac->data = s;
	if (redisLibevAttach(s->loop, sac) != REDIS_OK) {
		redisAsyncFree(sac);
		sentinel_failed(s, "cannot watch the connection");
		return;
	}
	redisAsyncSetConnectCallback(sac, on_sentinel_connect);
	redisAsyncSetDisconnectCallback(sac, on_sentinel_disconnect);
	s->sac = sac;
	redisAsyncCommand(sac, on_sentinel_reply, NULL, "SENTINEL get-master-addr-by-name %s",
	                  s->master_name);
	connect_timer(s);
}

/* ROLE on a connection to the master a sentinel named: still the master? */
static void on_role(redisAsyncContext *ac, void *r, void *privdata)
{
	struct rstore *s = ac->data;
	redisReply *reply = r;

	(void)privdata;
	if (!reply || s->ac != ac || reply->type == REDIS_REPLY_ERROR) {
		setup_reply(s, ac, reply, "ROLE");
		return;
	}
	if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
	    reply->element[0]->type == REDIS_REPLY_STRING &&
	    strcmp(reply->element[0]->str, "master") == 0) {
		conn_good(s);
		return;
	}
	conn_refused(s, "ROLE: not the master (a failover is under way): asking the sentinels again");
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct rstore *s = w->data;

	(void)loop; (void)revents;
	if (s->sac) {
		redisAsyncContext *sac = s->sac;

		s->sac = NULL;
		redisAsyncFree(sac);
		sentinel_failed(s, "no answer");
	} else if (s->ac && !s->connected) {
		conn_down(s, "connect timeout");
		conn_drop(s);
	}
}

static void on_reconnect(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop; (void)revents;
	conn_start(w->data);
}

static void on_setup(redisAsyncContext *ac, void *r, void *privdata)
{
	setup_reply(ac->data, ac, r, privdata);
}

static void on_loaded(redisAsyncContext *ac, void *r, void *privdata)
{
	struct script *sc = privdata;
	redisReply *reply = r;

	if (!reply)
		return;
	if (reply->type == REDIS_REPLY_STRING && reply->len == 40) {
		memcpy(sc->sha, reply->str, 40);
		sc->sha[40] = 0;
		log_debug("redis store: script %s v1 loaded as %s", script_name(sc->id), sc->sha);
	}
	setup_reply(sc->s, ac, reply, "SCRIPT LOAD");
}

static void send_script_load(struct rstore *s, enum script_id id)
{
	const char *argv[3] = { "SCRIPT", "LOAD", NULL };
	size_t len[3] = { 6, 4, 0 };

	argv[2] = script_text(s, id, &len[2]);

	if (s->ac)
		redisAsyncCommandArgv(s->ac, on_loaded, &s->scripts[id], 3, argv, len);
}

/* AUTH, SELECT and the scripts, queued before anything else on the
 * connection (hiredis writes them once it is connected). */
static void conn_setup(struct rstore *s)
{
	struct args a;

	a.argc = 0;
	a.overflow = false;
	a.used = 0;
	if (s->password) {
		args_str(&a, "AUTH");
		if (s->username)
			args_str(&a, s->username);
		args_str(&a, s->password);
		redisAsyncCommandArgv(s->ac, on_setup, "AUTH", a.argc, a.argv, a.len);
	}
	if (s->db) {
		a.argc = 0;
		args_str(&a, "SELECT");
		args_int(&a, s->db);
		redisAsyncCommandArgv(s->ac, on_setup, "SELECT", a.argc, a.argv, a.len);
	}
	if (s->n_sentinels)
		redisAsyncCommand(s->ac, on_role, NULL, "ROLE");
	for (int i = 0; i < SCRIPT_N; i++)
		send_script_load(s, (enum script_id)i);
}

/* Connect to s->host:s->port (Redis, or the master a sentinel named). */
static void master_connect(struct rstore *s)
{
	redisAsyncContext *ac = redisAsyncConnect(s->host, s->port);

	if (!ac || ac->err) {
		conn_down(s, ac ? ac->errstr : "out of memory");
		if (ac)
			redisAsyncFree(ac);
		conn_retry(s);
		return;
	}
	ac->data = s;
	s->healthy = false;
	s->attempt_failed = false;
	s->drop_why[0] = 0;
	if (redisLibevAttach(s->loop, ac) != REDIS_OK) {
		redisAsyncFree(ac);
		conn_retry(s);
		return;
	}
	redisEnableKeepAlive(&ac->c);
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	s->ac = ac;
	s->connected = false;
	conn_setup(s);
	connect_timer(s);
}

static void conn_start(struct rstore *s)
{
	if (s->attempted)
		s->st.reconnects++;
	s->attempted = true;
	s->attempt_failed = false;
	if (s->n_sentinels) {
		s->sentinel_tried = 0;
		s->sentinel_err[0] = 0;
		sentinel_ask(s);
	} else {
		master_connect(s);
	}
}

/* ------------------------------------------------------------ local rids */

static uint64_t rid_hash(const char *rid)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *rid; rid++)
		h = (h ^ (uint8_t)*rid) * 0x100000001b3ULL;
	return h;
}

static struct local_rid *rids_find(struct rstore *s, const char *rid)
{
	if (!s->rids_len)
		return NULL;
	for (struct local_rid *e = s->rids[rid_hash(rid) & (s->rids_cap - 1)]; e; e = e->next)
		if (strcmp(e->rid, rid) == 0)
			return e;
	return NULL;
}

static int rids_grow(struct rstore *s)
{
	size_t cap = s->rids_cap ? s->rids_cap * 2 : 256;
	struct local_rid **slot = calloc(cap, sizeof(*slot));

	if (!slot)
		return -1;
	for (size_t i = 0; i < s->rids_cap; i++) {
		for (struct local_rid *e = s->rids[i], *next; e; e = next) {
			size_t h = rid_hash(e->rid) & (cap - 1);

			next = e->next;
			e->next = slot[h];
			slot[h] = e;
		}
	}
	free(s->rids);
	s->rids = slot;
	s->rids_cap = cap;
	return 0;
}

static int rids_insert(struct rstore *s, struct local_rid *e)
{
	size_t h;

	if (s->rids_len >= LOCAL_RIDS_MAX ||
	    (s->rids_len >= s->rids_cap && rids_grow(s) < 0))
		return -1;
	h = rid_hash(e->rid) & (s->rids_cap - 1);
	e->next = s->rids[h];
	s->rids[h] = e;
	s->rids_len++;
	return 0;
}

static void rids_remove(struct rstore *s, const char *rid)
{
	struct local_rid **pp;

	if (!s->rids_len)
		return;
	for (pp = &s->rids[rid_hash(rid) & (s->rids_cap - 1)]; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->rid, rid) == 0) {
			struct local_rid *e = *pp;

			*pp = e->next;
			free(e);
			s->rids_len--;
			return;
		}
}

/* Forget local admissions past their lease + grace (all of them: `all`). */
static void rids_sweep(struct rstore *s, bool all)
{
	ev_tstamp now = ev_now(s->loop);

	for (size_t i = 0; i < s->rids_cap && s->rids_len; i++) {
		struct local_rid **pp = &s->rids[i];

		while (*pp) {
			struct local_rid *e = *pp;

			if (all || e->forget_at <= now) {
				*pp = e->next;
				free(e);
				s->rids_len--;
			} else {
				pp = &e->next;
			}
		}
	}
}

/* ---------------------------------------------------------- replay queue */

static void queue_push(struct rstore *s, struct replay_item *it, bool front)
{
	it->next = NULL;
	if (front) {
		it->next = s->q_head;
		s->q_head = it;
		if (!s->q_tail)
			s->q_tail = it;
	} else {
		if (s->q_tail)
			s->q_tail->next = it;
		else
			s->q_head = it;
		s->q_tail = it;
	}
	s->q_len++;
}

static struct replay_item *queue_pop(struct rstore *s)
{
	struct replay_item *it = s->q_head;

	if (!it)
		return NULL;
	s->q_head = it->next;
	if (!s->q_head)
		s->q_tail = NULL;
	s->q_len--;
	return it;
}

/* Queue new usage for Redis; -1 (counted, logged) when the queue is full. */
static int queue_new(struct rstore *s, const struct replay_item *proto)
{
	struct replay_item *it;

	if (s->q_len >= STORE_REDIS_QUEUE_MAX || !(it = malloc(sizeof(*it)))) {
		if (s->st.dropped++ % 10000 == 0)
			log_error("redis store: replay queue full (%zu): usage of %s lost",
			          s->q_len, proto->rid);
		return -1;
	}
	*it = *proto;
	it->tries = 0;
	queue_push(s, it, false);
	s->st.queued++;
	return 0;
}

/* A settlement that must wait for Redis. Its rid is remembered until it is
 * replayed, so that a second settlement of it meanwhile (the settlement
 * record after the SPOP message) is answered STORE_DUPLICATE, as Redis would
 * answer it: the caller counts the usage once, as Redis charges it once. */
static int queue_settle(struct rstore *s, const char *rid, int64_t in, int64_t out)
{
	struct replay_item it;
	struct local_rid *e;

	memset(&it, 0, sizeof(it));
	snprintf(it.rid, sizeof(it.rid), "%s", rid);
	it.in = in;
	it.out = out;
	if (queue_new(s, &it) != 0)
		return -1;
	if (!rids_find(s, rid) && (e = calloc(1, sizeof(*e)))) {
		snprintf(e->rid, sizeof(e->rid), "%s", rid);
		e->queued = e->settled = true;
		e->forget_at = ev_now(s->loop) + GRACE_MS / 1000.;
		if (rids_insert(s, e) != 0)
			free(e);
	}
	return 0;
}

static void queue_charges(struct rstore *s, const struct local_rid *e, int64_t in, int64_t out)
{
	struct replay_item it;

	for (unsigned i = 0; i < e->nq; i++) {
		memset(&it, 0, sizeof(it));
		it.charge = true;
		it.idx = i;
		it.amount = settle_amount(in, out, e->q[i].w_in, e->q[i].w_out);
		snprintf(it.rid, sizeof(it.rid), "%s", e->rid);
		snprintf(it.key, sizeof(it.key), "%s", e->q[i].key);
		if (it.amount > 0)
			queue_new(s, &it);
	}
}

/* Send queued items, a window at a time, while Redis serves. */
static void replay_kick(struct rstore *s)
{
	while (s->q_head && s->replay_inflight < REPLAY_WINDOW && usable(s) && s->connected) {
		struct call *c = calloc(1, sizeof(*c));

		if (!c)
			return;
		c->s = s;
		c->kind = CALL_REPLAY;
		c->item = queue_pop(s);
		snprintf(c->rid, sizeof(c->rid), "%s", c->item->rid);
		c->in = c->item->in;
		c->out = c->item->out;
		s->replay_inflight++;
		if (call_start(c) != 0)
			return;             /* the item went back to the queue */
	}
}

/* A replayed settlement: Redis has it (or never will), and answers its
 * repeats itself. */
static void forget_queued(struct rstore *s, const struct replay_item *it)
{
	const struct local_rid *e = it->charge ? NULL : rids_find(s, it->rid);

	if (e && e->queued)
		rids_remove(s, it->rid);
}

/* A replayed item's outcome: `ok` (applied, or known to need nothing). */
static void replay_done(struct call *c, bool ok, enum fail_kind why)
{
	struct rstore *s = c->s;
	struct replay_item *it = c->item;

	c->item = NULL;
	s->replay_inflight--;
	if (ok) {
		s->st.replayed++;
		forget_queued(s, it);
		free(it);
	} else if (why == FAIL_REPLY && ++it->tries >= REPLAY_TRIES) {
		log_error("redis store: replayed %s of %s refused by Redis; dropped",
		          it->charge ? "quota charge" : "settlement", it->rid);
		s->st.dropped++;
		forget_queued(s, it);
		free(it);
	} else {
		queue_push(s, it, why != FAIL_REPLY);
	}
}

/* ------------------------------------------------------ known balances */

static struct known_quota **known_slot(struct rstore *s, const char *key)
{
	return s->known ? &s->known[rid_hash(key) & (KNOWN_SLOTS - 1)] : NULL;
}

static struct known_quota *known_find(struct rstore *s, const char *key)
{
	struct known_quota **k = known_slot(s, key);

	return k && *k && strcmp((*k)->key, key) == 0 ? *k : NULL;
}

static void known_set(struct rstore *s, const char *key, int64_t remaining)
{
	struct known_quota **k = known_slot(s, key);

	if (!k || (!*k && !(*k = malloc(sizeof(**k)))))
		return;
	snprintf((*k)->key, sizeof((*k)->key), "%s", key);
	(*k)->remaining = remaining;
}

/* The quota buckets' states of an admission's answer. */
static void known_from_admit(struct rstore *s, const struct store_admit_req *req,
                             const struct store_admit_res *res)
{
	for (unsigned i = 0; i < req->n; i++)
		if (req->b[i].window_ms == 0)
			known_set(s, req->b[i].key, res->st[i].remaining);
}

/* ------------------------------------------------------- local decisions */

struct local_admit {            /* a request forwarded to the local store */
	struct rstore *s;
	store_admit_cb cb;
	void *arg;
	struct local_rid *e;        /* remembered if admitted */
	unsigned nsub;
	int map[STORE_MAX_BUCKETS]; /* forwarded bucket -> the caller's index */
};

static void admit_open(struct rstore *s, const struct store_admit_req *req,
                       store_admit_cb cb, void *arg)
{
	struct store_admit_res res;

	memset(&res, 0, sizeof(res));
	res.admitted = true;
	res.refused = -1;
	for (unsigned i = 0; i < req->n; i++)
		res.st[i].remaining = req->b[i].window_ms > 0 ? req->b[i].limit : 0;
	s->st.fallback_open++;
	cb(&res, arg);
}

static void on_local_admit(const struct store_admit_res *lres, void *arg)
{
	struct local_admit *la = arg;
	struct rstore *s = la->s;
	struct store_admit_res res;

	memset(&res, 0, sizeof(res));
	res.err = lres->err;
	res.admitted = lres->admitted;
	res.refused = lres->refused >= 0 && (unsigned)lres->refused < la->nsub
	              ? la->map[lres->refused] : -1;
	for (unsigned i = 0; i < la->nsub; i++)
		res.st[la->map[i]] = lres->st[i];
	if (!res.err && res.admitted)
		for (unsigned i = 0; i < la->e->nq; i++) {
			struct known_quota *k = known_find(s, la->e->q[i].key);

			if (k)
				k->remaining -= la->e->q[i].estimate;
		}
	if (res.err || !res.admitted) {
		free(la->e);
	} else if (rids_insert(s, la->e) != 0) {
		log_warn("redis store: too many local admissions remembered; %s will lapse "
		         "instead of settling", la->e->rid);
		free(la->e);
	}
	la->cb(&res, la->arg);
	free(la);
}

/* Rate buckets (limits scaled to this instance's share) to the local
 * store; quota buckets are remembered to be charged to Redis later. */
static void admit_local(struct rstore *s, const struct store_admit_req *req,
                        store_admit_cb cb, void *arg)
{
	struct store_admit_req sub;
	struct store_admit_res none;
	struct local_admit *la = calloc(1, sizeof(*la));
	unsigned nq = 0;

	if (rids_find(s, req->rid)) {      /* a reused rid, as store_mem.c answers it */
		free(la);
		memset(&none, 0, sizeof(none));
		none.err = -1;
		none.refused = -1;
		cb(&none, arg);
		return;
	}
	for (unsigned i = 0; i < req->n; i++) {
		const struct store_bucket *b = &req->b[i];
		const struct known_quota *k;

		if (b->window_ms > 0)
			continue;
		nq++;
		k = known_find(s, b->key);
		if (k && (req->strict ? k->remaining - b->estimate < 0 : k->remaining <= 0)) {
			free(la);
			memset(&none, 0, sizeof(none));
			none.refused = (int)i;
			none.st[i].remaining = k->remaining;
			s->st.fallback_local++;
			s->st.refused_local++;
			cb(&none, arg);
			return;
		}
	}
	if (!la || !(la->e = calloc(1, sizeof(*la->e) + nq * sizeof(struct local_quota)))) {
		free(la);
		admit_open(s, req, cb, arg);
		return;
	}
	la->s = s;
	la->cb = cb;
	la->arg = arg;
	memset(&sub, 0, sizeof(sub));
	snprintf(sub.rid, sizeof(sub.rid), "%s", req->rid);
	sub.lease_ms = req->lease_ms;
	sub.strict = req->strict;
	snprintf(la->e->rid, sizeof(la->e->rid), "%s", req->rid);
	la->e->forget_at = ev_now(s->loop) + (double)(req->lease_ms + GRACE_MS) / 1000;
	for (unsigned i = 0; i < req->n; i++) {
		const struct store_bucket *b = &req->b[i];

		if (b->window_ms == 0) {
			struct local_quota *q = &la->e->q[la->e->nq++];

			snprintf(q->key, sizeof(q->key), "%s", b->key);
			q->estimate = b->estimate;
			q->w_in = clamp_weight(b->w_in);
			q->w_out = clamp_weight(b->w_out);
			continue;
		}
		sub.b[sub.n] = *b;
		sub.b[sub.n].limit = (int64_t)ceil((double)b->limit * s->share);
		if (sub.b[sub.n].limit < 1)
			sub.b[sub.n].limit = 1;
		la->map[sub.n++] = (int)i;
	}
	la->nsub = sub.n;
	la->e->reserved = sub.n > 0;
	s->st.fallback_local++;
	if (sub.n > 0) {
		s->local->ops->admit(s->local->impl, &sub, on_local_admit, la);
		return;
	}
	memset(&none, 0, sizeof(none));
	none.admitted = true;
	none.refused = -1;
	on_local_admit(&none, la);
}

/* The failure mode, for an admission Redis did not decide. */
static void admit_fallback(struct rstore *s, const struct store_admit_req *req,
                           store_admit_cb cb, void *arg)
{
	struct store_admit_res res;
	enum tg_failure_mode mode = req->failure_mode >= 0
	                            ? (enum tg_failure_mode)req->failure_mode : s->mode;

	if (mode == TG_FAIL_LOCAL && s->local) {
		admit_local(s, req, cb, arg);
	} else if (mode == TG_FAIL_CLOSED) {
		memset(&res, 0, sizeof(res));
		res.err = -1;
		res.refused = -1;
		s->st.fallback_closed++;
		cb(&res, arg);
	} else {
		admit_open(s, req, cb, arg);
	}
}

struct local_settle {
	struct rstore *s;
	store_settle_cb cb;
	void *arg;
	int64_t in, out;
	char rid[64];
};

static void on_local_settle(enum store_settle_rc rc, void *arg)
{
	struct local_settle *ls = arg;
	struct local_rid *e = rids_find(ls->s, ls->rid);

	if ((rc == STORE_SETTLED || rc == STORE_LATE) && e && !e->settled) {
		e->settled = true;
		queue_charges(ls->s, e, ls->in, ls->out);
	}
	ls->cb(rc, ls->arg);
	free(ls);
}

static void settle_local(struct rstore *s, struct local_rid *e, int64_t in, int64_t out,
                         store_settle_cb cb, void *arg)
{
	struct local_settle *ls;

	s->st.settled_local++;
	if (!e->reserved) {         /* quota only: nothing held locally */
		enum store_settle_rc rc = e->settled ? STORE_DUPLICATE : STORE_SETTLED;

		if (!e->settled) {
			e->settled = true;
			queue_charges(s, e, in, out);
		}
		cb(rc, arg);
		return;
	}
	if (!(ls = calloc(1, sizeof(*ls)))) {
		cb(STORE_ERROR, arg);
		return;
	}
	ls->s = s;
	ls->cb = cb;
	ls->arg = arg;
	ls->in = in;
	ls->out = out;
	snprintf(ls->rid, sizeof(ls->rid), "%s", e->rid);
	s->local->ops->settle(s->local->impl, e->rid, in, out, on_local_settle, ls);
}

/* ----------------------------------------------------------- call answers */

/* Answer the caller (once) that Redis did not serve this call. */
static void answer_failure(struct call *c, enum fail_kind why)
{
	struct rstore *s = c->s;

	switch (c->kind) {
	case CALL_ADMIT:
		admit_fallback(s, c->req, c->cb.admit, c->arg);
		break;
	case CALL_SETTLE:
		c->cb.settle(queue_settle(s, c->rid, c->in, c->out) == 0 ? STORE_QUEUED
		                                                          : STORE_ERROR, c->arg);
		break;
	case CALL_QGET:
	case CALL_QSET:
	case CALL_QADD:
		c->cb.quota(-1, 0, c->arg);
		break;
	case CALL_REPLAY:
		replay_done(c, false, why);
		break;
	case CALL_PROBE:
		s->breaker = STORE_REDIS_OPEN;
		s->opened_at = ev_now(s->loop);
		if (why == FAIL_TIMEOUT && ev_now(s->loop) - s->last_reply > SILENT_DROP)
			ev_timer_start(s->loop, &s->drop);
		break;
	case CALL_RELEASE:
		break;
	}
}

/* Answer with an error and no fallback (the store is closing). */
static void answer_closing(struct call *c)
{
	struct store_admit_res res;

	switch (c->kind) {
	case CALL_ADMIT:
		memset(&res, 0, sizeof(res));
		res.err = -1;
		res.refused = -1;
		c->cb.admit(&res, c->arg);
		break;
	case CALL_SETTLE:
		c->cb.settle(STORE_ERROR, c->arg);
		break;
	case CALL_QGET:
	case CALL_QSET:
	case CALL_QADD:
		c->cb.quota(-1, 0, c->arg);
		break;
	case CALL_REPLAY:           /* back in the queue, freed (and counted) with it */
		queue_push(c->s, c->item, true);
		c->item = NULL;
		break;
	default:
		break;
	}
}

static void call_answered(struct call *c)
{
	c->answered = true;
	ev_timer_stop(c->s->loop, &c->deadline);
}

static void call_fail(struct call *c, enum fail_kind why)
{
	struct rstore *s = c->s;

	if (c->answered)
		return;
	call_answered(c);
	if (why == FAIL_TIMEOUT)
		s->st.timeouts++;
	else
		s->st.errors++;
	if (why != FAIL_REPLY && c->kind != CALL_PROBE)
		breaker_failure(s);
	answer_failure(c, why);
}

static int admit_parse(const redisReply *r, unsigned n, struct store_admit_res *res)
{
	memset(res, 0, sizeof(*res));
	res->refused = -1;
	if (r->type != REDIS_REPLY_ARRAY)
		return -1;
	for (size_t i = 0; i < r->elements; i++)
		if (r->element[i]->type != REDIS_REPLY_INTEGER)
			return -1;
	if (r->elements == 1 && r->element[0]->integer == -1)
		return 1;               /* the rid is already reserved or settled */
	if (r->elements != 2 + 4 * (size_t)n)
		return -1;
	res->admitted = r->element[0]->integer == 1;
	res->refused = res->admitted ? -1 : (int)r->element[1]->integer;
	if (!res->admitted && (res->refused < 0 || res->refused >= (int)n))
		return -1;
	for (unsigned i = 0; i < n; i++) {
		redisReply **e = &r->element[2 + 4 * i];

		res->st[i].used = e[0]->integer;
		res->st[i].reserved = e[1]->integer;
		res->st[i].remaining = e[2]->integer;
		res->st[i].reset_ms = e[3]->integer;
	}
	return 0;
}

static void admit_reply(struct call *c, const redisReply *r)
{
	struct store_admit_res res;
	int rc = admit_parse(r, c->req->n, &res);

	if (rc < 0) {
		log_error("redis store: unexpected answer to admit %s", c->req->rid);
		call_fail(c, FAIL_REPLY);
		return;
	}
	call_answered(c);
	if (rc == 0)
		known_from_admit(c->s, c->req, &res);
	if (rc > 0) {
		log_warn("redis store: reservation id %s reused, request not admitted", c->req->rid);
		memset(&res, 0, sizeof(res));
		res.err = -1;
		res.refused = -1;
		c->s->st.errors++;
	}
	c->cb.admit(&res, c->arg);
}

static void settle_reply(struct call *c, const redisReply *r)
{
	if (r->type != REDIS_REPLY_INTEGER || r->integer < 0 || r->integer > STORE_UNKNOWN) {
		call_fail(c, FAIL_REPLY);
		return;
	}
	call_answered(c);
	if (c->kind == CALL_REPLAY) {
		if (r->integer == STORE_UNKNOWN)
			log_warn("redis store: replayed settlement of %s: reservation unknown "
			         "(Redis lost it?)", c->rid);
		replay_done(c, true, FAIL_REPLY);
	} else if (c->kind == CALL_SETTLE) {
		c->cb.settle((enum store_settle_rc)r->integer, c->arg);
	}
}

static void charge_reply(struct call *c, const redisReply *r)
{
	if (r->type != REDIS_REPLY_INTEGER) {
		call_fail(c, FAIL_REPLY);
		return;
	}
	call_answered(c);
	replay_done(c, true, FAIL_REPLY);
}

static void quota_reply(struct call *c, const redisReply *r)
{
	int64_t v = 0;
	char *end;

	if (r->type == REDIS_REPLY_INTEGER) {
		v = r->integer;
	} else if (r->type == REDIS_REPLY_STRING) {
		v = strtoll(r->str, &end, 10);
		if (end == r->str || *end) {
			call_fail(c, FAIL_REPLY);
			return;
		}
	} else if (r->type == REDIS_REPLY_STATUS && c->kind == CALL_QSET) {
		v = c->value;
	} else if (r->type != REDIS_REPLY_NIL || c->kind != CALL_QGET) {
		call_fail(c, FAIL_REPLY);
		return;
	}
	call_answered(c);
	known_set(c->s, c->key, v);
	c->cb.quota(0, v, c->arg);
}

static void call_result(struct call *c, const redisReply *r)
{
	struct rstore *s = c->s;

	if (!r) {
		call_fail(c, FAIL_CONN);
		return;
	}
	s->last_reply = ev_now(s->loop);
	if (r->type == REDIS_REPLY_ERROR) {
		log_debug("redis store: error reply: %s", r->str);
		if (refuses_connection(r->str))
			conn_refused(s, r->str);
		call_fail(c, service_error(r->str) ? FAIL_SERVICE : FAIL_REPLY);
		return;
	}
	conn_good(s);
	s->st.last_latency_us = (int64_t)((ev_time() - c->t0) * 1e6);
	if (s->breaker == STORE_REDIS_CLOSED)
		s->fails = 0;
	switch (c->kind) {
	case CALL_ADMIT:
		admit_reply(c, r);
		break;
	case CALL_SETTLE:
	case CALL_RELEASE:
		settle_reply(c, r);
		break;
	case CALL_REPLAY:
		if (c->item->charge)
			charge_reply(c, r);
		else
			settle_reply(c, r);
		break;
	case CALL_PROBE:
		call_answered(c);
		breaker_close(s);
		break;
	default:
		quota_reply(c, r);
		break;
	}
}

/* A reply after the deadline: ignored, except that an admission Redis made
 * after all is released at once (the caller decided without it). */
static void late_reply(struct call *c, const redisReply *r)
{
	struct rstore *s = c->s;
	struct call *rel;
	struct store_admit_res res;

	if (!r)
		return;
	s->st.late_replies++;
	s->last_reply = ev_now(s->loop);
	if (c->kind != CALL_ADMIT || admit_parse(r, c->req->n, &res) != 0)
		return;
	/* the newest word on the quotas; an admission is released below */
	for (unsigned i = 0; res.admitted && i < c->req->n; i++)
		res.st[i].remaining += c->req->b[i].window_ms == 0 ? c->req->b[i].estimate : 0;
	known_from_admit(s, c->req, &res);
	if (!res.admitted)
		return;
	if (!s->ac || !(rel = calloc(1, sizeof(*rel))))
		return;
	rel->s = s;
	rel->kind = CALL_RELEASE;
	snprintf(rel->rid, sizeof(rel->rid), "%s", c->req->rid);
	s->st.released++;
	call_start(rel);
}

/* NOSCRIPT: Redis lost its script cache (restart, SCRIPT FLUSH). Load the
 * script and send the call again, pipelined: one more round trip, once. */
static int retry_noscript(struct call *c)
{
	struct rstore *s = c->s;

	if (c->retried || c->answered || s->closing || !s->ac)
		return -1;
	c->retried = true;
	s->st.noscript++;
	log_info("redis store: NOSCRIPT, loading script %s again", script_src[call_script(c)].name);
	send_script_load(s, call_script(c));
	return call_send(c);
}

static bool is_noscript(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	(void)ac;
	reply_one(privdata, r);
}

static void on_batch_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	struct batch *b = privdata;
	redisReply *rep = r;
	bool each = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == b->n;

	(void)ac;
	if (is_noscript(rep) && !b->s->closing)
		send_script_load(b->s, SCRIPT_BATCH);
	for (unsigned i = 0; i < b->n; i++)
		reply_one(b->c[i], each ? rep->element[i] : rep);
	free(b);
}

/* A call's reply (NULL: none will come), alone or from a batch. */
static void reply_one(struct call *c, redisReply *r)
{
	struct rstore *s = c->s;

	c->pending--;
	if (is_noscript(r) && retry_noscript(c) == 0)
		return;
	if (c->answered) {
		if (!s->closing)
			late_reply(c, r);
	} else if (s->closing) {
		call_answered(c);
		answer_closing(c);
	} else {
		call_result(c, r);
	}
	call_done(c);
}

/* ---------------------------------------------------------- call lifecycle */

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct call *c = w->data;

	(void)loop; (void)revents;
	call_fail(c, FAIL_TIMEOUT);
	call_done(c);
}

static void call_done(struct call *c)
{
	if (!c->answered || c->pending)
		return;
	if (c->item)                /* never happens: replay_done() took it */
		free(c->item);
	free(c->req);
	free(c);
}

/* Send with a deadline; on failure the call is answered (and freed). */
static int call_start(struct call *c)
{
	struct rstore *s = c->s;

	/* the loop's clock may lag: count the deadline from now, really */
	c->t0 = ev_time();
	ev_timer_init(&c->deadline, on_deadline, s->timeout + (c->t0 - ev_now(s->loop)), 0.);
	/* below the connection's reader: when the loop lags (a burst, a slow
	 * build), a reply that arrived in time and a deadline due in the same
	 * iteration are both pending, and libev would run the timer first (it
	 * runs a priority's pending watchers last queued first): a reply in
	 * time was counted a timeout and decided by failure_mode. Measured in
	 * the ASan build: 73 of a 200-request burst, 61 requests over a quota */
	ev_set_priority(&c->deadline, EV_MINPRI);
	c->deadline.data = c;
	if (call_send(c) != 0) {
		call_fail(c, FAIL_CONN);
		call_done(c);
		return -1;
	}
	ev_timer_start(s->loop, &c->deadline);
	return 0;
}

static struct call *call_new(struct rstore *s, enum call_kind kind, void *arg)
{
	struct call *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->s = s;
	c->kind = kind;
	c->arg = arg;
	return c;
}

/* ------------------------------------------------------------- operations */

static void redis_admit(void *impl, const struct store_admit_req *req,
                        store_admit_cb cb, void *arg)
{
	struct rstore *s = impl;
	struct store_admit_res res;
	struct call *c;

	s->st.calls++;
	if (!admit_valid(req)) {
		memset(&res, 0, sizeof(res));
		res.err = -1;
		res.refused = -1;
		cb(&res, arg);
		return;
	}
	if (!usable(s)) {
		reject(s);
		admit_fallback(s, req, cb, arg);
		return;
	}
	if (!(c = call_new(s, CALL_ADMIT, arg)) || !(c->req = malloc(sizeof(*req)))) {
		free(c);
		admit_fallback(s, req, cb, arg);
		return;
	}
	c->cb.admit = cb;
	memcpy(c->req, req, sizeof(*req));
	call_start(c);
}

static void redis_settle(void *impl, const char *rid, int64_t in, int64_t out,
                         store_settle_cb cb, void *arg)
{
	struct rstore *s = impl;
	struct local_rid *e;
	struct call *c;

	s->st.calls++;
	if (!rid || !str_ok(rid, RID_MAX)) {
		cb(STORE_UNKNOWN, arg);
		return;
	}
	in = clamp(in, AMOUNT_MAX);
	out = clamp(out, AMOUNT_MAX);
	if ((e = rids_find(s, rid))) {
		if (e->queued)
			cb(STORE_DUPLICATE, arg);
		else
			settle_local(s, e, in, out, cb, arg);
		return;
	}
	if (!usable(s) || !(c = call_new(s, CALL_SETTLE, arg))) {
		if (!usable(s))
			reject(s);
		cb(queue_settle(s, rid, in, out) == 0 ? STORE_QUEUED : STORE_ERROR, arg);
		return;
	}
	c->cb.settle = cb;
	snprintf(c->rid, sizeof(c->rid), "%s", rid);
	c->in = in;
	c->out = out;
	call_start(c);
}

static void quota_call(struct rstore *s, enum call_kind kind, const char *key, int64_t v,
                       store_quota_cb cb, void *arg)
{
	struct call *c;

	s->st.calls++;
	if (!key || !str_ok(key, STORE_KEY_MAX)) {
		cb(-1, 0, arg);
		return;
	}
	if (!usable(s) || !(c = call_new(s, kind, arg))) {
		if (!usable(s))
			reject(s);
		cb(-1, 0, arg);
		return;
	}
	c->cb.quota = cb;
	snprintf(c->key, sizeof(c->key), "%s", key);
	c->value = v;
	call_start(c);
}

static void redis_quota_get(void *impl, const char *key, store_quota_cb cb, void *arg)
{
	quota_call(impl, CALL_QGET, key, 0, cb, arg);
}

static void redis_quota_set(void *impl, const char *key, int64_t value, store_quota_cb cb, void *arg)
{
	quota_call(impl, CALL_QSET, key, value, cb, arg);
}

static void redis_quota_add(void *impl, const char *key, int64_t delta, store_quota_cb cb, void *arg)
{
	quota_call(impl, CALL_QADD, key, delta, cb, arg);
}

/* ----------------------------------------------------------- open / free */

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct rstore *s = w->data;

	(void)loop; (void)revents;
	rids_sweep(s, false);
	replay_kick(s);
}

static void redis_free(void *impl)
{
	struct rstore *s = impl;
	struct replay_item *it;

	if (!s)
		return;
	s->closing = true;
	batch_drop(s);
	ev_timer_stop(s->loop, &s->reconnect);
	ev_timer_stop(s->loop, &s->connect_timeout);
	ev_timer_stop(s->loop, &s->drop);
	ev_timer_stop(s->loop, &s->cooldown_timer);
	ev_timer_stop(s->loop, &s->tick);
	if (s->ac) {                /* answers every call still in flight */
		redisAsyncContext *ac = s->ac;

		s->ac = NULL;
		redisAsyncFree(ac);
	}
	if (s->sac) {
		redisAsyncContext *sac = s->sac;

		s->sac = NULL;
		redisAsyncFree(sac);
	}
	if (s->q_len)
		log_warn("redis store: closing with %zu settlements/charges not replayed: lost",
		         s->q_len);
	while ((it = queue_pop(s)))
		free(it);
	rids_sweep(s, true);
	free(s->rids);
	for (size_t i = 0; s->known && i < KNOWN_SLOTS; i++)
		free(s->known[i]);
	free(s->known);
	free(s->batch_text);
	free(s->host);
	free(s->master_name);
	for (unsigned i = 0; i < s->n_sentinels; i++)
		free(s->sentinels[i].host);
	free(s->username);
	free(s->password);
	free(s);
}

static const struct store_ops redis_ops = {
	.admit = redis_admit,
	.settle = redis_settle,
	.quota_get = redis_quota_get,
	.quota_set = redis_quota_set,
	.quota_add = redis_quota_add,
	.free = redis_free,
};

static char *dup_or_null(const char *p, bool *oom)
{
	char *d;

	if (!p)
		return NULL;
	if (!(d = strdup(p)))
		*oom = true;
	return d;
}

static void timers_init(struct rstore *s)
{
	ev_timer_init(&s->reconnect, on_reconnect, 0., 0.);
	ev_timer_init(&s->connect_timeout, on_connect_timeout, 0., 0.);
	ev_timer_init(&s->drop, on_drop, 0., 0.);
	ev_timer_init(&s->cooldown_timer, on_cooldown, s->cooldown, s->cooldown);
	ev_timer_init(&s->tick, on_tick, TICK, TICK);
	s->reconnect.data = s->connect_timeout.data = s->drop.data = s;
	s->cooldown_timer.data = s->tick.data = s;
	ev_prepare_init(&s->flush, on_flush);
	s->flush.data = s;
}

/* The batch script: store_redis_lua.h's head, the three scripts as
 * functions of (KEYS, ARGV), its tail. */
static char *batch_script(size_t *len)
{
	static const char fn[] = "fns[%d] = function(KEYS, ARGV)\n%send\n";
	size_t cap = sizeof(STORE_REDIS_LUA_BATCH_HEAD) + sizeof(STORE_REDIS_LUA_BATCH_TAIL);
	char *t;
	int n;

	for (int i = 0; i < SCRIPT_BATCH; i++)
		cap += sizeof(fn) + script_src[i].len;
	if (!(t = malloc(cap)))
		return NULL;
	n = snprintf(t, cap, "%s", STORE_REDIS_LUA_BATCH_HEAD);
	for (int i = 0; i < SCRIPT_BATCH; i++)
		n += snprintf(t + n, cap - (size_t)n, fn, i + 1, script_src[i].text);
	n += snprintf(t + n, cap - (size_t)n, "%s", STORE_REDIS_LUA_BATCH_TAIL);
	*len = (size_t)n;
	return t;
}

struct store *store_redis_open(struct ev_loop *loop, const struct tg_store_cfg *cfg,
                               struct store *local_fallback, char *err, size_t errlen)
{
	struct rstore *s;
	bool oom = false;

	if (!loop || !cfg || !cfg->host || !cfg->host[0]) {
		snprintf(err, errlen, "redis store: no host");
		return NULL;
	}
	if (!(s = calloc(1, sizeof(*s)))) {
		snprintf(err, errlen, "redis store: out of memory");
		return NULL;
	}
	s->pub.ops = &redis_ops;
	s->pub.impl = s;
	s->loop = loop;
	s->host = dup_or_null(cfg->host, &oom);
	if (cfg->n_sentinels && cfg->sentinel_master) {
		s->master_name = dup_or_null(cfg->sentinel_master, &oom);
		for (unsigned i = 0; i < cfg->n_sentinels && i < TG_SENTINELS_MAX; i++) {
			s->sentinels[i].host = dup_or_null(cfg->sentinels[i].host, &oom);
			s->sentinels[i].port = cfg->sentinels[i].port;
			s->n_sentinels = i + 1;
		}
	}
	s->username = dup_or_null(cfg->username, &oom);
	s->password = dup_or_null(cfg->password, &oom);
	oom |= !(s->known = calloc(KNOWN_SLOTS, sizeof(*s->known)));
	oom |= !(s->batch_text = batch_script(&s->batch_len));
	if (oom) {
		redis_free(s);
		snprintf(err, errlen, "redis store: out of memory");
		return NULL;
	}
	s->port = cfg->port ? cfg->port : 6379;
	s->db = cfg->db;
	s->timeout = (cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT) / 1000.;
	s->mode = cfg->failure_mode;
	s->threshold = cfg->breaker_threshold ? cfg->breaker_threshold : 5;
	s->cooldown = (cfg->breaker_cooldown_ms ? cfg->breaker_cooldown_ms : 1000) / 1000.;
	s->local = local_fallback;
	s->share = 1.;
	s->test_now = -1;
	s->backoff = BACKOFF_MIN;
	for (int i = 0; i < SCRIPT_N; i++) {
		s->scripts[i].s = s;
		s->scripts[i].id = (enum script_id)i;
	}
	timers_init(s);
	ev_timer_start(loop, &s->tick);
	conn_start(s);
	return &s->pub;
}

void store_redis_set_local_share(struct store *st, double share)
{
	struct rstore *s = st->impl;

	s->share = share > 0 && share <= 1 ? share : 1.;
}

void store_redis_set_test_clock(struct store *st, int64_t now_ms)
{
	struct rstore *s = st->impl;

	s->test_now = now_ms < 0 ? -1 : now_ms;
}

void store_redis_stats(struct store *st, struct store_redis_stats *out)
{
	struct rstore *s = st->impl;

	*out = s->st;
	out->breaker = s->breaker;
	out->connected = s->ac && s->connected;
	out->queue_len = s->q_len + s->replay_inflight;
	out->local_rids = s->rids_len;
}

const char *store_redis_script_sha(struct store *st, const char *name)
{
	struct rstore *s = st->impl;

	for (int i = 0; i < SCRIPT_N; i++)
		if (strcmp(script_name((enum script_id)i), name) == 0)
			return s->scripts[i].sha;
	return "";
}
