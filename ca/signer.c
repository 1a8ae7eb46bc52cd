/*
 * The signer: a child process that alone holds the key-encryption secret and the
 * tenants' issuing keys (privilege separation, as relayd keeps keys away from the
 * network). The serving process asks it, over a socketpair, to sign a leaf for a CSR, a
 * tenant's CRL, and with the tenant's root (when mtun-ca made it) the authority revocation
 * list or the pending inspection intermediate; it re-checks each request and never returns
 * a key.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "ca.h"
#include "log.h"

#define SIGNER_TENANTS_MAX 1024

/* ---- the child ---- */

struct signer_state {
	struct ca_db *db;
	const struct ca_secret *kek;
	struct ca_tenant *tenants[SIGNER_TENANTS_MAX];
	size_t n;
};

static const struct ca_tenant *signer_tenant(struct signer_state *st, const char *name)
{
	struct ca_tenant *t;

	for (size_t i = 0; i < st->n; i++)
		if (strcmp(st->tenants[i]->name, name) == 0)
			return st->tenants[i];
	if (st->n >= SIGNER_TENANTS_MAX || !ident_valid_tenant(name))
		return NULL;
	t = calloc(1, sizeof(*t));
	if (!t || ca_tenant_load(st->db, st->kek, name, t) != 0) {
		free(t);
		return NULL;
	}
	st->tenants[st->n++] = t;
	return t;
}

static int signer_leaf(struct signer_state *st, const struct enroll_msg *m, const char *tenant,
                       struct enroll_buf *resp)
{
	struct ca_leaf_req r = {0};
	const struct ca_tenant *t = signer_tenant(st, tenant);
	const char *why;
	X509_REQ *req = NULL;
	X509 *x = NULL;
	char serial[41], *pem = NULL;
	uint64_t ttl, now;
	size_t len;
	int ret = -EINVAL;

	if (!t || !enroll_msg_has(m, ET_CSR) || enroll_msg_u64(m, ET_TTL, &ttl) ||
	    enroll_msg_u64(m, ET_TIME, &now) || ttl < 300 || ttl > 397ULL * 86400)
		return -EINVAL;
	/* the CSR is checked again here: this process signs only what it has verified */
	if (pki_csr_parse(m->v[ET_CSR].p, m->v[ET_CSR].len, &req, &r.ident, &why) != 0 ||
	    strcmp(r.ident.tenant, tenant) != 0 || r.ident.role == MT_ROLE_CA)
		goto out;
	r.ttl = (long)ttl;
	r.now = (time_t)now;
	ret = pki_sign_leaf(t, X509_REQ_get0_pubkey(req), &r, &x, serial);
	if (!ret)
		ret = pki_pem_of_cert(x, &pem, &len);
	if (!ret)
		ret = enroll_buf_put(resp, ET_CHAIN, pem, len);
out:
	free(pem);
	X509_free(x);
	X509_REQ_free(req);
	return ret;
}

