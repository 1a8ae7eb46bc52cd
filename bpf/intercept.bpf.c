/* cgroup-BPF interception: TCP to the synthetic range and IP-range segments goes to the
 * agent's listener, UDP/53 to its DNS stub; applications keep seeing the original peer. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "intercept.h"

#define AF_INET         2
#define AF_INET6        10
#define LOOPBACK4       0x7f000001 /* 127.0.0.1, host order */
#define DNS_PORT        53
#define ETH_P_IP        0x0800
#define V4MAPPED_PREFIX 0x0000ffff /* third word of ::ffff:a.b.c.d, host order */

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Set by the loader between open and load; network order where marked. */
const volatile __be32 synth_addr = 0;  /* network order, already masked */
const volatile __be32 synth_mask = 0;  /* network order; 0 disables the synthetic range */
const volatile __u16 tcp_port = 0;     /* agent's TCP listener on 127.0.0.1, host order */
const volatile __u16 dns_port = 0;     /* agent's DNS stub on 127.0.0.1; 0 disables DNS */
const volatile __u32 exempt_mark = 0;  /* SO_MARK of the agent's own sockets; 0: none */
const volatile __u64 netns_cookie = 0; /* only sockets of this netns; 0: every netns */

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct intercept_orig);
} sk_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, INTERCEPT_MAX_RANGES);
	__type(key, struct intercept_range_key);
	__type(value, struct intercept_range);
} ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INTERCEPT_MAX_CONNS);
	__type(key, struct intercept_conn_key);
	__type(value, struct intercept_orig);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INTERCEPT_MAX_CONNS);
	__type(key, struct intercept_conn_key);
	__type(value, struct intercept_orig);
} dns_clients SEC(".maps");

/* Plain copies of the headers: vmlinux.h's carry CO-RE bitfields. */
struct ip4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct udp_hdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
};

static __always_inline bool sock_exempt(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return true;
	if (exempt_mark && sk->mark == exempt_mark)
		return true;
	/* 127.0.0.1 is the socket's own netns loopback: only the agent's netns has a listener */
	if (netns_cookie && bpf_get_netns_cookie(ctx) != netns_cookie)
		return true;
	return false;
}

static __always_inline bool tcp_wanted(__be32 daddr, __u16 dport)
{
	struct intercept_range_key key = {.prefixlen = 32, .addr = daddr};
	struct intercept_range *r;

	if (synth_mask && (daddr & synth_mask) == synth_addr)
		return true;
	r = bpf_map_lookup_elem(&ranges, &key);
	return r && dport >= r->port_min && dport <= r->port_max;
}

/* Which agent port a socket of this type going to daddr:dport is sent to, or 0. */
static __always_inline __u16 redirect_port(struct bpf_sock_addr *ctx, __be32 daddr, __u16 dport,
                                           __u16 *kind)
{
	if (ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP && tcp_port &&
	    tcp_wanted(daddr, dport)) {
		*kind = INTERCEPT_KIND_TCP;
		return tcp_port;
	}
	if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP && dns_port &&
	    dport == DNS_PORT) {
		*kind = INTERCEPT_KIND_DNS;
		return dns_port;
	}
	/* DNS over TCP (a retry after a truncated answer, dig +tcp): the stub's TCP side */
	if (ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP && dns_port &&
	    dport == DNS_PORT) {
		*kind = INTERCEPT_KIND_DNS_TCP;
		return dns_port;
	}
	return 0;
}

static __always_inline bool record_orig(struct bpf_sock_addr *ctx, __be32 daddr, __be16 dport,
                                        __u16 kind)
{
	struct intercept_orig *o;

	o = bpf_sk_storage_get(&sk_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return false;
	o->addr = daddr;
	o->port = dport;
	o->kind = kind;
	return true;
}

static __always_inline bool is_v4mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(V4MAPPED_PREFIX);
}

/* connect4 and sendmsg4: both rewrite the destination the same way. */
static __always_inline void redirect4(struct bpf_sock_addr *ctx)
{
	__be32 daddr = ctx->user_ip4;
	__be16 dport = (__be16)ctx->user_port;
	__u16 kind = 0, to;

	if (sock_exempt(ctx))
		return;
	to = redirect_port(ctx, daddr, bpf_ntohs(dport), &kind);
	/* without a record the agent could not serve it: leave the socket alone */
	if (!to || !record_orig(ctx, daddr, dport, kind))
		return;
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = (__u32)bpf_htons(to);
}

/* AF_INET6 sockets reach IPv4 destinations as ::ffff:a.b.c.d, through the v6 hooks. */
static __always_inline void redirect6(struct bpf_sock_addr *ctx)
{
	__be32 daddr;
	__be16 dport = (__be16)ctx->user_port;
	__u16 kind = 0, to;

	if (!is_v4mapped(ctx) || sock_exempt(ctx))
		return;
	daddr = ctx->user_ip6[3];
	to = redirect_port(ctx, daddr, bpf_ntohs(dport), &kind);
	if (!to || !record_orig(ctx, daddr, dport, kind))
		return;
	ctx->user_ip6[3] = bpf_htonl(LOOPBACK4);
	ctx->user_port = (__u32)bpf_htons(to);
}

