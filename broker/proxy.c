/*
 * The inspecting proxy: an explicit HTTP CONNECT listener; per CONNECT, relay (bypass, no
 * key, other ports) or terminate TLS with a minted leaf and relay HTTP/1.1 to a verified
 * upstream. A pool of worker threads, each serving one connection at a time with
 * non-blocking sockets and poll: simple to audit. Upstream TLS sessions are resumed for
 * repeat hosts (a bounded cache in RAM, filled only after full verified handshakes).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "conf.h"
#include "inspect.h"
#include "log.h"
#include "secmem.h"

#define PX_HS_TIMEOUT 10000 /* ms for the CONNECT head, the hello and each handshake */
#define PX_PATH_LOG   256   /* path bytes kept for logs and block rules */
#define PX_STACK      (256 * 1024)
#define PX_IDLE_SEC   30   /* a worker with nothing to do this long exits */
#define PX_SESS_SLOTS 1024 /* upstream session cache: slots (a power of two) */
#define PX_SESS_KEEP  2    /* sessions kept per tenant, host and port */
#define PX_SESS_TTL   600  /* seconds a session is offered, at most */
#define PX_SESS_KEY   (PROXY_HOST_MAX + 72)
#define PX_DNS_SLOTS  512 /* resolved names: slots (a power of two) */
#define PX_DNS_ADDRS  4   /* addresses kept per name */
#define PX_DNS_TTL    10  /* seconds an answer is reused (getaddrinfo gives no TTL) */

union px_addr {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
};

/* The addresses a name resolved to, port 0. */
struct px_dns_slot {
	char host[PROXY_HOST_MAX + 1];
	time_t until;
	unsigned n;
	union px_addr a[PX_DNS_ADDRS];
};

struct px_conn;

/* Upstream sessions of one tenant for one host and port, newest last. */
struct px_sess_slot {
	char key[PX_SESS_KEY];
	SSL_SESSION *s[PX_SESS_KEEP];
	unsigned n;
};

struct proxy {
	struct inspect_node *node;
	struct proxy_opts o;
	int *fds;
	size_t nfds;
	SSL_CTX *up_ctx, *cl_ctx;
	atomic_uint clients;  /* connections queued or being served */
	pthread_mutex_t lock; /* the queue and the worker counts */
	pthread_cond_t cond;
	bool lock_init, stopping;
	struct px_conn *q_head, *q_tail;
	unsigned queued, workers, idle;
	pthread_mutex_t cache_lock; /* sess and dns */
	bool cache_lock_init;
	uint64_t seed;
	struct px_sess_slot *sess; /* PX_SESS_SLOTS */
	struct px_dns_slot *dns;   /* PX_DNS_SLOTS */
};

struct px_conn {
	struct proxy *p;
	struct px_conn *next;       /* in the queue */
	char sess_key[PX_SESS_KEY]; /* tenant, host, port of the upstream session */
	size_t li;
	int cfd, ufd;
	struct sockaddr_storage peer;
	char peer_s[INET6_ADDRSTRLEN + 8];
	struct inspect_tenant *t;
	struct proxy_connect req;
	const char *name; /* the SNI, or the CONNECT host */
	SSL *cs, *us;     /* client side, upstream side */
	uint8_t *b[2];    /* secmem buffers: 0 client to upstream, 1 upstream to client */
};

/* HTTP/1.1 framing, one direction */
enum px_state {
	PX_HEAD = 0,
	PX_BODY,       /* remain bytes */
	PX_CHUNK_SIZE, /* a chunk-size line */
	PX_CHUNK_DATA,
	PX_CHUNK_CRLF,
	PX_TRAILER,
	PX_UNTIL_CLOSE,
	PX_WAIT, /* request side: the response to the current request is not complete */
	PX_RAW,  /* after 101: bytes as they come */
};

struct px_dir {
	uint8_t *buf;
	size_t size, fill, fwd, sent;
	enum px_state st;
	uint64_t remain;
	bool eof, shut;
};

struct px_http {
	struct px_conn *c;
	struct px_dir d[2];
	char method[16], host[PROXY_HOST_MAX + 1], path[PX_PATH_LOG + 1];
	bool head_req, upgrade, resp_done;
	unsigned requests;
};

static int px_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

static int px_wait(int fd, short ev, int ms)
{
	struct pollfd pfd = {.fd = fd, .events = ev};
	int r = poll(&pfd, 1, ms);

	return r == 1 ? 0 : r == 0 ? -ETIMEDOUT : -errno;
}

/* Writes all of buf to a non-blocking socket. */
static int px_send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);

		if (w < 0 && errno == EAGAIN) {
			if (px_wait(fd, POLLOUT, PX_HS_TIMEOUT))
				return -ETIMEDOUT;
			continue;
		}
		if (w <= 0)
			return w < 0 ? -errno : -EPIPE;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static void px_status(struct px_conn *c, unsigned status, const char *text)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf),
	                 "HTTP/1.1 %u %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n",
	                 status, text, status == 405 ? "Allow: CONNECT\r\n" : "");

	px_send_all(c->cfd, buf, (size_t)n);
}

/*
 * Waits until the first bytes of the client's stream hold a whole item (the CONNECT head,
 * the ClientHello), peeking so that nothing is consumed: the TLS library or the relay
 * reads them again. SO_RCVLOWAT makes poll wait for more than what was already seen.
 */
static int px_peek(int fd, uint8_t *buf, size_t size, size_t *len)
{
	bool polled = false;

	for (;;) {
		ssize_t r = recv(fd, buf, size, MSG_PEEK);
		int lowat, err;

		if (r < 0 && errno != EAGAIN)
			return -errno;
		if (r == 0 || (r > 0 && (size_t)r == *len && polled))
			return -ECONNRESET; /* closed, or readable with nothing new: the end */
		if (r > 0 && (size_t)r > *len) {
			*len = (size_t)r;
			return 0;
		}
		if (*len >= size)
			return -EMSGSIZE;
		lowat = (int)*len + 1;
		setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat));
		err = px_wait(fd, POLLIN, PX_HS_TIMEOUT);
		lowat = 1;
		setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat));
		if (err)
			return err;
		polled = true;
	}
}

