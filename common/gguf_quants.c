/* gguf_quants.c - block dequantizers for the ggml quantization formats, written from their block
 * layouts. Each dq_* turns one block into its elements in order; the arithmetic is the format's
 * definition, y = scale * q (- min), evaluated in float32 exactly as the reference does it. */
#include "gguf_quants.h"

#include <string.h>

#include "dtype.h"
#include "gguf.h"

/* Bit-exact results need a*b - c as two roundings, never one fused multiply-add. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define QK 32   /* elements per block of the simple formats */
#define QK_K 256 /* elements per super-block of the K formats */

static float f16(const uint8_t *p) { return gm_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Q4_0 [18 B]: f16 d, qs[16]; element j<16 is the low nibble of qs[j], j>=16 the high nibble of
 * qs[j-16]; y = d * (q - 8). */
static void dq_q4_0(const uint8_t *b, float *y)
{
    float d = f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)((qs[j] & 0xF) - 8);
        y[j + QK / 2] = d * (float)((qs[j] >> 4) - 8);
    }
}

/* Q4_1 [20 B]: f16 d, f16 m, qs[16] as Q4_0; y = d * q + m. */
static void dq_q4_1(const uint8_t *b, float *y)
{
    float d = f16(b), m = f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)(qs[j] & 0xF) + m;
        y[j + QK / 2] = d * (float)(qs[j] >> 4) + m;
    }
}

/* Q5_0 [22 B]: f16 d, u32 qh (bit j = fifth bit of element j), qs[16] as Q4_0; y = d * (q - 16). */
static void dq_q5_0(const uint8_t *b, float *y)
{
    float d = f16(b);
    uint32_t qh = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
    const uint8_t *qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0xF) | (int)((qh >> j) & 1) << 4;
        int hi = (qs[j] >> 4) | (int)((qh >> (j + QK / 2)) & 1) << 4;
        y[j] = d * (float)(lo - 16);
        y[j + QK / 2] = d * (float)(hi - 16);
    }
}

/* Q5_1 [24 B]: f16 d, f16 m, u32 qh, qs[16]; y = d * q + m. */
static void dq_q5_1(const uint8_t *b, float *y)
{
    float d = f16(b), m = f16(b + 2);
    uint32_t qh = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    const uint8_t *qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0xF) | (int)((qh >> j) & 1) << 4;
        int hi = (qs[j] >> 4) | (int)((qh >> (j + QK / 2)) & 1) << 4;
        y[j] = d * (float)lo + m;
        y[j + QK / 2] = d * (float)hi + m;
    }
}

/* Q8_0 [34 B]: f16 d, int8 q[32]; y = q * d. */
static void dq_q8_0(const uint8_t *b, float *y)
{
    float d = f16(b);
    for (int j = 0; j < QK; j++)
        y[j] = (float)(int8_t)b[2 + j] * d;
}

/* Q2_K [84 B]: scales[16] (low nibble scale, high nibble min, one per 16 elements), qs[64], f16 d,
 * f16 dmin. Element i = 128h + 32s + l (h < 2, s < 4, l < 32) is bits 2s..2s+1 of qs[32h + l];
 * y = (d * scale) * q - (dmin * min). */
static void dq_q2_k(const uint8_t *b, float *y)
{
    const uint8_t *sc = b, *qs = b + 16;
    float d = f16(b + 80), dmin = f16(b + 82);
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, s = (i % 128) / 32, l = i % 32;
        int q = (qs[32 * h + l] >> (2 * s)) & 3;
        float dl = d * (float)(sc[i / 16] & 0xF), ml = dmin * (float)(sc[i / 16] >> 4);
        y[i] = dl * (float)q - ml;
    }
}

/* Q3_K [110 B]: hmask[32], qs[64], scales[12] (16 six-bit scales, biased by 32), f16 d.
 * Element i = 128h + 32s + l: two low bits from qs[32h + l] at 2s, the high bit is bit 4h+s of
 * hmask[l], set meaning +0 and clear meaning -4; scale k (of elements 16k..16k+15) has its low
 * nibble in scales[k % 8] at 4*(k/8) and its top two bits in scales[8 + k % 4] at 2*(k/4);
 * y = (d * (scale - 32)) * q. */
static void dq_q3_k(const uint8_t *b, float *y)
{
    const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
    float d = f16(b + 108);
    float dl[16];
    for (int k = 0; k < 16; k++) {
        int lo = (sc[k % 8] >> (4 * (k / 8))) & 0xF, hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
        dl[k] = d * (float)((lo | hi << 4) - 32);
    }
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, s = (i % 128) / 32, l = i % 32;
        int q = ((qs[32 * h + l] >> (2 * s)) & 3) - (((hm[l] >> (4 * h + s)) & 1) ? 0 : 4);
        y[i] = dl[i / 16] * (float)q;
    }
}

/* The 8 six-bit (scale, min) pairs of a Q4_K / Q5_K super-block, packed in 12 bytes: pairs 0-3 are
 * the low six bits of bytes 0-3 / 4-7; pairs 4-7 take their low nibbles from bytes 8-11 (scale low,
 * min high) and their top two bits from the top bits of bytes 0-3 / 4-7. */
