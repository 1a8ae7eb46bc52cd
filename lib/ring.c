/*
 * The io_uring event loop: operation records from a per-ring slab, provided-buffer groups,
 * ordered sends, cancel-by-fd with a completion guarantee, timers, signals and wake-ups.
 */
#include <errno.h>
#include <limits.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "ring.h"

#define RING_CHUNK_OPS      64
#define RING_FD_MAX         (1U << 24)
#define RING_ACCEPT_BACKOFF 100000000LL /* ns before re-arming an accept that failed */
#define RING_BUF_MAXCOUNT   32768U
#define RING_BUF_MAXSIZE    (16U << 20)
#define RING_BUF_MAXTOTAL   (1ULL << 30)
#define RING_MAX_GROUPS     1024U

enum ring_op_kind {
	OP_ACCEPT,
	OP_RECV,
	OP_SEND,
	OP_CONNECT,
	OP_POLL,
	OP_CANCEL,
	OP_CLOSE,
	OP_TIMER,
	OP_WAKE,
	OP_SIGNAL,
};

struct ring_op {
	struct ring_op *prev, *next; /* the fd's list of live operations; next: free list */
	struct ring_op *qnext;       /* send queue, buffer waiters, cancel waiters */
	uint32_t idx, gen;
	uint8_t kind;
	bool tracked;  /* on its fd's list */
	bool inflight; /* one kernel request outstanding */
	bool cancelled;
	bool dead;    /* ended; later completions are swallowed */
	bool backoff; /* accept: the outstanding request is the re-arm timeout */
	bool waitbuf; /* recv: parked until its group gets a buffer back */
	bool queued;  /* send: in the fd's queue */
	int fd;
	void *arg;
	union {
		ring_done_fn *done;
		ring_accept_fn *accept;
		ring_recv_fn *recv;
		ring_timer_fn *timer;
		ring_poll_fn *poll;
	} cb;
	union {
		struct __kernel_timespec ts; /* timer, accept backoff */
		struct ring_bufgroup *bg;    /* recv */
		struct {
			struct iovec iov[RING_IOV_MAX];
			struct msghdr msg;
			size_t total, sent;
		} send;
		struct {
			struct sockaddr_storage ss;
			socklen_t len;
		} conn;
		struct {
			unsigned events;
			bool multishot;
		} poll;
		struct {
			bool kernel_done; /* the ASYNC_CANCEL completed */
			bool closing;     /* close: the close itself is in flight */
		} cancel;
	} u;
};

struct ring_fdent {
	struct ring_op *ops;
	struct ring_op *sendq, *sendq_tail; /* the head is the one in the kernel */
	struct ring_op *cancels;            /* cancel/close waiting for ops to retire */
	unsigned ncancelled;                /* cancelled ops not yet retired */
	bool closing;
};

struct ring_msg {
	struct ring_msg *next;
	ring_call_fn *fn;
	void *arg;
};

struct ring_bufgroup {
	struct ring *ring;
	struct io_uring_buf_ring *br;
	size_t br_size;
	unsigned char *base;
	size_t base_size;
	unsigned count, size, held;
	uint16_t bgid;
	uint64_t *held_map;
	struct ring_op *waiters;
};

struct ring {
	struct io_uring uring;
	bool stop;
	bool enabled; /* created disabled: the thread that first runs it becomes its issuer */
	struct ring_op **chunks;
	unsigned nchunks;
	struct ring_op *free_ops;
	struct ring_fdent *fds;
	unsigned nfds;
	struct ring_bufgroup **groups;
	unsigned ngroups;
	int wake_fd;
	atomic_int wake_pending;
	ring_call_fn *wake_cb;
	void *wake_arg;
	pthread_mutex_t post_lock;
	struct ring_msg *post_head, *post_tail;
	int sig_fd;
	ring_signal_fn *sig_cb;
	void *sig_arg;
	struct ring_stats stats;
	struct ring_defer *defer_head, **defer_tail;
};

static struct ring_op *op_get(struct ring *r, uint8_t kind, int fd, void *arg)
{
	struct ring_op *op;

	if (!r->free_ops) {
		struct ring_op **chunks, *chunk;
		unsigned i;

		chunks = realloc(r->chunks, (r->nchunks + 1) * sizeof(*chunks));
		if (!chunks)
			return NULL;
		r->chunks = chunks;
		chunk = calloc(RING_CHUNK_OPS, sizeof(*chunk));
		if (!chunk)
			return NULL;
		for (i = RING_CHUNK_OPS; i-- > 0;) {
			chunk[i].idx = r->nchunks * RING_CHUNK_OPS + i;
			chunk[i].next = r->free_ops;
			r->free_ops = &chunk[i];
		}
		r->chunks[r->nchunks++] = chunk;
		r->stats.op_slots += RING_CHUNK_OPS;
	}
	op = r->free_ops;
	r->free_ops = op->next;
	op->prev = op->next = op->qnext = NULL;
	op->kind = kind;
	op->tracked = op->inflight = op->cancelled = op->dead = false;
	op->backoff = op->waitbuf = op->queued = false;
	op->fd = fd;
	op->arg = arg;
	/* A reused slot keeps its last kind's state: a close must not see a send's bytes. */
	memset(&op->u, 0, sizeof(op->u));
	memset(&op->cb, 0, sizeof(op->cb));
	return op;
}

