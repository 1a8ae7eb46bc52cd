/*
 * HTTPS load for tools/bench's proxy modes: new TLS sessions per second, straight to an
 * origin or through an explicit proxy (HTTP CONNECT), for first-visit host names (each
 * session a name never used before) or repeat ones; and one download's throughput.
 * Every session is a full handshake, verified against --cafile and the host name.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define PL_THREADS_MAX 256
#define PL_HOST_MAX    253

struct pl_opts {
	struct sockaddr_storage target; /* the proxy, or the origin when proxy is false */
	socklen_t target_len;
	bool proxy;
	const char *domain; /* names are PREFIX-N.DOMAIN */
	const char *prefix;
	unsigned repeat; /* 0: first visit, every name new; else names 0..repeat-1 */
	const char *path;
	double seconds;
	uint64_t sessions; /* 0: until seconds are up; else this many, however long */
	unsigned threads;
	SSL_CTX *ctx;
};

static struct pl_opts opt = {.prefix = "h", .path = "/", .seconds = 5, .threads = 16};
static atomic_uint_fast64_t next_name, done, failed, bytes_total;
static double deadline;
static pthread_mutex_t lat_lock = PTHREAD_MUTEX_INITIALIZER;
static double *lat;
static size_t nlat, cap_lat;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int tcp_connect(void)
{
	struct timeval tv = {.tv_sec = 10};
	int fd = socket(opt.target.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&opt.target, opt.target_len) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* CONNECT host:443 and the proxy's 200, read byte by byte so no TLS byte is taken. */
static int proxy_connect(int fd, const char *host)
{
	char req[PL_HOST_MAX * 2 + 64], head[1024];
	size_t n = 0;
	int len = snprintf(req, sizeof(req), "CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n",
	                   host, host);

	if (len < 0 || (size_t)len >= sizeof(req) || write_all(fd, req, (size_t)len) < 0)
		return -EIO;
	while (n < sizeof(head) - 1) {
		ssize_t r = read(fd, head + n, 1);

		if (r <= 0)
			return -EIO;
		n++;
		if (n >= 4 && memcmp(head + n - 4, "\r\n\r\n", 4) == 0)
			break;
	}
	head[n] = '\0';
	return strncmp(head, "HTTP/1.1 200", 12) == 0 || strncmp(head, "HTTP/1.0 200", 12) == 0
	           ? 0
	           : -EPROTO;
}

/* One session: connect, (CONNECT,) handshake for host, GET path, read to the end. */
static int session(const char *host, uint64_t *body)
{
	char req[PL_HOST_MAX + 128], buf[65536];
	SSL *ssl = NULL;
	int fd, len, err = -EIO;
	bool ok200 = false;
	size_t got = 0;

	fd = tcp_connect();
	if (fd < 0)
		return fd;
	if (opt.proxy && proxy_connect(fd, host) < 0)
		goto out;
	ssl = SSL_new(opt.ctx);
	if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_set_tlsext_host_name(ssl, host) != 1 ||
	    SSL_set1_host(ssl, host) != 1 || SSL_connect(ssl) != 1)
		goto out;
	len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
	               opt.path, host);
	if (len < 0 || (size_t)len >= sizeof(req) || SSL_write(ssl, req, len) != len)
		goto out;
	for (;;) {
		int r = SSL_read(ssl, buf, sizeof(buf));

		if (r <= 0)
			break;
		if (got == 0 && r >= 12 && memcmp(buf + 9, "200", 3) == 0)
			ok200 = true;
		got += (size_t)r;
	}
	if (ok200) {
		*body = got;
		err = 0;
	}
out:
	if (ssl) {
		SSL_shutdown(ssl);
		SSL_free(ssl);
	}
	close(fd);
	ERR_clear_error();
	return err;
}

static void lat_add(double v)
{
	pthread_mutex_lock(&lat_lock);
	if (nlat == cap_lat) {
		size_t c = cap_lat ? cap_lat * 2 : 4096;
		double *p = realloc(lat, c * sizeof(*lat));

		if (!p) {
			pthread_mutex_unlock(&lat_lock);
			return;
		}
		lat = p;
		cap_lat = c;
	}
	lat[nlat++] = v;
	pthread_mutex_unlock(&lat_lock);
}

