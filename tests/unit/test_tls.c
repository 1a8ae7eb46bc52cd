/* lib/tls: mutual TLS 1.3 with mtun identities, refusals with reasons, pins, the ring. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "pki_fixture.h"
#include "ring.h"
#include "t.h"
#include "tls.h"

#define DEVICE_HEX "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define URI_AGENT  "mtun://acme/agent/laptop-1?user=alice&device=" DEVICE_HEX
#define URI_BROKER "mtun://acme/broker/edge-1"
#define URI_CONN   "mtun://acme/connector/dc-1"
#define URI_GLOBEX "mtun://globex/connector/dc-9"
#define BULK       (4U << 20)

/* The PKI of every test: acme's root and intermediate, and a stranger's. */
static struct pki_cert root, inter, other_root, other_inter;
static struct pki_cert broker, agent, conn_leaf, globex, stranger, expired, no_uri, two_uris,
    bad_uri, ca_leaf;
static STACK_OF(X509) *anchors, *chain, *other_chain;

static int make_leaf(const struct pki_cert *issuer, const char *uri, struct pki_cert *out)
{
	const char *uris[] = {uri};

	return pki_leaf_new(issuer, uris, 1, -60, 86400, out);
}

static int pki_setup(void)
{
	const char *two[] = {URI_CONN, "mtun://acme/connector/dc-2"};
	const char *web[] = {"https://example.com/"};
	const char *one[] = {URI_CONN};

	if (pki_root_new("acme root", &root) || pki_ca_new(&root, "acme tenant", &inter) ||
	    pki_root_new("other root", &other_root) ||
	    pki_ca_new(&other_root, "other tenant", &other_inter) ||
	    make_leaf(&inter, URI_BROKER, &broker) || make_leaf(&inter, URI_AGENT, &agent) ||
	    make_leaf(&inter, URI_CONN, &conn_leaf) || make_leaf(&inter, URI_GLOBEX, &globex) ||
	    make_leaf(&other_inter, URI_CONN, &stranger) ||
	    make_leaf(&inter, "mtun://acme/ca/ca-1", &ca_leaf) ||
	    make_leaf(&inter, "mtun://Acme/connector/dc-1", &bad_uri) ||
	    pki_leaf_new(&inter, one, 1, -2 * 86400, -86400, &expired) ||
	    pki_leaf_new(&inter, web, 1, -60, 86400, &no_uri) ||
	    pki_leaf_new(&inter, two, 2, -60, 86400, &two_uris))
		return -1;
	anchors = sk_X509_new_null();
	chain = sk_X509_new_null();
	other_chain = sk_X509_new_null();
	if (!anchors || !chain || !other_chain || !sk_X509_push(anchors, root.cert) ||
	    !sk_X509_push(chain, inter.cert) || !sk_X509_push(other_chain, other_inter.cert))
		return -1;
	return 0;
}

static void pki_teardown(void)
{
	struct pki_cert *all[] = {&root,   &inter,     &other_root, &other_inter, &broker,
	                          &agent,  &conn_leaf, &globex,     &stranger,    &expired,
	                          &no_uri, &two_uris,  &bad_uri,    &ca_leaf};

	sk_X509_free(anchors);
	sk_X509_free(chain);
	sk_X509_free(other_chain);
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		pki_cert_free(all[i]);
}

/* A broker accepting acme's agents and connectors. */
static struct tls_conf broker_conf(void)
{
	return (struct tls_conf){
	    .server = true,
	    .cert = broker.cert,
	    .chain = chain,
	    .key = broker.key,
	    .anchors = anchors,
	    .peer_roles = MT_ROLE_BIT(MT_ROLE_AGENT) | MT_ROLE_BIT(MT_ROLE_CONNECTOR),
	    .peer_tenant = "acme",
	};
}

/* A client (agent by default) that wants acme's broker. */
static struct tls_conf client_conf(const struct pki_cert *leaf)
{
	return (struct tls_conf){
	    .cert = leaf->cert,
	    .chain = leaf == &stranger ? other_chain : chain,
	    .key = leaf->key,
	    .anchors = anchors,
	    .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
	    .peer_tenant = "acme",
	};
}

/* Moves all pending ciphertext from a to b. */
static void move(struct tls_conn *a, struct tls_conn *b)
{
	const void *p;
	size_t n;

	for (;;) {
		tls_conn_peek(a, &p, &n);
		if (n == 0 || tls_conn_feed(b, p, n) < 0)
			return;
		tls_conn_consume(a, n);
	}
}

/*
 * Runs a handshake in memory. Returns 0 if both ends are established and the server
 * accepted; otherwise -EPROTO, after delivering the refusal's alert to the other side.
 */
