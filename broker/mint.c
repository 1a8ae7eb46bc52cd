/*
 * Leaf certificates for intercepted sites, minted in RAM by a tenant's intermediate with one
 * signature each, from P-256 key pairs prepared ahead, and kept in a bounded LRU cache.
 *
 * Minting is DER-template minting: each pooled key comes with its certificate object and the
 * DER of its own parts (serial, public key, SKI), made ahead; a mint writes the TBS from
 * those and the minter's fixed parts plus the name and validity, hashes and signs it, patches
 * the same name and validity into the object in place, and installs the TBS as the object's
 * cached encoding, so that neither minting nor the TLS layer's i2d_X509 re-encodes it.
 * Where that encoding cannot be reached (see tbs_enc_locate), the object is re-encoded
 * instead: the same certificate, slower. Leaf keys are legacy EC_KEYs: OpenSSL 3.0 encodes a
 * provider key's public half through OSSL_ENCODER, some 20 times the cost.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1t.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "inspect.h"
#include "log.h"

#define MINT_CN_MAX      64   /* ub-common-name */
#define MINT_REFRESH_SEC 3600 /* re-mint a cached leaf this close to its notAfter */
#define MINT_PREP_DER    160  /* serial (<= 19), P-256 SPKI (91) and SKI extension (31) */
#define MINT_FIXED_DER   1024 /* version, signature algorithm, issuer, fixed extensions */
#define MINT_TBS_MAX     (MINT_FIXED_DER + MINT_PREP_DER + 2 * PROXY_HOST_MAX + 128)

struct mint_entry {
	struct mint_entry *lru_prev, *lru_next; /* most recently used at the head */
	struct mint_entry *hash_next;
	uint64_t hash;
	time_t expires;
	X509 *cert;
	EVP_PKEY *key;
	char host[PROXY_HOST_MAX + 1];
};

/*
 * A leaf key pair and its certificate object (placeholder name, validity and SAN), made
 * ahead of the name it will serve, with the DER of its serial, public key and SKI.
 */
struct mint_prep {
	EVP_PKEY *key;
	X509 *x;
	uint8_t der[MINT_PREP_DER];
	uint16_t serial_len, spki_len, ski_len;
};

struct mint {
	EVP_PKEY *ca_key;
	X509 *ca_cert;
	X509_EXTENSION *ext_bc, *ext_ku, *ext_eku, *ext_aki; /* the same in every leaf */
	EVP_PKEY_CTX *sign_ctx;                              /* holds a reference to ca_key */
	EVP_MD *md;
	int sig_nid, sig_param; /* the signatureAlgorithm: OID, and V_ASN1_NULL or UNDEF */
	int sig_max;            /* the intermediate's longest signature: kept for the pool */
	/* DER of the TBS parts every leaf shares: before and after the serial, the fixed
	 * extensions before the SKI (basicConstraints, keyUsage, extKeyUsage) and after (AKI) */
	uint8_t fixed[MINT_FIXED_DER];
	size_t version_len, algiss_len, exts_a_len, aki_len;
	time_t v_now, v_expires; /* leaf validity, computed for the second v_now */
	ASN1_TIME *v_nb, *v_na;
	uint8_t v_der[64]; /* the Validity SEQUENCE */
	size_t v_der_len;

	struct mint_entry **buckets;
	size_t nbuckets, cache_max, cached;
	struct mint_entry *lru_head, *lru_tail;
	uint64_t hash_seed;

	pthread_mutex_t pool_lock; /* pool and retired */
	struct mint_prep *pool;
	size_t pool_max, pool_count;
	struct mint_entry *retired; /* evicted leaves, freed by mint_pool_fill */
	size_t retired_count;

	struct mint_stats st;
};

/* Where an X509 keeps its TBS's cached encoding: found once from OpenSSL's item tables. */
static pthread_once_t tbs_enc_once = PTHREAD_ONCE_INIT;
static long tbs_enc_offset = -1;

static void tbs_enc_locate(void)
{
	const ASN1_ITEM *xit = ASN1_ITEM_rptr(X509), *cit = ASN1_ITEM_rptr(X509_CINF);
	const ASN1_TEMPLATE *tt;
	const ASN1_AUX *aux;

	if (xit->itype != ASN1_ITYPE_SEQUENCE || xit->tcount < 1 ||
	    cit->itype != ASN1_ITYPE_SEQUENCE)
		return;
	tt = &xit->templates[0];
	aux = cit->funcs;
	if (!(tt->flags & ASN1_TFLG_EMBED) || (tt->flags & ASN1_TFLG_SK_MASK) || !tt->item ||
	    tt->item() != cit || !aux || !(aux->flags & ASN1_AFLG_ENCODING) ||
	    tt->offset + (unsigned long)aux->enc_offset + sizeof(ASN1_ENCODING) >
	        (unsigned long)xit->size)
		return;
	tbs_enc_offset = (long)(tt->offset + (unsigned long)aux->enc_offset);
}

