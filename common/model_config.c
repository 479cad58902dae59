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
    if (!cJSON_IsObject(root)) {
        st = gm_fail(GM_ERR_FORMAT, "%s: top level must be a JSON object", name);
        goto done;
    }
    const cJSON *mt = cfg_get(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gemma") != 0)) {
        st = gm_fail(GM_ERR_UNSUPPORTED, "%s: key 'model_type' is %s%s%s, only \"gemma\" (v1) is supported", name,
                     cJSON_IsString(mt) ? "\"" : "", cJSON_IsString(mt) ? mt->valuestring : "not a string",
                     cJSON_IsString(mt) ? "\"" : "");
        goto done;
    }
    const int64_t big = INT32_MAX;
    if ((st = cfg_int(root, name, "vocab_size", -1, 1, big, &cfg->vocab_size)) ||
        (st = cfg_int(root, name, "hidden_size", -1, 1, big, &cfg->hidden_size)) ||
        (st = cfg_int(root, name, "intermediate_size", -1, 1, big, &cfg->intermediate_size)) ||
        (st = cfg_int(root, name, "num_hidden_layers", -1, 1, 65536, &cfg->num_layers)) ||
        (st = cfg_int(root, name, "num_attention_heads", -1, 1, 65536, &cfg->num_heads)) ||
        (st = cfg_int(root, name, "num_key_value_heads", cfg->num_heads, 1, 65536, &cfg->num_kv_heads)) ||
        (st = cfg_int(root, name, "head_dim", cfg->hidden_size / cfg->num_heads, 1, 65536, &cfg->head_dim)) ||
        (st = cfg_int(root, name, "max_position_embeddings", 8192, 1, big, &cfg->max_position)) ||
        (st = cfg_int(root, name, "bos_token_id", 2, 0, cfg->vocab_size - 1, &cfg->bos_id)) ||
        (st = cfg_int(root, name, "eos_token_id", 1, 0, cfg->vocab_size - 1, &cfg->eos_id)) ||
        (st = cfg_int(root, name, "pad_token_id", 0, 0, cfg->vocab_size - 1, &cfg->pad_id)) ||
        (st = cfg_float(root, name, "rope_theta", 10000.0f, &cfg->rope_theta)) ||
        (st = cfg_float(root, name, "rms_norm_eps", 1e-6f, &cfg->rms_norm_eps)))
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
    const cJSON *dt = cfg_get(root, "torch_dtype");
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
                    + h * q      /* q_proj [q, h] */
                    + 2 * h * kv /* k_proj, v_proj [kv, h] */
                    + q * h      /* o_proj [h, q] */
                    + 3 * h * ff; /* gate, up [ff, h]; down [h, ff] */
    return (int64_t)cfg->vocab_size * h + cfg->num_layers * layer + h; /* embed (tied), layers, final norm */
}
