/*
 * The inspection node (`mtun-broker inspect`): configuration, tenants, and each tenant's
 * inspection key: fetched from mtun-ca when first needed, held in secure memory, dropped
 * when idle or when the tenant's CRL (pushed by the CA) lists its intermediate, refreshed
 * so that a rotation reaches the node; then the proxy (proxy.c).
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "conf.h"
#include "envelope.h"
#include "ident.h"
#include "inspect.h"
#include "log.h"
#include "secmem.h"

#define NODE_LISTEN_MAX  16
#define NODE_TENANTS_MAX 256
#define NODE_RULES_MAX   4096
#define NODE_TEST_ENV    "MTUN_TEST" /* --test-allow-dump needs MTUN_TEST=1 */

struct inspect_tenant {
	char name[IDENT_TENANT_MAX + 1];
	struct conf_cidr *sources;
	size_t nsources;
	const char **listen; /* listeners owned by this tenant (strings of the config) */
	size_t nlisten;
	const char **bypass, **block;
	size_t nbypass, nblock;
	bool fail_closed, error_page;

	pthread_mutex_t lock; /* everything below but the keeper's part */
	pthread_cond_t fetch_done;
	bool fetching; /* one fetch at a time, without the lock; others wait for it */
	struct mint *mint;
	STACK_OF(X509) *send; /* the intermediate and any CA below the root, sent to clients */
	char key_id[INSPKEY_ID_MAX + 1];
	uint64_t last_use, fetched, retry_at; /* monotonic ms */
	bool ca_unreachable;                  /* the last fetch found no CA */
	X509_CRL *crls[2]; /* the latest of each issuer: the tenant's CRL, its root's ARL */

	/* the keeper thread's only */
	struct inspkey_sub *sub; /* the tenant's CRL, watched while a key is held */
	uint64_t sub_retry;
	bool sub_failing;
};

struct inspect_node {
	struct conf *conf;
	const char *state, *identity_source;
	EVP_PKEY *wrap;
	struct inspect_tenant *tenants;
	size_t ntenants;
	const char **listen;
	size_t nlisten;
	uint64_t key_idle, key_refresh, ca_retry; /* ms */
	int ca_timeout;                           /* ms */
	size_t cache_max, pool_max;
	pthread_t keeper;
	bool keeper_on;
	volatile int stop;
};

static volatile int node_stop;
static int node_test_keys_fd = -1;

static uint64_t node_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Seed 002: memory "is always zeroed out as soon as the memory is released". OpenSSL's
 * own allocations (record buffers, decoded key parts, handshake state) go through these,
 * so what OpenSSL frees outside the secure heap is zeroed too.
 */
static void *node_malloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return malloc(n);
}

static void node_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	if (!p)
		return;
	explicit_bzero(p, malloc_usable_size(p));
	free(p);
}

static void *node_realloc(void *p, size_t n, const char *file, int line)
{
	size_t old;
	void *q;

	if (!p)
		return malloc(n);
	if (n == 0) {
		node_free(p, file, line);
		return NULL;
	}
	old = malloc_usable_size(p);
	if (n <= old)
		return p;
	q = malloc(n);
	if (!q)
		return NULL;
	memcpy(q, p, old);
	node_free(p, file, line);
	return q;
}

static bool node_zeroing;

/*
 * OpenSSL takes allocator functions only before its first allocation, and the dispatcher
 * (cli_main) makes one; so for `inspect` they are set before main (glibc passes argv).
 */
__attribute__((constructor)) static void node_ctor(int argc, char **argv, char **envp)
{
	(void)envp;
	if (argc > 1 && argv && argv[1] && strcmp(argv[1], "inspect") == 0)
		node_zeroing = CRYPTO_set_mem_functions(node_malloc, node_realloc, node_free) == 1;
}

const char *inspect_tenant_name(const struct inspect_tenant *t)
{
	return t->name;
}

bool inspect_tenant_error_page(const struct inspect_tenant *t)
{
	return t->error_page;
}

