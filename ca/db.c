/*
 * The CA's tables in the store (lib/store.h): tenants with their sealed keys, the CA's
 * TLS identity, token hashes, issued certificates, revocations, CRLs, request nonces and
 * the audit log. Schema version "ca" 1; 2 adds inspection key custody (custody.c); 3 the
 * authority revocation list (the tenant's root revoking the inspection intermediates).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "ca.h"
#include "log.h"
#include "store.h"

struct ca_db {
	struct store *st;
};

static const struct store_migration ca_migrations[] = {
    {1, "tenants, service identity, tokens, certificates, nonces, audit",
     "CREATE TABLE tenant (name TEXT PRIMARY KEY, state TEXT NOT NULL, chain_pem TEXT,"
     " root_pem TEXT, issuer_key BLOB NOT NULL, root_key BLOB, csr_pem TEXT,"
     " crl_number INTEGER NOT NULL DEFAULT 0, crl_der BLOB, created INTEGER NOT NULL);"
     "CREATE TABLE service (id INTEGER PRIMARY KEY CHECK (id = 1), cert_pem TEXT NOT NULL,"
     " key BLOB NOT NULL);"
     "CREATE TABLE token (hash BLOB PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL,"
     " user_name TEXT NOT NULL, groups TEXT NOT NULL, created INTEGER NOT NULL,"
     " expires INTEGER NOT NULL, spent INTEGER NOT NULL DEFAULT 0);"
     "CREATE INDEX token_tenant ON token (tenant);"
     "CREATE TABLE cert (serial TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL,"
     " id TEXT NOT NULL, user_name TEXT NOT NULL, device TEXT NOT NULL,"
     " groups TEXT NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,"
     " pem TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);"
     "CREATE INDEX cert_component ON cert (tenant, role, id);"
     "CREATE TABLE nonce (nonce BLOB PRIMARY KEY, expires INTEGER NOT NULL);"
     "CREATE TABLE audit (ts INTEGER NOT NULL, event TEXT NOT NULL, tenant TEXT NOT NULL,"
     " detail TEXT NOT NULL)"},
    {2, "inspection keys (wrapped), node marks, private-only tenants, hand-outs, backups",
     "CREATE TABLE insp_key (key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL,"
     " state TEXT NOT NULL, wrapped BLOB NOT NULL, pub_der BLOB NOT NULL,"
     " csr_pem TEXT NOT NULL, cert_pem TEXT, chain_pem TEXT, created INTEGER NOT NULL,"
     " expires INTEGER NOT NULL);"
     "CREATE INDEX insp_key_tenant ON insp_key (tenant, state);"
     "CREATE TABLE insp_node (node TEXT PRIMARY KEY, mark TEXT NOT NULL,"
     " updated INTEGER NOT NULL);"
     "CREATE TABLE insp_tenant (tenant TEXT PRIMARY KEY, private_only INTEGER NOT NULL);"
     "CREATE TABLE insp_handout (ts INTEGER NOT NULL, node TEXT NOT NULL,"
     " tenant TEXT NOT NULL, key_id TEXT NOT NULL, granted INTEGER NOT NULL,"
     " reason TEXT NOT NULL);"
     "CREATE TABLE backup (path TEXT PRIMARY KEY, created INTEGER NOT NULL)"},
    {3, "authority revocation lists, signed by the tenant's root when mtun-ca holds it",
     "ALTER TABLE tenant ADD COLUMN arl_number INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE tenant ADD COLUMN arl_der BLOB"},
};

int ca_db_open(const char *path, struct ca_db **out)
{
	char uri[4096];
	struct ca_db *db;
	const char *why = "";
	int ret;

	if (snprintf(uri, sizeof(uri), "sqlite:%s", path) >= (int)sizeof(uri))
		return -ENAMETOOLONG;
	db = calloc(1, sizeof(*db));
	if (!db)
		return -ENOMEM;
	ret = store_open(uri, &db->st, &why);
	if (ret) {
		log_warnx("store: cannot open %s: %s", path, why);
		free(db);
		return ret;
	}
	ret = store_migrate(db->st, "ca", ca_migrations,
	                    sizeof(ca_migrations) / sizeof(ca_migrations[0]));
	if (ret) {
		log_warnx("store: %s: cannot bring the CA's schema up to date: %s", path,
		          store_errmsg(db->st));
		ca_db_close(db);
		return ret;
	}
	*out = db;
	return 0;
}

struct store *ca_db_store(struct ca_db *db)
{
	return db->st;
}

void ca_db_close(struct ca_db *db)
{
	if (!db)
		return;
	store_close(db->st);
	free(db);
}

int ca_db_begin(struct ca_db *db)
{
	return store_begin(db->st);
}

int ca_db_commit(struct ca_db *db)
{
	return store_commit(db->st);
}

void ca_db_rollback(struct ca_db *db)
{
	if (store_in_transaction(db->st))
		store_rollback(db->st);
}

static int ca_db_exec(struct ca_db *db, const char *sql, const struct store_val *p, size_t n)
{
	int ret = store_exec(db->st, sql, p, n);

	return ret < 0 ? ret : 0;
}

void ca_db_audit(struct ca_db *db, const char *event, const char *tenant, const char *detail)
{
	ca_db_exec(db, "INSERT INTO audit (ts, event, tenant, detail) VALUES ($1, $2, $3, $4)",
	           STORE_ARGS(store_int(time(NULL)), store_text(event),
	                      store_text(tenant ? tenant : ""), store_text(detail)));
}

/* Copies a text or blob column with a NUL after it; NULL columns give *out = NULL. */
static int ca_db_dup(const struct store_val *v, uint8_t **out, size_t *len)
{
	*out = NULL;
	*len = 0;
	if (v->type == STORE_T_NULL)
		return 0;
	if (v->type != STORE_T_TEXT && v->type != STORE_T_BLOB)
		return -EINVAL;
	*out = malloc(v->len + 1);
	if (!*out)
		return -ENOMEM;
	if (v->len)
		memcpy(*out, v->p, v->len);
	(*out)[v->len] = '\0';
	*len = v->len;
	return 0;
}

