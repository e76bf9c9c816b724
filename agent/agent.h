/* agent.h -- the running agent: its loop, its configuration, its servers.
 *
 * Owns: the process-wide state, in one struct (no other global mutable
 * state). main.c builds it; subsystems get a pointer to it.
 */
#ifndef TOLLGATE_AGENT_H
#define TOLLGATE_AGENT_H

#include <ev.h>

#define TOLLGATE_VERSION "0.1.0"

struct tg_config;
struct spop_server;

struct agent {
	struct ev_loop *loop;
	char *config_path;
	struct tg_config *cfg;
	struct spop_server *spop;
	ev_signal sigterm, sigint, sighup;
};

#endif
