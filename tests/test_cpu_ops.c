/* test_cpu_ops.c - each CPU op against a second, differently written double-precision computation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <complex.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/embed.h"
#include "kernels/cpu/geglu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope_kv.h"
#include "kernels/cpu/sample.h"

/* Deterministic normal-ish values in [-1, 1). */
static uint64_t g_state = 12345;
static float frand(void)
{
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void fill(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = frand() * scale;
}

/* Store float values as dt (rounding), and give back what they round to. */
static void *store(const float *x, int64_t n, gm_dtype dt, float *rounded)
{
    void *p = malloc((size_t)n * gm_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        switch (dt) {
        case GM_DT_BF16:
            ((uint16_t *)p)[i] = gm_f32_to_bf16(x[i]);
            rounded[i] = gm_bf16_to_f32(((uint16_t *)p)[i]);
            break;
        case GM_DT_F16:
            ((uint16_t *)p)[i] = gm_f32_to_f16(x[i]);
            rounded[i] = gm_f16_to_f32(((uint16_t *)p)[i]);
            break;
        default:
            ((float *)p)[i] = x[i];
            rounded[i] = x[i];
            break;
        }
    }
    return p;
}

static double rel_err(const float *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_embed(void **st)
{
    (void)st;
    const int64_t V = 50, H = 24;
    float tab[50 * 24], r[50 * 24];
    fill(tab, V * H, 1.0f);
    gm_dtype dts[] = {GM_DT_F32, GM_DT_BF16, GM_DT_F16};
    int32_t ids[4] = {0, 49, 7, 7};
    for (int d = 0; d < 3; d++) {
        void *p = store(tab, V * H, dts[d], r);
        float out[4 * 24];
        cpu_embed(p, dts[d], H, ids, 4, 45.25f, out);
        for (int t = 0; t < 4; t++)
            for (int i = 0; i < H; i++)
                assert_true(out[t * H + i] == (float)((double)r[ids[t] * H + i] * 45.25));
        free(p);
    }
}

static void test_rmsnorm(void **st)
{
    (void)st;
    const int64_t n = 3, dim = 67;
    float x[3 * 67], w[67], wr[67], out[3 * 67];
    fill(x, n * dim, 3.0f);
    fill(w, dim, 0.5f);
    void *wp = store(w, dim, GM_DT_BF16, wr);
    cpu_rmsnorm(x, wp, GM_DT_BF16, n, dim, 1e-6f, out);
    double ref[3 * 67];
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = dim - 1; i >= 0; i--) /* other order */
            ss += (double)x[t * dim + i] * x[t * dim + i];
        double rs = 1.0 / sqrt(ss / dim + 1e-6);
        for (int i = 0; i < dim; i++)
            ref[t * dim + i] = x[t * dim + i] * rs * (1.0 + wr[i]);
    }
    assert_true(rel_err(out, ref, n * dim) < 1e-6);
    /* in place */
    cpu_rmsnorm(x, wp, GM_DT_BF16, n, dim, 1e-6f, x);
    assert_memory_equal(x, out, sizeof out);
    free(wp);
}

/* y[t, j] = sum_k x[t, k] W[j, k] in double, k from the top down. */
static void naive_mm(const float *x, int64_t T, int64_t K, int64_t ldx, const float *W, int64_t ldw, int64_t N,
                     double *y)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = K - 1; k >= 0; k--)
                s += (double)x[t * ldx + k] * W[j * ldw + k];
            y[t * N + j] = s;
        }
}

