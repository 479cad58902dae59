/* engine.h - the forward pass behind one interface: CPU, CUDA and null backends.
 *
 * An engine owns one tensor-parallel shard of the model and that shard's paged
 * KV pool. A step runs a batch of sequences, each appending n_tokens new tokens
 * (a prefill chunk, or 1 for decode) at start_pos, with KV for positions
 * [0, start_pos + n_tokens) living in the blocks of its block table. Rank 0
 * samples one token per sequence that asks for it and broadcasts the tokens to
 * the other ranks inside the step (CUDA: NCCL broadcast; CPU: gm_comm_broadcast),
 * so that every rank knows every slot's last sample; all ranks must be given the
 * same batch, since they meet in the same all-reduces.
 *
 * Run-ahead (DESIGN.md): the coordinator sends step k+1 before it has step k's
 * tokens. A decode entry (n_tokens == 1, start_pos > 0) whose token it does not
 * know yet carries tokens[0] == -1, meaning "the token this engine sampled for
 * this slot in the most recent step that sampled for it" - in practice the
 * previous step. Every backend resolves it itself, on every rank, before the
 * embedding lookup (CUDA: from a device-side per-slot table written by the
 * sampler, without a host round trip); a -1 for a slot with no sample yet is an
 * error. -1 never appears in a multi-token entry or at position 0. */
#ifndef GM_ENGINE_H
#define GM_ENGINE_H

#include <stdint.h>

#include "../common/model_config.h"
#include "../common/sampling.h"
#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gm_comm gm_comm; /* parallel/comm.h */

typedef enum gm_backend {
    GM_BACKEND_CPU = 0,
    GM_BACKEND_CUDA,
    GM_BACKEND_NULL, /* emits tokens without a model: measures the serving path */
} gm_backend;

/* "cpu" | "cuda" | "null" -> backend; -1 if unknown. */
int gm_backend_parse(const char *s);
const char *gm_backend_name(gm_backend b);

typedef enum gm_quant {
    GM_QUANT_NONE = 0, /* weights as stored (bf16/f16/f32) */
    GM_QUANT_FP8,
    GM_QUANT_AWQ,
} gm_quant;

typedef enum gm_kv_dtype {
    GM_KV_AUTO = 0, /* f32 on CPU, bf16 on CUDA */
    GM_KV_BF16,
    GM_KV_FP8,
} gm_kv_dtype;

typedef struct gm_engine_opts {
    gm_backend backend;
    const char *model_dir;    /* borrowed */
    int32_t tp_rank, tp_size; /* 0, 1 when not sharded */
    gm_comm *comm;            /* borrowed; CPU backend's communicator, NULL when tp_size == 1 */
    const uint8_t *nccl_id;   /* CUDA backend, tp_size > 1: the 128-byte ncclUniqueId (borrowed) */
    int32_t device;           /* CUDA device ordinal */
    int32_t kv_block_size;    /* tokens per KV block */
    int64_t kv_num_blocks;    /* > 0: exactly this many; 0: derive from kv_mem_bytes / kv_mem_fraction */
    int64_t kv_mem_bytes;     /* KV budget in bytes (CPU; CUDA when > 0) */
    double kv_mem_fraction;   /* CUDA: fraction of free memory for KV after weights (0 = 0.9) */
    int32_t max_seqs;         /* most sequences in one step (CUDA graph buckets, buffers) */
    int32_t max_tokens;       /* most tokens in one step */
    int32_t max_context;      /* longest sequence (<= config max_position) */
    gm_quant quant;
    gm_kv_dtype kv_dtype;
    int32_t use_graphs;       /* CUDA: capture decode steps as graphs (default on) */
    int32_t lm_head_fp8;      /* LM head in FP8 e4m3 (default 0 = bf16 on CUDA, the weights' type on CPU):
                               * the tied embedding quantized per tensor (amax / 448), the final-normed
                               * rows with the static scale cpu_fp8_lm_head_act_scale, float32 logits */
    int32_t verbose;          /* progress output on stderr while loading */
} gm_engine_opts;

/* Defaults: cpu, tp 1, block 16, 64 MiB of KV, 64 seqs, 2048 tokens, graphs on. */
void gm_engine_opts_init(gm_engine_opts *o);

enum {
    GM_LOGITS_NONE = 0, /* no output for this sequence (a prefill chunk that is not the last) */
    GM_LOGITS_LAST = 1, /* sample a token from the last new position */
    GM_LOGITS_ALL = 2,  /* logits of every new position (teacher forcing); also samples the last */
};

typedef struct gm_seq_step {
    int32_t slot;               /* sequence slot, 0..max_seqs-1, stable while it runs */
    const int32_t *tokens;      /* [n_tokens] ids to append, or {-1}: the slot's last sample (above); borrowed */
    int32_t n_tokens;
    int32_t start_pos;          /* tokens already in this sequence's KV */
    const int32_t *block_table; /* [n_blocks] physical KV block ids, logical order */
    int32_t n_blocks;           /* >= ceil((start_pos + n_tokens) / kv_block_size) */
    int32_t logits_mode;        /* GM_LOGITS_* */
    gm_sampling sampling;
} gm_seq_step;

typedef struct gm_step_out {
    int32_t *tokens; /* [n_seqs] sampled id, or -1 where logits_mode == NONE; filled on rank 0
                        (other ranks may fill it too) */
    float *logits;   /* optional [rows, vocab] float32, rows in batch order: a GM_LOGITS_ALL
                        sequence gives one row per new token, a LAST one gives one row, NONE
                        gives none; NULL = not wanted (rank 0 only) */
    int64_t logits_rows_cap;
} gm_step_out;

typedef struct gm_engine gm_engine;

typedef struct gm_engine_ops {
    gm_status (*step)(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out);
    void (*destroy)(gm_engine *e);
} gm_engine_ops;

/* Common head of every backend's engine struct. */
struct gm_engine {
    const gm_engine_ops *ops;
    gm_model_config cfg;
    gm_engine_opts opts;
    int64_t kv_num_blocks; /* blocks in the pool after sizing */
};

/* Load the model (or nothing, for null) and size the KV pool. */
gm_status gm_engine_create(const gm_engine_opts *o, gm_engine **out);
gm_status gm_engine_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out);
void gm_engine_destroy(gm_engine **e);

/* Backend constructors (engine.c dispatches). */
gm_status gm_engine_cpu_create(const gm_engine_opts *o, gm_engine **out);
gm_status gm_engine_cuda_create(const gm_engine_opts *o, gm_engine **out);
gm_status gm_engine_null_create(const gm_engine_opts *o, gm_engine **out);

#ifdef __cplusplus
}
#endif
#endif
