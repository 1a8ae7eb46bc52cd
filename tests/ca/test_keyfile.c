/* Sealed key files: round trip, wrong secret, tampering, purpose, file mode, no plaintext. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "keyfile.h"
#include "t.h"

static const uint8_t secret_a[32] = "machine A device secret ........";
static const uint8_t secret_b[32] = "machine B device secret ........";

static EVP_PKEY *new_key(void)
{
	return EVP_EC_gen("P-256");
}

static void test_round_trip(void)
{
	EVP_PKEY *k = new_key(), *back = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	T_REQUIRE(k);
	T_EQ(keyfile_seal(k, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &buf, &len), 0);
	T_EQ(keyfile_open(buf, len, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back), 0);
	T_CHECK(back && EVP_PKEY_eq(k, back) == 1);
	EVP_PKEY_free(back);
	OPENSSL_free(buf);
	EVP_PKEY_free(k);
}

static void test_other_machine_refused(void)
{
	EVP_PKEY *k = new_key(), *back = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	T_REQUIRE(k);
	T_EQ(keyfile_seal(k, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &buf, &len), 0);
	T_EQ(keyfile_open(buf, len, KEYFILE_DEVICE, secret_b, sizeof(secret_b), &back),
	     -EKEYREJECTED);
	T_CHECK(back == NULL);
	T_CHECK(strstr(keyfile_strerror(-EKEYREJECTED, KEYFILE_DEVICE), "another machine"));
	OPENSSL_free(buf);
	EVP_PKEY_free(k);
}

static void test_tamper_each_region(void)
{
	EVP_PKEY *k = new_key(), *back = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;
	/* salt, nonce, ciphertext, tag: any flipped bit must fail */
	size_t at[] = {10, 30, KEYFILE_HDR_LEN + 3, 0};

	T_REQUIRE(k);
	T_REQUIRE(keyfile_seal(k, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &buf, &len) == 0);
	at[3] = len - 1;
	for (unsigned i = 0; i < 4; i++) {
		buf[at[i]] ^= 1;
		T_EQ(keyfile_open(buf, len, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back),
		     -EKEYREJECTED);
		buf[at[i]] ^= 1;
	}
	/* a changed length field is caught before decryption */
	buf[KEYFILE_HDR_LEN - 1] ^= 1;
	T_EQ(keyfile_open(buf, len, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back), -EBADMSG);
	buf[KEYFILE_HDR_LEN - 1] ^= 1;
	T_EQ(keyfile_open(buf, len - 1, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back),
	     -EBADMSG);
	T_EQ(keyfile_open(buf, 3, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back), -EBADMSG);
	OPENSSL_free(buf);
	EVP_PKEY_free(k);
}

static void test_purpose_and_short_secret(void)
{
	EVP_PKEY *k = new_key(), *back = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	T_REQUIRE(k);
	T_REQUIRE(keyfile_seal(k, KEYFILE_KEK, secret_a, sizeof(secret_a), &buf, &len) == 0);
	T_EQ(keyfile_open(buf, len, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back), -EPROTO);
	OPENSSL_free(buf);
	T_EQ(keyfile_seal(k, KEYFILE_KEK, secret_a, 8, &buf, &len), -EINVAL);
	T_CHECK(buf == NULL);
	EVP_PKEY_free(k);
}

static void test_file_mode_and_no_plaintext(void)
{
	char dir[] = "/tmp/mtun-keyfile.XXXXXX", path[128];
	EVP_PKEY *k = new_key(), *back = NULL;
	uint8_t *file = NULL, *der = NULL;
	size_t flen = 0;
	int dlen;
	struct stat st;

	T_REQUIRE(k && mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/key.sealed", dir);
	T_EQ(keyfile_write(path, k, KEYFILE_DEVICE, secret_a, sizeof(secret_a)), 0);
	T_REQUIRE(stat(path, &st) == 0);
	T_EQ(st.st_mode & 0777, 0600);
	T_EQ(keyfile_read(path, KEYFILE_DEVICE, secret_a, sizeof(secret_a), &back), 0);
	T_CHECK(back && EVP_PKEY_eq(k, back) == 1);
	EVP_PKEY_free(back);
	back = NULL;
	T_REQUIRE(keyfile_slurp(path, 1 << 16, &file, &flen) == 0);
	dlen = i2d_PrivateKey(k, &der);
	T_REQUIRE(dlen > 32);
	/* neither the DER key nor its trailing private scalar bytes appear in the file */
	T_CHECK(memmem(file, flen, der, (size_t)dlen) == NULL);
	T_CHECK(memmem(file, flen, der + 7, 32) == NULL);
	T_CHECK(memmem(file, flen, "PRIVATE KEY", 11) == NULL);
	T_EQ(keyfile_read(path, KEYFILE_DEVICE, secret_b, sizeof(secret_b), &back), -EKEYREJECTED);
	unlink(path);
	rmdir(dir);
	OPENSSL_free(der);
	free(file);
	EVP_PKEY_free(back);
	EVP_PKEY_free(k);
}

static void test_rsa_key(void)
{
	EVP_PKEY *k = EVP_RSA_gen(2048), *back = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	T_REQUIRE(k);
	T_EQ(keyfile_seal(k, KEYFILE_KEK, secret_a, sizeof(secret_a), &buf, &len), 0);
	T_EQ(keyfile_open(buf, len, KEYFILE_KEK, secret_a, sizeof(secret_a), &back), 0);
	T_CHECK(back && EVP_PKEY_eq(k, back) == 1);
	EVP_PKEY_free(back);
	OPENSSL_free(buf);
	EVP_PKEY_free(k);
}

int main(void)
{
	T_RUN(test_round_trip);
	T_RUN(test_other_machine_refused);
	T_RUN(test_tamper_each_region);
	T_RUN(test_purpose_and_short_secret);
	T_RUN(test_file_mode_and_no_plaintext);
	T_RUN(test_rsa_key);
	return t_done();
}
