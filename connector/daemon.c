/*
 * mtun-connector run: keeps a control session to each configured broker; on BIND connects
 * to the app, then answers BIND_REPLY on a data session to the broker that asked and
 * carries the mtunnel there (docs/connector.md, docs/protocol.md section 7).
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "conf.h"
#include "connector.h"
#include "enroll.h"
#include "log.h"
#include "session.h"
#include "stream.h"

#define CD_BROKERS_MAX     16
#define CD_WINDOW_DEFAULT  (256U * 1024)
#define CD_CONNECT_DEFAULT 5000
#define CD_ADDR_SLOTS      256   /* addresses probes found, by host and port */
#define CD_ADDR_FRESH_MS   30000 /* a BIND within this of its probe connects there */

struct cd;
struct cdata;

enum cbind_state {
	CB_CONNECTING = 0,
	CB_WAIT_DATA, /* app connected, data session not up yet */
	CB_OPEN,
};

struct cbind {
	struct cbind *next, **pprev;
	struct cd *cd;
	struct session *ctl; /* where failures are answered; NULL once that session is gone */
	struct cdata *data;
	struct stream *st;
	enum cbind_state state;
	int fd;
	uint32_t id, send_credit;
	ring_timer_t timer;
	bool has_timer;
	char broker[MT_BROKER_MAX + 1];
	char host[MT_NAME_MAX + 1];
	uint16_t port;
	uint8_t cookie[MT_COOKIE_LEN];
};

/* A PROBE being answered; the prober calls back once unless cancelled. */
struct cprobe {
	struct cprobe *next, **pprev;
	struct cd *cd;
	struct session *ctl; /* where the answer goes */
	struct probe *pr;
	uint32_t req_id;
	uint16_t port;
	char host[MT_NAME_MAX + 1];
};

/* The address a successful probe connected to: the broker never learns it. */
struct cd_addr {
	char host[MT_NAME_MAX + 1];
	uint16_t port;
	uint64_t at_ms;
	struct sockaddr_storage ss;
	socklen_t len;
};

/* A data session to one broker address, shared by its mtunnels. */
struct cdata {
	struct cdata *next, **pprev;
	struct cd *cd;
	struct session *s; /* NULL while connecting */
	bool up;
	int fd;
	char broker[MT_BROKER_MAX + 1];
	struct cbind *binds;
};

struct cd {
	struct ring *ring;
	struct ring_bufgroup *bufs;
	struct tls_ctx *ctx;
	struct enroll_identity idn;
	const char *group, *location;
	bool has_capacity;
	uint32_t capacity, window;
	uint64_t connect_ms;
	size_t nbrokers;
	struct session_dialer *ctl[CD_BROKERS_MAX];
	struct cdata *datas;
	struct cbind *connecting; /* binds not on a data session yet */
	struct prober *prober;
	struct cprobe *probes;
	struct cd_addr *addrs; /* CD_ADDR_SLOTS */
	const char **dns_servers;
	size_t ndns;
	uint64_t dns_timeout_ms;
	unsigned dns_tries;
};

static uint64_t cd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct cd_addr *cd_addr_slot(struct cd *cd, const char *host, uint16_t port)
{
	uint32_t h = 2166136261U ^ port;

	for (const char *c = host; *c; c++)
		h = (h ^ (uint8_t)*c) * 16777619U;
	return &cd->addrs[h % CD_ADDR_SLOTS];
}

static const struct cd_addr *cd_addr_get(struct cd *cd, const char *host, uint16_t port)
{
	const struct cd_addr *a = cd_addr_slot(cd, host, port);

	if (a->len && a->port == port && strcmp(a->host, host) == 0 &&
	    cd_now_ms() - a->at_ms < CD_ADDR_FRESH_MS)
		return a;
	return NULL;
}

static void list_add(struct cbind **head, struct cbind *b)
{
	b->next = *head;
	if (b->next)
		b->next->pprev = &b->next;
	b->pprev = head;
	*head = b;
}

static void list_del(struct cbind *b)
{
	if (!b->pprev)
		return;
	*b->pprev = b->next;
	if (b->next)
		b->next->pprev = b->pprev;
	b->pprev = NULL;
	b->next = NULL;
}

