/*
 * Inspection key custody: each tenant's inspection CA key is made here, wrapped at once to
 * the inspection nodes' public key (lib/envelope.h) and handed only to nodes allowed to
 * serve the tenant. Rotation deletes the old key from the store and from its backups and
 * revokes the old intermediate; revocation revokes and deletes alone. A revoked
 * intermediate is listed in the tenant's CRL (which its nodes watch) and, when mtun-ca
 * holds the root that signed it, in the root's authority revocation list.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "log.h"
#include "store.h"

#define CUSTODY_LIST_MAX (1024 * 1024)

void custody_key_free(struct custody_key *k)
{
	if (!k)
		return;
	free(k->wrapped);
	free(k->cert_pem);
	free(k->chain_pem);
	memset(k, 0, sizeof(*k));
}

static int custody_make_csr(const char *tenant, EVP_PKEY *key, X509_REQ **out)
{
	char cn[128];
	X509_NAME *name = X509_NAME_new();
	X509_REQ *req = X509_REQ_new();
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	X509_EXTENSION *ext = NULL;
	int ret = -EIO;

	snprintf(cn, sizeof(cn), "mtun %s inspection CA", tenant);
	if (!name || !req || !exts ||
	    !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)tenant, -1,
	                                -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_UTF8,
	                                (const unsigned char *)"mtun inspection", -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
	                                -1, 0))
		goto out;
	ext = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
	if (!ext || !sk_X509_EXTENSION_push(exts, ext))
		goto out;
	ext = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "critical,keyCertSign,cRLSign");
	if (!ext || !sk_X509_EXTENSION_push(exts, ext))
		goto out;
	ext = NULL;
	if (!X509_REQ_set_subject_name(req, name) || !X509_REQ_add_extensions(req, exts) ||
	    !X509_REQ_set_pubkey(req, key) || !X509_REQ_sign(req, key, EVP_sha256()))
		goto out;
	*out = req;
	req = NULL;
	ret = 0;
out:
	X509_EXTENSION_free(ext);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_NAME_free(name);
	X509_REQ_free(req);
	ERR_clear_error();
	return ret;
}

/* The private key as DER in the secure heap, wrapped, then the DER zeroed. */
static int custody_wrap_key(EVP_PKEY *wrap_pub, EVP_PKEY *key, const char *tenant,
                            const char *key_id, uint8_t **wrapped, size_t *wrapped_len)
{
	struct envelope_ad ad = {tenant, key_id, CUSTODY_PURPOSE};
	uint8_t *der = NULL, *p;
	int len, ret;

	len = i2d_PrivateKey(key, NULL);
	if (len <= 0 || len > ENVELOPE_PLAIN_MAX)
		return -EIO;
	der = OPENSSL_secure_malloc((size_t)len);
	if (!der)
		return -ENOMEM;
	p = der;
	if (i2d_PrivateKey(key, &p) != len) {
		ret = -EIO;
		goto out;
	}
	ret = envelope_wrap(wrap_pub, &ad, der, (size_t)len, wrapped, wrapped_len);
out:
	OPENSSL_secure_clear_free(der, (size_t)len);
	return ret;
}

static int custody_count(struct ca_db *db, const char *tenant, const char *state, int64_t *n)
{
	return store_query_int(ca_db_store(db),
	                       "SELECT count(*) FROM insp_key WHERE tenant = $1 AND state = $2",
	                       STORE_ARGS(store_text(tenant), store_text(state)), n);
}

