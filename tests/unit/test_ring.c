/*
 * Unit tests for the io_uring event loop (lib/ring), on socketpairs and loopback only.
 * Every case runs under a guard timer that stops the loop and fails the case.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "ring.h"
#include "t.h"

#define MS 1000000ULL

static int guard_fired;

static void guard_cb(struct ring *ring, void *arg)
{
	guard_fired = 1;
	ring_stop(ring);
}

static struct ring *ring_with_guard(uint64_t ms)
{
	struct ring *ring = ring_new(64);

	guard_fired = 0;
	if (ring && ring_timer_add(ring, ms * MS, guard_cb, NULL, NULL) < 0) {
		ring_free(ring);
		return NULL;
	}
	return ring;
}

static void stop_cb(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;

static void fill_random(unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		rnd_state ^= rnd_state << 13;
		rnd_state ^= rnd_state >> 7;
		rnd_state ^= rnd_state << 17;
		p[i] = (unsigned char)rnd_state;
	}
}

static int tcp_listener(struct sockaddr_in *addr)
{
	socklen_t len = sizeof(*addr);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int tcp_client(const struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd >= 0 && connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	return getsockname(fd, (struct sockaddr *)&a, &len) == 0 ? ntohs(a.sin_port) : 0;
}

static uint16_t peer_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	return getpeername(fd, (struct sockaddr *)&a, &len) == 0 ? ntohs(a.sin_port) : 0;
}

/* ---- ring_stop ---- */

