/*
 * The compiled snapshot of a tenant's model: segments (lib/segment.h), the ordered
 * policy (broker/policy.c), the user directory, locations and posture profiles.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/admin_int.h"
#include "log.h"

#define SNAP_INDEX_MAX 1000000

struct snap_id {
	const char *name;
	uint32_t id;
	size_t pos; /* in items */
};

/* Names to ids for one kind, sorted by name (the strings stay in items). */
struct snap_map {
	struct json_object *items;
	struct snap_id *v;
	size_t n;
};

static int snap_id_cmp(const void *a, const void *b)
{
	return strcmp(((const struct snap_id *)a)->name, ((const struct snap_id *)b)->name);
}

static const char *snap_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static int64_t snap_int(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	return json_object_get_int64(v);
}

static bool snap_bool(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static struct json_object *snap_arr(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_array))
		return NULL;
	return v;
}

static size_t snap_len(struct json_object *a)
{
	return a ? json_object_array_length(a) : 0;
}

static int snap_map_load(struct store *st, const char *tenant, enum admin_kind k,
                         struct snap_map *m)
{
	int ret;

	memset(m, 0, sizeof(*m));
	ret = admin_list_json(st, tenant, k, false, &m->items);
	if (ret)
		return ret;
	m->n = json_object_array_length(m->items);
	m->v = calloc(m->n ? m->n : 1, sizeof(*m->v));
	if (!m->v)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		struct json_object *o = json_object_array_get_idx(m->items, i);

		m->v[i].name = snap_str(o, "name");
		m->v[i].id = (uint32_t)snap_int(o, "id");
		m->v[i].pos = i;
	}
	qsort(m->v, m->n, sizeof(*m->v), snap_id_cmp);
	return 0;
}

static void snap_map_free(struct snap_map *m)
{
	free(m->v);
	json_object_put(m->items);
}

static uint32_t snap_map_id(const struct snap_map *m, const char *name)
{
	struct snap_id key = {.name = name}, *r;

	if (!name || !m->n)
		return 0;
	r = bsearch(&key, m->v, m->n, sizeof(*m->v), snap_id_cmp);
	return r ? r->id : 0;
}

/* A list of names into ids; every name exists (the refs table guarantees it). */
static int snap_ids(const struct snap_map *m, struct json_object *arr, uint32_t **out, size_t *n)
{
	*n = snap_len(arr);
	*out = calloc(*n ? *n : 1, sizeof(**out));
	if (!*out)
		return -ENOMEM;
	for (size_t i = 0; i < *n; i++) {
		(*out)[i] =
		    snap_map_id(m, json_object_get_string(json_object_array_get_idx(arr, i)));
		if (!(*out)[i])
			return -ENOENT;
	}
	return 0;
}

static int snap_strs(struct json_object *arr, const char ***out, size_t *n)
{
	*n = snap_len(arr);
	*out = calloc(*n ? *n : 1, sizeof(**out));
	if (!*out)
		return -ENOMEM;
	for (size_t i = 0; i < *n; i++)
		(*out)[i] = json_object_get_string(json_object_array_get_idx(arr, i));
	return 0;
}

static void snap_loc(struct json_object *o, struct admin_named_loc *l)
{
	struct json_object *loc, *v;
	const char *region;

	l->id = (uint32_t)snap_int(o, "id");
	snprintf(l->name, sizeof(l->name), "%s", snap_str(o, "name"));
	if (!json_object_object_get_ex(o, "location", &loc))
		return;
	region = snap_str(loc, "region");
	snprintf(l->loc.region, sizeof(l->loc.region), "%s", region ? region : "");
	if (json_object_object_get_ex(loc, "lat", &v))
		l->loc.lat = json_object_get_double(v);
	if (json_object_object_get_ex(loc, "lon", &v))
		l->loc.lon = json_object_get_double(v);
}

static int snap_hex(const char *s, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -EINVAL;
		out[i] = (uint8_t)v;
	}
	return 0;
}

