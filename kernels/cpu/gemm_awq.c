/* gemm_awq.c - AutoAWQ int4 packing, group quantization, clipping search and the
 * dequantizing matmul reference (see gemm_awq.h for the layout). */
#include "gemm_awq.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/dtype.h"
#include "gemm.h"

const int cpu_awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
const int cpu_awq_rev[8] = {0, 4, 1, 5, 2, 6, 3, 7};

uint32_t cpu_awq_pack8(const uint8_t v[8])
{
    uint32_t w = 0;
    for (int i = 0; i < 8; i++)
        w |= (uint32_t)(v[cpu_awq_order[i]] & 15u) << (4 * i);
    return w;
}

void cpu_awq_unpack8(uint32_t w, uint8_t v[8])
{
    for (int i = 0; i < 8; i++)
        v[cpu_awq_order[i]] = (uint8_t)((w >> (4 * i)) & 15u);
}

uint16_t cpu_awq_quant_group(const float *w, int64_t n, int64_t stride, float lo, float hi, uint8_t *q,
                             uint8_t *zero)
{
    float range = hi - lo;
    if (!(range > 1e-5f))
        range = 1e-5f;
    uint16_t s16 = gm_f32_to_f16(range / 15.0f);
    float s = gm_f16_to_f32(s16);
    if (!(s > 0.0f)) { /* cannot happen for range >= 1e-5, kept for NaN input */
        s16 = 1;
        s = gm_f16_to_f32(s16);
    }
    float z = -nearbyintf(lo / s);
    z = z < 0.0f ? 0.0f : z > 15.0f ? 15.0f : z;
    *zero = (uint8_t)z;
    if (q) {
        for (int64_t i = 0; i < n; i++) {
            float v = w[i * stride];
            v = v < lo ? lo : v > hi ? hi : v;
            float t = nearbyintf(v / s) + z;
            q[i] = (uint8_t)(t < 0.0f ? 0.0f : t > 15.0f ? 15.0f : t);
        }
    }
    return s16;
}

/* The clip range of a group of n values for ratio r: extremes shrunk toward zero. */
static void group_range(const float *w, int64_t n, float r, float *lo, float *hi)
{
    float mn = w[0], mx = w[0];
    for (int64_t i = 1; i < n; i++) {
        mn = w[i] < mn ? w[i] : mn;
        mx = w[i] > mx ? w[i] : mx;
    }
    *lo = mn < 0.0f ? mn * r : mn;
    *hi = mx > 0.0f ? mx * r : mx;
}

void cpu_awq_quantize(const float *W, int64_t N, int64_t K, int64_t ldw, int64_t group, const float *ratio,
                      int32_t *qweight, int32_t *qzeros, uint16_t *scales)
{
    int64_t G = K / group, ldq = N / 8;
    memset(qweight, 0, (size_t)(K * ldq) * sizeof(int32_t));
    memset(qzeros, 0, (size_t)(G * ldq) * sizeof(int32_t));
    uint8_t *q = malloc((size_t)group);
    if (!q)
        return; /* callers size group <= K; a few bytes */
    for (int64_t n = 0; n < N; n++) {
        int shift = 4 * cpu_awq_rev[n & 7];
        int64_t c = n >> 3;
        for (int64_t j = 0; j < G; j++) {
            const float *w = W + n * ldw + j * group;
            float lo, hi, r = ratio ? ratio[n * G + j] : 1.0f;
            group_range(w, group, r, &lo, &hi);
            uint8_t z;
            scales[j * N + n] = cpu_awq_quant_group(w, group, 1, lo, hi, q, &z);
            qzeros[j * ldq + c] |= (int32_t)((uint32_t)z << shift);
            for (int64_t i = 0; i < group; i++)
                qweight[(j * group + i) * ldq + c] |= (int32_t)((uint32_t)q[i] << shift);
        }
    }
    free(q);
}

