/* mock_provider.h -- the `mock` LLM provider, served by the agent's HTTP port
 * under /mock/ so the demo and the tests need no network.
 *
 * Owns: OpenAI-shaped, deterministic answers and their token accounting.
 *
 *   POST /mock/v1/chat/completions                 chat (stream or not)
 *   POST /mock/v1/completions                      legacy completions (stream or not)
 *   POST /mock/v1/embeddings                       embeddings (never streamed)
 *   POST /mock/v1/responses                        Responses API (stream or not)
 *   POST /mock/openai/deployments/NAME/chat/completions   Azure shape (also
 *        .../completions, .../embeddings); the model is the body's "model",
 *        else NAME
 *   GET  /mock/v1/models                           a one-model list
 *   GET  /mock/health                              200 {"status":"ok"}
 *
 * Authentication: every POST and /v1/models needs `Authorization: Bearer X`
 * (X non-empty) or a non-empty `api-key` header, else 401
 * {"error":{...,"code":"invalid_api_key"}} -- so a test proves HAProxy
 * injected the provider key. The key's value is never echoed or logged.
 *
 * THE TOKEN RULE (what usage reports; tests and estimators may rely on it):
 *   C = number of Unicode code points of the prompt text, where the prompt
 *       text is: chat -- every messages[].content string, or the "text" of
 *       each part when content is an array; completions -- "prompt" (a string
 *       or each string of an array); embeddings -- "input" (likewise);
 *       responses -- "instructions" plus "input" (a string, or for each item
 *       its "content" string or the "text" of each content part).
 *   prompt_tokens = max(1, ceil(C / 4))
 *   The reply is the first N words of the fixed 12-word sentence
 *       "Hello! This is a deterministic reply from the Tollgate mock LLM provider."
 *   (W words of it over again with x-mock-words: W; else W = 12), joined by
 *   single spaces, with N = min(L, W) where L is the request's limit:
 *   max_completion_tokens, else max_tokens (chat); max_tokens
 *   (completions); max_output_tokens (responses); no limit: N = W. A limit
 *   that is not an integer >= 1 is a 400.
 *   completion_tokens = N; total_tokens = prompt_tokens + N.
 *   finish_reason = "length" when N < W, else "stop" (Responses: status
 *   "incomplete" with incomplete_details.reason "max_output_tokens").
 *   Embeddings: prompt_tokens as above over all inputs, total = prompt; one
 *   vector per input, "dimensions" floats (1..4096, default 16).
 *   Responses API usage is {input_tokens, output_tokens, total_tokens}.
 *
 * Streaming ("stream": true), chat: one SSE event `data: {chunk}\n\n` per
 * word with choices[0].delta.content (the first also has delta.role
 * "assistant"; words after the first start with a space, so the contents
 * concatenate to the reply), then a chunk with an empty delta and
 * finish_reason, then -- only if stream_options.include_usage is true -- a
 * usage chunk whose "choices" is [] (every other chunk then carries
 * "usage":null, as OpenAI does), then `data: [DONE]\n\n`. Completions: the
 * same with choices[0].text. Responses: `event: NAME\ndata: {...}\n\n` for
 * response.created, one response.output_text.delta per word,
 * response.output_text.done, and response.completed (which has the usage);
 * no [DONE].
 *
 * Answers are deterministic: "created" is 1700000000 and ids derive from a
 * hash of the request body.
 *
 * Test hooks (request headers):
 *   x-mock-delay-ms: N   pace: each SSE event N ms after the previous (the
 *                        first N ms after the headers); a non-streamed answer
 *                        comes after N ms. A timer, never a sleep. Max 60000.
 *   x-mock-words: N      a reply of N words (1..MOCK_MAX_WORDS; the twelve
 *                        words over again), one SSE event each: long paced
 *                        streams for tests/bench/streams.py. Default 12.
 *   x-mock-status: NNN   answer NNN (400..599) with an OpenAI error body and
 *                        no usage, after the authentication check.
 * Response headers for tests: x-mock-auth (bearer | api-key),
 *   x-mock-consumer (the x-mse-consumer header received, or -),
 *   x-mock-saw-api-key (yes if an x-api-key header reached us, else no),
 *   x-mock-path (the path and query received).
 */
#ifndef TOLLGATE_MOCK_PROVIDER_H
#define TOLLGATE_MOCK_PROVIDER_H

#include <stddef.h>

struct http_server;
struct mock_provider;

#define MOCK_REPLY_WORDS  12
#define MOCK_MAX_WORDS    2000

/* Registers the /mock/ routes on srv. NULL on failure (route table full). */
struct mock_provider *mock_provider_new(struct http_server *srv);
/* Ends answers in flight (streams get their terminating chunk) and frees.
 * Before or after http_server_free(), but with no loop iteration in between
 * (the routes point at mp until the server is freed). */
void mock_provider_free(struct mock_provider *mp);
/* Answers currently in flight (delayed or streaming). */
unsigned mock_provider_active(const struct mock_provider *mp);

/* The token rule, for tests and estimators: max(1, ceil(code points / 4)). */
unsigned mock_prompt_tokens(size_t code_points);
/* Code points of a UTF-8 string of len bytes. */
size_t mock_code_points(const char *s, size_t len);

#endif
