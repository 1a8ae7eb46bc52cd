/*
 * RESOLVE from agents and the probe rounds behind it: PROBE to the nearest candidate
 * connectors, their PROBE_REPLYs, the election and its cache; and CONFIG (the forwarding
 * set) to agents. OPENs without a cached election join the same rounds (open.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>

#include "broker.h"
#include "log.h"

static enum elect_status bd_probe_status(uint8_t st)
{
	switch (st) {
	case MT_STATUS_OK:
		return ELECT_OK;
	case MT_STATUS_NXDOMAIN:
		return ELECT_NXDOMAIN;
	case MT_STATUS_UNREACHABLE:
		return ELECT_UNREACHABLE;
	case MT_STATUS_REFUSED:
		return ELECT_REFUSED;
	case MT_STATUS_TIMEOUT:
		return ELECT_TIMEOUT;
	default:
		return ELECT_ERROR;
	}
}

static void bd_resolve_reply(struct bpeer *p, uint32_t req_id, enum mt_status st, uint32_t ttl,
                             const char *reason)
{
	struct mt_msg m = {.hdr = {.type = MT_RESOLVE_REPLY}};

	m.u.resolve_reply.req_id = req_id;
	m.u.resolve_reply.status = (uint8_t)st;
	m.u.resolve_reply.ttl = ttl;
	if (reason && *reason)
		m.u.resolve_reply.reason = (struct mt_bytes){
		    (const uint8_t *)reason, (uint16_t)strnlen(reason, MT_TEXT_MAX)};
	if (bpeer_send_msg(p, &m) < 0)
		log_warnx("RESOLVE_REPLY %u to %s not sent", req_id, p->id.id);
}

static struct belection *belection_find(struct bd *bd, const char *name, uint32_t segment_id,
                                        uint16_t port, uint8_t proto)
{
	for (struct belection *el = bd->elections; el; el = el->next)
		if (el->segment_id == segment_id && el->port == port && el->proto == proto &&
		    strcmp(el->p.name, name) == 0)
			return el;
	return NULL;
}

static struct belection *belection_by_req(struct bd *bd, uint32_t req_id)
{
	for (struct belection *el = bd->elections; el; el = el->next)
		if (el->req_id == req_id)
			return el;
	return NULL;
}

/* The user-facing reason of a failed round: what the nearest candidate said. */
static void belection_reason(const struct belection *el, const struct elect_result *r, char *buf,
                             size_t size)
{
	*buf = '\0';
	if (r->status == ELECT_OK)
		return;
	if (el->p.n == 0) {
		snprintf(buf, size, "no healthy connector serves the segment");
		return;
	}
	for (size_t i = 0; i < el->p.n; i++)
		if (strcmp(el->p.cand[i].id, r->id) == 0) {
			snprintf(buf, size, "connector %s: %s", r->id,
			         el->reason[i][0]
			             ? el->reason[i]
			             : elect_status_name((enum elect_status)r->status));
			return;
		}
	snprintf(buf, size, "%s", elect_status_name((enum elect_status)r->status));
}

static void belection_finish(struct belection *el)
{
	struct bd *bd = el->bd;
	uint64_t now = bd_now_ms();
	struct elect_result r;
	char reason[MT_TEXT_MAX + 1];

	if (el->timer)
		ring_timer_cancel(bd->ring, el->timer);
	el->timer = 0;
	*el->pprev = el->next;
	if (el->next)
		el->next->pprev = el->pprev;
	if (now < el->p.deadline_ms && !elect_pending_done(&el->p, now))
		now = el->p.deadline_ms;
	elect_pending_result(&el->p, now, &r);
	elect_cache_put_pending(bd->el, &el->p, now);
	belection_reason(el, &r, reason, sizeof(reason));
	log_event(r.status == ELECT_OK ? LOG_LVL_INFO : LOG_LVL_WARN, "broker.election",
	          "name=%s port=%u segment=%u status=%s connector=%s latency_us=%u candidates=%zu "
	          "answered=%zu reason=\"%s\"",
	          el->p.name, el->port, el->segment_id, elect_status_name(r.status),
	          r.id[0] ? r.id : "-", r.latency_us, el->p.n, el->p.answered, reason);
	while (el->resolves) {
		struct bresolve *w = el->resolves;

		el->resolves = w->next;
		bd_resolve_reply(w->agent, w->req_id, bd_elect_status(r.status),
		                 r.status == ELECT_OK ? bd->cfg->resolve_ttl_s : BD_FAIL_TTL_S,
		                 reason);
		free(w);
	}
	while (el->opens) {
		struct bopen *o = el->opens;

		el->opens = o->next;
		if (o->next)
			o->next->pprev = &el->opens;
		o->next = NULL;
		o->pprev = NULL;
		o->el = NULL;
		bopen_elected(o, &r, reason);
	}
	free(el);
}

