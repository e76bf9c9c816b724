/* gateway.c -- the `request` message: from a request to a verdict.
 *
 * Owns: the order of the decisions for one request and the variables that
 * carry the verdict to HAProxy (doc/gateway.md). The decisions themselves
 * live in their own files: auth.c (who), route.c (where), admit.c (how
 * many tokens), quota_admin.c (the ai-quota admin API). The only wait is
 * the store's admission, one round trip; everything else is computed on the
 * loop in microseconds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admit.h"
#include "agent.h"
#include "auth.h"
#include "answer.h"
#include "gateway.h"
#include "log.h"
#include "meter.h"
#include "models.h"
#include "telemetry.h"
#include "quota_admin.h"
#include "route.h"
#include "store.h"

struct pending {
	struct agent *a;
	struct runtime *rt;
	struct spop_tx *tx;
	const struct tg_route *route;
	const struct tg_consumer *consumer;
	struct llm_request lr;
	struct upstream up;
	char *body_orig;            /* kept when admission may rewrite it */
	size_t body_orig_len;
	char *body_new;
	size_t body_new_len;
	bool rewrite_usage;         /* ask for stream_options.include_usage */
	bool chat_path;             /* /v1/chat/completions or /v1/completions */
	bool hide_usage;
	char rid[64];
	char ctx[512];
	ev_tstamp t0, t_store;
	struct admit_plan plan;
};

/* Names and models go into ctx, a space-free, comma-separated record. */
static void ctx_field(char *out, size_t outlen, const char *s)
{
	size_t o = 0;

	for (; *s && o + 1 < outlen; s++) {
		char c = *s;

		out[o++] = (c == ' ' || c == ',' || c == '"' || (unsigned char)c < 0x21) ? '_' : c;
	}
	out[o] = 0;
}

static void make_ctx(struct pending *p)
{
	char route[96], prov[96], model[160], cons[96];

	ctx_field(route, sizeof(route), p->route->name);
	ctx_field(prov, sizeof(prov), p->route->provider->name);
	ctx_field(model, sizeof(model), p->lr.model[0] ? p->lr.model : "-");
	ctx_field(cons, sizeof(cons), p->consumer ? p->consumer->name : "anonymous");
	snprintf(p->ctx, sizeof(p->ctx), "%s,%s,%s,%s,%lld,%lld,%d", route, prov, model, cons,
	         (long long)p->plan.est_in, (long long)p->plan.est_out, p->lr.stream ? 1 : 0);
}

/* Does the answer need the Lua filter (the prov_*_obs backend)? Streams,
 * rewritten request bodies, and answers that may not fit the buffer (then
 * SPOP would see only their head): embeddings and the Responses API, or no
 * token cap, or one whose text (up to 6 bytes a token, escaped) may not fit.
 * Everything else is settled from the `response` message alone. */
static bool needs_observer(const struct pending *p)
{
	const struct tg_config *cfg = p->rt->cfg;

	if (p->lr.stream || p->body_new)
		return true;    /* metered or not: http-no-delay for SSE, the body swap */
	if (!p->rid[0])
		return false;
	if (!p->chat_path || p->lr.max_tokens < 0)
		return true;
	return (unsigned long)p->lr.max_tokens * 6 + 4096 >= config_max_body_floor(cfg);
}

static void set_allow(struct pending *p, const struct admit_verdict *v)
{
	struct spop_tx *tx = p->tx;
	char backend[sizeof(p->up.backend) + 4];
	int n;

	tx_set_str(tx, "decision", "allow", 5);
	if (p->consumer)
		tx_set_str(tx, "consumer", p->consumer->name, strlen(p->consumer->name));
	n = snprintf(backend, sizeof(backend), "%s%s", p->up.backend,
	             needs_observer(p) ? "_obs" : "");
	tx_set_str(tx, "backend", backend, (size_t)n);
	if (p->up.pkey) {
		tx_set_str(tx, "pkey", p->up.pkey, strlen(p->up.pkey));
		tx_set_str(tx, "pkey_hdr", p->up.pkey_hdr, strlen(p->up.pkey_hdr));
	}
	tx_set_str(tx, "path", p->up.path, strlen(p->up.path));
	if (p->up.query_set)
		tx_set_str(tx, "query", p->up.query, strlen(p->up.query));
	if (p->body_new) {
		tx_set_str(tx, "body_new", p->body_new, p->body_new_len);
		tx_set_int(tx, "body_len", (int64_t)p->body_new_len);
	}
	if (p->lr.stream) {
		struct spop_data t = spop_bool_data(true);

		tx_set_var(tx, SPOP_SCOPE_TXN, "stream", &t);
		if (p->hide_usage)
			tx_set_var(tx, SPOP_SCOPE_TXN, "hide_usage", &t);
	}
	if (p->rid[0]) {
		tx_set_str(tx, "rid", p->rid, strlen(p->rid));
		tx_set_str(tx, "ctx", p->ctx, strlen(p->ctx));
	}
	if (v && v->has_rl) {
		tx_set_int(tx, "rl_limit", v->rl_limit);
		tx_set_int(tx, "rl_remaining", v->rl_remaining);
		tx_set_int(tx, "rl_reset", v->rl_reset);
	}
}

