/*
 * The mtun wire codec: header checks, and table-driven TLV bodies that encode and decode
 * under the same rules, so that nothing is sent that a peer would refuse.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "lib/wire.h"

static inline uint16_t get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return be16toh(v);
}

static inline uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return be32toh(v);
}

static inline uint64_t get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return be64toh(v);
}

static inline void put16(uint8_t *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, sizeof(v));
}

static inline void put32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, sizeof(v));
}

static inline void put64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, sizeof(v));
}

static int refuse(const char **why, int err, const char *reason)
{
	if (why)
		*why = reason;
	return err;
}

static const char *const type_names[MT_TYPE_MAX] = {
    [MT_HELLO] = "HELLO",     [MT_CONFIG] = "CONFIG",
    [MT_RESOLVE] = "RESOLVE", [MT_RESOLVE_REPLY] = "RESOLVE_REPLY",
    [MT_PROBE] = "PROBE",     [MT_PROBE_REPLY] = "PROBE_REPLY",
    [MT_OPEN] = "OPEN",       [MT_OPEN_REPLY] = "OPEN_REPLY",
    [MT_BIND] = "BIND",       [MT_BIND_REPLY] = "BIND_REPLY",
    [MT_DATA] = "DATA",       [MT_WINDOW] = "WINDOW",
    [MT_FIN] = "FIN",         [MT_RESET] = "RESET",
    [MT_PING] = "PING",       [MT_PONG] = "PONG",
    [MT_ERROR] = "ERROR",     [MT_POSTURE_QUERY] = "POSTURE_QUERY",
    [MT_POSTURE] = "POSTURE",
};

static const char *const status_names[MT_STATUS_MAX] = {
    [MT_STATUS_OK] = "ok",
    [MT_STATUS_REFUSED] = "refused",
    [MT_STATUS_UNREACHABLE] = "unreachable",
    [MT_STATUS_TIMEOUT] = "timeout",
    [MT_STATUS_DENIED] = "denied",
    [MT_STATUS_NXDOMAIN] = "nxdomain",
    [MT_STATUS_NO_CONNECTOR] = "no_connector",
    [MT_STATUS_ERROR] = "error",
    [MT_STATUS_PROTOCOL] = "protocol",
    [MT_STATUS_REVOKED] = "revoked",
    [MT_STATUS_SHUTDOWN] = "shutdown",
};

const char *wire_type_name(unsigned type)
{
	if (type >= MT_TYPE_MAX || !type_names[type])
		return "UNKNOWN";
	return type_names[type];
}

const char *wire_status_name(unsigned status)
{
	if (status >= MT_STATUS_MAX)
		return "unknown";
	return status_names[status];
}

enum id_rule {
	ID_ZERO,    /* connection control */
	ID_NONZERO, /* per mtunnel */
	ID_ANY,     /* WINDOW: 0 is the connection window */
};

static const uint8_t type_id_rule[MT_TYPE_MAX] = {
    [MT_OPEN] = ID_NONZERO,       [MT_OPEN_REPLY] = ID_NONZERO, [MT_BIND] = ID_NONZERO,
    [MT_BIND_REPLY] = ID_NONZERO, [MT_DATA] = ID_NONZERO,       [MT_WINDOW] = ID_ANY,
    [MT_FIN] = ID_NONZERO,        [MT_RESET] = ID_NONZERO,
};

static const uint16_t type_flags[MT_TYPE_MAX] = {
    [MT_CONFIG] = MT_FRAME_F_MORE,
};

static int hdr_check(const struct mt_hdr *h, const char **why)
{
	if (h->version != MT_WIRE_VERSION)
		return refuse(why, -EPROTO, "unsupported protocol version");
	if (h->type == 0 || h->type >= MT_TYPE_MAX)
		return refuse(why, -EPROTO, "unknown frame type");
	if (h->len > MT_FRAME_MAX_PAYLOAD)
		return refuse(why, -EMSGSIZE, "frame longer than 16384 bytes");
	if (h->flags & ~type_flags[h->type])
		return refuse(why, -EPROTO, "flags not defined for this frame type");
	switch (type_id_rule[h->type]) {
	case ID_ZERO:
		if (h->id != 0)
			return refuse(why, -EPROTO, "control frame on a non-zero mtunnel id");
		break;
	case ID_NONZERO:
		if (h->id == 0)
			return refuse(why, -EPROTO, "per-mtunnel frame on mtunnel id 0");
		break;
	}
	if (h->seq != 0 && h->type != MT_DATA)
		return refuse(why, -EPROTO, "sequence number on a non-DATA frame");
	return 0;
}

int wire_peek_header(const uint8_t *buf, size_t len, struct mt_hdr *hdr, const char **why)
{
	uint32_t w0;

	if (len < MT_FRAME_HDR)
		return -EAGAIN;
	w0 = get32(buf);
	hdr->version = (uint8_t)(w0 >> 24);
	hdr->type = (uint8_t)(w0 >> 16);
	hdr->flags = (uint16_t)w0;
	hdr->id = get32(buf + 4);
	hdr->len = get32(buf + 8);
	hdr->seq = get32(buf + 12);
	return hdr_check(hdr, why);
}

/* --- value rules, shared by encode and decode --- */

static bool token_char(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.';
}

static bool text_ok(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] > 0x7e)
			return false;
	return true;
}

static bool token_ok(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!token_char(p[i]))
			return false;
	return true;
}

/* A DNS name: labels of 1..63 [A-Za-z0-9_-], dot-separated, no root dot. */
static bool name_ok(const uint8_t *p, size_t len)
{
	size_t label = 0;

	if (len == 0 || len > MT_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!token_char(p[i]) || ++label > 63)
			return false;
	}
	return label != 0;
}

static bool ip6_ok(const uint8_t *p, size_t len)
{
	char s[INET6_ADDRSTRLEN];
	struct in6_addr a;

	if (len == 0 || len >= sizeof(s))
		return false;
	/* inet_pton stops at a NUL: "::1\0junk" would pass and be read as "::1" later. */
	for (size_t i = 0; i < len; i++)
		if (!isxdigit(p[i]) && p[i] != ':' && p[i] != '.')
			return false;
	memcpy(s, p, len);
	s[len] = '\0';
	return inet_pton(AF_INET6, s, &a) == 1;
}

