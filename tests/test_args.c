/* test_args.c - the shared command-line parser: both option forms, flags, ranges, choices, sizes,
 * lists, positionals, unknown options and the fallback for config keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"

typedef struct vals {
    bool flag, graphs;
    const char *model;
    int32_t n;
    int64_t big, size;
    uint64_t seed;
    float temp;
    double frac;
    int quant;
    const char *stops[4];
    int n_stops;
    const char *pos[2];
    int n_pos;
} vals;

static gm_status add_stop(void *ctx, const char *v)
{
    vals *x = ctx;
    if (x->n_stops == 4)
        return gm_fail(GM_ERR_INVALID_ARG, "at most 4");
    x->stops[x->n_stops++] = v;
    return GM_OK;
}

static int parse(vals *x, int max_pos, int argc, const char **argv)
{
    memset(x, 0, sizeof *x);
    x->graphs = true;
    args_opt opts[] = {
        {"flag", ARGS_FLAG, &x->flag},
        {"graphs", ARGS_FLAG, &x->graphs, .negatable = true},
        {"model", ARGS_STRING, &x->model},
        {"n", ARGS_INT, &x->n, -5, 100},
        {"big", ARGS_INT64, &x->big},
        {"size", ARGS_SIZE, &x->size},
        {"seed", ARGS_UINT64, &x->seed},
        {"temperature", ARGS_FLOAT, &x->temp, 0, 2},
        {"frac", ARGS_DOUBLE, &x->frac, 0, 1},
        {"quant", ARGS_CHOICE, &x->quant, .choices = "none|fp8|awq"},
        {"stop", ARGS_CALL, .call = add_stop, .ctx = x},
        {NULL},
    };
    args_spec sp = {"test", opts, x->pos, max_pos, &x->n_pos};
    return args_parse(&sp, argc, (char **)argv);
}

#define PARSE(x, maxpos, ...)                                                                                          \
    parse(x, maxpos, sizeof((const char *[]){"prog", __VA_ARGS__}) / sizeof(char *), (const char *[]){"prog", __VA_ARGS__})

static void test_both_forms(void **state)
{
    (void)state;
    vals x;
    assert_int_equal(PARSE(&x, 0, "--model", "/m", "--n=7", "--big", "-9000000000", "--size=2G", "--seed",
                           "18446744073709551615", "--temperature", "0.5", "--frac=1", "--quant=fp8"),
                     ARGS_OK);
    assert_string_equal(x.model, "/m");
    assert_int_equal(x.n, 7);
    assert_true(x.big == -9000000000ll);
    assert_true(x.size == 2ll << 30);
    assert_true(x.seed == UINT64_MAX);
    assert_true(x.temp == 0.5f);
    assert_true(x.frac == 1.0);
    assert_int_equal(x.quant, 1);
    /* a value may start with '-' */
    assert_int_equal(PARSE(&x, 0, "--n", "-5"), ARGS_OK);
    assert_int_equal(x.n, -5);
    assert_int_equal(PARSE(&x, 0, "--model=--odd"), ARGS_OK);
    assert_string_equal(x.model, "--odd");
}

static void test_flags(void **state)
{
    (void)state;
    vals x;
    assert_int_equal(PARSE(&x, 0, "--flag", "--no-graphs"), ARGS_OK);
    assert_true(x.flag);
    assert_false(x.graphs);
    assert_int_equal(PARSE(&x, 0, "--flag=false", "--graphs=off"), ARGS_OK);
    assert_false(x.flag);
    assert_false(x.graphs);
    assert_int_equal(PARSE(&x, 0, "--flag=maybe"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--no-flag"), ARGS_ERROR); /* not negatable: unknown */
    assert_int_equal(PARSE(&x, 0, "--no-graphs=1"), ARGS_ERROR);
}

static void test_errors(void **state)
{
    (void)state;
    vals x;
    assert_int_equal(PARSE(&x, 0, "--n", "101"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--n", "3x"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--n"), ARGS_ERROR); /* missing value */
    assert_int_equal(PARSE(&x, 0, "--temperature", "nan"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--temperature", "2.5"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--seed", "-1"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--size", "12Q"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--quant", "int4"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--nope", "1"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "-x"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "stray"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 0, "--stop", "a", "--stop", "b", "--stop", "c", "--stop", "d", "--stop", "e"),
                     ARGS_ERROR);
}

static void test_lists_positionals_help(void **state)
{
    (void)state;
    vals x;
    assert_int_equal(PARSE(&x, 2, "--stop", "a", "hello", "--stop=b", "--", "--not-an-option"), ARGS_OK);
    assert_int_equal(x.n_stops, 2);
    assert_string_equal(x.stops[1], "b");
    assert_int_equal(x.n_pos, 2);
    assert_string_equal(x.pos[0], "hello");
    assert_string_equal(x.pos[1], "--not-an-option");
    assert_int_equal(PARSE(&x, 1, "a", "b"), ARGS_ERROR);
    assert_int_equal(PARSE(&x, 1, "-3"), ARGS_OK); /* a negative number is positional */
    assert_int_equal(PARSE(&x, 0, "--n", "1", "--help"), ARGS_HELP);
    assert_int_equal(PARSE(&x, 0, "-h"), ARGS_HELP);
}

static gm_status fallback(void *ctx, const char *name, const char *value)
{
    char *out = ctx;
    if (strcmp(name, "max-seqs"))
        return GM_ERR_NOT_FOUND;
    if (strcmp(value, "8"))
        return gm_fail(GM_ERR_INVALID_ARG, "want 8");
    strcpy(out, value);
    return GM_OK;
}

static void test_unknown_fallback(void **state)
{
    (void)state;
    char got[8] = "";
    args_opt opts[] = {{NULL}};
    args_spec sp = {"gemmad", opts, NULL, 0, NULL, fallback, got};
    char *a1[] = {"gemmad", "--max-seqs=8"};
    assert_int_equal(args_parse(&sp, 2, a1), ARGS_OK);
    assert_string_equal(got, "8");
    char *a2[] = {"gemmad", "--max-seqs", "9"};
    assert_int_equal(args_parse(&sp, 3, a2), ARGS_ERROR);
    char *a3[] = {"gemmad", "--max-seq", "8"};
    assert_int_equal(args_parse(&sp, 3, a3), ARGS_ERROR);
}

static void test_value_parsers(void **state)
{
    (void)state;
    int64_t v;
    assert_true(args_parse_size("64MiB", &v) && v == 64ll << 20);
    assert_true(args_parse_size("1.5G", &v) && v == 3ll << 29);
    assert_true(args_parse_size("4096", &v) && v == 4096);
    assert_false(args_parse_size("-1", &v));
    assert_false(args_parse_size("1.5", &v));
    bool b;
    assert_true(args_parse_bool("yes", &b) && b);
    assert_false(args_parse_bool("Y", &b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_both_forms),     cmocka_unit_test(test_flags),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_lists_positionals_help),
        cmocka_unit_test(test_unknown_fallback), cmocka_unit_test(test_value_parsers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
