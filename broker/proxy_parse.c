/*
 * The inspection proxy's parsers: the HTTP CONNECT request of an explicit proxy client and
 * the TLS ClientHello that follows it (SNI, ALPN). Pure functions over caller buffers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "inspect.h"

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 9110 tchar */
static bool is_tchar(int c)
{
	return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* field-vchar, SP, HTAB and obs-text; no other control byte */
static bool is_value_char(int c)
{
	return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f);
}

int proxy_host_name(const char *s, size_t n, char *out)
{
	size_t i, label = 0;
	bool all_digits = true;

	if (n == 0 || n > PROXY_HOST_MAX)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		int c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return -EINVAL;
			label = 0;
			all_digits = true;
		} else if (is_alpha(c) || is_digit(c) || c == '-' || c == '_') {
			if ((label == 0 && c == '-') || ++label > 63)
				return -EINVAL;
			if (!is_digit(c))
				all_digits = false;
		} else {
			return -EINVAL;
		}
		out[i] = (char)lower(c);
	}
	/* no trailing dot; a last label of digits would read as a mangled IPv4 address */
	if (label == 0 || s[n - 1] == '-' || all_digits)
		return -EINVAL;
	out[n] = '\0';
	return 0;
}

static int parse_port(const char *s, size_t n, uint16_t *port)
{
	unsigned v = 0;
	size_t i;

	if (n == 0 || n > 5)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		if (!is_digit((unsigned char)s[i]))
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* authority-form: host:port, [v6]:port */
static int parse_authority(const char *s, size_t n, struct proxy_connect *req)
{
	char tmp[INET6_ADDRSTRLEN];
	const char *colon;
	size_t hlen;

	if (n > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', n);

		if (!close || (size_t)(close - s) + 1 >= n || close[1] != ':')
			return -EINVAL;
		hlen = (size_t)(close - s) - 1;
		if (hlen == 0 || hlen >= sizeof(tmp))
			return -EINVAL;
		memcpy(tmp, s + 1, hlen);
		tmp[hlen] = '\0';
		if (inet_pton(AF_INET6, tmp, req->addr) != 1)
			return -EINVAL;
		inet_ntop(AF_INET6, req->addr, req->host, sizeof(req->host));
		req->host_kind = PROXY_HOST_IPV6;
		colon = close + 1;
	} else {
		colon = memrchr(s, ':', n);
		if (!colon)
			return -EINVAL;
		hlen = (size_t)(colon - s);
		if (hlen > 0 && hlen < sizeof(tmp) && memchr(s, ':', hlen) == NULL) {
			memcpy(tmp, s, hlen);
			tmp[hlen] = '\0';
			if (inet_pton(AF_INET, tmp, req->addr) == 1) {
				memcpy(req->host, tmp, hlen + 1);
				req->host_kind = PROXY_HOST_IPV4;
				goto port;
			}
		}
		if (proxy_host_name(s, hlen, req->host) < 0)
			return -EINVAL;
		req->host_kind = PROXY_HOST_NAME;
	}
port:
	return parse_port(colon + 1, n - (size_t)(colon + 1 - s), &req->port);
}

static enum proxy_verdict refuse(struct proxy_connect *req, unsigned status, const char *reason)
{
	req->status = status;
	req->reason = reason;
	return PROXY_REFUSE;
}

static enum proxy_verdict parse_request_line(const char *l, size_t n, struct proxy_connect *req)
{
	const char *sp1, *sp2;
	size_t i;

	for (i = 0; i < n; i++)
		if ((unsigned char)l[i] <= 0x20 && l[i] != ' ')
			return refuse(req, 400, "control byte in request line");
	sp1 = memchr(l, ' ', n);
	if (!sp1 || sp1 == l)
		return refuse(req, 400, "malformed request line");
	for (i = 0; l + i < sp1; i++)
		if (!is_tchar((unsigned char)l[i]))
			return refuse(req, 400, "malformed method");
	if ((size_t)(sp1 - l) != 7 || memcmp(l, "CONNECT", 7) != 0)
		return refuse(req, 405, "method is not CONNECT");
	sp2 = memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - l));
	if (!sp2 || sp2 == sp1 + 1)
		return refuse(req, 400, "malformed request line");
	if ((size_t)(l + n - (sp2 + 1)) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
	    (sp2[8] != '0' && sp2[8] != '1'))
		return refuse(req, 400, "unsupported HTTP version");
	req->http_minor = (uint8_t)(sp2[8] - '0');
	if (parse_authority(sp1 + 1, (size_t)(sp2 - sp1 - 1), req) < 0)
		return refuse(req, 400, "bad host or port in CONNECT target");
	return PROXY_COMPLETE;
}

