/* launch.cuh - kernel launches with programmatic dependent launch (PDL, sm_90).
 *
 * With PDL on, a kernel may be launched while the one before it in the stream is still
 * finishing; every kernel of kernels/cuda therefore begins with pdl_wait() (griddepcontrol.wait:
 * returns once the preceding grid has completed and its memory is visible; a no-op without
 * PDL), so results never depend on it. It hides part of each launch's latency, which matters
 * for the ~150 small kernels of a decode step. Captured into CUDA graphs as programmatic edges. */
#ifndef GM_K_LAUNCH_CUH
#define GM_K_LAUNCH_CUH

#ifdef __cplusplus
extern "C" {
#endif

/* The kernels' process-wide switches. These, and GM_CPU_THREADS of kernels/cpu/gemm.c, are the only
 * environment variables kernels/ reads: each once, on its first use, in launch.cu (docs/KERNELS.md).
 *   GM_CUDA_PDL=0   launches without programmatic dependent launch (default on)
 *   GM_GEMM_TUNE=0  k_gemm_fp8_lt keeps cuBLASLt's first (heuristic) algorithm instead of timing its
 *                   top candidates on the first call of a shape (reproducible algorithm choice) */

/* PDL on or off for the following launches; the default comes from GM_CUDA_PDL. */
void k_set_pdl(int on);
int k_get_pdl(void);

/* 0 when GM_GEMM_TUNE=0 (the default of a new k_gemm_fp8_ctx; k_gemm_fp8_ctx_set_tune changes one). */
int k_gemm_tune_default(void);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

/* kernel<<<grid, block, smem, s>>>(args...), with the PDL attribute when enabled. */
template <typename... KArgs, typename... Args>
static inline cudaError_t gm_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                    Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = k_get_pdl() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}
#endif
#endif
