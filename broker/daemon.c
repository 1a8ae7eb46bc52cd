/*
 * mtun-broker run: loads the configuration (segments, connector groups, users, rules),
 * listens for agents and connectors over mTLS and sorts their sessions: agent, connector
 * control, connector data (matched to its BIND by cookie). Single-threaded, one ring.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "conf.h"
#include "broker.h"
#include "enroll.h"
#include "log.h"

#define BD_SEG_PORTS_MAX 64

static void bpeer_gone(struct bpeer *p, const char *reason);

static struct bconnector *bd_find_connector(struct bd *bd, const char *id)
{
	for (struct bconnector *c = bd->connectors; c; c = c->next)
		if (strcmp(c->id, id) == 0)
			return c;
	return NULL;
}

static int bd_cgroup_id(const struct bd *bd, const char *name, size_t len, uint32_t *id)
{
	for (size_t i = 0; i < bd->ncgroups; i++)
		if (strlen(bd->cgroups[i].name) == len &&
		    memcmp(bd->cgroups[i].name, name, len) == 0) {
			*id = bd->cgroups[i].id;
			return 0;
		}
	return -ENOENT;
}

/* Ends p as if its session closed, and closes that session (no on_closed follows). */
static void bpeer_drop(struct bpeer *p, enum mt_status st, const char *reason)
{
	struct session *s = p->s;

	bpeer_gone(p, reason);
	session_close(s, st, reason);
}

static void bd_on_connector(struct bd *bd, struct bpeer *p, const struct mt_hello *h)
{
	struct bconnector *c = bd_find_connector(bd, p->id.id);
	uint32_t group;

	if (h->kind == MT_SESSION_DATA) {
		struct bopen *o;

		for (o = bd->opens; o; o = o->next)
			if (o->c == c && h->cookie.len == MT_COOKIE_LEN &&
			    CRYPTO_memcmp(o->cookie, h->cookie.p, MT_COOKIE_LEN) == 0)
				break;
		if (!c || !o) {
			session_close(p->s, MT_STATUS_DENIED, "data session for no pending BIND");
			return;
		}
		if (c->data) {
			session_close(p->s, MT_STATUS_DENIED,
			              "this connector's data session is up");
			return;
		}
		p->kind = BP_DATA;
		p->conn = c;
		c->data = p;
		c->dc.p = p;
		log_event(LOG_LVL_INFO, "broker.connector.data", "connector=%s", c->id);
		return;
	}
	if (!h->group.p || bd_cgroup_id(bd, (const char *)h->group.p, h->group.len, &group) < 0) {
		session_close(p->s, MT_STATUS_DENIED, "unknown connector group");
		return;
	}
	if (c && c->ctl) {
		log_warnx("connector %s: a new control session replaces the old one", c->id);
		bpeer_drop(c->ctl, MT_STATUS_SHUTDOWN, "replaced by a new control session");
		c = NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		session_close(p->s, MT_STATUS_ERROR, "out of memory");
		return;
	}
	snprintf(c->id, sizeof(c->id), "%s", p->id.id);
	c->group = group;
	c->ctl = p;
	mt_conn_init(&c->dc.mc, 0);
	c->dc.owner = c;
	c->next = bd->connectors;
	bd->connectors = c;
	p->kind = BP_CTL;
	p->conn = c;
	log_event(LOG_LVL_INFO, "broker.connector.up", "connector=%s group=%u", c->id, group);
}

static void bp_on_established(struct session *s, const struct ident *peer,
                              const struct mt_hello *hello, void *arg)
{
	struct bpeer *p = arg;

	p->id = *peer;
	if (peer->role == MT_ROLE_AGENT) {
		p->kind = BP_AGENT;
		mt_conn_init(&p->own.mc, 0);
		p->own.p = p;
		log_event(LOG_LVL_INFO, "broker.agent.up", "agent=%s user=%s", peer->id,
		          peer->user);
		return;
	}
	bd_on_connector(p->bd, p, hello);
}

static void bp_on_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len,
                        void *arg)
{
	struct bpeer *p = arg;
	struct bd *bd = p->bd;

	switch (hdr->type) {
	case MT_OPEN:
		if (p->kind == BP_AGENT)
			bd_on_open(bd, p, hdr, frame, len);
		else
			session_close(s, MT_STATUS_PROTOCOL, "OPEN from a connector");
		return;
	case MT_BIND_REPLY:
		if (p->kind == BP_CTL || p->kind == BP_DATA)
			bd_on_bind_reply(bd, p, hdr, frame, len);
		return;
	case MT_DATA:
	case MT_WINDOW:
	case MT_FIN:
	case MT_RESET:
		if (p->kind == BP_AGENT)
			bd_switch(bd, p, &p->own, hdr, frame, len);
		else if (p->kind == BP_DATA)
			bd_switch(bd, p, &p->conn->dc, hdr, frame, len);
		else if (hdr->type == MT_DATA)
			session_consumed(s, hdr->len);
		return;
	default:
		log_debug("%s from %s: ignored", wire_type_name(hdr->type), p->id.id);
	}
}

