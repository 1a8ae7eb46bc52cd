/*
 * The CA service: enrollment (server-authenticated TLS, pinned), renewal and CRL
 * subscription (mTLS), the local admin socket. A plain poll() loop: connections are
 * non-blocking state machines, and each complete request is handled whole.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "ca.h"
#include "log.h"

#define CA_TTL_MIN 60
#define CA_TTL_MAX (30 * 86400)

static int ca_verify_defer(X509_STORE_CTX *xctx, void *arg)
{
	/* Client certificates are checked per tenant in ca_handle; TLS proves possession. */
	return 1;
}

int ca_server_init(struct ca_server *s, struct ca_db *db, const struct ca_secret *kek)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	int ret;

	memset(s, 0, sizeof(*s));
	s->db = db;
	s->kek = kek;
	s->leaf_ttl = CA_LEAF_TTL_DEFAULT;
	s->lfd = s->afd = -1;
	ret = ca_service_load(db, kek, &cert, &key);
	if (ret)
		return ret;
	ret = -EIO;
	s->ctx = SSL_CTX_new(TLS_server_method());
	if (!s->ctx)
		goto out;
	SSL_CTX_set_min_proto_version(s->ctx, TLS1_3_VERSION);
	SSL_CTX_set_session_cache_mode(s->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(s->ctx, 0);
	SSL_CTX_set_verify(s->ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_cert_verify_callback(s->ctx, ca_verify_defer, NULL);
	if (SSL_CTX_use_certificate(s->ctx, cert) != 1 || SSL_CTX_use_PrivateKey(s->ctx, key) != 1)
		goto out;
	ret = 0;
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	if (ret)
		ca_server_free(s);
	return ret;
}

void ca_server_free(struct ca_server *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->nsubs; i++) {
		SSL_free(s->subs[i].ssl);
		close(s->subs[i].fd);
	}
	s->nsubs = 0;
	for (size_t i = 0; i < s->nconns; i++) {
		SSL_free(s->conns[i].ssl);
		close(s->conns[i].fd);
		free(s->conns[i].req);
		enroll_buf_free(&s->conns[i].resp);
	}
	s->nconns = 0;
	for (size_t i = 0; i < s->ntenants; i++) {
		ca_tenant_clear(s->tenants[i]);
		free(s->tenants[i]);
	}
	free(s->tenants);
	s->tenants = NULL;
	s->ntenants = 0;
	SSL_CTX_free(s->ctx);
	s->ctx = NULL;
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->afd >= 0)
		close(s->afd);
	s->lfd = s->afd = -1;
}

const struct ca_tenant *ca_server_tenant(struct ca_server *s, const char *name)
{
	struct ca_tenant *t, **nt;

	for (size_t i = 0; i < s->ntenants; i++)
		if (strcmp(s->tenants[i]->name, name) == 0)
			return s->tenants[i];
	if (!ident_valid_tenant(name) || s->ntenants >= CA_TENANTS_MAX)
		return NULL;
	/* each tenant is its own allocation: pointers handed out stay valid */
	t = malloc(sizeof(*t));
	nt = realloc(s->tenants, (s->ntenants + 1) * sizeof(*nt));
	if (nt)
		s->tenants = nt;
	if (!t || !nt || ca_tenant_load(s->db, s->kek, name, t) != 0) {
		free(t);
		return NULL;
	}
	s->tenants[s->ntenants++] = t;
	return t;
}

/* A refusal: status 1, the reason for the client, an audit row and a log line. */
static int ca_refuse(struct ca_server *s, struct enroll_buf *resp, const char *event,
                     const char *tenant, const char *why)
{
	char q[600];
	int ret;

	enroll_buf_free(resp);
	ret = enroll_buf_init(resp, ENROLL_T_RESPONSE);
	if (!ret)
		ret = enroll_buf_put(resp, ET_STATUS, "\0\1", 2);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_MESSAGE, why);
	ca_db_audit(s->db, event, tenant, why);
	log_event(LOG_LVL_WARN, event, "tenant=%s reason=%s", tenant && tenant[0] ? tenant : "-",
	          log_quote(q, sizeof(q), why));
	return ret;
}

static int ca_ok(struct enroll_buf *resp)
{
	int ret = enroll_buf_init(resp, ENROLL_T_RESPONSE);

	return ret ? ret : enroll_buf_put(resp, ET_STATUS, "\0\0", 2);
}

/* nonce and time: fresh and never seen, inside the caller's transaction. */
static const char *ca_check_fresh(struct ca_server *s, const struct enroll_msg *m, time_t now)
{
	uint64_t t;
	int ret;

	if (enroll_msg_u64(m, ET_TIME, &t) != 0 || !enroll_msg_has(m, ET_NONCE))
		return "request lacks its nonce or time";
	if ((int64_t)t < (int64_t)now - ENROLL_SKEW_MAX ||
	    (int64_t)t > (int64_t)now + ENROLL_SKEW_MAX)
		return "request time is too far from the CA's clock";
	ret = ca_db_nonce_use(s->db, m->v[ET_NONCE].p, m->v[ET_NONCE].len, now);
	if (ret == -EEXIST)
		return "replayed request (nonce seen before)";
	return ret ? "store error" : NULL;
}

/* Signs req for id, records the certificate and answers with chain and root. */
static int ca_issue(struct ca_server *s, const struct ca_tenant *t, X509_REQ *req,
                    const struct ident *id, const char *groups, time_t now, struct enroll_buf *resp,
                    char serial[41])
{
	struct ca_leaf_req r = {.ident = *id, .ttl = s->leaf_ttl, .now = now};
	char *chain = NULL, *root = NULL, *leaf = NULL, a[IDENT_URI_MAX], b[IDENT_URI_MAX];
	struct ident got;
	size_t lc, lr, ll;
	X509 *x = NULL;
	int ret;

	if (s->signer) {
		/* the signer signs the CSR's own identity: it must be the one decided here */
		ret = ca_signer_leaf(s->signer, t->name, req, s->leaf_ttl, now, &x);
		if (!ret && (enroll_cert_ident(x, &got) != 0 || ident_format(&got, a, sizeof(a)) ||
		             ident_format(id, b, sizeof(b)) || strcmp(a, b) != 0 ||
		             pki_serial_hex(x, serial) != 0))
			ret = -EPROTO;
	} else {
		ret = pki_sign_leaf(t, X509_REQ_get0_pubkey(req), &r, &x, serial);
	}
	if (!ret)
		ret = pki_pem_of_chain(x, t->chain, &chain, &lc);
	if (!ret)
		ret = pki_pem_of_cert(t->root, &root, &lr);
	if (!ret)
		ret = pki_pem_of_cert(x, &leaf, &ll);
	if (!ret)
		ret = ca_db_cert_put(s->db, serial, id, groups, (int64_t)now - 300,
		                     (int64_t)now + s->leaf_ttl, leaf);
	if (!ret)
		ret = ca_ok(resp);
	if (!ret)
		ret = enroll_buf_put(resp, ET_CHAIN, chain, lc);
	if (!ret)
		ret = enroll_buf_put(resp, ET_ROOT, root, lr);
	free(chain);
	free(root);
	free(leaf);
	X509_free(x);
	return ret;
}