static uint64_t px_hash(const struct proxy *p, const char *key)
{
	uint64_t h = p->seed ^ 0xcbf29ce484222325ULL;

	for (const unsigned char *k = (const unsigned char *)key; *k; k++)
		h = (h ^ *k) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

/*
 * The upstream's addresses (port 0): for a name, from the short-lived cache or
 * getaddrinfo (then cached). 0 or -ENOENT.
 */
static int px_resolve(struct px_conn *c, union px_addr *a, unsigned *n)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
	struct proxy *p = c->p;
	bool name = c->req.host_kind == PROXY_HOST_NAME;
	struct px_dns_slot *sl = &p->dns[px_hash(p, c->req.host) & (PX_DNS_SLOTS - 1)];
	time_t now = time(NULL);

	*n = 0;
	if (name) {
		pthread_mutex_lock(&p->cache_lock);
		if (sl->n && sl->until > now && strcmp(sl->host, c->req.host) == 0) {
			*n = sl->n;
			memcpy(a, sl->a, sl->n * sizeof(*a));
		}
		pthread_mutex_unlock(&p->cache_lock);
		if (*n)
			return 0;
	} else {
		hints.ai_flags = AI_NUMERICHOST;
	}
	if (getaddrinfo(c->req.host, NULL, &hints, &res) != 0)
		return -ENOENT;
	for (ai = res; ai && *n < PX_DNS_ADDRS; ai = ai->ai_next) {
		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
		    ai->ai_addrlen > sizeof(*a))
			continue;
		memset(&a[*n], 0, sizeof(*a));
		memcpy(&a[*n], ai->ai_addr, ai->ai_addrlen);
		(*n)++;
	}
	freeaddrinfo(res);
	if (!*n)
		return -ENOENT;
	if (name) {
		pthread_mutex_lock(&p->cache_lock);
		snprintf(sl->host, sizeof(sl->host), "%s", c->req.host);
		sl->until = now + PX_DNS_TTL;
		sl->n = *n;
		memcpy(sl->a, a, *n * sizeof(*a));
		pthread_mutex_unlock(&p->cache_lock);
	}
	return 0;
}

/* Forgets a name none of whose cached addresses answered. */
static void px_resolve_failed(struct px_conn *c)
{
	struct proxy *p = c->p;
	struct px_dns_slot *sl = &p->dns[px_hash(p, c->req.host) & (PX_DNS_SLOTS - 1)];

	pthread_mutex_lock(&p->cache_lock);
	if (strcmp(sl->host, c->req.host) == 0)
		sl->n = 0;
	pthread_mutex_unlock(&p->cache_lock);
}

static int px_connect_upstream(struct px_conn *c)
{
	union px_addr a[PX_DNS_ADDRS];
	unsigned n;
	int err = px_resolve(c, a, &n);

	if (err)
		return err;
	err = -EHOSTUNREACH;
	for (unsigned i = 0; i < n; i++) {
		socklen_t al = a[i].sa.sa_family == AF_INET ? sizeof(a[i].in) : sizeof(a[i].in6);
		int fd = socket(a[i].sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
		    soerr = 0;
		socklen_t sl = sizeof(soerr);

		if (fd < 0)
			continue;
		if (a[i].sa.sa_family == AF_INET)
			a[i].in.sin_port = htons(c->req.port);
		else
			a[i].in6.sin6_port = htons(c->req.port);
		if ((connect(fd, &a[i].sa, al) == 0 || errno == EINPROGRESS) &&
		    px_wait(fd, POLLOUT, PX_HS_TIMEOUT) == 0 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
			int one = 1;

			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			c->ufd = fd;
			return 0;
		}
		err = soerr ? -soerr : -ETIMEDOUT;
		close(fd);
	}
	if (c->req.host_kind == PROXY_HOST_NAME)
		px_resolve_failed(c);
	return err;
}

/* Bytes both ways until either side closes (bypass, no key, other ports). */
static void px_relay_raw(struct px_conn *c)
{
	struct px_dir d[2] = {{.buf = c->b[0]}, {.buf = c->b[1]}};
	int fds[2] = {c->cfd, c->ufd};
	size_t size = secmem_buf_size();
	uint64_t bytes[2] = {0, 0};

	for (;;) {
		struct pollfd pfd[2] = {{.fd = fds[0]}, {.fd = fds[1]}};
		int r;

		for (int i = 0; i < 2; i++) {
			if (d[i].fill > d[i].sent)
				pfd[!i].events |= POLLOUT;
			else if (!d[i].eof)
				pfd[i].events |= POLLIN;
		}
		if (!pfd[0].events && !pfd[1].events)
			break;
		r = poll(pfd, 2, c->p->o.io_timeout_ms);
		if (r <= 0)
			break;
		for (int i = 0; i < 2; i++) {
			struct px_dir *x = &d[i];

			if (x->fill == x->sent && !x->eof &&
			    (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
				ssize_t n = recv(fds[i], x->buf, size, 0);

				if (n > 0) {
					x->fill = (size_t)n;
					x->sent = 0;
					bytes[i] += (uint64_t)n;
				} else if (n == 0 || errno != EAGAIN) {
					x->eof = true;
					shutdown(fds[!i], SHUT_WR);
				}
			}
			if (x->fill > x->sent) {
				ssize_t w = send(fds[!i], x->buf + x->sent, x->fill - x->sent,
				                 MSG_NOSIGNAL);

				if (w > 0)
					x->sent += (size_t)w;
				else if (w < 0 && errno != EAGAIN)
					goto out;
				if (x->sent == x->fill)
					x->fill = x->sent = 0;
			}
		}
		if (d[0].eof && d[1].eof)
			break;
	}
out:
	log_debug("relay %s -> %s:%u: %llu bytes up, %llu down", c->peer_s, c->req.host,
	          c->req.port, (unsigned long long)bytes[0], (unsigned long long)bytes[1]);
}

/* Drives a non-blocking handshake (accept or connect) to its end. */
static int px_handshake(SSL *s, int fd, bool server)
{
	for (;;) {
		int r = server ? SSL_accept(s) : SSL_connect(s), e;

		if (r == 1)
			return 0;
		e = SSL_get_error(s, r);
		if (e == SSL_ERROR_WANT_READ) {
			if (px_wait(fd, POLLIN, PX_HS_TIMEOUT))
				return -ETIMEDOUT;
		} else if (e == SSL_ERROR_WANT_WRITE) {
			if (px_wait(fd, POLLOUT, PX_HS_TIMEOUT))
				return -ETIMEDOUT;
		} else {
			return -EPROTO;
		}
	}
}

/* Writes all of buf through TLS (pages we answer ourselves). */
static int px_ssl_write_all(SSL *s, int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		size_t w = 0;
		int r = SSL_write_ex(s, (const char *)buf + done, len - done, &w), e;

		if (r == 1) {
			done += w;
			continue;
		}
		e = SSL_get_error(s, r);
		if (e == SSL_ERROR_WANT_READ    ? px_wait(fd, POLLIN, PX_HS_TIMEOUT)
		    : e == SSL_ERROR_WANT_WRITE ? px_wait(fd, POLLOUT, PX_HS_TIMEOUT)
		                                : -EPIPE)
			return -EPIPE;
	}
	return 0;
}

static void px_page(SSL *s, int fd, unsigned status, const char *text, const char *what,
                    const char *detail)
{
	char body[1024], head[256];
	int bl, hl;

	bl = snprintf(body, sizeof(body),
	              "<!DOCTYPE html>\n<html><head><title>%u %s</title></head><body>\n"
	              "<h1>%s</h1>\n<p>%s</p>\n<p>mtun inspection proxy</p>\n</body></html>\n",
	              status, text, what, detail);
	if (bl < 0 || (size_t)bl >= sizeof(body))
		bl = (int)strlen(body);
	hl = snprintf(head, sizeof(head),
	              "HTTP/1.1 %u %s\r\nContent-Type: text/html; charset=utf-8\r\n"
	              "Content-Length: %d\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
	              status, text, bl);
	if (px_ssl_write_all(s, fd, head, (size_t)hl) == 0)
		px_ssl_write_all(s, fd, body, (size_t)bl);
}

static const uint8_t *px_memmem(const uint8_t *h, size_t hl, const char *n)
{
	return memmem(h, hl, n, strlen(n));
}

/* Header field value (trimmed) for name in a head, or NULL. len is set. */
static const char *px_header(const char *head, size_t hlen, const char *name, size_t *len,
                             unsigned *count)
{
	const char *p = memchr(head, '\n', hlen), *end = head + hlen, *found = NULL;
	size_t nl = strlen(name);

	*count = 0;
	while (p && ++p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p)), *v;

		if (!eol)
			break;
		if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
			const char *ve = eol;

			v = p + nl + 1;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			if (!found) {
				found = v;
				*len = (size_t)(ve - v);
			}
			(*count)++;
		}
		p = eol;
	}
	return found;
}

