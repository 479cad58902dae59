/* test_histo.c - common/histo (bucketed histogram, exact samples) and common/jsonw. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <cmocka.h>

#include "common/histo.h"
#include "common/jsonw.h"
#include "tests/test_check.h"

/* |a - b| <= eps for doubles (this cmocka has only a float version). */
#define assert_double_equal(a, b, eps)                                                                               \
    do {                                                                                                             \
        double a_ = (a), b_ = (b);                                                                                   \
        if (!(fabs(a_ - b_) <= (eps)))                                                                               \
            fail_msg("%s = %.17g, want %.17g", #a, a_, b_);                                                          \
    } while (0)

static void test_histo_init_checks(void **st)
{
    histo h;
    double ok[] = {0.1, 0.5, 1.0};
    GOK(histo_init(&h, ok, 3));
    double dup[] = {0.1, 0.1};
    assert_int_equal(histo_init(&h, dup, 2), GM_ERR_INVALID_ARG);
    double down[] = {1, 0.5};
    assert_int_equal(histo_init(&h, down, 2), GM_ERR_INVALID_ARG);
    double inf[] = {1, INFINITY};
    assert_int_equal(histo_init(&h, inf, 2), GM_ERR_INVALID_ARG);
    double nan_[] = {NAN};
    assert_int_equal(histo_init(&h, nan_, 1), GM_ERR_INVALID_ARG);
    assert_int_equal(histo_init(&h, ok, 0), GM_ERR_INVALID_ARG);
    double many[HISTO_MAX_BOUNDS + 1];
    for (int i = 0; i <= HISTO_MAX_BOUNDS; i++)
        many[i] = i;
    assert_int_equal(histo_init(&h, many, HISTO_MAX_BOUNDS + 1), GM_ERR_INVALID_ARG);
    GOK(histo_init(&h, many, HISTO_MAX_BOUNDS));
    /* the preset sets are valid */
    GOK(histo_init(&h, HISTO_BOUNDS_TTFT_S, HISTO_BOUNDS_TTFT_N));
    GOK(histo_init(&h, HISTO_BOUNDS_TPOT_S, HISTO_BOUNDS_TPOT_N));
    GOK(histo_init(&h, HISTO_BOUNDS_E2E_S, HISTO_BOUNDS_E2E_N));
    GOK(histo_init(&h, HISTO_BOUNDS_TOKENS, HISTO_BOUNDS_TOKENS_N));
}

static void test_histo_buckets(void **st)
{
    histo h;
    double b[] = {1, 2, 4};
    GOK(histo_init(&h, b, 3));
    /* le semantics: a value equal to a bound counts in that bucket */
    double xs[] = {0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 100.0, NAN};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        histo_observe(&h, xs[i]);
    assert_int_equal(h.count, 8); /* NaN ignored */
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[1], 2);
    assert_int_equal(h.counts[2], 2);
    assert_int_equal(h.counts[3], 2);
    assert_int_equal(histo_cumulative(&h, 0), 2);
    assert_int_equal(histo_cumulative(&h, 2), 6);
    assert_int_equal(histo_cumulative(&h, 3), 8);
    assert_int_equal(histo_cumulative(&h, 99), 8);
    assert_double_equal(h.sum, 0.5 + 1 + 1.5 + 2 + 3 + 4 + 5 + 100, 1e-12);
    histo_clear(&h);
    assert_int_equal(h.count, 0);
    assert_int_equal(histo_cumulative(&h, 3), 0);
    assert_int_equal(h.n_bounds, 3);
}

static void test_histo_quantile(void **st)
{
    histo h;
    double b[] = {1, 2, 4};
    GOK(histo_init(&h, b, 3));
    assert_double_equal(histo_quantile(&h, 0.5), 0, 0); /* empty */
    /* 10 values in (1, 2]: rank 5 is halfway through that bucket */
    for (int i = 0; i < 10; i++)
        histo_observe(&h, 1.5);
    assert_double_equal(histo_quantile(&h, 0.5), 1.5, 1e-12);
    assert_double_equal(histo_quantile(&h, 1.0), 2.0, 1e-12);
    assert_double_equal(histo_quantile(&h, 0.0), 1.0, 1e-12);
    /* add 10 in the first bucket: the median sits at its top */
    for (int i = 0; i < 10; i++)
        histo_observe(&h, 0.2);
    assert_double_equal(histo_quantile(&h, 0.5), 1.0, 1e-12);
    assert_double_equal(histo_quantile(&h, 0.25), 0.5, 1e-12); /* first bucket starts at 0 */
    /* +Inf: the largest finite bound */
    for (int i = 0; i < 80; i++)
        histo_observe(&h, 50);
    assert_double_equal(histo_quantile(&h, 0.99), 4.0, 1e-12);
    assert_double_equal(histo_quantile(&h, 2.0), 4.0, 1e-12); /* q clamped */
    assert_double_equal(histo_quantile(&h, NAN), 0, 0);
    /* uniform data over a fine grid: the estimate is close to the truth */
    double fine[100];
    for (int i = 0; i < 100; i++)
        fine[i] = (i + 1) * 0.01;
    GOK(histo_init(&h, fine, 100 > HISTO_MAX_BOUNDS ? HISTO_MAX_BOUNDS : 100));
    GOK(histo_init(&h, HISTO_BOUNDS_TPOT_S, HISTO_BOUNDS_TPOT_N));
    for (int i = 0; i < 1000; i++)
        histo_observe(&h, 0.010 + 0.010 * i / 1000.0); /* uniform in [10, 20) ms */
    double p50 = histo_quantile(&h, 0.5);
    assert_true(p50 > 0.0135 && p50 < 0.0165);
}