static bool ca_groups_valid(const char *g)
{
	if (!*g)
		return true;
	for (const char *p = g; *p; p++)
		if (!(*p == ',' || *p == '.' || *p == '_' || *p == '-' || *p == '@' || *p == '+' ||
		      (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9')))
			return false;
	return g[0] != ',' && g[strlen(g) - 1] != ',' && !strstr(g, ",,");
}

static int ca_handle_enroll(struct ca_server *s, const struct enroll_msg *m,
                            struct enroll_buf *resp)
{
	char token[ENROLL_TOKEN_MAX + 1], label[IDENT_TENANT_MAX + 1] = "", serial[41];
	char uri[IDENT_URI_MAX], msg[256], q[IDENT_URI_MAX + 8], detail[IDENT_URI_MAX + 64];
	uint8_t hash[TOKEN_HASH_LEN];
	struct ca_token_row row;
	const struct ca_tenant *t;
	const char *why = NULL;
	X509_REQ *req = NULL;
	struct ident id;
	time_t now = time(NULL);
	bool active, seen;
	int ret;

	if (enroll_msg_str(m, ET_TOKEN, token, sizeof(token)) != 0 || !enroll_msg_has(m, ET_CSR))
		return ca_refuse(s, resp, "enroll.fail", "", "request lacks the token or the CSR");
	/* checked again, atomically, when the request commits */
	if (enroll_msg_has(m, ET_NONCE) &&
	    ca_db_nonce_seen(s->db, m->v[ET_NONCE].p, m->v[ET_NONCE].len, &seen) == 0 && seen)
		return ca_refuse(s, resp, "enroll.fail", "",
		                 "replayed request (nonce seen before)");
	if (token_parse(token, label, hash) != 0) {
		OPENSSL_cleanse(token, sizeof(token));
		return ca_refuse(s, resp, "enroll.fail", "", "malformed enrollment token");
	}
	OPENSSL_cleanse(token, sizeof(token));
	ret = ca_db_token_get(s->db, hash, &row);
	if (ret)
		return ca_refuse(s, resp, "enroll.fail", label,
		                 ret == -ENOENT ? "unknown enrollment token" : "store error");
	if (strcmp(row.tenant, label) != 0)
		return ca_refuse(s, resp, "enroll.fail", label,
		                 "enrollment token belongs to another tenant");
	if (row.spent)
		return ca_refuse(s, resp, "enroll.fail", row.tenant,
		                 "enrollment token already used");
	if (row.expires <= (int64_t)now)
		return ca_refuse(s, resp, "enroll.fail", row.tenant, "enrollment token expired");
	if (pki_csr_parse(m->v[ET_CSR].p, m->v[ET_CSR].len, &req, &id, &why) != 0)
		return ca_refuse(s, resp, "enroll.fail", row.tenant, why);
	if (strcmp(id.tenant, row.tenant) != 0) {
		snprintf(msg, sizeof(msg), "CSR is for tenant %s but the token is for tenant %s",
		         id.tenant, row.tenant);
		why = msg;
	} else if (id.role != row.role) {
		snprintf(msg, sizeof(msg), "CSR is for role %s but the token is for role %s",
		         ident_role_name(id.role), ident_role_name(row.role));
		why = msg;
	} else if (id.role == MT_ROLE_AGENT && !id.has_device) {
		why = "agent CSR lacks its device fingerprint";
	} else if (id.role != MT_ROLE_AGENT && (id.has_device || id.user[0])) {
		why = "only agents carry a user and a device";
	} else if (id.user[0] && strcmp(id.user, row.user) != 0) {
		why = "CSR names another user than the token";
	}
	if (why)
		goto refuse;
	snprintf(id.user, sizeof(id.user), "%s", row.user);
	t = ca_server_tenant(s, id.tenant);
	if (!t) {
		why = "tenant has no active CA";
		goto refuse;
	}
	if (ca_db_begin(s->db) != 0) {
		why = "store error";
		goto refuse;
	}
	why = ca_check_fresh(s, m, now);
	if (!why) {
		ret = ca_db_cert_active(s->db, &id, now, &active);
		if (ret || active)
			why = ret ? "store error"
			          : "component id already enrolled with a valid certificate "
			            "(revoke it first, or choose another id)";
	}
	if (!why) {
		ret = ca_db_token_spend(s->db, hash, now);
		if (ret)
			why = ret == -EALREADY ? "enrollment token already used" : "store error";
	}
	if (!why && ca_issue(s, t, req, &id, row.groups, now, resp, serial) != 0)
		why = "cannot issue the certificate";
	if (why || ca_db_commit(s->db) != 0) {
		ca_db_rollback(s->db);
		why = why ? why : "store error";
		goto refuse;
	}
	X509_REQ_free(req);
	ident_format(&id, uri, sizeof(uri));
	snprintf(detail, sizeof(detail), "serial=%s uri=%s", serial, uri);
	ca_db_audit(s->db, "enroll.ok", id.tenant, detail);
	log_event(LOG_LVL_INFO, "enroll.ok", "tenant=%s role=%s id=%s serial=%s uri=%s", id.tenant,
	          ident_role_name(id.role), id.id, serial, log_quote(q, sizeof(q), uri));
	return 0;
refuse:
	X509_REQ_free(req);
	return ca_refuse(s, resp, "enroll.fail", row.tenant, why);
}

/* The peer's certificate: valid for its tenant and not revoked. */
static const char *ca_check_peer(struct ca_server *s, X509 *peer, struct ident *id,
                                 const struct ca_tenant **tp, char serial[41])
{
	const struct ca_tenant *t;
	const char *why = NULL;
	bool revoked;

	if (!peer)
		return "this request needs the component's certificate (mTLS)";
	if (enroll_cert_ident(peer, id) != 0)
		return "client certificate carries no mtun identity";
	t = ca_server_tenant(s, id->tenant);
	if (!t)
		return "client certificate names an unknown tenant";
	if (pki_verify_leaf(t, peer, &why) != 0)
		return why;
	if (pki_serial_hex(peer, serial) != 0 || ca_db_cert_revoked(s->db, serial, &revoked) != 0)
		return "client certificate was not issued by this CA";
	if (revoked)
		return "client certificate is revoked";
	*tp = t;
	return NULL;
}

static int ca_handle_renew(struct ca_server *s, const struct enroll_msg *m, X509 *peer,
                           struct enroll_buf *resp)
{
	char old[41], serial[41], groups[1025] = "", a[IDENT_URI_MAX], b[IDENT_URI_MAX];
	char detail[128];
	const struct ca_tenant *t = NULL;
	const char *why;
	struct ident cur, id;
	X509_REQ *req = NULL;
	time_t now = time(NULL);

	memset(&cur, 0, sizeof(cur));
	why = ca_check_peer(s, peer, &cur, &t, old);
	if (why)
		return ca_refuse(s, resp, "renew.fail", cur.tenant, why);
	if (!enroll_msg_has(m, ET_CSR))
		return ca_refuse(s, resp, "renew.fail", cur.tenant, "request lacks the CSR");
	if (pki_csr_parse(m->v[ET_CSR].p, m->v[ET_CSR].len, &req, &id, &why) != 0)
		return ca_refuse(s, resp, "renew.fail", cur.tenant, why);
	if (ident_format(&cur, a, sizeof(a)) != 0 || ident_format(&id, b, sizeof(b)) != 0 ||
	    strcmp(a, b) != 0) {
		why = "CSR identity differs from the current certificate's";
		goto refuse;
	}
	ca_db_cert_groups(s->db, old, groups, sizeof(groups));
	if (ca_db_begin(s->db) != 0) {
		why = "store error";
		goto refuse;
	}
	why = ca_check_fresh(s, m, now);
	if (!why && ca_issue(s, t, req, &id, groups, now, resp, serial) != 0)
		why = "cannot issue the certificate";
	if (why || ca_db_commit(s->db) != 0) {
		ca_db_rollback(s->db);
		why = why ? why : "store error";
		goto refuse;
	}
	X509_REQ_free(req);
	snprintf(detail, sizeof(detail), "old=%s new=%s", old, serial);
	ca_db_audit(s->db, "renew.ok", id.tenant, detail);
	log_event(LOG_LVL_INFO, "renew.ok", "tenant=%s role=%s id=%s old=%s serial=%s", id.tenant,
	          ident_role_name(id.role), id.id, old, serial);
	return 0;
refuse:
	X509_REQ_free(req);
	return ca_refuse(s, resp, "renew.fail", cur.tenant, why);
}

/* Whether a stored CRL is past half its validity (it is rebuilt then, and pushed). */
static bool ca_crl_stale(const uint8_t *der, size_t len, time_t now)
{
	const uint8_t *p = der;
	X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)len);
	time_t half = now + CA_CRL_HOURS * 3600 / 2;
	bool stale = true;

	if (crl && X509_CRL_get0_nextUpdate(crl))
		stale = X509_cmp_time(X509_CRL_get0_nextUpdate(crl), &half) < 0;
	X509_CRL_free(crl);
	return stale;
}

/*
 * The tenant's current CRL, or with authority its ARL (malloc'd), rebuilt when missing or
 * stale; *rebuilt says so. -ENOKEY: an ARL, but mtun-ca does not hold the tenant's root.
 */
static int ca_crl_current(struct ca_server *s, const char *tenant, bool authority, uint8_t **der,
                          size_t *len, bool *rebuilt)
{
	const struct ca_tenant *t = ca_server_tenant(s, tenant);
	uint8_t *d;
	int ret;

	*rebuilt = false;
	if (!t)
		return -ENOENT;
	ret = authority ? ca_db_arl_get(s->db, tenant, der, len)
	                : ca_db_crl_get(s->db, tenant, der, len);
	if (ret == 0 && !ca_crl_stale(*der, *len, time(NULL)))
		return 0;
	if (ret && ret != -ENOENT)
		return ret;
	free(*der);
	*der = NULL;
	ret = authority ? ca_arl_rebuild(s->db, t, s->signer, &d, len)
	                : ca_crl_rebuild(s->db, t, s->signer, &d, len);
	if (ret)
		return ret;
	*der = malloc(*len);
	if (*der)
		memcpy(*der, d, *len);
	OPENSSL_free(d);
	*rebuilt = true;
	return *der ? 0 : -ENOMEM;
}

static int ca_answer_crl(struct ca_server *s, const char *tenant, bool authority, const char *event,
                         struct enroll_buf *resp)
{
	uint8_t *der = NULL;
	bool rebuilt;
	size_t len;
	int ret;

	ret = ca_crl_current(s, tenant, authority, &der, &len, &rebuilt);
	if (ret)
		return ca_refuse(s, resp, event, tenant,
		                 ret == -ENOENT ? "unknown tenant"
		                 : ret == -ENOKEY
		                     ? "mtun-ca does not hold this tenant's root, so it "
		                       "has no authority CRL: the root's owner publishes "
		                       "the root's CRL"
		                     : "cannot build the CRL");
	ret = ca_ok(resp);
	if (!ret)
		ret = enroll_buf_put(resp, ET_CRL, der, len);
	free(der);
	return ret;
}

/* To the tenant's subscribers; an ARL (authority) to inspection nodes only. */
static void ca_push_crl(struct ca_server *s, const char *tenant, bool authority, const uint8_t *der,
                        size_t len)
{
	struct enroll_buf b = {0};
	size_t i = 0;

	if (enroll_buf_init(&b, ENROLL_T_CRL_PUSH) || enroll_buf_put_str(&b, ET_TENANT, tenant) ||
	    enroll_buf_put(&b, ET_CRL, der, len)) {
		enroll_buf_free(&b);
		return;
	}
	while (i < s->nsubs) {
		struct ca_sub *sub = &s->subs[i];

		if (strcmp(sub->tenant, tenant) != 0 || (authority && !sub->inspector)) {
			i++;
			continue;
		}
		if (enroll_ssl_send(sub->ssl, &b) == 0) {
			log_event(LOG_LVL_INFO, "crl.push", "tenant=%s fd=%d%s", tenant, sub->fd,
			          authority ? " authority=1" : "");
			i++;
			continue;
		}
		log_event(LOG_LVL_WARN, "crl.push_fail", "tenant=%s fd=%d", tenant, sub->fd);
		SSL_free(sub->ssl);
		close(sub->fd);
		*sub = s->subs[--s->nsubs];
	}
	enroll_buf_free(&b);
}

static int ca_handle_revoke(struct ca_server *s, const struct enroll_msg *m,
                            struct enroll_buf *resp)
{
	char tenant[IDENT_TENANT_MAX + 1], target[IDENT_ID_MAX + 20] = "", serial[65] = "";
	char msg[160], detail[200];
	const struct ca_tenant *t;
	uint8_t *der = NULL;
	size_t len;
	int count = 0, ret;

	if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0)
		return ca_refuse(s, resp, "revoke.fail", "", "revoke needs a tenant");
	t = ca_server_tenant(s, tenant);
	if (!t)
		return ca_refuse(s, resp, "revoke.fail", tenant, "unknown tenant");
	enroll_msg_str(m, ET_ID, target, sizeof(target));
	enroll_msg_str(m, ET_SERIAL, serial, sizeof(serial));
	if (!target[0] == !serial[0])
		return ca_refuse(s, resp, "revoke.fail", tenant,
		                 "revoke needs either ROLE/ID or a serial");
	if (ca_db_begin(s->db) != 0)
		return ca_refuse(s, resp, "revoke.fail", tenant, "store error");
	ret = ca_db_cert_revoke(s->db, tenant, target[0] ? target : NULL, serial[0] ? serial : NULL,
	                        time(NULL), &count);
	if (!ret && count > 0)
		ret = ca_crl_rebuild(s->db, t, s->signer, &der, &len);
	if (ret || count == 0 || ca_db_commit(s->db) != 0) {
		ca_db_rollback(s->db);
		OPENSSL_free(der);
		return ca_refuse(s, resp, "revoke.fail", tenant,
		                 ret == -EINVAL ? "component must be ROLE/ID"
		                 : ret          ? "store error"
		                                : "no valid certificate matches");
	}
	snprintf(detail, sizeof(detail), "%s%s count=%d",
	         target[0] ? "component=" : "serial=", target[0] ? target : serial, count);
	ca_db_audit(s->db, "revoke", tenant, detail);
	log_event(LOG_LVL_INFO, "revoke", "tenant=%s %s", tenant, detail);
	ca_push_crl(s, tenant, false, der, len);
	snprintf(msg, sizeof(msg), "revoked %d certificate(s)", count);
	ret = ca_ok(resp);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_MESSAGE, msg);
	if (!ret)
		ret = enroll_buf_put(resp, ET_CRL, der, len);
	OPENSSL_free(der);
	return ret;
}