static char **snap_strdupv(struct json_object *arr, size_t *n)
{
	char **v;

	*n = snap_len(arr);
	v = calloc(*n ? *n : 1, sizeof(*v));
	if (!v)
		return NULL;
	for (size_t i = 0; i < *n; i++) {
		v[i] = strdup(json_object_get_string(json_object_array_get_idx(arr, i)));
		if (!v[i]) {
			for (size_t j = 0; j < i; j++)
				free(v[j]);
			free(v);
			return NULL;
		}
	}
	return v;
}

static int snap_users(struct admin_snapshot *s, struct json_object *items)
{
	s->nusers = json_object_array_length(items);
	s->users = calloc(s->nusers ? s->nusers : 1, sizeof(*s->users));
	if (!s->users)
		return -ENOMEM;
	for (size_t i = 0; i < s->nusers; i++) {
		struct json_object *o = json_object_array_get_idx(items, i);
		struct admin_user *u = &s->users[i];

		snprintf(u->name, sizeof(u->name), "%s", snap_str(o, "name"));
		u->disabled = snap_bool(o, "disabled");
		u->groups = snap_strdupv(snap_arr(o, "groups"), &u->ngroups);
		if (!u->groups)
			return -ENOMEM;
	}
	return 0;
}

static int snap_postures(struct admin_snapshot *s, struct json_object *items)
{
	s->npostures = json_object_array_length(items);
	s->postures = calloc(s->npostures ? s->npostures : 1, sizeof(*s->postures));
	if (!s->postures)
		return -ENOMEM;
	for (size_t i = 0; i < s->npostures; i++) {
		struct json_object *o = json_object_array_get_idx(items, i), *files;
		struct admin_posture *p = &s->postures[i];
		const char *v;

		p->id = (uint32_t)snap_int(o, "id");
		snprintf(p->name, sizeof(p->name), "%s", snap_str(o, "name"));
		v = snap_str(o, "kernel_min");
		snprintf(p->kernel_min, sizeof(p->kernel_min), "%s", v ? v : "");
		v = snap_str(o, "os");
		snprintf(p->os, sizeof(p->os), "%s", v ? v : "");
		p->disk_encryption = snap_bool(o, "disk_encryption");
		p->processes = snap_strdupv(snap_arr(o, "processes"), &p->nprocesses);
		if (!p->processes)
			return -ENOMEM;
		files = snap_arr(o, "files");
		p->nfiles = snap_len(files);
		p->files = calloc(p->nfiles ? p->nfiles : 1, sizeof(*p->files));
		if (!p->files)
			return -ENOMEM;
		for (size_t j = 0; j < p->nfiles; j++) {
			struct json_object *f = json_object_array_get_idx(files, j);

			p->files[j].path = strdup(snap_str(f, "path"));
			if (!p->files[j].path)
				return -ENOMEM;
			if (snap_hex(snap_str(f, "sha256"), p->files[j].sha256, 32) < 0)
				return -EINVAL;
		}
	}
	return 0;
}

static int snap_locs(struct json_object *items, struct admin_named_loc **out, size_t *n)
{
	*n = json_object_array_length(items);
	*out = calloc(*n ? *n : 1, sizeof(**out));
	if (!*out)
		return -ENOMEM;
	for (size_t i = 0; i < *n; i++) {
		struct json_object *o = json_object_array_get_idx(items, i);
		const char *addr = snap_str(o, "address");

		snap_loc(o, &(*out)[i]);
		snprintf((*out)[i].address, sizeof((*out)[i].address), "%s", addr ? addr : "");
	}
	return 0;
}

static int snap_timeout(const struct snap_map *tm, const char *name, uint32_t *age, uint32_t *idle)
{
	struct snap_id key = {.name = name}, *r;
	struct json_object *o;

	if (!name || !tm->n)
		return -ENOENT;
	r = bsearch(&key, tm->v, tm->n, sizeof(*tm->v), snap_id_cmp);
	if (!r)
		return -ENOENT;
	o = json_object_array_get_idx(tm->items, r->pos);
	*age = (uint32_t)snap_int(o, "max_age_s");
	*idle = (uint32_t)snap_int(o, "idle_s");
	return 0;
}

