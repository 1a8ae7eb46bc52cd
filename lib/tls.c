/* TLS 1.3 contexts and connections over memory BIOs; peer identity from the mtun:// URI. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls.h"

#define TLS_SUITES      "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS      "X25519:P-256:P-384"
#define TLS_OUT_DEFAULT (128U << 10)
#define TLS_OUT_MIN     (32U << 10)
/* Room for one full record (16384 + type + tag + header) and anything queued with it. */
#define TLS_RECORD_ROOM    (16384 + 1024)
#define TLS_RECORD_PLAIN   16384
#define TLS_VERIFY_DEPTH   4
#define TLS_LOAD_MAX       (1U << 20)
#define TLS_LOAD_CERTS_MAX 16
#define TLS_WHY_MAX        256

struct tls_ctx {
	SSL_CTX *ssl;
	bool server;
	enum tls_mode mode;
	uint32_t peer_roles;
	bool any_tenant;
	char peer_tenant[IDENT_TENANT_MAX + 1];
	tls_revoked_fn *revoked;
	void *revoked_arg;
	bool has_pin, has_trust;
	uint8_t pin[TLS_SHA256_LEN];
	size_t out_size;
};

/*
 * Ciphertext fed from the socket, read by SSL. Not a mem BIO: that one zeroes every
 * byte it grows by and compacts on each write; this buffer grows once and compacts
 * only when the tail has no room.
 */
struct tls_inbuf {
	uint8_t *buf;
	size_t cap, off, len;
	bool eof;
};

struct tls_conn {
	struct tls_ctx *ctx;
	SSL *ssl;
	BIO *in; /* reads from inb */
	struct tls_inbuf inb;
	BIO *net; /* our half of a BIO pair whose other half SSL writes */
	bool established, failed, eof, has_peer;
	struct ident peer;
	ASN1_INTEGER *serial;
	uint8_t peer_sha256[TLS_SHA256_LEN];
	char why[TLS_WHY_MAX];
};

static void conn_fail(struct tls_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn_fail(struct tls_conn *c, const char *fmt, ...)
{
	va_list ap;

	c->failed = true;
	if (c->why[0]) /* the first reason is the real one */
		return;
	va_start(ap, fmt);
	vsnprintf(c->why, sizeof(c->why), fmt, ap);
	va_end(ap);
	/* The caller reports it, with the peer's address; this is for tracing. */
	log_debug("tls: session failed: %s", c->why);
}

int tls_cert_sha256(X509 *cert, uint8_t out[TLS_SHA256_LEN])
{
	unsigned len = 0;

	if (!cert || !X509_digest(cert, EVP_sha256(), out, &len) || len != TLS_SHA256_LEN)
		return -EINVAL;
	return 0;
}

/* The one mtun:// URI of the certificate: 0, or -EPERM with the reason set. */
static int peer_uri(struct tls_conn *c, X509 *leaf, struct ident *id)
{
	GENERAL_NAMES *names;
	const unsigned char *uri = NULL;
	const char *why = NULL;
	int crit = -1, n = 0, uri_len = 0;

	names = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
	if (!names) {
		conn_fail(c, crit == -2 ? "peer certificate has more than one subjectAltName"
		                        : "peer certificate has no mtun:// URI");
		return -EPERM;
	}
	for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
		const unsigned char *d;
		int len;

		if (gn->type != GEN_URI)
			continue;
		d = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
		len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
		/* Schemes are case-insensitive: "MTUN:" counts, and is then refused. */
		if (len < 5 || strncasecmp((const char *)d, "mtun:", 5) != 0)
			continue;
		n++;
		uri = d;
		uri_len = len;
	}
	if (n == 1 && ident_parse((const char *)uri, (size_t)uri_len, id, &why) < 0) {
		conn_fail(c, "peer certificate URI is malformed: %s", why);
		n = -1;
	}
	GENERAL_NAMES_free(names);
	if (n == 0)
		conn_fail(c, "peer certificate has no mtun:// URI");
	else if (n > 1)
		conn_fail(c, "peer certificate has more than one mtun:// URI");
	return n == 1 ? 0 : -EPERM;
}

