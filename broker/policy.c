/*
 * Access policy: ordered rules, first match wins, default deny. Conditions within a rule
 * are AND, values within a condition OR. Evaluation reads only, never allocates.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define POLICY_LIST_MAX 4096

struct policy_strs {
	char **v;
	size_t n;
};

struct policy_ids {
	uint32_t *v;
	size_t n;
};

struct policy_rule {
	uint32_t id;
	char name[SEG_TITLE_MAX + 1];
	enum policy_action action;
	struct policy_strs users, groups, postures;
	struct policy_ids segments, segment_groups;
	bool has_window;
	struct policy_window window;
	uint32_t max_age_s, idle_s;
};

struct policy {
	char tenant[IDENT_TENANT_MAX + 1];
	uint32_t max_age_s, idle_s;
	struct policy_rule *rules;
	size_t nrules, cap;
	/* Rule ids -> positions (open addressing, load <= 1/2), built past POLICY_ID_SCAN
	 * rules, so that adding n rules is not quadratic. ids[i] == 0: empty. */
	uint32_t *ids, *pos;
	size_t idcap;
};

#define POLICY_ID_SCAN 16

struct policy *policy_new(const char *tenant, uint32_t max_age_s, uint32_t idle_s)
{
	struct policy *pol;

	if (!ident_valid_tenant(tenant))
		return NULL;
	pol = calloc(1, sizeof(*pol));
	if (!pol)
		return NULL;
	strcpy(pol->tenant, tenant);
	pol->max_age_s = max_age_s;
	pol->idle_s = idle_s;
	return pol;
}

static void policy_strs_free(struct policy_strs *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	s->v = NULL;
	s->n = 0;
}

static void policy_rule_clear(struct policy_rule *r)
{
	policy_strs_free(&r->users);
	policy_strs_free(&r->groups);
	policy_strs_free(&r->postures);
	free(r->segments.v);
	free(r->segment_groups.v);
}

void policy_free(struct policy *pol)
{
	if (!pol)
		return;
	for (size_t i = 0; i < pol->nrules; i++)
		policy_rule_clear(&pol->rules[i]);
	free(pol->rules);
	free(pol->ids);
	free(pol->pos);
	free(pol);
}

static size_t policy_id_slot(uint32_t id, size_t cap)
{
	return (size_t)((id * 0x9e3779b97f4a7c15ULL) >> 32) & (cap - 1);
}

static void policy_id_put(uint32_t *ids, uint32_t *pos, size_t cap, uint32_t id, size_t at)
{
	size_t i;

	for (i = policy_id_slot(id, cap); ids[i]; i = (i + 1) & (cap - 1))
		;
	ids[i] = id;
	pos[i] = (uint32_t)at;
}

/* The rule with this id, or NULL. */
static const struct policy_rule *policy_find_id(const struct policy *pol, uint32_t id)
{
	if (!pol->idcap) {
		for (size_t i = 0; i < pol->nrules; i++)
			if (pol->rules[i].id == id)
				return &pol->rules[i];
		return NULL;
	}
	for (size_t i = policy_id_slot(id, pol->idcap);; i = (i + 1) & (pol->idcap - 1)) {
		if (pol->ids[i] == id)
			return &pol->rules[pol->pos[i]];
		if (!pol->ids[i])
			return NULL;
	}
}

/* Room for one more rule, in the array and in the id map (adding cannot fail after). */
static int policy_reserve(struct policy *pol)
{
	size_t want = pol->idcap ? pol->idcap : 4 * POLICY_ID_SCAN;
	uint32_t *ids, *pos;

	if (pol->nrules == pol->cap) {
		size_t cap = pol->cap ? pol->cap * 2 : 4;
		struct policy_rule *rules;

		if (pol->nrules >= UINT32_MAX / 2)
			return -ENOMEM;
		rules = reallocarray(pol->rules, cap, sizeof(*rules));
		if (!rules)
			return -ENOMEM;
		pol->rules = rules;
		pol->cap = cap;
	}
	if (pol->nrules + 1 < POLICY_ID_SCAN)
		return 0;
	while ((pol->nrules + 1) * 2 > want)
		want *= 2;
	if (want == pol->idcap)
		return 0;
	ids = calloc(want, sizeof(*ids));
	pos = calloc(want, sizeof(*pos));
	if (!ids || !pos) {
		free(ids);
		free(pos);
		return -ENOMEM;
	}
	for (size_t i = 0; i < pol->nrules; i++)
		policy_id_put(ids, pos, want, pol->rules[i].id, i);
	free(pol->ids);
	free(pol->pos);
	pol->ids = ids;
	pol->pos = pos;
	pol->idcap = want;
	return 0;
}

