/*
 * mtun-agent run: the intercepting daemon. Attaches the BPF programs to a cgroup, serves
 * the DNS stub and the TCP listener they redirect to, and carries each connection as an
 * mtunnel through the broker session (agent/tunnel.c). docs/interception.md, docs/dns.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "conf.h"
#include "device.h"
#include "intercept.h"
#include "log.h"
#include "ring.h"
#include "wire.h"

#define RUN_TCP_PORT_DEFAULT 15001
#define RUN_DNS_PORT_DEFAULT 15053
#define RUN_MARK_DEFAULT     0x6d74756eU /* "mtun" */
#define RUN_UPSTREAM_SOCKS   4
#define RUN_TICK_NS          (250 * 1000000ULL)
#define RUN_STATUS_DEFAULT   "/run/mtun-agent.status"
#define RUN_DNS_TCP_MAX      128   /* TCP DNS connections, clients and upstream together */
#define RUN_DNS_TCP_IDLE_MS  10000 /* a TCP DNS connection idle this long is closed */

struct run_resolve {
	uint32_t req_id; /* 0: free */
	uint64_t token;
	uint64_t deadline;
};

struct run_hold {
	struct agent_run *a;
	struct in_addr addr;
};

/* A TCP DNS connection: a client of the stub, or one query forwarded upstream over TCP. */
struct run_dtcp {
	struct run_dtcp *next, **pprev;
	struct agent_run *a;
	int fd;
	bool upstream, closing;
	struct sockaddr_in
	    peer; /* client: its address (answers find it by this); upstream: resolver */
	struct sockaddr_in orig; /* client: the resolver it asked (port 0: unknown) */
	uint64_t deadline;
	size_t len; /* bytes in buf: messages with their 2-byte length prefix */
	uint8_t buf[2 + DNS_MSG_MAX];
};

struct run_up {
	struct agent_run *a;
	int fd;
};

struct agent_run {
	struct ring *ring;
	struct tunnel *t;
	struct intercept *it;
	struct pool *pool;
	struct dns_stub *stub;
	struct segset *segs;
	struct sockaddr_in resolver; /* fallback upstream; port 0: none */
	int tcp_fd, dns_fd, dns_tcp_fd;
	struct run_dtcp *dtcp;
	size_t ndtcp;
	struct run_up up[RUN_UPSTREAM_SOCKS];
	unsigned up_next;
	uint32_t mark;
	struct run_resolve *res;
	size_t nres;
	uint32_t next_req;
	uint8_t *out;
	const char *status_file, *broker, *cgroup;
	bool stopping;
	uint64_t dns_queries, dns_private, dns_forwarded;
};

static uint64_t run_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int run_socket(struct agent_run *a, int type)
{
	int fd = socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		return -errno;
	/* Exempt from our own hooks (the agent may live in the intercepted cgroup). */
	if (a->mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &a->mark, sizeof(a->mark)) < 0) {
		int err = -errno;

		log_warn("SO_MARK");
		close(fd);
		return err;
	}
	return fd;
}

static int run_bind_lo(struct agent_run *a, int type, uint16_t port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET,
	                          .sin_port = htons(port),
	                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd, one = 1, err;

	fd = run_socket(a, type);
	if (fd < 0)
		return fd;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 512) < 0)) {
		err = -errno;
		log_warn("127.0.0.1:%u", port);
		close(fd);
		return err;
	}
	return fd;
}

/* ---- DNS ---- */

static void run_dns_act(struct agent_run *a, const struct dns_result *r);
static void run_dtcp_answer(struct agent_run *a, const struct dns_result *r);
static void run_dtcp_forward(struct agent_run *a, const struct dns_result *r);

/* The segment a private name matched, and the first port to name in RESOLVE. */
static int run_seg_port(const struct segset *segs, const char *name, uint16_t *port, uint8_t *proto)
{
	for (size_t i = 0; segs && i < segset_count(segs); i++) {
		const struct segment *s = segset_nth(segs, i);

		for (size_t j = 0; j < s->nports; j++) {
			const struct segment *m =
			    segment_match(segs, name, s->ports[j].proto, s->ports[j].lo);

			if (m) {
				*port = m->ports[0].lo;
				*proto = m->ports[0].proto;
				return 0;
			}
		}
	}
	return -ENOENT;
}

static void run_resolve_done(struct agent_run *a, uint64_t token, enum dns_resolve_status st,
                             uint32_t ttl)
{
	struct dns_result r;

	if (dns_stub_resolved(a->stub, token, st, ttl, run_now(), a->out, DNS_MSG_MAX, &r) == 0)
		run_dns_act(a, &r);
}

