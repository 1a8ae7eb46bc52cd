/*
 * Sessions on the ring: TLS over memory BIOs, frames cut from the plaintext stream,
 * HELLO checks, connection flow control, keepalive, orderly close and redial.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "log.h"
#include "session.h"

#define SESS_RX_CAP     (2 * MT_FRAME_MAX)
#define SESS_WINDOW_DEF (1U << 20)
#define SESS_HIGH_DEF   (96U << 10)
#define SESS_LOW_DEF    (32U << 10)
#define SESS_IDLE_DEF   15000U
#define SESS_DEAD_DEF   45000U
#define SESS_HS_DEF     10000U
#define SESS_LINGER_NS  2000000000ULL
#define SESS_WHY_MAX    256
#define DIAL_BASE_DEF   250U
#define DIAL_MAX_DEF    30000U
#define DIAL_STABLE_DEF 60000U
#define NS_PER_MS       1000000ULL

enum sess_state {
	SESS_HANDSHAKE, /* TLS not established */
	SESS_HELLO,     /* our HELLO sent, waiting for the peer's */
	SESS_OPEN,
	SESS_CLOSING, /* flushing the last output */
	SESS_CLOSED,  /* ring_close started; freed in its callback */
};

struct hello_conf {
	uint8_t role, kind;
	char sw_version[MT_SW_MAX + 1];
	char group[MT_TOKEN_MAX + 1], location[MT_TOKEN_MAX + 1];
	uint32_t caps;
	bool has_capacity, has_cookie, has_device;
	uint32_t capacity;
	uint8_t cookie[MT_COOKIE_LEN];
	uint8_t device_id[IDENT_DEVICE_LEN];
	uint32_t recv_window;
	size_t high, low;
	uint64_t idle_ns, dead_ns, hs_ns;
	struct ring_bufgroup *bufs;
};

struct session {
	struct ring *ring;
	struct tls_conn *tls;
	int fd;
	enum sess_state state;
	const struct session_ops *ops;
	void *arg;
	struct session_dialer *dialer;
	struct hello_conf conf;

	bool sending;     /* one ring send of TLS output in flight */
	bool recv_ended;  /* EOF or error seen */
	bool blocked_out; /* a sender got -EAGAIN from the watermark or a full TLS buffer */
	bool blocked_win; /* a sender got -EAGAIN from the connection window */
	bool write_failed;
	ring_timer_t ka_timer, linger_timer;
	struct ring_defer flush;

	uint64_t send_credit; /* DATA bytes the peer still accepts */
	uint64_t recv_credit; /* DATA bytes we still accept */
	uint64_t unconsumed;  /* received, not yet consumed by the caller */
	uint64_t grant_owed;  /* consumed, not yet granted back */

	uint64_t started, last_rx, last_ping;
	uint64_t ping_token;
	struct session_stats st;

	char why[SESS_WHY_MAX];
	size_t rx_len;
	uint8_t rx[SESS_RX_CAP];
	uint8_t tx[MT_FRAME_MAX];
};

struct session_dialer {
	struct ring *ring;
	struct tls_ctx *ctx;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	struct hello_conf conf;
	const struct session_ops *ops;
	void *arg;
	session_retry_fn *on_retry;
	uint64_t base_ms, max_ms, stable_ns;
	unsigned attempts;
	uint64_t rng;
	int fd; /* connecting, or -1 */
	struct session *s;
	uint64_t est_at;
	ring_timer_t timer;
	bool stopping;
};

static void sess_kick(struct session *s);
static void sess_keepalive(struct ring *ring, void *arg);
static void sess_teardown(struct session *s);
static void dial_lost(struct session_dialer *d, const char *reason);
static void dial_established(struct session_dialer *d);

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int copy_str(char *dst, size_t size, const char *src)
{
	size_t n;

	dst[0] = '\0';
	if (!src)
		return 0;
	n = strlen(src);
	if (n == 0 || n >= size)
		return -EINVAL;
	memcpy(dst, src, n + 1);
	return 0;
}

static int hello_conf_set(struct hello_conf *c, const struct session_opts *o)
{
	memset(c, 0, sizeof(*c));
	if (!o || !o->bufs || o->role <= MT_ROLE_NONE || o->role >= MT_ROLE_MAX ||
	    (o->kind != MT_SESSION_CONTROL && o->kind != MT_SESSION_DATA) ||
	    o->recv_window > MT_WINDOW_MAX)
		return -EINVAL;
	if (copy_str(c->sw_version, sizeof(c->sw_version),
	             o->sw_version ? o->sw_version : "mtun") ||
	    copy_str(c->group, sizeof(c->group), o->group) ||
	    copy_str(c->location, sizeof(c->location), o->location))
		return -EINVAL;
	c->role = (uint8_t)o->role;
	c->kind = (uint8_t)o->kind;
	c->caps = o->caps;
	c->has_capacity = o->has_capacity;
	c->capacity = o->capacity;
	if (o->cookie) {
		c->has_cookie = true;
		memcpy(c->cookie, o->cookie, MT_COOKIE_LEN);
	}
	if (o->device_id) {
		c->has_device = true;
		memcpy(c->device_id, o->device_id, IDENT_DEVICE_LEN);
	}
	c->recv_window = o->recv_window ? o->recv_window : SESS_WINDOW_DEF;
	c->high = o->high_water ? o->high_water : SESS_HIGH_DEF;
	c->low = o->low_water ? o->low_water : SESS_LOW_DEF;
	if (c->low > c->high)
		c->low = c->high;
	c->idle_ns = (o->idle_ms ? o->idle_ms : SESS_IDLE_DEF) * NS_PER_MS;
	c->dead_ns = (o->dead_ms ? o->dead_ms : SESS_DEAD_DEF) * NS_PER_MS;
	c->hs_ns = (o->handshake_ms ? o->handshake_ms : SESS_HS_DEF) * NS_PER_MS;
	c->bufs = o->bufs;
	return 0;
}

