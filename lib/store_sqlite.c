/*
 * The SQLite backend of the store: one connection, WAL with synchronous=FULL, and a small
 * cache of prepared statements keyed by their SQL text.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "log.h"
#include "store_backend.h"

#define SQLITE_STMT_CACHE  32
#define SQLITE_BUSY_MS     5000
#define SQLITE_SQL_EXCERPT 120

struct sqlite_cached {
	char *sql;
	sqlite3_stmt *stmt;
	bool busy; /* in use by a run further up the stack (a row callback's own query) */
	uint64_t used;
};

struct store_sqlite {
	sqlite3 *db;
	uint64_t tick;
	struct sqlite_cached cache[SQLITE_STMT_CACHE];
};

static int sqlite_errno(sqlite3 *db, int rc)
{
	int sys = db ? sqlite3_system_errno(db) : 0;

	switch (rc) {
	case SQLITE_CONSTRAINT_UNIQUE:
	case SQLITE_CONSTRAINT_PRIMARYKEY:
		return -EEXIST;
	}
	switch (rc & 0xff) {
	case SQLITE_CONSTRAINT:
	case SQLITE_ERROR:
	case SQLITE_RANGE:
	case SQLITE_MISMATCH:
	case SQLITE_MISUSE:
		return -EINVAL;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_TOOBIG:
		return -E2BIG;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	case SQLITE_CANTOPEN:
	case SQLITE_IOERR:
		return sys > 0 ? -sys : -EIO;
	}
	return -EIO;
}

static int sqlite_fail(struct store *st, int rc, const char *sql)
{
	struct store_sqlite *s = st->impl;
	bool constraint = (rc & 0xff) == SQLITE_CONSTRAINT;

	if (sql)
		store_set_error(st, constraint, "sqlite: %s (in \"%.*s\")", sqlite3_errmsg(s->db),
		                SQLITE_SQL_EXCERPT, sql);
	else
		store_set_error(st, constraint, "sqlite: %s", sqlite3_errmsg(s->db));
	return sqlite_errno(s->db, rc);
}

/* A statement must be the whole SQL text: a second one would be silently ignored. */
static int sqlite_check_tail(struct store *st, const char *sql, const char *tail)
{
	struct store_sqlite *s = st->impl;
	sqlite3_stmt *next = NULL;
	int rc;

	if (!tail)
		return 0;
	tail += strspn(tail, " \t\r\n;");
	if (!*tail)
		return 0;
	rc = sqlite3_prepare_v2(s->db, tail, -1, &next, NULL);
	if (rc != SQLITE_OK)
		return sqlite_fail(st, rc, sql);
	if (next) {
		sqlite3_finalize(next);
		store_set_error(st, false, "more than one statement in \"%.*s\"",
		                SQLITE_SQL_EXCERPT, sql);
		return -EINVAL;
	}
	return 0;
}

static struct sqlite_cached *sqlite_cache_slot(struct store_sqlite *s)
{
	struct sqlite_cached *victim = NULL;

	for (int i = 0; i < SQLITE_STMT_CACHE; i++) {
		struct sqlite_cached *c = &s->cache[i];

		if (!c->stmt)
			return c;
		if (!c->busy && (!victim || c->used < victim->used))
			victim = c;
	}
	if (victim) {
		sqlite3_finalize(victim->stmt);
		free(victim->sql);
		memset(victim, 0, sizeof(*victim));
	}
	return victim;
}

/* *cached is set when stmt belongs to the cache; otherwise the caller finalizes it. */
static int sqlite_prepare(struct store *st, const char *sql, sqlite3_stmt **out,
                          struct sqlite_cached **cached)
{
	struct store_sqlite *s = st->impl;
	struct sqlite_cached *c;
	sqlite3_stmt *stmt = NULL;
	const char *tail = NULL;
	int rc, ret;

