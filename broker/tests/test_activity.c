/* Tests for broker/activity.c: records as JSON lines in a file and at a TCP collector. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "activity.h"
#include "log.h"
#include "t.h"

static char dir[] = "/tmp/mtun-test-activity-XXXXXX";

static const struct activity_rec rec_alice = {
    .tenant = "acme",
    .user = "alice",
    .device = "laptop-1",
    .app = "ssh.corp.example",
    .port = 22,
    .proto = 6,
    .connector = "conn-a",
    .broker = "broker-1",
    .bytes_up = 1234,
    .bytes_down = 5678901234ULL,
    .start_ms = 1795489294123ULL, /* 2026-11-24T03:01:34.123Z */
    .end_ms = 1795489296000ULL,
    .status = "ok",
    .reason = "closed by agent",
    .rule_id = 7,
    .rule = "eng-ssh",
    .segment = "corp",
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads a whole small file into buf; its length or -1. */
static ssize_t slurp(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return -1;
	n = fread(buf, 1, size - 1, f);
	buf[n] = '\0';
	fclose(f);
	return (ssize_t)n;
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static long long jint(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return -1;
	return (long long)json_object_get_uint64(v);
}

/* Parses exactly one JSON object from line (no more, no less). */
static json_object *parse_line(const char *line, size_t len)
{
	struct json_tokener *tok = json_tokener_new();
	json_object *o;

	o = json_tokener_parse_ex(tok, line, (int)len);
	if (o && json_tokener_get_error(tok) == json_tokener_success &&
	    (size_t)json_tokener_get_parse_end(tok) != len) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

static void check_alice(json_object *o)
{
	T_STREQ(jstr(o, "tenant"), "acme");
	T_STREQ(jstr(o, "user"), "alice");
	T_STREQ(jstr(o, "device"), "laptop-1");
	T_STREQ(jstr(o, "app"), "ssh.corp.example");
	T_EQ(jint(o, "port"), 22);
	T_STREQ(jstr(o, "proto"), "tcp");
	T_STREQ(jstr(o, "connector"), "conn-a");
	T_STREQ(jstr(o, "broker"), "broker-1");
	T_EQ(jint(o, "bytes_up"), 1234);
	T_EQ(jint(o, "bytes_down"), 5678901234LL);
	T_STREQ(jstr(o, "start"), "2026-11-24T03:01:34.123Z");
	T_STREQ(jstr(o, "end"), "2026-11-24T03:01:36.000Z");
	T_EQ(jint(o, "duration_ms"), 1877);
	T_STREQ(jstr(o, "status"), "ok");
	T_STREQ(jstr(o, "reason"), "closed by agent");
	T_EQ(jint(o, "rule_id"), 7);
	T_STREQ(jstr(o, "rule"), "eng-ssh");
	T_STREQ(jstr(o, "segment"), "corp");
	T_EQ(json_object_object_length(o), 18);
}

static void test_file_sink(void)
{
	char path[128], spec[160], buf[8192], *nl;
	struct activity_rec refused = {.tenant = "acme",
	                               .user = "bob",
	                               .app = "10.1.2.3",
	                               .port = 53,
	                               .proto = 17,
	                               .status = "denied",
	                               .reason = "no rule allows",
	                               .start_ms = 1795489294123ULL,
	                               .end_ms = 1795489294123ULL};
	struct activity *a = NULL;
	struct stat st;
	json_object *o;

	snprintf(path, sizeof(path), "%s/file.jsonl", dir);
	snprintf(spec, sizeof(spec), "file:%s", path);
	T_REQUIRE(activity_open(spec, &a) == 0);
	activity_write(a, &rec_alice);
	activity_write(a, &refused);
	activity_close(a);

	T_REQUIRE(stat(path, &st) == 0);
	T_EQ(st.st_mode & 0777, 0640);
	T_REQUIRE(slurp(path, buf, sizeof(buf)) > 0);
	nl = strchr(buf, '\n');
	T_REQUIRE(nl);
	o = parse_line(buf, (size_t)(nl - buf));
	T_REQUIRE(o);
	check_alice(o);
	json_object_put(o);

	o = parse_line(nl + 1, strlen(nl + 1) - 1);
	T_REQUIRE(o);
	T_STREQ(jstr(o, "user"), "bob");
	T_STREQ(jstr(o, "proto"), "udp");
	T_STREQ(jstr(o, "connector"), "");
	T_STREQ(jstr(o, "device"), ""); /* NULL in the record */
	T_STREQ(jstr(o, "rule"), "");
	T_EQ(jint(o, "rule_id"), 0);
	T_EQ(jint(o, "bytes_up"), 0);
	T_EQ(jint(o, "duration_ms"), 0);
	T_STREQ(jstr(o, "status"), "denied");
	json_object_put(o);
	T_CHECK(strchr(nl + 1, '\n') == buf + strlen(buf) - 1);
}

static void test_odd_names_escaped(void)
{
	char buf[ACTIVITY_LINE_MAX], longname[1000];
	struct activity_rec r = rec_alice;
	json_object *o;
	int len;

	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	r.user = "al\"ice\\\n\t\x01}{\"x\":1";
	r.app = "caf\xc3\xa9.\xff\xfe.example/path";
	r.reason = "\xe2\x82"; /* a cut sequence */
	r.rule = longname;
	len = activity_format(&r, buf, sizeof(buf));
	T_REQUIRE(len > 0);
	T_EQ(buf[len - 1], '\n');
	T_EQ(strchr(buf, '\n') - buf, len - 1); /* one line whatever the names hold */
	T_CHECK(strstr(buf, "example/path"));   /* no escaped slashes */
	o = parse_line(buf, (size_t)len - 1);
	T_REQUIRE(o);
	T_STREQ(jstr(o, "user"), "al\"ice\\\n\t\x01}{\"x\":1");
	T_STREQ(jstr(o, "app"), "caf\xc3\xa9.\xef\xbf\xbd\xef\xbf\xbd.example/path");
	T_STREQ(jstr(o, "reason"), "\xef\xbf\xbd\xef\xbf\xbd");
	T_EQ(strlen(jstr(o, "rule")), ACTIVITY_FIELD_MAX);
	T_EQ(json_object_object_length(o), 18);
	json_object_put(o);

	T_EQ(activity_format(&r, buf, 64), -ENOSPC);
}

static void test_reopen_after_rotate(void)
{
	char path[128], rotated[128], spec[160], buf[8192];
	struct activity *a = NULL;
	struct activity_rec r = rec_alice;

	snprintf(path, sizeof(path), "%s/rot.jsonl", dir);
	snprintf(rotated, sizeof(rotated), "%s/rot.jsonl.1", dir);
	snprintf(spec, sizeof(spec), "file:%s", path);
	T_REQUIRE(activity_open(spec, &a) == 0);
	activity_write(a, &r);
	T_REQUIRE(rename(path, rotated) == 0);
	r.user = "carol";
	activity_write(a, &r); /* still the old file until reopened */
	T_EQ(activity_reopen(a), 0);
	r.user = "dave";
	activity_write(a, &r);
	activity_close(a);

	T_REQUIRE(slurp(rotated, buf, sizeof(buf)) > 0);
	T_CHECK(strstr(buf, "\"alice\"") && strstr(buf, "\"carol\"") && !strstr(buf, "dave"));
	T_REQUIRE(slurp(path, buf, sizeof(buf)) > 0);
	T_CHECK(strstr(buf, "\"dave\"") && !strstr(buf, "alice"));
}

static void test_file_write_error_counted(void)
{
	struct activity *a = NULL;

	T_REQUIRE(activity_open("file:/dev/full", &a) == 0);
	activity_write(a, &rec_alice);
	activity_write(a, &rec_alice);
	T_EQ(activity_drops(a), 2);
	activity_close(a);
}

static void test_bad_specs(void)
{
	static const char *const bad[] = {
	    "",
	    "file:",
	    "file:relative/path",
	    "tcp:",
	    "tcp:host",
	    "tcp:host:",
	    "tcp::80",
	    "tcp:host:0",
	    "tcp:host:65536",
	    "tcp:host:12x",
	    "tcp:[::1:80",
	    "syslog:",
	    "udp:host:514",
	    "/var/log/activity",
	};
	struct activity *a = (struct activity *)&a;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = activity_open(bad[i], &a);

		if (rc != -EINVAL)
			t_fail(__FILE__, __LINE__, "\"%s\": %d", bad[i], rc);
		T_CHECK(a == NULL);
	}
	T_EQ(activity_open("file:/nonexistent-dir/x.jsonl", &a), -ENOENT);
	T_REQUIRE(activity_open("syslog", &a) == 0);
	activity_write(a, &rec_alice);
	activity_close(a);
	activity_close(NULL);
}

/* A loopback listener on an ephemeral port; its fd, the port in *port. */
static int listener(uint16_t *port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 8) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*port = ntohs(sin.sin_port);
	return fd;
}