/* Role, tenant, revocation; then the peer is recorded. 0 or -EPERM with the reason set. */
static int check_identity(struct tls_conn *c, X509_STORE_CTX *xs, X509 *leaf)
{
	struct tls_ctx *ctx = c->ctx;
	const ASN1_INTEGER *serial = X509_get0_serialNumber(leaf);
	struct ident id;

	if (peer_uri(c, leaf, &id) < 0)
		goto refused;
	if (!(ctx->peer_roles & MT_ROLE_BIT(id.role))) {
		conn_fail(c, "peer certificate role '%s' not accepted here",
		          ident_role_name(id.role));
		goto refused;
	}
	if (!ctx->any_tenant && strcmp(id.tenant, ctx->peer_tenant) != 0) {
		conn_fail(c, "peer tenant '%s' is not '%s'", id.tenant, ctx->peer_tenant);
		goto refused;
	}
	if (ctx->revoked && ctx->revoked(ctx->revoked_arg, &id, serial)) {
		conn_fail(c, "peer certificate revoked");
		X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REVOKED);
		return -EPERM;
	}
	ASN1_INTEGER_free(c->serial);
	c->serial = ASN1_INTEGER_dup(serial);
	if (!c->serial || tls_cert_sha256(leaf, c->peer_sha256) < 0) {
		conn_fail(c, "out of memory checking the peer");
		X509_STORE_CTX_set_error(xs, X509_V_ERR_OUT_OF_MEM);
		return -ENOMEM;
	}
	c->peer = id;
	c->has_peer = true;
	return 0;
refused:
	X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
	return -EPERM;
}

static bool cert_current(X509 *x)
{
	return X509_cmp_current_time(X509_get0_notBefore(x)) < 0 &&
	       X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
}

/* The leaf chains to the pinned certificate ca, taken as the only trust anchor. */
static int verify_to_pinned(X509_STORE_CTX *xs, X509 *leaf, X509 *ca)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *v = X509_STORE_CTX_new();
	int ok = 0;

	if (!store || !v || !X509_STORE_add_cert(store, ca) ||
	    !X509_STORE_CTX_init(v, store, leaf, X509_STORE_CTX_get0_untrusted(xs)))
		goto out;
	X509_STORE_CTX_set_flags(v, X509_V_FLAG_PARTIAL_CHAIN);
	X509_STORE_CTX_set_purpose(v, X509_PURPOSE_SSL_SERVER);
	X509_STORE_CTX_set_depth(v, TLS_VERIFY_DEPTH);
	ok = X509_verify_cert(v) == 1;
	if (!ok)
		X509_STORE_CTX_set_error(xs, X509_STORE_CTX_get_error(v));
out:
	X509_STORE_CTX_free(v);
	X509_STORE_free(store);
	return ok;
}

/* Server-auth client: the leaf, or a CA of the sent chain that signed it, is the pin. */
static int check_pin(struct tls_conn *c, X509_STORE_CTX *xs, X509 *leaf)
{
	STACK_OF(X509) *sent = X509_STORE_CTX_get0_untrusted(xs);
	uint8_t fp[TLS_SHA256_LEN];

	if (tls_cert_sha256(leaf, fp) == 0 && CRYPTO_memcmp(fp, c->ctx->pin, sizeof(fp)) == 0) {
		if (cert_current(leaf))
			return 0;
		conn_fail(c, "pinned server certificate is expired or not yet valid");
		X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_HAS_EXPIRED);
		return -EPERM;
	}
	for (int i = 0; i < sk_X509_num(sent); i++) {
		X509 *ca = sk_X509_value(sent, i);

		if (ca == leaf || tls_cert_sha256(ca, fp) < 0 ||
		    CRYPTO_memcmp(fp, c->ctx->pin, sizeof(fp)) != 0)
			continue;
		if (verify_to_pinned(xs, leaf, ca))
			return 0;
		conn_fail(c, "server certificate does not chain to the pinned certificate: %s",
		          X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)));
		return -EPERM;
	}
	conn_fail(c, "server certificate does not match the pinned fingerprint");
	X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
	return -EPERM;
}

