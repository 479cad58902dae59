/* engine_cuda.h - extras of the CUDA backend beyond worker/engine.h (benchmarks, tests).
 *
 * The backend itself is created through gm_engine_create (backend GM_BACKEND_CUDA).
 * Its step() also accepts a token id of -1 in a one-token (decode) sequence: the
 * token this slot sampled in its previous step, which stayed on the GPU. (The shared
 * step check of engine.c is applied with such ids read as 0.)
 * The kernel choices the engine makes by itself (decode attention, GEMV or GEMM, fused gate|up) follow
 * measured rules in code; docs/KERNELS.md lists them and the two environment switches of the kernels
 * (GM_CUDA_PDL, GM_GEMM_TUNE). The setters below override a rule for benchmarks and tests. */
#ifndef GM_ENGINE_CUDA_H
#define GM_ENGINE_CUDA_H

#include <stdint.h>

#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Decode attention of the engine's steps (values as bench_decode --xqa takes them). */
typedef enum gm_cuda_attn {
    GM_CUDA_ATTN_SPLIT = 0, /* k_attn_decode(_fp8/_rope) wherever it serves the shape, XQA elsewhere */
    GM_CUDA_ATTN_AUTO = 1,  /* the measured rule (default): XQA for MHA from 2 rows, MQA/GQA from 8 */
    GM_CUDA_ATTN_XQA = 2,   /* XQA for every decode row */
} gm_cuda_attn;

/* Prefill attention of the engine's steps: the prompt rows (bench_decode --prefill-attn takes the names). */
typedef enum gm_cuda_prefill {
    GM_CUDA_PREFILL_AUTO = 0,        /* the rule (default): the Hopper kernel wherever it serves the device and shape,
                                      * FP8 pools on e4m3 tensor cores where that variant serves */
    GM_CUDA_PREFILL_MMA = 1,         /* the mma.sync kernel (k_attn_prefill_kv) always */
    GM_CUDA_PREFILL_HOPPER = 2,      /* the Hopper kernel (k_attn_prefill_hopper: wgmma, TMA); FP8 pools on f16 tensor
                                      * cores after an exact conversion */
    GM_CUDA_PREFILL_HOPPER_E4M3 = 3, /* the Hopper kernel with an FP8 pool on e4m3 tensor cores (q and P rounded to
                                      * e4m3); FP8 KV only */
} gm_cuda_prefill;

/* As gm_engine_create for the CUDA backend, with no checkpoint: cfg's shapes, weights drawn
 * on the device from seed (uniform, small), for benchmarks at the real sizes. */
gm_status gm_engine_cuda_create_random(const gm_engine_opts *o, const gm_model_config *cfg, uint64_t seed,
                                       gm_engine **out);

/* bf16 products with at most n rows take the GEMV kernel (0 = cuBLASLt always; default 2). Drops captured
 * graphs. */
void gm_engine_cuda_set_gemv_rows(gm_engine *e, int32_t n);

/* Decode attention by mode (default GM_CUDA_ATTN_AUTO). Drops captured graphs; GM_ERR_NOMEM when a graph
 * bucket's XQA scratch cannot be allocated, GM_ERR_INVALID_ARG for an unknown mode. */
gm_status gm_engine_cuda_set_decode_attn(gm_engine *e, gm_cuda_attn mode);

/* Prefill attention by mode (default GM_CUDA_PREFILL_AUTO). GM_ERR_UNSUPPORTED for GM_CUDA_PREFILL_HOPPER(_E4M3)
 * where that kernel does not serve this engine (not an sm_90 device, head_dim other than 128/256, a block size
 * sharing no multiple of 8 rows with the key tile (bf16 pools and the e4m3 variant), a pool over 2^31 rows per
 * layer; _E4M3: a bf16 pool), GM_ERR_INVALID_ARG for an unknown mode; the mode is unchanged then. */
gm_status gm_engine_cuda_set_prefill_attn(gm_engine *e, gm_cuda_prefill mode);

/* The kernel the engine's prompt rows go to under its current mode: 0 the mma.sync kernel, 1 the Hopper kernel,
 * 2 the Hopper kernel on e4m3 tensor cores (FP8 KV). */
int gm_engine_cuda_prefill_uses_hopper(const gm_engine *e);

/* Programmatic dependent launch of the kernels (kernels/cuda/launch.cuh; process-wide,
 * default on unless GM_CUDA_PDL=0). Drops captured graphs. */
void gm_engine_cuda_set_pdl(gm_engine *e, int on);

/* FP8 engines (benchmarks): scale > 0 makes every activation quantizer use this static scale
 * (overwriting an FP8 checkpoint's input scales); 0 makes them all dynamic. Drops captured
 * graphs. GM_ERR_UNSUPPORTED when the engine does not run FP8 weights. */
gm_status gm_engine_cuda_set_static_act(gm_engine *e, float scale);

/* Bytes of weights a batch-1 decode step reads on this rank (with --lm-head fp8 the e4m3 copy of the
 * embedding counts, not the bf16 one, of which a step gathers only its rows). */
int64_t gm_engine_cuda_weight_bytes(const gm_engine *e);

/* Time every op of the following steps (event nodes inside the decode graphs too); turning it
 * on or off drops the captured graphs and clears the sums. */
void gm_engine_cuda_profile(gm_engine *e, int on);

/* The ops' names (static strings) and mean microseconds per step since profiling began;
 * returns how many were written (at most max). */
int gm_engine_cuda_profile_get(const gm_engine *e, const char **names, double *us_per_step, int max);

#ifdef __cplusplus
}
#endif
#endif
