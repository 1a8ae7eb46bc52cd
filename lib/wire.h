/*
 * The mtun wire codec: the 16-byte frame header and the TLV bodies of the control
 * messages that agent, broker and connector exchange (docs/protocol.md is the reference).
 */
#ifndef MTUN_WIRE_H
#define MTUN_WIRE_H

#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lib/ident.h"

#define MT_WIRE_VERSION      1
#define MT_FRAME_HDR         16
#define MT_FRAME_MAX         16384
#define MT_FRAME_MAX_PAYLOAD (MT_FRAME_MAX - MT_FRAME_HDR)

/* Values are fixed on the wire; 0 is never a valid type. */
enum mt_frame_type {
	MT_HELLO = 1,
	MT_CONFIG = 2,
	MT_RESOLVE = 3,
	MT_RESOLVE_REPLY = 4,
	MT_PROBE = 5,
	MT_PROBE_REPLY = 6,
	MT_OPEN = 7,
	MT_OPEN_REPLY = 8,
	MT_BIND = 9,
	MT_BIND_REPLY = 10,
	MT_DATA = 11,
	MT_WINDOW = 12,
	MT_FIN = 13,
	MT_RESET = 14,
	MT_PING = 15,
	MT_PONG = 16,
	MT_ERROR = 17,
	MT_POSTURE_QUERY = 18,
	MT_POSTURE = 19,
	MT_TYPE_MAX,
};

/* HELLO CAPS bits. An agent that answers POSTURE_QUERY announces MT_CAP_POSTURE. */
#define MT_CAP_POSTURE (1U << 0)

/* CONFIG only: more CONFIG frames of the same version follow. */
#define MT_FRAME_F_MORE (1U << 0)

enum mt_status {
	MT_STATUS_OK = 0,
	MT_STATUS_REFUSED = 1,
	MT_STATUS_UNREACHABLE = 2,
	MT_STATUS_TIMEOUT = 3,
	MT_STATUS_DENIED = 4,
	MT_STATUS_NXDOMAIN = 5,
	MT_STATUS_NO_CONNECTOR = 6,
	MT_STATUS_ERROR = 7,
	MT_STATUS_PROTOCOL = 8,
	MT_STATUS_REVOKED = 9,
	MT_STATUS_SHUTDOWN = 10,
	MT_STATUS_MAX,
};

enum mt_session_kind {
	MT_SESSION_CONTROL = 1,
	MT_SESSION_DATA = 2,
};

/* IP protocol numbers. */
enum mt_proto {
	MT_PROTO_TCP = 6,
	MT_PROTO_UDP = 17,
};

enum mt_seg_kind {
	MT_SEG_FQDN = 1,
	MT_SEG_WILDCARD = 2,
	MT_SEG_CIDR = 3,
};

#define MT_SEG_F_DOUBLE_ENCRYPT (1U << 0)
#define MT_SEG_F_ALL            (MT_SEG_F_DOUBLE_ENCRYPT)

/* Attribute type bit 15: a receiver that does not know the attribute must refuse. */
#define MT_ATTR_MANDATORY 0x8000U
#define MT_ATTR_HDR       4