static int ca_handle_token(struct ca_server *s, const struct enroll_msg *m, struct enroll_buf *resp)
{
	char role[17] = "", tok[TOKEN_TEXT_MAX + 1], detail[1200];
	struct ca_token_row row;
	uint8_t hash[TOKEN_HASH_LEN];
	uint64_t ttl = 3600;
	int ret;

	memset(&row, 0, sizeof(row));
	if (enroll_msg_str(m, ET_TENANT, row.tenant, sizeof(row.tenant)) != 0 ||
	    enroll_msg_str(m, ET_ROLE, role, sizeof(role)) != 0)
		return ca_refuse(s, resp, "token.fail", "", "token needs a tenant and a role");
	enroll_msg_str(m, ET_USER, row.user, sizeof(row.user));
	enroll_msg_str(m, ET_GROUPS, row.groups, sizeof(row.groups));
	enroll_msg_u64(m, ET_TTL, &ttl);
	row.role = ident_role_parse(role);
	if (row.role == MT_ROLE_NONE || row.role == MT_ROLE_CA)
		return ca_refuse(s, resp, "token.fail", row.tenant,
		                 "role must be agent, connector, broker, inspector or admin");
	if (!ca_server_tenant(s, row.tenant))
		return ca_refuse(s, resp, "token.fail", row.tenant, "unknown tenant");
	if (row.role == MT_ROLE_AGENT && !ident_valid_user(row.user))
		return ca_refuse(s, resp, "token.fail", row.tenant,
		                 "an agent token needs a valid --user");
	if (row.role != MT_ROLE_AGENT && (row.user[0] || row.groups[0]))
		return ca_refuse(s, resp, "token.fail", row.tenant,
		                 "only agent tokens carry a user and groups");
	if (!ca_groups_valid(row.groups))
		return ca_refuse(s, resp, "token.fail", row.tenant, "malformed --groups");
	if (ttl < CA_TTL_MIN || ttl > CA_TTL_MAX)
		return ca_refuse(s, resp, "token.fail", row.tenant,
		                 "token ttl must be between 1 minute and 30 days");
	row.created = time(NULL);
	row.expires = row.created + (int64_t)ttl;
	ret = token_generate(row.tenant, tok, sizeof(tok), hash);
	if (!ret)
		ret = ca_db_token_put(s->db, hash, &row);
	if (ret) {
		OPENSSL_cleanse(tok, sizeof(tok));
		return ca_refuse(s, resp, "token.fail", row.tenant, "cannot create the token");
	}
	snprintf(detail, sizeof(detail), "role=%s user=%s groups=%s ttl=%llu", role,
	         row.user[0] ? row.user : "-", row.groups[0] ? row.groups : "-",
	         (unsigned long long)ttl);
	ca_db_audit(s->db, "token.create", row.tenant, detail);
	log_event(LOG_LVL_INFO, "token.create", "tenant=%s %s", row.tenant, detail);
	ret = ca_ok(resp);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_TOKEN, tok);
	OPENSSL_cleanse(tok, sizeof(tok));
	return ret;
}