static void ca_db_str(const struct store_val *v, char *out, size_t size)
{
	snprintf(out, size, "%s", v->type == STORE_T_TEXT ? (const char *)v->p : "");
}

/* Up to four text/blob columns of one row, copied. */
struct ca_db_cols {
	int n;
	uint8_t *p[4];
	size_t len[4];
	char state[16];
	bool found;
};

static int ca_db_cols_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct ca_db_cols *c = arg;
	int ret = 0;

	if (ncols < (size_t)c->n)
		return -EINVAL;
	for (int i = 0; i < c->n && !ret; i++)
		ret = ca_db_dup(&cols[i], &c->p[i], &c->len[i]);
	c->found = true;
	return ret ? ret : 1;
}

static void ca_db_cols_free(struct ca_db_cols *c)
{
	for (int i = 0; i < 4; i++) {
		free(c->p[i]);
		c->p[i] = NULL;
	}
}

int ca_db_service_get(struct ca_db *db, uint8_t **cert_pem, size_t *cert_len, uint8_t **key,
                      size_t *key_len)
{
	struct ca_db_cols c = {.n = 2};
	int ret;

	*cert_pem = *key = NULL;
	ret = store_query(db->st, "SELECT cert_pem, key FROM service WHERE id = 1", NULL, 0,
	                  ca_db_cols_row, &c);
	if (!ret && !c.found)
		ret = -ENOENT;
	if (ret) {
		ca_db_cols_free(&c);
		return ret;
	}
	*cert_pem = c.p[0];
	*cert_len = c.len[0];
	*key = c.p[1];
	*key_len = c.len[1];
	return 0;
}

int ca_db_service_put(struct ca_db *db, const char *cert_pem, const uint8_t *key, size_t key_len)
{
	return ca_db_exec(db, "INSERT INTO service (id, cert_pem, key) VALUES (1, $1, $2)",
	                  STORE_ARGS(store_text(cert_pem), store_blob(key, key_len)));
}

int ca_db_tenant_get(struct ca_db *db, const char *tenant, char state[16], uint8_t **chain_pem,
                     size_t *chain_len, uint8_t **root_pem, size_t *root_len, uint8_t **key,
                     size_t *key_len)
{
	struct ca_db_cols c = {.n = 4};
	int ret;

	*chain_pem = *root_pem = *key = NULL;
	ret = store_query(
	    db->st, "SELECT issuer_key, chain_pem, root_pem, state FROM tenant WHERE name = $1",
	    STORE_ARGS(store_text(tenant)), ca_db_cols_row, &c);
	if (!ret && !c.found)
		ret = -ENOENT;
	if (ret) {
		ca_db_cols_free(&c);
		return ret;
	}
	*key = c.p[0];
	*key_len = c.len[0];
	*chain_pem = c.p[1];
	*chain_len = c.len[1];
	*root_pem = c.p[2];
	*root_len = c.len[2];
	snprintf(state, 16, "%s", c.p[3] ? (const char *)c.p[3] : "");
	free(c.p[3]);
	return 0;
}

