/* test_metrics.c -- the Prometheus registry: exact exposition text, escaping,
 * histograms, the product's families, handles, limits and collect callbacks.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "metrics.h"
#include "spop_server.h"

#define L(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* The rendered block of one family: from its "# HELP" line up to the next
 * family's (malloc'd, "" if absent). */
static char *render_family(struct metrics *m, const char *name)
{
	struct buf b = { 0 };
	char head[256], *start, *end, *out;
	size_t n;

	snprintf(head, sizeof(head), "# HELP %s ", name);
	if (metrics_render(m, &b) != 0 || !b.data || !(start = strstr(b.data, head))) {
		buf_free(&b);
		return strdup("");
	}
	end = strstr(start + 1, "# HELP ");
	n = end ? (size_t)(end - start) : strlen(start);
	out = strndup(start, n);
	buf_free(&b);
	return out;
}

static int text_is(char *got, const char *want)
{
	int ok = strcmp(got, want) == 0;

	if (!ok)
		fprintf(stderr, "--- got:\n%s--- want:\n%s---\n", got, want);
	free(got);
	return ok;
}

static int has_line(struct metrics *m, const char *line)
{
	struct buf b = { 0 };
	char want[512];
	int ok;

	snprintf(want, sizeof(want), "\n%s\n", line);
	ok = metrics_render(m, &b) == 0 && strstr(b.data, want) != NULL;
	if (!ok)
		fprintf(stderr, "  missing line: %s\n", line);
	buf_free(&b);
	return ok;
}

CASE(counter_exact_text)
{
	struct metrics *m = metrics_new();
	int f = metrics_family(m, "tollgate_test_total", METRIC_COUNTER, "A test counter.",
	                       L("a", "b"), NULL, 0);

	CHECK(f >= TGM__COUNT);
	metrics_add(m, f, L("x", "y"), 1);
	metrics_add(m, f, L("x", "y"), 2);
	metrics_add(m, f, L("x", "z"), 0.5);
	metrics_add(m, f, L("x", "z"), -3);          /* counters never go down */
	CHECK(text_is(render_family(m, "tollgate_test_total"),
	              "# HELP tollgate_test_total A test counter.\n"
	              "# TYPE tollgate_test_total counter\n"
	              "tollgate_test_total{a=\"x\",b=\"y\"} 3\n"
	              "tollgate_test_total{a=\"x\",b=\"z\"} 0.5\n"));
	metrics_free(m);
}

CASE(gauge_and_unlabelled)
{
	struct metrics *m = metrics_new();
	int g = metrics_family(m, "tollgate_test_gauge", METRIC_GAUGE, "G.", NULL, NULL, 0);
	int c = metrics_family(m, "tollgate_test_plain_total", METRIC_COUNTER, "C.", NULL, NULL, 0);

	CHECK(c >= TGM__COUNT);
	/* an unlabelled family shows its series at 0 from the start */
	CHECK(text_is(render_family(m, "tollgate_test_plain_total"),
	              "# HELP tollgate_test_plain_total C.\n"
	              "# TYPE tollgate_test_plain_total counter\n"
	              "tollgate_test_plain_total 0\n"));
	metrics_set(m, g, NULL, -2.5);
	metrics_add(m, g, NULL, 1);
	CHECK(text_is(render_family(m, "tollgate_test_gauge"),
	              "# HELP tollgate_test_gauge G.\n"
	              "# TYPE tollgate_test_gauge gauge\n"
	              "tollgate_test_gauge -1.5\n"));
	metrics_set(m, g, NULL, 1.0 / 0.0);
	CHECK(has_line(m, "tollgate_test_gauge +Inf"));
	metrics_set(m, g, NULL, 0.0 / 0.0);
	CHECK(has_line(m, "tollgate_test_gauge NaN"));
	metrics_set(m, g, NULL, 123456789012.0);
	CHECK(has_line(m, "tollgate_test_gauge 123456789012"));
	metrics_set(m, g, NULL, 0.1);
	CHECK(has_line(m, "tollgate_test_gauge 0.1"));
	metrics_set(m, g, NULL, 1e20);
	CHECK(has_line(m, "tollgate_test_gauge 1e+20"));
	metrics_free(m);
}

