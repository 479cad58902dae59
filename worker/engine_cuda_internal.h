/* engine_cuda_internal.h - internal to the CUDA engine (CUDA C++ only): its state and the calls between
 * its files. Not a contract for anyone else (worker/engine.h and engine_cuda.h are).
 *
 *   engine_cuda.cu          create / destroy, the engine's options, the gm_engine_cuda_* extras
 *   engine_cuda_load.cu     weights: device layout, loading (bf16, FP8 quantized at load or from an FP8
 *                           checkpoint, AWQ), random weights, the FP8 LM head
 *   engine_cuda_forward.cu  the forward pass of one step (linear(), attention(), the decode-attention rule)
 *   engine_cuda_step.cu     a step: its metadata, the decode buckets and their CUDA graphs, the
 *                           activation / scratch / KV buffers, the logits dump, the profile
 *
 * One forward pass for Gemma 1, 2 and 3 (text), switched per layer by what the config gives it (cu_layer:
 * the sandwich norms, the attention options, the RoPE table, the QK-norm) and per model (the final soft-cap).
 *
 * Activations are bf16 as Hugging Face computes them (residual stream, norms' outputs, projections);
 * norms, softmax and accumulations are float32; logits are float32. Weights live on the device fused per
 * layer: q|k|v [(nq + 2 nkv) hd, H], gate|up [2 I, H], o [H, nq hd], down [H, I]; norm weights as float32
 * (1 + w). The KV pool holds, per layer, K and V of [num_blocks, nkv, block_size, head_dim] bf16 (or e4m3). */
#ifndef GM_ENGINE_CUDA_INTERNAL_H
#define GM_ENGINE_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "../kernels/cuda/attn_opts.h"
#include "../kernels/cuda/cuda_util.cuh"
#include "../kernels/cuda/gemm.cuh"
#include "../kernels/cuda/gemm_awq.cuh"
#include "../kernels/cuda/gemm_fp8.cuh"
#include "../kernels/cuda/quant_fp8.cuh"
#include "../common/safetensors.h"
#include "../parallel/nccl_comm.h"
#include "awq.h"
#include "engine.h"
#include "engine_cuda.h"
#include "engine_pen.h"
#include "weights.h"

#define LOGIT_CHUNK 64     /* rows per LM-head pass when dumping logits */
#define MAX_BUCKETS 64     /* decode batch sizes with a CUDA graph */
#define PROF_MAX 1024      /* profile marks per step */
#define SC_STRIDE 64       /* floats between two device scales (256 bytes: cuBLASLt scale pointers) */
#define XQA_MIN_BATCH 8    /* XQA for MQA/GQA decode batches from this size (cu_decode_uses_xqa) */
#define CU_GEMV_ROWS 2     /* bf16 products of at most this many rows take the GEMV (kernels/cuda/gemm.cuh) */
#define CU_GU_FUSED_ROWS 4 /* FP8 gate|up with its GeGLU in the GEMV v2 epilogue: at most this many rows */

/* Decode-step profile: events between the ops of the forward pass (recorded as graph nodes when
 * captured), summed per op kind. */
enum {
    OP_EMBED = 0,
    OP_NORM,
    OP_QKV,
    OP_ROPE_KV,
    OP_ATTN,
    OP_O,
    OP_GATE_UP,
    OP_DOWN,
    OP_ALLREDUCE,
    OP_LM_HEAD,
    OP_SAMPLE,
    OP_COUNT
};

typedef struct prof_state {
    int on, n;
    cudaEvent_t ev[PROF_MAX];
    int op[PROF_MAX];
    double us[OP_COUNT];
    int64_t steps;
} prof_state;

/* The format of a product's weight. One format for every decoder product of an engine. */
typedef enum cu_wfmt {
    CU_W_BF16 = 0, /* cuBLASLt, or the bf16 GEMV at <= opt.gemv_rows rows */
    CU_W_FP8,      /* e4m3 with a per-tensor scale; activations quantized to e4m3 (static or dynamic scale) */
    CU_W_AWQ,      /* W4A16 AutoAWQ int4 */
} cu_wfmt;

/* One product y = x . W^T, W [N, K], in the format the engine runs: the forward pass never looks inside
 * (linear() does). Device memory, owned by the layer (the LM head's borrowed from the embedding). */
