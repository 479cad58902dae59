/* attn_decode.cuh - paged decode attention: one new query token per sequence, bf16 or FP8 KV,
 * MQA/GQA/MHA (a block serves all query heads of one KV head, so each KV byte is read once
 * per sequence), the context split across blocks and merged by log-sum-exp (flash-decoding). */
#ifndef GM_K_ATTN_DECODE_CUH
#define GM_K_ATTN_DECODE_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A sequence of L keys uses at most ceil(L / ATTN_DECODE_MIN_CHUNK) splits; the most splits. */
#define ATTN_DECODE_MIN_CHUNK 32
#define ATTN_DECODE_MAX_SPLIT 128

/* out[b, h, :] = softmax(scale * q[b, h, :] . K[0..ctx_lens[b])^T) . V, KV head h / (nh / nkv).
 * q [B, nh*hd] bf16 (row stride ldq), already rotated; the pools already hold every key.
 * k_pool, v_pool [num_blocks, nkv, bs, hd] bf16; block_tables [B, bt_stride] int32 (physical
 * block of each logical block); ctx_lens [B] int32 (device; 0 = padding row: zeros out);
 * out [B, nh*hd] bf16 (row stride ldo).
 * n_split (1..ATTN_DECODE_MAX_SPLIT) fixes the grid so it can be captured in a CUDA graph: a
 * sequence of L keys uses min(n_split, ceil(L / ATTN_DECODE_MIN_CHUNK)) splits, read on the device.
 * scratch: k_attn_decode_scratch_bytes(B, nh, nkv, hd, n_split) bytes of device memory.
 * hd in {32, 64, 128, 256}; nh / nkv in {1, 2, 4, 8}. */
gm_status k_attn_decode(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                        const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                        int32_t bt_stride, const int32_t *ctx_lens, float scale, int32_t n_split, void *scratch,
                        void *out, int64_t ldo, cudaStream_t s);

/* k_attn_decode over an FP8 e4m3 pool (value = code * kv_scale, kv_scale > 0): the codes are read
 * exactly, K's scale is folded into q and V's into the output; scores, softmax and sums in f32. */
gm_status k_attn_decode_fp8(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                            const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                            int32_t bt_stride, const int32_t *ctx_lens, float scale, float kv_scale, int32_t n_split,
                            void *scratch, void *out, int64_t ldo, void *out8, const float *out8_scale,
                            cudaStream_t s);

/* out8 / out8_scale (k_attn_decode_fp8, k_attn_decode_rope): when out8 is not NULL the output goes
 * there instead, as the o_proj's FP8 input under a static scale: out8 [B, nh*hd] e4m3 (dense) =
 * e4m3_satfinite(bf16(O) * (1 / *out8_scale)), bit for bit k_fp8_quantize of the bf16 output. */

/* The decode step's attention with RoPE and the KV write folded in. qkv [B, ld] bf16 holds each
 * sequence's new token as the QKV projection wrote it (q heads, k heads, v heads; not rotated);
 * the token sits at position ctx_lens[b] - 1. q and k are rotated with rope_table (as
 * k_rope_kv_write does), the new k and v are written to slots[b] of the pools (< 0: not
 * written) and attended to directly; keys before it come from the pools. Other arguments as
 * k_attn_decode. */
gm_status k_attn_decode_rope(const void *qkv, int64_t ld, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                             void *k_pool, void *v_pool, int32_t bs, const int32_t *block_tables, int32_t bt_stride,
                             const int32_t *ctx_lens, const int32_t *slots, const float *rope_table, float scale,
                             int32_t n_split, void *scratch, void *out, int64_t ldo, void *out8,
                             const float *out8_scale, cudaStream_t s);

size_t k_attn_decode_scratch_bytes(int32_t B, int32_t nh, int32_t nkv, int32_t hd, int32_t n_split);

/* A split count that fills n_sm multiprocessors about twice at batch B (at most what max_ctx needs). */
int32_t k_attn_decode_splits(int32_t B, int32_t nkv, int32_t max_ctx, int32_t n_sm);

#ifdef __cplusplus
}
#endif
#endif
