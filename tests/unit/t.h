/*
 * A tiny TAP producer for the unit tests: each t_run() is one test line, so
 * tools/check counts every case, and a failing case never hides behind a passing one.
 */
#ifndef MTUN_T_H
#define MTUN_T_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_count, t_failures, t_cur_failed;
static char t_skip_reason[256];

static inline void t_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void t_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	printf("# %s:%d: ", file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	t_cur_failed = 1;
}

/* Non-fatal check: records the failure and goes on. */
#define T_CHECK(cond)                                                                              \
	do {                                                                                       \
		if (!(cond))                                                                       \
			t_fail(__FILE__, __LINE__, "check failed: %s", #cond);                     \
	} while (0)
/* Fatal check: records the failure and returns from the test function. */
#define T_REQUIRE(cond)                                                                            \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			t_fail(__FILE__, __LINE__, "required: %s", #cond);                         \
			return;                                                                    \
		}                                                                                  \
	} while (0)
#define T_EQ(a, b)                                                                                 \
	do {                                                                                       \
		long long t_a_ = (long long)(a), t_b_ = (long long)(b);                            \
		if (t_a_ != t_b_)                                                                  \
			t_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, t_a_, t_b_);  \
	} while (0)
#define T_STREQ(a, b)                                                                              \
	do {                                                                                       \
		const char *t_a_ = (a), *t_b_ = (b);                                               \
		if (!t_a_ || !t_b_ || strcmp(t_a_, t_b_) != 0)                                     \
			t_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,           \
			       t_a_ ? t_a_ : "(null)", t_b_ ? t_b_ : "(null)");                    \
	} while (0)

/* Marks the running test as skipped with a reason; the test should return next. */
static inline void t_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void t_skip(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t_skip_reason, sizeof(t_skip_reason), fmt, ap);
	va_end(ap);
}

static inline void t_run(const char *name, void (*fn)(void))
{
	t_cur_failed = 0;
	t_skip_reason[0] = '\0';
	fflush(stdout);
	fn();
	t_count++;
	if (t_cur_failed) {
		t_failures++;
		printf("not ok %d - %s\n", t_count, name);
	} else if (t_skip_reason[0]) {
		printf("ok %d - %s # SKIP %s\n", t_count, name, t_skip_reason);
	} else {
		printf("ok %d - %s\n", t_count, name);
	}
	fflush(stdout);
}

#define T_RUN(fn) t_run(#fn, fn)

static inline int t_done(void)
{
	printf("1..%d\n", t_count);
	return t_failures ? 1 : 0;
}

#endif
