/*
 * Probes for the broker: resolve a host with c-ares driven by the ring, time a TCP connect
 * to it, and answer with a status and a latency; the address found stays here.
 */
#include <arpa/inet.h>
#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "connector.h"
#include "log.h"

#define PROBE_SLICE_MIN_NS (250 * 1000000ULL) /* least time one address gets */

/* One socket c-ares opened: one one-shot poll per direction, re-armed while wanted. */
struct probe_watch {
	struct probe_watch *next;
	struct prober *pr;
	int fd;
	bool want_read, want_write;
	bool read_armed, write_armed;
	bool closed; /* c-ares closed it but the ring could not cancel its polls */
};

/* The c-ares query of a probe; outlives the probe when it ends first (c-ares cannot
 * cancel one query), and then holds the probe's slot until c-ares lets go of it. */
struct probe_dns {
	struct prober *pr;
	struct probe *p;
	bool holds_slot;
};

/* One connect attempt: the callback's argument, so that a connect the ring could not
 * cancel (out of memory) completes into this and not into a freed or later probe. */
struct probe_conn {
	struct probe *p;
	int fd;
};

struct prober {
	struct ring *ring;
	ares_channel channel;
	bool channel_ok;
	bool freeing;
	struct probe_watch *watches;
	ring_timer_t ares_timer;
	bool ares_timer_set;
	struct probe *probes;
	unsigned inflight, max_inflight;
};

struct probe {
	struct probe *prev, *next;
	struct prober *pr;
	probe_done_fn *cb;
	void *arg;
	char host[PROBE_HOST_MAX + 1];
	uint16_t port;
	uint8_t proto;
	bool counted;  /* holds one of max_inflight */
	bool starting; /* inside probe_start */
	bool lost;     /* finished inside probe_start but its result could not be queued */
	uint64_t deadline_ns;
	ring_timer_t deadline_timer, attempt_timer, deliver_timer;
	bool deadline_set, attempt_set, deliver_set;
	struct probe_dns *dns;
	struct ares_addrinfo *ai;
	struct ares_addrinfo_node *next_addr;
	struct sockaddr_storage cur;
	socklen_t curlen;
	struct probe_conn *conn;
	uint64_t connect_ns;
	enum mt_status fail;
	char fail_reason[sizeof(((struct probe_result *)0)->reason)];
	struct probe_result res;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* c-ares: sockets, timers */

static struct probe_watch *watch_find(struct prober *pr, int fd)
{
	struct probe_watch *w;

	for (w = pr->watches; w; w = w->next)
		if (w->fd == fd)
			return w;
	return NULL;
}

static void prober_resched(struct prober *pr);
static void watch_arm(struct probe_watch *w);

static void watch_event(struct prober *pr, int fd, bool readable, int res)
{
	struct probe_watch *w;

	if (res < 0) {
		errno = -res;
		log_warn("probe: poll on resolver socket %d", fd);
		return;
	}
	ares_process_fd(pr->channel, readable ? fd : ARES_SOCKET_BAD,
	                readable ? ARES_SOCKET_BAD : fd);
	/* c-ares may have closed the socket (and freed its watch) meanwhile. */
	w = watch_find(pr, fd);
	if (w)
		watch_arm(w);
	prober_resched(pr);
}

/* A poll of a socket c-ares has closed ended: the last one closes it. */
static bool watch_gone(struct probe_watch *w)
{
	if (!w->closed)
		return false;
	if (!w->read_armed && !w->write_armed) {
		close(w->fd);
		free(w);
	}
	return true;
}

static void watch_on_read(struct ring *ring, int res, void *arg)
{
	struct probe_watch *w = arg;

	w->read_armed = false;
	if (!watch_gone(w) && w->want_read)
		watch_event(w->pr, w->fd, true, res);
}

static void watch_on_write(struct ring *ring, int res, void *arg)
{
	struct probe_watch *w = arg;

	w->write_armed = false;
	if (!watch_gone(w) && w->want_write)
		watch_event(w->pr, w->fd, false, res);
}

static void watch_arm(struct probe_watch *w)
{
	struct ring *ring = w->pr->ring;
	int err;

	if (w->want_read && !w->read_armed) {
		err = ring_poll_add(ring, w->fd, POLLIN, false, watch_on_read, w);
		if (err < 0)
			log_warnx("probe: cannot watch resolver socket: %s", strerror(-err));
		else
			w->read_armed = true;
	}
	if (w->want_write && !w->write_armed) {
		err = ring_poll_add(ring, w->fd, POLLOUT, false, watch_on_write, w);
		if (err < 0)
			log_warnx("probe: cannot watch resolver socket: %s", strerror(-err));
		else
			w->write_armed = true;
	}
}

static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct prober *pr = data;
	struct probe_watch *w = watch_find(pr, fd);

