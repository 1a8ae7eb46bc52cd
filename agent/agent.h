/* mtun-agent's internal header: prototypes grouped by the file that defines them. */
#ifndef MTUN_AGENT_H
#define MTUN_AGENT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ident.h"
#include "segment.h"
#include "wire.h"

/* pool.c */

/*
 * The synthetic address pool: a name answered by the DNS stub gets an address from the
 * range, stable while in use, freed after its TTL plus a grace time once no connection
 * holds it. Times are a caller-supplied monotonic clock in milliseconds.
 */
#define POOL_DEFAULT_NET       0x64400000U /* 100.64.0.0, host order */
#define POOL_DEFAULT_PREFIX    10
#define POOL_DEFAULT_GRACE_MS  60000
#define POOL_DEFAULT_MAX_NAMES 65536
#define POOL_MIN_PREFIX        8  /* refuse larger ranges */
#define POOL_MAX_PREFIX        24 /* refuse smaller ranges */

struct pool_config {
	struct in_addr net;   /* network byte order, masked to prefix */
	unsigned prefix;      /* POOL_MIN_PREFIX..POOL_MAX_PREFIX */
	uint32_t grace_ms;    /* kept this long after the TTL, and after the last release */
	uint32_t max_names;   /* live names at most; capped at the usable addresses */
	bool v6;              /* also map each address into net6/96 for AAAA */
	struct in6_addr net6; /* the /96; the low 32 bits are the IPv4 address */
};

struct pool;

void pool_config_default(struct pool_config *cfg);
/*
 * -EINVAL with *why when the range is not inside 100.64.0.0/10, 198.18.0.0/15, 10/8,
 * 172.16/12 or 192.168/16, or is smaller than a /24 or larger than a /8.
 */
int pool_new(const struct pool_config *cfg, struct pool **out, const char **why);
void pool_free(struct pool *pool);
/* A live name (its TTL not yet over): 0 with its address and seconds of TTL left. */
int pool_find(const struct pool *pool, const char *name, uint64_t now, struct in_addr *addr,
              uint32_t *ttl_left);
/*
 * The name's address, allocated if it has none, its TTL restarted: 0, or -ENOSPC when
 * every address is taken by a live or held name.
 */
int pool_assign(struct pool *pool, const char *name, uint32_t ttl_s, uint64_t now,
                struct in_addr *addr);
/* The name an address stands for: 0, -ENOENT, or -ENOSPC (size too small). */
int pool_lookup_addr(const struct pool *pool, struct in_addr addr, char *name, size_t size);
/* A connection holds the address: it is not freed, nor reused, until released. */
int pool_hold(struct pool *pool, struct in_addr addr);
/* 0, -ENOENT (no such address) or -EINVAL (not held). */
int pool_release(struct pool *pool, struct in_addr addr, uint64_t now);
/* Frees the names past TTL + grace with no holds; returns how many. */
size_t pool_expire(struct pool *pool, uint64_t now);
size_t pool_count(const struct pool *pool);
size_t pool_capacity(const struct pool *pool);
bool pool_contains(const struct pool *pool, struct in_addr addr);
/* IPv6 mapping: -EOPNOTSUPP without v6; to_v4 gives -ENOENT outside the /96. */
int pool_addr6(const struct pool *pool, struct in_addr addr, struct in6_addr *out);
int pool_addr6_to_v4(const struct pool *pool, const struct in6_addr *addr6, struct in_addr *out);

/* dns.c */

/*
 * The DNS stub, sans I/O: the agent's loop hands it datagrams (or TCP messages without
 * their length prefix) and does what the result says. See docs/dns.md.
 */
#define DNS_MSG_MAX             65535
#define DNS_DEFAULT_MAX_PENDING 1024
#define DNS_DEFAULT_TIMEOUT_MS  5000
#define DNS_DEFAULT_ANSWER_TTL  10 /* seconds, the cap on a synthetic answer's TTL */
#define DNS_SEARCH_MAX          8
#define DNS_QUERY_TCP           (1U << 0)

enum dns_action {
	DNS_DROP = 0, /* nothing to send */
	DNS_ANSWER,   /* send out[0..len) to res->peer (the client) */
	DNS_RESOLVE,  /* ask the broker about res->name, then call dns_stub_resolved(token) */
	DNS_FORWARD,  /* send out[0..len) to res->peer (the original resolver) */
};

enum dns_resolve_status {
	DNS_RESOLVED_OK = 0,   /* resolvable and allowed: answer from the pool */
	DNS_RESOLVED_NXDOMAIN, /* denied, or no connector can resolve it */
	DNS_RESOLVED_FAIL,     /* the broker could not be asked: SERVFAIL */
};

