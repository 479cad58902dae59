/* weights.h - find every Gemma tensor of a checkpoint, check its shape, and
 * describe the slice one tensor-parallel rank owns (Megatron layout).
 *
 * Layout for rank r of tp: q, gate, up split by output rows (query
 * heads, intermediate); k, v split by rows when num_kv_heads >= tp, else the one
 * KV head this rank's query heads read is replicated; o, down split by input
 * columns (followed by an all-reduce); norms, embedding and the tied LM head
 * replicated. Views point into the mapped checkpoint: nothing is copied. */
#ifndef GM_WEIGHTS_H
#define GM_WEIGHTS_H

#include <stdint.h>

#include "../common/dtype.h"
#include "../common/model_config.h"
#include "../common/safetensors.h"
#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which heads / intermediate columns a rank owns. Other backends reuse it. */
typedef struct gm_tp_layout {
    int32_t rank, size;
    int32_t n_heads, head0;  /* query heads [head0, head0 + n_heads) */
    int32_t n_kv, kv0;       /* KV heads [kv0, kv0 + n_kv) */
    int32_t kv_replicated;   /* 1 when num_kv_heads < size (each rank keeps one KV head) */
    int32_t n_inter, inter0; /* intermediate columns [inter0, inter0 + n_inter) */
} gm_tp_layout;

/* Layout of `rank` of `size`. Fails (GM_ERR_INVALID_ARG / UNSUPPORTED) unless
 * num_heads and intermediate_size divide by size, and num_kv_heads divides by
 * size or size by num_kv_heads. */
gm_status gm_tp_layout_make(const gm_model_config *cfg, int32_t rank, int32_t size, gm_tp_layout *out);

/* A 2-D weight slice [rows, cols] inside a row-major tensor whose rows are ld
 * elements apart; data points at element (row0, col0). */
typedef struct gm_wview {
    const void *data;      /* borrowed from the mapped checkpoint */
    gm_dtype dtype;
    int64_t rows, cols, ld;
    int64_t row0, col0;    /* where the slice starts in the full tensor */
    const st_tensor *full; /* the whole tensor (name, file, shape) */
} gm_wview;

/* One decoder layer. A norm view is [1, n] of a Gemma RMSNorm weight w (applied as 1 + w); the views a
 * family does not have stay empty (data NULL). What post_attention_layernorm means depends on the family,
 * so it binds to a different field in each:
 *   Gemma 1:   h += attn(input_norm(h));  h += mlp(post_norm(h))
 *   Gemma 2/3: h += post_attn_norm(attn(input_norm(h)));  h += post_ffw_norm(mlp(pre_ffw_norm(h))) */
typedef struct gm_layer_weights {
    gm_wview input_norm;                   /* [1, hidden] input_layernorm (every family) */
    gm_wview post_norm;                    /* [1, hidden] Gemma 1's post_attention_layernorm: the pre-MLP norm */
    gm_wview post_attn_norm;               /* [1, hidden] Gemma 2/3's post_attention_layernorm: on attn output */
    gm_wview pre_ffw_norm, post_ffw_norm;  /* [1, hidden] Gemma 2/3: pre/post_feedforward_layernorm */
    gm_wview q_norm, k_norm;               /* [1, head_dim] Gemma 3: self_attn.q_norm/k_norm, per head, pre-RoPE */
    gm_wview q;                            /* [n_heads*hd, hidden] rows of q_proj */
    gm_wview k, v;                         /* [n_kv*hd, hidden] rows of k_proj, v_proj */
    gm_wview o;                            /* [hidden, n_heads*hd] columns of o_proj */
    gm_wview gate, up;                     /* [n_inter, hidden] rows */
    gm_wview down;                         /* [hidden, n_inter] columns */
} gm_layer_weights;

typedef struct gm_weights {
    gm_model_config cfg;
    gm_tp_layout tp;
    gm_wview embed;           /* [vocab, hidden], also the LM head */
    gm_wview final_norm;      /* [1, hidden] */
    gm_layer_weights *layers; /* [num_layers], owned */
} gm_weights;

/* Bind every tensor of m (borrowed; must outlive w) to this rank's views.
 * Tensor names start with cfg->tensor_prefix, or with whichever of "model.", "model.language_model." and
 * "language_model.model." the checkpoint's embed_tokens uses; w->cfg.tensor_prefix records the one found
 * (pass &w->cfg to gm_linears_bind). Errors name file, tensor, expected and actual shape, or the missing tensor.
 * Only F32, F16 and BF16 tensors are accepted. A Linear that the checkpoint stores as AWQ
 * tensors (`.qweight` and no `.weight`) or as an F8_E4M3 `.weight` (FP8) gets an empty view
 * (data NULL); bind the Linears with worker/awq.h gm_linears_bind. */
gm_status gm_weights_bind(const st_model *m, const gm_model_config *cfg, int32_t rank, int32_t size,
                          gm_weights *w);
void gm_weights_release(gm_weights *w);

/* Check that every floating-point tensor of m holds only finite values (F32, F16, BF16 and F64:
 * exponent not all ones; F8_E4M3: not the NaN code 0x7f/0xff; F8_E5M2: no Inf/NaN), one streaming
 * pass over the bytes. Tensor i is checked by rank i % size only, so tp ranks share the work.
 * GM_ERR_FORMAT naming the file, the tensor, the element and its bits at the first bad value. */
gm_status gm_weights_check_finite(const st_model *m, int32_t rank, int32_t size);

#ifdef __cplusplus
}
#endif
#endif
