/* Unit tests for the synthetic address pool (agent/pool.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>

#include "agent.h"
#include "t.h"

static struct pool *mkpool(const char *net, unsigned prefix, uint32_t max, uint32_t grace)
{
	struct pool_config cfg;
	struct pool *pool = NULL;
	const char *why = NULL;

	pool_config_default(&cfg);
	if (net)
		inet_pton(AF_INET, net, &cfg.net);
	if (prefix)
		cfg.prefix = prefix;
	if (max)
		cfg.max_names = max;
	cfg.grace_ms = grace;
	if (pool_new(&cfg, &pool, &why) < 0)
		printf("# pool_new: %s\n", why);
	return pool;
}

static bool in_range(struct in_addr a, const char *net, unsigned prefix)
{
	struct in_addr n;

	inet_pton(AF_INET, net, &n);
	return (ntohl(a.s_addr) & (~0U << (32 - prefix))) == ntohl(n.s_addr);
}

static void test_default_range(void)
{
	struct pool *pool = mkpool(NULL, 0, 0, 1000);
	struct in_addr a;
	char name[SEG_NAME_MAX + 1];

	T_REQUIRE(pool);
	T_EQ(pool_assign(pool, "server01.corp.example", 30, 0, &a), 0);
	T_CHECK(in_range(a, "100.64.0.0", 10));
	T_EQ(pool_lookup_addr(pool, a, name, sizeof(name)), 0);
	T_STREQ(name, "server01.corp.example");
	T_EQ(pool_count(pool), 1);
	T_EQ(pool_capacity(pool), POOL_DEFAULT_MAX_NAMES);
	pool_free(pool);
}

static void test_distinct_and_stable(void)
{
	struct pool *pool = mkpool(NULL, 0, 0, 1000);
	struct in_addr a[200], again;
	char name[64];
	uint32_t left;

	T_REQUIRE(pool);
	for (int i = 0; i < 200; i++) {
		snprintf(name, sizeof(name), "host%d.corp.example", i);
		T_REQUIRE(pool_assign(pool, name, 30, 0, &a[i]) == 0);
		for (int j = 0; j < i; j++)
			T_REQUIRE(a[i].s_addr != a[j].s_addr);
	}
	for (int i = 0; i < 200; i++) {
		snprintf(name, sizeof(name), "host%d.corp.example", i);
		T_EQ(pool_assign(pool, name, 30, 10000, &again), 0);
		T_EQ(again.s_addr, a[i].s_addr);
		T_EQ(pool_find(pool, name, 10000, &again, &left), 0);
		T_EQ(again.s_addr, a[i].s_addr);
		T_EQ(left, 30);
	}
	T_EQ(pool_count(pool), 200);
	pool_free(pool);
}

static void test_find_only_while_ttl(void)
{
	struct pool *pool = mkpool(NULL, 0, 0, 5000);
	struct in_addr a, b;
	uint32_t left;

	T_REQUIRE(pool);
	T_EQ(pool_find(pool, "x.corp.example", 0, &b, &left), -ENOENT);
	T_EQ(pool_assign(pool, "x.corp.example", 10, 0, &a), 0);
	T_EQ(pool_find(pool, "x.corp.example", 9500, &b, &left), 0);
	T_EQ(left, 1);
	/* TTL over: no longer answered from the pool, but the address is kept in grace. */
	T_EQ(pool_find(pool, "x.corp.example", 10000, &b, &left), -ENOENT);
	T_EQ(pool_expire(pool, 14999), 0);
	T_EQ(pool_assign(pool, "x.corp.example", 10, 14999, &b), 0);
	T_EQ(b.s_addr, a.s_addr);
	T_EQ(pool_expire(pool, 14999 + 10000 + 5000), 1);
	T_EQ(pool_count(pool), 0);
	T_EQ(pool_lookup_addr(pool, a, (char[64]){0}, 64), -ENOENT);
	pool_free(pool);
}

static void test_hold_prevents_expiry_and_reuse(void)
{
	/* A /24 with room for two names: exhaustion is reached quickly. */
	struct pool *pool = mkpool("100.64.7.0", 24, 2, 1000);
	struct in_addr a, b, c;
	char name[64];

	T_REQUIRE(pool);
	T_EQ(pool_assign(pool, "a.corp.example", 1, 0, &a), 0);
	T_EQ(pool_assign(pool, "b.corp.example", 1, 0, &b), 0);
	T_EQ(pool_hold(pool, a), 0);
	T_EQ(pool_hold(pool, a), 0);
	/* Long past TTL + grace: b goes, a stays because it is held. */
	T_EQ(pool_expire(pool, 100000), 1);
	T_EQ(pool_lookup_addr(pool, a, name, sizeof(name)), 0);
	T_STREQ(name, "a.corp.example");
	T_EQ(pool_assign(pool, "c.corp.example", 1, 100000, &c), 0);
	T_CHECK(c.s_addr != a.s_addr);
	/* Full: a held, c live; a new name is refused, not given a's address. */
	T_EQ(pool_assign(pool, "d.corp.example", 1, 200000, &c), 0); /* c expired, reclaimed */
	T_CHECK(c.s_addr != a.s_addr);
	T_EQ(pool_assign(pool, "e.corp.example", 1, 200000, &b), -ENOSPC);
	T_EQ(pool_release(pool, a, 300000), 0);
	T_EQ(pool_expire(pool, 300000), 1); /* d; a is still held once */
	T_EQ(pool_lookup_addr(pool, a, name, sizeof(name)), 0);
	T_EQ(pool_release(pool, a, 300000), 0);
	T_EQ(pool_release(pool, a, 300000), -EINVAL);
	/* The last release starts a grace time even though the TTL ended long ago. */
	T_EQ(pool_expire(pool, 300999), 0);
	T_EQ(pool_expire(pool, 301000), 1);
	T_EQ(pool_count(pool), 0);
	T_EQ(pool_hold(pool, a), -ENOENT);
	pool_free(pool);
}

