/*
 * The CA's request handler in process: tokens (spent, expired, wrong tenant), CSR checks
 * (other tenant, other role, malformed, oversized), replay, issuance fields, revocation
 * and the CRL, custom CA import and the external signing flow.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "log.h"
#include "t.h"

static const char kek_text[] = "unit test key-encryption secret!";
static struct ca_secret kek = {(uint8_t *)kek_text, sizeof(kek_text) - 1};
static struct ca_db *db;
static char db_path[] = "/tmp/mtun-test-ca.XXXXXX";
static struct ca_server srv;
static char sub[IDENT_TENANT_MAX + 1];

/* Sends an admin or component request built by the caller; returns the parsed answer. */
static int call(enum ca_origin from, struct enroll_buf *b, struct enroll_buf *resp,
                struct enroll_msg *m)
{
	int ret = ca_handle(&srv, from, b->p, b->len, NULL, resp, sub);

	enroll_buf_free(b);
	if (ret < 0)
		return ret;
	if (enroll_msg_parse(resp->p, resp->len, ENROLL_MSG_MAX, m) != 0)
		return -EBADMSG;
	return m->v[ET_STATUS].p[1] == 0 ? 0 : -EACCES;
}

static void answer_msg(const struct enroll_msg *m, char *out, size_t size)
{
	out[0] = '\0';
	enroll_msg_str(m, ET_MESSAGE, out, size);
}

static int make_token(const char *tenant, const char *role, const char *user, uint64_t ttl,
                      char tok[TOKEN_TEXT_MAX + 1])
{
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	int ret;

	enroll_buf_init(&b, ENROLL_T_TOKEN_CREATE);
	enroll_buf_put_str(&b, ET_TENANT, tenant);
	enroll_buf_put_str(&b, ET_ROLE, role);
	if (user)
		enroll_buf_put_str(&b, ET_USER, user);
	enroll_buf_put_u64(&b, ET_TTL, ttl);
	ret = call(CA_FROM_ADMIN, &b, &resp, &m);
	if (!ret)
		ret = enroll_msg_str(&m, ET_TOKEN, tok, TOKEN_TEXT_MAX + 1);
	enroll_buf_free(&resp);
	return ret;
}

static struct ident agent_ident(const char *tenant, const char *id)
{
	struct ident x = {.role = MT_ROLE_AGENT, .has_device = true};

	snprintf(x.tenant, sizeof(x.tenant), "%s", tenant);
	snprintf(x.id, sizeof(x.id), "%s", id);
	snprintf(x.user, sizeof(x.user), "alice");
	memset(x.device, 0xab, sizeof(x.device));
	return x;
}

/* Enrolls ident with tok; the answer's chain leaf in *leaf (may be NULL), message in why. */
static int enroll(const struct ident *id, const char *tok, X509 **leaf, char *why, size_t wsize)
{
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509_REQ *req = NULL;
	int ret;

	if (leaf)
		*leaf = NULL;
	ret = enroll_csr_make(key, id, &req);
	if (!ret)
		ret = enroll_request_build(&b, ENROLL_T_ENROLL, req, tok);
	if (!ret)
		ret = call(CA_FROM_TLS, &b, &resp, &m);
	if (why && resp.p && enroll_msg_parse(resp.p, resp.len, ENROLL_MSG_MAX, &m) == 0)
		answer_msg(&m, why, wsize);
	if (!ret && leaf) {
		BIO *bio = BIO_new_mem_buf(m.v[ET_CHAIN].p, (int)m.v[ET_CHAIN].len);

		*leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
		BIO_free(bio);
	}
	enroll_buf_free(&b);
	enroll_buf_free(&resp);
	X509_REQ_free(req);
	EVP_PKEY_free(key);
	return ret;
}

static void test_enroll_agent_fields(void)
{
	char tok[TOKEN_TEXT_MAX + 1], why[256];
	struct ident id = agent_ident("acme", "laptop-1"), got;
	const struct ca_tenant *t;
	const char *verr = NULL;
	X509 *leaf = NULL;

	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_CHECK(strncmp(tok, "mtt1.acme.", 10) == 0 && strlen(tok) == 10 + 43);
	T_EQ(enroll(&id, tok, &leaf, why, sizeof(why)), 0);
	T_REQUIRE(leaf);
	T_EQ(enroll_cert_ident(leaf, &got), 0);
	T_STREQ(got.tenant, "acme");
	T_EQ(got.role, MT_ROLE_AGENT);
	T_STREQ(got.id, "laptop-1");
	T_STREQ(got.user, "alice");
	T_CHECK(got.has_device && got.device[0] == 0xab);
	t = ca_server_tenant(&srv, "acme");
	T_REQUIRE(t);
	T_EQ(pki_verify_leaf(t, leaf, &verr), 0);
	T_CHECK(X509_check_ca(leaf) == 0);
	X509_free(leaf);
}

