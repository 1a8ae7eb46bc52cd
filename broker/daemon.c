/*
 * mtun-broker run: listens for agents and connectors over mTLS and sorts their sessions:
 * agent, connector control, connector data (matched to its BIND by cookie); SIGHUP reloads
 * the configuration. Single-threaded, one ring.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "activity.h"
#include "admin/admin.h"
#include "broker.h"
#include "conf.h"
#include "enroll.h"
#include "log.h"

static void bpeer_gone(struct bpeer *p, const char *reason);

static size_t bd_chash_slot(const char *id)
{
	uint32_t h = 2166136261U;

	for (; *id; id++)
		h = (h ^ (uint8_t)*id) * 16777619U;
	return h & (BD_CHASH - 1);
}

struct bconnector *bd_find_connector(struct bd *bd, const char *id)
{
	for (struct bconnector *c = bd->chash[bd_chash_slot(id)]; c; c = c->hnext)
		if (strcmp(c->id, id) == 0)
			return c;
	return NULL;
}

static void bd_connector_unlink(struct bd *bd, struct bconnector *c)
{
	struct bconnector **pp;

	for (pp = &bd->chash[bd_chash_slot(c->id)]; *pp; pp = &(*pp)->hnext)
		if (*pp == c) {
			*pp = c->hnext;
			break;
		}
	for (pp = &bd->connectors; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
}

static const struct bd_location *bd_find_location(const struct bd_cfg *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nlocs; i++)
		if (strcmp(cfg->locs[i].name, name) == 0)
			return &cfg->locs[i];
	return NULL;
}

void bd_elect_register(struct bd *bd, struct bconnector *c)
{
	struct elect_connector ec = {
	    .group = c->group,
	    .has_location = c->has_location,
	    .loc = c->loc,
	    .healthy = c->ctl != NULL,
	    .load = c->load,
	    .capacity = c->has_capacity ? c->capacity : 0,
	};
	int ret;

	/* A reported capacity of 0 means "take no mtunnels", not "no limit". */
	if (c->has_capacity && c->capacity == 0)
		ec.healthy = false;
	snprintf(ec.id, sizeof(ec.id), "%s", c->id);
	ret = elect_set_connector(bd->el, &ec);
	if (ret < 0)
		log_warnx("connector %s: election registry: %s", c->id, strerror(-ret));
}

void bpeer_drop(struct bpeer *p, enum mt_status st, const char *reason)
{
	struct session *s = p->s;

	bpeer_gone(p, reason);
	session_close(s, st, reason);
}

static struct bopen *bd_open_by_cookie(struct bconnector *c, const struct mt_bytes *cookie)
{
	if (cookie->len != MT_COOKIE_LEN)
		return NULL;
	for (struct bopen *o = c->opens; o; o = o->next)
		if (CRYPTO_memcmp(o->cookie, cookie->p, MT_COOKIE_LEN) == 0)
			return o;
	return NULL;
}

