/*
 * The admin API: HTTPS + JSON on libmicrohttpd (TLS by GnuTLS). The client's certificate
 * chain is verified here with OpenSSL against the tenant root, and its mtun:// URI must
 * name an admin of the tenant.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "admin/admin_int.h"
#include "enroll.h"
#include "log.h"

#define ADMIN_PEERS_MAX 8

struct admin_server {
	struct MHD_Daemon *d;
	struct store *st;
	admin_change_fn *on_change;
	void *arg;
	admin_sessions_fn *sessions;
	void *sessions_arg;
	char tenant[IDENT_TENANT_MAX + 1];
	pthread_mutex_t lock; /* trust: replaced when a new CRL arrives */
	X509_STORE *trust;
	X509 *root;
	char *key_pem, *cert_pem, *root_pem;
	size_t key_len;
	uint16_t port;
};

struct admin_req {
	char *buf;
	size_t len;
	bool too_big;
	bool authed;
	int auth_status;
	char auth_msg[160];
	struct ident who;
};

static char *admin_pem_of(int (*wr)(BIO *, void *), void *obj, size_t *len)
{
	BIO *b = BIO_new(BIO_s_secmem());
	char *out = NULL, *p;
	long n;

	if (!b)
		return NULL;
	if (wr(b, obj)) {
		n = BIO_get_mem_data(b, &p);
		if (n > 0 && (out = OPENSSL_secure_malloc((size_t)n + 1))) {
			memcpy(out, p, (size_t)n);
			out[n] = '\0';
			if (len)
				*len = (size_t)n;
		}
	}
	BIO_free(b);
	return out;
}

static int wr_cert(BIO *b, void *x)
{
	return PEM_write_bio_X509(b, x);
}

static int wr_key(BIO *b, void *k)
{
	return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}

/* The leaf then the intermediates, as one PEM text. */
static char *admin_chain_pem(const struct enroll_identity *id)
{
	size_t total = 0, n;
	char *all = NULL, *one, *p;

	for (int i = -1; i < sk_X509_num(id->chain); i++) {
		one = admin_pem_of(wr_cert, i < 0 ? id->cert : sk_X509_value(id->chain, i), &n);
		if (!one) {
			free(all);
			return NULL;
		}
		p = realloc(all, total + n + 1);
		if (!p) {
			OPENSSL_secure_free(one);
			free(all);
			return NULL;
		}
		all = p;
		memcpy(all + total, one, n + 1);
		total += n;
		OPENSSL_secure_free(one);
	}
	return all;
}

/* Checks the TLS peer: chain to the tenant root, an admin of the tenant. */
static void admin_auth(struct admin_server *srv, struct MHD_Connection *c, struct admin_req *r)
{
	const union MHD_ConnectionInfo *ci;
	const gnutls_datum_t *peers;
	STACK_OF(X509) *untrusted = NULL;
	X509_STORE_CTX *vctx = NULL;
	X509_STORE *trust = NULL;
	GENERAL_NAMES *sans = NULL;
	X509 *leaf = NULL;
	const char *why = NULL;
	unsigned n = 0;
	int uris = 0;

	r->auth_status = 401;
	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	peers = ci ? gnutls_certificate_get_peers(ci->tls_session, &n) : NULL;
	if (!peers || n == 0) {
		snprintf(r->auth_msg, sizeof(r->auth_msg),
		         "an admin client certificate is required");
		return;
	}
	r->auth_status = 403;
	if (n > ADMIN_PEERS_MAX) {
		snprintf(r->auth_msg, sizeof(r->auth_msg), "certificate chain too long");
		return;
	}
	untrusted = sk_X509_new_null();
	for (unsigned i = 0; untrusted && i < n; i++) {
		const unsigned char *p = peers[i].data;
		X509 *x = d2i_X509(NULL, &p, peers[i].size);

		if (!x || p != peers[i].data + peers[i].size) {
			X509_free(x);
			why = "unreadable client certificate";
			goto out;
		}
		if (i == 0)
			leaf = x;
		else if (!sk_X509_push(untrusted, x)) {
			X509_free(x);
			goto out;
		}
	}
	pthread_mutex_lock(&srv->lock);
	trust = srv->trust;
	X509_STORE_up_ref(trust);
	pthread_mutex_unlock(&srv->lock);
	vctx = X509_STORE_CTX_new();
	if (!leaf || !vctx || !X509_STORE_CTX_init(vctx, trust, leaf, untrusted))
		goto out;
	X509_STORE_CTX_set_purpose(vctx, X509_PURPOSE_SSL_CLIENT);
	if (X509_verify_cert(vctx) != 1) {
		snprintf(r->auth_msg, sizeof(r->auth_msg), "client certificate not trusted: %s",
		         X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
		goto done;
	}
	sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
		GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);

		if (gn->type != GEN_URI)
			continue;
		uris++;
		if (ident_parse(
			(const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier),
			(size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier), &r->who,
			&why) < 0)
			goto out;
	}
	if (uris != 1) {
		why = "the certificate needs exactly one mtun:// URI";
		goto out;
	}
	if (r->who.role != MT_ROLE_ADMIN) {
		snprintf(r->auth_msg, sizeof(r->auth_msg), "role %s is not admin",
		         ident_role_name(r->who.role));
		goto done;
	}
	if (strcmp(r->who.tenant, srv->tenant) != 0) {
		snprintf(r->auth_msg, sizeof(r->auth_msg), "admin of tenant %s, not %s",
		         r->who.tenant, srv->tenant);
		goto done;
	}
	r->authed = true;
	r->auth_status = 0;
	goto done;
