/*
 * The admin model: object schemas, their validation with precise messages, and
 * create/read/update/delete in the store, each change one transaction.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "admin/admin_int.h"
#include "log.h"

static const struct store_migration admin_migrations[] = {
    {1, "admin objects",
     "CREATE TABLE admin_object (tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
     " id BIGINT NOT NULL, version BIGINT NOT NULL, body TEXT NOT NULL,"
     " updated_at BIGINT NOT NULL, PRIMARY KEY (tenant, kind, name),"
     " UNIQUE (tenant, kind, id));"
     "CREATE TABLE admin_ref (tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
     " to_kind TEXT NOT NULL, to_name TEXT NOT NULL);"
     "CREATE INDEX admin_ref_to ON admin_ref (tenant, to_kind, to_name);"
     "CREATE INDEX admin_ref_from ON admin_ref (tenant, kind, name);"
     "CREATE TABLE admin_tenant_state (tenant TEXT PRIMARY KEY, generation BIGINT NOT NULL,"
     " next_id BIGINT NOT NULL)"},
};

int admin_migrate(struct store *st)
{
	return store_migrate(st, "admin", admin_migrations,
	                     sizeof(admin_migrations) / sizeof(admin_migrations[0]));
}

void admin_err_set(struct admin_err *err, int status, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	err->status = status;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
}

/* A user's string inside a message: printable ASCII, at most 64 characters. */
const char *admin_q(char *buf, size_t size, const char *s)
{
	size_t i, j = 0;

	for (i = 0; s[i] && j + 4 < size && i < 64; i++)
		buf[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (s[i] && j + 4 < size) {
		memcpy(buf + j, "...", 3);
		j += 3;
	}
	buf[j] = '\0';
	return buf;
}

/* Field checks: 0, or -EINVAL with why. */

static bool admin_utf8_printable(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		unsigned c = *p, n, cp;

		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80) {
			p++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (unsigned i = 1; i <= n; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		p += n + 1;
	}
	return true;
}

static int chk_text(const char *s, char *why, size_t n)
{
	if (!admin_utf8_printable(s)) {
		snprintf(why, n, "must be printable UTF-8 text");
		return -EINVAL;
	}
	return 0;
}

static int chk_name(const char *s, char *why, size_t n)
{
	if (!ident_valid_id(s)) {
		snprintf(why, n, "a name is 1..64 of A-Z a-z 0-9 . _ -");
		return -EINVAL;
	}
	return 0;
}

static int chk_user(const char *s, char *why, size_t n)
{
	if (!ident_valid_user(s)) {
		snprintf(why, n, "a user name is 1..64 of A-Z a-z 0-9 . _ @ + -");
		return -EINVAL;
	}
	return 0;
}

static int chk_tenant(const char *s, char *why, size_t n)
{
	if (!ident_valid_tenant(s)) {
		snprintf(why, n, "a tenant is 1..63 of a-z 0-9 -, not starting or ending with -");
		return -EINVAL;
	}
	return 0;
}

static bool admin_looks_ip(const char *s)
{
	if (strchr(s, ':') || strchr(s, '/'))
		return true;
	for (; *s; s++)
		if ((*s < '0' || *s > '9') && *s != '.')
			return false;
	return true;
}

static int chk_host(const char *s, char *why, size_t n)
{
	char canon[SEG_HOST_STR_MAX + 1], q[80];
	enum seg_host_kind kind;
	const char *r = "invalid";

	if (segment_parse_host(s, canon, &kind, &r) == 0)
		return 0;
	admin_q(q, sizeof(q), s);
	if (strchr(s, '*'))
		snprintf(why, n, "bad wildcard \"%s\": %s", q, r);
	else if (admin_looks_ip(s))
		snprintf(why, n, "invalid CIDR \"%s\": %s", q, r);
	else
		snprintf(why, n, "invalid FQDN \"%s\": %s", q, r);
	return -EINVAL;
}

int admin_parse_ports(const char *s, struct seg_ports *p)
{
	unsigned long lo, hi;
	char *end;

	if (strncmp(s, "tcp/", 4) == 0)
		p->proto = SEG_PROTO_TCP;
	else if (strncmp(s, "udp/", 4) == 0)
		p->proto = SEG_PROTO_UDP;
	else
		return -EINVAL;
	s += 4;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	lo = strtoul(s, &end, 10);
	hi = lo;
	if (*end == '-') {
		s = end + 1;
		if (*s < '0' || *s > '9')
			return -EINVAL;
		hi = strtoul(s, &end, 10);
	}
	if (*end || errno || lo < 1 || hi > 65535 || lo > hi)
		return -EINVAL;
	p->lo = (uint16_t)lo;
	p->hi = (uint16_t)hi;
	return 0;
}

static int chk_ports(const char *s, char *why, size_t n)
{
	struct seg_ports p;
	char q[80];

	if (admin_parse_ports(s, &p) < 0) {
		snprintf(why, n, "bad port range \"%s\": tcp/PORT, tcp/LO-HI, udp/... (1..65535)",
		         admin_q(q, sizeof(q), s));
		return -EINVAL;
	}
	return 0;
}

static const char *const admin_days[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL};

static int chk_day(const char *s, char *why, size_t n)
{
	for (int i = 0; admin_days[i]; i++)
		if (strcmp(s, admin_days[i]) == 0)
			return 0;
	snprintf(why, n, "a day is one of sun mon tue wed thu fri sat");
	return -EINVAL;
}

int admin_parse_hhmm(const char *s, unsigned *min)
{
	unsigned h, m;

	if (strlen(s) != 5 || s[2] != ':' || s[0] < '0' || s[0] > '2' || s[1] < '0' || s[1] > '9' ||
	    s[3] < '0' || s[3] > '5' || s[4] < '0' || s[4] > '9')
		return -EINVAL;
	h = (unsigned)(s[0] - '0') * 10 + (unsigned)(s[1] - '0');
	m = (unsigned)(s[3] - '0') * 10 + (unsigned)(s[4] - '0');
	if (h > 24 || (h == 24 && m))
		return -EINVAL;
	*min = h * 60 + m;
	return 0;
}

static int chk_hhmm(const char *s, char *why, size_t n)
{
	unsigned m;

	if (admin_parse_hhmm(s, &m) < 0) {
		snprintf(why, n, "a time of day is HH:MM, 00:00..24:00");
		return -EINVAL;
	}
	return 0;
}

static int chk_sha256(const char *s, char *why, size_t n)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			break;
	if (i != 64 || s[i]) {
		snprintf(why, n, "a SHA-256 is 64 lowercase hex digits");
		return -EINVAL;
	}
	return 0;
}

static int chk_abspath(const char *s, char *why, size_t n)
{
	if (s[0] != '/' || strlen(s) > 4095 || !admin_utf8_printable(s)) {
		snprintf(why, n, "an absolute path is expected");
		return -EINVAL;
	}
	return 0;
}

static int chk_version(const char *s, char *why, size_t n)
{
	const char *p = s;

	while (*p >= '0' && *p <= '9') {
		while (*p >= '0' && *p <= '9')
			p++;
		if (*p != '.')
			break;
		p++;
	}
	if (p == s || *p || p[-1] == '.' || strlen(s) > 31) {
		snprintf(why, n, "a version is numbers separated by dots (6.1)");
		return -EINVAL;
	}
	return 0;
}

static int chk_process(const char *s, char *why, size_t n)
{
	if (strchr(s, '/') || strlen(s) > 255 || !admin_utf8_printable(s)) {
		snprintf(why, n, "a process name has no '/' and at most 255 characters");
		return -EINVAL;
	}
	return 0;
}

static int chk_address(const char *s, char *why, size_t n)
{
	const char *colon = strrchr(s, ':');

	if (!colon || colon == s || strlen(s) > 255 || !admin_utf8_printable(s) ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1) || !colon[1] ||
	    atoi(colon + 1) < 1 || atoi(colon + 1) > 65535 || strlen(colon + 1) > 5) {
		snprintf(why, n, "an address is HOST:PORT");
		return -EINVAL;
	}
	return 0;
}