static bool name_is(const char *name, size_t n, const char *want)
{
	size_t i;

	if (strlen(want) != n)
		return false;
	for (i = 0; i < n; i++)
		if (lower((unsigned char)name[i]) != want[i])
			return false;
	return true;
}

static enum proxy_verdict parse_header(const char *l, size_t n, struct proxy_connect *req)
{
	const char *colon = memchr(l, ':', n);
	const char *v, *end = l + n;
	size_t i, nlen;

	if (l[0] == ' ' || l[0] == '\t')
		return refuse(req, 400, "obsolete line folding");
	if (!colon || colon == l)
		return refuse(req, 400, "malformed header field");
	nlen = (size_t)(colon - l);
	for (i = 0; i < nlen; i++)
		if (!is_tchar((unsigned char)l[i]))
			return refuse(req, 400, "malformed header name");
	for (v = colon + 1; v < end; v++)
		if (!is_value_char((unsigned char)*v))
			return refuse(req, 400, "control byte in header value");
	for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
		;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	/* CONNECT has no content (RFC 9110 9.3.6); framing headers here mean smuggling */
	if (name_is(l, nlen, "transfer-encoding"))
		return refuse(req, 400, "CONNECT with Transfer-Encoding");
	if (name_is(l, nlen, "content-length") && !(end - v == 1 && *v == '0'))
		return refuse(req, 400, "CONNECT with content");
	if (name_is(l, nlen, "proxy-authorization")) {
		if (req->proxy_auth)
			return refuse(req, 400, "repeated Proxy-Authorization");
		req->proxy_auth = v;
		req->proxy_auth_len = (size_t)(end - v);
	}
	return PROXY_COMPLETE;
}

enum proxy_verdict proxy_parse_connect(const char *buf, size_t len, struct proxy_connect *req)
{
	enum proxy_verdict v;
	size_t off = 0, nheaders = 0;

	memset(req, 0, sizeof(*req));
	for (;;) {
		const char *lf = memchr(buf + off, '\n', len - off);
		size_t limit = off == 0 ? PROXY_LINE_MAX : PROXY_HEAD_MAX;
		size_t n;

		if (!lf) {
			if (len > limit)
				return refuse(req, off == 0 ? 414 : 431,
				              off == 0 ? "request line too long" : "head too long");
			return PROXY_NEED_MORE;
		}
		n = (size_t)(lf - buf) + 1;
		if (n > limit)
			return refuse(req, off == 0 ? 414 : 431,
			              off == 0 ? "request line too long" : "head too long");
		if (n - off < 2 || lf[-1] != '\r')
			return refuse(req, 400, "line not ended by CRLF");
		if (off == 0) {
			v = parse_request_line(buf, n - 2, req);
		} else if (n - off == 2) {
			req->status = 200;
			req->head_len = n;
			return PROXY_COMPLETE;
		} else if (++nheaders > PROXY_HEADERS_MAX) {
			return refuse(req, 431, "too many header fields");
		} else {
			v = parse_header(buf + off, n - off - 2, req);
		}
		if (v != PROXY_COMPLETE)
			return v;
		off = n;
	}
}

/* A reader over the handshake bytes carried by consecutive TLS records. */
struct hs_reader {
	const uint8_t *buf;
	size_t len;   /* bytes of complete records in buf */
	size_t pos;   /* next byte in buf */
	size_t left;  /* payload left in the current record */
	size_t avail; /* handshake bytes from pos to the end of complete records */
};

static void hs_next_record(struct hs_reader *r)
{
	while (r->left == 0 && r->pos + 5 <= r->len) {
		r->left = (size_t)r->buf[r->pos + 3] << 8 | r->buf[r->pos + 4];
		r->pos += 5;
	}
}

static int hs_read(struct hs_reader *r, uint8_t *out, size_t n)
{
	if (n > r->avail)
		return -EBADMSG;
	r->avail -= n;
	while (n > 0) {
		size_t k;

		hs_next_record(r);
		k = n < r->left ? n : r->left;
		if (out) {
			memcpy(out, r->buf + r->pos, k);
			out += k;
		}
		r->pos += k;
		r->left -= k;
		n -= k;
	}
	return 0;
}

