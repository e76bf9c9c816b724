/* config-t.h -- the types of a loaded configuration (agent/config.h loads it).
 *
 * Everything in a struct tg_config is owned by it and freed by config_free():
 * never free or realloc a field on its own. Strings are NUL-terminated and,
 * unless said otherwise, never NULL once loaded (defaults are filled in).
 * Cross references (route -> provider, allow -> consumer, redis -> service)
 * are resolved at load time into pointers inside the same config.
 *
 * The YAML names are the public contract of doc DESIGN.md "The config
 * contract"; the comment on each field gives its YAML name when it differs
 * and its default.
 */
#ifndef TOLLGATE_CONFIG_T_H
#define TOLLGATE_CONFIG_T_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- enums */

enum tg_failure_mode {          /* what to do when the store is unavailable */
	TG_FAIL_LOCAL = 0,      /* "local": enforce in-process, this instance's share */
	TG_FAIL_OPEN,           /* "open": admit (counted) */
	TG_FAIL_CLOSED,         /* "closed": refuse (503) */
};

enum tg_count_mode {            /* which tokens a limit or a quota counts */
	TG_COUNT_TOTAL = 0,     /* "total": input + output (default) */
	TG_COUNT_INPUT,         /* "input" */
	TG_COUNT_OUTPUT,        /* "output" */
};

enum tg_provider_type {
	TG_PROV_OPENAI = 0,     /* "openai" */
	TG_PROV_AZURE,          /* "azure" */
	TG_PROV_QWEN,           /* "qwen" */
	TG_PROV_DEEPSEEK,       /* "deepseek" */
	TG_PROV_DOUBAO,         /* "doubao" */
	TG_PROV_OPENAI_COMPATIBLE, /* "openai-compatible" */
	TG_PROV_MOCK,           /* "mock": answered locally, deterministic */
};

enum tg_service_type {
	TG_SVC_STATIC = 0,      /* "static": fixed address, referenced as NAME.static */
	TG_SVC_DNS,             /* "dns": resolved name, referenced as NAME.dns */
};

enum tg_limit_by {              /* ai-token-ratelimit rule_items[].limit_by_* */
	TG_LIMIT_BY_HEADER = 0,         /* limit_by_header: NAME */
	TG_LIMIT_BY_PARAM,              /* limit_by_param: NAME */
	TG_LIMIT_BY_CONSUMER,           /* limit_by_consumer: "" */
	TG_LIMIT_BY_COOKIE,             /* limit_by_cookie: NAME */
	TG_LIMIT_BY_PER_HEADER,         /* limit_by_per_header: NAME */
	TG_LIMIT_BY_PER_PARAM,          /* limit_by_per_param: NAME */
	TG_LIMIT_BY_PER_CONSUMER,       /* limit_by_per_consumer: "" */
	TG_LIMIT_BY_PER_COOKIE,         /* limit_by_per_cookie: NAME */
	TG_LIMIT_BY_PER_IP,             /* limit_by_per_ip: from-remote-addr | from-header-NAME */
};

enum tg_key_kind {              /* rule_items[].limit_keys[].key */
	TG_KEY_EXACT = 0,       /* the value itself */
	TG_KEY_ANY,             /* "*": every value (per_* rules: one budget per value) */
	TG_KEY_REGEXP,          /* "regexp:RE" (per_* rules), POSIX extended */
	TG_KEY_CIDR,            /* per_ip: "10.0.0.0/8", "::1", "192.168.1.7" */
};

/* ---------------------------------------------------------------- agent */

