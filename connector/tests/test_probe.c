/*
 * Unit tests for the connector's probes (connector/probe.c), on loopback only: dnsmasq on
 * 127.0.0.1 at a random port answers *.test, a bound UDP socket plays a dead DNS server.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "connector.h"
#include "log.h"
#include "t.h"

#define MS 1000000ULL

static int guard_fired, pending;
static pid_t dns_pid = -1;
static char dns_servers[64];

struct box {
	int calls;
	uint64_t at_ns;
	struct probe_result res;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void guard_cb(struct ring *ring, void *arg)
{
	guard_fired = 1;
	ring_stop(ring);
}

static void stop_cb(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

static struct ring *ring_with_guard(uint64_t ms)
{
	struct ring *ring = ring_new(256);

	guard_fired = 0;
	pending = 0;
	if (ring && ring_timer_add(ring, ms * MS, guard_cb, NULL, NULL) < 0) {
		ring_free(ring);
		return NULL;
	}
	return ring;
}

/* Runs the ring for ms more milliseconds (the guard still applies). */
static void run_for(struct ring *ring, uint64_t ms)
{
	ring_timer_add(ring, ms * MS, stop_cb, NULL, NULL);
	ring_run(ring);
}

static struct ring *cur_ring;

static void on_probe(struct probe *p, const struct probe_result *res, void *arg)
{
	struct box *b = arg;

	b->calls++;
	b->at_ns = now_ns();
	b->res = *res;
	if (--pending == 0)
		ring_stop(cur_ring);
}

static int tcp_listener(int backlog, uint16_t *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, backlog) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

static int udp_bound(uint16_t *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

/* A loopback port nobody listens on. */
static uint16_t closed_port(void)
{
	uint16_t port = 0;
	int fd = tcp_listener(1, &port);

	if (fd >= 0)
		close(fd);
	return port;
}

/* Fills a listener's accept queue so that further SYNs are dropped; returns the fillers. */
static int blackhole(uint16_t *port, int *fillers, int max, int *nfill)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int lfd = tcp_listener(0, port), n = 0;

	if (lfd < 0)
		return -1;
	a.sin_port = htons(*port);
	while (n < max) {
		struct pollfd pfd;
		int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

		if (s < 0)
			break;
		fillers[n++] = s;
		if (connect(s, (struct sockaddr *)&a, sizeof(a)) == 0)
			continue;
		pfd.fd = s;
		pfd.events = POLLOUT;
		/* A filler that does not connect within 200 ms met the full queue. */
		if (poll(&pfd, 1, 200) == 0) {
			*nfill = n;
			return lfd;
		}
	}
	while (n > 0)
		close(fillers[--n]);
	close(lfd);
	return -1;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static bool udp_port_bound(uint16_t port)
{
	char line[256], want[32];
	bool found = false;
	FILE *f = fopen("/proc/net/udp", "r");

	if (!f)
		return false;
	snprintf(want, sizeof(want), "0100007F:%04X", port);
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, want) != NULL;
	fclose(f);
	return found;
}

/* dnsmasq drops privileges, which clears a parent-death signal: a watchdog child kills it
 * when the test's end of a pipe closes, even if the test crashes. */
static void dnsmasq_watchdog(int rfd, const char *portarg)
{
	pid_t pid = fork();
	char c;

	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		close(rfd);
		dup2(null, 1);
		dup2(null, 2);
		execlp("dnsmasq", "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv",
		       "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces", portarg,
		       "--local=/test/", "--address=/app.test/127.0.0.1",
		       "--address=/dual.test/127.0.0.1", "--address=/dual.test/::1",
		       "--pid-file=", "--user=root", "--log-facility=/dev/null", (char *)NULL);
		_exit(127);
	}
	if (pid > 0) {
		while (read(rfd, &c, 1) < 0 && errno == EINTR)
			;
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
	_exit(0);
}

static int dns_pipe = -1;