static int cd_resolve(const char *hostport, const char *host, uint16_t port,
                      struct sockaddr_storage *ss, socklen_t *len)
{
	struct conf_hostport hp;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;
	const char *why;
	char ps[8];
	int ret;

	if (hostport) {
		if (conf_parse_hostport(hostport, &hp, &why) < 0) {
			log_warnx("%s: %s", hostport, why);
			return -EINVAL;
		}
		host = hp.host;
		port = hp.port;
	}
	snprintf(ps, sizeof(ps), "%u", port);
	ret = getaddrinfo(host, ps, &hints, &ai);
	if (ret != 0) {
		log_warnx("resolve %s: %s", host, gai_strerror(ret));
		return ret == EAI_NONAME || ret == EAI_NODATA ? -ENOENT : -EHOSTUNREACH;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static enum mt_status cd_status_of(int err)
{
	switch (err) {
	case -ECONNREFUSED:
		return MT_STATUS_REFUSED;
	case -ENETUNREACH:
	case -EHOSTUNREACH:
		return MT_STATUS_UNREACHABLE;
	case -ETIMEDOUT:
	case -ECANCELED:
		return MT_STATUS_TIMEOUT;
	case -ENOENT:
		return MT_STATUS_NXDOMAIN;
	default:
		return MT_STATUS_ERROR;
	}
}

static void cd_reply(struct session *s, uint32_t id, enum mt_status status, uint32_t window,
                     const char *reason)
{
	struct mt_msg m = {.hdr = {.type = MT_BIND_REPLY, .id = id}};

	if (!s)
		return;
	m.u.reply.status = (uint8_t)status;
	m.u.reply.window = window;
	if (reason)
		m.u.reply.reason = (struct mt_bytes){(const uint8_t *)reason,
		                                     (uint16_t)strnlen(reason, MT_TEXT_MAX)};
	if (session_send_msg(s, &m) < 0)
		log_warnx("mtunnel %u: BIND_REPLY not sent", id);
}

/* A bind that never opened: answer the failure on the control session, free it. */
static void cbind_fail(struct cbind *b, enum mt_status status, const char *reason)
{
	log_event(LOG_LVL_WARN, "bind.fail", "id=%u to=%s:%u status=%s reason=\"%s\"", b->id,
	          b->host, b->port, wire_status_name(status), reason);
	cd_reply(b->ctl, b->id, status, 0, reason);
	if (b->has_timer)
		ring_timer_cancel(b->cd->ring, b->timer);
	list_del(b);
	if (b->fd >= 0)
		ring_close(b->cd->ring, b->fd, NULL, NULL);
	free(b);
}

static void cbind_end(struct stream *st, void *arg)
{
	struct cbind *b = arg;

	list_del(b);
	free(b);
}

static void cbind_open(struct cbind *b)
{
	struct cdata *d = b->data;

	b->st = stream_new(d->cd->ring, b->fd, b->id, d->cd->window, cbind_end, b);
	if (!b->st) {
		cbind_fail(b, MT_STATUS_ERROR, "out of memory");
		return;
	}
	b->fd = -1; /* the stream's now */
	b->state = CB_OPEN;
	cd_reply(d->s, b->id, MT_STATUS_OK, d->cd->window, NULL);
	log_event(LOG_LVL_INFO, "bind.open", "id=%u to=%s:%u broker=%s", b->id, b->host, b->port,
	          d->broker);
	stream_start(b->st, d->s, b->send_credit);
}

static struct cbind *cdata_find(struct cdata *d, uint32_t id)
{
	for (struct cbind *b = d->binds; b; b = b->next)
		if (b->id == id)
			return b;
	return NULL;
}

/* The data session is gone (or never came): every mtunnel on it ends. */
static void cdata_free(struct cdata *d, const char *reason)
{
	while (d->binds) {
		struct cbind *b = d->binds;

		if (b->state == CB_OPEN)
			stream_close(b->st, MT_STATUS_ERROR, reason, false);
		else
			cbind_fail(b, MT_STATUS_ERROR, reason);
	}
	*d->pprev = d->next;
	if (d->next)
		d->next->pprev = d->pprev;
	free(d);
}

static void data_on_established(struct session *s, const struct ident *peer,
                                const struct mt_hello *hello, void *arg)
{
	struct cdata *d = arg;
	struct cbind *b, *n;

	d->up = true;
	log_event(LOG_LVL_INFO, "connector.data.up", "broker=%s", d->broker);
	for (b = d->binds; b; b = n) {
		n = b->next;
		if (b->state == CB_WAIT_DATA)
			cbind_open(b);
	}
}

static void data_on_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len,
                          void *arg)
{
	struct cbind *b = cdata_find(arg, hdr->id);

	if (!b || b->state != CB_OPEN) {
		if (hdr->type == MT_DATA)
			session_consumed(s, hdr->len);
		return;
	}
	stream_on_frame(b->st, hdr, frame, len);
}

static void data_on_writable(struct session *s, void *arg)
{
	struct cdata *d = arg;
	struct cbind *b, *n;

	for (b = d->binds; b; b = n) {
		n = b->next;
		if (b->state == CB_OPEN)
			stream_on_writable(b->st);
	}
}

static void data_on_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	struct cdata *d = arg;

