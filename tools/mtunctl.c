/* mtunctl: the admin CLI. Until the admin API exists it speaks to mtun-ca's local socket. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ca/ca.h"
#include "enroll.h"
#include "log.h"

#define CTL_SOCKET_DEFAULT "/run/mtun/ca.sock"
#define CTL_SOCKET_ENV     "MTUN_CA_ADMIN"

struct ctl_args {
	const char *socket, *tenant, *role, *user, *groups, *serial, *out;
	uint64_t ttl;
	bool der, authority;
	int argc;
	char **argv; /* positional arguments */
};

static int ctl_parse_ttl(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	uint64_t mul = 1;

	if (end == s)
		return -EINVAL;
	if (*end == 'm')
		mul = 60;
	else if (*end == 'h')
		mul = 3600;
	else if (*end == 'd')
		mul = 86400;
	else if (*end && *end != 's')
		return -EINVAL;
	if (*end && end[1])
		return -EINVAL;
	if (v > UINT32_MAX)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

static int ctl_parse(int argc, char **argv, struct ctl_args *a)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 'S'},
	    {"tenant", required_argument, NULL, 't'},
	    {"role", required_argument, NULL, 'r'},
	    {"user", required_argument, NULL, 'u'},
	    {"groups", required_argument, NULL, 'g'},
	    {"ttl", required_argument, NULL, 'T'},
	    {"serial", required_argument, NULL, 's'},
	    {"out", required_argument, NULL, 'o'},
	    {"der", no_argument, NULL, 'd'},
	    {"authority", no_argument, NULL, 'A'},
	    {NULL, 0, NULL, 0},
	};
	int c;

	memset(a, 0, sizeof(*a));
	a->socket = getenv(CTL_SOCKET_ENV) ? getenv(CTL_SOCKET_ENV) : CTL_SOCKET_DEFAULT;
	a->ttl = 3600;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'S':
			a->socket = optarg;
			break;
		case 't':
			a->tenant = optarg;
			break;
		case 'r':
			a->role = optarg;
			break;
		case 'u':
			a->user = optarg;
			break;
		case 'g':
			a->groups = optarg;
			break;
		case 'T':
			if (ctl_parse_ttl(optarg, &a->ttl)) {
				log_warnx("--ttl: a number with s, m, h or d (e.g. 1h)");
				return -EINVAL;
			}
			break;
		case 's':
			a->serial = optarg;
			break;
		case 'o':
			a->out = optarg;
			break;
		case 'd':
			a->der = true;
			break;
		case 'A':
			a->authority = true;
			break;
		default:
			return -EINVAL;
		}
	}
	a->argc = argc - optind;
	a->argv = argv + optind;
	if (!a->tenant) {
		log_warnx("--tenant is required");
		return -EINVAL;
	}
	return 0;
}

/* Sends b to the CA's admin socket; *resp holds the answer, m points into it. */
static int ctl_call(const char *path, struct enroll_buf *b, uint8_t **resp, struct enroll_msg *m)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	char msg[513] = "";
	int fd, ret;

	*resp = NULL;
	if (strlen(path) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		ret = -errno;
		log_warn("cannot reach mtun-ca at %s", path);
		goto out;
	}
	ret = enroll_fd_io(fd, b->p, b->len, true);
	if (!ret)
		ret = enroll_fd_recv(fd, ENROLL_MSG_MAX, resp, NULL, m);
	if (!ret && (m->type != ENROLL_T_RESPONSE || !enroll_msg_has(m, ET_STATUS)))
		ret = -EBADMSG;
	if (ret) {
		log_warnx("no valid answer from mtun-ca: %s", strerror(-ret));
		goto out;
	}
	if (m->v[ET_STATUS].p[0] || m->v[ET_STATUS].p[1]) {
		enroll_msg_str(m, ET_MESSAGE, msg, sizeof(msg));
		log_warnx("refused: %s", msg[0] ? msg : "(no reason given)");
		ret = -EACCES;
	}
