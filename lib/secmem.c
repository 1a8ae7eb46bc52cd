/*
 * Guarded memory: OpenSSL's secure heap for keys and a locked, undumpable, zero-on-release
 * region of plaintext buffers between two guard pages, on memfd_secret(2) where available.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include <openssl/crypto.h>

#include "log.h"
#include "secmem.h"

#ifndef __NR_memfd_secret
#define __NR_memfd_secret 447
#endif

static struct {
	pthread_mutex_t lock;
	uint8_t *map; /* guard page, region, guard page */
	size_t map_len;
	uint8_t *region;
	size_t region_len;
	size_t buf_size, nbufs, in_use;
	uint64_t *used; /* bitmap, in the ordinary heap: it holds no secret */
	int fd;
	enum secmem_backing backing;
} sm = {.lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1};
static bool test_no_secret;

void secmem_test_no_memfd_secret(bool on)
{
	test_no_secret = on;
}

static int region_secret(size_t len)
{
	int fd, err;
	void *p;

	fd = (int)syscall(__NR_memfd_secret, 0);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)len) < 0) {
		err = -errno;
		goto fail;
	}
	p = mmap(sm.region, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	if (p == MAP_FAILED) {
		err = -errno;
		goto fail;
	}
	sm.fd = fd;
	return 0;
fail:
	close(fd);
	return err;
}

