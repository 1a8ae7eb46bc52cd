/* libFuzzer target: the enrollment request parser and the CSR checks behind it. */
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "ca/ca.h"
#include "enroll.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct enroll_msg m;
	struct ident id;
	X509_REQ *req = NULL;
	const char *why;
	char s[1100];
	uint64_t v;

	log_set_level(LOG_LVL_ERR);
	if (enroll_msg_parse(d, n, ENROLL_REQ_MAX, &m) != 0)
		return 0;
	for (int t = 1; t < ET_MAX; t++) {
		enroll_msg_str(&m, (enum enroll_tag)t, s, sizeof(s));
		enroll_msg_u64(&m, (enum enroll_tag)t, &v);
	}
	if (enroll_msg_has(&m, ET_TOKEN) && enroll_msg_str(&m, ET_TOKEN, s, sizeof(s)) == 0) {
		char tenant[IDENT_TENANT_MAX + 1];
		uint8_t hash[TOKEN_HASH_LEN];

		token_parse(s, tenant, hash);
	}
	if (enroll_msg_has(&m, ET_CSR) &&
	    pki_csr_parse(m.v[ET_CSR].p, m.v[ET_CSR].len, &req, &id, &why) == 0)
		X509_REQ_free(req);
	return 0;
}