	if (!w) {
		if (!readable && !writable)
			return;
		w = calloc(1, sizeof(*w));
		if (!w) {
			log_warnx("probe: out of memory");
			return;
		}
		w->pr = pr;
		w->fd = fd;
		w->next = pr->watches;
		pr->watches = w;
	}
	/* A poll no longer wanted stays armed; its completion is then ignored. */
	w->want_read = readable;
	w->want_write = writable;
	watch_arm(w);
}

static ares_socket_t sock_open(int domain, int type, int protocol, void *data)
{
	return socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
}

/* A socket the ring still polls must be closed by the ring (its cancel guarantee). */
static int sock_close(ares_socket_t fd, void *data)
{
	struct prober *pr = data;
	struct probe_watch **pp, *w;

	for (pp = &pr->watches; *pp; pp = &(*pp)->next)
		if ((*pp)->fd == fd)
			break;
	w = *pp;
	if (!w)
		return close(fd);
	*pp = w->next;
	if (!w->read_armed && !w->write_armed) {
		free(w);
		return close(fd);
	}
	if (ring_close(pr->ring, fd, NULL, NULL) == 0) {
		free(w);
		return 0;
	}
	/* Out of memory: the last poll to end closes it (watch_gone); the fd stays taken
	 * meanwhile, so its number cannot alias a new socket under a live poll. */
	log_warnx("probe: cannot cancel the polls of resolver socket %d", fd);
	w->closed = true;
	return 0;
}

static int sock_connect(ares_socket_t fd, const struct sockaddr *sa, ares_socklen_t len, void *data)
{
	return connect(fd, sa, len);
}

static ares_ssize_t sock_recvfrom(ares_socket_t fd, void *buf, size_t len, int flags,
                                  struct sockaddr *from, ares_socklen_t *fromlen, void *data)
{
	return recvfrom(fd, buf, len, flags, from, fromlen);
}

static ares_ssize_t sock_sendv(ares_socket_t fd, const struct iovec *iov, int iovcnt, void *data)
{
	return writev(fd, iov, iovcnt);
}

static const struct ares_socket_functions prober_sockfuncs = {
    .asocket = sock_open,
    .aclose = sock_close,
    .aconnect = sock_connect,
    .arecvfrom = sock_recvfrom,
    .asendv = sock_sendv,
};

