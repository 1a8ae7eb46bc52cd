/* Tests for broker/policy.c: rule order, AND/OR of conditions, default deny, time windows. */
#include <errno.h>

#include "broker.h"
#include "t.h"

/* 2026-11-23 (a Monday) 00:00:00 UTC */
#define MONDAY      ((time_t)1795392000)
#define AT(d, h, m) (MONDAY + (time_t)(d)*86400 + (time_t)(h)*3600 + (time_t)(m)*60)

static char err[SEG_ERR_MAX];

static struct segment seg_ssh = {.id = 7, .name = "ssh", .tenant = "acme", .segment_group = 70};
static struct segment seg_web = {.id = 8, .name = "web", .tenant = "acme", .segment_group = 80};

static const char *const eng[] = {"engineering", "staff"};
static const char *const sales[] = {"sales"};
static const char *const managed[] = {"managed-laptop"};

static struct policy_subject alice = {.tenant = "acme",
                                      .user = "alice",
                                      .groups = eng,
                                      .ngroups = 2,
                                      .postures = managed,
                                      .npostures = 1};
static struct policy_subject bob = {.tenant = "acme", .user = "bob", .groups = sales, .ngroups = 1};

static void eval(const struct policy *pol, const struct policy_subject *s,
                 const struct segment *seg, time_t now, struct policy_decision *d)
{
	policy_eval(pol, s, seg, now, d);
}

static void default_deny_with_reason(void)
{
	struct policy *pol = policy_new("acme", 86400, 600);
	struct policy_decision d;

	T_REQUIRE(pol);
	eval(pol, &alice, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.reason, "no rule allows");
	T_EQ(d.rule_id, 0);
	T_STREQ(d.rule_name, "");
	policy_free(pol);
}

static void first_match_deny_before_allow(void)
{
	static const char *const users[] = {"alice"};
	static const uint32_t segs[] = {7};
	struct policy_rule_spec deny = {.id = 1,
	                                .name = "no-ssh-for-alice",
	                                .action = POLICY_DENY,
	                                .users = users,
	                                .nusers = 1,
	                                .segments = segs,
	                                .nsegments = 1};
	struct policy_rule_spec allow = {
	    .id = 2, .name = "staff", .action = POLICY_ALLOW, .groups = eng + 1, .ngroups = 1};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &deny, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &allow, err, sizeof(err)), 0);
	eval(pol, &alice, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	T_EQ(d.rule_id, 1);
	T_STREQ(d.rule_name, "no-ssh-for-alice");
	T_STREQ(d.reason, "denied by rule");
	eval(pol, &alice, &seg_web, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_ALLOW);
	T_STREQ(d.rule_name, "staff");
	T_STREQ(d.reason, "allowed by rule");
	policy_free(pol);
}

/* The same rules in the other order: the allow now shadows the deny. */
static void order_matters(void)
{
	static const char *const users[] = {"alice"};
	struct policy_rule_spec allow = {
	    .id = 2, .name = "staff", .action = POLICY_ALLOW, .groups = eng + 1, .ngroups = 1};
	struct policy_rule_spec deny = {
	    .id = 1, .name = "no-alice", .action = POLICY_DENY, .users = users, .nusers = 1};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &allow, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &deny, err, sizeof(err)), 0);
	eval(pol, &alice, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_ALLOW);
	T_EQ(d.rule_id, 2);
	policy_free(pol);
}

static void groups_are_or(void)
{
	static const char *const groups[] = {"finance", "sales", "staff"};
	struct policy_rule_spec r = {
	    .id = 1, .name = "g", .action = POLICY_ALLOW, .groups = groups, .ngroups = 3};
	static const char *const hr[] = {"hr"};
	struct policy_subject carol = {
	    .tenant = "acme", .user = "carol", .groups = hr, .ngroups = 1};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), 0);
	eval(pol, &alice, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_ALLOW); /* via staff */
	eval(pol, &bob, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_ALLOW); /* via sales */
	eval(pol, &carol, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.reason, "no rule allows");
	policy_free(pol);
}

static void conditions_are_and(void)
{
	static const char *const groups[] = {"engineering", "sales"};
	static const uint32_t sgroups[] = {70};
	struct policy_rule_spec r = {.id = 1,
	                             .name = "eng-ssh-managed",
	                             .action = POLICY_ALLOW,
	                             .groups = groups,
	                             .ngroups = 2,
	                             .segment_groups = sgroups,
	                             .nsegment_groups = 1,
	                             .postures = managed,
	                             .npostures = 1};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), 0);
	eval(pol, &alice, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_ALLOW);
	eval(pol, &alice, &seg_web, AT(0, 12, 0), &d); /* wrong segment group */
	T_EQ(d.action, POLICY_DENY);
	eval(pol, &bob, &seg_ssh, AT(0, 12, 0), &d); /* group ok, posture missing */
	T_EQ(d.action, POLICY_DENY);
	policy_free(pol);
}

