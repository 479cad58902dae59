/* model_config.c - parse a Hugging Face Gemma config.json with cJSON. */
#include "model_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

#define CFG_MAX_FILE (16u << 20) /* a config.json is a few KB; refuse absurd files */

/* The value of `key`, or NULL when absent or JSON null (both mean "use the default"). */
static const cJSON *cfg_get(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Read an integer key into *out; `def` < 0 marks the key required. A list
 * (newer configs give eos_token_id as [1, 107]) contributes its first element. */
static gm_status cfg_int(const cJSON *root, const char *name, const char *key, int64_t def, int64_t lo,
                         int64_t hi, int32_t *out)
{
    const cJSON *v = cfg_get(root, key);
    double d = (double)def;
    if (!v) {
        if (def < 0)
            return gm_fail(GM_ERR_FORMAT, "%s: required key '%s' is missing", name, key);
    } else {
        if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0)
            v = cJSON_GetArrayItem(v, 0);
        if (!cJSON_IsNumber(v))
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s' must be an integer", name, key);
        d = v->valuedouble;
        if (!isfinite(d) || d != floor(d))
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s' must be an integer, got %g", name, key, d);
    }
    /* defaults are checked too: the default bos id 2 is out of range for a 2-token vocabulary */
    if (d < (double)lo || d > (double)hi)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' = %.0f%s is out of range [%lld, %lld]", name, key, d,
                       v ? "" : " (its default)", (long long)lo, (long long)hi);
    *out = (int32_t)d;
    return GM_OK;
}

/* Read a positive finite float key into *out, or the default when absent. */
static gm_status cfg_float(const cJSON *root, const char *name, const char *key, float def, float *out)
{
    const cJSON *v = cfg_get(root, key);
    if (!v) {
        *out = def;
        return GM_OK;
    }
    if (!cJSON_IsNumber(v))
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' must be a number", name, key);
    double d = v->valuedouble;
    if (!isfinite(d) || d <= 0 || d > 3.0e38)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' = %g must be positive and finite", name, key, d);
    *out = (float)d;
    return GM_OK;
}

/* Defaults of one family: transformers' config class (Gemma 1: -1 marks a required key). */
typedef struct cfg_family {
    const char *model_type;
    gm_family family;
    int64_t vocab, hidden, inter, layers, heads, kv, head_dim, max_pos; /* kv, head_dim < 0: from heads, hidden */
    float rope_theta, rope_theta_local, qpas, attn_cap, final_cap;      /* rope_theta_local, qpas 0: = theta, hd */
    int32_t window, pattern, sot, eot; /* pattern: layer i slides unless (i + 1) % pattern == 0; 0: none */
} cfg_family;

static const cfg_family k_families[] = {
    {"gemma", GM_FAMILY_GEMMA1, -1, -1, -1, -1, -1, -1, -1, 8192, 10000.0f, 0, 0, 0, 0, 0, 0, 106, 107},
    {"gemma2", GM_FAMILY_GEMMA2, 256000, 2304, 9216, 26, 8, 4, 256, 8192, 10000.0f, 0, 256, 50.0f, 30.0f, 4096, 2,
     106, 107},
    {"gemma3_text", GM_FAMILY_GEMMA3, 262208, 2304, 9216, 26, 8, 4, 256, 131072, 1000000.0f, 10000.0f, 256, 0, 0,
     4096, 6, 105, 106},
};

/* The value of `key` in the text node, else at the top level (ids and dtype of a Gemma3ForConditionalGeneration). */
static const cJSON *cfg_get2(const cJSON *tc, const cJSON *root, const char *key)
{
    const cJSON *v = cfg_get(tc, key);
    return v ? v : cfg_get(root, key);
}

/* A float key that JSON null turns off (*out = 0) and absence leaves at `def`. */
static gm_status cfg_cap(const cJSON *tc, const char *name, const char *key, float def, float *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (v && cJSON_IsNull(v)) {
        *out = 0.0f;
        return GM_OK;
    }
    return cfg_float(tc, name, key, def, out);
}

/* A boolean key must be absent, null or `want`; else the engines cannot run the model. */
static gm_status cfg_bool_is(const cJSON *tc, const char *name, const char *key, int want, const char *why)
{
    const cJSON *v = cfg_get(tc, key);
    if (!v)
        return GM_OK;
    if (!cJSON_IsBool(v))
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' must be true or false", name, key);
    if (cJSON_IsTrue(v) != want)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: key '%s' = %s is not supported (%s)", name, key,
                       cJSON_IsTrue(v) ? "true" : "false", why);
    return GM_OK;
}

