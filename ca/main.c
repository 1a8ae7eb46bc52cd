/* mtun-ca: tenant CAs, enrollment service, revocation. Subcommands from a table (wg.c style). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "ca.h"
#include "keyfile.h"
#include "log.h"

#define CA_DB_FILE   "ca.db"
#define CA_PEM_MAX   (256 * 1024)
#define IMPORT_PASS  "MTUN_CA_IMPORT_PASS"
#define CA_ADMIN_DIR "/run/mtun"

static volatile int ca_stop;

struct ca_args {
	const char *state, *tenant, *listen, *admin, *import_cert, *import_key, *csr_out;
	const char *cert, *root;
	const char *wrap_key; /* custody: the inspection nodes' X25519 PUBLIC key (PEM) */
	enum ca_key_alg alg;
	bool external;
	int kek_fd;
	long leaf_ttl;
	int count;
};

/* clang-format off */
static const struct option ca_longopts[] = {
    {"state", required_argument, NULL, 's'},
    {"tenant", required_argument, NULL, 't'},
    {"key-alg", required_argument, NULL, 'k'},
    {"import-ca", required_argument, NULL, 'i'},
    {"external", no_argument, NULL, 'e'},
    {"csr-out", required_argument, NULL, 'o'},
    {"cert", required_argument, NULL, 'c'},
    {"root", required_argument, NULL, 'r'},
    {"listen", required_argument, NULL, 'l'},
    {"admin-socket", required_argument, NULL, 'a'},
    {"kek-fd", required_argument, NULL, 'f'},
    {"leaf-ttl", required_argument, NULL, 'L'},
    {"log-level", required_argument, NULL, 'v'},
    {"count", required_argument, NULL, 'n'},
    {"wrap-key", required_argument, NULL, 'w'},
    {NULL, 0, NULL, 0},
};
/* clang-format on */

static int ca_parse_args(int argc, char **argv, struct ca_args *a)
{
	enum log_level lvl;
	char *end;
	int c;

	memset(a, 0, sizeof(*a));
	a->kek_fd = -1;
	a->leaf_ttl = CA_LEAF_TTL_DEFAULT;
	a->count = 200;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", ca_longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			a->state = optarg;
			break;
		case 't':
			a->tenant = optarg;
			break;
		case 'k':
			if (pki_key_alg_parse(optarg, &a->alg)) {
				log_warnx("--key-alg: p256 (default), rsa, rsa3072");
				return -EINVAL;
			}
			break;
		case 'i':
			/* --import-ca CERT KEY: the key is the next argument */
			if (optind >= argc) {
				log_warnx("--import-ca needs CERT and KEY");
				return -EINVAL;
			}
			a->import_cert = optarg;
			a->import_key = argv[optind++];
			break;
		case 'e':
			a->external = true;
			break;
		case 'o':
			a->csr_out = optarg;
			break;
		case 'c':
			a->cert = optarg;
			break;
		case 'r':
			a->root = optarg;
			break;
		case 'l':
			a->listen = optarg;
			break;
		case 'a':
			a->admin = optarg;
			break;
		case 'f':
			a->kek_fd = (int)strtol(optarg, &end, 10);
			if (*end || a->kek_fd < 0)
				return -EINVAL;
			break;
		case 'L':
			a->leaf_ttl = strtol(optarg, &end, 10);
			if (*end || a->leaf_ttl < 300 || a->leaf_ttl > 397L * 86400) {
				log_warnx("--leaf-ttl: seconds, 300 .. 397 days");
				return -EINVAL;
			}
			break;
		case 'v':
			if (log_parse_level(optarg, &lvl))
				return -EINVAL;
			log_set_level(lvl);
			break;
		case 'w':
			a->wrap_key = optarg;
			break;
		case 'n':
			a->count = (int)strtol(optarg, &end, 10);
			if (*end || a->count < 1 || a->count > 1000000)
				return -EINVAL;
			break;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc) {
		log_warnx("unexpected argument '%s'", argv[optind]);
		return -EINVAL;
	}
	return 0;
}

static int ca_open_state(const struct ca_args *a, struct ca_db **db)
{
	char path[PATH_MAX];

	if (!a->state) {
		log_warnx("--state DIR is required");
		return -EINVAL;
	}
	if (mkdir(a->state, 0700) < 0 && errno != EEXIST) {
		log_warn("cannot create %s", a->state);
		return -errno;
	}
	snprintf(path, sizeof(path), "%s/%s", a->state, CA_DB_FILE);
	umask(0077);
	return ca_db_open(path, db);
}

