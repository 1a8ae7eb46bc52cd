/* Store tests on the SQLite backend: files, transactions, typed values, migrations, crashes. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "t.h"

static char tdir[64];
static char turi[128];

static void t_db_remove(void);

/* A fresh directory per test, so that no test sees another's database. */
static const char *t_db(void)
{
	t_db_remove(); /* what a test that stopped early left behind */
	snprintf(tdir, sizeof(tdir), "/tmp/mtun-store.XXXXXX");
	if (!mkdtemp(tdir))
		return NULL;
	snprintf(turi, sizeof(turi), "sqlite:%s/test.db", tdir);
	return turi;
}

static void t_db_remove(void)
{
	struct dirent *e;
	char path[PATH_MAX];
	DIR *d;

	if (!tdir[0])
		return;
	d = opendir(tdir);
	if (d) {
		while ((e = readdir(d))) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", tdir, e->d_name);
			unlink(path);
		}
		closedir(d);
	}
	rmdir(tdir);
	tdir[0] = '\0';
}

static struct store *t_open(void)
{
	const char *uri = t_db(), *why = NULL;
	struct store *st = NULL;

	if (!uri)
		return NULL;
	if (store_open(uri, &st, &why) < 0)
		printf("# store_open %s: %s\n", uri, why);
	return st;
}

static struct store *t_reopen(void)
{
	const char *why = NULL;
	struct store *st = NULL;

	if (store_open(turi, &st, &why) < 0)
		printf("# store_open %s: %s\n", turi, why);
	return st;
}

static int64_t t_rows(struct store *st, const char *sql)
{
	int64_t n = -1;

	if (store_query_int(st, sql, NULL, 0, &n) < 0)
		return -1;
	return n;
}

static void open_creates_private_file(void)
{
	mode_t old = umask(0);
	char path[PATH_MAX];
	struct store *st = t_open();
	struct stat sb;

	umask(old);
	T_REQUIRE(st);
	T_CHECK(store_exec(st, "CREATE TABLE t (a INTEGER)", NULL, 0) == 0);
	snprintf(path, sizeof(path), "%s/test.db", tdir);
	T_CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);
	snprintf(path, sizeof(path), "%s/test.db-wal", tdir);
	T_CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);
	store_close(st);
	t_db_remove();
}

static int t_text_row(void *arg, const struct store_val *cols, size_t ncols)
{
	char *out = arg;

	if (ncols == 1 && cols[0].type == STORE_T_TEXT)
		snprintf(out, 32, "%s", (const char *)cols[0].p);
	else if (ncols == 1 && cols[0].type == STORE_T_INT)
		snprintf(out, 32, "%lld", (long long)cols[0].i);
	return 1;
}

static void open_sets_durable_pragmas(void)
{
	struct store *st = t_open();
	char v[32] = "";

	T_REQUIRE(st);
	T_CHECK(store_query(st, "PRAGMA journal_mode", NULL, 0, t_text_row, v) == 0);
	T_STREQ(v, "wal");
	T_CHECK(store_query(st, "PRAGMA synchronous", NULL, 0, t_text_row, v) == 0);
	T_STREQ(v, "2"); /* FULL */
	T_CHECK(store_query(st, "PRAGMA foreign_keys", NULL, 0, t_text_row, v) == 0);
	T_STREQ(v, "1");
	store_close(st);
	t_db_remove();
}

