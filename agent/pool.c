/*
 * The synthetic address pool: name <-> address in a configured IPv4 range, two open-address
 * hash tables over one preallocated entry array, so nothing is allocated after pool_new.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

#define POOL_NONE UINT32_MAX

struct pool_entry {
	uint64_t hash;
	uint64_t ttl_end; /* answered from the pool until then */
	uint64_t free_at; /* freed from then on when no holds remain */
	uint32_t off;     /* address offset in the range */
	uint32_t holds;
	uint32_t next_free;
	bool used;
	char name[SEG_NAME_MAX + 1];
};

struct pool {
	uint32_t net;  /* host order */
	uint32_t size; /* addresses in the range */
	uint32_t grace_ms;
	bool v6;
	struct in6_addr net6;
	struct pool_entry *entries;
	uint32_t nentries, high, count, free_head;
	uint32_t *by_name, *by_addr; /* entry index + 1; 0 empty */
	uint32_t mask;
};

void pool_config_default(struct pool_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->net.s_addr = htonl(POOL_DEFAULT_NET);
	cfg->prefix = POOL_DEFAULT_PREFIX;
	cfg->grace_ms = POOL_DEFAULT_GRACE_MS;
	cfg->max_names = POOL_DEFAULT_MAX_NAMES;
	/* fd6d:7475:6e00::/96, "mtun" in the ULA space */
	cfg->net6.s6_addr[0] = 0xfd;
	cfg->net6.s6_addr[1] = 0x6d;
	cfg->net6.s6_addr[2] = 0x74;
	cfg->net6.s6_addr[3] = 0x75;
	cfg->net6.s6_addr[4] = 0x6e;
}

static bool pool_range_allowed(uint32_t net, unsigned prefix)
{
	static const struct {
		uint32_t net;
		unsigned prefix;
	} ok[] = {
	    {0x64400000U, 10}, /* shared address space (RFC 6598) */
	    {0xc6120000U, 15}, /* benchmarking (RFC 2544) */
	    {0x0a000000U, 8},  {0xac100000U, 12}, {0xc0a80000U, 16},
	};

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		uint32_t m = ~0U << (32 - ok[i].prefix);

		if (prefix >= ok[i].prefix && (net & m) == ok[i].net)
			return true;
	}
	return false;
}

static uint64_t pool_hash_name(const char *name)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

static uint32_t pool_hash_off(uint32_t off)
{
	return (uint32_t)(((uint64_t)off * 0x9e3779b97f4a7c15ULL) >> 32);
}

int pool_new(const struct pool_config *cfg, struct pool **out, const char **why)
{
	struct pool *pool = NULL;
	uint32_t net, usable, slots;
	int rc = -EINVAL;

	*out = NULL;
	if (cfg->prefix < POOL_MIN_PREFIX || cfg->prefix > POOL_MAX_PREFIX) {
		*why = "prefix must be /8 to /24";
		goto out;
	}
	net = ntohl(cfg->net.s_addr);
	if (net & ~(~0U << (32 - cfg->prefix))) {
		*why = "address has bits set beyond the prefix";
		goto out;
	}
	if (!pool_range_allowed(net, cfg->prefix)) {
		*why = "range must be inside 100.64.0.0/10, 198.18.0.0/15 or RFC 1918 space";
		goto out;
	}
	if (cfg->max_names == 0) {
		*why = "max_names must be at least 1";
		goto out;
	}
	rc = -ENOMEM;
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		goto out;
	pool->net = net;
	pool->size = 1U << (32 - cfg->prefix);
	pool->grace_ms = cfg->grace_ms;
	pool->v6 = cfg->v6;
	pool->net6 = cfg->net6;
	memset(&pool->net6.s6_addr[12], 0, 4);
	usable = pool->size - 2; /* the range's first and last addresses are never handed out */
	pool->nentries = cfg->max_names < usable ? cfg->max_names : usable;
	for (slots = 16; slots < 2 * pool->nentries; slots <<= 1)
		;
	pool->mask = slots - 1;
	pool->free_head = POOL_NONE;
	/* calloc of large arrays maps zero pages lazily: a big max_names costs nothing unused. */
	pool->entries = calloc(pool->nentries, sizeof(*pool->entries));
	pool->by_name = calloc(slots, sizeof(*pool->by_name));
	pool->by_addr = calloc(slots, sizeof(*pool->by_addr));
	if (!pool->entries || !pool->by_name || !pool->by_addr)
		goto out;
	*out = pool;
	pool = NULL;
	rc = 0;
out:
	pool_free(pool);
	return rc;
}

