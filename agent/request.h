/* request.h -- an HTTP request as HAProxy hands it over SPOP.
 *
 * Owns: the view of one request's arguments (method, path, query, headers
 * from req.hdrs_bin, body, client address): length-counted views into the
 * NOTIFY frame, valid only while its message handler runs, and lookups on
 * them (headers case-insensitively, query parameters, cookies).
 */
#ifndef TOLLGATE_REQUEST_H
#define TOLLGATE_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spop.h"

#define REQ_MAX_HEADERS 128

struct req_header {
	struct spop_str name, value;
};

struct req_view {
	struct spop_str method, path, query, body;
	int ip_family;                  /* 0, AF_INET or AF_INET6 */
	uint8_t ip[16];
	struct req_header hdrs[REQ_MAX_HEADERS];
	unsigned n_hdrs;
	bool hdrs_truncated;            /* more than REQ_MAX_HEADERS */
};

/* Fill r from the arguments of a `request` message. -1 if the headers block
 * is malformed. */
int req_parse(struct spop_msg *msg, struct req_view *r);

/* The i-th (0-based) value of header `name`, or NULL. */
const struct spop_str *req_header(const struct req_view *r, const char *name, unsigned i);
/* Query parameter `name`, percent-decoded into out; false if absent. */
bool req_query_param(const struct req_view *r, const char *name, char *out, size_t outlen);
/* Cookie `name` into out; false if absent. */
bool req_cookie(const struct req_view *r, const char *name, char *out, size_t outlen);
/* Form field (application/x-www-form-urlencoded body) into out. */
bool req_form_field(const struct req_view *r, const char *name, char *out, size_t outlen);
/* The client address as text ("10.0.0.1", "::1"). */
void req_ip_str(const struct req_view *r, char *out, size_t outlen);

bool str_eq(struct spop_str s, const char *c);
bool str_ieq(struct spop_str s, const char *c);
/* Copy into a NUL-terminated buffer, truncating. */
void str_copy(char *dst, size_t dstlen, struct spop_str s);

#endif