out:
	if (ret) {
		free(*resp);
		*resp = NULL;
	}
	close(fd);
	return ret;
}

static int cmd_token(int argc, char **argv)
{
	struct ctl_args a;
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *resp = NULL;
	char tok[256];
	bool list;
	int ret;

	if (argc < 2 || (strcmp(argv[1], "create") != 0 && strcmp(argv[1], "list") != 0)) {
		log_warnx("usage: mtunctl token create|list --tenant T ...");
		return -EINVAL;
	}
	list = strcmp(argv[1], "list") == 0;
	ret = ctl_parse(argc - 1, argv + 1, &a);
	if (ret)
		return ret;
	if (!list && !a.role) {
		log_warnx("token create needs --role agent|connector|broker|inspector|admin");
		return -EINVAL;
	}
	ret = enroll_buf_init(&b, list ? ENROLL_T_TOKEN_LIST : ENROLL_T_TOKEN_CREATE);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, a.tenant);
	if (!ret && !list) {
		ret = enroll_buf_put_str(&b, ET_ROLE, a.role);
		if (!ret && a.user)
			ret = enroll_buf_put_str(&b, ET_USER, a.user);
		if (!ret && a.groups)
			ret = enroll_buf_put_str(&b, ET_GROUPS, a.groups);
		if (!ret)
			ret = enroll_buf_put_u64(&b, ET_TTL, a.ttl);
	}
	if (ret) {
		log_warnx("argument too long or empty");
		goto out;
	}
	ret = ctl_call(a.socket, &b, &resp, &m);
	if (ret)
		goto out;
	if (list) {
		if (enroll_msg_has(&m, ET_LIST))
			fwrite(m.v[ET_LIST].p, 1, m.v[ET_LIST].len, stdout);
	} else if (enroll_msg_str(&m, ET_TOKEN, tok, sizeof(tok)) == 0) {
		printf("%s\n", tok);
		OPENSSL_cleanse(tok, sizeof(tok));
	} else {
		ret = -EBADMSG;
	}
out:
	free(resp);
	enroll_buf_free(&b);
	return ret;
}

static int ctl_write_crl(const struct ctl_args *a, const struct enroll_msg *m)
{
	const uint8_t *p;
	X509_CRL *crl;
	BIO *bio;
	int ret = -EBADMSG;

	if (!enroll_msg_has(m, ET_CRL))
		return -EBADMSG;
	p = m->v[ET_CRL].p;
	crl = d2i_X509_CRL(NULL, &p, m->v[ET_CRL].len);
	if (!crl)
		return -EBADMSG;
	bio = a->out ? BIO_new_file(a->out, "w") : BIO_new_fp(stdout, BIO_NOCLOSE);
	if (bio && (a->der ? i2d_X509_CRL_bio(bio, crl) : PEM_write_bio_X509_CRL(bio, crl)))
		ret = 0;
	BIO_free(bio);
	X509_CRL_free(crl);
	return ret;
}

static int cmd_revoke(int argc, char **argv)
{
	struct ctl_args a;
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *resp = NULL;
	char msg[513] = "";
	int ret;

	ret = ctl_parse(argc, argv, &a);
	if (ret)
		return ret;
	if ((a.argc == 1) == !!a.serial || a.argc > 1) {
		log_warnx("usage: mtunctl revoke --tenant T ROLE/ID | --serial HEX");
		return -EINVAL;
	}
	ret = enroll_buf_init(&b, ENROLL_T_REVOKE);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, a.tenant);
	if (!ret)
		ret = a.serial ? enroll_buf_put_str(&b, ET_SERIAL, a.serial)
		               : enroll_buf_put_str(&b, ET_ID, a.argv[0]);
	if (!ret)
		ret = ctl_call(a.socket, &b, &resp, &m);
	if (!ret) {
		enroll_msg_str(&m, ET_MESSAGE, msg, sizeof(msg));
		fprintf(stderr, "%s\n", msg);
		if (a.out)
			ret = ctl_write_crl(&a, &m);
	}
	free(resp);
	enroll_buf_free(&b);
	return ret;
}