static void open_refuses_bad_uris(void)
{
	struct store *st = NULL;
	const char *why = NULL;
	char path[PATH_MAX];
	FILE *f;

	T_EQ(store_open("postgresql://db.example/mtun", &st, &why), -ENOTSUP);
	T_CHECK(why && strstr(why, "postgresql: backend not built yet"));
	T_CHECK(st == NULL);
	T_EQ(store_open("mysql://x", &st, &why), -EINVAL);
	T_CHECK(why && strstr(why, "unknown store URI"));
	T_EQ(store_open("sqlite:", &st, &why), -EINVAL);
	T_EQ(store_open("sqlite:/nonexistent-mtun-dir/x.db", &st, &why), -ENOENT);
	T_CHECK(why && strstr(why, "/nonexistent-mtun-dir/x.db"));

	/* A file that is not a database is refused, not overwritten. */
	T_REQUIRE(t_db());
	snprintf(path, sizeof(path), "%s/test.db", tdir);
	f = fopen(path, "w");
	T_REQUIRE(f);
	fputs("this is not a database, and it is long enough to have a header......\n", f);
	fclose(f);
	T_CHECK(store_open(turi, &st, &why) < 0);
	T_CHECK(why && strstr(why, "not a database"));
	T_CHECK(st == NULL);
	t_db_remove();
}

static const struct store_migration t_ca_v3[] = {
    {1, "token table", "CREATE TABLE token (hash BLOB PRIMARY KEY, tenant TEXT NOT NULL)"},
    {2, "token expiry", "ALTER TABLE token ADD COLUMN expires INTEGER NOT NULL DEFAULT 0"},
    {3, "token index",
     "CREATE INDEX token_tenant ON token (tenant);"
     "CREATE TABLE audit (ts INTEGER NOT NULL, what TEXT NOT NULL)"},
};

struct t_versions {
	int v[8];
	size_t n;
};

static int t_version_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct t_versions *vs = arg;

	if (ncols != 1 || cols[0].type != STORE_T_INT || vs->n >= 8)
		return -EPROTO;
	vs->v[vs->n++] = (int)cols[0].i;
	return 0;
}

static void migrate_applies_in_order(void)
{
	struct store *st = t_open();
	struct t_versions vs = {.n = 0};
	int version = -1;

	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 3), 0);
	T_EQ(store_schema_version(st, "ca", &version), 0);
	T_EQ(version, 3);
	T_CHECK(store_query(st,
	                    "SELECT version FROM schema_migrations WHERE component = $1"
	                    " ORDER BY applied_at, rowid",
	                    STORE_ARGS(store_text("ca")), t_version_row, &vs) == 0);
	T_EQ(vs.n, 3);
	T_EQ(vs.v[0], 1);
	T_EQ(vs.v[1], 2);
	T_EQ(vs.v[2], 3);
	/* Every migration's effect is there: version 2's column, version 3's table. */
	T_EQ(store_exec(st, "INSERT INTO token (hash, tenant, expires) VALUES ($1, $2, $3)",
	                STORE_ARGS(store_blob("h", 1), store_text("acme"), store_int(99))),
	     1);
	T_EQ(store_exec(st, "INSERT INTO audit (ts, what) VALUES (1, 'x')", NULL, 0), 1);
	store_close(st);
	t_db_remove();
}

static void migrate_is_idempotent(void)
{
	struct store *st = t_open();
	int64_t before = -1, after = -2;

	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 3), 0);
	T_EQ(store_exec(st, "INSERT INTO token (hash, tenant) VALUES (x'01', 'acme')", NULL, 0), 1);
	before = t_rows(st, "SELECT COUNT(*) FROM schema_migrations");
	store_close(st);

	st = t_reopen();
	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 3), 0);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 3), 0);
	after = t_rows(st, "SELECT COUNT(*) FROM schema_migrations");
	T_EQ(before, 3);
	T_EQ(after, 3);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM token"), 1); /* data untouched */
	store_close(st);
	t_db_remove();
}

static void migrate_is_per_component(void)
{
	static const struct store_migration broker[] = {
	    {1, "segments", "CREATE TABLE segment (name TEXT PRIMARY KEY)"},
	};
	struct store *st = t_open();
	int ca = -1, brk = -1, none = -1;

	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 2), 0);
	T_EQ(store_migrate(st, "broker", broker, 1), 0);
	T_EQ(store_schema_version(st, "ca", &ca), 0);
	T_EQ(store_schema_version(st, "broker", &brk), 0);
	T_EQ(store_schema_version(st, "connector", &none), 0);
	T_EQ(ca, 2);
	T_EQ(brk, 1);
	T_EQ(none, 0);
	/* The CA moves on without touching the broker's history. */
	T_EQ(store_migrate(st, "ca", t_ca_v3, 3), 0);
	T_EQ(store_schema_version(st, "ca", &ca), 0);
	T_EQ(store_schema_version(st, "broker", &brk), 0);
	T_EQ(ca, 3);
	T_EQ(brk, 1);
	store_close(st);
	t_db_remove();
}

