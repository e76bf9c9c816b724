/* store_redis.h -- token budgets kept in Redis, shared by every agent.
 *
 * Owns: the Redis implementation of struct store_ops (agent/store.h), its
 * one connection (hiredis async on the agent's libev loop), the Lua scripts
 * that make each admission and each settlement ONE atomic step, sent in one
 * batch script call per loop iteration (agent/store_redis_lua.h), the deadline of every call, the circuit
 * breaker, the failure mode, and the queue of usage that could not reach
 * Redis yet. The semantics are store.h's, word for word; Redis's clock
 * (TIME) is the one clock.
 *
 * Key layout (prefix "tollgate:vN:" = the version of that key's layout; a
 * new layout gets a new prefix so two agent versions never misread each
 * other's keys). K is a bucket key exactly as the caller built it:
 *
 *   K                          quota balance (window_ms == 0): a plain string
 *                              integer, the Higress key (GET/SET/INCRBY/
 *                              DECRBY compatible), so balances migrate
 *   tollgate:v2:win:K          rate bucket: hash sub-window index -> settled
 *                              tokens; a sub-window is ceil(window/60) ms (1 s
 *                              for a minute, 1 ms up to 60 ms), the hash
 *                              expires with the window; field "" -> "sum:low"
 *                              (the sum of the sub-windows, the lowest index
 *                              among them) so that an admission reads the
 *                              window in O(1) until a sub-window slides out
 *                              (then the hash once, pruned). Version 1 (the
 *                              same hash without "", tollgate:v1:win:K) is
 *                              still counted by admissions while it exists:
 *                              during a rolling upgrade v1 agents settle
 *                              there, and every other key is shared as is;
 *                              v1 agents do not see v2 windows
 *   tollgate:v1:inf:K          in-flight reservations of bucket K (rate or
 *                              quota): hash rid -> "estimate:expiry_ms", and
 *                              field "" -> "sum:next" (sum of the estimates,
 *                              lower bound of the expiries) so that a bucket
 *                              with no lapsed lease is read in O(1); lapsed
 *                              leases are pruned by the next admission
 *   tollgate:v1:res:<rid>      the reservation, a string "expiry_ms|" then
 *                              per bucket "window_ms|w_in|w_out|len(K)|K"
 *                              (length-prefixed: keys may hold any byte),
 *                              kept for the lease + 1 h so that a late
 *                              settlement still knows what to charge
 *   tollgate:v1:done:<rid>     settled marker (5 min): a second settlement of
 *                              the rid is STORE_DUPLICATE. Correctness does
 *                              not rest on it (settling deletes the record,
 *                              so a later second settlement is UNKNOWN and
 *                              charges nothing either); it only names
 *                              duplicates in the metrics, and 5 min keeps
 *                              Redis at ~300k markers at 1k req/s (1 h was
 *                              ~300 MB). HAProxy emits no record for answers
 *                              settled over SPOP, so duplicates are rare
 *   tollgate:v1:chg:<rid>:<i>  marker (1 h) of a replayed quota charge (see
 *                              "Failure" below), so a replay applies once
 *
 * A sliding window counts each settled amount from the moment it is
 * settled for at least the whole window (less than one sub-window more): no
 * double burst at a window edge. Amounts are ceil(in * w_in + out * w_out).
 * Windows, reset_ms, rounding and the edge cases (a key listed twice, a
 * reused rid -> err -1, no bucket -> admitted, a reservation of nothing
 * that settles once) are
 * those of store_mem.c, so both stores answer alike.
 *
 * Settlement outcomes: SETTLED; DUPLICATE (marker present); LATE (the lease
 * expired before the settlement: the usage is still charged to every bucket
 * of the reservation, from its record); UNKNOWN (no record: never admitted
 * here, admitted with failure_mode open, or settled more than lease + 1 h
 * after admission -- then nothing is charged: a settlement carries only
 * in/out, the buckets and weights live in the record).
 *
 * Redis Cluster is not supported: hiredis 0.14 has no cluster client, and
 * the reservation record is found from the rid alone, so it cannot share
 * the bucket keys' hash tag (the rate keys built by admit.c do carry one;
 * a quota prefix would need one too), and a batch (store_redis.c) holds
 * many requests' keys. Use a standalone Redis, or Sentinel.
 *
 * Sentinel (cfg->n_sentinels > 0, "redis-sentinel://S1,S2/MASTER"): every
 * connection attempt first asks a sentinel for the master's address
 * (SENTINEL get-master-addr-by-name; the last one that answered first, the
 * others in turn when it cannot), then connects there and checks ROLE: a
 * replica is dropped and the sentinels asked again. A lost connection (the
 * master died, or the sentinels demoted it: they close its clients) and a
 * READONLY reply do the same, so a failover is followed without a restart;
 * meanwhile failure_mode decides, and queued usage is replayed into the new
 * master. Sentinels are asked without AUTH (user and password are the
 * master's).
 *
 * Deadlines. Every call has cfg->timeout_ms (default 50 ms), enforced by an
 * ev_timer; a reply arriving later is ignored (a late "admitted" is released
 * at once so its estimate does not hold budget for the whole lease). Each
 * callback is called exactly once, possibly before the function returns
 * (fast failures, local decisions).
 *
 * Failure. After breaker_threshold consecutive failures (timeouts, lost
 * connection, Redis refusing service) the breaker opens: calls fail at once
 * for breaker_cooldown_ms, then one probe (PING) decides between closed and
 * open again. The connection is re-established in the background with
 * backoff (50 ms doubling to 2 s; reset by the first good reply on a new
 * connection, not by its TCP connect). A connection Redis refuses for who we
 * are (NOAUTH, WRONGPASS, DENIED) is dropped and tried again the same way.
 * Each distinct trouble is logged once per 10 s, with the count of its
 * repeats, and the refusals with a hint of what to do. A failed or short-circuited admission
 * follows cfg->failure_mode:
 *   local   the rate buckets go to `local_fallback` (an embedded store) with
 *           limits scaled by this instance's share (store_redis_set_local_
 *           share); a quota bucket is checked against what Redis last said
 *           it had left (an admission's answer, a quota call), less the
 *           estimates admitted locally since: refused when that is spent,
 *           admitted unchecked when Redis never said (4096 keys kept,
 *           direct-mapped); the quota charge of a local admission is
 *           queued when it settles. Without local_fallback: as open.
 *   open    admitted unchecked (res.err 0, admitted) -- counted
 *   closed  res.err = -1 (the caller answers 503) -- counted
 * Settlements of local admissions go to the local store. A settlement of a
 * Redis reservation that fails is queued (bounded: STORE_REDIS_QUEUE_MAX)
 * and answered STORE_QUEUED: the queue is replayed, in order, once Redis is
 * back (settlement is idempotent, so replaying one that did reach Redis is a
 * no-op). Quota admin operations never go local: they answer err -1 while
 * Redis is unavailable.
 */
