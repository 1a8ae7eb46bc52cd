/* Tests for lib/wire.c: every message both ways, and refusal (with a reason) of every malformed
 * form. */
#include <errno.h>
#include <stdio.h>

#include "lib/wire.h"
#include "t.h"

#define S(str) ((struct mt_bytes){(const uint8_t *)(str), (uint16_t)strlen(str)})

static uint8_t buf[MT_FRAME_MAX];
static uint8_t buf2[MT_FRAME_MAX];
static const uint8_t cookie[MT_COOKIE_LEN] = {1, 2,  3,  4,  5,  6,  7,  8,
                                              9, 10, 11, 12, 13, 14, 15, 16};

static bool bytes_eq(struct mt_bytes b, const char *s)
{
	return b.len == strlen(s) && memcmp(b.p, s, b.len) == 0;
}

/* Encodes m, decodes it into out; returns the frame length or a negative error. */
static int round_trip(const struct mt_msg *m, struct mt_msg *out)
{
	const char *why = NULL;
	int n = wire_encode(buf, sizeof(buf), m);

	if (n < 0)
		return n;
	if (wire_decode(buf, (size_t)n, out, &why) < 0) {
		printf("# decode: %s\n", why ? why : "(no reason)");
		return -EPROTO;
	}
	if (out->hdr.type != m->hdr.type || out->hdr.id != m->hdr.id ||
	    out->hdr.len != (uint32_t)n - MT_FRAME_HDR)
		return -EBADMSG;
	return n;
}

/* Writes a raw frame: header fields and a body. */
static size_t raw_frame(uint8_t *b, uint8_t ver, uint8_t type, uint16_t flags, uint32_t id,
                        uint32_t seq, const uint8_t *body, size_t len)
{
	b[0] = ver;
	b[1] = type;
	b[2] = (uint8_t)(flags >> 8);
	b[3] = (uint8_t)flags;
	b[4] = (uint8_t)(id >> 24);
	b[5] = (uint8_t)(id >> 16);
	b[6] = (uint8_t)(id >> 8);
	b[7] = (uint8_t)id;
	b[8] = (uint8_t)(len >> 24);
	b[9] = (uint8_t)(len >> 16);
	b[10] = (uint8_t)(len >> 8);
	b[11] = (uint8_t)len;
	b[12] = (uint8_t)(seq >> 24);
	b[13] = (uint8_t)(seq >> 16);
	b[14] = (uint8_t)(seq >> 8);
	b[15] = (uint8_t)seq;
	if (len)
		memcpy(b + MT_FRAME_HDR, body, len);
	return MT_FRAME_HDR + len;
}

/* Appends one attribute to a body under construction. */
static size_t attr(uint8_t *b, size_t at, uint16_t type, const void *v, uint16_t len)
{
	b[at] = (uint8_t)(type >> 8);
	b[at + 1] = (uint8_t)type;
	b[at + 2] = (uint8_t)(len >> 8);
	b[at + 3] = (uint8_t)len;
	memcpy(b + at + 4, v, len);
	return at + 4 + len;
}

/* Decodes a raw frame that must be refused with a reason; returns the error. */
static int refused(const uint8_t *b, size_t len, const char **why)
{
	struct mt_msg m;
	int rc;

	*why = NULL;
	rc = wire_decode(b, len, &m, why);
	return rc < 0 && *why ? rc : 0;
}

static const uint8_t ping_body[] = {0, MT_A_TOKEN, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8};

static void header_layout(void)
{
	struct mt_msg m = {.hdr = {.type = MT_DATA, .id = 0x01020304, .seq = 0x0a0b0c0d},
	                   .u.data = S("hi")};
	static const uint8_t want[] = {1, MT_DATA, 0, 0,  1,  2,  3,  4,   0,
	                               0, 0,       2, 10, 11, 12, 13, 'h', 'i'};

	T_EQ(wire_encode(buf, sizeof(buf), &m), 18);
	T_CHECK(memcmp(buf, want, sizeof(want)) == 0);
	wire_encode_data_hdr(buf2, 0x01020304, 0x0a0b0c0d, 2);
	T_CHECK(memcmp(buf2, want, MT_FRAME_HDR) == 0);
}

static void rt_hello(void)
{
	struct mt_msg m = {.hdr = {.type = MT_HELLO},
	                   .u.hello = {.role = MT_ROLE_CONNECTOR,
	                               .kind = MT_SESSION_DATA,
	                               .sw_version = S("mtun 0.1.0"),
	                               .caps = 0xdeadbeef,
	                               .group = S("dc-east"),
	                               .location = S("eu-west-1"),
	                               .has_capacity = true,
	                               .capacity = 5000,
	                               .device_proof = {cookie, 16},
	                               .cookie = {cookie, 16}}},
		      o;
	const struct mt_hello *h = &o.u.hello;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(h->role, MT_ROLE_CONNECTOR);
	T_EQ(h->kind, MT_SESSION_DATA);
	T_CHECK(bytes_eq(h->sw_version, "mtun 0.1.0"));
	T_EQ(h->caps, 0xdeadbeef);
	T_CHECK(bytes_eq(h->group, "dc-east"));
	T_CHECK(bytes_eq(h->location, "eu-west-1"));
	T_CHECK(h->has_capacity && h->capacity == 5000);
	T_CHECK(h->device_proof.len == 16 && memcmp(h->device_proof.p, cookie, 16) == 0);
	T_CHECK(h->cookie.len == 16 && memcmp(h->cookie.p, cookie, 16) == 0);
	/* Views point into the frame, not into copies. */
	T_CHECK(h->sw_version.p > buf && h->sw_version.p < buf + sizeof(buf));
}

static void rt_hello_minimal(void)
{
	struct mt_msg m = {.hdr = {.type = MT_HELLO},
	                   .u.hello = {.role = MT_ROLE_AGENT,
	                               .kind = MT_SESSION_CONTROL,
	                               .sw_version = S("1")}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.hello.role, MT_ROLE_AGENT);
	T_CHECK(!o.u.hello.has_capacity);
	T_CHECK(o.u.hello.group.len == 0 && o.u.hello.cookie.len == 0);
}

static void rt_config(void)
{
	static const struct mt_port_range r1[] = {{MT_PROTO_TCP, 22, 22}, {MT_PROTO_TCP, 80, 443}};
	static const struct mt_port_range r2[] = {{MT_PROTO_UDP, 53, 53}};
	static const struct mt_port_range r3[] = {
	    {MT_PROTO_TCP, 1, 65535}, {MT_PROTO_UDP, 1000, 2000}, {MT_PROTO_TCP, 5432, 5432}};
	struct mt_segment segs[] = {
	    {.id = 7,
	     .kind = MT_SEG_FQDN,
	     .name = S("server01.corp.example"),
	     .ranges = r1,
	     .nranges = 2,
	     .flags = MT_SEG_F_DOUBLE_ENCRYPT},
	    {.id = 8,
	     .kind = MT_SEG_WILDCARD,
	     .name = S("*.corp.example"),
	     .ranges = r2,
	     .nranges = 1},
	    {.id = 9,
	     .kind = MT_SEG_CIDR,
	     .family = 4,
	     .prefix = 24,
	     .addr = {10, 1, 2, 0},
	     .ranges = r3,
	     .nranges = 3},
	    {.id = 10,
	     .kind = MT_SEG_CIDR,
	     .family = 6,
	     .prefix = 64,
	     .addr = {0xfd, 0, 0, 0, 0, 0, 0, 1},
	     .ranges = r2,
	     .nranges = 1},
	};
	struct mt_msg m = {.hdr = {.type = MT_CONFIG, .flags = MT_FRAME_F_MORE},
	                   .u.config = {.version = 0x1122334455667788ULL,
	                                .segs = segs,
	                                .nsegs = 4}},
		      o;
	struct mt_iter it, rit;
	struct mt_segment s;
	struct mt_port_range r;
	unsigned n = 0;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.hdr.flags, MT_FRAME_F_MORE);
	T_CHECK(o.u.config.version == 0x1122334455667788ULL);
	T_EQ(o.u.config.nsegs, 4);
	wire_config_segments(&o.u.config, &it);
	while (wire_segment_next(&it, &s)) {
		const struct mt_segment *w = &segs[n];
		unsigned k = 0;

		T_REQUIRE(n < 4);
		T_EQ(s.id, w->id);
		T_EQ(s.kind, w->kind);
		T_EQ(s.flags, w->flags);
		T_EQ(s.nranges, w->nranges);
		if (w->kind == MT_SEG_CIDR) {
			T_EQ(s.family, w->family);
			T_EQ(s.prefix, w->prefix);
			T_CHECK(memcmp(s.addr, w->addr, 16) == 0);
			T_EQ(s.name.len, 0);
		} else {
			T_CHECK(s.name.len == w->name.len &&
			        memcmp(s.name.p, w->name.p, s.name.len) == 0);
		}
		wire_segment_ranges(&s, &rit);
		while (wire_range_next(&rit, &r)) {
			T_REQUIRE(k < w->nranges);
			T_EQ(r.proto, w->ranges[k].proto);
			T_EQ(r.lo, w->ranges[k].lo);
			T_EQ(r.hi, w->ranges[k].hi);
			k++;
		}
		T_EQ(k, w->nranges);
		n++;
	}
	T_EQ(n, 4);
}