int custody_csr(struct ca_db *db, EVP_PKEY *wrap_pub, const char *tenant, enum ca_key_alg alg,
                int64_t expires, bool rotate, char key_id[CUSTODY_KEY_ID_LEN + 1], char **csr_pem,
                size_t *csr_len)
{
	uint8_t rnd[CUSTODY_KEY_ID_LEN / 2], *wrapped = NULL, *pub = NULL, *pp;
	size_t wrapped_len = 0;
	EVP_PKEY *key = NULL;
	X509_REQ *req = NULL;
	BIO *bio = NULL;
	BUF_MEM *bm;
	char *pem = NULL;
	int64_t active = 0;
	int ret, publen;

	*csr_pem = NULL;
	*csr_len = 0;
	if (!wrap_pub)
		return -ENOKEY;
	if (!ident_valid_tenant(tenant))
		return -EINVAL;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return -EIO;
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(key_id + 2 * i, 3, "%02x", rnd[i]);
	key = pki_key_new(alg);
	if (!key)
		return -EIO;
	ret = custody_wrap_key(wrap_pub, key, tenant, key_id, &wrapped, &wrapped_len);
	if (ret)
		goto out;
	ret = custody_make_csr(tenant, key, &req);
	if (ret)
		goto out;
	ret = -EIO;
	publen = i2d_PUBKEY(key, NULL);
	if (publen <= 0 || !(pub = malloc((size_t)publen)))
		goto out;
	pp = pub;
	if (i2d_PUBKEY(key, &pp) != publen)
		goto out;
	/* The key is wrapped: drop the only clear copy before touching the store. */
	EVP_PKEY_free(key);
	key = NULL;
	bio = BIO_new(BIO_s_mem());
	if (!bio || !PEM_write_bio_X509_REQ(bio, req))
		goto out;
	BIO_get_mem_ptr(bio, &bm);
	pem = malloc(bm->length + 1);
	if (!pem) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(pem, bm->data, bm->length);
	pem[bm->length] = '\0';

	ret = ca_db_begin(db);
	if (ret)
		goto out;
	ret = custody_count(db, tenant, "active", &active);
	if (ret)
		goto rollback;
	if (!rotate && active) {
		log_warnx("inspection: %s has an active key; use rotate", tenant);
		ret = -EEXIST;
		goto rollback;
	}
	if (rotate && !active) {
		log_warnx("inspection: %s has no active key to rotate", tenant);
		ret = -ENOENT;
		goto rollback;
	}
	/* A newer CSR replaces an unsigned one. */
	ret = store_exec(ca_db_store(db), "DELETE FROM insp_key WHERE tenant = $1 AND state = $2",
	                 STORE_ARGS(store_text(tenant), store_text("pending-csr")));
	if (ret < 0)
		goto rollback;
	ret =
	    store_exec(ca_db_store(db),
	               "INSERT INTO insp_key (key_id, tenant, state, wrapped, pub_der, csr_pem,"
	               " created, expires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
	               STORE_ARGS(store_text(key_id), store_text(tenant), store_text("pending-csr"),
	                          store_blob(wrapped, wrapped_len), store_blob(pub, (size_t)publen),
	                          store_text(pem), store_int(time(NULL)), store_int(expires)));
	if (ret < 0)
		goto rollback;
	ca_db_audit(db, rotate ? "inspection.rotate" : "inspection.csr", tenant, key_id);
	ret = ca_db_commit(db);
	if (ret)
		goto out;
	log_info("inspection: %s: new key %s wrapped, CSR made", tenant, key_id);
	*csr_pem = pem;
	*csr_len = bm->length;
	pem = NULL;
	goto out;
rollback:
	ca_db_rollback(db);
out:
	EVP_PKEY_free(key);
	X509_REQ_free(req);
	BIO_free(bio);
	free(pem);
	free(pub);
	free(wrapped);
	ERR_clear_error();
	return ret;
}

struct custody_pending {
	char key_id[CUSTODY_KEY_ID_LEN + 1];
	uint8_t *pub;
	size_t pub_len;
};

static int custody_pending_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_pending *p = arg;

	if (n != 2 || c[0].type != STORE_T_TEXT || c[1].type != STORE_T_BLOB ||
	    c[0].len != CUSTODY_KEY_ID_LEN || c[1].len == 0)
		return -EINVAL;
	memcpy(p->key_id, c[0].p, CUSTODY_KEY_ID_LEN);
	p->key_id[CUSTODY_KEY_ID_LEN] = '\0';
	p->pub = malloc(c[1].len);
	if (!p->pub)
		return -ENOMEM;
	memcpy(p->pub, c[1].p, c[1].len);
	p->pub_len = c[1].len;
	return 1;
}

/* Checks the certificate before it may become the tenant's inspection CA. */
static int custody_check_cert(X509 *x, STACK_OF(X509) *all, const struct custody_pending *p,
                              time_t now, const char **why)
{
	uint8_t *der = NULL;
	int len, ret = -EINVAL;
	uint32_t ku;

	len = i2d_PUBKEY(X509_get0_pubkey(x), &der);
	if (len <= 0 || (size_t)len != p->pub_len || CRYPTO_memcmp(der, p->pub, p->pub_len) != 0) {
		*why = "the certificate's public key is not the pending key's";
		goto out;
	}
	if (X509_check_ca(x) != 1 || X509_get_pathlen(x) != 0) {
		*why = "the certificate must be CA:TRUE with pathlen 0";
		goto out;
	}
	ku = X509_get_key_usage(x);
	if (ku != UINT32_MAX && !(ku & KU_KEY_CERT_SIGN)) {
		*why = "the certificate's key usage lacks keyCertSign";
		goto out;
	}
	if (X509_cmp_time(X509_get0_notBefore(x), &now) > 0 ||
	    X509_cmp_time(X509_get0_notAfter(x), &now) < 0) {
		*why = "the certificate is not valid now";
		goto out;
	}
	if (sk_X509_num(all) > 1 && X509_verify(x, X509_get0_pubkey(sk_X509_value(all, 1))) != 1) {
		*why = "the certificate is not signed by the next one of the chain";
		goto out;
	}
	ret = 0;
out:
	OPENSSL_free(der);
	ERR_clear_error();
	return ret;
}

