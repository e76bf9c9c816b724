/* config.c -- load, type, default and validate the tollgate configuration.
 * See config.h for the rules of the file and config-t.h for the result.
 *
 * Every section parser first refuses unknown keys (so a misspelt key is
 * reported as such, not as a missing one), then reads its fields with the
 * typed getters below. Any error formats "path: message" and longjmps back to
 * config_load_string(), which frees everything (two arenas + the compiled
 * regular expressions + the YAML parser).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "hex.h"
#include "config_yaml.h"

#define MAX_FILE_SIZE (16u << 20)
#define UNIX_PATH_MAX 107

struct relist {
	regex_t *re;
	struct relist *next;
};

struct cfg_priv {
	struct cy_arena arena;
	struct relist *res;
};

struct loader {
	struct cy_ctx *cx;
	struct cfg_priv *priv;
	struct tg_config *cfg;
	const char *route_path;   /* path of the route being parsed */
};

#define AR(L) (&(L)->priv->arena)

/* ------------------------------------------------------------- failures */

static _Noreturn void vfailp(struct loader *L, const char *path, const char *fmt, va_list ap)
{
	char msg[768];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	cy_fail(L->cx, path, "%s", msg);
}

__attribute__((format(printf, 3, 4)))
static _Noreturn void failp(struct loader *L, const char *path, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfailp(L, path, fmt, ap);
}

__attribute__((format(printf, 3, 4)))
static _Noreturn void failn(struct loader *L, const struct cy_node *n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfailp(L, n->path, fmt, ap);
}

static const char *kpath(struct loader *L, const char *parent, const char *key)
{
	return parent && *parent ? cy_printf(&L->cx->tree, "%s.%s", parent, key) : key;
}

/* The path of map.key (map may be NULL: a section written nowhere). */
static const char *mpath(struct loader *L, const struct cy_node *map, const char *dflt_parent,
                         const char *key)
{
	return kpath(L, map ? map->path : dflt_parent, key);
}

/* ------------------------------------------------------------- map keys */

static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t c = prev[j - 1] + (a[i - 1] != b[j - 1]);

			if (prev[j] + 1 < c)
				c = prev[j] + 1;
			if (cur[j - 1] + 1 < c)
				c = cur[j - 1] + 1;
			cur[j] = c;
		}
		memcpy(prev, cur, (lb + 1) * sizeof(prev[0]));
	}
	return prev[lb];
}

static void need_map(struct loader *L, const struct cy_node *n)
{
	if (n->type != CY_MAP)
		failn(L, n, "expected a mapping, got %s", cy_type_name(n));
}

static void need_seq(struct loader *L, const struct cy_node *n)
{
	if (n->type != CY_SEQ)
		failn(L, n, "expected a list, got %s", cy_type_name(n));
}

/* map must be a mapping whose keys are all in allowed (NULL-terminated).
 * A NULL map (section absent) passes. */
static void allow_keys(struct loader *L, const struct cy_node *map, const char *const *allowed)
{
	if (!map)
		return;
	need_map(L, map);
	for (size_t i = 0; i < map->n; i++) {
		const char *k = map->keys[i], *best = NULL;
		size_t bestd = 3;
		bool ok = false;

		for (const char *const *a = allowed; *a; a++) {
			if (strcmp(*a, k) == 0) {
				ok = true;
				break;
			}
			size_t d = edit_distance(*a, k);

			if (d < bestd) {
				bestd = d;
				best = *a;
			}
		}
		if (!ok) {
			if (best)
				failn(L, map->kids[i], "unknown key (did you mean %s?)", best);
			failn(L, map->kids[i], "unknown key");
		}
	}
}

/* The value at map.key, or NULL when absent or written as null. */
static const struct cy_node *get(const struct cy_node *map, const char *key)
{
	if (!map || map->type != CY_MAP)
		return NULL;
	for (size_t i = 0; i < map->n; i++)
		if (strcmp(map->keys[i], key) == 0)
			return map->kids[i]->type == CY_SCALAR && map->kids[i]->null ? NULL
			                                                            : map->kids[i];
	return NULL;
}

static const struct cy_node *need(struct loader *L, const struct cy_node *map, const char *parent,
                                  const char *key)
{
	const struct cy_node *n = get(map, key);

	if (!n)
		failp(L, mpath(L, map, parent, key), "missing (required)");
	return n;
}

/* ------------------------------------------------------------- scalars */

static const char *scalar(struct loader *L, const struct cy_node *n, const char *what)
{
	if (n->type != CY_SCALAR)
		failn(L, n, "expected %s, got %s", what, cy_type_name(n));
	if (strlen(n->str) != n->len)
		failn(L, n, "contains a NUL character");
	return n->str;
}

static char *s_str(struct loader *L, const struct cy_node *n)
{
	return cy_strdup(AR(L), scalar(L, n, "a string"));
}

/* map.key as a string; dflt (copied; may be NULL) when absent. */
static char *opt_str(struct loader *L, const struct cy_node *map, const char *key, const char *dflt)
{
	const struct cy_node *n = get(map, key);

	return n ? s_str(L, n) : cy_strdup(AR(L), dflt);
}

/* Like opt_str, but "" (e.g. an unset ${VAR}) is also "absent". */
static char *opt_str_ne(struct loader *L, const struct cy_node *map, const char *key,
                        const char *dflt)
{
	const struct cy_node *n = get(map, key);

	if (n && *scalar(L, n, "a string"))
		return s_str(L, n);
	return cy_strdup(AR(L), dflt);
}

static char *req_str(struct loader *L, const struct cy_node *map, const char *parent,
                     const char *key)
{
	const struct cy_node *n = need(L, map, parent, key);
	char *s = s_str(L, n);

	if (!*s)
		failn(L, n, "must not be empty");
	return s;
}

static bool has_ctl(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

static bool s_bool(struct loader *L, const struct cy_node *n)
{
	const char *s = scalar(L, n, "a boolean");
	static const char *const t[] = { "true", "yes", "on", "1", NULL };
	static const char *const f[] = { "false", "no", "off", "0", NULL };

	for (int i = 0; t[i]; i++)
		if (strcasecmp(s, t[i]) == 0)
			return true;
	for (int i = 0; f[i]; i++)
		if (strcasecmp(s, f[i]) == 0)
			return false;
	failn(L, n, "expected a boolean (true or false), got \"%.40s\"", s);
}

static bool opt_bool(struct loader *L, const struct cy_node *map, const char *key, bool dflt)
{
	const struct cy_node *n = get(map, key);

	return n ? s_bool(L, n) : dflt;
}

static int64_t s_int(struct loader *L, const struct cy_node *n, int64_t min, int64_t max)
{
	const char *s = scalar(L, n, "an integer"), *p = s;
	bool neg = false;
	uint64_t v = 0;

	if (*p == '+' || *p == '-')
		neg = *p++ == '-';
	if (!*p)
		failn(L, n, "expected an integer, got \"%.40s\"", s);
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			failn(L, n, "expected an integer, got \"%.40s\"", s);
		if (v > (UINT64_MAX - 9) / 10 || v * 10 + (uint64_t)(*p - '0') > (uint64_t)INT64_MAX)
			failn(L, n, "integer out of range");
		v = v * 10 + (uint64_t)(*p - '0');
	}
	int64_t r = neg ? -(int64_t)v : (int64_t)v;

	if (r < min || r > max) {
		if (max == INT64_MAX && min == 1)
			failn(L, n, "must be > 0");
		if (max == INT64_MAX)
			failn(L, n, "must be >= %lld", (long long)min);
		failn(L, n, "must be between %lld and %lld", (long long)min, (long long)max);
	}
	return r;
}

static int64_t opt_int(struct loader *L, const struct cy_node *map, const char *key,
                       int64_t dflt, int64_t min, int64_t max)
{
	const struct cy_node *n = get(map, key);

	return n ? s_int(L, n, min, max) : dflt;
}

static double s_double(struct loader *L, const struct cy_node *n, double min, double max)
{
	const char *s = scalar(L, n, "a number");
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (!*s || *end || errno || !isfinite(v))
		failn(L, n, "expected a number, got \"%.40s\"", s);
	if (v < min || v > max)
		failn(L, n, "must be between %g and %g", min, max);
	return v;
}

/* A duration in seconds: a number (bare_unit: 1 = seconds, 0.001 = ms) or a
 * number with a unit ms|s|m|h. */