void pool_free(struct pool *pool)
{
	if (!pool)
		return;
	free(pool->entries);
	free(pool->by_name);
	free(pool->by_addr);
	free(pool);
}

static uint32_t pool_find_name(const struct pool *pool, const char *name, uint64_t h)
{
	for (uint32_t i = (uint32_t)h & pool->mask;; i = (i + 1) & pool->mask) {
		uint32_t v = pool->by_name[i];

		if (!v)
			return POOL_NONE;
		if (pool->entries[v - 1].hash == h && strcmp(pool->entries[v - 1].name, name) == 0)
			return v - 1;
	}
}

static uint32_t pool_find_off(const struct pool *pool, uint32_t off)
{
	for (uint32_t i = pool_hash_off(off) & pool->mask;; i = (i + 1) & pool->mask) {
		uint32_t v = pool->by_addr[i];

		if (!v)
			return POOL_NONE;
		if (pool->entries[v - 1].off == off)
			return v - 1;
	}
}

static void pool_insert(uint32_t *tab, uint32_t mask, uint32_t home, uint32_t idx)
{
	uint32_t i = home & mask;

	while (tab[i])
		i = (i + 1) & mask;
	tab[i] = idx + 1;
}

/* Linear probing deletion by backward shift: no tombstones, so no growth over time. */
static void pool_remove(struct pool *pool, uint32_t *tab, uint32_t idx, bool by_name)
{
	uint32_t i, j;

	for (i = by_name ? (uint32_t)pool->entries[idx].hash
	                 : pool_hash_off(pool->entries[idx].off);
	     tab[i & pool->mask] != idx + 1; i++)
		;
	i &= pool->mask;
	for (j = i;;) {
		const struct pool_entry *e;
		uint32_t k;

		j = (j + 1) & pool->mask;
		if (!tab[j])
			break;
		e = &pool->entries[tab[j] - 1];
		k = (by_name ? (uint32_t)e->hash : pool_hash_off(e->off)) & pool->mask;
		if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
			tab[i] = tab[j];
			i = j;
		}
	}
	tab[i] = 0;
}

static struct in_addr pool_addr_of(const struct pool *pool, uint32_t off)
{
	return (struct in_addr){.s_addr = htonl(pool->net + off)};
}

static uint32_t pool_ttl_left(uint64_t end, uint64_t now)
{
	return end > now ? (uint32_t)((end - now + 999) / 1000) : 0;
}

int pool_find(const struct pool *pool, const char *name, uint64_t now, struct in_addr *addr,
              uint32_t *ttl_left)
{
	uint32_t idx = pool_find_name(pool, name, pool_hash_name(name));
	const struct pool_entry *e;

	if (idx == POOL_NONE)
		return -ENOENT;
	e = &pool->entries[idx];
	if (now >= e->ttl_end)
		return -ENOENT;
	*addr = pool_addr_of(pool, e->off);
	*ttl_left = pool_ttl_left(e->ttl_end, now);
	return 0;
}

static void pool_free_entry(struct pool *pool, uint32_t idx)
{
	struct pool_entry *e = &pool->entries[idx];

	pool_remove(pool, pool->by_name, idx, true);
	pool_remove(pool, pool->by_addr, idx, false);
	e->used = false;
	e->next_free = pool->free_head;
	pool->free_head = idx;
	pool->count--;
}

size_t pool_expire(struct pool *pool, uint64_t now)
{
	size_t n = 0;

	for (uint32_t i = 0; i < pool->high; i++) {
		struct pool_entry *e = &pool->entries[i];

		if (e->used && !e->holds && now >= e->free_at) {
			pool_free_entry(pool, i);
			n++;
		}
	}
	return n;
}

static int pool_pick_off(struct pool *pool, uint64_t h, uint32_t *off)
{
	uint32_t usable = pool->size - 2;
	/* Hash placement: a name tends to get its old address back, another name rarely gets it. */
	uint32_t o = 1 + (uint32_t)(h % usable);

	for (uint32_t n = 0; n < usable; n++) {
		if (pool_find_off(pool, o) == POOL_NONE) {
			*off = o;
			return 0;
		}
		o = o == usable ? 1 : o + 1;
	}
	return -ENOSPC;
}