static int handshake_mem(struct tls_conn *cli, struct tls_conn *srv)
{
	int rc = -EAGAIN, rs = -EAGAIN;
	uint8_t b;

	for (int i = 0; i < 20 && (rc == -EAGAIN || rs == -EAGAIN); i++) {
		rc = tls_conn_handshake(cli);
		move(cli, srv);
		rs = tls_conn_handshake(srv);
		move(srv, cli);
	}
	if (rc == 0 && rs == 0) {
		/* TLS 1.3: the server's verdict on the client reaches it on its next read. */
		if (tls_conn_read(cli, &b, 1) == -EPROTO)
			return -EPROTO;
		return 0;
	}
	if (rc == 0) /* server refused after the client finished */
		rc = (int)tls_conn_read(cli, &b, 1);
	if (rs == 0)
		rs = (int)tls_conn_read(srv, &b, 1);
	return rc == -EPROTO || rs == -EPROTO ? -EPROTO : -ETIMEDOUT;
}

struct pair {
	struct tls_ctx *sctx, *cctx;
	struct tls_conn *s, *c;
	const char *why_s, *why_c;
};

static int pair_new(struct pair *p, const struct tls_conf *sconf, const struct tls_conf *cconf)
{
	memset(p, 0, sizeof(*p));
	p->sctx = tls_ctx_new(sconf, &p->why_s);
	p->cctx = tls_ctx_new(cconf, &p->why_c);
	if (!p->sctx || !p->cctx)
		return -EINVAL;
	p->s = tls_conn_new(p->sctx);
	p->c = tls_conn_new(p->cctx);
	return p->s && p->c ? 0 : -ENOMEM;
}

static void pair_free(struct pair *p)
{
	tls_conn_free(p->s);
	tls_conn_free(p->c);
	tls_ctx_free(p->sctx);
	tls_ctx_free(p->cctx);
}

static bool contains(const char *s, const char *sub)
{
	return s && strstr(s, sub) != NULL;
}

/* The refusal of a client certificate by acme's broker: reason on the server, alert on
 * the client. */
static void expect_refused(const struct pki_cert *leaf, const char *reason)
{
	struct tls_conf s = broker_conf(), c = client_conf(leaf);
	struct pair p;

	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_CHECK(!tls_conn_established(p.s));
	T_CHECK(tls_conn_peer(p.s) == NULL);
	if (!contains(tls_conn_why(p.s), reason))
		t_fail(__FILE__, __LINE__, "server reason \"%s\" lacks \"%s\"", tls_conn_why(p.s),
		       reason);
	if (!contains(tls_conn_why(p.c), "peer refused"))
		t_fail(__FILE__, __LINE__, "client reason \"%s\"", tls_conn_why(p.c));
	T_CHECK(tls_conn_write(p.s, "x", 1) == -EPROTO);
	pair_free(&p);
}

static void test_mutual_in_memory(void)
{
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	const struct ident *sp, *cp;
	struct pair p;

	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	sp = tls_conn_peer(p.s);
	cp = tls_conn_peer(p.c);
	T_REQUIRE(sp && cp);
	T_EQ(sp->role, MT_ROLE_AGENT);
	T_STREQ(sp->tenant, "acme");
	T_STREQ(sp->id, "laptop-1");
	T_STREQ(sp->user, "alice");
	T_CHECK(sp->has_device && sp->device[1] == 0x11);
	T_EQ(cp->role, MT_ROLE_BROKER);
	T_STREQ(cp->id, "edge-1");
	T_CHECK(ASN1_INTEGER_cmp(tls_conn_peer_serial(p.s), X509_get0_serialNumber(agent.cert)) ==
	        0);
	T_CHECK(ASN1_INTEGER_cmp(tls_conn_peer_serial(p.c), X509_get0_serialNumber(broker.cert)) ==
	        0);
	T_STREQ(tls_conn_cipher(p.c), "TLS_AES_128_GCM_SHA256"); /* first of ours, offered first */
	T_STREQ(tls_conn_cipher(p.s), tls_conn_cipher(p.c));
	pair_free(&p);
}

