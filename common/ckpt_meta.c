/* ckpt_meta.c - see ckpt_meta.h. */
#include "ckpt_meta.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "tokenizer.h"

/* A float key written with a decimal point (30.0, not 30): transformers 5 type-checks float fields. */
static void add_float(cJSON *j, const char *key, double v)
{
    char buf[48];
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, sizeof buf, "%.1f", v);
    else
        snprintf(buf, sizeof buf, "%.7g", v); /* the values are floats */
    cJSON_AddRawToObject(j, key, buf);
}

/* eos_token_id: Gemma 3 lists <end_of_turn> after <eos>, as its published configs do. */
static void add_eos(const gm_model_config *c, cJSON *j)
{
    if (c->family != GM_FAMILY_GEMMA3) {
        cJSON_AddNumberToObject(j, "eos_token_id", c->eos_id);
        return;
    }
    cJSON *e = cJSON_AddArrayToObject(j, "eos_token_id");
    cJSON_AddItemToArray(e, cJSON_CreateNumber(c->eos_id));
    cJSON_AddItemToArray(e, cJSON_CreateNumber(c->end_of_turn_id));
}

/* config.json keys of Gemma 2/3 (transformers 4.5x spelling, which transformers 5 loads as well). */
static void add_gemma23(const gm_model_config *c, cJSON *j)
{
    cJSON_AddStringToObject(j, "cache_implementation", "hybrid");
    cJSON_AddNumberToObject(j, "query_pre_attn_scalar", c->query_pre_attn_scalar);
    if (c->attn_softcap > 0)
        add_float(j, "attn_logit_softcapping", c->attn_softcap);
    else
        cJSON_AddNullToObject(j, "attn_logit_softcapping");
    if (c->final_softcap > 0)
        add_float(j, "final_logit_softcapping", c->final_softcap);
    else
        cJSON_AddNullToObject(j, "final_logit_softcapping");
    cJSON_AddNumberToObject(j, "sliding_window", c->sliding_window);
    cJSON *lt = cJSON_AddArrayToObject(j, "layer_types");
    for (int32_t i = 0; i < c->num_layers && i < GM_MAX_LAYERS; i++)
        cJSON_AddItemToArray(lt, cJSON_CreateString(c->layer_sliding[i] ? "sliding_attention" : "full_attention"));
    if (c->family == GM_FAMILY_GEMMA3)
        add_float(j, "rope_local_base_freq", c->rope_theta_local);
}

cJSON *gm_config_to_json(const gm_model_config *c)
{
    static const char *const arch_of[] = {"", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"};
    static const char *const type_of[] = {"", "gemma", "gemma2", "gemma3_text"};
    int fam = c->family >= GM_FAMILY_GEMMA1 && c->family <= GM_FAMILY_GEMMA3 ? (int)c->family : GM_FAMILY_GEMMA1;
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return NULL;
    cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(arch_of[fam]));
    cJSON_AddBoolToObject(j, "attention_bias", 0);
    cJSON_AddNumberToObject(j, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    add_eos(c, j);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddStringToObject(j, "hidden_act", "gelu_pytorch_tanh");
    cJSON_AddStringToObject(j, "hidden_activation", "gelu_pytorch_tanh");
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position);
    cJSON_AddStringToObject(j, "model_type", type_of[fam]);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->num_heads);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->num_layers);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->num_kv_heads);
    cJSON_AddNumberToObject(j, "pad_token_id", c->pad_id);
    add_float(j, "rms_norm_eps", c->rms_norm_eps);
    if (c->rope_scale != 1.0f) { /* Gemma 3's full layers */
        cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
        add_float(rs, "factor", c->rope_scale);
        cJSON_AddStringToObject(rs, "rope_type", "linear");
    } else {
        cJSON_AddNullToObject(j, "rope_scaling");
    }
    add_float(j, "rope_theta", c->rope_theta);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", 1);
    cJSON_AddStringToObject(j, "torch_dtype", c->torch_dtype[0] ? c->torch_dtype : "bfloat16");
    cJSON_AddStringToObject(j, "transformers_version", fam == GM_FAMILY_GEMMA1 ? "4.38.0" : "4.50.0");
    cJSON_AddBoolToObject(j, "use_cache", 1);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    if (fam != GM_FAMILY_GEMMA1)
        add_gemma23(c, j);
    return j;
}

cJSON *gm_generation_config_to_json(const gm_model_config *c)
{
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return NULL;
    cJSON_AddBoolToObject(j, "_from_model_config", 1);
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    add_eos(c, j);
    cJSON_AddNumberToObject(j, "pad_token_id", c->pad_id);
    cJSON_AddStringToObject(j, "transformers_version", c->family == GM_FAMILY_GEMMA1 ? "4.38.0" : "4.50.0");
    return j;
}

gm_status gm_json_write(cJSON *j, const char *path)
{
    char *s = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return gm_fail(GM_ERR_NOMEM, "%s: cannot build JSON", path);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(s);
        return gm_fail(GM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    size_t n = strlen(s);
    int ok = fwrite(s, 1, n, f) == n && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(s);
    return ok ? GM_OK : gm_fail(GM_ERR_IO, "%s: write failed", path);
}

/* src's config.json as a tree (a safetensors directory's own file, a GGUF's built from its metadata). */
static gm_status source_config(const gm_checkpoint *src, cJSON **out)
{
    *out = NULL;
    if (!src->dir) {
        *out = gm_config_to_json(&src->cfg);
        return *out ? GM_OK : gm_fail(GM_ERR_NOMEM, "config.json: no memory");
    }
    char path[4096], *text = NULL;
    size_t len = 0;
    if (snprintf(path, sizeof path, "%s/config.json", src->dir) >= (int)sizeof path)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: path too long", src->dir);
    gm_status st = gm_read_file(path, (size_t)16 << 20, &text, &len);
    if (st)
        return st;
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return gm_fail(GM_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return GM_OK;
}

/* A GGUF's tokenizer.model (serialized from its vocabulary) and generation_config.json. */
static gm_status gguf_aux(const gm_checkpoint *src, const char *out_dir)
{
    char path[4096];
    gm_tokenizer *tok = NULL;
    gm_status st = gm_checkpoint_tokenizer(src, &tok);
    if (!st) {
        snprintf(path, sizeof path, "%s/tokenizer.model", out_dir);
        st = gm_tok_save(tok, path);
    }
    gm_tok_destroy(&tok);
    if (!st) {
        snprintf(path, sizeof path, "%s/generation_config.json", out_dir);
        st = gm_json_write(gm_generation_config_to_json(&src->cfg), path);
    }
    return st;
}

gm_status gm_checkpoint_write_meta(const gm_checkpoint *src, const char *out_dir, cJSON *quant)
{
    if (!src || !out_dir) {
        cJSON_Delete(quant);
        return gm_fail(GM_ERR_INVALID_ARG, "gm_checkpoint_write_meta: NULL argument");
    }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", out_dir) >= (int)sizeof path - 32) {
        cJSON_Delete(quant);
        return gm_fail(GM_ERR_INVALID_ARG, "%s: path too long", out_dir);
    }
    cJSON *root = NULL;
    gm_status st = source_config(src, &root);
    if (st) {
        cJSON_Delete(quant);
        return st;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    if (quant)
        cJSON_AddItemToObject(root, "quantization_config", quant);
    if ((st = gm_json_write(root, path)))
        return st;
    return src->dir ? gm_copy_checkpoint_aux(src->dir, out_dir) : gguf_aux(src, out_dir);
}
