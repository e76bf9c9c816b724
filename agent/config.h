/* config.h -- the tollgate configuration: one YAML file, loaded and validated
 * completely before anything uses it.
 *
 * Owns: reading the file (libyaml), ${VAR} substitution, typing, defaults,
 * validation and cross references. Types are in config-t.h.
 *
 * Rules of the file (see examples/token-control.yaml):
 *   - every scalar VALUE (not mapping keys) is substituted before typing:
 *     ${VAR} is the environment variable VAR, "" when unset; ${VAR:-dflt} is
 *     dflt when VAR is unset or empty; ${VAR-dflt} is dflt only when VAR is
 *     unset; defaults may themselves contain ${...}; "$${" is a literal "${".
 *     A substituted value is typed like any written one ("${PORT:-80}" is an
 *     integer where an integer is expected).
 *   - unknown keys, duplicate keys, wrong types and bad values are errors
 *     naming the full path, e.g.
 *     "routes[0].plugins.ai-token-ratelimit.rule_items[1].limit_keyz: unknown key".
 *   - a key written with a null value (`key:` or `key: ~`) is as if absent.
 *   - durations: a number (seconds) or a number with a unit ms|s|m|h
 *     ("500ms", "30s", "2m"); fields named *_ms or Higress's redis.timeout
 *     take a bare number as milliseconds.
 *   - anchors and aliases are allowed; merge keys (<<) are not.
 */
#ifndef TOLLGATE_CONFIG_H
#define TOLLGATE_CONFIG_H

#include <stddef.h>

#include "config-t.h"

/* Load and validate path. 0: *out is a new config (free with config_free).
 * -1: *out is NULL and err holds "path.to.key: message", or
 * "file:line: message" for YAML syntax errors and "file: message" when the
 * file cannot be read. */
int  config_load(const char *path, struct tg_config **out, char *err, size_t errlen);
/* The same from a YAML text in memory (name is used in syntax errors). */
int  config_load_string(const char *text, size_t len, const char *name,
                        struct tg_config **out, char *err, size_t errlen);
void config_free(struct tg_config *cfg);

/* The buffer's room besides the body: HAProxy's rewrite reserve
 * (tune.maxrewrite, 1024) and the request's headers (8192). */
#define CONFIG_HEADER_ROOM (1024 + 8192)

/* The largest tune.bufsize: HAProxy 2.6 to 3.0 put a buffer on the stack
 * to build an agent's health check (`option spop-check`), and crash from
 * 8 MiB on (measured, haproxy -c; the stack limit is 8 MiB). */
#define CONFIG_BUFSIZE_MAX (8u * 1024 * 1024 - 64 * 1024)

/* haproxy.max_body by default: 4 MiB, today's largest prompts. */
#define CONFIG_MAX_BODY_DEFAULT 4194304u

/* The default's ceiling on HAProxy 2.6 started without the glibc setting
 * of haproxy/README.md: glibc maps blocks of 128 KiB and more afresh at
 * each use, and with 4 MiB buffers small requests ran 3 to 4 times slower
 * there (tests/bench/gateway.sh); a buffer of 124 KiB stays in the heap. */
#define CONFIG_MAX_BODY_SMALL (126976u - CONFIG_HEADER_ROOM)

/* The largest body HAProxy hands over whole (request to the agent, answer
 * to the `response` message): haproxy.max_body, at most the buffer minus
 * CONFIG_HEADER_ROOM. Larger requests get 413. */
static inline unsigned long config_max_body(const struct tg_config *cfg)
{
	return cfg->haproxy.max_body;
}

/* The smallest ceiling the rendered configuration may run with: the
 * default can fall back to CONFIG_MAX_BODY_SMALL (render.c). What must fit
 * HAProxy's buffer on every version is measured against this. */
static inline unsigned long config_max_body_floor(const struct tg_config *cfg)
{
	return cfg->haproxy.sized ? cfg->haproxy.max_body : CONFIG_MAX_BODY_SMALL;
}

/* Lookups by name; NULL when absent. */
const struct tg_consumer *config_consumer(const struct tg_config *cfg, const char *name);
const struct tg_provider *config_provider(const struct tg_config *cfg, const char *name);
const struct tg_service  *config_service(const struct tg_config *cfg, const char *name);
const struct tg_route    *config_route(const struct tg_config *cfg, const char *name);

/* The YAML spelling of enum values. */
const char *config_failure_mode_name(enum tg_failure_mode m);
const char *config_count_mode_name(enum tg_count_mode m);
const char *config_provider_type_name(enum tg_provider_type t);
const char *config_limit_by_name(enum tg_limit_by b);     /* "limit_by_per_header" ... */

/* Does the CIDR contain the address (AF_INET: 4 bytes, AF_INET6: 16 bytes;
 * an IPv4-mapped IPv6 address matches IPv4 CIDRs)? */
int  config_cidr_match(const struct tg_cidr *c, int family, const void *addr);

#endif