static void test_stop_ends_run(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct ring_stats st;

	T_REQUIRE(ring);
	T_REQUIRE(ring_timer_add(ring, 5 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	ring_get_stats(ring, &st);
	T_CHECK(st.loops >= 1);
	ring_free(ring);
}

/* ---- timers ---- */

static int timer_order[8], timer_n, cancelled_ran;
static ring_timer_t late_timer;

static void timer_rec(struct ring *ring, void *arg)
{
	if (timer_n < 8)
		timer_order[timer_n++] = (int)(intptr_t)arg;
	if ((intptr_t)arg == 1)
		T_EQ(ring_timer_cancel(ring, late_timer), 0);
}

static void timer_never(struct ring *ring, void *arg)
{
	cancelled_ran++;
}

static void test_timers_order_and_cancel(void)
{
	struct ring *ring = ring_with_guard(3000);
	ring_timer_t early, first;

	T_REQUIRE(ring);
	timer_n = cancelled_ran = 0;
	T_REQUIRE(ring_timer_add(ring, 30 * MS, timer_rec, (void *)3, NULL) == 0);
	T_REQUIRE(ring_timer_add(ring, 10 * MS, timer_rec, (void *)1, &first) == 0);
	T_REQUIRE(ring_timer_add(ring, 20 * MS, timer_rec, (void *)2, NULL) == 0);
	T_REQUIRE(ring_timer_add(ring, 15 * MS, timer_never, NULL, &early) == 0);
	/* Cancelled from inside the 10 ms callback, before it is due. */
	T_REQUIRE(ring_timer_add(ring, 25 * MS, timer_never, NULL, &late_timer) == 0);
	T_REQUIRE(ring_timer_add(ring, 50 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_timer_cancel(ring, early), 0);
	T_EQ(ring_timer_cancel(ring, early), -ENOENT);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(timer_n, 3);
	T_EQ(timer_order[0], 1);
	T_EQ(timer_order[1], 2);
	T_EQ(timer_order[2], 3);
	T_EQ(cancelled_ran, 0);
	/* A timer that already fired cannot be cancelled, nor can a stale handle. */
	T_EQ(ring_timer_cancel(ring, first), -ENOENT);
	T_EQ(ring_timer_cancel(ring, 0), -ENOENT);
	ring_free(ring);
}

/* ---- deferred calls ---- */

static struct ring_defer dfa, dfb, dfc, dfd;
static int defer_order[8], defer_n;
static uint64_t defer_loops_seen;

static void defer_rec(struct ring *ring, void *arg)
{
	struct ring_stats st;

	if (defer_n < 8)
		defer_order[defer_n++] = (int)(intptr_t)arg;
	ring_get_stats(ring, &st);
	defer_loops_seen = st.loops;
	if ((intptr_t)arg == 1) {
		ring_defer_cancel(&dfc);                      /* queued behind us: never runs */
		ring_defer(ring, &dfd, defer_rec, (void *)4); /* runs in this same round */
	}
}

static void defer_from_timer(struct ring *ring, void *arg)
{
	defer_n = 0;
	ring_defer(ring, &dfa, defer_rec, (void *)1);
	ring_defer(ring, &dfa, defer_rec, (void *)9); /* already queued: no second call */
	ring_defer(ring, &dfb, defer_rec, (void *)2);
	ring_defer(ring, &dfc, defer_rec, (void *)3);
	ring_timer_add(ring, 10 * MS, stop_cb, NULL, NULL);
}

static void test_defer_once_per_round(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct ring_stats st;

	T_REQUIRE(ring);
	memset(&dfa, 0, sizeof(dfa));
	memset(&dfb, 0, sizeof(dfb));
	memset(&dfc, 0, sizeof(dfc));
	memset(&dfd, 0, sizeof(dfd));
	defer_n = 0;
	/* Queued before the first ring_run: runs before the ring ever waits. */
	ring_defer(ring, &dfb, defer_rec, (void *)7);
	T_REQUIRE(ring_timer_add(ring, 5 * MS, defer_from_timer, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	/* 7 ran first (reset by the timer); then 1, 2, 4 in the timer's round, 3 cancelled. */
	T_EQ(defer_n, 3);
	T_EQ(defer_order[0], 1);
	T_EQ(defer_order[1], 2);
	T_EQ(defer_order[2], 4);
	ring_get_stats(ring, &st);
	T_CHECK(st.loops > defer_loops_seen); /* the stop timer came in a later loop */
	T_CHECK(dfa.pprev == NULL && dfc.pprev == NULL);
	ring_free(ring);
}

/* ---- accept ---- */

#define NCLIENTS 6
static int accepted[NCLIENTS + 4], naccepted, accept_errors;

static void on_accepted(struct ring *ring, int fd, void *arg)
{
	if (fd < 0) {
		accept_errors++;
		return;
	}
	if (naccepted < NCLIENTS + 4)
		accepted[naccepted] = fd;
	else
		close(fd);
	if (++naccepted == NCLIENTS)
		/* Linger a little so that a duplicate would show. */
		ring_timer_add(ring, 20 * MS, stop_cb, NULL, NULL);
}

static void test_accept_multishot(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct sockaddr_in addr;
	int lfd, clients[NCLIENTS], i, j, matched;

	T_REQUIRE(ring);
	lfd = tcp_listener(&addr);
	T_REQUIRE(lfd >= 0);
	naccepted = accept_errors = 0;
	T_REQUIRE(ring_accept(ring, lfd, on_accepted, NULL) == 0);
	for (i = 0; i < NCLIENTS; i++) {
		clients[i] = tcp_client(&addr);
		T_REQUIRE(clients[i] >= 0);
	}
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(naccepted, NCLIENTS);
	T_EQ(accept_errors, 0);
	/* Each client is the peer of exactly one accepted socket. */
	for (i = 0; i < NCLIENTS; i++) {
		matched = 0;
		for (j = 0; j < naccepted && j < NCLIENTS + 4; j++)
			matched += peer_port(accepted[j]) == local_port(clients[i]);
		T_EQ(matched, 1);
	}
	for (i = 0; i < NCLIENTS; i++)
		close(clients[i]);
	for (j = 0; j < naccepted && j < NCLIENTS + 4; j++)
		close(accepted[j]);
	close(lfd);
	ring_free(ring);
}

/* ---- connect ---- */

static int connect_res, connect_calls;

static void on_connected(struct ring *ring, int res, void *arg)
{
	connect_res = res;
	connect_calls++;
	ring_stop(ring);
}

static void test_connect(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct sockaddr_in addr;
	int lfd, fd, sfd;

	T_REQUIRE(ring);
	lfd = tcp_listener(&addr);
	T_REQUIRE(lfd >= 0);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_REQUIRE(fd >= 0);
	connect_calls = 0;
	connect_res = 1;
	T_REQUIRE(ring_connect(ring, fd, (struct sockaddr *)&addr, sizeof(addr), on_connected,
	                       NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(connect_calls, 1);
	T_EQ(connect_res, 0);
	sfd = accept(lfd, NULL, NULL);
	T_CHECK(sfd >= 0);
	T_EQ(peer_port(sfd), local_port(fd));
	close(sfd);
	close(fd);

	/* Nobody listens there any more: refused. */
	close(lfd);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_REQUIRE(fd >= 0);
	connect_calls = 0;
	T_REQUIRE(ring_connect(ring, fd, (struct sockaddr *)&addr, sizeof(addr), on_connected,
	                       NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_EQ(connect_calls, 1);
	T_EQ(connect_res, -ECONNREFUSED);
	close(fd);
	ring_free(ring);
}

/* ---- receive into provided buffers, send ---- */

struct stream {
	struct ring_bufgroup *bg;
	const unsigned char *src;
	size_t len, got;
	int mismatch, eof, err, calls, sent_calls;
	long sent_res;
};

static void stream_maybe_done(struct ring *ring, struct stream *s)
{
	if (s->got == s->len && s->sent_calls > 0)
		ring_stop(ring);
}

static void stream_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct stream *s = arg;

	s->calls++;
	if (res <= 0) {
		if (res == 0)
			s->eof++;
		else
			s->err = res;
		ring_stop(ring);
		return;
	}
	if (s->got + (size_t)res > s->len || memcmp(s->src + s->got, ptr, (size_t)res) != 0)
		s->mismatch++;
	s->got += (size_t)res;
	T_EQ(ring_buf_release(s->bg, bid), 0);
	stream_maybe_done(ring, s);
}

static void stream_sent(struct ring *ring, int res, void *arg)
{
	struct stream *s = arg;

	s->sent_calls++;
	s->sent_res = res;
	stream_maybe_done(ring, s);
}

static void test_recv_integrity_8mib(void)
{
	struct ring *ring = ring_with_guard(10000);
	const size_t len = 8U << 20;
	struct stream s = {0};
	unsigned char *src = malloc(len);
	int sv[2];

	T_REQUIRE(ring && src);
	fill_random(src, len);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	s.bg = ring_bufgroup_new(ring, 16, 16384);
	T_REQUIRE(s.bg);
	T_EQ(ring_buf_size(s.bg), 16384);
	s.src = src;
	s.len = len;
	T_REQUIRE(ring_recv(ring, sv[1], s.bg, stream_recv, &s) == 0);
	T_REQUIRE(ring_send(ring, sv[0], src, len, stream_sent, &s) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(s.got, len);
	T_EQ(s.mismatch, 0);
	T_EQ(s.sent_calls, 1);
	T_EQ(s.sent_res, (long)len);
	T_EQ(s.eof, 0);
	T_EQ(s.err, 0);
	close(sv[0]);
	close(sv[1]);
	ring_free(ring);
	free(src);
}

/* ---- buffer exhaustion ---- */

struct hold {
	struct ring_bufgroup *bg;
	unsigned bids[4];
	unsigned nheld, cycles, double_release;
	size_t got, len;
	const unsigned char *src;
	int mismatch;
	uint64_t loops_at_pause;
};

static void hold_release(struct ring *ring, void *arg)
{
	struct hold *h = arg;
	unsigned i;

	h->cycles++;
	for (i = 0; i < h->nheld; i++)
		T_EQ(ring_buf_release(h->bg, h->bids[i]), 0);
	/* A second release of the same buffer is refused. */
	if (h->cycles == 1 && h->nheld > 0 && ring_buf_release(h->bg, h->bids[0]) == -EINVAL)
		h->double_release++;
	h->nheld = 0;
}

static void hold_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct hold *h = arg;

	if (res <= 0) {
		h->mismatch++;
		ring_stop(ring);
		return;
	}
	if (h->got + (size_t)res > h->len || memcmp(h->src + h->got, ptr, (size_t)res) != 0)
		h->mismatch++;
	h->got += (size_t)res;
	if (h->nheld >= 4) {
		h->mismatch++;
		return;
	}
	h->bids[h->nheld++] = bid;
	if (h->got == h->len) {
		hold_release(ring, h);
		ring_stop(ring);
	} else if (h->nheld == 2) {
		/* Keep both buffers for a while: the receive must pause, not spin. */
		ring_timer_add(ring, 2 * MS, hold_release, h, NULL);
	}
}

static void test_buffer_exhaustion(void)
{
	struct ring *ring = ring_with_guard(5000);
	unsigned char src[4096];
	struct ring_stats st;
	struct hold h = {0};
	int sv[2];

	T_REQUIRE(ring);
	fill_random(src, sizeof(src));
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	T_REQUIRE(write(sv[0], src, sizeof(src)) == (ssize_t)sizeof(src));
	h.bg = ring_bufgroup_new(ring, 2, 64);
	T_REQUIRE(h.bg);
	h.src = src;
	h.len = sizeof(src);
	T_REQUIRE(ring_recv(ring, sv[1], h.bg, hold_recv, &h) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(h.got, sizeof(src));
	T_EQ(h.mismatch, 0);
	ring_get_stats(ring, &st);
	/* 4096 bytes through two 64-byte buffers: about 32 pauses, each ended by a release. */
	T_CHECK(st.enobufs >= 16);
	T_CHECK(h.cycles >= 16);
	T_EQ(h.double_release, 1);
	/* A busy loop would spin thousands of times per 2 ms pause. */
	T_CHECK(st.loops < 8 * (uint64_t)h.cycles + 32);
	if (st.loops >= 8 * (uint64_t)h.cycles + 32)
		printf("# loops=%llu cycles=%u\n", (unsigned long long)st.loops, h.cycles);
	close(sv[0]);
	close(sv[1]);
	ring_free(ring);
}

/* ---- short sends, ordering ---- */

struct slow {
	int fd;
	unsigned char *src, *dst;
	size_t len, got;
	int order[3], norder;
	long res[3];
};

static void slow_read(struct ring *ring, void *arg)
{
	struct slow *sl = arg;
	ssize_t n;

	n = read(sl->fd, sl->dst + sl->got, sl->len - sl->got < 8192 ? sl->len - sl->got : 8192);
	if (n > 0)
		sl->got += (size_t)n;
	if (sl->got == sl->len && sl->norder == 3)
		ring_stop(ring);
	else
		ring_timer_add(ring, MS / 2, slow_read, sl, NULL);
}

static struct slow *slow_cur;

static void slow_sent(struct ring *ring, int res, void *arg)
{
	struct slow *sl = slow_cur;

	if (sl->norder < 3) {
		sl->order[sl->norder] = (int)(intptr_t)arg;
		sl->res[sl->norder] = res;
	}
	sl->norder++;
}

static void test_short_sends_in_order(void)
{
	struct ring *ring = ring_with_guard(10000);
	const size_t a = 512 << 10, b1 = 100 << 10, b2 = 50 << 10, c = 256 << 10;
	struct slow sl = {0};
	struct ring_stats st;
	struct iovec iov[3];
	int sv[2], sndbuf = 4096;

	T_REQUIRE(ring);
	sl.len = a + b1 + b2 + c;
	sl.src = malloc(sl.len);
	sl.dst = malloc(sl.len);
	T_REQUIRE(sl.src && sl.dst);
	fill_random(sl.src, sl.len);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	T_REQUIRE(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
	T_REQUIRE(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
	sl.fd = sv[1];
	slow_cur = &sl;

	iov[0] = (struct iovec){sl.src + a, b1};
	iov[1] = (struct iovec){sl.src + a + b1, 0};
	iov[2] = (struct iovec){sl.src + a + b1, b2};
	T_REQUIRE(ring_send(ring, sv[0], sl.src, a, slow_sent, (void *)1) == 0);
	T_REQUIRE(ring_sendv(ring, sv[0], iov, 3, slow_sent, (void *)2) == 0);
	T_REQUIRE(ring_send(ring, sv[0], sl.src + a + b1 + b2, c, slow_sent, (void *)3) == 0);
	T_REQUIRE(ring_timer_add(ring, MS, slow_read, &sl, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(sl.norder, 3);
	T_EQ(sl.order[0], 1);
	T_EQ(sl.order[1], 2);
	T_EQ(sl.order[2], 3);
	T_EQ(sl.res[0], (long)a);
	T_EQ(sl.res[1], (long)(b1 + b2));
	T_EQ(sl.res[2], (long)c);
	T_EQ(sl.got, sl.len);
	T_CHECK(memcmp(sl.src, sl.dst, sl.len) == 0);
	ring_get_stats(ring, &st);
	T_CHECK(st.short_sends > 0);
	T_EQ(ring_sendv(ring, sv[0], iov, 0, slow_sent, NULL), -EINVAL);
	close(sv[0]);
	close(sv[1]);
	ring_free(ring);
	free(sl.src);
	free(sl.dst);
}

static int send_err_res, send_err_calls;

static void on_send_err(struct ring *ring, int res, void *arg)
{
	send_err_res = res;
	send_err_calls++;
	ring_stop(ring);
}

static void test_send_to_closed_peer(void)
{
	struct ring *ring = ring_with_guard(3000);
	int sv[2];

	T_REQUIRE(ring);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	close(sv[1]);
	send_err_calls = 0;
	/* MSG_NOSIGNAL: an error, not a SIGPIPE that kills the process. */
	T_REQUIRE(ring_send(ring, sv[0], "x", 1, on_send_err, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_EQ(send_err_calls, 1);
	T_EQ(send_err_res, -EPIPE);
	close(sv[0]);
	ring_free(ring);
}

/* ---- EOF and reset ---- */

static void test_eof_after_data(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct stream s = {0};
	int sv[2];

	T_REQUIRE(ring);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	s.bg = ring_bufgroup_new(ring, 4, 4096);
	T_REQUIRE(s.bg);
	s.src = (const unsigned char *)"hello";
	s.len = 5;
	s.sent_calls = -1000; /* do not stop on data: wait for EOF */
	T_REQUIRE(write(sv[0], "hello", 5) == 5);
	close(sv[0]);
	T_REQUIRE(ring_recv(ring, sv[1], s.bg, stream_recv, &s) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(s.got, 5);
	T_EQ(s.mismatch, 0);
	T_EQ(s.eof, 1);
	T_EQ(s.err, 0);
	T_EQ(s.calls, 2);
	close(sv[1]);
	ring_free(ring);
}

static void test_peer_reset(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	struct stream s = {0};
	struct sockaddr_in addr;
	int lfd, cfd, sfd;

	T_REQUIRE(ring);
	lfd = tcp_listener(&addr);
	T_REQUIRE(lfd >= 0);
	cfd = tcp_client(&addr);
	T_REQUIRE(cfd >= 0);
	sfd = accept(lfd, NULL, NULL);
	T_REQUIRE(sfd >= 0);
	s.bg = ring_bufgroup_new(ring, 4, 4096);
	T_REQUIRE(s.bg);
	T_REQUIRE(ring_recv(ring, cfd, s.bg, stream_recv, &s) == 0);
	/* Linger 0: close sends RST. */
	T_REQUIRE(setsockopt(sfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
	close(sfd);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(s.err, -ECONNRESET);
	T_EQ(s.eof, 0);
	T_EQ(s.calls, 1);
	close(cfd);
	close(lfd);
	ring_free(ring);
}

/* ---- signals ---- */

static int sig_got, sig_pid_ok;

static void on_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	sig_got = (int)si->ssi_signo;
	sig_pid_ok = si->ssi_pid == (uint32_t)getpid();
	ring_stop(ring);
}

static void send_sigusr1(struct ring *ring, void *arg)
{
	kill(getpid(), SIGUSR1);
}

static void test_signalfd_sigusr1(void)
{
	struct ring *ring = ring_with_guard(3000);
	sigset_t set;

	T_REQUIRE(ring);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	T_REQUIRE(ring_signals(ring, &set, on_signal, NULL) == 0);
	T_EQ(ring_signals(ring, &set, on_signal, NULL), -EBUSY);
	sig_got = 0;
	T_REQUIRE(ring_timer_add(ring, 5 * MS, send_sigusr1, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(sig_got, SIGUSR1);
	T_CHECK(sig_pid_ok);
	ring_free(ring);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* ---- wake and post across threads ---- */

#define NPOSTS 2000
static pthread_t ring_thread;
static int wake_calls, wake_wrong_thread, post_next, post_disorder, post_wrong_thread;

static void on_wake(struct ring *ring, void *arg)
{
	wake_calls++;
	if (!pthread_equal(pthread_self(), ring_thread))
		wake_wrong_thread++;
	if (arg)
		ring_stop(ring);
}

static void on_post(struct ring *ring, void *arg)
{
	int seq = (int)(intptr_t)arg;

	if (!pthread_equal(pthread_self(), ring_thread))
		post_wrong_thread++;
	if (seq != post_next)
		post_disorder++;
	post_next = seq + 1;
	if (seq == NPOSTS - 1)
		ring_stop(ring);
}

static void *waker(void *arg)
{
	ring_wake(arg);
	return NULL;
}

static void *poster(void *arg)
{
	int i;

	for (i = 0; i < NPOSTS; i++) {
		while (ring_post(arg, on_post, (void *)(intptr_t)i) < 0)
			;
	}
	return NULL;
}

static void test_wake_from_thread(void)
{
	struct ring *ring = ring_with_guard(3000);
	pthread_t th;

	T_REQUIRE(ring);
	ring_thread = pthread_self();
	wake_calls = wake_wrong_thread = 0;
	ring_on_wake(ring, on_wake, (void *)1);
	T_REQUIRE(pthread_create(&th, NULL, waker, ring) == 0);
	T_EQ(ring_run(ring), 0);
	pthread_join(th, NULL);
	T_CHECK(!guard_fired);
	T_EQ(wake_calls, 1);
	T_EQ(wake_wrong_thread, 0);
	ring_free(ring);
}

static void test_post_in_order(void)
{
	struct ring *ring = ring_with_guard(5000);
	pthread_t th;

	T_REQUIRE(ring);
	ring_thread = pthread_self();
	wake_calls = wake_wrong_thread = 0;
	post_next = post_disorder = post_wrong_thread = 0;
	ring_on_wake(ring, on_wake, NULL);
	T_REQUIRE(pthread_create(&th, NULL, poster, ring) == 0);
	T_EQ(ring_run(ring), 0);
	pthread_join(th, NULL);
	T_CHECK(!guard_fired);
	T_EQ(post_next, NPOSTS);
	T_EQ(post_disorder, 0);
	T_EQ(post_wrong_thread, 0);
	T_EQ(wake_wrong_thread, 0);
	T_CHECK(wake_calls >= 1);
	ring_free(ring);
}

/* ---- cancel and close ---- */

struct cancel_case {
	struct ring_bufgroup *bg;
	int recv_calls, recv_after_cancel, send_calls, cancel_calls, cancel_res;
	int cancelled, writer, target;
};

static void cancel_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct cancel_case *c = arg;

	c->recv_calls++;
	if (c->cancelled)
		c->recv_after_cancel++;
	if (res > 0)
		ring_buf_release(c->bg, bid);
}

static void cancel_send(struct ring *ring, int res, void *arg)
{
	struct cancel_case *c = arg;

	c->send_calls++;
}

static void cancel_done(struct ring *ring, int res, void *arg)
{
	struct cancel_case *c = arg;

	c->cancel_calls++;
	c->cancel_res = res;
	/* Data arriving now must reach no callback. */
	if (write(c->writer, "late data", 9) != 9)
		c->cancel_res = -EIO;
	ring_timer_add(ring, 20 * MS, stop_cb, NULL, NULL);
}

static void test_cancel_fd_stops_callbacks(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct cancel_case c = {0};
	static unsigned char big[1 << 20];
	int sv[2], sp[2], sndbuf = 4096;

	T_REQUIRE(ring);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	c.bg = ring_bufgroup_new(ring, 4, 4096);
	T_REQUIRE(c.bg);
	c.writer = sv[0];
	/* On sv[1]: a pending receive; on sp[0]: a send stuck in the kernel, one queued. */
	T_REQUIRE(ring_recv(ring, sv[1], c.bg, cancel_recv, &c) == 0);
	T_REQUIRE(setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
	T_REQUIRE(ring_send(ring, sp[0], big, sizeof(big), cancel_send, &c) == 0);
	T_REQUIRE(ring_send(ring, sp[0], big, 10, cancel_send, &c) == 0);
	T_REQUIRE(ring_cancel_fd(ring, sv[1], cancel_done, &c) == 0);
	T_REQUIRE(ring_cancel_fd(ring, sp[0], NULL, NULL) == 0);
	c.cancelled = 1;
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(c.cancel_calls, 1);
	T_EQ(c.cancel_res, 0);
	T_EQ(c.recv_calls, 0);
	T_EQ(c.send_calls, 0);
	/* The fd is still usable: a new receive gets the data that arrived meanwhile. */
	c.cancelled = 0;
	T_REQUIRE(ring_recv(ring, sv[1], c.bg, cancel_recv, &c) == 0);
	T_REQUIRE(ring_timer_add(ring, 20 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(c.recv_calls >= 1);
	close(sv[0]);
	close(sv[1]);
	close(sp[0]);
	close(sp[1]);
	ring_free(ring);
}

static void cancel_from_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct cancel_case *c = arg;

	c->recv_calls++;
	if (c->cancelled)
		c->recv_after_cancel++;
	if (res > 0)
		ring_buf_release(c->bg, bid);
	if (!c->cancelled) {
		c->cancelled = 1;
		T_EQ(ring_cancel_fd(ring, c->target, cancel_done, c), 0);
	}
}

static void test_cancel_from_callback(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct cancel_case c = {0};
	int sv[2];

	T_REQUIRE(ring);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	c.bg = ring_bufgroup_new(ring, 1, 4);
	T_REQUIRE(c.bg);
	/* 12 bytes through one 4-byte buffer: the first callback cancels. */
	T_REQUIRE(write(sv[0], "0123456789ab", 12) == 12);
	c.writer = sv[0];
	c.target = sv[1];
	T_REQUIRE(ring_recv(ring, sv[1], c.bg, cancel_from_recv, &c) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(c.recv_calls, 1);
	T_EQ(c.recv_after_cancel, 0);
	T_EQ(c.cancel_calls, 1);
	close(sv[0]);
	close(sv[1]);
	ring_free(ring);
}

static int close_res, close_calls;

static void on_closed(struct ring *ring, int res, void *arg)
{
	close_res = res;
	close_calls++;
	ring_stop(ring);
}

static void test_close_cancels_and_closes(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct cancel_case c = {0};
	int sv[2];

	T_REQUIRE(ring);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	c.bg = ring_bufgroup_new(ring, 2, 256);
	T_REQUIRE(c.bg);
	T_REQUIRE(ring_recv(ring, sv[1], c.bg, cancel_recv, &c) == 0);
	close_calls = 0;
	close_res = 1;
	T_REQUIRE(ring_close(ring, sv[1], on_closed, NULL) == 0);
	/* Closing: the fd takes no new operations and no second close. */
	T_EQ(ring_send(ring, sv[1], "x", 1, cancel_send, &c), -EBADF);
	T_EQ(ring_close(ring, sv[1], on_closed, NULL), -EBADF);
	T_REQUIRE(write(sv[0], "data", 4) == 4);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(close_calls, 1);
	T_EQ(close_res, 0);
	T_EQ(c.recv_calls, 0);
	T_EQ(c.send_calls, 0);
	errno = 0;
	T_CHECK(fcntl(sv[1], F_GETFD) == -1 && errno == EBADF);
	close(sv[0]);
	ring_free(ring);
}

/*
 * A close that reuses the slot of a finished send must start from clean state: with
 * the send's buffer pointer left in the slot, the close once reported success without
 * closing the fd. The pointer's low bytes are made non-zero on purpose.
 */
static void on_sent_stop(struct ring *ring, int res, void *arg)
{
	*(int *)arg = res;
	ring_stop(ring);
}

static void test_close_reusing_send_slot(void)
{
	struct ring *ring = ring_with_guard(3000);
	unsigned char *base = aligned_alloc(65536, 131072);
	int sv[2], other[2], sent = 0;

	T_REQUIRE(ring && base);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other) == 0);
	memset(base, 'x', 131072);
	T_REQUIRE(ring_send(ring, sv[0], base + 0x0101, 1, on_sent_stop, &sent) == 0);
	T_EQ(ring_run(ring), 0);
	T_EQ(sent, 1);
	close_calls = 0;
	close_res = 1;
	T_REQUIRE(ring_close(ring, other[1], on_closed, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(close_calls, 1);
	T_EQ(close_res, 0);
	errno = 0;
	T_CHECK(fcntl(other[1], F_GETFD) == -1 && errno == EBADF);
	close(sv[0]);
	close(sv[1]);
	close(other[0]);
	ring_free(ring);
	free(base);
}

/* ---- accept errors: reported, then re-armed after a pause, not at once ---- */

static struct rlimit saved_nofile;
static int emfile_errors, emfile_fd = -1, emfile_other;

static void restore_nofile(struct ring *ring, void *arg)
{
	setrlimit(RLIMIT_NOFILE, &saved_nofile);
}

static void on_accept_emfile(struct ring *ring, int fd, void *arg)
{
	if (fd == -EMFILE) {
		if (emfile_errors++ == 0)
			ring_timer_add(ring, 30 * MS, restore_nofile, NULL, NULL);
	} else if (fd >= 0) {
		emfile_fd = fd;
		ring_stop(ring);
	} else {
		emfile_other = fd;
	}
}

static void test_accept_rearmed_after_emfile(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct sockaddr_in addr;
	struct rlimit low;
	int lfd, cfd, lowest;

	T_REQUIRE(ring);
	lfd = tcp_listener(&addr);
	T_REQUIRE(lfd >= 0);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_REQUIRE(cfd >= 0);
	T_REQUIRE(ring_accept(ring, lfd, on_accept_emfile, NULL) == 0);
	/* No descriptor left for the accepted socket until the timer restores the limit. */
	lowest = dup(0);
	T_REQUIRE(lowest >= 0);
	close(lowest);
	T_REQUIRE(getrlimit(RLIMIT_NOFILE, &saved_nofile) == 0);
	low = saved_nofile;
	low.rlim_cur = (rlim_t)lowest;
	T_REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
	emfile_errors = emfile_other = 0;
	emfile_fd = -1;
	if (connect(cfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		setrlimit(RLIMIT_NOFILE, &saved_nofile);
		T_REQUIRE(0);
	}
	T_EQ(ring_run(ring), 0);
	setrlimit(RLIMIT_NOFILE, &saved_nofile);
	T_CHECK(!guard_fired);
	/* One error, one pause: an immediate re-arm would fail again and again. */
	T_EQ(emfile_errors, 1);
	T_EQ(emfile_other, 0);
	T_CHECK(emfile_fd >= 0);
	if (emfile_fd >= 0) {
		T_EQ(peer_port(emfile_fd), local_port(cfd));
		close(emfile_fd);
	}
	close(cfd);
	close(lfd);
	ring_free(ring);
}

/* ---- set up on one thread, run on another; records are reused ---- */

struct other {
	struct ring *ring;
	pthread_t runner;
	struct ring_bufgroup *bg;
	int wrong_thread, got, ticks;
	char data[16];
};

static void other_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct other *o = arg;

	if (!pthread_equal(pthread_self(), o->runner))
		o->wrong_thread++;
	if (res > 0 && o->got + res <= (int)sizeof(o->data)) {
		memcpy(o->data + o->got, ptr, (size_t)res);
		o->got += res;
	}
	if (res > 0)
		ring_buf_release(o->bg, bid);
}

static void other_tick(struct ring *ring, void *arg)
{
	struct other *o = arg;

	if (!pthread_equal(pthread_self(), o->runner))
		o->wrong_thread++;
	/* Periodic by re-adding: 1000 rounds must reuse the same few records. */
	if (++o->ticks < 1000)
		ring_timer_add(ring, 1000, other_tick, o, NULL);
	else
		ring_stop(ring);
}

static void *other_run(void *arg)
{
	struct other *o = arg;

	o->runner = pthread_self();
	return (void *)(intptr_t)ring_run(o->ring);
}

static void test_run_on_another_thread(void)
{
	struct ring *ring = ring_with_guard(5000);
	struct other o = {0};
	struct ring_stats st;
	void *ret = NULL;
	pthread_t th;
	int sv[2];

	T_REQUIRE(ring);
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	o.bg = ring_bufgroup_new(ring, 4, 256);
	T_REQUIRE(o.bg);
	T_REQUIRE(ring_recv(ring, sv[1], o.bg, other_recv, &o) == 0);
	T_REQUIRE(ring_timer_add(ring, 1000, other_tick, &o, NULL) == 0);
	T_REQUIRE(write(sv[0], "handed over", 11) == 11);
	o.ring = ring;
	T_REQUIRE(pthread_create(&th, NULL, other_run, &o) == 0);
	pthread_join(th, &ret);
	T_EQ((intptr_t)ret, 0);
	T_CHECK(!guard_fired);
	T_EQ(o.ticks, 1000);
	T_EQ(o.got, 11);
	T_CHECK(memcmp(o.data, "handed over", 11) == 0);
	T_EQ(o.wrong_thread, 0);
	ring_get_stats(ring, &st);
	T_CHECK(st.op_slots <= 64);
	close(sv[0]);
	close(sv[1]);
	ring_free(ring);
}

static void never_accept(struct ring *ring, int fd, void *arg)
{
	int *calls = arg;

	(*calls)++;
	if (fd >= 0)
		close(fd);
}

static void test_close_listener_lets_go(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct sockaddr_in addr;
	int lfd, cfd, calls = 0;

	T_REQUIRE(ring);
	lfd = tcp_listener(&addr);
	T_REQUIRE(lfd >= 0);
	T_REQUIRE(ring_accept(ring, lfd, never_accept, &calls) == 0);
	close_calls = 0;
	T_REQUIRE(ring_timer_add(ring, 5 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_REQUIRE(ring_close(ring, lfd, on_closed, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(close_calls, 1);
	T_EQ(close_res, 0);
	T_EQ(calls, 0);
	/* Had the multishot accept outlived the close, the socket would still listen. */
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_REQUIRE(cfd >= 0);
	errno = 0;
	T_CHECK(connect(cfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno == ECONNREFUSED);
	close(cfd);
	ring_free(ring);
}

/* ---- argument checks ---- */

static void test_bad_arguments(void)
{
	struct ring *ring = ring_new(16);
	struct ring_bufgroup *bg;

	T_REQUIRE(ring);
	errno = 0;
	T_CHECK(ring_bufgroup_new(ring, 3, 64) == NULL && errno == EINVAL);
	T_CHECK(ring_bufgroup_new(ring, 0, 64) == NULL);
	T_CHECK(ring_bufgroup_new(ring, 4, 0) == NULL);
	T_CHECK(ring_bufgroup_new(ring, 65536, 64) == NULL);
	bg = ring_bufgroup_new(ring, 4, 64);
	T_REQUIRE(bg);
	T_EQ(ring_buf_release(bg, 0), -EINVAL);
	T_EQ(ring_buf_release(bg, 4), -EINVAL);
	T_EQ(ring_recv(ring, -1, bg, cancel_recv, NULL), -EBADF);
	T_EQ(ring_send(ring, -1, "x", 1, cancel_send, NULL), -EBADF);
	T_EQ(ring_cancel_fd(ring, -1, NULL, NULL), -EBADF);
	{
		struct iovec iov[RING_IOV_MAX + 1] = {{(void *)"x", 1}};

		T_EQ(ring_sendv(ring, 0, iov, RING_IOV_MAX + 1, cancel_send, NULL), -EINVAL);
	}
	ring_free(ring);
	ring_free(NULL);
}

struct poll_case {
	int rfd, wfd;
	int calls, last, writes, stop_at;
	int cancel_calls;
};

static void poll_once_cb(struct ring *ring, int res, void *arg)
{
	struct poll_case *pc = arg;

	pc->calls++;
	pc->last = res;
	ring_stop(ring);
}

static void test_poll_pipe_readiness(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct poll_case pc = {0};
	int p[2];

	T_REQUIRE(ring);
	T_REQUIRE(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
	T_REQUIRE(ring_poll_add(ring, p[0], POLLIN, false, poll_once_cb, &pc) == 0);
	/* Nothing to read yet: the poll waits until the write a timer does. */
	T_REQUIRE(ring_timer_add(ring, 20 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_EQ(pc.calls, 0);
	T_REQUIRE(write(p[1], "x", 1) == 1);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(pc.calls, 1);
	T_CHECK(pc.last > 0 && (pc.last & POLLIN));
	/* One-shot: more data does not call back again. */
	T_REQUIRE(write(p[1], "y", 1) == 1);
	T_REQUIRE(ring_timer_add(ring, 20 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_EQ(pc.calls, 1);
	/* The write end of an empty pipe is writable at once. */
	pc.calls = 0;
	T_REQUIRE(ring_poll_add(ring, p[1], POLLOUT, false, poll_once_cb, &pc) == 0);
	T_EQ(ring_run(ring), 0);
	T_EQ(pc.calls, 1);
	T_CHECK(pc.last & POLLOUT);
	T_EQ(ring_poll_add(ring, p[0], 0, false, poll_once_cb, &pc), -EINVAL);
	T_EQ(ring_poll_add(ring, -1, POLLIN, false, poll_once_cb, &pc), -EBADF);
	close(p[0]);
	close(p[1]);
	ring_free(ring);
}

static void poll_multi_cb(struct ring *ring, int res, void *arg)
{
	struct poll_case *pc = arg;
	char buf[16];

	pc->calls++;
	pc->last = res;
	if (res < 0) {
		ring_stop(ring);
		return;
	}
	while (read(pc->rfd, buf, sizeof(buf)) > 0)
		;
	if (pc->calls >= pc->stop_at) {
		ring_stop(ring);
		return;
	}
	T_REQUIRE(write(pc->wfd, "z", 1) == 1);
}

static void test_poll_multishot(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct poll_case pc = {0};
	int p[2];

	T_REQUIRE(ring);
	T_REQUIRE(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
	pc.rfd = p[0];
	pc.wfd = p[1];
	pc.stop_at = 5;
	T_REQUIRE(ring_poll_add(ring, p[0], POLLIN, true, poll_multi_cb, &pc) == 0);
	T_REQUIRE(write(p[1], "a", 1) == 1);
	/* Each callback drains the pipe and writes once more: one callback per write. */
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(pc.calls, 5);
	T_CHECK(pc.last & POLLIN);
	/* Still armed after the fifth: a sixth write calls back again. */
	pc.stop_at = 6;
	T_REQUIRE(write(p[1], "b", 1) == 1);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(pc.calls, 6);
	close(p[0]);
	close(p[1]);
	ring_free(ring);
}

static void poll_cancel_done(struct ring *ring, int res, void *arg)
{
	struct poll_case *pc = arg;

	pc->cancel_calls++;
	pc->last = res;
}

static void test_poll_cancel(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct poll_case pc = {0};
	int p[2];

	T_REQUIRE(ring);
	T_REQUIRE(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
	pc.rfd = p[0];
	pc.wfd = p[1];
	pc.stop_at = 100;
	T_REQUIRE(ring_poll_add(ring, p[0], POLLIN, true, poll_multi_cb, &pc) == 0);
	T_REQUIRE(ring_poll_add(ring, p[0], POLLIN, false, poll_once_cb, &pc) == 0);
	T_REQUIRE(ring_cancel_fd(ring, p[0], poll_cancel_done, &pc) == 0);
	/* Ready before the cancel is even submitted: still no callback. */
	T_REQUIRE(write(p[1], "x", 1) == 1);
	T_REQUIRE(ring_timer_add(ring, 50 * MS, stop_cb, NULL, NULL) == 0);
	T_EQ(ring_run(ring), 0);
	T_CHECK(!guard_fired);
	T_EQ(pc.calls, 0);
	T_EQ(pc.cancel_calls, 1);
	T_EQ(pc.last, 0);
	/* ring_close ends a poll the same way and closes the fd. */
	T_REQUIRE(ring_poll_add(ring, p[1], POLLERR, false, poll_once_cb, &pc) == 0);
	T_REQUIRE(ring_close(ring, p[1], on_closed, NULL) == 0);
	close_calls = 0;
	T_EQ(ring_run(ring), 0);
	T_EQ(close_calls, 1);
	T_EQ(close_res, 0);
	T_EQ(pc.calls, 0);
	T_CHECK(fcntl(p[1], F_GETFD) < 0);
	close(p[0]);
	ring_free(ring);
}

int main(void)
{
	log_init("test_ring", LOG_LVL_WARN);
	T_RUN(test_stop_ends_run);
	T_RUN(test_timers_order_and_cancel);
	T_RUN(test_defer_once_per_round);
	T_RUN(test_accept_multishot);
	T_RUN(test_accept_rearmed_after_emfile);
	T_RUN(test_connect);
	T_RUN(test_recv_integrity_8mib);
	T_RUN(test_buffer_exhaustion);
	T_RUN(test_short_sends_in_order);
	T_RUN(test_send_to_closed_peer);
	T_RUN(test_eof_after_data);
	T_RUN(test_peer_reset);
	T_RUN(test_cancel_fd_stops_callbacks);
	T_RUN(test_cancel_from_callback);
	T_RUN(test_close_cancels_and_closes);
	T_RUN(test_close_reusing_send_slot);
	T_RUN(test_close_listener_lets_go);
	T_RUN(test_bad_arguments);
	T_RUN(test_wake_from_thread);
	T_RUN(test_post_in_order);
	T_RUN(test_run_on_another_thread);
	T_RUN(test_signalfd_sigusr1);
	T_RUN(test_poll_pipe_readiness);
	T_RUN(test_poll_multishot);
	T_RUN(test_poll_cancel);
	return t_done();
}
