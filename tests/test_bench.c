/* test_bench.c - gemma-bench's statistics on synthetic data (no daemon). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <math.h>

#include "bench/bench_stats.h"

static void test_percentiles(void **st)
{
    (void)st;
    double v[100];
    for (int i = 0; i < 100; i++)
        v[i] = (double)(100 - i); /* 100..1, unsorted */
    bench_dist d;
    bench_dist_of(v, 100, &d);
    assert_int_equal(d.n, 100);
    assert_true(fabs(d.mean - 50.5) < 1e-9);
    assert_true(fabs(d.p50 - 50.5) < 1e-9);
    assert_true(fabs(d.p90 - 90.1) < 1e-9);
    assert_true(fabs(d.p99 - 99.01) < 1e-9);
    assert_true(d.min == 1 && d.max == 100);
    double one = 7;
    assert_true(histo_percentile_sorted(&one, 1, 99) == 7);
    assert_true(histo_percentile_sorted(NULL, 0, 50) == 0);
    bench_dist_of(NULL, 0, &d);
    assert_int_equal(d.n, 0);
    assert_true(d.p99 == 0);
}

static void test_lengths(void **st)
{
    (void)st;
    enum { N = 100000 };
    int32_t *a = malloc(N * sizeof(int32_t)), *b = malloc(N * sizeof(int32_t));
    bench_rng r;
    bench_rng_init(&r, 7);
    bench_draw_lengths(&r, 128, 0, 0, N, a);
    for (int i = 0; i < N; i++)
        assert_int_equal(a[i], 128);
    /* normal: mean and spread close to the asked ones (fixed seed, so deterministic) */
    bench_rng_init(&r, 7);
    bench_draw_lengths(&r, 1000, 100, 0, N, a);
    double s = 0, s2 = 0;
    for (int i = 0; i < N; i++)
        s += a[i], s2 += (double)a[i] * a[i];
    double mean = s / N, sd = sqrt(s2 / N - mean * mean);
    assert_true(fabs(mean - 1000) < 2);
    assert_true(fabs(sd - 100) < 2);
    /* same seed, same draws; other seed, other draws */
    bench_rng_init(&r, 7);
    bench_draw_lengths(&r, 1000, 100, 0, N, b);
    assert_memory_equal(a, b, N * sizeof(int32_t));
    bench_rng_init(&r, 8);
    bench_draw_lengths(&r, 1000, 100, 0, N, b);
    assert_true(memcmp(a, b, N * sizeof(int32_t)) != 0);
    /* clamped to >= 1 and to the upper bound */
    bench_rng_init(&r, 1);
    bench_draw_lengths(&r, 2, 50, 10, N, a);
    int lo = 0, hi = 0;
    for (int i = 0; i < N; i++) {
        assert_true(a[i] >= 1 && a[i] <= 10);
        lo += a[i] == 1, hi += a[i] == 10;
    }
    assert_true(lo > 0 && hi > 0);
    free(a);
    free(b);
}

static void test_exp(void **st)
{
    (void)st;
    bench_rng r;
    bench_rng_init(&r, 3);
    double s = 0;
    for (int i = 0; i < 100000; i++) {
        double x = bench_rng_exp(&r, 50.0);
        assert_true(x > 0 && isfinite(x));
        s += x;
    }
    assert_true(fabs(s / 100000 - 0.02) < 0.0005);
}

static void test_prompt(void **st)
{
    (void)st;
    int32_t p[512], q[512];
    bench_make_prompt(5, 17, 256000, 512, p);
    assert_int_equal(p[0], 2);
    for (int i = 1; i < 512; i++)
        assert_true(p[i] >= 3 && p[i] < 4096);
    bench_make_prompt(5, 17, 256000, 512, q);
    assert_memory_equal(p, q, sizeof(p));
    bench_make_prompt(5, 18, 256000, 512, q);
    assert_true(memcmp(p, q, sizeof(p)) != 0);
    bench_make_prompt(5, 17, 10, 512, p); /* small vocabulary: ids in [3, 10) */
    bool seen3 = false, seen9 = false;
    for (int i = 1; i < 512; i++) {
        assert_true(p[i] >= 3 && p[i] < 10);
        seen3 |= p[i] == 3, seen9 |= p[i] == 9;
    }
    assert_true(seen3 && seen9);
    bench_make_prompt(5, 0, 256000, 1, p);
    assert_int_equal(p[0], 2);
}

