/*
 * mtun-agent forward: listens on a local TCP port and carries each accepted connection as
 * one mtunnel (OPEN to the broker, agent/tunnel.c) to a fixed host:port; no interception.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf.h"
#include "device.h"
#include "enroll.h"
#include "agent.h"
#include "log.h"
#include "session.h"
#include "stream.h"

struct fwd {
	struct ring *ring;
	struct tunnel *t;
	struct conf_hostport to;
	int lfd;
};

static void fwd_accept_cb(struct ring *ring, int fd, void *arg)
{
	struct fwd *f = arg;

	if (fd < 0)
		return;
	if (!tunnel_is_up(f->t)) {
		log_warnx("connection refused: no session to the broker yet");
		close(fd);
		return;
	}
	tunnel_open(f->t, fd, f->to.host, f->to.port, NULL, NULL);
}

static const struct tunnel_ops fwd_ops = {0};

static void fwd_drained(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

static void fwd_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	log_info("signal %u: stopping", si->ssi_signo);
	ring_stop(ring);
}

int forward_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"broker", required_argument, NULL, 'b'},
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'I'},
	    {"listen", required_argument, NULL, 'l'},
	    {"to", required_argument, NULL, 't'},
	    {"window", required_argument, NULL, 'w'},
	    {"posture-interval", required_argument, NULL, 'p'},
	    {"log-level", required_argument, NULL, 'v'},
	    {NULL, 0, NULL, 0},
	};
	const char *broker = NULL, *state = NULL, *listen_at = NULL, *to = NULL, *why = NULL;
	const char *idsrc = getenv(DEVICE_SOURCE_ENV);
	struct fwd f = {.lfd = -1};
	struct tunnel_conf tc = {.window = TUNNEL_WINDOW_DEFAULT,
	                         .posture_interval_ms = POSTURE_INTERVAL_DEFAULT_MS};
	enum log_level lvl;
	sigset_t sigs;
	uint64_t win, ms;
	int c, ret = -EINVAL;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'b':
			broker = optarg;
			break;
		case 's':
			state = optarg;
			break;
		case 'I':
			idsrc = optarg;
			break;
		case 'l':
			listen_at = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'w':
			if (conf_parse_size(optarg, &win, &why) < 0 || win < MT_FRAME_MAX_PAYLOAD ||
			    win > MT_WINDOW_MAX) {
				log_warnx("--window %s: %s", optarg, why ? why : "out of range");
				return -EINVAL;
			}
			tc.window = (uint32_t)win;
			break;
		case 'p':
			if (conf_parse_duration(optarg, &ms, &why) < 0 || (ms && ms < 100) ||
			    ms > 3600000) {
				log_warnx("--posture-interval %s: %s", optarg,
				          why ? why : "0 (off) or 100ms..1h");
				return -EINVAL;
			}
			tc.posture_interval_ms = (uint32_t)ms;
			break;
		case 'v':
			if (log_parse_level(optarg, &lvl) < 0)
				return -EINVAL;
			log_set_level(lvl);
			break;
		default:
			return -EINVAL;
		}
	}
	if (!broker || !state || !listen_at || !to || optind != argc) {
		log_warnx("usage: mtun-agent forward --broker HOST:PORT --state DIR --listen "
		          "ADDR:PORT --to HOST:PORT [--identity-source DIR] [--window SIZE] "
		          "[--posture-interval DURATION]");
		return -EINVAL;
	}
	if (conf_parse_hostport(to, &f.to, &why) < 0) {
		log_warnx("--to %s: %s", to, why);
		return -EINVAL;
	}
	tc.broker = broker;
	tc.state = state;
	tc.identity_source = idsrc;
	f.lfd = conf_listen_tcp(listen_at, 128, "--listen");
	if (f.lfd < 0) {
		ret = f.lfd;
		goto out;
	}
	f.ring = ring_new(256);
	if (!f.ring) {
		ret = -errno;
		log_warn("ring");
		goto out;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	ret = ring_signals(f.ring, &sigs, fwd_signal, &f);
	if (ret == 0)
		ret = ring_accept(f.ring, f.lfd, fwd_accept_cb, &f);
	if (ret < 0) {
		log_warnx("ring setup: %s", strerror(-ret));
		goto out;
	}
	ret = tunnel_new(f.ring, &tc, &fwd_ops, &f, &f.t);
	if (ret < 0)
		goto out;
	log_event(LOG_LVL_INFO, "agent.forward.ready", "listen=%s to=%s:%u broker=%s", listen_at,
	          f.to.host, f.to.port, broker);
	ret = ring_run(f.ring);
	tunnel_shutdown(f.t);
	/* Lets the closes flush and free (bounded) before ring_free. */
	if (ring_timer_add(f.ring, 300 * 1000000ULL, fwd_drained, NULL, NULL) == 0)
		ring_run(f.ring);
out:
	ring_free(f.ring);
	if (f.lfd >= 0)
		close(f.lfd);
	tunnel_free(f.t);
	return ret;
}