static void test_token_spent(void)
{
	char tok[TOKEN_TEXT_MAX + 1], why[256];
	struct ident a = agent_ident("acme", "spent-1"), b = agent_ident("acme", "spent-2");

	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), 0);
	T_EQ(enroll(&b, tok, NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "enrollment token already used");
}

static void test_token_expired(void)
{
	char tok[TOKEN_TEXT_MAX + 1], why[256];
	struct ident a = agent_ident("acme", "late-1");
	uint8_t hash[TOKEN_HASH_LEN];
	struct ca_token_row row = {.role = MT_ROLE_AGENT};

	snprintf(row.tenant, sizeof(row.tenant), "acme");
	snprintf(row.user, sizeof(row.user), "alice");
	row.created = time(NULL) - 7200;
	row.expires = time(NULL) - 3600;
	T_REQUIRE(token_generate("acme", tok, sizeof(tok), hash) == 0);
	T_REQUIRE(ca_db_token_put(db, hash, &row) == 0);
	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "enrollment token expired");
}

static void test_token_wrong_and_other_tenant(void)
{
	char tok[TOKEN_TEXT_MAX + 1], forged[TOKEN_TEXT_MAX + 8], why[256];
	struct ident a = agent_ident("acme", "x-1"), o = agent_ident("other", "x-1");

	T_EQ(enroll(&a, "mtt1.acme.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NULL, why,
	            sizeof(why)),
	     -EACCES);
	T_STREQ(why, "unknown enrollment token");
	T_EQ(enroll(&a, "not a token", NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "malformed enrollment token");
	/* a token of tenant "other" relabelled as acme's */
	T_REQUIRE(make_token("other", "agent", "alice", 3600, tok) == 0);
	snprintf(forged, sizeof(forged), "mtt1.acme.%s", strrchr(tok, '.') + 1);
	T_EQ(enroll(&a, forged, NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "enrollment token belongs to another tenant");
	/* a CSR for acme with other's token */
	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "CSR is for tenant acme but the token is for tenant other");
	/* nothing was spent by the refusals */
	T_EQ(enroll(&o, tok, NULL, why, sizeof(why)), 0);
}

static void test_csr_other_role_or_user(void)
{
	char tok[TOKEN_TEXT_MAX + 1], why[256];
	struct ident c = {.role = MT_ROLE_CONNECTOR}, a = agent_ident("acme", "bob-1");

	snprintf(c.tenant, sizeof(c.tenant), "acme");
	snprintf(c.id, sizeof(c.id), "conn-1");
	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_EQ(enroll(&c, tok, NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "CSR is for role connector but the token is for role agent");
	snprintf(a.user, sizeof(a.user), "bob");
	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), -EACCES);
	T_STREQ(why, "CSR names another user than the token");
}

static void test_replay_refused(void)
{
	char tok[TOKEN_TEXT_MAX + 1], tok2[TOKEN_TEXT_MAX + 1], why[256];
	struct ident a = agent_ident("acme", "replay-1");
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509_REQ *req = NULL;
	uint8_t *copy;
	size_t len;

	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok2) == 0);
	T_REQUIRE(enroll_csr_make(key, &a, &req) == 0);
	T_REQUIRE(enroll_request_build(&b, ENROLL_T_ENROLL, req, tok) == 0);
	len = b.len;
	copy = malloc(len);
	T_REQUIRE(copy);
	memcpy(copy, b.p, len);
	T_EQ(call(CA_FROM_TLS, &b, &resp, &m), 0);
	enroll_buf_free(&resp);
	/* the same bytes again */
	T_EQ(ca_handle(&srv, CA_FROM_TLS, copy, len, NULL, &resp, sub), 0);
	T_EQ(enroll_msg_parse(resp.p, resp.len, ENROLL_MSG_MAX, &m), 0);
	answer_msg(&m, why, sizeof(why));
	T_STREQ(why, "replayed request (nonce seen before)");
	enroll_buf_free(&resp);
	free(copy);
	X509_REQ_free(req);
	EVP_PKEY_free(key);
}

