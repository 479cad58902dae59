/* awq.c - AutoAWQ GEMM-layout checkpoints and the dense, AWQ or FP8 linear. */
#include "awq.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/fsutil.h"
#include "../common/gguf_model.h"
#include "../kernels/cpu/gemm.h"
#include "../kernels/cpu/gemm_awq.h"
#include "../kernels/cpu/gemm_fp8.h"
#include "../kernels/cpu/quant_fp8.h"

const char *const gm_linear_names[GM_LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

/* ---- quantization config ---- */

static void lower_copy(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < cap; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

/* An integer member (or -1 when absent/null); GM_ERR_FORMAT when not a number. */
static gm_status json_int(const cJSON *o, const char *key, const char *name, int32_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = -1;
    if (!v || cJSON_IsNull(v))
        return GM_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e9)
        return gm_fail(GM_ERR_FORMAT, "%s: quantization config key \"%s\" is not an integer", name, key);
    *out = (int32_t)v->valuedouble;
    return GM_OK;
}

static gm_status quant_from_json(const cJSON *o, const char *name, int legacy, gm_quant_config *q)
{
    memset(q, 0, sizeof *q);
    if (!cJSON_IsObject(o))
        return gm_fail(GM_ERR_FORMAT, "%s: quantization config is not a JSON object", name);
    q->present = 1;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "quant_method");
    if (m && !cJSON_IsNull(m) && !cJSON_IsString(m))
        return gm_fail(GM_ERR_FORMAT, "%s: quant_method is not a string", name);
    if (m && cJSON_IsString(m))
        lower_copy(q->method, sizeof q->method, m->valuestring);
    else if (legacy)
        snprintf(q->method, sizeof q->method, "awq");
    else
        return gm_fail(GM_ERR_FORMAT, "%s: quantization_config has no quant_method", name);
    if (strcmp(q->method, "awq") != 0)
        return GM_OK; /* another method: its own loader checks the rest */

    gm_status st;
    int32_t g1, g2, b1, b2;
    if ((st = json_int(o, "group_size", name, &g1)) || (st = json_int(o, "q_group_size", name, &g2)) ||
        (st = json_int(o, "bits", name, &b1)) || (st = json_int(o, "w_bit", name, &b2)))
        return st;
    q->group_size = legacy ? (g2 >= 0 ? g2 : g1) : (g1 >= 0 ? g1 : g2);
    q->bits = legacy ? (b2 >= 0 ? b2 : b1) : (b1 >= 0 ? b1 : b2);
    const cJSON *zp = cJSON_GetObjectItemCaseSensitive(o, "zero_point");
    q->zero_point = !zp || cJSON_IsNull(zp) || cJSON_IsTrue(zp);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "version");
    if (ver && cJSON_IsString(ver))
        lower_copy(q->version, sizeof q->version, ver->valuestring);
    else if (!ver || cJSON_IsNull(ver))
        snprintf(q->version, sizeof q->version, "gemm");
    else
        return gm_fail(GM_ERR_FORMAT, "%s: quantization config \"version\" is not a string", name);

    if (q->bits != 4)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: AWQ with %d bits; only 4-bit AWQ is supported", name, q->bits);
    if (strcmp(q->version, "gemm") != 0)
        return gm_fail(GM_ERR_UNSUPPORTED,
                       "%s: AWQ version \"%s\"; only the GEMM layout (version \"gemm\") is supported", name,
                       q->version);
    if (!q->zero_point)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: AWQ without zero points is not supported", name);
    if (q->group_size <= 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: AWQ group_size %d; a positive group size is needed", name,
                       q->group_size);
    return GM_OK;
}

gm_status gm_quant_config_parse(const char *json, size_t len, const char *name, int legacy, gm_quant_config *q)
{
    memset(q, 0, sizeof *q);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return gm_fail(GM_ERR_FORMAT, "%s: not valid JSON", name);
    gm_status st = quant_from_json(root, name, legacy, q);
    cJSON_Delete(root);
    return st;
}