/* Accepts within 5 s; the connection or -1. */
static int accept_wait(int lfd)
{
	struct pollfd p = {.fd = lfd, .events = POLLIN};

	if (poll(&p, 1, 5000) != 1)
		return -1;
	return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

/* Reads from fd until buf holds n lines or 5 s pass; the lines read. */
static int read_lines(int fd, char *buf, size_t size, int n)
{
	size_t off = 0;
	uint64_t until = now_ms() + 5000;
	int lines = 0;

	buf[0] = '\0';
	while (lines < n && now_ms() < until && off + 1 < size) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		ssize_t r;

		if (poll(&p, 1, 100) != 1)
			continue;
		r = read(fd, buf + off, size - 1 - off);
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			lines += buf[off + (size_t)i] == '\n';
		off += (size_t)r;
		buf[off] = '\0';
	}
	return lines;
}

static void test_tcp_sink(void)
{
	char spec[64], buf[16384], *nl;
	struct activity *a = NULL;
	struct activity_rec r = rec_alice;
	uint16_t port;
	int lfd, cfd;
	json_object *o;

	lfd = listener(&port);
	T_REQUIRE(lfd >= 0);
	snprintf(spec, sizeof(spec), "tcp:127.0.0.1:%u", port);
	T_REQUIRE(activity_open(spec, &a) == 0);
	activity_write(a, &r);
	r.user = "bob";
	activity_write(a, &r);
	r.user = "carol";
	activity_write(a, &r);
	cfd = accept_wait(lfd);
	T_CHECK(cfd >= 0);
	if (cfd >= 0) {
		T_EQ(read_lines(cfd, buf, sizeof(buf), 3), 3);
		nl = strchr(buf, '\n');
		o = nl ? parse_line(buf, (size_t)(nl - buf)) : NULL;
		T_CHECK(o);
		if (o)
			check_alice(o);
		json_object_put(o);
		T_CHECK(strstr(buf, "\"bob\"") && strstr(buf, "\"carol\""));

		/* The collector goes away; the sink reconnects and sends the next record. */
		close(cfd);
		cfd = -1;
		usleep(50 * 1000); /* lets the FIN arrive before the next record */
		r.user = "dave";
		activity_write(a, &r);
		cfd = accept_wait(lfd);
		T_CHECK(cfd >= 0);
		if (cfd >= 0) {
			T_EQ(read_lines(cfd, buf, sizeof(buf), 1), 1);
			T_CHECK(strstr(buf, "\"dave\""));
		}
	}
	T_EQ(activity_drops(a), 0);
	activity_close(a);
	if (cfd >= 0)
		close(cfd);
	close(lfd);
}