	log_event(LOG_LVL_WARN, "connector.data.down", "broker=%s status=%s reason=\"%s\"",
	          d->broker, wire_status_name(status), reason);
	cdata_free(d, "data session lost");
}

static const struct session_ops data_ops = {
    .on_established = data_on_established,
    .on_frame = data_on_frame,
    .on_writable = data_on_writable,
    .on_closed = data_on_closed,
};

static void cdata_connected(struct ring *ring, int res, void *arg)
{
	struct cdata *d = arg;
	struct session_opts o = {
	    .bufs = d->cd->bufs,
	    .role = MT_ROLE_CONNECTOR,
	    .kind = MT_SESSION_DATA,
	    .cookie = d->binds ? d->binds->cookie : NULL,
	};

	if (res == 0 && o.cookie)
		d->s = session_new(ring, d->cd->ctx, d->fd, &o, &data_ops, d);
	if (!d->s) {
		log_warnx("data session to %s: %s", d->broker, strerror(res < 0 ? -res : errno));
		ring_close(ring, d->fd, NULL, NULL);
		cdata_free(d, "cannot reach the broker for data");
	}
}

static struct cdata *cdata_get(struct cd *cd, const char *broker)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct cdata *d;

	for (d = cd->datas; d; d = d->next)
		if (strcmp(d->broker, broker) == 0)
			return d;
	if (cd_resolve(broker, NULL, 0, &ss, &len) < 0)
		return NULL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->cd = cd;
	snprintf(d->broker, sizeof(d->broker), "%s", broker);
	d->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (d->fd < 0) {
		free(d);
		return NULL;
	}
	if (ring_connect(cd->ring, d->fd, (struct sockaddr *)&ss, len, cdata_connected, d) < 0) {
		close(d->fd);
		free(d);
		return NULL;
	}
	d->next = cd->datas;
	if (d->next)
		d->next->pprev = &d->next;
	d->pprev = &cd->datas;
	cd->datas = d;
	return d;
}

static void cbind_connected(struct ring *ring, int res, void *arg)
{
	struct cbind *b = arg;
	struct cdata *d;

	if (b->has_timer) {
		ring_timer_cancel(ring, b->timer);
		b->has_timer = false;
	}
	if (res < 0) {
		cbind_fail(b, cd_status_of(res), strerror(-res));
		return;
	}
	d = cdata_get(b->cd, b->broker);
	if (!d) {
		cbind_fail(b, MT_STATUS_ERROR, "cannot dial the broker for data");
		return;
	}
	list_del(b);
	b->data = d;
	b->state = CB_WAIT_DATA;
	/* The first bind's cookie names the data session, so it goes first. */
	if (d->binds && !d->up) {
		b->next = d->binds->next;
		if (b->next)
			b->next->pprev = &b->next;
		d->binds->next = b;
		b->pprev = &d->binds->next;
	} else {
		list_add(&d->binds, b);
	}
	if (d->up)
		cbind_open(b);
}

