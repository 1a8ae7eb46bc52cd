/*
 * The model the broker decides with: its configuration file's, or (admin mode) the admin
 * store's compiled snapshot, swapped whole on every committed change; live re-decisions,
 * timeouts, posture, activity records and the live sessions list.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "activity.h"
#include "admin/admin.h"
#include "broker.h"
#include "log.h"

#define BD_DCACHE_SLOTS  256
#define BD_SESSIONS_WAIT 2 /* seconds the admin server waits for the ring thread */
#define BD_TICK_NS       1000000000ULL
#define FNV_OFFSET       0xcbf29ce484222325ULL
#define FNV_PRIME        0x100000001b3ULL

/* An agent's subject state: its decision cache and posture. */
struct bagent {
	struct admin_dcache *dc; /* admin mode */
	bool posture_cap;        /* its HELLO has MT_CAP_POSTURE: it knows POSTURE_QUERY */
	char **postures;         /* the satisfied profiles' names */
	size_t npostures;
	bool has_facts;
	char *kernel, *os;
	bool disk_encrypted;
	struct admin_posture_file files[MT_POSTURE_FILES_MAX];
	size_t nfiles;
	char *procs[MT_POSTURE_PROCS_MAX];
	size_t nprocs;
};

uint64_t bd_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const struct segset *bd_segs(const struct bd *bd)
{
	return bd->snap ? bd->snap->segs : bd->cfg->segs;
}

const struct policy *bd_pol(const struct bd *bd)
{
	return bd->snap ? bd->snap->pol : bd->cfg->pol;
}

int bd_group_id(const struct bd_cfg *cfg, const struct admin_snapshot *snap, const char *name,
                size_t len, uint32_t *id)
{
	if (snap) {
		for (size_t i = 0; i < snap->ncgroups; i++)
			if (strlen(snap->cgroups[i].name) == len &&
			    memcmp(snap->cgroups[i].name, name, len) == 0) {
				*id = snap->cgroups[i].id;
				return 0;
			}
		return -ENOENT;
	}
	for (size_t i = 0; i < cfg->ncgroups; i++)
		if (strlen(cfg->cgroups[i].name) == len &&
		    memcmp(cfg->cgroups[i].name, name, len) == 0) {
			*id = cfg->cgroups[i].id;
			return 0;
		}
	return -ENOENT;
}

const char *bd_group_name(const struct bd_cfg *cfg, const struct admin_snapshot *snap, uint32_t id)
{
	if (snap) {
		const struct admin_named_loc *g = admin_snapshot_cgroup(snap, id);

		return g ? g->name : NULL;
	}
	for (size_t i = 0; i < cfg->ncgroups; i++)
		if (cfg->cgroups[i].id == id)
			return cfg->cgroups[i].name;
	return NULL;
}

struct elect *bd_elect_build(const struct bd_cfg *cfg, const struct admin_snapshot *snap)
{
	struct elect *e = elect_new(&cfg->ec);
	size_t n = snap ? snap->ncgroups : cfg->ncgroups;

	if (!e)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		uint32_t id = snap ? snap->cgroups[i].id : cfg->cgroups[i].id;
		const struct elect_location *loc =
		    snap ? &snap->cgroups[i].loc : &cfg->cgroups[i].loc;

		if (elect_set_group(e, id, loc) < 0) {
			log_warnx("connector group %s: bad location",
			          snap ? snap->cgroups[i].name : cfg->cgroups[i].name);
			elect_free(e);
			return NULL;
		}
	}
	return e;
}

static const char **bd_cfg_user_groups(const struct bd_cfg *cfg, const char *user, size_t *n)
{
	for (size_t i = 0; i < cfg->nusers; i++)
		if (strcmp(cfg->users[i].name, user) == 0) {
			*n = cfg->users[i].ngroups;
			return cfg->users[i].groups;
		}
	*n = 0;
	return NULL;
}

void bd_subject(struct bd *bd, const struct bpeer *p, struct policy_subject *subj, bool *disabled)
{
	*subj = (struct policy_subject){.tenant = bd->cfg->tenant, .user = p->id.user};
	*disabled = false;
	if (!bd->snap) {
		subj->groups = bd_cfg_user_groups(bd->cfg, p->id.user, &subj->ngroups);
		return;
	}
	{
		const struct admin_user *u = admin_snapshot_user(bd->snap, p->id.user);

		if (u) {
			subj->groups = (const char *const *)u->groups;
			subj->ngroups = u->ngroups;
			*disabled = u->disabled;
		}
	}
	if (p->ag) {
		subj->postures = (const char *const *)p->ag->postures;
		subj->npostures = p->ag->npostures;
	}
}

