/* answer.h -- the answers the agent gives in HAProxy's place (answer.c). */
#ifndef TOLLGATE_ANSWER_H
#define TOLLGATE_ANSWER_H

#include <stddef.h>

#include "spop_server.h"

/* A refusal: decision=deny, the status and an OpenAI-shaped error body
 * {"error":{"message","type","code"}} (message JSON-escaped here). */
void answer_error(struct spop_tx *tx, int status, const char *type, const char *code,
                  const char *message);
/* 404 model_not_found, in OpenAI's words. */
void answer_model_not_found(struct spop_tx *tx, const char *model);
/* An answer of the agent's own (admin API, /v1/models): decision=admin, the
 * status, ctype "json" or "text", the body as given. */
void answer_body(struct spop_tx *tx, int status, const char *ctype, const char *body,
                 size_t len);
/* s JSON-escaped into out (truncated to fit, always terminated). */
void answer_json_escape(char *out, size_t outlen, const char *s);

#endif