static int dnsmasq_start(void)
{
	char portarg[32];
	uint16_t port;
	int fd = udp_bound(&port), i, p[2];

	if (fd < 0)
		return -1;
	close(fd);
	snprintf(portarg, sizeof(portarg), "--port=%u", port);
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	dns_pid = fork();
	if (dns_pid < 0) {
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (dns_pid == 0) {
		close(p[1]);
		dnsmasq_watchdog(p[0], portarg);
	}
	close(p[0]);
	dns_pipe = p[1];
	/* Ready once its socket is bound: poll /proc, at most 5 s. */
	for (i = 0; i < 500; i++) {
		struct timespec ts = {0, 10 * 1000000L};

		if (udp_port_bound(port)) {
			snprintf(dns_servers, sizeof(dns_servers), "127.0.0.1:%u", port);
			return 0;
		}
		if (waitpid(dns_pid, NULL, WNOHANG) == dns_pid) {
			dns_pid = -1;
			return -1;
		}
		nanosleep(&ts, NULL);
	}
	return -1;
}

static void dnsmasq_stop(void)
{
	if (dns_pipe >= 0) {
		close(dns_pipe);
		dns_pipe = -1;
	}
	if (dns_pid > 0) {
		waitpid(dns_pid, NULL, 0);
		dns_pid = -1;
	}
}

static struct prober *prober_for(struct ring *ring, const char *server, unsigned max)
{
	const char *servers[1] = {server};
	struct prober_conf conf = {.servers = servers, .nservers = 1, .max_inflight = max};

	cur_ring = ring;
	return prober_new(ring, &conf);
}

/* Frees the prober and lets the ring close the resolver's sockets, then the ring. */
static void finish(struct ring *ring, struct prober *pr)
{
	prober_free(pr);
	run_for(ring, 20);
	ring_free(ring);
}

static bool is_loopback4(const struct probe_result *r, uint16_t port)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&r->addr;

	return r->addr.ss_family == AF_INET && r->addrlen == sizeof(*sin) &&
	       sin->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(sin->sin_port) == port;
}

static void test_literal_ok(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, "127.0.0.1:1", 0);
	struct box b = {0};
	uint16_t port;
	int lfd = tcp_listener(16, &port);

	T_REQUIRE(ring && pr && lfd >= 0);
	T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 1000, on_probe, &b));
	pending = 1;
	/* Never from inside probe_start. */
	T_EQ(b.calls, 0);
	T_EQ(prober_inflight(pr), 1);
	ring_run(ring);
	T_CHECK(!guard_fired);
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_OK);
	T_CHECK(b.res.latency_us > 0 && b.res.latency_us < 1000000);
	T_CHECK(is_loopback4(&b.res, port));
	T_STREQ(b.res.reason, "");
	T_EQ(prober_inflight(pr), 0);
	close(lfd);
	finish(ring, pr);
}

static void test_name_ok(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	struct box b = {0}, d = {0};
	uint16_t port;
	int lfd = tcp_listener(16, &port);

	T_REQUIRE(ring && pr && lfd >= 0);
	T_REQUIRE(probe_start(pr, "app.test", port, MT_PROTO_TCP, 2000, on_probe, &b));
	/* ::1 and 127.0.0.1 (::1 first), a listener on 127.0.0.1 only: falls over to it. */
	T_REQUIRE(probe_start(pr, "dual.test", port, MT_PROTO_TCP, 2000, on_probe, &d));
	pending = 2;
	ring_run(ring);
	T_CHECK(!guard_fired);
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_OK);
	T_CHECK(b.res.latency_us > 0);
	T_CHECK(is_loopback4(&b.res, port));
	T_EQ(d.calls, 1);
	T_EQ(d.res.status, MT_STATUS_OK);
	T_CHECK(is_loopback4(&d.res, port));
	close(lfd);
	finish(ring, pr);
}

static void test_refused(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	struct box a = {0}, b = {0};
	uint16_t port = closed_port();

	T_REQUIRE(ring && pr && port);
	T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 1000, on_probe, &a));
	T_REQUIRE(probe_start(pr, "app.test", port, MT_PROTO_TCP, 1000, on_probe, &b));
	pending = 2;
	ring_run(ring);
	T_CHECK(!guard_fired);
	T_EQ(a.calls, 1);
	T_EQ(a.res.status, MT_STATUS_REFUSED);
	T_EQ(a.res.latency_us, 0);
	T_STREQ(a.res.reason, "connection refused");
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_REFUSED);
	finish(ring, pr);
}