void bd_decide(struct bd *bd, const struct bpeer *p, const char *name, uint8_t proto, uint16_t port,
               time_t now, const struct segment **seg, struct policy_decision *dec)
{
	struct policy_subject subj;
	struct admin_decision ad;
	bool disabled;

	*dec = (struct policy_decision){
	    .action = POLICY_DENY, .rule_name = "", .reason = "no segment matches"};
	bd_subject(bd, p, &subj, &disabled);
	if (!bd->snap) {
		*seg = segment_match(bd->cfg->segs, name, proto, port);
		if (*seg)
			policy_eval(bd->cfg->pol, &subj, *seg, now, dec);
		return;
	}
	admin_decide(bd->snap, p->ag ? p->ag->dc : NULL, &subj, name, proto, port, now, &ad);
	*seg = ad.seg;
	*dec = ad.d;
	/* Refused with that reason, whatever it asks. */
	if (disabled && !*seg)
		*dec = (struct policy_decision){
		    .action = POLICY_DENY, .rule_name = "", .reason = "user is disabled"};
}

bool bd_mt_recheck(struct bmt *x, const struct segment *seg, const struct policy_decision *d,
                   enum bd_cause cause, const char *why, char *reason, size_t len)
{
	if (d->action == POLICY_ALLOW && seg) {
		x->max_age_s = d->max_age_s;
		x->idle_s = d->idle_s;
		x->rule_id = d->rule_id;
		x->segment_id = seg->id;
		snprintf(x->rule, sizeof(x->rule), "%s", d->rule_name);
		snprintf(x->segment, sizeof(x->segment), "%s", seg->name);
		return true;
	}
	if (!seg && strcmp(d->reason, "user is disabled") != 0)
		snprintf(reason, len, "policy changed: segment removed");
	else if (cause == BD_CAUSE_CLOCK && *d->rule_name)
		snprintf(reason, len, "%s '%s' (its time window began)", d->reason, d->rule_name);
	else if (cause == BD_CAUSE_CLOCK)
		snprintf(reason, len, "outside the time window of rule '%s'", x->rule);
	else if (cause == BD_CAUSE_POSTURE && why && *why)
		snprintf(reason, len, "%s", why);
	else if (*d->rule_name)
		snprintf(reason, len, "policy changed: %s '%s'", d->reason, d->rule_name);
	else
		snprintf(reason, len, "policy changed: %s", d->reason);
	return false;
}

bool bd_mt_expired(const struct bmt *x, uint8_t state, uint64_t last_ms, uint64_t now_ms,
                   char *reason, size_t len)
{
	if (state == MTS_OPENING)
		return false;
	if (x->max_age_s && now_ms - x->start_ms >= (uint64_t)x->max_age_s * 1000) {
		snprintf(reason, len, "maximum session age %us reached", x->max_age_s);
		return true;
	}
	if (x->idle_s && now_ms - last_ms >= (uint64_t)x->idle_s * 1000) {
		snprintf(reason, len, "idle for %us", x->idle_s);
		return true;
	}
	return false;
}

static void bd_mt_count_timed(struct bd *bd, struct bmt *x)
{
	bool timed = x->max_age_s || x->idle_s;

	if (timed && !x->timed)
		bd->ntimed++;
	else if (!timed && x->timed)
		bd->ntimed--;
	x->timed = timed;
}

struct bmt *bd_mt_meta_new(struct bd *bd, const char *name, uint8_t proto, uint16_t port,
                           const struct segment *seg, const struct policy_decision *d)
{
	struct bmt *x = calloc(1, sizeof(*x));

	if (!x)
		return NULL;
	x->start_ms = bd_now_ms();
	x->start_wall_ms = bd_wall_ms();
	x->proto = proto;
	x->port = port;
	snprintf(x->name, sizeof(x->name), "%s", name);
	bd_mt_recheck(x, seg, d, BD_CAUSE_MODEL, NULL, NULL, 0);
	bd_mt_count_timed(bd, x);
	return x;
}

