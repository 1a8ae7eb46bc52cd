/* Configuration tests: values, syntax and type errors with file:line, unknown keys, formats. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"
#include "t.h"

static char tdir[64];

static void t_dir_remove(void)
{
	static const char *const names[] = {"broker.conf", "tls.conf", "big.conf"};
	char path[128];

	if (!tdir[0])
		return;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", tdir, names[i]);
		unlink(path);
	}
	rmdir(tdir);
	tdir[0] = '\0';
}

/* Writes text to tdir/name (tdir made on first use); returns the path. */
static const char *t_file(const char *name, const char *text)
{
	static char path[128];
	FILE *f;

	if (!tdir[0]) {
		snprintf(tdir, sizeof(tdir), "/tmp/mtun-conf.XXXXXX");
		if (!mkdtemp(tdir)) {
			tdir[0] = '\0';
			return NULL;
		}
	}
	snprintf(path, sizeof(path), "%s/%s", tdir, name);
	f = fopen(path, "w");
	if (!f)
		return NULL;
	fputs(text, f);
	fclose(f);
	return path;
}

static const char good_conf[] = "# a broker\n"
				"broker = {\n"
				"  listen = \"0.0.0.0:8443\";\n"
				"  workers = 4;\n"
				"  inspect = false;\n"
				"  idle = \"5m\";\n"
				"  buffer = \"64k\";\n"
				"  allow = [ \"10.0.0.0/8\", \"fd00::/8\" ];\n"
				"};\n"
				"brokers = (\n"
				"  { host = \"b1.corp.example:443\"; },\n"
				"  { host = \"[2001:db8::1]:443\"; }\n"
				");\n"
				"log_level = \"info\";\n";

static void good_file_gives_its_values(void)
{
	const char *path = t_file("broker.conf", good_conf);
	struct conf *c = conf_new();
	struct conf_hostport listen, b0, b1;
	const char *level = NULL, **allow = NULL;
	int64_t workers = 0, backlog = 128;
	uint64_t idle = 0, buffer = 0;
	bool inspect = true;
	size_t n = 0, nallow = 0;

	T_REQUIRE(path && c);
	T_EQ(conf_load_file(c, path), 0);
	T_EQ(conf_get_hostport(c, "broker.listen", CONF_REQUIRED, &listen), 0);
	T_STREQ(listen.host, "0.0.0.0");
	T_EQ(listen.port, 8443);
	T_EQ(listen.family, AF_INET);
	T_EQ(conf_get_int(c, "broker.workers", CONF_REQUIRED, 1, 64, &workers), 0);
	T_EQ(workers, 4);
	T_EQ(conf_get_int(c, "broker.backlog", CONF_OPTIONAL, 1, 4096, &backlog), 0);
	T_EQ(backlog, 128); /* absent: the default stays */
	T_EQ(conf_get_bool(c, "broker.inspect", CONF_REQUIRED, &inspect), 0);
	T_CHECK(!inspect);
	T_EQ(conf_get_duration(c, "broker.idle", CONF_REQUIRED, 1000, 86400000, &idle), 0);
	T_EQ(idle, 300000);
	T_EQ(conf_get_size(c, "broker.buffer", CONF_REQUIRED, 4096, 1 << 30, &buffer), 0);
	T_EQ(buffer, 65536);
	T_EQ(conf_get_strv(c, "broker.allow", CONF_REQUIRED, &allow, &nallow), 0);
	T_EQ(nallow, 2);
	if (nallow == 2) {
		T_STREQ(allow[0], "10.0.0.0/8");
		T_STREQ(allow[1], "fd00::/8");
	}
	free(allow);
	T_EQ(conf_get_len(c, "brokers", CONF_REQUIRED, &n), 0);
	T_EQ(n, 2);
	T_EQ(conf_get_hostport(c, "brokers.[0].host", CONF_REQUIRED, &b0), 0);
	T_EQ(conf_get_hostport(c, "brokers[1].host", CONF_REQUIRED, &b1), 0);
	T_STREQ(b0.host, "b1.corp.example");
	T_EQ(b0.family, AF_UNSPEC);
	T_STREQ(b1.host, "2001:db8::1");
	T_EQ(b1.family, AF_INET6);
	T_EQ(b1.port, 443);
	T_EQ(conf_get_str(c, "log_level", CONF_REQUIRED, &level), 0);
	T_STREQ(level, "info");
	T_EQ(conf_check_unknown(c), 0);
	conf_free(c);
	t_dir_remove();
}

