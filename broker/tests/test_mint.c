/*
 * Tests for broker/mint.c: leaves chain to a root through the intermediate (RSA-2048 and
 * P-256), names and addresses in the SAN, the template's DER equal to the certificate
 * object's own encoding, the LRU cache, fresh leaf keys, key drop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "inspect.h"
#include "log.h"
#include "secmem.h"
#include "t.h"

struct ca {
	X509 *cert;
	EVP_PKEY *key;
};

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *e;
	int ok;

	X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!e)
		return -1;
	ok = X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok == 1 ? 0 : -1;
}

/* A CA certificate valid from now + nb to now + na, self-signed when issuer is NULL. */
static int ca_new(const struct ca *issuer, const char *cn, bool rsa, long nb, long na,
                  struct ca *out)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	int err = -1;

	out->cert = NULL;
	out->key = rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
	if (!x || !name || !out->key)
		goto out;
	X509_set_version(x, X509_VERSION_3);
	ASN1_INTEGER_set(X509_get_serialNumber(x), rand() & 0xffff);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert) : name);
	X509_gmtime_adj(X509_getm_notBefore(x), nb);
	X509_gmtime_adj(X509_getm_notAfter(x), na);
	X509_set_pubkey(x, out->key);
	if (add_ext(x, NULL, NID_basic_constraints, "critical,CA:TRUE") < 0 ||
	    add_ext(x, NULL, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
	    add_ext(x, NULL, NID_subject_key_identifier, "hash") < 0 ||
	    add_ext(x, issuer ? issuer->cert : x, NID_authority_key_identifier, "keyid:always") < 0)
		goto out;
	if (X509_sign(x, issuer ? issuer->key : out->key, EVP_sha256()) <= 0)
		goto out;
	out->cert = x;
	x = NULL;
	err = 0;
out:
	X509_free(x);
	X509_NAME_free(name);
	return err;
}

static void ca_free(struct ca *c)
{
	X509_free(c->cert);
	EVP_PKEY_free(c->key);
	c->cert = NULL;
	c->key = NULL;
}

static struct ca root, inter_ec, inter_rsa;

/* A minter over a copy of the intermediate's key (mint takes ownership of what it gets). */
static struct mint *mint_for(const struct ca *inter, size_t cache_max, size_t pool_max)
{
	struct mint *m = NULL;

	if (EVP_PKEY_up_ref(inter->key) != 1)
		return NULL;
	if (mint_new(inter->key, inter->cert, cache_max, pool_max, &m) < 0)
		EVP_PKEY_free(inter->key);
	return m;
}

/* Verifies leaf to the root through inter, for host name or IP text (purpose sslserver). */
static int verify(X509 *leaf, const struct ca *inter, const char *name, const char *ip)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *chain = sk_X509_new_null();
	int rc = -1;

	if (!store || !ctx || !chain || X509_STORE_add_cert(store, root.cert) != 1 ||
	    sk_X509_push(chain, inter->cert) <= 0 ||
	    X509_STORE_CTX_init(ctx, store, leaf, chain) != 1)
		goto out;
	X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
	if (name)
		X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(ctx), name, 0);
	if (ip)
		X509_VERIFY_PARAM_set1_ip_asc(X509_STORE_CTX_get0_param(ctx), ip);
	rc = X509_verify_cert(ctx) == 1 ? 0 : X509_STORE_CTX_get_error(ctx);
	if (rc)
		printf("# verify: %s\n", X509_verify_cert_error_string(rc));
out:
	sk_X509_free(chain);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return rc;
}

static void setup_pki(void)
{
	T_REQUIRE(ca_new(NULL, "Test Root", false, -86400, 10 * 86400, &root) == 0);
	T_REQUIRE(ca_new(&root, "Tenant Intermediate EC", false, -86400, 5 * 86400, &inter_ec) ==
	          0);
	T_REQUIRE(ca_new(&root, "Tenant Intermediate RSA", true, -86400, 5 * 86400, &inter_rsa) ==
	          0);
}

