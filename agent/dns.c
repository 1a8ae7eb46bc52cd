/*
 * The agent's DNS stub: private names are resolved at the broker and answered from the
 * synthetic pool, every other query is relayed to the original resolver byte for byte.
 * Sans I/O; parsing and building through ldns. Decisions and rcodes: docs/dns.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <ldns/ldns.h>

#include "agent.h"
#include "log.h"

#define DNS_NONE        UINT32_MAX
#define DNS_PENDING_MAX 32768 /* half the id space, so a free upstream id is found at once */

enum dns_pend_kind {
	PEND_FREE = 0,
	PEND_RESOLVE,
	PEND_FORWARD,
};

/* The question and header bits a reply of ours echoes. */
struct dns_q {
	uint16_t id;
	uint8_t opcode;
	bool rd, cd, has_q;
	uint16_t qtype, qclass;
	uint8_t qname_len;
	uint8_t qname[LDNS_MAX_DOMAINLEN + 1]; /* wire form, as the client spelled it */
};

struct dns_pending {
	uint8_t kind;
	bool tcp;
	uint16_t up_id;
	uint32_t gen;
	uint32_t hnext;        /* client hash chain, or the free list */
	uint32_t older, newer; /* the age list */
	uint64_t deadline;
	struct dns_q q;
	struct sockaddr_storage client;
	socklen_t client_len;
	struct sockaddr_storage up; /* FORWARD: the resolver it was sent to */
	char name[SEG_NAME_MAX + 1];
};

struct dns_probe {
	uint8_t proto;
	uint16_t port;
};

struct dns_stub {
	const struct segset *segs;
	struct dns_probe *probes;
	size_t nprobes;
	struct pool *pool;
	char search[DNS_SEARCH_MAX][SEG_NAME_MAX + 1];
	size_t nsearch;
	struct sockaddr_storage upstream;
	socklen_t upstream_len;
	uint32_t timeout_ms, answer_ttl;

	struct dns_pending *pend;
	uint32_t max_pending, npending, free_head, oldest, newest, gen;
	uint32_t *buckets, bmask; /* client hash: entry index, DNS_NONE empty */
	uint32_t *up_map;         /* upstream id -> entry index */
	uint8_t rnd[256];
	size_t rnd_left;
};

static bool dns_peer_valid(const struct sockaddr *sa, socklen_t len)
{
	if (!sa)
		return false;
	if (sa->sa_family == AF_INET)
		return len == sizeof(struct sockaddr_in);
	if (sa->sa_family == AF_INET6)
		return len == sizeof(struct sockaddr_in6);
	return false;
}

void dns_stub_config_default(struct dns_stub_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->max_pending = DNS_DEFAULT_MAX_PENDING;
	cfg->timeout_ms = DNS_DEFAULT_TIMEOUT_MS;
	cfg->answer_ttl = DNS_DEFAULT_ANSWER_TTL;
}

int dns_stub_set_segments(struct dns_stub *stub, const struct segset *segs)
{
	struct dns_probe *probes = NULL;
	size_t n = 0, cap = 0;

	/*
	 * "Any segment for the name, on any port": segment_match wants a port, and a segment
	 * with range lo..hi always matches at lo, so probing every distinct (proto, lo)
	 * finds a name exactly when some segment covers it.
	 */
	for (size_t i = 0; segs && i < segset_count(segs); i++) {
		const struct segment *seg = segset_nth(segs, i);

		for (size_t j = 0; j < seg->nports; j++) {
			bool dup = false;

			for (size_t k = 0; k < n && !dup; k++)
				dup = probes[k].proto == seg->ports[j].proto &&
				      probes[k].port == seg->ports[j].lo;
			if (dup)
				continue;
			if (n == cap) {
				size_t ncap = cap ? 2 * cap : 16;
				struct dns_probe *p = realloc(probes, ncap * sizeof(*p));

				if (!p) {
					free(probes);
					return -ENOMEM;
				}
				probes = p;
				cap = ncap;
			}
			probes[n].proto = seg->ports[j].proto;
			probes[n++].port = seg->ports[j].lo;
		}
	}
	free(stub->probes);
	stub->probes = probes;
	stub->nprobes = n;
	stub->segs = segs;
	return 0;
}

