/* gemma-quantize - offline weight quantization of a Gemma checkpoint.
 *
 * --awq: activation-aware weight quantization (Lin et al. 2023, arXiv 2306.00978) to
 *   int4 with zero points, written in the AutoAWQ GEMM layout (worker/awq.h).
 *   Calibration activations come from a float32 forward of the model itself
 *   (worker/awq.h gm_ref_layer over kernels/cpu). Layer by layer:
 *   1. run the layer in float32, capturing the inputs of its Linears; its output
 *      is the next layer's input (the float model's activations, as AutoAWQ does);
 *   2. for each scaling group (input_layernorm -> q,k,v judged on the attention
 *      block's output; post_attention_layernorm -> gate,up judged on the MLP's
 *      output; up -> down judged on down's output) search s = mean|x|^alpha over
 *      alpha in {0, 1/n, ..., (n-1)/n}, normalised by sqrt(max s * min s), for the
 *      smallest mean squared block output with the scaled weights int4-quantized;
 *   3. fold s into the norm (Gemma: w' = (1 + w) / s - 1, stored in the checkpoint
 *      dtype; the rounding of w' is absorbed by scaling the weights with
 *      (1 + w) / (1 + w'), so the fold is exact) or into up_proj's rows;
 *   4. per output row and group, search the clip ratio r in {1, .95, .., .55}
 *      minimising the group's output error on the (scaled) calibration inputs
 *      (not for q and k, whose errors the softmax amplifies, as in AutoAWQ);
 *   5. quantize: s = (max - min) / 15 (fp16), zero = -round(min / s), q = round(w / s) + zero.
 * --rtn: the same format by plain round-to-nearest (no calibration), for comparisons.
 * --fp8: FP8 e4m3 weights (tools/quantize_fp8.c).
 *
 * Output: config.json with quantization_config, model.safetensors (embedding and
 * folded norms in the checkpoint's dtype, qweight/qzeros/scales for every decoder
 * Linear) and the tokenizer files. Exit status 0 ok, 1 failure, 2 bad usage. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "quantize_fp8.h"
#include "common/args.h"
#include "common/dtype.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "kernels/cpu/embed.h"
#include "kernels/cpu/gemm_awq.h"
#include "worker/awq.h"
#include "worker/weights.h"

typedef enum q_mode { Q_MODE_NONE = 0, Q_MODE_AWQ, Q_MODE_RTN, Q_MODE_FP8 } q_mode;

typedef struct q_opts {
    q_mode mode;
    const char *model, *calib, *out;
    int64_t group, max_tokens, seq_len, n_grid;
    bool no_clip, quiet;
} q_opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-quantize --awq --model DIR --calib TEXTFILE --out DIR [options]\n"
            "       gemma-quantize --rtn --model DIR --out DIR [--group N]\n"
            "Quantizes a Gemma checkpoint's decoder Linears to int4 with zero points (AutoAWQ GEMM\n"
            "layout: qweight/qzeros/scales, quantization_config in config.json).\n\n"
            "  --awq               activation-aware quantization (scale search, folding, clip search)\n"
            "  --rtn               plain round-to-nearest int4, same format (no calibration)\n"
            "  --fp8               FP8 e4m3 weights, per-tensor scales (static input scales with --calib)\n"
            "  --model DIR         input checkpoint (bf16/f16/f32 safetensors)\n"
            "  --calib FILE        calibration text (--awq)\n"
            "  --out DIR           output directory (created; must not be DIR)\n"
            "  --group N           quantization group along the input dimension (default 128;\n"
            "                      must divide every Linear's in_features, e.g. 32 for the tiny model)\n"
            "  --max-tokens N      calibration tokens used (default 4096)\n"
            "  --seq-len N         tokens per calibration sequence, BOS first (default 512)\n"
            "  --grid N            alpha grid points in [0, 1) (default 20)\n"
            "  --no-clip           skip the clipping search\n"
            "  --quiet             no progress output\n"
            "  --help              this text\n"
            "Options take their value as --opt VALUE or --opt=VALUE.\n");
}

/* 0 ok, 1 --help, 2 bad usage (printed). */
static int parse_args(int argc, char **argv, q_opts *o)
{
    memset(o, 0, sizeof *o);
    o->group = 128, o->max_tokens = 4096, o->seq_len = 512, o->n_grid = 20;
    bool awq = false, rtn = false, fp8 = false;
    args_opt opts[] = {
        {"awq", ARGS_FLAG, &awq},
        {"rtn", ARGS_FLAG, &rtn},
        {"fp8", ARGS_FLAG, &fp8},
        {"model", ARGS_STRING, &o->model},
        {"calib", ARGS_STRING, &o->calib},
        {"out", ARGS_STRING, &o->out},
        {"group", ARGS_INT64, &o->group, 8, 1 << 20},
        {"max-tokens", ARGS_INT64, &o->max_tokens, 2, INT32_MAX},
        {"seq-len", ARGS_INT64, &o->seq_len, 2, 1 << 20},
        {"grid", ARGS_INT64, &o->n_grid, 1, 1000},
        {"no-clip", ARGS_FLAG, &o->no_clip},
        {"quiet", ARGS_FLAG, &o->quiet},
        {NULL},
    };
    args_spec spec = {"gemma-quantize", opts};
    int rc = args_parse(&spec, argc, argv);
    if (rc != ARGS_OK)
        return rc;
    if (awq + rtn + fp8 > 1) {
        fprintf(stderr, "gemma-quantize: give one of --awq, --rtn, --fp8\n");
        return 2;
    }
    o->mode = awq ? Q_MODE_AWQ : rtn ? Q_MODE_RTN : fp8 ? Q_MODE_FP8 : Q_MODE_NONE;
    const char *miss = o->mode == Q_MODE_NONE ? "--awq, --rtn or --fp8"
                       : !o->model            ? "--model"
                       : !o->out              ? "--out"
                       : (o->mode == Q_MODE_AWQ && !o->calib) ? "--calib"
                                                              : NULL;
    if (miss) {
        fprintf(stderr, "gemma-quantize: %s is required (see --help)\n", miss);
        return 2;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- output bookkeeping: tensors for the writer and the buffers they borrow ---- */

typedef struct q_out {
    st_writer *w;
    void **bufs;
    int32_t nbufs, cap;
} q_out;

/* Keep p (malloc'd) until the file is written; NULL p means allocation failed. */
static void *q_keep(q_out *o, void *p)
{
    if (!p)
        return NULL;
    if (o->nbufs == o->cap) {
        int32_t nc = o->cap ? 2 * o->cap : 64;
        void **nb = realloc(o->bufs, (size_t)nc * sizeof *nb);
        if (!nb) {
            free(p);
            return NULL;
        }
        o->bufs = nb, o->cap = nc;
    }
    o->bufs[o->nbufs++] = p;
    return p;
}

static void q_out_free(q_out *o)
{
    for (int32_t i = 0; i < o->nbufs; i++)
        free(o->bufs[i]);
    free(o->bufs);
    st_writer_destroy(&o->w);
    memset(o, 0, sizeof *o);
}

static gm_status q_add(q_out *o, const char *name, gm_dtype dt, int64_t d0, int64_t d1, const void *data)
{
    int64_t shape[2] = {d0, d1};
    if (st_writer_add(o->w, name, dt, d1 > 0 ? 2 : 1, shape, data) < 0)
        return gm_fail(GM_ERR_INTERNAL, "writer: %s: %s", name, gm_last_error());
    return GM_OK;
}

/* ---- files beside the weights ---- */

static char *q_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0, r;
    do {
        if (n + 65536 + 1 > cap) {
            cap = cap ? 2 * cap : 1 << 17;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf), fclose(f);
                return NULL;
            }
            buf = nb;
        }
        r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
    } while (r > 0);
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Copy config.json, adding `quantization_config` = qc (ownership taken). */
static gm_status q_write_config(const char *in, const char *out, cJSON *qc)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", in);
    size_t len = 0;
    char *text = q_slurp(path, &len);
    if (!text) {
        cJSON_Delete(qc);
        return gm_fail(GM_ERR_IO, "%s: cannot read", path);
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root), cJSON_Delete(qc);
        return gm_fail(GM_ERR_FORMAT, "%s: not a JSON object", path);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    cJSON_AddItemToObject(root, "quantization_config", qc);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    if (!s)
        return gm_fail(GM_ERR_NOMEM, "config.json: no memory");
    snprintf(path, sizeof path, "%s/config.json", out);
    FILE *f = fopen(path, "wb");
    gm_status st = GM_OK;
    if (!f) {
        st = gm_fail(GM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        if (fputs(s, f) == EOF || fputc('\n', f) == EOF)
            st = gm_fail(GM_ERR_IO, "%s: write failed", path);
        if (fclose(f) != 0 && !st)
            st = gm_fail(GM_ERR_IO, "%s: write failed", path);
    }
    free(s);
    return st;
}

