/* Tenants' CAs (internal root, imported CA, externally signed), the CA's TLS identity, CRLs. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "keyfile.h"
#include "log.h"

int ca_kek_read(int fd, struct ca_secret *kek)
{
	const char *env;
	size_t len = 0;
	int ret = 0;

	kek->p = OPENSSL_secure_malloc(CA_KEK_MAX + 1);
	if (!kek->p)
		return -ENOMEM;
	if (fd >= 0) {
		for (;;) {
			ssize_t n = read(fd, kek->p + len, CA_KEK_MAX + 1 - len);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				ret = -errno;
				goto out;
			}
			if (n == 0 || (len += (size_t)n) > CA_KEK_MAX)
				break;
		}
		/* Read once: the descriptor must not stay open or reach the signer child. */
		close(fd);
	} else if ((env = getenv(CA_KEK_ENV))) {
		len = strlen(env);
		if (len <= CA_KEK_MAX)
			memcpy(kek->p, env, len);
		OPENSSL_cleanse((char *)env, len);
		unsetenv(CA_KEK_ENV);
	} else {
		log_warnx("no key-encryption secret: give --kek-fd N or set %s", CA_KEK_ENV);
		ret = -ENOKEY;
		goto out;
	}
	while (len > 0 && (kek->p[len - 1] == '\n' || kek->p[len - 1] == '\r'))
		len--;
	if (len < CA_KEK_MIN || len > CA_KEK_MAX) {
		log_warnx("the key-encryption secret must be %d..%d bytes", CA_KEK_MIN, CA_KEK_MAX);
		ret = -EINVAL;
		goto out;
	}
	kek->len = len;
out:
	if (ret)
		ca_secret_clear(kek);
	return ret;
}

void ca_secret_clear(struct ca_secret *s)
{
	if (!s || !s->p)
		return;
	OPENSSL_secure_clear_free(s->p, CA_KEK_MAX + 1);
	s->p = NULL;
	s->len = 0;
}

static int ca_tenant_absent(struct ca_db *db, const char *tenant)
{
	char state[16];
	uint8_t *a, *b, *c;
	size_t la, lb, lc;
	int ret;

	if (!ident_valid_tenant(tenant)) {
		log_warnx("tenant name '%.63s' is not valid ([a-z0-9-], 1..63)", tenant);
		return -EINVAL;
	}
	ret = ca_db_tenant_get(db, tenant, state, &a, &la, &b, &lb, &c, &lc);
	if (ret == -ENOENT)
		return 0;
	free(a);
	free(b);
	free(c);
	if (!ret) {
		log_warnx("tenant %s exists already (state %s)", tenant, state);
		return -EEXIST;
	}
	return ret;
}

int ca_tenant_init(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                   enum ca_key_alg alg)
{
	EVP_PKEY *root_key = NULL, *key = NULL;
	X509 *root = NULL, *issuer = NULL;
	uint8_t *sroot = NULL, *skey = NULL;
	size_t lroot = 0, lkey = 0, lc, lr;
	char *chain_pem = NULL, *root_pem = NULL;
	time_t now = time(NULL);
	int ret;

	ret = ca_tenant_absent(db, tenant);
	if (ret)
		return ret;
	ret = -EIO;
	root_key = pki_key_new(alg);
	key = pki_key_new(alg);
	if (!root_key || !key)
		goto out;
	ret = pki_make_root(tenant, root_key, now, &root);
	if (!ret)
		ret = pki_make_issuer(tenant, key, root, root_key, now, &issuer);
	if (!ret)
		ret = keyfile_seal(root_key, KEYFILE_KEK, kek->p, kek->len, &sroot, &lroot);
	if (!ret)
		ret = keyfile_seal(key, KEYFILE_KEK, kek->p, kek->len, &skey, &lkey);
	if (!ret)
		ret = pki_pem_of_cert(issuer, &chain_pem, &lc);
	if (!ret)
		ret = pki_pem_of_cert(root, &root_pem, &lr);
	if (!ret)
		ret = ca_db_tenant_put(db, tenant, "active", chain_pem, root_pem, skey, lkey, sroot,
		                       lroot, NULL);
	if (!ret) {
		ca_db_audit(db, "tenant.init", tenant, "internal root");
		log_event(LOG_LVL_INFO, "tenant.init", "tenant=%s mode=internal", tenant);
	}
out:
	free(chain_pem);
	free(root_pem);
	OPENSSL_free(sroot);
	OPENSSL_free(skey);
	X509_free(root);
	X509_free(issuer);
	EVP_PKEY_free(root_key);
	EVP_PKEY_free(key);
	return ret;
}

