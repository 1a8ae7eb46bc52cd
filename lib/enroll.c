/* Enrollment messages and the enrollment client (enroll, renew, load). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "device.h"
#include "enroll.h"
#include "keyfile.h"
#include "log.h"

#define ENROLL_IO_TIMEOUT 15 /* seconds */
#define ENROLL_PEM_MAX    (128 * 1024)

static const uint8_t enroll_magic[4] = {'M', 'T', 'E', 'N'};

/* Maximum value length per tag; 0 = exactly fixed length given in enroll_fixed. */
static const uint32_t enroll_max[ET_MAX] = {
    [ET_TOKEN] = ENROLL_TOKEN_MAX,
    [ET_CSR] = ENROLL_CSR_MAX,
    [ET_NONCE] = ENROLL_NONCE_LEN,
    [ET_TIME] = 8,
    [ET_TENANT] = IDENT_TENANT_MAX,
    [ET_ROLE] = 16,
    [ET_ID] = IDENT_ID_MAX,
    [ET_USER] = IDENT_USER_MAX,
    [ET_GROUPS] = 1024,
    [ET_TTL] = 8,
    [ET_STATUS] = 2,
    [ET_MESSAGE] = 512,
    [ET_CHAIN] = 64 * 1024,
    [ET_ROOT] = 16 * 1024,
    [ET_CRL] = ENROLL_MSG_MAX - 64,
    [ET_SERIAL] = 64,
    [ET_LIST] = ENROLL_MSG_MAX - 64,
};

static bool enroll_fixed(enum enroll_tag t)
{
	return t == ET_NONCE || t == ET_TIME || t == ET_TTL || t == ET_STATUS;
}

static bool enroll_textual(enum enroll_tag t)
{
	return t != ET_CSR && t != ET_NONCE && t != ET_TIME && t != ET_TTL && t != ET_STATUS &&
	       t != ET_CRL;
}