static void belection_timeout(struct ring *ring, void *arg)
{
	struct belection *el = arg;

	el->timer = 0;
	belection_finish(el);
}

/* Connector loads change with every mtunnel: refresh those of the groups asked. */
static void bd_elect_sync(struct bd *bd, const uint32_t *groups, size_t ngroups)
{
	for (struct bconnector *c = bd->connectors; c; c = c->next)
		for (size_t g = 0; g < ngroups; g++)
			if (c->group == groups[g]) {
				bd_elect_register(bd, c);
				break;
			}
}

static void belection_send_probes(struct belection *el)
{
	struct bd *bd = el->bd;
	struct mt_msg m = {.hdr = {.type = MT_PROBE}};

	m.u.probe.req_id = el->req_id;
	m.u.probe.host =
	    (struct mt_bytes){(const uint8_t *)el->p.name, (uint16_t)strlen(el->p.name)};
	m.u.probe.port = el->port;
	m.u.probe.proto = el->proto;
	m.u.probe.deadline_ms = (uint32_t)bd->cfg->ec.probe_ms;
	for (size_t i = 0; i < el->p.n; i++) {
		struct bconnector *c = bd_find_connector(bd, el->p.cand[i].id);

		if (c && c->ctl && bpeer_send_msg(c->ctl, &m) == 0)
			continue;
		snprintf(el->reason[i], sizeof(el->reason[i]), "cannot send PROBE");
		elect_pending_reply(&el->p, el->p.cand[i].id, ELECT_ERROR, 0);
	}
}

/* The round for (name, segment, port, proto): joined if running, else started. */
static struct belection *belection_get(struct bd *bd, const char *name, uint32_t segment_id,
                                       uint16_t port, uint8_t proto, const uint32_t *groups,
                                       size_t ngroups)
{
	struct elect_candidate cand[ELECT_K_MAX];
	struct belection *el = belection_find(bd, name, segment_id, port, proto);
	uint64_t now = bd_now_ms();
	size_t n;

	if (el)
		return el;
	el = calloc(1, sizeof(*el));
	if (!el)
		return NULL;
	el->bd = bd;
	el->segment_id = segment_id;
	el->port = port;
	el->proto = proto;
	el->ngroups = ngroups < BD_GROUPS_MAX ? ngroups : BD_GROUPS_MAX;
	memcpy(el->groups, groups, el->ngroups * sizeof(*groups));
	if (++bd->next_req == 0)
		bd->next_req = 1;
	el->req_id = bd->next_req;
	bd_elect_sync(bd, groups, ngroups);
	n = elect_candidates(bd->el, name, groups, ngroups, now, cand, ELECT_K_MAX);
	/* Hold-down is a preference: with every connector held for the name, probe them
	 * again rather than answer no_connector (the probe still keeps out one that fails). */
	if (n == 0)
		n = elect_candidates(bd->el, NULL, groups, ngroups, now, cand, ELECT_K_MAX);
	if (elect_pending_init(bd->el, &el->p, name, cand, n, now) < 0) {
		free(el);
		return NULL;
	}
	if (n && ring_timer_add(bd->ring, (bd->cfg->ec.probe_ms + BD_PROBE_GRACE_MS) * 1000000ULL,
	                        belection_timeout, el, &el->timer) < 0) {
		free(el);
		return NULL;
	}
	el->next = bd->elections;
	if (el->next)
		el->next->pprev = &el->next;
	el->pprev = &bd->elections;
	bd->elections = el;
	log_event(LOG_LVL_DEBUG, "broker.probe", "name=%s port=%u segment=%u candidates=%zu req=%u",
	          name, port, segment_id, n, el->req_id);
	belection_send_probes(el);
	return el;
}

