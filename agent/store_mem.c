/* store_mem.c -- the embedded store. The API and the durability promise are
 * in store_mem.h, the semantics of admission and settlement in store.h.
 *
 * Shape. Four hash tables of our own (intrusive chaining, power-of-two sizes,
 * doubled at load factor 1): buckets by (key, window), reservations by rid,
 * settled rids, counters. A min-heap orders live leases; two FIFO lists order
 * lapsed leases and settled rids for retention. Every operation costs O(1)
 * amortized per bucket, plus O(log n) in the lease heap.
 *
 * Sliding windows. A rate bucket keeps its SETTLED usage in sub-windows of
 * g = ceil(window / 60) ms (1 s for a minute, 1 min for an hour), in a small
 * ring holding only the non-empty ones (at most 61). Usage recorded at time s
 * counts while s's sub-window overlaps (now - window, now]: for at least
 * `window` and less than `window + g`. So no interval as long as the window
 * ever sees more settled usage than the limit admits: tokens settled at 0:59
 * still count at 1:01 and up to 2:00 (no double burst at an edge); the price
 * is that budget comes back up to one sub-window (1/60 of the window) late,
 * never early. In-flight reservations count in `reserved` until they are
 * settled or their lease lapses.
 *
 * Settled usage is recorded at SETTLEMENT time. Recording it at reservation
 * time would give a long request a footprint of exactly one window from its
 * admission, but a request settled after its admission's sub-window slid out
 * would then count nowhere, and a late settlement (STORE_LATE, "usage still
 * charged") would charge nothing. At settlement the tokens exist, the charge
 * always lands in the window, and a request's footprint is [admission,
 * settlement + window): conservative, one clock, and what Higress does (it
 * counts when the response ends).
 *
 * reset_ms (rate) is the time until enough settled usage slides out for one
 * more request (of this estimate when strict) to pass, counting in-flight
 * reservations as if they settled now at their estimate: when they alone are
 * too much, that is one window (plus the current sub-window) from now. It is
 * 0 when the next request would pass, and always 0 for a quota.
 *
 * At the edges: a quota key that was never set is a balance of 0 (refused);
 * a rid already reserved or remembered as settled is not admitted again
 * (res.err = -1: rids are unique per transaction, a reuse is a caller bug); a
 * request with no bucket is admitted and reserves nothing, but its rid, so
 * it settles exactly once (store.h); a negative
 * estimate or usage counts as 0; a lease <= 0 lapses at the next operation;
 * a lapsed reservation is kept for an hour (same cap as settled rids) so a
 * late settlement still charges. Snapshots are written on the event loop
 * (measured: ~0.05 s per 100k remembered rids).
 *
 * Files, in state_dir: tollgate.snap, tollgate.log (and tollgate.snap.tmp
 * while a snapshot is written). Both start with 8 bytes of magic, then frames:
 * u32 LE payload length, u32 LE CRC-32 of the payload, a payload that is ONE
 * msgpack array [op, ...]. The first frame is META [0, version, generation,
 * time]. The log holds effects, not requests (a reservation with its buckets;
 * a settlement with the amount charged to each key), each stamped with the
 * store time; replay applies them at that time, so lapses and retention happen
 * again exactly as they did. A snapshot is the whole state and ends with END;
 * its generation names the log that follows it: a log of an older generation
 * is already inside the snapshot (a crash between the snapshot's rename and
 * the log's reset) and is discarded.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "store_mem.h"

#define AMOUNT_MAX     ((int64_t)1 << 40)   /* per estimate or charge: sums never overflow */
#define SYNC_EVERY_MS  1000                 /* fdatasync when dirty, at most this often */
#define GC_EVERY_MS    1000
#define FLUSH_BYTES    (256u << 10)         /* unwritten frames written at once past this */
#define PENDING_MAX    (64u << 20)          /* unwritten past this after a failed write: give up */
#define RECORD_MAX     (1u << 20)           /* payload bytes; a reservation is < 4 KiB */
#define FRAME_HDR      8
#define FORMAT_VERSION 1
#define RING_MAX       64                   /* sub-windows per bucket, >= 61 */
#define NOT_IN_HEAP    ((size_t)-1)

static const char snap_magic[] = "TGSNAP1\n";
static const char log_magic[] = "TGLOG01\n";
#define MAGIC_LEN 8

enum rec_op {
	OP_META = 0,       /* [0, version, generation, time] */
	OP_RESERVE = 1,    /* [1, t, rid, lease_until, [[key, window, estimate, w_in, w_out]...]] */
	OP_SETTLE = 2,     /* [2, t, rid, [[key, window, amount]...]] */
	OP_QSET = 3,       /* [3, t, key, value] */
	OP_QADD = 4,       /* [4, t, key, delta] */
	OP_COUNTER = 5,    /* [5, t, name, delta] */
	OP_S_QUOTA = 10,   /* snapshot: [10, key, balance] */
	OP_S_RATE = 11,    /* snapshot: [11, key, window, [sub-window, amount, ...]] */
	OP_S_RES = 12,     /* snapshot: [12, rid, lapsed, lease_until, parts as OP_RESERVE] */
	OP_S_DONE = 13,    /* snapshot: [13, rid, settled_at]; read, no longer written */
	OP_S_COUNTER = 14, /* snapshot: [14, name, value] */
	OP_S_END = 15,     /* snapshot: [15, frames before this one] */
};

#define container_of(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* ------------------------------------------------------------ arithmetic */

static int64_t sat_add(int64_t a, int64_t b)
{
	int64_t r;

	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return r;
}

static int64_t sat_sub(int64_t a, int64_t b)
{
	int64_t r;

	if (__builtin_sub_overflow(a, b, &r))
		return b < 0 ? INT64_MAX : INT64_MIN;
	return r;
}

static int64_t clamp_amount(int64_t v)
{
	return v < 0 ? 0 : v > AMOUNT_MAX ? AMOUNT_MAX : v;
}

static int64_t floordiv(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* ceil(in * w_in + out * w_out), never negative. A product a hair above an
 * integer (0.1 * 30 = 3.0000000000000004) is taken as that integer. */
static int64_t settle_amount(int64_t in, int64_t out, double w_in, double w_out)
{
	double a = (double)(in > 0 ? in : 0) * w_in + (double)(out > 0 ? out : 0) * w_out;

	a = ceil(a - 1e-6);
	if (!(a > 0))
		return 0;   /* also NaN */
	return a >= (double)AMOUNT_MAX ? AMOUNT_MAX : (int64_t)a;
}

/* --------------------------------------------------------- hash tables */

struct hnode {
	struct hnode *next;
	uint64_t hash;
};

struct htab {
	struct hnode **slot;
	size_t mask, count;
};

static uint64_t hash_bytes(uint64_t seed, const void *p, size_t n)
{
	const unsigned char *c = p;
	uint64_t h = 0xcbf29ce484222325ULL ^ seed;

	for (size_t i = 0; i < n; i++) {
		h ^= c[i];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 32;   /* spread the low bits we index with */
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 29);
}

static int htab_init(struct htab *t)
{
	t->slot = calloc(64, sizeof(*t->slot));
	t->mask = 63;
	t->count = 0;
	return t->slot ? 0 : -1;
}

/* Double the table; on allocation failure keep the old one (chains grow). */
static void htab_grow(struct htab *t)
{
	size_t n = (t->mask + 1) * 2;
	struct hnode **slot = calloc(n, sizeof(*slot)), *e, *next;

	if (!slot)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		for (e = t->slot[i]; e; e = next) {
			next = e->next;
			e->next = slot[e->hash & (n - 1)];
			slot[e->hash & (n - 1)] = e;
		}
	}
	free(t->slot);
	t->slot = slot;
	t->mask = n - 1;
}

static void htab_add(struct htab *t, struct hnode *e, uint64_t hash)
{
	if (t->count > t->mask)
		htab_grow(t);
	e->hash = hash;
	e->next = t->slot[hash & t->mask];
	t->slot[hash & t->mask] = e;
	t->count++;
}

static struct hnode *htab_chain(const struct htab *t, uint64_t hash)
{
	return t->slot[hash & t->mask];
}

static void htab_del(struct htab *t, struct hnode *e)
{
	struct hnode **pp = &t->slot[e->hash & t->mask];

	while (*pp && *pp != e)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = e->next;
		t->count--;
	}
}

/* Visit every entry; `drop` returns true after freeing one it unlinks. */
static void htab_sweep(struct htab *t, bool (*drop)(struct hnode *, void *), void *arg)
{
	for (size_t i = 0; i <= t->mask; i++) {
		struct hnode **pp = &t->slot[i];

		while (*pp) {
			struct hnode *e = *pp, *next = e->next;

			if (drop(e, arg)) {
				*pp = next;
				t->count--;
			} else {
				pp = &e->next;
			}
		}
	}
}

/* -------------------------------------------------------------- entries */

struct slot {
	int64_t idx;               /* sub-window number: time / gran_ms */
	int64_t amount;
};

struct bucket {
	struct hnode h;
	int64_t window_ms;         /* 0: quota balance */
	int64_t reserved;          /* estimates of live reservations */
	int64_t refs;              /* parts of live or lapsed reservations pointing here */
	int64_t balance;           /* quota */
	int64_t gran_ms, used;     /* rate: sub-window width, sum of the ring */
	struct slot *ring;         /* rate: non-empty sub-windows, oldest first */
	unsigned head, len, cap;
	char key[];
};

struct part {
	struct bucket *b;
	int64_t estimate;
	double w_in, w_out;
};

