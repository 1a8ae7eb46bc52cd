/*
 * Connector election: candidates nearest the broker, probe bookkeeping, the election
 * cache per (name, connector group) and hold-down of connectors that failed a name.
 * Time is always passed in (milliseconds), so tests control it.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define ELECT_EARTH_KM       6371.0088
#define ELECT_CAPACITY_UNSET 1000 /* assumed when a connector reports none */
#define ELECT_GROUPS_MAX     4096

struct elect_hold {
	char id[IDENT_ID_MAX + 1];
	uint64_t until_ms;
};

struct elect_entry {
	uint64_t hash;
	uint32_t group;
	uint64_t expires_ms;
	size_t nalt;
	struct elect_result alt[ELECT_K_MAX]; /* successes of this group, fastest first */
	struct elect_hold hold[ELECT_HOLD_MAX];
	char name[SEG_NAME_MAX + 1];
};

struct elect_group {
	uint32_t id;
	struct elect_location loc;
};

struct elect {
	struct elect_config cfg;
	struct elect_group *groups;
	size_t ngroups;
	struct elect_connector *conns;
	size_t nconns;
	struct elect_entry **slots; /* open addressing, linear probing, backward-shift delete */
	size_t nslots, count;
};

static const char *const elect_status_names[] = {
    [ELECT_OK] = "ok",
    [ELECT_PENDING] = "pending",
    [ELECT_NXDOMAIN] = "nxdomain",
    [ELECT_UNREACHABLE] = "unreachable",
    [ELECT_REFUSED] = "refused",
    [ELECT_TIMEOUT] = "timeout",
    [ELECT_ERROR] = "error",
    [ELECT_NO_CONNECTOR] = "no-connector",
};

const char *elect_status_name(enum elect_status s)
{
	return (unsigned)s <= ELECT_NO_CONNECTOR ? elect_status_names[s] : "invalid";
}

static bool elect_loc_ok(const struct elect_location *l)
{
	return isfinite(l->lat) && isfinite(l->lon) && l->lat >= -90 && l->lat <= 90 &&
	       l->lon >= -180 && l->lon <= 180 && memchr(l->region, '\0', sizeof(l->region));
}

struct elect *elect_new(const struct elect_config *cfg)
{
	struct elect *e;
	size_t slots = 16;

	if (!elect_loc_ok(&cfg->broker) || cfg->k > ELECT_K_MAX || cfg->cache_max == 0 ||
	    cfg->cache_max > (1U << 24))
		return NULL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->cfg = *cfg;
	if (e->cfg.k == 0)
		e->cfg.k = ELECT_K_DEFAULT;
	while (slots < cfg->cache_max * 2)
		slots *= 2;
	e->slots = calloc(slots, sizeof(*e->slots));
	if (!e->slots) {
		free(e);
		return NULL;
	}
	e->nslots = slots;
	return e;
}

void elect_free(struct elect *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->nslots; i++)
		free(e->slots[i]);
	free(e->slots);
	free(e->groups);
	free(e->conns);
	free(e);
}

static const struct elect_group *elect_find_group(const struct elect *e, uint32_t id)
{
	for (size_t i = 0; i < e->ngroups; i++)
		if (e->groups[i].id == id)
			return &e->groups[i];
	return NULL;
}

int elect_set_group(struct elect *e, uint32_t group, const struct elect_location *loc)
{
	struct elect_group *g = (struct elect_group *)elect_find_group(e, group);

	if (group == 0 || !elect_loc_ok(loc))
		return -EINVAL;
	if (!g) {
		if (e->ngroups >= ELECT_GROUPS_MAX)
			return -ENOSPC;
		g = reallocarray(e->groups, e->ngroups + 1, sizeof(*g));
		if (!g)
			return -ENOMEM;
		e->groups = g;
		g = &e->groups[e->ngroups++];
		g->id = group;
	}
	g->loc = *loc;
	return 0;
}

const struct elect_connector *elect_find_connector(const struct elect *e, const char *id)
{
	for (size_t i = 0; i < e->nconns; i++)
		if (strcmp(e->conns[i].id, id) == 0)
			return &e->conns[i];
	return NULL;
}

int elect_set_connector(struct elect *e, const struct elect_connector *c)
{
	struct elect_connector *slot;

	if (!memchr(c->id, '\0', sizeof(c->id)) || !ident_valid_id(c->id) ||
	    !elect_find_group(e, c->group) || (c->has_location && !elect_loc_ok(&c->loc)))
		return -EINVAL;
	slot = (struct elect_connector *)elect_find_connector(e, c->id);
	if (!slot) {
		slot = reallocarray(e->conns, e->nconns + 1, sizeof(*slot));
		if (!slot)
			return -ENOMEM;
		e->conns = slot;
		slot = &e->conns[e->nconns++];
	}
	*slot = *c;
	return 0;
}

