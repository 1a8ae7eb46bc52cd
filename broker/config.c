/*
 * mtun-broker's configuration file: segments, connector groups and locations, users, rules
 * and election settings, loaded whole into a struct bd_cfg (docs/broker.md, Configuration).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "conf.h"
#include "log.h"

#define BD_SEG_PORTS_MAX 64
#define BD_LOCATIONS_MAX 4096

int bd_parse_location(const char *s, struct elect_location *loc)
{
	char *end;
	double lat, lon;

	errno = 0;
	lat = strtod(s, &end);
	if (errno || end == s || *end != ',')
		return -EINVAL;
	s = end + 1;
	lon = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(lat) || !isfinite(lon) || lat < -90 ||
	    lat > 90 || lon < -180 || lon > 180)
		return -EINVAL;
	memset(loc, 0, sizeof(*loc));
	loc->lat = lat;
	loc->lon = lon;
	return 0;
}

static int bd_conf_location(struct conf *c, const char *path, struct elect_location *loc)
{
	const char *s = NULL;
	int ret = conf_get_str(c, path, CONF_OPTIONAL, &s);

	if (ret < 0 || !s)
		return ret;
	if (bd_parse_location(s, loc) < 0) {
		log_warnx("%s: '%s' is not LAT,LON in degrees", path, s);
		return -EINVAL;
	}
	return 0;
}

static int bd_cgroup_find(const struct bd_cfg *cfg, const char *name, uint32_t *id)
{
	for (size_t i = 0; i < cfg->ncgroups; i++)
		if (strcmp(cfg->cgroups[i].name, name) == 0) {
			*id = cfg->cgroups[i].id;
			return 0;
		}
	return -ENOENT;
}

static int bd_parse_ports(const char *s, struct seg_ports *p)
{
	unsigned lo, hi;
	char proto[4], *end;
	int n = 0;

	if (sscanf(s, "%3[a-z]/%n", proto, &n) != 1 || n == 0)
		return -EINVAL;
	if (strcmp(proto, "tcp") == 0)
		p->proto = SEG_PROTO_TCP;
	else if (strcmp(proto, "udp") == 0)
		p->proto = SEG_PROTO_UDP;
	else
		return -EINVAL;
	s += n;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	lo = (unsigned)strtoul(s, &end, 10);
	hi = lo;
	if (*end == '-')
		hi = (unsigned)strtoul(end + 1, &end, 10);
	if (errno || *end || lo < 1 || hi < lo || hi > 65535)
		return -EINVAL;
	p->lo = (uint16_t)lo;
	p->hi = (uint16_t)hi;
	return 0;
}

static int bd_conf_cgroups(struct bd_cfg *cfg, struct conf *c)
{
	char path[64];
	size_t n = 0;
	int64_t id;
	int ret;

	ret = conf_get_len(c, "connector_groups", CONF_REQUIRED, &n);
	if (ret < 0)
		return ret;
	if (n == 0 || n > BD_GROUPS_MAX) {
		log_warnx("connector_groups: 1 to %d groups", BD_GROUPS_MAX);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		struct bd_cgroup *g = &cfg->cgroups[i];

		snprintf(path, sizeof(path), "connector_groups.[%zu].id", i);
		if ((ret = conf_get_int(c, path, CONF_REQUIRED, 1, UINT32_MAX, &id)) < 0)
			return ret;
		g->id = (uint32_t)id;
		snprintf(path, sizeof(path), "connector_groups.[%zu].name", i);
		if ((ret = conf_get_str(c, path, CONF_REQUIRED, &g->name)) < 0)
			return ret;
		/* No location: the broker's own, so distance does not rank the group. */
		g->loc = cfg->ec.broker;
		snprintf(path, sizeof(path), "connector_groups.[%zu].location", i);
		if ((ret = bd_conf_location(c, path, &g->loc)) < 0)
			return ret;
		snprintf(g->loc.region, sizeof(g->loc.region), "%.31s", g->name);
		for (size_t j = 0; j < i; j++)
			if (cfg->cgroups[j].id == g->id ||
			    strcmp(cfg->cgroups[j].name, g->name) == 0) {
				log_warnx("connector_groups: '%s' (%u) given twice", g->name,
				          g->id);
				return -EEXIST;
			}
	}
	cfg->ncgroups = n;
	return 0;
}