static double s_duration(struct loader *L, const struct cy_node *n, double bare_unit)
{
	const char *s = scalar(L, n, "a duration"), *p = s;
	char *end;
	double v, unit = bare_unit;

	while (*p == ' ')
		p++;
	if (!(*p >= '0' && *p <= '9') && *p != '.')
		goto bad;
	errno = 0;
	v = strtod(p, &end);
	if (errno || !isfinite(v) || end == p)
		goto bad;
	while (*end == ' ')
		end++;
	if (*end) {
		if (strcmp(end, "ms") == 0)
			unit = 0.001;
		else if (strcmp(end, "s") == 0)
			unit = 1;
		else if (strcmp(end, "m") == 0)
			unit = 60;
		else if (strcmp(end, "h") == 0)
			unit = 3600;
		else if (strcmp(end, "d") == 0)
			unit = 86400;
		else if (strcmp(end, "us") == 0)
			unit = 1e-6;
		else
			goto bad;
	}
	return v * unit;
bad:
	failn(L, n, "expected a duration (a number of %s, or with a unit: 500ms, 30s, 2m, 1h), "
	      "got \"%.40s\"", bare_unit < 1 ? "milliseconds" : "seconds", s);
}

/* A duration in seconds within [min, max] seconds. */
static double opt_secs(struct loader *L, const struct cy_node *map, const char *key,
                       double dflt, double min, double max)
{
	const struct cy_node *n = get(map, key);
	double v;

	if (!n)
		return dflt;
	v = s_duration(L, n, 1);
	if (min > 0 && v <= 0)
		failn(L, n, "must be > 0");
	if (v < min || v > max)
		failn(L, n, "must be between %gs and %gs", min, max);
	return v;
}

/* A duration in milliseconds (bare numbers are milliseconds when bare_ms). */
static uint32_t opt_ms(struct loader *L, const struct cy_node *map, const char *key,
                       uint32_t dflt, uint32_t min, uint32_t max, bool bare_ms)
{
	const struct cy_node *n = get(map, key);
	double v;

	if (!n)
		return dflt;
	v = s_duration(L, n, bare_ms ? 0.001 : 1) * 1000.0;
	v = floor(v + 0.5);
	if (v < min || v > max)
		failn(L, n, "must be between %ums and %ums", min, max);
	return (uint32_t)v;
}

/* Index of the scalar in names (NULL-terminated). */
static int s_enum(struct loader *L, const struct cy_node *n, const char *const *names)
{
	const char *s = scalar(L, n, "a string");
	char list[256] = "";

	for (int i = 0; names[i]; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	for (int i = 0; names[i]; i++) {
		size_t l = strlen(list);

		snprintf(list + l, sizeof(list) - l, "%s%s", i ? ", " : "", names[i]);
	}
	failn(L, n, "must be one of %s (got \"%.40s\")", list, s);
}

static int opt_enum(struct loader *L, const struct cy_node *map, const char *key,
                    const char *const *names, int dflt)
{
	const struct cy_node *n = get(map, key);

	return n ? s_enum(L, n, names) : dflt;
}

enum { SL_NONEMPTY = 1, SL_DROP_EMPTY = 2, SL_SECRET = 4 };

/* A list of strings. */
static void str_list(struct loader *L, const struct cy_node *n, char ***out, size_t *cnt, int flags)
{
	size_t k = 0;

	need_seq(L, n);
	*out = cy_alloc(AR(L), (n->n + 1) * sizeof(char *));
	for (size_t i = 0; i < n->n; i++) {
		const struct cy_node *it = n->kids[i];
		const char *s;

		if (it->type == CY_SCALAR && it->null)
			s = "";
		else
			s = scalar(L, it, "a string");
		if (!*s) {
			if (flags & SL_DROP_EMPTY)
				continue;
			if (flags & SL_NONEMPTY)
				failn(L, it, "must not be empty");
		}
		if (has_ctl(s))
			failn(L, it, "contains control characters");
		(*out)[k++] = cy_strdup(AR(L), s);
	}
	*cnt = k;
}

/* --------------------------------------------------------------- names */

static void check_ident(struct loader *L, const struct cy_node *n, const char *s, const char *extra)
{
	if (!*s)
		failn(L, n, "must not be empty");
	if (strlen(s) > 128)
		failn(L, n, "longer than 128 characters");
	for (const char *p = s; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.' &&
		    !(extra && strchr(extra, *p)))
			failn(L, n, "\"%.40s\": only letters, digits and - _ .%s are allowed", s,
			      extra ? extra : "");
}

static char *req_ident(struct loader *L, const struct cy_node *map, const char *parent,
                       const char *key, const char *extra)
{
	const struct cy_node *n = need(L, map, parent, key);
	char *s = s_str(L, n);

	check_ident(L, n, s, extra);
	return s;
}

/* A header / parameter / cookie name: visible ASCII, no separators. */
static void check_token(struct loader *L, const struct cy_node *n, const char *s)
{
	if (!*s)
		failn(L, n, "must not be empty");
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", *p))
			failn(L, n, "\"%.40s\" is not a valid header/parameter name", s);
}

/* ------------------------------------------------------------ addresses */

static bool valid_hostname(const char *h)
{
	if (!*h || strlen(h) > 253)
		return false;
	for (const char *p = h; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
			return false;
	return true;
}

static bool parse_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;

	if (!*s || strlen(s) > 5)
		return false;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v < 1 || v > 65535)
		return false;
	*port = (uint16_t)v;
	return true;
}

enum { HP_LISTEN = 1, HP_PORT_OPTIONAL = 2 };

/* "host:port", "[v6]:port"; HP_LISTEN also allows ":port" and "*:port".
 * host is returned without brackets. */
static void parse_hostport(struct loader *L, const struct cy_node *n, const char *s, int flags,
                           uint16_t dflt_port, char **host, uint16_t *port)
{
	const char *colon, *hs = s, *he;
	char *h;

	if (*s == '[') {
		const char *rb = strchr(s, ']');
		char tmp[64];
		struct in6_addr a6;

		if (!rb || (size_t)(rb - s - 1) >= sizeof(tmp))
			failn(L, n, "\"%.60s\": bad IPv6 address (expected [ADDR]:PORT)", s);
		memcpy(tmp, s + 1, (size_t)(rb - s - 1));
		tmp[rb - s - 1] = 0;
		if (inet_pton(AF_INET6, tmp, &a6) != 1)
			failn(L, n, "\"%.60s\": bad IPv6 address", s);
		hs = s + 1;
		he = rb;
		colon = rb[1] == ':' ? rb + 1 : NULL;
		if (rb[1] && !colon)
			failn(L, n, "\"%.60s\": expected HOST:PORT", s);
	} else {
		colon = strrchr(s, ':');
		he = colon ? colon : s + strlen(s);
		if (colon && memchr(s, ':', (size_t)(colon - s)))
			failn(L, n, "\"%.60s\": IPv6 addresses need brackets, e.g. [::1]:%s", s,
			      colon + 1);
	}
	if (!colon) {
		if (!(flags & HP_PORT_OPTIONAL))
			failn(L, n, "\"%.60s\": expected HOST:PORT", s);
		*port = dflt_port;
	} else if (!parse_port(colon + 1, port)) {
		failn(L, n, "\"%.60s\": bad port (1..65535)", s);
	}
	h = cy_strndup(AR(L), hs, (size_t)(he - hs));
	if (*s != '[') {
		if (!*h || strcmp(h, "*") == 0) {
			if (!(flags & HP_LISTEN))
				failn(L, n, "\"%.60s\": missing host", s);
		} else if (!valid_hostname(h)) {
			failn(L, n, "\"%.60s\": bad host name", s);
		}
	}
	if (host)
		*host = h;
}

/* An agent listener: "host:port", "unix:PATH" or "/PATH". */
static void check_listener(struct loader *L, const struct cy_node *n, const char *s)
{
	const char *path = NULL;

	if (strncmp(s, "unix:", 5) == 0)
		path = s + 5;
	else if (*s == '/')
		path = s;
	if (path) {
		if (!*path)
			failn(L, n, "empty unix socket path");
		if (strlen(path) > UNIX_PATH_MAX)
			failn(L, n, "unix socket path longer than %d bytes", UNIX_PATH_MAX);
		return;
	}
	parse_hostport(L, n, s, HP_LISTEN, 0, NULL, &(uint16_t){ 0 });
}

/* ---------------------------------------------------------------- agent */

static char *listener(struct loader *L, const struct cy_node *map, const char *key,
                      const char *dflt)
{
	const struct cy_node *n = get(map, key);
	char *s;

	if (!n)
		return cy_strdup(AR(L), dflt);
	s = s_str(L, n);
	if (!*s)
		return NULL;
	check_listener(L, n, s);
	return s;
}