static bool px_token_eq(const char *v, size_t len, const char *tok)
{
	return len == strlen(tok) && strncasecmp(v, tok, len) == 0;
}

/* Content-Length: digits only, one value (repeats must agree), at most 2^53. */
static int px_content_length(const char *head, size_t hl, uint64_t *out, bool *has)
{
	size_t len = 0;
	unsigned count;
	const char *v = px_header(head, hl, "content-length", &len, &count);
	uint64_t n = 0;

	*has = v != NULL;
	if (!v)
		return 0;
	if (count != 1 || len == 0 || len > 15)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -EINVAL;
		n = n * 10 + (uint64_t)(v[i] - '0');
	}
	*out = n;
	return 0;
}

/* Transfer-Encoding: absent (0), exactly "chunked" (1); anything else is refused. */
static int px_chunked(const char *head, size_t hl)
{
	size_t len = 0;
	unsigned count;
	const char *v = px_header(head, hl, "transfer-encoding", &len, &count);

	if (!v)
		return 0;
	return count == 1 && px_token_eq(v, len, "chunked") ? 1 : -EINVAL;
}

/* Parses the request head at the start of d; fills h's method, host and path. */
static int px_request_head(struct px_http *h, const char *head, size_t hl)
{
	struct px_dir *d = &h->d[0];
	const char *sp1 = memchr(head, ' ', hl), *sp2, *target, *hv;
	size_t tl, hvl = 0, ml;
	unsigned count;
	uint64_t cl = 0;
	bool has_cl;
	int chunked;

	if (!sp1 || (ml = (size_t)(sp1 - head)) == 0 || ml >= sizeof(h->method))
		return -EINVAL;
	for (size_t i = 0; i < ml; i++)
		if (head[i] < 'A' || head[i] > 'Z')
			return -EINVAL;
	memcpy(h->method, head, ml);
	h->method[ml] = '\0';
	target = sp1 + 1;
	sp2 = memchr(target, ' ', hl - (size_t)(target - head));
	if (!sp2 || strncmp(sp2, " HTTP/1.", 8) != 0)
		return -EINVAL;
	tl = (size_t)(sp2 - target);
	/* absolute-form: keep the path only */
	if (tl > 8 && strncasecmp(target, "https://", 8) == 0) {
		const char *slash = memchr(target + 8, '/', tl - 8);

		tl = slash ? tl - (size_t)(slash - target) : 1;
		target = slash ? slash : "/";
	}
	if (tl == 0 || target[0] != '/')
		return -EINVAL;
	snprintf(h->path, sizeof(h->path), "%.*s", (int)(tl < PX_PATH_LOG ? tl : PX_PATH_LOG),
	         target);
	if (tl > PX_PATH_LOG)
		h->path[PX_PATH_LOG - 1] = '~'; /* truncated for logs and rules */
	hv = px_header(head, hl, "host", &hvl, &count);
	if (count > 1)
		return -EINVAL;
	/* rules and logs use the inspected name, not a Host that may say otherwise */
	snprintf(h->host, sizeof(h->host), "%s", h->c->name);
	if (hv && hvl) {
		const char *colon = memchr(hv, ':', hvl);
		size_t nl = colon ? (size_t)(colon - hv) : hvl;

		if (nl != strlen(h->c->name) || strncasecmp(hv, h->c->name, nl) != 0)
			log_debug("request Host %.*s differs from %s", (int)nl, hv, h->c->name);
	}
	if (strcmp(h->method, "CONNECT") == 0)
		return -EINVAL;
	chunked = px_chunked(head, hl);
	if (chunked < 0 || px_content_length(head, hl, &cl, &has_cl) || (chunked && has_cl))
		return -EINVAL; /* ambiguous framing is a smuggling attempt */
	h->head_req = strcmp(h->method, "HEAD") == 0;
	h->resp_done = false;
	hv = px_header(head, hl, "upgrade", &hvl, &count);
	h->upgrade = hv != NULL;
	d->st = chunked ? PX_CHUNK_SIZE : cl ? PX_BODY : PX_WAIT;
	d->remain = cl;
	return 0;
}