CASE(label_and_help_escaping)
{
	struct metrics *m = metrics_new();
	int f = metrics_family(m, "tollgate_esc_total", METRIC_COUNTER,
	                       "Help with \\ backslash\nand newline \"quotes\".", L("v"), NULL, 0);
	char longv[300];

	metrics_add(m, f, L("a\\b\"c\nd"), 1);
	metrics_add(m, f, L("\xe6\xa8\xa1\xe5\x9e\x8b"), 1);   /* UTF-8 is kept */
	metrics_add(m, f, L("bad\xff"), 1);                     /* invalid UTF-8 */
	metrics_add(m, f, L("\xc0\xaf"), 1);                    /* overlong: invalid too */
	memset(longv, 'x', sizeof(longv) - 1);
	longv[sizeof(longv) - 1] = 0;
	metrics_add(m, f, L(longv), 1);                         /* too long */
	metrics_add(m, f, L(NULL), 1);                          /* NULL is "" */
	CHECK(text_is(render_family(m, "tollgate_esc_total"),
	              "# HELP tollgate_esc_total Help with \\\\ backslash\\nand newline \"quotes\".\n"
	              "# TYPE tollgate_esc_total counter\n"
	              "tollgate_esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
	              "tollgate_esc_total{v=\"\xe6\xa8\xa1\xe5\x9e\x8b\"} 1\n"
	              "tollgate_esc_total{v=\"_invalid_\"} 3\n"
	              "tollgate_esc_total{v=\"\"} 1\n"));
	metrics_free(m);
}

CASE(histogram_cumulative)
{
	struct metrics *m = metrics_new();
	const double b[] = { 0.25, 0.5, 1 };
	int h = metrics_family(m, "tollgate_test_seconds", METRIC_HISTOGRAM, "H.", NULL, b, 3);

	metrics_observe(m, h, NULL, 0.125);
	metrics_observe(m, h, NULL, 0.25);                /* le is inclusive */
	metrics_observe(m, h, NULL, 0.375);
	metrics_observe(m, h, NULL, 2);                   /* only in +Inf */
	CHECK(text_is(render_family(m, "tollgate_test_seconds"),
	              "# HELP tollgate_test_seconds H.\n"
	              "# TYPE tollgate_test_seconds histogram\n"
	              "tollgate_test_seconds_bucket{le=\"0.25\"} 2\n"
	              "tollgate_test_seconds_bucket{le=\"0.5\"} 3\n"
	              "tollgate_test_seconds_bucket{le=\"1\"} 3\n"
	              "tollgate_test_seconds_bucket{le=\"+Inf\"} 4\n"
	              "tollgate_test_seconds_sum 2.75\n"
	              "tollgate_test_seconds_count 4\n"));
	metrics_free(m);
}

CASE(histogram_with_labels)
{
	struct metrics *m = metrics_new();
	const double b[] = { 1, 10 };
	int h = metrics_family(m, "tollgate_test_size", METRIC_HISTOGRAM, "S.", L("route"), b, 2);

	metrics_observe(m, h, L("r1"), 5);
	metrics_observe(m, h, L("r1"), 50);
	CHECK(text_is(render_family(m, "tollgate_test_size"),
	              "# HELP tollgate_test_size S.\n"
	              "# TYPE tollgate_test_size histogram\n"
	              "tollgate_test_size_bucket{route=\"r1\",le=\"1\"} 0\n"
	              "tollgate_test_size_bucket{route=\"r1\",le=\"10\"} 1\n"
	              "tollgate_test_size_bucket{route=\"r1\",le=\"+Inf\"} 2\n"
	              "tollgate_test_size_sum{route=\"r1\"} 55\n"
	              "tollgate_test_size_count{route=\"r1\"} 2\n"));
	metrics_free(m);
}