static cJSON *q_awq_config(int64_t group)
{
    cJSON *q = cJSON_CreateObject();
    if (!q)
        return NULL;
    cJSON_AddStringToObject(q, "quant_method", "awq");
    cJSON_AddBoolToObject(q, "zero_point", 1);
    cJSON_AddNumberToObject(q, "group_size", (double)group);
    cJSON_AddNumberToObject(q, "bits", 4);
    cJSON_AddStringToObject(q, "version", "gemm");
    cJSON_AddNullToObject(q, "modules_to_not_convert");
    return q;
}

/* ---- the model in float32, one layer at a time ---- */

typedef struct q_ctx {
    const q_opts *o;
    gm_model_config cfg;
    st_model *model;
    gm_weights w;
    int64_t n_seq, S, T; /* calibration: n_seq sequences of S tokens */
    float *h;            /* [T, hidden] residual stream entering the current layer */
    q_out out;
} q_ctx;

/* Float32 copy [rows, cols] of a view. Caller frees. */
static float *q_f32(const gm_wview *v)
{
    float *f = malloc((size_t)(v->rows * v->cols) * sizeof(float));
    if (!f)
        return NULL;
    for (int64_t r = 0; r < v->rows; r++)
        gm_to_f32(v->dtype, (const char *)v->data + (size_t)(r * v->ld) * gm_dtype_size(v->dtype), f + r * v->cols,
                  v->cols);
    return f;
}

