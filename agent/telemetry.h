/* telemetry.h -- what the decisions report: metrics and the usage log.
 *
 * Owns: the mapping from product events (a decision, a settlement, a store
 * error) to Prometheus series (agent/metrics.c) and to the one JSON usage
 * line per settled request on the agent's log. Token counters are also kept
 * in the embedded store, so they survive restarts: /metrics never goes
 * backwards because the agent restarted.
 */
#ifndef TOLLGATE_TELEMETRY_H
#define TOLLGATE_TELEMETRY_H

#include <stdbool.h>
#include <stdint.h>

struct agent;
struct metrics;

/* Register the series and scrape-time collectors; reload persisted token
 * counters from a->mem. */
int  tel_init(struct agent *a);
void tel_free(struct agent *a);

void tel_request(struct metrics *m, const char *decision, int status, const char *route,
                 const char *consumer);
void tel_admission(struct metrics *m, double seconds);
void tel_store_error(struct metrics *m);
void tel_store_latency(struct metrics *m, double seconds);
void tel_limit_decision(struct metrics *m, const char *rule, const char *outcome);
void tel_unverdicted(struct metrics *m);
void tel_quota_remaining(struct metrics *m, const char *consumer, int64_t remaining);

struct usage_record {
	const char *rid, *route, *provider, *model, *consumer, *source;
	int status;
	int64_t in, out;
	int64_t reserved;           /* the admission's estimate (overshoot = in + out - reserved) */
	bool estimated;
};
/* Tokens of a settled request: counters (persisted), usage log line. */
void tel_usage(struct agent *a, const struct usage_record *u);
/* settled | duplicate | late | unknown | error, by source spop | record. */
void tel_settlement(struct metrics *m, const char *result, const char *source);

#endif