/* A DNS name, or an IPv6 literal (an IPv4 literal is a valid name). */
static bool host_ok(const uint8_t *p, size_t len)
{
	if (memchr(p, ':', len))
		return ip6_ok(p, len);
	return name_ok(p, len);
}

/* "host:port" or "[v6]:port", port 1..65535 without leading zeros. */
static bool hostport_ok(const uint8_t *p, size_t len)
{
	size_t colon = len, i;
	uint32_t port = 0;

	for (i = len; i > 0; i--) {
		if (p[i - 1] == ':') {
			colon = i - 1;
			break;
		}
	}
	if (colon == len || colon == 0 || len - colon - 1 == 0 || len - colon - 1 > 5)
		return false;
	if (p[colon + 1] == '0')
		return false;
	for (i = colon + 1; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		port = port * 10 + (uint32_t)(p[i] - '0');
	}
	if (port > 65535)
		return false;
	if (p[0] == '[')
		return colon >= 3 && p[colon - 1] == ']' && ip6_ok(p + 1, colon - 2);
	return name_ok(p, colon);
}

/* --- attribute tables --- */

enum akind {
	AK_U8,
	AK_U16,
	AK_U32,
	AK_U64,
	AK_PROTO, /* u8: 6 | 17 */
	AK_TEXT,
	AK_TOKEN,
	AK_NAME,
	AK_HOST,
	AK_HOSTPORT,
	AK_BYTES,
};

struct adesc {
	uint16_t num;
	uint8_t kind;
	bool req;
	uint16_t off;
	int16_t has;       /* offset of a bool has_ flag for optional numbers, or -1 */
	uint32_t min, max; /* value bounds for numbers, length bounds for strings */
	const char *bad;   /* reason when the value breaks the rule */
};

#define NUM(n, k, r, T, f, lo, hi, why)                                                            \
	{                                                                                          \
		n, k, r, offsetof(T, f), -1, lo, hi, why                                           \
	}
#define STR(n, k, r, T, f, lo, hi, why)                                                            \
	{                                                                                          \
		n, k, r, offsetof(T, f), -1, lo, hi, why                                           \
	}

#define A_REQ_ID(T) NUM(MT_A_REQ_ID, AK_U32, true, T, req_id, 0, UINT32_MAX, NULL)
#define A_PORT(T)   NUM(MT_A_PORT, AK_U16, true, T, port, 1, 65535, "port 0")
#define A_PROTO(T)  NUM(MT_A_PROTO, AK_PROTO, true, T, proto, 0, 255, "protocol not tcp or udp")
#define A_STATUS(T) NUM(MT_A_STATUS, AK_U8, true, T, status, 0, MT_STATUS_MAX - 1, "unknown status")
#define A_REASON(T) STR(MT_A_REASON, AK_TEXT, false, T, reason, 1, MT_TEXT_MAX, "bad reason text")
#define A_WINDOW(T)                                                                                \
	NUM(MT_A_WINDOW, AK_U32, true, T, window, 0, MT_WINDOW_MAX, "window over 2^31-1")

static const struct adesc hello_attrs[] = {
    NUM(MT_A_ROLE, AK_U8, true, struct mt_hello, role, MT_ROLE_AGENT, MT_ROLE_MAX - 1,
        "unknown role"),
    NUM(MT_A_SESSION_KIND, AK_U8, true, struct mt_hello, kind, MT_SESSION_CONTROL, MT_SESSION_DATA,
        "unknown session kind"),
    STR(MT_A_SW_VERSION, AK_TEXT, true, struct mt_hello, sw_version, 1, MT_SW_MAX,
        "bad software version"),
    NUM(MT_A_CAPS, AK_U32, true, struct mt_hello, caps, 0, UINT32_MAX, NULL),
    STR(MT_A_GROUP, AK_TOKEN, false, struct mt_hello, group, 1, MT_TOKEN_MAX,
        "bad connector group"),
    STR(MT_A_LOCATION, AK_TOKEN, false, struct mt_hello, location, 1, MT_TOKEN_MAX, "bad location"),
    {MT_A_CAPACITY, AK_U32, false, offsetof(struct mt_hello, capacity),
     offsetof(struct mt_hello, has_capacity), 0, UINT32_MAX, NULL},
    STR(MT_A_DEVICE_PROOF, AK_BYTES, false, struct mt_hello, device_proof, 1, MT_PROOF_MAX,
        "device proof longer than 64 bytes"),
    STR(MT_A_COOKIE, AK_BYTES, false, struct mt_hello, cookie, MT_COOKIE_LEN, MT_COOKIE_LEN,
        "bind cookie not 16 bytes"),
};

static const struct adesc resolve_attrs[] = {
    A_REQ_ID(struct mt_resolve),
    STR(MT_A_NAME, AK_NAME, true, struct mt_resolve, name, 1, MT_NAME_MAX, "bad name"),
    A_PORT(struct mt_resolve),
    A_PROTO(struct mt_resolve),
};

static const struct adesc resolve_reply_attrs[] = {
    A_REQ_ID(struct mt_resolve_reply),
    A_STATUS(struct mt_resolve_reply),
    NUM(MT_A_TTL, AK_U32, true, struct mt_resolve_reply, ttl, 0, UINT32_MAX, NULL),
    A_REASON(struct mt_resolve_reply),
};

static const struct adesc probe_attrs[] = {
    A_REQ_ID(struct mt_probe),
    STR(MT_A_HOST, AK_HOST, true, struct mt_probe, host, 1, MT_NAME_MAX, "bad host"),
    A_PORT(struct mt_probe),
    A_PROTO(struct mt_probe),
    NUM(MT_A_DEADLINE_MS, AK_U32, true, struct mt_probe, deadline_ms, 0, UINT32_MAX, NULL),
};

static const struct adesc probe_reply_attrs[] = {
    A_REQ_ID(struct mt_probe_reply),
    A_STATUS(struct mt_probe_reply),
    NUM(MT_A_LATENCY_US, AK_U32, true, struct mt_probe_reply, latency_us, 0, UINT32_MAX, NULL),
    A_REASON(struct mt_probe_reply),
};