out:
	snprintf(r->auth_msg, sizeof(r->auth_msg), "%s", why ? why : "certificate check failed");
done:
	GENERAL_NAMES_free(sans);
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(trust);
	X509_free(leaf);
	sk_X509_pop_free(untrusted, X509_free);
}

static enum MHD_Result admin_reply(struct MHD_Connection *c, int status, char *body)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!body)
		body = strdup("{}");
	if (!body)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	ret = MHD_queue_response(c, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result admin_reply_err(struct MHD_Connection *c, int status, const char *msg)
{
	struct json_object *o = json_object_new_object();
	char *out = NULL;

	json_object_object_add(o, "status", json_object_new_int(status));
	json_object_object_add(o, "error", json_object_new_string(msg));
	admin_emit(o, &out, NULL);
	json_object_put(o);
	return admin_reply(c, status, out);
}

static int admin_parse_version(const char *s, int64_t *v)
{
	char *end;

	if (!s)
		return 0;
	errno = 0;
	*v = strtoll(s, &end, 10);
	if (!*s || *end || errno || *v < 1)
		return -EINVAL;
	return 0;
}

/* Routes one complete request; returns the HTTP status and sets *out. */
static int admin_route(struct admin_server *srv, struct MHD_Connection *c, const char *url,
                       const char *method, struct admin_req *r, char **out, struct admin_err *err,
                       struct admin_snapshot **changed)
{
	char kind_s[32], name[ADMIN_NAME_MAX + 2];
	const char *p, *slash, *ct;
	enum admin_kind k;
	int64_t version = 0;
	bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
	bool put = strcmp(method, "PUT") == 0, del = strcmp(method, "DELETE") == 0;
	int ret;

	*changed = NULL;
	if (strncmp(url, "/v1/", 4) != 0) {
		admin_err_set(err, 404, "no such endpoint (the API is under /v1/)");
		return -ENOENT;
	}
	p = url + 4;
	if (strcmp(p, "batch") == 0 || strcmp(p, "import") == 0 || strcmp(p, "policy/test") == 0) {
		if (!post) {
			admin_err_set(err, 405, "use POST");
			return -EINVAL;
		}
		if (p[0] == 'b') {
			ret = admin_batch_keep(srv->st, srv->tenant, r->buf, r->len, out, changed,
			                       err);
		} else if (p[0] == 'i') {
			ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
			                                 MHD_HTTP_HEADER_CONTENT_TYPE);
			ret = admin_import_keep(srv->st, srv->tenant, r->buf, r->len,
			                        ct && strncmp(ct, "text/csv", 8) == 0, out, changed,
			                        err);
		} else {
			ret = admin_policy_test(srv->st, srv->tenant, r->buf, r->len, out, err);
		}
		return ret;
	}
	if (strcmp(p, "sessions") == 0) {
		if (!get) {
			admin_err_set(err, 405, "use GET");
			return -EINVAL;
		}
		if (!srv->sessions) {
			admin_err_set(
			    err, 503,
			    "no broker attached: live sessions are listed by the admin API "
			    "that mtun-broker serves, not by mtun-admin serve");
			return -EAGAIN;
		}
		ret = srv->sessions(srv->sessions_arg, out);
		if (ret) {
			admin_err_set(err, 500, "sessions: %s", strerror(-ret));
			return ret;
		}
		return 0;
	}
	if (strcmp(p, "snapshot") == 0 && get) {
		struct admin_snapshot *s;
		struct json_object *o;

		ret = admin_snapshot_build(srv->st, srv->tenant, &s, err);
		if (ret)
			return ret;
		o = json_object_new_object();
		json_object_object_add(o, "tenant", json_object_new_string(s->tenant));
		json_object_object_add(o, "generation", json_object_new_int64(s->generation));
		json_object_object_add(o, "segments",
		                       json_object_new_int64((int64_t)segset_count(s->segs)));
		json_object_object_add(o, "rules",
		                       json_object_new_int64((int64_t)policy_rule_count(s->pol)));
		json_object_object_add(o, "users", json_object_new_int64((int64_t)s->nusers));
		admin_snapshot_free(s);
		ret = admin_emit(o, out, err);
		json_object_put(o);
		return ret;
	}
	slash = strchr(p, '/');
	if ((size_t)(slash ? slash - p : (ptrdiff_t)strlen(p)) >= sizeof(kind_s)) {
		admin_err_set(err, 404, "no such endpoint");
		return -ENOENT;
	}
	snprintf(kind_s, sizeof(kind_s), "%.*s", (int)(slash ? slash - p : (ptrdiff_t)strlen(p)),
	         p);
	if (admin_kind_parse(kind_s, &k) < 0 || strcmp(kind_s, admin_kind_path(k)) != 0) {
		admin_err_set(err, 404, "no such endpoint: /v1/%s", kind_s);
		return -ENOENT;
	}
	if (!slash) {
		if (get)
			return admin_list(srv->st, srv->tenant, k, out, err);
		if (post) {
			ret = admin_apply(srv->st, srv->tenant, ADMIN_OP_CREATE, k, NULL, r->buf,
			                  r->len, 0, out, changed, err);
			if (ret == 0)
				err->status = 201;
			return ret;
		}
		admin_err_set(err, 405, "use GET or POST on /v1/%s", kind_s);
		return -EINVAL;
	}
	if (strlen(slash + 1) > ADMIN_NAME_MAX || !slash[1] || strchr(slash + 1, '/')) {
		admin_err_set(err, 404, "no such endpoint");
		return -ENOENT;
	}
	snprintf(name, sizeof(name), "%s", slash + 1);
	if (get)
		return admin_get(srv->st, srv->tenant, k, name, out, err);
	if (put) {
		return admin_apply(srv->st, srv->tenant, ADMIN_OP_UPDATE, k, name, r->buf, r->len,
		                   0, out, changed, err);
	}
	if (del) {
		if (admin_parse_version(
			MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "version"),
			&version) < 0) {
			admin_err_set(err, 400, "version: a positive integer");
			return -EINVAL;
		}
		ret = admin_apply(srv->st, srv->tenant, ADMIN_OP_DELETE, k, name, NULL, 0, version,
		                  NULL, changed, err);
		if (ret == 0)
			err->status = 204;
		return ret;
	}
	admin_err_set(err, 405, "use GET, PUT or DELETE on /v1/%s/NAME", kind_s);
	return -EINVAL;
}