/* Splits certs into issuer + intermediates and the root (the last self-signed one). */
static int ca_split_chain(STACK_OF(X509) *certs, X509 *extra_root, X509 **root,
                          STACK_OF(X509) **chain, const char **why)
{
	int n = sk_X509_num(certs);
	X509 *last = sk_X509_value(certs, n - 1);

	*chain = sk_X509_new_null();
	if (!*chain)
		return -ENOMEM;
	if (extra_root) {
		*root = extra_root;
	} else if (X509_check_issued(last, last) == X509_V_OK) {
		*root = last;
		n--;
	} else {
		*why = "no root certificate (self-signed) in the given chain";
		return -EINVAL;
	}
	if (n == 0) /* the root signs directly */
		n = 1;
	for (int i = 0; i < n; i++) {
		X509 *x = sk_X509_value(certs, i);

		if (!X509_up_ref(x) || !sk_X509_push(*chain, x)) {
			X509_free(x);
			return -ENOMEM;
		}
	}
	return X509_up_ref(*root) ? 0 : -ENOMEM;
}

static int ca_tenant_store_chain(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                                 STACK_OF(X509) *chain, X509 *root, EVP_PKEY *key, const char *mode)
{
	char *chain_pem = NULL, *root_pem = NULL;
	uint8_t *skey = NULL;
	size_t lkey = 0, l1, l2;
	int ret;

	ret = keyfile_seal(key, KEYFILE_KEK, kek->p, kek->len, &skey, &lkey);
	if (!ret)
		ret = pki_pem_of_chain(NULL, chain, &chain_pem, &l1);
	if (!ret)
		ret = pki_pem_of_cert(root, &root_pem, &l2);
	if (!ret)
		ret = ca_db_tenant_put(db, tenant, "active", chain_pem, root_pem, skey, lkey, NULL,
		                       0, NULL);
	if (!ret) {
		ca_db_audit(db, "tenant.init", tenant, mode);
		log_event(LOG_LVL_INFO, "tenant.init", "tenant=%s mode=%s", tenant, mode);
	}
	free(chain_pem);
	free(root_pem);
	OPENSSL_free(skey);
	return ret;
}

int ca_tenant_import(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                     const uint8_t *cert_pem, size_t cert_len, EVP_PKEY *key, const char **why)
{
	STACK_OF(X509) *certs = NULL, *chain = NULL;
	X509 *root = NULL;
	int ret;

	*why = "";
	ret = ca_tenant_absent(db, tenant);
	if (ret)
		return ret;
	ret = pki_pem_read_certs(cert_pem, cert_len, &certs);
	if (ret) {
		*why = "no PEM certificate in the CA certificate file";
		goto out;
	}
	ret = ca_split_chain(certs, NULL, &root, &chain, why);
	if (ret)
		goto out;
	if (X509_check_private_key(sk_X509_value(chain, 0), key) != 1) {
		ERR_clear_error();
		*why = "the key does not match the CA certificate";
		ret = -EINVAL;
		goto out;
	}
	ret = pki_check_ca_chain(sk_X509_value(chain, 0), chain, root, why);
	if (!ret)
		ret = ca_tenant_store_chain(db, kek, tenant, chain, root, key, "imported");
out:
	X509_free(root);
	sk_X509_pop_free(chain, X509_free);
	sk_X509_pop_free(certs, X509_free);
	return ret;
}

