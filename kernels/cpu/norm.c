/* norm.c - Gemma RMSNorm (see norm.h). */
#include "norm.h"

#include <math.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* One element of a weight vector as float32. */
static inline float wget(const void *w, gm_dtype dt, int64_t i)
{
    switch (dt) {
    case GM_DT_F32:
        return ((const float *)w)[i];
    case GM_DT_BF16:
        return gm_bf16_to_f32(((const uint16_t *)w)[i]);
    case GM_DT_F16:
        return gm_f16_to_f32(((const uint16_t *)w)[i]);
    default: {
        float f;
        gm_to_f32(dt, (const char *)w + (size_t)i * gm_dtype_size(dt), &f, 1);
        return f;
    }
    }
}

void cpu_rmsnorm(const float *x, const void *w, gm_dtype wdt, int64_t n, int64_t dim, float eps, float *out)
{
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * dim;
        float *o = out + t * dim;
        double ss = 0.0; /* sum of squares in double: exact enough to be order-insensitive */
        for (int64_t i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        float r = 1.0f / sqrtf((float)(ss / (double)dim) + eps);
        for (int64_t i = 0; i < dim; i++)
            o[i] = xr[i] * r * (1.0f + wget(w, wdt, i));
    }
}

void cpu_head_rmsnorm(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const void *w, gm_dtype wdt, float eps)
{
    cpu_rmsnorm(x, w, wdt, T * n_heads, head_dim, eps, x); /* one row per (token, head) */
}