static void bd_on_connector(struct bd *bd, struct bpeer *p, const struct mt_hello *h)
{
	struct bconnector *c = bd_find_connector(bd, p->id.id);
	const struct bd_location *loc = NULL;
	char where[MT_TOKEN_MAX + 1] = "";
	uint32_t group;
	size_t slot;

	if (h->kind == MT_SESSION_DATA) {
		if (!c || !bd_open_by_cookie(c, &h->cookie)) {
			log_event(
			    LOG_LVL_WARN, "broker.refused",
			    "peer=%s role=connector reason=\"data session for no pending BIND\"",
			    p->id.id);
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
	if (!h->group.p ||
	    bd_group_id(bd->cfg, bd->snap, (const char *)h->group.p, h->group.len, &group) < 0) {
		log_event(LOG_LVL_WARN, "broker.refused",
		          "peer=%s role=connector reason=\"unknown connector group '%.*s'\"",
		          p->id.id, (int)h->group.len, h->group.p ? (const char *)h->group.p : "");
		session_close(p->s, MT_STATUS_DENIED, "unknown connector group");
		return;
	}
	if (h->location.len) {
		memcpy(where, h->location.p, h->location.len);
		loc = bd_find_location(bd->cfg, where);
	}
	if (c && c->ctl) {
		log_warnx("connector %s: a new control session replaces the old one", c->id);
		bpeer_drop(c->ctl, MT_STATUS_SHUTDOWN, "replaced by a new control session");
		c = bd_find_connector(bd, p->id.id);
	}
	if (c) {
		/* Its data session outlived the control session: it is replaced too. */
		if (c->data)
			bpeer_drop(c->data, MT_STATUS_SHUTDOWN, "control session replaced");
		c = bd_find_connector(bd, p->id.id);
	}
	if (!c) {
		c = calloc(1, sizeof(*c));
		if (!c) {
			session_close(p->s, MT_STATUS_ERROR, "out of memory");
			return;
		}
		snprintf(c->id, sizeof(c->id), "%s", p->id.id);
		mt_conn_init(&c->dc.mc, 0);
		c->dc.owner = c;
		c->next = bd->connectors;
		bd->connectors = c;
		slot = bd_chash_slot(c->id);
		c->hnext = bd->chash[slot];
		bd->chash[slot] = c;
	}
	c->group = group;
	c->ctl = p;
	c->has_capacity = h->has_capacity;
	c->capacity = h->capacity;
	snprintf(c->location, sizeof(c->location), "%s", where);
	c->has_location = loc != NULL;
	if (loc)
		c->loc = loc->loc;
	p->kind = BP_CTL;
	p->conn = c;
	bd_elect_register(bd, c);
	log_event(LOG_LVL_INFO, "broker.connector.up",
	          "connector=%s group=%u location=%s%s capacity=%s%u", c->id, group,
	          where[0] ? where : "-", where[0] && !loc ? "(unknown:group's)" : "",
	          h->has_capacity ? "" : "none/", h->has_capacity ? h->capacity : 0);
}

static void bp_on_established(struct session *s, const struct ident *peer,
                              const struct mt_hello *hello, void *arg)
{
	struct bpeer *p = arg;
	struct bd *bd = p->bd;

	p->id = *peer;
	p->has_serial = bd_crl_take_serial(bd, peer, &p->serial);
	/* Revoked between its handshake and now. */
	if (p->has_serial && bd_crl_is_revoked(bd, &p->serial)) {
		log_event(LOG_LVL_WARN, "broker.session.revoked", "peer=%s role=%s", peer->id,
		          ident_role_name(peer->role));
		bpeer_drop(p, MT_STATUS_REVOKED, "certificate revoked");
		return;
	}
	if (peer->role == MT_ROLE_AGENT) {
		p->kind = BP_AGENT;
		mt_conn_init(&p->own.mc, 0);
		p->own.p = p;
		if (bd_agent_init(bd, p, hello->caps) < 0) {
			bpeer_drop(p, MT_STATUS_ERROR, "out of memory");
			return;
		}
		log_event(LOG_LVL_INFO, "broker.agent.up", "agent=%s user=%s", peer->id,
		          peer->user);
		/* Admin mode: its facts first; it satisfies no profile until they come. */
		if (bd->snap)
			bd_send_posture_query(bd, p);
		bd_send_config(bd, p, true);
		return;
	}
	if (peer->role != MT_ROLE_CONNECTOR) {
		log_event(LOG_LVL_WARN, "broker.refused",
		          "peer=%s role=%s reason=\"role not served\"", peer->id,
		          ident_role_name(peer->role));
		bpeer_drop(p, MT_STATUS_DENIED, "role not served here");
		return;
	}
	bd_on_connector(bd, p, hello);
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
	case MT_RESOLVE:
		if (p->kind == BP_AGENT)
			bd_on_resolve(bd, p, frame, len);
		else
			session_close(s, MT_STATUS_PROTOCOL, "RESOLVE from a connector");
		return;
	case MT_POSTURE:
		if (p->kind == BP_AGENT)
			bd_on_posture(bd, p, frame, len);
		return;
	case MT_PROBE_REPLY:
		if (p->kind == BP_CTL)
			bd_on_probe_reply(bd, p, frame, len);
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
	const struct ident *who = &p->id;

	/* Refused after its TLS handshake (HELLO checks): name it by its certificate. */
	if (p->kind == BP_NEW && session_peer(s))
		who = session_peer(s);
	log_event(p->kind == BP_NEW ? LOG_LVL_WARN : LOG_LVL_INFO, "broker.session.down",
	          "peer=%s role=%s status=%s reason=\"%s\"", who->id[0] ? who->id : "-",
	          ident_role_name(who->role), wire_status_name(status), reason);
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
		bd_elections_peer_gone(bd, p);
		bd_reset_conn(bd, &p->own, MT_STATUS_ERROR, "agent session lost");
		bd_agent_free(p);
		break;
	case BP_DATA:
		c->data = NULL;
		c->dc.p = NULL;
		/* BINDs still waiting fall over; open mtunnels end. */
		bd_connector_lost(bd, c);
		bd_reset_conn(bd, &c->dc, MT_STATUS_ERROR, "connector data session lost");
		if (!c->ctl) {
			bd_connector_unlink(bd, c);
			free(c);
		}
		break;
	case BP_CTL:
		c->ctl = NULL;
		elect_remove_connector(bd->el, c->id);
		bd_elections_peer_gone(bd, p);
		bd_connector_lost(bd, c);
		bd_reset_conn(bd, &c->dc, MT_STATUS_ERROR, "connector lost");
		log_event(LOG_LVL_INFO, "broker.connector.down", "connector=%s reason=\"%s\"",
		          c->id, reason);
		if (c->data) {
			/* Its bpeer_gone frees c. */
			bpeer_drop(c->data, MT_STATUS_SHUTDOWN, "control session lost");
		} else {
			bd_connector_unlink(bd, c);
			free(c);
		}
		break;
	case BP_NEW:
		break;
	}
	bpeer_queue_free(p);
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
	bd_elections_free(bd);
	if (ring_timer_add(bd->ring, 300 * 1000000ULL, bd_drained, NULL, NULL) == 0)
		ring_run(bd->ring);
}

static void bd_apply_log_level(const struct bd_cfg *cfg)
{
	if (cfg->has_log_level)
		log_set_level(cfg->log_level);
}

static bool bd_streq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

int bd_model_change(struct bd *bd, struct bd_cfg *cfg, struct admin_snapshot *snap,
                    uint64_t commit_ms)
{
	struct bd_cfg *old_cfg = bd->cfg;
	struct admin_snapshot *old_snap = bd->snap;
	struct elect *e = bd_elect_build(cfg, snap);
	size_t sent = 0, closed = 0, dropped = 0, users;
	struct bconnector *c, *next;
	struct bpeer *p;
	bool query = false;

	if (!e)
		return -EINVAL;
	bd->cfg = cfg;
	bd->snap = snap;
	elect_free(bd->el);
	bd->el = e;
	bd->cfg_version++;
	bd_apply_log_level(cfg);
	/* Connectors keep their sessions if their group (by name) still exists. */
	for (c = bd->connectors; c; c = next) {
		const char *gname = bd_group_name(old_cfg, old_snap, c->group);
		uint32_t gid;

		next = c->next;
		if (!c->ctl)
			continue;
		if (!gname || bd_group_id(cfg, snap, gname, strlen(gname), &gid) < 0) {
			log_event(LOG_LVL_WARN, "broker.connector.dropped",
			          "connector=%s reason=\"its group was removed\"", c->id);
			/* May free c and its successor's data peer, never another connector. */
			bpeer_drop(c->ctl, MT_STATUS_SHUTDOWN, "connector group removed");
			dropped++;
			continue;
		}
		c->group = gid;
		if (c->location[0]) {
			const struct bd_location *loc = bd_find_location(cfg, c->location);

			c->has_location = loc != NULL;
			if (loc)
				c->loc = loc->loc;
		}
		bd_elect_register(bd, c);
	}
	if (snap && snap != old_snap)
		bd_model_posture_swap(bd, &query);
	for (p = bd->peers; p; p = p->next) {
		uint64_t before = p->fwd_digest;

		if (p->kind != BP_AGENT)
			continue;
		if (query)
			bd_send_posture_query(bd, p);
		if (bd_send_config(bd, p, false) == 0 && p->fwd_digest != before)
			sent++;
		closed += bd_redecide(bd, p, BD_CAUSE_MODEL, NULL);
	}
	users = snap ? snap->nusers : cfg->nusers;
	log_event(LOG_LVL_INFO, "broker.model.applied",
	          "generation=%lld version=%llu segments=%zu rules=%zu users=%zu config_sent=%zu "
	          "mtunnels_closed=%zu connectors_dropped=%zu posture_query=%s apply_ms=%llu",
	          snap ? (long long)snap->generation : 0LL, (unsigned long long)bd->cfg_version,
	          segset_count(bd_segs(bd)), policy_rule_count(bd_pol(bd)), users, sent, closed,
	          dropped, query ? "sent" : "same", (unsigned long long)(bd_now_ms() - commit_ms));
	if (old_cfg != cfg)
		bd_cfg_free(old_cfg);
	if (old_snap != snap)
		admin_snapshot_free(old_snap);
	return 0;
}

/*
 * SIGHUP: the file is loaded whole or not at all. Segments, rules, users, groups,
 * locations and election settings change live; listen, tenant, state, the admin section
 * and the activity sink need a restart (the sink's file is reopened).
 */
static void bd_reload(struct bd *bd)
{
	struct bd_cfg *cfg = NULL, *old = bd->cfg;
	uint64_t t0 = bd_now_ms();

	if (bd->act && activity_reopen(bd->act) < 0)
		log_warnx("reload: the activity sink could not be reopened");
	if (bd_cfg_load(bd->cfg_path, &cfg) < 0) {
		log_event(LOG_LVL_WARN, "broker.reload",
		          "status=failed file=%s "
		          "reason=\"the running configuration stays\"",
		          bd->cfg_path);
		return;
	}
	if (strcmp(cfg->tenant, old->tenant) != 0 || strcmp(cfg->state, old->state) != 0 ||
	    !bd_streq(cfg->admin_store, old->admin_store) ||
	    !bd_streq(cfg->admin_listen, old->admin_listen) ||
	    !bd_streq(cfg->activity_sink, old->activity_sink)) {
		log_event(LOG_LVL_WARN, "broker.reload",
		          "status=failed reason=\"tenant, state, admin and activity need a "
		          "restart\"");
		bd_cfg_free(cfg);
		return;
	}
	if (strcmp(cfg->listen, old->listen) != 0)
		log_warnx("reload: broker.listen changes only at restart (still %s)", old->listen);
	if (bd_model_change(bd, cfg, bd->snap, t0) < 0) {
		log_event(LOG_LVL_WARN, "broker.reload", "status=failed reason=\"election setup\"");
		bd_cfg_free(cfg);
		return;
	}
	log_event(LOG_LVL_INFO, "broker.reload", "status=ok version=%llu segments=%zu rules=%zu",
	          (unsigned long long)bd->cfg_version, segset_count(bd_segs(bd)),
	          policy_rule_count(bd_pol(bd)));
}

static void bd_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	if (si->ssi_signo == SIGHUP) {
		bd_reload(arg);
		return;
	}
	log_info("signal %u: stopping", si->ssi_signo);
	ring_stop(ring);
}

