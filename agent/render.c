/* render.c -- `tollgate haproxy-config`: haproxy.cfg, spoe.conf, tollgate.lua.
 *
 * Owns: the HAProxy side of the gateway contract (doc/gateway.md) rendered
 * from one loaded configuration:
 *   - global: buffer size (request bodies are buffered whole for the agent),
 *     lua-load-per-thread (2.6.12 crashes with lua-load + threads + a Lua
 *     filter), the 3.1+ Lua boolean conversion under `.if`;
 *   - the ring `tollgate_settle` (one settlement record per transaction) and
 *     the stats socket at agent.settle the agent reads it through (operator
 *     level); user, group and chroot when the YAML asks for them;
 *   - the gateway frontend: SPOE + Lua filters, 413 above the buffer, the
 *     failure policy for a missing verdict, one `http-request return` per
 *     status the agent can answer (2.6 needs a literal status), credential
 *     stripping, provider key, path/query/body rewrites, backend choice,
 *     x-ratelimit-* headers, the response group for non-SSE answers, the
 *     settlement log-format;
 *   - one backend per provider (TLS verified against the system CAs), the
 *     mock provider pointing at agent.http, the agent backend with
 *     `option spop-check` (`mode spop` on 3.1+, `mode tcp` before);
 *   - spoe.conf: agent `tollgate`, messages `request` / `response`, group
 *     `response`, var-prefix tg, set-on-error, pipelining only.
 * The Lua filter's source is embedded in the binary at build time (.incbin
 * below), so the rendered directory always matches the binary.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "render.h"
#include "ring_reader.h"

/* --fragment: the file, and where the handoff backend reaches the frontend
 * (an abstract socket: no file, unaffected by a chroot) */
#define FRAGMENT_FILE "tollgate.cfg"
#define HANDOFF_ADDR  "abns@tollgate-gateway"

/* the sizes, as HAProxy environment variables (render_sizes) */
#define ENV_MAX_BODY "TOLLGATE_MAX_BODY"
#define ENV_BUFSIZE  "TOLLGATE_BUFSIZE"
#define ENV_LIMIT    "TOLLGATE_MAX_BODY_FROM"

/* Buffers each thread of 2.8+ keeps cached (tune.memory.hot-size). Every
 * SPOE exchange of 3.1+ is a stream of its own with buffers of its own, so
 * at 4 MiB a cache of 8 overflowed under load: every overflow handed
 * buffers back to glibc and evicted the thread's small objects with them
 * (its cache is one LRU). Measured (tests/bench/gateway.sh, 50
 * connections): two empty exchanges cost HAProxy 41-47 us a request with 8
 * on 3.2 and 3.4, 33-38 with 64, no better with 128. Only the pages a
 * buffer was written to are resident, and glibc keeps what it is given
 * back anyway (trim threshold in haproxy/README.md). */
#define HOT_BUFFERS 64ULL

/* ------------------------------------------------------------ the Lua file */

#ifndef TG_LUA_FILE
#define TG_LUA_FILE "haproxy/tollgate.lua"   /* relative to the build's cwd */
#endif

__asm__(".pushsection .rodata\n"
        ".global tg_render_lua_start\n"
        ".global tg_render_lua_end\n"
        "tg_render_lua_start:\n"
        ".incbin \"" TG_LUA_FILE "\"\n"
        "tg_render_lua_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern const char tg_render_lua_start[];
extern const char tg_render_lua_end[];

const char *render_glibc_tunables(const char *version)
{
	return strncmp(version, "2.6.", 4) == 0 || strcmp(version, "2.6") == 0
	       ? GLIBC_TUNABLES_2_6 : GLIBC_TUNABLES_2_8;
}

const char *render_lua_source(size_t *len)
{
	if (len)
		*len = (size_t)(tg_render_lua_end - tg_render_lua_start);
	return tg_render_lua_start;
}

/* ------------------------------------------------------------- helpers */

/* Statuses the agent answers with (gateway.c, auth.c, admit.c,
 * quota_admin.c); every ai-token-ratelimit rejected_code is added. */
static const int base_statuses[] = { 200, 400, 401, 403, 404, 405, 413, 429, 500, 503 };

#define MAX_STATUSES 128

struct statuses {
	int code[MAX_STATUSES];
	bool retry[MAX_STATUSES];   /* a rate-limit answer: Retry-After + reset */
	size_t n;
};

static void status_add(struct statuses *s, int code, bool retry)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->code[i] == code) {
			s->retry[i] = s->retry[i] || retry;
			return;
		}
	}
	if (s->n < MAX_STATUSES) {
		s->code[s->n] = code;
		s->retry[s->n] = retry;
		s->n++;
	}
}

static void fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* A name HAProxy accepts as a proxy/server name. */
static bool valid_name(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++) {
		char c = *s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.' || c == ':'))
			return false;
	}
	return true;
}

/* An HTTP header (or query parameter) name usable unquoted in a rule and
 * inside the query-stripping regex: letters, digits and "-_.". */
static bool valid_token(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++) {
		char c = *s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

/* A word usable unquoted: an address, a host, a file path. */
static bool valid_word(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= ' ' || c >= 0x7f || strchr("\"'\\#$%{}", c))
			return false;
	}
	return true;
}

/* A host name or IP address (IPv6 without brackets). */
static bool valid_host(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++) {
		char c = *s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == ':'))
			return false;
	}
	return true;
}

static bool is_ip_literal(const char *h)
{
	bool colon = strchr(h, ':') != NULL;

	if (colon)
		return true;                   /* IPv6 */
	for (; *h; h++)
		if (!((*h >= '0' && *h <= '9') || *h == '.'))
			return false;
	return true;
}