	*out = NULL;
	*cached = NULL;
	for (int i = 0; i < SQLITE_STMT_CACHE; i++) {
		c = &s->cache[i];
		if (c->stmt && !c->busy && strcmp(c->sql, sql) == 0) {
			c->busy = true;
			c->used = ++s->tick;
			*out = c->stmt;
			*cached = c;
			return 0;
		}
	}
	rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
	if (rc != SQLITE_OK)
		return sqlite_fail(st, rc, sql);
	if (!stmt) {
		store_set_error(st, false, "empty statement \"%.*s\"", SQLITE_SQL_EXCERPT, sql);
		return -EINVAL;
	}
	ret = sqlite_check_tail(st, sql, tail);
	if (ret < 0) {
		sqlite3_finalize(stmt);
		return ret;
	}
	*out = stmt;
	c = sqlite_cache_slot(s);
	if (!c)
		return 0;
	c->sql = strdup(sql);
	if (!c->sql)
		return 0;
	c->stmt = stmt;
	c->busy = true;
	c->used = ++s->tick;
	*cached = c;
	return 0;
}

static void sqlite_release(sqlite3_stmt *stmt, struct sqlite_cached *c)
{
	if (!stmt)
		return;
	if (!c) {
		sqlite3_finalize(stmt);
		return;
	}
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	c->busy = false;
}

/* $1..$n must be exactly the statement's parameters, each bound by name. */
static int sqlite_bind(struct store *st, sqlite3_stmt *stmt, const char *sql,
                       const struct store_val *params, size_t n)
{
	static const char empty[1];
	int count = sqlite3_bind_parameter_count(stmt);
	char name[24];
	int rc = SQLITE_OK;

	if (count < 0 || (size_t)count != n) {
		store_set_error(st, false, "statement has %d parameters, %zu given (in \"%.*s\")",
		                count, n, SQLITE_SQL_EXCERPT, sql);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		const struct store_val *v = &params[i];
		int idx;

		snprintf(name, sizeof(name), "$%zu", i + 1);
		idx = sqlite3_bind_parameter_index(stmt, name);
		if (idx <= 0) {
			store_set_error(st, false,
			                "parameter %s is not in the statement (use $1..$N) (in "
			                "\"%.*s\")",
			                name, SQLITE_SQL_EXCERPT, sql);
			return -EINVAL;
		}
		switch (v->type) {
		case STORE_T_NULL:
			rc = sqlite3_bind_null(stmt, idx);
			break;
		case STORE_T_INT:
			rc = sqlite3_bind_int64(stmt, idx, v->i);
			break;
		case STORE_T_TEXT:
			rc = sqlite3_bind_text64(stmt, idx, v->len ? v->p : empty, v->len,
			                         SQLITE_STATIC, SQLITE_UTF8);
			break;
		case STORE_T_BLOB:
			/* A NULL pointer would bind SQL NULL, not an empty blob. */
			rc = sqlite3_bind_blob64(stmt, idx, v->len ? v->p : empty, v->len,
			                         SQLITE_STATIC);
			break;
		}
		if (rc != SQLITE_OK)
			return sqlite_fail(st, rc, sql);
	}
	return 0;
}

static int sqlite_row(struct store *st, sqlite3_stmt *stmt, const char *sql, struct store_val *cols,
                      int ncols)
{
	struct store_sqlite *s = st->impl;

	for (int i = 0; i < ncols; i++) {
		struct store_val *v = &cols[i];
		int bytes;

		memset(v, 0, sizeof(*v));
		switch (sqlite3_column_type(stmt, i)) {
		case SQLITE_NULL:
			v->type = STORE_T_NULL;
			continue;
		case SQLITE_INTEGER:
			v->type = STORE_T_INT;
			v->i = sqlite3_column_int64(stmt, i);
			continue;
		case SQLITE_TEXT:
			v->type = STORE_T_TEXT;
			v->p = sqlite3_column_text(stmt, i);
			break;
		case SQLITE_BLOB:
			v->type = STORE_T_BLOB;
			v->p = sqlite3_column_blob(stmt, i);
			break;
		default:
			store_set_error(st, false,
			                "column %d (%s) is a floating-point value, which the store "
			                "does not carry (in \"%.*s\")",
			                i, sqlite3_column_name(stmt, i), SQLITE_SQL_EXCERPT, sql);
			return -EINVAL;
		}
		/* The length is read after the pointer, as SQLite asks. */
		bytes = sqlite3_column_bytes(stmt, i);
		if (!v->p && sqlite3_errcode(s->db) == SQLITE_NOMEM)
			return sqlite_fail(st, SQLITE_NOMEM, sql);
		if (bytes < 0 || (size_t)bytes > STORE_MAX_VALUE) {
			store_set_error(st, false, "column %d is %d bytes, over the limit of %u", i,
			                bytes, STORE_MAX_VALUE);
			return -E2BIG;
		}
		if (!v->p)
			v->p = "";
		v->len = (size_t)bytes;
	}
	return 0;
}