struct res {
	struct hnode h;
	struct res *prev, *next;   /* the lapsed list, while lapsed */
	int64_t lease_until;
	size_t heap_pos;           /* while live */
	bool lapsed;
	unsigned n;
	char *rid;                 /* after the parts, same allocation */
	struct part part[];
};

struct done {                  /* a settled rid, remembered for duplicates */
	struct hnode h;
	struct done *next;         /* FIFO, oldest first */
	int64_t at;
	char rid[];
};

struct counter {
	struct hnode h;
	int64_t value;
	int64_t owed;              /* added since the last log write: one record then */
	struct counter *next_owed; /* mem.owed list; owed_listed while on it */
	bool owed_listed;
	char name[];
};

/* fdatasync takes milliseconds: it runs on a thread of its own, never on
 * the event loop. The loop only asks (want); the thread syncs the log's fd.
 * Compaction starts a new log file: the loop hands the thread the new fd,
 * the old one to close (freeing a big unlinked file takes milliseconds too)
 * and a directory fsync (the rename). */
struct syncer {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool started, want, stop, sync_dir;
	int fd;
	int close_fd[4];           /* old logs to close, -1 when free */
	const char *path, *dir;
};

struct mem {
	struct store pub;                 /* what callers hold; pub.impl == this */
	struct syncer sync;
	char *log_path, *snap_path, *tmp_path, *log_tmp_path, *lock_path, *dir;
	int log_fd, lock_fd;
	uint64_t gen, log_bytes;
	size_t compact_bytes, compact_at, retain_max;
	bool dirty, broken, flushing;
	int64_t synced_mono, retry_mono;
	int64_t (*clock)(void *);
	void *clock_arg;
	int64_t now;                      /* store time: never goes back */
	int64_t gc_at;
	uint64_t seed;
	struct htab buckets, res, done, counters;
	struct res **heap;
	size_t heap_len, heap_cap;
	struct res *lapsed_head, *lapsed_tail;
	size_t n_lapsed;
	struct done *done_head, *done_tail;
	struct counter *owed;             /* counters with additions not yet in sb */
	msgpack_sbuffer sb;               /* frames being encoded */
	msgpack_packer pk;
	size_t frame_off;
	bool pack_failed;
};

/* ----------------------------------------------------------------- time */