static int custody_ckpt_row(void *arg, const struct store_val *c, size_t n)
{
	int *busy = arg;

	*busy = n >= 1 && c[0].type == STORE_T_INT && c[0].i != 0;
	return 1;
}

/*
 * secure_delete overwrites the database's pages, but with WAL the old frames stay in the
 * -wal file until a checkpoint; TRUNCATE copies them back and empties it.
 */
static int custody_checkpoint(struct store *st, const char *what)
{
	int busy = 1, ret;

	ret = store_query(st, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, 0, custody_ckpt_row, &busy);
	if (!ret && busy)
		ret = -EBUSY;
	if (ret)
		log_warnx("store: %s: the write-ahead log could not be emptied (%s)", what,
		          strerror(-ret));
	return ret;
}

struct custody_ids {
	char (*id)[CUSTODY_KEY_ID_LEN + 1];
	size_t n;
};

static int custody_id_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_ids *ids = arg;
	void *p;

	if (n != 1 || c[0].type != STORE_T_TEXT || c[0].len != CUSTODY_KEY_ID_LEN)
		return -EINVAL;
	if (ids->n >= 64)
		return -E2BIG;
	p = realloc(ids->id, (ids->n + 1) * sizeof(*ids->id));
	if (!p)
		return -ENOMEM;
	ids->id = p;
	memcpy(ids->id[ids->n], c[0].p, CUSTODY_KEY_ID_LEN);
	ids->id[ids->n][CUSTODY_KEY_ID_LEN] = '\0';
	ids->n++;
	return 0;
}

/* Inspection certificates of a tenant, read to be revoked. */
struct custody_certs {
	char id[64][CUSTODY_KEY_ID_LEN + 1];
	char serial[64][41];
	int64_t not_before[64], not_after[64];
	char *pem[64];
	size_t n;
};

static void custody_certs_free(struct custody_certs *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->pem[i]);
	c->n = 0;
}

static int custody_cert_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_certs *cs = arg;
	STACK_OF(X509) *all = NULL;
	struct tm nb, na;
	size_t i = cs->n;
	int ret;

	if (n != 2 || c[0].type != STORE_T_TEXT || c[0].len != CUSTODY_KEY_ID_LEN ||
	    c[1].type != STORE_T_TEXT)
		return -EINVAL;
	if (i >= 64)
		return -E2BIG;
	ret = pki_pem_read_certs((const uint8_t *)c[1].p, c[1].len, &all);
	if (ret)
		return ret;
	ret = -EINVAL;
	if (pki_serial_hex(sk_X509_value(all, 0), cs->serial[i]) ||
	    ASN1_TIME_to_tm(X509_get0_notBefore(sk_X509_value(all, 0)), &nb) != 1 ||
	    ASN1_TIME_to_tm(X509_get0_notAfter(sk_X509_value(all, 0)), &na) != 1)
		goto out;
	ret = -ENOMEM;
	cs->pem[i] = strndup(c[1].p, c[1].len);
	if (!cs->pem[i])
		goto out;
	memcpy(cs->id[i], c[0].p, CUSTODY_KEY_ID_LEN);
	cs->id[i][CUSTODY_KEY_ID_LEN] = '\0';
	cs->not_before[i] = timegm(&nb);
	cs->not_after[i] = timegm(&na);
	cs->n++;
	ret = 0;
out:
	sk_X509_pop_free(all, X509_free);
	return ret;
}

/*
 * Records the certificates of tenant's inspection keys other than keep (all when "") as
 * revoked at now, in the certificate table the tenant's CRL is built from. Inside the
 * caller's transaction; the certificates found are left in cs.
 */
static int custody_revoke_certs(struct ca_db *db, const char *tenant, const char *keep, int64_t now,
                                struct custody_certs *cs)
{
	char detail[128];
	int ret;