static gm_linear q_lin_f32(const float *W, int64_t N, int64_t K)
{
    gm_wview v;
    memset(&v, 0, sizeof v);
    v.data = W, v.dtype = GM_DT_F32, v.rows = N, v.cols = K, v.ld = K;
    return gm_linear_dense(&v);
}

static double q_mse(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return s / (double)(n > 0 ? n : 1);
}

/* One layer's weights in float32 and the state of its quantization. */
typedef struct q_layer {
    int32_t l;
    float *W[GM_LIN_COUNT];     /* [N, K] nn.Linear layout, scaled in place */
    int64_t N[GM_LIN_COUNT], K[GM_LIN_COUNT];
    float *nw[2];               /* input / post norm weights w (not 1 + w), folded in place */
    gm_dtype ndt[2];            /* their checkpoint dtype */
    gm_linear fp[GM_LIN_COUNT]; /* dense f32 linears over W */
} q_layer;

static void q_layer_free(q_layer *L)
{
    for (int i = 0; i < GM_LIN_COUNT; i++)
        free(L->W[i]);
    free(L->nw[0]), free(L->nw[1]);
    memset(L, 0, sizeof *L);
}

static gm_status q_layer_load(q_ctx *c, int32_t l, q_layer *L)
{
    memset(L, 0, sizeof *L);
    L->l = l;
    const gm_layer_weights *lw = &c->w.layers[l];
    const gm_wview *v[GM_LIN_COUNT] = {&lw->q, &lw->k, &lw->v, &lw->o, &lw->gate, &lw->up, &lw->down};
    for (int i = 0; i < GM_LIN_COUNT; i++) {
        L->W[i] = q_f32(v[i]);
        L->N[i] = v[i]->rows, L->K[i] = v[i]->cols;
        if (!L->W[i])
            goto nomem;
        L->fp[i] = q_lin_f32(L->W[i], L->N[i], L->K[i]);
    }
    L->nw[0] = q_f32(&lw->input_norm), L->ndt[0] = lw->input_norm.dtype;
    L->nw[1] = q_f32(&lw->post_norm), L->ndt[1] = lw->post_norm.dtype;
    if (!L->nw[0] || !L->nw[1])
        goto nomem;
    return GM_OK;
nomem:
    q_layer_free(L);
    return gm_fail(GM_ERR_NOMEM, "layer %d: no memory for a float32 copy of its weights", (int)l);
}

/* Round v to dtype dt and back. */
static float q_round_dt(float v, gm_dtype dt)
{
    if (dt == GM_DT_BF16)
        return gm_round_bf16(v);
    if (dt == GM_DT_F16)
        return gm_f16_to_f32(gm_f32_to_f16(v));
    return v;
}

/* Fold scale s [C] into a Gemma norm weight nw [C] (dtype dt): nw' = (1 + nw) / s - 1 rounded
 * to dt, and s replaced by the exact effective (1 + nw) / (1 + nw') (1 where folding would
 * kill or flip a channel). nw_out [C] receives nw'. */
static void q_fold_norm(const float *nw, gm_dtype dt, int64_t C, float *s, float *nw_out)
{
    for (int64_t c = 0; c < C; c++) {
        float one = 1.0f + nw[c];
        if (s[c] == 1.0f || one == 0.0f) {
            s[c] = 1.0f, nw_out[c] = nw[c];
            continue;
        }
        float w2 = q_round_dt(one / s[c] - 1.0f, dt), one2 = 1.0f + w2;
        if (one2 == 0.0f || (one2 > 0.0f) != (one > 0.0f) || !isfinite(one / one2)) {
            s[c] = 1.0f, nw_out[c] = nw[c];
            continue;
        }
        s[c] = one / one2, nw_out[c] = w2;
    }
}

