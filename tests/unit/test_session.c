/*
 * lib/session: two sessions over a socketpair (or loopback TCP for dialing), and a raw TLS
 * peer in a thread for what a session itself would never send.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "pki_fixture.h"
#include "ring.h"
#include "session.h"
#include "t.h"
#include "tls.h"
#include "wire.h"

#define DEVICE_HEX "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define URI_AGENT  "mtun://acme/agent/laptop-1?user=alice&device=" DEVICE_HEX
#define URI_BROKER "mtun://acme/broker/edge-1"
#define URI_CONN   "mtun://acme/connector/dc-1"
#define BULK       (64ULL << 20)
#define GUARD_MS   20000

static const uint8_t device_id[IDENT_DEVICE_LEN] = {
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};

static struct pki_cert root, inter, agent_leaf, broker_leaf, conn_leaf;
static STACK_OF(X509) *anchors, *chain;
/* broker as server (agents, connectors), agent and connector as clients, connector as
 * server and broker as client (the broker's leg to a connector). */
static struct tls_ctx *broker_srv, *agent_cli, *conn_cli, *conn_srv, *broker_cli;
static struct ring *ring;
static struct ring_bufgroup *bufs;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* What one end of a test saw. */
struct tpeer {
	struct session *s;
	unsigned established, closed, writable;
	struct ident peer;
	uint8_t hello_role, hello_kind;
	char reason[256];
	int status;
	/* control frames kept whole, in order */
	unsigned nframes;
	uint8_t frames[16][1024];
	size_t frame_len[16];
	/* DATA sink */
	uint64_t data, unconsumed, max_unconsumed, window;
	uint32_t next_seq;
	bool seq_bad, bytes_bad;
	bool consume_now;
	/* relay: frames go on to fwd with id fwd_id */
	struct tpeer *fwd;
	uint32_t fwd_id;
	int fwd_err;
	/* raw frames kept in order (relay target) */
	uint8_t *raw;
	size_t raw_len, raw_cap;
	bool close_on_frame, close_on_established;
	void (*on_writable)(struct tpeer *p);
};

static uint8_t pattern(uint64_t off)
{
	return (uint8_t)(off % 251);
}

static void tp_established(struct session *s, const struct ident *peer,
                           const struct mt_hello *hello, void *arg)
{
	struct tpeer *p = arg;

	p->s = s;
	p->established++;
	p->peer = *peer;
	p->hello_role = hello->role;
	p->hello_kind = hello->kind;
	if (p->close_on_established)
		session_close(s, MT_STATUS_DENIED, "closing from on_established");
}

static void tp_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len, void *arg)
{
	struct tpeer *p = arg;

	if (p->raw) {
		if (p->raw_len + len <= p->raw_cap)
			memcpy(p->raw + p->raw_len, frame, len);
		p->raw_len += len;
	}
	if (p->fwd) {
		wire_set_id(frame, p->fwd_id);
		p->fwd_err = p->fwd_err ? p->fwd_err : session_send_frame(p->fwd->s, frame, len);
		if (hdr->type == MT_DATA)
			session_consumed(s, hdr->len);
		return;
	}
	if (hdr->type == MT_DATA) {
		const uint8_t *d = frame + MT_FRAME_HDR;

		if (wire_seq_check(&p->next_seq, hdr->seq) < 0)
			p->seq_bad = true;
		for (uint32_t i = 0; i < hdr->len; i++) {
			if (d[i] != pattern(p->data + i)) {
				p->bytes_bad = true;
				break;
			}
		}
		p->data += hdr->len;
		p->unconsumed += hdr->len;
		if (p->unconsumed > p->max_unconsumed)
			p->max_unconsumed = p->unconsumed;
		if (p->consume_now) {
			session_consumed(s, p->unconsumed);
			p->unconsumed = 0;
		}
	} else if (p->nframes < 16 && len <= sizeof(p->frames[0])) {
		memcpy(p->frames[p->nframes], frame, len);
		p->frame_len[p->nframes++] = len;
	}
	if (p->close_on_frame)
		session_close(s, MT_STATUS_REFUSED, "closing from on_frame");
}

static void tp_writable(struct session *s, void *arg)
{
	struct tpeer *p = arg;

	p->writable++;
	if (p->on_writable)
		p->on_writable(p);
}

static void tp_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	struct tpeer *p = arg;

	p->closed++;
	snprintf(p->reason, sizeof(p->reason), "%s", reason);
	p->status = (int)status;
	/* A second close from inside on_closed is a no-op. */
	session_close(s, MT_STATUS_ERROR, "again");
	p->s = NULL;
}

static const struct session_ops tp_ops = {
    .on_established = tp_established,
    .on_frame = tp_frame,
    .on_writable = tp_writable,
    .on_closed = tp_closed,
};

/* Runs the ring until cond holds (polled each millisecond) or ms pass; returns cond. */
static bool (*run_cond)(void);
static uint64_t run_deadline;

static uint64_t run_polls;

static void run_poll(struct ring *r, void *arg)
{
	run_polls++;
	if ((run_cond && run_cond()) || now_ms() >= run_deadline) {
		ring_stop(r);
		return;
	}
	if (ring_timer_add(r, 1000000, run_poll, NULL, NULL) < 0)
		ring_stop(r);
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

/* Lets closes finish their flush and free (no condition to poll: the memory goes). */
static void drain(void)
{
	run_until(NULL, 30);
}

static struct tpeer pa, pb, pc, pd;

static void tp_reset(void)
{
	free(pa.raw);
	free(pb.raw);
	free(pc.raw);
	free(pd.raw);
	memset(&pa, 0, sizeof(pa));
	memset(&pb, 0, sizeof(pb));
	memset(&pc, 0, sizeof(pc));
	memset(&pd, 0, sizeof(pd));
}

static void tp_close(struct tpeer *p)
{
	if (p->s && !p->closed)
		session_close(p->s, MT_STATUS_SHUTDOWN, NULL);
	p->s = NULL;
}

static struct session_opts opts_for(enum mt_role role)
{
	return (struct session_opts){
	    .bufs = bufs,
	    .role = role,
	    .kind = MT_SESSION_CONTROL,
	    .sw_version = "mtun-test/1",
	    .device_id = role == MT_ROLE_AGENT ? device_id : NULL,
	};
}

/* Client cctx with copts on one end of a socketpair, server sctx with sopts on the other. */
static int pair(struct tls_ctx *cctx, const struct session_opts *copts, struct tpeer *c,
                struct tls_ctx *sctx, const struct session_opts *sopts, struct tpeer *s)
{
	int fds[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
		return -errno;
	c->s = session_new(ring, cctx, fds[0], copts, &tp_ops, c);
	s->s = session_new(ring, sctx, fds[1], sopts, &tp_ops, s);
	if (!c->s || !s->s)
		return -EINVAL;
	return 0;
}

static bool ab_established(void)
{
	return (pa.established && pb.established) || pa.closed || pb.closed;
}

static bool ab_closed(void)
{
	return pa.closed && pb.closed;
}

static bool b_closed(void)
{
	return pb.closed;
}

static bool b_established(void)
{
	return pb.established || pb.closed;
}

static bool a_closed(void)
{
	return pa.closed;
}

/* Agent and broker, up. */
static int agent_broker(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);

	tp_reset();
	if (pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) < 0)
		return -1;
	if (!run_until(ab_established, GUARD_MS) || !pa.established || !pb.established)
		return -1;
	return 0;
}

