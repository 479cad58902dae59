/* model_config.h - a Gemma model's hyper-parameters, read from a Hugging Face config.json. */
#ifndef GM_MODEL_CONFIG_H
#define GM_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GM_MAX_LAYERS 256

typedef enum gm_family {
    GM_FAMILY_GEMMA1 = 1, /* GemmaForCausalLM */
    GM_FAMILY_GEMMA2 = 2, /* Gemma2ForCausalLM */
    GM_FAMILY_GEMMA3 = 3, /* Gemma3ForCausalLM, or the text part of Gemma3ForConditionalGeneration */
} gm_family;

typedef struct gm_model_config {
    int32_t vocab_size;        /* 256000 for the real models */
    int32_t hidden_size;       /* 2048 (2b), 3072 (7b) */
    int32_t intermediate_size; /* 16384, 24576 */
    int32_t num_layers;        /* num_hidden_layers: 18, 28 */
    int32_t num_heads;         /* num_attention_heads: 8, 16 */
    int32_t num_kv_heads;      /* num_key_value_heads: 1, 16 */
    int32_t head_dim;          /* 256 */
    int32_t max_position;      /* max_position_embeddings: 8192 */
    float rope_theta;          /* 10000 */
    float rms_norm_eps;        /* 1e-6 */
    int32_t bos_id, eos_id, pad_id;
    char torch_dtype[16];      /* "bfloat16", "float16", "float32" or "" */

    /* ---- Gemma 2 / Gemma 3 (text) switches; Gemma 1 leaves them at the values noted ---- */
    gm_family family;            /* GM_FAMILY_GEMMA1 for model_type "gemma" */
    float query_pre_attn_scalar; /* attention scale = query_pre_attn_scalar^-0.5 (Gemma 1: head_dim) */
    float attn_softcap;          /* scores = tanh(s / cap) * cap after scaling; 0 = none (Gemma 1, 3) */
    float final_softcap;         /* logits = tanh(l / cap) * cap; 0 = none (Gemma 1, 3) */
    int32_t sliding_window;      /* W: a sliding layer's query at i sees keys i-W < j <= i; 0 = none */
    uint8_t layer_sliding[GM_MAX_LAYERS]; /* [num_layers] 1 = sliding_attention, 0 = full_attention */
    float rope_theta_local;      /* RoPE base of sliding layers (Gemma 3: 10000; else = rope_theta) */
    float rope_scale;            /* linear RoPE scaling factor of full layers (positions / factor); 1 = none */
    int32_t qk_norm;             /* 1: RMSNorm (1 + w) over head_dim on q and k before RoPE (Gemma 3) */
    int32_t sandwich_norm;       /* 1: post-attention and pre/post-feed-forward norms (Gemma 2, 3) */
    int32_t start_of_turn_id, end_of_turn_id; /* chat markers: 106/107 (Gemma 1, 2), 105/106 (Gemma 3) */
    /* Names of the text model's tensors start with this: "model." (…ForCausalLM), "language_model.model."
     * (a Gemma3ForConditionalGeneration as released and as transformers saves it) or "model.language_model."
     * (its names inside transformers >= 4.52, kept by some converters); gm_weights_bind settles which one. */
    char tensor_prefix[32];
} gm_model_config;

/* Parse config.json text. `name` (borrowed) names the file in error messages.
 * model_type "gemma" (or none), "gemma2", "gemma3_text", or "gemma3" (the text model is read from
 * "text_config"; ids and dtype may sit at the top level). Gemma 1 needs its shape keys; Gemma 2/3 fill
 * missing keys with transformers' Gemma2Config / Gemma3TextConfig defaults (saved Gemma 3 configs omit
 * keys equal to them). Wrong types, impossible values (num_heads % num_kv_heads != 0, zero sizes, a
 * layer_types list of the wrong length) and what the engines cannot run (RoPE other than default/linear,
 * an activation other than tanh-GELU, attention bias, untied embeddings, bidirectional attention) fail. */
gm_status gm_config_parse(const char *json, size_t len, const char *name, gm_model_config *cfg);

/* Read and parse DIR/config.json. */
gm_status gm_config_load_dir(const char *dir, gm_model_config *cfg);

/* Set the Gemma 2/3 switches to Gemma 1's values (every layer full attention, plain norms, scale
 * head_dim^-0.5, chat ids 106/107); for configs built by hand after the shape fields are set. */
void gm_config_set_gemma1(gm_model_config *cfg);

/* cfg->tensor_prefix, or "model." when it is empty (a config built by hand). */
const char *gm_config_tensor_prefix(const gm_model_config *cfg);

/* sqrt(hidden_size) rounded to bf16, the embedding normalizer of Gemma. */
float gm_config_normalizer(const gm_model_config *cfg);

/* Total parameter count (tied embeddings counted once). */
int64_t gm_config_param_count(const gm_model_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
