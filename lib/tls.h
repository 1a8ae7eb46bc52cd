/*
 * TLS 1.3 for every mtun session: contexts per process and role, and connections over
 * memory BIOs so that the ring does all socket I/O. Identity comes from the mtun:// URI.
 */
#ifndef MTUN_TLS_H
#define MTUN_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ident.h"

#define TLS_SHA256_LEN 32
/* The label of the channel binding the agent's device proof signs over. */
#define TLS_EXPORTER_LABEL "EXPORTER-mtun-channel-binding"

enum tls_mode {
	/* Both sides present a certificate with one mtun:// URI; both are checked. */
	TLS_MUTUAL = 0,
	/*
	 * Enrollment: the server presents its certificate and asks for none; the client
	 * checks it by pin and/or trust anchors. The client may have no certificate yet.
	 */
	TLS_SERVER_AUTH,
};

/* Non-zero: the peer is revoked and the handshake is refused. Called on the ctx's threads. */
typedef int tls_revoked_fn(void *arg, const struct ident *peer, const ASN1_INTEGER *serial);

struct tls_conf {
	bool server;
	enum tls_mode mode;
	/* Own certificate, the intermediates sent with it, and its key (decrypted by the
	 * caller). The context takes its own references. Optional for a server-auth client. */
	X509 *cert;
	STACK_OF(X509) *chain;
	EVP_PKEY *key;
	/* Trust anchors: a store, or a list of root certificates (either or both). */
	X509_STORE *trust;
	STACK_OF(X509) *anchors;
	/* MT_ROLE_BIT()s of the peer roles accepted. Required in mutual mode; in
	 * server-auth mode, if non-zero, the server's URI is checked as well. */
	uint32_t peer_roles;
	/* The tenant the peer must belong to, or NULL for any (a multi-tenant broker). */
	const char *peer_tenant;
	tls_revoked_fn *revoked;
	void *revoked_arg;
	/*
	 * Server-auth client: SHA-256 of the DER of the server's leaf certificate or of any
	 * CA certificate it sends in its chain. A pinned CA must have signed the chain up to
	 * the leaf (it acts as the only trust anchor). NULL = no pin (then trust is needed).
	 */
	const uint8_t *pin;
	/* TLS 1.3 suites to offer, a subset of the default three; NULL = all three. */
	const char *ciphersuites;
	/* Bytes of ciphertext a connection buffers for sending: 0 = 128 KiB, min 32 KiB. */
	size_t out_size;
};

/*
 * A tls_ctx may be shared by threads (connections are made from it concurrently; the
 * revoked hook must then be thread-safe); a tls_conn belongs to one thread.
 */
struct tls_ctx;
struct tls_conn;

/* NULL with *why set (a static string) on failure. */
struct tls_ctx *tls_ctx_new(const struct tls_conf *conf, const char **why);
/* Every connection of the context must be freed first. */
void tls_ctx_free(struct tls_ctx *ctx);

/* NULL + errno on failure (ENOMEM). */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx);
void tls_conn_free(struct tls_conn *c);

/*
 * Ciphertext received from the socket. 0; -ENOBUFS when more than TLS_IN_MAX bytes would
 * wait unread (read plaintext first); -EPIPE after tls_conn_feed_eof.
 */
#define TLS_IN_MAX (1U << 20)
int tls_conn_feed(struct tls_conn *c, const void *buf, size_t len);
/* The socket reached EOF. */
void tls_conn_feed_eof(struct tls_conn *c);

/*
 * Drives the handshake: 0 once established (the peer passed every check), -EAGAIN
 * until then (feed more, send what is pending), -EPROTO on failure (see tls_conn_why;
 * an alert may be pending: send it before closing).
 * TLS 1.3: a client is established before the server has checked the client's
 * certificate; a refusal then shows up on its next read.
 */
int tls_conn_handshake(struct tls_conn *c);
bool tls_conn_established(const struct tls_conn *c);

/*
 * Plaintext out: bytes read (> 0), -EAGAIN (feed more or send pending ciphertext),
 * -ECONNRESET (the peer sent close_notify), -EPROTO (see tls_conn_why).
 * Drives the handshake if needed.
 */
ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t len);
/*
 * Plaintext in: bytes accepted (> 0, possibly fewer than len: send ciphertext, then
 * write the rest), -EAGAIN (no room, or handshake not done), -EPROTO. No retry
 * obligation: the next call may pass any buffer.
 */
ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len);
/* Queues close_notify (nothing before the handshake is done). 0 or -EPROTO. */
int tls_conn_shutdown(struct tls_conn *c);

/*
 * Ciphertext to send: *len contiguous bytes at *buf (0 when nothing waits; there may be
 * more after consuming). The bytes stay put until consumed, so the ring sends straight
 * from them: peek, send, consume what was sent; one send at a time.
 */
size_t tls_conn_pending(const struct tls_conn *c);
void tls_conn_peek(struct tls_conn *c, const void **buf, size_t *len);
void tls_conn_consume(struct tls_conn *c, size_t n);
/* Copies up to len bytes of ciphertext into buf and consumes them; returns the count. */
size_t tls_conn_take(struct tls_conn *c, void *buf, size_t len);

/* Why the connection failed, for a user; "" if it has not. */
const char *tls_conn_why(const struct tls_conn *c);

/* After the handshake: the peer's identity (NULL if it showed none, e.g. an enrolling
 * client), its certificate's serial and SHA-256 of its DER. */
const struct ident *tls_conn_peer(const struct tls_conn *c);
const ASN1_INTEGER *tls_conn_peer_serial(const struct tls_conn *c);
const uint8_t *tls_conn_peer_sha256(const struct tls_conn *c);
/* RFC 8446 exporter (label, context) -> out; both ends get the same bytes. 0 or -EINVAL. */
int tls_conn_export(const struct tls_conn *c, const char *label, const uint8_t *context,
                    size_t context_len, uint8_t *out, size_t out_len);
/* The negotiated suite ("TLS_AES_128_GCM_SHA256"), or "" before the handshake. */
const char *tls_conn_cipher(const struct tls_conn *c);

/* PEM certificates from a file or memory (at most 1 MiB, 1..16 certificates), in order.
 * 0, -errno of the file, -EFBIG, -EBADMSG (no or bad PEM), -ENOMEM. */
int tls_load_certs(const char *path, STACK_OF(X509) **out);
int tls_load_certs_mem(const void *buf, size_t len, STACK_OF(X509) **out);
/* A private key (PEM or DER) from memory the caller decrypted; 0 or -EBADMSG. */
int tls_load_key_mem(const void *buf, size_t len, EVP_PKEY **out);
/* SHA-256 of a certificate's DER, the form of tls_conf.pin. 0 or -EINVAL. */
int tls_cert_sha256(X509 *cert, uint8_t out[TLS_SHA256_LEN]);

#endif