static int sqlite_run(struct store *st, const char *sql, const struct store_val *params, size_t n,
                      store_row_fn fn, void *arg)
{
	struct store_sqlite *s = st->impl;
	struct store_val cols[STORE_MAX_COLUMNS];
	struct sqlite_cached *c = NULL;
	sqlite3_stmt *stmt = NULL;
	sqlite3_int64 before = sqlite3_total_changes64(s->db);
	int ret, rc, ncols;

	ret = sqlite_prepare(st, sql, &stmt, &c);
	if (ret < 0)
		return ret;
	ret = sqlite_bind(st, stmt, sql, params, n);
	if (ret < 0)
		goto out;
	ncols = sqlite3_column_count(stmt);
	if (ncols > STORE_MAX_COLUMNS) {
		store_set_error(st, false, "%d columns, over the limit of %d (in \"%.*s\")", ncols,
		                STORE_MAX_COLUMNS, SQLITE_SQL_EXCERPT, sql);
		ret = -E2BIG;
		goto out;
	}
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (!fn)
			continue;
		ret = sqlite_row(st, stmt, sql, cols, ncols);
		if (ret < 0)
			goto out;
		ret = fn(arg, cols, (size_t)ncols);
		if (ret < 0)
			goto out;
		if (ret > 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE) {
		ret = sqlite_fail(st, rc, sql);
		goto out;
	}
	/* sqlite3_changes() keeps the last INSERT/UPDATE/DELETE's count across DDL. */
	ret = sqlite3_total_changes64(s->db) == before ? 0 : sqlite3_changes(s->db);
out:
	sqlite_release(stmt, c);
	return ret;
}

static int sqlite_exec_sql(struct store *st, const char *sql)
{
	struct store_sqlite *s = st->impl;
	int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : sqlite_fail(st, rc, sql);
}

static int sqlite_script(struct store *st, const char *sql)
{
	struct store_sqlite *s = st->impl;
	int ret = sqlite_exec_sql(st, sql);

	/* A COMMIT or ROLLBACK inside a migration would break its all-or-nothing. */
	if (ret == 0 && st->in_tx && sqlite3_get_autocommit(s->db)) {
		store_set_error(st, false, "SQL ended the transaction itself (in \"%.*s\")",
		                SQLITE_SQL_EXCERPT, sql);
		return -EINVAL;
	}
	return ret;
}

static int sqlite_begin(struct store *st)
{
	return sqlite_exec_sql(st, "BEGIN IMMEDIATE");
}

static int sqlite_commit(struct store *st)
{
	struct store_sqlite *s = st->impl;

	/* SQLite rolls back by itself after some errors (full disk, I/O, out of memory). */
	if (sqlite3_get_autocommit(s->db)) {
		store_set_error(st, false,
		                "transaction was already rolled back by an earlier error");
		return -EIO;
	}
	return sqlite_exec_sql(st, "COMMIT");
}

static int sqlite_rollback(struct store *st)
{
	struct store_sqlite *s = st->impl;

	if (sqlite3_get_autocommit(s->db))
		return 0;
	return sqlite_exec_sql(st, "ROLLBACK");
}