static void be32_put(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static uint32_t be32_get(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int enroll_buf_init(struct enroll_buf *b, enum enroll_type type)
{
	b->cap = 1024;
	b->p = calloc(1, b->cap);
	if (!b->p)
		return -ENOMEM;
	memcpy(b->p, enroll_magic, 4);
	b->p[4] = 1;
	b->p[5] = (uint8_t)type;
	b->len = ENROLL_HDR_LEN;
	return 0;
}

int enroll_buf_put(struct enroll_buf *b, enum enroll_tag tag, const void *val, size_t len)
{
	size_t need;

	if (!b->p || tag <= 0 || tag >= ET_MAX || len == 0 || len > enroll_max[tag] ||
	    (enroll_fixed(tag) && len != enroll_max[tag]))
		return -EINVAL;
	need = b->len + 6 + len;
	if (need > ENROLL_MSG_MAX)
		return -EMSGSIZE;
	if (need > b->cap) {
		size_t cap = b->cap;
		uint8_t *p;

		while (cap < need)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	b->p[b->len] = (uint8_t)(tag >> 8);
	b->p[b->len + 1] = (uint8_t)tag;
	be32_put(b->p + b->len + 2, (uint32_t)len);
	memcpy(b->p + b->len + 6, val, len);
	b->len = need;
	be32_put(b->p + 8, (uint32_t)(b->len - ENROLL_HDR_LEN));
	return 0;
}

int enroll_buf_put_str(struct enroll_buf *b, enum enroll_tag tag, const char *s)
{
	return enroll_buf_put(b, tag, s, strlen(s));
}

int enroll_buf_put_u64(struct enroll_buf *b, enum enroll_tag tag, uint64_t v)
{
	uint8_t x[8];

	for (int i = 7; i >= 0; i--, v >>= 8)
		x[i] = (uint8_t)v;
	return enroll_buf_put(b, tag, x, 8);
}

void enroll_buf_free(struct enroll_buf *b)
{
	if (!b)
		return;
	if (b->p)
		OPENSSL_clear_free(b->p, b->cap);
	b->p = NULL;
	b->len = b->cap = 0;
}

int enroll_hdr_parse(const uint8_t hdr[ENROLL_HDR_LEN], size_t max, uint32_t *body_len)
{
	if (memcmp(hdr, enroll_magic, 4) != 0 || hdr[4] != 1 || hdr[6] != 0 || hdr[7] != 0)
		return -EBADMSG;
	*body_len = be32_get(hdr + 8);
	if (max < ENROLL_HDR_LEN || *body_len > max - ENROLL_HDR_LEN)
		return -EMSGSIZE;
	return 0;
}

int enroll_msg_parse(const uint8_t *buf, size_t len, size_t max, struct enroll_msg *m)
{
	uint32_t body;
	size_t off;
	int ret;

	memset(m, 0, sizeof(*m));
	if (len < ENROLL_HDR_LEN)
		return -EBADMSG;
	ret = enroll_hdr_parse(buf, max, &body);
	if (ret)
		return ret;
	if (body != len - ENROLL_HDR_LEN)
		return -EBADMSG;
	m->type = buf[5];
	for (off = ENROLL_HDR_LEN; off < len;) {
		unsigned tag;
		uint32_t vlen;

		if (len - off < 6)
			return -EBADMSG;
		tag = (unsigned)buf[off] << 8 | buf[off + 1];
		vlen = be32_get(buf + off + 2);
		off += 6;
		if (tag == 0 || tag >= ET_MAX || (m->present & (1U << tag)))
			return -EBADMSG;
		if (vlen == 0 || vlen > enroll_max[tag] || vlen > len - off ||
		    (enroll_fixed(tag) && vlen != enroll_max[tag]))
			return -EBADMSG;
		if (enroll_textual(tag) && memchr(buf + off, '\0', vlen))
			return -EBADMSG;
		m->present |= 1U << tag;
		m->v[tag].p = buf + off;
		m->v[tag].len = vlen;
		off += vlen;
	}
	return 0;
}

int enroll_msg_str(const struct enroll_msg *m, enum enroll_tag tag, char *out, size_t size)
{
	if (tag <= 0 || tag >= ET_MAX || !enroll_msg_has(m, tag))
		return -ENOENT;
	if (m->v[tag].len >= size)
		return -ENOSPC;
	memcpy(out, m->v[tag].p, m->v[tag].len);
	out[m->v[tag].len] = '\0';
	return 0;
}

int enroll_msg_u64(const struct enroll_msg *m, enum enroll_tag tag, uint64_t *v)
{
	if (tag <= 0 || tag >= ET_MAX || !enroll_msg_has(m, tag) || m->v[tag].len != 8)
		return -ENOENT;
	*v = 0;
	for (int i = 0; i < 8; i++)
		*v = *v << 8 | m->v[tag].p[i];
	return 0;
}

/* Reads or writes exactly len bytes over a blocking TLS connection (ctx is the SSL). */
static int ssl_io(void *ctx, uint8_t *p, size_t len, bool wr)
{
	SSL *ssl = ctx;

	while (len > 0) {
		size_t done = 0;
		int ok = wr ? SSL_write_ex(ssl, p, len, &done) : SSL_read_ex(ssl, p, len, &done);

		if (!ok) {
			int e = SSL_get_error(ssl, 0);

			ERR_clear_error();
			return e == SSL_ERROR_ZERO_RETURN ? -ECONNRESET : -EIO;
		}
		p += done;
		len -= done;
	}
	return 0;
}

int enroll_fd_io(int fd, void *buf, size_t len, bool wr)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = wr ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -ECONNRESET : -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int fd_io(void *ctx, uint8_t *p, size_t len, bool wr)
{
	return enroll_fd_io(*(int *)ctx, p, len, wr);
}

/* One framed message through io: the header, its checked length, then the body. */
static int msg_recv(int (*io)(void *, uint8_t *, size_t, bool), void *ctx, size_t max,
                    uint8_t **out, size_t *len, struct enroll_msg *m)
{
	uint8_t hdr[ENROLL_HDR_LEN], *buf;
	uint32_t body;
	int ret;

	*out = NULL;
	ret = io(ctx, hdr, sizeof(hdr), false);
	if (ret)
		return ret;
	ret = enroll_hdr_parse(hdr, max, &body);
	if (ret)
		return ret;
	buf = malloc(ENROLL_HDR_LEN + (size_t)body);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, hdr, sizeof(hdr));
	ret = io(ctx, buf + ENROLL_HDR_LEN, body, false);
	if (!ret)
		ret = enroll_msg_parse(buf, ENROLL_HDR_LEN + (size_t)body, max, m);
	if (ret) {
		free(buf);
		return ret;
	}
	*out = buf;
	if (len)
		*len = ENROLL_HDR_LEN + (size_t)body;
	return 0;
}

int enroll_ssl_send(SSL *ssl, const struct enroll_buf *b)
{
	return ssl_io(ssl, b->p, b->len, true);
}

int enroll_ssl_recv(SSL *ssl, size_t max, uint8_t **out, size_t *len, struct enroll_msg *m)
{
	return msg_recv(ssl_io, ssl, max, out, len, m);
}

int enroll_fd_recv(int fd, size_t max, uint8_t **out, size_t *len, struct enroll_msg *m)
{
	return msg_recv(fd_io, &fd, max, out, len, m);
}

int enroll_pin_of(X509 *cert, char out[8 + 64 + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned mdlen = 0;

	/* the certificate's DER, as lib/tls pins and `openssl x509 -fingerprint -sha256` shows */
	if (X509_digest(cert, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32)
		return -EIO;
	memcpy(out, ENROLL_PIN_PREFIX, 7);
	for (unsigned i = 0; i < 32; i++) {
		out[7 + 2 * i] = hex[md[i] >> 4];
		out[7 + 2 * i + 1] = hex[md[i] & 15];
	}
	out[7 + 64] = '\0';
	return 0;
}

int enroll_cert_ident(X509 *cert, struct ident *out)
{
	GENERAL_NAMES *names;
	const char *why;
	int ret = -ENOENT;

	names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	if (!names)
		return -ENOENT;
	for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
		GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
		const ASN1_IA5STRING *uri;

		if (gn->type != GEN_URI)
			continue;
		uri = gn->d.uniformResourceIdentifier;
		if (uri->length < 7 || memcmp(uri->data, "mtun://", 7) != 0)
			continue;
		ret = ident_parse((const char *)uri->data, (size_t)uri->length, out, &why);
		break;
	}
	GENERAL_NAMES_free(names);
	return ret;
}

/* ---- client ---- */

struct enroll_conn {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	char pin[8 + 64 + 1];
};

static int enroll_pin_verify(X509_STORE_CTX *xctx, void *arg)
{
	const struct enroll_conn *c = arg;
	X509 *leaf = X509_STORE_CTX_get0_cert(xctx);
	char got[8 + 64 + 1];

	/* The pin replaces PKI validation: TLS 1.3 CertificateVerify proves the key. */
	if (!leaf || enroll_pin_of(leaf, got) != 0)
		return 0;
	if (CRYPTO_memcmp(got, c->pin, 7 + 64) != 0) {
		log_warnx("the CA's certificate does not match the pinned fingerprint: got %s",
		          got);
		X509_STORE_CTX_set_error(xctx, X509_V_ERR_APPLICATION_VERIFICATION);
		return 0;
	}
	return 1;
}

static int enroll_tcp_connect(const char *hostport)
{
	char host[256], *colon;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
	struct timeval tv = {.tv_sec = ENROLL_IO_TIMEOUT};
	int fd = -1, ret;

	if (snprintf(host, sizeof(host), "%s", hostport) >= (int)sizeof(host))
		return -EINVAL;
	colon = strrchr(host, ':');
	if (!colon || colon == host || !colon[1])
		return -EINVAL;
	*colon = '\0';
	if (host[0] == '[' && colon[-1] == ']') {
		colon[-1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	ret = getaddrinfo(host, colon + 1, &hints, &res);
	if (ret) {
		log_warnx("cannot resolve %s: %s", hostport, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	ret = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			ret = fd;
			break;
		}
		ret = -errno;
		close(fd);
	}
	freeaddrinfo(res);
	return ret;
}

static void enroll_conn_close(struct enroll_conn *c)
{
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	c->ssl = NULL;
	c->ctx = NULL;
	c->fd = -1;
}

/* Server-authenticated by pin; with id, also presents the component's certificate. */
static int enroll_conn_open(struct enroll_conn *c, const char *addr, const char *pin,
                            const struct enroll_identity *id)
{
	int ret = -EIO;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	if (strlen(pin) != 7 + 64 || strncmp(pin, ENROLL_PIN_PREFIX, 7) != 0) {
		log_warnx("bad CA fingerprint '%.80s': expected sha256: and 64 hex digits", pin);
		return -EINVAL;
	}
	for (int i = 0; i < 7 + 64; i++)
		c->pin[i] = (char)tolower((unsigned char)pin[i]);
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (!c->ctx)
		goto out;
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION);
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_cert_verify_callback(c->ctx, enroll_pin_verify, c);
	if (id) {
		if (SSL_CTX_use_certificate(c->ctx, id->cert) != 1 ||
		    SSL_CTX_use_PrivateKey(c->ctx, id->key) != 1)
			goto out;
		for (int i = 0; i < sk_X509_num(id->chain); i++)
			if (SSL_CTX_add1_chain_cert(c->ctx, sk_X509_value(id->chain, i)) != 1)
				goto out;
	}
	ret = enroll_tcp_connect(addr);
	if (ret < 0) {
		log_warnx("cannot connect to the CA at %s: %s", addr, strerror(-ret));
		goto out;
	}
	c->fd = ret;
	ret = -EIO;
	c->ssl = SSL_new(c->ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
		goto out;
	if (SSL_connect(c->ssl) != 1) {
		unsigned long e = ERR_peek_last_error();

		log_warnx("TLS handshake with the CA at %s failed: %s", addr,
		          e ? ERR_reason_error_string(e) : "connection closed");
		ERR_clear_error();
		ret = -EPROTO;
		goto out;
	}
	ret = 0;
out:
	if (ret)
		enroll_conn_close(c);
	return ret;
}

int enroll_csr_make(EVP_PKEY *key, const struct ident *id, X509_REQ **out)
{
	char uri[IDENT_URI_MAX];
	X509_REQ *req = NULL;
	X509_NAME *name;
	STACK_OF(X509_EXTENSION) *exts = NULL;
	X509_EXTENSION *ext = NULL;
	GENERAL_NAMES *gens = NULL;
	GENERAL_NAME *gn;
	ASN1_IA5STRING *ia5;
	int ret;

	ret = ident_format(id, uri, sizeof(uri));
	if (ret)
		return ret;
	ret = -EIO;
	req = X509_REQ_new();
	gens = GENERAL_NAMES_new();
	exts = sk_X509_EXTENSION_new_null();
	if (!req || !gens || !exts)
		goto out;
	name = X509_REQ_get_subject_name(req);
	if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)id->id, -1,
	                                -1, 0))
		goto out;
	gn = GENERAL_NAME_new();
	ia5 = ASN1_IA5STRING_new();
	if (!gn || !ia5 || !ASN1_STRING_set(ia5, uri, -1)) {
		GENERAL_NAME_free(gn);
		ASN1_IA5STRING_free(ia5);
		goto out;
	}
	GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
	if (!sk_GENERAL_NAME_push(gens, gn)) {
		GENERAL_NAME_free(gn);
		goto out;
	}
	ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
	if (!ext || !sk_X509_EXTENSION_push(exts, ext))
		goto out;
	ext = NULL;
	if (!X509_REQ_add_extensions(req, exts) || !X509_REQ_set_pubkey(req, key) ||
	    !X509_REQ_sign(req, key, EVP_sha256()))
		goto out;
	*out = req;
	req = NULL;
	ret = 0;
out:
	X509_EXTENSION_free(ext);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	GENERAL_NAMES_free(gens);
	X509_REQ_free(req);
	return ret;
}

static EVP_PKEY *enroll_new_key(void)
{
	return EVP_EC_gen("P-256");
}

static int enroll_path(char *buf, size_t size, const char *dir, const char *file)
{
	return snprintf(buf, size, "%s/%s", dir, file) >= (int)size ? -ENAMETOOLONG : 0;
}

/* Parses a PEM bundle: the first certificate, and the rest into *rest. */
static int enroll_parse_chain(const uint8_t *pem, size_t len, X509 **first, STACK_OF(X509) **rest)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	X509 *x;
	int ret = -EBADMSG;

	*first = NULL;
	*rest = sk_X509_new_null();
	if (!bio || !*rest)
		goto out;
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
		if (!*first) {
			*first = x;
		} else if (!sk_X509_push(*rest, x)) {
			X509_free(x);
			goto out;
		}
	}
	ERR_clear_error();
	if (*first)
		ret = 0;
out:
	BIO_free(bio);
	if (ret) {
		X509_free(*first);
		*first = NULL;
		sk_X509_pop_free(*rest, X509_free);
		*rest = NULL;
	}
	return ret;
}