/* "host" matches host; "*.suffix" matches any name ending in ".suffix". */
static bool node_host_match(const char *pat, size_t plen, const char *host)
{
	size_t hlen = strlen(host);

	if (plen >= 2 && pat[0] == '*' && pat[1] == '.')
		return hlen > plen - 1 &&
		       strncasecmp(host + hlen - (plen - 1), pat + 1, plen - 1) == 0;
	return hlen == plen && strncasecmp(host, pat, plen) == 0;
}

bool inspect_tenant_bypass(const struct inspect_tenant *t, const char *host)
{
	for (size_t i = 0; i < t->nbypass; i++)
		if (node_host_match(t->bypass[i], strlen(t->bypass[i]), host))
			return true;
	return false;
}

bool inspect_tenant_blocked(const struct inspect_tenant *t, const char *host, const char *path)
{
	for (size_t i = 0; i < t->nblock; i++) {
		const char *r = t->block[i], *slash = strchr(r, '/');
		size_t hl = slash ? (size_t)(slash - r) : strlen(r);

		if (!node_host_match(r, hl, host))
			continue;
		if (!slash || strncmp(path, slash, strlen(slash)) == 0)
			return true;
	}
	return false;
}

static bool node_cidr_has(const struct conf_cidr *c, const struct sockaddr *sa)
{
	const uint8_t *a, *net;
	size_t bits = c->prefix;

	if (sa->sa_family == AF_INET && c->family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
		net = (const uint8_t *)&c->addr.v4;
	} else if (sa->sa_family == AF_INET6 && c->family == AF_INET6) {
		a = (const uint8_t *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
		net = (const uint8_t *)&c->addr.v6;
	} else {
		return false;
	}
	for (size_t i = 0; bits; i++) {
		uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));

		if ((a[i] & mask) != (net[i] & mask))
			return false;
		bits -= bits >= 8 ? 8 : bits;
	}
	return true;
}

struct inspect_tenant *inspect_tenant_of(struct inspect_node *n, size_t li,
                                         const struct sockaddr *addr)
{
	for (size_t i = 0; i < n->ntenants; i++)
		for (size_t j = 0; j < n->tenants[i].nlisten; j++)
			if (li < n->nlisten && strcmp(n->tenants[i].listen[j], n->listen[li]) == 0)
				return &n->tenants[i];
	for (size_t i = 0; i < n->ntenants; i++)
		for (size_t j = 0; j < n->tenants[i].nsources; j++)
			if (node_cidr_has(&n->tenants[i].sources[j], addr))
				return &n->tenants[i];
	return NULL;
}

/* Zeroes and frees the tenant's key (under t->lock). */
static void node_key_drop(struct inspect_tenant *t, const char *why)
{
	if (!t->mint)
		return;
	mint_free(t->mint);
	t->mint = NULL;
	sk_X509_pop_free(t->send, X509_free);
	t->send = NULL;
	log_event(LOG_LVL_INFO, "inspection.key_dropped", "tenant=%s key=%s reason=%s", t->name,
	          t->key_id, why);
	t->key_id[0] = '\0';
}

/* Whether a CRL the CA sent for t lists cert's serial (under t->lock). */
static bool node_revoked(const struct inspect_tenant *t, X509 *cert)
{
	X509_REVOKED *rev;

	for (size_t i = 0; cert && i < 2; i++)
		if (t->crls[i] &&
		    X509_CRL_get0_by_serial(t->crls[i], &rev, X509_get0_serialNumber(cert)) == 1)
			return true;
	return false;
}

/* A minter from a fetched key; takes the key. -EKEYREVOKED: a CRL lists its intermediate. */
static int node_key_install(struct inspect_node *n, struct inspect_tenant *t, struct inspkey *k)
{
	STACK_OF(X509) *send = sk_X509_new_null();
	struct mint *m = NULL;
	int num = sk_X509_num(k->certs), ret = -ENOMEM;

	if (!send)
		goto out;
	if (node_revoked(t, sk_X509_value(k->certs, 0))) {
		ret = -EKEYREVOKED;
		goto out;
	}
	for (int i = 0; i < num; i++) {
		X509 *x = sk_X509_value(k->certs, i);

		/* the root is the client's trust anchor: never sent */
		if (i > 0 && i == num - 1 && X509_check_issued(x, x) == X509_V_OK)
			break;
		if (!X509_up_ref(x))
			goto out;
		if (!sk_X509_push(send, x)) {
			X509_free(x);
			goto out;
		}
	}
	ret = mint_new(k->key, sk_X509_value(k->certs, 0), n->cache_max, n->pool_max, &m);
	if (ret)
		goto out;
	k->key = NULL; /* the minter owns it */
	node_key_drop(t, "replaced");
	t->mint = m;
	t->send = send;
	send = NULL;
	snprintf(t->key_id, sizeof(t->key_id), "%s", k->key_id);
	t->fetched = node_now();
	t->last_use = t->fetched;
	t->ca_unreachable = false;
	log_event(LOG_LVL_INFO, "inspection.key_held", "tenant=%s key=%s", t->name, t->key_id);
out:
	sk_X509_pop_free(send, X509_free);
	return ret;
}