/* The record whose redirect target is addr:port (network order), if any. */
static __always_inline struct intercept_orig *orig_for(struct bpf_sock_addr *ctx, __be32 addr,
                                                       __be16 port)
{
	struct intercept_orig *o;
	__u16 to;

	if (addr != bpf_htonl(LOOPBACK4))
		return NULL;
	o = bpf_sk_storage_get(&sk_orig, ctx->sk, 0, 0);
	if (!o)
		return NULL;
	to = o->kind == INTERCEPT_KIND_TCP ? tcp_port : dns_port;
	return to && port == bpf_htons(to) ? o : NULL;
}

/* recvmsg and getpeername: show the original peer instead of the agent. */
static __always_inline void restore4(struct bpf_sock_addr *ctx)
{
	struct intercept_orig *o;

	if (!ctx->sk)
		return;
	o = orig_for(ctx, ctx->user_ip4, (__be16)ctx->user_port);
	if (!o)
		return;
	ctx->user_ip4 = o->addr;
	ctx->user_port = (__u32)o->port;
}

static __always_inline void restore6(struct bpf_sock_addr *ctx)
{
	struct intercept_orig *o;

	if (!ctx->sk || !is_v4mapped(ctx))
		return;
	o = orig_for(ctx, ctx->user_ip6[3], (__be16)ctx->user_port);
	if (!o)
		return;
	ctx->user_ip6[3] = o->addr;
	ctx->user_port = (__u32)o->port;
}

SEC("cgroup/connect4")
int intercept_connect4(struct bpf_sock_addr *ctx)
{
	redirect4(ctx);
	return 1;
}

SEC("cgroup/connect6")
int intercept_connect6(struct bpf_sock_addr *ctx)
{
	redirect6(ctx);
	return 1;
}

/* Unconnected UDP: the destination comes with each datagram; only DNS is redirected. */
SEC("cgroup/sendmsg4")
int intercept_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM)
		redirect4(ctx);
	return 1;
}

SEC("cgroup/sendmsg6")
int intercept_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM)
		redirect6(ctx);
	return 1;
}

SEC("cgroup/recvmsg4")
int intercept_recvmsg4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int intercept_recvmsg6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int intercept_getpeername4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int intercept_getpeername6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

/*
 * The client's local port exists only once the connection is up: publish the record
 * under the client's address and port, which the agent reads with getpeername() on the
 * socket it accepted. The callback runs before the client's final ACK is sent, so the
 * entry is in place before accept() can return.
 */
SEC("sockops")
int intercept_sockops(struct bpf_sock_ops *ctx)
{
	struct intercept_conn_key key = {};
	struct intercept_orig *o;
	struct bpf_sock *sk;
	__be32 ip4, ip6;

	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = ctx->sk;
	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (!o || (o->kind != INTERCEPT_KIND_TCP && o->kind != INTERCEPT_KIND_DNS_TCP))
		return 1;
	/* both loads unconditional: clang would merge them into one off a moved ctx pointer,
	 * which the verifier refuses */
	ip4 = ctx->local_ip4;
	ip6 = ctx->local_ip6[3];
	barrier_var(ip4);
	barrier_var(ip6);
	if (ctx->family == AF_INET)
		key.addr = ip4;
	else if (ctx->family == AF_INET6)
		key.addr = ip6; /* v4-mapped: only those were redirected */
	else
		return 1;
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	key.port = bpf_htons((__u16)ctx->local_port); /* host order in sock_ops */
	bpf_map_update_elem(&conns, &key, o, BPF_ANY);
	return 1;
}

/*
 * The DNS stub learns a query's original resolver the same way: a UDP socket gets its
 * local port only after connect4/sendmsg4 ran, so the first datagram to the stub
 * publishes the record under the client's address and port. Never drops a packet.
 */
SEC("cgroup_skb/egress")
int intercept_dns_egress(struct __sk_buff *skb)
{
	struct intercept_conn_key key = {};
	struct intercept_orig *o;
	struct udp_hdr udp;
	struct ip4_hdr ip;
	struct bpf_sock *sk;

	if (!dns_port || skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return 1;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (!o || o->kind != INTERCEPT_KIND_DNS)
		return 1;
	if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_UDP ||
	    ip.daddr != bpf_htonl(LOOPBACK4) || (ip.ver_ihl & 0x0f) < 5)
		return 1;
	if (bpf_skb_load_bytes(skb, (ip.ver_ihl & 0x0f) * 4, &udp, sizeof(udp)) < 0 ||
	    udp.dest != bpf_htons(dns_port))
		return 1;
	key.netns_cookie = netns_cookie; /* only sockets of this netns were redirected */
	key.addr = ip.saddr;
	key.port = udp.source;
	bpf_map_update_elem(&dns_clients, &key, o, BPF_ANY);
	return 1;
}
