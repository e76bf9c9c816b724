/* test_store_redis.c -- the Redis store (agent/store_redis.c) against a real
 * redis-server.
 *
 * Starts its own redis-server (/usr/bin/redis-server, or $REDIS_SERVER) on a
 * free port with `--save '' --appendonly no`, kills it at the end (and when
 * the test dies: PDEATHSIG). Proves: admission at the limit's boundary,
 * all-or-nothing, strict, sliding windows driven by the test clock, lease
 * expiry and late settlement, exactly-once settlement, quota balances as
 * plain Higress integers, NOSCRIPT recovery, no overshoot beyond one request
 * with 3 connections racing, and the failure paths: Redis killed (answers
 * within the deadline, breaker, failure modes, back to global after a
 * restart, queued usage replayed) and Redis paused (deadlines, replay of
 * settlements into the same data, late admissions released). Every callback
 * is counted: each must come exactly once. A last case measures admissions
 * per second through Redis (printed, not checked).
 *
 * TEST_TIME_SCALE (default 1) widens the timing margins (valgrind).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "check.h"
#include "log.h"
#include "store_mem.h"
#include "store_redis.h"

static struct ev_loop *loop;
static int redis_port;
static pid_t redis_pid = -1;
static redisContext *rc;          /* a plain synchronous client, to look inside */
static double tscale = 1;
static long issued, answered;     /* every callback exactly once */

/* ------------------------------------------------------------ redis-server */

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

static void sync_close(void)
{
	if (rc)
		redisFree(rc);
	rc = NULL;
}

static int sync_connect(void)
{
	struct timeval tv = { 0, 200000 };
	redisReply *r;

	sync_close();
	rc = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
	if (!rc || rc->err) {
		sync_close();
		return -1;
	}
	redisSetTimeout(rc, (struct timeval){ 5, 0 });
	r = redisCommand(rc, "PING");
	if (!r || r->type != REDIS_REPLY_STATUS) {
		if (r)
			freeReplyObject(r);
		sync_close();
		return -1;
	}
	freeReplyObject(r);
	return 0;
}

static int redis_start(void)
{
	const char *bin = getenv("REDIS_SERVER") ? getenv("REDIS_SERVER") : "/usr/bin/redis-server";
	char port[16];

	snprintf(port, sizeof(port), "%d", redis_port);
	redis_pid = fork();
	if (redis_pid < 0)
		return -1;
	if (redis_pid == 0) {
		int null = open("/dev/null", 0);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(null, 1);
		dup2(null, 2);
		execl(bin, "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
		      "--appendonly", "no", "--daemonize", "no", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		if (sync_connect() == 0)
			return 0;
		usleep(10000);
	}
	return -1;
}

static void redis_kill(void)
{
	sync_close();
	if (redis_pid > 0) {
		kill(redis_pid, SIGKILL);
		waitpid(redis_pid, NULL, 0);
	}
	redis_pid = -1;
}

static void redis_signal(int sig)
{
	if (redis_pid > 0)
		kill(redis_pid, sig);
}

/* A command on the synchronous client; the reply as a string ("" for nil,
 * the number for an integer). */
static const char *cmd(const char *fmt, ...)
{
	static char out[256];
	redisReply *r;
	va_list ap;

	va_start(ap, fmt);
	r = rc ? redisvCommand(rc, fmt, ap) : NULL;
	va_end(ap);
	out[0] = 0;
	if (!r)
		return "(no reply)";
	if (r->type == REDIS_REPLY_INTEGER)
		snprintf(out, sizeof(out), "%lld", r->integer);
	else if (r->str)
		snprintf(out, sizeof(out), "%s", r->str);
	freeReplyObject(r);
	return out;
}

/* --------------------------------------------------------------- the loop */

static void on_poke(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l; (void)w; (void)revents;
}

#define RUN_UNTIL(cond, secs) do { \
	ev_tstamp t_end_ = ev_time() + (secs) * tscale; \
	while (!(cond) && ev_time() < t_end_) \
		ev_run(loop, EVRUN_ONCE); \
} while (0)

static void run_for(double secs)
{
	ev_tstamp t_end = ev_time() + secs;

	while (ev_time() < t_end)
		ev_run(loop, EVRUN_ONCE);
}

/* -------------------------------------------------------------- callbacks */

struct admit_out {
	int calls;
	struct store_admit_res res;
	ev_tstamp t0, t;
};

static void admit_cb(const struct store_admit_res *res, void *arg)
{
	struct admit_out *o = arg;

	o->calls++;
	o->res = *res;
	o->t = ev_time();
	answered++;
}

struct settle_out {
	int calls;
	enum store_settle_rc rc;
	ev_tstamp t0, t;
};

static void settle_cb(enum store_settle_rc rc, void *arg)
{
	struct settle_out *o = arg;

	o->calls++;
	o->rc = rc;
	o->t = ev_time();
	answered++;
}

struct quota_out {
	int calls, err;
	int64_t balance;
};

static void quota_cb(int err, int64_t balance, void *arg)
{
	struct quota_out *o = arg;

	o->calls++;
	o->err = err;
	o->balance = balance;
	answered++;
}

/* ---------------------------------------------------------------- helpers */

static void req_init(struct store_admit_req *r, const char *rid, int64_t lease_ms, bool strict)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->rid, sizeof(r->rid), "%s", rid);
	r->lease_ms = lease_ms;
	r->strict = strict;
	r->failure_mode = -1;           /* the store's own */
}

static void req_rate(struct store_admit_req *r, const char *key, int64_t limit,
                     int64_t window_ms, int64_t est)
{
	struct store_bucket *b = &r->b[r->n++];

	snprintf(b->key, sizeof(b->key), "%s", key);
	b->limit = limit;
	b->window_ms = window_ms;
	b->estimate = est;
	b->w_in = b->w_out = 1;
}

static void req_quota(struct store_admit_req *r, const char *key, int64_t est,
                      double w_in, double w_out)
{
	struct store_bucket *b = &r->b[r->n++];

	snprintf(b->key, sizeof(b->key), "%s", key);
	b->estimate = est;
	b->w_in = w_in;
	b->w_out = w_out;
}

static void admit_start(struct store *st, const struct store_admit_req *req, struct admit_out *o)
{
	memset(o, 0, sizeof(*o));
	o->t0 = ev_time();
	issued++;
	st->ops->admit(st->impl, req, admit_cb, o);
}

static struct store_admit_res admit(struct store *st, const struct store_admit_req *req)
{
	struct admit_out o;

	admit_start(st, req, &o);
	RUN_UNTIL(o.calls > 0, 2);
	CHECK(o.calls == 1);
	return o.res;
}

/* admit with one rate bucket */
static struct store_admit_res admit1(struct store *st, const char *rid, const char *key,
                                     int64_t limit, int64_t window_ms, int64_t est, bool strict)
{
	struct store_admit_req req;

	req_init(&req, rid, 600000, strict);
	req_rate(&req, key, limit, window_ms, est);
	return admit(st, &req);
}

static void settle_start(struct store *st, const char *rid, int64_t in, int64_t out,
                         struct settle_out *o)
{
	memset(o, 0, sizeof(*o));
	o->t0 = ev_time();
	issued++;
	st->ops->settle(st->impl, rid, in, out, settle_cb, o);
}

static enum store_settle_rc settle(struct store *st, const char *rid, int64_t in, int64_t out)
{
	struct settle_out o;

	settle_start(st, rid, in, out, &o);
	RUN_UNTIL(o.calls > 0, 2);
	CHECK(o.calls == 1);
	return o.calls ? o.rc : STORE_ERROR;
}

enum qop { QGET, QSET, QADD };

static struct quota_out quota(struct store *st, enum qop op, const char *key, int64_t v)
{
	struct quota_out o = { 0, 0, 0 };

	issued++;
	if (op == QGET)
		st->ops->quota_get(st->impl, key, quota_cb, &o);
	else if (op == QSET)
		st->ops->quota_set(st->impl, key, v, quota_cb, &o);
	else
		st->ops->quota_add(st->impl, key, v, quota_cb, &o);
	RUN_UNTIL(o.calls > 0, 2);
	CHECK(o.calls == 1);
	return o;
}

static struct store_redis_stats stats(struct store *st)
{
	struct store_redis_stats s;

	store_redis_stats(st, &s);
	return s;
}

static bool ready(struct store *st)
{
	struct store_redis_stats s = stats(st);

	return s.connected && s.breaker == STORE_REDIS_CLOSED &&
	       strlen(store_redis_script_sha(st, "admit")) == 40 &&
	       strlen(store_redis_script_sha(st, "settle")) == 40 &&
	       strlen(store_redis_script_sha(st, "charge")) == 40;
}