static const struct adesc open_attrs[] = {
    STR(MT_A_NAME, AK_HOST, true, struct mt_open, name, 1, MT_NAME_MAX, "bad name"),
    A_PORT(struct mt_open),
    A_PROTO(struct mt_open),
    A_WINDOW(struct mt_open),
};

static const struct adesc reply_attrs[] = {
    A_STATUS(struct mt_reply),
    A_WINDOW(struct mt_reply),
    A_REASON(struct mt_reply),
};

static const struct adesc bind_attrs[] = {
    STR(MT_A_HOST, AK_HOST, true, struct mt_bind, host, 1, MT_NAME_MAX, "bad host"),
    A_PORT(struct mt_bind),
    A_PROTO(struct mt_bind),
    STR(MT_A_BROKER, AK_HOSTPORT, true, struct mt_bind, broker, 1, MT_BROKER_MAX,
        "broker not host:port"),
    STR(MT_A_COOKIE, AK_BYTES, true, struct mt_bind, cookie, MT_COOKIE_LEN, MT_COOKIE_LEN,
        "bind cookie not 16 bytes"),
    A_WINDOW(struct mt_bind),
};

static const struct adesc window_attrs[] = {
    NUM(MT_A_INCREMENT, AK_U32, true, struct mt_window, increment, 1, MT_WINDOW_MAX,
        "window increment not in 1..2^31-1"),
};

static const struct adesc reset_attrs[] = {
    A_STATUS(struct mt_reset),
    A_REASON(struct mt_reset),
};

static const struct adesc ping_attrs[] = {
    NUM(MT_A_TOKEN, AK_U64, true, struct mt_ping, token, 0, 0, NULL),
};

static const struct adesc error_attrs[] = {
    NUM(MT_A_CODE, AK_U32, true, struct mt_error, code, 0, UINT32_MAX, NULL),
    STR(MT_A_MESSAGE, AK_TEXT, true, struct mt_error, message, 1, MT_TEXT_MAX, "bad error message"),
};

static int hello_check(const void *msg, const char **why)
{
	const struct mt_hello *h = msg;

	if (h->cookie.len && (h->role != MT_ROLE_CONNECTOR || h->kind != MT_SESSION_DATA))
		return refuse(why, -EPROTO, "bind cookie outside a connector data session");
	return 0;
}

struct mdesc {
	const struct adesc *a;
	uint8_t n;
	int (*check)(const void *msg, const char **why);
};

#define MSG(t, check)                                                                              \
	{                                                                                          \
		t, sizeof(t) / sizeof(t[0]), check                                                 \
	}

static const struct mdesc msg_desc[MT_TYPE_MAX] = {
    [MT_HELLO] = MSG(hello_attrs, hello_check),
    [MT_RESOLVE] = MSG(resolve_attrs, NULL),
    [MT_RESOLVE_REPLY] = MSG(resolve_reply_attrs, NULL),
    [MT_PROBE] = MSG(probe_attrs, NULL),
    [MT_PROBE_REPLY] = MSG(probe_reply_attrs, NULL),
    [MT_OPEN] = MSG(open_attrs, NULL),
    [MT_OPEN_REPLY] = MSG(reply_attrs, NULL),
    [MT_BIND] = MSG(bind_attrs, NULL),
    [MT_BIND_REPLY] = MSG(reply_attrs, NULL),
    [MT_WINDOW] = MSG(window_attrs, NULL),
    [MT_RESET] = MSG(reset_attrs, NULL),
    [MT_PING] = MSG(ping_attrs, NULL),
    [MT_PONG] = MSG(ping_attrs, NULL),
    [MT_ERROR] = MSG(error_attrs, NULL),
};

static size_t num_size(uint8_t kind)
{
	switch (kind) {
	case AK_U8:
	case AK_PROTO:
		return 1;
	case AK_U16:
		return 2;
	case AK_U32:
		return 4;
	case AK_U64:
		return 8;
	}
	return 0;
}

/* Checks a value held in a message struct; the reason names the rule. */
static int value_check(const struct adesc *d, const void *msg, const char **why)
{
	const uint8_t *f = (const uint8_t *)msg + d->off;
	const struct mt_bytes *b = (const struct mt_bytes *)(const void *)f;
	uint64_t v = 0;
	bool ok;

	switch (d->kind) {
	case AK_U8:
	case AK_PROTO:
		v = *f;
		break;
	case AK_U16:
		v = *(const uint16_t *)(const void *)f;
		break;
	case AK_U32:
		v = *(const uint32_t *)(const void *)f;
		break;
	case AK_U64:
		return 0;
	default:
		if (b->len < d->min || b->len > d->max || !b->p)
			return refuse(why, -EPROTO, d->bad);
		switch (d->kind) {
		case AK_TEXT:
			ok = text_ok(b->p, b->len);
			break;
		case AK_TOKEN:
			ok = token_ok(b->p, b->len);
			break;
		case AK_NAME:
			ok = name_ok(b->p, b->len);
			break;
		case AK_HOST:
			ok = host_ok(b->p, b->len);
			break;
		case AK_HOSTPORT:
			ok = hostport_ok(b->p, b->len);
			break;
		default:
			ok = true;
		}
		return ok ? 0 : refuse(why, -EPROTO, d->bad);
	}
	if (d->kind == AK_PROTO)
		ok = v == MT_PROTO_TCP || v == MT_PROTO_UDP;
	else
		ok = v >= d->min && v <= d->max;
	return ok ? 0 : refuse(why, -EPROTO, d->bad);
}

static bool present(const struct adesc *d, const void *msg)
{
	const uint8_t *f = (const uint8_t *)msg + d->off;

	if (d->req)
		return true;
	if (d->has >= 0)
		return *(const bool *)(const void *)((const uint8_t *)msg + d->has);
	if (num_size(d->kind))
		return true;
	return ((const struct mt_bytes *)(const void *)f)->len != 0;
}

/* --- decoding --- */

struct attr {
	uint16_t type; /* with MT_ATTR_MANDATORY */
	uint16_t num;
	const uint8_t *v;
	uint16_t len;
};

