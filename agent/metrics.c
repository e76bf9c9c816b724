/* metrics.c -- the Prometheus registry (see metrics.h).
 *
 * Families live in an array indexed by id. Every series of every family is
 * in one open-addressing hash table (linear probing, power-of-two size,
 * grown at 70% load) keyed by (family id, label values); the table holds
 * pointers, so growing it never moves a series. A series is one allocation:
 * the struct, its histogram bucket counts, its raw label values (for
 * lookups) and its escaped label text (for rendering), so a scrape only
 * concatenates precomputed strings and formats numbers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "dashboard.html.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "spop_server.h"

#define MAX_SERIES      10000u
#define MAX_VALUE_LEN   256u
#define MAX_COLLECTORS  32u
#define INVALID_VALUE   "_invalid_"
#define OVERFLOW_VALUE  "_overflow_"

struct metric_family {
	char *name, *help;
	enum metric_type type;
	unsigned nlabels;
	char **labels;
	double *bounds;                /* histogram upper bounds, +Inf implicit */
	char (*le)[32];                /* their text */
	size_t nbounds;
	unsigned nseries;
	bool overflow_warned;
	struct metric_series *first, *last;
};

struct metric_series {
	struct metric_family *fam;
	int family;
	struct metric_series *next;    /* family order */
	uint64_t hash;
	bool hidden;
	double value, sum;
	uint64_t count;
	const char *values;            /* nlabels NUL-terminated strings in a row */
	const char *text;              /* a="x",b="y" */
	uint64_t buckets[];            /* per bucket, not cumulative */
};

struct collector {
	metrics_collect_fn fn;
	void *arg;
};

struct metrics {
	struct metric_family **fams;
	unsigned nfams, capfams;
	struct metric_series **table;
	size_t tsize, tused;
	struct collector collectors[MAX_COLLECTORS];
	unsigned ncollectors;
	struct buf scrape;     /* reused by the /metrics handler */
};

/* Shortest text that reads back as v; integers without exponent up to 1e15. */
static void fmt_double(char *out, size_t len, double v)
{
	if (isnan(v)) {
		snprintf(out, len, "NaN");
	} else if (isinf(v)) {
		snprintf(out, len, v > 0 ? "+Inf" : "-Inf");
	} else if (v == 0) {
		snprintf(out, len, "0");
	} else if (v == floor(v) && fabs(v) < 1e15) {
		snprintf(out, len, "%.0f", v);
	} else {
		for (int p = 1; p <= 17; p++) {
			snprintf(out, len, "%.*g", p, v);
			if (strtod(out, NULL) == v)
				break;
		}
	}
}

/* ---- names and values ----------------------------------------------- */

static bool valid_name(const char *s, bool colon_ok)
{
	if (!s || !*s || (*s >= '0' && *s <= '9'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || (colon_ok && *s == ':')))
			return false;
	return true;
}

static bool valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		size_t k;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1; cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2; cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3; cp = c & 0x07;
		} else {
			return false;
		}
		if (i + k >= n)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return false;
		i += k + 1;
	}
	return true;
}

/* The value a label really gets (see metrics.h). */
static const char *norm_value(const char *v)
{
	size_t n;

	if (!v)
		return "";
	n = strlen(v);
	if (n > MAX_VALUE_LEN || !valid_utf8((const unsigned char *)v, n))
		return INVALID_VALUE;
	return v;
}