static void op_put(struct ring *r, struct ring_op *op)
{
	op->gen++;
	op->next = r->free_ops;
	r->free_ops = op;
}

static struct ring_fdent *fd_ent(struct ring *r, int fd, bool grow)
{
	if (fd < 0 || (unsigned)fd >= RING_FD_MAX)
		return NULL;
	if ((unsigned)fd >= r->nfds) {
		struct ring_fdent *fds;
		unsigned n = r->nfds ? r->nfds : 64;

		if (!grow)
			return NULL;
		while (n <= (unsigned)fd)
			n *= 2;
		fds = realloc(r->fds, n * sizeof(*fds));
		if (!fds)
			return NULL;
		memset(fds + r->nfds, 0, (n - r->nfds) * sizeof(*fds));
		r->fds = fds;
		r->nfds = n;
	}
	return &r->fds[fd];
}

static struct io_uring_sqe *ring_sqe(struct ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);

	if (!sqe && r->enabled) {
		/* Full before the loop's own submit: flush what is queued. */
		io_uring_submit(&r->uring);
		sqe = io_uring_get_sqe(&r->uring);
	}
	if (!sqe)
		log_warnx("ring: submission queue full");
	return sqe;
}

/* Starts an operation on fd: a record on the fd's list. */
static int op_new_fd(struct ring *r, uint8_t kind, int fd, void *arg, struct ring_op **out)
{
	struct ring_fdent *fe;
	struct ring_op *op;

	if (fd < 0)
		return -EBADF;
	fe = fd_ent(r, fd, true);
	if (!fe)
		return (unsigned)fd >= RING_FD_MAX ? -EBADF : -ENOMEM;
	if (fe->closing)
		return -EBADF;
	op = op_get(r, kind, fd, arg);
	if (!op)
		return -ENOMEM;
	op->tracked = true;
	op->next = fe->ops;
	if (fe->ops)
		fe->ops->prev = op;
	fe->ops = op;
	*out = op;
	return 0;
}

static void sendq_remove(struct ring_fdent *fe, struct ring_op *op)
{
	struct ring_op **pp, *prev = NULL;

	for (pp = &fe->sendq; *pp; prev = *pp, pp = &(*pp)->qnext) {
		if (*pp == op) {
			*pp = op->qnext;
			if (fe->sendq_tail == op)
				fe->sendq_tail = prev;
			break;
		}
	}
	op->queued = false;
	op->qnext = NULL;
}

static void fd_check_cancels(struct ring *r, int fd);

/* The operation is over for good: no kernel request, no callback left. */
static void op_retire(struct ring *r, struct ring_op *op, bool check)
{
	bool recheck = false;
	int fd = op->fd;

	if (op->tracked) {
		struct ring_fdent *fe = &r->fds[fd];

		if (op->queued)
			sendq_remove(fe, op);
		if (op->prev)
			op->prev->next = op->next;
		else
			fe->ops = op->next;
		if (op->next)
			op->next->prev = op->prev;
		if (op->cancelled && --fe->ncancelled == 0 && fe->cancels)
			recheck = true;
	}
	op_put(r, op);
	if (recheck && check)
		fd_check_cancels(r, fd);
}

static int accept_arm(struct ring *r, struct ring_op *op)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_multishot_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	op->backoff = false;
	return 0;
}

static int accept_backoff(struct ring *r, struct ring_op *op)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	if (!sqe)
		return -EBUSY;
	op->u.ts.tv_sec = 0;
	op->u.ts.tv_nsec = RING_ACCEPT_BACKOFF;
	io_uring_prep_timeout(sqe, &op->u.ts, 0, 0);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	op->backoff = true;
	return 0;
}

static int recv_arm(struct ring *r, struct ring_op *op)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = op->u.bg->bgid;
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	op->waitbuf = false;
	return 0;
}