typedef struct cu_linear {
    cu_wfmt fmt;
    int64_t N, K;
    bf16 *w;         /* CU_W_BF16: [N, K] */
    uint8_t *w8;     /* CU_W_FP8: [N, K] e4m3 */
    float *w_scale;  /* CU_W_FP8: [1] f32 weight scale (the float after it is amax scratch at load) */
    float *in_scale; /* CU_W_FP8: [1] f32 static activation scale (an FP8 checkpoint's input_scale) */
    int act_slot;    /* CU_W_FP8: dynamic activation scale at act_sc + act_slot * SC_STRIDE; -1: static only */
    cpu_awq_w awq;   /* CU_W_AWQ: qweight [K, N/8] int32, qzeros [K/g, N/8] int32, scales [K/g, N] fp16 */
    void *ws;        /* CU_W_AWQ: k_gemv_awq's workspace of this fused shape (shared by the layers) */
    size_t ws_bytes;
} cu_linear;

/* Products of a layer, in the order of the forward pass (the FP8 scale slots and AWQ workspaces too). */
enum { P_QKV = 0, P_O, P_GATE_UP, P_DOWN, P_COUNT };

typedef struct cu_layer {
    cu_linear qkv;     /* [(nq + 2 nkv) hd, H] */
    cu_linear o;       /* [H, nq hd] */
    cu_linear gate_up; /* [2 ni, H]: gate rows then up rows */
    cu_linear down;    /* [H, ni] */
    float *in_norm;    /* [H] 1 + w: input_layernorm */
    float *post_norm;  /* [H] 1 + w: the norm before gate|up (Gemma 1's post_attention_layernorm, Gemma 2/3's
                        * pre_feedforward_layernorm) */
    float *attn_out_norm; /* Gemma 2/3: [H] 1 + w: post_attention_layernorm, on o_proj's output; else NULL */
    float *mlp_out_norm;  /* Gemma 2/3: [H] 1 + w: post_feedforward_layernorm, on down_proj's output; else NULL */
    float *q_norm, *k_norm; /* Gemma 3: [hd] 1 + w: the QK-norm; else NULL */
    k_attn_opts attn;  /* scale, soft-cap, window (0 on full layers and where the window covers max_context) */
    const float *rope; /* [max_context, hd / 2, 2]: the engine's table for this layer's RoPE base and scaling */
    float *wsc;        /* FP8: [8 * SC_STRIDE] f32: weight scales of qkv, o, gate|up, down (SC_STRIDE apart), then
                        * the static activation scales of the same four products */
    float kv_scale;    /* FP8 KV: this layer's dequant multiplier (k_scale/v_scale of an FP8 checkpoint, else 1) */
} cu_layer;

/* Product i (P_QKV..P_DOWN) of a layer. */
static inline cu_linear *cu_layer_linear(cu_layer *y, int i)
{
    cu_linear *p[P_COUNT] = {&y->qkv, &y->o, &y->gate_up, &y->down};
    return p[i];
}

/* The three log-probability arrays in a block of max_seqs rows (c->lp_d, or its mirror c->lp_h). */
static inline void cu_lp_layout(void *base, int32_t max_seqs, float **lp, int32_t **ids, float **top)
{
    char *b = (char *)base;
    *lp = (float *)b;
    *ids = (int32_t *)(b + (size_t)max_seqs * 4);
    *top = (float *)(b + (size_t)max_seqs * 4 * (1 + GM_MAX_TOP_LOGPROBS));
}

static inline size_t cu_lp_bytes(int32_t max_seqs)
{
    return (size_t)max_seqs * 4 * (1 + 2 * GM_MAX_TOP_LOGPROBS);
}

/* Device (or pinned host mirror) arrays of one step; same offsets on both sides. */
/* Sampled rows: row i < Sc is sequence i's (its last token's); a GM_LOGITS_VERIFY entry (speculative
 * decoding, ctl/step.h) of n tokens adds rows Sc.. for its first n - 1 tokens, so the arrays below marked
 * [Rc] hold Rc = Sc + those rows (the attention reads only their first Sc). */
typedef struct meta_ptrs {
    int32_t *ids, *pos, *slot, *tok_slot;                                   /* [Tc] */
    int32_t *q_start, *n_new, *start_pos, *ctx_len, *rows, *sslot, *tokens; /* [Rc] */
    int32_t *pslot, *pen, *mask_off, *mask_n;                               /* [Rc] k_sample_aux's */
    uint64_t *counters;                                                     /* [Rc] */
    gm_sampling *params;                                                    /* [Rc] */
    int32_t *bt;                                                            /* [Sc, max_blocks] */
    int32_t *mask_ids;  /* [Sc * GM_MAX_STOP_SET] last: a step copies only the part it fills */
    size_t mask_at;     /* byte offset of mask_ids */
    size_t bytes;
} meta_ptrs;

