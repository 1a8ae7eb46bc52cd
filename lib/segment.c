/*
 * App segments: validation, overlap detection and the match from a name or address (with
 * proto and port) to the most specific segment. One hash holds exact names, wildcard
 * domains and masked CIDRs; a lookup walks name suffixes or the prefix lengths in use.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "segment.h"

struct seg_host {
	uint64_t hash;
	uint8_t kind; /* enum seg_host_kind */
	uint8_t plen;
	uint16_t klen;
	const struct segment **segs; /* segments on this key, ports disjoint */
	size_t nsegs, cap;
	char key[]; /* a name, or 4/16 masked address bytes */
};

struct seg_server_group {
	uint32_t id;
	uint32_t *cgroups;
	size_t n;
};

/* Ids to positions (open addressing, load <= 1/2): segset_find and the server groups in
 * O(1), so that building a set of n segments is not quadratic. */
struct seg_idmap {
	uint32_t *ids, *pos; /* ids[i] == 0: empty */
	size_t cap;
};

struct segset {
	char tenant[IDENT_TENANT_MAX + 1];
	struct segment **segs;
	size_t nsegs, segs_cap;
	struct seg_server_group *sgroups;
	size_t nsgroups, sgroups_cap;
	struct seg_idmap seg_ids, sgroup_ids;
	struct seg_host **slots; /* open addressing, linear probing, load <= 1/2 */
	size_t nslots, nhosts;
	uint32_t plens4[33], plens6[129]; /* entries per prefix length */
};

/* A host entry parsed from a spec, before it is committed. */
struct seg_parsed {
	enum seg_host_kind kind;
	uint8_t plen;
	uint16_t klen;
	char key[SEG_NAME_MAX + 1];
	char canon[SEG_HOST_STR_MAX + 1];
	struct seg_host *existing;
};

