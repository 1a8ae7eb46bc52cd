/*
 * Inspection key custody: the envelope (round trip, wrong key, tampering, associated data,
 * a CA given a private wrapping key), and the CA's custody in a real store: CSR, import
 * checks, hand-out policy and its audit, backups and rotation, revocation of intermediates.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "envelope.h"
#include "log.h"
#include "store.h"
#include "t.h"

static EVP_PKEY *node_key, *other_key, *node_pub;
static char dir[] = "/tmp/mtun-test-custody.XXXXXX";
static char db_path[512];
static struct ca_db *db;
static EVP_PKEY *root_key;
static X509 *root;
static const struct envelope_ad ad = {"acme", "0123abcd", CUSTODY_PURPOSE};
static const uint8_t secret[] = "pretend this is a DER private key, 48 bytes....";

static EVP_PKEY *public_only(EVP_PKEY *k)
{
	uint8_t raw[32];
	size_t n = sizeof(raw);

	EVP_PKEY_get_raw_public_key(k, raw, &n);
	return EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, raw, n);
}

static void test_envelope_round_trip(void)
{
	uint8_t *env = NULL, *pt = NULL;
	size_t env_len, pt_len;

	T_REQUIRE(envelope_wrap(node_pub, &ad, secret, sizeof(secret), &env, &env_len) == 0);
	T_EQ(env_len, sizeof(secret) + ENVELOPE_OVERHEAD);
	T_CHECK(memmem(env, env_len, secret, 16) == NULL);
	T_REQUIRE(envelope_unwrap(node_key, &ad, env, env_len, &pt, &pt_len) == 0);
	T_EQ(pt_len, sizeof(secret));
	T_CHECK(memcmp(pt, secret, sizeof(secret)) == 0);
	T_CHECK(CRYPTO_secure_allocated(pt));
	envelope_plain_free(pt, pt_len);
	free(env);
}

static void test_envelope_wrong_key(void)
{
	uint8_t *env = NULL, *pt = (uint8_t *)1;
	size_t env_len, pt_len;

	T_REQUIRE(envelope_wrap(node_pub, &ad, secret, sizeof(secret), &env, &env_len) == 0);
	T_EQ(envelope_unwrap(other_key, &ad, env, env_len, &pt, &pt_len), -EBADMSG);
	T_CHECK(pt == NULL);
	/* a public key alone cannot open it either */
	T_CHECK(envelope_unwrap(node_pub, &ad, env, env_len, &pt, &pt_len) != 0);
	free(env);
}

static void test_envelope_tampering(void)
{
	uint8_t *env = NULL, *pt;
	size_t env_len, pt_len, at[] = {6, 6 + 31, 38, 49, ENVELOPE_HDR_LEN, 0};
	int ret;

	T_REQUIRE(envelope_wrap(node_pub, &ad, secret, sizeof(secret), &env, &env_len) == 0);
	at[5] = env_len - 1;
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
		env[at[i]] ^= 0x01;
		ret = envelope_unwrap(node_key, &ad, env, env_len, &pt, &pt_len);
		T_EQ(ret, -EBADMSG);
		env[at[i]] ^= 0x01;
	}
	env[4] = 2;
	T_EQ(envelope_unwrap(node_key, &ad, env, env_len, &pt, &pt_len), -EPROTO);
	env[4] = ENVELOPE_VERSION;
	T_EQ(envelope_unwrap(node_key, &ad, env, env_len - 1, &pt, &pt_len), -EBADMSG);
	T_EQ(envelope_unwrap(node_key, &ad, env, ENVELOPE_OVERHEAD, &pt, &pt_len), -EBADMSG);
	T_REQUIRE(envelope_unwrap(node_key, &ad, env, env_len, &pt, &pt_len) == 0);
	envelope_plain_free(pt, pt_len);
	free(env);
}