static int64_t realtime_ms(void *arg)
{
	struct timespec ts;

	(void)arg;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mem_now(struct mem *m)
{
	int64_t t = m->clock(m->clock_arg);

	if (t > m->now)
		m->now = t;
	return m->now;
}

/* -------------------------------------------------------------- buckets */

static int64_t gran_of(int64_t window_ms)
{
	return window_ms <= 60 ? 1 : (window_ms + 59) / 60;
}

static uint64_t bucket_hash(const struct mem *m, const char *key, int64_t window_ms)
{
	return hash_bytes(m->seed ^ ((uint64_t)window_ms * 0x9e3779b97f4a7c15ULL), key, strlen(key));
}

static struct bucket *bucket_find(struct mem *m, const char *key, int64_t window_ms)
{
	uint64_t h = bucket_hash(m, key, window_ms);

	for (struct hnode *e = htab_chain(&m->buckets, h); e; e = e->next) {
		struct bucket *b = container_of(e, struct bucket, h);

		if (e->hash == h && b->window_ms == window_ms && strcmp(b->key, key) == 0)
			return b;
	}
	return NULL;
}

/* Find or create; NULL only when out of memory. */
static struct bucket *bucket_get(struct mem *m, const char *key, int64_t window_ms)
{
	struct bucket *b = bucket_find(m, key, window_ms);
	size_t len = strlen(key);

	if (b)
		return b;
	b = calloc(1, sizeof(*b) + len + 1);
	if (!b)
		return NULL;
	memcpy(b->key, key, len + 1);
	b->window_ms = window_ms;
	b->gran_ms = window_ms > 0 ? gran_of(window_ms) : 0;
	htab_add(&m->buckets, &b->h, bucket_hash(m, key, window_ms));
	return b;
}

static struct slot *ring_at(const struct bucket *b, unsigned i)
{
	return &b->ring[(b->head + i) & (b->cap - 1)];
}

/* Drop the sub-windows that no longer overlap (now - window, now]. */
static void rate_advance(struct bucket *b, int64_t now)
{
	int64_t lo = floordiv(now - b->window_ms, b->gran_ms);

	while (b->len && ring_at(b, 0)->idx < lo) {
		b->used -= ring_at(b, 0)->amount;
		b->head = (b->head + 1) & (b->cap - 1);
		b->len--;
	}
	if (!b->len && b->ring) {   /* idle: give the memory back */
		free(b->ring);
		b->ring = NULL;
		b->cap = b->head = 0;
	}
}

static int ring_grow(struct bucket *b)
{
	unsigned cap = b->cap ? b->cap * 2 : 4;
	struct slot *ring;

	if (cap > RING_MAX || !(ring = malloc(cap * sizeof(*ring))))
		return -1;
	for (unsigned i = 0; i < b->len; i++)
		ring[i] = *ring_at(b, i);
	free(b->ring);
	b->ring = ring;
	b->cap = cap;
	b->head = 0;
	return 0;
}

/* Add `amount` to sub-window `idx`, which is not older than the newest one.
 * -1 if the ring cannot take it (out of memory, or a corrupt snapshot). */
static int rate_push(struct bucket *b, int64_t idx, int64_t amount)
{
	struct slot *last = b->len ? ring_at(b, b->len - 1) : NULL;

	if (last && last->idx >= idx) {
		if (last->idx > idx)
			return -1;
		last->amount += amount;
	} else {
		if (b->len == b->cap && ring_grow(b) < 0)
			return -1;
		b->len++;
		last = ring_at(b, b->len - 1);
		last->idx = idx;
		last->amount = amount;
	}
	b->used += amount;
	return 0;
}

static void bucket_charge(struct bucket *b, int64_t amount, int64_t now)
{
	if (b->window_ms == 0) {
		b->balance = sat_sub(b->balance, amount);
		return;
	}
	if (amount == 0)
		return;
	rate_advance(b, now);
	if (rate_push(b, floordiv(now, b->gran_ms), amount) < 0)
		log_error("store: out of memory, %lld tokens not counted in window %s",
		          (long long)amount, b->key);
}

/* ms until `excess` tokens of the window (b may be NULL: empty) slide out;
 * in-flight reservations count as if they had settled now. */
static int64_t rate_reset_ms(const struct bucket *b, int64_t window_ms, int64_t now, int64_t excess)
{
	int64_t g = gran_of(window_ms);

	if (excess <= 0)
		return 0;
	for (unsigned i = 0; b && i < b->len; i++) {
		const struct slot *s = ring_at(b, i);

		excess -= s->amount;
		if (excess <= 0)
			return (s->idx + 1) * g + window_ms - now;
	}
	return (floordiv(now, g) + 1) * g + window_ms - now;
}

static void bucket_free(struct bucket *b)
{
	free(b->ring);
	free(b);
}

/* Judge one bucket of a request; `pending` is what the same request already
 * reserves in this bucket (a key listed twice). Fills st; true to admit. */
static bool bucket_judge(struct bucket *b, const struct store_bucket *q, int64_t pending,
                         bool strict, int64_t now, struct store_bucket_state *st)
{
	int64_t est = clamp_amount(q->estimate), used = 0, excess;
	int64_t reserved = (b ? b->reserved : 0) + pending;

	st->reserved = reserved;
	if (q->window_ms == 0) {
		st->used = 0;
		st->remaining = sat_sub(b ? b->balance : 0, reserved);
		st->reset_ms = 0;
		return strict ? st->remaining - est >= 0 : st->remaining > 0;
	}
	if (b) {
		rate_advance(b, now);
		used = b->used;
	}
	st->used = used;
	st->remaining = sat_sub(q->limit, used + reserved);
	excess = strict ? sat_sub(used + reserved + est, q->limit)
	                : sat_add(sat_sub(used + reserved, q->limit), 1);
	st->reset_ms = rate_reset_ms(b, q->window_ms, now, excess);
	return excess <= 0;
}

/* ---------------------------------------------------------- lease heap */

static void heap_set(struct mem *m, size_t i, struct res *r)
{
	m->heap[i] = r;
	r->heap_pos = i;
}

static void heap_up(struct mem *m, size_t i)
{
	struct res *r = m->heap[i];

	while (i > 0 && m->heap[(i - 1) / 2]->lease_until > r->lease_until) {
		heap_set(m, i, m->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(m, i, r);
}

static void heap_down(struct mem *m, size_t i)
{
	struct res *r = m->heap[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= m->heap_len)
			break;
		if (c + 1 < m->heap_len && m->heap[c + 1]->lease_until < m->heap[c]->lease_until)
			c++;
		if (m->heap[c]->lease_until >= r->lease_until)
			break;
		heap_set(m, i, m->heap[c]);
		i = c;
	}
	heap_set(m, i, r);
}

/* Make room for one more lease, so that the push that follows cannot fail. */
static int heap_reserve(struct mem *m)
{
	size_t cap = m->heap_cap ? m->heap_cap * 2 : 256;
	struct res **heap;

	if (m->heap_len < m->heap_cap)
		return 0;
	heap = realloc(m->heap, cap * sizeof(*heap));
	if (!heap)
		return -1;
	m->heap = heap;
	m->heap_cap = cap;
	return 0;
}

static void heap_push(struct mem *m, struct res *r)
{
	m->heap[m->heap_len++] = r;
	heap_up(m, m->heap_len - 1);
}

/* Move the last lease into r's place, then up or down to where it belongs. */
static void heap_remove(struct mem *m, struct res *r)
{
	struct res *last = m->heap[--m->heap_len];
	size_t i = r->heap_pos;

	r->heap_pos = NOT_IN_HEAP;
	if (last == r)
		return;
	heap_set(m, i, last);
	heap_up(m, i);
	heap_down(m, last->heap_pos);
}

/* -------------------------------------------------------- reservations */

static struct res *res_new(const char *rid, unsigned n)
{
	size_t len = strlen(rid);
	struct res *r = calloc(1, sizeof(*r) + n * sizeof(struct part) + len + 1);

	if (!r)
		return NULL;
	r->n = n;
	r->rid = (char *)&r->part[n];
	memcpy(r->rid, rid, len + 1);
	r->heap_pos = NOT_IN_HEAP;
	return r;
}

static struct res *res_find(struct mem *m, const char *rid)
{
	uint64_t h = hash_bytes(m->seed, rid, strlen(rid));

	for (struct hnode *e = htab_chain(&m->res, h); e; e = e->next) {
		struct res *r = container_of(e, struct res, h);

		if (e->hash == h && strcmp(r->rid, rid) == 0)
			return r;
	}
	return NULL;
}

/* The lapsed list is in lapse order, which is lease order. */
static void lapsed_link(struct mem *m, struct res *r)
{
	r->lapsed = true;
	r->next = NULL;
	r->prev = m->lapsed_tail;
	*(m->lapsed_tail ? &m->lapsed_tail->next : &m->lapsed_head) = r;
	m->lapsed_tail = r;
	m->n_lapsed++;
}

/* Hook a filled reservation in: its buckets, the heap (room reserved by
 * heap_reserve) or the lapsed list, the rid table. */
static void res_insert(struct mem *m, struct res *r, bool lapsed)
{
	for (unsigned i = 0; i < r->n; i++) {
		r->part[i].b->refs++;
		if (!lapsed)
			r->part[i].b->reserved += r->part[i].estimate;
	}
	if (lapsed)
		lapsed_link(m, r);
	else
		heap_push(m, r);
	htab_add(&m->res, &r->h, hash_bytes(m->seed, r->rid, strlen(r->rid)));
}

static void lapsed_unlink(struct mem *m, struct res *r)
{
	*(r->prev ? &r->prev->next : &m->lapsed_head) = r->next;
	*(r->next ? &r->next->prev : &m->lapsed_tail) = r->prev;
	r->prev = r->next = NULL;
	m->n_lapsed--;
}

/* The lease ran out: the estimates stop counting; the record stays so that
 * a late settlement still charges. */
static void res_lapse(struct mem *m, struct res *r)
{
	heap_remove(m, r);
	for (unsigned i = 0; i < r->n; i++)
		r->part[i].b->reserved -= r->part[i].estimate;
	lapsed_link(m, r);
}

/* Forget a reservation (settled, or lapsed past retention). */
static void res_retire(struct mem *m, struct res *r)
{
	if (r->lapsed) {
		lapsed_unlink(m, r);
	} else {
		heap_remove(m, r);
		for (unsigned i = 0; i < r->n; i++)
			r->part[i].b->reserved -= r->part[i].estimate;
	}
	for (unsigned i = 0; i < r->n; i++)
		r->part[i].b->refs--;
	htab_del(&m->res, &r->h);
	free(r);
}

/* --------------------------------------------------------- settled rids */

static struct done *done_new(const char *rid)
{
	size_t len = strlen(rid);
	struct done *d = malloc(sizeof(*d) + len + 1);

	if (d)
		memcpy(d->rid, rid, len + 1);
	return d;
}

static struct done *done_find(struct mem *m, const char *rid)
{
	uint64_t h = hash_bytes(m->seed, rid, strlen(rid));

	for (struct hnode *e = htab_chain(&m->done, h); e; e = e->next) {
		struct done *d = container_of(e, struct done, h);

		if (e->hash == h && strcmp(d->rid, rid) == 0)
			return d;
	}
	return NULL;
}

static void done_pop(struct mem *m)
{
	struct done *d = m->done_head;

	m->done_head = d->next;
	if (!m->done_head)
		m->done_tail = NULL;
	htab_del(&m->done, &d->h);
	free(d);
}

/* Remember d (owned by the list from now on), forgetting the oldest beyond
 * the cap: memory is bounded whatever the request rate. */
static void done_push(struct mem *m, struct done *d, int64_t at)
{
	d->at = at;
	d->next = NULL;
	*(m->done_tail ? &m->done_tail->next : &m->done_head) = d;
	m->done_tail = d;
	htab_add(&m->done, &d->h, hash_bytes(m->seed, d->rid, strlen(d->rid)));
	while (m->done.count > m->retain_max)
		done_pop(m);
}

/* ---------------------------------------------------------- maintenance */

/* Lapse due leases and forget what is past retention. Runs at the start of
 * every operation (and of every replayed record, at its time), so the state
 * at a given time does not depend on when the periodic sweep ran. */
static void maintain(struct mem *m, int64_t now)
{
	while (m->heap_len && m->heap[0]->lease_until <= now)
		res_lapse(m, m->heap[0]);
	while (m->lapsed_head && (now - m->lapsed_head->lease_until >= STORE_MEM_RETAIN_MS ||
	                          m->n_lapsed > m->retain_max))
		res_retire(m, m->lapsed_head);
	while (m->done_head && (now - m->done_head->at >= STORE_MEM_DONE_MS ||
	                        m->done.count > m->retain_max))
		done_pop(m);
}

static bool bucket_idle(struct hnode *e, void *arg)
{
	struct bucket *b = container_of(e, struct bucket, h);

	if (b->refs)
		return false;
	if (b->window_ms) {
		rate_advance(b, *(int64_t *)arg);
		if (b->len)
			return false;
	} else if (b->balance != 0) {
		return false;   /* a missing quota bucket is a balance of 0 */
	}
	bucket_free(b);
	return true;
}

/* ------------------------------------------------------------- encoding */

/* CRC-32 (IEEE 802.3, the one zlib computes: files written with the
 * table this file had before read the same) of a frame's payload. */
static uint32_t crc32_of(const void *p, size_t n)
{
	uLong crc = crc32(0L, Z_NULL, 0);

	while (n > 0) {                 /* zlib takes a uInt length */
		uInt k = n > 0x40000000u ? 0x40000000u : (uInt)n;

		crc = crc32(crc, p, k);
		p = (const unsigned char *)p + k;
		n -= k;
	}
	return (uint32_t)crc;
}

static void put_le32(char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (char)(v >> (8 * i));
}

static uint32_t get_le32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;

	return u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static int pack_write(void *data, const char *buf, size_t len)
{
	struct mem *m = data;

	if (msgpack_sbuffer_write(&m->sb, buf, len) < 0) {
		m->pack_failed = true;
		return -1;
	}
	return 0;
}

/* A frame is appended to m->sb: frame_begin(), msgpack, frame_end(). */
static void frame_begin(struct mem *m, unsigned fields, enum rec_op op)
{
	static const char hdr[FRAME_HDR];

	m->frame_off = m->sb.size;
	pack_write(m, hdr, sizeof(hdr));
	msgpack_pack_array(&m->pk, fields);
	msgpack_pack_int(&m->pk, op);
}

static int frame_end(struct mem *m)
{
	size_t len;

	if (m->pack_failed) {
		m->pack_failed = false;
		return -1;
	}
	len = m->sb.size - m->frame_off - FRAME_HDR;
	put_le32(m->sb.data + m->frame_off, (uint32_t)len);
	put_le32(m->sb.data + m->frame_off + 4,
	         crc32_of(m->sb.data + m->frame_off + FRAME_HDR, len));
	return 0;
}

static void pack_str(struct mem *m, const char *s)
{
	size_t n = strlen(s);

	msgpack_pack_str(&m->pk, n);
	msgpack_pack_str_body(&m->pk, s, n);
}

static void pack_i64(struct mem *m, int64_t v)
{
	msgpack_pack_int64(&m->pk, v);
}

static void pack_parts(struct mem *m, const struct res *r)
{
	msgpack_pack_array(&m->pk, r->n);
	for (unsigned i = 0; i < r->n; i++) {
		const struct part *p = &r->part[i];

		msgpack_pack_array(&m->pk, 5);
		pack_str(m, p->b->key);
		pack_i64(m, p->b->window_ms);
		pack_i64(m, p->estimate);
		msgpack_pack_double(&m->pk, p->w_in);
		msgpack_pack_double(&m->pk, p->w_out);
	}
}

static void pack_meta(struct mem *m, uint64_t gen)
{
	frame_begin(m, 4, OP_META);
	pack_i64(m, FORMAT_VERSION);
	msgpack_pack_uint64(&m->pk, gen);
	pack_i64(m, m->now);
}

/* ----------------------------------------------------------------- files */

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0) {
		if (fsync(fd) < 0)
			log_warn("store: fsync %s: %s", dir, strerror(errno));
		close(fd);
	}
}

static void *syncer_main(void *arg)
{
	struct syncer *y = arg;

	pthread_mutex_lock(&y->mu);
	for (;;) {
		int fd, close_fd[4];
		bool want, dir, closing = false;

		for (unsigned i = 0; i < 4; i++)
			closing |= y->close_fd[i] >= 0;
		while (!y->want && !closing && !y->stop)
			pthread_cond_wait(&y->cv, &y->mu);
		for (unsigned i = 0; i < 4; i++)
			closing |= y->close_fd[i] >= 0;
		if (!y->want && !closing)
			break;
		fd = y->fd, want = y->want, dir = y->sync_dir;
		memcpy(close_fd, y->close_fd, sizeof(close_fd));
		memset(y->close_fd, -1, sizeof(y->close_fd));
		y->want = y->sync_dir = false;
		pthread_mutex_unlock(&y->mu);
		for (unsigned i = 0; i < 4; i++)
			if (close_fd[i] >= 0)
				close(close_fd[i]);
		if (want && fdatasync(fd) < 0)
			log_error("store: fdatasync %s: %s", y->path, strerror(errno));
		if (dir)
			fsync_dir(y->dir);
		pthread_mutex_lock(&y->mu);
	}
	pthread_mutex_unlock(&y->mu);
	return NULL;
}