/* out [N, K] = fake-quantized (W * s) / s (s per input column; NULL = 1). */
static gm_status q_fake(const float *W, int64_t N, int64_t K, const float *s, int64_t group, const float *ratio,
                        float *out)
{
    if (!s) {
        cpu_awq_fake_quant(W, N, K, K, group, ratio, out);
        return GM_OK;
    }
    float *t = malloc((size_t)(N * K) * sizeof(float));
    if (!t)
        return gm_fail(GM_ERR_NOMEM, "no memory for a [%lld, %lld] weight", (long long)N, (long long)K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            t[n * K + k] = W[n * K + k] * s[k];
    cpu_awq_fake_quant(t, N, K, K, group, ratio, out);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            out[n * K + k] /= s[k];
    free(t);
    return GM_OK;
}

enum { Q_BLK_ATTN = 0, Q_BLK_MLP, Q_BLK_DOWN };
static const char *const q_blk_name[3] = {"qkv", "gate/up", "down"};

/* The block's output for linears lin. x is its input ([T, hidden], or [T, inter] for down). */
static gm_status q_block(const q_ctx *c, int blk, const gm_linear *lin, const float *x, float *out)
{
    if (blk == Q_BLK_ATTN)
        return gm_ref_attn(&c->cfg, lin, x, c->n_seq, c->S, out, NULL);
    if (blk == Q_BLK_MLP)
        return gm_ref_mlp(&c->cfg, lin, x, c->T, out, NULL);
    return gm_linear_matmul(&lin[GM_LIN_DOWN], x, c->T, c->cfg.intermediate_size, out, c->cfg.hidden_size);
}

/* The AWQ scale search of one group. x [T, C] the Linears' input; members: which Linears take
 * it; norm: 0/1 the norm it is folded into, -1 for up_proj. s_best [C] out (effective scales),
 * nw_best [C] out when norm >= 0 (folded norm). *alpha, *err_awq, *err_rtn: the chosen alpha
 * and the block's mean squared output error with it and with alpha = 0 (round-to-nearest). */
static gm_status q_search(const q_ctx *c, const q_layer *L, int blk, const float *x, const int *members,
                          int n_members, int norm, float *s_best, float *nw_best, double *alpha, double *err_awq,
                          double *err_rtn)
{
    int64_t C = L->K[members[0]], T = c->T, H = c->cfg.hidden_size, G = c->o->group;
    gm_status st = GM_OK;
    float *xm = calloc((size_t)C, sizeof(float)), *s = malloc((size_t)C * sizeof(float));
    float *nw2 = malloc((size_t)C * sizeof(float));
    float *ref = malloc((size_t)(T * H) * sizeof(float)), *cur = malloc((size_t)(T * H) * sizeof(float));
    float *cand[GM_LIN_COUNT] = {0};
    gm_linear lin[GM_LIN_COUNT];
    memcpy(lin, L->fp, sizeof lin);
    if (!xm || !s || !nw2 || !ref || !cur)
        goto nomem;
    for (int i = 0; i < n_members; i++) {
        int j = members[i];
        if (!(cand[j] = malloc((size_t)(L->N[j] * L->K[j]) * sizeof(float))))
            goto nomem;
        lin[j] = q_lin_f32(cand[j], L->N[j], L->K[j]);
    }
    double *acc = calloc((size_t)C, sizeof(double));
    if (!acc)
        goto nomem;
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < C; k++)
            acc[k] += fabs((double)x[t * C + k]);
    for (int64_t k = 0; k < C; k++)
        xm[k] = (float)(acc[k] / (double)T);
    free(acc);
    if ((st = q_block(c, blk, L->fp, x, ref)))
        goto done;

    double best = INFINITY;
    for (int64_t gi = 0; gi < c->o->n_grid; gi++) {
        float a = (float)gi / (float)c->o->n_grid;
        float mx = 0.0f, mn = INFINITY;
        for (int64_t k = 0; k < C; k++) {
            s[k] = gi == 0 ? 1.0f : powf(xm[k], a);
            s[k] = s[k] < 1e-4f ? 1e-4f : s[k];
            mx = s[k] > mx ? s[k] : mx;
            mn = s[k] < mn ? s[k] : mn;
        }
        float norm_by = sqrtf(mx * mn);
        if (gi > 0 && norm_by > 0.0f && isfinite(norm_by))
            for (int64_t k = 0; k < C; k++)
                s[k] /= norm_by;
        if (norm >= 0)
            q_fold_norm(L->nw[norm], L->ndt[norm], C, s, nw2);
        for (int i = 0; i < n_members; i++) {
            int j = members[i];
            if ((st = q_fake(L->W[j], L->N[j], L->K[j], gi == 0 ? NULL : s, G, NULL, cand[j])))
                goto done;
        }
        if ((st = q_block(c, blk, lin, x, cur)))
            goto done;
        double err = q_mse(cur, ref, T * H);
        if (gi == 0)
            *err_rtn = err;
        if (err < best) {
            best = err;
            *alpha = a;
            memcpy(s_best, s, (size_t)C * sizeof(float));
            if (norm >= 0)
                memcpy(nw_best, gi == 0 ? L->nw[norm] : nw2, (size_t)C * sizeof(float));
        }
    }
    *err_awq = best;
    goto done;
nomem:
    st = gm_fail(GM_ERR_NOMEM, "layer %d: no memory for the %s scale search", (int)L->l, q_blk_name[blk]);
done:
    free(xm), free(s), free(nw2), free(ref), free(cur);
    for (int i = 0; i < GM_LIN_COUNT; i++)
        free(cand[i]);
    return st;
}

