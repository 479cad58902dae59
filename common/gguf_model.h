/* gguf_model.h - a Gemma GGUF file as the checkpoint the engines already read, and one opener for
 * either kind of --model.
 *
 * The GGUF metadata becomes a gm_model_config (architectures gemma, gemma2, gemma3, with each
 * family's defaults for what llama.cpp's converter leaves out); the tensors, dequantized at load,
 * become an in-memory st_model under the Hugging Face names gm_weights_bind looks up:
 *
 *   token_embd.weight            model.embed_tokens.weight                      [vocab, hidden] bf16
 *   output_norm.weight           model.norm.weight                              [hidden] f32
 *   blk.N.attn_norm.weight       model.layers.N.input_layernorm.weight          [hidden] f32
 *   blk.N.attn_q/k/v.weight      model.layers.N.self_attn.{q,k,v}_proj.weight   [out, hidden] bf16
 *   blk.N.attn_output.weight     model.layers.N.self_attn.o_proj.weight         [hidden, q] bf16
 *   blk.N.attn_q_norm/k_norm     model.layers.N.self_attn.{q,k}_norm.weight     [head_dim] f32
 *   blk.N.post_attention_norm    model.layers.N.post_attention_layernorm.weight [hidden] f32
 *   blk.N.ffn_norm               model.layers.N.pre_feedforward_layernorm.weight (Gemma 2/3),
 *                                model.layers.N.post_attention_layernorm.weight  (Gemma 1)
 *   blk.N.ffn_gate/up/down       model.layers.N.mlp.{gate,up,down}_proj.weight   bf16
 *   blk.N.post_ffw_norm          model.layers.N.post_feedforward_layernorm.weight f32
 *
 * GGUF dims [ne0, ne1] (ne0 innermost) become the shape [ne1, ne0]. Norm weights are stored with
 * Gemma's +1 already added (the converter's doing, so ggml can multiply plainly); the loader
 * subtracts it so the engines' (1 + w) holds. Q/K rows are used as stored (no permutation). */
#ifndef GM_GGUF_MODEL_H
#define GM_GGUF_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "gguf.h"
#include "model_config.h"
#include "safetensors.h"
#include "status.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The model config of a Gemma GGUF file. Errors name the file and key. */
gm_status gguf_model_config(const gguf_file *g, gm_model_config *cfg);

/* The Hugging Face name of GGUF tensor `name` for family fam into out[cap]; false when the name
 * has no Gemma counterpart (or does not fit). */
bool gguf_model_hf_name(const char *name, gm_family fam, char *out, size_t cap);

/* Dequantize every tensor of g into a new in-memory checkpoint (caller owns; st_model_destroy):
 * 1-D tensors (norms) as F32 with the +1 removed, the rest as BF16. cfg from gguf_model_config.
 * Fails on a tensor with no Gemma name or a type gguf_quants cannot dequantize. */
gm_status gguf_model_load(const gguf_file *g, const gm_model_config *cfg, st_model **out);

/* A checkpoint given as --model: a safetensors directory (config.json, model.safetensors[.index.json],
 * tokenizer.model), a .gguf file, or a directory holding exactly one .gguf and no safetensors. */
typedef struct gm_checkpoint {
    gm_model_config cfg;
    st_model *model;  /* the weights: mapped safetensors or dequantized GGUF; NULL without GM_CKPT_WEIGHTS */
    gguf_file *gguf;  /* the open GGUF file, or NULL for safetensors */
    char *dir;        /* the safetensors directory, or NULL */
    char *path;       /* the GGUF file, or the directory */
} gm_checkpoint;

enum { GM_CKPT_WEIGHTS = 1 }; /* also load (dequantize) the weights */

/* Open path as above; caller owns *out (gm_checkpoint_destroy). Errors name the path. */
gm_status gm_checkpoint_open(const char *path, int flags, gm_checkpoint **out);
/* The config of what --model names, as gm_checkpoint_open reads it (a GGUF's metadata only, no
 * weights): what every place that takes --model uses instead of gm_config_load_dir. */
gm_status gm_checkpoint_config(const char *path, gm_model_config *cfg);
/* The config (cfg may be NULL) and the weights of what --model names (a GGUF dequantized); caller owns *model
 * (st_model_destroy): what the engines and tools use instead of st_model_open. */
gm_status gm_checkpoint_load(const char *path, gm_model_config *cfg, st_model **model);
/* True when path is a GGUF checkpoint as gm_checkpoint_open sees it: a regular file, or a directory
 * with no model.safetensors[.index.json] that holds a .gguf file. Nothing is parsed. */
bool gm_checkpoint_is_gguf(const char *path);
/* The checkpoint's tokenizer: DIR/tokenizer.model, or the GGUF vocabulary. Caller owns *out. */
gm_status gm_checkpoint_tokenizer(const gm_checkpoint *c, gm_tokenizer **out);
void gm_checkpoint_destroy(gm_checkpoint **c);

#ifdef __cplusplus
}
#endif
#endif