static int snap_seginfo_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct admin_seginfo *)a)->seg_id;
	uint32_t y = ((const struct admin_seginfo *)b)->seg_id;

	return x < y ? -1 : x > y;
}

enum admin_health admin_snapshot_health(const struct admin_snapshot *s, uint32_t seg_id)
{
	struct admin_seginfo key = {.seg_id = seg_id}, *hit;

	hit = bsearch(&key, s->seginfo, s->nseginfo, sizeof(*s->seginfo), snap_seginfo_cmp);
	return hit ? (enum admin_health)hit->health : ADMIN_HEALTH_NONE;
}

static int snap_segments(struct admin_snapshot *s, const struct snap_map *segs,
                         const struct snap_map *sgroups, const struct snap_map *srvgroups,
                         const struct snap_map *cgroups, struct admin_err *err)
{
	char why[SEG_ERR_MAX];
	int ret;

	for (size_t i = 0; i < json_object_array_length(srvgroups->items); i++) {
		struct json_object *o = json_object_array_get_idx(srvgroups->items, i);
		uint32_t *ids;
		size_t n;

		ret = snap_ids(cgroups, snap_arr(o, "connector_groups"), &ids, &n);
		if (!ret)
			ret = segset_add_server_group(s->segs, (uint32_t)snap_int(o, "id"), ids, n);
		free(ids);
		if (ret) {
			admin_err_set(err, 400, "server-group '%s': %s", snap_str(o, "name"),
			              strerror(-ret));
			return ret;
		}
	}
	s->seginfo = calloc(segs->n ? segs->n : 1, sizeof(*s->seginfo));
	if (!s->seginfo) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < json_object_array_length(segs->items); i++) {
		struct json_object *o = json_object_array_get_idx(segs->items, i);
		struct json_object *ports = snap_arr(o, "ports");
		const char *health;
		struct segment_spec spec = {0};
		struct seg_ports *pv;
		const char **hosts = NULL;
		uint32_t *srv = NULL;
		size_t nh, ns, np = snap_len(ports);

		pv = calloc(np ? np : 1, sizeof(*pv));
		ret = pv ? snap_strs(snap_arr(o, "hosts"), &hosts, &nh) : -ENOMEM;
		if (!ret)
			ret = snap_ids(srvgroups, snap_arr(o, "server_groups"), &srv, &ns);
		for (size_t j = 0; !ret && j < np; j++)
			ret = admin_parse_ports(
			    json_object_get_string(json_object_array_get_idx(ports, j)), &pv[j]);
		if (ret) {
			admin_err_set(err, ret == -ENOMEM ? 500 : 400, "segment '%s': %s",
			              snap_str(o, "name"), strerror(-ret));
			goto next;
		}
		spec.id = (uint32_t)snap_int(o, "id");
		spec.name = snap_str(o, "name");
		s->seginfo[s->nseginfo].seg_id = spec.id;
		health = snap_str(o, "health_check");
		s->seginfo[s->nseginfo++].health =
		    !health || strcmp(health, "none") == 0 ? ADMIN_HEALTH_NONE
		    : strcmp(health, "on-access") == 0     ? ADMIN_HEALTH_ON_ACCESS
							   : ADMIN_HEALTH_CONTINUOUS;
		spec.tenant = s->tenant;
		spec.flags = snap_bool(o, "double_encrypt") ? SEG_F_DOUBLE_ENCRYPT : 0;
		spec.segment_group = snap_map_id(sgroups, snap_str(o, "segment_group"));
		spec.hosts = hosts;
		spec.nhosts = nh;
		spec.ports = pv;
		spec.nports = np;
		spec.server_groups = srv;
		spec.nserver_groups = ns;
		ret = segset_add(s->segs, &spec, why, sizeof(why));
		if (ret)
			admin_err_set(err, ret == -ENOMEM ? 500 : 400, "%s", why);
	next:
		free(pv);
		free(hosts);
		free(srv);
		if (ret)
			return ret;
	}
	qsort(s->seginfo, s->nseginfo, sizeof(*s->seginfo), snap_seginfo_cmp);
	return 0;
}

