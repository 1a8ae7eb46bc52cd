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
#include "log.h"
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
struct bmt;

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
	struct bmt *meta; /* the daemon's side record (model.c); mtunnel_free does not free it */
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

/*
 * A peer's send queue: frames its session refused with -EAGAIN, back to back in one buffer
 * kept for the peer's life (grown by doubling up to BQ_MAX, never per frame), sent in
 * order on on_writable. next is always NULL: free with bpeer_queue_free.
 */
#define BQ_MIN (256U << 10)
#define BQ_MAX (32U << 20)
struct bqframe {
	struct bqframe *next;
	size_t cap, off, len; /* frames at buf[off .. off + len) */
	uint8_t buf[];
};

/* One mtunnel leg's connection: where the switch sends frames for it. */
struct bconn {
	struct mt_conn mc;
	struct bpeer *p;          /* NULL while the connector has no data session */
	struct bconnector *owner; /* connector legs only */
};

/* A certificate serial number, big-endian, as the CRL lists it (RFC 5280: at most 20 octets). */
#define BD_SERIAL_MAX 20
struct bd_serial {
	uint8_t len;
	uint8_t b[BD_SERIAL_MAX];
};

struct bopen;
struct belection;
struct bagent;
struct admin_snapshot;
struct admin_server;
struct activity;
struct store;

struct bconnector {
	struct bconnector *next, *hnext; /* all connectors; bd's hash by id */
	char id[IDENT_ID_MAX + 1];
	uint32_t group;
	struct bpeer *ctl, *data;
	struct bconn dc; /* connector legs: ids allocated at BIND, carried by data */
	uint32_t load;
	bool has_capacity;
	uint32_t capacity;
	bool has_location;
	struct elect_location loc;
	char location[MT_TOKEN_MAX + 1]; /* as HELLO said it; "" when none */
	struct bopen *opens;             /* BINDs sent to it, waiting for BIND_REPLY */
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
	struct bqframe *qhead;   /* NULL until a frame first waits */
	uint64_t fwd_digest;     /* agents: the forwarding set last sent in CONFIG */
	bool has_serial;         /* the certificate serial, for CRL updates */
	struct bd_serial serial;
	struct bagent *ag; /* agents: subject state (model.c) */
};

/* An OPEN from its arrival to OPEN_REPLY: electing, then waiting for its BIND_REPLY. */
struct bopen {
	struct bopen *next, **pprev;   /* its election's waiters, or its connector's opens */
	struct bopen *hnext, **hpprev; /* bd's hash by mtunnel */
	struct bd *bd;
	struct mtunnel *mt;
	struct bpeer *agent;
	struct bconnector *c; /* NULL while electing */
	struct belection *el; /* the election it waits for, or NULL */
	uint32_t win0;        /* the agent's grant, from OPEN */
	uint32_t agent_id, rule_id;
	uint32_t segment_id;
	uint8_t proto;
	uint8_t tries;     /* connectors tried so far */
	uint64_t start_ms; /* OPEN arrived */
	bool has_timer;
	uint8_t cookie[MT_COOKIE_LEN];
	ring_timer_t timer;
	char name[MT_NAME_MAX + 1];
	uint16_t port;
};

/* A RESOLVE waiting for an election. */
struct bresolve {
	struct bresolve *next;
	struct bpeer *agent;
	uint32_t req_id;
};

/* One probe round in flight for (name, segment, port, proto); RESOLVEs and OPENs join it. */
struct belection {
	struct belection *next, **pprev;
	struct bd *bd;
	uint32_t req_id; /* the PROBE's, the same to every candidate */
	uint32_t segment_id;
	uint32_t groups[BD_GROUPS_MAX];
	size_t ngroups;
	uint16_t port;
	uint8_t proto;
	ring_timer_t timer;
	bool settling; /* a success is in: the others get BD_PROBE_SETTLE_MS more */
	struct elect_pending p;
	char reason[ELECT_K_MAX][64]; /* each candidate's PROBE_REPLY reason */
	struct bresolve *resolves;
	struct bopen *opens;
};

struct bd_user {
	const char *name;
	const char **groups;
	size_t ngroups;
};

struct bd_cgroup {
	uint32_t id;
	const char *name;
	struct elect_location loc;
};

/* A named place a connector's HELLO LOCATION may give. */
struct bd_location {
	const char *name;
	struct elect_location loc;
};

