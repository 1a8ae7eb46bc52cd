/*
 * Leaf minting rate for fresh hostnames with P-256 and RSA-2048 intermediates (leaf keys
 * prepared ahead, not timed), beside the raw signature rate of the same key in this run.
 * Rates are per CPU-second of this thread, as `openssl speed` counts them, so that other
 * load on the machine does not skew them. Usage: bench_mint [CPU-seconds per key type]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509v3.h>

#include "inspect.h"
#include "log.h"
#include "secmem.h"

#define BATCH 500

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static X509 *self_signed_ca(EVP_PKEY *key)
{
	X509 *x = X509_new();
	X509V3_CTX ctx;
	X509_EXTENSION *e;
	static const struct {
		int nid;
		const char *value;
	} exts[] = {
	    {NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
	    {NID_key_usage, "critical,keyCertSign"},
	    {NID_subject_key_identifier, "hash"},
	};
	size_t i;

	if (!x)
		return NULL;
	X509_set_version(x, X509_VERSION_3);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"bench intermediate", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_gmtime_adj(X509_getm_notBefore(x), -86400);
	X509_gmtime_adj(X509_getm_notAfter(x), 30 * 86400);
	X509_set_pubkey(x, key);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	for (i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
		e = X509V3_EXT_conf_nid(NULL, &ctx, exts[i].nid, exts[i].value);
		if (!e || X509_add_ext(x, e, -1) != 1) {
			X509_EXTENSION_free(e);
			X509_free(x);
			return NULL;
		}
		X509_EXTENSION_free(e);
	}
	if (X509_sign(x, key, EVP_sha256()) <= 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* n signatures over a SHA-256-sized digest, as `openssl speed` makes them; seconds taken. */
static double raw_signs(EVP_PKEY_CTX *ctx, int n)
{
	unsigned char md[32] = {1}, sig[512];
	double t0 = now_s();
	int i;

	for (i = 0; i < n; i++) {
		size_t len = sizeof(sig);

		if (EVP_PKEY_sign(ctx, sig, &len, md, sizeof(md)) <= 0)
			return -1;
	}
	return now_s() - t0;
}

/* Mint batches and raw-signature batches alternate, so that load drift hits both alike. */
static int bench(const char *name, EVP_PKEY *ca_key, double seconds)
{
	EVP_PKEY_CTX *sctx = EVP_PKEY_CTX_new(ca_key, NULL);
	X509 *ca = self_signed_ca(ca_key);
	double timed = 0, raw_timed = 0, prep_timed = 0, t;
	struct mint *m = NULL;
	long n = 0;
	char host[64];
	int err = -EIO;

	if (!ca || !sctx || EVP_PKEY_sign_init(sctx) <= 0 ||
	    EVP_PKEY_CTX_set_signature_md(sctx, EVP_sha256()) <= 0)
		goto out;
	err = -ENOMEM;
	if (EVP_PKEY_up_ref(ca_key) != 1)
		goto out;
	err = mint_new(ca_key, ca, BATCH * 4, BATCH, &m);
	if (err < 0) {
		EVP_PKEY_free(ca_key);
		goto out;
	}
	while (timed < seconds) {
		double t0;
		int i;

		t0 = now_s();
		err = mint_pool_fill(m); /* leaf keys prepared ahead: timed apart */
		if (err < 0)
			goto out;
		prep_timed += now_s() - t0;
		t0 = now_s();
		for (i = 0; i < BATCH; i++) {
			X509 *leaf;
			EVP_PKEY *key;

			snprintf(host, sizeof(host), "site%ld.bench.example", n++);
			err = mint_leaf(m, host, &leaf, &key);
			if (err < 0)
				goto out;
			X509_free(leaf);
			EVP_PKEY_free(key);
		}
		timed += now_s() - t0;
		t = raw_signs(sctx, BATCH);
		if (t < 0) {
			err = -EIO;
			goto out;
		}
		raw_timed += t;
	}
	/* prep_us: the pool's work per leaf (key pair, certificate body, evicted leaves freed) */
	printf("bench=inspect op=mint ca_key=%s mints=%ld mints_per_s=%.0f raw_sign_per_s=%.0f "
	       "ratio=%.3f prep_us=%.1f\n",
	       name, n, (double)n / timed, (double)n / raw_timed, raw_timed / timed,
	       prep_timed / (double)n * 1e6);
	fflush(stdout);
out:
	if (err < 0)
		fprintf(stderr, "bench_mint: %s: %s\n", name, strerror(-err));
	mint_free(m);
	X509_free(ca);
	EVP_PKEY_CTX_free(sctx);
	return err;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 2.0;
	EVP_PKEY *p256, *rsa;
	int err;

	log_init("bench_mint", LOG_LVL_WARN);
	if (seconds <= 0 || seconds > 600) {
		fprintf(stderr, "usage: bench_mint [seconds per key type, default 2]\n");
		return 2;
	}
	/* as in the proxy: leaf keys come from the secure heap */
	err = secmem_init(1 << 20, 64, 1);
	if (err < 0)
		fprintf(stderr, "bench_mint: secmem: %s\n", strerror(-err));
	p256 = EVP_EC_gen("P-256");
	rsa = EVP_RSA_gen(2048);
	if (!p256 || !rsa)
		return 1;
	err = bench("p256", p256, seconds);
	if (err == 0)
		err = bench("rsa2048", rsa, seconds);
	EVP_PKEY_free(p256);
	EVP_PKEY_free(rsa);
	secmem_fini();
	return err < 0 ? 1 : 0;
}
