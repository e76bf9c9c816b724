/* models.c -- GET /v1/models and /v1/models/{id}, answered by the agent.
 *
 * Owns: which models a caller may use, in OpenAI's format, so that SDKs'
 * models.list() / models.retrieve() and clients that list models when they
 * connect work through the gateway. A route the caller may use (no auth, or
 * the consumer allowed) lists the names in its `models` that are not globs,
 * and the client-side names of its provider's model_mapping that are not
 * globs and that the route's `models` match. A model asked for by id exists
 * when a route the caller may use matches it, exactly as a request for it
 * would be routed. Objects are {"id","object":"model","created":0,
 * "owned_by":<provider>}; the list is {"object":"list","data":[...]}.
 */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "answer.h"
#include "auth.h"
#include "models.h"
#include "route.h"

bool models_call(const struct req_view *r, char *id, size_t idlen)
{
	static const char prefix[] = "/v1/models";
	const size_t n = sizeof(prefix) - 1;

	if (!str_eq(r->method, "GET") || r->path.len < n || memcmp(r->path.ptr, prefix, n) != 0)
		return false;
	if (r->path.len == n || (r->path.len == n + 1 && r->path.ptr[n] == '/')) {
		id[0] = 0;
		return true;
	}
	if (r->path.ptr[n] != '/' || r->path.len - n - 1 >= idlen ||
	    memchr(r->path.ptr + n + 1, '/', r->path.len - n - 1))
		return false;
	memcpy(id, r->path.ptr + n + 1, r->path.len - n - 1);
	id[r->path.len - n - 1] = 0;
	return true;
}

static bool visible(const struct tg_config *cfg, const struct tg_route *rt,
                    const struct tg_consumer *c)
{
	if (!rt->auth.enabled && !cfg->key_auth.global_auth)
		return true;
	return c && auth_allowed(rt, c);
}

bool models_anonymous_visible(const struct tg_config *cfg)
{
	for (size_t i = 0; i < cfg->n_routes; i++)
		if (visible(cfg, &cfg->routes[i], NULL))
			return true;
	return false;
}

static bool is_glob(const char *s)
{
	return strpbrk(s, "*?[") != NULL;
}

static bool route_has(const struct tg_route *rt, const char *model)
{
	for (size_t k = 0; k < rt->n_models; k++)
		if (route_glob(rt->models[k], model))
			return true;
	return false;
}

static cJSON *model_object(const char *id, const char *owner)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "object", "model");
	cJSON_AddNumberToObject(o, "created", 0);
	cJSON_AddStringToObject(o, "owned_by", owner);
	return o;
}

static void add_once(cJSON *data, const char *id, const char *owner)
{
	const cJSON *it;

	cJSON_ArrayForEach(it, data)
		if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "id")), id) == 0)
			return;
	cJSON_AddItemToArray(data, model_object(id, owner));
}

void models_answer(struct spop_tx *tx, const struct tg_config *cfg,
                   const struct tg_consumer *c, const char *id)
{
	cJSON *root = NULL, *data;
	char *text;

	if (id[0]) {
		for (size_t i = 0; i < cfg->n_routes && !root; i++) {
			const struct tg_route *rt = &cfg->routes[i];

			if (visible(cfg, rt, c) && route_has(rt, id))
				root = model_object(id, rt->provider->name);
		}
		if (!root) {
			answer_model_not_found(tx, id);
			return;
		}
	} else {
		root = cJSON_CreateObject();
		cJSON_AddStringToObject(root, "object", "list");
		data = cJSON_AddArrayToObject(root, "data");
		for (size_t i = 0; i < cfg->n_routes; i++) {
			const struct tg_route *rt = &cfg->routes[i];
			const struct tg_provider *p = rt->provider;

			if (!visible(cfg, rt, c))
				continue;
			for (size_t k = 0; k < rt->n_models; k++)
				if (!is_glob(rt->models[k]))
					add_once(data, rt->models[k], p->name);
			for (size_t k = 0; k < p->n_model_mapping; k++)
				if (!is_glob(p->model_mapping[k].from) &&
				    route_has(rt, p->model_mapping[k].from))
					add_once(data, p->model_mapping[k].from, p->name);
		}
	}
	text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text) {
		answer_error(tx, 503, "server_error", "agent_overloaded", "Out of memory");
		return;
	}
	answer_body(tx, 200, "json", text, strlen(text));
	cJSON_free(text);
}