/* A double-quoted configuration string; lf: a log-format string (% doubled). */
static void put_escaped(FILE *f, const char *s, bool lf)
{
	for (; *s; s++) {
		if (*s == '"' || *s == '\\' || *s == '$')
			fputc('\\', f);
		if (lf && *s == '%')
			fputc('%', f);
		fputc(*s, f);
	}
}

static void put_quoted(FILE *f, const char *s, bool lf)
{
	fputc('"', f);
	put_escaped(f, s, lf);
	fputc('"', f);
}

/* Milliseconds of a duration in seconds, at least 1. */
static unsigned long ms(double seconds)
{
	double v = seconds * 1000.0 + 0.5;

	if (v < 1)
		return 1;
	if (v > 2147483647.0)
		return 2147483647UL;
	return (unsigned long)v;
}

/* The host HAProxy reaches the agent on, from haproxy.agent_address
 * ("agent:12345" in a compose stack); NULL when it is local (loopback). */
static const char *agent_host(const struct tg_config *cfg, char *buf, size_t buflen)
{
	const char *a = cfg->haproxy.spoe_backend_addr, *colon;

	if (!a || a[0] == '/' || !strncmp(a, "unix", 4) || !(colon = strrchr(a, ':')) ||
	    colon == a || a[0] == '[' || !strncmp(a, "0.0.0.0:", 8) || !strncmp(a, "*:", 2))
		return NULL;
	snprintf(buf, buflen, "%.*s", (int)(colon - a), a);
	return buf;
}

/* Where HAProxy connects to reach a listener written as addr: "unix:P",
 * "unix@P" and "/P" become "unix@P"; a wildcard or empty host becomes the
 * agent's host (agent_host()), or the loopback address. */
static int connect_addr_via(const char *addr, const char *host, char *out, size_t outlen)
{
	const char *colon;

	if (!addr || !*addr)
		return -1;
	if (!strncmp(addr, "unix:", 5) || !strncmp(addr, "unix@", 5)) {
		if (!valid_word(addr + 5))
			return -1;
		snprintf(out, outlen, "unix@%s", addr + 5);
		return 0;
	}
	if (addr[0] == '/') {
		if (!valid_word(addr))
			return -1;
		snprintf(out, outlen, "unix@%s", addr);
		return 0;
	}
	if (!valid_word(addr))
		return -1;
	colon = strrchr(addr, ':');
	if (!colon || !colon[1])
		return -1;
	if (colon == addr || !strncmp(addr, "0.0.0.0:", 8) || !strncmp(addr, "*:", 2))
		snprintf(out, outlen, "%s%s", host ? host : "127.0.0.1", colon);
	else if (!strncmp(addr, "[::]:", 5) || !strncmp(addr, ":::", 3))
		snprintf(out, outlen, "::1%s", colon);
	else if (addr[0] == '[') {                      /* [v6]:port -> v6:port */
		const char *rb = strchr(addr, ']');

		if (!rb || rb[1] != ':')
			return -1;
		snprintf(out, outlen, "%.*s%s", (int)(rb - addr - 1), addr + 1, rb + 1);
	} else
		snprintf(out, outlen, "%s", addr);
	return 0;
}

static int connect_addr(const char *addr, char *out, size_t outlen)
{
	return connect_addr_via(addr, NULL, out, outlen);
}

/* agent.settle (or haproxy.settle_bind) as a `stats socket` address:
 * "unix@/path", "ipv4@a.b.c.d:port", "ipv6@addr:port", or "host:port". */
static int cli_bind_addr(const char *addr, char *out, size_t outlen)
{
	const char *colon = strrchr(addr, ':');
	int n;

	if (!strncmp(addr, "unix:", 5) || addr[0] == '/' || !strncmp(addr, "unix@", 5))
		return connect_addr_via(addr, NULL, out, outlen);
	if (!valid_word(addr) || !colon || !colon[1])
		return -1;
	if (colon == addr || !strncmp(addr, "*:", 2))
		n = snprintf(out, outlen, "ipv4@0.0.0.0%s", colon);
	else if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');

		if (!rb || rb[1] != ':')
			return -1;
		n = snprintf(out, outlen, "ipv6@%.*s%s", (int)(rb - addr - 1), addr + 1, rb + 1);
	} else if (strspn(addr, "0123456789.") == (size_t)(colon - addr))
		n = snprintf(out, outlen, "ipv4@%s", addr);
	else
		n = snprintf(out, outlen, "%s", addr);
	return n > 0 && (size_t)n < outlen ? 0 : -1;
}

/* ------------------------------------------------------------- spoe.conf */