static struct store *open_store(enum tg_failure_mode mode, struct store *local,
                                uint32_t timeout_ms, uint32_t threshold, uint32_t cooldown_ms)
{
	struct tg_store_cfg cfg;
	char err[256] = "";
	struct store *st;

	memset(&cfg, 0, sizeof(cfg));
	cfg.host = "127.0.0.1";
	cfg.port = (uint16_t)redis_port;
	cfg.timeout_ms = timeout_ms;
	cfg.failure_mode = mode;
	cfg.lease_ms = 600000;
	cfg.breaker_threshold = threshold;
	cfg.breaker_cooldown_ms = cooldown_ms;
	st = store_redis_open(loop, &cfg, local, err, sizeof(err));
	if (!st) {
		fprintf(stderr, "store_redis_open: %s\n", err);
		return NULL;
	}
	RUN_UNTIL(ready(st), 3);
	if (!ready(st)) {
		fprintf(stderr, "store_redis_open: not ready after %.0f s\n", 3 * tscale);
		st->ops->free(st->impl);
		return NULL;
	}
	return st;
}

static struct store *open_default(void)
{
	return open_store(TG_FAIL_CLOSED, NULL, 1000, 5, 1000);
}

static void close_store(struct store *st)
{
	if (st)
		st->ops->free(st->impl);
}

/* ------------------------------------------------------- a fake local store */

/* Counts what it is asked, admits unless told not to, remembers rids. */
struct fake {
	int admits, settles;
	bool refuse;
	struct store_admit_req last;
	char rids[64][64];
	int settled[64];
	int nrids;
};

static int fake_rid(struct fake *f, const char *rid)
{
	for (int i = 0; i < f->nrids; i++)
		if (strcmp(f->rids[i], rid) == 0)
			return i;
	return -1;
}

static void fake_admit(void *impl, const struct store_admit_req *req, store_admit_cb cb, void *arg)
{
	struct fake *f = impl;
	struct store_admit_res res;

	f->admits++;
	f->last = *req;
	memset(&res, 0, sizeof(res));
	res.admitted = !f->refuse;
	res.refused = f->refuse ? 0 : -1;
	if (!f->refuse && f->nrids < 64) {
		snprintf(f->rids[f->nrids], 64, "%s", req->rid);
		f->settled[f->nrids++] = 0;
	}
	cb(&res, arg);
}

static void fake_settle(void *impl, const char *rid, int64_t in, int64_t out,
                        store_settle_cb cb, void *arg)
{
	struct fake *f = impl;
	int i = fake_rid(f, rid);

	(void)in; (void)out;
	f->settles++;
	if (i < 0)
		cb(STORE_UNKNOWN, arg);
	else
		cb(f->settled[i]++ ? STORE_DUPLICATE : STORE_SETTLED, arg);
}

static void fake_quota(void *impl, const char *key, store_quota_cb cb, void *arg)
{
	(void)impl; (void)key;
	cb(-1, 0, arg);
}

static void fake_quota_v(void *impl, const char *key, int64_t v, store_quota_cb cb, void *arg)
{
	(void)impl; (void)key; (void)v;
	cb(-1, 0, arg);
}

static void fake_free(void *impl)
{
	(void)impl;
}

static const struct store_ops fake_ops = {
	fake_admit, fake_settle, fake_quota, fake_quota_v, fake_quota_v, fake_free,
};

/* ------------------------------------------------------------------ cases */

CASE(connects_and_loads_scripts)
{
	struct store *st = open_default();
	struct store_redis_stats s;

	CHECK(st && ready(st));
	CHECK(st != NULL);
	if (!st)
		return;
	s = stats(st);
	CHECK(s.connects == 1 && s.errors == 0);
	{
		redisReply *r = redisCommand(rc, "SCRIPT EXISTS %s %s %s",
		                             store_redis_script_sha(st, "admit"),
		                             store_redis_script_sha(st, "settle"),
		                             store_redis_script_sha(st, "charge"));

		CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 3);
		for (size_t i = 0; r && i < r->elements; i++)
			CHECK(r->element[i]->integer == 1);
		if (r)
			freeReplyObject(r);
	}
	close_store(st);
}

/* The seed: 5 tokens per minute, a request estimated above it. */
CASE(admission_boundary)
{
	struct store *st = open_default();
	const char *k = "tollgate:{b}:rl:r:0:k:60000";
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	r = admit1(st, "b1", k, 5, 60000, 10, false);
	CHECK(r.err == 0 && r.admitted && r.refused == -1);
	CHECK(r.st[0].used == 0 && r.st[0].reserved == 10 && r.st[0].remaining == -5);
	r = admit1(st, "b2", k, 5, 60000, 10, false);           /* b1 in flight */
	CHECK(r.err == 0 && !r.admitted && r.refused == 0);
	CHECK(r.st[0].reserved == 10 && r.st[0].remaining == -5);
	CHECK(r.st[0].reset_ms > 60000 && r.st[0].reset_ms <= 61000);  /* reservations alone */
	CHECK(settle(st, "b1", 2, 1) == STORE_SETTLED);         /* 3 tokens, < 5 */
	r = admit1(st, "b3", k, 5, 60000, 10, false);
	CHECK(r.admitted && r.st[0].used == 3 && r.st[0].reserved == 10);
	CHECK(settle(st, "b3", 1, 1) == STORE_SETTLED);         /* 5 tokens: the limit */
	r = admit1(st, "b4", k, 5, 60000, 10, false);
	CHECK(!r.admitted && r.refused == 0 && r.st[0].used == 5 && r.st[0].reserved == 0);
	CHECK(r.st[0].remaining == 0);
	CHECK(r.st[0].reset_ms > 59000 && r.st[0].reset_ms <= 61000);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:res:b4"), "0") == 0);
	close_store(st);
}

CASE(all_or_nothing)
{
	struct store *st = open_default();
	const char *a = "tollgate:{n}:rl:r:0:a:60000", *b = "tollgate:{n}:rl:r:1:b:60000";
	struct store_admit_req req;
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "n0", b, 5, 60000, 10, false).admitted);   /* b full (in flight) */
	req_init(&req, "n1", 600000, false);
	req_rate(&req, a, 100, 60000, 10);
	req_rate(&req, b, 5, 60000, 10);
	req_quota(&req, "chat_quota:n", 10, 1, 1);
	CHECK(strcmp(cmd("SET chat_quota:n 1000"), "OK") == 0);
	r = admit(st, &req);
	CHECK(!r.admitted && r.refused == 1);
	CHECK(r.st[0].reserved == 0 && r.st[0].remaining == 100);
	CHECK(r.st[2].remaining == 1000);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:%s", a), "0") == 0);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:chat_quota:n"), "0") == 0);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:res:n1"), "0") == 0);
	/* once b frees, all three reserve together */
	CHECK(settle(st, "n0", 0, 0) == STORE_SETTLED);
	r = admit(st, &req);
	CHECK(r.admitted && r.refused == -1);
	CHECK(r.st[0].reserved == 10 && r.st[1].reserved == 10 && r.st[2].reserved == 10);
	CHECK(r.st[2].remaining == 990);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:chat_quota:n"), "2") == 0);   /* n1 + the sum */
	CHECK(strncmp(cmd("HGET tollgate:v1:inf:chat_quota:n %s", ""), "10:", 3) == 0);
	CHECK(settle(st, "n1", 3, 4) == STORE_SETTLED);
	CHECK(strcmp(cmd("GET chat_quota:n"), "993") == 0);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:%s", a), "0") == 0);
	close_store(st);
}

/* A bucket's in-flight hash goes with the settlement that brings its sum to
 * 0, even with a reservation of 0 still in it (that one then settles with
 * nothing to take out); a rate window's TTL is set by the first write to a
 * sub-window, not pushed by the next ones. */