static void parse_agent(struct loader *L, const struct cy_node *m)
{
	static const char *const keys[] = {
		"listen", "unix", "http", "settle", "state_dir", "max_frame_size", "max_inflight",
		"idle_timeout", "hello_timeout", "processing_timeout", "drain_timeout", "threads",
		"debug_messages", "log_level", NULL };
	static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
	struct tg_agent_cfg *a = &L->cfg->agent;
	const struct cy_node *n;

	allow_keys(L, m, keys);
	a->listen = listener(L, m, "listen", "127.0.0.1:12345");
	a->unix_path = NULL;
	if ((n = get(m, "unix"))) {
		a->unix_path = s_str(L, n);
		if (!*a->unix_path)
			a->unix_path = NULL;
		else if (strlen(a->unix_path) > UNIX_PATH_MAX)
			failn(L, n, "unix socket path longer than %d bytes", UNIX_PATH_MAX);
	}
	if (!a->listen && !a->unix_path)
		failp(L, "agent.listen", "agent.listen and agent.unix are both empty: SPOP needs one");
	a->http = listener(L, m, "http", "127.0.0.1:8001");
	a->settle = listener(L, m, "settle", "127.0.0.1:12346");
	a->state_dir = opt_str(L, m, "state_dir", "/var/lib/tollgate");
	if (!*a->state_dir)
		failp(L, mpath(L, m, "agent", "state_dir"), "must not be empty");
	/* default: haproxy.bufsize (parse_haproxy), HAProxy's own frame size */
	a->max_frame_size = (uint32_t)opt_int(L, m, "max_frame_size", 0, 256, 16777216);
	a->max_inflight = (uint32_t)opt_int(L, m, "max_inflight", 1024, 1, 1 << 20);
	a->idle_timeout = opt_secs(L, m, "idle_timeout", 30, 0.001, 86400);
	a->hello_timeout = opt_secs(L, m, "hello_timeout", 5, 0.001, 3600);
	a->processing_timeout = opt_secs(L, m, "processing_timeout", 1, 0.001, 3600);
	a->drain_timeout = opt_secs(L, m, "drain_timeout", 10, 0, 3600);
	a->threads = (int)opt_int(L, m, "threads", 1, 1, 64);
	a->debug_messages = opt_bool(L, m, "debug_messages", false);
	a->log_level = cy_strdup(AR(L), levels[opt_enum(L, m, "log_level", levels, 2)]);
}

/* -------------------------------------------------------------- haproxy */

static void parse_haproxy(struct loader *L, const struct cy_node *m)
{
	static const char *const keys[] = {
		"listen", "tls_listen", "tls_cert", "bufsize", "max_body", "maxconn", "nbthread",
		"failure_status", "on_agent_error", "stats_socket", "agent_address", "timeouts",
		"settle_bind", "user", "group", "chroot", NULL };
	static const char *const tkeys[] = {
		"connect", "client", "server", "http_request", "queue", "spoe_processing",
		"spoe_hello", "spoe_idle", NULL };
	static const char *const onerr[] = { "closed", "open", NULL };
	struct tg_haproxy_cfg *h = &L->cfg->haproxy;
	const struct cy_node *n, *t;

	allow_keys(L, m, keys);
	h->listen = opt_str(L, m, "listen", ":8080");
	n = get(m, "listen");
	if (!*h->listen)
		failp(L, mpath(L, m, "haproxy", "listen"), "must not be empty");
	parse_hostport(L, n, h->listen, HP_LISTEN, 0, NULL, &(uint16_t){ 0 });
	h->tls_listen = opt_str_ne(L, m, "tls_listen", NULL);
	h->tls_cert = opt_str_ne(L, m, "tls_cert", NULL);
	if (h->tls_listen) {
		parse_hostport(L, get(m, "tls_listen"), h->tls_listen, HP_LISTEN, 0, NULL,
		               &(uint16_t){ 0 });
		if (!h->tls_cert)
			failp(L, mpath(L, m, "haproxy", "tls_cert"), "required with tls_listen");
	} else if (h->tls_cert) {
		failn(L, get(m, "tls_cert"), "needs haproxy.tls_listen");
	}
	/* The request is buffered whole and sent in one SPOP frame: the buffer
	 * holds the body, the headers (CONFIG_HEADER_ROOM) and HAProxy's
	 * rewrite reserve. Either size follows from the other. */
	h->max_body = (uint32_t)opt_int(L, m, "max_body", CONFIG_MAX_BODY_DEFAULT, 1024,
	                                CONFIG_BUFSIZE_MAX - CONFIG_HEADER_ROOM);
	h->sized = get(m, "max_body") || get(m, "bufsize");
	if ((n = get(m, "bufsize"))) {
		h->bufsize = (uint32_t)s_int(L, n, 16384, CONFIG_BUFSIZE_MAX);
		if (!get(m, "max_body"))
			h->max_body = h->bufsize - CONFIG_HEADER_ROOM;
		else if (h->max_body > h->bufsize - CONFIG_HEADER_ROOM)
			failn(L, get(m, "max_body"), "above haproxy.bufsize - %u (%u): raise bufsize, "
			      "or leave it out and it follows max_body", CONFIG_HEADER_ROOM,
			      h->bufsize - CONFIG_HEADER_ROOM);
	} else {
		h->bufsize = (h->max_body + CONFIG_HEADER_ROOM + 15) & ~15u;
		if (h->bufsize < 16384)
			h->bufsize = 16384;
	}
	if (!L->cfg->agent.max_frame_size)
		L->cfg->agent.max_frame_size = h->bufsize > 1048576 ? h->bufsize : 1048576;
	h->maxconn = (uint32_t)opt_int(L, m, "maxconn", 4096, 1, 10000000);
	h->nbthread = (int)opt_int(L, m, "nbthread", 0, 0, 64);
	h->failure_status = (int)opt_int(L, m, "failure_status", 503, 400, 599);
	h->on_agent_error = opt_enum(L, m, "on_agent_error", onerr, 0) ? TG_FAIL_OPEN
	                                                                : TG_FAIL_CLOSED;
	h->stats_socket = opt_str_ne(L, m, "stats_socket", NULL);
	h->settle_bind = opt_str_ne(L, m, "settle_bind", NULL);
	if (h->settle_bind)
		check_listener(L, get(m, "settle_bind"), h->settle_bind);
	h->user = opt_str_ne(L, m, "user", NULL);
	h->group = opt_str_ne(L, m, "group", NULL);
	h->chroot = opt_str_ne(L, m, "chroot", NULL);
	if (h->chroot && h->chroot[0] != '/' && strcmp(h->chroot, "auto") != 0)
		failn(L, get(m, "chroot"), "an absolute path, or \"auto\" (HAProxy 3.4+)");
	h->spoe_backend_addr = opt_str_ne(L, m, "agent_address", NULL);
	if (h->spoe_backend_addr)
		check_listener(L, get(m, "agent_address"), h->spoe_backend_addr);
	t = get(m, "timeouts");
	allow_keys(L, t, tkeys);
	h->timeouts.connect = opt_secs(L, t, "connect", 5, 0.001, 86400);
	h->timeouts.client = opt_secs(L, t, "client", 60, 0.001, 86400);
	h->timeouts.server = opt_secs(L, t, "server", 300, 0.001, 86400);
	h->timeouts.http_request = opt_secs(L, t, "http_request", 10, 0.001, 86400);
	h->timeouts.queue = opt_secs(L, t, "queue", 5, 0.001, 86400);
	h->timeouts.spoe_processing = opt_secs(L, t, "spoe_processing", 0.5, 0.001, 3600);
	h->timeouts.spoe_hello = opt_secs(L, t, "spoe_hello", 2, 0.001, 3600);
	h->timeouts.spoe_idle = opt_secs(L, t, "spoe_idle", 30, 0.001, 86400);
}

/* ---------------------------------------------------------------- store */

/* Percent-decode s[0..n) (the user info of a URL). NULL if malformed. */
static char *pct_decode(struct loader *L, const char *s, size_t n)
{
	char *o = cy_alloc(AR(L), n + 1), *p = o;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%') {
			if (i + 2 >= n + 0 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
				return NULL;
			*p++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else {
			*p++ = s[i];
		}
	}
	*p = 0;
	return o;
}

/* The database number of a URL path ("" is 0). */
static int parse_redis_db(struct loader *L, const struct cy_node *n, const char *p)
{
	long v = 0;

	for (; *p; p++) {
		if (*p < '0' || *p > '9' || v > 65535)
			failn(L, n, "bad database number in the redis URL (expected /0 .. /65535)");
		v = v * 10 + (*p - '0');
	}
	if (v > 65535)
		failn(L, n, "bad database number in the redis URL (expected /0 .. /65535)");
	return (int)v;
}

