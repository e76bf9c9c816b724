/* meter.c -- see meter.h.
 *
 * Request bodies may be megabytes (whole prompts, base64 images): they are
 * read in one pass by json_scan.c, which validates the text, hands over the
 * top-level members as spans and estimates the prompt on the way; no tree is
 * built. A rewrite splices the few changed values into a copy of the
 * original bytes. Response bodies may arrive cut (SPOP only carries what
 * fits in HAProxy's buffer): the `usage` member is found the same way and
 * only it is parsed with cJSON; a cut body is searched for the last
 * `"usage"` key followed by its numbers (providers put usage at the end).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_scan.h"
#include "meter.h"

int64_t meter_estimate_text(const char *s, size_t len)
{
	int64_t ascii = 0, other = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x80)
			ascii++;
		else if ((c & 0xC0) != 0x80)    /* a lead byte starts a code point */
			other++;
	}
	return (ascii + 3) / 4 + other;
}

/* A JSON number as a token count: -1 if negative or not a number, at most
 * TOKENS_MAX (a double past INT64_MAX has no int64_t value). */
#define TOKENS_MAX 1000000000000000LL
static int64_t tokens_of(double d)
{
	if (!(d >= 0))
		return -1;
	return d >= (double)TOKENS_MAX ? TOKENS_MAX : (int64_t)d;
}

static int64_t json_count(const cJSON *v)
{
	return cJSON_IsNumber(v) ? tokens_of(v->valuedouble) : -1;
}

/* ------------------------------------------------------------ member names */

/* The names of one object's members, to find one named twice. Parsers
 * disagree on which one wins (cJSON: the first; Python and most providers:
 * the last), so a body with {"model":"cheap","model":"dear"} could be routed
 * and charged as one model and served as the other. Sorted, O(n log n): a
 * body of 10^4 members must not hold the event loop. Names with escapes are
 * compared decoded. Out of memory: treated as ambiguous. */
struct name_ref {
	const char *p;
	size_t len;
	char *own;              /* the decoded copy of an escaped name */
};

struct names {
	struct name_ref *v, local[32];
	size_t n, cap;
	bool oom;
};

static void names_init(struct names *s)
{
	s->v = s->local;
	s->n = 0;
	s->cap = sizeof(s->local) / sizeof(*s->local);
	s->oom = false;
}

static void names_add(struct names *s, const struct json_name *jn)
{
	struct name_ref r = { jn->p, jn->len, NULL };

	if (s->oom)
		return;
	if (s->n == s->cap) {
		struct name_ref *nv = malloc(2 * s->cap * sizeof(*nv));

		if (!nv) {
			s->oom = true;
			return;
		}
		memcpy(nv, s->v, s->n * sizeof(*nv));
		if (s->v != s->local)
			free(s->v);
		s->v = nv;
		s->cap *= 2;
	}
	if (jn->escaped) {
		if (!(r.own = malloc(jn->len + 1))) {
			s->oom = true;
			return;
		}
		r.len = json_name_copy(jn, r.own, jn->len + 1);
		r.p = r.own;
	}
	s->v[s->n++] = r;
}

static int cmp_names(const void *a, const void *b)
{
	const struct name_ref *x = a, *y = b;
	int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);

	return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Is a name there twice? Frees the list. */
static bool names_done(struct names *s)
{
	bool dup = s->oom;

	if (!dup && s->n > 1) {
		qsort(s->v, s->n, sizeof(*s->v), cmp_names);
		for (size_t i = 1; i < s->n && !dup; i++)
			dup = cmp_names(&s->v[i - 1], &s->v[i]) == 0;
	}
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i].own);
	if (s->v != s->local)
		free(s->v);
	return dup;
}

/* ------------------------------------------------------------ request scan */

static const char *const caps[] = { "max_tokens", "max_completion_tokens",
                                    "max_output_tokens" };
#define N_CAPS (sizeof(caps) / sizeof(*caps))

struct span {
	const char *p, *end;    /* a member's value; p NULL when absent */
};

/* The value of a member that holds a number (validated by the scan). */
static bool span_number(struct span sp, double *d)
{
	if (!sp.p || !(*sp.p == '-' || (*sp.p >= '0' && *sp.p <= '9')))
		return false;
	*d = json_number(sp.p, sp.end);
	return true;
}