/* Replaces OpenSSL's verification so that every check reports its own reason. */
static int verify_cb(X509_STORE_CTX *xs, void *arg)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_conn *c = ssl ? SSL_get_app_data(ssl) : NULL;
	X509 *leaf = X509_STORE_CTX_get0_cert(xs);

	(void)arg;
	if (!c || !leaf)
		return 0;
	if (c->ctx->has_trust && X509_verify_cert(xs) != 1) {
		conn_fail(c, "certificate chain untrusted: %s",
		          X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)));
		return 0;
	}
	if (c->ctx->has_pin && check_pin(c, xs, leaf) < 0)
		return 0;
	if (c->ctx->mode == TLS_SERVER_AUTH && c->ctx->peer_roles == 0) {
		/* Server checked by pin or trust only: still record which certificate. */
		ASN1_INTEGER_free(c->serial);
		c->serial = ASN1_INTEGER_dup(X509_get0_serialNumber(leaf));
		return c->serial && tls_cert_sha256(leaf, c->peer_sha256) == 0;
	}
	return check_identity(c, xs, leaf) == 0;
}

static X509_STORE *store_from(const struct tls_conf *conf)
{
	X509_STORE *store = conf->trust;

	if (store && !conf->anchors) {
		X509_STORE_up_ref(store);
		return store;
	}
	if (!store) {
		store = X509_STORE_new();
		if (!store)
			return NULL;
	} else {
		/* Adding anchors to the caller's store would change it under them. */
		STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(store);
		X509_STORE *copy = X509_STORE_new();

		for (int i = 0; copy && i < sk_X509_OBJECT_num(objs); i++) {
			X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
			if (x && !X509_STORE_add_cert(copy, x)) {
				X509_STORE_free(copy);
				return NULL;
			}
		}
		store = copy;
		if (!store)
			return NULL;
	}
	for (int i = 0; i < sk_X509_num(conf->anchors); i++) {
		if (!X509_STORE_add_cert(store, sk_X509_value(conf->anchors, i))) {
			X509_STORE_free(store);
			return NULL;
		}
	}
	return store;
}

static int ctx_setup_keys(struct tls_ctx *ctx, const struct tls_conf *conf, const char **why)
{
	if (!conf->cert && !conf->key)
		return 0;
	if (!conf->cert || !conf->key) {
		*why = "a certificate needs its private key";
		return -EINVAL;
	}
	if (SSL_CTX_use_certificate(ctx->ssl, conf->cert) != 1 ||
	    SSL_CTX_use_PrivateKey(ctx->ssl, conf->key) != 1 ||
	    SSL_CTX_check_private_key(ctx->ssl) != 1) {
		*why = "the private key does not match the certificate";
		return -EINVAL;
	}
	if (conf->chain && SSL_CTX_set1_chain(ctx->ssl, conf->chain) != 1) {
		*why = "cannot set the certificate chain";
		return -ENOMEM;
	}
	return 0;
}

static int ctx_check_conf(const struct tls_conf *conf, const char **why)
{
	bool trust = conf->trust || sk_X509_num(conf->anchors) > 0;

	if (conf->mode != TLS_MUTUAL && conf->mode != TLS_SERVER_AUTH)
		*why = "unknown TLS mode";
	else if (conf->server && !conf->cert)
		*why = "a server needs a certificate and key";
	else if (conf->mode == TLS_MUTUAL && !conf->cert)
		*why = "mutual TLS needs a certificate and key";
	else if (conf->mode == TLS_MUTUAL && !trust)
		*why = "mutual TLS needs trust anchors";
	else if (conf->mode == TLS_MUTUAL && conf->peer_roles == 0)
		*why = "no peer role is accepted";
	else if (conf->peer_roles & ~((MT_ROLE_BIT(MT_ROLE_MAX) - 1) & ~MT_ROLE_BIT(MT_ROLE_NONE)))
		*why = "unknown peer role bit";
	else if (conf->mode == TLS_SERVER_AUTH && !conf->server && !trust && !conf->pin)
		*why = "a server-auth client needs a pin or trust anchors";
	else if (conf->mode == TLS_MUTUAL && conf->pin)
		*why = "pins are for server-auth mode";
	else if (conf->peer_tenant && !ident_valid_tenant(conf->peer_tenant))
		*why = "the required peer tenant is not a valid tenant name";
	else if (conf->out_size && conf->out_size < TLS_OUT_MIN)
		*why = "output buffer below 32 KiB";
	else
		return 0;
	return -EINVAL;
}