static void test_malformed_requests(void)
{
	char tok[TOKEN_TEXT_MAX + 1], why[256];
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	uint8_t junk[600];

	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	memset(junk, 0x30, sizeof(junk));
	enroll_buf_init(&b, ENROLL_T_ENROLL);
	enroll_buf_put_str(&b, ET_TOKEN, tok);
	enroll_buf_put(&b, ET_CSR, junk, sizeof(junk));
	enroll_buf_put_u64(&b, ET_TIME, (uint64_t)time(NULL));
	enroll_buf_put(&b, ET_NONCE, junk, ENROLL_NONCE_LEN);
	T_EQ(call(CA_FROM_TLS, &b, &resp, &m), -EACCES);
	answer_msg(&m, why, sizeof(why));
	T_STREQ(why, "malformed CSR");
	enroll_buf_free(&resp);
	/* garbage bytes get a clear answer too */
	T_EQ(ca_handle(&srv, CA_FROM_TLS, junk, sizeof(junk), NULL, &resp, sub), 0);
	T_EQ(enroll_msg_parse(resp.p, resp.len, ENROLL_MSG_MAX, &m), 0);
	answer_msg(&m, why, sizeof(why));
	T_STREQ(why, "malformed request");
	enroll_buf_free(&resp);
	/* admin requests are refused from the network */
	enroll_buf_init(&b, ENROLL_T_TOKEN_CREATE);
	enroll_buf_put_str(&b, ET_TENANT, "acme");
	enroll_buf_put_str(&b, ET_ROLE, "admin");
	T_EQ(call(CA_FROM_TLS, &b, &resp, &m), -EACCES);
	enroll_buf_free(&resp);
	/* the token was not spent by the malformed CSR */
	struct ident a = agent_ident("acme", "after-bad");

	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), 0);
}

static void test_revoke_and_crl(void)
{
	char tok[TOKEN_TEXT_MAX + 1], why[256], serial[41], got[41];
	struct ident a = agent_ident("acme", "lost-laptop");
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	X509 *leaf = NULL;
	X509_CRL *crl;
	const uint8_t *p;
	bool found = false;

	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_REQUIRE(enroll(&a, tok, &leaf, why, sizeof(why)) == 0 && leaf);
	T_REQUIRE(pki_serial_hex(leaf, serial) == 0);
	/* the same id cannot enroll twice while its certificate is valid */
	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), -EACCES);
	enroll_buf_init(&b, ENROLL_T_REVOKE);
	enroll_buf_put_str(&b, ET_TENANT, "acme");
	enroll_buf_put_str(&b, ET_ID, "agent/lost-laptop");
	T_REQUIRE(call(CA_FROM_ADMIN, &b, &resp, &m) == 0);
	T_REQUIRE(enroll_msg_has(&m, ET_CRL));
	p = m.v[ET_CRL].p;
	crl = d2i_X509_CRL(NULL, &p, m.v[ET_CRL].len);
	T_REQUIRE(crl);
	for (int i = 0; i < sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)); i++) {
		X509_REVOKED *r = sk_X509_REVOKED_value(X509_CRL_get_REVOKED(crl), i);
		BIGNUM *bn = ASN1_INTEGER_to_BN(X509_REVOKED_get0_serialNumber(r), NULL);
		char *hex = BN_bn2hex(bn);

		snprintf(got, sizeof(got), "%s", hex);
		for (char *c = got; *c; c++)
			*c = (char)(*c >= 'A' && *c <= 'F' ? *c + 32 : *c);
		found |= strcmp(got, serial) == 0;
		OPENSSL_free(hex);
		BN_free(bn);
	}
	T_CHECK(found);
	/* the CRL is signed by the issuing CA */
	T_EQ(X509_CRL_verify(crl, X509_get0_pubkey(ca_server_tenant(&srv, "acme")->issuer)), 1);
	X509_CRL_free(crl);
	enroll_buf_free(&resp);
	/* re-enrollment of the revoked id is allowed with a fresh token */
	T_EQ(enroll(&a, tok, NULL, why, sizeof(why)), 0);
	X509_free(leaf);
}