/* Checks that chain (leaf + intermediates) verifies to root now. */
static int enroll_verify_chain(X509 *leaf, STACK_OF(X509) *chain, X509 *root)
{
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *xc = X509_STORE_CTX_new();
	int ret = -EBADMSG;

	if (!st || !xc || !X509_STORE_add_cert(st, root) ||
	    !X509_STORE_CTX_init(xc, st, leaf, chain))
		goto out;
	if (X509_verify_cert(xc) == 1)
		ret = 0;
	else
		log_warnx("returned chain does not verify: %s",
		          X509_verify_cert_error_string(X509_STORE_CTX_get_error(xc)));
out:
	X509_STORE_CTX_free(xc);
	X509_STORE_free(st);
	return ret;
}

static int enroll_secret(const char *identity_source, struct device_fp *fp)
{
	int ret = device_fingerprint(identity_source, fp);

	if (ret)
		log_warnx("cannot read the device identifiers%s%s: %s",
		          identity_source ? " from " : "", identity_source ? identity_source : "",
		          ret == -EINVAL ? "machine-id is not 32 hex digits" : strerror(-ret));
	return ret;
}

/* Sends req, reads the response, and fails with the CA's message when status != 0. */
static int enroll_exchange(struct enroll_conn *c, struct enroll_buf *req, uint8_t **buf,
                           struct enroll_msg *m)
{
	char msg[513] = "";
	size_t len;
	int ret;