/* The exchange is complete (a response may end before its request's body does). */
static void px_response_done(struct px_http *h)
{
	h->resp_done = true;
	if (h->d[0].st == PX_WAIT)
		h->d[0].st = PX_HEAD;
}

static int px_response_head(struct px_http *h, const char *head, size_t hl, bool *log_it)
{
	struct px_dir *d = &h->d[1];
	unsigned status = 0;
	uint64_t cl = 0;
	bool has_cl;
	int chunked;

	if (hl < 12 || strncmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ')
		return -EINVAL;
	for (int i = 9; i < 12; i++) {
		if (head[i] < '0' || head[i] > '9')
			return -EINVAL;
		status = status * 10 + (unsigned)(head[i] - '0');
	}
	*log_it = true;
	chunked = px_chunked(head, hl);
	if (chunked < 0 || px_content_length(head, hl, &cl, &has_cl) || (chunked && has_cl))
		return -EINVAL;
	log_event(LOG_LVL_INFO, "proxy.http",
	          "tenant=%s client=%s method=%s host=%s path=%s status=%u",
	          inspect_tenant_name(h->c->t), h->c->peer_s, h->method, h->host, h->path, status);
	if (status == 101 && h->upgrade) {
		d->st = PX_RAW;
		h->d[0].st = PX_RAW;
		return 0;
	}
	if (status >= 100 && status < 200)
		return 0; /* interim: another head follows */
	if (h->head_req || status == 204 || status == 304)
		d->st = PX_HEAD;
	else if (chunked)
		d->st = PX_CHUNK_SIZE;
	else if (has_cl)
		d->st = cl ? PX_BODY : PX_HEAD;
	else
		d->st = PX_UNTIL_CLOSE;
	d->remain = cl;
	if (d->st == PX_HEAD)
		px_response_done(h);
	return 0;
}

/* A line (up to CRLF) at buf[off..fill): its length with the CRLF, 0 if incomplete. */
static size_t px_line(const struct px_dir *d)
{
	const uint8_t *p = px_memmem(d->buf + d->fwd, d->fill - d->fwd, "\r\n");

	return p ? (size_t)(p - (d->buf + d->fwd)) + 2 : 0;
}

/* The body ended: the request side waits for its response; the response side is done. */
static void px_body_end(struct px_http *h, int i)
{
	if (i == 0) {
		h->d[0].st = h->resp_done ? PX_HEAD : PX_WAIT;
	} else {
		h->d[1].st = PX_HEAD;
		px_response_done(h);
	}
}

/*
 * Advances d->fwd over what may be forwarded. 0, or -EINVAL (malformed: close), -EMSGSIZE
 * (a head or line larger than the buffer), -EACCES (the request is blocked).
 */
static int px_parse(struct px_http *h, int i)
{
	struct px_dir *d = &h->d[i];

	for (;;) {
		size_t avail = d->fill - d->fwd, n;

		switch (d->st) {
		case PX_WAIT:
			return 0;
		case PX_RAW:
		case PX_UNTIL_CLOSE:
			d->fwd = d->fill;
			return 0;
		case PX_HEAD: {
			const uint8_t *e;
			const char *head = (const char *)d->buf + d->fwd;
			bool log_it = false;
			int r;

			if (avail == 0)
				return 0;
			e = px_memmem(d->buf + d->fwd, avail, "\r\n\r\n");
			if (!e)
				return d->fwd == 0 && d->fill == d->size ? -EMSGSIZE : 0;
			n = (size_t)(e - (d->buf + d->fwd)) + 4;
			if (i == 0) {
				r = px_request_head(h, head, n);
				if (r)
					return r;
				h->requests++;
				if (inspect_tenant_blocked(h->c->t, h->host, h->path)) {
					log_event(LOG_LVL_INFO, "proxy.http",
					          "tenant=%s client=%s method=%s host=%s path=%s "
					          "status=403 "
					          "blocked=1",
					          inspect_tenant_name(h->c->t), h->c->peer_s,
					          h->method, h->host, h->path);
					return -EACCES;
				}
			} else {
				r = px_response_head(h, head, n, &log_it);
				if (r)
					return r;
			}
			d->fwd += n;
			break;
		}
		case PX_BODY:
			n = avail < d->remain ? avail : (size_t)d->remain;
			d->fwd += n;
			d->remain -= n;
			if (d->remain == 0)
				px_body_end(h, i);
			if (d->fwd == d->fill)
				return 0;
			break;
		case PX_CHUNK_SIZE: {
			uint64_t sz = 0;
			size_t k = 0;

			n = px_line(d);
			if (!n)
				return avail >= 1024 ? -EINVAL : 0;
			for (; k < n - 2; k++) {
				int c = d->buf[d->fwd + k], v;

				if (c >= '0' && c <= '9')
					v = c - '0';
				else if (c >= 'a' && c <= 'f')
					v = c - 'a' + 10;
				else if (c >= 'A' && c <= 'F')
					v = c - 'A' + 10;
				else
					break;
				if (k >= 15)
					return -EINVAL;
				sz = sz * 16 + (uint64_t)v;
			}
			if (k == 0 || (k < n - 2 && d->buf[d->fwd + k] != ';' &&
			               d->buf[d->fwd + k] != ' ' && d->buf[d->fwd + k] != '\t'))
				return -EINVAL;
			d->fwd += n;
			d->remain = sz;
			d->st = sz ? PX_CHUNK_DATA : PX_TRAILER;
			break;
		}
		case PX_CHUNK_DATA:
			n = avail < d->remain ? avail : (size_t)d->remain;
			d->fwd += n;
			d->remain -= n;
			if (d->remain == 0)
				d->st = PX_CHUNK_CRLF;
			if (d->fwd == d->fill)
				return 0;
			break;
		case PX_CHUNK_CRLF:
			if (avail < 2)
				return 0;
			if (d->buf[d->fwd] != '\r' || d->buf[d->fwd + 1] != '\n')
				return -EINVAL;
			d->fwd += 2;
			d->st = PX_CHUNK_SIZE;
			break;
		case PX_TRAILER:
			n = px_line(d);
			if (!n)
				return avail >= 8192 ? -EINVAL : 0;
			d->fwd += n;
			if (n == 2)
				px_body_end(h, i);
			break;
		}
	}
}

/* Relays HTTP/1.1 between the two TLS sessions until either ends or a rule stops it. */
static void px_relay_http(struct px_conn *c)
{
	struct px_http h = {.c = c};
	SSL *ssl[2] = {c->cs, c->us};
	int fds[2] = {c->cfd, c->ufd};
	size_t size = secmem_buf_size();

	for (int i = 0; i < 2; i++)
		h.d[i] = (struct px_dir){.buf = c->b[i], .size = size};
	for (;;) {
		short ev[2] = {0, 0};
		bool progress = false;

		for (int i = 0; i < 2; i++) {
			struct px_dir *d = &h.d[i];
			SSL *src = ssl[i], *dst = ssl[!i];
			int r, e;

			if (d->sent < d->fwd) {
				size_t w = 0;

				r = SSL_write_ex(dst, d->buf + d->sent, d->fwd - d->sent, &w);
				if (r == 1) {
					d->sent += w;
					progress = true;
				} else {
					e = SSL_get_error(dst, r);
					if (e == SSL_ERROR_WANT_READ)
						ev[!i] |= POLLIN;
					else if (e == SSL_ERROR_WANT_WRITE)
						ev[!i] |= POLLOUT;
					else
						goto out;
				}
			}
			if (d->sent == d->fwd && d->fwd > 0) {
				memmove(d->buf, d->buf + d->fwd, d->fill - d->fwd);
				d->fill -= d->fwd;
				d->fwd = d->sent = 0;
			}
			{
				size_t before = d->fwd;

				r = px_parse(&h, i);
				if (r == -EACCES) {
					px_page(c->cs, c->cfd, 403, "Forbidden", "Blocked",
					        "This address is blocked by your organization's "
					        "policy.");
					goto out;
				}
				if (r) {
					log_event(LOG_LVL_WARN, "proxy.http_error",
					          "tenant=%s client=%s host=%s side=%s err=%d",
					          inspect_tenant_name(c->t), c->peer_s, c->name,
					          i ? "upstream" : "client", r);
					if (i == 0 && h.d[1].fill == 0)
						px_page(c->cs, c->cfd, r == -EMSGSIZE ? 431 : 400,
						        "Bad Request", "Bad request",
						        "The proxy could not read this request.");
					goto out;
				}
				progress |= d->fwd != before;
			}
			if (!d->eof && d->fill < d->size &&
			    (d->fwd == d->fill || d->st == PX_HEAD)) {
				size_t got = 0;

				r = SSL_read_ex(src, d->buf + d->fill, d->size - d->fill, &got);
				if (r == 1) {
					d->fill += got;
					progress = true;
				} else {
					e = SSL_get_error(src, r);
					if (e == SSL_ERROR_WANT_READ) {
						ev[i] |= POLLIN;
					} else if (e == SSL_ERROR_WANT_WRITE) {
						ev[i] |= POLLOUT;
					} else {
						d->eof = true;
						progress = true;
					}
				}
			}
			if (d->eof && d->sent == d->fill && !d->shut) {
				d->shut = true;
				SSL_shutdown(dst);
			}
		}
		/* the response side closed, or the client left with nothing pending */
		if (h.d[1].shut || (h.d[0].shut && h.d[1].st == PX_HEAD && h.d[1].fill == 0 &&
		                    h.d[0].st != PX_WAIT))
			break;
		if (progress)
			continue;
		{
			struct pollfd pfd[2] = {{.fd = fds[0], .events = ev[0]},
			                        {.fd = fds[1], .events = ev[1]}};

			if (!ev[0] && !ev[1])
				break;
			if (poll(pfd, 2, c->p->o.io_timeout_ms) <= 0)
				break;
		}
	}
out:
	log_debug("http %s %s: %u request(s)", c->peer_s, c->name, h.requests);
}

/* After a refused upstream: the tenant's error page, or nothing (the client's TLS fails). */
static void px_upstream_failed(struct px_conn *c, X509 *leaf, EVP_PKEY *key, STACK_OF(X509) *chain,
                               const char *why)
{
	log_event(LOG_LVL_WARN, "proxy.upstream_refused",
	          "tenant=%s client=%s host=%s reason=\"%s\"", inspect_tenant_name(c->t), c->peer_s,
	          c->name, why);
	if (!inspect_tenant_error_page(c->t))
		return;
	c->cs = SSL_new(c->p->cl_ctx);
	if (!c->cs || SSL_use_certificate(c->cs, leaf) != 1 ||
	    SSL_use_PrivateKey(c->cs, key) != 1 || SSL_set1_chain(c->cs, chain) != 1 ||
	    !SSL_set_fd(c->cs, c->cfd) || px_handshake(c->cs, c->cfd, true))
		return;
	px_page(c->cs, c->cfd, 502, "Bad Gateway", "The site's certificate was refused", why);
	SSL_shutdown(c->cs);
}

static int px_alpn_select(SSL *s, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned inlen, void *arg)
{
	static const unsigned char h11[] = "\x08http/1.1";

	(void)s;
	(void)arg;
	/* only what we relay with HTTP awareness */
	for (unsigned i = 0; i < inlen; i += 1u + in[i]) {
		if (in[i] == 8 && i + 9 <= inlen && memcmp(in + i, h11, 9) == 0) {
			*out = in + i + 1;
			*outlen = 8;
			return SSL_TLSEXT_ERR_OK;
		}
	}
	return SSL_TLSEXT_ERR_NOACK;
}

static struct px_sess_slot *px_sess_slot(struct proxy *p, const char *key)
{
	return &p->sess[px_hash(p, key) & (PX_SESS_SLOTS - 1)];
}

static bool px_sess_expired(SSL_SESSION *s, time_t now)
{
	long ttl = SSL_SESSION_get_timeout(s);

	return now - SSL_SESSION_get_time(s) >= (ttl < PX_SESS_TTL ? ttl : PX_SESS_TTL);
}

/*
 * A session to offer the upstream for key, or NULL. TLS 1.3 sessions are used once (the
 * server sends new tickets); earlier ones stay for the next connection.
 */
static SSL_SESSION *px_sess_take(struct proxy *p, const char *key)
{
	struct px_sess_slot *sl = px_sess_slot(p, key);
	SSL_SESSION *s = NULL;
	time_t now = time(NULL);

	pthread_mutex_lock(&p->cache_lock);
	while (!s && sl->n && strcmp(sl->key, key) == 0) {
		s = sl->s[sl->n - 1];
		if (px_sess_expired(s, now) || !SSL_SESSION_is_resumable(s)) {
			SSL_SESSION_free(s);
			s = NULL;
			sl->s[--sl->n] = NULL;
		} else if (SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION) {
			sl->s[--sl->n] = NULL;
		} else if (!SSL_SESSION_up_ref(s)) {
			s = NULL;
			break;
		}
	}
	pthread_mutex_unlock(&p->cache_lock);
	return s;
}

/* Keeps s (the caller's reference) for key; another key in the same slot is replaced. */
static void px_sess_put(struct proxy *p, const char *key, SSL_SESSION *s)
{
	struct px_sess_slot *sl = px_sess_slot(p, key);
	SSL_SESSION *drop[PX_SESS_KEEP + 1] = {NULL};
	unsigned nd = 0;

	pthread_mutex_lock(&p->cache_lock);
	if (strcmp(sl->key, key) != 0) {
		while (sl->n)
			drop[nd++] = sl->s[--sl->n];
		snprintf(sl->key, sizeof(sl->key), "%s", key);
	}
	if (sl->n == PX_SESS_KEEP) {
		drop[nd++] = sl->s[0];
		memmove(sl->s, sl->s + 1, (PX_SESS_KEEP - 1) * sizeof(sl->s[0]));
		sl->n--;
	}
	sl->s[sl->n++] = s;
	pthread_mutex_unlock(&p->cache_lock);
	for (unsigned i = 0; i < nd; i++)
		SSL_SESSION_free(drop[i]);
}

/*
 * OpenSSL's new-session callback on the upstream side: called once a full handshake has
 * verified the upstream (a failed verification ends the handshake first), or when a
 * resumed one gets a new ticket. Takes the reference.
 */
static int px_sess_new(SSL *ssl, SSL_SESSION *s)
{
	struct px_conn *c = SSL_get_app_data(ssl);

	if (!c || !c->sess_key[0] || SSL_get_verify_result(ssl) != X509_V_OK ||
	    !SSL_SESSION_is_resumable(s))
		return 0; /* OpenSSL keeps its reference */
	px_sess_put(c->p, c->sess_key, s);
	return 1;
}

static void px_sess_free_all(struct proxy *p)
{
	if (!p->sess)
		return;
	for (size_t i = 0; i < PX_SESS_SLOTS; i++)
		for (unsigned j = 0; j < p->sess[i].n; j++)
			SSL_SESSION_free(p->sess[i].s[j]);
	OPENSSL_cleanse(p->sess, PX_SESS_SLOTS * sizeof(*p->sess));
	free(p->sess);
	p->sess = NULL;
}

static void px_inspect(struct px_conn *c, const struct tls_hello *hello)
{
	SSL_SESSION *sess;
	int kl;
	X509 *leaf = NULL;
	EVP_PKEY *key = NULL;
	STACK_OF(X509) *chain = NULL;
	enum inspect_mode mode;
	char why[256];
	long vr;

	mode = inspect_tenant_leaf(c->p->node, c->t, c->name, &leaf, &key, &chain);
	if (mode == INSPECT_RELAY) {
		log_event(LOG_LVL_INFO, "proxy.tunnel",
		          "tenant=%s client=%s host=%s port=%u why=no-key",
		          inspect_tenant_name(c->t), c->peer_s, c->name, c->req.port);
		px_relay_raw(c);
		return;
	}
	if (mode == INSPECT_REFUSE) {
		log_event(LOG_LVL_WARN, "proxy.refused",
		          "tenant=%s client=%s host=%s why=fail-closed", inspect_tenant_name(c->t),
		          c->peer_s, c->name);
		return;
	}
	inspect_test_leaf_key(c->name, key);
	/* upstream first: a refused upstream never sees the client's plaintext */
	c->us = SSL_new(c->p->up_ctx);
	if (!c->us || !SSL_set_fd(c->us, c->ufd) || !SSL_set_app_data(c->us, c))
		goto out;
	/* sessions are kept per tenant: an origin cannot link two tenants' connections */
	kl = snprintf(c->sess_key, sizeof(c->sess_key), "%s\n%s\n%u", inspect_tenant_name(c->t),
	              c->name, c->req.port);
	if (kl < 0 || (size_t)kl >= sizeof(c->sess_key))
		c->sess_key[0] = '\0';
	sess = c->sess_key[0] ? px_sess_take(c->p, c->sess_key) : NULL;
	if (sess) {
		int ok = SSL_set_session(c->us, sess);

		SSL_SESSION_free(sess);
		if (!ok)
			goto out;
	}
	if (c->req.host_kind == PROXY_HOST_NAME || hello->sni[0]) {
		if (!SSL_set_tlsext_host_name(c->us, c->name) || !SSL_set1_host(c->us, c->name))
			goto out;
	} else if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->us), c->name)) {
		goto out;
	}
	if (tls_hello_offers_alpn(hello, "http/1.1") &&
	    SSL_set_alpn_protos(c->us, (const unsigned char *)"\x08http/1.1", 9) != 0)
		goto out;
	if (px_handshake(c->us, c->ufd, false)) {
		vr = SSL_get_verify_result(c->us);
		snprintf(why, sizeof(why), "%s",
		         vr != X509_V_OK ? X509_verify_cert_error_string(vr)
		                         : "TLS handshake failed");
		px_upstream_failed(c, leaf, key, chain, why);
		goto out;
	}
	c->cs = SSL_new(c->p->cl_ctx);
	if (!c->cs || SSL_use_certificate(c->cs, leaf) != 1 ||
	    SSL_use_PrivateKey(c->cs, key) != 1 || SSL_set1_chain(c->cs, chain) != 1 ||
	    !SSL_set_fd(c->cs, c->cfd))
		goto out;
	if (px_handshake(c->cs, c->cfd, true)) {
		log_event(LOG_LVL_INFO, "proxy.client_handshake_failed",
		          "tenant=%s client=%s host=%s", inspect_tenant_name(c->t), c->peer_s,
		          c->name);
		goto out;
	}
	log_event(LOG_LVL_DEBUG, "proxy.inspect", "tenant=%s client=%s host=%s port=%u",
	          inspect_tenant_name(c->t), c->peer_s, c->name, c->req.port);
	px_relay_http(c);
