/* http-pace.c -- HTTP/1.1 requests at a fixed rate, latency from the
 * moment each request was due.
 *
 * wrk sends as fast as answers come back: it finds a server's maximum,
 * not the latency a request pays at a given load. This sends `rate`
 * requests a second over `conns` keep-alive connections, each connection
 * one request at a time on its own schedule (connection i sends at
 * start + (i + k * conns) / rate). A request that could not leave on time
 * (its connection still waited for the previous answer) leaves as soon as
 * it can, and its latency still counts from when it was due: a server that
 * falls behind shows it in the percentiles instead of slowing the load
 * down (no coordinated omission).
 *
 * After the window, answers in flight have 2 s to arrive; a request still
 * waiting then, or due in the window but never sent because its connection
 * was still waiting, counts with the time it has waited so far (`late`: a
 * lower bound, so an overloaded server cannot look fast).
 * sent, done and late count the requests due in the window; achieved is
 * the answers that arrived in it, a second.
 * Answers must carry Content-Length (chunked ones count as errors).
 * Output: one line on stdout,
 *   http-pace: rate=30000/s conns=50 secs=5.00 sent=150000 done=149990 late=0
 *   achieved=29998/s p50=210us p99=640us p99.9=1200us max=...us non2xx=0 errors=0
 * Exit 0 if no request failed (socket error, malformed or chunked answer),
 * 1 otherwise, 2 on usage or connection errors.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define RBUF      65536
#define HIST_US   1000000        /* latencies up to 1 s at 1 us; above: the last bin */
#define DRAIN_S   2.0            /* after the window: how long answers in flight may take */

struct conn {
	int fd;
	uint64_t next_due;          /* ns: when its next request is due */
	uint64_t due;               /* ns: when the request in flight was due */
	bool busy;                  /* a request is in flight */
	size_t rlen;
	char rbuf[RBUF];
};

static uint32_t *hist;
static uint64_t n_lat, lat_max, sent, done_n, late, answered, non2xx, errors;
static uint64_t t_meas, t_end;  /* ns: the measured window */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* one latency, of a request due in the measured window (callers check) */
static void record(uint64_t ns)
{
	uint64_t us = ns / 1000;

	hist[us < HIST_US ? us : HIST_US]++;
	n_lat++;
	if (us > lat_max)
		lat_max = us;
}

static uint64_t pct(double p)
{
	uint64_t want = (uint64_t)(p * (double)n_lat), seen = 0;

	for (uint64_t us = 0; us <= HIST_US; us++) {
		seen += hist[us];
		if (seen > want)
			return us;
	}
	return lat_max;
}

static int open_conn(const struct sockaddr_in *sa)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* One whole answer at the start of c->rbuf: its length, 0 if incomplete,
 * -1 if malformed or chunked. *status gets the status code. */
static long answer_len(const struct conn *c, int *status)
{
	const char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4), *p;
	long clen = -1;

	if (!end)
		return c->rlen >= RBUF ? -1 : 0;
	if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0)
		return -1;
	*status = atoi(c->rbuf + 9);
	for (p = memchr(c->rbuf, '\n', (size_t)(end - c->rbuf)); p && p < end;
	     p = memchr(p, '\n', (size_t)(end + 2 - p))) {
		p++;
		if (end - p > 15 && strncasecmp(p, "content-length:", 15) == 0)
			clen = strtol(p + 15, NULL, 10);
		else if (end - p > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
			return -1;
	}
	if (clen < 0 || (end + 4 - c->rbuf) + clen > RBUF)
		return -1;
	if ((size_t)((end + 4 - c->rbuf) + clen) > c->rlen)
		return 0;
	return (end + 4 - c->rbuf) + clen;
}

/* Reads what epoll reports (waiting at most wait_ns) and completes the
 * answers that arrived. */