int dns_stub_new(const struct dns_stub_config *cfg, struct dns_stub **out)
{
	struct dns_stub *stub;
	uint32_t nb;
	int rc = -EINVAL;

	*out = NULL;
	if (!cfg->pool || cfg->nsearch > DNS_SEARCH_MAX || cfg->max_pending == 0 ||
	    cfg->max_pending > DNS_PENDING_MAX ||
	    (cfg->upstream_len &&
	     !dns_peer_valid((const struct sockaddr *)&cfg->upstream, cfg->upstream_len))) {
		log_warnx("dns: invalid stub configuration");
		return -EINVAL;
	}
	stub = calloc(1, sizeof(*stub));
	if (!stub)
		return -ENOMEM;
	stub->pool = cfg->pool;
	for (size_t i = 0; i < cfg->nsearch; i++) {
		const char *why;

		if (segment_normalize_name(cfg->search[i], stub->search[i], &why) < 0) {
			log_warnx("dns: search domain \"%s\": %s", cfg->search[i], why);
			goto out;
		}
	}
	stub->nsearch = cfg->nsearch;
	stub->upstream = cfg->upstream;
	stub->upstream_len = cfg->upstream_len;
	stub->timeout_ms = cfg->timeout_ms;
	stub->answer_ttl = cfg->answer_ttl;
	stub->max_pending = cfg->max_pending;
	for (nb = 16; nb < cfg->max_pending; nb <<= 1)
		;
	stub->bmask = nb - 1;
	rc = -ENOMEM;
	stub->pend = calloc(cfg->max_pending, sizeof(*stub->pend));
	stub->buckets = malloc(nb * sizeof(*stub->buckets));
	stub->up_map = malloc(65536 * sizeof(*stub->up_map));
	if (!stub->pend || !stub->buckets || !stub->up_map)
		goto out;
	memset(stub->buckets, 0xff, nb * sizeof(*stub->buckets));
	memset(stub->up_map, 0xff, 65536 * sizeof(*stub->up_map));
	for (uint32_t i = 0; i < cfg->max_pending; i++)
		stub->pend[i].hnext = i + 1 < cfg->max_pending ? i + 1 : DNS_NONE;
	stub->free_head = 0;
	stub->oldest = stub->newest = DNS_NONE;
	rc = dns_stub_set_segments(stub, cfg->segs);
	if (rc < 0)
		goto out;
	*out = stub;
	return 0;
out:
	dns_stub_free(stub);
	return rc;
}

void dns_stub_free(struct dns_stub *stub)
{
	if (!stub)
		return;
	free(stub->probes);
	free(stub->pend);
	free(stub->buckets);
	free(stub->up_map);
	free(stub);
}

size_t dns_stub_pending(const struct dns_stub *stub)
{
	return stub->npending;
}

uint64_t dns_stub_next_deadline(const struct dns_stub *stub)
{
	return stub->oldest == DNS_NONE ? 0 : stub->pend[stub->oldest].deadline;
}

static int dns_random_id(struct dns_stub *stub, uint16_t *id)
{
	if (stub->rnd_left < 2) {
		if (getrandom(stub->rnd, sizeof(stub->rnd), 0) != (ssize_t)sizeof(stub->rnd)) {
			log_warn("dns: getrandom");
			return -EIO;
		}
		stub->rnd_left = sizeof(stub->rnd);
	}
	stub->rnd_left -= 2;
	memcpy(id, &stub->rnd[stub->rnd_left], 2);
	return 0;
}

/* The address and port only: the bytes sin_zero or padding hold do not count. */
static bool dns_same_peer(const struct sockaddr *a, const struct sockaddr_storage *b)
{
	const struct sockaddr_in *a4 = (const void *)a, *b4 = (const void *)b;
	const struct sockaddr_in6 *a6 = (const void *)a, *b6 = (const void *)b;

	if (a->sa_family != b->ss_family)
		return false;
	if (a->sa_family == AF_INET)
		return a4->sin_port == b4->sin_port && a4->sin_addr.s_addr == b4->sin_addr.s_addr;
	if (a->sa_family == AF_INET6)
		return a6->sin6_port == b6->sin6_port &&
		       memcmp(&a6->sin6_addr, &b6->sin6_addr, sizeof(a6->sin6_addr)) == 0 &&
		       a6->sin6_scope_id == b6->sin6_scope_id;
	return false;
}

