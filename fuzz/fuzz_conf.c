/*
 * libFuzzer target for lib/conf: arbitrary bytes as a configuration, then every setting
 * read through every getter and value parser, then the unknown-setting check.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "conf.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
const char *__lsan_default_suppressions(void);

/*
 * libconfig 1.5 (Debian 12) leaks a token's string when a syntax error follows it (its
 * grammar frees no token on error recovery). Only the scanner's allocations are excused:
 * a setting tree that is not freed is still found.
 */
const char *__lsan_default_suppressions(void)
{
	return "leak:strbuf_append\nleak:libconfig_yylex\n";
}

/* Paths a broker would read, some of them into lists. */
static const char *const fuzz_paths[] = {
    "broker.listen",
    "broker.workers",
    "broker.inspect",
    "broker.idle",
    "broker.buffer",
    "broker.allow",
    "brokers",
    "brokers.[0].host",
    "brokers[1].host",
    "log_level",
    "a",
    "a.b.c",
    "[0]",
    "a.[0]",
    "a..b",
    "a.[99999999999999999999]",
};

static void fuzz_getters(struct conf *c, const char *path)
{
	struct conf_hostport hp;
	struct conf_cidr cidr;
	const char *s, **v = NULL;
	int64_t i = 0;
	uint64_t u = 0;
	size_t n = 0;
	bool b = false;

	(void)conf_has(c, path);
	if (conf_get_str(c, path, CONF_OPTIONAL, &s) == 0 && conf_has(c, path)) {
		const char *why;

		(void)conf_parse_hostport(s, &hp, &why);
		(void)conf_parse_cidr(s, &cidr, &why);
		(void)conf_parse_duration(s, &u, &why);
		(void)conf_parse_size(s, &u, &why);
	}
	(void)conf_get_int(c, path, CONF_REQUIRED, -5, 1000, &i);
	(void)conf_get_bool(c, path, CONF_OPTIONAL, &b);
	(void)conf_get_len(c, path, CONF_OPTIONAL, &n);
	if (conf_get_strv(c, path, CONF_OPTIONAL, &v, &n) == 0 && v) {
		for (size_t k = 0; k < n; k++)
			if (!v[k])
				abort();
		free(v);
	}
	(void)conf_get_hostport(c, path, CONF_OPTIONAL, &hp);
	(void)conf_get_cidr(c, path, CONF_OPTIONAL, &cidr);
	(void)conf_get_duration(c, path, CONF_OPTIONAL, 10, 86400000, &u);
	(void)conf_get_size(c, path, CONF_OPTIONAL, 1, 1ULL << 40, &u);
}

/* Every setting by its path, so that each getter meets each type. */
static void fuzz_walk(struct conf *c, const config_setting_t *s, char *path, size_t len, int depth)
{
	if (depth > 64)
		return;
	for (int i = 0; i < config_setting_length(s); i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		const char *name = config_setting_name(e);
		int w;

		if (name)
			w = snprintf(path + len, 512 - len, "%s%s", len ? "." : "", name);
		else
			w = snprintf(path + len, 512 - len, "%s[%d]", len ? "." : "", i);
		if (w < 0 || (size_t)w >= 512 - len)
			continue;
		fuzz_getters(c, path);
		if (config_setting_is_aggregate(e))
			fuzz_walk(c, e, path, len + (size_t)w, depth + 1);
		path[len] = '\0';
	}
}

/* A second, private parse of the same text gives the tree to walk. */
static void fuzz_tree(struct conf *c, const char *text)
{
	char path[512] = "";
	config_t cfg;

	config_init(&cfg);
	if (config_read_string(&cfg, text) == CONFIG_TRUE)
		fuzz_walk(c, config_root_setting(&cfg), path, 0, 0);
	config_destroy(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct conf *c;
	char *text;

	log_init("fuzz_conf", LOG_LVL_ERR);
	if (n > 65536)
		return 0;
	text = malloc(n + 1);
	if (!text)
		return 0;
	memcpy(text, d, n);
	text[n] = '\0';
	/* @include would read files from the fuzzer's working directory. */
	if (strcasestr(text, "@include")) {
		free(text);
		return 0;
	}
	c = conf_new();
	if (c && conf_load_string(c, "fuzz.conf", text) == 0) {
		for (size_t i = 0; i < sizeof(fuzz_paths) / sizeof(fuzz_paths[0]); i++)
			fuzz_getters(c, fuzz_paths[i]);
		fuzz_tree(c, text);
		(void)conf_check_unknown(c);
		conf_skip(c, "broker");
		(void)conf_check_unknown(c);
	}
	conf_free(c);
	free(text);
	return 0;
}