struct tg_agent_cfg {
	char *listen;            /* "host:port" TCP for SPOP (or "unix:PATH"), default
	                            "127.0.0.1:12345"; NULL if "" */
	char *unix_path;         /* YAML agent.unix: unix socket path for SPOP, default NULL */
	char *http;              /* default "127.0.0.1:8001"; NULL if "" (disabled) */
	char *settle;            /* default "127.0.0.1:12346"; NULL if "" (disabled) */
	char *state_dir;         /* default "/var/lib/tollgate" */
	uint32_t max_frame_size; /* 256 .. 16777216; default haproxy.bufsize (at least 1 MiB) */
	uint32_t max_inflight;   /* frames in flight per connection, default 1024, >= 1 */
	double idle_timeout;     /* seconds ("30s", "500ms", "2m" or a number), default 30 */
	double hello_timeout;    /* default 5 */
	double processing_timeout; /* default 1 */
	double drain_timeout;    /* default 10 */
	int threads;             /* default 1, 1..64 */
	bool debug_messages;     /* default false: enables the tollgate-echo message */
	char *log_level;         /* "error"|"warn"|"info"|"debug", default "info" */
};

/* -------------------------------------------------------------- haproxy */

struct tg_haproxy_timeouts {    /* YAML haproxy.timeouts.*, seconds */
	double connect;          /* default 5 */
	double client;           /* default 60 */
	double server;           /* default 300 (LLM answers are slow) */
	double http_request;     /* default 10 */
	double queue;            /* default 5 */
	double spoe_processing;  /* SPOE "timeout processing", default 0.5 */
	double spoe_hello;       /* SPOE "timeout hello", default 2 */
	double spoe_idle;        /* SPOE "timeout idle", default 30 */
};

struct tg_haproxy_cfg {
	char *listen;            /* gateway frontend bind, default ":8080" */
	char *tls_listen;        /* optional HTTPS bind (e.g. ":8443"), NULL if unset */
	char *tls_cert;          /* PEM for tls_listen; required with it */
	uint32_t bufsize;        /* tune.bufsize, 16384 .. CONFIG_BUFSIZE_MAX; default
	                            max_body + CONFIG_HEADER_ROOM */
	uint32_t max_body;       /* largest request body, default 4 MiB (or bufsize -
	                            CONFIG_HEADER_ROOM when bufsize is set); larger: 413 */
	bool sized;              /* max_body or bufsize given: written as is; else
	                            HAProxy 2.6 without the glibc setting runs with
	                            CONFIG_MAX_BODY_SMALL (render.c) */
	uint32_t maxconn;        /* default 4096, >= 1 */
	int nbthread;            /* 0 (default): HAProxy chooses; else 1..64 */
	int failure_status;      /* status when no verdict arrives and on_agent_error is
	                            closed, default 503 (400..599) */
	enum tg_failure_mode on_agent_error; /* YAML on_agent_error: closed (default) | open */
	char *stats_socket;      /* optional admin socket path, NULL if unset */
	char *settle_bind;       /* where HAProxy's CLI for the agent's settlement reader
	                            binds; NULL: agent.settle (docker: "0.0.0.0:12346") */
	char *user, *group;      /* HAProxy drops privileges to these; NULL if unset */
	char *chroot;            /* HAProxy's jail ("auto": 3.4+ only); NULL if unset */
	char *spoe_backend_addr; /* where HAProxy reaches the agent; default derived from
	                            agent.listen (NULL here means "derive") */
	struct tg_haproxy_timeouts timeouts;
};

/* ---------------------------------------------------------------- store */

#define TG_SENTINELS_MAX 8

struct tg_store_cfg {
	char *redis;             /* the URL as written; NULL: embedded store */
	char *host;              /* parsed from redis: host (no brackets for IPv6) */
	uint16_t port;           /* default 6379 */
	char *username;          /* NULL unless "redis://user:pass@..." */
	char *password;          /* NULL unless given */
	int db;                  /* default 0 */
	/* "redis-sentinel://[[user]:password@]h1[:26379][,h2...]/MASTER[/db]":
	 * the master is asked of these sentinels (host/port: the first one);
	 * user and password are the master's. n_sentinels 0: host is Redis. */
	char *sentinel_master;
	unsigned n_sentinels;
	struct tg_sentinel { char *host; uint16_t port; } sentinels[TG_SENTINELS_MAX];
	uint32_t timeout_ms;     /* deadline of every store call, default 50 */
	enum tg_failure_mode failure_mode; /* default local */
	uint32_t lease_ms;       /* YAML lease_ttl: reservation lease, default 600000 (10m) */
	uint32_t breaker_threshold; /* consecutive failures opening the breaker, default 5 */
	uint32_t breaker_cooldown_ms; /* YAML breaker_cooldown: default 1000 */
	uint32_t instances;      /* agents sharing the store, default 1: with failure_mode
	                            local each enforces 1/instances of every rate limit */
};

