/* Sealed private key files: AES-256-GCM, HKDF-SHA256 key, authenticated header. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "keyfile.h"
#include "log.h"

#define KF_VERSION   1
#define KF_ALG       1
#define KF_SALT_LEN  16
#define KF_NONCE_LEN 12
#define KF_KEY_LEN   32

static const char kf_magic[4] = {'M', 'T', 'K', 'F'};

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int kf_derive(const uint8_t *secret, size_t secret_len, const uint8_t *salt,
                     enum keyfile_purpose purpose, uint8_t key[KF_KEY_LEN])
{
	char info[32];
	EVP_KDF *kdf;
	EVP_KDF_CTX *kctx = NULL;
	OSSL_PARAM params[5], *p = params;
	int ret = -EIO;

	if (secret_len < KEYFILE_SECRET_MIN)
		return -EINVAL;
	snprintf(info, sizeof(info), "mtun keyfile v1 purpose %d", (int)purpose);
	kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	if (!kdf)
		return -EIO;
	kctx = EVP_KDF_CTX_new(kdf);
	if (!kctx)
		goto out;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, KF_SALT_LEN);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, strlen(info));
	*p = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, key, KF_KEY_LEN, params) == 1)
		ret = 0;
out:
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return ret;
}

/* AES-256-GCM over in (len) with the header as AAD; enc=1 seals, enc=0 opens. */
static int kf_gcm(int enc, const uint8_t key[KF_KEY_LEN], const uint8_t *hdr, const uint8_t *in,
                  int len, uint8_t *out, uint8_t tag[KEYFILE_TAG_LEN])
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	const uint8_t *nonce = hdr + 8 + KF_SALT_LEN;
	int n, fin, ret = -EIO;

	if (!c)
		return -ENOMEM;
	if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, KF_NONCE_LEN, NULL) != 1 ||
	    EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) != 1 ||
	    EVP_CipherUpdate(c, NULL, &n, hdr, KEYFILE_HDR_LEN) != 1 ||
	    EVP_CipherUpdate(c, out, &n, in, len) != 1)
		goto out;
	if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, KEYFILE_TAG_LEN, tag) != 1)
		goto out;
	if (EVP_CipherFinal_ex(c, out + n, &fin) != 1) {
		ret = enc ? -EIO : -EKEYREJECTED;
		goto out;
	}
	if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, KEYFILE_TAG_LEN, tag) != 1)
		goto out;
	ret = 0;
out:
	EVP_CIPHER_CTX_free(c);
	return ret;
}

int keyfile_seal(EVP_PKEY *pkey, enum keyfile_purpose purpose, const uint8_t *secret,
                 size_t secret_len, uint8_t **out, size_t *out_len)
{
	uint8_t key[KF_KEY_LEN], *der = NULL, *p, *buf = NULL;
	int der_len, ret;
	size_t total;

	*out = NULL;
	der_len = i2d_PrivateKey(pkey, NULL);
	if (der_len <= 0 || der_len > KEYFILE_CT_MAX)
		return -EINVAL;
	der = OPENSSL_secure_malloc(der_len);
	if (!der)
		return -ENOMEM;
	p = der;
	if (i2d_PrivateKey(pkey, &p) != der_len) {
		ret = -EIO;
		goto out;
	}
	total = KEYFILE_HDR_LEN + (size_t)der_len + KEYFILE_TAG_LEN;
	buf = OPENSSL_malloc(total);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(buf, kf_magic, 4);
	buf[4] = KF_VERSION;
	buf[5] = KF_ALG;
	buf[6] = (uint8_t)purpose;
	buf[7] = 0;
	if (RAND_bytes(buf + 8, KF_SALT_LEN + KF_NONCE_LEN) != 1) {
		ret = -EIO;
		goto out;
	}
	put_be32(buf + 8 + KF_SALT_LEN + KF_NONCE_LEN, (uint32_t)der_len);
	ret = kf_derive(secret, secret_len, buf + 8, purpose, key);
	if (ret)
		goto out;
	ret = kf_gcm(1, key, buf, der, der_len, buf + KEYFILE_HDR_LEN,
	             buf + KEYFILE_HDR_LEN + der_len);
	if (ret)
		goto out;
	*out = buf;
	*out_len = total;
	buf = NULL;
out:
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_secure_clear_free(der, der_len);
	OPENSSL_free(buf);
	return ret;
}