static void test_exporter_and_peer_match(void)
{
	struct tls_conf s = broker_conf(), c = client_conf(&conn_leaf);
	uint8_t ks[32], kc[32], kx[32], fp[TLS_SHA256_LEN];
	struct pair p;

	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(tls_conn_export(p.c, TLS_EXPORTER_LABEL, NULL, 0, kc, sizeof(kc)), -EINVAL);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	T_EQ(tls_conn_export(p.s, TLS_EXPORTER_LABEL, (const uint8_t *)"hello", 5, ks, sizeof(ks)),
	     0);
	T_EQ(tls_conn_export(p.c, TLS_EXPORTER_LABEL, (const uint8_t *)"hello", 5, kc, sizeof(kc)),
	     0);
	T_CHECK(memcmp(ks, kc, sizeof(ks)) == 0);
	T_EQ(tls_conn_export(p.c, TLS_EXPORTER_LABEL, (const uint8_t *)"other", 5, kx, sizeof(kx)),
	     0);
	T_CHECK(memcmp(kx, kc, sizeof(kx)) != 0);
	T_REQUIRE(tls_conn_peer(p.s) && tls_conn_peer(p.c));
	T_EQ(tls_conn_peer(p.s)->role, MT_ROLE_CONNECTOR);
	T_STREQ(tls_conn_peer(p.s)->id, "dc-1");
	T_STREQ(tls_conn_peer(p.c)->id, "edge-1");
	T_REQUIRE(tls_cert_sha256(conn_leaf.cert, fp) == 0);
	T_CHECK(tls_conn_peer_sha256(p.s) &&
	        memcmp(tls_conn_peer_sha256(p.s), fp, sizeof(fp)) == 0);
	T_REQUIRE(tls_cert_sha256(broker.cert, fp) == 0);
	T_CHECK(tls_conn_peer_sha256(p.c) &&
	        memcmp(tls_conn_peer_sha256(p.c), fp, sizeof(fp)) == 0);
	pair_free(&p);
}

static void test_refuse_wrong_role(void)
{
	/* An admin may not connect as if it were an agent or a connector. */
	struct pki_cert admin;

	T_REQUIRE(make_leaf(&inter, "mtun://acme/admin/root-1", &admin) == 0);
	expect_refused(&admin, "peer certificate role 'admin' not accepted here");
	pki_cert_free(&admin);
}

static void test_refuse_wrong_role_client_side(void)
{
	/* The agent expects a broker; a connector's certificate on the server is refused. */
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	struct pair p;

	s.cert = conn_leaf.cert;
	s.key = conn_leaf.key;
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_STREQ(tls_conn_why(p.c), "peer certificate role 'connector' not accepted here");
	T_CHECK(contains(tls_conn_why(p.s), "peer refused"));
	T_CHECK(!tls_conn_established(p.c) && !tls_conn_established(p.s));
	pair_free(&p);
}

static void test_refuse_wrong_tenant(void)
{
	expect_refused(&globex, "peer tenant 'globex' is not 'acme'");
}

static void test_any_tenant(void)
{
	/* A multi-tenant broker (peer_tenant NULL) takes globex's connector too. */
	struct tls_conf s = broker_conf(), c = client_conf(&globex);
	struct pair p;

	s.peer_tenant = NULL;
	c.peer_tenant = NULL;
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	T_REQUIRE(tls_conn_peer(p.s) != NULL);
	T_STREQ(tls_conn_peer(p.s)->tenant, "globex");
	pair_free(&p);
}

static void test_refuse_untrusted_root(void)
{
	expect_refused(&stranger, "certificate chain untrusted: ");
}

static void test_refuse_expired(void)
{
	expect_refused(&expired, "certificate chain untrusted: certificate has expired");
}

static void test_refuse_no_uri(void)
{
	expect_refused(&no_uri, "peer certificate has no mtun:// URI");
}

static void test_refuse_two_uris(void)
{
	expect_refused(&two_uris, "peer certificate has more than one mtun:// URI");
}

static void test_refuse_malformed_uri(void)
{
	expect_refused(&bad_uri, "peer certificate URI is malformed: bad tenant");
}

struct revoke_state {
	int calls;
	struct ident seen;
	ASN1_INTEGER *serial;
	const ASN1_INTEGER *revoked;
};

static int revoked_hook(void *arg, const struct ident *peer, const ASN1_INTEGER *serial)
{
	struct revoke_state *st = arg;

	st->calls++;
	st->seen = *peer;
	ASN1_INTEGER_free(st->serial);
	st->serial = ASN1_INTEGER_dup(serial);
	return ASN1_INTEGER_cmp(serial, st->revoked) == 0;
}

static void test_refuse_revoked(void)
{
	struct revoke_state st = {.revoked = X509_get0_serialNumber(conn_leaf.cert)};
	struct tls_conf s = broker_conf(), c = client_conf(&conn_leaf);
	struct pair p;

	s.revoked = revoked_hook;
	s.revoked_arg = &st;
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_STREQ(tls_conn_why(p.s), "peer certificate revoked");
	T_CHECK(contains(tls_conn_why(p.c), "revoked"));
	T_EQ(st.calls, 1);
	T_STREQ(st.seen.id, "dc-1");
	T_CHECK(st.serial && ASN1_INTEGER_cmp(st.serial, st.revoked) == 0);
	pair_free(&p);

	/* Same hook, another certificate: admitted. */
	c = client_conf(&agent);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), 0);
	T_EQ(st.calls, 2);
	T_STREQ(st.seen.id, "laptop-1");
	pair_free(&p);
	ASN1_INTEGER_free(st.serial);
}

