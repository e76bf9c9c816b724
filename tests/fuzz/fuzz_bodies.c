/* tests/fuzz/fuzz_bodies.c -- libFuzzer target of the agent's body parsers.
 *
 * Owns: fuzzing what the agent reads from bytes a client, a provider or
 * HAProxy controls, other than SPOP frames (fuzz_spop.c):
 *   - request bodies: meter_parse_request(), whose one-pass reading must
 *     agree with a reading of cJSON's tree wherever cJSON takes the body
 *     (the reference below), and meter_rewrite_request() (its output must
 *     parse again, with what it was asked to put in);
 *   - response bodies, whole or cut: meter_parse_usage();
 *   - settlement records: settle_parse_record().
 * The first input byte steers the options; the rest is the body. Every
 * result is checked against what the parsers promise, so a wrong answer is
 * a crash like a bad read. Run by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "meter.h"
#include "settle.h"

#define FUZZ_ASSERT(c) do { if (!(c)) { fprintf(stderr, "assertion failed: %s (%s:%d)\n", \
	#c, __FILE__, __LINE__); abort(); } } while (0)

static size_t cstrlen(const char *s, size_t cap)
{
	return strnlen(s, cap);
}

/* The reference: what meter_parse_request() answered when it read cJSON's
 * tree (before json_scan.c): the prompt estimate over the same members. */
static int64_t ref_estimate(const cJSON *v, int depth)
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
			n += ref_estimate(it, depth + 1) + (cJSON_IsObject(it) ? 4 : 0);
		}
	}
	return n;
}

static void reference_agrees(const char *p, size_t n, const struct llm_request *r)
{
	static const char *const caps[] = { "max_tokens", "max_completion_tokens",
	                                    "max_output_tokens" };
	const char *end;
	cJSON *root, *v;
	int64_t est, mt = -1;
	char model[sizeof(r->model)] = "";

	/* cJSON stops a string at \u0000 and reads past trailing bytes */
	if (memmem(p, n, "\\u0000", 6) || r->duplicate_key)
		return;
	root = cJSON_ParseWithLengthOpts(p, n, &end, 0);
	if (!root)
		return;   /* cJSON refuses some texts json_scan takes (lone surrogates) */
	if (cJSON_IsObject(root) && r->json) {
		v = cJSON_GetObjectItemCaseSensitive(root, "model");
		if (cJSON_IsString(v))
			snprintf(model, sizeof(model), "%s", v->valuestring);
		FUZZ_ASSERT(strcmp(model, r->model) == 0);
		FUZZ_ASSERT(r->stream == cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream")));
		FUZZ_ASSERT(r->include_usage == cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(root, "stream_options"), "include_usage")));
		for (unsigned i = 0; i < 3 && mt < 0; i++) {
			v = cJSON_GetObjectItemCaseSensitive(root, caps[i]);
			if (cJSON_IsNumber(v) && v->valuedouble >= 0)
				mt = v->valuedouble >= 1e15 ? 1000000000000000LL : (int64_t)v->valuedouble;
		}
		FUZZ_ASSERT(r->max_tokens == mt);
		est = ref_estimate(cJSON_GetObjectItemCaseSensitive(root, "messages"), 0) +
		      ref_estimate(cJSON_GetObjectItemCaseSensitive(root, "prompt"), 0) +
		      ref_estimate(cJSON_GetObjectItemCaseSensitive(root, "input"), 0) +
		      ref_estimate(cJSON_GetObjectItemCaseSensitive(root, "instructions"), 0);
		FUZZ_ASSERT(r->prompt_tokens == (est ? est : 1));
	}
	cJSON_Delete(root);
}