/* Takes the next attribute off [*p, end): 1, 0 at the end, or -EPROTO. */
static int attr_next(const uint8_t **p, const uint8_t *end, struct attr *a, const char **why)
{
	size_t left = (size_t)(end - *p);

	if (left == 0)
		return 0;
	if (left < MT_ATTR_HDR)
		return refuse(why, -EPROTO, "truncated attribute header");
	a->type = get16(*p);
	a->num = a->type & ~MT_ATTR_MANDATORY;
	a->len = get16(*p + 2);
	if (a->len > left - MT_ATTR_HDR)
		return refuse(why, -EPROTO, "attribute longer than its message");
	a->v = *p + MT_ATTR_HDR;
	*p += MT_ATTR_HDR + a->len;
	return 1;
}

static int attr_unknown(const struct attr *a, const char **why)
{
	if (a->type & MT_ATTR_MANDATORY)
		return refuse(why, -EPROTO, "unknown mandatory attribute");
	return 0;
}

/* Marks attribute number num seen in *seen (numbers < 64); refuses a second one. */
static int attr_once(uint64_t *seen, uint16_t num, const char **why)
{
	uint64_t bit = 1ULL << (num & 63);

	if (*seen & bit)
		return refuse(why, -EPROTO, "duplicate attribute");
	*seen |= bit;
	return 0;
}

static int attrs_decode(const struct mdesc *md, const uint8_t *p, size_t len, void *msg,
                        const char **why)
{
	const uint8_t *end = p + len;
	uint64_t seen = 0;
	struct attr a;
	int rc;

	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		const struct adesc *d = NULL;
		uint8_t *f;

		for (unsigned i = 0; i < md->n; i++) {
			if (md->a[i].num == a.num) {
				d = &md->a[i];
				break;
			}
		}
		if (!d) {
			if ((rc = attr_unknown(&a, why)) < 0)
				return rc;
			continue;
		}
		if ((rc = attr_once(&seen, a.num, why)) < 0)
			return rc;
		f = (uint8_t *)msg + d->off;
		switch (d->kind) {
		case AK_U8:
		case AK_PROTO:
		case AK_U16:
		case AK_U32:
		case AK_U64:
			if (a.len != num_size(d->kind))
				return refuse(why, -EPROTO, "bad attribute length");
			if (d->kind == AK_U8 || d->kind == AK_PROTO)
				*f = a.v[0];
			else if (d->kind == AK_U16)
				*(uint16_t *)(void *)f = get16(a.v);
			else if (d->kind == AK_U32)
				*(uint32_t *)(void *)f = get32(a.v);
			else
				*(uint64_t *)(void *)f = get64(a.v);
			if (d->has >= 0)
				*(bool *)(void *)((uint8_t *)msg + d->has) = true;
			break;
		default:
			if (a.len < d->min || a.len > d->max)
				return refuse(why, -EPROTO,
				              d->bad ? d->bad : "bad attribute length");
			((struct mt_bytes *)(void *)f)->p = a.v;
			((struct mt_bytes *)(void *)f)->len = a.len;
		}
		if ((rc = value_check(d, msg, why)) < 0)
			return rc;
	}
	if (rc < 0)
		return rc;
	for (unsigned i = 0; i < md->n; i++)
		if (md->a[i].req && !(seen & (1ULL << md->a[i].num)))
			return refuse(why, -EPROTO, "missing required attribute");
	return md->check ? md->check(msg, why) : 0;
}

static int range_decode(const uint8_t *p, size_t len, struct mt_port_range *r, const char **why)
{
	const uint8_t *end = p + len;
	uint64_t seen = 0;
	struct attr a;
	int rc;

	memset(r, 0, sizeof(*r));
	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		if (a.num < MT_P_PROTO || a.num > MT_P_HI) {
			if ((rc = attr_unknown(&a, why)) < 0)
				return rc;
			continue;
		}
		if ((rc = attr_once(&seen, a.num, why)) < 0)
			return rc;
		if (a.len != (a.num == MT_P_PROTO ? 1 : 2))
			return refuse(why, -EPROTO, "bad attribute length");
		if (a.num == MT_P_PROTO)
			r->proto = a.v[0];
		else if (a.num == MT_P_LO)
			r->lo = get16(a.v);
		else
			r->hi = get16(a.v);
	}
	if (rc < 0)
		return rc;
	if (seen != (1U << MT_P_PROTO | 1U << MT_P_LO | 1U << MT_P_HI))
		return refuse(why, -EPROTO, "missing required attribute");
	return 0;
}

static int range_check(const struct mt_port_range *r, const char **why)
{
	if (r->proto != MT_PROTO_TCP && r->proto != MT_PROTO_UDP)
		return refuse(why, -EPROTO, "protocol not tcp or udp");
	if (r->lo == 0 || r->lo > r->hi)
		return refuse(why, -EPROTO, "bad port range");
	return 0;
}

/* Field rules of a segment, whether decoded or about to be encoded. */
static int segment_check(const struct mt_segment *s, const char **why)
{
	unsigned bits;

	if (s->flags & ~MT_SEG_F_ALL)
		return refuse(why, -EPROTO, "unknown segment flags");
	if (s->nranges == 0)
		return refuse(why, -EPROTO, "segment without port ranges");
	switch (s->kind) {
	case MT_SEG_FQDN:
		if (!s->name.p || !name_ok(s->name.p, s->name.len))
			return refuse(why, -EPROTO, "bad segment name");
		break;
	case MT_SEG_WILDCARD:
		if (!s->name.p || s->name.len < 3 || s->name.len > MT_NAME_MAX ||
		    s->name.p[0] != '*' || s->name.p[1] != '.' ||
		    !name_ok(s->name.p + 2, s->name.len - 2u))
			return refuse(why, -EPROTO, "bad wildcard name");
		break;
	case MT_SEG_CIDR:
		if (s->family != 4 && s->family != 6)
			return refuse(why, -EPROTO, "bad address family");
		bits = s->family == 4 ? 32 : 128;
		if (s->prefix > bits)
			return refuse(why, -EPROTO, "prefix longer than the address");
		for (unsigned i = s->prefix; i < bits; i++)
			if (s->addr[i / 8] & (0x80 >> (i % 8)))
				return refuse(why, -EPROTO, "address bits set past the prefix");
		for (unsigned i = bits / 8; i < 16; i++)
			if (s->addr[i])
				return refuse(why, -EPROTO, "address bits set past the prefix");
		break;
	default:
		return refuse(why, -EPROTO, "unknown segment kind");
	}
	return 0;
}