/* A rule's spec parsed once from its JSON, added to the policy and to each segment's. */
struct snap_rule_spec {
	struct policy_rule_spec spec;
	struct policy_window w;
	const char **users, **groups, **postures;
	uint32_t *segids, *sgids;
};

static void snap_rule_spec_clear(struct snap_rule_spec *r)
{
	free(r->users);
	free(r->groups);
	free(r->postures);
	free(r->segids);
	free(r->sgids);
}

static int snap_rule_parse(struct snap_rule_spec *r, struct json_object *o,
                           const struct snap_map *segs, const struct snap_map *sgroups,
                           const struct snap_map *tm, struct admin_err *err)
{
	struct policy_rule_spec *spec = &r->spec;
	struct json_object *win;
	unsigned m;
	int ret;

	spec->id = (uint32_t)snap_int(o, "id");
	spec->name = snap_str(o, "name");
	spec->action = strcmp(snap_str(o, "action"), "allow") == 0 ? POLICY_ALLOW : POLICY_DENY;
	ret = snap_strs(snap_arr(o, "users"), &r->users, &spec->nusers);
	if (!ret)
		ret = snap_strs(snap_arr(o, "groups"), &r->groups, &spec->ngroups);
	if (!ret)
		ret = snap_strs(snap_arr(o, "postures"), &r->postures, &spec->npostures);
	if (!ret)
		ret = snap_ids(segs, snap_arr(o, "segments"), &r->segids, &spec->nsegments);
	if (!ret)
		ret = snap_ids(sgroups, snap_arr(o, "segment_groups"), &r->sgids,
		               &spec->nsegment_groups);
	if (ret) {
		admin_err_set(err, 400, "rule '%s': %s", spec->name, strerror(-ret));
		return ret;
	}
	spec->users = r->users;
	spec->groups = r->groups;
	spec->postures = r->postures;
	spec->segments = r->segids;
	spec->segment_groups = r->sgids;
	if (json_object_object_get_ex(o, "window", &win) &&
	    json_object_is_type(win, json_type_object)) {
		struct json_object *days = snap_arr(win, "days");

		for (size_t i = 0; i < snap_len(days); i++) {
			static const char *const d[] = {"sun", "mon", "tue", "wed",
			                                "thu", "fri", "sat"};
			const char *day =
			    json_object_get_string(json_object_array_get_idx(days, i));

			for (unsigned k = 0; k < 7; k++)
				if (strcmp(day, d[k]) == 0)
					r->w.days |= (uint8_t)POLICY_DAY(k);
		}
		admin_parse_hhmm(snap_str(win, "start"), &m);
		r->w.start_min = (uint16_t)m;
		admin_parse_hhmm(snap_str(win, "end"), &m);
		r->w.end_min = (uint16_t)m;
		r->w.utc_offset_min = (int16_t)snap_int(win, "utc_offset_min");
		spec->window = &r->w;
	}
	snap_timeout(tm, snap_str(o, "timeout"), &spec->max_age_s, &spec->idle_s);
	return 0;
}

/* Every rule's spec, in evaluation order (rules->n of them, cleared by snap_rules_free). */
static int snap_rules_parse(struct snap_map *m, struct snap_rule_spec **out, struct admin_err *err)
{
	const struct snap_map *rules = &m[ADMIN_K_RULE];
	struct snap_rule_spec *v;
	int ret = 0;

	*out = v = calloc(rules->n ? rules->n : 1, sizeof(*v));
	if (!v) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < rules->n && !ret; i++)
		ret = snap_rule_parse(&v[i], json_object_array_get_idx(rules->items, i),
		                      &m[ADMIN_K_SEGMENT], &m[ADMIN_K_SEGMENT_GROUP],
		                      &m[ADMIN_K_TIMEOUT], err);
	return ret;
}

static void snap_rules_free(struct snap_rule_spec *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		snap_rule_spec_clear(&v[i]);
	free(v);
}

static int snap_rule_add(struct policy *pol, const struct snap_rule_spec *r, struct admin_err *err)
{
	char why[SEG_ERR_MAX];
	int ret = policy_add_rule(pol, &r->spec, why, sizeof(why));

	if (ret)
		admin_err_set(err, ret == -ENOMEM ? 500 : 400, "%s", why);
	return ret;
}

