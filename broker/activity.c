/* The activity log's sinks: JSON lines appended to a file, sent to syslog, or queued for a
 * writer thread that keeps a TCP connection to a collector. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "activity.h"
#include "log.h"

enum activity_kind {
	ACT_FILE,
	ACT_SYSLOG,
	ACT_TCP,
};

#define ACT_BACKOFF_MIN_MS 100
#define ACT_BACKOFF_MAX_MS 10000
#define ACT_IO_TIMEOUT_MS  2000 /* connect, and a stalled collector's send */
#define ACT_DRAIN_MS       1000
#define ACT_DROP_LOG_EVERY 10000

struct activity {
	enum activity_kind kind;
	char *spec;
	char *path;           /* file */
	char *host, *port;    /* tcp */
	pthread_mutex_t lock; /* everything below */
	int fd;               /* file; the tcp socket belongs to the writer thread */
	uint64_t drops, drops_logged;
	uint64_t last_drop_log_ms;
	/* tcp: a ring of malloc'd lines */
	char **q;
	unsigned qhead, qlen;
	pthread_cond_t cond;
	bool stop, thread_started;
	pthread_t thread;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Called with a->lock held: at most one line per ACT_DROP_LOG_EVERY ms unless forced. */
static void activity_log_drops(struct activity *a, bool force)
{
	uint64_t now = mono_ms();

	if (a->drops == a->drops_logged)
		return;
	if (!force && a->last_drop_log_ms && now - a->last_drop_log_ms < ACT_DROP_LOG_EVERY)
		return;
	log_warnx("activity: sink=%s dropped=%llu total_dropped=%llu", a->spec,
	          (unsigned long long)(a->drops - a->drops_logged), (unsigned long long)a->drops);
	a->drops_logged = a->drops;
	a->last_drop_log_ms = now;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len, i;
	uint32_t c;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
		c = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		c = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		c = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
	    (len == 4 && (c < 0x10000 || c > 0x10ffff)))
		return 0;
	return len;
}

/* A JSON string of s: cut at ACTIVITY_FIELD_MAX bytes, invalid UTF-8 as U+FFFD. */
static json_object *activity_str(const char *s)
{
	char buf[ACTIVITY_FIELD_MAX * 3 + 4];
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	size_t n = strnlen((const char *)p, ACTIVITY_FIELD_MAX + 1), in = 0, out = 0, k;

	if (n > ACTIVITY_FIELD_MAX)
		n = ACTIVITY_FIELD_MAX;
	while (in < n) {
		k = utf8_seq(p + in, n - in);
		if (k) {
			memcpy(buf + out, p + in, k);
			out += k;
			in += k;
		} else {
			memcpy(buf + out, "\xef\xbf\xbd", 3);
			out += 3;
			in++;
		}
	}
	return json_object_new_string_len(buf, (int)out);
}

static void rfc3339_ms(uint64_t ms, char *buf, size_t size)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	if (!gmtime_r(&s, &tm)) {
		snprintf(buf, size, "1970-01-01T00:00:00.000Z");
		return;
	}
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
}

