/*
 * Microbenchmark of policy decisions on a compiled admin snapshot with 10,000 segments and
 * 10,000 rules (admin/): uncached (segment lookup + the segment's rules), the whole-policy
 * scan the per-segment index avoids, and cached per subject; one core; and the time from
 * one object's update to its compiled snapshot. Prints key=value lines for tools/bench.
 * Usage: bench_policy [seconds-per-figure]
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin_int.h"
#include "log.h"

#define NSEG   10000
#define NRULE  10000
#define NGROUP 1000
#define NUSER  2000
#define NCG    100
#define NQ     4096 /* distinct queries, cycled */
#define BATCH  1024

static volatile uint64_t sink;

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* CPU time of this thread: steadier than the wall clock on a busy machine. */
static double cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Appends printf output to a growing buffer; exits on ENOMEM (a benchmark, not a daemon). */
static void put(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < *cap - *len)
			break;
		*cap = *cap * 2 + (size_t)n;
		*buf = realloc(*buf, *cap);
		if (!*buf)
			fatalx("out of memory");
	}
	*len += (size_t)n;
}

static void seg_host(unsigned i, char *out, size_t size)
{
	if (i < 8000)
		snprintf(out, size, "app%u.corp.example", i);
	else if (i < 9500)
		snprintf(out, size, "*.z%u.example", i);
	else
		snprintf(out, size, "10.%u.%u.0/24", (i - 9500) / 256, (i - 9500) % 256);
}

/* A name or address that falls in segment i. */
static void seg_query(unsigned i, char *out, size_t size)
{
	if (i < 8000)
		snprintf(out, size, "app%u.corp.example", i);
	else if (i < 9500)
		snprintf(out, size, "host%u.z%u.example", i % 7, i);
	else
		snprintf(out, size, "10.%u.%u.9", (i - 9500) / 256, (i - 9500) % 256);
}

static void run_batch(struct store *st, char *body, size_t len)
{
	struct admin_err err;
	char *out = NULL;

	if (admin_batch(st, "bench", body, len, &out, &err) < 0)
		fatalx("batch: %s", err.msg);
	free(out);
}

/* The model in batches of at most ADMIN_OPS_MAX operations. */
static void build_model(struct store *st)
{
	size_t len = 0, cap = 1 << 20, n = 0;
	char *b = malloc(cap), host[64];

	if (!b)
		fatalx("out of memory");
#define OPEN()  (len = 0, n = 0, put(&b, &len, &cap, "{\"ops\":["))
#define SEP()   put(&b, &len, &cap, "%s", n++ ? "," : "")
#define CLOSE() (put(&b, &len, &cap, "]}"), run_batch(st, b, len))
	OPEN();
	for (unsigned i = 0; i < NCG; i++) {
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"connector-group\",\"object\":{\"name\":\"cg%u\","
		    "\"location\":{\"lat\":%d,\"lon\":%d}}}",
		    i, (int)(i % 90), (int)(i % 180));
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"server-group\",\"object\":{\"name\":\"sg%u\","
		    "\"connector_groups\":[\"cg%u\"]}}",
		    i, i);
	}
	for (unsigned i = 0; i < NGROUP; i++) {
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"group\",\"object\":{\"name\":\"g%u\"}}", i);
	}
	for (unsigned i = 0; i < NUSER; i++) {
		SEP();
		put(&b, &len, &cap,
		    "{\"op\":\"create\",\"kind\":\"user\",\"object\":{\"name\":\"u%u\","
		    "\"groups\":[\"g%u\"]}}",
		    i, i % NGROUP);
	}
	CLOSE();
	for (unsigned part = 0; part < 2; part++) {
		OPEN();
		for (unsigned i = part * NSEG / 2; i < (part + 1) * NSEG / 2; i++) {
			seg_host(i, host, sizeof(host));
			SEP();
			put(&b, &len, &cap,
			    "{\"op\":\"create\",\"kind\":\"segment\",\"object\":{\"name\":\"s%u\","
			    "\"hosts\":[\"%s\"],\"ports\":[\"tcp/22\",\"tcp/443\"],"
			    "\"server_groups\":[\"sg%u\"]}}",
			    i, host, i % NCG);
		}
		CLOSE();
	}
	for (unsigned part = 0; part < 2; part++) {
		OPEN();
		if (part == 0) {
			/* Three tenant-wide rules ahead of the per-segment ones. */
			SEP();
			put(&b, &len, &cap,
			    "{\"op\":\"create\",\"kind\":\"rule\",\"object\":{\"name\":\"maint\","
			    "\"priority\":0,\"action\":\"deny\",\"window\":{\"days\":[\"sun\"],"
			    "\"start\":\"03:00\",\"end\":\"03:05\"}}}");
			SEP();
			put(&b, &len, &cap,
			    "{\"op\":\"create\",\"kind\":\"rule\",\"object\":{\"name\":\"blocked\","
			    "\"priority\":1,\"action\":\"deny\",\"users\":[\"u1999\"]}}");
			SEP();
			put(&b, &len, &cap,
			    "{\"op\":\"create\",\"kind\":\"rule\",\"object\":{\"name\":\"admins\","
			    "\"priority\":2,\"action\":\"allow\",\"groups\":[\"g0\"]}}");
		}
		for (unsigned i = part * (NRULE - 3) / 2; i < (part ? NRULE - 3 : (NRULE - 3) / 2);
		     i++) {
			SEP();
			put(&b, &len, &cap,
			    "{\"op\":\"create\",\"kind\":\"rule\",\"object\":{\"name\":\"r%u\","
			    "\"priority\":%u,\"action\":\"allow\",\"groups\":[\"g%u\"],"
			    "\"segments\":[\"s%u\"]}}",
			    i, 10 + i, (i * 7) % NGROUP, i % NSEG);
		}
		CLOSE();
	}
	free(b);
}

