/* main.c -- the tollgate command line and the agent's lifecycle.
 *
 *   tollgate --config F              run the agent
 *   tollgate check --config F        validate F; exit 1 naming the bad path
 *   tollgate haproxy-config --config F --out DIR   render what HAProxy loads
 *   tollgate glibc-tunables VERSION  the GLIBC_TUNABLES to start that HAProxy with
 *   tollgate --version
 *
 * Owns: argument parsing, signals (SIGTERM/SIGINT drain, SIGHUP reload),
 * start and orderly stop of every subsystem.
 */
#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "http_server.h"
#include "log.h"
#include "messages.h"
#include "metrics.h"
#include "mock_provider.h"
#include "quota_admin.h"
#include "render.h"
#include "ring_reader.h"
#include "settle.h"
#include "spop_server.h"
#include "store_mem.h"
#include "store_redis.h"
#include "telemetry.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: tollgate --config FILE            run the agent\n"
	        "       tollgate check --config FILE      validate the configuration\n"
	        "       tollgate haproxy-config --config FILE --out DIR [--fragment]\n"
	        "                                         render DIR/haproxy.cfg, spoe.conf, tollgate.lua\n"
	        "                                         (--fragment: DIR/tollgate.cfg, to load after\n"
	        "                                         an existing haproxy.cfg with one more -f)\n"
	        "       tollgate glibc-tunables VERSION   the GLIBC_TUNABLES value haproxy/README.md\n"
	        "                                         advises for that HAProxy (`haproxy -v`'s)\n"
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
	if (a->http)    /* a rewritten body may be a little longer */
		http_server_set_max_body(a->http, config_max_body(cfg) + 4096);
	runtime_unref(a->rt);
	a->rt = rt;
	log_set_level(cfg->agent.log_level);
	log_info("configuration reloaded from %s", a->config_path);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct agent *a = w->data;

	(void)loop; (void)revents;
	store_mem_expire(a->mem);           /* leases, old rids, log sync */
	if (a->local)
		store_mem_expire(a->local);
}

/* Before the loop blocks, and before the SPOP and HTTP servers flush what
 * they owe (this watcher has the highest priority): the store's records of
 * this iteration go to its log, so nothing is acknowledged unlogged. */
static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct agent *a = w->data;

	(void)loop; (void)revents;
	store_mem_flush(a->mem);
	if (a->local)
		store_mem_flush(a->local);
}

static void make_rid_prefix(struct agent *a)
{
	uint64_t r = 0;
	FILE *f = fopen("/dev/urandom", "rb");

	if (!f || fread(&r, sizeof(r), 1, f) != 1)
		r = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if (f)
		fclose(f);
	snprintf(a->rid_prefix, sizeof(a->rid_prefix), "%016llx", (unsigned long long)r);
}

/* Which Redis holds the budgets: store.redis, else the first service a
 * plugin's redis block names (Higress's `local-redis.static`), unless that
 * service is `embedded`. NULL: the embedded store. */
static const struct tg_store_cfg *redis_config(const struct tg_config *cfg,
                                               struct tg_store_cfg *tmp)
{
	if (cfg->store.redis)
		return &cfg->store;
	for (size_t i = 0; i < cfg->n_routes; i++) {
		const struct tg_route *rt = &cfg->routes[i];
		const struct tg_redis_ref *refs[2] = {
			rt->quota ? &rt->quota->redis : NULL,
			rt->ratelimit ? &rt->ratelimit->redis : NULL,
		};

		for (int k = 0; k < 2; k++) {
			const struct tg_redis_ref *r = refs[k];

			if (!r || !r->service || r->service->embedded)
				continue;
			*tmp = cfg->store;
			tmp->host = r->service->host;
			tmp->port = r->service->port;
			tmp->username = r->username;
			tmp->password = r->password;
			tmp->db = r->database;
			return tmp;
		}
	}
	return NULL;
}

static int open_stores(struct agent *a, char *err, size_t errlen)
{
	const struct tg_config *cfg = a->rt->cfg;
	const struct tg_store_cfg *rc;
	char dir[4096];

	a->mem = store_mem_open(cfg->agent.state_dir, err, errlen);
	if (!a->mem)
		return -1;
	a->store = a->mem;
	if (!(rc = redis_config(cfg, &a->redis_cfg)))
		return 0;
	if (rc->failure_mode == TG_FAIL_LOCAL) {
		snprintf(dir, sizeof(dir), "%s/local", cfg->agent.state_dir);
		a->local = store_mem_open(dir, err, errlen);
		if (!a->local)
			return -1;
	}
	a->store = store_redis_open(a->loop, rc, a->local, err, errlen);
	if (!a->store)
		return -1;
	store_redis_set_local_share(a->store, 1. / rc->instances);
	return 0;
}