static void bp_on_writable(struct session *s, void *arg)
{
	bpeer_flush(arg);
}

static void bp_on_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	struct bpeer *p = arg;

	log_event(LOG_LVL_INFO, "broker.session.down", "peer=%s role=%s status=%s reason=\"%s\"",
	          p->id.id[0] ? p->id.id : "-", ident_role_name(p->id.role),
	          wire_status_name(status), reason);
	bpeer_gone(p, reason);
}

static const struct session_ops bp_ops = {
    .on_established = bp_on_established,
    .on_frame = bp_on_frame,
    .on_writable = bp_on_writable,
    .on_closed = bp_on_closed,
};

static void bpeer_gone(struct bpeer *p, const char *reason)
{
	struct bd *bd = p->bd;
	struct bconnector *c = p->conn;

	switch (p->kind) {
	case BP_AGENT:
		bd_reset_conn(bd, &p->own, MT_STATUS_ERROR, "agent session lost");
		break;
	case BP_DATA:
		c->data = NULL;
		c->dc.p = NULL;
		bd_reset_conn(bd, &c->dc, MT_STATUS_ERROR, "connector data session lost");
		break;
	case BP_CTL:
		bd_reset_conn(bd, &c->dc, MT_STATUS_ERROR, "connector lost");
		if (c->data)
			bpeer_drop(c->data, MT_STATUS_SHUTDOWN, "control session lost");
		for (struct bconnector **pp = &bd->connectors; *pp; pp = &(*pp)->next)
			if (*pp == c) {
				*pp = c->next;
				break;
			}
		log_event(LOG_LVL_INFO, "broker.connector.down", "connector=%s reason=\"%s\"",
		          c->id, reason);
		free(c);
		break;
	case BP_NEW:
		break;
	}
	while (p->qhead) {
		struct bqframe *q = p->qhead;

		p->qhead = q->next;
		free(q);
	}
	*p->pprev = p->next;
	if (p->next)
		p->next->pprev = p->pprev;
	free(p);
}

static void bd_accept_cb(struct ring *ring, int fd, void *arg)
{
	struct bd *bd = arg;
	struct session_opts o = {
	    .bufs = bd->bufs, .role = MT_ROLE_BROKER, .kind = MT_SESSION_CONTROL};
	struct bpeer *p;

	if (fd < 0)
		return;
	p = calloc(1, sizeof(*p));
	if (!p) {
		close(fd);
		return;
	}
	p->bd = bd;
	p->s = session_new(ring, bd->ctx, fd, &o, &bp_ops, p);
	if (!p->s) {
		log_warn("session");
		close(fd);
		free(p);
		return;
	}
	p->next = bd->peers;
	if (p->next)
		p->next->pprev = &p->next;
	p->pprev = &bd->peers;
	bd->peers = p;
}

static void bd_drained(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

/* Closes every session and lets the ring flush and free them (bounded), before ring_free. */
static void bd_shutdown(struct bd *bd)
{
	/* No new sessions: clients redial at once. */
	if (ring_close(bd->ring, bd->lfd, NULL, NULL) == 0)
		bd->lfd = -1;
	while (bd->peers)
		bpeer_drop(bd->peers, MT_STATUS_SHUTDOWN, "broker stopping");
	if (ring_timer_add(bd->ring, 300 * 1000000ULL, bd_drained, NULL, NULL) == 0)
		ring_run(bd->ring);
}

static void bd_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	log_info("signal %u: stopping", si->ssi_signo);
	ring_stop(ring);
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
	errno = 0;
	lo = (unsigned)strtoul(s, &end, 10);
	hi = lo;
	if (*end == '-')
		hi = (unsigned)strtoul(end + 1, &end, 10);
	if (errno || *end || end == s || lo < 1 || hi < lo || hi > 65535)
		return -EINVAL;
	p->lo = (uint16_t)lo;
	p->hi = (uint16_t)hi;
	return 0;
}

static int bd_conf_cgroups(struct bd *bd, struct conf *c)
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
		struct bd_cgroup *g = &bd->cgroups[i];

		snprintf(path, sizeof(path), "connector_groups.[%zu].id", i);
		if ((ret = conf_get_int(c, path, CONF_REQUIRED, 1, UINT32_MAX, &id)) < 0)
			return ret;
		g->id = (uint32_t)id;
		snprintf(path, sizeof(path), "connector_groups.[%zu].name", i);
		if ((ret = conf_get_str(c, path, CONF_REQUIRED, &g->name)) < 0)
			return ret;
		for (size_t j = 0; j < i; j++)
			if (bd->cgroups[j].id == g->id ||
			    strcmp(bd->cgroups[j].name, g->name) == 0) {
				log_warnx("connector_groups: '%s' (%u) given twice", g->name,
				          g->id);
				return -EEXIST;
			}
	}
	bd->ncgroups = n;
	return 0;
}