static int send_arm(struct ring *r, struct ring_op *op)
{
	struct io_uring_sqe *sqe = ring_sqe(r);
	struct msghdr *m = &op->u.send.msg;

	if (!sqe)
		return -EBUSY;
	if (m->msg_iovlen == 1)
		io_uring_prep_send(sqe, op->fd, m->msg_iov[0].iov_base, m->msg_iov[0].iov_len,
		                   MSG_NOSIGNAL);
	else
		io_uring_prep_sendmsg(sqe, op->fd, m, MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	return 0;
}

static void send_advance(struct ring_op *op, size_t n)
{
	struct msghdr *m = &op->u.send.msg;

	while (n > 0 && m->msg_iovlen > 0) {
		if (n >= m->msg_iov[0].iov_len) {
			n -= m->msg_iov[0].iov_len;
			m->msg_iov++;
			m->msg_iovlen--;
		} else {
			m->msg_iov[0].iov_base = (char *)m->msg_iov[0].iov_base + n;
			m->msg_iov[0].iov_len -= n;
			n = 0;
		}
	}
}

/* Submits the send at the head of fd's queue if none is in the kernel. */
static void fd_send_kick(struct ring *r, int fd)
{
	struct ring_fdent *fe = fd_ent(r, fd, false);
	struct ring_op *op;
	ring_done_fn *cb;
	void *arg;
	int err;

	if (!fe || !fe->sendq || fe->sendq->inflight)
		return;
	op = fe->sendq;
	err = send_arm(r, op);
	if (!err)
		return;
	cb = op->cb.done;
	arg = op->arg;
	op_retire(r, op, true);
	if (cb)
		cb(r, err, arg);
	fd_send_kick(r, fd);
}

static void bg_put(struct ring_bufgroup *bg, unsigned bid)
{
	struct ring *r = bg->ring;
	struct ring_op *w;

	bg->held_map[bid / 64] &= ~(1ULL << (bid % 64));
	bg->held--;
	io_uring_buf_ring_add(bg->br, bg->base + (size_t)bid * bg->size, bg->size, bid,
	                      io_uring_buf_ring_mask(bg->count), 0);
	io_uring_buf_ring_advance(bg->br, 1);

	/* Every parked receive gets a try: one may have no data while another waits. */
	w = bg->waiters;
	bg->waiters = NULL;
	while (w) {
		struct ring_op *next = w->qnext;

		w->qnext = NULL;
		if (recv_arm(r, w) < 0) {
			w->qnext = bg->waiters;
			bg->waiters = w;
		}
		w = next;
	}
}

static void bg_waiter_remove(struct ring_bufgroup *bg, struct ring_op *op)
{
	struct ring_op **pp;

	for (pp = &bg->waiters; *pp; pp = &(*pp)->qnext) {
		if (*pp == op) {
			*pp = op->qnext;
			break;
		}
	}
	op->qnext = NULL;
	op->waitbuf = false;
}

/* Completes the cancels and closes on fd whose operations have all retired. */
static void fd_check_cancels(struct ring *r, int fd)
{
	for (;;) {
		struct ring_fdent *fe = fd_ent(r, fd, false);
		struct ring_op **pp, *w;
		struct io_uring_sqe *sqe;
		ring_done_fn *cb;
		void *arg;

		if (!fe || fe->ncancelled)
			return;
		for (pp = &fe->cancels; *pp && !(*pp)->u.cancel.kernel_done; pp = &(*pp)->qnext)
			;
		w = *pp;
		if (!w)
			return;
		*pp = w->qnext;
		w->qnext = NULL;
		cb = w->cb.done;
		arg = w->arg;
		if (w->kind == OP_CLOSE) {
			sqe = ring_sqe(r);
			if (sqe) {
				io_uring_prep_close(sqe, fd);
				io_uring_sqe_set_data(sqe, w);
				w->u.cancel.closing = true;
				w->inflight = true;
				continue;
			}
			fe->closing = false;
			op_retire(r, w, false);
			if (cb)
				cb(r, -EBUSY, arg);
			continue;
		}
		op_retire(r, w, false);
		if (cb)
			cb(r, 0, arg);
	}
}

static void wake_drain(struct ring *r)
{
	struct ring_msg *m, *next;
	uint64_t v;

	atomic_store(&r->wake_pending, 0);
	while (read(r->wake_fd, &v, sizeof(v)) == sizeof(v))
		;
	pthread_mutex_lock(&r->post_lock);
	m = r->post_head;
	r->post_head = r->post_tail = NULL;
	pthread_mutex_unlock(&r->post_lock);
	for (; m; m = next) {
		next = m->next;
		m->fn(r, m->arg);
		free(m);
	}
	if (r->wake_cb)
		r->wake_cb(r, r->wake_arg);
}

static void signal_drain(struct ring *r)
{
	struct signalfd_siginfo si;

	while (read(r->sig_fd, &si, sizeof(si)) == sizeof(si)) {
		if (r->sig_cb)
			r->sig_cb(r, &si, r->sig_arg);
	}
}

static int poll_arm(struct ring *r, struct ring_op *op)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_multishot(sqe, op->fd, POLLIN);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	return 0;
}

static void on_poll(struct ring *r, struct ring_op *op, int res, unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE))
		op->inflight = false;
	if (res < 0 && res != -ECANCELED) {
		errno = -res;
		log_warn("ring: poll on internal fd %d failed", op->fd);
	}
	if (op->kind == OP_WAKE)
		wake_drain(r);
	else
		signal_drain(r);
	/* Multishot poll ends on overflow: keep listening. */
	if (!op->inflight && res >= 0 && poll_arm(r, op) < 0)
		log_warnx("ring: cannot re-arm internal poll on fd %d", op->fd);
}