/* After a waiter joined: a round with nothing to wait for ends now. */
static void belection_check(struct belection *el)
{
	if (elect_pending_done(&el->p, bd_now_ms()))
		belection_finish(el);
}

int bd_elect_open(struct bd *bd, struct bopen *o, const uint32_t *groups, size_t ngroups)
{
	struct belection *el =
	    belection_get(bd, o->name, o->segment_id, o->port, o->proto, groups, ngroups);

	if (!el)
		return -ENOMEM;
	o->el = el;
	o->next = el->opens;
	if (o->next)
		o->next->pprev = &o->next;
	o->pprev = &el->opens;
	el->opens = o;
	belection_check(el);
	return 0;
}

void bd_on_resolve(struct bd *bd, struct bpeer *p, const uint8_t *frame, size_t len)
{
	char raw[MT_NAME_MAX + 1] = "", name[SEG_NAME_MAX + 1] = "", reason[MT_TEXT_MAX + 1];
	uint32_t groups[BD_GROUPS_MAX];
	struct policy_decision dec;
	const struct segment *seg;
	struct elect_result r;
	struct belection *el;
	struct bresolve *w;
	enum mt_status st;
	struct mt_msg m;
	const char *why;
	size_t n;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	memcpy(raw, m.u.resolve.name.p, m.u.resolve.name.len);
	st = bd_admit(bd, p, "resolve", raw, m.u.resolve.proto, m.u.resolve.port, name, &seg, &dec,
	              reason, sizeof(reason));
	if (st != MT_STATUS_OK) {
		bd_resolve_reply(p, m.u.resolve.req_id, st, BD_FAIL_TTL_S, reason);
		return;
	}
	n = segment_connector_groups(bd_segs(bd), seg, groups, BD_GROUPS_MAX);
	if (elect_cache_get(bd->el, name, groups, n, bd_now_ms(), &r)) {
		bd_resolve_reply(p, m.u.resolve.req_id, MT_STATUS_OK, bd->cfg->resolve_ttl_s, NULL);
		return;
	}
	w = calloc(1, sizeof(*w));
	el = w ? belection_get(bd, name, seg->id, m.u.resolve.port, m.u.resolve.proto, groups, n)
	       : NULL;
	if (!el) {
		free(w);
		bd_resolve_reply(p, m.u.resolve.req_id, MT_STATUS_ERROR, BD_FAIL_TTL_S,
		                 "out of memory");
		return;
	}
	w->agent = p;
	w->req_id = m.u.resolve.req_id;
	w->next = el->resolves;
	el->resolves = w;
	belection_check(el);
}

