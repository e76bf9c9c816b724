/* net.c -- see net.h. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "net.h"

int net_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

bool net_is_unix(const char *addr, const char **path)
{
	if (strncmp(addr, "unix:", 5) == 0) {
		*path = addr + 5;
		return true;
	}
	if (addr[0] == '/') {
		*path = addr;
		return true;
	}
	return false;
}

int net_resolve(const char *addr, bool connect_to, struct sockaddr_storage *sa,
                socklen_t *salen, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res = NULL;
	char host[256];
	const char *colon, *path, *h;
	size_t hlen;
	int rc;

	if (net_is_unix(addr, &path)) {
		struct sockaddr_un *sun = (struct sockaddr_un *)sa;

		if (strlen(path) >= sizeof(sun->sun_path)) {
			snprintf(err, errlen, "unix socket path too long: %s", path);
			return -1;
		}
		memset(sun, 0, sizeof(*sun));
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, path, strlen(path) + 1);
		*salen = sizeof(*sun);
		return 0;
	}
	colon = strrchr(addr, ':');
	if (!colon || !colon[1]) {
		snprintf(err, errlen, "address %s: expected host:port", addr);
		return -1;
	}
	h = addr;
	hlen = (size_t)(colon - addr);
	if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	if (hlen >= sizeof(host)) {
		snprintf(err, errlen, "address %s: host too long", addr);
		return -1;
	}
	memcpy(host, h, hlen);
	host[hlen] = 0;
	if (connect_to) {       /* a wildcard names this host */
		hints.ai_flags = 0;
		if (!hlen || !strcmp(host, "0.0.0.0") || !strcmp(host, "*"))
			snprintf(host, sizeof(host), "127.0.0.1");
		else if (!strcmp(host, "::"))
			snprintf(host, sizeof(host), "::1");
		hlen = strlen(host);
	}
	rc = getaddrinfo(hlen ? host : NULL, colon + 1, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(err, errlen, "address %s: %s", addr, rc ? gai_strerror(rc) : "no address");
		return -1;
	}
	memcpy(sa, res->ai_addr, res->ai_addrlen);
	*salen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

int net_listen(const char *addr, bool reuseport, char *err, size_t errlen)
{
	struct sockaddr_storage sa;
	socklen_t salen;
	const char *path;
	int fd, one = 1;

	if (net_resolve(addr, false, &sa, &salen, err, errlen) != 0)
		return -1;
	fd = socket(sa.ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		goto fail;
	if (net_is_unix(addr, &path)) {
		unlink(path);   /* a stale socket from a previous run */
	} else {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (reuseport)
			setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	}
	if (bind(fd, (struct sockaddr *)&sa, salen) < 0 || listen(fd, 1024) < 0 ||
	    net_set_nonblock(fd) < 0)
		goto fail;
	return fd;
fail:
	snprintf(err, errlen, "address %s: %s", addr, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}
