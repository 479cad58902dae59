/* gemm.c - y = x . W^T with float32 (or float64) dot products whose order depends only on K.
 *
 * Every output is one dot product over k = 0..K-1 computed in 8 lanes
 * (lane l takes k = 8i + l), the lanes folded as ((s0+s1)+(s2+s3)) with
 * s_l = lane_l + lane_{l+4}, then the K % 8 tail added in order. Which row
 * of x, which thread and which tile an output belongs to never changes that
 * order, so results are bit-identical for any batch size T or thread count.
 * Weights are converted to float32 one tile of rows at a time and reused
 * across all T rows of x (this loop is nearly all of the CPU backend's time). */
#include "gemm.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

typedef float v4f __attribute__((vector_size(16)));
typedef float v2f __attribute__((vector_size(8)));
typedef double v2d __attribute__((vector_size(16)));

#define TILE 4 /* weight rows converted and dotted together */

static inline v4f ld4(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- weight conversion ---- */

static float g_f16_lut[65536], g_e4m3_lut[256];
static pthread_once_t g_lut_once = PTHREAD_ONCE_INIT;

static void lut_init(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        g_f16_lut[i] = gm_f16_to_f32((uint16_t)i);
    for (uint32_t i = 0; i < 256; i++)
        g_e4m3_lut[i] = gm_e4m3_to_f32((uint8_t)i);
}

/* dst [K] f32 = row of W (dt) starting at src. */
static void conv_row(const void *src, gm_dtype dt, int64_t K, float *dst)
{
    switch (dt) {
    case GM_DT_F32:
        memcpy(dst, src, (size_t)K * sizeof(float));
        break;
    case GM_DT_BF16: {
        const uint16_t *s = src;
        for (int64_t k = 0; k < K; k++) {
            uint32_t u = (uint32_t)s[k] << 16;
            memcpy(&dst[k], &u, 4);
        }
        break;
    }
    case GM_DT_F16: {
        const uint16_t *s = src;
        for (int64_t k = 0; k < K; k++)
            dst[k] = g_f16_lut[s[k]];
        break;
    }
    case GM_DT_F8_E4M3: {
        const uint8_t *s = src;
        for (int64_t k = 0; k < K; k++)
            dst[k] = g_e4m3_lut[s[k]];
        break;
    }
    default:
        gm_to_f32(dt, src, dst, K);
        break;
    }
}

/* ---- dot products (the fixed order described at the top) ---- */

static inline float fold_f(v4f a, v4f b)
{
    v4f s = a + b;
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* Double lanes as four pairs: p0 = lanes 0-1, p1 = 2-3, p2 = 4-5, p3 = 6-7. */
static inline double fold_d(v2d p0, v2d p1, v2d p2, v2d p3)
{
    v2d lo = p0 + p2, hi = p1 + p3; /* s_l = lane_l + lane_{l+4} */
    return (lo[0] + lo[1]) + (hi[0] + hi[1]);
}

static float dot1_f(const float *x, const float *w, int64_t K)
{
    v4f a = {0, 0, 0, 0}, b = {0, 0, 0, 0};
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        a += ld4(x + k) * ld4(w + k);
        b += ld4(x + k + 4) * ld4(w + k + 4);
    }
    float s = fold_f(a, b);
    for (; k < K; k++)
        s += x[k] * w[k];
    return s;
}

/* Four weight rows at once: same per-output order as dot1_f, x loaded once. */
static void dot4_f(const float *x, const float *const w[TILE], int64_t K, float out[TILE])
{
    v4f a0 = {0, 0, 0, 0}, b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        v4f xa = ld4(x + k), xb = ld4(x + k + 4);
        a0 += xa * ld4(w[0] + k);
        b0 += xb * ld4(w[0] + k + 4);
        a1 += xa * ld4(w[1] + k);
        b1 += xb * ld4(w[1] + k + 4);
        a2 += xa * ld4(w[2] + k);
        b2 += xb * ld4(w[2] + k + 4);
        a3 += xa * ld4(w[3] + k);
        b3 += xb * ld4(w[3] + k + 4);
    }
    float s0 = fold_f(a0, b0), s1 = fold_f(a1, b1), s2 = fold_f(a2, b2), s3 = fold_f(a3, b3);
    for (; k < K; k++) {
        s0 += x[k] * w[0][k];
        s1 += x[k] * w[1][k];
        s2 += x[k] * w[2][k];
        s3 += x[k] * w[3][k];
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* ---- bf16 rows read directly (small T): widening is exact, so the
 * arithmetic is the same as over a converted row ---- */

typedef uint16_t v8u16 __attribute__((vector_size(16)));

/* 8 bf16 at p -> floats [0..3] in *lo, [4..7] in *hi. */
static inline void ld_bf16x8(const uint16_t *p, v4f *lo, v4f *hi)
{
    v8u16 v, z = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(&v, p, sizeof v);
    v8u16 a = __builtin_shufflevector(z, v, 0, 8, 1, 9, 2, 10, 3, 11); /* little endian: v_i << 16 */
    v8u16 b = __builtin_shufflevector(z, v, 4, 12, 5, 13, 6, 14, 7, 15);
    memcpy(lo, &a, sizeof a);
    memcpy(hi, &b, sizeof b);
}

static inline float bf16f(uint16_t h) { return gm_bf16_to_f32(h); }

static void dot4_bf16(const float *x, const uint16_t *const w[TILE], int64_t K, float out[TILE])
{
    v4f a0 = {0, 0, 0, 0}, b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0, wl, wh;
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        v4f xa = ld4(x + k), xb = ld4(x + k + 4);
        ld_bf16x8(w[0] + k, &wl, &wh);
        a0 += xa * wl;
        b0 += xb * wh;
        ld_bf16x8(w[1] + k, &wl, &wh);
        a1 += xa * wl;
        b1 += xb * wh;
        ld_bf16x8(w[2] + k, &wl, &wh);
        a2 += xa * wl;
        b2 += xb * wh;
        ld_bf16x8(w[3] + k, &wl, &wh);
        a3 += xa * wl;
        b3 += xb * wh;
    }
    float s0 = fold_f(a0, b0), s1 = fold_f(a1, b1), s2 = fold_f(a2, b2), s3 = fold_f(a3, b3);
    for (; k < K; k++) {
        s0 += x[k] * bf16f(w[0][k]);
        s1 += x[k] * bf16f(w[1][k]);
        s2 += x[k] * bf16f(w[2][k]);
        s3 += x[k] * bf16f(w[3][k]);
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

static float dot1_bf16(const float *x, const uint16_t *w, int64_t K)
{
    v4f a = {0, 0, 0, 0}, b = {0, 0, 0, 0}, wl, wh;
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        ld_bf16x8(w + k, &wl, &wh);
        a += ld4(x + k) * wl;
        b += ld4(x + k + 4) * wh;
    }
    float s = fold_f(a, b);
    for (; k < K; k++)
        s += x[k] * bf16f(w[k]);
    return s;
}

/* Two floats at p as doubles. */
static inline v2d ld2d(const float *p)
{
    v2f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, v2d);
}

static double dot1_d(const float *x, const float *w, int64_t K)
{
    v2d p0 = {0, 0}, p1 = p0, p2 = p0, p3 = p0;
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        p0 += ld2d(x + k) * ld2d(w + k);
        p1 += ld2d(x + k + 2) * ld2d(w + k + 2);
        p2 += ld2d(x + k + 4) * ld2d(w + k + 4);
        p3 += ld2d(x + k + 6) * ld2d(w + k + 6);
    }
    double s = fold_d(p0, p1, p2, p3);
    for (; k < K; k++)
        s += (double)x[k] * (double)w[k];
    return s;
}