/*
 * Fetches t's key. The caller holds t->lock, which is released while the CA answers (the
 * keeper and other tenants' users go on); a caller that finds a fetch under way waits for
 * its end instead.
 */
static void node_key_fetch(struct inspect_node *n, struct inspect_tenant *t)
{
	struct inspkey k;
	char why[256];
	int err;

	if (t->fetching) {
		while (t->fetching)
			pthread_cond_wait(&t->fetch_done, &t->lock);
		return;
	}
	t->fetching = true;
	pthread_mutex_unlock(&t->lock);
	err = inspkey_fetch(n->state, n->identity_source, n->wrap, t->name, n->ca_timeout, &k, why,
	                    sizeof(why));
	pthread_mutex_lock(&t->lock);
	t->fetching = false;
	pthread_cond_broadcast(&t->fetch_done);
	if (!err) {
		err = node_key_install(n, t, &k);
		inspkey_clear(&k);
		if (!err)
			return;
		snprintf(why, sizeof(why), "%s",
		         err == -EKEYREVOKED ? "the tenant's CRL lists the intermediate"
		                             : "the key does not fit its certificate");
	}
	t->retry_at = node_now() + n->ca_retry;
	t->ca_unreachable = err == -EHOSTUNREACH;
	if (err == -EACCES)
		node_key_drop(t, "refused by the CA");
	log_event(LOG_LVL_WARN, "inspection.key_fetch_failed", "tenant=%s err=%d reason=\"%s\"",
	          t->name, err, why);
}

enum inspect_mode inspect_tenant_leaf(struct inspect_node *n, struct inspect_tenant *t,
                                      const char *host, X509 **cert, EVP_PKEY **key,
                                      STACK_OF(X509) **chain)
{
	enum inspect_mode mode;
	uint64_t now = node_now();
	int err;

	pthread_mutex_lock(&t->lock);
	if (!t->mint && now >= t->retry_at)
		node_key_fetch(n, t);
	if (t->mint) {
		err = mint_leaf(t->mint, host, cert, key);
		if (!err) {
			*chain = X509_chain_up_ref(t->send);
			if (*chain) {
				t->last_use = now;
				pthread_mutex_unlock(&t->lock);
				return INSPECT_DECRYPT;
			}
			X509_free(*cert);
			EVP_PKEY_free(*key);
		} else if (err == -ENOKEY || err == -EKEYEXPIRED) {
			node_key_drop(t, err == -ENOKEY ? "dropped" : "expired");
		}
		log_warnx("tenant %s: no leaf for %s (%s)", t->name, host, strerror(-err));
	}
	mode = t->ca_unreachable && t->fail_closed ? INSPECT_REFUSE : INSPECT_RELAY;
	pthread_mutex_unlock(&t->lock);
	return mode;
}

/*
 * A CRL from the CA for t (takes it). When it lists the held key's intermediate (revoked,
 * or rotated away) the key is zeroed and dropped at once and fetched again: after a
 * rotation the CA hands out the new key already.
 */