static void test_import_custom_ca(void)
{
	EVP_PKEY *rk = EVP_EC_gen("P-256"), *ik = EVP_EC_gen("P-256");
	X509 *root = NULL, *issuer = NULL, *leaf = NULL;
	char *pem = NULL, *rpem = NULL, tok[TOKEN_TEXT_MAX + 1], why[256];
	size_t len, rlen;
	const char *w = "";
	struct ident a = agent_ident("custom", "dev-1");
	const struct ca_tenant *t;
	STACK_OF(X509) *chain = sk_X509_new_null();

	/* the tenant's own root and issuing CA, made outside the CA */
	T_REQUIRE(pki_make_root("tenantroot", rk, time(NULL), &root) == 0);
	T_REQUIRE(pki_make_issuer("tenantroot", ik, root, rk, time(NULL), &issuer) == 0);
	sk_X509_push(chain, root);
	T_REQUIRE(pki_pem_of_chain(issuer, chain, &pem, &len) == 0);
	/* a wrong key is refused */
	T_EQ(ca_tenant_import(db, &kek, "custom", (uint8_t *)pem, len, rk, &w), -EINVAL);
	T_STREQ(w, "the key does not match the CA certificate");
	T_EQ(ca_tenant_import(db, &kek, "custom", (uint8_t *)pem, len, ik, &w), 0);
	T_REQUIRE(make_token("custom", "agent", "alice", 3600, tok) == 0);
	T_EQ(enroll(&a, tok, &leaf, why, sizeof(why)), 0);
	t = ca_server_tenant(&srv, "custom");
	T_REQUIRE(t && leaf);
	T_EQ(X509_cmp(t->root, root), 0);
	T_EQ(pki_verify_leaf(t, leaf, &w), 0);
	/* the leaf verifies against the tenant's own root, held by nobody else */
	T_REQUIRE(pki_pem_of_cert(root, &rpem, &rlen) == 0);
	free(rpem);
	X509_free(leaf);
	sk_X509_free(chain);
	X509_free(root);
	X509_free(issuer);
	free(pem);
	EVP_PKEY_free(rk);
	EVP_PKEY_free(ik);
}

static void test_external_signing(void)
{
	EVP_PKEY *rk = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
	X509 *root = NULL, *signed_ = NULL, *wrong = NULL, *leaf = NULL;
	char *csr_pem = NULL, *rpem = NULL, *spem = NULL, *wpem = NULL, tok[TOKEN_TEXT_MAX + 1];
	char why[256];
	size_t clen, rlen, slen, wlen;
	const char *w = "";
	BIO *bio;
	X509_REQ *req;
	struct ident a = agent_ident("ext", "dev-1");
	const struct ca_tenant *t;

	T_REQUIRE(ca_tenant_external(db, &kek, "ext", CA_KEY_P256, &csr_pem, &clen) == 0);
	T_CHECK(ca_server_tenant(&srv, "ext") == NULL); /* pending: not usable yet */
	bio = BIO_new_mem_buf(csr_pem, (int)clen);
	req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
	BIO_free(bio);
	T_REQUIRE(req);
	/* the tenant's root signs the CSR's key */
	T_REQUIRE(pki_make_root("extroot", rk, time(NULL), &root) == 0);
	T_REQUIRE(
	    pki_make_issuer("ext", X509_REQ_get0_pubkey(req), root, rk, time(NULL), &signed_) == 0);
	T_REQUIRE(pki_make_issuer("ext", other, root, rk, time(NULL), &wrong) == 0);
	T_REQUIRE(pki_pem_of_cert(root, &rpem, &rlen) == 0);
	T_REQUIRE(pki_pem_of_cert(signed_, &spem, &slen) == 0);
	T_REQUIRE(pki_pem_of_cert(wrong, &wpem, &wlen) == 0);
	T_EQ(ca_tenant_import_signed(db, &kek, "ext", (uint8_t *)wpem, wlen, (uint8_t *)rpem, rlen,
	                             &w),
	     -EINVAL);
	T_STREQ(w, "the signed certificate is not for this tenant's pending key");
	T_EQ(ca_tenant_import_signed(db, &kek, "ext", (uint8_t *)spem, slen, (uint8_t *)rpem, rlen,
	                             &w),
	     0);
	T_REQUIRE(make_token("ext", "agent", "alice", 3600, tok) == 0);
	T_EQ(enroll(&a, tok, &leaf, why, sizeof(why)), 0);
	t = ca_server_tenant(&srv, "ext");
	T_REQUIRE(t && leaf);
	T_EQ(X509_cmp(t->root, root), 0);
	T_EQ(pki_verify_leaf(t, leaf, &w), 0);
	X509_free(leaf);
	X509_REQ_free(req);
	X509_free(root);
	X509_free(signed_);
	X509_free(wrong);
	free(csr_pem);
	free(rpem);
	free(spem);
	free(wpem);
	EVP_PKEY_free(rk);
	EVP_PKEY_free(other);
}

