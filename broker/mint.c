/*
 * Leaf certificates for intercepted sites, minted in RAM by a tenant's intermediate with one
 * signature each, from P-256 key pairs prepared ahead, and kept in a bounded LRU cache.
 *
 * Leaf keys are legacy EC_KEYs: OpenSSL 3.0 encodes a provider key's public half for a
 * certificate through OSSL_ENCODER, some 20 times the cost of the legacy method. Each
 * pooled key comes with its certificate body (everything but the name and validity)
 * prepared ahead, and the signature is made over the TBS with a signing context
 * kept from mint_new: X509_sign would set one up per call, doubling a P-256 mint.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "inspect.h"
#include "log.h"

#define MINT_CN_MAX      64   /* ub-common-name */
#define MINT_REFRESH_SEC 3600 /* re-mint a cached leaf this close to its notAfter */

struct mint_entry {
	struct mint_entry *lru_prev, *lru_next; /* most recently used at the head */
	struct mint_entry *hash_next;
	uint64_t hash;
	time_t expires;
	X509 *cert;
	EVP_PKEY *key;
	char host[PROXY_HOST_MAX + 1];
};

/* A leaf key pair and its certificate body, made ahead of the name it will serve. */
struct mint_prep {
	EVP_PKEY *key;
	X509 *x;
};

struct mint {
	EVP_PKEY *ca_key;
	X509 *ca_cert;
	X509_EXTENSION *ext_bc, *ext_ku, *ext_eku, *ext_aki; /* the same in every leaf */
	EVP_PKEY_CTX *sign_ctx;                              /* holds a reference to ca_key */
	EVP_MD *md;
	int sig_nid, sig_param;  /* the signatureAlgorithm: OID, and V_ASN1_NULL or UNDEF */
	time_t v_now, v_expires; /* leaf validity, computed for the second v_now */
	ASN1_TIME *v_nb, *v_na;

	struct mint_entry **buckets;
	size_t nbuckets, cache_max, cached;
	struct mint_entry *lru_head, *lru_tail;
	uint64_t hash_seed;

	pthread_mutex_t pool_lock;
	struct mint_prep *pool;
	size_t pool_max, pool_count;

	struct mint_stats st;
};