static void rt_config_empty(void)
{
	struct mt_msg m = {.hdr = {.type = MT_CONFIG}, .u.config = {.version = 3}}, o;
	struct mt_iter it;
	struct mt_segment s;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(o.u.config.version == 3 && o.u.config.nsegs == 0);
	wire_config_segments(&o.u.config, &it);
	T_CHECK(!wire_segment_next(&it, &s));
}

static void rt_resolve(void)
{
	struct mt_msg m = {.hdr = {.type = MT_RESOLVE},
	                   .u.resolve = {.req_id = 77,
	                                 .name = S("server01.corp.example"),
	                                 .port = 22,
	                                 .proto = MT_PROTO_TCP}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.resolve.req_id, 77);
	T_CHECK(bytes_eq(o.u.resolve.name, "server01.corp.example"));
	T_EQ(o.u.resolve.port, 22);
	T_EQ(o.u.resolve.proto, MT_PROTO_TCP);
}

static void rt_resolve_reply(void)
{
	struct mt_msg m = {.hdr = {.type = MT_RESOLVE_REPLY},
	                   .u.resolve_reply = {.req_id = 77,
	                                       .status = MT_STATUS_NXDOMAIN,
	                                       .ttl = 30,
	                                       .reason = S("no such app")}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.resolve_reply.req_id, 77);
	T_EQ(o.u.resolve_reply.status, MT_STATUS_NXDOMAIN);
	T_EQ(o.u.resolve_reply.ttl, 30);
	T_CHECK(bytes_eq(o.u.resolve_reply.reason, "no such app"));
	m.u.resolve_reply.reason.len = 0;
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.resolve_reply.reason.len, 0);
}

static void rt_probe(void)
{
	struct mt_msg m = {.hdr = {.type = MT_PROBE},
	                   .u.probe = {.req_id = 5,
	                               .host = S("fd00::10"),
	                               .port = 443,
	                               .proto = MT_PROTO_UDP,
	                               .deadline_ms = 1500}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.probe.req_id, 5);
	T_CHECK(bytes_eq(o.u.probe.host, "fd00::10"));
	T_EQ(o.u.probe.port, 443);
	T_EQ(o.u.probe.proto, MT_PROTO_UDP);
	T_EQ(o.u.probe.deadline_ms, 1500);
}

static void rt_probe_reply(void)
{
	struct mt_msg m = {.hdr = {.type = MT_PROBE_REPLY},
	                   .u.probe_reply = {.req_id = 5,
	                                     .status = MT_STATUS_OK,
	                                     .latency_us = 812}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.probe_reply.req_id, 5);
	T_EQ(o.u.probe_reply.status, MT_STATUS_OK);
	T_EQ(o.u.probe_reply.latency_us, 812);
	T_EQ(o.u.probe_reply.reason.len, 0);
}

static void rt_open_and_reply(void)
{
	struct mt_msg m = {.hdr = {.type = MT_OPEN, .id = 42},
	                   .u.open = {.name = S("db.corp.example"),
	                              .port = 5432,
	                              .proto = MT_PROTO_TCP,
	                              .window = 262144}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.hdr.id, 42);
	T_CHECK(bytes_eq(o.u.open.name, "db.corp.example"));
	T_EQ(o.u.open.port, 5432);
	T_EQ(o.u.open.window, 262144);

	m = (struct mt_msg){
	    .hdr = {.type = MT_OPEN_REPLY, .id = 42},
	    .u.reply = {.status = MT_STATUS_DENIED, .window = 0, .reason = S("policy rule 3")}};
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.reply.status, MT_STATUS_DENIED);
	T_EQ(o.u.reply.window, 0);
	T_CHECK(bytes_eq(o.u.reply.reason, "policy rule 3"));
}

static void rt_bind_and_reply(void)
{
	struct mt_msg m = {.hdr = {.type = MT_BIND, .id = 9},
	                   .u.bind = {.host = S("10.1.2.3"),
	                              .port = 22,
	                              .proto = MT_PROTO_TCP,
	                              .broker = S("[2001:db8::1]:8443"),
	                              .cookie = {cookie, 16},
	                              .window = 65536}},
		      o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(bytes_eq(o.u.bind.host, "10.1.2.3"));
	T_EQ(o.u.bind.port, 22);
	T_CHECK(bytes_eq(o.u.bind.broker, "[2001:db8::1]:8443"));
	T_CHECK(o.u.bind.cookie.len == 16 && memcmp(o.u.bind.cookie.p, cookie, 16) == 0);
	T_EQ(o.u.bind.window, 65536);

	m = (struct mt_msg){.hdr = {.type = MT_BIND_REPLY, .id = 9},
	                    .u.reply = {.status = MT_STATUS_OK, .window = 131072}};
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.hdr.type, MT_BIND_REPLY);
	T_EQ(o.u.reply.window, 131072);
}

static void rt_data(void)
{
	static uint8_t payload[MT_FRAME_MAX_PAYLOAD];
	struct mt_msg m = {.hdr = {.type = MT_DATA, .id = 3, .seq = 99},
	                   .u.data = {payload, sizeof(payload)}},
		      o;

	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 31);
	T_REQUIRE(round_trip(&m, &o) == MT_FRAME_MAX);
	T_EQ(o.hdr.seq, 99);
	T_EQ(o.u.data.len, sizeof(payload));
	T_CHECK(memcmp(o.u.data.p, payload, sizeof(payload)) == 0);
	T_CHECK(o.u.data.p == buf + MT_FRAME_HDR);
}

static void rt_window_fin_reset(void)
{
	struct mt_msg m = {.hdr = {.type = MT_WINDOW, .id = 0}, .u.window = {.increment = 1}}, o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.hdr.id, 0);
	T_EQ(o.u.window.increment, 1);
	m.hdr.id = 12;
	m.u.window.increment = MT_WINDOW_MAX;
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.window.increment, MT_WINDOW_MAX);

	m = (struct mt_msg){.hdr = {.type = MT_FIN, .id = 12}};
	T_EQ(round_trip(&m, &o), MT_FRAME_HDR);
	T_EQ(o.hdr.type, MT_FIN);

	m = (struct mt_msg){.hdr = {.type = MT_RESET, .id = 12},
	                    .u.reset = {.status = MT_STATUS_REVOKED, .reason = S("cert revoked")}};
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.reset.status, MT_STATUS_REVOKED);
	T_CHECK(bytes_eq(o.u.reset.reason, "cert revoked"));
}

static void rt_ping_pong_error(void)
{
	struct mt_msg m = {.hdr = {.type = MT_PING}, .u.ping = {.token = UINT64_MAX - 5}}, o;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(o.u.ping.token == UINT64_MAX - 5);
	m.hdr.type = MT_PONG;
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.hdr.type, MT_PONG);
	T_CHECK(o.u.ping.token == UINT64_MAX - 5);

	m = (struct mt_msg){.hdr = {.type = MT_ERROR},
	                    .u.error = {.code = MT_STATUS_PROTOCOL, .message = S("bad frame")}};
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_EQ(o.u.error.code, MT_STATUS_PROTOCOL);
	T_CHECK(bytes_eq(o.u.error.message, "bad frame"));
}

static void names(void)
{
	T_STREQ(wire_type_name(MT_HELLO), "HELLO");
	T_STREQ(wire_type_name(MT_RESOLVE_REPLY), "RESOLVE_REPLY");
	T_STREQ(wire_type_name(MT_ERROR), "ERROR");
	T_STREQ(wire_type_name(MT_POSTURE_QUERY), "POSTURE_QUERY");
	T_STREQ(wire_type_name(MT_POSTURE), "POSTURE");
	T_STREQ(wire_type_name(0), "UNKNOWN");
	T_STREQ(wire_type_name(200), "UNKNOWN");
	T_STREQ(wire_status_name(MT_STATUS_OK), "ok");
	T_STREQ(wire_status_name(MT_STATUS_NO_CONNECTOR), "no_connector");
	T_STREQ(wire_status_name(MT_STATUS_SHUTDOWN), "shutdown");
	T_STREQ(wire_status_name(MT_STATUS_MAX), "unknown");
}

static void refuse_truncated_header(void)
{
	struct mt_hdr h;
	const char *why;
	size_t n = raw_frame(buf, 1, MT_PING, 0, 0, 0, ping_body, sizeof(ping_body));

	for (size_t len = 0; len < MT_FRAME_HDR; len++)
		T_EQ(wire_peek_header(buf, len, &h, &why), -EAGAIN);
	T_EQ(refused(buf, 10, &why), -EPROTO);
	T_STREQ(why, "truncated header");
	T_EQ(wire_peek_header(buf, n, &h, &why), 0);
}