int activity_format(const struct activity_rec *r, char *buf, size_t size)
{
	char start[64], end[64], proto[8];
	json_object *o = json_object_new_object();
	const char *js;
	size_t len;
	int err = -ENOMEM;

	if (!o)
		return -ENOMEM;
	rfc3339_ms(r->start_ms, start, sizeof(start));
	rfc3339_ms(r->end_ms, end, sizeof(end));
	if (r->proto == 6)
		snprintf(proto, sizeof(proto), "tcp");
	else if (r->proto == 17)
		snprintf(proto, sizeof(proto), "udp");
	else
		snprintf(proto, sizeof(proto), "%u", r->proto);
	if (json_object_object_add(o, "tenant", activity_str(r->tenant)) ||
	    json_object_object_add(o, "user", activity_str(r->user)) ||
	    json_object_object_add(o, "device", activity_str(r->device)) ||
	    json_object_object_add(o, "app", activity_str(r->app)) ||
	    json_object_object_add(o, "port", json_object_new_int(r->port)) ||
	    json_object_object_add(o, "proto", json_object_new_string(proto)) ||
	    json_object_object_add(o, "connector", activity_str(r->connector)) ||
	    json_object_object_add(o, "broker", activity_str(r->broker)) ||
	    json_object_object_add(o, "bytes_up", json_object_new_uint64(r->bytes_up)) ||
	    json_object_object_add(o, "bytes_down", json_object_new_uint64(r->bytes_down)) ||
	    json_object_object_add(o, "start", json_object_new_string(start)) ||
	    json_object_object_add(o, "end", json_object_new_string(end)) ||
	    json_object_object_add(
		o, "duration_ms",
		json_object_new_uint64(r->end_ms > r->start_ms ? r->end_ms - r->start_ms : 0)) ||
	    json_object_object_add(o, "status", activity_str(r->status)) ||
	    json_object_object_add(o, "reason", activity_str(r->reason)) ||
	    json_object_object_add(o, "rule_id", json_object_new_int64(r->rule_id)) ||
	    json_object_object_add(o, "rule", activity_str(r->rule)) ||
	    json_object_object_add(o, "segment", activity_str(r->segment)))
		goto out;
	js = json_object_to_json_string_length(
	    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!js)
		goto out;
	err = -ENOSPC;
	if (len + 2 > size)
		goto out;
	memcpy(buf, js, len);
	buf[len] = '\n';
	buf[len + 1] = '\0';
	err = (int)len + 1;
out:
	json_object_put(o);
	return err;
}

/* Splits "HOST:PORT" or "[V6]:PORT". */
static int activity_parse_tcp(struct activity *a, const char *hp)
{
	const char *colon = strrchr(hp, ':');
	const char *h = hp;
	size_t hlen;
	char *end;
	unsigned long port;

	if (!colon || colon == hp || !colon[1])
		return -EINVAL;
	hlen = (size_t)(colon - hp);
	if (h[0] == '[') {
		if (hlen < 3 || h[hlen - 1] != ']')
			return -EINVAL;
		h++;
		hlen -= 2;
	}
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (errno || *end || port == 0 || port > 65535 || hlen > 253)
		return -EINVAL;
	a->host = strndup(h, hlen);
	a->port = strdup(colon + 1);
	return a->host && a->port ? 0 : -ENOMEM;
}

static int activity_open_file(struct activity *a)
{
	int fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);

	if (fd < 0) {
		int err = -errno;

		log_warn("activity: open %s", a->path);
		return err;
	}
	a->fd = fd;
	return 0;
}

/* A connected, blocking socket with send/receive timeouts, or -1 (errno set). */
static int activity_connect(struct activity *a)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
	struct timeval tv = {.tv_sec = ACT_IO_TIMEOUT_MS / 1000,
	                     .tv_usec = (ACT_IO_TIMEOUT_MS % 1000) * 1000};
	int fd = -1, rc, err = ECONNREFUSED;

	rc = getaddrinfo(a->host, a->port, &hints, &res);
	if (rc) {
		errno = rc == EAI_SYSTEM ? errno : EHOSTUNREACH;
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		struct pollfd pfd;
		socklen_t elen = sizeof(err);

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
		            ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
			err = errno;
			goto next;
		}
		pfd = (struct pollfd){.fd = fd, .events = POLLOUT};
		rc = poll(&pfd, 1, ACT_IO_TIMEOUT_MS);
		if (rc <= 0) {
			err = rc == 0 ? ETIMEDOUT : errno;
			goto next;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
			err = errno;
		if (err)
			goto next;
		if (fcntl(fd, F_SETFL, 0) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
			err = errno;
			goto next;
		}
		break;
	next:
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		errno = err;
	return fd;
}