static void test_nxdomain(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	struct box a = {0}, b = {0};

	T_REQUIRE(ring && pr);
	T_REQUIRE(probe_start(pr, "missing.test", 80, MT_PROTO_TCP, 2000, on_probe, &a));
	T_REQUIRE(probe_start(pr, "no.such.host.test", 80, MT_PROTO_UDP, 2000, on_probe, &b));
	pending = 2;
	ring_run(ring);
	T_CHECK(!guard_fired);
	T_EQ(a.calls, 1);
	T_EQ(a.res.status, MT_STATUS_NXDOMAIN);
	T_EQ(a.res.addr.ss_family, AF_UNSPEC);
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_NXDOMAIN);
	finish(ring, pr);
}

static void test_udp_resolves_only(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	struct box a = {0}, b = {0};

	T_REQUIRE(ring && pr);
	/* Nothing listens on UDP 5353 of loopback, yet the answer is OK: resolution only. */
	T_REQUIRE(probe_start(pr, "app.test", 5353, MT_PROTO_UDP, 1000, on_probe, &a));
	T_REQUIRE(probe_start(pr, "127.0.0.1", 5353, MT_PROTO_UDP, 1000, on_probe, &b));
	pending = 2;
	ring_run(ring);
	T_CHECK(!guard_fired);
	T_EQ(a.calls, 1);
	T_EQ(a.res.status, MT_STATUS_OK);
	T_EQ(a.res.latency_us, 0);
	T_EQ(a.res.addr.ss_family, AF_INET);
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_OK);
	T_CHECK(is_loopback4(&b.res, 5353));
	finish(ring, pr);
}

static void test_dns_never_answers(void)
{
	struct ring *ring = ring_with_guard(5000);
	char servers[128];
	struct prober *pr;
	struct box b = {0};
	uint16_t port;
	int dead = udp_bound(&port);
	uint64_t t0, ms;

	T_REQUIRE(ring && dead >= 0);
	snprintf(servers, sizeof(servers), "127.0.0.1:%u", port);
	pr = prober_for(ring, servers, 0);
	T_REQUIRE(pr);
	t0 = now_ns();
	T_REQUIRE(probe_start(pr, "app.test", 80, MT_PROTO_TCP, 300, on_probe, &b));
	pending = 1;
	ring_run(ring);
	ms = (b.at_ns - t0) / MS;
	T_CHECK(!guard_fired);
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_TIMEOUT);
	T_STREQ(b.res.reason, "resolution timed out");
	T_CHECK(ms >= 290 && ms < 800);
	/* c-ares's own retries run on (up to 1 s, then 2 s): still no second callback. */
	run_for(ring, 1500);
	T_EQ(b.calls, 1);
	close(dead);
	finish(ring, pr);
}

static void test_blackhole_timeout(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	int fillers[16], nf = 0, lfd, i;
	struct box b = {0};
	uint16_t port;
	uint64_t t0, ms;

	T_REQUIRE(ring && pr);
	lfd = blackhole(&port, fillers, 16, &nf);
	T_REQUIRE(lfd >= 0);
	t0 = now_ns();
	T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 300, on_probe, &b));
	pending = 1;
	ring_run(ring);
	ms = (b.at_ns - t0) / MS;
	T_CHECK(!guard_fired);
	T_EQ(b.calls, 1);
	T_EQ(b.res.status, MT_STATUS_TIMEOUT);
	T_STREQ(b.res.reason, "connect timed out");
	T_CHECK(ms >= 290 && ms < 800);
	run_for(ring, 100);
	T_EQ(b.calls, 1);
	for (i = 0; i < nf; i++)
		close(fillers[i]);
	close(lfd);
	finish(ring, pr);
}

static void test_hundred_in_parallel(void)
{
	struct ring *ring = ring_with_guard(5000);
	struct prober *pr = prober_for(ring, dns_servers, 128);
	static struct box b[100];
	uint16_t port;
	int lfd = tcp_listener(512, &port), i, ok = 0, once = 0;

	T_REQUIRE(ring && pr && lfd >= 0);
	memset(b, 0, sizeof(b));
	for (i = 0; i < 100; i++)
		T_REQUIRE(probe_start(pr, i % 2 ? "app.test" : "127.0.0.1", port, MT_PROTO_TCP,
		                      3000, on_probe, &b[i]));
	T_EQ(prober_inflight(pr), 100);
	pending = 100;
	ring_run(ring);
	T_CHECK(!guard_fired);
	for (i = 0; i < 100; i++) {
		once += b[i].calls == 1;
		ok += b[i].res.status == MT_STATUS_OK && is_loopback4(&b[i].res, port);
	}
	T_EQ(once, 100);
	T_EQ(ok, 100);
	T_EQ(prober_inflight(pr), 0);
	close(lfd);
	finish(ring, pr);
}

