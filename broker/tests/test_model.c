/*
 * Tests for broker/model.c: live mtunnels re-decided on a model swap, timeouts, time
 * windows, posture facts into the subject's profiles, activity records, the sessions list.
 * The session layer is replaced by the stubs below (bd_end ends and records).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "activity.h"
#include "admin/admin.h"
#include "broker.h"
#include "t.h"

#define T_TUE_10H 1795514400 /* 2026-11-24 10:00 UTC, a Tuesday */

static char t_dir[] = "/tmp/mtun-bmodel-test.XXXXXX";
static struct store *t_st;
static int t_db_n;

/* The stubs' record of what the daemon would have done. */
static struct {
	size_t ended, configs, frames;
	enum mt_status last_st;
	char last_reason[MT_TEXT_MAX + 1];
	uint8_t frame[MT_FRAME_MAX];
	size_t frame_len;
} rec;
static uint64_t t_now_ms = 1000000;

uint64_t bd_now_ms(void)
{
	return t_now_ms;
}

struct bpeer *leg_peer(const struct mtunnel *mt, int leg)
{
	return mt->leg[leg].conn ? bconn_of(mt->leg[leg].conn)->p : NULL;
}

void bd_end(struct bd *bd, struct mtunnel *mt, enum mt_status st, const char *reason, int skip_leg)
{
	rec.ended++;
	rec.last_st = st;
	snprintf(rec.last_reason, sizeof(rec.last_reason), "%s", reason);
	bd_mt_finish(bd, mt, st, reason);
	mtunnel_free(bd->t, mt);
}

struct bopen *bd_find_open(struct bd *bd, const struct mtunnel *mt)
{
	return NULL;
}

int bd_send_config(struct bd *bd, struct bpeer *p, bool force)
{
	rec.configs++;
	return 0;
}

int bpeer_send_frame(struct bpeer *p, const uint8_t *frame, size_t len)
{
	rec.frames++;
	if (len <= sizeof(rec.frame)) {
		memcpy(rec.frame, frame, len);
		rec.frame_len = len;
	}
	return 0;
}

void bd_crl_set_admin(struct bd *bd, struct admin_server *srv)
{
}

int bd_model_change(struct bd *bd, struct bd_cfg *cfg, struct admin_snapshot *snap,
                    uint64_t commit_ms)
{
	return -ENOSYS;
}

static void db_open(void)
{
	char uri[256];
	const char *why = NULL;

	store_close(t_st);
	t_st = NULL;
	snprintf(uri, sizeof(uri), "sqlite:%s/t%d.db", t_dir, ++t_db_n);
	if (store_open(uri, &t_st, &why) < 0 || admin_migrate(t_st) < 0) {
		fprintf(stderr, "store: %s\n", why ? why : "migrate");
		exit(1);
	}
}

static void mk(enum admin_kind k, const char *json)
{
	struct admin_err err = {0};

	if (admin_create(t_st, "acme", k, json, strlen(json), NULL, &err) < 0) {
		fprintf(stderr, "create %s: %s\n", json, err.msg);
		exit(1);
	}
}

static void rm(enum admin_kind k, const char *name)
{
	struct admin_err err = {0};

	if (admin_delete(t_st, "acme", k, name, 0, &err) < 0) {
		fprintf(stderr, "delete %s: %s\n", name, err.msg);
		exit(1);
	}
}

static struct admin_snapshot *snap(void)
{
	struct admin_snapshot *s = NULL;
	struct admin_err err = {0};

	if (admin_snapshot_build(t_st, "acme", &s, &err) < 0) {
		fprintf(stderr, "snapshot: %s\n", err.msg);
		exit(1);
	}
	return s;
}

