/*
 * mtunctl's admin API commands (docs/admin.md): every object, import, batch and the policy
 * test, over HTTPS with the admin's enrolled certificate (mutual TLS, lib/tls.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "enroll.h"
#include "log.h"
#include "tls.h"

#define ADM_SERVER_ENV "MTUN_ADMIN_SERVER"
#define ADM_STATE_ENV  "MTUN_ADMIN_STATE"
#define ADM_STATE_DEF  "/var/lib/mtun/admin"
#define ADM_RESP_MAX   (16U << 20)
#define ADM_FILE_MAX   (4U << 20)
#define ADM_COL_WIDTH  48

int ctl_admin_main(int argc, char **argv);

struct adm_kind {
	const char *name, *path;
	const char *columns[8];
	const char *fields; /* for --help */
};

static const struct adm_kind adm_kinds[] = {
    {"tenant", "tenants", {"description", "timeout"}, "description, timeout (a timeout policy)"},
    {"user",
     "users",
     {"groups", "display_name", "email", "disabled"},
     "display_name, email, groups+=GROUP, disabled:=true"},
    {"group", "groups", {"description"}, "description"},
    {"segment",
     "segments",
     {"hosts", "ports", "server_groups", "segment_group", "double_encrypt", "health_check"},
     "hosts+=FQDN|*.DOMAIN|CIDR, ports+=tcp/22|udp/53|tcp/8000-8100, server_groups+=SG,"
     " segment_group, double_encrypt:=true, health_check=none|on-access|continuous, description"},
    {"segment-group", "segment-groups", {"description"}, "description"},
    {"server-group",
     "server-groups",
     {"connector_groups", "description"},
     "connector_groups+=CG, description"},
    {"connector-group",
     "connector-groups",
     {"location", "description"},
     "location:='{\"region\":\"eu\",\"lat\":48.8,\"lon\":2.3}', description"},
    {"broker", "brokers", {"address", "location"}, "address=HOST:PORT, location:={...}"},
    {"posture",
     "postures",
     {"kernel_min", "os", "files", "processes", "disk_encryption"},
     "kernel_min=6.1, os=PREFIX, files:='[{\"path\":\"/p\",\"sha256\":\"HEX\"}]',"
     " processes+=NAME, disk_encryption:=true, description"},
    {"rule",
     "rules",
     {"priority", "action", "users", "groups", "segments", "segment_groups", "postures", "window"},
     "priority:=N, action=allow|deny, users+=U, groups+=G, segments+=S, segment_groups+=SG,"
     " postures+=P, window:='{\"days\":[\"mon\"],\"start\":\"09:00\",\"end\":\"17:00\"}',"
     " timeout=T"},
    {"timeout", "timeouts", {"max_age_s", "idle_s"}, "max_age_s:=N, idle_s:=N"},
};

#define ADM_NKINDS (sizeof(adm_kinds) / sizeof(adm_kinds[0]))

struct adm_opts {
	const char *server, *state, *identity_source, *file, *user, *app, *proto, *postures,
	    *groups, *at;
	bool json, csv, help;
	int64_t version;
	int argc;
	char **argv;
};

struct adm_resp {
	int status;
	char *body;
	size_t len;
};

