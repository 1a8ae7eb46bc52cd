/* The contract between the interception programs (bpf/intercept.bpf.c) and the agent's
 * loader (agent/intercept.c): map keys and values, limits, kinds. */
#ifndef MTUN_BPF_INTERCEPT_H
#define MTUN_BPF_INTERCEPT_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Capacities of the maps the agent fills or reads. */
#define INTERCEPT_MAX_RANGES 4096
#define INTERCEPT_MAX_CONNS  65536

/* What a redirected socket was sent to the agent for. */
#define INTERCEPT_KIND_TCP     1 /* the TCP listener: synthetic range or an IP-range segment */
#define INTERCEPT_KIND_DNS     2 /* the DNS stub: UDP to port 53 */
#define INTERCEPT_KIND_DNS_TCP 3 /* the DNS stub's TCP side: TCP to port 53 (dns_port) */

/* An IP-range segment: LPM-trie key over IPv4 destinations (prefixlen 0..32). */
struct intercept_range_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Destination ports of the segment that go to the agent, host order, inclusive. */
struct intercept_range {
	__u16 port_min;
	__u16 port_max;
};

/* Where a client socket was going; kept in the socket's local storage. */
struct intercept_orig {
	__be32 addr;
	__be16 port;
	__u16 kind; /* INTERCEPT_KIND_* */
};

/*
 * Key of the connection table: the client end as the agent's accepted socket sees its
 * peer (getpeername), and the network namespace both live in (SO_NETNS_COOKIE).
 */
struct intercept_conn_key {
	__u64 netns_cookie;
	__be32 addr;
	__be16 port;
	__u16 pad; /* zero */
};

#endif