static void test_hello_exchange(void)
{
	T_REQUIRE(agent_broker() == 0);
	T_EQ(pa.established, 1);
	T_EQ(pb.established, 1);
	T_EQ(pa.peer.role, MT_ROLE_BROKER);
	T_STREQ(pa.peer.id, "edge-1");
	T_STREQ(pa.peer.tenant, "acme");
	T_EQ(pa.hello_role, MT_ROLE_BROKER);
	T_EQ(pb.peer.role, MT_ROLE_AGENT);
	T_STREQ(pb.peer.user, "alice");
	T_STREQ(pb.peer.id, "laptop-1");
	T_CHECK(pb.peer.has_device && memcmp(pb.peer.device, device_id, IDENT_DEVICE_LEN) == 0);
	/* The broker checked the agent's HELLO, device proof included, and let it in. */
	T_EQ(pb.hello_role, MT_ROLE_AGENT);
	T_EQ(pb.hello_kind, MT_SESSION_CONTROL);
	T_CHECK(session_is_established(pa.s) && session_is_established(pb.s));
	/* Each side opened the other's connection window (1 MiB by default). */
	T_EQ(session_send_credit(pa.s), 1U << 20);
	T_EQ(session_send_credit(pb.s), 1U << 20);
	T_EQ(pa.closed + pb.closed, 0);
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

static unsigned want_frames;

static bool ab_frames(void)
{
	return (pb.nframes >= want_frames && pa.nframes >= want_frames) || pa.closed || pb.closed;
}

static int decode_at(struct tpeer *p, unsigned i, struct mt_msg *m)
{
	const char *why;

	if (i >= p->nframes)
		return -ENOENT;
	return wire_decode(p->frames[i], p->frame_len[i], m, &why);
}

static bool bytes_eq(struct mt_bytes b, const char *s)
{
	return b.len == strlen(s) && memcmp(b.p, s, b.len) == 0;
}

static void test_frames_both_ways(void)
{
	struct mt_segment seg = {.id = 3, .kind = MT_SEG_FQDN};
	struct mt_port_range pr = {.proto = MT_PROTO_TCP, .lo = 22, .hi = 22};
	struct mt_msg m;
	struct session_stats st;

	T_REQUIRE(agent_broker() == 0);
	/* agent -> broker */
	m = (struct mt_msg){.hdr.type = MT_RESOLVE};
	m.u.resolve = (struct mt_resolve){.req_id = 77,
	                                  .name = {(const uint8_t *)"server01.corp.example", 21},
	                                  .port = 22,
	                                  .proto = MT_PROTO_TCP};
	T_EQ(session_send_msg(pa.s, &m), 0);
	m = (struct mt_msg){.hdr.type = MT_OPEN, .hdr.id = 5};
	m.u.open = (struct mt_open){.name = {(const uint8_t *)"server01.corp.example", 21},
	                            .port = 22,
	                            .proto = MT_PROTO_TCP,
	                            .window = 65536};
	T_EQ(session_send_msg(pa.s, &m), 0);
	m = (struct mt_msg){.hdr.type = MT_FIN, .hdr.id = 5};
	T_EQ(session_send_msg(pa.s, &m), 0);
	T_EQ(session_send_window(pa.s, 5, 4096), 0);
	/* broker -> agent */
	seg.name = (struct mt_bytes){(const uint8_t *)"corp.example", 12};
	seg.ranges = &pr;
	seg.nranges = 1;
	m = (struct mt_msg){.hdr.type = MT_CONFIG};
	m.u.config = (struct mt_config){.version = 42, .segs = &seg, .nsegs = 1};
	T_EQ(session_send_msg(pb.s, &m), 0);
	m = (struct mt_msg){.hdr.type = MT_OPEN_REPLY, .hdr.id = 5};
	m.u.reply = (struct mt_reply){.status = MT_STATUS_OK, .window = 8192};
	T_EQ(session_send_msg(pb.s, &m), 0);
	m = (struct mt_msg){.hdr.type = MT_RESET, .hdr.id = 5};
	m.u.reset =
	    (struct mt_reset){.status = MT_STATUS_TIMEOUT, .reason = {(const uint8_t *)"idle", 4}};
	T_EQ(session_send_msg(pb.s, &m), 0);
	/* HELLO, PING, ERROR and the connection window are the session's own. */
	m = (struct mt_msg){.hdr.type = MT_HELLO};
	T_EQ(session_send_msg(pb.s, &m), -EINVAL);
	m = (struct mt_msg){.hdr.type = MT_PING, .u.ping.token = 9};
	T_EQ(session_send_msg(pb.s, &m), -EINVAL);
	T_EQ(session_send_window(pb.s, 0, 100), -EINVAL);

	want_frames = 3;
	T_REQUIRE(run_until(ab_frames, GUARD_MS));
	T_EQ(pb.nframes, 4);
	T_EQ(pa.nframes, 3);
	T_REQUIRE(decode_at(&pb, 0, &m) == 0);
	T_EQ(m.hdr.type, MT_RESOLVE);
	T_EQ(m.u.resolve.req_id, 77);
	T_CHECK(bytes_eq(m.u.resolve.name, "server01.corp.example"));
	T_EQ(m.u.resolve.port, 22);
	T_REQUIRE(decode_at(&pb, 1, &m) == 0);
	T_EQ(m.hdr.type, MT_OPEN);
	T_EQ(m.hdr.id, 5);
	T_EQ(m.u.open.window, 65536);
	T_REQUIRE(decode_at(&pb, 2, &m) == 0);
	T_EQ(m.hdr.type, MT_FIN);
	T_REQUIRE(decode_at(&pb, 3, &m) == 0);
	T_EQ(m.hdr.type, MT_WINDOW);
	T_EQ(m.hdr.id, 5);
	T_EQ(m.u.window.increment, 4096);

	T_REQUIRE(decode_at(&pa, 0, &m) == 0);
	T_EQ(m.hdr.type, MT_CONFIG);
	T_EQ(m.u.config.version, 42);
	{
		struct mt_iter it;
		struct mt_segment got;

		wire_config_segments(&m.u.config, &it);
		T_CHECK(wire_segment_next(&it, &got));
		T_EQ(got.id, 3);
		T_CHECK(bytes_eq(got.name, "corp.example"));
	}
	T_REQUIRE(decode_at(&pa, 1, &m) == 0);
	T_EQ(m.hdr.type, MT_OPEN_REPLY);
	T_EQ(m.u.reply.window, 8192);
	T_REQUIRE(decode_at(&pa, 2, &m) == 0);
	T_EQ(m.hdr.type, MT_RESET);
	T_EQ(m.u.reset.status, MT_STATUS_TIMEOUT);
	T_CHECK(bytes_eq(m.u.reset.reason, "idle"));

	/* HELLO + connection WINDOW + 4 frames out of the agent, and 3 in. */
	session_get_stats(pa.s, &st);
	T_EQ(st.frames_out, 6);
	T_EQ(st.frames_in, 2 + 3);
	T_CHECK(st.bytes_out > 6 * MT_FRAME_HDR);
	T_EQ(pa.closed + pb.closed, 0);
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

static bool b_got_frames(void)
{
	return pb.nframes >= 16 || pb.closed;
}

/* 100 small frames written in one go leave in one send, not in 100. */
static void test_batched_flush(void)
{
	struct mt_msg m = {.hdr.type = MT_FIN};
	struct ring_stats r0, r1;
	struct session_stats st0, st1;
	uint64_t polls, cqes;

	T_REQUIRE(agent_broker() == 0);
	session_get_stats(pb.s, &st0);
	ring_get_stats(ring, &r0);
	polls = run_polls;
	for (uint32_t i = 1; i <= 100; i++) {
		m.hdr.id = i;
		T_EQ(session_send_msg(pa.s, &m), 0);
	}
	T_CHECK(run_until(b_got_frames, GUARD_MS));
	/* Let the rest of the frames in: they came in the same read. */
	run_until(NULL, 5);
	ring_get_stats(ring, &r1);
	polls = run_polls - polls;
	session_get_stats(pb.s, &st1);
	T_EQ(st1.frames_in - st0.frames_in, 100);
	/* The flush, one send, a receive or two (and the test's own poll timers): far from
	 * the 100 sends of a flush per frame. */
	cqes = r1.cqes - r0.cqes - polls;
	printf("# 100 frames: %llu completions\n", (unsigned long long)cqes);
	T_CHECK(cqes < 20);
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

/* The sender of the bulk test: DATA frames until the session says -EAGAIN. */
static uint64_t bulk_sent;
static uint32_t bulk_seq;
static unsigned bulk_window_stalls, bulk_out_stalls;
static uint8_t bulk_frame[MT_FRAME_MAX];

static void bulk_pump(struct tpeer *p)
{
	while (bulk_sent < BULK && p->s) {
		uint32_t n = MT_FRAME_MAX_PAYLOAD;
		int ret;

		/* Vary the sizes so frames straddle records and reads. */
		if (bulk_seq % 7 == 3)
			n = 1 + bulk_seq % 5000;
		if (BULK - bulk_sent < n)
			n = (uint32_t)(BULK - bulk_sent);
		wire_encode_data_hdr(bulk_frame, 7, bulk_seq, n);
		for (uint32_t i = 0; i < n; i++)
			bulk_frame[MT_FRAME_HDR + i] = pattern(bulk_sent + i);
		ret = session_send_frame(p->s, bulk_frame, MT_FRAME_HDR + n);
		if (ret == -EAGAIN) {
			if (session_send_credit(p->s) < n)
				bulk_window_stalls++;
			else
				bulk_out_stalls++;
			return;
		}
		if (ret < 0)
			return;
		bulk_sent += n;
		bulk_seq++;
	}
}

/* The slow receiver: gives back at most 64 KiB each millisecond. */
static ring_timer_t consume_timer;

static void consume_tick(struct ring *r, void *arg)
{
	struct tpeer *p = arg;
	uint64_t n = p->unconsumed > (64U << 10) ? (64U << 10) : p->unconsumed;

	consume_timer = 0;
	if (!p->s)
		return;
	session_consumed(p->s, n);
	p->unconsumed -= n;
	ring_timer_add(r, 1000000, consume_tick, p, &consume_timer);
}

static bool bulk_done(void)
{
	return pb.data >= BULK || pa.closed || pb.closed;
}

static void test_bulk_window(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);
	struct session_stats st;

	tp_reset();
	bulk_sent = 0;
	bulk_seq = 0;
	bulk_window_stalls = bulk_out_stalls = 0;
	bo.recv_window = 256U << 10;
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_REQUIRE(run_until(ab_established, GUARD_MS) && pa.established && pb.established);
	pa.on_writable = bulk_pump;
	T_REQUIRE(ring_timer_add(ring, 1000000, consume_tick, &pb, &consume_timer) == 0);
	bulk_pump(&pa);
	T_CHECK(run_until(bulk_done, 60000));
	if (consume_timer)
		ring_timer_cancel(ring, consume_timer);
	consume_timer = 0;
	T_EQ(pb.data, BULK);
	T_EQ(bulk_sent, BULK);
	T_CHECK(!pb.seq_bad);
	T_CHECK(!pb.bytes_bad);
	T_EQ(pb.next_seq, bulk_seq);
	/* The receiver never held more than the window it granted, and the sender did wait
	 * for it. */
	T_CHECK(pb.max_unconsumed <= (256U << 10));
	T_CHECK(bulk_window_stalls > 0);
	session_get_stats(pa.s, &st);
	T_EQ(st.data_out, BULK);
	session_get_stats(pb.s, &st);
	T_EQ(st.data_in, BULK);
	T_EQ(pa.closed + pb.closed, 0);
	printf("# 64 MiB: %u window stalls, %u output stalls, %u frames\n", bulk_window_stalls,
	       bulk_out_stalls, bulk_seq);
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

/* The same 64 MiB with a receiver that consumes at once: how fast the layer itself is. */
static void test_bulk_fast(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);
	struct ring_stats rs0, rs1;
	struct rusage ru0, ru1;
	uint64_t t0, ms, cpu;

	tp_reset();
	bulk_sent = 0;
	bulk_seq = 0;
	bulk_window_stalls = bulk_out_stalls = 0;
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_REQUIRE(run_until(ab_established, GUARD_MS) && pa.established && pb.established);
	pa.on_writable = bulk_pump;
	pb.consume_now = true;
	ring_get_stats(ring, &rs0);
	getrusage(RUSAGE_SELF, &ru0);
	t0 = now_ms();
	bulk_pump(&pa);
	T_CHECK(run_until(bulk_done, 60000));
	ms = now_ms() - t0;
	getrusage(RUSAGE_SELF, &ru1);
	ring_get_stats(ring, &rs1);
	printf("# ring: %llu loops, %llu completions, %llu enobufs\n",
	       (unsigned long long)(rs1.loops - rs0.loops),
	       (unsigned long long)(rs1.cqes - rs0.cqes),
	       (unsigned long long)(rs1.enobufs - rs0.enobufs));
	T_EQ(pb.data, BULK);
	T_CHECK(!pb.seq_bad && !pb.bytes_bad);
	T_EQ(pa.closed + pb.closed, 0);
	cpu = (uint64_t)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec -
	                 ru0.ru_stime.tv_sec) *
	          1000 +
	      (uint64_t)((ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec -
	                  ru0.ru_stime.tv_usec) /
	                 1000);
	/* CPU time is the figure that means something on a shared machine. */
	printf("# 64 MiB through one session, both ends and the byte checks on one thread: "
	       "%llu ms wall, %llu ms CPU\n",
	       (unsigned long long)ms, (unsigned long long)cpu);
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

/* A (agent) -> B1 (broker) -> B2 (broker leg) -> C (connector): ids swapped, bytes not. */
static uint8_t relay_expect[64 << 10];
static size_t relay_expect_len;

static bool c_got_all(void)
{
	return pd.raw_len >= relay_expect_len || pd.closed || pb.closed || pa.closed;
}

static bool all4_established(void)
{
	return (pa.established && pb.established && pc.established && pd.established) ||
	       pa.closed || pb.closed || pc.closed || pd.closed;
}

static void test_relay_in_place(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER),
			    co = opts_for(MT_ROLE_CONNECTOR);
	uint8_t frame[MT_FRAME_MAX];
	struct mt_msg m;
	size_t sizes[] = {1, 100, 16368, 5000, 16368, 0, 777};
	uint64_t off = 0;
	int len;

	tp_reset();
	relay_expect_len = 0;
	/* pa: agent, pb: broker's agent leg, pc: broker's connector leg, pd: connector. */
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_REQUIRE(pair(broker_cli, &bo, &pc, conn_srv, &co, &pd) == 0);
	T_REQUIRE(run_until(all4_established, GUARD_MS) && pd.established && pb.established);
	pb.fwd = &pc;
	pb.fwd_id = 0x01020304;
	pd.raw_cap = sizeof(relay_expect);
	pd.raw = malloc(pd.raw_cap);
	pd.consume_now = true;
	T_REQUIRE(pd.raw);

	m = (struct mt_msg){.hdr.type = MT_OPEN, .hdr.id = 5};
	m.u.open = (struct mt_open){.name = {(const uint8_t *)"10.0.0.1", 8},
	                            .port = 80,
	                            .proto = MT_PROTO_TCP,
	                            .window = 65536};
	len = wire_encode(frame, sizeof(frame), &m);
	T_REQUIRE(len > 0);
	T_EQ(session_send_frame(pa.s, frame, (size_t)len), 0);
	memcpy(relay_expect, frame, (size_t)len);
	wire_set_id(relay_expect, 0x01020304);
	relay_expect_len = (size_t)len;
	for (uint32_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		wire_encode_data_hdr(frame, 5, i, (uint32_t)sizes[i]);
		for (size_t k = 0; k < sizes[i]; k++)
			frame[MT_FRAME_HDR + k] = pattern(off + k);
		off += sizes[i];
		T_EQ(session_send_frame(pa.s, frame, MT_FRAME_HDR + sizes[i]), 0);
		memcpy(relay_expect + relay_expect_len, frame, MT_FRAME_HDR + sizes[i]);
		wire_set_id(relay_expect + relay_expect_len, 0x01020304);
		relay_expect_len += MT_FRAME_HDR + sizes[i];
	}
	m = (struct mt_msg){.hdr.type = MT_FIN, .hdr.id = 5};
	len = wire_encode(frame, sizeof(frame), &m);
	T_EQ(session_send_frame(pa.s, frame, (size_t)len), 0);
	memcpy(relay_expect + relay_expect_len, frame, (size_t)len);
	wire_set_id(relay_expect + relay_expect_len, 0x01020304);
	relay_expect_len += (size_t)len;

	T_CHECK(run_until(c_got_all, GUARD_MS));
	T_EQ(pb.fwd_err, 0);
	T_EQ(pd.raw_len, relay_expect_len);
	T_CHECK(pd.raw_len == relay_expect_len &&
	        memcmp(pd.raw, relay_expect, relay_expect_len) == 0);
	T_EQ(pd.data, off);
	T_CHECK(!pd.seq_bad && !pd.bytes_bad);
	T_EQ(pa.closed + pb.closed + pc.closed + pd.closed, 0);
	tp_close(&pa);
	tp_close(&pb);
	tp_close(&pc);
	tp_close(&pd);
	drain();
}

static bool contains(const char *s, const char *sub)
{
	return s && strstr(s, sub) != NULL;
}

#define T_CONTAINS(s, sub)                                                                         \
	do {                                                                                       \
		if (!contains((s), (sub)))                                                         \
			t_fail(__FILE__, __LINE__, "\"%s\" lacks \"%s\"", (s), (sub));             \
	} while (0)

static void test_wrong_role_refused(void)
{
	/* A connector's certificate that says "agent" in its HELLO. */
	struct session_opts co = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);

	tp_reset();
	T_REQUIRE(pair(conn_cli, &co, &pa, broker_srv, &bo, &pb) == 0);
	T_CHECK(run_until(ab_closed, GUARD_MS));
	T_EQ(pb.established, 0);
	T_EQ(pb.closed, 1);
	T_CONTAINS(pb.reason, "HELLO role 'agent' does not match certificate role 'connector'");
	T_EQ(pb.status, MT_STATUS_DENIED);
	/* The refused side learns why from the ERROR frame. */
	T_EQ(pa.closed, 1);
	T_CONTAINS(pa.reason, "HELLO role 'agent' does not match certificate role 'connector'");
	T_EQ(pa.status, MT_STATUS_DENIED);
	drain();
}