static void test_token_hash_only(void)
{
	char tok[TOKEN_TEXT_MAX + 1], *list = NULL;

	T_REQUIRE(make_token("acme", "connector", NULL, 600, tok) == 0);
	T_EQ(ca_db_token_list(db, "acme", time(NULL), &list), 0);
	T_REQUIRE(list);
	/* neither the token nor its secret part is listed or stored */
	T_CHECK(strstr(list, strrchr(tok, '.') + 1) == NULL);
	T_CHECK(strstr(list, "role=connector") != NULL);
	free(list);
}

static void test_token_policy(void)
{
	char tok[TOKEN_TEXT_MAX + 1];

	T_EQ(make_token("acme", "agent", NULL, 3600, tok), -EACCES);     /* agent needs a user */
	T_EQ(make_token("acme", "ca", NULL, 3600, tok), -EACCES);        /* no CA role tokens */
	T_EQ(make_token("nobody", "broker", NULL, 3600, tok), -EACCES);  /* unknown tenant */
	T_EQ(make_token("acme", "broker", NULL, 10, tok), -EACCES);      /* ttl too short */
	T_EQ(make_token("acme", "broker", "alice", 3600, tok), -EACCES); /* user on a broker */
}

static void test_stale_crl_rebuilt(void)
{
	const struct ca_tenant *t = ca_server_tenant(&srv, "other");
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	X509_CRL *old = NULL, *got;
	uint8_t *der = NULL;
	const uint8_t *p;
	time_t soon = time(NULL) + 13 * 3600;
	int len;

	T_REQUIRE(t);
	/* a CRL made 20 hours ago has 4 hours left: past half its validity */
	T_REQUIRE(pki_make_crl(t, NULL, NULL, 0, 99, time(NULL) - 20 * 3600, &old) == 0);
	len = i2d_X509_CRL(old, &der);
	T_REQUIRE(len > 0 && ca_db_crl_put(db, "other", der, (size_t)len) == 0);
	enroll_buf_init(&b, ENROLL_T_CRL_GET);
	enroll_buf_put_str(&b, ET_TENANT, "other");
	T_REQUIRE(call(CA_FROM_TLS, &b, &resp, &m) == 0 && enroll_msg_has(&m, ET_CRL));
	p = m.v[ET_CRL].p;
	got = d2i_X509_CRL(NULL, &p, m.v[ET_CRL].len);
	T_REQUIRE(got);
	T_CHECK(X509_cmp_time(X509_CRL_get0_nextUpdate(got), &soon) > 0);
	X509_CRL_free(got);
	X509_CRL_free(old);
	OPENSSL_free(der);
	enroll_buf_free(&resp);
}

static void test_token_format(void)
{
	char tok[TOKEN_TEXT_MAX + 1], bad[TOKEN_TEXT_MAX + 8], tenant[IDENT_TENANT_MAX + 1];
	uint8_t h1[TOKEN_HASH_LEN], h2[TOKEN_HASH_LEN];
	char *secret;

	T_REQUIRE(token_generate("acme", tok, sizeof(tok), h1) == 0);
	T_EQ(token_parse(tok, tenant, h2), 0);
	T_STREQ(tenant, "acme");
	T_CHECK(memcmp(h1, h2, sizeof(h1)) == 0);
	secret = strrchr(tok, '.') + 1;
	/* one spelling per token: the last character carries 2 padding bits that must be 0 */
	snprintf(bad, sizeof(bad), "%s", tok);
	bad[strlen(bad) - 1] = secret[42] == 'A' ? 'B' : 'A';
	T_CHECK(token_parse(bad, tenant, h2) != 0 || memcmp(h1, h2, sizeof(h1)) != 0);
	snprintf(bad, sizeof(bad), "mtt1.acme.%.42s", secret);
	T_EQ(token_parse(bad, tenant, h2), -EINVAL); /* too short */
	snprintf(bad, sizeof(bad), "mtt1.acme.%sA", secret);
	T_EQ(token_parse(bad, tenant, h2), -EINVAL); /* too long */
	snprintf(bad, sizeof(bad), "mtt1.acme.%.42s=", secret);
	T_EQ(token_parse(bad, tenant, h2), -EINVAL); /* not base64url */
	snprintf(bad, sizeof(bad), "mtt1.ACME.%s", secret);
	T_EQ(token_parse(bad, tenant, h2), -EINVAL); /* tenant charset */
	snprintf(bad, sizeof(bad), "mtt2.acme.%s", secret);
	T_EQ(token_parse(bad, tenant, h2), -EINVAL); /* version */
	T_EQ(token_generate("Bad_Tenant", tok, sizeof(tok), h1), -EINVAL);
}