struct dns_result {
	enum dns_action action;
	size_t len;                   /* ANSWER, FORWARD: bytes in out */
	struct sockaddr_storage peer; /* ANSWER: the client; FORWARD: the upstream resolver */
	socklen_t peer_len;
	bool tcp;                    /* the transport the client used, to use upstream too */
	int rcode;                   /* ANSWER: the reply's rcode */
	uint64_t token;              /* RESOLVE */
	char name[SEG_NAME_MAX + 1]; /* RESOLVE: the canonical name to ask the broker */
};

struct dns_stub_config {
	const struct segset *segs; /* the forwarding set; not owned, must outlive the stub */
	struct pool *pool;         /* not owned */
	const char *search[DNS_SEARCH_MAX]; /* search domains, in order */
	size_t nsearch;
	struct sockaddr_storage upstream; /* the original resolver */
	socklen_t upstream_len;
	uint32_t max_pending;
	uint32_t timeout_ms;
	uint32_t answer_ttl;
};

struct dns_stub;

void dns_stub_config_default(struct dns_stub_config *cfg);
int dns_stub_new(const struct dns_stub_config *cfg, struct dns_stub **out);
void dns_stub_free(struct dns_stub *stub);
/* A new forwarding set (the old one may be freed after this returns). */
int dns_stub_set_segments(struct dns_stub *stub, const struct segset *segs);

/*
 * A query from client; flags DNS_QUERY_TCP. 0 with *res filled, or -ENOSPC when out
 * (outsize bytes; DNS_MSG_MAX is always enough) cannot hold the reply, -ENOMEM.
 */
int dns_stub_query(struct dns_stub *stub, const uint8_t *pkt, size_t len,
                   const struct sockaddr *client, socklen_t client_len, unsigned flags,
                   uint64_t now, uint8_t *out, size_t outsize, struct dns_result *res);
/* The same, forwarding a public query to upstream (the resolver the client asked)
 * instead of the configured one; upstream NULL: the configured one. */
int dns_stub_query_via(struct dns_stub *stub, const uint8_t *pkt, size_t len,
                       const struct sockaddr *client, socklen_t client_len,
                       const struct sockaddr *upstream, socklen_t upstream_len, unsigned flags,
                       uint64_t now, uint8_t *out, size_t outsize, struct dns_result *res);
/* The broker's answer for a RESOLVE: ANSWER, or -ENOENT for an unknown or expired token. */
int dns_stub_resolved(struct dns_stub *stub, uint64_t token, enum dns_resolve_status status,
                      uint32_t ttl_s, uint64_t now, uint8_t *out, size_t outsize,
                      struct dns_result *res);
/* A reply from the upstream resolver: ANSWER to its client, or DROP if it matches nothing. */
int dns_stub_upstream_reply(struct dns_stub *stub, const uint8_t *pkt, size_t len,
                            const struct sockaddr *from, socklen_t from_len, uint8_t *out,
                            size_t outsize, struct dns_result *res);
/* One query past its deadline answered SERVFAIL per call; DROP when none is left. */
int dns_stub_timer(struct dns_stub *stub, uint64_t now, uint8_t *out, size_t outsize,
                   struct dns_result *res);
/* The earliest pending deadline, or 0 when nothing is pending. */
uint64_t dns_stub_next_deadline(const struct dns_stub *stub);
size_t dns_stub_pending(const struct dns_stub *stub);

/* posture.c */

/*
 * Device posture facts for the broker's POSTURE_QUERY: kernel release, OS name, disk
 * encryption of the root device, the SHA-256 of each queried regular file, which queried
 * process names run. Everything is read under a root prefix ("" or NULL: the machine;
 * tests point it at a fake tree holding proc/, sys/, etc/ and the queried files). Files
 * are re-hashed only when stat says they changed.
 */
#define POSTURE_INTERVAL_DEFAULT_MS 2000
#define POSTURE_HASH_MAX            (256ULL << 20) /* a larger file is reported absent */

struct posture_facts {
	uint64_t version;               /* the query answered */
	char kernel[MT_KERNEL_MAX + 1]; /* "" unknown */
	char os[MT_OS_MAX + 1];         /* "" unknown */
	bool disk_encrypted;
	unsigned nfiles, nprocs; /* present files, running processes */
	unsigned files_asked, procs_asked;
	struct {
		char path[MT_PATH_MAX + 1];
		uint8_t sha256[MT_SHA256_LEN];
	} files[MT_POSTURE_FILES_MAX];
	char procs[MT_POSTURE_PROCS_MAX][MT_PROCESS_MAX + 1];
};

/* A POSTURE frame's body built from facts: views point into the facts. */
struct posture_msg {
	struct mt_msg m;
	struct mt_file_fact files[MT_POSTURE_FILES_MAX];
	struct mt_bytes procs[MT_POSTURE_PROCS_MAX];
};

struct posture;

/* root: the prefix for every path read; NULL or "" for the machine. -ENOMEM, -EINVAL. */
int posture_new(const char *root, struct posture **out);
void posture_free(struct posture *p);
/* Takes the files and processes of a decoded (valid) POSTURE_QUERY; the cache of a file
 * still asked for is kept. 0 or -EINVAL. */
