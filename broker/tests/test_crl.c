/* Tests for broker/crl.c: a CRL's revoked serials as the broker looks them up. */
#include <errno.h>

#include <openssl/bn.h>
#include <openssl/x509.h>

#include "broker.h"
#include "t.h"

/* crl.c closes live sessions through the daemon; not reached here. */
void bpeer_drop(struct bpeer *p, enum mt_status st, const char *reason)
{
	(void)p;
	(void)st;
	(void)reason;
}

static ASN1_INTEGER *serial_hex(const char *hex)
{
	BIGNUM *bn = NULL;
	ASN1_INTEGER *a = NULL;

	if (BN_hex2bn(&bn, hex) > 0)
		a = BN_to_ASN1_INTEGER(bn, NULL);
	BN_free(bn);
	return a;
}

static X509_CRL *crl_of(const char *const *hex, size_t n)
{
	X509_CRL *crl = X509_CRL_new();

	for (size_t i = 0; crl && i < n; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		ASN1_INTEGER *s = serial_hex(hex[i]);
		ASN1_TIME *t = ASN1_TIME_set(NULL, 1795392000);

		if (!r || !s || !t || !X509_REVOKED_set_serialNumber(r, s) ||
		    !X509_REVOKED_set_revocationDate(r, t) || !X509_CRL_add0_revoked(crl, r)) {
			X509_REVOKED_free(r);
			X509_CRL_free(crl);
			crl = NULL;
		}
		ASN1_INTEGER_free(s);
		ASN1_TIME_free(t);
	}
	return crl;
}

static bool listed(const struct bd_serial *v, size_t n, const char *hex)
{
	ASN1_INTEGER *a = serial_hex(hex);
	struct bd_serial s;

	if (!a)
		return false;
	bd_serial_from_asn1(a, &s);
	ASN1_INTEGER_free(a);
	return bd_serial_listed(v, n, &s);
}

static void revoked_serials_are_found(void)
{
	static const char *const rev[] = {"7f3a9c", "01", "100",
	                                  "4f0e1d2c3b4a59687766554433221100ffeeddcc"};
	X509_CRL *crl = crl_of(rev, 4);
	struct bd_serial *v = NULL;
	size_t n = 0;

	T_REQUIRE(crl);
	T_EQ(bd_crl_serials(crl, &v, &n), 0);
	T_EQ(n, 4);
	for (size_t i = 0; i < 4; i++)
		T_CHECK(listed(v, n, rev[i]));
	/* Leading zeros do not make another serial. */
	T_CHECK(listed(v, n, "0001"));
	T_CHECK(!listed(v, n, "02"));
	T_CHECK(!listed(v, n, "7f3a9d"));
	T_CHECK(!listed(v, n, "ff"));
	T_CHECK(!listed(v, n, "4f0e1d2c3b4a59687766554433221100ffeeddcd"));
	free(v);
	X509_CRL_free(crl);
}

static void empty_crl_revokes_nothing(void)
{
	X509_CRL *crl = crl_of(NULL, 0);
	struct bd_serial *v = (struct bd_serial *)1;
	size_t n = 7;

	T_REQUIRE(crl);
	T_EQ(bd_crl_serials(crl, &v, &n), 0);
	T_EQ(n, 0);
	T_CHECK(v == NULL);
	T_CHECK(!listed(v, n, "01"));
	X509_CRL_free(crl);
}

static void many_serials(void)
{
	char **hex = calloc(5000, sizeof(*hex));
	X509_CRL *crl;
	struct bd_serial *v = NULL;
	size_t n = 0, found = 0;

	T_REQUIRE(hex);
	for (size_t i = 0; i < 5000; i++) {
		hex[i] = malloc(16);
		T_REQUIRE(hex[i]);
		snprintf(hex[i], 16, "%zx", (i * 7919 + 3) * 2); /* even numbers only */
	}
	crl = crl_of((const char *const *)hex, 5000);
	T_REQUIRE(crl);
	T_EQ(bd_crl_serials(crl, &v, &n), 0);
	T_EQ(n, 5000);
	for (size_t i = 0; i < 5000; i++) {
		char odd[16];

		found += listed(v, n, hex[i]);
		snprintf(odd, sizeof(odd), "%zx", (i * 7919 + 3) * 2 + 1);
		T_CHECK(!listed(v, n, odd));
		free(hex[i]);
	}
	T_EQ(found, 5000);
	free(hex);
	free(v);
	X509_CRL_free(crl);
}

int main(void)
{
	T_RUN(revoked_serials_are_found);
	T_RUN(empty_crl_revokes_nothing);
	T_RUN(many_serials);
	return t_done();
}
