/* gateway.h -- the `request` message handler (see gateway.c). */
#ifndef TOLLGATE_GATEWAY_H
#define TOLLGATE_GATEWAY_H

#include "spop_server.h"

struct agent;

void gateway_register(struct spop_server *srv, struct agent *a);

#endif
