/* render.h -- `tollgate haproxy-config`: the HAProxy side of a configuration.
 *
 * Owns: turning a loaded struct tg_config into what HAProxy loads, per
 * doc/gateway.md (names of variables, SPOE messages, the settlement record)
 * and DESIGN.md "HAProxy 2.6 facts" / "HAProxy 3.x": one configuration that
 * runs on 2.6 and on 3.x (version-guarded blocks).
 */
#ifndef TOLLGATE_RENDER_H
#define TOLLGATE_RENDER_H

#include <stdbool.h>
#include <stddef.h>

#include "config-t.h"

/* Write outdir/haproxy.cfg, outdir/spoe.conf and outdir/tollgate.lua (the Lua
 * filter, embedded in the binary at build time). outdir is created if
 * missing; files are replaced atomically; paths inside haproxy.cfg are
 * absolute. With fragment, outdir/tollgate.cfg instead of haproxy.cfg: the
 * blocks to load after an existing configuration (-f), without its global
 * settings (maxconn, nbthread, user, group, chroot, admin socket) and with
 * `backend tollgate_llm`, which an existing frontend's `use_backend` hands the
 * LLM paths to. 0 on success; -1 with a message in err (e.g. a provider name
 * HAProxy cannot use as a backend name). */
int render_haproxy(const struct tg_config *cfg, const char *outdir, bool fragment, char *err,
                   size_t errlen);

/* The Lua filter's source as embedded (NUL-terminated), and its length. */
const char *render_lua_source(size_t *len);

#endif
