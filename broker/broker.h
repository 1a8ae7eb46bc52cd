/*
 * mtun-broker internals: the decision core (segments, policy, election, mtunnel tables)
 * that the session layer calls for every RESOLVE and OPEN. Prototypes grouped by file.
 */
#ifndef MTUN_BROKER_H
#define MTUN_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ident.h"
#include "ring.h"
#include "segment.h"
#include "session.h"

/* policy.c */

#define POLICY_DAY(wday) (1U << (wday)) /* tm_wday: 0 = Sunday */
#define POLICY_ALL_DAYS  0x7fU

enum policy_action {
	POLICY_DENY = 0,
	POLICY_ALLOW,
};

/* [start_min, end_min) in local time at utc_offset_min; start > end runs past midnight. */
struct policy_window {
	uint8_t days;                /* POLICY_DAY() bits: the day the window opens */
	uint16_t start_min, end_min; /* 0..1439, 1..1440 */
	int16_t utc_offset_min;      /* -840..840 */
};

/* An empty list is no condition; a present list matches when any value does. */
struct policy_rule_spec {
	uint32_t id;
	const char *name;
	enum policy_action action;
	const char *const *users;
	size_t nusers;
	const char *const *groups;
	size_t ngroups;
	const uint32_t *segments;
	size_t nsegments;
	const uint32_t *segment_groups;
	size_t nsegment_groups;
	const char *const *postures; /* posture profiles: any of them satisfied */
	size_t npostures;
	const struct policy_window *window; /* NULL: any time */
	uint32_t max_age_s, idle_s;         /* 0: the policy's defaults */
};

struct policy_rule;

/* Who asks: from the agent's certificate and session (groups, posture checks passed). */
struct policy_subject {
	const char *tenant;
	const char *user;
	const char *const *groups;
	size_t ngroups;
	const char *const *postures;
	size_t npostures;
};

struct policy_decision {
	enum policy_action action;
	uint32_t rule_id;           /* 0: no rule matched */
	const char *rule_name;      /* "" when no rule matched */
	const char *reason;         /* "allowed by rule", "denied by rule", "no rule allows", ... */
	uint32_t max_age_s, idle_s; /* the timeout policy for an allowed mtunnel */
};

struct policy;

struct policy *policy_new(const char *tenant, uint32_t max_age_s, uint32_t idle_s);
void policy_free(struct policy *pol);
/* Appends a rule (evaluation order); 0, -EINVAL with err, -EEXIST (duplicate id), -ENOMEM. */
int policy_add_rule(struct policy *pol, const struct policy_rule_spec *spec, char *err,
                    size_t errlen);
size_t policy_rule_count(const struct policy *pol);
/* First matching rule wins; no match denies. Never allocates. */
void policy_eval(const struct policy *pol, const struct policy_subject *subj,
                 const struct segment *seg, time_t now, struct policy_decision *out);
/* Could some allow rule apply to subj for seg at some time and posture? (forwarding set) */
bool policy_may_allow(const struct policy *pol, const struct policy_subject *subj,
                      const struct segment *seg);
bool policy_window_match(const struct policy_window *w, time_t now);
int policy_window_check(const struct policy_window *w, const char **why);

/* elect.c */

#define ELECT_K_DEFAULT 3
#define ELECT_K_MAX     8
#define ELECT_HOLD_MAX  4 /* held-down connectors remembered per (name, group) */

struct elect_location {
	char region[32]; /* a named region, informative */
	double lat, lon; /* degrees */
};

struct elect_connector {
	char id[IDENT_ID_MAX + 1];
	uint32_t group;
	bool has_location; /* else the group's location */
	struct elect_location loc;
	bool healthy;      /* control session up and health checks passing */
	uint32_t load;     /* active mtunnels */
	uint32_t capacity; /* 0: not reported (no limit) */
};

enum elect_status {
	ELECT_OK = 0,
	ELECT_PENDING,      /* no reply yet */
	ELECT_NXDOMAIN,     /* the connector could not resolve the name */
	ELECT_UNREACHABLE,  /* resolved, but no route to it */
	ELECT_REFUSED,      /* the server refused the connection */
	ELECT_TIMEOUT,      /* no reply before the deadline */
	ELECT_ERROR,        /* anything else the connector reported */
	ELECT_NO_CONNECTOR, /* no healthy connector in the segment's groups */
};