static ASN1_ENCODING *tbs_enc(X509 *x)
{
	return tbs_enc_offset < 0 ? NULL : (ASN1_ENCODING *)((char *)x + tbs_enc_offset);
}

static uint64_t host_hash(const struct mint *m, const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ m->hash_seed;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

/* DER writing into a bounded buffer; a write past the end sets over and writes nothing. */
struct der {
	uint8_t *p;
	size_t len, cap;
	bool over;
};

static void der_put(struct der *d, const void *b, size_t n)
{
	if (d->over || n > d->cap - d->len) {
		d->over = true;
		return;
	}
	memcpy(d->p + d->len, b, n);
	d->len += n;
}

static size_t der_hdr_len(size_t len)
{
	return len < 0x80 ? 2 : len < 0x100 ? 3 : 4;
}

/* Tag and definite length; lengths here stay below 64 KiB. */
static void der_hdr(struct der *d, uint8_t tag, size_t len)
{
	uint8_t h[4] = {tag};
	size_t n = 2;

	if (len < 0x80) {
		h[1] = (uint8_t)len;
	} else if (len < 0x100) {
		h[1] = 0x81;
		h[2] = (uint8_t)len;
		n = 3;
	} else if (len < 0x10000) {
		h[1] = 0x82;
		h[2] = (uint8_t)(len >> 8);
		h[3] = (uint8_t)len;
		n = 4;
	} else {
		d->over = true;
		return;
	}
	der_put(d, h, n);
}

/* i2d of obj appended to buf[*len..cap); -EIO when it fails or does not fit. */
#define der_i2d(i2d, obj, buf, cap, len)                                                           \
	({                                                                                         \
		int n_ = i2d(obj, NULL);                                                           \
		unsigned char *p_ = (buf) + *(len);                                                \
		int r_ = -EIO;                                                                     \
		if (n_ > 0 && (size_t)n_ <= (cap) - *(len) && i2d(obj, &p_) == n_) {               \
			*(len) += (size_t)n_;                                                      \
			r_ = 0;                                                                    \
		}                                                                                  \
		r_;                                                                                \
	})

static X509_EXTENSION *ext_conf(X509V3_CTX *ctx, int nid, const char *value)
{
	return X509V3_EXT_conf_nid(NULL, ctx, nid, value);
}

/* One context for all signatures: SHA-256, PKCS#1 v1.5 for RSA, ECDSA for EC. */
static int sign_setup(struct mint *m, EVP_PKEY *ca_key)
{
	if (EVP_PKEY_is_a(ca_key, "EC")) {
		m->sig_nid = NID_ecdsa_with_SHA256;
		m->sig_param = V_ASN1_UNDEF;
	} else if (EVP_PKEY_is_a(ca_key, "RSA")) {
		m->sig_nid = NID_sha256WithRSAEncryption;
		m->sig_param = V_ASN1_NULL;
	} else {
		log_warnx("mint: intermediate key type %s not supported (RSA or EC)",
		          EVP_PKEY_get0_type_name(ca_key));
		return -EINVAL;
	}
	m->md = EVP_MD_fetch(NULL, "SHA256", NULL);
	m->sign_ctx = EVP_PKEY_CTX_new(ca_key, NULL);
	if (!m->md || !m->sign_ctx || EVP_PKEY_sign_init(m->sign_ctx) <= 0 ||
	    EVP_PKEY_CTX_set_signature_md(m->sign_ctx, m->md) <= 0)
		return -EIO;
	if (m->sig_nid == NID_sha256WithRSAEncryption &&
	    EVP_PKEY_CTX_set_rsa_padding(m->sign_ctx, RSA_PKCS1_PADDING) <= 0)
		return -EIO;
	m->sig_max = EVP_PKEY_get_size(ca_key);
	return m->sig_max > 0 ? 0 : -EIO;
}

/* The DER every leaf shares: version, signature algorithm and issuer; fixed extensions. */
static int fixed_setup(struct mint *m)
{
	static const uint8_t version[] = {0xa0, 0x03, 0x02, 0x01, 0x02}; /* [0] v3 */
	X509_ALGOR *alg = X509_ALGOR_new();
	size_t len = sizeof(version);
	int err = -ENOMEM;

	if (!alg)
		return -ENOMEM;
	memcpy(m->fixed, version, sizeof(version));
	m->version_len = len;
	err = -EIO;
	if (X509_ALGOR_set0(alg, OBJ_nid2obj(m->sig_nid), m->sig_param, NULL) != 1 ||
	    der_i2d(i2d_X509_ALGOR, alg, m->fixed, sizeof(m->fixed), &len) < 0 ||
	    der_i2d(i2d_X509_NAME, X509_get_subject_name(m->ca_cert), m->fixed, sizeof(m->fixed),
	            &len) < 0)
		goto out;
	m->algiss_len = len - m->version_len;
	if (der_i2d(i2d_X509_EXTENSION, m->ext_bc, m->fixed, sizeof(m->fixed), &len) < 0 ||
	    der_i2d(i2d_X509_EXTENSION, m->ext_ku, m->fixed, sizeof(m->fixed), &len) < 0 ||
	    der_i2d(i2d_X509_EXTENSION, m->ext_eku, m->fixed, sizeof(m->fixed), &len) < 0)
		goto out;
	m->exts_a_len = len - m->version_len - m->algiss_len;
	if (der_i2d(i2d_X509_EXTENSION, m->ext_aki, m->fixed, sizeof(m->fixed), &len) < 0)
		goto out;
	m->aki_len = len - m->version_len - m->algiss_len - m->exts_a_len;
	err = 0;
out:
	if (err < 0)
		log_warnx("mint: the intermediate's name does not fit a leaf template");
	X509_ALGOR_free(alg);
	return err;
}

int mint_new(EVP_PKEY *ca_key, X509 *ca_cert, size_t cache_max, size_t pool_max, struct mint **out)
{
	X509V3_CTX ctx;
	struct mint *m;
	int err = -ENOMEM;

	*out = NULL;
	if (!ca_key || !ca_cert || cache_max == 0 || cache_max > (1U << 20) ||
	    pool_max > (1U << 16))
		return -EINVAL;
	if (X509_check_private_key(ca_cert, ca_key) != 1 || X509_check_ca(ca_cert) < 1) {
		log_warnx("mint: the intermediate's key does not match it, or it is not a CA");
		return -EINVAL;
	}
	pthread_once(&tbs_enc_once, tbs_enc_locate);
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	pthread_mutex_init(&m->pool_lock, NULL);
	m->cache_max = cache_max;
	m->pool_max = pool_max;
	for (m->nbuckets = 16; m->nbuckets < cache_max; m->nbuckets <<= 1)
		;
	m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
	m->pool = calloc(pool_max ? pool_max : 1, sizeof(*m->pool));
	if (!m->buckets || !m->pool)
		goto fail;
	if (RAND_bytes((unsigned char *)&m->hash_seed, sizeof(m->hash_seed)) != 1)
		goto fail;

	X509V3_set_ctx(&ctx, ca_cert, NULL, NULL, NULL, 0);
	m->ext_bc = ext_conf(&ctx, NID_basic_constraints, "critical,CA:FALSE");
	m->ext_ku = ext_conf(&ctx, NID_key_usage, "critical,digitalSignature");
	m->ext_eku = ext_conf(&ctx, NID_ext_key_usage, "serverAuth");
	m->ext_aki = ext_conf(&ctx, NID_authority_key_identifier, "keyid:always");
	if (!m->ext_bc || !m->ext_ku || !m->ext_eku || !m->ext_aki) {
		log_warnx(
		    "mint: cannot build the leaf extensions (intermediate without a key id?)");
		err = -EINVAL;
		goto fail;
	}
	err = sign_setup(m, ca_key);
	if (err < 0)
		goto fail;
	m->ca_cert = ca_cert; /* borrowed until the reference below */
	err = fixed_setup(m);
	m->ca_cert = NULL;
	if (err < 0)
		goto fail;
	err = -ENOMEM;
	if (X509_up_ref(ca_cert) != 1)
		goto fail;
	m->ca_cert = ca_cert;
	m->ca_key = ca_key;
	*out = m;
	return 0;
fail:
	mint_free(m);
	return err;
}

static void entry_free(struct mint_entry *e)
{
	X509_free(e->cert);
	EVP_PKEY_free(e->key); /* private scalars are in the secure heap: cleared on free */
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

static void entries_free(struct mint_entry *e, bool lru)
{
	struct mint_entry *next;

	for (; e; e = next) {
		next = lru ? e->lru_next : e->hash_next;
		entry_free(e);
	}
}

/* Frees the retired leaves (taken under the lock, freed outside it). */
static void retired_free(struct mint *m)
{
	struct mint_entry *list;

	pthread_mutex_lock(&m->pool_lock);
	list = m->retired;
	m->retired = NULL;
	m->retired_count = 0;
	pthread_mutex_unlock(&m->pool_lock);
	entries_free(list, false);
}

void mint_cache_flush(struct mint *m)
{
	if (!m)
		return;
	entries_free(m->lru_head, true);
	m->lru_head = m->lru_tail = NULL;
	if (m->buckets)
		memset(m->buckets, 0, m->nbuckets * sizeof(*m->buckets));
	m->cached = 0;
	retired_free(m);
}

void mint_drop_key(struct mint *m)
{
	if (!m)
		return;
	EVP_PKEY_CTX_free(m->sign_ctx); /* first: it holds a reference to the key */
	m->sign_ctx = NULL;
	EVP_PKEY_free(m->ca_key);
	m->ca_key = NULL;
	mint_cache_flush(m);
}

bool mint_has_key(const struct mint *m)
{
	return m && m->ca_key;
}

static void prep_free(struct mint_prep *p)
{
	EVP_PKEY_free(p->key);
	X509_free(p->x);
	memset(p, 0, sizeof(*p));
}

void mint_free(struct mint *m)
{
	size_t i;

	if (!m)
		return;
	mint_drop_key(m);
	for (i = 0; i < m->pool_count; i++)
		prep_free(&m->pool[i]);
	free(m->pool);
	EVP_MD_free(m->md);
	ASN1_TIME_free(m->v_nb);
	ASN1_TIME_free(m->v_na);
	free(m->buckets);
	X509_EXTENSION_free(m->ext_bc);
	X509_EXTENSION_free(m->ext_ku);
	X509_EXTENSION_free(m->ext_eku);
	X509_EXTENSION_free(m->ext_aki);
	X509_free(m->ca_cert);
	pthread_mutex_destroy(&m->pool_lock);
	free(m);
}

/*
 * A P-256 key pair, exported ahead to the provider that will sign with it in the handshake
 * (EVP_PKEY caches the export), so that the TLS layer's first use of the leaf costs nothing.
 */
static EVP_PKEY *leaf_key_new(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	EVP_PKEY *k = EVP_PKEY_new();
	EVP_PKEY_CTX *pc = NULL;

	if (!ec || !k || EC_KEY_generate_key(ec) != 1 || EVP_PKEY_assign_EC_KEY(k, ec) != 1)
		goto fail;
	ec = NULL;
	pc = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
	if (!pc || EVP_PKEY_sign_init(pc) <= 0)
		goto fail;
	EVP_PKEY_CTX_free(pc);
	return k;
fail:
	EVP_PKEY_CTX_free(pc);
	EC_KEY_free(ec);
	EVP_PKEY_free(k);
	return NULL;
}

/* The X509_ALGOR that OpenSSL offers only as const: set in place, as X509_sign does. */
static int set_sig_alg(const struct mint *m, const X509_ALGOR *alg)
{
	ASN1_OBJECT *oid = OBJ_nid2obj(m->sig_nid);

	return oid && X509_ALGOR_set0((X509_ALGOR *)alg, oid, m->sig_param, NULL) == 1 ? 0 : -EIO;
}

/* 128 random bits as a positive INTEGER; a first byte of 0 would not be minimal DER. */
static int set_serial(X509 *x)
{
	unsigned char raw[16];

	do {
		if (RAND_bytes(raw, sizeof(raw)) != 1)
			return -EIO;
	} while (raw[0] == 0);
	return ASN1_STRING_set(X509_get_serialNumber(x), raw, sizeof(raw)) == 1 ? 0 : -ENOMEM;
}

/*
 * The placeholders a mint overwrites in place: CN, validity, SAN and signature, each as long
 * as the value can get, so that the mint only copies into them.
 */
static int prep_placeholders(const struct mint *m, X509 *x)
{
	unsigned char cn[MINT_CN_MAX], san[PROXY_HOST_MAX + 8] = {0x30, 0x00};
	static const char gt[] = "20000101000000Z"; /* GeneralizedTime: longer than UTCTime */
	ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
	const ASN1_BIT_STRING *sig;
	const X509_ALGOR *alg;
	X509_EXTENSION *ext = NULL;
	int err = -EIO;

	memset(cn, 'x', sizeof(cn));
	X509_get0_signature(&sig, &alg, x);
	if (!os || ASN1_OCTET_STRING_set(os, san, sizeof(san)) != 1 ||
	    X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_ASC, cn,
	                               sizeof(cn), -1, 0) != 1 ||
	    ASN1_TIME_set_string(X509_getm_notBefore(x), gt) != 1 ||
	    ASN1_TIME_set_string(X509_getm_notAfter(x), gt) != 1 ||
	    ASN1_STRING_set((ASN1_BIT_STRING *)sig, NULL, m->sig_max) != 1 ||
	    set_sig_alg(m, alg) < 0)
		goto out;
	ext = X509_EXTENSION_create_by_NID(NULL, NID_subject_alt_name, 0, os);
	if (ext && X509_add_ext(x, ext, -1) == 1)
		err = 0;
out:
	X509_EXTENSION_free(ext);
	ASN1_OCTET_STRING_free(os);
	return err;
}

/*
 * Key pair, version, serial, signature algorithms, issuer, public key, the extensions in
 * their order (basicConstraints, keyUsage, extKeyUsage, SKI, AKI, SAN), the placeholders;
 * and the DER of the serial, public key and SKI.
 */
static int prep_new(const struct mint *m, struct mint_prep *p)
{
	X509_EXTENSION *ski = NULL;
	X509V3_CTX ctx;
	size_t len = 0;
	int err = -ENOMEM;

	memset(p, 0, sizeof(*p));
	p->key = leaf_key_new();
	p->x = X509_new();
	if (!p->key || !p->x)
		goto out;
	err = -EIO;
	if (X509_set_version(p->x, X509_VERSION_3) != 1 ||
	    X509_set_issuer_name(p->x, X509_get_subject_name(m->ca_cert)) != 1 ||
	    X509_set_pubkey(p->x, p->key) != 1 || set_serial(p->x) < 0 ||
	    set_sig_alg(m, X509_get0_tbs_sigalg(p->x)) < 0)
		goto out;
	X509V3_set_ctx(&ctx, m->ca_cert, p->x, NULL, NULL, 0);
	ski = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
	if (!ski || X509_add_ext(p->x, m->ext_bc, -1) != 1 ||
	    X509_add_ext(p->x, m->ext_ku, -1) != 1 || X509_add_ext(p->x, m->ext_eku, -1) != 1 ||
	    X509_add_ext(p->x, ski, -1) != 1 || X509_add_ext(p->x, m->ext_aki, -1) != 1 ||
	    prep_placeholders(m, p->x) < 0)
		goto out;
	if (der_i2d(i2d_ASN1_INTEGER, X509_get_serialNumber(p->x), p->der, sizeof(p->der), &len) <
	    0)
		goto out;
	p->serial_len = (uint16_t)len;
	if (der_i2d(i2d_X509_PUBKEY, X509_get_X509_PUBKEY(p->x), p->der, sizeof(p->der), &len) < 0)
		goto out;
	p->spki_len = (uint16_t)(len - p->serial_len);
	if (der_i2d(i2d_X509_EXTENSION, ski, p->der, sizeof(p->der), &len) < 0)
		goto out;
	p->ski_len = (uint16_t)(len - p->serial_len - p->spki_len);
	err = 0;
out:
	X509_EXTENSION_free(ski);
	if (err < 0)
		prep_free(p);
	return err;
}

int mint_pool_fill(struct mint *m)
{
	retired_free(m);
	for (;;) {
		struct mint_prep p;
		bool full;
		int err;

		pthread_mutex_lock(&m->pool_lock);
		full = m->pool_count >= m->pool_max;
		pthread_mutex_unlock(&m->pool_lock);
		if (full)
			return 0;
		err = prep_new(m, &p); /* outside the lock: minting goes on meanwhile */
		if (err < 0)
			return err;
		pthread_mutex_lock(&m->pool_lock);
		if (m->pool_count < m->pool_max) {
			m->pool[m->pool_count++] = p;
			memset(&p, 0, sizeof(p));
		}
		pthread_mutex_unlock(&m->pool_lock);
		prep_free(&p);
	}
}

size_t mint_pool_count(struct mint *m)
{
	size_t n;

	pthread_mutex_lock(&m->pool_lock);
	n = m->pool_count;
	pthread_mutex_unlock(&m->pool_lock);
	return n;
}

static int pool_take(struct mint *m, struct mint_prep *p)
{
	bool got = false;

	pthread_mutex_lock(&m->pool_lock);
	if (m->pool_count > 0) {
		*p = m->pool[--m->pool_count];
		memset(&m->pool[m->pool_count], 0, sizeof(*p));
		got = true;
	}
	pthread_mutex_unlock(&m->pool_lock);
	if (got)
		return 0;
	m->st.pool_misses++;
	return prep_new(m, p);
}

static void lru_unlink(struct mint *m, struct mint_entry *e)
{
	if (e->lru_prev)
		e->lru_prev->lru_next = e->lru_next;
	else
		m->lru_head = e->lru_next;
	if (e->lru_next)
		e->lru_next->lru_prev = e->lru_prev;
	else
		m->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_push(struct mint *m, struct mint_entry *e)
{
	e->lru_next = m->lru_head;
	if (m->lru_head)
		m->lru_head->lru_prev = e;
	m->lru_head = e;
	if (!m->lru_tail)
		m->lru_tail = e;
}

/*
 * Takes e out of the cache. An evicted leaf is retired: freed by the next mint_pool_fill,
 * off the minting path, unless nobody fills the pool or the retired list is long.
 */
static void cache_remove(struct mint *m, struct mint_entry *e, bool retire)
{
	struct mint_entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];

	while (*pp && *pp != e)
		pp = &(*pp)->hash_next;
	if (*pp)
		*pp = e->hash_next;
	lru_unlink(m, e);
	m->cached--;
	if (retire && m->pool_max > 0) {
		pthread_mutex_lock(&m->pool_lock);
		if (m->retired_count < m->pool_max) {
			e->hash_next = m->retired;
			m->retired = e;
			m->retired_count++;
			e = NULL;
		}
		pthread_mutex_unlock(&m->pool_lock);
	}
	if (e)
		entry_free(e);
}

static struct mint_entry *cache_find(struct mint *m, const char *host, uint64_t h)
{
	struct mint_entry *e = m->buckets[h & (m->nbuckets - 1)];

	for (; e; e = e->hash_next)
		if (e->hash == h && strcmp(e->host, host) == 0)
			return e;
	return NULL;
}

static void cache_insert(struct mint *m, struct mint_entry *e)
{
	struct mint_entry **b = &m->buckets[e->hash & (m->nbuckets - 1)];

	if (m->cached >= m->cache_max) {
		cache_remove(m, m->lru_tail, true);
		m->st.evicted++;
	}
	e->hash_next = *b;
	*b = e;
	lru_push(m, e);
	m->cached++;
}

/* Canonical cache key and SAN for host; ip_len 0 for a DNS name. */
static int host_canon(const char *host, char *out, uint8_t ip[16], int *ip_len)
{
	size_t n = strnlen(host, PROXY_HOST_MAX + 1);

	if (n > PROXY_HOST_MAX)
		return -EINVAL;
	if (inet_pton(AF_INET, host, ip) == 1) {
		*ip_len = 4;
		inet_ntop(AF_INET, ip, out, PROXY_HOST_MAX + 1);
		return 0;
	}
	if (inet_pton(AF_INET6, host, ip) == 1) {
		*ip_len = 16;
		inet_ntop(AF_INET6, ip, out, PROXY_HOST_MAX + 1);
		return 0;
	}
	*ip_len = 0;
	return proxy_host_name(host, n, out);
}

static time_t asn1_time_t(const ASN1_TIME *t)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

/* Leaf validity: now - 1 h .. now + 24 h, inside the intermediate's own; once a second. */
static int validity_update(struct mint *m, time_t now)
{
	const ASN1_TIME *ca_nb = X509_get0_notBefore(m->ca_cert);
	const ASN1_TIME *ca_na = X509_get0_notAfter(m->ca_cert);
	time_t nb = now - MINT_VALID_BEFORE, na = now + MINT_VALID_AFTER;
	uint8_t *p;
	int n, k;

	ASN1_TIME_free(m->v_nb);
	ASN1_TIME_free(m->v_na);
	m->v_nb = m->v_na = NULL;
	m->v_now = 0;
	if (ASN1_TIME_cmp_time_t(ca_nb, now) > 0 || ASN1_TIME_cmp_time_t(ca_na, now) <= 0)
		return -EKEYEXPIRED;
	if (ASN1_TIME_cmp_time_t(ca_nb, nb) > 0)
		m->v_nb = ASN1_STRING_dup(ca_nb);
	else
		m->v_nb = ASN1_TIME_set(NULL, nb);
	if (ASN1_TIME_cmp_time_t(ca_na, na) < 0) {
		m->v_na = ASN1_STRING_dup(ca_na);
		m->v_expires = asn1_time_t(ca_na);
	} else {
		m->v_na = ASN1_TIME_set(NULL, na);
		m->v_expires = na;
	}
	if (!m->v_nb || !m->v_na)
		return -ENOMEM;
	/* the Validity SEQUENCE: two times of at most 17 bytes each fit a short length */
	p = m->v_der + 2;
	n = i2d_ASN1_TIME(m->v_nb, NULL);
	k = i2d_ASN1_TIME(m->v_na, NULL);
	if (n <= 0 || n > 24 || k <= 0 || k > 24 || i2d_ASN1_TIME(m->v_nb, &p) != n ||
	    i2d_ASN1_TIME(m->v_na, &p) != k)
		return -EIO;
	m->v_der[0] = 0x30;
	m->v_der[1] = (uint8_t)(n + k);
	m->v_der_len = 2 + (size_t)(n + k);
	m->v_now = now;
	return 0;
}

/* The SAN's extnValue: a GeneralNames of one dNSName or iPAddress. */
static size_t san_value(uint8_t *out, size_t cap, const char *host, size_t hlen, const uint8_t *ip,
                        int ip_len)
{
	struct der d = {out, 0, cap, false};
	size_t vlen = ip_len ? (size_t)ip_len : hlen;

	der_hdr(&d, 0x30, der_hdr_len(vlen) + vlen);
	der_hdr(&d, ip_len ? 0x87 : 0x82, vlen); /* [7] iPAddress, [2] dNSName */
	der_put(&d, ip_len ? (const void *)ip : (const void *)host, vlen);
	return d.over ? 0 : d.len;
}

/*
 * The TBS of the leaf: the minter's and the prep's parts around the subject (CN=host, or
 * empty when host is longer than a CN may be), the validity and the SAN. Returns its length
 * (only that when out is NULL), or 0 when it does not fit cap.
 */
static size_t tbs_write(const struct mint *m, const struct mint_prep *p, uint8_t *out, size_t cap,
                        const char *host, size_t hlen, const uint8_t *san, size_t san_len,
                        bool san_crit)
{
	static const uint8_t oid_cn[] = {0x06, 0x03, 0x55, 0x04, 0x03};
	static const uint8_t oid_san[] = {0x06, 0x03, 0x55, 0x1d, 0x11};
	static const uint8_t crit[] = {0x01, 0x01, 0xff};
	const uint8_t *serial = p->der, *spki = serial + p->serial_len, *ski = spki + p->spki_len;
	const uint8_t *version = m->fixed, *algiss = version + m->version_len;
	const uint8_t *exts_a = algiss + m->algiss_len, *aki = exts_a + m->exts_a_len;
	struct der d = {out, 0, cap, false};
	size_t atv = 0, set = 0, name_c = 0, name, ext_san, exts, exts_seq, tbs;

	if (hlen <= MINT_CN_MAX) {
		atv = sizeof(oid_cn) + der_hdr_len(hlen) + hlen; /* AttributeTypeAndValue */
		set = der_hdr_len(atv) + atv;                    /* the RDN's SET OF */
		name_c = der_hdr_len(set) + set;
	}
	name = der_hdr_len(name_c) + name_c;
	ext_san = sizeof(oid_san) + (san_crit ? sizeof(crit) : 0) + der_hdr_len(san_len) + san_len;
	exts = m->exts_a_len + p->ski_len + m->aki_len + der_hdr_len(ext_san) + ext_san;
	exts_seq = der_hdr_len(exts) + exts;
	tbs = m->version_len + p->serial_len + m->algiss_len + m->v_der_len + name + p->spki_len +
	      der_hdr_len(exts_seq) + exts_seq;

	if (!out)
		return der_hdr_len(tbs) + tbs;
	der_hdr(&d, 0x30, tbs);
	der_put(&d, version, m->version_len);
	der_put(&d, serial, p->serial_len);
	der_put(&d, algiss, m->algiss_len);
	der_put(&d, m->v_der, m->v_der_len);
	if (hlen <= MINT_CN_MAX) {
		der_hdr(&d, 0x30, name_c);
		der_hdr(&d, 0x31, set);
		der_hdr(&d, 0x30, atv);
		der_put(&d, oid_cn, sizeof(oid_cn));
		der_hdr(&d, V_ASN1_UTF8STRING, hlen);
		der_put(&d, host, hlen);
	} else {
		der_hdr(&d, 0x30, 0);
	}
	der_put(&d, spki, p->spki_len);
	der_hdr(&d, 0xa3, exts_seq); /* [3] extensions */
	der_hdr(&d, 0x30, exts);
	der_put(&d, exts_a, m->exts_a_len);
	der_put(&d, ski, p->ski_len);
	der_put(&d, aki, m->aki_len);
	der_hdr(&d, 0x30, ext_san);
	der_put(&d, oid_san, sizeof(oid_san));
	if (san_crit)
		der_put(&d, crit, sizeof(crit));
	der_hdr(&d, 0x04, san_len);
	der_put(&d, san, san_len);
	return d.over || d.len != der_hdr_len(tbs) + tbs ? 0 : d.len;
}

/* The same name, validity and SAN written into the certificate object, in place. */
static int object_patch(const struct mint *m, X509 *x, const char *host, size_t hlen,
                        const uint8_t *san, size_t san_len, bool san_crit)
{
	X509_NAME *subj = X509_get_subject_name(x);
	X509_EXTENSION *ext = X509_get_ext(x, X509_get_ext_count(x) - 1);

	if (ASN1_STRING_copy(X509_getm_notBefore(x), m->v_nb) != 1 ||
	    ASN1_STRING_copy(X509_getm_notAfter(x), m->v_na) != 1 || !ext ||
	    ASN1_OCTET_STRING_set(X509_EXTENSION_get_data(ext), san, (int)san_len) != 1 ||
	    X509_EXTENSION_set_critical(ext, san_crit) != 1 || X509_NAME_entry_count(subj) != 1)
		return -EIO;
	if (hlen <= MINT_CN_MAX)
		return ASN1_STRING_set(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, 0)), host,
		                       (int)hlen) == 1
		           ? 0
		           : -ENOMEM;
	X509_NAME_ENTRY_free(X509_NAME_delete_entry(subj, 0));
	return 0;
}

