/* admit.h -- may this request spend tokens, and how many does it reserve?
 *
 * Owns: turning a route's ai-token-ratelimit rules and ai-quota into store
 * buckets for one request (every matching rule item and limit key, every
 * window it carries, the consumer's quota balance), the estimate reserved in
 * each (prompt estimate + the request's token cap, weighted by `count` and
 * `weights`), and reading the store's answer back into a verdict: which
 * bucket refused, the status and message to send, Retry-After, and the
 * x-ratelimit-* numbers of the tightest rate limit.
 */
#ifndef TOLLGATE_ADMIT_H
#define TOLLGATE_ADMIT_H

#include "config.h"
#include "meter.h"
#include "request.h"
#include "store.h"

#define ADMIT_DEFAULT_OUTPUT 256     /* output estimate when the request sets no cap */

enum bucket_kind {
	BUCKET_RATE,
	BUCKET_QUOTA,
};

struct bucket_meta {
	enum bucket_kind kind;
	const char *rule;           /* rule_name (rate) or "ai-quota" */
};

struct admit_plan {
	struct store_admit_req req;
	struct bucket_meta meta[STORE_MAX_BUCKETS];
	int64_t est_in, est_out;
	bool truncated;             /* more buckets applied than STORE_MAX_BUCKETS */
};

/* Fill plan for a request (consumer may be NULL on routes without auth). */
void admit_plan(const struct tg_route *route, const struct tg_consumer *consumer,
                const struct req_view *r, const struct llm_request *lr,
                const char *rid, int64_t lease_ms, struct admit_plan *plan);

/* Multipliers of a plugin's count mode and per-model weights. */
void admit_weights(enum tg_count_mode count, const struct tg_model_weight *w, size_t n,
                   const char *model, double *w_in, double *w_out);

struct admit_verdict {
	bool admitted;
	int status;                 /* refusal status */
	const char *message;        /* refusal message */
	const char *type;           /* OpenAI error type */
	int64_t retry_after;        /* seconds (rate refusals) */
	bool has_rl;                /* x-ratelimit-* for the tightest rate bucket */
	int64_t rl_limit, rl_remaining, rl_reset;
};

void admit_verdict(const struct tg_route *route, const struct admit_plan *plan,
                   const struct store_admit_res *res, struct admit_verdict *v);

#endif