/* Clip ratios [N, K/group] of Linear j for inputs x [T, K] (NULL when --no-clip: all 1). */
static gm_status q_clip(const q_ctx *c, const q_layer *L, int j, const float *x, float **ratio)
{
    *ratio = NULL;
    if (c->o->no_clip || !x)
        return GM_OK;
    int64_t K = L->K[j], N = L->N[j], g = c->o->group;
    double *gram = malloc((size_t)(K * g) * sizeof(double));
    float *r = malloc((size_t)(N * (K / g)) * sizeof(float));
    if (!gram || !r) {
        free(gram), free(r);
        return gm_fail(GM_ERR_NOMEM, "layer %d: no memory for the clip search of %s", (int)L->l,
                       gm_linear_names[j]);
    }
    cpu_awq_gram(x, c->T, K, K, g, gram);
    cpu_awq_search_clip(L->W[j], N, K, K, g, gram, r);
    free(gram);
    *ratio = r;
    return GM_OK;
}

/* Quantize Linear j of L (its scaled weights) with ratio and add it to the output. */
static gm_status q_emit_linear(q_ctx *c, const q_layer *L, int j, const float *ratio, gm_linear *packed)
{
    int64_t N = L->N[j], K = L->K[j], g = c->o->group, G = K / g;
    int32_t *qw = q_keep(&c->out, malloc((size_t)(K * N / 8) * sizeof(int32_t)));
    int32_t *qz = q_keep(&c->out, malloc((size_t)(G * N / 8) * sizeof(int32_t)));
    uint16_t *sc = q_keep(&c->out, malloc((size_t)(G * N) * sizeof(uint16_t)));
    if (!qw || !qz || !sc)
        return gm_fail(GM_ERR_NOMEM, "layer %d: no memory for packed %s", (int)L->l, gm_linear_names[j]);
    cpu_awq_quantize(L->W[j], N, K, K, g, ratio, qw, qz, sc);
    char name[192];
    gm_status st;
    snprintf(name, sizeof name, "model.layers.%d.%s.qweight", (int)L->l, gm_linear_names[j]);
    if ((st = q_add(&c->out, name, GM_DT_I32, K, N / 8, qw)))
        return st;
    snprintf(name, sizeof name, "model.layers.%d.%s.qzeros", (int)L->l, gm_linear_names[j]);
    if ((st = q_add(&c->out, name, GM_DT_I32, G, N / 8, qz)))
        return st;
    snprintf(name, sizeof name, "model.layers.%d.%s.scales", (int)L->l, gm_linear_names[j]);
    if ((st = q_add(&c->out, name, GM_DT_F16, G, N, sc)))
        return st;
    memset(packed, 0, sizeof *packed);
    packed->kind = GM_LINEAR_AWQ;
    packed->in = K, packed->out = N;
    packed->awq = (cpu_awq_w){qw, qz, sc, K, N, N / 8, N, g};
    return GM_OK;
}

/* A norm weight [C] (float values) in dtype dt, kept for the writer. */
static gm_status q_emit_norm(q_ctx *c, const char *name, const float *w, int64_t C, gm_dtype dt)
{
    void *p = q_keep(&c->out, malloc((size_t)C * gm_dtype_size(dt)));
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "%s: no memory", name);
    for (int64_t i = 0; i < C; i++) {
        if (dt == GM_DT_BF16)
            ((uint16_t *)p)[i] = gm_f32_to_bf16(w[i]);
        else if (dt == GM_DT_F16)
            ((uint16_t *)p)[i] = gm_f32_to_f16(w[i]);
        else
            ((float *)p)[i] = w[i];
    }
    return q_add(&c->out, name, dt, C, 0, p);
}

/* Relative error of a layer's residual update: |d_q - d_fp| / |d_fp| with d = layer(h) - h. */
static gm_status q_layer_err(const q_ctx *c, const gm_ref_norms *nq, const gm_linear *lq, const float *h_in,
                             const float *h_out, double *rel)
{
    int64_t n = c->T * c->cfg.hidden_size;
    float *h = malloc((size_t)n * sizeof(float));
    if (!h)
        return gm_fail(GM_ERR_NOMEM, "no memory for the layer error");
    memcpy(h, h_in, (size_t)n * sizeof(float));
    gm_status st = gm_ref_layer(&c->cfg, nq, lq, h, c->n_seq, c->S, NULL);
    if (!st) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) {
            double d = (double)h[i] - (double)h_out[i], u = (double)h_out[i] - (double)h_in[i];
            num += d * d, den += u * u;
        }
        *rel = den > 0 ? sqrt(num / den) : sqrt(num);
    }
    free(h);
    return st;
}

