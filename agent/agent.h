/* agent.h -- the running agent: its loop, its configuration, its servers.
 *
 * Owns: the process-wide state, in one struct (no other global mutable
 * state). main.c builds it; subsystems get a pointer to it.
 *
 * The configuration and what is derived from it (the credential table, the
 * provider key turns) form a `runtime`, reference-counted: a request that
 * waits on the store keeps the runtime it started with, so a SIGHUP reload
 * never frees a route or consumer under an answer in flight.
 */
#ifndef TOLLGATE_AGENT_H
#define TOLLGATE_AGENT_H

#include <ev.h>
#include <stdint.h>

#include "config-t.h"

#define TOLLGATE_VERSION "0.1.0"

struct tg_config;
struct spop_server;
struct http_server;
struct mock_provider;
struct metrics;
struct store;
struct auth_table;
struct ring_reader;

struct runtime {
	struct tg_config *cfg;
	struct auth_table *auth;
	unsigned *turns;            /* per provider: next api key */
	int refs;
};

struct agent {
	struct ev_loop *loop;
	char *config_path;
	struct runtime *rt;
	struct spop_server *spop;
	struct http_server *http;
	struct mock_provider *mock;
	struct metrics *metrics;
	int fallback_family;        /* tollgate_store_fallback_decisions_total */
	struct store *store;        /* budgets: Redis or the embedded store */
	struct store *mem;          /* the embedded store: counters (and budgets without Redis) */
	struct store *local;        /* Redis's stand-in while it is sick (failure_mode local) */
	struct tg_store_cfg redis_cfg; /* Redis reached through a plugin's service */
	struct ring_reader *settle;     /* HAProxy's settlement records (agent.settle) */
	char rid_prefix[20];        /* random per process: reservation ids never repeat */
	uint64_t rid_seq;
	ev_signal sigterm, sigint, sighup;
	ev_timer tick;              /* lease sweeps, store sync */
	ev_prepare flush;           /* the store's records, once per loop iteration */
};

struct runtime *runtime_new(struct tg_config *cfg);
static inline struct runtime *runtime_ref(struct runtime *rt) { rt->refs++; return rt; }
void runtime_unref(struct runtime *rt);

#endif