int ca_tenant_external(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                       enum ca_key_alg alg, char **csr_pem, size_t *csr_len)
{
	EVP_PKEY *key = NULL;
	X509_REQ *req = NULL;
	BIO *bio = NULL;
	uint8_t *skey = NULL;
	size_t lkey = 0;
	char *data;
	long n;
	int ret;

	*csr_pem = NULL;
	ret = ca_tenant_absent(db, tenant);
	if (ret)
		return ret;
	ret = -EIO;
	key = pki_key_new(alg);
	if (!key)
		goto out;
	ret = pki_make_csr(tenant, key, &req);
	if (ret)
		goto out;
	ret = -EIO;
	bio = BIO_new(BIO_s_mem());
	if (!bio || !PEM_write_bio_X509_REQ(bio, req))
		goto out;
	n = BIO_get_mem_data(bio, &data);
	*csr_pem = malloc((size_t)n + 1);
	if (!*csr_pem) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(*csr_pem, data, (size_t)n);
	(*csr_pem)[n] = '\0';
	*csr_len = (size_t)n;
	ret = keyfile_seal(key, KEYFILE_KEK, kek->p, kek->len, &skey, &lkey);
	if (!ret)
		ret = ca_db_tenant_put(db, tenant, "pending", NULL, NULL, skey, lkey, NULL, 0,
		                       *csr_pem);
	if (!ret) {
		ca_db_audit(db, "tenant.csr", tenant, "external signing requested");
		log_event(LOG_LVL_INFO, "tenant.csr", "tenant=%s", tenant);
	}
out:
	if (ret) {
		free(*csr_pem);
		*csr_pem = NULL;
	}
	OPENSSL_free(skey);
	BIO_free(bio);
	X509_REQ_free(req);
	EVP_PKEY_free(key);
	return ret;
}

int ca_tenant_import_signed(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                            const uint8_t *cert_pem, size_t cert_len, const uint8_t *root_pem,
                            size_t root_len, const char **why)
{
	STACK_OF(X509) *certs = NULL, *roots = NULL, *chain = NULL;
	X509 *root = NULL;
	EVP_PKEY *key = NULL;
	uint8_t *a = NULL, *b = NULL, *skey = NULL;
	size_t la, lb, lkey;
	char state[16];
	int ret;

	*why = "";
	ret = ca_db_tenant_get(db, tenant, state, &a, &la, &b, &lb, &skey, &lkey);
	if (ret || strcmp(state, "pending") != 0) {
		*why = "tenant has no pending external signing request (init --external first)";
		ret = ret ? ret : -EALREADY;
		goto out;
	}
	ret = keyfile_open(skey, lkey, KEYFILE_KEK, kek->p, kek->len, &key);
	if (ret) {
		*why = keyfile_strerror(ret, KEYFILE_KEK);
		goto out;
	}
	ret = pki_pem_read_certs(cert_pem, cert_len, &certs);
	if (!ret)
		ret = pki_pem_read_certs(root_pem, root_len, &roots);
	if (ret) {
		*why = "no PEM certificate in the signed certificate or root file";
		goto out;
	}
	ret =
	    ca_split_chain(certs, sk_X509_value(roots, sk_X509_num(roots) - 1), &root, &chain, why);
	if (ret)
		goto out;
	if (X509_check_private_key(sk_X509_value(chain, 0), key) != 1) {
		ERR_clear_error();
		*why = "the signed certificate is not for this tenant's pending key";
		ret = -EINVAL;
		goto out;
	}
	ret = pki_check_ca_chain(sk_X509_value(chain, 0), chain, root, why);
	if (!ret)
		ret = ca_tenant_store_chain(db, kek, tenant, chain, root, key, "external");
out:
	free(a);
	free(b);
	free(skey);
	X509_free(root);
	EVP_PKEY_free(key);
	sk_X509_pop_free(chain, X509_free);
	sk_X509_pop_free(certs, X509_free);
	sk_X509_pop_free(roots, X509_free);
	return ret;
}

/*
 * The root's key, when tenant init made it here (the root signs the ARL). A key that does
 * not open leaves the tenant without an ARL, not without its issuing CA.
 */
static void ca_tenant_load_root_key(struct ca_db *db, const struct ca_secret *kek,
                                    struct ca_tenant *t)
{
	uint8_t *pem = NULL, *skey = NULL;
	size_t lp, lk = 0;
	int ret;

