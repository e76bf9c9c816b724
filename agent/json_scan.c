/* json_scan.c -- see json_scan.h.
 *
 * One loop with an explicit stack (a byte per open container: object or
 * array, and whether its members count towards the estimate), so a body
 * nested a thousand deep costs no C stack. Strings are crossed a word at a
 * time: sixteen bytes with SSE2 (every x86-64), else eight in a word; a
 * block with no quote, no backslash and no control byte is skipped whole,
 * its ASCII bytes and UTF-8 lead bytes counted from two masks (only when it
 * has a byte above 0x7F).
 */
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "hex.h"
#include "json_scan.h"

#define ONES  0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Some byte of w is zero (may also flag a byte above a zero one: only
 * used to leave the fast path, never to decide). */
static inline uint64_t has_zero(uint64_t w)
{
	return (w - ONES) & ~w & HIGHS;
}

/* A byte of w is '"', '\\' or below 0x20. */
static inline bool word_special(uint64_t w)
{
	return (has_zero(w ^ (ONES * '"')) | has_zero(w ^ (ONES * '\\')) |
	        ((w - ONES * 0x20) & ~w & HIGHS)) != 0;
}

const char *json_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Four hex digits at p (p + 4 <= end checked by the caller): -1 if not. */
static long hex4(const char *p)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);

		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

#ifdef __SSE2__
/* Set bits of a 16-bit mask (no popcnt instruction is assumed). */
static inline int64_t count16(unsigned m)
{
	m = m - ((m >> 1) & 0x5555);
	m = (m & 0x3333) + ((m >> 2) & 0x3333);
	m = (m + (m >> 4)) & 0x0F0F;
	return (int64_t)((m + (m >> 8)) & 0x1F);
}
#endif

/* p just after the opening quote: the byte after the closing one, or NULL.
 * With est, the string's estimate (meter_estimate_text of its text) is
 * added to *est. */
static const char *string_end(const char *p, const char *end, int64_t *est)
{
	int64_t ascii = 0, other = 0;

	for (;;) {
#ifdef __SSE2__
		/* sixteen bytes at a time: no quote, backslash or control byte */
		while (end - p >= 16) {
			__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
			__m128i low = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1F)),
			                             _mm_set1_epi8(0x1F));
			int stop = _mm_movemask_epi8(_mm_or_si128(
				_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
				             _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))), low));

			if (stop)
				break;
			if (est) {
				unsigned hi = (unsigned)_mm_movemask_epi8(v);

				if (!hi) {
					ascii += 16;
				} else {        /* lead bytes: 0xC0 and above */
					unsigned lead = (unsigned)_mm_movemask_epi8(
						_mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8((char)0xC0)), v));

					ascii += 16 - count16(hi);
					other += count16(lead);
				}
			}
			p += 16;
		}
#endif
		while (end - p >= 8) {
			uint64_t w;

			memcpy(&w, p, 8);
			if (word_special(w))
				break;
			if (est) {
				uint64_t hi = w & HIGHS;

				if (!hi) {
					ascii += 8;
				} else {        /* bytes counted with a multiply, no popcnt needed */
					ascii += 8 - (int64_t)(((hi >> 7) * ONES) >> 56);
					other += (int64_t)((((hi & (w << 1)) >> 7) * ONES) >> 56);
				}
			}
			p += 8;
		}
		if (p >= end)
			return NULL;
		unsigned char c = (unsigned char)*p;

		if (c == '"') {
			if (est)
				*est += (ascii + 3) / 4 + other;
			return p + 1;
		}
		if (c == '\\') {
			if (end - p < 2)
				return NULL;
			switch (p[1]) {
			case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
				ascii++;
				p += 2;
				break;
			case 'u': {
				long v;

				if (end - p < 6 || (v = hex4(p + 2)) < 0)
					return NULL;
				if (v < 0x80)
					ascii++;
				else if (v < 0xDC00 || v > 0xDFFF)     /* a low surrogate ends a pair */
					other++;
				p += 6;
				break;
			}
			default:
				return NULL;
			}
			continue;
		}
		if (c < 0x20)
			return NULL;
		if (c < 0x80)
			ascii++;
		else if ((c & 0xC0) != 0x80)
			other++;
		p++;
	}
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static const char *number_end(const char *p, const char *end)
{
	if (p < end && *p == '-')
		p++;
	if (p >= end || !is_digit(*p))
		return NULL;
	if (*p == '0')
		p++;
	else
		while (p < end && is_digit(*p))
			p++;
	if (p < end && *p == '.') {
		if (++p >= end || !is_digit(*p))
			return NULL;
		while (p < end && is_digit(*p))
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		if (++p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || !is_digit(*p))
			return NULL;
		while (p < end && is_digit(*p))
			p++;
	}
	return p;
}

