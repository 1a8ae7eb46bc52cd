/* The admin API's JSON input: duplicate keys (json-c would keep the last) are refused. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "admin/admin_int.h"
#include "log.h"
#include "t.h"

/* admin_check's answer for a group object: 0, or the message of the 400. */
static const char *check_group(const char *json)
{
	static struct admin_err err;

	memset(&err, 0, sizeof(err));
	if (admin_check(ADMIN_K_GROUP, json, strlen(json), &err) == 0)
		return "";
	return err.status == 400 ? err.msg : "(not a 400)";
}

static void test_duplicate_keys_refused(void)
{
	T_STREQ(check_group("{\"name\":\"eng\",\"name\":\"ops\"}"),
	        "duplicate key 'name' in object");
	T_STREQ(check_group("{\"name\":\"eng\",\"description\":\"a\",\"description\":\"b\"}"),
	        "duplicate key 'description' in object");
	/* Equal once the escapes are decoded, as json-c compares them. */
	T_STREQ(check_group("{\"name\":\"eng\",\"n\\u0061me\":\"ops\"}"),
	        "duplicate key 'name' in object");
	T_STREQ(check_group("{\"name\":\"eng\",\"\\ud83d\\ude00\":1,\"\xf0\x9f\x98\x80\":2}"),
	        "duplicate key '?"
	        "?"
	        "?"
	        "?' in object");
	T_STREQ(check_group("{\"name\":\"eng\",\"a\\\"b\":1,\"a\\u0022b\":2}"),
	        "duplicate key 'a\"b' in object");
	/* Nested objects are checked too (a batch's ops, a location). */
	T_STREQ(check_group("{\"name\":\"eng\",\"x\":[{\"k\":1},{\"k\":1,\"k\":2}]}"),
	        "duplicate key 'k' in object");
}

static void test_equal_keys_elsewhere_accepted(void)
{
	/* The same key in sibling or nested objects, as a value, or inside strings: fine.
	 * (The unknown field is then refused by the schema, not as a duplicate.) */
	T_STREQ(check_group("{\"name\":\"name\"}"), "");
	T_STREQ(check_group("{\"name\":\"eng\",\"description\":\"}{\\\"name\\\":1,\"}"), "");
	T_STREQ(check_group("{\"description\":\"name\",\"name\":\"eng\"}"), "");
	T_CHECK(strstr(check_group("{\"name\":\"eng\",\"x\":{\"name\":1,\"y\":{\"name\":2}}}"),
	               "duplicate") == NULL);
	T_CHECK(strstr(check_group("{\"name\":\"eng\",\"x\":[{\"k\":1},{\"k\":1}]}"),
	               "duplicate") == NULL);
	T_CHECK(strstr(check_group("{\"name\":\"eng\",\"ab\":1,\"a\":2,\"a\\\\b\":3}"),
	               "duplicate") == NULL);
}

static void test_key_count(void)
{
	const char *j = "{\"a\":{\"b\":[{\"c\":1,\"d\":\"{\\\"e\\\":1}\"}],\"f\":\"g\"},\"h\":[]}";
	char dup[80] = "";
	size_t n = 0;

	T_EQ(admin_json_dup_key(j, strlen(j), dup, sizeof(dup), &n), 0);
	T_EQ(n, 6); /* a b c d f h */
	j = "{\"a\":1,\"b\":{\"a\":1,\"a\":2}}";
	T_EQ(admin_json_dup_key(j, strlen(j), dup, sizeof(dup), &n), -EEXIST);
	T_STREQ(dup, "a");
}

int main(void)
{
	log_init("test_admin_json", LOG_LVL_WARN);
	T_RUN(test_duplicate_keys_refused);
	T_RUN(test_equal_keys_elsewhere_accepted);
	T_RUN(test_key_count);
	return t_done();
}
