/* Asymmetric envelopes (X25519, HKDF-SHA256, AES-256-GCM) for inspection keys. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "envelope.h"
#include "log.h"

#define ENVELOPE_INFO    "mtun envelope v1"
#define ENVELOPE_PEM_MAX 4096

static int envelope_raw_pub(EVP_PKEY *k, uint8_t out[ENVELOPE_PUB_LEN])
{
	size_t n = ENVELOPE_PUB_LEN;

	if (!k || EVP_PKEY_get_base_id(k) != EVP_PKEY_X25519)
		return -EINVAL;
	if (EVP_PKEY_get_raw_public_key(k, out, &n) != 1 || n != ENVELOPE_PUB_LEN)
		return -EINVAL;
	return 0;
}

/* X25519(priv, peer) then HKDF into a 32-byte AES key. */
static int envelope_derive(EVP_PKEY *priv, EVP_PKEY *peer, const uint8_t eph[ENVELOPE_PUB_LEN],
                           const uint8_t rcpt[ENVELOPE_PUB_LEN], uint8_t key[32])
{
	uint8_t shared[32], info[sizeof(ENVELOPE_INFO) - 1 + 2 * ENVELOPE_PUB_LEN];
	size_t slen = sizeof(shared);
	EVP_PKEY_CTX *dc = NULL, *kc = NULL;
	int ret = -EBADMSG;

	dc = EVP_PKEY_CTX_new(priv, NULL);
	if (!dc || EVP_PKEY_derive_init(dc) != 1 || EVP_PKEY_derive_set_peer(dc, peer) != 1 ||
	    EVP_PKEY_derive(dc, shared, &slen) != 1 || slen != sizeof(shared))
		goto out;
	memcpy(info, ENVELOPE_INFO, sizeof(ENVELOPE_INFO) - 1);
	memcpy(info + sizeof(ENVELOPE_INFO) - 1, eph, ENVELOPE_PUB_LEN);
	memcpy(info + sizeof(ENVELOPE_INFO) - 1 + ENVELOPE_PUB_LEN, rcpt, ENVELOPE_PUB_LEN);
	kc = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	slen = 32;
	if (!kc || EVP_PKEY_derive_init(kc) != 1 ||
	    EVP_PKEY_CTX_set_hkdf_md(kc, EVP_sha256()) != 1 ||
	    EVP_PKEY_CTX_set1_hkdf_key(kc, shared, sizeof(shared)) != 1 ||
	    EVP_PKEY_CTX_add1_hkdf_info(kc, info, sizeof(info)) != 1 ||
	    EVP_PKEY_derive(kc, key, &slen) != 1 || slen != 32)
		goto out;
	ret = 0;
out:
	OPENSSL_cleanse(shared, sizeof(shared));
	EVP_PKEY_CTX_free(dc);
	EVP_PKEY_CTX_free(kc);
	ERR_clear_error();
	return ret;
}

static int envelope_ad_put(EVP_CIPHER_CTX *c, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	uint8_t l[2] = {(uint8_t)(n >> 8), (uint8_t)n};
	int out;

	if (n > ENVELOPE_AD_MAX)
		return -EINVAL;
	if (EVP_CipherUpdate(c, NULL, &out, l, 2) != 1)
		return -EINVAL;
	if (n && EVP_CipherUpdate(c, NULL, &out, (const uint8_t *)s, (int)n) != 1)
		return -EINVAL;
	return 0;
}

/* Sets key, nonce and the whole associated data on an encrypt (enc 1) or decrypt context. */
static int envelope_gcm_init(EVP_CIPHER_CTX *c, int enc, const uint8_t key[32], const uint8_t *hdr,
                             const struct envelope_ad *ad)
{
	int out;

	if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, ENVELOPE_NONCE_LEN, NULL) != 1 ||
	    EVP_CipherInit_ex(c, NULL, NULL, key, hdr + ENVELOPE_HDR_LEN - ENVELOPE_NONCE_LEN,
	                      enc) != 1 ||
	    EVP_CipherUpdate(c, NULL, &out, hdr, ENVELOPE_HDR_LEN) != 1)
		return -EINVAL;
	if (envelope_ad_put(c, ad->tenant) || envelope_ad_put(c, ad->key_id) ||
	    envelope_ad_put(c, ad->purpose))
		return -EINVAL;
	return 0;
}

static int envelope_ad_check(const struct envelope_ad *ad)
{
	if (!ad || (ad->tenant && strlen(ad->tenant) > ENVELOPE_AD_MAX) ||
	    (ad->key_id && strlen(ad->key_id) > ENVELOPE_AD_MAX) ||
	    (ad->purpose && strlen(ad->purpose) > ENVELOPE_AD_MAX))
		return -EINVAL;
	return 0;
}

