/*
 * Configuration files over libconfig: typed getters that remember what was read, so that
 * whatever the program never asked for can be refused as an unknown setting.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libconfig.h>

#include "conf.h"
#include "log.h"

#define CONF_NAME_MAX 128 /* one setting name */
#define CONF_PATH_MAX 512 /* a whole path, for messages */
#define CONF_QUOTE    160 /* a value quoted in a message */

struct conf {
	config_t cfg;
	bool loaded;
	char name[PATH_MAX];
	char err[PATH_MAX + 2048];
};

/* The hook of a setting the program has read points here. */
static char conf_read_mark;

static __thread char conf_why[128];

struct conf *conf_new(void)
{
	struct conf *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	config_init(&c->cfg);
	snprintf(c->name, sizeof(c->name), "<string>");
	return c;
}

void conf_free(struct conf *c)
{
	if (!c)
		return;
	config_destroy(&c->cfg);
	free(c);
}

const char *conf_error(const struct conf *c)
{
	return c ? c->err : "";
}

/* "a.b.[2].c" of a setting, for messages. */
static void conf_setting_path(const config_setting_t *s, char *buf, size_t size)
{
	const config_setting_t *chain[32];
	size_t n = 0, off = 0;

	buf[0] = '\0';
	for (; s && !config_setting_is_root(s) && n < 32; s = config_setting_parent(s))
		chain[n++] = s;
	while (n-- > 0 && off < size) {
		const char *name = config_setting_name(chain[n]);
		int w;

		if (name)
			w = snprintf(buf + off, size - off, "%s%s", off ? "." : "", name);
		else
			w = snprintf(buf + off, size - off, "%s[%d]", off ? "." : "",
			             config_setting_index(chain[n]));
		if (w < 0)
			break;
		off += (size_t)w;
	}
}

/* "'listen' in 'broker'", "'listen'", or "[2] of 'brokers'" for a setting path. */
static void conf_describe(const char *path, char *buf, size_t size)
{
	const char *dot = strrchr(path, '.');
	const char *leaf = dot ? dot + 1 : path;
	int parent = dot ? (int)(dot - path) : 0;

	if (!dot)
		snprintf(buf, size, "'%s'", leaf);
	else if (leaf[0] == '[')
		snprintf(buf, size, "%s of '%.*s'", leaf, parent, path);
	else
		snprintf(buf, size, "'%s' in '%.*s'", leaf, parent, path);
}

/* libconfig keeps an included file's name as written; name it as it was opened. */
static void conf_file_name(const struct conf *c, const char *file, char *buf, size_t size)
{
	const char *dir = config_get_include_dir(&c->cfg);

	if (file && file[0] != '/' && dir)
		snprintf(buf, size, "%s/%s", dir, file);
	else
		snprintf(buf, size, "%s", file ? file : c->name);
}

static void conf_where(const struct conf *c, const config_setting_t *s, char *buf, size_t size)
{
	unsigned line = s ? (unsigned)config_setting_source_line(s) : 0;
	char file[PATH_MAX];

	conf_file_name(c, s ? config_setting_source_file(s) : NULL, file, sizeof(file));
	if (line)
		snprintf(buf, size, "%s:%u", file, line);
	else
		snprintf(buf, size, "%s", file);
}

