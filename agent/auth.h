/* auth.h -- key-auth, as Higress does it: who is calling?
 *
 * Owns: finding the API key(s) in a request (the configured key_auth.keys,
 * in headers and/or the query string; "authorization" is read as
 * "Bearer <key>"), identifying the consumer by the SHA-256 digest of the key
 * (constant-time comparison), and the route's allow list. Never logs or
 * returns a credential.
 */
#ifndef TOLLGATE_AUTH_H
#define TOLLGATE_AUTH_H

#include "config.h"
#include "request.h"

enum auth_rc {
	AUTH_OK = 0,
	AUTH_MISSING,       /* 401: no key */
	AUTH_MULTIPLE,      /* 401: several different keys */
	AUTH_UNKNOWN,       /* 403: no consumer has this key */
	AUTH_DENIED,        /* 403: consumer not allowed on the route */
};

struct auth_table;

struct auth_table *auth_new(const struct tg_config *cfg);
void auth_free(struct auth_table *t);

/* Identify the caller. On AUTH_OK *out is the consumer. */
enum auth_rc auth_identify(const struct auth_table *t, const struct req_view *r,
                           const struct tg_consumer **out);
/* The route's allow list (empty: any consumer). */
bool auth_allowed(const struct tg_route *route, const struct tg_consumer *c);
/* HTTP status and Higress-style message of an outcome. */
int auth_status(enum auth_rc rc);
const char *auth_message(enum auth_rc rc);

#endif
