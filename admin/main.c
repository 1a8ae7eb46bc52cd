/*
 * mtun-admin: the admin API alone on a store (tests, and a control plane without a broker).
 * The broker embeds the same server (admin_server_start) in single-node mode.
 */
#include <errno.h>
#include <stdbool.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin/admin.h"
#include "enroll.h"
#include "log.h"

static void usage(void)
{
	fprintf(
	    stderr,
	    "usage: mtun-admin serve --db FILE --listen ADDR:PORT --state DIR\n"
	    "                        [--tenant T] [--identity-source DIR] [--crl-subscribe] [-v]\n"
	    "       mtun-admin migrate --db FILE\n"
	    "       mtun-admin enroll|renew --ca HOST:PORT --ca-fingerprint FP --token T\n"
	    "                        --state DIR [--id ID]   (the server's broker identity)\n");
}

/* The CRL subscription's thread may outlive the server: it reaches it under this lock. */
static pthread_mutex_t crl_lock = PTHREAD_MUTEX_INITIALIZER;
static struct admin_server *crl_srv;

struct crl_args {
	const char *state, *identity_source;
};

static int on_crl(X509_CRL *crl, void *arg)
{
	int stop;

	pthread_mutex_lock(&crl_lock);
	stop = crl_srv == NULL;
	if (crl_srv)
		admin_server_set_crl(crl_srv, crl);
	pthread_mutex_unlock(&crl_lock);
	return stop;
}

static void *crl_thread(void *arg)
{
	const struct crl_args *a = arg;
	struct timespec ts = {.tv_sec = 2};
	int ret;

	for (;;) {
		ret = enroll_crl_subscribe(a->state, a->identity_source, on_crl, NULL);
		pthread_mutex_lock(&crl_lock);
		if (!crl_srv) {
			pthread_mutex_unlock(&crl_lock);
			return NULL;
		}
		pthread_mutex_unlock(&crl_lock);
		log_warnx("CRL subscription ended (%s); again in 2 s", strerror(-ret));
		nanosleep(&ts, NULL);
	}
}

static void on_change(void *arg, struct store *st, struct admin_snapshot *s)
{
	/* What the broker does on a change: swap the new snapshot in. Here: report it. */
	log_event(LOG_LVL_INFO, "admin.snapshot",
	          "tenant=%s generation=%lld segments=%zu rules=%zu", s->tenant,
	          (long long)s->generation, segset_count(s->segs), policy_rule_count(s->pol));
	admin_snapshot_free(s);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"db", required_argument, NULL, 'd'},
	    {"listen", required_argument, NULL, 'l'},
	    {"state", required_argument, NULL, 's'},
	    {"tenant", required_argument, NULL, 't'},
	    {"identity-source", required_argument, NULL, 'i'},
	    {"crl-subscribe", no_argument, NULL, 'c'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct admin_server_conf conf = {.identity_source = getenv("MTUN_IDENTITY_SOURCE")};
	struct admin_server *srv = NULL;
	struct store *st = NULL;
	static struct crl_args ca;
	bool subscribe = false;
	pthread_t tid;
	const char *db = NULL, *why, *cmd;
	char uri[4200];
	sigset_t set;
	int c, sig, ret;

	log_init("mtun-admin", LOG_LVL_INFO);
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
		usage();
		return argc < 2 ? 2 : 0;
	}
	cmd = argv[1];
	if (strcmp(cmd, "enroll") == 0 || strcmp(cmd, "renew") == 0)
		return enroll_cli(MT_ROLE_BROKER, cmd[0] == 'r', argc - 1, argv + 1) ? 1 : 0;
	if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "migrate") != 0) {
		log_warnx("unknown command '%s'", cmd);
		usage();
		return 2;
	}
	optind = 1;
	while ((c = getopt_long(argc - 1, argv + 1, "vh", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			db = optarg;
			break;
		case 'l':
			conf.listen = optarg;
			break;
		case 's':
			conf.state = optarg;
			break;
		case 't':
			conf.tenant = optarg;
			break;
		case 'i':
			conf.identity_source = optarg;
			break;
		case 'c':
			subscribe = true;
			break;
		case 'v':
			log_set_level(LOG_LVL_DEBUG);
			break;
		case 'h':
			usage();
			return 0;
		default:
			usage();
			return 2;
		}
	}
	if (!db || (strcmp(cmd, "serve") == 0 && (!conf.listen || !conf.state))) {
		usage();
		return 2;
	}
	if (snprintf(uri, sizeof(uri), "sqlite:%s", db) >= (int)sizeof(uri)) {
		log_warnx("--db: path too long");
		return 2;
	}
	ret = store_open(uri, &st, &why);
	if (ret) {
		log_warnx("%s: %s", db, why);
		return 1;
	}
	if (strcmp(cmd, "migrate") == 0) {
		ret = admin_migrate(st);
		if (ret)
			log_warnx("migrate: %s", store_errmsg(st));
		store_close(st);
		return ret ? 1 : 0;
	}
	/* Signals are taken by sigwait here, not by the server's thread. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	ret = admin_server_start(&conf, st, on_change, NULL, &srv);
	if (ret) {
		store_close(st);
		return 1;
	}
	if (subscribe) {
		crl_srv = srv;
		ca.state = conf.state;
		ca.identity_source = conf.identity_source;
		if (pthread_create(&tid, NULL, crl_thread, &ca) != 0)
			fatalx("cannot start the CRL thread");
		pthread_detach(tid);
	}
	log_event(LOG_LVL_INFO, "admin.ready", "listen=%s port=%u", conf.listen,
	          admin_server_port(srv));
	sigwait(&set, &sig);
	log_event(LOG_LVL_INFO, "admin.stop", "signal=%d", sig);
	pthread_mutex_lock(&crl_lock);
	crl_srv = NULL;
	pthread_mutex_unlock(&crl_lock);
	admin_server_stop(srv);
	store_close(st);
	return 0;
}