static int policy_strs_copy(struct policy_strs *dst, const char *const *src, size_t n)
{
	if (n == 0)
		return 0;
	dst->v = calloc(n, sizeof(*dst->v));
	if (!dst->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		dst->v[i] = strdup(src[i]);
		if (!dst->v[i])
			return -ENOMEM;
		dst->n++;
	}
	return 0;
}

static int policy_ids_copy(struct policy_ids *dst, const uint32_t *src, size_t n)
{
	if (n == 0)
		return 0;
	dst->v = malloc(n * sizeof(*dst->v));
	if (!dst->v)
		return -ENOMEM;
	memcpy(dst->v, src, n * sizeof(*dst->v));
	dst->n = n;
	return 0;
}

int policy_window_check(const struct policy_window *w, const char **why)
{
	if (w->days == 0 || (w->days & ~POLICY_ALL_DAYS)) {
		*why = "window needs days of the week (bits 0..6)";
		return -EINVAL;
	}
	if (w->start_min > 1439 || w->end_min == 0 || w->end_min > 1440) {
		*why = "window start must be 0..1439 and end 1..1440 minutes";
		return -EINVAL;
	}
	if (w->start_min == w->end_min) {
		*why = "window is empty (start == end)";
		return -EINVAL;
	}
	if (w->utc_offset_min < -840 || w->utc_offset_min > 840) {
		*why = "window UTC offset beyond +-14h";
		return -EINVAL;
	}
	return 0;
}

bool policy_window_match(const struct policy_window *w, time_t now)
{
	long long local = (long long)now + (long long)w->utc_offset_min * 60;
	long long days = local / 86400, secs = local % 86400;
	unsigned wday, prev, minute;

	if (secs < 0) {
		secs += 86400;
		days--;
	}
	/* 1970-01-01 was a Thursday. */
	wday = (unsigned)(((days + 4) % 7 + 7) % 7);
	prev = (wday + 6) % 7;
	minute = (unsigned)(secs / 60);
	if (w->start_min < w->end_min)
		return (w->days & POLICY_DAY(wday)) && minute >= w->start_min &&
		       minute < w->end_min;
	/* Past midnight: the evening of an allowed day, or the morning after one. */
	return ((w->days & POLICY_DAY(wday)) && minute >= w->start_min) ||
	       ((w->days & POLICY_DAY(prev)) && minute < w->end_min);
}

static int policy_check_list(const char *const *v, size_t n, const char *what, char *err,
                             size_t errlen, const char *rule)
{
	if (n > POLICY_LIST_MAX) {
		snprintf(err, errlen, "rule %s: more than %d %s", rule, POLICY_LIST_MAX, what);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (!v[i] || !v[i][0] || strlen(v[i]) > 255) {
			snprintf(err, errlen, "rule %s: empty or overlong value in %s", rule, what);
			return -EINVAL;
		}
	}
	return 0;
}

int policy_add_rule(struct policy *pol, const struct policy_rule_spec *spec, char *err,
                    size_t errlen)
{
	struct policy_rule r = {0};
	const struct policy_rule *dup;
	const char *why;
	int rc;

	if (!spec->name || !spec->name[0] || strlen(spec->name) > SEG_TITLE_MAX) {
		snprintf(err, errlen, "rule %u: name missing or longer than %d", spec->id,
		         SEG_TITLE_MAX);
		return -EINVAL;
	}
	if (spec->id == 0) {
		snprintf(err, errlen, "rule %s: id 0 is reserved", spec->name);
		return -EINVAL;
	}
	if (spec->action != POLICY_ALLOW && spec->action != POLICY_DENY) {
		snprintf(err, errlen, "rule %s: action must be allow or deny", spec->name);
		return -EINVAL;
	}
	dup = policy_find_id(pol, spec->id);
	if (dup) {
		snprintf(err, errlen, "rule %s: id %u already used by rule %s", spec->name,
		         spec->id, dup->name);
		return -EEXIST;
	}
	if ((rc = policy_check_list(spec->users, spec->nusers, "users", err, errlen, spec->name)) <
	        0 ||
	    (rc = policy_check_list(spec->groups, spec->ngroups, "groups", err, errlen,
	                            spec->name)) < 0 ||
	    (rc = policy_check_list(spec->postures, spec->npostures, "posture profiles", err,
	                            errlen, spec->name)) < 0)
		return rc;
	if (spec->nsegments > POLICY_LIST_MAX || spec->nsegment_groups > POLICY_LIST_MAX) {
		snprintf(err, errlen, "rule %s: more than %d segments", spec->name,
		         POLICY_LIST_MAX);
		return -EINVAL;
	}
	if (spec->window && policy_window_check(spec->window, &why) < 0) {
		snprintf(err, errlen, "rule %s: %s", spec->name, why);
		return -EINVAL;
	}

	r.id = spec->id;
	strcpy(r.name, spec->name);
	r.action = spec->action;
	r.max_age_s = spec->max_age_s;
	r.idle_s = spec->idle_s;
	if (spec->window) {
		r.has_window = true;
		r.window = *spec->window;
	}
	rc = -ENOMEM;
	if (policy_strs_copy(&r.users, spec->users, spec->nusers) < 0 ||
	    policy_strs_copy(&r.groups, spec->groups, spec->ngroups) < 0 ||
	    policy_strs_copy(&r.postures, spec->postures, spec->npostures) < 0 ||
	    policy_ids_copy(&r.segments, spec->segments, spec->nsegments) < 0 ||
	    policy_ids_copy(&r.segment_groups, spec->segment_groups, spec->nsegment_groups) < 0)
		goto fail;
	if (policy_reserve(pol) < 0)
		goto fail;
	if (pol->idcap)
		policy_id_put(pol->ids, pol->pos, pol->idcap, r.id, pol->nrules);
	pol->rules[pol->nrules++] = r;
	return 0;
fail:
	snprintf(err, errlen, "rule %s: out of memory", spec->name);
	policy_rule_clear(&r);
	return rc;
}