static int cmd_crl(int argc, char **argv)
{
	struct ctl_args a;
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *resp = NULL;
	int ret;

	ret = ctl_parse(argc, argv, &a);
	if (ret)
		return ret;
	ret = enroll_buf_init(&b, ENROLL_T_CRL_ADMIN);
	if (!ret)
		ret = enroll_buf_put_str(&b, ET_TENANT, a.tenant);
	if (!ret && a.authority) /* the root's list of revoked CAs (inspection intermediates) */
		ret = enroll_buf_put_str(&b, ET_ROLE, "authority");
	if (!ret)
		ret = ctl_call(a.socket, &b, &resp, &m);
	if (!ret)
		ret = ctl_write_crl(&a, &m);
	free(resp);
	enroll_buf_free(&b);
	return ret;
}

/* Appends the file at path to *buf (PEM certificates for an import). */
static int ctl_read_file(const char *path, char **buf, size_t *len)
{
	struct stat st;
	char *p;
	int fd, ret = 0;
	ssize_t r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		log_warn("%s", path);
		goto out;
	}
	if (st.st_size <= 0 || (size_t)st.st_size > 60 * 1024 - *len) {
		log_warnx("%s: empty or too large for a certificate chain", path);
		ret = -EFBIG;
		goto out;
	}
	p = realloc(*buf, *len + (size_t)st.st_size + 1);
	if (!p) {
		ret = -ENOMEM;
		goto out;
	}
	*buf = p;
	r = read(fd, p + *len, (size_t)st.st_size);
	if (r != st.st_size) {
		log_warnx("%s: short read", path);
		ret = -EIO;
		goto out;
	}
	*len += (size_t)r;
	p[*len] = '\0';
out:
	if (fd >= 0)
		close(fd);
	return ret;
}

/*
 * mtunctl inspection csr|rotate --tenant T [--key p256|rsa2048] [--expires YYYY-MM-DD]
 *                   import --tenant T CERT [CHAIN] | sign --tenant T | status [--tenant T] |
 *                   revoke --tenant T
 *                   tenant --tenant T private-only|shared | mark TENANT/ID public|private:T
 */