/* alice (eng) may ssh to *.corp.example; bob to wiki.corp.example:80 by name. */
static void base_model(void)
{
	mk(ADMIN_K_CONNECTOR_GROUP,
	   "{\"name\":\"paris\",\"location\":{\"lat\":48.85,\"lon\":2.35}}");
	mk(ADMIN_K_SERVER_GROUP, "{\"name\":\"corp-servers\",\"connector_groups\":[\"paris\"]}");
	mk(ADMIN_K_GROUP, "{\"name\":\"eng\"}");
	mk(ADMIN_K_USER, "{\"name\":\"alice\",\"groups\":[\"eng\"]}");
	mk(ADMIN_K_USER, "{\"name\":\"bob\"}");
	mk(ADMIN_K_SEGMENT, "{\"name\":\"corp\",\"hosts\":[\"*.corp.example\"],"
	                    "\"ports\":[\"tcp/22\"],\"server_groups\":[\"corp-servers\"]}");
	mk(ADMIN_K_SEGMENT, "{\"name\":\"wiki\",\"hosts\":[\"wiki.corp.example\"],"
	                    "\"ports\":[\"tcp/80\"],\"server_groups\":[\"corp-servers\"]}");
	mk(ADMIN_K_RULE, "{\"name\":\"eng-ssh\",\"priority\":10,\"action\":\"allow\","
	                 "\"groups\":[\"eng\"],\"segments\":[\"corp\"]}");
	mk(ADMIN_K_RULE, "{\"name\":\"bob-wiki\",\"priority\":20,\"action\":\"allow\","
	                 "\"users\":[\"bob\"],\"segments\":[\"wiki\"]}");
}

/* A broker with no sessions: one mtunnel table, the model, and fake agents. */
struct tb {
	struct bd bd;
	struct bd_cfg cfg;
	struct bpeer agents[2];
};

static void tb_init(struct tb *t, struct admin_snapshot *s)
{
	memset(t, 0, sizeof(*t));
	memset(&rec, 0, sizeof(rec));
	t->cfg.tenant = "acme";
	t->cfg.advertise = "broker1:8443";
	t->bd.cfg = &t->cfg;
	t->bd.snap = s;
	t->bd.t = mt_table_new(1024);
	T_REQUIRE(t->bd.t);
	for (int i = 0; i < 2; i++) {
		struct bpeer *p = &t->agents[i];

		p->bd = &t->bd;
		p->kind = BP_AGENT;
		snprintf(p->id.user, sizeof(p->id.user), "%s", i ? "bob" : "alice");
		snprintf(p->id.id, sizeof(p->id.id), "%s", i ? "bob-laptop" : "alice-laptop");
		mt_conn_init(&p->own.mc, 0);
		p->own.p = p;
		T_REQUIRE(bd_agent_init(&t->bd, p, i ? 0 : MT_CAP_POSTURE) == 0);
		p->next = i == 0 ? &t->agents[1] : NULL;
	}
	t->bd.peers = &t->agents[0];
}

static void tb_free(struct tb *t)
{
	for (int i = 0; i < 2; i++) {
		struct mtunnel *mt, *tmp;

		for_each_mtunnel (&t->agents[i].own.mc, mt, tmp) {
			free(mt->meta);
			mt->meta = NULL;
			mtunnel_free(t->bd.t, mt);
		}
		bd_agent_free(&t->agents[i]);
	}
	mt_table_free(t->bd.t);
	admin_snapshot_free(t->bd.snap);
	activity_close(t->bd.act);
}

/* An mtunnel as bd_on_open admits it: decided, with its side record; NULL if refused. */
static struct mtunnel *tb_open(struct tb *t, int agent, const char *name, uint16_t port)
{
	struct bpeer *p = &t->agents[agent];
	struct policy_decision d;
	const struct segment *seg;
	struct mtunnel *mt;
	int err = 0;

