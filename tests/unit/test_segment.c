/* Tests for broker/segment.c: validation, overlap, and which segment a name or address hits. */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <time.h>

#include "lib/segment.h"
#include "t.h"

static const struct seg_ports tcp_all[] = {{SEG_PROTO_TCP, 1, 65535}};
static const struct seg_ports tcp22[] = {{SEG_PROTO_TCP, 22, 22}};
static const struct seg_ports tcp_web[] = {{SEG_PROTO_TCP, 80, 80}, {SEG_PROTO_TCP, 443, 443}};
static const struct seg_ports udp53[] = {{SEG_PROTO_UDP, 53, 53}};
static const uint32_t sg1[] = {1};
static char err[SEG_ERR_MAX];

static struct segset *new_set(void)
{
	static const uint32_t cg[] = {10, 11};
	struct segset *set = segset_new("acme");

	if (set && segset_add_server_group(set, 1, cg, 2) < 0) {
		segset_free(set);
		return NULL;
	}
	return set;
}

static int add(struct segset *set, uint32_t id, const char *name, const char *const *hosts,
               size_t nhosts, const struct seg_ports *ports, size_t nports)
{
	struct segment_spec s = {.id = id,
	                         .name = name,
	                         .tenant = "acme",
	                         .hosts = hosts,
	                         .nhosts = nhosts,
	                         .ports = ports,
	                         .nports = nports,
	                         .server_groups = sg1,
	                         .nserver_groups = 1};

	err[0] = '\0';
	return segset_add(set, &s, err, sizeof(err));
}

#define ADD(set, id, name, ports, ...)                                                             \
	add(set, id, name, (const char *const[]){__VA_ARGS__},                                     \
	    sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *), ports,              \
	    sizeof(ports) / sizeof(ports[0]))

static uint32_t match_id(const struct segset *set, const char *what, uint8_t proto, uint16_t port)
{
	const struct segment *seg = segment_match(set, what, proto, port);

	return seg ? seg->id : 0;
}

static void exact_beats_wildcard(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "all-corp", tcp_all, "*.corp.example"), 0);
	T_EQ(ADD(set, 2, "server01", tcp_all, "server01.corp.example"), 0);
	T_EQ(match_id(set, "server01.corp.example", SEG_PROTO_TCP, 22), 2);
	T_EQ(match_id(set, "server02.corp.example", SEG_PROTO_TCP, 22), 1);
	segset_free(set);
}

static void longer_wildcard_wins(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "corp", tcp_all, "*.corp.example"), 0);
	T_EQ(ADD(set, 2, "lab", tcp_all, "*.lab.corp.example"), 0);
	T_EQ(match_id(set, "db.lab.corp.example", SEG_PROTO_TCP, 5432), 2);
	T_EQ(match_id(set, "x.y.lab.corp.example", SEG_PROTO_TCP, 5432), 2);
	T_EQ(match_id(set, "lab.corp.example", SEG_PROTO_TCP, 5432), 1);
	T_EQ(match_id(set, "a.b.corp.example", SEG_PROTO_TCP, 5432), 1);
	segset_free(set);
}

static void wildcard_not_bare_domain(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "corp", tcp_all, "*.corp.example"), 0);
	T_EQ(match_id(set, "corp.example", SEG_PROTO_TCP, 22), 0);
	T_EQ(match_id(set, "notcorp.example", SEG_PROTO_TCP, 22), 0);
	T_EQ(match_id(set, "xcorp.example", SEG_PROTO_TCP, 22), 0);
	T_EQ(match_id(set, "example", SEG_PROTO_TCP, 22), 0);
	T_EQ(match_id(set, "a.corp.example", SEG_PROTO_TCP, 22), 1);
	segset_free(set);
}

static void case_and_trailing_dot(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_REQUIRE(ADD(set, 1, "s", tcp_all, "Server01.Corp.Example.") == 0);
	T_STREQ(segset_find(set, 1)->hosts[0], "server01.corp.example");
	T_EQ(match_id(set, "SERVER01.corp.EXAMPLE", SEG_PROTO_TCP, 22), 1);
	T_EQ(match_id(set, "server01.corp.example.", SEG_PROTO_TCP, 22), 1);
	T_EQ(match_id(set, "server01.corp.example..", SEG_PROTO_TCP, 22), 0);
	segset_free(set);
}

