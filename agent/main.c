/* main.c -- the tollgate command line and the agent's lifecycle.
 *
 *   tollgate --config F              run the agent
 *   tollgate check --config F        validate F; exit 1 naming the bad path
 *   tollgate --version
 *
 * Owns: argument parsing, signals (SIGTERM/SIGINT drain, SIGHUP reload),
 * start and orderly stop of every subsystem.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "config.h"
#include "log.h"
#include "messages.h"
#include "spop_server.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: tollgate --config FILE            run the agent\n"
	        "       tollgate check --config FILE      validate the configuration\n"
	        "       tollgate --version\n");
}

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct agent *a = w->data;

	(void)loop; (void)revents;
	log_info("signal %d: draining", w->signum);
	spop_server_drain(a->spop);
}

static void on_reload(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct agent *a = w->data;
	struct tg_config *cfg;
	struct runtime *rt;
	char err[512];

	(void)loop; (void)revents;
	if (config_load(a->config_path, &cfg, err, sizeof(err)) != 0) {
		log_error("reload refused, keeping the running configuration: %s", err);
		return;
	}
	rt = runtime_new(cfg);
	if (!rt) {
		log_error("reload refused: out of memory");
		config_free(cfg);
		return;
	}
	spop_server_set_config(a->spop, cfg);
	runtime_unref(a->rt);
	a->rt = rt;
	log_set_level(cfg->agent.log_level);
	log_info("configuration reloaded from %s", a->config_path);
}

static int run(struct agent *a)
{
	char err[512];

	log_set_level(a->rt->cfg->agent.log_level);
	signal(SIGPIPE, SIG_IGN);
	a->loop = ev_default_loop(EVFLAG_AUTO);
	a->spop = spop_server_new(a->loop, a->rt->cfg, err, sizeof(err));
	if (!a->spop || spop_server_listen(a->spop, err, sizeof(err)) != 0) {
		log_error("%s", err);
		spop_server_free(a->spop);
		return 1;
	}
	messages_register(a->spop, a);
	ev_signal_init(&a->sigterm, on_stop, SIGTERM);
	ev_signal_init(&a->sigint, on_stop, SIGINT);
	ev_signal_init(&a->sighup, on_reload, SIGHUP);
	a->sigterm.data = a->sigint.data = a->sighup.data = a;
	ev_signal_start(a->loop, &a->sigterm);
	ev_signal_start(a->loop, &a->sigint);
	ev_signal_start(a->loop, &a->sighup);
	log_info("tollgate %s: SPOP on %s%s%s", TOLLGATE_VERSION,
	         a->rt->cfg->agent.listen ? a->rt->cfg->agent.listen : "-",
	         a->rt->cfg->agent.unix_path ? " and unix:" : "",
	         a->rt->cfg->agent.unix_path ? a->rt->cfg->agent.unix_path : "");
	ev_run(a->loop, 0);
	log_info("stopped");
	spop_server_free(a->spop);
	ev_loop_destroy(a->loop);
	return 0;
}

int main(int argc, char **argv)
{
	struct agent a = { 0 };
	struct tg_config *cfg;
	const char *cmd = "run";
	char err[512];
	int i = 1, rc;

	if (argc > 1 && argv[1][0] != '-')
		cmd = argv[i++];
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-v") == 0) {
			printf("tollgate %s\n", TOLLGATE_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) &&
		           i + 1 < argc) {
			a.config_path = argv[++i];
		} else {
			fprintf(stderr, "tollgate: unexpected argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (strcmp(cmd, "run") != 0 && strcmp(cmd, "check") != 0) {
		fprintf(stderr, "tollgate: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	if (!a.config_path) {
		fprintf(stderr, "tollgate: --config FILE is required\n");
		return 2;
	}
	if (config_load(a.config_path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "tollgate: %s: %s\n", a.config_path, err);
		return 1;
	}
	if (strcmp(cmd, "check") == 0) {
		printf("%s: ok\n", a.config_path);
		config_free(cfg);
		return 0;
	}
	a.rt = runtime_new(cfg);
	if (!a.rt) {
		fprintf(stderr, "tollgate: out of memory\n");
		config_free(cfg);
		return 1;
	}
	rc = run(&a);
	runtime_unref(a.rt);
	return rc;
}