static int adm_parse(int argc, char **argv, struct adm_opts *o)
{
	static const struct option opts[] = {
	    {"server", required_argument, NULL, 'S'},
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'I'},
	    {"output", required_argument, NULL, 'o'},
	    {"file", required_argument, NULL, 'f'},
	    {"version", required_argument, NULL, 'V'},
	    {"csv", no_argument, NULL, 'c'},
	    {"user", required_argument, NULL, 'u'},
	    {"app", required_argument, NULL, 'a'},
	    {"proto", required_argument, NULL, 'p'},
	    {"posture", required_argument, NULL, 'P'},
	    {"groups", required_argument, NULL, 'g'},
	    {"time", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	char *end;
	int c;

	memset(o, 0, sizeof(*o));
	o->server = getenv(ADM_SERVER_ENV);
	o->state = getenv(ADM_STATE_ENV) ? getenv(ADM_STATE_ENV) : ADM_STATE_DEF;
	o->identity_source = getenv("MTUN_IDENTITY_SOURCE");
	optind = 1;
	while ((c = getopt_long(argc, argv, "o:f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'S':
			o->server = optarg;
			break;
		case 's':
			o->state = optarg;
			break;
		case 'I':
			o->identity_source = optarg;
			break;
		case 'o':
			if (strcmp(optarg, "json") && strcmp(optarg, "table")) {
				log_warnx("-o: json or table");
				return -EINVAL;
			}
			o->json = strcmp(optarg, "json") == 0;
			break;
		case 'f':
			o->file = optarg;
			break;
		case 'V':
			errno = 0;
			o->version = strtoll(optarg, &end, 10);
			if (*end || errno || o->version < 1) {
				log_warnx("--version: a positive integer");
				return -EINVAL;
			}
			break;
		case 'c':
			o->csv = true;
			break;
		case 'u':
			o->user = optarg;
			break;
		case 'a':
			o->app = optarg;
			break;
		case 'p':
			o->proto = optarg;
			break;
		case 'P':
			o->postures = optarg;
			break;
		case 'g':
			o->groups = optarg;
			break;
		case 't':
			o->at = optarg;
			break;
		case 'h':
			o->help = true;
			break;
		default:
			return -EINVAL;
		}
	}
	o->argc = argc - optind;
	o->argv = argv + optind;
	return 0;
}

/* Reads a whole file (or stdin for "-"), at most ADM_FILE_MAX bytes. */
static int adm_read_file(const char *path, char **buf, size_t *len)
{
	int fd = strcmp(path, "-") == 0 ? 0 : open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 65536, n = 0;
	char *p = NULL, *np;
	ssize_t r;
	int ret = 0;

	if (fd < 0) {
		ret = -errno;
		log_warn("%s", path);
		return ret;
	}
	for (;;) {
		if (!p || n == cap) {
			if (p)
				cap *= 2;
			np = cap <= ADM_FILE_MAX + 1 ? realloc(p, cap + 1) : NULL;
			if (!np) {
				log_warnx("%s: larger than %u bytes", path, ADM_FILE_MAX);
				ret = -EFBIG;
				break;
			}
			p = np;
		}
		r = read(fd, p + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = -errno;
			log_warn("%s", path);
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (fd > 0)
		close(fd);
	if (ret) {
		free(p);
		return ret;
	}
	p[n] = '\0';
	*buf = p;
	*len = n;
	return 0;
}

static int adm_send_all(int fd, struct tls_conn *c)
{
	while (tls_conn_pending(c)) {
		const void *b;
		size_t n;
		ssize_t w;

		tls_conn_peek(c, &b, &n);
		w = send(fd, b, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -EPIPE;
		tls_conn_consume(c, (size_t)w);
	}
	return 0;
}

static int adm_recv_some(int fd, struct tls_conn *c)
{
	char buf[16384];
	ssize_t r;

	do
		r = recv(fd, buf, sizeof(buf), 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0) {
		tls_conn_feed_eof(c);
		return -ECONNRESET;
	}
	return tls_conn_feed(c, buf, (size_t)r);
}

static int adm_connect(const char *server, int *out)
{
	char host[256];
	const char *colon, *h = server;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL, *a;
	struct timeval tv = {.tv_sec = 30};
	size_t hl;
	int fd = -1, ret;

	if (server[0] == '[') {
		colon = strstr(server, "]:");
		h = server + 1;
		hl = colon ? (size_t)(colon - h) : 0;
		colon = colon ? colon + 1 : NULL;
	} else {
		colon = strrchr(server, ':');
		hl = colon ? (size_t)(colon - server) : 0;
	}
	if (!colon || hl == 0 || hl >= sizeof(host) || !colon[1]) {
		log_warnx("--server: HOST:PORT");
		return -EINVAL;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	ret = getaddrinfo(host, colon + 1, &hints, &ai);
	if (ret) {
		log_warnx("%s: %s", server, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	for (a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		log_warn("cannot reach the admin API at %s", server);
		return -ECONNREFUSED;
	}
	*out = fd;
	return 0;
}

/* Splits "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"; 1 when complete. */
static int adm_http_parse(char *buf, size_t len, struct adm_resp *r, bool eof)
{
	char *hend = memmem(buf, len, "\r\n\r\n", 4), *cl;
	size_t hlen, want;
	unsigned long clen;

	if (!hend)
		return eof ? -EBADMSG : 0;
	*hend = '\0';
	hlen = (size_t)(hend - buf) + 4;
	if (sscanf(buf, "HTTP/1.%*1d %3d", &r->status) != 1) {
		*hend = '\r';
		return -EBADMSG;
	}
	cl = strcasestr(buf, "\r\ncontent-length:");
	*hend = '\r';
	if (cl) {
		clen = strtoul(cl + 17, NULL, 10);
		if (clen > ADM_RESP_MAX)
			return -EMSGSIZE;
		want = hlen + clen;
		if (len < want)
			return eof ? -EBADMSG : 0;
	} else if (!eof) {
		return 0;
	} else {
		want = len;
	}
	r->len = want - hlen;
	r->body = malloc(r->len + 1);
	if (!r->body)
		return -ENOMEM;
	memcpy(r->body, buf + hlen, r->len);
	r->body[r->len] = '\0';
	return 1;
}

/* One HTTPS request with the admin identity; 0 with r filled (any HTTP status), or -errno. */
static int adm_request(const struct adm_opts *o, const char *method, const char *path,
                       const char *ctype, const char *body, size_t blen, struct adm_resp *r)
{
	struct enroll_identity id = {0};
	struct tls_conf conf = {.mode = TLS_MUTUAL};
	struct tls_ctx *ctx = NULL;
	struct tls_conn *c = NULL;
	STACK_OF(X509) *anchors = NULL;
	char head[1024], *in = NULL;
	size_t inlen = 0, incap = 0, off;
	const char *why;
	int fd = -1, ret, hl;
	bool eof = false;

	memset(r, 0, sizeof(*r));
	if (!o->server) {
		log_warnx("no admin API: give --server HOST:PORT or set $%s", ADM_SERVER_ENV);
		return -EINVAL;
	}
	ret = enroll_load(o->state, o->identity_source, &id);
	if (ret) {
		log_warnx("no admin identity in %s (mtunctl enroll ...): %s", o->state,
		          strerror(-ret));
		return ret;
	}
	if (id.ident.role != MT_ROLE_ADMIN)
		log_warnx("the identity in %s is a %s, not an admin: expect a refusal", o->state,
		          ident_role_name(id.ident.role));
	anchors = sk_X509_new_null();
	if (!anchors || !sk_X509_push(anchors, id.root)) {
		ret = -ENOMEM;
		goto out;
	}
	X509_up_ref(id.root);
	conf.cert = id.cert;
	conf.chain = id.chain;
	conf.key = id.key;
	conf.anchors = anchors;
	conf.peer_roles = MT_ROLE_BIT(MT_ROLE_BROKER);
	conf.peer_tenant = id.ident.tenant;
	ctx = tls_ctx_new(&conf, &why);
	if (!ctx) {
		log_warnx("TLS: %s", why);
		ret = -EPROTO;
		goto out;
	}
	c = tls_conn_new(ctx);
	if (!c) {
		ret = -ENOMEM;
		goto out;
	}
	ret = adm_connect(o->server, &fd);
	if (ret)
		goto out;
	while ((ret = tls_conn_handshake(c)) == -EAGAIN) {
		if (adm_send_all(fd, c) < 0 || adm_recv_some(fd, c) < 0) {
			ret = -EPROTO;
			break;
		}
	}
	adm_send_all(fd, c);
	if (ret) {
		log_warnx("TLS with %s failed: %s", o->server,
		          tls_conn_why(c)[0] ? tls_conn_why(c) : "connection closed");
		ret = -EPROTO;
		goto out;
	}
	hl = snprintf(head, sizeof(head),
	              "%s %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
	              "Content-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
	              method, path, o->server, ctype, blen);
	if (hl < 0 || (size_t)hl >= sizeof(head)) {
		ret = -ENAMETOOLONG;
		goto out;
	}
	for (int part = 0; part < 2; part++) {
		const char *p = part ? body : head;
		size_t n = part ? blen : (size_t)hl;

		for (off = 0; off < n;) {
			ssize_t w = tls_conn_write(c, p + off, n - off);

			if (w > 0)
				off += (size_t)w;
			else if (w != -EAGAIN) {
				ret = -EPROTO;
				goto fail;
			}
			if (adm_send_all(fd, c) < 0) {
				ret = -EPIPE;
				goto fail;
			}
		}
	}
	for (;;) {
		ssize_t n;

		if (incap - inlen < 16384) {
			char *ni;

			if (incap > ADM_RESP_MAX) {
				ret = -EMSGSIZE;
				goto fail;
			}
			incap = incap ? incap * 2 : 65536;
			ni = realloc(in, incap);
			if (!ni) {
				ret = -ENOMEM;
				goto fail;
			}
			in = ni;
		}
		n = tls_conn_read(c, in + inlen, incap - inlen - 1);
		if (n > 0) {
			inlen += (size_t)n;
		} else if (n == -EAGAIN && !eof) {
			adm_send_all(fd, c);
			if (adm_recv_some(fd, c) == -ECONNRESET)
				eof = true;
			continue;
		} else if (n == -ECONNRESET || n == -EAGAIN) {
			eof = true;
		} else {
			ret = -EPROTO;
			goto fail;
		}
		ret = adm_http_parse(in, inlen, r, eof);
		if (ret == 1) {
			ret = 0;
			break;
		}
		if (ret < 0)
			goto fail;
		if (eof) {
			ret = -EBADMSG;
			goto fail;
		}
	}
	tls_conn_shutdown(c);
	adm_send_all(fd, c);
	goto out;
fail:
	log_warnx("admin API at %s: %s%s%s", o->server, strerror(-ret),
	          tls_conn_why(c)[0] ? ": " : "", tls_conn_why(c));
out:
	free(in);
	if (fd >= 0)
		close(fd);
	tls_conn_free(c);
	tls_ctx_free(ctx);
	sk_X509_pop_free(anchors, X509_free);
	enroll_identity_free(&id);
	return ret;
}

static void adm_value_str(struct json_object *v, char *buf, size_t size)
{
	size_t n = 0;

	buf[0] = '\0';
	if (!v) {
		snprintf(buf, size, "-");
		return;
	}
	switch (json_object_get_type(v)) {
	case json_type_string:
		snprintf(buf, size, "%s", json_object_get_string(v));
		break;
	case json_type_array:
		for (size_t i = 0; i < json_object_array_length(v) && n + 1 < size; i++) {
			struct json_object *e = json_object_array_get_idx(v, i);

			snprintf(buf + n, size - n, "%s%s", i ? "," : "",
			         json_object_is_type(e, json_type_string)
			             ? json_object_get_string(e)
			             : json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN));
			n = strlen(buf);
		}
		if (!json_object_array_length(v))
			snprintf(buf, size, "-");
		break;
	default:
		snprintf(buf, size, "%s",
		         json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
	}
}

static void adm_print_table(const struct adm_kind *k, struct json_object *items)
{
	const char *cols[10] = {"name", "version"};
	size_t ncols = 2, w[10], n = json_object_array_length(items);
	char buf[4096], hdr[64];

	for (size_t i = 0; i < 8 && k->columns[i]; i++)
		cols[ncols++] = k->columns[i];
	for (size_t c = 0; c < ncols; c++) {
		w[c] = strlen(cols[c]);
		for (size_t i = 0; i < n; i++) {
			struct json_object *v = NULL;

			json_object_object_get_ex(json_object_array_get_idx(items, i), cols[c], &v);
			adm_value_str(v, buf, sizeof(buf));
			if (strlen(buf) > w[c])
				w[c] = strlen(buf);
		}
		if (w[c] > ADM_COL_WIDTH)
			w[c] = ADM_COL_WIDTH;
	}
	for (size_t c = 0; c < ncols; c++) {
		size_t j;

		for (j = 0; cols[c][j] && j + 1 < sizeof(hdr); j++)
			hdr[j] = cols[c][j] == '_' ? ' ' : (char)(cols[c][j] & ~0x20);
		hdr[j] = '\0';
		printf("%-*s%s", c + 1 < ncols ? (int)w[c] : 0, hdr, c + 1 < ncols ? "  " : "\n");
	}
	for (size_t i = 0; i < n; i++) {
		for (size_t c = 0; c < ncols; c++) {
			struct json_object *v = NULL;

			json_object_object_get_ex(json_object_array_get_idx(items, i), cols[c], &v);
			adm_value_str(v, buf, sizeof(buf));
			if (strlen(buf) > w[c])
				strcpy(buf + w[c] - 3, "...");
			printf("%-*s%s", c + 1 < ncols ? (int)w[c] : 0, buf,
			       c + 1 < ncols ? "  " : "\n");
		}
	}
}

static void adm_print_object(struct json_object *o)
{
	char buf[8192];

	json_object_object_foreach(o, key, val)
	{
		adm_value_str(val, buf, sizeof(buf));
		printf("%-18s %s\n", key, buf);
	}
}

/* Prints a response; an error status becomes "mtunctl: HTTP 400: message" and -EIO. */
static int adm_show(const struct adm_opts *o, const struct adm_kind *k, struct adm_resp *r,
                    bool list)
{
	struct json_object *j = NULL, *v;

	if (r->len)
		j = json_tokener_parse(r->body);
	if (r->status >= 400) {
		if (j && json_object_object_get_ex(j, "error", &v))
			log_warnx("HTTP %d: %s", r->status, json_object_get_string(v));
		else
			log_warnx("HTTP %d", r->status);
		json_object_put(j);
		return -EIO;
	}
	if (o->json) {
		if (r->len)
			printf("%s\n",
			       j ? json_object_to_json_string_ext(
				       j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE)
			         : r->body);
	} else if (!j) {
		if (r->len)
			printf("%s\n", r->body);
	} else if (list && k && json_object_object_get_ex(j, "items", &v)) {
		adm_print_table(k, v);
	} else {
		adm_print_object(j);
	}
	json_object_put(j);
	return 0;
}

static void adm_resp_free(struct adm_resp *r)
{
	free(r->body);
	r->body = NULL;
}

/* FIELD=string, FIELD:=JSON, FIELD+=string (appends to a list) into obj. */
static int adm_apply_assign(struct json_object *obj, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char key[64];
	size_t kl;
	struct json_object *v, *list;
	bool raw = false, add = false;

	if (!eq || eq == arg) {
		log_warnx("'%s': expected FIELD=VALUE, FIELD:=JSON or FIELD+=VALUE", arg);
		return -EINVAL;
	}
	kl = (size_t)(eq - arg);
	if (eq[-1] == ':' || eq[-1] == '+') {
		raw = eq[-1] == ':';
		add = eq[-1] == '+';
		kl--;
	}
	if (kl == 0 || kl >= sizeof(key)) {
		log_warnx("'%s': bad field name", arg);
		return -EINVAL;
	}
	memcpy(key, arg, kl);
	key[kl] = '\0';
	if (raw) {
		v = json_tokener_parse(eq + 1);
		if (!v && strcmp(eq + 1, "null") != 0) {
			log_warnx("%s: not JSON: %s", key, eq + 1);
			return -EINVAL;
		}
	} else {
		v = json_object_new_string(eq + 1);
	}
	if (add) {
		if (!json_object_object_get_ex(obj, key, &list) ||
		    !json_object_is_type(list, json_type_array)) {
			list = json_object_new_array();
			json_object_object_add(obj, key, list);
		}
		json_object_array_add(list, v);
		return 0;
	}
	json_object_object_add(obj, key, v);
	return 0;
}

static void adm_kind_help(const struct adm_kind *k)
{
	printf("Usage: mtunctl %s list\n"
	       "       mtunctl %s get NAME\n"
	       "       mtunctl %s create NAME [FIELD=VALUE | FIELD:=JSON | FIELD+=VALUE]... [-f "
	       "FILE]\n"
	       "       mtunctl %s update NAME [--version N] [FIELD...]... [-f FILE]\n"
	       "       mtunctl %s delete NAME [--version N]\n",
	       k->name, k->name, k->name, k->name, k->name);
	if (strcmp(k->name, "user") == 0)
		printf("       mtunctl user import FILE.csv|FILE.json [--csv]\n");
	printf("\nFields: %s\n\n"
	       "Options: --server HOST:PORT ($%s), --state DIR ($%s, default %s),\n"
	       "         --identity-source DIR, -o table|json. See mtunctl-objects(1).\n",
	       k->fields, ADM_SERVER_ENV, ADM_STATE_ENV, ADM_STATE_DEF);
}

static int adm_body_from(const struct adm_opts *o, int first, struct json_object **out)
{
	struct json_object *obj;
	char *buf;
	size_t len;
	int ret;

	*out = NULL;
	if (o->file) {
		ret = adm_read_file(o->file, &buf, &len);
		if (ret)
			return ret;
		obj = json_tokener_parse(buf);
		free(buf);
		if (!obj || !json_object_is_type(obj, json_type_object)) {
			json_object_put(obj);
			log_warnx("%s: not a JSON object", o->file);
			return -EINVAL;
		}
	} else {
		obj = json_object_new_object();
	}
	for (int i = first; i < o->argc; i++) {
		ret = adm_apply_assign(obj, o->argv[i]);
		if (ret) {
			json_object_put(obj);
			return ret;
		}
	}
	*out = obj;
	return 0;
}

static bool adm_name_ok(const char *s)
{
	return s[0] && strlen(s) <= 64 &&
	       strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                 "0123456789._@+-") == strlen(s);
}

static int adm_object_cmd(const struct adm_kind *k, int argc, char **argv)
{
	struct adm_opts o;
	struct adm_resp r = {0};
	struct json_object *obj = NULL, *cur = NULL, *v;
	char path[256];
	const char *sub, *name = NULL, *body;
	int ret;

	ret = adm_parse(argc, argv, &o);
	if (ret)
		return ret;
	if (o.help || o.argc < 1) {
		adm_kind_help(k);
		return o.help ? 0 : -EINVAL;
	}
	sub = o.argv[0];
	if (strcmp(sub, "list") && o.argc < 2 && strcmp(sub, "import")) {
		log_warnx("%s %s: NAME is required (mtunctl %s --help)", k->name, sub, k->name);
		return -EINVAL;
	}
	if (o.argc >= 2) {
		name = o.argv[1];
		if (strcmp(sub, "import") && !adm_name_ok(name)) {
			log_warnx("'%s' is not a valid name", name);
			return -EINVAL;
		}
	}
	if (strcmp(sub, "list") == 0) {
		snprintf(path, sizeof(path), "/v1/%s", k->path);
		ret = adm_request(&o, "GET", path, "application/json", "", 0, &r);
		if (!ret)
			ret = adm_show(&o, k, &r, true);
	} else if (strcmp(sub, "get") == 0) {
		snprintf(path, sizeof(path), "/v1/%s/%s", k->path, name);
		ret = adm_request(&o, "GET", path, "application/json", "", 0, &r);
		if (!ret)
			ret = adm_show(&o, k, &r, false);
	} else if (strcmp(sub, "delete") == 0) {
		if (o.version)
			snprintf(path, sizeof(path), "/v1/%s/%s?version=%lld", k->path, name,
			         (long long)o.version);
		else
			snprintf(path, sizeof(path), "/v1/%s/%s", k->path, name);
		ret = adm_request(&o, "DELETE", path, "application/json", "", 0, &r);
		if (!ret)
			ret = adm_show(&o, k, &r, false);
		if (!ret && !o.json)
			printf("deleted %s %s\n", k->name, name);
	} else if (strcmp(sub, "create") == 0) {
		ret = adm_body_from(&o, 2, &obj);
		if (ret)
			goto out;
		json_object_object_add(obj, "name", json_object_new_string(name));
		body = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN);
		snprintf(path, sizeof(path), "/v1/%s", k->path);
		ret = adm_request(&o, "POST", path, "application/json", body, strlen(body), &r);
		if (!ret)
			ret = adm_show(&o, k, &r, false);
	} else if (strcmp(sub, "update") == 0) {
		/* Read, change the fields given, write back with the version read (or --version).
		 */
		snprintf(path, sizeof(path), "/v1/%s/%s", k->path, name);
		if (!o.file) {
			ret = adm_request(&o, "GET", path, "application/json", "", 0, &r);
			if (!ret && r.status != 200)
				ret = adm_show(&o, k, &r, false);
			if (ret)
				goto out;
			cur = json_tokener_parse(r.body);
			adm_resp_free(&r);
			if (!cur || !json_object_is_type(cur, json_type_object)) {
				log_warnx("unreadable answer from the admin API");
				ret = -EBADMSG;
				goto out;
			}
			json_object_object_del(cur, "id");
			for (int i = 2; i < o.argc; i++) {
				ret = adm_apply_assign(cur, o.argv[i]);
				if (ret)
					goto out;
			}
			obj = json_object_get(cur);
		} else {
			ret = adm_body_from(&o, 2, &obj);
			if (ret)
				goto out;
		}
		if (o.version)
			json_object_object_add(obj, "version", json_object_new_int64(o.version));
		else if (!json_object_object_get_ex(obj, "version", &v)) {
			log_warnx("update -f FILE: give --version N or \"version\" in the file");
			ret = -EINVAL;
			goto out;
		}
		body = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN);
		ret = adm_request(&o, "PUT", path, "application/json", body, strlen(body), &r);
		if (!ret)
			ret = adm_show(&o, k, &r, false);
	} else if (strcmp(sub, "import") == 0 && strcmp(k->name, "user") == 0) {
		char *buf;
		size_t len;

		if (o.argc != 2) {
			log_warnx("usage: mtunctl user import FILE.csv|FILE.json [--csv]");
			ret = -EINVAL;
			goto out;
		}
		ret = adm_read_file(o.argv[1], &buf, &len);
		if (ret)
			goto out;
		if (len > 4 && strcmp(o.argv[1] + strlen(o.argv[1]) - 4, ".csv") == 0)
			o.csv = true;
		ret = adm_request(&o, "POST", "/v1/import", o.csv ? "text/csv" : "application/json",
		                  buf, len, &r);
		free(buf);
		if (!ret)
			ret = adm_show(&o, NULL, &r, false);
	} else {
		log_warnx("%s: unknown subcommand '%s' (list, get, create, update, delete)",
		          k->name, sub);
		ret = -EINVAL;
	}
out:
	json_object_put(obj);
	json_object_put(cur);
	adm_resp_free(&r);
	return ret;
}

static int adm_split_list(struct json_object *q, const char *key, const char *csv)
{
	struct json_object *a = json_object_new_array();
	char *dup = strdup(csv), *save = NULL, *tok;

	if (!a || !dup) {
		free(dup);
		json_object_put(a);
		return -ENOMEM;
	}
	for (tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		json_object_array_add(a, json_object_new_string(tok));
	json_object_object_add(q, key, a);
	free(dup);
	return 0;
}

static int adm_policy_cmd(int argc, char **argv)
{
	struct adm_opts o;
	struct adm_resp r = {0};
	struct json_object *q, *j, *v;
	struct tm tm;
	const char *body, *end;
	int ret;

	ret = adm_parse(argc, argv, &o);
	if (ret)
		return ret;
	if (o.help || o.argc != 1 || strcmp(o.argv[0], "test") != 0) {
		printf("Usage: mtunctl policy test --user U --app NAME:PORT [--proto tcp|udp]\n"
		       "                          [--posture P1,P2] [--groups G1,G2]\n"
		       "                          [--time UNIX|YYYY-MM-DDTHH:MM:SSZ] [-o json]\n"
		       "The decision of the tenant's current policy and the rule that made it;\n"
		       "--groups replaces the user's directory groups, --posture names the\n"
		       "posture profiles the device satisfies. See mtunctl-policy(1).\n");
		return o.help ? 0 : -EINVAL;
	}
	if (!o.user || !o.app) {
		log_warnx("policy test: --user and --app are required");
		return -EINVAL;
	}
	q = json_object_new_object();
	json_object_object_add(q, "user", json_object_new_string(o.user));
	json_object_object_add(q, "app", json_object_new_string(o.app));
	if (o.proto)
		json_object_object_add(q, "proto", json_object_new_string(o.proto));
	if (o.postures)
		adm_split_list(q, "postures", o.postures);
	if (o.groups)
		adm_split_list(q, "groups", o.groups);
	if (o.at) {
		char *e;
		long long t = strtoll(o.at, &e, 10);

		memset(&tm, 0, sizeof(tm));
		if (*e) {
			end = strptime(o.at, "%Y-%m-%dT%H:%M:%SZ", &tm);
			if (!end || *end) {
				log_warnx("--time: UNIX seconds or YYYY-MM-DDTHH:MM:SSZ");
				json_object_put(q);
				return -EINVAL;
			}
			t = (long long)timegm(&tm);
		}
		json_object_object_add(q, "time", json_object_new_int64(t));
	}
	body = json_object_to_json_string_ext(q, JSON_C_TO_STRING_PLAIN);
	ret =
	    adm_request(&o, "POST", "/v1/policy/test", "application/json", body, strlen(body), &r);
	json_object_put(q);
	if (ret)
		return ret;
	if (o.json || r.status >= 400) {
		ret = adm_show(&o, NULL, &r, false);
		adm_resp_free(&r);
		return ret;
	}
	j = json_tokener_parse(r.body);
	adm_resp_free(&r);
	if (!j) {
		log_warnx("unreadable answer from the admin API");
		return -EBADMSG;
	}
	json_object_object_get_ex(j, "action", &v);
	printf("decision: %s\n", json_object_get_string(v));
	json_object_object_get_ex(j, "rule", &v);
	printf("rule:     %s", json_object_get_string(v)[0] ? json_object_get_string(v) : "(none)");
	json_object_object_get_ex(j, "rule_id", &v);
	printf("%s%s%s\n", json_object_get_int64(v) ? " (id " : "",
	       json_object_get_int64(v) ? json_object_get_string(v) : "",
	       json_object_get_int64(v) ? ")" : "");
	json_object_object_get_ex(j, "segment", &v);
	printf("segment:  %s\n",
	       json_object_get_string(v)[0] ? json_object_get_string(v) : "(none)");
	json_object_object_get_ex(j, "reason", &v);
	printf("reason:   %s\n", json_object_get_string(v));
	json_object_object_get_ex(j, "known_user", &v);
	if (!json_object_get_boolean(v))
		printf("note:     %s is not in the directory (no groups)\n", o.user);
	json_object_object_get_ex(j, "max_age_s", &v);
	printf("timeouts: max age %s s", json_object_get_string(v));
	json_object_object_get_ex(j, "idle_s", &v);
	printf(", idle %s s (0: none)\n", json_object_get_string(v));
	json_object_put(j);
	return 0;
}

static int adm_batch_cmd(int argc, char **argv)
{
	struct adm_opts o;
	struct adm_resp r = {0};
	char *buf;
	size_t len;
	int ret;

	ret = adm_parse(argc, argv, &o);
	if (ret)
		return ret;
	if (o.help || o.argc != 1) {
		printf(
		    "Usage: mtunctl batch FILE|-   ({\"ops\": [{\"op\": \"create\"|\"update\"|"
		    "\"delete\", \"kind\", \"name\", \"version\", \"object\"}, ...]})\n"
		    "Applies every operation in one transaction, or none. See mtunctl-batch(1).\n");
		return o.help ? 0 : -EINVAL;
	}
	ret = adm_read_file(o.argv[0], &buf, &len);
	if (ret)
		return ret;
	ret = adm_request(&o, "POST", "/v1/batch", "application/json", buf, len, &r);
	free(buf);
	if (!ret)
		ret = adm_show(&o, NULL, &r, false);
	if (!ret && !o.json)
		printf("batch applied\n");
	adm_resp_free(&r);
	return ret;
}

static int adm_snapshot_cmd(int argc, char **argv)
{
	struct adm_opts o;
	struct adm_resp r = {0};
	int ret;

	ret = adm_parse(argc, argv, &o);
	if (ret)
		return ret;
	if (o.help) {
		printf("Usage: mtunctl snapshot   (the compiled model: generation and counts)\n");
		return 0;
	}
	ret = adm_request(&o, "GET", "/v1/snapshot", "application/json", "", 0, &r);
	if (!ret)
		ret = adm_show(&o, NULL, &r, false);
	adm_resp_free(&r);
	return ret;
}

/* 1536 -> "1.5K": byte counts in the sessions table. */
static void adm_fmt_bytes(struct json_object *v, char *buf, size_t size)
{
	static const char units[] = "KMGTPE";
	double d;
	int u = -1;

	if (!v || !json_object_is_type(v, json_type_int)) {
		snprintf(buf, size, "-");
		return;
	}
	d = (double)json_object_get_uint64(v);
	while (d >= 1024 && u < 5) {
		d /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(buf, size, "%.0f", d);
	else
		snprintf(buf, size, "%.1f%c", d, units[u]);
}

/* 3725 -> "1h02m": ages in the sessions table. */
static void adm_fmt_secs(struct json_object *v, char *buf, size_t size)
{
	int64_t s;

	if (!v || !json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
		snprintf(buf, size, "-");
		return;
	}
	s = json_object_get_int64(v);
	if (s < 60)
		snprintf(buf, size, "%llds", (long long)s);
	else if (s < 3600)
		snprintf(buf, size, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
	else if (s < 86400)
		snprintf(buf, size, "%lldh%02lldm", (long long)(s / 3600),
		         (long long)(s / 60 % 60));
	else
		snprintf(buf, size, "%lldd%02lldh", (long long)(s / 86400),
		         (long long)(s / 3600 % 24));
}

struct adm_col {
	const char *head, *key;
	void (*fmt)(struct json_object *v, char *buf, size_t size);
};

static const struct adm_col adm_session_cols[] = {
    {"ID", "id", NULL},
    {"USER", "user", NULL},
    {"DEVICE", "device", NULL},
    {"APP", "app", NULL},
    {"PORT", "port", NULL},
    {"CONNECTOR", "connector", NULL},
    {"STATE", "state", NULL},
    {"UP", "bytes_up", adm_fmt_bytes},
    {"DOWN", "bytes_down", adm_fmt_bytes},
    {"AGE", "age_s", adm_fmt_secs},
    {"IDLE", "idle_s", adm_fmt_secs},
    {"RULE", "rule", NULL},
};
#define ADM_SESSION_NCOLS (sizeof(adm_session_cols) / sizeof(adm_session_cols[0]))

static void adm_session_cell(struct json_object *item, const struct adm_col *c, char *buf,
                             size_t size)
{
	struct json_object *v = NULL;

	json_object_object_get_ex(item, c->key, &v);
	if (c->fmt)
		c->fmt(v, buf, size);
	else
		adm_value_str(v, buf, size);
	if (!buf[0])
		snprintf(buf, size, "-");
	for (char *p = buf; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?'; /* names from the network must not drive the terminal */
	if (strlen(buf) > ADM_COL_WIDTH)
		strcpy(buf + ADM_COL_WIDTH - 3, "...");
}

static void adm_print_sessions(struct json_object *items)
{
	size_t w[ADM_SESSION_NCOLS], n = json_object_array_length(items);
	char buf[4096];

	for (size_t c = 0; c < ADM_SESSION_NCOLS; c++) {
		w[c] = strlen(adm_session_cols[c].head);
		for (size_t i = 0; i < n; i++) {
			adm_session_cell(json_object_array_get_idx(items, i), &adm_session_cols[c],
			                 buf, sizeof(buf));
			if (strlen(buf) > w[c])
				w[c] = strlen(buf);
		}
	}
	for (size_t c = 0; c < ADM_SESSION_NCOLS; c++)
		printf("%-*s%s", c + 1 < ADM_SESSION_NCOLS ? (int)w[c] : 0,
		       adm_session_cols[c].head, c + 1 < ADM_SESSION_NCOLS ? "  " : "\n");
	for (size_t i = 0; i < n; i++) {
		for (size_t c = 0; c < ADM_SESSION_NCOLS; c++) {
			adm_session_cell(json_object_array_get_idx(items, i), &adm_session_cols[c],
			                 buf, sizeof(buf));
			printf("%-*s%s", c + 1 < ADM_SESSION_NCOLS ? (int)w[c] : 0, buf,
			       c + 1 < ADM_SESSION_NCOLS ? "  " : "\n");
		}
	}
}

static int adm_sessions_cmd(int argc, char **argv)
{
	struct adm_opts o;
	struct adm_resp r = {0};
	struct json_object *j = NULL, *items;
	int ret;

	ret = adm_parse(argc, argv, &o);
	if (ret)
		return ret;
	if (o.help) {
		printf(
		    "Usage: mtunctl sessions [-o json|table] [--server HOST:PORT] [--state DIR]\n"
		    "  the broker's live mtunnels: ID USER DEVICE APP PORT CONNECTOR STATE UP "
		    "DOWN AGE IDLE RULE\n");
		return 0;
	}
	if (o.argc) {
		log_warnx("sessions takes no arguments (try mtunctl sessions --help)");
		return -EINVAL;
	}
	ret = adm_request(&o, "GET", "/v1/sessions", "application/json", "", 0, &r);
	if (ret)
		goto out;
	if (o.json || r.status >= 400) {
		ret = adm_show(&o, NULL, &r, false);
		goto out;
	}
	j = r.len ? json_tokener_parse(r.body) : NULL;
	if (!j || !json_object_object_get_ex(j, "items", &items) ||
	    !json_object_is_type(items, json_type_array)) {
		log_warnx("the server's answer has no \"items\" list");
		ret = -EPROTO;
		goto out;
	}
	adm_print_sessions(items);
out:
	json_object_put(j);
	adm_resp_free(&r);
	return ret;
}

int ctl_admin_main(int argc, char **argv)
{
	if (strcmp(argv[0], "sessions") == 0)
		return adm_sessions_cmd(argc, argv);
	if (strcmp(argv[0], "policy") == 0)
		return adm_policy_cmd(argc, argv);
	if (strcmp(argv[0], "batch") == 0)
		return adm_batch_cmd(argc, argv);
	if (strcmp(argv[0], "snapshot") == 0)
		return adm_snapshot_cmd(argc, argv);
	if (strcmp(argv[0], "enroll") == 0 || strcmp(argv[0], "renew") == 0)
		return enroll_cli(MT_ROLE_ADMIN, argv[0][0] == 'r', argc, argv);
	for (size_t i = 0; i < ADM_NKINDS; i++)
		if (strcmp(argv[0], adm_kinds[i].name) == 0)
			return adm_object_cmd(&adm_kinds[i], argc, argv);
	log_warnx("unknown command '%s'", argv[0]);
	return -EINVAL;
}