static void refuse_truncated_body(void)
{
	const char *why;
	size_t n = raw_frame(buf, 1, MT_PING, 0, 0, 0, ping_body, sizeof(ping_body));

	T_EQ(refused(buf, n - 1, &why), -EPROTO);
	T_STREQ(why, "truncated frame");
	/* The header says 12 bytes, the attribute inside claims more than that. */
	buf[MT_FRAME_HDR + 3] = 9;
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "attribute longer than its message");
	/* A body that ends inside an attribute header. */
	n = raw_frame(buf, 1, MT_PING, 0, 0, 0, ping_body, 3);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "truncated attribute header");
}

static void refuse_oversized(void)
{
	struct mt_hdr h;
	const char *why = NULL;

	raw_frame(buf, 1, MT_DATA, 0, 1, 0, NULL, 0);
	buf[10] = 0x40;
	buf[11] = 0x00; /* 16384 payload bytes: one header too many */
	T_EQ(wire_peek_header(buf, MT_FRAME_HDR, &h, &why), -EMSGSIZE);
	T_CHECK(why != NULL);
	buf[10] = 0x3f;
	buf[11] = 0xf0; /* 16368: the largest allowed */
	T_EQ(wire_peek_header(buf, MT_FRAME_HDR, &h, &why), 0);
	T_EQ(wire_frame_len(&h), MT_FRAME_MAX);
	buf[8] = 0xff; /* 4 GiB claim */
	T_EQ(wire_peek_header(buf, MT_FRAME_HDR, &h, &why), -EMSGSIZE);
}

static void refuse_unknown_type(void)
{
	const char *why;
	size_t n = raw_frame(buf, 1, MT_TYPE_MAX, 0, 0, 0, NULL, 0);

	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "unknown frame type");
	n = raw_frame(buf, 1, 0, 0, 0, 0, NULL, 0);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "unknown frame type");
}

static void refuse_bad_version(void)
{
	const char *why;
	size_t n = raw_frame(buf, 2, MT_PING, 0, 0, 0, ping_body, sizeof(ping_body));

	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "unsupported protocol version");
	n = raw_frame(buf, 0, MT_PING, 0, 0, 0, ping_body, sizeof(ping_body));
	T_EQ(refused(buf, n, &why), -EPROTO);
}

static void refuse_flags_and_seq(void)
{
	const char *why;
	size_t n = raw_frame(buf, 1, MT_PING, MT_FRAME_F_MORE, 0, 0, ping_body, sizeof(ping_body));

	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "flags not defined for this frame type");
	n = raw_frame(buf, 1, MT_DATA, 0x8000, 1, 0, NULL, 0);
	T_EQ(refused(buf, n, &why), -EPROTO);
	n = raw_frame(buf, 1, MT_PING, 0, 0, 5, ping_body, sizeof(ping_body));
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "sequence number on a non-DATA frame");
}

static void refuse_wrong_id(void)
{
	const char *why;
	size_t n = raw_frame(buf, 1, MT_PING, 0, 7, 0, ping_body, sizeof(ping_body));

	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "control frame on a non-zero mtunnel id");
	n = raw_frame(buf, 1, MT_DATA, 0, 0, 0, (const uint8_t *)"x", 1);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "per-mtunnel frame on mtunnel id 0");
	n = raw_frame(buf, 1, MT_FIN, 0, 0, 0, NULL, 0);
	T_EQ(refused(buf, n, &why), -EPROTO);
	/* The encoder refuses the same. */
	struct mt_msg m = {.hdr = {.type = MT_HELLO, .id = 1},
	                   .u.hello = {.role = MT_ROLE_AGENT, .kind = 1, .sw_version = S("1")}};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
}

static void refuse_bad_attr_length(void)
{
	uint8_t body[64];
	uint32_t inc = htobe32(5);
	const char *why;
	size_t n, b;

	b = attr(body, 0, MT_A_INCREMENT, &inc, 3);
	n = raw_frame(buf, 1, MT_WINDOW, 0, 1, 0, body, b);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "bad attribute length");
	b = attr(body, 0, MT_A_TOKEN, "123456789", 9);
	n = raw_frame(buf, 1, MT_PING, 0, 0, 0, body, b);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "bad attribute length");
	n = raw_frame(buf, 1, MT_FIN, 0, 1, 0, body, 1);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "FIN with a payload");
}

static void refuse_missing_attr(void)
{
	struct mt_msg m = {
	    .hdr = {.type = MT_RESOLVE},
	    .u.resolve = {.req_id = 1, .name = S("a.example"), .port = 22, .proto = MT_PROTO_TCP}};
	const char *why;
	int n = wire_encode(buf, sizeof(buf), &m);
	size_t len;

	T_REQUIRE(n > 0);
	/* Drop the last attribute (proto: 4 + 1 bytes) by shortening the frame. */
	len = (size_t)n - 5;
	buf[11] = (uint8_t)(len - MT_FRAME_HDR);
	T_EQ(refused(buf, len, &why), -EPROTO);
	T_STREQ(why, "missing required attribute");
	n = (int)raw_frame(buf, 1, MT_PING, 0, 0, 0, NULL, 0);
	T_EQ(refused(buf, (size_t)n, &why), -EPROTO);
	T_STREQ(why, "missing required attribute");
}

static void refuse_duplicate_attr(void)
{
	uint8_t body[64];
	uint32_t inc = htobe32(5);
	const char *why;
	size_t n, b;

	b = attr(body, 0, MT_A_INCREMENT, &inc, 4);
	b = attr(body, b, MT_A_INCREMENT, &inc, 4);
	n = raw_frame(buf, 1, MT_WINDOW, 0, 1, 0, body, b);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "duplicate attribute");
	/* The mandatory bit does not make a second copy a different attribute. */
	b = attr(body, 0, MT_A_INCREMENT, &inc, 4);
	b = attr(body, b, MT_A_INCREMENT | MT_ATTR_MANDATORY, &inc, 4);
	n = raw_frame(buf, 1, MT_WINDOW, 0, 1, 0, body, b);
	T_EQ(refused(buf, n, &why), -EPROTO);
}

static void unknown_attrs(void)
{
	uint8_t body[64];
	uint32_t inc = htobe32(5);
	struct mt_msg m;
	const char *why = NULL;
	size_t n, b;

	/* An unknown optional attribute, before and after the known one, is skipped. */
	b = attr(body, 0, 999, "future", 6);
	b = attr(body, b, MT_A_INCREMENT, &inc, 4);
	b = attr(body, b, 0x7fff, "", 0);
	n = raw_frame(buf, 1, MT_WINDOW, 0, 1, 0, body, b);
	T_EQ(wire_decode(buf, n, &m, &why), 0);
	T_EQ(m.u.window.increment, 5);
	/* The same with the mandatory bit is refused. */
	b = attr(body, 0, 999 | MT_ATTR_MANDATORY, "future", 6);
	b = attr(body, b, MT_A_INCREMENT, &inc, 4);
	n = raw_frame(buf, 1, MT_WINDOW, 0, 1, 0, body, b);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "unknown mandatory attribute");
}

static void refuse_bad_strings(void)
{
	static const char *const bad_names[] = {
	    "a\0b", "a b", "-x.example\x80", "a..b", ".a", "a.", "exa\nmple", "*.example", "a/b",
	};
	uint8_t body[512];
	uint32_t req = htobe32(1);
	uint16_t port = htobe16(22);
	uint8_t proto = MT_PROTO_TCP;
	const char *why;

	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		size_t len = i == 0 ? 3 : strlen(bad_names[i]), b, n;

		b = attr(body, 0, MT_A_REQ_ID, &req, 4);
		b = attr(body, b, MT_A_NAME, bad_names[i], (uint16_t)len);
		b = attr(body, b, MT_A_PORT, &port, 2);
		b = attr(body, b, MT_A_PROTO, &proto, 1);
		n = raw_frame(buf, 1, MT_RESOLVE, 0, 0, 0, body, b);
		if (refused(buf, n, &why) != -EPROTO)
			t_fail(__FILE__, __LINE__, "accepted name %zu", i);
	}
	/* A reason with a control byte; an error message with a NUL. */
	struct mt_msg m = {.hdr = {.type = MT_RESET, .id = 1},
	                   .u.reset = {.status = 0, .reason = S("bad\x01")}};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.reset.reason = S("fine reason");
	int n = wire_encode(buf, sizeof(buf), &m);
	T_REQUIRE(n > 0);
	buf[n - 1] = '\0';
	T_EQ(refused(buf, (size_t)n, &why), -EPROTO);
	T_STREQ(why, "bad reason text");
	/* The broker address must be host:port. */
	struct mt_msg bm = {.hdr = {.type = MT_BIND, .id = 9},
	                    .u.bind = {.host = S("h"),
	                               .port = 22,
	                               .proto = MT_PROTO_TCP,
	                               .broker = S("broker.example"),
	                               .cookie = {cookie, 16}}};
	T_EQ(wire_encode(buf, sizeof(buf), &bm), -EINVAL);
	bm.u.bind.broker = S("broker.example:70000");
	T_EQ(wire_encode(buf, sizeof(buf), &bm), -EINVAL);
	bm.u.bind.broker = S("broker.example:8443");
	T_CHECK(wire_encode(buf, sizeof(buf), &bm) > 0);
	/* An IPv6 literal with a NUL inside would be read back shorter than it was checked. */
	bm.u.bind.broker = (struct mt_bytes){(const uint8_t *)"[::1\0x]:8443", 12};
	T_EQ(wire_encode(buf, sizeof(buf), &bm), -EINVAL);
	bm.u.bind.broker = S("[::1]:8443");
	bm.u.bind.host = (struct mt_bytes){(const uint8_t *)"::1\0::2", 8};
	T_EQ(wire_encode(buf, sizeof(buf), &bm), -EINVAL);
	bm.u.bind.host = S("2001:db8::10");
	T_CHECK(wire_encode(buf, sizeof(buf), &bm) > 0);
}

