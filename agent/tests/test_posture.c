/* Tests for agent/posture.c: each fact read from a fake tree (proc/, sys/, etc/), the file
 * cache, and the POSTURE message built from the facts. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "agent.h"
#include "t.h"

static char root[256];

/* Writes root + path (creating its directories) with the given content. */
static int put(const char *path, const char *content)
{
	char full[1024], *slash;
	FILE *f;

	snprintf(full, sizeof(full), "%s%s", root, path);
	for (slash = strchr(full + strlen(root) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		if (mkdir(full, 0755) < 0 && errno != EEXIST)
			return -errno;
		*slash = '/';
	}
	f = fopen(full, "w");
	if (!f)
		return -errno;
	fputs(content, f);
	return fclose(f) == 0 ? 0 : -errno;
}

static int link_to(const char *path, const char *target)
{
	char full[1024];

	snprintf(full, sizeof(full), "%s%s", root, path);
	unlink(full);
	return symlink(target, full) == 0 ? 0 : -errno;
}

static void rm_tree(void)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", root);
}

static void fresh_root(void)
{
	rm_tree();
	mkdir(root, 0755);
}

static void kernel_fact(void)
{
	struct utsname u;
	char k[MT_KERNEL_MAX + 1];

	/* The machine's: what uname -r says. */
	T_REQUIRE(uname(&u) == 0);
	T_EQ(posture_kernel(NULL, k, sizeof(k)), 0);
	T_STREQ(k, u.release);
	fresh_root();
	T_REQUIRE(put("/proc/sys/kernel/osrelease", "6.18.0-test\n") == 0);
	T_EQ(posture_kernel(root, k, sizeof(k)), 0);
	T_STREQ(k, "6.18.0-test");
}

static void os_release_parse(void)
{
	char out[MT_OS_MAX + 1];
	static const char deb[] = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 "
				  "(bookworm)\"\nID=debian\n";
	char longv[400];

	T_EQ(posture_parse_os_release(deb, strlen(deb), out, sizeof(out)), 0);
	T_STREQ(out, "Debian GNU/Linux 12 (bookworm)");
	T_EQ(posture_parse_os_release("PRETTY_NAME=Alpine\n", 19, out, sizeof(out)), 0);
	T_STREQ(out, "Alpine");
	T_EQ(posture_parse_os_release("PRETTY_NAME='Arch Linux'", 24, out, sizeof(out)), 0);
	T_STREQ(out, "Arch Linux");
	T_EQ(posture_parse_os_release("PRETTY_NAME=\"say \\\"hi\\\"\"", 25, out, sizeof(out)), 0);
	T_STREQ(out, "say \"hi\"");
	/* Not ASCII: kept readable, never refused on the wire. */
	T_EQ(posture_parse_os_release("PRETTY_NAME=\"Fedora \xc3\xa9\"", 23, out, sizeof(out)), 0);
	T_STREQ(out, "Fedora ??");
	T_EQ(posture_parse_os_release("NAME=x\nXPRETTY_NAME=y\n", 22, out, sizeof(out)), -ENOENT);
	T_EQ(posture_parse_os_release("PRETTY_NAME=\"\"", 14, out, sizeof(out)), -ENOENT);
	/* Longer than the wire allows: cut to 128. */
	memcpy(longv, "PRETTY_NAME=", 12);
	memset(longv + 12, 'x', 300);
	T_EQ(posture_parse_os_release(longv, 312, out, sizeof(out)), 0);
	T_EQ(strlen(out), MT_OS_MAX);
}

static void os_fact(void)
{
	char out[MT_OS_MAX + 1];

	fresh_root();
	T_EQ(posture_os(root, out, sizeof(out)), -ENOENT);
	T_REQUIRE(put("/usr/lib/os-release", "PRETTY_NAME=\"From usr lib\"\n") == 0);
	T_EQ(posture_os(root, out, sizeof(out)), 0);
	T_STREQ(out, "From usr lib");
	T_REQUIRE(put("/etc/os-release", "PRETTY_NAME=\"From etc\"\n") == 0);
	T_EQ(posture_os(root, out, sizeof(out)), 0);
	T_STREQ(out, "From etc");
}

#define MOUNTINFO_HDR                                                                              \
	"22 1 0:21 / /proc rw,nosuid - proc proc rw\n"                                             \
	"23 1 0:22 / /sys rw,nosuid - sysfs sysfs rw\n"