static uint32_t dns_client_hash(const struct sockaddr *sa, uint16_t id)
{
	const struct sockaddr_in *s4 = (const void *)sa;
	const struct sockaddr_in6 *s6 = (const void *)sa;
	uint64_t h = 0xcbf29ce484222325ULL ^ id;
	const uint8_t *p = NULL;
	size_t n = 0;

	if (sa->sa_family == AF_INET) {
		h = (h ^ s4->sin_port) * 0x100000001b3ULL;
		p = (const uint8_t *)&s4->sin_addr;
		n = 4;
	} else if (sa->sa_family == AF_INET6) {
		h = (h ^ s6->sin6_port) * 0x100000001b3ULL;
		p = s6->sin6_addr.s6_addr;
		n = 16;
	}
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return (uint32_t)(h ^ (h >> 32));
}

static bool dns_qname_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
	/* Length bytes are below 64, so ASCII case folding leaves them alone. */
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		uint8_t x = a[i], y = b[i];

		if (x >= 'A' && x <= 'Z')
			x += 32;
		if (y >= 'A' && y <= 'Z')
			y += 32;
		if (x != y)
			return false;
	}
	return true;
}

static void dns_unlink(struct dns_stub *stub, uint32_t idx)
{
	struct dns_pending *p = &stub->pend[idx];
	uint32_t *link =
	    &stub->buckets[dns_client_hash((const void *)&p->client, p->q.id) & stub->bmask];

	while (*link != idx)
		link = &stub->pend[*link].hnext;
	*link = p->hnext;
	if (p->older != DNS_NONE)
		stub->pend[p->older].newer = p->newer;
	else
		stub->oldest = p->newer;
	if (p->newer != DNS_NONE)
		stub->pend[p->newer].older = p->older;
	else
		stub->newest = p->older;
	if (p->kind == PEND_FORWARD)
		stub->up_map[p->up_id] = DNS_NONE;
	p->kind = PEND_FREE;
	p->hnext = stub->free_head;
	stub->free_head = idx;
	stub->npending--;
}

/* Builds a reply of ours through ldns: the echoed question, then at most one address. */
static int dns_build(const struct dns_q *q, int rcode, bool aa, const struct in_addr *a4,
                     const struct in6_addr *a6, uint32_t ttl, uint8_t *out, size_t outsize,
                     struct dns_result *res)
{
	ldns_pkt *pkt = ldns_pkt_new();
	ldns_rdf *owner = NULL;
	ldns_rr *rr = NULL;
	ldns_buffer *buf = ldns_buffer_new(512); /* grows if needed; pkt2wire takes 64 KiB */
	size_t size;
	int rc = -ENOMEM;

	if (!pkt || !buf)
		goto out;
	ldns_pkt_set_id(pkt, q->id);
	ldns_pkt_set_qr(pkt, true);
	ldns_pkt_set_opcode(pkt, (ldns_pkt_opcode)q->opcode);
	ldns_pkt_set_aa(pkt, aa);
	ldns_pkt_set_rd(pkt, q->rd);
	ldns_pkt_set_cd(pkt, q->cd);
	ldns_pkt_set_ra(pkt, true);
	ldns_pkt_set_rcode(pkt, (uint8_t)rcode);
	if (q->has_q) {
		owner = ldns_dname_new_frm_data(q->qname_len, q->qname);
		rr = ldns_rr_new();
		if (!owner || !rr)
			goto out;
		ldns_rr_set_question(rr, true);
		ldns_rr_set_owner(rr, owner);
		owner = NULL;
		ldns_rr_set_type(rr, (ldns_rr_type)q->qtype);
		ldns_rr_set_class(rr, (ldns_rr_class)q->qclass);
		if (!ldns_pkt_push_rr(pkt, LDNS_SECTION_QUESTION, rr))
			goto out;
		rr = NULL;
	}
	if (a4 || a6) {
		ldns_rdf *rdata = a4 ? ldns_rdf_new_frm_data(LDNS_RDF_TYPE_A, 4, a4)
		                     : ldns_rdf_new_frm_data(LDNS_RDF_TYPE_AAAA, 16, a6);

		owner = ldns_dname_new_frm_data(q->qname_len, q->qname);
		rr = ldns_rr_new();
		if (!rdata || !owner || !rr || !ldns_rr_push_rdf(rr, rdata)) {
			ldns_rdf_deep_free(rdata);
			goto out;
		}
		ldns_rr_set_owner(rr, owner);
		owner = NULL;
		ldns_rr_set_type(rr, a4 ? LDNS_RR_TYPE_A : LDNS_RR_TYPE_AAAA);
		ldns_rr_set_class(rr, LDNS_RR_CLASS_IN);
		ldns_rr_set_ttl(rr, ttl);
		if (!ldns_pkt_push_rr(pkt, LDNS_SECTION_ANSWER, rr))
			goto out;
		rr = NULL;
	}
	if (ldns_pkt2buffer_wire(buf, pkt) != LDNS_STATUS_OK)
		goto out;
	size = ldns_buffer_position(buf);
	rc = -ENOSPC;
	if (size > outsize)
		goto out;
	memcpy(out, ldns_buffer_begin(buf), size);
	res->action = DNS_ANSWER;
	res->len = size;
	res->rcode = rcode;
	rc = 0;
out:
	ldns_buffer_free(buf);
	ldns_rr_free(rr);
	ldns_rdf_deep_free(owner);
	ldns_pkt_free(pkt);
	return rc;
}

