/* mtun-agent: subcommands from a table (wireguard-tools wg.c style). */
#include "cli.h"
#include "enroll.h"
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

static int cmd_run(int argc, char **argv)
{
	return run_main(argc, argv);
}

static int cmd_status(int argc, char **argv)
{
	return run_status_main(argc, argv);
}

static const struct cli_cmd cmds[] = {
    {"enroll", cmd_enroll,
     "--ca HOST:PORT --ca-fingerprint sha256:HEX --token TOKEN --user U [--state DIR] [--id ID] "
     "[--identity-source DIR]"},
    {"renew", cmd_renew,
     "renew over mTLS when due [--state DIR] [--force] [--watch: keep renewing]"},
    {"forward", cmd_forward,
     "--broker HOST:PORT --state DIR --listen ADDR:PORT --to HOST:PORT [--identity-source DIR] "
     "[--window SIZE] [--posture-interval DURATION]"},
    {"run", cmd_run,
     "--config FILE [--cgroup DIR] [--log-level LEVEL]: intercept DNS and connections of the "
     "cgroup (default: the cgroup v2 root) and carry them as mtunnels; the file's keys: "
     "docs/interception.md"},
    {"status", cmd_status, "[--config FILE | --file STATUS]: the running agent's state"},
};

int main(int argc, char **argv)
{
	return cli_main("mtun-agent", cmds, sizeof(cmds) / sizeof(cmds[0]), argc, argv);
}
