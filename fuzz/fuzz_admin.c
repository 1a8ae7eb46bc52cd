/*
 * libFuzzer target: the admin API's inputs (admin/): each kind's JSON schema check, the
 * CSV directory import, and batch / import / policy test against a store on tmpfs.
 * The first byte picks the entry point; the rest is the request body.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/admin_int.h"
#include "log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct store *fz_store;
static char fz_path[96];

/* The database and its -wal and -shm files go when the fuzzer exits. */
static void fz_cleanup(void)
{
	char p[128];

	store_close(fz_store);
	fz_store = NULL;
	unlink(fz_path);
	snprintf(p, sizeof(p), "%s-wal", fz_path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", fz_path);
	unlink(p);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char uri[128];
	const char *why;

	log_init("fuzz_admin", LOG_LVL_ERR);
	snprintf(fz_path, sizeof(fz_path), "/dev/shm/fuzz_admin.%d.db", (int)getpid());
	snprintf(uri, sizeof(uri), "sqlite:%s", fz_path);
	if (store_open(uri, &fz_store, &why) < 0 || admin_migrate(fz_store) < 0)
		abort();
	atexit(fz_cleanup);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct admin_err err = {0};
	struct json_object *o = NULL;
	const char *body = (const char *)data + 1;
	char *out = NULL;
	size_t len;
	int ret;

	if (size < 1 || size > 65536)
		return 0;
	len = size - 1;
	switch (data[0] % (ADMIN_K_MAX + 4)) {
	case ADMIN_K_MAX:
		ret = admin_csv_users(body, len, &o, &err);
		json_object_put(o);
		break;
	case ADMIN_K_MAX + 1:
		ret = admin_batch(fz_store, "fuzz", body, len, &out, &err);
		break;
	case ADMIN_K_MAX + 2:
		ret = admin_import(fz_store, "fuzz", body, len, data[0] & 0x80, &out, &err);
		break;
	case ADMIN_K_MAX + 3:
		ret = admin_policy_test(fz_store, "fuzz", body, len, &out, &err);
		break;
	default:
		ret = admin_check((enum admin_kind)(data[0] % (ADMIN_K_MAX + 4)), body, len, &err);
	}
	/* A refusal always says why, with an HTTP status of the 4xx/5xx families. */
	if (ret < 0 && (err.msg[0] == '\0' || err.status < 400 || err.status > 599))
		abort();
	if (store_in_transaction(fz_store))
		abort();
	free(out);
	return 0;
}