int envelope_wrap(EVP_PKEY *recipient, const struct envelope_ad *ad, const uint8_t *pt, size_t len,
                  uint8_t **out, size_t *out_len)
{
	uint8_t rcpt[ENVELOPE_PUB_LEN], key[32], *buf = NULL, *p;
	EVP_PKEY *eph = NULL;
	EVP_CIPHER_CTX *c = NULL;
	size_t n = ENVELOPE_PUB_LEN;
	int ret, outl, finl;

	*out = NULL;
	*out_len = 0;
	if (len == 0 || len > ENVELOPE_PLAIN_MAX || envelope_ad_check(ad))
		return -EINVAL;
	ret = envelope_raw_pub(recipient, rcpt);
	if (ret)
		return ret;
	buf = malloc(ENVELOPE_OVERHEAD + len);
	if (!buf)
		return -ENOMEM;
	ret = -EIO;
	eph = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	if (!eph)
		goto out;
	p = buf;
	memcpy(p, ENVELOPE_MAGIC, 4);
	p[4] = ENVELOPE_VERSION;
	p[5] = ENVELOPE_ALG_X25519;
	if (EVP_PKEY_get_raw_public_key(eph, p + 6, &n) != 1 || n != ENVELOPE_PUB_LEN)
		goto out;
	if (RAND_bytes(p + 6 + ENVELOPE_PUB_LEN, ENVELOPE_NONCE_LEN) != 1)
		goto out;
	if (envelope_derive(eph, recipient, p + 6, rcpt, key))
		goto out;
	c = EVP_CIPHER_CTX_new();
	if (!c || envelope_gcm_init(c, 1, key, buf, ad))
		goto out;
	p = buf + ENVELOPE_HDR_LEN;
	if (EVP_EncryptUpdate(c, p, &outl, pt, (int)len) != 1 || (size_t)outl != len ||
	    EVP_EncryptFinal_ex(c, p + outl, &finl) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, ENVELOPE_TAG_LEN, p + len) != 1)
		goto out;
	*out = buf;
	*out_len = ENVELOPE_OVERHEAD + len;
	buf = NULL;
	ret = 0;
out:
	if (ret)
		log_warnx("envelope: cannot wrap a key");
	OPENSSL_cleanse(key, sizeof(key));
	EVP_CIPHER_CTX_free(c);
	EVP_PKEY_free(eph);
	free(buf);
	ERR_clear_error();
	return ret;
}

int envelope_unwrap(EVP_PKEY *recipient, const struct envelope_ad *ad, const uint8_t *env,
                    size_t len, uint8_t **pt, size_t *pt_len)
{
	uint8_t rcpt[ENVELOPE_PUB_LEN], key[32], tag[ENVELOPE_TAG_LEN], *buf = NULL;
	EVP_PKEY *eph = NULL;
	EVP_CIPHER_CTX *c = NULL;
	size_t n;
	int ret, outl, finl;

	*pt = NULL;
	*pt_len = 0;
	if (envelope_ad_check(ad))
		return -EINVAL;
	if (len < ENVELOPE_OVERHEAD + 1 || len > ENVELOPE_OVERHEAD + ENVELOPE_PLAIN_MAX ||
	    memcmp(env, ENVELOPE_MAGIC, 4) != 0)
		return -EBADMSG;
	if (env[4] != ENVELOPE_VERSION || env[5] != ENVELOPE_ALG_X25519)
		return -EPROTO;
	ret = envelope_raw_pub(recipient, rcpt);
	if (ret)
		return ret;
	n = len - ENVELOPE_OVERHEAD;
	buf = OPENSSL_secure_malloc(n);
	if (!buf)
		return -ENOMEM;
	ret = -EBADMSG;
	eph = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, env + 6, ENVELOPE_PUB_LEN);
	if (!eph || envelope_derive(recipient, eph, env + 6, rcpt, key))
		goto out;
	c = EVP_CIPHER_CTX_new();
	if (!c || envelope_gcm_init(c, 0, key, env, ad))
		goto out;
	memcpy(tag, env + ENVELOPE_HDR_LEN + n, ENVELOPE_TAG_LEN);
	if (EVP_DecryptUpdate(c, buf, &outl, env + ENVELOPE_HDR_LEN, (int)n) != 1 ||
	    (size_t)outl != n ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, ENVELOPE_TAG_LEN, tag) != 1 ||
	    EVP_DecryptFinal_ex(c, buf + outl, &finl) != 1)
		goto out;
	*pt = buf;
	*pt_len = n;
	buf = NULL;
	ret = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	EVP_CIPHER_CTX_free(c);
	EVP_PKEY_free(eph);
	if (buf)
		OPENSSL_secure_clear_free(buf, n);
	ERR_clear_error();
	return ret;
}

