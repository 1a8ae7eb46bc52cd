/*
 * stream.c, the socket end of an mtunnel, over a real mTLS session pair: it sends no more
 * than the far side's window, numbers DATA from 0, turns EOF into FIN and FIN into
 * shutdown, refuses DATA beyond the window it granted, and ends on RESET.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pki_fixture.h"
#include "session.h"
#include "stream.h"
#include "t.h"

#define GUARD_MS 5000
#define ID       7

static struct ring *ring;
static struct ring_bufgroup *bufs;
static struct pki_cert root, inter, conn_leaf, broker_leaf;
static STACK_OF(X509) *anchors, *chain;
static struct tls_ctx *conn_cli, *broker_srv;

/* The far side: a broker-like session that records what the stream sends. */
static struct far {
	struct session *s;
	bool established, closed;
	uint8_t data[1 << 16];
	size_t ndata;
	uint32_t next_seq;
	bool seq_bad, fin, reset;
	uint8_t reset_status;
	uint32_t windows; /* WINDOW increments received */
} far;

static struct session *near_s; /* the stream's session */
static struct stream *st;
static bool ended;
static int app_fd = -1; /* the application's end of the stream's socket */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool (*run_cond)(void);
static uint64_t run_deadline;

static void run_poll(struct ring *r, void *arg)
{
	if ((run_cond && run_cond()) || now_ms() >= run_deadline) {
		ring_stop(r);
		return;
	}
	ring_timer_add(r, 2000000, run_poll, NULL, NULL);
}

static bool run_until(bool (*cond)(void), uint64_t ms)
{
	run_cond = cond;
	run_deadline = now_ms() + ms;
	if (ring_timer_add(ring, 0, run_poll, NULL, NULL) < 0)
		return false;
	ring_run(ring);
	run_cond = NULL;
	return cond ? cond() : true;
}

static void far_established(struct session *s, const struct ident *peer,
                            const struct mt_hello *hello, void *arg)
{
	far.s = s;
	far.established = true;
}

static void far_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len, void *arg)
{
	struct mt_msg m;
	const char *why;

	switch (hdr->type) {
	case MT_DATA:
		if (hdr->seq != far.next_seq++)
			far.seq_bad = true;
		if (far.ndata + hdr->len <= sizeof(far.data))
			memcpy(far.data + far.ndata, frame + MT_FRAME_HDR, hdr->len);
		far.ndata += hdr->len;
		session_consumed(s, hdr->len);
		break;
	case MT_FIN:
		far.fin = true;
		break;
	case MT_RESET:
		far.reset = true;
		if (wire_decode(frame, len, &m, &why) == 0)
			far.reset_status = m.u.reset.status;
		break;
	case MT_WINDOW:
		if (wire_decode(frame, len, &m, &why) == 0)
			far.windows += m.u.window.increment;
		break;
	default:
		break;
	}
}

static void far_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	far.closed = true;
	far.s = NULL;
}

static const struct session_ops far_ops = {
    .on_established = far_established,
    .on_frame = far_frame,
    .on_closed = far_closed,
};

static void near_established(struct session *s, const struct ident *peer,
                             const struct mt_hello *hello, void *arg)
{
	near_s = s;
}

static void near_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len, void *arg)
{
	if (st && hdr->id == ID)
		stream_on_frame(st, hdr, frame, len);
	else if (hdr->type == MT_DATA)
		session_consumed(s, hdr->len);
}

static void near_writable(struct session *s, void *arg)
{
	if (st)
		stream_on_writable(st);
}

static void near_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	near_s = NULL;
}

static const struct session_ops near_ops = {
    .on_established = near_established,
    .on_frame = near_frame,
    .on_writable = near_writable,
    .on_closed = near_closed,
};

static void on_end(struct stream *s, void *arg)
{
	ended = true;
	st = NULL;
}

static bool both_up(void)
{
	return far.established && near_s;
}

static bool app_tcp; /* the app's end over TCP on loopback instead of a socketpair */

