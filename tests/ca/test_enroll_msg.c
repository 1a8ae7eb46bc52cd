/* Enrollment message codec: round trip and every refusal of the parser. */
#include <errno.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "enroll.h"
#include "t.h"

static void test_round_trip(void)
{
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t nonce[ENROLL_NONCE_LEN] = {1, 2, 3};
	char s[64];
	uint64_t v;

	T_REQUIRE(enroll_buf_init(&b, ENROLL_T_ENROLL) == 0);
	T_EQ(enroll_buf_put_str(&b, ET_TOKEN, "mtt1.acme.x"), 0);
	T_EQ(enroll_buf_put(&b, ET_NONCE, nonce, sizeof(nonce)), 0);
	T_EQ(enroll_buf_put_u64(&b, ET_TIME, 0x0102030405060708ULL), 0);
	T_EQ(enroll_msg_parse(b.p, b.len, ENROLL_REQ_MAX, &m), 0);
	T_EQ(m.type, ENROLL_T_ENROLL);
	T_EQ(enroll_msg_str(&m, ET_TOKEN, s, sizeof(s)), 0);
	T_STREQ(s, "mtt1.acme.x");
	T_EQ(enroll_msg_u64(&m, ET_TIME, &v), 0);
	T_CHECK(v == 0x0102030405060708ULL);
	T_CHECK(enroll_msg_has(&m, ET_NONCE) && memcmp(m.v[ET_NONCE].p, nonce, 16) == 0);
	T_CHECK(!enroll_msg_has(&m, ET_CSR));
	T_EQ(enroll_msg_str(&m, ET_CSR, s, sizeof(s)), -ENOENT);
	T_EQ(enroll_msg_str(&m, ET_TOKEN, s, 4), -ENOSPC);
	enroll_buf_free(&b);
}

static void test_builder_limits(void)
{
	struct enroll_buf b = {0};
	static uint8_t big[ENROLL_CSR_MAX + 1];

	T_REQUIRE(enroll_buf_init(&b, ENROLL_T_ENROLL) == 0);
	T_EQ(enroll_buf_put(&b, ET_CSR, big, sizeof(big)), -EINVAL);
	T_EQ(enroll_buf_put(&b, ET_NONCE, big, 15), -EINVAL);
	T_EQ(enroll_buf_put(&b, ET_TOKEN, big, 0), -EINVAL);
	T_EQ(enroll_buf_put(&b, (enum enroll_tag)ET_MAX, big, 1), -EINVAL);
	T_EQ(enroll_buf_put(&b, ET_CSR, big, ENROLL_CSR_MAX), 0);
	enroll_buf_free(&b);
}

/* Builds a valid message, lets mutate() damage it, and expects err from the parser. */
static int parse_mutated(void (*mutate)(uint8_t *p, size_t *len), size_t max)
{
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t buf[256];
	size_t len;

	enroll_buf_init(&b, ENROLL_T_CRL_GET);
	enroll_buf_put_str(&b, ET_TENANT, "acme");
	len = b.len;
	memcpy(buf, b.p, len);
	enroll_buf_free(&b);
	mutate(buf, &len);
	return enroll_msg_parse(buf, len, max, &m);
}

