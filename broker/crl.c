/*
 * The tenant's CRL on the broker: a thread holds the CA subscription (blocking) and hands
 * each CRL to the ring thread, which refuses revoked certificates at the TLS handshake and
 * closes live sessions whose certificate was revoked, and to the embedded admin API.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/x509.h>

#include "admin/admin.h"
#include "broker.h"
#include "enroll.h"
#include "log.h"

#define CRL_HS_SLOTS    256
#define CRL_RETRY_MIN_S 1
#define CRL_RETRY_MAX_S 30
#define CRL_REVOKED_MAX (1U << 20)

/* The serial the last handshake of an identity showed, until its session is established. */
struct crl_hs {
	struct crl_hs *next;
	enum mt_role role;
	char id[IDENT_ID_MAX + 1];
	struct bd_serial serial;
};

struct crl_set {
	struct bd_serial *v; /* sorted */
	size_t n;
	long long number; /* CRL number, -1 when absent */
};

/* One CRL on its way from the subscription thread to the ring thread. */
struct crl_msg {
	struct bd_crl *crl;
	struct crl_set set;
};

struct bd_crl {
	pthread_t th;
	pthread_mutex_t lock;
	struct ring *ring; /* NULL once stopping: the thread posts nothing more */
	bool done;         /* the thread has ended */
	struct bd *bd;
	char *state, *idsrc;
	struct admin_server *admin; /* under lock: the embedded admin API, or NULL */
	X509_CRL *last;             /* under lock: the latest CRL, for an admin API starting */
	/* ring thread only */
	struct crl_set cur;
	bool have;
	struct crl_hs *hs[CRL_HS_SLOTS];
};

void bd_serial_from_asn1(const ASN1_INTEGER *a, struct bd_serial *out)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(a, NULL);
	int n = bn ? BN_num_bytes(bn) : -1;

	memset(out, 0, sizeof(*out));
	/* Over 20 octets (RFC 5280 forbids it): keep the low ones; never equal to a listed one. */
	if (n > BD_SERIAL_MAX) {
		uint8_t big[64];

		if (n <= (int)sizeof(big) && BN_bn2bin(bn, big) == n) {
			memcpy(out->b, big + n - BD_SERIAL_MAX, BD_SERIAL_MAX);
			out->len = BD_SERIAL_MAX;
		}
	} else if (n > 0) {
		out->len = (uint8_t)BN_bn2bin(bn, out->b);
	}
	BN_free(bn);
}

static int serial_cmp(const void *a, const void *b)
{
	const struct bd_serial *x = a, *y = b;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->b, y->b, x->len);
}

bool bd_serial_listed(const struct bd_serial *v, size_t n, const struct bd_serial *s)
{
	return s->len && n && bsearch(s, v, n, sizeof(*s), serial_cmp) != NULL;
}

static bool crl_listed(const struct bd_crl *crl, const struct bd_serial *s)
{
	return crl->have && bd_serial_listed(crl->cur.v, crl->cur.n, s);
}

int bd_crl_serials(const X509_CRL *x, struct bd_serial **out, size_t *nout)
{
	STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED((X509_CRL *)x);
	int n = rev ? sk_X509_REVOKED_num(rev) : 0;
	struct bd_serial *v = NULL;

	if (n < 0 || (unsigned)n > CRL_REVOKED_MAX)
		return -E2BIG;
	if (n && !(v = calloc((size_t)n, sizeof(*v))))
		return -ENOMEM;
	for (int i = 0; i < n; i++)
		bd_serial_from_asn1(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(rev, i)),
		                    &v[i]);
	if (n)
		qsort(v, (size_t)n, sizeof(*v), serial_cmp);
	*out = v;
	*nout = (size_t)n;
	return 0;
}

static size_t crl_hs_slot(enum mt_role role, const char *id)
{
	uint32_t h = 2166136261U ^ (uint32_t)role;

	for (; *id; id++)
		h = (h ^ (uint8_t)*id) * 16777619U;
	return h % CRL_HS_SLOTS;
}

bool bd_crl_is_revoked(const struct bd *bd, const struct bd_serial *s)
{
	return bd->crl && crl_listed(bd->crl, s);
}