static int tcp_pair(int fds[2])
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ret = -1;

	fds[0] = fds[1] = -1;
	if (l >= 0 && bind(l, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(l, 1) == 0 &&
	    getsockname(l, (struct sockaddr *)&a, &alen) == 0 &&
	    (fds[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0 &&
	    connect(fds[1], (struct sockaddr *)&a, alen) == 0 &&
	    (fds[0] = accept4(l, NULL, NULL, SOCK_CLOEXEC)) >= 0)
		ret = 0;
	if (l >= 0)
		close(l);
	return ret;
}

/* A session pair and a stream with window recv_window on a socketpair to app_fd. */
static int setup_case(uint32_t recv_window, bool small_sndbuf)
{
	int one = 1;
	struct session_opts co = {.bufs = bufs, .role = MT_ROLE_CONNECTOR, .kind = MT_SESSION_DATA};
	struct session_opts bo = {.bufs = bufs, .role = MT_ROLE_BROKER, .kind = MT_SESSION_DATA};
	int fds[2], app[2];

	memset(&far, 0, sizeof(far));
	near_s = NULL;
	ended = false;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0 ||
	    (app_tcp ? tcp_pair(app) : socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, app)) < 0)
		return -1;
	/* A small send buffer keeps a written DATA payload in flight while the app does not read.
	 */
	if (small_sndbuf && setsockopt(app[0], SOL_SOCKET, SO_SNDBUF, &one, sizeof(one)) < 0)
		return -1;
	if (!session_new(ring, conn_cli, fds[0], &co, &near_ops, NULL) ||
	    !session_new(ring, broker_srv, fds[1], &bo, &far_ops, NULL))
		return -1;
	if (!run_until(both_up, GUARD_MS))
		return -1;
	st = stream_new(ring, app[0], ID, recv_window, on_end, NULL);
	app_fd = app[1];
	return st ? 0 : -1;
}

static void teardown_case(void)
{
	if (st)
		stream_close(st, MT_STATUS_SHUTDOWN, "test over", false);
	if (near_s)
		session_close(near_s, MT_STATUS_SHUTDOWN, NULL);
	if (far.s)
		session_close(far.s, MT_STATUS_SHUTDOWN, NULL);
	run_until(NULL, 30);
	if (app_fd >= 0)
		close(app_fd);
	app_fd = -1;
}

static size_t want_data;
static bool got_data(void)
{
	return far.ndata >= want_data || far.reset;
}

static bool got_fin(void)
{
	return far.fin || far.reset;
}

static bool got_end(void)
{
	return ended;
}

static void far_send(const struct mt_msg *m)
{
	T_EQ(session_send_msg(far.s, m), 0);
}

static void far_data(uint32_t seq, const void *p, size_t len)
{
	uint8_t frame[MT_FRAME_MAX];

	wire_encode_data_hdr(frame, ID, seq, (uint32_t)len);
	memcpy(frame + MT_FRAME_HDR, p, len);
	T_EQ(session_send_frame(far.s, frame, MT_FRAME_HDR + len), 0);
}

