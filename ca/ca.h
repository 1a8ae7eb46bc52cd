/* mtun-ca internals: PKI operations, tokens, the CA's store, the server. */
#ifndef MTUN_CA_H
#define MTUN_CA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "enroll.h"
#include "ident.h"

#define CA_KEK_MIN          16
#define CA_KEK_MAX          4096
#define CA_LEAF_TTL_DEFAULT (30 * 86400)
#define CA_ROOT_DAYS        3650
#define CA_ISSUER_DAYS      1825
#define CA_CRL_HOURS        24

enum ca_key_alg {
	CA_KEY_P256 = 0,
	CA_KEY_RSA2048,
	CA_KEY_RSA3072,
};

/* A tenant's issuing material, decrypted in memory. */
struct ca_tenant {
	char name[IDENT_TENANT_MAX + 1];
	X509 *root;
	X509 *issuer;          /* signs leaves and CRLs */
	STACK_OF(X509) *chain; /* issuer first, then intermediates up to, not including, root */
	EVP_PKEY *issuer_key;
	EVP_PKEY *root_key; /* the signer only, when mtun-ca made the root: signs the ARL */
};

/* A certificate to issue. */
struct ca_leaf_req {
	struct ident ident;
	long ttl; /* seconds */
	time_t now;
};

/* pki.c */
int pki_key_alg_parse(const char *name, enum ca_key_alg *alg);
EVP_PKEY *pki_key_new(enum ca_key_alg alg);
int pki_make_root(const char *tenant, EVP_PKEY *key, time_t now, X509 **out);
int pki_make_issuer(const char *tenant, EVP_PKEY *key, X509 *root, EVP_PKEY *root_key, time_t now,
                    X509 **out);
int pki_make_service(EVP_PKEY *key, time_t now, X509 **out);
int pki_make_csr(const char *tenant, EVP_PKEY *key, X509_REQ **out);
/* Parses and checks a CSR (DER, signature, key type) and its mtun SAN URI. */
int pki_csr_parse(const uint8_t *der, size_t len, X509_REQ **req, struct ident *id,
                  const char **why);
int pki_sign_leaf(const struct ca_tenant *t, EVP_PKEY *pub, const struct ca_leaf_req *r, X509 **out,
                  char serial_hex[41]);
/* revoked: serials as hex; builds and signs the tenant's CRL. */
int pki_make_crl(const struct ca_tenant *t, const char *const *serials, const time_t *when,
                 size_t n, long number, time_t now, X509_CRL **out);
/*
 * The tenant's root signs the pending inspection CSR req (its signature and O=tenant
 * checked): CA:TRUE pathlen:0, keyCertSign and cRLSign, valid until not_after (0: a year),
 * never past the root's own end.
 */
int pki_sign_inspection(const char *tenant, X509 *root, EVP_PKEY *root_key, X509_REQ *req,
                        time_t now, time_t not_after, X509 **out);
/* Checks issuer (first of chain) chains to root and is a CA that may sign certificates. */
int pki_check_ca_chain(X509 *issuer, STACK_OF(X509) *chain, X509 *root, const char **why);
/* Verifies a leaf against the tenant (chain to root, leaf usage), at now. */
int pki_verify_leaf(const struct ca_tenant *t, X509 *leaf, const char **why);
int pki_serial_hex(X509 *cert, char out[41]);
int pki_pem_of_cert(X509 *x, char **pem, size_t *len);
int pki_pem_of_chain(X509 *first, STACK_OF(X509) *rest, char **pem, size_t *len);
int pki_pem_read_certs(const uint8_t *pem, size_t len, STACK_OF(X509) **out);
void ca_tenant_clear(struct ca_tenant *t);

/* token.c: "mtt1.TENANT.SECRET", SECRET = base64url of 32 random bytes. */
#define TOKEN_SECRET_LEN 32
#define TOKEN_TEXT_MAX   (5 + IDENT_TENANT_MAX + 1 + 44)
#define TOKEN_HASH_LEN   32
int token_generate(const char *tenant, char *out, size_t size, uint8_t hash[TOKEN_HASH_LEN]);
int token_parse(const char *tok, char tenant[IDENT_TENANT_MAX + 1], uint8_t hash[TOKEN_HASH_LEN]);