static void check_leaf(const struct ca *inter)
{
	struct mint *m = mint_for(inter, 8, 2);
	GENERAL_NAMES *san = NULL;
	const GENERAL_NAME *gn;
	EVP_PKEY *key = NULL;
	X509 *leaf = NULL;
	int type;

	T_REQUIRE(m);
	T_REQUIRE(mint_pool_fill(m) == 0);
	T_EQ(mint_pool_count(m), 2);
	T_REQUIRE(mint_leaf(m, "Www.Example.COM", &leaf, &key) == 0);
	T_EQ(mint_pool_count(m), 1);
	T_EQ(verify(leaf, inter, "www.example.com", NULL), 0);
	T_CHECK(verify(leaf, inter, "other.example.com", NULL) != 0);
	/* the leaf's key pair is its own, a P-256 one, matching the certificate */
	T_CHECK(X509_check_private_key(leaf, key) == 1);
	T_CHECK(EVP_PKEY_eq(key, inter->key) != 1);
	T_CHECK(EVP_PKEY_is_a(key, "EC"));
	T_EQ(X509_check_ca(leaf), 0);
	T_CHECK(X509_get_extended_key_usage(leaf) & XKU_SSL_SERVER);
	T_REQUIRE(X509_get0_authority_key_id(leaf) && X509_get0_subject_key_id(inter->cert));
	T_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf),
	                           X509_get0_subject_key_id(inter->cert)),
	     0);
	T_CHECK(X509_get0_subject_key_id(leaf) != NULL);
	T_CHECK(X509_verify(leaf, inter->key) == 1);
	san = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
	T_REQUIRE(san && sk_GENERAL_NAME_num(san) == 1);
	gn = sk_GENERAL_NAME_value(san, 0);
	T_REQUIRE(GENERAL_NAME_get0_value(gn, &type));
	T_EQ(type, GEN_DNS);
	T_STREQ((const char *)ASN1_STRING_get0_data(gn->d.dNSName), "www.example.com");
	GENERAL_NAMES_free(san);
	X509_free(leaf);
	EVP_PKEY_free(key);
	mint_free(m);
}

static void leaf_verifies_p256_intermediate(void)
{
	check_leaf(&inter_ec);
}

static void leaf_verifies_rsa2048_intermediate(void)
{
	check_leaf(&inter_rsa);
}

static void leaf_validity_and_serial(void)
{
	struct mint *m = mint_for(&inter_ec, 8, 0);
	X509 *a = NULL, *b = NULL;
	EVP_PKEY *ka = NULL, *kb = NULL;
	const ASN1_INTEGER *sa, *sb;
	time_t now = time(NULL);
	int day, sec;

	T_REQUIRE(m);
	T_REQUIRE(mint_leaf(m, "a.example", &a, &ka) == 0);
	T_REQUIRE(mint_leaf(m, "b.example", &b, &kb) == 0);
	/* notBefore an hour back (clock skew), notAfter a day ahead */
	T_REQUIRE(ASN1_TIME_diff(&day, &sec, X509_get0_notBefore(a), X509_get0_notAfter(a)));
	T_EQ((long)day * 86400 + sec, MINT_VALID_BEFORE + MINT_VALID_AFTER);
	T_CHECK(ASN1_TIME_cmp_time_t(X509_get0_notBefore(a), now - MINT_VALID_BEFORE + 5) <= 0);
	sa = X509_get0_serialNumber(a);
	sb = X509_get0_serialNumber(b);
	T_CHECK(ASN1_INTEGER_cmp(sa, sb) != 0);
	T_CHECK(ASN1_STRING_length(sa) >= 8 && ASN1_STRING_length(sa) <= 16);
	T_EQ(ASN1_STRING_type(sa), V_ASN1_INTEGER); /* positive */
	X509_free(a);
	X509_free(b);
	EVP_PKEY_free(ka);
	EVP_PKEY_free(kb);
	mint_free(m);
}

static void leaf_inside_short_lived_intermediate(void)
{
	struct ca shortca, expired;
	struct mint *m;
	X509 *leaf = NULL;
	EVP_PKEY *key = NULL;

	T_REQUIRE(ca_new(&root, "Short", false, -60, 7200, &shortca) == 0);
	m = mint_for(&shortca, 4, 0);
	T_REQUIRE(m);
	T_REQUIRE(mint_leaf(m, "short.example", &leaf, &key) == 0);
	T_EQ(ASN1_TIME_compare(X509_get0_notAfter(leaf), X509_get0_notAfter(shortca.cert)), 0);
	T_EQ(ASN1_TIME_compare(X509_get0_notBefore(leaf), X509_get0_notBefore(shortca.cert)), 0);
	T_EQ(verify(leaf, &shortca, "short.example", NULL), 0);
	X509_free(leaf);
	EVP_PKEY_free(key);
	mint_free(m);
	ca_free(&shortca);

	T_REQUIRE(ca_new(&root, "Expired", false, -7200, -60, &expired) == 0);
	m = mint_for(&expired, 4, 0);
	T_REQUIRE(m);
	T_EQ(mint_leaf(m, "late.example", &leaf, &key), -EKEYEXPIRED);
	T_CHECK(leaf == NULL && key == NULL);
	mint_free(m);
	ca_free(&expired);
}