static void node_crl_apply(struct inspect_node *n, struct inspect_tenant *t, X509_CRL *crl)
{
	size_t slot = 0;

	pthread_mutex_lock(&t->lock);
	if (t->crls[0] && X509_NAME_cmp(X509_CRL_get_issuer(t->crls[0]), X509_CRL_get_issuer(crl)))
		slot = 1;
	X509_CRL_free(t->crls[slot]);
	t->crls[slot] = crl;
	if (t->mint && node_revoked(t, sk_X509_value(t->send, 0))) {
		log_event(LOG_LVL_WARN, "inspection.key_revoked", "tenant=%s key=%s", t->name,
		          t->key_id);
		node_key_drop(t, "revoked");
		t->retry_at = 0;
		node_key_fetch(n, t);
	}
	pthread_mutex_unlock(&t->lock);
}

static void node_sub_open(struct inspect_node *n, struct inspect_tenant *t, uint64_t now)
{
	X509_CRL *crl = NULL;
	char why[256];
	int err;

	err = inspkey_subscribe(n->state, n->identity_source, t->name, n->ca_timeout, &t->sub, &crl,
	                        why, sizeof(why));
	if (err) {
		t->sub_retry = now + n->ca_retry;
		/* once per outage: the CA being down is reported by the fetches too */
		log_event(t->sub_failing ? LOG_LVL_DEBUG : LOG_LVL_WARN,
		          "inspection.crl_subscribe_failed", "tenant=%s err=%d reason=\"%s\"",
		          t->name, err, why);
		t->sub_failing = true;
		return;
	}
	t->sub_failing = false;
	log_event(LOG_LVL_INFO, "inspection.crl_subscribed", "tenant=%s", t->name);
	node_crl_apply(n, t, crl);
}

/*
 * The keeper's wait of up to ms: subscriptions to the CRLs of the tenants whose keys are
 * held (opened, closed when the key goes), and the pushes that arrive on them.
 */
static void node_watch(struct inspect_node *n, int ms)
{
	struct pollfd pfd[NODE_TENANTS_MAX];
	size_t idx[NODE_TENANTS_MAX], np = 0;
	uint64_t now = node_now();

	for (size_t i = 0; i < n->ntenants && !n->stop; i++) {
		struct inspect_tenant *t = &n->tenants[i];
		bool held;

		pthread_mutex_lock(&t->lock);
		held = t->mint != NULL;
		pthread_mutex_unlock(&t->lock);
		if (!held && t->sub) {
			inspkey_sub_close(t->sub);
			t->sub = NULL;
			log_event(LOG_LVL_DEBUG, "inspection.crl_unsubscribed", "tenant=%s",
			          t->name);
		}
		if (held && !t->sub && now >= t->sub_retry)
			node_sub_open(n, t, now);
		if (!t->sub)
			continue;
		if (inspkey_sub_pending(t->sub))
			ms = 0;
		pfd[np] = (struct pollfd){.fd = inspkey_sub_fd(t->sub), .events = POLLIN};
		idx[np++] = i;
	}
	if (np == 0) {
		usleep((useconds_t)ms * 1000);
		return;
	}
	if (poll(pfd, np, ms) < 0)
		return;
	for (size_t j = 0; j < np; j++) {
		struct inspect_tenant *t = &n->tenants[idx[j]];
		X509_CRL *crl = NULL;
		int err;

		if (!pfd[j].revents && !inspkey_sub_pending(t->sub))
			continue;
		err = inspkey_sub_read(t->sub, &crl);
		if (!err) {
			node_crl_apply(n, t, crl);
			continue;
		}
		if (err == -EBADMSG) {
			log_event(LOG_LVL_WARN, "inspection.crl_bad", "tenant=%s", t->name);
			continue;
		}
		/* the CA went away or restarted: subscribe again after ca_retry */
		inspkey_sub_close(t->sub);
		t->sub = NULL;
		t->sub_retry = node_now() + n->ca_retry;
		log_event(LOG_LVL_INFO, "inspection.crl_unsubscribed", "tenant=%s reason=closed",
		          t->name);
	}
}