static void cbind_timeout(struct ring *ring, void *arg)
{
	struct cbind *b = arg;

	b->has_timer = false;
	cbind_fail(b, MT_STATUS_TIMEOUT, "connect timed out");
}

static void cd_on_bind(struct cd *cd, struct session *s, const struct mt_hdr *hdr,
                       const uint8_t *frame, size_t len)
{
	const struct cd_addr *addr;
	struct sockaddr_storage ss;
	socklen_t sl;
	struct cbind *b;
	struct mt_msg m;
	const char *why;
	int ret;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	b = calloc(1, sizeof(*b));
	if (!b) {
		cd_reply(s, hdr->id, MT_STATUS_ERROR, 0, "out of memory");
		return;
	}
	b->cd = cd;
	b->ctl = s;
	b->fd = -1;
	b->id = hdr->id;
	b->send_credit = m.u.bind.window;
	b->port = m.u.bind.port;
	memcpy(b->host, m.u.bind.host.p, m.u.bind.host.len);
	memcpy(b->broker, m.u.bind.broker.p, m.u.bind.broker.len);
	memcpy(b->cookie, m.u.bind.cookie.p, MT_COOKIE_LEN);
	list_add(&cd->connecting, b);
	if (m.u.bind.proto != MT_PROTO_TCP) {
		cbind_fail(b, MT_STATUS_REFUSED, "only TCP is carried");
		return;
	}
	addr = cd_addr_get(cd, b->host, b->port);
	if (addr) {
		memcpy(&ss, &addr->ss, addr->len);
		sl = addr->len;
	} else {
		/* No fresh probe for it (another broker elected us long ago): resolve now. */
		ret = cd_resolve(NULL, b->host, b->port, &ss, &sl);
		if (ret < 0) {
			cbind_fail(b, cd_status_of(ret), "cannot resolve the host");
			return;
		}
	}
	b->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (b->fd < 0) {
		cbind_fail(b, MT_STATUS_ERROR, strerror(errno));
		return;
	}
	ret = ring_connect(cd->ring, b->fd, (struct sockaddr *)&ss, sl, cbind_connected, b);
	if (ret == 0)
		ret = ring_timer_add(cd->ring, cd->connect_ms * 1000000ULL, cbind_timeout, b,
		                     &b->timer);
	if (ret < 0) {
		cbind_fail(b, MT_STATUS_ERROR, strerror(-ret));
		return;
	}
	b->has_timer = true;
}

static void cprobe_del(struct cprobe *cp)
{
	*cp->pprev = cp->next;
	if (cp->next)
		cp->next->pprev = cp->pprev;
	free(cp);
}

static void cd_probe_reply(struct session *s, uint32_t req_id, enum mt_status st,
                           uint32_t latency_us, const char *reason)
{
	struct mt_msg m = {.hdr = {.type = MT_PROBE_REPLY}};

	m.u.probe_reply.req_id = req_id;
	m.u.probe_reply.status = (uint8_t)st;
	m.u.probe_reply.latency_us = latency_us;
	if (reason && *reason)
		m.u.probe_reply.reason = (struct mt_bytes){(const uint8_t *)reason,
		                                           (uint16_t)strnlen(reason, MT_TEXT_MAX)};
	if (session_send_msg(s, &m) < 0)
		log_warnx("PROBE_REPLY %u not sent", req_id);
}

static void cd_probe_done(struct probe *p, const struct probe_result *res, void *arg)
{
	struct cprobe *cp = arg;
	struct cd *cd = cp->cd;

	if (res->status == MT_STATUS_OK && res->addr.ss_family != AF_UNSPEC) {
		struct cd_addr *a = cd_addr_slot(cd, cp->host, cp->port);

		snprintf(a->host, sizeof(a->host), "%s", cp->host);
		a->port = cp->port;
		a->at_ms = cd_now_ms();
		memcpy(&a->ss, &res->addr, sizeof(a->ss));
		a->len = res->addrlen;
	}
	log_event(LOG_LVL_DEBUG, "probe.done",
	          "req=%u host=%s port=%u status=%s latency_us=%u "
	          "reason=\"%s\"",
	          cp->req_id, cp->host, cp->port, wire_status_name(res->status), res->latency_us,
	          res->reason);
	if (cp->ctl)
		cd_probe_reply(cp->ctl, cp->req_id, res->status, res->latency_us, res->reason);
	cprobe_del(cp);
}