static void refuse_name_too_long(void)
{
	char name[300];
	struct mt_msg m = {.hdr = {.type = MT_RESOLVE},
	                   .u.resolve = {.req_id = 1, .port = 22, .proto = MT_PROTO_TCP}};
	const char *why;
	int n;

	/* 253 bytes: labels of 63 joined by dots is the longest legal name. */
	memset(name, 'a', sizeof(name));
	for (int i = 63; i < 253; i += 64)
		name[i] = '.';
	m.u.resolve.name = (struct mt_bytes){(const uint8_t *)name, 253};
	n = wire_encode(buf, sizeof(buf), &m);
	T_REQUIRE(n > 0);
	/* One byte more is refused by the encoder and, built by hand, by the decoder. */
	m.u.resolve.name.len = 254;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	uint8_t body[400];
	uint32_t req = htobe32(1);
	size_t b = attr(body, 0, MT_A_REQ_ID, &req, 4);
	b = attr(body, b, MT_A_NAME, name, 254);
	size_t len = raw_frame(buf, 1, MT_RESOLVE, 0, 0, 0, body, b);
	T_EQ(refused(buf, len, &why), -EPROTO);
	T_STREQ(why, "bad name");
	/* A label over 63. */
	memset(name, 'a', 64);
	m.u.resolve.name.len = 64;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
}

static void refuse_bad_values(void)
{
	struct mt_msg m = {.hdr = {.type = MT_WINDOW, .id = 1}, .u.window = {.increment = 0}};
	uint8_t body[32];
	uint32_t zero = 0;
	const char *why;
	size_t n;

	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	n = raw_frame(buf, 1, MT_WINDOW, 0, 1, 0, body, attr(body, 0, MT_A_INCREMENT, &zero, 4));
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "window increment not in 1..2^31-1");
	m.u.window.increment = MT_WINDOW_MAX + 1;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);

	m = (struct mt_msg){.hdr = {.type = MT_OPEN, .id = 1},
	                    .u.open = {.name = S("a"), .port = 0, .proto = MT_PROTO_TCP}};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.open.port = 1;
	m.u.open.proto = 1; /* ICMP */
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m = (struct mt_msg){.hdr = {.type = MT_RESET, .id = 1},
	                    .u.reset = {.status = MT_STATUS_MAX}};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	/* A bind cookie in an agent's hello. */
	m = (struct mt_msg){.hdr = {.type = MT_HELLO},
	                    .u.hello = {.role = MT_ROLE_AGENT,
	                                .kind = MT_SESSION_DATA,
	                                .sw_version = S("1"),
	                                .cookie = {cookie, 16}}};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.hello.role = MT_ROLE_NONE;
	m.u.hello.cookie.len = 0;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
}

static void refuse_bad_segments(void)
{
	static const struct mt_port_range ok[] = {{MT_PROTO_TCP, 22, 22}};
	static const struct mt_port_range rev[] = {{MT_PROTO_TCP, 23, 22}};
	struct mt_segment s = {.id = 1,
	                       .kind = MT_SEG_CIDR,
	                       .family = 4,
	                       .prefix = 24,
	                       .addr = {10, 0, 0, 1},
	                       .ranges = ok,
	                       .nranges = 1};
	struct mt_msg m = {.hdr = {.type = MT_CONFIG},
	                   .u.config = {.version = 1, .segs = &s, .nsegs = 1}};

	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL); /* host bits set */
	s.addr[3] = 0;
	T_CHECK(wire_encode(buf, sizeof(buf), &m) > 0);
	s.prefix = 33;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	s.prefix = 24;
	s.ranges = rev;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	s.ranges = ok;
	s.nranges = 0;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	s = (struct mt_segment){.id = 2,
	                        .kind = MT_SEG_WILDCARD,
	                        .name = S("corp.example"),
	                        .ranges = ok,
	                        .nranges = 1};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	s.kind = MT_SEG_FQDN;
	s.flags = 1U << 30;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);

	/* On the wire: a name segment that also carries an address. */
	uint8_t seg[128], body[160];
	uint32_t id = htobe32(1);
	uint8_t kind = MT_SEG_FQDN, fam = 4, proto = MT_PROTO_TCP;
	uint16_t p22 = htobe16(22);
	uint64_t ver = htobe64(1);
	uint8_t ports[32];
	size_t pl = attr(ports, 0, MT_P_PROTO, &proto, 1);
	pl = attr(ports, pl, MT_P_LO, &p22, 2);
	pl = attr(ports, pl, MT_P_HI, &p22, 2);
	size_t sl = attr(seg, 0, MT_S_ID, &id, 4);
	sl = attr(seg, sl, MT_S_KIND, &kind, 1);
	sl = attr(seg, sl, MT_S_NAME, "a.example", 9);
	sl = attr(seg, sl, MT_S_PORTS, ports, (uint16_t)pl);
	size_t good = sl;
	size_t bl = attr(body, 0, MT_A_CONFIG_VERSION, &ver, 8);
	bl = attr(body, bl, MT_A_SEGMENT, seg, (uint16_t)good);
	struct mt_msg o;
	const char *why = NULL;
	size_t n = raw_frame(buf, 1, MT_CONFIG, 0, 0, 0, body, bl);
	T_EQ(wire_decode(buf, n, &o, &why), 0);
	sl = attr(seg, good, MT_S_FAMILY, &fam, 1);
	bl = attr(body, 0, MT_A_CONFIG_VERSION, &ver, 8);
	bl = attr(body, bl, MT_A_SEGMENT, seg, (uint16_t)sl);
	n = raw_frame(buf, 1, MT_CONFIG, 0, 0, 0, body, bl);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "address on a name segment");
}

static void set_id_in_place(void)
{
	struct mt_msg m = {.hdr = {.type = MT_DATA, .id = 1111, .seq = 7}, .u.data = S("payload")},
		      o;
	const char *why;
	int n = wire_encode(buf, sizeof(buf), &m);

	T_REQUIRE(n > 0);
	memcpy(buf2, buf, (size_t)n);
	wire_set_id(buf, 0xfedcba98);
	T_EQ(wire_decode(buf, (size_t)n, &o, &why), 0);
	T_EQ(o.hdr.id, 0xfedcba98);
	T_EQ(o.hdr.seq, 7);
	T_CHECK(bytes_eq(o.u.data, "payload"));
	/* Only bytes 4..7 changed. */
	T_CHECK(memcmp(buf, buf2, 4) == 0);
	T_CHECK(memcmp(buf + 8, buf2 + 8, (size_t)n - 8) == 0);
}

static void seq_check(void)
{
	uint32_t exp = 0;

	T_EQ(wire_seq_check(&exp, 0), 0);
	T_EQ(wire_seq_check(&exp, 1), 0);
	T_EQ(exp, 2);
	T_EQ(wire_seq_check(&exp, 3), -EPROTO); /* gap */
	T_EQ(exp, 2);
	T_EQ(wire_seq_check(&exp, 1), -EPROTO); /* replay */
	exp = UINT32_MAX;
	T_EQ(wire_seq_check(&exp, UINT32_MAX), 0);
	T_EQ(exp, 0);
	T_EQ(wire_seq_check(&exp, 0), 0);
}

/* Builds a stream of mixed frames; returns its length and the frame count. */
static size_t build_stream(uint8_t *s, size_t size, size_t *lens, unsigned *count)
{
	struct mt_msg ms[] = {
	    {.hdr = {.type = MT_PING}, .u.ping = {.token = 1}},
	    {.hdr = {.type = MT_DATA, .id = 5, .seq = 0}, .u.data = S("hello")},
	    {.hdr = {.type = MT_FIN, .id = 5}},
	    {.hdr = {.type = MT_DATA, .id = 6, .seq = 0}, .u.data = {cookie, 0}},
	    {.hdr = {.type = MT_OPEN, .id = 8},
	     .u.open = {.name = S("x.example"), .port = 80, .proto = MT_PROTO_TCP, .window = 9}},
	    {.hdr = {.type = MT_WINDOW}, .u.window = {.increment = 100}},
	};
	size_t at = 0;

	for (unsigned i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
		int n = wire_encode(s + at, size - at, &ms[i]);

		if (n < 0)
			return 0;
		lens[i] = (size_t)n;
		at += (size_t)n;
	}
	*count = sizeof(ms) / sizeof(ms[0]);
	return at;
}

