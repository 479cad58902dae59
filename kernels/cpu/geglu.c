/* geglu.c - the MLP's GeGLU (see geglu.h). */
#include "geglu.h"

#include <math.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

float cpu_gelu_tanh(float x)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

void cpu_geglu(const float *gate, const float *up, int64_t T, int64_t n, float *out)
{
    int64_t m = T * n;
    for (int64_t i = 0; i < m; i++)
        out[i] = cpu_gelu_tanh(gate[i]) * up[i];
}