static int conf_fail(struct conf *c, const config_setting_t *s, int ret, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int conf_fail(struct conf *c, const config_setting_t *s, int ret, const char *fmt, ...)
{
	char where[PATH_MAX + 16], msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	conf_where(c, s, where, sizeof(where));
	snprintf(c->err, sizeof(c->err), "%s: %s", where, msg);
	log_warnx("%s", c->err);
	return ret;
}

static int conf_parse(struct conf *c, const char *text)
{
	if (c->loaded)
		return conf_fail(c, NULL, -EALREADY, "a configuration is already loaded");
	if (strlen(text) > CONF_MAX_SIZE)
		return conf_fail(c, NULL, -EFBIG, "larger than %u bytes", CONF_MAX_SIZE);
	if (config_read_string(&c->cfg, text) != CONFIG_TRUE) {
		char file[PATH_MAX];

		conf_file_name(c, config_error_file(&c->cfg), file, sizeof(file));
		snprintf(c->err, sizeof(c->err), "%s:%d: %s", file, config_error_line(&c->cfg),
		         config_error_text(&c->cfg));
		log_warnx("%s", c->err);
		return -EINVAL;
	}
	c->loaded = true;
	return 0;
}

int conf_load_string(struct conf *c, const char *name, const char *text)
{
	if (c->loaded)
		return conf_fail(c, NULL, -EALREADY, "a configuration is already loaded");
	snprintf(c->name, sizeof(c->name), "%s", name ? name : "<string>");
	return conf_parse(c, text);
}

int conf_load_file(struct conf *c, const char *path)
{
	char dir[PATH_MAX], *slash, *text = NULL;
	struct stat sb;
	size_t got;
	FILE *f;
	int ret;

	if (c->loaded)
		return conf_fail(c, NULL, -EALREADY, "a configuration is already loaded");
	snprintf(c->name, sizeof(c->name), "%s", path);
	f = fopen(path, "re");
	if (!f) {
		ret = -errno;
		return conf_fail(c, NULL, ret, "cannot open: %s", strerror(-ret));
	}
	if (fstat(fileno(f), &sb) < 0 || !S_ISREG(sb.st_mode)) {
		ret = conf_fail(c, NULL, -EINVAL, "not a regular file");
		goto out;
	}
	if (sb.st_size > (off_t)CONF_MAX_SIZE) {
		ret = conf_fail(c, NULL, -EFBIG, "larger than %u bytes", CONF_MAX_SIZE);
		goto out;
	}
	text = malloc((size_t)sb.st_size + 1);
	if (!text) {
		ret = conf_fail(c, NULL, -ENOMEM, "out of memory");
		goto out;
	}
	got = fread(text, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		ret = conf_fail(c, NULL, -EIO, "read error");
		goto out;
	}
	text[got] = '\0';
	/* @include "x.conf" is relative to the main file's directory, not to the cwd. */
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash) {
		slash[slash == dir ? 1 : 0] = '\0';
		config_set_include_dir(&c->cfg, dir);
	}
	ret = conf_parse(c, text);
out:
	free(text);
	fclose(f);
	return ret;
}

/* Walks "a.b.[2].c" (or "a.b[2].c"); NULL if any step is missing or malformed. */
static config_setting_t *conf_lookup(const struct conf *c, const char *path)
{
	config_setting_t *root, *s;
	const char *p = path;

	if (!c->loaded || !path || !*path)
		return NULL;
	root = s = config_root_setting(&c->cfg);
	while (*p) {
		if (*p == '[') {
			unsigned long i;
			char *end;

			if (!isdigit((unsigned char)p[1]))
				return NULL;
			errno = 0;
			i = strtoul(p + 1, &end, 10);
			if (errno || *end != ']' || !config_setting_is_aggregate(s) ||
			    i >= (unsigned long)config_setting_length(s))
				return NULL;
			s = config_setting_get_elem(s, (unsigned)i);
			p = end + 1;
		} else {
			size_t len = strcspn(p, ".[");
			char name[CONF_NAME_MAX];

			if (len == 0 || len >= sizeof(name) || !config_setting_is_group(s))
				return NULL;
			memcpy(name, p, len);
			name[len] = '\0';
			s = config_setting_get_member(s, name);
			p += len;
		}
		if (!s)
			return NULL;
		if (*p == '.') {
			p++;
			if (!*p)
				return NULL;
		} else if (*p && *p != '[') {
			return NULL;
		}
	}
	return s == root ? NULL : s;
}

static void conf_mark(config_setting_t *s)
{
	for (; s; s = config_setting_parent(s))
		config_setting_set_hook(s, &conf_read_mark);
}

