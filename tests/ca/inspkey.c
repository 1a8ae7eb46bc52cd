/*
 * Test tool: an inspection node asking mtun-ca for a tenant's inspection key over mTLS
 * (with an enrolled inspector identity), then opening the envelope with the nodes'
 * wrapping key (fd or $MTUN_WRAP_KEY). Prints the outcome; for the backup scan, optionally
 * saves the envelope and prints the private scalar it held (tests only).
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "ca/ca.h"
#include "enroll.h"
#include "envelope.h"
#include "log.h"

static int ik_read_conf(const char *dir, char *addr, size_t asz, char *pin, size_t psz)
{
	char path[4096], line[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, ENROLL_CA_FILE);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "ca=", 3) == 0 && strlen(line + 3) < asz)
			memcpy(addr, line + 3, strlen(line + 3) + 1);
		else if (strncmp(line, "pin=", 4) == 0 && strlen(line + 4) < psz)
			memcpy(pin, line + 4, strlen(line + 4) + 1);
	}
	fclose(f);
	return addr[0] && pin[0] ? 0 : -EINVAL;
}

static int ik_connect(const char *hostport)
{
	char host[256], *port;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
	int fd;

	snprintf(host, sizeof(host), "%s", hostport);
	port = strrchr(host, ':');
	if (!port)
		return -EINVAL;
	*port++ = '\0';
	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -EHOSTUNREACH;
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
		close(fd);
		fd = -errno;
	}
	freeaddrinfo(res);
	return fd;
}

/* Signs a throwaway leaf with the unwrapped key and verifies it up to the root sent last. */
static int ik_leaf_verifies(EVP_PKEY *ikey, STACK_OF(X509) *certs)
{
	X509 *inter = sk_X509_value(certs, 0), *root = sk_X509_value(certs, sk_X509_num(certs) - 1);
	EVP_PKEY *lk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *leaf = X509_new();
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *xc = X509_STORE_CTX_new();
	STACK_OF(X509) *mid = sk_X509_new_null();
	int ok = 0;

	if (!lk || !leaf || !st || !xc || !mid || sk_X509_num(certs) < 2)
		goto out;
	X509_set_version(leaf, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(leaf), 1);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(leaf), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"inspected.example", -1, -1, 0);
	X509_set_issuer_name(leaf, X509_get_subject_name(inter));
	X509_gmtime_adj(X509_getm_notBefore(leaf), -60);
	X509_gmtime_adj(X509_getm_notAfter(leaf), 3600);
	X509_set_pubkey(leaf, lk);
	if (!X509_sign(leaf, ikey, EVP_sha256()) || !X509_STORE_add_cert(st, root))
		goto out;
	for (int i = 0; i < sk_X509_num(certs) - 1; i++)
		sk_X509_push(mid, sk_X509_value(certs, i));
	if (X509_STORE_CTX_init(xc, st, leaf, mid) == 1 && X509_verify_cert(xc) == 1)
		ok = 1;
out:
	sk_X509_free(mid);
	X509_STORE_CTX_free(xc);
	X509_STORE_free(st);
	X509_free(leaf);
	EVP_PKEY_free(lk);
	return ok;
}

