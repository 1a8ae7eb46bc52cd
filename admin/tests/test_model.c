/* Unit tests of the admin model: validation classes, whole-or-nothing changes, versions,
 * references, import, the compiled snapshot and the policy test. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/admin_int.h"
#include "log.h"
#include "t.h"

static char t_dir[] = "/tmp/mtun-admin-test.XXXXXX";
static struct store *st;
static int t_db_n;

/* A fresh database per test. */
static void db_open(void)
{
	char uri[256];
	const char *why;

	store_close(st);
	st = NULL;
	snprintf(uri, sizeof(uri), "sqlite:%s/t%d.db", t_dir, ++t_db_n);
	if (store_open(uri, &st, &why) < 0 || admin_migrate(st) < 0) {
		fprintf(stderr, "store: %s\n", why);
		exit(1);
	}
}

static int mk(enum admin_kind k, const char *json, struct admin_err *err)
{
	return admin_create(st, "acme", k, json, strlen(json), NULL, err);
}

/* Creates or fails the test. */
#define MK(k, json)                                                                                \
	do {                                                                                       \
		struct admin_err e_ = {0};                                                         \
		int r_ = mk(k, json, &e_);                                                         \
		if (r_)                                                                            \
			t_fail(__FILE__, __LINE__, "create: %s", e_.msg);                          \
		T_REQUIRE(r_ == 0);                                                                \
	} while (0)

/* A tenant with one app: *.corp.example tcp/22 through connector group "paris". */
static void base_model(void)
{
	MK(ADMIN_K_CONNECTOR_GROUP,
	   "{\"name\":\"paris\",\"location\":{\"region\":\"eu\",\"lat\":48.85,\"lon\":2.35}}");
	MK(ADMIN_K_SERVER_GROUP, "{\"name\":\"corp-servers\",\"connector_groups\":[\"paris\"]}");
	MK(ADMIN_K_GROUP, "{\"name\":\"eng\"}");
	MK(ADMIN_K_USER, "{\"name\":\"alice\",\"groups\":[\"eng\"]}");
	MK(ADMIN_K_USER, "{\"name\":\"bob\"}");
	MK(ADMIN_K_SEGMENT, "{\"name\":\"corp\",\"hosts\":[\"*.corp.example\"],"
	                    "\"ports\":[\"tcp/22\"],\"server_groups\":[\"corp-servers\"]}");
	MK(ADMIN_K_RULE, "{\"name\":\"eng-ssh\",\"priority\":10,\"action\":\"allow\","
	                 "\"groups\":[\"eng\"],\"segments\":[\"corp\"]}");
}

/* Expects a refusal with status and a message containing want. */
static void expect_refused(enum admin_kind k, const char *json, int status, const char *want)
{
	struct admin_err err = {0};
	int ret = mk(k, json, &err);

	if (ret == 0 || err.status != status || !strstr(err.msg, want))
		t_fail(__FILE__, __LINE__, "%s -> %d %d \"%s\" (wanted %d \"%s\")", json, ret,
		       err.status, err.msg, status, want);
}