static int region_anon(size_t len)
{
	void *p = mmap(sm.region, len, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	if (mlock(sm.region, len) < 0)
		return -errno;
	return 0;
}

int secmem_init(size_t heap_size, size_t buf_size, size_t nbufs)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	int err;

	if (sm.map)
		return -EALREADY;
	if (buf_size == 0 || nbufs == 0 || buf_size > (1U << 24) || nbufs > (1U << 20))
		return -EINVAL;
	if (heap_size && (heap_size & (heap_size - 1)))
		return -EINVAL;
	if (heap_size && !CRYPTO_secure_malloc_initialized()) {
		/* 1: the secure heap mlocks and MADV_DONTDUMPs itself; minsize 32 */
		if (CRYPTO_secure_malloc_init(heap_size, 32) == 0) {
			log_warnx("secmem: CRYPTO_secure_malloc_init(%zu) failed", heap_size);
			return -ENOMEM;
		}
	}
	buf_size = (buf_size + 63) & ~(size_t)63;
	sm.buf_size = buf_size;
	sm.nbufs = nbufs;
	sm.region_len = (buf_size * nbufs + page - 1) & ~(page - 1);
	sm.map_len = sm.region_len + 2 * page;
	sm.used = calloc((nbufs + 63) / 64, sizeof(*sm.used));
	if (!sm.used)
		return -ENOMEM;
	/* Reserve the whole span inaccessible, then map the region over its middle. */
	sm.map =
	    mmap(NULL, sm.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (sm.map == MAP_FAILED) {
		sm.map = NULL;
		err = -errno;
		goto fail;
	}
	sm.region = sm.map + page;
	err = test_no_secret ? -ENOSYS : region_secret(sm.region_len);
	if (err == 0) {
		sm.backing = SECMEM_MEMFD_SECRET; /* the kernel locks secretmem pages itself */
	} else {
		log_event(LOG_LVL_WARN, "secmem.fallback", "backing=mlock memfd_secret_err=\"%s\"",
		          strerror(-err));
		err = region_anon(sm.region_len);
		if (err < 0) {
			log_warnx("secmem: mlock of %zu bytes: %s (raise RLIMIT_MEMLOCK)",
			          sm.region_len, strerror(-err));
			goto fail;
		}
		sm.backing = SECMEM_MLOCK;
	}
	if (madvise(sm.map, sm.map_len, MADV_DONTDUMP) < 0) {
		err = -errno;
		goto fail;
	}
	log_event(LOG_LVL_INFO, "secmem.init", "backing=%s bufs=%zu buf_size=%zu secure_heap=%zu",
	          secmem_backing_name(sm.backing), nbufs, buf_size, heap_size);
	return 0;
fail:
	secmem_fini();
	return err;
}

void secmem_fini(void)
{
	if (sm.map) {
		if (sm.backing != SECMEM_NONE)
			OPENSSL_cleanse(sm.region, sm.region_len);
		munmap(sm.map, sm.map_len);
	}
	if (sm.fd >= 0)
		close(sm.fd);
	free(sm.used);
	sm.map = sm.region = NULL;
	sm.used = NULL;
	sm.fd = -1;
	sm.map_len = sm.region_len = sm.buf_size = sm.nbufs = sm.in_use = 0;
	sm.backing = SECMEM_NONE;
	if (CRYPTO_secure_malloc_initialized())
		CRYPTO_secure_malloc_done(); /* refuses while keys are still allocated */
}

enum secmem_backing secmem_backing(void)
{
	return sm.backing;
}

const char *secmem_backing_name(enum secmem_backing b)
{
	switch (b) {
	case SECMEM_MEMFD_SECRET:
		return "memfd_secret";
	case SECMEM_MLOCK:
		return "mlock";
	default:
		return "none";
	}
}

void *secmem_buf_get(void)
{
	void *p = NULL;
	size_t i;

	pthread_mutex_lock(&sm.lock);
	for (i = 0; i < (sm.nbufs + 63) / 64; i++) {
		uint64_t free_bits = ~sm.used[i];
		size_t idx;

		if (!free_bits)
			continue;
		idx = i * 64 + (size_t)__builtin_ctzll(free_bits);
		if (idx >= sm.nbufs)
			break;
		sm.used[i] |= 1ULL << (idx % 64);
		sm.in_use++;
		p = sm.region + idx * sm.buf_size;
		break;
	}
	pthread_mutex_unlock(&sm.lock);
	if (!p)
		errno = ENOBUFS;
	return p; /* zeroed: fresh pages, or cleansed by secmem_buf_put */
}

void secmem_buf_put(void *p)
{
	size_t off, idx;

	if (!p)
		return;
	if (!secmem_owns(p))
		fatalx("secmem: free of %p, not a region buffer", p);
	off = (size_t)((uint8_t *)p - sm.region);
	if (off % sm.buf_size)
		fatalx("secmem: free of %p, not a region buffer", p);
	idx = off / sm.buf_size;
	OPENSSL_cleanse(p, sm.buf_size);
	pthread_mutex_lock(&sm.lock);
	if (!(sm.used[idx / 64] & (1ULL << (idx % 64)))) {
		pthread_mutex_unlock(&sm.lock);
		fatalx("secmem: double free of %p", p);
	}
	sm.used[idx / 64] &= ~(1ULL << (idx % 64));
	sm.in_use--;
	pthread_mutex_unlock(&sm.lock);
}

size_t secmem_buf_size(void)
{
	return sm.buf_size;
}

size_t secmem_buf_in_use(void)
{
	size_t n;

	pthread_mutex_lock(&sm.lock);
	n = sm.in_use;
	pthread_mutex_unlock(&sm.lock);
	return n;
}

bool secmem_owns(const void *p)
{
	const uint8_t *b = p;

	return sm.region && b >= sm.region && b < sm.region + sm.buf_size * sm.nbufs;
}

void *secmem_key_alloc(size_t n)
{
	return OPENSSL_secure_zalloc(n);
}

void secmem_key_free(void *p, size_t n)
{
	OPENSSL_secure_clear_free(p, n);
}

bool secmem_key_is_secure(const void *p)
{
	return p && CRYPTO_secure_allocated(p);
}

int secmem_harden_process(void)
{
	struct rlimit rl = {0, 0};

	int err;

	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
		err = -errno;
		log_warn("secmem: PR_SET_DUMPABLE");
		return err;
	}
	if (setrlimit(RLIMIT_CORE, &rl) < 0) {
		err = -errno;
		log_warn("secmem: RLIMIT_CORE 0");
		return err;
	}
	return 0;
}
