/* Tests for broker/elect.c: candidate order, probe answers, the election cache, failover. */
#include <errno.h>

#include "broker.h"
#include "t.h"

/* Broker in Frankfurt; groups in Frankfurt (1), Paris (2) and New York (3). */
static const struct elect_location fra = {"eu-central", 50.11, 8.68};
static const struct elect_location par = {"eu-west", 48.86, 2.35};
static const struct elect_location nyc = {"us-east", 40.71, -74.01};

static struct elect *new_elect(void)
{
	struct elect_config cfg = {.broker = fra,
	                           .k = 3,
	                           .probe_ms = 500,
	                           .ttl_ms = 60000,
	                           .holddown_ms = 30000,
	                           .cache_max = 1024};
	struct elect *e = elect_new(&cfg);

	if (e && (elect_set_group(e, 1, &fra) < 0 || elect_set_group(e, 2, &par) < 0 ||
	          elect_set_group(e, 3, &nyc) < 0)) {
		elect_free(e);
		return NULL;
	}
	return e;
}

static int conn(struct elect *e, const char *id, uint32_t group, bool healthy, uint32_t load)
{
	struct elect_connector c = {
	    .group = group, .healthy = healthy, .load = load, .capacity = 100};

	snprintf(c.id, sizeof(c.id), "%s", id);
	return elect_set_connector(e, &c);
}

static const uint32_t all_groups[] = {1, 2, 3};

static void distance_sane(void)
{
	double d = elect_distance_km(&fra, &par);

	T_CHECK(d > 470 && d < 490); /* Frankfurt-Paris is about 479 km */
	d = elect_distance_km(&fra, &nyc);
	T_CHECK(d > 6150 && d < 6250);
	T_CHECK(elect_distance_km(&fra, &fra) < 0.001);
}

static void nearest_first(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];

	T_REQUIRE(e);
	T_EQ(conn(e, "ny-1", 3, true, 0), 0);
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_EQ(conn(e, "fra-1", 1, true, 0), 0);
	T_REQUIRE(elect_candidates(e, "db.corp.example", all_groups, 3, 0, c, ELECT_K_MAX) == 3);
	T_STREQ(c[0].id, "fra-1");
	T_STREQ(c[1].id, "par-1");
	T_STREQ(c[2].id, "ny-1");
	T_CHECK(c[0].distance_km < c[1].distance_km && c[1].distance_km < c[2].distance_km);
	elect_free(e);
}

static void ties_by_load_then_id(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];

	T_REQUIRE(e);
	T_EQ(conn(e, "fra-c", 1, true, 10), 0);
	T_EQ(conn(e, "fra-a", 1, true, 50), 0);
	T_EQ(conn(e, "fra-b", 1, true, 10), 0);
	T_REQUIRE(elect_candidates(e, NULL, all_groups, 3, 0, c, ELECT_K_MAX) == 3);
	T_STREQ(c[0].id, "fra-b");
	T_STREQ(c[1].id, "fra-c");
	T_STREQ(c[2].id, "fra-a"); /* busiest last despite its id */
	elect_free(e);
}

static void k_limit(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];
	char id[16];

	T_REQUIRE(e);
	for (int i = 0; i < 7; i++) {
		snprintf(id, sizeof(id), "c%d", i);
		T_EQ(conn(e, id, i % 2 ? 2 : 3, true, 0), 0);
	}
	T_EQ(conn(e, "near", 1, true, 0), 0);
	T_EQ(elect_candidates(e, NULL, all_groups, 3, 0, c, ELECT_K_MAX), 3);
	T_STREQ(c[0].id, "near"); /* added last, still first */
	T_STREQ(c[1].id, "c1");   /* Paris, by id */
	T_STREQ(c[2].id, "c3");
	T_EQ(elect_candidates(e, NULL, all_groups, 3, 0, c, 2), 2);
	elect_free(e);
}