gm_status gm_quant_config_load(const char *dir, gm_quant_config *q)
{
    memset(q, 0, sizeof *q);
    if (gm_checkpoint_is_gguf(dir))
        return GM_OK; /* its quantization is in its tensor types, undone at load */
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    gm_status st = gm_read_file(path, (size_t)64 << 20, &text, &len);
    if (st)
        return st; /* a model directory always has config.json */
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        return gm_fail(GM_ERR_FORMAT, "%s: not valid JSON", path);
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (qc && !cJSON_IsNull(qc)) {
        st = quant_from_json(qc, path, 0, q);
        cJSON_Delete(root);
        return st;
    }
    cJSON_Delete(root);
    snprintf(path, sizeof path, "%s/quant_config.json", dir);
    st = gm_read_file(path, (size_t)64 << 20, &text, &len);
    if (st == GM_ERR_NOT_FOUND) {
        gm_clear_error();
        return GM_OK; /* not quantized */
    }
    if (st)
        return st;
    st = gm_quant_config_parse(text, len, path, 1, q);
    free(text);
    return st;
}

/* ---- AWQ tensors ---- */

static gm_status check_tensor(const st_model *m, const char *name, gm_dtype dt, int64_t d0, int64_t d1,
                              const st_tensor **out)
{
    const st_tensor *t = st_model_find(m, name);
    if (!t)
        return gm_fail(GM_ERR_NOT_FOUND, "checkpoint has no tensor %s", name);
    const char *file = t->file ? t->file : "?";
    if (t->dtype != dt)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: expected dtype %s, got %s", file, name, gm_dtype_name(dt),
                       gm_dtype_name(t->dtype));
    if (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
        char got[96] = "[";
        for (int32_t i = 0; i < t->ndim && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        snprintf(got + strlen(got), sizeof got - strlen(got), "]");
        return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: expected shape [%lld, %lld], got %s", file, name,
                       (long long)d0, (long long)d1, got);
    }
    if (!t->data)
        return gm_fail(GM_ERR_INTERNAL, "%s: tensor %s is not mapped", file, name);
    if (((uintptr_t)t->data & 3u) != 0)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: data is not 4-byte aligned in the file", file, name);
    *out = t;
    return GM_OK;
}

gm_status gm_awq_find(const st_model *m, const char *prefix, int64_t K, int64_t N, int64_t group, cpu_awq_w *out)
{
    memset(out, 0, sizeof *out);
    if (group <= 0 || K % group != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: AWQ group size %lld does not divide in_features %lld", prefix,
                       (long long)group, (long long)K);
    if (N % 8 != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: AWQ needs out_features %% 8 == 0, got %lld", prefix, (long long)N);
    char name[256];
    const st_tensor *qw, *qz, *sc;
    gm_status st;
    snprintf(name, sizeof name, "%s.qweight", prefix);
    if ((st = check_tensor(m, name, GM_DT_I32, K, N / 8, &qw)))
        return st;
    snprintf(name, sizeof name, "%s.qzeros", prefix);
    if ((st = check_tensor(m, name, GM_DT_I32, K / group, N / 8, &qz)))
        return st;
    snprintf(name, sizeof name, "%s.scales", prefix);
    if ((st = check_tensor(m, name, GM_DT_F16, K / group, N, &sc)))
        return st;
    out->qweight = qw->data;
    out->qzeros = qz->data;
    out->scales = sc->data;
    out->K = K, out->N = N;
    out->ldq = N / 8, out->lds = N;
    out->group = group;
    return GM_OK;
}

gm_status gm_awq_slice(const cpu_awq_w *w, int64_t k0, int64_t nk, int64_t n0, int64_t nn, cpu_awq_w *out)
{
    if (k0 < 0 || nk <= 0 || k0 + nk > w->K || n0 < 0 || nn <= 0 || n0 + nn > w->N)
        return gm_fail(GM_ERR_INVALID_ARG, "AWQ slice rows [%lld, +%lld) cols [%lld, +%lld) outside [%lld, %lld]",
                       (long long)k0, (long long)nk, (long long)n0, (long long)nn, (long long)w->K,
                       (long long)w->N);
    if (k0 % w->group || nk % w->group)
        return gm_fail(GM_ERR_UNSUPPORTED, "AWQ slice of input rows [%lld, +%lld) is not aligned to group %lld",
                       (long long)k0, (long long)nk, (long long)w->group);
    if (n0 % 8 || nn % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "AWQ slice of output columns [%lld, +%lld) is not a multiple of 8",
                       (long long)n0, (long long)nn);
    *out = *w;
    out->qweight = w->qweight + k0 * w->ldq + n0 / 8;
    out->qzeros = w->qzeros + (k0 / w->group) * w->ldq + n0 / 8;
    out->scales = w->scales + (k0 / w->group) * w->lds + n0;
    out->K = nk, out->N = nn;
    return GM_OK;
}

/* ---- linears ---- */

gm_linear gm_linear_dense(const gm_wview *v)
{
    gm_linear L;
    memset(&L, 0, sizeof L);
    L.kind = GM_LINEAR_DENSE;
    L.dense = *v;
    L.in = v->cols, L.out = v->rows;
    return L;
}

/* A per-tensor scale `<prefix>.<what>`: one F32/BF16/F16 value (shape [] or [1]), finite and > 0.
 * *out = 0 when the tensor is absent and !required. */
static gm_status read_scale(const st_model *m, const char *prefix, const char *what, int required, float *out)
{
    char name[256];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    const st_tensor *t = st_model_find(m, name);
    *out = 0.0f;
    if (!t) {
        if (required)
            return gm_fail(GM_ERR_NOT_FOUND, "FP8 checkpoint has no tensor %s (the per-tensor scale of %s.weight)",
                           name, prefix);
        return GM_OK;
    }
    const char *file = t->file ? t->file : "?";
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    if (n != 1)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: a per-tensor scale must hold one value, not %lld", file, name,
                       (long long)n);
    if (t->dtype != GM_DT_F32 && t->dtype != GM_DT_BF16 && t->dtype != GM_DT_F16)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor %s: dtype %s is not F32, BF16 or F16", file, name,
                       gm_dtype_name(t->dtype));
    if (!t->data)
        return gm_fail(GM_ERR_INTERNAL, "tensor %s is not mapped", name);
    float v;
    gm_to_f32(t->dtype, t->data, &v, 1);
    if (!(v > 0.0f) || !isfinite(v))
        return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: scale %g is not a finite positive number", file, name, (double)v);
    *out = v;
    return GM_OK;
}