static void migrate_failure_keeps_previous_version(void)
{
	static const struct store_migration bad[] = {
	    {1, "base", "CREATE TABLE base (a INTEGER)"},
	    /* The first statement works, the second fails: neither may remain. */
	    {2, "broken", "CREATE TABLE half (a INTEGER); INSERT INTO missing VALUES (1)"},
	};
	static const struct store_migration fixed[] = {
	    {1, "base", "CREATE TABLE base (a INTEGER)"},
	    {2, "fixed", "CREATE TABLE half (a INTEGER)"},
	};
	struct store *st = t_open();
	int version = -1;

	T_REQUIRE(st);
	T_CHECK(store_migrate(st, "ca", bad, 2) < 0);
	T_CHECK(strstr(store_errmsg(st), "ca/2"));
	T_CHECK(strstr(store_errmsg(st), "missing"));
	T_EQ(store_schema_version(st, "ca", &version), 0);
	T_EQ(version, 1);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half'"), 0);
	T_CHECK(!store_in_transaction(st));
	/* Still usable: a write works, and the fixed program migrates on. */
	T_EQ(store_exec(st, "INSERT INTO base (a) VALUES (1)", NULL, 0), 1);
	T_EQ(store_migrate(st, "ca", fixed, 2), 0);
	T_EQ(store_schema_version(st, "ca", &version), 0);
	T_EQ(version, 2);
	store_close(st);
	t_db_remove();
}

static void migrate_refuses_newer_database(void)
{
	struct store *st = t_open();
	int version = -1;

	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 3), 0);
	store_close(st);

	st = t_reopen(); /* an older program, which knows only up to version 2 */
	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 2), -ENOTSUP);
	T_CHECK(strstr(store_errmsg(st), "database is newer than this program"));
	T_EQ(store_schema_version(st, "ca", &version), 0);
	T_EQ(version, 3);
	store_close(st);
	t_db_remove();
}

static void migrate_refuses_bad_history_and_arrays(void)
{
	static const struct store_migration other[] = {
	    {1, "token table", "CREATE TABLE token (hash BLOB PRIMARY KEY, tenant TEXT NOT NULL)"},
	    {3, "something else", "CREATE TABLE other (a INTEGER)"},
	};
	static const struct store_migration commits[] = {
	    {1, "commits", "CREATE TABLE c (a INTEGER); COMMIT"},
	};
	static const struct store_migration unordered[] = {
	    {2, "b", "CREATE TABLE b (a INTEGER)"},
	    {1, "a", "CREATE TABLE a (a INTEGER)"},
	};
	struct store *st = t_open();

	T_REQUIRE(st);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 2), 0);
	/* The database has 1, 2; this program has 1, 3: version 2 is not its own. */
	T_EQ(store_migrate(st, "ca", other, 2), -EPROTO);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'other'"), 0);
	T_EQ(store_migrate(st, "x", unordered, 2), -EINVAL);
	T_EQ(store_migrate(st, "", t_ca_v3, 1), -EINVAL);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('a', 'b')"), 0);
	/* A migration may not end its own transaction: its all-or-nothing would be gone. */
	T_EQ(store_migrate(st, "y", commits, 1), -EINVAL);
	T_CHECK(strstr(store_errmsg(st), "ended the transaction"));
	T_CHECK(!store_in_transaction(st));
	T_EQ(store_exec(st, "CREATE TABLE usable (a INTEGER)", NULL, 0), 0);
	store_close(st);
	t_db_remove();
}

