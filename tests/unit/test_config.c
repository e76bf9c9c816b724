/* test_config.c -- the configuration loader: defaults, ${VAR} substitution,
 * typing, every validation error (naming the right path), the seed's plugin
 * blocks verbatim, and examples/token-control.yaml.
 *
 * Run from the repository root (tests/run.sh does); EXAMPLE_CONFIG overrides
 * the example's path.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "config.h"

static char last_err[1024];

static struct tg_config *load(const char *yaml)
{
	struct tg_config *c = NULL;

	last_err[0] = 0;
	if (config_load_string(yaml, strlen(yaml), "t.yaml", &c, last_err, sizeof(last_err)) != 0) {
		fprintf(stderr, "  unexpected error: %s\n", last_err);
		return NULL;
	}
	return c;
}

/* yaml must be refused with an error that starts with "path: " (or exactly
 * path when it ends with ':') and contains sub. */
static int refused(const char *yaml, const char *path, const char *sub)
{
	struct tg_config *c = (struct tg_config *)1;
	char want[512];
	int rc;

	last_err[0] = 0;
	rc = config_load_string(yaml, strlen(yaml), "t.yaml", &c, last_err, sizeof(last_err));
	if (rc == 0) {
		fprintf(stderr, "  accepted, expected \"%s: ...%s...\"\n", path, sub);
		config_free(c);
		return 0;
	}
	if (c != NULL) {
		fprintf(stderr, "  *out not NULL on error\n");
		return 0;
	}
	snprintf(want, sizeof(want), "%s: ", path);
	if (strncmp(last_err, want, strlen(want)) != 0 || !strstr(last_err, sub)) {
		fprintf(stderr, "  got \"%s\"\n  want \"%s...%s...\"\n", last_err, want, sub);
		return 0;
	}
	return 1;
}

#define REFUSED(yaml, path, sub) CHECK(refused(yaml, path, sub))

/* yaml must be refused with "t.yaml:LINE: ..." containing sub. */
static int refused_at_line(const char *yaml, const char *sub)
{
	struct tg_config *c = NULL;

	if (config_load_string(yaml, strlen(yaml), "t.yaml", &c, last_err, sizeof(last_err)) == 0) {
		config_free(c);
		fprintf(stderr, "  accepted, expected \"t.yaml:N: ...%s...\"\n", sub);
		return 0;
	}
	if (strncmp(last_err, "t.yaml:", 7) != 0 || !(last_err[7] >= '1' && last_err[7] <= '9') ||
	    !strstr(last_err, sub)) {
		fprintf(stderr, "  got \"%s\"\n  want \"t.yaml:N: ...%s...\"\n", last_err, sub);
		return 0;
	}
	return 1;
}

#define REFUSED_AT_LINE(yaml, sub) CHECK(refused_at_line(yaml, sub))

/* A valid base every reference test builds on. */
#define BASE \
	"services:\n" \
	"  - { name: local-redis, type: static, address: \"127.0.0.1:6379\" }\n" \
	"  - { name: dns-redis, type: dns, address: \"redis.example.com:6379\" }\n" \
	"providers:\n" \
	"  - { name: aliyun, type: qwen }\n" \
	"  - { name: m, type: mock }\n" \
	"consumers:\n" \
	"  - { name: admin, credential: k-admin }\n" \
	"  - { name: u1, credential: k-u1 }\n" \
	"  - { name: u2, credential: k-u2 }\n"

#define ROUTE_AUTH \
	"routes:\n" \
	"  - name: r\n" \
	"    provider: aliyun\n" \
	"    auth: { enabled: true, allow: [admin, u1, u2] }\n"

/* ------------------------------------------------------------ defaults */

CASE(defaults_of_an_empty_file)
{
	struct tg_config *c = load("");

	CHECK(c);
	if (!c)
		return;
	CHECK(strcmp(c->agent.listen, "127.0.0.1:12345") == 0);
	CHECK(c->agent.unix_path == NULL);
	CHECK(strcmp(c->agent.http, "127.0.0.1:8001") == 0);
	CHECK(strcmp(c->agent.settle, "127.0.0.1:12346") == 0);
	CHECK(strcmp(c->agent.state_dir, "/var/lib/tollgate") == 0);
	CHECK(c->agent.max_frame_size == 4203520);     /* haproxy.bufsize */
	CHECK(c->agent.max_inflight == 1024);
	CHECK(c->agent.idle_timeout == 30);
	CHECK(c->agent.hello_timeout == 5);
	CHECK(c->agent.processing_timeout == 1);
	CHECK(c->agent.drain_timeout == 10);
	CHECK(c->agent.threads == 1);
	CHECK(!c->agent.debug_messages);
	CHECK(strcmp(c->agent.log_level, "info") == 0);
	CHECK(strcmp(c->haproxy.listen, ":8080") == 0);
	CHECK(c->haproxy.tls_listen == NULL && c->haproxy.tls_cert == NULL);
	/* 4 MiB bodies, and the buffer that holds one with its headers */
	CHECK(c->haproxy.max_body == 4194304);
	CHECK(c->haproxy.bufsize == 4194304 + 1024 + 8192);
	/* the default: 2.6 without the glibc setting runs it smaller */
	CHECK(!c->haproxy.sized && config_max_body_floor(c) == 126976 - 9216);
	CHECK(c->haproxy.maxconn == 4096);
	CHECK(c->haproxy.nbthread == 0);
	CHECK(c->haproxy.failure_status == 503);
	CHECK(c->haproxy.on_agent_error == TG_FAIL_CLOSED);
	CHECK(c->haproxy.timeouts.server == 300);
	CHECK(c->haproxy.timeouts.spoe_processing == 0.5);
	CHECK(c->store.redis == NULL);
	CHECK(c->store.timeout_ms == 50);
	CHECK(c->store.failure_mode == TG_FAIL_LOCAL);
	CHECK(c->store.lease_ms == 600000);
	CHECK(c->store.breaker_threshold == 5);
	CHECK(c->key_auth.n_keys == 2);
	CHECK(strcmp(c->key_auth.keys[0], "x-api-key") == 0);
	CHECK(strcmp(c->key_auth.keys[1], "authorization") == 0);
	CHECK(c->key_auth.in_header && !c->key_auth.in_query && !c->key_auth.global_auth);
	CHECK(c->n_services == 0 && c->n_providers == 0 && c->n_consumers == 0 && c->n_routes == 0);
	CHECK(c->services && c->providers && c->consumers && c->routes);
	CHECK(strcmp(c->path, "t.yaml") == 0);
	config_free(c);
}

CASE(null_sections_and_comments_are_defaults)
{
	struct tg_config *c = load("# nothing\nagent:\nhaproxy: ~\nstore: null\nroutes:\n");

	CHECK(c && c->agent.max_inflight == 1024 && c->n_routes == 0);
	config_free(c);
	c = load("agent: {}\n");
	CHECK(c && strcmp(c->agent.listen, "127.0.0.1:12345") == 0);
	config_free(c);
	config_free(NULL);
}

CASE(agent_values)
{
	struct tg_config *c = load(
		"agent:\n"
		"  listen: \"0.0.0.0:9000\"\n"
		"  unix: /tmp/tg.sock\n"
		"  http: \"[::1]:8002\"\n"
		"  settle: \"\"\n"
		"  state_dir: /tmp/st\n"
		"  max_frame_size: 16384\n"
		"  max_inflight: 7\n"
		"  idle_timeout: 500ms\n"
		"  hello_timeout: 2m\n"
		"  processing_timeout: 3\n"
		"  drain_timeout: \"1.5s\"\n"
		"  threads: 4\n"
		"  debug_messages: true\n"
		"  log_level: debug\n");

	CHECK(c);
	if (!c)
		return;
	CHECK(strcmp(c->agent.listen, "0.0.0.0:9000") == 0);
	CHECK(strcmp(c->agent.unix_path, "/tmp/tg.sock") == 0);
	CHECK(strcmp(c->agent.http, "[::1]:8002") == 0);
	CHECK(c->agent.settle == NULL);
	CHECK(strcmp(c->agent.state_dir, "/tmp/st") == 0);
	CHECK(c->agent.max_frame_size == 16384);
	CHECK(c->agent.max_inflight == 7);
	CHECK(c->agent.idle_timeout > 0.4999 && c->agent.idle_timeout < 0.5001);
	CHECK(c->agent.hello_timeout == 120);
	CHECK(c->agent.processing_timeout == 3);
	CHECK(c->agent.drain_timeout == 1.5);
	CHECK(c->agent.threads == 4);
	CHECK(c->agent.debug_messages);
	CHECK(strcmp(c->agent.log_level, "debug") == 0);
	config_free(c);
}

