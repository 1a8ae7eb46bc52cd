/*
 * mtun-agent forward: listens on a local TCP port and carries each accepted connection as
 * one mtunnel (OPEN to the broker) to a fixed host:port; no interception needed.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf.h"
#include "device.h"
#include "enroll.h"
#include "agent.h"
#include "log.h"
#include "session.h"
#include "stream.h"

#define FWD_WINDOW_DEFAULT (256U * 1024)

struct fwd;

struct fconn {
	struct fconn *next, **pprev;
	struct fwd *f;
	struct stream *st;
	uint32_t id;
	bool open;
};

struct fwd {
	struct ring *ring;
	struct ring_bufgroup *bufs;
	struct tls_ctx *ctx;
	struct session_dialer *d;
	struct session *s; /* established */
	struct conf_hostport to;
	uint32_t window, next_id;
	struct fconn *conns;
	int lfd;
};

static struct fconn *fwd_find(struct fwd *f, uint32_t id)
{
	for (struct fconn *c = f->conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void fconn_end(struct stream *st, void *arg)
{
	struct fconn *c = arg;

	*c->pprev = c->next;
	if (c->next)
		c->next->pprev = c->pprev;
	free(c);
}

static void fwd_on_established(struct session *s, const struct ident *peer,
                               const struct mt_hello *hello, void *arg)
{
	struct fwd *f = arg;

	f->s = s;
	log_event(LOG_LVL_INFO, "agent.session.up", "broker=%s", peer->id);
}

static void fwd_on_reply(struct fwd *f, struct fconn *c, const uint8_t *frame, size_t len)
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
		          c->id, f->to.host, f->to.port, wire_status_name(m.u.reply.status),
		          reason);
		stream_close(c->st, (enum mt_status)m.u.reply.status, reason, false);
		return;
	}
	c->open = true;
	log_event(LOG_LVL_INFO, "mtunnel.open", "id=%u to=%s:%u", c->id, f->to.host, f->to.port);
	stream_start(c->st, f->s, m.u.reply.window);
}

