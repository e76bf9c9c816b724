/* quota_admin.c -- see quota_admin.h.
 *
 * Higress's answers, which users' scripts parse:
 *   GET  .../quota?consumer=X                     200 {"consumer":"X","quota":N}
 *   POST .../quota/refresh  consumer=X&quota=N    200 refresh quota successful
 *   POST .../quota/delta    consumer=X&value=±N   200 delta quota successful
 * Only the route's admin_consumer may call them (403 otherwise); a missing
 * or non-numeric parameter is a 400. The balance lives at
 * <redis_key_prefix><consumer> in the store.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "answer.h"
#include "http_server.h"
#include "log.h"
#include "quota_admin.h"
#include "route.h"
#include "store.h"

static bool has_suffix(struct spop_str s, const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	return s.len >= la + lb && memcmp(s.ptr + s.len - la - lb, a, la) == 0 &&
	       memcmp(s.ptr + s.len - lb, b, lb) == 0;
}

static enum quota_op op_of(const struct tg_ai_quota *q, struct spop_str path)
{
	if (has_suffix(path, q->admin_path, ""))
		return QUOTA_OP_QUERY;
	if (has_suffix(path, q->admin_path, "/refresh"))
		return QUOTA_OP_REFRESH;
	if (has_suffix(path, q->admin_path, "/delta"))
		return QUOTA_OP_DELTA;
	return QUOTA_OP_NONE;
}

enum quota_op quota_admin_match(const struct tg_config *cfg, struct spop_str path,
                                const char *model, const struct tg_route **route)
{
	const struct tg_route *byname = model && *model ? route_match(cfg, model, path) : NULL;
	enum quota_op op;

	/* route_match checks path prefixes: the admin path extends the route's. */
	if (byname && byname->quota && (op = op_of(byname->quota, path)) != QUOTA_OP_NONE) {
		*route = byname;
		return op;
	}
	for (size_t i = 0; i < cfg->n_routes; i++) {
		const struct tg_route *rt = &cfg->routes[i];

		if (rt->quota && (op = op_of(rt->quota, path)) != QUOTA_OP_NONE) {
			*route = rt;
			return op;
		}
	}
	return QUOTA_OP_NONE;
}

/* ---- one admin operation, whatever the transport -------------------- */

struct qcall {
	struct agent *a;
	struct runtime *rt;
	enum quota_op op;
	char consumer[128];
	bool json_api;              /* answer JSON (agent HTTP) instead of Higress text */
	struct spop_tx *tx;         /* SPOP transport */
	struct http_req *req;       /* HTTP transport */
};

static void qcall_answer(struct qcall *q, int status, bool json, const char *body)
{
	if (q->tx) {
		answer_body(q->tx, status, json ? "json" : "text", body, strlen(body));
		tx_release(q->tx);
	} else {
		http_reply(q->req, status, json ? "application/json" : "text/plain", body,
		           strlen(body));
	}
	runtime_unref(q->rt);
	free(q);
}

static void qcall_done(int err, int64_t balance, void *arg)
{
	struct qcall *q = arg;
	char body[256];

	if (err) {
		qcall_answer(q, 503, true,
		             "{\"error\":{\"message\":\"quota store unavailable\","
		             "\"type\":\"server_error\",\"code\":\"store_unavailable\"}}");
		return;
	}
	if (q->op == QUOTA_OP_QUERY || q->json_api) {
		cJSON *name = cJSON_CreateString(q->consumer);
		char *esc = cJSON_PrintUnformatted(name);

		cJSON_Delete(name);
		snprintf(body, sizeof(body), "{\"consumer\":%s,\"quota\":%" PRId64 "}",
		         esc ? esc : "\"\"", balance);
		free(esc);
		qcall_answer(q, 200, true, body);
		return;
	}
	qcall_answer(q, 200, false, q->op == QUOTA_OP_REFRESH ? "refresh quota successful"
	                                                      : "delta quota successful");
}

static bool parse_int(const char *s, int64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoll(s, &end, 10);
	return *s && !*end && errno == 0;
}

/* Validate and run. `value` is NULL for a query. */
static void qcall_run(struct qcall *q, const struct tg_ai_quota *quota, const char *value)
{
	struct store *st = q->a->store;
	char key[STORE_KEY_MAX];
	int64_t v = 0;

	if (!q->consumer[0])
		return qcall_answer(q, 400, false, "consumer can't be empty");
	if (q->op != QUOTA_OP_QUERY && (!value || !parse_int(value, &v)))
		return qcall_answer(q, 400, false, q->op == QUOTA_OP_REFRESH
		                    ? "quota can't be empty or is not an integer"
		                    : "value can't be empty or is not an integer");
	snprintf(key, sizeof(key), "%s%s", quota->redis_key_prefix, q->consumer);
	log_info("quota admin: %s %s%s%s", q->op == QUOTA_OP_QUERY ? "query"
	         : q->op == QUOTA_OP_REFRESH ? "refresh" : "delta", q->consumer,
	         value ? " " : "", value ? value : "");
	switch (q->op) {
	case QUOTA_OP_QUERY:
		st->ops->quota_get(st->impl, key, qcall_done, q);
		break;
	case QUOTA_OP_REFRESH:
		st->ops->quota_set(st->impl, key, v, qcall_done, q);
		break;
	default:
		st->ops->quota_add(st->impl, key, v, qcall_done, q);
		break;
	}
}

