/* engine.h - the forward pass behind one interface: CPU, CUDA and null backends.
 *
 * An engine owns one tensor-parallel shard of the model and that shard's paged
 * KV pool, and runs steps of gm_seq_step entries (ctl/step.h). Rank 0 samples
 * one token per sequence that asks for it and broadcasts the tokens to the
 * other ranks inside the step (CUDA: NCCL broadcast; CPU: gm_comm_broadcast),
 * so that every rank knows every slot's last sample; all ranks must be given
 * the same batch, since they meet in the same all-reduces.
 *
 * Run-ahead: an entry may carry GM_TOKEN_PREVIOUS (ctl/step.h), the token this
 * engine sampled for the slot in its most recent step that sampled for it.
 * Every backend resolves it itself, on every rank, before the embedding lookup
 * (CUDA: from a device-side per-slot table written by the sampler, without a
 * host round trip). Every step is checked by ctl/check.h's validator first.
 *
 * Sampling (common/sampling.h says in which order): log-probabilities of the raw logits when an
 * entry asks, penalties from the slot's tokens since position 0 (worker/engine_pen.h), the
 * min_tokens mask of the entry's stop ids, then temperature / top-k / top-p and the draw. */
#ifndef GM_ENGINE_H
#define GM_ENGINE_H

#include <stdint.h>

#include "common/model_config.h"
#include "common/sampling.h"
#include "common/status.h"
#include "ctl/check.h"
#include "ctl/sizing.h"
#include "ctl/spec.h"
#include "ctl/step.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gm_comm gm_comm; /* parallel/comm.h */

/* What an engine is created with: the worker spec's values (ctl/spec.h, the
 * same list, so that gemma-generate, the tests and gemma-worker fill the same
 * fields), then what is only known in the process that creates it. */
typedef struct gm_engine_opts {
    GM_SPEC_FIELDS(GM_SPEC_DECLARE_)
    const char *model_dir;  /* borrowed */
    int32_t tp_rank;        /* 0 when not sharded */
    gm_comm *comm;          /* borrowed; CPU backend's communicator, NULL when tp_size == 1 */
    const uint8_t *nccl_id; /* CUDA backend, tp_size > 1: the 128-byte ncclUniqueId (borrowed) */
} gm_engine_opts;

/* Defaults (ctl_spec_init): cpu, tp 1, block 16, graphs on, and every sizing
 * field 0: derived at creation (ctl/sizing.h; cpu and null: 64 MiB of KV, 64
 * seqs, 2048 tokens). */
void gm_engine_opts_init(gm_engine_opts *o);

/* The spec's values into o (o->model_dir points into s: keep s alive); tp_rank, comm, nccl_id untouched. */
void gm_engine_opts_set_spec(gm_engine_opts *o, const gm_worker_spec *s);
/* o's values as a spec; GM_ERR_INVALID_ARG when model_dir is too long. */
gm_status gm_engine_opts_spec(const gm_engine_opts *o, gm_worker_spec *s);

typedef struct gm_step_out {
    int32_t *tokens; /* [n_seqs] sampled id, or -1 where logits_mode == NONE; filled on rank 0
                        (other ranks may fill it too) */
    float *logits;   /* optional [rows, vocab] float32, rows in batch order: a GM_LOGITS_ALL
                        sequence gives one row per new token, a LAST one gives one row, NONE
                        gives none; NULL = not wanted (rank 0 only). Raw: before penalties and
                        min_tokens (common/sampling.h) */
    int64_t logits_rows_cap;
    gm_token_logprobs *logprobs; /* optional [n_seqs]: entry i's where gm_seq_step_wants_logprobs
                                    (others untouched); NULL = not wanted (rank 0 only) */
    int32_t *verify;     /* optional [verify_cap]: the samples of the GM_LOGITS_VERIFY entries (ctl/step.h),
                            n_tokens each, entries in batch order; NULL = not wanted (rank 0 only). tokens[i]
                            of such an entry is its last row's sample */
    int64_t verify_cap;
} gm_step_out;

typedef struct gm_engine gm_engine;

typedef struct gm_engine_ops {
    gm_status (*step)(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out);
    void (*destroy)(gm_engine *e);
    /* Copy every layer's K and V of copies[i].src into copies[i].dst (checked by the caller); NULL: the
     * backend keeps no KV contents (null). */
    gm_status (*copy_blocks)(gm_engine *e, const gm_block_copy *copies, int32_t n);
} gm_engine_ops;

/* Common head of every backend's engine struct. */
struct gm_engine {
    const gm_engine_ops *ops;
    gm_model_config cfg;
    gm_engine_opts opts;   /* as created, sizing fields decided */
    int64_t kv_num_blocks; /* blocks in the pool after sizing */
    gm_sizing sizing;      /* what was decided and why (ctl/sizing.h) */
    ctl_limits shared;     /* limits every rank shares (gm_engine_share_limits); 0 = the engine's own */
};

/* Load the model (or nothing, for null), decide the unset sizes (ctl/sizing.h)
 * and size the KV pool; e->sizing says what was chosen and why. */
gm_status gm_engine_create(const gm_engine_opts *o, gm_engine **out);

/* The limits steps are checked against: the engine's own, lowered to l's
 * where l's are > 0 (the coordinator's Start: the smallest over ranks, so that
 * every rank accepts or rejects a plan alike). */
void gm_engine_share_limits(gm_engine *e, const ctl_limits *l);
ctl_limits gm_engine_limits(const gm_engine *e);
gm_status gm_engine_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out);
/* A step with block copies (copy-on-write of shared blocks, ctl/step.h): the step is checked, then the
 * copies (ctl_check_copies), so a refused plan touches nothing; then the copies run, then the step. */
gm_status gm_engine_step_copy(gm_engine *e, const gm_block_copy *copies, int32_t n_copies, const gm_seq_step *seqs,
                              int32_t n_seqs, gm_step_out *out);
void gm_engine_destroy(gm_engine **e);

/* Backend constructors (engine.c dispatches). */
gm_status gm_engine_cpu_create(const gm_engine_opts *o, gm_engine **out);
gm_status gm_engine_cuda_create(const gm_engine_opts *o, gm_engine **out);
gm_status gm_engine_null_create(const gm_engine_opts *o, gm_engine **out);

#ifdef __cplusplus
}
#endif
#endif