static void render_spoe(FILE *f, const struct tg_config *cfg)
{
	const struct tg_haproxy_timeouts *t = &cfg->haproxy.timeouts;

	fprintf(f,
	        "# spoe.conf -- generated by `tollgate haproxy-config` from %s.\n"
	        "# Do not edit: render again. Names: doc/gateway.md.\n"
	        "[tollgate]\n"
	        "spoe-agent tollgate\n"
	        "    messages request\n"
	        "    groups response\n"
	        "    option var-prefix tg\n"
	        "    # agent down, late or frame too big: txn.tg.error is set and no\n"
	        "    # txn.tg.decision; haproxy.cfg turns that into the failure policy\n"
	        "    option set-on-error error\n"
	        "    option pipelining\n"
	        "    # HAProxy 3.1+ removed async, fragmentation and these timeouts\n"
	        ".if !version_atleast(3.1)\n"
	        "    no option async\n"
	        "    no option send-frag-payload\n"
	        "    # 2.6 formats a log line for every exchange, even with no log\n"
	        "    # server: only errors are logged\n"
	        "    option dontlog-normal\n"
	        "    timeout hello %lums\n"
	        "    timeout idle %lums\n"
	        "    register-var-names decision status body ctype retry_after reset consumer\n"
	        "    register-var-names backend pkey pkey_hdr path query body_new body_len stream\n"
	        "    register-var-names hide_usage rid ctx rl_limit rl_remaining rl_reset settled\n"
	        ".endif\n"
	        "    timeout processing %lums\n"
	        "    use-backend tollgate_agents\n"
	        "\n"
	        "# The request, body included (option http-buffer-request); a body over\n"
	        "# the buffer is answered 413 by haproxy.cfg and not sent.\n"
	        "spoe-message request\n"
	        "    args method=method path=path query=query hdrs=req.hdrs_bin body=req.body ip=src\n"
	        "    event on-frontend-http-request unless { req.hdr_val(content-length) gt \"${" ENV_MAX_BODY "}\" }\n"
	        "\n"
	        "# Non-SSE answers of admitted requests, after wait-for-body\n"
	        "# (http-response send-spoe-group tollgate response).\n"
	        "spoe-message response\n"
	        "    args rid=var(txn.tg.rid) ctx=var(txn.tg.ctx) status=status body=res.body tail=var(txn.tg.tail)\n"
	        "\n"
	        "spoe-group response\n"
	        "    messages response\n",
	        cfg->path ? cfg->path : "(memory)",
	        ms(t->spoe_hello), ms(t->spoe_idle), ms(t->spoe_processing));
}

/* ------------------------------------------------------------ haproxy.cfg */

/* The 413 answer, in OpenAI's error format, naming the limit and where it
 * comes from (the variables render_sizes() sets). */
static void put_too_large(FILE *f)
{
	fputc('"', f);
	put_escaped(f, "{\"error\":{\"message\":\"Request body too large: this gateway accepts "
	            "request bodies of at most ", false);
	fputs("${" ENV_MAX_BODY "} bytes (${" ENV_LIMIT "}).", f);
	put_escaped(f, "\",\"type\":\"invalid_request_error\",\"param\":null,"
	            "\"code\":\"request_too_large\"}}", false);
	fputc('"', f);
}

/* The body ceiling and the buffer, set once in the global section as
 * environment variables (`setenv` takes effect as HAProxy reads the line)
 * and read wherever a size is needed, spoe.conf included. haproxy.max_body
 * or bufsize given: those. The default: 4 MiB where large buffers are
 * cheap, CONFIG_MAX_BODY_SMALL on HAProxy 2.6 started without the glibc
 * setting (config.h, haproxy/README.md). */
static void put_sizes(FILE *f, unsigned long max_body, unsigned long bufsize, const char *limit)
{
	fprintf(f, "    setenv " ENV_MAX_BODY " %lu\n"
	           "    setenv " ENV_BUFSIZE " %lu\n"
	           "    setenv " ENV_LIMIT " \"%s\"\n", max_body, bufsize, limit);
}

static void render_sizes(FILE *f, const struct tg_haproxy_cfg *h)
{
	fprintf(f,
	        "    # request bodies are buffered whole for the agent: the buffer holds\n"
	        "    # haproxy.max_body and the headers; larger bodies get 413. The sizes\n"
	        "    # are set here and read below (and in spoe.conf) as ${" ENV_MAX_BODY "}\n");
	if (h->sized) {
		put_sizes(f, h->max_body, h->bufsize, "haproxy.max_body");
	} else {
		fprintf(f,
		        "    # The default, 4 MiB, where large buffers are cheap: 2.8+ (hot-size\n"
		        "    # below) and 2.6 started with the glibc setting of haproxy/README.md.\n"
		        "    # 2.6 without it maps each large buffer afresh (small requests ran\n"
		        "    # 3 to 4 times slower): a buffer under 128 KiB there\n"
		        ".if version_atleast(2.8) || streq(\"${GLIBC_TUNABLES}\",\"" GLIBC_TUNABLES_2_6 "\")\n");
		put_sizes(f, h->max_body, h->bufsize, "haproxy.max_body");
		fprintf(f, ".else\n");
		put_sizes(f, CONFIG_MAX_BODY_SMALL, CONFIG_MAX_BODY_SMALL + CONFIG_HEADER_ROOM,
		          "haproxy.max_body: HAProxy 2.6 takes 4194304 when started with "
		          "GLIBC_TUNABLES, see haproxy/README.md");
		fprintf(f, ".endif\n");
	}
	fprintf(f,
	        "    tune.bufsize \"${" ENV_BUFSIZE "}\"\n"
	        "    tune.maxrewrite 1024\n");
}
static const char *JSON_NO_VERDICT =
	"{\"error\":{\"message\":\"Token governance is unavailable, the request was not admitted\","
	"\"type\":\"server_error\",\"code\":\"gateway_unavailable\"}}";