/* Everything the configuration file says; SIGHUP builds a new one whole or keeps the old. */
struct bd_cfg {
	struct conf *conf; /* owns the strings below */
	const char *listen, *tenant, *state, *idsrc, *advertise;
	struct segset *segs;
	struct policy *pol;
	struct bd_user *users;
	size_t nusers;
	struct bd_cgroup cgroups[BD_GROUPS_MAX];
	size_t ncgroups;
	struct bd_location *locs;
	size_t nlocs;
	struct elect_config ec;
	uint32_t resolve_ttl_s;
	bool has_log_level;
	enum log_level log_level;
	const char *admin_listen, *admin_store; /* admin mode: the model comes from the store */
	const char *activity_sink;              /* NULL: no activity log */
};

#define BD_CHASH           1024 /* connectors by id */
#define BD_OHASH           4096 /* pending OPENs by mtunnel */
#define BD_BIND_TRIES      3    /* connectors an OPEN tries before it fails */
#define BD_FAIL_TTL_S      5    /* RESOLVE_REPLY TTL of a failure */
#define BD_PROBE_GRACE_MS  250  /* waited past the probe deadline for the connectors' answers */
#define BD_PROBE_SETTLE_MS 250  /* after a success, how long slower answers may still win */

struct bd_crl;

struct bd {
	struct ring *ring;
	struct ring_bufgroup *bufs;
	struct tls_ctx *ctx;
	const char *cfg_path;
	struct bd_cfg *cfg;
	uint64_t cfg_version; /* CONFIG_VERSION: bumped on every reload */
	struct elect *el;
	struct mt_table *t;
	struct bpeer *peers;
	struct bconnector *connectors;
	struct bconnector *chash[BD_CHASH];
	struct bopen *ohash[BD_OHASH];
	struct belection *elections;
	uint32_t next_req;
	struct bd_crl *crl;
	int lfd;
	/* model.c: admin mode (snap != NULL), timeouts, activity */
	struct admin_snapshot *snap;
	struct store *st;
	struct admin_server *srv;
	struct segset *none; /* empty: a disabled user's forwarding set */
	struct activity *act;
	uint64_t posture_qdigest; /* the posture query agents were last sent */
	bool has_tick;
	ring_timer_t tick;
	int64_t tick_minute;
	uint64_t ntimed; /* live mtunnels with a timeout */
};

#define bconn_of(c) ((struct bconn *)((char *)(c)-offsetof(struct bconn, mc)))

/* switch.c */
uint64_t bd_now_ms(void);
/* Sends (or queues behind earlier refused frames) one encoded frame to a peer. */
int bpeer_send_frame(struct bpeer *p, const uint8_t *frame, size_t len);
int bpeer_send_msg(struct bpeer *p, const struct mt_msg *m);
void bpeer_flush(struct bpeer *p);
void bpeer_queue_free(struct bpeer *p);
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

/* open.c: OPEN -> election -> BIND -> BIND_REPLY, with fall-over to the next connector */
struct bopen *bd_find_open(struct bd *bd, const struct mtunnel *mt);
void bopen_free(struct bopen *o);
void bd_on_open(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr, const uint8_t *frame,
                size_t len);
void bd_on_bind_reply(struct bd *bd, struct bpeer *p, const struct mt_hdr *hdr,
                      const uint8_t *frame, size_t len);
/* The election for o ended: bind to the winner or fail the OPEN. */
void bopen_elected(struct bopen *o, const struct elect_result *r, const char *reason);
/* c lost its control session: its pending BINDs fall over to other connectors. */
void bd_connector_lost(struct bd *bd, struct bconnector *c);
/*
 * What every RESOLVE and OPEN of agent p passes: raw in one spelling (name: SEG_NAME_MAX + 1
 * bytes), its segment, the policy. MT_STATUS_OK with *seg and *dec; else NXDOMAIN or
 * DENIED with reason filled, logged as event "<what>.refused" or "<what>.denied".
 */
enum mt_status bd_admit(struct bd *bd, const struct bpeer *p, const char *what, const char *raw,
                        uint8_t proto, uint16_t port, char *name, const struct segment **seg,
                        struct policy_decision *dec, char *reason, size_t reason_len);
enum mt_status bd_elect_status(enum elect_status s);

/* resolve.c: RESOLVE, PROBE rounds, CONFIG to agents */
void bd_on_resolve(struct bd *bd, struct bpeer *p, const uint8_t *frame, size_t len);
void bd_on_probe_reply(struct bd *bd, struct bpeer *p, const uint8_t *frame, size_t len);
/* Joins (or starts) the probe round for o's name; 0 or -errno (o then still the caller's). */
int bd_elect_open(struct bd *bd, struct bopen *o, const uint32_t *groups, size_t ngroups);
/* An agent or connector session is going: forget it in every probe round. */
void bd_elections_peer_gone(struct bd *bd, struct bpeer *p);
void bd_elections_free(struct bd *bd);
/* Sends p its forwarding set when it changed (force: always). 0 or -errno. */
int bd_send_config(struct bd *bd, struct bpeer *p, bool force);

