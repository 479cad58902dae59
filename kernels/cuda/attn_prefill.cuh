/* attn_prefill.cuh - flash-style causal attention of new tokens (prompt chunks) over the paged KV. */
#ifndef GM_K_ATTN_PREFILL_CUH
#define GM_K_ATTN_PREFILL_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"
#include "attn_opts.h"

#ifdef __cplusplus
extern "C" {
#endif

/* For each sequence i of a step, its n_new[i] query tokens (rows q_start[i].. of q, positions
 * start_pos[i]..) attend causally to keys [0, start_pos[i] + n_new[i]) of its paged KV, which
 * already holds the new tokens' K/V (k_rope_kv_write runs first). Tiles of 64 queries x 64 keys
 * on bf16 tensor cores (mma.sync m16n8k16), online softmax in float32, O in registers; memory
 * use does not grow with the prompt.
 * q [T, nh*hd] bf16 (row stride ldq); out [T, nh*hd] bf16 (row stride ldo);
 * q_start, n_new, start_pos [n_seqs] int32 (device); block_tables [n_seqs, bt_stride] int32;
 * k_pool, v_pool [num_blocks, nkv, bs, hd] bf16. max_new = the largest n_new (host; sets the grid).
 * hd in {32, 64, 128, 256}. */
gm_status k_attn_prefill(const void *q, int64_t ldq, int32_t n_seqs, const int32_t *q_start, const int32_t *n_new,
                         const int32_t *start_pos, int32_t max_new, int32_t nh, int32_t nkv, int32_t hd,
                         const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                         int32_t bt_stride, float scale, void *out, int64_t ldo, cudaStream_t s);

/* The same with the layer's score options (scale; Gemma 2's soft-cap, after scaling and before the mask;
 * a sliding window: the query at position i sees keys i - window < j <= i, and no block wholly before a
 * query block's first window start is read), over an FP8 e4m3 pool when kv_fp8 (value = code * kv_scale,
 * rounded to bf16 in shared memory). k_attn_prefill is opt = {scale, 0, 0}, kv_fp8 = 0.
 * CPU twin: cpu_attention_paged_opts (kernels/cpu/attn.h). */
gm_status k_attn_prefill_kv(const void *q, int64_t ldq, int32_t n_seqs, const int32_t *q_start, const int32_t *n_new,
                            const int32_t *start_pos, int32_t max_new, int32_t nh, int32_t nkv, int32_t hd,
                            const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                            int32_t bt_stride, const k_attn_opts *opt, void *out, int64_t ldo, int kv_fp8,
                            float kv_scale, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
