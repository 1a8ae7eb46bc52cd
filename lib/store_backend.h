/*
 * Private to the store: what a backend (store_sqlite.c, later store_pg.c) provides, and
 * the store object they share. The rest of mtun includes only store.h.
 */
#ifndef MTUN_STORE_BACKEND_H
#define MTUN_STORE_BACKEND_H

#include "store.h"

struct store_backend {
	const char *name;
	/* target is the URI without its scheme; why gets a reason on failure. */
	int (*open)(struct store *st, const char *target, char *why, size_t whylen);
	void (*close)(struct store *st);
	int (*begin)(struct store *st);
	int (*commit)(struct store *st);
	int (*rollback)(struct store *st);
	/* One statement; fn may be NULL. Returns rows changed or -errno. */
	int (*run)(struct store *st, const char *sql, const struct store_val *params, size_t n,
	           store_row_fn fn, void *arg);
	/* Several statements without parameters (migrations). */
	int (*script)(struct store *st, const char *sql);
};

struct store {
	const struct store_backend *be;
	void *impl;
	bool in_tx;
	bool quiet; /* keep errors without logging: the caller logs them with context */
	char err[512];
};

/* Keeps the reason for store_errmsg and logs it once (warn, or info if expected). */
void store_set_error(struct store *st, bool expected, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

extern const struct store_backend store_sqlite_backend;

#endif