static int bd_conf_locations(struct bd_cfg *cfg, struct conf *c)
{
	char path[64];
	size_t n = 0;
	int ret;

	ret = conf_get_len(c, "locations", CONF_OPTIONAL, &n);
	if (ret < 0 || n == 0)
		return ret;
	if (n > BD_LOCATIONS_MAX) {
		log_warnx("locations: at most %d", BD_LOCATIONS_MAX);
		return -EINVAL;
	}
	cfg->locs = calloc(n, sizeof(*cfg->locs));
	if (!cfg->locs)
		return -ENOMEM;
	cfg->nlocs = n;
	for (size_t i = 0; i < n; i++) {
		struct bd_location *l = &cfg->locs[i];
		const char *at = NULL;

		snprintf(path, sizeof(path), "locations.[%zu].name", i);
		if ((ret = conf_get_str(c, path, CONF_REQUIRED, &l->name)) < 0)
			return ret;
		snprintf(path, sizeof(path), "locations.[%zu].at", i);
		if ((ret = conf_get_str(c, path, CONF_REQUIRED, &at)) < 0)
			return ret;
		if (bd_parse_location(at, &l->loc) < 0) {
			log_warnx("%s: '%s' is not LAT,LON in degrees", path, at);
			return -EINVAL;
		}
		snprintf(l->loc.region, sizeof(l->loc.region), "%.31s", l->name);
		for (size_t j = 0; j < i; j++)
			if (strcmp(cfg->locs[j].name, l->name) == 0) {
				log_warnx("locations: '%s' given twice", l->name);
				return -EEXIST;
			}
	}
	return 0;
}

static int bd_conf_segment(struct bd_cfg *cfg, struct conf *c, size_t i)
{
	struct seg_ports ports[BD_SEG_PORTS_MAX];
	struct segment_spec spec = {.tenant = cfg->tenant};
	const char **hosts = NULL, **portv = NULL, **groups = NULL;
	uint32_t gids[BD_GROUPS_MAX], sid;
	size_t nports = 0, ngroups = 0;
	char path[64], err[SEG_ERR_MAX];
	int64_t id;
	int ret;

#define SEG_PATH(key) (snprintf(path, sizeof(path), "segments.[%zu]." key, i), path)
	if ((ret = conf_get_int(c, SEG_PATH("id"), CONF_REQUIRED, 1, UINT32_MAX, &id)) < 0 ||
	    (ret = conf_get_str(c, SEG_PATH("name"), CONF_REQUIRED, &spec.name)) < 0 ||
	    (ret = conf_get_strv(c, SEG_PATH("hosts"), CONF_REQUIRED, &hosts, &spec.nhosts)) < 0 ||
	    (ret = conf_get_strv(c, SEG_PATH("ports"), CONF_REQUIRED, &portv, &nports)) < 0 ||
	    (ret = conf_get_strv(c, SEG_PATH("connector_groups"), CONF_REQUIRED, &groups,
	                         &ngroups)) < 0)
		goto out;
#undef SEG_PATH
	ret = -EINVAL;
	if (nports == 0 || nports > BD_SEG_PORTS_MAX || ngroups == 0 || ngroups > BD_GROUPS_MAX) {
		log_warnx("segments.[%zu]: 1 to %d ports and 1 to %d connector groups", i,
		          BD_SEG_PORTS_MAX, BD_GROUPS_MAX);
		goto out;
	}
	for (size_t j = 0; j < nports; j++)
		if (bd_parse_ports(portv[j], &ports[j]) < 0) {
			log_warnx("segments.[%zu].ports: '%s' is not tcp/PORT[-PORT] or udp/...", i,
			          portv[j]);
			goto out;
		}
	for (size_t j = 0; j < ngroups; j++)
		if (bd_cgroup_find(cfg, groups[j], &gids[j]) < 0) {
			log_warnx("segments.[%zu]: unknown connector group '%s'", i, groups[j]);
			goto out;
		}
	/* One server group per segment, named by the segment's id. */
	sid = (uint32_t)id;
	ret = segset_add_server_group(cfg->segs, sid, gids, ngroups);
	if (ret < 0) {
		log_warnx("segments.[%zu]: server group: %s", i, strerror(-ret));
		goto out;
	}
	spec.id = sid;
	spec.hosts = hosts;
	spec.ports = ports;
	spec.nports = nports;
	spec.server_groups = &sid;
	spec.nserver_groups = 1;
	ret = segset_add(cfg->segs, &spec, err, sizeof(err));
	if (ret < 0)
		log_warnx("segments.[%zu]: %s", i, err);
out:
	free(hosts);
	free(portv);
	free(groups);
	return ret;
}

