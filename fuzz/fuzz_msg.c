/*
 * libFuzzer target for one message type (FUZZ_MSG, set per target by fuzz/meson.build):
 * the input is the body, wrapped in a valid header of that type as the broker, connector
 * and agent receive it; a decoded message must keep every rule its readers rely on, walk
 * cleanly through its iterators and re-encode to a stable canonical form.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/wire.h"

#ifndef FUZZ_MSG
#error "build with -DFUZZ_MSG=<enum mt_frame_type>"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define MAX_SEGS   1024
#define MAX_RANGES 2048

static struct mt_segment segs[MAX_SEGS];
static struct mt_port_range ranges[MAX_RANGES];

#define need(c)                                                                                    \
	do {                                                                                       \
		if (!(c))                                                                          \
			abort();                                                                   \
	} while (0)

static volatile unsigned sink;

/* Reads every byte of a view, so that ASan sees a view reaching past the frame. */
static void touch(struct mt_bytes b)
{
	unsigned s = 0;

	for (uint16_t i = 0; i < b.len; i++)
		s += b.p[i];
	sink += s;
}

/* Printable ASCII, as logged between quotes. */
static void text(struct mt_bytes b, bool required, unsigned max)
{
	touch(b);
	need(b.len <= max);
	need(!required || b.len >= 1);
	for (uint16_t i = 0; i < b.len; i++)
		need(b.p[i] >= 0x20 && b.p[i] <= 0x7e);
}

/* A DNS name or an IP literal: copied into char[MT_NAME_MAX + 1] and used as a C string. */
static void host(struct mt_bytes b)
{
	touch(b);
	need(b.len >= 1 && b.len <= MT_NAME_MAX);
	for (uint16_t i = 0; i < b.len; i++)
		need(b.p[i] > 0x20 && b.p[i] < 0x7f && b.p[i] != '"' && b.p[i] != '\\');
}

static void port_proto(uint16_t port, uint8_t proto)
{
	need(port >= 1);
	need(proto == MT_PROTO_TCP || proto == MT_PROTO_UDP);
}

static void status(uint8_t s)
{
	need(s < MT_STATUS_MAX);
	need(wire_status_name(s) != NULL);
}

/* A decoded CONFIG hands out iterators; the encoder takes arrays. */
static void config_walk(struct mt_msg *m)
{
	struct mt_config *c = &m->u.config;
	struct mt_iter it, rit;
	unsigned ns = 0, nr = 0;

	wire_config_segments(c, &it);
	while (ns < MAX_SEGS && wire_segment_next(&it, &segs[ns])) {
		struct mt_segment *s = &segs[ns++];
		unsigned first = nr;

		need(s->kind == MT_SEG_FQDN || s->kind == MT_SEG_WILDCARD ||
		     s->kind == MT_SEG_CIDR);
		need(!(s->flags & ~MT_SEG_F_ALL));
		if (s->kind == MT_SEG_CIDR) {
			need(s->family == 4 || s->family == 6);
			need(s->prefix <= (s->family == 4 ? 32 : 128));
			need(s->name.len == 0);
		} else {
			host(s->name);
		}
		wire_segment_ranges(s, &rit);
		while (nr < MAX_RANGES && wire_range_next(&rit, &ranges[nr])) {
			port_proto(ranges[nr].lo, ranges[nr].proto);
			need(ranges[nr].lo <= ranges[nr].hi);
			nr++;
		}
		need(nr - first == s->nranges && s->nranges >= 1);
		s->ranges = &ranges[first];
	}
	need(ns == c->nsegs);
	c->segs = segs;
}

/* The rules each reader of the message relies on. */
static bool same(struct mt_bytes a, struct mt_bytes b)
{
	return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}

/*
 * POSTURE_QUERY and POSTURE: walks the repeated items back into arrays (the encoder's
 * input), each checked: absolute printable paths, names, no duplicates, the limits.
 */
static void posture_fields(struct mt_msg *m, bool query)
{
	static struct mt_bytes files[MT_POSTURE_FILES_MAX], procs[MT_POSTURE_PROCS_MAX];
	static struct mt_file_fact facts[MT_POSTURE_FILES_MAX];
	unsigned nf = 0, np = 0;
	struct mt_file_fact f;
	struct mt_iter it;
	struct mt_bytes t;
	uint16_t type;

	wire_posture_iter(query ? &m->u.posture_query.attrs : &m->u.posture.attrs, &it);
	while (wire_posture_next(&it, &type, &t, &f)) {
		if (type == MT_A_PROCESS) {
			text(t, true, MT_PROCESS_MAX);
			need(np < MT_POSTURE_PROCS_MAX);
			for (unsigned i = 0; i < np; i++)
				need(!same(procs[i], t));
			procs[np++] = t;
			continue;
		}
		need(type == (query ? MT_A_FILE : MT_A_FILE_FACT));
		if (!query)
			t = f.path;
		text(t, true, MT_PATH_MAX);
		need(t.p[0] == '/');
		need(nf < MT_POSTURE_FILES_MAX);
		for (unsigned i = 0; i < nf; i++)
			need(!same(query ? files[i] : facts[i].path, t));
		files[nf] = t;
		facts[nf++] = f;
	}
	if (query) {
		need(m->u.posture_query.files == NULL && m->u.posture_query.nfiles == 0);
		m->u.posture_query.files = files;
		m->u.posture_query.nfiles = (uint16_t)nf;
		m->u.posture_query.procs = procs;
		m->u.posture_query.nprocs = (uint16_t)np;
		return;
	}
	need(m->u.posture.files == NULL && m->u.posture.nfiles == 0);
	need(m->u.posture.disk_encrypted <= 1);
	text(m->u.posture.kernel, false, MT_KERNEL_MAX);
	text(m->u.posture.os, false, MT_OS_MAX);
	m->u.posture.files = facts;
	m->u.posture.nfiles = (uint16_t)nf;
	m->u.posture.procs = procs;
	m->u.posture.nprocs = (uint16_t)np;
}

