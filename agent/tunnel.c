/*
 * The agent's broker session, shared by forward mode and the intercepting daemon: one
 * mTLS control session kept up by the dialer, an mtunnel (OPEN + lib/stream) per local
 * connection, the forwarding set from CONFIG, RESOLVE for the DNS stub, and POSTURE
 * answers to the broker's POSTURE_QUERY.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "conf.h"
#include "device.h"
#include "enroll.h"
#include "log.h"
#include "ring.h"
#include "session.h"
#include "stream.h"

struct tconn {
	struct tconn *next, **pprev;
	struct tunnel *t;
	struct stream *st;
	uint32_t id;
	bool open;
	uint16_t port;
	tunnel_end_fn *end;
	void *end_arg;
	char name[MT_NAME_MAX + 1];
};

struct tunnel {
	struct ring *ring;
	struct ring_bufgroup *bufs;
	struct tls_ctx *ctx;
	STACK_OF(X509) *anchors;
	struct enroll_identity idn;
	struct session_dialer *d;
	struct session *s; /* established */
	const struct tunnel_ops *ops;
	void *arg;
	uint32_t window, next_id;
	struct tconn *conns;
	size_t nconns;
	uint64_t mtunnels_total;
	uint64_t data_in, data_out; /* of sessions that ended */
	char broker_id[IDENT_ID_MAX + 1];
	/* CONFIG being received (MORE frames) */
	struct segset *cfg_new;
	uint64_t cfg_new_version, cfg_version;
	uint32_t cfg_nseg;
	/* Posture: asked on this session, last facts sent, the re-check timer. */
	struct posture *posture;
	uint32_t posture_interval_ms;
	bool posture_asked, posture_unsent, posture_timer_on;
	const char *posture_why; /* of the unsent facts */
	ring_timer_t posture_timer;
	struct posture_facts posture_sent, posture_now;
};

