/* Tests for broker/proxy_parse.c: CONNECT requests and real and hand-made ClientHellos. */
#include <errno.h>

#include <openssl/ssl.h>

#include "inspect.h"
#include "t.h"

static enum proxy_verdict conn(const char *s, struct proxy_connect *req)
{
	return proxy_parse_connect(s, strlen(s), req);
}

static unsigned refused(const char *s)
{
	struct proxy_connect req;

	if (conn(s, &req) != PROXY_REFUSE)
		return 0;
	return req.status;
}

static void connect_basic(void)
{
	static const char r[] = "CONNECT Example.COM:443 HTTP/1.1\r\n"
				"Host: example.com:443\r\n"
				"User-Agent: curl/7.88.1\r\n\r\n"
				"\x16\x03\x01";
	struct proxy_connect req;

	T_REQUIRE(proxy_parse_connect(r, sizeof(r) - 1, &req) == PROXY_COMPLETE);
	T_EQ(req.status, 200);
	T_STREQ(req.host, "example.com");
	T_EQ(req.host_kind, PROXY_HOST_NAME);
	T_EQ(req.port, 443);
	T_EQ(req.http_minor, 1);
	T_EQ(req.head_len, sizeof(r) - 1 - 3); /* the tunnel's first bytes are not the head */
	T_CHECK(req.proxy_auth == NULL);
}

static void connect_need_more_on_every_prefix(void)
{
	static const char r[] = "CONNECT a.example:8443 HTTP/1.0\r\nProxy-Connection: keep\r\n\r\n";
	struct proxy_connect req;
	size_t i;

	for (i = 0; i < sizeof(r) - 1; i++)
		T_EQ(proxy_parse_connect(r, i, &req), PROXY_NEED_MORE);
	T_REQUIRE(proxy_parse_connect(r, sizeof(r) - 1, &req) == PROXY_COMPLETE);
	T_EQ(req.http_minor, 0);
	T_EQ(req.port, 8443);
}

static void connect_ip_literals(void)
{
	static const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
	struct proxy_connect req;

	T_REQUIRE(conn("CONNECT 10.1.2.3:443 HTTP/1.1\r\n\r\n", &req) == PROXY_COMPLETE);
	T_EQ(req.host_kind, PROXY_HOST_IPV4);
	T_STREQ(req.host, "10.1.2.3");
	T_CHECK(memcmp(req.addr, "\x0a\x01\x02\x03", 4) == 0);
	T_REQUIRE(conn("CONNECT [2001:DB8:0::1]:8443 HTTP/1.1\r\n\r\n", &req) == PROXY_COMPLETE);
	T_EQ(req.host_kind, PROXY_HOST_IPV6);
	T_STREQ(req.host, "2001:db8::1");
	T_CHECK(memcmp(req.addr, v6, 16) == 0);
	T_EQ(req.port, 8443);
}

static void connect_bad_targets_400(void)
{
	static const char *const bad[] = {
	    "CONNECT example.com HTTP/1.1\r\n\r\n",       /* no port */
	    "CONNECT example.com:0 HTTP/1.1\r\n\r\n",     /* port 0 */
	    "CONNECT example.com:65536 HTTP/1.1\r\n\r\n", /* port too big */
	    "CONNECT example.com:44a HTTP/1.1\r\n\r\n",
	    "CONNECT example.com:+443 HTTP/1.1\r\n\r\n",
	    "CONNECT example.com: HTTP/1.1\r\n\r\n",
	    "CONNECT :443 HTTP/1.1\r\n\r\n",
	    "CONNECT example.com.:443 HTTP/1.1\r\n\r\n", /* trailing dot */
	    "CONNECT a..b:443 HTTP/1.1\r\n\r\n",
	    "CONNECT -a.com:443 HTTP/1.1\r\n\r\n",
	    "CONNECT a-.com:443 HTTP/1.1\r\n\r\n",
	    "CONNECT 1.2.3:443 HTTP/1.1\r\n\r\n",     /* all-digit last label */
	    "CONNECT 1.2.3.256:443 HTTP/1.1\r\n\r\n", /* not an address, not a name */
	    "CONNECT ex%61mple.com:443 HTTP/1.1\r\n\r\n",
	    "CONNECT user@example.com:443 HTTP/1.1\r\n\r\n",
	    "CONNECT ::1:443 HTTP/1.1\r\n\r\n", /* v6 without brackets */
	    "CONNECT [::1] HTTP/1.1\r\n\r\n",
	    "CONNECT [::1]443 HTTP/1.1\r\n\r\n",
	    "CONNECT [zz::1]:443 HTTP/1.1\r\n\r\n",
	    "CONNECT [fe80::1%eth0]:443 HTTP/1.1\r\n\r\n",
	    "CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n",
	    "CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
	    "CONNECT example.com:443 HTTP/2.0\r\n\r\n",
	    "CONNECT example.com:443 HTTP/1.1 \r\n\r\n",
	    "CONNECT example.com:443\r\n\r\n",
	};
	char longlabel[128];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned st = refused(bad[i]);

		if (st != 400)
			printf("# %s -> %u\n", bad[i], st);
		T_EQ(st, 400);
	}
	memset(longlabel, 'a', 64);
	memcpy(longlabel + 64, ".com:443", 9);
	T_EQ(proxy_host_name(longlabel, 64 + 4, longlabel), -EINVAL);
	T_EQ(proxy_host_name("a_b.example", 11, longlabel), 0);
}

