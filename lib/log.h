/* Structured logging: one key=value line per event, tagged with the process name. */
#ifndef MTUN_LOG_H
#define MTUN_LOG_H

#include <stdarg.h>
#include <stdnoreturn.h>

enum log_level {
	LOG_LVL_ERR = 0,
	LOG_LVL_WARN,
	LOG_LVL_INFO,
	LOG_LVL_DEBUG,
};

/* tag names the process ("mtun-broker"); lines go to stderr until log_set_fd. */
void log_init(const char *tag, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_set_fd(int fd);
/* "err", "warn", "info", "debug" -> level; -EINVAL for anything else. */
int log_parse_level(const char *name, enum log_level *level);

/* log_warn and fatal append err="strerror(errno)"; the x variants do not. */
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
noreturn void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * A machine event: `event=NAME` followed by the caller's own key=value pairs, e.g.
 * log_event(LOG_LVL_INFO, "mtunnel.close", "id=%u bytes_up=%llu reason=%s", ...).
 * Values that may hold spaces or quotes go through log_quote first.
 */
void log_event(enum log_level level, const char *event, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quotes s for a value: "..." with \" \\ and \xNN for control bytes; returns buf. */
const char *log_quote(char *buf, unsigned size, const char *s);

#endif