CASE(product_families)
{
	struct metrics *m = metrics_new();
	struct buf b = { 0 };
	static const char *const types[] = {
		"# TYPE tollgate_tokens_total counter",
		"# TYPE tollgate_requests_total counter",
		"# TYPE tollgate_admission_seconds histogram",
		"# TYPE tollgate_spop_frames_total counter",
		"# TYPE tollgate_spop_errors_total counter",
		"# TYPE tollgate_settlements_total counter",
		"# TYPE tollgate_limit_decisions_total counter",
		"# TYPE tollgate_quota_remaining gauge",
		"# TYPE tollgate_store_seconds histogram",
		"# TYPE tollgate_store_errors_total counter",
		"# TYPE tollgate_store_breaker_open gauge",
		"# TYPE tollgate_store_reconnects_total counter",
		"# TYPE tollgate_overshoot_tokens_total counter",
		"# TYPE tollgate_unverdicted_total counter",
	};

	CHECK(m != NULL);
	CHECK(metrics_render(m, &b) == 0);
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (!strstr(b.data, types[i]))
			fprintf(stderr, "  missing %s\n", types[i]);
		CHECK(strstr(b.data, types[i]) != NULL);
	}
	/* fixed label sets are visible at 0 before anything happens */
	CHECK(strstr(b.data, "\ntollgate_spop_frames_total{direction=\"in\"} 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_spop_frames_total{direction=\"out\"} 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_settlements_total{result=\"late\",source=\"record\"} 0\n"));
	CHECK(strstr(b.data, "\ntollgate_store_errors_total 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_store_reconnects_total 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_unverdicted_total 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_admission_seconds_bucket{le=\"1e-05\"} 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_admission_seconds_bucket{le=\"2.5e-05\"} 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_admission_seconds_bucket{le=\"0.00025\"} 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_admission_seconds_bucket{le=\"1\"} 0\n") != NULL);
	CHECK(strstr(b.data, "\ntollgate_admission_seconds_bucket{le=\"+Inf\"} 0\n") != NULL);
	CHECK(strstr(b.data, "tollgate_build_info{version=\"") != NULL);
	/* every sample line is "name{...} value" or "name value" */
	for (char *line = b.data; *line; line = strchr(line, '\n') + 1) {
		CHECK(strncmp(line, "tollgate_", 9) == 0 || strncmp(line, "# HELP tollgate_", 16) == 0 ||
		      strncmp(line, "# TYPE tollgate_", 16) == 0);
		CHECK(strchr(line, '\n') != NULL);
	}
	buf_free(&b);
	metrics_free(m);
}

