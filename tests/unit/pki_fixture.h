/* Test-only PKI made in memory: EC P-256 roots, intermediates and leaves with SAN URIs. */
#ifndef MTUN_PKI_FIXTURE_H
#define MTUN_PKI_FIXTURE_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

struct pki_cert {
	X509 *cert;
	EVP_PKEY *key;
};

/* A self-signed CA. 0 or -ENOMEM/-EINVAL. */
int pki_root_new(const char *cn, struct pki_cert *out);
/* An intermediate CA signed by issuer. */
int pki_ca_new(const struct pki_cert *issuer, const char *cn, struct pki_cert *out);
/*
 * A leaf signed by issuer with n SAN URIs (n may be 0), valid from now + nb_off to
 * now + na_off seconds, EKU serverAuth and clientAuth.
 */
int pki_leaf_new(const struct pki_cert *issuer, const char *const *uris, size_t n, long nb_off,
                 long na_off, struct pki_cert *out);
void pki_cert_free(struct pki_cert *c);

/* PEM of a certificate: a malloc'd string. */
char *pki_cert_pem(X509 *cert);
/* PEM (PKCS#8, unencrypted) of a key: a malloc'd string. */
char *pki_key_pem(EVP_PKEY *key);

#endif