/* One RoPE parameter object ({"rope_type": "default"|"linear", "factor": f, "rope_theta": t}); `what` names it.
 * *theta is changed only when the object has rope_theta; *scale gets the linear factor (1 for default). */
static gm_status cfg_rope_obj(const cJSON *o, const char *name, const char *what, float *theta, float *scale)
{
    if (!cJSON_IsObject(o))
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' must be an object", name, what);
    const cJSON *ty = cfg_get(o, "rope_type");
    if (!ty)
        ty = cfg_get(o, "type"); /* the spelling of older configs */
    if (ty && !cJSON_IsString(ty))
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s': rope_type must be a string", name, what);
    const char *t = ty ? ty->valuestring : "default";
    gm_status st;
    if (strcmp(t, "default") == 0) {
        *scale = 1.0f;
    } else if (strcmp(t, "linear") == 0) {
        if (!cfg_get(o, "factor"))
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s': linear RoPE scaling needs a 'factor'", name, what);
        if ((st = cfg_float(o, name, "factor", 1.0f, scale)))
            return st;
    } else {
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: key '%s': rope_type \"%.40s\" is not supported (default or linear)",
                       name, what, t);
    }
    return cfg_float(o, name, "rope_theta", *theta, theta);
}

/* RoPE of full and sliding layers: rope_theta, rope_local_base_freq (Gemma 3), rope_scaling (Gemma 3's full
 * layers), then transformers 5's rope_parameters, flat or per layer type, over them. */
static gm_status cfg_rope(const cJSON *tc, const char *name, const cfg_family *f, gm_model_config *cfg)
{
    gm_status st;
    float theta = f->rope_theta, local = f->rope_theta_local, scale = 1.0f, lscale = 1.0f;
    if ((st = cfg_float(tc, name, "rope_theta", theta, &theta)))
        return st;
    if (f->family == GM_FAMILY_GEMMA3) {
        if ((st = cfg_float(tc, name, "rope_local_base_freq", local, &local)))
            return st;
    }
    const cJSON *rs = cfg_get(tc, "rope_scaling");
    float unused_theta = theta;
    if (rs && (st = cfg_rope_obj(rs, name, "rope_scaling", &unused_theta, &scale)))
        return st;
    const cJSON *rp = cfg_get(tc, "rope_parameters");
    if (rp) {
        if (!cJSON_IsObject(rp))
            return gm_fail(GM_ERR_FORMAT, "%s: key 'rope_parameters' must be an object", name);
        const cJSON *full = cfg_get(rp, "full_attention"), *slide = cfg_get(rp, "sliding_attention");
        if (full || slide) {
            if (full && (st = cfg_rope_obj(full, name, "rope_parameters.full_attention", &theta, &scale)))
                return st;
            if (slide && (st = cfg_rope_obj(slide, name, "rope_parameters.sliding_attention", &local, &lscale)))
                return st;
        } else if (f->family == GM_FAMILY_GEMMA3) {
            return gm_fail(GM_ERR_FORMAT, "%s: key 'rope_parameters' of Gemma 3 must be per layer type "
                           "(full_attention, sliding_attention)", name);
        } else {
            if ((st = cfg_rope_obj(rp, name, "rope_parameters", &theta, &scale)))
                return st;
            lscale = scale; /* Gemma 1/2: one rotary embedding for every layer */
        }
    }
    if (f->family != GM_FAMILY_GEMMA3)
        local = theta; /* Gemma 1/2: one RoPE base for every layer */
    if (lscale != 1.0f || (f->family != GM_FAMILY_GEMMA3 && scale != 1.0f))
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: linear RoPE scaling is supported on Gemma 3's full-attention "
                       "layers only", name);
    cfg->rope_theta = theta;
    cfg->rope_theta_local = local;
    cfg->rope_scale = scale;
    return GM_OK;
}

