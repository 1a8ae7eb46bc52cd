/* Tenant roots and issuing CAs, leaf certificates from CSRs, CRLs, chain checks. */
#include <errno.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "enroll.h"
#include "log.h"

int pki_key_alg_parse(const char *name, enum ca_key_alg *alg)
{
	if (strcmp(name, "p256") == 0 || strcmp(name, "ecdsa") == 0)
		*alg = CA_KEY_P256;
	else if (strcmp(name, "rsa") == 0 || strcmp(name, "rsa2048") == 0)
		*alg = CA_KEY_RSA2048;
	else if (strcmp(name, "rsa3072") == 0)
		*alg = CA_KEY_RSA3072;
	else
		return -EINVAL;
	return 0;
}

EVP_PKEY *pki_key_new(enum ca_key_alg alg)
{
	switch (alg) {
	case CA_KEY_P256:
		return EVP_EC_gen("P-256");
	case CA_KEY_RSA2048:
		return EVP_RSA_gen(2048);
	case CA_KEY_RSA3072:
		return EVP_RSA_gen(3072);
	}
	return NULL;
}

static int pki_add_ext(X509 *cert, X509 *issuer, X509_REQ *req, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, cert, req, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ext)
		return -EINVAL;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -ENOMEM;
}

static int pki_random_serial(X509 *cert)
{
	uint8_t b[16];
	BIGNUM *bn;
	int ret = -EIO;

	if (RAND_bytes(b, sizeof(b)) != 1)
		return -EIO;
	b[0] &= 0x7f; /* positive, 127 bits of entropy */
	b[0] |= 0x40; /* fixed length: 16 bytes */
	bn = BN_bin2bn(b, sizeof(b), NULL);
	if (bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)))
		ret = 0;
	BN_free(bn);
	return ret;
}

static const EVP_MD *pki_md(EVP_PKEY *key)
{
	return EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256();
}

/* A certificate skeleton: version 3, random serial, validity, subject and issuer. */
static X509 *pki_cert_new(X509_NAME *subject, X509_NAME *issuer, EVP_PKEY *pub, time_t now,
                          long secs)
{
	X509 *x = X509_new();

	if (!x || !X509_set_version(x, 2) || pki_random_serial(x) ||
	    !X509_time_adj_ex(X509_getm_notBefore(x), 0, -300, &now) ||
	    !X509_time_adj_ex(X509_getm_notAfter(x), (int)(secs / 86400), secs % 86400, &now) ||
	    !X509_set_subject_name(x, subject) || !X509_set_issuer_name(x, issuer) ||
	    !X509_set_pubkey(x, pub)) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static X509_NAME *pki_name(const char *o, const char *ou, const char *cn)
{
	X509_NAME *n = X509_NAME_new();

	if (!n)
		return NULL;
	if ((o &&
	     !X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const uint8_t *)o, -1, -1, 0)) ||
	    (ou &&
	     !X509_NAME_add_entry_by_txt(n, "OU", MBSTRING_UTF8, (const uint8_t *)ou, -1, -1, 0)) ||
	    !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0)) {
		X509_NAME_free(n);
		return NULL;
	}
	return n;
}

int pki_make_root(const char *tenant, EVP_PKEY *key, time_t now, X509 **out)
{
	char cn[128];
	X509_NAME *name;
	X509 *x = NULL;
	int ret = -EIO;

	snprintf(cn, sizeof(cn), "mtun %s root CA", tenant);
	name = pki_name(tenant, "mtun", cn);
	if (!name)
		return -ENOMEM;
	x = pki_cert_new(name, name, key, now, (long)CA_ROOT_DAYS * 86400);
	if (!x)
		goto out;
	if (pki_add_ext(x, x, NULL, NID_basic_constraints, "critical,CA:TRUE") ||
	    pki_add_ext(x, x, NULL, NID_key_usage, "critical,keyCertSign,cRLSign") ||
	    pki_add_ext(x, x, NULL, NID_subject_key_identifier, "hash") ||
	    !X509_sign(x, key, pki_md(key)))
		goto out;
	*out = x;
	x = NULL;
	ret = 0;
out:
	X509_NAME_free(name);
	X509_free(x);
	return ret;
}