static void dns_set_peer(struct dns_result *res, const void *sa, socklen_t len)
{
	memcpy(&res->peer, sa, len);
	res->peer_len = len;
}

static bool dns_is_private(const struct dns_stub *stub, const char *name)
{
	unsigned char addr[16];

	/* An address spelled as a name is not an app segment's FQDN. */
	if (!stub->segs || inet_pton(AF_INET, name, addr) == 1 ||
	    inet_pton(AF_INET6, name, addr) == 1)
		return false;
	for (size_t i = 0; i < stub->nprobes; i++)
		if (segment_match(stub->segs, name, stub->probes[i].proto, stub->probes[i].port))
			return true;
	return false;
}

enum dns_class {
	DNS_PUBLIC = 0,
	DNS_PRIVATE,
	DNS_SEARCH_ECHO, /* a private name with a search domain appended again */
};

static enum dns_class dns_classify(const struct dns_stub *stub, const char *canon,
                                   char priv[SEG_NAME_MAX + 1])
{
	size_t len = strlen(canon);

	if (dns_is_private(stub, canon)) {
		memcpy(priv, canon, len + 1);
		return DNS_PRIVATE;
	}
	for (size_t i = 0; i < stub->nsearch; i++) {
		const char *s = stub->search[i];
		size_t slen = strlen(s);

		if (!strchr(canon, '.')) {
			/* A bare label: the configured search list, in order, and nothing else. */
			if (len + 1 + slen > SEG_NAME_MAX)
				continue;
			memcpy(priv, canon, len);
			priv[len] = '.';
			memcpy(priv + len + 1, s, slen + 1);
			if (dns_is_private(stub, priv))
				return DNS_PRIVATE;
		} else if (len > slen + 1 && canon[len - slen - 1] == '.' &&
		           memcmp(canon + len - slen, s, slen) == 0) {
			memcpy(priv, canon, len - slen - 1);
			priv[len - slen - 1] = '\0';
			if (dns_is_private(stub, priv))
				return DNS_SEARCH_ECHO;
		}
	}
	return DNS_PUBLIC;
}

static uint32_t dns_find_dup(const struct dns_stub *stub, const struct sockaddr *client,
                             const struct dns_q *q)
{
	uint32_t i = stub->buckets[dns_client_hash(client, q->id) & stub->bmask];

	for (; i != DNS_NONE; i = stub->pend[i].hnext) {
		const struct dns_pending *p = &stub->pend[i];

		if (p->q.id == q->id && p->q.qtype == q->qtype && p->q.qclass == q->qclass &&
		    dns_same_peer(client, &p->client) &&
		    dns_qname_equal(p->q.qname, p->q.qname_len, q->qname, q->qname_len))
			return i;
	}
	return DNS_NONE;
}

static uint32_t dns_pend_new(struct dns_stub *stub, enum dns_pend_kind kind,
                             const struct sockaddr *client, socklen_t client_len, bool tcp,
                             const struct dns_q *q, uint64_t now)
{
	uint32_t idx = stub->free_head, b;
	struct dns_pending *p;

	if (idx == DNS_NONE)
		return DNS_NONE;
	p = &stub->pend[idx];
	stub->free_head = p->hnext;
	p->kind = (uint8_t)kind;
	p->tcp = tcp;
	p->gen = ++stub->gen;
	p->q = *q;
	memset(&p->client, 0, sizeof(p->client));
	memcpy(&p->client, client, client_len);
	p->client_len = client_len;
	p->deadline = now + stub->timeout_ms;
	b = dns_client_hash(client, q->id) & stub->bmask;
	p->hnext = stub->buckets[b];
	stub->buckets[b] = idx;
	p->older = stub->newest;
	p->newer = DNS_NONE;
	if (stub->newest != DNS_NONE)
		stub->pend[stub->newest].newer = idx;
	else
		stub->oldest = idx;
	stub->newest = idx;
	stub->npending++;
	return idx;
}