static int segment_decode(const uint8_t *p, size_t len, struct mt_segment *s, const char **why)
{
	const uint8_t *end = p + len;
	uint64_t seen = 0;
	uint16_t addr_len = 0;
	struct attr a;
	int rc;

	memset(s, 0, sizeof(*s));
	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		size_t want = 0;

		if (a.num < MT_S_ID || a.num > MT_S_FLAGS) {
			if ((rc = attr_unknown(&a, why)) < 0)
				return rc;
			continue;
		}
		if (a.num == MT_S_PORTS) {
			struct mt_port_range r;

			if ((rc = range_decode(a.v, a.len, &r, why)) < 0 ||
			    (rc = range_check(&r, why)) < 0)
				return rc;
			if (s->nranges++ == 0)
				s->range_attrs.p = a.v - MT_ATTR_HDR;
			continue;
		}
		if ((rc = attr_once(&seen, a.num, why)) < 0)
			return rc;
		switch (a.num) {
		case MT_S_ID:
		case MT_S_FLAGS:
			want = 4;
			break;
		case MT_S_KIND:
		case MT_S_FAMILY:
		case MT_S_PREFIX:
			want = 1;
			break;
		case MT_S_NAME:
			if (a.len == 0 || a.len > MT_NAME_MAX)
				return refuse(why, -EPROTO, "bad segment name");
			s->name.p = a.v;
			s->name.len = a.len;
			continue;
		case MT_S_ADDR:
			if (a.len != 4 && a.len != 16)
				return refuse(why, -EPROTO, "address not 4 or 16 bytes");
			memcpy(s->addr, a.v, a.len);
			addr_len = a.len;
			continue;
		}
		if (a.len != want)
			return refuse(why, -EPROTO, "bad attribute length");
		if (a.num == MT_S_ID)
			s->id = get32(a.v);
		else if (a.num == MT_S_FLAGS)
			s->flags = get32(a.v);
		else if (a.num == MT_S_KIND)
			s->kind = a.v[0];
		else if (a.num == MT_S_FAMILY)
			s->family = a.v[0];
		else
			s->prefix = a.v[0];
	}
	if (rc < 0)
		return rc;
	if (!(seen & (1U << MT_S_ID)) || !(seen & (1U << MT_S_KIND)))
		return refuse(why, -EPROTO, "missing required attribute");
	if (s->kind == MT_SEG_CIDR) {
		uint64_t need = 1U << MT_S_FAMILY | 1U << MT_S_ADDR | 1U << MT_S_PREFIX;

		if ((seen & need) != need)
			return refuse(why, -EPROTO, "missing required attribute");
		if (seen & (1U << MT_S_NAME))
			return refuse(why, -EPROTO, "name on a cidr segment");
		if (addr_len != (s->family == 4 ? 4 : 16))
			return refuse(why, -EPROTO, "address length does not match family");
	} else if (seen & (1U << MT_S_FAMILY | 1U << MT_S_ADDR | 1U << MT_S_PREFIX)) {
		return refuse(why, -EPROTO, "address on a name segment");
	}
	if (s->nranges)
		s->range_attrs.len = (uint16_t)(end - s->range_attrs.p);
	return segment_check(s, why);
}

static int config_decode(const uint8_t *p, size_t len, struct mt_config *c, const char **why)
{
	const uint8_t *end = p + len;
	bool have_version = false;
	struct mt_segment s;
	struct attr a;
	int rc;

	memset(c, 0, sizeof(*c));
	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		if (a.num == MT_A_CONFIG_VERSION) {
			if (have_version)
				return refuse(why, -EPROTO, "duplicate attribute");
			if (a.len != 8)
				return refuse(why, -EPROTO, "bad attribute length");
			c->version = get64(a.v);
			have_version = true;
		} else if (a.num == MT_A_SEGMENT) {
			if ((rc = segment_decode(a.v, a.len, &s, why)) < 0)
				return rc;
			if (c->nsegs++ == 0)
				c->seg_attrs.p = a.v - MT_ATTR_HDR;
		} else if ((rc = attr_unknown(&a, why)) < 0) {
			return rc;
		}
	}
	if (rc < 0)
		return rc;
	if (!have_version)
		return refuse(why, -EPROTO, "missing required attribute");
	if (c->nsegs)
		c->seg_attrs.len = (uint16_t)(end - c->seg_attrs.p);
	return 0;
}

/* --- posture --- */

static bool path_ok(const uint8_t *p, size_t len)
{
	return len >= 1 && len <= MT_PATH_MAX && p[0] == '/' && text_ok(p, len);
}

static bool proc_ok(const uint8_t *p, size_t len)
{
	return len >= 1 && len <= MT_PROCESS_MAX && text_ok(p, len);
}

/* Count, content and uniqueness of a list of paths (files) or process names. */
static int list_check(const struct mt_bytes *l, unsigned n, bool files, const char **why)
{
	if (n > (files ? MT_POSTURE_FILES_MAX : MT_POSTURE_PROCS_MAX))
		return refuse(why, -EPROTO,
		              files ? "more than 32 files" : "more than 32 processes");
	if (n && !l)
		return refuse(why, -EPROTO, "list without items");
	for (unsigned i = 0; i < n; i++) {
		if (!l[i].p || !(files ? path_ok(l[i].p, l[i].len) : proc_ok(l[i].p, l[i].len)))
			return refuse(why, -EPROTO,
			              files ? "file not an absolute path" : "bad process name");
		for (unsigned j = 0; j < i; j++)
			if (l[j].len == l[i].len && memcmp(l[j].p, l[i].p, l[i].len) == 0)
				return refuse(why, -EPROTO,
				              files ? "duplicate file" : "duplicate process");
	}
	return 0;
}

/* Collects one repeated item; the bound is checked before the array is written. */
static int list_add(struct mt_bytes *l, uint16_t *n, bool files, const struct attr *a,
                    const char **why)
{
	if (*n >= (files ? MT_POSTURE_FILES_MAX : MT_POSTURE_PROCS_MAX))
		return refuse(why, -EPROTO,
		              files ? "more than 32 files" : "more than 32 processes");
	l[(*n)++] = (struct mt_bytes){a->v, a->len};
	return 0;
}