/* "h1[:port][,h2[:port]...]/MASTER[/db]" of a redis-sentinel:// URL. */
static void parse_sentinels(struct loader *L, const struct cy_node *n, const char *hosts,
                            const char *path, struct tg_store_cfg *s)
{
	const char *db;
	char *h = cy_strndup(&L->cx->tree, hosts, strlen(hosts)), *comma;

	for (; h; h = comma ? comma + 1 : NULL) {
		struct tg_sentinel *t = &s->sentinels[s->n_sentinels];

		if ((comma = strchr(h, ',')))
			*comma = 0;
		if (!*h)
			failn(L, n, "missing sentinel host in the redis URL (an empty one in the list)");
		if (s->n_sentinels == TG_SENTINELS_MAX)
			failn(L, n, "more than %d sentinels in the redis URL", TG_SENTINELS_MAX);
		parse_hostport(L, n, h, HP_PORT_OPTIONAL, 26379, &t->host, &t->port);
		s->n_sentinels++;
	}
	if (!path || !path[1] || path[1] == '/')
		failn(L, n, "missing master name: redis-sentinel://SENTINEL[,SENTINEL...]/MASTER[/db]");
	db = strchr(path + 1, '/');
	s->sentinel_master = cy_strndup(AR(L), path + 1,
	                                db ? (size_t)(db - path - 1) : strlen(path + 1));
	s->db = db ? parse_redis_db(L, n, db + 1) : 0;
	s->host = s->sentinels[0].host;
	s->port = s->sentinels[0].port;
}

/* "redis://[[user]:password@]host[:port][/db]", or
 * "redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER[/db]"
 * (sentinels, default port 26379, and the master's name). Messages never
 * show the password. */
static void parse_redis_url(struct loader *L, const struct cy_node *n, struct tg_store_cfg *s)
{
	const char *u = s->redis, *auth, *hostpart, *slash, *at;
	bool sentinel = strncasecmp(u, "redis-sentinel://", 17) == 0;
	char *hp;

	if (strncasecmp(u, "rediss://", 9) == 0)
		failn(L, n, "TLS (rediss://) is not supported; use redis://");
	if (strncasecmp(u, "redis://", 8) != 0 && !sentinel)
		failn(L, n, "expected redis://[:password@]host:port[/db] or "
		      "redis-sentinel://[:password@]host:port[,host:port...]/MASTER[/db]");
	auth = u + (sentinel ? 17 : 8);
	slash = strchr(auth, '/');
	if (strpbrk(auth, "?#"))
		failn(L, n, "query strings and fragments are not supported in the redis URL");
	size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);

	at = NULL;
	for (size_t i = 0; i < alen; i++)
		if (auth[i] == '@')
			at = auth + i;
	hostpart = auth;
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));

		if (colon) {
			if (colon > auth)
				s->username = pct_decode(L, auth, (size_t)(colon - auth));
			s->password = pct_decode(L, colon + 1, (size_t)(at - colon - 1));
			if (!s->password)
				failn(L, n, "bad percent-encoding in the password");
			if (!*s->password)
				s->password = NULL;
		} else {
			s->username = pct_decode(L, auth, (size_t)(at - auth));
		}
		if (colon > auth && !s->username)
			failn(L, n, "bad percent-encoding in the user name");
		if (!colon && !s->username)
			failn(L, n, "bad percent-encoding in the user name");
		if (s->username && !*s->username)
			s->username = NULL;
		hostpart = at + 1;
	}
	hp = cy_strndup(&L->cx->tree, hostpart, alen - (size_t)(hostpart - auth));
	if (!*hp)
		failn(L, n, "missing host in the redis URL");
	if (sentinel) {
		parse_sentinels(L, n, hp, slash, s);
		return;
	}
	parse_hostport(L, n, hp, HP_PORT_OPTIONAL, 6379, &s->host, &s->port);
	s->db = slash && slash[1] ? parse_redis_db(L, n, slash + 1) : 0;
}

static const char *const failure_modes[] = { "local", "open", "closed", NULL };

static void parse_store(struct loader *L, const struct cy_node *m)
{
	static const char *const keys[] = {
		"redis", "timeout_ms", "failure_mode", "lease_ttl", "breaker_threshold",
		"breaker_cooldown", "instances", NULL };
	struct tg_store_cfg *s = &L->cfg->store;

	allow_keys(L, m, keys);
	s->redis = opt_str_ne(L, m, "redis", NULL);
	if (s->redis)
		parse_redis_url(L, get(m, "redis"), s);
	s->timeout_ms = opt_ms(L, m, "timeout_ms", 50, 1, 60000, true);
	s->failure_mode = (enum tg_failure_mode)opt_enum(L, m, "failure_mode", failure_modes,
	                                                  TG_FAIL_LOCAL);
	s->lease_ms = opt_ms(L, m, "lease_ttl", 600000, 1000, 7u * 86400 * 1000, false);
	s->breaker_threshold = (uint32_t)opt_int(L, m, "breaker_threshold", 5, 1, 1000000);
	s->breaker_cooldown_ms = opt_ms(L, m, "breaker_cooldown", 1000, 1, 3600000, false);
	s->instances = (uint32_t)opt_int(L, m, "instances", 1, 1, 10000);
}

/* ------------------------------------------------------------- services */

static void parse_services(struct loader *L, const struct cy_node *seq)
{
	static const char *const keys[] = { "name", "type", "address", "protocol", NULL };
	static const char *const types[] = { "static", "dns", NULL };
	static const char *const protos[] = { "http", "https", "tcp", NULL };

	if (!seq)
		return;
	need_seq(L, seq);
	L->cfg->services = cy_alloc(AR(L), (seq->n + 1) * sizeof(struct tg_service));
	for (size_t i = 0; i < seq->n; i++) {
		const struct cy_node *m = seq->kids[i];
		struct tg_service *sv = &L->cfg->services[i];

		need_map(L, m);
		allow_keys(L, m, keys);
		sv->name = req_ident(L, m, m->path, "name", NULL);
		for (size_t j = 0; j < i; j++)
			if (strcmp(L->cfg->services[j].name, sv->name) == 0)
				failn(L, get(m, "name"), "duplicate service name \"%s\" (also services[%zu])",
				      sv->name, j);
		sv->type = (enum tg_service_type)opt_enum(L, m, "type", types, TG_SVC_STATIC);
		sv->address = req_str(L, m, m->path, "address");
		if (strcmp(sv->address, "embedded") == 0) {
			if (sv->type != TG_SVC_STATIC)
				failn(L, get(m, "address"), "\"embedded\" needs type static");
			sv->embedded = true;
			sv->host = cy_strdup(AR(L), "");
			sv->port = 0;
		} else {
			parse_hostport(L, get(m, "address"), sv->address, 0, 0, &sv->host, &sv->port);
		}
		sv->protocol = cy_strdup(AR(L), protos[opt_enum(L, m, "protocol", protos, 0)]);
		L->cfg->n_services = i + 1;
	}
}

/* ------------------------------------------------------------ providers */

static const char *const provider_types[] = {
	"openai", "azure", "qwen", "deepseek", "doubao", "openai-compatible", "mock", NULL };

static const char *default_base_url(enum tg_provider_type t)
{
	switch (t) {
	case TG_PROV_OPENAI:   return "https://api.openai.com/v1";
	case TG_PROV_QWEN:     return "https://dashscope.aliyuncs.com/compatible-mode/v1";
	case TG_PROV_DEEPSEEK: return "https://api.deepseek.com/v1";
	case TG_PROV_DOUBAO:   return "https://ark.cn-beijing.volces.com/api/v3";
	default:               return NULL;
	}
}

static void parse_url(struct loader *L, const struct cy_node *n, struct tg_provider *p)
{
	const char *u = p->base_url, *rest, *slash;
	char *hp;
	uint16_t dport;

	if (strncasecmp(u, "https://", 8) == 0) {
		p->scheme = cy_strdup(AR(L), "https");
		rest = u + 8;
		dport = 443;
	} else if (strncasecmp(u, "http://", 7) == 0) {
		p->scheme = cy_strdup(AR(L), "http");
		rest = u + 7;
		dport = 80;
	} else {
		failn(L, n, "\"%.80s\": expected an http:// or https:// URL", u);
	}
	if (strpbrk(rest, "?#@"))
		failn(L, n, "user info, query and fragment are not allowed in base_url");
	slash = strchr(rest, '/');
	hp = cy_strndup(&L->cx->tree, rest, slash ? (size_t)(slash - rest) : strlen(rest));
	if (!*hp)
		failn(L, n, "\"%.80s\": missing host", u);
	parse_hostport(L, n, hp, HP_PORT_OPTIONAL, dport, &p->host, &p->port);
	if (slash) {
		size_t l = strlen(slash);

		while (l > 0 && slash[l - 1] == '/')
			l--;
		p->base_path = cy_strndup(AR(L), slash, l);
		if (strpbrk(p->base_path, " \t"))
			failn(L, n, "\"%.80s\": spaces in the path", u);
	} else {
		p->base_path = cy_strdup(AR(L), "");
	}
}