static void test_create_get_versions(void)
{
	struct admin_err err = {0};
	char *out = NULL;
	const char *upd;

	db_open();
	base_model();
	T_REQUIRE(admin_get(st, "acme", ADMIN_K_SEGMENT, "corp", &out, &err) == 0);
	T_CHECK(strstr(out, "\"version\":1") != NULL);
	T_CHECK(strstr(out, "\"name\":\"corp\"") != NULL);
	free(out);

	upd = "{\"version\":1,\"hosts\":[\"*.corp.example\"],\"ports\":[\"tcp/22\",\"tcp/443\"],"
	      "\"server_groups\":[\"corp-servers\"]}";
	T_EQ(admin_update(st, "acme", ADMIN_K_SEGMENT, "corp", upd, strlen(upd), &out, &err), 0);
	T_CHECK(out && strstr(out, "\"version\":2") != NULL);
	free(out);
	out = NULL;
	/* The same stale version again: someone else changed it meanwhile. */
	T_CHECK(admin_update(st, "acme", ADMIN_K_SEGMENT, "corp", upd, strlen(upd), &out, &err) <
	        0);
	T_EQ(err.status, 409);
	T_CHECK(strstr(err.msg, "is at version 2, not 1") != NULL);
	upd = "{\"hosts\":[\"a.corp.example\"],\"ports\":[\"tcp/22\"],\"server_groups\":[\"x\"]}";
	T_CHECK(admin_update(st, "acme", ADMIN_K_SEGMENT, "corp", upd, strlen(upd), &out, &err) <
	        0);
	T_EQ(err.status, 400);
	T_CHECK(strstr(err.msg, "'version' is required") != NULL);
	upd = "{\"version\":0,\"hosts\":[\"a.corp.example\"],\"ports\":[\"tcp/22\"],"
	      "\"server_groups\":[\"corp-servers\"]}";
	T_CHECK(admin_update(st, "acme", ADMIN_K_SEGMENT, "corp", upd, strlen(upd), &out, &err) <
	        0);
	T_CHECK(strstr(err.msg, "version must be 1 or more") != NULL);
	T_CHECK(admin_get(st, "acme", ADMIN_K_SEGMENT, "nope", &out, &err) == -ENOENT);
	T_EQ(err.status, 404);
	expect_refused(ADMIN_K_GROUP, "{\"name\":\"eng\"}", 409, "exists already");
}

/* What the server hands to on_change: the committed model, at the committed generation. */
static void test_kept_snapshot(void)
{
	struct admin_snapshot *s = NULL;
	struct admin_err err = {0};
	const char *g =
	    "{\"name\":\"web\",\"hosts\":[\"www.corp.example\"],\"ports\":[\"tcp/443\"],"
	    "\"server_groups\":[\"corp-servers\"]}";
	int64_t gen;

	db_open();
	base_model();
	T_REQUIRE(admin_apply(st, "acme", ADMIN_OP_CREATE, ADMIN_K_SEGMENT, NULL, g, strlen(g), 0,
	                      NULL, &s, &err) == 0);
	T_REQUIRE(s != NULL);
	T_REQUIRE(admin_generation(st, "acme", &gen) == 0);
	T_EQ(s->generation, gen);
	T_EQ(segset_count(s->segs), 2);
	T_CHECK(s->segpols != NULL);
	admin_snapshot_free(s);
	s = NULL;
	/* A refused change hands nothing over. */
	T_CHECK(admin_apply(st, "acme", ADMIN_OP_CREATE, ADMIN_K_SEGMENT, NULL, g, strlen(g), 0,
	                    NULL, &s, &err) < 0);
	T_CHECK(s == NULL);
}

