/* gateway.h -- the `request` message handler (see gateway.c). */
#ifndef TOLLGATE_GATEWAY_H
#define TOLLGATE_GATEWAY_H

#include "spop_server.h"

struct agent;

void gateway_register(struct spop_server *srv, struct agent *a);
/* Answer a request with an OpenAI-shaped error: decision=deny. */
void gateway_deny(struct spop_tx *tx, int status, const char *type, const char *code,
                  const char *message);

#endif
