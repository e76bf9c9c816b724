/* quota_admin.h -- the ai-quota admin API, exactly as Higress serves it.
 *
 * Owns: recognising admin calls on a route (`<path>/quota`,
 * `<path>/quota/refresh`, `<path>/quota/delta` for the route's admin_path),
 * checking them, running them against the store and answering with
 * Higress's bodies; and the same operations as JSON on the agent's HTTP
 * port (/v1/quota, /v1/quota/refresh, /v1/quota/delta).
 */
#ifndef TOLLGATE_QUOTA_ADMIN_H
#define TOLLGATE_QUOTA_ADMIN_H

#include "config.h"
#include "request.h"
#include "spop_server.h"

struct agent;
struct http_server;

enum quota_op { QUOTA_OP_NONE = 0, QUOTA_OP_QUERY, QUOTA_OP_REFRESH, QUOTA_OP_DELTA };

/* Is this an admin call? *route is the route whose ai-quota it addresses
 * (by model when one is given, else the first route with that admin_path). */
enum quota_op quota_admin_match(const struct tg_config *cfg, struct spop_str path,
                                const char *model, const struct tg_route **route);
/* Run an admin call that arrived over SPOP; answers decision=admin. */
void quota_admin_spop(struct agent *a, struct spop_tx *tx, const struct tg_route *route,
                      const struct tg_consumer *consumer, enum quota_op op,
                      const struct req_view *r);
/* Register the JSON API on the agent's HTTP server. */
void quota_admin_http(struct agent *a, struct http_server *http);

#endif