static void dot4_d(const float *x, const float *const w[TILE], int64_t K, double out[TILE])
{
    v2d z = {0, 0}, p[TILE][4];
    for (int r = 0; r < TILE; r++)
        p[r][0] = p[r][1] = p[r][2] = p[r][3] = z;
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        v2d x0 = ld2d(x + k), x1 = ld2d(x + k + 2), x2 = ld2d(x + k + 4), x3 = ld2d(x + k + 6);
        for (int r = 0; r < TILE; r++) {
            p[r][0] += x0 * ld2d(w[r] + k);
            p[r][1] += x1 * ld2d(w[r] + k + 2);
            p[r][2] += x2 * ld2d(w[r] + k + 4);
            p[r][3] += x3 * ld2d(w[r] + k + 6);
        }
    }
    for (int r = 0; r < TILE; r++) {
        double s = fold_d(p[r][0], p[r][1], p[r][2], p[r][3]);
        for (int64_t kk = k; kk < K; kk++)
            s += (double)x[kk] * (double)w[r][kk];
        out[r] = s;
    }
}

/* Without scratch memory: convert 8 weights at a time on the fly; same arithmetic as dot1_*. */
static float dot1_conv_f(const float *x, const void *W, gm_dtype dt, int64_t K)
{
    size_t esz = gm_dtype_size(dt);
    float wv[8];
    v4f a = {0, 0, 0, 0}, b = {0, 0, 0, 0};
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        conv_row((const char *)W + (size_t)k * esz, dt, 8, wv);
        a += ld4(x + k) * ld4(wv);
        b += ld4(x + k + 4) * ld4(wv + 4);
    }
    float s = fold_f(a, b);
    if (k < K)
        conv_row((const char *)W + (size_t)k * esz, dt, K - k, wv);
    for (int64_t i = 0; k < K; k++, i++)
        s += x[k] * wv[i];
    return s;
}