static void test_validation_classes(void)
{
	db_open();
	base_model();
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"10.0.0.0/33\"],\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "segment 's1': hosts[0]: invalid CIDR \"10.0.0.0/33\"");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"10.1.2.3/16\"],\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "host bits set");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"*corp.example\"],\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "hosts[0]: bad wildcard \"*corp.example\"");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"a.*.example\"],\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "bad wildcard");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"*.corp.example\"],\"ports\":[\"tcp/20-25\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "s1");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"*.corp.example\"],\"ports\":[\"tcp/20-25\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "corp");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"x.example\"],\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"corp-servers\"],\"colour\":\"red\"}",
	               400, "segment 's1': unknown field 'colour'");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":\"x.example\",\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "hosts: expected a list, got a string");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"x.example\"],\"ports\":[\"tcp/22\"],"
	               "\"double_encrypt\":1,\"server_groups\":[\"corp-servers\"]}",
	               400, "double_encrypt: expected a boolean, got an integer");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"x.example\"],\"ports\":[\"tcp/22\"],"
	               "\"server_groups\":[\"nowhere\"]}",
	               400, "server_groups[0]: no server-group named 'nowhere'");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"x.example\"],\"ports\":[\"tcp/0\"],"
	               "\"server_groups\":[\"corp-servers\"]}",
	               400, "ports[0]: bad port range \"tcp/0\"");
	expect_refused(ADMIN_K_SEGMENT,
	               "{\"name\":\"s1\",\"hosts\":[\"b.example\",\"a.example\",\"b.example\"],"
	               "\"ports\":[\"tcp/22\"],\"server_groups\":[\"corp-servers\"]}",
	               400, "hosts[2]: \"b.example\" listed twice");
	expect_refused(ADMIN_K_SEGMENT, "{\"hosts\":[\"x.example\"]}", 400,
	               "field 'name' is required");
	expect_refused(ADMIN_K_SEGMENT, "{\"name\":\"s1\",\"hosts\":[\"x.example\"],", 400,
	               "body is not JSON");
	expect_refused(ADMIN_K_RULE, "{\"name\":\"r\",\"priority\":1,\"action\":\"maybe\"}", 400,
	               "action: \"maybe\" is not one of allow, deny");
	expect_refused(ADMIN_K_RULE,
	               "{\"name\":\"r\",\"priority\":1,\"action\":\"allow\",\"window\":{\"days\":"
	               "[\"mon\"],\"start\":\"09:00\",\"end\":\"25:00\"}}",
	               400, "window.end: a time of day is HH:MM");
	expect_refused(ADMIN_K_RULE,
	               "{\"name\":\"r\",\"priority\":1,\"action\":\"allow\",\"users\":[\"carol\"]}",
	               400, "users[0]: no user named 'carol'");
	expect_refused(ADMIN_K_CONNECTOR_GROUP,
	               "{\"name\":\"c\",\"location\":{\"lat\":91,\"lon\":0}}", 400,
	               "location.lat: must be -90..90");
	expect_refused(ADMIN_K_POSTURE,
	               "{\"name\":\"p\",\"files\":[{\"path\":\"etc/x\",\"sha256\":\"00\"}]}", 400,
	               "files[0].path: an absolute path is expected");
	expect_refused(ADMIN_K_TENANT, "{\"name\":\"other\"}", 400,
	               "you administer tenant 'acme' only");
	/* None of the refused ones left anything behind. */
	struct admin_err err;
	const char *q;
	char *out = NULL;

	T_CHECK(admin_get(st, "acme", ADMIN_K_SEGMENT, "s1", &out, &err) == -ENOENT);
	q = "{\"name\":\"x\",\"hosts\":[1]}";
	T_CHECK(admin_check(ADMIN_K_SEGMENT, q, strlen(q), &err) < 0);
	T_CHECK(strstr(err.msg, "hosts[0]: expected a string") != NULL);
}