/* layer_types, or the family's default pattern (Gemma 3: sliding_window_pattern). */
static gm_status cfg_layers(const cJSON *tc, const char *name, const cfg_family *f, gm_model_config *cfg)
{
    const cJSON *lt = cfg_get(tc, "layer_types");
    if (lt) {
        if (!cJSON_IsArray(lt))
            return gm_fail(GM_ERR_FORMAT, "%s: key 'layer_types' must be a list", name);
        if (cJSON_GetArraySize(lt) != cfg->num_layers)
            return gm_fail(GM_ERR_FORMAT, "%s: key 'layer_types' has %d entries, num_hidden_layers is %d", name,
                           cJSON_GetArraySize(lt), cfg->num_layers);
        int32_t i = 0;
        for (const cJSON *e = lt->child; e; e = e->next, i++) {
            if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0)
                cfg->layer_sliding[i] = 1;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0)
                cfg->layer_sliding[i] = 0;
            else
                return gm_fail(GM_ERR_UNSUPPORTED, "%s: key 'layer_types'[%d] must be \"sliding_attention\" or "
                               "\"full_attention\"", name, (int)i);
        }
        return GM_OK;
    }
    int32_t pattern = f->pattern;
    if (f->family == GM_FAMILY_GEMMA3) {
        const char *key = cfg_get(tc, "sliding_window_pattern") ? "sliding_window_pattern"
                                                                  : "_sliding_window_pattern"; /* transformers 5 */
        gm_status st = cfg_int(tc, name, key, pattern, 1, 65536, &pattern);
        if (st)
            return st;
    }
    for (int32_t i = 0; i < cfg->num_layers; i++)
        cfg->layer_sliding[i] = (uint8_t)(((i + 1) % pattern) != 0);
    return GM_OK;
}

/* The Gemma 2/3 switches: attention scale, soft-caps, sliding window, layer types, RoPE. */
static gm_status cfg_gemma23(const cJSON *tc, const char *name, const cfg_family *f, gm_model_config *cfg)
{
    gm_status st;
    cfg->family = f->family;
    cfg->qk_norm = f->family == GM_FAMILY_GEMMA3;
    cfg->sandwich_norm = 1;
    cfg->start_of_turn_id = f->sot;
    cfg->end_of_turn_id = f->eot;
    if ((st = cfg_float(tc, name, "query_pre_attn_scalar", f->qpas, &cfg->query_pre_attn_scalar)) ||
        (st = cfg_cap(tc, name, "attn_logit_softcapping", f->attn_cap, &cfg->attn_softcap)) ||
        (st = cfg_cap(tc, name, "final_logit_softcapping", f->final_cap, &cfg->final_softcap)))
        return st;
    if (f->family == GM_FAMILY_GEMMA3)
        cfg->attn_softcap = 0.0f; /* transformers' Gemma 3 attention never applies attn_logit_softcapping */
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(tc, "sliding_window");
    if (w && cJSON_IsNull(w))
        cfg->sliding_window = 0; /* null: sliding layers see the whole context */
    else if ((st = cfg_int(tc, name, "sliding_window", f->window, 1, INT32_MAX, &cfg->sliding_window)))
        return st;
    if ((st = cfg_layers(tc, name, f, cfg)) || (st = cfg_rope(tc, name, f, cfg)))
        return st;
    return GM_OK;
}

/* The family of model_type (absent: Gemma 1); for "gemma3" *tc becomes its text_config. */
static gm_status cfg_family_of(const cJSON *root, const char *name, const cfg_family **f, const cJSON **tc)
{
    const cJSON *mt = cfg_get(root, "model_type");
    *tc = root;
    *f = &k_families[0];
    if (!mt)
        return GM_OK;
    if (!cJSON_IsString(mt))
        return gm_fail(GM_ERR_FORMAT, "%s: key 'model_type' must be a string", name);
    if (strcmp(mt->valuestring, "gemma3") == 0) {
        *f = &k_families[2];
        const cJSON *t = cfg_get(root, "text_config");
        if (t && !cJSON_IsObject(t))
            return gm_fail(GM_ERR_FORMAT, "%s: key 'text_config' must be an object", name);
        const cJSON *tmt = t ? cfg_get(t, "model_type") : NULL;
        if (tmt && (!cJSON_IsString(tmt) || strcmp(tmt->valuestring, "gemma3_text") != 0))
            return gm_fail(GM_ERR_UNSUPPORTED, "%s: key 'text_config.model_type' must be \"gemma3_text\"", name);
        static const cJSON empty = {0}; /* no text_config: every key at Gemma3TextConfig's default */
        *tc = t ? t : &empty;
        return GM_OK;
    }
    for (size_t i = 0; i < sizeof k_families / sizeof k_families[0]; i++)
        if (strcmp(mt->valuestring, k_families[i].model_type) == 0) {
            *f = &k_families[i];
            return GM_OK;
        }
    return gm_fail(GM_ERR_UNSUPPORTED, "%s: key 'model_type' is \"%.40s\"; supported: \"gemma\", \"gemma2\", "
                   "\"gemma3_text\" and \"gemma3\" (its text model)", name, mt->valuestring);
}