	bd_decide(&t->bd, p, name, SEG_PROTO_TCP, port, T_TUE_10H, &seg, &d);
	if (!seg || d.action != POLICY_ALLOW)
		return NULL;
	mt = mtunnel_new(t->bd.t, &p->own.mc, 0, seg->id, d.rule_id, bd_now_ms(), &err);
	if (!mt)
		return NULL;
	mt->meta = bd_mt_meta_new(&t->bd, name, SEG_PROTO_TCP, port, seg, &d);
	if (!mt->meta) {
		mtunnel_free(t->bd.t, mt);
		return NULL;
	}
	mtunnel_set_open(mt, 65536, 65536);
	return mt;
}

static void swap(struct tb *t, struct admin_snapshot *s)
{
	bool query;

	admin_snapshot_free(t->bd.snap);
	t->bd.snap = s;
	bd_model_posture_swap(&t->bd, &query);
}

/* A deny rule added above alice's allow ends her open mtunnels with its name; bob's stay. */
static void test_swap_deny_rule(void)
{
	struct tb t;
	size_t closed;

	db_open();
	base_model();
	tb_init(&t, snap());
	T_REQUIRE(tb_open(&t, 0, "db.corp.example", 22));
	T_REQUIRE(tb_open(&t, 0, "git.corp.example", 22));
	T_REQUIRE(tb_open(&t, 1, "wiki.corp.example", 80));
	T_REQUIRE(!tb_open(&t, 1, "db.corp.example", 22));
	mk(ADMIN_K_RULE, "{\"name\":\"freeze\",\"priority\":1,\"action\":\"deny\","
	                 "\"users\":[\"alice\"],\"segments\":[\"corp\"]}");
	swap(&t, snap());
	closed = bd_redecide(&t.bd, &t.agents[0], BD_CAUSE_MODEL, NULL) +
	         bd_redecide(&t.bd, &t.agents[1], BD_CAUSE_MODEL, NULL);
	T_EQ(closed, 2);
	T_EQ(rec.ended, 2);
	T_EQ(rec.last_st, MT_STATUS_DENIED);
	T_STREQ(rec.last_reason, "policy changed: denied by rule 'freeze'");
	T_EQ(t.agents[0].own.mc.count, 0);
	T_EQ(t.agents[1].own.mc.count, 1);
	tb_free(&t);
}

/* The allow rule removed: "no rule allows"; the segment removed: "segment removed". */
static void test_swap_rule_and_segment_removed(void)
{
	struct tb t;

	db_open();
	base_model();
	tb_init(&t, snap());
	T_REQUIRE(tb_open(&t, 0, "db.corp.example", 22));
	T_REQUIRE(tb_open(&t, 1, "wiki.corp.example", 80));
	rm(ADMIN_K_RULE, "eng-ssh");
	swap(&t, snap());
	T_EQ(bd_redecide(&t.bd, &t.agents[0], BD_CAUSE_MODEL, NULL), 1);
	T_STREQ(rec.last_reason, "policy changed: no rule allows");
	rm(ADMIN_K_RULE, "bob-wiki");
	rm(ADMIN_K_SEGMENT, "wiki");
	swap(&t, snap());
	T_EQ(bd_redecide(&t.bd, &t.agents[1], BD_CAUSE_MODEL, NULL), 1);
	T_STREQ(rec.last_reason, "policy changed: segment removed");
	T_EQ(rec.ended, 2);
	tb_free(&t);
}

/* A change that still allows it keeps it, with the new rule's timeouts. */
static void test_swap_keeps_allowed(void)
{
	struct mtunnel *mt;
	struct tb t;

	db_open();
	base_model();
	tb_init(&t, snap());
	T_REQUIRE((mt = tb_open(&t, 0, "db.corp.example", 22)));
	T_EQ(mt->meta->max_age_s, 0);
	T_EQ(t.bd.ntimed, 0);
	mk(ADMIN_K_TIMEOUT, "{\"name\":\"short\",\"max_age_s\":60,\"idle_s\":10}");
	mk(ADMIN_K_RULE, "{\"name\":\"eng-ssh-timed\",\"priority\":5,\"action\":\"allow\","
	                 "\"groups\":[\"eng\"],\"segments\":[\"corp\"],\"timeout\":\"short\"}");
	swap(&t, snap());
	T_EQ(bd_redecide(&t.bd, &t.agents[0], BD_CAUSE_MODEL, NULL), 0);
	T_EQ(rec.ended, 0);
	T_STREQ(mt->meta->rule, "eng-ssh-timed");
	T_EQ(mt->meta->max_age_s, 60);
	T_EQ(mt->meta->idle_s, 10);
	T_EQ(t.bd.ntimed, 1);
	tb_free(&t);
}