static double dot1_conv_d(const float *x, const void *W, gm_dtype dt, int64_t K)
{
    size_t esz = gm_dtype_size(dt);
    float wv[8];
    v2d p0 = {0, 0}, p1 = p0, p2 = p0, p3 = p0;
    int64_t k = 0, K8 = K & ~(int64_t)7;
    for (; k < K8; k += 8) {
        conv_row((const char *)W + (size_t)k * esz, dt, 8, wv);
        p0 += ld2d(x + k) * ld2d(wv);
        p1 += ld2d(x + k + 2) * ld2d(wv + 2);
        p2 += ld2d(x + k + 4) * ld2d(wv + 4);
        p3 += ld2d(x + k + 6) * ld2d(wv + 6);
    }
    double s = fold_d(p0, p1, p2, p3);
    if (k < K)
        conv_row((const char *)W + (size_t)k * esz, dt, K - k, wv);
    for (int64_t i = 0; k < K; k++, i++)
        s += (double)x[k] * (double)wv[i];
    return s;
}

/* ---- the loop over output columns [j0, j1) ---- */

typedef struct mm_job {
    const float *x;
    int64_t T, K, ldx;
    const void *W;
    gm_dtype wdt;
    int64_t ldw;
    void *y; /* [T, ldy] float or double */
    int64_t ldy;
    int f64;
    int64_t j0, j1;
} mm_job;

#define FUSED_MAX_T 4 /* up to this many rows of x, bf16 weights are widened in the dot itself */

static void mm_run_bf16_fused(const mm_job *jb)
{
    for (int64_t j = jb->j0; j < jb->j1; j += TILE) {
        int64_t nr = jb->j1 - j < TILE ? jb->j1 - j : TILE;
        const uint16_t *w[TILE];
        for (int64_t r = 0; r < TILE; r++)
            w[r] = (const uint16_t *)jb->W + (j + (r < nr ? r : nr - 1)) * jb->ldw;
        for (int64_t t = 0; t < jb->T; t++) {
            const float *xr = jb->x + t * jb->ldx;
            float *yr = (float *)jb->y + t * jb->ldy + j;
            if (nr == TILE) {
                float o[TILE];
                dot4_bf16(xr, w, jb->K, o);
                memcpy(yr, o, sizeof o);
            } else {
                for (int64_t r = 0; r < nr; r++)
                    yr[r] = dot1_bf16(xr, w[r], jb->K);
            }
        }
    }
}

