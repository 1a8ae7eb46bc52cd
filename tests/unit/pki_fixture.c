/* Test-only PKI made in memory: EC P-256 roots, intermediates and leaves with SAN URIs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "pki_fixture.h"

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ext)
		return -EINVAL;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -ENOMEM;
}

/* A certificate for a fresh key, named cn, issued by issuer (NULL: self-signed). */
static int make(const struct pki_cert *issuer, const char *cn, long nb_off, long na_off,
                struct pki_cert *out)
{
	X509_NAME *name = NULL;
	unsigned char serial[16];
	BIGNUM *bn = NULL;
	int ret = -ENOMEM;

	memset(out, 0, sizeof(*out));
	out->key = EVP_EC_gen("P-256");
	out->cert = X509_new();
	name = X509_NAME_new();
	if (!out->key || !out->cert || !name || RAND_bytes(serial, sizeof(serial)) != 1)
		goto out;
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(out->cert)))
		goto out;
	if (!X509_set_version(out->cert, 2) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
	                                -1, 0) ||
	    !X509_set_subject_name(out->cert, name) ||
	    !X509_set_issuer_name(out->cert, issuer ? X509_get_subject_name(issuer->cert) : name) ||
	    !X509_gmtime_adj(X509_getm_notBefore(out->cert), nb_off) ||
	    !X509_gmtime_adj(X509_getm_notAfter(out->cert), na_off) ||
	    !X509_set_pubkey(out->cert, out->key))
		goto out;
	ret = 0;
out:
	BN_free(bn);
	X509_NAME_free(name);
	if (ret < 0)
		pki_cert_free(out);
	return ret;
}

static int sign(const struct pki_cert *issuer, struct pki_cert *c)
{
	const struct pki_cert *by = issuer ? issuer : c;

	return X509_sign(c->cert, by->key, EVP_sha256()) > 0 ? 0 : -EINVAL;
}

static int make_ca(const struct pki_cert *issuer, const char *cn, struct pki_cert *out)
{
	X509 *icert;
	int ret = make(issuer, cn, -3600, 86400 * 30, out);

	if (ret < 0)
		return ret;
	icert = issuer ? issuer->cert : out->cert;
	if (add_ext(out->cert, icert, NID_basic_constraints, "critical,CA:TRUE") < 0 ||
	    add_ext(out->cert, icert, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
	    add_ext(out->cert, icert, NID_subject_key_identifier, "hash") < 0 ||
	    (issuer && add_ext(out->cert, icert, NID_authority_key_identifier, "keyid") < 0) ||
	    sign(issuer, out) < 0) {
		pki_cert_free(out);
		return -EINVAL;
	}
	return 0;
}

int pki_root_new(const char *cn, struct pki_cert *out)
{
	return make_ca(NULL, cn, out);
}

int pki_ca_new(const struct pki_cert *issuer, const char *cn, struct pki_cert *out)
{
	return make_ca(issuer, cn, out);
}

int pki_leaf_new(const struct pki_cert *issuer, const char *const *uris, size_t n, long nb_off,
                 long na_off, struct pki_cert *out)
{
	char san[2048];
	size_t used = 0;
	int ret = make(issuer, "mtun leaf", nb_off, na_off, out);

	if (ret < 0)
		return ret;
	san[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(san + used, sizeof(san) - used, "%sURI:%s", i ? "," : "", uris[i]);
		if (w < 0 || (size_t)w >= sizeof(san) - used)
			goto fail;
		used += (size_t)w;
	}
	if (add_ext(out->cert, issuer->cert, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
	    add_ext(out->cert, issuer->cert, NID_key_usage, "critical,digitalSignature") < 0 ||
	    add_ext(out->cert, issuer->cert, NID_ext_key_usage, "serverAuth,clientAuth") < 0 ||
	    add_ext(out->cert, issuer->cert, NID_authority_key_identifier, "keyid") < 0 ||
	    (n > 0 && add_ext(out->cert, issuer->cert, NID_subject_alt_name, san) < 0) ||
	    sign(issuer, out) < 0)
		goto fail;
	return 0;
fail:
	pki_cert_free(out);
	return -EINVAL;
}

void pki_cert_free(struct pki_cert *c)
{
	if (!c)
		return;
	X509_free(c->cert);
	EVP_PKEY_free(c->key);
	c->cert = NULL;
	c->key = NULL;
}

static char *bio_string(BIO *bio)
{
	char *data, *s = NULL;
	long len = BIO_get_mem_data(bio, &data);

	if (len >= 0 && (s = malloc((size_t)len + 1))) {
		memcpy(s, data, (size_t)len);
		s[len] = '\0';
	}
	BIO_free(bio);
	return s;
}

char *pki_cert_pem(X509 *cert)
{
	BIO *bio = BIO_new(BIO_s_mem());

	if (!bio || !PEM_write_bio_X509(bio, cert)) {
		BIO_free(bio);
		return NULL;
	}
	return bio_string(bio);
}

char *pki_key_pem(EVP_PKEY *key)
{
	BIO *bio = BIO_new(BIO_s_mem());

	if (!bio || !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) {
		BIO_free(bio);
		return NULL;
	}
	return bio_string(bio);
}