	ret = store_query(ca_db_store(db),
	                  "SELECT key_id, cert_pem FROM insp_key WHERE tenant = $1 AND key_id <> $2"
	                  " AND cert_pem IS NOT NULL AND cert_pem <> '' ORDER BY created",
	                  STORE_ARGS(store_text(tenant), store_text(keep)), custody_cert_row, cs);
	for (size_t i = 0; !ret && i < cs->n; i++) {
		ret = store_exec(
		    ca_db_store(db),
		    "INSERT OR IGNORE INTO cert (serial, tenant, role, id, user_name,"
		    " device, groups, not_before, not_after, pem, revoked)"
		    " VALUES ($1, $2, 'inspection-ca', $3, '', '', '', $4, $5, $6, $7)",
		    STORE_ARGS(store_text(cs->serial[i]), store_text(tenant), store_text(cs->id[i]),
		               store_int(cs->not_before[i]), store_int(cs->not_after[i]),
		               store_text(cs->pem[i]), store_int(now)));
		if (ret < 0)
			break;
		ret = store_exec(
		    ca_db_store(db),
		    "UPDATE cert SET revoked = $1 WHERE serial = $2 AND tenant = $3"
		    " AND revoked = 0",
		    STORE_ARGS(store_int(now), store_text(cs->serial[i]), store_text(tenant)));
		if (ret < 0)
			break;
		ret = 0;
		snprintf(detail, sizeof(detail), "key=%s serial=%s", cs->id[i], cs->serial[i]);
		ca_db_audit(db, "inspection.revoke", tenant, detail);
	}
	return ret < 0 ? ret : 0;
}

/* Whether the tenant's root, held by mtun-ca, signed the certificate: its ARL lists it. */
static bool custody_root_lists(struct ca_db *db, const char *tenant, const char *pem)
{
	STACK_OF(X509) *roots = NULL, *c = NULL;
	uint8_t *rp = NULL;
	size_t rl;
	bool ok = false;

	if (ca_db_tenant_root(db, tenant, &rp, &rl, NULL, NULL) == 0 &&
	    pki_pem_read_certs(rp, rl, &roots) == 0 &&
	    pki_pem_read_certs((const uint8_t *)pem, strlen(pem), &c) == 0)
		ok = ca_root_issued(sk_X509_value(roots, 0), sk_X509_value(c, 0));
	sk_X509_pop_free(roots, X509_free);
	sk_X509_pop_free(c, X509_free);
	free(rp);
	return ok;
}

/* Where a verifier learns of the revocation, for the operator. */
static void custody_where(struct ca_db *db, const char *tenant, const struct custody_certs *cs,
                          char *out, size_t size)
{
	if (cs->n && custody_root_lists(db, tenant, cs->pem[0]))
		snprintf(out, size,
		         "the tenant's authority CRL, signed by its root, lists it (mtunctl crl "
		         "--authority)");
	else if (cs->n)
		snprintf(out, size,
		         "its root is not held by mtun-ca: the root's owner must list serial %s in "
		         "the root's CRL (mtun hands the key out no more and its nodes drop it)",
		         cs->serial[0]);
	else
		out[0] = '\0';
}

struct custody_csr_row {
	char *pem;
	int64_t expires;
};

static int custody_csr_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_csr_row *r = arg;

	if (n != 2 || c[0].type != STORE_T_TEXT || c[1].type != STORE_T_INT)
		return -EINVAL;
	r->pem = strndup(c[0].p, c[0].len);
	r->expires = c[1].i;
	return r->pem ? 1 : -ENOMEM;
}

int custody_pending_csr(struct ca_db *db, const char *tenant, X509_REQ **req, int64_t *expires)
{
	struct custody_csr_row r = {0};
	BIO *bio = NULL;
	int ret;

	*req = NULL;
	*expires = 0;
	ret = store_query(ca_db_store(db),
	                  "SELECT csr_pem, expires FROM insp_key WHERE tenant = $1"
	                  " AND state = 'pending-csr'",
	                  STORE_ARGS(store_text(tenant)), custody_csr_row, &r);
	if (!ret && !r.pem)
		ret = -ENOENT;
	if (ret)
		goto out;
	bio = BIO_new_mem_buf(r.pem, -1);
	*req = bio ? PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL) : NULL;
	ret = *req ? 0 : -EBADMSG;
	*expires = r.expires;
out:
	BIO_free(bio);
	free(r.pem);
	ERR_clear_error();
	return ret;
}