static void request_body(const char *p, size_t n, uint8_t steer)
{
	struct llm_request r;
	size_t out_len = 0;
	char *out;
	bool add = steer & 1;
	const char *model = (steer & 2) ? "fuzz-model" : NULL;
	int64_t cap = (steer & 4) ? (int64_t)(steer >> 3) : -1;
	cJSON *root, *so;

	meter_parse_request(p, n, &r);
	FUZZ_ASSERT(cstrlen(r.model, sizeof(r.model)) < sizeof(r.model));
	FUZZ_ASSERT(r.max_tokens >= -1);
	FUZZ_ASSERT(r.prompt_tokens >= 0 && r.prompt_tokens <= 4 * (int64_t)n + 1);
	FUZZ_ASSERT(!r.json || r.prompt_tokens >= 1);
	reference_agrees(p, n, &r);

	if (r.duplicate_key)
		return;   /* refused with 400 before any rewrite */
	out = meter_rewrite_request(p, n, add, model, cap, &out_len);
	if (!out)
		return;   /* not an object (or out of memory) */
	FUZZ_ASSERT(r.json);                       /* only an object is rewritten */
	FUZZ_ASSERT(out_len == strlen(out));
	{
		struct llm_request r3;

		meter_parse_request(out, out_len, &r3);
		FUZZ_ASSERT(r3.json && !r3.duplicate_key);
		FUZZ_ASSERT(!add || r3.include_usage);
		FUZZ_ASSERT(!model || strcmp(r3.model, model) == 0);
	}
	root = cJSON_ParseWithLength(out, out_len);
	if (!root) {
		/* only where cJSON refuses the input too (lone surrogates) */
		cJSON *in = cJSON_ParseWithLength(p, n);

		FUZZ_ASSERT(!in);
		free(out);
		return;
	}
	FUZZ_ASSERT(cJSON_IsObject(root));
	if (add) {
		so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
		FUZZ_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage")));
	}
	if (model)
		FUZZ_ASSERT(strcmp(cJSON_GetStringValue(
			cJSON_GetObjectItemCaseSensitive(root, "model")), model) == 0);
	if (cap >= 0) {
		/* the cap holds whichever field the provider honours */
		static const char *const caps[] = { "max_tokens", "max_completion_tokens",
		                                    "max_output_tokens" };
		struct llm_request r2;
		int named = 0;

		for (unsigned i = 0; i < sizeof(caps) / sizeof(*caps); i++) {
			cJSON *v = cJSON_GetObjectItemCaseSensitive(root, caps[i]);

			if (!v)
				continue;
			named++;
			FUZZ_ASSERT(cJSON_IsNumber(v) && v->valuedouble >= 0 &&
			            v->valuedouble <= (double)cap);
		}
		FUZZ_ASSERT(named >= 1);
		meter_parse_request(out, out_len, &r2);
		FUZZ_ASSERT(r2.max_tokens >= 0 && r2.max_tokens <= cap);
	}
	cJSON_Delete(root);
	free(out);
}

static void response_body(const char *p, size_t n)
{
	struct llm_usage u;

	meter_parse_usage(p, n, &u);
	FUZZ_ASSERT(!u.found || (u.in >= 0 && u.out >= 0));
	FUZZ_ASSERT(u.found || (u.in == 0 && u.out == 0));
}

static void record(const char *p, size_t n)
{
	struct settle_rec r;
	int rc = settle_parse_record(p, n, &r);

	FUZZ_ASSERT(rc >= -1 && rc <= 1);
	if (rc != 1)
		return;
	FUZZ_ASSERT(r.rid[0] && cstrlen(r.rid, sizeof(r.rid)) < sizeof(r.rid));
	FUZZ_ASSERT(cstrlen(r.c.route, sizeof(r.c.route)) < sizeof(r.c.route));
	FUZZ_ASSERT(cstrlen(r.c.consumer, sizeof(r.c.consumer)) < sizeof(r.c.consumer));
	FUZZ_ASSERT(r.in >= -1 && r.out >= -1 && r.seen_chars >= -1 && r.bytes >= -1);
	FUZZ_ASSERT(memmem(p, n, r.rid, strlen(r.rid)) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p;
	size_t n;

	if (size < 1)
		return 0;
	p = (const char *)data + 1;
	n = size - 1;
	request_body(p, n, data[0]);
	response_body(p, n);
	record(p, n);
	return 0;
}
