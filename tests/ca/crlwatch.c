/* Test tool: subscribes to the tenant's CRL as an enrolled broker and prints each CRL. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509v3.h>

#include "enroll.h"
#include "log.h"

static int remaining = 2;

static int print_crl(X509_CRL *crl, void *arg)
{
	STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED(crl);
	ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);

	printf("crl number=%ld revoked=", num ? ASN1_INTEGER_get(num) : -1L);
	for (int i = 0; i < sk_X509_REVOKED_num(rev); i++) {
		BIGNUM *bn = ASN1_INTEGER_to_BN(
		    X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(rev, i)), NULL);
		char *hex = bn ? BN_bn2hex(bn) : NULL;

		printf("%s%s", i ? "," : "", hex ? hex : "?");
		OPENSSL_free(hex);
		BN_free(bn);
	}
	printf("\n");
	fflush(stdout);
	ASN1_INTEGER_free(num);
	return --remaining > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'I'},
	    {"count", required_argument, NULL, 'n'},
	    {NULL, 0, NULL, 0},
	};
	const char *dir = NULL, *src = NULL;
	int opt, ret;

	log_init("crlwatch", LOG_LVL_INFO);
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (opt == 's')
			dir = optarg;
		else if (opt == 'I')
			src = optarg;
		else if (opt == 'n')
			remaining = atoi(optarg);
		else
			return 2;
	}
	if (!dir || remaining < 1) {
		fprintf(stderr, "usage: %s --state DIR [--identity-source DIR] [--count N]\n",
		        argv[0]);
		return 2;
	}
	ret = enroll_crl_subscribe(dir, src, print_crl, NULL);
	return ret == 1 ? 0 : 1;
}
