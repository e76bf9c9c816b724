/* meter.c -- see meter.h.
 *
 * Request bodies are small (HAProxy buffers them whole) and parsed with
 * cJSON. Response bodies may arrive cut (SPOP only carries what fits in
 * HAProxy's buffer), so usage is also found by a bounded scan for the last
 * `"usage"` key followed by its numbers: providers put usage at the end.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
static int64_t json_count(const cJSON *v)
{
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0))
		return -1;
	return v->valuedouble >= (double)TOKENS_MAX ? TOKENS_MAX : (int64_t)v->valuedouble;
}

/* Sum the text of a prompt value: a string, or an array of strings, of
 * message objects ({content: string | [{text: ...}]}) or of input items. */
static int64_t estimate_value(const cJSON *v, int depth)
{
	int64_t n = 0;
	const cJSON *it;

	if (!v || depth > 6)
		return 0;
	if (cJSON_IsString(v))
		return meter_estimate_text(v->valuestring, strlen(v->valuestring));
	if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
		cJSON_ArrayForEach(it, v) {
			if (cJSON_IsObject(v) && it->string &&
			    strcmp(it->string, "content") != 0 && strcmp(it->string, "text") != 0 &&
			    strcmp(it->string, "input") != 0)
				continue;
			n += estimate_value(it, depth + 1) + (cJSON_IsObject(it) ? 4 : 0);
		}
	}
	return n;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Does an object name a member twice? Parsers disagree on which one wins
 * (cJSON: the first; Python and most providers: the last), so a body with
 * {"model":"cheap","model":"dear"} could be routed and charged as one model
 * and served as the other. Sorted names, O(n log n): a body of 10^4 keys
 * must not hold the event loop. Out of memory: treated as ambiguous. */
static bool has_duplicate_key(const cJSON *o)
{
	const cJSON *it;
	const char **names;
	size_t n = 0;
	bool dup = false;

	cJSON_ArrayForEach(it, o)
		n++;
	if (n < 2)
		return false;
	if (!(names = malloc(n * sizeof(*names))))
		return true;
	n = 0;
	cJSON_ArrayForEach(it, o)
		names[n++] = it->string ? it->string : "";
	qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 1; i < n && !dup; i++)
		dup = strcmp(names[i - 1], names[i]) == 0;
	free(names);
	return dup;
}

void meter_parse_request(const char *body, size_t len, struct llm_request *r)
{
	cJSON *root = cJSON_ParseWithLength(body, len), *v, *so;
	static const char *const caps[] = { "max_tokens", "max_completion_tokens",
	                                    "max_output_tokens" };

	memset(r, 0, sizeof(*r));
	r->max_tokens = -1;
	if (!cJSON_IsObject(root)) {
		r->prompt_tokens = meter_estimate_text(body, len);
		cJSON_Delete(root);
		return;
	}
	r->json = true;
	so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
	r->duplicate_key = has_duplicate_key(root) || (cJSON_IsObject(so) && has_duplicate_key(so));
	v = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (cJSON_IsString(v))
		snprintf(r->model, sizeof(r->model), "%s", v->valuestring);
	r->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
	r->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
	for (unsigned i = 0; i < sizeof(caps) / sizeof(*caps); i++) {
		v = cJSON_GetObjectItemCaseSensitive(root, caps[i]);
		if (json_count(v) >= 0) {
			r->max_tokens = json_count(v);
			break;
		}
	}
	r->prompt_tokens = estimate_value(cJSON_GetObjectItemCaseSensitive(root, "messages"), 0) +
	                   estimate_value(cJSON_GetObjectItemCaseSensitive(root, "prompt"), 0) +
	                   estimate_value(cJSON_GetObjectItemCaseSensitive(root, "input"), 0) +
	                   estimate_value(cJSON_GetObjectItemCaseSensitive(root, "instructions"), 0);
	if (r->prompt_tokens == 0)
		r->prompt_tokens = 1;
	cJSON_Delete(root);
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

void meter_parse_usage(const char *body, size_t len, struct llm_usage *u)
{
	cJSON *root, *usage;

	memset(u, 0, sizeof(*u));
	if (!body || !len)
		return;
	root = cJSON_ParseWithLength(body, len);
	if (!cJSON_IsObject(root)) {            /* cut: "0.1,..." parses as a number */
		cJSON_Delete(root);
		scan_usage(body, len, u);
		return;
	}
	usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
	if (!usage) {   /* Responses API streams nest it: {"response":{"usage":...}} */
		usage = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(root, "response"), "usage");
	}
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
	cJSON_Delete(root);
}

char *meter_rewrite_request(const char *body, size_t len, bool add_include_usage,
                            const char *new_model, int64_t max_tokens, size_t *out_len)
{
	static const char *const caps[] = { "max_completion_tokens", "max_output_tokens",
	                                    "max_tokens" };
	cJSON *root = cJSON_ParseWithLength(body, len), *so;
	char *out;

	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return NULL;
	}
	if (new_model) {
		cJSON_DeleteItemFromObjectCaseSensitive(root, "model");
		cJSON_AddStringToObject(root, "model", new_model);
	}
	if (add_include_usage) {
		so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
		if (!cJSON_IsObject(so)) {
			cJSON_DeleteItemFromObjectCaseSensitive(root, "stream_options");
			so = cJSON_AddObjectToObject(root, "stream_options");
		}
		cJSON_DeleteItemFromObjectCaseSensitive(so, "include_usage");
		cJSON_AddTrueToObject(so, "include_usage");
	}
	if (max_tokens >= 0) {
		bool any = false;

		/* every cap the request names: a provider honours one of them, not
		 * always the one this agent read */
		for (unsigned i = 0; i < sizeof(caps) / sizeof(*caps); i++) {
			cJSON *v = cJSON_GetObjectItemCaseSensitive(root, caps[i]);

			if (!v)
				continue;
			any = true;
			if (cJSON_IsNumber(v) && v->valuedouble >= 0 &&
			    v->valuedouble <= (double)max_tokens)
				continue;
			cJSON_DeleteItemFromObjectCaseSensitive(root, caps[i]);
			cJSON_AddNumberToObject(root, caps[i], (double)max_tokens);
		}
		if (!any)
			cJSON_AddNumberToObject(root, "max_tokens", (double)max_tokens);
	}
	out = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (out)
		*out_len = strlen(out);
	return out;
}
