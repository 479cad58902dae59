/* dtype.c - element sizes, names and scalar conversions. */
#include "dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;
} g_dt[GM_DT_COUNT] = {
    [GM_DT_F32] = {"F32", 4},      [GM_DT_F16] = {"F16", 2},     [GM_DT_BF16] = {"BF16", 2},
    [GM_DT_F64] = {"F64", 8},      [GM_DT_I64] = {"I64", 8},     [GM_DT_I32] = {"I32", 4},
    [GM_DT_I16] = {"I16", 2},      [GM_DT_I8] = {"I8", 1},       [GM_DT_U8] = {"U8", 1},
    [GM_DT_BOOL] = {"BOOL", 1},    [GM_DT_F8_E4M3] = {"F8_E4M3", 1}, [GM_DT_F8_E5M2] = {"F8_E5M2", 1},
};

size_t gm_dtype_size(gm_dtype t) { return (unsigned)t < GM_DT_COUNT ? g_dt[t].size : 0; }

const char *gm_dtype_name(gm_dtype t) { return (unsigned)t < GM_DT_COUNT ? g_dt[t].name : "?"; }

int gm_dtype_parse(const char *s, size_t len)
{
    for (int i = 0; i < GM_DT_COUNT; i++)
        if (strlen(g_dt[i].name) == len && memcmp(g_dt[i].name, s, len) == 0)
            return i;
    return -1;
}

float gm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t gm_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00;
    if (a >= 0x477ff000u) /* rounds to >= 65520: inf */
        return sign | 0x7c00;
    if (a < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        return sign | (uint16_t)lrintf(af * 16777216.0f); /* 2^24, ties-to-even */
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

float gm_e4m3_to_f32(uint8_t v)
{
    int s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
    float r;
    if (e == 0xf && m == 7)
        return NAN;
    if (e == 0)
        r = ldexpf((float)m, -9); /* subnormal: m/8 * 2^-6 */
    else
        r = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return s ? -r : r;
}

uint8_t gm_f32_to_e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) /* saturate (SATFINITE) */
        return sign | 0x7e;
    if (a < 0.015625f) /* below 2^-6: subnormal steps of 2^-9; q == 8 is the smallest normal */
        return sign | (uint8_t)lrintf(a * 512.0f);
    int e;
    float m = frexpf(a, &e);                    /* a = m * 2^e, m in [0.5, 1) */
    long q = lrintf((m * 2.0f - 1.0f) * 8.0f);  /* 3 mantissa bits, ties to even */
    e -= 1;                                     /* a = (1 + q/8) * 2^e */
    if (q == 8) {
        q = 0;
        e += 1;
    }
    return sign | (uint8_t)(((e + 7) << 3) | q);
}

void gm_to_f32(gm_dtype t, const void *src, float *dst, int64_t n)
{
    switch (t) {
    case GM_DT_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case GM_DT_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = gm_bf16_to_f32(s[i]);
        break;
    }
    case GM_DT_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = gm_f16_to_f32(s[i]);
        break;
    }
    case GM_DT_F8_E4M3: {
        const uint8_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = gm_e4m3_to_f32(s[i]);
        break;
    }
    default:
        for (int64_t i = 0; i < n; i++)
            dst[i] = NAN;
        break;
    }
}
