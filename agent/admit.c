/* admit.c -- see admit.h.
 *
 * Bucket keys. Rate limits: "tollgate:{T}:rl:<rule>:<item>:<value>:<window>"
 * where <value> is the request's value for a limit_by_per_* item (one budget
 * per value) or the limit key as written for a limit_by_* item (one budget
 * shared by every matching value); T, the hash tag, is the consumer (or the
 * route for anonymous calls) so one request's keys share a Redis Cluster
 * slot. Values taken from headers, parameters and cookies enter keys as a
 * digest (they are often the API key itself: never a credential in the
 * store, in a key listing or in a log). Quota: "<redis_key_prefix><consumer>" exactly, the Higress key, so
 * balances migrate in both directions.
 *
 * Every matching item applies (Higress stops at the first), and each window
 * a key carries (second, minute, hour, day) is a bucket of its own.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "admit.h"
#include "hex.h"
#include "route.h"
#include "sha256.h"

static const struct { int64_t ms; size_t off; } windows[] = {
	{ 1000, offsetof(struct tg_token_limits, per_second) },
	{ 60000, offsetof(struct tg_token_limits, per_minute) },
	{ 3600000, offsetof(struct tg_token_limits, per_hour) },
	{ 86400000, offsetof(struct tg_token_limits, per_day) },
};

void admit_weights(enum tg_count_mode count, const struct tg_model_weight *w, size_t n,
                   const char *model, double *w_in, double *w_out)
{
	*w_in = count == TG_COUNT_OUTPUT ? 0. : 1.;
	*w_out = count == TG_COUNT_INPUT ? 0. : 1.;
	for (size_t i = 0; i < n; i++) {
		if (route_glob(w[i].model, model)) {
			*w_in *= w[i].input;
			*w_out *= w[i].output;
			return;
		}
	}
}

static void add_bucket(struct admit_plan *p, enum bucket_kind kind, const char *rule,
                       int64_t limit, int64_t window_ms, double w_in, double w_out,
                       const char *fmt_key, ...) __attribute__((format(printf, 8, 9)));

static void add_bucket(struct admit_plan *p, enum bucket_kind kind, const char *rule,
                       int64_t limit, int64_t window_ms, double w_in, double w_out,
                       const char *fmt_key, ...)
{
	struct store_bucket *b;
	va_list ap;

	if (p->req.n == STORE_MAX_BUCKETS) {
		p->truncated = true;
		return;
	}
	b = &p->req.b[p->req.n];
	va_start(ap, fmt_key);
	vsnprintf(b->key, sizeof(b->key), fmt_key, ap);
	va_end(ap);
	b->limit = limit;
	b->window_ms = window_ms;
	b->w_in = w_in;
	b->w_out = w_out;
	b->estimate = (int64_t)((double)p->est_in * w_in + (double)p->est_out * w_out + 0.999);
	p->meta[p->req.n].kind = kind;
	p->meta[p->req.n].rule = rule;
	p->req.n++;
}

/* The request's value for a rule item; false if it has none. */
static bool item_value(const struct tg_rule_item *it, const struct tg_consumer *consumer,
                       const struct req_view *r, char *out, size_t outlen)
{
	const struct spop_str *h;

	switch (it->by) {
	case TG_LIMIT_BY_HEADER:
	case TG_LIMIT_BY_PER_HEADER:
		if (!(h = req_header(r, it->name, 0)))
			return false;
		str_copy(out, outlen, *h);
		return true;
	case TG_LIMIT_BY_PARAM:
	case TG_LIMIT_BY_PER_PARAM:
		return req_query_param(r, it->name, out, outlen);
	case TG_LIMIT_BY_COOKIE:
	case TG_LIMIT_BY_PER_COOKIE:
		return req_cookie(r, it->name, out, outlen);
	case TG_LIMIT_BY_CONSUMER:
	case TG_LIMIT_BY_PER_CONSUMER:
		if (!consumer)
			return false;
		snprintf(out, outlen, "%s", consumer->name);
		return true;
	case TG_LIMIT_BY_PER_IP:
		if (it->ip_header) {
			if (!(h = req_header(r, it->ip_header, 0)))
				return false;
			str_copy(out, outlen, *h);
			out[strcspn(out, ", ")] = 0;     /* X-Forwarded-For: first hop */
			return true;
		}
		req_ip_str(r, out, outlen);
		return r->ip_family != 0;
	}
	return false;
}