/* A disabled user is refused with that reason, and loses what is open. */
static void test_disabled_user(void)
{
	struct policy_decision d;
	const struct segment *seg;
	struct admin_err err = {0};
	const char *upd =
	    "{\"name\":\"alice\",\"groups\":[\"eng\"],\"disabled\":true,\"version\":1}";
	struct tb t;

	db_open();
	base_model();
	tb_init(&t, snap());
	T_REQUIRE(tb_open(&t, 0, "db.corp.example", 22));
	T_REQUIRE(admin_update(t_st, "acme", ADMIN_K_USER, "alice", upd, strlen(upd), NULL, &err) ==
	          0);
	swap(&t, snap());
	bd_decide(&t.bd, &t.agents[0], "db.corp.example", SEG_PROTO_TCP, 22, T_TUE_10H, &seg, &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.reason, "user is disabled");
	T_EQ(bd_redecide(&t.bd, &t.agents[0], BD_CAUSE_MODEL, NULL), 1);
	T_STREQ(rec.last_reason, "policy changed: user is disabled");
	tb_free(&t);
}

/* Age and idle end an open mtunnel with their reasons; an opening one waits. */
static void test_timeouts(void)
{
	struct bmt x = {.start_ms = 1000, .max_age_s = 60};
	char reason[MT_TEXT_MAX + 1] = "";

	T_CHECK(!bd_mt_expired(&x, MTS_OPEN, 1000, 60999, reason, sizeof(reason)));
	T_CHECK(bd_mt_expired(&x, MTS_OPEN, 60000, 61000, reason, sizeof(reason)));
	T_STREQ(reason, "maximum session age 60s reached");
	T_CHECK(!bd_mt_expired(&x, MTS_OPENING, 1000, 99000, reason, sizeof(reason)));
	x = (struct bmt){.start_ms = 1000, .idle_s = 10};
	T_CHECK(!bd_mt_expired(&x, MTS_OPEN, 5000, 14999, reason, sizeof(reason)));
	T_CHECK(bd_mt_expired(&x, MTS_OPEN, 5000, 15000, reason, sizeof(reason)));
	T_STREQ(reason, "idle for 10s");
	x = (struct bmt){.start_ms = 1000};
	T_CHECK(!bd_mt_expired(&x, MTS_OPEN, 0, UINT64_MAX / 2, reason, sizeof(reason)));
}