static void cd_on_probe(struct cd *cd, struct session *s, const uint8_t *frame, size_t len)
{
	struct cprobe *cp;
	struct mt_msg m;
	const char *why;
	uint32_t deadline;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	cp = calloc(1, sizeof(*cp));
	if (!cp) {
		cd_probe_reply(s, m.u.probe.req_id, MT_STATUS_ERROR, 0, "out of memory");
		return;
	}
	cp->cd = cd;
	cp->ctl = s;
	cp->req_id = m.u.probe.req_id;
	cp->port = m.u.probe.port;
	memcpy(cp->host, m.u.probe.host.p, m.u.probe.host.len);
	deadline = m.u.probe.deadline_ms;
	if (deadline == 0)
		deadline = 1;
	if (deadline > PROBE_MAX_DEADLINE_MS)
		deadline = PROBE_MAX_DEADLINE_MS;
	cp->pr = probe_start(cd->prober, cp->host, cp->port, m.u.probe.proto, deadline,
	                     cd_probe_done, cp);
	if (!cp->pr) {
		cd_probe_reply(s, cp->req_id, MT_STATUS_ERROR, 0, "probe refused");
		free(cp);
		return;
	}
	cp->next = cd->probes;
	if (cp->next)
		cp->next->pprev = &cp->next;
	cp->pprev = &cd->probes;
	cd->probes = cp;
}

/* Probes whose answer would go to session s (NULL: all) end without one. */
static void cd_probes_cancel(struct cd *cd, struct session *s)
{
	struct cprobe *cp, *next;

	for (cp = cd->probes; cp; cp = next) {
		next = cp->next;
		if (s && cp->ctl != s)
			continue;
		probe_cancel(cp->pr);
		cprobe_del(cp);
	}
}

static void ctl_on_established(struct session *s, const struct ident *peer,
                               const struct mt_hello *hello, void *arg)
{
	log_event(LOG_LVL_INFO, "connector.control.up", "broker=%s", peer->id);
}

static void ctl_on_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len,
                         void *arg)
{
	struct cd *cd = arg;

	if (hdr->type == MT_BIND) {
		cd_on_bind(cd, s, hdr, frame, len);
		return;
	}
	if (hdr->type == MT_PROBE) {
		cd_on_probe(cd, s, frame, len);
		return;
	}
	log_debug("control: ignoring %s", wire_type_name(hdr->type));
}

static void ctl_on_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	struct cd *cd = arg;

	log_event(LOG_LVL_WARN, "connector.control.down", "status=%s reason=\"%s\"",
	          wire_status_name(status), reason);
	cd_probes_cancel(cd, s);
	for (struct cbind *b = cd->connecting; b; b = b->next)
		if (b->ctl == s)
			b->ctl = NULL;
	for (struct cdata *d = cd->datas; d; d = d->next)
		for (struct cbind *b = d->binds; b; b = b->next)
			if (b->ctl == s)
				b->ctl = NULL;
}

static const struct session_ops ctl_ops = {
    .on_established = ctl_on_established,
    .on_frame = ctl_on_frame,
    .on_closed = ctl_on_closed,
};

static void cd_drained(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

/* Ends every mtunnel and session and lets the ring flush and free them, before ring_free. */
static void cd_shutdown(struct cd *cd)
{
	while (cd->connecting)
		cbind_fail(cd->connecting, MT_STATUS_SHUTDOWN, "connector stopping");
	while (cd->datas) {
		struct cdata *d = cd->datas;

		if (d->s)
			session_close(d->s, MT_STATUS_SHUTDOWN, "connector stopping");
		else
			ring_close(cd->ring, d->fd, NULL, NULL);
		cdata_free(d, "connector stopping");
	}
	cd_probes_cancel(cd, NULL);
	prober_free(cd->prober);
	cd->prober = NULL;
	for (size_t i = 0; i < cd->nbrokers; i++) {
		session_dial_stop(cd->ctl[i]);
		cd->ctl[i] = NULL;
	}
	if (ring_timer_add(cd->ring, 300 * 1000000ULL, cd_drained, NULL, NULL) == 0)
		ring_run(cd->ring);
}

static void cd_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	log_info("signal %u: stopping", si->ssi_signo);
	ring_stop(ring);
}