static void *worker(void *arg)
{
	char host[PL_HOST_MAX + 1];

	(void)arg;
	for (;;) {
		uint64_t i = atomic_fetch_add(&next_name, 1), body = 0;
		double t0 = now_s();

		if (opt.sessions ? i >= opt.sessions : t0 >= deadline)
			break;
		if (opt.repeat)
			i %= opt.repeat;
		snprintf(host, sizeof(host), "%s-%llu.%s", opt.prefix, (unsigned long long)i,
		         opt.domain);
		if (session(host, &body) == 0) {
			atomic_fetch_add(&done, 1);
			atomic_fetch_add(&bytes_total, body);
			lat_add(now_s() - t0);
		} else {
			atomic_fetch_add(&failed, 1);
		}
	}
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int parse_target(const char *s)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
	struct addrinfo *ai = NULL;
	char host[64];
	const char *colon = strrchr(s, ':');

	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		return -EINVAL;
	memcpy(&opt.target, ai->ai_addr, ai->ai_addrlen);
	opt.target_len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: bench_proxyload --target IP:PORT [--proxy] --domain D --cafile F\n"
	        "         [--prefix P] [--repeat N] [--path /P] [--seconds S | --sessions N]\n"
	        "         [--threads T]\n"
	        "  sessions to P-<n>.D (n new each time, or n < N with --repeat), each a full\n"
	        "  TLS handshake verified against F; --target is the proxy with --proxy;\n"
	        "  for S seconds (default 5), or N sessions in all.\n"
	        "  Prints sessions_per_s, p99_ms, errors, and gbps (the body bytes).\n");
}

int main(int argc, char **argv)
{
	const char *cafile = NULL;
	pthread_t th[PL_THREADS_MAX];
	double t0, el;
	unsigned i;

	for (int a = 1; a < argc; a++) {
		const char *v = a + 1 < argc ? argv[a + 1] : NULL;

		if (strcmp(argv[a], "--proxy") == 0) {
			opt.proxy = true;
			continue;
		}
		if (!v) {
			usage();
			return 2;
		}
		if (strcmp(argv[a], "--target") == 0 && parse_target(v) == 0)
			;
		else if (strcmp(argv[a], "--domain") == 0 && strlen(v) < 128)
			opt.domain = v;
		else if (strcmp(argv[a], "--prefix") == 0 && strlen(v) < 64)
			opt.prefix = v;
		else if (strcmp(argv[a], "--cafile") == 0)
			cafile = v;
		else if (strcmp(argv[a], "--path") == 0 && v[0] == '/' && strlen(v) < 100)
			opt.path = v;
		else if (strcmp(argv[a], "--repeat") == 0 && atoi(v) > 0)
			opt.repeat = (unsigned)atoi(v);
		else if (strcmp(argv[a], "--seconds") == 0 && atof(v) > 0 && atof(v) <= 600)
			opt.seconds = atof(v);
		else if (strcmp(argv[a], "--sessions") == 0 && atoi(v) > 0)
			opt.sessions = (uint64_t)atoi(v);
		else if (strcmp(argv[a], "--threads") == 0 && atoi(v) > 0 &&
		         atoi(v) <= PL_THREADS_MAX)
			opt.threads = (unsigned)atoi(v);
		else {
			usage();
			return 2;
		}
		a++;
	}
	if (!opt.target_len || !opt.domain || !cafile) {
		usage();
		return 2;
	}
	opt.ctx = SSL_CTX_new(TLS_client_method());
	if (!opt.ctx || SSL_CTX_load_verify_locations(opt.ctx, cafile, NULL) != 1) {
		fprintf(stderr, "bench_proxyload: cannot load %s\n", cafile);
		return 1;
	}
	SSL_CTX_set_verify(opt.ctx, SSL_VERIFY_PEER, NULL);
	/* every session a full handshake, as a first visit is */
	SSL_CTX_set_session_cache_mode(opt.ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(opt.ctx, SSL_OP_NO_TICKET);
	t0 = now_s();
	deadline = t0 + opt.seconds;
	for (i = 0; i < opt.threads; i++)
		if (pthread_create(&th[i], NULL, worker, NULL) != 0)
			break;
	opt.threads = i;
	for (i = 0; i < opt.threads; i++)
		pthread_join(th[i], NULL);
	el = now_s() - t0;
	if (nlat)
		qsort(lat, nlat, sizeof(*lat), cmp_double);
	printf("sessions=%llu errors=%llu sessions_per_s=%.1f p99_ms=%.2f gbps=%.4f\n",
	       (unsigned long long)done, (unsigned long long)failed, (double)done / el,
	       nlat ? lat[(size_t)((double)(nlat - 1) * 0.99)] * 1e3 : 0.0,
	       (double)bytes_total * 8 / el / 1e9);
	free(lat);
	SSL_CTX_free(opt.ctx);
	return done > 0 ? 0 : 1;
}
