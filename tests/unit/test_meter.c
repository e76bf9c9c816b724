/* test_meter.c -- request estimates and usage extraction (agent/meter.c). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "meter.h"

#define S(x) x, sizeof(x) - 1

CASE(estimate_ascii_and_cjk)
{
	CHECK(meter_estimate_text(S("")) == 0);
	CHECK(meter_estimate_text(S("abcd")) == 1);
	CHECK(meter_estimate_text(S("abcde")) == 2);
	CHECK(meter_estimate_text(S("你是谁")) == 3);       /* 3 code points */
	CHECK(meter_estimate_text(S("hi 你")) == 2);
}

CASE(request_chat)
{
	struct llm_request r;

	meter_parse_request(S("{\"model\":\"qwen-max\",\"messages\":[{\"role\":\"user\","
	                      "\"content\":\"你是谁\"}],\"max_tokens\":50}"), &r);
	CHECK(r.json);
	CHECK(strcmp(r.model, "qwen-max") == 0);
	CHECK(!r.stream && !r.include_usage);
	CHECK(r.max_tokens == 50);
	CHECK(r.prompt_tokens == 3 + 4);
}

CASE(request_stream_options)
{
	struct llm_request r;

	meter_parse_request(S("{\"model\":\"m\",\"stream\":true,\"stream_options\":"
	                      "{\"include_usage\":true},\"max_completion_tokens\":7,"
	                      "\"messages\":[{\"content\":[{\"type\":\"text\",\"text\":\"abcdefgh\"}]}]}"), &r);
	CHECK(r.stream && r.include_usage);
	CHECK(r.max_tokens == 7);
	CHECK(r.prompt_tokens >= 2);
}

CASE(request_duplicate_key)
{
	struct llm_request r;

	meter_parse_request(S("{\"model\":\"a\",\"messages\":[],\"model\":\"b\"}"), &r);
	CHECK(r.json && r.duplicate_key);
	meter_parse_request(S("{\"model\":\"a\",\"stream_options\":{\"include_usage\":false,"
	                      "\"include_usage\":true}}"), &r);
	CHECK(r.duplicate_key);
	/* the same name in different objects is no ambiguity */
	meter_parse_request(S("{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
	                      "{\"role\":\"user\",\"content\":\"y\"}]}"), &r);
	CHECK(r.json && !r.duplicate_key);
}

CASE(request_huge_numbers_clamped)
{
	struct llm_request r;
	struct llm_usage u;

	/* 1e999 parses as infinity: a token count, never an undefined cast */
	meter_parse_request(S("{\"model\":\"m\",\"max_tokens\":1e999}"), &r);
	CHECK(r.max_tokens == 1000000000000000LL);
	meter_parse_usage(S("{\"usage\":{\"prompt_tokens\":1e300,\"completion_tokens\":-5}}"), &u);
	CHECK(u.found && u.in == 1000000000000000LL && u.out == 0);
}

CASE(request_not_json)
{
	struct llm_request r;

	meter_parse_request(S("garbage{"), &r);
	CHECK(!r.json);
	CHECK(r.max_tokens == -1);
	CHECK(r.prompt_tokens == 2);
	meter_parse_request(S("[1,2]"), &r);
	CHECK(!r.json);
}

CASE(request_embeddings_and_responses)
{
	struct llm_request r;

	meter_parse_request(S("{\"model\":\"text-embedding-v3\",\"input\":[\"abcd\",\"efgh\"]}"), &r);
	CHECK(r.prompt_tokens == 2);
	meter_parse_request(S("{\"model\":\"gpt-4o\",\"input\":\"abcdabcd\",\"max_output_tokens\":9}"), &r);
	CHECK(r.prompt_tokens == 2 && r.max_tokens == 9);
}