static void test_tcp_queue_full_drops(void)
{
	char spec[64];
	struct activity *a = NULL;
	uint64_t t0, took;
	uint16_t port;
	int lfd;

	/* A port nothing listens on: the writer keeps retrying, the queue fills. */
	lfd = listener(&port);
	T_REQUIRE(lfd >= 0);
	close(lfd);
	snprintf(spec, sizeof(spec), "tcp:127.0.0.1:%u", port);
	T_REQUIRE(activity_open(spec, &a) == 0);
	t0 = now_ms();
	for (int i = 0; i < ACTIVITY_QUEUE_MAX + 500; i++)
		activity_write(a, &rec_alice);
	took = now_ms() - t0;
	T_CHECK(took < 2000);
	T_EQ(activity_drops(a), 500);
	t0 = now_ms();
	activity_close(a);
	took = now_ms() - t0;
	T_CHECK(took < 3000);
}

static void test_tcp_queue_drained_at_close(void)
{
	char spec[64], buf[65536];
	struct activity *a = NULL;
	uint16_t port;
	int lfd, cfd;

	lfd = listener(&port);
	T_REQUIRE(lfd >= 0);
	snprintf(spec, sizeof(spec), "tcp:localhost:%u", port);
	T_REQUIRE(activity_open(spec, &a) == 0);
	for (int i = 0; i < 50; i++)
		activity_write(a, &rec_alice);
	activity_close(a); /* the listener's backlog takes the connection */
	cfd = accept_wait(lfd);
	T_REQUIRE(cfd >= 0);
	T_EQ(read_lines(cfd, buf, sizeof(buf), 50), 50);
	close(cfd);
	close(lfd);
}

int main(void)
{
	char cmd[128];

	log_init("test_activity", LOG_LVL_WARN);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	T_RUN(test_file_sink);
	T_RUN(test_odd_names_escaped);
	T_RUN(test_reopen_after_rotate);
	T_RUN(test_file_write_error_counted);
	T_RUN(test_bad_specs);
	T_RUN(test_tcp_sink);
	T_RUN(test_tcp_queue_full_drops);
	T_RUN(test_tcp_queue_drained_at_close);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return t_done();
}