static int fact_decode(const uint8_t *p, size_t len, struct mt_file_fact *f, const char **why)
{
	const uint8_t *end = p + len;
	uint64_t seen = 0;
	struct attr a;
	int rc;

	memset(f, 0, sizeof(*f));
	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		if (a.num != MT_F_PATH && a.num != MT_F_SHA256) {
			if ((rc = attr_unknown(&a, why)) < 0)
				return rc;
			continue;
		}
		if ((rc = attr_once(&seen, a.num, why)) < 0)
			return rc;
		if (a.num == MT_F_PATH) {
			if (!path_ok(a.v, a.len))
				return refuse(why, -EPROTO, "file not an absolute path");
			f->path = (struct mt_bytes){a.v, a.len};
		} else {
			if (a.len != MT_SHA256_LEN)
				return refuse(why, -EPROTO, "SHA-256 not 32 bytes");
			memcpy(f->sha256, a.v, MT_SHA256_LEN);
		}
	}
	if (rc < 0)
		return rc;
	if (seen != (1U << MT_F_PATH | 1U << MT_F_SHA256))
		return refuse(why, -EPROTO, "missing required attribute");
	return 0;
}

static int version_decode(const struct attr *a, uint64_t *seen, uint64_t *v, const char **why)
{
	int rc;

	if ((rc = attr_once(seen, a->num, why)) < 0)
		return rc;
	if (a->len != 8)
		return refuse(why, -EPROTO, "bad attribute length");
	*v = get64(a->v);
	return 0;
}

static int posture_query_decode(const uint8_t *p, size_t len, struct mt_posture_query *q,
                                const char **why)
{
	struct mt_bytes files[MT_POSTURE_FILES_MAX], procs[MT_POSTURE_PROCS_MAX];
	const uint8_t *body = p, *end = p + len;
	uint16_t nfiles = 0, nprocs = 0;
	uint64_t seen = 0;
	struct attr a;
	int rc;

	memset(q, 0, sizeof(*q));
	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		switch (a.num) {
		case MT_A_CONFIG_VERSION:
			rc = version_decode(&a, &seen, &q->version, why);
			break;
		case MT_A_FILE:
			rc = list_add(files, &nfiles, true, &a, why);
			break;
		case MT_A_PROCESS:
			rc = list_add(procs, &nprocs, false, &a, why);
			break;
		case MT_A_FILE_FACT:
		case MT_A_KERNEL:
		case MT_A_OS:
		case MT_A_DISK_ENCRYPTED:
			rc = refuse(why, -EPROTO, "posture fact in a posture query");
			break;
		default:
			rc = attr_unknown(&a, why);
		}
		if (rc < 0)
			return rc;
	}
	if (rc < 0)
		return rc;
	if (!(seen & (1ULL << MT_A_CONFIG_VERSION)))
		return refuse(why, -EPROTO, "missing required attribute");
	if ((rc = list_check(files, nfiles, true, why)) < 0 ||
	    (rc = list_check(procs, nprocs, false, why)) < 0)
		return rc;
	q->attrs = (struct mt_bytes){body, (uint16_t)len};
	return 0;
}

static int posture_decode(const uint8_t *p, size_t len, struct mt_posture *ps, const char **why)
{
	struct mt_bytes paths[MT_POSTURE_FILES_MAX], procs[MT_POSTURE_PROCS_MAX];
	const uint8_t *body = p, *end = p + len;
	uint16_t nfiles = 0, nprocs = 0;
	struct mt_file_fact f;
	uint64_t seen = 0;
	struct attr a;
	int rc;

	memset(ps, 0, sizeof(*ps));
	while ((rc = attr_next(&p, end, &a, why)) > 0) {
		switch (a.num) {
		case MT_A_CONFIG_VERSION:
			rc = version_decode(&a, &seen, &ps->version, why);
			break;
		case MT_A_KERNEL:
		case MT_A_OS:
			if ((rc = attr_once(&seen, a.num, why)) < 0)
				break;
			if (a.num == MT_A_KERNEL && !proc_ok(a.v, a.len))
				rc = refuse(why, -EPROTO, "bad kernel release");
			else if (a.num == MT_A_OS &&
			         (a.len < 1 || a.len > MT_OS_MAX || !text_ok(a.v, a.len)))
				rc = refuse(why, -EPROTO, "bad OS name");
			else
				*(a.num == MT_A_KERNEL ? &ps->kernel : &ps->os) =
				    (struct mt_bytes){a.v, a.len};
			break;
		case MT_A_DISK_ENCRYPTED:
			if ((rc = attr_once(&seen, a.num, why)) < 0)
				break;
			if (a.len != 1)
				rc = refuse(why, -EPROTO, "bad attribute length");
			else if (a.v[0] > 1)
				rc = refuse(why, -EPROTO, "disk encryption not 0 or 1");
			else
				ps->disk_encrypted = a.v[0];
			break;
		case MT_A_FILE_FACT:
			if ((rc = fact_decode(a.v, a.len, &f, why)) < 0)
				break;
			a.v = f.path.p;
			a.len = f.path.len;
			rc = list_add(paths, &nfiles, true, &a, why);
			break;
		case MT_A_PROCESS:
			rc = list_add(procs, &nprocs, false, &a, why);
			break;
		case MT_A_FILE:
			rc = refuse(why, -EPROTO, "posture query item in a posture report");
			break;
		default:
			rc = attr_unknown(&a, why);
		}
		if (rc < 0)
			return rc;
	}
	if (rc < 0)
		return rc;
	if (!(seen & (1ULL << MT_A_CONFIG_VERSION)) || !(seen & (1ULL << MT_A_DISK_ENCRYPTED)))
		return refuse(why, -EPROTO, "missing required attribute");
	if ((rc = list_check(paths, nfiles, true, why)) < 0 ||
	    (rc = list_check(procs, nprocs, false, why)) < 0)
		return rc;
	ps->attrs = (struct mt_bytes){body, (uint16_t)len};
	return 0;
}

void wire_posture_iter(const struct mt_bytes *attrs, struct mt_iter *it)
{
	it->p = attrs->p;
	it->end = attrs->p ? attrs->p + attrs->len : NULL;
}

