/*
 * The broker's OPEN path: policy, the elected connector (cached, else a probe round), BIND
 * to it, and BIND_REPLY that answers the agent's OPEN; a failed BIND falls over to the next
 * connector before the OPEN fails.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "broker.h"
#include "log.h"

static size_t bd_ohash_slot(const struct mtunnel *mt)
{
	uint64_t x = (uint64_t)(uintptr_t)mt;

	x ^= x >> 29;
	x *= 0x9e3779b97f4a7c15ULL;
	return (size_t)(x >> 32) & (BD_OHASH - 1);
}

static void bopen_hash_add(struct bd *bd, struct bopen *o)
{
	struct bopen **head = &bd->ohash[bd_ohash_slot(o->mt)];

	o->hnext = *head;
	if (o->hnext)
		o->hnext->hpprev = &o->hnext;
	o->hpprev = head;
	*head = o;
}

static void bopen_hash_del(struct bopen *o)
{
	if (!o->hpprev)
		return;
	*o->hpprev = o->hnext;
	if (o->hnext)
		o->hnext->hpprev = o->hpprev;
	o->hpprev = NULL;
	o->hnext = NULL;
}

/* Off its election's or its connector's list. */
static void bopen_unlist(struct bopen *o)
{
	if (!o->pprev)
		return;
	*o->pprev = o->next;
	if (o->next)
		o->next->pprev = o->pprev;
	o->pprev = NULL;
	o->next = NULL;
	o->el = NULL;
}

static void bopen_list_add(struct bopen **head, struct bopen *o)
{
	o->next = *head;
	if (o->next)
		o->next->pprev = &o->next;
	o->pprev = head;
	*head = o;
}

static void bopen_timer_stop(struct bopen *o)
{
	if (o->has_timer)
		ring_timer_cancel(o->bd->ring, o->timer);
	o->has_timer = false;
}

struct bopen *bd_find_open(struct bd *bd, const struct mtunnel *mt)
{
	for (struct bopen *o = bd->ohash[bd_ohash_slot(mt)]; o; o = o->hnext)
		if (o->mt == mt)
			return o;
	return NULL;
}

void bopen_free(struct bopen *o)
{
	if (!o)
		return;
	bopen_timer_stop(o);
	bopen_unlist(o);
	bopen_hash_del(o);
	free(o);
}

enum mt_status bd_elect_status(enum elect_status s)
{
	switch (s) {
	case ELECT_OK:
		return MT_STATUS_OK;
	case ELECT_NXDOMAIN:
		return MT_STATUS_NXDOMAIN;
	case ELECT_UNREACHABLE:
		return MT_STATUS_UNREACHABLE;
	case ELECT_REFUSED:
		return MT_STATUS_REFUSED;
	case ELECT_TIMEOUT:
		return MT_STATUS_TIMEOUT;
	case ELECT_NO_CONNECTOR:
		return MT_STATUS_NO_CONNECTOR;
	case ELECT_PENDING:
	case ELECT_ERROR:
		break;
	}
	return MT_STATUS_ERROR;
}

static void bopen_retry(struct bopen *o, enum mt_status st, const char *reason);
static void bopen_dispatch(struct bopen *o);

static void bopen_timeout(struct ring *ring, void *arg)
{
	struct bopen *o = arg;

	o->has_timer = false;
	bopen_retry(o, MT_STATUS_TIMEOUT, "the connector did not answer in time");
}

static void bopen_bind(struct bopen *o, struct bconnector *c)
{
	struct bd *bd = o->bd;
	struct mtunnel *mt = o->mt;
	struct mt_msg bind = {.hdr = {.type = MT_BIND}};
	int err;

	o->tries++;
	err = mtunnel_bind(bd->t, mt, &c->dc.mc);
	if (err < 0) {
		bd_end(bd, mt, MT_STATUS_ERROR, "broker out of mtunnels", -1);
		return;
	}
	o->c = c;
	if (mt->meta)
		snprintf(mt->meta->connector, sizeof(mt->meta->connector), "%s", c->id);
	bopen_list_add(&c->opens, o);
	if (RAND_bytes(o->cookie, sizeof(o->cookie)) != 1 ||
	    ring_timer_add(bd->ring, BD_OPEN_TIMEOUT_MS * 1000000ULL, bopen_timeout, o, &o->timer) <
	        0) {
		bd_end(bd, mt, MT_STATUS_ERROR, "internal error", -1);
		return;
	}
	o->has_timer = true;
	bind.hdr.id = mt->leg[1].id;
	bind.u.bind.host = (struct mt_bytes){(const uint8_t *)o->name, (uint16_t)strlen(o->name)};
	bind.u.bind.port = o->port;
	bind.u.bind.proto = o->proto;
	bind.u.bind.broker = (struct mt_bytes){(const uint8_t *)bd->cfg->advertise,
	                                       (uint16_t)strlen(bd->cfg->advertise)};
	bind.u.bind.cookie = (struct mt_bytes){o->cookie, MT_COOKIE_LEN};
	bind.u.bind.window = o->win0;
	log_event(LOG_LVL_INFO, "mtunnel.bind",
	          "user=%s host=%s port=%u segment=%u rule=%u connector=%s agent_id=%u conn_id=%u "
	          "try=%u",
	          o->agent->id.user, o->name, o->port, o->segment_id, o->rule_id, c->id,
	          o->agent_id, mt->leg[1].id, o->tries);
	if (bpeer_send_msg(c->ctl, &bind) < 0)
		bopen_retry(o, MT_STATUS_ERROR, "cannot send BIND to the connector");
}

