/* The socket end of an mtunnel (stream.h): reads only within the far side's window,
 * buffers DATA in one window-sized ring and grants the window back once written. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "stream.h"

/* Socket reads per poll wake-up before yielding to other work on the ring. */
#define STREAM_READS_MAX 16

struct stream {
	struct ring *ring;
	struct session *s;
	int fd;
	uint32_t id;
	uint32_t window;      /* initial window we grant */
	uint32_t credit;      /* DATA bytes we may still send */
	uint32_t peer_credit; /* DATA bytes the far side may still send us */
	uint32_t unacked;     /* written to the socket, not yet granted back */
	uint32_t seq_out, seq_in;
	bool started, polling, writing, fin_in, fin_out, shut_wr, closing;
	size_t pend_len; /* a frame the session refused with -EAGAIN, in pend */
	/* DATA payload waiting for the socket: a ring of window bytes (peer_credit + rlen +
	 * unacked == window), allocated at the first DATA; wlen of it is being written. */
	uint8_t *rbuf;
	uint32_t rhead, rlen, wlen;
	uint64_t up, down;
	stream_end_fn *end;
	void *arg;
	uint8_t pend[MT_FRAME_MAX];
};

static void stream_arm(struct stream *st);
static void stream_write(struct stream *st);

uint32_t stream_id(const struct stream *st)
{
	return st->id;
}

