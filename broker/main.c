/* mtun-broker: subcommands from a table (wireguard-tools wg.c style). */
#include "cli.h"
#include "enroll.h"
#include "broker.h"
#include "inspect.h"

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

static const struct cli_cmd cmds[] = {
    {"enroll", cmd_enroll,
     "--ca HOST:PORT --ca-fingerprint sha256:HEX --token TOKEN [--state DIR] [--id ID] "
     "[--inspector]"},
    {"renew", cmd_renew,
     "renew over mTLS when due [--state DIR] [--force] [--watch: keep renewing]"},
    {"run", cmd_run, "--config FILE: serve agents and connectors (docs/broker.md)"},
    {"inspect", inspect_main,
     "--config FILE [--wrap-key-fd N]: the TLS inspection node (docs/inspection.md)"},
};

int main(int argc, char **argv)
{
	return cli_main("mtun-broker", cmds, sizeof(cmds) / sizeof(cmds[0]), argc, argv);
}