static void run_resolve_start(struct agent_run *a, const struct dns_result *r)
{
	struct run_resolve *slot = NULL;
	uint64_t now = run_now();
	uint16_t port = 0;
	uint8_t proto = MT_PROTO_TCP;

	for (size_t i = 0; i < a->nres; i++) {
		if (!a->res[i].req_id || a->res[i].deadline <= now) {
			slot = &a->res[i];
			break;
		}
	}
	if (!slot || run_seg_port(a->segs, r->name, &port, &proto) < 0 || !tunnel_is_up(a->t)) {
		run_resolve_done(a, r->token, DNS_RESOLVED_FAIL, 0);
		return;
	}
	do {
		a->next_req++;
	} while (a->next_req == 0);
	*slot = (struct run_resolve){
	    .req_id = a->next_req, .token = r->token, .deadline = now + DNS_DEFAULT_TIMEOUT_MS};
	log_debug("RESOLVE %u %s port %u", slot->req_id, r->name, port);
	if (tunnel_resolve(a->t, slot->req_id, r->name, port, proto) < 0) {
		slot->req_id = 0;
		run_resolve_done(a, r->token, DNS_RESOLVED_FAIL, 0);
	}
}

static void run_on_resolved(struct tunnel *t, uint32_t req_id, unsigned status, uint32_t ttl,
                            const char *reason, void *arg)
{
	struct agent_run *a = arg;
	enum dns_resolve_status st;
	uint64_t token;

	for (size_t i = 0; i < a->nres; i++) {
		if (a->res[i].req_id != req_id)
			continue;
		token = a->res[i].token;
		a->res[i].req_id = 0;
		switch (status) {
		case MT_STATUS_OK:
			st = DNS_RESOLVED_OK;
			break;
		case MT_STATUS_NXDOMAIN:
		case MT_STATUS_DENIED:
		case MT_STATUS_NO_CONNECTOR:
		case MT_STATUS_UNREACHABLE:
		case MT_STATUS_REFUSED:
			st = DNS_RESOLVED_NXDOMAIN;
			break;
		default:
			st = DNS_RESOLVED_FAIL;
			break;
		}
		if (status != MT_STATUS_OK)
			log_event(LOG_LVL_INFO, "dns.resolve.refused",
			          "req=%u status=%s reason=\"%s\"", req_id,
			          wire_status_name(status), reason);
		run_resolve_done(a, token, st, ttl ? ttl : 1);
		return;
	}
	log_debug("RESOLVE_REPLY %u matches no query", req_id);
}

static void run_dns_act(struct agent_run *a, const struct dns_result *r)
{
	ssize_t n = 0;

	switch (r->action) {
	case DNS_ANSWER:
		if (r->tcp) {
			run_dtcp_answer(a, r);
			break;
		}
		n = sendto(a->dns_fd, a->out, r->len, 0, (const struct sockaddr *)&r->peer,
		           r->peer_len);
		break;
	case DNS_FORWARD:
		a->dns_forwarded++;
		if (r->tcp) {
			run_dtcp_forward(a, r);
			break;
		}
		n = sendto(a->up[a->up_next++ % RUN_UPSTREAM_SOCKS].fd, a->out, r->len, 0,
		           (const struct sockaddr *)&r->peer, r->peer_len);
		break;
	case DNS_RESOLVE:
		a->dns_private++;
		run_resolve_start(a, r);
		break;
	case DNS_DROP:
		break;
	}
	if (n < 0)
		log_debug("DNS send: %s", strerror(errno));
}

static void run_dns_query(struct agent_run *a, const uint8_t *pkt, size_t len,
                          const struct sockaddr_in *client)
{
	struct sockaddr_in orig;
	const struct sockaddr *up = NULL;
	struct dns_result r;

	a->dns_queries++;
	/* The resolver the application asked: its answer must come from there. */
	if (a->it && intercept_dns_orig(a->it, client, &orig) == 0)
		up = (const struct sockaddr *)&orig;
	else if (a->resolver.sin_port)
		up = (const struct sockaddr *)&a->resolver;
	if (dns_stub_query_via(a->stub, pkt, len, (const struct sockaddr *)client, sizeof(*client),
	                       up, up ? sizeof(struct sockaddr_in) : 0, 0, run_now(), a->out,
	                       DNS_MSG_MAX, &r) == 0)
		run_dns_act(a, &r);
}

static void run_dns_readable(struct ring *ring, int res, void *arg)
{
	struct agent_run *a = arg;
	static uint8_t pkt[DNS_MSG_MAX];
	struct sockaddr_in from;
	socklen_t flen;
	ssize_t n;

	if (res < 0) {
		if (!a->stopping)
			log_warnx("DNS stub poll: %s", strerror(-res));
		return;
	}
	for (;;) {
		flen = sizeof(from);
		n = recvfrom(a->dns_fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&from, &flen);
		if (n < 0)
			break;
		if (flen != sizeof(from) || from.sin_family != AF_INET)
			continue;
		run_dns_query(a, pkt, (size_t)n, &from);
	}
}

static void run_up_readable(struct ring *ring, int res, void *arg)
{
	struct run_up *u = arg;
	struct agent_run *a = u->a;
	static uint8_t pkt[DNS_MSG_MAX];
	struct sockaddr_storage from;
	struct dns_result r;
	socklen_t flen;
	ssize_t n;

	if (res < 0)
		return;
	for (;;) {
		flen = sizeof(from);
		n = recvfrom(u->fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&from, &flen);
		if (n < 0)
			break;
		if (dns_stub_upstream_reply(a->stub, pkt, (size_t)n, (struct sockaddr *)&from, flen,
		                            a->out, DNS_MSG_MAX, &r) == 0)
			run_dns_act(a, &r);
	}
}