/*
 * The connector o was bound to failed: hold it down for the name and try the next one
 * (cached runner-up, else a new probe round), or end the OPEN after BD_BIND_TRIES.
 */
static void bopen_retry(struct bopen *o, enum mt_status st, const char *reason)
{
	struct bd *bd = o->bd;
	struct bconnector *c = o->c;
	uint64_t now = bd_now_ms();
	struct bmt *meta;
	int err = 0;

	if (c) {
		elect_fail(bd->el, o->name, c->id, now);
		log_event(LOG_LVL_WARN, "mtunnel.failover",
		          "host=%s port=%u connector=%s status=%s reason=\"%s\" try=%u", o->name,
		          o->port, c->id, wire_status_name(st), reason, o->tries);
		/* It may still connect and answer later: tell it the leg is gone. */
		if (c->data && o->mt->leg[1].conn) {
			struct mt_msg m = {.hdr = {.type = MT_RESET, .id = o->mt->leg[1].id}};

			m.u.reset.status = (uint8_t)st;
			bpeer_send_msg(c->data, &m);
		}
	}
	/* Bounded in tries and in time: the agent waits for one answer. */
	if (o->tries >= BD_BIND_TRIES || st == MT_STATUS_DENIED ||
	    now - o->start_ms >= BD_OPEN_TIMEOUT_MS) {
		bd_end(bd, o->mt, st, reason, -1);
		return;
	}
	/* A fresh record: the agent's leg keeps its id, the connector leg is unbound. */
	bopen_timer_stop(o);
	bopen_unlist(o);
	bopen_hash_del(o);
	o->c = NULL;
	meta = o->mt->meta;
	o->mt->meta = NULL;
	mtunnel_free(bd->t, o->mt);
	o->mt = mtunnel_new(bd->t, &o->agent->own.mc, o->agent_id, o->segment_id, o->rule_id, now,
	                    &err);
	if (!o->mt) {
		bd_reply(o->agent, MT_OPEN_REPLY, o->agent_id, MT_STATUS_ERROR, 0,
		         "broker out of mtunnels");
		bd_mt_meta_drop(bd, meta, o->agent, MT_STATUS_ERROR, "broker out of mtunnels");
		free(o);
		return;
	}
	o->mt->meta = meta;
	if (meta)
		meta->connector[0] = '\0';
	bopen_hash_add(bd, o);
	bopen_dispatch(o);
}

static void bopen_dispatch(struct bopen *o)
{
	struct bd *bd = o->bd;
	const struct segment *seg = segset_find(bd_segs(bd), o->segment_id);
	uint32_t groups[BD_GROUPS_MAX];
	struct elect_result r;
	struct bconnector *c;
	size_t n;

	if (!seg) {
		bd_end(bd, o->mt, MT_STATUS_NXDOMAIN, "the app segment was removed", -1);
		return;
	}
	n = segment_connector_groups(bd_segs(bd), seg, groups, BD_GROUPS_MAX);
	if (elect_cache_get(bd->el, o->name, groups, n, bd_now_ms(), &r)) {
		c = bd_find_connector(bd, r.id);
		if (c && c->ctl && (!c->has_capacity || c->load < c->capacity)) {
			bopen_bind(o, c);
			return;
		}
	}
	if (bd_elect_open(bd, o, groups, n) < 0)
		bd_end(bd, o->mt, MT_STATUS_ERROR, "out of memory", -1);
}

void bopen_elected(struct bopen *o, const struct elect_result *r, const char *reason)
{
	struct bconnector *c;

	if (r->status == ELECT_OK) {
		c = bd_find_connector(o->bd, r->id);
		if (c && c->ctl) {
			bopen_bind(o, c);
			return;
		}
		bd_end(o->bd, o->mt, MT_STATUS_NO_CONNECTOR, "the elected connector left", -1);
		return;
	}
	bd_end(o->bd, o->mt, bd_elect_status(r->status), reason, -1);
}

void bd_connector_lost(struct bd *bd, struct bconnector *c)
{
	struct bopen *lost = c->opens, *o;

	/* Detached first: a retry may bind to c again (its control session is still up). */
	c->opens = NULL;
	if (lost)
		lost->pprev = &lost;
	while ((o = lost))
		bopen_retry(o, MT_STATUS_UNREACHABLE, "the connector went away");
}

enum mt_status bd_admit(struct bd *bd, const struct bpeer *p, const char *what, const char *raw,
                        uint8_t proto, uint16_t port, char *name, const struct segment **seg,
                        struct policy_decision *dec, char *reason, size_t reason_len)
{
	unsigned char addr[16];
	char event[32];
	const char *why;