/* HMAC-SHA256(key = device id, TLS exporter SESSION_DEVICE_LABEL): bound to this session. */
static int device_proof(const struct tls_conn *tls, const uint8_t id[IDENT_DEVICE_LEN],
                        uint8_t out[SESSION_PROOF_LEN])
{
	uint8_t ekm[32];
	unsigned len = 0;
	int ret = -EINVAL;

	if (tls_conn_export(tls, SESSION_DEVICE_LABEL, NULL, 0, ekm, sizeof(ekm)) < 0)
		goto out;
	if (!HMAC(EVP_sha256(), id, IDENT_DEVICE_LEN, ekm, sizeof(ekm), out, &len) ||
	    len != SESSION_PROOF_LEN)
		goto out;
	ret = 0;
out:
	OPENSSL_cleanse(ekm, sizeof(ekm));
	return ret;
}

static void timer_stop(struct session *s, ring_timer_t *t)
{
	if (*t)
		ring_timer_cancel(s->ring, *t);
	*t = 0;
}

/* ERROR {status, text} when text is given, then close_notify: what a closing end says. */
static void sess_last_words(struct session *s, enum mt_status status, const char *text)
{
	if (s->state < SESS_HELLO || s->write_failed)
		return;
	if (text) {
		struct mt_msg m = {.hdr.type = MT_ERROR};
		size_t n = strnlen(text, MT_TEXT_MAX);
		char msg[MT_TEXT_MAX];
		int len;

		/* The codec takes printable ASCII only; reasons may quote a peer's bytes. */
		for (size_t i = 0; i < n; i++)
			msg[i] = text[i] >= 0x20 && text[i] <= 0x7e ? text[i] : '?';
		m.u.error.code = status;
		m.u.error.message = (struct mt_bytes){(const uint8_t *)msg, (uint16_t)n};
		len = wire_encode(s->tx, sizeof(s->tx), &m);
		/* Past the watermark if need be: only a full TLS buffer keeps it out. */
		if (len > 0 && tls_conn_write(s->tls, s->tx, (size_t)len) == len) {
			s->st.frames_out++;
			s->st.bytes_out += (uint64_t)len;
		}
	}
	tls_conn_shutdown(s->tls);
}

/* Ends the session for a reason of its own: on_closed once, then the teardown. */
static void sess_fail(struct session *s, enum mt_status status, bool send_error, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));
static void sess_fail(struct session *s, enum mt_status status, bool send_error, const char *fmt,
                      ...)
{
	va_list ap;

	if (s->state >= SESS_CLOSING)
		return;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	if (send_error)
		sess_last_words(s, status, s->why);
	else
		sess_last_words(s, status, NULL);
	log_debug("session: closed: %s", s->why);
	s->state = SESS_CLOSING;
	if (s->ops->on_closed)
		s->ops->on_closed(s, s->why, status, s->arg);
	/* After on_closed: it may have stopped the dialer, which then detached itself. */
	if (s->dialer)
		dial_lost(s->dialer, s->why);
	s->dialer = NULL;
	sess_teardown(s);
}

static void sess_freed(struct ring *ring, int res, void *arg)
{
	struct session *s = arg;

	ring_defer_cancel(&s->flush);
	tls_conn_free(s->tls);
	OPENSSL_cleanse(s->rx, sizeof(s->rx));
	free(s);
}

static void sess_finish(struct session *s)
{
	if (s->state == SESS_CLOSED)
		return;
	s->state = SESS_CLOSED;
	ring_defer_cancel(&s->flush);
	timer_stop(s, &s->ka_timer);
	timer_stop(s, &s->linger_timer);
	if (ring_close(s->ring, s->fd, sess_freed, s) < 0) {
		/* No SQE: nothing better than leaking the session over a use after free. */
		log_warnx("session: cannot close fd %d; leaking it", s->fd);
	}
}

static void sess_linger(struct ring *ring, void *arg)
{
	struct session *s = arg;

	s->linger_timer = 0;
	sess_finish(s);
}

