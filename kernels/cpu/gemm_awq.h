/* gemm_awq.h - INT4 AWQ weights on the CPU: AutoAWQ "GEMM" packing, group quantization
 * (round-to-nearest and clipped), the clipping search, dequantization and the
 * y = x . dequant(W) reference that the CUDA W4A16 kernels are tested against.
 *
 * Layout (AutoAWQ's GEMM packing), for a Linear with K inputs, N outputs, group g:
 *   qweight [K, N/8] int32, qzeros [K/g, N/8] int32, scales [K/g, N] fp16.
 * Nibble i (bits 4i..4i+3) of packed word c holds logical column 8c + ORDER[i],
 * ORDER = [0,2,4,6,1,3,5,7]; logical column n lives in nibble REV[n % 8] of word n / 8.
 * W[k, n] = (q[k, n] - z[k/g, n]) * s[k/g, n]; y = x . W (W is nn.Linear.weight transposed). */
#ifndef GM_CPU_GEMM_AWQ_H
#define GM_CPU_GEMM_AWQ_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

extern const int cpu_awq_order[8]; /* {0,2,4,6,1,3,5,7}: nibble i -> logical column offset */
extern const int cpu_awq_rev[8];   /* {0,4,1,5,2,6,3,7}: logical column offset -> nibble */

/* One word from 8 logical 4-bit values v[0..7] (columns 8c..8c+7; only the low 4 bits are used). */
uint32_t cpu_awq_pack8(const uint8_t v[8]);
/* The 8 logical values of one word. */
void cpu_awq_unpack8(uint32_t w, uint8_t v[8]);
/* Logical column n of a packed row (qweight or qzeros row). */
static inline uint32_t cpu_awq_nibble(const int32_t *row, int64_t n)
{
    return ((uint32_t)row[n >> 3] >> (4 * cpu_awq_rev[n & 7])) & 15u;
}

/* A (slice of a) packed AWQ weight. Pointers are borrowed and point at element (k0, n0)
 * of the full tensors, with k0 % group == 0 and n0 % 8 == 0. */
typedef struct cpu_awq_w {
    const int32_t *qweight; /* [K, ldq] int32 */
    const int32_t *qzeros;  /* [K/group, ldq] int32 */
    const uint16_t *scales; /* [K/group, lds] fp16 bits */
    int64_t K, N;           /* in and out features of the slice; K % group == 0, N % 8 == 0 */
    int64_t ldq;            /* int32 words per qweight/qzeros row (full N / 8) */
    int64_t lds;            /* fp16 elements per scales row (full N) */
    int64_t group;
} cpu_awq_w;

/* Quantize n values (w[i * stride]) as one group whose range is [lo, hi] (clip range;
 * values outside saturate), with AutoAWQ's rule: s = max(hi - lo, 1e-5) / 15 rounded to
 * fp16, z = clamp(-round(lo / s), 0, 15), q = clamp(round(w / s) + z, 0, 15).
 * q [n] out (may be NULL); returns the fp16 bits of s and the zero in *zero. */
uint16_t cpu_awq_quant_group(const float *w, int64_t n, int64_t stride, float lo, float hi, uint8_t *q,
                             uint8_t *zero);

/* Quantize W [N, K] f32 (nn.Linear.weight, row stride ldw) with groups of `group` along K.
 * ratio [N, K/group] (NULL = all 1): the group's range is [min * r, max * r].
 * Writes qweight [K, N/8], qzeros [K/group, N/8], scales [K/group, N] (contiguous).
 * Needs K % group == 0, N % 8 == 0. */
void cpu_awq_quantize(const float *W, int64_t N, int64_t K, int64_t ldw, int64_t group, const float *ratio,
                      int32_t *qweight, int32_t *qzeros, uint16_t *scales);

/* out [N, K] = dequant(quant(W)) with groups of `group` along K and clip ratios ratio
 * [N, K/group] (NULL = 1): the weight a quantized Linear computes with (searches). */
void cpu_awq_fake_quant(const float *W, int64_t N, int64_t K, int64_t ldw, int64_t group, const float *ratio,
                        float *out);

/* Gram matrices of calibration inputs, one per group: gram [K/group, group, group] f64,
 * gram[j][a][b] = sum_t x[t, j*group + a] * x[t, j*group + b].   x [T, K] (row stride ldx). */
void cpu_awq_gram(const float *x, int64_t T, int64_t K, int64_t ldx, int64_t group, double *gram);

/* Number and values of the clip ratios the search tries: 1, 0.95, ..., 0.55. */
#define CPU_AWQ_N_CLIP 10
float cpu_awq_clip_ratio(int i);

/* Clipping search: for each output row n and group j of W [N, K] f32 (row stride ldw), the
 * ratio r that minimises e^T G_j e, e = dequant(quant(w, [min r, max r])) - w over the group
 * (the squared output error of that group's partial dot products on the calibration inputs
 * whose Gram matrices are gram, from cpu_awq_gram). ratio [N, K/group] out. Uses threads. */
void cpu_awq_search_clip(const float *W, int64_t N, int64_t K, int64_t ldw, int64_t group, const double *gram,
                         float *ratio);

/* Dequantize output columns [n0, n0 + nn) of w into wt [nn, K] f32 (rows = columns of W,
 * i.e. nn.Linear layout). n0 % 8 == 0. */
void cpu_awq_dequant(const cpu_awq_w *w, int64_t n0, int64_t nn, float *wt);

/* y[t, n] = sum_k x[t, k] * W[k, n], W = dequant(w).   x [T, K] (row stride ldx); y [T, N]
 * (row stride ldy). Same dot-product order as cpu_matmul on the dequantized weights (batch
 * invariant). Dequantizes a tile of columns at a time; returns -1 when out of memory. */
int cpu_awq_matmul(const float *x, int64_t T, int64_t ldx, const cpu_awq_w *w, float *y, int64_t ldy);
/* As cpu_awq_matmul with float64 accumulation and output (cpu_matmul_f64's order). */
int cpu_awq_matmul_f64(const float *x, int64_t T, int64_t ldx, const cpu_awq_w *w, double *y, int64_t ldy);

#ifdef __cplusplus
}
#endif
#endif