void quota_admin_spop(struct agent *a, struct spop_tx *tx, const struct tg_route *route,
                      const struct tg_consumer *consumer, enum quota_op op,
                      const struct req_view *r)
{
	const struct tg_ai_quota *quota = route->quota;
	struct qcall *q;
	char value[64];
	bool has_value = false;

	if (consumer != quota->admin) {
		answer_error(tx, 403, "invalid_request_error", "forbidden",
		             "Request denied by ai quota check. Only the admin consumer can use the quota API");
		return;
	}
	if ((op == QUOTA_OP_QUERY) != str_eq(r->method, "GET")) {
		answer_error(tx, 405, "invalid_request_error", "method_not_allowed",
		             op == QUOTA_OP_QUERY ? "Use GET to query a quota"
		                                  : "Use POST to change a quota");
		return;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		answer_error(tx, 503, "server_error", "agent_overloaded", "Out of memory");
		return;
	}
	q->a = a;
	q->rt = runtime_ref(a->rt);
	q->op = op;
	q->tx = tx;
	if (op == QUOTA_OP_QUERY) {
		req_query_param(r, "consumer", q->consumer, sizeof(q->consumer));
	} else {
		req_form_field(r, "consumer", q->consumer, sizeof(q->consumer));
		has_value = req_form_field(r, op == QUOTA_OP_REFRESH ? "quota" : "value",
		                           value, sizeof(value));
	}
	tx_hold(tx);
	qcall_run(q, quota, has_value ? value : NULL);
}

/* ---- the JSON API on agent.http ------------------------------------- */

static const struct tg_ai_quota *quota_for(const struct tg_config *cfg, const char *route)
{
	for (size_t i = 0; i < cfg->n_routes; i++)
		if (cfg->routes[i].quota && (!route || !*route || !strcmp(cfg->routes[i].name, route)))
			return cfg->routes[i].quota;
	return NULL;
}

static void http_quota(struct http_req *req, void *arg)
{
	struct agent *a = arg;
	const char *path = http_req_path(req), *body;
	const struct tg_ai_quota *quota;
	char route[128] = "", value[64] = "";
	struct qcall *q;
	cJSON *j = NULL, *v;
	size_t blen;

	if (!http_req_peer_is_local(req)) {
		http_reply(req, 403, "application/json", "{\"error\":\"admin API is local only\"}", 35);
		return;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		http_reply(req, 503, "text/plain", "out of memory", 13);
		return;
	}
	q->a = a;
	q->rt = runtime_ref(a->rt);
	q->req = req;
	q->json_api = true;
	if (strcmp(path, "/v1/quota") == 0 && !strcmp(http_req_method(req), "GET")) {
		const char *qs = http_req_query(req);

		q->op = QUOTA_OP_QUERY;
		http_form_get(qs, strlen(qs), "consumer", q->consumer, sizeof(q->consumer));
		http_form_get(qs, strlen(qs), "route", route, sizeof(route));
	} else if (!strcmp(http_req_method(req), "POST") &&
	           (!strcmp(path, "/v1/quota/refresh") || !strcmp(path, "/v1/quota/delta"))) {
		q->op = !strcmp(path, "/v1/quota/refresh") ? QUOTA_OP_REFRESH : QUOTA_OP_DELTA;
		body = http_req_body(req, &blen);
		j = cJSON_ParseWithLength(body, blen);
		if ((v = cJSON_GetObjectItemCaseSensitive(j, "consumer")) && cJSON_IsString(v))
			snprintf(q->consumer, sizeof(q->consumer), "%s", v->valuestring);
		if ((v = cJSON_GetObjectItemCaseSensitive(j, "route")) && cJSON_IsString(v))
			snprintf(route, sizeof(route), "%s", v->valuestring);
		v = cJSON_GetObjectItemCaseSensitive(j, q->op == QUOTA_OP_REFRESH ? "quota" : "value");
		if (cJSON_IsNumber(v))
			snprintf(value, sizeof(value), "%.0f", v->valuedouble);
		cJSON_Delete(j);
	} else {
		return qcall_answer(q, 404, true, "{\"error\":\"unknown quota operation\"}");
	}
	quota = quota_for(q->rt->cfg, route);
	if (!quota)
		return qcall_answer(q, 404, true, "{\"error\":\"no route with ai-quota\"}");
	http_req_defer(req, NULL, NULL);
	qcall_run(q, quota, q->op == QUOTA_OP_QUERY ? NULL : (value[0] ? value : NULL));
}

void quota_admin_http(struct agent *a, struct http_server *http)
{
	http_server_route(http, NULL, "/v1/quota", http_quota, a);
}
