/* args.h - the one command-line convention of every gemmad program.
 *
 *   --name VALUE  and  --name=VALUE     an option with a value (the value may start with '-')
 *   --name, --name=true|false           a flag; --no-name sets it false where the table allows
 *   -h, --help                          args_parse returns ARGS_HELP; the program prints its usage
 *   --                                  everything after it is positional
 *   anything else                       a positional argument, in order
 *
 * A program declares its options in a table; values are checked (ranges, choices, sizes) before they
 * reach the program, and every error names the option: "gemma-cli: --top-k 'x' is not an integer". */
#ifndef GM_ARGS_H
#define GM_ARGS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum args_type {
    ARGS_FLAG = 0, /* bool *dst */
    ARGS_STRING,   /* const char **dst, borrowed from argv */
    ARGS_INT,      /* int32_t *dst, in [lo, hi] */
    ARGS_INT64,    /* int64_t *dst, in [lo, hi] */
    ARGS_UINT64,   /* uint64_t *dst (decimal, no sign) */
    ARGS_FLOAT,    /* float *dst, finite, in [lo, hi] */
    ARGS_DOUBLE,   /* double *dst, finite, in [lo, hi] */
    ARGS_SIZE,     /* int64_t *dst: bytes, or 512K, 64M, 2G, 1T (powers of 1024; "MiB", "MB" too) */
    ARGS_CHOICE,   /* int *dst: the index of the value in choices, "none|fp8|awq" */
    ARGS_CALL,     /* call(ctx, value): lists (--stop given many times) and checks of their own */
} args_type;

typedef struct args_opt {
    const char *name; /* without the leading "--"; NULL ends the table */
    args_type type;
    void *dst;
    double lo, hi;          /* numeric range; lo == hi == 0 means the type's own range */
    const char *choices;    /* ARGS_CHOICE */
    gm_status (*call)(void *ctx, const char *value); /* ARGS_CALL: GM_OK or gm_fail(...) with the reason */
    void *ctx;
    bool negatable;         /* ARGS_FLAG: --no-NAME sets false */
    bool *seen;             /* optional: set true when the option appears */
} args_opt;

typedef struct args_spec {
    const char *prog;          /* program name for messages */
    const args_opt *opts;      /* table ending with {NULL} */
    const char **positional;   /* [max_positional] out: borrowed from argv */
    int max_positional;        /* positional arguments allowed (0 = none) */
    int *n_positional;         /* out; may be NULL when max_positional == 0 */
    /* Unknown --name VALUE options go here instead of being errors (gemmad: its config keys, with
     * '-' turned into '_'): GM_ERR_NOT_FOUND = "unknown option", another error = a bad value. */
    gm_status (*unknown)(void *ctx, const char *name, const char *value);
    void *unknown_ctx;
    bool quiet;                /* errors only in gm_last_error(), not on stderr */
} args_spec;

enum {
    ARGS_OK = 0,   /* parsed */
    ARGS_HELP = 1, /* -h/--help: print the usage, exit 0 */
    ARGS_ERROR = 2 /* the message went to stderr: exit 2 */
};

/* Parse argv[1..argc) against spec. An error sets gm_last_error() to the reason ("--top-k 'x' is not an
 * integer") and, unless spec->quiet, prints "<prog>: <reason> (see --help)" to stderr. */
int args_parse(const args_spec *spec, int argc, char **argv);

/* The value parsers args_parse uses, for config files and programs with their own keys.
 * Each returns false on a malformed or out-of-range value. */
bool args_parse_size(const char *s, int64_t *out);
bool args_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
bool args_parse_u64(const char *s, uint64_t *out);
bool args_parse_double(const char *s, double lo, double hi, double *out);
/* "true" | "false" | "1" | "0" | "on" | "off" | "yes" | "no" */
bool args_parse_bool(const char *s, bool *out);

#ifdef __cplusplus
}
#endif
#endif
