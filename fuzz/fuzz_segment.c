/* libFuzzer target: app-segment host entries and looked-up names (lib/segment.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char canon[SEG_HOST_STR_MAX + 1], again[SEG_HOST_STR_MAX + 1], name[SEG_NAME_MAX + 1];
	enum seg_host_kind kind, kind2;
	const char *why = NULL;
	char *s;

	if (size > 4096)
		return 0;
	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	if (segment_parse_host(s, canon, &kind, &why) == 0) {
		/* The canonical form is a fixed point. */
		if (segment_parse_host(canon, again, &kind2, NULL) != 0 || kind != kind2 ||
		    strcmp(canon, again) != 0)
			abort();
	} else if (why == NULL) {
		abort();
	}
	why = NULL;
	if (segment_normalize_name(s, name, &why) == 0) {
		if (strlen(name) > SEG_NAME_MAX)
			abort();
	} else if (why == NULL) {
		abort();
	}
	free(s);
	return 0;
}