/* Schemas. */

#define END                                                                                        \
	{                                                                                          \
		NULL, 0, false, 0, 0, 0, 0, 0, NULL, NULL, NULL                                    \
	}

static const char *const enum_action[] = {"allow", "deny", NULL};
static const char *const enum_health[] = {"none", "on-access", "continuous", NULL};

static const struct admin_field f_location[] = {
    {"region", AF_STR, false, 0, 0, 31, 0, 0, NULL, chk_text, NULL},
    {"lat", AF_NUM, true, 0, 0, 0, -90, 90, NULL, NULL, NULL},
    {"lon", AF_NUM, true, 0, 0, 0, -180, 180, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_window[] = {
    {"days", AF_STRLIST, true, 0, 1, 7, 0, 0, NULL, chk_day, NULL},
    {"start", AF_STR, true, 0, 0, 5, 0, 0, NULL, chk_hhmm, NULL},
    {"end", AF_STR, true, 0, 0, 5, 0, 0, NULL, chk_hhmm, NULL},
    {"utc_offset_min", AF_INT, false, 0, -840, 840, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_file[] = {
    {"path", AF_STR, true, 0, 1, 4095, 0, 0, NULL, chk_abspath, NULL},
    {"sha256", AF_STR, true, 0, 64, 64, 0, 0, NULL, chk_sha256, NULL},
    END,
};

static const struct admin_field f_tenant[] = {
    {"name", AF_STR, true, 0, 1, IDENT_TENANT_MAX, 0, 0, NULL, chk_tenant, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    {"timeout", AF_REF, false, ADMIN_K_TIMEOUT, 0, 0, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_user[] = {
    {"name", AF_STR, true, 0, 1, IDENT_USER_MAX, 0, 0, NULL, chk_user, NULL},
    {"display_name", AF_STR, false, 0, 0, 128, 0, 0, NULL, chk_text, NULL},
    {"email", AF_STR, false, 0, 0, 254, 0, 0, NULL, chk_text, NULL},
    {"groups", AF_REFLIST, false, ADMIN_K_GROUP, 0, 256, 0, 0, NULL, NULL, NULL},
    {"disabled", AF_BOOL, false, 0, 0, 0, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_described[] = {
    {"name", AF_STR, true, 0, 1, ADMIN_NAME_MAX, 0, 0, NULL, chk_name, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    END,
};

static const struct admin_field f_segment[] = {
    {"name", AF_STR, true, 0, 1, SEG_TITLE_MAX, 0, 0, NULL, chk_name, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    {"hosts", AF_STRLIST, true, 0, 1, 4096, 0, 0, NULL, chk_host, NULL},
    {"ports", AF_STRLIST, true, 0, 1, 256, 0, 0, NULL, chk_ports, NULL},
    {"double_encrypt", AF_BOOL, false, 0, 0, 0, 0, 0, NULL, NULL, NULL},
    {"health_check", AF_ENUM, false, 0, 0, 0, 0, 0, enum_health, NULL, NULL},
    {"segment_group", AF_REF, false, ADMIN_K_SEGMENT_GROUP, 0, 0, 0, 0, NULL, NULL, NULL},
    {"server_groups", AF_REFLIST, true, ADMIN_K_SERVER_GROUP, 1, 256, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_server_group[] = {
    {"name", AF_STR, true, 0, 1, ADMIN_NAME_MAX, 0, 0, NULL, chk_name, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    {"connector_groups", AF_REFLIST, true, ADMIN_K_CONNECTOR_GROUP, 1, 64, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_connector_group[] = {
    {"name", AF_STR, true, 0, 1, ADMIN_NAME_MAX, 0, 0, NULL, chk_name, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    {"location", AF_OBJ, true, 0, 0, 0, 0, 0, NULL, NULL, f_location},
    END,
};

static const struct admin_field f_broker[] = {
    {"name", AF_STR, true, 0, 1, ADMIN_NAME_MAX, 0, 0, NULL, chk_name, NULL},
    {"address", AF_STR, false, 0, 0, 255, 0, 0, NULL, chk_address, NULL},
    {"location", AF_OBJ, true, 0, 0, 0, 0, 0, NULL, NULL, f_location},
    END,
};

static const struct admin_field f_posture[] = {
    {"name", AF_STR, true, 0, 1, ADMIN_NAME_MAX, 0, 0, NULL, chk_name, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    {"kernel_min", AF_STR, false, 0, 1, 31, 0, 0, NULL, chk_version, NULL},
    {"os", AF_STR, false, 0, 1, 127, 0, 0, NULL, chk_text, NULL},
    {"files", AF_OBJLIST, false, 0, 0, 64, 0, 0, NULL, NULL, f_file},
    {"processes", AF_STRLIST, false, 0, 0, 64, 0, 0, NULL, chk_process, NULL},
    {"disk_encryption", AF_BOOL, false, 0, 0, 0, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_rule[] = {
    {"name", AF_STR, true, 0, 1, SEG_TITLE_MAX, 0, 0, NULL, chk_name, NULL},
    {"description", AF_STR, false, 0, 0, 256, 0, 0, NULL, chk_text, NULL},
    {"priority", AF_INT, true, 0, 0, 1000000000, 0, 0, NULL, NULL, NULL},
    {"action", AF_ENUM, true, 0, 0, 0, 0, 0, enum_action, NULL, NULL},
    {"users", AF_REFLIST, false, ADMIN_K_USER, 0, 64, 0, 0, NULL, NULL, NULL},
    {"groups", AF_REFLIST, false, ADMIN_K_GROUP, 0, 64, 0, 0, NULL, NULL, NULL},
    {"postures", AF_REFLIST, false, ADMIN_K_POSTURE, 0, 64, 0, 0, NULL, NULL, NULL},
    {"segments", AF_REFLIST, false, ADMIN_K_SEGMENT, 0, 64, 0, 0, NULL, NULL, NULL},
    {"segment_groups", AF_REFLIST, false, ADMIN_K_SEGMENT_GROUP, 0, 64, 0, 0, NULL, NULL, NULL},
    {"window", AF_OBJ, false, 0, 0, 0, 0, 0, NULL, NULL, f_window},
    {"timeout", AF_REF, false, ADMIN_K_TIMEOUT, 0, 0, 0, 0, NULL, NULL, NULL},
    END,
};

static const struct admin_field f_timeout[] = {
    {"name", AF_STR, true, 0, 1, ADMIN_NAME_MAX, 0, 0, NULL, chk_name, NULL},
    {"max_age_s", AF_INT, true, 0, 0, 31 * 86400, 0, 0, NULL, NULL, NULL},
    {"idle_s", AF_INT, true, 0, 0, 31 * 86400, 0, 0, NULL, NULL, NULL},
    END,
};

const struct admin_kind_desc admin_kinds[ADMIN_K_MAX] = {
    [ADMIN_K_TENANT] = {"tenant", "tenants", f_tenant},
    [ADMIN_K_USER] = {"user", "users", f_user},
    [ADMIN_K_GROUP] = {"group", "groups", f_described},
    [ADMIN_K_SEGMENT] = {"segment", "segments", f_segment},
    [ADMIN_K_SEGMENT_GROUP] = {"segment-group", "segment-groups", f_described},
    [ADMIN_K_SERVER_GROUP] = {"server-group", "server-groups", f_server_group},
    [ADMIN_K_CONNECTOR_GROUP] = {"connector-group", "connector-groups", f_connector_group},
    [ADMIN_K_BROKER] = {"broker", "brokers", f_broker},
    [ADMIN_K_POSTURE] = {"posture", "postures", f_posture},
    [ADMIN_K_RULE] = {"rule", "rules", f_rule},
    [ADMIN_K_TIMEOUT] = {"timeout", "timeouts", f_timeout},
};

const char *admin_kind_name(enum admin_kind k)
{
	return (unsigned)k < ADMIN_K_MAX ? admin_kinds[k].name : NULL;
}

const char *admin_kind_path(enum admin_kind k)
{
	return (unsigned)k < ADMIN_K_MAX ? admin_kinds[k].path : NULL;
}

int admin_kind_parse(const char *s, enum admin_kind *k)
{
	for (int i = 0; i < ADMIN_K_MAX; i++) {
		if (strcmp(s, admin_kinds[i].name) == 0 || strcmp(s, admin_kinds[i].path) == 0) {
			*k = (enum admin_kind)i;
			return 0;
		}
	}
	return -EINVAL;
}

struct admin_key {
	char *s;
	size_t n;
};

static int admin_key_cmp(const void *a, const void *b)
{
	const struct admin_key *x = a, *y = b;
	int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);

	return c ? c : (x->n > y->n) - (x->n < y->n);
}

static size_t admin_utf8_put(char *out, uint32_t c)
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xc0 | c >> 6);
		out[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xe0 | c >> 12);
		out[1] = (char)(0x80 | (c >> 6 & 0x3f));
		out[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | c >> 18);
	out[1] = (char)(0x80 | (c >> 12 & 0x3f));
	out[2] = (char)(0x80 | (c >> 6 & 0x3f));
	out[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

static uint32_t admin_hex4(const char *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++) {
		char c = p[i];

		v = v << 4 | (uint32_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
	}
	return v;
}

/*
 * The key of a JSON string at p (after its opening quote, n bytes up to the closing one,
 * escapes valid: the text parsed strictly), decoded as json-c keeps it: a C string, so
 * cut at the first NUL; a lone surrogate as U+FFFD.
 */
static int admin_key_decode(const char *p, size_t n, struct admin_key *k)
{
	char *out = malloc(n + 1);
	size_t i = 0, o = 0;

	if (!out)
		return -ENOMEM;
	while (i < n) {
		uint32_t c;

		if (p[i] != '\\') {
			out[o++] = p[i++];
			continue;
		}
		switch (p[i + 1]) {
		case 'b':
			c = '\b';
			break;
		case 'f':
			c = '\f';
			break;
		case 'n':
			c = '\n';
			break;
		case 'r':
			c = '\r';
			break;
		case 't':
			c = '\t';
			break;
		case 'u':
			c = admin_hex4(p + i + 2);
			i += 4;
			if (c >= 0xd800 && c <= 0xdbff && i + 8 <= n && p[i + 2] == '\\' &&
			    p[i + 3] == 'u') {
				uint32_t lo = admin_hex4(p + i + 4);

				if (lo >= 0xdc00 && lo <= 0xdfff) {
					c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
					i += 6;
				}
			}
			if (c >= 0xd800 && c <= 0xdfff)
				c = 0xfffd;
			break;
		default: /* " \ / */
			c = (unsigned char)p[i + 1];
		}
		i += 2;
		/* An escape takes 2, 6 or 12 bytes of input and 1, <= 3 or 4 of output. */
		o += admin_utf8_put(out + o, c);
	}
	out[o] = '\0';
	k->s = out;
	k->n = strlen(out);
	return 0;
}

/*
 * json-c keeps the last of two equal keys in an object; the API refuses them instead.
 * Scans text that json-c parsed strictly (so well formed, depth <= 16): -EEXIST with the
 * key in dup, 0, or -ENOMEM. *nkeys counts the keys seen (for the fuzzer's check).
 */
int admin_json_dup_key(const char *body, size_t len, char *dup, size_t dupsize, size_t *nkeys)
{
	struct {
		bool obj, want_key;
		size_t first; /* its keys in keys[first..nk) */
	} st[64];
	struct admin_key *keys = NULL;
	size_t nk = 0, cap = 0, depth = 0, total = 0;
	bool found = false; /* the scan goes on: *nkeys counts every key */
	int ret = 0;

	for (size_t i = 0; i < len && !ret; i++) {
		char c = body[i];

		if (c == '{' || c == '[') {
			if (depth == sizeof(st) / sizeof(st[0])) {
				ret = -E2BIG;
				break;
			}
			st[depth].obj = c == '{';
			st[depth].want_key = c == '{';
			st[depth++].first = nk;
		} else if (c == '}' || c == ']') {
			if (!depth)
				break;
			depth--;
			/* An array's own keys are none: its objects' went when they closed. */
			if (nk - st[depth].first > 1) {
				qsort(keys + st[depth].first, nk - st[depth].first, sizeof(*keys),
				      admin_key_cmp);
				for (size_t j = st[depth].first + 1; j < nk && !found; j++) {
					if (admin_key_cmp(&keys[j - 1], &keys[j]) == 0) {
						admin_q(dup, dupsize, keys[j].s);
						found = true;
					}
				}
			}
			while (nk > st[depth].first)
				free(keys[--nk].s);
		} else if (c == ',') {
			if (depth && st[depth - 1].obj)
				st[depth - 1].want_key = true;
		} else if (c == '"') {
			size_t start = ++i;

			while (i < len && body[i] != '"')
				i += body[i] == '\\' ? 2 : 1;
			if (i > len)
				i = len;
			if (!depth || !st[depth - 1].want_key)
				continue;
			st[depth - 1].want_key = false;
			total++;
			if (nk == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				struct admin_key *nkv = reallocarray(keys, ncap, sizeof(*keys));

				if (!nkv) {
					ret = -ENOMEM;
					break;
				}
				keys = nkv;
				cap = ncap;
			}
			ret = admin_key_decode(body + start, i - start, &keys[nk]);
			if (!ret)
				nk++;
		}
	}
	while (nk)
		free(keys[--nk].s);
	free(keys);
	if (nkeys)
		*nkeys = total;
	if (ret == -ENOMEM)
		return ret;
	return found ? -EEXIST : 0;
}

/* JSON parsing: the whole input, one value, bounded depth, no duplicate keys. */
int admin_json_parse(const char *body, size_t len, struct json_object **out, struct admin_err *err)
{
	struct json_tokener *tok;
	struct json_object *o;
	enum json_tokener_error je;
	char dup[80];
	size_t used;
	int ret;

	*out = NULL;
	if (len > ADMIN_BODY_MAX) {
		admin_err_set(err, 400, "body larger than %u bytes", ADMIN_BODY_MAX);
		return -EINVAL;
	}
	if (len == 0 || memchr(body, '\0', len)) {
		admin_err_set(err, 400, "body is not JSON: %s", len ? "NUL byte" : "empty");
		return -EINVAL;
	}
	tok = json_tokener_new_ex(16);
	if (!tok) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, body, (int)len);
	je = json_tokener_get_error(tok);
	used = json_tokener_get_parse_end(tok);
	if (je == json_tokener_continue)
		je = json_tokener_error_parse_eof;
	if (je == json_tokener_success) {
		while (used < len && strchr(" \t\r\n", body[used]))
			used++;
		if (used != len) {
			admin_err_set(err, 400, "body is not JSON: trailing bytes at offset %zu",
			              used);
			json_object_put(o);
			json_tokener_free(tok);
			return -EINVAL;
		}
	}
	if (je != json_tokener_success) {
		admin_err_set(err, 400, "body is not JSON: %s at offset %zu",
		              json_tokener_error_desc(je), used);
		json_object_put(o);
		json_tokener_free(tok);
		return -EINVAL;
	}
	json_tokener_free(tok);
	ret = admin_json_dup_key(body, len, dup, sizeof(dup), NULL);
	if (ret) {
		if (ret == -EEXIST)
			admin_err_set(err, 400, "duplicate key '%s' in object", dup);
		else
			admin_err_set(err, 500, "out of memory");
		json_object_put(o);
		return ret == -EEXIST ? -EINVAL : ret;
	}
	*out = o;
	return 0;
}

static const char *admin_type_name(struct json_object *v)
{
	switch (json_object_get_type(v)) {
	case json_type_null:
		return "null";
	case json_type_boolean:
		return "a boolean";
	case json_type_double:
		return "a number";
	case json_type_int:
		return "an integer";
	case json_type_object:
		return "an object";
	case json_type_array:
		return "a list";
	case json_type_string:
		return "a string";
	}
	return "?";
}

struct admin_check_ctx {
	const char *kind, *name; /* for messages */
	struct admin_err *err;
	struct admin_ref *refs;
	size_t nrefs, crefs;
};

static int admin_add_ref(struct admin_check_ctx *c, int kind, const char *name, const char *path)
{
	struct admin_ref *r;

	if (c->nrefs == c->crefs) {
		size_t n = c->crefs ? c->crefs * 2 : 16;

		r = realloc(c->refs, n * sizeof(*r));
		if (!r)
			return -ENOMEM;
		c->refs = r;
		c->crefs = n;
	}
	r = &c->refs[c->nrefs++];
	r->kind = kind;
	snprintf(r->name, sizeof(r->name), "%s", name);
	snprintf(r->path, sizeof(r->path), "%s", path);
	return 0;
}

#define BAD(c, fmt, ...)                                                                           \
	(admin_err_set((c)->err, 400, "%s '%s': " fmt, (c)->kind, (c)->name, __VA_ARGS__), -EINVAL)

static int admin_check_fields(struct admin_check_ctx *c, const struct admin_field *fields,
                              struct json_object *obj, const char *prefix, bool top);

static int admin_check_string(struct admin_check_ctx *c, const struct admin_field *f,
                              struct json_object *v, const char *path)
{
	char why[256];
	const char *s;
	size_t len;

	if (!json_object_is_type(v, json_type_string))
		return BAD(c, "%s: expected a string, got %s", path, admin_type_name(v));
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (strlen(s) != len)
		return BAD(c, "%s: NUL character in string", path);
	if (f->check && len <= 4096 && f->check(s, why, sizeof(why)) < 0)
		return BAD(c, "%s: %s", path, why);
	if (f->type == AF_STR && (len < (size_t)f->min || len > (size_t)f->max))
		return BAD(c, "%s: length must be %" PRId64 "..%" PRId64, path, f->min, f->max);
	if (!f->check && !admin_utf8_printable(s))
		return BAD(c, "%s: must be printable UTF-8 text", path);
	return 0;
}

struct admin_dup {
	const char *s;
	size_t i;
};

static int admin_dup_cmp(const void *a, const void *b)
{
	const struct admin_dup *x = a, *y = b;
	int r = strcmp(x->s, y->s);

	return r ? r : (x->i > y->i) - (x->i < y->i);
}

/* A list of strings with one listed twice is refused; sorted, so 4096 entries stay cheap. */
static int admin_check_dups(struct admin_check_ctx *c, struct json_object *v, const char *path)
{
	size_t n = json_object_array_length(v);
	struct admin_dup *d;
	char q[80];
	int ret = 0;

	if (n < 2)
		return 0;
	d = calloc(n, sizeof(*d));
	if (!d) {
		admin_err_set(c->err, 500, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		d[i] =
		    (struct admin_dup){json_object_get_string(json_object_array_get_idx(v, i)), i};
	qsort(d, n, sizeof(*d), admin_dup_cmp);
	for (size_t i = 1; i < n && !ret; i++)
		if (strcmp(d[i - 1].s, d[i].s) == 0)
			ret = BAD(c, "%s[%zu]: \"%s\" listed twice", path, d[i].i,
			          admin_q(q, sizeof(q), d[i].s));
	free(d);
	return ret;
}

static int admin_check_value(struct admin_check_ctx *c, const struct admin_field *f,
                             struct json_object *v, const char *path)
{
	char sub[160], q[80];
	size_t n;
	int64_t i;
	double d;
	int ret;

	switch (f->type) {
	case AF_STR:
		return admin_check_string(c, f, v, path);
	case AF_INT:
		if (!json_object_is_type(v, json_type_int))
			return BAD(c, "%s: expected an integer, got %s", path, admin_type_name(v));
		errno = 0;
		i = json_object_get_int64(v);
		if (errno || i < f->min || i > f->max)
			return BAD(c, "%s: must be %" PRId64 "..%" PRId64, path, f->min, f->max);
		return 0;
	case AF_NUM:
		if (!json_object_is_type(v, json_type_int) &&
		    !json_object_is_type(v, json_type_double))
			return BAD(c, "%s: expected a number, got %s", path, admin_type_name(v));
		d = json_object_get_double(v);
		if (!(d >= f->dmin && d <= f->dmax))
			return BAD(c, "%s: must be %g..%g", path, f->dmin, f->dmax);
		return 0;
	case AF_BOOL:
		if (!json_object_is_type(v, json_type_boolean))
			return BAD(c, "%s: expected a boolean, got %s", path, admin_type_name(v));
		return 0;
	case AF_ENUM:
		if (!json_object_is_type(v, json_type_string))
			return BAD(c, "%s: expected a string, got %s", path, admin_type_name(v));
		for (size_t k = 0; f->values[k]; k++)
			if (strcmp(json_object_get_string(v), f->values[k]) == 0)
				return 0;
		sub[0] = '\0';
		for (size_t k = 0; f->values[k]; k++)
			snprintf(sub + strlen(sub), sizeof(sub) - strlen(sub), "%s%s",
			         k ? ", " : "", f->values[k]);
		return BAD(c, "%s: \"%s\" is not one of %s", path,
		           admin_q(q, sizeof(q), json_object_get_string(v)), sub);
	case AF_REF:
		if (!json_object_is_type(v, json_type_string))
			return BAD(c, "%s: expected the name of a %s, got %s", path,
			           admin_kinds[f->kind].name, admin_type_name(v));
		if (!ident_valid_user(json_object_get_string(v)))
			return BAD(c, "%s: \"%s\" is not a valid name", path,
			           admin_q(q, sizeof(q), json_object_get_string(v)));
		if (admin_add_ref(c, f->kind, json_object_get_string(v), path) < 0) {
			admin_err_set(c->err, 500, "out of memory");
			return -ENOMEM;
		}
		return 0;
	case AF_OBJ:
		if (!json_object_is_type(v, json_type_object))
			return BAD(c, "%s: expected an object, got %s", path, admin_type_name(v));
		return admin_check_fields(c, f->sub, v, path, false);
	case AF_STRLIST:
	case AF_REFLIST:
	case AF_OBJLIST:
		if (!json_object_is_type(v, json_type_array))
			return BAD(c, "%s: expected a list, got %s", path, admin_type_name(v));
		n = json_object_array_length(v);
		if (n < (size_t)f->min || n > (size_t)f->max)
			return BAD(c, "%s: needs %" PRId64 "..%" PRId64 " entries", path, f->min,
			           f->max);
		for (size_t k = 0; k < n; k++) {
			struct json_object *e = json_object_array_get_idx(v, k);
			struct admin_field ef = *f;

			snprintf(sub, sizeof(sub), "%s[%zu]", path, k);
			ef.type = f->type == AF_STRLIST   ? AF_STR
			          : f->type == AF_REFLIST ? AF_REF
			                                  : AF_OBJ;
			ef.min = 0;
			ef.max = 4096;
			ret = admin_check_value(c, &ef, e, sub);
			if (ret)
				return ret;
		}
		return f->type == AF_OBJLIST ? 0 : admin_check_dups(c, v, path);
	}
	return -EINVAL;
}

static int admin_check_fields(struct admin_check_ctx *c, const struct admin_field *fields,
                              struct json_object *obj, const char *prefix, bool top)
{
	struct json_object_iterator it = json_object_iter_begin(obj);
	struct json_object_iterator end = json_object_iter_end(obj);
	char path[160], q[80];
	const struct admin_field *f;
	int ret;

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *key = json_object_iter_peek_name(&it);
		struct json_object *v = json_object_iter_peek_value(&it);

		if (top && (strcmp(key, "version") == 0 || strcmp(key, "id") == 0))
			continue;
		for (f = fields; f->name; f++)
			if (strcmp(f->name, key) == 0)
				break;
		snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "",
		         admin_q(q, sizeof(q), key));
		if (!f->name)
			return BAD(c, "unknown field '%s'", path);
		if (json_object_is_type(v, json_type_null) && !f->required)
			continue;
		ret = admin_check_value(c, f, v, path);
		if (ret)
			return ret;
	}
	for (f = fields; f->name; f++) {
		struct json_object *v;

		if (f->required && (!json_object_object_get_ex(obj, f->name, &v) ||
		                    json_object_is_type(v, json_type_null)))
			return BAD(c, "field '%s%s%s' is required", prefix, *prefix ? "." : "",
			           f->name);
	}
	return 0;
}

int admin_validate(enum admin_kind k, struct json_object *obj, const char *name,
                   struct admin_ref **refs, size_t *nrefs, struct admin_err *err)
{
	struct admin_check_ctx c = {.kind = admin_kinds[k].name, .name = name, .err = err};
	struct json_object *v;
	unsigned start, end;
	int ret;

	if (refs)
		*refs = NULL;
	if (nrefs)
		*nrefs = 0;
	if (!json_object_is_type(obj, json_type_object)) {
		admin_err_set(err, 400, "%s: expected a JSON object, got %s", c.kind,
		              admin_type_name(obj));
		return -EINVAL;
	}
	ret = admin_check_fields(&c, admin_kinds[k].fields, obj, "", true);
	if (!ret && json_object_object_get_ex(obj, "version", &v) &&
	    !json_object_is_type(v, json_type_int))
		ret = BAD(&c, "version: expected an integer, got %s", admin_type_name(v));
	if (!ret && k == ADMIN_K_RULE && json_object_object_get_ex(obj, "window", &v) &&
	    json_object_is_type(v, json_type_object)) {
		struct json_object *s, *e;

		json_object_object_get_ex(v, "start", &s);
		json_object_object_get_ex(v, "end", &e);
		admin_parse_hhmm(json_object_get_string(s), &start);
		admin_parse_hhmm(json_object_get_string(e), &end);
		if (start > 1439)
			ret = BAD(&c, "window.start: %s", "must be before 24:00");
		else if (end == 0)
			ret = BAD(&c, "window.end: %s", "00:00 ends nothing; use 24:00");
		else if (start == end)
			ret = BAD(&c, "window: %s", "empty window (start == end)");
	}
	if (ret) {
		free(c.refs);
		return ret;
	}
	if (refs) {
		*refs = c.refs;
		*nrefs = c.nrefs;
	} else {
		free(c.refs);
	}
	return 0;
}

int admin_check(enum admin_kind k, const char *body, size_t len, struct admin_err *err)
{
	struct json_object *obj, *v;
	const char *name = "?";
	int ret;

	if ((unsigned)k >= ADMIN_K_MAX) {
		admin_err_set(err, 400, "unknown kind");
		return -EINVAL;
	}
	ret = admin_json_parse(body, len, &obj, err);
	if (ret)
		return ret;
	if (json_object_is_type(obj, json_type_object) &&
	    json_object_object_get_ex(obj, "name", &v) && json_object_is_type(v, json_type_string))
		name = json_object_get_string(v);
	ret = admin_validate(k, obj, name, NULL, NULL, err);
	json_object_put(obj);
	return ret;
}

/* Store access. */

static int admin_tenant_state(struct store *st, const char *tenant)
{
	int ret = store_exec(st,
	                     "INSERT INTO admin_tenant_state (tenant, generation, next_id) "
	                     "SELECT $1, 0, 1 WHERE NOT EXISTS "
	                     "(SELECT 1 FROM admin_tenant_state WHERE tenant = $1)",
	                     STORE_ARGS(store_text(tenant)));
	return ret < 0 ? ret : 0;
}

int admin_generation(struct store *st, const char *tenant, int64_t *gen)
{
	int ret = store_query_int(st, "SELECT generation FROM admin_tenant_state WHERE tenant = $1",
	                          STORE_ARGS(store_text(tenant)), gen);

	if (ret == -ENOENT) {
		*gen = 0;
		return 0;
	}
	return ret;
}

struct admin_row {
	int64_t id, version;
	struct json_object *body;
	int err;
};

static int admin_row_fn(void *arg, const struct store_val *cols, size_t ncols)
{
	struct admin_row *r = arg;

	if (ncols != 3 || cols[0].type != STORE_T_INT || cols[1].type != STORE_T_INT ||
	    cols[2].type != STORE_T_TEXT)
		return -EIO;
	r->id = cols[0].i;
	r->version = cols[1].i;
	r->body = json_tokener_parse((const char *)cols[2].p);
	return r->body ? 1 : -EIO;
}

/* One stored object: 0, -ENOENT or -errno. row->body is the caller's. */
int admin_load(struct store *st, const char *tenant, enum admin_kind k, const char *name,
               struct admin_row_out *out)
{
	struct admin_row r = {0};
	int ret;

	ret = store_query(
	    st,
	    "SELECT id, version, body FROM admin_object "
	    "WHERE tenant = $1 AND kind = $2 AND name = $3",
	    STORE_ARGS(store_text(tenant), store_text(admin_kinds[k].name), store_text(name)),
	    admin_row_fn, &r);
	if (ret < 0)
		return ret;
	if (!r.body)
		return -ENOENT;
	out->id = r.id;
	out->version = r.version;
	out->body = r.body;
	return 0;
}

/* The object as the API shows it: its body with name, id and version. */
struct json_object *admin_present(struct json_object *body, const char *name, int64_t id,
                                  int64_t version)
{
	struct json_object *o = json_object_new_object();
	struct json_object_iterator it, end;

	if (!o)
		return NULL;
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "id", json_object_new_int64(id));
	json_object_object_add(o, "version", json_object_new_int64(version));
	it = json_object_iter_begin(body);
	end = json_object_iter_end(body);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *key = json_object_iter_peek_name(&it);

		if (strcmp(key, "name") == 0 || strcmp(key, "id") == 0 ||
		    strcmp(key, "version") == 0)
			continue;
		json_object_object_add(o, key, json_object_get(json_object_iter_peek_value(&it)));
	}
	return o;
}

int admin_emit(struct json_object *o, char **out, struct admin_err *err)
{
	const char *s;

	if (!out)
		return 0;
	s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
	                                              JSON_C_TO_STRING_NOSLASHESCAPE)
	      : NULL;
	*out = s ? strdup(s) : NULL;
	if (!*out) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int admin_store_err(struct store *st, struct admin_err *err, int ret)
{
	admin_err_set(err, ret == -EBUSY ? 503 : 500, "store: %s", store_errmsg(st));
	return ret;
}

static int admin_write_refs(struct store *st, const char *tenant, enum admin_kind k,
                            const char *name, const struct admin_ref *refs, size_t nrefs,
                            struct admin_err *err)
{
	char q[80];
	int64_t one;
	int ret;

	ret = store_exec(
	    st, "DELETE FROM admin_ref WHERE tenant = $1 AND kind = $2 AND name = $3",
	    STORE_ARGS(store_text(tenant), store_text(admin_kinds[k].name), store_text(name)));
	if (ret < 0)
		return admin_store_err(st, err, ret);
	for (size_t i = 0; i < nrefs; i++) {
		const char *tk = admin_kinds[refs[i].kind].name;

		ret = store_query_int(
		    st,
		    "SELECT 1 FROM admin_object "
		    "WHERE tenant = $1 AND kind = $2 AND name = $3",
		    STORE_ARGS(store_text(tenant), store_text(tk), store_text(refs[i].name)), &one);
		if (ret == -ENOENT) {
			admin_err_set(err, 400, "%s '%s': %s: no %s named '%s'",
			              admin_kinds[k].name, name, refs[i].path, tk,
			              admin_q(q, sizeof(q), refs[i].name));
			return -EINVAL;
		}
		if (ret < 0)
			return admin_store_err(st, err, ret);
		ret = store_exec(st,
		                 "INSERT INTO admin_ref (tenant, kind, name, to_kind, to_name) "
		                 "VALUES ($1, $2, $3, $4, $5)",
		                 STORE_ARGS(store_text(tenant), store_text(admin_kinds[k].name),
		                            store_text(name), store_text(tk),
		                            store_text(refs[i].name)));
		if (ret < 0)
			return admin_store_err(st, err, ret);
	}
	return 0;
}

/* Body without name, id, version: what is stored. */
static int admin_body_text(struct json_object *obj, char **text, struct admin_err *err)
{
	struct json_object *copy = NULL;
	int ret;

	if (json_object_deep_copy(obj, &copy, NULL) < 0) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	json_object_object_del(copy, "name");
	json_object_object_del(copy, "id");
	json_object_object_del(copy, "version");
	ret = admin_emit(copy, text, err);
	json_object_put(copy);
	return ret;
}

static int admin_name_of(enum admin_kind k, struct json_object *obj, const char **name,
                         struct admin_err *err)
{
	struct json_object *v;
	char why[128], q[80];
	int ret;

	if (!json_object_is_type(obj, json_type_object)) {
		admin_err_set(err, 400, "%s: expected a JSON object, got %s", admin_kinds[k].name,
		              admin_type_name(obj));
		return -EINVAL;
	}
	if (!json_object_object_get_ex(obj, "name", &v)) {
		admin_err_set(err, 400, "%s: field 'name' is required", admin_kinds[k].name);
		return -EINVAL;
	}
	if (!json_object_is_type(v, json_type_string)) {
		admin_err_set(err, 400, "%s: name: expected a string, got %s", admin_kinds[k].name,
		              admin_type_name(v));
		return -EINVAL;
	}
	*name = json_object_get_string(v);
	ret = k == ADMIN_K_TENANT ? chk_tenant(*name, why, sizeof(why))
	      : k == ADMIN_K_USER ? chk_user(*name, why, sizeof(why))
	                          : chk_name(*name, why, sizeof(why));
	if (ret == 0 && (k == ADMIN_K_SEGMENT || k == ADMIN_K_RULE) &&
	    strlen(*name) > SEG_TITLE_MAX) {
		snprintf(why, sizeof(why), "at most %d characters", SEG_TITLE_MAX);
		ret = -EINVAL;
	}
	if (ret) {
		admin_err_set(err, 400, "%s: name \"%s\": %s", admin_kinds[k].name,
		              admin_q(q, sizeof(q), *name), why);
		return -EINVAL;
	}
	return 0;
}

/* One create/update/delete inside an open transaction. *result: the object afterwards. */
int admin_op(struct store *st, const char *tenant, enum admin_op_kind op, enum admin_kind k,
             const char *path_name, struct json_object *obj, int64_t version,
             struct json_object **result, struct admin_err *err)
{
	struct admin_ref *refs = NULL;
	struct admin_row_out cur = {0};
	const char *name = path_name, *kn = admin_kinds[k].name;
	struct json_object *v;
	char *text = NULL, q[80];
	size_t nrefs = 0;
	int64_t id, newver;
	int ret;

	if (result)
		*result = NULL;
	if (op != ADMIN_OP_DELETE) {
		/* An update names its object in the path; the body may leave the name out. */
		if (op == ADMIN_OP_UPDATE && json_object_is_type(obj, json_type_object) &&
		    !json_object_object_get_ex(obj, "name", NULL))
			json_object_object_add(obj, "name", json_object_new_string(path_name));
		if (op == ADMIN_OP_CREATE || json_object_object_get_ex(obj, "name", &v)) {
			ret = admin_name_of(k, obj, &name, err);
			if (ret)
				return ret;
		}
		if (op == ADMIN_OP_UPDATE && strcmp(name, path_name) != 0) {
			admin_err_set(err, 400,
			              "%s '%s': name cannot change (to '%s'); create a new one", kn,
			              admin_q(q, sizeof(q), path_name), name);
			return -EINVAL;
		}
		ret = admin_validate(k, obj, name, &refs, &nrefs, err);
		if (ret)
			return ret;
		if (k == ADMIN_K_TENANT && strcmp(name, tenant) != 0) {
			admin_err_set(err, 400, "tenant '%s': you administer tenant '%s' only",
			              name, tenant);
			ret = -EINVAL;
			goto out;
		}
		if (op == ADMIN_OP_UPDATE) {
			if (!json_object_object_get_ex(obj, "version", &v)) {
				admin_err_set(err, 400,
				              "%s '%s': field 'version' is required to update", kn,
				              name);
				ret = -EINVAL;
				goto out;
			}
			version = json_object_get_int64(v);
			if (version < 1) {
				admin_err_set(err, 400, "%s '%s': version must be 1 or more", kn,
				              name);
				ret = -EINVAL;
				goto out;
			}
		}
	}
	ret = admin_tenant_state(st, tenant);
	if (ret < 0) {
		admin_store_err(st, err, ret);
		goto out;
	}
	ret = admin_load(st, tenant, k, name, &cur);
	if (ret < 0 && ret != -ENOENT) {
		admin_store_err(st, err, ret);
		goto out;
	}
	if (op == ADMIN_OP_CREATE && ret == 0) {
		admin_err_set(err, 409, "%s '%s' exists already (version %" PRId64 ")", kn, name,
		              cur.version);
		ret = -EEXIST;
		goto out;
	}
	if (op != ADMIN_OP_CREATE && ret == -ENOENT) {
		admin_err_set(err, 404, "no %s named '%s'", kn, admin_q(q, sizeof(q), name));
		goto out;
	}
	if (op != ADMIN_OP_CREATE && version && version != cur.version) {
		admin_err_set(err, 409,
		              "%s '%s' is at version %" PRId64 ", not %" PRId64
		              " (changed by someone else: read it again)",
		              kn, name, cur.version, version);
		ret = -ESTALE;
		goto out;
	}
	if (op == ADMIN_OP_DELETE) {
		struct admin_refby by = {0};

		ret = admin_referrer(st, tenant, k, name, &by);
		if (ret == 0) {
			admin_err_set(err, 409, "%s '%s' is used by %s '%s'", kn, name, by.kind,
			              by.name);
			ret = -EBUSY;
			goto out;
		}
		if (ret != -ENOENT) {
			admin_store_err(st, err, ret);
			goto out;
		}
		ret = store_exec(st,
		                 "DELETE FROM admin_object WHERE tenant = $1 AND kind = $2 AND "
		                 "name = $3",
		                 STORE_ARGS(store_text(tenant), store_text(kn), store_text(name)));
		if (ret >= 0)
			ret = admin_write_refs(st, tenant, k, name, NULL, 0, err);
		else
			admin_store_err(st, err, ret);
		goto out;
	}
	ret = admin_body_text(obj, &text, err);
	if (ret)
		goto out;
	if (op == ADMIN_OP_CREATE) {
		ret =
		    store_query_int(st, "SELECT next_id FROM admin_tenant_state WHERE tenant = $1",
		                    STORE_ARGS(store_text(tenant)), &id);
		if (ret == 0 && id > UINT32_MAX) {
			admin_err_set(err, 500, "object ids exhausted for tenant %s", tenant);
			ret = -EOVERFLOW;
			goto out;
		}
		if (ret == 0)
			ret = store_exec(st,
			                 "UPDATE admin_tenant_state SET next_id = next_id + 1 "
			                 "WHERE tenant = $1",
			                 STORE_ARGS(store_text(tenant)));
		newver = 1;
		if (ret >= 0)
			ret = store_exec(
			    st,
			    "INSERT INTO admin_object (tenant, kind, name, id, version, "
			    "body, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
			    STORE_ARGS(store_text(tenant), store_text(kn), store_text(name),
			               store_int(id), store_int(newver), store_text(text),
			               store_int(time(NULL))));
	} else {
		id = cur.id;
		newver = cur.version + 1;
		ret = store_exec(st,
		                 "UPDATE admin_object SET version = $4, body = $5, updated_at = $6 "
		                 "WHERE tenant = $1 AND kind = $2 AND name = $3",
		                 STORE_ARGS(store_text(tenant), store_text(kn), store_text(name),
		                            store_int(newver), store_text(text),
		                            store_int(time(NULL))));
	}
	if (ret < 0) {
		admin_store_err(st, err, ret);
		goto out;
	}
	ret = admin_write_refs(st, tenant, k, name, refs, nrefs, err);
	if (ret)
		goto out;
	if (result) {
		struct json_object *stored = json_tokener_parse(text);

		*result = stored ? admin_present(stored, name, id, newver) : NULL;
		json_object_put(stored);
		if (!*result) {
			admin_err_set(err, 500, "out of memory");
			ret = -ENOMEM;
		}
	}
out:
	json_object_put(cur.body);
	free(text);
	free(refs);
	return ret;
}

static int admin_refby_fn(void *arg, const struct store_val *cols, size_t ncols)
{
	struct admin_refby *by = arg;

	if (ncols != 2 || cols[0].type != STORE_T_TEXT || cols[1].type != STORE_T_TEXT)
		return -EIO;
	snprintf(by->kind, sizeof(by->kind), "%s", (const char *)cols[0].p);
	snprintf(by->name, sizeof(by->name), "%s", (const char *)cols[1].p);
	by->found = true;
	return 1;
}

int admin_referrer(struct store *st, const char *tenant, enum admin_kind k, const char *name,
                   struct admin_refby *by)
{
	int ret;

	by->found = false;
	ret = store_query(
	    st,
	    "SELECT kind, name FROM admin_ref WHERE tenant = $1 AND to_kind = $2 "
	    "AND to_name = $3 ORDER BY kind, name",
	    STORE_ARGS(store_text(tenant), store_text(admin_kinds[k].name), store_text(name)),
	    admin_refby_fn, by);
	if (ret < 0)
		return ret;
	return by->found ? 0 : -ENOENT;
}

/* Ends a change: the whole model must compile, the generation moves, then commit. */
int admin_finish(struct store *st, const char *tenant, struct admin_snapshot **keep,
                 struct admin_err *err)
{
	struct admin_snapshot *snap = NULL;
	int ret;

	if (keep)
		*keep = NULL;
	ret = admin_snapshot_compile(st, tenant, keep != NULL, &snap, err);
	if (ret)
		goto fail;
	ret = store_exec(st,
	                 "UPDATE admin_tenant_state SET generation = generation + 1 "
	                 "WHERE tenant = $1",
	                 STORE_ARGS(store_text(tenant)));
	if (ret >= 0)
		ret = store_commit(st);
	if (ret < 0) {
		admin_store_err(st, err, ret);
		goto fail;
	}
	if (keep) {
		snap->generation++;
		*keep = snap;
	} else {
		admin_snapshot_free(snap);
	}
	return 0;
fail:
	admin_snapshot_free(snap);
	return ret;
}

int admin_begin(struct store *st, const char *tenant, struct admin_err *err)
{
	int ret;

	if (!ident_valid_tenant(tenant)) {
		admin_err_set(err, 400, "invalid tenant");
		return -EINVAL;
	}
	ret = store_begin(st);
	if (ret < 0)
		return admin_store_err(st, err, ret);
	return 0;
}

int admin_apply(struct store *st, const char *tenant, enum admin_op_kind op, enum admin_kind k,
                const char *name, const char *body, size_t len, int64_t version, char **out,
                struct admin_snapshot **keep, struct admin_err *err)
{
	struct json_object *obj = NULL, *res = NULL;
	int ret;

	if (out)
		*out = NULL;
	if ((unsigned)k >= ADMIN_K_MAX) {
		admin_err_set(err, 400, "unknown kind");
		return -EINVAL;
	}
	if (body) {
		ret = admin_json_parse(body, len, &obj, err);
		if (ret)
			return ret;
	}
	ret = admin_begin(st, tenant, err);
	if (ret)
		goto out;
	ret = admin_op(st, tenant, op, k, name, obj, version, &res, err);
	if (!ret)
		ret = admin_finish(st, tenant, keep, err);
	if (ret)
		store_rollback(st);
	else
		ret = admin_emit(res, op == ADMIN_OP_DELETE ? NULL : out, err);
out:
	json_object_put(obj);
	json_object_put(res);
	return ret;
}

int admin_create(struct store *st, const char *tenant, enum admin_kind k, const char *body,
                 size_t len, char **out, struct admin_err *err)
{
	return admin_apply(st, tenant, ADMIN_OP_CREATE, k, NULL, body, len, 0, out, NULL, err);
}

int admin_update(struct store *st, const char *tenant, enum admin_kind k, const char *name,
                 const char *body, size_t len, char **out, struct admin_err *err)
{
	return admin_apply(st, tenant, ADMIN_OP_UPDATE, k, name, body, len, 0, out, NULL, err);
}

int admin_delete(struct store *st, const char *tenant, enum admin_kind k, const char *name,
                 int64_t version, struct admin_err *err)
{
	return admin_apply(st, tenant, ADMIN_OP_DELETE, k, name, NULL, 0, version, NULL, NULL, err);
}

int admin_get(struct store *st, const char *tenant, enum admin_kind k, const char *name, char **out,
              struct admin_err *err)
{
	struct admin_row_out r = {0};
	struct json_object *o;
	char q[80];
	int ret;

	*out = NULL;
	if ((unsigned)k >= ADMIN_K_MAX) {
		admin_err_set(err, 400, "unknown kind");
		return -EINVAL;
	}
	ret = admin_load(st, tenant, k, name, &r);
	if (ret == -ENOENT) {
		admin_err_set(err, 404, "no %s named '%s'", admin_kinds[k].name,
		              admin_q(q, sizeof(q), name));
		return ret;
	}
	if (ret < 0)
		return admin_store_err(st, err, ret);
	o = admin_present(r.body, name, r.id, r.version);
	json_object_put(r.body);
	ret = admin_emit(o, out, err);
	json_object_put(o);
	return ret;
}

struct admin_list_ctx {
	struct json_object *items;
	struct json_tokener *tok; /* one for the whole list: no allocation per row */
	bool present;
	int err;
};

static int admin_list_fn(void *arg, const struct store_val *cols, size_t ncols)
{
	struct admin_list_ctx *c = arg;
	struct json_object *body, *o;

	if (ncols != 4 || cols[0].type != STORE_T_TEXT || cols[1].type != STORE_T_INT ||
	    cols[2].type != STORE_T_INT || cols[3].type != STORE_T_TEXT)
		return -EIO;
	if (cols[3].len > INT_MAX)
		return -EIO;
	json_tokener_reset(c->tok);
	body = json_tokener_parse_ex(c->tok, (const char *)cols[3].p, (int)cols[3].len);
	if (!body || json_tokener_get_error(c->tok) != json_tokener_success ||
	    !json_object_is_type(body, json_type_object)) {
		json_object_put(body);
		return -EIO;
	}
	if (c->present) {
		o = admin_present(body, (const char *)cols[0].p, cols[1].i, cols[2].i);
		json_object_put(body);
	} else {
		/* For the compiler: the stored body itself, without copying it. */
		o = body;
		if (json_object_object_add(o, "name",
		                           json_object_new_string((const char *)cols[0].p)) ||
		    json_object_object_add(o, "id", json_object_new_int64(cols[1].i)) ||
		    json_object_object_add(o, "version", json_object_new_int64(cols[2].i))) {
			json_object_put(o);
			return -ENOMEM;
		}
	}
	if (!o || json_object_array_add(c->items, o) < 0) {
		json_object_put(o);
		return -ENOMEM;
	}
	return 0;
}

static int admin_priority_cmp(const void *a, const void *b)
{
	struct json_object *x = *(struct json_object *const *)a,
			   *y = *(struct json_object *const *)b;
	struct json_object *px, *py, *nx, *ny;
	int64_t ix, iy;

	json_object_object_get_ex(x, "priority", &px);
	json_object_object_get_ex(y, "priority", &py);
	ix = json_object_get_int64(px);
	iy = json_object_get_int64(py);
	if (ix != iy)
		return ix < iy ? -1 : 1;
	json_object_object_get_ex(x, "name", &nx);
	json_object_object_get_ex(y, "name", &ny);
	return strcmp(json_object_get_string(nx), json_object_get_string(ny));
}

/* Every object of a kind as presented, by name; rules in evaluation order. */
int admin_list_json(struct store *st, const char *tenant, enum admin_kind k, bool present,
                    struct json_object **items)
{
	struct admin_list_ctx c = {
	    .items = json_object_new_array(), .tok = json_tokener_new(), .present = present};
	int ret;

	*items = NULL;
	if (!c.items || !c.tok) {
		json_object_put(c.items);
		json_tokener_free(c.tok);
		return -ENOMEM;
	}
	ret = store_query(st,
	                  "SELECT name, id, version, body FROM admin_object "
	                  "WHERE tenant = $1 AND kind = $2 ORDER BY name",
	                  STORE_ARGS(store_text(tenant), store_text(admin_kinds[k].name)),
	                  admin_list_fn, &c);
	json_tokener_free(c.tok);
	if (ret < 0) {
		json_object_put(c.items);
		return ret;
	}
	if (k == ADMIN_K_RULE)
		json_object_array_sort(c.items, admin_priority_cmp);
	*items = c.items;
	return 0;
}

int admin_list(struct store *st, const char *tenant, enum admin_kind k, char **out,
               struct admin_err *err)
{
	struct json_object *items, *o;
	int ret;

	*out = NULL;
	if ((unsigned)k >= ADMIN_K_MAX) {
		admin_err_set(err, 400, "unknown kind");
		return -EINVAL;
	}
	ret = admin_list_json(st, tenant, k, true, &items);
	if (ret < 0)
		return admin_store_err(st, err, ret);
	o = json_object_new_object();
	if (!o) {
		json_object_put(items);
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	json_object_object_add(o, "items", items);
	ret = admin_emit(o, out, err);
	json_object_put(o);
	return ret;
}

int admin_batch(struct store *st, const char *tenant, const char *body, size_t len, char **out,
                struct admin_err *err)
{
	return admin_batch_keep(st, tenant, body, len, out, NULL, err);
}

int admin_batch_keep(struct store *st, const char *tenant, const char *body, size_t len, char **out,
                     struct admin_snapshot **keep, struct admin_err *err)
{
	struct json_object *root = NULL, *ops, *results = NULL, *o = NULL;
	size_t n;
	int ret;

	if (out)
		*out = NULL;
	ret = admin_json_parse(body, len, &root, err);
	if (ret)
		return ret;
	if (!json_object_is_type(root, json_type_object) ||
	    !json_object_object_get_ex(root, "ops", &ops) ||
	    !json_object_is_type(ops, json_type_array) || json_object_object_length(root) != 1) {
		admin_err_set(err, 400, "batch: expected {\"ops\": [...]} and nothing else");
		ret = -EINVAL;
		goto out;
	}
	n = json_object_array_length(ops);
	if (n == 0 || n > ADMIN_OPS_MAX) {
		admin_err_set(err, 400, "batch: needs 1..%d operations", ADMIN_OPS_MAX);
		ret = -EINVAL;
		goto out;
	}
	results = json_object_new_array();
	if (!results) {
		ret = -ENOMEM;
		admin_err_set(err, 500, "out of memory");
		goto out;
	}
	ret = admin_begin(st, tenant, err);
	if (ret)
		goto out;
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(ops, i), *v, *obj = NULL, *res;
		const char *ops_s = NULL, *name = NULL;
		enum admin_op_kind op;
		enum admin_kind k;
		int64_t version = 0;
		struct admin_err sub;

		if (!json_object_is_type(e, json_type_object) ||
		    !json_object_object_get_ex(e, "op", &v) ||
		    !json_object_is_type(v, json_type_string)) {
			admin_err_set(err, 400, "ops[%zu]: needs \"op\": create, update or delete",
			              i);
			ret = -EINVAL;
			break;
		}
		ops_s = json_object_get_string(v);
		if (strcmp(ops_s, "create") == 0)
			op = ADMIN_OP_CREATE;
		else if (strcmp(ops_s, "update") == 0)
			op = ADMIN_OP_UPDATE;
		else if (strcmp(ops_s, "delete") == 0)
			op = ADMIN_OP_DELETE;
		else {
			admin_err_set(err, 400, "ops[%zu]: op must be create, update or delete", i);
			ret = -EINVAL;
			break;
		}
		if (!json_object_object_get_ex(e, "kind", &v) ||
		    !json_object_is_type(v, json_type_string) ||
		    admin_kind_parse(json_object_get_string(v), &k) < 0) {
			admin_err_set(err, 400, "ops[%zu]: unknown or missing kind", i);
			ret = -EINVAL;
			break;
		}
		json_object_object_foreach(e, key, val)
		{
			if (strcmp(key, "op") && strcmp(key, "kind") && strcmp(key, "name") &&
			    strcmp(key, "version") && strcmp(key, "object")) {
				char q[80];

				admin_err_set(err, 400, "ops[%zu]: unknown field '%s'", i,
				              admin_q(q, sizeof(q), key));
				ret = -EINVAL;
				break;
			}
			(void)val;
		}
		if (ret)
			break;
		if (json_object_object_get_ex(e, "name", &v) &&
		    json_object_is_type(v, json_type_string))
			name = json_object_get_string(v);
		if (json_object_object_get_ex(e, "version", &v)) {
			if (!json_object_is_type(v, json_type_int)) {
				admin_err_set(err, 400, "ops[%zu]: version: expected an integer",
				              i);
				ret = -EINVAL;
				break;
			}
			version = json_object_get_int64(v);
		}
		json_object_object_get_ex(e, "object", &obj);
		if (op != ADMIN_OP_DELETE && !obj) {
			admin_err_set(err, 400, "ops[%zu]: needs \"object\"", i);
			ret = -EINVAL;
			break;
		}
		if (op != ADMIN_OP_CREATE && !name) {
			admin_err_set(err, 400, "ops[%zu]: needs \"name\"", i);
			ret = -EINVAL;
			break;
		}
		if (op == ADMIN_OP_UPDATE && version &&
		    json_object_is_type(obj, json_type_object) &&
		    !json_object_object_get_ex(obj, "version", NULL))
			json_object_object_add(obj, "version", json_object_new_int64(version));
		ret = admin_op(st, tenant, op, k, name, obj, version, &res, &sub);
		if (ret) {
			admin_err_set(err, sub.status, "ops[%zu]: %s", i, sub.msg);
			break;
		}
		json_object_array_add(results, res ? res : json_object_new_null());
	}
	if (!ret)
		ret = admin_finish(st, tenant, keep, err);
	if (ret) {
		store_rollback(st);
		goto out;
	}
	o = json_object_new_object();
	json_object_object_add(o, "results", json_object_get(results));
	ret = admin_emit(o, out, err);
out:
	json_object_put(o);
	json_object_put(results);
	json_object_put(root);
	return ret;
}