/* Quantize one layer: capture, search, fold, clip, pack; advance c->h to the next layer's input. */
static gm_status q_do_layer(q_ctx *c, int32_t l)
{
    const gm_model_config *m = &c->cfg;
    int64_t T = c->T, H = m->hidden_size, I = m->intermediate_size, QW = (int64_t)m->num_heads * m->head_dim;
    bool awq = c->o->mode == Q_MODE_AWQ;
    double t0 = now_s();
    q_layer L;
    gm_status st = q_layer_load(c, l, &L);
    if (st)
        return st;
    float *h_in = NULL, *x_attn = NULL, *att = NULL, *x_mlp = NULL, *act = NULL;
    float *s[3] = {0}, *nwf[2] = {0};
    float *ratio[GM_LIN_COUNT] = {0};
    gm_linear packed[GM_LIN_COUNT];
    double alpha[3] = {0}, ea[3] = {0}, er[3] = {0};
    if (awq) {
        h_in = malloc((size_t)(T * H) * sizeof(float));
        x_attn = malloc((size_t)(T * H) * sizeof(float));
        att = malloc((size_t)(T * QW) * sizeof(float));
        x_mlp = malloc((size_t)(T * H) * sizeof(float));
        act = malloc((size_t)(T * I) * sizeof(float));
        s[0] = malloc((size_t)H * sizeof(float)), s[1] = malloc((size_t)H * sizeof(float));
        s[2] = malloc((size_t)I * sizeof(float));
        nwf[0] = malloc((size_t)H * sizeof(float)), nwf[1] = malloc((size_t)H * sizeof(float));
        if (!h_in || !x_attn || !att || !x_mlp || !act || !s[0] || !s[1] || !s[2] || !nwf[0] || !nwf[1]) {
            st = gm_fail(GM_ERR_NOMEM, "layer %d: no memory for %lld calibration tokens", (int)l, (long long)T);
            goto done;
        }
        /* 1. float forward with capture; c->h becomes the next layer's input */
        memcpy(h_in, c->h, (size_t)(T * H) * sizeof(float));
        gm_ref_norms nf = {c->w.layers[l].input_norm.data, c->w.layers[l].post_norm.data,
                           c->w.layers[l].input_norm.dtype, c->w.layers[l].post_norm.dtype};
        gm_ref_capture cap = {x_attn, att, x_mlp, act};
        if ((st = gm_ref_layer(m, &nf, L.fp, c->h, c->n_seq, c->S, &cap)))
            goto done;
        /* 2. scale searches (each against the float weights) */
        static const int m_attn[3] = {GM_LIN_Q, GM_LIN_K, GM_LIN_V}, m_mlp[2] = {GM_LIN_GATE, GM_LIN_UP},
                         m_down[1] = {GM_LIN_DOWN};
        if ((st = q_search(c, &L, Q_BLK_ATTN, x_attn, m_attn, 3, 0, s[0], nwf[0], &alpha[0], &ea[0], &er[0])) ||
            (st = q_search(c, &L, Q_BLK_MLP, x_mlp, m_mlp, 2, 1, s[1], nwf[1], &alpha[1], &ea[1], &er[1])) ||
            (st = q_search(c, &L, Q_BLK_DOWN, act, m_down, 1, -1, s[2], NULL, &alpha[2], &ea[2], &er[2])))
            goto done;
        /* 3. apply: weights' input columns times s, norms folded, up's rows divided by s[2];
         *    the captured inputs divided by s (what the scaled model feeds those Linears) */
        static const int cols_of[GM_LIN_COUNT] = {0, 0, 0, -1, 1, 1, 2}; /* which s scales a Linear's inputs */
        for (int j = 0; j < GM_LIN_COUNT; j++) {
            if (cols_of[j] < 0)
                continue;
            const float *sj = s[cols_of[j]];
            for (int64_t n = 0; n < L.N[j]; n++)
                for (int64_t k = 0; k < L.K[j]; k++)
                    L.W[j][n * L.K[j] + k] *= sj[k];
        }
        for (int64_t n = 0; n < I; n++)
            for (int64_t k = 0; k < H; k++)
                L.W[GM_LIN_UP][n * H + k] /= s[2][n];
        memcpy(L.nw[0], nwf[0], (size_t)H * sizeof(float));
        memcpy(L.nw[1], nwf[1], (size_t)H * sizeof(float));
        for (int64_t t = 0; t < T; t++) {
            for (int64_t k = 0; k < H; k++) {
                x_attn[t * H + k] /= s[0][k];
                x_mlp[t * H + k] /= s[1][k];
            }
            for (int64_t k = 0; k < I; k++)
                act[t * I + k] /= s[2][k];
        }
        /* 4. clip search (not q, k) */
        const float *clip_in[GM_LIN_COUNT] = {NULL, NULL, x_attn, att, x_mlp, x_mlp, act};
        for (int j = 0; j < GM_LIN_COUNT; j++)
            if ((st = q_clip(c, &L, j, clip_in[j], &ratio[j])))
                goto done;
    }
    /* 5. pack and emit */
    char name[128];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", (int)l);
    if ((st = q_emit_norm(c, name, L.nw[0], H, L.ndt[0])))
        goto done;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", (int)l);
    if ((st = q_emit_norm(c, name, L.nw[1], H, L.ndt[1])))
        goto done;
    for (int j = 0; j < GM_LIN_COUNT; j++)
        if ((st = q_emit_linear(c, &L, j, ratio[j], &packed[j])))
            goto done;
    if (awq) {
        /* progress: the layer's residual-update error with these weights vs the float layer */
        double rel = 0;
        gm_ref_norms nq = {L.nw[0], L.nw[1], GM_DT_F32, GM_DT_F32};
        for (int k = 0; k < 2; k++) /* the norms as the file will hold them */
            for (int64_t i = 0; i < H; i++)
                L.nw[k][i] = q_round_dt(L.nw[k][i], L.ndt[k]);
        if ((st = q_layer_err(c, &nq, packed, h_in, c->h, &rel)))
            goto done;
        if (!c->o->quiet)
            fprintf(stderr,
                    "gemma-quantize: layer %d/%d: alpha qkv %.2f gate/up %.2f down %.2f; block mse awq/rtn "
                    "%.3g/%.3g %.3g/%.3g %.3g/%.3g; layer rel err %.4f (%.1f s)\n",
                    (int)l + 1, m->num_layers, alpha[0], alpha[1], alpha[2], ea[0], er[0], ea[1], er[1], ea[2],
                    er[2], rel, now_s() - t0);
    } else if (!c->o->quiet) {
        fprintf(stderr, "gemma-quantize: layer %d/%d quantized (round-to-nearest)\n", (int)l + 1, m->num_layers);
    }
done:
    free(h_in), free(x_attn), free(att), free(x_mlp), free(act);
    for (int i = 0; i < 3; i++)
        free(s[i]);
    free(nwf[0]), free(nwf[1]);
    for (int j = 0; j < GM_LIN_COUNT; j++)
        free(ratio[j]);
    q_layer_free(&L);
    return st;
}

