/* attn_decode.cuh - paged decode attention: one new query token per sequence, bf16 or FP8 KV.
 * Two variants (the CUDA engine picks one per step by the rule in docs/KERNELS.md):
 * - k_attn_decode / _fp8 / _rope (attn_decode.cu): a block serves all query heads of one KV head,
 *   so each KV byte is read once per sequence; the context split across blocks and merged by
 *   log-sum-exp (flash-decoding); CUDA cores; _rope folds RoPE and the KV write in.
 * - k_attn_decode_xqa (attn_decode_xqa.cu): XQA-style, one CTA per (sequence, KV head, split) with
 *   every query row of the KV head on tensor cores; the splits merged by the last CTA to finish.
 * Every launcher takes the layer's score options (attn_opts.h: scale, Gemma 2's soft-cap, a sliding window);
 * a sliding layer's query at position p reads only keys p - window < j <= p: the blocks before the window
 * are never touched (nor their block-table entries), and the splits cover the window only.
 * CPU twin: cpu_attention_paged_opts / cpu_attention_paged_ex (kernels/cpu/attn.h). */
#ifndef GM_K_ATTN_DECODE_CUH
#define GM_K_ATTN_DECODE_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"
#include "attn_opts.h"
#include "rope_kv.cuh"

#ifdef __cplusplus
extern "C" {
#endif

/* A sequence of L keys uses at most ceil(L / ATTN_DECODE_MIN_CHUNK) splits; the most splits. */
#define ATTN_DECODE_MIN_CHUNK 32
#define ATTN_DECODE_MAX_SPLIT 128

/* out[b, h, :] = softmax(s) . V over keys [lo, ctx_lens[b]) with s = opt->scale * q[b, h, :] . K^T (soft-capped
 * when opt->softcap > 0), lo = ctx_lens[b] - opt->window when that is > 0 (else 0); KV head h / (nh / nkv).
 * q [B, nh*hd] bf16 (row stride ldq), already rotated; the pools already hold every key.
 * k_pool, v_pool [num_blocks, nkv, bs, hd] bf16; block_tables [B, bt_stride] int32 (physical
 * block of each logical block); ctx_lens [B] int32 (device; 0 = padding row: zeros out);
 * out [B, nh*hd] bf16 (row stride ldo).
 * n_split (1..ATTN_DECODE_MAX_SPLIT) fixes the grid so it can be captured in a CUDA graph: a
 * sequence of L keys uses min(n_split, ceil(L' / ATTN_DECODE_MIN_CHUNK)) splits, L' = the keys it reads
 * (L, or the window), decided on the device.
 * scratch: k_attn_decode_scratch_bytes(B, nh, nkv, hd, n_split) bytes of device memory.
 * hd in {32, 64, 128, 256}; nh / nkv in {1, 2, 4, 8}. */
gm_status k_attn_decode(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                        const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                        int32_t bt_stride, const int32_t *ctx_lens, const k_attn_opts *opt, int32_t n_split,
                        void *scratch, void *out, int64_t ldo, cudaStream_t s);

/* k_attn_decode over an FP8 e4m3 pool (value = code * kv_scale, kv_scale > 0): the codes are read
 * exactly, K's scale is folded into q and V's into the output; scores, softmax and sums in f32. */
gm_status k_attn_decode_fp8(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                            const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                            int32_t bt_stride, const int32_t *ctx_lens, const k_attn_opts *opt, float kv_scale,
                            int32_t n_split, void *scratch, void *out, int64_t ldo, void *out8,
                            const float *out8_scale, cudaStream_t s);

/* out8 / out8_scale (k_attn_decode_fp8, k_attn_decode_rope): when out8 is not NULL the output goes
 * there instead, as the o_proj's FP8 input under a static scale: out8 [B, nh*hd] e4m3 (dense) =
 * e4m3_satfinite(bf16(O) * (1 / *out8_scale)), bit for bit k_fp8_quantize of the bf16 output. */

/* The decode step's attention with RoPE and the KV write folded in. qkv [B, ld] bf16 holds each
 * sequence's new token as the QKV projection wrote it (q heads, k heads, v heads; not rotated);
 * the token sits at position ctx_lens[b] - 1. q and k are rotated with rope_table (as
 * k_rope_kv_write does), the new k and v are written to slots[b] of the pools (< 0: not
 * written) and attended to directly; keys before it come from the pools. qkn (not NULL): Gemma 3's
 * QK-norm on q and k before the rotation, as k_rope_kv_write_qkn. Other arguments as k_attn_decode. */
gm_status k_attn_decode_rope(const void *qkv, int64_t ld, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                             void *k_pool, void *v_pool, int32_t bs, const int32_t *block_tables, int32_t bt_stride,
                             const int32_t *ctx_lens, const int32_t *slots, const float *rope_table,
                             const k_qk_norm *qkn, const k_attn_opts *opt, int32_t n_split, void *scratch, void *out,
                             int64_t ldo, void *out8, const float *out8_scale, cudaStream_t s);

size_t k_attn_decode_scratch_bytes(int32_t B, int32_t nh, int32_t nkv, int32_t hd, int32_t n_split);

/* A split count that fills n_sm multiprocessors about twice at batch B (at most what max_ctx needs; a
 * sliding layer's max_ctx is its window). */
int32_t k_attn_decode_splits(int32_t B, int32_t nkv, int32_t max_ctx, int32_t n_sm);

/* ---- XQA (attn_decode_xqa.cu) ----
 * One CTA serves every query head (and every new query token) that shares a KV head, so each KV
 * byte is read once per sequence; the context is split over nb_sub_seq CTAs whose partial results
 * are merged by the last one to finish; paged KV in bf16 or FP8 e4m3; tensor cores (mma.sync) for
 * QK^T and PV. One pipeline per warp (a 3-slot cp.async ring each), keys on the MMA's M side, e4m3
 * MMAs for the FP8 QK^T.
 *
 * Numerics: scores and softmax in float32 (base 2); P rounded to bf16 (bf16 KV) or f16 (FP8 KV)
 * for the PV product, P = 2^(s - m) against a reference m that may trail the running max by up to
 * 8, so P <= 256. FP8 KV is read exactly (e4m3 -> f16 is exact; the 2^8 exponent offset and
 * kv_scale are folded into the QK scale and applied to the output). Q with FP8 KV: the e4m3 keys
 * are multiplied by Q split per row into two e4m3 terms times a power of two, which is exact for
 * every element of at least 2^-9 of its row's largest magnitude and off by at most 2^-17 of that
 * largest otherwise. */

typedef enum k_xqa_kv_type {
    XQA_KV_BF16 = 0,
    XQA_KV_FP8 = 1, /* e4m3, value = code * kv_scale */
} k_xqa_kv_type;

/* Most query rows one CTA holds: (n_heads / n_kv) * q_len <= 16. */
#define XQA_MAX_ROWS 16
/* Keys per CTA tile; a split covers whole tiles. */
#define XQA_TILE 64
#define XQA_MAX_SUB_SEQ 1024

typedef struct k_xqa_params {
    const void *q;               /* [batch, q_len, n_heads, head_dim] bf16; token rows ldq elements apart */
    int64_t ldq;                 /* n_heads*head_dim when dense; the fused qkv row width also works */
    void *out;                   /* [batch, q_len, n_heads, head_dim] bf16; token rows ldo elements apart */
    int64_t ldo;
    const void *k_pool, *v_pool; /* [num_blocks, n_kv, block_size, head_dim] bf16 or e4m3 */
    k_xqa_kv_type kv_type;
    const int32_t *block_tables; /* [batch, bt_stride] int32 (device): physical block of each logical block */
    int32_t bt_stride;
    const int32_t *seq_lens;     /* [batch] int32 (device): keys per sequence INCLUDING its q_len new tokens
                                  * (already written to the pool); 0 = padding row (output zeros) */
    int32_t batch, q_len;        /* query token t of a sequence sits at position seq_len - q_len + t and
                                  * sees keys 0 .. seq_len - q_len + t (causal among the new tokens), or
                                  * only the last `window` of them */
    int32_t n_heads, n_kv;       /* query head h reads KV head h / (n_heads / n_kv) */
    int32_t head_dim;            /* 32, 64, 128 or 256 */
    int32_t block_size;          /* tokens per KV block, >= 1 (any; 16/32/64 are the tuned ones) */
    float scale;                 /* score scale: head_dim^-0.5 (Gemma 1), query_pre_attn_scalar^-0.5 (2/3) */
    float kv_scale;              /* FP8: the pool's dequant multiplier (ignored for bf16) */
    int32_t nb_sub_seq;          /* CTAs per (sequence, KV head) = grid.x, 1..XQA_MAX_SUB_SEQ; a sequence
                                  * reading L keys uses min(nb_sub_seq, ceil(L / XQA_TILE)) of them */
    void *scratch;               /* k_xqa_scratch_bytes(...) bytes of device memory, zeroed once after
                                  * allocation (cudaMemset); launches leave it reusable */
    size_t scratch_bytes;
    float softcap;               /* > 0: scores soft-capped after scaling, before the mask (Gemma 2); 0 = off */
    int32_t window;              /* > 0: query token at position p reads keys p - window < j <= p only; the
                                  * CTAs cover [first row's window start, seq_len); 0 = off (memset: off) */
} k_xqa_params;

/* Scratch for the split merge: a semaphore per (sequence, KV head), then per split the rows'
 * running max and sum and the unnormalized output, float32. Size for the largest batch, q_len
 * and nb_sub_seq that will be launched with this scratch. */
size_t k_xqa_scratch_bytes(int32_t batch, int32_t n_kv, int32_t n_heads, int32_t q_len, int32_t head_dim,
                         int32_t nb_sub_seq);

/* A split count for a launch (or a CUDA-graph bucket) of p->batch sequences up to max_ctx keys
 * (p's batch, n_kv, n_heads, q_len, head_dim and kv_type are read): the most splits that still fit
 * in one wave of resident CTAs on n_sm multiprocessors (a partial second wave costs as much as a
 * full one), at least 2 tiles per split, 1 when the batch alone fills the machine. */
int32_t k_xqa_pick_sub_seq(const k_xqa_params *p, int32_t max_ctx, int32_t n_sm);

/* Resident CTAs per multiprocessor for these parameters (occupancy calculator; 1 on error). */
int32_t k_xqa_ctas_per_sm(const k_xqa_params *p);

/* Run the decode attention. No allocation, no synchronisation; the grid is
 * (nb_sub_seq, n_kv, batch), so a captured graph replays it for any seq_lens. */
gm_status k_attn_decode_xqa(const k_xqa_params *p, cudaStream_t s);

/* Dynamic shared memory of one CTA for head_dim, rows = (n_heads / n_kv) * q_len, fp8 KV or not. */
int32_t k_xqa_smem_bytes(int32_t head_dim, int32_t rows, int32_t fp8);

#ifdef __cplusplus
}
#endif
#endif
