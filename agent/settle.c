/* settle.c -- exactly-once settlement of every admitted request.
 *
 * Owns: turning what HAProxy saw of a response into the tokens charged for
 * it, from two sources that may both arrive:
 *   - the `response` SPOP message (non-SSE answers, body in hand): usage is
 *     read from the body, or from the Lua filter's tail of a body larger
 *     than the buffer;
 *   - the settlement record, one log line per transaction written by
 *     HAProxy at its very end into its ring `tollgate_settle`, which
 *     ring_reader.c reads: for streams, aborts and anything the SPOP
 *     message missed.
 * The store settles once per rid (a second settlement is a no-op), so the
 * two sources never double count. Without usage from the provider the
 * charge is an estimate: the prompt estimate plus the output seen (4 bytes
 * of text per token), never 0 when output was produced, never more than the
 * reservation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "log.h"
#include "meter.h"
#include "request.h"
#include "settle.h"
#include "store.h"
#include "telemetry.h"

#define RECORD_MAX      8192

struct settling {
	struct agent *a;
	struct spop_tx *tx;        /* the response message's ACK, held until the store answers */
	struct settle_ctx c;
	char rid[64];
	const char *source;
	int status;
	int64_t in, out;
	bool estimated;
};

/* ---- the context variable ------------------------------------------- */

/* Copy field [p, e) into out (truncated to outlen - 1 bytes). */
static void ctx_copy(char *out, size_t outlen, const char *p, const char *e)
{
	size_t n = (size_t)(e - p);

	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, p, n);
	out[n] = 0;
}

/* "route,provider,model,consumer,est_in,est_out,stream": seven non-empty
 * fields (gateway.c's make_ctx writes it). */
static bool parse_ctx(const char *s, size_t len, struct settle_ctx *c)
{
	const char *f[7], *e[7], *end = s + len, *p = s;
	int n = 0;

	while (n < 7) {
		const char *comma = memchr(p, ',', (size_t)(end - p));

		f[n] = p;
		e[n] = comma ? comma : end;
		if (e[n] == f[n])
			return false;
		n++;
		if (!comma)
			break;
		p = comma + 1;
	}
	if (n != 7 || e[6] != end)
		return false;
	ctx_copy(c->route, sizeof(c->route), f[0], e[0]);
	ctx_copy(c->provider, sizeof(c->provider), f[1], e[1]);
	ctx_copy(c->model, sizeof(c->model), f[2], e[2]);
	ctx_copy(c->consumer, sizeof(c->consumer), f[3], e[3]);
	c->est_in = strtoll(f[4], NULL, 10);
	c->est_out = strtoll(f[5], NULL, 10);
	c->stream = f[6][0] == '1';
	return true;
}

/* ---- settling ------------------------------------------------------- */

static void settled(enum store_settle_rc rc, void *arg)
{
	struct settling *s = arg;
	static const char *const names[] = { "settled", "duplicate", "late", "unknown" };
	const char *result = rc == STORE_QUEUED ? "settled" :
	                     rc >= 0 && rc <= STORE_UNKNOWN ? names[rc] : "error";

	tel_settlement(s->a->metrics, result, s->source);
	if (rc == STORE_SETTLED || rc == STORE_LATE || rc == STORE_QUEUED) {
		struct usage_record u = {
			.rid = s->rid, .route = s->c.route, .provider = s->c.provider,
			.model = s->c.model, .consumer = s->c.consumer, .source = s->source,
			.status = s->status, .in = s->in, .out = s->out, .estimated = s->estimated,
			.reserved = s->c.est_in + s->c.est_out,
		};

		tel_usage(s->a, &u);
	} else if (rc == STORE_ERROR) {
		log_warn("settle %s: store error; the settlement record or the lease decides", s->rid);
	}
	/* settled=1 tells HAProxy the record would change nothing: it is not
	 * emitted (set-log-level silent). Only once the store has it: not after
	 * an error, nor when Redis is away and the settlement only waits in this
	 * process (the record, buffered by HAProxy's ring, is then the backup). */
	if (s->tx) {
		if (rc != STORE_ERROR && rc != STORE_QUEUED && !tx_abandoned(s->tx))
			tx_set_int(s->tx, "settled", 1);
		tx_release(s->tx);
	}
	free(s);
}

/* Charge a request. in/out < 0: unknown, estimate from output_chars. */
static void settle(struct agent *a, struct spop_tx *tx, const char *rid,
                   const struct settle_ctx *c, const char *source, int status,
                   int64_t in, int64_t out, int64_t output_chars)
{
	struct settling *s = calloc(1, sizeof(*s));

	if (!s)
		return;
	s->a = a;
	s->tx = tx;
	if (tx)
		tx_hold(tx);
	s->c = *c;
	snprintf(s->rid, sizeof(s->rid), "%s", rid);
	s->source = source;
	s->status = status;
	if (in < 0 && out < 0) {
		s->estimated = true;
		in = c->est_in;
		out = output_chars > 0 ? (output_chars + 3) / 4 : 0;
		if (output_chars > 0 && out == 0)
			out = 1;
		if (c->est_out > 0 && out > c->est_out)
			out = c->est_out;
	}
	s->in = in < 0 ? 0 : in;
	s->out = out < 0 ? 0 : out;
	a->store->ops->settle(a->store->impl, s->rid, s->in, s->out, settled, s);
}