static uint64_t seg_hash(uint8_t kind, uint8_t plen, const void *key, size_t len)
{
	const unsigned char *p = key;
	uint64_t h = 0xcbf29ce484222325ULL;

	h = (h ^ kind) * 0x100000001b3ULL;
	h = (h ^ plen) * 0x100000001b3ULL;
	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

static struct seg_host *seg_lookup(const struct segset *set, uint8_t kind, uint8_t plen,
                                   const void *key, size_t len)
{
	uint64_t h;
	size_t i, mask;

	if (set->nslots == 0)
		return NULL;
	h = seg_hash(kind, plen, key, len);
	mask = set->nslots - 1;
	for (i = h & mask;; i = (i + 1) & mask) {
		struct seg_host *e = set->slots[i];

		if (!e)
			return NULL;
		if (e->hash == h && e->kind == kind && e->plen == plen && e->klen == len &&
		    memcmp(e->key, key, len) == 0)
			return e;
	}
}

static void seg_slot_put(struct seg_host **slots, size_t nslots, struct seg_host *e)
{
	size_t mask = nslots - 1, i;

	for (i = e->hash & mask; slots[i]; i = (i + 1) & mask)
		;
	slots[i] = e;
}

static int seg_reserve(struct segset *set, size_t more)
{
	size_t want = set->nslots ? set->nslots : 64;
	struct seg_host **slots;

	while ((set->nhosts + more) * 2 > want)
		want *= 2;
	if (want == set->nslots)
		return 0;
	slots = calloc(want, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < set->nslots; i++)
		if (set->slots[i])
			seg_slot_put(slots, want, set->slots[i]);
	free(set->slots);
	set->slots = slots;
	set->nslots = want;
	return 0;
}

static size_t seg_id_slot(uint32_t id, size_t cap)
{
	return (size_t)((id * 0x9e3779b97f4a7c15ULL) >> 32) & (cap - 1);
}

/* Position of id, or SIZE_MAX. */
static size_t seg_idmap_get(const struct seg_idmap *m, uint32_t id)
{
	if (!m->cap || !id)
		return SIZE_MAX;
	for (size_t i = seg_id_slot(id, m->cap);; i = (i + 1) & (m->cap - 1)) {
		if (m->ids[i] == id)
			return m->pos[i];
		if (!m->ids[i])
			return SIZE_MAX;
	}
}

static void seg_idmap_put(struct seg_idmap *m, uint32_t id, size_t pos)
{
	size_t i;

	for (i = seg_id_slot(id, m->cap); m->ids[i]; i = (i + 1) & (m->cap - 1))
		;
	m->ids[i] = id;
	m->pos[i] = (uint32_t)pos;
}

/* Room for n entries in all (so that the put that follows cannot fail). */
static int seg_idmap_reserve(struct seg_idmap *m, size_t n)
{
	struct seg_idmap bigger;
	size_t want = m->cap ? m->cap : 16;

	while (n * 2 > want)
		want *= 2;
	if (want == m->cap)
		return 0;
	if (n > UINT32_MAX)
		return -ENOMEM;
	bigger.cap = want;
	bigger.ids = calloc(want, sizeof(*bigger.ids));
	bigger.pos = calloc(want, sizeof(*bigger.pos));
	if (!bigger.ids || !bigger.pos) {
		free(bigger.ids);
		free(bigger.pos);
		return -ENOMEM;
	}
	for (size_t i = 0; i < m->cap; i++)
		if (m->ids[i])
			seg_idmap_put(&bigger, m->ids[i], m->pos[i]);
	free(m->ids);
	free(m->pos);
	*m = bigger;
	return 0;
}

static void seg_idmap_free(struct seg_idmap *m)
{
	free(m->ids);
	free(m->pos);
}

static bool seg_ldh(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

int segment_normalize_name(const char *in, char out[SEG_NAME_MAX + 1], const char **why)
{
	size_t len = strlen(in), label = 0, last = 0;
	bool numeric = true;

	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len == 0) {
		*why = "empty name";
		return -EINVAL;
	}
	if (len > SEG_NAME_MAX) {
		*why = "name longer than 253 characters";
		return -EINVAL;
	}
	for (size_t i = 0; i <= len; i++) {
		char c = i < len ? in[i] : '.';

		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c == '.') {
			if (label == 0) {
				*why = "empty label";
				return -EINVAL;
			}
			if (out[i - 1] == '-' || out[i - label] == '-') {
				*why = "label starts or ends with '-'";
				return -EINVAL;
			}
			last = i - label;
			label = 0;
		} else {
			if (!seg_ldh(c)) {
				*why = "invalid character in name";
				return -EINVAL;
			}
			if (++label > SEG_LABEL_MAX) {
				*why = "label longer than 63 characters";
				return -EINVAL;
			}
		}
		if (i < len)
			out[i] = c;
	}
	out[len] = '\0';
	for (size_t i = last; i < len; i++)
		if (out[i] < '0' || out[i] > '9')
			numeric = false;
	if (numeric) {
		*why = "numeric top-level label (an address?)";
		return -EINVAL;
	}
	return 0;
}

static int seg_parse_plen(const char *s, unsigned max, unsigned *plen)
{
	unsigned v = 0;
	size_t n = 0;

	for (; s[n]; n++) {
		if (s[n] < '0' || s[n] > '9' || n >= 3)
			return -EINVAL;
		v = v * 10 + (unsigned)(s[n] - '0');
	}
	if (n == 0 || (n > 1 && s[0] == '0') || v > max)
		return -EINVAL;
	*plen = v;
	return 0;
}

static void seg_mask(unsigned char *a, size_t alen, unsigned plen)
{
	for (size_t i = 0; i < alen; i++) {
		unsigned bits = plen > i * 8 ? plen - (unsigned)i * 8 : 0;

		if (bits < 8)
			a[i] &= (unsigned char)(0xff00U >> bits);
	}
}

/* Text CIDR or address into (kind, plen, masked bytes). */
static int seg_parse_cidr(const char *in, struct seg_parsed *p, const char **why)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash;
	unsigned char addr[16], masked[16];
	bool v6 = strchr(in, ':') != NULL;
	unsigned plen, max = v6 ? 128 : 32;
	size_t alen = v6 ? 16 : 4;

	if (strlen(in) >= sizeof(buf)) {
		*why = "address too long";
		return -EINVAL;
	}
	strcpy(buf, in);
	slash = strchr(buf, '/');
	if (slash) {
		*slash = '\0';
		if (seg_parse_plen(slash + 1, max, &plen) < 0) {
			*why = "invalid prefix length";
			return -EINVAL;
		}
	} else {
		plen = max;
	}
	if (inet_pton(v6 ? AF_INET6 : AF_INET, buf, addr) != 1) {
		*why = v6 ? "invalid IPv6 address" : "invalid IPv4 address";
		return -EINVAL;
	}
	memcpy(masked, addr, alen);
	seg_mask(masked, alen, plen);
	if (memcmp(masked, addr, alen) != 0) {
		*why = "host bits set after the prefix length";
		return -EINVAL;
	}
	p->kind = v6 ? SEG_HOST_V6 : SEG_HOST_V4;
	p->plen = (uint8_t)plen;
	p->klen = (uint16_t)alen;
	memcpy(p->key, masked, alen);
	inet_ntop(v6 ? AF_INET6 : AF_INET, masked, buf, sizeof(buf));
	snprintf(p->canon, sizeof(p->canon), "%s/%u", buf, plen);
	return 0;
}