/* An e4m3 weight: copy this rank's [nr, nc] slice (row stride K in the file) into q8. */
static gm_status bind_fp8(const st_model *m, const char *prefix, const st_tensor *t, int64_t r0, int64_t nr,
                          int64_t c0, int64_t nc, gm_linear *L)
{
    if (!t->data)
        return gm_fail(GM_ERR_INTERNAL, "tensor %s.weight is not mapped", prefix);
    gm_status st = read_scale(m, prefix, "weight_scale", 1, &L->w_scale);
    if (st || (st = read_scale(m, prefix, "input_scale", 0, &L->in_scale)))
        return st;
    int64_t K = t->shape[1];
    L->q8 = malloc((size_t)(nr * nc) + 1);
    if (!L->q8)
        return gm_fail(GM_ERR_NOMEM, "no memory for %s.weight (%lld bytes)", prefix, (long long)(nr * nc));
    for (int64_t r = 0; r < nr; r++)
        memcpy(L->q8 + r * nc, (const uint8_t *)t->data + (size_t)((r0 + r) * K + c0), (size_t)nc);
    L->kind = GM_LINEAR_FP8;
    return GM_OK;
}

/* Bind one Linear: full shape [N, K] (nn.Linear), this rank's rows [r0, r0+nr) and columns [c0, c0+nc). */
static gm_status bind_one(const st_model *m, const char *prefix, int64_t N, int64_t K, int64_t r0, int64_t nr,
                          int64_t c0, int64_t nc, int64_t group, gm_linear *L)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    const st_tensor *t = st_model_find(m, name);
    memset(L, 0, sizeof *L);
    L->in = nc, L->out = nr;
    if (t) {
        if (t->ndim != 2 || t->shape[0] != N || t->shape[1] != K)
            return gm_fail(GM_ERR_FORMAT, "%s: tensor %s: expected shape [%lld, %lld]", t->file ? t->file : "?",
                           name, (long long)N, (long long)K);
        if (t->dtype == GM_DT_F8_E4M3)
            return bind_fp8(m, prefix, t, r0, nr, c0, nc, L);
        if (t->dtype != GM_DT_F32 && t->dtype != GM_DT_F16 && t->dtype != GM_DT_BF16)
            return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor %s: dtype %s is not F32, F16, BF16 or F8_E4M3",
                           t->file ? t->file : "?", name, gm_dtype_name(t->dtype));
        if (!t->data)
            return gm_fail(GM_ERR_INTERNAL, "tensor %s is not mapped", name);
        L->kind = GM_LINEAR_DENSE;
        gm_wview *v = &L->dense;
        v->dtype = t->dtype;
        v->rows = nr, v->cols = nc, v->ld = K, v->row0 = r0, v->col0 = c0;
        v->data = (const char *)t->data + (size_t)(r0 * K + c0) * gm_dtype_size(t->dtype);
        v->full = t;
        return GM_OK;
    }
    if (group <= 0)
        return gm_fail(GM_ERR_NOT_FOUND, "checkpoint has no tensor %s (and no AWQ quantization config)", name);
    cpu_awq_w full;
    gm_status st = gm_awq_find(m, prefix, K, N, group, &full);
    if (st)
        return st;
    L->kind = GM_LINEAR_AWQ;
    if ((st = gm_awq_slice(&full, c0, nc, r0, nr, &L->awq)))
        return gm_fail(st, "%s: %s (tensor-parallel slice)", prefix, gm_last_error());
    return GM_OK;
}

