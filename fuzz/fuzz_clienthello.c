/*
 * libFuzzer target for the inspection proxy's ClientHello parser: every length is checked
 * against its container, and a completed hello is self-consistent.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct tls_hello h, again;
	enum tls_hello_verdict v = tls_parse_client_hello(d, n, &h);
	size_t i, count = 0;

	switch (v) {
	case TLS_HELLO_NEED_MORE:
		if (n > TLS_HELLO_BUF_MAX)
			abort();
		break;
	case TLS_HELLO_BAD:
		if (!h.reason)
			abort();
		break;
	case TLS_HELLO_COMPLETE:
		if (h.record_len == 0 || h.record_len > n || h.alpn_len > sizeof(h.alpn) ||
		    strnlen(h.sni, sizeof(h.sni)) > PROXY_HOST_MAX)
			abort();
		for (i = 0; i < h.alpn_len; i += 1 + h.alpn[i], count++)
			if (h.alpn[i] == 0 || i + 1 + h.alpn[i] > h.alpn_len)
				abort();
		if (count != h.alpn_count)
			abort();
		(void)tls_hello_offers_alpn(&h, "h2");
		/* the records that carry the hello parse alone to the same result */
		if (tls_parse_client_hello(d, h.record_len, &again) != TLS_HELLO_COMPLETE ||
		    strcmp(again.sni, h.sni) != 0 || again.alpn_len != h.alpn_len)
			abort();
		break;
	default:
		abort();
	}
	return 0;
}