size_t policy_rule_count(const struct policy *pol)
{
	return pol->nrules;
}

/* An absent condition holds; a present one needs one of its values among have. */
static bool policy_any_str(const struct policy_strs *want, const char *const *have, size_t n)
{
	if (want->n == 0)
		return true;
	for (size_t i = 0; i < want->n; i++)
		for (size_t j = 0; j < n; j++)
			if (have[j] && strcmp(want->v[i], have[j]) == 0)
				return true;
	return false;
}

static bool policy_has_id(const struct policy_ids *want, uint32_t id)
{
	if (want->n == 0)
		return true;
	for (size_t i = 0; i < want->n; i++)
		if (want->v[i] == id)
			return true;
	return false;
}

/* The conditions that do not depend on time or posture. */
static bool policy_rule_who_what(const struct policy_rule *r, const struct policy_subject *s,
                                 const struct segment *seg)
{
	const char *user = s->user ? s->user : "";

	return policy_any_str(&r->users, &user, 1) &&
	       policy_any_str(&r->groups, s->groups, s->ngroups) &&
	       policy_has_id(&r->segments, seg->id) &&
	       (r->segment_groups.n == 0 ||
	        (seg->segment_group && policy_has_id(&r->segment_groups, seg->segment_group)));
}

void policy_eval(const struct policy *pol, const struct policy_subject *subj,
                 const struct segment *seg, time_t now, struct policy_decision *out)
{
	*out = (struct policy_decision){.action = POLICY_DENY, .rule_name = ""};
	if (!subj->tenant || strcmp(subj->tenant, pol->tenant) != 0 ||
	    strcmp(seg->tenant, pol->tenant) != 0) {
		out->reason = "tenant mismatch";
		return;
	}
	for (size_t i = 0; i < pol->nrules; i++) {
		const struct policy_rule *r = &pol->rules[i];

		if (!policy_rule_who_what(r, subj, seg) ||
		    !policy_any_str(&r->postures, subj->postures, subj->npostures) ||
		    (r->has_window && !policy_window_match(&r->window, now)))
			continue;
		out->action = r->action;
		out->rule_id = r->id;
		out->rule_name = r->name;
		if (r->action == POLICY_ALLOW) {
			out->reason = "allowed by rule";
			out->max_age_s = r->max_age_s ? r->max_age_s : pol->max_age_s;
			out->idle_s = r->idle_s ? r->idle_s : pol->idle_s;
		} else {
			out->reason = "denied by rule";
		}
		return;
	}
	out->reason = "no rule allows";
}

bool policy_may_allow(const struct policy *pol, const struct policy_subject *subj,
                      const struct segment *seg)
{
	if (!subj->tenant || strcmp(subj->tenant, pol->tenant) != 0 ||
	    strcmp(seg->tenant, pol->tenant) != 0)
		return false;
	for (size_t i = 0; i < pol->nrules; i++) {
		const struct policy_rule *r = &pol->rules[i];

		if (!policy_rule_who_what(r, subj, seg))
			continue;
		if (r->action == POLICY_ALLOW)
			return true;
		/* A deny without time or posture conditions shadows every later rule. */
		if (!r->has_window && r->postures.n == 0)
			return false;
	}
	return false;
}