/* Top-level attributes: one number space shared by all messages. */
enum mt_attr {
	MT_A_ROLE = 1,            /* u8 */
	MT_A_SESSION_KIND = 2,    /* u8 */
	MT_A_SW_VERSION = 3,      /* text, 1..64 */
	MT_A_CAPS = 4,            /* u32 */
	MT_A_GROUP = 5,           /* token, 1..64 */
	MT_A_LOCATION = 6,        /* token, 1..64 */
	MT_A_CAPACITY = 7,        /* u32 */
	MT_A_DEVICE_PROOF = 8,    /* bytes, 1..64 */
	MT_A_COOKIE = 9,          /* bytes, 16 */
	MT_A_CONFIG_VERSION = 10, /* u64 */
	MT_A_SEGMENT = 11,        /* nested: MT_S_* */
	MT_A_REQ_ID = 12,         /* u32 */
	MT_A_NAME = 13,           /* DNS name, 1..253 */
	MT_A_PORT = 14,           /* u16, 1..65535 */
	MT_A_PROTO = 15,          /* u8, 6 | 17 */
	MT_A_STATUS = 16,         /* u8, enum mt_status */
	MT_A_TTL = 17,            /* u32, seconds */
	MT_A_REASON = 18,         /* text, 1..255 */
	MT_A_HOST = 19,           /* DNS name or IP literal, 1..253 */
	MT_A_DEADLINE_MS = 20,    /* u32 */
	MT_A_LATENCY_US = 21,     /* u32 */
	MT_A_WINDOW = 22,         /* u32, 0..2^31-1 */
	MT_A_BROKER = 23,         /* "host:port" or "[v6]:port", 1..261 */
	MT_A_INCREMENT = 24,      /* u32, 1..2^31-1 */
	MT_A_TOKEN = 25,          /* u64 */
	MT_A_CODE = 26,           /* u32 */
	MT_A_MESSAGE = 27,        /* text, 1..255 */
	MT_A_FILE = 28,           /* text, absolute path 1..255, repeated */
	MT_A_PROCESS = 29,        /* text, 1..64, repeated */
	MT_A_FILE_FACT = 30,      /* nested: MT_F_*, repeated */
	MT_A_KERNEL = 31,         /* text, 1..64: uname release */
	MT_A_OS = 32,             /* text, 1..128: os-release PRETTY_NAME */
	MT_A_DISK_ENCRYPTED = 33, /* u8, 0 | 1: the root filesystem's device is dm-crypt */
};

/* Attributes inside MT_A_FILE_FACT. */
enum mt_fact_attr {
	MT_F_PATH = 1,   /* text, absolute path 1..255 */
	MT_F_SHA256 = 2, /* bytes, 32 */
};

/* Attributes inside MT_A_SEGMENT. */
enum mt_seg_attr {
	MT_S_ID = 1,     /* u32 */
	MT_S_KIND = 2,   /* u8, enum mt_seg_kind */
	MT_S_NAME = 3,   /* fqdn or "*." + fqdn */
	MT_S_FAMILY = 4, /* u8, 4 | 6 */
	MT_S_ADDR = 5,   /* bytes, 4 | 16 */
	MT_S_PREFIX = 6, /* u8 */
	MT_S_PORTS = 7,  /* nested: MT_P_*, repeated, at least one */
	MT_S_FLAGS = 8,  /* u32, MT_SEG_F_* */
};

/* Attributes inside MT_S_PORTS. */
enum mt_port_attr {
	MT_P_PROTO = 1, /* u8 */
	MT_P_LO = 2,    /* u16 */
	MT_P_HI = 3,    /* u16 */
};

#define MT_NAME_MAX   253
#define MT_TOKEN_MAX  64
#define MT_SW_MAX     64
#define MT_TEXT_MAX   255
#define MT_BROKER_MAX 261
#define MT_PROOF_MAX  64
#define MT_COOKIE_LEN 16
#define MT_WINDOW_MAX 0x7fffffffU

#define MT_POSTURE_FILES_MAX 32
#define MT_POSTURE_PROCS_MAX 32
#define MT_PATH_MAX          255
#define MT_PROCESS_MAX       64
#define MT_KERNEL_MAX        64
#define MT_OS_MAX            128
#define MT_SHA256_LEN        32

/* Header in host order. */
struct mt_hdr {
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint32_t id;
	uint32_t len; /* payload bytes after the header */
	uint32_t seq;
};

/* A view into the caller's buffer: never NUL-terminated, never copied. */
struct mt_bytes {
	const uint8_t *p;
	uint16_t len;
};