int ca_db_tenant_put(struct ca_db *db, const char *tenant, const char *state, const char *chain_pem,
                     const char *root_pem, const uint8_t *key, size_t key_len,
                     const uint8_t *root_key, size_t root_key_len, const char *csr_pem)
{
	return ca_db_exec(
	    db,
	    "INSERT INTO tenant (name, state, chain_pem, root_pem, issuer_key, root_key,"
	    " csr_pem, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
	    " ON CONFLICT (name) DO UPDATE SET state = excluded.state,"
	    " chain_pem = excluded.chain_pem, root_pem = excluded.root_pem,"
	    " issuer_key = excluded.issuer_key,"
	    " root_key = coalesce(excluded.root_key, tenant.root_key),"
	    " csr_pem = excluded.csr_pem",
	    STORE_ARGS(store_text(tenant), store_text(state), store_text(chain_pem),
	               store_text(root_pem), store_blob(key, key_len),
	               root_key ? store_blob(root_key, root_key_len) : store_null(),
	               store_text(csr_pem), store_int(time(NULL))));
}

/* The tenant's CRL (signed by the issuing CA) and ARL (by the root) keep the same columns. */
enum { CA_DB_CRL, CA_DB_ARL };
static const char *const ca_db_list_sql[2][4] = {
    [CA_DB_CRL] = {"UPDATE tenant SET crl_number = crl_number + 1 WHERE name = $1",
                   "SELECT crl_number FROM tenant WHERE name = $1",
                   "UPDATE tenant SET crl_der = $1 WHERE name = $2",
                   "SELECT crl_der FROM tenant WHERE name = $1"},
    [CA_DB_ARL] = {"UPDATE tenant SET arl_number = arl_number + 1 WHERE name = $1",
                   "SELECT arl_number FROM tenant WHERE name = $1",
                   "UPDATE tenant SET arl_der = $1 WHERE name = $2",
                   "SELECT arl_der FROM tenant WHERE name = $1"},
};

static int ca_db_list_next(struct ca_db *db, int which, const char *tenant, long *number)
{
	int64_t v;
	int ret;

	ret = ca_db_exec(db, ca_db_list_sql[which][0], STORE_ARGS(store_text(tenant)));
	if (!ret)
		ret = store_query_int(db->st, ca_db_list_sql[which][1],
		                      STORE_ARGS(store_text(tenant)), &v);
	if (!ret)
		*number = (long)v;
	return ret;
}

static int ca_db_list_put(struct ca_db *db, int which, const char *tenant, const uint8_t *der,
                          size_t len)
{
	return ca_db_exec(db, ca_db_list_sql[which][2],
	                  STORE_ARGS(store_blob(der, len), store_text(tenant)));
}

static int ca_db_list_get(struct ca_db *db, int which, const char *tenant, uint8_t **der,
                          size_t *len)
{
	struct ca_db_cols c = {.n = 1};
	int ret;

	*der = NULL;
	ret = store_query(db->st, ca_db_list_sql[which][3], STORE_ARGS(store_text(tenant)),
	                  ca_db_cols_row, &c);
	if (!ret && !c.p[0])
		ret = -ENOENT;
	if (ret) {
		ca_db_cols_free(&c);
		return ret;
	}
	*der = c.p[0];
	*len = c.len[0];
	return 0;
}

int ca_db_crl_next(struct ca_db *db, const char *tenant, long *number)
{
	return ca_db_list_next(db, CA_DB_CRL, tenant, number);
}

int ca_db_crl_put(struct ca_db *db, const char *tenant, const uint8_t *der, size_t len)
{
	return ca_db_list_put(db, CA_DB_CRL, tenant, der, len);
}

int ca_db_crl_get(struct ca_db *db, const char *tenant, uint8_t **der, size_t *len)
{
	return ca_db_list_get(db, CA_DB_CRL, tenant, der, len);
}

int ca_db_arl_next(struct ca_db *db, const char *tenant, long *number)
{
	return ca_db_list_next(db, CA_DB_ARL, tenant, number);
}

int ca_db_arl_put(struct ca_db *db, const char *tenant, const uint8_t *der, size_t len)
{
	return ca_db_list_put(db, CA_DB_ARL, tenant, der, len);
}

