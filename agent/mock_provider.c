/* mock_provider.c -- the deterministic mock LLM provider (see mock_provider.h).
 *
 * A request is parsed once with cJSON into a `struct ask` (what kind of
 * answer, which model, how many prompt tokens, how many words); the whole
 * answer -- one JSON body, or every SSE event -- is then rendered up front
 * into one buffer. Without x-mock-delay-ms it is sent before the handler
 * returns; with it, a `struct job` owns the buffer and a repeating timer
 * sends one event per tick (or the body once). The job is the handler's
 * reference to the request: it ends with exactly one final call (stream end
 * or reply), whether it ran to completion, the client went away (the
 * cancel callback) or the provider is freed.
 */
#include <cjson/cJSON.h>
#include <ev.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "http_server.h"
#include "log.h"
#include "mock_provider.h"

#define CREATED        1700000000
#define MAX_DELAY_MS   60000
#define MAX_DIMS       4096
#define DEFAULT_DIMS   16
#define HDR_ECHO_MAX   256
#define WORD_MAX       14       /* the longest reply word and its space */
#define TEXT_MAX       (MOCK_MAX_WORDS * WORD_MAX + 1)

static const char *const reply_words[MOCK_REPLY_WORDS] = {
	"Hello!", "This", "is", "a", "deterministic", "reply", "from", "the", "Tollgate",
	"mock", "LLM", "provider.",
};

enum kind { K_CHAT, K_COMPLETIONS, K_EMBEDDINGS, K_RESPONSES, K__COUNT };

struct endpoint {
	struct mock_provider *mp;
	enum kind kind;
};

struct job {
	struct mock_provider *mp;
	struct http_req *req;
	ev_timer timer;
	bool stream;
	int status;
	char *extra;                 /* response headers */
	char *buf;                   /* the body, or every event in a row */
	size_t len;
	size_t *ends;                /* stream: end offset of each event */
	size_t nev, next;
	struct job *prev, *next_job;
};

struct mock_provider {
	struct http_server *srv;
	struct ev_loop *loop;
	struct endpoint eps[K__COUNT];
	struct job *jobs;
	unsigned active;
};

/* What the request asks for. */
struct ask {
	enum kind kind;
	const char *model;
	unsigned prompt_tokens, words, dims;
	unsigned full;               /* words of the whole reply (x-mock-words) */
	bool stream, include_usage;
	const cJSON *inputs;         /* embeddings: the "input" item */
	uint64_t hash;               /* of the body: ids */
};

/* An answer being rendered. */
struct out {
	struct buf text;        /* text.oom: any part failed (the text, ends, JSON) */
	size_t *ends;           /* SSE: where each event ends in text */
	size_t nev, capev;
};

/* ---- token rule ----------------------------------------------------- */

size_t mock_code_points(const char *s, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		if (((unsigned char)s[i] & 0xc0) != 0x80)
			n++;
	return n;
}

unsigned mock_prompt_tokens(size_t code_points)
{
	size_t t = (code_points + 3) / 4;

	return t < 1 ? 1 : t > UINT32_MAX ? UINT32_MAX : (unsigned)t;
}

static size_t str_points(const cJSON *v)
{
	return cJSON_IsString(v) ? mock_code_points(v->valuestring, strlen(v->valuestring)) : 0;
}

/* A string, or an array of strings. */
static size_t strings_points(const cJSON *v)
{
	const cJSON *e;
	size_t n = str_points(v);

	if (cJSON_IsArray(v))
		cJSON_ArrayForEach(e, v)
			n += str_points(e);
	return n;
}

/* A message's content: a string, or parts with "text". */
static size_t content_points(const cJSON *content)
{
	const cJSON *part;
	size_t n = str_points(content);

	if (cJSON_IsArray(content))
		cJSON_ArrayForEach(part, content)
			n += cJSON_IsString(part) ? str_points(part) :
			     str_points(cJSON_GetObjectItemCaseSensitive(part, "text"));
	return n;
}

static size_t items_points(const cJSON *items)
{
	const cJSON *it;
	size_t n = 0;

	cJSON_ArrayForEach(it, items)
		n += cJSON_IsString(it) ? str_points(it) :
		     content_points(cJSON_GetObjectItemCaseSensitive(it, "content"));
	return n;
}

/* ---- helpers -------------------------------------------------------- */

static uint64_t fnv64(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
	return h;
}