void envelope_plain_free(uint8_t *pt, size_t len)
{
	if (pt)
		OPENSSL_secure_clear_free(pt, len);
}

/* Reads at most max-1 bytes of fd into buf with a NUL; -E2BIG beyond. */
static int envelope_read_all(int fd, char *buf, size_t max, size_t *len)
{
	size_t have = 0;
	ssize_t r;

	for (;;) {
		if (have == max - 1)
			return -E2BIG;
		r = read(fd, buf + have, max - 1 - have);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		have += (size_t)r;
	}
	buf[have] = '\0';
	*len = have;
	return 0;
}

int envelope_pub_load(const char *path, EVP_PKEY **out)
{
	char *buf = NULL;
	size_t len = 0;
	BIO *b = NULL;
	FILE *f;
	int ret, fd;

	*out = NULL;
	f = fopen(path, "re");
	if (!f) {
		ret = -errno;
		log_warn("wrapping key: %s", path);
		return ret;
	}
	fd = fileno(f);
	buf = OPENSSL_secure_zalloc(ENVELOPE_PEM_MAX);
	ret = buf ? envelope_read_all(fd, buf, ENVELOPE_PEM_MAX, &len) : -ENOMEM;
	fclose(f);
	if (ret) {
		log_warnx("wrapping key: %s: cannot read it (%s)", path, strerror(-ret));
		goto out;
	}
	/* Whatever the PEM type, a private key here means the CA could unwrap: refuse. */
	if (strstr(buf, "PRIVATE KEY")) {
		log_warnx("wrapping key: %s holds a private key; mtun-ca takes the public key only",
		          path);
		ret = -EPERM;
		goto out;
	}
	ret = -EINVAL;
	b = BIO_new_mem_buf(buf, (int)len);
	if (b)
		*out = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
	if (!*out || EVP_PKEY_get_base_id(*out) != EVP_PKEY_X25519) {
		log_warnx("wrapping key: %s is not an X25519 public key in PEM", path);
		EVP_PKEY_free(*out);
		*out = NULL;
		goto out;
	}
	ret = 0;
out:
	BIO_free(b);
	if (buf)
		OPENSSL_secure_clear_free(buf, ENVELOPE_PEM_MAX);
	ERR_clear_error();
	return ret;
}

int envelope_priv_read(int fd, EVP_PKEY **out)
{
	char *buf = NULL, *env;
	size_t len = 0;
	BIO *b = NULL;
	int ret;

	*out = NULL;
	buf = OPENSSL_secure_zalloc(ENVELOPE_PEM_MAX);
	if (!buf)
		return -ENOMEM;
	if (fd >= 0) {
		ret = envelope_read_all(fd, buf, ENVELOPE_PEM_MAX, &len);
		if (ret) {
			log_warnx("wrapping key: cannot read fd %d: %s", fd, strerror(-ret));
			goto out;
		}
	} else {
		env = getenv(ENVELOPE_KEY_ENV);
		ret = -ENOENT;
		if (!env) {
			log_warnx("wrapping key: neither a key fd nor %s", ENVELOPE_KEY_ENV);
			goto out;
		}
		len = strlen(env);
		ret = -E2BIG;
		if (len >= ENVELOPE_PEM_MAX)
			goto out;
		memcpy(buf, env, len);
		OPENSSL_cleanse(env, len);
		unsetenv(ENVELOPE_KEY_ENV);
	}
	ret = -EINVAL;
	b = BIO_new_mem_buf(buf, (int)len);
	if (b)
		*out = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	if (!*out || EVP_PKEY_get_base_id(*out) != EVP_PKEY_X25519) {
		log_warnx("wrapping key: not an X25519 private key in PEM");
		EVP_PKEY_free(*out);
		*out = NULL;
		goto out;
	}
	ret = 0;
out:
	BIO_free(b);
	OPENSSL_secure_clear_free(buf, ENVELOPE_PEM_MAX);
	ERR_clear_error();
	return ret;
}

int envelope_key_id(EVP_PKEY *key, char out[65])
{
	uint8_t raw[ENVELOPE_PUB_LEN], md[32];
	unsigned int mdlen = 0;
	int ret = envelope_raw_pub(key, raw);

	if (ret)
		return ret;
	if (EVP_Digest(raw, sizeof(raw), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
		return -EIO;
	for (unsigned int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	return 0;
}