static int ca_print_pin(struct ca_db *db, const struct ca_secret *kek)
{
	char pin[8 + 64 + 1];
	X509 *cert;
	EVP_PKEY *key;
	int ret;

	ret = ca_service_load(db, kek, &cert, &key);
	if (ret)
		return ret;
	ret = enroll_pin_of(cert, pin);
	if (!ret)
		printf("ca-fingerprint=%s\n", pin);
	X509_free(cert);
	EVP_PKEY_free(key);
	return ret;
}

static int ca_print_root(struct ca_db *db, const struct ca_secret *kek, const char *tenant)
{
	struct ca_tenant t;
	char *pem;
	size_t len;
	unsigned char md[32];
	unsigned mdlen;
	int ret;

	ret = ca_tenant_load(db, kek, tenant, &t);
	if (ret)
		return ret;
	if (X509_digest(t.root, EVP_sha256(), md, &mdlen) == 1) {
		printf("tenant=%s root-sha256=", tenant);
		for (unsigned i = 0; i < mdlen; i++)
			printf("%02x", md[i]);
		printf("\n");
	}
	ret = pki_pem_of_cert(t.root, &pem, &len);
	if (!ret) {
		fwrite(pem, 1, len, stdout);
		free(pem);
	}
	ca_tenant_clear(&t);
	return ret;
}

static int ca_pass_cb(char *buf, int size, int rwflag, void *u)
{
	const char *p = getenv(IMPORT_PASS);
	int n;

	if (!p)
		return -1;
	n = (int)strlen(p);
	if (n >= size)
		return -1;
	memcpy(buf, p, (size_t)n);
	return n;
}

static int cmd_init(int argc, char **argv)
{
	struct ca_args a;
	struct ca_secret kek = {0};
	struct ca_db *db = NULL;
	uint8_t *pem = NULL;
	size_t len;
	EVP_PKEY *key = NULL;
	const char *why = "";
	char *csr = NULL;
	int ret;

	ret = ca_parse_args(argc, argv, &a);
	if (ret)
		return ret;
	if (!a.tenant || (a.external && a.import_cert)) {
		log_warnx("init needs --tenant, and at most one of --import-ca and --external");
		return -EINVAL;
	}
	ret = ca_kek_read(a.kek_fd, &kek);
	if (ret)
		return ret;
	ret = ca_open_state(&a, &db);
	if (ret)
		goto out;
	ret = ca_service_ensure(db, &kek);
	if (ret)
		goto out;
	if (a.import_cert) {
		BIO *bio = BIO_new_file(a.import_key, "r");

		key = bio ? PEM_read_bio_PrivateKey(bio, NULL, ca_pass_cb, NULL) : NULL;
		BIO_free(bio);
		ERR_clear_error();
		if (!key) {
			log_warnx("cannot read the CA key %s (encrypted keys: passphrase in %s)",
			          a.import_key, IMPORT_PASS);
			ret = -EINVAL;
			goto out;
		}
		ret = keyfile_slurp(a.import_cert, CA_PEM_MAX, &pem, &len);
		if (ret) {
			log_warnx("cannot read %s: %s", a.import_cert, strerror(-ret));
			goto out;
		}
		ret = ca_tenant_import(db, &kek, a.tenant, pem, len, key, &why);
		if (ret && why[0])
			log_warnx("import refused: %s", why);
	} else if (a.external) {
		ret = ca_tenant_external(db, &kek, a.tenant, a.alg, &csr, &len);
		if (!ret && a.csr_out)
			ret = keyfile_write_atomic(a.csr_out, csr, len, 0644);
		else if (!ret)
			fwrite(csr, 1, len, stdout);
		if (!ret)
			printf("tenant=%s state=pending: have the tenant's root sign the CSR, then "
			       "run mtun-ca import-signed\n",
			       a.tenant);
	} else {
		ret = ca_tenant_init(db, &kek, a.tenant, a.alg);
	}
	if (!ret)
		ret = ca_print_pin(db, &kek);
	if (!ret && !a.external)
		ret = ca_print_root(db, &kek, a.tenant);
out:
	free(csr);
	free(pem);
	EVP_PKEY_free(key);
	ca_db_close(db);
	ca_secret_clear(&kek);
	return ret;
}