static void test_envelope_ad_binding(void)
{
	const struct envelope_ad other[] = {
	    {"acmf", "0123abcd", CUSTODY_PURPOSE},
	    {"acme", "0123abce", CUSTODY_PURPOSE},
	    {"acme", "0123abcd", "something else"},
	    /* the length prefixes keep boundaries: "acme0" + "123abcd" is not the same */
	    {"acme0", "123abcd", CUSTODY_PURPOSE},
	};
	uint8_t *env = NULL, *pt;
	size_t env_len, pt_len;

	T_REQUIRE(envelope_wrap(node_pub, &ad, secret, sizeof(secret), &env, &env_len) == 0);
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		T_EQ(envelope_unwrap(node_key, &other[i], env, env_len, &pt, &pt_len), -EBADMSG);
	free(env);
}

static int write_pem(const char *name, EVP_PKEY *k, bool priv, char *path, size_t size)
{
	FILE *f;
	int ok;

	snprintf(path, size, "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f)
		return -errno;
	ok = priv ? PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) : PEM_write_PUBKEY(f, k);
	fclose(f);
	return ok ? 0 : -EIO;
}

static void test_ca_refuses_private_wrapping_key(void)
{
	char path[600];
	EVP_PKEY *k = NULL;
	int fds[2];

	T_REQUIRE(write_pem("wrap-priv.pem", node_key, true, path, sizeof(path)) == 0);
	T_EQ(envelope_pub_load(path, &k), -EPERM);
	T_CHECK(k == NULL);
	T_REQUIRE(write_pem("wrap-pub.pem", node_key, false, path, sizeof(path)) == 0);
	T_REQUIRE(envelope_pub_load(path, &k) == 0);
	T_CHECK(EVP_PKEY_eq(k, node_pub) == 1);
	EVP_PKEY_free(k);
	k = NULL;
	/* the node's side reads the private key from an fd */
	T_REQUIRE(pipe(fds) == 0);
	{
		BIO *b = BIO_new_fd(fds[1], BIO_CLOSE);

		PEM_write_bio_PrivateKey(b, node_key, NULL, NULL, 0, NULL, NULL);
		BIO_free(b);
	}
	T_REQUIRE(envelope_priv_read(fds[0], &k) == 0);
	close(fds[0]);
	T_CHECK(EVP_PKEY_eq(k, node_key) == 1);
	EVP_PKEY_free(k);
}

/* Signs the CSR as the tenant's own root would; ca false makes a wrong (leaf) certificate. */
static char *sign_csr(const char *csr_pem, bool ca, EVP_PKEY *other_pub)
{
	BIO *b = BIO_new_mem_buf(csr_pem, -1), *o = BIO_new(BIO_s_mem());
	X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
	X509 *x = X509_new();
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	BUF_MEM *bm;
	char *pem = NULL;

	if (!req || !x)
		goto out;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), (long)random());
	X509_set_subject_name(x, X509_REQ_get_subject_name(req));
	X509_set_issuer_name(x, X509_get_subject_name(root));
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
	X509_set_pubkey(x, other_pub ? other_pub : X509_REQ_get0_pubkey(req));
	X509V3_set_ctx(&ctx, root, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints,
	                          ca ? "critical,CA:TRUE,pathlen:0" : "critical,CA:FALSE");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	if (!X509_sign(x, root_key, EVP_sha256()))
		goto out;
	PEM_write_bio_X509(o, x);
	PEM_write_bio_X509(o, root);
	BIO_get_mem_ptr(o, &bm);
	pem = strndup(bm->data, bm->length);
out:
	BIO_free(b);
	BIO_free(o);
	X509_REQ_free(req);
	X509_free(x);
	return pem;
}

static int count_rows(const char *sql, const char *arg, int64_t *n)
{
	return store_query_int(ca_db_store(db), sql, STORE_ARGS(store_text(arg)), n);
}

/* csr + sign + import for tenant; key_id set. */
static int enable_tenant(const char *tenant, bool rotate, char key_id[CUSTODY_KEY_ID_LEN + 1])
{
	char *csr = NULL, *cert = NULL, msg[256];
	const char *why;
	size_t len;
	int ret;

	ret = custody_csr(db, node_pub, tenant, CA_KEY_P256, 0, rotate, key_id, &csr, &len);
	if (ret)
		return ret;
	cert = sign_csr(csr, true, NULL);
	ret = cert ? custody_import(db, tenant, (uint8_t *)cert, strlen(cert), time(NULL), msg,
	                            sizeof(msg), &why)
	           : -EIO;
	free(csr);
	free(cert);
	return ret;
}