static void test_refuse_client_without_cert(void)
{
	struct tls_conf s = broker_conf();
	struct tls_conf c = {
	    .mode = TLS_SERVER_AUTH, .anchors = anchors, .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER)};
	struct pair p;

	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_STREQ(tls_conn_why(p.s), "peer sent no certificate, and one is required");
	T_CHECK(contains(tls_conn_why(p.c), "peer refused"));
	pair_free(&p);
}

/* An enrollment server (the CA) and a client holding only a pin. */
static int pin_pair(struct pair *p, const uint8_t *pin, STACK_OF(X509) *sent)
{
	struct tls_conf s = {.server = true,
	                     .mode = TLS_SERVER_AUTH,
	                     .cert = ca_leaf.cert,
	                     .chain = sent,
	                     .key = ca_leaf.key};
	struct tls_conf c = {.mode = TLS_SERVER_AUTH, .pin = pin};

	return pair_new(p, &s, &c);
}

static void test_pin_leaf(void)
{
	uint8_t pin[TLS_SHA256_LEN];
	struct pair p;

	T_REQUIRE(tls_cert_sha256(ca_leaf.cert, pin) == 0);
	T_REQUIRE(pin_pair(&p, pin, chain) == 0);
	T_EQ(handshake_mem(p.c, p.s), 0);
	T_CHECK(tls_conn_peer(p.s) == NULL); /* the enrolling client showed nothing */
	T_CHECK(tls_conn_peer_sha256(p.c) &&
	        memcmp(tls_conn_peer_sha256(p.c), pin, sizeof(pin)) == 0);
	pair_free(&p);
}

static void test_pin_intermediate(void)
{
	uint8_t pin[TLS_SHA256_LEN];
	struct pair p;

	T_REQUIRE(tls_cert_sha256(inter.cert, pin) == 0);
	T_REQUIRE(pin_pair(&p, pin, chain) == 0);
	T_EQ(handshake_mem(p.c, p.s), 0);
	pair_free(&p);
}

static void test_pin_wrong(void)
{
	uint8_t pin[TLS_SHA256_LEN];
	struct pair p;

	T_REQUIRE(tls_cert_sha256(broker.cert, pin) == 0);
	T_REQUIRE(pin_pair(&p, pin, chain) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_STREQ(tls_conn_why(p.c), "server certificate does not match the pinned fingerprint");
	T_CHECK(contains(tls_conn_why(p.s), "peer refused"));
	pair_free(&p);
}

static void test_pin_unrelated_ca_in_chain(void)
{
	/* The server sends the pinned CA, but that CA did not sign its leaf. */
	uint8_t pin[TLS_SHA256_LEN];
	struct pair p;

	T_REQUIRE(tls_cert_sha256(other_inter.cert, pin) == 0);
	T_REQUIRE(pin_pair(&p, pin, other_chain) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_CHECK(contains(tls_conn_why(p.c), "does not chain to the pinned certificate"));
	pair_free(&p);
}

static void test_pin_and_roles(void)
{
	/* Pin plus identity: the enrolling client wants the CA role, gets a broker. */
	struct tls_conf s = broker_conf(), c = {.mode = TLS_SERVER_AUTH};
	uint8_t pin[TLS_SHA256_LEN];
	struct pair p;

	T_REQUIRE(tls_cert_sha256(broker.cert, pin) == 0);
	s.mode = TLS_SERVER_AUTH;
	c.pin = pin;
	c.peer_roles = MT_ROLE_BIT(MT_ROLE_CA);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO);
	T_STREQ(tls_conn_why(p.c), "peer certificate role 'broker' not accepted here");
	pair_free(&p);
}

static void test_ctx_conf_checked(void)
{
	struct tls_conf c = broker_conf();
	const char *why = NULL;

	c.key = agent.key;
	T_CHECK(tls_ctx_new(&c, &why) == NULL);
	T_STREQ(why, "the private key does not match the certificate");
	c = broker_conf();
	c.peer_roles = 0;
	T_CHECK(tls_ctx_new(&c, &why) == NULL);
	T_STREQ(why, "no peer role is accepted");
	c = broker_conf();
	c.anchors = NULL;
	T_CHECK(tls_ctx_new(&c, &why) == NULL);
	T_STREQ(why, "mutual TLS needs trust anchors");
	c = broker_conf();
	c.peer_tenant = "Not A Tenant";
	T_CHECK(tls_ctx_new(&c, &why) == NULL);
	c = (struct tls_conf){.mode = TLS_SERVER_AUTH};
	T_CHECK(tls_ctx_new(&c, &why) == NULL);
	T_STREQ(why, "a server-auth client needs a pin or trust anchors");
	c = broker_conf();
	c.ciphersuites = "TLS_AES_128_CCM_SHA256";
	T_CHECK(tls_ctx_new(&c, &why) == NULL);
}

static void test_trust_store(void)
{
	/* Anchors given as an X509_STORE, alone and merged with a list, which leaves the
	 * caller's store as it was. */
	struct tls_conf s = broker_conf(), c = client_conf(&stranger);
	X509_STORE *store = X509_STORE_new();
	STACK_OF(X509) *more = sk_X509_new_null();
	struct pair p;

	T_REQUIRE(store && more && X509_STORE_add_cert(store, root.cert) == 1);
	T_REQUIRE(sk_X509_push(more, other_root.cert));
	s.anchors = NULL;
	s.trust = store;
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), -EPROTO); /* stranger's root is not in the store */
	T_CHECK(contains(tls_conn_why(p.s), "certificate chain untrusted"));
	pair_free(&p);

	s.anchors = more;
	c.anchors = more;
	sk_X509_push(more, root.cert);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_EQ(handshake_mem(p.c, p.s), 0);
	pair_free(&p);
	T_EQ(sk_X509_OBJECT_num(X509_STORE_get0_objects(store)), 1);
	X509_STORE_free(store);
	sk_X509_free(more);
}