static int fdpoll_arm(struct ring *r, struct ring_op *op)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	if (!sqe)
		return -EBUSY;
	if (op->u.poll.multishot)
		io_uring_prep_poll_multishot(sqe, op->fd, op->u.poll.events);
	else
		io_uring_prep_poll_add(sqe, op->fd, op->u.poll.events);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	return 0;
}

static void on_fdpoll(struct ring *r, struct ring_op *op, int res, unsigned flags)
{
	bool more = flags & IORING_CQE_F_MORE;
	ring_poll_fn *cb = op->cb.poll;
	void *arg = op->arg;

	if (!more)
		op->inflight = false;
	if (op->cancelled || op->dead) {
		if (!more)
			op_retire(r, op, true);
		return;
	}
	if (res < 0 || !op->u.poll.multishot) {
		if (more)
			op->dead = true;
		else
			op_retire(r, op, true);
		cb(r, res, arg);
		return;
	}
	cb(r, res, arg);
	if (more)
		return;
	if (op->cancelled) {
		op_retire(r, op, true);
		return;
	}
	/* The kernel ended the multishot without an error (e.g. CQ overflow): go on. */
	if (fdpoll_arm(r, op) < 0) {
		op_retire(r, op, true);
		cb(r, -EBUSY, arg);
	}
}

static void on_accept(struct ring *r, struct ring_op *op, int res, unsigned flags)
{
	bool more = flags & IORING_CQE_F_MORE;
	int err;

	if (op->backoff) {
		op->inflight = op->backoff = false;
		if (op->cancelled) {
			op_retire(r, op, true);
			return;
		}
		if (accept_arm(r, op) < 0) {
			log_warnx("ring: cannot re-arm accept on fd %d", op->fd);
			op_retire(r, op, true);
		}
		return;
	}
	if (!more)
		op->inflight = false;
	if (op->cancelled || op->dead) {
		if (res >= 0)
			close(res);
	} else {
		op->cb.accept(r, res, op->arg);
	}
	if (more)
		return;
	if (op->cancelled) {
		op_retire(r, op, true);
		return;
	}
	if (res == -EBADF || res == -EINVAL || res == -ENOTSOCK || res == -EOPNOTSUPP)
		err = res;
	else
		err = res >= 0 ? accept_arm(r, op) : accept_backoff(r, op);
	if (err < 0) {
		if (err != res)
			log_warnx("ring: cannot re-arm accept on fd %d", op->fd);
		op_retire(r, op, true);
	}
}

static void on_recv(struct ring *r, struct ring_op *op, int res, unsigned flags)
{
	struct ring_bufgroup *bg = op->u.bg;
	bool more = flags & IORING_CQE_F_MORE;
	bool hasbuf = flags & IORING_CQE_F_BUFFER;
	unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
	ring_recv_fn *cb = op->cb.recv;
	void *arg = op->arg;

	if (!more)
		op->inflight = false;
	if (hasbuf) {
		if (bid >= bg->count || (res > 0 && (unsigned)res > bg->size)) {
			log_warnx("ring: recv completion with bad buffer %u len %d", bid, res);
			hasbuf = false;
			res = -EIO;
		} else {
			bg->held_map[bid / 64] |= 1ULL << (bid % 64);
			bg->held++;
		}
	}
	if (op->cancelled || op->dead || res <= 0) {
		if (hasbuf)
			bg_put(bg, bid);
		hasbuf = false;
	}
	if (op->cancelled || op->dead) {
		if (!more)
			op_retire(r, op, true);
		return;
	}
	if (res == -ENOBUFS && !more) {
		r->stats.enobufs++;
		if (bg->held < bg->count) {
			/* Buffers came back before this completion was seen. */
			if (recv_arm(r, op) == 0)
				return;
		}
		op->waitbuf = true;
		op->qnext = bg->waiters;
		bg->waiters = op;
		return;
	}
	if (res <= 0) {
		if (more)
			op->dead = true;
		else
			op_retire(r, op, true);
		cb(r, res, NULL, 0, arg);
		return;
	}
	cb(r, res, bg->base + (size_t)bid * bg->size, bid, arg);
	if (more)
		return;
	if (op->cancelled) {
		op_retire(r, op, true);
		return;
	}
	/* The kernel ended the multishot without an error (e.g. CQ overflow): go on. */
	if (recv_arm(r, op) < 0) {
		op_retire(r, op, true);
		cb(r, -EBUSY, NULL, 0, arg);
	}
}

static void on_send(struct ring *r, struct ring_op *op, int res)
{
	ring_done_fn *cb = op->cb.done;
	void *arg = op->arg;
	int fd = op->fd;

	op->inflight = false;
	if (op->cancelled) {
		op_retire(r, op, false);
		fd_send_kick(r, fd);
		fd_check_cancels(r, fd);
		return;
	}
	if (res > 0) {
		op->u.send.sent += (size_t)res;
		if (op->u.send.sent < op->u.send.total) {
			r->stats.short_sends++;
			send_advance(op, (size_t)res);
			res = send_arm(r, op);
			if (res == 0)
				return;
		} else {
			res = (int)op->u.send.total;
		}
	} else if (res == 0 && op->u.send.total > 0) {
		res = -EIO;
	}
	op_retire(r, op, true);
	fd_send_kick(r, fd);
	if (cb)
		cb(r, res, arg);
}