/* A CA below the root that signs leaves and CRLs only (pathlen 0), signed by the root. */
static int pki_sign_sub_ca(X509 *x, X509 *root, EVP_PKEY *root_key)
{
	if (pki_add_ext(x, root, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
	    pki_add_ext(x, root, NULL, NID_key_usage, "critical,keyCertSign,cRLSign") ||
	    pki_add_ext(x, root, NULL, NID_subject_key_identifier, "hash") ||
	    pki_add_ext(x, root, NULL, NID_authority_key_identifier, "keyid:always") ||
	    !X509_sign(x, root_key, pki_md(root_key)))
		return -EIO;
	return 0;
}

int pki_make_issuer(const char *tenant, EVP_PKEY *key, X509 *root, EVP_PKEY *root_key, time_t now,
                    X509 **out)
{
	char cn[128];
	X509_NAME *name;
	X509 *x = NULL;
	int ret = -EIO;

	snprintf(cn, sizeof(cn), "mtun %s issuing CA", tenant);
	name = pki_name(tenant, "mtun", cn);
	if (!name)
		return -ENOMEM;
	x = pki_cert_new(name, X509_get_subject_name(root), key, now, (long)CA_ISSUER_DAYS * 86400);
	if (!x || pki_sign_sub_ca(x, root, root_key))
		goto out;
	*out = x;
	x = NULL;
	ret = 0;
out:
	X509_NAME_free(name);
	X509_free(x);
	return ret;
}

int pki_sign_inspection(const char *tenant, X509 *root, EVP_PKEY *root_key, X509_REQ *req,
                        time_t now, time_t not_after, X509 **out)
{
	EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
	X509_NAME *subject = X509_REQ_get_subject_name(req);
	char org[IDENT_TENANT_MAX + 2];
	struct tm tm;
	time_t root_end;
	X509 *x = NULL;
	int ret = -EINVAL;

	*out = NULL;
	if (!pub || X509_REQ_verify(req, pub) != 1 ||
	    X509_NAME_get_text_by_NID(subject, NID_organizationName, org, sizeof(org)) < 0 ||
	    strcmp(org, tenant) != 0 || ASN1_TIME_to_tm(X509_get0_notAfter(root), &tm) != 1)
		goto out;
	root_end = timegm(&tm);
	if (not_after <= now)
		not_after = now + 365L * 86400;
	if (not_after > root_end)
		not_after = root_end; /* nothing outlives its root */
	if (not_after < now + 86400)
		goto out;
	ret = -EIO;
	x = pki_cert_new(subject, X509_get_subject_name(root), pub, now, (long)(not_after - now));
	if (!x || pki_sign_sub_ca(x, root, root_key))
		goto out;
	*out = x;
	x = NULL;
	ret = 0;
out:
	ERR_clear_error();
	X509_free(x);
	return ret;
}

int pki_make_service(EVP_PKEY *key, time_t now, X509 **out)
{
	X509_NAME *name = pki_name("mtun", NULL, "mtun-ca");
	X509 *x;
	int ret = -EIO;

	if (!name)
		return -ENOMEM;
	x = pki_cert_new(name, name, key, now, (long)CA_ROOT_DAYS * 86400);
	if (x && !pki_add_ext(x, x, NULL, NID_basic_constraints, "critical,CA:FALSE") &&
	    !pki_add_ext(x, x, NULL, NID_ext_key_usage, "serverAuth") &&
	    X509_sign(x, key, pki_md(key))) {
		*out = x;
		x = NULL;
		ret = 0;
	}
	X509_free(x);
	X509_NAME_free(name);
	return ret;
}

int pki_make_csr(const char *tenant, EVP_PKEY *key, X509_REQ **out)
{
	char cn[128];
	X509_NAME *name;
	X509_REQ *req = X509_REQ_new();
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	X509_EXTENSION *ext;
	int ret = -EIO;

	snprintf(cn, sizeof(cn), "mtun %s issuing CA", tenant);
	name = pki_name(tenant, "mtun", cn);
	if (!name || !req || !exts)
		goto out;
	ext = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
	if (!ext || !sk_X509_EXTENSION_push(exts, ext)) {
		X509_EXTENSION_free(ext);
		goto out;
	}
	ext = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "critical,keyCertSign,cRLSign");
	if (!ext || !sk_X509_EXTENSION_push(exts, ext)) {
		X509_EXTENSION_free(ext);
		goto out;
	}
	if (!X509_REQ_set_subject_name(req, name) || !X509_REQ_add_extensions(req, exts) ||
	    !X509_REQ_set_pubkey(req, key) || !X509_REQ_sign(req, key, pki_md(key)))
		goto out;
	*out = req;
	req = NULL;
	ret = 0;
out:
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_NAME_free(name);
	X509_REQ_free(req);
	return ret;
}