/* Drops idle keys, refreshes held ones (a rotation at the CA reaches us) and fills pools. */
static void *node_keeper(void *arg)
{
	struct inspect_node *n = arg;

	while (!n->stop) {
		for (size_t i = 0; i < n->ntenants && !n->stop; i++) {
			struct inspect_tenant *t = &n->tenants[i];
			uint64_t now = node_now();
			struct inspkey k;
			char why[256];
			bool refresh;
			int err;

			pthread_mutex_lock(&t->lock);
			if (t->mint && now - t->last_use >= n->key_idle)
				node_key_drop(t, "idle");
			refresh = t->mint && !t->fetching && now - t->fetched >= n->key_refresh;
			if (t->mint && !refresh)
				mint_pool_fill(t->mint);
			t->fetching |= refresh;
			pthread_mutex_unlock(&t->lock);
			if (!refresh)
				continue;
			/* outside the lock: the CA may be slow, connections go on with the held key
			 */
			err = inspkey_fetch(n->state, n->identity_source, n->wrap, t->name,
			                    n->ca_timeout, &k, why, sizeof(why));
			pthread_mutex_lock(&t->lock);
			t->fetching = false;
			pthread_cond_broadcast(&t->fetch_done);
			if (!err && t->mint && strcmp(k.key_id, t->key_id) == 0) {
				t->fetched = now; /* the same key: keep the minter and its cache */
			} else if (!err && t->mint) {
				node_key_install(n, t, &k);
			} else if (err == -EACCES) {
				node_key_drop(t, "refused by the CA");
				log_event(LOG_LVL_WARN, "inspection.key_refresh_refused",
				          "tenant=%s reason=\"%s\"", t->name, why);
			} else if (err) {
				t->fetched =
				    now - n->key_refresh + n->ca_retry; /* keep it, try later */
				log_event(LOG_LVL_WARN, "inspection.key_refresh_failed",
				          "tenant=%s err=%d reason=\"%s\" holding=%s", t->name, err,
				          why, t->key_id);
			}
			pthread_mutex_unlock(&t->lock);
			inspkey_clear(&k);
		}
		node_watch(n, 200);
	}
	return NULL;
}

static int node_conf_strv(struct conf *c, const char *path, const char ***out, size_t *n,
                          size_t max)
{
	int ret = conf_get_strv(c, path, CONF_OPTIONAL, out, n);

	if (!ret && *n > max) {
		log_warnx("%s: at most %zu entries", path, max);
		ret = -ERANGE;
	}
	return ret;
}

static int node_conf_tenant(struct inspect_node *n, size_t i)
{
	struct inspect_tenant *t = &n->tenants[i];
	const char **src = NULL, *name = NULL, *fail = "open", *uperr = "refuse", *why;
	size_t nsrc = 0;
	char p[128];
	int ret;

#define TP(key) (snprintf(p, sizeof(p), "tenants.[%zu].%s", i, key), p)
	ret = conf_get_str(n->conf, TP("name"), CONF_REQUIRED, &name);
	if (ret)
		return ret;
	if (!ident_valid_tenant(name)) {
		log_warnx("tenant '%s': not a tenant name", name);
		return -EINVAL;
	}
	snprintf(t->name, sizeof(t->name), "%s", name);
	if ((ret = node_conf_strv(n->conf, TP("sources"), &src, &nsrc, NODE_RULES_MAX)) ||
	    (ret =
	         node_conf_strv(n->conf, TP("listen"), &t->listen, &t->nlisten, NODE_LISTEN_MAX)) ||
	    (ret =
	         node_conf_strv(n->conf, TP("bypass"), &t->bypass, &t->nbypass, NODE_RULES_MAX)) ||
	    (ret = node_conf_strv(n->conf, TP("block"), &t->block, &t->nblock, NODE_RULES_MAX)) ||
	    (ret = conf_get_str(n->conf, TP("fail"), CONF_OPTIONAL, &fail)) ||
	    (ret = conf_get_str(n->conf, TP("upstream_error"), CONF_OPTIONAL, &uperr)))
		goto out;
#undef TP
	ret = -EINVAL;
	if (strcmp(fail, "open") && strcmp(fail, "closed")) {
		log_warnx("tenant %s: fail is \"open\" or \"closed\"", t->name);
		goto out;
	}
	if (strcmp(uperr, "refuse") && strcmp(uperr, "page")) {
		log_warnx("tenant %s: upstream_error is \"refuse\" or \"page\"", t->name);
		goto out;
	}
	t->fail_closed = strcmp(fail, "closed") == 0;
	t->error_page = strcmp(uperr, "page") == 0;
	for (size_t j = 0; j < t->nlisten; j++) {
		bool known = false;

		for (size_t k = 0; k < n->nlisten; k++)
			known |= strcmp(t->listen[j], n->listen[k]) == 0;
		if (!known) {
			log_warnx("tenant %s: listen %s is not in inspect.listen", t->name,
			          t->listen[j]);
			goto out;
		}
	}
	t->sources = calloc(nsrc ? nsrc : 1, sizeof(*t->sources));
	if (!t->sources) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t j = 0; j < nsrc; j++) {
		if (conf_parse_cidr(src[j], &t->sources[j], &why)) {
			log_warnx("tenant %s: source %s: %s", t->name, src[j], why);
			goto out;
		}
	}
	t->nsources = nsrc;
	for (size_t j = 0; j < t->nblock; j++) {
		if (t->block[j][0] == '/' || t->block[j][0] == '\0') {
			log_warnx("tenant %s: block rule '%s' has no host", t->name, t->block[j]);
			goto out;
		}
	}
	if (pthread_mutex_init(&t->lock, NULL)) {
		ret = -ENOMEM;
		goto out;
	}
	if (pthread_cond_init(&t->fetch_done, NULL)) {
		pthread_mutex_destroy(&t->lock);
		ret = -ENOMEM;
		goto out;
	}
	ret = 0;
