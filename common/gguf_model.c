/* gguf_model.c - Gemma GGUF metadata to gm_model_config, GGUF tensors to a dequantized in-memory
 * checkpoint under Hugging Face names, and gm_checkpoint_open for safetensors or GGUF. */
#include "gguf_model.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dtype.h"
#include "gguf_quants.h"

/* ---------------------------------------------------------------- config */

typedef struct cfg_ctx {
    const gguf_file *g;
    const char *arch;
    char key[160];
} cfg_ctx;

/* "<arch>.<suffix>" in c->key. */
static const char *akey(cfg_ctx *c, const char *suffix)
{
    snprintf(c->key, sizeof c->key, "%s.%s", c->arch, suffix);
    return c->key;
}

/* Integer key in [lo, hi] into *out; def < lo marks it required. */
static gm_status get_i32(cfg_ctx *c, const char *key, int64_t def, int64_t lo, int64_t hi, int32_t *out)
{
    int64_t v = def;
    if (gguf_find_kv(c->g, key)) {
        gm_status st = gguf_get_int(c->g, key, lo, hi, &v);
        if (st)
            return st;
    } else if (def < lo || def > hi) {
        return gm_fail(GM_ERR_FORMAT, "%s: required key '%s' is missing", gguf_name(c->g), key);
    }
    *out = (int32_t)v;
    return GM_OK;
}

/* A positive finite number key into *out, or def when absent. */
static gm_status get_pos(cfg_ctx *c, const char *key, float def, float *out)
{
    double v = def;
    if (gguf_find_kv(c->g, key)) {
        gm_status st = gguf_get_float(c->g, key, &v);
        if (st)
            return st;
        if (!(v > 0 && v < 3.0e38))
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s' = %g must be positive and finite", gguf_name(c->g), key, v);
    }
    *out = (float)v;
    return GM_OK;
}

/* Which layers use the sliding window: `<arch>.attention.sliding_window_pattern` when present
 * (an array, true = sliding, or a period n: layer i slides unless (i + 1) % n == 0), else every
 * second layer (Gemma 2) or five of every six (Gemma 3). */
static gm_status layer_pattern(cfg_ctx *c, gm_model_config *cfg)
{
    const gguf_kv *kv = gguf_find_kv(c->g, akey(c, "attention.sliding_window_pattern"));
    int64_t period = cfg->family == GM_FAMILY_GEMMA2 ? 2 : 6;
    if (kv && kv->type == GGUF_VT_ARRAY) {
        if (kv->elem == GGUF_VT_STRING || kv->elem == GGUF_VT_F32 || kv->elem == GGUF_VT_F64 ||
            kv->n != (uint64_t)cfg->num_layers)
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s' must hold one bool per layer (%d)", gguf_name(c->g), c->key,
                           cfg->num_layers);
        for (int32_t i = 0; i < cfg->num_layers; i++)
            cfg->layer_sliding[i] = gguf_kv_int_at(kv, (uint64_t)i) != 0;
        return GM_OK;
    }
    if (kv) {
        gm_status st = gguf_get_int(c->g, c->key, 1, 65536, &period);
        if (st)
            return st;
    }
    for (int32_t i = 0; i < cfg->num_layers; i++)
        cfg->layer_sliding[i] = (i + 1) % period != 0;
    return GM_OK;
}

/* Gemma 3's RoPE scaling of the full layers: `<arch>.rope.scaling.type` linear (factor) or none. */
static gm_status rope_scaling(cfg_ctx *c, gm_model_config *cfg)
{
    char type[32] = "";
    gm_status st;
    if (gguf_find_kv(c->g, akey(c, "rope.scaling.type")) && (st = gguf_get_str(c->g, c->key, type, sizeof type)))
        return st;
    int has_factor = gguf_find_kv(c->g, akey(c, "rope.scaling.factor")) != NULL;
    if (!strcmp(type, "none") || (!type[0] && !has_factor))
        return GM_OK;
    if (type[0] && strcmp(type, "linear") != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: rope.scaling.type \"%s\" (only linear and none)", gguf_name(c->g), type);
    return get_pos(c, akey(c, "rope.scaling.factor"), 1.0f, &cfg->rope_scale);
}