/* Tokenize the calibration text into n_seq sequences of S tokens (BOS first) and embed them. */
static gm_status q_calib(q_ctx *c)
{
    const q_opts *o = c->o;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", o->model);
    gm_tokenizer *tok = NULL;
    gm_status st = gm_tok_load(path, &tok);
    if (st)
        return st;
    size_t len = 0;
    char *text = q_slurp(o->calib, &len);
    if (!text) {
        gm_tok_destroy(&tok);
        return gm_fail(GM_ERR_IO, "%s: cannot read the calibration text: %s", o->calib, strerror(errno));
    }
    int32_t *ids = NULL, n = 0;
    st = gm_tok_encode(tok, text, len, false, &ids, &n);
    free(text);
    gm_tok_destroy(&tok);
    if (st)
        return st;
    if (n < 1) {
        free(ids);
        return gm_fail(GM_ERR_INVALID_ARG, "%s: the calibration text has no tokens", o->calib);
    }
    int64_t S = o->seq_len;
    if (S > c->cfg.max_position)
        S = c->cfg.max_position;
    if (S > o->max_tokens)
        S = o->max_tokens;
    int64_t n_seq = o->max_tokens / S;
    if (n_seq > n / (S - 1))
        n_seq = n / (S - 1);
    if (n_seq < 1) { /* shorter than one sequence: one sequence of all of it */
        n_seq = 1;
        S = n + 1;
    }
    c->n_seq = n_seq, c->S = S, c->T = n_seq * S;
    int32_t *seq = malloc((size_t)c->T * sizeof(int32_t));
    c->h = malloc((size_t)(c->T * c->cfg.hidden_size) * sizeof(float));
    if (!seq || !c->h) {
        free(ids), free(seq);
        return gm_fail(GM_ERR_NOMEM, "no memory for %lld calibration tokens", (long long)c->T);
    }
    for (int64_t i = 0; i < n_seq; i++) {
        seq[i * S] = c->cfg.bos_id;
        memcpy(seq + i * S + 1, ids + i * (S - 1), (size_t)(S - 1) * sizeof(int32_t));
    }
    free(ids);
    for (int64_t i = 0; i < c->T; i++)
        if (seq[i] < 0 || seq[i] >= c->cfg.vocab_size) {
            st = gm_fail(GM_ERR_FORMAT, "token id %d is outside the model's vocabulary %d", seq[i],
                         c->cfg.vocab_size);
            free(seq);
            return st;
        }
    cpu_embed(c->w.embed.data, c->w.embed.dtype, c->cfg.hidden_size, seq, c->T, gm_config_normalizer(&c->cfg),
              c->h);
    free(seq);
    if (!o->quiet)
        fprintf(stderr, "gemma-quantize: calibration: %lld sequences of %lld tokens from %s (%d tokens)\n",
                (long long)n_seq, (long long)S, o->calib, n);
    return GM_OK;
}