static void test_forced_suite(void)
{
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	struct pair p;

	c.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	T_STREQ(tls_conn_cipher(p.s), "TLS_CHACHA20_POLY1305_SHA256");
	T_STREQ(tls_conn_cipher(p.c), "TLS_CHACHA20_POLY1305_SHA256");
	pair_free(&p);
}

static void test_close_notify_and_truncation(void)
{
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	uint8_t buf[64];
	struct pair p;

	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	T_EQ(tls_conn_write(p.c, "bye", 3), 3);
	T_EQ(tls_conn_shutdown(p.c), 0);
	move(p.c, p.s);
	T_EQ(tls_conn_read(p.s, buf, sizeof(buf)), 3);
	T_EQ(tls_conn_read(p.s, buf, sizeof(buf)), -ECONNRESET);
	T_EQ(tls_conn_read(p.s, buf, sizeof(buf)), -ECONNRESET);
	pair_free(&p);

	/* EOF without close_notify: a truncation, not a clean close. */
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	T_EQ(tls_conn_read(p.s, buf, sizeof(buf)), -EAGAIN);
	tls_conn_feed_eof(p.s);
	T_EQ(tls_conn_read(p.s, buf, sizeof(buf)), -EPROTO);
	T_STREQ(tls_conn_why(p.s), "connection closed without close_notify");
	T_EQ(tls_conn_feed(p.s, "x", 1), -EPIPE);
	pair_free(&p);
}

static void test_garbage_refused(void)
{
	struct tls_conf s = broker_conf();
	struct tls_ctx *ctx = tls_ctx_new(&s, NULL);
	struct tls_conn *c = ctx ? tls_conn_new(ctx) : NULL;
	static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

	T_REQUIRE(c);
	T_EQ(tls_conn_feed(c, junk, sizeof(junk) - 1), 0);
	T_EQ(tls_conn_handshake(c), -EPROTO);
	T_CHECK(contains(tls_conn_why(c), "TLS failed"));
	T_EQ(tls_conn_handshake(c), -EPROTO);
	tls_conn_free(c);
	tls_ctx_free(ctx);
}

static uint8_t pattern(uint64_t i)
{
	uint64_t x = i * 0x9e3779b97f4a7c15ULL;

	return (uint8_t)(x >> 56 ^ x >> 29);
}

static void fill(uint8_t *buf, size_t n, uint64_t off)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = pattern(off + i);
}

static bool check(const uint8_t *buf, size_t n, uint64_t off)
{
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pattern(off + i))
			return false;
	return true;
}

static void test_backpressure(void)
{
	/* Writes stop when the output is full, and resume after consuming: no data lost. */
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	static uint8_t out[BULK / 4], in[65536], wire[7000];
	size_t wire_len;
	size_t sent = 0, got = 0;
	int stalls = 0;
	struct pair p;
	bool ok = true;

	fill(out, sizeof(out), 0);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	while (got < sizeof(out) && ok) {
		ssize_t n;

		/* Fill the output until it says "no room": never beyond its size. */
		while ((n = tls_conn_write(p.c, out + sent, sizeof(out) - sent)) > 0)
			sent += (size_t)n;
		if (n == -EAGAIN && sent < sizeof(out))
			stalls++;
		T_CHECK(tls_conn_pending(p.c) <= (128U << 10));
		/* The copying form of the output side this time. */
		while ((wire_len = tls_conn_take(p.c, wire, sizeof(wire))) > 0)
			T_REQUIRE(tls_conn_feed(p.s, wire, wire_len) == 0);
		T_EQ(tls_conn_pending(p.c), 0);
		while ((n = tls_conn_read(p.s, in, sizeof(in))) > 0) {
			ok = check(in, (size_t)n, got);
			got += (size_t)n;
		}
		if (n != -EAGAIN)
			break;
	}
	T_CHECK(ok);
	T_EQ(got, sizeof(out));
	T_CHECK(stalls > 0);
	pair_free(&p);
}