static void posture_any_of(void)
{
	static const char *const want[] = {"edr-running", "managed-laptop"};
	static const char *const has_edr[] = {"disk-encrypted", "edr-running"};
	struct policy_rule_spec r = {
	    .id = 1, .name = "posture", .action = POLICY_ALLOW, .postures = want, .npostures = 2};
	struct policy_subject s = {
	    .tenant = "acme", .user = "dave", .postures = has_edr, .npostures = 2};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), 0);
	eval(pol, &s, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_ALLOW);
	s.npostures = 1; /* only disk-encrypted */
	eval(pol, &s, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	policy_free(pol);
}

static void tenant_mismatch_denied(void)
{
	struct policy_rule_spec r = {.id = 1, .name = "all", .action = POLICY_ALLOW};
	struct policy_subject other = alice;
	struct segment foreign = seg_ssh;
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), 0);
	other.tenant = "globex";
	eval(pol, &other, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.reason, "tenant mismatch");
	strcpy(foreign.tenant, "globex");
	eval(pol, &alice, &foreign, AT(0, 12, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	policy_free(pol);
}

static void timeouts_attached(void)
{
	static const uint32_t segs[] = {8};
	struct policy_rule_spec web = {.id = 1,
	                               .name = "web-short",
	                               .action = POLICY_ALLOW,
	                               .segments = segs,
	                               .nsegments = 1,
	                               .max_age_s = 3600,
	                               .idle_s = 60};
	struct policy_rule_spec all = {.id = 2, .name = "all", .action = POLICY_ALLOW};
	struct policy *pol = policy_new("acme", 86400, 900);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &web, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &all, err, sizeof(err)), 0);
	eval(pol, &alice, &seg_web, AT(0, 12, 0), &d);
	T_EQ(d.max_age_s, 3600);
	T_EQ(d.idle_s, 60);
	eval(pol, &alice, &seg_ssh, AT(0, 12, 0), &d);
	T_EQ(d.rule_id, 2);
	T_EQ(d.max_age_s, 86400);
	T_EQ(d.idle_s, 900);
	policy_free(pol);
}

static void window_weekdays(void)
{
	struct policy_window w = {.days = POLICY_DAY(1) | POLICY_DAY(2) | POLICY_DAY(3) |
	                                  POLICY_DAY(4) | POLICY_DAY(5),
	                          .start_min = 8 * 60,
	                          .end_min = 18 * 60};

	T_CHECK(policy_window_match(&w, AT(0, 8, 0)));   /* Monday 08:00 */
	T_CHECK(policy_window_match(&w, AT(0, 17, 59))); /* Monday 17:59 */
	T_CHECK(!policy_window_match(&w, AT(0, 18, 0))); /* end is exclusive */
	T_CHECK(!policy_window_match(&w, AT(0, 7, 59)));
	T_CHECK(policy_window_match(&w, AT(4, 12, 0)));   /* Friday */
	T_CHECK(!policy_window_match(&w, AT(5, 12, 0)));  /* Saturday */
	T_CHECK(!policy_window_match(&w, AT(-1, 12, 0))); /* Sunday before */
}

static void window_across_midnight(void)
{
	/* Friday 22:00 to Saturday 02:00. */
	struct policy_window w = {.days = POLICY_DAY(5), .start_min = 22 * 60, .end_min = 2 * 60};

	T_CHECK(!policy_window_match(&w, AT(4, 21, 59)));
	T_CHECK(policy_window_match(&w, AT(4, 22, 0)));
	T_CHECK(policy_window_match(&w, AT(4, 23, 59)));
	T_CHECK(policy_window_match(&w, AT(5, 0, 0))); /* Saturday 00:00 */
	T_CHECK(policy_window_match(&w, AT(5, 1, 59)));
	T_CHECK(!policy_window_match(&w, AT(5, 2, 0)));
	T_CHECK(!policy_window_match(&w, AT(5, 22, 30))); /* Saturday night is not Friday */
	T_CHECK(!policy_window_match(&w, AT(4, 1, 0)));   /* Friday morning: Thursday's night */
}

static void window_utc_offset(void)
{
	/* 09:00-17:00 Monday at UTC+10: 23:00 Sunday UTC to 07:00 Monday UTC. */
	struct policy_window w = {
	    .days = POLICY_DAY(1), .start_min = 9 * 60, .end_min = 17 * 60, .utc_offset_min = 600};
	struct policy_window west = {
	    .days = POLICY_DAY(0), .start_min = 20 * 60, .end_min = 1440, .utc_offset_min = -300};

	T_CHECK(policy_window_match(&w, AT(-1, 23, 0)));
	T_CHECK(policy_window_match(&w, AT(0, 6, 59)));
	T_CHECK(!policy_window_match(&w, AT(0, 7, 0)));
	T_CHECK(!policy_window_match(&w, AT(0, 12, 0)));
	/* Sunday 20:00-24:00 at UTC-5 is Monday 01:00-05:00 UTC. */
	T_CHECK(policy_window_match(&w, AT(0, 0, 0)) && policy_window_match(&west, AT(0, 1, 0)));
	T_CHECK(policy_window_match(&west, AT(0, 4, 59)));
	T_CHECK(!policy_window_match(&west, AT(0, 5, 0)));
	T_CHECK(!policy_window_match(&west, AT(-1, 22, 0)));
	/* Before the epoch the arithmetic still floors: 1969-12-31 was a Wednesday. */
	{
		struct policy_window wed = {.days = POLICY_DAY(3), .start_min = 0, .end_min = 1440};

		T_CHECK(policy_window_match(&wed, (time_t)-1));
		T_CHECK(!policy_window_match(&wed, (time_t)0));
	}
}