/* Only keys a TLS 1.3 peer can use and that are strong enough. */
static bool pki_key_acceptable(EVP_PKEY *key)
{
	char group[32];
	size_t len;

	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_EC:
		if (!EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof(group), &len))
			return false;
		return strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0;
	case EVP_PKEY_RSA:
		return EVP_PKEY_get_bits(key) >= 2048 && EVP_PKEY_get_bits(key) <= 8192;
	case EVP_PKEY_ED25519:
		return true;
	default:
		return false;
	}
}

int pki_csr_parse(const uint8_t *der, size_t len, X509_REQ **out, struct ident *id,
                  const char **why)
{
	const uint8_t *p = der;
	STACK_OF(X509_EXTENSION) *exts = NULL;
	GENERAL_NAMES *names = NULL;
	X509_REQ *req = NULL;
	EVP_PKEY *pub;
	int uris = 0, ret = -EBADMSG;

	*out = NULL;
	*why = "malformed CSR";
	if (len == 0 || len > ENROLL_CSR_MAX) {
		*why = "CSR size out of bounds";
		return -EMSGSIZE;
	}
	req = d2i_X509_REQ(NULL, &p, (long)len);
	if (!req || p != der + len)
		goto out;
	pub = X509_REQ_get0_pubkey(req);
	if (!pub || !pki_key_acceptable(pub)) {
		*why = "CSR key type or size not accepted (P-256, P-384, Ed25519, RSA >= 2048)";
		goto out;
	}
	if (X509_REQ_verify(req, pub) != 1) {
		*why = "CSR signature does not verify";
		goto out;
	}
	exts = X509_REQ_get_extensions(req);
	for (int i = 0; exts && i < sk_X509_EXTENSION_num(exts); i++) {
		X509_EXTENSION *e = sk_X509_EXTENSION_value(exts, i);

		if (OBJ_obj2nid(X509_EXTENSION_get_object(e)) != NID_subject_alt_name)
			continue;
		GENERAL_NAMES_free(names);
		names = X509V3_EXT_d2i(e);
		break;
	}
	for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
		GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);

		if (gn->type != GEN_URI) {
			*why = "CSR carries a subjectAltName other than the mtun URI";
			goto out;
		}
		uris++;
		if (uris > 1 ||
		    ident_parse((const char *)gn->d.uniformResourceIdentifier->data,
		                (size_t)gn->d.uniformResourceIdentifier->length, id, why) != 0) {
			if (uris > 1)
				*why = "CSR carries more than one URI";
			goto out;
		}
	}
	if (uris != 1) {
		*why = "CSR carries no mtun:// identity URI";
		goto out;
	}
	*out = req;
	req = NULL;
	*why = NULL;
	ret = 0;
out:
	ERR_clear_error();
	GENERAL_NAMES_free(names);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_REQ_free(req);
	return ret;
}

int pki_serial_hex(X509 *cert, char out[41])
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex;
	int ret = -EINVAL;

	if (!bn)
		return -ENOMEM;
	hex = BN_bn2hex(bn);
	if (hex && strlen(hex) <= 40) {
		for (char *c = hex; *c; c++)
			*c = (char)(*c >= 'A' && *c <= 'F' ? *c + 32 : *c);
		memcpy(out, hex, strlen(hex) + 1);
		ret = 0;
	}
	OPENSSL_free(hex);
	BN_free(bn);
	return ret;
}