struct tls_ctx *tls_ctx_new(const struct tls_conf *conf, const char **why)
{
	const char *dummy;
	struct tls_ctx *ctx = NULL;
	X509_STORE *store = NULL;
	int verify = SSL_VERIFY_NONE;

	if (!why)
		why = &dummy;
	if (ctx_check_conf(conf, why) < 0)
		return NULL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx) {
		*why = "out of memory";
		return NULL;
	}
	ctx->server = conf->server;
	ctx->mode = conf->mode;
	ctx->peer_roles = conf->peer_roles;
	ctx->revoked = conf->revoked;
	ctx->revoked_arg = conf->revoked_arg;
	ctx->any_tenant = conf->peer_tenant == NULL;
	ctx->out_size = conf->out_size ? conf->out_size : TLS_OUT_DEFAULT;
	if (conf->peer_tenant)
		snprintf(ctx->peer_tenant, sizeof(ctx->peer_tenant), "%s", conf->peer_tenant);
	if (conf->pin) {
		memcpy(ctx->pin, conf->pin, sizeof(ctx->pin));
		ctx->has_pin = true;
	}

	*why = "cannot create the TLS context";
	ctx->ssl = SSL_CTX_new(conf->server ? TLS_server_method() : TLS_client_method());
	if (!ctx->ssl)
		goto fail;
	if (SSL_CTX_set_min_proto_version(ctx->ssl, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx->ssl, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set1_groups_list(ctx->ssl, TLS_GROUPS) != 1)
		goto fail;
	if (SSL_CTX_set_ciphersuites(ctx->ssl,
	                             conf->ciphersuites ? conf->ciphersuites : TLS_SUITES) != 1) {
		*why = "unknown TLS 1.3 cipher suite";
		goto fail;
	}
	if (conf->ciphersuites && strstr(conf->ciphersuites, "CCM")) {
		*why = "only the AES-GCM and ChaCha20-Poly1305 suites are allowed";
		goto fail;
	}
	/*
	 * No resumption: a resumed session skips the certificate, and with it the
	 * identity and revocation checks that must run on every session.
	 */
	SSL_CTX_set_session_cache_mode(ctx->ssl, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(ctx->ssl, 0);
	SSL_CTX_set_options(ctx->ssl, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION |
	                                  SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	                                  SSL_OP_PRIORITIZE_CHACHA);
	SSL_CTX_clear_mode(ctx->ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_AUTO_RETRY);
	SSL_CTX_set_mode(ctx->ssl,
	                 SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Fill the record buffer per BIO read instead of reading header and body apart. */
	SSL_CTX_set_read_ahead(ctx->ssl, 1);
	if (ctx_setup_keys(ctx, conf, why) < 0)
		goto fail;

	if (conf->trust || conf->anchors) {
		store = store_from(conf);
		if (!store) {
			*why = "cannot build the trust store";
			goto fail;
		}
		SSL_CTX_set_cert_store(ctx->ssl, store); /* takes the reference */
		ctx->has_trust = true;
	}
	if (conf->mode == TLS_MUTUAL)
		verify = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
	else if (!conf->server)
		verify = SSL_VERIFY_PEER;
	SSL_CTX_set_verify(ctx->ssl, verify, NULL);
	SSL_CTX_set_verify_depth(ctx->ssl, TLS_VERIFY_DEPTH);
	SSL_CTX_set_cert_verify_callback(ctx->ssl, verify_cb, ctx);
	*why = NULL;
	return ctx;
fail:
	tls_ctx_free(ctx);
	return NULL;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
	if (!ctx)
		return;
	SSL_CTX_free(ctx->ssl);
	OPENSSL_cleanse(ctx, sizeof(*ctx));
	free(ctx);
}

static int inbio_read(BIO *bio, char *out, int outl)
{
	struct tls_inbuf *ib = BIO_get_data(bio);
	size_t n;

	BIO_clear_retry_flags(bio);
	if (outl <= 0)
		return 0;
	if (ib->len == 0) {
		if (ib->eof)
			return 0;
		BIO_set_retry_read(bio);
		return -1;
	}
	n = ib->len < (size_t)outl ? ib->len : (size_t)outl;
	memcpy(out, ib->buf + ib->off, n);
	ib->off += n;
	ib->len -= n;
	if (ib->len == 0)
		ib->off = 0;
	return (int)n;
}

static long inbio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
	struct tls_inbuf *ib = BIO_get_data(bio);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_PENDING:
		return (long)ib->len;
	case BIO_CTRL_EOF:
		return ib->eof && ib->len == 0;
	case BIO_CTRL_FLUSH:
		return 1;
	default:
		return 0;
	}
}