static void unhealthy_full_and_foreign_skipped(void)
{
	static const uint32_t eu[] = {1, 2};
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];

	T_REQUIRE(e);
	T_EQ(conn(e, "fra-down", 1, false, 0), 0);
	T_EQ(conn(e, "fra-full", 1, true, 100), 0);
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_EQ(conn(e, "ny-1", 3, true, 0), 0);
	T_REQUIRE(elect_candidates(e, NULL, eu, 2, 0, c, ELECT_K_MAX) == 1);
	T_STREQ(c[0].id, "par-1");
	/* It comes back: an update by id replaces the record. */
	T_EQ(conn(e, "fra-down", 1, true, 0), 0);
	T_REQUIRE(elect_candidates(e, NULL, eu, 2, 0, c, ELECT_K_MAX) == 2);
	T_STREQ(c[0].id, "fra-down");
	T_EQ(elect_remove_connector(e, "fra-down"), 0);
	T_EQ(elect_remove_connector(e, "fra-down"), -ENOENT);
	T_EQ(elect_candidates(e, NULL, eu, 2, 0, c, ELECT_K_MAX), 1);
	elect_free(e);
}

static void connector_own_location(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];
	struct elect_connector far = {
	    .id = "ny-in-fra-group", .group = 1, .healthy = true, .has_location = true, .loc = nyc};

	T_REQUIRE(e);
	T_EQ(elect_set_connector(e, &far), 0);
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_REQUIRE(elect_candidates(e, NULL, all_groups, 3, 0, c, ELECT_K_MAX) == 2);
	T_STREQ(c[0].id, "par-1");
	far.loc.lat = 91;
	T_EQ(elect_set_connector(e, &far), -EINVAL);
	far.loc = nyc;
	far.group = 99;
	T_EQ(elect_set_connector(e, &far), -EINVAL);
	strcpy(far.id, "bad id");
	far.group = 1;
	T_EQ(elect_set_connector(e, &far), -EINVAL);
	elect_free(e);
}

static void setup3(struct elect *e, struct elect_pending *p, uint64_t now)
{
	struct elect_candidate c[ELECT_K_MAX];
	size_t n;

	conn(e, "fra-1", 1, true, 0);
	conn(e, "par-1", 2, true, 0);
	conn(e, "ny-1", 3, true, 0);
	n = elect_candidates(e, "db.corp.example", all_groups, 3, now, c, ELECT_K_MAX);
	elect_pending_init(e, p, "db.corp.example", c, n, now);
}

static void lowest_latency_wins(void)
{
	struct elect *e = new_elect();
	struct elect_pending p;
	struct elect_result r;

	T_REQUIRE(e);
	setup3(e, &p, 1000);
	T_EQ(p.n, 3);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_OK, 900), 0);
	T_EQ(elect_pending_reply(&p, "par-1", ELECT_OK, 300), 0);
	T_CHECK(!elect_pending_done(&p, 1001));
	T_EQ(elect_pending_result(&p, 1001, &r), -EAGAIN);
	T_EQ(elect_pending_reply(&p, "ny-1", ELECT_OK, 80000), 0);
	T_CHECK(elect_pending_done(&p, 1002));
	T_EQ(elect_pending_result(&p, 1002, &r), 0);
	T_EQ(r.status, ELECT_OK);
	T_STREQ(r.id, "par-1");
	T_EQ(r.group, 2);
	T_EQ(r.latency_us, 300);
	elect_free(e);
}

static void unreachable_never_elected(void)
{
	struct elect *e = new_elect();
	struct elect_pending p;
	struct elect_result r;

	T_REQUIRE(e);
	setup3(e, &p, 0);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_UNREACHABLE, 1), 0);
	T_EQ(elect_pending_reply(&p, "par-1", ELECT_NXDOMAIN, 2), 0);
	T_EQ(elect_pending_reply(&p, "ny-1", ELECT_OK, 90000), 0);
	T_EQ(elect_pending_result(&p, 0, &r), 0);
	T_EQ(r.status, ELECT_OK);
	T_STREQ(r.id, "ny-1");
	elect_free(e);
}