	ret = enroll_ssl_send(c->ssl, req);
	if (!ret)
		ret = enroll_ssl_recv(c->ssl, ENROLL_MSG_MAX, buf, &len, m);
	if (ret) {
		log_warnx("no valid answer from the CA: %s", strerror(-ret));
		return ret;
	}
	if (m->type != ENROLL_T_RESPONSE || !enroll_msg_has(m, ET_STATUS)) {
		ret = -EBADMSG;
	} else if (m->v[ET_STATUS].p[0] || m->v[ET_STATUS].p[1]) {
		enroll_msg_str(m, ET_MESSAGE, msg, sizeof(msg));
		log_warnx("the CA refused the request: %s", msg[0] ? msg : "(no reason given)");
		ret = -EACCES;
	}
	if (ret) {
		free(*buf);
		*buf = NULL;
	}
	return ret;
}

/* Checks the answer and writes key, chain, root and ca.conf into o->dir. */
static int enroll_store(const struct enroll_opts *o, const char *pin, EVP_PKEY *key,
                        const struct device_fp *fp, const struct enroll_msg *m,
                        const struct ident *want)
{
	char path[PATH_MAX], conf[512];
	X509 *leaf = NULL, *root = NULL;
	STACK_OF(X509) *chain = NULL, *rest = NULL;
	struct ident got;
	int ret = -EBADMSG;

	if (!enroll_msg_has(m, ET_CHAIN) || !enroll_msg_has(m, ET_ROOT))
		goto out;
	ret = enroll_parse_chain(m->v[ET_CHAIN].p, m->v[ET_CHAIN].len, &leaf, &chain);
	if (ret)
		goto out;
	ret = enroll_parse_chain(m->v[ET_ROOT].p, m->v[ET_ROOT].len, &root, &rest);
	if (ret)
		goto out;
	ret = -EBADMSG;
	if (X509_check_private_key(leaf, key) != 1) {
		log_warnx("the CA returned a certificate for another key");
		goto out;
	}
	if (enroll_cert_ident(leaf, &got) != 0 || got.role != want->role ||
	    strcmp(got.id, want->id) != 0 || got.has_device != want->has_device ||
	    (want->has_device && memcmp(got.device, want->device, IDENT_DEVICE_LEN) != 0)) {
		log_warnx("the CA returned a certificate for another identity");
		goto out;
	}
	ret = enroll_verify_chain(leaf, chain, root);
	if (ret)
		goto out;
	ret = enroll_path(path, sizeof(path), o->dir, ENROLL_KEY_FILE);
	if (!ret)
		ret = keyfile_write(path, key, KEYFILE_DEVICE, fp->secret, sizeof(fp->secret));
	if (ret) {
		log_warnx("cannot write %s: %s", path, strerror(-ret));
		goto out;
	}
	enroll_path(path, sizeof(path), o->dir, ENROLL_CERT_FILE);
	ret = keyfile_write_atomic(path, m->v[ET_CHAIN].p, m->v[ET_CHAIN].len, 0644);
	if (!ret) {
		enroll_path(path, sizeof(path), o->dir, ENROLL_ROOT_FILE);
		ret = keyfile_write_atomic(path, m->v[ET_ROOT].p, m->v[ET_ROOT].len, 0644);
	}
	if (!ret) {
		int n = snprintf(conf, sizeof(conf), "ca=%s\npin=%s\n", o->ca_addr, pin);

		enroll_path(path, sizeof(path), o->dir, ENROLL_CA_FILE);
		ret = n >= (int)sizeof(conf) ? -ENAMETOOLONG
		                             : keyfile_write_atomic(path, conf, (size_t)n, 0644);
	}
	if (ret)
		log_warnx("cannot write %s: %s", path, strerror(-ret));
out:
	if (ret == -EBADMSG)
		log_warnx("the CA's answer is not a valid certificate chain");
	X509_free(leaf);
	X509_free(root);
	sk_X509_pop_free(chain, X509_free);
	sk_X509_pop_free(rest, X509_free);
	return ret;
}