/* Flushes what is left (alerts, ERROR, close_notify) for a bounded time, then closes. */
static void sess_teardown(struct session *s)
{
	timer_stop(s, &s->ka_timer);
	if (!s->sending && (s->write_failed || tls_conn_pending(s->tls) == 0)) {
		sess_finish(s);
		return;
	}
	sess_kick(s);
	if (!s->linger_timer &&
	    ring_timer_add(s->ring, SESS_LINGER_NS, sess_linger, s, &s->linger_timer) < 0)
		sess_finish(s);
}

static void sess_writable(struct session *s)
{
	if (s->state != SESS_OPEN || !s->ops->on_writable)
		return;
	if (s->blocked_out && tls_conn_pending(s->tls) > s->conf.low)
		return;
	if (s->blocked_win && s->send_credit == 0)
		return;
	if (!s->blocked_out && !s->blocked_win)
		return;
	s->blocked_out = s->blocked_win = false;
	s->ops->on_writable(s, s->arg);
}

static int sess_write(struct session *s, const uint8_t *buf, size_t len, bool force);

static void sess_grant(struct session *s)
{
	struct mt_msg m = {.hdr.type = MT_WINDOW};
	uint64_t inc = s->grant_owed;
	int len;

	if (s->state != SESS_OPEN && s->state != SESS_HELLO)
		return;
	if (inc == 0)
		return;
	if (inc > MT_WINDOW_MAX)
		inc = MT_WINDOW_MAX;
	m.u.window.increment = (uint32_t)inc;
	len = wire_encode(s->tx, sizeof(s->tx), &m);
	if (len > 0 && sess_write(s, s->tx, (size_t)len, true) == 0) {
		s->grant_owed -= inc;
		s->recv_credit += inc;
	}
}

static void sess_sent(struct ring *ring, int res, void *arg)
{
	struct session *s = arg;

	s->sending = false;
	if (res < 0) {
		s->write_failed = true;
		if (s->state >= SESS_CLOSING)
			sess_finish(s);
		else
			sess_fail(s, MT_STATUS_ERROR, false, "send failed: %s", strerror(-res));
		return;
	}
	tls_conn_consume(s->tls, (size_t)res);
	if (s->state >= SESS_CLOSING) {
		if (tls_conn_pending(s->tls) == 0)
			sess_finish(s);
		else
			sess_kick(s);
		return;
	}
	if (s->grant_owed)
		sess_grant(s);
	if (tls_conn_pending(s->tls) > 0)
		sess_kick(s);
	sess_writable(s);
}

static void sess_send_now(struct session *s)
{
	const void *p;
	size_t n;
	int ret;

	if (s->sending || s->state == SESS_CLOSED || s->write_failed)
		return;
	tls_conn_peek(s->tls, &p, &n);
	if (n == 0)
		return;
	ret = ring_send(s->ring, s->fd, p, n, sess_sent, s);
	if (ret < 0) {
		s->write_failed = true;
		if (s->state >= SESS_CLOSING)
			sess_finish(s);
		else
			sess_fail(s, MT_STATUS_ERROR, false, "send failed: %s", strerror(-ret));
		return;
	}
	s->sending = true;
}

static void sess_flush(struct ring *ring, void *arg)
{
	struct session *s = arg;

	if (s->write_failed && s->state < SESS_CLOSING) {
		sess_fail(s, MT_STATUS_ERROR, false, "%s", tls_conn_why(s->tls));
		return;
	}
	sess_send_now(s);
}

/* Batching: output written during one loop iteration goes out in one send, made when
 * the ring has dispatched the completions at hand. */
static void sess_kick(struct session *s)
{
	size_t pending = tls_conn_pending(s->tls);

	if (s->sending || s->state == SESS_CLOSED)
		return;
	if (pending == 0 && !(s->write_failed && s->state < SESS_CLOSING))
		return;
	ring_defer(s->ring, &s->flush, sess_flush, s);
}

/* One whole frame into TLS, or nothing. force: control frames ignore the watermark. */
static int sess_write(struct session *s, const uint8_t *buf, size_t len, bool force)
{
	ssize_t n;

	if (s->write_failed)
		return -EPIPE;
	if (!force && tls_conn_pending(s->tls) >= s->conf.high) {
		s->blocked_out = true;
		return -EAGAIN;
	}
	n = tls_conn_write(s->tls, buf, len);
	if (n == -EAGAIN) {
		s->blocked_out = true;
		return -EAGAIN;
	}
	if (n < 0 || (size_t)n != len) {
		/* A frame is one record: partial writes do not happen. Report from the loop,
		 * not from inside the caller's send. */
		s->write_failed = true;
		sess_kick(s);
		return -EPIPE;
	}
	s->st.frames_out++;
	s->st.bytes_out += len;
	sess_kick(s);
	return 0;
}

