/*
 * Component identity as carried in a certificate's subjectAltName URI:
 *
 *   mtun://TENANT/ROLE/ID                      every component
 *   mtun://TENANT/agent/ID?user=U&device=HEX   agents: user name, device fingerprint
 *
 * TENANT  [a-z0-9-], 1..63, not starting or ending with '-'
 * ROLE    agent | connector | broker | inspector | admin | ca
 * ID      [A-Za-z0-9._-], 1..64
 * U       [A-Za-z0-9._@+-], 1..64
 * HEX     64 lowercase hex digits: SHA-256 of the device fingerprint inputs
 * No percent-encoding: the character sets make it unnecessary, and refusing it keeps
 * one spelling per identity.
 */
#ifndef MTUN_IDENT_H
#define MTUN_IDENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mt_role {
	MT_ROLE_NONE = 0,
	MT_ROLE_AGENT,
	MT_ROLE_CONNECTOR,
	MT_ROLE_BROKER,
	MT_ROLE_INSPECTOR,
	MT_ROLE_ADMIN,
	MT_ROLE_CA,
	MT_ROLE_MAX,
};

#define MT_ROLE_BIT(r) (1U << (r))

#define IDENT_TENANT_MAX 63
#define IDENT_ID_MAX     64
#define IDENT_USER_MAX   64
#define IDENT_DEVICE_LEN 32
#define IDENT_URI_MAX                                                                              \
	(7 + IDENT_TENANT_MAX + 1 + 9 + 1 + IDENT_ID_MAX + 6 + IDENT_USER_MAX + 8 + 64 + 1)

struct ident {
	char tenant[IDENT_TENANT_MAX + 1];
	enum mt_role role;
	char id[IDENT_ID_MAX + 1];
	char user[IDENT_USER_MAX + 1]; /* agents only; "" otherwise */
	bool has_device;
	uint8_t device[IDENT_DEVICE_LEN];
};

const char *ident_role_name(enum mt_role role);
/* Returns MT_ROLE_NONE for an unknown name. */
enum mt_role ident_role_parse(const char *name);

bool ident_valid_tenant(const char *s);
bool ident_valid_id(const char *s);
bool ident_valid_user(const char *s);

/* Parses a URI of len bytes (not NUL-terminated); 0 or -EINVAL with *why set. */
int ident_parse(const char *uri, size_t len, struct ident *out, const char **why);
/* Writes the URI for id into buf; 0, -EINVAL (invalid fields) or -ENOSPC. */
int ident_format(const struct ident *id, char *buf, size_t size);

#endif
