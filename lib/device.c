/* Device fingerprint from machine identifiers (see device.h for the inputs). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "device.h"
#include "log.h"

#define DEVICE_VALUE_MAX 128

/* Reads a short one-line value, trimmed and lowercased. -ENOENT/-EACCES when unreadable. */
static int device_read_value(const char *path, char *out, size_t size)
{
	ssize_t n;
	size_t i, j = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, out, size - 1);
	close(fd);
	if (n < 0)
		return -errno;
	out[n] = '\0';
	for (i = 0; i < (size_t)n; i++) {
		unsigned char c = (unsigned char)out[i];

		if (c == '\n' || c == '\r' || c == ' ' || c == '\t')
			continue;
		if (!isprint(c))
			return -EINVAL;
		out[j++] = (char)tolower(c);
	}
	out[j] = '\0';
	return j ? 0 : -EINVAL;
}

static bool device_is_hex(const char *s, size_t len)
{
	if (strlen(s) != len)
		return false;
	for (; *s; s++)
		if (!isxdigit((unsigned char)*s))
			return false;
	return true;
}

static int device_hash(const char *label, const char *inputs, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned len = 32;
	int ret = -EIO;

	if (!c)
		return -ENOMEM;
	if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, label, strlen(label)) == 1 &&
	    EVP_DigestUpdate(c, inputs, strlen(inputs)) == 1 &&
	    EVP_DigestFinal_ex(c, out, &len) == 1)
		ret = 0;
	EVP_MD_CTX_free(c);
	return ret;
}

int device_fingerprint(const char *source_dir, struct device_fp *out)
{
	char path[PATH_MAX], mid[DEVICE_VALUE_MAX], uuid[DEVICE_VALUE_MAX];
	char inputs[2 * DEVICE_VALUE_MAX + 64];
	int ret;

	memset(out, 0, sizeof(*out));
	if (source_dir) {
		snprintf(path, sizeof(path), "%s/machine-id", source_dir);
		ret = device_read_value(path, mid, sizeof(mid));
	} else {
		ret = device_read_value("/etc/machine-id", mid, sizeof(mid));
		if (ret == -ENOENT)
			ret = device_read_value("/var/lib/dbus/machine-id", mid, sizeof(mid));
	}
	if (ret)
		return ret;
	if (!device_is_hex(mid, 32))
		return -EINVAL;
	out->inputs |= DEVICE_IN_MACHINE_ID;

	if (source_dir)
		snprintf(path, sizeof(path), "%s/product_uuid", source_dir);
	else
		snprintf(path, sizeof(path), "/sys/class/dmi/id/product_uuid");
	ret = device_read_value(path, uuid, sizeof(uuid));
	if (ret == 0)
		out->inputs |= DEVICE_IN_PRODUCT_UUID;
	else if (ret == -ENOENT || ret == -EACCES || ret == -EPERM)
		uuid[0] = '\0';
	else
		return ret;

	snprintf(inputs, sizeof(inputs), "machine-id=%s\nproduct_uuid=%s\n", mid, uuid);
	ret = device_hash("mtun device id v1\n", inputs, out->id);
	if (!ret)
		ret = device_hash("mtun device key v1\n", inputs, out->secret);
	OPENSSL_cleanse(inputs, sizeof(inputs));
	OPENSSL_cleanse(mid, sizeof(mid));
	OPENSSL_cleanse(uuid, sizeof(uuid));
	if (ret)
		device_fp_clear(out);
	return ret;
}

void device_fp_clear(struct device_fp *fp)
{
	if (fp)
		OPENSSL_cleanse(fp, sizeof(*fp));
}

void device_id_hex(const uint8_t id[DEVICE_ID_LEN], char out[2 * DEVICE_ID_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";

	for (unsigned i = 0; i < DEVICE_ID_LEN; i++) {
		out[2 * i] = hex[id[i] >> 4];
		out[2 * i + 1] = hex[id[i] & 15];
	}
	out[2 * DEVICE_ID_LEN] = '\0';
}
