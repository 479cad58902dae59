/* test_cpu_gemma23.c - the Gemma 2/3 CPU ops (kernels/cpu/cpu_gemma23.h) against a second, differently
 * written double-precision computation: dense attention with an explicit mask over an unpaged KV. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope_kv.h"

static uint64_t g_state = 777;
static float frand(void) /* [-1, 1) */
{
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void test_softcap(void **st)
{
    (void)st;
    float x[5] = {0.0f, 1.0f, -1.0f, 100.0f, -1e30f};
    cpu_softcap(x, 5, 50.0f);
    assert_true(x[0] == 0.0f);
    assert_true(fabs(x[1] - 50.0 * tanh(1.0 / 50.0)) < 1e-6);
    assert_true(x[2] == -x[1]);
    assert_true(fabs(x[3] - 50.0 * tanh(2.0)) < 1e-4);
    assert_true(x[4] == -50.0f); /* saturates, never exceeds the cap */
}

static void test_window_start(void **st)
{
    (void)st;
    assert_int_equal(cpu_window_start(0, 4), 0);
    assert_int_equal(cpu_window_start(3, 4), 0);
    assert_int_equal(cpu_window_start(4, 4), 1); /* keys 1..4: exactly 4 */
    assert_int_equal(cpu_window_start(100, 4), 97);
    assert_int_equal(cpu_window_start(100, 0), 0);
    assert_int_equal(cpu_window_start(5, 1), 5); /* a window of one sees only itself */
}

static void test_head_rmsnorm(void **st)
{
    (void)st;
    enum { T = 3, NH = 2, HD = 8 };
    float x[T * NH * HD], w[HD], ref[T * NH * HD];
    for (int i = 0; i < T * NH * HD; i++)
        x[i] = frand() * 3.0f;
    for (int i = 0; i < HD; i++)
        w[i] = frand() * 0.5f;
    for (int r = 0; r < T * NH; r++) {
        double ss = 0;
        for (int i = 0; i < HD; i++)
            ss += (double)x[r * HD + i] * x[r * HD + i];
        double inv = 1.0 / sqrt(ss / HD + 1e-6);
        for (int i = 0; i < HD; i++)
            ref[r * HD + i] = (float)(x[r * HD + i] * inv * (1.0 + w[i]));
    }
    cpu_head_rmsnorm(x, T, NH, HD, w, GM_DT_F32, 1e-6f);
    for (int i = 0; i < T * NH * HD; i++)
        assert_true(fabsf(x[i] - ref[i]) <= 1e-5f * (1.0f + fabsf(ref[i])));
}

static void test_rope_scaled(void **st)
{
    (void)st;
    enum { T = 5, NH = 3, HD = 16 };
    int32_t pos[T] = {0, 1, 7, 100, 4000};
    float a[T * NH * HD], b[T * NH * HD];
    for (int i = 0; i < T * NH * HD; i++)
        a[i] = b[i] = frand();
    /* scale 1 is cpu_rope, bit for bit */
    cpu_rope(a, T, NH, HD, pos, 10000.0f);
    cpu_rope_scaled(b, T, NH, HD, pos, 10000.0f, 1.0f);
    assert_memory_equal(a, b, sizeof a);
    /* scale 8: the rotation of position p / 8, computed in double */
    float x[T * NH * HD], y[T * NH * HD];
    for (int i = 0; i < T * NH * HD; i++)
        x[i] = y[i] = frand();
    cpu_rope_scaled(y, T, NH, HD, pos, 1e6f, 8.0f);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < HD / 2; i++) {
                const float *v = x + (t * NH + h) * HD;
                double ang = pos[t] / 8.0 * pow(1e6, -2.0 * i / HD);
                double lo = v[i] * cos(ang) - v[i + HD / 2] * sin(ang), hi = v[i + HD / 2] * cos(ang) + v[i] * sin(ang);
                const float *g = y + (t * NH + h) * HD;
                assert_true(fabs(g[i] - lo) < 2e-4 && fabs(g[i + HD / 2] - hi) < 2e-4);
            }
}

