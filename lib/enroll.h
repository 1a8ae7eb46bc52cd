/*
 * Enrollment: the request/response messages spoken with mtun-ca (and its admin socket),
 * and the client every component links to enroll, renew and load its identity.
 *
 * A message: "MTEN" | version=1 | type | flags u16 = 0 | body_len u32 | TLVs
 * A TLV:     tag u16 | len u32 | value           (integers big-endian)
 * Each tag at most once; unknown tags, wrong lengths and trailing bytes are refused.
 */
#ifndef MTUN_ENROLL_H
#define MTUN_ENROLL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ident.h"

#define ENROLL_HDR_LEN    12
#define ENROLL_REQ_MAX    (64 * 1024)   /* a request (component or admin) */
#define ENROLL_MSG_MAX    (1024 * 1024) /* a response or a CRL push */
#define ENROLL_CSR_MAX    8192
#define ENROLL_NONCE_LEN  16
#define ENROLL_SKEW_MAX   300 /* seconds a request's time may differ from the CA's */
#define ENROLL_TOKEN_MAX  128
#define ENROLL_PIN_PREFIX "sha256:"

enum enroll_type {
	ENROLL_T_ENROLL = 1,        /* token, csr, nonce, time */
	ENROLL_T_RENEW = 2,         /* mTLS; csr, nonce, time */
	ENROLL_T_CRL_GET = 3,       /* tenant */
	ENROLL_T_CRL_SUBSCRIBE = 4, /* mTLS, broker; then CRL pushes */
	ENROLL_T_TOKEN_CREATE = 16, /* admin: tenant, role, [user, groups], ttl */
	ENROLL_T_TOKEN_LIST = 17,   /* admin: tenant */
	ENROLL_T_REVOKE = 18,       /* admin: tenant, id | serial */
	ENROLL_T_CRL_ADMIN = 19,    /* admin: tenant */
	ENROLL_T_RESPONSE = 128,    /* status, [message, chain, root, crl, token, list] */
	ENROLL_T_CRL_PUSH = 129,    /* tenant, crl */
	/* only between mtun-ca and its signer process (ca/signer.c) */
	ENROLL_T_SIGN_LEAF = 200, /* tenant, csr, ttl, time -> chain (the leaf) */
	ENROLL_T_SIGN_CRL = 201,  /* tenant, serial (CRL number), time, [list] -> crl */
};

enum enroll_tag {
	ET_TOKEN = 1,
	ET_CSR,
	ET_NONCE,
	ET_TIME,
	ET_TENANT,
	ET_ROLE,
	ET_ID,
	ET_USER,
	ET_GROUPS,
	ET_TTL,
	ET_STATUS,
	ET_MESSAGE,
	ET_CHAIN,
	ET_ROOT,
	ET_CRL,
	ET_SERIAL,
	ET_LIST,
	ET_MAX,
};

struct enroll_val {
	const uint8_t *p;
	uint32_t len;
};

struct enroll_msg {
	uint8_t type;
	uint32_t present; /* 1U << tag */
	struct enroll_val v[ET_MAX];
};

struct enroll_buf {
	uint8_t *p;
	size_t len, cap;
};

/* Builder: init, put..., then the buffer holds a complete message. */
int enroll_buf_init(struct enroll_buf *b, enum enroll_type type);
int enroll_buf_put(struct enroll_buf *b, enum enroll_tag tag, const void *val, size_t len);
int enroll_buf_put_str(struct enroll_buf *b, enum enroll_tag tag, const char *s);
int enroll_buf_put_u64(struct enroll_buf *b, enum enroll_tag tag, uint64_t v);
void enroll_buf_free(struct enroll_buf *b);

/* Checks a header: 0 and *body_len, or -EBADMSG / -EMSGSIZE (body above max). */
int enroll_hdr_parse(const uint8_t hdr[ENROLL_HDR_LEN], size_t max, uint32_t *body_len);
/* Parses a whole message (header + body); m points into buf. 0, -EBADMSG or -EMSGSIZE. */
int enroll_msg_parse(const uint8_t *buf, size_t len, size_t max, struct enroll_msg *m);
static inline bool enroll_msg_has(const struct enroll_msg *m, enum enroll_tag tag)
{
	return m->present & (1U << tag);
}
/* Copies a text value with a NUL; -ENOENT when absent, -ENOSPC when it does not fit. */
int enroll_msg_str(const struct enroll_msg *m, enum enroll_tag tag, char *out, size_t size);
int enroll_msg_u64(const struct enroll_msg *m, enum enroll_tag tag, uint64_t *v);