static int ca_handle_token_list(struct ca_server *s, const struct enroll_msg *m,
                                struct enroll_buf *resp)
{
	char tenant[IDENT_TENANT_MAX + 1];
	char *list = NULL;
	int ret;

	if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0)
		return ca_refuse(s, resp, "token.list_fail", "", "token list needs a tenant");
	ret = ca_db_token_list(s->db, tenant, time(NULL), &list);
	if (ret)
		return ca_refuse(s, resp, "token.list_fail", tenant, "store error");
	ret = ca_ok(resp);
	if (!ret && list[0])
		ret = enroll_buf_put_str(resp, ET_LIST, list);
	free(list);
	return ret;
}

/* ---- inspection key custody (custody.c keeps the tables) ---- */

static int ca_custody_key_get(struct ca_server *s, const struct enroll_msg *m, X509 *peer,
                              struct enroll_buf *resp)
{
	char tenant[IDENT_TENANT_MAX + 1] = "", serial[41];
	const struct ca_tenant *t;
	struct custody_key k = {0};
	struct ident id;
	const char *why;
	size_t cl, hl;
	char *both;
	int ret;

	memset(&id, 0, sizeof(id));
	why = ca_check_peer(s, peer, &id, &t, serial);
	if (why)
		return ca_refuse(s, resp, "inspection.key_refused", id.tenant, why);
	if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0)
		return ca_refuse(s, resp, "inspection.key_refused", id.tenant,
		                 "key request needs a tenant");
	/* custody_handout audits and logs every decision itself */
	ret = custody_handout(s->db, &id, tenant, &k, &why);
	if (ret) {
		enroll_buf_free(resp);
		ret = enroll_buf_init(resp, ENROLL_T_RESPONSE);
		if (!ret)
			ret = enroll_buf_put(resp, ET_STATUS, "\0\1", 2);
		if (!ret)
			ret = enroll_buf_put_str(resp, ET_MESSAGE, why);
		return ret;
	}
	cl = strlen(k.cert_pem);
	hl = strlen(k.chain_pem);
	both = malloc(cl + hl + 1);
	ret = both ? ca_ok(resp) : -ENOMEM;
	if (!ret) {
		memcpy(both, k.cert_pem, cl);
		memcpy(both + cl, k.chain_pem, hl + 1);
		ret = enroll_buf_put_str(resp, ET_SERIAL, k.key_id);
	}
	if (!ret)
		ret = enroll_buf_put(resp, ET_CRL, k.wrapped, k.wrapped_len);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_CHAIN, both);
	free(both);
	custody_key_free(&k);
	return ret;
}