static void parse_providers(struct loader *L, const struct cy_node *seq)
{
	static const char *const keys[] = {
		"name", "type", "base_url", "api_keys", "model_mapping", "api_version",
		"deployment", "timeout", NULL };

	if (!seq)
		return;
	need_seq(L, seq);
	L->cfg->providers = cy_alloc(AR(L), (seq->n + 1) * sizeof(struct tg_provider));
	for (size_t i = 0; i < seq->n; i++) {
		const struct cy_node *m = seq->kids[i], *n;
		struct tg_provider *p = &L->cfg->providers[i];

		need_map(L, m);
		allow_keys(L, m, keys);
		p->name = req_ident(L, m, m->path, "name", NULL);
		for (size_t j = 0; j < i; j++)
			if (strcmp(L->cfg->providers[j].name, p->name) == 0)
				failn(L, get(m, "name"),
				      "duplicate provider name \"%s\" (also providers[%zu])", p->name, j);
		p->type = (enum tg_provider_type)s_enum(L, need(L, m, m->path, "type"), provider_types);
		p->base_url = opt_str_ne(L, m, "base_url", default_base_url(p->type));
		if (p->base_url) {
			n = get(m, "base_url");
			parse_url(L, n ? n : m, p);
		} else if (p->type == TG_PROV_MOCK) {
			p->base_url = cy_strdup(AR(L), "");
			p->scheme = cy_strdup(AR(L), "");
			p->host = cy_strdup(AR(L), "");
			p->base_path = cy_strdup(AR(L), "");
		} else {
			failp(L, kpath(L, m->path, "base_url"), "required for type %s",
			      provider_types[p->type]);
		}
		if ((n = get(m, "api_keys")))
			str_list(L, n, &p->api_keys, &p->n_api_keys, SL_DROP_EMPTY | SL_SECRET);
		else
			p->api_keys = cy_alloc(AR(L), sizeof(char *));
		if ((n = get(m, "model_mapping"))) {
			need_map(L, n);
			p->model_mapping = cy_alloc(AR(L), (n->n + 1) * sizeof(struct tg_model_map));
			for (size_t j = 0; j < n->n; j++) {
				if (!*n->keys[j])
					failn(L, n->kids[j], "empty model name");
				p->model_mapping[j].from = cy_strdup(AR(L), n->keys[j]);
				p->model_mapping[j].to = n->kids[j]->type == CY_SCALAR && n->kids[j]->null
				                         ? cy_strdup(AR(L), "") : s_str(L, n->kids[j]);
			}
			p->n_model_mapping = n->n;
		}
		if (p->type == TG_PROV_AZURE) {
			p->api_version = opt_str_ne(L, m, "api_version", "2024-10-21");
			p->deployment = opt_str_ne(L, m, "deployment", NULL);
			if (p->deployment)
				check_ident(L, get(m, "deployment"), p->deployment, NULL);
		} else {
			if ((n = get(m, "api_version")))
				failn(L, n, "only for type azure");
			if ((n = get(m, "deployment")))
				failn(L, n, "only for type azure");
		}
		p->timeout = opt_secs(L, m, "timeout", 0, 0, 86400);
		L->cfg->n_providers = i + 1;
	}
}

/* ------------------------------------------------------------ consumers */

static void parse_consumers(struct loader *L, const struct cy_node *seq)
{
	static const char *const keys[] = { "name", "credential", "credentials", NULL };

	if (!seq)
		return;
	need_seq(L, seq);
	L->cfg->consumers = cy_alloc(AR(L), (seq->n + 1) * sizeof(struct tg_consumer));
	for (size_t i = 0; i < seq->n; i++) {
		const struct cy_node *m = seq->kids[i], *one, *many;
		struct tg_consumer *c = &L->cfg->consumers[i];
		char **list = NULL;
		size_t nl = 0;

		need_map(L, m);
		allow_keys(L, m, keys);
		c->name = req_ident(L, m, m->path, "name", "@+");
		for (size_t j = 0; j < i; j++)
			if (strcmp(L->cfg->consumers[j].name, c->name) == 0)
				failn(L, get(m, "name"),
				      "duplicate consumer name \"%s\" (also consumers[%zu])", c->name, j);
		one = get(m, "credential");
		many = get(m, "credentials");
		if (!one && !many)
			failp(L, kpath(L, m->path, "credential"), "missing (required)");
		if (many)
			str_list(L, many, &list, &nl, SL_NONEMPTY | SL_SECRET);
		c->credentials = cy_alloc(AR(L), (nl + 2) * sizeof(char *));
		if (one) {
			char *s = s_str(L, one);

			if (!*s)
				failn(L, one, "empty (is its environment variable set?)");
			if (has_ctl(s) || strchr(s, ' '))
				failn(L, one, "contains spaces or control characters");
			c->credentials[c->n_credentials++] = s;
		}
		for (size_t k = 0; k < nl; k++) {
			if (strchr(list[k], ' '))
				failn(L, many->kids[k], "contains spaces");
			c->credentials[c->n_credentials++] = list[k];
		}
		if (c->n_credentials == 0)
			failn(L, many, "must list at least one credential");
		/* unique across every consumer (never print the credential) */
		for (size_t k = 0; k < c->n_credentials; k++) {
			const struct cy_node *where = one ? (k == 0 ? one : many->kids[k - 1])
			                                  : many->kids[k];

			for (size_t j = 0; j <= i; j++) {
				const struct tg_consumer *o = &L->cfg->consumers[j];
				size_t lim = j == i ? k : o->n_credentials;

				for (size_t q = 0; q < lim; q++)
					if (strcmp(o->credentials[q], c->credentials[k]) == 0)
						failn(L, where, "the same credential as consumer \"%s\" "
						      "(credentials must be unique)", o->name);
			}
		}
		L->cfg->n_consumers = i + 1;
	}
}

static void parse_key_auth(struct loader *L, const struct cy_node *m)
{
	static const char *const keys[] = { "keys", "in_header", "in_query", "global_auth", NULL };
	struct tg_key_auth_cfg *k = &L->cfg->key_auth;
	const struct cy_node *n;

	allow_keys(L, m, keys);
	if ((n = get(m, "keys"))) {
		str_list(L, n, &k->keys, &k->n_keys, SL_NONEMPTY);
		if (k->n_keys == 0)
			failn(L, n, "must list at least one key");
		for (size_t i = 0; i < k->n_keys; i++)
			check_token(L, n->kids[i], k->keys[i]);
	} else {
		k->keys = cy_alloc(AR(L), 3 * sizeof(char *));
		k->keys[0] = cy_strdup(AR(L), "x-api-key");
		k->keys[1] = cy_strdup(AR(L), "authorization");
		k->n_keys = 2;
	}
	k->in_header = opt_bool(L, m, "in_header", true);
	k->in_query = opt_bool(L, m, "in_query", false);
	k->global_auth = opt_bool(L, m, "global_auth", false);
	if (!k->in_header && !k->in_query)
		failp(L, "key_auth", "in_header and in_query are both false: no key can be read");
}

/* --------------------------------------------------------------- lookups */

const struct tg_consumer *config_consumer(const struct tg_config *cfg, const char *name)
{
	for (size_t i = 0; cfg && name && i < cfg->n_consumers; i++)
		if (strcmp(cfg->consumers[i].name, name) == 0)
			return &cfg->consumers[i];
	return NULL;
}

const struct tg_provider *config_provider(const struct tg_config *cfg, const char *name)
{
	for (size_t i = 0; cfg && name && i < cfg->n_providers; i++)
		if (strcmp(cfg->providers[i].name, name) == 0)
			return &cfg->providers[i];
	return NULL;
}

const struct tg_service *config_service(const struct tg_config *cfg, const char *name)
{
	for (size_t i = 0; cfg && name && i < cfg->n_services; i++)
		if (strcmp(cfg->services[i].name, name) == 0)
			return &cfg->services[i];
	return NULL;
}

const struct tg_route *config_route(const struct tg_config *cfg, const char *name)
{
	for (size_t i = 0; cfg && name && i < cfg->n_routes; i++)
		if (strcmp(cfg->routes[i].name, name) == 0)
			return &cfg->routes[i];
	return NULL;
}