static void test_cancel_no_callback(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	int fillers[16], nf = 0, lfd, i;
	struct probe *p1, *p2, *p3;
	struct box b = {0};
	uint16_t port, open_port;
	int ofd = tcp_listener(16, &open_port);

	T_REQUIRE(ring && pr && ofd >= 0);
	lfd = blackhole(&port, fillers, 16, &nf);
	T_REQUIRE(lfd >= 0);
	/* In DNS, in a connect that would succeed at once, in a connect that hangs. */
	p1 = probe_start(pr, "app.test", open_port, MT_PROTO_TCP, 300, on_probe, &b);
	p2 = probe_start(pr, "127.0.0.1", open_port, MT_PROTO_TCP, 300, on_probe, &b);
	p3 = probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 300, on_probe, &b);
	T_REQUIRE(p1 && p2 && p3);
	probe_cancel(p1);
	probe_cancel(p2);
	run_for(ring, 50);
	T_EQ(b.calls, 0);
	probe_cancel(p3);
	T_EQ(prober_inflight(pr), 0);
	/* Past every deadline: nothing calls back. */
	run_for(ring, 500);
	T_CHECK(!guard_fired);
	T_EQ(b.calls, 0);
	for (i = 0; i < nf; i++)
		close(fillers[i]);
	close(lfd);
	close(ofd);
	finish(ring, pr);
}

static void test_concurrency_limit(void)
{
	struct ring *ring = ring_with_guard(3000);
	struct prober *pr = prober_for(ring, dns_servers, 2);
	int fillers[16], nf = 0, lfd, i;
	struct box a = {0}, b = {0}, c = {0}, d = {0};
	uint16_t port;
	uint64_t t0;

	T_REQUIRE(ring && pr);
	lfd = blackhole(&port, fillers, 16, &nf);
	T_REQUIRE(lfd >= 0);
	t0 = now_ns();
	T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 300, on_probe, &a));
	T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 300, on_probe, &b));
	T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 300, on_probe, &c));
	T_EQ(prober_inflight(pr), 2);
	pending = 1;
	ring_run(ring);
	/* The third is answered at once, the first two only at their deadline. */
	T_EQ(c.calls, 1);
	T_EQ(c.res.status, MT_STATUS_ERROR);
	T_STREQ(c.res.reason, "busy");
	T_CHECK((c.at_ns - t0) / MS < 100);
	T_EQ(a.calls + b.calls, 0);
	pending = 2;
	ring_run(ring);
	T_CHECK(!guard_fired);
	T_EQ(a.res.status, MT_STATUS_TIMEOUT);
	T_EQ(b.res.status, MT_STATUS_TIMEOUT);
	/* The slots are free again. */
	T_EQ(prober_inflight(pr), 0);
	T_REQUIRE(probe_start(pr, "127.0.0.1", closed_port(), MT_PROTO_TCP, 300, on_probe, &d));
	pending = 1;
	ring_run(ring);
	T_EQ(d.res.status, MT_STATUS_REFUSED);
	for (i = 0; i < nf; i++)
		close(fillers[i]);
	close(lfd);
	finish(ring, pr);
}