static int ca_custody_csr(struct ca_server *s, const struct enroll_msg *m, bool rotate,
                          struct enroll_buf *resp)
{
	const char *ev = rotate ? "inspection.rotate_fail" : "inspection.csr_fail";
	char tenant[IDENT_TENANT_MAX + 1] = "", alg_name[17] = "p256";
	char key_id[CUSTODY_KEY_ID_LEN + 1];
	enum ca_key_alg alg;
	uint64_t expires = 0;
	char *csr = NULL;
	size_t len;
	int ret;

	if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0)
		return ca_refuse(s, resp, ev, "", "needs a tenant");
	if (!s->wrap_pub)
		return ca_refuse(s, resp, ev, tenant,
		                 "mtun-ca has no inspection wrapping key (serve --wrap-key)");
	enroll_msg_str(m, ET_ROLE, alg_name, sizeof(alg_name));
	enroll_msg_u64(m, ET_TIME, &expires);
	if (strcmp(alg_name, "p256") == 0)
		alg = CA_KEY_P256;
	else if (strcmp(alg_name, "rsa2048") == 0)
		alg = CA_KEY_RSA2048;
	else
		return ca_refuse(s, resp, ev, tenant, "key is rsa2048 or p256");
	if (expires > INT64_MAX)
		return ca_refuse(s, resp, ev, tenant, "bad expiry");
	ret = custody_csr(s->db, s->wrap_pub, tenant, alg, (int64_t)expires, rotate, key_id, &csr,
	                  &len);
	if (ret == -EEXIST)
		return ca_refuse(s, resp, ev, tenant, "the tenant has an active key: use rotate");
	if (ret == -ENOENT)
		return ca_refuse(s, resp, ev, tenant, "the tenant has no active key to rotate");
	if (ret)
		return ca_refuse(s, resp, ev, tenant, "cannot make the key and CSR");
	log_event(LOG_LVL_INFO, rotate ? "inspection.rotate" : "inspection.csr", "tenant=%s key=%s",
	          tenant, key_id);
	ret = ca_ok(resp);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_SERIAL, key_id);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_LIST, csr);
	free(csr);
	return ret;
}

/*
 * After an inspection intermediate is revoked (revoke, or an import that rotated): the
 * tenant's CRL rebuilt and pushed (its nodes watch it), and returned in resp when given;
 * then the root's ARL, when the root is held here. Nothing when the tenant has no CA here.
 */
static int ca_custody_crl(struct ca_server *s, const char *tenant, struct enroll_buf *resp)
{
	const struct ca_tenant *t = ca_server_tenant(s, tenant);
	uint8_t *der = NULL, *arl = NULL;
	size_t len, alen;
	int ret;

	if (!t) {
		log_event(LOG_LVL_WARN, "inspection.crl_none", "tenant=%s", tenant);
		return 0;
	}
	ret = ca_db_begin(s->db);
	if (!ret)
		ret = ca_crl_rebuild(s->db, t, s->signer, &der, &len);
	if (!ret)
		ret = ca_db_commit(s->db);
	if (ret) {
		ca_db_rollback(s->db);
		log_event(LOG_LVL_WARN, "inspection.crl_fail", "tenant=%s", tenant);
		OPENSSL_free(der);
		return ret;
	}
	ca_push_crl(s, tenant, false, der, len);
	if (resp)
		ret = enroll_buf_put(resp, ET_CRL, der, len);
	OPENSSL_free(der);
	if (ca_db_begin(s->db) == 0) {
		int r = ca_arl_rebuild(s->db, t, s->signer, &arl, &alen);

		if (!r && ca_db_commit(s->db) == 0) {
			log_event(LOG_LVL_INFO, "inspection.arl", "tenant=%s bytes=%zu", tenant,
			          alen);
			ca_push_crl(s, tenant, true, arl, alen);
		} else {
			ca_db_rollback(s->db);
			if (r != -ENOKEY)
				log_event(LOG_LVL_WARN, "inspection.arl_fail", "tenant=%s err=%d",
				          tenant, r);
		}
		OPENSSL_free(arl);
	}
	return ret;
}

/*
 * The tenant's root, when mtun-ca made it (tenant init), signs the pending inspection CSR
 * in the signer process; the certificate is then imported as `inspection import` does, so
 * the root's ARL can revoke it.
 */
static int ca_custody_sign(struct ca_server *s, const struct enroll_msg *m, struct enroll_buf *resp)
{
	char tenant[IDENT_TENANT_MAX + 1] = "", msg[512];
	const char *ev = "inspection.sign_fail", *why = "";
	X509_REQ *req = NULL;
	int64_t expires;
	uint8_t *rp = NULL;
	char *pem = NULL;
	size_t rl, len;
	int ret;

	if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0)
		return ca_refuse(s, resp, ev, "", "sign needs a tenant");
	ret = ca_db_tenant_root(s->db, tenant, &rp, &rl, NULL, NULL);
	free(rp);
	if (ret == -ENOKEY)
		return ca_refuse(s, resp, ev, tenant,
		                 "mtun-ca does not hold this tenant's root: the root's owner signs "
		                 "the CSR, then inspection import");
	if (ret)
		return ca_refuse(s, resp, ev, tenant, "unknown tenant");
	ret = custody_pending_csr(s->db, tenant, &req, &expires);
	X509_REQ_free(req);
	if (ret)
		return ca_refuse(s, resp, ev, tenant,
		                 "no pending inspection key for this tenant (run csr or rotate)");
	if (!s->signer)
		return ca_refuse(s, resp, ev, tenant, "no signer process");
	ret = ca_signer_inspection(s->signer, tenant, time(NULL), &pem, &len);
	if (ret)
		return ca_refuse(s, resp, ev, tenant, "the root's signer refused the CSR");
	ret = custody_import(s->db, tenant, (const uint8_t *)pem, len, time(NULL), msg, sizeof(msg),
	                     &why);
	if (ret) {
		free(pem);
		return ca_refuse(s, resp, ev, tenant,
		                 why[0] ? why : "cannot import the signed certificate");
	}
	log_event(LOG_LVL_INFO, "inspection.sign", "tenant=%s %s", tenant, msg);
	if (strstr(msg, "revoked"))
		ca_custody_crl(s, tenant, NULL);
	ret = ca_ok(resp);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_LIST, pem);
	if (!ret)
		ret = enroll_buf_put_str(resp, ET_MESSAGE, msg);
	free(pem);
	return ret;
}

