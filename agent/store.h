/* store.h -- where token budgets live: the interface both stores implement.
 *
 * Owns: the semantics of admission and settlement, independent of where the
 * numbers are kept (the embedded store, agent/store_mem.c, or Redis,
 * agent/store_redis.c). Every operation is ONE atomic step of the store and
 * answers through a callback (Redis is asynchronous; the embedded store calls
 * back before returning).
 *
 * A bucket is one budget: a token rate limit over a sliding window
 * (window_ms > 0) or a quota balance (window_ms == 0, key is the Higress key
 * `<redis_key_prefix><consumer>`). Admission checks every bucket of a request
 * and reserves the estimate in all of them, or in none:
 *   rate limit:  admit while used + reserved < limit
 *                (strict: used + reserved + estimate <= limit)
 *   quota:       admit while balance - reserved > 0
 *                (strict: balance - reserved - estimate >= 0)
 * A request with no bucket is admitted and still reserved (a reservation of
 * nothing), so that it settles exactly once like the others.
 * A reservation is a lease: if nobody settles it before `lease_ms`, its
 * amounts stop counting. Settlement replaces the reserved estimate by the
 * real amount in every bucket of the reservation, once per rid.
 */
#ifndef TOLLGATE_STORE_H
#define TOLLGATE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#define STORE_MAX_BUCKETS 16
#define STORE_KEY_MAX     192

struct store_bucket {
	char key[STORE_KEY_MAX];  /* full key, e.g. "tollgate:{c}:rl:default_rule:k:60000" */
	int64_t limit;            /* tokens per window (rate) -- unused for quota */
	int64_t window_ms;        /* 0: quota balance */
	int64_t estimate;         /* tokens reserved at admission */
	double w_in, w_out;       /* settlement: amount = ceil(in * w_in + out * w_out) */
};

struct store_admit_req {
	char rid[64];
	int64_t lease_ms;
	bool strict;
	int failure_mode;         /* enum tg_failure_mode when the store cannot decide;
	                             -1: the store's own (store.failure_mode) */
	unsigned n;
	struct store_bucket b[STORE_MAX_BUCKETS];
};

/* Per-bucket view after admission (also filled on refusal). */
struct store_bucket_state {
	int64_t used;             /* settled amount in the window / spent: unused for quota */
	int64_t reserved;         /* in-flight reservations, this one included if admitted */
	int64_t remaining;        /* limit - used - reserved (rate) or balance - reserved (quota) */
	int64_t reset_ms;         /* ms until enough of the window frees for one more request */
};

struct store_admit_res {
	int err;                  /* 0, or -1: store unavailable (failure_mode applies) */
	bool admitted;
	int refused;              /* index of the first refusing bucket, -1 if admitted */
	struct store_bucket_state st[STORE_MAX_BUCKETS];
};

typedef void (*store_admit_cb)(const struct store_admit_res *res, void *arg);

enum store_settle_rc {
	STORE_SETTLED = 0,        /* applied now */
	STORE_DUPLICATE = 1,      /* already settled: nothing changed */
	STORE_LATE = 2,           /* lease expired before settlement: usage still charged */
	STORE_UNKNOWN = 3,        /* no such reservation */
	STORE_QUEUED = 4,         /* the store is away: kept in this process, applied when it
	                             is back (a crash before then loses it) */
	STORE_ERROR = -1,
};

typedef void (*store_settle_cb)(enum store_settle_rc rc, void *arg);
typedef void (*store_quota_cb)(int err, int64_t balance, void *arg);

struct store_ops {
	void (*admit)(void *s, const struct store_admit_req *req, store_admit_cb cb, void *arg);
	/* in/out are the real input and output tokens of the request. */
	void (*settle)(void *s, const char *rid, int64_t in, int64_t out,
	               store_settle_cb cb, void *arg);
	void (*quota_get)(void *s, const char *key, store_quota_cb cb, void *arg);
	void (*quota_set)(void *s, const char *key, int64_t value, store_quota_cb cb, void *arg);
	void (*quota_add)(void *s, const char *key, int64_t delta, store_quota_cb cb, void *arg);
	void (*free)(void *s);
};

struct store {
	const struct store_ops *ops;
	void *impl;
};

#endif