/* "a, b, c" of the names, for "known: ..." hints. */
static const char *names_of(struct loader *L, const void *arr, size_t n, size_t stride)
{
	char buf[200] = "";
	size_t off = 0;

	for (size_t i = 0; i < n && off < sizeof(buf) - 1; i++) {
		const char *name = *(char *const *)((const char *)arr + i * stride);
		int w = snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? ", " : "", name);

		off += w < 0 ? 0 : (size_t)w;
	}
	if (off >= sizeof(buf) - 1)
		strcpy(buf + sizeof(buf) - 5, "...");
	return cy_strdup(&L->cx->tree, n ? buf : "none defined");
}

static const struct tg_consumer *resolve_consumer(struct loader *L, const struct cy_node *n,
                                                  const char *name)
{
	const struct tg_consumer *c = config_consumer(L->cfg, name);

	if (!c)
		failn(L, n, "\"%.60s\" names no consumer (consumers: %s)", name,
		      names_of(L, L->cfg->consumers, L->cfg->n_consumers, sizeof(struct tg_consumer)));
	return c;
}

/* -------------------------------------------------------------- plugins */

static void parse_redis_ref(struct loader *L, const struct cy_node *m, struct tg_redis_ref *r)
{
	static const char *const keys[] = {
		"service_name", "service_port", "username", "password", "timeout", "database", NULL };
	const struct cy_node *n;

	r->timeout_ms = 1000;
	r->service_port = 6379;
	if (!m)
		return;
	allow_keys(L, m, keys);
	r->present = true;
	r->service_name = opt_str_ne(L, m, "service_name", NULL);
	if (r->service_name) {
		const char *sn = r->service_name, *dot = strrchr(sn, '.');
		const struct tg_service *sv = NULL;
		char base[160];

		n = get(m, "service_name");
		if (dot && (strcmp(dot, ".static") == 0 || strcmp(dot, ".dns") == 0) &&
		    (size_t)(dot - sn) < sizeof(base)) {
			enum tg_service_type want = strcmp(dot, ".static") == 0 ? TG_SVC_STATIC
			                                                        : TG_SVC_DNS;

			memcpy(base, sn, (size_t)(dot - sn));
			base[dot - sn] = 0;
			sv = config_service(L->cfg, base);
			if (sv && sv->type != want)
				failn(L, n, "service \"%s\" is of type %s: write %s.%s", base,
				      sv->type == TG_SVC_STATIC ? "static" : "dns", base,
				      sv->type == TG_SVC_STATIC ? "static" : "dns");
		}
		if (!sv)
			sv = config_service(L->cfg, sn);
		if (!sv)
			failn(L, n, "\"%.60s\" names no service (services: %s)", sn,
			      names_of(L, L->cfg->services, L->cfg->n_services, sizeof(struct tg_service)));
		r->service = sv;
		if (sv->type == TG_SVC_STATIC)
			r->service_port = 80;
	}
	r->service_port = (uint32_t)opt_int(L, m, "service_port", r->service_port, 1, 65535);
	r->username = opt_str_ne(L, m, "username", NULL);
	r->password = opt_str_ne(L, m, "password", NULL);
	r->timeout_ms = opt_ms(L, m, "timeout", 1000, 1, 600000, true);
	r->database = (int)opt_int(L, m, "database", 0, 0, 65535);
}

static const char *const count_modes[] = { "total", "input", "output", NULL };

static void parse_weights(struct loader *L, const struct cy_node *m, struct tg_model_weight **out,
                          size_t *cnt)
{
	static const char *const keys[] = { "input", "output", NULL };

	*out = NULL;
	*cnt = 0;
	if (!m)
		return;
	need_map(L, m);
	*out = cy_alloc(AR(L), (m->n + 1) * sizeof(struct tg_model_weight));
	for (size_t i = 0; i < m->n; i++) {
		const struct cy_node *w = m->kids[i];
		struct tg_model_weight *mw = &(*out)[i];

		if (!*m->keys[i])
			failn(L, w, "empty model name");
		mw->model = cy_strdup(AR(L), m->keys[i]);
		if (w->type == CY_SCALAR && !w->null) {
			mw->input = mw->output = s_double(L, w, 0, 1e9);
		} else if (w->type == CY_MAP) {
			allow_keys(L, w, keys);
			const struct cy_node *x = get(w, "input"), *y = get(w, "output");

			mw->input = x ? s_double(L, x, 0, 1e9) : 1;
			mw->output = y ? s_double(L, y, 0, 1e9) : 1;
		} else {
			failn(L, w, "expected { input: N, output: N } or a number, got %s",
			      cy_type_name(w));
		}
	}
	*cnt = m->n;
}

static void need_auth(struct loader *L, const struct tg_route *r, const char *path,
                      const char *what)
{
	if (!r->auth.enabled && !L->cfg->key_auth.global_auth)
		failp(L, path, "%s needs an authenticated consumer: set %s.auth.enabled "
		      "(or key_auth.global_auth)", what, L->route_path ? L->route_path : "the route's");
}

static void parse_quota(struct loader *L, const struct cy_node *m, struct tg_route *r,
                        const char *rpath)
{
	static const char *const keys[] = {
		"redis_key_prefix", "admin_consumer", "admin_path", "redis", "count", "weights",
		"strict", "failure_mode", NULL };
	struct tg_ai_quota *q = cy_alloc(AR(L), sizeof(*q));
	const struct cy_node *n;

	r->quota = q;
	allow_keys(L, m, keys);
	q->redis_key_prefix = opt_str(L, m, "redis_key_prefix", "chat_quota:");
	n = need(L, m, m->path, "admin_consumer");
	q->admin_consumer = s_str(L, n);
	q->admin = resolve_consumer(L, n, q->admin_consumer);
	if (r->auth.n_allow) {
		bool in = false;

		for (size_t i = 0; i < r->auth.n_allow; i++)
			in |= r->auth.allow_c[i] == q->admin;
		if (!in)
			failn(L, n, "\"%s\" is not in %s.auth.allow: it could not call the admin API",
			      q->admin_consumer, rpath);
	}
	q->admin_path = opt_str(L, m, "admin_path", "/quota");
	if (q->admin_path[0] != '/' || strpbrk(q->admin_path, " ?#"))
		failn(L, get(m, "admin_path"), "must be a path starting with '/'");
	parse_redis_ref(L, get(m, "redis"), &q->redis);
	q->count = (enum tg_count_mode)opt_enum(L, m, "count", count_modes, TG_COUNT_TOTAL);
	parse_weights(L, get(m, "weights"), &q->weights, &q->n_weights);
	q->strict = opt_bool(L, m, "strict", false);
	q->failure_mode = (enum tg_failure_mode)opt_enum(L, m, "failure_mode", failure_modes,
	                                                  (int)L->cfg->store.failure_mode);
	need_auth(L, r, m->path, "ai-quota (a balance per consumer)");
}

static const char *const limit_by_names[] = {
	"limit_by_header", "limit_by_param", "limit_by_consumer", "limit_by_cookie",
	"limit_by_per_header", "limit_by_per_param", "limit_by_per_consumer",
	"limit_by_per_cookie", "limit_by_per_ip", NULL };

static const char *const token_keys[] = {
	"token_per_second", "token_per_minute", "token_per_hour", "token_per_day", NULL };

/* token_per_*: at least one, each > 0. */
static void parse_limits(struct loader *L, const struct cy_node *m, struct tg_token_limits *t)
{
	uint64_t *f[] = { &t->per_second, &t->per_minute, &t->per_hour, &t->per_day };
	int set = 0;

	for (int i = 0; token_keys[i]; i++) {
		const struct cy_node *n = get(m, token_keys[i]);

		if (n) {
			*f[i] = (uint64_t)s_int(L, n, 1, INT64_MAX);
			set++;
		}
	}
	if (!set)
		failn(L, m, "needs one of token_per_second, token_per_minute, token_per_hour, "
		      "token_per_day");
}

static bool parse_cidr(const char *s, struct tg_cidr *c)
{
	char tmp[64];
	const char *slash = strchr(s, '/');
	size_t l = slash ? (size_t)(slash - s) : strlen(s);
	int max;

	if (l == 0 || l >= sizeof(tmp))
		return false;
	memcpy(tmp, s, l);
	tmp[l] = 0;
	memset(c, 0, sizeof(*c));
	if (inet_pton(AF_INET, tmp, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, tmp, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		return false;
	}
	c->prefix = max;
	if (slash) {
		int v = 0;

		if (!slash[1] || strlen(slash + 1) > 3)
			return false;
		for (const char *p = slash + 1; *p; p++) {
			if (*p < '0' || *p > '9')
				return false;
			v = v * 10 + (*p - '0');
		}
		if (v > max)
			return false;
		c->prefix = v;
	}
	for (int bit = c->prefix; bit < max; bit++)
		c->addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
	return true;
}

int config_cidr_match(const struct tg_cidr *c, int family, const void *addr)
{
	const uint8_t *a = addr;
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (!c || !a)
		return 0;
	if (family == AF_INET6 && c->family == AF_INET && memcmp(a, mapped, 12) == 0) {
		a += 12;
		family = AF_INET;
	}
	if (family != c->family)
		return 0;
	int full = c->prefix / 8, rest = c->prefix % 8;

	if (memcmp(a, c->addr, (size_t)full) != 0)
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xffu << (8 - rest));

		if ((a[full] & mask) != c->addr[full])
			return 0;
	}
	return 1;
}