struct mt_hello {
	uint8_t role; /* enum mt_role */
	uint8_t kind; /* enum mt_session_kind */
	struct mt_bytes sw_version;
	uint32_t caps;
	struct mt_bytes group;    /* optional */
	struct mt_bytes location; /* optional */
	bool has_capacity;
	uint32_t capacity;
	struct mt_bytes device_proof; /* optional */
	struct mt_bytes cookie;       /* optional: connector data sessions only */
};

struct mt_port_range {
	uint8_t proto;
	uint16_t lo, hi;
};

struct mt_segment {
	uint32_t id;
	uint8_t kind;         /* enum mt_seg_kind */
	uint32_t flags;       /* MT_SEG_F_* */
	struct mt_bytes name; /* FQDN and WILDCARD */
	uint8_t family;       /* CIDR: 4 or 6 */
	uint8_t prefix;
	uint8_t addr[16];
	/* Encode: ranges[nranges]. Decode: ranges NULL, walk with wire_range_next. */
	const struct mt_port_range *ranges;
	uint16_t nranges;
	struct mt_bytes range_attrs;
};

struct mt_config {
	uint64_t version;
	/* Encode: segs[nsegs]. Decode: segs NULL, walk with wire_segment_next. */
	const struct mt_segment *segs;
	uint16_t nsegs;
	struct mt_bytes seg_attrs;
};

struct mt_resolve {
	uint32_t req_id;
	struct mt_bytes name;
	uint16_t port;
	uint8_t proto;
};

struct mt_resolve_reply {
	uint32_t req_id;
	uint8_t status;
	uint32_t ttl;
	struct mt_bytes reason; /* optional */
};

struct mt_probe {
	uint32_t req_id;
	struct mt_bytes host;
	uint16_t port;
	uint8_t proto;
	uint32_t deadline_ms;
};

struct mt_probe_reply {
	uint32_t req_id;
	uint8_t status;
	uint32_t latency_us;
	struct mt_bytes reason; /* optional */
};

struct mt_open {
	struct mt_bytes name; /* DNS name or IP literal */
	uint16_t port;
	uint8_t proto;
	uint32_t window;
};

/* OPEN_REPLY and BIND_REPLY. */
struct mt_reply {
	uint8_t status;
	uint32_t window;
	struct mt_bytes reason; /* optional */
};

struct mt_bind {
	struct mt_bytes host;
	uint16_t port;
	uint8_t proto;
	struct mt_bytes broker;
	struct mt_bytes cookie;
	uint32_t window;
};

struct mt_window {
	uint32_t increment;
};

struct mt_reset {
	uint8_t status;
	struct mt_bytes reason; /* optional */
};

/* PING and PONG. */
struct mt_ping {
	uint64_t token;
};

struct mt_error {
	uint32_t code;
	struct mt_bytes message;
};

struct mt_file_fact {
	struct mt_bytes path;
	uint8_t sha256[MT_SHA256_LEN];
};

/*
 * Paths and process names are unique within a message. Encode: files[nfiles],
 * procs[nprocs]. Decode: NULL/0; walk attrs with wire_posture_next.
 */
struct mt_posture_query {
	uint64_t version;
	const struct mt_bytes *files;
	uint16_t nfiles;
	const struct mt_bytes *procs;
	uint16_t nprocs;
	struct mt_bytes attrs;
};

/* kernel and os are optional (len 0: not sent); disk_encrypted is 0 or 1. */
struct mt_posture {
	uint64_t version;
	struct mt_bytes kernel, os;
	uint8_t disk_encrypted;
	const struct mt_file_fact *files;
	uint16_t nfiles;
	const struct mt_bytes *procs;
	uint16_t nprocs;
	struct mt_bytes attrs;
};