static void device_case(const uint8_t *dev, const char *reason)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);

	tp_reset();
	ao.device_id = dev;
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_CHECK(run_until(ab_closed, GUARD_MS));
	T_EQ(pb.established, 0);
	T_CONTAINS(pb.reason, reason);
	T_EQ(pb.status, MT_STATUS_DENIED);
	T_CONTAINS(pa.reason, reason);
	drain();
}

static void test_device_proof_wrong(void)
{
	uint8_t other[IDENT_DEVICE_LEN];

	memcpy(other, device_id, sizeof(other));
	other[31] ^= 1;
	device_case(other, "device proof does not match the certificate's device fingerprint");
}

static void test_device_proof_missing(void)
{
	device_case(NULL, "agent HELLO without a device proof");
}

/* A raw TLS client in a thread: blocking I/O, sends out[] after the handshake, then reads
 * everything until the session closes (or waits on hold first). */
struct raw {
	int fd, hold;
	struct tls_ctx *ctx;
	const uint8_t *out;
	size_t out_len;
	uint8_t in[1 << 16];
	size_t in_len;
	bool handshake_ok, eof;
};

static void raw_flush(struct tls_conn *c, int fd)
{
	const void *p;
	size_t n;

	for (;;) {
		ssize_t w;

		tls_conn_peek(c, &p, &n);
		if (n == 0)
			return;
		w = write(fd, p, n);
		if (w <= 0)
			return;
		tls_conn_consume(c, (size_t)w);
	}
}