static int bd_conf_segment(struct bd *bd, struct conf *c, size_t i)
{
	struct seg_ports ports[BD_SEG_PORTS_MAX];
	struct segment_spec spec = {.tenant = bd->tenant};
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
		if (bd_cgroup_id(bd, groups[j], strlen(groups[j]), &gids[j]) < 0) {
			log_warnx("segments.[%zu]: unknown connector group '%s'", i, groups[j]);
			goto out;
		}
	/* One server group per segment, named by the segment's id. */
	sid = (uint32_t)id;
	ret = segset_add_server_group(bd->segs, sid, gids, ngroups);
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
	ret = segset_add(bd->segs, &spec, err, sizeof(err));
	if (ret < 0)
		log_warnx("segments.[%zu]: %s", i, err);
out:
	free(hosts);
	free(portv);
	free(groups);
	return ret;
}

static int bd_conf_rule(struct bd *bd, struct conf *c, size_t i)
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
	ret = policy_add_rule(bd->pol, &spec, err, sizeof(err));
	if (ret < 0)
		log_warnx("rules.[%zu]: %s", i, ret == -EINVAL ? err : strerror(-ret));
out:
	free(users);
	free(groups);
	return ret;
}

static int bd_conf_users(struct bd *bd, struct conf *c)
{
	char path[64];
	size_t n = 0;
	int ret;

	ret = conf_get_len(c, "users", CONF_OPTIONAL, &n);
	if (ret < 0 || n == 0)
		return ret;
	bd->users = calloc(n, sizeof(*bd->users));
	if (!bd->users)
		return -ENOMEM;
	bd->nusers = n;
	for (size_t i = 0; i < n; i++) {
		struct bd_user *u = &bd->users[i];

		snprintf(path, sizeof(path), "users.[%zu].name", i);
		if ((ret = conf_get_str(c, path, CONF_REQUIRED, &u->name)) < 0)
			return ret;
		if (!ident_valid_user(u->name)) {
			log_warnx("users.[%zu].name: '%s' is not a user name", i, u->name);
			return -EINVAL;
		}
		snprintf(path, sizeof(path), "users.[%zu].groups", i);
		if ((ret = conf_get_strv(c, path, CONF_OPTIONAL, &u->groups, &u->ngroups)) < 0)
			return ret;
	}
	return 0;
}