static void ip_literals_get_ipaddress_san(void)
{
	static const char *const ips[] = {"192.0.2.7", "2001:DB8::7"};
	static const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 7};
	struct mint *m = mint_for(&inter_rsa, 8, 0);
	size_t i;

	T_REQUIRE(m);
	for (i = 0; i < 2; i++) {
		GENERAL_NAMES *san;
		const GENERAL_NAME *gn;
		EVP_PKEY *key = NULL;
		X509 *leaf = NULL;

		T_REQUIRE(mint_leaf(m, ips[i], &leaf, &key) == 0);
		T_EQ(verify(leaf, &inter_rsa, NULL, ips[i]), 0);
		san = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
		T_REQUIRE(san && sk_GENERAL_NAME_num(san) == 1);
		gn = sk_GENERAL_NAME_value(san, 0);
		T_EQ(gn->type, GEN_IPADD);
		T_EQ(ASN1_STRING_length(gn->d.iPAddress), i ? 16 : 4);
		T_CHECK(memcmp(ASN1_STRING_get0_data(gn->d.iPAddress),
		               i ? v6 : (const uint8_t *)"\xc0\x00\x02\x07", i ? 16 : 4) == 0);
		GENERAL_NAMES_free(san);
		X509_free(leaf);
		EVP_PKEY_free(key);
	}
	mint_free(m);
}

static void bad_hosts_refused(void)
{
	static const char *const bad[] = {"",    "a..b",  "-x.example", "x.example.",
	                                  "a b", "[::1]", "1.2.3",      "host:443"};
	struct mint *m = mint_for(&inter_ec, 4, 0);
	X509 *leaf;
	EVP_PKEY *key;
	size_t i;

	T_REQUIRE(m);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		T_EQ(mint_leaf(m, bad[i], &leaf, &key), -EINVAL);
	mint_free(m);
}

static void long_name_has_no_cn_and_critical_san(void)
{
	char host[PROXY_HOST_MAX + 1];
	struct mint *m = mint_for(&inter_ec, 4, 0);
	X509 *leaf = NULL;
	EVP_PKEY *key = NULL;
	int crit = -1;
	void *san;

	T_REQUIRE(m);
	memset(host, 'a', 60);
	memcpy(host + 60, ".example.com", 13);
	T_REQUIRE(mint_leaf(m, host, &leaf, &key) == 0);
	T_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
	san = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
	T_CHECK(san != NULL);
	T_EQ(crit, 1);
	T_EQ(verify(leaf, &inter_ec, host, NULL), 0);
	GENERAL_NAMES_free(san);
	X509_free(leaf);
	EVP_PKEY_free(key);
	mint_free(m);
}

/* The DER a leaf is served as (the template's) is what its fields encode to, signed. */
static void check_der(const struct ca *inter, const char *host)
{
	struct mint *m = mint_for(inter, 4, 1);
	unsigned char *a = NULL, *b = NULL, *tbs = NULL;
	const unsigned char *p;
	EVP_PKEY *key = NULL;
	X509 *leaf = NULL, *copy = NULL;
	int alen, blen;

	T_REQUIRE(m);
	T_REQUIRE(mint_pool_fill(m) == 0);
	T_REQUIRE(mint_leaf(m, host, &leaf, &key) == 0);
	alen = i2d_X509(leaf, &a);
	T_REQUIRE(alen > 0);
	p = a;
	copy = d2i_X509(NULL, &p, alen);
	T_REQUIRE(copy && p == a + alen);
	T_CHECK(X509_verify(copy, inter->key) == 1);
	T_EQ(X509_NAME_cmp(X509_get_subject_name(copy), X509_get_subject_name(leaf)), 0);
	T_EQ(ASN1_TIME_compare(X509_get0_notAfter(copy), X509_get0_notAfter(leaf)), 0);
	T_CHECK(X509_check_host(copy, host, 0, 0, NULL) == 1 ||
	        X509_check_ip_asc(copy, host, 0) == 1);
	/* re-encoded from the object's fields, the certificate is byte for byte the same */
	T_REQUIRE(i2d_re_X509_tbs(leaf, &tbs) > 0);
	blen = i2d_X509(leaf, &b);
	T_EQ(blen, alen);
	T_CHECK(blen == alen && memcmp(a, b, (size_t)alen) == 0);
	OPENSSL_free(a);
	OPENSSL_free(b);
	OPENSSL_free(tbs);
	X509_free(copy);
	X509_free(leaf);
	EVP_PKEY_free(key);
	mint_free(m);
}