static void rollback_leaves_no_row(void)
{
	struct store *st = t_open();

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER)", NULL, 0), 0);
	T_EQ(store_begin(st), 0);
	T_CHECK(store_in_transaction(st));
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES ($1)", STORE_ARGS(store_int(7))), 1);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 1);
	T_EQ(store_rollback(st), 0);
	T_CHECK(!store_in_transaction(st));
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 0);
	store_close(st);
	st = t_reopen();
	T_REQUIRE(st);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 0);
	store_close(st);
	t_db_remove();
}

static void commit_persists_across_reopen(void)
{
	struct store *st = t_open();
	int64_t v = 0;

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER)", NULL, 0), 0);
	T_EQ(store_begin(st), 0);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES ($1)", STORE_ARGS(store_int(42))), 1);
	T_EQ(store_commit(st), 0);
	store_close(st);

	st = t_reopen();
	T_REQUIRE(st);
	T_EQ(store_query_int(st, "SELECT a FROM t", NULL, 0, &v), 0);
	T_EQ(v, 42);
	store_close(st);
	t_db_remove();
}

static void close_rolls_back_open_transaction(void)
{
	struct store *st = t_open();

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER)", NULL, 0), 0);
	T_EQ(store_begin(st), 0);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES (1)", NULL, 0), 1);
	store_close(st);
	st = t_reopen();
	T_REQUIRE(st);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 0);
	store_close(st);
	t_db_remove();
}

/* WAL: a reader in another connection is not blocked by a writer and sees only commits. */
static void readers_see_only_committed_rows(void)
{
	struct store *w = t_open(), *r = NULL;

	T_REQUIRE(w);
	T_EQ(store_exec(w, "CREATE TABLE t (a INTEGER)", NULL, 0), 0);
	r = t_reopen();
	T_REQUIRE(r);
	T_EQ(store_begin(w), 0);
	T_EQ(store_exec(w, "INSERT INTO t (a) VALUES (1)", NULL, 0), 1);
	T_EQ(t_rows(r, "SELECT COUNT(*) FROM t"), 0);
	T_EQ(store_commit(w), 0);
	T_EQ(t_rows(r, "SELECT COUNT(*) FROM t"), 1);
	store_close(r);
	store_close(w);
	t_db_remove();
}

static void nested_begin_refused(void)
{
	struct store *st = t_open();

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER)", NULL, 0), 0);
	T_EQ(store_commit(st), -EINVAL);
	T_EQ(store_rollback(st), -EINVAL);
	T_EQ(store_begin(st), 0);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES (1)", NULL, 0), 1);
	T_EQ(store_begin(st), -EALREADY);
	T_CHECK(strstr(store_errmsg(st), "nested"));
	/* The outer transaction is intact and still commits. */
	T_CHECK(store_in_transaction(st));
	T_EQ(store_commit(st), 0);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 1);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 1), 0);
	T_EQ(store_begin(st), 0);
	T_EQ(store_migrate(st, "ca", t_ca_v3, 2), -EBUSY); /* not inside a transaction */
	T_EQ(store_rollback(st), 0);
	store_close(st);
	t_db_remove();
}

struct t_row {
	struct store_val v[5];
	unsigned char buf[5][64];
	int rows;
};

/* Copies the row out: the values point into the store only during the callback. */
static int t_copy_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct t_row *r = arg;

	if (ncols != 5)
		return -EPROTO;
	for (size_t i = 0; i < ncols; i++) {
		r->v[i] = cols[i];
		if (cols[i].type == STORE_T_TEXT || cols[i].type == STORE_T_BLOB) {
			if (cols[i].len > sizeof(r->buf[i]))
				return -E2BIG;
			memcpy(r->buf[i], cols[i].p, cols[i].len);
			r->v[i].p = r->buf[i];
		}
	}
	r->rows++;
	return 0;
}

