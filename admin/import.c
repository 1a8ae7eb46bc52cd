/*
 * Directory import (users and groups from CSV or JSON, one transaction) and the policy
 * test an admin runs against the current model.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/admin_int.h"
#include "log.h"

#define CSV_FIELDS_MAX 16
#define CSV_FIELD_MAX  1024

enum csv_col { CSV_NAME = 0, CSV_GROUPS, CSV_DISPLAY, CSV_EMAIL, CSV_DISABLED, CSV_NCOLS };

static const char *const csv_cols[CSV_NCOLS] = {"name", "groups", "display_name", "email",
                                                "disabled"};

/*
 * One CSV record (RFC 4180: quotes, "" inside quotes) from *p; fields point into out.
 * 0 with *n fields, 1 at the end of input, -EINVAL with why.
 */
static int csv_record(const char **p, const char *end, char out[CSV_FIELDS_MAX][CSV_FIELD_MAX],
                      size_t *n, const char **why)
{
	const char *s = *p;
	size_t f = 0, len = 0;
	bool quoted = false, was_quoted = false;

	if (s >= end)
		return 1;
	out[0][0] = '\0';
	for (; s < end; s++) {
		char c = *s;

		if (quoted) {
			if (c == '"' && s + 1 < end && s[1] == '"') {
				s++;
			} else if (c == '"') {
				quoted = false;
				continue;
			}
		} else if (c == '"' && len == 0 && !was_quoted) {
			quoted = was_quoted = true;
			continue;
		} else if (c == ',' || c == '\n' || c == '\r') {
			out[f][len] = '\0';
			if (c == ',') {
				if (++f == CSV_FIELDS_MAX) {
					*why = "more than 16 columns";
					return -EINVAL;
				}
				len = 0;
				was_quoted = false;
				out[f][0] = '\0';
				continue;
			}
			if (c == '\r' && s + 1 < end && s[1] == '\n')
				s++;
			s++;
			break;
		} else if (was_quoted) {
			*why = "text after a closing quote";
			return -EINVAL;
		}
		if (c == '\0') {
			*why = "NUL byte";
			return -EINVAL;
		}
		if (len + 1 >= CSV_FIELD_MAX) {
			*why = "field longer than 1023 bytes";
			return -EINVAL;
		}
		out[f][len++] = c;
	}
	if (quoted) {
		*why = "unterminated quote";
		return -EINVAL;
	}
	out[f][len] = '\0';
	*n = f + 1;
	*p = s;
	return 0;
}

