/*
 * The broker's OPEN path: policy, the connector choice, BIND to it, and BIND_REPLY that
 * answers the agent's OPEN.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "broker.h"
#include "log.h"

struct bopen *bd_find_open(struct bd *bd, const struct mtunnel *mt)
{
	for (struct bopen *o = bd->opens; o; o = o->next)
		if (o->mt == mt)
			return o;
	return NULL;
}

void bopen_free(struct bopen *o)
{
	ring_timer_cancel(o->bd->ring, o->timer);
	*o->pprev = o->next;
	if (o->next)
		o->next->pprev = o->pprev;
	free(o);
}

static void bopen_timeout(struct ring *ring, void *arg)
{
	struct bopen *o = arg;

	o->timer = 0;
	bd_end(o->bd, o->mt, MT_STATUS_TIMEOUT, "the connector did not answer in time", -1);
}

static const char **bd_user_groups(struct bd *bd, const char *user, size_t *n)
{
	for (size_t i = 0; i < bd->nusers; i++)
		if (strcmp(bd->users[i].name, user) == 0) {
			*n = bd->users[i].ngroups;
			return bd->users[i].groups;
		}
	*n = 0;
	return NULL;
}

static struct bconnector *bd_pick(struct bd *bd, const struct segment *seg)
{
	uint32_t groups[BD_GROUPS_MAX];
	size_t n = segment_connector_groups(bd->segs, seg, groups, BD_GROUPS_MAX);
	struct bconnector *best = NULL;

	for (struct bconnector *c = bd->connectors; c; c = c->next) {
		bool in = false;

		for (size_t i = 0; i < n; i++)
			in |= groups[i] == c->group;
		if (in && c->ctl && (!best || c->load < best->load))
			best = c;
	}
	return best;
}

void bd_on_open(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr, const uint8_t *frame,
                size_t len)
{
	char name[MT_NAME_MAX + 1] = "", reason[128];
	struct policy_decision dec;
	struct policy_subject subj = {.tenant = bd->tenant, .user = p->id.user};
	const struct segment *seg;
	struct bconnector *c;
	struct bopen *o;
	struct mtunnel *mt;
	struct mt_msg m, bind = {.hdr = {.type = MT_BIND}};
	const char *why;
	int err = 0;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	memcpy(name, m.u.open.name.p, m.u.open.name.len);
	if (mtunnel_lookup(bd->t, &p->own.mc, hdr->id, NULL)) {
		session_close(p->s, MT_STATUS_PROTOCOL, "OPEN on a live mtunnel id");
		return;
	}
	seg = segment_match(bd->segs, name, m.u.open.proto, m.u.open.port);
	if (!seg) {
		snprintf(reason, sizeof(reason), "%s:%u is in no app segment", name, m.u.open.port);
		log_event(LOG_LVL_INFO, "mtunnel.refused",
		          "user=%s host=%s port=%u status=nxdomain", p->id.user, name,
		          m.u.open.port);
		bd_reply(p, MT_OPEN_REPLY, hdr->id, MT_STATUS_NXDOMAIN, 0, reason);
		return;
	}
	subj.groups = bd_user_groups(bd, p->id.user, &subj.ngroups);
	policy_eval(bd->pol, &subj, seg, time(NULL), &dec);
	if (dec.action != POLICY_ALLOW) {
		snprintf(reason, sizeof(reason), "%s%s%s", dec.reason, *dec.rule_name ? " " : "",
		         dec.rule_name);
		log_event(LOG_LVL_INFO, "mtunnel.denied",
		          "user=%s host=%s port=%u segment=%u rule=%u reason=\"%s\"", p->id.user,
		          name, m.u.open.port, seg->id, dec.rule_id, reason);
		bd_reply(p, MT_OPEN_REPLY, hdr->id, MT_STATUS_DENIED, 0, reason);
		return;
	}
	c = bd_pick(bd, seg);
	if (!c) {
		bd_reply(p, MT_OPEN_REPLY, hdr->id, MT_STATUS_NO_CONNECTOR, 0,
		         "no connector serves the segment");
		return;
	}
	o = calloc(1, sizeof(*o));
	mt = o ? mtunnel_new(bd->t, &p->own.mc, hdr->id, seg->id, dec.rule_id, bd_now_ms(), &err)
	       : NULL;
	if (mt)
		err = mtunnel_bind(bd->t, mt, &c->dc.mc);
	if (!mt || err < 0) {
		mtunnel_free(bd->t, mt);
		free(o);
		bd_reply(p, MT_OPEN_REPLY, hdr->id, MT_STATUS_ERROR, 0, "broker out of mtunnels");
		return;
	}
	o->bd = bd;
	o->mt = mt;
	o->c = c;
	o->win0 = m.u.open.window;
	o->port = m.u.open.port;
	memcpy(o->name, name, sizeof(o->name));
	if (RAND_bytes(o->cookie, sizeof(o->cookie)) != 1 ||
	    ring_timer_add(bd->ring, BD_OPEN_TIMEOUT_MS * 1000000ULL, bopen_timeout, o, &o->timer) <
	        0) {
		mtunnel_free(bd->t, mt);
		free(o);
		bd_reply(p, MT_OPEN_REPLY, hdr->id, MT_STATUS_ERROR, 0, "internal error");
		return;
	}
	o->next = bd->opens;
	if (o->next)
		o->next->pprev = &o->next;
	o->pprev = &bd->opens;
	bd->opens = o;
	bind.hdr.id = mt->leg[1].id;
	bind.u.bind.host = m.u.open.name;
	bind.u.bind.port = m.u.open.port;
	bind.u.bind.proto = m.u.open.proto;
	bind.u.bind.broker =
	    (struct mt_bytes){(const uint8_t *)bd->advertise, (uint16_t)strlen(bd->advertise)};
	bind.u.bind.cookie = (struct mt_bytes){o->cookie, MT_COOKIE_LEN};
	bind.u.bind.window = m.u.open.window;
	log_event(LOG_LVL_INFO, "mtunnel.bind",
	          "user=%s host=%s port=%u segment=%u rule=%u connector=%s agent_id=%u conn_id=%u",
	          p->id.user, name, o->port, seg->id, dec.rule_id, c->id, hdr->id, mt->leg[1].id);
	if (bpeer_send_msg(c->ctl, &bind) < 0)
		bd_end(bd, mt, MT_STATUS_ERROR, "cannot send BIND", -1);
}

void bd_on_bind_reply(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr,
                      const uint8_t *frame, size_t len)
{
	struct bconnector *c = p->conn;
	char reason[MT_TEXT_MAX + 1] = "";
	struct mtunnel *mt;
	struct bopen *o;
	struct mt_msg m;
	const char *why;
	int leg = -1;

	if (!c || wire_decode(frame, len, &m, &why) < 0)
		return;
	mt = mtunnel_lookup(bd->t, &c->dc.mc, hdr->id, &leg);
	o = mt && leg == 1 ? bd_find_open(bd, mt) : NULL;
	if (!o) {
		log_debug("BIND_REPLY for no pending mtunnel %u", hdr->id);
		return;
	}
	if (m.u.reply.reason.len)
		memcpy(reason, m.u.reply.reason.p, m.u.reply.reason.len);
	if (m.u.reply.status != MT_STATUS_OK) {
		bd_end(bd, mt, (enum mt_status)m.u.reply.status,
		       *reason ? reason : wire_status_name(m.u.reply.status), -1);
		return;
	}
	if (p->kind != BP_DATA) {
		session_close(p->s, MT_STATUS_PROTOCOL, "BIND_REPLY ok on the control session");
		return;
	}
	mtunnel_set_open(mt, m.u.reply.window, o->win0);
	bd_reply(leg_peer(mt, 0), MT_OPEN_REPLY, mt->leg[0].id, MT_STATUS_OK, m.u.reply.window,
	         NULL);
	c->load++;
	log_event(LOG_LVL_INFO, "mtunnel.open",
	          "agent_id=%u conn_id=%u connector=%s host=%s port=%u", mt->leg[0].id,
	          mt->leg[1].id, c->id, o->name, o->port);
	bopen_free(o);
}