/* Two requests with hand-made timings, one failure. */
static void test_summary(void **st)
{
    (void)st;
    bench_req r[3];
    memset(r, 0, sizeof(r));
    /* A: submit 1000, first token 1010, 11 tokens, last 1110 -> TTFT 10, TPOT 10 */
    r[0] = (bench_req){.isl = 8, .osl = 11, .out_tokens = 11, .t_submit = 1000, .t_first = 1010, .t_last = 1110,
                       .done = true};
    /* B: submit 1000, first 1030, 6 tokens, last 2000 -> TTFT 30, TPOT 194, ends at 2000 */
    r[1] = (bench_req){.isl = 4, .osl = 6, .out_tokens = 6, .t_submit = 1000, .t_first = 1030, .t_last = 2000,
                       .done = true};
    /* C: failed with code 3 (OVERLOADED) */
    r[2] = (bench_req){.isl = 4, .osl = 6, .error = 3, .t_submit = 1500, .t_last = 1500, .done = true};
    double itl[] = {10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 194, 194, 194, 194, 194};
    bench_summary s;
    memset(&s, 0, sizeof(s));
    s.concurrency = 16;
    s.isl = 8;
    s.osl = 11;
    strcpy(s.label, "null");
    bench_summarize(r, 3, itl, 15, &s);
    assert_int_equal(s.num_requests, 3);
    assert_int_equal(s.completed, 2);
    assert_int_equal(s.failed, 1);
    assert_int_equal(s.errors[3], 1);
    assert_int_equal(s.output_tokens, 17);
    assert_int_equal(s.input_tokens, 12);
    assert_int_equal(s.concurrency, 16);
    assert_string_equal(s.label, "null");
    assert_true(fabs(s.duration_s - 1.0) < 1e-9);
    assert_true(fabs(s.output_tokens_per_s - 17) < 1e-9);
    assert_true(fabs(s.total_tokens_per_s - 29) < 1e-9);
    assert_true(fabs(s.request_throughput - 2) < 1e-9);
    assert_true(fabs(s.ttft_ms.mean - 20) < 1e-9);
    assert_true(fabs(s.ttft_ms.p50 - 20) < 1e-9);
    assert_true(fabs(s.tpot_ms.mean - 102) < 1e-9);
    assert_true(fabs(s.per_user_tokens_per_s - 1000.0 / 102) < 1e-9);
    assert_true(fabs(s.itl_ms.p50 - 10) < 1e-9);
    assert_true(fabs(s.itl_ms.max - 194) < 1e-9);
    assert_int_equal(s.itl_ms.n, 15);
    assert_true(fabs(s.e2e_ms.max - 1000) < 1e-9);
    assert_int_equal(s.short_outputs, 0);
}

/* A request that never finished counts as a failure (timeout) and does not
 * stretch the duration; one with fewer tokens than asked is "short". */
static void test_unfinished(void **st)
{
    (void)st;
    bench_req r[3];
    memset(r, 0, sizeof(r));
    r[0] = (bench_req){.isl = 4, .osl = 4, .out_tokens = 2, .t_submit = 10, .t_first = 20, .t_last = 30,
                       .done = true};
    r[1] = (bench_req){.isl = 4, .osl = 4, .out_tokens = 1, .t_submit = 10, .t_first = 25, .t_last = 25};
    r[2] = (bench_req){0}; /* never sent */
    bench_summary s;
    memset(&s, 0, sizeof(s));
    bench_summarize(r, 3, NULL, 0, &s);
    assert_int_equal(s.completed, 1);
    assert_int_equal(s.failed, 2);
    assert_int_equal(s.errors[100], 2);
    assert_int_equal(s.short_outputs, 1);
    assert_true(fabs(s.duration_s - 0.020) < 1e-9);
    assert_int_equal(s.itl_ms.n, 0);
}

static const char *names(int c) { return c == 3 ? "OVERLOADED" : "OTHER"; }

static void test_json(void **st)
{
    (void)st;
    bench_req r[2] = {
        {.isl = 16, .osl = 16, .out_tokens = 16, .t_submit = 0.5, .t_first = 5, .t_last = 80.5, .done = true},
        {.isl = 16, .osl = 16, .error = 3, .t_submit = 1, .t_last = 1, .done = true},
    };
    double itl[15];
    for (int i = 0; i < 15; i++)
        itl[i] = 5;
    bench_summary s;
    memset(&s, 0, sizeof(s));
    s.concurrency = 2;
    s.isl = s.osl = 16;
    strcpy(s.label, "a \"quoted\" label");
    bench_summarize(r, 2, itl, 15, &s);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(bench_write_json(f, &s, names), GM_OK);
    fclose(f);
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    const char *keys[] = {"output_tokens_per_s", "request_throughput", "total_tokens_per_s", "ttft_ms_p50",
                          "ttft_ms_p90", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p90", "tpot_ms_p99", "itl_ms_p50",
                          "itl_ms_p90", "itl_ms_p99", "per_user_tokens_per_s", "concurrency", "num_requests", "isl",
                          "osl", "output_tokens", "completed", "failed"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        cJSON *k = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        assert_true(cJSON_IsNumber(k));
    }
    assert_int_equal(cJSON_GetObjectItem(j, "output_tokens")->valueint, 16);
    assert_int_equal(cJSON_GetObjectItem(j, "num_requests")->valueint, 2);
    assert_int_equal(cJSON_GetObjectItem(j, "concurrency")->valueint, 2);
    assert_true(fabs(cJSON_GetObjectItem(j, "output_tokens_per_s")->valuedouble - 200) < 1e-3);
    assert_string_equal(cJSON_GetObjectItem(j, "label")->valuestring, "a \"quoted\" label");
    cJSON *e = cJSON_GetObjectItem(j, "errors");
    assert_true(cJSON_IsObject(e));
    assert_int_equal(cJSON_GetObjectItem(e, "OVERLOADED")->valueint, 1);
    cJSON_Delete(j);
    free(buf);

    /* Markdown: header and row have the same number of columns */
    f = open_memstream(&buf, &len);
    bench_markdown_header(f);
    bench_markdown_row(f, &s);
    fclose(f);
    char *l1 = buf, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    int c1 = 0, c3 = 0;
    for (char *p = l1; p < l2; p++)
        c1 += *p == '|';
    for (char *p = l3; *p && *p != '\n'; p++)
        c3 += *p == '|';
    assert_int_equal(c1, c3);
    assert_non_null(strstr(l3, "16/16"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentiles), cmocka_unit_test(test_lengths), cmocka_unit_test(test_exp),
        cmocka_unit_test(test_prompt),      cmocka_unit_test(test_summary), cmocka_unit_test(test_unfinished),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