	*dec = (struct policy_decision){.action = POLICY_DENY, .rule_name = "", .reason = ""};
	/* One spelling per name, so that the election cache sees one entry. */
	if (inet_pton(AF_INET, raw, addr) == 1 || inet_pton(AF_INET6, raw, addr) == 1)
		snprintf(name, SEG_NAME_MAX + 1, "%s", raw);
	else if (segment_normalize_name(raw, name, &why) < 0)
		name[0] = '\0';
	*seg = NULL;
	if (name[0])
		bd_decide(bd, p, name, proto, port, time(NULL), seg, dec);
	if (!*seg && strcmp(dec->reason, "user is disabled") != 0) {
		snprintf(reason, reason_len, "%s:%u is in no app segment", raw, port);
		snprintf(event, sizeof(event), "%s.refused", what);
		log_event(LOG_LVL_INFO, event, "user=%s host=%s port=%u status=nxdomain",
		          p->id.user, raw, port);
		return MT_STATUS_NXDOMAIN;
	}
	if (dec->action != POLICY_ALLOW) {
		if (*dec->rule_name)
			snprintf(reason, reason_len, "%s '%s'", dec->reason, dec->rule_name);
		else
			snprintf(reason, reason_len, "%s", dec->reason);
		snprintf(event, sizeof(event), "%s.denied", what);
		log_event(LOG_LVL_INFO, event,
		          "user=%s host=%s port=%u segment=%u rule=%u reason=\"%s\"", p->id.user,
		          name, port, *seg ? (*seg)->id : 0, dec->rule_id, reason);
		return MT_STATUS_DENIED;
	}
	return MT_STATUS_OK;
}

void bd_on_open(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr, const uint8_t *frame,
                size_t len)
{
	char raw[MT_NAME_MAX + 1] = "", name[MT_NAME_MAX + 1] = "", reason[MT_TEXT_MAX + 1];
	struct policy_decision dec;
	const struct segment *seg;
	enum mt_status st;
	struct bopen *o;
	struct mtunnel *mt;
	struct mt_msg m;
	const char *why;
	int err = 0;

	if (wire_decode(frame, len, &m, &why) < 0)
		return;
	memcpy(raw, m.u.open.name.p, m.u.open.name.len);
	if (mtunnel_lookup(bd->t, &p->own.mc, hdr->id, NULL)) {
		session_close(p->s, MT_STATUS_PROTOCOL, "OPEN on a live mtunnel id");
		return;
	}
	st = bd_admit(bd, p, "mtunnel", raw, m.u.open.proto, m.u.open.port, name, &seg, &dec,
	              reason, sizeof(reason));
	if (st != MT_STATUS_OK) {
		bd_reply(p, MT_OPEN_REPLY, hdr->id, st, 0, reason);
		bd_activity_refused(bd, p, name[0] ? name : raw, m.u.open.proto, m.u.open.port, seg,
		                    &dec, st, reason);
		return;
	}
	o = calloc(1, sizeof(*o));
	mt = o ? mtunnel_new(bd->t, &p->own.mc, hdr->id, seg->id, dec.rule_id, bd_now_ms(), &err)
	       : NULL;
	if (mt &&
	    !(mt->meta = bd_mt_meta_new(bd, name, m.u.open.proto, m.u.open.port, seg, &dec))) {
		mtunnel_free(bd->t, mt);
		mt = NULL;
	}
	if (!mt) {
		free(o);
		bd_reply(p, MT_OPEN_REPLY, hdr->id, MT_STATUS_ERROR, 0, "broker out of mtunnels");
		bd_activity_refused(bd, p, name, m.u.open.proto, m.u.open.port, seg, &dec,
		                    MT_STATUS_ERROR, "broker out of mtunnels");
		return;
	}
	o->bd = bd;
	o->mt = mt;
	o->agent = p;
	o->agent_id = hdr->id;
	o->segment_id = seg->id;
	o->rule_id = dec.rule_id;
	o->win0 = m.u.open.window;
	o->start_ms = bd_now_ms();
	o->port = m.u.open.port;
	o->proto = m.u.open.proto;
	memcpy(o->name, name, sizeof(o->name));
	bopen_hash_add(bd, o);
	bopen_dispatch(o);
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
	if (!o || o->c != c) {
		log_debug("BIND_REPLY for no pending mtunnel %u", hdr->id);
		return;
	}
	if (m.u.reply.reason.len)
		memcpy(reason, m.u.reply.reason.p, m.u.reply.reason.len);
	if (m.u.reply.status != MT_STATUS_OK) {
		bopen_retry(o, (enum mt_status)m.u.reply.status,
		            *reason ? reason : wire_status_name(m.u.reply.status));
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
	bd_elect_register(bd, c);
	log_event(LOG_LVL_INFO, "mtunnel.open",
	          "agent_id=%u conn_id=%u connector=%s host=%s port=%u", mt->leg[0].id,
	          mt->leg[1].id, c->id, o->name, o->port);
	bopen_free(o);
}
