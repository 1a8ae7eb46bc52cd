/* Tests for broker/mtunnel.c: id allocation, lookups both ways, iteration, flow state, memory. */
#include <errno.h>

#include "broker.h"
#include "t.h"

static void ids_never_zero_and_unique(void)
{
	struct mt_table *t = mt_table_new(10000);
	struct mt_conn a, b;
	static struct mtunnel *mts[2000];
	int err = 0;

	T_REQUIRE(t);
	mt_conn_init(&a, 0);
	mt_conn_init(&b, 0);
	for (int i = 0; i < 2000; i++) {
		mts[i] = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
		T_REQUIRE(mts[i]);
		T_REQUIRE(mtunnel_bind(t, mts[i], &b) == 0);
		T_CHECK(mts[i]->leg[0].id != 0 && mts[i]->leg[1].id != 0);
	}
	for (int i = 0; i < 2000; i++)
		for (int j = i + 1; j < 2000; j++)
			if (mts[i]->leg[0].id == mts[j]->leg[0].id ||
			    mts[i]->leg[1].id == mts[j]->leg[1].id)
				t_fail(__FILE__, __LINE__, "duplicate id %d %d", i, j);
	T_EQ(a.count, 2000);
	T_EQ(b.count, 2000);
	mt_table_free(t);
}

/* Near the 32-bit wrap: 0 is skipped and live ids are not handed out again. */
static void wrap_skips_zero_and_live(void)
{
	struct mt_table *t = mt_table_new(100);
	struct mt_conn a;
	struct mtunnel *first, *m;
	int err = 0;

	T_REQUIRE(t);
	mt_conn_init(&a, 0);
	a.next_id = 1;
	first = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
	T_REQUIRE(first);
	T_EQ(first->leg[0].id, 1);
	a.next_id = 0xfffffffeU;
	m = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
	T_REQUIRE(m);
	T_EQ(m->leg[0].id, 0xfffffffeU);
	m = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
	T_REQUIRE(m);
	T_EQ(m->leg[0].id, 0xffffffffU);
	m = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
	T_REQUIRE(m);
	T_EQ(m->leg[0].id, 2); /* 0 skipped, 1 still live */
	mtunnel_free(t, first);
	a.next_id = 0;
	m = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
	T_REQUIRE(m);
	T_EQ(m->leg[0].id, 1); /* freed, so usable again */
	mt_table_free(t);
}

/* The agent picks its leg's id in OPEN; a live one again is refused, a freed one is fine. */
static void opener_chosen_id(void)
{
	struct mt_table *t = mt_table_new(100);
	struct mt_conn a, b;
	struct mtunnel *m, *m2;
	int err = 0, leg = -1;

	T_REQUIRE(t);
	mt_conn_init(&a, 0);
	mt_conn_init(&b, 0);
	m = mtunnel_new(t, &a, 77, 1, 1, 0, &err);
	T_REQUIRE(m);
	T_EQ(m->leg[0].id, 77);
	T_CHECK(mtunnel_new(t, &a, 77, 1, 1, 0, &err) == NULL);
	T_EQ(err, -EEXIST);
	T_EQ(a.count, 1);
	m2 = mtunnel_new(t, &b, 77, 1, 1, 0, &err); /* another connection: its own id space */
	T_REQUIRE(m2);
	T_CHECK(mtunnel_lookup(t, &a, 77, &leg) == m);
	T_CHECK(mtunnel_lookup(t, &b, 77, &leg) == m2);
	mtunnel_free(t, m);
	m = mtunnel_new(t, &a, 77, 1, 1, 0, &err);
	T_REQUIRE(m);
	T_CHECK(mtunnel_lookup(t, &a, 77, &leg) == m);
	mt_table_free(t);
}