/* db.c: the CA's tables, in the store (lib/store.h). */
struct ca_db;

struct ca_token_row {
	char tenant[IDENT_TENANT_MAX + 1];
	enum mt_role role;
	char user[IDENT_USER_MAX + 1];
	char groups[1025];
	int64_t created, expires, spent;
};

int ca_db_open(const char *path, struct ca_db **out);
void ca_db_close(struct ca_db *db);
int ca_db_begin(struct ca_db *db);
int ca_db_commit(struct ca_db *db);
void ca_db_rollback(struct ca_db *db);
void ca_db_audit(struct ca_db *db, const char *event, const char *tenant, const char *detail);

int ca_db_service_get(struct ca_db *db, uint8_t **cert_pem, size_t *cert_len, uint8_t **key,
                      size_t *key_len);
int ca_db_service_put(struct ca_db *db, const char *cert_pem, const uint8_t *key, size_t key_len);

/* state "active" or "pending" (external signing awaited); -ENOENT if absent. */
int ca_db_tenant_get(struct ca_db *db, const char *tenant, char state[16], uint8_t **chain_pem,
                     size_t *chain_len, uint8_t **root_pem, size_t *root_len, uint8_t **key,
                     size_t *key_len);
int ca_db_tenant_put(struct ca_db *db, const char *tenant, const char *state, const char *chain_pem,
                     const char *root_pem, const uint8_t *key, size_t key_len,
                     const uint8_t *root_key, size_t root_key_len, const char *csr_pem);
int ca_db_crl_next(struct ca_db *db, const char *tenant, long *number);
int ca_db_crl_put(struct ca_db *db, const char *tenant, const uint8_t *der, size_t len);
int ca_db_crl_get(struct ca_db *db, const char *tenant, uint8_t **der, size_t *len);
/* The authority revocation list (ARL): the tenant's root revoking the CAs it signed. */
int ca_db_arl_next(struct ca_db *db, const char *tenant, long *number);
int ca_db_arl_put(struct ca_db *db, const char *tenant, const uint8_t *der, size_t len);
int ca_db_arl_get(struct ca_db *db, const char *tenant, uint8_t **der, size_t *len);
/*
 * An active tenant's root (PEM) and, when root_key is not NULL, its sealed key. -ENOKEY
 * (root_pem still set) when mtun-ca does not hold the root's key (an imported or external
 * CA); -ENOENT when there is no such active tenant.
 */
int ca_db_tenant_root(struct ca_db *db, const char *tenant, uint8_t **root_pem, size_t *root_len,
                      uint8_t **root_key, size_t *key_len);

int ca_db_token_put(struct ca_db *db, const uint8_t hash[TOKEN_HASH_LEN],
                    const struct ca_token_row *t);
int ca_db_token_get(struct ca_db *db, const uint8_t hash[TOKEN_HASH_LEN], struct ca_token_row *t);
/* Marks spent; -EALREADY when it was spent already (a race with another request). */
int ca_db_token_spend(struct ca_db *db, const uint8_t hash[TOKEN_HASH_LEN], int64_t now);
/* One line per token of tenant (no secrets): appended to a malloc'd string. */
int ca_db_token_list(struct ca_db *db, const char *tenant, int64_t now, char **out);

/* -EEXIST when the nonce was seen already. */
int ca_db_nonce_use(struct ca_db *db, const uint8_t *nonce, size_t len, int64_t now);
int ca_db_nonce_seen(struct ca_db *db, const uint8_t *nonce, size_t len, bool *seen);

int ca_db_cert_put(struct ca_db *db, const char *serial, const struct ident *id, const char *groups,
                   int64_t not_before, int64_t not_after, const char *pem);
/* Whether tenant/role/id has a certificate that is neither revoked nor expired. */
int ca_db_cert_active(struct ca_db *db, const struct ident *id, int64_t now, bool *active);
int ca_db_cert_revoked(struct ca_db *db, const char *serial, bool *revoked);
int ca_db_cert_groups(struct ca_db *db, const char *serial, char *groups, size_t size);
/* Revokes by serial, or every certificate of tenant/role/id; *count revoked. */
int ca_db_cert_revoke(struct ca_db *db, const char *tenant, const char *role_id, const char *serial,
                      int64_t now, int *count);