out:
	free(src);
	return ret;
}

struct node_opts {
	uint64_t heap, buf_size, nbufs;
	struct proxy_opts po;
	uint16_t ports[64];
};

static int node_conf(struct inspect_node *n, const char *path, struct node_opts *o)
{
	int64_t v;
	size_t nt = 0, np = 0;
	int ret;

	n->conf = conf_new();
	if (!n->conf)
		return -ENOMEM;
	ret = conf_load_file(n->conf, path);
	if (ret)
		return ret;
	n->key_idle = 10 * 60 * 1000;
	n->key_refresh = 5 * 60 * 1000;
	n->ca_retry = 10 * 1000;
	n->cache_max = 1024;
	n->pool_max = 64;
	o->heap = 4U << 20;
	o->buf_size = 32 * 1024;
	o->nbufs = 256;
	o->po.max_clients = 100;
	o->po.io_timeout_ms = 60 * 1000;
	{
		uint64_t ca_to = 2000, io = (uint64_t)o->po.io_timeout_ms;

		if ((ret = conf_get_str(n->conf, "inspect.state", CONF_REQUIRED, &n->state)) ||
		    (ret = conf_get_str(n->conf, "inspect.identity_source", CONF_OPTIONAL,
		                        &n->identity_source)) ||
		    (ret = node_conf_strv(n->conf, "inspect.listen", &n->listen, &n->nlisten,
		                          NODE_LISTEN_MAX)) ||
		    (ret = conf_get_str(n->conf, "inspect.upstream_ca", CONF_OPTIONAL,
		                        &o->po.upstream_ca)) ||
		    (ret = conf_get_duration(n->conf, "inspect.key_idle", CONF_OPTIONAL, 100,
		                             30ULL * 86400 * 1000, &n->key_idle)) ||
		    (ret = conf_get_duration(n->conf, "inspect.key_refresh", CONF_OPTIONAL, 100,
		                             30ULL * 86400 * 1000, &n->key_refresh)) ||
		    (ret = conf_get_duration(n->conf, "inspect.ca_retry", CONF_OPTIONAL, 100,
		                             86400 * 1000, &n->ca_retry)) ||
		    (ret = conf_get_duration(n->conf, "inspect.ca_timeout", CONF_OPTIONAL, 100,
		                             60000, &ca_to)) ||
		    (ret = conf_get_duration(n->conf, "inspect.io_timeout", CONF_OPTIONAL, 1000,
		                             3600 * 1000, &io)) ||
		    (ret = conf_get_size(n->conf, "inspect.secure_heap", CONF_OPTIONAL, 1U << 16,
		                         1U << 30, &o->heap)) ||
		    (ret = conf_get_size(n->conf, "inspect.buffer_size", CONF_OPTIONAL, 16 * 1024,
		                         1U << 20, &o->buf_size)))
			return ret;
		n->ca_timeout = (int)ca_to;
		o->po.io_timeout_ms = (int)io;
	}
	v = (int64_t)o->nbufs;
	if ((ret = conf_get_int(n->conf, "inspect.buffers", CONF_OPTIONAL, 8, 1 << 20, &v)))
		return ret;
	o->nbufs = (uint64_t)v;
	v = o->po.max_clients;
	if ((ret = conf_get_int(n->conf, "inspect.max_clients", CONF_OPTIONAL, 1, 1 << 20, &v)))
		return ret;
	o->po.max_clients = (unsigned)v;
	v = (int64_t)n->cache_max;
	if ((ret = conf_get_int(n->conf, "inspect.leaf_cache", CONF_OPTIONAL, 1, 1 << 20, &v)))
		return ret;
	n->cache_max = (size_t)v;
	v = (int64_t)n->pool_max;
	if ((ret = conf_get_int(n->conf, "inspect.leaf_pool", CONF_OPTIONAL, 0, 1 << 16, &v)))
		return ret;
	n->pool_max = (size_t)v;
	if ((o->heap & (o->heap - 1)) != 0) {
		log_warnx("inspect.secure_heap must be a power of two");
		return -EINVAL;
	}
	if (n->nlisten == 0) {
		log_warnx("inspect.listen: at least one HOST:PORT");
		return -EINVAL;
	}
	if ((ret = conf_get_len(n->conf, "inspect.ports", CONF_OPTIONAL, &np)))
		return ret;
	if (np > sizeof(o->ports) / sizeof(o->ports[0])) {
		log_warnx("inspect.ports: at most 64");
		return -ERANGE;
	}
	for (size_t i = 0; i < np; i++) {
		char p[64];

		snprintf(p, sizeof(p), "inspect.ports.[%zu]", i);
		if ((ret = conf_get_int(n->conf, p, CONF_REQUIRED, 1, 65535, &v)))
			return ret;
		o->ports[i] = (uint16_t)v;
	}
	if (np == 0) {
		o->ports[0] = 443;
		np = 1;
	}
	o->po.ports = o->ports;
	o->po.nports = np;
	o->po.listen = n->listen;
	o->po.nlisten = n->nlisten;
	if ((ret = conf_get_len(n->conf, "tenants", CONF_REQUIRED, &nt)))
		return ret;
	if (nt == 0 || nt > NODE_TENANTS_MAX) {
		log_warnx("tenants: 1 to %d", NODE_TENANTS_MAX);
		return -ERANGE;
	}
	n->tenants = calloc(nt, sizeof(*n->tenants));
	if (!n->tenants)
		return -ENOMEM;
	for (size_t i = 0; i < nt; i++) {
		ret = node_conf_tenant(n, i);
		if (ret)
			return ret;
		n->ntenants++;
	}
	return conf_check_unknown(n->conf);
}