static void conf_mark_tree(config_setting_t *s)
{
	config_setting_set_hook(s, &conf_read_mark);
	if (config_setting_is_aggregate(s))
		for (int i = 0; i < config_setting_length(s); i++)
			conf_mark_tree(config_setting_get_elem(s, (unsigned)i));
}

bool conf_has(const struct conf *c, const char *path)
{
	return conf_lookup(c, path) != NULL;
}

void conf_skip(struct conf *c, const char *path)
{
	config_setting_t *s = conf_lookup(c, path);

	if (s) {
		conf_mark(s);
		conf_mark_tree(s);
	}
}

static const char *conf_type_name(const config_setting_t *s)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_GROUP:
		return "a group";
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		return "an integer";
	case CONFIG_TYPE_FLOAT:
		return "a floating-point number";
	case CONFIG_TYPE_STRING:
		return "a string";
	case CONFIG_TYPE_BOOL:
		return "a boolean";
	case CONFIG_TYPE_ARRAY:
		return "an array";
	case CONFIG_TYPE_LIST:
		return "a list";
	}
	return "of no type";
}

/* 1: found (and marked as read); 0: optional and missing; < 0: error reported. */
static int conf_find(struct conf *c, const char *path, enum conf_need need, config_setting_t **out)
{
	char what[CONF_PATH_MAX + 64];

	*out = conf_lookup(c, path);
	if (*out) {
		conf_mark(*out);
		return 1;
	}
	if (!c->loaded)
		return conf_fail(c, NULL, -EINVAL, "no configuration loaded");
	if (need == CONF_OPTIONAL)
		return 0;
	conf_describe(path, what, sizeof(what));
	return conf_fail(c, NULL, -ENOENT, "missing required setting %s", what);
}

static int conf_wrong_type(struct conf *c, const config_setting_t *s, const char *want)
{
	char path[CONF_PATH_MAX], what[CONF_PATH_MAX + 64];

	conf_setting_path(s, path, sizeof(path));
	conf_describe(path, what, sizeof(what));
	return conf_fail(c, s, -EINVAL, "setting %s must be %s, not %s", what, want,
	                 conf_type_name(s));
}

static int conf_bad_value(struct conf *c, const config_setting_t *s, int ret, const char *kind,
                          const char *value, const char *why)
{
	char path[CONF_PATH_MAX], what[CONF_PATH_MAX + 64], q[CONF_QUOTE];

	conf_setting_path(s, path, sizeof(path));
	conf_describe(path, what, sizeof(what));
	return conf_fail(c, s, ret, "setting %s: bad %s %s: %s", what, kind,
	                 log_quote(q, sizeof(q), value), why);
}

int conf_get_str(struct conf *c, const char *path, enum conf_need need, const char **out)
{
	config_setting_t *s;
	int ret = conf_find(c, path, need, &s);

	if (ret <= 0)
		return ret;
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return conf_wrong_type(c, s, "a string");
	*out = config_setting_get_string(s);
	return 0;
}

int conf_get_int(struct conf *c, const char *path, enum conf_need need, int64_t min, int64_t max,
                 int64_t *out)
{
	char p[CONF_PATH_MAX], what[CONF_PATH_MAX + 64];
	config_setting_t *s;
	int64_t v;
	int ret = conf_find(c, path, need, &s);

	if (ret <= 0)
		return ret;
	if (config_setting_type(s) != CONFIG_TYPE_INT &&
	    config_setting_type(s) != CONFIG_TYPE_INT64)
		return conf_wrong_type(c, s, "an integer");
	v = config_setting_get_int64(s);
	if (v < min || v > max) {
		conf_setting_path(s, p, sizeof(p));
		conf_describe(p, what, sizeof(what));
		return conf_fail(c, s, -ERANGE, "setting %s is %lld, out of range %lld..%lld", what,
		                 (long long)v, (long long)min, (long long)max);
	}
	*out = v;
	return 0;
}