CASE(agent_listen_forms)
{
	struct tg_config *c = load("agent: { listen: \"\", unix: /tmp/a.sock }\n");

	CHECK(c && c->agent.listen == NULL && strcmp(c->agent.unix_path, "/tmp/a.sock") == 0);
	config_free(c);
	c = load("agent: { listen: \"unix:/tmp/b.sock\" }\n");
	CHECK(c && strcmp(c->agent.listen, "unix:/tmp/b.sock") == 0);
	config_free(c);
	c = load("agent: { listen: \":12345\" }\n");
	CHECK(c);
	config_free(c);
	REFUSED("agent: { listen: \"\" }\n", "agent.listen", "both empty");
	REFUSED("agent: { listen: \"\", unix: \"\" }\n", "agent.listen", "both empty");
	REFUSED("agent: { listen: localhost }\n", "agent.listen", "HOST:PORT");
	REFUSED("agent: { listen: \"127.0.0.1:0\" }\n", "agent.listen", "bad port");
	REFUSED("agent: { listen: \"127.0.0.1:70000\" }\n", "agent.listen", "bad port");
	REFUSED("agent: { listen: \"::1:80\" }\n", "agent.listen", "brackets");
	REFUSED("agent: { http: \"[zz]:80\" }\n", "agent.http", "IPv6");
	REFUSED("agent: { settle: \"bad host:1\" }\n", "agent.settle", "bad host");
}

CASE(agent_errors_name_the_field)
{
	REFUSED("agent: { max_frame_size: 100 }\n", "agent.max_frame_size", "between 256 and 16777216");
	REFUSED("agent: { max_frame_size: 16777217 }\n", "agent.max_frame_size", "between");
	REFUSED("agent: { max_inflight: 0 }\n", "agent.max_inflight", "between 1");
	REFUSED("agent: { threads: 65 }\n", "agent.threads", "between 1 and 64");
	REFUSED("agent: { threads: x }\n", "agent.threads", "expected an integer");
	REFUSED("agent: { threads: 1.5 }\n", "agent.threads", "expected an integer");
	REFUSED("agent: { idle_timeout: abc }\n", "agent.idle_timeout", "expected a duration");
	REFUSED("agent: { idle_timeout: 10x }\n", "agent.idle_timeout", "expected a duration");
	REFUSED("agent: { idle_timeout: -1 }\n", "agent.idle_timeout", "expected a duration");
	REFUSED("agent: { idle_timeout: 0 }\n", "agent.idle_timeout", "> 0");
	REFUSED("agent: { log_level: verbose }\n", "agent.log_level", "error, warn, info, debug");
	REFUSED("agent: { debug_messages: maybe }\n", "agent.debug_messages", "boolean");
	REFUSED("agent: { debug_messages: [true] }\n", "agent.debug_messages", "got a list");
	REFUSED("agent: { state_dir: \"\" }\n", "agent.state_dir", "empty");
	REFUSED("agent: { unix: \"/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\" }\n",
	        "agent.unix", "longer than");
}

/* ------------------------------------------------------- substitution */

CASE(env_substitution)
{
	struct tg_config *c;

	setenv("TGT_PORT", "9999", 1);
	setenv("TGT_EMPTY", "", 1);
	setenv("TGT_FRAME", "4096", 1);
	setenv("TGT_TRUE", "yes", 1);
	setenv("TGT_INNER", "inner", 1);
	unsetenv("TGT_UNSET");
	c = load("agent:\n"
	         "  listen: \"127.0.0.1:${TGT_PORT}\"\n"
	         "  http: \"127.0.0.1:${TGT_UNSET:-8100}\"\n"
	         "  settle: \"127.0.0.1:${TGT_EMPTY:-8200}\"\n"
	         "  state_dir: /x/${TGT_UNSET}/y${TGT_EMPTY-z}\n"
	         "  unix: \"/tmp/${TGT_UNSET:-${TGT_INNER}}-$${HOME}.sock\"\n"
	         "  max_frame_size: ${TGT_FRAME}\n"
	         "  debug_messages: ${TGT_TRUE}\n"
	         "  log_level: \"${TGT_UNSET-warn}\"\n");
	CHECK(c);
	if (!c)
		return;
	CHECK(strcmp(c->agent.listen, "127.0.0.1:9999") == 0);
	CHECK(strcmp(c->agent.http, "127.0.0.1:8100") == 0);
	CHECK(strcmp(c->agent.settle, "127.0.0.1:8200") == 0);
	CHECK(strcmp(c->agent.state_dir, "/x//y") == 0);   /* unset: "", ${E-z} keeps "" */
	CHECK(strcmp(c->agent.unix_path, "/tmp/inner-${HOME}.sock") == 0);
	CHECK(c->agent.max_frame_size == 4096);
	CHECK(c->agent.debug_messages);
	CHECK(strcmp(c->agent.log_level, "warn") == 0);
	config_free(c);

	/* substitution happens in values only, and before typing */
	setenv("TGT_BAD", "notanumber", 1);
	REFUSED("agent: { threads: \"${TGT_BAD}\" }\n", "agent.threads", "expected an integer");
	REFUSED("agent: { http: \"${TGT_UNSET\" }\n", "agent.http", "unterminated");
	REFUSED("agent: { http: \"${1X}\" }\n", "agent.http", "bad variable reference");
	REFUSED("agent: { http: \"${X?y}\" }\n", "agent.http", "bad variable reference");
	REFUSED("agent: { http: \"${}\" }\n", "agent.http", "bad variable reference");
	REFUSED("routes:\n  - name: r\n    provider: \"${TGT_UNSET:-nope\"\n", "routes[0].provider",
	        "unterminated");
	unsetenv("TGT_PORT");
	unsetenv("TGT_EMPTY");
	unsetenv("TGT_FRAME");
	unsetenv("TGT_TRUE");
	unsetenv("TGT_BAD");
	unsetenv("TGT_INNER");
}

/* ------------------------------------------------- structure and types */

CASE(unknown_keys_name_their_path)
{
	REFUSED("agnet: {}\n", "agnet", "unknown key (did you mean agent?)");
	REFUSED("frobnicate: 1\n", "frobnicate", "unknown key");
	REFUSED("agent: { listne: \":1\" }\n", "agent.listne", "unknown key (did you mean listen?)");
	REFUSED("haproxy: { timeouts: { sever: 3s } }\n", "haproxy.timeouts.sever",
	        "did you mean server?");
	REFUSED(BASE ROUTE_AUTH
	        "    plugins:\n"
	        "      ai-token-ratelimit:\n"
	        "        rule_name: x\n"
	        "        rule_items:\n"
	        "          - limit_by_header: h\n"
	        "            limit_keys: [{ key: a, token_per_minute: 5 }]\n"
	        "          - limit_by_per_header: x-api-key\n"
	        "            limit_keyz: [{ key: \"*\", token_per_minute: 5 }]\n",
	        "routes[0].plugins.ai-token-ratelimit.rule_items[1].limit_keyz", "unknown key");
	REFUSED(BASE ROUTE_AUTH
	        "    plugins:\n"
	        "      ai-token-ratelimit:\n"
	        "        rule_name: x\n"
	        "        rule_items:\n"
	        "          - limit_by_per_header: x-api-key\n"
	        "            limit_keys: [{ key: \"*\", token_per_minite: 5 }]\n",
	        "routes[0].plugins.ai-token-ratelimit.rule_items[0].limit_keys[0].token_per_minite",
	        "unknown key (did you mean token_per_minute?)");
	REFUSED(BASE ROUTE_AUTH "    plugins: { ai-proxy: {} }\n", "routes[0].plugins.ai-proxy",
	        "unknown key");
	REFUSED(BASE ROUTE_AUTH "    plugins:\n      ai-quota:\n        admin_consumer: admin\n"
	        "        redis: { service_name: local-redis.static, db: 1 }\n",
	        "routes[0].plugins.ai-quota.redis.db", "unknown key");
	REFUSED("services:\n  - { name: a, address: \"h:1\", port: 2 }\n", "services[0].port",
	        "unknown key");
}

CASE(wrong_types_name_their_path)
{
	REFUSED("agent: [1, 2]\n", "agent", "expected a mapping, got a list");
	REFUSED("agent: 3\n", "agent", "expected a mapping, got a scalar");
	REFUSED("routes: { a: 1 }\n", "routes", "expected a list, got a mapping");
	REFUSED("consumers:\n  - { name: { x: 1 }, credential: k }\n", "consumers[0].name",
	        "expected a string, got a mapping");
	REFUSED("consumers:\n  - just-a-name\n", "consumers[0]", "expected a mapping");
	REFUSED("key_auth: { keys: x-api-key }\n", "key_auth.keys", "expected a list");
	REFUSED("key_auth: { keys: [[a]] }\n", "key_auth.keys[0]", "expected a string, got a list");
	REFUSED("haproxy: { maxconn: { a: 1 } }\n", "haproxy.maxconn",
	        "expected an integer, got a mapping");
	REFUSED_AT_LINE("[1, 2]\n", "must be a mapping");
}