static int dns_answer_private(struct dns_stub *stub, const struct dns_q *q, const char *name,
                              uint64_t now, uint8_t *out, size_t outsize, struct dns_result *res,
                              bool *need_resolve)
{
	struct in_addr a4 = {0};
	struct in6_addr a6;
	uint32_t left;
	bool v6 = q->qtype == LDNS_RR_TYPE_AAAA;

	*need_resolve = false;
	if (q->qclass != LDNS_RR_CLASS_IN)
		return dns_build(q, LDNS_RCODE_REFUSED, false, NULL, NULL, 0, out, outsize, res);
	if (v6 && pool_addr6(stub->pool, a4, &a6) == -EOPNOTSUPP)
		return dns_build(q, LDNS_RCODE_NOERROR, true, NULL, NULL, 0, out, outsize, res);
	if (!v6 && q->qtype != LDNS_RR_TYPE_A && q->qtype != LDNS_RR_TYPE_ANY)
		return dns_build(q, LDNS_RCODE_NOERROR, true, NULL, NULL, 0, out, outsize, res);
	if (pool_find(stub->pool, name, now, &a4, &left) < 0) {
		*need_resolve = true;
		return 0;
	}
	if (left > stub->answer_ttl)
		left = stub->answer_ttl;
	if (v6) {
		pool_addr6(stub->pool, a4, &a6);
		return dns_build(q, LDNS_RCODE_NOERROR, true, NULL, &a6, left, out, outsize, res);
	}
	return dns_build(q, LDNS_RCODE_NOERROR, true, &a4, NULL, left, out, outsize, res);
}

/* Fills q from a parsed query; -EBADMSG when it is not one question. */
static int dns_question(const ldns_pkt *pkt, struct dns_q *q, char **text)
{
	const ldns_rr *rr;
	const ldns_rdf *owner;

	if (ldns_pkt_qdcount(pkt) != 1 || ldns_rr_list_rr_count(ldns_pkt_question(pkt)) != 1)
		return -EBADMSG;
	rr = ldns_rr_list_rr(ldns_pkt_question(pkt), 0);
	owner = ldns_rr_owner(rr);
	if (!owner || ldns_rdf_size(owner) == 0 || ldns_rdf_size(owner) > LDNS_MAX_DOMAINLEN)
		return -EBADMSG;
	q->has_q = true;
	q->qtype = (uint16_t)ldns_rr_get_type(rr);
	q->qclass = (uint16_t)ldns_rr_get_class(rr);
	q->qname_len = (uint8_t)ldns_rdf_size(owner);
	memcpy(q->qname, ldns_rdf_data(owner), q->qname_len);
	*text = ldns_rdf2str(owner);
	return *text ? 0 : -ENOMEM;
}

int dns_stub_query(struct dns_stub *stub, const uint8_t *pkt, size_t len,
                   const struct sockaddr *client, socklen_t client_len, unsigned flags,
                   uint64_t now, uint8_t *out, size_t outsize, struct dns_result *res)
{
	return dns_stub_query_via(stub, pkt, len, client, client_len, NULL, 0, flags, now, out,
	                          outsize, res);
}