static void test_histo_merge(void **st)
{
    histo a, b, c;
    double b1[] = {1, 2};
    double b2[] = {1, 3};
    GOK(histo_init(&a, b1, 2));
    GOK(histo_init(&b, b1, 2));
    GOK(histo_init(&c, b2, 2));
    histo_observe(&a, 0.5);
    histo_observe(&b, 1.5);
    histo_observe(&b, 9);
    GOK(histo_merge(&a, &b));
    assert_int_equal(a.count, 3);
    assert_int_equal(histo_cumulative(&a, 1), 2);
    assert_double_equal(a.sum, 11, 1e-12);
    assert_int_equal(histo_merge(&a, &c), GM_ERR_INVALID_ARG);
}

static void test_samples_exact(void **st)
{
    histo_samples s;
    histo_samples_init(&s, 0);
    histo_dist d;
    histo_samples_dist(&s, &d);
    assert_int_equal(d.n, 0);
    assert_double_equal(histo_samples_percentile(&s, 50), 0, 0);
    /* 1..101 shuffled: p50 = 51, p90 = 91, p99 = 100, numpy-style */
    for (int i = 0; i < 101; i++)
        GOK(histo_samples_add(&s, (double)((i * 37) % 101 + 1)));
    histo_samples_dist(&s, &d);
    assert_int_equal(d.n, 101);
    assert_double_equal(d.p50, 51, 1e-12);
    assert_double_equal(d.p90, 91, 1e-12);
    assert_double_equal(d.p99, 100, 1e-12);
    assert_double_equal(d.min, 1, 0);
    assert_double_equal(d.max, 101, 0);
    assert_double_equal(d.mean, 51, 1e-12);
    /* interpolation between order statistics: [1, 2, 3, 4] p50 = 2.5, p90 = 3.7 */
    double v[] = {1, 2, 3, 4};
    assert_double_equal(histo_percentile_sorted(v, 4, 50), 2.5, 1e-12);
    assert_double_equal(histo_percentile_sorted(v, 4, 90), 3.7, 1e-12);
    assert_double_equal(histo_percentile_sorted(v, 4, 0), 1, 0);
    assert_double_equal(histo_percentile_sorted(v, 4, 100), 4, 0);
    assert_double_equal(histo_percentile_sorted(v, 1, 50), 1, 0);
    assert_double_equal(histo_percentile_sorted(v, 0, 50), 0, 0);
    /* the sample order is kept: percentiles sort a copy */
    assert_double_equal(s.v[0], 1, 0);
    assert_double_equal(s.v[1], 38, 0);
    histo_samples_free(&s);
    assert_int_equal(s.n, 0);
    GOK(histo_samples_add(&s, 7)); /* usable after free */
    assert_double_equal(histo_samples_mean(&s), 7, 0);
    histo_samples_free(&s);
}

static void test_samples_window(void **st)
{
    histo_samples s;
    histo_samples_init(&s, 4);
    for (int i = 1; i <= 10; i++)
        GOK(histo_samples_add(&s, i));
    assert_int_equal(s.n, 4);
    assert_int_equal(s.total, 10);
    /* the last four: 7, 8, 9, 10 */
    histo_dist d;
    histo_samples_dist(&s, &d);
    assert_double_equal(d.min, 7, 0);
    assert_double_equal(d.max, 10, 0);
    assert_double_equal(d.mean, 8.5, 1e-12);
    assert_double_equal(histo_samples_percentile(&s, 50), 8.5, 1e-12);
    assert_true(s.cap <= 4);
    histo_samples_clear(&s);
    assert_int_equal(s.n, 0);
    GOK(histo_samples_add(&s, 3));
    assert_double_equal(histo_samples_percentile(&s, 99), 3, 0);
    histo_samples_free(&s);
    assert_int_equal(s.window, 4);
}