/* ET_LIST: one "SERIALHEX UNIXTIME" per line. authority: signed by the root (the ARL). */
static int signer_crl(struct signer_state *st, const struct enroll_msg *m, const char *tenant,
                      bool authority, struct enroll_buf *resp)
{
	const struct ca_tenant *t = signer_tenant(st, tenant);
	struct ca_tenant root;
	char **serials = NULL, *list = NULL, *line, *save = NULL, num[32];
	time_t *when = NULL;
	size_t n = 0, cap = 0;
	X509_CRL *crl = NULL;
	uint8_t *der = NULL;
	uint64_t now;
	int len, ret = -EINVAL;

	if (!t || enroll_msg_str(m, ET_SERIAL, num, sizeof(num)) ||
	    enroll_msg_u64(m, ET_TIME, &now))
		return -EINVAL;
	if (authority && !t->root_key)
		return -ENOKEY;
	if (authority) {
		memset(&root, 0, sizeof(root));
		root.issuer = t->root;
		root.issuer_key = t->root_key;
		t = &root;
	}
	if (enroll_msg_has(m, ET_LIST)) {
		list = strndup((const char *)m->v[ET_LIST].p, m->v[ET_LIST].len);
		if (!list)
			return -ENOMEM;
	}
	for (line = list ? strtok_r(list, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *sp = strchr(line, ' '), *end;

		if (!sp || sp == line || sp - line > 40 ||
		    strspn(line, "0123456789abcdef") != (size_t)(sp - line))
			goto out;
		*sp = '\0';
		if (n == cap) {
			char **ns;
			time_t *nw;

			cap = cap ? 2 * cap : 64;
			ns = realloc(serials, cap * sizeof(*ns));
			if (ns)
				serials = ns;
			nw = realloc(when, cap * sizeof(*nw));
			if (nw)
				when = nw;
			if (!ns || !nw) {
				ret = -ENOMEM;
				goto out;
			}
		}
		serials[n] = line;
		when[n] = (time_t)strtoll(sp + 1, &end, 10);
		if (*end)
			goto out;
		n++;
	}
	ret = pki_make_crl(t, (const char *const *)serials, when, n, strtol(num, NULL, 10),
	                   (time_t)now, &crl);
	if (ret)
		goto out;
	len = i2d_X509_CRL(crl, &der);
	ret = len > 0 ? enroll_buf_put(resp, ET_CRL, der, (size_t)len) : -EIO;
out:
	OPENSSL_free(der);
	X509_CRL_free(crl);
	free(serials);
	free(when);
	free(list);
	return ret;
}

/* The tenant's root signs the pending inspection CSR, read here from the store. */
static int signer_inspection(struct signer_state *st, const struct enroll_msg *m,
                             const char *tenant, struct enroll_buf *resp)
{
	const struct ca_tenant *t = signer_tenant(st, tenant);
	STACK_OF(X509) *rest = NULL;
	X509_REQ *req = NULL;
	X509 *x = NULL;
	int64_t expires = 0;
	uint64_t now;
	char *pem = NULL;
	size_t len;
	int ret;

	if (!t || enroll_msg_u64(m, ET_TIME, &now) || now > INT64_MAX)
		return -EINVAL;
	if (!t->root_key)
		return -ENOKEY;
	ret = custody_pending_csr(st->db, tenant, &req, &expires);
	if (!ret)
		ret = pki_sign_inspection(tenant, t->root, t->root_key, req, (time_t)now,
		                          (time_t)expires, &x);
	if (ret)
		goto out;
	rest = sk_X509_new_null();
	ret = rest && sk_X509_push(rest, t->root) ? 0 : -ENOMEM;
	if (!ret)
		ret = pki_pem_of_chain(x, rest, &pem, &len);
	if (!ret)
		ret = enroll_buf_put(resp, ET_CHAIN, pem, len);
	if (!ret)
		log_event(LOG_LVL_INFO, "signer.inspection", "tenant=%s", tenant);
out:
	sk_X509_free(rest); /* the root stays the tenant's */
	free(pem);
	X509_free(x);
	X509_REQ_free(req);
	return ret;
}

static noreturn void signer_main(int fd, const char *db_path, const struct ca_secret *kek)
{
	struct signer_state st = {.kek = kek};
	int code = 1;

	log_init("mtun-ca-signer", log_get_level());
	prctl(PR_SET_DUMPABLE, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	if (ca_db_open(db_path, &st.db) != 0)
		goto out;
	for (;;) {
		char tenant[IDENT_TENANT_MAX + 1];
		struct enroll_buf resp = {0};
		struct enroll_msg m;
		uint8_t *buf = NULL;
		int ret;

		ret = enroll_fd_recv(fd, ENROLL_MSG_MAX, &buf, NULL, &m);
		if (ret == -ECONNRESET) {
			code = 0; /* the serving process is gone */
			break;
		}
		if (ret)
			break;
		ret = enroll_buf_init(&resp, ENROLL_T_RESPONSE);
		if (!ret && enroll_msg_str(&m, ET_TENANT, tenant, sizeof(tenant)) != 0)
			ret = -EINVAL;
		if (!ret && m.type == ENROLL_T_SIGN_LEAF)
			ret = signer_leaf(&st, &m, tenant, &resp);
		else if (!ret && (m.type == ENROLL_T_SIGN_CRL || m.type == CA_SIGN_ARL))
			ret = signer_crl(&st, &m, tenant, m.type == CA_SIGN_ARL, &resp);
		else if (!ret && m.type == CA_SIGN_INSPECTION)
			ret = signer_inspection(&st, &m, tenant, &resp);
		else if (!ret)
			ret = -EINVAL;
		if (ret) {
			log_event(LOG_LVL_WARN, "signer.refuse", "type=%u err=%d", m.type, ret);
			enroll_buf_free(&resp);
			ret = enroll_buf_init(&resp, ENROLL_T_RESPONSE);
			if (!ret)
				ret = enroll_buf_put(&resp, ET_STATUS, "\0\1", 2);
		}
		free(buf);
		ERR_clear_error();
		if (ret || enroll_fd_io(fd, resp.p, resp.len, true) != 0) {
			enroll_buf_free(&resp);
			break;
		}
		enroll_buf_free(&resp);
	}
out:
	for (size_t i = 0; i < st.n; i++) {
		ca_tenant_clear(st.tenants[i]);
		free(st.tenants[i]);
	}
	ca_db_close(st.db);
	_exit(code);
}

int ca_signer_start(const char *db_path, const struct ca_secret *kek, struct ca_signer *sg)
{
	int sv[2];

	sg->pid = -1;
	sg->fd = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	fflush(NULL);
	sg->pid = fork();
	if (sg->pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return -errno;
	}
	if (sg->pid == 0) {
		close(sv[0]);
		signer_main(sv[1], db_path, kek);
	}
	close(sv[1]);
	sg->fd = sv[0];
	log_event(LOG_LVL_INFO, "signer.start", "pid=%d", (int)sg->pid);
	return 0;
}

void ca_signer_stop(struct ca_signer *sg)
{
	if (!sg || sg->fd < 0)
		return;
	close(sg->fd); /* the signer exits on EOF */
	sg->fd = -1;
	if (sg->pid > 0)
		waitpid(sg->pid, NULL, 0);
	sg->pid = -1;
}

/* Sends b and waits for the answer: 0 with *buf/m set, or -errno. */
static int signer_call(struct ca_signer *sg, struct enroll_buf *b, uint8_t **buf,
                       struct enroll_msg *m)
{
	int ret = enroll_fd_io(sg->fd, b->p, b->len, true);

	if (!ret)
		ret = enroll_fd_recv(sg->fd, ENROLL_MSG_MAX, buf, NULL, m);
	if (ret) {
		log_warnx("the signer process does not answer: %s", strerror(-ret));
		return ret;
	}
	if (m->type != ENROLL_T_RESPONSE || enroll_msg_has(m, ET_STATUS)) {
		free(*buf);
		*buf = NULL;
		return -EPERM;
	}
	return 0;
}

int ca_signer_leaf(struct ca_signer *sg, const char *tenant, X509_REQ *req, long ttl, time_t now,
                   X509 **out)
{
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *der = NULL, *buf = NULL;
	int len, ret;

	*out = NULL;
	len = i2d_X509_REQ(req, &der);
	if (len <= 0)
		return -EIO;
	ret = enroll_buf_init(&b, ENROLL_T_SIGN_LEAF);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, tenant);
	if (!ret)
		ret = enroll_buf_put(&b, ET_CSR, der, (size_t)len);
	if (!ret)
		ret = enroll_buf_put_u64(&b, ET_TTL, (uint64_t)ttl);
	if (!ret)
		ret = enroll_buf_put_u64(&b, ET_TIME, (uint64_t)now);
	if (!ret)
		ret = signer_call(sg, &b, &buf, &m);
	if (!ret) {
		STACK_OF(X509) *certs = NULL;

		ret = enroll_msg_has(&m, ET_CHAIN)
		          ? pki_pem_read_certs(m.v[ET_CHAIN].p, m.v[ET_CHAIN].len, &certs)
		          : -EBADMSG;
		if (!ret)
			*out = sk_X509_shift(certs);
		sk_X509_pop_free(certs, X509_free);
	}
	free(buf);
	OPENSSL_free(der);
	enroll_buf_free(&b);
	return ret;
}

static int signer_ask_crl(struct ca_signer *sg, int type, const char *tenant,
                          const char *const *serials, const time_t *when, size_t n, long number,
                          time_t now, X509_CRL **out)
{
	struct enroll_buf b = {0};
	struct enroll_msg m;
	char *list = NULL, num[32];
	size_t size = 0;
	uint8_t *buf = NULL;
	const uint8_t *p;
	FILE *f;
	int ret;

	*out = NULL;
	f = open_memstream(&list, &size);
	if (!f)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s %lld\n", serials[i], (long long)when[i]);
	if (fclose(f) != 0) {
		free(list);
		return -ENOMEM;
	}
	snprintf(num, sizeof(num), "%ld", number);
	ret = enroll_buf_init(&b, (enum enroll_type)type);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, tenant);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_SERIAL, num);
	if (!ret)
		ret = enroll_buf_put_u64(&b, ET_TIME, (uint64_t)now);
	if (!ret && size > 0)
		ret = enroll_buf_put(&b, ET_LIST, list, size);
	if (!ret)
		ret = signer_call(sg, &b, &buf, &m);
	if (!ret) {
		p = m.v[ET_CRL].p;
		*out = enroll_msg_has(&m, ET_CRL) ? d2i_X509_CRL(NULL, &p, m.v[ET_CRL].len) : NULL;
		ret = *out ? 0 : -EBADMSG;
	}
	free(buf);
	free(list);
	enroll_buf_free(&b);
	return ret;
}