static BIO_METHOD *inbio_method;
static CRYPTO_ONCE inbio_once = CRYPTO_ONCE_STATIC_INIT;

static void inbio_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mtun tls in");

	if (m && BIO_meth_set_read(m, inbio_read) == 1 && BIO_meth_set_ctrl(m, inbio_ctrl) == 1) {
		inbio_method = m;
		return;
	}
	BIO_meth_free(m);
}

static BIO *inbio_new(struct tls_inbuf *ib)
{
	BIO *bio;

	if (!CRYPTO_THREAD_run_once(&inbio_once, inbio_init) || !inbio_method)
		return NULL;
	bio = BIO_new(inbio_method);
	if (!bio)
		return NULL;
	BIO_set_data(bio, ib);
	BIO_set_init(bio, 1);
	return bio;
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx)
{
	struct tls_conn *c = calloc(1, sizeof(*c));
	BIO *in = NULL, *ssl_side = NULL;

	if (!c)
		return NULL;
	c->ctx = ctx;
	c->ssl = SSL_new(ctx->ssl);
	if (!c->ssl)
		goto fail;
	in = inbio_new(&c->inb);
	if (!in || BIO_new_bio_pair(&ssl_side, ctx->out_size, &c->net, 0) != 1) {
		BIO_free(in);
		goto fail;
	}
	SSL_set_bio(c->ssl, in, ssl_side);
	c->in = in;
	SSL_set_app_data(c->ssl, c);
	if (ctx->server)
		SSL_set_accept_state(c->ssl);
	else
		SSL_set_connect_state(c->ssl);
	return c;
fail:
	tls_conn_free(c);
	errno = ENOMEM;
	return NULL;
}

void tls_conn_free(struct tls_conn *c)
{
	if (!c)
		return;
	SSL_free(c->ssl); /* frees c->in and the SSL half of the pair */
	BIO_free(c->net);
	ASN1_INTEGER_free(c->serial);
	free(c->inb.buf);
	free(c);
}

int tls_conn_feed(struct tls_conn *c, const void *buf, size_t len)
{
	struct tls_inbuf *ib = &c->inb;

	if (c->eof)
		return -EPIPE;
	if (len > TLS_IN_MAX || ib->len > TLS_IN_MAX - len)
		return -ENOBUFS;
	if (len == 0)
		return 0;
	if (ib->cap - ib->off - ib->len < len) {
		if (ib->cap - ib->len >= len) {
			memmove(ib->buf, ib->buf + ib->off, ib->len);
		} else {
			/* A third more than needed, like a mem BIO: idle sessions keep it. */
			size_t cap = ib->len + len + (ib->len + len) / 3;
			uint8_t *p;

			if (cap > TLS_IN_MAX)
				cap = TLS_IN_MAX;
			p = malloc(cap);
			if (!p)
				return -ENOMEM;
			if (ib->len)
				memcpy(p, ib->buf + ib->off, ib->len);
			free(ib->buf);
			ib->buf = p;
			ib->cap = cap;
		}
		ib->off = 0;
	}
	memcpy(ib->buf + ib->off + ib->len, buf, len);
	ib->len += len;
	return 0;
}

void tls_conn_feed_eof(struct tls_conn *c)
{
	c->eof = true;
	c->inb.eof = true;
}

