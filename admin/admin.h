/*
 * mtun administration: the model kept in the store (component "admin"), its compiled
 * snapshot for the broker, and the HTTPS + JSON admin API server.
 */
#ifndef MTUN_ADMIN_H
#define MTUN_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

#include "broker/broker.h"
#include "ident.h"
#include "segment.h"
#include "store.h"

enum admin_kind {
	ADMIN_K_TENANT = 0,
	ADMIN_K_USER,
	ADMIN_K_GROUP,
	ADMIN_K_SEGMENT,
	ADMIN_K_SEGMENT_GROUP,
	ADMIN_K_SERVER_GROUP,
	ADMIN_K_CONNECTOR_GROUP,
	ADMIN_K_BROKER,
	ADMIN_K_POSTURE,
	ADMIN_K_RULE,
	ADMIN_K_TIMEOUT,
	ADMIN_K_MAX,
};

#define ADMIN_ERR_MAX  512
#define ADMIN_BODY_MAX (4U << 20) /* one request's JSON or CSV */
#define ADMIN_NAME_MAX 64
#define ADMIN_OPS_MAX  10000 /* operations in one batch or import */

/* Why a call failed, as the API answers it: an HTTP status and a precise message. */
struct admin_err {
	int status; /* 400 bad input, 404 no such object, 409 version conflict or in use, 500 */
	char msg[ADMIN_ERR_MAX];
};

/* "segment" and the API path "segments"; NULL for a bad kind. */
const char *admin_kind_name(enum admin_kind k);
const char *admin_kind_path(enum admin_kind k);
/* Either spelling; -EINVAL for an unknown one. */
int admin_kind_parse(const char *s, enum admin_kind *k);

/* Creates or upgrades the admin schema (store_migrate, component "admin"). */
int admin_migrate(struct store *st);

/*
 * Object operations for one tenant. Bodies are JSON text (len bytes, not NUL-terminated);
 * *out gets the resulting object (or list) as JSON text, malloc'd, when out is not NULL.
 * 0 or -errno with err filled. Every change is one store transaction that leaves the
 * tenant's whole model valid (references, overlaps, rules), or changes nothing.
 */
int admin_create(struct store *st, const char *tenant, enum admin_kind k, const char *body,
                 size_t len, char **out, struct admin_err *err);
/* body["version"] must be the stored version (409 otherwise). */
int admin_update(struct store *st, const char *tenant, enum admin_kind k, const char *name,
                 const char *body, size_t len, char **out, struct admin_err *err);
/* version 0: any; else it must match (409). An object others refer to is refused (409). */
int admin_delete(struct store *st, const char *tenant, enum admin_kind k, const char *name,
                 int64_t version, struct admin_err *err);
int admin_get(struct store *st, const char *tenant, enum admin_kind k, const char *name, char **out,
              struct admin_err *err);
/* {"items": [...]}: by name; rules in evaluation order. */
int admin_list(struct store *st, const char *tenant, enum admin_kind k, char **out,
               struct admin_err *err);
/*
 * {"ops": [{"op": "create"|"update"|"delete", "kind": K, "name": N, "version": V,
 * "object": {...}}, ...]}: all in one transaction. *out: {"results": [...]}.
 */
int admin_batch(struct store *st, const char *tenant, const char *body, size_t len, char **out,
                struct admin_err *err);
/*
 * The local directory from a CSV ("name,groups,display_name", groups separated by ';') or
 * JSON file ({"groups": [...], "users": [...]} or a list of users): users are created or
 * replaced, missing groups created; one transaction. *out: {"users": N, "groups": M}.
 */
int admin_import(struct store *st, const char *tenant, const char *body, size_t len, bool csv,
                 char **out, struct admin_err *err);
/*
 * {"user": U, "app": "NAME:PORT", "proto": "tcp"|"udp", "groups": [..], "postures": [..],
 * "time": UNIX}: the decision on the tenant's current model. *out: {"action", "rule",
 * "rule_id", "reason", "segment", "max_age_s", "idle_s"}.
 */
int admin_policy_test(struct store *st, const char *tenant, const char *body, size_t len,
                      char **out, struct admin_err *err);
/* Parses and checks one object's JSON against its kind's schema, without a store. */
int admin_check(enum admin_kind k, const char *body, size_t len, struct admin_err *err);
/* The tenant's change counter: +1 per committed change; 0 before the first. */
int admin_generation(struct store *st, const char *tenant, int64_t *gen);

/* The compiled model one broker swaps in whole on a change. Read-only once built. */
struct admin_user {
	char name[IDENT_USER_MAX + 1];
	char **groups;
	size_t ngroups;
	bool disabled;
};

struct admin_named_loc {
	uint32_t id;
	char name[ADMIN_NAME_MAX + 1];
	struct elect_location loc;
	char address[256]; /* brokers: HOST:PORT, "" if not set */
};

struct admin_posture_file {
	char *path;
	uint8_t sha256[32];
};

struct admin_posture {
	uint32_t id;
	char name[ADMIN_NAME_MAX + 1];
	char kernel_min[32]; /* "" when not required */
	char os[128];        /* os-release PRETTY_NAME prefix; "" when not required */
	struct admin_posture_file *files;
	size_t nfiles;
	char **processes;
	size_t nprocesses;
	bool disk_encryption;
};

