/* settle.h -- exactly-once settlement (see settle.c). */
#ifndef TOLLGATE_SETTLE_H
#define TOLLGATE_SETTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spop_server.h"

struct agent;

/* The `response` SPOP message. */
void settle_register(struct spop_server *spop, struct agent *a);
/* The settlement context (var txn.tg.ctx, doc/gateway.md), parsed. */
struct settle_ctx {
	char route[96], provider[96], model[160], consumer[96];
	int64_t est_in, est_out;
	bool stream;
};

/* A settlement record, parsed: the fields after "tg1" (doc/gateway.md);
 * numbers absent in HAProxy ("-") are -1. */
struct settle_rec {
	char rid[64];
	struct settle_ctx c;
	int status;
	int64_t in, out, seen_chars, bytes;
};

/* Parse one record's message text (pure: no I/O, no allocation): 1 parsed,
 * 0 without a rid (a denial or an admin call), -1 malformed. */
int settle_parse_record(const char *line, size_t len, struct settle_rec *r);
/* Parse one record and settle it: 1 settled, 0 ignored (no rid), -1 malformed. */
int settle_record(struct agent *a, const char *line, size_t len);

#endif
