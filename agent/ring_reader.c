/* ring_reader.c -- the settlement records, read from HAProxy's ring over its CLI.
 *
 * Owns: getting every settlement record HAProxy writes (one per transaction,
 * into the ring `tollgate_settle`) to settle_record(), on every HAProxy
 * version, across agent restarts and HAProxy reloads.
 *
 * Why the agent reads the ring instead of HAProxy pushing it (doc/gateway.md,
 * "Settlement records"): a ring's TCP forwarder has no acknowledgement, so a
 * record in flight when the agent dies is lost; from 2.8 on the forwarder
 * also consumes the records written while its server is away (measured on
 * 2.8.0, 3.0.0, 3.2.0 and 3.4.0); and an old worker's forwarder closes at a
 * reload, losing the records of the streams it still serves. The ring itself
 * keeps its records until they are overwritten, and `show events <ring> -w`
 * on HAProxy's CLI dumps them all, then follows. So each session replays the
 * whole ring, and exactness comes from the store, which settles once per
 * reservation id: a replayed record is a duplicate (or unknown, once its
 * marker expired) and charges nothing.
 *
 * Sessions: one on the newest HAProxy worker ("show info;show events ... -w":
 * its Pid first, then the records). Once a second a probe ("show info") asks
 * which worker answers the socket; a new Pid means a reload: a session opens
 * on the new worker and the old one is read until the old worker closes it
 * (it does when its last stream ends, after its last record). A session
 * closed by HAProxy (idle `stats timeout` on 2.8, a restart) or refused is
 * opened again at the next tick, within a second.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "list.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "ring_reader.h"
#include "settle.h"

#define RR_BUF     (64 * 1024)   /* > the longest record (ring maxlen 2048) */
#define RR_PROBE_S 1.0
#define RR_ANSWER_S 5.0          /* connect + show info, at most */

struct rr_sess {
	struct ring_reader *rr;
	int fd;
	ev_io io;
	bool probe;                /* "show info" only: which worker answers */
	bool sent;                 /* connected, command written */
	bool events;               /* past show info's section: records follow */
	bool draining;             /* an older worker's session, read to its end */
	ev_tstamp started;
	long pid;
	size_t len;
	char buf[RR_BUF];
	struct rr_sess *prev, *next;
};

struct ring_reader {
	struct agent *a;
	char *addr;
	struct sockaddr_storage sa;
	socklen_t salen;
	ev_timer tick;
	struct rr_sess *sessions;
	struct rr_sess *cur;       /* the session on the newest worker */
	struct rr_sess *probing;
	bool warned_connect;
	bool warned_line;          /* one warning for foreign lines until a record parses */
	unsigned reading;          /* sessions past show info: reading records */
};

static void sess_free(struct rr_sess *s)
{
	struct ring_reader *rr = s->rr;

	ev_io_stop(rr->a->loop, &s->io);
	close(s->fd);
	if (!s->probe && s->events)
		tgm_ring_sessions(rr->a->metrics, --rr->reading);
	if (rr->cur == s)
		rr->cur = NULL;
	if (rr->probing == s)
		rr->probing = NULL;
	LIST_DEL(rr->sessions, s);
	free(s);
}

/* The address of agent.settle, resolved once (again after a failure). */
static int resolve(struct ring_reader *rr)
{
	char err[256];

	if (rr->salen)
		return 0;
	if (net_resolve(rr->addr, true, &rr->sa, &rr->salen, err, sizeof(err)) == 0)
		return 0;
	if (!rr->warned_connect)
		log_warn("settlement ring: %s (retrying)", err);
	rr->warned_connect = true;
	rr->salen = 0;
	return -1;
}

/* One line of a session's output (without its '\n'). */
static void on_line(struct rr_sess *s, char *line, size_t len)
{
	struct ring_reader *rr = s->rr;

	if (!s->events) {
		if (len == 0) {                 /* the end of show info's section */
			s->events = true;
			if (!s->probe)
				tgm_ring_sessions(rr->a->metrics, ++rr->reading);
			return;
		}
		if (len > 5 && !memcmp(line, "Pid: ", 5))
			s->pid = strtol(line + 5, NULL, 10);
		return;
	}
	if (len == 0)
		return;
	if (len > 4 && !memcmp(line, "tg1 ", 4) && settle_record(rr->a, line, len) >= 0) {
		tgm_ring_line(rr->a->metrics, true);
		rr->warned_line = false;
		return;
	}
	tgm_ring_line(rr->a->metrics, false);
	/* not a record: HAProxy's own notices in the ring ("Proxy ... stopped"),
	 * the CLI refusing the command (level, unknown ring), a malformed one */
	if (!rr->warned_line) {
		rr->warned_line = true;
		log_warn("settlement ring " RING_READER_RING " on %s: \"%.*s\"", rr->addr,
		         (int)(len > 200 ? 200 : len), line);
	}
}

static void open_session(struct ring_reader *rr, bool probe);

/* A probe's answer: the Pid of the worker that owns the socket now. */
static void probe_done(struct rr_sess *s)
{
	struct ring_reader *rr = s->rr;
	long pid = s->pid;

	sess_free(s);
	if (pid <= 0 || !rr->cur || rr->cur->pid <= 0 || rr->cur->pid == pid)
		return;
	log_info("settlement ring: HAProxy worker %ld answers now (was %ld): reading both "
	         "until %ld closes", pid, rr->cur->pid, rr->cur->pid);
	rr->cur->draining = true;
	rr->cur = NULL;
	open_session(rr, false);
}