static void test_csr_import_status(void)
{
	char key_id[CUSTODY_KEY_ID_LEN + 1], *csr = NULL, *cert = NULL, *st = NULL, msg[256];
	const char *why = "";
	size_t len;
	EVP_PKEY *stranger = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	int64_t n = -1;

	T_REQUIRE(custody_csr(db, node_pub, "acme", CA_KEY_P256, 0, true, key_id, &csr, &len) ==
	          -ENOENT);
	T_REQUIRE(custody_csr(db, NULL, "acme", CA_KEY_P256, 0, false, key_id, &csr, &len) ==
	          -ENOKEY);
	T_REQUIRE(custody_csr(db, node_pub, "acme", CA_KEY_P256, 0, false, key_id, &csr, &len) ==
	          0);
	T_CHECK(strstr(csr, "BEGIN CERTIFICATE REQUEST") != NULL);
	T_REQUIRE(custody_status(db, "acme", &st) == 0);
	T_CHECK(strstr(st, key_id) && strstr(st, "pending-csr"));
	free(st);

	/* a certificate for another key, and a non-CA one, are refused */
	cert = sign_csr(csr, true, stranger);
	T_REQUIRE(cert);
	T_EQ(custody_import(db, "acme", (uint8_t *)cert, strlen(cert), time(NULL), msg, sizeof(msg),
	                    &why),
	     -EINVAL);
	T_CHECK(strstr(why, "public key") != NULL);
	free(cert);
	cert = sign_csr(csr, false, NULL);
	T_EQ(custody_import(db, "acme", (uint8_t *)cert, strlen(cert), time(NULL), msg, sizeof(msg),
	                    &why),
	     -EINVAL);
	T_CHECK(strstr(why, "CA:TRUE") != NULL);
	free(cert);
	/* not yet valid */
	cert = sign_csr(csr, true, NULL);
	T_EQ(custody_import(db, "acme", (uint8_t *)cert, strlen(cert), time(NULL) - 86400, msg,
	                    sizeof(msg), &why),
	     -EINVAL);
	T_REQUIRE(custody_import(db, "acme", (uint8_t *)cert, strlen(cert), time(NULL), msg,
	                         sizeof(msg), &why) == 0);
	T_CHECK(strstr(msg, "active") != NULL);
	T_REQUIRE(custody_status(db, "acme", &st) == 0);
	T_CHECK(strstr(st, key_id) && strstr(st, " active "));
	free(st);
	T_REQUIRE(count_rows("SELECT count(*) FROM insp_key WHERE tenant = $1 AND state = 'active'",
	                     "acme", &n) == 0);
	T_EQ(n, 1);
	/* csr again on an active tenant must go through rotate */
	free(csr);
	csr = NULL;
	T_EQ(custody_csr(db, node_pub, "acme", CA_KEY_P256, 0, false, key_id, &csr, &len), -EEXIST);
	free(cert);
	EVP_PKEY_free(stranger);
}