CASE(in_flight_sum_and_window_ttl)
{
	struct store *st = open_default();
	const char *k = "tollgate:{t}:rl:r:0:k:60000";
	long ttl1, ttl2;

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "t0", k, 100, 60000, 0, false).admitted);
	CHECK(admit1(st, "t1", k, 100, 60000, 10, false).admitted);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:%s", k), "3") == 0);   /* t0, t1, the sum */
	CHECK(settle(st, "t1", 4, 3) == STORE_SETTLED);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:inf:%s", k), "0") == 0);
	CHECK(settle(st, "t0", 0, 0) == STORE_SETTLED);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:inf:%s", k), "0") == 0);
	CHECK(admit1(st, "t2", k, 100, 60000, 5, false).admitted);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:%s", k), "2") == 0);
	CHECK(strncmp(cmd("HGET tollgate:v1:inf:%s %s", k, ""), "5:", 2) == 0);
	/* the window: 7 tokens written at one instant (the test clock), then
	 * 20 ms later 2 more into the same sub-window */
	store_redis_set_test_clock(st, 7000000);
	CHECK(admit1(st, "t3", k, 100, 60000, 5, false).admitted);
	CHECK(settle(st, "t3", 1, 1) == STORE_SETTLED);
	ttl1 = atol(cmd("PTTL tollgate:v2:win:%s", k));
	CHECK(ttl1 > 60000 && ttl1 <= 60000 + 2 * 1000);
	usleep(20000);
	CHECK(admit1(st, "t4", k, 100, 60000, 5, false).admitted);
	CHECK(settle(st, "t4", 1, 1) == STORE_SETTLED);
	ttl2 = atol(cmd("PTTL tollgate:v2:win:%s", k));
	CHECK(ttl2 > 0 && ttl2 <= ttl1 - 15);                          /* not pushed */
	CHECK(strcmp(cmd("HGET tollgate:v2:win:%s 7000", k), "4") == 0);
	store_redis_set_test_clock(st, -1);
	close_store(st);
}

CASE(strict)
{
	struct store *st = open_default();
	const char *k = "tollgate:{s}:rl:r:0:k:60000", *k2 = "tollgate:{s}:rl:r:0:k2:60000";
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "s1", k, 10, 60000, 6, true).admitted);       /* 6 <= 10 */
	r = admit1(st, "s2", k, 10, 60000, 6, true);                   /* 12 > 10 */
	CHECK(!r.admitted && r.refused == 0 && r.st[0].remaining == 4);
	CHECK(admit1(st, "s3", k, 10, 60000, 4, true).admitted);       /* 10 <= 10 */
	/* not strict: admitted while used + reserved < limit */
	CHECK(admit1(st, "s4", k2, 10, 60000, 6, false).admitted);
	CHECK(admit1(st, "s5", k2, 10, 60000, 6, false).admitted);     /* 6 < 10 */
	CHECK(!admit1(st, "s6", k2, 10, 60000, 6, false).admitted);    /* 12 */
	close_store(st);
}

/* Test clock: a burst at 0:59 still counts at 1:01 (no double burst), and
 * is gone one window after its sub-window. */
CASE(sliding_window)
{
	struct store *st = open_default();
	const char *k = "tollgate:{w}:rl:r:0:k:60000", *k1 = "tollgate:{w}:rl:r:0:k:1000";
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	store_redis_set_test_clock(st, 59000);
	CHECK(admit1(st, "w1", k, 100, 60000, 10, false).admitted);
	CHECK(settle(st, "w1", 60, 40) == STORE_SETTLED);              /* 100 = the limit */
	store_redis_set_test_clock(st, 61000);
	r = admit1(st, "w2", k, 100, 60000, 10, false);
	CHECK(!r.admitted && r.st[0].used == 100);
	CHECK(r.st[0].reset_ms == (59 + 1) * 1000 + 60000 - 61000);     /* 59 s */
	store_redis_set_test_clock(st, 119999);
	CHECK(!admit1(st, "w3", k, 100, 60000, 10, false).admitted);
	store_redis_set_test_clock(st, 120000);
	r = admit1(st, "w4", k, 100, 60000, 10, false);
	CHECK(r.admitted && r.st[0].used == 0);
	CHECK(strcmp(cmd("HLEN tollgate:v2:win:%s", k), "0") == 0);    /* pruned */
	/* partial slide: 60 at 10 s, 40 at 40 s; at 70.5 s only the 40 count */
	CHECK(settle(st, "w4", 0, 0) == STORE_SETTLED);
	store_redis_set_test_clock(st, 1000000 + 10000);
	CHECK(admit1(st, "w5", k, 100, 60000, 1, false).admitted);
	CHECK(settle(st, "w5", 60, 0) == STORE_SETTLED);
	store_redis_set_test_clock(st, 1000000 + 40000);
	CHECK(admit1(st, "w6", k, 100, 60000, 1, false).admitted);
	CHECK(settle(st, "w6", 40, 0) == STORE_SETTLED);
	r = admit1(st, "w7", k, 100, 60000, 1, false);
	CHECK(!r.admitted && r.st[0].used == 100);
	CHECK(r.st[0].reset_ms == 31000);         /* the 60 leave at 1,071,000 */
	store_redis_set_test_clock(st, 1000000 + 71000);
	r = admit1(st, "w8", k, 100, 60000, 1, false);
	CHECK(r.admitted && r.st[0].used == 40);
	/* a one-second window: sub-windows of 17 ms */
	store_redis_set_test_clock(st, 5000000);
	CHECK(admit1(st, "w9", k1, 10, 1000, 10, false).admitted);
	CHECK(settle(st, "w9", 10, 0) == STORE_SETTLED);
	store_redis_set_test_clock(st, 5000999);
	CHECK(!admit1(st, "w10", k1, 10, 1000, 1, false).admitted);
	store_redis_set_test_clock(st, 5001020);
	CHECK(admit1(st, "w11", k1, 10, 1000, 1, false).admitted);
	store_redis_set_test_clock(st, -1);
	close_store(st);
}

CASE(lease_expiry_and_late_settlement)
{
	struct store *st = open_default();
	const char *k = "tollgate:{l}:rl:r:0:k:60000";
	struct store_admit_req req;
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	store_redis_set_test_clock(st, 1000);
	req_init(&req, "l1", 1000, false);
	req_rate(&req, k, 10, 60000, 10);
	CHECK(admit(st, &req).admitted);
	store_redis_set_test_clock(st, 1999);
	r = admit1(st, "l2", k, 10, 60000, 10, false);
	CHECK(!r.admitted && r.st[0].reserved == 10);                   /* lease runs */
	store_redis_set_test_clock(st, 2000);
	req_init(&req, "l3", 1000, false);
	req_rate(&req, k, 10, 60000, 10);
	r = admit(st, &req);
	CHECK(r.admitted && r.st[0].reserved == 10);                    /* l1 lapsed */
	CHECK(strcmp(cmd("HEXISTS tollgate:v1:inf:%s l1", k), "0") == 0);
	store_redis_set_test_clock(st, 2500);
	CHECK(settle(st, "l1", 4, 3) == STORE_LATE);                    /* still charged */
	CHECK(settle(st, "l1", 4, 3) == STORE_DUPLICATE);
	r = admit1(st, "l4", k, 10, 60000, 10, false);
	CHECK(!r.admitted && r.st[0].used == 7 && r.st[0].reserved == 10);
	CHECK(settle(st, "l3", 1, 0) == STORE_SETTLED);
	store_redis_set_test_clock(st, -1);
	close_store(st);
}

CASE(settle_exactly_once)
{
	struct store *st = open_default();
	const char *k = "tollgate:{e}:rl:r:0:k:60000";
	struct settle_out o[5];
	int settled = 0, dup = 0;

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "e1", k, 1000, 60000, 10, false).admitted);
	for (int i = 0; i < 5; i++)          /* pipelined: one applies, four are duplicates */
		settle_start(st, "e1", 5, 5, &o[i]);
	RUN_UNTIL(o[0].calls && o[1].calls && o[2].calls && o[3].calls && o[4].calls, 2);
	for (int i = 0; i < 5; i++) {
		CHECK(o[i].calls == 1);
		settled += o[i].rc == STORE_SETTLED;
		dup += o[i].rc == STORE_DUPLICATE;
	}
	CHECK(settled == 1 && dup == 4);
	CHECK(admit1(st, "e2", k, 1000, 60000, 1, false).st[0].used == 10);
	CHECK(settle(st, "nosuchrid", 1, 1) == STORE_UNKNOWN);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:res:e1"), "0") == 0);
	CHECK(atoll(cmd("PTTL tollgate:v1:done:e1")) > 290000);     /* 5 min */
	CHECK(atoll(cmd("PTTL tollgate:v1:done:e1")) <= 300000);
	/* the marker gone, a second settlement still charges nothing */
	cmd("DEL tollgate:v1:done:e1");
	CHECK(settle(st, "e1", 50, 50) == STORE_UNKNOWN);
	CHECK(admit1(st, "e3", k, 1000, 60000, 1, false).st[0].used == 10);
	close_store(st);
}