static bool key_matches(const struct tg_limit_key *k, const char *value)
{
	uint8_t addr[16];

	switch (k->kind) {
	case TG_KEY_EXACT:
		return strcmp(k->key, value) == 0;
	case TG_KEY_ANY:
		return true;
	case TG_KEY_REGEXP:
		return k->re_compiled && regexec(&k->re, value, 0, NULL, 0) == 0;
	case TG_KEY_CIDR:
		if (inet_pton(AF_INET, value, addr) == 1)
			return config_cidr_match(&k->cidr, AF_INET, addr);
		if (inet_pton(AF_INET6, value, addr) == 1)
			return config_cidr_match(&k->cidr, AF_INET6, addr);
		return false;
	}
	return false;
}

static bool is_per(enum tg_limit_by by)
{
	return by >= TG_LIMIT_BY_PER_HEADER;
}

/* The key component for a value: names and addresses as they are, request
 * values as the first 16 bytes of their SHA-256 in hex. */
static void key_part(const struct tg_rule_item *it, const char *value, char *out, size_t outlen)
{
	uint8_t d[SHA256_LEN];

	if (it->by == TG_LIMIT_BY_PER_CONSUMER || it->by == TG_LIMIT_BY_PER_IP) {
		snprintf(out, outlen, "%s", value);
		return;
	}
	if (sha256(value, strlen(value), d) != 0)
		memset(d, 0, sizeof(d));    /* out of memory: such values share one bucket */
	if (outlen >= 33)
		hex_encode(d, 16, out);    /* the hash's first 128 bits name the bucket */
	else if (outlen)
		out[0] = '\0';
}

static void plan_ratelimit(const struct tg_ai_token_ratelimit *rl, const char *tag,
                           const struct tg_consumer *consumer, const struct req_view *r,
                           const char *model, struct admit_plan *p)
{
	double wi, wo;
	char value[256], part[256];

	admit_weights(rl->count, rl->weights, rl->n_weights, model, &wi, &wo);
	if (rl->has_global) {
		for (size_t w = 0; w < sizeof(windows) / sizeof(*windows); w++) {
			uint64_t lim = *(const uint64_t *)((const char *)&rl->global_threshold + windows[w].off);

			if (lim)
				add_bucket(p, BUCKET_RATE, rl->rule_name, (int64_t)lim, windows[w].ms, wi, wo,
				           "tollgate:{%s}:rl:%s:global:%lld", rl->rule_name, rl->rule_name,
				           (long long)windows[w].ms);
		}
	}
	for (size_t i = 0; i < rl->n_rule_items; i++) {
		const struct tg_rule_item *it = &rl->rule_items[i];

		if (!item_value(it, consumer, r, value, sizeof(value)))
			continue;
		for (size_t k = 0; k < it->n_keys; k++) {
			const struct tg_limit_key *key = &it->keys[k];

			if (!key_matches(key, value))
				continue;
			key_part(it, is_per(it->by) ? value : key->key, part, sizeof(part));
			for (size_t w = 0; w < sizeof(windows) / sizeof(*windows); w++) {
				uint64_t lim = *(const uint64_t *)((const char *)&key->limits + windows[w].off);

				if (lim)
					add_bucket(p, BUCKET_RATE, rl->rule_name, (int64_t)lim,
					           windows[w].ms, wi, wo, "tollgate:{%s}:rl:%s:%zu:%s:%lld",
					           tag, rl->rule_name, i, part, (long long)windows[w].ms);
			}
		}
	}
}