static void test_exhaustion(void)
{
	struct pool *pool = mkpool("10.9.8.0", 24, 1000, 0);
	struct in_addr a, seen[254];
	char name[64];
	int n = 0;

	T_REQUIRE(pool);
	T_EQ(pool_capacity(pool), 254);
	for (int i = 0; i < 300; i++) {
		int rc;

		snprintf(name, sizeof(name), "n%d.corp.example", i);
		rc = pool_assign(pool, name, 60, 0, &a);
		if (i < 254) {
			T_REQUIRE(rc == 0);
			seen[n++] = a;
		} else {
			T_EQ(rc, -ENOSPC);
		}
	}
	/* Every usable address once; .0 and .255 never. */
	for (int i = 0; i < n; i++) {
		uint32_t host = ntohl(seen[i].s_addr) & 0xff;

		T_CHECK(host != 0 && host != 255);
		T_CHECK(in_range(seen[i], "10.9.8.0", 24));
	}
	pool_free(pool);
}

static void test_range_bounds(void)
{
	struct pool_config cfg;
	struct pool *pool = NULL;
	const char *why = NULL;

	pool_config_default(&cfg);
	cfg.prefix = 25;
	inet_pton(AF_INET, "100.64.0.0", &cfg.net);
	T_EQ(pool_new(&cfg, &pool, &why), -EINVAL);
	T_CHECK(why != NULL);
	cfg.prefix = 16;
	inet_pton(AF_INET, "8.8.0.0", &cfg.net);
	T_EQ(pool_new(&cfg, &pool, &why), -EINVAL);
	inet_pton(AF_INET, "100.64.0.1", &cfg.net);
	T_EQ(pool_new(&cfg, &pool, &why), -EINVAL);
	cfg.prefix = 9;
	inet_pton(AF_INET, "100.0.0.0", &cfg.net); /* wider than 100.64.0.0/10 */
	T_EQ(pool_new(&cfg, &pool, &why), -EINVAL);
	cfg.prefix = 15;
	inet_pton(AF_INET, "198.18.0.0", &cfg.net);
	T_EQ(pool_new(&cfg, &pool, &why), 0);
	T_CHECK(pool != NULL);
	pool_free(pool);
	pool_free(NULL);
}

static void test_addr_outside(void)
{
	struct pool *pool = mkpool(NULL, 0, 0, 0);
	struct in_addr a;
	char name[8];

	T_REQUIRE(pool);
	inet_pton(AF_INET, "100.128.0.1", &a);
	T_CHECK(!pool_contains(pool, a));
	T_EQ(pool_lookup_addr(pool, a, name, sizeof(name)), -ENOENT);
	T_EQ(pool_hold(pool, a), -ENOENT);
	T_EQ(pool_assign(pool, "long-name.corp.example", 5, 0, &a), 0);
	T_EQ(pool_lookup_addr(pool, a, name, sizeof(name)), -ENOSPC);
	pool_free(pool);
}

static void test_v6_mapping(void)
{
	struct pool_config cfg;
	struct pool *pool = NULL;
	const char *why;
	struct in_addr a, back;
	struct in6_addr a6;
	char txt[INET6_ADDRSTRLEN];

	pool_config_default(&cfg);
	T_REQUIRE(pool_new(&cfg, &pool, &why) == 0);
	T_EQ(pool_assign(pool, "v6.corp.example", 5, 0, &a), 0);
	T_EQ(pool_addr6(pool, a, &a6), -EOPNOTSUPP);
	pool_free(pool);

	cfg.v6 = true;
	T_REQUIRE(pool_new(&cfg, &pool, &why) == 0);
	T_EQ(pool_assign(pool, "v6.corp.example", 5, 0, &a), 0);
	T_EQ(pool_addr6(pool, a, &a6), 0);
	inet_ntop(AF_INET6, &a6, txt, sizeof(txt));
	T_CHECK(strncmp(txt, "fd6d:7475:6e00::", 16) == 0);
	T_EQ(pool_addr6_to_v4(pool, &a6, &back), 0);
	T_EQ(back.s_addr, a.s_addr);
	a6.s6_addr[0] = 0xfc;
	T_EQ(pool_addr6_to_v4(pool, &a6, &back), -ENOENT);
	pool_free(pool);
}

static void test_cycles_no_growth(void)
{
	struct pool *pool = mkpool(NULL, 0, 64, 0);
	struct in_addr a;
	char name[64];
	uint64_t now = 0;
	int fails = 0;

	T_REQUIRE(pool);
	/* 100k distinct names through 64 entries: only recycling can make this pass. */
	for (int i = 0; i < 100000; i++) {
		snprintf(name, sizeof(name), "c%d.corp.example", i);
		if (pool_assign(pool, name, 1, now, &a) < 0)
			fails++;
		if (i % 64 == 63) {
			now += 1000;
			pool_expire(pool, now);
			if (pool_count(pool) != 0)
				fails++;
		}
	}
	T_EQ(fails, 0);
	T_EQ(pool_capacity(pool), 64);
	pool_free(pool);
}

int main(void)
{
	T_RUN(test_default_range);
	T_RUN(test_distinct_and_stable);
	T_RUN(test_find_only_while_ttl);
	T_RUN(test_hold_prevents_expiry_and_reuse);
	T_RUN(test_exhaustion);
	T_RUN(test_range_bounds);
	T_RUN(test_addr_outside);
	T_RUN(test_v6_mapping);
	T_RUN(test_cycles_no_growth);
	return t_done();
}
