/* Test tool for the interception programs: stands in for the agent (listener, DNS stub,
 * loader) and for the clients that the tests in tests/bpf run inside a test cgroup. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "log.h"
#include "agent/intercept.h"
#include "bpf/intercept.skel.h"

#define DNS_HDR_LEN 12
#define DNS_MAX     512
#define ANSWER_ADDR "192.0.2.53"
#define CTL_MAX     256

static noreturn void usage(void);

struct probe_opts {
	const char *cgroup, *instance, *ctl, *pin_root;
	uint16_t port, dns_port;
	uint32_t mark;
	bool keep;
};

static int parse_u32(const char *s, uint32_t max, uint32_t *out)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || end == s || *end || v > max)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int parse_port(const char *s, uint16_t *port)
{
	uint32_t v;

	if (parse_u32(s, 65535, &v) < 0)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* "a.b.c.d/n" into addr and prefix. */
static int parse_cidr(const char *s, struct in_addr *addr, unsigned *prefix)
{
	char buf[INET_ADDRSTRLEN + 4];
	char *slash;
	uint32_t p = 32;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	slash = strchr(buf, '/');
	if (slash) {
		*slash = '\0';
		if (parse_u32(slash + 1, 32, &p) < 0)
			return -EINVAL;
	}
	if (inet_pton(AF_INET, buf, addr) != 1)
		return -EINVAL;
	*prefix = p;
	return 0;
}

static const char *sa_str(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		snprintf(buf, size, "%s:%u", host, port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		port = ntohs(sin6->sin6_port);
		snprintf(buf, size, "[%s]:%u", host, port);
	} else {
		snprintf(buf, size, "?");
	}
	return buf;
}

/* addr (IPv4 or IPv6 text) and port into a sockaddr. */
static int sa_make(const char *addr, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		*len = sizeof(*sin);
		return 0;
	}
	if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		*len = sizeof(*sin6);
		return 0;
	}
	return -EINVAL;
}

static int loopback_socket(int type, uint16_t port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd, one = 1;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 64) < 0)) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

/*
 * A DNS answer to the query in buf (len bytes): the question echoed, one A record.
 * Returns the answer's length or -EINVAL for anything but one plain question.
 */
static int dns_answer(uint8_t *buf, size_t len, size_t size)
{
	static const uint8_t rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
	struct in_addr a;
	size_t off = DNS_HDR_LEN;

	if (len < DNS_HDR_LEN || (buf[2] & 0x80) || buf[4] != 0 || buf[5] != 1)
		return -EINVAL;
	while (off < len && buf[off] != 0) {
		if (buf[off] > 63)
			return -EINVAL;
		off += 1 + buf[off];
	}
	off += 1 + 4; /* root label, qtype, qclass */
	if (off > len || off + sizeof(rr) + 4 > size)
		return -EINVAL;
	buf[2] = 0x84 | (buf[2] & 0x01); /* QR, AA, keep RD */
	buf[3] = 0x80;                   /* RA, NOERROR */
	buf[6] = 0;
	buf[7] = 1;
	memset(buf + 8, 0, 4);
	memcpy(buf + off, rr, sizeof(rr));
	inet_pton(AF_INET, ANSWER_ADDR, &a);
	memcpy(buf + off + sizeof(rr), &a, 4);
	return (int)(off + sizeof(rr) + 4);
}

static void serve_conn(struct intercept *it, int lfd)
{
	struct sockaddr_storage peer;
	struct sockaddr_in orig;
	socklen_t len = sizeof(peer);
	char line[128], a[64], b[64];
	int fd, err, n;

	fd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	err = intercept_orig_dst(it, fd, &orig);
	if (err == 0)
		n = snprintf(line, sizeof(line), "orig=%s\n",
		             sa_str((struct sockaddr_storage *)&orig, a, sizeof(a)));
	else
		n = snprintf(line, sizeof(line), "orig=none err=%d\n", err);
	printf("conn peer=%s %s", sa_str(&peer, b, sizeof(b)), line);
	fflush(stdout);
	if (write(fd, line, (size_t)n) < 0)
		log_warn("probe: write");
	close(fd);
}

