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

/* The environment HAProxy 2.6 needs for 4 MiB buffers (haproxy/README.md):
 * one glibc arena, blocks under 32 MiB kept in the heap and the heap never
 * trimmed under 1 GiB. Measured (tests/bench/gateway.sh, 4 MiB buffers, 50
 * connections): 15.7k to 19.5k requests/s with it, 5k without; 2.8+ is
 * better off without arena_max=1. The rendered file checks for this exact
 * value; 2.6 without it runs the default ceiling at CONFIG_MAX_BODY_SMALL. */
#define GLIBC_TUNABLES_2_6 "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=33554432:" \
                           "glibc.malloc.trim_threshold=1073741824"
/* 2.8+: tune.memory.hot-size keeps the buffers; the thresholds keep glibc
 * from mapping and trimming the rest (optional there). */
#define GLIBC_TUNABLES_2_8 "glibc.malloc.mmap_threshold=33554432:" \
                           "glibc.malloc.trim_threshold=67108864"

/* The GLIBC_TUNABLES value haproxy/README.md advises for an HAProxy whose
 * `haproxy -v` version is `version` ("2.6.12-1+deb12u4", "3.2.0-..."):
 * `tollgate glibc-tunables VERSION` prints it for the scripts that start
 * HAProxy, so that the value is written here only. */
const char *render_glibc_tunables(const char *version);

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
