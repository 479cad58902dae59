/* test_nonfinite.c - NaN and Inf never become tokens (issue 14, risk "NaN or corrupt weights"):
 * the load check finds a non-finite value in every float dtype a checkpoint may hold (F64, F32,
 * F16, BF16, F8_E4M3, F8_E5M2), names the tensor and element, splits the work over tp ranks and
 * leaves integers alone; the CPU sampler answers GM_SAMPLE_NONFINITE for a row with a NaN or +Inf
 * or nothing but -Inf (greedy and sampled) and samples as before otherwise; the run-ahead feed
 * turns that answer into a valid id. (The CUDA sampler is tested against these rules by
 * test_gpu_ops' sampling cases on the GPU machine.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/safetensors.h"
#include "kernels/cpu/sample.h"
#include "worker/engine_feed.h"
#include "worker/weights.h"

#define N 9000 /* past the checker's 4096-element blocks */

/* A tensor of n elements of dt, all 0.5 (or 1 for integers), with `bits` at element `at` (-1 = none). */
static void *tensor_bytes(gm_dtype dt, int64_t n, int64_t at, uint64_t bits)
{
    size_t es = gm_dtype_size(dt);
    uint8_t *p = calloc((size_t)n, es);
    for (int64_t i = 0; i < n; i++) {
        uint64_t v = dt == GM_DT_F64 ? 0x3fe0000000000000ull
                     : dt == GM_DT_F32 ? 0x3f000000u
                     : dt == GM_DT_F16 ? 0x3800u
                     : dt == GM_DT_BF16 ? 0x3f00u
                     : dt == GM_DT_F8_E4M3 ? 0x30u
                     : dt == GM_DT_F8_E5M2 ? 0x38u
                                           : 1u;
        memcpy(p + i * (int64_t)es, &v, es);
    }
    if (at >= 0)
        memcpy(p + at * (int64_t)es, &bits, es);
    return p;
}

/* A one-tensor in-memory model "w.<dtype>"; the check's status; its message into msg. */
static gm_status check_one(gm_dtype dt, int64_t at, uint64_t bits, char *msg, size_t cap)
{
    st_model *m = st_model_new_mem("mem");
    char name[64];
    snprintf(name, sizeof name, "w.%s", gm_dtype_name(dt));
    int64_t shape[1] = {N};
    assert_int_equal(st_model_add_owned(m, name, dt, 1, shape, tensor_bytes(dt, N, at, bits)), GM_OK);
    assert_int_equal(st_model_seal(m), GM_OK);
    gm_clear_error();
    gm_status st = gm_weights_check_finite(m, 0, 1);
    snprintf(msg, cap, "%s", gm_last_error());
    st_model_destroy(&m);
    return st;
}

static void test_weights_every_dtype(void **state)
{
    (void)state;
    struct {
        gm_dtype dt;
        uint64_t bad[3];  /* non-finite patterns (0 = unused) */
        uint64_t good[3]; /* finite extremes that must pass */
    } cases[] = {
        {GM_DT_F64, {0x7ff8000000000000ull, 0xfff0000000000000ull, 0x7ff0000000000001ull},
         {0x7fefffffffffffffull, 0x8000000000000000ull, 1}},
        {GM_DT_F32, {0x7fc00000u, 0x7f800000u, 0xff800000u}, {0x7f7fffffu, 0x80000000u, 1}},
        {GM_DT_F16, {0x7e00u, 0x7c00u, 0xfc00u}, {0x7bffu, 0x8000u, 1}},
        {GM_DT_BF16, {0x7fc0u, 0x7f80u, 0xff80u}, {0x7f7fu, 0x8000u, 1}},
        {GM_DT_F8_E4M3, {0x7fu, 0xffu, 0}, {0x7eu, 0xfeu, 0x80u}},
        {GM_DT_F8_E5M2, {0x7cu, 0x7eu, 0xfcu}, {0x7bu, 0xfbu, 0x80u}},
    };
    char msg[512];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        assert_int_equal(check_one(cases[c].dt, -1, 0, msg, sizeof msg), GM_OK);
        for (int k = 0; k < 3; k++) {
            if (cases[c].good[k])
                assert_int_equal(check_one(cases[c].dt, 5000, cases[c].good[k], msg, sizeof msg), GM_OK);
            if (!cases[c].bad[k])
                continue;
            if (check_one(cases[c].dt, 5000, cases[c].bad[k], msg, sizeof msg) != GM_ERR_FORMAT)
                fail_msg("%s bits 0x%llx passed the check", gm_dtype_name(cases[c].dt),
                         (unsigned long long)cases[c].bad[k]);
            char want[64];
            snprintf(want, sizeof want, "tensor w.%s: element 5000", gm_dtype_name(cases[c].dt));
            if (!strstr(msg, want))
                fail_msg("message '%s' does not say '%s'", msg, want);
        }
    }
    /* integers (AWQ codes) are never judged */
    assert_int_equal(check_one(GM_DT_I32, 5000, 0x7fc00000u, msg, sizeof msg), GM_OK);
}