/* ---- DNS over TCP: the stub's TCP side and TCP upstream ---- */

static void run_dtcp_freed(struct ring *ring, int res, void *arg)
{
	free(arg);
}

static void run_dtcp_close(struct run_dtcp *d)
{
	if (d->closing)
		return;
	d->closing = true;
	*d->pprev = d->next;
	if (d->next)
		d->next->pprev = d->pprev;
	d->a->ndtcp--;
	if (ring_close(d->a->ring, d->fd, run_dtcp_freed, d) < 0) {
		close(d->fd);
		free(d);
	}
}

static struct run_dtcp *run_dtcp_new(struct agent_run *a, int fd, bool upstream)
{
	struct run_dtcp *d;

	if (a->ndtcp >= RUN_DNS_TCP_MAX || !(d = calloc(1, sizeof(*d)))) {
		close(fd);
		return NULL;
	}
	d->a = a;
	d->fd = fd;
	d->upstream = upstream;
	d->deadline = run_now() + RUN_DNS_TCP_IDLE_MS;
	d->next = a->dtcp;
	if (d->next)
		d->next->pprev = &d->next;
	d->pprev = &a->dtcp;
	a->dtcp = d;
	a->ndtcp++;
	return d;
}

/* Sends one length-prefixed message; a client too slow to take a whole answer is dropped. */
static int run_dtcp_send(int fd, const uint8_t *msg, size_t len)
{
	uint8_t pre[2] = {(uint8_t)(len >> 8), (uint8_t)len};
	struct iovec iov[2] = {{pre, 2}, {(void *)msg, len}};
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
	ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);

	return n == (ssize_t)(len + 2) ? 0 : -EIO;
}

static void run_dtcp_answer(struct agent_run *a, const struct dns_result *r)
{
	const struct sockaddr_in *to = (const struct sockaddr_in *)&r->peer;

	for (struct run_dtcp *d = a->dtcp; d; d = d->next) {
		if (d->upstream || d->peer.sin_port != to->sin_port ||
		    d->peer.sin_addr.s_addr != to->sin_addr.s_addr)
			continue;
		if (run_dtcp_send(d->fd, a->out, r->len) < 0)
			run_dtcp_close(d);
		return;
	}
	log_debug("TCP DNS answer for a client that left");
}

/* Complete messages in d->buf: 0 and *msg, *len for the first one, or -EAGAIN. */
static int run_dtcp_message(struct run_dtcp *d, const uint8_t **msg, size_t *len)
{
	size_t n;

	if (d->len < 2)
		return -EAGAIN;
	n = (size_t)d->buf[0] << 8 | d->buf[1];
	if (d->len < 2 + n)
		return -EAGAIN;
	*msg = d->buf + 2;
	*len = n;
	return 0;
}

static void run_dtcp_consume(struct run_dtcp *d, size_t len)
{
	memmove(d->buf, d->buf + 2 + len, d->len - 2 - len);
	d->len -= 2 + len;
}

static void run_dtcp_readable(struct ring *ring, int res, void *arg)
{
	struct run_dtcp *d = arg;
	struct agent_run *a = d->a;
	struct dns_result r;
	const uint8_t *msg;
	size_t len;
	ssize_t n;

	if (res < 0 || d->closing) {
		run_dtcp_close(d);
		return;
	}
	for (;;) {
		n = read(d->fd, d->buf + d->len, sizeof(d->buf) - d->len);
		if (n <= 0) {
			if (n == 0 || errno != EAGAIN)
				run_dtcp_close(d);
			return;
		}
		d->len += (size_t)n;
		d->deadline = run_now() + RUN_DNS_TCP_IDLE_MS;
		while (!d->closing && run_dtcp_message(d, &msg, &len) == 0) {
			int rc;

			if (d->upstream) {
				rc = dns_stub_upstream_reply(
				    a->stub, msg, len, (const struct sockaddr *)&d->peer,
				    sizeof(d->peer), a->out, DNS_MSG_MAX, &r);
				run_dtcp_close(d); /* one query per upstream connection */
				if (rc == 0)
					run_dns_act(a, &r);
				return;
			}
			a->dns_queries++;
			rc =
			    dns_stub_query_via(a->stub, msg, len, (const struct sockaddr *)&d->peer,
			                       sizeof(d->peer), (const struct sockaddr *)&d->orig,
			                       d->orig.sin_port ? sizeof(d->orig) : 0,
			                       DNS_QUERY_TCP, run_now(), a->out, DNS_MSG_MAX, &r);
			run_dtcp_consume(d, len);
			if (rc == 0)
				run_dns_act(a, &r);
		}
		if (d->closing)
			return;
		if (d->len == sizeof(d->buf)) {
			run_dtcp_close(d);
			return;
		}
	}
}