CASE(rid_reused)
{
	struct store *st = open_default();
	const char *k = "tollgate:{u}:rl:r:0:k:60000";
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "u1", k, 1000, 60000, 10, false).admitted);
	r = admit1(st, "u1", k, 1000, 60000, 10, false);
	CHECK(r.err == -1 && !r.admitted);
	CHECK(settle(st, "u1", 1, 1) == STORE_SETTLED);
	r = admit1(st, "u1", k, 1000, 60000, 10, false);
	CHECK(r.err == -1 && !r.admitted);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:%s", k), "0") == 0);
	/* no bucket: admitted, a reservation of nothing that settles once (as
	 * store_mem) */
	{
		struct store_admit_req req;

		req_init(&req, "u2", 1000, false);
		r = admit(st, &req);
		CHECK(r.err == 0 && r.admitted);
		CHECK(strcmp(cmd("EXISTS tollgate:v1:res:u2"), "1") == 0);
		CHECK(settle(st, "u2", 7, 3) == STORE_SETTLED);
		CHECK(settle(st, "u2", 7, 3) == STORE_DUPLICATE);
		CHECK(!admit(st, &req).admitted);                /* the rid is spent */
	}
	close_store(st);
}

/* A key listed twice sees the request's own earlier estimate and is
 * charged once per listing (as store_mem.c). */
CASE(key_listed_twice)
{
	struct store *st = open_default();
	const char *k = "tollgate:{d}:rl:r:0:k:60000";
	struct store_admit_req req;
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	req_init(&req, "d1", 600000, false);
	req_rate(&req, k, 15, 60000, 10);
	req_rate(&req, k, 15, 60000, 10);
	r = admit(st, &req);
	CHECK(r.admitted && r.st[0].reserved == 20 && r.st[1].reserved == 20);
	CHECK(strncmp(cmd("HGET tollgate:v1:inf:%s %s", k, ""), "20:", 3) == 0);
	req_init(&req, "d2", 600000, false);
	req_rate(&req, k, 25, 60000, 10);
	req_rate(&req, k, 25, 60000, 10);
	r = admit(st, &req);
	CHECK(!r.admitted && r.refused == 1 && r.st[1].reserved == 30);   /* 20 + its own 10 */
	CHECK(settle(st, "d1", 3, 0) == STORE_SETTLED);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:inf:%s", k), "0") == 0);      /* emptied: gone */
	r = admit1(st, "d3", k, 100, 60000, 1, false);
	CHECK(r.admitted && r.st[0].used == 6);
	close_store(st);
}

/* AUTH (password, or ACL user + password) and SELECT, sent before
 * anything else on every connection; a wrong password is a failure that
 * opens the breaker, never a hang: the connection is dropped and tried
 * again with backoff, and gets in once Redis takes the password. */
CASE(auth_and_select)
{
	struct tg_store_cfg cfg;
	char err[256];
	struct store *st;
	struct store_admit_res r;
	struct admit_out o;
	struct store_admit_req req;
	struct store_redis_stats s;
	ev_tstamp t0;

	CHECK(strcmp(cmd("ACL SETUSER tg on >tg-pass ~* &* +@all"), "OK") == 0);
	CHECK(strcmp(cmd("CONFIG SET requirepass s3cret"), "OK") == 0);
	memset(&cfg, 0, sizeof(cfg));
	cfg.host = "127.0.0.1";
	cfg.port = (uint16_t)redis_port;
	cfg.timeout_ms = 1000;
	cfg.failure_mode = TG_FAIL_CLOSED;
	cfg.breaker_threshold = 2;
	cfg.breaker_cooldown_ms = 1000;
	cfg.password = "s3cret";
	cfg.db = 2;
	st = store_redis_open(loop, &cfg, NULL, err, sizeof(err));
	RUN_UNTIL(st && ready(st), 3);
	CHECK(st && ready(st));
	r = admit1(st, "a1", "tollgate:{a}:rl:r:0:k:60000", 10, 60000, 1, false);
	CHECK(r.err == 0 && r.admitted);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:res:a1"), "0") == 0);       /* not in db 0 */
	CHECK(strcmp(cmd("SELECT 2"), "OK") == 0);
	CHECK(strcmp(cmd("EXISTS tollgate:v1:res:a1"), "1") == 0);
	CHECK(strcmp(cmd("SELECT 0"), "OK") == 0);
	close_store(st);
	/* an ACL user */
	cfg.username = "tg";
	cfg.password = "tg-pass";
	cfg.db = 0;
	st = store_redis_open(loop, &cfg, NULL, err, sizeof(err));
	RUN_UNTIL(st && ready(st), 3);
	CHECK(admit1(st, "a2", "tollgate:{a}:rl:r:0:k:60000", 10, 60000, 1, false).admitted);
	close_store(st);
	/* a wrong password: Redis refuses who we are (WRONGPASS), so the
	 * connection is dropped and tried again, AUTH included; the calls fail
	 * either way (an error reply, or not sent for want of a connection) */
	cfg.username = NULL;
	cfg.password = "wrong";
	t0 = ev_time();
	st = store_redis_open(loop, &cfg, NULL, err, sizeof(err));
	RUN_UNTIL(st && stats(st).connected, 3);
	for (int i = 0; i < 3; i++) {
		req_init(&req, "a3", 600000, false);
		req_rate(&req, "tollgate:{a}:rl:r:0:k:60000", 10, 60000, 1);
		admit_start(st, &req, &o);
		RUN_UNTIL(o.calls > 0, 2);
		CHECK(o.calls == 1 && o.res.err == -1);                   /* closed */
	}
	s = stats(st);
	CHECK(s.breaker == STORE_REDIS_OPEN && s.errors + s.rejected >= 2);
	CHECK(s.fallback_closed == 3);
	/* with backoff (50 ms doubling), which a TCP connect does not reset:
	 * 5 retries take 1.55 s, not 5 x 50 ms */
	RUN_UNTIL(stats(st).reconnects >= 5, 4);
	s = stats(st);
	CHECK(s.reconnects >= 5 && s.connects >= 5 && ev_time() - t0 >= 1.5);
	/* Redis now wants that password: the next attempt gets in */
	CHECK(strcmp(cmd("CONFIG SET requirepass wrong"), "OK") == 0);
	RUN_UNTIL(ready(st), 5);
	CHECK(ready(st));
	r = admit1(st, "a4", "tollgate:{a}:rl:r:0:k:60000", 10, 60000, 1, false);
	CHECK(r.err == 0 && r.admitted);
	close_store(st);
	CHECK(strcmp(cmd("CONFIG SET requirepass %s", ""), "OK") == 0);
	CHECK(strcmp(cmd("ACL DELUSER tg"), "1") == 0);
}

/* Higress's key, a plain integer: GET/SET/INCRBY from either side. */
CASE(quota_balance)
{
	struct store *st = open_default();
	struct store_admit_req req;
	struct store_admit_res r;
	struct quota_out q;

	CHECK(st != NULL);
	if (!st)
		return;
	q = quota(st, QGET, "chat_quota:nobody", 0);
	CHECK(q.err == 0 && q.balance == 0);
	q = quota(st, QSET, "chat_quota:alice", 100);
	CHECK(q.err == 0 && q.balance == 100);
	CHECK(strcmp(cmd("GET chat_quota:alice"), "100") == 0);
	q = quota(st, QADD, "chat_quota:alice", -30);
	CHECK(q.err == 0 && q.balance == 70);
	CHECK(strcmp(cmd("INCRBY chat_quota:alice 5"), "75") == 0);   /* Higress side */
	q = quota(st, QGET, "chat_quota:alice", 0);
	CHECK(q.err == 0 && q.balance == 75);
	/* admission reserves, settlement decrements by the real (weighted) tokens */
	req_init(&req, "q1", 600000, false);
	req_quota(&req, "chat_quota:alice", 50, 1, 2);
	r = admit(st, &req);
	CHECK(r.admitted && r.st[0].reserved == 50 && r.st[0].remaining == 25 && r.st[0].used == 0);
	q = quota(st, QGET, "chat_quota:alice", 0);
	CHECK(q.balance == 75);                                       /* a reservation is not spent */
	CHECK(settle(st, "q1", 10, 5) == STORE_SETTLED);              /* 10*1 + 5*2 */
	CHECK(strcmp(cmd("GET chat_quota:alice"), "55") == 0);
	/* weights: ceil, and no float noise (0.1 * 30 = 3.0000000000000004) */
	req_init(&req, "q2", 600000, false);
	req_quota(&req, "chat_quota:alice", 1, 0.1, 0.25);
	CHECK(admit(st, &req).admitted);
	CHECK(settle(st, "q2", 30, 3) == STORE_SETTLED);              /* 3 + 0.75 -> 4 */
	CHECK(strcmp(cmd("GET chat_quota:alice"), "51") == 0);
	/* strict: balance - reserved - estimate >= 0 */
	req_init(&req, "q3", 600000, true);
	req_quota(&req, "chat_quota:alice", 52, 1, 1);
	r = admit(st, &req);
	CHECK(!r.admitted && r.refused == 0 && r.st[0].remaining == 51);
	/* no balance: refused */
	req_init(&req, "q4", 600000, false);
	req_quota(&req, "chat_quota:nobody", 1, 1, 1);
	r = admit(st, &req);
	CHECK(!r.admitted && r.refused == 0 && r.st[0].remaining == 0);
	CHECK(strcmp(cmd("SET chat_quota:bad notanumber"), "OK") == 0);
	q = quota(st, QGET, "chat_quota:bad", 0);
	CHECK(q.err == -1);
	CHECK(stats(st).breaker == STORE_REDIS_CLOSED);               /* one bad key: no breaker */
	close_store(st);
}