/* A pending request is ~5 KiB (the admission plan's keys): a few are kept
 * for reuse, because an allocation that size costs glibc a consolidation of
 * its small-chunk bins every time. */
#define PENDING_KEEP 64
static struct pending *pending_pool[PENDING_KEEP];
static unsigned pending_kept;

static struct pending *pending_new(void)
{
	struct pending *p;

	if (!pending_kept)
		return calloc(1, sizeof(struct pending));
	p = pending_pool[--pending_kept];
	memset(p, 0, sizeof(*p));
	return p;
}

static void pending_free(struct pending *p)
{
	free(p->body_orig);
	free(p->body_new);
	runtime_unref(p->rt);
	if (pending_kept < PENDING_KEEP)
		pending_pool[pending_kept++] = p;
	else
		free(p);
}

static const char *consumer_label(const struct pending *p)
{
	return p->consumer ? p->consumer->name : "anonymous";
}

static void count_decision(struct pending *p, const char *decision, int status)
{
	tel_request(p->a->metrics, decision, status, p->route ? p->route->name : "-",
	                consumer_label(p));
	tel_admission(p->a->metrics, ev_time() - p->t0);
}

/* ---- admission ------------------------------------------------------ */

/* clamp_max_tokens: the output tokens the tightest rate limit still allows
 * this request (its own reservation counted back in); -1 if no clamp. */
static int64_t clamp_output(const struct pending *p, const struct store_admit_res *res)
{
	const struct tg_ai_token_ratelimit *rl = p->route->ratelimit;
	int64_t best = -1;

	if (!rl || !rl->clamp_max_tokens)
		return -1;
	for (unsigned i = 0; i < p->plan.req.n; i++) {
		const struct store_bucket *b = &p->plan.req.b[i];
		double budget, out;

		if (p->plan.meta[i].kind != BUCKET_RATE || b->w_out <= 0)
			continue;
		budget = (double)(res->st[i].remaining + b->estimate) - (double)p->plan.est_in * b->w_in;
		out = budget / b->w_out;
		if (out < 1)
			out = 1;
		if (best < 0 || (int64_t)out < best)
			best = (int64_t)out;
	}
	if (best < 0 || (p->lr.max_tokens >= 0 && best >= p->lr.max_tokens))
		return -1;
	return best;
}

/* Model mapping, include_usage, clamp: one rewrite of the original body. */
static void rewrite_body(struct pending *p, int64_t clamp)
{
	if (!p->body_orig || (!p->rewrite_usage && !p->up.model[0] && clamp < 0))
		return;
	p->body_new = meter_rewrite_request(p->body_orig, p->body_orig_len, p->rewrite_usage,
	                                    p->up.model[0] ? p->up.model : NULL, clamp,
	                                    &p->body_new_len);
	p->hide_usage = p->rewrite_usage && p->body_new;
}

static void report_quota(struct pending *p, const struct store_admit_res *res)
{
	for (unsigned i = 0; i < p->plan.req.n; i++)
		if (p->plan.meta[i].kind == BUCKET_QUOTA && p->consumer)
			tel_quota_remaining(p->a->metrics, p->consumer->name, res->st[i].remaining);
}