static void run_dtcp_connected(struct ring *ring, int res, void *arg)
{
	struct run_dtcp *d = arg;
	const uint8_t *msg;
	size_t len;

	if (res < 0 || d->closing || run_dtcp_message(d, &msg, &len) < 0 ||
	    run_dtcp_send(d->fd, msg, len) < 0) {
		run_dtcp_close(d); /* the stub answers SERVFAIL at the query's deadline */
		return;
	}
	d->len = 0;
	if (ring_poll_add(ring, d->fd, POLLIN, true, run_dtcp_readable, d) < 0)
		run_dtcp_close(d);
}

static void run_dtcp_forward(struct agent_run *a, const struct dns_result *r)
{
	struct run_dtcp *d;
	int fd;

	if (r->peer.ss_family != AF_INET || r->len > DNS_MSG_MAX)
		return;
	fd = run_socket(a, SOCK_STREAM);
	if (fd < 0)
		return;
	d = run_dtcp_new(a, fd, true);
	if (!d)
		return;
	memcpy(&d->peer, &r->peer, sizeof(d->peer));
	d->buf[0] = (uint8_t)(r->len >> 8);
	d->buf[1] = (uint8_t)r->len;
	memcpy(d->buf + 2, a->out, r->len);
	d->len = 2 + r->len;
	if (ring_connect(a->ring, fd, (const struct sockaddr *)&d->peer, sizeof(d->peer),
	                 run_dtcp_connected, d) < 0)
		run_dtcp_close(d);
}

static void run_dtcp_accept(struct ring *ring, int fd, void *arg)
{
	struct agent_run *a = arg;
	struct run_dtcp *d;
	socklen_t len = sizeof(struct sockaddr_in);

	if (fd < 0)
		return;
	d = run_dtcp_new(a, fd, false);
	if (!d)
		return;
	if (getpeername(fd, (struct sockaddr *)&d->peer, &len) < 0 ||
	    d->peer.sin_family != AF_INET ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		run_dtcp_close(d);
		return;
	}
	if (!a->it || intercept_dns_tcp_orig(a->it, fd, &d->orig) < 0) {
		if (a->resolver.sin_port)
			d->orig = a->resolver;
		else
			memset(&d->orig, 0, sizeof(d->orig));
	}
	if (ring_poll_add(ring, fd, POLLIN, true, run_dtcp_readable, d) < 0)
		run_dtcp_close(d);
}

static void run_dtcp_expire(struct agent_run *a, uint64_t now)
{
	struct run_dtcp *d, *n;

	for (d = a->dtcp; d; d = n) {
		n = d->next;
		if (d->deadline <= now)
			run_dtcp_close(d);
	}
}

/* ---- TCP: intercepted connections ---- */

static void run_hold_end(void *arg)
{
	struct run_hold *h = arg;

	pool_release(h->a->pool, h->addr, run_now());
	free(h);
}

static void run_accept_cb(struct ring *ring, int fd, void *arg)
{
	struct agent_run *a = arg;
	char name[SEG_NAME_MAX + 1], ip[INET_ADDRSTRLEN];
	struct sockaddr_in dst;
	struct run_hold *h;
	uint16_t port;
	int err;

	if (fd < 0)
		return;
	err = a->it ? intercept_orig_dst(a->it, fd, &dst) : -ENOENT;
	if (err < 0) {
		log_event(LOG_LVL_WARN, "agent.accept.unknown", "why=\"%s\"", strerror(-err));
		close(fd);
		return;
	}
	port = ntohs(dst.sin_port);
	inet_ntop(AF_INET, &dst.sin_addr, ip, sizeof(ip));
	if (!tunnel_is_up(a->t)) {
		log_event(LOG_LVL_WARN, "agent.accept.refused",
		          "to=%s:%u why=\"no broker session\"", ip, port);
		close(fd);
		return;
	}
	if (pool_contains(a->pool, dst.sin_addr)) {
		if (pool_lookup_addr(a->pool, dst.sin_addr, name, sizeof(name)) < 0) {
			log_event(LOG_LVL_WARN, "agent.accept.refused",
			          "to=%s:%u why=\"synthetic address not assigned\"", ip, port);
			close(fd);
			return;
		}
		h = malloc(sizeof(*h));
		if (!h || pool_hold(a->pool, dst.sin_addr) < 0) {
			free(h);
			close(fd);
			return;
		}
		*h = (struct run_hold){.a = a, .addr = dst.sin_addr};
		log_debug("connection to %s:%u is %s:%u", ip, port, name, port);
		tunnel_open(a->t, fd, name, port, run_hold_end, h);
		return;
	}
	/* An IP-range segment: the address itself is the name the broker matches. */
	if (!a->segs || !segment_match_addr(a->segs, AF_INET, &dst.sin_addr, SEG_PROTO_TCP, port)) {
		log_event(LOG_LVL_WARN, "agent.accept.refused",
		          "to=%s:%u why=\"in no segment of the forwarding set\"", ip, port);
		close(fd);
		return;
	}
	tunnel_open(a->t, fd, ip, port, NULL, NULL);
}

/* ---- the forwarding set ---- */