static int cd_config(struct cd *cd, struct conf *c, const char *path, const char ***brokers,
                     const char **state, const char **idsrc)
{
	const char *lvl_s = NULL, *win_s = NULL, *conn_s = NULL, *why = NULL;
	enum log_level lvl;
	int64_t cap = -1, tries = PROBE_DEFAULT_DNS_TRIES;
	uint64_t v;
	int ret;

	ret = conf_load_file(c, path);
	if (ret < 0)
		return ret;
	if ((ret = conf_get_str(c, "connector.state", CONF_REQUIRED, state)) < 0 ||
	    (ret = conf_get_str(c, "connector.identity_source", CONF_OPTIONAL, idsrc)) < 0 ||
	    (ret = conf_get_str(c, "connector.group", CONF_REQUIRED, &cd->group)) < 0 ||
	    (ret = conf_get_str(c, "connector.location", CONF_OPTIONAL, &cd->location)) < 0 ||
	    (ret = conf_get_int(c, "connector.capacity", CONF_OPTIONAL, 0, UINT32_MAX, &cap)) < 0 ||
	    (ret = conf_get_str(c, "connector.window", CONF_OPTIONAL, &win_s)) < 0 ||
	    (ret = conf_get_str(c, "connector.connect_timeout", CONF_OPTIONAL, &conn_s)) < 0 ||
	    (ret = conf_get_str(c, "connector.log_level", CONF_OPTIONAL, &lvl_s)) < 0 ||
	    (ret = conf_get_strv(c, "connector.brokers", CONF_REQUIRED, brokers, &cd->nbrokers)) <
	        0 ||
	    (ret = conf_get_strv(c, "connector.dns_servers", CONF_OPTIONAL, &cd->dns_servers,
	                         &cd->ndns)) < 0 ||
	    (ret = conf_get_duration(c, "connector.dns_timeout", CONF_OPTIONAL, 10, 30000,
	                             &cd->dns_timeout_ms)) < 0 ||
	    (ret = conf_get_int(c, "connector.dns_tries", CONF_OPTIONAL, 1, 10, &tries)) < 0)
		return ret;
	cd->dns_tries = (unsigned)tries;
	if (cd->ndns > PROBE_SERVERS_MAX) {
		log_warnx("%s: connector.dns_servers: at most %d", path, PROBE_SERVERS_MAX);
		return -EINVAL;
	}
	if ((ret = conf_check_unknown(c)) < 0)
		return ret;
	if (cd->nbrokers == 0 || cd->nbrokers > CD_BROKERS_MAX) {
		log_warnx("%s: connector.brokers: 1 to %d addresses", path, CD_BROKERS_MAX);
		return -EINVAL;
	}
	if (cap >= 0) {
		cd->has_capacity = true;
		cd->capacity = (uint32_t)cap;
	}
	if (win_s) {
		if (conf_parse_size(win_s, &v, &why) < 0 || v < MT_FRAME_MAX_PAYLOAD ||
		    v > MT_WINDOW_MAX) {
			log_warnx("%s: connector.window '%s': %s", path, win_s,
			          why ? why : "out of range");
			return -EINVAL;
		}
		cd->window = (uint32_t)v;
	}
	if (conn_s) {
		if (conf_parse_duration(conn_s, &v, &why) < 0 || v == 0 || v > 600000) {
			log_warnx("%s: connector.connect_timeout '%s': %s", path, conn_s,
			          why ? why : "1 ms to 10 min");
			return -EINVAL;
		}
		cd->connect_ms = v;
	}
	if (lvl_s) {
		if (log_parse_level(lvl_s, &lvl) < 0) {
			log_warnx("%s: connector.log_level '%s'", path, lvl_s);
			return -EINVAL;
		}
		log_set_level(lvl);
	}
	return 0;
}