/* fwdset.c: an agent's forwarding set as CONFIG frames */
typedef int fwdset_emit_fn(const uint8_t *frame, size_t len, void *arg);
/*
 * Encodes the segments policy_may_allow gives subj as CONFIG frames of version (MORE on
 * all but the last) and passes each to emit. *digest identifies the set (not the version).
 * 0, -ENOMEM, -EMSGSIZE (one segment does not fit a frame) or emit's error.
 */
int fwdset_encode(const struct segset *segs, const struct policy *pol,
                  const struct policy_subject *subj, uint64_t version, fwdset_emit_fn *emit,
                  void *arg, uint64_t *digest);
/* The digest alone. */
uint64_t fwdset_digest(const struct segset *segs, const struct policy *pol,
                       const struct policy_subject *subj);

/* config.c */
/* Loads path whole: 0 and *out, or -errno (logged). */
int bd_cfg_load(const char *path, struct bd_cfg **out);
void bd_cfg_free(struct bd_cfg *cfg);
/* "LAT,LON" in degrees. */
int bd_parse_location(const char *s, struct elect_location *loc);

/* crl.c: the tenant's CRL, from the CA's push to the TLS handshake and live sessions */
int bd_crl_start(struct bd *bd);
void bd_crl_stop(struct bd *bd);
/* The tls_conf.revoked hook. */
int bd_crl_revoked(void *arg, const struct ident *peer, const ASN1_INTEGER *serial);
/* The serial the handshake of this identity showed (taken: a second call finds nothing). */
bool bd_crl_take_serial(struct bd *bd, const struct ident *peer, struct bd_serial *out);
void bd_serial_from_asn1(const ASN1_INTEGER *a, struct bd_serial *out);
bool bd_crl_is_revoked(const struct bd *bd, const struct bd_serial *s);
/* The serials a CRL lists, sorted, in *v (malloc'ed): 0, -E2BIG or -ENOMEM. */
int bd_crl_serials(const X509_CRL *crl, struct bd_serial **v, size_t *n);
bool bd_serial_listed(const struct bd_serial *v, size_t n, const struct bd_serial *s);
/* The embedded admin API gets every CRL (the latest at once); NULL before it stops. */
void bd_crl_set_admin(struct bd *bd, struct admin_server *srv);

/* model.c: the model decisions use (the file's, or the admin store's snapshot), live
 * re-decisions, timeouts, posture, activity records and the live sessions list */

enum bd_cause {
	BD_CAUSE_MODEL = 0, /* the model changed */
	BD_CAUSE_CLOCK,     /* the minute changed: time windows */
	BD_CAUSE_POSTURE,   /* the agent's satisfied profiles changed */
};

/* What a live mtunnel keeps beyond the switch's record (allocated at OPEN). */
struct bmt {
	uint64_t start_ms, start_wall_ms; /* monotonic, and wall clock for the records */
	uint32_t max_age_s, idle_s;       /* 0: none */
	uint32_t rule_id, segment_id;
	uint16_t port;
	uint8_t proto;
	bool timed; /* counted in bd->ntimed */
	char name[SEG_NAME_MAX + 1];
	char rule[SEG_TITLE_MAX + 1];
	char segment[SEG_TITLE_MAX + 1];
	char connector[IDENT_ID_MAX + 1];
};

/* Wall clock, ms since the epoch (activity records, CONFIG_VERSION's start). */
uint64_t bd_wall_ms(void);
const struct segset *bd_segs(const struct bd *bd);
const struct policy *bd_pol(const struct bd *bd);
int bd_group_id(const struct bd_cfg *cfg, const struct admin_snapshot *snap, const char *name,
                size_t len, uint32_t *id);
const char *bd_group_name(const struct bd_cfg *cfg, const struct admin_snapshot *snap, uint32_t id);
/* An election registry for the model's connector groups. */
struct elect *bd_elect_build(const struct bd_cfg *cfg, const struct admin_snapshot *snap);
/* p's subject on the current model; *disabled: the admin model disabled its user. */
void bd_subject(struct bd *bd, const struct bpeer *p, struct policy_subject *subj, bool *disabled);
/* The decision for p now: *seg NULL when no segment matches (dec then unset in file mode). */
void bd_decide(struct bd *bd, const struct bpeer *p, const char *name, uint8_t proto, uint16_t port,
               time_t now, const struct segment **seg, struct policy_decision *dec);