static void bd_activity(struct bd *bd, const struct bpeer *agent, const struct bmt *x,
                        const struct mtunnel *mt, enum mt_status st, const char *reason)
{
	struct activity_rec r = {
	    .tenant = bd->cfg->tenant,
	    .user = agent ? agent->id.user : "",
	    .device = agent ? agent->id.id : "",
	    .app = x->name,
	    .port = x->port,
	    .proto = x->proto,
	    .connector = x->connector,
	    .broker = bd->cfg->advertise,
	    .bytes_up = mt ? mt->leg[0].bytes : 0,
	    .bytes_down = mt ? mt->leg[1].bytes : 0,
	    .start_ms = x->start_wall_ms,
	    .end_ms = bd_wall_ms(),
	    .status = wire_status_name(st),
	    .reason = reason ? reason : "",
	    .rule_id = x->rule_id,
	    .rule = x->rule,
	    .segment = x->segment,
	};

	if (bd->act)
		activity_write(bd->act, &r);
}

void bd_mt_finish(struct bd *bd, struct mtunnel *mt, enum mt_status st, const char *reason)
{
	struct bmt *x = mt->meta;

	if (!x)
		return;
	mt->meta = NULL;
	bd_activity(bd, leg_peer(mt, 0), x, mt, st, reason);
	if (x->timed)
		bd->ntimed--;
	free(x);
}

void bd_mt_meta_drop(struct bd *bd, struct bmt *x, const struct bpeer *agent, enum mt_status st,
                     const char *reason)
{
	if (!x)
		return;
	bd_activity(bd, agent, x, NULL, st, reason);
	if (x->timed)
		bd->ntimed--;
	free(x);
}

void bd_activity_refused(struct bd *bd, const struct bpeer *p, const char *name, uint8_t proto,
                         uint16_t port, const struct segment *seg, const struct policy_decision *d,
                         enum mt_status st, const char *reason)
{
	struct bmt x = {.start_wall_ms = bd_wall_ms(), .proto = proto, .port = port};

	if (!bd->act)
		return;
	snprintf(x.name, sizeof(x.name), "%s", name);
	if (seg)
		snprintf(x.segment, sizeof(x.segment), "%s", seg->name);
	if (seg && d) {
		x.rule_id = d->rule_id;
		snprintf(x.rule, sizeof(x.rule), "%s", d->rule_name);
	}
	bd_activity(bd, p, &x, NULL, st, reason);
}

/* Posture: the union of every profile's files and processes, and each agent's facts. */

static bool bd_strv_has(char *const *v, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], s) == 0)
			return true;
	return false;
}

size_t bd_posture_union(const struct admin_snapshot *s, const char **files, size_t *nfiles,
                        const char **procs, size_t *nprocs)
{
	size_t dropped = 0;

	*nfiles = *nprocs = 0;
	for (size_t i = 0; s && i < s->npostures; i++) {
		const struct admin_posture *p = &s->postures[i];

		for (size_t j = 0; j < p->nfiles; j++) {
			if (bd_strv_has((char *const *)files, *nfiles, p->files[j].path))
				continue;
			if (*nfiles == MT_POSTURE_FILES_MAX ||
			    strlen(p->files[j].path) > MT_PATH_MAX)
				dropped++;
			else
				files[(*nfiles)++] = p->files[j].path;
		}
		for (size_t j = 0; j < p->nprocesses; j++) {
			if (bd_strv_has((char *const *)procs, *nprocs, p->processes[j]))
				continue;
			if (*nprocs == MT_POSTURE_PROCS_MAX ||
			    strlen(p->processes[j]) > MT_PROCESS_MAX)
				dropped++;
			else
				procs[(*nprocs)++] = p->processes[j];
		}
	}
	return dropped;
}

static uint64_t bd_fnv(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * FNV_PRIME;
	return (h ^ 0xff) * FNV_PRIME;
}

static uint64_t bd_posture_digest(const struct admin_snapshot *s)
{
	const char *files[MT_POSTURE_FILES_MAX], *procs[MT_POSTURE_PROCS_MAX];
	size_t nf, np;
	uint64_t h = FNV_OFFSET;

	bd_posture_union(s, files, &nf, procs, &np);
	for (size_t i = 0; i < nf; i++)
		h = bd_fnv(h, files[i]);
	h = bd_fnv(h, "");
	for (size_t i = 0; i < np; i++)
		h = bd_fnv(h, procs[i]);
	return h;
}