/* ---- jsonw ---- */

static void test_jsonw_structure(void **st)
{
    jsonw w = {0};
    jsonw_obj_begin(&w);
    jsonw_key(&w, "a");
    jsonw_int(&w, -5);
    jsonw_key(&w, "b");
    jsonw_arr_begin(&w);
    jsonw_uint(&w, 18446744073709551615ull);
    jsonw_num(&w, 0.1);
    jsonw_num(&w, NAN);
    jsonw_num(&w, -INFINITY);
    jsonw_bool(&w, true);
    jsonw_null(&w);
    jsonw_str(&w, NULL);
    jsonw_obj_begin(&w);
    jsonw_obj_end(&w);
    jsonw_arr_begin(&w);
    jsonw_arr_end(&w);
    jsonw_arr_end(&w);
    jsonw_key(&w, "c");
    jsonw_str(&w, "x");
    jsonw_obj_end(&w);
    assert_true(jsonw_ok(&w));
    assert_string_equal(w.p, "{\"a\":-5,\"b\":[18446744073709551615,0.1,null,null,true,null,null,{},[]],\"c\":\"x\"}");
    assert_int_equal(w.depth, 0);
    /* integers at their edges (written without printf) */
    jsonw_reset(&w);
    jsonw_arr_begin(&w);
    jsonw_int(&w, 0);
    jsonw_int(&w, INT64_MIN);
    jsonw_int(&w, INT64_MAX);
    jsonw_int(&w, -1);
    jsonw_uint(&w, 0);
    jsonw_uint(&w, 10);
    jsonw_arr_end(&w);
    assert_string_equal(w.p, "[0,-9223372036854775808,9223372036854775807,-1,0,10]");
    /* two top-level documents with raw framing between */
    jsonw_reset(&w);
    jsonw_rawz(&w, "data: ");
    jsonw_obj_begin(&w);
    jsonw_obj_end(&w);
    jsonw_rawz(&w, "\n\ndata: ");
    jsonw_obj_begin(&w);
    jsonw_key(&w, "k");
    jsonw_num(&w, 1e300);
    jsonw_obj_end(&w);
    assert_string_equal(w.p, "data: {}\n\ndata: {\"k\":1e+300}");
    jsonw_printf(&w, "%s%d", "|", 42);
    assert_string_equal(w.p + w.len - 3, "|42");
    jsonw_free(&w);
}

static void test_jsonw_escape(void **st)
{
    jsonw w = {0};
    /* quotes, backslash, controls, valid multi-byte, invalid bytes, NUL */
    const char in[] = "q\"b\\n\n\t\x01\x1f caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x99\x82 bad\xff\xc3 end\xed\xa0\x80 \xc0\xaf z\0y";
    jsonw_strn(&w, in, sizeof in - 1);
    assert_true(jsonw_ok(&w));
    const char *want = "\"q\\\"b\\\\n\\n\\t\\u0001\\u001f caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x99\x82 bad\xef\xbf\xbd\xef\xbf\xbd"
                       " end\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd z\\u0000y\"";
    assert_string_equal(w.p, want);
    assert_int_equal(jsonw_utf8_valid_prefix(w.p, w.len), w.len);
    /* cJSON reads it back: the valid characters are intact */
    cJSON *j = cJSON_ParseWithLength(w.p, w.len);
    assert_non_null(j);
    assert_true(cJSON_IsString(j));
    assert_non_null(strstr(j->valuestring, "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x99\x82"));
    cJSON_Delete(j);
    /* a long string forces growth */
    jsonw_reset(&w);
    char big[100000];
    memset(big, 'a', sizeof big);
    jsonw_strn(&w, big, sizeof big);
    assert_int_equal(w.len, sizeof big + 2);
    jsonw_free(&w);
    /* prefix validity */
    assert_int_equal(jsonw_utf8_valid_prefix("ab\xe6\x97", 4), 2);
    assert_int_equal(jsonw_utf8_valid_prefix("\xf4\x90\x80\x80", 4), 0); /* > U+10FFFF */
    assert_int_equal(jsonw_utf8_valid_prefix("\xe0\x80\x80", 3), 0);     /* overlong */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_histo_init_checks), cmocka_unit_test(test_histo_buckets),
        cmocka_unit_test(test_histo_quantile),    cmocka_unit_test(test_histo_merge),
        cmocka_unit_test(test_samples_exact),     cmocka_unit_test(test_samples_window),
        cmocka_unit_test(test_jsonw_structure),   cmocka_unit_test(test_jsonw_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