static int sess_send_hello(struct session *s)
{
	struct hello_conf *c = &s->conf;
	uint8_t proof[SESSION_PROOF_LEN];
	struct mt_msg m = {.hdr.type = MT_HELLO};
	struct mt_hello *h = &m.u.hello;
	int len, ret;

	h->role = c->role;
	h->kind = c->kind;
	h->sw_version =
	    (struct mt_bytes){(const uint8_t *)c->sw_version, (uint16_t)strlen(c->sw_version)};
	h->caps = c->caps;
	if (c->group[0])
		h->group = (struct mt_bytes){(const uint8_t *)c->group, (uint16_t)strlen(c->group)};
	if (c->location[0])
		h->location =
		    (struct mt_bytes){(const uint8_t *)c->location, (uint16_t)strlen(c->location)};
	h->has_capacity = c->has_capacity;
	h->capacity = c->capacity;
	if (c->has_cookie)
		h->cookie = (struct mt_bytes){c->cookie, MT_COOKIE_LEN};
	if (c->has_device) {
		ret = device_proof(s->tls, c->device_id, proof);
		if (ret < 0)
			return ret;
		h->device_proof = (struct mt_bytes){proof, sizeof(proof)};
	}
	len = wire_encode(s->tx, sizeof(s->tx), &m);
	OPENSSL_cleanse(proof, sizeof(proof));
	if (len < 0)
		return len;
	ret = sess_write(s, s->tx, (size_t)len, true);
	if (ret < 0)
		return ret;
	/* The connection window starts at 0 each way: this grant opens it. */
	s->grant_owed = c->recv_window;
	sess_grant(s);
	return s->grant_owed ? -ENOBUFS : 0;
}

static int sess_check_hello(struct session *s, const struct mt_hello *h)
{
	const struct ident *peer = tls_conn_peer(s->tls);
	uint8_t want[SESSION_PROOF_LEN];
	bool ok;

	if (!peer) {
		sess_fail(s, MT_STATUS_DENIED, true, "peer showed no identity");
		return -EPERM;
	}
	if (h->role != peer->role) {
		sess_fail(s, MT_STATUS_DENIED, true,
		          "HELLO role '%s' does not match certificate role '%s'",
		          ident_role_name(h->role), ident_role_name(peer->role));
		return -EPERM;
	}
	if (peer->role != MT_ROLE_AGENT)
		return 0;
	if (!h->device_proof.p) {
		sess_fail(s, MT_STATUS_DENIED, true, "agent HELLO without a device proof");
		return -EPERM;
	}
	if (!peer->has_device || device_proof(s->tls, peer->device, want) < 0) {
		sess_fail(s, MT_STATUS_ERROR, true, "cannot compute the device proof");
		return -EPERM;
	}
	ok = h->device_proof.len == SESSION_PROOF_LEN &&
	     CRYPTO_memcmp(h->device_proof.p, want, SESSION_PROOF_LEN) == 0;
	OPENSSL_cleanse(want, sizeof(want));
	if (!ok) {
		sess_fail(s, MT_STATUS_DENIED, true,
		          "device proof does not match the certificate's device fingerprint");
		return -EPERM;
	}
	return 0;
}

static void sess_peer_error(struct session *s, const struct mt_error *e)
{
	char msg[MT_TEXT_MAX + 1];
	enum mt_status st = e->code < MT_STATUS_MAX ? (enum mt_status)e->code : MT_STATUS_ERROR;

	memcpy(msg, e->message.p, e->message.len);
	msg[e->message.len] = '\0';
	/* The peer closes after ERROR: no ERROR back. */
	sess_fail(s, st, false, "peer error (%s): %s", wire_status_name(st), msg);
}