static void render_global(FILE *f, const struct tg_config *cfg, const char *lua_path,
                          const char *settle_bind, bool fragment)
{
	const struct tg_haproxy_cfg *h = &cfg->haproxy;

	fprintf(f,
	        "# %s -- generated by `tollgate haproxy-config%s` from %s.\n"
	        "# Do not edit: render again. The names it shares with the agent and the\n"
	        "# Lua filter are in doc/gateway.md; haproxy/README.md explains each block.\n"
	        "# One file for HAProxy 2.6 and 3.x (.if blocks).\n",
	        fragment ? FRAGMENT_FILE : "haproxy.cfg", fragment ? " --fragment" : "",
	        cfg->path ? cfg->path : "(memory)");
	if (fragment)
		fprintf(f,
		        "# A fragment: load it after your own configuration, with one more -f\n"
		        "# (Debian: EXTRAOPTS=\"-f %s\" in /etc/default/haproxy). Its global\n"
		        "# lines merge with yours (tune.bufsize and stats timeout are set here);\n"
		        "# its defaults apply to its own proxies only. A frontend of yours sends\n"
		        "# its LLM paths with one line: use_backend tollgate_llm if { path_beg /v1/ }\n",
		        FRAGMENT_FILE);
	fprintf(f, "\nglobal\n");
	if (!fragment)
		fprintf(f, "    maxconn %u\n", h->maxconn);
	if (h->nbthread > 0 && !fragment)
		fprintf(f, "    nbthread %d\n", h->nbthread);
	render_sizes(f, h);
	if (h->bufsize > 65536)
		fprintf(f,
		        "    # buffers this large must stay in each thread's cache: past the\n"
		        "    # default 512 KiB, every stream would map and unmap fresh ones\n"
		        "    # (measured: small requests 3 to 5 times slower); %llu a thread,\n"
		        "    # as 3.1+ gives every SPOE exchange buffers of its own (fewer\n"
		        "    # cost 3.2 and 3.4 a fifth of their speed). Resident: only the\n"
		        "    # pages written. 2.6 has no such setting: GLIBC_TUNABLES, above\n"
		        "    # and in haproxy/README.md\n"
		        ".if version_atleast(2.8)\n"
		        "    tune.memory.hot-size %llu\n"
		        ".endif\n",
		        HOT_BUFFERS, HOT_BUFFERS * h->bufsize);
	fprintf(f,
	        ".if version_atleast(3.1)\n"
	        "    tune.lua.bool-sample-conversion normal\n"
	        ".endif\n"
	        "    # per thread: lua-load + threads + a Lua filter crashes 2.6.12\n"
	        "    lua-load-per-thread %s\n",
	        lua_path);
	if (h->stats_socket && !fragment)
		fprintf(f, "    stats socket %s mode 600 level admin\n", h->stats_socket);
	if (settle_bind)
		fprintf(f,
		        "    # the agent reads the settlement ring here (show events, operator\n"
		        "    # level); a worker's session must outlive its longest stream: an\n"
		        "    # old worker's records are read until it exits (2.6 and 2.8 close\n"
		        "    # idle CLI sessions after the stats timeout)\n"
		        "    stats socket %s%s level operator\n"
		        "    stats timeout 1h\n",
		        settle_bind, strncmp(settle_bind, "unix@", 5) ? "" : " mode 660");
	if (h->chroot && !fragment)       /* a fragment's HAProxy has its own */
		fprintf(f, "    chroot %s\n", h->chroot);
	if (h->user && !fragment)
		fprintf(f, "    user %s\n", h->user);
	if (h->group && !fragment)
		fprintf(f, "    group %s\n", h->group);
	fputc('\n', f);
}

/* The ring keeps each record until it is overwritten, whoever reads it: the
 * agent reads it over the CLI (agent/ring_reader.c explains why not a TCP
 * forwarder), and replays it whole at each connection. */
static void render_ring(FILE *f)
{
	fprintf(f,
	        "# Settlement records (doc/gateway.md): the agent reads this ring over\n"
	        "# the stats socket above and settles once per reservation id.\n"
	        "ring " RING_READER_RING "\n"
	        "    description \"Tollgate settlement records\"\n"
	        "    format raw\n"
	        "    maxlen 2048\n"
	        "    size 4194304\n"
	        "\n");
}

static void render_returns(FILE *f, const struct statuses *st)
{
	fprintf(f,
	        "    # 3. denials and admin answers: the agent's status and body. 2.6 needs a\n"
	        "    # literal status per rule: one per status the agent can produce.\n"
	        "    acl tg_answer var(txn.tg.decision) -m str deny admin\n"
	        "    acl tg_json var(txn.tg.ctype) -m str json\n"
	        "    acl tg_retry var(txn.tg.retry_after) -m found\n");
	for (size_t i = 0; i < st->n; i++) {
		int c = st->code[i];

		for (int json = 1; json >= 0; json--) {
			const char *ct = json ? "application/json" : "\"text/plain; charset=utf-8\"";
			const char *cond = json ? "tg_json" : "!tg_json";

			if (st->retry[i])
				fprintf(f,
				        "    http-request return status %d content-type %s lf-string \"%%[var(txn.tg.body)]\" "
				        "hdr Retry-After \"%%[var(txn.tg.retry_after)]\" "
				        "hdr X-TokenRateLimit-Reset \"%%[var(txn.tg.reset)]\" "
				        "if tg_answer %s tg_retry { var(txn.tg.status) -m int %d }\n",
				        c, ct, cond, c);
			fprintf(f,
			        "    http-request return status %d content-type %s lf-string \"%%[var(txn.tg.body)]\" "
			        "if tg_answer %s { var(txn.tg.status) -m int %d }\n",
			        c, ct, cond, c);
		}
	}
	fprintf(f,
	        "    # a status this file does not know: still the agent's body, never a pass\n"
	        "    http-request return status 500 content-type application/json lf-string \"%%[var(txn.tg.body)]\" if tg_answer\n");
}