struct query {
	char name[64];
	unsigned user;
};

/* Decisions per second over the queries, for secs seconds. */
static double measure(const struct admin_snapshot *s, struct admin_dcache **caches,
                      const struct query *q, const struct admin_user *const *users, double secs,
                      uint64_t *allowed)
{
	double t0 = now_ns(), t;
	uint64_t n = 0, allow = 0;
	time_t when = 1795521600; /* a Tuesday, 12:00 UTC */
	size_t qi = 0;

	do {
		for (unsigned k = 0; k < BATCH; k++, qi = (qi + 1) % NQ) {
			const struct admin_user *u = users[q[qi].user];
			struct policy_subject subj = {.tenant = "bench",
			                              .user = u->name,
			                              .groups = (const char *const *)u->groups,
			                              .ngroups = u->ngroups};
			struct admin_decision d;

			admin_decide(s, caches ? caches[q[qi].user % 64] : NULL, &subj, q[qi].name,
			             SEG_PROTO_TCP, 443, when, &d);
			allow += d.d.action == POLICY_ALLOW;
		}
		n += BATCH;
		t = now_ns();
	} while (t - t0 < secs * 1e9);
	sink += allow;
	*allowed = allow;
	return (double)n / ((t - t0) / 1e9);
}

static int dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/*
 * One-object changes as the API server makes them (admin_apply with keep: the update
 * committed with the whole model validated and compiled, the snapshot handed over): a rule
 * and a segment, NCHANGE times each; prints the median and the slowest wall time in ms,
 * and the median CPU time.
 */
#define NCHANGE 5
static void measure_changes(struct store *st)
{
	static const char *const what[] = {"rule", "segment"};
	char body[256];
	double ms[NCHANGE], cpu[NCHANGE];

	for (unsigned w = 0; w < 2; w++) {
		for (unsigned i = 0; i < NCHANGE; i++) {
			struct admin_snapshot *s2 = NULL;
			struct admin_err err;
			double t0, c0;
			int ret;

			if (w == 0)
				snprintf(body, sizeof(body),
				         "{\"version\":%u,\"priority\":%u,\"action\":\"deny\","
				         "\"users\":[\"u1999\"]}",
				         i + 1, 5 + i % 2);
			else
				snprintf(body, sizeof(body),
				         "{\"version\":%u,\"hosts\":[\"app42.corp.example\"],"
				         "\"ports\":[\"tcp/22\",\"tcp/%u\"],"
				         "\"server_groups\":[\"sg42\"]}",
				         i + 1, 8000 + i);
			t0 = now_ns();
			c0 = cpu_ns();
			ret = admin_apply(
			    st, "bench", ADMIN_OP_UPDATE, w == 0 ? ADMIN_K_RULE : ADMIN_K_SEGMENT,
			    w == 0 ? "blocked" : "s42", body, strlen(body), 0, NULL, &s2, &err);
			ms[i] = (now_ns() - t0) / 1e6;
			cpu[i] = (cpu_ns() - c0) / 1e6;
			if (ret < 0)
				fatalx("%s update: %s", what[w], err.msg);
			admin_snapshot_free(s2);
		}
		qsort(ms, NCHANGE, sizeof(ms[0]), dbl_cmp);
		qsort(cpu, NCHANGE, sizeof(cpu[0]), dbl_cmp);
		printf("%s_change_to_snapshot_ms=%.1f max=%.1f cpu_ms=%.1f\n", what[w],
		       ms[NCHANGE / 2], ms[NCHANGE - 1], cpu[NCHANGE / 2]);
	}
}