/* One whole frame at f; returns false when the session is closing. */
static bool sess_frame(struct session *s, uint8_t *f, size_t len)
{
	const char *why = NULL;
	struct mt_msg m;
	uint64_t inc;

	if (wire_decode(f, len, &m, &why) < 0) {
		sess_fail(s, MT_STATUS_PROTOCOL, true, "bad frame: %s", why ? why : "?");
		return false;
	}
	s->st.frames_in++;
	s->st.bytes_in += len;
	if (s->state == SESS_HELLO) {
		if (m.hdr.type == MT_ERROR) {
			/* A peer that refuses us before its HELLO still says why. */
			sess_peer_error(s, &m.u.error);
			return false;
		}
		if (m.hdr.type != MT_HELLO) {
			sess_fail(s, MT_STATUS_PROTOCOL, true, "first frame is %s, not HELLO",
			          wire_type_name(m.hdr.type));
			return false;
		}
		if (sess_check_hello(s, &m.u.hello) < 0)
			return false;
		s->state = SESS_OPEN;
		s->last_rx = now_ns();
		/* From the handshake deadline to the keepalive rhythm. */
		timer_stop(s, &s->ka_timer);
		if (ring_timer_add(s->ring, s->conf.idle_ns, sess_keepalive, s, &s->ka_timer) < 0) {
			s->ka_timer = 0;
			sess_fail(s, MT_STATUS_ERROR, true, "cannot arm the keepalive timer");
			return false;
		}
		if (s->dialer)
			dial_established(s->dialer);
		if (s->ops->on_established)
			s->ops->on_established(s, tls_conn_peer(s->tls), &m.u.hello, s->arg);
		return s->state == SESS_OPEN;
	}
	switch (m.hdr.type) {
	case MT_HELLO:
		sess_fail(s, MT_STATUS_PROTOCOL, true, "HELLO repeated");
		return false;
	case MT_PING: {
		struct mt_msg pong = {.hdr.type = MT_PONG, .u.ping.token = m.u.ping.token};
		int n = wire_encode(s->tx, sizeof(s->tx), &pong);

		/* A peer that sends PINGs but reads nothing fills our output: then none. */
		if (n > 0)
			sess_write(s, s->tx, (size_t)n, true);
		return true;
	}
	case MT_PONG:
		s->st.pongs_in++;
		return true;
	case MT_ERROR:
		sess_peer_error(s, &m.u.error);
		return false;
	case MT_WINDOW:
		if (m.hdr.id != 0)
			break;
		inc = m.u.window.increment;
		if (s->send_credit + inc > MT_WINDOW_MAX) {
			sess_fail(s, MT_STATUS_PROTOCOL, true,
			          "connection window over 2^31-1 (%llu + %llu)",
			          (unsigned long long)s->send_credit, (unsigned long long)inc);
			return false;
		}
		s->send_credit += inc;
		sess_writable(s);
		return s->state == SESS_OPEN;
	case MT_DATA:
		if (m.hdr.len > s->recv_credit) {
			sess_fail(s, MT_STATUS_PROTOCOL, true,
			          "DATA of %u bytes beyond the connection window (%llu left)",
			          m.hdr.len, (unsigned long long)s->recv_credit);
			return false;
		}
		s->recv_credit -= m.hdr.len;
		s->unconsumed += m.hdr.len;
		s->st.data_in += m.hdr.len;
		break;
	default:
		break;
	}
	if (s->ops->on_frame)
		s->ops->on_frame(s, &m.hdr, f, len, s->arg);
	return s->state == SESS_OPEN;
}

/* Cuts whole frames out of the plaintext; keeps a partial one at the front. */
static bool sess_frames(struct session *s)
{
	size_t off = 0;
	bool open = true;

	while (s->rx_len - off >= MT_FRAME_HDR) {
		const char *why = NULL;
		struct mt_hdr h;
		size_t flen;

		if (wire_peek_header(s->rx + off, s->rx_len - off, &h, &why) < 0) {
			sess_fail(s, MT_STATUS_PROTOCOL, true, "bad frame header: %s",
			          why ? why : "?");
			return false;
		}
		flen = wire_frame_len(&h);
		if (s->rx_len - off < flen)
			break;
		open = sess_frame(s, s->rx + off, flen);
		off += flen;
		if (!open)
			return false;
	}
	if (off > 0) {
		memmove(s->rx, s->rx + off, s->rx_len - off);
		s->rx_len -= off;
	}
	return true;
}

static void sess_tls_up(struct session *s)
{
	int ret;

	s->state = SESS_HELLO;
	ret = sess_send_hello(s);
	if (ret < 0)
		sess_fail(s, MT_STATUS_ERROR, false, "cannot send HELLO: %s", strerror(-ret));
}

/* Drives TLS after new ciphertext (or EOF) arrived. */
static void sess_pump(struct session *s)
{
	uint64_t frames = s->st.frames_in;
	ssize_t n;
	int ret;

	if (s->state == SESS_HANDSHAKE) {
		ret = tls_conn_handshake(s->tls);
		if (ret == -EAGAIN) {
			sess_kick(s);
			if (s->recv_ended)
				sess_fail(s, MT_STATUS_ERROR, false,
				          "connection closed during the TLS handshake");
			return;
		}
		if (ret < 0) {
			sess_fail(s, MT_STATUS_DENIED, false, "TLS handshake failed: %s",
			          tls_conn_why(s->tls));
			return;
		}
		sess_tls_up(s);
		if (s->state >= SESS_CLOSING)
			return;
	}
	while (s->state == SESS_HELLO || s->state == SESS_OPEN) {
		n = tls_conn_read(s->tls, s->rx + s->rx_len, sizeof(s->rx) - s->rx_len);
		if (n == -EAGAIN) {
			if (s->recv_ended)
				sess_fail(s, MT_STATUS_ERROR, false,
				          "connection closed without close_notify");
			break;
		}
		if (n == -ECONNRESET) {
			sess_fail(s, MT_STATUS_SHUTDOWN, false, "peer closed the session");
			break;
		}
		if (n < 0) {
			sess_fail(s, MT_STATUS_ERROR, false, "TLS failed: %s",
			          tls_conn_why(s->tls));
			break;
		}
		s->rx_len += (size_t)n;
		if (!sess_frames(s))
			break;
	}
	if (s->st.frames_in != frames)
		s->last_rx = now_ns();
}