static void render_frontend(FILE *f, const struct tg_config *cfg, const char *spoe_path,
                            const struct statuses *st, bool settle,
                            bool fragment)
{
	const struct tg_haproxy_cfg *h = &cfg->haproxy;
	const struct tg_key_auth_cfg *ka = &cfg->key_auth;

	fprintf(f,
	        "defaults\n"
	        "    mode http\n"
	        "    option dontlognull\n"
	        "    timeout connect %lums\n"
	        "    timeout client %lums\n"
	        "    timeout server %lums\n"
	        "    timeout http-request %lums\n"
	        "    timeout queue %lums\n"
	        "\n"
	        "frontend tollgate\n"
	        "    bind %s\n",
	        ms(h->timeouts.connect), ms(h->timeouts.client), ms(h->timeouts.server),
	        ms(h->timeouts.http_request), ms(h->timeouts.queue), h->listen);
	if (h->tls_listen && h->tls_cert)
		fprintf(f, "    bind %s ssl crt %s alpn h2,http/1.1\n", h->tls_listen, h->tls_cert);
	if (fragment)
		fprintf(f, "    # what your frontends hand over (backend tollgate_llm), client address kept\n"
		        "    bind " HANDOFF_ADDR " accept-proxy\n");
	fprintf(f,
	        "    # the agent needs the whole request body (SSE's http-no-delay is on\n"
	        "    # the prov_*_obs backends, where streams go: it costs every request)\n"
	        "    option http-buffer-request\n"
	        "    unique-id-format %%[uuid()]\n");
	if (settle)
		fprintf(f,
		        "    # one settlement record per transaction, at its very end (%%B makes\n"
		        "    # HAProxy wait for the end; without a late field it logs at once)\n"
		        "    no log\n"
		        "    log ring@tollgate_settle format raw local0 info\n"
		        "    log-format \"tg1 %%ID %%[var(txn.tg.rid)] %%[var(txn.tg.ctx)] %%ST %%ts "
		        "%%[var(txn.tg.u_in)] %%[var(txn.tg.u_out)] %%[var(txn.tg.seen_chars)] %%B\"\n");
	else
		fprintf(f, "    # agent.settle is disabled: no settlement records\n    no log\n");
	fprintf(f,
	        "    filter spoe engine tollgate config %s\n"
	        "    # (the Lua filter is on the prov_*_obs backends only)\n"
	        "\n"
	        "    # 1. bodies above haproxy.max_body (the buffer would cut them): 413\n"
	        "    http-request return status 413 content-type application/json string ",
	        spoe_path);
	put_too_large(f);
	fprintf(f, " if { req.hdr_val(content-length) gt \"${" ENV_MAX_BODY "}\" }\n");
	fprintf(f, "    http-request return status 413 content-type application/json string ");
	put_too_large(f);
	fprintf(f, " if !{ req.hdr(content-length) -m found } { req.body_len ge \"${" ENV_MAX_BODY "}\" }\n");

	fprintf(f, "\n    # 2. no verdict (agent down, late, frame error): the failure policy\n");
	if (h->on_agent_error == TG_FAIL_OPEN) {
		fprintf(f,
		        "    # on_agent_error: open -- the request passes unmetered to the default backend\n"
		        "    http-request set-var(txn.tollgate_unverified) bool(true) if !{ var(txn.tg.decision) -m found }\n");
	} else {
		fprintf(f, "    http-request return status %d content-type application/json string ",
		        h->failure_status);
		put_quoted(f, JSON_NO_VERDICT, false);
		fprintf(f, " if !{ var(txn.tg.decision) -m str allow deny admin }\n");
	}
	fputc('\n', f);
	render_returns(f, st);

	fprintf(f,
	        "\n    # 4. admitted: credentials never go upstream; a client's x-mse-consumer\n"
	        "    # is never trusted\n"
	        "    http-request del-header authorization\n"
	        "    http-request del-header x-mse-consumer\n");
	if (ka->in_header)
		for (size_t i = 0; i < ka->n_keys; i++)
			if (strcasecmp(ka->keys[i], "authorization") != 0)
				fprintf(f, "    http-request del-header %s\n", ka->keys[i]);
	if (ka->in_query && ka->n_keys) {
		fprintf(f,
		        "    # credentials in the query string: removed parameter by parameter\n"
		        "    http-request set-var(txn.tollgate_q) query,regsub(^,&) if { query -m found }\n");
		for (size_t i = 0; i < ka->n_keys; i++)
			fprintf(f,
			        "    http-request set-var(txn.tollgate_q) var(txn.tollgate_q),regsub(&%s=[^&]*,,g) "
			        "if { urlp(%s) -m found }\n",
			        ka->keys[i], ka->keys[i]);
		fprintf(f,
		        "    http-request set-query \"%%[var(txn.tollgate_q),regsub(^&,)]\" if { var(txn.tollgate_q) -m found }\n");
	}
	fprintf(f,
	        "    http-request set-header x-mse-consumer \"%%[var(txn.tg.consumer)]\" if { var(txn.tg.consumer) -m found }\n"
	        "    # the provider credential: Bearer, or api-key for Azure\n"
	        "    http-request set-header Authorization \"Bearer %%[var(txn.tg.pkey)]\" "
	        "if { var(txn.tg.pkey) -m found } { var(txn.tg.pkey_hdr) -m str authorization }\n"
	        "    http-request set-header api-key \"%%[var(txn.tg.pkey)]\" "
	        "if { var(txn.tg.pkey) -m found } { var(txn.tg.pkey_hdr) -m str api-key }\n"
	        "    # the full upstream path (the backend adds nothing), the query (Azure)\n"
	        "    http-request set-path \"%%[var(txn.tg.path)]\" if { var(txn.tg.path) -m found }\n"
	        "    http-request set-query \"%%[var(txn.tg.query)]\" if { var(txn.tg.query) -m found }\n"
	        "    # a rewritten body: its length now, the Lua filter swaps the bytes\n"
	        "    # (a chunked request is re-chunked by HAProxy and needs no length)\n"
	        "    http-request set-header content-length \"%%[var(txn.tg.body_len)]\" "
	        "if { var(txn.tg.body_len) -m found } { req.hdr(content-length) -m found }\n"
	        "    # metered answers must be readable: no compression from the provider\n"
	        "    http-request del-header accept-encoding if { var(txn.tg.rid) -m found }\n"
	        "    use_backend %%[var(txn.tg.backend)] if { var(txn.tg.backend) -m found }\n"
	        "\n"
	        "    # non-SSE answers of admitted requests go to the agent with their body,\n"
	        "    # when it is whole. A body larger than the buffer is not sent: these\n"
	        "    # rules run before the Lua filter sees the rest, so its usage reaches\n"
	        "    # the agent in the settlement record (u_in/u_out from the body's tail)\n"
	        "    acl tg_metered var(txn.tg.rid) -m found\n"
	        "    acl tg_sse res.hdr(content-type) -i -m sub text/event-stream\n"
	        "    http-response wait-for-body time %lums if tg_metered !tg_sse\n"
	        "    http-response set-var(txn.tollgate_blen) res.body_len if tg_metered !tg_sse\n"
	        "    acl tg_cut res.body_size,sub(txn.tollgate_blen) gt 0\n"
	        "    acl tg_full var(txn.tollgate_blen) -m int ge \"${" ENV_MAX_BODY "}\"\n"
	        "    http-response send-spoe-group tollgate response if tg_metered !tg_sse !tg_cut !tg_full\n"
	        "    # settled there (the store said so): the record would change nothing\n"
	        "    http-response set-log-level silent if { var(txn.tg.settled) -m int 1 }\n"
	        "    # not settled there (the agent away or restarting, a store error): the\n"
	        "    # record carries the body's usage, so the next agent settles it exactly\n"
	        "    acl tg_settled var(txn.tg.settled) -m int 1\n"
	        "    acl tg_u_in var(txn.tg.u_in) -m found\n"
	        "    acl tg_u_out var(txn.tg.u_out) -m found\n"
	        "    http-response set-var(txn.tg.u_in) res.body,json_query('$.usage.prompt_tokens','int') if tg_metered !tg_sse !tg_cut !tg_full !tg_settled\n"
	        "    http-response set-var(txn.tg.u_in) res.body,json_query('$.usage.input_tokens','int') if tg_metered !tg_sse !tg_cut !tg_full !tg_settled !tg_u_in\n"
	        "    http-response set-var(txn.tg.u_out) res.body,json_query('$.usage.completion_tokens','int') if tg_metered !tg_sse !tg_cut !tg_full !tg_settled\n"
	        "    http-response set-var(txn.tg.u_out) res.body,json_query('$.usage.output_tokens','int') if tg_metered !tg_sse !tg_cut !tg_full !tg_settled !tg_u_out\n"
	        "    # the tightest rate-limit rule, on every admitted answer. After\n"
	        "    # wait-for-body: 3.4 defragments a rewritten message there,\n"
	        "    # copying the whole buffer (4 MiB; measured: 2.2k instead of 10k\n"
	        "    # requests/s, each answer's buffer paged in whole)\n"
	        "    http-response set-header x-ratelimit-limit-tokens \"%%[var(txn.tg.rl_limit)]\" if { var(txn.tg.rl_limit) -m found }\n"
	        "    http-response set-header x-ratelimit-remaining-tokens \"%%[var(txn.tg.rl_remaining)]\" if { var(txn.tg.rl_remaining) -m found }\n"
	        "    http-response set-header x-ratelimit-reset-tokens \"%%[var(txn.tg.rl_reset)]\" if { var(txn.tg.rl_reset) -m found }\n"
	        , ms(h->timeouts.server));
	if (h->on_agent_error == TG_FAIL_OPEN && cfg->n_providers)
		fprintf(f, "    default_backend prov_%s_obs\n", cfg->providers[0].name);   /* http-no-delay for streams */
	fputc('\n', f);
}