/* ------------------------------------------------------------- services */

struct tg_service {
	char *name;              /* unique */
	enum tg_service_type type;
	char *address;           /* "host:port" as written, or "embedded" */
	char *host;              /* parsed ("" when embedded) */
	uint16_t port;           /* 0 when embedded */
	bool embedded;           /* address "embedded" (static only): plugins naming
	                            this service use the agent's embedded store, so the
	                            seed's verbatim redis blocks run without a Redis */
	char *protocol;          /* "http" (default) | "https" | "tcp": informational */
};

/* ------------------------------------------------------------ providers */

struct tg_model_map {           /* model_mapping entry */
	char *from;              /* exact name, a glob ("gpt-4*") or "*" */
	char *to;                /* "" keeps the requested model */
};

struct tg_provider {
	char *name;              /* unique */
	enum tg_provider_type type;
	char *base_url;          /* default per type (openai, qwen, deepseek, doubao);
	                            required for azure and openai-compatible; mock: "" */
	char *scheme;            /* "http" | "https" (parsed from base_url; "" for mock) */
	char *host;              /* parsed from base_url */
	uint16_t port;           /* explicit or 80/443 */
	char *base_path;         /* path part of base_url, without trailing '/', may be "" */
	char **api_keys;         /* n_api_keys entries; empty strings (unset ${VAR}) dropped */
	size_t n_api_keys;
	struct tg_model_map *model_mapping;
	size_t n_model_mapping;
	char *api_version;       /* azure: default "2024-02-01"; NULL for others */
	char *deployment;        /* azure: optional deployment name (else the model) */
	double timeout;          /* upstream timeout in seconds, default 0 = haproxy.timeouts.server */
};

/* ------------------------------------------------------------ consumers */

struct tg_consumer {
	char *name;              /* unique */
	char **credentials;      /* YAML credential (one) and/or credentials (list);
	                            >= 1, non-empty, unique across consumers */
	size_t n_credentials;
};

struct tg_key_auth_cfg {        /* Higress key-auth global fields */
	char **keys;             /* default ["x-api-key", "authorization"]; the value of
	                            "authorization" is read as "Bearer <key>" */
	size_t n_keys;
	bool in_header;          /* default true */
	bool in_query;           /* default false */
	bool global_auth;        /* default false: only routes with auth.enabled */
};

/* --------------------------------------------------------------- plugins */

struct tg_model_weight {        /* weights: { MODEL: { input: X, output: Y } } */
	char *model;             /* exact name, glob, or "*" */
	double input;            /* default 1, >= 0 */
	double output;           /* default 1, >= 0 */
};

struct tg_redis_ref {           /* a plugin's redis block */
	bool present;            /* the block was written */
	char *service_name;      /* NULL: the plugin uses `store` */
	const struct tg_service *service; /* resolved service_name, or NULL */
	uint32_t service_port;   /* default 80 for static services, else 6379 (for
	                            static services the address in `services` wins) */
	uint32_t timeout_ms;     /* YAML timeout (ms), default 1000: Higress's value, kept
	                            as written; the agent's per-call deadline stays
	                            store.timeout_ms (under SPOE's processing timeout) */
	char *username;          /* NULL if unset */
	char *password;          /* NULL if unset */
	int database;            /* default 0 */
};

