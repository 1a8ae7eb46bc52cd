/* mtun-broker: subcommands from a table (wireguard-tools wg.c style). */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "enroll.h"
#include "log.h"
#include "broker.h"

static int cmd_enroll(int argc, char **argv)
{
	return enroll_cli(MT_ROLE_BROKER, false, argc, argv);
}

static int cmd_renew(int argc, char **argv)
{
	return enroll_cli(MT_ROLE_BROKER, true, argc, argv);
}

static int cmd_run(int argc, char **argv)
{
	return broker_run(argc, argv);
}

static int cmd_help(int argc, char **argv);

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} cmds[] = {
    {"enroll", cmd_enroll,
     "--ca HOST:PORT --ca-fingerprint sha256:HEX --token TOKEN [--state DIR] [--id ID] "
     "[--inspector]"},
    {"renew", cmd_renew,
     "renew over mTLS when due [--state DIR] [--force] [--watch: keep renewing]"},
    {"run", cmd_run, "--config FILE: serve agents and connectors (docs/broker.md)"},
    {"help", cmd_help, "show this help"},
};

static int cmd_help(int argc, char **argv)
{
	printf("Usage: mtun-broker COMMAND [options]\n\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		printf("  %-8s %s\n", cmds[i].name, cmds[i].help);
	return 0;
}

int main(int argc, char **argv)
{
	log_init("mtun-broker", LOG_LVL_INFO);
	CRYPTO_secure_malloc_init(1 << 15, 32);
	if (argc < 2) {
		cmd_help(0, NULL);
		return 1;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[1], cmds[i].name) == 0)
			return cmds[i].fn(argc - 1, argv + 1) ? 1 : 0;
	log_warnx("unknown command '%s' (try mtun-broker help)", argv[1]);
	return 1;
}