static const char *literal_end(const char *p, const char *end, const char *lit, size_t n)
{
	return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

/* A name counted by the estimate. Names with escapes are decoded first. */
static bool prompt_name(const struct json_name *n)
{
	return json_name_is(n, "content") || json_name_is(n, "text") || json_name_is(n, "input");
}

/* p at the opening quote of a name, then ':' : the value's first byte. */
static const char *member_name(const char *p, const char *end, struct json_name *n)
{
	const char *q;

	if (p >= end || *p != '"' || !(q = string_end(p + 1, end, NULL)))
		return NULL;
	n->p = p + 1;
	n->len = (size_t)(q - 1 - n->p);
	n->escaped = memchr(n->p, '\\', n->len) != NULL;
	q = json_ws(q, end);
	if (q >= end || *q != ':')
		return NULL;
	return json_ws(q + 1, end);
}

#define ST_OBJECT 1
#define ST_COUNTS 2     /* its members count towards the estimate */
#define EST_DEPTH 6

const char *json_value_end(const char *p, const char *end, int64_t *est)
{
	uint8_t stack[JSON_MAX_DEPTH];
	int sp = 0;
	bool inc = est != NULL;         /* the value at p counts */

	for (;;) {
		struct json_name n;

		if (p >= end)
			return NULL;
		switch (*p) {
		case '"':
			p = string_end(p + 1, end, inc && sp <= EST_DEPTH ? est : NULL);
			break;
		case '{':
		case '[': {
			bool obj = *p == '{', counts = inc && sp <= EST_DEPTH;

			if (sp == JSON_MAX_DEPTH)
				return NULL;
			if (obj && inc && sp > 0)
				*est += 4;
			stack[sp++] = (uint8_t)((obj ? ST_OBJECT : 0) | (counts ? ST_COUNTS : 0));
			p = json_ws(p + 1, end);
			if (p < end && *p == (obj ? '}' : ']')) {
				sp--;
				p++;
				break;
			}
			if (obj) {
				if (!(p = member_name(p, end, &n)))
					return NULL;
				inc = counts && prompt_name(&n);
			} else {
				inc = counts;
			}
			continue;       /* the first member's value */
		}
		case 't':
			p = literal_end(p, end, "true", 4);
			break;
		case 'f':
			p = literal_end(p, end, "false", 5);
			break;
		case 'n':
			p = literal_end(p, end, "null", 4);
			break;
		default:
			p = number_end(p, end);
			break;
		}
		/* a value ended: close containers, or go on to the next member */
		for (;;) {
			if (!p)
				return NULL;
			if (sp == 0)
				return p;
			p = json_ws(p, end);
			if (p >= end)
				return NULL;
			uint8_t top = stack[sp - 1];

			if (*p == ',') {
				p = json_ws(p + 1, end);
				if (top & ST_OBJECT) {
					if (!(p = member_name(p, end, &n)))
						return NULL;
					inc = (top & ST_COUNTS) && prompt_name(&n);
				} else {
					inc = (top & ST_COUNTS) != 0;
				}
				break;
			}
			if (*p != ((top & ST_OBJECT) ? '}' : ']'))
				return NULL;
			p++;
			sp--;
		}
	}
}

bool json_obj_open(struct json_obj *o, const char *p, const char *end)
{
	if (p >= end || *p != '{')
		return false;
	o->p = p + 1;
	o->end = end;
	o->first = true;
	return true;
}

int json_obj_key(struct json_obj *o, struct json_name *name)
{
	const char *p = json_ws(o->p, o->end);

	if (p >= o->end)
		return -1;
	if (*p == '}' && o->first) {
		o->p = p + 1;
		return 0;
	}
	if (!o->first) {
		if (*p == '}') {
			o->p = p + 1;
			return 0;
		}
		if (*p != ',')
			return -1;
		p = json_ws(p + 1, o->end);
	}
	o->first = false;
	if (!(p = member_name(p, o->end, name)))
		return -1;
	o->p = p;
	return 1;
}

/* Decode the escaped text [p, end) (no quotes) into out. */
static size_t unescape(const char *p, const char *end, char *out, size_t outlen)
{
	size_t n = 0;

	if (!outlen)
		return 0;
	while (p < end && *p != '"' && n + 1 < outlen) {
		unsigned long cp;
		char u8[4];
		int u8n;

		if (*p != '\\') {
			out[n++] = *p++;
			continue;
		}
		if (end - p < 2)
			break;
		switch (p[1]) {
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u': {
			long hi, lo;

			if (end - p < 6 || (hi = hex4(p + 2)) < 0)
				goto done;
			p += 6;
			cp = (unsigned long)hi;
			if (hi >= 0xD800 && hi <= 0xDBFF && end - p >= 6 && p[0] == '\\' &&
			    p[1] == 'u' && (lo = hex4(p + 2)) >= 0xDC00 && lo <= 0xDFFF) {
				cp = 0x10000 + (((unsigned long)hi - 0xD800) << 10) + ((unsigned long)lo - 0xDC00);
				p += 6;
			}
			if (cp == 0)
				goto done;
			/* UTF-8, cut where out ends as a byte-wise copy would be */
			if (cp < 0x80) {
				u8[0] = (char)cp;
				u8n = 1;
			} else if (cp < 0x800) {
				u8[0] = (char)(0xC0 | (cp >> 6));
				u8[1] = (char)(0x80 | (cp & 0x3F));
				u8n = 2;
			} else if (cp < 0x10000) {
				u8[0] = (char)(0xE0 | (cp >> 12));
				u8[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
				u8[2] = (char)(0x80 | (cp & 0x3F));
				u8n = 3;
			} else {
				u8[0] = (char)(0xF0 | (cp >> 18));
				u8[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
				u8[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
				u8[3] = (char)(0x80 | (cp & 0x3F));
				u8n = 4;
			}
			for (int i = 0; i < u8n && n + 1 < outlen; i++)
				out[n++] = u8[i];
			continue;
		}
		default: cp = (unsigned char)p[1]; break;
		}
		out[n++] = (char)cp;
		p += 2;
	}
done:
	out[n] = '\0';
	return n;
}

size_t json_string_copy(const char *p, const char *end, char *out, size_t outlen)
{
	return unescape(p + 1, end, out, outlen);
}

size_t json_name_copy(const struct json_name *n, char *out, size_t outlen)
{
	return unescape(n->p, n->p + n->len, out, outlen);
}

bool json_name_is(const struct json_name *n, const char *lit)
{
	size_t l = strlen(lit);
	char buf[64];

	if (!n->escaped)
		return n->len == l && memcmp(n->p, lit, l) == 0;
	if (l >= sizeof(buf) || n->len > 6 * sizeof(buf))
		return false;
	return json_name_copy(n, buf, sizeof(buf)) == l && memcmp(buf, lit, l) == 0;
}

double json_number(const char *p, const char *end)
{
	const char *q = number_end(p, end);
	size_t n = q ? (size_t)(q - p) : 0;
	char buf[64], *s = n < sizeof(buf) ? buf : malloc(n + 1);
	double v;

	if (!s)
		return 0;
	memcpy(s, p, n);
	s[n] = '\0';
	v = strtod(s, NULL);
	if (s != buf)
		free(s);
	return v;
}
