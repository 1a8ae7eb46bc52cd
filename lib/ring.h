/*
 * The io_uring event loop every hot path runs on: one ring per thread, all socket I/O
 * submitted through it, completions delivered as callbacks on the ring's thread.
 */
#ifndef MTUN_RING_H
#define MTUN_RING_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

/*
 * Threads: a ring may be set up (ring_new, ring_bufgroup_new, first operations) on one
 * thread and then belongs to the thread that first calls ring_run (it is single-issuer);
 * from then on every function here must be called on that thread, except ring_wake and
 * ring_post, which any thread may call. Operations started before the first ring_run (at
 * most entries of them) are submitted by it; a timer's time counts from then.
 *
 * Callbacks run on the ring's thread from inside ring_run. Any callback may re-enter the
 * ring: start operations, release buffers, add or cancel timers, cancel or close fds,
 * call ring_stop. No callback may call ring_run or ring_free.
 *
 * Life of a provided buffer: the group owns count buffers of size bytes. A buffer belongs
 * to the kernel until a recv callback hands it out (ptr, len, bid); from then on it belongs
 * to the callee, who may keep it as long as it likes (e.g. until a send of it completes)
 * and gives it back with ring_buf_release(group, bid) exactly once. While every buffer
 * is held, receives into the group pause (the kernel reports -ENOBUFS, which the ring
 * absorbs) and resume on the next release; no data is lost and nothing spins.
 *
 * Cancel guarantee: from the moment ring_cancel_fd (or ring_close) is called, no callback
 * of any operation started earlier on that fd runs, and queued sends are dropped. Its own
 * callback runs once the kernel has let go of every such operation: after it, the
 * kernel touches none of the buffers those operations named and the fd may be closed
 * and its memory freed. Close an fd the ring works on with ring_close, or with close(2)
 * only after its cancel's callback: the ring tracks operations by fd number, and the
 * kernel would keep a closed socket alive under a live operation.
 *
 * Sends on one fd are carried out in the order they were started, one at a time; each
 * send's buffer must stay valid until its callback (or the cancel's callback). The socket
 * must not be O_NONBLOCK: on one, io_uring ends a send with -EAGAIN when the socket
 * buffer is full instead of waiting for room (read it with MSG_DONTWAIT instead).
 */

struct ring;
struct ring_bufgroup;

/* res: bytes sent (all of them), 0 for connect/close/cancel, or -errno. */
typedef void ring_done_fn(struct ring *ring, int res, void *arg);
/* fd >= 0: an accepted socket (SOCK_CLOEXEC), now owned by the callee.
 * fd < 0: -errno, the multishot accept ended; the ring re-arms it by itself (after 100 ms
 * for errors such as -EMFILE), except after -EBADF, -EINVAL, -ENOTSOCK or -EOPNOTSUPP,
 * which end it. */
typedef void ring_accept_fn(struct ring *ring, int fd, void *arg);
/* res > 0: res bytes at ptr, in buffer bid of the group, owned by the callee until released.
 * res == 0: EOF; res < 0: -errno. After EOF or an error the receive is over. */
typedef void ring_recv_fn(struct ring *ring, int res, void *ptr, unsigned bid, void *arg);
/* res > 0: the ready events (POLLIN, POLLOUT, POLLERR, POLLHUP ...); res < 0: -errno and
 * the poll is over. A one-shot poll calls back once; a multishot poll on every wake-up
 * of the fd (edge-like: drain the fd each time) until an error or a cancel. */
typedef void ring_poll_fn(struct ring *ring, int res, void *arg);
typedef void ring_timer_fn(struct ring *ring, void *arg);
typedef void ring_signal_fn(struct ring *ring, const struct signalfd_siginfo *si, void *arg);
/* Runs on the ring's thread: the wake callback, and each posted message. */
typedef void ring_call_fn(struct ring *ring, void *arg);

typedef uint64_t ring_timer_t;

#define RING_IOV_MAX 8

struct ring_stats {
	uint64_t loops;       /* ring_run iterations, one submit_and_wait each */
	uint64_t cqes;        /* completions reaped */
	uint64_t enobufs;     /* receives paused because their buffer group ran dry */
	uint64_t short_sends; /* partial sends the ring resubmitted */
	uint64_t op_slots;    /* operation records allocated (they are reused, never freed) */
};

/* entries: submission queue size (rounded up to a power of two, 8..4096). NULL + errno. */
struct ring *ring_new(unsigned entries);
/* Cancels everything in flight without calling back; drops unread posted messages. */
void ring_free(struct ring *ring);

