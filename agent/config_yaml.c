/* config_yaml.c -- arenas, failures, YAML text -> tree, ${VAR} substitution.
 * See config_yaml.h. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_yaml.h"

#define CY_MAX_DEPTH  64
#define CY_MAX_NODES  200000
#define CY_MAX_SUBST_DEPTH 8

/* ---------------------------------------------------------------- arena */

struct cy_chunk {
	struct cy_chunk *next;
	size_t used, cap;
	max_align_t data[];
};

void *cy_alloc(struct cy_arena *a, size_t n)
{
	struct cy_chunk *c = a->head;
	size_t al = sizeof(max_align_t);

	n = (n + al - 1) / al * al;
	if (n == 0)
		n = al;
	if (!c || c->cap - c->used < n) {
		size_t cap = n > 8192 ? n : 8192;

		c = malloc(sizeof(*c) + cap);
		if (!c) {
			if (a->cx)
				cy_fail(a->cx, NULL, "out of memory");
			abort();
		}
		c->cap = cap;
		c->used = 0;
		/* A big block goes behind the current one so the current one
		 * keeps serving small allocations. */
		if (a->head && n > 4096) {
			c->next = a->head->next;
			a->head->next = c;
		} else {
			c->next = a->head;
			a->head = c;
		}
	}
	void *p = (char *)c->data + c->used;
	c->used += n;
	memset(p, 0, n);
	return p;
}