static void stream_cut(void)
{
	static const uint8_t types[] = {MT_PING, MT_DATA, MT_FIN, MT_DATA, MT_OPEN, MT_WINDOW};
	uint8_t stream[1024];
	size_t lens[8], total;
	unsigned count = 0;

	total = build_stream(stream, sizeof(stream), lens, &count);
	T_REQUIRE(total > 0 && count == 6);
	/* Feed the stream in two pieces, split at every byte position. */
	for (size_t split = 0; split <= total; split++) {
		uint8_t rx[1024];
		size_t have = 0, off = 0, fed = 0;
		unsigned got = 0;

		for (int step = 0; step < 2; step++) {
			size_t add = step == 0 ? split : total - split;

			memcpy(rx + have, stream + fed, add);
			have += add;
			fed += add;
			for (;;) {
				struct mt_hdr h;
				struct mt_msg m;
				const char *why = NULL;
				int rc = wire_peek_header(rx + off, have - off, &h, &why);

				if (rc == -EAGAIN || (rc == 0 && have - off < wire_frame_len(&h)))
					break;
				if (rc < 0 || wire_decode(rx + off, have - off, &m, &why) < 0) {
					t_fail(__FILE__, __LINE__, "split %zu: %s", split, why);
					return;
				}
				if (got >= count || m.hdr.type != types[got] ||
				    wire_frame_len(&h) != lens[got]) {
					t_fail(__FILE__, __LINE__, "split %zu: frame %u wrong",
					       split, got);
					return;
				}
				off += wire_frame_len(&h);
				got++;
			}
		}
		if (got != count || off != total)
			t_fail(__FILE__, __LINE__, "split %zu: %u frames, %zu bytes", split, got,
			       off);
	}
}

/* A receiver gets the good frames before a bad one, then a refusal with a reason. */
static void stream_bad_frame(void)
{
	uint8_t stream[256];
	struct mt_msg ok = {.hdr = {.type = MT_PING}, .u.ping = {.token = 1}};
	size_t at = 0, off = 0;
	unsigned good = 0;
	int n = wire_encode(stream, sizeof(stream), &ok), rc;

	T_REQUIRE(n > 0);
	at = (size_t)n;
	at += raw_frame(stream + at, 1, MT_DATA, 0, 0, 0, (const uint8_t *)"x", 1); /* id 0 */
	memcpy(stream + at, stream, (size_t)n);
	at += (size_t)n;
	for (;;) {
		struct mt_hdr h;
		const char *why = NULL;

		rc = wire_peek_header(stream + off, at - off, &h, &why);
		if (rc < 0) {
			T_EQ(rc, -EPROTO);
			T_STREQ(why, "per-mtunnel frame on mtunnel id 0");
			break;
		}
		off += wire_frame_len(&h);
		good++;
	}
	T_EQ(good, 1);
	T_EQ(off, (size_t)n);
}

/* Unknown optional attributes between and inside segments do not disturb the iterators. */
static void config_skips_unknown(void)
{
	uint8_t seg[128], body[512], ports[32];
	uint64_t ver = htobe64(9);
	uint16_t p22 = htobe16(22), p80 = htobe16(80);
	uint8_t kind = MT_SEG_FQDN, proto = MT_PROTO_TCP;
	size_t pl, sl, bl = 0, n;
	struct mt_msg o;
	struct mt_iter it, rit;
	struct mt_segment s;
	struct mt_port_range r;
	const char *why = NULL;
	unsigned ns = 0, nr = 0;

	bl = attr(body, bl, 500, "x", 1);
	bl = attr(body, bl, MT_A_CONFIG_VERSION, &ver, 8);
	for (uint32_t i = 1; i <= 2; i++) {
		uint32_t id = htobe32(i);

		pl = attr(ports, 0, 77, "zz", 2);
		pl = attr(ports, pl, MT_P_PROTO, &proto, 1);
		pl = attr(ports, pl, MT_P_LO, &p22, 2);
		pl = attr(ports, pl, MT_P_HI, &p80, 2);
		sl = attr(seg, 0, MT_S_PORTS, ports, (uint16_t)pl);
		sl = attr(seg, sl, 99, "y", 1);
		sl = attr(seg, sl, MT_S_ID, &id, 4);
		sl = attr(seg, sl, MT_S_KIND, &kind, 1);
		sl = attr(seg, sl, MT_S_NAME, "a.example", 9);
		sl = attr(seg, sl, MT_S_PORTS, ports, (uint16_t)pl);
		bl = attr(body, bl, MT_A_SEGMENT, seg, (uint16_t)sl);
		bl = attr(body, bl, 501, "", 0);
	}
	n = raw_frame(buf, 1, MT_CONFIG, 0, 0, 0, body, bl);
	T_REQUIRE(wire_decode(buf, n, &o, &why) == 0);
	T_EQ(o.u.config.version, 9);
	T_EQ(o.u.config.nsegs, 2);
	wire_config_segments(&o.u.config, &it);
	while (wire_segment_next(&it, &s)) {
		ns++;
		T_EQ(s.id, ns);
		T_EQ(s.nranges, 2);
		wire_segment_ranges(&s, &rit);
		while (wire_range_next(&rit, &r)) {
			T_CHECK(r.proto == MT_PROTO_TCP && r.lo == 22 && r.hi == 80);
			nr++;
		}
	}
	T_EQ(ns, 2);
	T_EQ(nr, 4);
	/* With the mandatory bit inside a port range, the whole CONFIG is refused. */
	pl = attr(ports, 0, 77 | MT_ATTR_MANDATORY, "zz", 2);
	memcpy(buf + MT_FRAME_HDR + 4 + 1 + 8 + 4 + 4 + 4, ports, 4);
	T_EQ(refused(buf, n, &why), -EPROTO);
	T_STREQ(why, "unknown mandatory attribute");
}

static void encode_nospace(void)
{
	struct mt_msg m = {
	    .hdr = {.type = MT_OPEN, .id = 8},
	    .u.open = {.name = S("x.example"), .port = 80, .proto = MT_PROTO_TCP, .window = 9}};
	int n = wire_encode(buf, sizeof(buf), &m);

	T_REQUIRE(n > 0);
	for (int size = 0; size < n; size++)
		if (wire_encode(buf2, (size_t)size, &m) != -ENOSPC)
			t_fail(__FILE__, __LINE__, "size %d not -ENOSPC", size);
	T_EQ(wire_encode(buf2, (size_t)n, &m), n);
	T_CHECK(memcmp(buf, buf2, (size_t)n) == 0);

	struct mt_msg d = {.hdr = {.type = MT_DATA, .id = 1}, .u.data = {buf, 100}};
	T_EQ(wire_encode(buf2, 50, &d), -ENOSPC);
	d.u.data.len = MT_FRAME_MAX_PAYLOAD + 1;
	T_EQ(wire_encode(buf2, sizeof(buf2), &d), -EMSGSIZE);
}

static void config_too_big(void)
{
	static struct mt_segment segs[1000];
	static const struct mt_port_range r[] = {{MT_PROTO_TCP, 443, 443}};
	struct mt_msg m = {.hdr = {.type = MT_CONFIG}, .u.config = {.version = 1, .segs = segs}};
	static uint8_t big[2 * MT_FRAME_MAX];

	for (unsigned i = 0; i < 1000; i++)
		segs[i] = (struct mt_segment){.id = i,
		                              .kind = MT_SEG_FQDN,
		                              .name = S("app.corp.example"),
		                              .ranges = r,
		                              .nranges = 1};
	m.u.config.nsegs = 1000;
	/* More than one frame holds: the sender splits it with MT_FRAME_F_MORE. */
	T_EQ(wire_encode(big, sizeof(big), &m), -EMSGSIZE);
	m.u.config.nsegs = 100;
	T_CHECK(wire_encode(big, sizeof(big), &m) > 0);
}

/* --- posture --- */

static const uint8_t sha_a[MT_SHA256_LEN] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};