static void test_handout_policy(void)
{
	struct ident pub_node = {.tenant = "ops", .role = MT_ROLE_INSPECTOR, .id = "edge-1"};
	struct ident priv_node = {.tenant = "ops", .role = MT_ROLE_INSPECTOR, .id = "bank-1"};
	struct ident broker = {.tenant = "ops", .role = MT_ROLE_BROKER, .id = "edge-1"};
	struct custody_key k = {0};
	struct envelope_ad kad = {"acme", NULL, CUSTODY_PURPOSE};
	char key_id[CUSTODY_KEY_ID_LEN + 1];
	const char *why;
	uint8_t *pt = NULL;
	size_t pt_len;
	int64_t n = -1;
	const unsigned char *p;
	EVP_PKEY *priv = NULL;
	X509 *cert = NULL;
	BIO *b;

	T_REQUIRE(enable_tenant("bank", false, key_id) == 0);
	T_REQUIRE(custody_tenant_private(db, "bank", true) == 0);
	T_EQ(custody_node_mark(db, "ops/edge-1", "private", &why), -EINVAL);
	T_EQ(custody_node_mark(db, "edge-1", "public", &why), -EINVAL);
	T_REQUIRE(custody_node_mark(db, "ops/edge-1", "public", &why) == 0);
	T_REQUIRE(custody_node_mark(db, "ops/bank-1", "private:bank", &why) == 0);

	/* unmarked, and not an inspector */
	pub_node.id[0] = 'x';
	T_EQ(custody_handout(db, &pub_node, "acme", &k, &why), -EPERM);
	pub_node.id[0] = 'e';
	T_EQ(custody_handout(db, &broker, "acme", &k, &why), -EPERM);

	/* public node, public tenant: granted, and the node can open it */
	T_REQUIRE(custody_handout(db, &pub_node, "acme", &k, &why) == 0);
	kad.key_id = k.key_id;
	T_REQUIRE(envelope_unwrap(node_key, &kad, k.wrapped, k.wrapped_len, &pt, &pt_len) == 0);
	p = pt;
	priv = d2i_AutoPrivateKey(NULL, &p, (long)pt_len);
	b = BIO_new_mem_buf(k.cert_pem, -1);
	cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	T_CHECK(priv && cert && X509_check_private_key(cert, priv) == 1);
	T_CHECK(strstr(k.chain_pem, "BEGIN CERTIFICATE") != NULL);
	envelope_plain_free(pt, pt_len);
	EVP_PKEY_free(priv);
	X509_free(cert);
	custody_key_free(&k);

	/* public node, private-only tenant: refused and audited */
	T_EQ(custody_handout(db, &pub_node, "bank", &k, &why), -EPERM);
	T_CHECK(strstr(why, "private-only") != NULL);
	T_CHECK(k.wrapped == NULL);
	T_REQUIRE(count_rows("SELECT count(*) FROM insp_handout WHERE tenant = $1 AND granted = 0"
	                     " AND node = 'ops/edge-1'",
	                     "bank", &n) == 0);
	T_EQ(n, 1);
	/* the private node of that tenant: granted; of another tenant: refused */
	T_REQUIRE(custody_handout(db, &priv_node, "bank", &k, &why) == 0);
	T_STREQ(k.key_id, key_id);
	custody_key_free(&k);
	T_EQ(custody_handout(db, &priv_node, "acme", &k, &why), -EPERM);
	T_REQUIRE(count_rows("SELECT count(*) FROM insp_handout WHERE node <> $1", "", &n) == 0);
	T_EQ(n, 6);
}

static bool file_has(const char *path, const void *needle, size_t len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = malloc(64 << 20);
	size_t n;
	bool found;

	if (!f || !buf) {
		if (f)
			fclose(f);
		free(buf);
		return false;
	}
	n = fread(buf, 1, 64 << 20, f);
	fclose(f);
	found = memmem(buf, n, needle, len) != NULL;
	free(buf);
	return found;
}