/* Message I/O over a blocking TLS connection; *buf is malloc'd and m points into it. */
int enroll_ssl_send(SSL *ssl, const struct enroll_buf *b);
int enroll_ssl_recv(SSL *ssl, size_t max, uint8_t **buf, size_t *len, struct enroll_msg *m);
/* The same over a blocking socket (the admin socket, the signer's socketpair); len may be NULL. */
int enroll_fd_io(int fd, void *buf, size_t len, bool wr);
int enroll_fd_recv(int fd, size_t max, uint8_t **buf, size_t *len, struct enroll_msg *m);

/* "sha256:" + 64 hex of SHA-256 over the DER of cert (the CA's TLS certificate). */
int enroll_pin_of(X509 *cert, char out[8 + 64 + 1]);

/* A CSR for id (SAN = its identity URI, CN = its id), signed by key. */
int enroll_csr_make(EVP_PKEY *key, const struct ident *id, X509_REQ **out);
/* An ENROLL (with token) or RENEW request: csr, a fresh nonce, the time. */
int enroll_request_build(struct enroll_buf *b, enum enroll_type type, X509_REQ *req,
                         const char *token);

/* The files a component keeps in its state directory. */
#define ENROLL_KEY_FILE  "key.sealed"
#define ENROLL_CERT_FILE "cert.pem" /* leaf, then issuing intermediate(s) */
#define ENROLL_ROOT_FILE "ca.pem"   /* the tenant's root */
#define ENROLL_CA_FILE   "ca.conf"  /* "ca=HOST:PORT" and "pin=sha256:HEX" for renewal */

struct enroll_opts {
	enum mt_role role;
	const char *dir;             /* state directory (created 0700) */
	const char *ca_addr;         /* HOST:PORT; renew: default from ca.conf */
	const char *pin;             /* sha256:HEX; renew: default from ca.conf */
	const char *token;           /* enroll only */
	const char *id;              /* component id; default: host name */
	const char *user;            /* agents: the user the token was made for */
	const char *identity_source; /* device identifier directory; NULL: the machine's */
	bool force;                  /* renew now; enroll over an existing enrollment */
	bool watch;                  /* renew: keep running, renewing whenever due */
};

/* Generates a key, sends the CSR with the token, stores key, chain and root. */
int enroll_run(const struct enroll_opts *o);
/* Renews over mTLS with the current certificate when due (or forced). */
int enroll_renew(const struct enroll_opts *o);
/* Due when less than a third of the certificate's lifetime remains. */
int enroll_renew_due(X509 *cert, time_t now, bool *due);
/* Seconds from now until cert is due (0 if due already); for a daemon's renewal timer. */
int enroll_renew_in(X509 *cert, time_t now, long *secs);

struct enroll_identity {
	EVP_PKEY *key;
	X509 *cert;
	STACK_OF(X509) *chain; /* intermediates */
	X509 *root;
	struct ident ident;
};

/* Loads the sealed key and chain from dir, checking the key matches the certificate. */
int enroll_load(const char *dir, const char *identity_source, struct enroll_identity *id);
void enroll_identity_free(struct enroll_identity *id);

/*
 * The `enroll` and `renew` subcommands of mtun-agent, -connector and -broker:
 * --ca HOST:PORT --ca-fingerprint sha256:HEX --token T --state DIR --id ID
 * --identity-source DIR (or $MTUN_IDENTITY_SOURCE) --force --watch; the agent also --user U, the
 * broker also --inspector.
 */
int enroll_cli(enum mt_role role, bool renew, int argc, char **argv);

/*
 * Brokers and inspectors: subscribes to the tenant's CRL over mTLS with the identity in
 * dir; on_crl gets the current CRL, then every pushed change, until it returns non-zero
 * or the connection ends. CA address and pin come from dir/ca.conf.
 */
typedef int (*enroll_crl_fn)(X509_CRL *crl, void *arg);
int enroll_crl_subscribe(const char *dir, const char *identity_source, enroll_crl_fn on_crl,
                         void *arg);

/* The identity URI of a certificate's SAN, parsed. */
int enroll_cert_ident(X509 *cert, struct ident *out);

#endif