struct elect_config {
	struct elect_location broker; /* this broker's location */
	unsigned k;                   /* candidates probed; 0: ELECT_K_DEFAULT */
	uint64_t probe_ms;            /* probe deadline */
	uint64_t ttl_ms;              /* cached election lifetime */
	uint64_t holddown_ms;         /* a failed connector is skipped this long for the name */
	size_t cache_max;             /* cached (name, group) entries */
};

struct elect_candidate {
	char id[IDENT_ID_MAX + 1];
	uint32_t group;
	uint32_t distance_km;
	uint8_t status; /* enum elect_status */
	uint32_t latency_us;
};

/* One RESOLVE in flight: the candidates probed and their answers. */
struct elect_pending {
	char name[SEG_NAME_MAX + 1];
	uint64_t deadline_ms;
	size_t n, answered;
	struct elect_candidate cand[ELECT_K_MAX];
};

struct elect_result {
	uint8_t status; /* ELECT_OK or the failure of the best candidate */
	char id[IDENT_ID_MAX + 1];
	uint32_t group;
	uint32_t latency_us;
};

struct elect;

struct elect *elect_new(const struct elect_config *cfg);
void elect_free(struct elect *e);
/* Adds or updates a connector group's location; 0, -EINVAL or -ENOMEM. */
int elect_set_group(struct elect *e, uint32_t group, const struct elect_location *loc);
/* Adds or updates a connector by id; 0, -EINVAL (bad id, location, unknown group), -ENOMEM. */
int elect_set_connector(struct elect *e, const struct elect_connector *c);
int elect_remove_connector(struct elect *e, const char *id);
const struct elect_connector *elect_find_connector(const struct elect *e, const char *id);
double elect_distance_km(const struct elect_location *a, const struct elect_location *b);
/*
 * Healthy connectors of groups, nearest to the broker first (ties: lower load, then id),
 * skipping those held down for name (may be NULL); at most max and at most k.
 */
size_t elect_candidates(struct elect *e, const char *name, const uint32_t *groups, size_t ngroups,
                        uint64_t now_ms, struct elect_candidate *out, size_t max);
/* Starts a pending election over the candidates (n <= ELECT_K_MAX). */
int elect_pending_init(const struct elect *e, struct elect_pending *p, const char *name,
                       const struct elect_candidate *cand, size_t n, uint64_t now_ms);
/* A PROBE_REPLY: 0, -ENOENT (not a candidate), -EALREADY (answered), -EINVAL (status). */
int elect_pending_reply(struct elect_pending *p, const char *id, enum elect_status status,
                        uint32_t latency_us);
/* All answered, or the deadline passed. */
bool elect_pending_done(const struct elect_pending *p, uint64_t now_ms);
/* The outcome: 0 with out filled, or -EAGAIN while not done. */
int elect_pending_result(const struct elect_pending *p, uint64_t now_ms, struct elect_result *out);
/* Caches a successful election for (name, its group); ELECT_OK only. */
int elect_cache_put(struct elect *e, const char *name, const struct elect_result *r,
                    uint64_t now_ms);
/* Caches every success of a finished probe, so that elect_fail falls over without a new one. */
int elect_cache_put_pending(struct elect *e, const struct elect_pending *p, uint64_t now_ms);
/* The fastest live cached success for name within groups whose connector is still healthy. */
bool elect_cache_get(struct elect *e, const char *name, const uint32_t *groups, size_t ngroups,
                     uint64_t now_ms, struct elect_result *out);
/*
 * The connector failed for name (BIND or connect failed): forget it for name and hold it
 * down, so the next elect_cache_get gives the runner-up and elect_candidates skips it.
 */
void elect_fail(struct elect *e, const char *name, const char *id, uint64_t now_ms);
size_t elect_cache_count(const struct elect *e);
const char *elect_status_name(enum elect_status s);

/* mtunnel.c */

#define MT_CONN_MAX_DEFAULT 65536 /* live mtunnels per TLS connection */