CASE(yaml_syntax_and_structure_errors)
{
	struct tg_config *c = NULL;
	char err[256];
	const char *bad = "agent:\n  listen: \"x\n";

	CHECK(config_load_string(bad, strlen(bad), "bad.yaml", &c, err, sizeof(err)) == -1);
	CHECK(c == NULL);
	CHECK(strncmp(err, "bad.yaml:", 9) == 0);
	bad = "agent: [1, 2\n";
	CHECK(config_load_string(bad, strlen(bad), "bad.yaml", &c, err, sizeof(err)) == -1);
	CHECK(strncmp(err, "bad.yaml:", 9) == 0);
	bad = "agent:\n\tlisten: x\n";
	CHECK(config_load_string(bad, strlen(bad), "bad.yaml", &c, err, sizeof(err)) == -1);
	CHECK(strncmp(err, "bad.yaml:2:", 11) == 0);
	bad = "agent: {}\n---\nagent: {}\n";
	CHECK(config_load_string(bad, strlen(bad), "bad.yaml", &c, err, sizeof(err)) == -1);
	CHECK(strstr(err, "only one YAML document") != NULL);
	REFUSED("agent:\n  listen: \":1\"\n  listen: \":2\"\n", "agent.listen",
	        "duplicate key (also on line 2)");
	REFUSED_AT_LINE("agent: { ? [a] : b }\n", "mapping keys");
	/* small error buffers are fine */
	CHECK(config_load_string("x: 1", 4, "t", &c, err, 4) == -1 && strlen(err) == 3);
	CHECK(config_load_string("x: 1", 4, "t", &c, NULL, 0) == -1);
}