CASE(noscript_recovery)
{
	struct store *st = open_default();
	const char *k = "tollgate:{x}:rl:r:0:k:60000";

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "x1", k, 1000, 60000, 10, false).admitted);
	CHECK(strcmp(cmd("SCRIPT FLUSH"), "OK") == 0);
	CHECK(admit1(st, "x2", k, 1000, 60000, 10, false).admitted);
	CHECK(stats(st).noscript == 1);
	CHECK(settle(st, "x1", 1, 1) == STORE_SETTLED);
	CHECK(stats(st).noscript == 2);
	CHECK(strcmp(cmd("SCRIPT FLUSH"), "OK") == 0);
	CHECK(settle(st, "x2", 1, 1) == STORE_SETTLED);
	CHECK(admit1(st, "x3", k, 1000, 60000, 1, false).st[0].used == 4);
	CHECK(stats(st).noscript == 4);
	CHECK(stats(st).errors == 0);
	close_store(st);
}

static int count_calls(const struct admit_out *o, int n)
{
	int sum = 0;

	for (int i = 0; i < n; i++)
		sum += o[i].calls;
	return sum;
}

/* The calls of one loop iteration go in one batch script call: each is
 * answered as it would be alone, a call whose script fails (a quota key
 * holding a hash: WRONGTYPE) fails alone, and a batch Redis lost its
 * scripts for (SCRIPT FLUSH) is sent again, once, after loading them. */
CASE(batch_answers_each_call_as_alone)
{
	struct store *st = open_default();
	struct store_admit_req req[4];
	struct admit_out o[4];
	struct store_redis_stats s0, s1;

	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(admit1(st, "bt-warm", "tollgate:{bt}:rl:r:0:k:60000", 1000, 60000, 1, false).admitted);
	CHECK(strcmp(cmd("SET chat_quota:bt-ok 100"), "OK") == 0);
	CHECK(strcmp(cmd("HSET chat_quota:bt-hash f 1"), "1") == 0);
	for (int i = 0; i < 4; i++) {
		char rid[64];

		snprintf(rid, sizeof(rid), "bt-%d", i);
		req_init(&req[i], rid, 600000, false);
		req_rate(&req[i], "tollgate:{bt}:rl:r:0:k:60000", 1000, 60000, 10);
		req_quota(&req[i], i == 2 ? "chat_quota:bt-hash" : "chat_quota:bt-ok", 10, 1, 1);
	}
	s0 = stats(st);
	for (int i = 0; i < 4; i++)
		admit_start(st, &req[i], &o[i]);
	RUN_UNTIL(count_calls(o, 4) == 4, 2);
	s1 = stats(st);
	CHECK(s1.batches == s0.batches + 1 && s1.batched == s0.batched + 4);
	for (int i = 0; i < 4; i++)
		CHECK(o[i].calls == 1 && (i == 2 ? o[i].res.err == -1 : o[i].res.admitted));
	CHECK(o[3].res.st[0].reserved == 31 && o[3].res.st[1].remaining == 70);
	CHECK(s1.errors == s0.errors + 1);
	/* the settlements of one iteration, in one batch too */
	{
		struct settle_out so[3];

		for (int i = 0; i < 3; i++) {
			issued++;
			memset(&so[i], 0, sizeof(so[i]));
			so[i].t0 = ev_time();
			st->ops->settle(st->impl, req[i == 2 ? 3 : i].rid, 5, 5, settle_cb, &so[i]);
		}
		RUN_UNTIL(so[0].calls + so[1].calls + so[2].calls == 3, 2);
		for (int i = 0; i < 3; i++)
			CHECK(so[i].calls == 1 && so[i].rc == STORE_SETTLED);
		CHECK(stats(st).batches == s1.batches + 1);
		CHECK(strcmp(cmd("GET chat_quota:bt-ok"), "70") == 0);
	}
	/* Redis lost its scripts: the batch comes back NOSCRIPT, each call is
	 * sent again once the scripts are loaded */
	CHECK(strcmp(cmd("SCRIPT FLUSH"), "OK") == 0);
	s0 = stats(st);
	for (int i = 0; i < 3; i++) {
		snprintf(req[i].rid, sizeof(req[i].rid), "bt-again-%d", i);
		req[i].n = 1;
		admit_start(st, &req[i], &o[i]);
	}
	RUN_UNTIL(count_calls(o, 3) == 3, 2);
	for (int i = 0; i < 3; i++)
		CHECK(o[i].calls == 1 && o[i].res.admitted && o[i].res.err == 0);
	CHECK(stats(st).noscript == s0.noscript + 3 && stats(st).errors == s0.errors);
	close_store(st);
}

/* 3 connections, 200 admissions pipelined against one budget: what is
 * admitted beyond the limit is at most one request. */
static void race(const char *key, bool strict, int64_t limit, int64_t est, int *n_admitted)
{
	struct store *st[3];
	static struct admit_out o[200];
	struct store_admit_req req;
	int done = 0, adm = 0;

	for (int i = 0; i < 3; i++)
		st[i] = open_default();
	CHECK(st[0] && st[1] && st[2]);
	if (!st[0] || !st[1] || !st[2])
		goto out;
	for (int i = 0; i < 200; i++) {
		char rid[64];

		snprintf(rid, sizeof(rid), "race-%s-%d", strict ? "s" : "n", i);
		req_init(&req, rid, 600000, strict);
		req_rate(&req, key, limit, 60000, est);
		admit_start(st[i % 3], &req, &o[i]);
	}
	RUN_UNTIL((done = count_calls(o, 200)) == 200, 5);
	for (int i = 0; i < 200; i++) {
		CHECK(o[i].calls == 1 && o[i].res.err == 0);
		adm += o[i].res.admitted;
	}
	*n_admitted = adm;
out:
	for (int i = 0; i < 3; i++)
		close_store(st[i]);
}

CASE(concurrency_three_connections)
{
	int adm = 0;

	race("tollgate:{c}:rl:r:0:k:60000", false, 1000, 7, &adm);
	CHECK(adm * 7 >= 1000 && adm * 7 < 1000 + 7);     /* 143: overshoot 1 < one request */
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:tollgate:{c}:rl:r:0:k:60000"), "144") == 0);
	CHECK(strncmp(cmd("HGET tollgate:v1:inf:tollgate:{c}:rl:r:0:k:60000 %s", ""), "1001:", 5) == 0);
	race("tollgate:{c}:rl:r:0:strict:60000", true, 1000, 7, &adm);
	CHECK(adm == 142);                                  /* 994 <= 1000 */
}

/* ---- failure ------------------------------------------------------------ */

static bool breaker_is(struct store *st, enum store_redis_breaker b)
{
	return stats(st).breaker == b;
}

/* Redis dies (SIGKILL): every call is answered within its deadline by the
 * failure mode, the breaker opens, and after a restart on the same port the
 * store is back to global and replays what it queued. */
