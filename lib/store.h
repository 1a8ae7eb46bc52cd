/*
 * The store: one SQL interface for every mtun component, with SQLite behind it now and
 * PostgreSQL later. SQL is kept portable: parameters are $1..$N, values are typed.
 */
#ifndef MTUN_STORE_H
#define MTUN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct store;

enum store_type {
	STORE_T_NULL = 0,
	STORE_T_INT,  /* int64 */
	STORE_T_TEXT, /* UTF-8, no NUL inside; results are NUL-terminated too */
	STORE_T_BLOB, /* any bytes */
};

/*
 * A parameter or a result column. For results, p points into the store's memory and is
 * valid only until the row callback returns.
 */
struct store_val {
	enum store_type type;
	int64_t i;
	const void *p;
	size_t len;
};

static inline struct store_val store_null(void)
{
	return (struct store_val){.type = STORE_T_NULL};
}

static inline struct store_val store_int(int64_t v)
{
	return (struct store_val){.type = STORE_T_INT, .i = v};
}

/* A NULL s is SQL NULL. */
static inline struct store_val store_text(const char *s)
{
	if (!s)
		return store_null();
	return (struct store_val){.type = STORE_T_TEXT, .p = s, .len = strlen(s)};
}

static inline struct store_val store_textn(const char *s, size_t len)
{
	return (struct store_val){.type = STORE_T_TEXT, .p = s, .len = len};
}

static inline struct store_val store_blob(const void *p, size_t len)
{
	return (struct store_val){.type = STORE_T_BLOB, .p = p, .len = len};
}

/* Expands to "array, count" for store_exec/store_query: STORE_ARGS(store_int(1), ...). */
#define STORE_ARGS(...)                                                                            \
	((const struct store_val[]){__VA_ARGS__}),                                                 \
	    (sizeof((const struct store_val[]){__VA_ARGS__}) / sizeof(struct store_val))

/* Largest text or blob the store accepts, in either direction. */
#define STORE_MAX_VALUE (64U << 20)
/* Most columns a result row may have. */
#define STORE_MAX_COLUMNS 64

/*
 * "sqlite:/var/lib/mtun/ca.db" (created 0600 if missing) or "postgresql://..." (not built
 * yet). On failure returns -errno and points *why at a reason (valid until the next call
 * from this thread).
 */
int store_open(const char *uri, struct store **out, const char **why);
/* Rolls back an open transaction. Accepts NULL. */
void store_close(struct store *st);

/*
 * A write transaction (BEGIN IMMEDIATE on SQLite: the write lock is taken at once, so a
 * transaction never fails half-way for a lock). Nested begin returns -EALREADY. A commit
 * that fails rolls back and returns the error.
 */
int store_begin(struct store *st);
int store_commit(struct store *st);
int store_rollback(struct store *st);
bool store_in_transaction(const struct store *st);

/*
 * One statement with parameters $1..$n (each used at least once, in any order). Returns
 * the number of rows it changed (>= 0) or -errno: -EEXIST for a unique or primary key
 * violation, -EINVAL for another constraint or bad SQL, -EBUSY when locked out,
 * -E2BIG for a value over STORE_MAX_VALUE, -EIO for a storage error. The reason is logged
 * once and kept for store_errmsg.
 */
int store_exec(struct store *st, const char *sql, const struct store_val *params, size_t n);

/*
 * Called once per result row; return 0 for more rows, > 0 to stop (store_query then
 * returns 0), or -errno to stop with that error.
 */
typedef int (*store_row_fn)(void *arg, const struct store_val *cols, size_t ncols);

/* One statement; calls fn for each row. Errors as store_exec; floats are refused. */
int store_query(struct store *st, const char *sql, const struct store_val *params, size_t n,
                store_row_fn fn, void *arg);

/* The first column of the first row as an integer: -ENOENT if no row, -EINVAL if NULL. */
int store_query_int(struct store *st, const char *sql, const struct store_val *params, size_t n,
                    int64_t *out);

/* The last error's reason (the backend's message), "" if none. */
const char *store_errmsg(const struct store *st);

/*
 * A component's schema is an ordered array of migrations (versions increasing, from 1).
 * store_migrate applies the ones the database lacks, in order, each in its own
 * transaction (all of it or none), recording (component, version, applied_at) in
 * schema_migrations. It refuses (-ENOTSUP) a database that has a newer version of the
 * component than the array knows, and (-EPROTO) a history that is not a prefix of the
 * array. Running it again is a no-op. Not inside a transaction.
 */
struct store_migration {
	int version;
	const char *description;
	const char *sql; /* one or more statements, no parameters */
};

int store_migrate(struct store *st, const char *component, const struct store_migration *m,
                  size_t n);
/* The highest applied version of component, 0 if none. */
int store_schema_version(struct store *st, const char *component, int *version);

#endif