bool wire_posture_next(struct mt_iter *it, uint16_t *type, struct mt_bytes *text,
                       struct mt_file_fact *fact)
{
	struct attr a;

	/* Items are checked again: a view handed to a caller is never one decode skipped. */
	while (it->p && attr_next(&it->p, it->end, &a, NULL) > 0) {
		if (a.num == MT_A_FILE_FACT) {
			if (!fact || fact_decode(a.v, a.len, fact, NULL) < 0)
				continue;
		} else if (a.num == MT_A_FILE || a.num == MT_A_PROCESS) {
			if (!text ||
			    !(a.num == MT_A_FILE ? path_ok(a.v, a.len) : proc_ok(a.v, a.len)))
				continue;
			*text = (struct mt_bytes){a.v, a.len};
		} else {
			continue;
		}
		*type = a.num;
		return true;
	}
	return false;
}

int wire_decode(const uint8_t *buf, size_t len, struct mt_msg *m, const char **why)
{
	const uint8_t *body = buf + MT_FRAME_HDR;
	int rc;

	rc = wire_peek_header(buf, len, &m->hdr, why);
	if (rc == -EAGAIN)
		return refuse(why, -EPROTO, "truncated header");
	if (rc < 0)
		return rc;
	if (len < wire_frame_len(&m->hdr))
		return refuse(why, -EPROTO, "truncated frame");
	memset(&m->u, 0, sizeof(m->u));
	switch (m->hdr.type) {
	case MT_DATA:
		m->u.data.p = body;
		m->u.data.len = (uint16_t)m->hdr.len;
		return 0;
	case MT_FIN:
		return m->hdr.len ? refuse(why, -EPROTO, "FIN with a payload") : 0;
	case MT_CONFIG:
		return config_decode(body, m->hdr.len, &m->u.config, why);
	case MT_POSTURE_QUERY:
		return posture_query_decode(body, m->hdr.len, &m->u.posture_query, why);
	case MT_POSTURE:
		return posture_decode(body, m->hdr.len, &m->u.posture, why);
	}
	return attrs_decode(&msg_desc[m->hdr.type], body, m->hdr.len, &m->u, why);
}

void wire_config_segments(const struct mt_config *c, struct mt_iter *it)
{
	it->p = c->seg_attrs.p;
	it->end = c->seg_attrs.p ? c->seg_attrs.p + c->seg_attrs.len : NULL;
}

bool wire_segment_next(struct mt_iter *it, struct mt_segment *seg)
{
	struct attr a;

	while (it->p && attr_next(&it->p, it->end, &a, NULL) > 0)
		if (a.num == MT_A_SEGMENT)
			return segment_decode(a.v, a.len, seg, NULL) == 0;
	return false;
}

void wire_segment_ranges(const struct mt_segment *seg, struct mt_iter *it)
{
	it->p = seg->range_attrs.p;
	it->end = seg->range_attrs.p ? seg->range_attrs.p + seg->range_attrs.len : NULL;
}

bool wire_range_next(struct mt_iter *it, struct mt_port_range *r)
{
	struct attr a;

	while (it->p && attr_next(&it->p, it->end, &a, NULL) > 0)
		if (a.num == MT_S_PORTS)
			return range_decode(a.v, a.len, r, NULL) == 0;
	return false;
}

/* --- encoding --- */

struct wbuf {
	uint8_t *p, *end;
	int err;
};

/* Reserves an attribute of len bytes and returns where its value goes, or NULL. */
static uint8_t *w_attr(struct wbuf *w, uint16_t type, size_t len)
{
	uint8_t *v;

	if (w->err)
		return NULL;
	if (len > (size_t)(w->end - w->p) || (size_t)(w->end - w->p) - len < MT_ATTR_HDR) {
		w->err = -ENOSPC;
		return NULL;
	}
	put16(w->p, type);
	put16(w->p + 2, (uint16_t)len);
	v = w->p + MT_ATTR_HDR;
	w->p = v + len;
	return v;
}

static void w_u8(struct wbuf *w, uint16_t type, uint8_t v)
{
	uint8_t *d = w_attr(w, type, 1);

	if (d)
		*d = v;
}

static void w_u16(struct wbuf *w, uint16_t type, uint16_t v)
{
	uint8_t *d = w_attr(w, type, 2);

	if (d)
		put16(d, v);
}

static void w_u32(struct wbuf *w, uint16_t type, uint32_t v)
{
	uint8_t *d = w_attr(w, type, 4);

	if (d)
		put32(d, v);
}

static void w_u64(struct wbuf *w, uint16_t type, uint64_t v)
{
	uint8_t *d = w_attr(w, type, 8);

	if (d)
		put64(d, v);
}

static void w_bytes(struct wbuf *w, uint16_t type, const uint8_t *p, size_t len)
{
	uint8_t *d = w_attr(w, type, len);

	if (d && len)
		memcpy(d, p, len);
}

/* A nested attribute: its header now, its length when closed. */
static uint8_t *w_nest(struct wbuf *w, uint16_t type)
{
	uint8_t *h = w->p;

	return w_attr(w, type, 0) ? h : NULL;
}

static void w_nest_end(struct wbuf *w, uint8_t *h)
{
	if (!h || w->err)
		return;
	put16(h + 2, (uint16_t)(w->p - h - MT_ATTR_HDR));
}

static int attrs_encode(struct wbuf *w, const struct mdesc *md, const void *msg)
{
	int rc;

	if (md->check && (rc = md->check(msg, NULL)) < 0)
		return -EINVAL;
	for (unsigned i = 0; i < md->n; i++) {
		const struct adesc *d = &md->a[i];
		const uint8_t *f = (const uint8_t *)msg + d->off;
		const struct mt_bytes *b = (const struct mt_bytes *)(const void *)f;

		if (!present(d, msg))
			continue;
		if (value_check(d, msg, NULL) < 0)
			return -EINVAL;
		switch (d->kind) {
		case AK_U8:
		case AK_PROTO:
			w_u8(w, d->num, *f);
			break;
		case AK_U16:
			w_u16(w, d->num, *(const uint16_t *)(const void *)f);
			break;
		case AK_U32:
			w_u32(w, d->num, *(const uint32_t *)(const void *)f);
			break;
		case AK_U64:
			w_u64(w, d->num, *(const uint64_t *)(const void *)f);
			break;
		default:
			w_bytes(w, d->num, b->p, b->len);
		}
	}
	return w->err;
}