int pool_assign(struct pool *pool, const char *name, uint32_t ttl_s, uint64_t now,
                struct in_addr *addr)
{
	uint64_t h = pool_hash_name(name);
	uint32_t idx = pool_find_name(pool, name, h);
	struct pool_entry *e;
	size_t len = strlen(name);
	uint32_t off;

	if (len == 0 || len > SEG_NAME_MAX)
		return -EINVAL;
	if (idx == POOL_NONE) {
		if (pool->count == pool->nentries && pool_expire(pool, now) == 0)
			return -ENOSPC;
		if (pool_pick_off(pool, h, &off) < 0)
			return -ENOSPC;
		if (pool->free_head != POOL_NONE) {
			idx = pool->free_head;
			pool->free_head = pool->entries[idx].next_free;
		} else {
			idx = pool->high++;
		}
		e = &pool->entries[idx];
		memset(e, 0, sizeof(*e));
		memcpy(e->name, name, len + 1);
		e->hash = h;
		e->off = off;
		e->used = true;
		pool_insert(pool->by_name, pool->mask, (uint32_t)h, idx);
		pool_insert(pool->by_addr, pool->mask, pool_hash_off(off), idx);
		pool->count++;
	}
	e = &pool->entries[idx];
	e->ttl_end = now + (uint64_t)ttl_s * 1000;
	e->free_at = e->ttl_end + pool->grace_ms;
	*addr = pool_addr_of(pool, e->off);
	return 0;
}

bool pool_contains(const struct pool *pool, struct in_addr addr)
{
	return ntohl(addr.s_addr) - pool->net < pool->size;
}

static uint32_t pool_entry_of(const struct pool *pool, struct in_addr addr)
{
	if (!pool_contains(pool, addr))
		return POOL_NONE;
	return pool_find_off(pool, ntohl(addr.s_addr) - pool->net);
}

int pool_lookup_addr(const struct pool *pool, struct in_addr addr, char *name, size_t size)
{
	uint32_t idx = pool_entry_of(pool, addr);
	size_t len;

	if (idx == POOL_NONE)
		return -ENOENT;
	len = strlen(pool->entries[idx].name);
	if (len >= size)
		return -ENOSPC;
	memcpy(name, pool->entries[idx].name, len + 1);
	return 0;
}

int pool_hold(struct pool *pool, struct in_addr addr)
{
	uint32_t idx = pool_entry_of(pool, addr);

	if (idx == POOL_NONE)
		return -ENOENT;
	if (pool->entries[idx].holds == UINT32_MAX)
		return -EOVERFLOW;
	pool->entries[idx].holds++;
	return 0;
}

int pool_release(struct pool *pool, struct in_addr addr, uint64_t now)
{
	uint32_t idx = pool_entry_of(pool, addr);
	struct pool_entry *e;

	if (idx == POOL_NONE)
		return -ENOENT;
	e = &pool->entries[idx];
	if (!e->holds)
		return -EINVAL;
	/* A client may reconnect at once to an address it still caches: keep a grace time. */
	if (--e->holds == 0 && e->free_at < now + pool->grace_ms)
		e->free_at = now + pool->grace_ms;
	return 0;
}

size_t pool_count(const struct pool *pool)
{
	return pool->count;
}

size_t pool_capacity(const struct pool *pool)
{
	return pool->nentries;
}

int pool_addr6(const struct pool *pool, struct in_addr addr, struct in6_addr *out)
{
	if (!pool->v6)
		return -EOPNOTSUPP;
	*out = pool->net6;
	memcpy(&out->s6_addr[12], &addr.s_addr, 4);
	return 0;
}

int pool_addr6_to_v4(const struct pool *pool, const struct in6_addr *addr6, struct in_addr *out)
{
	if (!pool->v6)
		return -EOPNOTSUPP;
	if (memcmp(addr6->s6_addr, pool->net6.s6_addr, 12) != 0)
		return -ENOENT;
	memcpy(&out->s_addr, &addr6->s6_addr[12], 4);
	return pool_contains(pool, *out) ? 0 : -ENOENT;
}