int dns_stub_query_via(struct dns_stub *stub, const uint8_t *pkt, size_t len,
                       const struct sockaddr *client, socklen_t client_len,
                       const struct sockaddr *upstream, socklen_t upstream_len, unsigned flags,
                       uint64_t now, uint8_t *out, size_t outsize, struct dns_result *res)
{
	char canon[SEG_NAME_MAX + 1], priv[SEG_NAME_MAX + 1];
	struct dns_q q = {0};
	ldns_pkt *p = NULL;
	char *text = NULL;
	const char *why;
	enum dns_class cls;
	bool resolve;
	uint32_t idx;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	res->tcp = flags & DNS_QUERY_TCP;
	if (!dns_peer_valid(client, client_len))
		return -EINVAL;
	dns_set_peer(res, client, client_len);
	/* No header, or a response: nothing to answer, and answering responses makes loops. */
	if (len < LDNS_HEADER_SIZE || LDNS_QR_WIRE(pkt))
		goto out;
	q.id = LDNS_ID_WIRE(pkt);
	q.opcode = LDNS_OPCODE_WIRE(pkt);
	q.rd = LDNS_RD_WIRE(pkt);
	q.cd = LDNS_CD_WIRE(pkt);
	if (q.opcode != LDNS_PACKET_QUERY) {
		rc = dns_build(&q, LDNS_RCODE_NOTIMPL, false, NULL, NULL, 0, out, outsize, res);
		goto out;
	}
	if (ldns_wire2pkt(&p, pkt, len) != LDNS_STATUS_OK) {
		rc = dns_build(&q, LDNS_RCODE_FORMERR, false, NULL, NULL, 0, out, outsize, res);
		goto out;
	}
	rc = dns_question(p, &q, &text);
	if (rc == -EBADMSG) {
		q.has_q = false;
		rc = dns_build(&q, LDNS_RCODE_FORMERR, false, NULL, NULL, 0, out, outsize, res);
		goto out;
	}
	if (rc < 0)
		goto out;
	if (dns_find_dup(stub, client, &q) != DNS_NONE)
		goto out; /* a retransmission: the first copy's answer serves both */

	cls = segment_normalize_name(text, canon, &why) < 0 ? DNS_PUBLIC
	                                                    : dns_classify(stub, canon, priv);
	if (cls == DNS_SEARCH_ECHO) {
		rc = dns_build(&q, LDNS_RCODE_NXDOMAIN, true, NULL, NULL, 0, out, outsize, res);
		goto out;
	}
	if (cls == DNS_PRIVATE) {
		rc = dns_answer_private(stub, &q, priv, now, out, outsize, res, &resolve);
		if (rc < 0 || !resolve)
			goto out;
		idx = dns_pend_new(stub, PEND_RESOLVE, client, client_len, res->tcp, &q, now);
		if (idx == DNS_NONE) {
			rc = dns_build(&q, LDNS_RCODE_SERVFAIL, false, NULL, NULL, 0, out, outsize,
			               res);
			goto out;
		}
		memcpy(stub->pend[idx].name, priv, sizeof(priv));
		res->action = DNS_RESOLVE;
		res->token = (uint64_t)stub->pend[idx].gen << 32 | idx;
		memcpy(res->name, priv, sizeof(priv));
		goto out;
	}

	rc = -ENOSPC;
	if (len > outsize)
		goto out;
	if (!upstream || !dns_peer_valid(upstream, upstream_len)) {
		upstream = (const struct sockaddr *)&stub->upstream;
		upstream_len = stub->upstream_len;
	}
	if (!upstream_len) {
		rc = dns_build(&q, LDNS_RCODE_SERVFAIL, false, NULL, NULL, 0, out, outsize, res);
		goto out;
	}
	idx = dns_pend_new(stub, PEND_FORWARD, client, client_len, res->tcp, &q, now);
	if (idx == DNS_NONE) {
		rc = dns_build(&q, LDNS_RCODE_SERVFAIL, false, NULL, NULL, 0, out, outsize, res);
		goto out;
	}
	/* Our own random id upstream, unique among the queries in flight. */
	do {
		rc = dns_random_id(stub, &stub->pend[idx].up_id);
		if (rc < 0) {
			dns_unlink(stub, idx);
			goto out;
		}
	} while (stub->up_map[stub->pend[idx].up_id] != DNS_NONE);
	stub->up_map[stub->pend[idx].up_id] = idx;
	memset(&stub->pend[idx].up, 0, sizeof(stub->pend[idx].up));
	memcpy(&stub->pend[idx].up, upstream, upstream_len);
	memcpy(out, pkt, len);
	LDNS_ID_SET(out, stub->pend[idx].up_id);
	res->action = DNS_FORWARD;
	res->len = len;
	dns_set_peer(res, &stub->pend[idx].up, upstream_len);
out:
	free(text);
	ldns_pkt_free(p);
	return rc;
}

int dns_stub_resolved(struct dns_stub *stub, uint64_t token, enum dns_resolve_status status,
                      uint32_t ttl_s, uint64_t now, uint8_t *out, size_t outsize,
                      struct dns_result *res)
{
	uint32_t idx = (uint32_t)token;
	struct dns_pending *p;
	struct in_addr a4;
	struct in6_addr a6;
	int rc;