int main(int argc, char **argv)
{
	char dir[] = "/dev/shm/bench_policy.XXXXXX", uri[128], path[96];
	const struct admin_user *users[64];
	struct admin_dcache *caches[64];
	struct admin_snapshot *s = NULL;
	struct admin_segpol *idx;
	struct admin_err err;
	struct query *q;
	struct store *st;
	const char *why;
	double secs = argc > 1 ? atof(argv[1]) : 2.0, t0, rate;
	uint64_t allowed;

	log_init("bench_policy", LOG_LVL_WARN);
	if (secs <= 0 || secs > 600) {
		fprintf(stderr, "usage: bench_policy [seconds-per-figure]\n");
		return 2;
	}
	if (!mkdtemp(dir)) {
		strcpy(dir, "/tmp/bench_policy.XXXXXX");
		if (!mkdtemp(dir))
			fatal("mkdtemp");
	}
	snprintf(path, sizeof(path), "%s/admin.db", dir);
	snprintf(uri, sizeof(uri), "sqlite:%s", path);
	if (store_open(uri, &st, &why) < 0)
		fatalx("store: %s", why);
	if (admin_migrate(st) < 0)
		fatalx("migrate: %s", store_errmsg(st));
	t0 = now_ns();
	build_model(st);
	printf("model_load_s=%.2f\n", (now_ns() - t0) / 1e9);
	t0 = now_ns();
	if (admin_snapshot_build(st, "bench", &s, &err) < 0)
		fatalx("snapshot: %s", err.msg);
	printf("snapshot_build_ms=%.1f segments=%zu rules=%zu indexed=%s\n", (now_ns() - t0) / 1e6,
	       segset_count(s->segs), policy_rule_count(s->pol), s->segpols ? "yes" : "no");

	/* 64 subjects (users u0..u63 and their groups); queries spread over all segments. */
	q = calloc(NQ, sizeof(*q));
	if (!q)
		fatalx("out of memory");
	for (unsigned i = 0; i < 64; i++) {
		char name[16];

		snprintf(name, sizeof(name), "u%u", i * 31);
		users[i] = admin_snapshot_user(s, name);
		caches[i] = admin_dcache_new(1024);
		if (!users[i] || !caches[i])
			fatalx("setup");
	}
	srand(1);
	for (unsigned i = 0; i < NQ; i++) {
		seg_query((unsigned)rand() % NSEG, q[i].name, sizeof(q[i].name));
		q[i].user = (unsigned)rand() % 64;
	}

	measure_changes(st);

	rate = measure(s, NULL, q, users, secs, &allowed);
	printf("uncached_decisions_per_s=%.0f allowed=%llu\n", rate, (unsigned long long)allowed);
	idx = s->segpols;
	s->segpols = NULL;
	rate = measure(s, NULL, q, users, secs / 2, &allowed);
	printf("uncached_whole_policy_scan_per_s=%.0f\n", rate);
	s->segpols = idx;
	/* Cached: each subject asks again for names it asked before (its cache is warm). */
	measure(s, caches, q, users, 0.05, &allowed);
	rate = measure(s, caches, q, users, secs, &allowed);
	printf("cached_decisions_per_s=%.0f\n", rate);

	for (unsigned i = 0; i < 64; i++)
		admin_dcache_free(caches[i]);
	free(q);
	admin_snapshot_free(s);
	store_close(st);
	unlink(path);
	strcat(path, "-wal");
	unlink(path);
	path[strlen(path) - 4] = '\0';
	strcat(path, "-shm");
	unlink(path);
	rmdir(dir);
	return 0;
}