CASE(redis_killed)
{
	struct fake f;
	struct store local = { &fake_ops, &f };
	struct store *st = NULL, *st_open = NULL, *st_closed = NULL;
	struct store_admit_req req;
	struct store_admit_res r;
	struct admit_out o;
	struct settle_out so;
	struct store_redis_stats s;
	const char *k = "tollgate:{k}:rl:r:0:k:60000";
	const double deadline = 0.05, margin = 0.03 * tscale;
	double worst = 0;

	memset(&f, 0, sizeof(f));
	st = open_store(TG_FAIL_LOCAL, &local, 50, 3, 300);
	st_open = open_store(TG_FAIL_OPEN, NULL, 50, 3, 300);
	st_closed = open_store(TG_FAIL_CLOSED, NULL, 50, 3, 300);
	CHECK(st && st_open && st_closed);
	if (!st || !st_open || !st_closed)
		goto out;
	store_redis_set_local_share(st, 1. / 3);
	CHECK(admit1(st, "k-redis", k, 1000, 60000, 10, false).admitted);   /* global */
	CHECK(f.admits == 0);

	redis_kill();
	for (int i = 0; i < 10; i++) {          /* local: rate share, quota remembered */
		char rid[64];

		snprintf(rid, sizeof(rid), "k-local-%d", i);
		req_init(&req, rid, 600000, false);
		req_rate(&req, k, 1000, 60000, 10);
		req_quota(&req, "chat_quota:k", 10, 1, 1);
		admit_start(st, &req, &o);
		RUN_UNTIL(o.calls > 0, 1);
		CHECK(o.calls == 1 && o.res.err == 0 && o.res.admitted && o.res.refused == -1);
		if (o.t - o.t0 > worst)
			worst = o.t - o.t0;
	}
	CHECK(worst <= deadline + margin);
	CHECK(f.admits == 10);
	CHECK(f.last.n == 1 && f.last.b[0].limit == 334);              /* ceil(1000 / 3) */
	s = stats(st);
	CHECK(s.breaker == STORE_REDIS_OPEN && s.breaker_opens == 1);
	CHECK(s.fallback_local == 10 && s.local_rids == 10);
	/* open and closed modes */
	for (int i = 0; i < 4; i++) {
		admit_start(st_open, &req, &o);
		RUN_UNTIL(o.calls > 0, 1);
		CHECK(o.calls == 1 && o.res.err == 0 && o.res.admitted);
		CHECK(o.t - o.t0 <= deadline + margin);
		admit_start(st_closed, &req, &o);
		RUN_UNTIL(o.calls > 0, 1);
		CHECK(o.calls == 1 && o.res.err == -1 && !o.res.admitted);
		CHECK(o.t - o.t0 <= deadline + margin);
	}
	CHECK(stats(st_open).fallback_open == 4 && stats(st_closed).fallback_closed == 4);
	/* a plugin's failure_mode overrides the store's, per request */
	req.failure_mode = TG_FAIL_CLOSED;
	admit_start(st_open, &req, &o);
	RUN_UNTIL(o.calls > 0, 1);
	CHECK(o.calls == 1 && o.res.err == -1 && !o.res.admitted);
	req.failure_mode = TG_FAIL_OPEN;
	admit_start(st_closed, &req, &o);
	RUN_UNTIL(o.calls > 0, 1);
	CHECK(o.calls == 1 && o.res.err == 0 && o.res.admitted);
	req.failure_mode = -1;
	CHECK(stats(st_open).fallback_closed == 1 && stats(st_closed).fallback_open == 1);
	/* quota admin never goes local */
	CHECK(quota(st, QGET, "chat_quota:k", 0).err == -1);
	/* settlements: the local one locally (its quota charge queued), the
	 * Redis one queued */
	CHECK(settle(st, "k-local-0", 7, 3) == STORE_SETTLED);
	CHECK(settle(st, "k-local-0", 7, 3) == STORE_DUPLICATE);
	CHECK(f.settles == 2);
	settle_start(st, "k-redis", 5, 5, &so);
	RUN_UNTIL(so.calls > 0, 1);
	CHECK(so.calls == 1 && so.rc == STORE_QUEUED && so.t - so.t0 <= deadline + margin);
	s = stats(st);
	CHECK(s.queue_len == 2 && s.queued == 2 && s.settled_local == 2);

	/* Redis back on the same port: global again within a few seconds */
	CHECK(redis_start() == 0);
	RUN_UNTIL(ready(st) && stats(st).queue_len == 0, 5);
	s = stats(st);
	CHECK(s.breaker == STORE_REDIS_CLOSED && s.connected && s.connects == 2);
	CHECK(s.queue_len == 0 && s.replayed == 2 && s.dropped == 0);
	/* the restarted Redis lost everything (no persistence): the quota charge
	 * still lands (10 tokens from 0), the settlement finds no reservation */
	CHECK(strcmp(cmd("GET chat_quota:k"), "-10") == 0);
	r = admit1(st, "k-after", k, 1000, 60000, 10, false);
	CHECK(r.admitted && r.err == 0);
	CHECK(stats(st).fallback_local == 10);                          /* decided by Redis */
	RUN_UNTIL(ready(st_open) && ready(st_closed), 5);
	CHECK(ready(st_open) && ready(st_closed));
out:
	close_store(st);
	close_store(st_open);
	close_store(st_closed);
}

/* Redis hangs (SIGSTOP): calls time out at their deadline, the breaker
 * opens, settlements queue; when it resumes, the probe closes the breaker,
 * the queue replays into the same data, and admissions Redis made after
 * their deadline are released. */
CASE(redis_paused)
{
	struct fake f;
	struct store local = { &fake_ops, &f };
	struct store *st;
	struct store_admit_req req;
	struct admit_out o[6];
	struct settle_out so;
	struct store_redis_stats s;
	const char *k = "tollgate:{p}:rl:r:0:k:60000";
	const double deadline = 0.05, margin = 0.03 * tscale;

	memset(&f, 0, sizeof(f));
	st = open_store(TG_FAIL_LOCAL, &local, 50, 3, 200);
	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(strcmp(cmd("SET chat_quota:p 1000"), "OK") == 0);
	req_init(&req, "p-redis", 600000, false);
	req_rate(&req, k, 1000, 60000, 10);
	req_quota(&req, "chat_quota:p", 10, 1, 1);
	CHECK(admit(st, &req).admitted);

	redis_signal(SIGSTOP);
	for (int i = 0; i < 6; i++) {
		snprintf(req.rid, sizeof(req.rid), "p-late-%d", i);
		admit_start(st, &req, &o[i]);
		RUN_UNTIL(o[i].calls > 0, 1);
		CHECK(o[i].calls == 1 && o[i].res.admitted && o[i].res.err == 0);
		if (i < 3)               /* sent, timed out */
			CHECK(o[i].t - o[i].t0 >= deadline - 0.001 &&
			      o[i].t - o[i].t0 <= deadline + margin);
		else                     /* breaker open: at once */
			CHECK(o[i].t - o[i].t0 < 0.005 * tscale);
	}
	s = stats(st);
	CHECK(s.timeouts == 3 && s.breaker != STORE_REDIS_CLOSED && s.fallback_local == 6);
	settle_start(st, "p-redis", 100, 20, &so);
	RUN_UNTIL(so.calls > 0, 1);
	CHECK(so.calls == 1 && so.rc == STORE_QUEUED && so.t - so.t0 < 0.005 * tscale);
	CHECK(stats(st).queue_len == 1);
	/* its second settlement (the record after the SPOP message) while the
	 * first waits: a duplicate, as Redis will answer it, not queued again */
	CHECK(settle(st, "p-redis", 100, 20) == STORE_DUPLICATE);
	CHECK(stats(st).queue_len == 1 && stats(st).queued == 1);

	redis_signal(SIGCONT);
	RUN_UNTIL(breaker_is(st, STORE_REDIS_CLOSED) && stats(st).queue_len == 0 &&
	          stats(st).released == 3, 5);
	s = stats(st);
	CHECK(s.breaker == STORE_REDIS_CLOSED && s.queue_len == 0 && s.replayed == 1);
	CHECK(s.late_replies >= 3 && s.released == 3);
	CHECK(s.connects == 1);                              /* same connection */
	RUN_UNTIL(strcmp(cmd("HLEN tollgate:v1:inf:%s", k), "0") == 0, 2);
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:%s", k), "0") == 0);   /* nothing leaked */
	CHECK(strcmp(cmd("HLEN tollgate:v1:inf:chat_quota:p"), "0") == 0);
	CHECK(strcmp(cmd("GET chat_quota:p"), "880") == 0);  /* 1000 - 120, exactly once */
	CHECK(settle(st, "p-redis", 100, 20) == STORE_DUPLICATE);
	close_store(st);
}