static void test_matmul(void **st)
{
    (void)st;
    gm_dtype dts[] = {GM_DT_F32, GM_DT_BF16, GM_DT_F16};
    int64_t Ks[] = {1, 7, 8, 37, 130};
    for (int d = 0; d < 3; d++)
        for (int ki = 0; ki < 5; ki++) {
            int64_t K = Ks[ki], T = 17, N = 13, ldw = K + 5, ldx = K + 3, ldy = N + 2;
            float *x = calloc((size_t)(T * ldx), 4), *W = calloc((size_t)(N * ldw), 4), *Wr = calloc((size_t)(N * ldw), 4);
            fill(x, T * ldx, 1.0f);
            fill(W, N * ldw, 1.0f);
            void *Wp = store(W, N * ldw, dts[d], Wr);
            float *y = calloc((size_t)(T * ldy), 4);
            double *ref = calloc((size_t)(T * N), 8);
            double *yd = calloc((size_t)(T * ldy), 8);
            /* column slice: start at column 2 of the stored matrix, K wide */
            size_t esz = gm_dtype_size(dts[d]);
            const void *Wslice = (const char *)Wp + 2 * esz;
            cpu_matmul(x, T, K, ldx, Wslice, dts[d], ldw, N, y, ldy);
            cpu_matmul_f64(x, T, K, ldx, Wslice, dts[d], ldw, N, yd, ldy);
            naive_mm(x, T, K, ldx, Wr + 2, ldw, N, ref);
            for (int64_t t = 0; t < T; t++)
                for (int64_t j = 0; j < N; j++) {
                    double r = ref[t * N + j];
                    assert_true(fabs(y[t * ldy + j] - r) <= 1e-5 * (1 + fabs(r)) * sqrt((double)K));
                    assert_true(fabs(yd[t * ldy + j] - r) <= 1e-12 * (1 + fabs(r)));
                }
            /* batch invariance: each row alone, and column sub-ranges, give the same bits */
            for (int64_t t = 0; t < T; t++) {
                float y1[13];
                cpu_matmul(x + t * ldx, 1, K, ldx, Wslice, dts[d], ldw, N, y1, N);
                assert_memory_equal(y1, y + t * ldy, sizeof y1);
                double d1[13];
                cpu_matmul_f64(x + t * ldx, 1, K, ldx, Wslice, dts[d], ldw, N, d1, N);
                assert_memory_equal(d1, yd + t * ldy, sizeof d1);
            }
            float ys[5 * 3];
            cpu_matmul(x + 4 * ldx, 3, K, ldx, (const char *)Wslice + (size_t)(6 * ldw) * esz, dts[d], ldw, 5, ys, 5);
            for (int t = 0; t < 3; t++)
                assert_memory_equal(ys + t * 5, y + (4 + t) * ldy + 6, 5 * sizeof(float));
            free(x), free(W), free(Wr), free(Wp), free(y), free(ref), free(yd);
        }
}

/* A large matmul (threaded split) equals its rows and column ranges computed separately. */
static void test_matmul_large(void **st)
{
    (void)st;
    int64_t T = 9, K = 515, N = 1031;
    float *x = malloc((size_t)(T * K) * 4), *W = malloc((size_t)(N * K) * 4), *Wr = malloc((size_t)(N * K) * 4);
    fill(x, T * K, 1.0f);
    fill(W, N * K, 0.1f);
    void *Wp = store(W, N * K, GM_DT_BF16, Wr);
    float *y = malloc((size_t)(T * N) * 4), *y1 = malloc((size_t)N * 4);
    cpu_matmul(x, T, K, K, Wp, GM_DT_BF16, K, N, y, N);
    for (int64_t t = 0; t < T; t++) {
        cpu_matmul(x + t * K, 1, K, K, Wp, GM_DT_BF16, K, N, y1, N);
        assert_memory_equal(y1, y + t * N, (size_t)N * 4);
    }
    for (int64_t j0 = 0; j0 < N; j0 += 97) {
        int64_t nn = N - j0 < 97 ? N - j0 : 97;
        cpu_matmul(x, 1, K, K, (const uint16_t *)Wp + j0 * K, GM_DT_BF16, K, nn, y1, nn);
        assert_memory_equal(y1, y + j0, (size_t)nn * 4);
    }
    double *ref = malloc((size_t)(T * N) * 8);
    naive_mm(x, T, K, K, Wr, K, N, ref);
    assert_true(rel_err(y, ref, T * N) < 1e-6);
    free(x), free(W), free(Wr), free(Wp), free(y), free(y1), free(ref);
}