static void dispatch(struct ring *r, struct ring_op *op, int res, unsigned flags)
{
	ring_done_fn *done = op->cb.done;
	ring_timer_fn *tcb = op->cb.timer;
	void *arg = op->arg;
	int fd = op->fd;

	switch (op->kind) {
	case OP_ACCEPT:
		on_accept(r, op, res, flags);
		break;
	case OP_RECV:
		on_recv(r, op, res, flags);
		break;
	case OP_SEND:
		on_send(r, op, res);
		break;
	case OP_CONNECT: {
		bool cancelled = op->cancelled;

		op->inflight = false;
		op_retire(r, op, true);
		if (!cancelled && done)
			done(r, res, arg);
		break;
	}
	case OP_POLL:
		on_fdpoll(r, op, res, flags);
		break;
	case OP_CANCEL:
		op->inflight = false;
		op->u.cancel.kernel_done = true;
		fd_check_cancels(r, fd);
		break;
	case OP_CLOSE:
		op->inflight = false;
		if (!op->u.cancel.closing) {
			op->u.cancel.kernel_done = true;
			fd_check_cancels(r, fd);
			break;
		}
		r->fds[fd].closing = false;
		op_retire(r, op, false);
		if (done)
			done(r, res, arg);
		break;
	case OP_TIMER: {
		bool cancelled = op->cancelled;

		op_retire(r, op, false);
		if (!cancelled)
			tcb(r, arg);
		break;
	}
	case OP_WAKE:
	case OP_SIGNAL:
		on_poll(r, op, res, flags);
		break;
	}
}

static void ring_reap(struct ring *r)
{
	struct io_uring_cqe *cqe;

	while (io_uring_peek_cqe(&r->uring, &cqe) == 0) {
		struct ring_op *op = io_uring_cqe_get_data(cqe);
		unsigned flags = cqe->flags;
		int res = cqe->res;

		io_uring_cqe_seen(&r->uring, cqe);
		r->stats.cqes++;
		/* user_data 0: removal requests whose outcome shows on the target itself. */
		if (op)
			dispatch(r, op, res, flags);
	}
}

struct ring *ring_new(unsigned entries)
{
	struct io_uring_params p;
	struct ring *r;
	struct ring_op *op;
	unsigned n = 8;
	int ret;

	while (n < entries && n < 4096)
		n *= 2;
	r = calloc(1, sizeof(*r));
	if (!r) {
		log_warn("ring: allocation");
		return NULL;
	}
	r->wake_fd = r->sig_fd = -1;
	pthread_mutex_init(&r->post_lock, NULL);

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL |
	          IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
	          IORING_SETUP_DEFER_TASKRUN;
	p.cq_entries = n * 4;
	ret = io_uring_queue_init_params(n, &r->uring, &p);
	if (ret == -EINVAL) {
		/* Kernels before 6.1 lack the task-run flags; they are an optimisation. */
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED;
		p.cq_entries = n * 4;
		ret = io_uring_queue_init_params(n, &r->uring, &p);
	}
	if (ret < 0) {
		errno = -ret;
		log_warn("ring: io_uring setup with %u entries", n);
		pthread_mutex_destroy(&r->post_lock);
		free(r);
		errno = -ret;
		return NULL;
	}
	r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->wake_fd < 0) {
		ret = -errno;
		log_warn("ring: eventfd");
		goto fail;
	}
	op = op_get(r, OP_WAKE, r->wake_fd, NULL);
	if (!op) {
		ret = -ENOMEM;
		log_warnx("ring: out of memory");
		goto fail;
	}
	ret = poll_arm(r, op);
	if (ret < 0)
		goto fail;
	return r;
fail:
	ring_free(r);
	errno = -ret;
	return NULL;
}

void ring_free(struct ring *r)
{
	struct ring_msg *m, *next;
	unsigned i;

	if (!r)
		return;
	io_uring_queue_exit(&r->uring);
	for (i = 0; i < r->ngroups; i++) {
		struct ring_bufgroup *bg = r->groups[i];

		munmap(bg->br, bg->br_size);
		munmap(bg->base, bg->base_size);
		free(bg->held_map);
		free(bg);
	}
	free(r->groups);
	for (m = r->post_head; m; m = next) {
		next = m->next;
		free(m);
	}
	if (r->wake_fd >= 0)
		close(r->wake_fd);
	if (r->sig_fd >= 0)
		close(r->sig_fd);
	for (i = 0; i < r->nchunks; i++)
		free(r->chunks[i]);
	free(r->chunks);
	free(r->fds);
	pthread_mutex_destroy(&r->post_lock);
	free(r);
}