/* Escapes a label value (\\, \", \n) or HELP text (\\, \n). */
static size_t escape(char *out, const char *s, bool quote)
{
	size_t o = 0;

	for (; *s; s++) {
		if (*s == '\\' || (quote && *s == '"')) {
			out[o++] = '\\';
			out[o++] = *s;
		} else if (*s == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else {
			out[o++] = *s;
		}
	}
	out[o] = 0;
	return o;
}

static uint64_t hash_key(int family, const char *const *vals, unsigned n)
{
	uint64_t h = 1469598103934665603ull;

	h = (h ^ (uint64_t)(unsigned)family) * 1099511628211ull;
	for (unsigned i = 0; i < n; i++) {
		for (const unsigned char *p = (const unsigned char *)vals[i]; *p; p++)
			h = (h ^ *p) * 1099511628211ull;
		h = (h ^ 0xffu) * 1099511628211ull;   /* never inside UTF-8 */
	}
	return h;
}

static bool series_equal(const struct metric_series *s, int family, const char *const *vals,
                         unsigned n)
{
	const char *p = s->values;

	if (s->family != family)
		return false;
	for (unsigned i = 0; i < n; i++) {
		if (strcmp(p, vals[i]) != 0)
			return false;
		p += strlen(p) + 1;
	}
	return true;
}

/* ---- the hash table ------------------------------------------------- */

static int table_grow(struct metrics *m)
{
	size_t size = m->tsize ? m->tsize * 2 : 256;
	struct metric_series **t = calloc(size, sizeof(*t));

	if (!t)
		return -1;
	for (size_t i = 0; i < m->tsize; i++) {
		struct metric_series *s = m->table[i];
		size_t j;

		if (!s)
			continue;
		for (j = s->hash & (size - 1); t[j]; j = (j + 1) & (size - 1))
			;
		t[j] = s;
	}
	free(m->table);
	m->table = t;
	m->tsize = size;
	return 0;
}

static struct metric_series *table_find(const struct metrics *m, uint64_t h, int family,
                                        const char *const *vals, unsigned n)
{
	if (!m->tsize)
		return NULL;
	for (size_t j = h & (m->tsize - 1); m->table[j]; j = (j + 1) & (m->tsize - 1))
		if (m->table[j]->hash == h && series_equal(m->table[j], family, vals, n))
			return m->table[j];
	return NULL;
}

static int table_insert(struct metrics *m, struct metric_series *s)
{
	size_t j;

	if ((m->tused + 1) * 10 > m->tsize * 7 && table_grow(m) != 0)
		return -1;
	for (j = s->hash & (m->tsize - 1); m->table[j]; j = (j + 1) & (m->tsize - 1))
		;
	m->table[j] = s;
	m->tused++;
	return 0;
}

/* ---- series --------------------------------------------------------- */

static struct metric_series *series_new(struct metric_family *f, int family, uint64_t h,
                                        const char *const *vals)
{
	size_t nb = f->type == METRIC_HISTOGRAM ? f->nbounds : 0;
	size_t raw = 0, text = 1;
	struct metric_series *s;
	char *p, *t;

	for (unsigned i = 0; i < f->nlabels; i++) {
		raw += strlen(vals[i]) + 1;
		text += strlen(f->labels[i]) + 4 + 2 * strlen(vals[i]);
	}
	s = calloc(1, sizeof(*s) + nb * sizeof(uint64_t) + raw + text);
	if (!s)
		return NULL;
	s->fam = f;
	s->family = family;
	s->hash = h;
	p = (char *)(s->buckets + nb);
	t = p + raw;
	s->values = p;
	s->text = t;
	for (unsigned i = 0; i < f->nlabels; i++) {
		size_t n = strlen(vals[i]) + 1;

		memcpy(p, vals[i], n);
		p += n;
		t += sprintf(t, "%s%s=\"", i ? "," : "", f->labels[i]);
		t += escape(t, vals[i], true);
		*t++ = '"';
	}
	*t = 0;
	return s;
}

static struct metric_series *series_link(struct metrics *m, struct metric_family *f,
                                         struct metric_series *s)
{
	if (table_insert(m, s) != 0) {
		free(s);
		return NULL;
	}
	if (f->last)
		f->last->next = s;
	else
		f->first = s;
	f->last = s;
	f->nseries++;
	return s;
}

static struct metric_series *series_overflow(struct metrics *m, struct metric_family *f,
                                             int family)
{
	const char *vals[64];
	unsigned n = f->nlabels < 64 ? f->nlabels : 64;
	uint64_t h;
	struct metric_series *s;

	for (unsigned i = 0; i < n; i++)
		vals[i] = OVERFLOW_VALUE;
	h = hash_key(family, vals, n);
	if ((s = table_find(m, h, family, vals, n)))
		return s;
	if (!f->overflow_warned) {
		log_warn("metrics: %s has %u series; new label sets go to \"%s\"", f->name,
		         f->nseries, OVERFLOW_VALUE);
		f->overflow_warned = true;
	}
	s = series_new(f, family, h, vals);
	return s ? series_link(m, f, s) : NULL;
}

struct metric_series *metrics_series(struct metrics *m, int family, const char *const *values)
{
	struct metric_family *f;
	const char *vals[64];
	struct metric_series *s;
	uint64_t h;

	if (!m || family < 0 || (unsigned)family >= m->nfams)
		return NULL;
	f = m->fams[family];
	if (f->nlabels && !values)
		return NULL;
	for (unsigned i = 0; i < f->nlabels; i++)
		vals[i] = norm_value(values[i]);
	h = hash_key(family, vals, f->nlabels);
	if ((s = table_find(m, h, family, vals, f->nlabels)))
		return s;
	if (f->nseries >= MAX_SERIES)
		return series_overflow(m, f, family);
	s = series_new(f, family, h, vals);
	return s ? series_link(m, f, s) : NULL;
}

void metrics_series_add(struct metric_series *s, double v)
{
	if (!s || (s->fam->type == METRIC_COUNTER && !(v >= 0)))
		return;
	s->value += v;
	s->hidden = false;
}

void metrics_series_set(struct metric_series *s, double v)
{
	if (!s)
		return;
	s->value = v;
	s->hidden = false;
}

void metrics_series_observe(struct metric_series *s, double v)
{
	const struct metric_family *f;
	size_t i;

	if (!s || s->fam->type != METRIC_HISTOGRAM || isnan(v))
		return;
	f = s->fam;
	for (i = 0; i < f->nbounds && v > f->bounds[i]; i++)
		;
	if (i < f->nbounds)
		s->buckets[i]++;
	s->sum += v;
	s->count++;
	s->hidden = false;
}

void metrics_add(struct metrics *m, int family, const char *const *values, double v)
{
	metrics_series_add(metrics_series(m, family, values), v);
}

void metrics_set(struct metrics *m, int family, const char *const *values, double v)
{
	metrics_series_set(metrics_series(m, family, values), v);
}

void metrics_observe(struct metrics *m, int family, const char *const *values, double v)
{
	metrics_series_observe(metrics_series(m, family, values), v);
}

void metrics_family_hide(struct metrics *m, int family)
{
	if (!m || family < 0 || (unsigned)family >= m->nfams)
		return;
	for (struct metric_series *s = m->fams[family]->first; s; s = s->next)
		s->hidden = true;
}

/* ---- families ------------------------------------------------------- */

static void family_free(struct metric_family *f)
{
	if (!f)
		return;
	for (unsigned i = 0; i < f->nlabels; i++)
		free(f->labels[i]);
	free(f->labels);
	free(f->bounds);
	free(f->le);
	free(f->name);
	free(f->help);
	free(f);
}

static bool family_args_ok(const struct metrics *m, const char *name, enum metric_type type,
                           const char *const *labels, const double *buckets, size_t nb)
{
	if (!valid_name(name, true) || strncmp(name, "tollgate_", 9) != 0)
		return false;
	for (unsigned i = 0; i < m->nfams; i++)
		if (strcmp(m->fams[i]->name, name) == 0)
			return false;
	for (unsigned i = 0; labels && labels[i]; i++)
		if (i >= 63 || !valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0 ||
		    (type == METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0))
			return false;
	if (type != METRIC_HISTOGRAM)
		return true;
	if (!buckets || nb == 0)
		return false;
	for (size_t i = 0; i < nb; i++)
		if (!isfinite(buckets[i]) || (i && buckets[i] <= buckets[i - 1]))
			return false;
	return true;
}

static int family_fill(struct metric_family *f, const char *name, enum metric_type type,
                       const char *help, const char *const *labels, const double *buckets,
                       size_t nb)
{
	char *h;

	f->type = type;
	f->name = strdup(name);
	h = malloc(2 * strlen(help ? help : "") + 1);
	if (!f->name || !h) {
		free(h);
		return -1;
	}
	escape(h, help ? help : "", false);
	f->help = h;
	while (labels && labels[f->nlabels])
		f->nlabels++;
	if (f->nlabels && !(f->labels = calloc(f->nlabels, sizeof(char *))))
		return -1;
	for (unsigned i = 0; i < f->nlabels; i++)
		if (!(f->labels[i] = strdup(labels[i])))
			return -1;
	if (type != METRIC_HISTOGRAM)
		return 0;
	f->bounds = malloc(nb * sizeof(double));
	f->le = malloc(nb * sizeof(*f->le));
	if (!f->bounds || !f->le)
		return -1;
	f->nbounds = nb;
	for (size_t i = 0; i < nb; i++) {
		f->bounds[i] = buckets[i];
		fmt_double(f->le[i], sizeof(f->le[i]), buckets[i]);
	}
	return 0;
}

int metrics_family(struct metrics *m, const char *name, enum metric_type type,
                   const char *help, const char *const *labels, const double *buckets,
                   size_t nbuckets)
{
	struct metric_family *f;
	int id;

	if (!m || !family_args_ok(m, name, type, labels, buckets, nbuckets))
		return -1;
	if (m->nfams == m->capfams) {
		unsigned cap = m->capfams ? m->capfams * 2 : 32;
		struct metric_family **p = realloc(m->fams, cap * sizeof(*p));

		if (!p)
			return -1;
		m->fams = p;
		m->capfams = cap;
	}
	if (!(f = calloc(1, sizeof(*f))) ||
	    family_fill(f, name, type, help, labels, buckets, nbuckets) != 0) {
		family_free(f);
		return -1;
	}
	id = (int)m->nfams;
	m->fams[m->nfams++] = f;
	if (f->nlabels == 0 && !metrics_series(m, id, NULL))
		return -1;
	return id;
}

/* ---- the product's families ----------------------------------------- */

static const double latency_buckets[] = {
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
};

#define NB(a) (sizeof(a) / sizeof((a)[0]))
#define L(...) ((const char *const[]){ __VA_ARGS__, NULL })

struct family_decl {
	enum tgm_family id;
	const char *name;
	enum metric_type type;
	const char *help;
	const char *const *labels;
};

static const char *const direction_names[] = { "input", "output" };
static const char *const settle_result_names[] = { "settled", "duplicate", "late", "unknown",
                                                   "error" };
static const char *const settle_source_names[] = { "spop", "record" };

static int declare_product(struct metrics *m)
{
	const struct family_decl d[] = {
		{ TGM_TOKENS, "tollgate_tokens_total", METRIC_COUNTER,
		  "LLM tokens metered, by direction (input = prompt, output = completion).",
		  L("direction", "route", "provider", "model", "consumer") },
		{ TGM_REQUESTS, "tollgate_requests_total", METRIC_COUNTER,
		  "Requests decided by the agent, by decision and HTTP status.",
		  L("decision", "status", "route", "consumer") },
		{ TGM_ADMISSION_SECONDS, "tollgate_admission_seconds", METRIC_HISTOGRAM,
		  "Time from a request message to its verdict.", NULL },
		{ TGM_SPOP_FRAMES, "tollgate_spop_frames_total", METRIC_COUNTER,
		  "SPOP frames received (in) and sent (out).", L("direction") },
		{ TGM_SPOP_ERRORS, "tollgate_spop_errors_total", METRIC_COUNTER,
		  "SPOP connections ended by the agent with an error, by status.", L("status") },
		{ TGM_SETTLEMENTS, "tollgate_settlements_total", METRIC_COUNTER,
		  "Settlement attempts, by result and by where the usage came from.",
		  L("result", "source") },
		{ TGM_LIMIT_DECISIONS, "tollgate_limit_decisions_total", METRIC_COUNTER,
		  "Rate-limit and quota rule evaluations, by rule and outcome.",
		  L("rule", "outcome") },
		{ TGM_QUOTA_REMAINING, "tollgate_quota_remaining", METRIC_GAUGE,
		  "Quota balance left, in tokens, by consumer.", L("consumer") },
		{ TGM_STORE_SECONDS, "tollgate_store_seconds", METRIC_HISTOGRAM,
		  "Store (Redis or embedded) round-trip time.", NULL },
		{ TGM_STORE_ERRORS, "tollgate_store_errors_total", METRIC_COUNTER,
		  "Store calls that failed or missed their deadline.", NULL },
		{ TGM_STORE_BREAKER_OPEN, "tollgate_store_breaker_open", METRIC_GAUGE,
		  "1 while the store circuit breaker is open.", NULL },
		{ TGM_STORE_RECONNECTS, "tollgate_store_reconnects_total", METRIC_COUNTER,
		  "Connection attempts to Redis after the first: each follows a failed attempt "
		  "(refused, timed out, or refused by Redis: NOAUTH, WRONGPASS, DENIED) or a lost "
		  "connection; retried with backoff from 50 ms to 2 s.", NULL },
		{ TGM_OVERSHOOT_TOKENS, "tollgate_overshoot_tokens_total", METRIC_COUNTER,
		  "Tokens settled beyond a rule's limit, by rule.", L("rule") },
		{ TGM_UNVERDICTED, "tollgate_unverdicted_total", METRIC_COUNTER,
		  "Requests decided by the failure policy instead of a verdict.", NULL },
		{ TGM_SPOP_CONNECTIONS, "tollgate_spop_connections", METRIC_GAUGE,
		  "SPOP connections open.", NULL },
		{ TGM_SPOP_INFLIGHT, "tollgate_spop_frames_in_flight", METRIC_GAUGE,
		  "NOTIFY frames received and not answered yet.", NULL },
		{ TGM_RING_SESSIONS, "tollgate_settle_ring_sessions", METRIC_GAUGE,
		  "HAProxy workers whose settlement ring the agent is reading (0: records wait).",
		  NULL },
		{ TGM_RING_LINES, "tollgate_settle_ring_lines_total", METRIC_COUNTER,
		  "Lines read from HAProxy's settlement ring (replays included), by kind.",
		  L("kind") },
		{ TGM_BUILD_INFO, "tollgate_build_info", METRIC_GAUGE,
		  "Always 1; the version is a label.", L("version") },
	};

	for (size_t i = 0; i < NB(d); i++) {
		bool hist = d[i].type == METRIC_HISTOGRAM;

		if (metrics_family(m, d[i].name, d[i].type, d[i].help, d[i].labels,
		                   hist ? latency_buckets : NULL, hist ? NB(latency_buckets) : 0) !=
		    (int)d[i].id)
			return -1;
	}
	/* Series with a fixed label set exist from the start, at 0. */
	for (size_t i = 0; i < 2; i++)
		metrics_series(m, TGM_SPOP_FRAMES, L(i ? "out" : "in"));
	for (size_t r = 0; r < NB(settle_result_names); r++)
		for (size_t s = 0; s < NB(settle_source_names); s++)
			metrics_series(m, TGM_SETTLEMENTS, L(settle_result_names[r],
			                                     settle_source_names[s]));
	metrics_series(m, TGM_RING_LINES, L("record"));
	metrics_series(m, TGM_RING_LINES, L("other"));
	metrics_set(m, TGM_RING_SESSIONS, NULL, 0);
	metrics_set(m, TGM_STORE_RECONNECTS, NULL, 0);
	metrics_set(m, TGM_BUILD_INFO, L(TOLLGATE_VERSION), 1);
	return 0;
}

struct metrics *metrics_new(void)
{
	struct metrics *m = calloc(1, sizeof(*m));

	if (m && declare_product(m) != 0) {
		metrics_free(m);
		return NULL;
	}
	return m;
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	for (unsigned i = 0; i < m->nfams; i++) {
		struct metric_series *s = m->fams[i]->first, *next;

		for (; s; s = next) {
			next = s->next;
			free(s);
		}
		family_free(m->fams[i]);
	}
	free(m->fams);
	free(m->table);
	buf_free(&m->scrape);
	free(m);
}

/* ---- collect callbacks ---------------------------------------------- */

int metrics_on_collect(struct metrics *m, metrics_collect_fn fn, void *arg)
{
	if (!m || !fn || m->ncollectors >= MAX_COLLECTORS)
		return -1;
	m->collectors[m->ncollectors].fn = fn;
	m->collectors[m->ncollectors].arg = arg;
	m->ncollectors++;
	return 0;
}

void metrics_collect_remove(struct metrics *m, metrics_collect_fn fn, void *arg)
{
	for (unsigned i = 0; m && i < m->ncollectors; i++) {
		if (m->collectors[i].fn != fn || m->collectors[i].arg != arg)
			continue;
		memmove(&m->collectors[i], &m->collectors[i + 1],
		        (m->ncollectors - i - 1) * sizeof(m->collectors[0]));
		m->ncollectors--;
		i--;
	}
}

/* ---- rendering ------------------------------------------------------ */

static const char *const type_names[] = { "counter", "gauge", "histogram" };

/* name[suffix]{labels[,extra]} value\n */
static int render_sample(struct buf *b, const char *name, const char *suffix,
                         const char *labels, const char *extra, double v)
{
	char num[40];
	int rc = buf_str(b, name) | buf_str(b, suffix);

	if (labels[0] || extra) {
		rc |= buf_put(b, "{", 1) | buf_str(b, labels);
		if (extra)
			rc |= buf_str(b, labels[0] ? "," : "") | buf_str(b, extra);
		rc |= buf_put(b, "}", 1);
	}
	fmt_double(num, sizeof(num), v);
	return rc | buf_put(b, " ", 1) | buf_str(b, num) | buf_put(b, "\n", 1);
}

static int render_histogram(struct buf *b, const struct metric_family *f,
                            const struct metric_series *s)
{
	char le[48];
	uint64_t cum = 0;
	int rc = 0;

	for (size_t i = 0; i < f->nbounds; i++) {
		cum += s->buckets[i];
		snprintf(le, sizeof(le), "le=\"%s\"", f->le[i]);
		rc |= render_sample(b, f->name, "_bucket", s->text, le, (double)cum);
	}
	rc |= render_sample(b, f->name, "_bucket", s->text, "le=\"+Inf\"", (double)s->count);
	rc |= render_sample(b, f->name, "_sum", s->text, NULL, s->sum);
	return rc | render_sample(b, f->name, "_count", s->text, NULL, (double)s->count);
}

static int render_family(struct buf *b, const struct metric_family *f)
{
	int rc = buf_str(b, "# HELP ") | buf_str(b, f->name) | buf_put(b, " ", 1) |
	         buf_str(b, f->help) | buf_str(b, "\n# TYPE ") | buf_str(b, f->name) |
	         buf_put(b, " ", 1) | buf_str(b, type_names[f->type]) | buf_put(b, "\n", 1);

	for (const struct metric_series *s = f->first; s && !rc; s = s->next) {
		if (s->hidden)
			continue;
		if (f->type == METRIC_HISTOGRAM)
			rc |= render_histogram(b, f, s);
		else
			rc |= render_sample(b, f->name, "", s->text, NULL, s->value);
	}
	return rc ? -1 : 0;
}

int metrics_render(struct metrics *m, struct buf *out)
{
	for (unsigned i = 0; i < m->ncollectors; i++)
		m->collectors[i].fn(m, m->collectors[i].arg);
	for (unsigned i = 0; i < m->nfams; i++)
		if (render_family(out, m->fams[i]) != 0)
			return -1;
	return 0;
}

/* ---- SPOP counters -------------------------------------------------- */

static const char *spop_status_label(int st)
{
	static const char *const names[] = {
		"none", "io", "timeout", "too_big", "invalid", "no_vsn", "no_frame_size",
		"no_cap", "bad_vsn", "bad_frame_size", "frag_not_supp", "interlaced",
		"frameid_notfnd", "res",
	};

	if (st >= 0 && (size_t)st < NB(names))
		return names[st];
	return "unknown";
}

void metrics_spop_stats(struct metrics *m, const struct spop_stats *st)
{
	if (!m || !st)
		return;
	metrics_set(m, TGM_SPOP_FRAMES, L("in"), (double)st->frames_in);
	metrics_set(m, TGM_SPOP_FRAMES, L("out"), (double)st->frames_out);
	metrics_set(m, TGM_SPOP_CONNECTIONS, NULL, (double)st->conns_active);
	metrics_set(m, TGM_SPOP_INFLIGHT, NULL, (double)st->inflight);
	for (int i = 1; i <= SPOP_ST_UNKNOWN; i++) {
		if (!st->errors[i] || (i > SPOP_ST_RES && i != SPOP_ST_UNKNOWN))
			continue;
		metrics_set(m, TGM_SPOP_ERRORS, L(spop_status_label(i)), (double)st->errors[i]);
	}
}

/* ---- typed helpers -------------------------------------------------- */

void tgm_tokens(struct metrics *m, enum tgm_direction dir, const char *route,
                const char *provider, const char *model, const char *consumer, uint64_t n)
{
	metrics_add(m, TGM_TOKENS, L(direction_names[dir == TGM_OUTPUT], route, provider, model,
	                             consumer), (double)n);
}

void tgm_request(struct metrics *m, const char *decision, int status, const char *route,
                 const char *consumer)
{
	char st[16];

	snprintf(st, sizeof(st), "%d", status);
	metrics_add(m, TGM_REQUESTS, L(decision, st, route, consumer), 1);
}

void tgm_admission(struct metrics *m, double seconds)
{
	metrics_observe(m, TGM_ADMISSION_SECONDS, NULL, seconds);
}

void tgm_settlement(struct metrics *m, enum tgm_settle_result result,
                    enum tgm_settle_source source)
{
	if ((unsigned)result >= NB(settle_result_names) || (unsigned)source >= NB(settle_source_names))
		return;
	metrics_add(m, TGM_SETTLEMENTS, L(settle_result_names[result], settle_source_names[source]),
	            1);
}

void tgm_limit_decision(struct metrics *m, const char *rule, const char *outcome)
{
	metrics_add(m, TGM_LIMIT_DECISIONS, L(rule, outcome), 1);
}

void tgm_quota_remaining(struct metrics *m, const char *consumer, double remaining)
{
	metrics_set(m, TGM_QUOTA_REMAINING, L(consumer), remaining);
}

void tgm_store_latency(struct metrics *m, double seconds)
{
	metrics_observe(m, TGM_STORE_SECONDS, NULL, seconds);
}

void tgm_store_error(struct metrics *m)
{
	metrics_add(m, TGM_STORE_ERRORS, NULL, 1);
}

void tgm_store_breaker(struct metrics *m, bool open)
{
	metrics_set(m, TGM_STORE_BREAKER_OPEN, NULL, open ? 1 : 0);
}

void tgm_store_reconnects(struct metrics *m, uint64_t attempts)
{
	metrics_set(m, TGM_STORE_RECONNECTS, NULL, (double)attempts);
}

void tgm_overshoot(struct metrics *m, const char *rule, uint64_t tokens)
{
	metrics_add(m, TGM_OVERSHOOT_TOKENS, L(rule), (double)tokens);
}

void tgm_unverdicted(struct metrics *m)
{
	metrics_add(m, TGM_UNVERDICTED, NULL, 1);
}

void tgm_ring_sessions(struct metrics *m, unsigned n)
{
	metrics_set(m, TGM_RING_SESSIONS, NULL, n);
}

void tgm_ring_line(struct metrics *m, bool record)
{
	metrics_add(m, TGM_RING_LINES, L(record ? "record" : "other"), 1);
}

/* ---- HTTP ----------------------------------------------------------- */

static void serve_metrics(struct http_req *req, void *ctx)
{
	struct metrics *m = ctx;

	buf_reset(&m->scrape);
	if (metrics_render(m, &m->scrape) != 0) {
		http_reply(req, 500, "text/plain", "out of memory\n", 14);
		return;
	}
	http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", m->scrape.data,
	           m->scrape.len);
}

static void serve_healthz(struct http_req *req, void *ctx)
{
	(void)ctx;
	http_reply(req, 200, "text/plain", "ok\n", 3);
}

static void serve_dashboard(struct http_req *req, void *ctx)
{
	(void)ctx;
	http_reply_ex(req, 200, "text/html; charset=utf-8", "Cache-Control: no-cache\r\n",
	              dashboard_html, sizeof(dashboard_html) - 1);
}

int metrics_http_register(struct metrics *m, struct http_server *srv)
{
	if (http_server_route(srv, "GET", "/metrics", serve_metrics, m) != 0 ||
	    http_server_route(srv, "GET", "/healthz", serve_healthz, NULL) != 0 ||
	    http_server_route(srv, "GET", "/$", serve_dashboard, NULL) != 0)
		return -1;
	return 0;
}