static void make_id(char *out, size_t len, const char *prefix, uint64_t h)
{
	snprintf(out, len, "%s%016llx", prefix, (unsigned long long)h);
}

/* A JSON error body, OpenAI-shaped. */
static void reply_error(struct http_req *req, int status, const char *type, const char *code,
                        const char *msg)
{
	cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
	char *s;

	cJSON_AddStringToObject(e, "message", msg);
	cJSON_AddStringToObject(e, "type", type);
	if (code)
		cJSON_AddStringToObject(e, "code", code);
	else
		cJSON_AddNullToObject(e, "code");
	cJSON_AddNullToObject(e, "param");
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s) {
		http_reply(req, 500, NULL, NULL, 0);
		return;
	}
	http_reply(req, status, "application/json", s, strlen(s));
	cJSON_free(s);
}

/* Copies a header value for echoing (already free of CR/LF by the parser). */
static void echo_value(char *out, size_t len, const char *v)
{
	snprintf(out, len, "%s", v && *v ? v : "-");
}

static char *extra_headers(const struct http_req *req, const char *auth, bool stream)
{
	char consumer[HDR_ECHO_MAX], path[HDR_ECHO_MAX * 2], *s = NULL;
	const char *q = http_req_query(req);

	echo_value(consumer, sizeof(consumer), http_req_header(req, "x-mse-consumer"));
	snprintf(path, sizeof(path), "%s%s%s", http_req_path(req), *q ? "?" : "", q);
	if (asprintf(&s, "x-mock-auth: %s\r\nx-mock-consumer: %s\r\nx-mock-saw-api-key: %s\r\n"
	             "x-mock-path: %s\r\n%s", auth, consumer,
	             http_req_header(req, "x-api-key") ? "yes" : "no", path,
	             stream ? "Cache-Control: no-cache\r\n" : "") < 0)
		return NULL;
	return s;
}

/* "bearer", "api-key", or NULL (unauthenticated). */
static const char *auth_kind(const struct http_req *req)
{
	const char *a = http_req_header(req, "authorization");
	const char *k = http_req_header(req, "api-key");

	if (a && strncasecmp(a, "Bearer ", 7) == 0 && a[7 + strspn(a + 7, " ")])
		return "bearer";
	if (k && *k)
		return "api-key";
	return NULL;
}

static unsigned header_uint(const struct http_req *req, const char *name, unsigned max)
{
	const char *v = http_req_header(req, name);
	char *end;
	unsigned long n;

	if (!v || !*v)
		return 0;
	n = strtoul(v, &end, 10);
	if (*end || n > max)
		return 0;
	return (unsigned)n;
}

/* ---- output buffer -------------------------------------------------- */

static void out_end_event(struct out *o)
{
	if (o->text.oom)
		return;
	if (o->nev == o->capev) {
		size_t cap = o->capev ? o->capev * 2 : 32;
		size_t *e = realloc(o->ends, cap * sizeof(*e));

		if (!e) {
			o->text.oom = true;
			return;
		}
		o->ends = e;
		o->capev = cap;
	}
	o->ends[o->nev++] = o->text.len;
}

/* Appends `[event: NAME\n]data: JSON\n\n` and frees the object. */
static void out_event(struct out *o, const char *event, cJSON *obj)
{
	char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;

	cJSON_Delete(obj);
	if (!s) {
		o->text.oom = true;
		return;
	}
	if (event) {
		buf_str(&o->text, "event: ");
		buf_str(&o->text, event);
		buf_str(&o->text, "\n");
	}
	buf_str(&o->text, "data: ");
	buf_str(&o->text, s);
	buf_str(&o->text, "\n\n");
	out_end_event(o);
	cJSON_free(s);
}

static void out_json(struct out *o, cJSON *obj)
{
	char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;

	cJSON_Delete(obj);
	if (!s) {
		o->text.oom = true;
		return;
	}
	buf_str(&o->text, s);
	cJSON_free(s);
}

/* ---- answers: shared pieces ----------------------------------------- */

/* Word i of the reply: the twelve words, over again past the twelfth. */
static const char *reply_word(unsigned i)
{
	return reply_words[i % MOCK_REPLY_WORDS];
}

/* The reply's text into out (TEXT_MAX bytes: every word fits). */
static void reply_text(const struct ask *a, char *out)
{
	size_t n = 0;

	out[0] = 0;
	for (unsigned i = 0; i < a->words; i++)
		n += (size_t)snprintf(out + n, TEXT_MAX - n, "%s%s", i ? " " : "", reply_word(i));
}