/* What a request body holds, as spans into it (the first of each name). */
struct req_scan {
	bool json;              /* one JSON object and nothing after it */
	bool dup;               /* a top-level name twice */
	bool stream;
	struct span model, stream_options, cap[N_CAPS];
	const char *close;      /* the object's closing '}' */
	bool empty;
	int64_t prompt;         /* estimate over messages, prompt, input, instructions */
};

static void scan_request(const char *body, size_t len, struct req_scan *s, bool estimate)
{
	static const char *const prompt_fields[] = { "messages", "prompt", "input", "instructions" };
	const char *end = body + len;
	struct json_obj o;
	struct json_name n;
	struct names names;
	bool seen_stream = false;
	int rc;

	memset(s, 0, sizeof(*s));
	if (!json_obj_open(&o, json_ws(body, end), end))
		return;
	names_init(&names);
	while ((rc = json_obj_key(&o, &n)) == 1) {
		const char *v = o.p, *e;
		int64_t est = 0;
		bool prompt = false;

		names_add(&names, &n);
		for (unsigned i = 0; estimate && !prompt && i < 4; i++)
			prompt = json_name_is(&n, prompt_fields[i]);
		if (!(e = json_value_end(v, end, prompt ? &est : NULL))) {
			rc = -1;
			break;
		}
		o.p = e;
		s->prompt += est;
		if (json_name_is(&n, "model")) {
			if (!s->model.p)
				s->model = (struct span){ v, e };
		} else if (json_name_is(&n, "stream")) {
			if (!seen_stream)
				s->stream = *v == 't';
			seen_stream = true;
		} else if (json_name_is(&n, "stream_options")) {
			if (!s->stream_options.p)
				s->stream_options = (struct span){ v, e };
		} else {
			for (unsigned i = 0; i < N_CAPS; i++)
				if (!s->cap[i].p && json_name_is(&n, caps[i]))
					s->cap[i] = (struct span){ v, e };
		}
	}
	s->empty = names.n == 0;
	s->dup = names_done(&names);
	if (rc != 0 || json_ws(o.p, end) != end)
		return;
	s->close = o.p - 1;
	s->json = true;
}

/* stream_options (an object): a name twice? include_usage's value span. */
static bool scan_stream_options(struct span so, struct span *include_usage)
{
	struct json_obj o;
	struct json_name n;
	struct names names;

	include_usage->p = NULL;
	if (!so.p || !json_obj_open(&o, so.p, so.end))
		return false;
	names_init(&names);
	while (json_obj_key(&o, &n) == 1) {
		const char *e = json_value_end(o.p, so.end, NULL);

		names_add(&names, &n);
		if (!include_usage->p && json_name_is(&n, "include_usage"))
			*include_usage = (struct span){ o.p, e };
		o.p = e;
	}
	return names_done(&names);
}

void meter_parse_request(const char *body, size_t len, struct llm_request *r)
{
	struct req_scan s;
	struct span iu;

	memset(r, 0, sizeof(*r));
	r->max_tokens = -1;
	scan_request(body, len, &s, true);
	if (!s.json) {
		r->prompt_tokens = meter_estimate_text(body, len);
		return;
	}
	r->json = true;
	r->duplicate_key = scan_stream_options(s.stream_options, &iu) || s.dup;
	r->include_usage = iu.p && *iu.p == 't';
	if (s.model.p && *s.model.p == '"')
		json_string_copy(s.model.p, s.model.end, r->model, sizeof(r->model));
	r->stream = s.stream;
	for (unsigned i = 0; i < N_CAPS && r->max_tokens < 0; i++) {
		double d;

		if (span_number(s.cap[i], &d))
			r->max_tokens = tokens_of(d);
	}
	r->prompt_tokens = s.prompt ? s.prompt : 1;
}

static int64_t num_after(const char *p, const char *end, const char *key)
{
	size_t klen = strlen(key);
	const char *q = p;

	while ((q = memmem(q, (size_t)(end - q), key, klen))) {
		const char *s = q + klen;

		while (s < end && (*s == ' ' || *s == '"' || *s == ':' || *s == '\t' || *s == '\n'))
			s++;
		if (s < end && *s >= '0' && *s <= '9') {
			int64_t v = 0;

			while (s < end && *s >= '0' && *s <= '9' && v < INT64_MAX / 10)
				v = v * 10 + (*s++ - '0');
			return v;
		}
		q += klen;
	}
	return -1;
}