int enroll_request_build(struct enroll_buf *b, enum enroll_type type, X509_REQ *req,
                         const char *token)
{
	uint8_t nonce[ENROLL_NONCE_LEN], *der = NULL;
	int len, ret;

	ret = enroll_buf_init(b, type);
	if (ret)
		return ret;
	len = i2d_X509_REQ(req, &der);
	if (len <= 0)
		return -EIO;
	ret = -EIO;
	if (RAND_bytes(nonce, sizeof(nonce)) != 1)
		goto out;
	ret = enroll_buf_put(b, ET_CSR, der, (size_t)len);
	if (!ret)
		ret = enroll_buf_put(b, ET_NONCE, nonce, sizeof(nonce));
	if (!ret)
		ret = enroll_buf_put_u64(b, ET_TIME, (uint64_t)time(NULL));
	if (!ret && token)
		ret = enroll_buf_put_str(b, ET_TOKEN, token);
out:
	OPENSSL_free(der);
	return ret;
}

static int enroll_token_tenant(const char *token, char tenant[IDENT_TENANT_MAX + 1])
{
	const char *a, *b;

	/* mtt1.TENANT.SECRET (see ca/token.c) */
	if (strncmp(token, "mtt1.", 5) != 0)
		return -EINVAL;
	a = token + 5;
	b = strchr(a, '.');
	if (!b || b == a || (size_t)(b - a) > IDENT_TENANT_MAX)
		return -EINVAL;
	memcpy(tenant, a, (size_t)(b - a));
	tenant[b - a] = '\0';
	return ident_valid_tenant(tenant) ? 0 : -EINVAL;
}

static int enroll_mkdir(const char *dir)
{
	struct stat st;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		log_warn("cannot create %s", dir);
		return -errno;
	}
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		log_warnx("%s is not a directory", dir);
		return -ENOTDIR;
	}
	return 0;
}

