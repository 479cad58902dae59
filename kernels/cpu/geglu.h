/* geglu.h - gelu_tanh(gate) * up of Gemma's MLP (CPU twin of kernels/cuda/geglu.cu). */
#ifndef GM_CPU_GEGLU_H
#define GM_CPU_GEGLU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* tanh-approximation GELU. */
float cpu_gelu_tanh(float x);

/* out[t, i] = gelu_tanh(gate[t, i]) * up[t, i].   gate, up, out [T, n] (out may alias gate) */
void cpu_geglu(const float *gate, const float *up, int64_t T, int64_t n, float *out);

#ifdef __cplusplus
}
#endif
#endif
