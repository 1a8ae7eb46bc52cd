/*
 * A stand-in broker for tests/agent/posture.t: accepts agent control sessions with the
 * broker identity, sends POSTURE_QUERY (unless --no-query) and prints each POSTURE as
 * one line; SIGUSR1 sends the query again with the next version.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "conf.h"
#include "enroll.h"
#include "log.h"
#include "ring.h"
#include "session.h"
#include "tls.h"
#include "wire.h"

struct pb {
	struct ring *ring;
	struct ring_bufgroup *bufs;
	struct tls_ctx *ctx;
	struct session *agent; /* the last established */
	struct mt_bytes files[MT_POSTURE_FILES_MAX], procs[MT_POSTURE_PROCS_MAX];
	unsigned nfiles, nprocs;
	bool no_query;
	uint64_t version;
};

static void pb_query(struct pb *pb)
{
	struct mt_msg m = {.hdr = {.type = MT_POSTURE_QUERY}};
	int ret;

	m.u.posture_query = (struct mt_posture_query){.version = ++pb->version,
	                                              .files = pb->files,
	                                              .nfiles = (uint16_t)pb->nfiles,
	                                              .procs = pb->procs,
	                                              .nprocs = (uint16_t)pb->nprocs};
	ret = session_send_msg(pb->agent, &m);
	printf("QUERY version=%llu rc=%d\n", (unsigned long long)pb->version, ret);
	fflush(stdout);
}

static void pb_established(struct session *s, const struct ident *peer,
                           const struct mt_hello *hello, void *arg)
{
	struct pb *pb = arg;

	pb->agent = s;
	printf("UP user=%s caps=%u\n", peer->user, hello->caps);
	fflush(stdout);
	if (!pb->no_query && (hello->caps & MT_CAP_POSTURE))
		pb_query(pb);
}

static void pb_frame(struct session *s, struct mt_hdr *hdr, uint8_t *frame, size_t len, void *arg)
{
	struct mt_file_fact f;
	struct mt_msg m;
	struct mt_iter it;
	struct mt_bytes t;
	const char *why;
	uint16_t type;

	if (hdr->type != MT_POSTURE || wire_decode(frame, len, &m, &why) < 0) {
		printf("FRAME %s\n", wire_type_name(hdr->type));
		fflush(stdout);
		return;
	}
	printf("POSTURE version=%llu kernel=%.*s os=\"%.*s\" disk=%u",
	       (unsigned long long)m.u.posture.version, m.u.posture.kernel.len,
	       (const char *)m.u.posture.kernel.p, m.u.posture.os.len,
	       (const char *)m.u.posture.os.p, m.u.posture.disk_encrypted);
	wire_posture_iter(&m.u.posture.attrs, &it);
	while (wire_posture_next(&it, &type, &t, &f)) {
		if (type == MT_A_FILE_FACT) {
			printf(" file=%.*s:", f.path.len, (const char *)f.path.p);
			for (unsigned i = 0; i < MT_SHA256_LEN; i++)
				printf("%02x", f.sha256[i]);
		} else {
			printf(" process=%.*s", t.len, (const char *)t.p);
		}
	}
	printf("\n");
	fflush(stdout);
}

static void pb_closed(struct session *s, const char *reason, enum mt_status status, void *arg)
{
	struct pb *pb = arg;

	if (pb->agent == s)
		pb->agent = NULL;
	printf("DOWN %s\n", reason);
	fflush(stdout);
}

static const struct session_ops pb_ops = {
    .on_established = pb_established,
    .on_frame = pb_frame,
    .on_closed = pb_closed,
};

static void pb_accept(struct ring *ring, int fd, void *arg)
{
	struct pb *pb = arg;
	struct session_opts o = {
	    .bufs = pb->bufs, .role = MT_ROLE_BROKER, .kind = MT_SESSION_CONTROL};

	if (fd < 0)
		return;
	if (!session_new(ring, pb->ctx, fd, &o, &pb_ops, pb))
		close(fd);
}

static void pb_signal(struct ring *ring, const struct signalfd_siginfo *si, void *arg)
{
	struct pb *pb = arg;

	if (si->ssi_signo == SIGUSR1 && pb->agent)
		pb_query(pb);
	else if (si->ssi_signo != SIGUSR1)
		ring_stop(ring);
}

static struct mt_bytes view(const char *s)
{
	return (struct mt_bytes){(const uint8_t *)s, (uint16_t)strlen(s)};
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'I'},
	    {"file", required_argument, NULL, 'f'},
	    {"process", required_argument, NULL, 'p'},
	    {"no-query", no_argument, NULL, 'n'},
	    {NULL, 0, NULL, 0},
	};
	const char *listen_at = NULL, *state = NULL, *idsrc = NULL, *why = NULL;
	struct enroll_identity idn = {0};
	STACK_OF(X509) *anchors = NULL;
	struct pb pb = {0};
	sigset_t sigs;
	int c, lfd = -1, ret = 1;

	log_init("posture_broker", LOG_LVL_INFO);
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			listen_at = optarg;
			break;
		case 's':
			state = optarg;
			break;
		case 'I':
			idsrc = optarg;
			break;
		case 'f':
			if (pb.nfiles < MT_POSTURE_FILES_MAX)
				pb.files[pb.nfiles++] = view(optarg);
			break;
		case 'p':
			if (pb.nprocs < MT_POSTURE_PROCS_MAX)
				pb.procs[pb.nprocs++] = view(optarg);
			break;
		case 'n':
			pb.no_query = true;
			break;
		default:
			return 2;
		}
	}
	if (!listen_at || !state)
		return 2;
	if (enroll_load(state, idsrc, &idn) < 0)
		return 1;
	anchors = sk_X509_new_null();
	if (!anchors || !sk_X509_push(anchors, idn.root))
		goto out;
	{
		struct tls_conf tc = {
		    .server = true,
		    .cert = idn.cert,
		    .chain = idn.chain,
		    .key = idn.key,
		    .anchors = anchors,
		    .peer_roles = MT_ROLE_BIT(MT_ROLE_AGENT),
		    .peer_tenant = idn.ident.tenant,
		};

		pb.ctx = tls_ctx_new(&tc, &why);
	}
	if (!pb.ctx) {
		log_warnx("TLS: %s", why);
		goto out;
	}
	lfd = conf_listen_tcp(listen_at, 16, "--listen");
	pb.ring = ring_new(256);
	if (lfd < 0 || !pb.ring || !(pb.bufs = ring_bufgroup_new(pb.ring, 64, MT_FRAME_MAX)))
		goto out;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGUSR1);
	if (ring_signals(pb.ring, &sigs, pb_signal, &pb) < 0 ||
	    ring_accept(pb.ring, lfd, pb_accept, &pb) < 0)
		goto out;
	ret = ring_run(pb.ring) < 0;
out:
	ring_free(pb.ring);
	if (lfd >= 0)
		close(lfd);
	tls_ctx_free(pb.ctx);
	sk_X509_free(anchors);
	enroll_identity_free(&idn);
	return ret;
}