gm_status gm_config_parse(const char *json, size_t len, const char *name, gm_model_config *cfg)
{
    if (!name)
        name = "config.json";
    if (!json || !cfg)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: NULL argument to gm_config_parse", name);
    memset(cfg, 0, sizeof *cfg);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = (end && end >= json && end <= json + len) ? (size_t)(end - json) : 0;
        return gm_fail(GM_ERR_FORMAT, "%s: not valid JSON (near byte %zu)", name, at);
    }
    gm_status st = GM_OK;
    const cfg_family *f = NULL;
    const cJSON *tc = NULL;
    if (!cJSON_IsObject(root)) {
        st = gm_fail(GM_ERR_FORMAT, "%s: top level must be a JSON object", name);
        goto done;
    }
    if ((st = cfg_family_of(root, name, &f, &tc)))
        goto done;
    const int64_t big = INT32_MAX;
    if ((st = cfg_int(tc, name, "vocab_size", f->vocab, 1, big, &cfg->vocab_size)) ||
        (st = cfg_int(tc, name, "hidden_size", f->hidden, 1, big, &cfg->hidden_size)) ||
        (st = cfg_int(tc, name, "intermediate_size", f->inter, 1, big, &cfg->intermediate_size)) ||
        (st = cfg_int(tc, name, "num_hidden_layers", f->layers, 1, 65536, &cfg->num_layers)) ||
        (st = cfg_int(tc, name, "num_attention_heads", f->heads, 1, 65536, &cfg->num_heads)) ||
        (st = cfg_int(tc, name, "num_key_value_heads", f->kv > 0 ? f->kv : cfg->num_heads, 1, 65536,
                      &cfg->num_kv_heads)) ||
        (st = cfg_int(tc, name, "head_dim", f->head_dim > 0 ? f->head_dim : cfg->hidden_size / cfg->num_heads, 1,
                      65536, &cfg->head_dim)) ||
        (st = cfg_int(tc, name, "max_position_embeddings", f->max_pos, 1, big, &cfg->max_position)))
        goto done;
    /* ids: the text model's, else the top level's (a Gemma3ForConditionalGeneration keeps eos there) */
    static const char *const id_keys[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    int32_t *id_out[3] = {&cfg->bos_id, &cfg->eos_id, &cfg->pad_id};
    const int64_t id_def[3] = {2, 1, 0};
    for (int i = 0; i < 3; i++) {
        const cJSON *src = cfg_get(tc, id_keys[i]) ? tc : root;
        if ((st = cfg_int(src, name, id_keys[i], id_def[i], 0, cfg->vocab_size - 1, id_out[i])))
            goto done;
    }
    if ((st = cfg_float(tc, name, "rms_norm_eps", 1e-6f, &cfg->rms_norm_eps)))
        goto done;
    if (cfg->num_heads % cfg->num_kv_heads != 0) {
        st = gm_fail(GM_ERR_FORMAT, "%s: key 'num_key_value_heads' = %d does not divide num_attention_heads = %d", name,
                     cfg->num_kv_heads, cfg->num_heads);
        goto done;
    }
    if ((int64_t)cfg->num_heads * cfg->head_dim > INT32_MAX) {
        st = gm_fail(GM_ERR_FORMAT, "%s: key 'head_dim' = %d times num_attention_heads = %d is too large", name,
                     cfg->head_dim, cfg->num_heads);
        goto done;
    }
    if (cfg->num_layers > GM_MAX_LAYERS) {
        st = gm_fail(GM_ERR_UNSUPPORTED, "%s: num_hidden_layers = %d exceeds %d", name, cfg->num_layers,
                     GM_MAX_LAYERS);
        goto done;
    }
    gm_config_set_gemma1(cfg);
    /* a Gemma3ForConditionalGeneration's text model: transformers saves it as language_model.model.* */
    snprintf(cfg->tensor_prefix, sizeof cfg->tensor_prefix, "%s", tc != root ? "language_model.model." : "model.");
    if (f->family == GM_FAMILY_GEMMA1) {
        if ((st = cfg_rope(tc, name, f, cfg)))
            goto done;
        cfg->rope_theta_local = cfg->rope_theta;
    } else if ((st = cfg_gemma23(tc, name, f, cfg))) {
        goto done;
    }
    /* what none of the engines computes */
    const cJSON *act = cfg_get(tc, "hidden_activation");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "gelu_pytorch_tanh") != 0 &&
                                         strcmp(act->valuestring, "gelu_tanh") != 0))) {
        st = gm_fail(GM_ERR_UNSUPPORTED, "%s: key 'hidden_activation' = %s%.40s%s is not supported "
                     "(gelu_pytorch_tanh only)", name, cJSON_IsString(act) ? "\"" : "",
                     cJSON_IsString(act) ? act->valuestring : "a non-string", cJSON_IsString(act) ? "\"" : "");
        goto done;
    }
    if ((st = cfg_bool_is(tc, name, "attention_bias", 0, "the projections have no bias")) ||
        (st = cfg_bool_is(tc, name, "use_bidirectional_attention", 0, "attention is causal")) ||
        (st = cfg_bool_is(root, name, "tie_word_embeddings", 1, "the LM head is the embedding")))
        goto done;
    const cJSON *dt = cfg_get2(tc, root, "torch_dtype");
    if (!dt)
        dt = cfg_get2(tc, root, "dtype"); /* transformers 5 writes "dtype" */
    if (dt) {
        if (!cJSON_IsString(dt)) {
            st = gm_fail(GM_ERR_FORMAT, "%s: key 'torch_dtype' must be a string", name);
            goto done;
        }
        const char *s = dt->valuestring;
        if (strcmp(s, "bfloat16") != 0 && strcmp(s, "float16") != 0 && strcmp(s, "float32") != 0) {
            st = gm_fail(GM_ERR_UNSUPPORTED, "%s: key 'torch_dtype' = \"%.40s\" (want bfloat16, float16 or float32)",
                         name, s);
            goto done;
        }
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", s);
    }
