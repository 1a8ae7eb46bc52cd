/* mtun-agent: subcommands from a table (wireguard-tools wg.c style). */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "enroll.h"
#include "log.h"
#include "agent.h"

static int cmd_enroll(int argc, char **argv)
{
	return enroll_cli(MT_ROLE_AGENT, false, argc, argv);
}

static int cmd_renew(int argc, char **argv)
{
	return enroll_cli(MT_ROLE_AGENT, true, argc, argv);
}

static int cmd_forward(int argc, char **argv)
{
	return forward_main(argc, argv);
}

static int cmd_help(int argc, char **argv);

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} cmds[] = {
    {"enroll", cmd_enroll,
     "--ca HOST:PORT --ca-fingerprint sha256:HEX --token TOKEN --user U [--state DIR] [--id ID] "
     "[--identity-source DIR]"},
    {"renew", cmd_renew,
     "renew over mTLS when due [--state DIR] [--force] [--watch: keep renewing]"},
    {"forward", cmd_forward,
     "--broker HOST:PORT --state DIR --listen ADDR:PORT --to HOST:PORT [--identity-source DIR] "
     "[--window SIZE]"},
    {"help", cmd_help, "show this help"},
};

static int cmd_help(int argc, char **argv)
{
	printf("Usage: mtun-agent COMMAND [options]\n\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		printf("  %-8s %s\n", cmds[i].name, cmds[i].help);
	return 0;
}

int main(int argc, char **argv)
{
	log_init("mtun-agent", LOG_LVL_INFO);
	CRYPTO_secure_malloc_init(1 << 15, 32);
	if (argc < 2) {
		cmd_help(0, NULL);
		return 1;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[1], cmds[i].name) == 0)
			return cmds[i].fn(argc - 1, argv + 1) ? 1 : 0;
	log_warnx("unknown command '%s' (try mtun-agent help)", argv[1]);
	return 1;
}
