/* net.h -- sockets from the addresses written in the config.
 *
 * Owns: address syntax. "host:port", ":port" (all interfaces), "[v6]:port",
 * and "unix:/path" or a path starting with '/' for unix sockets. Every socket
 * returned is non-blocking and close-on-exec.
 */
#ifndef TOLLGATE_NET_H
#define TOLLGATE_NET_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Returns a listening fd, or -1 with a message in err. */
int net_listen(const char *addr, bool reuseport, char *err, size_t errlen);
/* The socket address of addr, to listen on, or (connect_to) to connect to:
 * then a wildcard host ("", "0.0.0.0", "*", "::") names this host's
 * loopback. A host name is resolved now (getaddrinfo: it may block). 0, or
 * -1 with a message in err. */
int net_resolve(const char *addr, bool connect_to, struct sockaddr_storage *sa,
                socklen_t *salen, char *err, size_t errlen);
/* True if addr names a unix socket; *path then points at the path. */
bool net_is_unix(const char *addr, const char **path);
int net_set_nonblock(int fd);

#endif