int custody_import(struct ca_db *db, const char *tenant, const uint8_t *pem, size_t len, time_t now,
                   char *msg, size_t msg_size, const char **why)
{
	struct custody_pending p = {0};
	struct custody_certs revoked = {0};
	struct custody_ids old = {0};
	STACK_OF(X509) *all = NULL;
	char *cert_pem = NULL, *chain_pem = NULL, where[300];
	size_t cl, hl;
	struct tm tm;
	int ret, total = 0;

	*why = "";
	msg[0] = '\0';
	if (!ident_valid_tenant(tenant))
		return -EINVAL;
	ret = pki_pem_read_certs(pem, len, &all);
	if (ret) {
		*why = "no certificate in the PEM";
		return ret;
	}
	ret = store_query(ca_db_store(db),
	                  "SELECT key_id, pub_der FROM insp_key WHERE tenant = $1 AND state = $2",
	                  STORE_ARGS(store_text(tenant), store_text("pending-csr")),
	                  custody_pending_row, &p);
	if (ret)
		goto out;
	if (!p.pub) {
		*why = "no pending inspection key for this tenant (run csr or rotate)";
		ret = -ENOENT;
		goto out;
	}
	ret = custody_check_cert(sk_X509_value(all, 0), all, &p, now, why);
	if (ret)
		goto out;
	ret = pki_pem_of_cert(sk_X509_value(all, 0), &cert_pem, &cl);
	if (ret)
		goto out;
	if (ASN1_TIME_to_tm(X509_get0_notAfter(sk_X509_value(all, 0)), &tm) != 1) {
		*why = "the certificate's notAfter is unreadable";
		ret = -EINVAL;
		goto out;
	}
	if (sk_X509_num(all) > 1) {
		STACK_OF(X509) *rest = sk_X509_dup(all);

		if (!rest) {
			ret = -ENOMEM;
			goto out;
		}
		(void)sk_X509_shift(rest);
		(void)sk_X509_shift(rest);
		ret = pki_pem_of_chain(sk_X509_value(all, 1), rest, &chain_pem, &hl);
		sk_X509_free(rest);
		if (ret)
			goto out;
	}
	ret = ca_db_begin(db);
	if (ret)
		goto out;
	ret = store_query(
	    ca_db_store(db), "SELECT key_id FROM insp_key WHERE tenant = $1 AND key_id <> $2",
	    STORE_ARGS(store_text(tenant), store_text(p.key_id)), custody_id_row, &old);
	if (!ret)
		ret = custody_revoke_certs(db, tenant, p.key_id, now, &revoked);
	if (ret)
		goto rollback;
	ret = store_exec(ca_db_store(db),
	                 "UPDATE insp_key SET state = 'active', cert_pem = $1, chain_pem = $2,"
	                 " expires = $3 WHERE key_id = $4",
	                 STORE_ARGS(store_text(cert_pem), store_text(chain_pem ? chain_pem : ""),
	                            store_int(timegm(&tm)), store_text(p.key_id)));
	if (ret < 0)
		goto rollback;
	/* secure_delete is on: the old wrapped key's pages are overwritten, not freed. */
	ret = store_exec(ca_db_store(db), "DELETE FROM insp_key WHERE tenant = $1 AND key_id <> $2",
	                 STORE_ARGS(store_text(tenant), store_text(p.key_id)));
	if (ret < 0)
		goto rollback;
	ca_db_audit(db, "inspection.import", tenant, p.key_id);
	for (size_t i = 0; i < old.n; i++)
		ca_db_audit(db, "inspection.delete", tenant, old.id[i]);
	ret = ca_db_commit(db);
	if (ret)
		goto out;
	if (old.n && custody_checkpoint(ca_db_store(db), "the CA's store")) {
		*why = "the old key is deleted but may linger in the store's write-ahead log";
		ret = -EBUSY;
		goto out;
	}
	if (old.n) {
		ret = custody_purge_backups(db, &total);
		if (ret) {
			*why = "the old key is deleted from the store but a backup could not be "
			       "rewritten (the next rotation retries)";
			goto out;
		}
	}
	custody_where(db, tenant, &revoked, where, sizeof(where));
	if (old.n)
		snprintf(msg, msg_size,
		         "key %s active; old key %s%s deleted from the store and from %d "
		         "backup(s)%s%s%s%s",
		         p.key_id, old.id[0], old.n > 1 ? " (and others)" : "", total,
		         revoked.n ? "; old intermediate " : "", revoked.n ? revoked.serial[0] : "",
		         revoked.n ? " revoked: " : "", where);
	else
		snprintf(msg, msg_size, "key %s active", p.key_id);
	log_info("inspection: %s: %s", tenant, msg);
	goto out;
rollback:
	ca_db_rollback(db);
out:
	custody_certs_free(&revoked);
	free(p.pub);
	free(old.id);
	free(cert_pem);
	free(chain_pem);
	sk_X509_pop_free(all, X509_free);
	return ret;
}