	memset(res, 0, sizeof(*res));
	if (idx >= stub->max_pending)
		return -ENOENT;
	p = &stub->pend[idx];
	if (p->kind != PEND_RESOLVE || p->gen != (uint32_t)(token >> 32))
		return -ENOENT;
	dns_set_peer(res, &p->client, p->client_len);
	res->tcp = p->tcp;
	if (status == DNS_RESOLVED_NXDOMAIN) {
		rc = dns_build(&p->q, LDNS_RCODE_NXDOMAIN, true, NULL, NULL, 0, out, outsize, res);
	} else if (status != DNS_RESOLVED_OK) {
		rc = dns_build(&p->q, LDNS_RCODE_SERVFAIL, false, NULL, NULL, 0, out, outsize, res);
	} else if (pool_assign(stub->pool, p->name, ttl_s, now, &a4) < 0) {
		log_event(LOG_LVL_WARN, "dns.pool_exhausted", "capacity=%zu",
		          pool_capacity(stub->pool));
		rc = dns_build(&p->q, LDNS_RCODE_SERVFAIL, false, NULL, NULL, 0, out, outsize, res);
	} else {
		uint32_t ttl = ttl_s < stub->answer_ttl ? ttl_s : stub->answer_ttl;

		if (p->q.qtype == LDNS_RR_TYPE_AAAA && pool_addr6(stub->pool, a4, &a6) == 0)
			rc = dns_build(&p->q, LDNS_RCODE_NOERROR, true, NULL, &a6, ttl, out,
			               outsize, res);
		else
			rc = dns_build(&p->q, LDNS_RCODE_NOERROR, true, &a4, NULL, ttl, out,
			               outsize, res);
	}
	dns_unlink(stub, idx);
	return rc;
}

int dns_stub_upstream_reply(struct dns_stub *stub, const uint8_t *pkt, size_t len,
                            const struct sockaddr *from, socklen_t from_len, uint8_t *out,
                            size_t outsize, struct dns_result *res)
{
	struct dns_pending *p;
	ldns_rdf *qname = NULL;
	size_t pos = LDNS_HEADER_SIZE;
	uint32_t idx;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	if (len < LDNS_HEADER_SIZE || !LDNS_QR_WIRE(pkt) || LDNS_QDCOUNT(pkt) != 1)
		goto out;
	idx = stub->up_map[LDNS_ID_WIRE(pkt)];
	if (idx == DNS_NONE)
		goto out;
	p = &stub->pend[idx];
	if (!dns_peer_valid(from, from_len) || !dns_same_peer(from, &p->up))
		goto out;
	/* Only the question is parsed: a truncated (TC) reply may end in the middle of a record. */
	if (ldns_wire2dname(&qname, pkt, len, &pos) != LDNS_STATUS_OK || pos + 4 > len)
		goto out;
	if (!dns_qname_equal(ldns_rdf_data(qname), ldns_rdf_size(qname), p->q.qname,
	                     p->q.qname_len) ||
	    ldns_read_uint16(pkt + pos) != p->q.qtype ||
	    ldns_read_uint16(pkt + pos + 2) != p->q.qclass)
		goto out;
	rc = -ENOSPC;
	if (len > outsize)
		goto out;
	memcpy(out, pkt, len);
	LDNS_ID_SET(out, p->q.id);
	res->action = DNS_ANSWER;
	res->len = len;
	res->rcode = LDNS_RCODE_WIRE(pkt);
	res->tcp = p->tcp;
	dns_set_peer(res, &p->client, p->client_len);
	dns_unlink(stub, idx);
	rc = 0;
out:
	ldns_rdf_deep_free(qname);
	return rc;
}

int dns_stub_timer(struct dns_stub *stub, uint64_t now, uint8_t *out, size_t outsize,
                   struct dns_result *res)
{
	uint32_t idx = stub->oldest;
	struct dns_pending *p;
	int rc;

	memset(res, 0, sizeof(*res));
	if (idx == DNS_NONE || stub->pend[idx].deadline > now)
		return 0;
	p = &stub->pend[idx];
	dns_set_peer(res, &p->client, p->client_len);
	res->tcp = p->tcp;
	rc = dns_build(&p->q, LDNS_RCODE_SERVFAIL, false, NULL, NULL, 0, out, outsize, res);
	dns_unlink(stub, idx);
	return rc;
}