static void node_free_all(struct inspect_node *n)
{
	for (size_t i = 0; i < n->ntenants; i++) {
		struct inspect_tenant *t = &n->tenants[i];

		node_key_drop(t, "stopped");
		inspkey_sub_close(t->sub);
		X509_CRL_free(t->crls[0]);
		X509_CRL_free(t->crls[1]);
		pthread_cond_destroy(&t->fetch_done);
		pthread_mutex_destroy(&t->lock);
		free(t->sources);
		free(t->listen);
		free(t->bypass);
		free(t->block);
	}
	free(n->tenants);
	free(n->listen);
	EVP_PKEY_free(n->wrap);
	conf_free(n->conf);
}

void inspect_test_leaf_key(const char *host, EVP_PKEY *key)
{
	BIGNUM *d = NULL;
	uint8_t raw[32];
	char line[PROXY_HOST_MAX + 2 + 65];
	int n;

	if (node_test_keys_fd < 0)
		return;
	if (EVP_PKEY_get_bn_param(key, "priv", &d) == 1 && BN_bn2binpad(d, raw, 32) == 32) {
		n = snprintf(line, sizeof(line), "%s ", host);
		for (int i = 0; i < 32 && n > 0; i++)
			n += snprintf(line + n, sizeof(line) - (size_t)n, "%02x", raw[i]);
		if (n > 0 && (size_t)n < sizeof(line) - 1) {
			line[n++] = '\n';
			if (write(node_test_keys_fd, line, (size_t)n) != n)
				log_warn("test leaf key log");
		}
		OPENSSL_cleanse(raw, sizeof(raw));
		OPENSSL_cleanse(line, sizeof(line));
	}
	BN_clear_free(d);
}