static int cmd_inspection(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 'S'},
	    {"tenant", required_argument, NULL, 't'},
	    {"key", required_argument, NULL, 'k'},
	    {"expires", required_argument, NULL, 'e'},
	    {NULL, 0, NULL, 0},
	};
	const char *sock = getenv(CTL_SOCKET_ENV) ? getenv(CTL_SOCKET_ENV) : CTL_SOCKET_DEFAULT;
	const char *tenant = NULL, *key = NULL, *sub, *slash, *end;
	struct enroll_buf b = {0};
	struct enroll_msg m;
	uint8_t *resp = NULL;
	char *pem = NULL, ntenant[IDENT_TENANT_MAX + 1], msg[513];
	size_t pem_len = 0;
	int64_t expires = 0;
	struct tm tm;
	int c, ret = -EINVAL, type;

	if (argc < 2) {
		log_warnx("usage: mtunctl inspection csr|rotate|import|sign|status|revoke|tenant|"
		          "mark ...");
		return -EINVAL;
	}
	sub = argv[1];
	optind = 1;
	while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
		switch (c) {
		case 'S':
			sock = optarg;
			break;
		case 't':
			tenant = optarg;
			break;
		case 'k':
			key = optarg;
			break;
		case 'e':
			memset(&tm, 0, sizeof(tm));
			end = strptime(optarg, "%Y-%m-%d", &tm);
			if (!end || *end) {
				log_warnx("--expires: YYYY-MM-DD");
				return -EINVAL;
			}
			expires = timegm(&tm);
			break;
		default:
			return -EINVAL;
		}
	}
	argc -= optind + 1;
	argv += optind + 1;
	if (strcmp(sub, "csr") == 0 || strcmp(sub, "rotate") == 0)
		type = sub[0] == 'c' ? CUSTODY_T_CSR : CUSTODY_T_ROTATE;
	else if (strcmp(sub, "import") == 0)
		type = CUSTODY_T_IMPORT;
	else if (strcmp(sub, "status") == 0)
		type = CUSTODY_T_STATUS;
	else if (strcmp(sub, "tenant") == 0)
		type = CUSTODY_T_TENANT;
	else if (strcmp(sub, "mark") == 0)
		type = CUSTODY_T_NODE_MARK;
	else if (strcmp(sub, "revoke") == 0)
		type = CUSTODY_T_REVOKE;
	else if (strcmp(sub, "sign") == 0)
		type = CUSTODY_T_SIGN;
	else {
		log_warnx("unknown inspection command '%s'", sub);
		return -EINVAL;
	}
	if (type != CUSTODY_T_STATUS && type != CUSTODY_T_NODE_MARK && !tenant) {
		log_warnx("--tenant is required");
		return -EINVAL;
	}
	if ((type == CUSTODY_T_IMPORT && (argc < 1 || argc > 2)) ||
	    ((type == CUSTODY_T_TENANT) && argc != 1) ||
	    (type == CUSTODY_T_NODE_MARK && argc != 2) ||
	    ((type == CUSTODY_T_CSR || type == CUSTODY_T_ROTATE || type == CUSTODY_T_STATUS ||
	      type == CUSTODY_T_REVOKE || type == CUSTODY_T_SIGN) &&
	     argc != 0)) {
		log_warnx("wrong arguments for inspection %s (try mtunctl help)", sub);
		return -EINVAL;
	}
	ret = enroll_buf_init(&b, (enum enroll_type)type);
	if (!ret && tenant && type != CUSTODY_T_NODE_MARK)
		ret = enroll_buf_put_str(&b, ET_TENANT, tenant);
	switch (type) {
	case CUSTODY_T_CSR:
	case CUSTODY_T_ROTATE:
		if (!ret && key)
			ret = enroll_buf_put_str(&b, ET_ROLE, key);
		if (!ret && expires > 0)
			ret = enroll_buf_put_u64(&b, ET_TIME, (uint64_t)expires);
		break;
	case CUSTODY_T_IMPORT:
		for (int i = 0; !ret && i < argc; i++)
			ret = ctl_read_file(argv[i], &pem, &pem_len);
		if (!ret)
			ret = enroll_buf_put(&b, ET_CHAIN, pem, pem_len);
		break;
	case CUSTODY_T_TENANT:
		if (!ret)
			ret = enroll_buf_put_str(&b, ET_ROLE, argv[0]);
		break;
	case CUSTODY_T_NODE_MARK:
		slash = strchr(argv[0], '/');
		if (!slash || (size_t)(slash - argv[0]) >= sizeof(ntenant)) {
			log_warnx("the inspector is TENANT/ID");
			ret = -EINVAL;
			goto out;
		}
		memcpy(ntenant, argv[0], (size_t)(slash - argv[0]));
		ntenant[slash - argv[0]] = '\0';
		if (!ret)
			ret = enroll_buf_put_str(&b, ET_TENANT, ntenant);
		if (!ret)
			ret = enroll_buf_put_str(&b, ET_ID, slash + 1);
		if (!ret)
			ret = enroll_buf_put_str(&b, ET_GROUPS, argv[1]);
		break;
	}
	if (ret) {
		log_warnx("argument too long or empty");
		goto out;
	}
	ret = ctl_call(sock, &b, &resp, &m);
	if (ret)
		goto out;
	if (enroll_msg_has(&m, ET_LIST))
		fwrite(m.v[ET_LIST].p, 1, m.v[ET_LIST].len, stdout);
	if (enroll_msg_str(&m, ET_SERIAL, msg, sizeof(msg)) == 0)
		fprintf(stderr, "key id %s\n", msg);
	if (enroll_msg_str(&m, ET_MESSAGE, msg, sizeof(msg)) == 0)
		printf("%s\n", msg);