int custody_revoke(struct ca_db *db, const char *tenant, time_t now, char *msg, size_t msg_size,
                   const char **why)
{
	struct custody_certs cs = {0};
	char where[300];
	int ret, total = 0;
	size_t i;

	*why = "";
	msg[0] = '\0';
	if (!ident_valid_tenant(tenant))
		return -EINVAL;
	ret = ca_db_begin(db);
	if (ret)
		return ret;
	ret = custody_revoke_certs(db, tenant, "", now, &cs);
	if (!ret && cs.n == 0) {
		*why = "the tenant has no inspection intermediate to revoke";
		ret = -ENOENT;
	}
	/* a revoked intermediate's key is of no more use: deleted as rotation deletes */
	for (i = 0; !ret && i < cs.n; i++) {
		ret = store_exec(ca_db_store(db), "DELETE FROM insp_key WHERE key_id = $1",
		                 STORE_ARGS(store_text(cs.id[i])));
		ret = ret < 0 ? ret : 0;
		if (!ret)
			ca_db_audit(db, "inspection.delete", tenant, cs.id[i]);
	}
	if (ret) {
		ca_db_rollback(db);
		goto out;
	}
	ret = ca_db_commit(db);
	if (ret)
		goto out;
	if (custody_checkpoint(ca_db_store(db), "the CA's store")) {
		*why = "revoked, but the key may linger in the store's write-ahead log";
		ret = -EBUSY;
		goto out;
	}
	ret = custody_purge_backups(db, &total);
	if (ret) {
		*why = "revoked and deleted from the store, but a backup could not be rewritten";
		goto out;
	}
	custody_where(db, tenant, &cs, where, sizeof(where));
	snprintf(msg, msg_size,
	         "intermediate %s (key %s)%s revoked; %s; key deleted from the store and from %d "
	         "backup(s)",
	         cs.serial[0], cs.id[0], cs.n > 1 ? " and others" : "", where, total);
	log_info("inspection: %s: %s", tenant, msg);
out:
	custody_certs_free(&cs);
	return ret;
}

struct custody_text {
	char *p;
	size_t len;
};

static int custody_text_add(struct custody_text *t, const char *line)
{
	size_t n = strlen(line);
	char *p;

	if (t->len + n > CUSTODY_LIST_MAX)
		return -E2BIG;
	p = realloc(t->p, t->len + n + 1);
	if (!p)
		return -ENOMEM;
	memcpy(p + t->len, line, n + 1);
	t->p = p;
	t->len += n;
	return 0;
}

static int custody_status_row(void *arg, const struct store_val *c, size_t n)
{
	char line[512];

	if (n != 5 || c[0].type != STORE_T_TEXT || c[1].type != STORE_T_TEXT ||
	    c[2].type != STORE_T_TEXT || c[3].type != STORE_T_INT || c[4].type != STORE_T_INT)
		return -EINVAL;
	snprintf(line, sizeof(line), "%.*s %.*s %.*s created=%lld expires=%lld\n", (int)c[0].len,
	         (const char *)c[0].p, (int)c[1].len, (const char *)c[1].p, (int)c[2].len,
	         (const char *)c[2].p, (long long)c[3].i, (long long)c[4].i);
	return custody_text_add(arg, line);
}

int custody_status(struct ca_db *db, const char *tenant, char **out)
{
	struct custody_text t = {0};
	int ret;

	*out = NULL;
	ret = store_query(ca_db_store(db),
	                  "SELECT tenant, key_id, state, created, expires FROM insp_key"
	                  " WHERE $1 = '' OR tenant = $1 ORDER BY tenant, created",
	                  STORE_ARGS(store_text(tenant ? tenant : "")), custody_status_row, &t);
	if (!ret)
		ret = custody_text_add(&t, "");
	if (ret) {
		free(t.p);
		return ret;
	}
	*out = t.p;
	return 0;
}

int custody_tenant_private(struct ca_db *db, const char *tenant, bool private_only)
{
	int ret;

	if (!ident_valid_tenant(tenant))
		return -EINVAL;
	ret = store_exec(ca_db_store(db),
	                 "INSERT INTO insp_tenant (tenant, private_only) VALUES ($1, $2)"
	                 " ON CONFLICT (tenant) DO UPDATE SET private_only = excluded.private_only",
	                 STORE_ARGS(store_text(tenant), store_int(private_only)));
	if (ret < 0)
		return ret;
	ca_db_audit(db, "inspection.private_only", tenant, private_only ? "on" : "off");
	return 0;
}

static int custody_node_valid(const char *node)
{
	const char *slash = strchr(node, '/');
	char tenant[IDENT_TENANT_MAX + 1];

	if (!slash || (size_t)(slash - node) > IDENT_TENANT_MAX || !slash[1] ||
	    !ident_valid_id(slash + 1))
		return 0;
	memcpy(tenant, node, (size_t)(slash - node));
	tenant[slash - node] = '\0';
	return ident_valid_tenant(tenant);
}

int custody_node_mark(struct ca_db *db, const char *node, const char *mark, const char **why)
{
	int ret;

	*why = "";
	if (!custody_node_valid(node)) {
		*why = "the node is TENANT/ID of an enrolled inspector";
		return -EINVAL;
	}
	if (strcmp(mark, "public") != 0 &&
	    (strncmp(mark, "private:", 8) != 0 || !ident_valid_tenant(mark + 8))) {
		*why = "the mark is public or private:TENANT";
		return -EINVAL;
	}
	ret = store_exec(ca_db_store(db),
	                 "INSERT INTO insp_node (node, mark, updated) VALUES ($1, $2, $3)"
	                 " ON CONFLICT (node) DO UPDATE SET mark = excluded.mark,"
	                 " updated = excluded.updated",
	                 STORE_ARGS(store_text(node), store_text(mark), store_int(time(NULL))));
	if (ret < 0)
		return ret;
	ca_db_audit(db, "inspection.node_mark", "", node);
	return 0;
}