/* --awq / --rtn: the whole run. */
static gm_status q_run_int4(const q_opts *o)
{
    q_ctx c;
    memset(&c, 0, sizeof c);
    c.o = o;
    gm_status st;
    double t0 = now_s();
    if ((st = gm_config_load_dir(o->model, &c.cfg)))
        return st;
    const gm_model_config *m = &c.cfg;
    if (m->family != GM_FAMILY_GEMMA1) /* the calibration forward below is Gemma 1's */
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: int4 quantization (--awq, --rtn) supports Gemma 1 only (this is Gemma %d); "
                       "--fp8 without --calib works for every family", o->model, (int)m->family);
    int64_t qw = (int64_t)m->num_heads * m->head_dim, kvw = (int64_t)m->num_kv_heads * m->head_dim;
    int64_t Ks[3] = {m->hidden_size, qw, m->intermediate_size}, Ns[4] = {qw, kvw, m->hidden_size,
                                                                         m->intermediate_size};
    for (int i = 0; i < 3; i++)
        if (Ks[i] % o->group != 0)
            return gm_fail(GM_ERR_INVALID_ARG, "--group %lld does not divide in_features %lld of this model",
                           (long long)o->group, (long long)Ks[i]);
    for (int i = 0; i < 4; i++)
        if (Ns[i] % 8 != 0)
            return gm_fail(GM_ERR_UNSUPPORTED, "out_features %lld is not a multiple of 8 (AWQ packing)",
                           (long long)Ns[i]);
    gm_quant_config qc;
    if ((st = gm_quant_config_load(o->model, &qc)))
        return st;
    if (qc.present)
        return gm_fail(GM_ERR_INVALID_ARG, "%s is already quantized (%s); give an unquantized checkpoint", o->model,
                       qc.method);
    if ((st = st_model_open(o->model, &c.model)))
        return st;
    if ((st = gm_weights_bind(c.model, m, 0, 1, &c.w)))
        goto done;
    if (!(c.out.w = st_writer_new())) {
        st = gm_fail(GM_ERR_NOMEM, "no memory for the writer");
        goto done;
    }
    st_writer_meta(c.out.w, "format", "pt");
    st_writer_meta(c.out.w, "quantized_by", o->mode == Q_MODE_AWQ ? "gemma-quantize --awq" : "gemma-quantize --rtn");
    if (o->mode == Q_MODE_AWQ && (st = q_calib(&c)))
        goto done;
    if ((st = q_add(&c.out, "model.embed_tokens.weight", c.w.embed.dtype, m->vocab_size, m->hidden_size,
                    c.w.embed.data)))
        goto done;
    for (int32_t l = 0; l < m->num_layers; l++)
        if ((st = q_do_layer(&c, l)))
            goto done;
    if ((st = q_add(&c.out, "model.norm.weight", c.w.final_norm.dtype, m->hidden_size, 0, c.w.final_norm.data)))
        goto done;
    if ((st = gm_mkdirs(o->out)))
        goto done;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    if (!o->quiet)
        fprintf(stderr, "gemma-quantize: writing %s (%.1f MB)\n", path, (double)st_writer_bytes(c.out.w) / 1e6);
    if ((st = st_writer_write(c.out.w, path, NULL, NULL)))
        goto done;
    if ((st = q_write_config(o->model, o->out, q_awq_config(o->group))) || (st = gm_copy_checkpoint_aux(o->model, o->out)))
        goto done;
    if (!o->quiet)
        fprintf(stderr, "gemma-quantize: done in %.1f s: %s\n", now_s() - t0, o->out);
done:
    q_out_free(&c.out);
    free(c.h);
    gm_weights_release(&c.w);
    st_model_destroy(&c.model);
    return st;
}

/* Refuse to write over the input checkpoint. */
static gm_status q_check_dirs(const q_opts *o)
{
    struct stat a, b;
    if (stat(o->model, &a) != 0 || !S_ISDIR(a.st_mode))
        return gm_fail(GM_ERR_IO, "--model %s: not a directory", o->model);
    if (stat(o->out, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return gm_fail(GM_ERR_INVALID_ARG, "--out %s is the input directory", o->out);
    return GM_OK;
}

int main(int argc, char **argv)
{
    gm_log_init("gemma-quantize", GM_LOG_INFO);
    q_opts o;
    int r = parse_args(argc, argv, &o);
    if (r == 1) {
        usage(stdout);
        return 0;
    }
    if (r)
        return 2;
    gm_status st = q_check_dirs(&o);
    if (!st) {
        switch (o.mode) {
        case Q_MODE_AWQ:
        case Q_MODE_RTN:
            st = q_run_int4(&o);
            break;
        case Q_MODE_FP8: /* static activation scales with --calib, dynamic without */
            st = gm_quantize_fp8(o.model, o.out, o.calib);
            break;
        default:
            st = gm_fail(GM_ERR_INTERNAL, "no mode");
            break;
        }
    }
    if (st) {
        fprintf(stderr, "gemma-quantize: %s: %s\n", gm_status_str(st), gm_last_error());
        return 1;
    }
    return 0;
}