static void rt_posture_query(void)
{
	const struct mt_bytes files[] = {S("/etc/mtun/marker"), S("/opt/edr/agent.conf")};
	const struct mt_bytes procs[] = {S("sshd"), S("falcon-sensor")};
	struct mt_msg m = {.hdr = {.type = MT_POSTURE_QUERY},
	                   .u.posture_query = {.version = 0x0102030405060708ULL,
	                                       .files = files,
	                                       .nfiles = 2,
	                                       .procs = procs,
	                                       .nprocs = 2}},
		      o;
	struct mt_iter it;
	struct mt_bytes t;
	uint16_t type;
	unsigned nf = 0, np = 0;

	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(o.u.posture_query.version == 0x0102030405060708ULL);
	T_CHECK(o.u.posture_query.files == NULL && o.u.posture_query.nfiles == 0);
	T_CHECK(o.u.posture_query.procs == NULL && o.u.posture_query.nprocs == 0);
	wire_posture_iter(&o.u.posture_query.attrs, &it);
	while (wire_posture_next(&it, &type, &t, NULL)) {
		if (type == MT_A_FILE) {
			T_REQUIRE(nf < 2);
			T_CHECK(t.len == files[nf].len && memcmp(t.p, files[nf].p, t.len) == 0);
			nf++;
		} else {
			T_EQ(type, MT_A_PROCESS);
			T_REQUIRE(np < 2);
			T_CHECK(t.len == procs[np].len && memcmp(t.p, procs[np].p, t.len) == 0);
			np++;
		}
	}
	T_EQ(nf, 2);
	T_EQ(np, 2);
	/* An empty query is still a query: its version is what the report answers. */
	m.u.posture_query = (struct mt_posture_query){.version = 9};
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(o.u.posture_query.version == 9 && o.u.posture_query.nfiles == 0);
	wire_posture_iter(&o.u.posture_query.attrs, &it);
	T_CHECK(!wire_posture_next(&it, &type, &t, NULL));
}

static void rt_posture(void)
{
	struct mt_file_fact facts[2] = {{.path = S("/etc/mtun/marker")},
	                                {.path = S("/opt/edr/agent.conf")}};
	const struct mt_bytes procs[] = {S("sshd")};
	struct mt_msg m = {.hdr = {.type = MT_POSTURE},
	                   .u.posture = {.version = 42,
	                                 .kernel = S("6.18.0-1-amd64"),
	                                 .os = S("Debian GNU/Linux 12 (bookworm)"),
	                                 .disk_encrypted = 1,
	                                 .files = facts,
	                                 .nfiles = 2,
	                                 .procs = procs,
	                                 .nprocs = 1}},
		      o;
	struct mt_file_fact f;
	struct mt_iter it;
	struct mt_bytes t;
	uint16_t type;
	unsigned nf = 0, np = 0;

	memcpy(facts[0].sha256, sha_a, sizeof(sha_a));
	memset(facts[1].sha256, 0xab, sizeof(facts[1].sha256));
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(o.u.posture.version == 42);
	T_CHECK(bytes_eq(o.u.posture.kernel, "6.18.0-1-amd64"));
	T_CHECK(bytes_eq(o.u.posture.os, "Debian GNU/Linux 12 (bookworm)"));
	T_EQ(o.u.posture.disk_encrypted, 1);
	T_CHECK(o.u.posture.files == NULL && o.u.posture.nfiles == 0);
	wire_posture_iter(&o.u.posture.attrs, &it);
	while (wire_posture_next(&it, &type, &t, &f)) {
		if (type == MT_A_FILE_FACT) {
			T_REQUIRE(nf < 2);
			T_CHECK(f.path.len == facts[nf].path.len &&
			        memcmp(f.path.p, facts[nf].path.p, f.path.len) == 0);
			T_CHECK(memcmp(f.sha256, facts[nf].sha256, MT_SHA256_LEN) == 0);
			nf++;
		} else {
			T_EQ(type, MT_A_PROCESS);
			T_CHECK(bytes_eq(t, "sshd"));
			np++;
		}
	}
	T_EQ(nf, 2);
	T_EQ(np, 1);
	/* Nothing found: no facts, no processes, no OS name; the rest is still reported. */
	m.u.posture = (struct mt_posture){.version = 43, .kernel = S("6.1.0")};
	T_REQUIRE(round_trip(&m, &o) > 0);
	T_CHECK(o.u.posture.version == 43 && o.u.posture.disk_encrypted == 0);
	T_CHECK(o.u.posture.os.len == 0);
	wire_posture_iter(&o.u.posture.attrs, &it);
	T_CHECK(!wire_posture_next(&it, &type, &t, &f));
}

/* A fact nested attribute: path then digest. */
static size_t fact_attr(uint8_t *b, size_t at, const char *path, const uint8_t *sha,
                        uint16_t sha_len)
{
	uint8_t in[512];
	size_t n = attr(in, 0, MT_F_PATH, path, (uint16_t)strlen(path));

	if (sha)
		n = attr(in, n, MT_F_SHA256, sha, sha_len);
	return attr(b, at, MT_A_FILE_FACT, in, (uint16_t)n);
}

static const uint8_t ver8[8] = {0, 0, 0, 0, 0, 0, 0, 5};

/* Decodes a POSTURE(_QUERY) body and returns the reason of its refusal, or "accepted". */
static const char *posture_why(uint8_t type, const uint8_t *body, size_t len)
{
	const char *why = NULL;
	size_t n = raw_frame(buf, 1, type, 0, 0, 0, body, len);

	if (refused(buf, n, &why) == 0)
		return "accepted";
	return why;
}

static void refuse_bad_posture_query(void)
{
	static uint8_t body[MT_FRAME_MAX];
	char name[80];
	size_t b;

	b = attr(body, 0, MT_A_FILE, "/etc/x", 6);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "missing required attribute");
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_FILE, "etc/x", 5);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "file not an absolute path");
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_FILE, "", 0);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "file not an absolute path");
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_FILE, "/etc/\nx", 7);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "file not an absolute path");
	memset(name, 'a', sizeof(name));
	name[0] = '/';
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	for (unsigned i = 0; i < 5; i++)
		b = attr(body, b, MT_A_FILE, name, 64); /* 5 x 64 bytes would pass; 256 not */
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "duplicate file");
	{
		uint8_t longp[256];

		memset(longp, 'a', sizeof(longp));
		longp[0] = '/';
		b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
		b = attr(body, b, MT_A_FILE, longp, 255);
		T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "accepted");
		b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
		b = attr(body, b, MT_A_FILE, longp, 256);
		T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "file not an absolute path");
	}
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_PROCESS, name, 65);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "bad process name");
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_PROCESS, "sshd", 4);
	b = attr(body, b, MT_A_PROCESS, "sshd", 4);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "duplicate process");
	/* 32 files and 32 processes are the bound; one more of either is refused. */
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	for (unsigned i = 0; i < 32; i++) {
		int l = snprintf(name, sizeof(name), "/f%u", i);

		b = attr(body, b, MT_A_FILE, name, (uint16_t)l);
		l = snprintf(name, sizeof(name), "p%u", i);
		b = attr(body, b, MT_A_PROCESS, name, (uint16_t)l);
	}
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "accepted");
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, attr(body, b, MT_A_FILE, "/f32", 4)),
	        "more than 32 files");
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, attr(body, b, MT_A_PROCESS, "p32", 3)),
	        "more than 32 processes");
	/* A fact has no place in a query. */
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_KERNEL, "6.1", 3);
	T_STREQ(posture_why(MT_POSTURE_QUERY, body, b), "posture fact in a posture query");
	/* On a mtunnel id, it is refused by the header rules. */
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	{
		const char *why;
		size_t n = raw_frame(buf, 1, MT_POSTURE_QUERY, 0, 3, 0, body, b);

		T_EQ(refused(buf, n, &why), -EPROTO);
		T_STREQ(why, "control frame on a non-zero mtunnel id");
	}
}

/* A valid POSTURE body: version and disk encryption; returns its length. */
static size_t posture_base(uint8_t *body)
{
	const uint8_t one = 1;
	size_t b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);

	return attr(body, b, MT_A_DISK_ENCRYPTED, &one, 1);
}

