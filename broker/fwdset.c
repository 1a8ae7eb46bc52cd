/*
 * An agent's forwarding set: the app segments some allow rule could give its user, as
 * CONFIG frames (docs/protocol.md 3.2): one SEGMENT per host, split into MORE frames.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "conf.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME  0x100000001b3ULL

struct fwd_entry {
	struct mt_segment seg;
	char name[SEG_HOST_STR_MAX + 1];
	size_t size; /* its SEGMENT attribute's encoded bytes */
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * FNV_PRIME;
	return h;
}

/* One SEGMENT for host of seg; ranges point at the segment's own list. */
static int fwd_entry_make(struct fwd_entry *e, const struct segment *seg, const char *host,
                          struct mt_port_range *ranges)
{
	enum seg_host_kind kind;
	struct conf_cidr cidr;
	const char *why;

	memset(e, 0, sizeof(*e));
	if (segment_parse_host(host, e->name, &kind, &why) < 0)
		return -EINVAL;
	e->seg.id = seg->id;
	e->seg.flags = seg->flags & MT_SEG_F_ALL;
	e->seg.ranges = ranges;
	e->seg.nranges = (uint16_t)seg->nports;
	switch (kind) {
	case SEG_HOST_FQDN:
	case SEG_HOST_WILDCARD:
		e->seg.kind = kind == SEG_HOST_FQDN ? MT_SEG_FQDN : MT_SEG_WILDCARD;
		e->seg.name =
		    (struct mt_bytes){(const uint8_t *)e->name, (uint16_t)strlen(e->name)};
		return 0;
	case SEG_HOST_V4:
	case SEG_HOST_V6:
		if (conf_parse_cidr(e->name, &cidr, &why) < 0)
			return -EINVAL;
		e->seg.kind = MT_SEG_CIDR;
		e->seg.family = cidr.family == AF_INET ? 4 : 6;
		e->seg.prefix = cidr.prefix;
		memcpy(e->seg.addr, &cidr.addr, cidr.family == AF_INET ? 4 : 16);
		return 0;
	}
	return -EINVAL;
}

static int fwd_encode(uint8_t *buf, uint64_t version, bool more, const struct mt_segment *segs,
                      size_t n)
{
	struct mt_msg m = {.hdr = {.type = MT_CONFIG, .flags = more ? MT_FRAME_F_MORE : 0}};

	m.u.config.version = version;
	m.u.config.segs = segs;
	m.u.config.nsegs = (uint16_t)n;
	return wire_encode(buf, MT_FRAME_MAX, &m);
}

/* The allowed segments' entries (*out, count *n) and their port lists (*ranges). */
static int fwd_collect(const struct segset *segs, const struct policy *pol,
                       const struct policy_subject *subj, struct fwd_entry **out, size_t *n,
                       struct mt_port_range **ranges, uint64_t *digest)
{
	size_t nseg = segset_count(segs), ne = 0, nr = 0, ie = 0, ir = 0;
	struct fwd_entry *e = NULL;
	struct mt_port_range *r = NULL;
	uint64_t h = FNV_OFFSET;
	int ret = 0;

	for (size_t i = 0; i < nseg; i++) {
		const struct segment *s = segset_nth(segs, i);

		if (!policy_may_allow(pol, subj, s))
			continue;
		ne += s->nhosts;
		nr += s->nports;
	}
	if (ne) {
		e = calloc(ne, sizeof(*e));
		r = calloc(nr, sizeof(*r));
		if (!e || !r) {
			ret = -ENOMEM;
			goto fail;
		}
	}
	for (size_t i = 0; i < nseg && ne; i++) {
		const struct segment *s = segset_nth(segs, i);

		if (!policy_may_allow(pol, subj, s))
			continue;
		if (s->nports > UINT16_MAX) {
			ret = -EMSGSIZE;
			goto fail;
		}
		for (size_t j = 0; j < s->nports; j++)
			r[ir + j] = (struct mt_port_range){
			    .proto = s->ports[j].proto, .lo = s->ports[j].lo, .hi = s->ports[j].hi};
		h = fnv(h, &s->id, sizeof(s->id));
		h = fnv(h, &s->flags, sizeof(s->flags));
		h = fnv(h, &r[ir], s->nports * sizeof(*r));
		for (size_t j = 0; j < s->nhosts; j++) {
			ret = fwd_entry_make(&e[ie], s, s->hosts[j], &r[ir]);
			if (ret < 0)
				goto fail;
			h = fnv(h, e[ie].name, strlen(e[ie].name) + 1);
			ie++;
		}
		ir += s->nports;
	}
	*out = e;
	*n = ie;
	*ranges = r;
	*digest = h;
	return 0;
fail:
	free(e);
	free(r);
	return ret;
}

uint64_t fwdset_digest(const struct segset *segs, const struct policy *pol,
                       const struct policy_subject *subj)
{
	struct fwd_entry *e = NULL;
	struct mt_port_range *r = NULL;
	uint64_t h = 0;
	size_t n = 0;

	if (fwd_collect(segs, pol, subj, &e, &n, &r, &h) < 0)
		h = 0; /* never equal to a real digest's chance: the caller then resends */
	free(e);
	free(r);
	return h;
}

int fwdset_encode(const struct segset *segs, const struct policy *pol,
                  const struct policy_subject *subj, uint64_t version, fwdset_emit_fn *emit,
                  void *arg, uint64_t *digest)
{
	struct mt_segment *run = NULL;
	struct fwd_entry *e = NULL;
	struct mt_port_range *r = NULL;
	uint8_t *buf = NULL;
	size_t n = 0, first = 0, used;
	int base, len, ret;

	ret = fwd_collect(segs, pol, subj, &e, &n, &r, digest);
	if (ret < 0)
		return ret;
	buf = malloc(MT_FRAME_MAX);
	run = calloc(n ? n : 1, sizeof(*run));
	if (!buf || !run) {
		ret = -ENOMEM;
		goto out;
	}
	base = fwd_encode(buf, version, false, NULL, 0);
	if (base < 0) {
		ret = base;
		goto out;
	}
	/* Attributes concatenate: a frame's size is the base plus its segments' sizes. */
	for (size_t i = 0; i < n; i++) {
		len = fwd_encode(buf, version, false, &e[i].seg, 1);
		if (len < 0) {
			ret = len;
			goto out;
		}
		e[i].size = (size_t)(len - base);
		run[i] = e[i].seg;
	}
	do {
		size_t cnt = 0;

		used = (size_t)base;
		while (first + cnt < n && used + e[first + cnt].size <= MT_FRAME_MAX)
			used += e[first + cnt++].size;
		len = fwd_encode(buf, version, first + cnt < n, &run[first], cnt);
		if (len < 0) {
			ret = len;
			goto out;
		}
		if (cnt == 0 && first < n) {
			ret = -EMSGSIZE;
			goto out;
		}
		ret = emit(buf, (size_t)len, arg);
		if (ret < 0)
			goto out;
		first += cnt;
	} while (first < n);
out:
	free(buf);
	free(run);
	free(e);
	free(r);
	return ret;
}