static bool seg_looks_ip(const char *s)
{
	if (strchr(s, ':'))
		return true;
	if (*s < '0' || *s > '9')
		return false;
	for (; *s && *s != '/'; s++)
		if ((*s < '0' || *s > '9') && *s != '.')
			return false;
	return true;
}

static int seg_parse(const char *in, struct seg_parsed *p, const char **why)
{
	int err;

	memset(p, 0, sizeof(*p));
	if (seg_looks_ip(in))
		return seg_parse_cidr(in, p, why);
	if (in[0] == '*') {
		if (in[1] != '.') {
			*why = "a wildcard is '*.' followed by a domain";
			return -EINVAL;
		}
		err = segment_normalize_name(in + 2, p->key, why);
		if (err < 0)
			return err;
		p->kind = SEG_HOST_WILDCARD;
		snprintf(p->canon, sizeof(p->canon), "*.%s", p->key);
	} else {
		err = segment_normalize_name(in, p->key, why);
		if (err < 0)
			return err;
		p->kind = SEG_HOST_FQDN;
		snprintf(p->canon, sizeof(p->canon), "%s", p->key);
	}
	p->klen = (uint16_t)strlen(p->key);
	return 0;
}

int segment_parse_host(const char *in, char *out, enum seg_host_kind *kind, const char **why)
{
	struct seg_parsed p;
	int err;

	err = seg_parse(in, &p, why);
	if (err < 0)
		return err;
	strcpy(out, p.canon);
	*kind = p.kind;
	return 0;
}

bool segment_has_port(const struct segment *seg, uint8_t proto, uint16_t port)
{
	for (size_t i = 0; i < seg->nports; i++)
		if (seg->ports[i].proto == proto && port >= seg->ports[i].lo &&
		    port <= seg->ports[i].hi)
			return true;
	return false;
}

/* Ports of seg that overlap the spec's, as "tcp/22" for the error message, or false. */
static bool seg_ports_overlap(const struct segment *seg, const struct seg_ports *ports,
                              size_t nports, char *what, size_t whatlen)
{
	for (size_t i = 0; i < seg->nports; i++)
		for (size_t j = 0; j < nports; j++) {
			const struct seg_ports *a = &seg->ports[i], *b = &ports[j];

			if (a->proto != b->proto || a->hi < b->lo || b->hi < a->lo)
				continue;
			snprintf(what, whatlen, "%s/%u", a->proto == SEG_PROTO_TCP ? "tcp" : "udp",
			         a->lo > b->lo ? a->lo : b->lo);
			return true;
		}
	return false;
}

struct segset *segset_new(const char *tenant)
{
	struct segset *set;

	if (!ident_valid_tenant(tenant))
		return NULL;
	set = calloc(1, sizeof(*set));
	if (!set)
		return NULL;
	strcpy(set->tenant, tenant);
	return set;
}

static void seg_segment_free(struct segment *seg)
{
	if (!seg)
		return;
	for (size_t i = 0; i < seg->nhosts; i++)
		free(seg->hosts[i]);
	free(seg->hosts);
	free(seg->ports);
	free(seg->server_groups);
	free(seg);
}

void segset_free(struct segset *set)
{
	if (!set)
		return;
	for (size_t i = 0; i < set->nslots; i++) {
		if (set->slots[i]) {
			free(set->slots[i]->segs);
			free(set->slots[i]);
		}
	}
	free(set->slots);
	for (size_t i = 0; i < set->nsegs; i++)
		seg_segment_free(set->segs[i]);
	free(set->segs);
	for (size_t i = 0; i < set->nsgroups; i++)
		free(set->sgroups[i].cgroups);
	free(set->sgroups);
	seg_idmap_free(&set->seg_ids);
	seg_idmap_free(&set->sgroup_ids);
	free(set);
}

