/* ckpt_meta.h - the files beside a checkpoint's weights: config.json written from a gm_model_config
 * (the inverse of gm_config_parse), generation_config.json, and the metadata of a checkpoint derived
 * from another one (gemma-quantize from a safetensors directory or from a GGUF). */
#ifndef GM_CKPT_META_H
#define GM_CKPT_META_H

#include "gguf_model.h"
#include "model_config.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cJSON;

/* config.json of c as transformers writes it for GemmaForCausalLM, Gemma2ForCausalLM or
 * Gemma3ForCausalLM (model_type gemma3_text): every key gm_config_parse reads, so that parsing it
 * gives c back. Caller owns the tree (cJSON_Delete); NULL when out of memory. */
struct cJSON *gm_config_to_json(const gm_model_config *c);
/* generation_config.json of c: bos, eos (Gemma 3: <eos> and <end_of_turn>), pad. */
struct cJSON *gm_generation_config_to_json(const gm_model_config *c);
/* Write j pretty-printed to path and free it (also on failure). */
gm_status gm_json_write(struct cJSON *j, const char *path);

/* The metadata of a checkpoint derived from src, written into out_dir: config.json (src's own, or for
 * a GGUF built with gm_config_to_json) with "quantization_config" = quant (taken, freed; NULL = none),
 * and the tokenizer: src's tokenizer.model and its other tokenizer/generation files copied, or for a
 * GGUF tokenizer.model serialized from its vocabulary and a generation_config.json. */
gm_status gm_checkpoint_write_meta(const gm_checkpoint *src, const char *out_dir, struct cJSON *quant);

#ifdef __cplusplus
}
#endif
#endif