static int cmd_import_signed(int argc, char **argv)
{
	struct ca_args a;
	struct ca_secret kek = {0};
	struct ca_db *db = NULL;
	uint8_t *cert = NULL, *root = NULL;
	size_t lc, lr;
	const char *why = "";
	int ret;

	ret = ca_parse_args(argc, argv, &a);
	if (ret)
		return ret;
	if (!a.tenant || !a.cert || !a.root) {
		log_warnx("import-signed needs --tenant, --cert SIGNED.pem and --root ROOT.pem");
		return -EINVAL;
	}
	ret = ca_kek_read(a.kek_fd, &kek);
	if (ret)
		return ret;
	ret = keyfile_slurp(a.cert, CA_PEM_MAX, &cert, &lc);
	if (!ret)
		ret = keyfile_slurp(a.root, CA_PEM_MAX, &root, &lr);
	if (ret) {
		log_warnx("cannot read the certificate files: %s", strerror(-ret));
		goto out;
	}
	ret = ca_open_state(&a, &db);
	if (!ret)
		ret = ca_tenant_import_signed(db, &kek, a.tenant, cert, lc, root, lr, &why);
	if (ret && why[0])
		log_warnx("import-signed refused: %s", why);
	if (!ret)
		ret = ca_print_root(db, &kek, a.tenant);
out:
	free(cert);
	free(root);
	ca_db_close(db);
	ca_secret_clear(&kek);
	return ret;
}

static int cmd_fingerprint(int argc, char **argv)
{
	struct ca_args a;
	struct ca_secret kek = {0};
	struct ca_db *db = NULL;
	int ret;

	ret = ca_parse_args(argc, argv, &a);
	if (!ret)
		ret = ca_kek_read(a.kek_fd, &kek);
	if (ret)
		return ret;
	ret = ca_open_state(&a, &db);
	if (!ret)
		ret = ca_print_pin(db, &kek);
	ca_db_close(db);
	ca_secret_clear(&kek);
	return ret;
}

static void ca_on_signal(int sig)
{
	ca_stop = 1;
}

static int cmd_serve(int argc, char **argv)
{
	struct sigaction sa = {.sa_handler = ca_on_signal};
	struct ca_signer signer = {.pid = -1, .fd = -1};
	char path[PATH_MAX];
	struct ca_args a;
	struct ca_secret kek = {0};
	struct ca_server srv;
	struct ca_db *db = NULL;
	EVP_PKEY *wrap_pub = NULL;
	int ret;

	ret = ca_parse_args(argc, argv, &a);
	if (ret)
		return ret;
	if (!a.listen) {
		log_warnx("serve needs --listen HOST:PORT");
		return -EINVAL;
	}
	prctl(PR_SET_DUMPABLE, 0);
	/* before the secret is read: a private wrapping key is refused outright */
	if (a.wrap_key) {
		ret = envelope_pub_load(a.wrap_key, &wrap_pub);
		if (ret)
			return ret;
	}
	ret = ca_kek_read(a.kek_fd, &kek);
	if (ret)
		goto out;
	ret = ca_open_state(&a, &db);
	if (ret)
		goto out;
	snprintf(path, sizeof(path), "%s/%s", a.state, CA_DB_FILE);
	ret = ca_signer_start(path, &kek, &signer);
	if (ret) {
		log_warnx("cannot start the signer process: %s", strerror(-ret));
		goto out;
	}
	ret = ca_server_init(&srv, db, &kek);
	/* from here on only the signer holds the key-encryption secret and issuing keys */
	ca_secret_clear(&kek);
	if (ret)
		goto out;
	srv.kek = NULL;
	srv.signer = &signer;
	srv.leaf_ttl = a.leaf_ttl;
	srv.wrap_pub = wrap_pub;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (!a.admin) {
		/* where mtunctl looks by default */
		if (mkdir(CA_ADMIN_DIR, 0700) < 0 && errno != EEXIST)
			log_warn("cannot create %s", CA_ADMIN_DIR);
		a.admin = CA_ADMIN_DIR "/ca.sock";
	}
	ret = ca_server_listen(&srv, a.listen, a.admin);
	if (!ret) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";

		/* the bound port, for --listen HOST:0 */
		if (getsockname(srv.lfd, (struct sockaddr *)&ss, &sl) == 0)
			getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port,
			            sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
		log_event(LOG_LVL_INFO, "ca.ready", "listen=%s port=%s admin=%s", a.listen, port,
		          a.admin);
		ret = ca_server_run(&srv, &ca_stop);
	}
	if (srv.afd >= 0)
		unlink(a.admin);
	ca_server_free(&srv);
