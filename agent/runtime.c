/* runtime.c -- a loaded configuration and what is derived from it (see
 * agent.h): built whole at start and on SIGHUP, freed by its last user. */
#include <stdlib.h>

#include "agent.h"
#include "auth.h"
#include "config.h"

struct runtime *runtime_new(struct tg_config *cfg)
{
	struct runtime *rt = calloc(1, sizeof(*rt));

	if (!rt)
		return NULL;
	rt->cfg = cfg;
	rt->auth = auth_new(cfg);
	rt->turns = calloc(cfg->n_providers + 1, sizeof(*rt->turns));
	if (!rt->auth || !rt->turns) {
		auth_free(rt->auth);
		free(rt->turns);
		free(rt);
		return NULL;
	}
	rt->refs = 1;
	return rt;
}

void runtime_unref(struct runtime *rt)
{
	if (!rt || --rt->refs > 0)
		return;
	auth_free(rt->auth);
	free(rt->turns);
	config_free(rt->cfg);
	free(rt);
}