static int custody_mark_row(void *arg, const struct store_val *c, size_t n)
{
	char *mark = arg;

	if (n != 1 || c[0].type != STORE_T_TEXT || c[0].len > CUSTODY_MARK_MAX)
		return -EINVAL;
	memcpy(mark, c[0].p, c[0].len);
	mark[c[0].len] = '\0';
	return 1;
}

static int custody_dup(const struct store_val *v, char **out)
{
	*out = malloc(v->len + 1);
	if (!*out)
		return -ENOMEM;
	if (v->len)
		memcpy(*out, v->p, v->len);
	(*out)[v->len] = '\0';
	return 0;
}

static int custody_key_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_key *k = arg;
	int ret;

	if (n != 4 || c[0].type != STORE_T_TEXT || c[0].len != CUSTODY_KEY_ID_LEN ||
	    c[1].type != STORE_T_BLOB || c[1].len == 0 || c[2].type != STORE_T_TEXT)
		return -EINVAL;
	memcpy(k->key_id, c[0].p, CUSTODY_KEY_ID_LEN);
	k->key_id[CUSTODY_KEY_ID_LEN] = '\0';
	k->wrapped = malloc(c[1].len);
	if (!k->wrapped)
		return -ENOMEM;
	memcpy(k->wrapped, c[1].p, c[1].len);
	k->wrapped_len = c[1].len;
	ret = custody_dup(&c[2], &k->cert_pem);
	if (!ret)
		ret =
		    c[3].type == STORE_T_TEXT
			? custody_dup(&c[3], &k->chain_pem)
			: custody_dup(&(struct store_val){.type = STORE_T_TEXT, .p = "", .len = 0},
		                      &k->chain_pem);
	return ret ? ret : 1;
}

int custody_handout(struct ca_db *db, const struct ident *peer, const char *tenant,
                    struct custody_key *out, const char **why)
{
	char node[CUSTODY_NODE_MAX + 2], mark[CUSTODY_MARK_MAX + 1] = "", qwhy[160];
	int64_t priv = 0;
	int ret;

	memset(out, 0, sizeof(*out));
	*why = "";
	snprintf(node, sizeof(node), "%s/%s", peer->tenant, peer->id);
	if (peer->role != MT_ROLE_INSPECTOR) {
		*why = "only an inspector may ask for an inspection key";
		ret = -EPERM;
		goto audit;
	}
	if (!ident_valid_tenant(tenant)) {
		*why = "bad tenant name";
		ret = -EINVAL;
		goto audit;
	}
	ret = store_query(ca_db_store(db), "SELECT mark FROM insp_node WHERE node = $1",
	                  STORE_ARGS(store_text(node)), custody_mark_row, mark);
	if (ret) {
		*why = "store error";
		goto audit;
	}
	ret = store_query_int(ca_db_store(db),
	                      "SELECT private_only FROM insp_tenant WHERE tenant = $1",
	                      STORE_ARGS(store_text(tenant)), &priv);
	if (ret == -ENOENT)
		priv = 0;
	else if (ret) {
		*why = "store error";
		goto audit;
	}
	ret = -EPERM;
	if (!mark[0]) {
		*why = "the node is not marked as an inspection node";
		goto audit;
	}
	if (strncmp(mark, "private:", 8) == 0) {
		if (strcmp(mark + 8, tenant) != 0) {
			*why = "the node is private to another tenant";
			goto audit;
		}
	} else if (priv) {
		*why = "the tenant is private-only and the node is public";
		goto audit;
	}
	ret = store_query(ca_db_store(db),
	                  "SELECT key_id, wrapped, cert_pem, chain_pem FROM insp_key"
	                  " WHERE tenant = $1 AND state = 'active' ORDER BY created DESC LIMIT 1",
	                  STORE_ARGS(store_text(tenant)), custody_key_row, out);
	if (ret) {
		*why = "store error";
		goto audit;
	}
	if (!out->wrapped) {
		*why = "the tenant has no active inspection key";
		ret = -ENOENT;
		goto audit;
	}
	*why = mark[0] == 'p' && mark[1] == 'u' ? "public node" : "private node of the tenant";
audit:
	store_exec(ca_db_store(db),
	           "INSERT INTO insp_handout (ts, node, tenant, key_id, granted, reason)"
	           " VALUES ($1, $2, $3, $4, $5, $6)",
	           STORE_ARGS(store_int(time(NULL)), store_text(node), store_text(tenant),
	                      store_text(out->key_id), store_int(ret == 0), store_text(*why)));
	log_event(LOG_LVL_INFO, "inspection.key_handout",
	          "node=%s tenant=%s key=%s granted=%d reason=%s", node, tenant,
	          out->key_id[0] ? out->key_id : "-", ret == 0,
	          log_quote(qwhy, sizeof(qwhy), *why));
	if (ret)
		custody_key_free(out);
	return ret;
}

