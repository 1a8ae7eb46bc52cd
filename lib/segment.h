/*
 * App segments: FQDNs, wildcard domains and CIDRs with port ranges, and the lookup of
 * the most specific segment for a name or address. Shared by the broker (policy,
 * election) and the agent (its forwarding set).
 */
#ifndef MTUN_SEGMENT_H
#define MTUN_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ident.h"

#define SEG_NAME_MAX     253 /* a DNS name without its trailing dot */
#define SEG_LABEL_MAX    63
#define SEG_TITLE_MAX    64 /* an admin's name for a segment or a rule */
#define SEG_HOST_STR_MAX (SEG_NAME_MAX + 3)
#define SEG_ERR_MAX      320
#define SEG_PROTO_TCP    6  /* IPPROTO_TCP */
#define SEG_PROTO_UDP    17 /* IPPROTO_UDP */

enum seg_flag {
	SEG_F_DOUBLE_ENCRYPT = 1U << 0,
};

enum seg_host_kind {
	SEG_HOST_FQDN = 1,
	SEG_HOST_WILDCARD, /* "*.corp.example": one or more labels before corp.example */
	SEG_HOST_V4,       /* a CIDR; a bare address is a /32 */
	SEG_HOST_V6,       /* a CIDR; a bare address is a /128 */
};

struct seg_ports {
	uint8_t proto; /* SEG_PROTO_TCP or SEG_PROTO_UDP */
	uint16_t lo, hi;
};

/* What an admin configures; strings are copied. */
struct segment_spec {
	uint32_t id; /* != 0, unique in the set */
	const char *name;
	const char *tenant;
	uint32_t flags;           /* enum seg_flag */
	uint32_t segment_group;   /* 0: none */
	const char *const *hosts; /* "server01.corp.example", "*.corp.example", "10.1.0.0/16" */
	size_t nhosts;
	const struct seg_ports *ports;
	size_t nports;
	const uint32_t *server_groups; /* must already be in the set */
	size_t nserver_groups;
};

struct segment {
	uint32_t id;
	char name[SEG_TITLE_MAX + 1];
	char tenant[IDENT_TENANT_MAX + 1];
	uint32_t flags;
	uint32_t segment_group;
	char **hosts; /* canonical: lowercase, no trailing dot, CIDRs masked with /len */
	size_t nhosts;
	struct seg_ports *ports;
	size_t nports;
	uint32_t *server_groups;
	size_t nserver_groups;
};

/* A tenant's segments and server groups; built once, then read-only (rebuild on change). */
struct segset;

struct segset *segset_new(const char *tenant);
void segset_free(struct segset *set);
/* 0, -EINVAL (bad group), -EEXIST (duplicate id) or -ENOMEM. */
int segset_add_server_group(struct segset *set, uint32_t id, const uint32_t *connector_groups,
                            size_t n);
/*
 * Validates and adds a segment, all or nothing. On -EINVAL (invalid field) or -EEXIST
 * (duplicate id, or a host and ports overlapping another segment) err says why, naming
 * both segments for an overlap.
 */
int segset_add(struct segset *set, const struct segment_spec *spec, char *err, size_t errlen);
size_t segset_count(const struct segset *set);
const struct segment *segset_nth(const struct segset *set, size_t i);
const struct segment *segset_find(const struct segset *set, uint32_t id);
/* The most specific segment for a name or address (text) and proto/port, or NULL. */
const struct segment *segment_match(const struct segset *set, const char *name_or_ip, uint8_t proto,
                                    uint16_t port);
/* The same for an address in network byte order (4 or 16 bytes). */
const struct segment *segment_match_addr(const struct segset *set, int family, const void *addr,
                                         uint8_t proto, uint16_t port);
bool segment_has_port(const struct segment *seg, uint8_t proto, uint16_t port);
/* segment -> server groups -> connector groups, deduplicated; returns how many (<= max). */
size_t segment_connector_groups(const struct segset *set, const struct segment *seg, uint32_t *out,
                                size_t max);
/*
 * Canonical form of a host entry: 0 and the kind, or -EINVAL with *why. out holds
 * SEG_HOST_STR_MAX + 1 bytes.
 */
int segment_parse_host(const char *in, char *out, enum seg_host_kind *kind, const char **why);
/* A name to look up: lowercase, trailing dot dropped, RFC 1035 lengths, LDH + '_'. */
int segment_normalize_name(const char *in, char out[SEG_NAME_MAX + 1], const char **why);

#endif