static void admit_done(const struct store_admit_res *res, void *arg)
{
	struct pending *p = arg;
	const struct tg_config *cfg = p->rt->cfg;
	struct admit_verdict v;

	tel_store_latency(p->a->metrics, ev_time() - p->t_store);
	if (tx_abandoned(p->tx)) {
		/* HAProxy gave up: the reservation is a lease and will expire. */
		tx_release(p->tx);
		pending_free(p);
		return;
	}
	if (res->err) {
		enum tg_failure_mode fm = p->plan.req.failure_mode >= 0
		                          ? (enum tg_failure_mode)p->plan.req.failure_mode
		                          : cfg->store.failure_mode;

		tel_store_error(p->a->metrics);
		if (fm == TG_FAIL_CLOSED) {
			answer_error(p->tx, 503, "server_error", "store_unavailable",
			             "Token budget store unavailable");
			count_decision(p, "store_closed", 503);
		} else {
			p->rid[0] = 0;      /* nothing reserved: the record settles nothing */
			rewrite_body(p, -1);
			set_allow(p, NULL);
			count_decision(p, "store_open", 200);
		}
	} else {
		admit_verdict(p->route, &p->plan, res, &v);
		report_quota(p, res);
		for (unsigned i = 0; i < p->plan.req.n; i++)
			tel_limit_decision(p->a->metrics, p->plan.meta[i].rule,
			                   !res->admitted && res->refused == (int)i ? "refused"
			                   : res->admitted ? "admitted" : "skipped");
		if (v.admitted) {
			rewrite_body(p, clamp_output(p, res));
			set_allow(p, &v);
			count_decision(p, "allow", 200);
		} else {
			answer_error(p->tx, v.status, v.type,
			             v.status == 403 ? "insufficient_quota" : "rate_limit_exceeded",
			             v.message);
			if (v.retry_after) {
				tx_set_int(p->tx, "retry_after", v.retry_after);
				tx_set_int(p->tx, "reset", v.retry_after);
			}
			count_decision(p, v.status == 403 ? "quota" : "ratelimit", v.status);
		}
	}
	tx_release(p->tx);
	pending_free(p);
}

static void new_rid(struct agent *a, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s-%llx", a->rid_prefix, (unsigned long long)++a->rid_seq);
}

static void admit_start(struct pending *p, const struct req_view *r)
{
	struct agent *a = p->a;
	const struct tg_config *cfg = p->rt->cfg;
	const struct tg_provider *prov = p->route->provider;
	const struct tg_ai_token_ratelimit *rl = p->route->ratelimit;
	size_t pi = (size_t)(prov - cfg->providers);
	/* stream_options exists for chat/completions and completions only; the
	 * Responses API always reports usage in response.completed. */
	bool responses_api = r->path.len >= 13 && memcmp(r->path.ptr, "/v1/responses", 13) == 0;

	p->rewrite_usage = p->lr.stream && !p->lr.include_usage && !responses_api;
	p->chat_path = (r->path.len >= 20 && memcmp(r->path.ptr, "/v1/chat/completions", 20) == 0) ||
	               (r->path.len >= 15 && memcmp(r->path.ptr, "/v1/completions", 15) == 0);
	route_upstream(p->route, r, p->lr.model, p->rt->turns[pi]++, &p->up);
	if (p->lr.json && (p->rewrite_usage || p->up.model[0] || (rl && rl->clamp_max_tokens))) {
		p->body_orig = malloc(r->body.len + 1);
		if (p->body_orig) {
			memcpy(p->body_orig, r->body.ptr, r->body.len);
			p->body_orig_len = r->body.len;
		}
	}
	new_rid(a, p->rid, sizeof(p->rid));
	admit_plan(p->route, p->consumer, r, &p->lr, p->rid, cfg->store.lease_ms, &p->plan);
	make_ctx(p);
	tx_hold(p->tx);
	p->t_store = ev_time();
	a->store->ops->admit(a->store->impl, &p->plan.req, admit_done, p);
}

/* ---- the message ---------------------------------------------------- */

static void deny_auth(struct pending *p, enum auth_rc arc)
{
	answer_error(p->tx, auth_status(arc), "invalid_request_error",
	             auth_status(arc) == 401 ? "invalid_api_key" : "forbidden", auth_message(arc));
	count_decision(p, "auth", auth_status(arc));
}

static const char *request_model(const struct req_view *r, const struct llm_request *lr,
                                 char *buf, size_t buflen)
{
	const struct spop_str *h;

	if (lr->model[0])
		return lr->model;
	if ((h = req_header(r, "x-higress-llm-model", 0))) {
		str_copy(buf, buflen, *h);
		return buf;
	}
	return "";
}

