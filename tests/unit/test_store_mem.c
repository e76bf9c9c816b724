/* test_store_mem.c -- the embedded store (agent/store_mem.c): admission,
 * sliding windows, leases, exactly-once settlement, quotas, counters, and
 * what survives a close, a crash (a forked child that exits without closing)
 * and a torn or corrupt file.
 *
 * Every case runs in its own directory under /tmp with a fake clock that
 * starts on a minute boundary. `test_store_mem bench` prints the admit+settle
 * rate instead of running the cases.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "store_mem.h"

#define T0     1800000000000LL     /* a minute boundary (2027-01-15) */
#define MINUTE 60000

static int64_t fake_now;
static char dir[64];

static int64_t fake_clock(void *arg)
{
	(void)arg;
	return fake_now;
}

/* ---------------------------------------------------------------- helpers */

static void dir_clean(void)
{
	static const char *const names[] = { "tollgate.log", "tollgate.snap", "tollgate.snap.tmp",
	                                     "tollgate.log.tmp", "tollgate.lock", "log.bak" };
	char path[128];

	for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void dir_new(void)
{
	snprintf(dir, sizeof(dir), "/tmp/tg-store-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(2);
	}
	fake_now = T0;
}

static struct store *reopen(void)
{
	char err[512] = "";
	struct store *s = store_mem_open(dir, err, sizeof(err));

	if (!s) {
		fprintf(stderr, "  open %s: %s\n", dir, err);
		return NULL;
	}
	store_mem_set_clock(s, fake_clock, NULL);
	return s;
}

static void store_close(struct store *s)
{
	if (s)
		s->ops->free(s->impl);
}

struct bspec {
	const char *key;
	int64_t limit, window_ms, estimate;
};

static bool cb_called;
static struct store_admit_res admit_out;

static void on_admit(const struct store_admit_res *res, void *arg)
{
	(void)arg;
	cb_called = true;
	admit_out = *res;
}

static struct store_admit_res admit(struct store *s, const char *rid, bool strict, int64_t lease_ms,
                                    unsigned n, const struct bspec *b)
{
	struct store_admit_req req;

	memset(&req, 0, sizeof(req));
	snprintf(req.rid, sizeof(req.rid), "%s", rid);
	req.lease_ms = lease_ms;
	req.strict = strict;
	req.n = n;
	for (unsigned i = 0; i < n; i++) {
		snprintf(req.b[i].key, sizeof(req.b[i].key), "%s", b[i].key);
		req.b[i].limit = b[i].limit;
		req.b[i].window_ms = b[i].window_ms;
		req.b[i].estimate = b[i].estimate;
		req.b[i].w_in = req.b[i].w_out = 1.0;
	}
	cb_called = false;
	memset(&admit_out, 0xa5, sizeof(admit_out));
	s->ops->admit(s->impl, &req, on_admit, NULL);
	CHECK(cb_called);
	return admit_out;
}

/* One rate bucket "rl" (limit, 1 minute) or the quota "q" (limit < 0). */
static struct store_admit_res admit1(struct store *s, const char *rid, int64_t limit, int64_t est,
                                     bool strict)
{
	struct bspec b = { limit < 0 ? "q" : "rl", limit < 0 ? 0 : limit, limit < 0 ? 0 : MINUTE, est };

	return admit(s, rid, strict, 30000, 1, &b);
}

static void on_settle(enum store_settle_rc rc, void *arg)
{
	*(int *)arg = (int)rc;
}

static int settle(struct store *s, const char *rid, int64_t in, int64_t out)
{
	int rc = 99;

	s->ops->settle(s->impl, rid, in, out, on_settle, &rc);
	return rc;
}

struct qres {
	int err;
	int64_t balance;
};

static void on_quota(int err, int64_t balance, void *arg)
{
	struct qres *q = arg;

	q->err = err;
	q->balance = balance;
}

static int64_t qget(struct store *s, const char *key)
{
	struct qres q = { 99, -1 };

	s->ops->quota_get(s->impl, key, on_quota, &q);
	CHECK(q.err == 0);
	return q.balance;
}

static int64_t qset(struct store *s, const char *key, int64_t v)
{
	struct qres q = { 99, -1 };

	s->ops->quota_set(s->impl, key, v, on_quota, &q);
	CHECK(q.err == 0);
	return q.balance;
}

static int64_t qadd(struct store *s, const char *key, int64_t d)
{
	struct qres q = { 99, -1 };

	s->ops->quota_add(s->impl, key, d, on_quota, &q);
	CHECK(q.err == 0);
	return q.balance;
}

struct cfind {
	const char *name;
	int64_t value;
	int seen;
};

static void on_counter(const char *name, int64_t value, void *arg)
{
	struct cfind *f = arg;

	if (strcmp(name, f->name) == 0) {
		f->value = value;
		f->seen++;
	}
}

static int64_t counter(struct store *s, const char *name)
{
	struct cfind f = { name, -1, 0 };

	store_mem_counter_each(s, on_counter, &f);
	CHECK(f.seen <= 1);
	return f.value;
}

static char *log_path(void)
{
	static char p[128];

	snprintf(p, sizeof(p), "%s/tollgate.log", dir);
	return p;
}

static off_t file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_size : -1;
}