int elect_remove_connector(struct elect *e, const char *id)
{
	const struct elect_connector *c = elect_find_connector(e, id);
	size_t i;

	if (!c)
		return -ENOENT;
	i = (size_t)(c - e->conns);
	memmove(&e->conns[i], &e->conns[i + 1], (e->nconns - i - 1) * sizeof(*e->conns));
	e->nconns--;
	return 0;
}

double elect_distance_km(const struct elect_location *a, const struct elect_location *b)
{
	double rad = M_PI / 180.0;
	double dlat = (b->lat - a->lat) * rad, dlon = (b->lon - a->lon) * rad;
	double h = sin(dlat / 2) * sin(dlat / 2) +
	           cos(a->lat * rad) * cos(b->lat * rad) * sin(dlon / 2) * sin(dlon / 2);

	if (h > 1)
		h = 1;
	return 2 * ELECT_EARTH_KM * asin(sqrt(h));
}

static uint64_t elect_hash(const char *name, uint32_t group)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 0x100000001b3ULL;
	for (int i = 0; i < 4; i++)
		h = (h ^ ((group >> (i * 8)) & 0xff)) * 0x100000001b3ULL;
	return h ^ (h >> 31);
}

static size_t elect_slot(const struct elect *e, const char *name, uint32_t group, uint64_t h)
{
	size_t mask = e->nslots - 1, i;

	for (i = h & mask; e->slots[i]; i = (i + 1) & mask)
		if (e->slots[i]->hash == h && e->slots[i]->group == group &&
		    strcmp(e->slots[i]->name, name) == 0)
			break;
	return i;
}

static struct elect_entry *elect_entry_get(const struct elect *e, const char *name, uint32_t group)
{
	return e->slots[elect_slot(e, name, group, elect_hash(name, group))];
}

static void elect_entry_del(struct elect *e, size_t i)
{
	size_t mask = e->nslots - 1, j = i;

	free(e->slots[i]);
	e->slots[i] = NULL;
	e->count--;
	for (;;) {
		size_t k;

		j = (j + 1) & mask;
		if (!e->slots[j])
			return;
		k = e->slots[j]->hash & mask;
		/* Move j back into the hole unless its home lies cyclically in (i, j]. */
		if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
			e->slots[i] = e->slots[j];
			e->slots[j] = NULL;
			i = j;
		}
	}
}

static bool elect_entry_dead(const struct elect_entry *x, uint64_t now_ms)
{
	if (x->nalt && x->expires_ms > now_ms)
		return false;
	for (int i = 0; i < ELECT_HOLD_MAX; i++)
		if (x->hold[i].id[0] && x->hold[i].until_ms > now_ms)
			return false;
	return true;
}

static void elect_sweep(struct elect *e, uint64_t now_ms)
{
	for (size_t i = 0; i < e->nslots;) {
		if (e->slots[i] && elect_entry_dead(e->slots[i], now_ms))
			elect_entry_del(e, i); /* slot i may now hold a shifted entry */
		else
			i++;
	}
}

static struct elect_entry *elect_entry_make(struct elect *e, const char *name, uint32_t group,
                                            uint64_t now_ms)
{
	uint64_t h = elect_hash(name, group);
	size_t i = elect_slot(e, name, group, h);
	struct elect_entry *x;

	if (e->slots[i])
		return e->slots[i];
	if (e->count >= e->cfg.cache_max) {
		elect_sweep(e, now_ms);
		if (e->count >= e->cfg.cache_max)
			return NULL;
		i = elect_slot(e, name, group, h);
	}
	x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	x->hash = h;
	x->group = group;
	strcpy(x->name, name);
	e->slots[i] = x;
	e->count++;
	return x;
}

size_t elect_cache_count(const struct elect *e)
{
	return e->count;
}

static bool elect_held(const struct elect_entry *x, const char *id, uint64_t now_ms)
{
	for (int i = 0; x && i < ELECT_HOLD_MAX; i++)
		if (x->hold[i].until_ms > now_ms && strcmp(x->hold[i].id, id) == 0)
			return true;
	return false;
}

static uint64_t elect_util(const struct elect_connector *c)
{
	uint32_t cap = c->capacity ? c->capacity : ELECT_CAPACITY_UNSET;

	return (uint64_t)c->load * 1000000 / cap;
}

/* Nearest first, then lower utilisation, then id: a total order, so results are stable. */
static int elect_cmp(const struct elect_candidate *a, uint64_t ua, const struct elect_candidate *b,
                     uint64_t ub)
{
	if (a->distance_km != b->distance_km)
		return a->distance_km < b->distance_km ? -1 : 1;
	if (ua != ub)
		return ua < ub ? -1 : 1;
	return strcmp(a->id, b->id);
}