static void all_fail_reason_of_best(void)
{
	struct elect *e = new_elect();
	struct elect_pending p;
	struct elect_result r;

	T_REQUIRE(e);
	setup3(e, &p, 0);
	T_EQ(elect_pending_reply(&p, "par-1", ELECT_UNREACHABLE, 0), 0);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_NXDOMAIN, 0), 0);
	T_EQ(elect_pending_reply(&p, "ny-1", ELECT_ERROR, 0), 0);
	T_EQ(elect_pending_result(&p, 0, &r), 0);
	T_EQ(r.status, ELECT_NXDOMAIN);
	T_STREQ(elect_status_name((enum elect_status)r.status), "nxdomain");
	T_STREQ(r.id, "fra-1");
	elect_free(e);
}

static void deadline_with_partial_answers(void)
{
	struct elect *e = new_elect();
	struct elect_pending p;
	struct elect_result r;

	T_REQUIRE(e);
	setup3(e, &p, 1000);
	T_EQ(elect_pending_reply(&p, "ny-1", ELECT_OK, 95000), 0);
	T_CHECK(!elect_pending_done(&p, 1499));
	T_CHECK(elect_pending_done(&p, 1500));
	T_EQ(elect_pending_result(&p, 1500, &r), 0);
	T_EQ(r.status, ELECT_OK);
	T_STREQ(r.id, "ny-1");

	/* Nothing answered: the nearest timed out. */
	setup3(e, &p, 2000);
	T_EQ(elect_pending_result(&p, 2500, &r), 0);
	T_EQ(r.status, ELECT_TIMEOUT);
	T_STREQ(r.id, "fra-1");
	elect_free(e);
}

static void replies_checked(void)
{
	struct elect *e = new_elect();
	struct elect_pending p;

	T_REQUIRE(e);
	setup3(e, &p, 0);
	T_EQ(elect_pending_reply(&p, "stranger", ELECT_OK, 1), -ENOENT);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_PENDING, 1), -EINVAL);
	T_EQ(elect_pending_reply(&p, "fra-1", (enum elect_status)42, 1), -EINVAL);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_OK, 1), 0);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_OK, 1), -EALREADY);
	T_EQ(p.answered, 1);
	elect_free(e);
}

static void no_connector(void)
{
	static const uint32_t none[] = {2};
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];
	struct elect_pending p;
	struct elect_result r;
	size_t n;

	T_REQUIRE(e);
	T_EQ(conn(e, "fra-1", 1, true, 0), 0);
	n = elect_candidates(e, "x.corp.example", none, 1, 0, c, ELECT_K_MAX);
	T_EQ(n, 0);
	T_EQ(elect_pending_init(e, &p, "x.corp.example", c, n, 0), 0);
	T_EQ(elect_pending_result(&p, 0, &r), 0);
	T_EQ(r.status, ELECT_NO_CONNECTOR);
	elect_free(e);
}

static void cache_hit_and_expiry(void)
{
	struct elect *e = new_elect();
	struct elect_result r = {.status = ELECT_OK, .id = "par-1", .group = 2, .latency_us = 300};
	struct elect_result got;

	T_REQUIRE(e);
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 0, &got));
	T_EQ(elect_cache_put(e, "db.corp.example", &r, 1000), 0);
	T_CHECK(elect_cache_get(e, "db.corp.example", all_groups, 3, 1000 + 59999, &got));
	T_STREQ(got.id, "par-1");
	T_EQ(got.latency_us, 300);
	T_CHECK(!elect_cache_get(e, "db2.corp.example", all_groups, 3, 2000, &got));
	/* Another segment whose groups do not include group 2 does not see it. */
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 1, 2000, &got));
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 1000 + 60000, &got));
	r.status = ELECT_TIMEOUT;
	T_EQ(elect_cache_put(e, "db.corp.example", &r, 0), -EINVAL);
	elect_free(e);
}