/* A rule's window: allowed inside, and a live mtunnel ends when the clock leaves it. */
static void test_time_window(void)
{
	struct admin_snapshot *s;
	struct admin_decision in, out;
	struct policy_subject alice = {.tenant = "acme", .user = "alice"};
	const char *const eng[] = {"eng"};
	struct bmt x = {0};
	char reason[MT_TEXT_MAX + 1] = "";

	db_open();
	base_model();
	rm(ADMIN_K_RULE, "eng-ssh");
	mk(ADMIN_K_RULE, "{\"name\":\"office-hours\",\"priority\":10,\"action\":\"allow\","
	                 "\"groups\":[\"eng\"],\"segments\":[\"corp\"],\"window\":{\"days\":"
	                 "[\"mon\",\"tue\",\"wed\",\"thu\",\"fri\"],\"start\":\"09:00\","
	                 "\"end\":\"17:00\"}}");
	s = snap();
	alice.groups = eng;
	alice.ngroups = 1;
	admin_decide(s, NULL, &alice, "db.corp.example", SEG_PROTO_TCP, 22, T_TUE_10H, &in);
	T_EQ(in.d.action, POLICY_ALLOW);
	T_CHECK(bd_mt_recheck(&x, in.seg, &in.d, BD_CAUSE_MODEL, NULL, reason, sizeof(reason)));
	T_STREQ(x.rule, "office-hours");
	T_STREQ(x.segment, "corp");
	admin_decide(s, NULL, &alice, "db.corp.example", SEG_PROTO_TCP, 22, T_TUE_10H + 8 * 3600,
	             &out);
	T_EQ(out.d.action, POLICY_DENY);
	T_CHECK(!bd_mt_recheck(&x, out.seg, &out.d, BD_CAUSE_CLOCK, NULL, reason, sizeof(reason)));
	T_STREQ(reason, "outside the time window of rule 'office-hours'");
	admin_snapshot_free(s);
	/* A deny rule whose window opens ends it with that rule's name. */
	mk(ADMIN_K_RULE, "{\"name\":\"maintenance\",\"priority\":1,\"action\":\"deny\","
	                 "\"segments\":[\"corp\"],\"window\":{\"days\":[\"tue\"],"
	                 "\"start\":\"10:30\",\"end\":\"11:00\"}}");
	s = snap();
	admin_decide(s, NULL, &alice, "db.corp.example", SEG_PROTO_TCP, 22, T_TUE_10H, &in);
	T_EQ(in.d.action, POLICY_ALLOW);
	admin_decide(s, NULL, &alice, "db.corp.example", SEG_PROTO_TCP, 22, T_TUE_10H + 1800, &out);
	T_CHECK(!bd_mt_recheck(&x, out.seg, &out.d, BD_CAUSE_CLOCK, NULL, reason, sizeof(reason)));
	T_STREQ(reason, "denied by rule 'maintenance' (its time window began)");
	admin_snapshot_free(s);
}

/* An encoded POSTURE as the agent sends it. */
static size_t posture_frame(uint8_t *buf, const char *file, const uint8_t *sha, const char *proc)
{
	struct mt_file_fact ff = {0};
	struct mt_bytes pb = {0};
	struct mt_msg m = {.hdr = {.type = MT_POSTURE}};
	int len;

	m.u.posture.kernel = (struct mt_bytes){(const uint8_t *)"6.18.0", 6};
	m.u.posture.os = (struct mt_bytes){(const uint8_t *)"Debian GNU/Linux 12", 19};
	if (file) {
		ff.path = (struct mt_bytes){(const uint8_t *)file, (uint16_t)strlen(file)};
		memcpy(ff.sha256, sha, 32);
		m.u.posture.files = &ff;
		m.u.posture.nfiles = 1;
	}
	if (proc) {
		pb = (struct mt_bytes){(const uint8_t *)proc, (uint16_t)strlen(proc)};
		m.u.posture.procs = &pb;
		m.u.posture.nprocs = 1;
	}
	len = wire_encode(buf, MT_FRAME_MAX, &m);
	return len > 0 ? (size_t)len : 0;
}

#define SHA_HEX "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static const uint8_t sha_ok[32] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa,
                                   0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
                                   0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};

static void posture_model(void)
{
	base_model();
	rm(ADMIN_K_RULE, "eng-ssh");
	mk(ADMIN_K_POSTURE, "{\"name\":\"corp-file\",\"files\":[{\"path\":\"/etc/corp-id\","
	                    "\"sha256\":\"" SHA_HEX "\"}]}");
	mk(ADMIN_K_POSTURE, "{\"name\":\"edr\",\"processes\":[\"falcond\"]}");
	mk(ADMIN_K_RULE,
	   "{\"name\":\"eng-ssh\",\"priority\":10,\"action\":\"allow\","
	   "\"groups\":[\"eng\"],\"segments\":[\"corp\"],\"postures\":[\"corp-file\"]}");
}