CASE(typed_helpers)
{
	struct metrics *m = metrics_new();

	tgm_tokens(m, TGM_INPUT, "aliyun", "aliyun", "qwen-max", "user1", 12);
	tgm_tokens(m, TGM_INPUT, "aliyun", "aliyun", "qwen-max", "user1", 3);
	tgm_tokens(m, TGM_OUTPUT, "aliyun", "aliyun", "qwen-max", "user1", 7);
	tgm_request(m, "deny", 429, "aliyun", "user1");
	tgm_admission(m, 0.00003);
	tgm_settlement(m, TGM_DUPLICATE, TGM_SRC_RECORD);
	tgm_limit_decision(m, "default_rule", "deny");
	tgm_quota_remaining(m, "user1", 95);
	tgm_store_latency(m, 0.002);
	tgm_store_error(m);
	tgm_store_breaker(m, true);
	tgm_store_reconnects(m, 12);
	tgm_overshoot(m, "default_rule", 4);
	tgm_unverdicted(m);
	tgm_unverdicted(NULL);                         /* no registry: a no-op */
	CHECK(has_line(m, "tollgate_tokens_total{direction=\"input\",route=\"aliyun\","
	                  "provider=\"aliyun\",model=\"qwen-max\",consumer=\"user1\"} 15"));
	CHECK(has_line(m, "tollgate_tokens_total{direction=\"output\",route=\"aliyun\","
	                  "provider=\"aliyun\",model=\"qwen-max\",consumer=\"user1\"} 7"));
	CHECK(has_line(m, "tollgate_requests_total{decision=\"deny\",status=\"429\","
	                  "route=\"aliyun\",consumer=\"user1\"} 1"));
	CHECK(has_line(m, "tollgate_admission_seconds_bucket{le=\"2.5e-05\"} 0"));
	CHECK(has_line(m, "tollgate_admission_seconds_bucket{le=\"5e-05\"} 1"));
	CHECK(has_line(m, "tollgate_admission_seconds_count 1"));
	CHECK(has_line(m, "tollgate_settlements_total{result=\"duplicate\",source=\"record\"} 1"));
	CHECK(has_line(m, "tollgate_limit_decisions_total{rule=\"default_rule\",outcome=\"deny\"} 1"));
	CHECK(has_line(m, "tollgate_quota_remaining{consumer=\"user1\"} 95"));
	CHECK(has_line(m, "tollgate_store_seconds_bucket{le=\"0.0025\"} 1"));
	CHECK(has_line(m, "tollgate_store_errors_total 1"));
	CHECK(has_line(m, "tollgate_store_breaker_open 1"));
	CHECK(has_line(m, "tollgate_store_reconnects_total 12"));
	CHECK(has_line(m, "tollgate_overshoot_tokens_total{rule=\"default_rule\"} 4"));
	CHECK(has_line(m, "tollgate_unverdicted_total 1"));
	metrics_free(m);
}

CASE(handles_are_stable)
{
	struct metrics *m = metrics_new();
	int f = metrics_family(m, "tollgate_many_total", METRIC_COUNTER, "M.", L("k"), NULL, 0);
	struct metric_series *first = metrics_series(m, f, L("k0"));
	char v[32];

	metrics_series_add(first, 1);
	for (int i = 1; i < 5000; i++) {              /* forces the table to grow */
		snprintf(v, sizeof(v), "k%d", i);
		metrics_add(m, f, L(v), i);
	}
	CHECK(metrics_series(m, f, L("k0")) == first);
	metrics_series_add(first, 1);
	CHECK(has_line(m, "tollgate_many_total{k=\"k0\"} 2"));
	CHECK(has_line(m, "tollgate_many_total{k=\"k4999\"} 4999"));
	for (int i = 0; i < 1000000; i++)              /* hot path: no allocation */
		metrics_series_add(first, 1);
	CHECK(has_line(m, "tollgate_many_total{k=\"k0\"} 1000002"));
	CHECK(metrics_series(m, 9999, L("x")) == NULL);
	CHECK(metrics_series(m, f, NULL) == NULL);
	metrics_series_add(NULL, 1);                   /* tolerated */
	metrics_free(m);
}

CASE(cardinality_cap)
{
	struct metrics *m = metrics_new();
	int f = metrics_family(m, "tollgate_cap_total", METRIC_COUNTER, "Cap.", L("model"), NULL, 0);
	struct buf b = { 0 };
	char v[32];
	int lines = 0;

	for (int i = 0; i < 10050; i++) {
		snprintf(v, sizeof(v), "m%d", i);
		metrics_add(m, f, L(v), 1);
	}
	CHECK(metrics_render(m, &b) == 0);
	for (char *p = strstr(b.data, "\ntollgate_cap_total{"); p;
	     p = strstr(p + 1, "\ntollgate_cap_total{"))
		lines++;
	CHECK(lines == 10001);
	CHECK(strstr(b.data, "\ntollgate_cap_total{model=\"_overflow_\"} 50\n") != NULL);
	buf_free(&b);
	metrics_free(m);
}

struct collect_state {
	int calls;
	double quota;
};

static void collect_quota(struct metrics *m, void *arg)
{
	struct collect_state *st = arg;

	st->calls++;
	metrics_family_hide(m, TGM_QUOTA_REMAINING);
	tgm_quota_remaining(m, "alice", st->quota);
}

