/* model_config.h - a Gemma model's hyper-parameters, read from a Hugging Face config.json. */
#ifndef GM_MODEL_CONFIG_H
#define GM_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

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
} gm_model_config;

/* Parse config.json text. `name` (borrowed) names the file in error messages.
 * Missing optional keys get Gemma's defaults; missing required keys, wrong
 * types and impossible values (num_heads % num_kv_heads != 0, zero sizes) fail. */
gm_status gm_config_parse(const char *json, size_t len, const char *name, gm_model_config *cfg);

/* Read and parse DIR/config.json. */
gm_status gm_config_load_dir(const char *dir, gm_model_config *cfg);

/* sqrt(hidden_size) rounded to bf16, the embedding normalizer of Gemma. */
float gm_config_normalizer(const gm_model_config *cfg);

/* Total parameter count (tied embeddings counted once). */
int64_t gm_config_param_count(const gm_model_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
