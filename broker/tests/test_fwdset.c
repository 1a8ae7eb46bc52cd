/* Tests for broker/fwdset.c: an agent's forwarding set as CONFIG frames, as the agent decodes them.
 */
#include <arpa/inet.h>
#include <errno.h>

#include "broker.h"
#include "t.h"

#define MAX_FRAMES 64

struct frames {
	size_t n;
	size_t len[MAX_FRAMES];
	uint8_t buf[MAX_FRAMES][MT_FRAME_MAX];
};

static struct frames fr;

static int collect(const uint8_t *frame, size_t len, void *arg)
{
	struct frames *f = arg;

	if (f->n >= MAX_FRAMES || len > MT_FRAME_MAX)
		return -ENOSPC;
	memcpy(f->buf[f->n], frame, len);
	f->len[f->n++] = len;
	return 0;
}

static const char *const eng[] = {"eng"};
static struct policy_subject alice = {
    .tenant = "acme", .user = "alice", .groups = eng, .ngroups = 1};
static struct policy_subject bob = {.tenant = "acme", .user = "bob"};

static struct segset *mkset(size_t extra)
{
	static const uint32_t cg[] = {1};
	static const struct seg_ports ssh[] = {{SEG_PROTO_TCP, 22, 22}, {SEG_PROTO_TCP, 80, 81}};
	static const char *const h10[] = {"server01.corp.example", "*.lab.corp.example",
	                                  "10.1.0.0/16", "fd00:1::/32"};
	static const char *const h20[] = {"secret.corp.example"};
	struct segment_spec s10 = {.id = 10,
	                           .name = "ssh",
	                           .tenant = "acme",
	                           .hosts = h10,
	                           .nhosts = 4,
	                           .ports = ssh,
	                           .nports = 2,
	                           .flags = SEG_F_DOUBLE_ENCRYPT};
	struct segment_spec s20 = {.id = 20,
	                           .name = "secret",
	                           .tenant = "acme",
	                           .hosts = h20,
	                           .nhosts = 1,
	                           .ports = ssh,
	                           .nports = 1};
	struct segset *set = segset_new("acme");
	char err[SEG_ERR_MAX];
	uint32_t sg;

	if (!set)
		return NULL;
	sg = 10;
	s10.server_groups = &sg;
	s10.nserver_groups = 1;
	s20.server_groups = &sg;
	s20.nserver_groups = 1;
	if (segset_add_server_group(set, 10, cg, 1) < 0 ||
	    segset_add(set, &s10, err, sizeof(err)) < 0 ||
	    segset_add(set, &s20, err, sizeof(err)) < 0)
		goto fail;
	for (size_t i = 0; i < extra; i++) {
		char name[SEG_NAME_MAX + 1];
		const char *hosts[] = {name};
		struct segment_spec s = {.id = (uint32_t)(1000 + i),
		                         .name = "bulk",
		                         .tenant = "acme",
		                         .hosts = hosts,
		                         .nhosts = 1,
		                         .ports = ssh,
		                         .nports = 2,
		                         .server_groups = &sg,
		                         .nserver_groups = 1};

		snprintf(name, sizeof(name),
		         "host-%05zu.a-rather-long-label-to-fill-frames-quickly.corp.example", i);
		if (segset_add(set, &s, err, sizeof(err)) < 0)
			goto fail;
	}
	return set;
fail:
	printf("# segset: %s\n", err);
	segset_free(set);
	return NULL;
}

/* eng may reach 10 and the bulk ones (1000+), nobody 20. */
static struct policy *mkpol(bool with_bulk)
{
	static const uint32_t segs[] = {10};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_rule_spec r = {.id = 1,
	                             .name = "eng",
	                             .action = POLICY_ALLOW,
	                             .groups = eng,
	                             .ngroups = 1,
	                             .segments = segs,
	                             .nsegments = 1};
	struct policy_rule_spec all = {
	    .id = 2, .name = "eng-all", .action = POLICY_ALLOW, .groups = eng, .ngroups = 1};
	static const uint32_t s20[] = {20};
	struct policy_rule_spec deny = {
	    .id = 3, .name = "no-secret", .action = POLICY_DENY, .segments = s20, .nsegments = 1};
	char err[256];

	if (!pol || policy_add_rule(pol, &r, err, sizeof(err)) < 0 ||
	    policy_add_rule(pol, &deny, err, sizeof(err)) < 0 ||
	    (with_bulk && policy_add_rule(pol, &all, err, sizeof(err)) < 0)) {
		policy_free(pol);
		return NULL;
	}
	return pol;
}

/* Decodes every frame; counts SEGMENT entries per id; checks MORE and the version. */
static size_t decode_all(uint64_t version, size_t *n10, size_t *n20)
{
	size_t total = 0;

	*n10 = *n20 = 0;
	for (size_t i = 0; i < fr.n; i++) {
		struct mt_msg m;
		struct mt_iter it;
		struct mt_segment s;
		const char *why = NULL;

		if (wire_decode(fr.buf[i], fr.len[i], &m, &why) < 0) {
			printf("# frame %zu: %s\n", i, why);
			return (size_t)-1;
		}
		if (m.hdr.type != MT_CONFIG || m.u.config.version != version ||
		    !!(m.hdr.flags & MT_FRAME_F_MORE) != (i + 1 < fr.n))
			return (size_t)-1;
		wire_config_segments(&m.u.config, &it);
		while (wire_segment_next(&it, &s)) {
			total++;
			*n10 += s.id == 10;
			*n20 += s.id == 20;
		}
	}
	return total;
}