static void fwd_on_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len,
                         void *arg)
{
	struct fwd *f = arg;
	struct fconn *c = fwd_find(f, hdr->id);

	if (!c) {
		/* DATA racing a RESET we sent: give the connection window back. */
		if (hdr->type == MT_DATA)
			session_consumed(s, hdr->len);
		return;
	}
	if (hdr->type == MT_OPEN_REPLY && !c->open) {
		fwd_on_reply(f, c, frame, len);
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

static void fwd_on_writable(struct session *s, void *arg)
{
	struct fwd *f = arg;
	struct fconn *c, *n;

	for (c = f->conns; c; c = n) {
		n = c->next;
		stream_on_writable(c->st);
	}
}

static void fwd_on_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	struct fwd *f = arg;

	log_event(LOG_LVL_WARN, "agent.session.down", "status=%s reason=\"%s\"",
	          wire_status_name(status), reason);
	f->s = NULL;
	while (f->conns)
		stream_close(f->conns->st, MT_STATUS_ERROR, "broker session lost", false);
}

static const struct session_ops fwd_ops = {
    .on_established = fwd_on_established,
    .on_frame = fwd_on_frame,
    .on_writable = fwd_on_writable,
    .on_closed = fwd_on_closed,
};

static void fwd_accept_cb(struct ring *ring, int fd, void *arg)
{
	struct fwd *f = arg;
	struct mt_msg m = {.hdr = {.type = MT_OPEN}};
	struct fconn *c;
	uint32_t id;

	if (fd < 0)
		return;
	if (!f->s) {
		log_warnx("connection refused: no session to the broker yet");
		close(fd);
		return;
	}
	do {
		id = f->next_id++;
	} while (id == 0 || fwd_find(f, id));
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->f = f;
	c->id = id;
	c->st = stream_new(ring, fd, id, f->window, fconn_end, c);
	if (!c->st) {
		log_warn("mtunnel %u", id);
		close(fd);
		free(c);
		return;
	}
	c->next = f->conns;
	if (c->next)
		c->next->pprev = &c->next;
	c->pprev = &f->conns;
	f->conns = c;
	m.hdr.id = id;
	m.u.open.name =
	    (struct mt_bytes){(const uint8_t *)f->to.host, (uint16_t)strlen(f->to.host)};
	m.u.open.port = f->to.port;
	m.u.open.proto = MT_PROTO_TCP;
	m.u.open.window = f->window;
	if (session_send_msg(f->s, &m) < 0)
		stream_close(c->st, MT_STATUS_ERROR, "cannot send OPEN", false);
}

static void fwd_drained(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

static void fwd_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	log_info("signal %u: stopping", si->ssi_signo);
	ring_stop(ring);
}

static int fwd_listen(const char *spec)
{
	struct conf_hostport hp;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
	struct addrinfo *ai = NULL;
	const char *why;
	char port[8];
	int fd = -1, one = 1, ret;

	if (conf_parse_hostport(spec, &hp, &why) < 0) {
		log_warnx("--listen %s: %s", spec, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", hp.port);
	ret = getaddrinfo(hp.host, port, &hints, &ai);
	if (ret != 0) {
		log_warnx("--listen %s: %s", spec, gai_strerror(ret));
		return -EINVAL;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
		ret = -errno;
		log_warn("--listen %s", spec);
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return ret;
	}
	freeaddrinfo(ai);
	return fd;
}

static int fwd_resolve(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
	struct conf_hostport hp;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;
	const char *why;
	char port[8];
	int ret;

	if (conf_parse_hostport(spec, &hp, &why) < 0) {
		log_warnx("%s: %s", spec, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", hp.port);
	ret = getaddrinfo(hp.host, port, &hints, &ai);
	if (ret != 0) {
		log_warnx("%s: %s", spec, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

int forward_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"broker", required_argument, NULL, 'b'},
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'I'},
	    {"listen", required_argument, NULL, 'l'},
	    {"to", required_argument, NULL, 't'},
	    {"window", required_argument, NULL, 'w'},
	    {"log-level", required_argument, NULL, 'v'},
	    {NULL, 0, NULL, 0},
	};
	const char *broker = NULL, *state = NULL, *listen_at = NULL, *to = NULL, *why = NULL;
	const char *idsrc = getenv(DEVICE_SOURCE_ENV);
	struct enroll_identity idn = {0};
	struct fwd f = {.lfd = -1, .window = FWD_WINDOW_DEFAULT, .next_id = 1};
	struct sockaddr_storage baddr;
	socklen_t blen = 0;
	STACK_OF(X509) *anchors = NULL;
	enum log_level lvl;
	sigset_t sigs;
	uint64_t win;
	int c, ret = -EINVAL;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'b':
			broker = optarg;
			break;
		case 's':
			state = optarg;
			break;
		case 'I':
			idsrc = optarg;
			break;
		case 'l':
			listen_at = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'w':
			if (conf_parse_size(optarg, &win, &why) < 0 || win < MT_FRAME_MAX_PAYLOAD ||
			    win > MT_WINDOW_MAX) {
				log_warnx("--window %s: %s", optarg, why ? why : "out of range");
				return -EINVAL;
			}
			f.window = (uint32_t)win;
			break;
		case 'v':
			if (log_parse_level(optarg, &lvl) < 0)
				return -EINVAL;
			log_set_level(lvl);
			break;
		default:
			return -EINVAL;
		}
	}
	if (!broker || !state || !listen_at || !to || optind != argc) {
		log_warnx("usage: mtun-agent forward --broker HOST:PORT --state DIR --listen "
		          "ADDR:PORT --to HOST:PORT [--identity-source DIR] [--window SIZE]");
		return -EINVAL;
	}
	if (conf_parse_hostport(to, &f.to, &why) < 0) {
		log_warnx("--to %s: %s", to, why);
		return -EINVAL;
	}
	ret = fwd_resolve(broker, &baddr, &blen);
	if (ret < 0)
		return ret;
	ret = enroll_load(state, idsrc, &idn);
	if (ret < 0)
		return ret;
	if (!idn.ident.has_device) {
		log_warnx("%s: the agent certificate carries no device id", state);
		ret = -EINVAL;
		goto out;
	}
	anchors = sk_X509_new_null();
	if (!anchors || !sk_X509_push(anchors, idn.root)) {
		ret = -ENOMEM;
		goto out;
	}
	{
		struct tls_conf tc = {
		    .server = false,
		    .cert = idn.cert,
		    .chain = idn.chain,
		    .key = idn.key,
		    .anchors = anchors,
		    .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
		    .peer_tenant = idn.ident.tenant,
		};

		f.ctx = tls_ctx_new(&tc, &why);
	}
	if (!f.ctx) {
		log_warnx("TLS: %s", why);
		ret = -EINVAL;
		goto out;
	}
	f.lfd = fwd_listen(listen_at);
	if (f.lfd < 0) {
		ret = f.lfd;
		goto out;
	}
	f.ring = ring_new(256);
	if (!f.ring || !(f.bufs = ring_bufgroup_new(f.ring, 64, MT_FRAME_MAX))) {
		ret = -errno;
		log_warn("ring");
		goto out;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	ret = ring_signals(f.ring, &sigs, fwd_signal, &f);
	if (ret == 0)
		ret = ring_accept(f.ring, f.lfd, fwd_accept_cb, &f);
	if (ret < 0) {
		log_warnx("ring setup: %s", strerror(-ret));
		goto out;
	}
	{
		struct session_dial_opts o = {
		    .sess = {.bufs = f.bufs,
		             .role = MT_ROLE_AGENT,
		             .kind = MT_SESSION_CONTROL,
		             .device_id = idn.ident.device},
		};

		f.d =
		    session_dial(f.ring, f.ctx, (struct sockaddr *)&baddr, blen, &o, &fwd_ops, &f);
	}
	if (!f.d) {
		ret = -errno;
		log_warn("dial %s", broker);
		goto out;
	}
	log_event(LOG_LVL_INFO, "agent.forward.ready", "listen=%s to=%s:%u broker=%s", listen_at,
	          f.to.host, f.to.port, broker);
	ret = ring_run(f.ring);
	while (f.conns)
		stream_close(f.conns->st, MT_STATUS_SHUTDOWN, "agent stopping", true);
	session_dial_stop(f.d);
	/* Lets the closes flush and free (bounded) before ring_free. */
	if (ring_timer_add(f.ring, 300 * 1000000ULL, fwd_drained, NULL, NULL) == 0)
		ring_run(f.ring);
out:
	ring_free(f.ring);
	if (f.lfd >= 0)
		close(f.lfd);
	tls_ctx_free(f.ctx);
	sk_X509_free(anchors);
	enroll_identity_free(&idn);
	return ret;
}