enum mt_state {
	MTS_OPENING = 0, /* OPEN received, peer leg not bound yet */
	MTS_OPEN,
	MTS_HALF_CLOSED_0, /* leg 0 sent FIN */
	MTS_HALF_CLOSED_1, /* leg 1 sent FIN */
	MTS_CLOSED,
};

#define MT_CREDIT_MAX 0x7fffffffU /* as HTTP/2: a window above 2^31-1 is an error */

struct mtunnel;

/* One TLS connection's side of the table; the session layer embeds it. */
struct mt_conn {
	struct mtunnel *head;
	uint32_t next_id;
	uint32_t count, max;
};

struct mtunnel_leg {
	struct mt_conn *conn;        /* NULL until bound */
	struct mtunnel *prev, *next; /* conn's list */
	uint32_t id;
	uint32_t credit;   /* bytes this leg may still send */
	uint32_t next_seq; /* expected sequence of its next data frame */
	uint64_t bytes;    /* payload received from this leg */
};

/* leg[0]: the side that opened (agent), leg[1]: the connector. */
struct mtunnel {
	struct mtunnel_leg leg[2];
	uint8_t state;       /* enum mt_state */
	uint32_t segment_id; /* what allowed it */
	uint32_t rule_id;
	uint64_t start_ms;
	uint64_t last_ms;
	struct mtunnel *free_next;
};

struct mt_table;

struct mt_stats {
	size_t live, slabs, slab_records, hash_slots;
	size_t bytes; /* slabs and hash together */
};

struct mt_table *mt_table_new(size_t max_mtunnels);
void mt_table_free(struct mt_table *t);
void mt_conn_init(struct mt_conn *c, uint32_t max);
/*
 * A new mtunnel with leg 0 on conn, under the id the opener chose in OPEN (0: allocate
 * one). NULL with *err -EEXIST (id live on conn), -ENOSPC or -ENOMEM.
 */
struct mtunnel *mtunnel_new(struct mt_table *t, struct mt_conn *conn, uint32_t id,
                            uint32_t segment_id, uint32_t rule_id, uint64_t now_ms, int *err);
/* Allocates leg 1's id on conn; 0, -EALREADY, -ENOSPC or -ENOMEM. */
int mtunnel_bind(struct mt_table *t, struct mtunnel *mt, struct mt_conn *conn);
/* Unlinks both legs and recycles the record. NULL is fine. */
void mtunnel_free(struct mt_table *t, struct mtunnel *mt);
/* The mtunnel a frame (conn, id) belongs to and the leg it came from, or NULL. */
struct mtunnel *mtunnel_lookup(const struct mt_table *t, const struct mt_conn *conn, uint32_t id,
                               int *leg);
/* Both sides' initial credit; called once when leg 1 is bound. */
void mtunnel_set_open(struct mtunnel *mt, uint32_t credit0, uint32_t credit1);
/* A data frame from leg: 0 or -EPROTO (sequence gap), -ENOBUFS (over credit), -EPIPE (after FIN).
 */
int mtunnel_on_data(struct mtunnel *mt, int leg, uint32_t seq, uint32_t len, uint64_t now_ms);
/* A WINDOW frame from leg, granting the other leg n more bytes: 0 or -EOVERFLOW. */
int mtunnel_on_window(struct mtunnel *mt, int leg, uint32_t n);
/* A FIN from leg: 1 when both ways are now closed, 0 otherwise, -EPIPE for a second FIN. */
int mtunnel_on_fin(struct mtunnel *mt, int leg);
void mt_table_stats(const struct mt_table *t, struct mt_stats *st);
const char *mt_state_name(enum mt_state s);

static inline struct mtunnel *mtunnel_next_on(const struct mtunnel *mt, const struct mt_conn *c)
{
	return mt->leg[0].conn == c ? mt->leg[0].next : mt->leg[1].next;
}

/* Safe against freeing mt inside the loop: a dead connection resets all its mtunnels. */
#define for_each_mtunnel(conn, mt, tmp)                                                            \
	for ((mt) = (conn)->head; (mt) && ((tmp) = mtunnel_next_on((mt), (conn)), 1); (mt) = (tmp))

/* daemon.c and switch.c: mtun-broker run (configuration, listener, sessions, the switch) */