/* failure_mode local and a quota: what Redis last said the balance had
 * left (an admission's answer, a quota call), less what was admitted
 * locally since, is enforced; a quota Redis never spoke of is admitted
 * unchecked; every local admission's charge still reaches Redis. */
CASE(local_quota_last_known_balance)
{
	struct fake f;
	struct store local = { &fake_ops, &f };
	struct store *st;
	struct store_admit_req req;
	struct store_admit_res r;
	int adm = 0, refused = 0;

	memset(&f, 0, sizeof(f));
	st = open_store(TG_FAIL_LOCAL, &local, 50, 2, 200);
	CHECK(st != NULL);
	if (!st)
		return;
	CHECK(quota(st, QSET, "chat_quota:kq", 35).err == 0);     /* known: 35 */
	req_init(&req, "kq-redis", 600000, false);
	req_quota(&req, "chat_quota:kq", 10, 1, 1);
	CHECK(admit(st, &req).admitted);                            /* Redis: 25 left */

	redis_signal(SIGSTOP);
	for (int i = 0; i < 6; i++) {          /* 25, 15, 5 admitted; -5 refused */
		snprintf(req.rid, sizeof(req.rid), "kq-local-%d", i);
		r = admit(st, &req);
		CHECK(r.err == 0);
		if (r.admitted) {
			adm++;
		} else {
			refused++;
			CHECK(r.refused == 0 && r.st[0].remaining == -5);
		}
	}
	CHECK(adm == 3 && refused == 3);
	CHECK(stats(st).fallback_local == 6 && stats(st).refused_local == 3);
	/* strict: the estimate must fit; a key Redis never spoke of passes */
	req_init(&req, "kq-strict", 600000, true);
	req_quota(&req, "chat_quota:kq", 1, 1, 1);
	CHECK(!admit(st, &req).admitted);
	req_init(&req, "kq-unknown", 600000, true);
	req_quota(&req, "chat_quota:never-seen", 1000, 1, 1);
	CHECK(admit(st, &req).admitted);
	for (int i = 0; i < 3; i++) {
		char rid[64];

		snprintf(rid, sizeof(rid), "kq-local-%d", i);
		CHECK(settle(st, rid, 4, 4) == STORE_SETTLED);      /* 8 each, charged later */
	}
	redis_signal(SIGCONT);
	RUN_UNTIL(breaker_is(st, STORE_REDIS_CLOSED) && stats(st).queue_len == 0, 5);
	CHECK(stats(st).queue_len == 0);
	/* 35 - 24 charged; the Redis reservation (10) still held */
	CHECK(strcmp(cmd("GET chat_quota:kq"), "11") == 0);
	CHECK(quota(st, QGET, "chat_quota:kq", 0).balance == 11);
	close_store(st);
}

/* The real embedded store as the fallback: its share of a limit holds. */
CASE(local_fallback_store_mem)
{
	char dir[] = "/tmp/tg-redis-test-XXXXXX", err[256];
	struct store *mem, *st;
	struct store_admit_res r;
	const char *k = "tollgate:{m}:rl:r:0:k:60000";
	int adm = 0;

	if (!mkdtemp(dir)) {
		CHECK(!"mkdtemp failed");
		return;
	}
	mem = store_mem_open(dir, err, sizeof(err));
	CHECK(mem != NULL);
	if (!mem)
		return;
	st = open_store(TG_FAIL_LOCAL, mem, 50, 2, 200);
	store_redis_set_local_share(st, 0.5);
	redis_kill();
	for (int i = 0; i < 10; i++) {
		char rid[64];

		snprintf(rid, sizeof(rid), "m%d", i);
		r = admit1(st, rid, k, 100, 60000, 20, false);   /* local limit 50 */
		CHECK(r.err == 0);
		adm += r.admitted;
	}
	CHECK(adm == 3);                                     /* 0, 20, 40 < 50 */
	CHECK(settle(st, "m0", 10, 0) == STORE_SETTLED);
	CHECK(settle(st, "m0", 10, 0) == STORE_DUPLICATE);
	CHECK(stats(st).fallback_local == 10 && stats(st).queue_len == 0);
	CHECK(redis_start() == 0);
	RUN_UNTIL(ready(st), 5);
	CHECK(ready(st));
	r = admit1(st, "m-global", k, 100, 60000, 20, false);
	CHECK(r.admitted && r.st[0].reserved == 20);         /* Redis's view, not the local one */
	close_store(st);
	mem->ops->free(mem->impl);
	{
		char rm[128];

		snprintf(rm, sizeof(rm), "rm -rf %s", dir);
		CHECK(system(rm) == 0);
	}
}

/* The window's "" field ("sum:low", store_redis.h) is what an admission
 * reads while no sub-window has slid out: after every step of a random walk
 * (clock jumps from 0 to 75 s, strict or not, settlements of 0 to 80 tokens)
 * the Redis store answers exactly as store_mem on the same clock, and ""
 * holds the sum and the lowest index of the hash's sub-windows. */
static int64_t diff_now;

static int64_t diff_clock(void *arg)
{
	(void)arg;
	return diff_now;
}

static void check_window_field(const char *key)
{
	redisReply *r = rc ? redisCommand(rc, "HGETALL %s", key) : NULL;
	long long sum = 0, low = -1, agg_sum = -1, agg_low = -1;

	CHECK(r && r->type == REDIS_REPLY_ARRAY);
	if (!r || r->type != REDIS_REPLY_ARRAY) {
		if (r)
			freeReplyObject(r);
		return;
	}
	for (size_t j = 0; j + 1 < r->elements; j += 2) {
		const char *f = r->element[j]->str, *v = r->element[j + 1]->str;

		if (!*f) {
			CHECK(sscanf(v, "%lld:%lld", &agg_sum, &agg_low) == 2);
		} else {
			sum += atoll(v);
			if (low < 0 || atoll(f) < low)
				low = atoll(f);
		}
	}
	if (r->elements > 0) {
		CHECK(agg_sum == sum && agg_low == low);
		if (agg_sum != sum || agg_low != low)
			fprintf(stderr, "  %s: \"\" says %lld:%lld, fields %lld:%lld\n",
			        key, agg_sum, agg_low, sum, low);
	}
	freeReplyObject(r);
}

CASE(window_sum_matches_store_mem)
{
	char dir[] = "/tmp/tg-redis-test-XXXXXX", err[256], rm[128];
	struct store *mem, *st = open_default();
	const char *keys[2] = { "tollgate:{df}:rl:r:0:k:60000", "tollgate:{df}:rl:r:0:k:1000" };
	const int64_t wins[2] = { 60000, 1000 }, limits[2] = { 500, 60 };
	unsigned seed = 7;
	int mismatches = 0, admitted = 0;

	CHECK(st != NULL && mkdtemp(dir) != NULL);
	if (!st)
		return;
	mem = store_mem_open(dir, err, sizeof(err));
	CHECK(mem != NULL);
	if (!mem) {
		close_store(st);
		return;
	}
	store_mem_set_clock(mem, diff_clock, NULL);
	diff_now = 3000000;
	for (int i = 0; i < 600 && mismatches < 5; i++) {
		int b = rand_r(&seed) % 2, jump = rand_r(&seed) % 100;
		int64_t est = 1 + rand_r(&seed) % 30;
		bool strict = rand_r(&seed) % 2;
		struct store_admit_res rr, rm_;
		char rid[32];

		diff_now += jump < 60 ? rand_r(&seed) % (b ? 40 : 1500)
		          : jump < 97 ? rand_r(&seed) % (b ? 400 : 20000) : 75000;
		store_redis_set_test_clock(st, diff_now);
		snprintf(rid, sizeof(rid), "df%d", i);
		rr = admit1(st, rid, keys[b], limits[b], wins[b], est, strict);
		rm_ = admit1(mem, rid, keys[b], limits[b], wins[b], est, strict);
		if (rr.admitted != rm_.admitted || rr.st[0].used != rm_.st[0].used ||
		    rr.st[0].remaining != rm_.st[0].remaining || rr.st[0].reset_ms != rm_.st[0].reset_ms) {
			mismatches++;
			fprintf(stderr, "  step %d at %lld: redis %d used %lld rem %lld reset %lld, "
			        "mem %d used %lld rem %lld reset %lld\n", i, (long long)diff_now,
			        rr.admitted, (long long)rr.st[0].used, (long long)rr.st[0].remaining,
			        (long long)rr.st[0].reset_ms, rm_.admitted, (long long)rm_.st[0].used,
			        (long long)rm_.st[0].remaining, (long long)rm_.st[0].reset_ms);
		}
		if (rr.admitted) {
			int64_t in = rand_r(&seed) % 50, out = rand_r(&seed) % 31;

			admitted++;
			CHECK(settle(st, rid, in, out) == STORE_SETTLED);
			CHECK(settle(mem, rid, in, out) == STORE_SETTLED);
		}
		check_window_field("tollgate:v2:win:tollgate:{df}:rl:r:0:k:60000");
		check_window_field("tollgate:v2:win:tollgate:{df}:rl:r:0:k:1000");
	}
	CHECK(mismatches == 0);
	CHECK(admitted > 100 && admitted < 590);       /* both admissions and refusals */
	store_redis_set_test_clock(st, -1);
	close_store(st);
	mem->ops->free(mem->impl);
	snprintf(rm, sizeof(rm), "rm -rf %s", dir);
	CHECK(system(rm) == 0);
}