static void test_batch_whole_or_nothing(void)
{
	struct admin_err err = {0};
	int64_t g0, g1;
	char *out = NULL;
	const char *b;

	db_open();
	base_model();
	T_REQUIRE(admin_generation(st, "acme", &g0) == 0);
	b = "{\"ops\":["
	    "{\"op\":\"create\",\"kind\":\"group\",\"object\":{\"name\":\"ops\"}},"
	    "{\"op\":\"create\",\"kind\":\"user\",\"object\":{\"name\":\"carol\",\"groups\":["
	    "\"ops\"]}},"
	    "{\"op\":\"create\",\"kind\":\"segment\",\"object\":{\"name\":\"dup\",\"hosts\":"
	    "[\"db.corp.example\"],\"ports\":[\"tcp/22\"],\"server_groups\":[\"corp-servers\"]}}]}";
	/* db.corp.example:22 is inside *.corp.example:22? No: the exact name is more specific,
	 * so this batch passes; the overlap case is the same host twice. */
	T_EQ(admin_batch(st, "acme", b, strlen(b), &out, &err), 0);
	free(out);
	out = NULL;
	b = "{\"ops\":["
	    "{\"op\":\"create\",\"kind\":\"group\",\"object\":{\"name\":\"qa\"}},"
	    "{\"op\":\"delete\",\"kind\":\"user\",\"name\":\"carol\"},"
	    "{\"op\":\"create\",\"kind\":\"segment\",\"object\":{\"name\":\"dup2\",\"hosts\":"
	    "[\"db.corp.example\"],\"ports\":[\"tcp/"
	    "20-30\"],\"server_groups\":[\"corp-servers\"]}}]}";
	T_REQUIRE(admin_generation(st, "acme", &g0) == 0);
	T_CHECK(admin_batch(st, "acme", b, strlen(b), &out, &err) < 0);
	T_EQ(err.status, 400);
	T_CHECK(strstr(err.msg, "dup2") && strstr(err.msg, "dup"));
	/* Nothing of it happened: qa absent, carol still there, generation unchanged. */
	T_CHECK(admin_get(st, "acme", ADMIN_K_GROUP, "qa", &out, &err) == -ENOENT);
	T_CHECK(admin_get(st, "acme", ADMIN_K_USER, "carol", &out, &err) == 0);
	free(out);
	T_REQUIRE(admin_generation(st, "acme", &g1) == 0);
	T_EQ(g0, g1);
	b = "{\"ops\":[{\"op\":\"create\",\"kind\":\"group\",\"object\":{\"name\":\"qa\"}},"
	    "{\"op\":\"frobnicate\",\"kind\":\"user\",\"name\":\"carol\"}]}";
	T_CHECK(admin_batch(st, "acme", b, strlen(b), &out, &err) < 0);
	T_CHECK(strstr(err.msg, "ops[1]") != NULL);
	T_CHECK(admin_get(st, "acme", ADMIN_K_GROUP, "qa", &out, &err) == -ENOENT);
}

static void test_delete_refs(void)
{
	struct admin_err err = {0};
	char *out = NULL;

	db_open();
	base_model();
	T_CHECK(admin_delete(st, "acme", ADMIN_K_SEGMENT, "corp", 0, &err) < 0);
	T_EQ(err.status, 409);
	T_CHECK(strstr(err.msg, "segment 'corp' is used by rule 'eng-ssh'") != NULL);
	T_CHECK(admin_delete(st, "acme", ADMIN_K_RULE, "eng-ssh", 7, &err) < 0);
	T_EQ(err.status, 409);
	T_EQ(admin_delete(st, "acme", ADMIN_K_RULE, "eng-ssh", 1, &err), 0);
	T_EQ(admin_delete(st, "acme", ADMIN_K_SEGMENT, "corp", 0, &err), 0);
	T_CHECK(admin_delete(st, "acme", ADMIN_K_SEGMENT, "corp", 0, &err) == -ENOENT);
	T_EQ(err.status, 404);
	T_CHECK(admin_get(st, "acme", ADMIN_K_SEGMENT, "corp", &out, &err) == -ENOENT);
	/* Other tenants see nothing of acme. */
	T_CHECK(admin_get(st, "beta", ADMIN_K_USER, "alice", &out, &err) == -ENOENT);
}