	ret = ca_db_tenant_root(db, t->name, &pem, &lp, &skey, &lk);
	free(pem);
	if (ret == -ENOKEY)
		return;
	if (!ret) {
		ret = keyfile_open(skey, lk, KEYFILE_KEK, kek->p, kek->len, &t->root_key);
		if (ret)
			log_warnx("tenant %s: cannot open its root key: %s", t->name,
			          keyfile_strerror(ret, KEYFILE_KEK));
	}
	if (!ret && X509_check_private_key(t->root, t->root_key) != 1) {
		log_warnx("tenant %s: the stored root key is not the root's", t->name);
		ret = -EINVAL;
	}
	ERR_clear_error();
	free(skey);
	if (ret) {
		EVP_PKEY_free(t->root_key);
		t->root_key = NULL;
	}
}

int ca_tenant_load(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                   struct ca_tenant *t)
{
	STACK_OF(X509) *roots = NULL;
	uint8_t *chain_pem = NULL, *root_pem = NULL, *skey = NULL;
	size_t lc, lr, lk;
	char state[16];
	int ret;

	memset(t, 0, sizeof(*t));
	ret = ca_db_tenant_get(db, tenant, state, &chain_pem, &lc, &root_pem, &lr, &skey, &lk);
	if (ret)
		return ret;
	if (strcmp(state, "active") != 0) {
		ret = -ENOENT;
		goto out;
	}
	snprintf(t->name, sizeof(t->name), "%s", tenant);
	ret = pki_pem_read_certs(chain_pem, lc, &t->chain);
	if (!ret)
		ret = pki_pem_read_certs(root_pem, lr, &roots);
	if (ret) {
		log_warnx("store: tenant %s has a damaged chain", tenant);
		goto out;
	}
	t->root = sk_X509_shift(roots);
	t->issuer = sk_X509_value(t->chain, 0);
	if (!kek)
		goto out;
	ret = keyfile_open(skey, lk, KEYFILE_KEK, kek->p, kek->len, &t->issuer_key);
	if (ret) {
		log_warnx("tenant %s: cannot open its issuing key: %s", tenant,
		          keyfile_strerror(ret, KEYFILE_KEK));
		goto out;
	}
	ca_tenant_load_root_key(db, kek, t);
out:
	sk_X509_pop_free(roots, X509_free);
	free(chain_pem);
	free(root_pem);
	free(skey);
	if (ret)
		ca_tenant_clear(t);
	return ret;
}

int ca_service_ensure(struct ca_db *db, const struct ca_secret *kek)
{
	uint8_t *a, *b, *skey = NULL;
	size_t la, lb, lkey, lc;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	char *pem = NULL;
	int ret;

	ret = ca_db_service_get(db, &a, &la, &b, &lb);
	if (ret != -ENOENT) {
		free(a);
		free(b);
		return ret;
	}
	ret = -EIO;
	key = pki_key_new(CA_KEY_P256);
	if (!key)
		goto out;
	ret = pki_make_service(key, time(NULL), &cert);
	if (!ret)
		ret = keyfile_seal(key, KEYFILE_KEK, kek->p, kek->len, &skey, &lkey);
	if (!ret)
		ret = pki_pem_of_cert(cert, &pem, &lc);
	if (!ret)
		ret = ca_db_service_put(db, pem, skey, lkey);
out:
	free(pem);
	OPENSSL_free(skey);
	X509_free(cert);
	EVP_PKEY_free(key);
	return ret;
}

int ca_service_load(struct ca_db *db, const struct ca_secret *kek, X509 **cert, EVP_PKEY **key)
{
	STACK_OF(X509) *certs = NULL;
	uint8_t *pem = NULL, *skey = NULL;
	size_t lp, lk;
	int ret;

	*cert = NULL;
	*key = NULL;
	ret = ca_db_service_get(db, &pem, &lp, &skey, &lk);
	if (ret) {
		if (ret == -ENOENT)
			log_warnx("the CA is not initialised: run mtun-ca init first");
		return ret;
	}
	ret = pki_pem_read_certs(pem, lp, &certs);
	if (!ret) {
		*cert = sk_X509_shift(certs);
		ret = keyfile_open(skey, lk, KEYFILE_KEK, kek->p, kek->len, key);
		if (ret)
			log_warnx("cannot open the CA's TLS key: %s",
			          keyfile_strerror(ret, KEYFILE_KEK));
	}
	sk_X509_pop_free(certs, X509_free);
	free(pem);
	free(skey);
	if (ret) {
		X509_free(*cert);
		*cert = NULL;
	}
	return ret;
}