static void node_on_signal(int sig)
{
	(void)sig;
	node_stop = 1;
}

static void node_usage(void)
{
	fprintf(stderr, "usage: mtun-broker inspect --config FILE [--wrap-key-fd N] "
	                "[--test-allow-dump] [--verbose]\n");
}

int inspect_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"wrap-key-fd", required_argument, NULL, 'w'},
	    {"test-allow-dump", no_argument, NULL, 'D'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct inspect_node n = {0};
	struct node_opts o = {0};
	struct proxy *p = NULL;
	struct sigaction sa = {.sa_handler = node_on_signal};
	const char *config = NULL, *test = getenv(NODE_TEST_ENV);
	bool allow_dump = false;
	int opt, wfd = -1, ret;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:w:vh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 'w': {
			char *end;
			long v = strtol(optarg, &end, 10);

			if (*end || v < 0 || v > 65535) {
				node_usage();
				return 2;
			}
			wfd = (int)v;
			break;
		}
		case 'D':
			allow_dump = true;
			break;
		case 'v':
			log_set_level(LOG_LVL_DEBUG);
			break;
		default:
			node_usage();
			return opt == 'h' ? 0 : 2;
		}
	}
	if (!config || optind != argc) {
		node_usage();
		return 2;
	}
	if (allow_dump && (!test || strcmp(test, "1") != 0)) {
		log_warnx("--test-allow-dump is for tests only (it needs %s=1)", NODE_TEST_ENV);
		return 2;
	}
	if (!node_zeroing)
		log_warnx("OpenSSL allocated before start: its freed memory is not zeroed");
	/* the dispatcher's small secure heap, unused yet, makes way for the configured one */
	if (CRYPTO_secure_malloc_initialized() && CRYPTO_secure_used() == 0)
		CRYPTO_secure_malloc_done();
	ret = node_conf(&n, config, &o);
	if (ret)
		goto out;
	ret = secmem_init(o.heap, o.buf_size, o.nbufs);
	if (ret) {
		log_warnx("guarded memory: %s", strerror(-ret));
		goto out;
	}
	ret = secmem_harden_process();
	if (ret) {
		log_warnx("cannot harden the process: %s", strerror(-ret));
		goto out;
	}
	if (allow_dump) {
		/* tests only: gcore needs a dumpable process; the region stays MADV_DONTDUMP */
		prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
		log_event(LOG_LVL_WARN, "inspection.test_allow_dump", "dumpable=1");
		if (getenv("MTUN_TEST_LEAF_KEYS_FD"))
			node_test_keys_fd = atoi(getenv("MTUN_TEST_LEAF_KEYS_FD"));
	}
	ret = envelope_priv_read(wfd, &n.wrap);
	if (ret) {
		log_warnx("no wrapping key (--wrap-key-fd or $%s): %s", ENVELOPE_KEY_ENV,
		          strerror(-ret));
		goto out;
	}
	ret = proxy_new(&n, &o.po, &p);
	if (ret)
		goto out;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (pthread_create(&n.keeper, NULL, node_keeper, &n) == 0)
		n.keeper_on = true;
	log_event(LOG_LVL_INFO, "inspection.ready", "tenants=%zu listeners=%zu secmem=%s",
	          n.ntenants, n.nlisten, secmem_backing_name(secmem_backing()));
	ret = proxy_run(p, &node_stop);
	n.stop = 1;
	if (n.keeper_on)
		pthread_join(n.keeper, NULL);
	if (ret == -EBUSY) {
		/* connections still use the tenants: exit without freeing under them */
		log_event(LOG_LVL_INFO, "inspection.stopped", "busy=1");
		return 0;
	}
out:
	proxy_free(p);
	node_free_all(&n);
	return ret ? 1 : 0;
}