static void syntax_error_names_file_and_line(void)
{
	const char *path = t_file("broker.conf", "broker = {\n  workers = 4;\n  listen = ;\n};\n");
	struct conf *c = conf_new();
	char want[160];

	T_REQUIRE(path && c);
	T_EQ(conf_load_file(c, path), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: ", path);
	T_CHECK(strncmp(conf_error(c), want, strlen(want)) == 0);
	if (strncmp(conf_error(c), want, strlen(want)) != 0)
		printf("# got: %s\n", conf_error(c));
	conf_free(c);

	/* A duplicate setting is a syntax error too, not "last one wins". */
	c = conf_new();
	T_REQUIRE(c);
	T_EQ(conf_load_string(c, "test.conf", "a = 1;\nb = 2;\na = 3;\n"), -EINVAL);
	T_CHECK(strncmp(conf_error(c), "test.conf:3: ", 13) == 0);
	conf_free(c);
	t_dir_remove();
}

static void unknown_setting_refused_with_name_and_line(void)
{
	const char *path = t_file("broker.conf", "broker = {\n"
	                                         "  workers = 4;\n"
	                                         "  listn = \"0.0.0.0:443\";\n"
	                                         "};\n"
	                                         "brokr = { workers = 2; };\n");
	struct conf *c = conf_new();
	int64_t workers = 0;
	char want[256];

	T_REQUIRE(path && c);
	T_EQ(conf_load_file(c, path), 0);
	T_EQ(conf_get_int(c, "broker.workers", CONF_REQUIRED, 1, 64, &workers), 0);
	T_EQ(conf_check_unknown(c), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: unknown setting 'listn' in 'broker'", path);
	T_STREQ(conf_error(c), want);
	conf_free(c);

	/* With the typo fixed, the misspelt group is what remains, reported as itself. */
	path = t_file("broker.conf", "broker = {\n"
	                             "  workers = 4;\n"
	                             "};\n"
	                             "brokr = { workers = 2; };\n");
	c = conf_new();
	T_REQUIRE(path && c);
	T_EQ(conf_load_file(c, path), 0);
	T_EQ(conf_get_int(c, "broker.workers", CONF_REQUIRED, 1, 64, &workers), 0);
	T_EQ(conf_check_unknown(c), -EINVAL);
	snprintf(want, sizeof(want), "%s:4: unknown setting 'brokr'", path);
	T_STREQ(conf_error(c), want);
	conf_free(c);
	t_dir_remove();
}

static void skipped_section_and_list_elements(void)
{
	struct conf *c = conf_new();
	const char *host;
	size_t n;

	T_REQUIRE(c);
	T_EQ(conf_load_string(
		 c, "b.conf",
		 "inspection = { ca = \"x\"; };\n"
		 "brokers = ( { host = \"a\"; }, { host = \"b\"; }, { host = \"c\"; } );\n"),
	     0);
	conf_skip(c, "inspection");
	T_EQ(conf_get_len(c, "brokers", CONF_REQUIRED, &n), 0);
	T_EQ(n, 3);
	T_EQ(conf_get_str(c, "brokers.[0].host", CONF_REQUIRED, &host), 0);
	T_EQ(conf_get_str(c, "brokers.[1].host", CONF_REQUIRED, &host), 0);
	/* The program read two of three: the third is not silently ignored. */
	T_EQ(conf_check_unknown(c), -EINVAL);
	T_STREQ(conf_error(c), "b.conf:2: unknown setting [2] of 'brokers'");
	T_EQ(conf_get_str(c, "brokers.[2].host", CONF_REQUIRED, &host), 0);
	T_EQ(conf_check_unknown(c), 0);
	/* Malformed paths find nothing. */
	T_CHECK(!conf_has(c, "brokers.[3].host"));
	T_CHECK(!conf_has(c, "brokers.[x]"));
	T_CHECK(!conf_has(c, "brokers."));
	T_CHECK(!conf_has(c, ""));
	T_CHECK(!conf_has(c, "inspection.ca.x"));
	T_CHECK(conf_has(c, "inspection.ca"));
	conf_free(c);
}

static void wrong_type_names_setting_and_line(void)
{
	struct conf *c = conf_new();
	const char *s;
	int64_t i;
	bool b;

	T_REQUIRE(c);
	T_EQ(conf_load_string(c, "/etc/mtun/broker.conf",
	                      "broker = {\n  workers = \"4\";\n  inspect = 1;\n  name = 7;\n"
	                      "  idle = 30;\n  listen = [ \"a:1\" ];\n};\n"),
	     0);
	T_EQ(conf_get_int(c, "broker.workers", CONF_REQUIRED, 1, 64, &i), -EINVAL);
	T_STREQ(conf_error(c), "/etc/mtun/broker.conf:2: setting 'workers' in 'broker' must be "
	                       "an integer, not a string");
	T_EQ(conf_get_bool(c, "broker.inspect", CONF_REQUIRED, &b), -EINVAL);
	T_CHECK(strstr(conf_error(c), ":3: setting 'inspect' in 'broker' must be a boolean"));
	T_EQ(conf_get_str(c, "broker.name", CONF_REQUIRED, &s), -EINVAL);
	T_CHECK(strstr(conf_error(c), ":4: setting 'name' in 'broker' must be a string"));
	T_EQ(conf_get_duration(c, "broker.idle", CONF_REQUIRED, 0, UINT64_MAX, (uint64_t[1]){0}),
	     -EINVAL);
	T_CHECK(strstr(conf_error(c), ":5: setting 'idle' in 'broker' must be a duration"));
	T_EQ(conf_get_hostport(c, "broker.listen", CONF_REQUIRED,
	                       &(struct conf_hostport){.port = 0}),
	     -EINVAL);
	T_CHECK(strstr(conf_error(c), ":6: setting 'listen' in 'broker' must be a string"));
	T_EQ(conf_get_len(c, "broker.workers", CONF_REQUIRED, (size_t[1]){0}), -EINVAL);
	conf_free(c);
}

static void out_of_range_and_missing(void)
{
	struct conf *c = conf_new();
	int64_t i = 9;
	uint64_t u = 0;
	size_t n = 1;
	const char *s = "default", *dflt[] = {"x", NULL}, **v = dflt;

	T_REQUIRE(c);
	T_EQ(conf_load_string(c, "b.conf",
	                      "workers = 0;\nbig = 9223372036854775807L;\n"
	                      "idle = \"2d\";\nbuf = \"2G\";\n"),
	     0);
	T_EQ(conf_get_int(c, "workers", CONF_REQUIRED, 1, 64, &i), -ERANGE);
	T_STREQ(conf_error(c), "b.conf:1: setting 'workers' is 0, out of range 1..64");
	T_EQ(i, 9); /* untouched on error */
	T_EQ(conf_get_int(c, "big", CONF_REQUIRED, INT64_MIN, INT64_MAX, &i), 0);
	T_CHECK(i == INT64_MAX);
	T_EQ(conf_get_duration(c, "idle", CONF_REQUIRED, 0, 3600000, &u), -ERANGE);
	T_CHECK(strstr(conf_error(c), "b.conf:3: setting 'idle': bad duration \"2d\""));
	T_EQ(conf_get_size(c, "buf", CONF_REQUIRED, 0, 1 << 30, &u), -ERANGE);
	T_EQ(conf_get_str(c, "broker.listen", CONF_REQUIRED, &s), -ENOENT);
	T_STREQ(conf_error(c), "b.conf: missing required setting 'listen' in 'broker'");
	T_EQ(conf_get_str(c, "broker.listen", CONF_OPTIONAL, &s), 0);
	T_STREQ(s, "default");
	T_EQ(conf_get_strv(c, "broker.allow", CONF_OPTIONAL, &v, &n), 0);
	T_CHECK(v == NULL && n == 0);
	T_EQ(conf_get_strv(c, "broker.allow", CONF_REQUIRED, &v, &n), -ENOENT);
	conf_free(c);
}

static void bad_value_names_setting_and_line(void)
{
	struct conf *c = conf_new();
	struct conf_hostport hp;
	struct conf_cidr cidr;

	T_REQUIRE(c);
	T_EQ(conf_load_string(
		 c, "/etc/mtun/broker.conf",
		 "broker = {\n  listen = \"host:99999\";\n  allow = \"1.2.3.4/33\";\n};\n"),
	     0);
	T_EQ(conf_get_hostport(c, "broker.listen", CONF_REQUIRED, &hp), -ERANGE);
	T_STREQ(conf_error(c), "/etc/mtun/broker.conf:2: setting 'listen' in 'broker': bad "
	                       "host:port \"host:99999\": port out of range 1-65535");
	T_EQ(conf_get_cidr(c, "broker.allow", CONF_REQUIRED, &cidr), -ERANGE);
	T_STREQ(conf_error(c), "/etc/mtun/broker.conf:3: setting 'allow' in 'broker': bad CIDR "
	                       "\"1.2.3.4/33\": prefix length over 32");
	conf_free(c);
}

static void include_is_relative_and_reported_by_file(void)
{
	const char *tls = t_file("tls.conf", "tls = {\n  cert = \"/etc/mtun/b.pem\";\n"
	                                     "  kee = \"/etc/mtun/b.key\";\n};\n");
	char tls_path[128], main_path[128], want[256];
	const char *path, *cert = NULL;
	struct conf *c = conf_new();
	char *cwd = getcwd(NULL, 0);

	T_REQUIRE(tls && c && cwd);
	snprintf(tls_path, sizeof(tls_path), "%s", tls);
	path = t_file("broker.conf", "workers = 2;\n@include \"tls.conf\"\n");
	T_REQUIRE(path);
	snprintf(main_path, sizeof(main_path), "%s", path);
	T_REQUIRE(chdir("/") == 0); /* the include must not depend on the working directory */
	T_EQ(conf_load_file(c, main_path), 0);
	T_CHECK(chdir(cwd) == 0);
	free(cwd);
	T_EQ(conf_get_str(c, "tls.cert", CONF_REQUIRED, &cert), 0);
	T_STREQ(cert, "/etc/mtun/b.pem");
	T_EQ(conf_get_int(c, "workers", CONF_REQUIRED, 1, 8, (int64_t[1]){0}), 0);
	T_EQ(conf_check_unknown(c), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: unknown setting 'kee' in 'tls'", tls_path);
	T_STREQ(conf_error(c), want);
	conf_free(c);

	/* A syntax error in the included file names that file. */
	T_REQUIRE(t_file("tls.conf", "tls = {\n  cert = ;\n};\n"));
	c = conf_new();
	T_REQUIRE(c);
	T_EQ(conf_load_file(c, main_path), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: syntax error", tls_path);
	T_STREQ(conf_error(c), want);
	conf_free(c);
	t_dir_remove();
}

static void load_refuses_missing_odd_and_huge_files(void)
{
	struct conf *c = conf_new();
	char *big;
	const char *path;

	T_REQUIRE(c);
	T_EQ(conf_load_file(c, "/nonexistent-mtun/broker.conf"), -ENOENT);
	T_CHECK(strstr(conf_error(c), "/nonexistent-mtun/broker.conf: cannot open"));
	T_EQ(conf_load_file(c, "/tmp"), -EINVAL);
	T_CHECK(strstr(conf_error(c), "not a regular file"));
	big = malloc(CONF_MAX_SIZE + 2);
	T_REQUIRE(big);
	memset(big, '#', CONF_MAX_SIZE + 1);
	big[CONF_MAX_SIZE + 1] = '\0';
	path = t_file("big.conf", big);
	T_CHECK(path && conf_load_file(c, path) == -EFBIG);
	T_EQ(conf_load_string(c, "s", big), -EFBIG);
	free(big);
	T_EQ(conf_load_string(c, "s", "a = 1;"), 0);
	T_EQ(conf_load_string(c, "s", "a = 1;"), -EALREADY);
	conf_free(c);
	t_dir_remove();
}

static void hostport_formats(void)
{
	static const struct {
		const char *in, *host;
		int port, family;
	} good[] = {
	    {"example.com:443", "example.com", 443, AF_UNSPEC},
	    {"server01.corp.example.:22", "server01.corp.example.", 22, AF_UNSPEC},
	    {"1.2.3.4:22", "1.2.3.4", 22, AF_INET},
	    {"[::1]:22", "::1", 22, AF_INET6},
	    {"[2001:db8::1]:65535", "2001:db8::1", 65535, AF_INET6},
	    {"localhost:1", "localhost", 1, AF_UNSPEC},
	};
	static const struct {
		const char *in;
		int ret;
		const char *why;
	} bad[] = {
	    {"host:99999", -ERANGE, "port out of range"},
	    {"host:0", -ERANGE, "port out of range"},
	    {"host:123456", -ERANGE, "port out of range"},
	    {"host:22x", -EINVAL, "not a number"},
	    {"host:", -EINVAL, "missing port"},
	    {"host", -EINVAL, "missing ':port'"},
	    {":22", -EINVAL, "missing host"},
	    {"::1:22", -EINVAL, "needs brackets"},
	    {"[::1]", -EINVAL, "missing ':port'"},
	    {"[::1]22", -EINVAL, "missing ':port'"},
	    {"[1.2.3.4]:22", -EINVAL, "not an IPv6"},
	    {"[::1:22", -EINVAL, "missing ']'"},
	    {"1.2.3.999:22", -EINVAL, "not an IPv4 address or a host name"},
	    {"bad host:22", -EINVAL, "not an IPv4 address or a host name"},
	    {"-bad.example:22", -EINVAL, "not an IPv4 address or a host name"},
	    {"", -EINVAL, "empty"},
	};
	struct conf_hostport hp;
	const char *why;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		why = NULL;
		T_EQ(conf_parse_hostport(good[i].in, &hp, &why), 0);
		T_STREQ(hp.host, good[i].host);
		T_EQ(hp.port, good[i].port);
		T_EQ(hp.family, good[i].family);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		T_EQ(conf_parse_hostport(bad[i].in, &hp, &why), bad[i].ret);
		T_CHECK(why && strstr(why, bad[i].why));
		if (!why || !strstr(why, bad[i].why))
			printf("# %s: %s\n", bad[i].in, why ? why : "(null)");
	}
}

static void cidr_formats(void)
{
	static const struct {
		const char *in, *addr;
		int prefix, family;
	} good[] = {
	    {"10.0.0.0/8", "10.0.0.0", 8, AF_INET},
	    {"100.64.0.0/10", "100.64.0.0", 10, AF_INET},
	    {"1.2.3.4/32", "1.2.3.4", 32, AF_INET},
	    {"1.2.3.4", "1.2.3.4", 32, AF_INET},
	    {"0.0.0.0/0", "0.0.0.0", 0, AF_INET},
	    {"fd00::/8", "fd00::", 8, AF_INET6},
	    {"::/0", "::", 0, AF_INET6},
	    {"2001:db8::1", "2001:db8::1", 128, AF_INET6},
	};
	static const struct {
		const char *in;
		int ret;
		const char *why;
	} bad[] = {
	    {"1.2.3.4/33", -ERANGE, "over 32"},
	    {"fd00::/129", -ERANGE, "over 128"},
	    {"10.0.0.1/8", -EINVAL, "host bits set (the network is 10.0.0.0/8)"},
	    {"fd00::1/8", -EINVAL, "host bits set (the network is fd00::/8)"},
	    {"1.2.3/8", -EINVAL, "not an IPv4 address"},
	    {"1.2.3.4.5/8", -EINVAL, "not an IPv4 address"},
	    {"10.0.0.0/", -EINVAL, "must be a number"},
	    {"10.0.0.0/x", -EINVAL, "must be a number"},
	    {"10.0.0.0/-1", -EINVAL, "must be a number"},
	    {"fd00::zz/8", -EINVAL, "not an IPv6 address"},
	    {"/8", -EINVAL, "not an IP address"},
	    {"", -EINVAL, "empty"},
	};
	struct conf_cidr cidr;
	char txt[INET6_ADDRSTRLEN];
	const char *why;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		T_EQ(conf_parse_cidr(good[i].in, &cidr, &why), 0);
		T_EQ(cidr.family, good[i].family);
		T_EQ(cidr.prefix, good[i].prefix);
		T_CHECK(inet_ntop(cidr.family, &cidr.addr, txt, sizeof(txt)));
		T_STREQ(txt, good[i].addr);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		T_EQ(conf_parse_cidr(bad[i].in, &cidr, &why), bad[i].ret);
		T_CHECK(why && strstr(why, bad[i].why));
		if (!why || !strstr(why, bad[i].why))
			printf("# %s: %s\n", bad[i].in, why ? why : "(null)");
	}
}

static void duration_formats(void)
{
	static const struct {
		const char *in;
		uint64_t ms;
	} good[] = {
	    {"250ms", 250},    {"30s", 30000}, {"5m", 300000}, {"1h", 3600000},
	    {"2d", 172800000}, {"0s", 0},      {"0ms", 0},
	};
	static const struct {
		const char *in;
		int ret;
		const char *why;
	} bad[] = {
	    {"10x", -EINVAL, "unknown unit"},
	    {"10sec", -EINVAL, "unknown unit"},
	    {"30", -EINVAL, "missing unit"},
	    {"1.5h", -EINVAL, "whole number"},
	    {"-5s", -EINVAL, "whole number"},
	    {"s", -EINVAL, "whole number"},
	    {" 5s", -EINVAL, "whole number"},
	    {"99999999999999999999s", -ERANGE, "too large"},
	    {"999999999999999999d", -ERANGE, "too long"},
	    {"", -EINVAL, "empty"},
	};
	const char *why;
	uint64_t ms;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ms = 1;
		T_EQ(conf_parse_duration(good[i].in, &ms, &why), 0);
		T_CHECK(ms == good[i].ms);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		T_EQ(conf_parse_duration(bad[i].in, &ms, &why), bad[i].ret);
		T_CHECK(why && strstr(why, bad[i].why));
		if (!why || !strstr(why, bad[i].why))
			printf("# %s: %s\n", bad[i].in, why ? why : "(null)");
	}
}

static void size_formats(void)
{
	static const struct {
		const char *in;
		uint64_t bytes;
	} good[] = {
	    {"512", 512},          {"64k", 65536},           {"64K", 65536}, {"16M", 16777216},
	    {"1G", 1073741824ULL}, {"2T", 2199023255552ULL}, {"0", 0},
	};
	static const struct {
		const char *in;
		int ret;
		const char *why;
	} bad[] = {
	    {"10x", -EINVAL, "unknown unit"},
	    {"16MB", -EINVAL, "unknown unit"},
	    {"k", -EINVAL, "whole number"},
	    {"-1", -EINVAL, "whole number"},
	    {"1.5M", -EINVAL, "whole number"},
	    {"99999999T", -ERANGE, "too large"},
	    {"", -EINVAL, "empty"},
	};
	struct conf *c = conf_new();
	const char *why;
	uint64_t n;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		n = 1;
		T_EQ(conf_parse_size(good[i].in, &n, &why), 0);
		T_CHECK(n == good[i].bytes);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		T_EQ(conf_parse_size(bad[i].in, &n, &why), bad[i].ret);
		T_CHECK(why && strstr(why, bad[i].why));
		if (!why || !strstr(why, bad[i].why))
			printf("# %s: %s\n", bad[i].in, why ? why : "(null)");
	}
	/* In a file, a size may also be a plain number of bytes; never negative. */
	T_REQUIRE(c);
	T_EQ(conf_load_string(c, "s.conf", "a = 4096;\nb = -1;\nc = true;\n"), 0);
	T_EQ(conf_get_size(c, "a", CONF_REQUIRED, 0, UINT64_MAX, &n), 0);
	T_EQ(n, 4096);
	T_EQ(conf_get_size(c, "b", CONF_REQUIRED, 0, UINT64_MAX, &n), -ERANGE);
	T_EQ(conf_get_size(c, "c", CONF_REQUIRED, 0, UINT64_MAX, &n), -EINVAL);
	conf_free(c);
}

int main(void)
{
	log_init("test_conf", LOG_LVL_ERR);
	T_RUN(good_file_gives_its_values);
	T_RUN(syntax_error_names_file_and_line);
	T_RUN(unknown_setting_refused_with_name_and_line);
	T_RUN(skipped_section_and_list_elements);
	T_RUN(wrong_type_names_setting_and_line);
	T_RUN(out_of_range_and_missing);
	T_RUN(bad_value_names_setting_and_line);
	T_RUN(include_is_relative_and_reported_by_file);
	T_RUN(load_refuses_missing_odd_and_huge_files);
	T_RUN(hostport_formats);
	T_RUN(cidr_formats);
	T_RUN(duration_formats);
	T_RUN(size_formats);
	t_dir_remove();
	return t_done();
}