void bd_on_probe_reply(struct bd *bd, struct bpeer *p, const uint8_t *frame, size_t len)
{
	struct belection *el;
	struct mt_msg m;
	const char *why;
	int ret;

	if (!p->conn || wire_decode(frame, len, &m, &why) < 0)
		return;
	el = belection_by_req(bd, m.u.probe_reply.req_id);
	if (!el) {
		log_debug("PROBE_REPLY %u from %s: no such round (late?)", m.u.probe_reply.req_id,
		          p->conn->id);
		return;
	}
	ret = elect_pending_reply(&el->p, p->conn->id, bd_probe_status(m.u.probe_reply.status),
	                          m.u.probe_reply.latency_us);
	if (ret < 0) {
		log_debug("PROBE_REPLY %u from %s: %s", el->req_id, p->conn->id, strerror(-ret));
		return;
	}
	for (size_t i = 0; i < el->p.n; i++)
		if (strcmp(el->p.cand[i].id, p->conn->id) == 0) {
			snprintf(el->reason[i], sizeof(el->reason[i]), "%.*s",
			         (int)m.u.probe_reply.reason.len,
			         (const char *)m.u.probe_reply.reason.p);
			break;
		}
	log_event(LOG_LVL_DEBUG, "broker.probe.reply",
	          "name=%s connector=%s status=%s latency_us=%u", el->p.name, p->conn->id,
	          wire_status_name(m.u.probe_reply.status), m.u.probe_reply.latency_us);
	/*
	 * A candidate that has not answered BD_PROBE_SETTLE_MS after a success is slower than
	 * it by at least that much: a dead or unreachable connector does not hold every
	 * election to the full deadline.
	 */
	if (m.u.probe_reply.status == MT_STATUS_OK && !el->settling &&
	    !elect_pending_done(&el->p, bd_now_ms())) {
		ring_timer_t t;

		if (ring_timer_add(bd->ring, BD_PROBE_SETTLE_MS * 1000000ULL, belection_timeout, el,
		                   &t) == 0) {
			if (el->timer)
				ring_timer_cancel(bd->ring, el->timer);
			el->timer = t;
			el->settling = true;
		}
	}
	belection_check(el);
}

void bd_elections_peer_gone(struct bd *bd, struct bpeer *p)
{
	struct belection *el, *next;

	for (el = bd->elections; el; el = next) {
		next = el->next;
		if (p->kind == BP_AGENT) {
			for (struct bresolve **pw = &el->resolves; *pw;) {
				struct bresolve *w = *pw;

				if (w->agent == p) {
					*pw = w->next;
					free(w);
				} else {
					pw = &w->next;
				}
			}
			continue;
		}
		if (p->kind != BP_CTL || !p->conn)
			continue;
		for (size_t i = 0; i < el->p.n; i++)
			if (strcmp(el->p.cand[i].id, p->conn->id) == 0 &&
			    elect_pending_reply(&el->p, p->conn->id, ELECT_ERROR, 0) == 0)
				snprintf(el->reason[i], sizeof(el->reason[i]),
				         "connector went away");
		belection_check(el);
	}
}

void bd_elections_free(struct bd *bd)
{
	while (bd->elections) {
		struct belection *el = bd->elections;

		bd->elections = el->next;
		if (el->timer)
			ring_timer_cancel(bd->ring, el->timer);
		while (el->resolves) {
			struct bresolve *w = el->resolves;

			el->resolves = w->next;
			free(w);
		}
		while (el->opens)
			bopen_free(el->opens);
		free(el);
	}
}

static int bd_config_emit(const uint8_t *frame, size_t len, void *arg)
{
	return bpeer_send_frame(arg, frame, len);
}

int bd_send_config(struct bd *bd, struct bpeer *p, bool force)
{
	struct policy_subject subj;
	const struct segset *segs = bd_segs(bd);
	uint64_t digest;
	bool disabled;
	int ret;

	bd_subject(bd, p, &subj, &disabled);
	/* A disabled user forwards nothing. */
	if (disabled)
		segs = bd->none;
	if (!force && fwdset_digest(segs, bd_pol(bd), &subj) == p->fwd_digest)
		return 0;
	ret = fwdset_encode(segs, bd_pol(bd), &subj, bd->cfg_version, bd_config_emit, p, &digest);
	if (ret < 0) {
		log_warnx("CONFIG to %s: %s", p->id.id, strerror(-ret));
		return ret;
	}
	p->fwd_digest = digest;
	log_event(LOG_LVL_INFO, "broker.config.sent", "agent=%s user=%s version=%llu", p->id.id,
	          p->id.user, (unsigned long long)bd->cfg_version);
	return 0;
}