static void connect_other_methods_405(void)
{
	T_EQ(refused("GET http://example.com/ HTTP/1.1\r\n\r\n"), 405);
	T_EQ(refused("connect example.com:443 HTTP/1.1\r\n\r\n"), 405); /* case-sensitive */
	/* refused as soon as the request line is complete, without waiting for the head */
	T_EQ(refused("POST / HTTP/1.1\r\n"), 405);
	T_EQ(refused("CONNECTX example.com:443 HTTP/1.1\r\n\r\n"), 405);
	T_EQ(refused("GE\x01T / HTTP/1.1\r\n\r\n"), 400);
}

static void connect_long_line_414_and_head_431(void)
{
	static char big[PROXY_HEAD_MAX + 64];
	struct proxy_connect req;
	size_t n, i;

	/* a request line past the bound is refused before its end arrives */
	memcpy(big, "CONNECT ", 8);
	memset(big + 8, 'a', PROXY_LINE_MAX);
	T_EQ(proxy_parse_connect(big, PROXY_LINE_MAX, &req), PROXY_NEED_MORE);
	T_EQ(proxy_parse_connect(big, PROXY_LINE_MAX + 1, &req), PROXY_REFUSE);
	T_EQ(req.status, 414);

	n = (size_t)snprintf(big, sizeof(big), "CONNECT a.example:443 HTTP/1.1\r\nX-Pad: ");
	memset(big + n, 'p', PROXY_HEAD_MAX - n);
	T_EQ(proxy_parse_connect(big, PROXY_HEAD_MAX, &req), PROXY_NEED_MORE);
	T_EQ(proxy_parse_connect(big, PROXY_HEAD_MAX + 1, &req), PROXY_REFUSE);
	T_EQ(req.status, 431);

	n = (size_t)snprintf(big, sizeof(big), "CONNECT a.example:443 HTTP/1.1\r\n");
	for (i = 0; i <= PROXY_HEADERS_MAX; i++)
		n += (size_t)snprintf(big + n, sizeof(big) - n, "X-%zu: 1\r\n", i);
	n += (size_t)snprintf(big + n, sizeof(big) - n, "\r\n");
	T_EQ(proxy_parse_connect(big, n, &req), PROXY_REFUSE);
	T_EQ(req.status, 431);
}

static void connect_malformed_heads_400(void)
{
	static const char *const bad[] = {
	    "CONNECT a.example:443 HTTP/1.1\n\n", /* bare LF */
	    "CONNECT a.example:443 HTTP/1.1\r\nHost: a\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\nHost : a\r\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\n: a\r\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\nNoColon\r\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\nX: a\rb\r\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	    "CONNECT a.example:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
	    ("CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: a\r\n"
	     "proxy-authorization: b\r\n\r\n"),
	};
	static const char nul[] = "CONNECT a.example:443 HTTP/1.1\r\nX: a\0b\r\n\r\n";
	struct proxy_connect req;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned st = refused(bad[i]);

		if (st != 400)
			printf("# case %zu -> %u\n", i, st);
		T_EQ(st, 400);
	}
	T_EQ(proxy_parse_connect(nul, sizeof(nul) - 1, &req), PROXY_REFUSE);
	T_EQ(req.status, 400);
	T_EQ(conn("CONNECT a.example:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &req),
	     PROXY_COMPLETE);
}