static void cidr_longest_prefix(void)
{
	struct segset *set = new_set();
	unsigned char a[4];

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "net10", tcp_all, "10.0.0.0/8"), 0);
	T_EQ(ADD(set, 2, "net10-1", tcp_all, "10.1.0.0/16"), 0);
	T_REQUIRE(ADD(set, 3, "host", tcp_all, "10.1.2.3") == 0);
	T_REQUIRE(ADD(set, 4, "v6", tcp_all, "fd00:1::/32") == 0);
	T_EQ(match_id(set, "10.1.2.3", SEG_PROTO_TCP, 22), 3);
	T_EQ(match_id(set, "10.1.2.4", SEG_PROTO_TCP, 22), 2);
	T_EQ(match_id(set, "10.200.0.1", SEG_PROTO_TCP, 22), 1);
	T_EQ(match_id(set, "11.0.0.1", SEG_PROTO_TCP, 22), 0);
	T_EQ(match_id(set, "fd00:1:ffff::1", SEG_PROTO_TCP, 22), 4);
	T_EQ(match_id(set, "fd00:2::1", SEG_PROTO_TCP, 22), 0);
	T_REQUIRE(inet_pton(AF_INET, "10.1.9.9", a) == 1);
	T_REQUIRE(segment_match_addr(set, AF_INET, a, SEG_PROTO_TCP, 22));
	T_EQ(segment_match_addr(set, AF_INET, a, SEG_PROTO_TCP, 22)->id, 2);
	T_STREQ(segset_find(set, 3)->hosts[0], "10.1.2.3/32");
	T_STREQ(segset_find(set, 4)->hosts[0], "fd00:1::/32");
	segset_free(set);
}

static void zero_prefix_matches_all(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "any4", tcp22, "0.0.0.0/0"), 0);
	T_EQ(match_id(set, "192.0.2.1", SEG_PROTO_TCP, 22), 1);
	T_EQ(match_id(set, "192.0.2.1", SEG_PROTO_TCP, 23), 0);
	T_EQ(match_id(set, "2001:db8::1", SEG_PROTO_TCP, 22), 0);
	segset_free(set);
}

static void ports_and_proto(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "web", tcp_web, "intranet.corp.example"), 0);
	T_EQ(ADD(set, 2, "dns", udp53, "intranet.corp.example"), 0);
	T_EQ(match_id(set, "intranet.corp.example", SEG_PROTO_TCP, 443), 1);
	T_EQ(match_id(set, "intranet.corp.example", SEG_PROTO_TCP, 80), 1);
	T_EQ(match_id(set, "intranet.corp.example", SEG_PROTO_TCP, 81), 0);
	T_EQ(match_id(set, "intranet.corp.example", SEG_PROTO_UDP, 53), 2);
	T_EQ(match_id(set, "intranet.corp.example", SEG_PROTO_TCP, 53), 0);
	T_EQ(match_id(set, "intranet.corp.example", SEG_PROTO_UDP, 443), 0);
	segset_free(set);
}

/* An exact name whose ports do not cover the request falls back to the wildcard. */
static void specific_without_port_falls_back(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "corp", tcp_all, "*.corp.example"), 0);
	T_EQ(ADD(set, 2, "ssh", tcp22, "server01.corp.example"), 0);
	T_EQ(match_id(set, "server01.corp.example", SEG_PROTO_TCP, 22), 2);
	T_EQ(match_id(set, "server01.corp.example", SEG_PROTO_TCP, 443), 1);
	segset_free(set);
}

static void invalid_names_refused(void)
{
	static const struct {
		const char *host, *why;
	} bad[] = {
	    {"", "empty name"},
	    {".", "empty name"},
	    {"a..b", "empty label"},
	    {"-a.example", "label starts or ends with '-'"},
	    {"a-.example", "label starts or ends with '-'"},
	    {"a b.example", "invalid character in name"},
	    {"a*.example", "invalid character in name"},
	    {"*example", "a wildcard is '*.' followed by a domain"},
	    {"*.", "empty name"},
	    {"*.*.example", "invalid character in name"},
	    {"host.123", "numeric top-level label (an address?)"},
	    {"10.1.2", "invalid IPv4 address"},
	    {"10.0.0.0/33", "invalid prefix length"},
	    {"10.0.0.0/08", "invalid prefix length"},
	    {"10.0.0.0/", "invalid prefix length"},
	    {"10.1.0.0/8", "host bits set after the prefix length"},
	    {"fd00::1/64", "host bits set after the prefix length"},
	    {"fd00::/129", "invalid prefix length"},
	    {"fd00:::1", "invalid IPv6 address"},
	};
	struct segset *set = new_set();

	T_REQUIRE(set);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = ADD(set, 1, "bad", tcp_all, bad[i].host);

		if (rc != -EINVAL || !strstr(err, bad[i].why))
			t_fail(__FILE__, __LINE__, "host \"%s\": rc %d err \"%s\", want \"%s\"",
			       bad[i].host, rc, err, bad[i].why);
	}
	T_EQ(segset_count(set), 0);
	segset_free(set);
}