static int syncer_start(struct mem *m)
{
	struct syncer *y = &m->sync;

	y->fd = m->log_fd;
	y->want = y->stop = y->sync_dir = false;
	memset(y->close_fd, -1, sizeof(y->close_fd));
	y->path = m->log_path;
	y->dir = m->dir;
	if (pthread_mutex_init(&y->mu, NULL) != 0)
		return -1;
	if (pthread_cond_init(&y->cv, NULL) != 0 ||
	    pthread_create(&y->thread, NULL, syncer_main, y) != 0) {
		pthread_mutex_destroy(&y->mu);
		return -1;
	}
	y->started = true;
	return 0;
}

/* Finish a sync in flight (and one asked for), then end the thread. */
static void syncer_stop(struct mem *m)
{
	struct syncer *y = &m->sync;

	if (!y->started)
		return;
	pthread_mutex_lock(&y->mu);
	y->stop = true;
	pthread_cond_signal(&y->cv);
	pthread_mutex_unlock(&y->mu);
	pthread_join(y->thread, NULL);
	pthread_cond_destroy(&y->cv);
	pthread_mutex_destroy(&y->mu);
	y->started = false;
}

/* Ask for the log to reach the disk: on the syncer thread, or here when
 * there is none (or the caller must know it is done: now). */
static void log_sync_mode(struct mem *m, bool now)
{
	if (!m->dirty)
		return;
	m->synced_mono = mono_ms();
	if (m->sync.started && !now) {
		pthread_mutex_lock(&m->sync.mu);
		m->sync.want = true;
		pthread_cond_signal(&m->sync.cv);
		pthread_mutex_unlock(&m->sync.mu);
		m->dirty = false;
		return;
	}
	if (fdatasync(m->log_fd) < 0)
		log_error("store: fdatasync %s: %s", m->log_path, strerror(errno));
	else
		m->dirty = false;
}

static int log_flush(struct mem *m);

static void log_sync(struct mem *m)
{
	log_sync_mode(m, false);
}

/* The frame just encoded in m->sb joins the unwritten ones; they reach the
 * file together, in store_mem_flush() (once per event-loop iteration) or
 * here when they pile up. A frame that could not be encoded is dropped. */
static int log_append(struct mem *m)
{
	if (m->broken || frame_end(m) < 0) {
		m->sb.size = m->frame_off;
		return -1;
	}
	if (m->sb.size >= FLUSH_BYTES && !m->flushing && mono_ms() >= m->retry_mono)
		log_flush(m);
	return 0;
}

/* One record per counter added to since the last write, with the sum of
 * its additions: a counter bumped at every request costs a record per loop
 * iteration, not per request. */
static void pack_owed(struct mem *m)
{
	int64_t now = m->owed ? mem_now(m) : 0;

	while (m->owed) {
		struct counter *c = m->owed;

		m->owed = c->next_owed;         /* off the list first: log_append may write */
		frame_begin(m, 4, OP_COUNTER);
		pack_i64(m, now);
		pack_str(m, c->name);
		pack_i64(m, c->owed);
		if (log_append(m) < 0) {
			c->next_owed = m->owed;     /* still owed: the next write tries again */
			m->owed = c;
			return;
		}
		c->next_owed = NULL;
		c->owed_listed = false;
		c->owed = 0;
	}
}

/* Write the unwritten frames: one write(). On failure the file is cut back
 * to where it was (a torn record must never precede a good one) and the
 * frames are kept for the next try; the store gives up (broken: every
 * operation fails from then on) when the cut fails or when too much waits.
 * What the failed iteration decided is acknowledged all the same: a full
 * disk is logged, it does not stop the agent. */
static int log_flush(struct mem *m)
{
	if (m->broken)
		return -1;
	m->flushing = true;          /* pack_owed's appends do not write */
	pack_owed(m);
	m->flushing = false;
	if (!m->sb.size)
		return 0;
	if (write_all(m->log_fd, m->sb.data, m->sb.size) < 0) {
		log_error("store: write %s: %s", m->log_path, strerror(errno));
		m->retry_mono = mono_ms() + 100;
		if (ftruncate(m->log_fd, (off_t)m->log_bytes) < 0 || m->sb.size >= PENDING_MAX) {
			log_error("store: %s cannot take what is owed, store disabled", m->log_path);
			m->broken = true;
		}
		return -1;
	}
	m->log_bytes += m->sb.size;
	msgpack_sbuffer_clear(&m->sb);
	m->dirty = true;
	if (mono_ms() - m->synced_mono >= SYNC_EVERY_MS)
		log_sync(m);
	return 0;
}

/* Start the log over, empty, for generation `gen`: a new file renamed over
 * the old one (truncating 16 MiB in place stalled the loop ~25 ms). Its
 * sync, the directory's and the old file's close happen on the syncer
 * thread; until they do, a crash leaves the old log (older than the
 * snapshot: ignored) or the new one, whole or torn (started over): the
 * snapshot is already durable either way. */
