/*
 * Test tool: a TLS 1.3 mutual-authentication handshake between two enrolled identities
 * (keys opened in memory from their sealed files), each verifying the other against its
 * tenant root (and, with --crl, that tenant's CRL). Prints each side's view of its peer.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "enroll.h"
#include "log.h"

static SSL_CTX *pair_ctx(const struct enroll_identity *id, bool server, X509_CRL *crl)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	X509_STORE *st;

	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	st = SSL_CTX_get_cert_store(ctx);
	if (SSL_CTX_use_certificate(ctx, id->cert) != 1 ||
	    SSL_CTX_use_PrivateKey(ctx, id->key) != 1 || !X509_STORE_add_cert(st, id->root))
		goto err;
	for (int i = 0; i < sk_X509_num(id->chain); i++)
		if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(id->chain, i)) != 1)
			goto err;
	if (crl) {
		if (!X509_STORE_add_crl(st, crl))
			goto err;
		X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
	}
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}

static void pair_report(const char *side, SSL *ssl)
{
	X509 *peer = SSL_get0_peer_certificate(ssl);
	struct ident id;
	char uri[IDENT_URI_MAX] = "?";

	if (peer && enroll_cert_ident(peer, &id) == 0)
		ident_format(&id, uri, sizeof(uri));
	printf("%s peer=%s role=%s verify=%s\n", side, uri,
	       peer && enroll_cert_ident(peer, &id) == 0 ? ident_role_name(id.role) : "?",
	       X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"server", required_argument, NULL, 's'},
	    {"client", required_argument, NULL, 'c'},
	    {"server-identity-source", required_argument, NULL, 'S'},
	    {"client-identity-source", required_argument, NULL, 'C'},
	    {"crl", required_argument, NULL, 'r'},
	    {NULL, 0, NULL, 0},
	};
	const char *sdir = NULL, *cdir = NULL, *ssrc = NULL, *csrc = NULL, *crlpath = NULL;
	struct enroll_identity sid = {0}, cid = {0};
	SSL_CTX *sctx = NULL, *cctx = NULL;
	SSL *s = NULL, *c = NULL;
	X509_CRL *crl = NULL;
	int sv[2] = {-1, -1}, opt, ret = 1;
	bool sdone = false, cdone = false;
	char buf[16];
	size_t n;

	log_init("tlspair", LOG_LVL_INFO);
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			sdir = optarg;
			break;
		case 'c':
			cdir = optarg;
			break;
		case 'S':
			ssrc = optarg;
			break;
		case 'C':
			csrc = optarg;
			break;
		case 'r':
			crlpath = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!sdir || !cdir) {
		fprintf(stderr, "usage: %s --server DIR --client DIR [--crl FILE]\n", argv[0]);
		return 2;
	}
	if (enroll_load(sdir, ssrc, &sid) || enroll_load(cdir, csrc, &cid))
		goto out;
	if (crlpath) {
		BIO *bio = BIO_new_file(crlpath, "r");

		crl = bio ? PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL) : NULL;
		BIO_free(bio);
		if (!crl) {
			fprintf(stderr, "cannot read CRL %s\n", crlpath);
			goto out;
		}
	}
	sctx = pair_ctx(&sid, true, crl);
	cctx = pair_ctx(&cid, false, crl);
	if (!sctx || !cctx || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		goto out;
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	s = SSL_new(sctx);
	c = SSL_new(cctx);
	if (!s || !c || !SSL_set_fd(s, sv[0]) || !SSL_set_fd(c, sv[1]))
		goto out;
	SSL_set_accept_state(s);
	SSL_set_connect_state(c);
	for (int i = 0; i < 1000 && !(sdone && cdone); i++) {
		int r;

		if (!cdone) {
			r = SSL_do_handshake(c);
			if (r == 1)
				cdone = true;
			else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ)
				break;
		}
		if (!sdone) {
			r = SSL_do_handshake(s);
			if (r == 1)
				sdone = true;
			else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
				break;
		}
	}
	/* the client learns of a refusal of its certificate on its first read */
	if (sdone && cdone && SSL_write_ex(c, "ping", 4, &n) == 1) {
		for (int i = 0; i < 100; i++) {
			if (SSL_read_ex(s, buf, sizeof(buf), &n) == 1 && n == 4 &&
			    memcmp(buf, "ping", 4) == 0) {
				ret = 0;
				break;
			}
			if (SSL_get_error(s, 0) != SSL_ERROR_WANT_READ)
				break;
		}
	}
	if (ret) {
		unsigned long e = ERR_peek_last_error();

		printf("handshake=failed server_verify=%s client_verify=%s reason=%s\n",
		       X509_verify_cert_error_string(SSL_get_verify_result(s)),
		       X509_verify_cert_error_string(SSL_get_verify_result(c)),
		       e ? ERR_reason_error_string(e) : "?");
		goto out;
	}
	printf("handshake=ok version=%s\n", SSL_get_version(c));
	pair_report("server", s);
	pair_report("client", c);
out:
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sctx);
	SSL_CTX_free(cctx);
	X509_CRL_free(crl);
	enroll_identity_free(&sid);
	enroll_identity_free(&cid);
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	return ret;
}
