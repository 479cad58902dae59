/* weights.c - Gemma tensor lookup, shape checks and tensor-parallel slicing. */
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

gm_status gm_tp_layout_make(const gm_model_config *cfg, int32_t rank, int32_t size, gm_tp_layout *out)
{
    memset(out, 0, sizeof *out);
    if (size < 1 || rank < 0 || rank >= size)
        return gm_fail(GM_ERR_INVALID_ARG, "tensor parallel rank %d of size %d is out of range", rank, size);
    if (cfg->num_heads % size != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "tensor parallel size %d does not divide num_attention_heads %d", size,
                       cfg->num_heads);
    if (cfg->intermediate_size % size != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "tensor parallel size %d does not divide intermediate_size %d", size,
                       cfg->intermediate_size);
    int32_t nkv = cfg->num_kv_heads;
    if (nkv <= 0 || cfg->num_heads % nkv != 0)
        return gm_fail(GM_ERR_INVALID_ARG, "num_key_value_heads %d does not divide num_attention_heads %d", nkv,
                       cfg->num_heads);
    out->rank = rank, out->size = size;
    out->n_heads = cfg->num_heads / size;
    out->head0 = rank * out->n_heads;
    if (nkv >= size) {
        if (nkv % size != 0)
            return gm_fail(GM_ERR_UNSUPPORTED, "tensor parallel size %d does not divide num_key_value_heads %d", size,
                           nkv);
        out->n_kv = nkv / size;
        out->kv0 = rank * out->n_kv;
    } else {
        if (size % nkv != 0)
            return gm_fail(GM_ERR_UNSUPPORTED,
                           "num_key_value_heads %d does not divide tensor parallel size %d (needed to replicate KV)",
                           nkv, size);
        out->n_kv = 1;
        out->kv0 = out->head0 / (cfg->num_heads / nkv);
        out->kv_replicated = 1;
    }
    out->n_inter = cfg->intermediate_size / size;
    out->inter0 = rank * out->n_inter;
    return GM_OK;
}

static void shape_str(const st_tensor *t, char *buf, size_t cap)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int32_t i = 0; i < t->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* Find `name` and check it is [d0] (d1 < 0) or [d0, d1] of a float dtype. */
static gm_status find_checked(const st_model *m, const char *name, int64_t d0, int64_t d1, const st_tensor **out)
{
    const st_tensor *t = st_model_find(m, name);
    if (!t)
        return gm_fail(GM_ERR_NOT_FOUND, "checkpoint has no tensor %s", name);
    int ok = d1 < 0 ? (t->ndim == 1 && t->shape[0] == d0) : (t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1);
    if (!ok) {
        char got[128];
        shape_str(t, got, sizeof got);
        if (d1 < 0)
            return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: expected shape [%lld], got %s", t->file ? t->file : "?",
                           name, (long long)d0, got);
        return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: expected shape [%lld, %lld], got %s", t->file ? t->file : "?",
                       name, (long long)d0, (long long)d1, got);
    }
    if (t->dtype != GM_DT_F32 && t->dtype != GM_DT_F16 && t->dtype != GM_DT_BF16)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor %s: dtype %s is not F32, F16 or BF16", t->file ? t->file : "?",
                       name, gm_dtype_name(t->dtype));
    if (!t->data)
        return gm_fail(GM_ERR_INTERNAL, "%s: tensor %s is not mapped", t->file ? t->file : "?", name);
    *out = t;
    return GM_OK;
}

/* View rows [r0, r0+nr) x columns [c0, c0+nc) of a 2-D (or 1-D as [1, n]) tensor. */
static gm_wview view(const st_tensor *t, int64_t r0, int64_t nr, int64_t c0, int64_t nc)
{
    int64_t ld = t->ndim == 1 ? t->shape[0] : t->shape[1];
    gm_wview v = {0};
    v.dtype = t->dtype;
    v.rows = nr, v.cols = nc, v.ld = ld, v.row0 = r0, v.col0 = c0;
    v.data = (const char *)t->data + (size_t)(r0 * ld + c0) * gm_dtype_size(t->dtype);
    v.full = t;
    return v;
}

/* Does layer l's Linear `suffix` come as AWQ tensors? */
static int has_qweight(const st_model *m, const char *prefix, int32_t l, const char *suffix)
{
    char name[200];
    snprintf(name, sizeof name, "%slayers.%d.%s.qweight", prefix, (int)l, suffix);
    return st_model_find(m, name) != NULL;
}

