/* attn_prefill_hopper.cuh - prefill attention for Hopper (sm_90a): wgmma, TMA, warp-specialised
 * producer/consumer warpgroups (the FlashAttention-3 pattern), over the paged KV cache. */
#ifndef GM_K_ATTN_PREFILL_HOPPER_CUH
#define GM_K_ATTN_PREFILL_HOPPER_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Scores, masks and the KV cache's number format. */
typedef struct k_prefill_opts {
    float scale;    /* s = q.k * scale (Gemma 2/3: query_pre_attn_scalar^-0.5); > 0 */
    float softcap;  /* > 0: s = tanh(s / softcap) * softcap after scaling, before the mask (Gemma 2); 0 = off */
    int32_t window; /* > 0: the query at position i sees keys i - window < j <= i (sliding layers); 0 = causal */
    int32_t kv_fp8; /* 1: the pools hold e4m3 codes, value = code * kv_scale (one scale for K and V) */
    float kv_scale; /* > 0 when kv_fp8 */
    int32_t kv_fp8_mma; /* with kv_fp8: 1 = both GEMMs on e4m3 tensor cores (QGMMA, twice the f16 rate; q rounded
                         * to e4m3 per row with scale amax/448, P to e4m3); 0 = f16 tensor cores after an exact
                         * conversion of the codes (only P rounded, to f16) */
} k_prefill_opts;

/* For each sequence i of a step, its n_new[i] query tokens (rows q_start[i].. of q, positions
 * start_pos[i]..) attend causally (and within the window) to keys [0, start_pos[i] + n_new[i]) of
 * its paged KV, which already holds the new tokens' K/V (k_rope_kv_write runs first): chunked
 * prefill and mixed batches of sequences with any lengths. Softmax in float32, output bf16.
 * q [n_tokens, nh*hd] bf16 (row stride ldq, rows of other sequences may sit between);
 * out [n_tokens, nh*hd] bf16 (row stride ldo; only the rows of the sequences are written);
 * q_start, n_new, start_pos [n_seqs] int32 (device); block_tables [n_seqs, bt_stride] int32
 * (device); k_pool, v_pool [pool_blocks, nkv, bs, hd] bf16, or e4m3 when opt->kv_fp8;
 * max_new = the largest n_new (host; sizes the work list). nh % nkv == 0.
 * GM_ERR_UNSUPPORTED where this kernel does not apply (not an sm_90 device; hd other than 128 or
 * 256; a bf16 pool (or an FP8 one with kv_fp8_mma) whose bs shares fewer than 8 rows with the key tile,
 * i.e. bs not a multiple of 8 or 16; pools beyond 2^31 rows): use k_attn_prefill_kv there (softcap and
 * window 0 only). */
gm_status k_attn_prefill_hopper(const void *q, int64_t ldq, int64_t n_tokens, int32_t n_seqs, const int32_t *q_start,
                                const int32_t *n_new, const int32_t *start_pos, int32_t max_new, int32_t nh,
                                int32_t nkv, int32_t hd, const void *k_pool, const void *v_pool, int32_t bs,
                                int32_t pool_blocks, const int32_t *block_tables, int32_t bt_stride,
                                const k_prefill_opts *opt, void *out, int64_t ldo, cudaStream_t s);

/* 1 when k_attn_prefill_hopper takes this shape on the current device, else 0 (no error recorded). */
int k_attn_prefill_hopper_supported(int32_t hd, int32_t bs, int32_t kv_fp8);
/* The same for FP8 pools with kv_fp8_mma (e4m3 QGMMA): head_dim 128 or 256, bs sharing a multiple of 8 rows
 * with the 128-key tile. */
int k_attn_prefill_hopper_e4m3_supported(int32_t hd, int32_t bs);

#ifdef __cplusplus
}
#endif
#endif
