// sdk_test.mjs -- the official OpenAI Node SDK against the Tollgate gateway.
//
//   node sdk_test.mjs <baseURL> <consumerKey> <unknownKey> <notAllowedKey>
//
// baseURL is the gateway's /v1 (e.g. http://127.0.0.1:8080/v1); consumerKey
// is allowed on the route of model $TG_SDK_MODEL (default qwen-max),
// notAllowedKey belongs to a known consumer outside that route's allow list.
// The upstream behind the gateway is tests/e2e/mock_upstream.py
// (completion = min(10, max_tokens) words "tok").
//
// Prints one line per case, "ok NAME" or "not ok NAME: reason", then
// "done N"; tests/e2e/test_openai_sdk.py turns them into PASS:/FAIL: lines.
// Exit status 0 when every case passed, 1 otherwise.
import OpenAI from "openai";

const [baseURL, goodKey, unknownKey, otherKey] = process.argv.slice(2);
if (!baseURL || !goodKey || !unknownKey || !otherKey) {
	console.error("usage: node sdk_test.mjs <baseURL> <consumerKey> <unknownKey> <notAllowedKey>");
	process.exit(2);
}
const MODEL = process.env.TG_SDK_MODEL || "qwen-max";
const messages = [{ role: "user", content: "Who are you?" }];

function client(apiKey, extra = {}) {
	return new OpenAI({ apiKey, baseURL, maxRetries: 0, timeout: 20000, ...extra });
}

function check(cond, what) {
	if (!cond) throw new Error(what);
}