/* Settle cfg->tensor_prefix: its own, else the first known prefix whose embed_tokens the checkpoint has. */
static void find_prefix(const st_model *m, gm_model_config *cfg)
{
    static const char *const known[] = {"model.", "model.language_model.", "language_model.model."};
    char name[96], own[sizeof cfg->tensor_prefix];
    snprintf(own, sizeof own, "%s", gm_config_tensor_prefix(cfg));
    snprintf(name, sizeof name, "%sembed_tokens.weight", own);
    if (st_model_find(m, name))
        return;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        snprintf(name, sizeof name, "%sembed_tokens.weight", known[i]);
        if (st_model_find(m, name)) {
            snprintf(cfg->tensor_prefix, sizeof cfg->tensor_prefix, "%s", known[i]);
            return;
        }
    }
    snprintf(cfg->tensor_prefix, sizeof cfg->tensor_prefix, "%s", own); /* the error will name it */
}

gm_status gm_weights_bind(const st_model *m, const gm_model_config *cfg, int32_t rank, int32_t size, gm_weights *w)
{
    memset(w, 0, sizeof *w);
    w->cfg = *cfg;
    gm_status st = gm_tp_layout_make(cfg, rank, size, &w->tp);
    if (st)
        return st;
    find_prefix(m, &w->cfg);
    const char *pre = w->cfg.tensor_prefix;
    const gm_tp_layout *tp = &w->tp;
    int64_t H = cfg->hidden_size, hd = cfg->head_dim, I = cfg->intermediate_size;
    int64_t qw = (int64_t)cfg->num_heads * hd, kvw = (int64_t)cfg->num_kv_heads * hd;
    const st_tensor *t;
    char name[200];
    snprintf(name, sizeof name, "%sembed_tokens.weight", pre);
    if ((st = find_checked(m, name, cfg->vocab_size, H, &t)))
        return st;
    w->embed = view(t, 0, cfg->vocab_size, 0, H);
    snprintf(name, sizeof name, "%snorm.weight", pre);
    if ((st = find_checked(m, name, H, -1, &t)))
        return st;
    w->final_norm = view(t, 0, 1, 0, H);
    w->layers = calloc((size_t)cfg->num_layers, sizeof *w->layers);
    if (!w->layers)
        return gm_fail(GM_ERR_NOMEM, "no memory for %d layers of weight views", cfg->num_layers);
    for (int32_t l = 0; l < cfg->num_layers; l++) {
        gm_layer_weights *L = &w->layers[l];
#define GET(suffix, d0, d1)                                                         \
    snprintf(name, sizeof name, "%slayers.%d.%s.weight", pre, (int)l, suffix);      \
    if ((st = find_checked(m, name, d0, d1, &t)))                                   \
        goto fail;
/* A Linear that an AWQ checkpoint stores as qweight/qzeros/scales (no .weight), or an FP8
 * one as an F8_E4M3 .weight, keeps an empty view; worker/awq.h (gm_linears_bind) binds it. */
#define GETL(suffix, d0, d1, VIEW)                                                  \
    snprintf(name, sizeof name, "%slayers.%d.%s.weight", pre, (int)l, suffix);      \
    t = st_model_find(m, name);                                                     \
    if (t ? t->dtype != GM_DT_F8_E4M3 : !has_qweight(m, pre, l, suffix)) {          \
        GET(suffix, d0, d1);                                                        \
        VIEW;                                                                       \
    }
        GET("input_layernorm", H, -1);
        L->input_norm = view(t, 0, 1, 0, H);
        GET("post_attention_layernorm", H, -1);
        if (cfg->sandwich_norm) {
            L->post_attn_norm = view(t, 0, 1, 0, H);
            GET("pre_feedforward_layernorm", H, -1);
            L->pre_ffw_norm = view(t, 0, 1, 0, H);
            GET("post_feedforward_layernorm", H, -1);
            L->post_ffw_norm = view(t, 0, 1, 0, H);
        } else {
            L->post_norm = view(t, 0, 1, 0, H);
        }
        if (cfg->qk_norm) {
            GET("self_attn.q_norm", hd, -1);
            L->q_norm = view(t, 0, 1, 0, hd);
            GET("self_attn.k_norm", hd, -1);
            L->k_norm = view(t, 0, 1, 0, hd);
        }
        GETL("self_attn.q_proj", qw, H, L->q = view(t, tp->head0 * hd, tp->n_heads * hd, 0, H))
        GETL("self_attn.k_proj", kvw, H, L->k = view(t, tp->kv0 * hd, tp->n_kv * hd, 0, H))
        GETL("self_attn.v_proj", kvw, H, L->v = view(t, tp->kv0 * hd, tp->n_kv * hd, 0, H))
        GETL("self_attn.o_proj", H, qw, L->o = view(t, 0, H, tp->head0 * hd, tp->n_heads * hd))
        GETL("mlp.gate_proj", I, H, L->gate = view(t, tp->inter0, tp->n_inter, 0, H))
        GETL("mlp.up_proj", I, H, L->up = view(t, tp->inter0, tp->n_inter, 0, H))
        GETL("mlp.down_proj", H, I, L->down = view(t, 0, H, tp->inter0, tp->n_inter))
#undef GETL
#undef GET
    }
    return GM_OK;
fail:
    gm_weights_release(w);
    return st;
}