static void served_der_is_the_objects_encoding(void)
{
	static const char *const hosts[] = {
	    "www.example.com", "192.0.2.7", "2001:db8::1",
	    "a-very-long-label-that-goes-on-and-on.another-long-label-for-length.example.org"};
	size_t i;

	for (i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
		check_der(&inter_ec, hosts[i]);
		check_der(&inter_rsa, hosts[i]);
	}
}

static void cache_hit_and_lru_eviction(void)
{
	struct mint *m = mint_for(&inter_ec, 3, 0);
	const char *const hosts[] = {"a.example", "b.example", "c.example", "d.example"};
	X509 *c[4] = {0}, *again = NULL;
	EVP_PKEY *k[4] = {0}, *kagain = NULL;
	struct mint_stats st;
	size_t i;

	T_REQUIRE(m);
	for (i = 0; i < 3; i++)
		T_REQUIRE(mint_leaf(m, hosts[i], &c[i], &k[i]) == 0);
	/* a hit returns the same leaf and key, whatever the case of the name */
	T_REQUIRE(mint_leaf(m, "A.EXAMPLE", &again, &kagain) == 0);
	T_CHECK(again == c[0]);
	T_CHECK(kagain == k[0]);
	X509_free(again);
	EVP_PKEY_free(kagain);
	/* a is now the most recent: d evicts b, the least recently used */
	T_REQUIRE(mint_leaf(m, hosts[3], &c[3], &k[3]) == 0);
	mint_get_stats(m, &st);
	T_EQ(st.cached, 3);
	T_EQ(st.evicted, 1);
	T_EQ(st.minted, 4);
	T_EQ(st.cache_hits, 1);
	T_REQUIRE(mint_leaf(m, hosts[0], &again, &kagain) == 0);
	T_CHECK(again == c[0]);
	X509_free(again);
	EVP_PKEY_free(kagain);
	T_REQUIRE(mint_leaf(m, hosts[1], &again, &kagain) == 0);
	T_CHECK(again != c[1]); /* b was minted anew */
	T_CHECK(EVP_PKEY_eq(kagain, k[1]) != 1);
	X509_free(again);
	EVP_PKEY_free(kagain);
	/* c was the least recent when b came back */
	T_REQUIRE(mint_leaf(m, hosts[2], &again, &kagain) == 0);
	T_CHECK(again != c[2]);
	X509_free(again);
	EVP_PKEY_free(kagain);
	mint_get_stats(m, &st);
	T_EQ(st.cached, 3);
	T_EQ(st.evicted, 3);
	/* every host got a key pair of its own */
	for (i = 0; i < 4; i++) {
		T_CHECK(EVP_PKEY_eq(k[i], inter_ec.key) != 1);
		if (i)
			T_CHECK(EVP_PKEY_eq(k[i], k[i - 1]) != 1);
	}
	for (i = 0; i < 4; i++) {
		X509_free(c[i]);
		EVP_PKEY_free(k[i]);
	}
	mint_free(m);
}

static void pool_feeds_mints(void)
{
	struct mint *m = mint_for(&inter_ec, 16, 4);
	struct mint_stats st;
	X509 *leaf;
	EVP_PKEY *key;
	char host[32];
	int i;

	T_REQUIRE(m);
	T_REQUIRE(mint_pool_fill(m) == 0);
	T_EQ(mint_pool_count(m), 4);
	for (i = 0; i < 6; i++) {
		snprintf(host, sizeof(host), "h%d.example", i);
		T_REQUIRE(mint_leaf(m, host, &leaf, &key) == 0);
		X509_free(leaf);
		EVP_PKEY_free(key);
	}
	mint_get_stats(m, &st);
	T_EQ(st.pool_misses, 2);
	T_EQ(mint_pool_count(m), 0);
	T_REQUIRE(mint_pool_fill(m) == 0);
	T_EQ(mint_pool_count(m), 4);
	mint_free(m);
}

static void drop_key_stops_minting(void)
{
	struct mint *m = mint_for(&inter_ec, 4, 0);
	struct mint_stats st;
	X509 *leaf = NULL;
	EVP_PKEY *key = NULL;

	T_REQUIRE(m);
	T_CHECK(mint_has_key(m));
	T_REQUIRE(mint_leaf(m, "a.example", &leaf, &key) == 0);
	X509_free(leaf);
	EVP_PKEY_free(key);
	mint_drop_key(m);
	T_CHECK(!mint_has_key(m));
	mint_get_stats(m, &st);
	T_EQ(st.cached, 0);
	T_EQ(mint_leaf(m, "a.example", &leaf, &key), -ENOKEY);
	T_CHECK(leaf == NULL);
	mint_drop_key(m);
	mint_free(m);
	mint_free(NULL);
}