/* Runs until ring_stop; 0, or -errno if io_uring itself fails. */
int ring_run(struct ring *ring);
/* ring_run returns after the completions at hand are dispatched. */
void ring_stop(struct ring *ring);
void ring_get_stats(const struct ring *ring, struct ring_stats *st);

/* Any thread: runs the wake callback (set by ring_on_wake) on the ring's thread, after
 * the messages posted so far. Wake-ups coalesce: many may run the callback once. */
void ring_wake(struct ring *ring);
void ring_on_wake(struct ring *ring, ring_call_fn *cb, void *arg);
/* Any thread: queues fn(ring, arg) to run on the ring's thread, in posting order.
 * 0 or -ENOMEM. Messages still queued when the ring is freed are dropped uncalled. */
int ring_post(struct ring *ring, ring_call_fn *fn, void *arg);

/* count: power of two, 1..32768; size: 1..16 MiB. NULL + errno. Freed with the ring. */
struct ring_bufgroup *ring_bufgroup_new(struct ring *ring, unsigned count, unsigned size);
/* Gives buffer bid back to the kernel; -EINVAL if the callee does not hold it. */
int ring_buf_release(struct ring_bufgroup *bg, unsigned bid);
unsigned ring_buf_size(const struct ring_bufgroup *bg);

/* Multishot accept on a listening socket until cancelled. */
int ring_accept(struct ring *ring, int lfd, ring_accept_fn *cb, void *arg);
/* Multishot receive on a socket into buffers of bg, until EOF, an error or a cancel. */
int ring_recv(struct ring *ring, int fd, struct ring_bufgroup *bg, ring_recv_fn *cb, void *arg);
/* Sends all len bytes (short sends resubmitted), MSG_NOSIGNAL; cb gets len or -errno. */
int ring_send(struct ring *ring, int fd, const void *ptr, size_t len, ring_done_fn *cb, void *arg);
/* As ring_send over up to RING_IOV_MAX pieces (copied; their memory must stay valid). */
int ring_sendv(struct ring *ring, int fd, const struct iovec *iov, int iovcnt, ring_done_fn *cb,
               void *arg);
int ring_connect(struct ring *ring, int fd, const struct sockaddr *sa, socklen_t salen,
                 ring_done_fn *cb, void *arg);
/* Readiness of fd for events (POLLIN, POLLOUT, ...), for sockets others read and write
 * themselves (a resolver library). Several polls may watch one fd; ring_cancel_fd and
 * ring_close end them all with the guarantee above. */
int ring_poll_add(struct ring *ring, int fd, unsigned events, bool multishot, ring_poll_fn *cb,
                  void *arg);
/* Cancels every operation on fd (see the guarantee above); cb (may be NULL) gets 0. */
int ring_cancel_fd(struct ring *ring, int fd, ring_done_fn *cb, void *arg);
/* Cancels as ring_cancel_fd, then closes fd; cb (may be NULL) gets close's result.
 * Until then new operations on fd are refused with -EBADF. */
int ring_close(struct ring *ring, int fd, ring_done_fn *cb, void *arg);

/*
 * A call made once after the completions at hand are dispatched, before the ring waits
 * again: work batched per loop iteration (one flush for many writes) without a timer.
 * The caller embeds d (zeroed) and keeps it valid while queued; queuing a queued d does
 * nothing. Calls queued by a deferred call run in the same round.
 */
struct ring_defer {
	struct ring_defer *next, **pprev; /* pprev NULL: not queued */
	struct ring *ring;
	ring_call_fn *fn;
	void *arg;
};
void ring_defer(struct ring *ring, struct ring_defer *d, ring_call_fn *fn, void *arg);
/* Unqueues d if queued; its call will not run. */
void ring_defer_cancel(struct ring_defer *d);

/* One-shot timer after ns nanoseconds; *id (may be NULL) is the handle to cancel it. */
int ring_timer_add(struct ring *ring, uint64_t ns, ring_timer_fn *cb, void *arg, ring_timer_t *id);
/* 0: the callback will never run; -ENOENT: it already ran (or id is stale). */
int ring_timer_cancel(struct ring *ring, ring_timer_t id);

/* Blocks set in the calling thread (call before starting other threads, which inherit
 * the mask) and delivers each signal to cb through a signalfd read on the ring. */
int ring_signals(struct ring *ring, const sigset_t *set, ring_signal_fn *cb, void *arg);

#endif