static uint64_t host_hash(const struct mint *m, const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ m->hash_seed;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

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
	return 0;
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

void mint_cache_flush(struct mint *m)
{
	struct mint_entry *e, *next;

	if (!m)
		return;
	for (e = m->lru_head; e; e = next) {
		next = e->lru_next;
		entry_free(e);
	}
	m->lru_head = m->lru_tail = NULL;
	if (m->buckets)
		memset(m->buckets, 0, m->nbuckets * sizeof(*m->buckets));
	m->cached = 0;
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

void mint_free(struct mint *m)
{
	size_t i;

	if (!m)
		return;
	mint_drop_key(m);
	for (i = 0; i < m->pool_count; i++) {
		EVP_PKEY_free(m->pool[i].key);
		X509_free(m->pool[i].x);
	}
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

static EVP_PKEY *leaf_key_new(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	EVP_PKEY *k = EVP_PKEY_new();

	if (!ec || !k || EC_KEY_generate_key(ec) != 1 || EVP_PKEY_assign_EC_KEY(k, ec) != 1) {
		EC_KEY_free(ec);
		EVP_PKEY_free(k);
		return NULL;
	}
	return k;
}

/* The X509_ALGOR that OpenSSL offers only as const: set in place, as X509_sign does. */
static int set_sig_alg(const struct mint *m, const X509_ALGOR *alg)
{
	ASN1_OBJECT *oid = OBJ_nid2obj(m->sig_nid);

	return oid && X509_ALGOR_set0((X509_ALGOR *)alg, oid, m->sig_param, NULL) == 1 ? 0 : -EIO;
}

static void prep_free(struct mint_prep *p)
{
	EVP_PKEY_free(p->key);
	X509_free(p->x);
	p->key = NULL;
	p->x = NULL;
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

/* Key pair, version, serial, issuer, public key, the fixed extensions, SKI, AKI. */
static int prep_new(const struct mint *m, struct mint_prep *p)
{
	X509_EXTENSION *ski = NULL;
	X509V3_CTX ctx;
	int err = -ENOMEM;

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
	    X509_add_ext(p->x, ski, -1) != 1 || X509_add_ext(p->x, m->ext_aki, -1) != 1)
		goto out;
	err = 0;
out:
	X509_EXTENSION_free(ski);
	if (err < 0)
		prep_free(p);
	return err;
}

int mint_pool_fill(struct mint *m)
{
	for (;;) {
		struct mint_prep p = {0};
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
			p.key = NULL;
			p.x = NULL;
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

static void cache_remove(struct mint *m, struct mint_entry *e)
{
	struct mint_entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];

	while (*pp && *pp != e)
		pp = &(*pp)->hash_next;
	if (*pp)
		*pp = e->hash_next;
	lru_unlink(m, e);
	m->cached--;
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
		cache_remove(m, m->lru_tail);
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

static X509_EXTENSION *ext_san(const char *host, const uint8_t *ip, int ip_len, int critical)
{
	GENERAL_NAMES *gens = GENERAL_NAMES_new();
	GENERAL_NAME *gn = GENERAL_NAME_new();
	X509_EXTENSION *ext = NULL;
	ASN1_IA5STRING *ia5 = NULL;
	ASN1_OCTET_STRING *os = NULL;

	if (!gens || !gn)
		goto out;
	if (ip_len) {
		os = ASN1_OCTET_STRING_new();
		if (!os || ASN1_OCTET_STRING_set(os, ip, ip_len) != 1)
			goto out;
		GENERAL_NAME_set0_value(gn, GEN_IPADD, os);
		os = NULL;
	} else {
		ia5 = ASN1_IA5STRING_new();
		if (!ia5 || ASN1_STRING_set(ia5, host, (int)strlen(host)) != 1)
			goto out;
		GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
		ia5 = NULL;
	}
	if (sk_GENERAL_NAME_push(gens, gn) <= 0)
		goto out;
	gn = NULL;
	ext = X509V3_EXT_i2d(NID_subject_alt_name, critical, gens);
out:
	ASN1_OCTET_STRING_free(os);
	ASN1_IA5STRING_free(ia5);
	GENERAL_NAME_free(gn);
	GENERAL_NAMES_free(gens);
	return ext;
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
	m->v_now = now;
	return 0;
}

static int set_validity(struct mint *m, X509 *x, time_t now, time_t *expires)
{
	int err;

	if (m->v_now != now) {
		err = validity_update(m, now);
		if (err < 0)
			return err;
	}
	if (X509_set1_notBefore(x, m->v_nb) != 1 || X509_set1_notAfter(x, m->v_na) != 1)
		return -ENOMEM;
	*expires = m->v_expires;
	return 0;
}

/* The one signature: over the DER of the TBS, set into x as X509_sign would. */
static int sign_tbs(struct mint *m, X509 *x)
{
	unsigned char md[EVP_MAX_MD_SIZE], *tbs = NULL, *sig = NULL;
	const ASN1_BIT_STRING *csig;
	const X509_ALGOR *calg;
	ASN1_BIT_STRING *bits;
	unsigned mdlen;
	size_t siglen;
	int tbs_len, err = -EIO;

	tbs_len = i2d_re_X509_tbs(x, &tbs);
	if (tbs_len <= 0 || EVP_Digest(tbs, (size_t)tbs_len, md, &mdlen, m->md, NULL) != 1)
		goto out;
	siglen = (size_t)EVP_PKEY_get_size(m->ca_key);
	sig = OPENSSL_malloc(siglen);
	if (!sig || EVP_PKEY_sign(m->sign_ctx, sig, &siglen, md, mdlen) <= 0)
		goto out;
	X509_get0_signature(&csig, &calg, x);
	if (set_sig_alg(m, calg) < 0)
		goto out;
	bits = (ASN1_BIT_STRING *)csig;
	ASN1_STRING_set0(bits, sig, (int)siglen);
	sig = NULL;
	bits->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07); /* no unused bits */
	bits->flags |= ASN1_STRING_FLAG_BITS_LEFT;
	err = 0;
out:
	OPENSSL_free(tbs);
	OPENSSL_free(sig);
	return err;
}

static int mint_one(struct mint *m, struct mint_entry *e, const uint8_t *ip, int ip_len, time_t now)
{
	struct mint_prep p = {0};
	X509_EXTENSION *san = NULL;
	size_t hlen = strlen(e->host);
	int err;

	err = pool_take(m, &p);
	if (err < 0)
		goto out;
	err = set_validity(m, p.x, now, &e->expires);
	if (err < 0)
		goto out;
	err = -EIO;
	if (hlen <= MINT_CN_MAX &&
	    X509_NAME_add_entry_by_NID(X509_get_subject_name(p.x), NID_commonName, MBSTRING_ASC,
	                               (const unsigned char *)e->host, (int)hlen, -1, 0) != 1)
		goto out;
	/* an empty subject makes the SAN critical (RFC 5280 4.2.1.6) */
	san = ext_san(e->host, ip, ip_len, hlen > MINT_CN_MAX);
	if (!san || X509_add_ext(p.x, san, -1) != 1)
		goto out;
	err = sign_tbs(m, p.x);
	if (err < 0)
		goto out;
	e->cert = p.x;
	e->key = p.key;
	p.x = NULL;
	p.key = NULL;
out:
	X509_EXTENSION_free(san);
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
		cache_remove(m, e);
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
