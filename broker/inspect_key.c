/*
 * An inspection node's side of key custody: asks mtun-ca for a tenant's inspection key over
 * mTLS with the node's enrolled inspector identity and opens the envelope in secure memory;
 * watches the tenant's CRL, which the CA pushes, for the key's intermediate.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "enroll.h"
#include "envelope.h"
#include "inspect.h"
#include "log.h"
#include "tls.h"

static int ik_read_conf(const char *dir, char *addr, size_t asz, char *pin, size_t psz)
{
	char path[4096], line[512];
	FILE *f;
	int n;

	n = snprintf(path, sizeof(path), "%s/%s", dir, ENROLL_CA_FILE);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -ENAMETOOLONG;
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "ca=", 3) == 0 && strlen(line + 3) < asz)
			memcpy(addr, line + 3, strlen(line + 3) + 1);
		else if (strncmp(line, "pin=", 4) == 0 && strlen(line + 4) < psz)
			memcpy(pin, line + 4, strlen(line + 4) + 1);
	}
	fclose(f);
	return addr[0] && pin[0] ? 0 : -EINVAL;
}

/* A blocking socket connected within timeout_ms, with I/O timeouts of the same length. */
static int ik_connect(const char *hostport, int timeout_ms)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	char host[300], *port;
	int fd = -1, err = -EHOSTUNREACH;

	if (strlen(hostport) >= sizeof(host))
		return -EINVAL;
	strcpy(host, hostport);
	port = strrchr(host, ':');
	if (!port)
		return -EINVAL;
	*port++ = '\0';
	if (host[0] == '[' && port - host >= 3 && port[-2] == ']') {
		port[-2] = '\0';
		memmove(host, host + 1, strlen(host + 1) + 1);
	}
	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -EHOSTUNREACH;
	for (ai = res; ai; ai = ai->ai_next) {
		struct pollfd pfd;
		socklen_t sl = sizeof(int);
		int soerr = 0;

		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
			goto next;
		pfd = (struct pollfd){.fd = fd, .events = POLLOUT};
		if (poll(&pfd, 1, timeout_ms) != 1 ||
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr)
			goto next;
		if (fcntl(fd, F_SETFL, 0) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
			goto next;
		err = 0;
		break;
	next:
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return err ? err : fd;
}

static void ik_why(char *why, size_t len, const char *s)
{
	if (why && len)
		snprintf(why, len, "%s", s);
}

/* An mTLS session with the CA of dir/ca.conf, its certificate pinned. */
struct ik_session {
	SSL_CTX *ctx;
	SSL *ssl;
	int fd;
};

static void ik_session_close(struct ik_session *c, bool shutdown)
{
	if (c->ssl) {
		if (shutdown)
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

static int ik_session_open(const char *dir, const char *identity_source, int timeout_ms,
                           struct ik_session *c, char *why, size_t why_len)
{
	char addr[300] = "", pin[100] = "", got[8 + 64 + 1];
	struct enroll_identity id = {0};
	int ret;

	c->ctx = NULL;
	c->ssl = NULL;
	c->fd = -1;
	ret = ik_read_conf(dir, addr, sizeof(addr), pin, sizeof(pin));
	if (ret) {
		ik_why(why, why_len, "no ca.conf in the state directory");
		goto out;
	}
	ret = enroll_load(dir, identity_source, &id);
	if (ret) {
		ik_why(why, why_len, "cannot load the inspector identity");
		goto out;
	}
	ret = -ENOMEM;
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (!c->ctx)
		goto out;
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate(c->ctx, id.cert) != 1 ||
	    SSL_CTX_use_PrivateKey(c->ctx, id.key) != 1)
		goto out;
	for (int i = 0; i < sk_X509_num(id.chain); i++)
		if (SSL_CTX_add1_chain_cert(c->ctx, sk_X509_value(id.chain, i)) != 1)
			goto out;
	c->fd = ik_connect(addr, timeout_ms);
	if (c->fd < 0) {
		ret = c->fd == -EINVAL ? -EINVAL : -EHOSTUNREACH;
		c->fd = -1;
		ik_why(why, why_len, "the CA is unreachable");
		goto out;
	}
	if (!(c->ssl = SSL_new(c->ctx)) || !SSL_set_fd(c->ssl, c->fd))
		goto out;
	if (SSL_connect(c->ssl) != 1) {
		ret = -EHOSTUNREACH;
		ik_why(why, why_len, "no TLS session with the CA");
		goto out;
	}
	/* the CA is pinned: nothing is sent before its certificate matches */
	if (enroll_pin_of(SSL_get0_peer_certificate(c->ssl), got) || strcmp(got, pin) != 0) {
		ret = -EPERM;
		ik_why(why, why_len, "the CA's certificate does not match the pin");
		goto out;
	}
	ret = 0;
out:
	ERR_clear_error();
	enroll_identity_free(&id);
	if (ret)
		ik_session_close(c, ret != -EHOSTUNREACH && c->ssl);
	return ret;
}

/* Sends b, reads the answer into *resp/m; a refusal is -EACCES with its message in why. */
static int ik_session_ask(struct ik_session *c, struct enroll_buf *b, uint8_t **resp,
                          struct enroll_msg *m, char *why, size_t why_len)
{
	char msg[513] = "";

	if (enroll_ssl_send(c->ssl, b) || enroll_ssl_recv(c->ssl, ENROLL_MSG_MAX, resp, NULL, m)) {
		ik_why(why, why_len, "the CA did not answer");
		return -EHOSTUNREACH;
	}
	if (m->type != ENROLL_T_RESPONSE || !enroll_msg_has(m, ET_STATUS) ||
	    m->v[ET_STATUS].len < 2) {
		ik_why(why, why_len, "not a response");
		return -EBADMSG;
	}
	if (m->v[ET_STATUS].p[1] != 0) {
		enroll_msg_str(m, ET_MESSAGE, msg, sizeof(msg));
		ik_why(why, why_len, msg[0] ? msg : "refused");
		return -EACCES;
	}
	return 0;
}

int inspkey_fetch(const char *dir, const char *identity_source, EVP_PKEY *wrap, const char *tenant,
                  int timeout_ms, struct inspkey *out, char *why, size_t why_len)
{
	struct ik_session c = {.fd = -1};
	struct enroll_buf b = {0};
	struct enroll_msg m;
	struct envelope_ad ad = {tenant, out->key_id, INSPKEY_PURPOSE};
	uint8_t *resp = NULL, *pt = NULL;
	size_t pt_len = 0;
	int ret;

	memset(out, 0, sizeof(*out));
	ik_why(why, why_len, "");
	ret = ik_session_open(dir, identity_source, timeout_ms, &c, why, why_len);
	if (ret)
		goto out;
	ret = -EBADMSG;
	if (enroll_buf_init(&b, (enum enroll_type)INSPKEY_T_KEY_GET) ||
	    enroll_buf_put_str(&b, ET_TENANT, tenant))
		goto out;
	ret = ik_session_ask(&c, &b, &resp, &m, why, why_len);
	if (ret)
		goto out;
	ret = -EBADMSG;
	if (enroll_msg_str(&m, ET_SERIAL, out->key_id, sizeof(out->key_id)) ||
	    !enroll_msg_has(&m, ET_CRL) || !enroll_msg_has(&m, ET_CHAIN) ||
	    tls_load_certs_mem(m.v[ET_CHAIN].p, m.v[ET_CHAIN].len, &out->certs)) {
		ik_why(why, why_len, "the answer lacks key id, envelope or certificate");
		goto out;
	}
	out->envelope = malloc(m.v[ET_CRL].len ? m.v[ET_CRL].len : 1);
	if (!out->envelope) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(out->envelope, m.v[ET_CRL].p, m.v[ET_CRL].len);
	out->envelope_len = m.v[ET_CRL].len;
	if (envelope_unwrap(wrap, &ad, m.v[ET_CRL].p, m.v[ET_CRL].len, &pt, &pt_len)) {
		ik_why(why, why_len, "the envelope does not open with this wrapping key");
		goto out;
	}
	{
		const unsigned char *p = pt;

		out->key = d2i_AutoPrivateKey(NULL, &p, (long)pt_len);
	}
	if (!out->key || X509_check_private_key(sk_X509_value(out->certs, 0), out->key) != 1) {
		ik_why(why, why_len, "the unwrapped key is not the certificate's");
		goto out;
	}
	ret = 0;
out:
	ERR_clear_error();
	envelope_plain_free(pt, pt_len);
	free(resp); /* the envelope: ciphertext */
	enroll_buf_free(&b);
	ik_session_close(&c, ret != -EHOSTUNREACH);
	if (ret)
		inspkey_clear(out);
	return ret;
}

void inspkey_clear(struct inspkey *k)
{
	if (!k)
		return;
	EVP_PKEY_free(k->key);
	sk_X509_pop_free(k->certs, X509_free);
	free(k->envelope);
	memset(k, 0, sizeof(*k));
}

struct inspkey_sub {
	struct ik_session c;
	char tenant[64];
};

/* A CRL from a response or a push (a DER CRL in ET_CRL). */
static int ik_crl_of(const struct enroll_msg *m, X509_CRL **crl)
{
	const unsigned char *p;

	if (!enroll_msg_has(m, ET_CRL))
		return -EBADMSG;
	p = m->v[ET_CRL].p;
	*crl = d2i_X509_CRL(NULL, &p, m->v[ET_CRL].len);
	ERR_clear_error();
	return *crl && p == m->v[ET_CRL].p + m->v[ET_CRL].len ? 0 : -EBADMSG;
}

int inspkey_subscribe(const char *dir, const char *identity_source, const char *tenant,
                      int timeout_ms, struct inspkey_sub **out, X509_CRL **crl, char *why,
                      size_t why_len)
{
	struct inspkey_sub *sub;
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *resp = NULL;
	int ret;

	*out = NULL;
	*crl = NULL;
	ik_why(why, why_len, "");
	if (strlen(tenant) >= sizeof(sub->tenant))
		return -EINVAL;
	sub = calloc(1, sizeof(*sub));
	if (!sub)
		return -ENOMEM;
	snprintf(sub->tenant, sizeof(sub->tenant), "%s", tenant);
	ret = ik_session_open(dir, identity_source, timeout_ms, &sub->c, why, why_len);
	if (ret) {
		free(sub);
		return ret;
	}
	ret = enroll_buf_init(&b, ENROLL_T_CRL_SUBSCRIBE);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, tenant);
	if (!ret)
		ret = ik_session_ask(&sub->c, &b, &resp, &m, why, why_len);
	if (!ret) {
		ret = ik_crl_of(&m, crl);
		if (ret)
			ik_why(why, why_len, "the answer holds no CRL");
	}
	free(resp);
	enroll_buf_free(&b);
	if (ret) {
		inspkey_sub_close(sub);
		return ret;
	}
	*out = sub;
	return 0;
}

int inspkey_sub_fd(const struct inspkey_sub *sub)
{
	return sub->c.fd;
}

bool inspkey_sub_pending(const struct inspkey_sub *sub)
{
	return SSL_pending(sub->c.ssl) > 0;
}

int inspkey_sub_read(struct inspkey_sub *sub, X509_CRL **crl)
{
	struct enroll_msg m;
	uint8_t *buf = NULL;
	char tenant[64];
	int ret;

	*crl = NULL;
	ret = enroll_ssl_recv(sub->c.ssl, ENROLL_MSG_MAX, &buf, NULL, &m);
	if (ret)
		return -ECONNRESET;
	/* pushes for another tenant than this subscription's are not ours to apply */
	if (m.type != ENROLL_T_CRL_PUSH || enroll_msg_str(&m, ET_TENANT, tenant, sizeof(tenant)) ||
	    strcmp(tenant, sub->tenant) != 0)
		ret = -EBADMSG;
	if (!ret)
		ret = ik_crl_of(&m, crl);
	free(buf);
	return ret;
}

void inspkey_sub_close(struct inspkey_sub *sub)
{
	if (!sub)
		return;
	ik_session_close(&sub->c, false);
	free(sub);
}