int conf_get_bool(struct conf *c, const char *path, enum conf_need need, bool *out)
{
	config_setting_t *s;
	int ret = conf_find(c, path, need, &s);

	if (ret <= 0)
		return ret;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL)
		return conf_wrong_type(c, s, "a boolean (true or false)");
	*out = config_setting_get_bool(s);
	return 0;
}

int conf_get_len(struct conf *c, const char *path, enum conf_need need, size_t *n)
{
	config_setting_t *s;
	int ret = conf_find(c, path, need, &s);

	if (ret < 0)
		return ret;
	if (ret == 0) {
		*n = 0;
		return 0;
	}
	if (!config_setting_is_array(s) && !config_setting_is_list(s))
		return conf_wrong_type(c, s, "a list ( ... ) or an array [ ... ]");
	*n = (size_t)config_setting_length(s);
	return 0;
}

int conf_get_strv(struct conf *c, const char *path, enum conf_need need, const char ***out,
                  size_t *n)
{
	config_setting_t *s;
	const char **v;
	size_t len;
	int ret = conf_get_len(c, path, need, &len);

	if (ret < 0)
		return ret;
	s = conf_lookup(c, path);
	if (!s) {
		*out = NULL;
		*n = 0;
		return 0;
	}
	for (size_t i = 0; i < len; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

		if (config_setting_type(e) != CONFIG_TYPE_STRING)
			return conf_wrong_type(c, e, "a string");
	}
	v = calloc(len + 1, sizeof(*v));
	if (!v)
		return conf_fail(c, s, -ENOMEM, "out of memory");
	for (size_t i = 0; i < len; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

		config_setting_set_hook(e, &conf_read_mark);
		v[i] = config_setting_get_string(e);
	}
	*out = v;
	*n = len;
	return 0;
}

static void conf_report_unknown(struct conf *c, const config_setting_t *e, int *unknown)
{
	char path[CONF_PATH_MAX], what[CONF_PATH_MAX + 64], where[PATH_MAX + 16];

	conf_setting_path(e, path, sizeof(path));
	conf_describe(path, what, sizeof(what));
	conf_where(c, e, where, sizeof(where));
	if ((*unknown)++ == 0)
		snprintf(c->err, sizeof(c->err), "%s: unknown setting %s", where, what);
	/* Every unknown setting is logged, so that one run shows all the typos. */
	log_warnx("%s: unknown setting %s", where, what);
}

/* Recursion depth is bounded by the parser's; the frame stays small. */
static void conf_check_tree(struct conf *c, const config_setting_t *s, int *unknown)
{
	for (int i = 0; i < config_setting_length(s); i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

		if (config_setting_get_hook(e) != &conf_read_mark)
			conf_report_unknown(c, e, unknown);
		else if (config_setting_is_aggregate(e))
			conf_check_tree(c, e, unknown);
	}
}

int conf_check_unknown(struct conf *c)
{
	int unknown = 0;

	if (!c->loaded)
		return conf_fail(c, NULL, -EINVAL, "no configuration loaded");
	conf_check_tree(c, config_root_setting(&c->cfg), &unknown);
	return unknown ? -EINVAL : 0;
}

/* Letters, digits, '-' and '_' in labels of 1-63; the last label not all digits. */
static bool conf_host_name_valid(const char *s, size_t len)
{
	size_t label = 0;
	bool digits = true;

	if (len == 0 || len > 253)
		return false;
	if (s[len - 1] == '.')
		len--;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || s[i] == '.') {
			if (label == 0 || label > 63 || s[i - 1] == '-')
				return false;
			if (i == len)
				break;
			label = 0;
			digits = true;
			continue;
		}
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
			return false;
		if (label == 0 && s[i] == '-')
			return false;
		if (!isdigit((unsigned char)s[i]))
			digits = false;
		label++;
	}
	return !digits;
}