static int log_reset(struct mem *m, uint64_t gen)
{
	int fd, old = m->log_fd;

	msgpack_sbuffer_clear(&m->sb);
	pack_write(m, log_magic, MAGIC_LEN);
	pack_meta(m, gen);
	fd = open(m->log_tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	if (fd >= 0)
		(void)flock(fd, LOCK_EX | LOCK_NB);   /* keeps out versions that lock the log */
	if (fd < 0 || frame_end(m) < 0 || write_all(fd, m->sb.data, m->sb.size) < 0 ||
	    rename(m->log_tmp_path, m->log_path) < 0) {
		int e = errno;

		if (fd >= 0)
			close(fd);
		unlink(m->log_tmp_path);
		msgpack_sbuffer_clear(&m->sb);
		errno = e;
		return -1;
	}
	m->log_fd = fd;
	m->log_bytes = m->sb.size;
	msgpack_sbuffer_clear(&m->sb);   /* it holds the records still to write */
	m->dirty = false;
	m->synced_mono = mono_ms();
	if (m->sync.started) {
		unsigned i = 0;

		pthread_mutex_lock(&m->sync.mu);
		m->sync.fd = fd;
		while (i < 4 && m->sync.close_fd[i] >= 0)
			i++;
		if (i < 4)
			m->sync.close_fd[i] = old;
		m->sync.want = m->sync.sync_dir = true;
		pthread_cond_signal(&m->sync.cv);
		pthread_mutex_unlock(&m->sync.mu);
		if (i == 4) {   /* four resets the thread has not caught up with: wait for it */
			syncer_stop(m);
			close(old);
			if (syncer_start(m) < 0)
				log_warn("store: no sync thread: the log is synced on the event loop");
		}
	} else {
		close(old);
		if (fdatasync(fd) < 0)
			log_error("store: fdatasync %s: %s", m->log_path, strerror(errno));
		fsync_dir(m->dir);
	}
	return 0;
}

static void maybe_compact(struct mem *m)
{
	char err[256];

	if (m->log_bytes + m->sb.size < m->compact_at || m->broken)
		return;
	if (store_mem_compact(&m->pub, err, sizeof(err)) < 0) {
		log_error("store: %s", err);
		m->compact_at = m->log_bytes + m->compact_bytes / 2;   /* retry later */
	}
}

/* ------------------------------------------------------------- admission */

/* Is the request well formed, and its rid new? */
static bool admit_valid(struct mem *m, const struct store_admit_req *req)
{
	size_t len = strnlen(req->rid, sizeof(req->rid));

	if (req->n > STORE_MAX_BUCKETS || len == 0 || len == sizeof(req->rid))
		return false;
	for (unsigned i = 0; i < req->n; i++)
		if (strnlen(req->b[i].key, STORE_KEY_MAX) == STORE_KEY_MAX || req->b[i].window_ms < 0)
			return false;
	if (res_find(m, req->rid) || done_find(m, req->rid)) {
		log_warn("store: reservation id %s reused, request not admitted", req->rid);
		return false;
	}
	return true;
}

/* What the request's earlier buckets already reserve in bucket i's budget. */
static int64_t admit_pending(const struct store_admit_req *req, unsigned i)
{
	int64_t pending = 0;

	for (unsigned j = 0; j < i; j++)
		if (req->b[j].window_ms == req->b[i].window_ms && strcmp(req->b[j].key, req->b[i].key) == 0)
			pending += clamp_amount(req->b[j].estimate);
	return pending;
}

/* Reserve in every bucket: allocate everything, log, then apply. */
static int admit_commit(struct mem *m, const struct store_admit_req *req, int64_t now)
{
	struct res *r = res_new(req->rid, req->n);

	if (!r || heap_reserve(m) < 0)
		goto fail;
	for (unsigned i = 0; i < req->n; i++) {
		struct part *p = &r->part[i];

		if (!(p->b = bucket_get(m, req->b[i].key, req->b[i].window_ms)))
			goto fail;   /* buckets made so far are empty: the sweep drops them */
		p->estimate = clamp_amount(req->b[i].estimate);
		p->w_in = req->b[i].w_in;
		p->w_out = req->b[i].w_out;
	}
	r->lease_until = sat_add(now, req->lease_ms > 0 ? req->lease_ms : 0);
	frame_begin(m, 5, OP_RESERVE);
	pack_i64(m, now);
	pack_str(m, r->rid);
	pack_i64(m, r->lease_until);
	pack_parts(m, r);
	if (log_append(m) < 0)
		goto fail;
	res_insert(m, r, false);
	return 0;
fail:
	free(r);
	return -1;
}

static void mem_admit(void *impl, const struct store_admit_req *req, store_admit_cb cb, void *arg)
{
	struct mem *m = impl;
	struct store_admit_res res;
	int64_t now = mem_now(m);

	memset(&res, 0, sizeof(res));
	res.refused = -1;
	maintain(m, now);
	if (!admit_valid(m, req)) {
		res.err = -1;
		cb(&res, arg);
		return;
	}
	for (unsigned i = 0; i < req->n; i++) {
		struct bucket *b = bucket_find(m, req->b[i].key, req->b[i].window_ms);

		if (!bucket_judge(b, &req->b[i], admit_pending(req, i), req->strict, now, &res.st[i]) &&
		    res.refused < 0)
			res.refused = (int)i;
	}
	res.admitted = res.refused < 0;
	if (res.admitted) {
		if (admit_commit(m, req, now) < 0) {
			memset(&res, 0, sizeof(res));
			res.err = -1;
			res.refused = -1;
		}
		/* the view after the reservation: what one more request would meet */
		for (unsigned i = 0; i < req->n && !res.err; i++)
			bucket_judge(bucket_find(m, req->b[i].key, req->b[i].window_ms), &req->b[i], 0,
			             req->strict, now, &res.st[i]);
	}
	cb(&res, arg);
	maybe_compact(m);
}

/* ------------------------------------------------------------ settlement */

static void pack_settle(struct mem *m, int64_t now, const struct res *r, const int64_t *amount)
{
	frame_begin(m, 4, OP_SETTLE);
	pack_i64(m, now);
	pack_str(m, r->rid);
	msgpack_pack_array(&m->pk, r->n);
	for (unsigned i = 0; i < r->n; i++) {
		msgpack_pack_array(&m->pk, 3);
		pack_str(m, r->part[i].b->key);
		pack_i64(m, r->part[i].b->window_ms);
		pack_i64(m, amount[i]);
	}
}

static void mem_settle(void *impl, const char *rid, int64_t in, int64_t out,
                       store_settle_cb cb, void *arg)
{
	struct mem *m = impl;
	int64_t now = mem_now(m), amount[STORE_MAX_BUCKETS];
	enum store_settle_rc rc;
	struct res *r;
	struct done *d;

	maintain(m, now);
	if (!(r = res_find(m, rid))) {
		cb(done_find(m, rid) ? STORE_DUPLICATE : STORE_UNKNOWN, arg);
		return;
	}
	for (unsigned i = 0; i < r->n; i++)
		amount[i] = settle_amount(in, out, r->part[i].w_in, r->part[i].w_out);
	if (!(d = done_new(rid))) {            /* before the frame: none is left half-built */
		cb(STORE_ERROR, arg);
		return;
	}
	pack_settle(m, now, r, amount);
	if (log_append(m) < 0) {
		free(d);
		cb(STORE_ERROR, arg);
		return;
	}
	rc = r->lapsed ? STORE_LATE : STORE_SETTLED;
	for (unsigned i = 0; i < r->n; i++)
		bucket_charge(r->part[i].b, amount[i], now);
	res_retire(m, r);
	done_push(m, d, now);
	cb(rc, arg);
	maybe_compact(m);
}

/* ----------------------------------------------------------------- quota */

static bool key_ok(const char *key)
{
	return key && strnlen(key, STORE_KEY_MAX) < STORE_KEY_MAX;
}

static void mem_quota_get(void *impl, const char *key, store_quota_cb cb, void *arg)
{
	struct mem *m = impl;
	struct bucket *b = key_ok(key) ? bucket_find(m, key, 0) : NULL;

	cb(key_ok(key) ? 0 : -1, b ? b->balance : 0, arg);
}

/* Set (add == false) or add to a balance; the new balance is *out. */
static int quota_change(struct mem *m, const char *key, int64_t v, bool add, int64_t *out)
{
	int64_t now = mem_now(m);
	struct bucket *b;

	maintain(m, now);
	if (!key_ok(key) || !(b = bucket_get(m, key, 0)))
		return -1;
	frame_begin(m, 4, add ? OP_QADD : OP_QSET);
	pack_i64(m, now);
	pack_str(m, key);
	pack_i64(m, v);
	if (log_append(m) < 0)
		return -1;
	b->balance = add ? sat_add(b->balance, v) : v;
	*out = b->balance;
	return 0;
}

static void mem_quota_set(void *impl, const char *key, int64_t value, store_quota_cb cb, void *arg)
{
	int64_t balance = 0;
	int rc = quota_change(impl, key, value, false, &balance);

	cb(rc, balance, arg);
	maybe_compact(impl);
}

static void mem_quota_add(void *impl, const char *key, int64_t delta, store_quota_cb cb, void *arg)
{
	int64_t balance = 0;
	int rc = quota_change(impl, key, delta, true, &balance);

	cb(rc, balance, arg);
	maybe_compact(impl);
}

/* -------------------------------------------------------------- counters */

static uint64_t counter_hash(const struct mem *m, const char *name)
{
	return hash_bytes(~m->seed, name, strlen(name));
}

static struct counter *counter_get(struct mem *m, const char *name)
{
	uint64_t h = counter_hash(m, name);
	size_t len = strlen(name);
	struct counter *c;

	for (struct hnode *e = htab_chain(&m->counters, h); e; e = e->next) {
		c = container_of(e, struct counter, h);
		if (e->hash == h && strcmp(c->name, name) == 0)
			return c;
	}
	if (!(c = calloc(1, sizeof(*c) + len + 1)))
		return NULL;
	memcpy(c->name, name, len + 1);
	htab_add(&m->counters, &c->h, h);
	return c;
}

void store_mem_counter_add(struct store *s, const char *name, int64_t delta)
{
	struct mem *m = s->impl;
	struct counter *c;

	if (strnlen(name, STORE_MEM_NAME_MAX) == STORE_MEM_NAME_MAX) {
		log_warn("store: counter name too long, ignored");
		return;
	}
	if (!(c = counter_get(m, name))) {
		log_error("store: out of memory, counter %s not counted", name);
		return;
	}
	if (m->broken) {
		log_error("store: disabled, counter %s not counted", name);
		return;
	}
	c->value = sat_add(c->value, delta);
	c->owed = sat_add(c->owed, delta);
	if (!c->owed_listed) {
		c->owed_listed = true;
		c->next_owed = m->owed;
		m->owed = c;
	}
}

void store_mem_counter_each(struct store *s,
                            void (*fn)(const char *name, int64_t value, void *arg), void *arg)
{
	struct mem *m = s->impl;

	for (size_t i = 0; i <= m->counters.mask; i++) {
		for (struct hnode *e = m->counters.slot[i]; e; e = e->next) {
			const struct counter *c = container_of(e, struct counter, h);

			fn(c->name, c->value, arg);
		}
	}
}

/* -------------------------------------------------------------- snapshot */

static void snap_bucket(struct mem *m, struct bucket *b)
{
	if (b->window_ms == 0) {
		if (b->balance == 0)
			return;
		frame_begin(m, 3, OP_S_QUOTA);
		pack_str(m, b->key);
		pack_i64(m, b->balance);
		return;
	}
	rate_advance(b, m->now);
	if (!b->len)
		return;
	frame_begin(m, 4, OP_S_RATE);
	pack_str(m, b->key);
	pack_i64(m, b->window_ms);
	msgpack_pack_array(&m->pk, 2 * b->len);
	for (unsigned i = 0; i < b->len; i++) {
		pack_i64(m, ring_at(b, i)->idx);
		pack_i64(m, ring_at(b, i)->amount);
	}
}

static void snap_res(struct mem *m, const struct res *r)
{
	frame_begin(m, 5, OP_S_RES);
	pack_str(m, r->rid);
	if (r->lapsed)
		msgpack_pack_true(&m->pk);
	else
		msgpack_pack_false(&m->pk);
	pack_i64(m, r->lease_until);
	pack_parts(m, r);
}

static void snap_counter(struct mem *m, const struct counter *c)
{
	frame_begin(m, 3, OP_S_COUNTER);
	pack_str(m, c->name);
	pack_i64(m, c->value);
}

/* The snapshot writer: frames accumulate in m->sb, flushed by the MiB. */
struct snapw {
	struct mem *m;
	int fd;
	uint64_t frames;
	int rc;
};

static void snapw_end(struct snapw *w)
{
	struct mem *m = w->m;

	if (frame_end(m) < 0)
		w->rc = -1;
	w->frames++;
	if (m->sb.size >= (1u << 20) || w->rc < 0) {
		if (w->rc == 0 && write_all(w->fd, m->sb.data, m->sb.size) < 0)
			w->rc = -1;
		msgpack_sbuffer_clear(&m->sb);
	}
}

static void snap_tables(struct snapw *w)
{
	struct mem *m = w->m;

	for (size_t i = 0; i <= m->buckets.mask; i++)
		for (struct hnode *e = m->buckets.slot[i]; e; e = e->next) {
			size_t before = m->sb.size;

			snap_bucket(m, container_of(e, struct bucket, h));
			if (m->sb.size != before)
				snapw_end(w);
		}
	for (size_t i = 0; i < m->heap_len; i++) {
		snap_res(m, m->heap[i]);
		snapw_end(w);
	}
	for (struct res *r = m->lapsed_head; r; r = r->next) {
		snap_res(m, r);
		snapw_end(w);
	}
	for (size_t i = 0; i <= m->counters.mask; i++)
		for (struct hnode *e = m->counters.slot[i]; e; e = e->next) {
			snap_counter(m, container_of(e, struct counter, h));
			snapw_end(w);
		}
}

/* Write the whole state to the temporary file; -1 on any error. */
static int snap_write(struct mem *m, int fd, uint64_t gen)
{
	struct snapw w = { m, fd, 0, 0 };

	msgpack_sbuffer_clear(&m->sb);
	pack_write(m, snap_magic, MAGIC_LEN);
	pack_meta(m, gen);
	snapw_end(&w);
	snap_tables(&w);
	frame_begin(m, 2, OP_S_END);
	msgpack_pack_uint64(&m->pk, w.frames);
	snapw_end(&w);
	if (w.rc == 0 && write_all(fd, m->sb.data, m->sb.size) < 0)
		w.rc = -1;
	msgpack_sbuffer_clear(&m->sb);
	return w.rc == 0 && fsync(fd) == 0 ? 0 : -1;
}

int store_mem_compact(struct store *s, char *err, size_t errlen)
{
	struct mem *m = s->impl;
	uint64_t gen = m->gen + 1;
	int fd, rc;

	if (m->broken) {
		snprintf(err, errlen, "%s: store disabled after a write error", m->log_path);
		return -1;
	}
	if (log_flush(m) < 0 || m->owed) {   /* owed: the snapshot would count it twice */
		snprintf(err, errlen, "%s: cannot write the log", m->log_path);
		return -1;
	}
	maintain(m, mem_now(m));
	fd = open(m->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	rc = fd < 0 ? -1 : snap_write(m, fd, gen);
	if (fd >= 0 && close(fd) < 0)
		rc = -1;
	if (rc < 0 || rename(m->tmp_path, m->snap_path) < 0) {
		snprintf(err, errlen, "snapshot %s: %s", m->tmp_path, strerror(errno));
		unlink(m->tmp_path);
		return -1;
	}
	fsync_dir(m->dir);
	/* The snapshot holds everything now; from here the old log is stale. */
	m->gen = gen;
	if (log_reset(m, gen) < 0) {
		snprintf(err, errlen, "%s: cannot restart the log: %s", m->log_path, strerror(errno));
		m->broken = true;
		return -1;
	}
	m->compact_at = m->compact_bytes;
	return 0;
}

/* --------------------------------------------------------------- loading */

/* A file being read, frame by frame. */
struct reader {
	const char *path;
	char *buf;
	size_t len, off;     /* off: the frame being read */
	const char *payload;
	uint32_t plen;
	msgpack_unpacked up;
	const msgpack_object *a;   /* the frame's array */
	uint32_t n;                /* its size */
};

enum frame_rc { FRAME_OK, FRAME_EOF, FRAME_TORN, FRAME_BAD };

static bool all_zero(const char *p, size_t n)
{
	while (n--)
		if (*p++)
			return false;
	return true;
}

/* Find the next frame; TORN if what is left looks like an interrupted
 * write (short, or a bad checksum on the last frame, or zeros). */
static enum frame_rc frame_next(struct reader *rd, const char **why)
{
	size_t rest = rd->len - rd->off;
	const char *p = rd->buf + rd->off;

	if (rest == 0)
		return FRAME_EOF;
	*why = "truncated record";
	if (rest < FRAME_HDR)
		return FRAME_TORN;
	rd->plen = get_le32(p);
	rd->payload = p + FRAME_HDR;
	if (rd->plen == 0) {
		*why = "bad record length";
		return all_zero(p, rest) ? FRAME_TORN : FRAME_BAD;
	}
	if (rd->plen > rest - FRAME_HDR)
		return FRAME_TORN;
	if (rd->plen > RECORD_MAX) {
		*why = "bad record length";
		return FRAME_BAD;
	}
	if (crc32_of(rd->payload, rd->plen) != get_le32(p + 4)) {
		*why = "checksum mismatch";
		return rest == FRAME_HDR + rd->plen || all_zero(p, rest) ? FRAME_TORN : FRAME_BAD;
	}
	return FRAME_OK;
}

/* Decode the frame's payload: one msgpack array starting with an op. */
static int frame_decode(struct reader *rd, int64_t *op)
{
	size_t used = 0;
	const msgpack_object *o;

	if (msgpack_unpack_next(&rd->up, rd->payload, rd->plen, &used) != MSGPACK_UNPACK_SUCCESS ||
	    used != rd->plen)
		return -1;
	o = &rd->up.data;
	if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 1 ||
	    o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return -1;
	rd->a = o->via.array.ptr;
	rd->n = o->via.array.size;
	*op = (int64_t)o->via.array.ptr[0].via.u64;
	return 0;
}

static bool obj_i64(const msgpack_object *o, int64_t *v)
{
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
		*v = (int64_t)o->via.u64;
	else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		*v = o->via.i64;
	else
		return false;
	return true;
}

static bool obj_dbl(const msgpack_object *o, double *v)
{
	int64_t i;

	if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) {
		*v = o->via.f64;
		return true;
	}
	if (!obj_i64(o, &i))
		return false;
	*v = (double)i;
	return true;
}

/* A string shorter than `cap`, without NUL bytes, copied NUL-terminated. */
static bool obj_str(const msgpack_object *o, char *dst, size_t cap)
{
	if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap ||
	    memchr(o->via.str.ptr, 0, o->via.str.size))
		return false;
	memcpy(dst, o->via.str.ptr, o->via.str.size);
	dst[o->via.str.size] = 0;
	return true;
}