/* How a step attends its decode rows (the step's first `rows` rows, one new token each): the kernel the
 * rule picks (cu_decode_uses_xqa), its split count and scratch. */
typedef struct cu_attn_plan {
    int32_t rows;    /* decode rows (0: none) */
    int xqa;         /* 1: k_attn_decode_xqa; 0: k_attn_decode / _fp8 / _rope */
    int32_t n_split; /* k_attn_decode's split count, or XQA's nb_sub_seq */
    int32_t n_split_w; /* the same for sliding layers (their window's keys only; <= n_split) */
    void *scratch;   /* XQA: a bucket's own zeroed scratch, or the eager one */
    size_t scratch_bytes;
    int clear; /* XQA on the eager scratch (shared by all batch sizes): clear its semaphores first */
} cu_attn_plan;

typedef struct cu_bucket {
    int32_t size;
    int32_t warm;         /* ran eagerly once (cuBLASLt algorithms chosen) */
    int32_t prof_n;       /* profile marks captured in the graph */
    cudaGraphExec_t exec; /* NULL until captured */
    cu_attn_plan attn;    /* its decode attention; XQA: its own scratch (the semaphores' offsets depend on
                           * the batch), owned by the bucket */
} cu_bucket;

/* The CUDA engine's own choices (not model options): set at create from the rules in code, changed only
 * by the gm_engine_cuda_set_* calls of benchmarks and tests. docs/KERNELS.md says why each is what it is. */
typedef struct cu_opts {
    gm_cuda_attn attn; /* decode attention: GM_CUDA_ATTN_AUTO = the measured rule (cu_decode_uses_xqa) */
    int32_t gemv_rows; /* bf16 products with at most this many rows take the GEMV (CU_GEMV_ROWS) */
    int gu_fused;      /* FP8 weights, <= CU_GU_FUSED_ROWS rows: gate|up in the FP8 GEMV v2 with the GeGLU in
                        * its epilogue; where k_gemv_fp8_v2_for takes v2 for gate|up */
    gm_cuda_prefill prefill; /* prefill attention: GM_CUDA_PREFILL_AUTO = the rule (cu_prefill_rule) */
    int prefill_hopper;      /* the rule's answer under `prefill`: prompt rows through k_attn_prefill_hopper */
    int prefill_e4m3;        /* ... with an FP8 pool on e4m3 tensor cores (k_prefill_opts.kv_fp8_mma) */
} cu_opts;