static void refuse_bad_posture(void)
{
	static uint8_t body[MT_FRAME_MAX];
	const uint8_t two = 2;
	char name[200];
	size_t b, base;

	base = posture_base(body);
	T_STREQ(posture_why(MT_POSTURE, body, base), "accepted");
	T_STREQ(posture_why(MT_POSTURE, body, attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8)),
	        "missing required attribute");
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_DISK_ENCRYPTED, &two, 1);
	T_STREQ(posture_why(MT_POSTURE, body, b), "disk encryption not 0 or 1");
	b = attr(body, 0, MT_A_CONFIG_VERSION, ver8, 8);
	b = attr(body, b, MT_A_DISK_ENCRYPTED, "\0\0", 2);
	T_STREQ(posture_why(MT_POSTURE, body, b), "bad attribute length");
	b = attr(body, posture_base(body), MT_A_DISK_ENCRYPTED, "\1", 1);
	T_STREQ(posture_why(MT_POSTURE, body, b), "duplicate attribute");
	memset(name, 'a', sizeof(name));
	T_STREQ(
	    posture_why(MT_POSTURE, body, attr(body, posture_base(body), MT_A_KERNEL, name, 64)),
	    "accepted");
	T_STREQ(
	    posture_why(MT_POSTURE, body, attr(body, posture_base(body), MT_A_KERNEL, name, 65)),
	    "bad kernel release");
	T_STREQ(posture_why(MT_POSTURE, body,
	                    attr(body, posture_base(body), MT_A_KERNEL, "6.1\x01", 4)),
	        "bad kernel release");
	T_STREQ(posture_why(MT_POSTURE, body, attr(body, posture_base(body), MT_A_OS, name, 128)),
	        "accepted");
	T_STREQ(posture_why(MT_POSTURE, body, attr(body, posture_base(body), MT_A_OS, name, 129)),
	        "bad OS name");
	T_STREQ(posture_why(MT_POSTURE, body, attr(body, posture_base(body), MT_A_OS, "", 0)),
	        "bad OS name");
	/* Facts: a path and exactly 32 bytes of digest, each once. */
	T_STREQ(
	    posture_why(MT_POSTURE, body, fact_attr(body, posture_base(body), "/etc/x", sha_a, 32)),
	    "accepted");
	T_STREQ(
	    posture_why(MT_POSTURE, body, fact_attr(body, posture_base(body), "/etc/x", sha_a, 31)),
	    "SHA-256 not 32 bytes");
	T_STREQ(
	    posture_why(MT_POSTURE, body, fact_attr(body, posture_base(body), "/etc/x", NULL, 0)),
	    "missing required attribute");
	T_STREQ(posture_why(MT_POSTURE, body, fact_attr(body, posture_base(body), "x", sha_a, 32)),
	        "file not an absolute path");
	b = fact_attr(body, posture_base(body), "/etc/x", sha_a, 32);
	T_STREQ(posture_why(MT_POSTURE, body, fact_attr(body, b, "/etc/x", sha_a, 32)),
	        "duplicate file");
	b = posture_base(body);
	for (unsigned i = 0; i < 32; i++) {
		snprintf(name, sizeof(name), "/f%u", i);
		b = fact_attr(body, b, name, sha_a, 32);
	}
	T_STREQ(posture_why(MT_POSTURE, body, b), "accepted");
	T_STREQ(posture_why(MT_POSTURE, body, fact_attr(body, b, "/f32", sha_a, 32)),
	        "more than 32 files");
	/* A query item has no place in a report. */
	T_STREQ(
	    posture_why(MT_POSTURE, body, attr(body, posture_base(body), MT_A_FILE, "/etc/x", 6)),
	    "posture query item in a posture report");
	/* A truncated nested fact is refused, not read past. */
	b = fact_attr(body, posture_base(body), "/etc/x", sha_a, 32);
	body[posture_base(body) + 3] = (uint8_t)(body[posture_base(body) + 3] + 1);
	T_STREQ(posture_why(MT_POSTURE, body, b), "attribute longer than its message");
}

/* The encoder refuses what a receiver would. */
static void posture_encode_rules(void)
{
	struct mt_bytes files[33], procs[2] = {S("sshd"), S("sshd")};
	struct mt_file_fact facts[2] = {{.path = S("/a")}, {.path = S("/a")}};
	static char names[33][8];
	struct mt_msg m = {.hdr = {.type = MT_POSTURE_QUERY}};

	for (unsigned i = 0; i < 33; i++) {
		snprintf(names[i], sizeof(names[i]), "/f%u", i);
		files[i] = S(names[i]);
	}
	m.u.posture_query = (struct mt_posture_query){.files = files, .nfiles = 32};
	T_CHECK(wire_encode(buf, sizeof(buf), &m) > 0);
	m.u.posture_query.nfiles = 33;
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.posture_query = (struct mt_posture_query){.procs = procs, .nprocs = 2};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.posture_query = (struct mt_posture_query){.files = NULL, .nfiles = 1};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.posture_query =
	    (struct mt_posture_query){.files = (struct mt_bytes[]){S("rel")}, .nfiles = 1};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.hdr.type = MT_POSTURE;
	m.u.posture = (struct mt_posture){.files = facts, .nfiles = 2};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.posture = (struct mt_posture){.disk_encrypted = 2};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.posture = (struct mt_posture){.os = S("Debian\t12")};
	T_EQ(wire_encode(buf, sizeof(buf), &m), -EINVAL);
	m.u.posture = (struct mt_posture){.kernel = S("6.1"), .os = S("Debian 12")};
	T_CHECK(wire_encode(buf, sizeof(buf), &m) > 0);
	/* The largest report fits in one frame. */
	{
		static struct mt_file_fact big[32];
		static struct mt_bytes bp[32];
		static char paths[32][256], pn[32][65];
		static char os[129], kern[65];

		for (unsigned i = 0; i < 32; i++) {
			memset(paths[i], 'a', 255);
			paths[i][0] = '/';
			paths[i][1] = (char)('A' + i);
			big[i].path = (struct mt_bytes){(const uint8_t *)paths[i], 255};
			memset(pn[i], 'p', 64);
			pn[i][0] = (char)('A' + i);
			bp[i] = (struct mt_bytes){(const uint8_t *)pn[i], 64};
		}
		memset(os, 'o', 128);
		memset(kern, 'k', 64);
		m.u.posture = (struct mt_posture){.kernel = {(const uint8_t *)kern, 64},
		                                  .os = {(const uint8_t *)os, 128},
		                                  .files = big,
		                                  .nfiles = 32,
		                                  .procs = bp,
		                                  .nprocs = 32};
		T_CHECK(wire_encode(buf, sizeof(buf), &m) > 0);
	}
}

/* The iterator hands out only checked items, even from a body it was not decoded from. */
static void posture_iter_checks(void)
{
	uint8_t body[256];
	struct mt_bytes attrs, t;
	struct mt_file_fact f;
	struct mt_iter it;
	uint16_t type;
	size_t b;

	b = attr(body, 0, MT_A_FILE, "rel", 3);
	b = fact_attr(body, b, "/x", sha_a, 31);
	b = attr(body, b, MT_A_PROCESS, "ok", 2);
	attrs = (struct mt_bytes){body, (uint16_t)b};
	wire_posture_iter(&attrs, &it);
	T_CHECK(wire_posture_next(&it, &type, &t, &f));
	T_EQ(type, MT_A_PROCESS);
	T_CHECK(bytes_eq(t, "ok"));
	T_CHECK(!wire_posture_next(&it, &type, &t, &f));
	attrs = (struct mt_bytes){NULL, 0};
	wire_posture_iter(&attrs, &it);
	T_CHECK(!wire_posture_next(&it, &type, &t, &f));
}

struct sample {
	const char *name;
	struct mt_msg m;
};