static void disk_encryption_fact(void)
{
	fresh_root();
	/* No mount on "/": unknown. */
	T_REQUIRE(put("/proc/self/mountinfo", MOUNTINFO_HDR) == 0);
	T_EQ(posture_disk_encrypted(root), -ENOENT);
	/* A plain partition. */
	T_REQUIRE(put("/proc/self/mountinfo", "21 1 8:2 / / rw - ext4 /dev/sda2 rw\n" MOUNTINFO_HDR
	                                      "30 21 8:1 / /boot rw - ext4 /dev/sda1 rw\n") == 0);
	T_REQUIRE(put("/sys/dev/block/8:2/size", "100\n") == 0);
	T_EQ(posture_disk_encrypted(root), 0);
	/* LUKS directly under "/". */
	T_REQUIRE(put("/proc/self/mountinfo", "21 1 253:0 / / rw - ext4 /dev/mapper/root rw\n") ==
	          0);
	T_REQUIRE(put("/sys/dev/block/253:0/dm/uuid", "CRYPT-LUKS2-0123abcd-root\n") == 0);
	T_EQ(posture_disk_encrypted(root), 1);
	/* LVM on LUKS: the root LV's slave is the crypt device. */
	T_REQUIRE(
	    put("/proc/self/mountinfo", "21 1 253:1 / / rw - ext4 /dev/mapper/vg-root rw\n") == 0);
	T_REQUIRE(put("/sys/dev/block/253:1/dm/uuid", "LVM-abcdef\n") == 0);
	T_REQUIRE(put("/sys/dev/block/253:1/slaves/dm-0/dm/uuid", "CRYPT-LUKS2-0123-sda3\n") == 0);
	T_EQ(posture_disk_encrypted(root), 1);
	/* LVM on a plain partition. */
	T_REQUIRE(put("/sys/dev/block/253:1/slaves/dm-0/dm/uuid", "LVM-underneath\n") == 0);
	T_REQUIRE(put("/sys/dev/block/253:1/slaves/sda3/size", "100\n") == 0);
	T_EQ(posture_disk_encrypted(root), 0);
	/* "/" mounted twice: the last mount is the one processes see. */
	T_REQUIRE(put("/proc/self/mountinfo",
	              "21 1 8:2 / / rw - ext4 /dev/sda2 rw\n" MOUNTINFO_HDR
	              "40 21 253:0 / / rw - ext4 /dev/mapper/root rw\n") == 0);
	T_EQ(posture_disk_encrypted(root), 1);
	/* Only a mount point "/" counts, not "/x" nor a root field of "/". */
	T_REQUIRE(put("/proc/self/mountinfo",
	              "21 1 8:2 / / rw - ext4 /dev/sda2 rw\n40 21 253:0 / /srv rw - ext4 x rw\n") ==
	          0);
	T_EQ(posture_disk_encrypted(root), 0);
}

static void process_fact(void)
{
	fresh_root();
	T_REQUIRE(put("/proc/1/comm", "systemd\n") == 0);
	T_REQUIRE(put("/proc/123/comm", "sshd\n") == 0);
	/* comm is cut at 15 bytes: the exe link's last component has the whole name. */
	T_REQUIRE(put("/proc/456/comm", "falcon-sensor-b\n") == 0);
	T_REQUIRE(link_to("/proc/456/exe", "/opt/falcon/falcon-sensor-bin (deleted)") == 0);
	/* Not a process directory. */
	T_REQUIRE(put("/proc/sys/comm", "nginx\n") == 0);
	T_EQ(posture_process_running(root, "sshd"), 1);
	T_EQ(posture_process_running(root, "systemd"), 1);
	T_EQ(posture_process_running(root, "falcon-sensor-bin"), 1);
	T_EQ(posture_process_running(root, "falcon-sensor-b"), 1);
	T_EQ(posture_process_running(root, "falcon"), 0);
	T_EQ(posture_process_running(root, "nginx"), 0);
	T_EQ(posture_process_running(root, "ssh"), 0);
	/* The machine's own /proc: this very test runs. */
	T_EQ(posture_process_running(NULL, "test_posture"), 1);
}

/* A decoded POSTURE_QUERY for files and processes (views into static storage). */
static int query(uint64_t version, const char *const *files, unsigned nf, const char *const *procs,
                 unsigned np, struct mt_msg *out)
{
	static uint8_t frame[MT_FRAME_MAX];
	struct mt_bytes f[MT_POSTURE_FILES_MAX], p[MT_POSTURE_PROCS_MAX];
	struct mt_msg m = {.hdr = {.type = MT_POSTURE_QUERY}};
	const char *why;
	int n;

	for (unsigned i = 0; i < nf; i++)
		f[i] = (struct mt_bytes){(const uint8_t *)files[i], (uint16_t)strlen(files[i])};
	for (unsigned i = 0; i < np; i++)
		p[i] = (struct mt_bytes){(const uint8_t *)procs[i], (uint16_t)strlen(procs[i])};
	m.u.posture_query = (struct mt_posture_query){.version = version,
	                                              .files = f,
	                                              .nfiles = (uint16_t)nf,
	                                              .procs = p,
	                                              .nprocs = (uint16_t)np};
	n = wire_encode(frame, sizeof(frame), &m);
	if (n < 0)
		return n;
	return wire_decode(frame, (size_t)n, out, &why);
}