struct stream *stream_new(struct ring *ring, int fd, uint32_t id, uint32_t recv_window,
                          stream_end_fn *end, void *arg)
{
	struct stream *st;
	int fl = fcntl(fd, F_GETFL), one = 1;

	/* Blocking: io_uring ends a send on an O_NONBLOCK socket with -EAGAIN instead of
	 * waiting for room; reads here use MSG_DONTWAIT. */
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return NULL;
	if (id == 0 || recv_window == 0 || recv_window > MT_WINDOW_MAX) {
		errno = EINVAL;
		return NULL;
	}
	st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	/* Writes are already batched per window rotation; Nagle would only add delay. Not a
	 * TCP socket (tests use socketpairs): nothing to turn off. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	st->ring = ring;
	st->fd = fd;
	st->id = id;
	st->window = recv_window;
	st->peer_credit = recv_window;
	st->end = end;
	st->arg = arg;
	return st;
}

static void stream_free_cb(struct ring *ring, int res, void *arg)
{
	struct stream *st = arg;

	free(st->rbuf);
	free(st);
}

void stream_close(struct stream *st, enum mt_status status, const char *reason, bool send)
{
	if (!st || st->closing)
		return;
	st->closing = true;
	if (send && st->s && session_is_established(st->s)) {
		struct mt_msg m = {.hdr = {.type = MT_RESET, .id = st->id}};

		m.u.reset.status = (uint8_t)status;
		if (reason)
			m.u.reset.reason = (struct mt_bytes){
			    (const uint8_t *)reason, (uint16_t)strnlen(reason, MT_TEXT_MAX)};
		if (session_send_msg(st->s, &m) < 0)
			log_debug("mtunnel %u: RESET not sent (session busy)", st->id);
	}
	log_event(status == MT_STATUS_OK ? LOG_LVL_INFO : LOG_LVL_WARN, "mtunnel.close",
	          "id=%u status=%s bytes_up=%llu bytes_down=%llu reason=\"%s\"", st->id,
	          wire_status_name(status), (unsigned long long)st->up,
	          (unsigned long long)st->down, reason ? reason : "");
	if (st->end)
		st->end(st, st->arg);
	st->s = NULL;
	/*
	 * Anything but FIN both ways with every byte delivered is an abort: the application
	 * gets a reset, so that a cut transfer never looks complete to it.
	 */
	if (!(st->fin_in && st->fin_out && st->shut_wr && st->rlen == 0)) {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};

		setsockopt(st->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	if (ring_close(st->ring, st->fd, stream_free_cb, st) < 0) {
		close(st->fd);
		stream_free_cb(st->ring, 0, st);
	}
}

static void stream_check_done(struct stream *st)
{
	if (st->fin_in && st->fin_out && st->shut_wr && st->pend_len == 0)
		stream_close(st, MT_STATUS_OK, "closed", false);
}

/* Sends the frame in pend; false while the session holds it back. */
static bool stream_flush(struct stream *st)
{
	int ret;

	if (!st->pend_len)
		return true;
	ret = session_send_frame(st->s, st->pend, st->pend_len);
	if (ret == -EAGAIN)
		return false;
	st->pend_len = 0;
	if (ret < 0) {
		stream_close(st, MT_STATUS_ERROR, "session refused a frame", false);
		return false;
	}
	return true;
}

/* Grants the far side what the application took, a quarter window at a time. */
static void stream_grant(struct stream *st)
{
	if (st->unacked == 0 || st->unacked < st->window / 4)
		return;
	if (session_send_window(st->s, st->id, st->unacked) == 0) {
		st->peer_credit += st->unacked;
		st->unacked = 0;
	}
}

/* One read of the socket into pend as DATA (or FIN at EOF); false when nothing was read
 * or the stream is closing. */
static bool stream_read(struct stream *st)
{
	uint32_t n = st->credit < MT_FRAME_MAX_PAYLOAD ? st->credit : MT_FRAME_MAX_PAYLOAD;
	ssize_t r;

	r = recv(st->fd, st->pend + MT_FRAME_HDR, n, MSG_DONTWAIT);
	if (r < 0) {
		if (errno != EAGAIN && errno != EINTR)
			stream_close(st, MT_STATUS_ERROR, strerror(errno), true);
		return false;
	}
	if (r == 0) {
		struct mt_msg m = {.hdr = {.type = MT_FIN, .id = st->id}};
		int len = wire_encode(st->pend, sizeof(st->pend), &m);

		if (len < 0) {
			stream_close(st, MT_STATUS_ERROR, "cannot encode FIN", true);
			return false;
		}
		st->fin_out = true;
		st->pend_len = (size_t)len;
		return true;
	}
	wire_encode_data_hdr(st->pend, st->id, st->seq_out++, (uint32_t)r);
	st->credit -= (uint32_t)r;
	st->up += (uint64_t)r;
	st->pend_len = MT_FRAME_HDR + (size_t)r;
	return true;
}

/* Socket to session while there is credit, data and room: several frames per wake-up,
 * so that they leave in one TLS send. */
static void stream_pump(struct stream *st)
{
	for (int i = 0; i < STREAM_READS_MAX; i++) {
		if (!stream_flush(st))
			return; /* closing, or on_writable brings us back */
		if (st->fin_out || st->credit == 0)
			break;
		if (!stream_read(st)) {
			if (st->closing)
				return;
			break;
		}
	}
	/* After STREAM_READS_MAX a frame may still wait in pend: on_writable or the next
	 * poll wake-up sends it. */
	if (st->pend_len && !stream_flush(st))
		return;
	stream_arm(st);
	stream_check_done(st);
}

static void stream_poll_cb(struct ring *ring, int res, void *arg)
{
	struct stream *st = arg;

	st->polling = false;
	if (st->closing)
		return;
	if (res < 0) {
		stream_close(st, MT_STATUS_ERROR, "poll failed", true);
		return;
	}
	stream_pump(st);
}

static void stream_arm(struct stream *st)
{
	if (st->polling || !st->started || st->fin_out || st->closing || st->pend_len ||
	    st->credit == 0)
		return;
	if (ring_poll_add(st->ring, st->fd, POLLIN, false, stream_poll_cb, st) < 0) {
		stream_close(st, MT_STATUS_ERROR, "cannot poll the socket", true);
		return;
	}
	st->polling = true;
}

void stream_start(struct stream *st, struct session *s, uint32_t send_credit)
{
	st->s = s;
	st->credit = send_credit > MT_WINDOW_MAX ? MT_WINDOW_MAX : send_credit;
	st->started = true;
	stream_arm(st);
}

void stream_on_writable(struct stream *st)
{
	if (st->closing || !st->started)
		return;
	stream_grant(st);
	if (st->closing)
		return;
	stream_pump(st);
}

static void stream_shut(struct stream *st)
{
	if (st->rlen || !st->fin_in || st->shut_wr)
		return;
	shutdown(st->fd, SHUT_WR);
	st->shut_wr = true;
	stream_check_done(st);
}

static void stream_written(struct ring *ring, int res, void *arg)
{
	struct stream *st = arg;
	uint32_t n = st->wlen;

	st->writing = false;
	st->wlen = 0;
	if (res < 0) {
		stream_close(st, MT_STATUS_ERROR, strerror(-res), true);
		return;
	}
	st->rhead = (uint32_t)(((uint64_t)st->rhead + n) % st->window);
	st->rlen -= n;
	st->unacked += n;
	stream_grant(st);
	stream_write(st);
	stream_shut(st);
}

/* Everything buffered to the socket in one send (two pieces when it wraps). */
static void stream_write(struct stream *st)
{
	struct iovec iov[2];
	uint32_t first;
	int cnt = 1;

	if (st->writing || st->closing || st->rlen == 0)
		return;
	first = st->window - st->rhead;
	if (first > st->rlen)
		first = st->rlen;
	iov[0] = (struct iovec){st->rbuf + st->rhead, first};
	if (first < st->rlen) {
		iov[1] = (struct iovec){st->rbuf, st->rlen - first};
		cnt = 2;
	}
	if (ring_sendv(st->ring, st->fd, iov, cnt, stream_written, st) < 0) {
		stream_close(st, MT_STATUS_ERROR, "cannot send to the socket", true);
		return;
	}
	st->writing = true;
	st->wlen = st->rlen;
}

static void stream_on_data(struct stream *st, const struct mt_hdr *hdr, const uint8_t *frame)
{
	const uint8_t *p = frame + MT_FRAME_HDR;
	uint32_t tail, first;

	/* The connection window is granted on receipt, whatever becomes of the payload: this
	 * buffer is bounded by the mtunnel window, and credit held until the application
	 * reads would let one slow (or closed) mtunnel starve the whole session. */
	session_consumed(st->s, hdr->len);
	if (st->fin_in || wire_seq_check(&st->seq_in, hdr->seq) < 0 || hdr->len > st->peer_credit) {
		stream_close(st, MT_STATUS_PROTOCOL,
		             st->fin_in ? "DATA after FIN" : "DATA out of sequence or window",
		             true);
		return;
	}
	st->peer_credit -= hdr->len;
	st->down += hdr->len;
	if (hdr->len == 0)
		return;
	if (!st->rbuf && !(st->rbuf = malloc(st->window))) {
		stream_close(st, MT_STATUS_ERROR, "out of memory", true);
		return;
	}
	tail = (uint32_t)(((uint64_t)st->rhead + st->rlen) % st->window);
	first = st->window - tail;
	if (first > hdr->len)
		first = hdr->len;
	memcpy(st->rbuf + tail, p, first);
	memcpy(st->rbuf, p + first, hdr->len - first);
	st->rlen += hdr->len;
	stream_write(st);
}

void stream_on_frame(struct stream *st, const struct mt_hdr *hdr, const uint8_t *frame, size_t len)
{
	struct mt_msg m;
	const char *why;

	if (st->closing)
		return;
	switch (hdr->type) {
	case MT_DATA:
		stream_on_data(st, hdr, frame);
		return;
	case MT_WINDOW:
		if (wire_decode(frame, len, &m, &why) < 0 ||
		    m.u.window.increment > MT_WINDOW_MAX - st->credit) {
			stream_close(st, MT_STATUS_PROTOCOL, "WINDOW past 2^31-1", true);
			return;
		}
		st->credit += m.u.window.increment;
		stream_arm(st);
		return;
	case MT_FIN:
		if (st->fin_in) {
			stream_close(st, MT_STATUS_PROTOCOL, "second FIN", true);
			return;
		}
		st->fin_in = true;
		stream_shut(st);
		return;
	case MT_RESET: {
		char reason[MT_TEXT_MAX + 1] = "";

		if (wire_decode(frame, len, &m, &why) == 0) {
			if (m.u.reset.reason.len)
				memcpy(reason, m.u.reset.reason.p, m.u.reset.reason.len);
			reason[m.u.reset.reason.len] = '\0';
			stream_close(st, (enum mt_status)m.u.reset.status,
			             reason[0] ? reason : "reset by peer", false);
		} else {
			stream_close(st, MT_STATUS_PROTOCOL, "bad RESET", false);
		}
		return;
	}
	default:
		stream_close(st, MT_STATUS_PROTOCOL, "unexpected frame on an mtunnel", true);
	}
}