/* A segment's group name and its position among the segments (sorted by name). */
struct snap_grp {
	const char *group;
	size_t pos;
};

static int snap_grp_cmp(const void *a, const void *b)
{
	return strcmp(((const struct snap_grp *)a)->group, ((const struct snap_grp *)b)->group);
}

struct snap_vec {
	uint32_t *v;
	size_t n, cap;
};

static int snap_vec_add(struct snap_vec *x, uint32_t val)
{
	if (x->n == x->cap) {
		size_t cap = x->cap ? x->cap * 2 : 4;
		uint32_t *nv = realloc(x->v, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		x->v = nv;
		x->cap = cap;
	}
	x->v[x->n++] = val;
	return 0;
}

/*
 * The per-segment index: for each segment, a policy holding only the rules that can
 * apply to it (in order), so that a decision scans a few rules instead of all of them.
 * Rules without a segment condition go into every segment's list; past SNAP_INDEX_MAX
 * copies the index is not built and decisions use the whole policy.
 */
static int snap_index(struct admin_snapshot *s, struct snap_map *m,
                      const struct snap_rule_spec *specs, struct admin_err *err)
{
	const struct snap_map *segs = &m[ADMIN_K_SEGMENT], *rules = &m[ADMIN_K_RULE];
	struct snap_grp *grp = NULL;
	struct snap_vec *lists = NULL;
	size_t nseg = segs->n, ngrp = 0, total = 0;
	int ret = 0;

	if (nseg == 0)
		return 0;
	for (size_t r = 0; r < rules->n; r++) {
		struct json_object *o = json_object_array_get_idx(rules->items, r);

		if (!snap_len(snap_arr(o, "segments")) && !snap_len(snap_arr(o, "segment_groups")))
			total += nseg;
		else
			total += snap_len(snap_arr(o, "segments"));
	}
	if (total > SNAP_INDEX_MAX) {
		log_info("tenant %s: %zu rule copies for the per-segment index, over %d: "
		         "decisions scan every rule",
		         s->tenant, total, SNAP_INDEX_MAX);
		return 0;
	}
	grp = calloc(nseg, sizeof(*grp));
	lists = calloc(nseg, sizeof(*lists));
	if (!grp || !lists) {
		ret = -ENOMEM;
		goto out;
	}
	/* Segments by group name; segments items and segs->v are both sorted by name. */
	for (size_t i = 0; i < nseg; i++) {
		const char *g =
		    snap_str(json_object_array_get_idx(segs->items, i), "segment_group");

		if (g)
			grp[ngrp++] = (struct snap_grp){.group = g, .pos = i};
	}
	qsort(grp, ngrp, sizeof(*grp), snap_grp_cmp);
	for (size_t r = 0; r < rules->n && !ret; r++) {
		struct json_object *o = json_object_array_get_idx(rules->items, r);
		struct json_object *sl = snap_arr(o, "segments"),
				   *gl = snap_arr(o, "segment_groups");

		if (!snap_len(sl) && !snap_len(gl)) {
			for (size_t i = 0; i < nseg && !ret; i++)
				ret = snap_vec_add(&lists[i], (uint32_t)r);
			continue;
		}
		for (size_t j = 0; j < snap_len(sl) && !ret; j++) {
			struct snap_id key = {
			    .name = json_object_get_string(json_object_array_get_idx(sl, j))};
			struct snap_id *hit =
			    bsearch(&key, segs->v, nseg, sizeof(*segs->v), snap_id_cmp);

			if (hit && (lists[hit - segs->v].n == 0 ||
			            lists[hit - segs->v].v[lists[hit - segs->v].n - 1] != r))
				ret = snap_vec_add(&lists[hit - segs->v], (uint32_t)r);
		}
		for (size_t j = 0; j < snap_len(gl) && !ret; j++) {
			struct snap_grp key = {
			    .group = json_object_get_string(json_object_array_get_idx(gl, j))};
			struct snap_grp *hit = bsearch(&key, grp, ngrp, sizeof(*grp), snap_grp_cmp);

			while (hit && hit > grp && strcmp(hit[-1].group, key.group) == 0)
				hit--;
			for (;
			     hit && hit < grp + ngrp && strcmp(hit->group, key.group) == 0 && !ret;
			     hit++) {
				struct snap_vec *l = &lists[hit->pos];

				if (l->n == 0 || l->v[l->n - 1] != r)
					ret = snap_vec_add(l, (uint32_t)r);
			}
		}
	}
	if (ret)
		goto out;
	s->segpols = calloc(nseg, sizeof(*s->segpols));
	if (!s->segpols) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nseg && !ret; i++) {
		struct admin_segpol *sp = &s->segpols[s->nsegpols];

		sp->seg_id = segs->v[i].id;
		sp->pol = policy_new(s->tenant, s->max_age_s, s->idle_s);
		if (!sp->pol) {
			ret = -ENOMEM;
			break;
		}
		s->nsegpols++;
		for (size_t j = 0; j < lists[i].n && !ret; j++)
			ret = snap_rule_add(sp->pol, &specs[lists[i].v[j]], err);
	}
	if (!ret)
		qsort(s->segpols, s->nsegpols, sizeof(*s->segpols), admin_segpol_cmp);
out:
	for (size_t i = 0; lists && i < nseg; i++)
		free(lists[i].v);
	free(lists);
	free(grp);
	if (ret == -ENOMEM)
		admin_err_set(err, 500, "out of memory");
	return ret;
}