/* Maps a failed SSL call to -EAGAIN, -ECONNRESET or -EPROTO with a reason. */
static int conn_error(struct tls_conn *c, int ret)
{
	int err = SSL_get_error(c->ssl, ret);
	unsigned long e;
	int reason;

	switch (err) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		return -EAGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return -ECONNRESET;
	default:
		break;
	}
	e = ERR_peek_error();
	reason = ERR_GET_REASON(e);
	if (c->why[0])
		; /* our verify callback said why */
	else if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
		conn_fail(c, "peer sent no certificate, and one is required");
	else if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)
		conn_fail(c, "connection closed without close_notify");
	else if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET &&
	         reason < SSL_AD_REASON_OFFSET + 256)
		conn_fail(c, "peer refused: %s", ERR_reason_error_string(e));
	else if (e)
		conn_fail(c, "TLS failed: %s", ERR_reason_error_string(e));
	else if (c->eof)
		conn_fail(c, "connection closed without close_notify");
	else
		conn_fail(c, "TLS failed (error %d)", err);
	c->failed = true;
	ERR_clear_error();
	return -EPROTO;
}

int tls_conn_handshake(struct tls_conn *c)
{
	bool need_peer;
	int r;

	if (c->failed)
		return -EPROTO;
	if (c->established)
		return 0;
	ERR_clear_error();
	r = SSL_do_handshake(c->ssl);
	if (r != 1)
		return conn_error(c, r);
	/* Belt and braces: no session without a peer that passed the checks. */
	need_peer = c->ctx->mode == TLS_MUTUAL || (!c->ctx->server && c->ctx->peer_roles);
	if ((need_peer && !c->has_peer) ||
	    (!c->ctx->server && !SSL_get0_peer_certificate(c->ssl))) {
		conn_fail(c, "peer identity was not checked");
		return -EPROTO;
	}
	c->established = true;
	return 0;
}

bool tls_conn_established(const struct tls_conn *c)
{
	return c->established;
}

ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t len)
{
	size_t n = 0;
	int r;

	if (!c->established) {
		r = tls_conn_handshake(c);
		if (r < 0)
			return r;
	}
	if (c->failed)
		return -EPROTO;
	ERR_clear_error();
	r = SSL_read_ex(c->ssl, buf, len, &n);
	if (r == 1)
		return (ssize_t)n;
	return conn_error(c, r);
}

ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t done = 0;

	if (c->failed)
		return -EPROTO;
	if (!c->established)
		return -EAGAIN;
	/* Whole records only, so SSL_write never holds a partial record to be retried. */
	while (done < len &&
	       BIO_ctrl_get_write_guarantee(SSL_get_wbio(c->ssl)) >= TLS_RECORD_ROOM) {
		size_t chunk = len - done, n = 0;
		int r;

		if (chunk > TLS_RECORD_PLAIN)
			chunk = TLS_RECORD_PLAIN;
		ERR_clear_error();
		r = SSL_write_ex(c->ssl, p + done, chunk, &n);
		if (r != 1) {
			r = conn_error(c, r);
			if (r == -EAGAIN) {
				conn_fail(c, "TLS output overran its buffer");
				return -EPROTO;
			}
			return r;
		}
		done += n;
	}
	return done ? (ssize_t)done : -EAGAIN;
}

int tls_conn_shutdown(struct tls_conn *c)
{
	int r;

	if (c->failed)
		return -EPROTO;
	if (!c->established)
		return 0; /* nothing to close cleanly: the caller just closes the socket */
	ERR_clear_error();
	r = SSL_shutdown(c->ssl);
	if (r >= 0)
		return 0;
	r = conn_error(c, r);
	return r == -EAGAIN ? 0 : r;
}

size_t tls_conn_pending(const struct tls_conn *c)
{
	return BIO_ctrl_pending(c->net);
}

void tls_conn_peek(struct tls_conn *c, const void **buf, size_t *len)
{
	char *p = NULL;
	int n = BIO_nread0(c->net, &p);

	*buf = p;
	*len = n > 0 ? (size_t)n : 0;
}

