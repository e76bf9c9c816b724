/* net.h -- listening sockets from the addresses written in the config.
 *
 * Owns: address syntax. "host:port", ":port" (all interfaces), "[v6]:port",
 * and "unix:/path" or a path starting with '/' for unix sockets. Every socket
 * returned is non-blocking and close-on-exec.
 */
#ifndef TOLLGATE_NET_H
#define TOLLGATE_NET_H
#include <stdbool.h>
#include <stddef.h>

/* Returns a listening fd, or -1 with a message in err. */
int net_listen(const char *addr, bool reuseport, char *err, size_t errlen);
/* True if addr names a unix socket; *path then points at the path. */
bool net_is_unix(const char *addr, const char **path);
int net_set_nonblock(int fd);

#endif