/* A version 1 window (a v1 agent settles there during a rolling upgrade)
 * counts in a v2 admission, in its usage and in its reset_ms, until it
 * slides out. */
CASE(v1_window_still_counted)
{
	struct store *st = open_default();
	const char *k = "tollgate:{v}:rl:r:0:k:60000";
	struct store_admit_res r;

	CHECK(st != NULL);
	if (!st)
		return;
	cmd("HSET tollgate:v1:win:%s 199 30", k);
	store_redis_set_test_clock(st, 200000);
	r = admit1(st, "v1a", k, 100, 60000, 1, false);
	CHECK(r.admitted && r.st[0].used == 30);
	CHECK(settle(st, "v1a", 50, 0) == STORE_SETTLED);             /* into v2, idx 200 */
	CHECK(strcmp(cmd("HGET tollgate:v2:win:%s 200", k), "50") == 0);
	store_redis_set_test_clock(st, 200500);
	r = admit1(st, "v1b", k, 80, 60000, 1, false);
	CHECK(!r.admitted && r.st[0].used == 80);
	CHECK(r.st[0].reset_ms == 200000 + 60000 - 200500);           /* when v1's 30 leave */
	store_redis_set_test_clock(st, 260000);
	r = admit1(st, "v1c", k, 80, 60000, 1, false);
	CHECK(r.admitted && r.st[0].used == 50);
	CHECK(settle(st, "v1c", 0, 0) == STORE_SETTLED);
	cmd("DEL tollgate:v1:win:%s", k);
	store_redis_set_test_clock(st, -1);
	close_store(st);
}

/* Closing with calls in flight answers each of them once (err). */
CASE(close_with_calls_in_flight)
{
	struct store *st = open_default();
	struct admit_out o[20];
	struct settle_out so;
	long before = answered;

	CHECK(st != NULL);
	if (!st)
		return;
	for (int i = 0; i < 20; i++) {
		char rid[64];

		snprintf(rid, sizeof(rid), "f%d", i);
		admit_start(st, &(struct store_admit_req){ 0 }, &o[i]);   /* invalid: at once */
		CHECK(o[i].calls == 1 && o[i].res.err == -1);
		{
			struct store_admit_req req;

			req_init(&req, rid, 600000, false);
			req_rate(&req, "tollgate:{f}:rl:r:0:k:60000", 1000, 60000, 1);
			admit_start(st, &req, &o[i]);
		}
	}
	settle_start(st, "f0", 1, 1, &so);
	close_store(st);                    /* before any reply */
	for (int i = 0; i < 20; i++)
		CHECK(o[i].calls == 1 && o[i].res.err == -1);
	CHECK(so.calls == 1 && so.rc == STORE_ERROR);
	CHECK(answered - before == 41);
	run_for(0.05);
	CHECK(answered - before == 41);
}

/* Not a check: how many admissions (then settlements) per second one
 * connection carries, 256 in flight, over 1000 consumers' buckets. */
struct bench {
	struct store *st;
	bool settling;
	int started, done, total;
};

static void bench_next(struct bench *b);

static void bench_settled(enum store_settle_rc rc, void *arg)
{
	struct bench *b = arg;

	(void)rc;
	answered++;
	b->done++;
	bench_next(b);
}

static void bench_admitted(const struct store_admit_res *res, void *arg)
{
	struct bench *b = arg;

	(void)res;
	answered++;
	b->done++;
	bench_next(b);
}

static void bench_next(struct bench *b)
{
	struct store_admit_req req;
	char rid[64], key[96];
	int i = b->started;

	if (i >= b->total)
		return;
	b->started++;
	issued++;
	snprintf(rid, sizeof(rid), "bench-%d", i);
	if (b->settling) {
		b->st->ops->settle(b->st->impl, rid, 5, 5, bench_settled, b);
		return;
	}
	req_init(&req, rid, 600000, false);
	snprintf(key, sizeof(key), "tollgate:{c%d}:rl:bench:0:k:60000", i % 1000);
	req_rate(&req, key, (int64_t)1 << 40, 60000, 10);
	snprintf(key, sizeof(key), "tollgate:{c%d}:rl:bench:0:k:1000", i % 1000);
	req_rate(&req, key, (int64_t)1 << 40, 1000, 10);
	b->st->ops->admit(b->st->impl, &req, bench_admitted, b);
}

static double bench_run(struct bench *b, bool settling)
{
	ev_tstamp t0 = ev_time();

	b->settling = settling;
	b->started = b->done = 0;
	for (int i = 0; i < 256; i++)
		bench_next(b);
	RUN_UNTIL(b->done == b->total, 30);
	CHECK(b->done == b->total);
	return b->done / (ev_time() - t0);
}

/* Redis's own time per script call (INFO commandstats). */
static void print_script_cost(void)
{
	redisReply *r = rc ? redisCommand(rc, "INFO commandstats") : NULL;
	char *line, *save = NULL;

	if (!r || r->type != REDIS_REPLY_STRING) {
		if (r)
			freeReplyObject(r);
		return;
	}
	for (line = strtok_r(r->str, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save))
		if (strncmp(line, "cmdstat_evalsha:", 16) == 0)
			printf("# bench: redis side %s\n", line + 8);
	freeReplyObject(r);
}

CASE(bench_admissions_per_second)
{
	struct bench b = { open_store(TG_FAIL_CLOSED, NULL, 1000, 5, 1000), false, 0, 0, 20000 };
	double admits, settles;

	if (!b.st)
		return;
	cmd("CONFIG RESETSTAT");
	admits = bench_run(&b, false);
	printf("# bench: %d admissions (2 buckets each, 256 in flight, 1 connection): %.0f/s\n",
	       b.total, admits);
	print_script_cost();
	cmd("CONFIG RESETSTAT");
	settles = bench_run(&b, true);
	printf("# bench: %d settlements: %.0f/s\n", b.total, settles);
	print_script_cost();
	CHECK(stats(b.st).errors == 0 && stats(b.st).timeouts == 0);
	close_store(b.st);
}

/* Last: every call any case made was answered once. */
CASE(every_callback_exactly_once)
{
	run_for(0.05);
	CHECK(issued == answered);
	if (issued != answered)
		fprintf(stderr, "  %ld calls, %ld callbacks\n", issued, answered);
}

int main(void)
{
	ev_timer poke;

	if (getenv("TEST_TIME_SCALE"))
		tscale = atof(getenv("TEST_TIME_SCALE"));
	if (tscale < 1)
		tscale = 1;
	log_set_level(getenv("TEST_LOG") ? getenv("TEST_LOG") : "error");
	signal(SIGPIPE, SIG_IGN);
	loop = ev_default_loop(0);
	ev_timer_init(&poke, on_poke, 0.002, 0.002);
	ev_timer_start(loop, &poke);
	redis_port = free_port();
	if (redis_port < 0 || redis_start() != 0) {
		printf("FAIL: redis_server_starts\n");
		redis_kill();
		return 1;
	}
	RUN_ALL(connects_and_loads_scripts, admission_boundary, all_or_nothing,
	        in_flight_sum_and_window_ttl, strict,
	        sliding_window, window_sum_matches_store_mem, v1_window_still_counted,
	        lease_expiry_and_late_settlement, settle_exactly_once, rid_reused,
	        key_listed_twice, quota_balance, auth_and_select, noscript_recovery,
	        concurrency_three_connections, close_with_calls_in_flight, redis_paused, redis_killed,
	        local_quota_last_known_balance, batch_answers_each_call_as_alone,
	        local_fallback_store_mem, bench_admissions_per_second,
	        every_callback_exactly_once);
	redis_kill();
	ev_timer_stop(loop, &poke);
	ev_loop_destroy(loop);
	DONE();
}