static void test_rotate_purges_backups(void)
{
	struct ident node = {.tenant = "ops", .role = MT_ROLE_INSPECTOR, .id = "edge-1"};
	struct custody_key old = {0}, k = {0};
	struct envelope_ad kad = {"acme", NULL, CUSTODY_PURPOSE};
	char b1[600], b2[600], key_id[CUSTODY_KEY_ID_LEN + 1], *csr = NULL, *cert = NULL, msg[256];
	const char *why, *paths[3] = {b1, b2, db_path};
	uint8_t *pt = NULL;
	size_t pt_len, len;
	int64_t n = -1;

	T_REQUIRE(custody_handout(db, &node, "acme", &old, &why) == 0);
	kad.key_id = old.key_id;
	T_REQUIRE(envelope_unwrap(node_key, &kad, old.wrapped, old.wrapped_len, &pt, &pt_len) == 0);
	snprintf(b1, sizeof(b1), "%s/backup-1.db", dir);
	snprintf(b2, sizeof(b2), "%s/backup-2.db", dir);
	T_REQUIRE(custody_backup(db, b1) == 0);
	T_REQUIRE(custody_backup(db, b2) == 0);
	T_EQ(custody_backup(db, b2), -EEXIST);
	T_CHECK(file_has(b1, old.wrapped, old.wrapped_len));
	T_CHECK(file_has(b2, old.key_id, CUSTODY_KEY_ID_LEN));

	T_REQUIRE(custody_csr(db, node_pub, "acme", CA_KEY_P256, 0, true, key_id, &csr, &len) == 0);
	/* until the new certificate is in, the old key still serves */
	T_REQUIRE(custody_handout(db, &node, "acme", &k, &why) == 0);
	T_STREQ(k.key_id, old.key_id);
	custody_key_free(&k);
	cert = sign_csr(csr, true, NULL);
	T_REQUIRE(custody_import(db, "acme", (uint8_t *)cert, strlen(cert), time(NULL), msg,
	                         sizeof(msg), &why) == 0);
	T_CHECK(strstr(msg, old.key_id) && strstr(msg, "2 backup(s)"));
	T_REQUIRE(count_rows("SELECT count(*) FROM insp_key WHERE key_id = $1", old.key_id, &n) ==
	          0);
	T_EQ(n, 0);
	for (size_t i = 0; i < 3; i++) {
		char wal[700];

		T_CHECK(!file_has(paths[i], old.wrapped, old.wrapped_len));
		T_CHECK(!file_has(paths[i], old.wrapped + ENVELOPE_HDR_LEN, 32));
		T_CHECK(!file_has(paths[i], pt, 32));
		snprintf(wal, sizeof(wal), "%s-wal", paths[i]);
		T_CHECK(!file_has(wal, old.wrapped + ENVELOPE_HDR_LEN, 32));
		if (t_cur_failed)
			printf("# in %s\n", paths[i]);
	}
	T_REQUIRE(custody_handout(db, &node, "acme", &k, &why) == 0);
	T_STREQ(k.key_id, key_id);
	custody_key_free(&k);
	envelope_plain_free(pt, pt_len);
	custody_key_free(&old);
	free(csr);
	free(cert);
}

/* A backup missed by one rotation (moved away) loses the key at the next one. */
static void test_missed_backup_healed(void)
{
	char b3[600], away[600], k1[CUSTODY_KEY_ID_LEN + 1], k2[CUSTODY_KEY_ID_LEN + 1];
	struct custody_key old = {0};
	struct ident node = {.tenant = "ops", .role = MT_ROLE_INSPECTOR, .id = "edge-1"};
	const char *why;

	T_REQUIRE(custody_handout(db, &node, "acme", &old, &why) == 0);
	snprintf(b3, sizeof(b3), "%s/backup-3.db", dir);
	snprintf(away, sizeof(away), "%s/unmounted.db", dir);
	T_REQUIRE(custody_backup(db, b3) == 0);
	T_REQUIRE(rename(b3, away) == 0);
	T_REQUIRE(enable_tenant("acme", true, k1) == 0);
	T_REQUIRE(rename(away, b3) == 0);
	T_CHECK(file_has(b3, old.wrapped, old.wrapped_len));
	T_REQUIRE(enable_tenant("acme", true, k2) == 0);
	T_CHECK(!file_has(b3, old.wrapped, old.wrapped_len));
	custody_key_free(&old);
}