static const char *finish_reason(const struct ask *a)
{
	return a->words < a->full ? "length" : "stop";
}

static void add_usage(cJSON *o, const struct ask *a)
{
	cJSON *u = cJSON_AddObjectToObject(o, "usage");

	cJSON_AddNumberToObject(u, "prompt_tokens", a->prompt_tokens);
	if (a->kind != K_EMBEDDINGS)
		cJSON_AddNumberToObject(u, "completion_tokens", a->words);
	cJSON_AddNumberToObject(u, "total_tokens",
	                        a->prompt_tokens + (a->kind != K_EMBEDDINGS ? a->words : 0));
}

static cJSON *base_object(const struct ask *a, const char *object)
{
	cJSON *o = cJSON_CreateObject();
	char id[64];

	make_id(id, sizeof(id), a->kind == K_CHAT ? "chatcmpl-mock-" : "cmpl-mock-", a->hash);
	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "object", object);
	cJSON_AddNumberToObject(o, "created", CREATED);
	cJSON_AddStringToObject(o, "model", a->model);
	return o;
}

/* ---- chat and completions ------------------------------------------- */

static void render_chat(const struct ask *a, struct out *o)
{
	cJSON *r = base_object(a, "chat.completion");
	cJSON *ch = cJSON_CreateObject(), *msg;
	char text[TEXT_MAX];

	reply_text(a, text);
	cJSON_AddNumberToObject(ch, "index", 0);
	msg = cJSON_AddObjectToObject(ch, "message");
	cJSON_AddStringToObject(msg, "role", "assistant");
	cJSON_AddStringToObject(msg, "content", text);
	cJSON_AddNullToObject(ch, "logprobs");
	cJSON_AddStringToObject(ch, "finish_reason", finish_reason(a));
	cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"), ch);
	add_usage(r, a);
	out_json(o, r);
}

static void render_completion(const struct ask *a, struct out *o)
{
	cJSON *r = base_object(a, "text_completion"), *ch = cJSON_CreateObject();
	char text[TEXT_MAX];

	reply_text(a, text);
	cJSON_AddStringToObject(ch, "text", text);
	cJSON_AddNumberToObject(ch, "index", 0);
	cJSON_AddNullToObject(ch, "logprobs");
	cJSON_AddStringToObject(ch, "finish_reason", finish_reason(a));
	cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"), ch);
	add_usage(r, a);
	out_json(o, r);
}

/* One streamed chunk: word i (or the finish chunk when i == words). */
static cJSON *stream_chunk(const struct ask *a, unsigned i)
{
	bool chat = a->kind == K_CHAT;
	cJSON *r = base_object(a, chat ? "chat.completion.chunk" : "text_completion");
	cJSON *ch = cJSON_CreateObject(), *delta;
	char word[64] = "";

	if (i < a->words)
		snprintf(word, sizeof(word), "%s%s", i ? " " : "", reply_word(i));
	cJSON_AddNumberToObject(ch, "index", 0);
	if (chat) {
		delta = cJSON_AddObjectToObject(ch, "delta");
		if (i == 0 && a->words > 0)
			cJSON_AddStringToObject(delta, "role", "assistant");
		if (i < a->words)
			cJSON_AddStringToObject(delta, "content", word);
	} else {
		cJSON_AddStringToObject(ch, "text", word);
	}
	cJSON_AddNullToObject(ch, "logprobs");
	if (i < a->words)
		cJSON_AddNullToObject(ch, "finish_reason");
	else
		cJSON_AddStringToObject(ch, "finish_reason", finish_reason(a));
	cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"), ch);
	if (a->include_usage)
		cJSON_AddNullToObject(r, "usage");
	return r;
}

static void render_chat_stream(const struct ask *a, struct out *o)
{
	for (unsigned i = 0; i <= a->words; i++)
		out_event(o, NULL, stream_chunk(a, i));
	if (a->include_usage) {
		cJSON *r = base_object(a, a->kind == K_CHAT ? "chat.completion.chunk" :
		                                              "text_completion");

		cJSON_AddArrayToObject(r, "choices");
		add_usage(r, a);
		out_event(o, NULL, r);
	}
	buf_str(&o->text, "data: [DONE]\n\n");
	out_end_event(o);
}

/* ---- embeddings ----------------------------------------------------- */