static enum MHD_Result admin_handle(void *cls, struct MHD_Connection *c, const char *url,
                                    const char *method, const char *version, const char *upload,
                                    size_t *upload_size, void **con_cls)
{
	struct admin_server *srv = cls;
	struct admin_req *r = *con_cls;
	struct admin_err err = {.status = 200};
	char *out = NULL, id[IDENT_URI_MAX + 1], q[96];
	struct admin_snapshot *changed = NULL;
	int ret;

	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return MHD_NO;
		*con_cls = r;
		admin_auth(srv, c, r);
		return MHD_YES;
	}
	if (*upload_size) {
		if (!r->too_big && r->authed) {
			if (r->len + *upload_size > ADMIN_BODY_MAX) {
				r->too_big = true;
			} else {
				char *nb = realloc(r->buf, r->len + *upload_size + 1);

				if (!nb)
					return MHD_NO;
				r->buf = nb;
				memcpy(r->buf + r->len, upload, *upload_size);
				r->len += *upload_size;
				r->buf[r->len] = '\0';
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (!r->authed) {
		log_event(LOG_LVL_WARN, "admin.refused", "url=%s reason=%s",
		          log_quote(q, sizeof(q), url), r->auth_msg);
		return admin_reply_err(c, r->auth_status, r->auth_msg);
	}
	if (r->too_big) {
		snprintf(err.msg, sizeof(err.msg), "body larger than %u bytes", ADMIN_BODY_MAX);
		return admin_reply_err(c, 413, err.msg);
	}
	ret = admin_route(srv, c, url, method, r, &out, &err, &changed);
	/* Committed, even if the answer could not be made: tell the owner all the same. */
	if (changed) {
		ident_format(&r->who, id, sizeof(id));
		log_event(LOG_LVL_INFO, "admin.change",
		          "tenant=%s method=%s url=%s by=%s generation=%" PRId64, srv->tenant,
		          method, log_quote(q, sizeof(q), url), id, changed->generation);
		if (srv->on_change)
			srv->on_change(srv->arg, srv->st, changed);
		else
			admin_snapshot_free(changed);
	}
	if (ret) {
		free(out);
		if (err.status < 400)
			err.status = 500;
		return admin_reply_err(c, err.status, err.msg);
	}
	if (err.status == 204) {
		free(out);
		out = strdup("");
	}
	return admin_reply(c, err.status, out);
}

static void admin_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                            enum MHD_RequestTerminationCode toe)
{
	struct admin_req *r = *con_cls;

	if (r) {
		free(r->buf);
		free(r);
	}
	*con_cls = NULL;
}

static void admin_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void admin_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[256];
	size_t n;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	n = strlen(buf);
	while (n && buf[n - 1] == '\n')
		buf[--n] = '\0';
	log_debug("admin api: %s", buf);
}