/* Scan the bytes after the last `"usage"` key up to its closing brace. */
static void scan_usage(const char *body, size_t len, struct llm_usage *u)
{
	const char *end = body + len, *last = NULL, *q = body, *close;
	int64_t in, out;

	while ((q = memmem(q, (size_t)(end - q), "\"usage\"", 7))) {
		last = q;
		q += 7;
	}
	if (!last)
		return;
	close = memchr(last, '}', (size_t)(end - last));
	if (!close)
		return;
	in = num_after(last, close, "\"prompt_tokens\"");
	if (in < 0)
		in = num_after(last, close, "\"input_tokens\"");
	out = num_after(last, close, "\"completion_tokens\"");
	if (out < 0)
		out = num_after(last, close, "\"output_tokens\"");
	if (in < 0 && out < 0)
		return;
	u->found = true;
	u->in = in < 0 ? 0 : in;
	u->out = out < 0 ? 0 : out;
}

static int64_t get_int(const cJSON *o, const char *a, const char *b)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);

	if (!cJSON_IsNumber(v) && b)
		v = cJSON_GetObjectItemCaseSensitive(o, b);
	return json_count(v);
}

/* The first member named name of the object at p: its value's span. */
static bool member(const char *p, const char *end, const char *name, struct span *out)
{
	struct json_obj o;
	struct json_name n;

	if (!json_obj_open(&o, p, end))
		return false;
	while (json_obj_key(&o, &n) == 1) {
		const char *e = json_value_end(o.p, end, NULL);

		if (!e)
			return false;
		if (json_name_is(&n, name)) {
			*out = (struct span){ o.p, e };
			return true;
		}
		o.p = e;
	}
	return false;
}

void meter_parse_usage(const char *body, size_t len, struct llm_usage *u)
{
	const char *end = body + len, *p;
	struct span sp, resp;
	cJSON *usage;

	memset(u, 0, sizeof(*u));
	if (!body || !len)
		return;
	p = json_ws(body, end);
	if (!json_value_end(p, end, NULL) || *p != '{') {      /* cut, or not an object */
		scan_usage(body, len, u);
		return;
	}
	/* Responses API streams nest it: {"response":{"usage":...}} */
	if (!member(p, end, "usage", &sp) &&
	    !(member(p, end, "response", &resp) && member(resp.p, resp.end, "usage", &sp)))
		return;
	usage = cJSON_ParseWithLength(sp.p, (size_t)(sp.end - sp.p));
	if (cJSON_IsObject(usage)) {
		int64_t in = get_int(usage, "prompt_tokens", "input_tokens");
		int64_t out = get_int(usage, "completion_tokens", "output_tokens");
		int64_t total = get_int(usage, "total_tokens", NULL);

		if (in >= 0 || out >= 0 || total >= 0) {
			u->found = true;
			u->in = in >= 0 ? in : 0;
			u->out = out >= 0 ? out : (total > u->in ? total - u->in : 0);
		}
	}
	cJSON_Delete(usage);
}

/* ------------------------------------------------------------ rewrite */

/* One change to the original bytes: del bytes at off become ins. */
struct edit {
	size_t off, del;
	const char *ins;
	size_t ins_len;
};

struct edits {
	struct edit e[8];
	unsigned n;
	char *arena;            /* the inserted text */
	size_t used, cap;
};

static void edit_add(struct edits *ed, size_t off, size_t del, const char *fmt_text, size_t n)
{
	struct edit *e = &ed->e[ed->n++];

	memcpy(ed->arena + ed->used, fmt_text, n);
	*e = (struct edit){ off, del, ed->arena + ed->used, n };
	ed->used += n;
}

/* A JSON string of s, quotes included, into out (6 * strlen + 3 bytes). */
static size_t json_quote(const char *s, char *out)
{
	size_t n = 0;

	out[n++] = '"';
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20) {
			n += (size_t)sprintf(out + n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	out[n++] = '"';
	return n;
}

/* Add the member "name":value at the end of the object. */
static void append_member(struct edits *ed, const struct req_scan *s, const char *body,
                          bool *empty, const char *name, const char *value, size_t vlen)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%s\"%s\":", *empty ? "" : ",", name);

	edit_add(ed, (size_t)(s->close - body), 0, buf, (size_t)n);
	edit_add(ed, (size_t)(s->close - body), 0, value, vlen);
	*empty = false;
}