static void *raw_main(void *arg)
{
	struct raw *r = arg;
	struct tls_conn *c = tls_conn_new(r->ctx);
	uint8_t buf[16384];
	ssize_t n;
	int ret;
	size_t done = 0;

	if (!c)
		return NULL;
	while ((ret = tls_conn_handshake(c)) == -EAGAIN) {
		raw_flush(c, r->fd);
		n = read(r->fd, buf, sizeof(buf));
		if (n <= 0 || tls_conn_feed(c, buf, (size_t)n) < 0)
			goto out;
	}
	if (ret < 0)
		goto out;
	r->handshake_ok = true;
	while (done < r->out_len) {
		n = tls_conn_write(c, r->out + done, r->out_len - done);
		if (n < 0)
			goto out;
		done += (size_t)n;
		raw_flush(c, r->fd);
	}
	raw_flush(c, r->fd);
	if (r->hold >= 0) {
		char x;

		/* Silent: neither reads nor writes until the test lets go. */
		if (read(r->hold, &x, 1) < 0)
			goto out;
		goto out;
	}
	for (;;) {
		n = tls_conn_read(c, r->in + r->in_len, sizeof(r->in) - r->in_len);
		if (n > 0) {
			r->in_len += (size_t)n;
			continue;
		}
		if (n != -EAGAIN) {
			r->eof = true;
			break;
		}
		raw_flush(c, r->fd);
		n = read(r->fd, buf, sizeof(buf));
		if (n < 0)
			break;
		if (n == 0)
			tls_conn_feed_eof(c);
		else if (tls_conn_feed(c, buf, (size_t)n) < 0)
			break;
	}
out:
	tls_conn_free(c);
	return NULL;
}