function eq(got, want, what) {
	const g = JSON.stringify(got), w = JSON.stringify(want);
	if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

// The error an awaited call must raise: class, status, OpenAI error shape.
async function expectError(fn, Cls, status) {
	let err = null;
	try {
		const r = await fn();
		// a stream is lazy in some SDK versions: iterate to provoke the error
		if (r && typeof r[Symbol.asyncIterator] === "function")
			for await (const _ of r) { /* drain */ }
	} catch (e) {
		err = e;
	}
	check(err !== null, `no error raised (expected ${Cls.name} ${status})`);
	check(err instanceof Cls, `raised ${err && err.constructor && err.constructor.name}: ${err && err.message}, expected ${Cls.name}`);
	eq(err.status, status, "status");
	check(err.error && typeof err.error.message === "string" && err.error.message.length > 0,
	      `error.message missing: ${JSON.stringify(err.error)}`);
	check(typeof err.error.type === "string", `error.type missing: ${JSON.stringify(err.error)}`);
	check("code" in err.error, `error.code missing: ${JSON.stringify(err.error)}`);
	return err;
}

async function collect(stream) {
	const chunks = [];
	for await (const chunk of stream) chunks.push(chunk);
	return chunks;
}

function textOf(chunks) {
	return chunks.map((c) => (c.choices && c.choices[0] && c.choices[0].delta &&
	                          c.choices[0].delta.content) || "").join("");
}

const cases = {
	async chat_plain() {
		const r = await client(goodKey).chat.completions.create({ model: MODEL, messages, max_tokens: 3 });
		eq(r.object, "chat.completion", "object");
		eq(r.choices[0].message.content, "tok tok tok", "content");
		eq(r.usage.completion_tokens, 3, "usage.completion_tokens");
		check(r.usage.prompt_tokens > 0, "usage.prompt_tokens > 0");
		eq(r.usage.total_tokens, r.usage.prompt_tokens + 3, "usage.total_tokens");
	},

	async chat_stream() {
		const chunks = await collect(await client(goodKey).chat.completions.create(
			{ model: MODEL, messages, max_tokens: 4, stream: true }));
		eq(textOf(chunks), "tok tok tok tok", "streamed text");
		check(chunks.some((c) => c.choices[0] && c.choices[0].finish_reason === "stop"), "finish_reason stop");
		check(!chunks.some((c) => c.usage), "a usage chunk reached a client that did not ask for it");
		check(chunks.every((c) => c.choices.length === 1), "a chunk without choices");
	},

	async chat_stream_include_usage() {
		const chunks = await collect(await client(goodKey).chat.completions.create(
			{ model: MODEL, messages, max_tokens: 4, stream: true, stream_options: { include_usage: true } }));
		eq(textOf(chunks), "tok tok tok tok", "streamed text");
		const last = chunks[chunks.length - 1];
		eq(last.choices, [], "last chunk's choices");
		check(last.usage, "no usage in the last chunk");
		eq(last.usage.completion_tokens, 4, "usage.completion_tokens");
		check(last.usage.prompt_tokens > 0, "usage.prompt_tokens > 0");
		eq(chunks.filter((c) => c.usage).length, 1, "usage chunks");
	},

	// The SDK writes `messages` before `model`: the model comes last in
	// these bodies of 1 MiB and (streamed, rewritten by the gateway) 4 MiB.
	async chat_prompt_1mib() {
		const content = "a".repeat(1 << 20);
		const r = await client(goodKey).chat.completions.create(
			{ model: MODEL, messages: [{ role: "user", content }], max_tokens: 2 });
		eq(r.usage.completion_tokens, 2, "usage.completion_tokens");
		check(r.usage.prompt_tokens > (1 << 20) / 4, `usage.prompt_tokens ${r.usage.prompt_tokens}`);
	},

	async chat_stream_prompt_4mib() {
		const content = "b".repeat(4 * (1 << 20) - 1000);
		const chunks = await collect(await client(goodKey).chat.completions.create(
			{ model: MODEL, messages: [{ role: "user", content }], max_tokens: 3, stream: true }));
		eq(textOf(chunks), "tok tok tok", "streamed text");
		check(!chunks.some((c) => c.usage), "a usage chunk reached a client that did not ask for it");
	},

	async chat_stream_include_usage_false() {
		const chunks = await collect(await client(goodKey).chat.completions.create(
			{ model: MODEL, messages, max_tokens: 2, stream: true, stream_options: { include_usage: false } }));
		eq(textOf(chunks), "tok tok", "streamed text");
		check(!chunks.some((c) => c.usage), "a usage chunk reached a client that said include_usage: false");
	},

	async responses_plain() {
		const r = await client(goodKey).responses.create({ model: MODEL, input: "Say tok", max_output_tokens: 2 });
		eq(r.output_text, "tok tok", "output_text");
		eq(r.usage.output_tokens, 2, "usage.output_tokens");
	},

	async embeddings() {
		const r = await client(goodKey).embeddings.create(
			{ model: MODEL, input: ["alpha", "beta"], encoding_format: "float" });
		eq(r.data.length, 2, "embeddings");
		check(r.usage.prompt_tokens > 0, "usage.prompt_tokens > 0");
	},

	async unknown_key_permission_denied() {
		await expectError(() => client(unknownKey).chat.completions.create({ model: MODEL, messages }),
		                  OpenAI.PermissionDeniedError, 403);
	},

	async unknown_key_stream_permission_denied() {
		await expectError(() => client(unknownKey).chat.completions.create({ model: MODEL, messages, stream: true }),
		                  OpenAI.PermissionDeniedError, 403);
	},

	async not_allowed_consumer_permission_denied() {
		await expectError(() => client(otherKey).chat.completions.create({ model: MODEL, messages }),
		                  OpenAI.PermissionDeniedError, 403);
	},

	async no_key_authentication_error() {
		// The SDK insists on a key: a fetch that drops Authorization sends none.
		const stripping = (url, init = {}) => {
			const headers = new Headers(init.headers);
			headers.delete("authorization");
			return fetch(url, { ...init, headers });
		};
		await expectError(() => client("will-be-removed", { fetch: stripping })
			.chat.completions.create({ model: MODEL, messages }), OpenAI.AuthenticationError, 401);
	},

	async two_keys_authentication_error() {
		// a second, different key in x-api-key next to the SDK's Bearer key
		await expectError(() => client(goodKey, { defaultHeaders: { "x-api-key": otherKey } })
			.chat.completions.create({ model: MODEL, messages }), OpenAI.AuthenticationError, 401);
	},

	async unknown_model_not_found() {
		await expectError(() => client(goodKey).chat.completions.create({ model: "no-such-model", messages }),
		                  OpenAI.NotFoundError, 404);
	},

	async models_list() {
		// the exact names of the routes this key may use, nothing of the others'
		const ids = [];
		for await (const m of client(goodKey).models.list()) {
			eq(m.object, "model", "object");
			ids.push(m.id);
		}
		eq(ids, [MODEL], "models.list() ids");
	},

	async models_retrieve() {
		const m = await client(goodKey).models.retrieve(MODEL);
		eq([m.id, m.object, m.owned_by], [MODEL, "model", "openai-up"], "models.retrieve()");
		await expectError(() => client(goodKey).models.retrieve("other-1"), OpenAI.NotFoundError, 404);
	},
};

let failed = 0;
for (const [name, fn] of Object.entries(cases)) {
	try {
		await fn();
		console.log(`ok ${name}`);
	} catch (e) {
		failed++;
		console.log(`not ok ${name}: ${String(e && e.stack || e).replace(/\n/g, " | ")}`);
	}
}
console.log(`done ${Object.keys(cases).length}`);
process.exit(failed ? 1 : 0);