static void replace_span(struct edits *ed, const char *body, struct span sp,
                         const char *value, size_t vlen)
{
	edit_add(ed, (size_t)(sp.p - body), (size_t)(sp.end - sp.p), value, vlen);
}

char *meter_rewrite_request(const char *body, size_t len, bool add_include_usage,
                            const char *new_model, int64_t max_tokens, size_t *out_len)
{
	struct req_scan s;
	struct edits ed = { .n = 0 };
	bool empty;
	char num[32], *out;
	size_t total, at = 0;

	scan_request(body, len, &s, false);
	if (!s.json)
		return NULL;
	empty = s.empty;
	ed.cap = 512 + (new_model ? 6 * strlen(new_model) : 0);
	if (!(ed.arena = malloc(ed.cap)))
		return NULL;
	if (new_model) {
		char *q = ed.arena + ed.cap - (6 * strlen(new_model) + 3);
		size_t qn = json_quote(new_model, q);

		ed.cap -= 6 * strlen(new_model) + 3;   /* q lives at the arena's end */
		if (s.model.p)
			replace_span(&ed, body, s.model, q, qn);
		else
			append_member(&ed, &s, body, &empty, "model", q, qn);
	}
	if (add_include_usage) {
		static const char obj[] = "{\"include_usage\":true}";
		struct span iu;

		scan_stream_options(s.stream_options, &iu);
		if (iu.p) {
			if (*iu.p != 't')
				replace_span(&ed, body, iu, "true", 4);
		} else if (s.stream_options.p && *s.stream_options.p == '{') {
			const char *in = json_ws(s.stream_options.p + 1, s.stream_options.end);

			edit_add(&ed, (size_t)(s.stream_options.p + 1 - body), 0,
			         "\"include_usage\":true,", *in == '}' ? 20 : 21);
		} else if (s.stream_options.p) {
			replace_span(&ed, body, s.stream_options, obj, sizeof(obj) - 1);
		} else {
			append_member(&ed, &s, body, &empty, "stream_options", obj, sizeof(obj) - 1);
		}
	}
	if (max_tokens >= 0) {
		int nn = snprintf(num, sizeof(num), "%lld", (long long)max_tokens);
		bool any = false;

		/* every cap the request names: a provider honours one of them, not
		 * always the one this agent read */
		for (unsigned i = 0; i < N_CAPS; i++) {
			double d;

			if (!s.cap[i].p)
				continue;
			any = true;
			if (span_number(s.cap[i], &d) && d >= 0 && d <= (double)max_tokens)
				continue;
			replace_span(&ed, body, s.cap[i], num, (size_t)nn);
		}
		if (!any)
			append_member(&ed, &s, body, &empty, "max_tokens", num, (size_t)nn);
	}
	/* in order of offset; inserts at one offset keep the order they came in */
	for (unsigned i = 1; i < ed.n; i++)
		for (unsigned j = i; j > 0 && ed.e[j - 1].off > ed.e[j].off; j--) {
			struct edit t = ed.e[j];

			ed.e[j] = ed.e[j - 1];
			ed.e[j - 1] = t;
		}
	total = len;
	for (unsigned i = 0; i < ed.n; i++)
		total += ed.e[i].ins_len - ed.e[i].del;
	if (!(out = malloc(total + 1))) {
		free(ed.arena);
		return NULL;
	}
	*out_len = 0;
	for (unsigned i = 0; i < ed.n; i++) {
		memcpy(out + *out_len, body + at, ed.e[i].off - at);
		*out_len += ed.e[i].off - at;
		memcpy(out + *out_len, ed.e[i].ins, ed.e[i].ins_len);
		*out_len += ed.e[i].ins_len;
		at = ed.e[i].off + ed.e[i].del;
	}
	memcpy(out + *out_len, body + at, len - at);
	*out_len += len - at;
	out[*out_len] = '\0';
	free(ed.arena);
	return out;
}