static void connect_keeps_proxy_authorization(void)
{
	static const char r[] = "CONNECT a.example:443 HTTP/1.1\r\n"
				"PROXY-AUTHORIZATION:  Basic dTpw \t\r\n\r\n";
	struct proxy_connect req;

	T_REQUIRE(conn(r, &req) == PROXY_COMPLETE);
	T_REQUIRE(req.proxy_auth != NULL);
	T_CHECK(req.proxy_auth >= r && req.proxy_auth < r + sizeof(r));
	T_EQ(req.proxy_auth_len, 10);
	T_CHECK(memcmp(req.proxy_auth, "Basic dTpw", 10) == 0);
}

/* A ClientHello as OpenSSL's client sends it, captured from a memory BIO. */
static size_t openssl_hello(const char *sni, const unsigned char *alpn, unsigned alpn_len,
                            uint8_t *out, size_t size)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = ctx ? SSL_new(ctx) : NULL;
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	int n = 0;

	if (!ssl || !rb || !wb)
		goto out;
	SSL_set_bio(ssl, rb, wb);
	rb = wb = NULL;
	if (sni)
		SSL_set_tlsext_host_name(ssl, sni);
	if (alpn)
		SSL_set_alpn_protos(ssl, alpn, alpn_len);
	SSL_connect(ssl);
	n = BIO_read(SSL_get_wbio(ssl), out, (int)size);
out:
	BIO_free(rb);
	BIO_free(wb);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	return n > 0 ? (size_t)n : 0;
}

static const unsigned char alpn_h2_h1[] = "\x02h2\x08http/1.1";
static uint8_t hello[4096];
static size_t hello_len;

static void hello_from_openssl(void)
{
	struct tls_hello h;

	hello_len = openssl_hello("WWW.Example.com", alpn_h2_h1, sizeof(alpn_h2_h1) - 1, hello,
	                          sizeof(hello));
	T_REQUIRE(hello_len > 100);
	T_REQUIRE(tls_parse_client_hello(hello, hello_len, &h) == TLS_HELLO_COMPLETE);
	T_STREQ(h.sni, "www.example.com");
	T_EQ(h.alpn_count, 2);
	T_CHECK(tls_hello_offers_alpn(&h, "h2"));
	T_CHECK(tls_hello_offers_alpn(&h, "http/1.1"));
	T_CHECK(!tls_hello_offers_alpn(&h, "http/1"));
	T_CHECK(!tls_hello_offers_alpn(&h, "h3"));
	T_CHECK(h.tls13);
	T_EQ(h.legacy_version, 0x0303);
	T_EQ(h.record_len, hello_len);
}

static void hello_need_more_on_every_prefix(void)
{
	struct tls_hello h;
	size_t i;

	T_REQUIRE(hello_len > 0);
	for (i = 0; i < hello_len; i++) {
		enum tls_hello_verdict v = tls_parse_client_hello(hello, i, &h);

		if (v != TLS_HELLO_NEED_MORE) {
			printf("# prefix %zu: %d %s\n", i, v, h.reason ? h.reason : "");
			T_EQ(v, TLS_HELLO_NEED_MORE);
			return;
		}
	}
}

static void hello_without_sni_or_alpn(void)
{
	uint8_t buf[4096];
	size_t n = openssl_hello(NULL, NULL, 0, buf, sizeof(buf));
	struct tls_hello h;

	T_REQUIRE(n > 0);
	T_REQUIRE(tls_parse_client_hello(buf, n, &h) == TLS_HELLO_COMPLETE);
	T_STREQ(h.sni, "");
	T_EQ(h.alpn_len, 0);
	T_CHECK(!tls_hello_offers_alpn(&h, "h2"));
}

/* Re-frames hello's handshake bytes into records of at most chunk bytes. */
static size_t reframe(size_t chunk, uint8_t *out, size_t size)
{
	const uint8_t *hs = hello + 5;
	size_t hs_len = hello_len - 5, o = 0, k;

	while (hs_len > 0) {
		k = hs_len < chunk ? hs_len : chunk;
		if (o + 5 + k > size)
			return 0;
		memcpy(out + o, "\x16\x03\x01", 3);
		out[o + 3] = (uint8_t)(k >> 8);
		out[o + 4] = (uint8_t)k;
		memcpy(out + o + 5, hs, k);
		o += 5 + k;
		hs += k;
		hs_len -= k;
	}
	return o;
}