int custody_backup(struct ca_db *db, const char *path)
{
	int ret;

	if (access(path, F_OK) == 0) {
		log_warnx("backup: %s exists already", path);
		return -EEXIST;
	}
	ret = store_exec(ca_db_store(db), "VACUUM INTO $1", STORE_ARGS(store_text(path)));
	if (ret < 0) {
		log_warnx("backup: cannot write %s", path);
		return ret;
	}
	chmod(path, 0600);
	ret = store_exec(ca_db_store(db), "INSERT INTO backup (path, created) VALUES ($1, $2)",
	                 STORE_ARGS(store_text(path), store_int(time(NULL))));
	if (ret < 0)
		return ret;
	ca_db_audit(db, "backup.create", "", path);
	return 0;
}

static int custody_path_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_text *t = arg;
	int ret;

	if (n != 1 || c[0].type != STORE_T_TEXT || c[0].len >= 4096 ||
	    memchr(c[0].p, '\n', c[0].len))
		return -EINVAL;
	ret = custody_text_add(t, (const char *)c[0].p);
	return ret ? ret : custody_text_add(t, "\n");
}

/*
 * Opens a backup as a store of its own and deletes every inspection key that the CA's
 * store (live) no longer has, then rewrites the file. Keeping only live keys, rather than
 * deleting one key id, means a backup missed once (unmounted, unwritable) loses every
 * retired key at the next rotation that reaches it.
 */
static int custody_purge_one(const char *path, const char *live)
{
	char uri[4200];
	struct store *st = NULL;
	const char *why = "";
	int64_t gone = 0;
	int ret;

	snprintf(uri, sizeof(uri), "sqlite:%s", path);
	ret = store_open(uri, &st, &why);
	if (ret) {
		log_warnx("backup: cannot open %s: %s", path, why);
		return ret;
	}
	ret = store_exec(st, "ATTACH DATABASE $1 AS live", STORE_ARGS(store_text(live)));
	if (ret >= 0)
		ret = store_exec(st,
		                 "DELETE FROM main.insp_key WHERE key_id NOT IN"
		                 " (SELECT key_id FROM live.insp_key)",
		                 NULL, 0);
	if (ret >= 0) {
		gone = ret;
		ret = store_exec(st, "DETACH DATABASE live", NULL, 0);
	}
	if (ret >= 0)
		ret = store_exec(st, "VACUUM", NULL, 0);
	if (ret >= 0)
		ret = custody_checkpoint(st, path);
	store_close(st);
	if (ret < 0)
		log_warnx("backup: cannot delete retired keys from %s", path);
	else if (gone)
		log_info("backup: %s: %lld retired key(s) deleted", path, (long long)gone);
	return ret < 0 ? ret : 0;
}

static int custody_file_row(void *arg, const struct store_val *c, size_t n)
{
	struct custody_text *t = arg;
	int ret;

	if (n < 3 || c[1].type != STORE_T_TEXT || strcmp((const char *)c[1].p, "main") != 0)
		return 0;
	if (c[2].type != STORE_T_TEXT || c[2].len == 0 || c[2].len >= 4096)
		return -EINVAL;
	ret = custody_text_add(t, (const char *)c[2].p);
	return ret ? ret : 1;
}

int custody_purge_backups(struct ca_db *db, int *n)
{
	struct custody_text t = {0}, live = {0};
	char *line, *save = NULL;
	int ret;

	*n = 0;
	ret =
	    store_query(ca_db_store(db), "PRAGMA database_list", NULL, 0, custody_file_row, &live);
	if (!ret && !live.p)
		ret = -ENOENT;
	if (ret)
		goto out;
	ret = store_query(ca_db_store(db), "SELECT path FROM backup ORDER BY created", NULL, 0,
	                  custody_path_row, &t);
	if (ret || !t.p)
		goto out;
	for (line = strtok_r(t.p, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (access(line, F_OK) != 0) {
			log_info("backup: %s is gone; nothing to delete there", line);
			continue;
		}
		ret = custody_purge_one(line, live.p);
		if (ret)
			goto out;
		(*n)++;
		ca_db_audit(db, "backup.purge", "", line);
	}
out:
	free(t.p);
	free(live.p);
	return ret;
}