/* A collector does not talk: readable means it closed (or misbehaves); reconnect. */
static bool activity_peer_gone(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	char buf[256];
	ssize_t n;

	if (poll(&pfd, 1, 0) <= 0)
		return false;
	if (pfd.revents & (POLLHUP | POLLERR))
		return true;
	n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

static int activity_send(int fd, const char *line)
{
	size_t len = strlen(line), off = 0;

	while (off < len) {
		ssize_t n = send(fd, line + off, len - off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (size_t)n;
	}
	return 0;
}

/* Waits ms or until close; called with a->lock held. */
static void activity_wait(struct activity *a, uint64_t ms)
{
	uint64_t until = mono_ms() + ms;
	struct timespec ts;

	while (!a->stop) {
		uint64_t now = mono_ms();

		if (now >= until)
			break;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += (time_t)((until - now) / 1000);
		ts.tv_nsec += (long)((until - now) % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&a->cond, &a->lock, &ts);
		activity_log_drops(a, false);
	}
}

static void *activity_writer(void *arg)
{
	struct activity *a = arg;
	uint64_t backoff = ACT_BACKOFF_MIN_MS, deadline = 0;
	bool warned = false;
	int fd = -1;

	pthread_mutex_lock(&a->lock);
	for (;;) {
		char *line;

		activity_log_drops(a, false);
		while (!a->stop && a->qlen == 0) {
			pthread_cond_wait(&a->cond, &a->lock);
			activity_log_drops(a, false);
		}
		if (a->qlen == 0)
			break;
		if (a->stop) {
			if (!deadline)
				deadline = mono_ms() + ACT_DRAIN_MS;
			else if (mono_ms() >= deadline)
				break;
		}
		line = a->q[a->qhead];
		pthread_mutex_unlock(&a->lock);

		if (fd >= 0 && activity_peer_gone(fd)) {
			close(fd);
			fd = -1;
		}
		if (fd < 0) {
			fd = activity_connect(a);
			if (fd < 0) {
				if (!warned)
					log_warn("activity: collector %s:%s unreachable, retrying",
					         a->host, a->port);
				warned = true;
				pthread_mutex_lock(&a->lock);
				if (a->stop)
					break;
				activity_wait(a, backoff);
				backoff = backoff * 2 > ACT_BACKOFF_MAX_MS ? ACT_BACKOFF_MAX_MS
				                                           : backoff * 2;
				continue;
			}
			if (warned)
				log_info("activity: collector %s:%s connected", a->host, a->port);
			warned = false;
			backoff = ACT_BACKOFF_MIN_MS;
		}
		if (activity_send(fd, line) < 0) {
			/* The line may be cut; it is sent again whole on the next connection. */
			log_warn("activity: collector %s:%s send", a->host, a->port);
			warned = true;
			close(fd);
			fd = -1;
			pthread_mutex_lock(&a->lock);
			continue;
		}
		pthread_mutex_lock(&a->lock);
		free(a->q[a->qhead]);
		a->q[a->qhead] = NULL;
		a->qhead = (a->qhead + 1) % ACTIVITY_QUEUE_MAX;
		a->qlen--;
	}
	/* Left at close: counted as dropped. */
	while (a->qlen) {
		free(a->q[a->qhead]);
		a->q[a->qhead] = NULL;
		a->qhead = (a->qhead + 1) % ACTIVITY_QUEUE_MAX;
		a->qlen--;
		a->drops++;
	}
	activity_log_drops(a, true);
	pthread_mutex_unlock(&a->lock);
	if (fd >= 0)
		close(fd);
	return NULL;
}

int activity_open(const char *spec, struct activity **out)
{
	struct activity *a = NULL;
	int err = -EINVAL;

	*out = NULL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->fd = -1;
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->cond, NULL);
	a->spec = strdup(spec ? spec : "");
	if (!a->spec) {
		err = -ENOMEM;
		goto fail;
	}
	if (!strncmp(a->spec, "file:", 5)) {
		a->kind = ACT_FILE;
		if (a->spec[5] != '/') {
			log_warnx("activity: sink \"%s\": the file must be an absolute path",
			          a->spec);
			goto fail;
		}
		a->path = strdup(a->spec + 5);
		err = a->path ? activity_open_file(a) : -ENOMEM;
		if (err)
			goto fail;
	} else if (!strcmp(a->spec, "syslog")) {
		a->kind = ACT_SYSLOG;
		openlog("mtun-activity", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	} else if (!strncmp(a->spec, "tcp:", 4)) {
		pthread_condattr_t ca;

		a->kind = ACT_TCP;
		err = activity_parse_tcp(a, a->spec + 4);
		if (err) {
			if (err == -EINVAL)
				log_warnx("activity: sink \"%s\": expected tcp:HOST:PORT", a->spec);
			goto fail;
		}
		a->q = calloc(ACTIVITY_QUEUE_MAX, sizeof(*a->q));
		if (!a->q) {
			err = -ENOMEM;
			goto fail;
		}
		/* activity_wait times out on CLOCK_MONOTONIC. */
		pthread_cond_destroy(&a->cond);
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&a->cond, &ca);
		pthread_condattr_destroy(&ca);
		err = -pthread_create(&a->thread, NULL, activity_writer, a);
		if (err) {
			log_warnx("activity: writer thread: %s", strerror(-err));
			goto fail;
		}
		a->thread_started = true;
	} else {
		log_warnx("activity: sink \"%s\": expected file:/PATH, syslog or tcp:HOST:PORT",
		          a->spec);
		goto fail;
	}
	*out = a;
	return 0;
fail:
	activity_close(a);
	return err;
}

void activity_write(struct activity *a, const struct activity_rec *r)
{
	char buf[ACTIVITY_LINE_MAX];
	int len;

	if (!a)
		return;
	len = activity_format(r, buf, sizeof(buf));
	if (len < 0) {
		pthread_mutex_lock(&a->lock);
		a->drops++;
		activity_log_drops(a, false);
		pthread_mutex_unlock(&a->lock);
		return;
	}
	switch (a->kind) {
	case ACT_FILE:
		pthread_mutex_lock(&a->lock);
		if (write(a->fd, buf, (size_t)len) != len) {
			if (!a->drops)
				log_warn("activity: write %s", a->path);
			a->drops++;
			activity_log_drops(a, false);
		}
		pthread_mutex_unlock(&a->lock);
		break;
	case ACT_SYSLOG:
		buf[len - 1] = '\0';
		syslog(LOG_INFO, "%s", buf);
		break;
	case ACT_TCP: {
		char *line = strdup(buf);

		pthread_mutex_lock(&a->lock);
		if (!line || a->qlen >= ACTIVITY_QUEUE_MAX) {
			free(line);
			a->drops++;
		} else {
			a->q[(a->qhead + a->qlen) % ACTIVITY_QUEUE_MAX] = line;
			a->qlen++;
			pthread_cond_signal(&a->cond);
		}
		pthread_mutex_unlock(&a->lock);
		break;
	}
	}
}

int activity_reopen(struct activity *a)
{
	int fd, old;

	if (!a || a->kind != ACT_FILE)
		return 0;
	fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
	if (fd < 0) {
		int err = -errno;

		log_warn("activity: reopen %s (still writing the old file)", a->path);
		return err;
	}
	pthread_mutex_lock(&a->lock);
	old = a->fd;
	a->fd = fd;
	pthread_mutex_unlock(&a->lock);
	close(old);
	return 0;
}

uint64_t activity_drops(struct activity *a)
{
	uint64_t n;

	if (!a)
		return 0;
	pthread_mutex_lock(&a->lock);
	n = a->drops;
	pthread_mutex_unlock(&a->lock);
	return n;
}

void activity_close(struct activity *a)
{
	if (!a)
		return;
	if (a->thread_started) {
		pthread_mutex_lock(&a->lock);
		a->stop = true;
		pthread_cond_broadcast(&a->cond);
		pthread_mutex_unlock(&a->lock);
		pthread_join(a->thread, NULL);
	}
	if (a->kind == ACT_SYSLOG)
		closelog();
	if (a->fd >= 0)
		close(a->fd);
	pthread_mutex_lock(&a->lock);
	activity_log_drops(a, true);
	pthread_mutex_unlock(&a->lock);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->lock);
	free(a->q);
	free(a->spec);
	free(a->path);
	free(a->host);
	free(a->port);
	free(a);
}