static void add_vector(cJSON *arr, const char *text, unsigned index, unsigned dims)
{
	uint64_t x = fnv64(text, strlen(text)) ^ ((uint64_t)index * 0x9e3779b97f4a7c15ull);

	for (unsigned j = 0; j < dims; j++) {
		double v;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		v = (double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0;
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(round(v * 1e6) / 1e6));
	}
}

static void render_embeddings(const struct ask *a, struct out *o)
{
	cJSON *r = cJSON_CreateObject(), *data, *e;
	const cJSON *in;
	unsigned i = 0;

	cJSON_AddStringToObject(r, "object", "list");
	data = cJSON_AddArrayToObject(r, "data");
	if (cJSON_IsString(a->inputs)) {
		e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "object", "embedding");
		cJSON_AddNumberToObject(e, "index", 0);
		add_vector(cJSON_AddArrayToObject(e, "embedding"), a->inputs->valuestring, 0, a->dims);
		cJSON_AddItemToArray(data, e);
	} else {
		cJSON_ArrayForEach(in, a->inputs) {
			e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "object", "embedding");
			cJSON_AddNumberToObject(e, "index", i);
			add_vector(cJSON_AddArrayToObject(e, "embedding"),
			           cJSON_IsString(in) ? in->valuestring : "", i, a->dims);
			cJSON_AddItemToArray(data, e);
			i++;
		}
	}
	cJSON_AddStringToObject(r, "model", a->model);
	add_usage(r, a);
	out_json(o, r);
}

/* ---- responses ------------------------------------------------------ */

static cJSON *response_object(const struct ask *a, bool done)
{
	cJSON *r = cJSON_CreateObject(), *msg, *part, *u;
	bool cut = a->words < a->full;
	char id[64], text[TEXT_MAX];

	make_id(id, sizeof(id), "resp_mock_", a->hash);
	cJSON_AddStringToObject(r, "id", id);
	cJSON_AddStringToObject(r, "object", "response");
	cJSON_AddNumberToObject(r, "created_at", CREATED);
	cJSON_AddStringToObject(r, "status", !done ? "in_progress" : cut ? "incomplete" : "completed");
	if (done && cut)
		cJSON_AddStringToObject(cJSON_AddObjectToObject(r, "incomplete_details"), "reason",
		                        "max_output_tokens");
	else
		cJSON_AddNullToObject(r, "incomplete_details");
	cJSON_AddStringToObject(r, "model", a->model);
	msg = cJSON_CreateObject();
	make_id(id, sizeof(id), "msg_mock_", a->hash);
	cJSON_AddStringToObject(msg, "type", "message");
	cJSON_AddStringToObject(msg, "id", id);
	cJSON_AddStringToObject(msg, "status", "completed");
	cJSON_AddStringToObject(msg, "role", "assistant");
	part = cJSON_CreateObject();
	reply_text(a, text);
	cJSON_AddStringToObject(part, "type", "output_text");
	cJSON_AddStringToObject(part, "text", text);
	cJSON_AddArrayToObject(part, "annotations");
	cJSON_AddItemToArray(cJSON_AddArrayToObject(msg, "content"), part);
	if (!done) {
		cJSON_Delete(msg);
		cJSON_AddArrayToObject(r, "output");
		cJSON_AddNullToObject(r, "usage");
		return r;
	}
	cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "output"), msg);
	u = cJSON_AddObjectToObject(r, "usage");
	cJSON_AddNumberToObject(u, "input_tokens", a->prompt_tokens);
	cJSON_AddNumberToObject(u, "output_tokens", a->words);
	cJSON_AddNumberToObject(u, "total_tokens", a->prompt_tokens + a->words);
	return r;
}

static cJSON *response_event(const char *type, unsigned seq)
{
	cJSON *e = cJSON_CreateObject();

	cJSON_AddStringToObject(e, "type", type);
	cJSON_AddNumberToObject(e, "sequence_number", seq);
	return e;
}

static void add_text_position(cJSON *e, const struct ask *a)
{
	char id[64];

	make_id(id, sizeof(id), "msg_mock_", a->hash);
	cJSON_AddStringToObject(e, "item_id", id);
	cJSON_AddNumberToObject(e, "output_index", 0);
	cJSON_AddNumberToObject(e, "content_index", 0);
}

