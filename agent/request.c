/* request.c -- see request.h. */
#include <arpa/inet.h>
#include <stdio.h>
#include <strings.h>
#include <string.h>
#include <sys/socket.h>

#include "hex.h"
#include "request.h"

bool str_eq(struct spop_str s, const char *c)
{
	size_t n = strlen(c);

	return s.len == n && memcmp(s.ptr, c, n) == 0;
}

bool str_ieq(struct spop_str s, const char *c)
{
	size_t n = strlen(c);

	return s.len == n && strncasecmp(s.ptr, c, n) == 0;
}

void str_copy(char *dst, size_t dstlen, struct spop_str s)
{
	size_t n = s.len < dstlen - 1 ? s.len : dstlen - 1;

	if (n)
		memcpy(dst, s.ptr, n);
	dst[n] = 0;
}

static struct spop_str data_str(const struct spop_data *d)
{
	struct spop_str s = { "", 0 };

	if (d->type == SPOP_DATA_STR || d->type == SPOP_DATA_BIN)
		s = d->u.str;
	return s;
}

int req_parse(struct spop_msg *msg, struct req_view *r)
{
	struct spop_kv kv;

	memset(r, 0, sizeof(*r));
	r->method = r->path = r->query = r->body = (struct spop_str){ "", 0 };
	while (spop_next_arg(msg, &kv) == SPOP_OK) {
		if (str_eq(kv.name, "method"))
			r->method = data_str(&kv.val);
		else if (str_eq(kv.name, "path"))
			r->path = data_str(&kv.val);
		else if (str_eq(kv.name, "query"))
			r->query = data_str(&kv.val);
		else if (str_eq(kv.name, "body"))
			r->body = data_str(&kv.val);
		else if (str_eq(kv.name, "ip") && kv.val.type == SPOP_DATA_IPV4) {
			r->ip_family = AF_INET;
			memcpy(r->ip, kv.val.u.ipv4, 4);
		} else if (str_eq(kv.name, "ip") && kv.val.type == SPOP_DATA_IPV6) {
			r->ip_family = AF_INET6;
			memcpy(r->ip, kv.val.u.ipv6, 16);
		} else if (str_eq(kv.name, "hdrs")) {
			struct spop_str h = data_str(&kv.val), name, value;
			struct spop_cursor c = { (const uint8_t *)h.ptr, (const uint8_t *)h.ptr + h.len };
			int rc;

			while ((rc = spop_next_header(&c, &name, &value)) == SPOP_OK) {
				if (r->n_hdrs == REQ_MAX_HEADERS) {
					r->hdrs_truncated = true;
					continue;
				}
				r->hdrs[r->n_hdrs].name = name;
				r->hdrs[r->n_hdrs++].value = value;
			}
			if (rc != SPOP_END)
				return -1;
		}
	}
	return 0;
}

const struct spop_str *req_header(const struct req_view *r, const char *name, unsigned i)
{
	for (unsigned k = 0; k < r->n_hdrs; k++)
		if (str_ieq(r->hdrs[k].name, name) && i-- == 0)
			return &r->hdrs[k].value;
	return NULL;
}

static void url_decode(const char *p, size_t len, char *out, size_t outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 1 < outlen; i++) {
		if (p[i] == '+') {
			out[o++] = ' ';
		} else if (p[i] == '%' && i + 2 < len && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
			out[o++] = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
			i += 2;
		} else {
			out[o++] = p[i];
		}
	}
	out[o] = 0;
}

/* Find name=value in a `sep`-separated list (query strings, forms, cookies). */
static bool find_pair(struct spop_str s, char sep, const char *name, bool decode,
                      char *out, size_t outlen)
{
	size_t nlen = strlen(name), i = 0;

	while (i < s.len) {
		size_t start, end;

		while (i < s.len && (s.ptr[i] == ' ' || s.ptr[i] == sep))
			i++;
		start = i;
		while (i < s.len && s.ptr[i] != sep)
			i++;
		end = i;
		if (end - start > nlen && memcmp(s.ptr + start, name, nlen) == 0 &&
		    s.ptr[start + nlen] == '=') {
			const char *v = s.ptr + start + nlen + 1;
			size_t vlen = end - start - nlen - 1;

			if (decode) {
				url_decode(v, vlen, out, outlen);
			} else {
				struct spop_str vs = { v, vlen };

				str_copy(out, outlen, vs);
			}
			return true;
		}
		if (end - start == nlen && memcmp(s.ptr + start, name, nlen) == 0) {
			out[0] = 0;
			return true;
		}
	}
	return false;
}

bool req_query_param(const struct req_view *r, const char *name, char *out, size_t outlen)
{
	return find_pair(r->query, '&', name, true, out, outlen);
}

bool req_form_field(const struct req_view *r, const char *name, char *out, size_t outlen)
{
	return find_pair(r->body, '&', name, true, out, outlen);
}

bool req_cookie(const struct req_view *r, const char *name, char *out, size_t outlen)
{
	const struct spop_str *c;

	for (unsigned i = 0; (c = req_header(r, "cookie", i)); i++)
		if (find_pair(*c, ';', name, false, out, outlen))
			return true;
	return false;
}

void req_ip_str(const struct req_view *r, char *out, size_t outlen)
{
	if (!r->ip_family || !inet_ntop(r->ip_family, r->ip, out, (socklen_t)outlen))
		snprintf(out, outlen, "-");
}