/* The one signature, over tbs (or, without a template, over the object's re-encoding). */
/* The one signature: over the SHA-256 of tbs, into the BIT STRING prep_new sized for it. */
static int tbs_sign(struct mint *m, X509 *x, const uint8_t *tbs, size_t tbs_len)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	const ASN1_BIT_STRING *csig;
	SHA256_CTX sha;
	ASN1_BIT_STRING *bits;
	size_t siglen;

	X509_get0_signature(&csig, NULL, x);
	bits = (ASN1_BIT_STRING *)csig;
	siglen = (size_t)ASN1_STRING_length(bits);
	/* the low-level SHA-256: SHA256() and EVP_Digest fetch the algorithm on every call */
	if (siglen < (size_t)m->sig_max || SHA256_Init(&sha) != 1 ||
	    SHA256_Update(&sha, tbs, tbs_len) != 1 || SHA256_Final(md, &sha) != 1 ||
	    EVP_PKEY_sign(m->sign_ctx, (unsigned char *)ASN1_STRING_get0_data(bits), &siglen, md,
	                  sizeof(md)) <= 0)
		return -EIO;
	ASN1_STRING_length_set(bits, (int)siglen);
	bits->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07); /* no unused bits */
	bits->flags |= ASN1_STRING_FLAG_BITS_LEFT;
	return 0;
}

