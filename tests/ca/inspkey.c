/*
 * Test tool: an inspection node asking mtun-ca for a tenant's inspection key over mTLS
 * (with an enrolled inspector identity) through inspkey_fetch, which also opens the envelope
 * with the nodes' wrapping key (fd or $MTUN_WRAP_KEY). Prints the outcome; for the backup scan,
 * optionally saves the envelope and prints the private scalar it held (tests only).
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "ca/ca.h"
#include "enroll.h"
#include "envelope.h"
#include "inspect.h"
#include "log.h"

_Static_assert(INSPKEY_T_KEY_GET == CUSTODY_T_KEY_GET, "key request type");

/* Signs a throwaway leaf with the unwrapped key and verifies it up to the root sent last. */
static int ik_leaf_verifies(EVP_PKEY *ikey, STACK_OF(X509) *certs)
{
	X509 *inter = sk_X509_value(certs, 0), *root = sk_X509_value(certs, sk_X509_num(certs) - 1);
	EVP_PKEY *lk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *leaf = X509_new();
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *xc = X509_STORE_CTX_new();
	STACK_OF(X509) *mid = sk_X509_new_null();
	int ok = 0;

	if (!lk || !leaf || !st || !xc || !mid || sk_X509_num(certs) < 2)
		goto out;
	X509_set_version(leaf, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(leaf), 1);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(leaf), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"inspected.example", -1, -1, 0);
	X509_set_issuer_name(leaf, X509_get_subject_name(inter));
	X509_gmtime_adj(X509_getm_notBefore(leaf), -60);
	X509_gmtime_adj(X509_getm_notAfter(leaf), 3600);
	X509_set_pubkey(leaf, lk);
	if (!X509_sign(leaf, ikey, EVP_sha256()) || !X509_STORE_add_cert(st, root))
		goto out;
	for (int i = 0; i < sk_X509_num(certs) - 1; i++)
		sk_X509_push(mid, sk_X509_value(certs, i));
	if (X509_STORE_CTX_init(xc, st, leaf, mid) == 1 && X509_verify_cert(xc) == 1)
		ok = 1;
out:
	sk_X509_free(mid);
	X509_STORE_CTX_free(xc);
	X509_STORE_free(st);
	X509_free(leaf);
	EVP_PKEY_free(lk);
	return ok;
}

static void ik_hex(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'i'},
	    {"tenant", required_argument, NULL, 't'},
	    {"wrap-key-fd", required_argument, NULL, 'w'},
	    {"save-envelope", required_argument, NULL, 'e'},
	    {"print-secret", no_argument, NULL, 'p'},
	    {NULL, 0, NULL, 0},
	};
	const char *dir = NULL, *src = NULL, *tenant = NULL, *save = NULL;
	char why[600] = "";
	struct inspkey k = {0};
	EVP_PKEY *wrap = NULL;
	uint8_t *der = NULL, md[32];
	int der_len, wfd = -1, opt, ret = 1, err;
	unsigned int mdlen;
	bool secret = false;

	_Static_assert(sizeof(CUSTODY_PURPOSE) == sizeof(INSPKEY_PURPOSE), "key purpose");
	log_init("inspkey", LOG_LVL_WARN);
	CRYPTO_secure_malloc_init(1 << 16, 16);
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			dir = optarg;
			break;
		case 'i':
			src = optarg;
			break;
		case 't':
			tenant = optarg;
			break;
		case 'w':
			wfd = atoi(optarg);
			break;
		case 'e':
			save = optarg;
			break;
		case 'p':
			secret = true;
			break;
		default:
			return 2;
		}
	}
	if (!dir || !tenant) {
		fprintf(stderr, "usage: %s --state DIR --tenant T [--wrap-key-fd N]\n", argv[0]);
		return 2;
	}
	if (envelope_priv_read(wfd, &wrap))
		goto out;
	err = inspkey_fetch(dir, src, wrap, tenant, 5000, &k, why, sizeof(why));
	if (err == -EACCES) {
		printf("refused: %s\n", why);
		ret = 3;
		goto out;
	}
	if (err == -EBADMSG && strstr(why, "does not open")) {
		printf("unwrap failed\n");
		goto out;
	}
	if (err) {
		fprintf(stderr, "%s (%s)\n", why, strerror(-err));
		goto out;
	}
	if (save) {
		FILE *f = fopen(save, "wb");

		if (!f || fwrite(k.envelope, 1, k.envelope_len, f) != k.envelope_len) {
			if (f)
				fclose(f);
			goto out;
		}
		fclose(f);
	}
	der_len = i2d_PrivateKey(k.key, NULL);
	if (der_len <= 0 || !(der = OPENSSL_secure_malloc((size_t)der_len)))
		goto out;
	{
		unsigned char *p = der;

		i2d_PrivateKey(k.key, &p);
	}
	EVP_Digest(der, (size_t)der_len, md, &mdlen, EVP_sha256(), NULL);
	printf("granted key=%s certs=%d leaf_verifies=%s der_sha256=", k.key_id,
	       sk_X509_num(k.certs), ik_leaf_verifies(k.key, k.certs) ? "yes" : "no");
	ik_hex(md, 32);
	printf("\n");
	if (secret) {
		BIGNUM *d = NULL;
		uint8_t raw[32];

		if (EVP_PKEY_get_bn_param(k.key, OSSL_PKEY_PARAM_PRIV_KEY, &d) == 1 &&
		    BN_bn2binpad(d, raw, 32) == 32) {
			printf("secret_hex=");
			ik_hex(raw, 32);
			printf("\n");
			OPENSSL_cleanse(raw, sizeof(raw));
		}
		BN_clear_free(d);
	}
	ret = 0;
out:
	ERR_print_errors_fp(stderr);
	if (der)
		OPENSSL_secure_clear_free(der, (size_t)der_len);
	inspkey_clear(&k);
	EVP_PKEY_free(wrap);
	return ret;
}