/* ---- the `response` message ----------------------------------------- */

static void on_response(struct spop_tx *tx, struct spop_msg *msg, void *arg)
{
	struct agent *a = arg;
	struct spop_str rid = { "", 0 }, ctx = { "", 0 }, body = { "", 0 }, tail = { "", 0 };
	struct settle_ctx c;
	struct llm_usage u;
	struct spop_kv kv;
	char ridbuf[64];
	int status = 0;

	while (spop_next_arg(msg, &kv) == SPOP_OK) {
		bool s = kv.val.type == SPOP_DATA_STR || kv.val.type == SPOP_DATA_BIN;

		if (str_eq(kv.name, "rid") && s)
			rid = kv.val.u.str;
		else if (str_eq(kv.name, "ctx") && s)
			ctx = kv.val.u.str;
		else if (str_eq(kv.name, "body") && s)
			body = kv.val.u.str;
		else if (str_eq(kv.name, "tail") && s)
			tail = kv.val.u.str;
		else if (str_eq(kv.name, "status") && kv.val.type == SPOP_DATA_INT32)
			status = kv.val.u.i32;
		else if (str_eq(kv.name, "status") && kv.val.type == SPOP_DATA_UINT32)
			status = (int)kv.val.u.u32;
		else if (str_eq(kv.name, "status") && kv.val.type == SPOP_DATA_INT64)
			status = (int)kv.val.u.i64;
	}
	if (!rid.len || rid.len >= sizeof(ridbuf) || !parse_ctx(ctx.ptr, ctx.len, &c))
		return;
	str_copy(ridbuf, sizeof(ridbuf), rid);
	meter_parse_usage(body.ptr, body.len, &u);
	if (!u.found && tail.len)
		meter_parse_usage(tail.ptr, tail.len, &u);
	/* Without usage here (a body cut by HAProxy's buffer, a provider that
	 * reports none) the settlement record decides: by then the Lua filter
	 * has seen the whole body. */
	if (!u.found)
		return;
	settle(a, tx, ridbuf, &c, "spop", status, u.in, u.out, 0);
}

/* ---- settlement records --------------------------------------------- */

static int64_t field_int(const char *s)
{
	return s[0] >= '0' && s[0] <= '9' ? strtoll(s, NULL, 10) : -1;
}

/* "tg1 <uid> <rid> <ctx> <status> <tsc> <u_in> <u_out> <seen_chars> <bytes>" */
int settle_parse_record(const char *line, size_t len, struct settle_rec *r)
{
	char tmp[RECORD_MAX], *f[10], *save = NULL, *p;
	const char *mark;
	int n = 0;

	memset(r, 0, sizeof(*r));
	mark = memmem(line, len, "tg1 ", 4);
	if (!mark || (size_t)(line + len - mark) >= sizeof(tmp))
		return -1;
	len = (size_t)(line + len - mark);
	memcpy(tmp, mark, len);
	tmp[len] = 0;
	for (p = strtok_r(tmp, " \r\n", &save); p && n < 10; p = strtok_r(NULL, " \r\n", &save))
		f[n++] = p;
	if (n < 10)
		return -1;
	if (strcmp(f[2], "-") == 0 || !f[2][0])
		return 0;                       /* no reservation: denial or admin call */
	if (strlen(f[2]) >= sizeof(r->rid) || !parse_ctx(f[3], strlen(f[3]), &r->c))
		return -1;
	memcpy(r->rid, f[2], strlen(f[2]) + 1);
	r->status = (int)field_int(f[4]);
	r->in = field_int(f[6]);
	r->out = field_int(f[7]);
	r->seen_chars = field_int(f[8]);
	r->bytes = field_int(f[9]);
	return 1;
}

int settle_record(struct agent *a, const char *line, size_t len)
{
	struct settle_rec r;
	int rc = settle_parse_record(line, len, &r);

	if (rc <= 0)
		return rc;
	if (r.in >= 0 || r.out >= 0)
		settle(a, NULL, r.rid, &r.c, "record", r.status, r.in < 0 ? 0 : r.in,
		       r.out < 0 ? 0 : r.out, 0);
	else    /* an error body is not model output: only the prompt is estimated */
		settle(a, NULL, r.rid, &r.c, "record", r.status, -1, -1,
		       r.status >= 400 ? 0 : r.seen_chars >= 0 ? r.seen_chars :
		       (r.bytes > 0 && !r.c.stream ? r.bytes : 0));
	return 1;
}

void settle_register(struct spop_server *spop, struct agent *a)
{
	spop_server_handle(spop, "response", on_response, a);
}
