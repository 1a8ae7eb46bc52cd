/*
 * The store's backend-independent half: URI dispatch, transaction state and the
 * per-component schema migrations.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "store_backend.h"

static __thread char store_why[512];

void store_set_error(struct store *st, bool expected, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(st->err, sizeof(st->err), fmt, ap);
	va_end(ap);
	if (st->quiet)
		return;
	if (expected)
		log_info("store: %s", st->err);
	else
		log_warnx("store: %s", st->err);
}

const char *store_errmsg(const struct store *st)
{
	return st ? st->err : "";
}

int store_open(const char *uri, struct store **out, const char **why)
{
	const struct store_backend *be = NULL;
	const char *target = NULL;
	struct store *st = NULL;
	int ret;

	*out = NULL;
	store_why[0] = '\0';
	if (why)
		*why = store_why;
	if (!uri) {
		snprintf(store_why, sizeof(store_why), "no store URI given");
		return -EINVAL;
	}
	if (strncmp(uri, "sqlite:", 7) == 0) {
		be = &store_sqlite_backend;
		target = uri + 7;
	} else if (strncmp(uri, "postgresql:", 11) == 0 || strncmp(uri, "postgres:", 9) == 0) {
		snprintf(store_why, sizeof(store_why), "postgresql: backend not built yet");
		return -ENOTSUP;
	} else {
		snprintf(store_why, sizeof(store_why),
		         "unknown store URI '%.200s' (want sqlite:/path/file.db)", uri);
		return -EINVAL;
	}

	st = calloc(1, sizeof(*st));
	if (!st) {
		snprintf(store_why, sizeof(store_why), "out of memory");
		return -ENOMEM;
	}
	st->be = be;
	st->quiet = true; /* the reason goes to *why, for the caller to report */
	ret = be->open(st, target, store_why, sizeof(store_why));
	st->quiet = false;
	if (ret < 0) {
		free(st);
		return ret;
	}
	*out = st;
	return 0;
}

void store_close(struct store *st)
{
	if (!st)
		return;
	if (st->in_tx)
		store_rollback(st);
	st->be->close(st);
	free(st);
}

int store_begin(struct store *st)
{
	int ret;

	if (st->in_tx) {
		store_set_error(st, false, "nested transaction refused");
		return -EALREADY;
	}
	ret = st->be->begin(st);
	if (ret == 0)
		st->in_tx = true;
	return ret;
}

int store_commit(struct store *st)
{
	int ret;

	if (!st->in_tx) {
		store_set_error(st, false, "commit without a transaction");
		return -EINVAL;
	}
	ret = st->be->commit(st);
	if (ret < 0)
		st->be->rollback(st);
	st->in_tx = false;
	return ret;
}

int store_rollback(struct store *st)
{
	if (!st->in_tx) {
		store_set_error(st, false, "rollback without a transaction");
		return -EINVAL;
	}
	st->in_tx = false;
	return st->be->rollback(st);
}

bool store_in_transaction(const struct store *st)
{
	return st->in_tx;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool store_utf8_valid(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		size_t need;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i - 1 < need)
			return false;
		for (size_t k = 1; k <= need; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += need + 1;
	}
	return true;
}

static int store_check_params(struct store *st, const struct store_val *params, size_t n)
{
	if (n && !params) {
		store_set_error(st, false, "%zu parameters announced, none given", n);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		const struct store_val *v = &params[i];

		switch (v->type) {
		case STORE_T_NULL:
		case STORE_T_INT:
			continue;
		case STORE_T_TEXT:
		case STORE_T_BLOB:
			break;
		default:
			store_set_error(st, false, "parameter $%zu has an unknown type %d", i + 1,
			                (int)v->type);
			return -EINVAL;
		}
		if (v->len > STORE_MAX_VALUE) {
			store_set_error(st, false,
			                "parameter $%zu is %zu bytes, over the limit of %u", i + 1,
			                v->len, STORE_MAX_VALUE);
			return -E2BIG;
		}
		if (v->len && !v->p) {
			store_set_error(st, false, "parameter $%zu has a length but no bytes",
			                i + 1);
			return -EINVAL;
		}
		if (v->type == STORE_T_TEXT &&
		    (memchr(v->p, 0, v->len) || !store_utf8_valid(v->p, v->len))) {
			store_set_error(st, false,
			                "parameter $%zu is text but not valid UTF-8 without NUL "
			                "(use a blob)",
			                i + 1);
			return -EINVAL;
		}
	}
	return 0;
}

int store_exec(struct store *st, const char *sql, const struct store_val *params, size_t n)
{
	int ret = store_check_params(st, params, n);

	return ret < 0 ? ret : st->be->run(st, sql, params, n, NULL, NULL);
}

int store_query(struct store *st, const char *sql, const struct store_val *params, size_t n,
                store_row_fn fn, void *arg)
{
	int ret = store_check_params(st, params, n);

	if (ret == 0)
		ret = st->be->run(st, sql, params, n, fn, arg);
	return ret < 0 ? ret : 0;
}

struct store_first_int {
	bool found;
	bool null;
	int64_t v;
};

static int store_first_int_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct store_first_int *f = arg;

	f->found = true;
	if (ncols < 1 || cols[0].type == STORE_T_NULL)
		f->null = true;
	else if (cols[0].type == STORE_T_INT)
		f->v = cols[0].i;
	else
		return -EINVAL;
	return 1;
}