int ca_db_revoked_list(struct ca_db *db, const char *tenant, char ***serials, time_t **when,
                       size_t *n);
/* Revoked inspection intermediates of tenant, with their certificates (PEM). */
int ca_db_revoked_ca_list(struct ca_db *db, const char *tenant, char ***serials, time_t **when,
                          char ***pems, size_t *n);
void ca_db_strv_free(char **v, size_t n);

#endif

/* tenant.c: creating, importing and loading tenants' CAs; the CA's own TLS identity. */
struct ca_secret {
	uint8_t *p; /* secure heap */
	size_t len;
};

/* From fd (if >= 0, read to its end and closed) or MTUN_CA_KEK (then unset). */
#define CA_KEK_ENV "MTUN_CA_KEK"
int ca_kek_read(int fd, struct ca_secret *kek);
void ca_secret_clear(struct ca_secret *s);

int ca_tenant_init(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                   enum ca_key_alg alg);
/* cert_pem: the issuing CA first, then any intermediates and (or) the root. */
int ca_tenant_import(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                     const uint8_t *cert_pem, size_t cert_len, EVP_PKEY *key, const char **why);
/* Generates the issuing key and returns the CSR (PEM) for the tenant's root to sign. */
int ca_tenant_external(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                       enum ca_key_alg alg, char **csr_pem, size_t *csr_len);
int ca_tenant_import_signed(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                            const uint8_t *cert_pem, size_t cert_len, const uint8_t *root_pem,
                            size_t root_len, const char **why);
/* kek NULL: chain and root only (the serving process, which has a signer). */
int ca_tenant_load(struct ca_db *db, const struct ca_secret *kek, const char *tenant,
                   struct ca_tenant *t);
/* Creates the CA's TLS key and certificate on first use; prints nothing. */
int ca_service_ensure(struct ca_db *db, const struct ca_secret *kek);
int ca_service_load(struct ca_db *db, const struct ca_secret *kek, X509 **cert, EVP_PKEY **key);
struct ca_signer;
/* Rebuilds and stores the tenant's CRL, signed by signer (or t's key when NULL). */
int ca_crl_rebuild(struct ca_db *db, const struct ca_tenant *t, struct ca_signer *signer,
                   uint8_t **der, size_t *len);
/*
 * Rebuilds and stores the tenant's authority revocation list: signed by the tenant's root
 * (in the signer), listing the revoked inspection intermediates that root issued. -ENOKEY
 * when mtun-ca does not hold the root's key.
 */
int ca_arl_rebuild(struct ca_db *db, const struct ca_tenant *t, struct ca_signer *signer,
                   uint8_t **der, size_t *len);
/* Whether root issued cert (names and signature). */
bool ca_root_issued(X509 *root, X509 *cert);

/* signer.c: the child process that alone holds the KEK and the issuing keys. */
struct ca_signer {
	pid_t pid;
	int fd;
};

/* Forks the signer; it opens its own store at db_path and tenants' keys with kek. */
int ca_signer_start(const char *db_path, const struct ca_secret *kek, struct ca_signer *sg);
void ca_signer_stop(struct ca_signer *sg);
int ca_signer_leaf(struct ca_signer *sg, const char *tenant, X509_REQ *req, long ttl, time_t now,
                   X509 **out);
int ca_signer_crl(struct ca_signer *sg, const char *tenant, const char *const *serials,
                  const time_t *when, size_t n, long number, time_t now, X509_CRL **out);
/* The same, signed by the tenant's root: its authority revocation list. */
int ca_signer_arl(struct ca_signer *sg, const char *tenant, const char *const *serials,
                  const time_t *when, size_t n, long number, time_t now, X509_CRL **out);
/*
 * The tenant's root signs its pending inspection CSR, which the signer reads from the
 * store itself. *pem: the certificate, then the root. -ENOKEY: the root is not held here.
 */
int ca_signer_inspection(struct ca_signer *sg, const char *tenant, time_t now, char **pem,
                         size_t *len);
/* Signer requests of mtun-ca's own, beside lib/enroll.h's SIGN_LEAF and SIGN_CRL. */
#define CA_SIGN_ARL        202 /* as SIGN_CRL, signed by the tenant's root */
#define CA_SIGN_INSPECTION 203 /* tenant, time -> chain (certificate, root) */

