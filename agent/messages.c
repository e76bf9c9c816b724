/* messages.c -- see messages.h.
 *
 * `tollgate-echo` is a diagnostic message (doc/spop-behaviour.md), enabled by
 * agent.debug_messages (read at each message, so a reload turns it on or off): each argument comes back as a txn variable of the
 * same name and value (NULL unsets it); `delay_ms` holds the ACK on a timer.
 * Conformance tests and benchmarks use it to exercise the SPOP path alone.
 */
#include <string.h>

#include "agent.h"
#include "config.h"
#include "gateway.h"
#include "messages.h"
#include "settle.h"

#define ECHO_MAX_DELAY_MS 10000

static int data_as_int(const struct spop_data *d, int64_t *v)
{
	switch (d->type) {
	case SPOP_DATA_INT32:  *v = d->u.i32; return 1;
	case SPOP_DATA_UINT32: *v = d->u.u32; return 1;
	case SPOP_DATA_INT64:  *v = d->u.i64; return 1;
	case SPOP_DATA_UINT64: *v = d->u.u64 > INT64_MAX ? INT64_MAX : (int64_t)d->u.u64; return 1;
	default: return 0;
	}
}

static void echo_handler(struct spop_tx *tx, struct spop_msg *msg, void *ctx)
{
	struct spop_kv kv;
	char name[64];

	(void)ctx;
	if (!tx_config(tx)->agent.debug_messages)
		return;                 /* disabled (perhaps by a reload): unknown */
	while (spop_next_arg(msg, &kv) == SPOP_OK) {
		int64_t ms;

		if (kv.name.len == 8 && memcmp(kv.name.ptr, "delay_ms", 8) == 0 &&
		    data_as_int(&kv.val, &ms)) {
			if (ms > ECHO_MAX_DELAY_MS)
				ms = ECHO_MAX_DELAY_MS;
			if (ms > 0)
				tx_delay(tx, (double)ms / 1000.);
			continue;
		}
		if (kv.name.len == 0 || kv.name.len >= sizeof(name))
			continue;
		memcpy(name, kv.name.ptr, kv.name.len);
		name[kv.name.len] = 0;
		if (kv.val.type == SPOP_DATA_NULL)
			tx_unset_var(tx, SPOP_SCOPE_TXN, name);
		else
			tx_set_var(tx, SPOP_SCOPE_TXN, name, &kv.val);
	}
}

void messages_register(struct spop_server *srv, struct agent *agent)
{
	gateway_register(srv, agent);
	settle_register(srv, agent);
	spop_server_handle(srv, "tollgate-echo", echo_handler, agent);
}
