/* route.h -- where a request goes: model -> route -> provider -> upstream.
 *
 * Owns: matching a route by model (the body's `model`, else the
 * x-higress-llm-model header) and path prefixes; the provider's model
 * mapping; the upstream path and query (base path, Azure deployments);
 * which provider key to use (round robin over api_keys).
 */
#ifndef TOLLGATE_ROUTE_H
#define TOLLGATE_ROUTE_H

#include <stdbool.h>

#include "config.h"
#include "request.h"

struct upstream {
	char backend[160];          /* "prov_<provider>" */
	char path[1024];            /* full upstream path */
	char query[512];            /* new query string, when query_set */
	bool query_set;
	char model[128];            /* the model sent upstream ("" = unchanged) */
	const char *pkey;           /* provider key (NULL: none configured) */
	const char *pkey_hdr;       /* "authorization" or "api-key" */
};

/* Paths that are metered AI calls. */
bool route_is_ai_path(struct spop_str path);
/* The route for `model` on `path`; NULL if none. An empty model matches only
 * routes whose models include "*". */
const struct tg_route *route_match(const struct tg_config *cfg, const char *model,
                                   struct spop_str path);
/* Fill u for an admitted request. `turn` selects the provider key. */
void route_upstream(const struct tg_route *route, const struct req_view *r,
                    const char *model, unsigned turn, struct upstream *u);
/* fnmatch-style glob ('*', '?'), used for models and model mappings. */
bool route_glob(const char *pattern, const char *s);

#endif