static void typed_values_round_trip(void)
{
	static const unsigned char blob[] = {0x00, 0x01, 0x00, 0xff, 0x00};
	static const char utf8[] =
	    "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x94\x91";
	struct store *st = t_open();
	struct t_row r = {0};

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE v (i INTEGER, t TEXT, b BLOB, n TEXT, e BLOB)", NULL, 0),
	     0);
	T_EQ(store_exec(st, "INSERT INTO v VALUES ($1, $2, $3, $4, $5)",
	                STORE_ARGS(store_int(INT64_MIN), store_text(utf8),
	                           store_blob(blob, sizeof(blob)), store_null(),
	                           store_blob(NULL, 0))),
	     1);
	T_EQ(store_exec(st, "INSERT INTO v VALUES ($1, $2, $3, $4, $5)",
	                STORE_ARGS(store_int(INT64_MAX), store_text(""), store_blob("x", 1),
	                           store_text(NULL), store_blob("", 0))),
	     1);
	T_EQ(store_query(st, "SELECT i, t, b, n, e FROM v WHERE i < 0", NULL, 0, t_copy_row, &r),
	     0);
	T_EQ(r.rows, 1);
	T_EQ(r.v[0].type, STORE_T_INT);
	T_CHECK(r.v[0].i == INT64_MIN);
	T_EQ(r.v[1].type, STORE_T_TEXT);
	T_EQ(r.v[1].len, strlen(utf8));
	T_CHECK(memcmp(r.v[1].p, utf8, strlen(utf8)) == 0);
	T_EQ(r.v[2].type, STORE_T_BLOB);
	T_EQ(r.v[2].len, sizeof(blob));
	T_CHECK(memcmp(r.v[2].p, blob, sizeof(blob)) == 0);
	T_EQ(r.v[3].type, STORE_T_NULL);
	T_EQ(r.v[4].type, STORE_T_BLOB); /* an empty blob is not NULL */
	T_EQ(r.v[4].len, 0);

	memset(&r, 0, sizeof(r));
	T_EQ(store_query(st, "SELECT i, t, b, n, e FROM v WHERE i > $1", STORE_ARGS(store_int(0)),
	                 t_copy_row, &r),
	     0);
	T_EQ(r.rows, 1);
	T_CHECK(r.v[0].i == INT64_MAX);
	T_EQ(r.v[1].type, STORE_T_TEXT);
	T_EQ(r.v[1].len, 0);
	T_EQ(r.v[3].type, STORE_T_NULL);
	store_close(st);
	t_db_remove();
}

static void parameters_are_checked(void)
{
	struct store *st = t_open();
	int64_t v = 0;

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER, b TEXT)", NULL, 0), 0);
	/* $N in any order, and used twice. */
	T_EQ(store_exec(st, "INSERT INTO t (b, a) VALUES ($2, $1)",
	                STORE_ARGS(store_int(5), store_text("five"))),
	     1);
	T_EQ(store_query_int(st, "SELECT a FROM t WHERE b = $1 AND a = $2 AND a + $2 = 10",
	                     STORE_ARGS(store_text("five"), store_int(5)), &v),
	     0);
	T_EQ(v, 5);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES ($1)", NULL, 0), -EINVAL);
	T_EQ(
	    store_exec(st, "INSERT INTO t (a) VALUES ($1)", STORE_ARGS(store_int(1), store_int(2))),
	    -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES (?)", STORE_ARGS(store_int(1))), -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES ($2)", STORE_ARGS(store_int(1))), -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO t (b) VALUES ($1)", STORE_ARGS(store_textn("a\0b", 3))),
	     -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO t (b) VALUES ($1)", STORE_ARGS(store_text("\xc3\x28"))),
	     -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO t (b) VALUES ($1)",
	                STORE_ARGS(store_text("\xed\xa0\x80"))), /* a surrogate */
	     -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO t (b) VALUES ($1)",
	                STORE_ARGS(store_blob(NULL, (size_t)STORE_MAX_VALUE + 1))),
	     -E2BIG);
	/* A second statement would be silently dropped: refused instead. */
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES (1); DROP TABLE t", NULL, 0), -EINVAL);
	T_EQ(store_exec(st, "SELEC 1", NULL, 0), -EINVAL);
	T_EQ(store_query(st, "SELECT 1.5", NULL, 0, t_text_row, (char[32]){0}), -EINVAL);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 1);
	T_EQ(store_query_int(st, "SELECT a FROM t WHERE a = 99", NULL, 0, &v), -ENOENT);
	store_close(st);
	t_db_remove();
}

