/*
 * Asymmetric envelopes for keys handed to inspection nodes: the CA wraps with the nodes'
 * X25519 public key only, so what it stores it cannot open; nodes unwrap in secure memory.
 *
 * Envelope v1: "MTEV" | version=1 | alg=1 | ephemeral X25519 public (32) | nonce (12) |
 *              AES-256-GCM ciphertext | tag (16)
 * key = HKDF-SHA256(ikm = X25519(eph, recipient), salt = "", info = "mtun envelope v1" |
 *       eph pub | recipient pub); associated data = the 18-byte header, then tenant,
 *       key id and purpose, each as u16 length | bytes.
 */
#ifndef MTUN_ENVELOPE_H
#define MTUN_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define ENVELOPE_MAGIC      "MTEV"
#define ENVELOPE_VERSION    1
#define ENVELOPE_ALG_X25519 1
#define ENVELOPE_PUB_LEN    32
#define ENVELOPE_NONCE_LEN  12
#define ENVELOPE_TAG_LEN    16
#define ENVELOPE_HDR_LEN    (4 + 1 + 1 + ENVELOPE_PUB_LEN + ENVELOPE_NONCE_LEN)
#define ENVELOPE_OVERHEAD   (ENVELOPE_HDR_LEN + ENVELOPE_TAG_LEN)
#define ENVELOPE_PLAIN_MAX  (16 * 1024)
#define ENVELOPE_AD_MAX     255             /* each of tenant, key id, purpose */
#define ENVELOPE_KEY_ENV    "MTUN_WRAP_KEY" /* nodes: the private key PEM, unset once read */

/* What an envelope is bound to; a mismatch on unwrap is -EBADMSG like any tampering. */
struct envelope_ad {
	const char *tenant;
	const char *key_id;
	const char *purpose;
};

/* Wraps pt (at most ENVELOPE_PLAIN_MAX) to an X25519 public key; *out is malloc'd. */
int envelope_wrap(EVP_PKEY *recipient, const struct envelope_ad *ad, const uint8_t *pt, size_t len,
                  uint8_t **out, size_t *out_len);
/*
 * Opens an envelope with the recipient's private key; *pt is in OpenSSL's secure heap
 * (free it with envelope_plain_free). -EBADMSG for a wrong key, tampering or other ad;
 * -EPROTO for an unknown version or algorithm.
 */
int envelope_unwrap(EVP_PKEY *recipient, const struct envelope_ad *ad, const uint8_t *env,
                    size_t len, uint8_t **pt, size_t *pt_len);
void envelope_plain_free(uint8_t *pt, size_t len);

/*
 * The CA's side: an X25519 PUBLIC key in PEM. A file holding any private key is refused
 * with -EPERM (the CA must never be able to open what it stores).
 */
int envelope_pub_load(const char *path, EVP_PKEY **out);
/* The nodes' side: the private key PEM from fd (if >= 0) or ENVELOPE_KEY_ENV (then unset). */
int envelope_priv_read(int fd, EVP_PKEY **out);
/* SHA-256 of the recipient's raw public key as 64 hex: names the wrapping key. */
int envelope_key_id(EVP_PKEY *key, char out[65]);

#endif
