/*
 * Sealed private keys: AES-256-GCM under a key derived with HKDF-SHA256 from a secret
 * (an agent's device secret, or the CA's key-encryption secret). No plaintext on disk.
 */
#ifndef MTUN_KEYFILE_H
#define MTUN_KEYFILE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/*
 * Layout (all integers big-endian), the first KEYFILE_HDR_LEN bytes are authenticated:
 *   "MTKF" | version=1 | alg=1 (HKDF-SHA256, AES-256-GCM) | purpose | 0 |
 *   salt[16] | nonce[12] | ct_len u32 | ciphertext (PKCS#8 DER) | tag[16]
 */
#define KEYFILE_HDR_LEN    40
#define KEYFILE_TAG_LEN    16
#define KEYFILE_CT_MAX     8192
#define KEYFILE_SECRET_MIN 16

enum keyfile_purpose {
	KEYFILE_DEVICE = 1, /* secret: the machine's device secret (lib/device.h) */
	KEYFILE_KEK = 2,    /* secret: the CA's key-encryption secret */
};

/* Seals pkey into a fresh buffer (*out, free with OPENSSL_free). 0 or -errno. */
int keyfile_seal(EVP_PKEY *pkey, enum keyfile_purpose purpose, const uint8_t *secret,
                 size_t secret_len, uint8_t **out, size_t *out_len);
/*
 * Opens a sealed key. -EBADMSG: not a key file or malformed; -EKEYREJECTED: the secret
 * does not open it (another machine, another KEK); -EPROTO: wrong purpose.
 */
int keyfile_open(const uint8_t *buf, size_t len, enum keyfile_purpose purpose,
                 const uint8_t *secret, size_t secret_len, EVP_PKEY **out);

/* Writes atomically (temp file, fsync, rename), mode 0600. */
int keyfile_write(const char *path, EVP_PKEY *pkey, enum keyfile_purpose purpose,
                  const uint8_t *secret, size_t secret_len);
/* Reads and opens path; errors as keyfile_open, or -errno from the file system. */
int keyfile_read(const char *path, enum keyfile_purpose purpose, const uint8_t *secret,
                 size_t secret_len, EVP_PKEY **out);

/* Writes len bytes atomically to path with mode (temp, fsync, rename, fsync dir). */
int keyfile_write_atomic(const char *path, const void *buf, size_t len, unsigned mode);
/* Reads a whole file of at most max bytes into *out (free with free()). */
int keyfile_slurp(const char *path, size_t max, uint8_t **out, size_t *len);

/* A message for an error of keyfile_open/keyfile_read. */
const char *keyfile_strerror(int err, enum keyfile_purpose purpose);

#endif