static void test_signer_process(void)
{
	struct ca_signer sg;
	struct ident a = agent_ident("acme", "via-signer"), o = agent_ident("acme", "x");
	char tok[TOKEN_TEXT_MAX + 1], why[256];
	const struct ca_tenant *t = ca_server_tenant(&srv, "acme");
	const char *w = NULL;
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509_REQ *req = NULL;
	X509 *leaf = NULL, *x = NULL;
	X509_CRL *crl = NULL;

	T_REQUIRE(t && key);
	T_REQUIRE(ca_signer_start(db_path, &kek, &sg) == 0);
	srv.signer = &sg;
	T_REQUIRE(make_token("acme", "agent", "alice", 3600, tok) == 0);
	T_EQ(enroll(&a, tok, &leaf, why, sizeof(why)), 0);
	T_CHECK(leaf && pki_verify_leaf(t, leaf, &w) == 0);
	/* the signer checks what it signs: a CSR of acme is not signed as tenant other */
	T_REQUIRE(enroll_csr_make(key, &o, &req) == 0);
	T_EQ(ca_signer_leaf(&sg, "other", req, 3600, time(NULL), &x), -EPERM);
	T_CHECK(x == NULL);
	T_EQ(ca_signer_leaf(&sg, "acme", req, 10, time(NULL), &x), -EPERM); /* ttl too short */
	T_EQ(ca_signer_crl(&sg, "acme", NULL, NULL, 0, 7, time(NULL), &crl), 0);
	T_CHECK(crl && X509_CRL_verify(crl, X509_get0_pubkey(t->issuer)) == 1);
	srv.signer = NULL;
	ca_signer_stop(&sg);
	T_EQ(sg.fd, -1);
	X509_CRL_free(crl);
	X509_REQ_free(req);
	X509_free(leaf);
	EVP_PKEY_free(key);
}

int main(void)
{
	char *path = db_path;
	int fd = mkstemp(path);

	log_init("test_ca", LOG_LVL_ERR);
	if (fd < 0 || ca_db_open(path, &db) != 0 || ca_service_ensure(db, &kek) != 0 ||
	    ca_tenant_init(db, &kek, "acme", CA_KEY_P256) != 0 ||
	    ca_tenant_init(db, &kek, "other", CA_KEY_RSA2048) != 0 ||
	    ca_server_init(&srv, db, &kek) != 0) {
		printf("Bail out! cannot set up the CA\n");
		return 1;
	}
	T_RUN(test_enroll_agent_fields);
	T_RUN(test_token_spent);
	T_RUN(test_token_expired);
	T_RUN(test_token_wrong_and_other_tenant);
	T_RUN(test_csr_other_role_or_user);
	T_RUN(test_replay_refused);
	T_RUN(test_malformed_requests);
	T_RUN(test_revoke_and_crl);
	T_RUN(test_import_custom_ca);
	T_RUN(test_external_signing);
	T_RUN(test_token_hash_only);
	T_RUN(test_token_policy);
	T_RUN(test_stale_crl_rebuilt);
	T_RUN(test_token_format);
	T_RUN(test_signer_process);
	ca_server_free(&srv);
	ca_db_close(db);
	close(fd);
	unlink(path);
	{
		char p[64];

		snprintf(p, sizeof(p), "%s-wal", path);
		unlink(p);
		snprintf(p, sizeof(p), "%s-shm", path);
		unlink(p);
	}
	return t_done();
}