static const struct seg_server_group *seg_find_sgroup(const struct segset *set, uint32_t id)
{
	size_t i = seg_idmap_get(&set->sgroup_ids, id);

	return i == SIZE_MAX ? NULL : &set->sgroups[i];
}

int segset_add_server_group(struct segset *set, uint32_t id, const uint32_t *connector_groups,
                            size_t n)
{
	struct seg_server_group *g;
	uint32_t *cg = NULL;

	if (id == 0 || n == 0 || n > 1024)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (connector_groups[i] == 0)
			return -EINVAL;
	if (seg_find_sgroup(set, id))
		return -EEXIST;
	if (set->nsgroups == set->sgroups_cap) {
		size_t cap = set->sgroups_cap ? set->sgroups_cap * 2 : 16;

		g = reallocarray(set->sgroups, cap, sizeof(*g));
		if (!g)
			return -ENOMEM;
		set->sgroups = g;
		set->sgroups_cap = cap;
	}
	if (seg_idmap_reserve(&set->sgroup_ids, set->nsgroups + 1) < 0)
		return -ENOMEM;
	cg = malloc(n * sizeof(*cg));
	if (!cg)
		return -ENOMEM;
	memcpy(cg, connector_groups, n * sizeof(*cg));
	seg_idmap_put(&set->sgroup_ids, id, set->nsgroups);
	set->sgroups[set->nsgroups++] = (struct seg_server_group){.id = id, .cgroups = cg, .n = n};
	return 0;
}

static int seg_check_spec(const struct segset *set, const struct segment_spec *spec, char *err,
                          size_t errlen)
{
	if (spec->id == 0) {
		snprintf(err, errlen, "segment id 0 is reserved");
		return -EINVAL;
	}
	if (!spec->name || !spec->name[0] || strlen(spec->name) > SEG_TITLE_MAX) {
		snprintf(err, errlen, "segment %u: name missing or longer than %d", spec->id,
		         SEG_TITLE_MAX);
		return -EINVAL;
	}
	if (!spec->tenant || strcmp(spec->tenant, set->tenant) != 0) {
		snprintf(err, errlen, "segment %s: tenant is not %s", spec->name, set->tenant);
		return -EINVAL;
	}
	if (segset_find(set, spec->id)) {
		snprintf(err, errlen, "segment %s: id %u already used", spec->name, spec->id);
		return -EEXIST;
	}
	if (spec->nhosts == 0 || spec->nhosts > 4096) {
		snprintf(err, errlen, "segment %s: needs 1..4096 hosts", spec->name);
		return -EINVAL;
	}
	if (spec->nports == 0 || spec->nports > 256) {
		snprintf(err, errlen, "segment %s: needs 1..256 port ranges", spec->name);
		return -EINVAL;
	}
	for (size_t i = 0; i < spec->nports; i++) {
		const struct seg_ports *p = &spec->ports[i];

		if ((p->proto != SEG_PROTO_TCP && p->proto != SEG_PROTO_UDP) || p->lo == 0 ||
		    p->lo > p->hi) {
			snprintf(err, errlen, "segment %s: invalid port range %u %u-%u", spec->name,
			         p->proto, p->lo, p->hi);
			return -EINVAL;
		}
	}
	if (spec->nserver_groups == 0 || spec->nserver_groups > 256) {
		snprintf(err, errlen, "segment %s: needs 1..256 server groups", spec->name);
		return -EINVAL;
	}
	for (size_t i = 0; i < spec->nserver_groups; i++) {
		if (!seg_find_sgroup(set, spec->server_groups[i])) {
			snprintf(err, errlen, "segment %s: unknown server group %u", spec->name,
			         spec->server_groups[i]);
			return -EINVAL;
		}
	}
	return 0;
}

static struct segment *seg_build(const struct segment_spec *spec, const struct seg_parsed *hosts)
{
	struct segment *seg = calloc(1, sizeof(*seg));