static int conf_parse_port(const char *s, uint16_t *port, const char **why)
{
	unsigned long v = 0;
	size_t n = strlen(s);

	if (n == 0) {
		*why = "missing port after ':'";
		return -EINVAL;
	}
	if (strspn(s, "0123456789") != n || n > 5) {
		if (strspn(s, "0123456789") == n) {
			*why = "port out of range 1-65535";
			return -ERANGE;
		}
		*why = "port is not a number";
		return -EINVAL;
	}
	v = strtoul(s, NULL, 10);
	if (v < 1 || v > 65535) {
		*why = "port out of range 1-65535";
		return -ERANGE;
	}
	*port = (uint16_t)v;
	return 0;
}

int conf_parse_hostport(const char *s, struct conf_hostport *out, const char **why)
{
	struct in6_addr a6;
	struct in_addr a4;
	const char *colon;
	char host[sizeof(out->host)];
	size_t hlen;
	int ret;

	memset(out, 0, sizeof(*out));
	if (!s || !*s) {
		*why = "empty";
		return -EINVAL;
	}
	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close) {
			*why = "missing ']' after the IPv6 address";
			return -EINVAL;
		}
		hlen = (size_t)(close - s - 1);
		if (hlen == 0 || hlen >= INET6_ADDRSTRLEN) {
			*why = "not an IPv6 address in brackets";
			return -EINVAL;
		}
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1) {
			*why = "not an IPv6 address in brackets";
			return -EINVAL;
		}
		if (close[1] != ':') {
			*why = "missing ':port' after ']'";
			return -EINVAL;
		}
		ret = conf_parse_port(close + 2, &out->port, why);
		if (ret < 0)
			return ret;
		out->family = AF_INET6;
		memcpy(out->host, host, hlen + 1);
		return 0;
	}
	colon = strrchr(s, ':');
	if (!colon) {
		*why = "missing ':port'";
		return -EINVAL;
	}
	hlen = (size_t)(colon - s);
	if (memchr(s, ':', hlen)) {
		*why = "an IPv6 address needs brackets, as in [::1]:22";
		return -EINVAL;
	}
	if (hlen == 0) {
		*why = "missing host before ':'";
		return -EINVAL;
	}
	if (hlen >= sizeof(host)) {
		*why = "host name longer than 253";
		return -EINVAL;
	}
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, &a4) == 1) {
		out->family = AF_INET;
	} else if (conf_host_name_valid(host, hlen)) {
		out->family = AF_UNSPEC;
	} else {
		*why = "not an IPv4 address or a host name";
		return -EINVAL;
	}
	ret = conf_parse_port(colon + 1, &out->port, why);
	if (ret < 0)
		return ret;
	memcpy(out->host, host, hlen + 1);
	return 0;
}

int conf_parse_cidr(const char *s, struct conf_cidr *out, const char **why)
{
	char addr[INET6_ADDRSTRLEN];
	const char *slash;
	unsigned long prefix, max;
	uint8_t *bytes;
	size_t alen;

	memset(out, 0, sizeof(*out));
	if (!s || !*s) {
		*why = "empty";
		return -EINVAL;
	}
	slash = strchr(s, '/');
	alen = slash ? (size_t)(slash - s) : strlen(s);
	if (alen == 0 || alen >= sizeof(addr)) {
		*why = "not an IP address";
		return -EINVAL;
	}
	memcpy(addr, s, alen);
	addr[alen] = '\0';
	if (memchr(addr, ':', alen)) {
		out->family = AF_INET6;
		max = 128;
		bytes = out->addr.v6.s6_addr;
		if (inet_pton(AF_INET6, addr, &out->addr.v6) != 1) {
			*why = "not an IPv6 address";
			return -EINVAL;
		}
	} else {
		out->family = AF_INET;
		max = 32;
		bytes = (uint8_t *)&out->addr.v4.s_addr;
		if (inet_pton(AF_INET, addr, &out->addr.v4) != 1) {
			*why = "not an IPv4 address";
			return -EINVAL;
		}
	}
	prefix = max;
	if (slash) {
		const char *p = slash + 1;
		size_t n = strlen(p);

		if (n == 0 || n > 3 || strspn(p, "0123456789") != n) {
			*why = "prefix length after '/' must be a number";
			return -EINVAL;
		}
		prefix = strtoul(p, NULL, 10);
		if (prefix > max) {
			*why = max == 32 ? "prefix length over 32" : "prefix length over 128";
			return -ERANGE;
		}
	}
	out->prefix = (uint8_t)prefix;
	/* 10.0.0.1/8 is most likely a typo for one of two things: refuse, show the network. */
	for (unsigned long bit = prefix; bit < max; bit++) {
		if (bytes[bit / 8] & (0x80 >> (bit % 8))) {
			struct conf_cidr net = *out;
			uint8_t *nb = net.family == AF_INET6 ? net.addr.v6.s6_addr
			                                     : (uint8_t *)&net.addr.v4.s_addr;
			char txt[INET6_ADDRSTRLEN];

			for (unsigned long b = prefix; b < max; b++)
				nb[b / 8] &= (uint8_t) ~(0x80 >> (b % 8));
			inet_ntop(net.family, nb, txt, sizeof(txt));
			snprintf(conf_why, sizeof(conf_why),
			         "host bits set (the network is %s/%lu)", txt, prefix);
			*why = conf_why;
			return -EINVAL;
		}
	}
	return 0;
}