/* What the ring did not free (setup failed before sessions ran). */
static void bd_free(struct bd *bd)
{
	bd_elections_free(bd);
	while (bd->connectors) {
		struct bconnector *c = bd->connectors;

		bd->connectors = c->next;
		free(c);
	}
	while (bd->peers) {
		struct bpeer *p = bd->peers;

		bd->peers = p->next;
		bpeer_queue_free(p);
		bd_agent_free(p);
		free(p);
	}
	mt_table_free(bd->t);
	elect_free(bd->el);
	bd_cfg_free(bd->cfg);
}

int broker_run(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	struct bd bd = {.lfd = -1};
	const char *why = NULL;
	struct enroll_identity idn = {0};
	STACK_OF(X509) *anchors = NULL;
	sigset_t sigs;
	int ch, ret;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch != 'c')
			return -EINVAL;
		bd.cfg_path = optarg;
	}
	if (!bd.cfg_path || optind != argc) {
		log_warnx("usage: mtun-broker run --config FILE");
		return -EINVAL;
	}
	ret = bd_cfg_load(bd.cfg_path, &bd.cfg);
	if (ret < 0)
		return ret;
	bd_apply_log_level(bd.cfg);
	/* Versions keep growing across restarts: agents compare them. */
	bd.cfg_version = bd_wall_ms();
	ret = bd_model_open(&bd);
	if (ret < 0)
		goto out;
	bd.el = bd_elect_build(bd.cfg, bd.snap);
	if (!bd.el) {
		ret = -EINVAL;
		goto out;
	}
	ret = enroll_load(bd.cfg->state, bd.cfg->idsrc, &idn);
	if (ret < 0)
		goto out;
	if (strcmp(idn.ident.tenant, bd.cfg->tenant) != 0) {
		log_warnx("%s: the certificate is for tenant %s, not %s", bd.cfg->state,
		          idn.ident.tenant, bd.cfg->tenant);
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
		    .peer_tenant = bd.cfg->tenant,
		    .revoked = bd_crl_revoked,
		    .revoked_arg = &bd,
		};

		bd.ctx = tls_ctx_new(&tc, &why);
	}
	if (!bd.ctx) {
		log_warnx("TLS: %s", why);
		ret = -EINVAL;
		goto out;
	}
	bd.lfd = conf_listen_tcp(bd.cfg->listen, 1024, "broker.listen");
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
	sigaddset(&sigs, SIGHUP);
	/* Before the first handshake, so that every session's serial is known. */
	ret = bd_crl_start(&bd);
	if (ret < 0) {
		log_warnx("CRL subscription thread: %s", strerror(-ret));
		goto out;
	}
	ret = ring_signals(bd.ring, &sigs, bd_signal, &bd);
	if (ret == 0)
		ret = ring_accept(bd.ring, bd.lfd, bd_accept_cb, &bd);
	if (ret < 0) {
		log_warnx("ring setup: %s", strerror(-ret));
		goto out;
	}
	/* After ring_signals: the admin server's thread inherits the blocked signals. */
	ret = bd_model_serve(&bd);
	if (ret < 0) {
		log_warnx("admin server: %s", strerror(-ret));
		goto out;
	}
	log_event(LOG_LVL_INFO, "broker.ready",
	          "listen=%s tenant=%s segments=%zu rules=%zu version=%llu model=%s",
	          bd.cfg->listen, bd.cfg->tenant, segset_count(bd_segs(&bd)),
	          policy_rule_count(bd_pol(&bd)), (unsigned long long)bd.cfg_version,
	          bd.snap ? "admin" : "file");
	ret = ring_run(bd.ring);
	/* No more changes nor sessions requests; then the sessions end (activity records). */
	bd_model_stop(&bd);
	bd_shutdown(&bd);
out:
	bd_model_stop(&bd);
	/* After the ring's last run: nothing it runs may still use the CRL state. */
	bd_crl_stop(&bd);
	ring_free(bd.ring);
	if (bd.lfd >= 0)
		close(bd.lfd);
	bd_free(&bd);
	bd_model_close(&bd);
	tls_ctx_free(bd.ctx);
	sk_X509_free(anchors);
	enroll_identity_free(&idn);
	return ret;
}