/* The products the engines run as one GEMM: q|k|v, o, gate|up, down (-1 = none). */
static const int g_fused[4][3] = {{GM_LIN_Q, GM_LIN_K, GM_LIN_V}, {GM_LIN_O, -1, -1},
                                  {GM_LIN_GATE, GM_LIN_UP, -1}, {GM_LIN_DOWN, -1, -1}};

/* FP8 Linears of one fused product get one weight scale (codes requantized to the largest) and
 * one input scale; static input scales are used only when every FP8 Linear of the model has one,
 * else all are dynamic (gm_linears_bind), which is what the CUDA engine can run. */
static gm_status fp8_unify(gm_linear *lin, int32_t n_layers)
{
    int all_static = 1;
    for (int64_t i = 0; i < (int64_t)n_layers * GM_LIN_COUNT; i++)
        all_static &= lin[i].kind != GM_LINEAR_FP8 || lin[i].in_scale > 0.0f;
    for (int64_t i = 0; i < (int64_t)n_layers * GM_LIN_COUNT && !all_static; i++)
        lin[i].in_scale = 0.0f;
    for (int32_t l = 0; l < n_layers; l++) {
        gm_linear *L = lin + (int64_t)l * GM_LIN_COUNT;
        for (int g = 0; g < 4; g++) {
            int n8 = 0, n = 0, no_in = 0;
            float ws = 0.0f, is = 0.0f;
            for (int j = 0; j < 3 && g_fused[g][j] >= 0; j++, n++) {
                const gm_linear *W = &L[g_fused[g][j]];
                if (W->kind != GM_LINEAR_FP8)
                    continue;
                n8++;
                ws = W->w_scale > ws ? W->w_scale : ws;
                is = W->in_scale > is ? W->in_scale : is;
                no_in |= W->in_scale <= 0.0f;
            }
            if (!n8)
                continue;
            if (n8 != n)
                return gm_fail(GM_ERR_UNSUPPORTED, "layer %d: %s and %s are run as one product, but only some of "
                               "them are F8_E4M3", (int)l, gm_linear_names[g_fused[g][0]],
                               gm_linear_names[g_fused[g][n - 1]]);
            for (int j = 0; j < n; j++) {
                gm_linear *W = &L[g_fused[g][j]];
                if (W->w_scale != ws) {
                    float f = W->w_scale / ws;
                    for (int64_t i = 0; i < W->in * W->out; i++)
                        W->q8[i] = gm_f32_to_e4m3(gm_e4m3_to_f32(W->q8[i]) * f);
                    W->w_scale = ws;
                }
                W->in_scale = no_in ? 0.0f : is;
            }
        }
    }
    return GM_OK;
}