void cpu_awq_fake_quant(const float *W, int64_t N, int64_t K, int64_t ldw, int64_t group, const float *ratio,
                        float *out)
{
    int64_t G = K / group;
    uint8_t *q = malloc((size_t)group);
    if (!q) { /* a few bytes; keep the weight unquantized rather than crash */
        for (int64_t n = 0; n < N; n++)
            memcpy(out + n * K, W + n * ldw, (size_t)K * sizeof(float));
        return;
    }
    for (int64_t n = 0; n < N; n++) {
        for (int64_t j = 0; j < G; j++) {
            const float *w = W + n * ldw + j * group;
            float lo, hi, r = ratio ? ratio[n * G + j] : 1.0f;
            group_range(w, group, r, &lo, &hi);
            uint8_t z;
            float s = gm_f16_to_f32(cpu_awq_quant_group(w, group, 1, lo, hi, q, &z));
            float *o = out + n * K + j * group;
            for (int64_t i = 0; i < group; i++)
                o[i] = ((float)q[i] - (float)z) * s;
        }
    }
    free(q);
}

void cpu_awq_gram(const float *x, int64_t T, int64_t K, int64_t ldx, int64_t group, double *gram)
{
    int64_t G = K / group, gg = group * group;
    memset(gram, 0, (size_t)(G * gg) * sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * ldx;
        for (int64_t j = 0; j < G; j++) {
            const float *xg = xr + j * group;
            double *C = gram + j * gg;
            for (int64_t a = 0; a < group; a++) {
                double xa = xg[a];
                if (xa == 0.0)
                    continue;
                for (int64_t b = 0; b <= a; b++)
                    C[a * group + b] += xa * xg[b];
            }
        }
    }
    for (int64_t j = 0; j < G; j++) /* mirror the lower triangle */
        for (int64_t a = 0; a < group; a++)
            for (int64_t b = a + 1; b < group; b++)
                gram[j * gg + a * group + b] = gram[j * gg + b * group + a];
}

float cpu_awq_clip_ratio(int i) { return 1.0f - 0.05f * (float)i; }

typedef struct clip_job {
    const float *W;
    int64_t K, ldw, group, n0, n1;
    const double *gram;
    float *ratio;
} clip_job;

static void *clip_run(void *arg)
{
    const clip_job *jb = arg;
    int64_t g = jb->group, G = jb->K / g;
    uint8_t *q = malloc((size_t)g);
    double *e = malloc((size_t)g * sizeof(double));
    if (!q || !e) {
        for (int64_t n = jb->n0; n < jb->n1; n++)
            for (int64_t j = 0; j < G; j++)
                jb->ratio[n * G + j] = 1.0f; /* no memory: plain round-to-nearest */
        free(q), free(e);
        return NULL;
    }
    for (int64_t n = jb->n0; n < jb->n1; n++) {
        for (int64_t j = 0; j < G; j++) {
            const float *w = jb->W + n * jb->ldw + j * g;
            const double *C = jb->gram + j * g * g;
            double best = INFINITY;
            float best_r = 1.0f;
            for (int i = 0; i < CPU_AWQ_N_CLIP; i++) {
                float r = cpu_awq_clip_ratio(i), lo, hi;
                group_range(w, g, r, &lo, &hi);
                uint8_t z;
                float s = gm_f16_to_f32(cpu_awq_quant_group(w, g, 1, lo, hi, q, &z));
                for (int64_t a = 0; a < g; a++)
                    e[a] = (double)(((float)q[a] - (float)z) * s) - (double)w[a];
                double err = 0.0;
                for (int64_t a = 0; a < g; a++) {
                    double row = 0.0;
                    for (int64_t b = 0; b < g; b++)
                        row += C[a * g + b] * e[b];
                    err += e[a] * row;
                }
                if (err < best) {
                    best = err;
                    best_r = r;
                }
            }
            jb->ratio[n * G + j] = best_r;
        }
    }
    free(q), free(e);
    return NULL;
}