int enroll_run(const struct enroll_opts *o)
{
	struct enroll_conn c = {.fd = -1};
	struct enroll_buf b = {0};
	struct enroll_msg m;
	struct device_fp fp;
	struct ident id = {0};
	char host[HOST_NAME_MAX + 1], path[PATH_MAX];
	EVP_PKEY *key = NULL;
	X509_REQ *req = NULL;
	uint8_t *resp = NULL;
	int ret;

	memset(&fp, 0, sizeof(fp));
	if (!o->ca_addr || !o->pin || !o->token || !o->dir) {
		log_warnx("enroll needs --ca, --ca-fingerprint, --token and a state directory");
		return -EINVAL;
	}
	if (strlen(o->token) > ENROLL_TOKEN_MAX || enroll_token_tenant(o->token, id.tenant) != 0) {
		log_warnx("malformed enrollment token: expected mtt1.TENANT.SECRET");
		return -EINVAL;
	}
	id.role = o->role;
	if (o->id) {
		snprintf(id.id, sizeof(id.id), "%s", o->id);
	} else {
		if (gethostname(host, sizeof(host)) < 0)
			return -errno;
		host[sizeof(host) - 1] = '\0';
		snprintf(id.id, sizeof(id.id), "%s", host);
	}
	if (!ident_valid_id(id.id)) {
		log_warnx("component id '%.64s' is not valid ([A-Za-z0-9._-], 1..64)", id.id);
		return -EINVAL;
	}
	if (o->role == MT_ROLE_AGENT && (!o->user || !ident_valid_user(o->user))) {
		log_warnx("agent enroll needs --user U: the user the token was created for");
		return -EINVAL;
	}
	ret = enroll_mkdir(o->dir);
	if (ret)
		return ret;
	enroll_path(path, sizeof(path), o->dir, ENROLL_CERT_FILE);
	if (!o->force && access(path, F_OK) == 0) {
		log_warnx("%s holds an enrollment already: renew it, or enroll with --force to "
		          "replace it",
		          o->dir);
		return -EEXIST;
	}
	ret = enroll_secret(o->identity_source, &fp);
	if (ret)
		return ret;
	if (o->role == MT_ROLE_AGENT) {
		id.has_device = true;
		memcpy(id.device, fp.id, sizeof(id.device));
		snprintf(id.user, sizeof(id.user), "%s", o->user);
	}
	ret = -EIO;
	key = enroll_new_key();
	if (!key)
		goto out;
	ret = enroll_csr_make(key, &id, &req);
	if (!ret)
		ret = enroll_request_build(&b, ENROLL_T_ENROLL, req, o->token);
	if (ret) {
		log_warnx("cannot build the enrollment request: %s", strerror(-ret));
		goto out;
	}
	ret = enroll_conn_open(&c, o->ca_addr, o->pin, NULL);
	if (ret)
		goto out;
	ret = enroll_exchange(&c, &b, &resp, &m);
	if (ret)
		goto out;
	ret = enroll_store(o, o->pin, key, &fp, &m, &id);
	if (!ret)
		log_event(LOG_LVL_INFO, "enroll.ok", "tenant=%s role=%s id=%s dir=%s", id.tenant,
		          ident_role_name(id.role), id.id, o->dir);
out:
	free(resp);
	enroll_conn_close(&c);
	enroll_buf_free(&b);
	X509_REQ_free(req);
	EVP_PKEY_free(key);
	device_fp_clear(&fp);
	return ret;
}

/* Reads ca=... and pin=... from the state directory. */
static int enroll_read_ca_conf(const char *dir, char *addr, size_t asize, char *pin, size_t psize)
{
	char path[PATH_MAX], *line, *save = NULL;
	uint8_t *buf;
	size_t len;
	int ret;

	enroll_path(path, sizeof(path), dir, ENROLL_CA_FILE);
	ret = keyfile_slurp(path, 4096, &buf, &len);
	if (ret)
		return ret;
	addr[0] = pin[0] = '\0';
	for (line = strtok_r((char *)buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "ca=", 3) == 0)
			snprintf(addr, asize, "%s", line + 3);
		else if (strncmp(line, "pin=", 4) == 0)
			snprintf(pin, psize, "%s", line + 4);
	}
	free(buf);
	return addr[0] && pin[0] ? 0 : -EBADMSG;
}

int enroll_renew_in(X509 *cert, time_t now, long *secs)
{
	const ASN1_TIME *nb = X509_get0_notBefore(cert), *na = X509_get0_notAfter(cert);
	ASN1_TIME *t;
	int days, s;
	long long life, left;

	if (!ASN1_TIME_diff(&days, &s, nb, na))
		return -EINVAL;
	life = (long long)days * 86400 + s;
	t = ASN1_TIME_set(NULL, now);
	if (!t)
		return -ENOMEM;
	if (!ASN1_TIME_diff(&days, &s, t, na)) {
		ASN1_TIME_free(t);
		return -EINVAL;
	}
	ASN1_TIME_free(t);
	left = (long long)days * 86400 + s;
	*secs = left - life / 3 > 0 ? (long)(left - life / 3) : 0;
	return 0;
}

int enroll_renew_due(X509 *cert, time_t now, bool *due)
{
	long secs;
	int ret = enroll_renew_in(cert, now, &secs);

	if (!ret)
		*due = secs == 0;
	return ret;
}