int bd_crl_revoked(void *arg, const struct ident *peer, const ASN1_INTEGER *serial)
{
	struct bd *bd = arg;
	struct bd_crl *crl = bd->crl;
	struct bd_serial s;
	struct crl_hs **pp, *h;

	if (!crl)
		return 0;
	bd_serial_from_asn1(serial, &s);
	if (crl_listed(crl, &s)) {
		log_event(LOG_LVL_WARN, "broker.refused",
		          "peer=%s role=%s reason=\"certificate revoked\"", peer->id,
		          ident_role_name(peer->role));
		return 1;
	}
	pp = &crl->hs[crl_hs_slot(peer->role, peer->id)];
	for (h = *pp; h; h = h->next)
		if (h->role == peer->role && strcmp(h->id, peer->id) == 0)
			break;
	if (!h) {
		h = calloc(1, sizeof(*h));
		if (!h)
			return 0;
		h->role = peer->role;
		snprintf(h->id, sizeof(h->id), "%s", peer->id);
		h->next = *pp;
		*pp = h;
	}
	h->serial = s;
	return 0;
}

bool bd_crl_take_serial(struct bd *bd, const struct ident *peer, struct bd_serial *out)
{
	struct bd_crl *crl = bd->crl;
	struct crl_hs **pp, *h;

	if (!crl)
		return false;
	for (pp = &crl->hs[crl_hs_slot(peer->role, peer->id)]; (h = *pp); pp = &h->next)
		if (h->role == peer->role && strcmp(h->id, peer->id) == 0) {
			*out = h->serial;
			*pp = h->next;
			free(h);
			return true;
		}
	return false;
}

/* Ring thread: the new list replaces the old; sessions it names are closed. */
static void crl_apply(struct ring *ring, void *arg)
{
	struct crl_msg *msg = arg;
	struct bd_crl *crl = msg->crl;
	struct bd *bd = crl->bd;
	struct bpeer *p;
	size_t closed = 0;
	bool stopped;

	pthread_mutex_lock(&crl->lock);
	stopped = !crl->ring;
	pthread_mutex_unlock(&crl->lock);
	if (stopped) {
		free(msg->set.v);
		free(msg);
		return;
	}
	free(crl->cur.v);
	crl->cur = msg->set;
	crl->have = true;
	free(msg);
	log_event(LOG_LVL_INFO, "broker.crl", "number=%lld revoked=%zu", crl->cur.number,
	          crl->cur.n);
again:
	for (p = bd->peers; p; p = p->next) {
		if (!p->has_serial || !crl_listed(crl, &p->serial))
			continue;
		log_event(LOG_LVL_WARN, "broker.session.revoked", "peer=%s role=%s user=%s",
		          p->id.id, ident_role_name(p->id.role), p->id.user[0] ? p->id.user : "-");
		bpeer_drop(p, MT_STATUS_REVOKED, "certificate revoked");
		closed++;
		/* Dropping a connector's control session drops its data session too. */
		goto again;
	}
	if (closed)
		log_info("CRL: closed %zu revoked session(s)", closed);
}

/* Subscription thread: one CRL in, one message to the ring out. */
static int crl_on_crl(X509_CRL *x, void *arg)
{
	struct bd_crl *crl = arg;
	ASN1_INTEGER *num = X509_CRL_get_ext_d2i(x, NID_crl_number, NULL, NULL);
	struct crl_msg *msg = calloc(1, sizeof(*msg));
	int ret = 0;

	if (!msg || (ret = bd_crl_serials(x, &msg->set.v, &msg->set.n)) < 0) {
		log_warnx("CRL: %s, not applied", strerror(msg ? -ret : ENOMEM));
		ASN1_INTEGER_free(num);
		free(msg);
		return 0;
	}
	msg->crl = crl;
	msg->set.number = num ? ASN1_INTEGER_get(num) : -1;
	ASN1_INTEGER_free(num);
	pthread_mutex_lock(&crl->lock);
	if (!crl->ring)
		ret = 1;
	else if (ring_post(crl->ring, crl_apply, msg) == 0)
		msg = NULL;
	/* The embedded admin API refuses revoked admin certificates too (kept for its start). */
	if (ret == 0) {
		X509_CRL *dup = X509_CRL_dup(x);

		if (dup) {
			X509_CRL_free(crl->last);
			crl->last = dup;
		}
		if (crl->admin && admin_server_set_crl(crl->admin, x) < 0)
			log_warnx("CRL: not given to the admin API (out of memory)");
	}
	pthread_mutex_unlock(&crl->lock);
	if (msg) {
		free(msg->set.v);
		free(msg);
	}
	return ret;
}