static void render_responses_stream(const struct ask *a, struct out *o)
{
	unsigned seq = 0;
	char word[64], text[TEXT_MAX];
	cJSON *e;

	e = response_event("response.created", seq++);
	cJSON_AddItemToObject(e, "response", response_object(a, false));
	out_event(o, "response.created", e);
	for (unsigned i = 0; i < a->words; i++) {
		e = response_event("response.output_text.delta", seq++);
		add_text_position(e, a);
		snprintf(word, sizeof(word), "%s%s", i ? " " : "", reply_word(i));
		cJSON_AddStringToObject(e, "delta", word);
		out_event(o, "response.output_text.delta", e);
	}
	e = response_event("response.output_text.done", seq++);
	add_text_position(e, a);
	reply_text(a, text);
	cJSON_AddStringToObject(e, "text", text);
	out_event(o, "response.output_text.done", e);
	e = response_event("response.completed", seq++);
	cJSON_AddItemToObject(e, "response", response_object(a, true));
	out_event(o, "response.completed", e);
}

static void render(const struct ask *a, struct out *o)
{
	if (a->kind == K_EMBEDDINGS)
		render_embeddings(a, o);
	else if (a->kind == K_RESPONSES)
		a->stream ? render_responses_stream(a, o) : out_json(o, response_object(a, true));
	else if (a->stream)
		render_chat_stream(a, o);
	else
		a->kind == K_CHAT ? render_chat(a, o) : render_completion(a, o);
}

/* ---- parsing the request -------------------------------------------- */

/* The first present limit among names: 0 = none, -1 = invalid. */
static int read_limit(const cJSON *body, const char *const *names, unsigned *limit)
{
	*limit = 0;
	for (; *names; names++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, *names);

		if (!v || cJSON_IsNull(v))
			continue;
		if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble != floor(v->valuedouble))
			return -1;
		*limit = v->valuedouble > 1e9 ? 1000000000u : (unsigned)v->valuedouble;
		return 0;
	}
	return 0;
}

static const char *const *limit_names(enum kind k)
{
	static const char *const chat[] = { "max_completion_tokens", "max_tokens", NULL };
	static const char *const compl[] = { "max_tokens", NULL };
	static const char *const resp[] = { "max_output_tokens", NULL };
	static const char *const none[] = { NULL };

	return k == K_CHAT ? chat : k == K_COMPLETIONS ? compl : k == K_RESPONSES ? resp : none;
}

static size_t prompt_points(enum kind k, const cJSON *body)
{
	const cJSON *in;

	switch (k) {
	case K_CHAT:
		return items_points(cJSON_GetObjectItemCaseSensitive(body, "messages"));
	case K_COMPLETIONS:
		return strings_points(cJSON_GetObjectItemCaseSensitive(body, "prompt"));
	case K_EMBEDDINGS:
		return strings_points(cJSON_GetObjectItemCaseSensitive(body, "input"));
	case K_RESPONSES:
		in = cJSON_GetObjectItemCaseSensitive(body, "input");
		return str_points(cJSON_GetObjectItemCaseSensitive(body, "instructions")) +
		       (cJSON_IsArray(in) ? items_points(in) : str_points(in));
	default:
		return 0;
	}
}

/* Fills a from the body; NULL, or the message of a 400. */
static const char *read_ask(struct ask *a, const cJSON *body, const char *deployment)
{
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
	const cJSON *opts = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
	const cJSON *dims = cJSON_GetObjectItemCaseSensitive(body, "dimensions");
	unsigned limit;

	a->model = cJSON_IsString(model) ? model->valuestring : deployment;
	if (!a->model)
		return "you must provide a model parameter";
	if (a->kind == K_CHAT && !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(body, "messages")))
		return "'messages' is a required property";
	a->inputs = cJSON_GetObjectItemCaseSensitive(body, "input");
	if (a->kind == K_EMBEDDINGS && !cJSON_IsString(a->inputs) && !cJSON_IsArray(a->inputs))
		return "'input' is a required property";
	if (read_limit(body, limit_names(a->kind), &limit) != 0)
		return "the token limit must be an integer >= 1";
	a->words = limit && limit < a->full ? limit : a->full;
	a->prompt_tokens = mock_prompt_tokens(prompt_points(a->kind, body));
	a->stream = a->kind != K_EMBEDDINGS &&
	            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "stream"));
	a->include_usage = a->stream &&
	                   cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(opts, "include_usage"));
	a->dims = DEFAULT_DIMS;
	if (dims && !cJSON_IsNull(dims)) {
		if (!cJSON_IsNumber(dims) || dims->valuedouble < 1 || dims->valuedouble > MAX_DIMS ||
		    dims->valuedouble != floor(dims->valuedouble))
			return "'dimensions' must be an integer from 1 to 4096";
		a->dims = (unsigned)dims->valuedouble;
	}
	return NULL;
}