static void test_snapshot_policy(void)
{
	struct admin_snapshot *s = NULL;
	struct policy_subject subj = {.tenant = "acme"};
	struct policy_decision d;
	const struct segment *seg;
	const struct admin_user *u;
	struct admin_err err = {0};
	const char *eng[] = {"eng"};

	db_open();
	base_model();
	{
		const char *upd =
		    "{\"version\":1,\"hosts\":[\"*.corp.example\"],\"ports\":[\"tcp/22\"],"
		    "\"server_groups\":[\"corp-servers\"],\"health_check\":\"on-access\","
		    "\"double_encrypt\":true}";

		T_REQUIRE(admin_update(st, "acme", ADMIN_K_SEGMENT, "corp", upd, strlen(upd), NULL,
		                       &err) == 0);
	}
	MK(ADMIN_K_TIMEOUT, "{\"name\":\"short\",\"max_age_s\":3600,\"idle_s\":300}");
	MK(ADMIN_K_RULE,
	   "{\"name\":\"night-deny\",\"priority\":5,\"action\":\"deny\","
	   "\"segments\":[\"corp\"],\"window\":{\"days\":[\"sun\",\"mon\",\"tue\","
	   "\"wed\",\"thu\",\"fri\",\"sat\"],\"start\":\"22:00\",\"end\":\"06:00\"}}");
	MK(ADMIN_K_TENANT, "{\"name\":\"acme\",\"timeout\":\"short\"}");
	T_REQUIRE(admin_snapshot_build(st, "acme", &s, &err) == 0);
	T_EQ(segset_count(s->segs), 1);
	T_EQ(policy_rule_count(s->pol), 2);
	T_EQ(s->ncgroups, 1);
	T_CHECK(s->cgroups[0].loc.lat > 48.8 && s->cgroups[0].loc.lat < 48.9);
	seg = segment_match(s->segs, "server01.corp.example", SEG_PROTO_TCP, 22);
	T_REQUIRE(seg != NULL);
	T_CHECK(segment_match(s->segs, "server01.corp.example", SEG_PROTO_TCP, 80) == NULL);
	T_EQ(admin_snapshot_health(s, seg->id), ADMIN_HEALTH_ON_ACCESS);
	T_CHECK(seg->flags & SEG_F_DOUBLE_ENCRYPT);
	u = admin_snapshot_user(s, "alice");
	T_REQUIRE(u && u->ngroups == 1);
	subj.user = "alice";
	subj.groups = eng;
	subj.ngroups = 1;
	policy_eval(s->pol, &subj, seg, 12 * 3600, &d); /* 1970-01-01 12:00 UTC */
	T_EQ(d.action, POLICY_ALLOW);
	T_STREQ(d.rule_name, "eng-ssh");
	T_EQ(d.max_age_s, 3600);
	T_EQ(d.idle_s, 300);
	policy_eval(s->pol, &subj, seg, 23 * 3600, &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.rule_name, "night-deny");
	subj.user = "bob";
	subj.ngroups = 0;
	policy_eval(s->pol, &subj, seg, 12 * 3600, &d);
	T_EQ(d.action, POLICY_DENY);
	T_EQ(d.rule_id, 0);
	admin_snapshot_free(s);
}

static void test_policy_test_api(void)
{
	struct admin_err err = {0};
	char *out = NULL;
	const char *q, *upd;

	db_open();
	base_model();
	q = "{\"user\":\"alice\",\"app\":\"server01.corp.example:22\"}";
	T_REQUIRE(admin_policy_test(st, "acme", q, strlen(q), &out, &err) == 0);
	T_CHECK(strstr(out, "\"action\":\"allow\"") && strstr(out, "\"rule\":\"eng-ssh\""));
	free(out);
	q = "{\"user\":\"bob\",\"app\":\"server01.corp.example:22\"}";
	T_REQUIRE(admin_policy_test(st, "acme", q, strlen(q), &out, &err) == 0);
	T_CHECK(strstr(out, "\"action\":\"deny\"") && strstr(out, "no rule"));
	free(out);
	upd = "{\"version\":1,\"groups\":[\"eng\"],\"disabled\":true}";
	T_REQUIRE(admin_update(st, "acme", ADMIN_K_USER, "alice", upd, strlen(upd), NULL, &err) ==
	          0);
	q = "{\"user\":\"alice\",\"app\":\"server01.corp.example:22\"}";
	T_REQUIRE(admin_policy_test(st, "acme", q, strlen(q), &out, &err) == 0);
	T_CHECK(strstr(out, "\"action\":\"deny\"") && strstr(out, "user is disabled"));
	free(out);
	q = "{\"user\":\"alice\",\"app\":\"server01.corp.example\"}";
	T_CHECK(admin_policy_test(st, "acme", q, strlen(q), &out, &err) < 0);
	T_CHECK(strstr(err.msg, "NAME:PORT") != NULL);
}