static void ik_hex(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"state", required_argument, NULL, 's'},
	    {"identity-source", required_argument, NULL, 'i'},
	    {"tenant", required_argument, NULL, 't'},
	    {"wrap-key-fd", required_argument, NULL, 'w'},
	    {"save-envelope", required_argument, NULL, 'e'},
	    {"print-secret", no_argument, NULL, 'p'},
	    {NULL, 0, NULL, 0},
	};
	const char *dir = NULL, *src = NULL, *tenant = NULL, *save = NULL;
	char addr[300] = "", pin[100] = "", got[8 + 64 + 1], msg[513] = "", key_id[65] = "";
	struct enroll_identity id = {0};
	struct enroll_buf b = {0};
	struct enroll_msg m;
	struct envelope_ad ad = {NULL, key_id, CUSTODY_PURPOSE};
	EVP_PKEY *wrap = NULL, *ikey = NULL;
	STACK_OF(X509) *certs = NULL;
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	uint8_t *resp = NULL, *pt = NULL, md[32];
	size_t pt_len = 0;
	unsigned int mdlen;
	int fd = -1, wfd = -1, opt, ret = 1;
	bool secret = false;

	log_init("inspkey", LOG_LVL_WARN);
	CRYPTO_secure_malloc_init(1 << 16, 16);
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			dir = optarg;
			break;
		case 'i':
			src = optarg;
			break;
		case 't':
			tenant = optarg;
			break;
		case 'w':
			wfd = atoi(optarg);
			break;
		case 'e':
			save = optarg;
			break;
		case 'p':
			secret = true;
			break;
		default:
			return 2;
		}
	}
	if (!dir || !tenant) {
		fprintf(stderr, "usage: %s --state DIR --tenant T [--wrap-key-fd N]\n", argv[0]);
		return 2;
	}
	ad.tenant = tenant;
	if (envelope_priv_read(wfd, &wrap) || enroll_load(dir, src, &id) ||
	    ik_read_conf(dir, addr, sizeof(addr), pin, sizeof(pin)))
		goto out;
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		goto out;
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate(ctx, id.cert) != 1 || SSL_CTX_use_PrivateKey(ctx, id.key) != 1)
		goto out;
	for (int i = 0; i < sk_X509_num(id.chain); i++)
		SSL_CTX_add1_chain_cert(ctx, sk_X509_value(id.chain, i));
	fd = ik_connect(addr);
	if (fd < 0 || !(ssl = SSL_new(ctx)) || !SSL_set_fd(ssl, fd) || SSL_connect(ssl) != 1) {
		fprintf(stderr, "cannot reach the CA at %s\n", addr);
		goto out;
	}
	/* the CA is pinned: nothing is sent before its certificate matches */
	if (enroll_pin_of(SSL_get0_peer_certificate(ssl), got) || strcmp(got, pin) != 0) {
		fprintf(stderr, "the CA's certificate does not match the pin\n");
		goto out;
	}
	if (enroll_buf_init(&b, (enum enroll_type)CUSTODY_T_KEY_GET) ||
	    enroll_buf_put_str(&b, ET_TENANT, tenant) || enroll_ssl_send(ssl, &b) ||
	    enroll_ssl_recv(ssl, ENROLL_MSG_MAX, &resp, NULL, &m) || m.type != ENROLL_T_RESPONSE ||
	    !enroll_msg_has(&m, ET_STATUS)) {
		fprintf(stderr, "no valid answer\n");
		goto out;
	}
	if (m.v[ET_STATUS].p[1] != 0) {
		enroll_msg_str(&m, ET_MESSAGE, msg, sizeof(msg));
		printf("refused: %s\n", msg);
		ret = 3;
		goto out;
	}
	if (enroll_msg_str(&m, ET_SERIAL, key_id, sizeof(key_id)) || !enroll_msg_has(&m, ET_CRL) ||
	    !enroll_msg_has(&m, ET_CHAIN) ||
	    pki_pem_read_certs(m.v[ET_CHAIN].p, m.v[ET_CHAIN].len, &certs)) {
		fprintf(stderr, "answer lacks key id, envelope or certificate\n");
		goto out;
	}
	if (save) {
		FILE *f = fopen(save, "wb");

		if (!f || fwrite(m.v[ET_CRL].p, 1, m.v[ET_CRL].len, f) != m.v[ET_CRL].len) {
			if (f)
				fclose(f);
			goto out;
		}
		fclose(f);
	}
	if (envelope_unwrap(wrap, &ad, m.v[ET_CRL].p, m.v[ET_CRL].len, &pt, &pt_len)) {
		printf("unwrap failed\n");
		goto out;
	}
	{
		const unsigned char *p = pt;

		ikey = d2i_AutoPrivateKey(NULL, &p, (long)pt_len);
	}
	if (!ikey || X509_check_private_key(sk_X509_value(certs, 0), ikey) != 1) {
		printf("the unwrapped key is not the certificate's\n");
		goto out;
	}
	EVP_Digest(pt, pt_len, md, &mdlen, EVP_sha256(), NULL);
	printf("granted key=%s certs=%d leaf_verifies=%s der_sha256=", key_id, sk_X509_num(certs),
	       ik_leaf_verifies(ikey, certs) ? "yes" : "no");
	ik_hex(md, 32);
	printf("\n");
	if (secret) {
		BIGNUM *d = NULL;
		uint8_t raw[32];

		if (EVP_PKEY_get_bn_param(ikey, OSSL_PKEY_PARAM_PRIV_KEY, &d) == 1 &&
		    BN_bn2binpad(d, raw, 32) == 32) {
			printf("secret_hex=");
			ik_hex(raw, 32);
			printf("\n");
			OPENSSL_cleanse(raw, sizeof(raw));
		}
		BN_clear_free(d);
	}
	ret = 0;
out:
	ERR_print_errors_fp(stderr);
	envelope_plain_free(pt, pt_len);
	EVP_PKEY_free(ikey);
	EVP_PKEY_free(wrap);
	sk_X509_pop_free(certs, X509_free);
	free(resp);
	enroll_buf_free(&b);
	if (ssl) {
		SSL_shutdown(ssl);
		SSL_free(ssl);
	}
	SSL_CTX_free(ctx);
	if (fd >= 0)
		close(fd);
	enroll_identity_free(&id);
	return ret;
}
