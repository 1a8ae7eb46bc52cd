/* The activity log: one JSON record per OPEN (docs/broker.md), to a file, syslog or a
 * TCP collector. */
#ifndef MTUN_ACTIVITY_H
#define MTUN_ACTIVITY_H

#include <stddef.h>
#include <stdint.h>

/* Records waiting for the TCP collector; more are dropped (counted, logged). */
#define ACTIVITY_QUEUE_MAX 4096
/* A record's JSON line is cut at this size (odd names cannot make it unbounded). */
#define ACTIVITY_LINE_MAX 16384
/* Each text field is cut at this many bytes (on a UTF-8 boundary) before escaping. */
#define ACTIVITY_FIELD_MAX 255

struct activity_rec {
	const char *tenant, *user, *device, *app; /* app: the name or address asked */
	uint16_t port;
	uint8_t proto;
	const char *connector, *broker; /* "" when none */
	uint64_t bytes_up, bytes_down;  /* agent->app, app->agent payload */
	uint64_t start_ms, end_ms;      /* wall clock, ms since the epoch */
	const char *status;             /* wire_status_name() of the end */
	const char *reason;             /* close or refusal reason */
	uint32_t rule_id;
	const char *rule;    /* 0, "" when no rule */
	const char *segment; /* "" when none */
};

struct activity;

/*
 * "file:/path" (JSON lines, O_APPEND, 0640), "syslog" (LOG_INFO, facility LOG_DAEMON,
 * ident mtun-activity) or "tcp:HOST:PORT" (JSON lines to a collector; a writer thread
 * with a bounded queue, reconnecting; drops are counted and logged, never block).
 * 0 or -errno with a message logged. NULL strings in a record are written as "".
 */
int activity_open(const char *spec, struct activity **out);
/* Never blocks the caller beyond one write(2) to a file. Thread-safe. */
void activity_write(struct activity *a, const struct activity_rec *r);
/* SIGHUP: files are reopened (logrotate); nothing to do for the other sinks. */
int activity_reopen(struct activity *a);
/* Records lost so far: queue full or collector gone at close (tcp), failed writes (file). */
uint64_t activity_drops(struct activity *a);
/* The TCP sink sends what is queued for about a second (one connect try when down), then
 * drops the rest. NULL fine. */
void activity_close(struct activity *a);

/* The record as one JSON line with '\n' into buf; its length, or -ENOSPC. For tests. */
int activity_format(const struct activity_rec *r, char *buf, size_t size);

#endif