/* The broker session under test on one end, the raw connector client on the other. */
static pthread_t raw_thread;

static int raw_start(struct raw *r, const uint8_t *out, size_t out_len, int hold,
                     const struct session_opts *bo)
{
	struct timeval tv = {.tv_sec = 10};
	int fds[2];

	memset(r, 0, sizeof(*r));
	r->out = out;
	r->out_len = out_len;
	r->hold = hold;
	r->ctx = conn_cli;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
		return -errno;
	setsockopt(fds[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	r->fd = fds[0];
	pb.s = session_new(ring, broker_srv, fds[1], bo, &tp_ops, &pb);
	if (!pb.s)
		return -errno;
	if (pthread_create(&raw_thread, NULL, raw_main, r) != 0)
		return -EAGAIN;
	return 0;
}

static void raw_join(struct raw *r)
{
	pthread_join(raw_thread, NULL);
	close(r->fd);
}

/* The ERROR frame among what the raw peer received, or NULL. */
static int raw_error(struct raw *r, struct mt_msg *out)
{
	size_t off = 0;

	while (off + MT_FRAME_HDR <= r->in_len) {
		const char *why;
		struct mt_hdr h;

		if (wire_peek_header(r->in + off, r->in_len - off, &h, &why) < 0 ||
		    wire_frame_len(&h) > r->in_len - off)
			return -EPROTO;
		if (h.type == MT_ERROR)
			return wire_decode(r->in + off, wire_frame_len(&h), out, &why);
		off += wire_frame_len(&h);
	}
	return -ENOENT;
}

static size_t conn_hello(uint8_t *buf, size_t size)
{
	struct mt_msg m = {.hdr.type = MT_HELLO};
	int len;

	m.u.hello = (struct mt_hello){.role = MT_ROLE_CONNECTOR,
	                              .kind = MT_SESSION_CONTROL,
	                              .sw_version = {(const uint8_t *)"raw", 3}};
	len = wire_encode(buf, size, &m);
	return len > 0 ? (size_t)len : 0;
}

/* Sends out[] from a raw connector and expects the broker session to refuse it. */
static void raw_refused(const uint8_t *out, size_t len, const char *reason,
                        const struct session_opts *bo_in)
{
	struct session_opts bo = bo_in ? *bo_in : opts_for(MT_ROLE_BROKER);
	static struct raw r;
	struct mt_msg err;
	char msg[MT_TEXT_MAX + 1];

	tp_reset();
	T_REQUIRE(raw_start(&r, out, len, -1, &bo) == 0);
	T_CHECK(run_until(b_closed, GUARD_MS));
	drain();
	raw_join(&r);
	T_CHECK(r.handshake_ok);
	T_EQ(pb.closed, 1);
	T_CONTAINS(pb.reason, reason);
	T_EQ(pb.status, MT_STATUS_PROTOCOL);
	/* The peer got ERROR {protocol, reason} and then the close. */
	T_REQUIRE(raw_error(&r, &err) == 0);
	T_EQ(err.u.error.code, MT_STATUS_PROTOCOL);
	memcpy(msg, err.u.error.message.p, err.u.error.message.len);
	msg[err.u.error.message.len] = '\0';
	T_CONTAINS(msg, reason);
	T_CHECK(r.eof);
}

static void test_first_frame_not_hello(void)
{
	uint8_t buf[64];
	struct mt_msg m = {.hdr.type = MT_PING, .u.ping.token = 1};
	int len = wire_encode(buf, sizeof(buf), &m);

	T_REQUIRE(len > 0);
	raw_refused(buf, (size_t)len, "first frame is PING, not HELLO", NULL);
	T_EQ(pb.established, 0);
}

static void test_garbage_after_handshake(void)
{
	uint8_t buf[256];
	size_t n = conn_hello(buf, sizeof(buf));

	T_REQUIRE(n > 0);
	/* A header with version 9, then noise. */
	memcpy(buf + n, "\x09\x0b\x00\x00garbage garbage!", 20);
	raw_refused(buf, n + 20, "bad frame header", NULL);
	T_EQ(pb.established, 1);
}

static void test_oversized_frame(void)
{
	uint8_t buf[256];
	size_t n = conn_hello(buf, sizeof(buf));

	T_REQUIRE(n > 0);
	/* DATA announcing 16369 payload bytes: refused from the header alone. */
	wire_encode_data_hdr(buf + n, 1, 0, MT_FRAME_MAX_PAYLOAD + 1);
	raw_refused(buf, n + MT_FRAME_HDR, "bad frame header", NULL);
}

static void test_data_beyond_window(void)
{
	struct session_opts bo = opts_for(MT_ROLE_BROKER);
	uint8_t buf[1024];
	size_t n = conn_hello(buf, sizeof(buf));

	T_REQUIRE(n > 0);
	bo.recv_window = 100;
	wire_encode_data_hdr(buf + n, 1, 0, 60);
	memset(buf + n + MT_FRAME_HDR, 'x', 60);
	n += MT_FRAME_HDR + 60;
	wire_encode_data_hdr(buf + n, 1, 1, 60);
	memset(buf + n + MT_FRAME_HDR, 'y', 60);
	n += MT_FRAME_HDR + 60;
	raw_refused(buf, n, "DATA of 60 bytes beyond the connection window (40 left)", &bo);
	T_EQ(pb.data, 60);
}

static void test_window_overflow(void)
{
	uint8_t buf[256];
	size_t n = conn_hello(buf, sizeof(buf));
	struct mt_msg m = {.hdr.type = MT_WINDOW, .u.window.increment = MT_WINDOW_MAX};
	int len;

	T_REQUIRE(n > 0);
	len = wire_encode(buf + n, sizeof(buf) - n, &m);
	T_REQUIRE(len > 0);
	n += (size_t)len;
	m.u.window.increment = 1;
	len = wire_encode(buf + n, sizeof(buf) - n, &m);
	T_REQUIRE(len > 0);
	n += (size_t)len;
	raw_refused(buf, n, "connection window over 2^31-1", NULL);
}

/* The TLS layer's refusal reaches on_closed on both ends; no HELLO ever. */
static void test_tls_refused(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), co = opts_for(MT_ROLE_CONNECTOR);

	tp_reset();
	/* A connector's server accepts brokers only. */
	T_REQUIRE(pair(agent_cli, &ao, &pa, conn_srv, &co, &pb) == 0);
	T_CHECK(run_until(ab_closed, GUARD_MS));
	T_EQ(pa.established + pb.established, 0);
	/* TLS 1.3: the client checks the server first, and refuses. */
	T_CONTAINS(pa.reason, "TLS handshake failed");
	T_CONTAINS(pa.reason, "role 'connector' not accepted");
	T_EQ(pa.status, MT_STATUS_DENIED);
	T_CONTAINS(pb.reason, "peer refused");
	drain();
}

static bool pings_seen(void)
{
	struct session_stats a, b;

	if (pa.closed || pb.closed)
		return true;
	session_get_stats(pa.s, &a);
	session_get_stats(pb.s, &b);
	return a.pongs_in >= 8 && b.pongs_in >= 8;
}

static void test_keepalive_idle(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);
	struct session_stats st;
	uint64_t t0;

	tp_reset();
	ao.idle_ms = bo.idle_ms = 20;
	ao.dead_ms = bo.dead_ms = 100;
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_REQUIRE(run_until(ab_established, GUARD_MS) && pa.established && pb.established);
	t0 = now_ms();
	T_CHECK(run_until(pings_seen, GUARD_MS));
	/* Well past the dead interval with no frame but PING and PONG: still up. */
	T_CHECK(now_ms() - t0 >= 120);
	T_EQ(pa.closed + pb.closed, 0);
	if (pa.closed || pb.closed)
		printf("# closed: \"%s\" / \"%s\"\n", pa.reason, pb.reason);
	T_REQUIRE(pa.s && pb.s);
	session_get_stats(pa.s, &st);
	T_CHECK(st.pings_out >= 8);
	T_CHECK(st.pongs_in >= 8);
	T_CHECK(session_is_established(pa.s));
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

static void test_silent_peer_closed(void)
{
	struct session_opts bo = opts_for(MT_ROLE_BROKER);
	static struct raw r;
	uint8_t buf[256];
	size_t n = conn_hello(buf, sizeof(buf));
	uint64_t t0;
	int hold[2];

	tp_reset();
	T_REQUIRE(n > 0 && pipe(hold) == 0);
	bo.idle_ms = 30;
	bo.dead_ms = 150;
	T_REQUIRE(raw_start(&r, buf, n, hold[0], &bo) == 0);
	T_REQUIRE(run_until(b_established, GUARD_MS) && pb.established);
	t0 = now_ms();
	T_CHECK(run_until(b_closed, GUARD_MS));
	T_CHECK(now_ms() - t0 >= 140);
	T_EQ(pb.established, 1);
	T_STREQ(pb.reason, "peer silent for 0.150 s");
	T_EQ(pb.status, MT_STATUS_TIMEOUT);
	T_CHECK(write(hold[1], "x", 1) == 1);
	drain();
	raw_join(&r);
	close(hold[0]);
	close(hold[1]);
}

static void test_handshake_timeout(void)
{
	struct session_opts bo = opts_for(MT_ROLE_BROKER);
	int fds[2];

	tp_reset();
	bo.handshake_ms = 50;
	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
	pb.s = session_new(ring, broker_srv, fds[1], &bo, &tp_ops, &pb);
	T_REQUIRE(pb.s);
	/* The other end never says anything. */
	T_CHECK(run_until(b_closed, GUARD_MS));
	T_STREQ(pb.reason, "handshake not done after 0.050 s");
	T_EQ(pb.status, MT_STATUS_TIMEOUT);
	drain();
	close(fds[0]);
}

static void test_backpressure(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);
	uint8_t frame[MT_FRAME_MAX];
	unsigned sent = 0;
	int ret = 0;

	tp_reset();
	bo.recv_window = MT_WINDOW_MAX;
	ao.high_water = 64U << 10;
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_REQUIRE(run_until(ab_established, GUARD_MS) && pa.established && pb.established);
	pb.consume_now = true;
	/* Without running the ring nothing drains: the watermark must stop us. */
	while (sent < 100) {
		wire_encode_data_hdr(frame, 9, sent, MT_FRAME_MAX_PAYLOAD);
		for (unsigned k = 0; k < MT_FRAME_MAX_PAYLOAD; k++)
			frame[MT_FRAME_HDR + k] =
			    pattern((uint64_t)sent * MT_FRAME_MAX_PAYLOAD + k);
		ret = session_send_frame(pa.s, frame, MT_FRAME_MAX);
		if (ret < 0)
			break;
		sent++;
	}
	T_EQ(ret, -EAGAIN);
	/* The window (2^31-1) was not what stopped it. */
	T_CHECK(session_send_credit(pa.s) > 100U * MT_FRAME_MAX);
	T_CHECK(sent >= 3 && sent <= 8);
	T_EQ(pa.writable, 0);
	T_CHECK(run_until(NULL, 0) || true);
	{
		uint64_t t0 = now_ms();

		while (!pa.writable && now_ms() - t0 < GUARD_MS)
			run_until(NULL, 5);
	}
	T_EQ(pa.writable, 1);
	wire_encode_data_hdr(frame, 9, sent, 10);
	memset(frame + MT_FRAME_HDR, 0, 10);
	for (unsigned k = 0; k < 10; k++)
		frame[MT_FRAME_HDR + k] = pattern((uint64_t)sent * MT_FRAME_MAX_PAYLOAD + k);
	T_EQ(session_send_frame(pa.s, frame, MT_FRAME_HDR + 10), 0);
	T_EQ(pa.closed + pb.closed, 0);
	tp_close(&pa);
	tp_close(&pb);
	drain();
}

