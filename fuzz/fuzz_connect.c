/*
 * libFuzzer target for the inspection proxy's CONNECT parser: any input either completes,
 * waits, or is refused with a status, and a completed request is self-consistent.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	const char *buf = (const char *)d;
	struct proxy_connect req, again;
	enum proxy_verdict v = proxy_parse_connect(buf, n, &req);
	size_t hl;

	switch (v) {
	case PROXY_NEED_MORE:
		if (n > PROXY_HEAD_MAX)
			abort(); /* the bound must refuse, never wait forever */
		break;
	case PROXY_REFUSE:
		if (req.status != 400 && req.status != 405 && req.status != 414 &&
		    req.status != 431)
			abort();
		if (!req.reason)
			abort();
		break;
	case PROXY_COMPLETE:
		if (req.status != 200 || req.head_len > n || req.head_len > PROXY_HEAD_MAX ||
		    req.port == 0)
			abort();
		hl = strnlen(req.host, sizeof(req.host));
		if (hl == 0 || hl > PROXY_HOST_MAX)
			abort();
		if (req.proxy_auth &&
		    (req.proxy_auth < buf || req.proxy_auth + req.proxy_auth_len > buf + n))
			abort();
		/* the head alone completes the same way; one byte less waits */
		if (proxy_parse_connect(buf, req.head_len, &again) != PROXY_COMPLETE ||
		    again.head_len != req.head_len || strcmp(again.host, req.host) != 0 ||
		    again.port != req.port)
			abort();
		if (proxy_parse_connect(buf, req.head_len - 1, &again) != PROXY_NEED_MORE)
			abort();
		break;
	default:
		abort();
	}
	return 0;
}