/* Dense reference: q [T, NH, HD] at positions p0.., keys/values [P, NKV, HD] unpaged. */
static void dense_attention(const float *q, int T, int p0, int NH, int NKV, int HD, const float *k, const float *v,
                            float scale, float cap, int window, double *out)
{
    double *s = malloc(sizeof(double) * (size_t)(p0 + T));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV), p = p0 + t;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= p; j++) {
                double d = 0;
                for (int i = 0; i < HD; i++)
                    d += (double)q[(t * NH + h) * HD + i] * k[(j * NKV + g) * HD + i];
                d *= scale;
                if (cap > 0)
                    d = cap * tanh(d / cap);
                int masked = window > 0 && j <= p - window;
                s[j] = masked ? -INFINITY : d;
                if (s[j] > mx)
                    mx = s[j];
            }
            for (int j = 0; j <= p; j++)
                sum += s[j] = exp(s[j] - mx);
            for (int i = 0; i < HD; i++) {
                double o = 0;
                for (int j = 0; j <= p; j++)
                    o += s[j] * v[(j * NKV + g) * HD + i];
                out[(t * NH + h) * HD + i] = o / sum;
            }
        }
    free(s);
}

/* Paged attention with soft-cap and window vs the dense reference, as a prefill chunk and as decode steps. */
static void test_attention_ex(void **st)
{
    (void)st;
    enum { NH = 4, NKV = 2, HD = 16, P = 23, BS = 3, NB = 8 };
    float k[P * NKV * HD], v[P * NKV * HD], q[P * NH * HD];
    for (int i = 0; i < P * NKV * HD; i++)
        k[i] = frand() * 2.0f, v[i] = frand();
    for (int i = 0; i < P * NH * HD; i++)
        q[i] = frand() * 2.0f;
    int32_t bt[NB] = {5, 2, 7, 0, 6, 1, 3, 4}; /* physical blocks out of order */
    float *kp = calloc(NB * NKV * BS * HD, sizeof(float)), *vp = calloc(NB * NKV * BS * HD, sizeof(float));
    cpu_kv_write(kp, vp, bt, BS, 0, P, NKV, HD, k, v);
    const struct { float cap; int window; } cases[] = {{0, 0}, {0.5f, 0}, {0, 5}, {0.5f, 5}, {0, 1}, {2.0f, 40}};
    float out[P * NH * HD];
    double ref[P * NH * HD];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float cap = cases[c].cap;
        int w = cases[c].window;
        int p0 = 9; /* a chunk of queries at 9..22 over keys 0..22 */
        dense_attention(q + p0 * NH * HD, P - p0, p0, NH, NKV, HD, k, v, 0.3f, cap, w, ref);
        cpu_attention_paged_ex(q + p0 * NH * HD, P - p0, p0, NH, NKV, HD, kp, vp, bt, BS, 0.3f, cap, w, out);
        for (int i = 0; i < (P - p0) * NH * HD; i++)
            if (fabs(out[i] - ref[i]) > 2e-6)
                fail_msg("cap %g window %d: element %d: %g vs %g", cap, w, i, out[i], ref[i]);
        for (int t = p0; t < P; t++) { /* one query per step reads the same keys: the same values */
            float one[NH * HD];
            cpu_attention_paged_ex(q + t * NH * HD, 1, t, NH, NKV, HD, kp, vp, bt, BS, 0.3f, cap, w, one);
            assert_memory_equal(one, out + (t - p0) * NH * HD, sizeof one);
        }
    }
    /* no cap and no window: Gemma 1's attention, to float32 rounding */
    float g1[P * NH * HD];
    cpu_attention_paged(q, P, 0, NH, NKV, HD, kp, vp, bt, BS, 0.3f, g1);
    cpu_attention_paged_ex(q, P, 0, NH, NKV, HD, kp, vp, bt, BS, 0.3f, 0.0f, 0, out);
    for (int i = 0; i < P * NH * HD; i++)
        assert_true(fabsf(out[i] - g1[i]) < 1e-5f);
    free(kp);
    free(vp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softcap),     cmocka_unit_test(test_window_start),
        cmocka_unit_test(test_head_rmsnorm), cmocka_unit_test(test_rope_scaled),
        cmocka_unit_test(test_attention_ex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