static void test_close_notify(void)
{
	T_REQUIRE(agent_broker() == 0);
	session_close(pa.s, MT_STATUS_SHUTDOWN, NULL);
	pa.s = NULL;
	T_CHECK(run_until(b_closed, GUARD_MS));
	T_STREQ(pb.reason, "peer closed the session");
	T_EQ(pb.status, MT_STATUS_SHUTDOWN);
	T_EQ(pa.closed, 0); /* no on_closed for a close of one's own */
	drain();
}

static void test_close_inside_callbacks(void)
{
	struct session_opts ao = opts_for(MT_ROLE_AGENT), bo = opts_for(MT_ROLE_BROKER);
	struct mt_msg m = {.hdr.type = MT_FIN, .hdr.id = 3};

	/* From on_frame, with more frames behind it in the same read. */
	T_REQUIRE(agent_broker() == 0);
	pb.close_on_frame = true;
	for (int i = 0; i < 5; i++)
		T_EQ(session_send_msg(pa.s, &m), 0);
	T_CHECK(run_until(a_closed, GUARD_MS));
	T_EQ(pb.nframes, 1);
	T_EQ(pb.closed, 0);
	T_CONTAINS(pa.reason, "closing from on_frame");
	T_EQ(pa.status, MT_STATUS_REFUSED);
	drain();

	/* From on_established. */
	tp_reset();
	pb.close_on_established = true;
	T_REQUIRE(pair(agent_cli, &ao, &pa, broker_srv, &bo, &pb) == 0);
	T_CHECK(run_until(a_closed, GUARD_MS));
	T_EQ(pb.established, 1);
	T_CONTAINS(pa.reason, "closing from on_established");
	drain();
}

