/* gemm_fp8.c - the FP8 GEMM twin (see gemm_fp8.h). */
#include "gemm_fp8.h"

#include <stdlib.h>

#include "gemm.h"
#include "quant_fp8.h"

static int matmul_q(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                    int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy, int round)
{
    float lut[256];
    for (int i = 0; i < 256; i++)
        lut[i] = gm_e4m3_to_f32((uint8_t)i);
    float *xf = malloc((size_t)(T * K) * sizeof(float));
    if (!xf)
        return -1;
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++)
            xf[t * K + k] = lut[xq[t * ldx + k]];
    /* products of two e4m3 values are exact in float32; only the sum rounds */
    cpu_matmul(xf, T, K, K, Wq, GM_DT_F8_E4M3, ldw, N, y, ldy);
    float s = x_scale * w_scale;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < N; j++)
            y[t * ldy + j] = round ? gm_round_bf16(y[t * ldy + j] * s) : y[t * ldy + j] * s;
    free(xf);
    return 0;
}

int cpu_fp8_matmul_q(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                     int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy)
{
    return matmul_q(xq, T, K, ldx, x_scale, Wq, ldw, N, w_scale, y, ldy, 1);
}

int cpu_fp8_matmul_q_f32(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                         int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy)
{
    return matmul_q(xq, T, K, ldx, x_scale, Wq, ldw, N, w_scale, y, ldy, 0);
}

int cpu_fp8_matmul(const float *x, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                    int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy)
{
    uint8_t *xq = malloc((size_t)(T * K));
    if (!xq)
        return -1;
    for (int64_t t = 0; t < T; t++)
        cpu_fp8_quantize_act(x + t * ldx, K, x_scale, xq + t * K);
    int rc = cpu_fp8_matmul_q(xq, T, K, K, x_scale, Wq, ldw, N, w_scale, y, ldy);
    free(xq);
    return rc;
}
