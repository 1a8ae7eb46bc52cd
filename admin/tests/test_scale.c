/* The compile at scale: segment and rule ids indexed (not scanned), with the same refusals
 * and messages as before, and a large model compiled through the store. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin_int.h"
#include "log.h"
#include "t.h"

#define NSG  300
#define NSEG 3000
#define NRUL 3000

static const struct seg_ports tcp22 = {.proto = SEG_PROTO_TCP, .lo = 22, .hi = 22};

static int add_seg(struct segset *set, uint32_t id, const char *host, uint32_t sg, char *err,
                   size_t errlen)
{
	char name[32];
	const char *hosts[] = {host};
	struct segment_spec spec = {.id = id,
	                            .name = name,
	                            .tenant = "acme",
	                            .hosts = hosts,
	                            .nhosts = 1,
	                            .ports = &tcp22,
	                            .nports = 1,
	                            .server_groups = &sg,
	                            .nserver_groups = 1};

	snprintf(name, sizeof(name), "s%u", id);
	return segset_add(set, &spec, err, errlen);
}

static void test_segset_ids_at_scale(void)
{
	struct segset *set = segset_new("acme");
	char err[SEG_ERR_MAX], host[64];
	uint32_t cg = 1, out[4];
	unsigned found = 0;

	T_REQUIRE(set);
	for (uint32_t i = 1; i <= NSG; i++)
		T_EQ(segset_add_server_group(set, 1000000 + i * 7, &cg, 1), 0);
	T_EQ(segset_add_server_group(set, 1000000 + 7 * 150, &cg, 1), -EEXIST);
	/* Ids spread out, not dense: the map must not depend on them being small. */
	for (uint32_t i = 1; i <= NSEG; i++) {
		snprintf(host, sizeof(host), "app%u.corp.example", i);
		if (add_seg(set, i * 2654435761U % 4000000000U + 1, host,
		            1000000 + (i % NSG + 1) * 7, err, sizeof(err)) != 0) {
			t_fail(__FILE__, __LINE__, "segment %u: %s", i, err);
			break;
		}
	}
	T_EQ(segset_count(set), NSEG);
	for (uint32_t i = 1; i <= NSEG; i++) {
		const struct segment *s = segset_find(set, i * 2654435761U % 4000000000U + 1);

		found += s && s == segset_nth(set, i - 1);
	}
	T_EQ(found, NSEG);
	T_CHECK(segset_find(set, 0) == NULL);
	T_CHECK(segset_find(set, 4000000001U) == NULL);

	/* The refusals and their messages, at the end of a large set. */
	T_EQ(add_seg(set, 1 * 2654435761U % 4000000000U + 1, "new.corp.example", 1000000 + 7, err,
	             sizeof(err)),
	     -EEXIST);
	T_CHECK(strstr(err, "already used") != NULL);
	T_EQ(add_seg(set, 4000000002U, "app2999.corp.example", 1000000 + 7, err, sizeof(err)),
	     -EEXIST);
	T_CHECK(strstr(err, "overlaps segment s") != NULL);
	T_EQ(add_seg(set, 4000000003U, "other.corp.example", 999, err, sizeof(err)), -EINVAL);
	T_CHECK(strstr(err, "unknown server group 999") != NULL);
	T_EQ(segset_count(set), NSEG);

	/* Lookups still reach the server groups' connector groups. */
	T_REQUIRE(segment_match(set, "app77.corp.example", SEG_PROTO_TCP, 22));
	T_EQ(segment_connector_groups(
		 set, segment_match(set, "app77.corp.example", SEG_PROTO_TCP, 22), out, 4),
	     1);
	T_EQ(out[0], 1);
	segset_free(set);
}

