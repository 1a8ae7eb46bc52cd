/* Small-message request/response latency over one TCP connection: a client sends SIZE
 * bytes, an echo server returns them, and the client reports round-trip percentiles. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PINGPONG_MAX_SIZE     (1U << 20)
#define PINGPONG_MAX_SAMPLES  (50U * 1000 * 1000)
#define PINGPONG_MAX_SECONDS  3600
#define PINGPONG_IO_TIMEOUT_S 10

struct pingpong_opts {
	const char *host;
	const char *port;
	size_t size;
	unsigned long count;
	unsigned long seconds;
	unsigned long warmup;
};

static void pingpong_usage(void)
{
	fprintf(stderr,
	        "usage: bench_pingpong server PORT\n"
	        "       bench_pingpong client HOST PORT [--size BYTES] "
	        "[--count N | --seconds S] [--warmup N]\n"
	        "The client prints samples, size, p50_us, p99_us, mean_us, min_us and max_us "
	        "as key=value lines.\n");
}

static int pingpong_parse_ulong(const char *s, unsigned long min, unsigned long max,
                                unsigned long *out)
{
	char *end;
	unsigned long v;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static uint64_t pingpong_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int pingpong_write_all(int fd, const unsigned char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int pingpong_read_all(int fd, unsigned char *buf, size_t len)
{
	while (len) {
		ssize_t n = recv(fd, buf, len, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void pingpong_set_nodelay(int fd)
{
	int one = 1;

	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		fprintf(stderr, "bench_pingpong: TCP_NODELAY: %s\n", strerror(errno));
}

static void pingpong_echo(int fd)
{
	unsigned char buf[65536];

	pingpong_set_nodelay(fd);
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (pingpong_write_all(fd, buf, (size_t)n) < 0)
			break;
	}
	close(fd);
}

static int pingpong_server(const char *port)
{
	struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
	unsigned long p;
	int fd, one = 1, zero = 0;

	if (pingpong_parse_ulong(port, 1, 65535, &p) < 0) {
		fprintf(stderr, "bench_pingpong: bad port '%s'\n", port);
		return -EINVAL;
	}
	sa.sin6_port = htons((uint16_t)p);
	fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0)
		goto fail;
	/* One child per connection: the measured path is the echo, not our scheduling. */
	signal(SIGCHLD, SIG_IGN);
	for (;;) {
		int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
		pid_t pid;

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
				continue;
			goto fail;
		}
		pid = fork();
		if (pid == 0) {
			close(fd);
			pingpong_echo(c);
			_exit(0);
		}
		if (pid < 0)
			fprintf(stderr, "bench_pingpong: fork: %s\n", strerror(errno));
		close(c);
	}
fail:
	p = (unsigned long)errno;
	fprintf(stderr, "bench_pingpong: server on port %s: %s\n", port, strerror((int)p));
	if (fd >= 0)
		close(fd);
	return -(int)p;
}

static int pingpong_connect(const char *host, const char *port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
	struct timeval tv = {.tv_sec = PINGPONG_IO_TIMEOUT_S};
	int fd = -1, rc;

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		fprintf(stderr, "bench_pingpong: %s:%s: %s\n", host, port, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		rc = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		fprintf(stderr, "bench_pingpong: connect %s:%s: %s\n", host, port,
		        strerror(rc ? -rc : EHOSTUNREACH));
		return rc ? rc : -EHOSTUNREACH;
	}
	pingpong_set_nodelay(fd);
	return fd;
}

static int pingpong_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples. */
static uint64_t pingpong_pct(const uint64_t *s, size_t n, unsigned int pct)
{
	size_t rank = (n * pct + 99) / 100;

	return s[rank ? rank - 1 : 0];
}

