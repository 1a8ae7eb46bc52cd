/*
 * The broker's switch: OPEN (policy, connector choice, BIND), BIND_REPLY (OPEN_REPLY) and
 * the per-frame path that swaps a frame's mtunnel id and passes it to the other leg.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "broker.h"
#include "log.h"

#define bconn_of(c) ((struct bconn *)((char *)(c)-offsetof(struct bconn, mc)))

uint64_t bd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int bpeer_queue(struct bpeer *p, const uint8_t *frame, size_t len)
{
	struct bqframe *q = malloc(sizeof(*q) + len);

	if (!q)
		return -ENOMEM;
	q->next = NULL;
	q->len = len;
	memcpy(q->frame, frame, len);
	if (p->qtail)
		p->qtail->next = q;
	else
		p->qhead = q;
	p->qtail = q;
	return 0;
}

void bpeer_flush(struct bpeer *p)
{
	while (p->qhead) {
		struct bqframe *q = p->qhead;
		int ret = session_send_frame(p->s, q->frame, q->len);

		if (ret == -EAGAIN)
			return;
		p->qhead = q->next;
		if (!p->qhead)
			p->qtail = NULL;
		free(q);
	}
}

/*
 * DATA is bounded by the mtunnel windows end to end, so what waits here for one mtunnel
 * never exceeds its window.
 */
int bpeer_send_frame(struct bpeer *p, const uint8_t *frame, size_t len)
{
	int ret;

	if (!p)
		return -ENOTCONN;
	if (!p->qhead) {
		ret = session_send_frame(p->s, frame, len);
		if (ret != -EAGAIN)
			return ret;
	}
	return bpeer_queue(p, frame, len);
}

int bpeer_send_msg(struct bpeer *p, const struct mt_msg *m)
{
	uint8_t buf[1024];
	int len = wire_encode(buf, sizeof(buf), m);

	if (len < 0)
		return len;
	return bpeer_send_frame(p, buf, (size_t)len);
}

static void bd_reply(struct bpeer *p, enum mt_frame_type type, uint32_t id, enum mt_status st,
                     uint32_t window, const char *reason)
{
	struct mt_msg m = {.hdr = {.type = (uint8_t)type, .id = id}};

	m.u.reply.status = (uint8_t)st;
	m.u.reply.window = window;
	if (reason && *reason)
		m.u.reply.reason = (struct mt_bytes){(const uint8_t *)reason,
		                                     (uint16_t)strnlen(reason, MT_TEXT_MAX)};
	if (bpeer_send_msg(p, &m) < 0)
		log_warnx("%s %u not sent", wire_type_name(type), id);
}

static void bd_send_reset(struct bpeer *p, uint32_t id, enum mt_status st, const char *reason)
{
	struct mt_msg m = {.hdr = {.type = MT_RESET, .id = id}};

	if (!p)
		return;
	m.u.reset.status = (uint8_t)st;
	if (reason && *reason)
		m.u.reset.reason = (struct mt_bytes){(const uint8_t *)reason,
		                                     (uint16_t)strnlen(reason, MT_TEXT_MAX)};
	bpeer_send_msg(p, &m);
}

struct bopen *bd_find_open(struct bd *bd, const struct mtunnel *mt)
{
	for (struct bopen *o = bd->opens; o; o = o->next)
		if (o->mt == mt)
			return o;
	return NULL;
}

static void bopen_free(struct bopen *o)
{
	ring_timer_cancel(o->bd->ring, o->timer);
	*o->pprev = o->next;
	if (o->next)
		o->next->pprev = o->pprev;
	free(o);
}

static struct bpeer *leg_peer(const struct mtunnel *mt, int leg)
{
	return mt->leg[leg].conn ? bconn_of(mt->leg[leg].conn)->p : NULL;
}

/* Ends mt: OPEN_REPLY (still opening) or RESET to the agent, RESET to the connector. */
static void bd_end(struct bd *bd, struct mtunnel *mt, enum mt_status st, const char *reason,
                   int skip_leg)
{
	struct bopen *o = bd_find_open(bd, mt);
	struct bpeer *p0 = leg_peer(mt, 0), *p1 = leg_peer(mt, 1);

	if (o) {
		if (skip_leg != 0)
			bd_reply(p0, MT_OPEN_REPLY, mt->leg[0].id, st, 0, reason);
		bopen_free(o);
	} else {
		struct bconnector *c = mt->leg[1].conn ? bconn_of(mt->leg[1].conn)->owner : NULL;

		if (skip_leg != 0)
			bd_send_reset(p0, mt->leg[0].id, st, reason);
		if (skip_leg != 1)
			bd_send_reset(p1, mt->leg[1].id, st, reason);
		if (c && c->load)
			c->load--;
	}
	log_event(LOG_LVL_INFO, "mtunnel.end",
	          "agent_id=%u conn_id=%u status=%s bytes_up=%llu "
	          "bytes_down=%llu reason=\"%s\"",
	          mt->leg[0].id, mt->leg[1].id, wire_status_name(st),
	          (unsigned long long)mt->leg[0].bytes, (unsigned long long)mt->leg[1].bytes,
	          reason);
	mtunnel_free(bd->t, mt);
}

void bd_reset_conn(struct bd *bd, struct bconn *bc, enum mt_status status, const char *reason)
{
	struct mtunnel *mt, *tmp;

	for_each_mtunnel (&bc->mc, mt, tmp)
		bd_end(bd, mt, status, reason, mt->leg[0].conn == &bc->mc ? 0 : 1);
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

void bd_switch(struct bd *bd, struct bpeer *p, struct bconn *bc, struct mt_hdr *hdr, uint8_t *frame,
               size_t len)
{
	struct mtunnel *mt;
	struct bpeer *to;
	struct mt_msg m;
	const char *why;
	int leg = -1, ret = 0;

	mt = mtunnel_lookup(bd->t, &bc->mc, hdr->id, &leg);
	if (hdr->type == MT_DATA)
		session_consumed(p->s, hdr->len);
	if (!mt)
		return; /* raced with its end */
	if (mt->state == MTS_OPENING) {
		bd_end(bd, mt, MT_STATUS_PROTOCOL, "frame before the mtunnel opened", -1);
		return;
	}
	switch (hdr->type) {
	case MT_DATA:
		ret = mtunnel_on_data(mt, leg, hdr->seq, hdr->len, bd_now_ms());
		break;
	case MT_WINDOW:
		ret = wire_decode(frame, len, &m, &why);
		if (ret == 0)
			ret = mtunnel_on_window(mt, leg, m.u.window.increment);
		break;
	case MT_FIN:
		ret = mtunnel_on_fin(mt, leg);
		break;
	case MT_RESET:
		break;
	default:
		ret = -EPROTO;
	}
	if (ret < 0) {
		bd_end(bd, mt, MT_STATUS_PROTOCOL,
		       ret == -ENOBUFS ? "DATA beyond the mtunnel window"
		       : ret == -EPIPE ? "frame after FIN"
		                       : "bad sequence or window",
		       -1);
		return;
	}
	to = leg_peer(mt, !leg);
	wire_set_id(frame, mt->leg[!leg].id);
	if (bpeer_send_frame(to, frame, len) < 0) {
		bd_end(bd, mt, MT_STATUS_ERROR, "cannot pass the frame on", -1);
		return;
	}
	if (hdr->type == MT_RESET) {
		bd_end(bd, mt, MT_STATUS_OK, "reset by a peer", 2);
		return;
	}
	if (hdr->type == MT_FIN && ret == 1)
		bd_end(bd, mt, MT_STATUS_OK, "closed", 2);
}