/* SIGUSR1 only interrupts the subscription's blocking calls (EINTR): no SA_RESTART. */
static void crl_wake(int sig)
{
	(void)sig;
}

static bool crl_stopping(struct bd_crl *crl)
{
	bool stop;

	pthread_mutex_lock(&crl->lock);
	stop = !crl->ring;
	pthread_mutex_unlock(&crl->lock);
	return stop;
}

static void *crl_thread(void *arg)
{
	struct bd_crl *crl = arg;
	unsigned wait = CRL_RETRY_MIN_S;
	sigset_t usr1;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
	while (!crl_stopping(crl)) {
		int ret = enroll_crl_subscribe(crl->state, crl->idsrc, crl_on_crl, crl);

		if (crl_stopping(crl))
			break;
		log_warnx("CRL subscription ended (%s): again in %u s",
		          ret < 0 ? strerror(-ret) : "closed", wait);
		sleep(wait);
		wait = wait * 2 > CRL_RETRY_MAX_S ? CRL_RETRY_MAX_S : wait * 2;
	}
	pthread_mutex_lock(&crl->lock);
	crl->done = true;
	pthread_mutex_unlock(&crl->lock);
	return NULL;
}

static void crl_free(struct bd_crl *crl)
{
	for (size_t i = 0; i < CRL_HS_SLOTS; i++)
		while (crl->hs[i]) {
			struct crl_hs *h = crl->hs[i];

			crl->hs[i] = h->next;
			free(h);
		}
	free(crl->cur.v);
	free(crl->state);
	free(crl->idsrc);
	X509_CRL_free(crl->last);
	pthread_mutex_destroy(&crl->lock);
	free(crl);
}

void bd_crl_set_admin(struct bd *bd, struct admin_server *srv)
{
	struct bd_crl *crl = bd->crl;

	if (!crl)
		return;
	pthread_mutex_lock(&crl->lock);
	crl->admin = srv;
	if (srv && crl->last && admin_server_set_crl(srv, crl->last) < 0)
		log_warnx("CRL: not given to the admin API (out of memory)");
	pthread_mutex_unlock(&crl->lock);
}

int bd_crl_start(struct bd *bd)
{
	struct sigaction sa = {.sa_handler = crl_wake};
	struct bd_crl *crl = calloc(1, sizeof(*crl));
	sigset_t all, old;
	int ret = -ENOMEM;

	if (!crl)
		return -ENOMEM;
	crl->bd = bd;
	crl->ring = bd->ring;
	crl->state = strdup(bd->cfg->state);
	crl->idsrc = bd->cfg->idsrc ? strdup(bd->cfg->idsrc) : NULL;
	if (!crl->state || (bd->cfg->idsrc && !crl->idsrc))
		goto fail;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) < 0) {
		ret = -errno;
		goto fail;
	}
	pthread_mutex_init(&crl->lock, NULL);
	/* Signals belong to the ring's signalfd: the thread starts with all of them blocked. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&crl->th, NULL, crl_thread, crl);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret < 0) {
		pthread_mutex_destroy(&crl->lock);
		goto fail;
	}
	bd->crl = crl;
	return 0;
fail:
	free(crl->state);
	free(crl->idsrc);
	free(crl);
	return ret;
}

/*
 * The subscription blocks in reads without a timeout: SIGUSR1 interrupts them (again
 * until the thread notices, a signal may fall between two calls). A thread that does
 * not end within 2 s is left to end with the process, with its few bytes.
 */
void bd_crl_stop(struct bd *bd)
{
	struct bd_crl *crl = bd->crl;
	bool done = false;

	if (!crl)
		return;
	bd->crl = NULL;
	pthread_mutex_lock(&crl->lock);
	crl->ring = NULL;
	pthread_mutex_unlock(&crl->lock);
	for (int i = 0; i < 200 && !done; i++) {
		pthread_kill(crl->th, SIGUSR1);
		usleep(10000);
		pthread_mutex_lock(&crl->lock);
		done = crl->done;
		pthread_mutex_unlock(&crl->lock);
	}
	if (!done) {
		log_warnx("CRL subscription thread did not stop; left to the exit");
		pthread_detach(crl->th);
		return;
	}
	pthread_join(crl->th, NULL);
	crl_free(crl);
}
