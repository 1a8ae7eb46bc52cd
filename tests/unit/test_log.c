/* Tests for lib/log.c: line shape, quoting, levels, errno kept. */
#include <errno.h>
#include <unistd.h>

#include "lib/log.h"
#include "t.h"

static char out[4096];

static const char *capture(void (*fn)(void))
{
	int p[2];
	ssize_t n;

	if (pipe(p) < 0)
		return "";
	log_set_fd(p[1]);
	fn();
	close(p[1]);
	n = read(p[0], out, sizeof(out) - 1);
	close(p[0]);
	out[n > 0 ? n : 0] = '\0';
	log_set_fd(STDERR_FILENO);
	return out;
}

static void emit_info(void)
{
	log_info("hello %s", "world");
}

static void emit_warn_errno(void)
{
	errno = ECONNREFUSED;
	log_warn("connect %s", "10.0.0.1");
}

static void emit_debug(void)
{
	log_debug("hidden");
}

static void emit_event(void)
{
	log_event(LOG_LVL_INFO, "mtunnel.close", "id=%u bytes_up=%llu", 7u, 1234ULL);
}

static void emit_quote(void)
{
	log_info("a \"quoted\" \\ line\nwith newline");
}

static void line_shape(void)
{
	const char *s = capture(emit_info);

	T_CHECK(strncmp(s, "ts=", 3) == 0);
	T_CHECK(strstr(s, " proc=test-log ") != NULL);
	T_CHECK(strstr(s, " level=info ") != NULL);
	T_CHECK(strstr(s, " msg=\"hello world\"\n") != NULL);
	T_EQ(strchr(s, '\n') - s + 1, (long long)strlen(s)); /* exactly one line */
}

static void warn_keeps_errno(void)
{
	const char *s = capture(emit_warn_errno);

	T_CHECK(strstr(s, "level=warn") != NULL);
	T_CHECK(strstr(s, "err=\"Connection refused\"") != NULL);
}

static void level_filters(void)
{
	log_set_level(LOG_LVL_INFO);
	T_STREQ(capture(emit_debug), "");
	log_set_level(LOG_LVL_DEBUG);
	T_CHECK(strstr(capture(emit_debug), "msg=\"hidden\"") != NULL);
	log_set_level(LOG_LVL_INFO);
}

static void event_fields(void)
{
	const char *s = capture(emit_event);

	T_CHECK(strstr(s, " event=mtunnel.close id=7 bytes_up=1234\n") != NULL);
}

static void quoting(void)
{
	const char *s = capture(emit_quote);

	T_CHECK(strstr(s, "msg=\"a \\\"quoted\\\" \\\\ line\\x0awith newline\"") != NULL);
	T_EQ(strchr(s, '\n') - s + 1, (long long)strlen(s));
}

static void parse_level(void)
{
	enum log_level l;

	T_EQ(log_parse_level("debug", &l), 0);
	T_EQ(l, LOG_LVL_DEBUG);
	T_EQ(log_parse_level("verbose", &l), -EINVAL);
}

int main(void)
{
	log_init("test-log", LOG_LVL_INFO);
	T_RUN(line_shape);
	T_RUN(warn_keeps_errno);
	T_RUN(level_filters);
	T_RUN(event_fields);
	T_RUN(quoting);
	T_RUN(parse_level);
	return t_done();
}