static int config_encode(struct wbuf *w, const struct mt_config *c)
{
	if (c->nsegs && !c->segs)
		return -EINVAL;
	w_u64(w, MT_A_CONFIG_VERSION, c->version);
	for (unsigned i = 0; i < c->nsegs; i++) {
		const struct mt_segment *s = &c->segs[i];
		uint8_t *nest;

		if (segment_check(s, NULL) < 0 || !s->ranges)
			return -EINVAL;
		nest = w_nest(w, MT_A_SEGMENT);
		w_u32(w, MT_S_ID, s->id);
		w_u8(w, MT_S_KIND, s->kind);
		if (s->kind == MT_SEG_CIDR) {
			w_u8(w, MT_S_FAMILY, s->family);
			w_bytes(w, MT_S_ADDR, s->addr, s->family == 4 ? 4 : 16);
			w_u8(w, MT_S_PREFIX, s->prefix);
		} else {
			w_bytes(w, MT_S_NAME, s->name.p, s->name.len);
		}
		if (s->flags)
			w_u32(w, MT_S_FLAGS, s->flags);
		for (unsigned j = 0; j < s->nranges; j++) {
			const struct mt_port_range *r = &s->ranges[j];
			uint8_t *rn;

			if (range_check(r, NULL) < 0)
				return -EINVAL;
			rn = w_nest(w, MT_S_PORTS);
			w_u8(w, MT_P_PROTO, r->proto);
			w_u16(w, MT_P_LO, r->lo);
			w_u16(w, MT_P_HI, r->hi);
			w_nest_end(w, rn);
		}
		w_nest_end(w, nest);
	}
	return w->err;
}

static void w_list(struct wbuf *w, uint16_t type, const struct mt_bytes *l, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		w_bytes(w, type, l[i].p, l[i].len);
}

static int posture_query_encode(struct wbuf *w, const struct mt_posture_query *q)
{
	if (list_check(q->files, q->nfiles, true, NULL) < 0 ||
	    list_check(q->procs, q->nprocs, false, NULL) < 0)
		return -EINVAL;
	w_u64(w, MT_A_CONFIG_VERSION, q->version);
	w_list(w, MT_A_FILE, q->files, q->nfiles);
	w_list(w, MT_A_PROCESS, q->procs, q->nprocs);
	return w->err;
}

static int posture_encode(struct wbuf *w, const struct mt_posture *ps)
{
	struct mt_bytes paths[MT_POSTURE_FILES_MAX];

	if (ps->nfiles > MT_POSTURE_FILES_MAX || (ps->nfiles && !ps->files))
		return -EINVAL;
	for (unsigned i = 0; i < ps->nfiles; i++)
		paths[i] = ps->files[i].path;
	if (list_check(paths, ps->nfiles, true, NULL) < 0 ||
	    list_check(ps->procs, ps->nprocs, false, NULL) < 0 || ps->disk_encrypted > 1)
		return -EINVAL;
	if (ps->kernel.len && (!ps->kernel.p || !proc_ok(ps->kernel.p, ps->kernel.len)))
		return -EINVAL;
	if (ps->os.len && (!ps->os.p || ps->os.len > MT_OS_MAX || !text_ok(ps->os.p, ps->os.len)))
		return -EINVAL;
	w_u64(w, MT_A_CONFIG_VERSION, ps->version);
	if (ps->kernel.len)
		w_bytes(w, MT_A_KERNEL, ps->kernel.p, ps->kernel.len);
	if (ps->os.len)
		w_bytes(w, MT_A_OS, ps->os.p, ps->os.len);
	w_u8(w, MT_A_DISK_ENCRYPTED, ps->disk_encrypted);
	for (unsigned i = 0; i < ps->nfiles; i++) {
		uint8_t *nest = w_nest(w, MT_A_FILE_FACT);

		w_bytes(w, MT_F_PATH, paths[i].p, paths[i].len);
		w_bytes(w, MT_F_SHA256, ps->files[i].sha256, MT_SHA256_LEN);
		w_nest_end(w, nest);
	}
	w_list(w, MT_A_PROCESS, ps->procs, ps->nprocs);
	return w->err;
}

int wire_encode(uint8_t *buf, size_t size, const struct mt_msg *m)
{
	struct mt_hdr h = m->hdr;
	struct wbuf w;
	size_t cap = size < MT_FRAME_MAX ? size : MT_FRAME_MAX;
	int rc = 0;

	h.version = MT_WIRE_VERSION;
	h.len = 0;
	if (hdr_check(&h, NULL) < 0)
		return -EINVAL;
	if (size < MT_FRAME_HDR)
		return -ENOSPC;
	w.p = buf + MT_FRAME_HDR;
	w.end = buf + cap;
	w.err = 0;
	switch (h.type) {
	case MT_DATA:
		if (m->u.data.len > MT_FRAME_MAX_PAYLOAD)
			return -EMSGSIZE;
		if (m->u.data.len > cap - MT_FRAME_HDR)
			return -ENOSPC;
		if (m->u.data.len)
			memcpy(w.p, m->u.data.p, m->u.data.len);
		w.p += m->u.data.len;
		break;
	case MT_FIN:
		break;
	case MT_CONFIG:
		rc = config_encode(&w, &m->u.config);
		break;
	case MT_POSTURE_QUERY:
		rc = posture_query_encode(&w, &m->u.posture_query);
		break;
	case MT_POSTURE:
		rc = posture_encode(&w, &m->u.posture);
		break;
	default:
		rc = attrs_encode(&w, &msg_desc[h.type], &m->u);
	}
	if (rc == -ENOSPC && cap == MT_FRAME_MAX)
		return -EMSGSIZE;
	if (rc < 0)
		return rc;
	h.len = (uint32_t)(w.p - buf - MT_FRAME_HDR);
	put32(buf, (uint32_t)h.version << 24 | (uint32_t)h.type << 16 | h.flags);
	put32(buf + 4, h.id);
	put32(buf + 8, h.len);
	put32(buf + 12, h.seq);
	return (int)(h.len + MT_FRAME_HDR);
}