#ifndef TOLLGATE_STORE_REDIS_H
#define TOLLGATE_STORE_REDIS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config-t.h"
#include "store.h"

#define STORE_REDIS_QUEUE_MAX 100000    /* settlements/charges waiting for Redis */

/* Open the store and start connecting (asynchronously: AUTH and SELECT when
 * configured, then the scripts are loaded). Never blocks the loop on I/O,
 * except the name resolution of a host that is not an address literal.
 * `local_fallback` (may be NULL) is used by failure_mode local; it must
 * outlive this store (free this store first). NULL with `err` filled on a
 * bad configuration or out of memory; Redis being down is not an error. */
struct store *store_redis_open(struct ev_loop *loop, const struct tg_store_cfg *cfg,
                               struct store *local_fallback, char *err, size_t errlen);

/* This instance's share of every rate limit when deciding locally, in
 * (0, 1]; default 1 (e.g. 1/3 with three agents sharing one Redis). */
void store_redis_set_local_share(struct store *s, double share);

/* Tests only: the scripts take `now` (ms) from this value instead of Redis
 * TIME, so windows and leases can be driven deterministically. now_ms < 0
 * returns to Redis TIME (the default). Key TTLs stay on Redis's own clock. */
void store_redis_set_test_clock(struct store *s, int64_t now_ms);

enum store_redis_breaker {
	STORE_REDIS_CLOSED = 0,         /* calls go to Redis */
	STORE_REDIS_OPEN,               /* calls fail at once (failure_mode) */
	STORE_REDIS_HALF_OPEN,          /* one probe in flight; calls still fail at once */
};

struct store_redis_stats {
	uint64_t calls;                 /* operations asked of this store */
	uint64_t sent;                  /* commands sent to Redis (retries, replays, probes included) */
	uint64_t batches;               /* ... of them batch script calls (two calls or more) */
	uint64_t batched;               /* calls sent in them */
	uint64_t errors;                /* Redis calls failed: error reply, lost connection */
	uint64_t timeouts;              /* Redis calls past their deadline */
	uint64_t rejected;              /* calls not sent: breaker open or not connected */
	uint64_t noscript;              /* NOSCRIPT recoveries (SCRIPT LOAD + retry) */
	uint64_t late_replies;          /* replies after their deadline (ignored) */
	uint64_t released;              /* late "admitted" replies released at once */
	enum store_redis_breaker breaker;
	uint64_t breaker_opens;
	bool connected;
	uint64_t connects;              /* connections established (first one included) */
	uint64_t reconnects;            /* connection attempts after the first: each follows
	                                   a failed attempt or a lost connection */
	int64_t last_latency_us;        /* round trip of the last successful call */
	/* decisions taken without Redis (DESIGN: every one is counted) */
	uint64_t fallback_local;        /* admissions decided by the local store */
	uint64_t refused_local;         /* ... of them refused: a quota Redis said was spent */
	uint64_t fallback_open;         /* admitted unchecked */
	uint64_t fallback_closed;       /* refused (err -1) */
	uint64_t settled_local;         /* settlements of local admissions */
	/* usage waiting for Redis */
	uint64_t queued;                /* settlements and quota charges queued */
	uint64_t replayed;              /* ... applied once Redis was back */
	uint64_t dropped;               /* ... lost: queue full, or refused by Redis */
	size_t queue_len;               /* waiting, or being replayed */
	size_t local_rids;              /* local admissions remembered for their settlement */
};

void store_redis_stats(struct store *s, struct store_redis_stats *out);

/* The SHA1 of each script once Redis has loaded it ("" before). */
const char *store_redis_script_sha(struct store *s, const char *name);

#endif