/* A whole number then a unit: *unit points after the digits. */
static int conf_parse_count(const char *s, uint64_t *v, const char **unit, const char **why)
{
	uint64_t n = 0;
	const char *p = s;

	if (!s || !*s) {
		*why = "empty";
		return -EINVAL;
	}
	if (!isdigit((unsigned char)*p)) {
		*why = "must start with a whole number";
		return -EINVAL;
	}
	for (; isdigit((unsigned char)*p); p++) {
		if (n > (UINT64_MAX - 9) / 10) {
			*why = "number too large";
			return -ERANGE;
		}
		n = n * 10 + (uint64_t)(*p - '0');
	}
	if (*p == '.') {
		*why = "must be a whole number (use a smaller unit)";
		return -EINVAL;
	}
	*v = n;
	*unit = p;
	return 0;
}

int conf_parse_duration(const char *s, uint64_t *ms, const char **why)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {
	    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
	};
	const char *unit;
	uint64_t n;
	int ret = conf_parse_count(s, &n, &unit, why);

	if (ret < 0)
		return ret;
	if (!*unit) {
		*why = "missing unit (ms, s, m, h, d)";
		return -EINVAL;
	}
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(unit, units[i].unit) != 0)
			continue;
		if (n > UINT64_MAX / units[i].ms) {
			*why = "duration too long";
			return -ERANGE;
		}
		*ms = n * units[i].ms;
		return 0;
	}
	*why = "unknown unit (ms, s, m, h, d)";
	return -EINVAL;
}

int conf_parse_size(const char *s, uint64_t *bytes, const char **why)
{
	const char *unit;
	unsigned shift;
	uint64_t n;
	int ret = conf_parse_count(s, &n, &unit, why);

	if (ret < 0)
		return ret;
	switch (*unit) {
	case '\0':
		shift = 0;
		break;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	case 't':
	case 'T':
		shift = 40;
		break;
	default:
		*why = "unknown unit (k, M, G, T)";
		return -EINVAL;
	}
	if (*unit && unit[1]) {
		*why = "unknown unit (k, M, G, T)";
		return -EINVAL;
	}
	if (n > (UINT64_MAX >> shift)) {
		*why = "size too large";
		return -ERANGE;
	}
	*bytes = n << shift;
	return 0;
}

/* The string setting at path, for the value parsers. */
static int conf_find_str(struct conf *c, const char *path, enum conf_need need,
                         config_setting_t **s, const char *want)
{
	int ret = conf_find(c, path, need, s);

	if (ret <= 0)
		return ret;
	if (config_setting_type(*s) != CONFIG_TYPE_STRING)
		return conf_wrong_type(c, *s, want);
	return 1;
}

int conf_get_hostport(struct conf *c, const char *path, enum conf_need need,
                      struct conf_hostport *out)
{
	struct conf_hostport hp;
	config_setting_t *s;
	const char *why, *v;
	int ret = conf_find_str(c, path, need, &s, "a string \"host:port\"");