static void sess_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct session *s = arg;
	int ret = 0;

	if (res > 0) {
		if (s->state < SESS_CLOSING)
			ret = tls_conn_feed(s->tls, ptr, (size_t)res);
		ring_buf_release(s->conf.bufs, bid);
	} else {
		s->recv_ended = true;
		if (res == 0)
			tls_conn_feed_eof(s->tls);
	}
	if (s->state >= SESS_CLOSING) {
		if (s->recv_ended && !s->sending && s->state == SESS_CLOSING)
			sess_finish(s);
		return;
	}
	if (res < 0) {
		sess_fail(s, MT_STATUS_ERROR, false, "receive failed: %s", strerror(-res));
		return;
	}
	if (ret < 0) {
		sess_fail(s, MT_STATUS_ERROR, false, "peer sent more than the TLS input holds");
		return;
	}
	sess_pump(s);
}

static void sess_fmt_interval(char *buf, size_t size, uint64_t ns)
{
	uint64_t ms = ns / NS_PER_MS;

	if (ms % 1000 == 0)
		snprintf(buf, size, "%llu s", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, size, "%llu.%03llu s", (unsigned long long)(ms / 1000),
		         (unsigned long long)(ms % 1000));
}

static void sess_keepalive(struct ring *ring, void *arg)
{
	struct session *s = arg;
	uint64_t now = now_ns(), next, quiet, ping_at;
	char iv[32];

	s->ka_timer = 0;
	if (s->state >= SESS_CLOSING)
		return;
	if (s->state != SESS_OPEN) {
		if (now - s->started >= s->conf.hs_ns) {
			sess_fmt_interval(iv, sizeof(iv), s->conf.hs_ns);
			sess_fail(s, MT_STATUS_TIMEOUT, true, "handshake not done after %s", iv);
			return;
		}
		next = s->started + s->conf.hs_ns - now;
	} else {
		quiet = now - s->last_rx;
		if (quiet >= s->conf.dead_ns) {
			sess_fmt_interval(iv, sizeof(iv), s->conf.dead_ns);
			sess_fail(s, MT_STATUS_TIMEOUT, true, "peer silent for %s", iv);
			return;
		}
		if (quiet >= s->conf.idle_ns && now - s->last_ping >= s->conf.idle_ns) {
			struct mt_msg m = {.hdr.type = MT_PING, .u.ping.token = ++s->ping_token};
			int n = wire_encode(s->tx, sizeof(s->tx), &m);

			if (n > 0 && sess_write(s, s->tx, (size_t)n, true) == 0)
				s->st.pings_out++;
			s->last_ping = now;
		}
		next = s->last_rx + s->conf.dead_ns;
		ping_at = (s->last_ping > s->last_rx ? s->last_ping : s->last_rx) + s->conf.idle_ns;
		if (ping_at < next)
			next = ping_at;
		next = next > now ? next - now : 0;
	}
	if (next < NS_PER_MS)
		next = NS_PER_MS;
	if (ring_timer_add(s->ring, next, sess_keepalive, s, &s->ka_timer) < 0) {
		s->ka_timer = 0;
		sess_fail(s, MT_STATUS_ERROR, true, "cannot arm the keepalive timer");
	}
}

static struct session *sess_create(struct ring *ring, struct tls_ctx *ctx, int fd,
                                   const struct hello_conf *conf, const struct session_ops *ops,
                                   void *arg)
{
	struct session *s;
	int ret, one = 1;

	if (!ring || !ctx || fd < 0 || !ops) {
		errno = EINVAL;
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	s->tls = tls_conn_new(ctx);
	if (!s->tls) {
		free(s);
		errno = ENOMEM;
		return NULL;
	}
	/* Output is batched per loop iteration already: Nagle would hold back the WINDOW and
	 * the last record of a burst for a delayed ACK. Fails harmlessly on non-TCP sockets. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	s->ring = ring;
	s->fd = fd;
	s->ops = ops;
	s->arg = arg;
	s->conf = *conf;
	s->started = s->last_rx = now_ns();
	ret = ring_recv(ring, fd, conf->bufs, sess_recv, s);
	if (ret == 0)
		ret = ring_timer_add(ring, conf->hs_ns, sess_keepalive, s, &s->ka_timer);
	if (ret < 0) {
		/* Whatever started must end through the ring before s goes; fd stays the
		 * caller's. */
		s->state = SESS_CLOSED;
		timer_stop(s, &s->ka_timer);
		if (ring_cancel_fd(ring, fd, sess_freed, s) < 0)
			log_warnx("session: cannot cancel fd %d; leaking its session", fd);
		errno = -ret;
		return NULL;
	}
	/* A client speaks first: its ClientHello goes out on the next submission. */
	if (tls_conn_handshake(s->tls) == -EAGAIN)
		sess_kick(s);
	return s;
}

struct session *session_new(struct ring *ring, struct tls_ctx *ctx, int fd,
                            const struct session_opts *opts, const struct session_ops *ops,
                            void *arg)
{
	struct hello_conf conf;

	if (hello_conf_set(&conf, opts) < 0) {
		errno = EINVAL;
		return NULL;
	}
	return sess_create(ring, ctx, fd, &conf, ops, arg);
}