static void poll_once(int ep, uint64_t wait_ns)
{
	struct epoll_event evs[256];
	struct timespec ts = { .tv_sec = (time_t)(wait_ns / 1000000000u),
	                       .tv_nsec = (long)(wait_ns % 1000000000u) };
	/* a timeout in ns: a ms one would spin (0) between requests due
	 * less than 1 ms apart, taking a core from what is measured */
	int n = epoll_pwait2(ep, evs, 256, &ts, NULL);

	for (int k = 0; k < n; k++) {
		struct conn *c = evs[k].data.ptr;
		ssize_t r = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
		int status = 0;
		long len = 0;

		if (r > 0) {
			c->rlen += (size_t)r;
			if ((len = answer_len(c, &status)) == 0)
				continue;
		}
		if (r <= 0 || len < 0 || !c->busy) {
			errors++;
			epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
			close(c->fd);
			c->fd = -1;
			c->busy = false;
			continue;
		}
		{
			uint64_t t = now_ns();

			if (t >= t_meas && t < t_end)
				answered++;     /* the rate achieved: answers in the window */
		}
		if (c->due >= t_meas && c->due < t_end) {
			record(now_ns() - c->due);
			done_n++;
			if (status < 200 || status > 299)
				non2xx++;
		}
		memmove(c->rbuf, c->rbuf + len, c->rlen - (size_t)len);
		c->rlen -= (size_t)len;
		c->busy = false;
	}
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: http-pace -p PORT -r RATE [-c CONNS] [-d SECS] [-w WARMUP_SECS]\n"
	        "                 [-u PATH] [-b BODY] [-H 'name: value']... [--host IPV4]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longs[] = { { "host", required_argument, NULL, 'A' }, { 0 } };
	const char *host = "127.0.0.1", *path = "/", *body = NULL;
	char hdrs[4096] = "", *req;
	double rate = 0, secs = 5, warm = 1;
	int port = 0, conns = 50, opt, ep;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	static struct conn cs[MAX_CONNS];
	size_t reqlen, hl = 0;
	uint64_t t0, period;

	while ((opt = getopt_long(argc, argv, "p:r:c:d:w:u:b:H:", longs, NULL)) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 'c': conns = atoi(optarg); break;
		case 'd': secs = atof(optarg); break;
		case 'w': warm = atof(optarg); break;
		case 'u': path = optarg; break;
		case 'b': body = optarg; break;
		case 'H':
			if (hl + strlen(optarg) + 3 > sizeof(hdrs))
				usage();
			hl += (size_t)sprintf(hdrs + hl, "%s\r\n", optarg);
			break;
		case 'A': host = optarg; break;
		default: usage();
		}
	}
	if (port <= 0 || rate <= 0 || conns <= 0 || conns > MAX_CONNS || secs <= 0 || warm < 0 ||
	    inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		usage();
	sa.sin_port = htons((uint16_t)port);
	if (asprintf(&req, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %zu\r\n\r\n%s",
	             body ? "POST" : "GET", path, host, port, hdrs, body ? strlen(body) : 0,
	             body ? body : "") < 0 || !(hist = calloc(HIST_US + 1, sizeof(*hist))))
		return 2;
	reqlen = strlen(req);
	if ((ep = epoll_create1(0)) < 0)
		return 2;
	period = (uint64_t)(1e9 * conns / rate);
	t0 = now_ns() + 10000000;       /* 10 ms to open the connections */
	for (int i = 0; i < conns; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &cs[i] };

		if ((cs[i].fd = open_conn(&sa)) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) != 0) {
			fprintf(stderr, "http-pace: connect %s:%d: %s\n", host, port, strerror(errno));
			return 2;
		}
		cs[i].next_due = t0 + (uint64_t)(1e9 * i / rate);
	}
	t_meas = t0 + (uint64_t)(warm * 1e9);
	t_end = t_meas + (uint64_t)(secs * 1e9);
	for (;;) {
		uint64_t now = now_ns(), soonest = UINT64_MAX;

		if (now >= t_end)
			break;
		/* send what is due on idle connections */
		for (int i = 0; i < conns; i++) {
			struct conn *c = &cs[i];

			if (!c->busy && c->fd >= 0 && c->next_due <= now) {
				if (send(c->fd, req, reqlen, MSG_NOSIGNAL) != (ssize_t)reqlen) {
					errors++;
					close(c->fd);
					c->fd = -1;
					continue;
				}
				c->busy = true;
				c->due = c->next_due;
				c->next_due += period;
				if (c->due >= t_meas && c->due < t_end)
					sent++;
			}
			if (!c->busy && c->fd >= 0 && c->next_due < soonest)
				soonest = c->next_due;
		}
		now = now_ns();
		poll_once(ep, soonest == UINT64_MAX ? 10000000 : soonest <= now ? 0 : soonest - now);
	}
	/* no new request now: the answers in flight have DRAIN_S to come */
	{
		uint64_t stop = t_end + (uint64_t)(DRAIN_S * 1e9), fin;
		bool busy = true;

		while (busy && now_ns() < stop) {
			busy = false;
			for (int i = 0; i < conns; i++)
				busy |= cs[i].busy && cs[i].fd >= 0;
			if (busy)
				poll_once(ep, 10000000);
		}
		/* what is still waiting, and what was due but never left because
		 * its connection was still waiting: at least this late */
		fin = now_ns();
		for (int i = 0; i < conns; i++) {
			struct conn *c = &cs[i];

			if (c->busy && c->due >= t_meas && c->due < t_end) {
				record(fin - c->due);
				late++;
			}
			for (uint64_t d = c->next_due; d < t_end; d += period)
				if (d >= t_meas) {
					record(fin - d);
					late++;
				}
		}
	}
	printf("http-pace: rate=%.0f/s conns=%d secs=%.2f sent=%llu done=%llu late=%llu achieved=%.0f/s "
	       "p50=%lluus p99=%lluus p99.9=%lluus max=%lluus non2xx=%llu errors=%llu\n",
	       rate, conns, secs, (unsigned long long)sent, (unsigned long long)done_n,
	       (unsigned long long)late,
	       (double)answered / secs, (unsigned long long)pct(0.50), (unsigned long long)pct(0.99),
	       (unsigned long long)pct(0.999), (unsigned long long)lat_max,
	       (unsigned long long)non2xx, (unsigned long long)errors);
	return errors ? 1 : 0;
}