static int bd_conf_rule(struct bd_cfg *cfg, struct conf *c, size_t i)
{
	struct policy_rule_spec spec = {0};
	const char **users = NULL, **groups = NULL, *action = NULL;
	uint32_t segs[BD_GROUPS_MAX];
	char path[64], err[256];
	size_t nsegs = 0;
	int64_t v;
	int ret;

#define RULE_PATH(key) (snprintf(path, sizeof(path), "rules.[%zu]." key, i), path)
	if ((ret = conf_get_int(c, RULE_PATH("id"), CONF_REQUIRED, 1, UINT32_MAX, &v)) < 0 ||
	    (ret = conf_get_str(c, RULE_PATH("name"), CONF_REQUIRED, &spec.name)) < 0 ||
	    (ret = conf_get_str(c, RULE_PATH("action"), CONF_REQUIRED, &action)) < 0 ||
	    (ret = conf_get_strv(c, RULE_PATH("users"), CONF_OPTIONAL, &users, &spec.nusers)) < 0 ||
	    (ret = conf_get_strv(c, RULE_PATH("groups"), CONF_OPTIONAL, &groups, &spec.ngroups)) <
	        0 ||
	    (ret = conf_get_len(c, RULE_PATH("segments"), CONF_OPTIONAL, &nsegs)) < 0)
		goto out;
#undef RULE_PATH
	spec.id = (uint32_t)v;
	ret = -EINVAL;
	if (nsegs > BD_GROUPS_MAX) {
		log_warnx("rules.[%zu].segments: at most %d", i, BD_GROUPS_MAX);
		goto out;
	}
	for (size_t j = 0; j < nsegs; j++) {
		snprintf(path, sizeof(path), "rules.[%zu].segments.[%zu]", i, j);
		if ((ret = conf_get_int(c, path, CONF_REQUIRED, 1, UINT32_MAX, &v)) < 0)
			goto out;
		segs[j] = (uint32_t)v;
	}
	ret = -EINVAL;
	if (strcmp(action, "allow") == 0)
		spec.action = POLICY_ALLOW;
	else if (strcmp(action, "deny") == 0)
		spec.action = POLICY_DENY;
	else {
		log_warnx("rules.[%zu].action: '%s' is not allow or deny", i, action);
		goto out;
	}
	spec.users = users;
	spec.groups = groups;
	spec.segments = segs;
	spec.nsegments = nsegs;
	ret = policy_add_rule(cfg->pol, &spec, err, sizeof(err));
	if (ret < 0)
		log_warnx("rules.[%zu]: %s", i, ret == -EINVAL ? err : strerror(-ret));
out:
	free(users);
	free(groups);
	return ret;
}

