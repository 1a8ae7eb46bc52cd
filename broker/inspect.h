/*
 * The inspection proxy's standalone parts: the HTTP CONNECT and TLS ClientHello parsers
 * (proxy_parse.c) and the leaf-certificate minter (mint.c). To be merged into broker.h.
 */
#ifndef MTUN_INSPECT_H
#define MTUN_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* proxy_parse.c: CONNECT requests */

#define PROXY_LINE_MAX    2048 /* request line, CRLF included: longer is 414 */
#define PROXY_HEAD_MAX    8192 /* request line and headers, final CRLF included: longer is 431 */
#define PROXY_HEADERS_MAX 64   /* header fields: more is 431 */
#define PROXY_HOST_MAX    253  /* a DNS name; IPv6 literals are shorter */

enum proxy_verdict {
	PROXY_REFUSE = -1,   /* answer req->status and close */
	PROXY_NEED_MORE = 0, /* call again with more bytes (the same prefix and more) */
	PROXY_COMPLETE = 1,  /* req is filled; req->head_len bytes were the request */
};

enum proxy_host_kind {
	PROXY_HOST_NAME = 0,
	PROXY_HOST_IPV4,
	PROXY_HOST_IPV6,
};

struct proxy_connect {
	unsigned status;               /* 200 on COMPLETE; 400, 405, 414 or 431 on REFUSE */
	const char *reason;            /* static text for logs on REFUSE */
	size_t head_len;               /* bytes up to and including the empty line */
	char host[PROXY_HOST_MAX + 1]; /* lowercase name, dotted quad, or v6 text unbracketed */
	enum proxy_host_kind host_kind;
	uint8_t addr[16];       /* 4 or 16 bytes for IP literals */
	uint16_t port;          /* 1..65535 */
	uint8_t http_minor;     /* HTTP/1.0 or HTTP/1.1 */
	const char *proxy_auth; /* Proxy-Authorization value inside the caller's buffer */
	size_t proxy_auth_len;  /* 0 when absent */
};

/*
 * Parses the CONNECT request at the start of buf[0..len). Pure: no allocation, no state;
 * the caller passes everything received so far and calls again as bytes arrive. Refuses
 * any other method (405, answer with "Allow: CONNECT"), a request line over PROXY_LINE_MAX
 * (414), a head over PROXY_HEAD_MAX or PROXY_HEADERS_MAX fields (431), and anything
 * malformed (400): bare LF, obs-fold, control bytes, a body, a bad host or port.
 */
enum proxy_verdict proxy_parse_connect(const char *buf, size_t len, struct proxy_connect *req);

/*
 * Validates a DNS name (labels of [A-Za-z0-9_-], 1..63, not starting or ending with '-',
 * total 1..253, no trailing dot, last label not all digits) and writes it lowercased to
 * out (PROXY_HOST_MAX + 1 bytes). 0 or -EINVAL.
 */
int proxy_host_name(const char *s, size_t n, char *out);

/* proxy_parse.c: TLS ClientHello */

#define TLS_HELLO_MAX         32768 /* handshake message body */
#define TLS_HELLO_RECORDS_MAX 16    /* records the hello may span */
#define TLS_HELLO_BUF_MAX     (4 + TLS_HELLO_MAX + 5 * TLS_HELLO_RECORDS_MAX)
#define TLS_ALPN_MAX          255 /* protocol_name_list bytes kept */
#define TLS_HELLO_EXT_MAX     128 /* extensions in one hello */

enum tls_hello_verdict {
	TLS_HELLO_BAD = -1,      /* not TLS or malformed: hello->reason says why */
	TLS_HELLO_NEED_MORE = 0, /* call again with more bytes */
	TLS_HELLO_COMPLETE = 1,
};

struct tls_hello {
	const char *reason;           /* static text on BAD */
	uint16_t legacy_version;      /* 0x0301..0x0303 */
	bool tls13;                   /* supported_versions offers 0x0304 */
	char sni[PROXY_HOST_MAX + 1]; /* host_name, lowercased; "" when absent */
	uint8_t alpn[TLS_ALPN_MAX];   /* protocol_name_list as on the wire (length-prefixed) */
	size_t alpn_len;              /* 0 when ALPN is absent */
	unsigned alpn_count;
	size_t record_len; /* bytes of the records that carry the hello */
};