/* The current session is reopened by the next tick (within a second):
 * nothing is lost meanwhile, the ring keeps the records. */
static void session_closed(struct rr_sess *s)
{
	if (s->probe) {
		probe_done(s);
		return;
	}
	if (s->draining)
		log_info("settlement ring: HAProxy worker %ld closed its session", s->pid);
	sess_free(s);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
	struct rr_sess *s = w->data;
	struct ring_reader *rr = s->rr;
	char cmd[160];
	ssize_t n;
	size_t off;

	if (!s->sent && (revents & EV_WRITE)) {
		int soerr = 0, len;
		socklen_t sl = sizeof(soerr);

		if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
			if (!rr->warned_connect)
				log_warn("settlement ring: HAProxy's CLI at %s: %s (retrying every %.0f s)",
				         rr->addr, strerror(soerr ? soerr : errno), RR_PROBE_S);
			rr->warned_connect = true;
			rr->salen = 0;              /* resolve again next time */
			sess_free(s);
			return;
		}
		if (rr->warned_connect)
			log_info("settlement ring: connected to HAProxy's CLI at %s", rr->addr);
		rr->warned_connect = false;
		len = s->probe ? snprintf(cmd, sizeof(cmd), "show info\n")
		      : snprintf(cmd, sizeof(cmd), "show info;show events " RING_READER_RING " -w\n");
		if (write(s->fd, cmd, (size_t)len) != len) {
			sess_free(s);
			return;
		}
		s->sent = true;
		ev_io_stop(loop, &s->io);
		ev_io_set(&s->io, s->fd, EV_READ);
		ev_io_start(loop, &s->io);
		return;
	}
	if (!(revents & EV_READ))
		return;
	n = read(s->fd, s->buf + s->len, sizeof(s->buf) - s->len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		session_closed(s);
		return;
	}
	s->len += (size_t)n;
	off = 0;
	for (;;) {
		char *nl = memchr(s->buf + off, '\n', s->len - off);

		if (!nl)
			break;
		on_line(s, s->buf + off, (size_t)(nl - (s->buf + off)));
		off = (size_t)(nl - s->buf) + 1;
	}
	if (off == 0 && s->len == sizeof(s->buf)) {  /* no record is this long */
		tgm_ring_line(rr->a->metrics, false);
		s->len = 0;
		return;
	}
	memmove(s->buf, s->buf + off, s->len - off);
	s->len -= off;
}

static void open_session(struct ring_reader *rr, bool probe)
{
	struct rr_sess *s;
	int fd;

	if (resolve(rr) != 0)
		return;
	fd = socket(rr->sa.ss_family, SOCK_STREAM, 0);
	if (fd < 0 || net_set_nonblock(fd) < 0) {
		if (fd >= 0)
			close(fd);
		return;
	}
	if (connect(fd, (struct sockaddr *)&rr->sa, rr->salen) != 0 && errno != EINPROGRESS) {
		if (!rr->warned_connect)
			log_warn("settlement ring: HAProxy's CLI at %s: %s (retrying every %.0f s)",
			         rr->addr, strerror(errno), RR_PROBE_S);
		rr->warned_connect = true;
		rr->salen = 0;
		close(fd);
		return;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return;
	}
	s->rr = rr;
	s->fd = fd;
	s->probe = probe;
	s->started = ev_now(rr->a->loop);
	LIST_PUSH(rr->sessions, s);
	if (probe)
		rr->probing = s;
	else
		rr->cur = s;
	ev_io_init(&s->io, on_io, fd, EV_WRITE);
	s->io.data = s;
	ev_io_start(rr->a->loop, &s->io);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ring_reader *rr = w->data;

	(void)revents;
	/* a connection or a show info that does not answer in time is dropped */
	for (struct rr_sess *s = rr->sessions, *next; s; s = next) {
		next = s->next;
		if (!s->events && ev_now(loop) - s->started > RR_ANSWER_S) {
			log_warn("settlement ring: no answer from HAProxy's CLI at %s in %.0f s",
			         rr->addr, RR_ANSWER_S);
			sess_free(s);
		}
	}
	if (!rr->cur)
		open_session(rr, false);
	else if (!rr->probing && rr->cur->pid > 0)
		open_session(rr, true);
}

struct ring_reader *ring_reader_new(struct agent *a, const char *addr, char *err,
                                    size_t errlen)
{
	struct ring_reader *rr = calloc(1, sizeof(*rr));

	if (!rr || !(rr->addr = strdup(addr))) {
		free(rr);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	rr->a = a;
	ev_timer_init(&rr->tick, on_tick, 0., RR_PROBE_S);
	rr->tick.data = rr;
	ev_timer_start(a->loop, &rr->tick);
	return rr;
}

void ring_reader_free(struct ring_reader *rr)
{
	if (!rr)
		return;
	while (rr->sessions)
		sess_free(rr->sessions);
	ev_timer_stop(rr->a->loop, &rr->tick);
	free(rr->addr);
	free(rr);
}
