/*
 * The switch's id tables: mtunnel records in slabs with a free list, one open-addressing
 * hash from (connection, id) to (record, leg), and a list of records per connection.
 * Nothing here allocates per frame; new records and hash growth happen only on OPEN/BIND.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define MT_SLAB_RECORDS 256
#define MT_CONN_MAX_MAX (1U << 24)

struct mt_slab {
	struct mt_slab *next;
	struct mtunnel rec[MT_SLAB_RECORDS];
};

struct mt_slot {
	struct mtunnel *mt; /* NULL: empty */
	uint32_t id;
	uint32_t leg;
};

struct mt_table {
	size_t max, live, nslabs;
	struct mt_slab *slabs;
	struct mtunnel *free;
	struct mt_slot *slots; /* linear probing, load <= 1/2, backward-shift delete */
	size_t nslots, used;
};

static const char *const mt_state_names[] = {
    [MTS_OPENING] = "opening",
    [MTS_OPEN] = "open",
    [MTS_HALF_CLOSED_0] = "half-closed-0",
    [MTS_HALF_CLOSED_1] = "half-closed-1",
    [MTS_CLOSED] = "closed",
};

const char *mt_state_name(enum mt_state s)
{
	return (unsigned)s <= MTS_CLOSED ? mt_state_names[s] : "invalid";
}

static size_t mt_hash(const struct mt_conn *c, uint32_t id)
{
	uint64_t h = (uint64_t)(uintptr_t)c ^ ((uint64_t)id * 0x9e3779b97f4a7c15ULL);

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (size_t)h;
}

struct mt_table *mt_table_new(size_t max_mtunnels)
{
	struct mt_table *t;

	if (max_mtunnels == 0 || max_mtunnels > (1U << 28))
		return NULL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->max = max_mtunnels;
	t->nslots = 1024;
	t->slots = calloc(t->nslots, sizeof(*t->slots));
	if (!t->slots) {
		free(t);
		return NULL;
	}
	return t;
}

void mt_table_free(struct mt_table *t)
{
	if (!t)
		return;
	while (t->slabs) {
		struct mt_slab *s = t->slabs;

		t->slabs = s->next;
		free(s);
	}
	free(t->slots);
	free(t);
}

void mt_conn_init(struct mt_conn *c, uint32_t max)
{
	memset(c, 0, sizeof(*c));
	c->next_id = 1;
	c->max = max == 0 ? MT_CONN_MAX_DEFAULT : max > MT_CONN_MAX_MAX ? MT_CONN_MAX_MAX : max;
}

static size_t mt_find(const struct mt_table *t, const struct mt_conn *c, uint32_t id)
{
	size_t mask = t->nslots - 1, i;

	for (i = mt_hash(c, id) & mask; t->slots[i].mt; i = (i + 1) & mask)
		if (t->slots[i].id == id && t->slots[i].mt->leg[t->slots[i].leg].conn == c)
			break;
	return i;
}

struct mtunnel *mtunnel_lookup(const struct mt_table *t, const struct mt_conn *conn, uint32_t id,
                               int *leg)
{
	const struct mt_slot *s;

	if (id == 0)
		return NULL;
	s = &t->slots[mt_find(t, conn, id)];
	if (s->mt && leg)
		*leg = (int)s->leg;
	return s->mt;
}

static int mt_grow(struct mt_table *t)
{
	size_t n = t->nslots * 2, mask = n - 1;
	struct mt_slot *slots;

	if ((t->used + 1) * 2 <= t->nslots)
		return 0;
	slots = calloc(n, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < t->nslots; i++) {
		const struct mt_slot *s = &t->slots[i];
		size_t j;

		if (!s->mt)
			continue;
		for (j = mt_hash(s->mt->leg[s->leg].conn, s->id) & mask; slots[j].mt;
		     j = (j + 1) & mask)
			;
		slots[j] = *s;
	}
	free(t->slots);
	t->slots = slots;
	t->nslots = n;
	return 0;
}

static void mt_slot_del(struct mt_table *t, size_t i)
{
	size_t mask = t->nslots - 1, j = i;

	t->slots[i].mt = NULL;
	t->used--;
	for (;;) {
		size_t k;

		j = (j + 1) & mask;
		if (!t->slots[j].mt)
			return;
		k = mt_hash(t->slots[j].mt->leg[t->slots[j].leg].conn, t->slots[j].id) & mask;
		/* Move j back into the hole unless its home lies cyclically in (i, j]. */
		if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
			t->slots[i] = t->slots[j];
			t->slots[j].mt = NULL;
			i = j;
		}
	}
}

/* Indexes leg under id on conn, or under an unused non-zero one if id is 0; the hash has room. */
static int mt_attach(struct mt_table *t, struct mtunnel *mt, int leg, struct mt_conn *conn,
                     uint32_t id)
{
	struct mtunnel_leg *l = &mt->leg[leg];
	size_t i;

	if (conn->count >= conn->max)
		return -ENOSPC;
	if (id != 0 && t->slots[mt_find(t, conn, id)].mt)
		return -EEXIST;
	/* conn->count < max < 2^32 - 1, so a free id exists; the counter wraps past 0. */
	while (id == 0) {
		id = conn->next_id++;
		if (id != 0 && t->slots[mt_find(t, conn, id)].mt)
			id = 0;
	}
	l->conn = conn;
	l->id = id;
	i = mt_find(t, conn, id);
	t->slots[i] = (struct mt_slot){.mt = mt, .id = id, .leg = (uint32_t)leg};
	t->used++;
	l->prev = NULL;
	l->next = conn->head;
	if (conn->head) {
		struct mtunnel *h = conn->head;

		h->leg[h->leg[0].conn == conn ? 0 : 1].prev = mt;
	}
	conn->head = mt;
	conn->count++;
	return 0;
}

