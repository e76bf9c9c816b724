/* auth.c -- see auth.h.
 *
 * The table holds one digest per credential, sorted, so identification is a
 * binary search on SHA-256(key): no plaintext comparison, and the time taken
 * does not depend on how much of a key matched (digest_equal). Keys found in
 * several places must all be the same key, else the request is ambiguous
 * (401), as in Higress.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "sha256.h"

struct auth_entry {
	uint8_t digest[SHA256_LEN];
	const struct tg_consumer *consumer;
};

struct auth_table {
	const struct tg_key_auth_cfg *ka;
	size_t n;
	struct auth_entry e[];
};

static int entry_cmp(const void *a, const void *b)
{
	return memcmp(((const struct auth_entry *)a)->digest,
	              ((const struct auth_entry *)b)->digest, SHA256_LEN);
}

struct auth_table *auth_new(const struct tg_config *cfg)
{
	size_t n = 0, k = 0;
	struct auth_table *t;

	for (size_t i = 0; i < cfg->n_consumers; i++)
		n += cfg->consumers[i].n_credentials;
	t = calloc(1, sizeof(*t) + n * sizeof(t->e[0]));
	if (!t)
		return NULL;
	t->ka = &cfg->key_auth;
	for (size_t i = 0; i < cfg->n_consumers; i++) {
		const struct tg_consumer *c = &cfg->consumers[i];

		for (size_t j = 0; j < c->n_credentials; j++, k++) {
			if (sha256(c->credentials[j], strlen(c->credentials[j]), t->e[k].digest) != 0) {
				free(t);
				return NULL;
			}
			t->e[k].consumer = c;
		}
	}
	t->n = n;
	qsort(t->e, n, sizeof(t->e[0]), entry_cmp);
	return t;
}

void auth_free(struct auth_table *t)
{
	free(t);
}

/* Record one key found; false if it differs from one found before. */
static bool add_key(struct spop_str key, struct spop_str *seen, bool *have)
{
	while (key.len && (key.ptr[0] == ' ' || key.ptr[0] == '\t')) {
		key.ptr++;
		key.len--;
	}
	while (key.len && (key.ptr[key.len - 1] == ' ' || key.ptr[key.len - 1] == '\t'))
		key.len--;
	if (!key.len)
		return true;
	if (*have)
		return seen->len == key.len && memcmp(seen->ptr, key.ptr, key.len) == 0;
	*seen = key;
	*have = true;
	return true;
}

static struct spop_str bearer(struct spop_str v)
{
	if (v.len > 7 && strncasecmp(v.ptr, "Bearer ", 7) == 0) {
		v.ptr += 7;
		v.len -= 7;
		return v;
	}
	return (struct spop_str){ "", 0 };
}

enum auth_rc auth_identify(const struct auth_table *t, const struct req_view *r,
                           const struct tg_consumer **out)
{
	const struct tg_key_auth_cfg *ka = t->ka;
	struct spop_str key = { "", 0 };
	struct auth_entry probe;
	size_t lo, hi;
	bool have = false;
	char qbuf[512], qkey[512];

	for (size_t i = 0; i < ka->n_keys; i++) {
		const char *name = ka->keys[i];
		const struct spop_str *v;
		bool is_auth = strcasecmp(name, "authorization") == 0;

		for (unsigned k = 0; ka->in_header && (v = req_header(r, name, k)); k++)
			if (!add_key(is_auth ? bearer(*v) : *v, &key, &have))
				return AUTH_MULTIPLE;
		if (ka->in_query && req_query_param(r, name, qbuf, sizeof(qbuf))) {
			struct spop_str q = { qbuf, strlen(qbuf) };

			if (!add_key(q, &key, &have))
				return AUTH_MULTIPLE;
			if (key.ptr == qbuf) {          /* qbuf is reused: keep a copy */
				memcpy(qkey, qbuf, sizeof(qkey));
				key.ptr = qkey;
			}
		}
	}
	if (!have)
		return AUTH_MISSING;
	if (sha256(key.ptr, key.len, probe.digest) != 0)
		return AUTH_UNKNOWN;            /* out of memory: no key can be matched */
	/* Binary search for the digest; equality decided by digest_equal. */
	lo = 0;
	hi = t->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(t->e[mid].digest, probe.digest, SHA256_LEN);

		if (c == 0 && digest_equal(t->e[mid].digest, probe.digest)) {
			*out = t->e[mid].consumer;
			return AUTH_OK;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return AUTH_UNKNOWN;
}

bool auth_allowed(const struct tg_route *route, const struct tg_consumer *c)
{
	if (!route->auth.n_allow)
		return true;
	for (size_t i = 0; i < route->auth.n_allow; i++)
		if (route->auth.allow_c[i] == c)
			return true;
	return false;
}

int auth_status(enum auth_rc rc)
{
	return rc == AUTH_MISSING || rc == AUTH_MULTIPLE ? 401 : 403;
}

const char *auth_message(enum auth_rc rc)
{
	switch (rc) {
	case AUTH_MISSING:  return "Request denied by Key Auth check. No API key found in request";
	case AUTH_MULTIPLE: return "Request denied by Key Auth check. Multiple API keys found in request";
	case AUTH_UNKNOWN:  return "Request denied by Key Auth check. Invalid API key";
	case AUTH_DENIED:   return "Request denied by Key Auth check. Unauthorized consumer";
	default:            return "ok";
	}
}