out:
	ca_signer_stop(&signer);
	ca_db_close(db);
	ca_secret_clear(&kek);
	EVP_PKEY_free(wrap_pub);
	return ret;
}

/* A consistent copy of the store into DIR, recorded so that rotation can reach it. */
static int cmd_backup(int argc, char **argv)
{
	char path[PATH_MAX], real[PATH_MAX], stamp[32];
	struct ca_args a;
	struct ca_db *db = NULL;
	const char *dir;
	struct tm tm;
	time_t now = time(NULL);
	int ret;

	if (argc < 2 || argv[1][0] == '-') {
		log_warnx("backup needs DIR");
		return -EINVAL;
	}
	dir = argv[1];
	ret = ca_parse_args(argc - 1, argv + 1, &a);
	if (ret)
		return ret;
	/* an absolute path, so that rotation finds it whatever its working directory */
	if (!realpath(dir, real)) {
		ret = -errno;
		log_warn("backup: %s", dir);
		return ret;
	}
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	if (snprintf(path, sizeof(path), "%s/ca-%s-%d.db", real, stamp, (int)getpid()) >=
	    (int)sizeof(path))
		return -ENAMETOOLONG;
	ret = ca_open_state(&a, &db);
	if (ret)
		return ret;
	ret = custody_backup(db, path);
	if (!ret)
		printf("%s\n", path);
	ca_db_close(db);
	return ret;
}

int ca_bench(int count);

static int cmd_bench(int argc, char **argv)
{
	struct ca_args a;
	int ret = ca_parse_args(argc, argv, &a);

	return ret ? ret : ca_bench(a.count);
}

static int cmd_help(int argc, char **argv);

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} ca_cmds[] = {
    {"init", cmd_init,
     "create a tenant's CA: --tenant T [--key-alg p256|rsa] "
     "[--import-ca CERT KEY | --external [--csr-out F]]"},
    {"import-signed", cmd_import_signed,
     "finish --external: --tenant T --cert SIGNED.pem --root ROOT.pem"},
    {"fingerprint", cmd_fingerprint, "print the CA's TLS fingerprint for --ca-fingerprint"},
    {"serve", cmd_serve,
     "run the CA: --listen HOST:PORT [--admin-socket PATH (/run/mtun/ca.sock)] [--leaf-ttl S]"
     " [--wrap-key NODES-PUBLIC.pem]"},
    {"backup", cmd_backup, "copy the store into DIR (rotation later deletes old keys there)"},
    {"bench", cmd_bench, "print bench=ca key=value lines (signatures, enrollments)"},
    {"help", cmd_help, "show this help"},
};

static int cmd_help(int argc, char **argv)
{
	printf("Usage: mtun-ca COMMAND [--state DIR] [--kek-fd N] [options]\n"
	       "The key-encryption secret comes from --kek-fd N or $%s.\n\n",
	       CA_KEK_ENV);
	for (size_t i = 0; i < sizeof(ca_cmds) / sizeof(ca_cmds[0]); i++)
		printf("  %-14s %s\n", ca_cmds[i].name, ca_cmds[i].help);
	return 0;
}

int main(int argc, char **argv)
{
	log_init("mtun-ca", LOG_LVL_INFO);
	CRYPTO_secure_malloc_init(1 << 16, 32);
	if (argc < 2) {
		cmd_help(0, NULL);
		return 1;
	}
	for (size_t i = 0; i < sizeof(ca_cmds) / sizeof(ca_cmds[0]); i++) {
		if (strcmp(argv[1], ca_cmds[i].name) == 0) {
			int ret = ca_cmds[i].fn(argc - 1, argv + 1);

			CRYPTO_secure_malloc_done();
			return ret ? 1 : 0;
		}
	}
	log_warnx("unknown command '%s' (try mtun-ca help)", argv[1]);
	return 1;
}