static void cache_dropped_when_connector_unhealthy(void)
{
	struct elect *e = new_elect();
	struct elect_result r = {.status = ELECT_OK, .id = "par-1", .group = 2, .latency_us = 300};
	struct elect_result got;

	T_REQUIRE(e);
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_EQ(elect_cache_put(e, "db.corp.example", &r, 0), 0);
	T_EQ(conn(e, "par-1", 2, false, 0), 0);
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 1, &got));
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 2, &got));
	elect_free(e);
}

/* elect_fail falls over to the runner-up of the same probe at once, without a new probe. */
static void failover_on_elect_fail(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];
	struct elect_pending p;
	struct elect_result r, got;
	size_t n;

	T_REQUIRE(e);
	setup3(e, &p, 0);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_OK, 100), 0);
	T_EQ(elect_pending_reply(&p, "par-1", ELECT_OK, 400), 0);
	T_EQ(elect_pending_reply(&p, "ny-1", ELECT_OK, 90000), 0);
	T_EQ(elect_pending_result(&p, 0, &r), 0);
	T_STREQ(r.id, "fra-1");
	T_EQ(elect_cache_put_pending(e, &p, 0), 0);
	T_REQUIRE(elect_cache_get(e, "db.corp.example", all_groups, 3, 1, &got));
	T_STREQ(got.id, "fra-1");

	elect_fail(e, "db.corp.example", "fra-1", 10);
	T_REQUIRE(elect_cache_get(e, "db.corp.example", all_groups, 3, 11, &got));
	T_STREQ(got.id, "par-1");
	elect_fail(e, "db.corp.example", "par-1", 12);
	T_REQUIRE(elect_cache_get(e, "db.corp.example", all_groups, 3, 13, &got));
	T_STREQ(got.id, "ny-1");
	elect_fail(e, "db.corp.example", "ny-1", 14);
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 15, &got));

	/* A new probe skips all three while they are held down for this name ... */
	T_EQ(elect_candidates(e, "db.corp.example", all_groups, 3, 15, c, ELECT_K_MAX), 0);
	/* ... but not for other names. */
	n = elect_candidates(e, "wiki.corp.example", all_groups, 3, 15, c, ELECT_K_MAX);
	T_EQ(n, 3);
	T_STREQ(c[0].id, "fra-1");
	/* After the hold-down fra-1 is the first candidate again. */
	n = elect_candidates(e, "db.corp.example", all_groups, 3, 10 + 30000, c, ELECT_K_MAX);
	T_EQ(n, 1);
	T_STREQ(c[0].id, "fra-1");
	elect_free(e);
}

/* Without runners-up the next RESOLVE probes the remaining candidates. */
static void failover_by_new_probe(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];
	struct elect_result r = {.status = ELECT_OK, .id = "fra-1", .group = 1, .latency_us = 100};
	struct elect_result got;
	size_t n;

	T_REQUIRE(e);
	T_EQ(conn(e, "fra-1", 1, true, 0), 0);
	T_EQ(conn(e, "par-1", 2, true, 0), 0);
	T_EQ(elect_cache_put(e, "db.corp.example", &r, 0), 0);
	elect_fail(e, "db.corp.example", "fra-1", 1);
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 2, &got));
	n = elect_candidates(e, "db.corp.example", all_groups, 3, 2, c, ELECT_K_MAX);
	T_EQ(n, 1);
	T_STREQ(c[0].id, "par-1");
	elect_free(e);
}

