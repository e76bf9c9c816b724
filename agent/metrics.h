/* metrics.h -- the agent's Prometheus registry, served on agent.http /metrics.
 *
 * Owns: metric families (counters, gauges, histograms with label sets), their
 * series, the text exposition format 0.0.4, scrape-time collect callbacks,
 * and the names of the product's metrics (enum tgm_family below: call sites
 * use the enum and the typed helpers, never a spelled-out name).
 *
 * Series: a family's series is found by hashing its label values; a series,
 * once created, lives as long as the registry, so the pointer returned by
 * metrics_series() may be cached and updating an existing series never
 * allocates. Label values are copied and escaped once, at creation: NULL is
 * "", a value longer than 256 bytes or not valid UTF-8 becomes "_invalid_".
 * A family holds at most 10000 series; beyond that updates go to one series
 * whose label values are all "_overflow_" (logged once), so attacker-chosen
 * values (a model name from a request body) cannot exhaust memory.
 *
 * Collect callbacks run at the start of every metrics_render(), for values
 * that live elsewhere (SPOP counters, quota balances, breaker state): they
 * set gauges, or counters mirroring a monotonic counter kept elsewhere.
 *
 * One loop, one thread: no locking.
 */
#ifndef TOLLGATE_METRICS_H
#define TOLLGATE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

struct metrics;
struct metric_series;
struct http_server;
struct spop_stats;

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* The product's families, declared by metrics_new() in this order (the enum
 * value is the family id). Labels in brackets, in the order values are given. */
enum tgm_family {
	TGM_TOKENS,             /* tollgate_tokens_total [direction route provider model consumer] */
	TGM_REQUESTS,           /* tollgate_requests_total [decision status route consumer] */
	TGM_ADMISSION_SECONDS,  /* tollgate_admission_seconds, histogram 10us..1s */
	TGM_SPOP_FRAMES,        /* tollgate_spop_frames_total [direction=in|out] */
	TGM_SPOP_ERRORS,        /* tollgate_spop_errors_total [status] */
	TGM_SETTLEMENTS,        /* tollgate_settlements_total [result source] */
	TGM_LIMIT_DECISIONS,    /* tollgate_limit_decisions_total [rule outcome] */
	TGM_QUOTA_REMAINING,    /* tollgate_quota_remaining [consumer], gauge */
	TGM_STORE_SECONDS,      /* tollgate_store_seconds, histogram 10us..1s */
	TGM_STORE_ERRORS,       /* tollgate_store_errors_total */
	TGM_STORE_BREAKER_OPEN, /* tollgate_store_breaker_open, gauge 0/1 */
	TGM_STORE_RECONNECTS,   /* tollgate_store_reconnects_total (Redis connection retries) */
	TGM_OVERSHOOT_TOKENS,   /* tollgate_overshoot_tokens_total [rule] */
	TGM_UNVERDICTED,        /* tollgate_unverdicted_total (failure-policy decisions) */
	TGM_SPOP_CONNECTIONS,   /* tollgate_spop_connections, gauge (active) */
	TGM_SPOP_INFLIGHT,      /* tollgate_spop_frames_in_flight, gauge */
	TGM_RING_SESSIONS,      /* tollgate_settle_ring_sessions, gauge */
	TGM_RING_LINES,         /* tollgate_settle_ring_lines_total [kind=record|other] */
	TGM_BUILD_INFO,         /* tollgate_build_info [version], gauge = 1 */
	TGM__COUNT
};

/* Fixed label values, as enums so they cannot be misspelled. */
enum tgm_direction { TGM_INPUT, TGM_OUTPUT };                     /* "input" "output" */
enum tgm_settle_result { TGM_SETTLED, TGM_DUPLICATE, TGM_LATE, TGM_UNKNOWN, TGM_ERROR };
enum tgm_settle_source { TGM_SRC_SPOP, TGM_SRC_RECORD };          /* "spop" "record" */

typedef void (*metrics_collect_fn)(struct metrics *m, void *arg);

/* ---- registry ------------------------------------------------------- */