static int sess_can_send(const struct session *s)
{
	if (s->state == SESS_HANDSHAKE || s->state == SESS_HELLO)
		return -ENOTCONN;
	if (s->state != SESS_OPEN || s->write_failed)
		return -EPIPE;
	return 0;
}

static int sess_send_checked(struct session *s, const uint8_t *frame, size_t len,
                             const struct mt_hdr *h)
{
	int ret;

	/* These belong to the session: its accounting and keepalive would go wrong. */
	if (h->type == MT_HELLO || h->type == MT_PING || h->type == MT_PONG ||
	    h->type == MT_ERROR || (h->type == MT_WINDOW && h->id == 0))
		return -EINVAL;

	if (h->type == MT_DATA && h->len > s->send_credit) {
		s->blocked_win = true;
		return -EAGAIN;
	}
	/* The watermark holds back DATA only: control frames are small, their senders rarely
	 * have a way to retry, and a FIN, RESET or BIND_REPLY dropped leaves an mtunnel hung. */
	ret = sess_write(s, frame, len, h->type != MT_DATA);
	if (ret == 0 && h->type == MT_DATA) {
		s->send_credit -= h->len;
		s->st.data_out += h->len;
	}
	return ret;
}

int session_send_msg(struct session *s, const struct mt_msg *m)
{
	int ret = sess_can_send(s), len;

	if (ret < 0)
		return ret;
	len = wire_encode(s->tx, sizeof(s->tx), m);
	if (len < 0)
		return -EINVAL;
	return sess_send_checked(s, s->tx, (size_t)len, &m->hdr);
}

int session_send_frame(struct session *s, const uint8_t *frame, size_t len)
{
	const char *why;
	struct mt_hdr h;
	int ret = sess_can_send(s);

	if (ret < 0)
		return ret;
	if (wire_peek_header(frame, len, &h, &why) < 0 || wire_frame_len(&h) != len)
		return -EINVAL;
	return sess_send_checked(s, frame, len, &h);
}

int session_send_window(struct session *s, uint32_t id, uint32_t increment)
{
	struct mt_msg m = {.hdr.type = MT_WINDOW, .hdr.id = id, .u.window.increment = increment};
	int ret = sess_can_send(s), len;

	if (ret < 0)
		return ret;
	if (id == 0)
		return -EINVAL; /* session_consumed grants the connection window */
	len = wire_encode(s->tx, sizeof(s->tx), &m);
	if (len < 0)
		return -EINVAL;
	return sess_write(s, s->tx, (size_t)len, true);
}

void session_consumed(struct session *s, size_t n)
{
	if (!s || s->state != SESS_OPEN)
		return;
	if (n > s->unconsumed) {
		log_warnx("session: %zu bytes consumed but only %llu received", n,
		          (unsigned long long)s->unconsumed);
		n = (size_t)s->unconsumed;
	}
	s->unconsumed -= n;
	s->grant_owed += n;
	/* Grants in quarters of the window: few WINDOW frames, the sender never starves. */
	if (s->grant_owed >= s->conf.recv_window / 4)
		sess_grant(s);
}

uint32_t session_send_credit(const struct session *s)
{
	return (uint32_t)s->send_credit;
}

void session_close(struct session *s, enum mt_status status, const char *reason)
{
	if (!s || s->state >= SESS_CLOSING)
		return;
	sess_last_words(s, status, reason);
	s->state = SESS_CLOSING;
	snprintf(s->why, sizeof(s->why), "closed here: %s", reason ? reason : "shutdown");
	if (s->dialer)
		dial_lost(s->dialer, s->why);
	s->dialer = NULL;
	sess_teardown(s);
}

void session_get_stats(const struct session *s, struct session_stats *st)
{
	*st = s->st;
}

const struct ident *session_peer(const struct session *s)
{
	return tls_conn_peer(s->tls);
}

bool session_is_established(const struct session *s)
{
	return s->state == SESS_OPEN;
}

void *session_arg(const struct session *s)
{
	return s->arg;
}

void session_set_arg(struct session *s, void *arg)
{
	s->arg = arg;
}

/* Dialing. */

static uint64_t dial_rand(struct session_dialer *d)
{
	/* xorshift64*: jitter needs spread, not secrecy. */
	d->rng ^= d->rng >> 12;
	d->rng ^= d->rng << 25;
	d->rng ^= d->rng >> 27;
	return d->rng * 0x2545f4914f6cdd1dULL;
}

static void dial_attempt(struct ring *ring, void *arg);

static void dial_retry(struct session_dialer *d, const char *reason)
{
	unsigned shift;
	uint64_t cap;
	uint32_t delay;

	d->attempts++;
	shift = d->attempts - 1 > 30 ? 30 : d->attempts - 1;
	cap = d->base_ms << shift;
	if (cap > d->max_ms)
		cap = d->max_ms;
	delay = (uint32_t)(dial_rand(d) % (cap + 1));
	if (ring_timer_add(d->ring, (uint64_t)delay * NS_PER_MS, dial_attempt, d, &d->timer) < 0) {
		d->timer = 0;
		log_warnx("session: cannot arm the redial timer; dialing stops");
	}
	/* Last: the callback may stop and free d. */
	if (d->on_retry)
		d->on_retry(d, d->attempts, delay, reason, d->arg);
}