static int pki_add_san_uri(X509 *x, const char *uri)
{
	GENERAL_NAMES *gens = GENERAL_NAMES_new();
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
	int ret = -ENOMEM;

	if (!gens || !gn || !ia5 || !ASN1_STRING_set(ia5, uri, -1))
		goto out;
	GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
	ia5 = NULL;
	if (!sk_GENERAL_NAME_push(gens, gn))
		goto out;
	gn = NULL;
	if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1)
		ret = 0;
out:
	ASN1_IA5STRING_free(ia5);
	GENERAL_NAME_free(gn);
	GENERAL_NAMES_free(gens);
	return ret;
}

int pki_sign_leaf(const struct ca_tenant *t, EVP_PKEY *pub, const struct ca_leaf_req *r, X509 **out,
                  char serial_hex[41])
{
	char uri[IDENT_URI_MAX];
	X509_NAME *name;
	X509 *x = NULL;
	int ret;

	ret = ident_format(&r->ident, uri, sizeof(uri));
	if (ret)
		return ret;
	name = pki_name(r->ident.tenant, ident_role_name(r->ident.role), r->ident.id);
	if (!name)
		return -ENOMEM;
	ret = -EIO;
	x = pki_cert_new(name, X509_get_subject_name(t->issuer), pub, r->now, r->ttl);
	if (!x)
		goto out;
	if (pki_add_ext(x, t->issuer, NULL, NID_basic_constraints, "critical,CA:FALSE") ||
	    pki_add_ext(x, t->issuer, NULL, NID_key_usage, "critical,digitalSignature") ||
	    pki_add_ext(x, t->issuer, NULL, NID_ext_key_usage, "serverAuth,clientAuth") ||
	    pki_add_ext(x, t->issuer, NULL, NID_subject_key_identifier, "hash") ||
	    pki_add_ext(x, t->issuer, NULL, NID_authority_key_identifier, "keyid:always") ||
	    pki_add_san_uri(x, uri) || !X509_sign(x, t->issuer_key, pki_md(t->issuer_key)) ||
	    pki_serial_hex(x, serial_hex))
		goto out;
	*out = x;
	x = NULL;
	ret = 0;
out:
	X509_NAME_free(name);
	X509_free(x);
	return ret;
}

int pki_make_crl(const struct ca_tenant *t, const char *const *serials, const time_t *when,
                 size_t n, long number, time_t now, X509_CRL **out)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *tm = NULL;
	ASN1_INTEGER *num = NULL;
	int ret = -EIO;

	if (!crl || !X509_CRL_set_version(crl, 1) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(t->issuer)))
		goto out;
	tm = ASN1_TIME_set(NULL, now);
	if (!tm || !X509_CRL_set1_lastUpdate(crl, tm) ||
	    !ASN1_TIME_set(tm, now + CA_CRL_HOURS * 3600) || !X509_CRL_set1_nextUpdate(crl, tm))
		goto out;
	for (size_t i = 0; i < n; i++) {
		X509_REVOKED *rv = X509_REVOKED_new();
		BIGNUM *bn = NULL;
		ASN1_INTEGER *ai = NULL;
		bool ok;

		ok = rv && BN_hex2bn(&bn, serials[i]) && (ai = BN_to_ASN1_INTEGER(bn, NULL)) &&
		     X509_REVOKED_set_serialNumber(rv, ai) && ASN1_TIME_set(tm, when[i]) &&
		     X509_REVOKED_set_revocationDate(rv, tm) && X509_CRL_add0_revoked(crl, rv);
		BN_free(bn);
		ASN1_INTEGER_free(ai);
		if (!ok) {
			X509_REVOKED_free(rv);
			goto out;
		}
	}
	num = ASN1_INTEGER_new();
	if (!num || !ASN1_INTEGER_set(num, number) ||
	    !X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0))
		goto out;
	X509V3_CTX v3;
	X509_EXTENSION *aki;

	X509V3_set_ctx(&v3, t->issuer, NULL, NULL, crl, 0);
	aki = X509V3_EXT_conf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always");
	if (!aki || !X509_CRL_add_ext(crl, aki, -1)) {
		X509_EXTENSION_free(aki);
		goto out;
	}
	X509_EXTENSION_free(aki);
	if (!X509_CRL_sort(crl) || !X509_CRL_sign(crl, t->issuer_key, pki_md(t->issuer_key)))
		goto out;
	*out = crl;
	crl = NULL;
	ret = 0;