int ca_signer_crl(struct ca_signer *sg, const char *tenant, const char *const *serials,
                  const time_t *when, size_t n, long number, time_t now, X509_CRL **out)
{
	return signer_ask_crl(sg, ENROLL_T_SIGN_CRL, tenant, serials, when, n, number, now, out);
}

int ca_signer_arl(struct ca_signer *sg, const char *tenant, const char *const *serials,
                  const time_t *when, size_t n, long number, time_t now, X509_CRL **out)
{
	return signer_ask_crl(sg, CA_SIGN_ARL, tenant, serials, when, n, number, now, out);
}

int ca_signer_inspection(struct ca_signer *sg, const char *tenant, time_t now, char **pem,
                         size_t *len)
{
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *buf = NULL;
	int ret;

	*pem = NULL;
	ret = enroll_buf_init(&b, (enum enroll_type)CA_SIGN_INSPECTION);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, tenant);
	if (!ret)
		ret = enroll_buf_put_u64(&b, ET_TIME, (uint64_t)now);
	if (!ret)
		ret = signer_call(sg, &b, &buf, &m);
	if (!ret && !enroll_msg_has(&m, ET_CHAIN))
		ret = -EBADMSG;
	if (!ret) {
		*pem = strndup((const char *)m.v[ET_CHAIN].p, m.v[ET_CHAIN].len);
		*len = m.v[ET_CHAIN].len;
		ret = *pem ? 0 : -ENOMEM;
	}
	free(buf);
	enroll_buf_free(&b);
	return ret;
}
