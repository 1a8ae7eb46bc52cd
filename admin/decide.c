/*
 * Policy decisions on a snapshot: segment lookup, then the segment's own rules (the
 * per-segment index), with a per-subject cache of recent decisions.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "admin/admin_int.h"

#define DCACHE_SLOTS_MAX 65536U

struct dcache_entry {
	const struct admin_snapshot *snap;
	int64_t generation;
	int64_t minute;
	uint16_t port;
	uint8_t proto;
	bool used;
	struct admin_decision dec;
	char name[SEG_HOST_STR_MAX + 1];
};

struct admin_dcache {
	uint64_t seed; /* so that names cannot be chosen to collide */
	unsigned mask;
	struct dcache_entry *e;
};

int admin_segpol_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct admin_segpol *)a)->seg_id;
	uint32_t y = ((const struct admin_segpol *)b)->seg_id;

	return x < y ? -1 : x > y;
}

struct admin_dcache *admin_dcache_new(unsigned slots)
{
	struct admin_dcache *c = calloc(1, sizeof(*c));
	unsigned n = 16;

	if (!c)
		return NULL;
	while (n < slots && n < DCACHE_SLOTS_MAX)
		n <<= 1;
	c->mask = n - 1;
	c->e = calloc(n, sizeof(*c->e));
	if (!c->e || RAND_bytes((unsigned char *)&c->seed, sizeof(c->seed)) != 1) {
		admin_dcache_free(c);
		return NULL;
	}
	return c;
}

void admin_dcache_free(struct admin_dcache *c)
{
	if (!c)
		return;
	free(c->e);
	free(c);
}

void admin_dcache_clear(struct admin_dcache *c)
{
	for (unsigned i = 0; i <= c->mask; i++)
		c->e[i].used = false;
}

static uint64_t dcache_hash(const struct admin_dcache *c, const char *name, uint8_t proto,
                            uint16_t port)
{
	uint64_t h = c->seed ^ 0xcbf29ce484222325ULL;

	for (; *name; name++)
		h = (h ^ (uint8_t)*name) * 0x100000001b3ULL;
	h = (h ^ proto) * 0x100000001b3ULL;
	h = (h ^ port) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

static const struct policy *decide_policy(const struct admin_snapshot *s, uint32_t seg_id)
{
	struct admin_segpol key = {.seg_id = seg_id}, *hit;

	if (!s->segpols)
		return s->pol;
	hit = bsearch(&key, s->segpols, s->nsegpols, sizeof(*s->segpols), admin_segpol_cmp);
	return hit ? hit->pol : s->pol;
}

void admin_decide(const struct admin_snapshot *s, struct admin_dcache *c,
                  const struct policy_subject *subj, const char *name, uint8_t proto, uint16_t port,
                  time_t now, struct admin_decision *out)
{
	const struct admin_user *u;
	struct dcache_entry *e = NULL;
	int64_t minute = (int64_t)now / 60;

	if (c && strlen(name) <= SEG_HOST_STR_MAX) {
		e = &c->e[dcache_hash(c, name, proto, port) & c->mask];
		if (e->used && e->snap == s && e->generation == s->generation &&
		    e->minute == minute && e->port == port && e->proto == proto &&
		    strcmp(e->name, name) == 0) {
			*out = e->dec;
			return;
		}
	}
	out->seg = segment_match(s->segs, name, proto, port);
	u = subj->user ? admin_snapshot_user(s, subj->user) : NULL;
	if (u && u->disabled)
		out->d = (struct policy_decision){
		    .action = POLICY_DENY, .rule_name = "", .reason = "user is disabled"};
	else if (!out->seg)
		out->d = (struct policy_decision){.action = POLICY_DENY,
		                                  .rule_name = "",
		                                  .reason = "no segment matches the name and port"};
	else
		policy_eval(decide_policy(s, out->seg->id), subj, out->seg, now, &out->d);
	if (e) {
		e->snap = s;
		e->generation = s->generation;
		e->minute = minute;
		e->port = port;
		e->proto = proto;
		strcpy(e->name, name);
		e->dec = *out;
		e->used = true;
	}
}