static void serve_dns(struct intercept *it, int ufd)
{
	struct sockaddr_storage from;
	struct sockaddr_in resolver;
	socklen_t len = sizeof(from);
	uint8_t buf[DNS_MAX];
	char a[64], b[64];
	ssize_t n;
	int r;

	n = recvfrom(ufd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len);
	if (n < 0)
		return;
	r = intercept_dns_orig(it, (struct sockaddr_in *)&from, &resolver);
	printf("dns client=%s orig=%s\n", sa_str(&from, a, sizeof(a)),
	       r ? "none" : sa_str((struct sockaddr_storage *)&resolver, b, sizeof(b)));
	fflush(stdout);
	r = dns_answer(buf, (size_t)n, sizeof(buf));
	if (r < 0)
		return;
	if (sendto(ufd, buf, (size_t)r, 0, (struct sockaddr *)&from, len) < 0)
		log_warn("probe: dns reply");
}

/* "add CIDR [PORTMIN PORTMAX]" or "del CIDR" on a control connection. */
static void serve_ctl(struct intercept *it, int cfd)
{
	char buf[CTL_MAX], cidr[64];
	uint16_t pmin = 0, pmax = 65535;
	char pa[16] = "", pb[16] = "";
	struct in_addr addr;
	unsigned prefix;
	int fd, err = -EINVAL;
	ssize_t n;

	fd = accept4(cfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		goto out;
	buf[n] = '\0';
	if (sscanf(buf, "add %63s %15s %15s", cidr, pa, pb) >= 1 && strncmp(buf, "add ", 4) == 0) {
		if (parse_cidr(cidr, &addr, &prefix) == 0 &&
		    (!pa[0] || (parse_port(pa, &pmin) == 0 && parse_port(pb, &pmax) == 0)))
			err = intercept_add_range(it, addr, prefix, pmin, pmax);
	} else if (sscanf(buf, "del %63s", cidr) == 1 && strncmp(buf, "del ", 4) == 0) {
		if (parse_cidr(cidr, &addr, &prefix) == 0)
			err = intercept_del_range(it, addr, prefix);
	}
	n = snprintf(buf, sizeof(buf), err ? "err %d\n" : "ok\n", err);
	if (write(fd, buf, (size_t)n) < 0)
		log_warn("probe: ctl reply");
out:
	close(fd);
}

static int ctl_socket(const char *path, bool client)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (!client)
		unlink(path);
	if (client ? connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0
	           : (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 8) < 0)) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static int cmd_serve(const struct probe_opts *o)
{
	struct intercept_config cfg = {
	    .cgroup = o->cgroup,
	    .pin_root = o->pin_root,
	    .instance = o->instance,
	    .synth_prefix = 10,
	    .tcp_port = o->port,
	    .dns_port = o->dns_port,
	    .exempt_mark = o->mark,
	};
	struct pollfd pfd[4];
	struct intercept *it = NULL;
	sigset_t mask;
	int lfd = -1, ufd = -1, cfd = -1, sfd = -1, err;

	inet_pton(AF_INET, "100.64.0.0", &cfg.synth);
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	lfd = loopback_socket(SOCK_STREAM, o->port);
	ufd = o->dns_port ? loopback_socket(SOCK_DGRAM, o->dns_port) : -EBADF;
	cfd = o->ctl ? ctl_socket(o->ctl, false) : -EBADF;
	if (sfd < 0 || lfd < 0 || (o->dns_port && ufd < 0) || (o->ctl && cfd < 0)) {
		err = sfd < 0 ? -errno : lfd < 0 ? lfd : (o->dns_port && ufd < 0) ? ufd : cfd;
		log_warnx("probe: cannot set up sockets: %s", strerror(-err));
		goto out;
	}
	err = intercept_open(&cfg, &it);
	if (err < 0)
		goto out;
	printf("ready recovered=%u\n", intercept_recovered(it));
	fflush(stdout);

	pfd[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
	pfd[1] = (struct pollfd){.fd = lfd, .events = POLLIN};
	pfd[2] = (struct pollfd){.fd = ufd, .events = POLLIN};
	pfd[3] = (struct pollfd){.fd = cfd, .events = POLLIN};
	for (;;) {
		if (poll(pfd, 4, -1) < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (pfd[0].revents)
			break;
		if (pfd[1].revents & POLLIN)
			serve_conn(it, lfd);
		if (pfd[2].revents & POLLIN)
			serve_dns(it, ufd);
		if (pfd[3].revents & POLLIN)
			serve_ctl(it, cfd);
	}
	if (!o->keep)
		err = intercept_detach(it);
out:
	intercept_free(it);
	if (o->ctl && cfd >= 0)
		unlink(o->ctl);
	int fds[] = {sfd, lfd, ufd, cfd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return err;
}

static int cmd_connect(const struct probe_opts *o, int argc, char **argv)
{
	struct sockaddr_storage ss, peer;
	socklen_t len, plen = sizeof(peer);
	char buf[128], a[64];
	uint16_t port;
	ssize_t n;
	int fd, err = 0;

	if (argc != 2 || parse_port(argv[1], &port) < 0 || sa_make(argv[0], port, &ss, &len) < 0)
		usage();
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (o->mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &o->mark, sizeof(o->mark)) < 0) {
		err = -errno;
		goto out;
	}
	if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
		err = -errno;
		printf("error=%s\n", strerror(errno));
		goto out;
	}
	if (getpeername(fd, (struct sockaddr *)&peer, &plen) == 0)
		printf("peer=%s\n", sa_str(&peer, a, sizeof(a)));
	n = read(fd, buf, sizeof(buf) - 1);
	if (n > 0) {
		buf[n] = '\0';
		printf("%s", buf);
	}
out:
	close(fd);
	return err;
}

/* An unconnected DNS query for probe.test A to ADDR:53, and where the answer came from. */
static int cmd_dns(const struct probe_opts *o, int argc, char **argv)
{
	static const uint8_t query[] = {0x12, 0x34, 0x01, 0,   0,   1,   0,   0,   0, 0,
	                                0,    0,    5,    'p', 'r', 'o', 'b', 'e', 4, 't',
	                                'e',  's',  't',  0,   0,   1,   0,   1};
	struct sockaddr_storage ss, from;
	socklen_t len, flen = sizeof(from);
	struct pollfd pfd;
	uint8_t buf[DNS_MAX];
	char a[64], ans[INET_ADDRSTRLEN] = "none";
	ssize_t n;
	int fd, err = 0;

	if (argc != 1 || sa_make(argv[0], 53, &ss, &len) < 0)
		usage();
	fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sendto(fd, query, sizeof(query), 0, (struct sockaddr *)&ss, len) < 0) {
		err = -errno;
		printf("error=%s\n", strerror(errno));
		goto out;
	}
	pfd = (struct pollfd){.fd = fd, .events = POLLIN};
	if (poll(&pfd, 1, 3000) != 1) {
		err = -ETIMEDOUT;
		printf("error=timeout\n");
		goto out;
	}
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
	if (n < 0) {
		err = -errno;
		goto out;
	}
	if (n >= (ssize_t)sizeof(query) + 16 && buf[0] == 0x12 && buf[1] == 0x34)
		inet_ntop(AF_INET, buf + n - 4, ans, sizeof(ans));
	printf("from=%s answer=%s\n", sa_str(&from, a, sizeof(a)), ans);
out:
	close(fd);
	return err;
}