struct tg_ai_quota {            /* routes[].plugins.ai-quota */
	char *redis_key_prefix;  /* default "chat_quota:" */
	char *admin_consumer;    /* required: names a consumer */
	const struct tg_consumer *admin;
	char *admin_path;        /* default "/quota" */
	struct tg_redis_ref redis;
	/* our extras */
	enum tg_count_mode count;        /* default total */
	struct tg_model_weight *weights; size_t n_weights;
	bool strict;                     /* default false */
	enum tg_failure_mode failure_mode; /* default: store.failure_mode */
};

struct tg_token_limits {        /* token_per_second|minute|hour|day; 0 = not set */
	uint64_t per_second, per_minute, per_hour, per_day;
};

struct tg_cidr {
	int family;              /* AF_INET or AF_INET6 */
	uint8_t addr[16];        /* network address, host bits cleared */
	int prefix;              /* 0..32 or 0..128 */
};

struct tg_limit_key {
	char *key;               /* as written */
	enum tg_key_kind kind;
	const char *pattern;     /* REGEXP: the expression after "regexp:" (inside key) */
	regex_t re;              /* REGEXP: compiled with REG_EXTENDED|REG_NOSUB */
	bool re_compiled;
	struct tg_cidr cidr;     /* CIDR */
	struct tg_token_limits limits; /* at least one set, each > 0 */
};

struct tg_rule_item {
	enum tg_limit_by by;
	char *name;              /* header / param / cookie name; "" for consumer kinds;
	                            for per_ip the value as written */
	char *ip_header;         /* per_ip "from-header-NAME": NAME; NULL = remote addr */
	struct tg_limit_key *keys; size_t n_keys; /* >= 1 */
};

struct tg_ai_token_ratelimit {  /* routes[].plugins.ai-token-ratelimit */
	char *rule_name;         /* required */
	bool has_global;         /* global_threshold given (exclusive with rule_items) */
	struct tg_token_limits global_threshold;
	struct tg_rule_item *rule_items; size_t n_rule_items;
	int rejected_code;       /* default 429 (400..599) */
	char *rejected_msg;      /* default "Too many requests" */
	struct tg_redis_ref redis;
	/* our extras */
	enum tg_count_mode count;        /* default total */
	struct tg_model_weight *weights; size_t n_weights;
	bool strict;                     /* default false: admit while used + reserved < limit */
	bool clamp_max_tokens;           /* default false */
	enum tg_failure_mode failure_mode; /* default: store.failure_mode */
};

/* --------------------------------------------------------------- routes */

struct tg_route_auth {
	bool enabled;            /* default false without an auth block, true with one */
	char **allow;            /* consumer names; empty: any authenticated consumer */
	size_t n_allow;
	const struct tg_consumer **allow_c; /* resolved, n_allow entries */
};

struct tg_route {
	char *name;              /* unique */
	char *provider_name;     /* YAML provider */
	const struct tg_provider *provider;
	char **models;           /* globs, default ["*"] */
	size_t n_models;
	char **paths;            /* path prefixes ("/v1/chat/completions"); empty: any */
	size_t n_paths;
	struct tg_route_auth auth;
	struct tg_ai_quota *quota;               /* plugins.ai-quota, NULL if absent */
	struct tg_ai_token_ratelimit *ratelimit; /* plugins.ai-token-ratelimit, NULL if absent */
};

/* ---------------------------------------------------------------- config */

struct tg_config {
	struct tg_agent_cfg agent;
	struct tg_haproxy_cfg haproxy;
	struct tg_store_cfg store;
	struct tg_service *services;   size_t n_services;
	struct tg_provider *providers; size_t n_providers;
	struct tg_consumer *consumers; size_t n_consumers;
	struct tg_key_auth_cfg key_auth;
	struct tg_route *routes;       size_t n_routes;
	char *path;                    /* the file it was loaded from */
	void *arena;                   /* private: owns every allocation above */
};

#endif