static void parse_limit_key(struct loader *L, const struct cy_node *m, struct tg_rule_item *it,
                            struct tg_limit_key *k)
{
	static const char *const keys[] = {
		"key", "token_per_second", "token_per_minute", "token_per_hour", "token_per_day",
		NULL };
	const struct cy_node *n;
	bool per = it->by >= TG_LIMIT_BY_PER_HEADER;

	need_map(L, m);
	allow_keys(L, m, keys);
	n = need(L, m, m->path, "key");
	k->key = s_str(L, n);
	if (!*k->key)
		failn(L, n, "must not be empty");
	if (it->by == TG_LIMIT_BY_PER_IP) {
		if (strcmp(k->key, "*") == 0)
			k->kind = TG_KEY_ANY;
		else if (parse_cidr(k->key, &k->cidr))
			k->kind = TG_KEY_CIDR;
		else
			failn(L, n, "\"%.60s\" is not an IP address or CIDR (e.g. 10.0.0.0/8)", k->key);
	} else if (strcmp(k->key, "*") == 0 || strncmp(k->key, "regexp:", 7) == 0) {
		if (!per)
			failn(L, n, "\"*\" and regexp: keys need a limit_by_per_* rule item (%s "
			      "matches exact values)", limit_by_names[it->by]);
		if (k->key[0] == '*') {
			k->kind = TG_KEY_ANY;
		} else {
			struct relist *rl = cy_alloc(AR(L), sizeof(*rl));
			int rc;

			k->kind = TG_KEY_REGEXP;
			k->pattern = k->key + 7;
			if (!*k->pattern)
				failn(L, n, "empty regular expression");
			rc = regcomp(&k->re, k->pattern, REG_EXTENDED | REG_NOSUB);
			if (rc != 0) {
				char why[160];

				regerror(rc, &k->re, why, sizeof(why));
				failn(L, n, "bad regular expression \"%.60s\": %s", k->pattern, why);
			}
			k->re_compiled = true;
			rl->re = &k->re;
			rl->next = L->priv->res;
			L->priv->res = rl;
		}
	} else {
		k->kind = TG_KEY_EXACT;
	}
	parse_limits(L, m, &k->limits);
}

static void parse_rule_item(struct loader *L, const struct cy_node *m, struct tg_rule_item *it,
                            struct tg_route *r)
{
	static const char *const keys[] = {
		"limit_by_header", "limit_by_param", "limit_by_consumer", "limit_by_cookie",
		"limit_by_per_header", "limit_by_per_param", "limit_by_per_consumer",
		"limit_by_per_cookie", "limit_by_per_ip", "limit_keys", NULL };
	const struct cy_node *by = NULL, *n;
	int which = -1;

	need_map(L, m);
	allow_keys(L, m, keys);
	for (int i = 0; limit_by_names[i]; i++) {
		/* present even when written as null: limit_by_consumer: "" or ~ */
		for (size_t j = 0; j < m->n; j++) {
			if (strcmp(m->keys[j], limit_by_names[i]) != 0)
				continue;
			if (by)
				failn(L, m->kids[j], "only one limit_by_* per rule item (also %s)",
				      limit_by_names[which]);
			by = m->kids[j];
			which = i;
		}
	}
	if (!by)
		failn(L, m, "needs one of limit_by_header, limit_by_param, limit_by_consumer, "
		      "limit_by_cookie, limit_by_per_header, limit_by_per_param, "
		      "limit_by_per_consumer, limit_by_per_cookie, limit_by_per_ip");
	it->by = (enum tg_limit_by)which;
	it->name = by->type == CY_SCALAR && by->null ? cy_strdup(AR(L), "") : s_str(L, by);
	switch (it->by) {
	case TG_LIMIT_BY_CONSUMER:
	case TG_LIMIT_BY_PER_CONSUMER:
		need_auth(L, r, by->path, limit_by_names[which]);
		break;
	case TG_LIMIT_BY_PER_IP:
		if (strcmp(it->name, "from-remote-addr") == 0) {
			it->ip_header = NULL;
		} else if (strncmp(it->name, "from-header-", 12) == 0 && it->name[12]) {
			it->ip_header = cy_strdup(AR(L), it->name + 12);
			check_token(L, by, it->ip_header);
		} else {
			failn(L, by, "expected from-remote-addr or from-header-NAME, got \"%.60s\"",
			      it->name);
		}
		break;
	default:
		check_token(L, by, it->name);
	}
	n = need(L, m, m->path, "limit_keys");
	need_seq(L, n);
	if (n->n == 0)
		failn(L, n, "must list at least one key");
	it->keys = cy_alloc(AR(L), (n->n + 1) * sizeof(struct tg_limit_key));
	for (size_t j = 0; j < n->n; j++) {
		parse_limit_key(L, n->kids[j], it, &it->keys[j]);
		it->n_keys = j + 1;
		for (size_t q = 0; q < j; q++)
			if (strcmp(it->keys[q].key, it->keys[j].key) == 0)
				failn(L, get(n->kids[j], "key"), "key listed twice (also limit_keys[%zu])",
				      q);
	}
}

static void parse_ratelimit(struct loader *L, const struct cy_node *m, struct tg_route *r)
{
	static const char *const keys[] = {
		"rule_name", "global_threshold", "rule_items", "rejected_code", "rejected_msg",
		"redis", "count", "weights", "strict", "clamp_max_tokens", "failure_mode", NULL };
	static const char *const gkeys[] = {
		"token_per_second", "token_per_minute", "token_per_hour", "token_per_day", NULL };
	struct tg_ai_token_ratelimit *rl = cy_alloc(AR(L), sizeof(*rl));
	const struct cy_node *g, *items;

	r->ratelimit = rl;
	allow_keys(L, m, keys);
	rl->rule_name = req_str(L, m, m->path, "rule_name");
	check_ident(L, get(m, "rule_name"), rl->rule_name, NULL);
	g = get(m, "global_threshold");
	items = get(m, "rule_items");
	if (g && items)
		failn(L, g, "global_threshold and rule_items are exclusive: write one of them");
	if (!g && !items)
		failp(L, kpath(L, m->path, "rule_items"), "missing (rule_items or global_threshold "
		      "is required)");
	if (g) {
		need_map(L, g);
		allow_keys(L, g, gkeys);
		rl->has_global = true;
		parse_limits(L, g, &rl->global_threshold);
	} else {
		need_seq(L, items);
		if (items->n == 0)
			failn(L, items, "must list at least one rule item");
		rl->rule_items = cy_alloc(AR(L), (items->n + 1) * sizeof(struct tg_rule_item));
		for (size_t i = 0; i < items->n; i++) {
			parse_rule_item(L, items->kids[i], &rl->rule_items[i], r);
			rl->n_rule_items = i + 1;
		}
	}
	rl->rejected_code = (int)opt_int(L, m, "rejected_code", 429, 400, 599);
	rl->rejected_msg = opt_str(L, m, "rejected_msg", "Too many requests");
	parse_redis_ref(L, get(m, "redis"), &rl->redis);
	rl->count = (enum tg_count_mode)opt_enum(L, m, "count", count_modes, TG_COUNT_TOTAL);
	parse_weights(L, get(m, "weights"), &rl->weights, &rl->n_weights);
	rl->strict = opt_bool(L, m, "strict", false);
	rl->clamp_max_tokens = opt_bool(L, m, "clamp_max_tokens", false);
	rl->failure_mode = (enum tg_failure_mode)opt_enum(L, m, "failure_mode", failure_modes,
	                                                   (int)L->cfg->store.failure_mode);
}

/* --------------------------------------------------------------- routes */

