/* geglu.cuh - gelu_tanh(gate) * up of Gemma's MLP. */
#ifndef GM_K_GEGLU_CUH
#define GM_K_GEGLU_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[t, i] = bf16(bf16(gelu_tanh(gate[t, i])) * up[t, i]), rounding as HF's bf16 ops.
 * gu [T, 2n] bf16: gate at columns [0, n), up at [n, 2n) (the fused gate/up projection);
 * out [T, n] bf16. n % 8 == 0. */
gm_status k_geglu(const void *gu, int64_t T, int64_t n, void *out, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