static void hello_across_records(void)
{
	uint8_t buf[8192];
	struct tls_hello h;
	size_t chunk, n, i;

	T_REQUIRE(hello_len > 0);
	chunk = (hello_len - 5 + TLS_HELLO_RECORDS_MAX - 1) / TLS_HELLO_RECORDS_MAX;
	n = reframe(chunk, buf, sizeof(buf));
	T_REQUIRE(n > hello_len);
	for (i = 0; i < n; i++)
		T_EQ(tls_parse_client_hello(buf, i, &h), TLS_HELLO_NEED_MORE);
	T_REQUIRE(tls_parse_client_hello(buf, n, &h) == TLS_HELLO_COMPLETE);
	T_STREQ(h.sni, "www.example.com");
	T_CHECK(tls_hello_offers_alpn(&h, "h2"));
	T_EQ(h.record_len, n);

	/* one record more than the bound */
	n = reframe((hello_len - 5) / (TLS_HELLO_RECORDS_MAX + 1), buf, sizeof(buf));
	T_REQUIRE(n > 0);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
}

static void hello_then_other_records(void)
{
	uint8_t buf[8192];
	struct tls_hello h;

	T_REQUIRE(hello_len > 0);
	memcpy(buf, hello, hello_len);
	memcpy(buf + hello_len, "\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x02xx", 13);
	T_EQ(tls_parse_client_hello(buf, hello_len + 13, &h), TLS_HELLO_COMPLETE);
	T_EQ(h.record_len, hello_len);
	/* but a hello cut short by another record type is malformed */
	buf[3] = 0;
	buf[4] = 40;
	memcpy(buf + 45, "\x17\x03\x03\x00\x01x", 6);
	T_EQ(tls_parse_client_hello(buf, 51, &h), TLS_HELLO_BAD);
}

