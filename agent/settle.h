/* settle.h -- exactly-once settlement (see settle.c). */
#ifndef TOLLGATE_SETTLE_H
#define TOLLGATE_SETTLE_H

#include <stddef.h>

#include "spop_server.h"

struct agent;
struct settle_server;

/* The `response` SPOP message. */
void settle_register(struct spop_server *spop, struct agent *a);
/* The TCP listener for HAProxy's settlement records (agent.settle). */
struct settle_server *settle_server_new(struct agent *a, const char *addr, char *err,
                                        size_t errlen);
void settle_server_free(struct settle_server *srv);
/* One record's message text: 1 settled, 0 ignored (no rid), -1 malformed. */
int settle_record(struct agent *a, const char *line, size_t len);

#endif