static void sha256_of(const char *s, uint8_t out[MT_SHA256_LEN])
{
	EVP_Digest(s, strlen(s), out, NULL, EVP_sha256(), NULL);
}

/* Lets ctime age past the agent's "changed in the same tick" margin. */
static void age(void)
{
	usleep(120 * 1000);
}

static void file_facts(void)
{
	static const char *const files[] = {"/etc/marker", "/etc/missing", "/etc", "/etc/link"};
	struct posture_facts f;
	struct posture *p = NULL;
	struct mt_msg q;
	uint8_t want[MT_SHA256_LEN];

	fresh_root();
	T_REQUIRE(put("/etc/marker", "abc") == 0);
	T_REQUIRE(link_to("/etc/link", "marker") == 0);
	T_REQUIRE(posture_new(root, &p) == 0);
	T_REQUIRE(query(5, files, 4, NULL, 0, &q) == 0);
	T_REQUIRE(posture_set_query(p, &q.u.posture_query) == 0);
	age();
	posture_collect(p, &f);
	T_CHECK(f.version == 5);
	T_EQ(f.files_asked, 4);
	/* The regular file and the link to it; not the missing file nor the directory. */
	T_EQ(f.nfiles, 2);
	sha256_of("abc", want);
	T_STREQ(f.files[0].path, "/etc/marker");
	T_CHECK(memcmp(f.files[0].sha256, want, MT_SHA256_LEN) == 0);
	T_STREQ(f.files[1].path, "/etc/link");
	T_CHECK(memcmp(f.files[1].sha256, want, MT_SHA256_LEN) == 0);
	T_EQ(posture_hashes(p), 2);
	/* Unchanged: not read again. */
	posture_collect(p, &f);
	T_EQ(posture_hashes(p), 2);
	T_EQ(f.nfiles, 2);
	/* Changed: read again, new digest. */
	T_REQUIRE(put("/etc/marker", "abcd") == 0);
	age();
	posture_collect(p, &f);
	T_EQ(posture_hashes(p), 4);
	sha256_of("abcd", want);
	T_CHECK(memcmp(f.files[0].sha256, want, MT_SHA256_LEN) == 0);
	/* Removed: no longer reported. */
	{
		char full[512];

		snprintf(full, sizeof(full), "%s/etc/marker", root);
		T_REQUIRE(unlink(full) == 0);
	}
	posture_collect(p, &f);
	T_EQ(f.nfiles, 0);
	posture_free(p);
}

static void file_too_big(void)
{
	static const char *const files[] = {"/big", "/small"};
	struct posture_facts f;
	struct posture *p = NULL;
	struct mt_msg q;
	char full[512];
	int fd;

	fresh_root();
	snprintf(full, sizeof(full), "%s/big", root);
	fd = open(full, O_CREAT | O_WRONLY, 0644);
	T_REQUIRE(fd >= 0);
	/* Sparse: over the bound without writing 256 MiB. */
	T_REQUIRE(ftruncate(fd, (off_t)POSTURE_HASH_MAX + 1) == 0);
	close(fd);
	T_REQUIRE(put("/small", "x") == 0);
	T_REQUIRE(posture_new(root, &p) == 0);
	T_REQUIRE(query(1, files, 2, NULL, 0, &q) == 0);
	T_REQUIRE(posture_set_query(p, &q.u.posture_query) == 0);
	posture_collect(p, &f);
	T_EQ(f.nfiles, 1);
	T_STREQ(f.files[0].path, "/small");
	T_EQ(posture_hashes(p), 1);
	posture_free(p);
}

/* A new query keeps what is known of the files it still asks for. */
static void requery_keeps_cache(void)
{
	static const char *const q1[] = {"/a", "/b"}, *const q2[] = {"/b", "/c"};
	struct posture_facts f;
	struct posture *p = NULL;
	struct mt_msg q;

	fresh_root();
	T_REQUIRE(put("/a", "1") == 0 && put("/b", "2") == 0 && put("/c", "3") == 0);
	age();
	T_REQUIRE(posture_new(root, &p) == 0);
	T_REQUIRE(query(1, q1, 2, NULL, 0, &q) == 0);
	T_REQUIRE(posture_set_query(p, &q.u.posture_query) == 0);
	posture_collect(p, &f);
	T_EQ(posture_hashes(p), 2);
	T_REQUIRE(query(2, q2, 2, NULL, 0, &q) == 0);
	T_REQUIRE(posture_set_query(p, &q.u.posture_query) == 0);
	posture_collect(p, &f);
	T_EQ(posture_hashes(p), 3); /* only /c */
	T_CHECK(f.version == 2);
	T_EQ(f.nfiles, 2);
	T_STREQ(f.files[0].path, "/b");
	T_STREQ(f.files[1].path, "/c");
	posture_free(p);
}