/* server.c: request handling, the TLS listener, the admin socket, CRL pushes. */
#define CA_SUBS_MAX    256
#define CA_TENANTS_MAX 1024
#define CA_IO_TIMEOUT  5 /* seconds for a whole request/answer exchange */

#define CA_CONNS_MAX 64

struct ca_sub {
	int fd;
	SSL *ssl;
	char tenant[IDENT_TENANT_MAX + 1];
	bool inspector; /* also gets the tenant's authority revocation list */
};

/* A component's connection in progress: handshake, request, answer; never blocking. */
enum ca_conn_state {
	CA_CONN_HANDSHAKE,
	CA_CONN_READ,
	CA_CONN_WRITE,
};

struct ca_conn {
	int fd;
	SSL *ssl;
	enum ca_conn_state state;
	time_t deadline; /* the whole exchange, so a slow client cannot hold a slot */
	uint8_t hdr[ENROLL_HDR_LEN];
	uint8_t *req;
	size_t have, need;
	struct enroll_buf resp;
	bool keep; /* becomes a CRL subscription once answered */
	char sub_tenant[IDENT_TENANT_MAX + 1];
	short events; /* POLLIN or POLLOUT, what OpenSSL waits for */
};

struct ca_server {
	struct ca_db *db;
	const struct ca_secret *kek; /* NULL once a signer holds the keys */
	struct ca_signer *signer;
	long leaf_ttl;
	struct ca_tenant **tenants;
	size_t ntenants;
	SSL_CTX *ctx;
	int lfd, afd;
	struct ca_sub subs[CA_SUBS_MAX];
	size_t nsubs;
	struct ca_conn conns[CA_CONNS_MAX];
	size_t nconns;
	time_t crl_check;   /* next look for CRLs past half their validity */
	EVP_PKEY *wrap_pub; /* custody.c: inspection nodes' X25519 public key; NULL: off */
};

enum ca_origin {
	CA_FROM_TLS,   /* a component; peer may hold its client certificate */
	CA_FROM_ADMIN, /* the local admin socket (root or the CA's own user) */
};

/* ca_handle returns this when the connection stays open as a CRL subscription. */
#define CA_KEEP_OPEN 1

int ca_server_init(struct ca_server *s, struct ca_db *db, const struct ca_secret *kek);
void ca_server_free(struct ca_server *s);
/* Returns a tenant loaded (and cached) from the store; NULL if unknown or pending. */
const struct ca_tenant *ca_server_tenant(struct ca_server *s, const char *name);
/*
 * Handles one request; the answer goes into resp. 0, or CA_KEEP_OPEN (sub_tenant set),
 * or -errno when no answer can be made at all.
 */
int ca_handle(struct ca_server *s, enum ca_origin from, const uint8_t *req, size_t len, X509 *peer,
              struct enroll_buf *resp, char sub_tenant[IDENT_TENANT_MAX + 1]);
int ca_server_listen(struct ca_server *s, const char *addr, const char *admin_path);
int ca_server_run(struct ca_server *s, volatile int *stop);

/* custody.c: the tenants' inspection CA keys, wrapped to the inspection nodes (issue 7). */
#include "envelope.h"

#define CUSTODY_KEY_ID_LEN 32 /* hex of 16 random bytes */
#define CUSTODY_PURPOSE    "mtun inspection CA key"
#define CUSTODY_MARK_MAX   (8 + IDENT_TENANT_MAX)
#define CUSTODY_NODE_MAX   (IDENT_TENANT_MAX + 1 + IDENT_ID_MAX)

struct store;
struct store *ca_db_store(struct ca_db *db); /* db.c */

/* What a node is handed: the envelope, the intermediate, its chain (PEM). */
struct custody_key {
	char key_id[CUSTODY_KEY_ID_LEN + 1];
	uint8_t *wrapped;
	size_t wrapped_len;
	char *cert_pem;
	char *chain_pem; /* may be "" */
};
void custody_key_free(struct custody_key *k);