int ca_crl_rebuild(struct ca_db *db, const struct ca_tenant *t, struct ca_signer *signer,
                   uint8_t **der, size_t *len)
{
	char **serials = NULL;
	time_t *when = NULL;
	size_t n = 0;
	X509_CRL *crl = NULL;
	long number;
	int dlen, ret;

	*der = NULL;
	ret = ca_db_revoked_list(db, t->name, &serials, &when, &n);
	if (!ret)
		ret = ca_db_crl_next(db, t->name, &number);
	if (!ret && signer)
		ret = ca_signer_crl(signer, t->name, (const char *const *)serials, when, n, number,
		                    time(NULL), &crl);
	else if (!ret)
		ret = pki_make_crl(t, (const char *const *)serials, when, n, number, time(NULL),
		                   &crl);
	if (ret)
		goto out;
	dlen = i2d_X509_CRL(crl, der);
	if (dlen <= 0) {
		ret = -EIO;
		goto out;
	}
	*len = (size_t)dlen;
	ret = ca_db_crl_put(db, t->name, *der, *len);
out:
	if (ret) {
		OPENSSL_free(*der);
		*der = NULL;
	}
	X509_CRL_free(crl);
	ca_db_strv_free(serials, n);
	free(when);
	return ret;
}

bool ca_root_issued(X509 *root, X509 *cert)
{
	bool ok = X509_check_issued(root, cert) == X509_V_OK &&
	          X509_verify(cert, X509_get0_pubkey(root)) == 1;

	ERR_clear_error();
	return ok;
}

int ca_arl_rebuild(struct ca_db *db, const struct ca_tenant *t, struct ca_signer *signer,
                   uint8_t **der, size_t *len)
{
	char **serials = NULL, **pems = NULL;
	time_t *when = NULL;
	size_t n = 0, k = 0;
	X509_CRL *crl = NULL;
	uint8_t *rp = NULL;
	size_t rl;
	long number;
	int dlen, ret;

	*der = NULL;
	ret = ca_db_tenant_root(db, t->name, &rp, &rl, NULL, NULL);
	free(rp);
	if (ret)
		return ret;
	ret = ca_db_revoked_ca_list(db, t->name, &serials, &when, &pems, &n);
	/* only what this root signed: others are their own root's to revoke */
	for (size_t i = 0; !ret && i < n; i++) {
		STACK_OF(X509) *c = NULL;
		char *sv;
		bool mine;

		if (pki_pem_read_certs((const uint8_t *)pems[i], strlen(pems[i]), &c))
			continue;
		mine = ca_root_issued(t->root, sk_X509_value(c, 0));
		sk_X509_pop_free(c, X509_free);
		if (!mine)
			continue;
		sv = serials[k];
		serials[k] = serials[i];
		serials[i] = sv;
		when[k++] = when[i];
	}
	if (!ret)
		ret = ca_db_arl_next(db, t->name, &number);
	if (!ret && signer)
		ret = ca_signer_arl(signer, t->name, (const char *const *)serials, when, k, number,
		                    time(NULL), &crl);
	else if (!ret && t->root_key) {
		struct ca_tenant a = {.issuer = t->root, .issuer_key = t->root_key};

		ret = pki_make_crl(&a, (const char *const *)serials, when, k, number, time(NULL),
		                   &crl);
	} else if (!ret) {
		ret = -ENOKEY;
	}
	if (ret)
		goto out;
	dlen = i2d_X509_CRL(crl, der);
	if (dlen <= 0) {
		ret = -EIO;
		goto out;
	}
	*len = (size_t)dlen;
	ret = ca_db_arl_put(db, t->name, *der, *len);
out:
	if (ret) {
		OPENSSL_free(*der);
		*der = NULL;
	}
	X509_CRL_free(crl);
	ca_db_strv_free(serials, n);
	ca_db_strv_free(pems, n);
	free(when);
	return ret;
}