char *cy_strndup(struct cy_arena *a, const char *s, size_t n)
{
	char *p = cy_alloc(a, n + 1);

	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

char *cy_strdup(struct cy_arena *a, const char *s)
{
	return s ? cy_strndup(a, s, strlen(s)) : NULL;
}

char *cy_printf(struct cy_arena *a, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;
	char *p;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n < sizeof(tmp))
		return cy_strndup(a, tmp, (size_t)n);
	p = cy_alloc(a, (size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return p;
}

void cy_arena_free(struct cy_arena *a)
{
	struct cy_chunk *c = a->head, *next;

	for (; c; c = next) {
		next = c->next;
		free(c);
	}
	a->head = NULL;
}

/* -------------------------------------------------------------- failure */

_Noreturn void cy_fail(struct cy_ctx *cx, const char *path, const char *fmt, ...)
{
	va_list ap;
	size_t off = 0;

	if (cx->errlen) {
		if (path) {
			int n = snprintf(cx->err, cx->errlen, "%s: ", *path ? path : "(top level)");
			off = n < 0 ? 0 : (size_t)n >= cx->errlen ? cx->errlen - 1 : (size_t)n;
		}
		va_start(ap, fmt);
		vsnprintf(cx->err + off, cx->errlen - off, fmt, ap);
		va_end(ap);
	}
	longjmp(cx->jb, 1);
}

void cy_cleanup(struct cy_ctx *cx)
{
	if (cx->ev_live) {
		yaml_event_delete(&cx->ev);
		cx->ev_live = false;
	}
	if (cx->parser_live) {
		yaml_parser_delete(&cx->parser);
		cx->parser_live = false;
	}
}

const char *cy_type_name(const struct cy_node *n)
{
	if (!n)
		return "nothing";
	switch (n->type) {
	case CY_MAP: return "a mapping";
	case CY_SEQ: return "a list";
	default:     return n->null ? "null" : "a scalar";
	}
}

/* --------------------------------------------------------- substitution */

struct sbuf {
	struct cy_arena *a;
	char *p;
	size_t len, cap;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		p = cy_alloc(b->a, cap);
		if (b->len)
			memcpy(p, b->p, b->len);
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static bool name_start(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool name_char(char c)
{
	return name_start(c) || (c >= '0' && c <= '9');
}

static void subst_into(struct cy_ctx *cx, struct sbuf *b, const char *path,
                       const char *s, size_t len, int depth)
{
	size_t i = 0;

	if (depth > CY_MAX_SUBST_DEPTH)
		cy_fail(cx, path, "${...} defaults nested too deeply");
	while (i < len) {
		if (s[i] == '$' && i + 2 < len && s[i + 1] == '$' && s[i + 2] == '{') {
			sb_put(b, "${", 2);
			i += 3;
			continue;
		}
		if (!(s[i] == '$' && i + 1 < len && s[i + 1] == '{')) {
			size_t j = i + 1;

			while (j < len && s[j] != '$')
				j++;
			sb_put(b, s + i, j - i);
			i = j;
			continue;
		}
		/* ${NAME...} */
		size_t ns = i + 2, ne = ns;

		while (ne < len && name_char(s[ne]))
			ne++;
		if (ne == ns || !name_start(s[ns]))
			cy_fail(cx, path, "bad variable reference: ${ must be followed by a "
			        "name ([A-Za-z_][A-Za-z0-9_]*)");
		if (ne >= len)
			cy_fail(cx, path, "unterminated ${%.*s", (int)(ne - ns), s + ns);
		char name[256];

		if (ne - ns >= sizeof(name))
			cy_fail(cx, path, "variable name too long");
		memcpy(name, s + ns, ne - ns);
		name[ne - ns] = 0;
		const char *val = getenv(name);

		if (s[ne] == '}') {
			if (val)
				sb_put(b, val, strlen(val));
			i = ne + 1;
			continue;
		}
		bool colon = false;
		size_t d = ne;

		if (s[d] == ':' && d + 1 < len && s[d + 1] == '-') {
			colon = true;
			d += 2;
		} else if (s[d] == '-') {
			d += 1;
		} else {
			cy_fail(cx, path, "bad variable reference ${%s...}: expected '}', ':-' or '-'",
			        name);
		}
		/* the default runs to the matching '}' (nested ${...} allowed) */
		size_t e = d;
		int nest = 0;

		for (; e < len; e++) {
			if (s[e] == '$' && e + 1 < len && s[e + 1] == '{') {
				nest++;
				e++;
			} else if (s[e] == '}') {
				if (nest == 0)
					break;
				nest--;
			}
		}
		if (e >= len)
			cy_fail(cx, path, "unterminated ${%s", name);
		if (val && (!colon || *val))
			sb_put(b, val, strlen(val));
		else
			subst_into(cx, b, path, s + d, e - d, depth + 1);
		i = e + 1;
	}
}

char *cy_subst(struct cy_ctx *cx, const char *path, const char *s, size_t len, size_t *outlen)
{
	struct sbuf b = { &cx->tree, NULL, 0, 0 };

	sb_put(&b, "", 0);
	subst_into(cx, &b, path, s, len, 0);
	if (outlen)
		*outlen = b.len;
	return b.p;
}

/* ---------------------------------------------------------------- parse */

struct anchor {
	const char *name;
	struct cy_node *node;
	struct anchor *next;
};

struct pstate {
	struct cy_ctx *cx;
	struct anchor *anchors;
};

static _Noreturn void syntax_fail(struct cy_ctx *cx)
{
	yaml_parser_t *p = &cx->parser;
	const char *what = p->problem ? p->problem : "YAML syntax error";
	size_t line = p->problem_mark.line + 1;

	if (p->error == YAML_MEMORY_ERROR)
		cy_fail(cx, NULL, "%s: out of memory", cx->name);
	if (p->context)
		cy_fail(cx, NULL, "%s:%zu: %s %s", cx->name, line, what, p->context);
	cy_fail(cx, NULL, "%s:%zu: %s", cx->name, line, what);
}

static void next_event(struct cy_ctx *cx)
{
	if (cx->ev_live) {
		yaml_event_delete(&cx->ev);
		cx->ev_live = false;
	}
	if (!yaml_parser_parse(&cx->parser, &cx->ev))
		syntax_fail(cx);
	cx->ev_live = true;
}

static struct cy_node *new_node(struct cy_ctx *cx, enum cy_type t, const char *path, int line)
{
	struct cy_node *n;

	if (++cx->nodes > CY_MAX_NODES)
		cy_fail(cx, NULL, "%s:%d: more than %d YAML nodes (alias expansion?)",
		        cx->name, line, CY_MAX_NODES);
	n = cy_alloc(&cx->tree, sizeof(*n));
	n->type = t;
	n->path = path;
	n->line = line;
	n->str = "";
	return n;
}

static const char *join_key(struct cy_ctx *cx, const char *parent, const char *key)
{
	return *parent ? cy_printf(&cx->tree, "%s.%s", parent, key) : cy_strdup(&cx->tree, key);
}

static const char *join_idx(struct cy_ctx *cx, const char *parent, size_t i)
{
	return cy_printf(&cx->tree, "%s[%zu]", parent, i);
}

static void add_kid(struct cy_ctx *cx, struct cy_node *n, size_t *cap, const char *key,
                    struct cy_node *kid)
{
	if (n->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 4;
		struct cy_node **kids = cy_alloc(&cx->tree, nc * sizeof(*kids));
		const char **keys = cy_alloc(&cx->tree, nc * sizeof(*keys));

		if (n->n) {
			memcpy(kids, n->kids, n->n * sizeof(*kids));
			memcpy(keys, n->keys, n->n * sizeof(*keys));
		}
		n->kids = kids;
		n->keys = keys;
		*cap = nc;
	}
	n->keys[n->n] = key;
	n->kids[n->n++] = kid;
}

/* A copy of n (an alias target) placed at path. */
static struct cy_node *copy_node(struct cy_ctx *cx, const struct cy_node *n, const char *path,
                                 int line)
{
	struct cy_node *c = new_node(cx, n->type, path, line);
	size_t cap = 0;

	c->str = n->str;
	c->len = n->len;
	c->null = n->null;
	for (size_t i = 0; i < n->n; i++) {
		const char *kp = n->type == CY_MAP ? join_key(cx, path, n->keys[i])
		                                   : join_idx(cx, path, i);
		add_kid(cx, c, &cap, n->keys[i], copy_node(cx, n->kids[i], kp, line));
	}
	return c;
}

static void add_anchor(struct pstate *ps, const yaml_char_t *name, struct cy_node *n)
{
	struct anchor *a;

	if (!name)
		return;
	a = cy_alloc(&ps->cx->tree, sizeof(*a));
	a->name = cy_strdup(&ps->cx->tree, (const char *)name);
	a->node = n;
	a->next = ps->anchors;
	ps->anchors = a;
}

static bool is_null_text(const char *s, size_t n)
{
	return n == 0 || (n == 1 && s[0] == '~') ||
	       (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

/* Build the node whose first event is cx->ev. */
static struct cy_node *load_node(struct pstate *ps, const char *path, int depth)
{
	struct cy_ctx *cx = ps->cx;
	yaml_event_t *ev = &cx->ev;
	int line = (int)ev->start_mark.line + 1;
	struct cy_node *n;
	const char *anchor = NULL;
	size_t cap = 0;

	if (depth > CY_MAX_DEPTH)
		cy_fail(cx, NULL, "%s:%d: nesting deeper than %d levels", cx->name, line, CY_MAX_DEPTH);
	switch (ev->type) {
	case YAML_ALIAS_EVENT: {
		const char *name = (const char *)ev->data.alias.anchor;

		for (struct anchor *a = ps->anchors; a; a = a->next)
			if (strcmp(a->name, name) == 0)
				return copy_node(cx, a->node, path, line);
		cy_fail(cx, NULL, "%s:%d: unknown alias *%s", cx->name, line, name);
	}
	case YAML_SCALAR_EVENT: {
		const char *raw = (const char *)ev->data.scalar.value;
		size_t rlen = ev->data.scalar.length;

		n = new_node(cx, CY_SCALAR, path, line);
		if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !ev->data.scalar.tag &&
		    is_null_text(raw, rlen)) {
			n->null = true;
		} else {
			n->str = cy_subst(cx, path, raw, rlen, &n->len);
		}
		if (ev->data.scalar.anchor)
			add_anchor(ps, ev->data.scalar.anchor, n);
		return n;
	}
	case YAML_SEQUENCE_START_EVENT:
		n = new_node(cx, CY_SEQ, path, line);
		if (ev->data.sequence_start.anchor)
			anchor = cy_strdup(&cx->tree, (const char *)ev->data.sequence_start.anchor);
		for (;;) {
			next_event(cx);
			if (cx->ev.type == YAML_SEQUENCE_END_EVENT)
				break;
			add_kid(cx, n, &cap, NULL, load_node(ps, join_idx(cx, path, n->n), depth + 1));
		}
		break;
	case YAML_MAPPING_START_EVENT:
		n = new_node(cx, CY_MAP, path, line);
		if (ev->data.mapping_start.anchor)
			anchor = cy_strdup(&cx->tree, (const char *)ev->data.mapping_start.anchor);
		for (;;) {
			next_event(cx);
			if (cx->ev.type == YAML_MAPPING_END_EVENT)
				break;
			if (cx->ev.type != YAML_SCALAR_EVENT)
				cy_fail(cx, NULL, "%s:%d: mapping keys must be scalars", cx->name,
				        (int)cx->ev.start_mark.line + 1);
			const char *key = cy_strndup(&cx->tree, (const char *)cx->ev.data.scalar.value,
			                             cx->ev.data.scalar.length);
			const char *kpath = join_key(cx, path, key);

			if (strcmp(key, "<<") == 0)
				cy_fail(cx, kpath, "merge keys (<<) are not supported");
			for (size_t i = 0; i < n->n; i++)
				if (strcmp(n->keys[i], key) == 0)
					cy_fail(cx, kpath, "duplicate key (also on line %d)",
					        n->kids[i]->line);
			next_event(cx);
			add_kid(cx, n, &cap, key, load_node(ps, kpath, depth + 1));
		}
		break;
	default:
		cy_fail(cx, NULL, "%s:%d: unexpected YAML event", cx->name, line);
	}
	if (anchor)
		add_anchor(ps, (const yaml_char_t *)anchor, n);
	return n;
}

struct cy_node *cy_parse(struct cy_ctx *cx, const char *text, size_t len)
{
	struct pstate ps = { cx, NULL };
	struct cy_node *root = NULL;

	if (!yaml_parser_initialize(&cx->parser))
		cy_fail(cx, NULL, "%s: out of memory", cx->name);
	cx->parser_live = true;
	yaml_parser_set_input_string(&cx->parser, (const unsigned char *)text, len);
	next_event(cx);                     /* STREAM-START */
	next_event(cx);
	if (cx->ev.type == YAML_DOCUMENT_START_EVENT) {
		next_event(cx);
		root = load_node(&ps, "", 0);
		next_event(cx);             /* DOCUMENT-END */
		next_event(cx);
		if (cx->ev.type != YAML_STREAM_END_EVENT)
			cy_fail(cx, NULL, "%s:%d: only one YAML document is allowed", cx->name,
			        (int)cx->ev.start_mark.line + 1);
	}
	cy_cleanup(cx);
	if (!root || (root->type == CY_SCALAR && root->null))
		root = new_node(cx, CY_MAP, "", 1);
	if (root->type != CY_MAP)
		cy_fail(cx, NULL, "%s:%d: the configuration must be a mapping, not %s", cx->name,
		        root->line, cy_type_name(root));
	return root;
}