	if (!seg)
		return NULL;
	seg->id = spec->id;
	strcpy(seg->name, spec->name);
	strcpy(seg->tenant, spec->tenant);
	seg->flags = spec->flags;
	seg->segment_group = spec->segment_group;
	seg->hosts = calloc(spec->nhosts, sizeof(*seg->hosts));
	seg->ports = malloc(spec->nports * sizeof(*seg->ports));
	seg->server_groups = malloc(spec->nserver_groups * sizeof(*seg->server_groups));
	if (!seg->hosts || !seg->ports || !seg->server_groups)
		goto fail;
	for (size_t i = 0; i < spec->nhosts; i++) {
		seg->hosts[i] = strdup(hosts[i].canon);
		if (!seg->hosts[i])
			goto fail;
		seg->nhosts++;
	}
	memcpy(seg->ports, spec->ports, spec->nports * sizeof(*seg->ports));
	seg->nports = spec->nports;
	memcpy(seg->server_groups, spec->server_groups,
	       spec->nserver_groups * sizeof(*seg->server_groups));
	seg->nserver_groups = spec->nserver_groups;
	return seg;
fail:
	seg_segment_free(seg);
	return NULL;
}

int segset_add(struct segset *set, const struct segment_spec *spec, char *err, size_t errlen)
{
	struct seg_parsed *hosts = NULL;
	struct seg_host **fresh = NULL;
	struct segment *seg = NULL;
	size_t nfresh = 0;
	const char *why;
	int rc;

	rc = seg_check_spec(set, spec, err, errlen);
	if (rc < 0)
		return rc;
	hosts = calloc(spec->nhosts, sizeof(*hosts));
	fresh = calloc(spec->nhosts, sizeof(*fresh));
	if (!hosts || !fresh) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < spec->nhosts; i++) {
		struct seg_parsed *p = &hosts[i];
		char ports[16];

		rc = seg_parse(spec->hosts[i] ? spec->hosts[i] : "", p, &why);
		if (rc < 0) {
			snprintf(err, errlen, "segment %s: host \"%.260s\": %s", spec->name,
			         spec->hosts[i] ? spec->hosts[i] : "", why);
			goto out;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(hosts[j].canon, p->canon) == 0) {
				snprintf(err, errlen, "segment %s: host %s listed twice",
				         spec->name, p->canon);
				rc = -EINVAL;
				goto out;
			}
		}
		p->existing = seg_lookup(set, p->kind, p->plen, p->key, p->klen);
		if (!p->existing)
			continue;
		for (size_t j = 0; j < p->existing->nsegs; j++) {
			const struct segment *o = p->existing->segs[j];

			if (seg_ports_overlap(o, spec->ports, spec->nports, ports, sizeof(ports))) {
				snprintf(err, errlen,
				         "segment %s (%u) overlaps segment %s (%u): %s on %s",
				         spec->name, spec->id, o->name, o->id, p->canon, ports);
				rc = -EEXIST;
				goto out;
			}
		}
	}

	/* Reserve everything first so that committing cannot fail half way. */
	rc = -ENOMEM;
	seg = seg_build(spec, hosts);
	if (!seg)
		goto out;
	if (set->nsegs == set->segs_cap) {
		size_t cap = set->segs_cap ? set->segs_cap * 2 : 16;
		struct segment **segs = reallocarray(set->segs, cap, sizeof(*segs));

		if (!segs)
			goto out;
		set->segs = segs;
		set->segs_cap = cap;
	}
	for (size_t i = 0; i < spec->nhosts; i++) {
		struct seg_parsed *p = &hosts[i];
		struct seg_host *h = p->existing;

		if (!h) {
			h = calloc(1, sizeof(*h) + p->klen);
			if (!h)
				goto out;
			fresh[nfresh++] = h;
			h->kind = (uint8_t)p->kind;
			h->plen = p->plen;
			h->klen = p->klen;
			memcpy(h->key, p->key, p->klen);
			h->hash = seg_hash(h->kind, h->plen, h->key, h->klen);
			p->existing = h;
		}
		if (h->nsegs == h->cap) {
			size_t cap = h->cap ? h->cap * 2 : 1;
			const struct segment **s = reallocarray(h->segs, cap, sizeof(*s));

			if (!s)
				goto out;
			h->segs = s;
			h->cap = cap;
		}
	}
	if (seg_reserve(set, nfresh) < 0 || seg_idmap_reserve(&set->seg_ids, set->nsegs + 1) < 0)
		goto out;

	for (size_t i = 0; i < nfresh; i++) {
		seg_slot_put(set->slots, set->nslots, fresh[i]);
		set->nhosts++;
		if (fresh[i]->kind == SEG_HOST_V4)
			set->plens4[fresh[i]->plen]++;
		else if (fresh[i]->kind == SEG_HOST_V6)
			set->plens6[fresh[i]->plen]++;
	}
	nfresh = 0;
	for (size_t i = 0; i < spec->nhosts; i++) {
		struct seg_host *h = hosts[i].existing;

		h->segs[h->nsegs++] = seg;
	}
	seg_idmap_put(&set->seg_ids, seg->id, set->nsegs);
	set->segs[set->nsegs++] = seg;
	seg = NULL;
	rc = 0;