static int admin_parse_listen(const char *s, struct sockaddr_storage *ss)
{
	char host[64];
	const char *colon, *h = s;
	size_t hl;
	char *end;
	unsigned long port;

	if (s[0] == '[') {
		colon = strstr(s, "]:");
		if (!colon)
			return -EINVAL;
		h = s + 1;
		hl = (size_t)(colon - h);
		colon++;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t)(colon - s);
	}
	if (hl == 0 || hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (!colon[1] || *end || errno || port > 65535)
		return -EINVAL;
	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
		((struct sockaddr_in *)ss)->sin_family = AF_INET;
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)ss)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
		return 0;
	}
	return -EINVAL;
}

static void admin_server_free(struct admin_server *srv)
{
	if (!srv)
		return;
	if (srv->key_pem)
		OPENSSL_secure_clear_free(srv->key_pem, srv->key_len + 1);
	free(srv->cert_pem);
	if (srv->root_pem)
		OPENSSL_secure_free(srv->root_pem);
	X509_STORE_free(srv->trust);
	X509_free(srv->root);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}

int admin_server_start(const struct admin_server_conf *conf, struct store *st,
                       admin_change_fn *on_change, void *arg, struct admin_server **out)
{
	struct enroll_identity id = {0};
	struct admin_server *srv;
	struct sockaddr_storage ss;
	const union MHD_DaemonInfo *di;
	socklen_t sl = sizeof(ss);
	int ret;

	*out = NULL;
	if (!conf->listen || admin_parse_listen(conf->listen, &ss) < 0) {
		log_warnx("admin api: listen address must be ADDR:PORT or [ADDR6]:PORT");
		return -EINVAL;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	pthread_mutex_init(&srv->lock, NULL);
	srv->st = st;
	srv->on_change = on_change;
	srv->arg = arg;
	srv->sessions = conf->sessions;
	srv->sessions_arg = conf->sessions_arg;
	ret = enroll_load(conf->state, conf->identity_source, &id);
	if (ret) {
		log_warnx("admin api: cannot load the identity in %s: %s", conf->state,
		          strerror(-ret));
		goto fail;
	}
	snprintf(srv->tenant, sizeof(srv->tenant), "%s",
	         conf->tenant ? conf->tenant : id.ident.tenant);
	if (!ident_valid_tenant(srv->tenant)) {
		log_warnx("admin api: invalid tenant");
		ret = -EINVAL;
		goto fail;
	}
	srv->trust = X509_STORE_new();
	srv->root = id.root;
	X509_up_ref(srv->root);
	srv->key_pem = admin_pem_of(wr_key, id.key, &srv->key_len);
	srv->cert_pem = admin_chain_pem(&id);
	srv->root_pem = admin_pem_of(wr_cert, id.root, NULL);
	if (!srv->trust || !srv->key_pem || !srv->cert_pem || !srv->root_pem ||
	    !X509_STORE_add_cert(srv->trust, id.root)) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = admin_migrate(st);
	if (ret) {
		log_warnx("admin api: store: %s", store_errmsg(st));
		goto fail;
	}
	srv->d = MHD_start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_TLS | MHD_USE_ERROR_LOG | MHD_USE_POLL |
		(ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
	    0, NULL, NULL, admin_handle, srv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
	    MHD_OPTION_HTTPS_MEM_KEY, srv->key_pem, MHD_OPTION_HTTPS_MEM_CERT, srv->cert_pem,
	    MHD_OPTION_HTTPS_MEM_TRUST, srv->root_pem, MHD_OPTION_HTTPS_PRIORITIES,
	    "NORMAL:-VERS-ALL:+VERS-TLS1.3", MHD_OPTION_NOTIFY_COMPLETED, admin_completed, srv,
	    MHD_OPTION_CONNECTION_LIMIT, 64U, MHD_OPTION_PER_IP_CONNECTION_LIMIT, 16U,
	    MHD_OPTION_CONNECTION_TIMEOUT, 30U, MHD_OPTION_EXTERNAL_LOGGER, admin_mhd_log, srv,
	    MHD_OPTION_END);
	if (!srv->d) {
		log_warnx("admin api: cannot listen on %s (in use, or TLS setup failed)",
		          conf->listen);
		ret = -EADDRNOTAVAIL;
		goto fail;
	}
	di = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_LISTEN_FD);
	if (di && getsockname(di->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
		srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
		                                           : ((struct sockaddr_in *)&ss)->sin_port);
	enroll_identity_free(&id);
	*out = srv;
	return 0;
fail:
	enroll_identity_free(&id);
	admin_server_free(srv);
	return ret;
}

int admin_server_set_crl(struct admin_server *srv, X509_CRL *crl)
{
	X509_STORE *trust = X509_STORE_new(), *old;

	/* Its signature is checked at each use, against the issuer in the client's chain: a
	 * CRL that does not verify refuses every client (fail closed). */
	if (!trust || !X509_STORE_add_cert(trust, srv->root) || !X509_STORE_add_crl(trust, crl) ||
	    !X509_STORE_set_flags(trust, X509_V_FLAG_CRL_CHECK)) {
		X509_STORE_free(trust);
		return -ENOMEM;
	}
	pthread_mutex_lock(&srv->lock);
	old = srv->trust;
	srv->trust = trust;
	pthread_mutex_unlock(&srv->lock);
	X509_STORE_free(old);
	log_event(LOG_LVL_INFO, "admin.crl", "tenant=%s revoked=%d", srv->tenant,
	          sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)));
	return 0;
}

uint16_t admin_server_port(const struct admin_server *srv)
{
	return srv->port;
}

void admin_server_stop(struct admin_server *srv)
{
	if (!srv)
		return;
	if (srv->d)
		MHD_stop_daemon(srv->d);
	admin_server_free(srv);
}