CASE(anchors_aliases_and_bombs)
{
	struct tg_config *c;

	/* x-redis is not a known key: anchors must live inside known keys */
	REFUSED(BASE "x-redis: &r { service_name: local-redis.static, service_port: 80 }\n",
	        "x-redis", "unknown key");
	c = load(BASE ROUTE_AUTH
	         "    plugins:\n"
	         "      ai-quota:\n"
	         "        admin_consumer: admin\n"
	         "        redis: &r { service_name: local-redis.static, timeout: 2000 }\n"
	         "      ai-token-ratelimit:\n"
	         "        rule_name: n\n"
	         "        global_threshold: { token_per_minute: 100 }\n"
	         "        redis: *r\n");
	CHECK(c);
	if (c) {
		const struct tg_ai_token_ratelimit *rl = c->routes[0].ratelimit;

		CHECK(rl && rl->redis.present && rl->redis.timeout_ms == 2000);
		CHECK(rl && rl->redis.service == &c->services[0]);
	}
	config_free(c);
	/* an error inside an alias copy names the place of the alias */
	REFUSED(BASE ROUTE_AUTH
	        "    plugins:\n"
	        "      ai-quota: { admin_consumer: admin, redis: &r { service_name: nope } }\n",
	        "routes[0].plugins.ai-quota.redis.service_name", "names no service");
	REFUSED_AT_LINE("agent: { listen: *nope }\n", "unknown alias *nope");
	REFUSED_AT_LINE("agent: &a { x: *a }\n", "unknown alias *a");
	REFUSED("haproxy: { listen: \":80\" }\nagent: { <<: {} }\n", "agent.<<", "merge keys");
	/* billion laughs: refused by the node budget, not by memory */
	REFUSED_AT_LINE("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
	        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
	        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
	        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n", "alias expansion");
}

/* --------------------------------------------------------------- haproxy */

/* Either size follows from the other; the agent's frame size follows the
 * buffer unless set. */
CASE(haproxy_max_body)
{
	struct tg_config *c = load("haproxy: { max_body: 1048576 }\n");

	CHECK(c && c->haproxy.max_body == 1048576 && c->haproxy.bufsize == 1048576 + 9216);
	CHECK(c && c->agent.max_frame_size == 1048576 + 9216);
	CHECK(c && c->haproxy.sized && config_max_body_floor(c) == 1048576);   /* as given */
	config_free(c);
	c = load("haproxy: { max_body: 2000 }\n");
	CHECK(c && c->haproxy.max_body == 2000 && c->haproxy.bufsize == 16384);
	config_free(c);
	c = load("haproxy: { max_body: 8000000, bufsize: 8323072 }\n"
	         "agent: { max_frame_size: 65536 }\n");
	CHECK(c && c->haproxy.max_body == 8000000 && c->haproxy.bufsize == 8323072);
	CHECK(c && c->agent.max_frame_size == 65536);
	config_free(c);
	c = load("haproxy: { bufsize: 65536 }\n");
	CHECK(c && c->haproxy.sized && config_max_body_floor(c) == 65536 - 9216);
	config_free(c);
}

CASE(haproxy_section)
{
	struct tg_config *c = load(
		"haproxy:\n"
		"  listen: \"*:8080\"\n"
		"  tls_listen: \":8443\"\n"
		"  tls_cert: /etc/gw.pem\n"
		"  bufsize: 131072\n"
		"  maxconn: 100\n"
		"  nbthread: 4\n"
		"  failure_status: 502\n"
		"  on_agent_error: open\n"
		"  stats_socket: /tmp/h.sock\n"
		"  agent_address: \"127.0.0.1:12345\"\n"
		"  timeouts: { connect: 1s, client: 2m, server: 10m, http_request: 5, queue: 1,\n"
		"              spoe_processing: 800ms, spoe_hello: 1s, spoe_idle: 1m }\n");

	CHECK(c);
	if (!c)
		return;
	CHECK(strcmp(c->haproxy.listen, "*:8080") == 0);
	CHECK(strcmp(c->haproxy.tls_listen, ":8443") == 0);
	CHECK(strcmp(c->haproxy.tls_cert, "/etc/gw.pem") == 0);
	CHECK(c->haproxy.bufsize == 131072 && c->haproxy.maxconn == 100 && c->haproxy.nbthread == 4);
	CHECK(c->haproxy.max_body == 131072 - 9216);    /* follows bufsize */
	CHECK(c->agent.max_frame_size == 1048576);      /* at least 1 MiB */
	CHECK(c->haproxy.failure_status == 502);
	CHECK(c->haproxy.on_agent_error == TG_FAIL_OPEN);
	CHECK(strcmp(c->haproxy.stats_socket, "/tmp/h.sock") == 0);
	CHECK(strcmp(c->haproxy.spoe_backend_addr, "127.0.0.1:12345") == 0);
	CHECK(c->haproxy.timeouts.client == 120 && c->haproxy.timeouts.server == 600);
	CHECK(c->haproxy.timeouts.spoe_processing > 0.79 && c->haproxy.timeouts.spoe_processing < 0.81);
	config_free(c);
	REFUSED("haproxy: { listen: \"\" }\n", "haproxy.listen", "empty");
	REFUSED("haproxy: { listen: \"8080\" }\n", "haproxy.listen", "HOST:PORT");
	REFUSED("haproxy: { tls_listen: \":8443\" }\n", "haproxy.tls_cert", "required with tls_listen");
	REFUSED("haproxy: { tls_cert: /a.pem }\n", "haproxy.tls_cert", "needs haproxy.tls_listen");
	REFUSED("haproxy: { bufsize: 1024 }\n", "haproxy.bufsize", "between 16384");
	REFUSED("haproxy: { bufsize: 65536, max_body: 60000 }\n", "haproxy.max_body",
	        "above haproxy.bufsize - 9216 (56320)");
	REFUSED("haproxy: { max_body: 16777216 }\n", "haproxy.max_body", "between 1024");
	/* 2.6 to 3.0 crash checking the agent with a buffer of 8 MiB */
	REFUSED("haproxy: { bufsize: 8388608 }\n", "haproxy.bufsize", "between 16384 and 8323072");
	REFUSED("haproxy: { failure_status: 200 }\n", "haproxy.failure_status", "between 400 and 599");
	REFUSED("haproxy: { on_agent_error: local }\n", "haproxy.on_agent_error", "closed, open");
	REFUSED("haproxy: { nbthread: 65 }\n", "haproxy.nbthread", "between 0 and 64");
	REFUSED("haproxy: { timeouts: { spoe_processing: 40ms } }\n", "store.timeout_ms",
	        "spoe_processing");
	c = load("haproxy: { timeouts: { spoe_processing: 40ms } }\nstore: { timeout_ms: 20 }\n");
	CHECK(c);
	config_free(c);
}

/* ----------------------------------------------------------------- store */

CASE(store_redis_url)
{
	struct tg_config *c = load("store:\n  redis: \"redis://:s3cret@10.0.0.5:6380/2\"\n"
	                           "  timeout_ms: 30\n  failure_mode: closed\n"
	                           "  lease_ttl: 5m\n  breaker_threshold: 3\n"
	                           "  breaker_cooldown: 250ms\n");

	CHECK(c);
	if (c) {
		CHECK(strcmp(c->store.redis, "redis://:s3cret@10.0.0.5:6380/2") == 0);
		CHECK(strcmp(c->store.host, "10.0.0.5") == 0 && c->store.port == 6380);
		CHECK(c->store.username == NULL);
		CHECK(c->store.password && strcmp(c->store.password, "s3cret") == 0);
		CHECK(c->store.db == 2 && c->store.timeout_ms == 30);
		CHECK(c->store.failure_mode == TG_FAIL_CLOSED);
		CHECK(c->store.lease_ms == 300000 && c->store.breaker_threshold == 3);
		CHECK(c->store.breaker_cooldown_ms == 250);
	}
	config_free(c);
	c = load("store: { redis: \"redis://localhost\", timeout_ms: 2s }\n"
	         "haproxy: { timeouts: { spoe_processing: 5s } }\n");
	CHECK(c && strcmp(c->store.host, "localhost") == 0 && c->store.port == 6379 && c->store.db == 0);
	CHECK(c && c->store.password == NULL && c->store.timeout_ms == 2000);
	config_free(c);
	REFUSED("store: { redis: \"redis://localhost\", timeout_ms: 2s }\n"
	        "haproxy: { timeouts: { spoe_processing: 1s } }\n", "store.timeout_ms", "not under");
	c = load("store: { redis: \"redis://me:p%40ss@[::1]:7000/\" }\n");
	CHECK(c && strcmp(c->store.username, "me") == 0 && strcmp(c->store.password, "p@ss") == 0);
	CHECK(c && strcmp(c->store.host, "::1") == 0 && c->store.port == 7000);
	config_free(c);
	c = load("store: { redis: \"${TGT_UNSET_REDIS:-}\" }\n");
	CHECK(c && c->store.redis == NULL);
	config_free(c);
	REFUSED("store: { redis: \"http://x:1\" }\n", "store.redis", "redis://");
	REFUSED("store: { redis: \"rediss://x:1\" }\n", "store.redis", "TLS");
	REFUSED("store: { redis: \"redis://x:99999\" }\n", "store.redis", "bad port");
	REFUSED("store: { redis: \"redis://x:1/abc\" }\n", "store.redis", "database");
	REFUSED("store: { redis: \"redis://:pw@\" }\n", "store.redis", "missing host");
	REFUSED("store: { redis: \"redis://:p%zz@h:1\" }\n", "store.redis", "percent");
	REFUSED("store: { redis: \"redis://x?db=1\" }\n", "store.redis", "query");
	/* a bad URL never echoes the password */
	REFUSED("store: { redis: \"redis://:topsecret@h:0\" }\n", "store.redis", "bad port");
	CHECK(strstr(last_err, "topsecret") == NULL);
	REFUSED("store: { redis: \"redis://:topsecret@h:1/x\" }\n", "store.redis", "database");
	CHECK(strstr(last_err, "topsecret") == NULL);
	REFUSED("store: { redis: \"redis://:topsecret@bad_host!:1\" }\n", "store.redis", "bad host");
	CHECK(strstr(last_err, "topsecret") == NULL);
	/* Sentinel: the sentinels (default port 26379), the master's name, the db */
	c = load("store: { redis: \"redis-sentinel://:s3cret@10.0.0.1,10.0.0.2:26380,[::1]/mymaster/3\" }\n");
	CHECK(c && c->store.n_sentinels == 3 && strcmp(c->store.sentinel_master, "mymaster") == 0);
	CHECK(c && strcmp(c->store.sentinels[0].host, "10.0.0.1") == 0 &&
	      c->store.sentinels[0].port == 26379);
	CHECK(c && strcmp(c->store.sentinels[1].host, "10.0.0.2") == 0 &&
	      c->store.sentinels[1].port == 26380);
	CHECK(c && strcmp(c->store.sentinels[2].host, "::1") == 0 && c->store.db == 3);
	CHECK(c && strcmp(c->store.password, "s3cret") == 0);
	CHECK(c && strcmp(c->store.host, "10.0.0.1") == 0 && c->store.port == 26379);
	config_free(c);
	c = load("store: { redis: \"redis://h:1\" }\n");
	CHECK(c && c->store.n_sentinels == 0 && c->store.sentinel_master == NULL);
	config_free(c);
	REFUSED("store: { redis: \"redis-sentinel://h1,h2\" }\n", "store.redis", "master name");
	REFUSED("store: { redis: \"redis-sentinel://h1//0\" }\n", "store.redis", "master name");
	REFUSED("store: { redis: \"redis-sentinel:///m\" }\n", "store.redis", "missing host");
	REFUSED("store: { redis: \"redis-sentinel://h1,,/m\" }\n", "store.redis", "missing");
	REFUSED("store: { redis: \"redis-sentinel://h1:0/m\" }\n", "store.redis", "bad port");
	REFUSED("store: { redis: \"redis-sentinel://h1/m/x\" }\n", "store.redis", "database");
	REFUSED("store: { redis: \"redis-sentinel://1,2,3,4,5,6,7,8,9/m\" }\n", "store.redis",
	        "more than 8");
	REFUSED("store: { failure_mode: maybe }\n", "store.failure_mode", "local, open, closed");
	REFUSED("store: { timeout_ms: 0 }\n", "store.timeout_ms", "between 1ms");
	REFUSED("store: { lease_ttl: 10ms }\n", "store.lease_ttl", "between");
}

/* -------------------------------------------------- services, providers */

CASE(services_section)
{
	struct tg_config *c = load(BASE "  \n");

	CHECK(c);
	if (c) {
		CHECK(c->n_services == 2);
		CHECK(strcmp(c->services[0].host, "127.0.0.1") == 0 && c->services[0].port == 6379);
		CHECK(c->services[0].type == TG_SVC_STATIC && !c->services[0].embedded);
		CHECK(c->services[1].type == TG_SVC_DNS);
		CHECK(strcmp(c->services[0].protocol, "http") == 0);
		CHECK(config_service(c, "dns-redis") == &c->services[1]);
		CHECK(config_service(c, "nope") == NULL);
	}
	config_free(c);
	c = load("services: [{ name: e, address: embedded }]\n");
	CHECK(c && c->services[0].embedded && c->services[0].port == 0);
	config_free(c);
	REFUSED("services: [{ name: e, type: dns, address: embedded }]\n", "services[0].address",
	        "static");
	REFUSED("services:\n  - { name: a, address: \"h:1\" }\n  - { name: a, address: \"h:2\" }\n",
	        "services[1].name", "duplicate service name");
	REFUSED("services: [{ name: a, type: consul, address: \"h:1\" }]\n", "services[0].type",
	        "static, dns");
	REFUSED("services: [{ name: a }]\n", "services[0].address", "missing");
	REFUSED("services: [{ address: \"h:1\" }]\n", "services[0].name", "missing");
	REFUSED("services: [{ name: \"a b\", address: \"h:1\" }]\n", "services[0].name", "only letters");
	REFUSED("services: [{ name: a, address: h }]\n", "services[0].address", "HOST:PORT");
	REFUSED("services: [{ name: a, address: \":6379\" }]\n", "services[0].address", "missing host");
	REFUSED("services: [{ name: a, address: \"h:1\", protocol: udp }]\n", "services[0].protocol",
	        "http, https, tcp");
}

CASE(providers_section)
{
	struct tg_config *c;

	unsetenv("TGT_NOKEY");
	setenv("TGT_KEY", "sk-123", 1);
	c = load("providers:\n"
	         "  - name: q\n"
	         "    type: qwen\n"
	         "    api_keys: [\"${TGT_KEY}\", \"${TGT_NOKEY}\", k2]\n"
	         "    model_mapping: { \"gpt-4\": qwen-max, \"gpt-*\": qwen-plus, \"*\": \"\" }\n"
	         "  - { name: o, type: openai }\n"
	         "  - { name: d, type: deepseek, timeout: 90s }\n"
	         "  - { name: b, type: doubao }\n"
	         "  - { name: az, type: azure, base_url: \"https://x.openai.azure.com/\",\n"
	         "      deployment: gpt4o }\n"
	         "  - { name: local, type: openai-compatible, base_url: \"http://127.0.0.1:8000/v1\" }\n"
	         "  - { name: m, type: mock }\n");
	CHECK(c);
	if (!c)
		return;
	const struct tg_provider *p = config_provider(c, "q");

	CHECK(c->n_providers == 7);
	CHECK(p && p->type == TG_PROV_QWEN);
	CHECK(p && strcmp(p->base_url, "https://dashscope.aliyuncs.com/compatible-mode/v1") == 0);
	CHECK(p && strcmp(p->scheme, "https") == 0 && strcmp(p->host, "dashscope.aliyuncs.com") == 0);
	CHECK(p && p->port == 443 && strcmp(p->base_path, "/compatible-mode/v1") == 0);
	CHECK(p && p->n_api_keys == 2 && strcmp(p->api_keys[0], "sk-123") == 0 &&
	      strcmp(p->api_keys[1], "k2") == 0);
	CHECK(p && p->n_model_mapping == 3 && strcmp(p->model_mapping[0].from, "gpt-4") == 0 &&
	      strcmp(p->model_mapping[0].to, "qwen-max") == 0 && strcmp(p->model_mapping[2].to, "") == 0);
	CHECK(p && p->api_version == NULL && p->deployment == NULL);
	p = config_provider(c, "o");
	CHECK(p && strcmp(p->host, "api.openai.com") == 0 && p->n_api_keys == 0 && p->api_keys);
	p = config_provider(c, "d");
	CHECK(p && strcmp(p->host, "api.deepseek.com") == 0 && p->timeout == 90);
	p = config_provider(c, "b");
	CHECK(p && strcmp(p->base_path, "/api/v3") == 0);
	p = config_provider(c, "az");
	CHECK(p && p->type == TG_PROV_AZURE && strcmp(p->api_version, "2024-10-21") == 0);
	CHECK(p && strcmp(p->deployment, "gpt4o") == 0 && strcmp(p->base_path, "") == 0);
	p = config_provider(c, "local");
	CHECK(p && strcmp(p->scheme, "http") == 0 && p->port == 8000 && strcmp(p->host, "127.0.0.1") == 0);
	p = config_provider(c, "m");
	CHECK(p && p->type == TG_PROV_MOCK && strcmp(p->base_url, "") == 0);
	CHECK(strcmp(config_provider_type_name(TG_PROV_OPENAI_COMPATIBLE), "openai-compatible") == 0);
	config_free(c);
	unsetenv("TGT_KEY");

	REFUSED("providers: [{ name: a, type: claude }]\n", "providers[0].type",
	        "openai, azure, qwen, deepseek, doubao, openai-compatible, mock");
	REFUSED("providers: [{ name: a }]\n", "providers[0].type", "missing");
	REFUSED("providers: [{ name: a, type: azure }]\n", "providers[0].base_url", "required for type azure");
	REFUSED("providers: [{ name: a, type: openai-compatible }]\n", "providers[0].base_url",
	        "required");
	REFUSED("providers: [{ name: a, type: qwen, api_version: \"1\" }]\n", "providers[0].api_version",
	        "only for type azure");
	REFUSED("providers: [{ name: a, type: qwen, deployment: x }]\n", "providers[0].deployment",
	        "only for type azure");
	REFUSED("providers: [{ name: a, type: qwen, base_url: \"ftp://x\" }]\n", "providers[0].base_url",
	        "http:// or https://");
	REFUSED("providers: [{ name: a, type: qwen, base_url: \"https://\" }]\n", "providers[0].base_url",
	        "missing host");
	REFUSED("providers: [{ name: a, type: qwen, base_url: \"https://h/v1?x=1\" }]\n",
	        "providers[0].base_url", "query");
	REFUSED("providers: [{ name: a, type: qwen, api_keys: k }]\n", "providers[0].api_keys",
	        "expected a list");
	REFUSED("providers: [{ name: a, type: qwen, model_mapping: [a] }]\n",
	        "providers[0].model_mapping", "expected a mapping");
	REFUSED("providers: [{ name: a, type: qwen, model_mapping: { a: [b] } }]\n",
	        "providers[0].model_mapping.a", "expected a string");
	REFUSED("providers:\n  - { name: a, type: qwen }\n  - { name: a, type: mock }\n",
	        "providers[1].name", "duplicate provider name");
}

/* ------------------------------------------------- consumers, key_auth */

CASE(consumers_and_key_auth)
{
	struct tg_config *c = load(BASE
	                           "  - { name: multi, credentials: [c1, c2], credential: c0 }\n"
	                           "key_auth: { keys: [x-api-key, apikey], in_header: false, in_query: true,\n"
	                           "            global_auth: true }\n");

	CHECK(c);
	if (c) {
		const struct tg_consumer *m = config_consumer(c, "multi");

		CHECK(c->n_consumers == 4);
		CHECK(m && m->n_credentials == 3 && strcmp(m->credentials[0], "c0") == 0 &&
		      strcmp(m->credentials[2], "c2") == 0);
		CHECK(config_consumer(c, "u1") == &c->consumers[1]);
		CHECK(c->key_auth.n_keys == 2 && strcmp(c->key_auth.keys[1], "apikey") == 0);
		CHECK(!c->key_auth.in_header && c->key_auth.in_query && c->key_auth.global_auth);
	}
	config_free(c);
	unsetenv("TGT_NOKEY");
	REFUSED("consumers: [{ name: a, credential: \"${TGT_NOKEY}\" }]\n", "consumers[0].credential",
	        "environment variable");
	REFUSED("consumers: [{ name: a }]\n", "consumers[0].credential", "missing");
	REFUSED("consumers: [{ name: a, credentials: [] }]\n", "consumers[0].credentials",
	        "at least one");
	REFUSED("consumers: [{ name: a, credentials: [x, \"\"] }]\n", "consumers[0].credentials[1]",
	        "empty");
	REFUSED("consumers: [{ name: a, credential: \"a b\" }]\n", "consumers[0].credential", "spaces");
	REFUSED("consumers:\n  - { name: a, credential: k }\n  - { name: a, credential: j }\n",
	        "consumers[1].name", "duplicate consumer name \"a\"");
	REFUSED("consumers:\n  - { name: a, credential: sekrit }\n  - { name: b, credential: sekrit }\n",
	        "consumers[1].credential", "same credential as consumer \"a\"");
	CHECK(strstr(last_err, "sekrit") == NULL);
	REFUSED("consumers:\n  - { name: a, credential: k, credentials: [k] }\n",
	        "consumers[0].credentials[0]", "same credential");
	REFUSED("key_auth: { in_header: false }\n", "key_auth", "both false");
	REFUSED("key_auth: { keys: [] }\n", "key_auth.keys", "at least one");
	REFUSED("key_auth: { keys: [\"x api\"] }\n", "key_auth.keys[0]", "not a valid");
	REFUSED("key_auth: { in_query: sometimes }\n", "key_auth.in_query", "boolean");
}

/* ---------------------------------------------------------------- routes */

CASE(routes_and_references)
{
	struct tg_config *c = load(BASE
	                           "routes:\n"
	                           "  - name: r1\n"
	                           "    provider: aliyun\n"
	                           "    models: [\"qwen-*\", qwen-max]\n"
	                           "    paths: [/v1/chat/completions, /v1/embeddings]\n"
	                           "    auth: { allow: [u1, admin] }\n"
	                           "  - { name: r2, provider: m }\n"
	                           "  - { name: r3, provider: m, auth: { enabled: false } }\n");

	CHECK(c);
	if (!c)
		return;
	const struct tg_route *r = config_route(c, "r1");

	CHECK(c->n_routes == 3);
	CHECK(r && r->provider == &c->providers[0] && strcmp(r->provider_name, "aliyun") == 0);
	CHECK(r && r->n_models == 2 && strcmp(r->models[0], "qwen-*") == 0);
	CHECK(r && r->n_paths == 2 && strcmp(r->paths[1], "/v1/embeddings") == 0);
	CHECK(r && r->auth.enabled && r->auth.n_allow == 2);
	CHECK(r && r->auth.allow_c[0] == &c->consumers[1] && r->auth.allow_c[1] == &c->consumers[0]);
	CHECK(r && !r->quota && !r->ratelimit);
	r = config_route(c, "r2");
	CHECK(r && r->n_models == 1 && strcmp(r->models[0], "*") == 0 && r->n_paths == 0);
	CHECK(r && !r->auth.enabled && r->auth.n_allow == 0 && r->provider == &c->providers[1]);
	r = config_route(c, "r3");
	CHECK(r && !r->auth.enabled);
	CHECK(config_route(c, "r4") == NULL);
	config_free(c);

	REFUSED(BASE "routes: [{ name: r, provider: nope }]\n", "routes[0].provider",
	        "\"nope\" names no provider (providers: aliyun, m)");
	REFUSED("routes: [{ name: r, provider: nope }]\n", "routes[0].provider", "none defined");
	REFUSED(BASE "routes: [{ name: r }]\n", "routes[0].provider", "missing");
	REFUSED(BASE "routes: [{ provider: m }]\n", "routes[0].name", "missing");
	REFUSED(BASE "routes:\n  - { name: r, provider: m }\n  - { name: r, provider: m }\n",
	        "routes[1].name", "duplicate route name");
	REFUSED(BASE "routes: [{ name: r, provider: m, auth: { allow: [u1, ghost] } }]\n",
	        "routes[0].auth.allow[1]", "\"ghost\" names no consumer");
	REFUSED(BASE "routes: [{ name: r, provider: m, auth: { allow: [u1, u1] } }]\n",
	        "routes[0].auth.allow[1]", "listed twice");
	REFUSED(BASE "routes: [{ name: r, provider: m, auth: { enabled: 2 } }]\n",
	        "routes[0].auth.enabled", "boolean");
	REFUSED(BASE "routes: [{ name: r, provider: m, models: [] }]\n", "routes[0].models",
	        "at least one");
	REFUSED(BASE "routes: [{ name: r, provider: m, models: [\"\"] }]\n", "routes[0].models[0]",
	        "empty");
	REFUSED(BASE "routes: [{ name: r, provider: m, paths: [v1] }]\n", "routes[0].paths[0]",
	        "starting with '/'");
	REFUSED(BASE "routes: [{ name: r, provider: m, plugins: [] }]\n", "routes[0].plugins",
	        "expected a mapping");
}

/* ---------------------------------------------------------------- ai-quota */

CASE(ai_quota_plugin)
{
	struct tg_config *c = load(BASE ROUTE_AUTH
	                           "    plugins:\n"
	                           "      ai-quota:\n"
	                           "        redis_key_prefix: 'chat_quota:'\n"
	                           "        admin_consumer: admin\n"
	                           "        admin_path: /quota\n"
	                           "        redis:\n"
	                           "          service_name: local-redis.static\n"
	                           "          service_port: 80\n"
	                           "          timeout: 2000\n"
	                           "        count: output\n"
	                           "        weights: { qwen-max: { input: 1, output: 4 }, \"*\": 2 }\n"
	                           "        strict: true\n");

	CHECK(c);
	if (c) {
		const struct tg_ai_quota *q = c->routes[0].quota;

		CHECK(q && strcmp(q->redis_key_prefix, "chat_quota:") == 0);
		CHECK(q && q->admin == &c->consumers[0] && strcmp(q->admin_consumer, "admin") == 0);
		CHECK(q && strcmp(q->admin_path, "/quota") == 0);
		CHECK(q && q->redis.present && q->redis.service == &c->services[0]);
		CHECK(q && q->redis.service_port == 80 && q->redis.timeout_ms == 2000);
		CHECK(q && q->redis.database == 0 && q->redis.password == NULL);
		CHECK(q && q->count == TG_COUNT_OUTPUT && q->strict);
		CHECK(q && q->n_weights == 2 && q->weights[0].input == 1 && q->weights[0].output == 4);
		CHECK(q && strcmp(q->weights[1].model, "*") == 0 && q->weights[1].input == 2 &&
		      q->weights[1].output == 2);
		CHECK(q && q->failure_mode == TG_FAIL_LOCAL);
	}
	config_free(c);
	/* defaults, no redis block (the store), failure mode from the store */
	c = load(BASE ROUTE_AUTH "    plugins: { ai-quota: { admin_consumer: admin } }\n"
	         "store: { failure_mode: open }\n");
	CHECK(c);
	if (c) {
		const struct tg_ai_quota *q = c->routes[0].quota;

		CHECK(q && strcmp(q->redis_key_prefix, "chat_quota:") == 0);
		CHECK(q && strcmp(q->admin_path, "/quota") == 0 && !q->redis.present && !q->redis.service);
		CHECK(q && q->count == TG_COUNT_TOTAL && !q->strict && q->n_weights == 0);
		CHECK(q && q->failure_mode == TG_FAIL_OPEN);
	}
	config_free(c);
	c = load(BASE ROUTE_AUTH "    plugins: { ai-quota: { admin_consumer: admin,\n"
	         "      redis: { service_name: dns-redis.dns, password: pw, database: 3 } } }\n");
	CHECK(c && c->routes[0].quota->redis.service == &c->services[1]);
	CHECK(c && c->routes[0].quota->redis.service_port == 6379 && c->routes[0].quota->redis.database == 3);
	config_free(c);

#define Q(body) BASE ROUTE_AUTH "    plugins:\n      ai-quota:\n" body
	REFUSED(Q("        admin_path: /quota\n"), "routes[0].plugins.ai-quota.admin_consumer", "missing");
	REFUSED(Q("        admin_consumer: boss\n"), "routes[0].plugins.ai-quota.admin_consumer",
	        "\"boss\" names no consumer (consumers: admin, u1, u2)");
	REFUSED(BASE "routes: [{ name: r, provider: m, auth: { allow: [u1] },\n"
	        "  plugins: { ai-quota: { admin_consumer: admin } } }]\n",
	        "routes[0].plugins.ai-quota.admin_consumer", "not in routes[0].auth.allow");
	REFUSED(BASE "routes: [{ name: r, provider: m, plugins: { ai-quota: { admin_consumer: admin } } }]\n",
	        "routes[0].plugins.ai-quota", "set routes[0].auth.enabled");
	REFUSED(Q("        admin_consumer: admin\n        admin_path: quota\n"),
	        "routes[0].plugins.ai-quota.admin_path", "starting with '/'");
	REFUSED(Q("        admin_consumer: admin\n        redis: { service_name: other.static }\n"),
	        "routes[0].plugins.ai-quota.redis.service_name",
	        "\"other.static\" names no service (services: local-redis, dns-redis)");
	REFUSED(Q("        admin_consumer: admin\n        redis: { service_name: local-redis.dns }\n"),
	        "routes[0].plugins.ai-quota.redis.service_name", "write local-redis.static");
	REFUSED(Q("        admin_consumer: admin\n        redis: { service_name: local-redis.static,\n"
	          "                 service_port: 0 }\n"),
	        "routes[0].plugins.ai-quota.redis.service_port", "between 1 and 65535");
	REFUSED(Q("        admin_consumer: admin\n        redis: { timeout: -5 }\n"),
	        "routes[0].plugins.ai-quota.redis.timeout", "duration");
	REFUSED(Q("        admin_consumer: admin\n        count: tokens\n"),
	        "routes[0].plugins.ai-quota.count", "total, input, output");
	REFUSED(Q("        admin_consumer: admin\n        weights: { m: { input: -1 } }\n"),
	        "routes[0].plugins.ai-quota.weights.m.input", "between 0");
	REFUSED(Q("        admin_consumer: admin\n        weights: { m: { inptu: 1 } }\n"),
	        "routes[0].plugins.ai-quota.weights.m.inptu", "did you mean input?");
	REFUSED(Q("        admin_consumer: admin\n        weights: [1]\n"),
	        "routes[0].plugins.ai-quota.weights", "expected a mapping");
	REFUSED(Q("        admin_consumer: admin\n        failure_mode: fail\n"),
	        "routes[0].plugins.ai-quota.failure_mode", "local, open, closed");
#undef Q
}

/* ------------------------------------------------------ ai-token-ratelimit */

/* The seed's block, verbatim (indented under plugins). */
#define SEED_RATELIMIT \
	"      ai-token-ratelimit:\n" \
	"        rule_items:\n" \
	"        - limit_by_per_header: x-api-key\n" \
	"          limit_keys:\n" \
	"          - key: \"*\"\n" \
	"            token_per_minute: 5 #每分钟限流5个\n" \
	"        rule_name: \"default_rule\"\n" \
	"\n" \
	"        redis:\n" \
	"          service_name: local-redis.static\n" \
	"          service_port: 80\n"

CASE(ai_token_ratelimit_seed_block)
{
	struct tg_config *c = load(BASE ROUTE_AUTH "    plugins:\n" SEED_RATELIMIT);

	CHECK(c);
	if (!c)
		return;
	const struct tg_ai_token_ratelimit *rl = c->routes[0].ratelimit;

	CHECK(rl && strcmp(rl->rule_name, "default_rule") == 0 && !rl->has_global);
	CHECK(rl && rl->n_rule_items == 1);
	CHECK(rl && rl->rule_items[0].by == TG_LIMIT_BY_PER_HEADER);
	CHECK(rl && strcmp(rl->rule_items[0].name, "x-api-key") == 0);
	CHECK(rl && rl->rule_items[0].n_keys == 1 && rl->rule_items[0].keys[0].kind == TG_KEY_ANY);
	CHECK(rl && rl->rule_items[0].keys[0].limits.per_minute == 5);
	CHECK(rl && rl->rule_items[0].keys[0].limits.per_second == 0);
	CHECK(rl && rl->rejected_code == 429 && strcmp(rl->rejected_msg, "Too many requests") == 0);
	CHECK(rl && rl->redis.service == &c->services[0] && rl->redis.service_port == 80);
	CHECK(rl && rl->redis.timeout_ms == 1000);
	CHECK(rl && rl->count == TG_COUNT_TOTAL && !rl->strict && !rl->clamp_max_tokens);
	CHECK(rl && rl->failure_mode == TG_FAIL_LOCAL);
	CHECK(strcmp(config_limit_by_name(TG_LIMIT_BY_PER_HEADER), "limit_by_per_header") == 0);
	config_free(c);
}

CASE(ai_token_ratelimit_every_kind)
{
	struct tg_config *c = load(BASE ROUTE_AUTH
		"    plugins:\n"
		"      ai-token-ratelimit:\n"
		"        rule_name: all\n"
		"        rejected_code: 403\n"
		"        rejected_msg: slow down\n"
		"        count: input\n"
		"        weights: { qwen-max: { output: 3 } }\n"
		"        strict: true\n"
		"        clamp_max_tokens: yes\n"
		"        failure_mode: closed\n"
		"        rule_items:\n"
		"          - limit_by_header: x-tenant\n"
		"            limit_keys: [{ key: t1, token_per_second: 1, token_per_day: 1000 }]\n"
		"          - limit_by_param: apikey\n"
		"            limit_keys: [{ key: k1, token_per_hour: 10 }]\n"
		"          - limit_by_consumer: ''\n"
		"            limit_keys: [{ key: u1, token_per_minute: 10 }]\n"
		"          - limit_by_cookie: sid\n"
		"            limit_keys: [{ key: s1, token_per_minute: 10 }]\n"
		"          - limit_by_per_param: apikey\n"
		"            limit_keys: [{ key: \"regexp:^sk-[a-z]+$\", token_per_minute: 10 }]\n"
		"          - limit_by_per_consumer:\n"
		"            limit_keys: [{ key: \"regexp:^u\", token_per_minute: 10 },\n"
		"                         { key: \"*\", token_per_minute: 20 }]\n"
		"          - limit_by_per_cookie: sid\n"
		"            limit_keys: [{ key: exact, token_per_minute: 10 }]\n"
		"          - limit_by_per_ip: from-header-x-forwarded-for\n"
		"            limit_keys: [{ key: 10.0.0.0/8, token_per_minute: 10 },\n"
		"                         { key: \"2001:db8::/32\", token_per_minute: 10 },\n"
		"                         { key: 192.168.1.7, token_per_minute: 10 }]\n"
		"          - limit_by_per_ip: from-remote-addr\n"
		"            limit_keys: [{ key: \"*\", token_per_minute: 10 }]\n");

	CHECK(c);
	if (!c)
		return;
	const struct tg_ai_token_ratelimit *rl = c->routes[0].ratelimit;
	const struct tg_rule_item *it = rl->rule_items;

	CHECK(rl->n_rule_items == 9);
	CHECK(rl->rejected_code == 403 && strcmp(rl->rejected_msg, "slow down") == 0);
	CHECK(rl->count == TG_COUNT_INPUT && rl->strict && rl->clamp_max_tokens);
	CHECK(rl->failure_mode == TG_FAIL_CLOSED);
	CHECK(rl->n_weights == 1 && rl->weights[0].input == 1 && rl->weights[0].output == 3);
	CHECK(!rl->redis.present && rl->redis.service == NULL);
	CHECK(it[0].by == TG_LIMIT_BY_HEADER && it[0].keys[0].kind == TG_KEY_EXACT);
	CHECK(it[0].keys[0].limits.per_second == 1 && it[0].keys[0].limits.per_day == 1000);
	CHECK(it[1].by == TG_LIMIT_BY_PARAM && it[1].keys[0].limits.per_hour == 10);
	CHECK(it[2].by == TG_LIMIT_BY_CONSUMER && strcmp(it[2].name, "") == 0);
	CHECK(it[3].by == TG_LIMIT_BY_COOKIE && strcmp(it[3].name, "sid") == 0);
	CHECK(it[4].by == TG_LIMIT_BY_PER_PARAM && it[4].keys[0].kind == TG_KEY_REGEXP);
	CHECK(it[4].keys[0].re_compiled && strcmp(it[4].keys[0].pattern, "^sk-[a-z]+$") == 0);
	CHECK(regexec(&it[4].keys[0].re, "sk-abc", 0, NULL, 0) == 0);
	CHECK(regexec(&it[4].keys[0].re, "sk-ABC", 0, NULL, 0) != 0);
	CHECK(it[5].by == TG_LIMIT_BY_PER_CONSUMER && it[5].n_keys == 2);
	CHECK(it[5].keys[1].kind == TG_KEY_ANY);
	CHECK(it[6].by == TG_LIMIT_BY_PER_COOKIE && it[6].keys[0].kind == TG_KEY_EXACT);
	CHECK(it[7].by == TG_LIMIT_BY_PER_IP && strcmp(it[7].ip_header, "x-forwarded-for") == 0);
	CHECK(it[7].keys[0].kind == TG_KEY_CIDR && it[7].keys[0].cidr.prefix == 8);
	CHECK(it[8].ip_header == NULL && it[8].keys[0].kind == TG_KEY_ANY);

	unsigned char a4[4], a6[16];

	inet_pton(AF_INET, "10.1.2.3", a4);
	CHECK(config_cidr_match(&it[7].keys[0].cidr, AF_INET, a4));
	inet_pton(AF_INET, "11.1.2.3", a4);
	CHECK(!config_cidr_match(&it[7].keys[0].cidr, AF_INET, a4));
	inet_pton(AF_INET6, "::ffff:10.9.9.9", a6);
	CHECK(config_cidr_match(&it[7].keys[0].cidr, AF_INET6, a6));
	inet_pton(AF_INET6, "2001:db8:1::5", a6);
	CHECK(config_cidr_match(&it[7].keys[1].cidr, AF_INET6, a6));
	CHECK(!config_cidr_match(&it[7].keys[0].cidr, AF_INET6, a6));
	inet_pton(AF_INET, "192.168.1.7", a4);
	CHECK(config_cidr_match(&it[7].keys[2].cidr, AF_INET, a4));
	inet_pton(AF_INET, "192.168.1.8", a4);
	CHECK(!config_cidr_match(&it[7].keys[2].cidr, AF_INET, a4));
	config_free(c);

	c = load(BASE "routes: [{ name: r, provider: m, plugins: { ai-token-ratelimit: {\n"
	         "  rule_name: g, global_threshold: { token_per_minute: 100, token_per_day: 5000 } } } }]\n");
	CHECK(c && c->routes[0].ratelimit->has_global && c->routes[0].ratelimit->n_rule_items == 0);
	CHECK(c && c->routes[0].ratelimit->global_threshold.per_minute == 100);
	CHECK(c && c->routes[0].ratelimit->global_threshold.per_day == 5000);
	config_free(c);
}

CASE(ai_token_ratelimit_errors)
{
#define RL(body) BASE ROUTE_AUTH "    plugins:\n      ai-token-ratelimit:\n        rule_name: x\n" body
#define P "routes[0].plugins.ai-token-ratelimit"
	REFUSED(RL(""), P ".rule_items", "rule_items or global_threshold");
	REFUSED(BASE ROUTE_AUTH "    plugins:\n      ai-token-ratelimit:\n"
	        "        global_threshold: { token_per_minute: 1 }\n", P ".rule_name", "missing");
	REFUSED(RL("        global_threshold: { token_per_minute: 1 }\n"
	           "        rule_items: [{ limit_by_per_ip: from-remote-addr,\n"
	           "                       limit_keys: [{ key: \"*\", token_per_minute: 1 }] }]\n"),
	        P ".global_threshold", "exclusive");
	REFUSED(RL("        global_threshold: {}\n"), P ".global_threshold", "needs one of token_per_second");
	REFUSED(RL("        global_threshold: { token_per_week: 3 }\n"), P ".global_threshold.token_per_week",
	        "unknown key");
	REFUSED(RL("        rule_items: []\n"), P ".rule_items", "at least one");
	REFUSED(RL("        rule_items:\n          - limit_keys: [{ key: a, token_per_minute: 1 }]\n"),
	        P ".rule_items[0]", "needs one of limit_by_header");
	REFUSED(RL("        rule_items:\n          - limit_by_header: a\n            limit_by_param: b\n"
	           "            limit_keys: [{ key: a, token_per_minute: 1 }]\n"),
	        P ".rule_items[0].limit_by_param", "only one limit_by_* per rule item (also limit_by_header)");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"),
	        P ".rule_items[0].limit_keys", "missing");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n            limit_keys: []\n"),
	        P ".rule_items[0].limit_keys", "at least one");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"*\", token_per_minute: 0 }]\n"),
	        P ".rule_items[0].limit_keys[0].token_per_minute", "must be > 0");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"*\", token_per_hour: -5 }]\n"),
	        P ".rule_items[0].limit_keys[0].token_per_hour", "must be > 0");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"*\", token_per_hour: 1.5 }]\n"),
	        P ".rule_items[0].limit_keys[0].token_per_hour", "expected an integer");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"*\" }]\n"),
	        P ".rule_items[0].limit_keys[0]", "needs one of token_per_second");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "missing");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"regexp:(\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "bad regular expression");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"regexp:\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "empty regular expression");
	/* a compiled regexp is freed when a later key fails */
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: x-api-key\n"
	           "            limit_keys: [{ key: \"regexp:^a\", token_per_minute: 3 },\n"
	           "                         { key: \"regexp:^a\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[1].key", "listed twice (also limit_keys[0])");
	REFUSED(RL("        rule_items:\n          - limit_by_header: x-api-key\n"
	           "            limit_keys: [{ key: \"*\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "need a limit_by_per_* rule item");
	REFUSED(RL("        rule_items:\n          - limit_by_param: k\n"
	           "            limit_keys: [{ key: \"regexp:.*\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "need a limit_by_per_*");
	REFUSED(RL("        rule_items:\n          - limit_by_per_ip: from-remote-addr\n"
	           "            limit_keys: [{ key: 10.0.0.0/33, token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "not an IP address or CIDR");
	REFUSED(RL("        rule_items:\n          - limit_by_per_ip: from-remote-addr\n"
	           "            limit_keys: [{ key: \"regexp:^10\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_keys[0].key", "not an IP address");
	REFUSED(RL("        rule_items:\n          - limit_by_per_ip: x-forwarded-for\n"
	           "            limit_keys: [{ key: \"*\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_by_per_ip", "from-remote-addr or from-header-NAME");
	REFUSED(RL("        rule_items:\n          - limit_by_per_header: \"\"\n"
	           "            limit_keys: [{ key: \"*\", token_per_minute: 3 }]\n"),
	        P ".rule_items[0].limit_by_per_header", "empty");
	REFUSED(RL("        rule_items: [{ limit_by_per_ip: from-remote-addr,\n"
	           "                       limit_keys: [{ key: \"*\", token_per_minute: 1 }] }]\n"
	           "        rejected_code: 200\n"), P ".rejected_code", "between 400 and 599");
	REFUSED(RL("        rule_items: [{ limit_by_per_ip: from-remote-addr,\n"
	           "                       limit_keys: [{ key: \"*\", token_per_minute: 1 }] }]\n"
	           "        strict: sure\n"), P ".strict", "boolean");
	REFUSED(RL("        rule_items: [{ limit_by_per_ip: from-remote-addr,\n"
	           "                       limit_keys: [{ key: \"*\", token_per_minute: 1 }] }]\n"
	           "        redis: { service_name: nowhere.static }\n"), P ".redis.service_name",
	        "names no service");
	REFUSED(BASE "routes: [{ name: r, provider: m, plugins: { ai-token-ratelimit: {\n"
	        "  rule_name: g, rule_items: [{ limit_by_per_consumer: '',\n"
	        "  limit_keys: [{ key: \"*\", token_per_minute: 1 }] }] } } }]\n",
	        "routes[0].plugins.ai-token-ratelimit.rule_items[0].limit_by_per_consumer",
	        "needs an authenticated consumer");
	REFUSED(BASE "routes: [{ name: r, provider: m, plugins: { ai-token-ratelimit: {\n"
	        "  rule_name: \"bad name\", global_threshold: { token_per_minute: 1 } } } }]\n",
	        "routes[0].plugins.ai-token-ratelimit.rule_name", "only letters");
	/* global auth makes consumer rules valid without route auth */
	struct tg_config *c = load(BASE "key_auth: { global_auth: true }\n"
	        "routes: [{ name: r, provider: m, plugins: { ai-token-ratelimit: {\n"
	        "  rule_name: g, rule_items: [{ limit_by_per_consumer: '',\n"
	        "  limit_keys: [{ key: \"*\", token_per_minute: 1 }] }] } } }]\n");
	CHECK(c);
	config_free(c);
#undef P
#undef RL
}

/* ---------------------------------------------------------------- files */

static const char *example_path(void)
{
	const char *p = getenv("EXAMPLE_CONFIG");

	return p ? p : "examples/token-control.yaml";
}

CASE(example_file_loads)
{
	static const char *vars[] = {
		"TOLLGATE_LISTEN", "TOLLGATE_HTTP", "TOLLGATE_STATE_DIR", "TOLLGATE_LOG_LEVEL",
		"REDIS_URL", "REDIS_ADDR", "PROVIDER_TYPE", "QWEN_BASE_URL", "DASHSCOPE_API_KEY",
		"ADMIN_KEY", "USER1_KEY", "USER2_KEY", NULL };
	struct tg_config *c = NULL;
	char err[512];

	for (int i = 0; vars[i]; i++)
		unsetenv(vars[i]);
	CHECK(config_load(example_path(), &c, err, sizeof(err)) == 0);
	if (!c) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	CHECK(strcmp(c->haproxy.listen, ":8080") == 0);
	CHECK(strcmp(c->agent.http, "127.0.0.1:8001") == 0);
	CHECK(strcmp(c->agent.state_dir, "./state") == 0);
	CHECK(c->store.redis == NULL);
	CHECK(c->n_services == 1 && c->services[0].embedded);
	CHECK(c->n_providers == 1 && c->providers[0].type == TG_PROV_MOCK);
	CHECK(c->providers[0].n_api_keys == 0);
	CHECK(c->n_consumers == 3);
	CHECK(strcmp(c->consumers[0].name, "aliyun-admin") == 0);
	CHECK(strcmp(c->consumers[0].credentials[0], "admin-key-123") == 0);
	CHECK(strcmp(c->consumers[2].name, "aliyun-user2") == 0);
	CHECK(c->key_auth.n_keys == 1 && strcmp(c->key_auth.keys[0], "x-api-key") == 0);
	CHECK(c->n_routes == 1);
	const struct tg_route *r = &c->routes[0];

	CHECK(r->auth.enabled && r->auth.n_allow == 3);
	CHECK(r->quota && r->quota->admin == &c->consumers[0]);
	CHECK(r->quota && strcmp(r->quota->redis_key_prefix, "chat_quota:") == 0);
	CHECK(r->quota && r->quota->redis.timeout_ms == 2000 && r->quota->redis.service == &c->services[0]);
	CHECK(r->ratelimit && strcmp(r->ratelimit->rule_name, "default_rule") == 0);
	CHECK(r->ratelimit && r->ratelimit->rule_items[0].keys[0].limits.per_minute == 5);
	config_free(c);

	setenv("PROVIDER_TYPE", "qwen", 1);
	setenv("DASHSCOPE_API_KEY", "sk-test", 1);
	setenv("REDIS_ADDR", "172.17.0.2:6379", 1);
	setenv("ADMIN_KEY", "from-env", 1);
	CHECK(config_load(example_path(), &c, err, sizeof(err)) == 0);
	CHECK(c && c->providers[0].type == TG_PROV_QWEN && c->providers[0].n_api_keys == 1);
	CHECK(c && strcmp(c->providers[0].host, "dashscope.aliyuncs.com") == 0);
	CHECK(c && !c->services[0].embedded && c->services[0].port == 6379);
	CHECK(c && strcmp(c->consumers[0].credentials[0], "from-env") == 0);
	config_free(c);
	setenv("PROVIDER_TYPE", "gemini", 1);
	CHECK(config_load(example_path(), &c, err, sizeof(err)) == -1 && c == NULL);
	CHECK(strncmp(err, "providers[0].type: ", 19) == 0);
	for (int i = 0; vars[i]; i++)
		unsetenv(vars[i]);
}

CASE(file_errors)
{
	struct tg_config *c = (struct tg_config *)1;
	char err[512], path[] = "/tmp/tg-test-config-XXXXXX";
	int fd;
	FILE *f;

	CHECK(config_load("/nonexistent/tollgate.yaml", &c, err, sizeof(err)) == -1);
	CHECK(c == NULL && strstr(err, "/nonexistent/tollgate.yaml") && strstr(err, "No such file"));
	fd = mkstemp(path);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	f = fdopen(fd, "w");
	fputs("agent:\n  listen: \"127.0.0.1:1\"\n  threads: 0\n", f);
	fclose(f);
	CHECK(config_load(path, &c, err, sizeof(err)) == -1);
	CHECK(strcmp(err, "agent.threads: must be between 1 and 64") == 0);
	f = fopen(path, "w");
	fputs("agent:\n  listen: [\n", f);
	fclose(f);
	CHECK(config_load(path, &c, err, sizeof(err)) == -1);
	CHECK(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
	f = fopen(path, "w");
	fclose(f);
	CHECK(config_load(path, &c, err, sizeof(err)) == 0 && c);
	CHECK(c && strcmp(c->path, path) == 0);
	config_free(c);
	unlink(path);
}

CASE(enum_names)
{
	CHECK(strcmp(config_failure_mode_name(TG_FAIL_LOCAL), "local") == 0);
	CHECK(strcmp(config_failure_mode_name(TG_FAIL_CLOSED), "closed") == 0);
	CHECK(strcmp(config_count_mode_name(TG_COUNT_OUTPUT), "output") == 0);
	CHECK(strcmp(config_provider_type_name(TG_PROV_MOCK), "mock") == 0);
	CHECK(strcmp(config_limit_by_name(TG_LIMIT_BY_PER_IP), "limit_by_per_ip") == 0);
	CHECK(strcmp(config_failure_mode_name((enum tg_failure_mode)9), "?") == 0);
}

int main(void)
{
	RUN_ALL(defaults_of_an_empty_file, null_sections_and_comments_are_defaults, agent_values,
	        agent_listen_forms, agent_errors_name_the_field, env_substitution,
	        unknown_keys_name_their_path, wrong_types_name_their_path,
	        yaml_syntax_and_structure_errors, anchors_aliases_and_bombs, haproxy_max_body, haproxy_section,
	        store_redis_url, services_section, providers_section, consumers_and_key_auth,
	        routes_and_references, ai_quota_plugin, ai_token_ratelimit_seed_block,
	        ai_token_ratelimit_every_kind, ai_token_ratelimit_errors, example_file_loads,
	        file_errors, enum_names);
	DONE();
}