static void constraint_violation_is_an_error(void)
{
	struct store *st = t_open();

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE tenant (name TEXT PRIMARY KEY)", NULL, 0), 0);
	T_EQ(store_exec(st,
	                "CREATE TABLE token (hash BLOB UNIQUE NOT NULL,"
	                " tenant TEXT NOT NULL REFERENCES tenant (name))",
	                NULL, 0),
	     0);
	T_EQ(store_exec(st, "INSERT INTO tenant VALUES ($1)", STORE_ARGS(store_text("acme"))), 1);
	T_EQ(store_exec(st, "INSERT INTO tenant VALUES ($1)", STORE_ARGS(store_text("acme"))),
	     -EEXIST);
	T_CHECK(strstr(store_errmsg(st), "UNIQUE"));
	T_EQ(store_exec(st, "INSERT INTO token VALUES ($1, $2)",
	                STORE_ARGS(store_null(), store_text("acme"))),
	     -EINVAL);
	T_EQ(store_exec(st, "INSERT INTO token VALUES ($1, $2)",
	                STORE_ARGS(store_blob("h", 1), store_text("nobody"))),
	     -EINVAL); /* foreign keys are on */
	T_CHECK(strstr(store_errmsg(st), "FOREIGN KEY"));
	/* Inside a transaction, the failed statement does not end it. */
	T_EQ(store_begin(st), 0);
	T_EQ(store_exec(st, "INSERT INTO token VALUES ($1, $2)",
	                STORE_ARGS(store_blob("h", 1), store_text("acme"))),
	     1);
	T_EQ(store_exec(st, "INSERT INTO token VALUES ($1, $2)",
	                STORE_ARGS(store_blob("h", 1), store_text("acme"))),
	     -EEXIST);
	T_EQ(store_commit(st), 0);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM token"), 1);
	store_close(st);
	t_db_remove();
}

static int t_stop_after_one(void *arg, const struct store_val *cols, size_t ncols)
{
	(*(int *)arg)++;
	return 1;
}

static int t_fail_row(void *arg, const struct store_val *cols, size_t ncols)
{
	return -EINTR;
}

struct t_nested {
	struct store *st;
	int64_t inner;
	int ret;
};

/* Runs the same SQL from inside its own row callback: the cached statement is busy. */
static int t_nested_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct t_nested *n = arg;

	n->ret = store_query_int(n->st, "SELECT COUNT(*) FROM t WHERE a > $1",
	                         STORE_ARGS(store_int(0)), &n->inner);
	return 0;
}

static void query_callbacks_stop_and_nest(void)
{
	struct store *st = t_open();
	struct t_nested n = {0};
	int rows = 0;
	int64_t c;

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER)", NULL, 0), 0);
	for (int i = 1; i <= 3; i++)
		T_EQ(store_exec(st, "INSERT INTO t (a) VALUES ($1)", STORE_ARGS(store_int(i))), 1);
	T_EQ(store_query(st, "SELECT a FROM t", NULL, 0, t_stop_after_one, &rows), 0);
	T_EQ(rows, 1);
	T_EQ(store_query(st, "SELECT a FROM t", NULL, 0, t_fail_row, NULL), -EINTR);
	n.st = st;
	T_EQ(store_query(st, "SELECT COUNT(*) FROM t WHERE a > $1", STORE_ARGS(store_int(0)),
	                 t_nested_row, &n),
	     0);
	T_EQ(n.ret, 0);
	T_EQ(n.inner, 3);
	/* Many distinct statements go through the cache and out of it. */
	for (int i = 0; i < 100; i++) {
		char sql[64];

		snprintf(sql, sizeof(sql), "SELECT COUNT(*) + %d FROM t", i);
		T_EQ(store_query_int(st, sql, NULL, 0, &c), 0);
		T_EQ(c, 3 + i);
	}
	T_EQ(store_exec(st, "UPDATE t SET a = a + 1 WHERE a >= $1", STORE_ARGS(store_int(2))), 2);
	/* Statements that change no row say so, even right after one that did. */
	T_EQ(store_exec(st, "CREATE TABLE u (a INTEGER)", NULL, 0), 0);
	T_EQ(store_exec(st, "DELETE FROM t WHERE a > 100", NULL, 0), 0);
	T_EQ(store_exec(st, "SELECT a FROM t", NULL, 0), 0);
	store_close(st);
	t_db_remove();
}