static void sqlite_close(struct store *st)
{
	struct store_sqlite *s = st->impl;

	if (!s)
		return;
	for (int i = 0; i < SQLITE_STMT_CACHE; i++) {
		sqlite3_finalize(s->cache[i].stmt);
		free(s->cache[i].sql);
	}
	if (sqlite3_close(s->db) != SQLITE_OK)
		log_warnx("store: sqlite: close: %s", sqlite3_errmsg(s->db));
	free(s);
	st->impl = NULL;
}

struct sqlite_pragma_text {
	char val[16];
};

static int sqlite_pragma_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct sqlite_pragma_text *t = arg;

	if (ncols >= 1 && cols[0].type == STORE_T_TEXT)
		snprintf(t->val, sizeof(t->val), "%s", (const char *)cols[0].p);
	else if (ncols >= 1 && cols[0].type == STORE_T_INT)
		snprintf(t->val, sizeof(t->val), "%lld", (long long)cols[0].i);
	return 1;
}

/* Sets a pragma and reads it back: some are silently ignored (in a transaction, say). */
static int sqlite_pragma(struct store *st, const char *set, const char *get, const char *want,
                         char *why, size_t whylen)
{
	struct sqlite_pragma_text t = {{0}};
	int ret;

	ret = sqlite_run(st, set, NULL, 0, NULL, NULL);
	if (ret >= 0)
		ret = sqlite_run(st, get, NULL, 0, sqlite_pragma_row, &t);
	if (ret < 0) {
		snprintf(why, whylen, "%s", st->err);
		return ret;
	}
	if (strcmp(t.val, want) != 0) {
		snprintf(why, whylen, "sqlite: %s gave '%s', not '%s'", set, t.val, want);
		return -EIO;
	}
	return 0;
}

static int sqlite_open(struct store *st, const char *path, char *why, size_t whylen)
{
	struct store_sqlite *s = NULL;
	struct stat sb;
	int fd, rc, ret;

	if (!*path) {
		snprintf(why, whylen, "sqlite: no database file named (sqlite:/path/file.db)");
		return -EINVAL;
	}
	/* Create it ourselves so that it is 0600 whatever the umask; SQLite gives its
	 * -wal and -shm files the mode of the database file. */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		snprintf(why, whylen, "sqlite: cannot open %s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		snprintf(why, whylen, "sqlite: %s is not a regular file", path);
		return -EINVAL;
	}
	close(fd);
	if (sb.st_mode & 077)
		log_warnx("store: %s is open to group or others (mode %03o); it should be 0600",
		          path, (unsigned)(sb.st_mode & 0777));

	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	st->impl = s;
	rc = sqlite3_open_v2(
	    path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(why, whylen, "sqlite: cannot open %s: %s", path,
		         s->db ? sqlite3_errmsg(s->db) : "out of memory");
		ret = sqlite_errno(s->db, rc);
		goto fail;
	}
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, SQLITE_BUSY_MS);
	sqlite3_limit(s->db, SQLITE_LIMIT_LENGTH, (int)STORE_MAX_VALUE);

	/* WAL: readers never block the writer. synchronous=FULL: a commit is on disk when
	 * COMMIT returns. secure_delete: a deleted key's bytes are overwritten. */
	ret = sqlite_pragma(st, "PRAGMA journal_mode = WAL", "PRAGMA journal_mode", "wal", why,
	                    whylen);
	if (ret == 0)
		ret = sqlite_pragma(st, "PRAGMA synchronous = FULL", "PRAGMA synchronous", "2", why,
		                    whylen);
	if (ret == 0)
		ret = sqlite_pragma(st, "PRAGMA foreign_keys = ON", "PRAGMA foreign_keys", "1", why,
		                    whylen);
	if (ret == 0)
		ret = sqlite_pragma(st, "PRAGMA secure_delete = ON", "PRAGMA secure_delete", "1",
		                    why, whylen);
	if (ret < 0)
		goto fail;
	st->err[0] = '\0';
	return 0;
fail:
	sqlite_close(st);
	return ret;
}

const struct store_backend store_sqlite_backend = {
    .name = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .rollback = sqlite_rollback,
    .run = sqlite_run,
    .script = sqlite_script,
};