int ca_db_arl_get(struct ca_db *db, const char *tenant, uint8_t **der, size_t *len)
{
	return ca_db_list_get(db, CA_DB_ARL, tenant, der, len);
}

int ca_db_tenant_root(struct ca_db *db, const char *tenant, uint8_t **root_pem, size_t *root_len,
                      uint8_t **root_key, size_t *key_len)
{
	struct ca_db_cols c = {.n = 2};
	int ret;

	*root_pem = NULL;
	if (root_key)
		*root_key = NULL;
	ret = store_query(
	    db->st, "SELECT root_pem, root_key FROM tenant WHERE name = $1 AND state = 'active'",
	    STORE_ARGS(store_text(tenant)), ca_db_cols_row, &c);
	if (!ret && (!c.found || !c.p[0]))
		ret = -ENOENT;
	if (!ret && !c.p[1])
		ret = -ENOKEY;
	if (ret && ret != -ENOKEY) {
		ca_db_cols_free(&c);
		return ret;
	}
	*root_pem = c.p[0];
	*root_len = c.len[0];
	if (root_key) {
		*root_key = c.p[1];
		*key_len = c.len[1];
	} else {
		free(c.p[1]); /* sealed: ciphertext */
	}
	return ret;
}

int ca_db_token_put(struct ca_db *db, const uint8_t hash[TOKEN_HASH_LEN],
                    const struct ca_token_row *t)
{
	return ca_db_exec(db,
	                  "INSERT INTO token (hash, tenant, role, user_name, groups, created,"
	                  " expires, spent) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
	                  STORE_ARGS(store_blob(hash, TOKEN_HASH_LEN), store_text(t->tenant),
	                             store_text(ident_role_name(t->role)), store_text(t->user),
	                             store_text(t->groups), store_int(t->created),
	                             store_int(t->expires)));
}

struct ca_db_token_q {
	const uint8_t *hash;
	struct ca_token_row *t;
	bool found;
};

static int ca_db_token_row(void *arg, const struct store_val *c, size_t n)
{
	struct ca_db_token_q *q = arg;
	char role[16];

	if (n < 8 || c[7].type != STORE_T_BLOB || c[7].len != TOKEN_HASH_LEN ||
	    CRYPTO_memcmp(c[7].p, q->hash, TOKEN_HASH_LEN) != 0)
		return 1;
	ca_db_str(&c[0], q->t->tenant, sizeof(q->t->tenant));
	ca_db_str(&c[1], role, sizeof(role));
	q->t->role = ident_role_parse(role);
	ca_db_str(&c[2], q->t->user, sizeof(q->t->user));
	ca_db_str(&c[3], q->t->groups, sizeof(q->t->groups));
	q->t->created = c[4].i;
	q->t->expires = c[5].i;
	q->t->spent = c[6].i;
	q->found = true;
	return 1;
}

int ca_db_token_get(struct ca_db *db, const uint8_t hash[TOKEN_HASH_LEN], struct ca_token_row *t)
{
	struct ca_db_token_q q = {.hash = hash, .t = t};
	int ret;

	memset(t, 0, sizeof(*t));
	ret = store_query(db->st,
	                  "SELECT tenant, role, user_name, groups, created, expires, spent, hash"
	                  " FROM token WHERE hash = $1",
	                  STORE_ARGS(store_blob(hash, TOKEN_HASH_LEN)), ca_db_token_row, &q);
	if (!ret && !q.found)
		ret = -ENOENT;
	return ret;
}

int ca_db_token_spend(struct ca_db *db, const uint8_t hash[TOKEN_HASH_LEN], int64_t now)
{
	int ret = store_exec(db->st, "UPDATE token SET spent = $1 WHERE hash = $2 AND spent = 0",
	                     STORE_ARGS(store_int(now), store_blob(hash, TOKEN_HASH_LEN)));

	if (ret < 0)
		return ret;
	return ret == 1 ? 0 : -EALREADY;
}

struct ca_db_list {
	FILE *f;
	int64_t now;
};

static int ca_db_token_list_row(void *arg, const struct store_val *c, size_t n)
{
	struct ca_db_list *l = arg;
	const uint8_t *h = c[0].p;

	if (n < 7 || c[0].type != STORE_T_BLOB || c[0].len < 6)
		return -EINVAL;
	/* a short prefix of the hash names the token; the token itself is not stored */
	fprintf(l->f,
	        "hash=%02x%02x%02x%02x%02x%02x role=%s user=%s groups=%s created=%lld "
	        "expires=%lld state=%s\n",
	        h[0], h[1], h[2], h[3], h[4], h[5], (const char *)c[1].p,
	        c[2].len ? (const char *)c[2].p : "-", c[3].len ? (const char *)c[3].p : "-",
	        (long long)c[4].i, (long long)c[5].i,
	        c[6].i             ? "spent"
	        : c[5].i <= l->now ? "expired"
	                           : "valid");
	return 0;
}

