/* store_mem.h -- the embedded store: token budgets kept in this process and
 * persisted in a state directory (snapshot + append log, msgpack records).
 *
 * Owns: the in-process implementation of struct store_ops (agent/store.h),
 * its files, and the named counters behind the usage metrics. Every
 * operation is applied and its callback called before the function returns.
 *
 * Durability. Every mutation (reservation, settlement, quota change) is
 * encoded as a log record when it takes effect in memory, and the additions
 * to a counter as one record per write; the records of one event-loop
 * iteration reach the append log together, in one write(), when
 * store_mem_flush() runs. The agent calls it from an ev_prepare watcher of
 * the highest priority, before the SPOP and HTTP servers send anything:
 * nothing is acknowledged before its record is in the file, so a crash of
 * the process loses nothing that was acknowledged. The log is fdatasync'ed
 * once a second when dirty (Redis's `appendfsync everysec`), on a thread of
 * the store's own: fdatasync takes milliseconds and holds up the loop's own
 * writes to the file meanwhile, so syncing every 100 ms put ~1 ms on 1% of
 * requests. store_mem_sync() syncs at once, on the caller's thread. With
 * store_mem_expire() on a 100 ms timer, a power loss loses at most the last
 * ~1 s of operations (plus one fdatasync in flight).
 *
 * Compaction. When the log grows past the compaction threshold, and on
 * close, the state is written to a new snapshot (temporary file, fsync,
 * rename, fsync of the directory) and a new, empty log file is renamed over
 * the old one (its sync and the old file's release run on the syncer
 * thread). Settled rids (kept 5 min, at most STORE_MEM_RETAIN_MAX) only
 * tell a duplicate settlement from an unknown one -- neither charges
 * anything -- so they are not in snapshots: after a restart only those
 * settled since the last snapshot are duplicates. The directory is locked
 * by tollgate.lock (flock): one process per state directory.
 *
 * Time is wall-clock milliseconds (CLOCK_REALTIME by default), so windows and
 * leases mean the same thing after a restart. The store never lets its time
 * go backwards: a clock stepped back is held at the last time seen.
 */
#ifndef TOLLGATE_STORE_MEM_H
#define TOLLGATE_STORE_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Defaults, each adjustable per store below. */
#define STORE_MEM_COMPACT_BYTES (16u << 20)   /* log size that triggers a snapshot */
#define STORE_MEM_RETAIN_MS     3600000        /* lapsed leases still settle this long... */
#define STORE_MEM_DONE_MS       300000         /* settled rids remembered this long (as Redis)... */
#define STORE_MEM_RETAIN_MAX    2000000        /* ...but never more than this many (~80 B each) */

/* Open (creating the directory if missing) and load the snapshot, then
 * replay the log. A torn last log record is tolerated and cut off; any other
 * defect is an error naming the file and the offset. Only one process may
 * use a state directory at a time. NULL with `err` filled on failure. */
struct store *store_mem_open(const char *state_dir, char *err, size_t errlen);

/* Write the records not yet in the log file (one write()); 0, or -1 when
 * the write failed (they are kept and written by the next call). */
int store_mem_flush(struct store *s);

/* Make every operation so far durable (write, then fdatasync if dirty). */
void store_mem_sync(struct store *s);

/* Periodic work, from a timer (every 100 ms is right): lapse the leases that
 * expired, forget settled rids past their retention, drop idle buckets (at
 * most once a second), write the log, and sync it if dirty and the last sync
 * is a second old. Cheap when idle. */
void store_mem_expire(struct store *s);

/* Write a snapshot now and empty the log. 0, or -1 with `err` filled (the
 * store keeps working on its log). */
int store_mem_compact(struct store *s, char *err, size_t errlen);

/* The clock, for tests: `now_ms(arg)` returns wall-clock ms. NULL restores
 * CLOCK_REALTIME. */
void store_mem_set_clock(struct store *s, int64_t (*now_ms)(void *), void *arg);

void store_mem_set_compact_bytes(struct store *s, size_t bytes);
void store_mem_set_retain_max(struct store *s, size_t max_rids);

/* Persistent named counters (e.g. tokens by label set). A name is at most
 * STORE_MEM_NAME_MAX - 1 bytes; longer names are ignored with a warning.
 * store_mem_counter_each() visits every counter in no particular order. */
#define STORE_MEM_NAME_MAX 1024
void store_mem_counter_add(struct store *s, const char *name, int64_t delta);
void store_mem_counter_each(struct store *s,
                            void (*fn)(const char *name, int64_t value, void *arg), void *arg);

/* Introspection for tests and the dashboard. */
struct store_mem_stats {
	size_t buckets;        /* rate windows and quota balances held */
	size_t reservations;   /* in flight */
	size_t lapsed;         /* leases expired, not settled (late settlement still charges) */
	size_t settled;        /* settled rids remembered (duplicates detected) */
	size_t counters;
	uint64_t log_bytes;
	uint64_t generation;   /* bumped by every snapshot */
};
void store_mem_stats(struct store *s, struct store_mem_stats *st);

#endif
