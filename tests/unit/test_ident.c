/* Tests for lib/ident.c: the identity URI both ways, and refusal of every malformed form. */
#include <errno.h>

#include "lib/ident.h"
#include "t.h"

static void round_trip_agent(void)
{
	struct ident a = {.tenant = "acme",
	                  .role = MT_ROLE_AGENT,
	                  .id = "laptop-7",
	                  .user = "alice@acme.example",
	                  .has_device = true},
		     b;
	char uri[IDENT_URI_MAX];
	const char *why = NULL;

	for (int i = 0; i < IDENT_DEVICE_LEN; i++)
		a.device[i] = (uint8_t)(i * 7);
	T_REQUIRE(ident_format(&a, uri, sizeof(uri)) == 0);
	T_CHECK(strncmp(uri, "mtun://acme/agent/laptop-7?user=alice@acme.example&device=0007",
	                62) == 0);
	T_REQUIRE(ident_parse(uri, strlen(uri), &b, &why) == 0);
	T_STREQ(b.tenant, "acme");
	T_EQ(b.role, MT_ROLE_AGENT);
	T_STREQ(b.id, "laptop-7");
	T_STREQ(b.user, "alice@acme.example");
	T_CHECK(b.has_device && memcmp(a.device, b.device, IDENT_DEVICE_LEN) == 0);
}

static void round_trip_connector(void)
{
	struct ident a = {.tenant = "t-1", .role = MT_ROLE_CONNECTOR, .id = "conn.A_1"}, b;
	char uri[IDENT_URI_MAX];

	T_REQUIRE(ident_format(&a, uri, sizeof(uri)) == 0);
	T_STREQ(uri, "mtun://t-1/connector/conn.A_1");
	T_REQUIRE(ident_parse(uri, strlen(uri), &b, NULL) == 0);
	T_EQ(b.role, MT_ROLE_CONNECTOR);
	T_CHECK(!b.has_device && b.user[0] == '\0');
}

static void rejects_malformed(void)
{
	static const char *const bad[] = {
	    "",
	    "http://acme/agent/x",
	    "mtun://Acme/broker/x",     /* uppercase tenant */
	    "mtun://-acme/broker/x",    /* leading hyphen */
	    "mtun://acme/wizard/x",     /* unknown role */
	    "mtun://acme/broker/",      /* empty id */
	    "mtun://acme/broker/x/y",   /* extra segment */
	    "mtun://acme/broker/a%20b", /* percent-encoding refused */
	    "mtun://acme/agent/x",      /* agent without user/device */
	    "mtun://acme/agent/x?user=al ice&device=00",
	    "mtun://acme/agent/x?user=a&device=0011", /* short device */
	    "mtun://acme/broker/x?colour=blue",
	    "mtun://acme/connector/c?user=alice", /* user on a non-agent (found by fuzzing) */
	    "mtun://acme/broker/x?user",
	    "mtun://acme",
	};
	struct ident id;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *why = NULL;
		int rc = ident_parse(bad[i], strlen(bad[i]), &id, &why);
		if (rc != -EINVAL || why == NULL)
			t_fail(__FILE__, __LINE__, "accepted or no reason: \"%s\"", bad[i]);
	}
}

static void length_bounds_not_nul(void)
{
	const char *uri = "mtun://acme/broker/b1TRAILING";
	struct ident id;

	/* The length argument, not a NUL, ends the URI (SAN values are not NUL-terminated). */
	T_REQUIRE(ident_parse(uri, strlen("mtun://acme/broker/b1"), &id, NULL) == 0);
	T_STREQ(id.id, "b1");
}

static void format_refuses_invalid(void)
{
	struct ident a = {.tenant = "UPPER", .role = MT_ROLE_BROKER, .id = "b"};
	char small[8];

	T_EQ(ident_format(&a, small, sizeof(small)), -EINVAL);
	strcpy(a.tenant, "acme");
	T_EQ(ident_format(&a, small, sizeof(small)), -ENOSPC);
}

int main(void)
{
	T_RUN(round_trip_agent);
	T_RUN(round_trip_connector);
	T_RUN(rejects_malformed);
	T_RUN(length_bounds_not_nul);
	T_RUN(format_refuses_invalid);
	return t_done();
}