out:
	ERR_clear_error();
	X509_free(leaf);
	EVP_PKEY_free(key);
	sk_X509_pop_free(chain, X509_free);
}

static void px_serve(struct px_conn *c)
{
	size_t size = secmem_buf_size(), len = 0;
	enum proxy_verdict v = PROXY_NEED_MORE;
	struct tls_hello hello;
	enum tls_hello_verdict hv = TLS_HELLO_NEED_MORE;
	bool inspect_port = false;
	int err;

	while (v == PROXY_NEED_MORE) {
		if (px_peek(c->cfd, c->b[0], size < PROXY_HEAD_MAX ? size : PROXY_HEAD_MAX, &len))
			return;
		v = proxy_parse_connect((const char *)c->b[0], len, &c->req);
	}
	if (v == PROXY_REFUSE) {
		log_event(LOG_LVL_INFO, "proxy.bad_request", "client=%s status=%u reason=\"%s\"",
		          c->peer_s, c->req.status, c->req.reason);
		px_status(c, c->req.status,
		          c->req.status == 405 ? "Method Not Allowed" : "Bad Request");
		return;
	}
	if (recv(c->cfd, c->b[0], c->req.head_len, 0) != (ssize_t)c->req.head_len)
		return;
	secmem_buf_put(c->b[0]);
	c->b[0] = secmem_buf_get();
	if (!c->b[0])
		return;
	c->t = inspect_tenant_of(c->p->node, c->li, (struct sockaddr *)&c->peer);
	if (!c->t) {
		log_event(LOG_LVL_WARN, "proxy.no_tenant", "client=%s", c->peer_s);
		px_status(c, 403, "Forbidden");
		return;
	}
	err = px_connect_upstream(c);
	if (err) {
		log_event(LOG_LVL_INFO, "proxy.upstream_unreachable",
		          "tenant=%s host=%s port=%u err=%d", inspect_tenant_name(c->t),
		          c->req.host, c->req.port, err);
		px_status(c, err == -ENOENT ? 502 : 504,
		          err == -ENOENT ? "Bad Gateway" : "Gateway Timeout");
		return;
	}
	if (px_send_all(c->cfd, "HTTP/1.1 200 Connection established\r\n\r\n", 39))
		return;
	c->name = c->req.host;
	for (size_t i = 0; i < c->p->o.nports; i++)
		inspect_port |= c->p->o.ports[i] == c->req.port;
	if (!inspect_port) {
		log_event(LOG_LVL_INFO, "proxy.tunnel",
		          "tenant=%s client=%s host=%s port=%u why=port", inspect_tenant_name(c->t),
		          c->peer_s, c->req.host, c->req.port);
		px_relay_raw(c);
		return;
	}
	len = 0;
	while (hv == TLS_HELLO_NEED_MORE) {
		if (px_peek(c->cfd, c->b[0], size < TLS_HELLO_BUF_MAX ? size : TLS_HELLO_BUF_MAX,
		            &len))
			return;
		hv = tls_parse_client_hello(c->b[0], len, &hello);
	}
	OPENSSL_cleanse(c->b[0], len);
	if (hv == TLS_HELLO_BAD) {
		log_event(LOG_LVL_INFO, "proxy.bad_hello",
		          "tenant=%s client=%s host=%s reason=\"%s\"", inspect_tenant_name(c->t),
		          c->peer_s, c->req.host, hello.reason);
		return;
	}
	/* a name CONNECTed to must be the name asked for: no fronting past bypass or block rules */
	if (hello.sni[0] && c->req.host_kind == PROXY_HOST_NAME && strcmp(hello.sni, c->req.host)) {
		log_event(LOG_LVL_WARN, "proxy.sni_mismatch", "tenant=%s client=%s host=%s sni=%s",
		          inspect_tenant_name(c->t), c->peer_s, c->req.host, hello.sni);
		return;
	}
	if (hello.sni[0])
		c->name = hello.sni;
	if (inspect_tenant_bypass(c->t, c->name)) {
		log_event(LOG_LVL_INFO, "proxy.tunnel",
		          "tenant=%s client=%s host=%s port=%u why=bypass",
		          inspect_tenant_name(c->t), c->peer_s, c->name, c->req.port);
		px_relay_raw(c);
		return;
	}
	px_inspect(c, &hello);
}