static int pingpong_client(const struct pingpong_opts *o)
{
	unsigned char *out = NULL, *in = NULL;
	uint64_t *samples = NULL, deadline = 0, sum = 0;
	size_t n = 0, cap = 0;
	unsigned long i;
	int fd, rc = 0;

	fd = pingpong_connect(o->host, o->port);
	if (fd < 0)
		return fd;
	out = malloc(o->size);
	in = malloc(o->size);
	if (!out || !in) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < o->size; i++)
		out[i] = (unsigned char)(i * 31 + 7);
	for (i = 0; i < o->warmup; i++) {
		rc = pingpong_write_all(fd, out, o->size);
		if (!rc)
			rc = pingpong_read_all(fd, in, o->size);
		if (rc)
			goto io_fail;
	}
	if (o->seconds)
		deadline = pingpong_now_ns() + o->seconds * 1000000000ULL;
	for (;;) {
		uint64_t t0, t1;

		if (o->count && n >= o->count)
			break;
		if (o->seconds && pingpong_now_ns() >= deadline)
			break;
		if (n == PINGPONG_MAX_SAMPLES)
			break;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 4096;
			uint64_t *ns;

			if (ncap > PINGPONG_MAX_SAMPLES)
				ncap = PINGPONG_MAX_SAMPLES;
			ns = realloc(samples, ncap * sizeof(*samples));
			if (!ns) {
				rc = -ENOMEM;
				goto out;
			}
			samples = ns;
			cap = ncap;
		}
		t0 = pingpong_now_ns();
		rc = pingpong_write_all(fd, out, o->size);
		if (!rc)
			rc = pingpong_read_all(fd, in, o->size);
		if (rc)
			goto io_fail;
		t1 = pingpong_now_ns();
		if (memcmp(in, out, o->size)) {
			fprintf(stderr, "bench_pingpong: echo differs from what was sent\n");
			rc = -EPROTO;
			goto out;
		}
		samples[n++] = t1 - t0;
		sum += t1 - t0;
	}
	if (!n) {
		fprintf(stderr, "bench_pingpong: no sample taken\n");
		rc = -ENODATA;
		goto out;
	}
	qsort(samples, n, sizeof(*samples), pingpong_cmp);
	printf("samples=%zu\nsize=%zu\n", n, o->size);
	printf("p50_us=%.1f\np99_us=%.1f\nmean_us=%.1f\nmin_us=%.1f\nmax_us=%.1f\n",
	       pingpong_pct(samples, n, 50) / 1e3, pingpong_pct(samples, n, 99) / 1e3,
	       (double)sum / (double)n / 1e3, samples[0] / 1e3, samples[n - 1] / 1e3);
	goto out;
io_fail:
	fprintf(stderr, "bench_pingpong: exchange %zu with %s:%s: %s\n", n, o->host, o->port,
	        strerror(-rc));
out:
	free(samples);
	free(in);
	free(out);
	close(fd);
	return rc;
}

int main(int argc, char **argv)
{
	struct pingpong_opts o = {.size = 64};
	unsigned long v;
	int i;

	if (argc == 3 && !strcmp(argv[1], "server"))
		return pingpong_server(argv[2]) ? 1 : 0;
	if (argc < 4 || strcmp(argv[1], "client")) {
		pingpong_usage();
		return 2;
	}
	o.host = argv[2];
	o.port = argv[3];
	for (i = 4; i < argc; i += 2) {
		const char *opt = argv[i], *arg = i + 1 < argc ? argv[i + 1] : NULL;
		int rc = -EINVAL;

		if (!strcmp(opt, "--size")) {
			rc = pingpong_parse_ulong(arg, 1, PINGPONG_MAX_SIZE, &v);
			o.size = v;
		} else if (!strcmp(opt, "--count")) {
			rc = pingpong_parse_ulong(arg, 1, PINGPONG_MAX_SAMPLES, &o.count);
		} else if (!strcmp(opt, "--seconds")) {
			rc = pingpong_parse_ulong(arg, 1, PINGPONG_MAX_SECONDS, &o.seconds);
		} else if (!strcmp(opt, "--warmup")) {
			rc = pingpong_parse_ulong(arg, 0, PINGPONG_MAX_SAMPLES, &o.warmup);
		}
		if (rc < 0) {
			fprintf(stderr, "bench_pingpong: bad option %s %s\n", opt,
			        arg ? arg : "(missing)");
			pingpong_usage();
			return 2;
		}
	}
	if (o.count && o.seconds) {
		fprintf(stderr, "bench_pingpong: --count and --seconds exclude each other\n");
		return 2;
	}
	if (!o.count && !o.seconds)
		o.count = 10000;
	return pingpong_client(&o) ? 1 : 0;
}