int keyfile_open(const uint8_t *buf, size_t len, enum keyfile_purpose purpose,
                 const uint8_t *secret, size_t secret_len, EVP_PKEY **out)
{
	uint8_t key[KF_KEY_LEN], *der = NULL;
	const uint8_t *p;
	uint32_t ct_len;
	int ret;

	*out = NULL;
	if (len < KEYFILE_HDR_LEN + KEYFILE_TAG_LEN || memcmp(buf, kf_magic, 4) != 0 ||
	    buf[4] != KF_VERSION || buf[5] != KF_ALG || buf[7] != 0)
		return -EBADMSG;
	if (buf[6] != (uint8_t)purpose)
		return -EPROTO;
	ct_len = get_be32(buf + 8 + KF_SALT_LEN + KF_NONCE_LEN);
	if (ct_len == 0 || ct_len > KEYFILE_CT_MAX ||
	    len != KEYFILE_HDR_LEN + (size_t)ct_len + KEYFILE_TAG_LEN)
		return -EBADMSG;
	ret = kf_derive(secret, secret_len, buf + 8, purpose, key);
	if (ret)
		return ret;
	der = OPENSSL_secure_malloc(ct_len);
	if (!der) {
		ret = -ENOMEM;
		goto out;
	}
	ret = kf_gcm(0, key, buf, buf + KEYFILE_HDR_LEN, (int)ct_len, der,
	             (uint8_t *)buf + KEYFILE_HDR_LEN + ct_len);
	if (ret)
		goto out;
	p = der;
	*out = d2i_AutoPrivateKey(NULL, &p, ct_len);
	if (!*out)
		ret = -EBADMSG;
out:
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_secure_clear_free(der, ct_len);
	return ret;
}

int keyfile_write_atomic(const char *path, const void *buf, size_t len, unsigned mode)
{
	char tmp[PATH_MAX], dir[PATH_MAX], *slash;
	const uint8_t *p = buf;
	int fd = -1, dfd, ret = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, mode) < 0)
		goto err;
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto err;
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) < 0)
		goto err;
	if (close(fd) < 0) {
		fd = -1;
		goto err;
	}
	fd = -1;
	if (rename(tmp, path) < 0)
		goto err;
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		snprintf(dir, sizeof(dir), ".");
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
err:
	ret = -errno;
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return ret;
}

int keyfile_slurp(const char *path, size_t max, uint8_t **out, size_t *len)
{
	uint8_t *buf = NULL;
	size_t have = 0;
	struct stat st;
	int fd, ret = 0;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
		ret = S_ISREG(st.st_mode) ? -EFBIG : -EINVAL;
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	while (have < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + have, (size_t)st.st_size - have);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			goto out;
		}
		if (n == 0)
			break;
		have += (size_t)n;
	}
	buf[have] = '\0';
	*out = buf;
	*len = have;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return ret;
}

int keyfile_write(const char *path, EVP_PKEY *pkey, enum keyfile_purpose purpose,
                  const uint8_t *secret, size_t secret_len)
{
	uint8_t *buf;
	size_t len;
	int ret;

	ret = keyfile_seal(pkey, purpose, secret, secret_len, &buf, &len);
	if (ret)
		return ret;
	ret = keyfile_write_atomic(path, buf, len, 0600);
	OPENSSL_free(buf);
	return ret;
}

int keyfile_read(const char *path, enum keyfile_purpose purpose, const uint8_t *secret,
                 size_t secret_len, EVP_PKEY **out)
{
	uint8_t *buf;
	size_t len;
	int ret;

	*out = NULL;
	ret = keyfile_slurp(path, KEYFILE_HDR_LEN + KEYFILE_CT_MAX + KEYFILE_TAG_LEN, &buf, &len);
	if (ret)
		return ret;
	ret = keyfile_open(buf, len, purpose, secret, secret_len, out);
	free(buf);
	return ret;
}

const char *keyfile_strerror(int err, enum keyfile_purpose purpose)
{
	switch (err) {
	case -EKEYREJECTED:
		return purpose == KEYFILE_DEVICE
		           ? "key file was sealed on another machine (device fingerprint differs)"
		           : "key-encryption secret does not open the sealed key (wrong secret)";
	case -EBADMSG:
		return "not an mtun sealed key file, or it is damaged";
	case -EPROTO:
		return "sealed key is for another purpose (device key vs CA key)";
	case -EFBIG:
		return "key file too large";
	default:
		return strerror(-err);
	}
}