/*
 * The receive side reassembles records from whatever the socket hands over: pieces of
 * 1 byte, odd sizes, and more than one record at once must all give the same bytes.
 */
static void test_feed_in_pieces(void)
{
	static const size_t pieces[] = {1, 7, 5000, 70000, 3, 16384, 16406, 300000};
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	static uint8_t out[900000], in[65536], wire[400000];
	size_t sent = 0, got = 0, wire_len = 0, off = 0, k = 0;
	struct pair p;
	bool ok = true;

	fill(out, sizeof(out), 7);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	T_REQUIRE(handshake_mem(p.c, p.s) == 0);
	while (got < sizeof(out) && ok) {
		ssize_t n;

		if (off == wire_len) {
			while (sent < sizeof(out) &&
			       (n = tls_conn_write(p.c, out + sent, sizeof(out) - sent)) > 0)
				sent += (size_t)n;
			wire_len = tls_conn_take(p.c, wire, sizeof(wire));
			off = 0;
			T_REQUIRE(wire_len > 0);
		}
		size_t step = pieces[k++ % (sizeof(pieces) / sizeof(pieces[0]))];
		if (step > wire_len - off)
			step = wire_len - off;
		T_REQUIRE(tls_conn_feed(p.s, wire + off, step) == 0);
		off += step;
		while ((n = tls_conn_read(p.s, in, sizeof(in))) > 0) {
			ok = check(in, (size_t)n, got + 7);
			got += (size_t)n;
		}
		T_REQUIRE(n == -EAGAIN);
	}
	T_CHECK(ok);
	T_EQ(got, sizeof(out));
	/* After close_notify reads say reset; after the socket's EOF, feeding is refused. */
	T_REQUIRE(tls_conn_shutdown(p.c) >= 0);
	wire_len = tls_conn_take(p.c, wire, sizeof(wire));
	T_REQUIRE(tls_conn_feed(p.s, wire, wire_len) == 0);
	T_EQ(tls_conn_read(p.s, in, sizeof(in)), -ECONNRESET);
	tls_conn_feed_eof(p.s);
	T_EQ(tls_conn_feed(p.s, "x", 1), -EPIPE);
	pair_free(&p);
}

static void test_load_pem(void)
{
	char *a = pki_cert_pem(agent.cert), *b = pki_cert_pem(inter.cert),
	     *k = pki_key_pem(agent.key);
	char path[] = "/tmp/mtun-test-tls-XXXXXX", both[8192];
	STACK_OF(X509) *certs = NULL;
	EVP_PKEY *key = NULL;
	int fd;

	T_REQUIRE(a && b && k);
	snprintf(both, sizeof(both), "%s%s", a, b);
	T_EQ(tls_load_certs_mem(both, strlen(both), &certs), 0);
	T_REQUIRE(certs);
	T_EQ(sk_X509_num(certs), 2);
	T_EQ(X509_cmp(sk_X509_value(certs, 0), agent.cert), 0);
	T_EQ(X509_cmp(sk_X509_value(certs, 1), inter.cert), 0);
	sk_X509_pop_free(certs, X509_free);

	T_EQ(tls_load_certs_mem("hello", 5, &certs), -EBADMSG);
	T_CHECK(certs == NULL);
	both[strlen(a) + 100] = '!'; /* corrupt the second certificate's base64 */
	T_EQ(tls_load_certs_mem(both, strlen(both), &certs), -EBADMSG);
	T_EQ(tls_load_certs("/nonexistent/mtun.pem", &certs), -ENOENT);

	fd = mkstemp(path);
	T_REQUIRE(fd >= 0);
	T_CHECK(write(fd, a, strlen(a)) == (ssize_t)strlen(a));
	close(fd);
	T_EQ(tls_load_certs(path, &certs), 0);
	T_CHECK(certs && sk_X509_num(certs) == 1);
	sk_X509_pop_free(certs, X509_free);
	unlink(path);

	T_EQ(tls_load_key_mem(k, strlen(k), &key), 0);
	T_CHECK(key && X509_check_private_key(agent.cert, key) == 1);
	EVP_PKEY_free(key);
	T_EQ(tls_load_key_mem("nope", 4, &key), -EBADMSG);
	OPENSSL_cleanse(k, strlen(k));
	free(a);
	free(b);
	free(k);
}