static struct tconn *tunnel_find(struct tunnel *t, uint32_t id)
{
	for (struct tconn *c = t->conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void tconn_end(struct stream *st, void *arg)
{
	struct tconn *c = arg;

	*c->pprev = c->next;
	if (c->next)
		c->next->pprev = c->pprev;
	c->t->nconns--;
	if (c->end)
		c->end(c->end_arg);
	free(c);
}

static void tunnel_on_established(struct session *s, const struct ident *peer,
                                  const struct mt_hello *hello, void *arg)
{
	struct tunnel *t = arg;

	t->s = s;
	snprintf(t->broker_id, sizeof(t->broker_id), "%s", peer->id);
	log_event(LOG_LVL_INFO, "agent.session.up", "broker=%s", peer->id);
	if (t->ops->on_up)
		t->ops->on_up(t, t->arg);
}

static void tunnel_on_reply(struct tunnel *t, struct tconn *c, const uint8_t *frame, size_t len)
{
	char reason[MT_TEXT_MAX + 1] = "";
	struct mt_msg m;
	const char *why;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	if (m.u.reply.reason.len)
		memcpy(reason, m.u.reply.reason.p, m.u.reply.reason.len);
	reason[m.u.reply.reason.len] = '\0';
	if (m.u.reply.status != MT_STATUS_OK) {
		log_event(LOG_LVL_WARN, "mtunnel.refused", "id=%u to=%s:%u status=%s reason=\"%s\"",
		          c->id, c->name, c->port, wire_status_name(m.u.reply.status), reason);
		stream_close(c->st, (enum mt_status)m.u.reply.status, reason, false);
		return;
	}
	c->open = true;
	log_event(LOG_LVL_INFO, "mtunnel.open", "id=%u to=%s:%u", c->id, c->name, c->port);
	stream_start(c->st, t->s, m.u.reply.window);
}

/* One segment of a CONFIG into the set being built; a bad or overlapping one is skipped. */
static void tunnel_cfg_segment(struct tunnel *t, const struct mt_segment *ws)
{
	struct seg_ports ports[256];
	char host[SEG_HOST_STR_MAX + 1], title[SEG_TITLE_MAX + 1], err[SEG_ERR_MAX];
	const char *hosts[1] = {host};
	static const uint32_t sgroup = 1;
	struct mt_port_range r;
	struct mt_iter it;
	size_t n = 0;
	char a[INET6_ADDRSTRLEN];

	if (ws->kind == MT_SEG_CIDR) {
		if (!inet_ntop(ws->family == 4 ? AF_INET : AF_INET6, ws->addr, a, sizeof(a)))
			return;
		snprintf(host, sizeof(host), "%s/%u", a, ws->prefix);
	} else {
		memcpy(host, ws->name.p, ws->name.len);
		host[ws->name.len] = '\0';
	}
	wire_segment_ranges(ws, &it);
	while (wire_range_next(&it, &r) && n < sizeof(ports) / sizeof(ports[0]))
		ports[n++] = (struct seg_ports){.proto = r.proto, .lo = r.lo, .hi = r.hi};
	snprintf(title, sizeof(title), "seg-%u", ws->id);
	{
		/* The broker sends one SEGMENT per host, with the segment's id on each. */
		struct segment_spec spec = {
		    .id = ++t->cfg_nseg,
		    .name = title,
		    .tenant = t->idn.ident.tenant,
		    .flags = ws->flags,
		    .hosts = hosts,
		    .nhosts = 1,
		    .ports = ports,
		    .nports = n,
		    .server_groups = &sgroup,
		    .nserver_groups = 1,
		};

		if (segset_add(t->cfg_new, &spec, err, sizeof(err)) < 0)
			log_event(LOG_LVL_WARN, "agent.config.segment_skipped",
			          "id=%u host=%s why=\"%s\"", ws->id, host, err);
	}
}

static void tunnel_on_config(struct tunnel *t, const struct mt_hdr *hdr, const uint8_t *frame,
                             size_t len)
{
	struct mt_segment ws;
	struct mt_iter it;
	struct mt_msg m;
	const char *why;
	struct segset *done;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	if (t->cfg_new && t->cfg_new_version != m.u.config.version) {
		log_warnx("CONFIG version %llu interrupted by version %llu: dropped",
		          (unsigned long long)t->cfg_new_version,
		          (unsigned long long)m.u.config.version);
		segset_free(t->cfg_new);
		t->cfg_new = NULL;
	}
	if (!t->cfg_new) {
		t->cfg_new = segset_new(t->idn.ident.tenant);
		if (!t->cfg_new ||
		    segset_add_server_group(t->cfg_new, 1, (const uint32_t[]){1}, 1) < 0) {
			log_warnx("CONFIG: out of memory");
			segset_free(t->cfg_new);
			t->cfg_new = NULL;
			return;
		}
		t->cfg_new_version = m.u.config.version;
		t->cfg_nseg = 0;
	}
	wire_config_segments(&m.u.config, &it);
	while (wire_segment_next(&it, &ws))
		tunnel_cfg_segment(t, &ws);
	if (hdr->flags & MT_FRAME_F_MORE)
		return;
	done = t->cfg_new;
	t->cfg_new = NULL;
	t->cfg_version = t->cfg_new_version;
	log_event(LOG_LVL_INFO, "agent.config", "version=%llu segments=%zu",
	          (unsigned long long)t->cfg_version, segset_count(done));
	if (t->ops->on_config)
		t->ops->on_config(t, done, t->cfg_version, t->arg);
	else
		segset_free(done);
}

static void tunnel_on_resolve_reply(struct tunnel *t, const uint8_t *frame, size_t len)
{
	char reason[MT_TEXT_MAX + 1];
	struct mt_msg m;
	const char *why;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	if (m.u.resolve_reply.reason.len)
		memcpy(reason, m.u.resolve_reply.reason.p, m.u.resolve_reply.reason.len);
	reason[m.u.resolve_reply.reason.len] = '\0';
	if (t->ops->on_resolved)
		t->ops->on_resolved(t, m.u.resolve_reply.req_id, m.u.resolve_reply.status,
		                    m.u.resolve_reply.ttl, reason, t->arg);
}

/* Sends the facts in t->posture_now; kept for on_writable when the session is full. */
static void tunnel_posture_send(struct tunnel *t, const char *why)
{
	struct posture_msg pm;
	char sum[512];
	int ret;

	posture_facts_msg(&t->posture_now, &pm);
	ret = session_send_msg(t->s, &pm.m);
	if (ret == -EAGAIN) {
		t->posture_unsent = true;
		t->posture_why = why;
		return;
	}
	t->posture_unsent = false;
	if (ret < 0) {
		log_warnx("POSTURE: %s", strerror(-ret));
		return;
	}
	t->posture_sent = t->posture_now;
	posture_facts_summary(&t->posture_now, sum, sizeof(sum));
	log_event(LOG_LVL_INFO, "agent.posture.sent", "version=%llu why=%s %s",
	          (unsigned long long)t->posture_now.version, why, sum);
}

static void tunnel_posture_tick(struct ring *ring, void *arg);

static void tunnel_posture_arm(struct tunnel *t)
{
	if (t->posture_timer_on || !t->posture_interval_ms)
		return;
	if (ring_timer_add(t->ring, (uint64_t)t->posture_interval_ms * 1000000, tunnel_posture_tick,
	                   t, &t->posture_timer) < 0) {
		log_warnx("posture: no timer, facts are sent on queries only");
		return;
	}
	t->posture_timer_on = true;
}

static void tunnel_posture_tick(struct ring *ring, void *arg)
{
	struct tunnel *t = arg;

	t->posture_timer_on = false;
	if (!t->s || !t->posture_asked)
		return;
	if (!t->posture_unsent) {
		posture_collect(t->posture, &t->posture_now);
		if (!posture_facts_equal(&t->posture_now, &t->posture_sent))
			tunnel_posture_send(t, "change");
	}
	tunnel_posture_arm(t);
}

static void tunnel_on_posture_query(struct tunnel *t, const uint8_t *frame, size_t len)
{
	struct mt_msg m;
	const char *why;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	if (posture_set_query(t->posture, &m.u.posture_query) < 0) {
		log_warnx("POSTURE_QUERY version %llu: not taken",
		          (unsigned long long)m.u.posture_query.version);
		return;
	}
	t->posture_asked = true;
	posture_collect(t->posture, &t->posture_now);
	tunnel_posture_send(t, "query");
	tunnel_posture_arm(t);
}

static void tunnel_on_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len,
                            void *arg)
{
	struct tunnel *t = arg;
	struct tconn *c;

	if (hdr->id == 0) {
		if (hdr->type == MT_CONFIG)
			tunnel_on_config(t, hdr, frame, len);
		else if (hdr->type == MT_RESOLVE_REPLY)
			tunnel_on_resolve_reply(t, frame, len);
		else if (hdr->type == MT_POSTURE_QUERY)
			tunnel_on_posture_query(t, frame, len);
		else
			log_debug("%s on id 0: ignored", wire_type_name(hdr->type));
		return;
	}
	c = tunnel_find(t, hdr->id);
	if (!c) {
		/* DATA racing a RESET we sent: give the connection window back. */
		if (hdr->type == MT_DATA)
			session_consumed(s, hdr->len);
		return;
	}
	if (hdr->type == MT_OPEN_REPLY && !c->open) {
		tunnel_on_reply(t, c, frame, len);
		return;
	}
	if (!c->open) {
		if (hdr->type == MT_DATA)
			session_consumed(s, hdr->len);
		stream_close(c->st, MT_STATUS_PROTOCOL, "frame before OPEN_REPLY", true);
		return;
	}
	stream_on_frame(c->st, hdr, frame, len);
}

static void tunnel_on_writable(struct session *s, void *arg)
{
	struct tunnel *t = arg;
	struct tconn *c, *n;

	if (t->posture_unsent)
		tunnel_posture_send(t, t->posture_why);
	for (c = t->conns; c; c = n) {
		n = c->next;
		stream_on_writable(c->st);
	}
}

static void tunnel_on_closed(struct session *s, const char *reason, enum mt_status status,
                             void *arg)
{
	struct tunnel *t = arg;
	struct session_stats ss;

	log_event(LOG_LVL_WARN, "agent.session.down", "status=%s reason=\"%s\"",
	          wire_status_name(status), reason);
	if (t->s) {
		session_get_stats(t->s, &ss);
		t->data_in += ss.data_in;
		t->data_out += ss.data_out;
	}
	t->s = NULL;
	t->broker_id[0] = '\0';
	/* A new session gets its own query; until then nothing is sent. */
	t->posture_asked = false;
	t->posture_unsent = false;
	segset_free(t->cfg_new);
	t->cfg_new = NULL;
	while (t->conns)
		stream_close(t->conns->st, MT_STATUS_ERROR, "broker session lost", false);
	if (t->ops->on_down)
		t->ops->on_down(t, t->arg);
}

static const struct session_ops tunnel_session_ops = {
    .on_established = tunnel_on_established,
    .on_frame = tunnel_on_frame,
    .on_writable = tunnel_on_writable,
    .on_closed = tunnel_on_closed,
};

static int tunnel_resolve_broker(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
	struct conf_hostport hp;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;
	const char *why;
	char port[8];
	int ret;

	if (conf_parse_hostport(spec, &hp, &why) < 0) {
		log_warnx("broker %s: %s", spec, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", hp.port);
	ret = getaddrinfo(hp.host, port, &hints, &ai);
	if (ret != 0) {
		log_warnx("broker %s: %s", spec, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

int tunnel_new(struct ring *ring, const struct tunnel_conf *cfg, const struct tunnel_ops *ops,
               void *arg, struct tunnel **out)
{
	struct sockaddr_storage baddr;
	socklen_t blen = 0;
	struct tunnel *t;
	const char *why = NULL;
	int ret;

	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->ring = ring;
	t->ops = ops;
	t->arg = arg;
	t->window = cfg->window ? cfg->window : TUNNEL_WINDOW_DEFAULT;
	t->next_id = 1;
	t->posture_interval_ms = cfg->posture_interval_ms;
	ret = posture_new(NULL, &t->posture);
	if (ret < 0)
		goto fail;
	ret = tunnel_resolve_broker(cfg->broker, &baddr, &blen);
	if (ret < 0)
		goto fail;
	ret = enroll_load(cfg->state, cfg->identity_source, &t->idn);
	if (ret < 0)
		goto fail;
	if (!t->idn.ident.has_device) {
		log_warnx("%s: the agent certificate carries no device id", cfg->state);
		ret = -EINVAL;
		goto fail;
	}
	t->anchors = sk_X509_new_null();
	if (!t->anchors || !sk_X509_push(t->anchors, t->idn.root)) {
		ret = -ENOMEM;
		goto fail;
	}
	{
		struct tls_conf tc = {
		    .server = false,
		    .cert = t->idn.cert,
		    .chain = t->idn.chain,
		    .key = t->idn.key,
		    .anchors = t->anchors,
		    .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
		    .peer_tenant = t->idn.ident.tenant,
		};

		t->ctx = tls_ctx_new(&tc, &why);
	}
	if (!t->ctx) {
		log_warnx("TLS: %s", why);
		ret = -EINVAL;
		goto fail;
	}
	t->bufs = ring_bufgroup_new(ring, 64, MT_FRAME_MAX);
	if (!t->bufs) {
		ret = -errno;
		log_warn("ring buffers");
		goto fail;
	}
	{
		struct session_dial_opts o = {
		    .sess = {.bufs = t->bufs,
		             .role = MT_ROLE_AGENT,
		             .kind = MT_SESSION_CONTROL,
		             .caps = MT_CAP_POSTURE,
		             .device_id = t->idn.ident.device},
		};

		t->d = session_dial(ring, t->ctx, (struct sockaddr *)&baddr, blen, &o,
		                    &tunnel_session_ops, t);
	}
	if (!t->d) {
		ret = -errno;
		log_warn("dial %s", cfg->broker);
		goto fail;
	}
	*out = t;
	return 0;
fail:
	tunnel_free(t);
	return ret;
}

int tunnel_open(struct tunnel *t, int fd, const char *name, uint16_t port, tunnel_end_fn *end,
                void *end_arg)
{
	struct mt_msg m = {.hdr = {.type = MT_OPEN}};
	size_t nlen = strlen(name);
	struct tconn *c;
	uint32_t id;
	int err;

	if (!t->s || nlen == 0 || nlen > MT_NAME_MAX || port == 0) {
		err = t->s ? -EINVAL : -ENOTCONN;
		goto fail;
	}
	do {
		id = t->next_id++;
	} while (id == 0 || tunnel_find(t, id));
	c = calloc(1, sizeof(*c));
	if (!c) {
		err = -ENOMEM;
		goto fail;
	}
	c->t = t;
	c->id = id;
	c->port = port;
	memcpy(c->name, name, nlen + 1);
	c->st = stream_new(t->ring, fd, id, t->window, tconn_end, c);
	if (!c->st) {
		err = -errno;
		log_warn("mtunnel %u", id);
		free(c);
		goto fail;
	}
	c->next = t->conns;
	if (c->next)
		c->next->pprev = &c->next;
	c->pprev = &t->conns;
	t->conns = c;
	t->nconns++;
	t->mtunnels_total++;
	/* From here the stream owns fd and the end callback runs on every way out. */
	c->end = end;
	c->end_arg = end_arg;
	m.hdr.id = id;
	m.u.open.name = (struct mt_bytes){(const uint8_t *)c->name, (uint16_t)nlen};
	m.u.open.port = port;
	m.u.open.proto = MT_PROTO_TCP;
	m.u.open.window = t->window;
	if (session_send_msg(t->s, &m) < 0)
		stream_close(c->st, MT_STATUS_ERROR, "cannot send OPEN", false);
	return 0;
fail:
	close(fd);
	if (end)
		end(end_arg);
	return err;
}

int tunnel_resolve(struct tunnel *t, uint32_t req_id, const char *name, uint16_t port,
                   uint8_t proto)
{
	struct mt_msg m = {.hdr = {.type = MT_RESOLVE}};
	size_t nlen = strlen(name);

	if (!t->s)
		return -ENOTCONN;
	if (nlen == 0 || nlen > MT_NAME_MAX)
		return -EINVAL;
	m.u.resolve.req_id = req_id;
	m.u.resolve.name = (struct mt_bytes){(const uint8_t *)name, (uint16_t)nlen};
	m.u.resolve.port = port;
	m.u.resolve.proto = proto;
	return session_send_msg(t->s, &m);
}

bool tunnel_is_up(const struct tunnel *t)
{
	return t->s != NULL;
}

void tunnel_get_stats(const struct tunnel *t, struct tunnel_stats *st)
{
	struct session_stats ss = {0};

	memset(st, 0, sizeof(*st));
	snprintf(st->broker, sizeof(st->broker), "%s", t->broker_id);
	snprintf(st->user, sizeof(st->user), "%s", t->idn.ident.user);
	snprintf(st->tenant, sizeof(st->tenant), "%s", t->idn.ident.tenant);
	for (size_t i = 0; i < IDENT_DEVICE_LEN; i++)
		snprintf(st->device + 2 * i, 3, "%02x", t->idn.ident.device[i]);
	st->up = t->s != NULL;
	st->config_version = t->cfg_version;
	st->open_mtunnels = t->nconns;
	st->mtunnels_total = t->mtunnels_total;
	if (t->s)
		session_get_stats(t->s, &ss);
	st->bytes_up = t->data_out + ss.data_out;
	st->bytes_down = t->data_in + ss.data_in;
}

void tunnel_shutdown(struct tunnel *t)
{
	if (!t)
		return;
	while (t->conns)
		stream_close(t->conns->st, MT_STATUS_SHUTDOWN, "agent stopping", true);
	if (t->d) {
		session_dial_stop(t->d);
		t->d = NULL;
	}
	t->s = NULL;
	/* 0 or -ENOENT (it ran): either way it will not run again; the ring may go next. */
	if (t->posture_timer_on)
		ring_timer_cancel(t->ring, t->posture_timer);
	t->posture_timer_on = false;
	t->posture_asked = false;
}

void tunnel_free(struct tunnel *t)
{
	if (!t)
		return;
	if (t->d)
		session_dial_stop(t->d);
	if (t->posture_timer_on)
		ring_timer_cancel(t->ring, t->posture_timer);
	posture_free(t->posture);
	segset_free(t->cfg_new);
	tls_ctx_free(t->ctx);
	sk_X509_free(t->anchors);
	enroll_identity_free(&t->idn);
	free(t);
}