/* TCP port span of a segment (the LPM map holds one range per prefix). */
static bool run_seg_tcp_span(const struct segment *s, uint16_t *lo, uint16_t *hi)
{
	bool any = false;

	for (size_t j = 0; j < s->nports; j++) {
		if (s->ports[j].proto != SEG_PROTO_TCP)
			continue;
		if (!any || s->ports[j].lo < *lo)
			*lo = s->ports[j].lo;
		if (!any || s->ports[j].hi > *hi)
			*hi = s->ports[j].hi;
		any = true;
	}
	return any;
}

static void run_ranges(struct agent_run *a, const struct segset *segs, bool add)
{
	struct conf_cidr c;
	const char *why;
	uint16_t lo = 0, hi = 0;
	int err;

	for (size_t i = 0; segs && i < segset_count(segs); i++) {
		const struct segment *s = segset_nth(segs, i);

		if (!run_seg_tcp_span(s, &lo, &hi))
			continue;
		for (size_t k = 0; k < s->nhosts; k++) {
			if (conf_parse_cidr(s->hosts[k], &c, &why) < 0 || c.family != AF_INET)
				continue; /* names; IPv6 ranges are not intercepted (docs) */
			err = add ? intercept_add_range(a->it, c.addr.v4, c.prefix, lo, hi)
			          : intercept_del_range(a->it, c.addr.v4, c.prefix);
			if (err < 0 && (add || err != -ENOENT))
				log_warnx("%s range %s: %s", add ? "adding" : "removing",
				          s->hosts[k], strerror(-err));
			else if (add)
				log_event(LOG_LVL_INFO, "agent.range.add", "cidr=%s ports=%u-%u",
				          s->hosts[k], lo, hi);
		}
	}
}

static void run_on_config(struct tunnel *t, struct segset *segs, uint64_t version, void *arg)
{
	struct agent_run *a = arg;
	struct segset *old = a->segs;

	if (dns_stub_set_segments(a->stub, segs) < 0) {
		log_warnx("config %llu: cannot apply it to the DNS stub",
		          (unsigned long long)version);
		segset_free(segs);
		return;
	}
	if (a->it) {
		run_ranges(a, old, false);
		run_ranges(a, segs, true);
	}
	a->segs = segs;
	segset_free(old);
}

static void run_on_down(struct tunnel *t, void *arg)
{
	struct agent_run *a = arg;

	/* Queries waiting for the broker get SERVFAIL now rather than at their deadline. */
	for (size_t i = 0; i < a->nres; i++) {
		if (!a->res[i].req_id)
			continue;
		a->res[i].req_id = 0;
		run_resolve_done(a, a->res[i].token, DNS_RESOLVED_FAIL, 0);
	}
}

static const struct tunnel_ops run_tunnel_ops = {
    .on_config = run_on_config,
    .on_resolved = run_on_resolved,
    .on_down = run_on_down,
};

/* ---- status, timers, signals ---- */

static void run_write_status(struct agent_run *a)
{
	struct tunnel_stats ts;
	char tmp[PATH_MAX];
	FILE *f;

	if (!a->status_file)
		return;
	tunnel_get_stats(a->t, &ts);
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", a->status_file) >= sizeof(tmp))
		return;
	f = fopen(tmp, "we");
	if (!f)
		return;
	fprintf(f,
	        "pid=%d\nbroker=%s\nsession=%s\nbroker_id=%s\ntenant=%s\nuser=%s\ndevice=%s\n"
	        "cgroup=%s\nconfig_version=%llu\nforwarding_set=%zu\nsynthetic_names=%zu\n"
	        "open_mtunnels=%zu\nmtunnels_total=%llu\nbytes_up=%llu\nbytes_down=%llu\n"
	        "dns_queries=%llu\ndns_private=%llu\ndns_forwarded=%llu\n",
	        (int)getpid(), a->broker, ts.up ? "up" : "down", ts.broker, ts.tenant, ts.user,
	        ts.device, a->cgroup ? a->cgroup : "(cgroup v2 root)",
	        (unsigned long long)ts.config_version, a->segs ? segset_count(a->segs) : 0,
	        pool_count(a->pool), ts.open_mtunnels, (unsigned long long)ts.mtunnels_total,
	        (unsigned long long)ts.bytes_up, (unsigned long long)ts.bytes_down,
	        (unsigned long long)a->dns_queries, (unsigned long long)a->dns_private,
	        (unsigned long long)a->dns_forwarded);
	if (fclose(f) != 0 || rename(tmp, a->status_file) < 0)
		unlink(tmp);
}

static void run_tick(struct ring *ring, void *arg)
{
	struct agent_run *a = arg;
	uint64_t now = run_now();
	struct dns_result r;

	while (dns_stub_timer(a->stub, now, a->out, DNS_MSG_MAX, &r) == 0 && r.action != DNS_DROP)
		run_dns_act(a, &r);
	pool_expire(a->pool, now);
	run_dtcp_expire(a, now);
	run_write_status(a);
	if (!a->stopping && ring_timer_add(ring, RUN_TICK_NS, run_tick, a, NULL) < 0)
		log_warnx("cannot re-arm the timer");
}

static void run_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	struct agent_run *a = arg;

	log_info("signal %u: stopping", si->ssi_signo);
	a->stopping = true;
	ring_stop(ring);
}