/* A held-down connector that succeeds in a new probe is usable again at once. */
static void success_lifts_holddown(void)
{
	struct elect *e = new_elect();
	struct elect_candidate c[ELECT_K_MAX];
	struct elect_pending p;
	struct elect_result r = {.status = ELECT_OK, .id = "fra-1", .group = 1, .latency_us = 100};
	struct elect_result got;
	size_t n;

	T_REQUIRE(e);
	T_EQ(conn(e, "fra-1", 1, true, 0), 0);
	T_EQ(elect_cache_put(e, "db.corp.example", &r, 0), 0);
	elect_fail(e, "db.corp.example", "fra-1", 1);
	T_CHECK(!elect_cache_get(e, "db.corp.example", all_groups, 3, 2, &got));
	T_EQ(elect_candidates(e, "db.corp.example", all_groups, 3, 2, c, ELECT_K_MAX), 0);
	/* The broker probes it anyway (no other candidate), and it answers ok. */
	n = elect_candidates(e, NULL, all_groups, 3, 2, c, ELECT_K_MAX);
	T_REQUIRE(n == 1);
	T_EQ(elect_pending_init(e, &p, "db.corp.example", c, n, 2), 0);
	T_EQ(elect_pending_reply(&p, "fra-1", ELECT_OK, 120), 0);
	T_EQ(elect_cache_put_pending(e, &p, 3), 0);
	T_REQUIRE(elect_cache_get(e, "db.corp.example", all_groups, 3, 4, &got));
	T_STREQ(got.id, "fra-1");
	T_EQ(elect_candidates(e, "db.corp.example", all_groups, 3, 4, c, ELECT_K_MAX), 1);
	elect_free(e);
}

static void cache_bounded(void)
{
	struct elect_config cfg = {
	    .broker = fra, .probe_ms = 500, .ttl_ms = 100, .holddown_ms = 100, .cache_max = 64};
	struct elect *e = elect_new(&cfg);
	struct elect_result r = {.status = ELECT_OK, .id = "fra-1", .group = 1};
	char name[64];
	int full = 0;

	T_REQUIRE(e);
	T_EQ(elect_set_group(e, 1, &fra), 0);
	for (int i = 0; i < 64; i++) {
		snprintf(name, sizeof(name), "h%d.corp.example", i);
		T_EQ(elect_cache_put(e, name, &r, 0), 0);
	}
	T_EQ(elect_cache_count(e), 64);
	T_EQ(elect_cache_put(e, "more.corp.example", &r, 50), -ENOSPC);
	/* Once they expire, a put sweeps them out and the cache takes new names. */
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "n%d.corp.example", i);
		full += elect_cache_put(e, name, &r, 100 + (uint64_t)i * 10) != 0;
	}
	T_EQ(full, 0);
	T_CHECK(elect_cache_count(e) <= 64);
	T_EQ(conn(e, "fra-1", 1, true, 0), 0);
	T_CHECK(elect_cache_get(e, "n999.corp.example", (const uint32_t[]){1}, 1, 10090, &r));
	T_CHECK(!elect_cache_get(e, "n0.corp.example", (const uint32_t[]){1}, 1, 10090, &r));
	elect_free(e);
}

static void config_checked(void)
{
	struct elect_config cfg = {.broker = fra, .k = ELECT_K_MAX + 1, .cache_max = 16};

	T_CHECK(elect_new(&cfg) == NULL);
	cfg.k = 0;
	cfg.broker.lon = 181;
	T_CHECK(elect_new(&cfg) == NULL);
	cfg.broker = fra;
	cfg.cache_max = 0;
	T_CHECK(elect_new(&cfg) == NULL);
	elect_free(NULL);
}

int main(void)
{
	T_RUN(distance_sane);
	T_RUN(nearest_first);
	T_RUN(ties_by_load_then_id);
	T_RUN(k_limit);
	T_RUN(unhealthy_full_and_foreign_skipped);
	T_RUN(connector_own_location);
	T_RUN(lowest_latency_wins);
	T_RUN(unreachable_never_elected);
	T_RUN(all_fail_reason_of_best);
	T_RUN(deadline_with_partial_answers);
	T_RUN(replies_checked);
	T_RUN(no_connector);
	T_RUN(cache_hit_and_expiry);
	T_RUN(cache_dropped_when_connector_unhealthy);
	T_RUN(failover_on_elect_fail);
	T_RUN(success_lifts_holddown);
	T_RUN(failover_by_new_probe);
	T_RUN(cache_bounded);
	T_RUN(config_checked);
	return t_done();
}