int bd_send_posture_query(struct bd *bd, struct bpeer *p)
{
	const char *files[MT_POSTURE_FILES_MAX], *procs[MT_POSTURE_PROCS_MAX];
	struct mt_bytes fb[MT_POSTURE_FILES_MAX], pb[MT_POSTURE_PROCS_MAX];
	struct mt_msg m = {.hdr = {.type = MT_POSTURE_QUERY}};
	uint8_t *buf;
	size_t nf, np;
	int len, ret;

	/* An older agent drops the session on a frame type it does not know. */
	if (!p->ag || !p->ag->posture_cap)
		return 0;
	if (bd_posture_union(bd->snap, files, &nf, procs, &np))
		log_warnx("posture: the profiles ask for more than %d files or %d processes, "
		          "or too long ones: the rest is not queried",
		          MT_POSTURE_FILES_MAX, MT_POSTURE_PROCS_MAX);
	for (size_t i = 0; i < nf; i++)
		fb[i] = (struct mt_bytes){(const uint8_t *)files[i], (uint16_t)strlen(files[i])};
	for (size_t i = 0; i < np; i++)
		pb[i] = (struct mt_bytes){(const uint8_t *)procs[i], (uint16_t)strlen(procs[i])};
	m.u.posture_query.version = bd->cfg_version;
	m.u.posture_query.files = fb;
	m.u.posture_query.nfiles = (uint16_t)nf;
	m.u.posture_query.procs = pb;
	m.u.posture_query.nprocs = (uint16_t)np;
	buf = malloc(MT_FRAME_MAX);
	if (!buf)
		return -ENOMEM;
	len = wire_encode(buf, MT_FRAME_MAX, &m);
	ret = len < 0 ? len : bpeer_send_frame(p, buf, (size_t)len);
	free(buf);
	if (ret < 0)
		log_warnx("POSTURE_QUERY to %s: %s", p->id.id, strerror(-ret));
	return ret < 0 ? ret : 0;
}

static void bd_facts_clear(struct bagent *ag)
{
	free(ag->kernel);
	free(ag->os);
	ag->kernel = ag->os = NULL;
	for (size_t i = 0; i < ag->nfiles; i++)
		free(ag->files[i].path);
	for (size_t i = 0; i < ag->nprocs; i++)
		free(ag->procs[i]);
	ag->nfiles = ag->nprocs = 0;
	ag->disk_encrypted = false;
	ag->has_facts = false;
}

static void bd_strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int bd_posture_eval(const struct admin_snapshot *s, const struct admin_facts *f, char ***out,
                    size_t *n)
{
	char **v = NULL;
	const char *why;

	*out = NULL;
	*n = 0;
	if (!s || !f || !s->npostures)
		return 0;
	v = calloc(s->npostures, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < s->npostures; i++) {
		if (!admin_posture_match(&s->postures[i], f, &why))
			continue;
		v[*n] = strdup(s->postures[i].name);
		if (!v[*n]) {
			bd_strv_free(v, *n);
			*n = 0;
			return -ENOMEM;
		}
		(*n)++;
	}
	*out = v;
	return 0;
}

static void bd_agent_facts(const struct bagent *ag, struct admin_facts *f)
{
	*f = (struct admin_facts){
	    .kernel = ag->kernel,
	    .os = ag->os,
	    .files = ag->files,
	    .nfiles = ag->nfiles,
	    .processes = (const char *const *)ag->procs,
	    .nprocesses = ag->nprocs,
	    .disk_encrypted = ag->disk_encrypted,
	};
}

/* Why the first profile of old that is not in new failed on s (for the close reason). */
static void bd_posture_lost(const struct admin_snapshot *s, const struct admin_facts *f,
                            char *const *old, size_t nold, char *const *cur, size_t ncur, char *buf,
                            size_t len)
{
	*buf = '\0';
	for (size_t i = 0; i < nold; i++) {
		const char *why = "profile removed";

		if (bd_strv_has(cur, ncur, old[i]))
			continue;
		for (size_t j = 0; s && j < s->npostures; j++)
			if (strcmp(s->postures[j].name, old[i]) == 0 &&
			    admin_posture_match(&s->postures[j], f, &why))
				why = "";
		snprintf(buf, len, "posture profile '%s' no longer satisfied: %s", old[i], why);
		return;
	}
}

static bool bd_strv_same(char *const *a, size_t na, char *const *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (!bd_strv_has(b, nb, a[i]))
			return false;
	return true;
}