/* The certificate object, and what a mint will touch next, into the cache during the sign. */
static void prefetch_leaf(const struct mint *m, const X509 *x)
{
	size_t i;

	for (i = 0; i < 512; i += 64)
		__builtin_prefetch((const char *)x + i, 1);
	if (m->cached >= m->cache_max && m->lru_tail)
		__builtin_prefetch(m->lru_tail, 1);
}

/*
 * The leaf from the template: TBS written, signed, then the same values patched into the
 * object and the TBS installed as its cached encoding (what d2i would have kept, which
 * i2d_X509 copies). Without the template, the object is patched and re-encoded instead.
 */
static int leaf_sign(struct mint *m, struct mint_prep *p, const char *host, size_t hlen,
                     const uint8_t *san, size_t san_len, bool san_crit)
{
	ASN1_ENCODING *enc = tbs_enc(p->x);
	uint8_t *tbs = NULL;
	size_t tbs_len;
	int n, err;

	if (!enc) {
		err = object_patch(m, p->x, host, hlen, san, san_len, san_crit);
		if (err < 0)
			return err;
		n = i2d_re_X509_tbs(p->x, &tbs);
		err = n > 0 ? tbs_sign(m, p->x, tbs, (size_t)n) : -EIO;
		OPENSSL_free(tbs);
		return err;
	}
	tbs_len = tbs_write(m, p, NULL, 0, host, hlen, san, san_len, san_crit);
	tbs = OPENSSL_malloc(tbs_len ? tbs_len : 1);
	if (!tbs)
		return -ENOMEM;
	err = -EIO;
	if (tbs_write(m, p, tbs, tbs_len, host, hlen, san, san_len, san_crit) != tbs_len)
		goto out;
	prefetch_leaf(m, p->x);
	err = tbs_sign(m, p->x, tbs, tbs_len);
	if (err < 0)
		goto out;
	err = object_patch(m, p->x, host, hlen, san, san_len, san_crit);
	if (err < 0)
		goto out;
	OPENSSL_free(enc->enc);
	enc->enc = tbs;
	enc->len = (long)tbs_len;
	enc->modified = 0;
	tbs = NULL;
out:
	OPENSSL_free(tbs);
	return err;
}

