/* libFuzzer target: the identity URI in certificates (lib/ident.c), both ways. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/ident.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ident id, again;
	char uri[IDENT_URI_MAX];
	const char *why = NULL;

	/* An exact-size copy, so ASan sees any read past the URI's length. */
	char *copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	if (ident_parse(copy, size, &id, &why) == 0) {
		/* Whatever parses must format back to the same identity. */
		if (ident_format(&id, uri, sizeof(uri)) != 0 ||
		    ident_parse(uri, strlen(uri), &again, NULL) != 0 ||
		    memcmp(&id, &again, sizeof(id)) != 0)
			abort();
	} else if (why == NULL) {
		abort(); /* every refusal carries a reason */
	}
	free(copy);
	return 0;
}
