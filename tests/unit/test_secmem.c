/* Tests for lib/secmem.c: zero on release, region flags in smaps, memfd_secret, hardening. */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "log.h"
#include "secmem.h"
#include "t.h"

#define NBUFS    8
#define BUF_SIZE 16384

static bool all_zero(const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* The VmFlags line of the smaps entry that contains p, into flags. */
static int smaps_flags(const void *p, char *flags, size_t size)
{
	unsigned long a = (unsigned long)p, lo, hi;
	char line[512];
	bool inside = false;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 &&
		    strchr(line, '-') < strchr(line, ' '))
			inside = a >= lo && a < hi;
		else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(flags, size, "%s", line + 8);
			fclose(f);
			return 0;
		}
	}
	fclose(f);
	return -ENOENT;
}

static bool has_flag(const char *flags, const char *flag)
{
	char want[8];

	snprintf(want, sizeof(want), " %s", flag);
	for (const char *s = flags; (s = strstr(s, want)); s++)
		if (s[strlen(want)] == ' ' || s[strlen(want)] == '\n' || !s[strlen(want)])
			return true;
	return false;
}

static void init_reports_backing(void)
{
	T_REQUIRE(secmem_init(1 << 16, BUF_SIZE, NBUFS) == 0);
	T_CHECK(secmem_backing() != SECMEM_NONE);
	T_EQ(secmem_buf_size(), BUF_SIZE);
	T_EQ(secmem_init(1 << 16, BUF_SIZE, NBUFS), -EALREADY);
	printf("# backing=%s\n", secmem_backing_name(secmem_backing()));
}

static void memfd_secret_used_when_offered(void)
{
	long fd = syscall(447, 0);

	if (fd < 0) {
		T_EQ(secmem_backing(), SECMEM_MLOCK);
		t_skip("kernel has no memfd_secret (%s): fallback mlock checked", strerror(errno));
		return;
	}
	close((int)fd);
	T_EQ(secmem_backing(), SECMEM_MEMFD_SECRET);
}

static void buf_zeroed_on_put(void)
{
	uint8_t *p = secmem_buf_get(), *q;

	T_REQUIRE(p);
	T_CHECK(secmem_owns(p));
	T_CHECK(all_zero(p, BUF_SIZE));
	memset(p, 0xA5, BUF_SIZE);
	T_EQ(secmem_buf_in_use(), 1);
	secmem_buf_put(p);
	T_EQ(secmem_buf_in_use(), 0);
	/* the region stays mapped: read the released bytes through the retained pointer */
	T_CHECK(all_zero(p, BUF_SIZE));
	q = secmem_buf_get();
	T_CHECK(q == p);
	secmem_buf_put(q);
	secmem_buf_put(NULL);
}

static void region_exhausts_and_recovers(void)
{
	void *bufs[NBUFS];
	size_t i;

	for (i = 0; i < NBUFS; i++) {
		bufs[i] = secmem_buf_get();
		T_REQUIRE(bufs[i]);
		if (i)
			T_CHECK(bufs[i] != bufs[i - 1]);
	}
	errno = 0;
	T_CHECK(secmem_buf_get() == NULL);
	T_EQ(errno, ENOBUFS);
	secmem_buf_put(bufs[3]);
	T_CHECK(secmem_buf_get() == bufs[3]);
	for (i = 0; i < NBUFS; i++)
		secmem_buf_put(bufs[i]);
	T_EQ(secmem_buf_in_use(), 0);
	T_CHECK(!secmem_owns(&i));
}

static void region_locked_and_undumpable(void)
{
	char flags[512];
	uint8_t *p = secmem_buf_get();

	T_REQUIRE(p);
	p[0] = 1; /* fault a page in */
	T_REQUIRE(smaps_flags(p, flags, sizeof(flags)) == 0);
	printf("# VmFlags:%s", flags);
	T_CHECK(has_flag(flags, "dd"));
	T_CHECK(has_flag(flags, "lo"));
	/* the guard pages around the region are not accessible */
	T_REQUIRE(smaps_flags(p - 1, flags, sizeof(flags)) == 0);
	T_CHECK(!has_flag(flags, "rd") && !has_flag(flags, "wr"));
	secmem_buf_put(p);
}

static void key_alloc_in_secure_heap_and_zeroed(void)
{
	uint8_t *k = secmem_key_alloc(256);

	T_REQUIRE(k);
	T_CHECK(secmem_key_is_secure(k));
	T_CHECK(all_zero(k, 256));
	memset(k, 0x5A, 256);
	secmem_key_free(k, 256);
	/* the secure heap keeps its free-list links in the first 16 bytes of a free block */
	T_CHECK(all_zero(k + 16, 256 - 16));
	T_CHECK(!secmem_key_is_secure(&k));
}

static void harden_sets_dumpable_and_core(void)
{
	struct rlimit rl;

	T_REQUIRE(secmem_harden_process() == 0);
	T_EQ(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
	T_REQUIRE(getrlimit(RLIMIT_CORE, &rl) == 0);
	T_EQ(rl.rlim_cur, 0);
	T_EQ(rl.rlim_max, 0);
}

static void fini_then_init_again(void)
{
	secmem_fini();
	T_EQ(secmem_backing(), SECMEM_NONE);
	T_CHECK(secmem_buf_get() == NULL);
	T_EQ(secmem_init(0, 100, 3), 0);
	T_EQ(secmem_buf_size(), 128); /* rounded up to 64 */
	T_EQ(secmem_init(0, 0, 1), -EALREADY);
	secmem_fini();
	T_EQ(secmem_init(0, 0, 1), -EINVAL);
	T_EQ(secmem_init(3000, 64, 1), -EINVAL);
}

/* ASan intercepts mlock and ignores it. */
static bool under_asan(void)
{
#if defined(__SANITIZE_ADDRESS__)
	return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
	return true;
#endif
#endif
	return false;
}

static void fallback_is_locked_undumpable_and_zeroing(void)
{
	char flags[512];
	uint8_t *p;

	secmem_fini();
	secmem_test_no_memfd_secret(true);
	T_REQUIRE(secmem_init(0, 4096, 4) == 0);
	secmem_test_no_memfd_secret(false);
	T_EQ(secmem_backing(), SECMEM_MLOCK);
	p = secmem_buf_get();
	T_REQUIRE(p);
	memset(p, 0xC3, 4096);
	T_REQUIRE(smaps_flags(p, flags, sizeof(flags)) == 0);
	printf("# fallback VmFlags:%s", flags);
	T_CHECK(has_flag(flags, "dd"));
	if (!under_asan())
		T_CHECK(has_flag(flags, "lo"));
	else
		printf("# ASan turns mlock into a no-op: 'lo' not checked\n");
	T_CHECK(!has_flag(flags, "sh"));
	secmem_buf_put(p);
	T_CHECK(all_zero(p, 4096));
	secmem_fini();
}

int main(void)
{
	log_init("test_secmem", LOG_LVL_WARN);
	T_RUN(init_reports_backing);
	T_RUN(memfd_secret_used_when_offered);
	T_RUN(buf_zeroed_on_put);
	T_RUN(region_exhausts_and_recovers);
	T_RUN(region_locked_and_undumpable);
	T_RUN(key_alloc_in_secure_heap_and_zeroed);
	T_RUN(harden_sets_dumpable_and_core);
	T_RUN(fini_then_init_again);
	T_RUN(fallback_is_locked_undumpable_and_zeroing);
	return t_done();
}
