/* models.h -- GET /v1/models, answered by the agent (see models.c). */
#ifndef TOLLGATE_MODELS_H
#define TOLLGATE_MODELS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "request.h"
#include "spop_server.h"

/* Is this a models call (GET /v1/models or /v1/models/{id})? id gets the
 * model asked for, "" for the list. */
bool models_call(const struct req_view *r, char *id, size_t idlen);
/* Does any route need no authentication (what an anonymous caller sees)? */
bool models_anonymous_visible(const struct tg_config *cfg);
/* Answer it for consumer c (NULL: anonymous): the list, the model, or 404. */
void models_answer(struct spop_tx *tx, const struct tg_config *cfg,
                   const struct tg_consumer *c, const char *id);

#endif