static void lookup_and_leg_swap(void)
{
	struct mt_table *t = mt_table_new(100);
	struct mt_conn agent, connector, other;
	struct mtunnel *m, *got;
	int err = 0, leg = -1;

	T_REQUIRE(t);
	mt_conn_init(&agent, 0);
	mt_conn_init(&connector, 0);
	mt_conn_init(&other, 0);
	m = mtunnel_new(t, &agent, 0, 42, 9, 1234, &err);
	T_REQUIRE(m);
	T_EQ(m->state, MTS_OPENING);
	T_EQ(m->segment_id, 42);
	T_EQ(m->rule_id, 9);
	T_EQ(m->start_ms, 1234);
	T_CHECK(m->leg[1].conn == NULL);
	T_EQ(mtunnel_bind(t, m, &agent), -EINVAL);
	T_EQ(mtunnel_bind(t, m, &connector), 0);
	T_EQ(mtunnel_bind(t, m, &other), -EALREADY);

	got = mtunnel_lookup(t, &agent, m->leg[0].id, &leg);
	T_CHECK(got == m);
	T_EQ(leg, 0);
	/* A frame from the agent goes out on the connector's connection with its id. */
	T_CHECK(got->leg[!leg].conn == &connector);
	T_EQ(got->leg[!leg].id, m->leg[1].id);
	got = mtunnel_lookup(t, &connector, m->leg[1].id, &leg);
	T_CHECK(got == m);
	T_EQ(leg, 1);
	T_CHECK(got->leg[!leg].conn == &agent);
	/* The same id on another connection is another mtunnel (or none). */
	T_CHECK(mtunnel_lookup(t, &other, m->leg[0].id, &leg) == NULL);
	T_CHECK(mtunnel_lookup(t, &agent, 0, &leg) == NULL);
	T_CHECK(mtunnel_lookup(t, &agent, m->leg[0].id + 1000, &leg) == NULL);
	mtunnel_free(t, m);
	T_CHECK(mtunnel_lookup(t, &agent, 1, &leg) == NULL);
	T_EQ(agent.count, 0);
	T_EQ(connector.count, 0);
	mtunnel_free(t, NULL);
	mt_table_free(t);
}

/* A dead connector connection resets every mtunnel on it, and only those. */
static void iterate_and_reset_connection(void)
{
	struct mt_table *t = mt_table_new(1000);
	struct mt_conn agent1, agent2, conn1, conn2;
	struct mtunnel *m, *tmp;
	int err = 0, seen = 0, reset_on_agent1 = 0;

	T_REQUIRE(t);
	mt_conn_init(&agent1, 0);
	mt_conn_init(&agent2, 0);
	mt_conn_init(&conn1, 0);
	mt_conn_init(&conn2, 0);
	for (int i = 0; i < 30; i++) {
		m = mtunnel_new(t, i % 2 ? &agent1 : &agent2, 0, (uint32_t)i, 0, 0, &err);
		T_REQUIRE(m);
		T_REQUIRE(mtunnel_bind(t, m, i % 3 ? &conn1 : &conn2) == 0);
	}
	T_EQ(conn2.count, 10);
	for_each_mtunnel (&conn2, m, tmp) {
		T_CHECK(m->leg[1].conn == &conn2);
		T_CHECK(m->segment_id % 3 == 0);
		reset_on_agent1 += m->leg[0].conn == &agent1;
		seen++;
		mtunnel_free(t, m);
	}
	T_EQ(seen, 10);
	T_EQ(reset_on_agent1, 5);
	T_EQ(conn2.count, 0);
	T_CHECK(conn2.head == NULL);
	T_EQ(agent1.count + agent2.count, 20);
	T_EQ(conn1.count, 20);
	seen = 0;
	for_each_mtunnel (&agent1, m, tmp) {
		T_CHECK(mtunnel_lookup(t, &agent1, m->leg[0].id, NULL) == m);
		seen++;
	}
	T_EQ(seen, 10);
	mt_table_free(t);
}