/* Ends those of p's live mtunnels the current model no longer allows; how many ended. */
size_t bd_redecide(struct bd *bd, struct bpeer *p, enum bd_cause cause, const char *why)
{
	char reason[MT_TEXT_MAX + 1];
	struct policy_decision d;
	const struct segment *seg;
	struct mtunnel *mt, *tmp;
	time_t now = time(NULL);
	size_t closed = 0;

	for_each_mtunnel (&p->own.mc, mt, tmp) {
		struct bmt *x = mt->meta;

		if (!x || mt->leg[0].conn != &p->own.mc)
			continue;
		bd_decide(bd, p, x->name, x->proto, x->port, now, &seg, &d);
		if (bd_mt_recheck(x, seg, &d, cause, why, reason, sizeof(reason))) {
			mt->segment_id = x->segment_id;
			mt->rule_id = x->rule_id;
			bd_mt_count_timed(bd, x);
			/* A fall-over dispatches the OPEN again by its segment. */
			if (mt->state == MTS_OPENING) {
				struct bopen *o = bd_find_open(bd, mt);

				if (o) {
					o->segment_id = x->segment_id;
					o->rule_id = x->rule_id;
				}
			}
			continue;
		}
		log_event(LOG_LVL_INFO, "mtunnel.revoked",
		          "user=%s agent=%s host=%s port=%u reason=\"%s\"", p->id.user, p->id.id,
		          x->name, x->port, reason);
		bd_end(bd, mt, MT_STATUS_DENIED, reason, -1);
		closed++;
	}
	return closed;
}

size_t bd_agent_posture_update(struct bd *bd, struct bpeer *p, bool redecide)
{
	struct bagent *ag = p->ag;
	struct admin_facts f;
	char **cur = NULL, lost[MT_TEXT_MAX + 1], list[512];
	size_t ncur = 0, closed = 0, off = 0;

	if (!ag || !bd->snap)
		return 0;
	bd_agent_facts(ag, &f);
	if (bd_posture_eval(bd->snap, ag->has_facts ? &f : NULL, &cur, &ncur) < 0) {
		log_warnx("posture of %s: out of memory", p->id.id);
		return 0;
	}
	if (bd_strv_same(cur, ncur, ag->postures, ag->npostures)) {
		bd_strv_free(cur, ncur);
		return 0;
	}
	bd_posture_lost(bd->snap, &f, ag->postures, ag->npostures, cur, ncur, lost, sizeof(lost));
	bd_strv_free(ag->postures, ag->npostures);
	ag->postures = cur;
	ag->npostures = ncur;
	list[0] = '\0';
	for (size_t i = 0; i < ncur && off < sizeof(list); i++)
		off +=
		    (size_t)snprintf(list + off, sizeof(list) - off, "%s%s", i ? "," : "", cur[i]);
	log_event(LOG_LVL_INFO, "agent.posture", "agent=%s user=%s satisfied=\"%s\"", p->id.id,
	          p->id.user, list);
	admin_dcache_clear(ag->dc);
	if (redecide) {
		closed = bd_redecide(bd, p, BD_CAUSE_POSTURE, lost);
		bd_send_config(bd, p, false);
	}
	return closed;
}

void bd_on_posture(struct bd *bd, struct bpeer *p, const uint8_t *frame, size_t len)
{
	struct bagent *ag = p->ag;
	struct mt_file_fact fact;
	struct mt_bytes text;
	struct mt_iter it;
	struct mt_msg m;
	const char *why;
	uint16_t type;

	if (!ag || wire_decode(frame, len, &m, &why) < 0)
		return;
	bd_facts_clear(ag);
	ag->has_facts = true;
	ag->disk_encrypted = m.u.posture.disk_encrypted != 0;
	if (m.u.posture.kernel.len)
		ag->kernel = strndup((const char *)m.u.posture.kernel.p, m.u.posture.kernel.len);
	if (m.u.posture.os.len)
		ag->os = strndup((const char *)m.u.posture.os.p, m.u.posture.os.len);
	wire_posture_iter(&m.u.posture.attrs, &it);
	while (wire_posture_next(&it, &type, &text, &fact)) {
		if (type == MT_A_FILE_FACT && ag->nfiles < MT_POSTURE_FILES_MAX) {
			char *path = strndup((const char *)fact.path.p, fact.path.len);

			if (!path)
				continue;
			ag->files[ag->nfiles].path = path;
			memcpy(ag->files[ag->nfiles].sha256, fact.sha256, 32);
			ag->nfiles++;
		} else if (type == MT_A_PROCESS && ag->nprocs < MT_POSTURE_PROCS_MAX) {
			char *s = strndup((const char *)text.p, text.len);

			if (s)
				ag->procs[ag->nprocs++] = s;
		}
	}
	log_event(LOG_LVL_DEBUG, "agent.facts",
	          "agent=%s version=%llu kernel=\"%s\" files=%zu processes=%zu disk_encrypted=%d",
	          p->id.id, (unsigned long long)m.u.posture.version, ag->kernel ? ag->kernel : "",
	          ag->nfiles, ag->nprocs, ag->disk_encrypted);
	bd_agent_posture_update(bd, p, true);
}

