/*
 * TLS record throughput, 16 KiB records, AES-128-GCM: driven by the ring over a socketpair,
 * and in memory without sockets. One key=value line per figure for tools/bench.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "pki_fixture.h"
#include "ring.h"
#include "tls.h"

#define RECORD 16384
#define SUITE  "TLS_AES_128_GCM_SHA256"
#define NS     1000000000ULL
/* As the daemons: 16 KiB provided buffers (MT_FRAME_MAX), 1 MiB socket buffers. */
#define BUFS     64
#define BUF_SIZE 16384
#define SOCKBUF  (1 << 20)

static double clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

/* User and system time of the whole process (io_uring workers included). */
static double cpu_now(void)
{
	return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

/* A client (connector) and a server (broker) context that accept each other. */
static int make_ctxs(struct tls_ctx **sctx, struct tls_ctx **cctx)
{
	struct pki_cert root = {0}, broker = {0}, conn = {0};
	STACK_OF(X509) *anchors = sk_X509_new_null();
	const char *why = "cannot make certificates";
	int ret = -EINVAL;

	if (!anchors || pki_root_new("bench root", &root) < 0 ||
	    pki_leaf_new(&root, (const char *[]){"mtun://bench/broker/b1"}, 1, -60, 3600, &broker) <
	        0 ||
	    pki_leaf_new(&root, (const char *[]){"mtun://bench/connector/c1"}, 1, -60, 3600,
	                 &conn) < 0 ||
	    !sk_X509_push(anchors, root.cert))
		goto out;
	*sctx = tls_ctx_new(&(struct tls_conf){.server = true,
	                                       .cert = broker.cert,
	                                       .key = broker.key,
	                                       .anchors = anchors,
	                                       .peer_roles = MT_ROLE_BIT(MT_ROLE_CONNECTOR),
	                                       .peer_tenant = "bench",
	                                       .ciphersuites = SUITE},
	                    &why);
	if (!*sctx)
		goto out;
	*cctx = tls_ctx_new(&(struct tls_conf){.cert = conn.cert,
	                                       .key = conn.key,
	                                       .anchors = anchors,
	                                       .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
	                                       .peer_tenant = "bench",
	                                       .ciphersuites = SUITE},
	                    &why);
	if (*cctx)
		ret = 0;
out:
	if (ret < 0)
		fprintf(stderr, "bench_tls: %s\n", why);
	sk_X509_free(anchors);
	pki_cert_free(&root);
	pki_cert_free(&broker);
	pki_cert_free(&conn);
	return ret;
}

static void move(struct tls_conn *a, struct tls_conn *b)
{
	const void *p;
	size_t n;

	for (;;) {
		tls_conn_peek(a, &p, &n);
		if (n == 0 || tls_conn_feed(b, p, n) < 0)
			return;
		tls_conn_consume(a, n);
	}
}

static int handshake_mem(struct tls_conn *c, struct tls_conn *s)
{
	for (int i = 0; i < 20; i++) {
		int rc = tls_conn_handshake(c), rs;

		move(c, s);
		rs = tls_conn_handshake(s);
		move(s, c);
		if (rc == 0 && rs == 0)
			return 0;
		if (rc == -EPROTO || rs == -EPROTO)
			break;
	}
	fprintf(stderr, "bench_tls: handshake failed: %s%s\n", tls_conn_why(c), tls_conn_why(s));
	return -EPROTO;
}

static uint8_t plain[RECORD], sink[BUF_SIZE];

/*
 * MBps is per CPU-second of this process (user + system), like openssl speed's figure
 * (user time): the cost on one core, whatever else runs on the machine. MBps_wall is
 * per elapsed second.
 */
static void print(const char *op, const char *cipher, uint64_t bytes, double secs, double cpu)
{
	printf("bench=tls op=%s record=%d cipher=%s MBps=%.1f MBps_wall=%.1f bytes=%llu "
	       "seconds=%.3f cpu_seconds=%.3f\n",
	       op, RECORD, strcmp(cipher, SUITE) == 0 ? "AES-128-GCM" : cipher,
	       cpu > 0 ? bytes / cpu / 1e6 : 0.0, bytes / secs / 1e6, (unsigned long long)bytes,
	       secs, cpu);
}

/* Encrypt a record, hand its ciphertext over, decrypt it: no sockets, no ring. */
static int bench_memory(struct tls_ctx *sctx, struct tls_ctx *cctx, double secs)
{
	struct tls_conn *c = tls_conn_new(cctx), *s = tls_conn_new(sctx);
	uint64_t bytes = 0;
	double t0, c0, t;
	int ret = -EPROTO;

	if (!c || !s || handshake_mem(c, s) < 0)
		goto out;
	t0 = now();
	c0 = cpu_now();
	do {
		for (int i = 0; i < 64; i++) {
			ssize_t n;

			if (tls_conn_write(c, plain, RECORD) != RECORD)
				goto out;
			move(c, s);
			while ((n = tls_conn_read(s, sink, sizeof(sink))) > 0)
				bytes += (uint64_t)n;
			if (n != -EAGAIN)
				goto out;
		}
		t = now() - t0;
	} while (t < secs);
	print("memory", tls_conn_cipher(c), bytes, t, cpu_now() - c0);
	ret = 0;
out:
	if (ret < 0)
		fprintf(stderr, "bench_tls: memory: %s%s\n", c ? tls_conn_why(c) : "",
		        s ? tls_conn_why(s) : "");
	tls_conn_free(c);
	tls_conn_free(s);
	return ret;
}

/* One end on the ring: the client only writes, the server only reads. */
struct end {
	struct ring *ring;
	struct ring_bufgroup *bg;
	struct tls_conn *c;
	int fd;
	bool writer;
	size_t in_flight;
	uint64_t bytes;
	int err;
};

static void end_progress(struct end *e);

static void end_sent(struct ring *ring, int res, void *arg)
{
	struct end *e = arg;

	if (res < 0) {
		e->err = res;
		ring_stop(ring);
		return;
	}
	tls_conn_consume(e->c, e->in_flight);
	e->in_flight = 0;
	end_progress(e);
}

static void end_progress(struct end *e)
{
	const void *p;
	ssize_t n;
	size_t len;

	if (tls_conn_handshake(e->c) == -EPROTO) {
		fprintf(stderr, "bench_tls: ring: %s\n", tls_conn_why(e->c));
		e->err = -EPROTO;
		ring_stop(e->ring);
		return;
	}
	if (e->writer && tls_conn_established(e->c))
		while (tls_conn_write(e->c, plain, RECORD) > 0)
			;
	while ((n = tls_conn_read(e->c, sink, sizeof(sink))) > 0)
		e->bytes += (uint64_t)n;
	if (e->in_flight)
		return;
	tls_conn_peek(e->c, &p, &len);
	if (len && ring_send(e->ring, e->fd, p, len, end_sent, e) == 0)
		e->in_flight = len;
}

static void end_recv(struct ring *ring, int res, void *ptr, unsigned bid, void *arg)
{
	struct end *e = arg;

	if (res <= 0) {
		e->err = res < 0 ? res : -ECONNRESET;
		ring_stop(ring);
		return;
	}
	if (tls_conn_feed(e->c, ptr, (size_t)res) < 0)
		e->err = -ENOBUFS;
	ring_buf_release(e->bg, bid);
	end_progress(e);
}

static void stop_timer(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

static int bench_ring(struct tls_ctx *sctx, struct tls_ctx *cctx, double secs)
{
	struct tls_conn *c = tls_conn_new(cctx), *s = tls_conn_new(sctx);
	struct ring *ring = ring_new(256);
	struct ring_bufgroup *bg = ring ? ring_bufgroup_new(ring, BUFS, BUF_SIZE) : NULL;
	struct end ends[2];
	int sv[2] = {-1, -1}, ret = -EIO, sz = SOCKBUF;
	double t0, c0, t, cpu;

	if (!c || !s || !bg || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		goto out;
	for (int i = 0; i < 2; i++) {
		setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		ends[i] = (struct end){
		    .ring = ring, .bg = bg, .c = i ? s : c, .fd = sv[i], .writer = i == 0};
		if (ring_recv(ring, sv[i], bg, end_recv, &ends[i]) < 0)
			goto out;
	}
	if (ring_timer_add(ring, (uint64_t)(secs * NS), stop_timer, NULL, NULL) < 0)
		goto out;
	t0 = now();
	c0 = cpu_now();
	end_progress(&ends[0]);
	if (ring_run(ring) < 0)
		goto out;
	t = now() - t0;
	cpu = cpu_now() - c0;
	if (ends[0].err || ends[1].err || !tls_conn_established(s))
		goto out;
	print("ring_throughput", tls_conn_cipher(s), ends[1].bytes, t, cpu);
	ret = 0;
out:
	if (ret < 0)
		fprintf(stderr, "bench_tls: ring: failed (%s)\n", s ? tls_conn_why(s) : "setup");
	ring_free(ring);
	tls_conn_free(c);
	tls_conn_free(s);
	if (sv[0] >= 0) {
		close(sv[0]);
		close(sv[1]);
	}
	return ret;
}

int main(int argc, char **argv)
{
	struct tls_ctx *sctx = NULL, *cctx = NULL;
	double secs = argc > 1 ? atof(argv[1]) : 2.0;
	int ret = 1;

	if (argc > 2 || secs <= 0 || secs > 600) {
		fprintf(stderr, "usage: bench_tls [seconds per figure, default 2]\n");
		return 2;
	}
	memset(plain, 0xa5, sizeof(plain));
	if (make_ctxs(&sctx, &cctx) < 0)
		goto out;
	if (bench_ring(sctx, cctx, secs) < 0 || bench_memory(sctx, cctx, secs) < 0)
		goto out;
	ret = 0;
out:
	tls_ctx_free(sctx);
	tls_ctx_free(cctx);
	return ret;
}