/* Replay time: records are applied at the time they were made. */
static void replay_at(struct mem *m, int64_t t)
{
	if (t > m->now)
		m->now = t;
	maintain(m, m->now);
}

/* Parts [[key, window, estimate, w_in, w_out]...] into r (buckets made).
 * Replay applies what the log says happened and does not second-guess it: a
 * rid reserved again (possible only after the rid was forgotten under a
 * smaller retention cap than today's) replaces the older reservation. */
static const char *load_parts(struct mem *m, const msgpack_object *o, struct res **out,
                              const char *rid)
{
	char key[STORE_KEY_MAX];
	struct res *r;

	if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > STORE_MAX_BUCKETS)
		return "bad reservation parts";
	if ((r = res_find(m, rid))) {
		log_warn("store: replay: reservation %s made twice, the newer one holds", rid);
		res_retire(m, r);
	}
	if (!(r = res_new(rid, o->via.array.size)) || heap_reserve(m) < 0) {
		free(r);
		return "out of memory";
	}
	for (unsigned i = 0; i < r->n; i++) {
		const msgpack_object *p = &o->via.array.ptr[i];
		struct part *pt = &r->part[i];
		int64_t window;

		if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 5 ||
		    !obj_str(&p->via.array.ptr[0], key, sizeof(key)) ||
		    !obj_i64(&p->via.array.ptr[1], &window) || window < 0 ||
		    !obj_i64(&p->via.array.ptr[2], &pt->estimate) ||
		    !obj_dbl(&p->via.array.ptr[3], &pt->w_in) || !obj_dbl(&p->via.array.ptr[4], &pt->w_out)) {
			free(r);
			return "bad reservation part";
		}
		pt->estimate = clamp_amount(pt->estimate);
		if (!(pt->b = bucket_get(m, key, window))) {
			free(r);
			return "out of memory";
		}
	}
	*out = r;
	return NULL;
}

/* [1, t, rid, lease_until, parts] */
static const char *load_reserve(struct mem *m, const struct reader *rd)
{
	char rid[64];
	int64_t t, lease;
	struct res *r = NULL;
	const char *why;

	if (rd->n != 5 || !obj_i64(&rd->a[1], &t) || !obj_str(&rd->a[2], rid, sizeof(rid)) ||
	    !obj_i64(&rd->a[3], &lease))
		return "bad reservation record";
	replay_at(m, t);
	if ((why = load_parts(m, &rd->a[4], &r, rid)))
		return why;
	r->lease_until = lease;
	res_insert(m, r, false);
	return NULL;
}

/* [2, t, rid, [[key, window, amount]...]]: the amounts are charged by key,
 * whether or not the reservation is still known (money is never dropped). */
static const char *load_settle(struct mem *m, const struct reader *rd)
{
	char rid[64], key[STORE_KEY_MAX];
	int64_t t, window, amount;
	const msgpack_object *ps = &rd->a[3];
	struct res *r;
	struct done *d;

	if (rd->n != 4 || !obj_i64(&rd->a[1], &t) || !obj_str(&rd->a[2], rid, sizeof(rid)) ||
	    ps->type != MSGPACK_OBJECT_ARRAY)
		return "bad settlement record";
	replay_at(m, t);
	for (uint32_t i = 0; i < ps->via.array.size; i++) {
		const msgpack_object *p = &ps->via.array.ptr[i];
		struct bucket *b;

		if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 3 ||
		    !obj_str(&p->via.array.ptr[0], key, sizeof(key)) ||
		    !obj_i64(&p->via.array.ptr[1], &window) || window < 0 ||
		    !obj_i64(&p->via.array.ptr[2], &amount))
			return "bad settlement part";
		if (!(b = bucket_get(m, key, window)))
			return "out of memory";
		bucket_charge(b, clamp_amount(amount), m->now);
	}
	if (!(d = done_new(rid)))
		return "out of memory";
	if ((r = res_find(m, rid)))
		res_retire(m, r);
	done_push(m, d, m->now);
	return NULL;
}