/* ---- jobs (delayed and paced answers) ------------------------------- */

static void job_free(struct job *j)
{
	struct mock_provider *mp = j->mp;

	ev_timer_stop(mp->loop, &j->timer);
	if (j->prev)
		j->prev->next_job = j->next_job;
	else
		mp->jobs = j->next_job;
	if (j->next_job)
		j->next_job->prev = j->prev;
	mp->active--;
	free(j->extra);
	free(j->buf);
	free(j->ends);
	free(j);
}

/* The final call for the job's request, then the job goes. */
static void job_finish(struct job *j)
{
	if (j->stream)
		http_stream_end(j->req);
	else
		http_reply_ex(j->req, j->status, "application/json", j->extra, j->buf, j->len);
	job_free(j);
}

static void job_cancel(struct http_req *req, void *arg)
{
	(void)req;
	job_finish(arg);
}

static void job_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct job *j = w->data;
	size_t from;

	(void)loop; (void)revents;
	if (!j->stream || j->next >= j->nev) {
		job_finish(j);
		return;
	}
	from = j->next ? j->ends[j->next - 1] : 0;
	if (http_stream_write(j->req, j->buf + from, j->ends[j->next] - from) != 0 ||
	    ++j->next == j->nev)
		job_finish(j);
}

static void job_start(struct mock_provider *mp, struct http_req *req, struct out *o,
                      bool stream, const char *extra, unsigned delay_ms)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j || (extra && !(j->extra = strdup(extra)))) {
		free(j);
		if (stream)
			http_stream_end(req);
		else
			http_reply(req, 503, NULL, NULL, 0);
		free(o->text.data);
		free(o->ends);
		return;
	}
	j->mp = mp;
	j->req = req;
	j->stream = stream;
	j->status = 200;
	j->buf = o->text.data;
	j->len = o->text.len;
	j->ends = o->ends;
	j->nev = o->nev;
	ev_timer_init(&j->timer, job_tick, delay_ms / 1000.0, delay_ms / 1000.0);
	j->timer.data = j;
	ev_timer_start(mp->loop, &j->timer);
	j->next_job = mp->jobs;
	if (mp->jobs)
		mp->jobs->prev = j;
	mp->jobs = j;
	mp->active++;
	http_req_defer(req, job_cancel, j);
}

/* Sends a rendered answer, now or paced by a job. Owns o's memory. */
static void send_answer(struct mock_provider *mp, struct http_req *req, const struct ask *a,
                        struct out *o, const char *extra, unsigned delay_ms)
{
	size_t from = 0;

	if (a->stream)
		http_stream_begin_ex(req, 200, "text/event-stream", extra);
	if (delay_ms) {
		job_start(mp, req, o, a->stream, extra, delay_ms);
		return;
	}
	if (!a->stream) {
		http_reply_ex(req, 200, "application/json", extra, o->text.data, o->text.len);
	} else {
		for (size_t i = 0; i < o->nev; from = o->ends[i++])
			http_stream_write(req, o->text.data + from, o->ends[i] - from);
		http_stream_end(req);
	}
	free(o->text.data);
	free(o->ends);
}

/* ---- handlers ------------------------------------------------------- */

static void answer(struct mock_provider *mp, struct http_req *req, enum kind kind,
                   const char *deployment)
{
	struct ask a = { .kind = kind };
	struct out o = { 0 };
	const char *auth = auth_kind(req), *err, *body;
	unsigned forced = header_uint(req, "x-mock-status", 599);
	char msg[64], *extra;
	size_t len;
	cJSON *doc;

	if (!auth) {
		reply_error(req, 401, "invalid_request_error", "invalid_api_key",
		            "Missing API key: send Authorization: Bearer <key> or api-key.");
		return;
	}
	if (forced >= 400) {
		snprintf(msg, sizeof(msg), "mock error %u (x-mock-status)", forced);
		reply_error(req, (int)forced, "mock_error", NULL, msg);
		return;
	}
	body = http_req_body(req, &len);
	doc = cJSON_ParseWithLength(body, len);
	if (!cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		reply_error(req, 400, "invalid_request_error", NULL,
		            "We could not parse the JSON body of your request.");
		return;
	}
	a.hash = fnv64(body, len);
	if (!(a.full = header_uint(req, "x-mock-words", MOCK_MAX_WORDS)))
		a.full = MOCK_REPLY_WORDS;
	if ((err = read_ask(&a, doc, deployment))) {
		reply_error(req, 400, "invalid_request_error", NULL, err);
		cJSON_Delete(doc);
		return;
	}
	render(&a, &o);
	cJSON_Delete(doc);
	if (o.text.oom) {
		free(o.text.data);
		free(o.ends);
		reply_error(req, 500, "server_error", NULL, "out of memory");
		return;
	}
	extra = extra_headers(req, auth, a.stream);
	send_answer(mp, req, &a, &o, extra,
	            header_uint(req, "x-mock-delay-ms", MAX_DELAY_MS));
	free(extra);
}

