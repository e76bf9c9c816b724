/* route.c -- see route.h. */
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

#include "route.h"

static const char *const ai_paths[] = {
	"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
};

bool route_glob(const char *pattern, const char *s)
{
	return fnmatch(pattern, s, 0) == 0;
}

static bool has_prefix(struct spop_str s, const char *p)
{
	size_t n = strlen(p);

	return s.len >= n && memcmp(s.ptr, p, n) == 0 &&
	       (s.len == n || s.ptr[n] == '/' || p[n - 1] == '/');
}

bool route_is_ai_path(struct spop_str path)
{
	for (size_t i = 0; i < sizeof(ai_paths) / sizeof(*ai_paths); i++)
		if (has_prefix(path, ai_paths[i]))
			return true;
	return false;
}

const struct tg_route *route_match(const struct tg_config *cfg, const char *model,
                                   struct spop_str path)
{
	for (size_t i = 0; i < cfg->n_routes; i++) {
		const struct tg_route *rt = &cfg->routes[i];
		bool path_ok = rt->n_paths == 0;

		for (size_t k = 0; k < rt->n_paths && !path_ok; k++)
			path_ok = has_prefix(path, rt->paths[k]);
		if (!path_ok)
			continue;
		for (size_t k = 0; k < rt->n_models; k++)
			if (route_glob(rt->models[k], model))
				return rt;
	}
	return NULL;
}

/* model_mapping: an exact entry wins, then the first glob, then "*". */
static const char *map_model(const struct tg_provider *p, const char *model)
{
	const struct tg_model_map *star = NULL, *glob = NULL;

	for (size_t i = 0; i < p->n_model_mapping; i++) {
		const struct tg_model_map *m = &p->model_mapping[i];

		if (strcmp(m->from, model) == 0)
			return *m->to ? m->to : model;
		if (strcmp(m->from, "*") == 0)
			star = star ? star : m;
		else if (!glob && route_glob(m->from, model))
			glob = m;
	}
	if (glob)
		return *glob->to ? glob->to : model;
	if (star)
		return *star->to ? star->to : model;
	return model;
}

void route_upstream(const struct tg_route *route, const struct req_view *r,
                    const char *model, unsigned turn, struct upstream *u)
{
	const struct tg_provider *p = route->provider;
	const char *mapped = map_model(p, model);
	struct spop_str rest = r->path;

	memset(u, 0, sizeof(*u));
	snprintf(u->backend, sizeof(u->backend), "prov_%s", p->name);
	if (strcmp(mapped, model) != 0)
		snprintf(u->model, sizeof(u->model), "%s", mapped);
	if (has_prefix(rest, "/v1")) {          /* the provider's base path replaces /v1 */
		rest.ptr += 3;
		rest.len -= 3;
	}
	u->pkey_hdr = "authorization";
	if (p->n_api_keys)
		u->pkey = p->api_keys[turn % p->n_api_keys];
	else if (p->type == TG_PROV_MOCK)
		u->pkey = "tollgate-mock";      /* the mock wants a key, as a provider does */
	switch (p->type) {
	case TG_PROV_AZURE:
		snprintf(u->path, sizeof(u->path), "%s/openai/deployments/%s%.*s", p->base_path,
		         p->deployment && *p->deployment ? p->deployment : mapped,
		         (int)rest.len, rest.ptr);
		snprintf(u->query, sizeof(u->query), "api-version=%s", p->api_version);
		u->query_set = true;
		u->pkey_hdr = "api-key";
		break;
	case TG_PROV_MOCK:
		snprintf(u->path, sizeof(u->path), "/mock/v1%.*s", (int)rest.len, rest.ptr);
		break;
	default:
		snprintf(u->path, sizeof(u->path), "%s%.*s", p->base_path, (int)rest.len, rest.ptr);
		break;
	}
}