/* A request under several plugins takes the strictest failure_mode:
 * closed, then local, then open. -1 (none yet) loses to any. */
static int stricter(int a, enum tg_failure_mode b)
{
	static const int rank[] = { [TG_FAIL_OPEN] = 0, [TG_FAIL_LOCAL] = 1, [TG_FAIL_CLOSED] = 2 };

	return a < 0 || rank[b] > rank[a] ? (int)b : a;
}

void admit_plan(const struct tg_route *route, const struct tg_consumer *consumer,
                const struct req_view *r, const struct llm_request *lr,
                const char *rid, int64_t lease_ms, struct admit_plan *p)
{
	const char *tag = consumer ? consumer->name : route->name;
	double wi, wo;

	memset(p, 0, sizeof(*p));
	p->req.failure_mode = -1;
	snprintf(p->req.rid, sizeof(p->req.rid), "%s", rid);
	p->req.lease_ms = lease_ms;
	p->est_in = lr->prompt_tokens;
	p->est_out = lr->max_tokens >= 0 ? lr->max_tokens : ADMIT_DEFAULT_OUTPUT;
	if (route->ratelimit) {
		plan_ratelimit(route->ratelimit, tag, consumer, r, lr->model, p);
		p->req.strict = route->ratelimit->strict;
		p->req.failure_mode = stricter(p->req.failure_mode, route->ratelimit->failure_mode);
	}
	if (route->quota && consumer) {
		const struct tg_ai_quota *q = route->quota;

		admit_weights(q->count, q->weights, q->n_weights, lr->model, &wi, &wo);
		add_bucket(p, BUCKET_QUOTA, "ai-quota", 0, 0, wi, wo, "%s%s",
		           q->redis_key_prefix, consumer->name);
		p->req.strict = p->req.strict || q->strict;
		p->req.failure_mode = stricter(p->req.failure_mode, q->failure_mode);
	}
	/* no bucket at all: the store still reserves the rid (store.h), so the
	 * request is metered and settled exactly once all the same */
}

/* Seconds until the budget frees, as headers say it: rounded up, and never
 * more than the window (the stores keep usage up to one sub-window past it,
 * a rounding no client should wait for: a minute limit answers 1..60). */
static int64_t reset_seconds(int64_t reset_ms, int64_t window_ms)
{
	int64_t s = (reset_ms + 999) / 1000, w = window_ms / 1000;

	return w > 0 && s > w ? w : s;
}

void admit_verdict(const struct tg_route *route, const struct admit_plan *plan,
                   const struct store_admit_res *res, struct admit_verdict *v)
{
	int64_t best = INT64_MAX;

	memset(v, 0, sizeof(*v));
	v->admitted = res->admitted;
	for (unsigned i = 0; i < plan->req.n; i++) {
		const struct store_bucket_state *st = &res->st[i];

		if (plan->meta[i].kind != BUCKET_RATE || st->remaining >= best)
			continue;
		best = st->remaining;
		v->has_rl = true;
		v->rl_limit = plan->req.b[i].limit;
		v->rl_remaining = st->remaining > 0 ? st->remaining : 0;
		v->rl_reset = reset_seconds(st->reset_ms, plan->req.b[i].window_ms);
	}
	if (res->admitted)
		return;
	if (res->refused >= 0 && plan->meta[res->refused].kind == BUCKET_QUOTA) {
		v->status = 403;
		v->message = "Request denied by ai quota check, No quota left";
		v->type = "insufficient_quota";
		return;
	}
	v->status = route->ratelimit ? route->ratelimit->rejected_code : 429;
	v->message = route->ratelimit ? route->ratelimit->rejected_msg : "Too many requests";
	v->type = "rate_limit_exceeded";
	v->retry_after = res->refused >= 0
	                 ? reset_seconds(res->st[res->refused].reset_ms,
	                                 plan->req.b[res->refused].window_ms) : 1;
	if (v->retry_after < 1)
		v->retry_after = 1;
}