/* Id of piece `want` among the first tokens, or def. */
static int32_t find_piece(const gguf_file *g, const char *want, int32_t def)
{
    const gguf_kv *tok = gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!tok || tok->elem != GGUF_VT_STRING)
        return def;
    size_t n = strlen(want);
    for (uint64_t i = 0; i < tok->n && i < 1024; i++)
        if (tok->strs[i].len == n && !memcmp(tok->strs[i].p, want, n))
            return (int32_t)i;
    return def;
}

/* The Gemma 2/3 switches, after the shape fields. */
static gm_status family_fields(cfg_ctx *c, gm_model_config *cfg)
{
    gm_status st;
    gm_config_set_gemma1(cfg);
    cfg->family = strcmp(c->arch, "gemma3") == 0 ? GM_FAMILY_GEMMA3 : strcmp(c->arch, "gemma2") == 0 ? GM_FAMILY_GEMMA2
                                                                                                      : GM_FAMILY_GEMMA1;
    int g3 = cfg->family == GM_FAMILY_GEMMA3;
    if (cfg->family != GM_FAMILY_GEMMA1) {
        cfg->sandwich_norm = 1;
        cfg->qk_norm = g3;
        /* The 27B models scale by hidden/heads (llama.cpp keeps this rule in code, not in the file). */
        if ((cfg->family == GM_FAMILY_GEMMA2 && cfg->num_layers == 46 && cfg->hidden_size == 4608) ||
            (g3 && cfg->num_layers == 62 && cfg->hidden_size == 5376))
            cfg->query_pre_attn_scalar = (float)(cfg->hidden_size / cfg->num_heads);
        int32_t window = g3 ? (cfg->hidden_size <= 1152 ? 512 : 1024) : 4096;
        if ((st = get_i32(c, akey(c, "attention.sliding_window"), window, 1, INT32_MAX, &cfg->sliding_window)) ||
            (st = layer_pattern(c, cfg)))
            return st;
        cfg->rope_theta_local = g3 ? 10000.0f : cfg->rope_theta;
        if (g3 && (st = rope_scaling(c, cfg)))
            return st;
        if (!g3) {
            if ((st = get_pos(c, akey(c, "attn_logit_softcapping"), 50.0f, &cfg->attn_softcap)) ||
                (st = get_pos(c, akey(c, "final_logit_softcapping"), 30.0f, &cfg->final_softcap)))
                return st;
        }
    }
    if (gguf_find_kv(c->g, akey(c, "attention.scale"))) { /* an explicit scale s = query_pre_attn_scalar^-0.5 */
        float s;
        if ((st = get_pos(c, c->key, 1.0f, &s)))
            return st;
        cfg->query_pre_attn_scalar = 1.0f / (s * s);
    }
    cfg->start_of_turn_id = find_piece(c->g, "<start_of_turn>", g3 ? 105 : 106);
    cfg->end_of_turn_id = find_piece(c->g, "<end_of_turn>", g3 ? 106 : 107);
    return GM_OK;
}