static void serve_api(struct http_req *req, void *ctx)
{
	struct endpoint *ep = ctx;

	answer(ep->mp, req, ep->kind, NULL);
}

/* /mock/openai/deployments/NAME/(chat/completions|completions|embeddings|responses) */
static void serve_azure(struct http_req *req, void *ctx)
{
	static const char prefix[] = "/mock/openai/deployments/";
	static const struct { const char *suffix; enum kind kind; } ops[] = {
		{ "chat/completions", K_CHAT }, { "completions", K_COMPLETIONS },
		{ "embeddings", K_EMBEDDINGS }, { "responses", K_RESPONSES },
	};
	const char *name = http_req_path(req) + sizeof(prefix) - 1;
	const char *slash = strchr(name, '/');
	char deployment[128];

	if (slash && slash > name && (size_t)(slash - name) < sizeof(deployment)) {
		snprintf(deployment, sizeof(deployment), "%.*s", (int)(slash - name), name);
		for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
			if (strcmp(slash + 1, ops[i].suffix) == 0) {
				answer(ctx, req, ops[i].kind, deployment);
				return;
			}
	}
	reply_error(req, 404, "invalid_request_error", "DeploymentNotFound",
	            "The API deployment for this resource does not exist.");
}

static void serve_models(struct http_req *req, void *ctx)
{
	static const char list[] =
		"{\"object\":\"list\",\"data\":[{\"id\":\"mock-1\",\"object\":\"model\","
		"\"created\":1700000000,\"owned_by\":\"tollgate\"}]}";

	(void)ctx;
	if (!auth_kind(req)) {
		reply_error(req, 401, "invalid_request_error", "invalid_api_key",
		            "Missing API key: send Authorization: Bearer <key> or api-key.");
		return;
	}
	http_reply(req, 200, "application/json", list, sizeof(list) - 1);
}

static void serve_health(struct http_req *req, void *ctx)
{
	(void)ctx;
	http_reply(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
}

/* ---- lifecycle ------------------------------------------------------ */

struct mock_provider *mock_provider_new(struct http_server *srv)
{
	static const char *const paths[K__COUNT] = {
		[K_CHAT] = "/mock/v1/chat/completions$", [K_COMPLETIONS] = "/mock/v1/completions$",
		[K_EMBEDDINGS] = "/mock/v1/embeddings$", [K_RESPONSES] = "/mock/v1/responses$",
	};
	struct mock_provider *mp = calloc(1, sizeof(*mp));
	int rc = 0;

	if (!mp)
		return NULL;
	mp->srv = srv;
	mp->loop = http_server_loop(srv);
	for (int k = 0; k < K__COUNT; k++) {
		mp->eps[k].mp = mp;
		mp->eps[k].kind = (enum kind)k;
		rc |= http_server_route(srv, "POST", paths[k], serve_api, &mp->eps[k]);
	}
	rc |= http_server_route(srv, "POST", "/mock/openai/deployments/", serve_azure, mp);
	rc |= http_server_route(srv, "GET", "/mock/v1/models$", serve_models, mp);
	rc |= http_server_route(srv, "GET", "/mock/health$", serve_health, mp);
	if (rc) {
		log_error("mock provider: the HTTP route table is full");
		free(mp);
		return NULL;
	}
	return mp;
}

void mock_provider_free(struct mock_provider *mp)
{
	if (!mp)
		return;
	while (mp->jobs)
		job_finish(mp->jobs);
	free(mp);
}

unsigned mock_provider_active(const struct mock_provider *mp)
{
	return mp->active;
}