int bd_agent_init(struct bd *bd, struct bpeer *p, uint32_t caps)
{
	struct bagent *ag;

	if (!bd->snap)
		return 0;
	ag = calloc(1, sizeof(*ag));
	if (!ag || !(ag->dc = admin_dcache_new(BD_DCACHE_SLOTS))) {
		free(ag);
		return -ENOMEM;
	}
	ag->posture_cap = caps & MT_CAP_POSTURE;
	p->ag = ag;
	return 0;
}

void bd_agent_free(struct bpeer *p)
{
	struct bagent *ag = p->ag;

	if (!ag)
		return;
	p->ag = NULL;
	bd_facts_clear(ag);
	bd_strv_free(ag->postures, ag->npostures);
	admin_dcache_free(ag->dc);
	free(ag);
}

/* After a swap: a new query when the profiles' union changed, profiles re-evaluated. */
void bd_model_posture_swap(struct bd *bd, bool *query)
{
	uint64_t h = bd_posture_digest(bd->snap);

	*query = h != bd->posture_qdigest;
	bd->posture_qdigest = h;
	for (struct bpeer *p = bd->peers; p; p = p->next)
		if (p->kind == BP_AGENT && p->ag) {
			admin_dcache_clear(p->ag->dc);
			/* The re-decision that follows covers the mtunnels. */
			bd_agent_posture_update(bd, p, false);
		}
}

/* The 1 s timer: timeouts, and time windows when the minute changes. */
static void bd_tick(struct ring *ring, void *arg)
{
	struct bd *bd = arg;
	int64_t minute = (int64_t)time(NULL) / 60;
	uint64_t now = bd_now_ms();
	char reason[MT_TEXT_MAX + 1];
	struct bpeer *p;
	bool clock = bd->snap && minute != bd->tick_minute;
	size_t closed = 0;

	bd->has_tick = false;
	bd->tick_minute = minute;
	for (p = bd->peers; p && (clock || bd->ntimed); p = p->next) {
		struct mtunnel *mt, *tmp;

		if (p->kind != BP_AGENT)
			continue;
		if (clock)
			closed += bd_redecide(bd, p, BD_CAUSE_CLOCK, NULL);
		for_each_mtunnel (&p->own.mc, mt, tmp) {
			struct bmt *x = mt->meta;

			if (!x || !x->timed ||
			    !bd_mt_expired(x, mt->state, mt->last_ms, now, reason, sizeof(reason)))
				continue;
			log_event(LOG_LVL_INFO, "mtunnel.timeout",
			          "user=%s agent=%s host=%s port=%u reason=\"%s\"", p->id.user,
			          p->id.id, x->name, x->port, reason);
			bd_end(bd, mt, MT_STATUS_TIMEOUT, reason, -1);
		}
	}
	if (clock && closed)
		log_event(LOG_LVL_INFO, "broker.model.clock", "minute=%lld mtunnels_closed=%zu",
		          (long long)minute, closed);
	if (ring_timer_add(ring, BD_TICK_NS, bd_tick, bd, &bd->tick) == 0)
		bd->has_tick = true;
	else
		log_warnx("timeout timer: cannot re-arm; timeouts stop");
}

/* Admin mode: a committed change from the admin server's thread, applied on the ring's. */
struct bd_swap {
	struct bd *bd;
	struct admin_snapshot *snap;
	uint64_t commit_ms;
};

static void bd_swap_apply(struct ring *ring, void *arg)
{
	struct bd_swap *w = arg;
	struct bd *bd = w->bd;

	if (!bd->snap || w->snap->generation <= bd->snap->generation) {
		admin_snapshot_free(w->snap);
	} else if (bd_model_change(bd, bd->cfg, w->snap, w->commit_ms) < 0) {
		log_event(LOG_LVL_WARN, "broker.model.applied",
		          "status=failed generation=%lld reason=\"election setup\"",
		          (long long)w->snap->generation);
		admin_snapshot_free(w->snap);
	}
	free(w);
}