static int render_backends(FILE *f, const struct tg_config *cfg, const char *agent_addr,
                           char *err, size_t errlen)
{
	const struct tg_haproxy_cfg *h = &cfg->haproxy;
	bool need_dns = false;

	for (size_t i = 0; i < cfg->n_providers; i++) {
		const struct tg_provider *p = &cfg->providers[i];

		if (p->type != TG_PROV_MOCK && !is_ip_literal(p->host))
			need_dns = true;
	}
	if (need_dns)
		fprintf(f,
		        "# provider host names: resolved at start by libc (/etc/hosts, DNS), then\n"
		        "# kept fresh here; a name that does not resolve at start only disables\n"
		        "# its server (a warning) until these resolvers find it\n"
		        "resolvers tollgate_dns\n"
		        "    parse-resolv-conf\n"
		        "    hold valid 60s\n"
		        "    accepted_payload_size 8192\n"
		        "\n");

	/* Two backends per provider: prov_NAME for answers the agent gets whole
	 * over SPOP, prov_NAME_obs with the Lua filter for streams, rewritten
	 * bodies and answers that may outgrow the buffer. A Lua filter costs
	 * every stream it is attached to; the agent picks (doc/gateway.md). */
	for (size_t i = 0; i < cfg->n_providers; i++)
	for (int obs = 0; obs < 2; obs++) {
		const struct tg_provider *p = &cfg->providers[i];

		fprintf(f, "# provider %s (%s)%s%s%s\n", p->name,
		        p->type == TG_PROV_MOCK ? "mock" : p->scheme,
		        p->type == TG_PROV_MOCK ? ": the agent's /mock responder" : ": ",
		        p->type == TG_PROV_MOCK ? "" : p->base_url,
		        obs ? ", observed by the Lua filter" : "");
		fprintf(f, "backend prov_%s%s\n", p->name, obs ? "_obs" : "");
		if (obs)
			fprintf(f, "    filter lua.tollgate \"${" ENV_MAX_BODY "}\"\n"
			           "    option http-no-delay\n");
		if (p->timeout > 0)
			fprintf(f, "    timeout server %lums\n", ms(p->timeout));
		if (p->type == TG_PROV_MOCK) {
			char addr[512];

			char hostbuf[256];

			if (!cfg->agent.http ||
			    connect_addr_via(cfg->agent.http, agent_host(cfg, hostbuf, sizeof(hostbuf)),
			                     addr, sizeof(addr)) != 0 ||
			    !strncmp(addr, "unix@", 5)) {
				fail(err, errlen, "providers[%zu] (%s): a mock provider needs agent.http "
				     "(a TCP address)", i, p->name);
				return -1;
			}
			fprintf(f, "    server mock %s\n\n", addr);
			continue;
		}
		bool tls = strcmp(p->scheme, "https") == 0;
		bool dflt_port = (tls && p->port == 443) || (!tls && p->port == 80);
		bool v6 = strchr(p->host, ':') != NULL;

		if (dflt_port)
			fprintf(f, "    http-request set-header Host %s%s%s\n",
			        v6 ? "[" : "", p->host, v6 ? "]" : "");
		else
			fprintf(f, "    http-request set-header Host %s%s%s:%u\n",
			        v6 ? "[" : "", p->host, v6 ? "]" : "", p->port);
		fprintf(f, "    server %s %s:%u", p->name, p->host, p->port);
		if (tls)
			fprintf(f, " ssl verify required ca-file @system-ca%s%s%s",
			        is_ip_literal(p->host) ? "" : " sni str(",
			        is_ip_literal(p->host) ? "" : p->host,
			        is_ip_literal(p->host) ? "" : ")");
		if (!is_ip_literal(p->host))
			fprintf(f, " resolvers tollgate_dns init-addr libc,none");
		fprintf(f, "\n\n");
	}

	fprintf(f,
	        "# the Tollgate agent (SPOP)\n"
	        "backend tollgate_agents\n"
	        ".if version_atleast(3.1)\n"
	        "    mode spop\n"
	        ".else\n"
	        "    mode tcp\n"
	        ".endif\n"
	        "    balance roundrobin\n"
	        "    timeout connect %lums\n"
	        "    timeout server %lums\n"
	        "    option spop-check\n"
	        "    # a restarting agent is back within a check: down after two failed\n"
	        "    # checks, up after one good one, retried every 250 ms while down\n"
	        "    server agent %s check inter 2s downinter 250ms fall 2 rise 1\n",
	        ms(h->timeouts.connect < 1 ? h->timeouts.connect : 1.0),
	        ms(h->timeouts.spoe_idle > 180 ? h->timeouts.spoe_idle : 180), agent_addr);
	return 0;
}