int connector_run(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	struct cd cd = {.window = CD_WINDOW_DEFAULT, .connect_ms = CD_CONNECT_DEFAULT};
	const char *path = NULL, *state = NULL, *idsrc = NULL, *why = NULL;
	const char **brokers = NULL;
	STACK_OF(X509) *anchors = NULL;
	struct conf *c = NULL;
	sigset_t sigs;
	int ch, ret = -EINVAL;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch != 'c')
			return -EINVAL;
		path = optarg;
	}
	if (!path || optind != argc) {
		log_warnx("usage: mtun-connector run --config FILE");
		return -EINVAL;
	}
	c = conf_new();
	if (!c)
		return -ENOMEM;
	ret = cd_config(&cd, c, path, &brokers, &state, &idsrc);
	if (ret < 0)
		goto out;
	ret = enroll_load(state, idsrc, &cd.idn);
	if (ret < 0)
		goto out;
	anchors = sk_X509_new_null();
	if (!anchors || !sk_X509_push(anchors, cd.idn.root)) {
		ret = -ENOMEM;
		goto out;
	}
	{
		struct tls_conf tc = {
		    .cert = cd.idn.cert,
		    .chain = cd.idn.chain,
		    .key = cd.idn.key,
		    .anchors = anchors,
		    .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
		    .peer_tenant = cd.idn.ident.tenant,
		};

		cd.ctx = tls_ctx_new(&tc, &why);
	}
	if (!cd.ctx) {
		log_warnx("TLS: %s", why);
		ret = -EINVAL;
		goto out;
	}
	cd.ring = ring_new(256);
	if (!cd.ring || !(cd.bufs = ring_bufgroup_new(cd.ring, 64, MT_FRAME_MAX))) {
		ret = -errno;
		log_warn("ring");
		goto out;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	ret = ring_signals(cd.ring, &sigs, cd_signal, &cd);
	if (ret < 0)
		goto out;
	{
		struct prober_conf pc = {
		    .servers = cd.dns_servers,
		    .nservers = (unsigned)cd.ndns,
		    .dns_timeout_ms = (unsigned)cd.dns_timeout_ms,
		    .dns_tries = cd.dns_tries,
		};

		cd.addrs = calloc(CD_ADDR_SLOTS, sizeof(*cd.addrs));
		cd.prober = cd.addrs ? prober_new(cd.ring, &pc) : NULL;
		if (!cd.prober) {
			ret = -errno;
			log_warn("probes (DNS resolver)");
			goto out;
		}
	}
	for (size_t i = 0; i < cd.nbrokers; i++) {
		struct session_dial_opts o = {
		    .sess = {.bufs = cd.bufs,
		             .role = MT_ROLE_CONNECTOR,
		             .kind = MT_SESSION_CONTROL,
		             .group = cd.group,
		             .location = cd.location,
		             .has_capacity = cd.has_capacity,
		             .capacity = cd.capacity},
		};
		struct sockaddr_storage ss;
		socklen_t sl;

		ret = cd_resolve(brokers[i], NULL, 0, &ss, &sl);
		if (ret < 0)
			goto out;
		cd.ctl[i] =
		    session_dial(cd.ring, cd.ctx, (struct sockaddr *)&ss, sl, &o, &ctl_ops, &cd);
		if (!cd.ctl[i]) {
			ret = -errno;
			log_warn("dial %s", brokers[i]);
			goto out;
		}
	}
	log_event(LOG_LVL_INFO, "connector.ready", "id=%s group=%s brokers=%zu", cd.idn.ident.id,
	          cd.group, cd.nbrokers);
	ret = ring_run(cd.ring);
	cd_shutdown(&cd);
out:
	for (size_t i = 0; i < cd.nbrokers; i++)
		if (cd.ctl[i])
			session_dial_stop(cd.ctl[i]);
	prober_free(cd.prober);
	ring_free(cd.ring);
	free(cd.addrs);
	free(cd.dns_servers);
	tls_ctx_free(cd.ctx);
	sk_X509_free(anchors);
	enroll_identity_free(&cd.idn);
	free(brokers);
	conf_free(c);
	return ret;
}