/*
 * Parses the ClientHello from the first bytes of a client's stream: TLS records of type
 * handshake (possibly several, up to TLS_HELLO_RECORDS_MAX), the handshake header, and the
 * body, with every length checked against its container. Pure, no allocation.
 */
enum tls_hello_verdict tls_parse_client_hello(const uint8_t *buf, size_t len,
                                              struct tls_hello *hello);
/* Whether the client offered protocol proto ("h2", "http/1.1") in ALPN. */
bool tls_hello_offers_alpn(const struct tls_hello *hello, const char *proto);

/* mint.c: leaf certificates, minted in RAM by a tenant's intermediate */

#define MINT_VALID_BEFORE (60 * 60)      /* leaf notBefore: now - 1 h */
#define MINT_VALID_AFTER  (24 * 60 * 60) /* leaf notAfter: now + 24 h */

struct mint;

/*
 * A minter for one intermediate. Takes ownership of ca_key on success (it is freed,
 * zeroed, by mint_drop_key or mint_free); takes a reference on ca_cert. cache_max bounds
 * the leaf cache (LRU), pool_max the leaf key pairs prepared ahead. 0, -EINVAL (key does
 * not match the certificate, or the certificate is not a CA) or -ENOMEM.
 */
int mint_new(EVP_PKEY *ca_key, X509 *ca_cert, size_t cache_max, size_t pool_max, struct mint **out);
/* Zeroes and frees everything: the intermediate key, cached leaves, pooled keys. */
void mint_free(struct mint *m);

/*
 * Generates leaf key pairs (P-256) until the pool holds pool_max. Safe to call from
 * another thread than the one minting (the pool has its own lock). 0 or -ENOMEM.
 */
int mint_pool_fill(struct mint *m);
size_t mint_pool_count(struct mint *m);

/*
 * A leaf for host (a DNS name, or an IPv4/IPv6 literal, which gets an iPAddress SAN),
 * from the cache or minted with one signature by the intermediate. *cert and *key are new
 * references for the caller to free. 0, -EINVAL (bad host), -ENOKEY (key dropped),
 * -EKEYEXPIRED (intermediate outside its validity), -ENOMEM or -EIO (OpenSSL failed).
 */
int mint_leaf(struct mint *m, const char *host, X509 **cert, EVP_PKEY **key);

/*
 * Zeroes and frees the intermediate key and drops the cached leaves (the tenant went idle);
 * mint_leaf then fails with -ENOKEY until a new minter is made.
 */
void mint_drop_key(struct mint *m);
bool mint_has_key(const struct mint *m);
/* Drops every cached leaf (and its key). */
void mint_cache_flush(struct mint *m);

struct mint_stats {
	uint64_t minted, cache_hits, evicted, pool_misses;
	size_t cached;
};
void mint_get_stats(const struct mint *m, struct mint_stats *st);

/* inspect_key.c: a tenant's inspection key, asked of mtun-ca over mTLS (DESIGN.md §10) */

#define INSPKEY_T_KEY_GET 40                       /* CUSTODY_T_KEY_GET in ca/ca.h */
#define INSPKEY_PURPOSE   "mtun inspection CA key" /* CUSTODY_PURPOSE in ca/ca.h */
#define INSPKEY_ID_MAX    64

struct inspkey {
	char key_id[INSPKEY_ID_MAX + 1];
	EVP_PKEY *key; /* the intermediate's private key: private parts in the secure heap */
	STACK_OF(X509) *certs; /* the intermediate first, then its chain up to the root */
	uint8_t *envelope;     /* the envelope as received (ciphertext), for tests */
	size_t envelope_len;
};

/*
 * Asks the CA named in dir/ca.conf (its certificate pinned) for tenant's key, with the
 * inspector identity enrolled in dir, and opens the envelope with wrap (the nodes' X25519
 * private key). The DER plaintext lives in the secure heap and is zeroed at once. 0;
 * -EACCES when the CA refuses (why holds its message); -EHOSTUNREACH when the CA cannot be
 * reached within timeout_ms; -EPERM for a pin mismatch; -EBADMSG for a bad answer or an
 * envelope that does not open or whose key is not the certificate's; -errno otherwise.
 */
int inspkey_fetch(const char *dir, const char *identity_source, EVP_PKEY *wrap, const char *tenant,
                  int timeout_ms, struct inspkey *out, char *why, size_t why_len);