static void test_weights_ranks_share(void **state)
{
    (void)state;
    st_model *m = st_model_new_mem("mem");
    int64_t shape[1] = {N};
    assert_int_equal(st_model_add_owned(m, "a", GM_DT_BF16, 1, shape, tensor_bytes(GM_DT_BF16, N, 7, 0x7fc0)), GM_OK);
    assert_int_equal(st_model_add_owned(m, "b", GM_DT_BF16, 1, shape, tensor_bytes(GM_DT_BF16, N, -1, 0)), GM_OK);
    assert_int_equal(st_model_seal(m), GM_OK);
    /* tensor i is rank (i % size)'s: with tp 2, only rank 0 reads "a" */
    gm_status r0 = gm_weights_check_finite(m, 0, 2), r1 = gm_weights_check_finite(m, 1, 2);
    assert_true((r0 == GM_ERR_FORMAT) != (r1 == GM_ERR_FORMAT));
    assert_int_equal(gm_weights_check_finite(m, 0, 1), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "tensor a: element 7"));
    assert_int_not_equal(gm_weights_check_finite(m, 2, 2), GM_OK); /* bad arguments */
    st_model_destroy(&m);
}

static void test_sampler(void **state)
{
    (void)state;
    enum { V = 1000 };
    float *lg = malloc(V * sizeof *lg);
    gm_sampling greedy = GM_SAMPLING_GREEDY, hot = {0.8f, 40, 0.9f, 7};
    const gm_sampling *ss[2] = {&greedy, &hot};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < V; i++)
            lg[i] = (float)((i * 37) % 101) / 10.0f;
        lg[123] = 20.0f;
        assert_int_equal(cpu_sample(lg, V, ss[k], 5), 123); /* a clear winner, as before */
        lg[500] = -INFINITY;                               /* a masked token is fine */
        assert_int_equal(cpu_sample(lg, V, ss[k], 5), 123);
        lg[999] = NAN;
        assert_int_equal(cpu_sample(lg, V, ss[k], 5), GM_SAMPLE_NONFINITE);
        lg[999] = INFINITY;
        assert_int_equal(cpu_sample(lg, V, ss[k], 5), GM_SAMPLE_NONFINITE);
        lg[0] = NAN, lg[999] = 0.0f; /* at id 0 too (argmax's start) */
        assert_int_equal(cpu_sample(lg, V, ss[k], 5), GM_SAMPLE_NONFINITE);
        for (int i = 0; i < V; i++)
            lg[i] = -INFINITY;
        assert_int_equal(cpu_sample(lg, V, ss[k], 5), GM_SAMPLE_NONFINITE);
    }
    free(lg);
}

static void test_feed(void **state)
{
    (void)state;
    gm_feed f;
    assert_int_equal(gm_feed_init(&f, 4), GM_OK);
    int32_t t = 5;
    gm_seq_step s[2];
    memset(s, 0, sizeof s);
    s[0].slot = 1, s[0].tokens = &t, s[0].n_tokens = 1, s[0].start_pos = 3, s[0].logits_mode = GM_LOGITS_LAST;
    s[1] = s[0];
    s[1].slot = 2;
    int32_t sampled[2] = {GM_SAMPLE_NONFINITE, 42};
    gm_feed_record(&f, s, 2, sampled);
    assert_int_equal(f.last[1], 0); /* a valid id to feed: the next step of that slot still runs */
    assert_int_equal(f.last[2], 42);
    gm_feed_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights_every_dtype),
        cmocka_unit_test(test_weights_ranks_share),
        cmocka_unit_test(test_sampler),
        cmocka_unit_test(test_feed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