static int bd_config(struct bd *bd, struct conf *c, const char *path, const char **listen_at,
                     const char **state, const char **idsrc)
{
	const char *lvl_s = NULL;
	enum log_level lvl;
	size_t n = 0;
	int ret;

	ret = conf_load_file(c, path);
	if (ret < 0)
		return ret;
	if ((ret = conf_get_str(c, "broker.listen", CONF_REQUIRED, listen_at)) < 0 ||
	    (ret = conf_get_str(c, "broker.tenant", CONF_REQUIRED, &bd->tenant)) < 0 ||
	    (ret = conf_get_str(c, "broker.state", CONF_REQUIRED, state)) < 0 ||
	    (ret = conf_get_str(c, "broker.identity_source", CONF_OPTIONAL, idsrc)) < 0 ||
	    (ret = conf_get_str(c, "broker.log_level", CONF_OPTIONAL, &lvl_s)) < 0)
		return ret;
	bd->advertise = *listen_at;
	if ((ret = conf_get_str(c, "broker.advertise", CONF_OPTIONAL, &bd->advertise)) < 0)
		return ret;
	if (!ident_valid_tenant(bd->tenant)) {
		log_warnx("broker.tenant: '%s' is not a tenant name", bd->tenant);
		return -EINVAL;
	}
	if (lvl_s) {
		if (log_parse_level(lvl_s, &lvl) < 0) {
			log_warnx("broker.log_level: '%s'", lvl_s);
			return -EINVAL;
		}
		log_set_level(lvl);
	}
	bd->segs = segset_new(bd->tenant);
	bd->pol = policy_new(bd->tenant, 0, 0);
	if (!bd->segs || !bd->pol)
		return -ENOMEM;
	if ((ret = bd_conf_cgroups(bd, c)) < 0 ||
	    (ret = conf_get_len(c, "segments", CONF_REQUIRED, &n)) < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		if ((ret = bd_conf_segment(bd, c, i)) < 0)
			return ret;
	if ((ret = bd_conf_users(bd, c)) < 0 ||
	    (ret = conf_get_len(c, "rules", CONF_OPTIONAL, &n)) < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		if ((ret = bd_conf_rule(bd, c, i)) < 0)
			return ret;
	return conf_check_unknown(c);
}

static int bd_listen(const char *spec)
{
	struct conf_hostport hp;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
	struct addrinfo *ai = NULL;
	const char *why;
	char port[8];
	int fd, one = 1, ret;

	if (conf_parse_hostport(spec, &hp, &why) < 0) {
		log_warnx("broker.listen %s: %s", spec, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", hp.port);
	ret = getaddrinfo(hp.host, port, &hints, &ai);
	if (ret != 0) {
		log_warnx("broker.listen %s: %s", spec, gai_strerror(ret));
		return -EINVAL;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
		ret = -errno;
		log_warn("broker.listen %s", spec);
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return ret;
	}
	freeaddrinfo(ai);
	return fd;
}

static void bd_free(struct bd *bd)
{
	while (bd->opens) {
		struct bopen *o = bd->opens;

		bd->opens = o->next;
		free(o);
	}
	while (bd->connectors) {
		struct bconnector *c = bd->connectors;

		bd->connectors = c->next;
		free(c);
	}
	while (bd->peers) {
		struct bpeer *p = bd->peers;

		bd->peers = p->next;
		while (p->qhead) {
			struct bqframe *q = p->qhead;

			p->qhead = q->next;
			free(q);
		}
		free(p);
	}
	for (size_t i = 0; i < bd->nusers; i++)
		free(bd->users[i].groups);
	free(bd->users);
	mt_table_free(bd->t);
	policy_free(bd->pol);
	segset_free(bd->segs);
}

int broker_run(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	struct bd bd = {.lfd = -1};
	const char *path = NULL, *listen_at = NULL, *state = NULL, *idsrc = NULL, *why = NULL;
	struct enroll_identity idn = {0};
	STACK_OF(X509) *anchors = NULL;
	struct conf *c = NULL;
	sigset_t sigs;
	int ch, ret;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch != 'c')
			return -EINVAL;
		path = optarg;
	}
	if (!path || optind != argc) {
		log_warnx("usage: mtun-broker run --config FILE");
		return -EINVAL;
	}
	c = conf_new();
	if (!c)
		return -ENOMEM;
	ret = bd_config(&bd, c, path, &listen_at, &state, &idsrc);
	if (ret < 0)
		goto out;
	ret = enroll_load(state, idsrc, &idn);
	if (ret < 0)
		goto out;
	if (strcmp(idn.ident.tenant, bd.tenant) != 0) {
		log_warnx("%s: the certificate is for tenant %s, not %s", state, idn.ident.tenant,
		          bd.tenant);
		ret = -EINVAL;
		goto out;
	}
	anchors = sk_X509_new_null();
	bd.t = mt_table_new(1U << 20);
	if (!anchors || !bd.t || !sk_X509_push(anchors, idn.root)) {
		ret = -ENOMEM;
		goto out;
	}
	{
		struct tls_conf tc = {
		    .server = true,
		    .cert = idn.cert,
		    .chain = idn.chain,
		    .key = idn.key,
		    .anchors = anchors,
		    .peer_roles = MT_ROLE_BIT(MT_ROLE_AGENT) | MT_ROLE_BIT(MT_ROLE_CONNECTOR),
		    .peer_tenant = bd.tenant,
		};

		bd.ctx = tls_ctx_new(&tc, &why);
	}
	if (!bd.ctx) {
		log_warnx("TLS: %s", why);
		ret = -EINVAL;
		goto out;
	}
	bd.lfd = bd_listen(listen_at);
	if (bd.lfd < 0) {
		ret = bd.lfd;
		goto out;
	}
	bd.ring = ring_new(1024);
	if (!bd.ring || !(bd.bufs = ring_bufgroup_new(bd.ring, 256, MT_FRAME_MAX))) {
		ret = -errno;
		log_warn("ring");
		goto out;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	ret = ring_signals(bd.ring, &sigs, bd_signal, &bd);
	if (ret == 0)
		ret = ring_accept(bd.ring, bd.lfd, bd_accept_cb, &bd);
	if (ret < 0) {
		log_warnx("ring setup: %s", strerror(-ret));
		goto out;
	}
	log_event(LOG_LVL_INFO, "broker.ready", "listen=%s tenant=%s segments=%zu rules=%zu",
	          listen_at, bd.tenant, segset_count(bd.segs), policy_rule_count(bd.pol));
	ret = ring_run(bd.ring);
	bd_shutdown(&bd);
out:
	ring_free(bd.ring);
	if (bd.lfd >= 0)
		close(bd.lfd);
	bd_free(&bd);
	tls_ctx_free(bd.ctx);
	sk_X509_free(anchors);
	enroll_identity_free(&idn);
	conf_free(c);
	return ret;
}