/* Start every subsystem the configuration asks for. -1 with err. */
static int start(struct agent *a, char *err, size_t errlen)
{
	const struct tg_config *cfg = a->rt->cfg;

	/* A prompt of megabytes passes through a few buffers per request (the
	 * SPOP frame, a rewrite, the ACK). glibc would map each with mmap and
	 * unmap it when freed, so every such request would pay a page fault per
	 * 4 KiB written: measured here, that was most of the agent's CPU on a
	 * 4 MiB prompt. Such blocks stay in the heap for the next request; the
	 * heap's free top is given back past 64 MiB. */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);

	make_rid_prefix(a);
	if (open_stores(a, err, errlen) != 0)
		return -1;
	a->metrics = metrics_new();
	if (!a->metrics || tel_init(a) != 0) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (cfg->agent.http) {
		a->http = http_server_new(a->loop, cfg->agent.http, err, errlen);
		if (!a->http)
			return -1;
		metrics_http_register(a->metrics, a->http);
		quota_admin_http(a, a->http);
		a->mock = mock_provider_new(a->http);
		http_server_set_max_body(a->http, config_max_body(cfg) + 4096);
	}
	if (cfg->agent.settle) {
		a->settle = ring_reader_new(a, cfg->agent.settle, err, errlen);
		if (!a->settle)
			return -1;
	}
	a->spop = spop_server_new(a->loop, cfg, err, errlen);
	if (!a->spop || spop_server_listen(a->spop, err, errlen) != 0)
		return -1;
	messages_register(a->spop, a);
	ev_timer_init(&a->tick, on_tick, .1, .1);   /* store_mem wants 100 ms */
	a->tick.data = a;
	ev_timer_start(a->loop, &a->tick);
	ev_prepare_init(&a->flush, on_prepare);
	ev_set_priority(&a->flush, EV_MAXPRI);
	a->flush.data = a;
	ev_prepare_start(a->loop, &a->flush);
	return 0;
}

static void stop(struct agent *a)
{
	ev_timer_stop(a->loop, &a->tick);
	ev_prepare_stop(a->loop, &a->flush);
	/* Redis first: calls still pending are answered (as errors) while the
	 * SPOP transactions they hold still exist. */
	if (a->store && a->store != a->mem)
		a->store->ops->free(a->store->impl);
	a->store = a->mem;
	spop_server_free(a->spop);
	ring_reader_free(a->settle);
	if (a->mock)
		mock_provider_free(a->mock);
	if (a->http)
		http_server_free(a->http);
	tel_free(a);
	if (a->local)
		a->local->ops->free(a->local->impl);
	if (a->mem)
		a->mem->ops->free(a->mem->impl);
	if (a->metrics)
		metrics_free(a->metrics);
}

static int run(struct agent *a)
{
	char err[512];
	int rc = 0;

	log_set_level(a->rt->cfg->agent.log_level);
	signal(SIGPIPE, SIG_IGN);
	a->loop = ev_default_loop(EVFLAG_AUTO);
	if (start(a, err, sizeof(err)) != 0) {
		log_error("%s", err);
		stop(a);
		ev_loop_destroy(a->loop);
		return 1;
	}
	ev_signal_init(&a->sigterm, on_stop, SIGTERM);
	ev_signal_init(&a->sigint, on_stop, SIGINT);
	ev_signal_init(&a->sighup, on_reload, SIGHUP);
	a->sigterm.data = a->sigint.data = a->sighup.data = a;
	ev_signal_start(a->loop, &a->sigterm);
	ev_signal_start(a->loop, &a->sigint);
	ev_signal_start(a->loop, &a->sighup);
	log_info("tollgate %s: SPOP on %s%s%s, http %s, settle %s, store %s",
	         TOLLGATE_VERSION,
	         a->rt->cfg->agent.listen ? a->rt->cfg->agent.listen : "-",
	         a->rt->cfg->agent.unix_path ? " and unix:" : "",
	         a->rt->cfg->agent.unix_path ? a->rt->cfg->agent.unix_path : "",
	         a->rt->cfg->agent.http ? a->rt->cfg->agent.http : "-",
	         a->rt->cfg->agent.settle ? a->rt->cfg->agent.settle : "-",
	         a->store == a->mem ? "embedded" : "redis");
	ev_run(a->loop, 0);
	log_info("stopped");
	stop(a);
	ev_loop_destroy(a->loop);
	return rc;
}

int main(int argc, char **argv)
{
	struct agent a = { 0 };
	struct tg_config *cfg;
	const char *cmd = "run", *out = NULL;
	bool fragment = false;
	char err[512];
	int i = 1, rc;

	if (argc > 1 && argv[1][0] != '-')
		cmd = argv[i++];
	if (strcmp(cmd, "glibc-tunables") == 0) {
		if (argc != 3) {
			usage(stderr);
			return 2;
		}
		printf("%s\n", render_glibc_tunables(argv[2]));
		return 0;
	}
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-v") == 0) {
			printf("tollgate %s\n", TOLLGATE_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
			out = argv[++i];
		} else if (strcmp(argv[i], "--fragment") == 0) {
			fragment = true;
		} else if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) &&
		           i + 1 < argc) {
			a.config_path = argv[++i];
		} else {
			fprintf(stderr, "tollgate: unexpected argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (strcmp(cmd, "run") != 0 && strcmp(cmd, "check") != 0 &&
	    strcmp(cmd, "haproxy-config") != 0) {
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
	if (strcmp(cmd, "haproxy-config") == 0) {
		rc = 0;
		if (!out) {
			fprintf(stderr, "tollgate: haproxy-config needs --out DIR\n");
			rc = 2;
		} else if (render_haproxy(cfg, out, fragment, err, sizeof(err)) != 0) {
			fprintf(stderr, "tollgate: %s\n", err);
			rc = 1;
		} else {
			printf("%s/%s, %s/spoe.conf, %s/tollgate.lua written\n", out,
			       fragment ? "tollgate.cfg" : "haproxy.cfg", out, out);
		}
		config_free(cfg);
		return rc;
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