typedef struct cuda_engine {
    gm_engine base;
    gm_tp_layout tp;
    cu_opts opt;
    int32_t n_sm;
    cudaStream_t stream;
    k_gemm_ctx *gemm;
    gm_nccl *nccl;
    st_model *model;
    int64_t weight_bytes;

    int64_t H, V, hd, nq, nkv, ni, n_qkv; /* local shapes */
    int32_t max_blocks;                   /* block-table row length: ceil(max_context / bs) */
    float eps, normalizer;
    int32_t window;      /* the sliding layers' window where it is shorter than max_context, else 0 */
    float final_softcap; /* Gemma 2: logits = tanh(l / cap) * cap; 0 = none */

    cu_wfmt wfmt;      /* the decoder products' format */
    bf16 *embed;       /* [V, H] also the LM head */
    uint8_t *embed8;   /* --lm-head fp8: [V, H] e4m3 of embed (the LM head reads it instead) */
    float *lm_sc;      /* [2 * SC_STRIDE]: embed8's scale, amax scratch; then the rows' static scale */
    uint8_t *lmq8;     /* [cap_rows, H] e4m3 rows into the FP8 LM head */
    cu_linear lm;      /* the LM head: logits = x . embed^T (bf16), or the e4m3 copy with --lm-head fp8 */
    float *final_norm; /* [H] */
    cu_layer *layers;
    float *rope_tab;   /* [max_context, hd / 2, 2] cos, sin: rope_theta, rope_scale (full layers) */
    float *rope_local; /* the same for sliding layers (rope_theta_local, no scaling) where it differs; else NULL */

    void *kv; /* [layers][2][num_blocks, nkv, bs, hd] bf16, or e4m3 with --kv-dtype fp8 */
    int64_t layer_elems;
    int kv8;            /* FP8 KV pool */
    int32_t *neg_slots; /* [cap_t] all -1: k_rope_kv_write rotates without writing a bf16 pool */

    /* FP8 weights (--quant fp8 or an FP8 checkpoint): per-tensor activation scales, dynamic, or the
     * checkpoint's static input_scale when every product has one */
    int fp8_ckpt;   /* weights read as e4m3 from the checkpoint (gemma-quantize --fp8) */
    int static_act; /* activation scales from the products' in_scale */
    k_gemm_fp8_ctx *gemm8;
    uint8_t *xq8, *attq8, *actq8; /* [T, H], [T, nq hd], [T, ni] e4m3 */
    float *act_sc;                /* [5 * SC_STRIDE]: activation scales of qkv, o, gate|up, down; amax scratch */
    bf16 *act_tmp;                /* [T, max(H, ni)] bf16 scratch of the fused dynamic quantizers */
    bf16 *wstage;                 /* loader: one bf16 matrix before quantization */

    void *awq_ws[P_COUNT]; /* AWQ: k_gemv_awq's split-K workspaces, one per fused shape (qkv, o, gate|up,
                            * down): its counters' offsets depend on N, so shapes must not share one; zeroed once */
    size_t awq_ws_bytes[P_COUNT];

    void *xqa_scratch; /* eager (non-graph) decode steps: sized for max_seqs; semaphores cleared per launch */
    size_t xqa_bytes, xqa_sem_bytes;

    int64_t cap_t;                       /* token rows of the activations */
    bf16 *h, *xn, *qkv, *att, *gu, *act; /* [T, H], [T, H], [T, n_qkv], [T, nq hd], [T, 2 ni], [T, ni] */
    void *delta;                         /* [T, H] bf16 (tp 1) or f32 (tp > 1) */
    int delta_f32;
    bf16 *xs;      /* [cap_rows, H] rows gathered for the LM head */
    float *logits; /* [cap_rows, V] */
    int64_t cap_rows;
    int32_t *dump_rows; /* [cap_t] token rows whose logits the caller wants */
    int32_t *last_tok;  /* [max_seqs] token each slot sampled last */
    /* sampling extras (kernels/cuda/sample.cuh: k_sample_aux), rank 0 */
    int32_t pen_cap;       /* entries of a slot's penalty table (gm_pen_table_cap) */
    int32_t *pen_keys;     /* [max_seqs, pen_cap] */
    int32_t *pen_counts;   /* [max_seqs, pen_cap] */
    float *pen_raw;        /* [max_seqs, pen_cap] */
    gm_pen_track pen;      /* host: which slots' tables may be built on (every rank, for the same answer) */
    uint8_t *pen_flags_h;  /* host [max_seqs]: a step's GM_PEN_* per caller's entry */
    float *lp_d;           /* rows in step order: [max_seqs] f32 sampled tokens' log-probabilities, then
                            * [max_seqs, GM_MAX_TOP_LOGPROBS] int32 alternatives and f32 theirs */
    char *lp_h;            /* pinned mirror, same layout */
    void *dec_scratch;
    size_t dec_scratch_bytes;

    char *meta_d, *meta_h; /* device buffer and pinned mirror */
    size_t meta_cap;
    int32_t *tok_h;       /* pinned [max(cap_t, max_seqs)]: a step's sampled rows */
    int32_t *vrow_h;      /* host [max_seqs]: a verify entry's first extra row (caller's indices) */
    int32_t *spos_h;      /* host [max_seqs]: each caller's entry's row in step order */
    int32_t *copy_d, *copy_h; /* [2 max_seqs] a step's block copies (src, dst pairs): device, pinned mirror */
    int32_t *dump_rows_h; /* host [cap_t] */
    int32_t *order_h;     /* host [max_seqs]: a mixed step's sequences, decode ones first (caller's indices) */
    int64_t *tstart_h;    /* host [max_seqs]: first token row of each caller's sequence */

    cu_bucket buckets[MAX_BUCKETS];
    int32_t n_buckets;
    prof_state prof;
} cuda_engine;

/* What the forward pass of one step runs on. */
typedef struct fwd_args {
    meta_ptrs m;      /* device pointers */
    int64_t T;        /* token rows */
    int32_t S;        /* sequences */
    int32_t R;        /* rows sampled: S, and the extra rows of verify entries (meta_ptrs) */
    int decode;       /* every sequence appends one token: T == S, row i = sequence i */
    int32_t max_new;  /* prompt chunks: the largest n_new */
    int sample;       /* rank 0 computes logits and samples */
    cu_attn_plan dec; /* the decode rows' attention (the first dec.rows sequences; all of a decode step) */
} fwd_args;