static void wrong_key_refused(void)
{
	struct mint *m = NULL;

	/* the EC intermediate's certificate with the RSA intermediate's key */
	T_EQ(mint_new(inter_rsa.key, inter_ec.cert, 4, 0, &m), -EINVAL);
	T_CHECK(m == NULL);
	T_EQ(mint_new(inter_ec.key, inter_ec.cert, 0, 0, &m), -EINVAL);
}

static void leaf_keys_in_secure_heap(void)
{
	struct mint *m = mint_for(&inter_ec, 4, 8);
	size_t before;

	T_REQUIRE(m);
	if (!CRYPTO_secure_malloc_initialized()) {
		t_skip("no secure heap");
		mint_free(m);
		return;
	}
	/* private scalars of pooled leaf keys are allocated in the secure heap */
	before = CRYPTO_secure_used();
	T_REQUIRE(mint_pool_fill(m) == 0);
	T_CHECK(CRYPTO_secure_used() > before);
	mint_free(m);
	T_CHECK(CRYPTO_secure_used() <= before);
}

/* Moves bytes between the two ends until both finish the handshake or one fails. */
static int handshake(SSL *cli, SSL *srv)
{
	int i, rc_c = 0, rc_s = 0;

	for (i = 0; i < 100 && (rc_c != 1 || rc_s != 1); i++) {
		if (rc_c != 1)
			rc_c = SSL_connect(cli);
		if (rc_s != 1)
			rc_s = SSL_accept(srv);
		if ((rc_c <= 0 && SSL_get_error(cli, rc_c) != SSL_ERROR_WANT_READ) ||
		    (rc_s <= 0 && SSL_get_error(srv, rc_s) != SSL_ERROR_WANT_READ))
			return -1;
	}
	return rc_c == 1 && rc_s == 1 ? 0 : -1;
}

static void tls_client_accepts_minted_leaf(void)
{
	struct mint *m = mint_for(&inter_rsa, 4, 1);
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method()), *sctx = SSL_CTX_new(TLS_server_method());
	SSL *cli = NULL, *srv = NULL;
	BIO *b1 = NULL, *b2 = NULL;
	EVP_PKEY *key = NULL;
	X509 *leaf = NULL;

	T_REQUIRE(m && cctx && sctx);
	T_REQUIRE(mint_leaf(m, "intranet.example", &leaf, &key) == 0);
	T_REQUIRE(SSL_CTX_use_certificate(sctx, leaf) == 1);
	T_REQUIRE(SSL_CTX_use_PrivateKey(sctx, key) == 1);
	T_REQUIRE(SSL_CTX_add1_chain_cert(sctx, inter_rsa.cert) == 1);
	T_REQUIRE(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), root.cert) == 1);
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
	cli = SSL_new(cctx);
	srv = SSL_new(sctx);
	T_REQUIRE(cli && srv && BIO_new_bio_pair(&b1, 0, &b2, 0) == 1);
	SSL_set_bio(cli, b1, b1);
	SSL_set_bio(srv, b2, b2);
	T_REQUIRE(SSL_set1_host(cli, "intranet.example") == 1);
	T_EQ(handshake(cli, srv), 0);
	T_EQ(SSL_get_verify_result(cli), X509_V_OK);
	SSL_free(cli);
	SSL_free(srv);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	X509_free(leaf);
	EVP_PKEY_free(key);
	mint_free(m);
}

int main(void)
{
	log_init("test_mint", LOG_LVL_WARN);
	if (secmem_init(1 << 20, 64, 1) < 0)
		printf("# secure heap not available\n");
	T_RUN(setup_pki);
	T_RUN(leaf_verifies_p256_intermediate);
	T_RUN(leaf_verifies_rsa2048_intermediate);
	T_RUN(leaf_validity_and_serial);
	T_RUN(leaf_inside_short_lived_intermediate);
	T_RUN(ip_literals_get_ipaddress_san);
	T_RUN(bad_hosts_refused);
	T_RUN(long_name_has_no_cn_and_critical_san);
	T_RUN(served_der_is_the_objects_encoding);
	T_RUN(cache_hit_and_lru_eviction);
	T_RUN(pool_feeds_mints);
	T_RUN(drop_key_stops_minting);
	T_RUN(wrong_key_refused);
	T_RUN(leaf_keys_in_secure_heap);
	T_RUN(tls_client_accepts_minted_leaf);
	ca_free(&root);
	ca_free(&inter_ec);
	ca_free(&inter_rsa);
	secmem_fini();
	return t_done();
}