static void px_conn_serve(struct px_conn *c)
{
	struct proxy *p = c->p;

	c->b[0] = secmem_buf_get();
	c->b[1] = secmem_buf_get();
	if (!c->b[0] || !c->b[1])
		log_event(LOG_LVL_WARN, "proxy.no_buffers", "client=%s", c->peer_s);
	else if (px_nonblock(c->cfd) == 0)
		px_serve(c);
	if (c->cs) {
		SSL_free(c->cs);
	}
	/* a close_notify keeps the session resumable (OpenSSL drops it otherwise); one that
	 * ended in a fatal error is already dropped */
	if (c->us && SSL_is_init_finished(c->us))
		SSL_shutdown(c->us);
	SSL_free(c->us);
	secmem_buf_put(c->b[0]);
	secmem_buf_put(c->b[1]);
	close(c->cfd);
	if (c->ufd >= 0)
		close(c->ufd);
	ERR_clear_error();
	OPENSSL_cleanse(c, sizeof(*c));
	free(c);
	atomic_fetch_sub(&p->clients, 1);
}

/* Serves queued connections one at a time; exits after PX_IDLE_SEC with none, or at stop. */
static void *px_worker(void *arg)
{
	struct proxy *p = arg;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct px_conn *c = p->q_head;

		if (!c) {
			struct timespec ts;
			int err;

			if (p->stopping)
				break;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += PX_IDLE_SEC;
			p->idle++;
			err = pthread_cond_timedwait(&p->cond, &p->lock, &ts);
			p->idle--;
			if (err == ETIMEDOUT && !p->q_head)
				break;
			continue;
		}
		p->q_head = c->next;
		if (!p->q_head)
			p->q_tail = NULL;
		p->queued--;
		pthread_mutex_unlock(&p->lock);
		px_conn_serve(c);
		pthread_mutex_lock(&p->lock);
	}
	p->workers--;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	OPENSSL_thread_stop();
	return NULL;
}

