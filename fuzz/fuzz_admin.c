/*
 * libFuzzer target: the admin API's inputs (admin/): each kind's JSON schema check, the
 * CSV directory import, and batch / import / policy test against a store on tmpfs; and
 * the duplicate-key scan checked against json-c on every input that parses.
 * The first byte picks the entry point; the rest is the request body.
 */
#include <errno.h>
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

static size_t fz_members(struct json_object *o)
{
	size_t n = 0;

	if (json_object_is_type(o, json_type_object)) {
		json_object_object_foreach(o, key, val)
		{
			(void)key;
			n += 1 + fz_members(val);
		}
	} else if (json_object_is_type(o, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(o); i++)
			n += fz_members(json_object_array_get_idx(o, i));
	}
	return n;
}

/*
 * The duplicate-key scan against json-c itself: on text json-c parses strictly, the keys
 * the scan counts equal the members json-c kept exactly when it finds no duplicate.
 */
static void fz_dup_keys(const char *body, size_t len)
{
	struct json_tokener *tok = json_tokener_new_ex(16);
	struct json_object *o;
	char dup[80];
	size_t nkeys = 0, kept;
	int ret;

	if (!tok || len > 65536)
		abort();
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, body, (int)len);
	if (o && json_tokener_get_error(tok) == json_tokener_success &&
	    json_tokener_get_parse_end(tok) == len && !memchr(body, '\0', len)) {
		kept = fz_members(o);
		ret = admin_json_dup_key(body, len, dup, sizeof(dup), &nkeys);
		if ((ret == 0 && nkeys != kept) || (ret == -EEXIST && nkeys <= kept) ||
		    (ret != 0 && ret != -EEXIST))
			abort();
	}
	json_object_put(o);
	json_tokener_free(tok);
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
	fz_dup_keys(body, len);
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
