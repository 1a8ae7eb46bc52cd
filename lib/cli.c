/* Subcommand dispatch shared by mtun-agent, mtun-broker and mtun-connector. */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cli.h"
#include "log.h"

static void usage(const char *prog, const struct cli_cmd *cmds, size_t n)
{
	printf("Usage: %s COMMAND [options]\n\n", prog);
	for (size_t i = 0; i < n; i++)
		printf("  %-8s %s\n", cmds[i].name, cmds[i].help);
	printf("  %-8s %s\n", "help", "show this help");
}

static int is_help(const char *s)
{
	return strcmp(s, "help") == 0 || strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0;
}

int cli_main(const char *prog, const struct cli_cmd *cmds, size_t n, int argc, char **argv)
{
	log_init(prog, LOG_LVL_INFO);
	/* Keys live in OpenSSL's secure heap (locked, zeroed on free) where it can have one. */
	CRYPTO_secure_malloc_init(1 << 15, 32);
	if (argc < 2) {
		usage(prog, cmds, n);
		return 1;
	}
	if (is_help(argv[1])) {
		usage(prog, cmds, n);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(argv[1], cmds[i].name) != 0)
			continue;
		if (argc == 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
			printf("Usage: %s %s %s\n", prog, cmds[i].name, cmds[i].help);
			return 0;
		}
		return cmds[i].fn(argc - 1, argv + 1) ? 1 : 0;
	}
	log_warnx("unknown command '%s' (try %s help)", argv[1], prog);
	return 1;
}