static void run_drained(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

/* ---- configuration ---- */

struct run_opts {
	const char *broker, *state, *idsrc, *cgroup, *pin_root, *instance, *status_file;
	const char *search[DNS_SEARCH_MAX];
	size_t nsearch;
	struct conf_cidr pool;
	struct conf_hostport resolver;
	bool has_resolver;
	int64_t tcp_port, dns_port, mark;
	uint64_t window;
	uint64_t posture_interval_ms;
};

static int run_load_conf(struct conf *c, const char *path, struct run_opts *o)
{
	const char **search = NULL;
	size_t n = 0;
	int err;

	err = conf_load_file(c, path);
	if (err < 0)
		return err;
	if ((err = conf_get_str(c, "agent.broker", CONF_REQUIRED, &o->broker)) < 0 ||
	    (err = conf_get_str(c, "agent.state", CONF_REQUIRED, &o->state)) < 0 ||
	    (err = conf_get_str(c, "agent.identity_source", CONF_OPTIONAL, &o->idsrc)) < 0 ||
	    (err = conf_get_str(c, "agent.cgroup", CONF_OPTIONAL, &o->cgroup)) < 0 ||
	    (err = conf_get_str(c, "agent.pin_root", CONF_OPTIONAL, &o->pin_root)) < 0 ||
	    (err = conf_get_str(c, "agent.instance", CONF_OPTIONAL, &o->instance)) < 0 ||
	    (err = conf_get_str(c, "agent.status_file", CONF_OPTIONAL, &o->status_file)) < 0 ||
	    (err = conf_get_int(c, "agent.listen_port", CONF_OPTIONAL, 1, 65535, &o->tcp_port)) <
	        0 ||
	    (err = conf_get_int(c, "agent.dns_port", CONF_OPTIONAL, 0, 65535, &o->dns_port)) < 0 ||
	    (err = conf_get_int(c, "agent.mark", CONF_OPTIONAL, 0, UINT32_MAX, &o->mark)) < 0 ||
	    (err = conf_get_size(c, "agent.window", CONF_OPTIONAL, MT_FRAME_MAX_PAYLOAD,
	                         MT_WINDOW_MAX, &o->window)) < 0 ||
	    (err = conf_get_duration(c, "agent.posture_interval", CONF_OPTIONAL, 0, 3600000,
	                             &o->posture_interval_ms)) < 0 ||
	    (err = conf_get_cidr(c, "agent.synthetic_range", CONF_OPTIONAL, &o->pool)) < 0 ||
	    (err = conf_get_strv(c, "agent.search", CONF_OPTIONAL, &search, &n)) < 0)
		return err;
	if (conf_has(c, "agent.resolver")) {
		err = conf_get_hostport(c, "agent.resolver", CONF_REQUIRED, &o->resolver);
		if (err < 0)
			return err;
		if (o->resolver.family != AF_INET) {
			log_warnx("%s: agent.resolver must be an IPv4 address and port", path);
			free(search);
			return -EINVAL;
		}
		o->has_resolver = true;
	}
	if (o->posture_interval_ms && o->posture_interval_ms < 100) {
		log_warnx("%s: agent.posture_interval: 0 (off) or at least 100ms", path);
		free(search);
		return -EINVAL;
	}
	if (n > DNS_SEARCH_MAX) {
		log_warnx("%s: agent.search: at most %d domains", path, DNS_SEARCH_MAX);
		free(search);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		o->search[i] = search[i];
	o->nsearch = n;
	free(search);
	return conf_check_unknown(c);
}

static void run_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: mtun-agent run --config FILE [--cgroup DIR] [--log-level LEVEL]\n"
	    "\n"
	    "Attaches the interception programs to the cgroup v2 DIR (default: the root of\n"
	    "the cgroup v2 mount), answers DNS for the forwarding set the broker sends and\n"
	    "carries connections to it as mtunnels. SIGTERM or SIGINT detaches everything.\n"
	    "\n"
	    "FILE (libconfig):\n"
	    "  agent = {\n"
	    "    broker = \"HOST:PORT\";            # required\n"
	    "    state = \"DIR\";                   # required: the enrolled identity\n"
	    "    identity_source = \"DIR\";         # the machine identity (tests, labs)\n"
	    "    cgroup = \"DIR\";                  # overridden by --cgroup\n"
	    "    pin_root = \"DIR\";                # a bpffs (default /sys/fs/bpf, mounted)\n"
	    "    instance = \"agent\";              # pins under PIN_ROOT/mtun/INSTANCE\n"
	    "    listen_port = 15001;             # TCP listener on 127.0.0.1\n"
	    "    dns_port = 15053;                # DNS stub, UDP+TCP (0: no DNS)\n"
	    "    resolver = \"IP:53\";              # upstream when a query's is unknown\n"
	    "    synthetic_range = \"100.64.0.0/10\";\n"
	    "    search = [ \"corp.example\" ];     # search domains of single labels\n"
	    "    mark = 1836348782;               # SO_MARK exempting the agent's sockets\n"
	    "    window = \"256k\";                 # per-mtunnel receive window\n"
	    "    posture_interval = \"2s\";         # posture re-checks (\"0s\": on queries only)\n"
	    "    status_file = \"" RUN_STATUS_DEFAULT "\";\n"
	    "  };\n");
}

