/* sizing.h - the rule that turns a spec's unset sizing fields into numbers: the
 * KV pool, the most sequences and tokens in one step, the longest sequence.
 *
 * A pure function of the model, the spec and the device's memory, so that
 * every program that builds an engine (gemma-worker, gemma-generate, tests)
 * gets the same numbers, and the rule is tested without a GPU. A field the
 * spec sets always wins. With no device (cpu, null backends) the defaults are
 * fixed: 64 MiB of KV, 64 sequences, 2048 tokens, the model's context.
 *
 * On a device (cuda), the engine calls it twice:
 *   1. after the weights are loaded, with free_weights measured and
 *      free_runtime = 0: max_tokens, max_seqs and max_context, from an
 *      estimate of the runtime buffers (gm_sizing_runtime_bytes) and of the
 *      pool that would be left;
 *   2. after the runtime buffers are allocated, with free_runtime measured:
 *      the same limits again (same inputs) and the pool, kv_mem_fraction
 *      (default 0.9) of free_runtime.
 * The rule for unset fields on a device:
 *   max_tokens  = 8192, halved (not below 512) while the step's activations
 *                 would take more than an eighth of free_weights;
 *   pool tokens = the pool's blocks * kv_block_size (estimated in step 1);
 *   max_seqs    = clamp(pool tokens / 256, 8, 1024), and at most max_tokens
 *                 (vLLM derives its batch from gpu_memory_utilization alike);
 *   max_context = the model's max_position, or the pool tokens rounded down to
 *                 a block when the pool cannot hold one such sequence.
 * A kv_mem_bytes or kv_num_blocks that does not fit in free_runtime is an error
 * that says how much would fit. */
#ifndef GM_CTL_SIZING_H
#define GM_CTL_SIZING_H

#include <stdint.h>

#include "common/model_config.h"
#include "common/status.h"
#include "ctl/spec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GM_SIZING_WHY 160

/* Defaults and bounds of the rule (see above). */
#define GM_SIZING_HOST_KV_BYTES (64ll << 20)
#define GM_SIZING_HOST_SEQS 64
#define GM_SIZING_HOST_TOKENS 2048
#define GM_SIZING_DEVICE_TOKENS 8192
#define GM_SIZING_DEVICE_MIN_TOKENS 512
#define GM_SIZING_FRACTION 0.9
#define GM_SIZING_TOKENS_PER_SEQ 256
#define GM_SIZING_MIN_SEQS 8
#define GM_SIZING_MAX_SEQS 1024

/* Memory of the device a rank runs on, in bytes. */
typedef struct gm_device_mem {
    int64_t total;          /* the device's memory; 0 = no device (cpu, null backends) */
    int64_t free_weights;   /* free once the weights are loaded */
    int64_t free_runtime;   /* free once the runtime buffers are allocated; 0 = not yet (step 1) */
    int64_t kv_block_bytes; /* one KV block, all layers, K and V, this rank; 0 = gm_sizing_block_bytes */
} gm_device_mem;

/* What a rank chose, and why (one line each, for the logs). */
typedef struct gm_sizing {
    int64_t kv_num_blocks;  /* blocks in the pool (0 in step 1, and for a host engine before it sizes) */
    int64_t kv_bytes;       /* the pool's budget in bytes */
    int64_t kv_block_bytes; /* one block, all layers, K and V */
    int32_t max_seqs, max_tokens, max_context;
    char why_kv[GM_SIZING_WHY], why_seqs[GM_SIZING_WHY], why_tokens[GM_SIZING_WHY], why_context[GM_SIZING_WHY];
} gm_sizing;

/* Decide (see above). cfg may be NULL for the null backend without a model
 * (max_context then stays 0: the engine's own). GM_ERR_CAPACITY when the
 * device cannot hold the weights' leftovers or one KV block, or a given budget
 * does not fit; the message says what would. */
gm_status gm_sizing_decide(const gm_model_config *cfg, const gm_worker_spec *spec, const gm_device_mem *mem,
                           gm_sizing *out);

/* Bytes of one KV block of this rank: 2 (K, V) * layers * KV heads of the rank
 * * kv_block_size * head_dim * element size (cpu f32, cuda bf16 or fp8, null bf16). */
int64_t gm_sizing_block_bytes(const gm_model_config *cfg, const gm_worker_spec *spec);

/* Estimate of the CUDA engine's runtime buffers for these limits (activations
 * for max_tokens rows, logits for max_seqs rows, per-sequence metadata and
 * attention scratch, the RoPE table), plus a fixed reserve for library
 * workspaces, NCCL and graphs. */
int64_t gm_sizing_runtime_bytes(const gm_model_config *cfg, const gm_worker_spec *spec, int32_t max_seqs,
                                int32_t max_tokens, int32_t max_context);

#ifdef __cplusplus
}
#endif
#endif
