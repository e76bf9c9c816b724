/* spop_server.h -- the agent's SPOP side: listeners, connections, frames in
 * flight, and the interface message handlers use to answer.
 *
 * Owns: everything between a socket and a message handler. One server runs
 * on one libev loop. A NOTIFY becomes a `struct spop_tx`; each message of it
 * is dispatched by name to a handler (agent/messages.c), which adds actions
 * with tx_set_var()/tx_unset_var() and may keep the tx open across loop
 * iterations with tx_hold()/tx_release() (Redis calls, timers). The ACK is
 * written when the last hold is released, in any order relative to other
 * frames of the same connection. See doc/spop-behaviour.md for every case.
 */
#ifndef TOLLGATE_SPOP_SERVER_H
#define TOLLGATE_SPOP_SERVER_H

#include <ev.h>
#include <stdint.h>

#include "spop.h"

struct tg_config;
struct spop_server;
struct spop_tx;

/* Counters exported on /metrics. Only the loop's thread writes them. */
struct spop_stats {
	uint64_t conns_accepted, conns_active, healthchecks;
	uint64_t frames_in, frames_out, notify, ack, ack_timeout;
	uint64_t inflight;                      /* NOTIFY frames not answered yet */
	uint64_t disconnect_in, disconnect_out;
	uint64_t errors[SPOP_ST_UNKNOWN + 1];   /* AGENT-DISCONNECT sent, by status */
	uint64_t unknown_messages;
};

/* A message handler: reads the message's arguments, adds actions. */
typedef void (*spop_msg_fn)(struct spop_tx *tx, struct spop_msg *msg, void *ctx);

struct spop_server *spop_server_new(struct ev_loop *loop, const struct tg_config *cfg,
                                    char *err, size_t errlen);
/* Opens agent.listen (and agent.unix). -1 and err on failure. */
int  spop_server_listen(struct spop_server *srv, char *err, size_t errlen);
/* Swap the configuration (SIGHUP). Timeouts and limits apply to new timers. */
void spop_server_set_config(struct spop_server *srv, const struct tg_config *cfg);
/* Route a message name to fn. Unknown names are ACKed with no action. */
void spop_server_handle(struct spop_server *srv, const char *name, spop_msg_fn fn, void *ctx);
/* Graceful stop: close listeners, finish frames in flight, AGENT-DISCONNECT
 * every connection; ev_break()s the loop when done or after drain_timeout. */
void spop_server_drain(struct spop_server *srv);
void spop_server_free(struct spop_server *srv);
const struct spop_stats *spop_server_stats(const struct spop_server *srv);

/* ---- for handlers --------------------------------------------------- */

/* Add an action to the ACK under construction. Names are the agent's (HAProxy
 * adds its var-prefix). An ACK that would exceed the negotiated frame size
 * drops the action and logs it; the frame is still answered. */
void tx_set_var(struct spop_tx *tx, enum spop_scope scope, const char *name,
                const struct spop_data *d);
void tx_set_str(struct spop_tx *tx, const char *name, const char *p, size_t len);
void tx_set_int(struct spop_tx *tx, const char *name, int64_t v);
void tx_unset_var(struct spop_tx *tx, enum spop_scope scope, const char *name);
/* Keep the ACK back until the matching release (asynchronous work). */
void tx_hold(struct spop_tx *tx);
void tx_release(struct spop_tx *tx);
/* Hold the ACK for `seconds` on a timer (diagnostics, tests). */
void tx_delay(struct spop_tx *tx, double seconds);
/* True once the ACK was sent (processing timeout) or its connection is
 * gone: late work should then only clean up. */
int  tx_abandoned(const struct spop_tx *tx);
struct ev_loop *tx_loop(const struct spop_tx *tx);
const struct tg_config *tx_config(const struct spop_tx *tx);

#endif