/* Everything together, as the agent sends it, decoded as the broker reads it. */
static void collect_and_encode(void)
{
	static const char *const files[] = {"/etc/marker", "/etc/absent"};
	static const char *const procs[] = {"sshd", "nginx"};
	static uint8_t frame[MT_FRAME_MAX];
	struct posture_facts f, g;
	struct posture_msg pm;
	struct posture *p = NULL;
	struct mt_file_fact fact;
	struct mt_bytes t;
	struct mt_iter it;
	struct mt_msg q, d;
	const char *why;
	uint16_t type;
	char sum[512];
	unsigned nfacts = 0, nprocs = 0;
	int n;

	fresh_root();
	T_REQUIRE(put("/proc/sys/kernel/osrelease", "6.18.0-test\n") == 0);
	T_REQUIRE(put("/etc/os-release", "PRETTY_NAME=\"Test OS 1\"\n") == 0);
	T_REQUIRE(put("/proc/self/mountinfo", "21 1 253:0 / / rw - ext4 /dev/dm-0 rw\n") == 0);
	T_REQUIRE(put("/sys/dev/block/253:0/dm/uuid", "CRYPT-LUKS2-x\n") == 0);
	T_REQUIRE(put("/proc/77/comm", "sshd\n") == 0);
	T_REQUIRE(put("/etc/marker", "abc") == 0);
	T_REQUIRE(posture_new(root, &p) == 0);
	T_REQUIRE(query(9, files, 2, procs, 2, &q) == 0);
	T_REQUIRE(posture_set_query(p, &q.u.posture_query) == 0);
	posture_collect(p, &f);
	posture_facts_summary(&f, sum, sizeof(sum));
	T_STREQ(sum, "kernel=\"6.18.0-test\" os=\"Test OS 1\" disk_encrypted=1 files=1/2 "
	             "processes=1/2");
	posture_facts_msg(&f, &pm);
	n = wire_encode(frame, sizeof(frame), &pm.m);
	T_REQUIRE(n > 0);
	T_REQUIRE(wire_decode(frame, (size_t)n, &d, &why) == 0);
	T_CHECK(d.u.posture.version == 9);
	T_CHECK(d.u.posture.kernel.len == 11 && !memcmp(d.u.posture.kernel.p, "6.18.0-test", 11));
	T_CHECK(d.u.posture.os.len == 9 && !memcmp(d.u.posture.os.p, "Test OS 1", 9));
	T_EQ(d.u.posture.disk_encrypted, 1);
	wire_posture_iter(&d.u.posture.attrs, &it);
	while (wire_posture_next(&it, &type, &t, &fact)) {
		if (type == MT_A_FILE_FACT) {
			T_CHECK(fact.path.len == 11 && !memcmp(fact.path.p, "/etc/marker", 11));
			nfacts++;
		} else if (type == MT_A_PROCESS) {
			T_CHECK(t.len == 4 && !memcmp(t.p, "sshd", 4));
			nprocs++;
		}
	}
	T_EQ(nfacts, 1);
	T_EQ(nprocs, 1);
	/* Equality is what decides a re-send. */
	posture_collect(p, &g);
	T_CHECK(posture_facts_equal(&f, &g));
	T_REQUIRE(put("/proc/78/comm", "nginx\n") == 0);
	posture_collect(p, &g);
	T_CHECK(!posture_facts_equal(&f, &g));
	T_EQ(g.nprocs, 2);
	/* Unknown kernel and OS: sent without them, still valid. */
	fresh_root();
	posture_collect(p, &g);
	T_STREQ(g.kernel, "");
	T_STREQ(g.os, "");
	T_CHECK(!g.disk_encrypted);
	posture_facts_msg(&g, &pm);
	n = wire_encode(frame, sizeof(frame), &pm.m);
	T_REQUIRE(n > 0);
	T_EQ(wire_decode(frame, (size_t)n, &d, &why), 0);
	posture_free(p);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/mtun-posture-test.%d", (int)getpid());
	T_RUN(kernel_fact);
	T_RUN(os_release_parse);
	T_RUN(os_fact);
	T_RUN(disk_encryption_fact);
	T_RUN(process_fact);
	T_RUN(file_facts);
	T_RUN(file_too_big);
	T_RUN(requery_keeps_cache);
	T_RUN(collect_and_encode);
	rm_tree();
	return t_done();
}