static int bd_conf_users(struct bd_cfg *cfg, struct conf *c)
{
	char path[64];
	size_t n = 0;
	int ret;

	ret = conf_get_len(c, "users", CONF_OPTIONAL, &n);
	if (ret < 0 || n == 0)
		return ret;
	cfg->users = calloc(n, sizeof(*cfg->users));
	if (!cfg->users)
		return -ENOMEM;
	cfg->nusers = n;
	for (size_t i = 0; i < n; i++) {
		struct bd_user *u = &cfg->users[i];

		snprintf(path, sizeof(path), "users.[%zu].name", i);
		if ((ret = conf_get_str(c, path, CONF_REQUIRED, &u->name)) < 0)
			return ret;
		if (!ident_valid_user(u->name)) {
			log_warnx("users.[%zu].name: '%s' is not a user name", i, u->name);
			return -EINVAL;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(cfg->users[j].name, u->name) == 0) {
				log_warnx("users: '%s' given twice", u->name);
				return -EEXIST;
			}
		snprintf(path, sizeof(path), "users.[%zu].groups", i);
		if ((ret = conf_get_strv(c, path, CONF_OPTIONAL, &u->groups, &u->ngroups)) < 0)
			return ret;
	}
	return 0;
}

static int bd_conf_election(struct bd_cfg *cfg, struct conf *c)
{
	struct elect_config *ec = &cfg->ec;
	uint64_t ttl = 60000, rttl;
	int64_t k = ELECT_K_DEFAULT;
	int ret;

	ec->probe_ms = 2000;
	ec->holddown_ms = 30000;
	ec->cache_max = 65536;
	if ((ret = conf_get_int(c, "election.k", CONF_OPTIONAL, 1, ELECT_K_MAX, &k)) < 0 ||
	    (ret = conf_get_duration(c, "election.probe_timeout", CONF_OPTIONAL, 10, 60000,
	                             &ec->probe_ms)) < 0 ||
	    (ret = conf_get_duration(c, "election.ttl", CONF_OPTIONAL, 1000, 86400000, &ttl)) < 0 ||
	    (ret = conf_get_duration(c, "election.holddown", CONF_OPTIONAL, 0, 86400000,
	                             &ec->holddown_ms)) < 0)
		return ret;
	rttl = ttl;
	if ((ret = conf_get_duration(c, "election.resolve_ttl", CONF_OPTIONAL, 1000, 86400000,
	                             &rttl)) < 0)
		return ret;
	ec->k = (unsigned)k;
	ec->ttl_ms = ttl;
	cfg->resolve_ttl_s = (uint32_t)(rttl / 1000);
	return 0;
}

/*
 * admin = { listen; store; }: the model comes from the admin store, so the file must not
 * also give it. activity = { sink; }.
 */
static int bd_conf_admin(struct bd_cfg *cfg, struct conf *c)
{
	static const char *const model_keys[] = {"connector_groups", "segments", "users", "rules"};
	int ret;

	if ((ret = conf_get_str(c, "activity.sink", CONF_OPTIONAL, &cfg->activity_sink)) < 0)
		return ret;
	if (conf_has(c, "activity") && !cfg->activity_sink) {
		log_warnx("activity: sink is required (file:PATH, syslog or tcp:HOST:PORT)");
		return -EINVAL;
	}
	if (!conf_has(c, "admin"))
		return 0;
	if ((ret = conf_get_str(c, "admin.listen", CONF_REQUIRED, &cfg->admin_listen)) < 0 ||
	    (ret = conf_get_str(c, "admin.store", CONF_REQUIRED, &cfg->admin_store)) < 0) {
		log_warnx("admin: both listen and store are required");
		return ret;
	}
	if (!*cfg->admin_store || !*cfg->admin_listen) {
		log_warnx("admin: listen and store must not be empty");
		return -EINVAL;
	}
	for (size_t i = 0; i < sizeof(model_keys) / sizeof(model_keys[0]); i++)
		if (conf_has(c, model_keys[i])) {
			log_warnx(
			    "%s: with an admin section the model (connector groups, segments, "
			    "users, rules) comes from admin.store %s; remove '%s' from the file",
			    model_keys[i], cfg->admin_store, model_keys[i]);
			return -EINVAL;
		}
	return 0;
}

