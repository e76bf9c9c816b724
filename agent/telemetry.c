/* telemetry.c -- see telemetry.h.
 *
 * Token counters are persisted as embedded-store counters named
 * "tokens|<direction>|<route>|<provider>|<model>|<consumer>" and loaded back
 * into the Prometheus registry at start, so tollgate_tokens_total only ever
 * grows across restarts (a reset would read as a spike in rate()).
 */
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "log.h"
#include "metrics.h"
#include "spop_server.h"
#include "store_mem.h"
#include "store_redis.h"
#include "telemetry.h"

#define COUNTER_PREFIX "tokens|"

static void restore_counter(const char *name, int64_t value, void *arg)
{
	struct metrics *m = arg;
	char tmp[512], *f[6], *save = NULL;
	int n = 0;

	if (strncmp(name, COUNTER_PREFIX, strlen(COUNTER_PREFIX)) != 0 ||
	    strlen(name) >= sizeof(tmp))
		return;
	memcpy(tmp, name, strlen(name) + 1);
	for (char *t = strtok_r(tmp, "|", &save); t && n < 6; t = strtok_r(NULL, "|", &save))
		f[n++] = t;
	if (n != 6 || value <= 0)
		return;
	tgm_tokens(m, strcmp(f[1], "output") == 0 ? TGM_OUTPUT : TGM_INPUT, f[2], f[3], f[4],
	           f[5], (uint64_t)value);
}

static void collect_spop(struct metrics *m, void *arg)
{
	struct agent *a = arg;
	struct store_redis_stats rs;

	if (a->spop)
		metrics_spop_stats(m, spop_server_stats(a->spop));
	if (a->store && a->store != a->mem && a->fallback_family >= 0) {   /* Redis */
		static const char *const local[] = { "local", NULL }, *const open[] = { "open", NULL },
		                         *const closed[] = { "closed", NULL };

		store_redis_stats(a->store, &rs);
		tgm_store_breaker(m, rs.breaker != STORE_REDIS_CLOSED);
		tgm_store_reconnects(m, rs.reconnects);
		metrics_set(m, TGM_STORE_ERRORS, NULL,
		            (double)(rs.errors + rs.timeouts + rs.rejected));
		/* every decision taken without Redis, by failure mode */
		metrics_set(m, a->fallback_family, local, (double)rs.fallback_local);
		metrics_set(m, a->fallback_family, open, (double)rs.fallback_open);
		metrics_set(m, a->fallback_family, closed, (double)rs.fallback_closed);
	}
}

int tel_init(struct agent *a)
{
	if (!a->metrics)
		return -1;
	static const char *const mode[] = { "mode", NULL };

	if (a->mem)
		store_mem_counter_each(a->mem, restore_counter, a->metrics);
	a->fallback_family = metrics_family(a->metrics, "tollgate_store_fallback_decisions_total",
	                                    METRIC_COUNTER,
	                                    "Admissions decided without Redis, by failure_mode "
	                                    "(local: this agent's share; open: unchecked; "
	                                    "closed: refused).", mode, NULL, 0);
	metrics_on_collect(a->metrics, collect_spop, a);
	return 0;
}

void tel_free(struct agent *a)
{
	if (a->metrics)
		metrics_collect_remove(a->metrics, collect_spop, a);
}

void tel_request(struct metrics *m, const char *decision, int status, const char *route,
                 const char *consumer)
{
	tgm_request(m, decision, status, route, consumer);
}

void tel_admission(struct metrics *m, double seconds)
{
	tgm_admission(m, seconds);
}

void tel_store_error(struct metrics *m)
{
	tgm_store_error(m);
}

void tel_store_latency(struct metrics *m, double seconds)
{
	tgm_store_latency(m, seconds);
}

void tel_limit_decision(struct metrics *m, const char *rule, const char *outcome)
{
	tgm_limit_decision(m, rule, outcome);
}

void tel_unverdicted(struct metrics *m)
{
	tgm_unverdicted(m);
}

void tel_quota_remaining(struct metrics *m, const char *consumer, int64_t remaining)
{
	tgm_quota_remaining(m, consumer, (double)remaining);
}

void tel_settlement(struct metrics *m, const char *result, const char *source)
{
	static const char *const names[] = { "settled", "duplicate", "late", "unknown", "error" };
	enum tgm_settle_result r = TGM_ERROR;

	for (unsigned i = 0; i < sizeof(names) / sizeof(*names); i++)
		if (strcmp(result, names[i]) == 0)
			r = (enum tgm_settle_result)i;
	tgm_settlement(m, r, strcmp(source, "spop") == 0 ? TGM_SRC_SPOP : TGM_SRC_RECORD);
}

/* The persisted token counters: "tokens|input|<labels>" and
 * "tokens|output|<labels>", labels formatted once for both. */
static void persist(struct agent *a, const struct usage_record *u)
{
	char name[600], *labels;
	size_t room;

	if (!a->mem || (u->in <= 0 && u->out <= 0))
		return;
	labels = name + sizeof(COUNTER_PREFIX "output") - 1;
	room = sizeof(name) - (size_t)(labels - name);
	if ((size_t)snprintf(labels, room, "|%s|%s|%s|%s", u->route, u->provider, u->model,
	                     u->consumer) >= room)
		return;                        /* cannot happen: labels are bounded */
	if (u->in > 0) {
		char *p = labels - (sizeof(COUNTER_PREFIX "input") - 1);

		memcpy(p, COUNTER_PREFIX "input", sizeof(COUNTER_PREFIX "input") - 1);
		store_mem_counter_add(a->mem, p, u->in);
	}
	if (u->out > 0) {
		memcpy(name, COUNTER_PREFIX "output", sizeof(COUNTER_PREFIX "output") - 1);
		store_mem_counter_add(a->mem, name, u->out);
	}
}

void tel_usage(struct agent *a, const struct usage_record *u)
{
	tgm_tokens(a->metrics, TGM_INPUT, u->route, u->provider, u->model, u->consumer,
	           (uint64_t)u->in);
	tgm_tokens(a->metrics, TGM_OUTPUT, u->route, u->provider, u->model, u->consumer,
	           (uint64_t)u->out);
	persist(a, u);
	if (u->reserved >= 0 && u->in + u->out > u->reserved)
		tgm_overshoot(a->metrics, u->route, (uint64_t)(u->in + u->out - u->reserved));
	/* The usage line: names and numbers only, never a credential. */
	log_msg(LOG_INFO, "usage {\"rid\":\"%s\",\"route\":\"%s\",\"provider\":\"%s\",\"model\":\"%s\","
	        "\"consumer\":\"%s\",\"status\":%d,\"input_tokens\":%lld,\"output_tokens\":%lld,"
	        "\"estimated\":%s,\"source\":\"%s\"}", u->rid, u->route, u->provider, u->model,
	        u->consumer, u->status, (long long)u->in, (long long)u->out,
	        u->estimated ? "true" : "false", u->source);
}
