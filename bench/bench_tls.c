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

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ring.h"
#include "tls.h"

#define RECORD   16384
#define SUITE    "TLS_AES_128_GCM_SHA256"
#define NS       1000000000ULL
#define BUFS     64
#define BUF_SIZE 65536

struct cred {
	X509 *cert;
	EVP_PKEY *key;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ext)
		return -EINVAL;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -ENOMEM;
}

/* A throwaway P-256 certificate: a CA if issuer is NULL, else a leaf with the URI. */
static int cred_make(const struct cred *issuer, const char *uri, struct cred *out)
{
	X509_NAME *name = X509_NAME_new();
	unsigned char serial[8];
	BIGNUM *bn = NULL;
	char san[256];
	int ret = -EINVAL;

	out->key = EVP_EC_gen("P-256");
	out->cert = X509_new();
	if (!name || !out->key || !out->cert || RAND_bytes(serial, sizeof(serial)) != 1)
		goto out;
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(out->cert)) ||
	    !X509_set_version(out->cert, 2) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
	                                (const unsigned char *)(issuer ? "leaf" : "bench root"), -1,
	                                -1, 0) ||
	    !X509_set_subject_name(out->cert, name) ||
	    !X509_set_issuer_name(out->cert, issuer ? X509_get_subject_name(issuer->cert) : name) ||
	    !X509_gmtime_adj(X509_getm_notBefore(out->cert), -60) ||
	    !X509_gmtime_adj(X509_getm_notAfter(out->cert), 3600) ||
	    !X509_set_pubkey(out->cert, out->key))
		goto out;
	if (!issuer) {
		if (add_ext(out->cert, out->cert, NID_basic_constraints, "critical,CA:TRUE") < 0 ||
		    add_ext(out->cert, out->cert, NID_key_usage, "critical,keyCertSign") < 0)
			goto out;
	} else {
		snprintf(san, sizeof(san), "URI:%s", uri);
		if (add_ext(out->cert, issuer->cert, NID_subject_alt_name, san) < 0)
			goto out;
	}
	if (X509_sign(out->cert, issuer ? issuer->key : out->key, EVP_sha256()) <= 0)
		goto out;
	ret = 0;
out:
	BN_free(bn);
	X509_NAME_free(name);
	return ret;
}

static void cred_free(struct cred *c)
{
	X509_free(c->cert);
	EVP_PKEY_free(c->key);
}

/* A client (connector) and a server (broker) context that accept each other. */
static int make_ctxs(struct tls_ctx **sctx, struct tls_ctx **cctx)
{
	struct cred root = {0}, broker = {0}, conn = {0};
	STACK_OF(X509) *anchors = sk_X509_new_null();
	const char *why = "cannot make certificates";
	int ret = -EINVAL;

	if (!anchors || cred_make(NULL, NULL, &root) < 0 ||
	    cred_make(&root, "mtun://bench/broker/b1", &broker) < 0 ||
	    cred_make(&root, "mtun://bench/connector/c1", &conn) < 0 ||
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
	cred_free(&root);
	cred_free(&broker);
	cred_free(&conn);
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

static void print(const char *op, const char *cipher, uint64_t bytes, double secs)
{
	printf("bench=tls op=%s record=%d cipher=%s MBps=%.1f bytes=%llu seconds=%.3f\n", op,
	       RECORD, strcmp(cipher, SUITE) == 0 ? "AES-128-GCM" : cipher, bytes / secs / 1e6,
	       (unsigned long long)bytes, secs);
}

/* Encrypt a record, hand its ciphertext over, decrypt it: no sockets, no ring. */
static int bench_memory(struct tls_ctx *sctx, struct tls_ctx *cctx, double secs)
{
	struct tls_conn *c = tls_conn_new(cctx), *s = tls_conn_new(sctx);
	uint64_t bytes = 0;
	double t0, t;
	int ret = -EPROTO;

	if (!c || !s || handshake_mem(c, s) < 0)
		goto out;
	t0 = now();
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
	print("memory", tls_conn_cipher(c), bytes, t);
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
	int sv[2] = {-1, -1}, ret = -EIO, sz = 1 << 20;
	double t0, t;

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
	end_progress(&ends[0]);
	if (ring_run(ring) < 0)
		goto out;
	t = now() - t0;
	if (ends[0].err || ends[1].err || !tls_conn_established(s))
		goto out;
	print("ring_throughput", tls_conn_cipher(s), ends[1].bytes, t);
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