static void test_rope(void **st)
{
    (void)st;
    const int64_t T = 5, nh = 3, hd = 16;
    int32_t pos[5] = {0, 1, 63, 64, 1000};
    float x[5 * 3 * 16], o[5 * 3 * 16];
    fill(x, T * nh * hd, 1.0f);
    memcpy(o, x, sizeof x);
    cpu_rope(o, T, nh, hd, pos, 10000.0f);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < hd / 2; i++) {
                const float *v = x + (t * nh + h) * hd;
                /* pair (i, i + hd/2) as a complex number rotated by pos * theta^(-2i/hd) */
                float inv = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd); /* the documented float32 angle */
                double ang_f = (double)((float)pos[t] * inv);
                double ang_d = pos[t] * pow(10000.0, -2.0 * i / hd);
                double complex z = (v[i] + I * v[i + hd / 2]) * cexp(I * ang_f);
                double complex zd = (v[i] + I * v[i + hd / 2]) * cexp(I * ang_d);
                const float *r = o + (t * nh + h) * hd;
                assert_true(fabs(r[i] - creal(z)) < 1e-6 && fabs(r[i + hd / 2] - cimag(z)) < 1e-6);
                assert_true(fabs(r[i] - creal(zd)) < 2e-4 && fabs(r[i + hd / 2] - cimag(zd)) < 2e-4);
            }
    /* position 0 is the identity */
    assert_memory_equal(o, x, (size_t)(nh * hd) * sizeof(float));
}

static void test_gelu_geglu(void **st)
{
    (void)st;
    for (double v = -8; v <= 8; v += 0.37) {
        double r = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
        assert_true(fabs(cpu_gelu_tanh((float)v) - r) < 1e-6 * (1 + fabs(r)));
        /* close to the exact erf GELU */
        assert_true(fabs(cpu_gelu_tanh((float)v) - 0.5 * v * (1 + erf(v / sqrt(2)))) < 1e-3);
    }
    assert_true(cpu_gelu_tanh(0.0f) == 0.0f);
    float g[6] = {-1, 0, 1, 2, 3, -3}, u[6] = {1, 2, 3, 4, 5, 6}, o[6];
    cpu_geglu(g, u, 2, 3, o);
    for (int i = 0; i < 6; i++)
        assert_true(o[i] == cpu_gelu_tanh(g[i]) * u[i]);
    cpu_geglu(g, u, 2, 3, g); /* aliasing */
    assert_memory_equal(g, o, sizeof o);
}

/* Dense causal attention in double over full matrices: out [P, nh, hd] for all P positions. */
static void dense_attention(const float *q, const float *k, const float *v, int64_t P, int64_t nh, int64_t nkv,
                            int64_t hd, double *out)
{
    double *S = malloc((size_t)(P * P) * sizeof(double));
    for (int64_t h = 0; h < nh; h++) {
        int64_t g = h * nkv / nh;
        for (int64_t i = 0; i < P; i++)
            for (int64_t j = 0; j < P; j++) {
                double s = 0;
                for (int64_t d = 0; d < hd; d++)
                    s += (double)q[(i * nh + h) * hd + d] * k[(j * nkv + g) * hd + d];
                S[i * P + j] = j <= i ? s / sqrt((double)hd) : -INFINITY;
            }
        for (int64_t i = 0; i < P; i++) {
            double mx = -INFINITY, z = 0;
            for (int64_t j = 0; j < P; j++)
                mx = fmax(mx, S[i * P + j]);
            for (int64_t j = 0; j < P; j++)
                z += (S[i * P + j] = exp(S[i * P + j] - mx));
            for (int64_t d = 0; d < hd; d++) {
                double a = 0;
                for (int64_t j = 0; j < P; j++)
                    a += S[i * P + j] / z * v[(j * nkv + g) * hd + d];
                out[(i * nh + h) * hd + d] = a;
            }
        }
    }
    free(S);
}

