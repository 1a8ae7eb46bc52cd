/*
 * Test tool: dials a broker with an enrolled identity but says HELLO with another role (a
 * connector's certificate presented as an agent), to show the broker refuses it. Prints
 * "established" or "closed status=S reason=R"; exit 0 when the broker closed the session.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf.h"
#include "enroll.h"
#include "log.h"
#include "session.h"

static bool established, closed;

static void ha_established(struct session *s, const struct ident *peer,
                           const struct mt_hello *hello, void *arg)
{
	established = true;
	printf("established with %s\n", peer->id);
}

static void ha_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len, void *arg)
{
}

static void ha_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	closed = true;
	printf("closed status=%s reason=%s\n", wire_status_name(status), reason ? reason : "");
	ring_stop(arg);
}

static const struct session_ops ha_ops = {
    .on_established = ha_established,
    .on_frame = ha_frame,
    .on_closed = ha_closed,
};

static void ha_deadline(struct ring *ring, void *arg)
{
	ring_stop(ring);
}

static int ha_connect(const char *spec)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
	struct conf_hostport hp;
	const char *why;
	char port[8];
	int fd;

	if (conf_parse_hostport(spec, &hp, &why) < 0) {
		log_warnx("--broker %s: %s", spec, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", hp.port);
	if (getaddrinfo(hp.host, port, &hints, &ai) != 0)
		return -EINVAL;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		log_warn("connect %s", spec);
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'i'},
	    {"broker", required_argument, NULL, 'b'},
	    {NULL, 0, NULL, 0},
	};
	const char *state = NULL, *idsrc = NULL, *broker = NULL, *why = NULL;
	struct enroll_identity idn = {0};
	STACK_OF(X509) *anchors = NULL;
	struct ring_bufgroup *bufs = NULL;
	struct tls_ctx *ctx = NULL;
	struct ring *ring = NULL;
	int ch, fd, ret = 2;

	log_init("hello_as", LOG_LVL_WARN);
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch == 's')
			state = optarg;
		else if (ch == 'i')
			idsrc = optarg;
		else if (ch == 'b')
			broker = optarg;
		else
			return 2;
	}
	if (!state || !broker) {
		fprintf(stderr, "usage: hello_as --state DIR [--identity-source DIR] --broker "
		                "HOST:PORT\n");
		return 2;
	}
	if (enroll_load(state, idsrc, &idn) < 0)
		return 2;
	anchors = sk_X509_new_null();
	if (!anchors || !sk_X509_push(anchors, idn.root))
		goto out;
	{
		struct tls_conf tc = {
		    .cert = idn.cert,
		    .chain = idn.chain,
		    .key = idn.key,
		    .anchors = anchors,
		    .peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER),
		    .peer_tenant = idn.ident.tenant,
		};

		ctx = tls_ctx_new(&tc, &why);
	}
	ring = ring_new(64);
	if (!ctx || !ring || !(bufs = ring_bufgroup_new(ring, 8, MT_FRAME_MAX)))
		goto out;
	fd = ha_connect(broker);
	if (fd < 0)
		goto out;
	{
		/* The lie: an agent's HELLO over a certificate of another role. */
		static const uint8_t device[IDENT_DEVICE_LEN];
		struct session_opts o = {.bufs = bufs,
		                         .role = MT_ROLE_AGENT,
		                         .kind = MT_SESSION_CONTROL,
		                         .device_id = device};

		if (!session_new(ring, ctx, fd, &o, &ha_ops, ring)) {
			log_warn("session");
			close(fd);
			goto out;
		}
	}
	if (ring_timer_add(ring, 10 * 1000000000ULL, ha_deadline, NULL, NULL) < 0)
		goto out;
	ring_run(ring);
	if (!closed)
		printf("%s\n", established ? "established, not closed" : "no answer");
	ret = closed ? 0 : 1;
out:
	ring_free(ring);
	tls_ctx_free(ctx);
	sk_X509_free(anchors);
	enroll_identity_free(&idn);
	return ret;
}