gm_status gguf_model_config(const gguf_file *g, gm_model_config *cfg)
{
    if (!g || !cfg)
        return gm_fail(GM_ERR_INVALID_ARG, "gguf_model_config: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    const char *name = gguf_name(g);
    char arch[32];
    gm_status st = gguf_get_str(g, "general.architecture", arch, sizeof arch);
    if (st)
        return st;
    if (strcmp(arch, "gemma") && strcmp(arch, "gemma2") && strcmp(arch, "gemma3"))
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: architecture \"%s\" is not a Gemma text model (gemma, gemma2, gemma3)",
                       name, arch);
    int64_t splits = 1;
    if (gguf_find_kv(g, "split.count") && (st = gguf_get_int(g, "split.count", 0, INT32_MAX, &splits)))
        return st;
    if (splits > 1)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: one of %" PRId64 " split GGUF files; merge them first", name, splits);
    cfg_ctx c = {g, arch, ""};
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[1] > INT32_MAX)
        return gm_fail(GM_ERR_FORMAT, "%s: no 2-D tensor token_embd.weight to take the vocabulary size from", name);
    cfg->vocab_size = (int32_t)emb->ne[1];
    const int64_t big = INT32_MAX;
    int g3 = !strcmp(arch, "gemma3");
    if ((st = get_i32(&c, akey(&c, "embedding_length"), -1, 1, big, &cfg->hidden_size)) ||
        (st = get_i32(&c, akey(&c, "feed_forward_length"), -1, 1, big, &cfg->intermediate_size)) ||
        (st = get_i32(&c, akey(&c, "block_count"), -1, 1, GM_MAX_LAYERS, &cfg->num_layers)) ||
        (st = get_i32(&c, akey(&c, "attention.head_count"), -1, 1, 65536, &cfg->num_heads)) ||
        (st = get_i32(&c, akey(&c, "attention.head_count_kv"), cfg->num_heads, 1, 65536, &cfg->num_kv_heads)) ||
        (st = get_i32(&c, akey(&c, "attention.key_length"), cfg->hidden_size / cfg->num_heads, 1, 65536,
                      &cfg->head_dim)) ||
        (st = get_i32(&c, akey(&c, "context_length"), g3 ? 131072 : 8192, 1, big, &cfg->max_position)) ||
        (st = get_pos(&c, akey(&c, "rope.freq_base"), 10000.0f, &cfg->rope_theta)) ||
        (st = get_pos(&c, akey(&c, "attention.layer_norm_rms_epsilon"), 1e-6f, &cfg->rms_norm_eps)) ||
        (st = get_i32(&c, "tokenizer.ggml.bos_token_id", 2, 0, cfg->vocab_size - 1, &cfg->bos_id)) ||
        (st = get_i32(&c, "tokenizer.ggml.eos_token_id", 1, 0, cfg->vocab_size - 1, &cfg->eos_id)) ||
        (st = get_i32(&c, "tokenizer.ggml.padding_token_id", 0, 0, cfg->vocab_size - 1, &cfg->pad_id)))
        return st;
    int32_t vlen = cfg->head_dim;
    if ((st = get_i32(&c, akey(&c, "attention.value_length"), cfg->head_dim, 1, 65536, &vlen)))
        return st;
    if (vlen != cfg->head_dim)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: attention.value_length %d differs from key_length %d", name, vlen,
                       cfg->head_dim);
    if (cfg->num_heads % cfg->num_kv_heads)
        return gm_fail(GM_ERR_FORMAT, "%s: head_count_kv %d does not divide head_count %d", name, cfg->num_kv_heads,
                       cfg->num_heads);
    if ((int64_t)cfg->num_heads * cfg->head_dim > INT32_MAX)
        return gm_fail(GM_ERR_FORMAT, "%s: head_count %d x key_length %d is too large", name, cfg->num_heads,
                       cfg->head_dim);
    int32_t v = cfg->vocab_size;
    if ((st = get_i32(&c, akey(&c, "vocab_size"), v, 1, big, &v)))
        return st;
    if (v != cfg->vocab_size)
        return gm_fail(GM_ERR_FORMAT, "%s: %s = %d but token_embd.weight has %d rows", name, c.key, v, cfg->vocab_size);
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "bfloat16");
    return family_fields(&c, cfg);
}

/* ---------------------------------------------------------------- tensors */

bool gguf_model_hf_name(const char *name, gm_family fam, char *out, size_t cap)
{
    static const struct {
        const char *gguf, *hf;
    } top[] = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output_norm.weight", "model.norm.weight"},
    };
    static const struct {
        const char *gguf, *hf;
    } blk[] = {
        {"attn_norm.weight", "input_layernorm.weight"},
        {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_k.weight", "self_attn.k_proj.weight"},
        {"attn_v.weight", "self_attn.v_proj.weight"},
        {"attn_output.weight", "self_attn.o_proj.weight"},
        {"attn_q_norm.weight", "self_attn.q_norm.weight"},
        {"attn_k_norm.weight", "self_attn.k_norm.weight"},
        {"post_attention_norm.weight", "post_attention_layernorm.weight"},
        {"ffn_norm.weight", "pre_feedforward_layernorm.weight"},
        {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},
        {"ffn_down.weight", "mlp.down_proj.weight"},
        {"post_ffw_norm.weight", "post_feedforward_layernorm.weight"},
    };
    if (!name || !out || !cap)
        return false;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strcmp(name, top[i].gguf))
            return (size_t)snprintf(out, cap, "%s", top[i].hf) < cap;
    unsigned layer;
    int used = 0;
    if (strncmp(name, "blk.", 4) != 0 || sscanf(name, "blk.%u.%n", &layer, &used) != 1 || used == 0 ||
        layer >= GM_MAX_LAYERS || name[4] < '0' || name[4] > '9' || (name[4] == '0' && name[5] != '.'))
        return false;
    const char *rest = name + used;
    for (size_t i = 0; i < sizeof blk / sizeof blk[0]; i++) {
        if (strcmp(rest, blk[i].gguf) != 0)
            continue;
        const char *hf = blk[i].hf;
        if (fam == GM_FAMILY_GEMMA1 && !strcmp(rest, "ffn_norm.weight")) /* Gemma 1's pre-FFN norm */
            hf = "post_attention_layernorm.weight";
        return (size_t)snprintf(out, cap, "model.layers.%u.%s", layer, hf) < cap;
    }
    return false;
}

