/* meter.h -- what a request will cost and what it did cost.
 *
 * Owns: reading LLM request bodies (model, streaming, token caps, prompt
 * size) and response bodies (the provider's `usage`), for the OpenAI shapes
 * of /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/responses
 * and the providers that copy them. Pure functions over byte ranges.
 */
#ifndef TOLLGATE_METER_H
#define TOLLGATE_METER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct llm_request {
	bool json;                 /* the body parsed as a JSON object */
	bool duplicate_key;        /* a member named twice (top level, stream_options): ambiguous */
	char model[128];
	bool stream;
	bool include_usage;        /* stream_options.include_usage */
	int64_t max_tokens;        /* max_tokens | max_completion_tokens | max_output_tokens; -1 if none */
	int64_t prompt_tokens;     /* estimate from the text of the prompt */
};

struct llm_usage {
	bool found;
	int64_t in, out;           /* prompt/input and completion/output tokens */
};

/* Parse a request body. Never fails: a non-JSON body gives json=false and a
 * prompt estimate from its size. */
void meter_parse_request(const char *body, size_t len, struct llm_request *r);

/* Token estimate of a text: ASCII runs count 1 per 4 bytes, every other
 * code point 1 (CJK text is about one token per character). */
int64_t meter_estimate_text(const char *s, size_t len);

/* Find the usage of a JSON response body, whole or cut: a whole body is
 * read with json_scan.c and only its `usage` member (or `response.usage`)
 * parsed with cJSON; otherwise the last "usage" object in the bytes (e.g.
 * the tail of a body larger than HAProxy's buffer) is scanned. */
void meter_parse_usage(const char *body, size_t len, struct llm_usage *u);

/* A copy of the request body with stream_options.include_usage = true, the
 * model replaced when new_model is not NULL, and the token cap lowered to
 * max_tokens when >= 0: every cap field the request names
 * (max_tokens, max_completion_tokens, max_output_tokens) above it, below 0
 * or not a number, becomes max_tokens; with none, "max_tokens" is added.
 * malloc'ed; NULL on error. */
char *meter_rewrite_request(const char *body, size_t len, bool add_include_usage,
                            const char *new_model, int64_t max_tokens, size_t *out_len);

#endif