static int validate(const struct tg_config *cfg, char *err, size_t errlen)
{
	const struct tg_haproxy_cfg *h = &cfg->haproxy;

	if (!valid_word(h->listen)) {
		fail(err, errlen, "haproxy.listen: not usable as an HAProxy bind address: \"%s\"",
		     h->listen ? h->listen : "");
		return -1;
	}
	if (h->tls_listen && (!valid_word(h->tls_listen) || !h->tls_cert || !valid_word(h->tls_cert))) {
		fail(err, errlen, "haproxy.tls_listen: needs a usable address and tls_cert");
		return -1;
	}
	if (h->stats_socket && !valid_word(h->stats_socket)) {
		fail(err, errlen, "haproxy.stats_socket: not a usable path");
		return -1;
	}
	if (h->bufsize < 16384) {
		fail(err, errlen, "haproxy.bufsize: at least 16384");
		return -1;
	}
	if (h->failure_status < 200 || h->failure_status > 599) {
		fail(err, errlen, "haproxy.failure_status: %d is not an HTTP status", h->failure_status);
		return -1;
	}
	for (size_t i = 0; i < cfg->n_providers; i++) {
		const struct tg_provider *p = &cfg->providers[i];

		if (!valid_name(p->name)) {
			fail(err, errlen, "providers[%zu].name: \"%s\" cannot name an HAProxy backend "
			     "(letters, digits, '_', '-', '.', ':')", i, p->name);
			return -1;
		}
		if (p->type == TG_PROV_MOCK)
			continue;
		if (!p->scheme || (strcmp(p->scheme, "https") && strcmp(p->scheme, "http"))) {
			fail(err, errlen, "providers[%zu].base_url: http or https expected", i);
			return -1;
		}
		if (!valid_host(p->host) || p->port == 0) {
			fail(err, errlen, "providers[%zu].base_url: host \"%s\" is not usable", i,
			     p->host ? p->host : "");
			return -1;
		}
	}
	for (size_t i = 0; i < cfg->key_auth.n_keys; i++) {
		if (!valid_token(cfg->key_auth.keys[i])) {
			fail(err, errlen, "key_auth.keys[%zu]: \"%s\" is not a usable header/parameter name",
			     i, cfg->key_auth.keys[i]);
			return -1;
		}
	}
	return 0;
}

