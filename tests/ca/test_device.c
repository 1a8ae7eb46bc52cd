/* Device fingerprint: stable per source, different across machines, inputs checked. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device.h"
#include "t.h"

static char base[64];

static void put(const char *dir, const char *name, const char *val)
{
	char p[256];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	f = fopen(p, "w");
	if (f) {
		fputs(val, f);
		fclose(f);
	}
}

static const char *machine(const char *name, const char *mid, const char *uuid)
{
	static char dir[128];

	snprintf(dir, sizeof(dir), "%s/%s", base, name);
	mkdir(dir, 0700);
	if (mid)
		put(dir, "machine-id", mid);
	if (uuid)
		put(dir, "product_uuid", uuid);
	return dir;
}

static void test_stable_and_distinct(void)
{
	struct device_fp a, a2, b;

	T_EQ(device_fingerprint(machine("a", "0123456789abcdef0123456789abcdef\n", NULL), &a), 0);
	T_EQ(device_fingerprint(machine("a", NULL, NULL), &a2), 0);
	T_CHECK(memcmp(a.id, a2.id, sizeof(a.id)) == 0);
	T_CHECK(memcmp(a.secret, a2.secret, sizeof(a.secret)) == 0);
	T_EQ(device_fingerprint(machine("b", "fedcba9876543210fedcba9876543210\n", NULL), &b), 0);
	T_CHECK(memcmp(a.id, b.id, sizeof(a.id)) != 0);
	T_CHECK(memcmp(a.secret, b.secret, sizeof(a.secret)) != 0);
	/* the public id never equals the sealing secret */
	T_CHECK(memcmp(a.id, a.secret, sizeof(a.id)) != 0);
	T_EQ(a.inputs, DEVICE_IN_MACHINE_ID);
}

static void test_product_uuid_counts(void)
{
	struct device_fp a, c;

	T_EQ(device_fingerprint(machine("c", "0123456789abcdef0123456789abcdef", NULL), &a), 0);
	T_EQ(device_fingerprint(machine("c", NULL, "4C4C4544-0042-3510-8048-B4C04F565931\n"), &c),
	     0);
	T_EQ(c.inputs, DEVICE_IN_MACHINE_ID | DEVICE_IN_PRODUCT_UUID);
	T_CHECK(memcmp(a.id, c.id, sizeof(a.id)) != 0);
}

static void test_case_and_space_insensitive(void)
{
	struct device_fp a, b;

	T_EQ(device_fingerprint(machine("d", "0123456789ABCDEF0123456789ABCDEF\r\n", NULL), &a), 0);
	T_EQ(device_fingerprint(machine("e", "0123456789abcdef0123456789abcdef", NULL), &b), 0);
	T_CHECK(memcmp(a.id, b.id, sizeof(a.id)) == 0);
}

static void test_bad_inputs(void)
{
	struct device_fp fp;

	T_EQ(device_fingerprint(machine("f", NULL, NULL), &fp), -ENOENT);
	T_EQ(device_fingerprint(machine("g", "not-hex-at-all\n", NULL), &fp), -EINVAL);
	T_EQ(device_fingerprint(machine("h", "0123456789abcdef", NULL), &fp), -EINVAL);
	T_EQ(device_fingerprint(machine("i", "\n\n", NULL), &fp), -EINVAL);
}

static void test_hex(void)
{
	uint8_t id[DEVICE_ID_LEN] = {0xab, 0x01};
	char hex[2 * DEVICE_ID_LEN + 1];

	device_id_hex(id, hex);
	T_EQ(strlen(hex), 64);
	T_CHECK(strncmp(hex, "ab01", 4) == 0);
}

static void test_this_machine(void)
{
	struct device_fp fp;
	int ret = device_fingerprint(NULL, &fp);

	if (ret == -ENOENT) {
		t_skip("no /etc/machine-id here");
		return;
	}
	T_EQ(ret, 0);
	T_CHECK(fp.inputs & DEVICE_IN_MACHINE_ID);
}

int main(void)
{
	snprintf(base, sizeof(base), "/tmp/mtun-device.XXXXXX");
	if (!mkdtemp(base))
		return 1;
	T_RUN(test_stable_and_distinct);
	T_RUN(test_product_uuid_counts);
	T_RUN(test_case_and_space_insensitive);
	T_RUN(test_bad_inputs);
	T_RUN(test_hex);
	T_RUN(test_this_machine);
	{
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
		if (system(cmd) != 0)
			printf("# cleanup of %s failed\n", base);
	}
	return t_done();
}