done:
    cJSON_Delete(root);
    return st;
}

gm_status gm_config_load_dir(const char *dir, gm_model_config *cfg)
{
    if (!dir || !cfg)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_config_load_dir: NULL argument");
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n);
    if (!path)
        return gm_fail(GM_ERR_NOMEM, "%s/config.json: out of memory", dir);
    snprintf(path, n, "%s/config.json", dir);
    gm_status st = GM_OK;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        st = gm_fail(GM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    size_t cap = 4096, len = 0;
    buf = malloc(cap);
    if (!buf) {
        st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= CFG_MAX_FILE) {
                st = gm_fail(GM_ERR_FORMAT, "%s: larger than %u bytes, not a config.json", path, CFG_MAX_FILE);
                goto done;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                st = gm_fail(GM_ERR_IO, "%s: read error: %s", path, strerror(errno));
            break;
        }
    }
    if (st == GM_OK)
        st = gm_config_parse(buf, len, path, cfg);
done:
    if (f)
        fclose(f);
    free(buf);
    free(path);
    return st;
}

void gm_config_set_gemma1(gm_model_config *cfg)
{
    cfg->family = GM_FAMILY_GEMMA1;
    cfg->query_pre_attn_scalar = (float)cfg->head_dim;
    cfg->attn_softcap = cfg->final_softcap = 0.0f;
    cfg->sliding_window = 0;
    memset(cfg->layer_sliding, 0, sizeof cfg->layer_sliding);
    cfg->rope_theta_local = cfg->rope_theta;
    cfg->rope_scale = 1.0f;
    cfg->qk_norm = cfg->sandwich_norm = 0;
    cfg->start_of_turn_id = 106;
    cfg->end_of_turn_id = 107;
    snprintf(cfg->tensor_prefix, sizeof cfg->tensor_prefix, "model.");
}

const char *gm_config_tensor_prefix(const gm_model_config *cfg)
{
    return cfg->tensor_prefix[0] ? cfg->tensor_prefix : "model.";
}

float gm_config_normalizer(const gm_model_config *cfg)
{
    return gm_round_bf16(sqrtf((float)cfg->hidden_size));
}

int64_t gm_config_param_count(const gm_model_config *cfg)
{
    int64_t h = cfg->hidden_size, q = (int64_t)cfg->num_heads * cfg->head_dim,
            kv = (int64_t)cfg->num_kv_heads * cfg->head_dim, ff = cfg->intermediate_size;
    int64_t layer = 2 * h        /* input and post-attention norms */
                    + (cfg->sandwich_norm ? 2 * h : 0)          /* pre/post-feed-forward norms */
                    + (cfg->qk_norm ? 2 * (int64_t)cfg->head_dim : 0) /* q_norm, k_norm [head_dim] */
                    + h * q      /* q_proj [q, h] */
                    + 2 * h * kv /* k_proj, v_proj [kv, h] */
                    + q * h      /* o_proj [h, q] */
                    + 3 * h * ff; /* gate, up [ff, h]; down [h, ff] */
    return (int64_t)cfg->vocab_size * h + cfg->num_layers * layer + h; /* embed (tied), layers, final norm */
}