/* Dequantize one GGUF tensor into m under its Hugging Face name. */
static gm_status load_tensor(const gguf_file *g, const gguf_tensor *t, gm_family fam, st_model *m)
{
    char hf[160];
    if (!gguf_model_hf_name(t->name, fam, hf, sizeof hf))
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor '%s' has no Gemma counterpart", gguf_name(g), t->name);
    if (!gguf_can_dequant(t->type))
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor '%s': type %s cannot be dequantized", gguf_name(g), t->name,
                       gguf_type_name(t->type));
    int64_t shape[GGUF_MAX_DIMS];
    for (int d = 0; d < t->n_dims; d++)
        shape[d] = t->ne[t->n_dims - 1 - d];
    int f32 = t->n_dims == 1; /* norms: kept in float32 */
    int norm = strstr(t->name, "norm.weight") != NULL;
    if (norm && !f32)
        return gm_fail(GM_ERR_FORMAT, "%s: norm tensor '%s' is not 1-D", gguf_name(g), t->name);
    void *buf = malloc((size_t)t->nelem * (f32 ? 4 : 2));
    if (!buf)
        return gm_fail(GM_ERR_NOMEM, "%s: tensor '%s': out of memory for %" PRId64 " elements", gguf_name(g), t->name,
                       t->nelem);
    /* cannot fail: the type is supported and the parser checked nelem is whole blocks */
    gm_status st = f32 ? gguf_dequant_f32(t->type, t->data, buf, t->nelem)
                       : gguf_dequant_bf16(t->type, t->data, buf, t->nelem);
    if (st) {
        free(buf);
        return st;
    }
    if (norm) /* the converter stored 1 + w */
        for (int64_t i = 0; i < t->nelem; i++)
            ((float *)buf)[i] -= 1.0f;
    return st_model_add_owned(m, hf, f32 ? GM_DT_F32 : GM_DT_BF16, t->n_dims, shape, buf);
}

gm_status gguf_model_load(const gguf_file *g, const gm_model_config *cfg, st_model **out)
{
    if (!g || !cfg || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gguf_model_load: NULL argument");
    *out = NULL;
    st_model *m = st_model_new_mem(gguf_name(g));
    if (!m)
        return GM_ERR_NOMEM;
    gm_status st = GM_OK;
    for (int64_t i = 0; i < gguf_tensor_count(g) && !st; i++)
        st = load_tensor(g, gguf_tensor_at(g, i), cfg->family, m);
    if (!st)
        st = st_model_seal(m);
    if (st) {
        st_model_destroy(&m);
        return st;
    }
    *out = m;
    return GM_OK;
}

/* ---------------------------------------------------------------- --model */

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int is_file(const char *dir, const char *name)
{
    char *p = path_join(dir, name);
    struct stat sb;
    int r = p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
    free(p);
    return r;
}

/* The one .gguf file of dir into *out (malloc'd path). */
static gm_status find_gguf(const char *dir, char **out)
{
    DIR *d = opendir(dir);
    if (!d)
        return gm_fail(GM_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    char first[256] = "", second[256] = "";
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len > 5 && !strcmp(e->d_name + len - 5, ".gguf") && is_file(dir, e->d_name))
            snprintf(n++ ? second : first, sizeof first, "%s", e->d_name);
    }
    closedir(d);
    if (n == 0)
        return gm_fail(GM_ERR_IO, "%s: no model.safetensors, model.safetensors.index.json or .gguf file in this directory",
                       dir);
    if (n > 1)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: holds %d .gguf files (%s, %s, ...); give the file to use", dir, n,
                       first, second);
    *out = path_join(dir, first);
    return *out ? GM_OK : gm_fail(GM_ERR_NOMEM, "%s: out of memory", dir);
}