static void on_ares_timer(struct ring *ring, void *arg)
{
	struct prober *pr = arg;

	pr->ares_timer_set = false;
	ares_process_fd(pr->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	prober_resched(pr);
}

/* One ring timer for c-ares's next timeout, moved after every call into c-ares. */
static void prober_resched(struct prober *pr)
{
	struct timeval tv;
	uint64_t ns;

	if (pr->freeing)
		return;
	if (pr->ares_timer_set) {
		ring_timer_cancel(pr->ring, pr->ares_timer);
		pr->ares_timer_set = false;
	}
	if (!ares_timeout(pr->channel, NULL, &tv))
		return;
	ns = (uint64_t)tv.tv_sec * 1000000000ULL + (uint64_t)tv.tv_usec * 1000ULL;
	if (ring_timer_add(pr->ring, ns, on_ares_timer, pr, &pr->ares_timer) == 0)
		pr->ares_timer_set = true;
	else
		log_warnx("probe: cannot schedule the resolver's timeout");
}

/* probes */

static void probe_fail(struct probe *p, enum mt_status st, const char *reason)
{
	/* Across addresses, keep the most telling failure. */
	static const int rank[MT_STATUS_MAX] = {
	    [MT_STATUS_REFUSED] = 4,
	    [MT_STATUS_TIMEOUT] = 3,
	    [MT_STATUS_UNREACHABLE] = 2,
	    [MT_STATUS_ERROR] = 1,
	};

	if (p->fail == MT_STATUS_OK || rank[st] > rank[p->fail]) {
		p->fail = st;
		snprintf(p->fail_reason, sizeof(p->fail_reason), "%s", reason);
	}
}

/* Ends the connect in flight: the ring cancels it (no callback) and closes the socket. */
static void probe_conn_end(struct probe *p)
{
	struct probe_conn *c = p->conn;

	if (!c)
		return;
	p->conn = NULL;
	if (ring_close(p->pr->ring, c->fd, NULL, NULL) == 0) {
		free(c);
		return;
	}
	/* Its completion will close the socket and free c. */
	log_warnx("probe: cannot cancel a connect; it ends on its own");
	c->p = NULL;
}

/* Lets go of everything the probe holds in the ring and in c-ares; no callback after. */
static void probe_teardown(struct probe *p)
{
	struct prober *pr = p->pr;

	if (p->deadline_set)
		ring_timer_cancel(pr->ring, p->deadline_timer);
	if (p->attempt_set)
		ring_timer_cancel(pr->ring, p->attempt_timer);
	if (p->deliver_set)
		ring_timer_cancel(pr->ring, p->deliver_timer);
	p->deadline_set = p->attempt_set = p->deliver_set = false;
	probe_conn_end(p);
	ares_freeaddrinfo(p->ai);
	p->ai = NULL;
	p->next_addr = NULL;
	if (p->counted) {
		if (p->dns)
			p->dns->holds_slot = true;
		else
			pr->inflight--;
		p->counted = false;
	}
	if (p->dns) {
		p->dns->p = NULL;
		p->dns = NULL;
	}
}

static void probe_unlink(struct probe *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		p->pr->probes = p->next;
	if (p->next)
		p->next->prev = p->prev;
	p->prev = p->next = NULL;
}

static void probe_deliver(struct ring *ring, void *arg)
{
	struct probe *p = arg;

	p->deliver_set = false;
	probe_unlink(p);
	log_event(LOG_LVL_DEBUG, "probe.done", "host=%s port=%u proto=%u status=%s latency_us=%u",
	          p->host, p->port, p->proto, wire_status_name(p->res.status), p->res.latency_us);
	p->cb(p, &p->res, p->arg);
	free(p);
}

/* Results go out through the ring, never from inside c-ares or probe_start. */
static void probe_finish(struct probe *p, enum mt_status st, const char *reason)
{
	int err;

	probe_teardown(p);
	p->res.status = st;
	snprintf(p->res.reason, sizeof(p->res.reason), "%s", st == MT_STATUS_OK ? "" : reason);
	err = ring_timer_add(p->pr->ring, 0, probe_deliver, p, &p->deliver_timer);
	if (err < 0) {
		log_warnx("probe: cannot queue a result: %s", strerror(-err));
		/* Inside probe_start: it fails instead. */
		if (p->starting)
			p->lost = true;
		else
			probe_deliver(p->pr->ring, p);
		return;
	}
	p->deliver_set = true;
}

static void probe_set_addr(struct probe *p, const struct sockaddr *sa, socklen_t len)
{
	memcpy(&p->res.addr, sa, len);
	p->res.addrlen = len;
}

static void probe_connect_next(struct probe *p);

static void probe_end_attempt(struct probe *p)
{
	if (p->attempt_set)
		ring_timer_cancel(p->pr->ring, p->attempt_timer);
	p->attempt_set = false;
	probe_conn_end(p);
}

static void probe_on_connect(struct ring *ring, int res, void *arg)
{
	struct probe_conn *c = arg;
	struct probe *p = c->p;
	uint64_t us;

	if (!p) {
		close(c->fd);
		free(c);
		return;
	}

	if (res == 0) {
		us = (now_ns() - p->connect_ns) / 1000;
		p->res.latency_us = us == 0 ? 1 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
		probe_set_addr(p, (struct sockaddr *)&p->cur, p->curlen);
		probe_finish(p, MT_STATUS_OK, "");
		return;
	}
	switch (-res) {
	case ECONNREFUSED:
		probe_fail(p, MT_STATUS_REFUSED, "connection refused");
		break;
	case ENETUNREACH:
	case EHOSTUNREACH:
	case ENETDOWN:
	case EHOSTDOWN:
		probe_fail(p, MT_STATUS_UNREACHABLE, strerror(-res));
		break;
	case ETIMEDOUT:
		probe_fail(p, MT_STATUS_TIMEOUT, "connect timed out");
		break;
	default: {
		char why[64];

		snprintf(why, sizeof(why), "connect: %s", strerror(-res));
		probe_fail(p, MT_STATUS_ERROR, why);
	}
	}
	probe_end_attempt(p);
	probe_connect_next(p);
}

static void probe_on_attempt_timeout(struct ring *ring, void *arg)
{
	struct probe *p = arg;

	p->attempt_set = false;
	probe_fail(p, MT_STATUS_TIMEOUT, "connect timed out");
	probe_end_attempt(p);
	probe_connect_next(p);
}

static void probe_on_deadline(struct ring *ring, void *arg)
{
	struct probe *p = arg;

	p->deadline_set = false;
	probe_finish(p, MT_STATUS_TIMEOUT, p->dns ? "resolution timed out" : "connect timed out");
}

/*
 * Happy-eyeballs-lite: the addresses one after another in c-ares's RFC 6724 order, each
 * given an equal share of the time left (at least PROBE_SLICE_MIN_NS), so that one
 * blackholed address does not eat the whole deadline.
 */
static int probe_try(struct probe *p, const struct sockaddr *sa, socklen_t len)
{
	struct prober *pr = p->pr;
	struct ares_addrinfo_node *n;
	struct probe_conn *c;
	uint64_t now, left, slice;
	unsigned later = 0;
	int err;

	if (len > sizeof(p->cur) || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
		return -EAFNOSUPPORT;
	memcpy(&p->cur, sa, len);
	p->curlen = len;
	if (p->cur.ss_family == AF_INET)
		((struct sockaddr_in *)&p->cur)->sin_port = htons(p->port);
	else
		((struct sockaddr_in6 *)&p->cur)->sin6_port = htons(p->port);
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->p = p;
	c->fd = socket(p->cur.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		err = -errno;
		free(c);
		return err;
	}
	p->connect_ns = now_ns();
	err = ring_connect(pr->ring, c->fd, (struct sockaddr *)&p->cur, p->curlen, probe_on_connect,
	                   c);
	if (err < 0) {
		close(c->fd);
		free(c);
		return err;
	}
	p->conn = c;
	for (n = p->next_addr; n; n = n->ai_next)
		later++;
	now = p->connect_ns;
	left = p->deadline_ns > now ? p->deadline_ns - now : 0;
	if (later > 0) {
		slice = left / (later + 1);
		if (slice < PROBE_SLICE_MIN_NS)
			slice = PROBE_SLICE_MIN_NS;
		if (slice < left && ring_timer_add(pr->ring, slice, probe_on_attempt_timeout, p,
		                                   &p->attempt_timer) == 0)
			p->attempt_set = true;
	}
	return 0;
}

static void probe_connect_next(struct probe *p)
{
	struct ares_addrinfo_node *n;
	char why[64];
	int err;

	while ((n = p->next_addr) != NULL) {
		p->next_addr = n->ai_next;
		if (now_ns() >= p->deadline_ns)
			break;
		err = probe_try(p, n->ai_addr, n->ai_addrlen);
		if (err == 0)
			return;
		snprintf(why, sizeof(why), "connect: %s", strerror(-err));
		probe_fail(p, MT_STATUS_ERROR, why);
	}
	if (p->fail == MT_STATUS_OK)
		probe_fail(p, MT_STATUS_TIMEOUT, "connect timed out");
	probe_finish(p, p->fail, p->fail_reason);
}

static void probe_on_ares(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
	struct probe_dns *dns = arg;
	struct probe *p = dns->p;
	struct ares_addrinfo_node *n;
	char why[64];

	if (!p) {
		/* The probe ended first; this query held its slot until now. */
		if (dns->holds_slot)
			dns->pr->inflight--;
		ares_freeaddrinfo(ai);
		free(dns);
		return;
	}
	p->dns = NULL;
	free(dns);
	for (n = ai ? ai->nodes : NULL; n; n = n->ai_next)
		if (n->ai_family == AF_INET || n->ai_family == AF_INET6)
			break;
	switch (status) {
	case ARES_SUCCESS:
		if (!n) {
			ares_freeaddrinfo(ai);
			probe_finish(p, MT_STATUS_NXDOMAIN, "no address");
			return;
		}
		break;
	case ARES_ENOTFOUND:
	case ARES_ENODATA:
	case ARES_ENONAME:
		ares_freeaddrinfo(ai);
		probe_finish(p, MT_STATUS_NXDOMAIN, "name not found");
		return;
	case ARES_ETIMEOUT:
		ares_freeaddrinfo(ai);
		probe_finish(p, MT_STATUS_TIMEOUT, "resolution timed out");
		return;
	default:
		ares_freeaddrinfo(ai);
		snprintf(why, sizeof(why), "resolve: %s", ares_strerror(status));
		probe_finish(p, MT_STATUS_ERROR, why);
		return;
	}
	if (p->proto == MT_PROTO_UDP) {
		probe_set_addr(p, n->ai_addr, n->ai_addrlen);
		ares_freeaddrinfo(ai);
		probe_finish(p, MT_STATUS_OK, "");
		return;
	}
	p->ai = ai;
	p->next_addr = n;
	probe_connect_next(p);
}

static bool probe_host_ok(const char *host)
{
	size_t i, len = strnlen(host, PROBE_HOST_MAX + 1);

	if (len == 0 || len > PROBE_HOST_MAX)
		return false;
	for (i = 0; i < len; i++) {
		char c = host[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_' || c == ':'))
			return false;
	}
	return true;
}

/* An IP literal skips DNS. */
static bool probe_literal(struct probe *p, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, p->host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(p->port);
		*len = sizeof(*sin);
		return true;
	}
	if (inet_pton(AF_INET6, p->host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(p->port);
		*len = sizeof(*sin6);
		return true;
	}
	return false;
}

static int probe_begin(struct probe *p)
{
	struct prober *pr = p->pr;
	struct ares_addrinfo_hints hints;
	struct sockaddr_storage ss;
	socklen_t len;
	int err;

	if (probe_literal(p, &ss, &len)) {
		if (p->proto == MT_PROTO_UDP) {
			probe_set_addr(p, (struct sockaddr *)&ss, len);
			probe_finish(p, MT_STATUS_OK, "");
			return 0;
		}
		err = probe_try(p, (struct sockaddr *)&ss, len);
		if (err < 0) {
			char why[64];

			snprintf(why, sizeof(why), "connect: %s", strerror(-err));
			probe_finish(p, MT_STATUS_ERROR, why);
		}
		return 0;
	}
	p->dns = calloc(1, sizeof(*p->dns));
	if (!p->dns)
		return -ENOMEM;
	p->dns->pr = pr;
	p->dns->p = p;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = p->proto == MT_PROTO_UDP ? SOCK_DGRAM : SOCK_STREAM;
	/* May call back at once (hosts file, bad name): probe_finish defers the result. */
	ares_getaddrinfo(pr->channel, p->host, NULL, &hints, probe_on_ares, p->dns);
	prober_resched(pr);
	return 0;
}

struct probe *probe_start(struct prober *pr, const char *host, uint16_t port, uint8_t proto,
                          unsigned deadline_ms, probe_done_fn *cb, void *arg)
{
	struct probe *p;
	int err;

	if (!pr || !host || !cb || !probe_host_ok(host) ||
	    (proto != MT_PROTO_TCP && proto != MT_PROTO_UDP) ||
	    (proto == MT_PROTO_TCP && port == 0) || deadline_ms == 0 ||
	    deadline_ms > PROBE_MAX_DEADLINE_MS) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		errno = ENOMEM;
		return NULL;
	}
	p->pr = pr;
	p->cb = cb;
	p->arg = arg;
	snprintf(p->host, sizeof(p->host), "%s", host);
	p->port = port;
	p->proto = proto;
	p->next = pr->probes;
	if (pr->probes)
		pr->probes->prev = p;
	pr->probes = p;

	p->starting = true;
	if (pr->inflight >= pr->max_inflight) {
		probe_finish(p, MT_STATUS_ERROR, "busy");
		err = 0;
	} else {
		pr->inflight++;
		p->counted = true;
		p->deadline_ns = now_ns() + (uint64_t)deadline_ms * 1000000ULL;
		err = ring_timer_add(pr->ring, (uint64_t)deadline_ms * 1000000ULL,
		                     probe_on_deadline, p, &p->deadline_timer);
		if (err == 0) {
			p->deadline_set = true;
			err = probe_begin(p);
		}
	}
	p->starting = false;
	if (err == 0 && p->lost)
		err = -ENOMEM;
	if (err < 0) {
		probe_teardown(p);
		probe_unlink(p);
		free(p);
		errno = -err;
		return NULL;
	}
	return p;
}

void probe_cancel(struct probe *p)
{
	if (!p)
		return;
	probe_teardown(p);
	probe_unlink(p);
	free(p);
}

unsigned prober_inflight(const struct prober *pr)
{
	return pr->inflight;
}

/* The list goes to c-ares as its CSV form: each entry checked, so no comma smuggles in
 * another server. */
static int prober_set_servers(struct prober *pr, const char *const *servers, unsigned n)
{
	char csv[PROBE_SERVERS_MAX * 64];
	size_t off = 0, len;
	unsigned i;
	int st;

	if (!servers || n > PROBE_SERVERS_MAX) {
		log_warnx("probe: at most %d resolver servers", PROBE_SERVERS_MAX);
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		len = servers[i] ? strnlen(servers[i], 64) : 0;
		if (len == 0 || len >= 63 || strpbrk(servers[i], ", \t")) {
			log_warnx("probe: bad resolver server #%u", i + 1);
			return -EINVAL;
		}
		off += (size_t)snprintf(csv + off, sizeof(csv) - off, "%s%s", i ? "," : "",
		                        servers[i]);
	}
	st = ares_set_servers_ports_csv(pr->channel, csv);
	if (st != ARES_SUCCESS) {
		log_warnx("probe: resolver servers \"%s\": %s", csv, ares_strerror(st));
		return st == ARES_ENOMEM ? -ENOMEM : -EINVAL;
	}
	return 0;
}

struct prober *prober_new(struct ring *ring, const struct prober_conf *conf)
{
	struct ares_options o;
	struct prober *pr;
	int st, mask, err = -EINVAL;

	pr = calloc(1, sizeof(*pr));
	if (!pr) {
		errno = ENOMEM;
		return NULL;
	}
	pr->ring = ring;
	pr->max_inflight = conf->max_inflight ? conf->max_inflight : PROBE_DEFAULT_INFLIGHT;
	st = ares_library_init(ARES_LIB_INIT_ALL);
	if (st != ARES_SUCCESS) {
		log_warnx("probe: c-ares init: %s", ares_strerror(st));
		free(pr);
		errno = ENOMEM;
		return NULL;
	}
	memset(&o, 0, sizeof(o));
	o.sock_state_cb = on_sock_state;
	o.sock_state_cb_data = pr;
	o.timeout =
	    (int)(conf->dns_timeout_ms ? conf->dns_timeout_ms : PROBE_DEFAULT_DNS_TIMEOUT_MS);
	o.tries = (int)(conf->dns_tries ? conf->dns_tries : PROBE_DEFAULT_DNS_TRIES);
	/* Segment hosts are fully qualified: no search list from resolv.conf. */
	o.domains = NULL;
	o.ndomains = 0;
	o.lookups = (char *)"fb";
	mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_DOMAINS |
	       ARES_OPT_LOOKUPS;
	st = ares_init_options(&pr->channel, &o, mask);
	if (st != ARES_SUCCESS) {
		log_warnx("probe: resolver setup: %s", ares_strerror(st));
		err = st == ARES_ENOMEM ? -ENOMEM : -EINVAL;
		goto fail;
	}
	pr->channel_ok = true;
	ares_set_socket_functions(pr->channel, &prober_sockfuncs, pr);
	if (conf->nservers > 0) {
		err = prober_set_servers(pr, conf->servers, conf->nservers);
		if (err < 0)
			goto fail;
	}
	return pr;
fail:
	prober_free(pr);
	errno = -err;
	return NULL;
}

void prober_free(struct prober *pr)
{
	struct probe *p;

	if (!pr)
		return;
	pr->freeing = true;
	while ((p = pr->probes) != NULL)
		probe_cancel(p);
	if (pr->ares_timer_set)
		ring_timer_cancel(pr->ring, pr->ares_timer);
	/* Calls back every orphaned query (freed there) and closes its sockets. */
	if (pr->channel_ok)
		ares_destroy(pr->channel);
	while (pr->watches) {
		struct probe_watch *w = pr->watches;

		pr->watches = w->next;
		free(w);
	}
	ares_library_cleanup();
	free(pr);
}
