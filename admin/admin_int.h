/* mtun_admin internals shared by its files; prototypes grouped by file. */
#ifndef MTUN_ADMIN_INT_H
#define MTUN_ADMIN_INT_H

#include <json-c/json.h>

#include "admin/admin.h"

enum admin_fty {
	AF_STR = 0,
	AF_INT,
	AF_NUM,
	AF_BOOL,
	AF_ENUM,
	AF_STRLIST,
	AF_REF,
	AF_REFLIST,
	AF_OBJ,
	AF_OBJLIST,
};

typedef int admin_check_fn(const char *s, char *why, size_t whylen);

struct admin_field {
	const char *name;
	enum admin_fty type;
	bool required;
	int kind;         /* AF_REF, AF_REFLIST: enum admin_kind */
	int64_t min, max; /* AF_INT value; AF_STR length; lists: entries */
	double dmin, dmax;
	const char *const *values; /* AF_ENUM */
	admin_check_fn *check;     /* AF_STR, AF_STRLIST entries */
	const struct admin_field *sub;
};

struct admin_kind_desc {
	const char *name, *path;
	const struct admin_field *fields;
};

struct admin_ref {
	int kind;
	char name[IDENT_USER_MAX + 1];
	char path[96];
};

struct admin_refby {
	bool found;
	char kind[32];
	char name[IDENT_USER_MAX + 1];
};

struct admin_row_out {
	int64_t id, version;
	struct json_object *body;
};

enum admin_op_kind {
	ADMIN_OP_CREATE = 0,
	ADMIN_OP_UPDATE,
	ADMIN_OP_DELETE,
};

/* model.c */
extern const struct admin_kind_desc admin_kinds[ADMIN_K_MAX];
void admin_err_set(struct admin_err *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *admin_q(char *buf, size_t size, const char *s);
int admin_parse_ports(const char *s, struct seg_ports *p);
int admin_parse_hhmm(const char *s, unsigned *min);
int admin_json_parse(const char *body, size_t len, struct json_object **out, struct admin_err *err);
/* In JSON json-c parsed strictly: -EEXIST and the key (quoted for a message) in dup when an
 * object has two equal keys; 0; -ENOMEM. *nkeys (may be NULL): the keys in the text. */
int admin_json_dup_key(const char *body, size_t len, char *dup, size_t dupsize, size_t *nkeys);
int admin_validate(enum admin_kind k, struct json_object *obj, const char *name,
                   struct admin_ref **refs, size_t *nrefs, struct admin_err *err);
int admin_load(struct store *st, const char *tenant, enum admin_kind k, const char *name,
               struct admin_row_out *out);
struct json_object *admin_present(struct json_object *body, const char *name, int64_t id,
                                  int64_t version);
int admin_emit(struct json_object *o, char **out, struct admin_err *err);
/* Every object of a kind, by name (rules in evaluation order); present: as the API shows
 * them (name, id, version first), else the stored bodies with those added (faster). */
int admin_list_json(struct store *st, const char *tenant, enum admin_kind k, bool present,
                    struct json_object **items);
int admin_referrer(struct store *st, const char *tenant, enum admin_kind k, const char *name,
                   struct admin_refby *by);
/* Inside a transaction the caller began (store_begin). */
int admin_op(struct store *st, const char *tenant, enum admin_op_kind op, enum admin_kind k,
             const char *path_name, struct json_object *obj, int64_t version,
             struct json_object **result, struct admin_err *err);
/* Compiles the model (with the index when keep: then *keep gets it), bumps the generation,
 * commits. */
int admin_finish(struct store *st, const char *tenant, struct admin_snapshot **keep,
                 struct admin_err *err);
/* admin_create/update/delete, and *keep (when not NULL) the committed model compiled. */
int admin_apply(struct store *st, const char *tenant, enum admin_op_kind op, enum admin_kind k,
                const char *name, const char *body, size_t len, int64_t version, char **out,
                struct admin_snapshot **keep, struct admin_err *err);
int admin_batch_keep(struct store *st, const char *tenant, const char *body, size_t len, char **out,
                     struct admin_snapshot **keep, struct admin_err *err);
int admin_begin(struct store *st, const char *tenant, struct admin_err *err);

/* decide.c */
int admin_segpol_cmp(const void *a, const void *b);

/* snapshot.c */
/* index false: only validate and compile what decisions need without the per-segment index. */
int admin_snapshot_compile(struct store *st, const char *tenant, bool index,
                           struct admin_snapshot **out, struct admin_err *err);

/* import.c */
int admin_import_keep(struct store *st, const char *tenant, const char *body, size_t len, bool csv,
                      char **out, struct admin_snapshot **keep, struct admin_err *err);
int admin_csv_users(const char *body, size_t len, struct json_object **out, struct admin_err *err);

#endif