static void bd_on_change(void *arg, struct store *st, struct admin_snapshot *snap)
{
	struct bd *bd = arg;
	struct bd_swap *w = malloc(sizeof(*w));

	if (w)
		*w = (struct bd_swap){.bd = bd, .snap = snap, .commit_ms = bd_now_ms()};
	if (!w || ring_post(bd->ring, bd_swap_apply, w) < 0) {
		log_warnx("admin: generation %lld not applied (out of memory)",
		          (long long)snap->generation);
		admin_snapshot_free(snap);
		free(w);
	}
}

/* Sessions: the admin server's thread asks, the ring thread answers. */
struct bd_sessions_req {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct bd *bd;
	int refs; /* the asking thread and the ring's message */
	bool done;
	int ret;
	char *json;
};

static void bd_sessions_req_put(struct bd_sessions_req *r)
{
	bool last;

	pthread_mutex_lock(&r->lock);
	last = --r->refs == 0;
	pthread_mutex_unlock(&r->lock);
	if (!last)
		return;
	free(r->json);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static void bd_rfc3339(uint64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	size_t n;

	gmtime_r(&t, &tm);
	n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, len - n, ".%03uZ", (unsigned)(ms % 1000));
}

static int bd_session_add(json_object *items, const struct bpeer *p, const struct mtunnel *mt,
                          uint64_t now)
{
	const struct bmt *x = mt->meta;
	json_object *o = json_object_new_object();
	char start[40];

	if (!o)
		return -ENOMEM;
	bd_rfc3339(x->start_wall_ms, start, sizeof(start));
	if (json_object_object_add(o, "id", json_object_new_int64(mt->leg[0].id)) ||
	    json_object_object_add(o, "user", json_object_new_string(p->id.user)) ||
	    json_object_object_add(o, "device", json_object_new_string(p->id.id)) ||
	    json_object_object_add(o, "app", json_object_new_string(x->name)) ||
	    json_object_object_add(o, "port", json_object_new_int(x->port)) ||
	    json_object_object_add(
		o, "proto", json_object_new_string(x->proto == SEG_PROTO_UDP ? "udp" : "tcp")) ||
	    json_object_object_add(o, "connector", json_object_new_string(x->connector)) ||
	    json_object_object_add(o, "state", json_object_new_string(mt_state_name(mt->state))) ||
	    json_object_object_add(o, "bytes_up",
	                           json_object_new_int64((int64_t)mt->leg[0].bytes)) ||
	    json_object_object_add(o, "bytes_down",
	                           json_object_new_int64((int64_t)mt->leg[1].bytes)) ||
	    json_object_object_add(o, "start", json_object_new_string(start)) ||
	    json_object_object_add(o, "age_s",
	                           json_object_new_int64((int64_t)((now - x->start_ms) / 1000))) ||
	    json_object_object_add(o, "idle_s",
	                           json_object_new_int64((int64_t)((now - mt->last_ms) / 1000))) ||
	    json_object_object_add(o, "rule", json_object_new_string(x->rule)) ||
	    json_object_object_add(o, "segment", json_object_new_string(x->segment)) ||
	    json_object_array_add(items, o)) {
		json_object_put(o);
		return -ENOMEM;
	}
	return 0;
}

int bd_sessions_json(struct bd *bd, char **out)
{
	json_object *root = json_object_new_object(), *items = json_object_new_array();
	uint64_t now = bd_now_ms();
	const char *s;
	int ret = -ENOMEM;

	*out = NULL;
	if (!root || !items || json_object_object_add(root, "items", items)) {
		json_object_put(items);
		goto out;
	}
	for (struct bpeer *p = bd->peers; p; p = p->next) {
		struct mtunnel *mt, *tmp;

		if (p->kind != BP_AGENT)
			continue;
		for_each_mtunnel (&p->own.mc, mt, tmp)
			if (mt->meta && bd_session_add(items, p, mt, now) < 0)
				goto out;
	}
	s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
	if (s && (*out = strdup(s)))
		ret = 0;
out:
	json_object_put(root);
	return ret;
}