/* A registry with every tgm_family declared. NULL on allocation failure. */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* Declares a family. name must start with "tollgate_" and be a valid metric
 * name; labels is NULL or a NULL-terminated list of valid label names (not
 * "le"); a histogram needs nbuckets > 0 strictly increasing finite upper
 * bounds (+Inf is implicit). Returns the family id, or -1. A family without
 * labels has its one series (at 0) from the start. */
int metrics_family(struct metrics *m, const char *name, enum metric_type type,
                   const char *help, const char *const *labels,
                   const double *buckets, size_t nbuckets);

/* The series for these label values (as many as the family has labels;
 * NULL for a family without labels), created on first use. NULL only on an
 * invalid family id or allocation failure; every update below accepts NULL. */
struct metric_series *metrics_series(struct metrics *m, int family,
                                     const char *const *values);
void metrics_series_add(struct metric_series *s, double v);     /* counter: v >= 0 */
void metrics_series_set(struct metric_series *s, double v);     /* gauge, or mirror */
void metrics_series_observe(struct metric_series *s, double v); /* histogram */

/* Lookup + update in one call. */
void metrics_add(struct metrics *m, int family, const char *const *values, double v);
void metrics_set(struct metrics *m, int family, const char *const *values, double v);
void metrics_observe(struct metrics *m, int family, const char *const *values, double v);

/* Hides every series of a family until it is updated again (for a collect
 * callback that re-sets the gauges of things that still exist). Handles stay
 * valid; nothing is freed. */
void metrics_family_hide(struct metrics *m, int family);

/* Collect callbacks, run in registration order by metrics_render(). */
int  metrics_on_collect(struct metrics *m, metrics_collect_fn fn, void *arg);
void metrics_collect_remove(struct metrics *m, metrics_collect_fn fn, void *arg);

/* Appends the exposition (text format 0.0.4) to out. 0, or -1 (memory). */
int  metrics_render(struct metrics *m, struct buf *out);

/* Serves GET /metrics (the exposition), GET /healthz ("ok") and GET / (the
 * live dashboard page) on srv. -1 if the route table is full. */
int  metrics_http_register(struct metrics *m, struct http_server *srv);

/* Maps SPOP server counters (spop_server_stats()) onto TGM_SPOP_FRAMES,
 * TGM_SPOP_ERRORS and TGM_SPOP_CONNECTIONS; for a collect callback:
 *   static void collect_spop(struct metrics *m, void *arg)
 *   { metrics_spop_stats(m, spop_server_stats(arg)); }
 *   metrics_on_collect(m, collect_spop, agent->spop);                    */
void metrics_spop_stats(struct metrics *m, const struct spop_stats *st);

/* ---- typed helpers for the product's families (m may be NULL) -------- */

void tgm_tokens(struct metrics *m, enum tgm_direction dir, const char *route,
                const char *provider, const char *model, const char *consumer, uint64_t n);
void tgm_request(struct metrics *m, const char *decision, int status, const char *route,
                 const char *consumer);
void tgm_admission(struct metrics *m, double seconds);
void tgm_settlement(struct metrics *m, enum tgm_settle_result result,
                    enum tgm_settle_source source);
void tgm_limit_decision(struct metrics *m, const char *rule, const char *outcome);
void tgm_quota_remaining(struct metrics *m, const char *consumer, double remaining);
void tgm_store_latency(struct metrics *m, double seconds);
void tgm_store_error(struct metrics *m);
void tgm_store_breaker(struct metrics *m, bool open);
/* Mirrors the Redis store's count of connection attempts after the first. */
void tgm_store_reconnects(struct metrics *m, uint64_t attempts);
void tgm_overshoot(struct metrics *m, const char *rule, uint64_t tokens);
void tgm_unverdicted(struct metrics *m);
/* The settlement ring (ring_reader.c): sessions reading records now; lines
 * read, records or not (HAProxy's notices, CLI refusals). */
void tgm_ring_sessions(struct metrics *m, unsigned n);
void tgm_ring_line(struct metrics *m, bool record);

#endif