out:
	free(pem);
	free(resp);
	enroll_buf_free(&b);
	return ret;
}

static int cmd_help(int argc, char **argv);
int ctl_admin_main(int argc, char **argv);

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} cmds[] = {
    {"token", cmd_token,
     "create --tenant T --role R [--user U --groups G1,G2] [--ttl 1h] | list --tenant T"},
    {"revoke", cmd_revoke, "--tenant T ROLE/ID | --serial HEX [--out CRL.pem]"},
    {"crl", cmd_crl,
     "--tenant T [--authority] [--out FILE] [--der]: the tenant's current CRL, or its root's"
     " (revoked inspection intermediates)"},
    {"inspection", cmd_inspection,
     "csr|rotate --tenant T [--key p256|rsa2048] [--expires YYYY-MM-DD] | import --tenant T"
     " CERT [CHAIN] | sign --tenant T (by the tenant's root in mtun-ca) |"
     " status [--tenant T] | revoke --tenant T |"
     " tenant --tenant T private-only|shared |"
     " mark TENANT/ID public|private:TENANT"},
#define ADMIN_CMD(name, help)                                                                      \
	{                                                                                          \
		name, ctl_admin_main, help                                                         \
	}
    /* The admin API (tools/mtunctl_admin.c; each has --help). */
    ADMIN_CMD("tenant", "list|get|create|update|delete: tenant settings"),
    ADMIN_CMD("user", "list|get|create|update|delete|import FILE: the user directory"),
    ADMIN_CMD("group", "list|get|create|update|delete: user groups"),
    ADMIN_CMD("segment", "list|get|create|update|delete: app segments"),
    ADMIN_CMD("segment-group", "list|get|create|update|delete"),
    ADMIN_CMD("server-group", "list|get|create|update|delete"),
    ADMIN_CMD("connector-group", "list|get|create|update|delete"),
    ADMIN_CMD("broker", "list|get|create|update|delete"),
    ADMIN_CMD("posture", "list|get|create|update|delete: posture profiles"),
    ADMIN_CMD("rule", "list|get|create|update|delete: access rules"),
    ADMIN_CMD("timeout", "list|get|create|update|delete: timeout policies"),
    ADMIN_CMD("policy", "test --user U --app NAME:PORT [--posture P,...]"),
    ADMIN_CMD("batch", "FILE: many changes in one transaction"),
    ADMIN_CMD("snapshot", "the compiled model's generation and counts"),
    ADMIN_CMD("sessions", "[-o json]: the broker's live mtunnels"),
    ADMIN_CMD("enroll", "--ca HOST:PORT --ca-fingerprint FP --token T --state DIR: admin identity"),
    ADMIN_CMD("renew", "--state DIR: renew the admin identity"),
    {"help", cmd_help, "show this help"},
};

static int cmd_help(int argc, char **argv)
{
	printf("Usage: mtunctl COMMAND [--socket PATH] ...   (socket: $%s, default %s)\n\n",
	       CTL_SOCKET_ENV, CTL_SOCKET_DEFAULT);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		printf("  %-8s %s\n", cmds[i].name, cmds[i].help);
	return 0;
}

int main(int argc, char **argv)
{
	log_init("mtunctl", LOG_LVL_INFO);
	if (argc < 2) {
		cmd_help(0, NULL);
		return 1;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(argv[1], cmds[i].name) != 0)
			continue;
		/* The admin API's commands answer --help themselves, with their fields. */
		if (cmds[i].fn != ctl_admin_main)
			for (int j = 2; j < argc; j++)
				if (strcmp(argv[j], "--help") == 0) {
					printf("Usage: mtunctl %s %s\nSee mtunctl-%s(1).\n",
					       cmds[i].name, cmds[i].help, cmds[i].name);
					return 0;
				}
		return cmds[i].fn(argc - 1, argv + 1) ? 1 : 0;
	}
	log_warnx("unknown command '%s' (try mtunctl help)", argv[1]);
	return 1;
}