/* CSV into the JSON form {"users": [...]}. */
int admin_csv_users(const char *body, size_t len, struct json_object **out, struct admin_err *err)
{
	char(*rec)[CSV_FIELD_MAX] = malloc(CSV_FIELDS_MAX * CSV_FIELD_MAX);
	const char *p = body, *end = body + len, *why = NULL;
	int map[CSV_FIELDS_MAX], line = 1, ret;
	struct json_object *users, *root;
	size_t n, ncols;

	*out = NULL;
	if (!rec) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	ret = csv_record(&p, end, rec, &ncols, &why);
	if (ret) {
		admin_err_set(err, 400, "import: line 1: %s", ret > 0 ? "empty file" : why);
		free(rec);
		return -EINVAL;
	}
	for (size_t i = 0; i < ncols; i++) {
		map[i] = -1;
		for (int c = 0; c < CSV_NCOLS; c++)
			if (strcmp(rec[i], csv_cols[c]) == 0)
				map[i] = c;
		if (map[i] < 0) {
			char q[80];

			admin_err_set(err, 400,
			              "import: line 1: unknown column '%s' (name, groups, "
			              "display_name, email, disabled)",
			              admin_q(q, sizeof(q), rec[i]));
			free(rec);
			return -EINVAL;
		}
	}
	root = json_object_new_object();
	users = json_object_new_array();
	if (!root || !users) {
		json_object_put(root);
		json_object_put(users);
		free(rec);
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	json_object_object_add(root, "users", users);
	while ((ret = csv_record(&p, end, rec, &n, &why)) == 0) {
		struct json_object *u;

		line++;
		if (n == 1 && rec[0][0] == '\0')
			continue;
		if (n != ncols) {
			admin_err_set(err, 400, "import: line %d: %zu fields, the header has %zu",
			              line, n, ncols);
			ret = -EINVAL;
			break;
		}
		if (json_object_array_length(users) >= ADMIN_OPS_MAX) {
			admin_err_set(err, 400, "import: more than %d users", ADMIN_OPS_MAX);
			ret = -EINVAL;
			break;
		}
		u = json_object_new_object();
		json_object_array_add(users, u);
		for (size_t i = 0; i < n; i++) {
			switch (map[i]) {
			case CSV_GROUPS: {
				struct json_object *g = json_object_new_array();
				char *save = NULL, *tok;

				for (tok = strtok_r(rec[i], ";", &save); tok;
				     tok = strtok_r(NULL, ";", &save))
					json_object_array_add(g, json_object_new_string(tok));
				json_object_object_add(u, "groups", g);
				break;
			}
			case CSV_DISABLED:
				if (strcmp(rec[i], "true") && strcmp(rec[i], "false") &&
				    rec[i][0]) {
					admin_err_set(err, 400,
					              "import: line %d: disabled is true or false",
					              line);
					ret = -EINVAL;
				}
				json_object_object_add(
				    u, "disabled",
				    json_object_new_boolean(strcmp(rec[i], "true") == 0));
				break;
			default:
				if (rec[i][0] || map[i] == CSV_NAME)
					json_object_object_add(u, csv_cols[map[i]],
					                       json_object_new_string(rec[i]));
			}
		}
		if (ret)
			break;
	}
	if (ret < 0 && why) {
		admin_err_set(err, 400, "import: line %d: %s", line + 1, why);
	}
	free(rec);
	if (ret < 0) {
		json_object_put(root);
		return ret;
	}
	*out = root;
	return 0;
}

static int import_group(struct store *st, const char *tenant, struct json_object *g,
                        size_t *created, struct admin_err *err)
{
	struct admin_row_out cur = {0};
	struct json_object *v;
	int ret;

	if (!json_object_is_type(g, json_type_object) ||
	    !json_object_object_get_ex(g, "name", &v) || !json_object_is_type(v, json_type_string))
		return admin_op(st, tenant, ADMIN_OP_CREATE, ADMIN_K_GROUP, NULL, g, 0, NULL, err);
	ret = admin_load(st, tenant, ADMIN_K_GROUP, json_object_get_string(v), &cur);
	if (ret == 0) {
		json_object_object_add(g, "version", json_object_new_int64(cur.version));
		json_object_put(cur.body);
		return admin_op(st, tenant, ADMIN_OP_UPDATE, ADMIN_K_GROUP,
		                json_object_get_string(v), g, 0, NULL, err);
	}
	(*created)++;
	return admin_op(st, tenant, ADMIN_OP_CREATE, ADMIN_K_GROUP, NULL, g, 0, NULL, err);
}

int admin_import(struct store *st, const char *tenant, const char *body, size_t len, bool csv,
                 char **out, struct admin_err *err)
{
	return admin_import_keep(st, tenant, body, len, csv, out, NULL, err);
}

int admin_import_keep(struct store *st, const char *tenant, const char *body, size_t len, bool csv,
                      char **out, struct admin_snapshot **keep, struct admin_err *err)
{
	struct json_object *root = NULL, *users = NULL, *groups = NULL, *o = NULL;
	size_t ngroups = 0, nusers;
	int ret;

	if (out)
		*out = NULL;
	ret =
	    csv ? admin_csv_users(body, len, &root, err) : admin_json_parse(body, len, &root, err);
	if (ret)
		return ret;
	if (json_object_is_type(root, json_type_array)) {
		users = root;
	} else if (json_object_is_type(root, json_type_object)) {
		json_object_object_foreach(root, key, val)
		{
			if (strcmp(key, "users") == 0 && json_object_is_type(val, json_type_array))
				users = val;
			else if (strcmp(key, "groups") == 0 &&
			         json_object_is_type(val, json_type_array))
				groups = val;
			else {
				char q[80];

				admin_err_set(
				    err, 400,
				    "import: unknown field '%s' or not a list (users, groups)",
				    admin_q(q, sizeof(q), key));
				ret = -EINVAL;
				goto out;
			}
		}
	}
	if (!users && !groups) {
		admin_err_set(err, 400,
		              "import: expected a list of users or {\"users\", \"groups\"}");
		ret = -EINVAL;
		goto out;
	}
	nusers = users ? json_object_array_length(users) : 0;
	if (nusers + (groups ? json_object_array_length(groups) : 0) > ADMIN_OPS_MAX) {
		admin_err_set(err, 400, "import: more than %d entries", ADMIN_OPS_MAX);
		ret = -EINVAL;
		goto out;
	}
	ret = admin_begin(st, tenant, err);
	if (ret)
		goto out;
	for (size_t i = 0; !ret && groups && i < json_object_array_length(groups); i++)
		ret = import_group(st, tenant, json_object_array_get_idx(groups, i), &ngroups, err);
	/* Groups the users name but the file does not define. */
	for (size_t i = 0; !ret && i < nusers; i++) {
		struct json_object *u = json_object_array_get_idx(users, i), *gl;
		struct admin_row_out cur = {0};

		if (!json_object_is_type(u, json_type_object) ||
		    !json_object_object_get_ex(u, "groups", &gl) ||
		    !json_object_is_type(gl, json_type_array))
			continue;
		for (size_t j = 0; !ret && j < json_object_array_length(gl); j++) {
			struct json_object *gn = json_object_array_get_idx(gl, j), *g;

			if (!json_object_is_type(gn, json_type_string) ||
			    !ident_valid_id(json_object_get_string(gn)))
				continue; /* the user's validation reports it */
			if (admin_load(st, tenant, ADMIN_K_GROUP, json_object_get_string(gn),
			               &cur) == 0) {
				json_object_put(cur.body);
				continue;
			}
			g = json_object_new_object();
			json_object_object_add(g, "name", json_object_get(gn));
			ret = admin_op(st, tenant, ADMIN_OP_CREATE, ADMIN_K_GROUP, NULL, g, 0, NULL,
			               err);
			json_object_put(g);
			ngroups++;
		}
	}
	for (size_t i = 0; !ret && i < nusers; i++) {
		struct json_object *u = json_object_array_get_idx(users, i), *v;
		struct admin_row_out cur = {0};
		struct admin_err sub;

		if (json_object_is_type(u, json_type_object) &&
		    json_object_object_get_ex(u, "name", &v) &&
		    json_object_is_type(v, json_type_string) &&
		    admin_load(st, tenant, ADMIN_K_USER, json_object_get_string(v), &cur) == 0) {
			json_object_object_add(u, "version", json_object_new_int64(cur.version));
			json_object_put(cur.body);
			ret = admin_op(st, tenant, ADMIN_OP_UPDATE, ADMIN_K_USER,
			               json_object_get_string(v), u, 0, NULL, &sub);
		} else {
			ret = admin_op(st, tenant, ADMIN_OP_CREATE, ADMIN_K_USER, NULL, u, 0, NULL,
			               &sub);
		}
		if (ret)
			admin_err_set(err, sub.status, "import: users[%zu]: %s", i, sub.msg);
	}
	if (!ret)
		ret = admin_finish(st, tenant, keep, err);
	if (ret) {
		store_rollback(st);
		goto out;
	}
	o = json_object_new_object();
	json_object_object_add(o, "users", json_object_new_int64((int64_t)nusers));
	json_object_object_add(o, "groups_created", json_object_new_int64((int64_t)ngroups));
	ret = admin_emit(o, out, err);
out:
	json_object_put(o);
	json_object_put(root);
	return ret;
}

static int test_strs(struct json_object *q, const char *key, const char ***v, size_t *n,
                     struct admin_err *err)
{
	struct json_object *a;

	*v = NULL;
	*n = 0;
	if (!json_object_object_get_ex(q, key, &a))
		return 0;
	if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) > 256) {
		admin_err_set(err, 400, "policy test: %s: expected a list of at most 256 names",
		              key);
		return -EINVAL;
	}
	*n = json_object_array_length(a);
	*v = calloc(*n ? *n : 1, sizeof(**v));
	if (!*v) {
		admin_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < *n; i++) {
		struct json_object *e = json_object_array_get_idx(a, i);

		if (!json_object_is_type(e, json_type_string)) {
			admin_err_set(err, 400, "policy test: %s[%zu]: expected a string", key, i);
			return -EINVAL;
		}
		(*v)[i] = json_object_get_string(e);
	}
	return 0;
}