/* ---- engine_cuda_load.cu ---- */

/* cudaMalloc with a clear out-of-memory message naming `what`. */
gm_status cu_dev_alloc(void **p, size_t bytes, const char *what);
/* Device memory of every weight (AWQ tensors: as they are uploaded), the products' formats and shapes. */
gm_status cu_weights_alloc(cuda_engine *c);
/* The checkpoint's weights (lin: its quantized Linears, FP8 or AWQ; NULL for bf16) onto the device. */
gm_status cu_weights_load(cuda_engine *c, const gm_weights *w, const gm_linear *lin);
/* cfg's shapes drawn on the device from seed (uniform, small): benchmarks at the real sizes. */
gm_status cu_weights_random(cuda_engine *c, uint64_t seed);
/* The AWQ products' workspaces (sized while uploading), zeroed, given to every layer's products. */
gm_status cu_weights_awq_workspaces(cuda_engine *c);
/* --lm-head fp8: the e4m3 copy of the embedding and the rows' static scale; c->lm becomes FP8. */
gm_status cu_lm_head_fp8_setup(cuda_engine *c);
/* Free every weight. */
void cu_weights_free(cuda_engine *c);

/* ---- engine_cuda_forward.cu ---- */

/* One step's forward pass (captured into a decode bucket's graph, or run eagerly). */
gm_status cu_forward(cuda_engine *c, const fwd_args *a);
/* logits [nr, V] f32 (c->logits) = x [nr, H] bf16 . the LM head. */
gm_status cu_lm_head(cuda_engine *c, const bf16 *x, int64_t nr);
/* The decode-attention rule: XQA (1) or k_attn_decode (0) for a decode batch of `rows` rows. */
int cu_decode_uses_xqa(const cuda_engine *c, int32_t rows);
/* The decode attention of `rows` rows (0: none) of an eager step, on the engine's shared XQA scratch. */
void cu_attn_plan_eager(const cuda_engine *c, int32_t rows, cu_attn_plan *p);
/* The prefill-attention rule under `mode`: sets c->opt.prefill and c->opt.prefill_hopper (needs the KV pool's
 * size); GM_ERR_UNSUPPORTED (nothing changed) when mode forces the Hopper kernel where it does not serve. */
gm_status cu_prefill_rule(cuda_engine *c, gm_cuda_prefill mode);
/* Under the automatic rule, check the Hopper prefill kernels it picked against mma.sync on this device and
 * model; a variant that fails or disagrees is turned off with a warning. */
gm_status cu_prefill_selfcheck(cuda_engine *c);
/* A decode plan's split counts for a batch of `rows` rows: full layers (max_context keys), sliding layers
 * (window keys). */
void cu_attn_plan_splits(const cuda_engine *c, cu_attn_plan *p);
/* Record a profile mark after op (-1: the start). */
void cu_prof_mark(cuda_engine *c, int op);

/* ---- engine_cuda_step.cu ---- */

/* gm_engine_ops.step of the CUDA backend. */
gm_status cu_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out);
/* gm_engine_ops.copy_blocks: one k_kv_copy_blocks launch on the engine's stream, before the step's forward. */
gm_status cu_copy_blocks(gm_engine *e, const gm_block_copy *copies, int32_t n);
/* Activations, step metadata, decode buckets and their scratch, the RoPE tables (and each layer's). */
gm_status cu_runtime_alloc(cuda_engine *c);
/* (Re)plan every decode bucket's attention by the rule; (re)allocates their XQA scratch as needed. */
gm_status cu_buckets_plan(cuda_engine *c);
/* The KV pool, sized by the options (blocks, bytes, or a fraction of the free memory). */
gm_status cu_size_limits(cuda_engine *c, const gm_worker_spec *spec, gm_device_mem *mem);
gm_status cu_kv_alloc(cuda_engine *c, const gm_worker_spec *spec, gm_device_mem *mem);
/* Drop every captured decode graph (the next step of each bucket runs eagerly and captures again). */
void cu_graphs_drop(cuda_engine *c);
/* Free the step's buffers and graphs. */
void cu_runtime_free(cuda_engine *c);

#endif