static void label_and_name_lengths(void)
{
	char label63[64], label64[65], name253[254], name254[255], out[SEG_NAME_MAX + 1];
	const char *why = NULL;

	memset(label63, 'a', 63);
	label63[63] = '\0';
	memset(label64, 'a', 64);
	label64[64] = '\0';
	/* 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 */
	snprintf(name253, sizeof(name253), "%s.%s.%s.%.61s", label63, label63, label63, label63);
	snprintf(name254, sizeof(name254), "%s.%s.%s.%.62s", label63, label63, label63, label63);
	T_EQ(strlen(name253), 253);
	T_EQ(segment_normalize_name(label63, out, &why), 0);
	T_EQ(segment_normalize_name(label64, out, &why), -EINVAL);
	T_STREQ(why, "label longer than 63 characters");
	T_EQ(segment_normalize_name(name253, out, &why), 0);
	T_EQ(segment_normalize_name(name254, out, &why), -EINVAL);
	T_STREQ(why, "name longer than 253 characters");
	T_EQ(segment_normalize_name("_sip._tcp.corp.example", out, &why), 0);
	T_STREQ(out, "_sip._tcp.corp.example");
}

static void spec_fields_refused(void)
{
	static const struct seg_ports zero[] = {{SEG_PROTO_TCP, 0, 10}};
	static const struct seg_ports backwards[] = {{SEG_PROTO_TCP, 100, 10}};
	static const struct seg_ports icmp[] = {{1, 1, 10}};
	static const uint32_t nosuch[] = {99};
	const char *h[] = {"a.corp.example"};
	struct segment_spec s = {.id = 1,
	                         .name = "x",
	                         .tenant = "acme",
	                         .hosts = h,
	                         .nhosts = 1,
	                         .ports = tcp_all,
	                         .nports = 1,
	                         .server_groups = nosuch,
	                         .nserver_groups = 1};
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EINVAL);
	T_CHECK(strstr(err, "unknown server group 99") != NULL);
	s.server_groups = sg1;
	s.tenant = "other";
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EINVAL);
	T_CHECK(strstr(err, "tenant") != NULL);
	s.tenant = "acme";
	s.ports = zero;
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EINVAL);
	s.ports = backwards;
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EINVAL);
	s.ports = icmp;
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EINVAL);
	T_CHECK(strstr(err, "invalid port range") != NULL);
	s.ports = tcp_all;
	s.id = 0;
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EINVAL);
	s.id = 1;
	T_EQ(segset_add(set, &s, err, sizeof(err)), 0);
	T_EQ(segset_add(set, &s, err, sizeof(err)), -EEXIST);
	T_CHECK(strstr(err, "id 1 already used") != NULL);
	T_EQ(segset_count(set), 1);
	segset_free(set);
}

static void overlap_named(void)
{
	struct segset *set = new_set();

	T_REQUIRE(set);
	T_EQ(ADD(set, 1, "ssh-servers", tcp22, "server01.corp.example", "10.9.0.0/16"), 0);
	T_EQ(ADD(set, 2, "everything", tcp_all, "SERVER01.corp.example."), -EEXIST);
	T_CHECK(strstr(err, "everything (2)") && strstr(err, "ssh-servers (1)") &&
	        strstr(err, "server01.corp.example") && strstr(err, "tcp/22"));
	T_EQ(ADD(set, 3, "net", tcp_all, "10.9.0.0/16"), -EEXIST);
	T_CHECK(strstr(err, "10.9.0.0/16") && strstr(err, "ssh-servers"));
	/* Same host, disjoint ports or another proto: fine. */
	T_EQ(ADD(set, 4, "web", tcp_web, "server01.corp.example"), 0);
	T_EQ(ADD(set, 5, "dns", udp53, "server01.corp.example"), 0);
	T_EQ(add(set, 8, "low", (const char *const[]){"server01.corp.example"}, 1,
	         (const struct seg_ports[]){{SEG_PROTO_TCP, 1, 21}}, 1),
	     0);
	/* A different prefix length is not an overlap: the longer one wins. */
	T_EQ(ADD(set, 6, "net8", tcp_all, "10.0.0.0/8"), 0);
	/* A refused segment left nothing behind. */
	T_EQ(segset_count(set), 5);
	T_CHECK(segset_find(set, 2) == NULL);
	T_EQ(match_id(set, "server01.corp.example", SEG_PROTO_TCP, 22), 1);
	T_EQ(match_id(set, "server01.corp.example", SEG_PROTO_TCP, 8080), 0);
	T_EQ(ADD(set, 7, "dup", tcp_all, "a.corp.example", "A.corp.example"), -EINVAL);
	T_CHECK(strstr(err, "listed twice") != NULL);
	segset_free(set);
}