void ring_defer(struct ring *r, struct ring_defer *d, ring_call_fn *fn, void *arg)
{
	if (d->pprev)
		return;
	if (!r->defer_tail)
		r->defer_tail = &r->defer_head;
	d->fn = fn;
	d->arg = arg;
	d->next = NULL;
	d->pprev = r->defer_tail;
	*r->defer_tail = d;
	r->defer_tail = &d->next;
	d->ring = r; /* cancel fixes the tail from d alone */
}

void ring_defer_cancel(struct ring_defer *d)
{
	struct ring *r;

	if (!d || !d->pprev)
		return;
	r = d->ring;
	*d->pprev = d->next;
	if (d->next)
		d->next->pprev = d->pprev;
	else
		r->defer_tail = d->pprev;
	d->next = NULL;
	d->pprev = NULL;
}

static void ring_run_defers(struct ring *r)
{
	struct ring_defer *d;

	while ((d = r->defer_head)) {
		ring_defer_cancel(d);
		d->fn(r, d->arg);
	}
}

int ring_run(struct ring *r)
{
	int ret;

	if (!r->enabled) {
		/* liburing 2.3 declares io_uring_enable_rings but does not export it. */
		if (syscall(__NR_io_uring_register, r->uring.ring_fd, IORING_REGISTER_ENABLE_RINGS,
		            NULL, 0) < 0) {
			ret = -errno;
			log_warn("ring: enable");
			return ret;
		}
		r->enabled = true;
	}
	r->stop = false;
	while (!r->stop) {
		ring_run_defers(r);
		if (r->stop)
			break;
		ret = io_uring_submit_and_wait(&r->uring, 1);
		r->stats.loops++;
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
			errno = -ret;
			log_warn("ring: submit and wait");
			return ret;
		}
		ring_reap(r);
	}
	return 0;
}

void ring_stop(struct ring *r)
{
	r->stop = true;
}

void ring_get_stats(const struct ring *r, struct ring_stats *st)
{
	*st = r->stats;
}