/* A child begins a big write and dies by SIGKILL before COMMIT; nothing of it may remain. */
static void crash_mid_transaction_leaves_no_partial_write(void)
{
	static unsigned char filler[4096];
	struct store *st = t_open();
	char v[32] = "";
	int status = 0;
	pid_t pid;

	T_REQUIRE(st);
	T_EQ(store_exec(st, "CREATE TABLE t (a INTEGER, pad BLOB)", NULL, 0), 0);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES (1)", NULL, 0), 1);
	store_close(st); /* the child gets its own connection, no shared SQLite state */

	fflush(stdout);
	pid = fork();
	T_REQUIRE(pid >= 0);
	if (pid == 0) {
		const char *why;

		memset(filler, 0xa5, sizeof(filler));
		if (store_open(turi, &st, &why) < 0 || store_begin(st) < 0)
			_exit(2);
		/* Far more than the page cache: pages spill into the WAL before the kill. */
		for (int i = 0; i < 5000; i++)
			if (store_exec(st, "INSERT INTO t (a, pad) VALUES ($1, $2)",
			               STORE_ARGS(store_int(i + 100),
			                          store_blob(filler, sizeof(filler)))) != 1)
				_exit(3);
		kill(getpid(), SIGKILL);
		_exit(4);
	}
	T_REQUIRE(waitpid(pid, &status, 0) == pid);
	T_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	st = t_reopen();
	T_REQUIRE(st);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 1);
	T_CHECK(store_query(st, "PRAGMA integrity_check", NULL, 0, t_text_row, v) == 0);
	T_STREQ(v, "ok");
	/* The dead writer's lock is gone: this process can write. */
	T_EQ(store_begin(st), 0);
	T_EQ(store_exec(st, "INSERT INTO t (a) VALUES (2)", NULL, 0), 1);
	T_EQ(store_commit(st), 0);
	T_EQ(t_rows(st, "SELECT COUNT(*) FROM t"), 2);
	store_close(st);
	t_db_remove();
}

int main(void)
{
	log_init("test_store", LOG_LVL_ERR);
	T_RUN(open_creates_private_file);
	T_RUN(open_sets_durable_pragmas);
	T_RUN(open_refuses_bad_uris);
	T_RUN(migrate_applies_in_order);
	T_RUN(migrate_is_idempotent);
	T_RUN(migrate_is_per_component);
	T_RUN(migrate_failure_keeps_previous_version);
	T_RUN(migrate_refuses_newer_database);
	T_RUN(migrate_refuses_bad_history_and_arrays);
	T_RUN(rollback_leaves_no_row);
	T_RUN(commit_persists_across_reopen);
	T_RUN(close_rolls_back_open_transaction);
	T_RUN(readers_see_only_committed_rows);
	T_RUN(nested_begin_refused);
	T_RUN(typed_values_round_trip);
	T_RUN(parameters_are_checked);
	T_RUN(constraint_violation_is_an_error);
	T_RUN(query_callbacks_stop_and_nest);
	T_RUN(crash_mid_transaction_leaves_no_partial_write);
	t_db_remove();
	return t_done();
}