static void bd_sessions_answer(struct ring *ring, void *arg)
{
	struct bd_sessions_req *r = arg;
	char *json = NULL;
	int ret = bd_sessions_json(r->bd, &json);

	pthread_mutex_lock(&r->lock);
	r->ret = ret;
	r->json = json;
	r->done = true;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
	bd_sessions_req_put(r);
}

int bd_sessions(void *arg, char **json)
{
	struct bd *bd = arg;
	struct bd_sessions_req *r = calloc(1, sizeof(*r));
	struct timespec until;
	int ret = 0;

	*json = NULL;
	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&r->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	r->bd = bd;
	r->refs = 2;
	if (ring_post(bd->ring, bd_sessions_answer, r) < 0) {
		r->refs = 1;
		bd_sessions_req_put(r);
		return -ENOMEM;
	}
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += BD_SESSIONS_WAIT;
	pthread_mutex_lock(&r->lock);
	while (!r->done && ret == 0)
		ret = -pthread_cond_timedwait(&r->cond, &r->lock, &until);
	if (r->done) {
		ret = r->ret;
		*json = r->json;
		r->json = NULL;
	}
	pthread_mutex_unlock(&r->lock);
	bd_sessions_req_put(r);
	return ret;
}

int bd_model_open(struct bd *bd)
{
	const struct bd_cfg *cfg = bd->cfg;
	struct admin_err err = {0};
	const char *why = NULL;
	char uri[4096];
	int ret;

	if (cfg->activity_sink && (ret = activity_open(cfg->activity_sink, &bd->act)) < 0)
		return ret;
	if (!cfg->admin_store)
		return 0;
	if (snprintf(uri, sizeof(uri), "sqlite:%s", cfg->admin_store) >= (int)sizeof(uri)) {
		log_warnx("admin.store: path too long");
		return -ENAMETOOLONG;
	}
	ret = store_open(uri, &bd->st, &why);
	if (ret < 0) {
		log_warnx("admin.store %s: %s", cfg->admin_store, why ? why : strerror(-ret));
		return ret;
	}
	ret = admin_migrate(bd->st);
	if (ret < 0) {
		log_warnx("admin.store %s: migrate: %s", cfg->admin_store, store_errmsg(bd->st));
		return ret;
	}
	ret = admin_snapshot_build(bd->st, cfg->tenant, &bd->snap, &err);
	if (ret < 0) {
		log_warnx("admin.store %s: the model of tenant %s: %s", cfg->admin_store,
		          cfg->tenant, err.msg);
		return ret;
	}
	bd->none = segset_new(cfg->tenant);
	if (!bd->none)
		return -ENOMEM;
	bd->posture_qdigest = bd_posture_digest(bd->snap);
	return 0;
}

int bd_model_serve(struct bd *bd)
{
	const struct bd_cfg *cfg = bd->cfg;
	struct admin_server_conf conf = {
	    .listen = cfg->admin_listen,
	    .state = cfg->state,
	    .identity_source = cfg->idsrc,
	    .tenant = cfg->tenant,
	};
	int ret;

	bd->tick_minute = (int64_t)time(NULL) / 60;
	ret = ring_timer_add(bd->ring, BD_TICK_NS, bd_tick, bd, &bd->tick);
	if (ret < 0)
		return ret;
	bd->has_tick = true;
	if (!bd->snap)
		return 0;
	conf.sessions = bd_sessions;
	conf.sessions_arg = bd;
	ret = admin_server_start(&conf, bd->st, bd_on_change, bd, &bd->srv);
	if (ret < 0)
		return ret;
	bd_crl_set_admin(bd, bd->srv);
	log_event(LOG_LVL_INFO, "broker.admin.ready", "listen=%s port=%u generation=%lld",
	          cfg->admin_listen, admin_server_port(bd->srv), (long long)bd->snap->generation);
	return 0;
}

void bd_model_stop(struct bd *bd)
{
	if (bd->has_tick && bd->ring)
		ring_timer_cancel(bd->ring, bd->tick);
	bd->has_tick = false;
	if (!bd->srv)
		return;
	bd_crl_set_admin(bd, NULL);
	admin_server_stop(bd->srv);
	bd->srv = NULL;
}

void bd_model_close(struct bd *bd)
{
	bd_model_stop(bd);
	admin_snapshot_free(bd->snap);
	bd->snap = NULL;
	segset_free(bd->none);
	bd->none = NULL;
	store_close(bd->st);
	bd->st = NULL;
	activity_close(bd->act);
	bd->act = NULL;
}