/* Facts into satisfied profiles; the union the query asks for. */
static void test_posture_eval(void)
{
	struct admin_posture_file good = {.path = (char *)"/etc/corp-id"}, bad = good;
	const char *files[MT_POSTURE_FILES_MAX], *procs[MT_POSTURE_PROCS_MAX];
	const char *const running[] = {"falcond"};
	struct admin_facts f = {.kernel = "6.18.0", .files = &good, .nfiles = 1};
	struct admin_snapshot *s;
	size_t n = 0, nf, np;
	char **v = NULL;

	db_open();
	posture_model();
	s = snap();
	T_EQ(bd_posture_union(s, files, &nf, procs, &np), 0);
	T_EQ(nf, 1);
	T_STREQ(files[0], "/etc/corp-id");
	T_EQ(np, 1);
	T_STREQ(procs[0], "falcond");
	memcpy(good.sha256, sha_ok, 32);
	T_REQUIRE(bd_posture_eval(s, &f, &v, &n) == 0);
	T_EQ(n, 1);
	T_STREQ(v[0], "corp-file");
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
	bad.sha256[0] = 1;
	f.files = &bad;
	f.processes = running;
	f.nprocesses = 1;
	T_REQUIRE(bd_posture_eval(s, &f, &v, &n) == 0);
	T_EQ(n, 1);
	T_STREQ(v[0], "edr");
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
	T_REQUIRE(bd_posture_eval(s, NULL, &v, &n) == 0);
	T_EQ(n, 0);
	free(v);
	admin_snapshot_free(s);
}

/* POSTURE frames: no facts, no access; the file appears, access; it goes, the mtunnel ends. */
static void test_posture_flow(void)
{
	uint8_t buf[MT_FRAME_MAX], wrong[32];
	struct tb t;
	size_t len;

	db_open();
	posture_model();
	tb_init(&t, snap());
	T_CHECK(!tb_open(&t, 0, "db.corp.example", 22));
	T_REQUIRE((len = posture_frame(buf, "/etc/corp-id", sha_ok, NULL)) > 0);
	bd_on_posture(&t.bd, &t.agents[0], buf, len);
	T_REQUIRE(tb_open(&t, 0, "db.corp.example", 22));
	memcpy(wrong, sha_ok, 32);
	wrong[31] ^= 1;
	T_REQUIRE((len = posture_frame(buf, "/etc/corp-id", wrong, "falcond")) > 0);
	bd_on_posture(&t.bd, &t.agents[0], buf, len);
	T_EQ(rec.ended, 1);
	T_EQ(rec.last_st, MT_STATUS_DENIED);
	T_STREQ(rec.last_reason, "posture profile 'corp-file' no longer satisfied: required file "
	                         "missing or with another SHA-256");
	T_CHECK(!tb_open(&t, 0, "db.corp.example", 22));
	tb_free(&t);
}

/* The query after HELLO carries the union of the profiles' files and processes. */
static void test_posture_query(void)
{
	struct mt_bytes text;
	struct mt_iter it;
	struct mt_msg m;
	const char *why;
	uint16_t type;
	size_t files = 0, procs = 0;
	struct tb t;

	db_open();
	posture_model();
	tb_init(&t, snap());
	T_REQUIRE(bd_send_posture_query(&t.bd, &t.agents[0]) == 0);
	T_EQ(rec.frames, 1);
	T_REQUIRE(wire_decode(rec.frame, rec.frame_len, &m, &why) == 0);
	T_EQ(m.hdr.type, MT_POSTURE_QUERY);
	wire_posture_iter(&m.u.posture_query.attrs, &it);
	while (wire_posture_next(&it, &type, &text, NULL)) {
		if (type == MT_A_FILE && text.len == 12 && memcmp(text.p, "/etc/corp-id", 12) == 0)
			files++;
		if (type == MT_A_PROCESS && text.len == 7 && memcmp(text.p, "falcond", 7) == 0)
			procs++;
	}
	T_EQ(files, 1);
	T_EQ(procs, 1);
	/* bob's agent did not say MT_CAP_POSTURE: nothing is sent to it. */
	T_REQUIRE(bd_send_posture_query(&t.bd, &t.agents[1]) == 0);
	T_EQ(rec.frames, 1);
	tb_free(&t);
}