static void limits(void)
{
	struct mt_table *t = mt_table_new(3);
	struct mt_conn a, b;
	struct mtunnel *m[3];
	int err = 0;

	T_REQUIRE(t);
	mt_conn_init(&a, 2);
	mt_conn_init(&b, 0);
	m[0] = mtunnel_new(t, &a, 0, 0, 0, 0, &err);
	m[1] = mtunnel_new(t, &a, 0, 0, 0, 0, &err);
	T_REQUIRE(m[0] && m[1]);
	T_CHECK(mtunnel_new(t, &a, 0, 0, 0, 0, &err) == NULL);
	T_EQ(err, -ENOSPC); /* per connection */
	m[2] = mtunnel_new(t, &b, 0, 0, 0, 0, &err);
	T_REQUIRE(m[2]);
	err = 0;
	T_CHECK(mtunnel_new(t, &b, 0, 0, 0, 0, &err) == NULL);
	T_EQ(err, -ENOSPC); /* table */
	T_EQ(mtunnel_bind(t, m[2], &a), -ENOSPC);
	mt_table_free(t);
}

static struct mtunnel *open_pair(struct mt_table *t, struct mt_conn *a, struct mt_conn *b)
{
	int err;
	struct mtunnel *m = mtunnel_new(t, a, 0, 1, 1, 0, &err);

	if (m && mtunnel_bind(t, m, b) == 0) {
		mtunnel_set_open(m, 1000, 2000);
		return m;
	}
	return NULL;
}

static void sequence_and_credit(void)
{
	struct mt_table *t = mt_table_new(10);
	struct mt_conn a, b;
	struct mtunnel *m;

	T_REQUIRE(t);
	mt_conn_init(&a, 0);
	mt_conn_init(&b, 0);
	m = open_pair(t, &a, &b);
	T_REQUIRE(m);
	T_EQ(m->state, MTS_OPEN);
	T_EQ(mtunnel_on_data(m, 0, 0, 600, 5), 0);
	T_EQ(mtunnel_on_data(m, 0, 1, 400, 6), 0);
	T_EQ(m->leg[0].credit, 0);
	T_EQ(mtunnel_on_data(m, 0, 2, 1, 7), -ENOBUFS);
	T_EQ(mtunnel_on_data(m, 0, 3, 0, 7), -EPROTO); /* gap: 2 never arrived */
	T_EQ(mtunnel_on_window(m, 1, 500), 0);         /* the connector side grants the agent */
	T_EQ(m->leg[0].credit, 500);
	T_EQ(mtunnel_on_data(m, 0, 2, 500, 8), 0);
	T_EQ(m->leg[0].bytes, 1500);
	T_EQ(m->leg[0].next_seq, 3);
	T_EQ(m->last_ms, 8);
	/* The other direction counts on its own. */
	T_EQ(mtunnel_on_data(m, 1, 0, 2000, 9), 0);
	T_EQ(m->leg[1].bytes, 2000);
	T_EQ(mtunnel_on_data(m, 1, 0, 1, 9), -EPROTO);
	/* Sequence numbers wrap from 2^32-1 to 0. */
	m->leg[1].next_seq = 0xffffffffU;
	T_EQ(mtunnel_on_window(m, 0, 10), 0);
	T_EQ(mtunnel_on_data(m, 1, 0xffffffffU, 1, 9), 0);
	T_EQ(mtunnel_on_data(m, 1, 0, 1, 9), 0);
	T_EQ(mtunnel_on_window(m, 0, 0), -EPROTO);
	T_EQ(mtunnel_on_window(m, 0, MT_CREDIT_MAX - m->leg[1].credit), 0);
	T_EQ(m->leg[1].credit, MT_CREDIT_MAX);
	T_EQ(mtunnel_on_window(m, 0, 1), -EOVERFLOW);
	mt_table_free(t);
}

static void half_close_each_way(void)
{
	struct mt_table *t = mt_table_new(10);
	struct mt_conn a, b;
	struct mtunnel *m;

	T_REQUIRE(t);
	mt_conn_init(&a, 0);
	mt_conn_init(&b, 0);
	m = open_pair(t, &a, &b);
	T_REQUIRE(m);
	T_EQ(mtunnel_on_fin(m, 0), 0);
	T_EQ(m->state, MTS_HALF_CLOSED_0);
	T_STREQ(mt_state_name((enum mt_state)m->state), "half-closed-0");
	T_EQ(mtunnel_on_data(m, 0, 0, 1, 0), -EPIPE); /* nothing after FIN */
	T_EQ(mtunnel_on_fin(m, 0), -EPIPE);
	T_EQ(mtunnel_on_data(m, 1, 0, 10, 0), 0); /* the other way still flows */
	T_EQ(mtunnel_on_fin(m, 1), 1);
	T_EQ(m->state, MTS_CLOSED);
	T_EQ(mtunnel_on_data(m, 1, 1, 1, 0), -EPIPE);

	m = open_pair(t, &a, &b);
	T_REQUIRE(m);
	T_EQ(mtunnel_on_fin(m, 1), 0);
	T_EQ(m->state, MTS_HALF_CLOSED_1);
	T_EQ(mtunnel_on_fin(m, 0), 1);
	mt_table_free(t);
}