out:
	ASN1_INTEGER_free(num);
	ASN1_TIME_free(tm);
	X509_CRL_free(crl);
	return ret;
}

static int pki_verify(X509 *cert, STACK_OF(X509) *untrusted, X509 *root, int purpose,
                      const char **why)
{
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *xc = X509_STORE_CTX_new();
	int ret = -EIO;

	if (!st || !xc || !X509_STORE_add_cert(st, root) ||
	    !X509_STORE_CTX_init(xc, st, cert, untrusted))
		goto out;
	if (purpose)
		X509_STORE_CTX_set_purpose(xc, purpose);
	if (X509_verify_cert(xc) == 1) {
		ret = 0;
	} else {
		*why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(xc));
		ret = -EKEYREJECTED;
	}
out:
	ERR_clear_error();
	X509_STORE_CTX_free(xc);
	X509_STORE_free(st);
	return ret;
}

int pki_check_ca_chain(X509 *issuer, STACK_OF(X509) *chain, X509 *root, const char **why)
{
	if (X509_check_ca(issuer) != 1 || !(X509_get_key_usage(issuer) & KU_KEY_CERT_SIGN)) {
		*why = "the issuing certificate is not a CA allowed to sign certificates";
		return -EINVAL;
	}
	if (X509_check_ca(root) != 1) {
		*why = "the root is not a CA certificate";
		return -EINVAL;
	}
	return pki_verify(issuer, chain, root, 0, why);
}

int pki_verify_leaf(const struct ca_tenant *t, X509 *leaf, const char **why)
{
	return pki_verify(leaf, t->chain, t->root, X509_PURPOSE_SSL_CLIENT, why);
}

static int pki_bio_out(BIO *bio, char **pem, size_t *len)
{
	char *data;
	long n = BIO_get_mem_data(bio, &data);

	if (n <= 0)
		return -EIO;
	*pem = malloc((size_t)n + 1);
	if (!*pem)
		return -ENOMEM;
	memcpy(*pem, data, (size_t)n);
	(*pem)[n] = '\0';
	*len = (size_t)n;
	return 0;
}

int pki_pem_of_cert(X509 *x, char **pem, size_t *len)
{
	return pki_pem_of_chain(x, NULL, pem, len);
}

int pki_pem_of_chain(X509 *first, STACK_OF(X509) *rest, char **pem, size_t *len)
{
	BIO *bio = BIO_new(BIO_s_mem());
	int ret = -EIO;

	if (!bio)
		return -ENOMEM;
	if (first && !PEM_write_bio_X509(bio, first))
		goto out;
	for (int i = 0; i < sk_X509_num(rest); i++)
		if (!PEM_write_bio_X509(bio, sk_X509_value(rest, i)))
			goto out;
	ret = pki_bio_out(bio, pem, len);
out:
	BIO_free(bio);
	return ret;
}

int pki_pem_read_certs(const uint8_t *pem, size_t len, STACK_OF(X509) **out)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	STACK_OF(X509) *sk = sk_X509_new_null();
	X509 *x;
	int ret = -EBADMSG;

	if (!bio || !sk || len > INT32_MAX)
		goto out;
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
		if (!sk_X509_push(sk, x)) {
			X509_free(x);
			goto out;
		}
	}
	ERR_clear_error();
	if (sk_X509_num(sk) > 0) {
		*out = sk;
		sk = NULL;
		ret = 0;
	}
out:
	BIO_free(bio);
	sk_X509_pop_free(sk, X509_free);
	return ret;
}

void ca_tenant_clear(struct ca_tenant *t)
{
	if (!t)
		return;
	X509_free(t->root);
	sk_X509_pop_free(t->chain, X509_free);
	EVP_PKEY_free(t->issuer_key);
	EVP_PKEY_free(t->root_key);
	memset(t, 0, sizeof(*t));
}
