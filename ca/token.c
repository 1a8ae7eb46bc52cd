/* Enrollment tokens: "mtt1.TENANT.SECRET", 256 random bits, stored only as a hash. */
#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "ca.h"

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 32 bytes -> 43 characters, no padding. */
static void token_encode(const uint8_t *in, char *out)
{
	unsigned bits = 0, acc = 0, o = 0;

	for (unsigned i = 0; i < TOKEN_SECRET_LEN; i++) {
		acc = acc << 8 | in[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out[o++] = b64url[(acc >> bits) & 63];
		}
	}
	if (bits)
		out[o++] = b64url[(acc << (6 - bits)) & 63];
	out[o] = '\0';
}

static int token_decode(const char *in, uint8_t *out)
{
	unsigned bits = 0, acc = 0, o = 0;

	if (strlen(in) != 43)
		return -EINVAL;
	for (unsigned i = 0; i < 43; i++) {
		const char *p = strchr(b64url, in[i]);

		if (!p || !in[i])
			return -EINVAL;
		acc = acc << 6 | (unsigned)(p - b64url);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	/* the two padding bits must be zero: one spelling per token */
	return (acc & ((1U << bits) - 1)) ? -EINVAL : 0;
}

static int token_hash(const uint8_t *secret, uint8_t hash[TOKEN_HASH_LEN])
{
	static const char label[] = "mtun enrollment token v1\n";
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned len = 0;
	int ret = -EIO;

	if (!c)
		return -ENOMEM;
	if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, label, sizeof(label) - 1) == 1 &&
	    EVP_DigestUpdate(c, secret, TOKEN_SECRET_LEN) == 1 &&
	    EVP_DigestFinal_ex(c, hash, &len) == 1 && len == TOKEN_HASH_LEN)
		ret = 0;
	EVP_MD_CTX_free(c);
	return ret;
}

int token_generate(const char *tenant, char *out, size_t size, uint8_t hash[TOKEN_HASH_LEN])
{
	uint8_t secret[TOKEN_SECRET_LEN];
	char enc[44];
	int ret = -EIO;

	if (!ident_valid_tenant(tenant))
		return -EINVAL;
	if (RAND_priv_bytes(secret, sizeof(secret)) != 1)
		goto out;
	token_encode(secret, enc);
	if (snprintf(out, size, "mtt1.%s.%s", tenant, enc) >= (int)size) {
		ret = -ENOSPC;
		goto out;
	}
	ret = token_hash(secret, hash);
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	OPENSSL_cleanse(enc, sizeof(enc));
	return ret;
}

int token_parse(const char *tok, char tenant[IDENT_TENANT_MAX + 1], uint8_t hash[TOKEN_HASH_LEN])
{
	uint8_t secret[TOKEN_SECRET_LEN];
	const char *a, *b;
	int ret;

	if (strnlen(tok, TOKEN_TEXT_MAX + 1) > TOKEN_TEXT_MAX || strncmp(tok, "mtt1.", 5) != 0)
		return -EINVAL;
	a = tok + 5;
	b = strchr(a, '.');
	if (!b || b == a || (size_t)(b - a) > IDENT_TENANT_MAX)
		return -EINVAL;
	memcpy(tenant, a, (size_t)(b - a));
	tenant[b - a] = '\0';
	if (!ident_valid_tenant(tenant))
		return -EINVAL;
	ret = token_decode(b + 1, secret);
	if (!ret)
		ret = token_hash(secret, hash);
	OPENSSL_cleanse(secret, sizeof(secret));
	return ret;
}