int admin_policy_test(struct store *st, const char *tenant, const char *body, size_t len,
                      char **out, struct admin_err *err)
{
	struct json_object *q = NULL, *v, *o = NULL;
	struct admin_snapshot *snap = NULL;
	const struct admin_user *u;
	const struct segment *seg;
	struct policy_subject subj = {.tenant = tenant};
	struct policy_decision d;
	struct admin_decision dec;
	const char **groups = NULL, **postures = NULL, *user, *app, *colon;
	char name[SEG_NAME_MAX + 1], q2[80];
	uint8_t proto = SEG_PROTO_TCP;
	unsigned long port;
	time_t now = time(NULL);
	char *end;
	int ret;

	*out = NULL;
	ret = admin_json_parse(body, len, &q, err);
	if (ret)
		return ret;
	if (!json_object_is_type(q, json_type_object)) {
		admin_err_set(err, 400, "policy test: expected an object");
		ret = -EINVAL;
		goto out;
	}
	json_object_object_foreach(q, key, val)
	{
		if (strcmp(key, "user") && strcmp(key, "app") && strcmp(key, "proto") &&
		    strcmp(key, "groups") && strcmp(key, "postures") && strcmp(key, "time")) {
			admin_err_set(err, 400, "policy test: unknown field '%s'",
			              admin_q(q2, sizeof(q2), key));
			ret = -EINVAL;
			goto out;
		}
		(void)val;
	}
	user = json_object_object_get_ex(q, "user", &v) && json_object_is_type(v, json_type_string)
	           ? json_object_get_string(v)
	           : NULL;
	app = json_object_object_get_ex(q, "app", &v) && json_object_is_type(v, json_type_string)
	          ? json_object_get_string(v)
	          : NULL;
	if (!user || !ident_valid_user(user)) {
		admin_err_set(err, 400, "policy test: user: a valid user name is required");
		ret = -EINVAL;
		goto out;
	}
	colon = app ? strrchr(app, ':') : NULL;
	if (!colon || (size_t)(colon - app) > SEG_NAME_MAX || colon == app) {
		admin_err_set(err, 400, "policy test: app: NAME:PORT is required");
		ret = -EINVAL;
		goto out;
	}
	memcpy(name, app, (size_t)(colon - app));
	name[colon - app] = '\0';
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (*end || errno || port < 1 || port > 65535 || colon[1] < '0' || colon[1] > '9') {
		admin_err_set(err, 400, "policy test: app: port must be 1..65535");
		ret = -EINVAL;
		goto out;
	}
	if (json_object_object_get_ex(q, "proto", &v)) {
		const char *p = json_object_get_string(v);

		if (!json_object_is_type(v, json_type_string) ||
		    (strcmp(p, "tcp") && strcmp(p, "udp"))) {
			admin_err_set(err, 400, "policy test: proto: tcp or udp");
			ret = -EINVAL;
			goto out;
		}
		proto = p[0] == 'u' ? SEG_PROTO_UDP : SEG_PROTO_TCP;
	}
	if (json_object_object_get_ex(q, "time", &v)) {
		if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
			admin_err_set(err, 400, "policy test: time: seconds since 1970");
			ret = -EINVAL;
			goto out;
		}
		now = (time_t)json_object_get_int64(v);
	}
	ret = test_strs(q, "groups", &groups, &subj.ngroups, err);
	if (!ret)
		ret = test_strs(q, "postures", &postures, &subj.npostures, err);
	if (!ret)
		ret = admin_snapshot_build(st, tenant, &snap, err);
	if (ret)
		goto out;
	subj.user = user;
	subj.postures = postures;
	subj.groups = groups;
	u = admin_snapshot_user(snap, user);
	if (!json_object_object_get_ex(q, "groups", &v) && u) {
		subj.groups = (const char *const *)u->groups;
		subj.ngroups = u->ngroups;
	}
	o = json_object_new_object();
	admin_decide(snap, NULL, &subj, name, proto, (uint16_t)port, now, &dec);
	seg = dec.seg;
	d = dec.d;
	json_object_object_add(o, "action",
	                       json_object_new_string(d.action == POLICY_ALLOW ? "allow" : "deny"));
	json_object_object_add(o, "rule", json_object_new_string(d.rule_name));
	json_object_object_add(o, "rule_id", json_object_new_int64(d.rule_id));
	json_object_object_add(o, "reason", json_object_new_string(d.reason));
	json_object_object_add(o, "segment", json_object_new_string(seg ? seg->name : ""));
	json_object_object_add(o, "max_age_s", json_object_new_int64(d.max_age_s));
	json_object_object_add(o, "idle_s", json_object_new_int64(d.idle_s));
	json_object_object_add(o, "known_user", json_object_new_boolean(u != NULL));
	ret = admin_emit(o, out, err);
out:
	admin_snapshot_free(snap);
	free(groups);
	free(postures);
	json_object_put(o);
	json_object_put(q);
	return ret;
}