static void mm_run(const mm_job *jb)
{
    if (jb->wdt == GM_DT_BF16 && !jb->f64 && jb->T <= FUSED_MAX_T) {
        mm_run_bf16_fused(jb);
        return;
    }
    size_t esz = gm_dtype_size(jb->wdt);
    int direct = jb->wdt == GM_DT_F32;
    float *buf = direct ? NULL : malloc((size_t)TILE * (size_t)jb->K * sizeof(float)); /* [TILE, K] */
    if (!direct && !buf) {
        for (int64_t j = jb->j0; j < jb->j1; j++) {
            const void *wr = (const char *)jb->W + (size_t)(j * jb->ldw) * esz;
            for (int64_t t = 0; t < jb->T; t++) {
                const float *xr = jb->x + t * jb->ldx;
                if (jb->f64)
                    ((double *)jb->y)[t * jb->ldy + j] = dot1_conv_d(xr, wr, jb->wdt, jb->K);
                else
                    ((float *)jb->y)[t * jb->ldy + j] = dot1_conv_f(xr, wr, jb->wdt, jb->K);
            }
        }
        return;
    }
    for (int64_t j = jb->j0; j < jb->j1; j += TILE) {
        int64_t nr = jb->j1 - j < TILE ? jb->j1 - j : TILE;
        const float *w[TILE];
        for (int64_t r = 0; r < TILE; r++) {
            int64_t rr = r < nr ? r : nr - 1;
            const char *src = (const char *)jb->W + (size_t)((j + rr) * jb->ldw) * esz;
            if (direct) {
                w[r] = (const float *)src;
            } else {
                if (r < nr)
                    conv_row(src, jb->wdt, jb->K, buf + r * jb->K);
                w[r] = buf + rr * jb->K;
            }
        }
        for (int64_t t = 0; t < jb->T; t++) {
            const float *xr = jb->x + t * jb->ldx;
            if (jb->f64) {
                double *yr = (double *)jb->y + t * jb->ldy + j;
                if (nr == TILE) {
                    double o[TILE];
                    dot4_d(xr, w, jb->K, o);
                    memcpy(yr, o, sizeof o);
                } else {
                    for (int64_t r = 0; r < nr; r++)
                        yr[r] = dot1_d(xr, w[r], jb->K);
                }
            } else {
                float *yr = (float *)jb->y + t * jb->ldy + j;
                if (nr == TILE) {
                    float o[TILE];
                    dot4_f(xr, w, jb->K, o);
                    memcpy(yr, o, sizeof o);
                } else {
                    for (int64_t r = 0; r < nr; r++)
                        yr[r] = dot1_f(xr, w[r], jb->K);
                }
            }
        }
    }
    free(buf);
}

static void *mm_thread(void *p)
{
    mm_run(p);
    return NULL;
}

#define MAX_THREADS 32

/* Threads to use: $GM_CPU_THREADS, else the online CPUs, at most MAX_THREADS. */
static int g_threads;
static pthread_once_t g_threads_once = PTHREAD_ONCE_INIT;

static void threads_init(void)
{
    const char *e = getenv("GM_CPU_THREADS");
    long n = e && *e ? strtol(e, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    g_threads = n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

/* Split the N outputs over threads (multiples of TILE) when the work is big enough. */
static void mm_dispatch(const mm_job *job, int64_t N)
{
    pthread_once(&g_lut_once, lut_init);
    pthread_once(&g_threads_once, threads_init);
    if (job->T <= 0 || N <= 0)
        return;
    double work = (double)job->T * (double)N * (double)job->K;
    int64_t nt = g_threads;
    if (work < (double)(1 << 21))
        nt = 1;
    int64_t max_by_n = (N + 4 * TILE - 1) / (4 * TILE);
    if (nt > max_by_n)
        nt = max_by_n;
    if (nt <= 1) {
        mm_job jb = *job;
        jb.j0 = 0, jb.j1 = N;
        mm_run(&jb);
        return;
    }
    mm_job jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS];
    int64_t per = (N + nt - 1) / nt;
    per = (per + TILE - 1) / TILE * TILE;
    for (int64_t i = 0; i < nt; i++) {
        jobs[i] = *job;
        jobs[i].j0 = i * per < N ? i * per : N;
        jobs[i].j1 = (i + 1) * per < N ? (i + 1) * per : N;
        started[i] = i > 0 && pthread_create(&tid[i], NULL, mm_thread, &jobs[i]) == 0;
    }
    mm_run(&jobs[0]);
    for (int64_t i = 1; i < nt; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            mm_run(&jobs[i]);
    }
}

void cpu_matmul(const float *x, int64_t T, int64_t K, int64_t ldx, const void *W, gm_dtype wdt, int64_t ldw,
                int64_t N, float *y, int64_t ldy)
{
    mm_job jb = {x, T, K, ldx, W, wdt, ldw, y, ldy, 0, 0, 0};
    mm_dispatch(&jb, N);
}

void cpu_matmul_f64(const float *x, int64_t T, int64_t K, int64_t ldx, const void *W, gm_dtype wdt, int64_t ldw,
                    int64_t N, double *y, int64_t ldy)
{
    mm_job jb = {x, T, K, ldx, W, wdt, ldw, y, ldy, 1, 0, 0};
    mm_dispatch(&jb, N);
}