static void check_attention(int64_t nh, int64_t nkv, int64_t hd, int32_t bs)
{
    const int64_t P = 37;
    int64_t nblk = (P + bs - 1) / bs, pool_blocks = nblk + 3;
    int32_t bt[64];
    for (int64_t i = 0; i < nblk; i++) /* scattered: reversed, skipping block 1 */
        bt[i] = (int32_t)(pool_blocks - 1 - i);
    float *q = malloc((size_t)(P * nh * hd) * 4), *k = malloc((size_t)(P * nkv * hd) * 4),
          *v = malloc((size_t)(P * nkv * hd) * 4), *o = malloc((size_t)(P * nh * hd) * 4);
    fill(q, P * nh * hd, 2.0f);
    fill(k, P * nkv * hd, 2.0f);
    fill(v, P * nkv * hd, 1.0f);
    size_t pool_n = (size_t)(pool_blocks * nkv * bs * hd);
    float *kp = calloc(pool_n, 4), *vp = calloc(pool_n, 4);
    /* write and attend in chunks: 1, 10, 1, rest */
    int64_t chunks[] = {1, 10, 1, P - 12};
    int64_t s = 0;
    for (int c = 0; c < 4; c++) {
        cpu_kv_write(kp, vp, bt, bs, (int32_t)s, chunks[c], nkv, hd, k + s * nkv * hd, v + s * nkv * hd);
        cpu_attention_paged(q + s * nh * hd, chunks[c], (int32_t)s, nh, nkv, hd, kp, vp, bt, bs,
                            1.0f / sqrtf((float)hd), o + s * nh * hd);
        s += chunks[c];
    }
    double *ref = malloc((size_t)(P * nh * hd) * 8);
    dense_attention(q, k, v, P, nh, nkv, hd, ref);
    assert_true(rel_err(o, ref, P * nh * hd) < 1e-5);
    /* the pool holds each key where the block table says */
    int64_t p = 20, g = nkv - 1;
    const float *kk = kp + ((bt[p / bs] * nkv + g) * bs + p % bs) * hd;
    assert_memory_equal(kk, k + (p * nkv + g) * hd, (size_t)hd * 4);
    free(q), free(k), free(v), free(o), free(kp), free(vp), free(ref);
}

static void test_attention(void **st)
{
    (void)st;
    check_attention(4, 4, 16, 4);  /* MHA */
    check_attention(4, 2, 16, 16); /* GQA */
    check_attention(8, 1, 32, 5);  /* MQA, odd block size */
}

static void test_argmax(void **st)
{
    (void)st;
    float x[6] = {1, 3, 3, -1, 3, 2};
    assert_int_equal(cpu_argmax(x, 6), 1);
    gm_sampling g = GM_SAMPLING_GREEDY;
    assert_int_equal(cpu_sample(x, 6, &g, 0), 1);
}

static void softmax_d(const float *l, int n, double t, double *p)
{
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, l[i] / t);
    for (int i = 0; i < n; i++)
        z += (p[i] = exp(l[i] / t - mx));
    for (int i = 0; i < n; i++)
        p[i] /= z;
}