static void k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* Q4_K [144 B]: f16 d, f16 dmin, scales[12], qs[128]. Sub-block j (32 elements) is the low (j even)
 * or high (j odd) nibbles of qs[32*(j/2) ..]; y = (d * sc_j) * q - (dmin * m_j). */
static void dq_q4_k(const uint8_t *b, float *y)
{
    float d = f16(b), dmin = f16(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k_scale_min(scales, j, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        for (int l = 0; l < 32; l++)
            y[32 * j + l] = d1 * (float)((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF) - m1;
    }
}

/* Q5_K [176 B]: f16 d, f16 dmin, scales[12], qh[32], qs[128]: Q4_K's nibbles plus a fifth bit,
 * bit j of qh[l] for element 32j + l. */
static void dq_q5_k(const uint8_t *b, float *y)
{
    float d = f16(b), dmin = f16(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k_scale_min(scales, j, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        for (int l = 0; l < 32; l++) {
            int q = ((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF) | ((qh[l] >> j) & 1) << 4;
            y[32 * j + l] = d1 * (float)q - m1;
        }
    }
}

/* Q6_K [210 B]: ql[128], qh[64], int8 scales[16], f16 d. Element i = 128h + r: low nibble from
 * ql[64h + r % 64] (high nibble when r >= 64), two high bits from qh[32h + r % 32] at 2*(r/32);
 * y = (d * scale_{i/16}) * (q - 32). */
static void dq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16(b + 208);
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, r = i % 128;
        int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
        int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        y[i] = (d * (float)sc[i / 16]) * (float)((lo | hi << 4) - 32);
    }
}

static void dq_f32(const uint8_t *b, float *y) { memcpy(y, b, 4); }
static void dq_f16(const uint8_t *b, float *y) { *y = f16(b); }
static void dq_bf16(const uint8_t *b, float *y) { *y = gm_bf16_to_f32((uint16_t)(b[0] | b[1] << 8)); }

typedef void (*dq_fn)(const uint8_t *block, float *y);

static dq_fn dq_for(uint32_t type)
{
    switch (type) {
    case GGUF_TYPE_F32: return dq_f32;
    case GGUF_TYPE_F16: return dq_f16;
    case GGUF_TYPE_BF16: return dq_bf16;
    case GGUF_TYPE_Q4_0: return dq_q4_0;
    case GGUF_TYPE_Q4_1: return dq_q4_1;
    case GGUF_TYPE_Q5_0: return dq_q5_0;
    case GGUF_TYPE_Q5_1: return dq_q5_1;
    case GGUF_TYPE_Q8_0: return dq_q8_0;
    case GGUF_TYPE_Q2_K: return dq_q2_k;
    case GGUF_TYPE_Q3_K: return dq_q3_k;
    case GGUF_TYPE_Q4_K: return dq_q4_k;
    case GGUF_TYPE_Q5_K: return dq_q5_k;
    case GGUF_TYPE_Q6_K: return dq_q6_k;
    default: return NULL;
    }
}

bool gguf_can_dequant(uint32_t type) { return dq_for(type) != NULL; }

/* Common checks; *fn, *blk, *bb describe the type. */
static gm_status dq_prepare(uint32_t type, const void *src, const void *dst, int64_t n, dq_fn *fn, int64_t *blk,
                            int64_t *bb)
{
    *fn = dq_for(type);
    if (!*fn) {
        const char *nm = gguf_type_name(type);
        return gm_fail(GM_ERR_UNSUPPORTED, "GGUF tensor type %s (%u) cannot be dequantized (supported: F32 F16 BF16 "
                       "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)", nm ? nm : "unknown", type);
    }
    gguf_type_block(type, blk, bb);
    if (n < 0 || n % *blk != 0 || (n && (!src || !dst)))
        return gm_fail(GM_ERR_INVALID_ARG, "dequantize %s: %lld elements is not a whole number of %lld-element blocks",
                       gguf_type_name(type), (long long)n, (long long)*blk);
    return GM_OK;
}

/* Dequantize into dst: float32, or bf16 when to_bf16. */
static gm_status dequant(uint32_t type, const void *src, void *dst, int to_bf16, int64_t n)
{
    dq_fn fn;
    int64_t blk, bb;
    gm_status st = dq_prepare(type, src, dst, n, &fn, &blk, &bb);
    if (st)
        return st;
    const uint8_t *p = src;
    float *f = dst, y[QK_K]; /* one block, the largest is 256 elements */
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i += blk, p += bb) {
        if (!to_bf16) {
            fn(p, f + i);
        } else if (type == GGUF_TYPE_BF16) {
            h[i] = (uint16_t)(p[0] | p[1] << 8);
        } else {
            fn(p, y);
            for (int64_t j = 0; j < blk; j++)
                h[i + j] = gm_f32_to_bf16(y[j]);
        }
    }
    return GM_OK;
}

gm_status gguf_dequant_f32(uint32_t type, const void *src, float *dst, int64_t n)
{
    return dequant(type, src, dst, 0, n);
}

gm_status gguf_dequant_bf16(uint32_t type, const void *src, uint16_t *dst, int64_t n)
{
    return dequant(type, src, dst, 1, n);
}