static void empty_set_is_one_frame(void)
{
	struct segset *set = mkset(0);
	struct policy *pol = mkpol(false);
	size_t n10, n20;
	uint64_t d = 0;

	T_REQUIRE(set && pol);
	fr.n = 0;
	T_EQ(fwdset_encode(set, pol, &bob, 42, collect, &fr, &d), 0);
	T_EQ(fr.n, 1);
	T_EQ(decode_all(42, &n10, &n20), 0);
	T_EQ(d, fwdset_digest(set, pol, &bob));
	policy_free(pol);
	segset_free(set);
}

static void allowed_segments_only_one_entry_per_host(void)
{
	struct segset *set = mkset(0);
	struct policy *pol = mkpol(false);
	struct mt_msg m;
	struct mt_iter it, ri;
	struct mt_segment s;
	struct mt_port_range r;
	const char *why;
	size_t n10, n20, kinds[4] = {0}, ranges = 0;
	bool v4ok = false, wildok = false;
	uint64_t d = 0;

	T_REQUIRE(set && pol);
	fr.n = 0;
	T_EQ(fwdset_encode(set, pol, &alice, 7, collect, &fr, &d), 0);
	T_REQUIRE(fr.n == 1);
	T_EQ(decode_all(7, &n10, &n20), 4);
	T_EQ(n10, 4);
	T_EQ(n20, 0); /* denied by rule: never sent */
	T_REQUIRE(wire_decode(fr.buf[0], fr.len[0], &m, &why) == 0);
	wire_config_segments(&m.u.config, &it);
	while (wire_segment_next(&it, &s)) {
		if (s.kind <= 3)
			kinds[s.kind]++;
		T_EQ(s.flags, MT_SEG_F_DOUBLE_ENCRYPT);
		if (s.kind == MT_SEG_CIDR && s.family == 4) {
			uint8_t want[4] = {10, 1, 0, 0};

			v4ok = s.prefix == 16 && memcmp(s.addr, want, 4) == 0;
		}
		if (s.kind == MT_SEG_WILDCARD)
			wildok =
			    s.name.len == 18 && memcmp(s.name.p, "*.lab.corp.example", 18) == 0;
		wire_segment_ranges(&s, &ri);
		while (wire_range_next(&ri, &r)) {
			ranges++;
			T_CHECK((r.lo == 22 && r.hi == 22) || (r.lo == 80 && r.hi == 81));
			T_EQ(r.proto, MT_PROTO_TCP);
		}
	}
	T_EQ(kinds[MT_SEG_FQDN], 1);
	T_EQ(kinds[MT_SEG_WILDCARD], 1);
	T_EQ(kinds[MT_SEG_CIDR], 2);
	T_CHECK(v4ok);
	T_CHECK(wildok);
	T_EQ(ranges, 8);
	policy_free(pol);
	segset_free(set);
}

static void large_set_splits_into_more_frames(void)
{
	struct segset *set = mkset(600);
	struct policy *pol = mkpol(true);
	size_t n10, n20;
	uint64_t d = 0;

	T_REQUIRE(set && pol);
	fr.n = 0;
	T_EQ(fwdset_encode(set, pol, &alice, 1ULL << 40, collect, &fr, &d), 0);
	T_CHECK(fr.n > 1);
	for (size_t i = 0; i < fr.n; i++)
		T_CHECK(fr.len[i] <= MT_FRAME_MAX);
	/* All but the last frame are nearly full: no frame is cut early. */
	for (size_t i = 0; i + 1 < fr.n; i++)
		T_CHECK(fr.len[i] > MT_FRAME_MAX - 200);
	T_EQ(decode_all(1ULL << 40, &n10, &n20), 604);
	T_EQ(n10, 4);
	T_EQ(n20, 0);
	policy_free(pol);
	segset_free(set);
}

static void digest_follows_the_set_not_the_version(void)
{
	struct segset *set = mkset(3);
	struct policy *narrow = mkpol(false), *wide = mkpol(true);
	uint64_t a = 0, b = 0;

	T_REQUIRE(set && narrow && wide);
	fr.n = 0;
	T_EQ(fwdset_encode(set, narrow, &alice, 1, collect, &fr, &a), 0);
	fr.n = 0;
	T_EQ(fwdset_encode(set, narrow, &alice, 2, collect, &fr, &b), 0);
	T_EQ(a, b);
	T_CHECK(fwdset_digest(set, wide, &alice) != a);
	T_CHECK(fwdset_digest(set, narrow, &bob) != a);
	T_EQ(fwdset_digest(set, narrow, &alice), a);
	policy_free(narrow);
	policy_free(wide);
	segset_free(set);
}

static int emit_fail(const uint8_t *frame, size_t len, void *arg)
{
	return -EPIPE;
}

static void emit_error_is_returned(void)
{
	struct segset *set = mkset(0);
	struct policy *pol = mkpol(false);
	uint64_t d;

	T_REQUIRE(set && pol);
	T_EQ(fwdset_encode(set, pol, &alice, 1, emit_fail, NULL, &d), -EPIPE);
	policy_free(pol);
	segset_free(set);
}

int main(void)
{
	T_RUN(empty_set_is_one_frame);
	T_RUN(allowed_segments_only_one_entry_per_host);
	T_RUN(large_set_splits_into_more_frames);
	T_RUN(digest_follows_the_set_not_the_version);
	T_RUN(emit_error_is_returned);
	return t_done();
}
