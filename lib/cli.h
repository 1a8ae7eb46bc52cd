/* A program's subcommands from a table of {name, handler, one-line help} (wireguard-tools wg.c). */
#ifndef MTUN_CLI_H
#define MTUN_CLI_H

#include <stddef.h>

struct cli_cmd {
	const char *name;
	int (*fn)(int argc, char **argv); /* argv[0] is the command's name; 0 or -errno */
	const char *help;
};

/*
 * Runs PROG COMMAND [options]: starts logging as prog and OpenSSL's secure heap, answers
 * `help`, `--help` and `COMMAND --help` from the table, and returns main's exit status.
 */
int cli_main(const char *prog, const struct cli_cmd *cmds, size_t n, int argc, char **argv);

#endif