out:
	for (size_t i = 0; i < nfresh; i++) {
		free(fresh[i]->segs);
		free(fresh[i]);
	}
	if (rc == -ENOMEM)
		snprintf(err, errlen, "segment %s: out of memory", spec->name);
	seg_segment_free(seg);
	free(fresh);
	free(hosts);
	return rc;
}

size_t segset_count(const struct segset *set)
{
	return set->nsegs;
}

const struct segment *segset_nth(const struct segset *set, size_t i)
{
	return i < set->nsegs ? set->segs[i] : NULL;
}

const struct segment *segset_find(const struct segset *set, uint32_t id)
{
	size_t i = seg_idmap_get(&set->seg_ids, id);

	return i == SIZE_MAX ? NULL : set->segs[i];
}

static const struct segment *seg_pick(const struct seg_host *h, uint8_t proto, uint16_t port)
{
	if (!h)
		return NULL;
	for (size_t i = 0; i < h->nsegs; i++)
		if (segment_has_port(h->segs[i], proto, port))
			return h->segs[i];
	return NULL;
}

const struct segment *segment_match_addr(const struct segset *set, int family, const void *addr,
                                         uint8_t proto, uint16_t port)
{
	const uint32_t *plens = family == AF_INET6 ? set->plens6 : set->plens4;
	int kind = family == AF_INET6 ? SEG_HOST_V6 : SEG_HOST_V4;
	size_t alen = family == AF_INET6 ? 16 : 4;
	unsigned char key[16];

	if (family != AF_INET && family != AF_INET6)
		return NULL;
	for (int plen = (int)alen * 8; plen >= 0; plen--) {
		const struct segment *seg;

		if (!plens[plen])
			continue;
		memcpy(key, addr, alen);
		seg_mask(key, alen, (unsigned)plen);
		seg =
		    seg_pick(seg_lookup(set, (uint8_t)kind, (uint8_t)plen, key, alen), proto, port);
		if (seg)
			return seg;
	}
	return NULL;
}

const struct segment *segment_match(const struct segset *set, const char *name_or_ip, uint8_t proto,
                                    uint16_t port)
{
	char name[SEG_NAME_MAX + 1];
	unsigned char addr[16];
	const struct segment *seg;
	const char *why;
	size_t len;

	if (inet_pton(AF_INET, name_or_ip, addr) == 1)
		return segment_match_addr(set, AF_INET, addr, proto, port);
	if (inet_pton(AF_INET6, name_or_ip, addr) == 1)
		return segment_match_addr(set, AF_INET6, addr, proto, port);
	if (segment_normalize_name(name_or_ip, name, &why) < 0)
		return NULL;
	len = strlen(name);
	seg = seg_pick(seg_lookup(set, SEG_HOST_FQDN, 0, name, len), proto, port);
	/* Wildcards from the longest domain down: a.b.corp.example tries b.corp.example first. */
	for (size_t i = 0; !seg && i < len; i++)
		if (name[i] == '.')
			seg = seg_pick(
			    seg_lookup(set, SEG_HOST_WILDCARD, 0, name + i + 1, len - i - 1), proto,
			    port);
	return seg;
}

size_t segment_connector_groups(const struct segset *set, const struct segment *seg, uint32_t *out,
                                size_t max)
{
	size_t n = 0;

	for (size_t i = 0; i < seg->nserver_groups; i++) {
		const struct seg_server_group *g = seg_find_sgroup(set, seg->server_groups[i]);

		for (size_t j = 0; g && j < g->n; j++) {
			bool dup = false;

			for (size_t k = 0; k < n; k++)
				dup |= out[k] == g->cgroups[j];
			if (!dup && n < max)
				out[n++] = g->cgroups[j];
		}
	}
	return n;
}