/* [3|4, t, key, value] */
static const char *load_quota(struct mem *m, const struct reader *rd, bool add)
{
	char key[STORE_KEY_MAX];
	int64_t t, v;
	struct bucket *b;

	if (rd->n != 4 || !obj_i64(&rd->a[1], &t) || !obj_str(&rd->a[2], key, sizeof(key)) ||
	    !obj_i64(&rd->a[3], &v))
		return "bad quota record";
	replay_at(m, t);
	if (!(b = bucket_get(m, key, 0)))
		return "out of memory";
	b->balance = add ? sat_add(b->balance, v) : v;
	return NULL;
}

/* [5, t, name, delta] or [14, name, value] */
static const char *load_counter(struct mem *m, const struct reader *rd, bool snap)
{
	char name[STORE_MEM_NAME_MAX];
	int64_t t = 0, v;
	struct counter *c;

	if (rd->n != (snap ? 3u : 4u) || (!snap && !obj_i64(&rd->a[1], &t)) ||
	    !obj_str(&rd->a[snap ? 1 : 2], name, sizeof(name)) || !obj_i64(&rd->a[snap ? 2 : 3], &v))
		return "bad counter record";
	if (!snap)
		replay_at(m, t);
	if (!(c = counter_get(m, name)))
		return "out of memory";
	c->value = sat_add(c->value, v);
	return NULL;
}

/* [10, key, balance] or [11, key, window, [sub-window, amount...]] */
static const char *load_s_bucket(struct mem *m, const struct reader *rd, bool rate)
{
	char key[STORE_KEY_MAX];
	int64_t v, window = 0, idx, amount;
	const msgpack_object *sl = &rd->a[3];
	struct bucket *b;

	if (!rate) {
		if (rd->n != 3 || !obj_str(&rd->a[1], key, sizeof(key)) || !obj_i64(&rd->a[2], &v))
			return "bad quota snapshot record";
		if (!(b = bucket_get(m, key, 0)))
			return "out of memory";
		b->balance = v;
		return NULL;
	}
	if (rd->n != 4 || !obj_str(&rd->a[1], key, sizeof(key)) || !obj_i64(&rd->a[2], &window) ||
	    window <= 0 || sl->type != MSGPACK_OBJECT_ARRAY || sl->via.array.size % 2 ||
	    bucket_find(m, key, window))
		return "bad window snapshot record";
	if (!(b = bucket_get(m, key, window)))
		return "out of memory";
	for (uint32_t i = 0; i < sl->via.array.size; i += 2)
		if (!obj_i64(&sl->via.array.ptr[i], &idx) || !obj_i64(&sl->via.array.ptr[i + 1], &amount) ||
		    rate_push(b, idx, clamp_amount(amount)) < 0)
			return "bad window snapshot record";
	return NULL;
}

/* [12, rid, lapsed, lease_until, parts] and [13, rid, settled_at] */
static const char *load_s_rid(struct mem *m, const struct reader *rd, bool settled)
{
	char rid[64];
	int64_t t;
	struct res *r = NULL;
	struct done *d;
	const char *why;

	if (settled) {
		if (rd->n != 3 || !obj_str(&rd->a[1], rid, sizeof(rid)) || !obj_i64(&rd->a[2], &t))
			return "bad settled-id snapshot record";
		if (!(d = done_new(rid)))
			return "out of memory";
		done_push(m, d, t);
		return NULL;
	}
	if (rd->n != 5 || !obj_str(&rd->a[1], rid, sizeof(rid)) ||
	    rd->a[2].type != MSGPACK_OBJECT_BOOLEAN || !obj_i64(&rd->a[3], &t))
		return "bad reservation snapshot record";
	if ((why = load_parts(m, &rd->a[4], &r, rid)))
		return why;
	r->lease_until = t;
	res_insert(m, r, rd->a[2].via.boolean);
	return NULL;
}

static const char *load_record(struct mem *m, const struct reader *rd, int64_t op, bool snap)
{
	switch (op) {
	case OP_RESERVE:   return snap ? "log record in snapshot" : load_reserve(m, rd);
	case OP_SETTLE:    return snap ? "log record in snapshot" : load_settle(m, rd);
	case OP_QSET:      return snap ? "log record in snapshot" : load_quota(m, rd, false);
	case OP_QADD:      return snap ? "log record in snapshot" : load_quota(m, rd, true);
	case OP_COUNTER:   return snap ? "log record in snapshot" : load_counter(m, rd, false);
	case OP_S_QUOTA:   return snap ? load_s_bucket(m, rd, false) : "snapshot record in log";
	case OP_S_RATE:    return snap ? load_s_bucket(m, rd, true) : "snapshot record in log";
	case OP_S_RES:     return snap ? load_s_rid(m, rd, false) : "snapshot record in log";
	case OP_S_DONE:    return snap ? load_s_rid(m, rd, true) : "snapshot record in log";
	case OP_S_COUNTER: return snap ? load_counter(m, rd, true) : "snapshot record in log";
	default:           return "unknown record";
	}
}

