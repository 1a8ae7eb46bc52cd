/*
 * Guarded memory for secrets and intercepted plaintext: OpenSSL's secure heap for keys, and
 * a region of fixed-size buffers that is locked, excluded from core dumps, zeroed on
 * release, fenced by guard pages, and backed by memfd_secret(2) where the kernel has it.
 */
#ifndef MTUN_SECMEM_H
#define MTUN_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

enum secmem_backing {
	SECMEM_NONE = 0,
	SECMEM_MEMFD_SECRET, /* pages removed from the kernel's direct map */
	SECMEM_MLOCK,        /* anonymous, mlock'ed, MADV_DONTDUMP: the fallback */
};

/*
 * Once per process, before any key is made: a secure heap of heap_size bytes (a power of
 * two; 0 leaves the heap alone) and a region of nbufs buffers of buf_size bytes each
 * (rounded up to 64). 0, -EALREADY, -EINVAL, -ENOMEM, or -errno from mmap/mlock.
 */
int secmem_init(size_t heap_size, size_t buf_size, size_t nbufs);
/* Zeroes and unmaps the region; the secure heap stays if OpenSSL still holds keys in it. */
void secmem_fini(void);
enum secmem_backing secmem_backing(void);
const char *secmem_backing_name(enum secmem_backing b);

/* A zeroed buffer of secmem_buf_size() bytes, or NULL when all are in use (errno ENOBUFS). */
void *secmem_buf_get(void);
/* Zeroes the buffer and returns it to the region; NULL is ignored. Thread-safe. */
void secmem_buf_put(void *p);
size_t secmem_buf_size(void);
size_t secmem_buf_in_use(void);
/* Whether p points inside the region (for the tests and assertions). */
bool secmem_owns(const void *p);

/* Small secrets in the secure heap (or, if not initialised, the ordinary one), zeroed. */
void *secmem_key_alloc(size_t n);
void secmem_key_free(void *p, size_t n);
/* Whether p is in OpenSSL's secure heap. */
bool secmem_key_is_secure(const void *p);

/* Tests only: make the next secmem_init take the fallback as if memfd_secret were absent. */
void secmem_test_no_memfd_secret(bool on);

/* PR_SET_DUMPABLE 0 (also closes /proc/PID/mem to other users) and RLIMIT_CORE 0. */
int secmem_harden_process(void);

#endif