/* Rotation revoked every older intermediate; revoke takes the current one too, and its key. */
static void test_revoke_lists_serials(void)
{
	struct ident node = {.tenant = "ops", .role = MT_ROLE_INSPECTOR, .id = "edge-1"};
	struct custody_key k = {0};
	STACK_OF(X509) *certs = NULL;
	char serial[41], msg[256], **serials = NULL;
	const char *why = "";
	time_t *when = NULL;
	size_t n = 0, i;
	bool listed = false;
	int64_t rows = -1;

	T_REQUIRE(custody_handout(db, &node, "acme", &k, &why) == 0);
	T_REQUIRE(pki_pem_read_certs((uint8_t *)k.cert_pem, strlen(k.cert_pem), &certs) == 0);
	T_REQUIRE(pki_serial_hex(sk_X509_value(certs, 0), serial) == 0);
	/* three rotations before: three older intermediates, the current one not yet */
	T_REQUIRE(ca_db_revoked_list(db, "acme", &serials, &when, &n) == 0);
	T_EQ(n, 3);
	for (i = 0; i < n; i++)
		listed |= strcmp(serials[i], serial) == 0;
	T_CHECK(!listed);
	ca_db_strv_free(serials, n);
	free(when);

	T_REQUIRE(custody_revoke(db, "acme", time(NULL), msg, sizeof(msg), &why) == 0);
	T_CHECK(strstr(msg, serial) && strstr(msg, k.key_id));
	T_REQUIRE(ca_db_revoked_list(db, "acme", &serials, &when, &n) == 0);
	T_EQ(n, 4);
	for (i = 0, listed = false; i < n; i++)
		listed |= strcmp(serials[i], serial) == 0 && when[i] > 0;
	T_CHECK(listed);
	ca_db_strv_free(serials, n);
	free(when);
	T_REQUIRE(count_rows("SELECT count(*) FROM insp_key WHERE tenant = $1", "acme", &rows) ==
	          0);
	T_EQ(rows, 0);
	custody_key_free(&k);
	T_EQ(custody_handout(db, &node, "acme", &k, &why), -ENOENT);
	T_EQ(custody_revoke(db, "acme", time(NULL), msg, sizeof(msg), &why), -ENOENT);
	T_CHECK(strstr(why, "no inspection intermediate") != NULL);
	T_EQ(custody_revoke(db, "bad tenant!", time(NULL), msg, sizeof(msg), &why), -EINVAL);
	sk_X509_pop_free(certs, X509_free);
	custody_key_free(&k);
}

static int setup(void)
{
	X509_NAME *name;

	if (CRYPTO_secure_malloc_init(1 << 16, 16) != 1)
		return -ENOMEM;
	if (!mkdtemp(dir))
		return -errno;
	snprintf(db_path, sizeof(db_path), "%s/ca.db", dir);
	node_key = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	other_key = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	node_pub = node_key ? public_only(node_key) : NULL;
	root_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	root = X509_new();
	if (!node_key || !other_key || !node_pub || !root_key || !root)
		return -ENOMEM;
	name = X509_get_subject_name(root);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"test root", -1,
	                           -1, 0);
	X509_set_issuer_name(root, name);
	X509_set_version(root, 2);
	X509_gmtime_adj(X509_getm_notBefore(root), -3600);
	X509_gmtime_adj(X509_getm_notAfter(root), 86400L * 3650);
	X509_set_pubkey(root, root_key);
	if (!X509_sign(root, root_key, EVP_sha256()))
		return -EIO;
	return ca_db_open(db_path, &db);
}

int main(void)
{
	char cmd[600];

	log_init("test_custody", LOG_LVL_ERR);
	if (setup() != 0) {
		printf("Bail out! setup\n");
		return 1;
	}
	T_RUN(test_envelope_round_trip);
	T_RUN(test_envelope_wrong_key);
	T_RUN(test_envelope_tampering);
	T_RUN(test_envelope_ad_binding);
	T_RUN(test_ca_refuses_private_wrapping_key);
	T_RUN(test_csr_import_status);
	T_RUN(test_handout_policy);
	T_RUN(test_rotate_purges_backups);
	T_RUN(test_missed_backup_healed);
	T_RUN(test_revoke_lists_serials);
	ca_db_close(db);
	EVP_PKEY_free(node_key);
	EVP_PKEY_free(other_key);
	EVP_PKEY_free(node_pub);
	EVP_PKEY_free(root_key);
	X509_free(root);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", dir);
	return t_done();
}