int ca_handle_custody(struct ca_server *s, enum ca_origin from, const struct enroll_msg *m,
                      X509 *peer, struct enroll_buf *resp)
{
	char tenant[IDENT_TENANT_MAX + 1] = "", arg[1025] = "", node[CUSTODY_NODE_MAX + 2];
	char id[IDENT_ID_MAX + 1] = "", msg[512];
	const char *why = "";
	char *list = NULL;
	int ret;

	if (m->type == CUSTODY_T_KEY_GET)
		return from == CA_FROM_TLS ? ca_custody_key_get(s, m, peer, resp)
		                           : ca_refuse(s, resp, "request.fail", "", "not over TLS");
	if (from != CA_FROM_ADMIN)
		return ca_refuse(s, resp, "request.fail", "", "not an admin connection");
	switch (m->type) {
	case CUSTODY_T_CSR:
	case CUSTODY_T_ROTATE:
		return ca_custody_csr(s, m, m->type == CUSTODY_T_ROTATE, resp);
	case CUSTODY_T_SIGN:
		return ca_custody_sign(s, m, resp);
	case CUSTODY_T_IMPORT:
		if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0 ||
		    !enroll_msg_has(m, ET_CHAIN))
			return ca_refuse(s, resp, "inspection.import_fail", "",
			                 "import needs a tenant and the certificate");
		ret = custody_import(s->db, tenant, m->v[ET_CHAIN].p, m->v[ET_CHAIN].len,
		                     time(NULL), msg, sizeof(msg), &why);
		if (ret)
			return ca_refuse(s, resp, "inspection.import_fail", tenant,
			                 why[0] ? why : "cannot import the certificate");
		log_event(LOG_LVL_INFO, "inspection.import", "tenant=%s %s", tenant, msg);
		if (strstr(msg, "revoked"))
			ca_custody_crl(s, tenant, NULL);
		ret = ca_ok(resp);
		return ret ? ret : enroll_buf_put_str(resp, ET_MESSAGE, msg);
	case CUSTODY_T_REVOKE:
		if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0)
			return ca_refuse(s, resp, "inspection.revoke_fail", "",
			                 "revoke needs a tenant");
		ret = custody_revoke(s->db, tenant, time(NULL), msg, sizeof(msg), &why);
		if (ret && ret != -EBUSY)
			return ca_refuse(s, resp, "inspection.revoke_fail", tenant,
			                 why[0] ? why : "cannot revoke");
		/* -EBUSY: revoked, but not yet scrubbed everywhere; the CRL goes out regardless */
		log_event(ret ? LOG_LVL_WARN : LOG_LVL_INFO, "inspection.revoke", "tenant=%s %s",
		          tenant, ret ? why : msg);
		ret = ca_ok(resp);
		if (!ret)
			ret = enroll_buf_put_str(resp, ET_MESSAGE, msg[0] ? msg : why);
		return ret ? ret : ca_custody_crl(s, tenant, resp);
	case CUSTODY_T_STATUS:
		enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant));
		ret = custody_status(s->db, tenant[0] ? tenant : NULL, &list);
		if (ret)
			return ca_refuse(s, resp, "inspection.status_fail", tenant, "store error");
		ret = ca_ok(resp);
		if (!ret && list[0])
			ret = enroll_buf_put_str(resp, ET_LIST, list);
		free(list);
		return ret;
	case CUSTODY_T_TENANT:
		if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0 ||
		    enroll_msg_str(m, ET_ROLE, arg, sizeof(arg)) != 0 ||
		    (strcmp(arg, "private-only") != 0 && strcmp(arg, "shared") != 0))
			return ca_refuse(s, resp, "inspection.tenant_fail", tenant,
			                 "needs a tenant and private-only or shared");
		if (custody_tenant_private(s->db, tenant, strcmp(arg, "private-only") == 0))
			return ca_refuse(s, resp, "inspection.tenant_fail", tenant, "store error");
		log_event(LOG_LVL_INFO, "inspection.tenant", "tenant=%s inspection=%s", tenant,
		          arg);
		return ca_ok(resp);
	case CUSTODY_T_NODE_MARK:
		if (enroll_msg_str(m, ET_TENANT, tenant, sizeof(tenant)) != 0 ||
		    enroll_msg_str(m, ET_ID, id, sizeof(id)) != 0 ||
		    enroll_msg_str(m, ET_GROUPS, arg, sizeof(arg)) != 0)
			return ca_refuse(s, resp, "inspection.mark_fail", "",
			                 "needs the inspector (TENANT/ID) and a mark");
		snprintf(node, sizeof(node), "%s/%s", tenant, id);
		if (custody_node_mark(s->db, node, arg, &why))
			return ca_refuse(s, resp, "inspection.mark_fail", tenant,
			                 why[0] ? why : "store error");
		log_event(LOG_LVL_INFO, "inspection.node_mark", "node=%s mark=%s", node, arg);
		return ca_ok(resp);
	default:
		return ca_refuse(s, resp, "request.fail", "", "unknown request type");
	}
}

/* A CRL request for the tenant's authority revocation list: role "authority". */
static bool ca_wants_arl(const struct enroll_msg *m)
{
	char what[16];

	return enroll_msg_str(m, ET_ROLE, what, sizeof(what)) == 0 &&
	       strcmp(what, "authority") == 0;
}

int ca_handle(struct ca_server *s, enum ca_origin from, const uint8_t *req, size_t len, X509 *peer,
              struct enroll_buf *resp, char sub_tenant[IDENT_TENANT_MAX + 1])
{
	char tenant[IDENT_TENANT_MAX + 1], serial[41];
	const struct ca_tenant *t;
	struct enroll_msg m;
	struct ident id;
	const char *why;
	int ret;

	memset(resp, 0, sizeof(*resp));
	ret = enroll_msg_parse(req, len, ENROLL_REQ_MAX, &m);
	if (ret)
		return ca_refuse(s, resp, "request.fail", "",
		                 ret == -EMSGSIZE ? "request too large" : "malformed request");
	if (from == CA_FROM_ADMIN) {
		switch (m.type) {
		case ENROLL_T_TOKEN_CREATE:
			return ca_handle_token(s, &m, resp);
		case ENROLL_T_TOKEN_LIST:
			return ca_handle_token_list(s, &m, resp);
		case ENROLL_T_REVOKE:
			return ca_handle_revoke(s, &m, resp);
		case ENROLL_T_CRL_ADMIN:
			if (enroll_msg_str(&m, ET_TENANT, tenant, sizeof(tenant)) != 0)
				return ca_refuse(s, resp, "crl.fail", "", "crl needs a tenant");
			return ca_answer_crl(s, tenant, ca_wants_arl(&m), "crl.fail", resp);
		case CUSTODY_T_CSR:
		case CUSTODY_T_ROTATE:
		case CUSTODY_T_IMPORT:
		case CUSTODY_T_STATUS:
		case CUSTODY_T_TENANT:
		case CUSTODY_T_NODE_MARK:
		case CUSTODY_T_REVOKE:
		case CUSTODY_T_SIGN:
			return ca_handle_custody(s, from, &m, peer, resp);
		default:
			return ca_refuse(s, resp, "request.fail", "", "not an admin request type");
		}
	}
	switch (m.type) {
	case ENROLL_T_ENROLL:
		return ca_handle_enroll(s, &m, resp);
	case ENROLL_T_RENEW:
		return ca_handle_renew(s, &m, peer, resp);
	case ENROLL_T_CRL_GET:
		if (enroll_msg_str(&m, ET_TENANT, tenant, sizeof(tenant)) != 0)
			return ca_refuse(s, resp, "crl.fail", "", "crl needs a tenant");
		return ca_answer_crl(s, tenant, ca_wants_arl(&m), "crl.fail", resp);
	case ENROLL_T_CRL_SUBSCRIBE:
		memset(&id, 0, sizeof(id));
		why = ca_check_peer(s, peer, &id, &t, serial);
		if (!why && id.role != MT_ROLE_BROKER && id.role != MT_ROLE_INSPECTOR)
			why = "only brokers and inspectors subscribe to CRLs";
		/* an inspection node watches the tenants it holds keys for: CRLs are public */
		snprintf(tenant, sizeof(tenant), "%s", id.tenant);
		if (!why && id.role == MT_ROLE_INSPECTOR && enroll_msg_has(&m, ET_TENANT) &&
		    (enroll_msg_str(&m, ET_TENANT, tenant, sizeof(tenant)) != 0 ||
		     !ident_valid_tenant(tenant)))
			why = "not a tenant name";
		if (why)
			return ca_refuse(s, resp, "crl.subscribe_fail", id.tenant, why);
		ret = ca_answer_crl(s, tenant, false, "crl.subscribe_fail", resp);
		if (ret)
			return ret;
		snprintf(sub_tenant, IDENT_TENANT_MAX + 1, "%s", tenant);
		log_event(LOG_LVL_INFO, "crl.subscribe", "tenant=%s id=%s/%s", tenant, id.tenant,
		          id.id);
		return CA_KEEP_OPEN;
	case CUSTODY_T_KEY_GET:
		return ca_handle_custody(s, from, &m, peer, resp);
	default:
		return ca_refuse(s, resp, "request.fail", "", "unknown request type");
	}
}