static void test_import(void)
{
	struct admin_err err = {0};
	char *out = NULL;
	const char *csv = "name,groups,display_name\n"
			  "dave,eng;ops,\"Dave, the admin\"\n"
			  "erin,,Erin\n";
	const char *bad = "name,groups\nfrank,eng\ngr@ce!,eng\n";

	db_open();
	base_model();
	T_REQUIRE(admin_import(st, "acme", csv, strlen(csv), true, &out, &err) == 0);
	T_CHECK(strstr(out, "\"users\":2") && strstr(out, "\"groups_created\":1"));
	free(out);
	T_REQUIRE(admin_get(st, "acme", ADMIN_K_USER, "dave", &out, &err) == 0);
	T_CHECK(strstr(out, "Dave, the admin") && strstr(out, "\"ops\""));
	free(out);
	/* Again: replaced (version 2), not duplicated. */
	T_REQUIRE(admin_import(st, "acme", csv, strlen(csv), true, &out, &err) == 0);
	free(out);
	T_REQUIRE(admin_get(st, "acme", ADMIN_K_USER, "dave", &out, &err) == 0);
	T_CHECK(strstr(out, "\"version\":2") != NULL);
	free(out);
	T_CHECK(admin_import(st, "acme", bad, strlen(bad), true, &out, &err) < 0);
	T_CHECK(strstr(err.msg, "users[1]") != NULL);
	T_CHECK(admin_get(st, "acme", ADMIN_K_USER, "frank", &out, &err) == -ENOENT);
	T_CHECK(admin_import(st, "acme", "name,shoe\nx,y\n", 14, true, &out, &err) < 0);
	T_CHECK(strstr(err.msg, "unknown column 'shoe'") != NULL);
	T_CHECK(admin_import(st, "acme", "name\n\"x\n", 8, true, &out, &err) < 0);
	T_CHECK(strstr(err.msg, "line 2: unterminated quote") != NULL);
	csv = "{\"groups\":[{\"name\":\"sales\"}],\"users\":[{\"name\":\"gina\",\"groups\":["
	      "\"sales\"]}]}";
	T_REQUIRE(admin_import(st, "acme", csv, strlen(csv), false, &out, &err) == 0);
	free(out);
	T_REQUIRE(admin_get(st, "acme", ADMIN_K_GROUP, "sales", &out, &err) == 0);
	free(out);
}

static void test_posture(void)
{
	struct admin_snapshot *s = NULL;
	struct admin_err err = {0};
	struct admin_posture_file f = {.path = "/etc/corp-agent.conf"};
	const char *procs[] = {"sshd", "corp-edr"};
	struct admin_facts facts = {.kernel = "6.18.0-1-amd64",
	                            .os = "Debian GNU/Linux 12",
	                            .files = &f,
	                            .nfiles = 1,
	                            .processes = procs,
	                            .nprocesses = 2,
	                            .disk_encrypted = true};
	const char *why;

	db_open();
	MK(ADMIN_K_POSTURE, "{\"name\":\"managed\",\"kernel_min\":\"6.1\",\"os\":\"Debian\","
	                    "\"files\":[{\"path\":\"/etc/corp-agent.conf\",\"sha256\":\""
	                    "0101010101010101010101010101010101010101010101010101010101010101\"}],"
	                    "\"processes\":[\"corp-edr\"],\"disk_encryption\":true}");
	T_REQUIRE(admin_snapshot_build(st, "acme", &s, &err) == 0);
	T_REQUIRE(s->npostures == 1);
	memset(f.sha256, 1, sizeof(f.sha256));
	T_CHECK(admin_posture_match(&s->postures[0], &facts, &why));
	f.sha256[31] = 2;
	T_CHECK(!admin_posture_match(&s->postures[0], &facts, &why));
	T_CHECK(strstr(why, "file") != NULL);
	f.sha256[31] = 1;
	facts.kernel = "5.10.0";
	T_CHECK(!admin_posture_match(&s->postures[0], &facts, &why));
	T_CHECK(strstr(why, "kernel") != NULL);
	facts.kernel = "6.1";
	facts.nprocesses = 1;
	T_CHECK(!admin_posture_match(&s->postures[0], &facts, &why));
	T_CHECK(strstr(why, "process") != NULL);
	admin_snapshot_free(s);
}