/* Dialing: a loopback listener that refuses (closed), then reopens on the same port. */
#define DIAL_FAILS 8
static struct sockaddr_in dial_addr;
static int dial_lfd = -1;
static unsigned dial_retries[32], dial_delays[32];
static uint64_t dial_times[32];
static unsigned dial_nretries;

static void dial_accept(struct ring *r, int fd, void *arg)
{
	struct session_opts bo = opts_for(MT_ROLE_BROKER);

	if (fd < 0)
		return;
	pb.established = 0;
	pb.closed = 0;
	pb.s = session_new(r, broker_srv, fd, &bo, &tp_ops, &pb);
	if (!pb.s)
		close(fd);
}

static int dial_listen(void)
{
	int one = 1;

	dial_lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (dial_lfd < 0 || setsockopt(dial_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(dial_lfd, (struct sockaddr *)&dial_addr, sizeof(dial_addr)) < 0 ||
	    listen(dial_lfd, 8) < 0)
		return -errno;
	return ring_accept(ring, dial_lfd, dial_accept, NULL);
}

static void dial_retry_cb(struct session_dialer *d, unsigned attempt, uint32_t delay_ms,
                          const char *reason, void *arg)
{
	if (dial_nretries < 32) {
		dial_retries[dial_nretries] = attempt;
		dial_delays[dial_nretries] = delay_ms;
		dial_times[dial_nretries] = now_ms();
	}
	dial_nretries++;
	if (dial_nretries == DIAL_FAILS && dial_lfd < 0 && dial_listen() < 0)
		printf("# cannot reopen the listener\n");
}

static unsigned want_est;

static bool a_est_n(void)
{
	return pa.established >= want_est || dial_nretries >= 30;
}

static uint64_t stable_since;

static bool stable_passed(void)
{
	return now_ms() - stable_since >= 80;
}

static void test_dial_backoff(void)
{
	struct session_dial_opts o = {.sess = opts_for(MT_ROLE_AGENT),
	                              .backoff_base_ms = 4,
	                              .backoff_max_ms = 64,
	                              .stable_ms = 50,
	                              .on_retry = dial_retry_cb};
	socklen_t alen = sizeof(dial_addr);
	struct session_dialer *d;
	bool jittered = false;
	unsigned late_max = 0;
	int fd;

	tp_reset();
	dial_nretries = 0;
	/* A port that was just free, now refused. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_REQUIRE(fd >= 0);
	memset(&dial_addr, 0, sizeof(dial_addr));
	dial_addr.sin_family = AF_INET;
	dial_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	T_REQUIRE(bind(fd, (struct sockaddr *)&dial_addr, sizeof(dial_addr)) == 0);
	T_REQUIRE(getsockname(fd, (struct sockaddr *)&dial_addr, &alen) == 0);
	close(fd);

	d = session_dial(ring, agent_cli, (struct sockaddr *)&dial_addr, sizeof(dial_addr), &o,
	                 &tp_ops, &pa);
	T_REQUIRE(d);
	want_est = 1;
	T_CHECK(run_until(a_est_n, GUARD_MS));
	T_EQ(pa.established, 1);
	T_EQ(dial_nretries, DIAL_FAILS);
	for (unsigned i = 0; i < DIAL_FAILS && i < 32; i++) {
		uint32_t cap = 4U << i > 64 ? 64 : 4U << i;

		T_EQ(dial_retries[i], i + 1);
		T_CHECK(dial_delays[i] <= cap);
		if (dial_delays[i] != cap)
			jittered = true;
		if (i >= 3 && dial_delays[i] > late_max)
			late_max = dial_delays[i];
		/* The wait was kept: the next attempt failed no sooner than the delay. */
		if (i + 1 < DIAL_FAILS)
			T_CHECK(dial_times[i + 1] - dial_times[i] + 1 >= dial_delays[i]);
	}
	T_CHECK(jittered);
	T_CHECK(late_max > 4); /* the bound grew past the base */
	T_REQUIRE(session_dialer_session(d) == pa.s);

	/* Lived past stable_ms, then lost: the count starts again at 1 and it comes back. */
	stable_since = now_ms();
	run_until(stable_passed, GUARD_MS);
	T_REQUIRE(pb.s);
	session_close(pb.s, MT_STATUS_SHUTDOWN, "maintenance");
	pb.s = NULL;
	want_est = 2;
	T_CHECK(run_until(a_est_n, GUARD_MS));
	T_EQ(pa.established, 2);
	T_EQ(pa.closed, 1);
	T_CONTAINS(pa.reason, "maintenance");
	T_EQ(dial_nretries, DIAL_FAILS + 1);
	T_EQ(dial_retries[DIAL_FAILS], 1);

	session_dial_stop(d);
	pa.s = NULL;
	T_CHECK(run_until(b_closed, GUARD_MS));
	T_STREQ(pb.reason, "peer closed the session");
	if (dial_lfd >= 0)
		ring_close(ring, dial_lfd, NULL, NULL);
	dial_lfd = -1;
	drain();
	T_EQ(dial_nretries, DIAL_FAILS + 1); /* stopped: no more attempts */
}