/* ---- sockets ---- */

static int ca_listen_tcp(const char *addr)
{
	char host[256], *colon;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
	int fd = -1, one = 1, ret;

	snprintf(host, sizeof(host), "%s", addr);
	colon = strrchr(host, ':');
	if (!colon)
		return -EINVAL;
	*colon = '\0';
	if (host[0] == '[' && colon[-1] == ']') {
		colon[-1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	ret = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
	if (ret) {
		log_warnx("cannot resolve %s: %s", addr, gai_strerror(ret));
		return -EINVAL;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 64) < 0) {
		ret = -errno;
		log_warn("cannot listen on %s", addr);
		if (fd >= 0)
			close(fd);
		fd = ret;
	}
	freeaddrinfo(res);
	return fd;
}

static int ca_listen_unix(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	mode_t old;
	int fd, ret;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* a stale socket is replaced; a live one belongs to another mtun-ca */
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
		log_warnx("%s is in use by another running mtun-ca", path);
		close(fd);
		return -EADDRINUSE;
	}
	unlink(path);
	old = umask(0077);
	ret = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (ret < 0 || listen(fd, 16) < 0) {
		ret = -errno;
		log_warn("cannot listen on %s", path);
		close(fd);
		return ret;
	}
	return fd;
}

int ca_server_listen(struct ca_server *s, const char *addr, const char *admin_path)
{
	s->lfd = ca_listen_tcp(addr);
	if (s->lfd < 0)
		return s->lfd;
	if (admin_path) {
		s->afd = ca_listen_unix(admin_path);
		if (s->afd < 0)
			return s->afd;
	}
	return 0;
}

static void ca_timeouts(int fd)
{
	struct timeval tv = {.tv_sec = CA_IO_TIMEOUT};

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static void ca_conn_close(struct ca_server *s, size_t i)
{
	struct ca_conn *c = &s->conns[i];

	SSL_free(c->ssl);
	close(c->fd);
	free(c->req);
	enroll_buf_free(&c->resp);
	s->conns[i] = s->conns[--s->nconns];
}

static bool ca_conn_accept(struct ca_server *s, int fd)
{
	struct ca_conn *c;

	if (s->nconns >= CA_CONNS_MAX) {
		log_event(LOG_LVL_WARN, "tls.busy", "conns=%zu", s->nconns);
		close(fd);
		return false;
	}
	c = &s->conns[s->nconns];
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->ssl = SSL_new(s->ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
		SSL_free(c->ssl);
		close(fd);
		return false;
	}
	SSL_set_accept_state(c->ssl);
	c->state = CA_CONN_HANDSHAKE;
	c->deadline = time(NULL) + CA_IO_TIMEOUT;
	c->need = ENROLL_HDR_LEN;
	c->events = POLLIN;
	s->nconns++;
	return true;
}

/* 1: wait for c->events; -1: close the connection. */
static int ca_conn_want(struct ca_conn *c, int r, const char *what)
{
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		c->events = POLLIN;
		return 1;
	case SSL_ERROR_WANT_WRITE:
		c->events = POLLOUT;
		return 1;
	default: {
		unsigned long e = ERR_peek_last_error();

		log_event(LOG_LVL_INFO, "tls.fail", "stage=%s reason=%s", what,
		          e ? ERR_reason_error_string(e) : "connection closed");
		ERR_clear_error();
		return -1;
	}
	}
}

/* The request is complete (or its header is malformed): make the answer. */
static int ca_conn_answer(struct ca_server *s, struct ca_conn *c, bool bad)
{
	static const uint8_t junk[ENROLL_HDR_LEN];
	int ret;

	/* a malformed header still gets an answer, so the client learns why */
	ret = bad ? ca_handle(s, CA_FROM_TLS, junk, sizeof(junk), NULL, &c->resp, c->sub_tenant)
	          : ca_handle(s, CA_FROM_TLS, c->req, c->need, SSL_get0_peer_certificate(c->ssl),
	                      &c->resp, c->sub_tenant);
	if (ret < 0 || !c->resp.p)
		return -1;
	c->keep = ret == CA_KEEP_OPEN;
	c->state = CA_CONN_WRITE;
	c->have = 0;
	return 0;
}

/* Advances one connection without blocking: 1 waits, 2 answered, -1 to close. */
static int ca_conn_step(struct ca_server *s, struct ca_conn *c)
{
	for (;;) {
		size_t n = 0;
		uint32_t body;
		int r;

		switch (c->state) {
		case CA_CONN_HANDSHAKE:
			r = SSL_do_handshake(c->ssl);
			if (r != 1)
				return ca_conn_want(c, r, "handshake");
			c->state = CA_CONN_READ;
			break;
		case CA_CONN_READ:
			r = SSL_read_ex(c->ssl, (c->req ? c->req : c->hdr) + c->have,
			                c->need - c->have, &n);
			if (r != 1)
				return ca_conn_want(c, r, "read");
			c->have += n;
			if (c->have < c->need)
				break;
			if (c->req) {
				if (ca_conn_answer(s, c, false))
					return -1;
				break;
			}
			if (enroll_hdr_parse(c->hdr, ENROLL_REQ_MAX, &body) != 0) {
				if (ca_conn_answer(s, c, true))
					return -1;
				break;
			}
			c->need = ENROLL_HDR_LEN + (size_t)body;
			c->req = malloc(c->need);
			if (!c->req)
				return -1;
			memcpy(c->req, c->hdr, ENROLL_HDR_LEN);
			if (c->have == c->need && ca_conn_answer(s, c, false))
				return -1;
			break;
		case CA_CONN_WRITE:
			r = SSL_write_ex(c->ssl, c->resp.p + c->have, c->resp.len - c->have, &n);
			if (r != 1)
				return ca_conn_want(c, r, "write");
			c->have += n;
			if (c->have < c->resp.len)
				break;
			return 2; /* answered */
		}
	}
}