/* What an agent reports (posture facts); the broker evaluates profiles over it. */
struct admin_facts {
	const char *kernel;                     /* "6.18.0-1-amd64" */
	const char *os;                         /* PRETTY_NAME */
	const struct admin_posture_file *files; /* paths present, with their SHA-256 */
	size_t nfiles;
	const char *const *processes;
	size_t nprocesses;
	bool disk_encrypted;
};

enum admin_health {
	ADMIN_HEALTH_NONE = 0,   /* connectors are not asked to check the app */
	ADMIN_HEALTH_ON_ACCESS,  /* checked when an mtunnel opens (the probe) */
	ADMIN_HEALTH_CONTINUOUS, /* checked periodically by the connectors */
};

struct admin_seginfo {
	uint32_t seg_id;
	uint8_t health; /* enum admin_health */
};

struct admin_segpol {
	uint32_t seg_id;
	struct policy *pol; /* the rules that can apply to this segment, in order */
};

struct admin_snapshot {
	char tenant[IDENT_TENANT_MAX + 1];
	int64_t generation;
	struct segset *segs;
	struct policy *pol;
	struct admin_user *users;
	size_t nusers;
	struct admin_named_loc *cgroups; /* connector groups */
	size_t ncgroups;
	struct admin_named_loc *brokers;
	size_t nbrokers;
	struct admin_posture *postures;
	size_t npostures;
	uint32_t max_age_s, idle_s;   /* the tenant's default timeout policy */
	struct admin_segpol *segpols; /* by seg_id; NULL: decisions use pol */
	size_t nsegpols;
	struct admin_seginfo *seginfo; /* by seg_id: what segment.h does not hold */
	size_t nseginfo;
};

/* Reads the tenant's model and compiles it; 0 or -errno with err (400: invalid model). */
int admin_snapshot_build(struct store *st, const char *tenant, struct admin_snapshot **out,
                         struct admin_err *err);
void admin_snapshot_free(struct admin_snapshot *s);
const struct admin_user *admin_snapshot_user(const struct admin_snapshot *s, const char *name);
const struct admin_named_loc *admin_snapshot_cgroup(const struct admin_snapshot *s, uint32_t id);
enum admin_health admin_snapshot_health(const struct admin_snapshot *s, uint32_t seg_id);
/* Does the reported posture satisfy the profile? *why names the first failed check. */
bool admin_posture_match(const struct admin_posture *p, const struct admin_facts *f,
                         const char **why);

/* A decision: the segment that matched (NULL: none) and the policy's verdict. */
struct admin_decision {
	const struct segment *seg;
	struct policy_decision d;
};

/*
 * Decisions for one subject (an agent session): direct-mapped, valid for one snapshot and
 * one clock minute (time windows move on minute boundaries). Clear it when the subject's
 * groups or posture change. Not thread-safe: one per session.
 */
struct admin_dcache;

struct admin_dcache *admin_dcache_new(unsigned slots); /* rounded to a power of 2, <= 65536 */
void admin_dcache_free(struct admin_dcache *c);
void admin_dcache_clear(struct admin_dcache *c);
/* The decision for name (or address text), proto, port at now; c may be NULL (uncached). */
void admin_decide(const struct admin_snapshot *s, struct admin_dcache *c,
                  const struct policy_subject *subj, const char *name, uint8_t proto, uint16_t port,
                  time_t now, struct admin_decision *out);

/*
 * Live mtunnels as JSON {"items": [...]} (malloc'd in *json); called on the server's
 * thread; 0 or -errno. Items: id, user, device, app, port, proto, connector, state,
 * bytes_up, bytes_down, start (RFC 3339), age_s, idle_s, rule, segment.
 */
typedef int admin_sessions_fn(void *arg, char **json);

/* The admin API server: HTTPS + JSON, admin client certificate of the tenant required. */
struct admin_server_conf {
	const char *listen;          /* "127.0.0.1:8443", "[::1]:0" */
	const char *state;           /* the server's enrolled identity (enroll_load) */
	const char *identity_source; /* NULL: the machine's */
	const char *tenant;          /* NULL: the identity's */
	admin_sessions_fn *sessions; /* GET /v1/sessions; NULL: 503 (no broker attached) */
	void *sessions_arg;
};

/*
 * Called on the server's thread after every committed change with the committed model,
 * compiled (the one the change was validated with, snap->generation its generation). The
 * callee owns snap (admin_snapshot_free). st is the server's store, usable from here.
 */
typedef void admin_change_fn(void *arg, struct store *st, struct admin_snapshot *snap);

struct admin_server;

/*
 * Starts the server on its own thread. The server uses st from that thread only until
 * admin_server_stop: the caller must not touch st meanwhile. 0 or -errno (logged).
 */
int admin_server_start(const struct admin_server_conf *conf, struct store *st,
                       admin_change_fn *on_change, void *arg, struct admin_server **out);
/*
 * The tenant's current CRL (enroll_crl_subscribe delivers it): from then on a revoked
 * admin certificate is refused. Any thread. 0 or -ENOMEM.
 */
int admin_server_set_crl(struct admin_server *srv, X509_CRL *crl);
/* The bound TCP port (for "ADDR:0"). */
uint16_t admin_server_port(const struct admin_server *srv);
void admin_server_stop(struct admin_server *srv);

#endif