int ca_db_token_list(struct ca_db *db, const char *tenant, int64_t now, char **out)
{
	struct ca_db_list l = {.now = now};
	char *buf = NULL;
	size_t size = 0;
	int ret;

	*out = NULL;
	l.f = open_memstream(&buf, &size);
	if (!l.f)
		return -ENOMEM;
	ret = store_query(db->st,
	                  "SELECT hash, role, user_name, groups, created, expires, spent FROM token"
	                  " WHERE tenant = $1 ORDER BY created",
	                  STORE_ARGS(store_text(tenant)), ca_db_token_list_row, &l);
	if (fclose(l.f) != 0 && !ret)
		ret = -ENOMEM;
	if (ret) {
		free(buf);
		return ret;
	}
	*out = buf;
	return 0;
}

int ca_db_nonce_use(struct ca_db *db, const uint8_t *nonce, size_t len, int64_t now)
{
	int ret;

	ret = ca_db_exec(db, "DELETE FROM nonce WHERE expires < $1", STORE_ARGS(store_int(now)));
	if (ret)
		return ret;
	return ca_db_exec(
	    db, "INSERT INTO nonce (nonce, expires) VALUES ($1, $2)",
	    STORE_ARGS(store_blob(nonce, len), store_int(now + 2 * ENROLL_SKEW_MAX + 60)));
}

int ca_db_nonce_seen(struct ca_db *db, const uint8_t *nonce, size_t len, bool *seen)
{
	int64_t v;
	int ret = store_query_int(db->st, "SELECT count(*) FROM nonce WHERE nonce = $1",
	                          STORE_ARGS(store_blob(nonce, len)), &v);

	if (!ret)
		*seen = v > 0;
	return ret;
}

int ca_db_cert_put(struct ca_db *db, const char *serial, const struct ident *id, const char *groups,
                   int64_t not_before, int64_t not_after, const char *pem)
{
	char dev[2 * IDENT_DEVICE_LEN + 1] = "";

	if (id->has_device)
		for (unsigned i = 0; i < IDENT_DEVICE_LEN; i++)
			snprintf(dev + 2 * i, 3, "%02x", id->device[i]);
	return ca_db_exec(db,
	                  "INSERT INTO cert (serial, tenant, role, id, user_name, device, groups,"
	                  " not_before, not_after, pem) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
	                  " $9, $10)",
	                  STORE_ARGS(store_text(serial), store_text(id->tenant),
	                             store_text(ident_role_name(id->role)), store_text(id->id),
	                             store_text(id->user), store_text(dev), store_text(groups),
	                             store_int(not_before), store_int(not_after), store_text(pem)));
}

int ca_db_cert_active(struct ca_db *db, const struct ident *id, int64_t now, bool *active)
{
	int64_t v;
	int ret = store_query_int(db->st,
	                          "SELECT count(*) FROM cert WHERE tenant = $1 AND role = $2"
	                          " AND id = $3 AND revoked = 0 AND not_after > $4",
	                          STORE_ARGS(store_text(id->tenant),
	                                     store_text(ident_role_name(id->role)),
	                                     store_text(id->id), store_int(now)),
	                          &v);

	if (!ret)
		*active = v > 0;
	return ret;
}

int ca_db_cert_revoked(struct ca_db *db, const char *serial, bool *revoked)
{
	int64_t v;
	int ret = store_query_int(db->st, "SELECT revoked FROM cert WHERE serial = $1",
	                          STORE_ARGS(store_text(serial)), &v);

	if (!ret)
		*revoked = v != 0;
	return ret;
}

int ca_db_cert_groups(struct ca_db *db, const char *serial, char *groups, size_t size)
{
	struct ca_db_cols c = {.n = 1};
	int ret;

	ret = store_query(db->st, "SELECT groups FROM cert WHERE serial = $1",
	                  STORE_ARGS(store_text(serial)), ca_db_cols_row, &c);
	if (!ret && !c.found)
		ret = -ENOENT;
	if (!ret)
		snprintf(groups, size, "%s", c.p[0] ? (const char *)c.p[0] : "");
	ca_db_cols_free(&c);
	return ret;
}

