/* mtun-ca bench: signatures and enrollments per second, as bench=ca key=value lines. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ca.h"
#include "log.h"

int ca_bench(int count);

static double ca_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int ca_bench_sign(EVP_PKEY *key)
{
	uint8_t msg[32] = {1}, sig[128];
	double t0 = ca_now(), t;
	long n = 0;

	do {
		for (int i = 0; i < 100; i++) {
			EVP_MD_CTX *c = EVP_MD_CTX_new();
			size_t len = sizeof(sig);

			if (!c || EVP_DigestSignInit(c, NULL, EVP_sha256(), NULL, key) != 1 ||
			    EVP_DigestSign(c, sig, &len, msg, sizeof(msg)) != 1) {
				EVP_MD_CTX_free(c);
				return -EIO;
			}
			EVP_MD_CTX_free(c);
			n++;
		}
		t = ca_now() - t0;
	} while (t < 1.0);
	printf("bench=ca op=sign alg=p256 sigs=%ld seconds=%.3f sigs_per_s=%.0f\n", n, t,
	       (double)n / t);
	return 0;
}

/* One enrollment through the request handler: token, key, CSR, checks, signature, commit. */
static int ca_bench_enroll_one(struct ca_server *s, const char *tenant)
{
	char sub[IDENT_TENANT_MAX + 1], tok[TOKEN_TEXT_MAX + 1];
	struct enroll_buf b = {0}, resp = {0};
	struct enroll_msg m;
	struct ident id = {.role = MT_ROLE_CONNECTOR};
	static unsigned seq;
	EVP_PKEY *key = NULL;
	X509_REQ *req = NULL;
	int ret;

	snprintf(id.tenant, sizeof(id.tenant), "%s", tenant);
	snprintf(id.id, sizeof(id.id), "bench-%u", seq++);
	ret = enroll_buf_init(&b, ENROLL_T_TOKEN_CREATE);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, tenant);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_ROLE, "connector");
	if (!ret)
		ret = ca_handle(s, CA_FROM_ADMIN, b.p, b.len, NULL, &resp, sub);
	if (ret || enroll_msg_parse(resp.p, resp.len, ENROLL_MSG_MAX, &m) ||
	    enroll_msg_str(&m, ET_TOKEN, tok, sizeof(tok))) {
		ret = -EIO;
		goto out;
	}
	enroll_buf_free(&b);
	enroll_buf_free(&resp);
	key = EVP_EC_gen("P-256");
	ret = key ? enroll_csr_make(key, &id, &req) : -EIO;
	if (!ret)
		ret = enroll_request_build(&b, ENROLL_T_ENROLL, req, tok);
	if (!ret)
		ret = ca_handle(s, CA_FROM_TLS, b.p, b.len, NULL, &resp, sub);
	if (!ret && (enroll_msg_parse(resp.p, resp.len, ENROLL_MSG_MAX, &m) ||
	             !enroll_msg_has(&m, ET_CHAIN)))
		ret = -EIO;
out:
	enroll_buf_free(&b);
	enroll_buf_free(&resp);
	X509_REQ_free(req);
	EVP_PKEY_free(key);
	return ret;
}

int ca_bench(int count)
{
	static const char kek_text[] = "bench key-encryption secret 0123456789";
	struct ca_secret kek = {(uint8_t *)kek_text, sizeof(kek_text) - 1};
	char dir[] = "/tmp/mtun-ca-bench.XXXXXX", path[64];
	struct ca_server srv;
	struct ca_db *db = NULL;
	double t0, t;
	int ret;

	log_set_level(LOG_LVL_ERR);
	if (!mkdtemp(dir))
		return -errno;
	snprintf(path, sizeof(path), "%s/ca.db", dir);
	ret = ca_db_open(path, &db);
	if (!ret)
		ret = ca_service_ensure(db, &kek);
	if (!ret)
		ret = ca_tenant_init(db, &kek, "bench", CA_KEY_P256);
	if (!ret)
		ret = ca_server_init(&srv, db, &kek);
	if (ret)
		goto out;
	const struct ca_tenant *tn = ca_server_tenant(&srv, "bench");

	ret = tn ? ca_bench_sign(tn->issuer_key) : -ENOENT;
	t0 = ca_now();
	for (int i = 0; !ret && i < count; i++)
		ret = ca_bench_enroll_one(&srv, "bench");
	t = ca_now() - t0;
	if (!ret)
		printf("bench=ca op=enroll alg=p256 path=handler enrollments=%d seconds=%.3f "
		       "enroll_per_s=%.1f\n",
		       count, t, count / t);
	ca_server_free(&srv);
out:
	ca_db_close(db);
	for (unsigned i = 0; i < 3; i++) {
		static const char *const sfx[] = {"", "-wal", "-shm"};
		char f[80];

		snprintf(f, sizeof(f), "%s%s", path, sfx[i]);
		unlink(f);
	}
	rmdir(dir);
	return ret;
}