static void hello_rejects_corrupt_lengths(void)
{
	uint8_t buf[4096];
	struct tls_hello h;
	size_t i, bad = 0, complete = 0;

	T_REQUIRE(hello_len > 0);
	/* flip the low bit of every byte */
	for (i = 0; i < hello_len; i++) {
		enum tls_hello_verdict v;

		memcpy(buf, hello, hello_len);
		buf[i] ^= 0x01;
		v = tls_parse_client_hello(buf, hello_len, &h);
		bad += v == TLS_HELLO_BAD;
		complete += v == TLS_HELLO_COMPLETE;
		/* a flip in a length byte never passes: refused, or waiting for bytes */
		if (i == 3 || i == 4 || (i >= 6 && i <= 8) || i == 43)
			T_CHECK(v != TLS_HELLO_COMPLETE);
	}
	printf("# single-bit flips: %zu refused, %zu still parse\n", bad, complete);
	T_CHECK(bad > 0);
	/* the record and handshake headers */
	memcpy(buf, hello, hello_len);
	buf[0] = 0x17;
	T_EQ(tls_parse_client_hello(buf, hello_len, &h), TLS_HELLO_BAD);
	T_STREQ(h.reason, "not TLS");
	memcpy(buf, hello, hello_len);
	buf[5] = 2; /* ServerHello */
	T_EQ(tls_parse_client_hello(buf, hello_len, &h), TLS_HELLO_BAD);
	memcpy(buf, hello, hello_len);
	buf[3] = 0;
	buf[4] = 0;
	T_EQ(tls_parse_client_hello(buf, hello_len, &h), TLS_HELLO_BAD);
	memcpy(buf, hello, hello_len);
	buf[3] = 0x40;
	buf[4] = 0x01; /* 16385 > 2^14 */
	T_EQ(tls_parse_client_hello(buf, hello_len, &h), TLS_HELLO_BAD);
	/* a trailing byte inside the record */
	memcpy(buf, hello, hello_len);
	buf[hello_len] = 0;
	buf[4]++;
	if (buf[4] == 0)
		buf[3]++;
	T_EQ(tls_parse_client_hello(buf, hello_len + 1, &h), TLS_HELLO_BAD);
	T_EQ(tls_parse_client_hello((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &h), TLS_HELLO_BAD);
	T_EQ(tls_parse_client_hello((const uint8_t *)"G", 1, &h), TLS_HELLO_BAD);
}

/* A minimal hello with the given extensions block contents. */
static size_t build_hello(const uint8_t *ext, size_t ext_len, uint8_t *out)
{
	size_t body = 2 + 32 + 1 + 4 + 2 + 2 + ext_len, o = 0;

	out[o++] = 22;
	out[o++] = 3;
	out[o++] = 1;
	out[o++] = (uint8_t)((body + 4) >> 8);
	out[o++] = (uint8_t)(body + 4);
	out[o++] = 1;
	out[o++] = 0;
	out[o++] = (uint8_t)(body >> 8);
	out[o++] = (uint8_t)body;
	out[o++] = 3;
	out[o++] = 3;
	memset(out + o, 0x42, 32);
	o += 32;
	out[o++] = 0;                                   /* session_id */
	memcpy(out + o, "\x00\x02\x13\x01\x01\x00", 6); /* one suite, null compression */
	o += 6;
	out[o++] = (uint8_t)(ext_len >> 8);
	out[o++] = (uint8_t)ext_len;
	memcpy(out + o, ext, ext_len);
	return o + ext_len;
}

static void hello_handmade_extensions(void)
{
	/* server_name: ext len 14, list 12, host_name len 9 */
	static const uint8_t sni[] = "\x00\x00\x00\x0e\x00\x0c\x00\x00\x09"
				     "a.example";
	static const uint8_t sni_ip[] = "\x00\x00\x00\x0c\x00\x0a\x00\x00\x07"
					"1.2.3.4";
	static const uint8_t sni_two[] = "\x00\x00\x00\x12\x00\x10\x00\x00\x03"
					 "a.b"
					 "\x00\x00\x05"
					 "c.d.e";
	static const uint8_t sni_ctl[] = "\x00\x00\x00\x0e\x00\x0c\x00\x00\x09"
					 "a.ex\x00mple";
	static const uint8_t dup[] = "\x00\x17\x00\x00\x00\x17\x00\x00";
	static const uint8_t alpn_bad[] = "\x00\x10\x00\x05\x00\x03\x03h2x"; /* name overruns */
	static const uint8_t alpn_zero[] = "\x00\x10\x00\x05\x00\x03\x00\x01x";
	static const uint8_t ext_over[] = "\x00\x17\x00\x05\x00";
	uint8_t buf[512];
	struct tls_hello h;
	size_t n;

	n = build_hello(sni, sizeof(sni) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_COMPLETE);
	T_STREQ(h.sni, "a.example");
	T_CHECK(!h.tls13);
	n = build_hello(sni, 0, buf) - 2; /* no extensions block at all */
	buf[4] -= 2;
	buf[8] -= 2;
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_COMPLETE);
	n = build_hello(sni_ip, sizeof(sni_ip) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
	n = build_hello(sni_two, sizeof(sni_two) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
	n = build_hello(sni_ctl, sizeof(sni_ctl) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
	n = build_hello(dup, sizeof(dup) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
	T_STREQ(h.reason, "repeated extension");
	n = build_hello(alpn_bad, sizeof(alpn_bad) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
	n = build_hello(alpn_zero, sizeof(alpn_zero) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
	n = build_hello(ext_over, sizeof(ext_over) - 1, buf);
	T_EQ(tls_parse_client_hello(buf, n, &h), TLS_HELLO_BAD);
}

int main(void)
{
	T_RUN(connect_basic);
	T_RUN(connect_need_more_on_every_prefix);
	T_RUN(connect_ip_literals);
	T_RUN(connect_bad_targets_400);
	T_RUN(connect_other_methods_405);
	T_RUN(connect_long_line_414_and_head_431);
	T_RUN(connect_malformed_heads_400);
	T_RUN(connect_keeps_proxy_authorization);
	T_RUN(hello_from_openssl);
	T_RUN(hello_need_more_on_every_prefix);
	T_RUN(hello_without_sni_or_alpn);
	T_RUN(hello_across_records);
	T_RUN(hello_then_other_records);
	T_RUN(hello_rejects_corrupt_lengths);
	T_RUN(hello_handmade_extensions);
	return t_done();
}