static int cmd_ctl(const struct probe_opts *o, int argc, char **argv)
{
	char buf[CTL_MAX];
	ssize_t n;
	int fd, err = 0;

	if (argc != 1 || !o->ctl || strlen(argv[0]) >= CTL_MAX)
		usage();
	fd = ctl_socket(o->ctl, true);
	if (fd < 0)
		return fd;
	if (write(fd, argv[0], strlen(argv[0])) < 0 || (n = read(fd, buf, sizeof(buf) - 1)) <= 0) {
		err = -EIO;
		goto out;
	}
	buf[n] = '\0';
	printf("%s", buf);
	if (strncmp(buf, "ok", 2) != 0)
		err = -EINVAL;
out:
	close(fd);
	return err;
}

static int cmd_purge(const struct probe_opts *o, int argc, char **argv)
{
	return intercept_purge(o->pin_root, o->instance ? o->instance : "default");
}

/* A 64-byte Ethernet + IPv4 frame from 127.0.0.1:40000 to 127.0.0.1:dport over proto. */
static size_t fixture_frame(uint8_t *f, uint8_t proto, uint16_t dport)
{
	static const uint8_t ip[] = {0x45, 0, 0,   32, 0, 0, 0x40, 0, 64, 0,
	                             0,    0, 127, 0,  0, 1, 127,  0, 0,  1};

	memset(f, 0, 64); /* long enough for an IPv6 header too */
	f[12] = 0x08;     /* ETH_P_IP */
	memcpy(f + 14, ip, sizeof(ip));
	f[14 + 9] = proto;
	f[34] = 40000 >> 8;
	f[35] = 40000 & 0xff;
	f[36] = (uint8_t)(dport >> 8);
	f[37] = (uint8_t)dport;
	f[39] = 12;
	memcpy(f + 42, "abcd", 4);
	return 64;
}