int run_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"cgroup", required_argument, NULL, 'g'},
	    {"log-level", required_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct run_opts o = {.tcp_port = RUN_TCP_PORT_DEFAULT,
	                     .dns_port = RUN_DNS_PORT_DEFAULT,
	                     .mark = RUN_MARK_DEFAULT,
	                     .instance = "agent",
	                     .status_file = RUN_STATUS_DEFAULT,
	                     .posture_interval_ms = POSTURE_INTERVAL_DEFAULT_MS};
	struct agent_run a = {.tcp_fd = -1, .dns_fd = -1, .dns_tcp_fd = -1};
	struct pool_config pc;
	struct dns_stub_config dc;
	struct intercept_config ic = {0};
	struct tunnel_conf tc = {0};
	struct tunnel_stats ts;
	const char *config = NULL, *cgroup_arg = NULL, *why = NULL;
	struct conf *conf = NULL;
	enum log_level lvl;
	sigset_t sigs;
	int c, ret = -EINVAL;

	for (size_t i = 0; i < RUN_UPSTREAM_SOCKS; i++)
		a.up[i] = (struct run_up){.a = &a, .fd = -1};
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'g':
			cgroup_arg = optarg;
			break;
		case 'v':
			if (log_parse_level(optarg, &lvl) < 0)
				return -EINVAL;
			log_set_level(lvl);
			break;
		case 'h':
			run_usage(stdout);
			return 0;
		default:
			run_usage(stderr);
			return -EINVAL;
		}
	}
	if (!config || optind != argc) {
		run_usage(stderr);
		return -EINVAL;
	}
	conf = conf_new();
	if (!conf)
		return -ENOMEM;
	o.pool.family = AF_INET;
	o.pool.addr.v4.s_addr = htonl(POOL_DEFAULT_NET);
	o.pool.prefix = POOL_DEFAULT_PREFIX;
	ret = run_load_conf(conf, config, &o);
	if (ret < 0)
		goto out;
	if (cgroup_arg)
		o.cgroup = cgroup_arg;
	if (o.pool.family != AF_INET || o.tcp_port == o.dns_port) {
		log_warnx("%s: synthetic_range must be IPv4; listen_port and dns_port must differ",
		          config);
		ret = -EINVAL;
		goto out;
	}
	a.mark = (uint32_t)o.mark;
	a.broker = o.broker;
	a.cgroup = o.cgroup;
	a.status_file = o.status_file[0] ? o.status_file : NULL;
	if (o.has_resolver) {
		a.resolver.sin_family = AF_INET;
		a.resolver.sin_port = htons(o.resolver.port);
		inet_pton(AF_INET, o.resolver.host, &a.resolver.sin_addr);
	}

	pool_config_default(&pc);
	pc.net = o.pool.addr.v4;
	pc.prefix = o.pool.prefix;
	ret = pool_new(&pc, &a.pool, &why);
	if (ret < 0) {
		log_warnx("%s: synthetic_range: %s", config, why ? why : strerror(-ret));
		goto out;
	}
	dns_stub_config_default(&dc);
	dc.pool = a.pool;
	for (size_t i = 0; i < o.nsearch; i++)
		dc.search[i] = o.search[i];
	dc.nsearch = o.nsearch;
	a.out = malloc(DNS_MSG_MAX);
	a.nres = dc.max_pending;
	a.res = calloc(a.nres, sizeof(*a.res));
	if (!a.out || !a.res) {
		ret = -ENOMEM;
		goto out;
	}
	ret = dns_stub_new(&dc, &a.stub);
	if (ret < 0) {
		log_warnx("DNS stub: %s", strerror(-ret));
		goto out;
	}

	a.ring = ring_new(512);
	if (!a.ring) {
		ret = -errno;
		log_warn("ring");
		goto out;
	}
	a.tcp_fd = run_bind_lo(&a, SOCK_STREAM, (uint16_t)o.tcp_port);
	if (a.tcp_fd < 0) {
		ret = a.tcp_fd;
		goto out;
	}
	if (o.dns_port) {
		a.dns_fd = run_bind_lo(&a, SOCK_DGRAM, (uint16_t)o.dns_port);
		if (a.dns_fd < 0) {
			ret = a.dns_fd;
			goto out;
		}
		a.dns_tcp_fd = run_bind_lo(&a, SOCK_STREAM, (uint16_t)o.dns_port);
		if (a.dns_tcp_fd < 0) {
			ret = a.dns_tcp_fd;
			goto out;
		}
		for (size_t i = 0; i < RUN_UPSTREAM_SOCKS; i++) {
			a.up[i].fd = run_socket(&a, SOCK_DGRAM);
			if (a.up[i].fd < 0) {
				ret = a.up[i].fd;
				goto out;
			}
		}
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	ret = ring_signals(a.ring, &sigs, run_signal, &a);
	if (ret == 0)
		ret = ring_accept(a.ring, a.tcp_fd, run_accept_cb, &a);
	if (ret == 0 && a.dns_fd >= 0)
		ret = ring_poll_add(a.ring, a.dns_fd, POLLIN, true, run_dns_readable, &a);
	if (ret == 0 && a.dns_tcp_fd >= 0)
		ret = ring_accept(a.ring, a.dns_tcp_fd, run_dtcp_accept, &a);
	for (size_t i = 0; ret == 0 && a.dns_fd >= 0 && i < RUN_UPSTREAM_SOCKS; i++)
		ret = ring_poll_add(a.ring, a.up[i].fd, POLLIN, true, run_up_readable, &a.up[i]);
	if (ret == 0)
		ret = ring_timer_add(a.ring, RUN_TICK_NS, run_tick, &a, NULL);
	if (ret < 0) {
		log_warnx("ring setup: %s", strerror(-ret));
		goto out;
	}

	tc.broker = o.broker;
	tc.state = o.state;
	tc.identity_source = o.idsrc ? o.idsrc : getenv(DEVICE_SOURCE_ENV);
	tc.window = (uint32_t)o.window;
	tc.posture_interval_ms = (uint32_t)o.posture_interval_ms;
	ret = tunnel_new(a.ring, &tc, &run_tunnel_ops, &a, &a.t);
	if (ret < 0)
		goto out;

	ic.cgroup = o.cgroup;
	ic.pin_root = o.pin_root;
	ic.instance = o.instance;
	ic.synth = o.pool.addr.v4;
	ic.synth_prefix = o.pool.prefix;
	ic.tcp_port = (uint16_t)o.tcp_port;
	ic.dns_port = (uint16_t)o.dns_port;
	ic.exempt_mark = a.mark;
	ret = intercept_open(&ic, &a.it);
	if (ret < 0) {
		log_warnx("interception: %s", strerror(-ret));
		goto out;
	}
	tunnel_get_stats(a.t, &ts);
	log_event(LOG_LVL_INFO, "agent.ready",
	          "broker=%s user=%s cgroup=%s tcp=127.0.0.1:%u dns=127.0.0.1:%u recovered=%u",
	          o.broker, ts.user, o.cgroup ? o.cgroup : "(root)", (unsigned)o.tcp_port,
	          (unsigned)o.dns_port, intercept_recovered(a.it));
	run_write_status(&a);
	ret = ring_run(a.ring);
	a.stopping = true;
	/* Detach first: new connections and queries go their normal way again at once. */
	if (intercept_detach(a.it) == 0)
		log_event(LOG_LVL_INFO, "agent.detached", "instance=%s", o.instance);
	tunnel_shutdown(a.t);
	while (a.dtcp)
		run_dtcp_close(a.dtcp);
	if (ring_timer_add(a.ring, 300 * 1000000ULL, run_drained, NULL, NULL) == 0)
		ring_run(a.ring);
out:
	if (a.status_file)
		unlink(a.status_file);
	tunnel_shutdown(a.t);
	ring_free(a.ring);
	intercept_free(a.it);
	tunnel_free(a.t);
	if (a.tcp_fd >= 0)
		close(a.tcp_fd);
	if (a.dns_fd >= 0)
		close(a.dns_fd);
	if (a.dns_tcp_fd >= 0)
		close(a.dns_tcp_fd);
	for (size_t i = 0; i < RUN_UPSTREAM_SOCKS; i++)
		if (a.up[i].fd >= 0)
			close(a.up[i].fd);
	dns_stub_free(a.stub);
	segset_free(a.segs);
	pool_free(a.pool);
	free(a.res);
	free(a.out);
	conf_free(conf);
	return ret;
}