int store_query_int(struct store *st, const char *sql, const struct store_val *params, size_t n,
                    int64_t *out)
{
	struct store_first_int f = {0};
	int ret;

	ret = store_query(st, sql, params, n, store_first_int_row, &f);
	if (ret < 0)
		return ret;
	if (!f.found)
		return -ENOENT;
	if (f.null)
		return -EINVAL;
	*out = f.v;
	return 0;
}

static const char store_migrations_table[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
					     " component TEXT NOT NULL,"
					     " version INTEGER NOT NULL,"
					     " description TEXT NOT NULL,"
					     " applied_at BIGINT NOT NULL,"
					     " PRIMARY KEY (component, version))";

int store_schema_version(struct store *st, const char *component, int *version)
{
	int64_t v;
	int ret;

	ret = st->be->script(st, store_migrations_table);
	if (ret < 0)
		return ret;
	ret = store_query_int(st,
	                      "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
	                      " WHERE component = $1",
	                      STORE_ARGS(store_text(component)), &v);
	if (ret < 0)
		return ret;
	if (v < 0 || v > INT32_MAX) {
		store_set_error(st, false, "schema_migrations: bad version %lld for '%s'",
		                (long long)v, component);
		return -EPROTO;
	}
	*version = (int)v;
	return 0;
}

struct store_history {
	const struct store_migration *m;
	size_t n;
	size_t seen;
	bool bad;
	int64_t bad_version;
};

/* The applied versions, in order, must be the first entries of the program's array. */
static int store_history_row(void *arg, const struct store_val *cols, size_t ncols)
{
	struct store_history *h = arg;

	if (ncols < 1 || cols[0].type != STORE_T_INT) {
		h->bad = true;
		return 1;
	}
	if (h->seen >= h->n || cols[0].i != h->m[h->seen].version) {
		h->bad = true;
		h->bad_version = cols[0].i;
		return 1;
	}
	h->seen++;
	return 0;
}

static int store_migrations_valid(struct store *st, const char *component,
                                  const struct store_migration *m, size_t n)
{
	if (!component || !*component) {
		store_set_error(st, false, "migrate: no component name");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (m[i].version <= 0 || (i > 0 && m[i].version <= m[i - 1].version) || !m[i].sql ||
		    !m[i].description) {
			store_set_error(st, false,
			                "migrate %s: entry %zu is invalid (versions must increase"
			                " from 1; sql and description are required)",
			                component, i);
			return -EINVAL;
		}
	}
	return 0;
}

static int store_apply(struct store *st, const char *component, const struct store_migration *m)
{
	char reason[sizeof(st->err)];
	int64_t done;
	int ret;

	ret = store_begin(st);
	if (ret < 0)
		return ret;
	st->quiet = true;
	/* Inside the write lock: another process may have applied it meanwhile. */
	ret = store_query_int(st,
	                      "SELECT COUNT(*) FROM schema_migrations"
	                      " WHERE component = $1 AND version = $2",
	                      STORE_ARGS(store_text(component), store_int(m->version)), &done);
	if (ret < 0)
		goto fail;
	if (done) {
		st->quiet = false;
		return store_commit(st);
	}
	ret = st->be->script(st, m->sql);
	if (ret < 0)
		goto fail;
	ret =
	    store_exec(st,
	               "INSERT INTO schema_migrations (component, version, description, applied_at)"
	               " VALUES ($1, $2, $3, $4)",
	               STORE_ARGS(store_text(component), store_int(m->version),
	                          store_text(m->description), store_int((int64_t)time(NULL))));
	if (ret < 0)
		goto fail;
	ret = store_commit(st);
	if (ret < 0)
		goto fail_rolled_back;
	st->quiet = false;
	log_info("store: migrated %s to version %d (%s)", component, m->version, m->description);
	return 0;
fail:
	store_rollback(st);
fail_rolled_back:
	st->quiet = false;
	memcpy(reason, st->err, sizeof(reason));
	store_set_error(st, false, "migration %s/%d (%s) failed, schema left as it was: %s",
	                component, m->version, m->description, reason);
	return ret;
}

int store_migrate(struct store *st, const char *component, const struct store_migration *m,
                  size_t n)
{
	struct store_history h = {.m = m, .n = n};
	int current, known = n ? m[n - 1].version : 0;
	int ret;

	ret = store_migrations_valid(st, component, m, n);
	if (ret < 0)
		return ret;
	if (st->in_tx) {
		store_set_error(st, false, "migrate %s: called inside a transaction", component);
		return -EBUSY;
	}
	ret = store_schema_version(st, component, &current);
	if (ret < 0)
		return ret;
	if (current > known) {
		store_set_error(st, false,
		                "%s: database is newer than this program (schema version %d, this "
		                "program knows up to %d)",
		                component, current, known);
		return -ENOTSUP;
	}
	ret = store_query(st,
	                  "SELECT version FROM schema_migrations WHERE component = $1"
	                  " ORDER BY version",
	                  STORE_ARGS(store_text(component)), store_history_row, &h);
	if (ret < 0)
		return ret;
	if (h.bad) {
		store_set_error(st, false,
		                "%s: applied schema version %lld is not one this program has in "
		                "that place; refusing to migrate",
		                component, (long long)h.bad_version);
		return -EPROTO;
	}
	for (size_t i = h.seen; i < n; i++) {
		ret = store_apply(st, component, &m[i]);
		if (ret < 0)
			return ret;
	}
	return 0;
}
