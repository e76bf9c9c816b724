/* config_yaml.h -- private to agent/config*.c: the generic layer under the
 * configuration loader.
 *
 * Owns: arenas (every allocation of a load lives in one of two arenas, so an
 * error anywhere frees everything at once), error reporting (a failure
 * formats the message and longjmps back to the loader), and the YAML text ->
 * tree step with ${VAR} substitution of scalar values.
 */
#ifndef TOLLGATE_CONFIG_YAML_H
#define TOLLGATE_CONFIG_YAML_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

struct cy_ctx;

struct cy_chunk;
struct cy_arena {
	struct cy_chunk *head;
	struct cy_ctx *cx;        /* where to report out-of-memory; NULL: abort() */
};

void *cy_alloc(struct cy_arena *a, size_t n);             /* zeroed */
char *cy_strndup(struct cy_arena *a, const char *s, size_t n);
char *cy_strdup(struct cy_arena *a, const char *s);
char *cy_printf(struct cy_arena *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void  cy_arena_free(struct cy_arena *a);

enum cy_type { CY_SCALAR, CY_MAP, CY_SEQ };

struct cy_node {
	enum cy_type type;
	const char *path;         /* "routes[0].plugins.ai-quota" ("" for the root) */
	int line;                 /* 1-based */
	const char *str;          /* scalar: value after substitution */
	size_t len;               /* its length */
	bool null;                /* scalar written as null: "", ~, null (plain) */
	size_t n;                 /* map entries / seq items */
	const char **keys;        /* map: keys as written (not substituted) */
	struct cy_node **kids;    /* map values / seq items */
};

struct cy_ctx {
	jmp_buf jb;
	char *err;
	size_t errlen;
	const char *name;         /* file name for syntax errors */
	struct cy_arena tree;     /* the tree: freed at the end of the load */
	yaml_parser_t parser;
	bool parser_live;
	yaml_event_t ev;
	bool ev_live;
	size_t nodes;             /* alias expansion budget */
	void *user;               /* the loader's own state */
};

/* Format "path: message" (just "message" when path is NULL) into cx->err and
 * return to the loader's setjmp. */
_Noreturn void cy_fail(struct cy_ctx *cx, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Parse text into a tree (in cx->tree). An empty document is an empty map. */
struct cy_node *cy_parse(struct cy_ctx *cx, const char *text, size_t len);

/* Substitute ${VAR}, ${VAR:-default}, ${VAR-default} and $${ in s. */
char *cy_subst(struct cy_ctx *cx, const char *path, const char *s, size_t len, size_t *outlen);

/* Release the parser / current event if live (after a failure). */
void cy_cleanup(struct cy_ctx *cx);

const char *cy_type_name(const struct cy_node *n);

#endif