static void test_policy_ids_at_scale(void)
{
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_rule_spec spec = {.action = POLICY_ALLOW};
	const char *users[1];
	char name[32], user[32], err[SEG_ERR_MAX];
	struct policy_subject subj = {.tenant = "acme", .user = user};
	struct segset *set = segset_new("acme");
	const struct segment *seg;
	struct policy_decision d;
	uint32_t cg = 1;

	T_REQUIRE(pol && set);
	T_REQUIRE(segset_add_server_group(set, 1, &cg, 1) == 0);
	T_REQUIRE(add_seg(set, 1, "app.corp.example", 1, err, sizeof(err)) == 0);
	seg = segset_find(set, 1);
	spec.name = name;
	spec.users = users;
	spec.nusers = 1;
	users[0] = user;
	for (uint32_t i = 1; i <= NRUL; i++) {
		snprintf(name, sizeof(name), "r%u", i);
		snprintf(user, sizeof(user), "u%u", i);
		spec.id = i * 40503U + 17;
		if (policy_add_rule(pol, &spec, err, sizeof(err)) != 0) {
			t_fail(__FILE__, __LINE__, "rule %u: %s", i, err);
			break;
		}
		/* A duplicate is refused while the policy is small and once the map is built. */
		if (i == 3 || i == 40 || i == NRUL) {
			snprintf(name, sizeof(name), "dup%u", i);
			spec.id = 2 * 40503U + 17;
			T_EQ(policy_add_rule(pol, &spec, err, sizeof(err)), -EEXIST);
			T_STREQ(err, i == 3    ? "rule dup3: id 81023 already used by rule r2"
			             : i == 40 ? "rule dup40: id 81023 already used by rule r2"
			                       : "rule dup3000: id 81023 already used by rule r2");
		}
	}
	T_EQ(policy_rule_count(pol), NRUL);
	/* First match wins: each user gets its own rule, in order. */
	for (uint32_t i = 1; i <= NRUL; i += 97) {
		snprintf(user, sizeof(user), "u%u", i);
		policy_eval(pol, &subj, seg, 0, &d);
		T_EQ(d.action, POLICY_ALLOW);
		T_EQ(d.rule_id, i * 40503U + 17);
	}
	snprintf(user, sizeof(user), "nobody");
	policy_eval(pol, &subj, seg, 0, &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.reason, "no rule allows");
	policy_free(pol);
	segset_free(set);
}

/* Appends to a growing buffer; aborts the test program on ENOMEM. */
static void put(char **b, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char **b, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(*b + *len, *cap - *len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < *cap - *len)
			break;
		*cap = *cap * 2 + (size_t)n;
		*b = realloc(*b, *cap);
		if (!*b)
			abort();
	}
	*len += (size_t)n;
}