/* mtun-agent status: what the daemon last wrote to its status file. */
int run_status_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"file", required_argument, NULL, 'f'},
	    {NULL, 0, NULL, 0},
	};
	const char *file = RUN_STATUS_DEFAULT, *config = NULL;
	struct run_opts o = {.status_file = RUN_STATUS_DEFAULT};
	struct conf *conf = NULL;
	char line[512];
	FILE *f = NULL;
	long pid = 0;
	int c, ret = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'f':
			file = optarg;
			break;
		default:
			fprintf(stderr,
			        "usage: mtun-agent status [--config FILE | --file STATUS]\n");
			return -EINVAL;
		}
	}
	if (config) {
		conf = conf_new();
		if (!conf)
			return -ENOMEM;
		ret = run_load_conf(conf, config, &o);
		if (ret < 0)
			goto out;
		file = o.status_file;
	}
	f = fopen(file, "re");
	if (!f) {
		printf("mtun-agent is not running (no %s)\n", file);
		ret = -ENOENT;
		goto out;
	}
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "pid=%ld", &pid) == 1)
			continue;
		fputs(line, stdout);
	}
	if (pid <= 0 || kill((pid_t)pid, 0) < 0) {
		printf("mtun-agent is not running (stale %s)\n", file);
		ret = -ESRCH;
	} else {
		printf("pid=%ld\n", pid);
	}
out:
	if (f)
		fclose(f);
	conf_free(conf);
	return ret;
}