void cpu_awq_search_clip(const float *W, int64_t N, int64_t K, int64_t ldw, int64_t group, const double *gram,
                         float *ratio)
{
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = nc < 1 ? 1 : nc > 64 ? 64 : (int)nc;
    if (N < 64)
        nt = 1;
    clip_job jobs[64];
    pthread_t tid[64];
    int started[64] = {0};
    int64_t per = (N + nt - 1) / nt;
    for (int i = 0; i < nt; i++) {
        int64_t n0 = i * per, n1 = n0 + per < N ? n0 + per : N;
        jobs[i] = (clip_job){W, K, ldw, group, n0 < N ? n0 : N, n1, gram, ratio};
        if (nt > 1 && pthread_create(&tid[i], NULL, clip_run, &jobs[i]) == 0)
            started[i] = 1;
        else
            clip_run(&jobs[i]);
    }
    for (int i = 0; i < nt; i++)
        if (started[i])
            pthread_join(tid[i], NULL);
}

void cpu_awq_dequant(const cpu_awq_w *w, int64_t n0, int64_t nn, float *wt)
{
    int64_t K = w->K, g = w->group;
    float sz[2][8];
    for (int64_t c0 = 0; c0 < nn; c0 += 8) {
        int64_t c = (n0 + c0) >> 3, cn = nn - c0 < 8 ? nn - c0 : 8;
        for (int64_t k = 0; k < K; k++) {
            if (k % g == 0) { /* new group: its scales and zeros for these 8 columns */
                int64_t j = k / g;
                uint32_t zw = (uint32_t)w->qzeros[j * w->ldq + c];
                for (int i = 0; i < 8; i++) {
                    int m = cpu_awq_order[i];
                    sz[0][m] = gm_f16_to_f32(w->scales[j * w->lds + 8 * c + m]);
                    sz[1][m] = (float)((zw >> (4 * i)) & 15u);
                }
            }
            uint32_t qw = (uint32_t)w->qweight[k * w->ldq + c];
            for (int i = 0; i < 8; i++) {
                int m = cpu_awq_order[i];
                if (m < cn)
                    wt[(c0 + m) * K + k] = ((float)((qw >> (4 * i)) & 15u) - sz[1][m]) * sz[0][m];
            }
        }
    }
}

/* Columns per dequantized tile: a few MB of float32, a multiple of 8. */
static int64_t tile_cols(const cpu_awq_w *w)
{
    int64_t nt = ((int64_t)4 << 20) / (w->K * (int64_t)sizeof(float));
    nt &= ~(int64_t)7;
    if (nt < 8)
        nt = 8;
    return nt < w->N ? nt : w->N;
}

static int awq_mm(const float *x, int64_t T, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy, int f64)
{
    int64_t nt = tile_cols(w);
    float *buf = malloc((size_t)(nt * w->K) * sizeof(float)); /* [nt, K] */
    if (!buf)
        return -1;
    for (int64_t n0 = 0; n0 < w->N; n0 += nt) {
        int64_t nn = w->N - n0 < nt ? w->N - n0 : nt;
        cpu_awq_dequant(w, n0, nn, buf);
        if (f64)
            cpu_matmul_f64(x, T, w->K, ldx, buf, GM_DT_F32, w->K, nn, (double *)y + n0, ldy);
        else
            cpu_matmul(x, T, w->K, ldx, buf, GM_DT_F32, w->K, nn, (float *)y + n0, ldy);
    }
    free(buf);
    return 0;
}

int cpu_awq_matmul(const float *x, int64_t T, int64_t ldx, const cpu_awq_w *w, float *y, int64_t ldy)
{
    return awq_mm(x, T, ldx, w, y, ldy, 0);
}

int cpu_awq_matmul_f64(const float *x, int64_t T, int64_t ldx, const cpu_awq_w *w, double *y, int64_t ldy)
{
    return awq_mm(x, T, ldx, w, y, ldy, 1);
}