static void connector_groups_dedup(void)
{
	static const uint32_t cg2[] = {11, 12};
	static const uint32_t sgs[] = {1, 2};
	const char *h[] = {"a.corp.example"};
	struct segment_spec s = {.id = 1,
	                         .name = "a",
	                         .tenant = "acme",
	                         .hosts = h,
	                         .nhosts = 1,
	                         .ports = tcp_all,
	                         .nports = 1,
	                         .server_groups = sgs,
	                         .nserver_groups = 2};
	struct segset *set = new_set();
	uint32_t out[8];

	T_REQUIRE(set);
	T_EQ(segset_add_server_group(set, 2, cg2, 2), 0);
	T_EQ(segset_add_server_group(set, 2, cg2, 2), -EEXIST);
	T_EQ(segset_add(set, &s, err, sizeof(err)), 0);
	T_EQ(segment_connector_groups(set, segset_find(set, 1), out, 8), 3);
	T_EQ(out[0], 10);
	T_EQ(out[1], 11);
	T_EQ(out[2], 12);
	T_EQ(segment_connector_groups(set, segset_find(set, 1), out, 2), 2);
	segset_free(set);
}

/* 10,000 segments: each kind still matches, and a lookup stays far below a millisecond. */
static void ten_thousand_segments(void)
{
	struct segset *set = new_set();
	struct timespec a, b;
	char host[64], name[32];
	double us;

	T_REQUIRE(set);
	for (int i = 0; i < 10000; i++) {
		const char *h[] = {host};

		snprintf(name, sizeof(name), "s%d", i);
		if (i % 3 == 0)
			snprintf(host, sizeof(host), "host%d.d%d.corp.example", i, i % 97);
		else if (i % 3 == 1)
			snprintf(host, sizeof(host), "*.w%d.corp.example", i);
		else
			snprintf(host, sizeof(host), "10.%d.%d.0/24", i / 256, i % 256);
		if (add(set, (uint32_t)i + 1, name, h, 1, tcp_all, 1) != 0) {
			t_fail(__FILE__, __LINE__, "add %s: %s", host, err);
			break;
		}
	}
	T_EQ(segset_count(set), 10000);
	T_EQ(match_id(set, "host9999.d8.corp.example", SEG_PROTO_TCP, 1), 10000);
	T_EQ(match_id(set, "a.b.w9997.corp.example", SEG_PROTO_TCP, 1), 9998);
	T_EQ(match_id(set, "10.39.14.77", SEG_PROTO_TCP, 1), 9999);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < 100000; i++)
		(void)segment_match(set, "x.y.w4.corp.example", SEG_PROTO_TCP, 443);
	clock_gettime(CLOCK_MONOTONIC, &b);
	us = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e3 / 1e5;
	printf("# segment_match over 10000 segments: %.3f us per lookup\n", us);
	T_CHECK(us < 50);
	segset_free(set);
}

int main(void)
{
	T_RUN(exact_beats_wildcard);
	T_RUN(longer_wildcard_wins);
	T_RUN(wildcard_not_bare_domain);
	T_RUN(case_and_trailing_dot);
	T_RUN(cidr_longest_prefix);
	T_RUN(zero_prefix_matches_all);
	T_RUN(ports_and_proto);
	T_RUN(specific_without_port_falls_back);
	T_RUN(invalid_names_refused);
	T_RUN(label_and_name_lengths);
	T_RUN(spec_fields_refused);
	T_RUN(overlap_named);
	T_RUN(connector_groups_dedup);
	T_RUN(ten_thousand_segments);
	segset_free(NULL);
	return t_done();
}
