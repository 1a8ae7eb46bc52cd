/*
 * Device fingerprint of the machine an agent runs on. Inputs, in this order:
 *   machine-id    /etc/machine-id (else /var/lib/dbus/machine-id): required, 32 hex digits
 *   product_uuid  /sys/class/dmi/id/product_uuid: optional (absent in VMs without DMI,
 *                 readable by root only)
 * With an identity source directory (the lab setting `identity_source`), both are read
 * from DIR/machine-id and DIR/product_uuid instead.
 * Two values come from the same canonical inputs with different domain labels:
 *   id      SHA-256("mtun device id v1\n" || inputs): public, in the agent's certificate
 *   secret  SHA-256("mtun device key v1\n" || inputs): never leaves the machine; seals
 *           the agent's key file
 */
#ifndef MTUN_DEVICE_H
#define MTUN_DEVICE_H

#include <stdint.h>

#define DEVICE_ID_LEN     32
#define DEVICE_SECRET_LEN 32
#define DEVICE_SOURCE_ENV "MTUN_IDENTITY_SOURCE"

enum device_input {
	DEVICE_IN_MACHINE_ID = 1U << 0,
	DEVICE_IN_PRODUCT_UUID = 1U << 1,
};

struct device_fp {
	uint8_t id[DEVICE_ID_LEN];
	uint8_t secret[DEVICE_SECRET_LEN];
	unsigned inputs; /* enum device_input bits that were read */
};

/* source_dir NULL: the machine's own files. 0, -ENOENT (no machine-id), -EINVAL (malformed). */
int device_fingerprint(const char *source_dir, struct device_fp *out);
void device_fp_clear(struct device_fp *fp);
/* 64 lowercase hex digits + NUL. */
void device_id_hex(const uint8_t id[DEVICE_ID_LEN], char out[2 * DEVICE_ID_LEN + 1]);

#endif