CASE(collect_callbacks)
{
	struct metrics *m = metrics_new();
	struct collect_state st = { 0, 40 };
	struct buf b = { 0 };

	tgm_quota_remaining(m, "gone", 5);            /* hidden by the collector */
	CHECK(metrics_on_collect(m, collect_quota, &st) == 0);
	CHECK(has_line(m, "tollgate_quota_remaining{consumer=\"alice\"} 40"));
	CHECK(st.calls == 1);
	st.quota = 39;
	CHECK(metrics_render(m, &b) == 0);
	CHECK(strstr(b.data, "tollgate_quota_remaining{consumer=\"alice\"} 39\n") != NULL);
	CHECK(strstr(b.data, "consumer=\"gone\"") == NULL);
	CHECK(st.calls == 2);
	metrics_collect_remove(m, collect_quota, &st);
	buf_reset(&b);
	CHECK(metrics_render(m, &b) == 0);
	CHECK(st.calls == 2);
	buf_free(&b);
	metrics_free(m);
}

CASE(spop_stats_mapping)
{
	struct metrics *m = metrics_new();
	struct spop_stats st;

	memset(&st, 0, sizeof(st));
	st.frames_in = 10;
	st.frames_out = 9;
	st.conns_active = 2;
	st.errors[SPOP_ST_TOO_BIG] = 3;
	st.errors[SPOP_ST_UNKNOWN] = 1;
	metrics_spop_stats(m, &st);
	CHECK(has_line(m, "tollgate_spop_frames_total{direction=\"in\"} 10"));
	CHECK(has_line(m, "tollgate_spop_frames_total{direction=\"out\"} 9"));
	CHECK(has_line(m, "tollgate_spop_connections 2"));
	CHECK(has_line(m, "tollgate_spop_errors_total{status=\"too_big\"} 3"));
	CHECK(has_line(m, "tollgate_spop_errors_total{status=\"unknown\"} 1"));
	metrics_free(m);
}

CASE(family_validation)
{
	struct metrics *m = metrics_new();
	const double good[] = { 1, 2 }, bad[] = { 2, 1 };

	CHECK(metrics_family(m, "other_total", METRIC_COUNTER, "x", NULL, NULL, 0) == -1);
	CHECK(metrics_family(m, "tollgate_bad-name", METRIC_COUNTER, "x", NULL, NULL, 0) == -1);
	CHECK(metrics_family(m, "tollgate_tokens_total", METRIC_COUNTER, "dup", NULL, NULL, 0) == -1);
	CHECK(metrics_family(m, "tollgate_l_total", METRIC_COUNTER, "x", L("1x"), NULL, 0) == -1);
	CHECK(metrics_family(m, "tollgate_l_total", METRIC_COUNTER, "x", L("__x"), NULL, 0) == -1);
	CHECK(metrics_family(m, "tollgate_h", METRIC_HISTOGRAM, "x", NULL, NULL, 0) == -1);
	CHECK(metrics_family(m, "tollgate_h", METRIC_HISTOGRAM, "x", NULL, bad, 2) == -1);
	CHECK(metrics_family(m, "tollgate_h", METRIC_HISTOGRAM, "x", L("le"), good, 2) == -1);
	CHECK(metrics_family(m, "tollgate_h", METRIC_HISTOGRAM, "x", NULL, good, 2) >= TGM__COUNT);
	CHECK(metrics_family(m, "tollgate_ns:rate", METRIC_GAUGE, "x", NULL, NULL, 0) >= TGM__COUNT);
	metrics_free(m);
}

int main(void)
{
	RUN_ALL(counter_exact_text, gauge_and_unlabelled, label_and_help_escaping,
	        histogram_cumulative, histogram_with_labels, product_families, typed_helpers,
	        handles_are_stable, cardinality_cap, collect_callbacks, spop_stats_mapping,
	        family_validation);
	DONE();
}