static void m_none(uint8_t *p, size_t *len)
{
}
static void m_magic(uint8_t *p, size_t *len)
{
	p[0] = 'X';
}
static void m_version(uint8_t *p, size_t *len)
{
	p[4] = 2;
}
static void m_flags(uint8_t *p, size_t *len)
{
	p[7] = 1;
}
static void m_body_long(uint8_t *p, size_t *len)
{
	p[11]++;
}
static void m_truncated(uint8_t *p, size_t *len)
{
	(*len)--;
	p[11]--;
}
static void m_vlen_over(uint8_t *p, size_t *len)
{
	p[ENROLL_HDR_LEN + 5] = 200;
}
static void m_unknown_tag(uint8_t *p, size_t *len)
{
	p[ENROLL_HDR_LEN + 1] = 99;
}
static void m_zero_tag(uint8_t *p, size_t *len)
{
	p[ENROLL_HDR_LEN + 1] = 0;
}
static void m_nul_in_text(uint8_t *p, size_t *len)
{
	p[ENROLL_HDR_LEN + 7] = 0;
}
static void m_duplicate(uint8_t *p, size_t *len)
{
	size_t tlv = *len - ENROLL_HDR_LEN;

	memcpy(p + *len, p + ENROLL_HDR_LEN, tlv);
	*len += tlv;
	p[11] = (uint8_t)(*len - ENROLL_HDR_LEN);
}
static void m_zero_len(uint8_t *p, size_t *len)
{
	/* a value of length 0, with the body length adjusted */
	p[ENROLL_HDR_LEN + 5] = 0;
	*len = ENROLL_HDR_LEN + 6;
	p[11] = 6;
}
static void m_short_tlv(uint8_t *p, size_t *len)
{
	*len = ENROLL_HDR_LEN + 3;
	p[11] = 3;
}

static void test_parser_refusals(void)
{
	T_EQ(parse_mutated(m_none, ENROLL_REQ_MAX), 0);
	T_EQ(parse_mutated(m_magic, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_version, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_flags, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_body_long, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_truncated, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_vlen_over, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_unknown_tag, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_zero_tag, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_nul_in_text, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_duplicate, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_zero_len, ENROLL_REQ_MAX), -EBADMSG);
	T_EQ(parse_mutated(m_short_tlv, ENROLL_REQ_MAX), -EBADMSG);
	/* a body larger than the caller allows */
	T_EQ(parse_mutated(m_none, ENROLL_HDR_LEN + 4), -EMSGSIZE);
}

static void test_header_size_limit(void)
{
	uint8_t hdr[ENROLL_HDR_LEN] = {'M', 'T', 'E',  'N',  1,    ENROLL_T_ENROLL,
	                               0,   0,   0x7f, 0xff, 0xff, 0xff};
	uint32_t body;

	T_EQ(enroll_hdr_parse(hdr, ENROLL_REQ_MAX, &body), -EMSGSIZE);
	hdr[8] = 0;
	hdr[9] = 0;
	T_EQ(enroll_hdr_parse(hdr, ENROLL_REQ_MAX, &body), -EMSGSIZE); /* 65535 + header */
	hdr[10] = 0x0f;
	T_EQ(enroll_hdr_parse(hdr, ENROLL_REQ_MAX, &body), 0);
	T_EQ(body, 0x0fff);
}

/* A certificate valid from t0 for life seconds (self-signed; only the dates matter). */
static X509 *cert_valid(time_t t0, long life)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();

	if (!k || !x || !X509_set_pubkey(x, k) || !ASN1_TIME_set(X509_getm_notBefore(x), t0) ||
	    !ASN1_TIME_set(X509_getm_notAfter(x), t0 + life) || !X509_sign(x, k, EVP_sha256())) {
		X509_free(x);
		x = NULL;
	}
	EVP_PKEY_free(k);
	return x;
}

static void test_renewal_schedule(void)
{
	time_t t0 = 1700000000;
	X509 *x = cert_valid(t0, 3000);
	bool due = true;
	long secs = -1;

	T_REQUIRE(x);
	T_EQ(enroll_renew_due(x, t0 + 10, &due), 0);
	T_CHECK(!due);
	T_EQ(enroll_renew_in(x, t0 + 10, &secs), 0);
	T_EQ(secs, 1990); /* due when 1000 s (a third) remain */
	T_EQ(enroll_renew_due(x, t0 + 2001, &due), 0);
	T_CHECK(due);
	T_EQ(enroll_renew_in(x, t0 + 5000, &secs), 0); /* expired: due now */
	T_EQ(secs, 0);
	X509_free(x);
}

int main(void)
{
	T_RUN(test_round_trip);
	T_RUN(test_builder_limits);
	T_RUN(test_parser_refusals);
	T_RUN(test_header_size_limit);
	T_RUN(test_renewal_schedule);
	return t_done();
}