static int hs_u8(struct hs_reader *r, size_t *v)
{
	uint8_t b;

	if (hs_read(r, &b, 1) < 0)
		return -EBADMSG;
	*v = b;
	return 0;
}

static int hs_u16(struct hs_reader *r, size_t *v)
{
	uint8_t b[2];

	if (hs_read(r, b, 2) < 0)
		return -EBADMSG;
	*v = (size_t)b[0] << 8 | b[1];
	return 0;
}

static int hs_u24(struct hs_reader *r, size_t *v)
{
	uint8_t b[3];

	if (hs_read(r, b, 3) < 0)
		return -EBADMSG;
	*v = (size_t)b[0] << 16 | (size_t)b[1] << 8 | b[2];
	return 0;
}

static enum tls_hello_verdict bad(struct tls_hello *h, const char *reason)
{
	h->reason = reason;
	return TLS_HELLO_BAD;
}

static enum tls_hello_verdict parse_sni(struct hs_reader *r, size_t ext_len, struct tls_hello *h)
{
	char name[PROXY_HOST_MAX];
	size_t list, type, n;

	if (hs_u16(r, &list) < 0 || list + 2 != ext_len || list < 3)
		return bad(h, "bad server_name list length");
	while (list > 0) {
		if (list < 3 || hs_u8(r, &type) < 0 || hs_u16(r, &n) < 0 || n == 0 || n + 3 > list)
			return bad(h, "bad server_name entry");
		list -= n + 3;
		if (type != 0) {
			if (hs_read(r, NULL, n) < 0)
				return bad(h, "truncated server_name");
			continue;
		}
		if (h->sni[0])
			return bad(h, "two host_name entries");
		if (n > sizeof(name) || hs_read(r, (uint8_t *)name, n) < 0)
			return bad(h, "host_name too long");
		/* proxy_host_name also refuses IP literals, as RFC 6066 3 does in host_name */
		if (proxy_host_name(name, n, h->sni) < 0) {
			h->sni[0] = '\0';
			return bad(h, "host_name is not a DNS name");
		}
	}
	return TLS_HELLO_COMPLETE;
}

static enum tls_hello_verdict parse_alpn(struct hs_reader *r, size_t ext_len, struct tls_hello *h)
{
	size_t list, i;

	if (hs_u16(r, &list) < 0 || list + 2 != ext_len || list < 2)
		return bad(h, "bad ALPN list length");
	if (list > sizeof(h->alpn))
		return bad(h, "ALPN list too long");
	if (hs_read(r, h->alpn, list) < 0)
		return bad(h, "truncated ALPN list");
	for (i = 0; i < list; i += 1 + h->alpn[i]) {
		if (h->alpn[i] == 0 || i + 1 + h->alpn[i] > list)
			return bad(h, "bad ALPN protocol name");
		h->alpn_count++;
	}
	h->alpn_len = list;
	return TLS_HELLO_COMPLETE;
}

static enum tls_hello_verdict parse_versions(struct hs_reader *r, size_t ext_len,
                                             struct tls_hello *h)
{
	size_t list, v;

	if (hs_u8(r, &list) < 0 || list + 1 != ext_len || list < 2 || list % 2)
		return bad(h, "bad supported_versions length");
	for (; list > 0; list -= 2) {
		if (hs_u16(r, &v) < 0)
			return bad(h, "truncated supported_versions");
		if (v == 0x0304)
			h->tls13 = true;
	}
	return TLS_HELLO_COMPLETE;
}

static enum tls_hello_verdict parse_extensions(struct hs_reader *r, size_t body_left,
                                               struct tls_hello *h)
{
	uint16_t seen[TLS_HELLO_EXT_MAX];
	size_t total, type, n, nseen = 0, i, before;
	enum tls_hello_verdict v;