static void fields(struct mt_msg *m)
{
	switch (FUZZ_MSG) {
	case MT_HELLO:
		need(m->u.hello.role >= MT_ROLE_AGENT && m->u.hello.role < MT_ROLE_MAX);
		need(m->u.hello.kind == MT_SESSION_CONTROL || m->u.hello.kind == MT_SESSION_DATA);
		text(m->u.hello.sw_version, true, MT_SW_MAX);
		text(m->u.hello.group, false, MT_TOKEN_MAX);
		text(m->u.hello.location, false, MT_TOKEN_MAX);
		touch(m->u.hello.device_proof);
		need(m->u.hello.device_proof.len <= MT_PROOF_MAX);
		touch(m->u.hello.cookie);
		need(m->u.hello.cookie.len == 0 || m->u.hello.cookie.len == MT_COOKIE_LEN);
		break;
	case MT_CONFIG:
		config_walk(m);
		break;
	case MT_RESOLVE:
		host(m->u.resolve.name);
		port_proto(m->u.resolve.port, m->u.resolve.proto);
		break;
	case MT_RESOLVE_REPLY:
		status(m->u.resolve_reply.status);
		text(m->u.resolve_reply.reason, false, MT_TEXT_MAX);
		break;
	case MT_PROBE:
		host(m->u.probe.host);
		port_proto(m->u.probe.port, m->u.probe.proto);
		break;
	case MT_PROBE_REPLY:
		status(m->u.probe_reply.status);
		text(m->u.probe_reply.reason, false, MT_TEXT_MAX);
		break;
	case MT_OPEN:
		host(m->u.open.name);
		port_proto(m->u.open.port, m->u.open.proto);
		need(m->u.open.window <= MT_WINDOW_MAX);
		break;
	case MT_OPEN_REPLY:
	case MT_BIND_REPLY:
		status(m->u.reply.status);
		need(m->u.reply.window <= MT_WINDOW_MAX);
		text(m->u.reply.reason, false, MT_TEXT_MAX);
		break;
	case MT_BIND:
		host(m->u.bind.host);
		port_proto(m->u.bind.port, m->u.bind.proto);
		text(m->u.bind.broker, true, MT_BROKER_MAX);
		touch(m->u.bind.cookie);
		need(m->u.bind.cookie.len == MT_COOKIE_LEN);
		need(m->u.bind.window <= MT_WINDOW_MAX);
		break;
	case MT_WINDOW:
		need(m->u.window.increment >= 1 && m->u.window.increment <= MT_WINDOW_MAX);
		break;
	case MT_RESET:
		status(m->u.reset.status);
		text(m->u.reset.reason, false, MT_TEXT_MAX);
		break;
	case MT_PING:
	case MT_PONG:
		sink += (unsigned)m->u.ping.token;
		break;
	case MT_ERROR:
		text(m->u.error.message, true, MT_TEXT_MAX);
		break;
	case MT_POSTURE_QUERY:
	case MT_POSTURE:
		posture_fields(m, FUZZ_MSG == MT_POSTURE_QUERY);
		break;
	default:
		abort();
	}
}

static void check_frame(const uint8_t *f, size_t len)
{
	static uint8_t b1[MT_FRAME_MAX], b2[MT_FRAME_MAX];
	struct mt_msg m1, m2;
	const char *why = NULL;
	int n1, n2;

	if (wire_decode(f, len, &m1, &why) < 0) {
		need(why != NULL);
		return;
	}
	need(m1.hdr.type == FUZZ_MSG && m1.hdr.len == len - MT_FRAME_HDR);
	fields(&m1);
	n1 = wire_encode(b1, sizeof(b1), &m1);
	/* Decoding drops only unknown attributes, so the canonical form is never longer. */
	need(n1 >= MT_FRAME_HDR && (size_t)n1 <= len);
	need(memcmp(b1, f, 8) == 0 && memcmp(b1 + 12, f + 12, 4) == 0);
	need(wire_decode(b1, (size_t)n1, &m2, &why) == 0);
	fields(&m2);
	n2 = wire_encode(b2, sizeof(b2), &m2);
	need(n2 == n1 && memcmp(b1, b2, (size_t)n1) == 0);
}

/* The header a receiver would have accepted for this type; CONFIG is tried with MORE too. */
static void run(const uint8_t *d, size_t n, uint16_t flags)
{
	uint32_t id = FUZZ_MSG >= MT_OPEN && FUZZ_MSG <= MT_RESET ? 7 : 0;
	uint32_t w[4] = {
	    htobe32((uint32_t)MT_WIRE_VERSION << 24 | (uint32_t)FUZZ_MSG << 16 | flags),
	    htobe32(id), htobe32((uint32_t)n), 0};
	uint8_t *frame = malloc(MT_FRAME_HDR + n); /* exact size: ASan sees any over-read */
	struct mt_hdr h;
	const char *why = NULL;

	need(frame != NULL);
	memcpy(frame, w, sizeof(w));
	if (n)
		memcpy(frame + MT_FRAME_HDR, d, n);
	need(wire_peek_header(frame, MT_FRAME_HDR + n, &h, &why) == 0);
	need(wire_frame_len(&h) == MT_FRAME_HDR + n);
	check_frame(frame, MT_FRAME_HDR + n);
	free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	if (n > MT_FRAME_MAX_PAYLOAD)
		return 0;
	run(d, n, 0);
	if (FUZZ_MSG == MT_CONFIG)
		run(d, n, MT_FRAME_F_MORE);
	return 0;
}