gm_status gm_linears_bind(const st_model *m, const gm_model_config *cfg, const gm_tp_layout *tp, int64_t group,
                          gm_linear **out)
{
    *out = NULL;
    int64_t H = cfg->hidden_size, hd = cfg->head_dim, I = cfg->intermediate_size;
    int64_t qw = (int64_t)cfg->num_heads * hd, kvw = (int64_t)cfg->num_kv_heads * hd;
    gm_linear *lin = calloc((size_t)cfg->num_layers * GM_LIN_COUNT, sizeof *lin);
    if (!lin)
        return gm_fail(GM_ERR_NOMEM, "no memory for %d layers of linears", cfg->num_layers);
    gm_status st = GM_OK;
    for (int32_t l = 0; l < cfg->num_layers && !st; l++) {
        gm_linear *L = lin + (int64_t)l * GM_LIN_COUNT;
        char p[GM_LIN_COUNT][128];
        for (int i = 0; i < GM_LIN_COUNT; i++)
            snprintf(p[i], sizeof p[i], "%slayers.%d.%s", gm_config_tensor_prefix(cfg), (int)l, gm_linear_names[i]);
        int64_t h0 = (int64_t)tp->head0 * hd, nh = (int64_t)tp->n_heads * hd;
        int64_t k0 = (int64_t)tp->kv0 * hd, nk = (int64_t)tp->n_kv * hd;
        if ((st = bind_one(m, p[GM_LIN_Q], qw, H, h0, nh, 0, H, group, &L[GM_LIN_Q])) ||
            (st = bind_one(m, p[GM_LIN_K], kvw, H, k0, nk, 0, H, group, &L[GM_LIN_K])) ||
            (st = bind_one(m, p[GM_LIN_V], kvw, H, k0, nk, 0, H, group, &L[GM_LIN_V])) ||
            (st = bind_one(m, p[GM_LIN_O], H, qw, 0, H, h0, nh, group, &L[GM_LIN_O])) ||
            (st = bind_one(m, p[GM_LIN_GATE], I, H, tp->inter0, tp->n_inter, 0, H, group, &L[GM_LIN_GATE])) ||
            (st = bind_one(m, p[GM_LIN_UP], I, H, tp->inter0, tp->n_inter, 0, H, group, &L[GM_LIN_UP])) ||
            (st = bind_one(m, p[GM_LIN_DOWN], H, I, 0, H, tp->inter0, tp->n_inter, group, &L[GM_LIN_DOWN])))
            break;
    }
    if (!st)
        st = fp8_unify(lin, cfg->num_layers);
    if (st) {
        gm_linears_free(lin, (int64_t)cfg->num_layers * GM_LIN_COUNT);
        free(lin);
        return st;
    }
    *out = lin;
    return GM_OK;
}

/* ---- FP8 linears ---- */

static float full_amax(const gm_linear *L)
{
    const st_tensor *t = L->dense.full;
    if (t && t->data)
        return cpu_fp8_amax(t->data, t->dtype, (int64_t)(t->nbytes / gm_dtype_size(t->dtype)));
    float m = 0.0f; /* no whole tensor: this slice (tp 1 holds all of it) */
    for (int64_t r = 0; r < L->dense.rows; r++) {
        float a = cpu_fp8_amax((const char *)L->dense.data + (size_t)(r * L->dense.ld) * gm_dtype_size(L->dense.dtype),
                               L->dense.dtype, L->dense.cols);
        m = a > m ? a : m;
    }
    return m;
}

gm_status gm_linears_to_fp8(gm_linear *lin, int32_t n_layers)
{
    const int(*groups)[3] = g_fused;
    for (int32_t l = 0; l < n_layers; l++) {
        gm_linear *L = lin + (int64_t)l * GM_LIN_COUNT;
        for (int g = 0; g < 4; g++) {
            if (L[groups[g][0]].kind == GM_LINEAR_FP8)
                continue; /* an FP8 checkpoint's product (fp8_unify made it whole) */
            float amax = 0.0f;
            for (int j = 0; j < 3 && groups[g][j] >= 0; j++) {
                if (L[groups[g][j]].kind != GM_LINEAR_DENSE)
                    return gm_fail(GM_ERR_UNSUPPORTED, "--quant fp8: layer %d %s is not a dense bf16/f16/f32 weight",
                                   l, gm_linear_names[groups[g][j]]);
                float a = full_amax(&L[groups[g][j]]);
                amax = a > amax ? a : amax;
            }
            float sc = cpu_fp8_scale(amax);
            for (int j = 0; j < 3 && groups[g][j] >= 0; j++) {
                gm_linear *W = &L[groups[g][j]];
                const gm_wview *v = &W->dense;
                uint8_t *q = malloc((size_t)(v->rows * v->cols));
                if (!q)
                    return gm_fail(GM_ERR_NOMEM, "--quant fp8: no memory for layer %d %s (%lld bytes)", l,
                                   gm_linear_names[groups[g][j]], (long long)(v->rows * v->cols));
                size_t es = gm_dtype_size(v->dtype);
                for (int64_t r = 0; r < v->rows; r++)
                    cpu_fp8_quantize((const char *)v->data + (size_t)(r * v->ld) * es, v->dtype, v->cols, sc,
                                     q + r * v->cols);
                W->q8 = q;
                W->w_scale = sc;
                W->kind = GM_LINEAR_FP8;
            }
        }
    }
    return GM_OK;
}