/* Queues c for a worker, starting one when none is idle. 0 or -errno (c not queued). */
static int px_dispatch(struct proxy *p, struct px_conn *c, pthread_attr_t *attr)
{
	pthread_t th;
	int ret = 0;

	pthread_mutex_lock(&p->lock);
	if (p->idle <= p->queued) {
		if (p->workers >= p->o.max_clients || pthread_create(&th, attr, px_worker, p)) {
			/* a worker that is busy takes it when it is done */
			if (p->workers == 0)
				ret = -EAGAIN;
		} else {
			p->workers++;
		}
	}
	if (!ret) {
		c->next = NULL;
		if (p->q_tail)
			p->q_tail->next = c;
		else
			p->q_head = c;
		p->q_tail = c;
		p->queued++;
		pthread_cond_signal(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
	return ret;
}

static int px_ctx_new(const struct proxy_opts *o, SSL_CTX **up, SSL_CTX **cl)
{
	const long opts =
	    SSL_OP_CLEANSE_PLAINTEXT | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION;

	*up = SSL_CTX_new(TLS_client_method());
	*cl = SSL_CTX_new(TLS_server_method());
	if (!*up || !*cl)
		return -ENOMEM;
	for (int i = 0; i < 2; i++) {
		SSL_CTX *x = i ? *cl : *up;

		SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
		SSL_CTX_set_options(x, opts);
		/* record buffers stay for the connection: releasing them after each read would
		 * allocate (and zero on free) 16 KiB or more per record */
		SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE |
		                        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	}
	/* clients: no session tickets or resumption, as they would need a ticket key to guard */
	SSL_CTX_set_options(*cl, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(*cl, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(*cl, 0);
	/* upstreams: sessions resumed from px_sess_*, filled after verified handshakes */
	SSL_CTX_set_session_cache_mode(*up,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(*up, px_sess_new);
	SSL_CTX_set_alpn_select_cb(*cl, px_alpn_select, NULL);
	SSL_CTX_set_verify(*up, SSL_VERIFY_PEER, NULL);
	if (o->upstream_ca ? SSL_CTX_load_verify_locations(*up, o->upstream_ca, NULL) != 1
	                   : SSL_CTX_set_default_verify_paths(*up) != 1) {
		log_warnx("cannot load the upstream trust store %s",
		          o->upstream_ca ? o->upstream_ca : "(system)");
		return -EINVAL;
	}
	return 0;
}

int proxy_new(struct inspect_node *n, const struct proxy_opts *o, struct proxy **out)
{
	struct proxy *p = calloc(1, sizeof(*p));
	int ret = -ENOMEM;

	if (!p)
		return -ENOMEM;
	p->node = n;
	p->o = *o;
	p->fds = calloc(o->nlisten, sizeof(int));
	p->sess = calloc(PX_SESS_SLOTS, sizeof(*p->sess));
	p->dns = calloc(PX_DNS_SLOTS, sizeof(*p->dns));
	if (!p->fds || !p->sess || !p->dns)
		goto err;
	if (pthread_mutex_init(&p->lock, NULL))
		goto err;
	if (pthread_cond_init(&p->cond, NULL)) {
		pthread_mutex_destroy(&p->lock);
		goto err;
	}
	p->lock_init = true;
	if (pthread_mutex_init(&p->cache_lock, NULL))
		goto err;
	p->cache_lock_init = true;
	if (RAND_bytes((unsigned char *)&p->seed, sizeof(p->seed)) != 1) {
		ret = -EIO;
		goto err;
	}
	ret = px_ctx_new(o, &p->up_ctx, &p->cl_ctx);
	if (ret)
		goto err;
	for (; p->nfds < o->nlisten; p->nfds++) {
		ret = conf_listen_tcp(o->listen[p->nfds], 1024, "listen");
		if (ret < 0)
			goto err;
		p->fds[p->nfds] = ret;
		log_event(LOG_LVL_INFO, "proxy.listening", "addr=%s", o->listen[p->nfds]);
	}
	*out = p;
	return 0;
err:
	proxy_free(p);
	return ret;
}

int proxy_run(struct proxy *p, volatile int *stop)
{
	struct pollfd pfd[16];
	pthread_attr_t attr;

	if (p->nfds > 16 || pthread_attr_init(&attr))
		return -EINVAL;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, PX_STACK);
	for (size_t i = 0; i < p->nfds; i++)
		pfd[i] = (struct pollfd){.fd = p->fds[i], .events = POLLIN};
	while (!*stop) {
		int r = poll(pfd, (nfds_t)p->nfds, 1000);

		if (r < 0 && errno != EINTR)
			break;
		for (size_t i = 0; r > 0 && i < p->nfds; i++) {
			struct px_conn *c;
			socklen_t sl;
			int fd, one = 1;

			if (!(pfd[i].revents & POLLIN))
				continue;
			c = calloc(1, sizeof(*c));
			if (!c)
				continue;
			sl = sizeof(c->peer);
			fd = accept4(p->fds[i], (struct sockaddr *)&c->peer, &sl, SOCK_CLOEXEC);
			if (fd < 0) {
				free(c);
				continue;
			}
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			c->p = p;
			c->li = i;
			c->cfd = fd;
			c->ufd = -1;
			if (c->peer.ss_family == AF_INET6) {
				struct sockaddr_in6 *a = (struct sockaddr_in6 *)&c->peer;

				inet_ntop(AF_INET6, &a->sin6_addr, c->peer_s, sizeof(c->peer_s));
			} else {
				struct sockaddr_in *a = (struct sockaddr_in *)&c->peer;

				inet_ntop(AF_INET, &a->sin_addr, c->peer_s, sizeof(c->peer_s));
			}
			if (atomic_fetch_add(&p->clients, 1) >= p->o.max_clients) {
				atomic_fetch_sub(&p->clients, 1);
				log_event(LOG_LVL_WARN, "proxy.busy", "client=%s", c->peer_s);
				close(fd);
				free(c);
				continue;
			}
			if (px_dispatch(p, c, &attr)) {
				atomic_fetch_sub(&p->clients, 1);
				close(fd);
				free(c);
			}
		}
	}
	pthread_attr_destroy(&attr);
	/* let connections finish their current exchange, then the workers leave */
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < 50; i++) {
		bool done;

		pthread_mutex_lock(&p->lock);
		done = p->workers == 0;
		pthread_mutex_unlock(&p->lock);
		if (done)
			return 0;
		usleep(100 * 1000);
	}
	return -EBUSY;
}

void proxy_free(struct proxy *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nfds; i++)
		close(p->fds[i]);
	free(p->fds);
	px_sess_free_all(p);
	free(p->dns);
	SSL_CTX_free(p->up_ctx);
	SSL_CTX_free(p->cl_ctx);
	if (p->cache_lock_init)
		pthread_mutex_destroy(&p->cache_lock);
	if (p->lock_init) {
		pthread_cond_destroy(&p->cond);
		pthread_mutex_destroy(&p->lock);
	}
	free(p);
}
