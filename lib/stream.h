/*
 * One end of an mtunnel: a TCP socket pumped to and from an mtunnel id on a session, with
 * the per-mtunnel window, sequence numbers, FIN half-close and RESET (docs/protocol.md 4-7).
 * Used by the agent (forward mode) and the connector.
 */
#ifndef MTUN_STREAM_H
#define MTUN_STREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "ring.h"
#include "session.h"
#include "wire.h"

struct stream;

/* Runs once, when the stream starts closing: the owner unlinks it; it is freed later. */
typedef void stream_end_fn(struct stream *st, void *arg);

/* Takes fd (a connected TCP socket, made blocking here: see ring.h on sends). recv_window: the
 * window we grant the far side (sent in OPEN or BIND_REPLY). NULL + errno. */
struct stream *stream_new(struct ring *ring, int fd, uint32_t id, uint32_t recv_window,
                          stream_end_fn *end, void *arg);
/* The far side granted send_credit: start pumping the socket onto s. */
void stream_start(struct stream *st, struct session *s, uint32_t send_credit);
/* DATA, WINDOW, FIN or RESET for this stream's id. */
void stream_on_frame(struct stream *st, const struct mt_hdr *hdr, const uint8_t *frame, size_t len);
/* The session may take frames again. */
void stream_on_writable(struct stream *st);
/* Aborts: RESET to the far side when send is set (and a session is attached), closes fd. */
void stream_close(struct stream *st, enum mt_status status, const char *reason, bool send);
uint32_t stream_id(const struct stream *st);

#endif
