/* mtun-connector: subcommands from a table (wireguard-tools wg.c style). */
#include "cli.h"
#include "enroll.h"
#include "connector.h"

static int cmd_enroll(int argc, char **argv)
{
	return enroll_cli(MT_ROLE_CONNECTOR, false, argc, argv);
}

static int cmd_renew(int argc, char **argv)
{
	return enroll_cli(MT_ROLE_CONNECTOR, true, argc, argv);
}

static int cmd_run(int argc, char **argv)
{
	return connector_run(argc, argv);
}

static const struct cli_cmd cmds[] = {
    {"enroll", cmd_enroll,
     "--ca HOST:PORT --ca-fingerprint sha256:HEX --token TOKEN [--state DIR] [--id ID]"},
    {"renew", cmd_renew,
     "renew over mTLS when due [--state DIR] [--force] [--watch: keep renewing]"},
    {"run", cmd_run, "--config FILE: serve the brokers' BINDs (docs/connector.md)"},
};

int main(int argc, char **argv)
{
	return cli_main("mtun-connector", cmds, sizeof(cmds) / sizeof(cmds[0]), argc, argv);
}