/* One activity record per mtunnel with its bytes, rule and segment; the sessions list. */
static void test_activity_and_sessions(void)
{
	char path[256], spec[300], line[4096], *json = NULL;
	json_object *root, *items, *it, *v;
	struct mtunnel *mt;
	struct tb t;
	FILE *f;

	db_open();
	base_model();
	tb_init(&t, snap());
	snprintf(path, sizeof(path), "%s/activity.jsonl", t_dir);
	snprintf(spec, sizeof(spec), "file:%s", path);
	T_REQUIRE(activity_open(spec, &t.bd.act) == 0);
	T_REQUIRE((mt = tb_open(&t, 0, "db.corp.example", 22)));
	snprintf(mt->meta->connector, sizeof(mt->meta->connector), "conn-paris-1");
	T_REQUIRE(mtunnel_on_data(mt, 0, 0, 1234, bd_now_ms()) == 0);
	T_REQUIRE(mtunnel_on_data(mt, 1, 0, 567, bd_now_ms()) == 0);
	T_REQUIRE(bd_sessions_json(&t.bd, &json) == 0);
	root = json_tokener_parse(json);
	T_REQUIRE(root && json_object_object_get_ex(root, "items", &items));
	T_EQ(json_object_array_length(items), 1);
	it = json_object_array_get_idx(items, 0);
	T_CHECK(json_object_object_get_ex(it, "user", &v) &&
	        strcmp(json_object_get_string(v), "alice") == 0);
	T_CHECK(json_object_object_get_ex(it, "connector", &v) &&
	        strcmp(json_object_get_string(v), "conn-paris-1") == 0);
	T_CHECK(json_object_object_get_ex(it, "bytes_up", &v) && json_object_get_int64(v) == 1234);
	T_CHECK(json_object_object_get_ex(it, "rule", &v) &&
	        strcmp(json_object_get_string(v), "eng-ssh") == 0);
	json_object_put(root);
	free(json);
	bd_end(&t.bd, mt, MT_STATUS_OK, "closed", 2);
	activity_close(t.bd.act);
	t.bd.act = NULL;
	f = fopen(path, "r");
	T_REQUIRE(f);
	T_REQUIRE(fgets(line, sizeof(line), f));
	fclose(f);
	T_CHECK(strstr(line, "\"app\":\"db.corp.example\""));
	T_CHECK(strstr(line, "\"bytes_up\":1234"));
	T_CHECK(strstr(line, "\"bytes_down\":567"));
	T_CHECK(strstr(line, "\"rule\":\"eng-ssh\""));
	T_CHECK(strstr(line, "\"segment\":\"corp\""));
	T_CHECK(strstr(line, "\"device\":\"alice-laptop\""));
	tb_free(&t);
}

int main(void)
{
	log_set_level(LOG_LVL_WARN);
	if (!mkdtemp(t_dir))
		return 1;
	T_RUN(test_swap_deny_rule);
	T_RUN(test_swap_rule_and_segment_removed);
	T_RUN(test_swap_keeps_allowed);
	T_RUN(test_disabled_user);
	T_RUN(test_timeouts);
	T_RUN(test_time_window);
	T_RUN(test_posture_eval);
	T_RUN(test_posture_flow);
	T_RUN(test_posture_query);
	T_RUN(test_activity_and_sessions);
	store_close(t_st);
	{
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", t_dir);
		if (system(cmd) != 0)
			return 1;
	}
	return t_done();
}