/* One frame, typed by hdr.type; hdr.len is set by encode and decode. */
struct mt_msg {
	struct mt_hdr hdr;
	union {
		struct mt_hello hello;
		struct mt_config config;
		struct mt_resolve resolve;
		struct mt_resolve_reply resolve_reply;
		struct mt_probe probe;
		struct mt_probe_reply probe_reply;
		struct mt_open open;
		struct mt_reply reply;
		struct mt_bind bind;
		struct mt_bytes data;
		struct mt_window window;
		struct mt_reset reset;
		struct mt_ping ping;
		struct mt_error error;
		struct mt_posture_query posture_query;
		struct mt_posture posture;
	} u;
};

/* Iteration over the repeated attributes of a decoded message. */
struct mt_iter {
	const uint8_t *p, *end;
};

const char *wire_type_name(unsigned type);
const char *wire_status_name(unsigned status);

/*
 * 0 and *hdr filled when buf holds a whole valid header; -EAGAIN when len < 16;
 * -EPROTO or -EMSGSIZE (length over MT_FRAME_MAX_PAYLOAD) with *why set otherwise.
 * The payload may still be incomplete: compare len with wire_frame_len(hdr).
 */
int wire_peek_header(const uint8_t *buf, size_t len, struct mt_hdr *hdr, const char **why);

static inline size_t wire_frame_len(const struct mt_hdr *hdr)
{
	return MT_FRAME_HDR + (size_t)hdr->len;
}

/* The broker's switch: rewrites the mtunnel id of a frame in place. */
static inline void wire_set_id(uint8_t *frame, uint32_t id)
{
	uint32_t be = htobe32(id);

	memcpy(frame + 4, &be, sizeof(be));
}

/*
 * Writes a DATA header into buf[0..15] for len payload bytes placed right after it. The hot
 * path does not check: id != 0 and len <= MT_FRAME_MAX_PAYLOAD are the caller's to keep.
 */
static inline void wire_encode_data_hdr(uint8_t *buf, uint32_t id, uint32_t seq, uint32_t len)
{
	uint32_t w[4] = {htobe32((uint32_t)MT_WIRE_VERSION << 24 | (uint32_t)MT_DATA << 16),
	                 htobe32(id), htobe32(len), htobe32(seq)};

	memcpy(buf, w, sizeof(w));
}

/*
 * Encodes m (hdr.type, hdr.flags, hdr.id, hdr.seq and the body) into buf. Returns the
 * frame length, -ENOSPC when size is too small, -EMSGSIZE when the frame would exceed
 * MT_FRAME_MAX, -EINVAL when a field is invalid (the same rules as decode).
 */
int wire_encode(uint8_t *buf, size_t size, const struct mt_msg *m);

/*
 * Decodes the frame at the start of buf (len bytes available, at least the whole
 * frame, or it is refused as truncated). Views in *m point into buf. 0, or
 * -EPROTO / -EMSGSIZE with *why set.
 */
int wire_decode(const uint8_t *buf, size_t len, struct mt_msg *m, const char **why);

/* Walks a decoded (hence valid) CONFIG: true and *seg filled while segments remain. */
void wire_config_segments(const struct mt_config *c, struct mt_iter *it);
bool wire_segment_next(struct mt_iter *it, struct mt_segment *seg);
void wire_segment_ranges(const struct mt_segment *seg, struct mt_iter *it);
bool wire_range_next(struct mt_iter *it, struct mt_port_range *r);

/*
 * Walks the repeated attributes of a decoded (hence valid) POSTURE_QUERY or POSTURE:
 * *type is MT_A_FILE or MT_A_PROCESS with *text set, or MT_A_FILE_FACT with *fact set
 * (text or fact may be NULL: items of that kind are then skipped).
 */
void wire_posture_iter(const struct mt_bytes *attrs, struct mt_iter *it);
bool wire_posture_next(struct mt_iter *it, uint16_t *type, struct mt_bytes *text,
                       struct mt_file_fact *fact);

/* Receiver's contiguity check of DATA seq: 0 and *expected advanced, or -EPROTO. */
static inline int wire_seq_check(uint32_t *expected, uint32_t got)
{
	if (got != *expected)
		return -EPROTO;
	(*expected)++;
	return 0;
}

#endif