/* Moves an answered subscription out of the request slots; pushes use blocking writes. */
static void ca_conn_subscribe(struct ca_server *s, size_t i)
{
	struct ca_conn *c = &s->conns[i];
	struct timeval tv = {.tv_sec = CA_IO_TIMEOUT};
	struct ca_sub *sub;

	if (s->nsubs >= CA_SUBS_MAX) {
		log_event(LOG_LVL_WARN, "crl.subscribe_full", "tenant=%s", c->sub_tenant);
		ca_conn_close(s, i);
		return;
	}
	fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	sub = &s->subs[s->nsubs++];
	sub->fd = c->fd;
	sub->ssl = c->ssl;
	memcpy(sub->tenant, c->sub_tenant, sizeof(sub->tenant));
	{
		struct ident pid;
		X509 *peer = SSL_get0_peer_certificate(c->ssl);

		sub->inspector =
		    peer && enroll_cert_ident(peer, &pid) == 0 && pid.role == MT_ROLE_INSPECTOR;
	}
	free(c->req);
	enroll_buf_free(&c->resp);
	s->conns[i] = s->conns[--s->nconns];
}

static void ca_conn_run(struct ca_server *s, size_t i)
{
	int r = ca_conn_step(s, &s->conns[i]);

	if (r == 2 && s->conns[i].keep) {
		ca_conn_subscribe(s, i);
	} else if (r == 2 || r < 0) {
		if (r == 2)
			SSL_shutdown(s->conns[i].ssl);
		ERR_clear_error();
		ca_conn_close(s, i);
	}
}

/* The admin socket: root, or the CA's own user, only (SO_PEERCRED). */
static void ca_serve_admin(struct ca_server *s, int fd)
{
	char sub[IDENT_TENANT_MAX + 1];
	uint8_t hdr[ENROLL_HDR_LEN], *req = NULL;
	struct enroll_buf resp = {0};
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	uint32_t body;
	int ret;

	ca_timeouts(fd);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
	    (cred.uid != 0 && cred.uid != geteuid())) {
		log_event(LOG_LVL_WARN, "admin.refused", "uid=%d", (int)cred.uid);
		goto out;
	}
	ret = enroll_fd_io(fd, hdr, sizeof(hdr), false);
	if (ret)
		goto out;
	ret = enroll_hdr_parse(hdr, ENROLL_REQ_MAX, &body);
	if (ret == 0) {
		req = malloc(sizeof(hdr) + body);
		if (!req)
			goto out;
		memcpy(req, hdr, sizeof(hdr));
		ret = enroll_fd_io(fd, req + sizeof(hdr), body, false);
		if (ret)
			goto out;
		ret = ca_handle(s, CA_FROM_ADMIN, req, sizeof(hdr) + body, NULL, &resp, sub);
	} else {
		ret = ca_handle(s, CA_FROM_ADMIN, hdr, sizeof(hdr), NULL, &resp, sub);
	}
	if (ret >= 0 && resp.p)
		enroll_fd_io(fd, resp.p, resp.len, true);
out:
	enroll_buf_free(&resp);
	free(req);
	close(fd);
}

/* Keeps every loaded tenant's CRL and ARL fresh, pushing rebuilt ones to subscribers. */
static void ca_crl_refresh(struct ca_server *s)
{
	for (size_t i = 0; i < s->ntenants; i++) {
		uint8_t *der = NULL;
		bool rebuilt;
		size_t len;

		if (ca_crl_current(s, s->tenants[i]->name, false, &der, &len, &rebuilt) == 0 &&
		    rebuilt)
			ca_push_crl(s, s->tenants[i]->name, false, der, len);
		free(der);
		der = NULL;
		/* the ARL on the same schedule, where the root is held here */
		if (ca_crl_current(s, s->tenants[i]->name, true, &der, &len, &rebuilt) == 0 &&
		    rebuilt)
			ca_push_crl(s, s->tenants[i]->name, true, der, len);
		free(der);
	}
}

int ca_server_run(struct ca_server *s, volatile int *stop)
{
	struct pollfd pfd[2 + CA_SUBS_MAX + CA_CONNS_MAX];

	while (!*stop) {
		size_t n = 0, i, nsubs, nconns;
		time_t now = time(NULL);
		int r;

		/* before the poll set is built: a failed push drops a subscriber */
		if (now >= s->crl_check) {
			ca_crl_refresh(s);
			s->crl_check = now + 60;
		}
		nsubs = s->nsubs;
		nconns = s->nconns;

		pfd[n++] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
		pfd[n++] = (struct pollfd){.fd = s->afd, .events = POLLIN};
		for (i = 0; i < nsubs; i++)
			pfd[n++] = (struct pollfd){.fd = s->subs[i].fd, .events = POLLIN};
		for (i = 0; i < nconns; i++)
			pfd[n++] =
			    (struct pollfd){.fd = s->conns[i].fd, .events = s->conns[i].events};
		r = poll(pfd, n, 1000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		/* backwards, so that closing (swap with the last) keeps the rest in place */
		now = time(NULL);
		for (i = nconns; i-- > 0;) {
			if (pfd[2 + nsubs + i].revents)
				ca_conn_run(s, i);
			else if (now > s->conns[i].deadline) {
				log_event(LOG_LVL_INFO, "tls.timeout", "state=%d",
				          (int)s->conns[i].state);
				ca_conn_close(s, i);
			}
		}
		/* a subscriber only ever closes; anything it sends ends the subscription */
		for (i = nsubs; i-- > 0;) {
			if (!pfd[2 + i].revents)
				continue;
			log_event(LOG_LVL_INFO, "crl.unsubscribe", "tenant=%s", s->subs[i].tenant);
			SSL_free(s->subs[i].ssl);
			close(s->subs[i].fd);
			s->subs[i] = s->subs[--s->nsubs];
		}
		if (pfd[0].revents & POLLIN) {
			int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

			if (fd >= 0 && ca_conn_accept(s, fd))
				ca_conn_run(s, s->nconns - 1);
		}
		if (s->afd >= 0 && (pfd[1].revents & POLLIN)) {
			int fd = accept4(s->afd, NULL, NULL, SOCK_CLOEXEC);

			if (fd >= 0)
				ca_serve_admin(s, fd);
		}
	}
	return 0;
}