static void test_compile_large_model(void)
{
	char dir[] = "/tmp/mtun-admin-scale.XXXXXX", uri[128], path[96], *b, *out = NULL;
	size_t len = 0, cap = 1 << 20, n = 0;
	struct admin_snapshot *s = NULL;
	struct admin_err err = {0};
	struct store *st = NULL;
	const char *why, *g[] = {"g7"};
	struct policy_subject subj = {.tenant = "acme", .user = "u7", .groups = g, .ngroups = 1};
	struct admin_decision d;
	struct timespec t0, t1;

	b = malloc(cap);
	T_REQUIRE(b && mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/admin.db", dir);
	snprintf(uri, sizeof(uri), "sqlite:%s", path);
	T_REQUIRE(store_open(uri, &st, &why) == 0 && admin_migrate(st) == 0);
	put(&b, &len, &cap, "{\"ops\":[");
#define SEP() put(&b, &len, &cap, "%s", n++ ? "," : "")
	SEP();
	put(&b, &len, &cap,
	    "{\"op\":\"create\",\"kind\":\"connector-group\",\"object\":{\"name\":\"cg\","
	    "\"location\":{\"lat\":48.85,\"lon\":2.35}}},"
	    "{\"op\":\"create\",\"kind\":\"server-group\",\"object\":{\"name\":\"sg\","
	    "\"connector_groups\":[\"cg\"]}},"
	    "{\"op\":\"create\",\"kind\":\"timeout\",\"object\":{\"name\":\"short\","
	    "\"max_age_s\":600,\"idle_s\":60}},"
	    "{\"op\":\"create\",\"kind\":\"timeout\",\"object\":{\"name\":\"long\","
	    "\"max_age_s\":86400,\"idle_s\":3600}}");
	for (unsigned i = 0; i < 100; i++) {
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"group\",\"object\":{\"name\":\"g%u\"}}", i);
	}
	for (unsigned i = 0; i < NSEG; i++) {
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"segment\",\"object\":{\"name\":\"s%u\","
		    "\"hosts\":[\"app%u.corp.example\"],\"ports\":[\"tcp/22\"],"
		    "\"server_groups\":[\"sg\"]}}",
		    i, i);
	}
	for (unsigned i = 0; i < NRUL; i++) {
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"rule\",\"object\":{\"name\":\"r%u\","
		    "\"priority\":%u,\"action\":\"allow\",\"groups\":[\"g%u\"],"
		    "\"segments\":[\"s%u\"],\"timeout\":\"%s\"}}",
		    i, 10 + i, i % 100, i, i % 2 ? "long" : "short");
	}
	put(&b, &len, &cap, "]}");
	if (admin_batch(st, "acme", b, len, &out, &err) != 0)
		t_fail(__FILE__, __LINE__, "batch: %s", err.msg);
	T_REQUIRE(out);
	free(out);
	free(b);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	T_REQUIRE(admin_snapshot_build(st, "acme", &s, &err) == 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("# %u segments, %u rules compiled in %.0f ms\n", NSEG, NRUL,
	       (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
	T_EQ(segset_count(s->segs), NSEG);
	T_EQ(policy_rule_count(s->pol), NRUL);
	T_CHECK(s->segpols != NULL);
	/* r7 (odd: the long timeout) and r107 allow g7 on their own segments only. */
	admin_decide(s, NULL, &subj, "app7.corp.example", SEG_PROTO_TCP, 22, 0, &d);
	T_EQ(d.d.action, POLICY_ALLOW);
	T_STREQ(d.d.rule_name, "r7");
	T_EQ(d.d.max_age_s, 86400);
	T_EQ(d.d.idle_s, 3600);
	admin_decide(s, NULL, &subj, "app107.corp.example", SEG_PROTO_TCP, 22, 0, &d);
	T_STREQ(d.d.rule_name, "r107");
	admin_decide(s, NULL, &subj, "app8.corp.example", SEG_PROTO_TCP, 22, 0, &d);
	T_EQ(d.d.action, POLICY_DENY);
	subj.groups = (const char *[]){"g8"};
	admin_decide(s, NULL, &subj, "app8.corp.example", SEG_PROTO_TCP, 22, 0, &d);
	T_STREQ(d.d.rule_name, "r8");
	T_EQ(d.d.max_age_s, 600);
	T_EQ(d.d.idle_s, 60);
	admin_snapshot_free(s);

	/* An overlapping segment is still refused, the message naming both segments. */
	{
		const char *seg = "{\"name\":\"dup\",\"hosts\":[\"app2999.corp.example\"],"
				  "\"ports\":[\"tcp/1-100\"],\"server_groups\":[\"sg\"]}";

		T_EQ(admin_create(st, "acme", ADMIN_K_SEGMENT, seg, strlen(seg), NULL, &err),
		     -EEXIST);
		T_EQ(err.status, 400);
		if (!strstr(err.msg, "overlaps segment") || !strstr(err.msg, "s2999") ||
		    !strstr(err.msg, "dup"))
			t_fail(__FILE__, __LINE__, "message: %s", err.msg);
	}
	store_close(st);
	unlink(path);
	strcat(path, "-wal");
	unlink(path);
	path[strlen(path) - 4] = '\0';
	strcat(path, "-shm");
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	log_init("test_admin_scale", LOG_LVL_WARN);
	T_RUN(test_segset_ids_at_scale);
	T_RUN(test_policy_ids_at_scale);
	T_RUN(test_compile_large_model);
	return t_done();
}