gm_status gm_fp8_kv_scale(const st_model *m, int32_t layer, float *out)
{
    char prefix[96];
    snprintf(prefix, sizeof prefix, "model.layers.%d.self_attn", (int)layer);
    float k = 0.0f, v = 0.0f;
    gm_status st = read_scale(m, prefix, "k_scale", 0, &k);
    if (st || (st = read_scale(m, prefix, "v_scale", 0, &v)))
        return st;
    *out = k > v ? k : v;
    if (*out <= 0.0f)
        *out = 1.0f;
    return GM_OK;
}

void gm_linears_free(gm_linear *lin, int64_t n)
{
    for (int64_t i = 0; lin && i < n; i++) {
        free(lin[i].q8);
        lin[i].q8 = NULL;
    }
}

/* y [T, out] = bf16(fp8(x) . W8^T): x quantized with the dynamic scale of its T rows. */
static gm_status fp8_matmul(const gm_linear *L, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy)
{
    int64_t K = L->in;
    float sc = L->in_scale; /* static, or the dynamic scale of these T rows */
    for (int64_t t = 0; t < T && L->in_scale <= 0.0f; t++) {
        float s = cpu_fp8_act_scale(x + t * ldx, K);
        sc = s > sc ? s : sc;
    }
    uint8_t *xq = malloc((size_t)(T * K) + 1);
    if (!xq)
        return gm_fail(GM_ERR_NOMEM, "fp8 matmul: no memory for %lld x %lld inputs", (long long)T, (long long)K);
    for (int64_t t = 0; t < T; t++)
        cpu_fp8_quantize_act(x + t * ldx, K, sc, xq + t * K);
    int rc = cpu_fp8_matmul_q(xq, T, K, K, sc, L->q8, K, L->out, L->w_scale, y, ldy);
    free(xq);
    if (rc)
        return gm_fail(GM_ERR_NOMEM, "fp8 matmul: no memory");
    return GM_OK;
}

gm_status gm_linear_matmul(const gm_linear *L, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy)
{
    if (L->kind == GM_LINEAR_FP8)
        return fp8_matmul(L, x, T, ldx, y, ldy);
    if (L->kind == GM_LINEAR_DENSE) {
        const gm_wview *v = &L->dense;
        cpu_matmul(x, T, v->cols, ldx, v->data, v->dtype, v->ld, v->rows, y, ldy);
        return GM_OK;
    }
    if (cpu_awq_matmul(x, T, ldx, &L->awq, y, ldy))
        return gm_fail(GM_ERR_NOMEM, "AWQ matmul: no memory for a dequantized tile of %lld inputs",
                       (long long)L->in);
    return GM_OK;
}

gm_status gm_linear_matmul_f64(const gm_linear *L, const float *x, int64_t T, int64_t ldx, double *y, int64_t ldy)
{
    if (L->kind == GM_LINEAR_FP8) {
        float *t = malloc((size_t)(T * L->out) * sizeof(float) + 4);
        if (!t)
            return gm_fail(GM_ERR_NOMEM, "fp8 matmul: no memory for %lld outputs", (long long)(T * L->out));
        gm_status st = fp8_matmul(L, x, T, ldx, t, L->out);
        for (int64_t r = 0; !st && r < T; r++)
            for (int64_t j = 0; j < L->out; j++)
                y[r * ldy + j] = (double)t[r * L->out + j];
        free(t);
        return st;
    }
    if (L->kind == GM_LINEAR_DENSE) {
        const gm_wview *v = &L->dense;
        cpu_matmul_f64(x, T, v->cols, ldx, v->data, v->dtype, v->ld, v->rows, y, ldy);
        return GM_OK;
    }
    if (cpu_awq_matmul_f64(x, T, ldx, &L->awq, y, ldy))
        return gm_fail(GM_ERR_NOMEM, "AWQ matmul: no memory for a dequantized tile of %lld inputs",
                       (long long)L->in);
    return GM_OK;
}

int64_t gm_linear_bytes(const gm_linear *L)
{
    if (L->kind == GM_LINEAR_FP8)
        return L->in * L->out;
    if (L->kind == GM_LINEAR_DENSE)
        return L->in * L->out * (int64_t)gm_dtype_size(L->dense.dtype);
    int64_t G = L->in / L->awq.group;
    return L->in * L->out / 2 + G * L->out / 2 + G * L->out * 2;
}