void tls_conn_consume(struct tls_conn *c, size_t n)
{
	while (n > 0) {
		char *p;
		int got = BIO_nread(c->net, &p, n > INT_MAX ? INT_MAX : (int)n);

		if (got <= 0)
			break;
		n -= (size_t)got;
	}
}

size_t tls_conn_take(struct tls_conn *c, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		const void *p;
		size_t n;

		tls_conn_peek(c, &p, &n);
		if (n == 0)
			break;
		if (n > len - done)
			n = len - done;
		memcpy((uint8_t *)buf + done, p, n);
		tls_conn_consume(c, n);
		done += n;
	}
	return done;
}

const char *tls_conn_why(const struct tls_conn *c)
{
	return c->why;
}

const struct ident *tls_conn_peer(const struct tls_conn *c)
{
	return c->established && c->has_peer ? &c->peer : NULL;
}

const ASN1_INTEGER *tls_conn_peer_serial(const struct tls_conn *c)
{
	return c->established ? c->serial : NULL;
}

const uint8_t *tls_conn_peer_sha256(const struct tls_conn *c)
{
	return c->established && SSL_get0_peer_certificate(c->ssl) ? c->peer_sha256 : NULL;
}

int tls_conn_export(const struct tls_conn *c, const char *label, const uint8_t *context,
                    size_t context_len, uint8_t *out, size_t out_len)
{
	if (!c->established || c->failed || !label)
		return -EINVAL;
	if (SSL_export_keying_material(c->ssl, out, out_len, label, strlen(label), context,
	                               context_len, 1) != 1) {
		OPENSSL_cleanse(out, out_len);
		return -EINVAL;
	}
	return 0;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
	const SSL_CIPHER *cs = c->established ? SSL_get_current_cipher(c->ssl) : NULL;

	return cs ? SSL_CIPHER_standard_name(cs) : "";
}

int tls_load_certs_mem(const void *buf, size_t len, STACK_OF(X509) **out)
{
	STACK_OF(X509) *certs = NULL;
	BIO *bio = NULL;
	X509 *x;
	int ret = -ENOMEM;

	*out = NULL;
	if (len > TLS_LOAD_MAX)
		return -EFBIG;
	bio = BIO_new_mem_buf(buf, (int)len);
	certs = sk_X509_new_null();
	if (!bio || !certs)
		goto out;
	ret = -EBADMSG;
	ERR_clear_error();
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
		if (sk_X509_num(certs) >= TLS_LOAD_CERTS_MAX || !sk_X509_push(certs, x)) {
			X509_free(x);
			goto out;
		}
	}
	/* The loop ends at the end of input (no start line) or at a bad certificate. */
	if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE || sk_X509_num(certs) == 0)
		goto out;
	*out = certs;
	certs = NULL;
	ret = 0;
out:
	ERR_clear_error();
	sk_X509_pop_free(certs, X509_free);
	BIO_free(bio);
	return ret;
}

int tls_load_certs(const char *path, STACK_OF(X509) **out)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	FILE *f;
	int ret;

	*out = NULL;
	f = fopen(path, "re");
	if (!f)
		return -errno;
	buf = malloc(TLS_LOAD_MAX + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	len = fread(buf, 1, TLS_LOAD_MAX + 1, f);
	if (ferror(f)) {
		ret = -EIO;
		goto out;
	}
	ret = len > TLS_LOAD_MAX ? -EFBIG : tls_load_certs_mem(buf, len, out);
out:
	free(buf);
	fclose(f);
	return ret;
}

/* Keys arrive decrypted; never prompt on a terminal for an encrypted PEM. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

int tls_load_key_mem(const void *buf, size_t len, EVP_PKEY **out)
{
	BIO *bio;

	*out = NULL;
	if (len == 0 || len > TLS_LOAD_MAX)
		return -EBADMSG;
	bio = BIO_new_mem_buf(buf, (int)len);
	if (!bio)
		return -ENOMEM;
	*out = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	if (!*out) {
		const unsigned char *p = buf;

		*out = d2i_AutoPrivateKey(NULL, &p, (long)len);
	}
	BIO_free(bio);
	ERR_clear_error();
	return *out ? 0 : -EBADMSG;
}