int ca_db_cert_revoke(struct ca_db *db, const char *tenant, const char *role_id, const char *serial,
                      int64_t now, int *count)
{
	char role[16];
	const char *slash = role_id ? strchr(role_id, '/') : NULL;
	int ret;

	*count = 0;
	if (serial) {
		ret =
		    store_exec(db->st,
		               "UPDATE cert SET revoked = $1 WHERE tenant = $2"
		               " AND serial = lower($3) AND revoked = 0",
		               STORE_ARGS(store_int(now), store_text(tenant), store_text(serial)));
	} else {
		if (!slash || (size_t)(slash - role_id) >= sizeof(role))
			return -EINVAL;
		memcpy(role, role_id, (size_t)(slash - role_id));
		role[slash - role_id] = '\0';
		ret = store_exec(db->st,
		                 "UPDATE cert SET revoked = $1 WHERE tenant = $2 AND role = $3"
		                 " AND id = $4 AND revoked = 0",
		                 STORE_ARGS(store_int(now), store_text(tenant), store_text(role),
		                            store_text(slash + 1)));
	}
	if (ret < 0)
		return ret;
	*count = ret;
	return 0;
}

struct ca_db_revoked {
	char **v;
	time_t *w;
	size_t n;
};

static int ca_db_revoked_row(void *arg, const struct store_val *c, size_t ncols)
{
	struct ca_db_revoked *r = arg;
	char **nv;
	time_t *nw;

	if (ncols < 2 || c[0].type != STORE_T_TEXT)
		return -EINVAL;
	nv = realloc(r->v, (r->n + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	r->v = nv;
	nw = realloc(r->w, (r->n + 1) * sizeof(*nw));
	if (!nw)
		return -ENOMEM;
	r->w = nw;
	r->v[r->n] = strdup(c[0].p);
	if (!r->v[r->n])
		return -ENOMEM;
	r->w[r->n++] = (time_t)c[1].i;
	return 0;
}

int ca_db_revoked_list(struct ca_db *db, const char *tenant, char ***serials, time_t **when,
                       size_t *n)
{
	struct ca_db_revoked r = {0};
	int ret;

	ret = store_query(db->st,
	                  "SELECT serial, revoked FROM cert WHERE tenant = $1 AND revoked != 0"
	                  " ORDER BY serial",
	                  STORE_ARGS(store_text(tenant)), ca_db_revoked_row, &r);
	if (ret) {
		ca_db_strv_free(r.v, r.n);
		free(r.w);
		return ret;
	}
	*serials = r.v;
	*when = r.w;
	*n = r.n;
	return 0;
}

struct ca_db_revoked_ca {
	struct ca_db_revoked r;
	char **pem;
};

static int ca_db_revoked_ca_row(void *arg, const struct store_val *c, size_t ncols)
{
	struct ca_db_revoked_ca *rc = arg;
	char **np;
	int ret;

	if (ncols < 3 || c[2].type != STORE_T_TEXT)
		return -EINVAL;
	np = realloc(rc->pem, (rc->r.n + 1) * sizeof(*np));
	if (!np)
		return -ENOMEM;
	rc->pem = np;
	rc->pem[rc->r.n] = strndup(c[2].p, c[2].len);
	if (!rc->pem[rc->r.n])
		return -ENOMEM;
	ret = ca_db_revoked_row(&rc->r, c, ncols);
	if (ret)
		free(rc->pem[rc->r.n]);
	return ret;
}

int ca_db_revoked_ca_list(struct ca_db *db, const char *tenant, char ***serials, time_t **when,
                          char ***pems, size_t *n)
{
	struct ca_db_revoked_ca rc = {0};
	int ret;

	ret = store_query(db->st,
	                  "SELECT serial, revoked, pem FROM cert WHERE tenant = $1 AND revoked != 0"
	                  " AND role = 'inspection-ca' ORDER BY serial",
	                  STORE_ARGS(store_text(tenant)), ca_db_revoked_ca_row, &rc);
	if (ret) {
		ca_db_strv_free(rc.r.v, rc.r.n);
		ca_db_strv_free(rc.pem, rc.r.n);
		free(rc.r.w);
		return ret;
	}
	*serials = rc.r.v;
	*when = rc.r.w;
	*pems = rc.pem;
	*n = rc.r.n;
	return 0;
}

void ca_db_strv_free(char **v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}
