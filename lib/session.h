/*
 * Sessions: one mutually authenticated TLS 1.3 connection between two mtun peers on the
 * ring, carrying frames (HELLO first), with connection flow control, keepalive and redial.
 */
#ifndef MTUN_SESSION_H
#define MTUN_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ident.h"
#include "ring.h"
#include "tls.h"
#include "wire.h"

/* The exporter label the agent's HELLO device proof is computed over (docs/protocol.md). */
#define SESSION_DEVICE_LABEL "EXPORTER-mtun-device"
#define SESSION_PROOF_LEN    32

struct session;
struct session_dialer;

/*
 * Callbacks run on the ring's thread. After on_closed (or session_close) no callback of
 * the session runs again and the pointer must not be used once the callback returns.
 * session_close is not followed by on_closed: the caller knows.
 */
struct session_ops {
	/* Both HELLOs exchanged; peer passed the certificate and HELLO checks. */
	void (*on_established)(struct session *s, const struct ident *peer,
	                       const struct mt_hello *hello, void *arg);
	/*
	 * Every frame but HELLO, PING, PONG, ERROR and WINDOW on id 0, already decoded once
	 * (wire_decode on it cannot fail). frame lives in the session's receive buffer, valid
	 * and writable during the call only: it may be rewritten (wire_set_id) and passed to
	 * session_send_frame of another session.
	 */
	void (*on_frame)(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len,
	                 void *arg);
	/* A send that returned -EAGAIN may be retried: output drained or the window opened. */
	void (*on_writable)(struct session *s, void *arg);
	/* Once, for a close the session decided (peer, protocol, TLS, silence, socket). */
	void (*on_closed)(struct session *s, const char *reason, enum mt_status status, void *arg);
};

struct session_opts {
	struct ring_bufgroup *bufs; /* required: receive buffers, shared by the ring's sessions */
	/* Our HELLO. Strings are copied. */
	enum mt_role role;
	enum mt_session_kind kind;
	const char *sw_version; /* NULL = "mtun" */
	uint32_t caps;
	const char *group, *location; /* optional tokens */
	bool has_capacity;
	uint32_t capacity;
	const uint8_t *cookie;    /* optional, MT_COOKIE_LEN bytes */
	const uint8_t *device_id; /* agent: IDENT_DEVICE_LEN bytes, the id in its certificate */
	/* Connection window granted to the peer: 0 = 1 MiB, at most MT_WINDOW_MAX. */
	uint32_t recv_window;
	/* Ciphertext waiting to be sent: sends fail with -EAGAIN above high, on_writable fires
	 * below low. 0 = 96 KiB and 32 KiB. Keep high + 17 KiB under the tls_conf out_size. */
	size_t high_water, low_water;
	/* PING after idle_ms without a frame from the peer, close after dead_ms; the TLS
	 * handshake and HELLOs must be done within handshake_ms. 0 = 15 s, 45 s, 10 s. */
	uint32_t idle_ms, dead_ms, handshake_ms;
};

struct session_stats {
	uint64_t frames_in, frames_out; /* every frame, control included */
	uint64_t bytes_in, bytes_out;   /* frame bytes (plaintext, headers included) */
	uint64_t data_in, data_out;     /* DATA payload bytes */
	uint64_t pings_out, pongs_in;
};

/*
 * A session over a connected (or accepted) stream socket; the TLS side (client/server)
 * is the ctx's. Takes fd on success. NULL + errno (EINVAL: bad options, ENOMEM, or the
 * ring's error).
 */
struct session *session_new(struct ring *ring, struct tls_ctx *ctx, int fd,
                            const struct session_opts *opts, const struct session_ops *ops,
                            void *arg);

/*
 * Sending, after on_established only (-ENOTCONN before, -EPIPE once closing). 0, or
 * -EAGAIN: DATA with output above the high watermark or beyond the peer's connection
 * window, or any frame when the TLS buffer itself is full (wait for on_writable; nothing
 * was queued). Frames other than DATA pass the watermark. -EINVAL: m does not encode, frame is not
 * one valid frame, or it is one the session keeps to itself (HELLO, PING, PONG, ERROR,
 * WINDOW on id 0: see session_close and session_consumed).
 */
int session_send_msg(struct session *s, const struct mt_msg *m);
int session_send_frame(struct session *s, const uint8_t *frame, size_t len);
/* WINDOW for an mtunnel (id != 0); not held back by the high watermark. 0, -EAGAIN (the
 * TLS buffer itself is full), -EINVAL, -ENOTCONN, -EPIPE. */
int session_send_window(struct session *s, uint32_t id, uint32_t increment);
/* n DATA payload bytes received were taken off the connection (into a buffer the
 * mtunnel window bounds, or dropped): grants connection window, a quarter at a time. */
void session_consumed(struct session *s, size_t n);
/* DATA payload bytes the peer lets us send now on the connection. */
uint32_t session_send_credit(const struct session *s);

/*
 * Ends the session: with a reason, ERROR {status, reason} then close_notify; without,
 * close_notify only. Output is flushed (for a bounded time), then the socket is closed
 * and the memory freed through the ring. Safe from any callback; no-op when closing.
 */
void session_close(struct session *s, enum mt_status status, const char *reason);

void session_get_stats(const struct session *s, struct session_stats *st);
/* The peer's certificate identity, NULL before the TLS handshake is done. */
const struct ident *session_peer(const struct session *s);
bool session_is_established(const struct session *s);
void *session_arg(const struct session *s);
void session_set_arg(struct session *s, void *arg);

/* attempt counts from 1 after the last reset; delay_ms is the jittered wait before it. */
typedef void session_retry_fn(struct session_dialer *d, unsigned attempt, uint32_t delay_ms,
                              const char *reason, void *arg);

struct session_dial_opts {
	struct session_opts sess;
	/* Delay before attempt n: uniform in [0, min(max, base * 2^(n-1))] ("full jitter").
	 * The count restarts after a session that was established for stable_ms.
	 * 0 = 250 ms, 30 s, 60 s. */
	uint32_t backoff_base_ms, backoff_max_ms, stable_ms;
	session_retry_fn *on_retry; /* optional: told of each wait */
};

/*
 * Keeps one client session to addr up: connects through the ring, runs the session with
 * ops/arg, and on loss (after on_closed) or a failed connect redials with backoff.
 * NULL + errno.
 */
struct session_dialer *session_dial(struct ring *ring, struct tls_ctx *ctx,
                                    const struct sockaddr *addr, socklen_t addrlen,
                                    const struct session_dial_opts *opts,
                                    const struct session_ops *ops, void *arg);
/* The live session, or NULL between attempts. */
struct session *session_dialer_session(const struct session_dialer *d);
/* Stops redialing, closes the live session (close_notify, no on_closed), frees d. */
void session_dial_stop(struct session_dialer *d);

#endif
