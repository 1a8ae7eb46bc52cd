/* The agent's loader for the interception programs (bpf/): load, attach to a cgroup v2
 * with pinned links, fill IP-range segments, recover original destinations, detach. */
#ifndef MTUN_AGENT_INTERCEPT_H
#define MTUN_AGENT_INTERCEPT_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define INTERCEPT_PIN_ROOT "/sys/fs/bpf"

struct intercept_config {
	const char *cgroup;    /* cgroup v2 directory; NULL: the root of the v2 mount */
	const char *pin_root;  /* a bpffs; NULL: /sys/fs/bpf, mounted there if absent */
	const char *instance;  /* links pinned under <pin_root>/mtun/<instance>/ */
	struct in_addr synth;  /* synthetic range, e.g. 100.64.0.0 */
	unsigned synth_prefix; /* e.g. 10; 0 disables the synthetic range */
	uint16_t tcp_port;     /* the agent's TCP listener on 127.0.0.1 (required) */
	uint16_t dns_port;     /* the agent's DNS stub on 127.0.0.1, UDP and TCP; 0: no DNS */
	uint32_t exempt_mark;  /* SO_MARK on the agent's own sockets; 0: none */
	uint64_t netns_cookie; /* netns of the listeners; 0: the caller's netns */
};

struct intercept;

/*
 * Opens, configures, loads and attaches the programs to cfg->cgroup, pinning one link
 * per hook. Links left pinned by a previous run of the same instance (a crash) are
 * updated in place to the new programs, so interception never lapses and nothing is
 * attached twice.
 */
int intercept_open(const struct intercept_config *cfg, struct intercept **out);
/* How many links intercept_open took over from a previous run. */
unsigned intercept_recovered(const struct intercept *it);

/* IP-range segments: TCP to addr/prefix on ports port_min..port_max goes to the agent. */
int intercept_add_range(struct intercept *it, struct in_addr addr, unsigned prefix,
                        uint16_t port_min, uint16_t port_max);
int intercept_del_range(struct intercept *it, struct in_addr addr, unsigned prefix);

/*
 * The original destination of a connection the agent accepted on its listener (fd).
 * The entry is consumed. -ENOENT: not an intercepted connection.
 */
int intercept_orig_dst(struct intercept *it, int fd, struct sockaddr_in *dst);

/* The same for a TCP connection accepted on the DNS stub's TCP listener (port dns_port):
 * the resolver it was made to. The entry is consumed. -ENOENT: not intercepted. */
int intercept_dns_tcp_orig(struct intercept *it, int fd, struct sockaddr_in *resolver);

/*
 * The resolver a query arriving at the DNS stub was sent to; client is the query's
 * source (recvfrom). The entry stays for the socket's further queries.
 * -ENOENT: not an intercepted query.
 */
int intercept_dns_orig(struct intercept *it, const struct sockaddr_in *client,
                       struct sockaddr_in *resolver);

/* Detaches every hook and removes the pins; the object stays to be freed. */
int intercept_detach(struct intercept *it);
/* Frees; links still pinned stay attached (a restart takes them over). Accepts NULL. */
void intercept_free(struct intercept *it);

/* Detaches and unpins what an instance left behind, without loading anything. */
int intercept_purge(const char *pin_root, const char *instance);

/* The mount point of cgroup v2 (e.g. /sys/fs/cgroup/unified). */
int intercept_cgroup2_root(char *buf, size_t size);
/* The netns cookie of the caller's network namespace. */
int intercept_netns_cookie(uint64_t *cookie);

#endif