	if (ret <= 0)
		return ret;
	v = config_setting_get_string(s);
	ret = conf_parse_hostport(v, &hp, &why);
	if (ret < 0)
		return conf_bad_value(c, s, ret, "host:port", v, why);
	*out = hp;
	return 0;
}

int conf_get_cidr(struct conf *c, const char *path, enum conf_need need, struct conf_cidr *out)
{
	struct conf_cidr cidr;
	config_setting_t *s;
	const char *why, *v;
	int ret = conf_find_str(c, path, need, &s, "a string \"address/prefix\"");

	if (ret <= 0)
		return ret;
	v = config_setting_get_string(s);
	ret = conf_parse_cidr(v, &cidr, &why);
	if (ret < 0)
		return conf_bad_value(c, s, ret, "CIDR", v, why);
	*out = cidr;
	return 0;
}

int conf_get_duration(struct conf *c, const char *path, enum conf_need need, uint64_t min_ms,
                      uint64_t max_ms, uint64_t *ms)
{
	config_setting_t *s;
	const char *why, *v;
	uint64_t d;
	int ret = conf_find_str(c, path, need, &s, "a duration string such as \"30s\"");

	if (ret <= 0)
		return ret;
	v = config_setting_get_string(s);
	ret = conf_parse_duration(v, &d, &why);
	if (ret < 0)
		return conf_bad_value(c, s, ret, "duration", v, why);
	if (d < min_ms || d > max_ms) {
		snprintf(conf_why, sizeof(conf_why), "out of range %llums..%llums",
		         (unsigned long long)min_ms, (unsigned long long)max_ms);
		return conf_bad_value(c, s, -ERANGE, "duration", v, conf_why);
	}
	*ms = d;
	return 0;
}

int conf_get_size(struct conf *c, const char *path, enum conf_need need, uint64_t min, uint64_t max,
                  uint64_t *bytes)
{
	char num[32];
	config_setting_t *s;
	const char *why, *v;
	uint64_t n;
	int ret = conf_find(c, path, need, &s);

	if (ret <= 0)
		return ret;
	if (config_setting_type(s) == CONFIG_TYPE_INT ||
	    config_setting_type(s) == CONFIG_TYPE_INT64) {
		long long i = config_setting_get_int64(s);

		snprintf(num, sizeof(num), "%lld", i);
		v = num;
		if (i < 0)
			return conf_bad_value(c, s, -ERANGE, "size", v, "negative");
		n = (uint64_t)i;
	} else if (config_setting_type(s) == CONFIG_TYPE_STRING) {
		v = config_setting_get_string(s);
		ret = conf_parse_size(v, &n, &why);
		if (ret < 0)
			return conf_bad_value(c, s, ret, "size", v, why);
	} else {
		return conf_wrong_type(c, s, "a size such as \"64k\" or a number of bytes");
	}
	if (n < min || n > max) {
		snprintf(conf_why, sizeof(conf_why), "out of range %llu..%llu bytes",
		         (unsigned long long)min, (unsigned long long)max);
		return conf_bad_value(c, s, -ERANGE, "size", v, conf_why);
	}
	*bytes = n;
	return 0;
}

int conf_listen_tcp(const char *spec, int backlog, const char *what)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
	struct addrinfo *ai = NULL;
	struct conf_hostport hp;
	const char *why;
	char port[8];
	int fd, one = 1, ret;

	if (conf_parse_hostport(spec, &hp, &why) < 0) {
		log_warnx("%s %s: %s", what, spec, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", hp.port);
	ret = getaddrinfo(hp.host, port, &hints, &ai);
	if (ret != 0) {
		log_warnx("%s %s: %s", what, spec, gai_strerror(ret));
		return -EINVAL;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
		ret = -errno;
		log_warn("%s %s", what, spec);
		if (fd >= 0)
			close(fd);
		fd = ret;
	}
	freeaddrinfo(ai);
	return fd;
}