/* One end of a socket: ciphertext moved between a tls_conn and a non-blocking fd. */
struct end {
	int fd;
	struct tls_conn *c;
	uint64_t tx, rx;
	bool bad;
};

static void end_io(struct end *e, uint64_t total)
{
	static uint8_t buf[65536];
	ssize_t n;

	while ((n = recv(e->fd, buf, sizeof(buf), 0)) > 0)
		if (tls_conn_feed(e->c, buf, (size_t)n) < 0)
			break;
	tls_conn_handshake(e->c);
	while (tls_conn_established(e->c) && e->tx < total) {
		size_t len = total - e->tx < sizeof(buf) ? total - e->tx : sizeof(buf);

		fill(buf, len, e->tx);
		n = tls_conn_write(e->c, buf, len);
		if (n <= 0)
			break;
		e->tx += (size_t)n;
	}
	while ((n = tls_conn_read(e->c, buf, sizeof(buf))) > 0) {
		e->bad |= !check(buf, (size_t)n, e->rx);
		e->rx += (size_t)n;
	}
	for (;;) {
		const void *p;
		size_t len;

		tls_conn_peek(e->c, &p, &len);
		if (len == 0 || (n = send(e->fd, p, len, MSG_NOSIGNAL)) <= 0)
			break;
		tls_conn_consume(e->c, (size_t)n);
	}
}

static void test_mutual_socketpair(void)
{
	struct tls_conf s = broker_conf(), c = client_conf(&agent);
	struct end ends[2];
	struct pair p;
	int sv[2];

	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	for (int i = 0; i < 2; i++) {
		fcntl(sv[i], F_SETFL, O_NONBLOCK);
		ends[i] = (struct end){.fd = sv[i], .c = i ? p.s : p.c};
	}
	for (int spins = 0; spins < 100000; spins++) {
		struct pollfd pfd[2] = {{.fd = sv[0], .events = POLLIN},
		                        {.fd = sv[1], .events = POLLIN}};

		end_io(&ends[0], BULK);
		end_io(&ends[1], BULK);
		if (ends[0].rx == BULK && ends[1].rx == BULK)
			break;
		if (*tls_conn_why(p.s) || *tls_conn_why(p.c))
			break;
		for (int i = 0; i < 2; i++)
			if (tls_conn_pending(ends[i].c))
				pfd[i].events |= POLLOUT;
		if (poll(pfd, 2, 5000) <= 0)
			break;
	}
	T_STREQ(tls_conn_why(p.s), "");
	T_STREQ(tls_conn_why(p.c), "");
	T_EQ(ends[0].rx, BULK);
	T_EQ(ends[1].rx, BULK);
	T_CHECK(!ends[0].bad && !ends[1].bad);
	T_CHECK(tls_conn_peer(p.s) && tls_conn_peer(p.s)->role == MT_ROLE_AGENT);
	pair_free(&p);
	close(sv[0]);
	close(sv[1]);
}

/* The same, with the ring doing every send and receive. */
struct rend {
	struct ring *ring;
	struct ring_bufgroup *bg;
	int fd;
	struct tls_conn *c;
	uint64_t tx, rx;
	size_t in_flight;
	bool bad, done;
	struct rend *other;
	char err[128];
};

static uint8_t ring_scratch[65536];

static void rend_progress(struct rend *e);

static void rend_sent(struct ring *ring, int res, void *arg)
{
	struct rend *e = arg;

	if (res < 0) {
		snprintf(e->err, sizeof(e->err), "send: %s", strerror(-res));
		ring_stop(ring);
		return;
	}
	tls_conn_consume(e->c, e->in_flight);
	e->in_flight = 0;
	rend_progress(e);
}

static void rend_progress(struct rend *e)
{
	ssize_t n;
	int r = tls_conn_handshake(e->c);

	if (r == -EPROTO) {
		snprintf(e->err, sizeof(e->err), "handshake: %s", tls_conn_why(e->c));
		ring_stop(e->ring);
		return;
	}
	while (tls_conn_established(e->c) && e->tx < BULK) {
		size_t len =
		    BULK - e->tx < sizeof(ring_scratch) ? BULK - e->tx : sizeof(ring_scratch);

		fill(ring_scratch, len, e->tx);
		n = tls_conn_write(e->c, ring_scratch, len);
		if (n <= 0)
			break;
		e->tx += (size_t)n;
	}
	while ((n = tls_conn_read(e->c, ring_scratch, sizeof(ring_scratch))) > 0) {
		e->bad |= !check(ring_scratch, (size_t)n, e->rx);
		e->rx += (size_t)n;
	}
	if (n != -EAGAIN && n < 0) {
		snprintf(e->err, sizeof(e->err), "read: %s", tls_conn_why(e->c));
		ring_stop(e->ring);
		return;
	}
	if (!e->in_flight) {
		const void *p;
		size_t len;

		tls_conn_peek(e->c, &p, &len);
		if (len && ring_send(e->ring, e->fd, p, len, rend_sent, e) == 0)
			e->in_flight = len;
	}
	e->done = e->rx == BULK && e->tx == BULK && !e->in_flight;
	if (e->done && e->other->done)
		ring_stop(e->ring);
}