void ring_wake(struct ring *r)
{
	uint64_t one = 1;

	/* One eventfd write per batch of wake-ups; the ring clears the flag before reading. */
	if (atomic_exchange(&r->wake_pending, 1) == 0) {
		if (write(r->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_warn("ring: eventfd write");
	}
}

void ring_on_wake(struct ring *r, ring_call_fn *cb, void *arg)
{
	r->wake_cb = cb;
	r->wake_arg = arg;
}

int ring_post(struct ring *r, ring_call_fn *fn, void *arg)
{
	struct ring_msg *m = malloc(sizeof(*m));

	if (!m)
		return -ENOMEM;
	m->next = NULL;
	m->fn = fn;
	m->arg = arg;
	pthread_mutex_lock(&r->post_lock);
	if (r->post_tail)
		r->post_tail->next = m;
	else
		r->post_head = m;
	r->post_tail = m;
	pthread_mutex_unlock(&r->post_lock);
	ring_wake(r);
	return 0;
}

struct ring_bufgroup *ring_bufgroup_new(struct ring *r, unsigned count, unsigned size)
{
	struct io_uring_buf_reg reg;
	struct ring_bufgroup *bg = NULL, **groups;
	unsigned i;
	int ret;

	if (count == 0 || count > RING_BUF_MAXCOUNT || (count & (count - 1)) || size == 0 ||
	    size > RING_BUF_MAXSIZE || (uint64_t)count * size > RING_BUF_MAXTOTAL) {
		log_warnx("ring: bad buffer group: count=%u size=%u", count, size);
		errno = EINVAL;
		return NULL;
	}
	if (r->ngroups >= RING_MAX_GROUPS) {
		log_warnx("ring: too many buffer groups");
		errno = ENOSPC;
		return NULL;
	}
	groups = realloc(r->groups, (r->ngroups + 1) * sizeof(*groups));
	if (!groups)
		goto nomem;
	r->groups = groups;
	bg = calloc(1, sizeof(*bg));
	if (!bg)
		goto nomem;
	bg->ring = r;
	bg->count = count;
	bg->size = size;
	bg->bgid = (uint16_t)r->ngroups;
	bg->br = MAP_FAILED;
	bg->base = MAP_FAILED;
	bg->held_map = calloc((count + 63) / 64, sizeof(uint64_t));
	if (!bg->held_map)
		goto nomem;
	bg->br_size = count * sizeof(struct io_uring_buf);
	bg->br =
	    mmap(NULL, bg->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bg->base_size = (size_t)count * size;
	bg->base =
	    mmap(NULL, bg->base_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bg->br == MAP_FAILED || bg->base == MAP_FAILED) {
		ret = -errno;
		log_warn("ring: buffer group mmap of %u x %u", count, size);
		goto fail;
	}
	/* Payload may be decrypted in place: keep it out of core dumps. */
	madvise(bg->base, bg->base_size, MADV_DONTDUMP);

	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)bg->br;
	reg.ring_entries = count;
	reg.bgid = bg->bgid;
	ret = io_uring_register_buf_ring(&r->uring, &reg, 0);
	if (ret < 0) {
		errno = -ret;
		log_warn("ring: register buffer ring %u", bg->bgid);
		goto fail;
	}
	io_uring_buf_ring_init(bg->br);
	for (i = 0; i < count; i++)
		io_uring_buf_ring_add(bg->br, bg->base + (size_t)i * size, size, (unsigned short)i,
		                      io_uring_buf_ring_mask(count), (int)i);
	io_uring_buf_ring_advance(bg->br, (int)count);
	r->groups[r->ngroups++] = bg;
	return bg;
nomem:
	ret = -ENOMEM;
	log_warnx("ring: out of memory for a buffer group");
fail:
	if (bg) {
		if (bg->br != MAP_FAILED)
			munmap(bg->br, bg->br_size);
		if (bg->base != MAP_FAILED)
			munmap(bg->base, bg->base_size);
		free(bg->held_map);
		free(bg);
	}
	errno = -ret;
	return NULL;
}

int ring_buf_release(struct ring_bufgroup *bg, unsigned bid)
{
	if (bid >= bg->count || !(bg->held_map[bid / 64] & (1ULL << (bid % 64)))) {
		log_warnx("ring: release of buffer %u not held (group %u)", bid, bg->bgid);
		return -EINVAL;
	}
	bg_put(bg, bid);
	return 0;
}

unsigned ring_buf_size(const struct ring_bufgroup *bg)
{
	return bg->size;
}

int ring_accept(struct ring *r, int lfd, ring_accept_fn *cb, void *arg)
{
	struct ring_op *op;
	int err;

	if (!cb)
		return -EINVAL;
	err = op_new_fd(r, OP_ACCEPT, lfd, arg, &op);
	if (err < 0)
		return err;
	op->cb.accept = cb;
	err = accept_arm(r, op);
	if (err < 0)
		op_retire(r, op, false);
	return err;
}

int ring_recv(struct ring *r, int fd, struct ring_bufgroup *bg, ring_recv_fn *cb, void *arg)
{
	struct ring_op *op;
	int err;

	if (!cb || bg->ring != r)
		return -EINVAL;
	err = op_new_fd(r, OP_RECV, fd, arg, &op);
	if (err < 0)
		return err;
	op->cb.recv = cb;
	op->u.bg = bg;
	err = recv_arm(r, op);
	if (err < 0)
		op_retire(r, op, false);
	return err;
}

int ring_sendv(struct ring *r, int fd, const struct iovec *iov, int iovcnt, ring_done_fn *cb,
               void *arg)
{
	struct ring_fdent *fe;
	struct ring_op *op;
	size_t total = 0;
	int i, n = 0, err;

	if (iovcnt < 1 || iovcnt > RING_IOV_MAX)
		return -EINVAL;
	for (i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > (size_t)INT_MAX - total)
			return -EMSGSIZE;
		total += iov[i].iov_len;
	}
	err = op_new_fd(r, OP_SEND, fd, arg, &op);
	if (err < 0)
		return err;
	op->cb.done = cb;
	for (i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > 0 || (n == 0 && i == iovcnt - 1))
			op->u.send.iov[n++] = iov[i];
	}
	memset(&op->u.send.msg, 0, sizeof(op->u.send.msg));
	op->u.send.msg.msg_iov = op->u.send.iov;
	op->u.send.msg.msg_iovlen = (size_t)n;
	op->u.send.total = total;
	op->u.send.sent = 0;

	fe = &r->fds[fd];
	op->queued = true;
	if (fe->sendq_tail)
		fe->sendq_tail->qnext = op;
	else
		fe->sendq = op;
	fe->sendq_tail = op;
	if (fe->sendq == op) {
		err = send_arm(r, op);
		if (err < 0)
			op_retire(r, op, false);
	}
	return err;
}

int ring_send(struct ring *r, int fd, const void *ptr, size_t len, ring_done_fn *cb, void *arg)
{
	struct iovec iov = {.iov_base = (void *)ptr, .iov_len = len};

	return ring_sendv(r, fd, &iov, 1, cb, arg);
}

int ring_connect(struct ring *r, int fd, const struct sockaddr *sa, socklen_t salen,
                 ring_done_fn *cb, void *arg)
{
	struct io_uring_sqe *sqe;
	struct ring_op *op;
	int err;

	if (salen == 0 || salen > sizeof(struct sockaddr_storage))
		return -EINVAL;
	err = op_new_fd(r, OP_CONNECT, fd, arg, &op);
	if (err < 0)
		return err;
	op->cb.done = cb;
	memcpy(&op->u.conn.ss, sa, salen);
	op->u.conn.len = salen;
	sqe = ring_sqe(r);
	if (!sqe) {
		op_retire(r, op, false);
		return -EBUSY;
	}
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&op->u.conn.ss, op->u.conn.len);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	return 0;
}

int ring_poll_add(struct ring *r, int fd, unsigned events, bool multishot, ring_poll_fn *cb,
                  void *arg)
{
	struct ring_op *op;
	int err;

	if (!cb || events == 0 || events > 0xffff)
		return -EINVAL;
	err = op_new_fd(r, OP_POLL, fd, arg, &op);
	if (err < 0)
		return err;
	op->cb.poll = cb;
	op->u.poll.events = events;
	op->u.poll.multishot = multishot;
	err = fdpoll_arm(r, op);
	if (err < 0)
		op_retire(r, op, false);
	return err;
}

