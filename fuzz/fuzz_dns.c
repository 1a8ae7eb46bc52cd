/*
 * libFuzzer target for the agent's DNS stub: the input is a script of queries, upstream
 * replies, broker answers and timer ticks fed into one long-lived stub.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

static struct segset *set;
static struct pool *pool;
static struct dns_stub *stub;
static uint64_t now, tokens[16];
static struct sockaddr_in upstream;
static uint8_t out[DNS_MSG_MAX];
static uint8_t last_fwd[DNS_MSG_MAX];
static size_t last_fwd_len;

static void fuzz_init(void)
{
	static const uint32_t cg[] = {1}, sg[] = {1};
	const char *hosts[] = {"server01.corp.example", "*.apps.example"};
	struct seg_ports ports = {SEG_PROTO_TCP, 22, 443};
	struct segment_spec s = {.id = 1,
	                         .name = "fuzz",
	                         .tenant = "acme",
	                         .hosts = hosts,
	                         .nhosts = 2,
	                         .ports = &ports,
	                         .nports = 1,
	                         .server_groups = sg,
	                         .nserver_groups = 1};
	struct dns_stub_config cfg;
	struct pool_config pcfg;
	char err[SEG_ERR_MAX];
	const char *why;

	set = segset_new("acme");
	if (!set || segset_add_server_group(set, 1, cg, 1) < 0 ||
	    segset_add(set, &s, err, sizeof(err)) < 0)
		abort();
	pool_config_default(&pcfg);
	pcfg.prefix = 24; /* small, so exhaustion and expiry are reached */
	pcfg.v6 = true;
	if (pool_new(&pcfg, &pool, &why) < 0)
		abort();
	upstream.sin_family = AF_INET;
	upstream.sin_port = htons(53);
	upstream.sin_addr.s_addr = htonl(0x7f000035);
	dns_stub_config_default(&cfg);
	cfg.segs = set;
	cfg.pool = pool;
	cfg.search[0] = "corp.example";
	cfg.nsearch = 1;
	cfg.max_pending = 64;
	memcpy(&cfg.upstream, &upstream, sizeof(upstream));
	cfg.upstream_len = sizeof(upstream);
	if (dns_stub_new(&cfg, &stub) < 0)
		abort();
}

/* Checks what every answer must satisfy: within the buffer, a header at least. */
static void fuzz_check(const struct dns_result *res)
{
	if (res->action == DNS_ANSWER || res->action == DNS_FORWARD) {
		if (res->len < 12 || res->len > sizeof(out))
			abort();
		if (res->action == DNS_ANSWER && !(out[2] & 0x80))
			abort();
	}
}

/* A reply built on the last forwarded query, so that the match path is reached. */
static void fuzz_reply_to_last(const uint8_t *d, size_t len)
{
	static uint8_t buf[DNS_MSG_MAX];
	struct dns_result res;
	size_t m = last_fwd_len;

	if (!m)
		return;
	memcpy(buf, last_fwd, m);
	buf[2] |= 0x80;
	if (len > sizeof(buf) - m)
		len = sizeof(buf) - m;
	memcpy(buf + m, d, len);
	if (dns_stub_upstream_reply(stub, buf, m + len, (struct sockaddr *)&upstream,
	                            sizeof(upstream), out, sizeof(out), &res) < 0)
		return;
	fuzz_check(&res);
	/* Back to the client untouched but for the id. */
	if (res.action == DNS_ANSWER &&
	    (res.len != m + len || memcmp(out + 2, buf + 2, m + len - 2) != 0))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct sockaddr_in client = {.sin_family = AF_INET, .sin_port = htons(5353)};
	struct dns_result res;

	if (!stub)
		fuzz_init();
	/* Records: op (1 byte), length (2 bytes), payload. */
	while (n >= 3) {
		uint8_t op = d[0];
		size_t len = (size_t)d[1] << 8 | d[2];

		d += 3;
		n -= 3;
		if (len > n)
			len = n;
		client.sin_addr.s_addr = htonl(0x7f000001 + (op >> 6));
		switch (op & 7) {
		case 0:
		case 1:
			if (dns_stub_query(stub, d, len, (struct sockaddr *)&client, sizeof(client),
			                   op & 8 ? DNS_QUERY_TCP : 0, now, out, sizeof(out),
			                   &res) == 0) {
				fuzz_check(&res);
				if (res.action == DNS_RESOLVE)
					tokens[res.token % 16] = res.token;
				/* Forwarded untouched but for the id. */
				if (res.action == DNS_FORWARD &&
				    (res.len != len || memcmp(out + 2, d + 2, len - 2) != 0))
					abort();
				if (res.action == DNS_FORWARD) {
					memcpy(last_fwd, out, res.len);
					last_fwd_len = res.len;
				}
			}
			break;
		case 2:
			if (dns_stub_upstream_reply(stub, d, len, (struct sockaddr *)&upstream,
			                            sizeof(upstream), out, sizeof(out), &res) == 0)
				fuzz_check(&res);
			break;
		case 3:
			fuzz_reply_to_last(d, len);
			break;
		case 4:
			if (len >= 1 &&
			    dns_stub_resolved(stub, tokens[d[0] % 16],
			                      (enum dns_resolve_status)(d[0] >> 4) % 3,
			                      len > 1 ? d[1] : 0, now, out, sizeof(out), &res) == 0)
				fuzz_check(&res);
			break;
		case 5:
			now += len ? (uint64_t)d[0] * 100 : 1000;
			while (dns_stub_timer(stub, now, out, sizeof(out), &res) == 0 &&
			       res.action != DNS_DROP)
				fuzz_check(&res);
			pool_expire(pool, now);
			break;
		default:
			if (len >= 4) {
				struct in_addr a;

				memcpy(&a, d, 4);
				if (op & 8)
					pool_hold(pool, a);
				else
					pool_release(pool, a, now);
			}
			break;
		}
		d += len;
		n -= len;
	}
	return 0;
}