#define BD_GROUPS_MAX      64
#define BD_OPEN_TIMEOUT_MS 10000

struct bd;
struct bpeer;

/* A frame a session refused with -EAGAIN, kept in order until on_writable. */
struct bqframe {
	struct bqframe *next;
	size_t len;
	uint8_t frame[];
};

/* One mtunnel leg's connection: where the switch sends frames for it. */
struct bconn {
	struct mt_conn mc;
	struct bpeer *p;          /* NULL while the connector has no data session */
	struct bconnector *owner; /* connector legs only */
};

struct bconnector {
	struct bconnector *next;
	char id[IDENT_ID_MAX + 1];
	uint32_t group;
	struct bpeer *ctl, *data;
	struct bconn dc; /* connector legs: ids allocated at BIND, carried by data */
	uint32_t load;
};

enum bpeer_kind {
	BP_NEW = 0,
	BP_AGENT,
	BP_CTL,
	BP_DATA,
};

struct bpeer {
	struct bpeer *next, **pprev;
	struct bd *bd;
	struct session *s;
	enum bpeer_kind kind;
	struct ident id;
	struct bconn own;        /* agents: their legs */
	struct bconnector *conn; /* connectors */
	struct bqframe *qhead, *qtail;
};

/* An OPEN waiting for its BIND_REPLY. */
struct bopen {
	struct bopen *next, **pprev;
	struct bd *bd;
	struct mtunnel *mt;
	struct bconnector *c;
	uint32_t win0; /* the agent's grant, from OPEN */
	uint8_t cookie[MT_COOKIE_LEN];
	ring_timer_t timer;
	char name[MT_NAME_MAX + 1];
	uint16_t port;
};

struct bd_user {
	const char *name;
	const char **groups;
	size_t ngroups;
};

struct bd_cgroup {
	uint32_t id;
	const char *name;
};

struct bd {
	struct ring *ring;
	struct ring_bufgroup *bufs;
	struct tls_ctx *ctx;
	const char *tenant;
	const char *advertise; /* the address connectors dial for data */
	struct segset *segs;
	struct policy *pol;
	struct mt_table *t;
	struct bd_user *users;
	size_t nusers;
	struct bd_cgroup cgroups[BD_GROUPS_MAX];
	size_t ncgroups;
	struct bpeer *peers;
	struct bconnector *connectors;
	struct bopen *opens;
	int lfd;
};

#define bconn_of(c) ((struct bconn *)((char *)(c)-offsetof(struct bconn, mc)))

/* switch.c */
uint64_t bd_now_ms(void);
/* Sends (or queues behind earlier refused frames) one encoded frame to a peer. */
int bpeer_send_frame(struct bpeer *p, const uint8_t *frame, size_t len);
int bpeer_send_msg(struct bpeer *p, const struct mt_msg *m);
void bpeer_flush(struct bpeer *p);
/* DATA, WINDOW, FIN, RESET from leg conn bc. */
void bd_switch(struct bd *bd, struct bpeer *p, struct bconn *bc, struct mt_hdr *hdr, uint8_t *frame,
               size_t len);
/* Ends every mtunnel with a leg on bc, telling the other legs. */
void bd_reset_conn(struct bd *bd, struct bconn *bc, enum mt_status status, const char *reason);
/* The peer that carries leg (0 agent, 1 connector), or NULL. */
struct bpeer *leg_peer(const struct mtunnel *mt, int leg);
void bd_reply(struct bpeer *p, enum mt_frame_type type, uint32_t id, enum mt_status st,
              uint32_t window, const char *reason);
/*
 * Ends mt: OPEN_REPLY (still opening) or RESET to the legs other than skip_leg (-1: both,
 * 2: neither), logs the end and frees it.
 */
void bd_end(struct bd *bd, struct mtunnel *mt, enum mt_status st, const char *reason, int skip_leg);

/* open.c */
struct bopen *bd_find_open(struct bd *bd, const struct mtunnel *mt);
void bopen_free(struct bopen *o);
void bd_on_open(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr, const uint8_t *frame,
                size_t len);
void bd_on_bind_reply(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr,
                      const uint8_t *frame, size_t len);

/* daemon.c */
int broker_run(int argc, char **argv);

#endif