/*
 * BPF_PROG_TEST_RUN on each program: "NAME ENOTSUPP" where the kernel has no test run
 * for the type; for the cgroup_skb program, fixtures: "NAME FIXTURE retval=N", then
 * how many DNS clients they recorded (test run's socket has no local storage: none).
 */
static int cmd_testrun(const struct probe_opts *o, int argc, char **argv)
{
	static const struct {
		const char *name;
		uint8_t proto;
		size_t len;  /* 0: the whole frame */
		uint8_t eth; /* low byte of the ethertype: 0x00 IPv4, 0xdd with 0x86 IPv6 */
	} fixtures[] = {
	    {"udp-to-stub", IPPROTO_UDP, 0, 0x00},
	    {"tcp", IPPROTO_TCP, 0, 0x00},
	    {"truncated-udp", IPPROTO_UDP, 36, 0x00},
	    {"ipv6", IPPROTO_UDP, 0, 0xdd},
	};
	struct intercept_bpf *skel;
	struct bpf_program *prog;
	uint8_t frame[64], key[64];
	int err;

	skel = intercept_bpf__open();
	if (!skel)
		return -errno;
	skel->rodata->dns_port = 7053;
	skel->rodata->netns_cookie = 1;
	err = intercept_bpf__load(skel);
	if (err < 0)
		goto out;
	bpf_object__for_each_program(prog, skel->obj)
	{
		const char *name = bpf_program__name(prog);

		if (bpf_program__type(prog) != BPF_PROG_TYPE_CGROUP_SKB) {
			LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame,
			            .data_size_in = sizeof(frame));

			memset(frame, 0, sizeof(frame));
			err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts);
			/* 524: the kernel's ENOTSUPP, which libc has no name for */
			printf("%s %s\n", name,
			       err == -524 ? "ENOTSUPP"
			       : err       ? strerror(-err)
			                   : "ok");
			continue;
		}
		for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
			size_t len = fixture_frame(frame, fixtures[i].proto, 7053);

			if (fixtures[i].eth) {
				frame[12] = 0x86;
				frame[13] = fixtures[i].eth;
			}
			LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame,
			            .data_size_in = fixtures[i].len ? fixtures[i].len : len);

			err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts);
			if (err)
				printf("%s %s error=%s\n", name, fixtures[i].name, strerror(-err));
			else
				printf("%s %s retval=%u\n", name, fixtures[i].name, opts.retval);
		}
	}
	err = bpf_map__get_next_key(skel->maps.dns_clients, NULL, key,
	                            bpf_map__key_size(skel->maps.dns_clients));
	printf("dns_clients %s\n", err == -ENOENT ? "empty" : "not-empty");
	err = 0;