static void mt_detach(struct mt_table *t, struct mtunnel *mt, int leg)
{
	struct mtunnel_leg *l = &mt->leg[leg];
	struct mt_conn *conn = l->conn;

	if (!conn)
		return;
	mt_slot_del(t, mt_find(t, conn, l->id));
	if (l->prev)
		l->prev->leg[l->prev->leg[0].conn == conn ? 0 : 1].next = l->next;
	else
		conn->head = l->next;
	if (l->next)
		l->next->leg[l->next->leg[0].conn == conn ? 0 : 1].prev = l->prev;
	conn->count--;
	l->conn = NULL;
}

static struct mtunnel *mt_record(struct mt_table *t)
{
	struct mtunnel *mt;

	if (!t->free) {
		struct mt_slab *s = calloc(1, sizeof(*s));

		if (!s)
			return NULL;
		s->next = t->slabs;
		t->slabs = s;
		t->nslabs++;
		for (size_t i = MT_SLAB_RECORDS; i-- > 0;) {
			s->rec[i].free_next = t->free;
			t->free = &s->rec[i];
		}
	}
	mt = t->free;
	t->free = mt->free_next;
	memset(mt, 0, sizeof(*mt));
	return mt;
}

struct mtunnel *mtunnel_new(struct mt_table *t, struct mt_conn *conn, uint32_t id,
                            uint32_t segment_id, uint32_t rule_id, uint64_t now_ms, int *err)
{
	struct mtunnel *mt;
	int rc;

	if (t->live >= t->max || conn->count >= conn->max) {
		*err = -ENOSPC;
		return NULL;
	}
	if (mt_grow(t) < 0 || !(mt = mt_record(t))) {
		*err = -ENOMEM;
		return NULL;
	}
	rc = mt_attach(t, mt, 0, conn, id);
	if (rc < 0) {
		mt->free_next = t->free;
		t->free = mt;
		*err = rc;
		return NULL;
	}
	mt->state = MTS_OPENING;
	mt->segment_id = segment_id;
	mt->rule_id = rule_id;
	mt->start_ms = now_ms;
	mt->last_ms = now_ms;
	t->live++;
	return mt;
}

int mtunnel_bind(struct mt_table *t, struct mtunnel *mt, struct mt_conn *conn)
{
	if (mt->leg[1].conn)
		return -EALREADY;
	/* Both legs on one connection would tangle its list; no peer does that. */
	if (mt->leg[0].conn == conn)
		return -EINVAL;
	if (conn->count >= conn->max)
		return -ENOSPC;
	if (mt_grow(t) < 0)
		return -ENOMEM;
	return mt_attach(t, mt, 1, conn, 0);
}

void mtunnel_free(struct mt_table *t, struct mtunnel *mt)
{
	if (!mt)
		return;
	mt_detach(t, mt, 0);
	mt_detach(t, mt, 1);
	memset(mt, 0, sizeof(*mt));
	mt->state = MTS_CLOSED;
	mt->free_next = t->free;
	t->free = mt;
	t->live--;
}

void mtunnel_set_open(struct mtunnel *mt, uint32_t credit0, uint32_t credit1)
{
	mt->state = MTS_OPEN;
	mt->leg[0].credit = credit0 > MT_CREDIT_MAX ? MT_CREDIT_MAX : credit0;
	mt->leg[1].credit = credit1 > MT_CREDIT_MAX ? MT_CREDIT_MAX : credit1;
}

static bool mt_leg_closed(const struct mtunnel *mt, int leg)
{
	return mt->state == MTS_CLOSED ||
	       mt->state == (leg ? MTS_HALF_CLOSED_1 : MTS_HALF_CLOSED_0);
}

int mtunnel_on_data(struct mtunnel *mt, int leg, uint32_t seq, uint32_t len, uint64_t now_ms)
{
	struct mtunnel_leg *l = &mt->leg[leg & 1];

	if (mt_leg_closed(mt, leg & 1))
		return -EPIPE;
	if (seq != l->next_seq)
		return -EPROTO;
	if (len > l->credit)
		return -ENOBUFS;
	l->credit -= len;
	l->bytes += len;
	l->next_seq++;
	mt->last_ms = now_ms;
	return 0;
}

int mtunnel_on_window(struct mtunnel *mt, int leg, uint32_t n)
{
	struct mtunnel_leg *other = &mt->leg[!(leg & 1)];

	if (n == 0)
		return -EPROTO;
	if (n > MT_CREDIT_MAX - other->credit)
		return -EOVERFLOW;
	other->credit += n;
	return 0;
}

int mtunnel_on_fin(struct mtunnel *mt, int leg)
{
	leg &= 1;
	if (mt_leg_closed(mt, leg))
		return -EPIPE;
	if (mt->state == (leg ? MTS_HALF_CLOSED_0 : MTS_HALF_CLOSED_1)) {
		mt->state = MTS_CLOSED;
		return 1;
	}
	mt->state = leg ? MTS_HALF_CLOSED_1 : MTS_HALF_CLOSED_0;
	return 0;
}

void mt_table_stats(const struct mt_table *t, struct mt_stats *st)
{
	st->live = t->live;
	st->slabs = t->nslabs;
	st->slab_records = t->nslabs * MT_SLAB_RECORDS;
	st->hash_slots = t->nslots;
	st->bytes = t->nslabs * sizeof(struct mt_slab) + t->nslots * sizeof(struct mt_slot);
}
