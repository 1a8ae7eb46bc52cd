/*
 * The broker's switch: the per-frame path that swaps a frame's mtunnel id and passes it to
 * the other leg, the send queue per peer, and the end of an mtunnel on both legs.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker.h"
#include "log.h"

uint64_t bd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Appends a frame; the buffer compacts or doubles only when its tail has no room. */
static int bpeer_queue(struct bpeer *p, const uint8_t *frame, size_t len)
{
	struct bqframe *q = p->qhead;

	if (!q || q->cap - q->off - q->len < len) {
		size_t need = (q ? q->len : 0) + len, cap = q ? q->cap : BQ_MIN;

		if (q && q->cap >= need) {
			memmove(q->buf, q->buf + q->off, q->len);
			q->off = 0;
		} else {
			while (cap < need)
				cap *= 2;
			if (cap > BQ_MAX)
				return -ENOBUFS;
			q = realloc(q, sizeof(*q) + cap);
			if (!q)
				return -ENOMEM;
			if (!p->qhead) {
				q->off = q->len = 0;
				q->next = NULL;
			} else if (q->off) {
				memmove(q->buf, q->buf + q->off, q->len);
				q->off = 0;
			}
			q->cap = cap;
			p->qhead = q;
		}
	}
	memcpy(q->buf + q->off + q->len, frame, len);
	q->len += len;
	return 0;
}

void bpeer_flush(struct bpeer *p)
{
	struct bqframe *q = p->qhead;

	while (q && q->len) {
		const uint8_t *f = q->buf + q->off;
		const char *why;
		struct mt_hdr h;
		size_t flen;
		int ret;

		/* Queued whole by bpeer_queue after session_send_frame parsed them. */
		if (wire_peek_header(f, q->len, &h, &why) < 0 ||
		    (flen = wire_frame_len(&h)) > q->len) {
			log_warnx("broker: send queue of %s corrupt; dropped", p->id.id);
			q->off = q->len = 0;
			return;
		}
		ret = session_send_frame(p->s, f, flen);
		if (ret == -EAGAIN)
			return;
		q->off += flen;
		q->len -= flen;
	}
	if (q)
		q->off = 0;
}

void bpeer_queue_free(struct bpeer *p)
{
	free(p->qhead);
	p->qhead = NULL;
}

/*
 * DATA is bounded by the mtunnel windows end to end, so what waits here for one mtunnel
 * never exceeds its window; BQ_MAX bounds the peer (an mtunnel past it is reset).
 */
int bpeer_send_frame(struct bpeer *p, const uint8_t *frame, size_t len)
{
	int ret;

	if (!p)
		return -ENOTCONN;
	if (!p->qhead || !p->qhead->len) {
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

void bd_reply(struct bpeer *p, enum mt_frame_type type, uint32_t id, enum mt_status st,
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

struct bpeer *leg_peer(const struct mtunnel *mt, int leg)
{
	return mt->leg[leg].conn ? bconn_of(mt->leg[leg].conn)->p : NULL;
}

/*
 * Ends mt: OPEN_REPLY (still opening) or RESET to the agent, RESET to the connector, except
 * skip_leg's (2: neither). A RESET after both FINs would make an end drop the payload it
 * has not yet written to its socket.
 */
void bd_end(struct bd *bd, struct mtunnel *mt, enum mt_status st, const char *reason, int skip_leg)
{
	struct bopen *o = bd_find_open(bd, mt);
	struct bpeer *p0 = leg_peer(mt, 0), *p1 = leg_peer(mt, 1);
	bool tell0 = skip_leg == -1 || skip_leg == 1, tell1 = skip_leg == -1 || skip_leg == 0;

	if (o) {
		if (tell0)
			bd_reply(p0, MT_OPEN_REPLY, mt->leg[0].id, st, 0, reason);
		bopen_free(o);
	} else {
		struct bconnector *c = mt->leg[1].conn ? bconn_of(mt->leg[1].conn)->owner : NULL;

		if (tell0)
			bd_send_reset(p0, mt->leg[0].id, st, reason);
		if (tell1)
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
	bd_mt_finish(bd, mt, st, reason);
	mtunnel_free(bd->t, mt);
}

void bd_reset_conn(struct bd *bd, struct bconn *bc, enum mt_status status, const char *reason)
{
	struct mtunnel *mt, *tmp;

	for_each_mtunnel (&bc->mc, mt, tmp)
		bd_end(bd, mt, status, reason, mt->leg[0].conn == &bc->mc ? 0 : 1);
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