static void dial_connected(struct ring *ring, int res, void *arg)
{
	struct session_dialer *d = arg;
	char why[SESS_WHY_MAX];
	int fd = d->fd;

	d->fd = -1;
	if (d->stopping) {
		/* session_dial_stop could not cancel the connect: it left d to us. */
		ring_close(ring, fd, NULL, NULL);
		free(d);
		return;
	}
	if (res < 0) {
		ring_close(ring, fd, NULL, NULL);
		snprintf(why, sizeof(why), "connect failed: %s", strerror(-res));
		dial_retry(d, why);
		return;
	}
	d->est_at = 0;
	d->s = sess_create(ring, d->ctx, fd, &d->conf, d->ops, d->arg);
	if (!d->s) {
		snprintf(why, sizeof(why), "cannot start a session: %s", strerror(errno));
		ring_close(ring, fd, NULL, NULL);
		dial_retry(d, why);
		return;
	}
	d->s->dialer = d;
}

static void dial_attempt(struct ring *ring, void *arg)
{
	struct session_dialer *d = arg;
	char why[SESS_WHY_MAX];
	int fd, ret;

	d->timer = 0;
	fd = socket(d->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, sizeof(why), "socket: %s", strerror(errno));
		dial_retry(d, why);
		return;
	}
	ret = ring_connect(ring, fd, (const struct sockaddr *)&d->addr, d->addrlen, dial_connected,
	                   d);
	if (ret < 0) {
		close(fd);
		snprintf(why, sizeof(why), "connect: %s", strerror(-ret));
		dial_retry(d, why);
		return;
	}
	d->fd = fd;
}

static void dial_established(struct session_dialer *d)
{
	d->est_at = now_ns();
}

/* The session is going away (once, after its on_closed). */
static void dial_lost(struct session_dialer *d, const char *reason)
{
	d->s = NULL;
	if (d->stopping)
		return;
	if (d->est_at && now_ns() - d->est_at >= d->stable_ns)
		d->attempts = 0;
	d->est_at = 0;
	dial_retry(d, reason);
}

struct session_dialer *session_dial(struct ring *ring, struct tls_ctx *ctx,
                                    const struct sockaddr *addr, socklen_t addrlen,
                                    const struct session_dial_opts *opts,
                                    const struct session_ops *ops, void *arg)
{
	struct session_dialer *d;
	int ret;

	if (!ring || !ctx || !addr || addrlen == 0 || addrlen > sizeof(d->addr) || !opts || !ops) {
		errno = EINVAL;
		return NULL;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		errno = ENOMEM;
		return NULL;
	}
	if (hello_conf_set(&d->conf, &opts->sess) < 0) {
		free(d);
		errno = EINVAL;
		return NULL;
	}
	d->ring = ring;
	d->ctx = ctx;
	memcpy(&d->addr, addr, addrlen);
	d->addrlen = addrlen;
	d->ops = ops;
	d->arg = arg;
	d->on_retry = opts->on_retry;
	d->base_ms = opts->backoff_base_ms ? opts->backoff_base_ms : DIAL_BASE_DEF;
	d->max_ms = opts->backoff_max_ms ? opts->backoff_max_ms : DIAL_MAX_DEF;
	d->stable_ns = (opts->stable_ms ? opts->stable_ms : DIAL_STABLE_DEF) * NS_PER_MS;
	d->fd = -1;
	if (getrandom(&d->rng, sizeof(d->rng), 0) != sizeof(d->rng))
		d->rng = now_ns();
	d->rng |= 1;
	ret = ring_timer_add(ring, 0, dial_attempt, d, &d->timer);
	if (ret < 0) {
		free(d);
		errno = -ret;
		return NULL;
	}
	return d;
}

struct session *session_dialer_session(const struct session_dialer *d)
{
	return d->s;
}

static void dial_freed(struct ring *ring, int res, void *arg)
{
	free(arg);
}

void session_dial_stop(struct session_dialer *d)
{
	if (!d)
		return;
	d->stopping = true;
	if (d->timer)
		ring_timer_cancel(d->ring, d->timer);
	d->timer = 0;
	if (d->s) {
		struct session *s = d->s;

		s->dialer = NULL;
		d->s = NULL;
		session_close(s, MT_STATUS_SHUTDOWN, NULL);
	}
	if (d->fd >= 0) {
		/* The cancel guarantee: dial_connected does not run after ring_close. Without
		 * it, dial_connected sees stopping and frees d. */
		if (ring_close(d->ring, d->fd, dial_freed, d) < 0)
			log_warnx("session: cannot cancel a connect; it ends on its own");
		return;
	}
	free(d);
}