/* ------------------------------------------------------------- files */

static int mkdirs(const char *dir)
{
	char tmp[PATH_MAX];
	size_t n = strlen(dir);

	if (n == 0 || n >= sizeof(tmp))
		return -1;
	memcpy(tmp, dir, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
		return -1;
	return 0;
}

static int write_file(const char *dir, const char *name, const char *data, size_t len,
                      char *err, size_t errlen)
{
	char path[PATH_MAX], tmp[PATH_MAX + 16];
	FILE *f;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
	    snprintf(tmp, sizeof(tmp), "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof(tmp)) {
		fail(err, errlen, "%s/%s: path too long", dir, name);
		return -1;
	}
	f = fopen(tmp, "w");
	if (!f) {
		fail(err, errlen, "%s: %s", tmp, strerror(errno));
		return -1;
	}
	if (fwrite(data, 1, len, f) != len || fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fail(err, errlen, "%s: %s", tmp, strerror(errno));
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		fail(err, errlen, "%s: %s", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

int render_haproxy(const struct tg_config *cfg, const char *outdir, bool fragment, char *err,
                   size_t errlen)
{
	char dir[PATH_MAX], lua_path[PATH_MAX + 32], spoe_path[PATH_MAX + 32];
	char agent_addr[512], settle_bind[512];
	char *cfgtxt = NULL, *spoetxt = NULL;
	size_t cfglen = 0, spoelen = 0, lualen;
	const char *lua = render_lua_source(&lualen);
	struct statuses st = { .n = 0 };
	const char *agent_src;
	bool settle = false;
	FILE *f;
	int rc = -1;

	if (!cfg || !outdir || !*outdir) {
		fail(err, errlen, "haproxy-config: no output directory");
		return -1;
	}
	if (validate(cfg, err, errlen) != 0)
		return -1;

	/* how HAProxy reaches the agent */
	agent_src = cfg->haproxy.spoe_backend_addr ? cfg->haproxy.spoe_backend_addr
	            : cfg->agent.listen ? cfg->agent.listen : cfg->agent.unix_path;
	if (!agent_src || connect_addr(agent_src, agent_addr, sizeof(agent_addr)) != 0) {
		fail(err, errlen, "agent.listen: HAProxy needs an address to reach the agent (\"%s\")",
		     agent_src ? agent_src : "");
		return -1;
	}
	if (cfg->agent.settle) {
		const char *b = cfg->haproxy.settle_bind ? cfg->haproxy.settle_bind : cfg->agent.settle;

		if (cli_bind_addr(b, settle_bind, sizeof(settle_bind)) != 0) {
			fail(err, errlen, "%s: not usable as HAProxy's stats socket (\"%s\")",
			     cfg->haproxy.settle_bind ? "haproxy.settle_bind" : "agent.settle", b);
			return -1;
		}
		settle = true;
	}

	for (size_t i = 0; i < sizeof(base_statuses) / sizeof(*base_statuses); i++)
		status_add(&st, base_statuses[i], base_statuses[i] == 429);
	for (size_t i = 0; i < cfg->n_routes; i++)
		if (cfg->routes[i].ratelimit)
			status_add(&st, cfg->routes[i].ratelimit->rejected_code, true);

	if (mkdirs(outdir) != 0) {
		fail(err, errlen, "%s: %s", outdir, strerror(errno));
		return -1;
	}
	if (!realpath(outdir, dir)) {
		fail(err, errlen, "%s: %s", outdir, strerror(errno));
		return -1;
	}
	if (!valid_word(dir)) {
		fail(err, errlen, "%s: HAProxy cannot load files from this path (spaces or quotes)", dir);
		return -1;
	}
	snprintf(lua_path, sizeof(lua_path), "%s/tollgate.lua", dir);
	snprintf(spoe_path, sizeof(spoe_path), "%s/spoe.conf", dir);

	f = open_memstream(&spoetxt, &spoelen);
	if (!f)
		goto oom;
	render_spoe(f, cfg);
	if (fclose(f) != 0)
		goto oom;

	f = open_memstream(&cfgtxt, &cfglen);
	if (!f)
		goto oom;
	render_global(f, cfg, lua_path, settle ? settle_bind : NULL, fragment);
	if (settle)
		render_ring(f);
	render_frontend(f, cfg, spoe_path, &st, settle, fragment);
	if (fragment)
		fprintf(f,
		        "# The one line a frontend of yours needs for its LLM paths:\n"
		        "#     use_backend tollgate_llm if { path_beg /v1/ }\n"
		        "backend tollgate_llm\n"
		        "    server gateway " HANDOFF_ADDR " send-proxy-v2\n\n");
	if (render_backends(f, cfg, agent_addr, err, errlen) != 0) {
		fclose(f);
		goto out;
	}
	if (fclose(f) != 0)
		goto oom;

	if (write_file(dir, "tollgate.lua", lua, lualen, err, errlen) != 0 ||
	    write_file(dir, "spoe.conf", spoetxt, spoelen, err, errlen) != 0 ||
	    write_file(dir, fragment ? FRAGMENT_FILE : "haproxy.cfg", cfgtxt, cfglen, err,
	               errlen) != 0)
		goto out;
	rc = 0;
	goto out;
oom:
	fail(err, errlen, "haproxy-config: out of memory");
out:
	free(cfgtxt);
	free(spoetxt);
	return rc;
}