static void test_window_respected(void)
{
	uint8_t buf[5000];
	struct mt_msg w = {.hdr = {.type = MT_WINDOW, .id = ID}};

	T_REQUIRE(setup_case(65536, false) == 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7);
	T_EQ(write(app_fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	stream_start(st, near_s, 1000);
	want_data = 1000;
	T_CHECK(run_until(got_data, GUARD_MS));
	run_until(NULL, 50); /* room for a bug to send more */
	T_EQ(far.ndata, 1000);
	w.u.window.increment = 4000;
	far_send(&w);
	want_data = sizeof(buf);
	T_CHECK(run_until(got_data, GUARD_MS));
	T_EQ(far.ndata, sizeof(buf));
	T_CHECK(memcmp(far.data, buf, sizeof(buf)) == 0);
	T_CHECK(!far.seq_bad);
	T_CHECK(!far.reset);
	teardown_case();
}

static void test_fin_both_ways(void)
{
	struct mt_msg fin = {.hdr = {.type = MT_FIN, .id = ID}};
	char got[16] = "";
	ssize_t n;

	T_REQUIRE(setup_case(65536, false) == 0);
	stream_start(st, near_s, 65536);
	T_EQ(write(app_fd, "ping", 4), 4);
	shutdown(app_fd, SHUT_WR);
	T_CHECK(run_until(got_fin, GUARD_MS));
	T_EQ(far.ndata, 4);
	T_CHECK(far.fin);
	far_data(0, "pong", 4);
	far_send(&fin);
	T_CHECK(run_until(got_end, GUARD_MS));
	n = read(app_fd, got, sizeof(got) - 1);
	T_EQ(n, 4);
	T_STREQ(got, "pong");
	T_EQ(read(app_fd, got, sizeof(got)), 0); /* EOF: the stream shut its write side */
	T_CHECK(far.windows == 0 || far.windows >= 4);
	teardown_case();
}

static void test_data_beyond_window_resets(void)
{
	uint8_t big[MT_FRAME_MAX_PAYLOAD];

	memset(big, 'x', sizeof(big));
	T_REQUIRE(setup_case(MT_FRAME_MAX_PAYLOAD, true) == 0);
	stream_start(st, near_s, 65536);
	far_data(0, big, sizeof(big));
	far_data(1, big, 10); /* the window is spent: the app has read nothing */
	T_CHECK(run_until(got_end, GUARD_MS));
	T_CHECK(run_until(got_fin, GUARD_MS));
	T_CHECK(far.reset);
	T_EQ(far.reset_status, MT_STATUS_PROTOCOL);
	teardown_case();
}

static void test_sequence_gap_resets(void)
{
	T_REQUIRE(setup_case(65536, false) == 0);
	stream_start(st, near_s, 65536);
	far_data(0, "a", 1);
	far_data(2, "b", 1);
	T_CHECK(run_until(got_end, GUARD_MS));
	T_CHECK(run_until(got_fin, GUARD_MS));
	T_CHECK(far.reset);
	T_EQ(far.reset_status, MT_STATUS_PROTOCOL);
	teardown_case();
}

static bool app_eof(void)
{
	struct pollfd p = {.fd = app_fd, .events = POLLIN};

	return poll(&p, 1, 0) == 1;
}

static void test_reset_closes_socket(void)
{
	struct mt_msg r = {.hdr = {.type = MT_RESET, .id = ID}};
	char c;

	T_REQUIRE(setup_case(65536, false) == 0);
	stream_start(st, near_s, 65536);
	r.u.reset.status = MT_STATUS_REFUSED;
	far_send(&r);
	T_CHECK(run_until(got_end, GUARD_MS));
	T_CHECK(run_until(app_eof, GUARD_MS));
	T_EQ(read(app_fd, &c, 1), 0);
	T_CHECK(!far.reset); /* a RESET is not answered */
	teardown_case();
}

/* A RESET reaches a TCP application as a reset, never as the EOF of a complete transfer;
 * a clean close (FIN both ways) as an EOF. */
static void test_reset_is_a_tcp_reset(void)
{
	struct mt_msg r = {.hdr = {.type = MT_RESET, .id = ID}};
	struct mt_msg fin = {.hdr = {.type = MT_FIN, .id = ID}};
	char c;

	app_tcp = true;
	T_REQUIRE(setup_case(65536, false) == 0);
	stream_start(st, near_s, 65536);
	far_data(0, "partial", 7);
	r.u.reset.status = MT_STATUS_ERROR;
	far_send(&r);
	T_CHECK(run_until(got_end, GUARD_MS));
	T_CHECK(run_until(app_eof, GUARD_MS));
	errno = 0;
	while (read(app_fd, &c, 1) == 1)
		;
	T_EQ(errno, ECONNRESET);
	teardown_case();

	T_REQUIRE(setup_case(65536, false) == 0);
	stream_start(st, near_s, 65536);
	far_data(0, "whole", 5);
	far_send(&fin);
	T_CHECK(shutdown(app_fd, SHUT_WR) == 0);
	T_CHECK(run_until(got_end, GUARD_MS));
	T_CHECK(run_until(app_eof, GUARD_MS));
	errno = 0;
	size_t n = 0;
	while (read(app_fd, &c, 1) == 1)
		n++;
	T_EQ(n, 5);
	T_EQ(errno, 0);
	teardown_case();
	app_tcp = false;
}

static bool far_can_send(void)
{
	return far.s && session_send_credit(far.s) > 0;
}

/* DATA of n bytes in full frames from seq 0, letting the ring run whenever the far
 * session holds back (watermark or window). False if it stays stuck. */
static bool far_send_bulk(size_t n)
{
	uint8_t frame[MT_FRAME_MAX];
	uint32_t seq = 0;
	uint64_t deadline = now_ms() + GUARD_MS;

	memset(frame + MT_FRAME_HDR, 'd', MT_FRAME_MAX_PAYLOAD);
	while (n > 0 && now_ms() < deadline) {
		size_t k = n < MT_FRAME_MAX_PAYLOAD ? n : MT_FRAME_MAX_PAYLOAD;
		int ret;

		wire_encode_data_hdr(frame, ID, seq, (uint32_t)k);
		ret = session_send_frame(far.s, frame, MT_FRAME_HDR + k);
		if (ret == -EAGAIN) {
			run_until(far_can_send, 20);
			continue;
		}
		if (ret < 0)
			return false;
		seq++;
		n -= k;
	}
	return n == 0;
}

static uint32_t credit_floor;
static bool far_credit_back(void)
{
	return far.s && session_send_credit(far.s) >= credit_floor;
}

/*
 * Regression (the forwarded path that stopped carrying data): the connection window came
 * back only as the application read, so payload held for a slow application, or dropped
 * when its mtunnel was reset, was never granted back; a few such mtunnels used up the
 * session's window and every mtunnel on it stalled. Now it comes back on receipt.
 */
static void test_connection_window_not_held_by_app(void)
{
	struct mt_msg r = {.hdr = {.type = MT_RESET, .id = ID}};
	const size_t sent = 20 * MT_FRAME_MAX_PAYLOAD; /* 320 KiB, over a quarter of 1 MiB */
	uint32_t full;

	T_REQUIRE(setup_case(1U << 20, true) == 0);
	full = session_send_credit(far.s);
	T_EQ(full, 1U << 20); /* the session default */
	stream_start(st, near_s, 65536);
	T_REQUIRE(far_send_bulk(sent));
	/* The app reads nothing: at most a socket buffer of it has left the stream. */
	credit_floor = full - (full / 4);
	T_CHECK(run_until(far_credit_back, GUARD_MS));
	T_CHECK(session_send_credit(far.s) >= credit_floor);
	/* Reset with the payload still buffered: the session's window stays whole. */
	r.u.reset.status = MT_STATUS_SHUTDOWN;
	far_send(&r);
	T_CHECK(run_until(got_end, GUARD_MS));
	T_CHECK(!far.closed);
	T_CHECK(session_send_credit(far.s) >= credit_floor);
	teardown_case();
}

static size_t app_got;
static bool app_eof_seen, app_bad;

/* The application reads slowly (a little per loop) and checks the byte pattern. */
static void app_read_some(struct ring *r, void *arg)
{
	uint8_t buf[3000];
	ssize_t n = read(app_fd, buf, sizeof(buf));

	if (n > 0) {
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != (uint8_t)((app_got + (size_t)i) % 251))
				app_bad = true;
		app_got += (size_t)n;
	} else if (n == 0) {
		app_eof_seen = true;
	}
	if (!app_eof_seen)
		ring_timer_add(r, 100000, app_read_some, NULL, NULL);
}

static bool app_done(void)
{
	return app_eof_seen;
}

/* Everything the far side sent reaches the application, in order, before the EOF that its
 * FIN becomes, through a socket that takes a little at a time (short sends, wrap-around). */
static void test_all_data_before_eof(void)
{
	struct mt_msg fin = {.hdr = {.type = MT_FIN, .id = ID}};
	const size_t total = 3 * 65536 + 12345;
	uint8_t frame[MT_FRAME_MAX];
	size_t off = 0;
	uint32_t seq = 0, credit = 65536;
	uint64_t deadline = now_ms() + GUARD_MS;

	T_REQUIRE(setup_case(65536, true) == 0);
	T_REQUIRE(fcntl(app_fd, F_SETFL, O_NONBLOCK) == 0);
	stream_start(st, near_s, 65536);
	app_got = 0;
	app_eof_seen = app_bad = false;
	ring_timer_add(ring, 100000, app_read_some, NULL, NULL);
	while (off < total && now_ms() < deadline) {
		/* Odd sizes, within the window the stream grants back. */
		size_t k = total - off < 7777 ? total - off : 7777;

		credit += far.windows;
		far.windows = 0;
		if (k > credit) {
			run_until(NULL, 2);
			continue;
		}
		wire_encode_data_hdr(frame, ID, seq, (uint32_t)k);
		for (size_t i = 0; i < k; i++)
			frame[MT_FRAME_HDR + i] = (uint8_t)((off + i) % 251);
		if (session_send_frame(far.s, frame, MT_FRAME_HDR + k) != 0) {
			run_until(NULL, 2);
			continue;
		}
		credit -= (uint32_t)k;
		seq++;
		off += k;
	}
	T_EQ(off, total);
	far_send(&fin);
	T_CHECK(run_until(app_done, GUARD_MS));
	T_EQ(app_got, total);
	T_CHECK(!app_bad);
	teardown_case();
}

static int setup(void)
{
	const char *cu[] = {"mtun://acme/connector/conn-1"}, *bu[] = {"mtun://acme/broker/edge-1"};
	const char *why = NULL;

	if (pki_root_new("acme root", &root) || pki_ca_new(&root, "acme tenant", &inter) ||
	    pki_leaf_new(&inter, cu, 1, -60, 86400, &conn_leaf) ||
	    pki_leaf_new(&inter, bu, 1, -60, 86400, &broker_leaf))
		return -1;
	anchors = sk_X509_new_null();
	chain = sk_X509_new_null();
	if (!anchors || !chain || !sk_X509_push(anchors, root.cert) ||
	    !sk_X509_push(chain, inter.cert))
		return -1;
	{
		struct tls_conf c = {.cert = conn_leaf.cert,
		                     .chain = chain,
		                     .key = conn_leaf.key,
		                     .anchors = anchors,
		                     .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
		                     .peer_tenant = "acme"};
		struct tls_conf b = {.server = true,
		                     .cert = broker_leaf.cert,
		                     .chain = chain,
		                     .key = broker_leaf.key,
		                     .anchors = anchors,
		                     .peer_roles = MT_ROLE_BIT(MT_ROLE_CONNECTOR),
		                     .peer_tenant = "acme"};

		conn_cli = tls_ctx_new(&c, &why);
		broker_srv = tls_ctx_new(&b, &why);
	}
	if (!conn_cli || !broker_srv)
		return -1;
	ring = ring_new(256);
	bufs = ring ? ring_bufgroup_new(ring, 64, MT_FRAME_MAX) : NULL;
	return bufs ? 0 : -1;
}

int main(void)
{
	if (setup() < 0) {
		printf("Bail out! test PKI or ring setup failed\n");
		return 1;
	}
	T_RUN(test_window_respected);
	T_RUN(test_fin_both_ways);
	T_RUN(test_data_beyond_window_resets);
	T_RUN(test_sequence_gap_resets);
	T_RUN(test_reset_closes_socket);
	T_RUN(test_reset_is_a_tcp_reset);
	T_RUN(test_connection_window_not_held_by_app);
	T_RUN(test_all_data_before_eof);
	ring_free(ring);
	tls_ctx_free(conn_cli);
	tls_ctx_free(broker_srv);
	sk_X509_free(anchors);
	sk_X509_free(chain);
	pki_cert_free(&conn_leaf);
	pki_cert_free(&broker_leaf);
	pki_cert_free(&inter);
	pki_cert_free(&root);
	return t_done();
}