static void test_teardown_in_flight(void)
{
	struct ring *ring = ring_with_guard(3000);
	char dead_server[64];
	const char *two[] = {dead_server, dns_servers};
	struct prober_conf conf = {.nservers = 2};
	struct prober *pr;
	struct box b = {0};
	int fillers[16], nf = 0, lfd, dead, i;
	uint16_t port, dport;
	int fds0 = count_fds();

	T_REQUIRE(ring);
	dead = udp_bound(&dport);
	T_REQUIRE(dead >= 0);
	/* A dead server first, dnsmasq second: some queries wait, some are answered. */
	snprintf(dead_server, sizeof(dead_server), "127.0.0.1:%u", dport);
	conf.servers = two;
	pr = prober_new(ring, &conf);
	T_REQUIRE(pr);
	lfd = blackhole(&port, fillers, 16, &nf);
	T_REQUIRE(lfd >= 0);
	for (i = 0; i < 10; i++) {
		T_REQUIRE(probe_start(pr, "app.test", port, MT_PROTO_TCP, 2000, on_probe, &b));
		T_REQUIRE(probe_start(pr, "127.0.0.1", port, MT_PROTO_TCP, 2000, on_probe, &b));
	}
	run_for(ring, 50);
	T_EQ(b.calls, 0);
	T_EQ(prober_inflight(pr), 20);
	prober_free(pr);
	run_for(ring, 300);
	T_CHECK(!guard_fired);
	T_EQ(b.calls, 0);
	for (i = 0; i < nf; i++)
		close(fillers[i]);
	close(lfd);
	close(dead);
	/* The resolver's and the connects' sockets were all closed by the ring. */
	T_EQ(count_fds(), fds0);
	ring_free(ring);
}

static void test_bad_arguments(void)
{
	struct ring *ring = ring_with_guard(1000);
	struct prober *pr = prober_for(ring, dns_servers, 0);
	const char *junk[] = {"not-an-address"}, *smuggled[] = {"127.0.0.1,10.0.0.1"};
	struct prober_conf bad = {.servers = junk, .nservers = 1}, def = {0};
	struct prober *sys;
	char longname[300];
	struct box b = {0};

	T_REQUIRE(ring && pr);
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	errno = 0;
	T_CHECK(!probe_start(pr, "", 80, MT_PROTO_TCP, 100, on_probe, &b) && errno == EINVAL);
	T_CHECK(!probe_start(pr, longname, 80, MT_PROTO_TCP, 100, on_probe, &b));
	T_CHECK(!probe_start(pr, "a b.test", 80, MT_PROTO_TCP, 100, on_probe, &b));
	T_CHECK(!probe_start(pr, "app.test", 0, MT_PROTO_TCP, 100, on_probe, &b));
	T_CHECK(!probe_start(pr, "app.test", 80, 99, 100, on_probe, &b));
	T_CHECK(!probe_start(pr, "app.test", 80, MT_PROTO_TCP, 0, on_probe, &b));
	T_CHECK(!probe_start(pr, "app.test", 80, MT_PROTO_TCP, PROBE_MAX_DEADLINE_MS + 1, on_probe,
	                     &b));
	T_CHECK(!probe_start(pr, "app.test", 80, MT_PROTO_TCP, 100, NULL, &b));
	T_EQ(prober_inflight(pr), 0);
	T_CHECK(!prober_new(ring, &bad));
	/* No servers: those of /etc/resolv.conf. */
	sys = prober_new(ring, &def);
	T_CHECK(sys);
	prober_free(sys);
	bad.servers = smuggled;
	T_CHECK(!prober_new(ring, &bad));
	bad.nservers = PROBE_SERVERS_MAX + 1;
	T_CHECK(!prober_new(ring, &bad));
	run_for(ring, 10);
	T_EQ(b.calls, 0);
	probe_cancel(NULL);
	prober_free(NULL);
	finish(ring, pr);
}

int main(void)
{
	log_init("test_probe", LOG_LVL_WARN);
	signal(SIGPIPE, SIG_IGN);
	if (dnsmasq_start() < 0) {
		printf("1..0 # SKIP dnsmasq could not be started on loopback\n");
		dnsmasq_stop();
		return 0;
	}
	T_RUN(test_literal_ok);
	T_RUN(test_name_ok);
	T_RUN(test_refused);
	T_RUN(test_nxdomain);
	T_RUN(test_udp_resolves_only);
	T_RUN(test_dns_never_answers);
	T_RUN(test_blackhole_timeout);
	T_RUN(test_hundred_in_parallel);
	T_RUN(test_cancel_no_callback);
	T_RUN(test_concurrency_limit);
	T_RUN(test_teardown_in_flight);
	T_RUN(test_bad_arguments);
	dnsmasq_stop();
	return t_done();
}