int enroll_renew(const struct enroll_opts *o)
{
	struct enroll_identity cur = {0};
	struct enroll_conn c = {.fd = -1};
	struct enroll_buf b = {0};
	struct enroll_msg m;
	struct device_fp fp;
	struct enroll_opts eff = *o;
	char addr[300], pin[128];
	EVP_PKEY *key = NULL;
	X509_REQ *req = NULL;
	uint8_t *resp = NULL;
	bool due = true;
	int ret;

	memset(&fp, 0, sizeof(fp));
	ret = enroll_load(o->dir, o->identity_source, &cur);
	if (ret)
		return ret;
	if (!o->ca_addr || !o->pin) {
		ret = enroll_read_ca_conf(o->dir, addr, sizeof(addr), pin, sizeof(pin));
		if (ret) {
			log_warnx("no CA address and fingerprint given and none in %s/%s", o->dir,
			          ENROLL_CA_FILE);
			goto out;
		}
		eff.ca_addr = o->ca_addr ? o->ca_addr : addr;
		eff.pin = o->pin ? o->pin : pin;
	}
	if (cur.ident.role != o->role) {
		log_warnx("%s holds a %s certificate, not a %s one", o->dir,
		          ident_role_name(cur.ident.role), ident_role_name(o->role));
		ret = -EINVAL;
		goto out;
	}
	ret = enroll_renew_due(cur.cert, time(NULL), &due);
	if (ret)
		goto out;
	if (!due && !o->force) {
		log_info("certificate not yet due for renewal");
		goto out;
	}
	ret = enroll_secret(o->identity_source, &fp);
	if (ret)
		goto out;
	ret = -EIO;
	key = enroll_new_key();
	if (!key)
		goto out;
	ret = enroll_csr_make(key, &cur.ident, &req);
	if (!ret)
		ret = enroll_request_build(&b, ENROLL_T_RENEW, req, NULL);
	if (!ret)
		ret = enroll_conn_open(&c, eff.ca_addr, eff.pin, &cur);
	if (!ret)
		ret = enroll_exchange(&c, &b, &resp, &m);
	if (!ret)
		ret = enroll_store(&eff, eff.pin, key, &fp, &m, &cur.ident);
	if (!ret)
		log_event(LOG_LVL_INFO, "renew.ok", "tenant=%s role=%s id=%s", cur.ident.tenant,
		          ident_role_name(cur.ident.role), cur.ident.id);
out:
	free(resp);
	enroll_conn_close(&c);
	enroll_buf_free(&b);
	X509_REQ_free(req);
	EVP_PKEY_free(key);
	device_fp_clear(&fp);
	enroll_identity_free(&cur);
	return ret;
}

static int enroll_crl_deliver(const struct enroll_msg *m, const X509 *issuer, enroll_crl_fn on_crl,
                              void *arg)
{
	const uint8_t *p;
	X509_CRL *crl;
	int ret;

	if (!enroll_msg_has(m, ET_CRL))
		return -EBADMSG;
	p = m->v[ET_CRL].p;
	crl = d2i_X509_CRL(NULL, &p, m->v[ET_CRL].len);
	if (!crl || p != m->v[ET_CRL].p + m->v[ET_CRL].len ||
	    X509_CRL_verify(crl, X509_get0_pubkey(issuer)) != 1) {
		ERR_clear_error();
		X509_CRL_free(crl);
		log_warnx("the CA sent a CRL that does not verify under the issuing CA");
		return -EBADMSG;
	}
	ret = on_crl(crl, arg);
	X509_CRL_free(crl);
	return ret;
}

int enroll_crl_subscribe(const char *dir, const char *identity_source, enroll_crl_fn on_crl,
                         void *arg)
{
	struct enroll_identity id = {0};
	struct enroll_conn c = {.fd = -1};
	struct enroll_buf b = {0};
	struct enroll_msg m;
	struct timeval tv = {0};
	char addr[300], pin[128];
	uint8_t *resp = NULL;
	size_t len;
	int ret;

	ret = enroll_load(dir, identity_source, &id);
	if (ret)
		return ret;
	ret = enroll_read_ca_conf(dir, addr, sizeof(addr), pin, sizeof(pin));
	if (ret) {
		log_warnx("no CA address and fingerprint in %s/%s", dir, ENROLL_CA_FILE);
		goto out;
	}
	ret = -EINVAL;
	if (sk_X509_num(id.chain) < 1)
		goto out;
	ret = enroll_buf_init(&b, ENROLL_T_CRL_SUBSCRIBE);
	if (!ret)
		ret = enroll_conn_open(&c, addr, pin, &id);
	if (!ret)
		ret = enroll_exchange(&c, &b, &resp, &m);
	if (!ret)
		ret = enroll_crl_deliver(&m, sk_X509_value(id.chain, 0), on_crl, arg);
	if (ret)
		goto out;
	/* pushes arrive whenever a revocation happens: no read timeout from here on */
	setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (;;) {
		free(resp);
		resp = NULL;
		ret = enroll_ssl_recv(c.ssl, ENROLL_MSG_MAX, &resp, &len, &m);
		if (ret)
			break;
		if (m.type != ENROLL_T_CRL_PUSH) {
			ret = -EBADMSG;
			break;
		}
		ret = enroll_crl_deliver(&m, sk_X509_value(id.chain, 0), on_crl, arg);
		if (ret)
			break;
	}
out:
	free(resp);
	enroll_conn_close(&c);
	enroll_buf_free(&b);
	enroll_identity_free(&id);
	return ret;
}

