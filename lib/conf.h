/*
 * Configuration files: libconfig syntax, typed getters by path, and refusal of any setting
 * the program never asked for, so that a typo is an error and not a silent default.
 */
#ifndef MTUN_CONF_H
#define MTUN_CONF_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;

/* Largest configuration file or string accepted. */
#define CONF_MAX_SIZE (1U << 20)

/*
 * Every error below is logged once (log_warnx) as "FILE:LINE: message" and kept for
 * conf_error; callers need not log it again.
 */
struct conf *conf_new(void);
void conf_free(struct conf *c);
/* One load per conf. @include names are relative to the file's directory. */
int conf_load_file(struct conf *c, const char *path);
/* name stands for the file in messages ("<string>" if NULL); @include is from the cwd. */
int conf_load_string(struct conf *c, const char *name, const char *text);
const char *conf_error(const struct conf *c);

/*
 * Getters take a path of names and list indexes: "broker.listen", "brokers.[1].host".
 * CONF_OPTIONAL: a missing setting returns 0 and leaves *out as the caller set it (the
 * default). CONF_REQUIRED: a missing setting is -ENOENT. A wrong type is -EINVAL, a value
 * out of range -ERANGE. A setting read by any getter counts as known.
 */
enum conf_need {
	CONF_OPTIONAL = 0,
	CONF_REQUIRED = 1,
};

bool conf_has(const struct conf *c, const char *path);
/* The string lives as long as c. */
int conf_get_str(struct conf *c, const char *path, enum conf_need need, const char **out);
int conf_get_int(struct conf *c, const char *path, enum conf_need need, int64_t min, int64_t max,
                 int64_t *out);
int conf_get_bool(struct conf *c, const char *path, enum conf_need need, bool *out);
/* Number of elements of a list ( ... ) or array [ ... ] (0 if optional and missing). */
int conf_get_len(struct conf *c, const char *path, enum conf_need need, size_t *n);
/* An array of strings; *out is malloc'ed (free it; NULL if optional and missing), its
 * strings live as long as c. */
int conf_get_strv(struct conf *c, const char *path, enum conf_need need, const char ***out,
                  size_t *n);

/* Marks a whole group as known without reading it (a section for a feature turned off). */
void conf_skip(struct conf *c, const char *path);
/*
 * After the program has read every setting it knows: each setting it never read is
 * reported ("FILE:12: unknown setting 'listn' in 'broker'"), and -EINVAL returned.
 */
int conf_check_unknown(struct conf *c);

/*
 * Value formats shared by mtun programs. On error each parser points *why at a reason,
 * valid until the next call from the same thread.
 */
struct conf_hostport {
	char host[254]; /* a DNS name or an IP literal, without brackets */
	uint16_t port;
	int family; /* AF_INET or AF_INET6 for literals, AF_UNSPEC for a name */
};

struct conf_cidr {
	int family; /* AF_INET or AF_INET6 */
	union {
		struct in_addr v4;
		struct in6_addr v6;
	} addr;
	uint8_t prefix;
};

/* "host:port", "1.2.3.4:port", "[::1]:port"; ports 1-65535. */
int conf_parse_hostport(const char *s, struct conf_hostport *out, const char **why);
/*
 * A TCP listener (SO_REUSEADDR, close-on-exec) on spec, an address literal "ip:port" or
 * "[ip6]:port": the fd, or -errno, logged with what (the option or key that named it).
 */
int conf_listen_tcp(const char *spec, int backlog, const char *what);
/* "10.0.0.0/8", "fd00::/8"; a bare address is /32 or /128; host bits must be zero. */
int conf_parse_cidr(const char *s, struct conf_cidr *out, const char **why);
/* "250ms", "30s", "5m", "1h", "2d" -> milliseconds. */
int conf_parse_duration(const char *s, uint64_t *ms, const char **why);
/* "512", "64k", "16M", "1G", "1T" (powers of 1024) -> bytes. */
int conf_parse_size(const char *s, uint64_t *bytes, const char **why);

int conf_get_hostport(struct conf *c, const char *path, enum conf_need need,
                      struct conf_hostport *out);
int conf_get_cidr(struct conf *c, const char *path, enum conf_need need, struct conf_cidr *out);
int conf_get_duration(struct conf *c, const char *path, enum conf_need need, uint64_t min_ms,
                      uint64_t max_ms, uint64_t *ms);
/* A size may also be written as a plain integer of bytes. */
int conf_get_size(struct conf *c, const char *path, enum conf_need need, uint64_t min, uint64_t max,
                  uint64_t *bytes);

#endif