static void test_sampling(void **st)
{
    (void)st;
    enum { V = 6, DRAWS = 40000 };
    float l[V] = {0.5f, 2.0f, -1.0f, 1.2f, 1.9f, 0.0f};
    /* greedy and top_k = 1 are argmax */
    gm_sampling s = {1.0f, 1, 1.0f, 7};
    for (uint64_t c = 0; c < 50; c++)
        assert_int_equal(cpu_sample(l, V, &s, c), 1);
    s = (gm_sampling){0.0f, 0, 1.0f, 7};
    assert_int_equal(cpu_sample(l, V, &s, 3), 1);
    /* tiny top_p keeps only the most likely */
    s = (gm_sampling){1.0f, 0, 1e-6f, 9};
    for (uint64_t c = 0; c < 50; c++)
        assert_int_equal(cpu_sample(l, V, &s, c), 1);
    /* same (seed, counter), same draw; a different seed changes some draws */
    s = (gm_sampling){1.0f, 0, 1.0f, 42};
    gm_sampling s2 = {1.0f, 0, 1.0f, 43};
    int differ = 0;
    for (uint64_t c = 0; c < 100; c++) {
        assert_int_equal(cpu_sample(l, V, &s, c), cpu_sample(l, V, &s, c));
        differ += cpu_sample(l, V, &s, c) != cpu_sample(l, V, &s2, c);
    }
    assert_true(differ > 10);
    /* frequencies follow softmax(l / T) */
    double temps[] = {1.0, 0.5, 2.0};
    for (int ti = 0; ti < 3; ti++) {
        double p[V];
        softmax_d(l, V, temps[ti], p);
        int cnt[V] = {0};
        s = (gm_sampling){(float)temps[ti], 0, 1.0f, 1234};
        for (uint64_t c = 0; c < DRAWS; c++)
            cnt[cpu_sample(l, V, &s, c)]++;
        for (int i = 0; i < V; i++) {
            double f = (double)cnt[i] / DRAWS, sd = sqrt(p[i] * (1 - p[i]) / DRAWS);
            assert_true(fabs(f - p[i]) < 5 * sd + 1e-4);
        }
    }
    /* top_k = 2: ids 1 and 4 only, in ratio exp(2.0) : exp(1.9) */
    {
        int cnt[V] = {0};
        s = (gm_sampling){1.0f, 2, 1.0f, 5};
        for (uint64_t c = 0; c < DRAWS; c++)
            cnt[cpu_sample(l, V, &s, c)]++;
        assert_int_equal(cnt[0] + cnt[2] + cnt[3] + cnt[5], 0);
        double p1 = exp(2.0) / (exp(2.0) + exp(1.9)), f1 = (double)cnt[1] / DRAWS;
        assert_true(fabs(f1 - p1) < 5 * sqrt(p1 * (1 - p1) / DRAWS));
    }
    /* top_p: probabilities 0.5, 0.3, 0.2 and top_p 0.7 keep the first two (0.8 >= 0.7) */
    {
        float l3[3] = {logf(0.3f), logf(0.5f), logf(0.2f)};
        int cnt[3] = {0};
        s = (gm_sampling){1.0f, 0, 0.7f, 77};
        for (uint64_t c = 0; c < DRAWS; c++)
            cnt[cpu_sample(l3, 3, &s, c)]++;
        assert_int_equal(cnt[2], 0);
        double p1 = 0.5 / 0.8, f1 = (double)cnt[1] / DRAWS;
        assert_true(fabs(f1 - p1) < 5 * sqrt(p1 * (1 - p1) / DRAWS));
        /* top_p 0.8 exactly reaches the first two as well; 0.81 needs all three */
        s.top_p = 0.81f;
        int third = 0;
        for (uint64_t c = 0; c < DRAWS; c++)
            third += cpu_sample(l3, 3, &s, c) == 2;
        assert_true(third > DRAWS / 10);
    }
    /* a large vocabulary with top_k and top_p together stays inside the kept set */
    {
        enum { BV = 5000 };
        float *lb = malloc(BV * sizeof(float));
        fill(lb, BV, 4.0f);
        lb[4321] = 30.0f; /* dominant */
        s = (gm_sampling){1.0f, 50, 0.9f, 3};
        for (uint64_t c = 0; c < 200; c++)
            assert_int_equal(cpu_sample(lb, BV, &s, c), 4321);
        free(lb);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed),     cmocka_unit_test(test_rmsnorm),    cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_large), cmocka_unit_test(test_rope),   cmocka_unit_test(test_gelu_geglu),
        cmocka_unit_test(test_attention), cmocka_unit_test(test_argmax),    cmocka_unit_test(test_sampling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