static void parse_route(struct loader *L, const struct cy_node *m, struct tg_route *r)
{
	static const char *const keys[] = {
		"name", "provider", "models", "paths", "auth", "plugins", NULL };
	static const char *const akeys[] = { "enabled", "allow", NULL };
	static const char *const pkeys[] = { "ai-quota", "ai-token-ratelimit", NULL };
	const struct cy_node *n, *a, *p;

	need_map(L, m);
	allow_keys(L, m, keys);
	r->name = req_ident(L, m, m->path, "name", NULL);
	n = need(L, m, m->path, "provider");
	r->provider_name = s_str(L, n);
	r->provider = config_provider(L->cfg, r->provider_name);
	if (!r->provider)
		failn(L, n, "\"%.60s\" names no provider (providers: %s)", r->provider_name,
		      names_of(L, L->cfg->providers, L->cfg->n_providers, sizeof(struct tg_provider)));
	if ((n = get(m, "models"))) {
		str_list(L, n, &r->models, &r->n_models, SL_NONEMPTY);
		if (r->n_models == 0)
			failn(L, n, "must list at least one model (\"*\" matches every model)");
	} else {
		r->models = cy_alloc(AR(L), 2 * sizeof(char *));
		r->models[0] = cy_strdup(AR(L), "*");
		r->n_models = 1;
	}
	if ((n = get(m, "paths"))) {
		str_list(L, n, &r->paths, &r->n_paths, SL_NONEMPTY);
		for (size_t i = 0; i < r->n_paths; i++)
			if (r->paths[i][0] != '/' || strpbrk(r->paths[i], " ?#"))
				failn(L, n->kids[i], "must be a path prefix starting with '/'");
	} else {
		r->paths = cy_alloc(AR(L), sizeof(char *));
	}
	a = get(m, "auth");
	allow_keys(L, a, akeys);
	r->auth.enabled = opt_bool(L, a, "enabled", a != NULL);
	if ((n = get(a, "allow"))) {
		str_list(L, n, &r->auth.allow, &r->auth.n_allow, SL_NONEMPTY);
		r->auth.allow_c = cy_alloc(AR(L), (r->auth.n_allow + 1) * sizeof(void *));
		for (size_t i = 0; i < r->auth.n_allow; i++) {
			r->auth.allow_c[i] = resolve_consumer(L, n->kids[i], r->auth.allow[i]);
			for (size_t j = 0; j < i; j++)
				if (r->auth.allow_c[j] == r->auth.allow_c[i])
					failn(L, n->kids[i], "\"%s\" listed twice", r->auth.allow[i]);
		}
	} else {
		r->auth.allow = cy_alloc(AR(L), sizeof(char *));
		r->auth.allow_c = cy_alloc(AR(L), sizeof(void *));
	}
	p = get(m, "plugins");
	allow_keys(L, p, pkeys);
	if ((n = get(p, "ai-quota")))
		parse_quota(L, n, r, m->path);
	if ((n = get(p, "ai-token-ratelimit")))
		parse_ratelimit(L, n, r);
}

static void parse_routes(struct loader *L, const struct cy_node *seq)
{
	if (!seq)
		return;
	need_seq(L, seq);
	L->cfg->routes = cy_alloc(AR(L), (seq->n + 1) * sizeof(struct tg_route));
	for (size_t i = 0; i < seq->n; i++) {
		struct tg_route *r = &L->cfg->routes[i];

		L->route_path = seq->kids[i]->path;
		parse_route(L, seq->kids[i], r);
		L->cfg->n_routes = i + 1;
		for (size_t j = 0; j < i; j++)
			if (strcmp(L->cfg->routes[j].name, r->name) == 0)
				failn(L, get(seq->kids[i], "name"),
				      "duplicate route name \"%s\" (also routes[%zu])", r->name, j);
	}
}

/* ------------------------------------------------------------------ load */

static void parse_root(struct loader *L, const struct cy_node *root)
{
	static const char *const keys[] = {
		"haproxy", "agent", "store", "services", "providers", "consumers", "key_auth",
		"routes", NULL };
	struct tg_config *c = L->cfg;

	allow_keys(L, root, keys);
	for (size_t i = 0; i < root->n; i++) {
		const struct cy_node *n = root->kids[i];

		if (n->type == CY_SCALAR && n->null)
			continue;
		if (!strcmp(root->keys[i], "services") || !strcmp(root->keys[i], "providers") ||
		    !strcmp(root->keys[i], "consumers") || !strcmp(root->keys[i], "routes"))
			need_seq(L, n);
		else
			need_map(L, n);
	}
	parse_agent(L, get(root, "agent"));
	parse_haproxy(L, get(root, "haproxy"));
	parse_store(L, get(root, "store"));
	parse_services(L, get(root, "services"));
	parse_providers(L, get(root, "providers"));
	parse_consumers(L, get(root, "consumers"));
	parse_key_auth(L, get(root, "key_auth"));
	parse_routes(L, get(root, "routes"));

	/* Every store call must end well before HAProxy gives up on the agent. */
	if (c->store.timeout_ms >= c->haproxy.timeouts.spoe_processing * 1000.0)
		failp(L, "store.timeout_ms", "%ums is not under haproxy.timeouts.spoe_processing "
		      "(%gms): a slow store would turn every request into a missing verdict",
		      c->store.timeout_ms, c->haproxy.timeouts.spoe_processing * 1000.0);
	if (!c->services)
		c->services = cy_alloc(AR(L), sizeof(struct tg_service));
	if (!c->providers)
		c->providers = cy_alloc(AR(L), sizeof(struct tg_provider));
	if (!c->consumers)
		c->consumers = cy_alloc(AR(L), sizeof(struct tg_consumer));
	if (!c->routes)
		c->routes = cy_alloc(AR(L), sizeof(struct tg_route));
}

static void free_priv(struct cfg_priv *priv)
{
	if (!priv)
		return;
	for (struct relist *r = priv->res; r; r = r->next)
		regfree(r->re);
	priv->res = NULL;
	cy_arena_free(&priv->arena);
	free(priv);
}

int config_load_string(const char *text, size_t len, const char *name,
                       struct tg_config **out, char *err, size_t errlen)
{
	struct cy_ctx *cx;
	struct cfg_priv *priv;
	struct loader *L;
	char dummy[1];

	*out = NULL;
	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	err[0] = 0;
	cx = calloc(1, sizeof(*cx));
	priv = calloc(1, sizeof(*priv));
	L = calloc(1, sizeof(*L));
	if (!cx || !priv || !L) {
		free(cx);
		free(priv);
		free(L);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	cx->err = err;
	cx->errlen = errlen;
	cx->name = name ? name : "<config>";
	cx->tree.cx = cx;
	priv->arena.cx = cx;
	L->cx = cx;
	L->priv = priv;
	if (setjmp(cx->jb)) {
		cy_cleanup(cx);
		free_priv(priv);
		cy_arena_free(&cx->tree);
		free(cx);
		free(L);
		return -1;
	}
	struct cy_node *root = cy_parse(cx, text ? text : "", text ? len : 0);

	L->cfg = cy_alloc(&priv->arena, sizeof(struct tg_config));
	L->cfg->arena = priv;
	L->cfg->path = cy_strdup(&priv->arena, cx->name);
	parse_root(L, root);

	*out = L->cfg;
	priv->arena.cx = NULL;
	cy_arena_free(&cx->tree);
	free(cx);
	free(L);
	return 0;
}

int config_load(const char *path, struct tg_config **out, char *err, size_t errlen)
{
	FILE *f;
	char *buf;
	size_t len = 0, cap = 65536;
	int rc;

	*out = NULL;
	if (!path) {
		snprintf(err, errlen, "no configuration file given");
		return -1;
	}
	f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	buf = malloc(cap);
	while (buf) {
		size_t n = fread(buf + len, 1, cap - len, f);

		len += n;
		if (len < cap) {
			if (ferror(f)) {
				snprintf(err, errlen, "%s: read error: %s", path, strerror(errno));
				free(buf);
				fclose(f);
				return -1;
			}
			break;
		}
		if (cap >= MAX_FILE_SIZE) {
			snprintf(err, errlen, "%s: larger than %u bytes", path, MAX_FILE_SIZE);
			free(buf);
			fclose(f);
			return -1;
		}
		char *nb = realloc(buf, cap * 2);

		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	fclose(f);
	if (!buf) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	rc = config_load_string(buf, len, path, out, err, errlen);
	free(buf);
	return rc;
}

void config_free(struct tg_config *cfg)
{
	if (cfg)
		free_priv(cfg->arena);
}

/* ---------------------------------------------------------------- names */

const char *config_failure_mode_name(enum tg_failure_mode m)
{
	return (unsigned)m < 3 ? failure_modes[m] : "?";
}

const char *config_count_mode_name(enum tg_count_mode m)
{
	return (unsigned)m < 3 ? count_modes[m] : "?";
}

const char *config_provider_type_name(enum tg_provider_type t)
{
	return (unsigned)t <= TG_PROV_MOCK ? provider_types[t] : "?";
}

const char *config_limit_by_name(enum tg_limit_by b)
{
	return (unsigned)b <= TG_LIMIT_BY_PER_IP ? limit_by_names[b] : "?";
}