/* Read a whole file; *absent when it does not exist. */
static int read_file(const char *path, int fd, struct reader *rd, bool *absent,
                     char *err, size_t errlen)
{
	struct stat st;
	int own = fd < 0;
	ssize_t got = 0;

	*absent = false;
	if (own && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		*absent = errno == ENOENT;
		if (!*absent)
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return *absent ? 0 : -1;
	}
	rd->path = path;
	rd->len = rd->off = 0;
	if (fstat(fd, &st) < 0 || !(rd->buf = malloc((size_t)st.st_size + 1))) {
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		if (own)
			close(fd);
		return -1;
	}
	while (rd->len < (size_t)st.st_size) {
		got = pread(fd, rd->buf + rd->len, (size_t)st.st_size - rd->len, (off_t)rd->len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		rd->len += (size_t)got;
	}
	if (own)
		close(fd);
	if (rd->len < (size_t)st.st_size) {
		snprintf(err, errlen, "%s: short read: %s", path, got < 0 ? strerror(errno) : "file shrank");
		free(rd->buf);
		rd->buf = NULL;
		return -1;
	}
	return 0;
}

/* Check the magic and read the META frame: its generation in *gen. */
static enum frame_rc read_header(struct mem *m, struct reader *rd, const char *magic,
                                 uint64_t *gen, const char **why)
{
	enum frame_rc rc;
	int64_t op, version, g, t;

	*why = "not a tollgate state file";
	if (rd->len < MAGIC_LEN)
		return memcmp(rd->buf, magic, rd->len) == 0 ? FRAME_TORN : FRAME_BAD;
	if (memcmp(rd->buf, magic, MAGIC_LEN) != 0)
		return FRAME_BAD;
	rd->off = MAGIC_LEN;
	if ((rc = frame_next(rd, why)) != FRAME_OK)
		return rc == FRAME_EOF ? FRAME_TORN : rc;
	*why = "bad header record";
	if (frame_decode(rd, &op) < 0 || op != OP_META || rd->n != 4 || !obj_i64(&rd->a[1], &version) ||
	    !obj_i64(&rd->a[2], &g) || g < 1 || !obj_i64(&rd->a[3], &t))
		return FRAME_BAD;
	if (version != FORMAT_VERSION) {
		*why = "unsupported format version";
		return FRAME_BAD;
	}
	*gen = (uint64_t)g;
	if (t > m->now)
		m->now = t;
	rd->off += FRAME_HDR + rd->plen;
	return FRAME_OK;
}

/* Apply frames from rd->off on. Stops at the end, at a torn frame (*torn),
 * at END (snapshot), or at an error (-1, err names file and offset). */
static int replay_frames(struct mem *m, struct reader *rd, bool snap, bool *torn,
                         char *err, size_t errlen)
{
	uint64_t frames = 1;   /* META */
	const char *why = NULL;
	enum frame_rc rc;
	int64_t op, count;

	*torn = false;
	while ((rc = frame_next(rd, &why)) == FRAME_OK) {
		if (frame_decode(rd, &op) < 0) {
			why = "undecodable record";
			break;
		}
		if (snap && op == OP_S_END) {
			rd->off += FRAME_HDR + rd->plen;
			if (rd->n != 2 || !obj_i64(&rd->a[1], &count) || (uint64_t)count != frames)
				why = "snapshot record count mismatch";
			else if (rd->off != rd->len)
				why = "data after the end of the snapshot";
			else
				return 0;
			break;
		}
		if ((why = load_record(m, rd, op, snap)))
			break;
		rd->off += FRAME_HDR + rd->plen;
		frames++;
	}
	if (rc == FRAME_EOF && !snap)
		return 0;
	if (rc == FRAME_TORN && !snap) {
		*torn = true;
		return 0;
	}
	snprintf(err, errlen, "%s: offset %zu: %s", rd->path, rd->off,
	         rc == FRAME_EOF ? "snapshot ends without its end record" : why);
	return -1;
}

static int snap_load(struct mem *m, char *err, size_t errlen)
{
	struct reader rd = { 0 };
	const char *why;
	bool absent, torn;
	int rc = -1;

	m->gen = 1;   /* no snapshot: the first log is generation 1 */
	if (read_file(m->snap_path, -1, &rd, &absent, err, errlen) < 0 || absent)
		return absent ? 0 : -1;
	msgpack_unpacked_init(&rd.up);
	if (read_header(m, &rd, snap_magic, &m->gen, &why) != FRAME_OK)
		snprintf(err, errlen, "%s: offset %zu: %s", rd.path, rd.off, why);
	else
		rc = replay_frames(m, &rd, true, &torn, err, errlen);
	msgpack_unpacked_destroy(&rd.up);
	free(rd.buf);
	return rc;
}

/* Replay the log of the snapshot's generation; start it over when it is
 * empty, torn in its header or older than the snapshot; cut a torn tail. */
static int log_load(struct mem *m, char *err, size_t errlen)
{
	struct reader rd = { 0 };
	enum frame_rc hrc;
	const char *why;
	uint64_t gen = 0;
	bool absent, torn = false;
	int rc = -1;

	if (read_file(m->log_path, m->log_fd, &rd, &absent, err, errlen) < 0)
		return -1;
	msgpack_unpacked_init(&rd.up);
	hrc = rd.len ? read_header(m, &rd, log_magic, &gen, &why) : FRAME_TORN;
	if (hrc == FRAME_BAD) {
		snprintf(err, errlen, "%s: offset %zu: %s", rd.path, rd.off, why);
	} else if (hrc == FRAME_OK && gen > m->gen) {
		snprintf(err, errlen, "%s: generation %llu is newer than the snapshot's (%llu): "
		         "snapshot missing?", rd.path, (unsigned long long)gen, (unsigned long long)m->gen);
	} else if (hrc == FRAME_OK && gen == m->gen) {
		rc = replay_frames(m, &rd, false, &torn, err, errlen);
	} else {
		if (rd.len)
			log_warn("store: %s: %s, starting it over", rd.path,
			         hrc == FRAME_TORN ? "torn header" : "already in the snapshot");
		rc = log_reset(m, m->gen);
		if (rc < 0)
			snprintf(err, errlen, "%s: cannot reset: %s", rd.path, strerror(errno));
		rd.off = (size_t)m->log_bytes;
	}
	if (rc == 0 && torn) {
		log_warn("store: %s: torn record at offset %zu cut off", rd.path, rd.off);
		if (ftruncate(m->log_fd, (off_t)rd.off) < 0 || fdatasync(m->log_fd) < 0) {
			snprintf(err, errlen, "%s: cannot cut at offset %zu: %s", rd.path, rd.off, strerror(errno));
			rc = -1;
		}
	}
	if (rc == 0)
		m->log_bytes = rd.off;
	msgpack_unpacked_destroy(&rd.up);
	free(rd.buf);
	return rc;
}

/* ------------------------------------------------------------ open/close */

static const struct store_ops mem_ops;

static int mkdir_p(const char *dir)
{
	char path[4096];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof(path))
		return errno = ENAMETOOLONG, -1;
	memcpy(path, dir, len + 1);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, 0700) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(path, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static void mem_destroy(struct mem *m)
{
	struct htab *tabs[] = { &m->buckets, &m->res, &m->done, &m->counters };

	for (size_t t = 0; t < sizeof(tabs) / sizeof(*tabs); t++) {
		for (size_t i = 0; tabs[t]->slot && i <= tabs[t]->mask; i++) {
			struct hnode *e = tabs[t]->slot[i], *next;

			for (; e; e = next) {
				next = e->next;
				if (t == 0)
					bucket_free(container_of(e, struct bucket, h));
				else
					free(e);   /* res, done, counter: one allocation, hnode first */
			}
		}
		free(tabs[t]->slot);
	}
	syncer_stop(m);
	if (m->log_fd >= 0)
		close(m->log_fd);
	if (m->lock_fd >= 0)
		close(m->lock_fd);
	free(m->heap);
	msgpack_sbuffer_destroy(&m->sb);
	free(m->dir);
	free(m->log_path);
	free(m->snap_path);
	free(m->tmp_path);
	free(m->log_tmp_path);
	free(m->lock_path);
	free(m);
}

static struct mem *mem_new(const char *dir)
{
	struct mem *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->log_fd = m->lock_fd = -1;
	m->pub.ops = &mem_ops;
	m->pub.impl = m;
	m->clock = realtime_ms;
	m->compact_bytes = m->compact_at = STORE_MEM_COMPACT_BYTES;
	m->retain_max = STORE_MEM_RETAIN_MAX;
	m->seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)mono_ms();
	m->synced_mono = mono_ms();
	msgpack_sbuffer_init(&m->sb);
	msgpack_packer_init(&m->pk, m, pack_write);
	m->dir = strdup(dir);
	m->log_path = path_join(dir, "tollgate.log");
	m->snap_path = path_join(dir, "tollgate.snap");
	m->tmp_path = path_join(dir, "tollgate.snap.tmp");
	m->log_tmp_path = path_join(dir, "tollgate.log.tmp");
	m->lock_path = path_join(dir, "tollgate.lock");
	if (!m->dir || !m->log_path || !m->snap_path || !m->tmp_path || !m->log_tmp_path ||
	    !m->lock_path ||
	    htab_init(&m->buckets) < 0 || htab_init(&m->res) < 0 || htab_init(&m->done) < 0 ||
	    htab_init(&m->counters) < 0) {
		mem_destroy(m);
		return NULL;
	}
	return m;
}

/* Take the directory's lock (tollgate.lock's flock: the log file itself is
 * replaced at each compaction), then open the log. */
static int log_open(struct mem *m, char *err, size_t errlen)
{
	m->lock_fd = open(m->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (m->lock_fd < 0) {
		snprintf(err, errlen, "%s: %s", m->lock_path, strerror(errno));
		return -1;
	}
	if (flock(m->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(err, errlen, "%s: %s", m->lock_path, errno == EWOULDBLOCK ?
		         "state directory in use by another process" : strerror(errno));
		return -1;
	}
	unlink(m->log_tmp_path);   /* a log reset interrupted before its rename */
	m->log_fd = open(m->log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (m->log_fd < 0) {
		snprintf(err, errlen, "%s: %s", m->log_path, strerror(errno));
		return -1;
	}
	if (flock(m->log_fd, LOCK_EX | LOCK_NB) < 0) {   /* an older version holds it */
		snprintf(err, errlen, "%s: %s", m->log_path, errno == EWOULDBLOCK ?
		         "state directory in use by another process" : strerror(errno));
		return -1;
	}
	return 0;
}

struct store *store_mem_open(const char *state_dir, char *err, size_t errlen)
{
	struct mem *m = mem_new(state_dir);

	if (!m) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (mkdir_p(state_dir) < 0) {
		snprintf(err, errlen, "%s: cannot create: %s", state_dir, strerror(errno));
		goto fail;
	}
	if (log_open(m, err, errlen) < 0)
		goto fail;
	unlink(m->tmp_path);   /* a snapshot interrupted before its rename */
	if (snap_load(m, err, errlen) < 0 ||
	    log_load(m, err, errlen) < 0)
		goto fail;
	fsync_dir(state_dir);
	maybe_compact(m);
	if (syncer_start(m) < 0)
		log_warn("store: no sync thread: the log is synced on the event loop");
	log_info("store: %s loaded (generation %llu, %zu buckets, %zu reservations, %zu settled ids)",
	         state_dir, (unsigned long long)m->gen, m->buckets.count, m->res.count, m->done.count);
	return &m->pub;
fail:
	mem_destroy(m);
	return NULL;
}

/* Close: write a snapshot (the next start reads no log), else sync the log. */
static void mem_free(void *impl)
{
	struct mem *m = impl;
	char err[512];

	if (!m)
		return;
	if (m->broken || store_mem_compact(&m->pub, err, sizeof(err)) < 0) {
		if (!m->broken)
			log_error("store: %s", err);
		log_flush(m);
		log_sync_mode(m, true);   /* the log alone still holds everything written */
	}
	mem_destroy(m);
}

static const struct store_ops mem_ops = {
	.admit = mem_admit,
	.settle = mem_settle,
	.quota_get = mem_quota_get,
	.quota_set = mem_quota_set,
	.quota_add = mem_quota_add,
	.free = mem_free,
};

/* ----------------------------------------------------------- the others */

int store_mem_flush(struct store *s)
{
	return log_flush(s->impl);
}

void store_mem_sync(struct store *s)
{
	struct mem *m = s->impl;

	log_flush(m);
	m->dirty = true;   /* log_flush may have handed a sync to the thread: do it now */
	log_sync_mode(m, true);
}

void store_mem_expire(struct store *s)
{
	struct mem *m = s->impl;
	int64_t now = mem_now(m);

	maintain(m, now);
	if (now >= m->gc_at) {
		htab_sweep(&m->buckets, bucket_idle, &now);
		m->gc_at = now + GC_EVERY_MS;
	}
	log_flush(m);
	if (mono_ms() - m->synced_mono >= SYNC_EVERY_MS)
		log_sync(m);
}

void store_mem_set_clock(struct store *s, int64_t (*now_ms)(void *), void *arg)
{
	struct mem *m = s->impl;

	m->clock = now_ms ? now_ms : realtime_ms;
	m->clock_arg = now_ms ? arg : NULL;
}

void store_mem_set_compact_bytes(struct store *s, size_t bytes)
{
	struct mem *m = s->impl;

	m->compact_bytes = m->compact_at = bytes;
}

void store_mem_set_retain_max(struct store *s, size_t max_rids)
{
	struct mem *m = s->impl;

	m->retain_max = max_rids;
}

void store_mem_stats(struct store *s, struct store_mem_stats *st)
{
	struct mem *m = s->impl;

	st->buckets = m->buckets.count;
	st->reservations = m->heap_len;
	st->lapsed = m->n_lapsed;
	st->settled = m->done.count;
	st->counters = m->counters.count;
	st->log_bytes = m->log_bytes;
	st->generation = m->gen;
}