static int cancel_start(struct ring *r, int fd, uint8_t kind, ring_done_fn *cb, void *arg)
{
	struct io_uring_sqe *sqe;
	struct ring_fdent *fe;
	struct ring_op *op, *o, *next;

	if (fd < 0)
		return -EBADF;
	fe = fd_ent(r, fd, true);
	if (!fe)
		return (unsigned)fd >= RING_FD_MAX ? -EBADF : -ENOMEM;
	if (fe->closing)
		return -EBADF;
	op = op_get(r, kind, fd, arg);
	if (!op)
		return -ENOMEM;
	sqe = ring_sqe(r);
	if (!sqe) {
		op_put(r, op);
		return -EBUSY;
	}
	op->cb.done = cb;
	op->inflight = true;
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data(sqe, op);

	fe = &r->fds[fd];
	for (o = fe->ops; o; o = next) {
		next = o->next;
		if (o->cancelled)
			continue;
		o->cancelled = true;
		fe->ncancelled++;
		if (o->waitbuf) {
			bg_waiter_remove(o->u.bg, o);
			op_retire(r, o, false);
		} else if (o->queued && !o->inflight) {
			op_retire(r, o, false);
		} else if (o->backoff) {
			/* ASYNC_CANCEL by fd does not see timeouts. */
			sqe = ring_sqe(r);
			if (sqe) {
				io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)o, 0);
				io_uring_sqe_set_data(sqe, NULL);
			}
		}
	}
	if (kind == OP_CLOSE)
		fe->closing = true;
	op->qnext = fe->cancels;
	fe->cancels = op;
	return 0;
}

int ring_cancel_fd(struct ring *r, int fd, ring_done_fn *cb, void *arg)
{
	return cancel_start(r, fd, OP_CANCEL, cb, arg);
}

int ring_close(struct ring *r, int fd, ring_done_fn *cb, void *arg)
{
	return cancel_start(r, fd, OP_CLOSE, cb, arg);
}

int ring_timer_add(struct ring *r, uint64_t ns, ring_timer_fn *cb, void *arg, ring_timer_t *id)
{
	struct io_uring_sqe *sqe;
	struct ring_op *op;

	if (!cb)
		return -EINVAL;
	op = op_get(r, OP_TIMER, -1, arg);
	if (!op)
		return -ENOMEM;
	sqe = ring_sqe(r);
	if (!sqe) {
		op_put(r, op);
		return -EBUSY;
	}
	op->cb.timer = cb;
	op->u.ts.tv_sec = (long long)(ns / 1000000000ULL);
	op->u.ts.tv_nsec = (long long)(ns % 1000000000ULL);
	io_uring_prep_timeout(sqe, &op->u.ts, 0, 0);
	io_uring_sqe_set_data(sqe, op);
	op->inflight = true;
	if (id)
		*id = ((uint64_t)op->gen << 32) | (op->idx + 1);
	return 0;
}

int ring_timer_cancel(struct ring *r, ring_timer_t id)
{
	uint32_t idx = (uint32_t)id, gen = (uint32_t)(id >> 32);
	struct io_uring_sqe *sqe;
	struct ring_op *op;

	if (idx == 0 || idx - 1 >= r->nchunks * RING_CHUNK_OPS)
		return -ENOENT;
	op = &r->chunks[(idx - 1) / RING_CHUNK_OPS][(idx - 1) % RING_CHUNK_OPS];
	if (op->gen != gen || op->kind != OP_TIMER || !op->inflight || op->cancelled)
		return -ENOENT;
	op->cancelled = true;
	/* If no SQE is free the timeout still fires, but its callback is suppressed. */
	sqe = ring_sqe(r);
	if (sqe) {
		io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)op, 0);
		io_uring_sqe_set_data(sqe, NULL);
	}
	return 0;
}

int ring_signals(struct ring *r, const sigset_t *set, ring_signal_fn *cb, void *arg)
{
	struct ring_op *op;
	int err;

	if (r->sig_fd >= 0)
		return -EBUSY;
	err = pthread_sigmask(SIG_BLOCK, set, NULL);
	if (err) {
		errno = err;
		log_warn("ring: block signals");
		return -err;
	}
	r->sig_fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (r->sig_fd < 0) {
		err = -errno;
		log_warn("ring: signalfd");
		return err;
	}
	r->sig_cb = cb;
	r->sig_arg = arg;
	op = op_get(r, OP_SIGNAL, r->sig_fd, NULL);
	if (!op) {
		err = -ENOMEM;
		goto fail;
	}
	err = poll_arm(r, op);
	if (err < 0) {
		op_put(r, op);
		goto fail;
	}
	return 0;
fail:
	log_warnx("ring: cannot watch the signalfd");
	close(r->sig_fd);
	r->sig_fd = -1;
	return err;
}