static void test_dial_stop_while_waiting(void)
{
	struct session_dial_opts o = {
	    .sess = opts_for(MT_ROLE_AGENT), .backoff_base_ms = 1000, .on_retry = dial_retry_cb};
	struct sockaddr_in sin = {
	    .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
	struct session_dialer *d;
	unsigned n;

	tp_reset();
	dial_nretries = 0;
	d = session_dial(ring, agent_cli, (struct sockaddr *)&sin, sizeof(sin), &o, &tp_ops, &pa);
	T_REQUIRE(d);
	/* Stopped before its first connect even ran, then once waiting. */
	session_dial_stop(d);
	drain();
	T_EQ(dial_nretries, 0);
	d = session_dial(ring, agent_cli, (struct sockaddr *)&sin, sizeof(sin), &o, &tp_ops, &pa);
	T_REQUIRE(d);
	while (dial_nretries == 0)
		run_until(NULL, 5);
	/* Full jitter may have fired a second retry already: what matters is none after. */
	session_dial_stop(d);
	n = dial_nretries;
	drain();
	T_CHECK(n >= 1);
	T_EQ(dial_nretries, n);
	T_EQ(pa.established + pa.closed, 0);
}

static void test_bad_options(void)
{
	struct session_opts o = opts_for(MT_ROLE_AGENT);
	int fds[2];

	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
	o.bufs = NULL;
	errno = 0;
	T_CHECK(!session_new(ring, agent_cli, fds[0], &o, &tp_ops, &pa));
	T_EQ(errno, EINVAL);
	o = opts_for(MT_ROLE_AGENT);
	o.group = "a-group-name-that-is-much-too-long-for-a-token-of-sixty-four-bytes!!";
	T_CHECK(!session_new(ring, agent_cli, fds[0], &o, &tp_ops, &pa));
	o = opts_for(MT_ROLE_NONE);
	T_CHECK(!session_new(ring, agent_cli, fds[0], &o, &tp_ops, &pa));
	close(fds[0]);
	close(fds[1]);
}

static void guard(int sig)
{
	(void)sig;
	printf("# guard timer fired: a test hung\nBail out!\n");
	fflush(stdout);
	_exit(1);
}

static int make_leaf(const char *uri, struct pki_cert *out)
{
	const char *uris[] = {uri};

	return pki_leaf_new(&inter, uris, 1, -60, 86400, out);
}

static struct tls_ctx *ctx(bool server, struct pki_cert *leaf, uint32_t roles)
{
	struct tls_conf c = {
	    .server = server,
	    .cert = leaf->cert,
	    .chain = chain,
	    .key = leaf->key,
	    .anchors = anchors,
	    .peer_roles = roles,
	    .peer_tenant = "acme",
	};
	const char *why = NULL;
	struct tls_ctx *x = tls_ctx_new(&c, &why);

	if (!x)
		printf("# tls_ctx_new: %s\n", why ? why : "?");
	return x;
}

static int setup(void)
{
	uint32_t agents_conns = MT_ROLE_BIT(MT_ROLE_AGENT) | MT_ROLE_BIT(MT_ROLE_CONNECTOR);

	if (pki_root_new("acme root", &root) || pki_ca_new(&root, "acme tenant", &inter) ||
	    make_leaf(URI_AGENT, &agent_leaf) || make_leaf(URI_BROKER, &broker_leaf) ||
	    make_leaf(URI_CONN, &conn_leaf))
		return -1;
	anchors = sk_X509_new_null();
	chain = sk_X509_new_null();
	if (!anchors || !chain || !sk_X509_push(anchors, root.cert) ||
	    !sk_X509_push(chain, inter.cert))
		return -1;
	broker_srv = ctx(true, &broker_leaf, agents_conns);
	agent_cli = ctx(false, &agent_leaf, MT_ROLE_BIT(MT_ROLE_BROKER));
	conn_cli = ctx(false, &conn_leaf, MT_ROLE_BIT(MT_ROLE_BROKER));
	conn_srv = ctx(true, &conn_leaf, MT_ROLE_BIT(MT_ROLE_BROKER));
	broker_cli = ctx(false, &broker_leaf, MT_ROLE_BIT(MT_ROLE_CONNECTOR));
	if (!broker_srv || !agent_cli || !conn_cli || !conn_srv || !broker_cli)
		return -1;
	ring = ring_new(256);
	if (!ring)
		return -1;
	bufs = ring_bufgroup_new(ring, 64, 16384);
	return bufs ? 0 : -1;
}

static void teardown(void)
{
	ring_free(ring);
	tls_ctx_free(broker_srv);
	tls_ctx_free(agent_cli);
	tls_ctx_free(conn_cli);
	tls_ctx_free(conn_srv);
	tls_ctx_free(broker_cli);
	sk_X509_free(anchors);
	sk_X509_free(chain);
	pki_cert_free(&agent_leaf);
	pki_cert_free(&broker_leaf);
	pki_cert_free(&conn_leaf);
	pki_cert_free(&inter);
	pki_cert_free(&root);
	tp_reset();
}

int main(void)
{
	signal(SIGALRM, guard);
	alarm(300);
	signal(SIGPIPE, SIG_IGN);
	if (setup() < 0) {
		printf("Bail out! test PKI or ring setup failed\n");
		return 1;
	}
	T_RUN(test_hello_exchange);
	T_RUN(test_frames_both_ways);
	T_RUN(test_batched_flush);
	T_RUN(test_bulk_window);
	T_RUN(test_bulk_fast);
	T_RUN(test_relay_in_place);
	T_RUN(test_wrong_role_refused);
	T_RUN(test_device_proof_wrong);
	T_RUN(test_device_proof_missing);
	T_RUN(test_first_frame_not_hello);
	T_RUN(test_garbage_after_handshake);
	T_RUN(test_oversized_frame);
	T_RUN(test_data_beyond_window);
	T_RUN(test_window_overflow);
	T_RUN(test_tls_refused);
	T_RUN(test_keepalive_idle);
	T_RUN(test_silent_peer_closed);
	T_RUN(test_handshake_timeout);
	T_RUN(test_backpressure);
	T_RUN(test_close_notify);
	T_RUN(test_close_inside_callbacks);
	T_RUN(test_dial_backoff);
	T_RUN(test_dial_stop_while_waiting);
	T_RUN(test_bad_options);
	teardown();
	return t_done();
}
