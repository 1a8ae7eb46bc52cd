/* Component identity <-> the mtun:// URI in a certificate's subjectAltName. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ident.h"

static const char *const role_names[MT_ROLE_MAX] = {
    [MT_ROLE_NONE] = "none",
    [MT_ROLE_AGENT] = "agent",
    [MT_ROLE_CONNECTOR] = "connector",
    [MT_ROLE_BROKER] = "broker",
    [MT_ROLE_INSPECTOR] = "inspector",
    [MT_ROLE_ADMIN] = "admin",
    [MT_ROLE_CA] = "ca",
};

const char *ident_role_name(enum mt_role role)
{
	return role > MT_ROLE_NONE && role < MT_ROLE_MAX ? role_names[role] : "none";
}

enum mt_role ident_role_parse(const char *name)
{
	for (int r = MT_ROLE_NONE + 1; r < MT_ROLE_MAX; r++)
		if (strcmp(name, role_names[r]) == 0)
			return (enum mt_role)r;
	return MT_ROLE_NONE;
}

static bool in_set(const char *s, size_t len, size_t max, const char *extra)
{
	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			continue;
		if (extra == NULL) /* tenant: lowercase only */
			return false;
		if ((c >= 'A' && c <= 'Z') || (c && strchr(extra, c)))
			continue;
		return false;
	}
	return true;
}

static bool tenant_ok(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return len > 0 && len <= IDENT_TENANT_MAX && s[0] != '-' && s[len - 1] != '-';
}

bool ident_valid_tenant(const char *s)
{
	return tenant_ok(s, strlen(s));
}

bool ident_valid_id(const char *s)
{
	return in_set(s, strlen(s), IDENT_ID_MAX, "._-");
}

bool ident_valid_user(const char *s)
{
	return in_set(s, strlen(s), IDENT_USER_MAX, "._@+-");
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Takes the next segment of [*p, end) up to any byte of stops; returns its length. */
static size_t take(const char **p, const char *end, const char *stops)
{
	const char *s = *p;

	while (*p < end && !strchr(stops, **p))
		(*p)++;
	return (size_t)(*p - s);
}

#define FAIL(msg)                                                                                  \
	do {                                                                                       \
		if (why)                                                                           \
			*why = (msg);                                                              \
		return -EINVAL;                                                                    \
	} while (0)

static int parse_query(const char *p, const char *end, struct ident *out, const char **why)
{
	bool seen_user = false;

	while (p < end) {
		const char *k = p, *v;
		size_t klen = take(&p, end, "=&"), vlen;

		if (p >= end || *p != '=')
			FAIL("query parameter without a value");
		p++;
		v = p;
		vlen = take(&p, end, "&");
		if (p < end)
			p++; /* '&' */
		if (klen == 4 && memcmp(k, "user", 4) == 0) {
			if (seen_user || !in_set(v, vlen, IDENT_USER_MAX, "._@+-"))
				FAIL("bad or repeated user");
			memcpy(out->user, v, vlen);
			out->user[vlen] = '\0';
			seen_user = true;
		} else if (klen == 6 && memcmp(k, "device", 6) == 0) {
			if (out->has_device || vlen != 2 * IDENT_DEVICE_LEN)
				FAIL("bad or repeated device");
			for (size_t i = 0; i < IDENT_DEVICE_LEN; i++) {
				int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
				if (hi < 0 || lo < 0)
					FAIL("device is not lowercase hex");
				out->device[i] = (uint8_t)(hi << 4 | lo);
			}
			out->has_device = true;
		} else {
			FAIL("unknown query parameter");
		}
	}
	if (out->role == MT_ROLE_AGENT && (!seen_user || !out->has_device))
		FAIL("agent identity without user and device");
	return 0;
}

int ident_parse(const char *uri, size_t len, struct ident *out, const char **why)
{
	const char *p = uri, *end = uri + len, *seg;
	char role[16];
	size_t n;

	memset(out, 0, sizeof(*out));
	if (len < 7 || memcmp(p, "mtun://", 7) != 0)
		FAIL("not an mtun:// URI");
	p += 7;
	seg = p;
	n = take(&p, end, "/?");
	if (!tenant_ok(seg, n) || p >= end || *p != '/')
		FAIL("bad tenant");
	memcpy(out->tenant, seg, n);
	p++;
	seg = p;
	n = take(&p, end, "/?");
	if (n == 0 || n >= sizeof(role) || p >= end || *p != '/')
		FAIL("bad role");
	memcpy(role, seg, n);
	role[n] = '\0';
	out->role = ident_role_parse(role);
	if (out->role == MT_ROLE_NONE)
		FAIL("unknown role");
	p++;
	seg = p;
	n = take(&p, end, "/?");
	if (!in_set(seg, n, IDENT_ID_MAX, "._-"))
		FAIL("bad component id");
	memcpy(out->id, seg, n);
	if (p < end && *p == '/')
		FAIL("extra path segment");
	if (p < end) { /* '?' */
		if (out->role != MT_ROLE_AGENT)
			FAIL("query parameters belong to agent identities only");
		return parse_query(p + 1, end, out, why);
	}
	if (out->role == MT_ROLE_AGENT)
		FAIL("agent identity without user and device");
	return 0;
}

int ident_format(const struct ident *id, char *buf, size_t size)
{
	int n;

	if (!ident_valid_tenant(id->tenant) || !ident_valid_id(id->id) ||
	    id->role <= MT_ROLE_NONE || id->role >= MT_ROLE_MAX)
		return -EINVAL;
	if (id->role == MT_ROLE_AGENT && (!ident_valid_user(id->user) || !id->has_device))
		return -EINVAL;
	n = snprintf(buf, size, "mtun://%s/%s/%s", id->tenant, ident_role_name(id->role), id->id);
	if (n < 0 || (size_t)n >= size)
		return -ENOSPC;
	if (id->role != MT_ROLE_AGENT)
		return 0;
	n += snprintf(buf + n, size - (size_t)n, "?user=%s&device=", id->user);
	for (size_t i = 0; i < IDENT_DEVICE_LEN && (size_t)n < size; i++)
		n += snprintf(buf + n, size - (size_t)n, "%02x", id->device[i]);
	return (size_t)n < size ? 0 : -ENOSPC;
}