	if (body_left == 0)
		return TLS_HELLO_COMPLETE; /* no extensions at all: legal before TLS 1.3 */
	if (hs_u16(r, &total) < 0 || total + 2 != body_left)
		return bad(h, "bad extensions length");
	while (total > 0) {
		if (total < 4 || hs_u16(r, &type) < 0 || hs_u16(r, &n) < 0 || n + 4 > total)
			return bad(h, "bad extension header");
		total -= n + 4;
		for (i = 0; i < nseen; i++)
			if (seen[i] == type)
				return bad(h, "repeated extension");
		if (nseen == TLS_HELLO_EXT_MAX)
			return bad(h, "too many extensions");
		seen[nseen++] = (uint16_t)type;
		before = r->avail;
		if (type == 0)
			v = parse_sni(r, n, h);
		else if (type == 16)
			v = parse_alpn(r, n, h);
		else if (type == 43)
			v = parse_versions(r, n, h);
		else
			v = hs_read(r, NULL, n) < 0 ? bad(h, "truncated extension")
			                            : TLS_HELLO_COMPLETE;
		if (v != TLS_HELLO_COMPLETE)
			return v;
		if (before - r->avail != n)
			return bad(h, "extension length mismatch");
	}
	return TLS_HELLO_COMPLETE;
}

enum tls_hello_verdict tls_parse_client_hello(const uint8_t *buf, size_t len, struct tls_hello *h)
{
	struct hs_reader r = {.buf = buf};
	size_t off = 0, records = 0, type = 0, body = 0, n, start, declared = 0;
	enum tls_hello_verdict v;
	bool other = false;

	memset(h, 0, sizeof(*h));
	/* Walk the complete records first, so that the reader only sees checked lengths. */
	while (off + 5 <= len) {
		size_t rlen = (size_t)buf[off + 3] << 8 | buf[off + 4];

		/* 0-RTT clients may pipeline other records after the hello */
		if (buf[off] != 22) {
			if (off == 0)
				return bad(h, "not TLS");
			other = true;
			break;
		}
		if (buf[off + 1] != 3 || buf[off + 2] > 4)
			return bad(h, "bad record version");
		if (rlen == 0 || rlen > 16384)
			return bad(h, "bad record length");
		if (++records > TLS_HELLO_RECORDS_MAX)
			return bad(h, "ClientHello spans too many records");
		declared += rlen;
		if (off + 5 + rlen > len)
			break;
		off += 5 + rlen;
		r.avail += rlen;
	}
	if (len > 0 && buf[0] != 22)
		return bad(h, "not TLS");
	r.len = off;
	if (r.avail < 4)
		return other ? bad(h, "non-handshake record inside ClientHello")
		             : TLS_HELLO_NEED_MORE;
	hs_u8(&r, &type);
	hs_u24(&r, &body);
	if (type != 1)
		return bad(h, "first handshake message is not ClientHello");
	if (body > TLS_HELLO_MAX)
		return bad(h, "ClientHello too long");
	if (body < 2 + 32 + 1 + 2 + 2 + 1 + 1)
		return bad(h, "ClientHello too short");
	/* The hello must end its record: nothing else may follow it in this flight. */
	if (declared > 4 + body)
		return bad(h, "trailing bytes after ClientHello");
	if (r.avail < body)
		return other ? bad(h, "non-handshake record inside ClientHello")
		             : TLS_HELLO_NEED_MORE;
	if (r.avail != body)
		return bad(h, "trailing bytes after ClientHello");
	h->record_len = off;
	start = r.avail;

	if (hs_u16(&r, &n) < 0)
		return bad(h, "truncated");
	if (n >> 8 != 3 || (n & 0xff) < 1)
		return bad(h, "unsupported legacy_version");
	h->legacy_version = (uint16_t)n;
	if (hs_read(&r, NULL, 32) < 0 || hs_u8(&r, &n) < 0 || n > 32 || hs_read(&r, NULL, n) < 0)
		return bad(h, "bad session_id");
	if (hs_u16(&r, &n) < 0 || n < 2 || n % 2 || hs_read(&r, NULL, n) < 0)
		return bad(h, "bad cipher_suites");
	if (hs_u8(&r, &n) < 0 || n < 1 || hs_read(&r, NULL, n) < 0)
		return bad(h, "bad compression_methods");
	v = parse_extensions(&r, body - (start - r.avail), h);
	if (v != TLS_HELLO_COMPLETE)
		return v;
	if (r.avail != 0)
		return bad(h, "ClientHello length mismatch");
	return TLS_HELLO_COMPLETE;
}

bool tls_hello_offers_alpn(const struct tls_hello *h, const char *proto)
{
	size_t plen = strlen(proto), i;

	for (i = 0; i < h->alpn_len; i += 1 + h->alpn[i])
		if (h->alpn[i] == plen && memcmp(h->alpn + i + 1, proto, plen) == 0)
			return true;
	return false;
}
