/* Structured logging: one key=value line per event, written with one write(2). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LOG_LINE_MAX 2048

static const char *log_tag = "mtun";
static enum log_level log_level = LOG_LVL_INFO;
static int log_fd = STDERR_FILENO;

static const char *const level_names[] = {
    [LOG_LVL_ERR] = "err",
    [LOG_LVL_WARN] = "warn",
    [LOG_LVL_INFO] = "info",
    [LOG_LVL_DEBUG] = "debug",
};

void log_init(const char *tag, enum log_level level)
{
	log_tag = tag;
	log_level = level;
}

void log_set_level(enum log_level level)
{
	log_level = level;
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_set_fd(int fd)
{
	log_fd = fd;
}

int log_parse_level(const char *name, enum log_level *level)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*level = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *log_quote(char *buf, unsigned size, const char *s)
{
	unsigned n = 0;

	if (size < 3) {
		if (size)
			buf[0] = '\0';
		return buf;
	}
	buf[n++] = '"';
	for (; *s && n + 5 < size; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			buf[n++] = '\\';
			buf[n++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			n += (unsigned)snprintf(buf + n, size - n, "\\x%02x", c);
		} else {
			buf[n++] = (char)c;
		}
	}
	buf[n++] = '"';
	buf[n] = '\0';
	return buf;
}

static int put_prefix(char *line, size_t size, enum log_level level)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	return snprintf(line, size,
	                "ts=%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ proc=%s pid=%d level=%s",
	                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	                tm.tm_sec, ts.tv_nsec / 1000, log_tag, (int)getpid(), level_names[level]);
}

static void emit(char *line, size_t n)
{
	if (n >= LOG_LINE_MAX - 1)
		n = LOG_LINE_MAX - 2;
	line[n++] = '\n';
	/* One write per line keeps lines whole when several processes share the sink. */
	while (write(log_fd, line, n) < 0 && errno == EINTR)
		;
}

static void vlog(enum log_level level, const char *err, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void vlog(enum log_level level, const char *err, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX], msg[LOG_LINE_MAX / 2], q[LOG_LINE_MAX / 2 + 64];
	int n;

	if (level > log_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = put_prefix(line, sizeof(line), level);
	n += snprintf(line + n, sizeof(line) - (size_t)n, " msg=%s", log_quote(q, sizeof(q), msg));
	if (err && (size_t)n < sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, " err=%s",
		              log_quote(q, sizeof(q), err));
	emit(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

#define LOG_FN(name, level, with_err)                                                              \
	void name(const char *fmt, ...)                                                            \
	{                                                                                          \
		const char *err = (with_err) ? strerror(errno) : NULL;                             \
		va_list ap;                                                                        \
		va_start(ap, fmt);                                                                 \
		vlog(level, err, fmt, ap);                                                         \
		va_end(ap);                                                                        \
	}

LOG_FN(log_warn, LOG_LVL_WARN, 1)
LOG_FN(log_warnx, LOG_LVL_WARN, 0)
LOG_FN(log_info, LOG_LVL_INFO, 0)
LOG_FN(log_debug, LOG_LVL_DEBUG, 0)

noreturn void fatal(const char *fmt, ...)
{
	const char *err = strerror(errno);
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERR, err, fmt, ap);
	va_end(ap);
	exit(1);
}

noreturn void fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERR, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}

void log_event(enum log_level level, const char *event, const char *kvfmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;
	int n;

	if (level > log_level)
		return;
	n = put_prefix(line, sizeof(line), level);
	n += snprintf(line + n, sizeof(line) - (size_t)n, " event=%s ", event);
	if ((size_t)n < sizeof(line)) {
		va_start(ap, kvfmt);
		n += vsnprintf(line + n, sizeof(line) - (size_t)n, kvfmt, ap);
		va_end(ap);
	}
	emit(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}