size_t elect_candidates(struct elect *e, const char *name, const uint32_t *groups, size_t ngroups,
                        uint64_t now_ms, struct elect_candidate *out, size_t max)
{
	uint64_t util[ELECT_K_MAX];
	size_t n = 0, limit = max < e->cfg.k ? max : e->cfg.k;

	if (name && strlen(name) > SEG_NAME_MAX)
		return 0;
	for (size_t i = 0; i < e->nconns; i++) {
		const struct elect_connector *c = &e->conns[i];
		const struct elect_location *loc;
		struct elect_candidate cand = {0};
		bool member = false;
		uint64_t u;
		size_t pos;

		for (size_t g = 0; g < ngroups && !member; g++)
			member = groups[g] == c->group;
		if (!member || !c->healthy || (c->capacity && c->load >= c->capacity))
			continue;
		if (name && elect_held(elect_entry_get(e, name, c->group), c->id, now_ms))
			continue;
		loc = c->has_location ? &c->loc : &elect_find_group(e, c->group)->loc;
		strcpy(cand.id, c->id);
		cand.group = c->group;
		cand.distance_km = (uint32_t)lround(elect_distance_km(&e->cfg.broker, loc));
		cand.status = ELECT_PENDING;
		u = elect_util(c);
		for (pos = n; pos > 0 && elect_cmp(&cand, u, &out[pos - 1], util[pos - 1]) < 0;
		     pos--)
			;
		if (pos >= limit)
			continue;
		if (n < limit)
			n++;
		memmove(&out[pos + 1], &out[pos], (n - 1 - pos) * sizeof(*out));
		memmove(&util[pos + 1], &util[pos], (n - 1 - pos) * sizeof(*util));
		out[pos] = cand;
		util[pos] = u;
	}
	return n;
}

int elect_pending_init(const struct elect *e, struct elect_pending *p, const char *name,
                       const struct elect_candidate *cand, size_t n, uint64_t now_ms)
{
	size_t len = strlen(name);

	if (n > ELECT_K_MAX || len == 0 || len > SEG_NAME_MAX)
		return -EINVAL;
	memset(p, 0, sizeof(*p));
	memcpy(p->name, name, len + 1);
	p->deadline_ms = now_ms + e->cfg.probe_ms;
	p->n = n;
	for (size_t i = 0; i < n; i++) {
		p->cand[i] = cand[i];
		p->cand[i].status = ELECT_PENDING;
		p->cand[i].latency_us = 0;
	}
	return 0;
}

int elect_pending_reply(struct elect_pending *p, const char *id, enum elect_status status,
                        uint32_t latency_us)
{
	if (status != ELECT_OK && status != ELECT_NXDOMAIN && status != ELECT_UNREACHABLE &&
	    status != ELECT_REFUSED && status != ELECT_TIMEOUT && status != ELECT_ERROR)
		return -EINVAL;
	for (size_t i = 0; i < p->n; i++) {
		struct elect_candidate *c = &p->cand[i];

		if (strcmp(c->id, id) != 0)
			continue;
		if (c->status != ELECT_PENDING)
			return -EALREADY;
		c->status = (uint8_t)status;
		c->latency_us = latency_us;
		p->answered++;
		return 0;
	}
	return -ENOENT;
}

bool elect_pending_done(const struct elect_pending *p, uint64_t now_ms)
{
	return p->answered == p->n || now_ms >= p->deadline_ms;
}

int elect_pending_result(const struct elect_pending *p, uint64_t now_ms, struct elect_result *out)
{
	const struct elect_candidate *best = NULL;

	memset(out, 0, sizeof(*out));
	if (p->n == 0) {
		out->status = ELECT_NO_CONNECTOR;
		return 0;
	}
	if (!elect_pending_done(p, now_ms))
		return -EAGAIN;
	for (size_t i = 0; i < p->n; i++)
		if (p->cand[i].status == ELECT_OK &&
		    (!best || p->cand[i].latency_us < best->latency_us))
			best = &p->cand[i];
	if (best) {
		out->status = ELECT_OK;
		strcpy(out->id, best->id);
		out->group = best->group;
		out->latency_us = best->latency_us;
		return 0;
	}
	/* All failed: report what the nearest candidate said. */
	out->status = p->cand[0].status == ELECT_PENDING ? ELECT_TIMEOUT : p->cand[0].status;
	strcpy(out->id, p->cand[0].id);
	out->group = p->cand[0].group;
	return 0;
}

static void elect_alt_del(struct elect_entry *x, size_t i)
{
	memmove(&x->alt[i], &x->alt[i + 1], (x->nalt - i - 1) * sizeof(x->alt[0]));
	x->nalt--;
}