static void window_in_rule(void)
{
	struct policy_window night = {
	    .days = POLICY_ALL_DAYS, .start_min = 22 * 60, .end_min = 6 * 60};
	struct policy_rule_spec deny = {
	    .id = 1, .name = "not-at-night", .action = POLICY_DENY, .window = &night};
	struct policy_rule_spec allow = {.id = 2, .name = "all", .action = POLICY_ALLOW};
	struct policy *pol = policy_new("acme", 0, 0);
	struct policy_decision d;

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &deny, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &allow, err, sizeof(err)), 0);
	eval(pol, &alice, &seg_ssh, AT(2, 23, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	T_STREQ(d.rule_name, "not-at-night");
	eval(pol, &alice, &seg_ssh, AT(2, 5, 0), &d);
	T_EQ(d.action, POLICY_DENY);
	eval(pol, &alice, &seg_ssh, AT(2, 9, 0), &d);
	T_EQ(d.action, POLICY_ALLOW);
	policy_free(pol);
}

static void invalid_rules_refused(void)
{
	struct policy_window empty = {.days = POLICY_DAY(1), .start_min = 60, .end_min = 60};
	struct policy_window nodays = {.days = 0, .start_min = 0, .end_min = 60};
	struct policy_window late = {.days = 1, .start_min = 1440, .end_min = 60};
	struct policy_window far = {
	    .days = 1, .start_min = 0, .end_min = 60, .utc_offset_min = 900};
	static const char *const blank[] = {""};
	struct policy_rule_spec r = {.id = 1, .name = "r", .action = POLICY_ALLOW};
	struct policy *pol = policy_new("acme", 0, 0);

	T_REQUIRE(pol);
	T_CHECK(policy_new("Bad Tenant", 0, 0) == NULL);
	r.window = &empty;
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	T_CHECK(strstr(err, "empty") != NULL);
	r.window = &nodays;
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	r.window = &late;
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	r.window = &far;
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	r.window = NULL;
	r.groups = blank;
	r.ngroups = 1;
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	r.ngroups = 0;
	r.action = (enum policy_action)5;
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	r.action = POLICY_ALLOW;
	r.name = "";
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EINVAL);
	r.name = "r";
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &r, err, sizeof(err)), -EEXIST);
	T_EQ(policy_rule_count(pol), 1);
	policy_free(pol);
}

static void may_allow_for_forwarding_set(void)
{
	static const uint32_t ssh[] = {7};
	static const char *const users[] = {"bob"};
	struct policy_window weekend = {
	    .days = POLICY_DAY(0) | POLICY_DAY(6), .start_min = 0, .end_min = 1440};
	struct policy_rule_spec deny_bob = {
	    .id = 1, .name = "no-bob", .action = POLICY_DENY, .users = users, .nusers = 1};
	struct policy_rule_spec weekend_deny = {
	    .id = 2, .name = "weekend", .action = POLICY_DENY, .window = &weekend};
	struct policy_rule_spec allow_ssh = {
	    .id = 3, .name = "ssh", .action = POLICY_ALLOW, .segments = ssh, .nsegments = 1};
	struct policy *pol = policy_new("acme", 0, 0);

	T_REQUIRE(pol);
	T_EQ(policy_add_rule(pol, &deny_bob, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &weekend_deny, err, sizeof(err)), 0);
	T_EQ(policy_add_rule(pol, &allow_ssh, err, sizeof(err)), 0);
	T_CHECK(policy_may_allow(pol, &alice, &seg_ssh)); /* a timed deny does not hide it */
	T_CHECK(!policy_may_allow(pol, &alice, &seg_web));
	T_CHECK(!policy_may_allow(pol, &bob, &seg_ssh));
	policy_free(pol);
}

int main(void)
{
	T_RUN(default_deny_with_reason);
	T_RUN(first_match_deny_before_allow);
	T_RUN(order_matters);
	T_RUN(groups_are_or);
	T_RUN(conditions_are_and);
	T_RUN(posture_any_of);
	T_RUN(tenant_mismatch_denied);
	T_RUN(timeouts_attached);
	T_RUN(window_weekdays);
	T_RUN(window_across_midnight);
	T_RUN(window_utc_offset);
	T_RUN(window_in_rule);
	T_RUN(invalid_rules_refused);
	T_RUN(may_allow_for_forwarding_set);
	policy_free(NULL);
	return t_done();
}