int admin_snapshot_build(struct store *st, const char *tenant, struct admin_snapshot **out,
                         struct admin_err *err)
{
	return admin_snapshot_compile(st, tenant, true, out, err);
}

int admin_snapshot_compile(struct store *st, const char *tenant, bool index,
                           struct admin_snapshot **out, struct admin_err *err)
{
	struct snap_map m[ADMIN_K_MAX];
	struct snap_rule_spec *specs = NULL;
	struct admin_snapshot *s;
	uint32_t age = 0, idle = 0;
	int ret = 0, k;

	*out = NULL;
	memset(m, 0, sizeof(m));
	if (!ident_valid_tenant(tenant)) {
		admin_err_set(err, 400, "invalid tenant");
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
	for (k = 0; k < ADMIN_K_MAX && !ret; k++)
		ret = snap_map_load(st, tenant, (enum admin_kind)k, &m[k]);
	if (!ret)
		ret = admin_generation(st, tenant, &s->generation);
	if (ret) {
		admin_err_set(err, ret == -ENOMEM ? 500 : 503, "store: %s",
		              ret == -ENOMEM ? "out of memory" : store_errmsg(st));
		goto out;
	}
	if (m[ADMIN_K_TENANT].n)
		snap_timeout(
		    &m[ADMIN_K_TIMEOUT],
		    snap_str(json_object_array_get_idx(m[ADMIN_K_TENANT].items, 0), "timeout"),
		    &age, &idle);
	s->max_age_s = age;
	s->idle_s = idle;
	s->segs = segset_new(tenant);
	s->pol = policy_new(tenant, age, idle);
	if (!s->segs || !s->pol) {
		ret = -ENOMEM;
		admin_err_set(err, 500, "out of memory");
		goto out;
	}
	ret = snap_segments(s, &m[ADMIN_K_SEGMENT], &m[ADMIN_K_SEGMENT_GROUP],
	                    &m[ADMIN_K_SERVER_GROUP], &m[ADMIN_K_CONNECTOR_GROUP], err);
	if (!ret)
		ret = snap_rules_parse(m, &specs, err);
	for (size_t i = 0; !ret && i < m[ADMIN_K_RULE].n; i++)
		ret = snap_rule_add(s->pol, &specs[i], err);
	if (!ret && index)
		ret = snap_index(s, m, specs, err);
	if (!ret)
		ret = snap_users(s, m[ADMIN_K_USER].items);
	if (!ret)
		ret = snap_postures(s, m[ADMIN_K_POSTURE].items);
	if (!ret)
		ret = snap_locs(m[ADMIN_K_CONNECTOR_GROUP].items, &s->cgroups, &s->ncgroups);
	if (!ret)
		ret = snap_locs(m[ADMIN_K_BROKER].items, &s->brokers, &s->nbrokers);
	if (ret == -ENOMEM)
		admin_err_set(err, 500, "out of memory");
out:
	snap_rules_free(specs, m[ADMIN_K_RULE].n);
	for (k = 0; k < ADMIN_K_MAX; k++)
		snap_map_free(&m[k]);
	if (ret) {
		admin_snapshot_free(s);
		return ret;
	}
	*out = s;
	return 0;
}

void admin_snapshot_free(struct admin_snapshot *s)
{
	if (!s)
		return;
	segset_free(s->segs);
	policy_free(s->pol);
	for (size_t i = 0; s->segpols && i < s->nsegpols; i++)
		policy_free(s->segpols[i].pol);
	free(s->segpols);
	free(s->seginfo);
	for (size_t i = 0; s->users && i < s->nusers; i++) {
		for (size_t j = 0; s->users[i].groups && j < s->users[i].ngroups; j++)
			free(s->users[i].groups[j]);
		free(s->users[i].groups);
	}
	free(s->users);
	for (size_t i = 0; s->postures && i < s->npostures; i++) {
		struct admin_posture *p = &s->postures[i];

		for (size_t j = 0; p->files && j < p->nfiles; j++)
			free(p->files[j].path);
		free(p->files);
		for (size_t j = 0; p->processes && j < p->nprocesses; j++)
			free(p->processes[j]);
		free(p->processes);
	}
	free(s->postures);
	free(s->cgroups);
	free(s->brokers);
	free(s);
}

const struct admin_user *admin_snapshot_user(const struct admin_snapshot *s, const char *name)
{
	/* Users come sorted by name from the store. */
	size_t lo = 0, hi = s->nusers;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(name, s->users[mid].name);

		if (c == 0)
			return &s->users[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const struct admin_named_loc *admin_snapshot_cgroup(const struct admin_snapshot *s, uint32_t id)
{
	for (size_t i = 0; i < s->ncgroups; i++)
		if (s->cgroups[i].id == id)
			return &s->cgroups[i];
	return NULL;
}

/* Numeric compare of dotted versions: "6.18.0-1-amd64" >= "6.1". */
static int snap_vercmp(const char *a, const char *b)
{
	while (*a || *b) {
		unsigned long x = strtoul(a, (char **)&a, 10), y = strtoul(b, (char **)&b, 10);

		if (x != y)
			return x < y ? -1 : 1;
		if (*b != '.')
			return 0;
		b++;
		if (*a != '.')
			return (*b == '\0') ? 0 : -1;
		a++;
	}
	return 0;
}

bool admin_posture_match(const struct admin_posture *p, const struct admin_facts *f,
                         const char **why)
{
	if (p->kernel_min[0] && (!f->kernel || snap_vercmp(f->kernel, p->kernel_min) < 0)) {
		*why = "kernel older than required";
		return false;
	}
	if (p->os[0] && (!f->os || strncmp(f->os, p->os, strlen(p->os)) != 0)) {
		*why = "operating system differs";
		return false;
	}
	if (p->disk_encryption && !f->disk_encrypted) {
		*why = "root disk not encrypted";
		return false;
	}
	for (size_t i = 0; i < p->nfiles; i++) {
		bool found = false;

		for (size_t j = 0; j < f->nfiles && !found; j++)
			found = strcmp(p->files[i].path, f->files[j].path) == 0 &&
			        memcmp(p->files[i].sha256, f->files[j].sha256, 32) == 0;
		if (!found) {
			*why = "required file missing or with another SHA-256";
			return false;
		}
	}
	for (size_t i = 0; i < p->nprocesses; i++) {
		bool found = false;

		for (size_t j = 0; j < f->nprocesses && !found; j++)
			found = strcmp(p->processes[i], f->processes[j]) == 0;
		if (!found) {
			*why = "required process not running";
			return false;
		}
	}
	*why = "";
	return true;
}