void gm_weights_release(gm_weights *w)
{
    if (!w)
        return;
    free(w->layers);
    w->layers = NULL;
}

/* Index of the first element of n at p whose exponent bits (mask) are all ones, or -1. Blocks are
 * reduced with a branch-free OR first (the loop vectorizes); a flagged block is searched again. */
#define NONFINITE_SCAN(name, T, MASK, LOW)                                                                          \
    static int64_t name(const uint8_t *p, int64_t n)                                                                \
    {                                                                                                               \
        for (int64_t b = 0; b < n; b += 4096) {                                                                     \
            int64_t e = b + 4096 < n ? b + 4096 : n;                                                                \
            T acc = 0;                                                                                              \
            for (int64_t i = b; i < e; i++) {                                                                       \
                T x;                                                                                                \
                memcpy(&x, p + i * (int64_t)sizeof(T), sizeof(T));                                                  \
                acc |= (T)(((x & (T)(MASK)) + (T)(LOW)) & (T)((MASK) + (LOW))); /* carries out: all ones */         \
            }                                                                                                       \
            if (!acc)                                                                                               \
                continue;                                                                                           \
            for (int64_t i = b; i < e; i++) {                                                                       \
                T x;                                                                                                \
                memcpy(&x, p + i * (int64_t)sizeof(T), sizeof(T));                                                  \
                if ((x & (T)(MASK)) == (T)(MASK))                                                                   \
                    return i;                                                                                       \
            }                                                                                                       \
        }                                                                                                           \
        return -1;                                                                                                  \
    }
NONFINITE_SCAN(scan_f64, uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull)
NONFINITE_SCAN(scan_f32, uint32_t, 0x7f800000u, 0x00800000u)
NONFINITE_SCAN(scan_f16, uint16_t, 0x7c00u, 0x0400u)
NONFINITE_SCAN(scan_bf16, uint16_t, 0x7f80u, 0x0080u)
NONFINITE_SCAN(scan_e4m3, uint8_t, 0x7fu, 0x01u)
NONFINITE_SCAN(scan_e5m2, uint8_t, 0x7cu, 0x04u)
#undef NONFINITE_SCAN

gm_status gm_weights_check_finite(const st_model *m, int32_t rank, int32_t size)
{
    if (!m || size < 1 || rank < 0 || rank >= size)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_weights_check_finite: bad arguments");
    for (int32_t i = 0; i < st_model_count(m); i++) {
        if (i % size != rank)
            continue;
        const st_tensor *t = st_model_at(m, i);
        int64_t n = st_numel(t), bad = -1;
        const uint8_t *p = t->data;
        if (!p || n <= 0)
            continue;
        switch (t->dtype) {
        case GM_DT_F64: bad = scan_f64(p, n); break;
        case GM_DT_F32: bad = scan_f32(p, n); break;
        case GM_DT_F16: bad = scan_f16(p, n); break;
        case GM_DT_BF16: bad = scan_bf16(p, n); break;
        case GM_DT_F8_E4M3: bad = scan_e4m3(p, n); break;
        case GM_DT_F8_E5M2: bad = scan_e5m2(p, n); break;
        default: break; /* integers (AWQ codes) cannot be non-finite */
        }
        if (bad >= 0) {
            size_t es = gm_dtype_size(t->dtype);
            uint64_t bits = 0;
            memcpy(&bits, p + bad * (int64_t)es, es);
            return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: element %lld is NaN or Inf (%s bits 0x%llx): the checkpoint "
                           "is corrupt", t->file ? t->file : "?", t->name, (long long)bad, gm_dtype_name(t->dtype),
                           (unsigned long long)bits);
        }
    }
    return GM_OK;
}