/*
 * Does the new decision (seg, d) still allow a live mtunnel? true: x takes the decision's
 * rule, segment and timeouts. false: reason says why it ends, after cause (why: the text
 * for BD_CAUSE_POSTURE).
 */
bool bd_mt_recheck(struct bmt *x, const struct segment *seg, const struct policy_decision *d,
                   enum bd_cause cause, const char *why, char *reason, size_t len);
/* Past its maximum age or idle time (an opening mtunnel never is): true with reason. */
bool bd_mt_expired(const struct bmt *x, uint8_t state, uint64_t last_ms, uint64_t now_ms,
                   char *reason, size_t len);
struct bmt *bd_mt_meta_new(struct bd *bd, const char *name, uint8_t proto, uint16_t port,
                           const struct segment *seg, const struct policy_decision *d);
/* mt ends: its activity record, and its side record freed. */
void bd_mt_finish(struct bd *bd, struct mtunnel *mt, enum mt_status st, const char *reason);
/* A side record whose mtunnel could not be made: recorded and freed. */
void bd_mt_meta_drop(struct bd *bd, struct bmt *x, const struct bpeer *agent, enum mt_status st,
                     const char *reason);
/* A refused OPEN's activity record (seg, d may be NULL). */
void bd_activity_refused(struct bd *bd, const struct bpeer *p, const char *name, uint8_t proto,
                         uint16_t port, const struct segment *seg, const struct policy_decision *d,
                         enum mt_status st, const char *reason);
/* Ends those of p's live mtunnels the model no longer allows; how many ended. */
size_t bd_redecide(struct bd *bd, struct bpeer *p, enum bd_cause cause, const char *why);
/* Posture: the profiles' union of files and processes (*n <= the wire's maximum; returns
 * how many did not fit), the profiles facts satisfy (names malloc'd, f NULL: none). */
size_t bd_posture_union(const struct admin_snapshot *s, const char **files, size_t *nfiles,
                        const char **procs, size_t *nprocs);
struct admin_facts;
int bd_posture_eval(const struct admin_snapshot *s, const struct admin_facts *f, char ***out,
                    size_t *n);
/* Only to agents whose HELLO has MT_CAP_POSTURE (else 0, nothing sent). */
int bd_send_posture_query(struct bd *bd, struct bpeer *p);
void bd_on_posture(struct bd *bd, struct bpeer *p, const uint8_t *frame, size_t len);
/* Re-evaluates p's profiles; on a change re-decides its mtunnels if asked (how many ended). */
size_t bd_agent_posture_update(struct bd *bd, struct bpeer *p, bool redecide);
/* After a swap: agents' profiles re-evaluated; *query: the profiles' union changed. */
void bd_model_posture_swap(struct bd *bd, bool *query);
/* Admin mode: p's subject state; caps: its HELLO's (MT_CAP_POSTURE). */
int bd_agent_init(struct bd *bd, struct bpeer *p, uint32_t caps);
void bd_agent_free(struct bpeer *p);
/* admin_sessions_fn: the live mtunnels as JSON, from the ring thread (bounded wait). */
int bd_sessions(void *arg, char **json);
int bd_sessions_json(struct bd *bd, char **json);
/* Store, migration, snapshot and activity sink (before the ring); admin server and the 1 s
 * timer (after it); stop (server, timer); close (all). */
int bd_model_open(struct bd *bd);
int bd_model_serve(struct bd *bd);
void bd_model_stop(struct bd *bd);
void bd_model_close(struct bd *bd);

/* daemon.c */
/*
 * Makes (cfg, snap) the model (either may be the current one): connectors regrouped,
 * CONFIG to agents whose forwarding set changed, live mtunnels re-decided, logged as
 * broker.model.applied. 0, or -errno with the model unchanged.
 */
int bd_model_change(struct bd *bd, struct bd_cfg *cfg, struct admin_snapshot *snap,
                    uint64_t commit_ms);
int broker_run(int argc, char **argv);
struct bconnector *bd_find_connector(struct bd *bd, const char *id);
/* Tells the election registry what c is now (group, location, load, capacity, health). */
void bd_elect_register(struct bd *bd, struct bconnector *c);
/* Ends p as if its session closed, and closes that session (no on_closed follows). */
void bpeer_drop(struct bpeer *p, enum mt_status st, const char *reason);

#endif