static void on_request(struct spop_tx *tx, struct spop_msg *msg, void *arg)
{
	struct agent *a = arg;
	struct runtime *rt = a->rt;
	const struct tg_config *cfg = rt->cfg;
	const struct tg_route *route;
	const struct tg_consumer *consumer = NULL;
	struct req_view view, *r = &view;   /* used only before this returns */
	struct pending *p;
	enum auth_rc arc;
	char hmodel[128], mid[128];
	const char *model;
	enum quota_op qop;

	if (!(p = pending_new())) {
		answer_error(tx, 503, "server_error", "agent_overloaded", "Out of memory");
		return;
	}
	p->a = a;
	p->rt = runtime_ref(rt);
	p->tx = tx;
	p->t0 = ev_time();
	if (req_parse(msg, r) != 0) {
		answer_error(tx, 400, "invalid_request_error", "bad_request", "Malformed request headers");
		count_decision(p, "invalid", 400);
		goto done;
	}
	meter_parse_request(r->body.ptr, r->body.len, &p->lr);
	if (p->lr.duplicate_key) {
		answer_error(tx, 400, "invalid_request_error", "duplicate_key",
		             "The request body names a member twice: which one counts is ambiguous");
		count_decision(p, "invalid", 400);
		goto done;
	}
	if (models_call(r, mid, sizeof(mid))) {
		/* GET /v1/models[/id]: who calls decides what is listed */
		arc = auth_identify(rt->auth, r, &consumer);
		if (arc == AUTH_MISSING && models_anonymous_visible(cfg))
			arc = AUTH_OK;
		if (arc != AUTH_OK) {
			deny_auth(p, arc);
			goto done;
		}
		p->consumer = consumer;
		models_answer(tx, cfg, consumer, mid);
		count_decision(p, "models", 200);
		goto done;
	}
	model = request_model(r, &p->lr, hmodel, sizeof(hmodel));
	if (!p->lr.model[0])
		snprintf(p->lr.model, sizeof(p->lr.model), "%s", model);
	qop = quota_admin_match(cfg, r->path, model, &route);
	if (qop == QUOTA_OP_NONE && str_eq(r->method, "POST") && route_is_ai_path(r->path)) {
		/* OpenAI's answers (and wording) for a body it cannot use */
		if (!p->lr.json) {
			answer_error(tx, 400, "invalid_request_error", "invalid_json",
			             "We could not parse the JSON body of your request. The API expects "
			             "a JSON payload, but what was sent was not valid JSON.");
			count_decision(p, "invalid", 400);
			goto done;
		}
		if (!model[0]) {
			answer_error(tx, 400, "invalid_request_error", "missing_model",
			             "you must provide a model parameter");
			count_decision(p, "invalid", 400);
			goto done;
		}
	}
	if (qop == QUOTA_OP_NONE)
		route = route_match(cfg, model, r->path);
	p->route = route;
	if (!route) {
		answer_model_not_found(tx, model[0] ? model : "(none)");
		count_decision(p, "no_route", 404);
		goto done;
	}
	if (route->auth.enabled || cfg->key_auth.global_auth || qop != QUOTA_OP_NONE) {
		arc = auth_identify(rt->auth, r, &consumer);
		if (arc == AUTH_OK && !auth_allowed(route, consumer))
			arc = AUTH_DENIED;
		if (arc != AUTH_OK) {
			deny_auth(p, arc);
			goto done;
		}
	}
	p->consumer = consumer;
	if (qop != QUOTA_OP_NONE) {
		quota_admin_spop(a, tx, route, consumer, qop, r);
		count_decision(p, "admin", 200);
		goto done;
	}
	if (!route_is_ai_path(r->path)) {
		/* Authenticated, routed, not an LLM call (e.g. /v1/files): pass. */
		route_upstream(route, r, model, rt->turns[route->provider - cfg->providers]++, &p->up);
		set_allow(p, NULL);
		count_decision(p, "allow", 200);
		goto done;
	}
	admit_start(p, r);
	return;
done:
	pending_free(p);
}

void gateway_register(struct spop_server *srv, struct agent *a)
{
	spop_server_handle(srv, "request", on_request, a);
}
