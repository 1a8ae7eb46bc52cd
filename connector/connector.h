/*
 * mtun-connector's internal interfaces, grouped by the file that implements them.
 */
#ifndef MTUN_CONNECTOR_H
#define MTUN_CONNECTOR_H

#include <stdint.h>
#include <sys/socket.h>

#include "ring.h"
#include "wire.h"

/* probe.c */

/*
 * Answers the broker's "can you resolve host and connect to host:port, and how fast?":
 * c-ares on the ring for DNS, a TCP connect through ring_connect for reachability.
 * Everything runs on the ring's thread.
 */
struct prober;
struct probe;

struct prober_conf {
	/* DNS servers, each "ip", "ip:port" or "[ip6]:port" (the config's servers list);
	 * none: the servers of /etc/resolv.conf. */
	const char *const *servers;
	unsigned nservers;
	unsigned max_inflight;   /* probes in flight; 0: PROBE_DEFAULT_INFLIGHT */
	unsigned dns_timeout_ms; /* per DNS try; 0: PROBE_DEFAULT_DNS_TIMEOUT_MS */
	unsigned dns_tries;      /* 0: PROBE_DEFAULT_DNS_TRIES */
};

#define PROBE_DEFAULT_INFLIGHT       256
#define PROBE_DEFAULT_DNS_TIMEOUT_MS 1000
#define PROBE_DEFAULT_DNS_TRIES      2
#define PROBE_MAX_DEADLINE_MS        60000
#define PROBE_HOST_MAX               253
#define PROBE_SERVERS_MAX            8

struct probe_result {
	enum mt_status status; /* OK, REFUSED, UNREACHABLE, TIMEOUT, NXDOMAIN or ERROR */
	uint32_t latency_us;   /* TCP connect time when OK; 0 otherwise and for UDP */
	/* The address that answered (or the first resolved one for UDP): stays on the
	 * connector, the broker never gets it. ss_family AF_UNSPEC when there is none. */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char reason[96]; /* short text for logs and the PROBE answer; "" when OK */
};

/* Runs once per started probe, on the ring's thread; the probe is gone when it returns. */
typedef void probe_done_fn(struct probe *p, const struct probe_result *res, void *arg);

/* NULL + errno. The ring must outlive the prober. */
struct prober *prober_new(struct ring *ring, const struct prober_conf *conf);
/* Cancels every probe in flight without calling back. Let the ring run afterwards so
 * that it can close the resolver's sockets it was still watching. */
void prober_free(struct prober *pr);
unsigned prober_inflight(const struct prober *pr);

/*
 * proto: MT_PROTO_TCP (resolve, connect, time the connect) or MT_PROTO_UDP (resolve
 * only). deadline_ms: 1..PROBE_MAX_DEADLINE_MS for the whole probe. The callback always
 * runs later from the ring, never from inside probe_start; beyond max_inflight probes it
 * runs at once with ERROR "busy". NULL + errno (EINVAL) on bad arguments, no callback.
 */
struct probe *probe_start(struct prober *pr, const char *host, uint16_t port, uint8_t proto,
                          unsigned deadline_ms, probe_done_fn *cb, void *arg);
/* No callback after this; p must not have called back yet. */
void probe_cancel(struct probe *p);

/* daemon.c: mtun-connector run, control sessions to the brokers, BIND to the apps */
int connector_run(int argc, char **argv);

#endif