static void rend_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct rend *e = arg;

	if (res <= 0) {
		if (!e->done)
			snprintf(e->err, sizeof(e->err), "recv: %d", res);
		ring_stop(ring);
		return;
	}
	if (tls_conn_feed(e->c, ptr, (size_t)res) < 0)
		snprintf(e->err, sizeof(e->err), "feed refused");
	ring_buf_release(e->bg, bid);
	rend_progress(e);
}

static bool ring_timed_out;

static void ring_deadline(struct ring *ring, void *arg)
{
	ring_timed_out = true;
	ring_stop(ring);
}

static void test_mutual_ring(void)
{
	struct tls_conf s = broker_conf(), c = client_conf(&conn_leaf);
	struct rend ends[2];
	struct ring *ring;
	struct ring_bufgroup *bg;
	struct ring_stats st;
	struct pair p;
	int sv[2];

	T_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	ring = ring_new(64);
	T_REQUIRE(ring);
	bg = ring_bufgroup_new(ring, 64, 16384);
	T_REQUIRE(bg);
	T_REQUIRE(pair_new(&p, &s, &c) == 0);
	for (int i = 0; i < 2; i++) {
		ends[i] = (struct rend){.ring = ring, .bg = bg, .fd = sv[i], .c = i ? p.s : p.c};
		ends[i].other = &ends[!i];
		T_REQUIRE(ring_recv(ring, sv[i], bg, rend_recv, &ends[i]) == 0);
	}
	ring_timed_out = false;
	T_REQUIRE(ring_timer_add(ring, 20ULL * 1000000000, ring_deadline, NULL, NULL) == 0);
	rend_progress(&ends[0]); /* the client speaks first */
	T_EQ(ring_run(ring), 0);
	ring_get_stats(ring, &st);
	T_CHECK(!ring_timed_out);
	T_STREQ(ends[0].err, "");
	T_STREQ(ends[1].err, "");
	T_CHECK(tls_conn_established(p.c) && tls_conn_established(p.s));
	T_EQ(ends[0].rx, BULK);
	T_EQ(ends[1].rx, BULK);
	T_CHECK(!ends[0].bad && !ends[1].bad);
	T_REQUIRE(tls_conn_peer(p.s) && tls_conn_peer(p.c));
	T_EQ(tls_conn_peer(p.s)->role, MT_ROLE_CONNECTOR);
	T_EQ(tls_conn_peer(p.c)->role, MT_ROLE_BROKER);
	T_CHECK(st.cqes > 0);
	ring_free(ring);
	pair_free(&p);
	close(sv[0]);
	close(sv[1]);
}

int main(void)
{
	if (pki_setup() < 0) {
		printf("Bail out! cannot make the test PKI\n");
		return 1;
	}
	T_RUN(test_mutual_in_memory);
	T_RUN(test_mutual_socketpair);
	T_RUN(test_mutual_ring);
	T_RUN(test_exporter_and_peer_match);
	T_RUN(test_refuse_wrong_role);
	T_RUN(test_refuse_wrong_role_client_side);
	T_RUN(test_refuse_wrong_tenant);
	T_RUN(test_any_tenant);
	T_RUN(test_refuse_untrusted_root);
	T_RUN(test_refuse_expired);
	T_RUN(test_refuse_no_uri);
	T_RUN(test_refuse_two_uris);
	T_RUN(test_refuse_malformed_uri);
	T_RUN(test_refuse_revoked);
	T_RUN(test_refuse_client_without_cert);
	T_RUN(test_pin_leaf);
	T_RUN(test_pin_intermediate);
	T_RUN(test_pin_wrong);
	T_RUN(test_pin_unrelated_ca_in_chain);
	T_RUN(test_pin_and_roles);
	T_RUN(test_ctx_conf_checked);
	T_RUN(test_trust_store);
	T_RUN(test_forced_suite);
	T_RUN(test_close_notify_and_truncation);
	T_RUN(test_garbage_refused);
	T_RUN(test_backpressure);
	T_RUN(test_feed_in_pieces);
	T_RUN(test_load_pem);
	pki_teardown();
	return t_done();
}