int enroll_load(const char *dir, const char *identity_source, struct enroll_identity *id)
{
	char path[PATH_MAX];
	struct device_fp fp;
	STACK_OF(X509) *rest = NULL;
	uint8_t *pem = NULL;
	size_t len;
	int ret;

	memset(id, 0, sizeof(*id));
	memset(&fp, 0, sizeof(fp));
	enroll_path(path, sizeof(path), dir, ENROLL_CERT_FILE);
	ret = keyfile_slurp(path, ENROLL_PEM_MAX, &pem, &len);
	if (!ret)
		ret = enroll_parse_chain(pem, len, &id->cert, &id->chain);
	free(pem);
	pem = NULL;
	if (ret) {
		log_warnx("cannot load the certificate %s: %s", path,
		          ret == -EBADMSG ? "no PEM certificate" : strerror(-ret));
		goto out;
	}
	enroll_path(path, sizeof(path), dir, ENROLL_ROOT_FILE);
	ret = keyfile_slurp(path, ENROLL_PEM_MAX, &pem, &len);
	if (!ret)
		ret = enroll_parse_chain(pem, len, &id->root, &rest);
	free(pem);
	if (ret) {
		log_warnx("cannot load the tenant root %s: %s", path,
		          ret == -EBADMSG ? "no PEM certificate" : strerror(-ret));
		goto out;
	}
	ret = enroll_cert_ident(id->cert, &id->ident);
	if (ret) {
		log_warnx("%s/%s carries no mtun identity", dir, ENROLL_CERT_FILE);
		goto out;
	}
	ret = enroll_secret(identity_source, &fp);
	if (ret)
		goto out;
	enroll_path(path, sizeof(path), dir, ENROLL_KEY_FILE);
	ret = keyfile_read(path, KEYFILE_DEVICE, fp.secret, sizeof(fp.secret), &id->key);
	if (ret) {
		log_warnx("cannot load the private key %s: %s", path,
		          keyfile_strerror(ret, KEYFILE_DEVICE));
		goto out;
	}
	if (X509_check_private_key(id->cert, id->key) != 1) {
		ERR_clear_error();
		log_warnx("%s does not match the certificate in %s", path, ENROLL_CERT_FILE);
		ret = -EKEYREJECTED;
	}
out:
	sk_X509_pop_free(rest, X509_free);
	device_fp_clear(&fp);
	if (ret)
		enroll_identity_free(id);
	return ret;
}

void enroll_identity_free(struct enroll_identity *id)
{
	if (!id)
		return;
	EVP_PKEY_free(id->key);
	X509_free(id->cert);
	X509_free(id->root);
	sk_X509_pop_free(id->chain, X509_free);
	memset(id, 0, sizeof(*id));
}

/* Renews whenever due, until killed; a failed attempt is retried after a minute. */
static int enroll_renew_watch(const struct enroll_opts *o)
{
	struct enroll_opts each = *o;

	for (;;) {
		struct enroll_identity id = {0};
		long secs;
		int ret;

		ret = enroll_load(o->dir, o->identity_source, &id);
		if (ret)
			return ret;
		ret = enroll_renew_in(id.cert, time(NULL), &secs);
		enroll_identity_free(&id);
		if (ret)
			return ret;
		if (secs > 0 && !each.force) {
			log_info("next renewal in %ld s", secs);
			sleep(secs > 3600 ? 3600 : (unsigned)secs);
			continue;
		}
		ret = enroll_renew(&each);
		each.force = false;
		if (ret) {
			log_warnx("renewal failed; retrying in 60 s");
			sleep(60);
		}
	}
}

int enroll_cli(enum mt_role role, bool renew, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"ca", required_argument, NULL, 'c'},
	    {"ca-fingerprint", required_argument, NULL, 'p'},
	    {"token", required_argument, NULL, 't'},
	    {"state", required_argument, NULL, 's'},
	    {"id", required_argument, NULL, 'i'},
	    {"identity-source", required_argument, NULL, 'I'},
	    {"force", no_argument, NULL, 'f'},
	    {"watch", no_argument, NULL, 'w'},
	    {"inspector", no_argument, NULL, 'n'},
	    {"user", required_argument, NULL, 'u'},
	    {"log-level", required_argument, NULL, 'v'},
	    {NULL, 0, NULL, 0},
	};
	char dir[PATH_MAX];
	struct enroll_opts o = {.role = role};
	enum log_level lvl;
	int c;

	o.identity_source = getenv(DEVICE_SOURCE_ENV);
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o.ca_addr = optarg;
			break;
		case 'p':
			o.pin = optarg;
			break;
		case 't':
			o.token = optarg;
			break;
		case 's':
			o.dir = optarg;
			break;
		case 'i':
			o.id = optarg;
			break;
		case 'I':
			o.identity_source = optarg;
			break;
		case 'f':
			o.force = true;
			break;
		case 'w':
			o.watch = true;
			break;
		case 'u':
			if (role != MT_ROLE_AGENT) {
				log_warnx("--user is an agent option");
				return -EINVAL;
			}
			o.user = optarg;
			break;
		case 'n':
			if (role != MT_ROLE_BROKER) {
				log_warnx("--inspector is a broker option");
				return -EINVAL;
			}
			o.role = MT_ROLE_INSPECTOR;
			break;
		case 'v':
			if (log_parse_level(optarg, &lvl) != 0)
				return -EINVAL;
			log_set_level(lvl);
			break;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc) {
		log_warnx("unexpected argument '%s'", argv[optind]);
		return -EINVAL;
	}
	if (!o.dir) {
		snprintf(dir, sizeof(dir), "/var/lib/mtun/%s", ident_role_name(o.role));
		o.dir = dir;
	}
	if (o.identity_source && !o.identity_source[0])
		o.identity_source = NULL;
	if (!renew)
		return enroll_run(&o);
	return o.watch ? enroll_renew_watch(&o) : enroll_renew(&o);
}