/* Steady churn reuses records and hash slots: nothing grows after warm-up. */
static void churn_without_growth(void)
{
	struct mt_table *t = mt_table_new(100000);
	struct mt_conn a, b;
	static struct mtunnel *live[64];
	struct mt_stats before, after;
	int err = 0;

	T_REQUIRE(t);
	mt_conn_init(&a, 0);
	mt_conn_init(&b, 0);
	for (int i = 0; i < 64; i++) {
		live[i] = open_pair(t, &a, &b);
		T_REQUIRE(live[i]);
	}
	mt_table_stats(t, &before);
	for (int i = 0; i < 100000; i++) {
		int k = i % 64, leg = -1;
		uint32_t old = live[k]->leg[0].id;

		mtunnel_free(t, live[k]);
		if (mtunnel_lookup(t, &a, old, &leg) != NULL) {
			t_fail(__FILE__, __LINE__, "id %u still found after free", old);
			break;
		}
		live[k] = mtunnel_new(t, &a, 0, 1, 1, 0, &err);
		if (!live[k] || mtunnel_bind(t, live[k], &b) != 0) {
			t_fail(__FILE__, __LINE__, "cycle %d failed: %d", i, err);
			break;
		}
		if (mtunnel_lookup(t, &b, live[k]->leg[1].id, &leg) != live[k] || leg != 1) {
			t_fail(__FILE__, __LINE__, "cycle %d: lookup failed", i);
			break;
		}
	}
	mt_table_stats(t, &after);
	T_EQ(after.live, 64);
	T_EQ(after.slabs, before.slabs);
	T_EQ(after.hash_slots, before.hash_slots);
	T_EQ(a.count, 64);
	T_EQ(b.count, 64);
	mt_table_free(t);
}

/* Memory per idle mtunnel: its share of the slabs and of the hash (two slots, load <= 1/2). */
static void memory_per_mtunnel(void)
{
	struct mt_table *t = mt_table_new(200000);
	struct mt_conn a, b;
	struct mt_stats st;
	size_t per;
	int err = 0;

	T_REQUIRE(t);
	mt_conn_init(&a, 200000);
	mt_conn_init(&b, 200000);
	for (int i = 0; i < 100000; i++) {
		struct mtunnel *m = mtunnel_new(t, &a, 0, 1, 1, 0, &err);

		if (!m || mtunnel_bind(t, m, &b) != 0) {
			t_fail(__FILE__, __LINE__, "open %d failed", i);
			break;
		}
	}
	mt_table_stats(t, &st);
	per = st.bytes / st.live;
	printf("# sizeof(struct mtunnel) = %zu, with hash slots %zu bytes per live mtunnel\n",
	       sizeof(struct mtunnel), per);
	T_CHECK(sizeof(struct mtunnel) <= 256);
	T_CHECK(per <= 1024);
	mt_table_free(t);
}

int main(void)
{
	T_RUN(ids_never_zero_and_unique);
	T_RUN(wrap_skips_zero_and_live);
	T_RUN(opener_chosen_id);
	T_RUN(lookup_and_leg_swap);
	T_RUN(iterate_and_reset_connection);
	T_RUN(limits);
	T_RUN(sequence_and_credit);
	T_RUN(half_close_each_way);
	T_RUN(churn_without_growth);
	T_RUN(memory_per_mtunnel);
	mt_table_free(NULL);
	return t_done();
}