out:
	intercept_bpf__destroy(skel);
	return err;
}

static int cmd_cgroup_root(const struct probe_opts *o, int argc, char **argv)
{
	char dir[4096];
	int err;

	err = intercept_cgroup2_root(dir, sizeof(dir));
	if (err == 0)
		printf("%s\n", dir);
	return err;
}

struct probe_cmd {
	const char *name;
	int (*run)(const struct probe_opts *o, int argc, char **argv);
	const char *help;
};

static int cmd_serve_args(const struct probe_opts *o, int argc, char **argv)
{
	if (argc)
		usage();
	return cmd_serve(o); /* port 0 is for the loader to refuse */
}

static const struct probe_cmd probe_cmds[] = {
    {"serve", cmd_serve_args, "attach, listen on 127.0.0.1:--port, DNS stub on --dns-port"},
    {"connect", cmd_connect, "ADDR PORT: connect, print peer= and the server's line"},
    {"dns", cmd_dns, "ADDR: unconnected query to ADDR:53, print from= and answer="},
    {"ctl", cmd_ctl, "'add CIDR [PMIN PMAX]' | 'del CIDR' to a serving probe (--ctl)"},
    {"purge", cmd_purge, "detach and unpin what --instance left behind"},
    {"cgroup-root", cmd_cgroup_root, "print the cgroup v2 mount the loader defaults to"},
    {"testrun", cmd_testrun, "try BPF_PROG_TEST_RUN on each program"},
};

static void usage(void)
{
	fprintf(stderr,
	        "usage: intercept_probe [--cgroup DIR] [--instance NAME] [--pin-root DIR]\n"
	        "  [--port N] [--dns-port N] [--mark N] [--ctl PATH] [--keep] CMD [ARGS]\n");
	for (size_t i = 0; i < sizeof(probe_cmds) / sizeof(probe_cmds[0]); i++)
		fprintf(stderr, "  %-11s %s\n", probe_cmds[i].name, probe_cmds[i].help);
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"cgroup", required_argument, NULL, 'c'},
	    {"instance", required_argument, NULL, 'i'},
	    {"pin-root", required_argument, NULL, 'r'},
	    {"port", required_argument, NULL, 'p'},
	    {"dns-port", required_argument, NULL, 'd'},
	    {"mark", required_argument, NULL, 'm'},
	    {"ctl", required_argument, NULL, 'C'},
	    {"keep", no_argument, NULL, 'k'},
	    {NULL, 0, NULL, 0},
	};
	struct probe_opts o = {0};
	int c, err;

	log_init("intercept-probe", LOG_LVL_INFO);
	while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o.cgroup = optarg;
			break;
		case 'i':
			o.instance = optarg;
			break;
		case 'r':
			o.pin_root = optarg;
			break;
		case 'p':
			if (parse_port(optarg, &o.port) < 0)
				usage();
			break;
		case 'd':
			if (parse_port(optarg, &o.dns_port) < 0)
				usage();
			break;
		case 'm':
			if (parse_u32(optarg, UINT32_MAX, &o.mark) < 0)
				usage();
			break;
		case 'C':
			o.ctl = optarg;
			break;
		case 'k':
			o.keep = true;
			break;
		default:
			usage();
		}
	}
	if (optind >= argc)
		usage();
	for (size_t i = 0; i < sizeof(probe_cmds) / sizeof(probe_cmds[0]); i++) {
		if (strcmp(argv[optind], probe_cmds[i].name) != 0)
			continue;
		err = probe_cmds[i].run(&o, argc - optind - 1, argv + optind + 1);
		return err ? 1 : 0;
	}
	usage();
}