static void elect_alt_put(struct elect_entry *x, const struct elect_result *r)
{
	size_t pos;

	for (size_t i = 0; i < x->nalt; i++)
		if (strcmp(x->alt[i].id, r->id) == 0) {
			elect_alt_del(x, i);
			break;
		}
	for (pos = x->nalt; pos > 0 && r->latency_us < x->alt[pos - 1].latency_us; pos--)
		;
	if (pos >= ELECT_K_MAX)
		return;
	if (x->nalt < ELECT_K_MAX)
		x->nalt++;
	memmove(&x->alt[pos + 1], &x->alt[pos], (x->nalt - 1 - pos) * sizeof(x->alt[0]));
	x->alt[pos] = *r;
}

static bool elect_name_ok(const char *name)
{
	size_t len = strnlen(name, SEG_NAME_MAX + 1);

	return len > 0 && len <= SEG_NAME_MAX;
}

int elect_cache_put(struct elect *e, const char *name, const struct elect_result *r,
                    uint64_t now_ms)
{
	struct elect_entry *x;

	if (r->status != ELECT_OK || !elect_name_ok(name) || !memchr(r->id, '\0', sizeof(r->id)))
		return -EINVAL;
	x = elect_entry_make(e, name, r->group, now_ms);
	if (!x)
		return e->count >= e->cfg.cache_max ? -ENOSPC : -ENOMEM;
	if (x->expires_ms <= now_ms)
		x->nalt = 0;
	/* A fresh success lifts a hold-down: the connector has just reached the name. */
	for (int i = 0; i < ELECT_HOLD_MAX; i++)
		if (strcmp(x->hold[i].id, r->id) == 0)
			x->hold[i].until_ms = 0;
	elect_alt_put(x, r);
	x->expires_ms = now_ms + e->cfg.ttl_ms;
	return 0;
}

int elect_cache_put_pending(struct elect *e, const struct elect_pending *p, uint64_t now_ms)
{
	int rc = 0;

	if (!elect_name_ok(p->name) || p->n > ELECT_K_MAX)
		return -EINVAL;
	/* A fresh probe replaces what an older one said about the same groups. */
	for (size_t i = 0; i < p->n; i++) {
		struct elect_entry *x = elect_entry_get(e, p->name, p->cand[i].group);

		if (x)
			x->nalt = 0;
	}
	for (size_t i = 0; i < p->n; i++) {
		const struct elect_candidate *c = &p->cand[i];
		struct elect_result r = {
		    .status = ELECT_OK, .group = c->group, .latency_us = c->latency_us};

		if (c->status != ELECT_OK)
			continue;
		strcpy(r.id, c->id);
		if (rc == 0)
			rc = elect_cache_put(e, p->name, &r, now_ms);
	}
	return rc;
}

bool elect_cache_get(struct elect *e, const char *name, const uint32_t *groups, size_t ngroups,
                     uint64_t now_ms, struct elect_result *out)
{
	const struct elect_result *best = NULL;

	if (!elect_name_ok(name))
		return false;
	for (size_t g = 0; g < ngroups; g++) {
		struct elect_entry *x = elect_entry_get(e, name, groups[g]);

		if (!x || x->expires_ms <= now_ms)
			continue;
		for (size_t i = 0; i < x->nalt;) {
			const struct elect_connector *c = elect_find_connector(e, x->alt[i].id);

			/* Gone or unhealthy since the probe: forget it, try the runner-up. */
			if (!c || !c->healthy || c->group != x->group ||
			    elect_held(x, c->id, now_ms)) {
				elect_alt_del(x, i);
				continue;
			}
			if (!best || x->alt[i].latency_us < best->latency_us)
				best = &x->alt[i];
			break;
		}
	}
	if (best)
		*out = *best;
	return best != NULL;
}

void elect_fail(struct elect *e, const char *name, const char *id, uint64_t now_ms)
{
	const struct elect_connector *c = elect_find_connector(e, id);
	struct elect_hold *slot = NULL;
	struct elect_entry *x;

	if (!c || !elect_name_ok(name))
		return;
	x = elect_entry_make(e, name, c->group, now_ms);
	if (!x)
		return;
	for (size_t i = 0; i < x->nalt; i++)
		if (strcmp(x->alt[i].id, id) == 0) {
			elect_alt_del(x, i);
			break;
		}
	/* Reuse this connector's hold, else the one ending first. */
	for (int i = 0; i < ELECT_HOLD_MAX; i++) {
		struct elect_hold *h = &x->hold[i];

		if (strcmp(h->id, id) == 0) {
			slot = h;
			break;
		}
		if (!slot || h->until_ms < slot->until_ms)
			slot = h;
	}
	strcpy(slot->id, id);
	slot->until_ms = now_ms + e->cfg.holddown_ms;
}