static void test_list_order(void)
{
	struct admin_err err = {0};
	char *out = NULL;

	db_open();
	base_model();
	MK(ADMIN_K_RULE, "{\"name\":\"a-last\",\"priority\":99,\"action\":\"deny\"}");
	MK(ADMIN_K_RULE, "{\"name\":\"z-first\",\"priority\":1,\"action\":\"deny\"}");
	T_REQUIRE(admin_list(st, "acme", ADMIN_K_RULE, &out, &err) == 0);
	T_CHECK(strstr(out, "z-first") < strstr(out, "eng-ssh"));
	T_CHECK(strstr(out, "eng-ssh") < strstr(out, "a-last"));
	free(out);
}

/* The per-segment index decides exactly as the whole policy does. */
static void test_index_equivalence(void)
{
	struct admin_snapshot *s = NULL;
	struct admin_err err = {0};
	struct admin_segpol *idx;
	const char *names[] = {"server01.corp.example", "db.corp.example", "10.20.3.4",
	                       "www.example.org", "x.lab.example"};
	const char *g1[] = {"eng"}, *g2[] = {"ops"};
	struct policy_subject subj[] = {
	    {.tenant = "acme", .user = "alice", .groups = g1, .ngroups = 1},
	    {.tenant = "acme", .user = "bob", .groups = g2, .ngroups = 1},
	    {.tenant = "acme", .user = "carol"},
	};
	time_t times[] = {12 * 3600, 23 * 3600 + 60};
	unsigned checked = 0;

	db_open();
	base_model();
	MK(ADMIN_K_GROUP, "{\"name\":\"ops\"}");
	MK(ADMIN_K_SEGMENT_GROUP, "{\"name\":\"infra\"}");
	MK(ADMIN_K_SEGMENT,
	   "{\"name\":\"db\",\"hosts\":[\"db.corp.example\"],\"ports\":[\"tcp/22\"],"
	   "\"segment_group\":\"infra\",\"server_groups\":[\"corp-servers\"]}");
	MK(ADMIN_K_SEGMENT, "{\"name\":\"lab\",\"hosts\":[\"10.20.0.0/16\",\"*.lab.example\"],"
	                    "\"ports\":[\"tcp/22\"],\"segment_group\":\"infra\","
	                    "\"server_groups\":[\"corp-servers\"]}");
	MK(ADMIN_K_RULE, "{\"name\":\"ops-infra\",\"priority\":20,\"action\":\"allow\","
	                 "\"groups\":[\"ops\"],\"segment_groups\":[\"infra\"]}");
	MK(ADMIN_K_RULE, "{\"name\":\"late\",\"priority\":1,\"action\":\"deny\",\"window\":"
	                 "{\"days\":[\"thu\"],\"start\":\"23:00\",\"end\":\"24:00\"}}");
	MK(ADMIN_K_USER, "{\"name\":\"carol\"}");
	MK(ADMIN_K_RULE, "{\"name\":\"carol-all\",\"priority\":30,\"action\":\"allow\","
	                 "\"users\":[\"carol\"]}");
	T_REQUIRE(admin_snapshot_build(st, "acme", &s, &err) == 0);
	T_REQUIRE(s->segpols != NULL);
	for (size_t n = 0; n < 5; n++)
		for (size_t u = 0; u < 3; u++)
			for (size_t t = 0; t < 2; t++) {
				struct admin_decision a, b;

				admin_decide(s, NULL, &subj[u], names[n], SEG_PROTO_TCP, 22,
				             times[t], &a);
				idx = s->segpols;
				s->segpols = NULL;
				admin_decide(s, NULL, &subj[u], names[n], SEG_PROTO_TCP, 22,
				             times[t], &b);
				s->segpols = idx;
				T_EQ(a.d.action, b.d.action);
				T_EQ(a.d.rule_id, b.d.rule_id);
				T_CHECK(a.seg == b.seg);
				checked += a.d.action == POLICY_ALLOW;
			}
	/* Some of each: the model is not trivially all-deny. */
	T_CHECK(checked >= 6);
	admin_snapshot_free(s);
}