/* GGUF: config, and the weights when asked. */
static gm_status open_gguf(gm_checkpoint *c, int flags)
{
    gm_status st = gguf_open(c->path, &c->gguf);
    if (!st)
        st = gguf_model_config(c->gguf, &c->cfg);
    if (!st && (flags & GM_CKPT_WEIGHTS)) {
        st = gguf_model_load(c->gguf, &c->cfg, &c->model);
        /* Map the file afresh: the dequantizing pass touched every page of the old mapping, and
         * only the tokenizer's metadata is needed from here on. */
        if (!st) {
            gguf_destroy(&c->gguf);
            st = gguf_open(c->path, &c->gguf);
        }
    }
    return st;
}

gm_status gm_checkpoint_open(const char *path, int flags, gm_checkpoint **out)
{
    if (!path || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_checkpoint_open: NULL argument");
    *out = NULL;
    gm_checkpoint *c = calloc(1, sizeof *c);
    if (!c)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
    struct stat sb;
    gm_status st = GM_OK;
    if (stat(path, &sb) != 0) {
        st = gm_fail(GM_ERR_IO, "%s: %s", path, strerror(errno));
    } else if (S_ISREG(sb.st_mode)) {
        if (!(c->path = strdup(path)))
            st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
        else
            st = open_gguf(c, flags);
    } else if (!S_ISDIR(sb.st_mode)) {
        st = gm_fail(GM_ERR_IO, "%s: neither a checkpoint directory nor a .gguf file", path);
    } else if (is_file(path, "model.safetensors") || is_file(path, "model.safetensors.index.json")) {
        if (!(c->dir = strdup(path)) || !(c->path = strdup(path)))
            st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
        if (!st)
            st = gm_config_load_dir(path, &c->cfg);
        if (!st && (flags & GM_CKPT_WEIGHTS))
            st = st_model_open(path, &c->model);
    } else if (!(st = find_gguf(path, &c->path))) {
        st = open_gguf(c, flags);
    }
    if (st) {
        gm_checkpoint_destroy(&c);
        return st;
    }
    *out = c;
    return GM_OK;
}

gm_status gm_checkpoint_config(const char *path, gm_model_config *cfg)
{
    gm_checkpoint *c = NULL;
    gm_status st = gm_checkpoint_open(path, 0, &c);
    if (st)
        return st;
    *cfg = c->cfg;
    gm_checkpoint_destroy(&c);
    return GM_OK;
}

gm_status gm_checkpoint_load(const char *path, gm_model_config *cfg, st_model **model)
{
    if (!model)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_checkpoint_load: NULL argument");
    *model = NULL;
    gm_checkpoint *c = NULL;
    gm_status st = gm_checkpoint_open(path, GM_CKPT_WEIGHTS, &c);
    if (st)
        return st;
    if (cfg)
        *cfg = c->cfg;
    *model = c->model; /* an in-memory GGUF checkpoint owns its bytes; a mapped one its mapping */
    c->model = NULL;
    gm_checkpoint_destroy(&c);
    return GM_OK;
}

bool gm_checkpoint_is_gguf(const char *path)
{
    struct stat sb;
    if (!path || stat(path, &sb) != 0)
        return false;
    if (S_ISREG(sb.st_mode))
        return true;
    if (!S_ISDIR(sb.st_mode) || is_file(path, "model.safetensors") || is_file(path, "model.safetensors.index.json"))
        return false;
    char *g = NULL;
    bool yes = find_gguf(path, &g) == GM_OK;
    free(g);
    gm_clear_error();
    return yes;
}

gm_status gm_checkpoint_tokenizer(const gm_checkpoint *c, gm_tokenizer **out)
{
    if (!c || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_checkpoint_tokenizer: NULL argument");
    if (c->gguf)
        return gm_tok_load_gguf(c->gguf, out);
    char *p = path_join(c->dir, "tokenizer.model");
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", c->dir);
    gm_status st = gm_tok_load(p, out);
    free(p);
    return st;
}

void gm_checkpoint_destroy(gm_checkpoint **pc)
{
    if (!pc || !*pc)
        return;
    gm_checkpoint *c = *pc;
    st_model_destroy(&c->model);
    gguf_destroy(&c->gguf);
    free(c->dir);
    free(c->path);
    free(c);
    *pc = NULL;
}