static int bd_cfg_read(struct bd_cfg *cfg, const char *path)
{
	struct conf *c = cfg->conf;
	const char *lvl_s = NULL;
	size_t n = 0;
	int ret;

	ret = conf_load_file(c, path);
	if (ret < 0)
		return ret;
	if ((ret = conf_get_str(c, "broker.listen", CONF_REQUIRED, &cfg->listen)) < 0 ||
	    (ret = conf_get_str(c, "broker.tenant", CONF_REQUIRED, &cfg->tenant)) < 0 ||
	    (ret = conf_get_str(c, "broker.state", CONF_REQUIRED, &cfg->state)) < 0 ||
	    (ret = conf_get_str(c, "broker.identity_source", CONF_OPTIONAL, &cfg->idsrc)) < 0 ||
	    (ret = conf_get_str(c, "broker.log_level", CONF_OPTIONAL, &lvl_s)) < 0)
		return ret;
	cfg->advertise = cfg->listen;
	if ((ret = conf_get_str(c, "broker.advertise", CONF_OPTIONAL, &cfg->advertise)) < 0 ||
	    (ret = bd_conf_location(c, "broker.location", &cfg->ec.broker)) < 0)
		return ret;
	snprintf(cfg->ec.broker.region, sizeof(cfg->ec.broker.region), "broker");
	if (!ident_valid_tenant(cfg->tenant)) {
		log_warnx("broker.tenant: '%s' is not a tenant name", cfg->tenant);
		return -EINVAL;
	}
	if (lvl_s) {
		if (log_parse_level(lvl_s, &cfg->log_level) < 0) {
			log_warnx("broker.log_level: '%s'", lvl_s);
			return -EINVAL;
		}
		cfg->has_log_level = true;
	}
	cfg->segs = segset_new(cfg->tenant);
	cfg->pol = policy_new(cfg->tenant, 0, 0);
	if (!cfg->segs || !cfg->pol)
		return -ENOMEM;
	if ((ret = bd_conf_admin(cfg, c)) < 0 || (ret = bd_conf_election(cfg, c)) < 0 ||
	    (ret = bd_conf_locations(cfg, c)) < 0)
		return ret;
	if (cfg->admin_store)
		return conf_check_unknown(c);
	if ((ret = bd_conf_cgroups(cfg, c)) < 0 ||
	    (ret = conf_get_len(c, "segments", CONF_REQUIRED, &n)) < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		if ((ret = bd_conf_segment(cfg, c, i)) < 0)
			return ret;
	if ((ret = bd_conf_users(cfg, c)) < 0 ||
	    (ret = conf_get_len(c, "rules", CONF_OPTIONAL, &n)) < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		if ((ret = bd_conf_rule(cfg, c, i)) < 0)
			return ret;
	return conf_check_unknown(c);
}

void bd_cfg_free(struct bd_cfg *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->nusers; i++)
		free(cfg->users[i].groups);
	free(cfg->users);
	free(cfg->locs);
	policy_free(cfg->pol);
	segset_free(cfg->segs);
	conf_free(cfg->conf);
	free(cfg);
}

int bd_cfg_load(const char *path, struct bd_cfg **out)
{
	struct bd_cfg *cfg = calloc(1, sizeof(*cfg));
	int ret = -ENOMEM;

	if (!cfg || !(cfg->conf = conf_new()))
		goto fail;
	ret = bd_cfg_read(cfg, path);
	if (ret < 0)
		goto fail;
	*out = cfg;
	return 0;
fail:
	bd_cfg_free(cfg);
	return ret;
}