/* A cached decision is reused within one snapshot and one minute, and only then. */
static void test_decision_cache(void)
{
	struct admin_snapshot *s1 = NULL, *s2 = NULL;
	struct admin_dcache *c = admin_dcache_new(64);
	struct admin_err err = {0};
	struct admin_decision d;
	const char *eng[] = {"eng"};
	struct policy_subject alice = {
	    .tenant = "acme", .user = "alice", .groups = eng, .ngroups = 1};
	const char *upd = "{\"version\":1,\"priority\":10,\"action\":\"deny\",\"groups\":[\"eng\"],"
			  "\"segments\":[\"corp\"]}";

	T_REQUIRE(c != NULL);
	db_open();
	base_model();
	MK(ADMIN_K_RULE,
	   "{\"name\":\"noon\",\"priority\":1,\"action\":\"deny\",\"window\":{\"days\":"
	   "[\"thu\"],\"start\":\"12:01\",\"end\":\"12:02\"}}");
	T_REQUIRE(admin_snapshot_build(st, "acme", &s1, &err) == 0);
	admin_decide(s1, c, &alice, "a.corp.example", SEG_PROTO_TCP, 22, 12 * 3600, &d);
	T_EQ(d.d.action, POLICY_ALLOW);
	admin_decide(s1, c, &alice, "a.corp.example", SEG_PROTO_TCP, 22, 12 * 3600 + 59, &d);
	T_EQ(d.d.action, POLICY_ALLOW);
	/* The next minute opens the deny window: not served from the cache. */
	admin_decide(s1, c, &alice, "a.corp.example", SEG_PROTO_TCP, 22, 12 * 3600 + 60, &d);
	T_EQ(d.d.action, POLICY_DENY);
	T_STREQ(d.d.rule_name, "noon");
	T_REQUIRE(admin_update(st, "acme", ADMIN_K_RULE, "eng-ssh", upd, strlen(upd), NULL, &err) ==
	          0);
	T_REQUIRE(admin_snapshot_build(st, "acme", &s2, &err) == 0);
	T_CHECK(s2->generation > s1->generation);
	admin_decide(s2, c, &alice, "a.corp.example", SEG_PROTO_TCP, 22, 12 * 3600, &d);
	T_EQ(d.d.action, POLICY_DENY);
	T_STREQ(d.d.rule_name, "eng-ssh");
	admin_decide(s2, c, &alice, "b.corp.example", SEG_PROTO_TCP, 80, 12 * 3600, &d);
	T_CHECK(d.seg == NULL && d.d.action == POLICY_DENY);
	admin_dcache_clear(c);
	admin_dcache_free(c);
	admin_snapshot_free(s1);
	admin_snapshot_free(s2);
}

int main(void)
{
	log_init("test_admin_model", LOG_LVL_WARN);
	if (!mkdtemp(t_dir))
		return 1;
	T_RUN(test_create_get_versions);
	T_RUN(test_kept_snapshot);
	T_RUN(test_validation_classes);
	T_RUN(test_batch_whole_or_nothing);
	T_RUN(test_delete_refs);
	T_RUN(test_snapshot_policy);
	T_RUN(test_policy_test_api);
	T_RUN(test_import);
	T_RUN(test_posture);
	T_RUN(test_list_order);
	T_RUN(test_index_equivalence);
	T_RUN(test_decision_cache);
	store_close(st);
	for (int i = 1; i <= t_db_n; i++) {
		char p[300];

		snprintf(p, sizeof(p), "%s/t%d.db", t_dir, i);
		unlink(p);
		strcat(p, "-wal");
		unlink(p);
		p[strlen(p) - 4] = '\0';
		strcat(p, "-shm");
		unlink(p);
	}
	rmdir(t_dir);
	return t_done();
}