CASE(usage_whole_body)
{
	struct llm_usage u;

	meter_parse_usage(S("{\"id\":\"x\",\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,"
	                    "\"total_tokens\":18}}"), &u);
	CHECK(u.found && u.in == 11 && u.out == 7);
	meter_parse_usage(S("{\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}"), &u);
	CHECK(u.found && u.in == 3 && u.out == 4);
	meter_parse_usage(S("{\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}"), &u);
	CHECK(u.found && u.in == 5 && u.out == 0);       /* embeddings */
	meter_parse_usage(S("{\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}}"), &u);
	CHECK(u.found && u.in == 1 && u.out == 2);
}

CASE(usage_absent_or_cut)
{
	struct llm_usage u;

	meter_parse_usage(S("{\"id\":\"x\"}"), &u);
	CHECK(!u.found);
	meter_parse_usage(NULL, 0, &u);
	CHECK(!u.found);
	/* the tail of a body larger than the buffer */
	meter_parse_usage(S("0.1,0.2]}],\"usage\":{\"prompt_tokens\":42,\"total_tokens\":42}}"), &u);
	CHECK(u.found && u.in == 42 && u.out == 0);
	meter_parse_usage(S("x\"usage\": {\"prompt_tokens\": 9, \"completion_tokens\": 1}"), &u);
	CHECK(u.found && u.in == 9 && u.out == 1);
	meter_parse_usage(S("\"usage\":{\"prompt_tokens\":"), &u);
	CHECK(!u.found);
}

CASE(rewrite_adds_include_usage)
{
	size_t n = 0;
	char *out = meter_rewrite_request(S("{\"model\":\"a\",\"stream\":true}"), true, "b", -1, &n);
	struct llm_request r;

	CHECK(out != NULL);
	if (!out)
		return;
	CHECK(n == strlen(out));
	meter_parse_request(out, n, &r);
	CHECK(r.include_usage && r.stream && strcmp(r.model, "b") == 0);
	free(out);
	CHECK(meter_rewrite_request(S("nope"), true, NULL, -1, &n) == NULL);
}

CASE(rewrite_clamps_max_tokens)
{
	size_t n = 0;
	struct llm_request r;
	char *out = meter_rewrite_request(S("{\"model\":\"a\",\"max_completion_tokens\":500}"),
	                                  false, NULL, 40, &n);

	CHECK(out != NULL);
	if (!out)
		return;
	meter_parse_request(out, n, &r);
	CHECK(r.max_tokens == 40 && !r.include_usage);
	CHECK(strstr(out, "max_completion_tokens") != NULL);
	free(out);
	out = meter_rewrite_request(S("{\"model\":\"a\"}"), false, NULL, 7, &n);
	CHECK(out && strstr(out, "\"max_tokens\":7"));
	free(out);
	/* two caps named: both lowered (a provider may honour either); one
	 * already below the cap stays; a cap that is not a number is replaced */
	out = meter_rewrite_request(S("{\"max_completion_tokens\":5000,\"max_output_tokens\":6000,"
	                              "\"max_tokens\":3}"), false, NULL, 40, &n);
	CHECK(out && strstr(out, "\"max_completion_tokens\":40") &&
	      strstr(out, "\"max_output_tokens\":40") && strstr(out, "\"max_tokens\":3"));
	free(out);
	out = meter_rewrite_request(S("{\"max_tokens\":-16}"), false, NULL, 9, &n);
	CHECK(out && strstr(out, "\"max_tokens\":9"));
	free(out);
	out = meter_rewrite_request(S("{\"max_tokens\":\"lots\"}"), false, NULL, 9, &n);
	CHECK(out && strstr(out, "\"max_tokens\":9") && !strstr(out, "lots"));
	free(out);
}

int main(void)
{
	RUN_ALL(estimate_ascii_and_cjk, request_chat, request_stream_options, request_duplicate_key,
	        request_huge_numbers_clamped, request_not_json, request_embeddings_and_responses,
	        usage_whole_body, usage_absent_or_cut, rewrite_adds_include_usage,
	        rewrite_clamps_max_tokens);
	DONE();
}