/*
 * A new key pair for tenant's inspection CA; the private key is wrapped to wrap_pub and
 * zeroed at once; stored "pending" with its CSR (returned, PEM). rotate false refuses
 * (-EEXIST) a tenant that has an active key; rotate true requires one (-ENOENT).
 * expires: the certificate's wanted end (0: unset).
 */
int custody_csr(struct ca_db *db, EVP_PKEY *wrap_pub, const char *tenant, enum ca_key_alg alg,
                int64_t expires, bool rotate, char key_id[CUSTODY_KEY_ID_LEN + 1], char **csr_pem,
                size_t *csr_len);
/*
 * The signed certificate (first) and its chain for the pending key: public key must match,
 * CA:TRUE pathlen:0 keyCertSign, valid at now, signed by the next certificate when given.
 * Then it becomes active and any older key is deleted from the store and from every
 * recorded backup; msg says what was done.
 */
int custody_import(struct ca_db *db, const char *tenant, const uint8_t *pem, size_t len, time_t now,
                   char *msg, size_t msg_size, const char **why);
/*
 * Revokes tenant's inspection intermediate(s): each certificate's serial goes into the
 * tenant's CRL (the certificate table; the caller rebuilds and pushes the CRL) and its key
 * is deleted from the store and from every recorded backup. -ENOENT when there is none.
 */
int custody_revoke(struct ca_db *db, const char *tenant, time_t now, char *msg, size_t msg_size,
                   const char **why);
/*
 * The pending inspection CSR of tenant and the wanted end (0: unset); -ENOENT when none.
 */
int custody_pending_csr(struct ca_db *db, const char *tenant, X509_REQ **req, int64_t *expires);
/* One line per key (no secrets) of tenant, or of every tenant when NULL; malloc'd. */
int custody_status(struct ca_db *db, const char *tenant, char **out);
int custody_tenant_private(struct ca_db *db, const char *tenant, bool private_only);
/* node "TENANT/ID" of an inspector; mark "public" or "private:TENANT". */
int custody_node_mark(struct ca_db *db, const char *node, const char *mark, const char **why);
/*
 * An inspector asks for tenant's key: granted if it is marked private for tenant, or public
 * and tenant is not private-only. Every request is audited and logged. -EPERM (why set)
 * when refused, -ENOENT when tenant has no active key.
 */
int custody_handout(struct ca_db *db, const struct ident *peer, const char *tenant,
                    struct custody_key *out, const char **why);
/* A consistent copy of the store (VACUUM INTO path), recorded so rotation reaches it. */
int custody_backup(struct ca_db *db, const char *path);
/*
 * Custody requests: admin socket (mtunctl inspection ...), and KEY_GET over mTLS from an
 * inspector. They reuse lib/enroll.h's tags:
 *   CSR, ROTATE  tenant, [role = key alg "p256"|"rsa2048"], [time = expires]
 *                -> serial = key id, list = CSR PEM
 *   IMPORT       tenant, chain = certificate then chain (PEM) -> message
 *   STATUS       [tenant] -> list
 *   TENANT       tenant, role = "private-only" | "shared"
 *   NODE_MARK    tenant + id = the inspector, groups = "public" | "private:TENANT"
 *   REVOKE       tenant -> message, crl = the tenant's new CRL (DER)
 *   SIGN         tenant -> message, chain: the tenant's root (held by mtun-ca) signs the
 *                pending CSR, which is then imported as by IMPORT
 *   KEY_GET      tenant -> serial = key id, crl = the envelope, chain = certificate + chain
 */
enum custody_type {
	CUSTODY_T_CSR = 24,
	CUSTODY_T_ROTATE = 25,
	CUSTODY_T_IMPORT = 26,
	CUSTODY_T_STATUS = 27,
	CUSTODY_T_TENANT = 28,
	CUSTODY_T_NODE_MARK = 29,
	CUSTODY_T_REVOKE = 30,
	CUSTODY_T_SIGN = 31,
	CUSTODY_T_KEY_GET = 40,
};
/* server.c: answers one custody request (from says which ones it may make). */
int ca_handle_custody(struct ca_server *s, enum ca_origin from, const struct enroll_msg *m,
                      X509 *peer, struct enroll_buf *resp);

/* Deletes from every recorded backup each inspection key the store no longer has; *n rewritten. */
int custody_purge_backups(struct ca_db *db, int *n);