int posture_set_query(struct posture *p, const struct mt_posture_query *q);
/* Collects every fact now. Files unchanged since the last call are not read again. */
void posture_collect(struct posture *p, struct posture_facts *f);
bool posture_facts_equal(const struct posture_facts *a, const struct posture_facts *b);
void posture_facts_msg(const struct posture_facts *f, struct posture_msg *out);
/* Files hashed so far (the rest were unchanged): for tests and debugging. */
unsigned long posture_hashes(const struct posture *p);
/* kernel="..." os="..." disk_encrypted=N files=N/M processes=N/M, for the event log. */
void posture_facts_summary(const struct posture_facts *f, char *buf, size_t size);

/* The single facts, exposed for tests; root as above. */
int posture_kernel(const char *root, char *out, size_t size);
/* PRETTY_NAME of an os-release text (shell-like quoting), bytes outside 0x20..0x7e as '?'. */
int posture_parse_os_release(const char *text, size_t len, char *out, size_t size);
int posture_os(const char *root, char *out, size_t size);
/* 1 encrypted, 0 not, -errno when the root device cannot be found. */
int posture_disk_encrypted(const char *root);
/* 1 when a process of that name (comm or exe basename) runs, 0 not, -errno. */
int posture_process_running(const char *root, const char *name);

/*
 * tunnel.c: the agent's broker session, shared by forward and run: it keeps the session
 * up (redial with backoff), carries each local TCP connection as one mtunnel (OPEN, then
 * lib/stream), receives CONFIG (the forwarding set) and asks RESOLVE.
 */
#define TUNNEL_WINDOW_DEFAULT (256U * 1024)

struct tunnel;
struct ring;

struct tunnel_conf {
	const char *broker;          /* HOST:PORT */
	const char *state;           /* the enrolled identity's directory */
	const char *identity_source; /* NULL: the machine's (or $MTUN_IDENTITY_SOURCE) */
	uint32_t window;             /* per-mtunnel receive window; 0: the default */
	/* Posture re-check period (POSTURE_INTERVAL_DEFAULT_MS); 0: answer queries only. */
	uint32_t posture_interval_ms;
};

struct tunnel_ops {
	void (*on_up)(struct tunnel *t, void *arg);
	void (*on_down)(struct tunnel *t, void *arg);
	/* A complete CONFIG: segs is the callee's to free (segset_free). */
	void (*on_config)(struct tunnel *t, struct segset *segs, uint64_t version, void *arg);
	/* RESOLVE_REPLY (status MT_STATUS_*), or MT_STATUS_ERROR when the session dropped. */
	void (*on_resolved)(struct tunnel *t, uint32_t req_id, unsigned status, uint32_t ttl,
	                    const char *reason, void *arg);
};

struct tunnel_stats {
	char broker[IDENT_ID_MAX + 1]; /* the broker's id while up, "" otherwise */
	char user[IDENT_USER_MAX + 1];
	char tenant[IDENT_TENANT_MAX + 1];
	char device[2 * IDENT_DEVICE_LEN + 1];
	bool up;
	uint64_t config_version;
	size_t open_mtunnels;
	uint64_t mtunnels_total;
	uint64_t bytes_up, bytes_down; /* DATA payload, all sessions so far */
};

/* Runs once when the mtunnel carrying a connection ends (refused, reset or closed). */
typedef void tunnel_end_fn(void *arg);

/* Loads the identity and dials the broker on ring; -errno, logged. */
int tunnel_new(struct ring *ring, const struct tunnel_conf *cfg, const struct tunnel_ops *ops,
               void *arg, struct tunnel **out);
/* Carries fd (a connected TCP socket, taken in every case) to name:port; end (may be
 * NULL) runs once: when the mtunnel is over, or before an error return. 0, or -ENOTCONN
 * (no session), -EINVAL, -ENOMEM. */
int tunnel_open(struct tunnel *t, int fd, const char *name, uint16_t port, tunnel_end_fn *end,
                void *end_arg);
/* RESOLVE {req_id, name, port, proto}: the answer comes to on_resolved. -ENOTCONN, -EINVAL. */
int tunnel_resolve(struct tunnel *t, uint32_t req_id, const char *name, uint16_t port,
                   uint8_t proto);
bool tunnel_is_up(const struct tunnel *t);
void tunnel_get_stats(const struct tunnel *t, struct tunnel_stats *st);
/* Resets every mtunnel and stops the session; the ring should run a little longer to
 * flush. Then tunnel_free. */
void tunnel_shutdown(struct tunnel *t);
void tunnel_free(struct tunnel *t);

/* forward.c: mtun-agent forward, a local TCP port carried as mtunnels to one host:port */
int forward_main(int argc, char **argv);

/* run.c: mtun-agent run (interception, DNS stub, tunnel) and mtun-agent status */
int run_main(int argc, char **argv);
int run_status_main(int argc, char **argv);

#endif