static int mint_one(struct mint *m, struct mint_entry *e, const uint8_t *ip, int ip_len, time_t now)
{
	uint8_t san[PROXY_HOST_MAX + 8];
	struct mint_prep p = {0};
	size_t hlen = strlen(e->host), san_len;
	bool san_crit = hlen > MINT_CN_MAX; /* an empty subject: RFC 5280 4.2.1.6 */
	int err;

	if (m->v_now != now) {
		err = validity_update(m, now);
		if (err < 0)
			return err;
	}
	san_len = san_value(san, sizeof(san), e->host, hlen, ip, ip_len);
	if (!san_len)
		return -EIO;
	err = pool_take(m, &p);
	if (err < 0)
		return err;
	e->expires = m->v_expires;
	err = leaf_sign(m, &p, e->host, hlen, san, san_len, san_crit);
	if (err == 0) {
		e->cert = p.x;
		e->key = p.key;
		p.x = NULL;
		p.key = NULL;
	}
	prep_free(&p);
	return err;
}

int mint_leaf(struct mint *m, const char *host, X509 **cert, EVP_PKEY **key)
{
	char canon[PROXY_HOST_MAX + 1];
	struct mint_entry *e;
	time_t now = time(NULL);
	uint8_t ip[16];
	uint64_t h;
	int ip_len, err;

	*cert = NULL;
	*key = NULL;
	if (host_canon(host, canon, ip, &ip_len) < 0)
		return -EINVAL;
	if (!m->ca_key)
		return -ENOKEY;
	h = host_hash(m, canon);
	e = cache_find(m, canon, h);
	if (e && e->expires - MINT_REFRESH_SEC > now) {
		lru_unlink(m, e);
		lru_push(m, e);
		m->st.cache_hits++;
		goto give;
	}
	if (e)
		cache_remove(m, e, true);
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	memcpy(e->host, canon, sizeof(canon));
	e->hash = h;
	err = mint_one(m, e, ip, ip_len, now);
	if (err < 0) {
		entry_free(e);
		return err;
	}
	m->st.minted++;
	cache_insert(m, e);
give:
	if (X509_up_ref(e->cert) != 1)
		return -ENOMEM;
	if (EVP_PKEY_up_ref(e->key) != 1) {
		X509_free(e->cert);
		return -ENOMEM;
	}
	*cert = e->cert;
	*key = e->key;
	return 0;
}

void mint_get_stats(const struct mint *m, struct mint_stats *st)
{
	*st = m->st;
	st->cached = m->cached;
}