static void file_append(const char *path, const void *data, size_t n)
{
	int fd = open(path, O_WRONLY | O_APPEND);

	CHECK(fd >= 0 && write(fd, data, n) == (ssize_t)n);
	if (fd >= 0)
		close(fd);
}

/* Run fn in a child that exits WITHOUT closing the store: a crash. */
static void crash_after(void (*fn)(struct store *))
{
	pid_t pid = fork();
	int status = 0;

	if (pid == 0) {
		struct store *s = reopen();

		if (!s)
			_exit(3);
		fn(s);
		store_mem_flush(s);   /* the loop iteration ended: what it acknowledged is logged */
		_exit(0);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
}

/* ------------------------------------------------------------ admission */

CASE(admission_boundary)
{
	struct store_admit_res r;
	struct store *s;

	dir_new();
	s = reopen();
	r = admit1(s, "r1", 5, 100, false);
	CHECK(r.err == 0 && r.admitted && r.refused == -1);
	CHECK(r.st[0].used == 0 && r.st[0].reserved == 100 && r.st[0].remaining == 5 - 100);

	r = admit1(s, "r2", 5, 100, false);                 /* r1 in flight */
	CHECK(r.err == 0 && !r.admitted && r.refused == 0);
	CHECK(r.st[0].used == 0 && r.st[0].reserved == 100);
	CHECK(r.st[0].reset_ms == MINUTE + 1000);           /* if r1 settled now */

	CHECK(settle(s, "r1", 3, 4) == STORE_SETTLED);      /* 7 tokens */
	fake_now += 1500;
	r = admit1(s, "r3", 5, 100, false);
	CHECK(!r.admitted && r.refused == 0);
	CHECK(r.st[0].used == 7 && r.st[0].reserved == 0 && r.st[0].remaining == -2);
	CHECK(r.st[0].reset_ms == MINUTE + 1000 - 1500);    /* the 7 slide out at T0+61 s */

	r = admit1(s, "r4", 8, 100, false);                 /* another limit: 7 < 8 */
	CHECK(r.admitted);
	store_close(s);
	dir_clean();
}

CASE(all_or_nothing)
{
	struct bspec b[3] = {
		{ "a", 100, MINUTE, 20 },
		{ "b", 10, 1000, 20 },      /* a second's window: already used up below */
		{ "q", 0, 0, 20 },
	};
	struct store_admit_res r;
	struct store *s;

	dir_new();
	s = reopen();
	qset(s, "q", 1000);
	r = admit(s, "fill", false, 30000, 1, &b[1]);
	CHECK(r.admitted);
	CHECK(settle(s, "fill", 10, 0) == STORE_SETTLED);

	r = admit(s, "x", false, 30000, 3, b);
	CHECK(r.err == 0 && !r.admitted && r.refused == 1);
	CHECK(r.st[0].reserved == 0 && r.st[0].remaining == 100);
	CHECK(r.st[1].used == 10 && r.st[1].remaining == 0);
	CHECK(r.st[2].remaining == 1000 && r.st[2].reset_ms == 0);
	CHECK(settle(s, "x", 1, 1) == STORE_UNKNOWN);       /* nothing was reserved */

	/* nothing reserved in "a" or "q": a strict request for all of it passes */
	b[0].estimate = 100;
	r = admit(s, "y", true, 30000, 1, &b[0]);
	CHECK(r.admitted && r.st[0].reserved == 100);
	CHECK(settle(s, "y", 0, 0) == STORE_SETTLED);

	fake_now += 2000;                                   /* "b" slides free */
	b[0].estimate = 20;
	r = admit(s, "z", false, 30000, 3, b);
	CHECK(r.admitted && r.refused == -1);
	CHECK(r.st[0].reserved == 20 && r.st[1].reserved == 20 && r.st[2].reserved == 20);
	CHECK(r.st[2].remaining == 980);
	CHECK(settle(s, "z", 5, 5) == STORE_SETTLED);
	CHECK(qget(s, "q") == 990);
	store_close(s);
	dir_clean();
}

CASE(same_key_twice_counts_twice)
{
	struct bspec b[2] = { { "k", 10, MINUTE, 6 }, { "k", 10, MINUTE, 6 } };
	struct store_admit_res r;
	struct store *s;

	dir_new();
	s = reopen();
	r = admit(s, "r", true, 30000, 2, b);               /* 6 + 6 > 10 */
	CHECK(!r.admitted && r.refused == 1);
	b[1].estimate = 4;
	r = admit(s, "r", true, 30000, 2, b);
	CHECK(r.admitted && r.st[0].reserved == 10);
	store_close(s);
	dir_clean();
}

CASE(strict_mode)
{
	struct store_admit_res r;
	struct store *s;

	dir_new();
	s = reopen();
	CHECK(admit1(s, "a", 10, 6, true).admitted);
	r = admit1(s, "b", 10, 6, true);                    /* 6 + 6 > 10 */
	CHECK(!r.admitted && r.st[0].reserved == 6 && r.st[0].remaining == 4);
	CHECK(r.st[0].reset_ms == MINUTE + 1000);
	CHECK(admit1(s, "c", 10, 4, true).admitted);        /* 6 + 4 == 10 */
	CHECK(!admit1(s, "d", 10, 0, false).admitted);      /* 10 is not < 10 */
	CHECK(admit1(s, "e", 10, 0, true).admitted);        /* 10 + 0 <= 10 */

	qset(s, "q", 10);
	CHECK(admit1(s, "f", -1, 10, true).admitted);       /* 10 - 10 >= 0 */
	r = admit1(s, "g", -1, 1, true);
	CHECK(!r.admitted && r.st[0].remaining == 0 && r.st[0].reset_ms == 0);
	CHECK(settle(s, "f", 2, 0) == STORE_SETTLED);       /* 8 left, nothing reserved */
	CHECK(!admit1(s, "h", -1, 9, true).admitted);
	CHECK(admit1(s, "i", -1, 8, true).admitted);
	store_close(s);
	dir_clean();
}

/* ---------------------------------------------------------- time windows */

CASE(sliding_window_no_double_burst)
{
	struct store_admit_res r;
	struct store *s;

	dir_new();
	s = reopen();
	fake_now = T0 + 59000;                              /* the end of one minute */
	CHECK(admit1(s, "a", 10, 10, true).admitted);
	CHECK(settle(s, "a", 10, 0) == STORE_SETTLED);

	fake_now = T0 + 61000;                              /* the start of the next */
	r = admit1(s, "b", 10, 1, true);
	CHECK(!r.admitted && r.st[0].used == 10);
	CHECK(r.st[0].reset_ms == 59000);                   /* free at T0 + 120 s */
	CHECK(!admit1(s, "c", 10, 0, false).admitted);

	fake_now = T0 + 119999;
	CHECK(!admit1(s, "d", 10, 1, true).admitted);
	fake_now = T0 + 120000;                             /* the budget is back */
	r = admit1(s, "e", 10, 10, true);
	CHECK(r.admitted && r.st[0].used == 0);
	store_close(s);
	dir_clean();
}

CASE(sliding_window_partial)
{
	struct store_admit_res r;
	struct store *s;

	dir_new();
	s = reopen();
	fake_now = T0 + 30000;
	CHECK(admit1(s, "a", 10, 1, false).admitted && settle(s, "a", 6, 0) == STORE_SETTLED);
	fake_now = T0 + 59000;
	CHECK(admit1(s, "b", 10, 1, false).admitted && settle(s, "b", 3, 0) == STORE_SETTLED);

	fake_now = T0 + 80000;                              /* both still count: 9 */
	r = admit1(s, "c", 10, 2, true);
	CHECK(!r.admitted && r.st[0].used == 9);
	CHECK(r.st[0].reset_ms == 91000 - 80000);           /* the 6 leave at T0 + 91 s */
	fake_now = T0 + 91000;                              /* only the 3 of 0:59 */
	r = admit1(s, "d", 10, 7, true);
	CHECK(r.admitted && r.st[0].used == 3 && r.st[0].remaining == 0);
	store_close(s);
	dir_clean();
}

CASE(lease_expiry_returns_budget)
{
	struct store_mem_stats st;
	struct store_admit_res r;
	struct bspec b = { "rl", 5, MINUTE, 100 };
	struct store *s;

	dir_new();
	s = reopen();
	CHECK(admit(s, "r1", false, 1000, 1, &b).admitted);
	CHECK(!admit(s, "r2", false, 1000, 1, &b).admitted);
	fake_now += 999;
	CHECK(!admit(s, "r3", false, 1000, 1, &b).admitted);
	fake_now += 1;                                      /* r1's lease ends (lazily) */
	r = admit(s, "r4", false, 1000, 1, &b);
	CHECK(r.admitted && r.st[0].reserved == 100);

	fake_now += 1000;                                   /* r4's lease ends (sweep) */
	store_mem_expire(s);
	store_mem_stats(s, &st);
	CHECK(st.reservations == 0 && st.lapsed == 2);

	CHECK(settle(s, "r1", 2, 2) == STORE_LATE);         /* still charged */
	r = admit(s, "r5", false, 1000, 1, &b);
	CHECK(r.admitted && r.st[0].used == 4);
	CHECK(settle(s, "r1", 2, 2) == STORE_DUPLICATE);
	store_close(s);
	dir_clean();
}

CASE(clock_never_goes_back)
{
	struct bspec b = { "rl", 5, MINUTE, 100 };
	struct store *s;

	dir_new();
	s = reopen();
	fake_now = T0 + 5000;
	CHECK(admit(s, "r1", false, 1000, 1, &b).admitted);       /* lease to T0 + 6 s */
	fake_now = T0;                                              /* stepped back 5 s */
	CHECK(!admit(s, "r2", false, 1000, 1, &b).admitted);
	fake_now = T0 + 5999;                                       /* held at T0 + 5 s until now */
	CHECK(!admit(s, "r3", false, 1000, 1, &b).admitted);
	fake_now = T0 + 6000;
	CHECK(admit(s, "r4", false, 1000, 1, &b).admitted);
	CHECK(settle(s, "r1", 1, 0) == STORE_LATE);
	store_close(s);
	dir_clean();
}

/* ------------------------------------------------------------ settlement */

CASE(exactly_once_settlement)
{
	struct store_mem_stats st;
	struct store *s;
	char rid[32];

	dir_new();
	s = reopen();
	qset(s, "q", 100);
	CHECK(admit1(s, "r1", -1, 50, false).admitted);
	CHECK(settle(s, "r1", 10, 20) == STORE_SETTLED);
	CHECK(qget(s, "q") == 70);
	CHECK(settle(s, "r1", 10, 20) == STORE_DUPLICATE);
	CHECK(settle(s, "r1", 99, 99) == STORE_DUPLICATE);
	CHECK(qget(s, "q") == 70);                          /* nothing changed */
	CHECK(settle(s, "nope", 1, 1) == STORE_UNKNOWN);
	CHECK(qget(s, "q") == 70);

	CHECK(admit1(s, "r2", -1, 50, false).admitted);     /* lease 30 s */
	fake_now += 31000;
	CHECK(settle(s, "r2", 5, 5) == STORE_LATE);
	CHECK(qget(s, "q") == 60);
	CHECK(settle(s, "r2", 5, 5) == STORE_DUPLICATE);

	CHECK(admit1(s, "r1", -1, 1, false).err == -1);     /* a settled rid is not reused */


	fake_now += STORE_MEM_DONE_MS - 1;                  /* r2 still remembered */
	CHECK(settle(s, "r2", 1, 1) == STORE_DUPLICATE);
	fake_now += 1;
	CHECK(settle(s, "r2", 1, 1) == STORE_UNKNOWN);      /* forgotten after 5 min */
	CHECK(qget(s, "q") == 60);

	store_mem_set_retain_max(s, 10);                    /* memory stays bounded */
	for (int i = 0; i < 100; i++) {
		snprintf(rid, sizeof(rid), "b%d", i);
		CHECK(admit1(s, rid, -1, 0, false).admitted);
		CHECK(settle(s, rid, 0, 0) == STORE_SETTLED);
	}
	store_mem_stats(s, &st);
	CHECK(st.settled == 10 && st.reservations == 0);
	CHECK(settle(s, "b99", 0, 0) == STORE_DUPLICATE);
	CHECK(settle(s, "b0", 0, 0) == STORE_UNKNOWN);

	/* no bucket (a route without plugins): a reservation of nothing, settled
	 * once, and so across a reopen (it is in the log) */
	CHECK(admit(s, "nb", false, 30000, 0, NULL).admitted);
	CHECK(admit_out.err == 0);
	store_close(s);
	s = reopen();
	CHECK(settle(s, "nb", 3, 4) == STORE_SETTLED);
	CHECK(settle(s, "nb", 3, 4) == STORE_DUPLICATE);
	CHECK(settle(s, "nb2", 3, 4) == STORE_UNKNOWN);
	store_close(s);
	dir_clean();
}

CASE(settlement_weights)
{
	struct store_admit_req req;
	struct store *s;

	dir_new();
	s = reopen();
	qset(s, "q", 1000);
	memset(&req, 0, sizeof(req));
	snprintf(req.rid, sizeof(req.rid), "w");
	req.lease_ms = 1000;
	req.n = 1;
	snprintf(req.b[0].key, sizeof(req.b[0].key), "q");
	req.b[0].estimate = 10;
	req.b[0].w_in = 0.1;
	req.b[0].w_out = 2.0;
	s->ops->admit(s->impl, &req, on_admit, NULL);
	CHECK(admit_out.admitted);
	CHECK(settle(s, "w", 30, 7) == STORE_SETTLED);      /* ceil(3 + 14) */
	CHECK(qget(s, "q") == 983);
	snprintf(req.rid, sizeof(req.rid), "w2");
	s->ops->admit(s->impl, &req, on_admit, NULL);
	CHECK(settle(s, "w2", 5, 0) == STORE_SETTLED);      /* ceil(0.5) */
	CHECK(qget(s, "q") == 982);
	store_close(s);
	dir_clean();
}

/* ----------------------------------------------------------------- quota */

CASE(quota_get_set_add)
{
	struct store_admit_res r;
	struct qres q = { 99, -1 };
	char big[STORE_KEY_MAX + 8];
	struct store *s;

	dir_new();
	s = reopen();
	CHECK(qget(s, "q") == 0);
	r = admit1(s, "r0", -1, 1, false);                  /* no quota at all */
	CHECK(!r.admitted && r.refused == 0 && r.st[0].remaining == 0);
	CHECK(qset(s, "q", 100) == 100);
	CHECK(qadd(s, "q", -30) == 70);
	CHECK(qadd(s, "q", 5) == 75);
	CHECK(qget(s, "q") == 75);

	CHECK(admit1(s, "r1", -1, 1000, false).admitted);   /* 75 > 0: the estimate may overshoot */
	CHECK(!admit1(s, "r2", -1, 1, false).admitted);     /* 75 - 1000 <= 0 */
	CHECK(settle(s, "r1", 40, 40) == STORE_SETTLED);
	CHECK(qget(s, "q") == -5);                          /* negative after settlement */
	CHECK(!admit1(s, "r3", -1, 0, false).admitted);
	CHECK(qadd(s, "q", 6) == 1);
	CHECK(admit1(s, "r4", -1, 1, false).admitted);
	CHECK(qset(s, "q", 0) == 0);
	r = admit1(s, "r5", -1, 1, false);
	CHECK(!r.admitted && r.st[0].reserved == 1 && r.st[0].remaining == -1);

	memset(big, 'k', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	s->ops->quota_set(s->impl, big, 1, on_quota, &q);
	CHECK(q.err == -1);
	store_close(s);
	dir_clean();
}

CASE(counters)
{
	struct store *s;

	dir_new();
	s = reopen();
	store_mem_counter_add(s, "tokens{dir=\"in\"}", 10);
	store_mem_counter_add(s, "tokens{dir=\"in\"}", 5);
	store_mem_counter_add(s, "tokens{dir=\"out\"}", 7);
	CHECK(counter(s, "tokens{dir=\"in\"}") == 15);
	CHECK(counter(s, "tokens{dir=\"out\"}") == 7);
	CHECK(counter(s, "absent") == -1);
	store_close(s);
	s = reopen();
	CHECK(s && counter(s, "tokens{dir=\"in\"}") == 15 && counter(s, "tokens{dir=\"out\"}") == 7);
	store_close(s);
	dir_clean();
}

/* ----------------------------------------------------------- persistence */

static void some_operations(struct store *s)
{
	qset(s, "chat_quota:alice", 1000);
	qadd(s, "chat_quota:alice", 500);
	qset(s, "chat_quota:bob", 10);
	CHECK(admit1(s, "done1", 10, 3, false).admitted);
	CHECK(settle(s, "done1", 2, 2) == STORE_SETTLED);           /* 4 in "rl" */
	CHECK(!admit1(s, "none1", -1, 3, false).admitted);          /* "q": no quota yet */
	qset(s, "q", 50);
	CHECK(admit1(s, "live1", -1, 20, false).admitted);          /* stays in flight */
	CHECK(admit1(s, "spent", -1, 20, false).admitted);
	CHECK(settle(s, "spent", 5, 6) == STORE_SETTLED);           /* q: 39 */
	store_mem_counter_add(s, "c1", 40);
	store_mem_counter_add(s, "c2", -3);
	store_mem_counter_add(s, "c1", 2);                          /* summed: one record */
}

/* A settled rid charges nothing again: known as a duplicate while its
 * settlement is in the log, unknown once a snapshot replaced the log. */
static bool no_charge(enum store_settle_rc rc)
{
	return rc == STORE_DUPLICATE || rc == STORE_UNKNOWN;
}

static void check_operations(struct store *s)
{
	struct store_admit_res r;

	CHECK(qget(s, "chat_quota:alice") == 1500);
	CHECK(qget(s, "chat_quota:bob") == 10);
	CHECK(qget(s, "q") == 39);
	CHECK(counter(s, "c1") == 42 && counter(s, "c2") == -3);
	CHECK(no_charge(settle(s, "done1", 1, 1)));
	CHECK(no_charge(settle(s, "spent", 1, 1)));
	r = admit1(s, "probe", 5, 0, true);                         /* 4 used of 5 */
	CHECK(r.admitted && r.st[0].used == 4);
	CHECK(settle(s, "probe", 0, 0) == STORE_SETTLED);
	r = admit1(s, "probe2", -1, 0, true);                       /* live1 still reserved */
	CHECK(r.admitted && r.st[0].reserved == 20 && r.st[0].remaining == 19);
	CHECK(settle(s, "probe2", 0, 0) == STORE_SETTLED);
	CHECK(settle(s, "live1", 10, 0) == STORE_SETTLED);
	CHECK(qget(s, "q") == 29);
}

CASE(persistence_close_reopen)
{
	struct store *s;

	dir_new();
	s = reopen();
	some_operations(s);
	store_close(s);
	CHECK(file_size(log_path()) < 100);                 /* close wrote a snapshot */
	s = reopen();
	CHECK(s != NULL);
	if (s)
		check_operations(s);
	store_close(s);
	dir_clean();
}

CASE(persistence_crash_replays_log)
{
	struct store *s;

	dir_new();
	crash_after(some_operations);
	CHECK(file_size(log_path()) > 200);
	s = reopen();
	CHECK(s != NULL);
	if (s) {
		CHECK(settle(s, "spent", 1, 1) == STORE_DUPLICATE);     /* from the log */
		check_operations(s);
	}
	store_close(s);
	dir_clean();
}

/* Records wait in memory until the loop iteration ends (store_mem_flush):
 * one write() for all of them, and none before. */
CASE(persistence_one_write_per_flush)
{
	struct store_mem_stats st;
	struct store *s;
	uint64_t before;

	dir_new();
	s = reopen();
	store_mem_flush(s);
	store_mem_stats(s, &st);
	before = st.log_bytes;
	some_operations(s);
	CHECK(file_size(log_path()) == (off_t)before);      /* nothing written yet */
	CHECK(store_mem_flush(s) == 0);
	store_mem_stats(s, &st);
	CHECK(st.log_bytes > before + 200 && file_size(log_path()) == (off_t)st.log_bytes);
	check_operations(s);
	/* a counter added to 1000 times between two writes: one record */
	CHECK(store_mem_flush(s) == 0);
	store_mem_stats(s, &st);
	before = st.log_bytes;
	for (int i = 0; i < 1000; i++)
		store_mem_counter_add(s, "tokens|input|r|p|m|c", 3);
	CHECK(store_mem_flush(s) == 0);
	store_mem_stats(s, &st);
	CHECK(st.log_bytes > before && st.log_bytes < before + 64);
	CHECK(counter(s, "tokens|input|r|p|m|c") == 3000);
	store_close(s);
	dir_clean();
}

CASE(persistence_leases_and_windows_use_wall_clock)
{
	struct store *s;

	dir_new();
	crash_after(some_operations);
	fake_now += 31000;                                  /* live1's lease ended meanwhile */
	s = reopen();
	CHECK(s && settle(s, "live1", 10, 0) == STORE_LATE);
	CHECK(s && qget(s, "q") == 29);
	fake_now += MINUTE;                                 /* the 4 tokens slid out */
	CHECK(s && admit1(s, "x", 5, 5, true).st[0].used == 0);
	store_close(s);
	dir_clean();
}

static void one_more(struct store *s)
{
	qadd(s, "q", 7);
}

CASE(torn_log_tail_tolerated)
{
	static const char torn_hdr[] = { 0x40, 0, 0, 0, 1, 2, 3, 4, (char)0x94, 1 };
	static const char zeros[64];
	struct store *s;
	off_t good;

	dir_new();
	crash_after(some_operations);
	good = file_size(log_path());
	file_append(log_path(), torn_hdr, sizeof(torn_hdr));    /* a frame cut short */
	s = reopen();
	CHECK(s != NULL && file_size(log_path()) == good);
	if (s)
		check_operations(s);
	store_close(s);

	crash_after(one_more);                               /* a last frame, bad checksum */
	good = file_size(log_path());
	crash_after(one_more);
	{
		int fd = open(log_path(), O_RDWR);
		char c;

		CHECK(pread(fd, &c, 1, file_size(log_path()) - 1) == 1);
		c ^= 0x55;
		CHECK(pwrite(fd, &c, 1, file_size(log_path()) - 1) == 1);
		close(fd);
	}
	s = reopen();
	CHECK(s && file_size(log_path()) == good && qget(s, "q") == 29 + 7);
	store_close(s);

	crash_after(one_more);                               /* zeros, as after a power cut */
	good = file_size(log_path());
	file_append(log_path(), zeros, sizeof(zeros));
	s = reopen();
	CHECK(s && file_size(log_path()) == good && qget(s, "q") == 29 + 14);
	store_close(s);
	dir_clean();
}

CASE(corrupt_files_are_errors)
{
	char err[512] = "", path[128];
	struct store *s;
	int fd;

	dir_new();
	crash_after(some_operations);
	fd = open(log_path(), O_RDWR);                       /* flip a byte mid-log */
	CHECK(fd >= 0 && pwrite(fd, "\xff", 1, 60) == 1);
	close(fd);
	s = store_mem_open(dir, err, sizeof(err));
	CHECK(s == NULL);
	CHECK(strstr(err, "tollgate.log") && strstr(err, "offset"));
	fprintf(stderr, "  (expected) %s\n", err);
	store_close(s);

	snprintf(path, sizeof(path), "%s/tollgate.log", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/tollgate.snap", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0 && write(fd, "TGSNAP1\nxxxxxxxxxxxxxxx", 23) == 23);
	close(fd);
	s = store_mem_open(dir, err, sizeof(err));
	CHECK(s == NULL && strstr(err, "tollgate.snap") && strstr(err, "offset"));
	fprintf(stderr, "  (expected) %s\n", err);
	store_close(s);
	dir_clean();
}

CASE(one_process_per_directory)
{
	char err[512] = "";
	struct store *s, *t;

	dir_new();
	s = reopen();
	t = store_mem_open(dir, err, sizeof(err));
	CHECK(s && !t && strstr(err, "in use"));
	store_close(t);
	store_close(s);
	dir_clean();
}

/* ------------------------------------------------------------ compaction */

CASE(compaction_preserves_state)
{
	struct store_mem_stats st;
	struct store *s;
	char rid[32];

	dir_new();
	s = reopen();
	store_mem_set_compact_bytes(s, 4096);
	some_operations(s);
	for (int i = 0; i < 200; i++) {
		snprintf(rid, sizeof(rid), "bulk%d", i);
		CHECK(admit1(s, rid, 1000000, 1, false).admitted);
		CHECK(settle(s, rid, 0, 0) == STORE_SETTLED);
	}
	store_mem_flush(s);
	store_mem_stats(s, &st);
	CHECK(st.generation > 3 && st.log_bytes < 4096 + 512);
	CHECK(file_size(log_path()) == (off_t)st.log_bytes);
	check_operations(s);
	store_close(s);
	s = reopen();
	CHECK(s && settle(s, "bulk0", 0, 0) == STORE_UNKNOWN);     /* not in snapshots */
	CHECK(s && settle(s, "bulk199", 0, 0) == STORE_UNKNOWN);
	CHECK(s && qget(s, "q") == 29 && qget(s, "chat_quota:alice") == 1500);
	store_close(s);
	dir_clean();
}

/* A crash between the snapshot's rename and the log's reset leaves a log
 * whose records are all in the snapshot: it must not be applied twice. */
static void compact_then_old_log(struct store *s)
{
	char err[256], bak[128], cmd[512];

	some_operations(s);
	store_mem_sync(s);
	snprintf(bak, sizeof(bak), "%s/log.bak", dir);
	snprintf(cmd, sizeof(cmd), "cp %s %s", log_path(), bak);
	CHECK(system(cmd) == 0);
	CHECK(store_mem_compact(s, err, sizeof(err)) == 0);
	CHECK(rename(bak, log_path()) == 0);
}

CASE(stale_log_after_snapshot_ignored)
{
	struct store *s;

	dir_new();
	crash_after(compact_then_old_log);
	s = reopen();
	CHECK(s != NULL);
	if (s)
		check_operations(s);                        /* 1500, not 3000 */
	store_close(s);
	dir_clean();
}

/* ---------------------------------------------------------------- volume */

CASE(bulk_admissions_no_leak)
{
	struct store_mem_stats st;
	struct bspec b[2] = { { "rl", INT64_MAX / 4, MINUTE, 10 }, { "q", 0, 0, 10 } };
	struct store *s;
	char rid[32];
	int ok = 0;

	dir_new();
	s = reopen();
	qset(s, "q", 1000000000);
	for (int i = 0; i < 100000; i++) {
		snprintf(rid, sizeof(rid), "bulk-%d", i);
		ok += admit(s, rid, false, 30000, 2, b).admitted;
		ok += settle(s, rid, 1, 1) == STORE_SETTLED;
		if (i % 1000 == 0) {
			fake_now += 37;
			store_mem_expire(s);
		}
	}
	CHECK(ok == 200000);
	CHECK(qget(s, "q") == 1000000000 - 200000);
	store_mem_stats(s, &st);
	CHECK(st.settled == 100000 && st.reservations == 0);
	fake_now += STORE_MEM_RETAIN_MS;
	store_mem_expire(s);
	store_mem_stats(s, &st);
	CHECK(st.settled == 0 && st.buckets == 1);          /* only the quota remains */
	store_close(s);
	dir_clean();
}

static int bench(void)
{
	struct bspec b[2] = { { "rl", INT64_MAX / 4, MINUTE, 10 }, { "q", 0, 0, 10 } };
	struct timespec t0, t1;
	struct store *s;
	char rid[32];
	int n = 300000;
	double sec;

	dir_new();
	if (!(s = reopen()))
		return 1;
	store_mem_set_clock(s, NULL, NULL);
	qset(s, "q", INT64_MAX / 2);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++) {
		snprintf(rid, sizeof(rid), "bench-%d", i);
		admit(s, rid, false, 30000, 2, b);
		settle(s, rid, 1, 1);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("%d admit+settle pairs (2 buckets each) in %.3f s: %.0f pairs/s\n", n, sec, n / sec);
	store_close(s);
	dir_clean();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "bench") == 0)
		return bench();
	RUN_ALL(admission_boundary, all_or_nothing, same_key_twice_counts_twice, strict_mode,
	        sliding_window_no_double_burst, sliding_window_partial, lease_expiry_returns_budget,
	        clock_never_goes_back, exactly_once_settlement, settlement_weights, quota_get_set_add,
	        counters, persistence_close_reopen, persistence_one_write_per_flush,
	        persistence_crash_replays_log, persistence_leases_and_windows_use_wall_clock,
	        torn_log_tail_tolerated, corrupt_files_are_errors, one_process_per_directory,
	        compaction_preserves_state, stale_log_after_snapshot_ignored,
	        bulk_admissions_no_leak);
	DONE();
}