/* One valid message of every kind; the views point into static storage. */
static size_t samples(struct sample *out, size_t max)
{
	static const struct mt_port_range r[] = {{MT_PROTO_TCP, 22, 22}, {MT_PROTO_UDP, 53, 54}};
	static struct mt_segment segs[3];
	static struct mt_bytes pq_files[2], pq_procs[2];
	static struct mt_file_fact facts[1];
	const struct mt_segment init[] = {
	    {.id = 1,
	     .kind = MT_SEG_FQDN,
	     .name = S("server01.corp.example"),
	     .ranges = r,
	     .nranges = 2,
	     .flags = MT_SEG_F_DOUBLE_ENCRYPT},
	    {.id = 2,
	     .kind = MT_SEG_WILDCARD,
	     .name = S("*.corp.example"),
	     .ranges = r,
	     .nranges = 1},
	    {.id = 3,
	     .kind = MT_SEG_CIDR,
	     .family = 6,
	     .prefix = 48,
	     .addr = {0xfd, 0, 1},
	     .ranges = r + 1,
	     .nranges = 1},
	};
	const struct sample seeds[] = {
	    {"hello",
	     {.hdr = {.type = MT_HELLO},
	      .u.hello = {.role = MT_ROLE_CONNECTOR,
	                  .kind = MT_SESSION_DATA,
	                  .sw_version = S("mtun 0.1.0"),
	                  .caps = 3,
	                  .group = S("g1"),
	                  .location = S("eu"),
	                  .has_capacity = true,
	                  .capacity = 10,
	                  .device_proof = {cookie, 16},
	                  .cookie = {cookie, 16}}}},
	    {"config",
	     {.hdr = {.type = MT_CONFIG, .flags = MT_FRAME_F_MORE},
	      .u.config = {.version = 42, .segs = segs, .nsegs = 3}}},
	    {"resolve",
	     {.hdr = {.type = MT_RESOLVE},
	      .u.resolve = {.req_id = 1,
	                    .name = S("server01.corp.example"),
	                    .port = 22,
	                    .proto = MT_PROTO_TCP}}},
	    {"resolve_reply",
	     {.hdr = {.type = MT_RESOLVE_REPLY},
	      .u.resolve_reply = {.req_id = 1,
	                          .status = MT_STATUS_NXDOMAIN,
	                          .ttl = 30,
	                          .reason = S("no segment")}}},
	    {"probe",
	     {.hdr = {.type = MT_PROBE},
	      .u.probe = {.req_id = 2,
	                  .host = S("fd00::1"),
	                  .port = 443,
	                  .proto = MT_PROTO_TCP,
	                  .deadline_ms = 500}}},
	    {"probe_reply",
	     {.hdr = {.type = MT_PROBE_REPLY},
	      .u.probe_reply = {.req_id = 2, .status = MT_STATUS_OK, .latency_us = 900}}},
	    {"open",
	     {.hdr = {.type = MT_OPEN, .id = 7},
	      .u.open = {.name = S("db.corp.example"),
	                 .port = 5432,
	                 .proto = MT_PROTO_TCP,
	                 .window = 65536}}},
	    {"open_reply",
	     {.hdr = {.type = MT_OPEN_REPLY, .id = 7},
	      .u.reply = {.status = MT_STATUS_DENIED, .reason = S("rule 4")}}},
	    {"bind",
	     {.hdr = {.type = MT_BIND, .id = 9},
	      .u.bind = {.host = S("10.0.0.5"),
	                 .port = 22,
	                 .proto = MT_PROTO_TCP,
	                 .broker = S("broker1.example:8443"),
	                 .cookie = {cookie, 16},
	                 .window = 65536}}},
	    {"bind_reply",
	     {.hdr = {.type = MT_BIND_REPLY, .id = 9},
	      .u.reply = {.status = MT_STATUS_OK, .window = 65536}}},
	    {"data", {.hdr = {.type = MT_DATA, .id = 7, .seq = 3}, .u.data = S("GET / HTTP/1.1")}},
	    {"window", {.hdr = {.type = MT_WINDOW}, .u.window = {.increment = 4096}}},
	    {"fin", {.hdr = {.type = MT_FIN, .id = 7}}},
	    {"reset",
	     {.hdr = {.type = MT_RESET, .id = 7},
	      .u.reset = {.status = MT_STATUS_TIMEOUT, .reason = S("idle")}}},
	    {"ping", {.hdr = {.type = MT_PING}, .u.ping = {.token = 0x0102030405060708ULL}}},
	    {"pong", {.hdr = {.type = MT_PONG}, .u.ping = {.token = 0x0102030405060708ULL}}},
	    {"error",
	     {.hdr = {.type = MT_ERROR},
	      .u.error = {.code = MT_STATUS_PROTOCOL, .message = S("bad frame")}}},
	    {"posture_query",
	     {.hdr = {.type = MT_POSTURE_QUERY},
	      .u.posture_query =
	          {.version = 7, .files = pq_files, .nfiles = 2, .procs = pq_procs, .nprocs = 2}}},
	    {"posture",
	     {.hdr = {.type = MT_POSTURE},
	      .u.posture = {.version = 7,
	                    .kernel = S("6.18.0-1-amd64"),
	                    .os = S("Debian GNU/Linux 12 (bookworm)"),
	                    .disk_encrypted = 1,
	                    .files = facts,
	                    .nfiles = 1,
	                    .procs = pq_procs,
	                    .nprocs = 1}}},
	};
	size_t n = sizeof(seeds) / sizeof(seeds[0]);

	memcpy(segs, init, sizeof(segs));
	pq_files[0] = S("/etc/mtun/marker");
	pq_files[1] = S("/opt/edr/agent.conf");
	pq_procs[0] = S("sshd");
	pq_procs[1] = S("falcon-sensor");
	facts[0].path = pq_files[0];
	memcpy(facts[0].sha256, sha_a, sizeof(sha_a));
	if (n > max)
		return 0;
	memcpy(out, seeds, sizeof(seeds));
	return n;
}

/* Every kind re-encodes to the very bytes it was decoded from. */
static void reencode_identical(void)
{
	struct sample ss[32];
	size_t count = samples(ss, 32);

	T_REQUIRE(count == MT_TYPE_MAX - 1);
	for (size_t i = 0; i < count; i++) {
		struct mt_msg o;
		const char *why = NULL;
		int n = wire_encode(buf, sizeof(buf), &ss[i].m), n2;

		if (n < 0 || wire_decode(buf, (size_t)n, &o, &why) < 0) {
			t_fail(__FILE__, __LINE__, "%s: %d %s", ss[i].name, n, why);
			continue;
		}
		if (o.hdr.type == MT_CONFIG) {
			/* The decoded CONFIG is walked back into arrays for the encoder. */
			static struct mt_segment segs[8];
			static struct mt_port_range rs[16];
			struct mt_iter it, rit;
			unsigned ns = 0, nr = 0;

			wire_config_segments(&o.u.config, &it);
			while (ns < 8 && wire_segment_next(&it, &segs[ns])) {
				wire_segment_ranges(&segs[ns], &rit);
				segs[ns].ranges = &rs[nr];
				while (nr < 16 && wire_range_next(&rit, &rs[nr]))
					nr++;
				ns++;
			}
			o.u.config.segs = segs;
		}
		if (o.hdr.type == MT_POSTURE_QUERY || o.hdr.type == MT_POSTURE) {
			/* Walked back into arrays too: files, facts and processes in order. */
			static struct mt_bytes fl[32], pl[32];
			static struct mt_file_fact ff[32];
			unsigned nf = 0, np = 0, nff = 0;
			struct mt_iter it;
			struct mt_bytes t;
			uint16_t type;
			bool q = o.hdr.type == MT_POSTURE_QUERY;

			wire_posture_iter(q ? &o.u.posture_query.attrs : &o.u.posture.attrs, &it);
			while (nf < 32 && np < 32 && nff < 32 &&
			       wire_posture_next(&it, &type, &t, &ff[nff])) {
				if (type == MT_A_FILE)
					fl[nf++] = t;
				else if (type == MT_A_PROCESS)
					pl[np++] = t;
				else
					nff++;
			}
			if (q) {
				o.u.posture_query.files = fl;
				o.u.posture_query.nfiles = (uint16_t)nf;
				o.u.posture_query.procs = pl;
				o.u.posture_query.nprocs = (uint16_t)np;
			} else {
				o.u.posture.files = ff;
				o.u.posture.nfiles = (uint16_t)nff;
				o.u.posture.procs = pl;
				o.u.posture.nprocs = (uint16_t)np;
			}
		}
		n2 = wire_encode(buf2, sizeof(buf2), &o);
		if (n2 != n || memcmp(buf, buf2, (size_t)n) != 0)
			t_fail(__FILE__, __LINE__, "%s: re-encoding differs", ss[i].name);
	}
}

/* MTUN_WIRE_CORPUS=DIR writes valid frames of every kind as fuzz seeds (fuzz/corpus/frame). */
static int write_corpus(const char *dir)
{
	struct sample seeds[32];
	size_t count = samples(seeds, 32);
	static uint8_t all[64 * 1024];
	size_t at = 0;
	char path[512];
	FILE *f;

	if (count == 0)
		return 1;
	for (size_t i = 0; i < count; i++) {
		int n = wire_encode(buf, sizeof(buf), &seeds[i].m);

		if (n < 0 || at + (size_t)n > sizeof(all))
			return 1;
		memcpy(all + at, buf, (size_t)n);
		at += (size_t)n;
		snprintf(path, sizeof(path), "%s/%s", dir, seeds[i].name);
		if (!(f = fopen(path, "wb")) || fwrite(buf, 1, (size_t)n, f) != (size_t)n ||
		    fclose(f) != 0)
			return 1;
	}
	snprintf(path, sizeof(path), "%s/stream", dir);
	if (!(f = fopen(path, "wb")) || fwrite(all, 1, at, f) != at || fclose(f) != 0)
		return 1;
	return 0;
}

int main(void)
{
	const char *corpus = getenv("MTUN_WIRE_CORPUS");

	if (corpus)
		return write_corpus(corpus);
	T_RUN(header_layout);
	T_RUN(rt_hello);
	T_RUN(rt_hello_minimal);
	T_RUN(rt_config);
	T_RUN(rt_config_empty);
	T_RUN(rt_resolve);
	T_RUN(rt_resolve_reply);
	T_RUN(rt_probe);
	T_RUN(rt_probe_reply);
	T_RUN(rt_open_and_reply);
	T_RUN(rt_bind_and_reply);
	T_RUN(rt_data);
	T_RUN(rt_window_fin_reset);
	T_RUN(rt_ping_pong_error);
	T_RUN(names);
	T_RUN(refuse_truncated_header);
	T_RUN(refuse_truncated_body);
	T_RUN(refuse_oversized);
	T_RUN(refuse_unknown_type);
	T_RUN(refuse_bad_version);
	T_RUN(refuse_flags_and_seq);
	T_RUN(refuse_wrong_id);
	T_RUN(refuse_bad_attr_length);
	T_RUN(refuse_missing_attr);
	T_RUN(refuse_duplicate_attr);
	T_RUN(unknown_attrs);
	T_RUN(refuse_bad_strings);
	T_RUN(refuse_name_too_long);
	T_RUN(refuse_bad_values);
	T_RUN(refuse_bad_segments);
	T_RUN(set_id_in_place);
	T_RUN(seq_check);
	T_RUN(stream_cut);
	T_RUN(stream_bad_frame);
	T_RUN(config_skips_unknown);
	T_RUN(encode_nospace);
	T_RUN(config_too_big);
	T_RUN(reencode_identical);
	T_RUN(rt_posture_query);
	T_RUN(rt_posture);
	T_RUN(refuse_bad_posture_query);
	T_RUN(refuse_bad_posture);
	T_RUN(posture_encode_rules);
	T_RUN(posture_iter_checks);
	return t_done();
}