/* Frees (zeroes) the key and everything else; k may be NULL or empty. */
void inspkey_clear(struct inspkey *k);

/*
 * A subscription to tenant's CRL at the CA (as for inspkey_fetch): the CA answers with the
 * current CRL (*crl, the caller's), then pushes each new one, and the tenant's authority
 * revocation list when it holds the root. Errors as inspkey_fetch.
 */
struct inspkey_sub;
int inspkey_subscribe(const char *dir, const char *identity_source, const char *tenant,
                      int timeout_ms, struct inspkey_sub **out, X509_CRL **crl, char *why,
                      size_t why_len);
/* For poll(2); with inspkey_sub_pending for what TLS has read ahead. */
int inspkey_sub_fd(const struct inspkey_sub *sub);
bool inspkey_sub_pending(const struct inspkey_sub *sub);
/*
 * Reads one push once the descriptor is readable (blocking up to the timeout): 0 and *crl,
 * -EBADMSG for a message that is not a CRL push for the tenant, -ECONNRESET when the
 * subscription ended (subscribe again).
 */
int inspkey_sub_read(struct inspkey_sub *sub, X509_CRL **crl);
void inspkey_sub_close(struct inspkey_sub *sub); /* NULL fine */

/* inspect_node.c, proxy.c: the inspection node (`mtun-broker inspect`, docs/inspection.md) */

struct inspect_node;
struct inspect_tenant;

/* What the proxy may do with a tenant's TLS session. */
enum inspect_mode {
	INSPECT_DECRYPT = 0, /* a leaf was minted */
	INSPECT_RELAY,       /* no key held: relay without decryption */
	INSPECT_REFUSE,      /* no key, the CA unreachable, the tenant chose fail-closed */
};

/*
 * A leaf for host from tenant t's intermediate, fetching the key from the CA when none is
 * held. On INSPECT_DECRYPT, *cert, *key and *chain (intermediates to send; do not free
 * the stack's contents separately: sk_X509_pop_free) are new references.
 */
enum inspect_mode inspect_tenant_leaf(struct inspect_node *n, struct inspect_tenant *t,
                                      const char *host, X509 **cert, EVP_PKEY **key,
                                      STACK_OF(X509) **chain);
const char *inspect_tenant_name(const struct inspect_tenant *t);
/* Host (lowercase) on t's bypass list: exact, or "*.suffix" for any name below suffix. */
bool inspect_tenant_bypass(const struct inspect_tenant *t, const char *host);
/* A block rule matches host and path: "host" or "host/path-prefix" (host as for bypass). */
bool inspect_tenant_blocked(const struct inspect_tenant *t, const char *host, const char *path);
/* Upstream certificate failures: true for a 502 page, false to close the connection. */
bool inspect_tenant_error_page(const struct inspect_tenant *t);
/* The tenant of a client that reached listener li from addr, or NULL. */
struct inspect_tenant *inspect_tenant_of(struct inspect_node *n, size_t li,
                                         const struct sockaddr *addr);

struct proxy_opts {
	const char *const *listen; /* HOST:PORT each */
	size_t nlisten;
	const char *upstream_ca; /* CA file for upstream certificates; NULL: the system store */
	const uint16_t *ports;   /* CONNECT ports that are inspected; others are relayed */
	size_t nports;
	unsigned max_clients;
	int io_timeout_ms; /* idle time before a connection is closed */
};

struct proxy;
/* Binds every listener (so that errors show at start); the node serves with proxy_run. */
int proxy_new(struct inspect_node *n, const struct proxy_opts *o, struct proxy **out);
/*
 * Accepts until *stop is set (checked at least once a second); a pool of worker threads
 * (up to max_clients) serves the connections, one each at a time. 0, or -EBUSY when
 * connections were still running 5 s later (then do not free p).
 */
int proxy_run(struct proxy *p, volatile int *stop);
void proxy_free(struct proxy *p);

/*
 * Tests only (with --test-allow-dump, MTUN_TEST=1 and MTUN_TEST_LEAF_KEYS_FD=N): writes
 * "host hex-scalar" of a leaf key to fd N, so that a test can look for it in a core dump.
 */
void inspect_test_leaf_key(const char *host, EVP_PKEY *key);

/* `mtun-broker inspect --config FILE [--wrap-key-fd N] [--test-allow-dump]` */
int inspect_main(int argc, char **argv);

#endif
