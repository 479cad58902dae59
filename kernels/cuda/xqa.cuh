/* xqa.cuh - XQA-style decode attention: one CTA serves every query head (and every new query
 * token) that shares a KV head, so each KV byte is read once per sequence; the context is split
 * over nb_sub_seq CTAs whose partial results are merged by the last one to finish (FACTS.md
 * section 4); paged KV in bf16 or FP8 e4m3; tensor cores (mma.sync m16n8k16) for QK^T and PV.
 *
 * Numerics: scores and softmax in float32 (base 2); P rounded to bf16 (bf16 KV) or f16 (FP8 KV)
 * for the PV product (v2 keeps P = 2^(s - m) against a reference m that may trail the running
 * max by up to 8, so P <= 256). FP8 KV is read exactly (e4m3 -> f16 is exact; the 2^8 exponent offset and
 * kv_scale are folded into the QK scale and applied to the output). Q with FP8 KV: kernel v1
 * rounds it to f16 (so |q| must stay below 65504); v2 multiplies the e4m3 keys directly by Q
 * split per row into two e4m3 terms times a power of two, which is exact for every element of at
 * least 2^-9 of its row's largest magnitude and off by at most 2^-17 of that largest otherwise.
 *
 * Two kernels: v2 (default; G * q_len <= 16 rows: one pipeline per warp, swapped MMAs, e4m3
 * MMAs for FP8 QK^T) and v1 (GM_XQA_V=1 in the environment, read once; also every launch with
 * more than 16 rows). Both use the same scratch and leave it reusable by either. */
#ifndef GM_K_XQA_CUH
#define GM_K_XQA_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum xqa_kv_type {
    XQA_KV_BF16 = 0,
    XQA_KV_FP8 = 1, /* e4m3, value = code * kv_scale */
} xqa_kv_type;

/* Most query rows one CTA holds: (n_heads / n_kv) * q_len <= 32. */
#define XQA_MAX_ROWS 32
/* Keys per CTA tile; a split covers whole tiles. */
#define XQA_TILE 64
#define XQA_MAX_SUB_SEQ 1024

typedef struct xqa_params {
    const void *q;               /* [batch, q_len, n_heads, head_dim] bf16; token rows ldq elements apart */
    int64_t ldq;                 /* n_heads*head_dim when dense; the fused qkv row width also works */
    void *out;                   /* [batch, q_len, n_heads, head_dim] bf16; token rows ldo elements apart */
    int64_t ldo;
    const void *k_pool, *v_pool; /* [num_blocks, n_kv, block_size, head_dim] bf16 or e4m3 */
    xqa_kv_type kv_type;
    const int32_t *block_tables; /* [batch, bt_stride] int32 (device): physical block of each logical block */
    int32_t bt_stride;
    const int32_t *seq_lens;     /* [batch] int32 (device): keys per sequence INCLUDING its q_len new tokens
                                  * (already written to the pool); 0 = padding row (output zeros) */
    int32_t batch, q_len;        /* query token t of a sequence sits at position seq_len - q_len + t and
                                  * sees keys 0 .. seq_len - q_len + t (causal among the new tokens) */
    int32_t n_heads, n_kv;       /* query head h reads KV head h / (n_heads / n_kv) */
    int32_t head_dim;            /* 32, 64, 128 or 256 */
    int32_t block_size;          /* tokens per KV block, >= 1 (any; 16/32/64 are the tuned ones) */
    float scale;                 /* softmax scale, 1/sqrt(head_dim) for Gemma */
    float kv_scale;              /* FP8: the pool's dequant multiplier (ignored for bf16) */
    int32_t nb_sub_seq;          /* CTAs per (sequence, KV head) = grid.x, 1..XQA_MAX_SUB_SEQ; a sequence of
                                  * L keys uses min(nb_sub_seq, ceil(L / XQA_TILE)) of them */
    void *scratch;               /* xqa_scratch_bytes(...) bytes of device memory, zeroed once after
                                  * allocation (cudaMemset); launches leave it reusable */
    size_t scratch_bytes;
} xqa_params;

/* Scratch for the split merge: a semaphore per (sequence, KV head), then per split the rows'
 * running max and sum and the unnormalized output, float32. Size for the largest batch, q_len
 * and nb_sub_seq that will be launched with this scratch. */
size_t xqa_scratch_bytes(int32_t batch, int32_t n_kv, int32_t n_heads, int32_t q_len, int32_t head_dim,
                         int32_t nb_sub_seq);

/* A split count for a launch (or a CUDA-graph bucket) of p->batch sequences up to max_ctx keys
 * (p's batch, n_kv, n_heads, q_len, head_dim and kv_type are read): the most splits that still fit
 * in one wave of resident CTAs on n_sm multiprocessors (a partial second wave costs as much as a
 * full one), at least 2 tiles per split, 1 when the batch alone fills the machine. */
int32_t xqa_pick_sub_seq(const xqa_params *p, int32_t max_ctx, int32_t n_sm);

/* Resident CTAs per multiprocessor for these parameters (occupancy calculator; 1 on error). */
int32_t xqa_ctas_per_sm(const xqa_params *p);

/* Run the decode attention. No allocation, no synchronisation; the grid is
 * (nb_sub_seq, n_kv, batch), so a captured graph replays it for any seq_lens. */
gm_status xqa_decode(const xqa_params *p, cudaStream_t s);

/* Dynamic shared memory of one CTA for head_dim, rows = (n_heads / n_kv) * q_len, fp8 KV or not. */
int32_t xqa_smem_bytes(int32_t head_dim, int32_t rows, int32_t fp8);

/* The kernel version launches use: 1 or 2 (GM_XQA_V=1 gives 1, anything else 2; read once). */
int32_t xqa_version(void);

/* Override the version for the rest of the process (benchmarks and tests compare both): 1 or 2;
 * 0 goes back to the environment's choice. Not thread-safe; xqa_pick_sub_seq, xqa_ctas_per_sm and
 * xqa_smem_bytes follow it too. */
void xqa_set_version(int32_t v);

#ifdef __cplusplus
}
#endif
#endif
