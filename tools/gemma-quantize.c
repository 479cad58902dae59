/* gemma-quantize - offline weight quantization of a Gemma checkpoint.
 *
 * --awq: activation-aware weight quantization (Lin et al. 2023, arXiv 2306.00978) to
 *   int4 with zero points, written in the AutoAWQ GEMM layout (worker/awq.h).
 *   Calibration activations come from the float model run by the CPU engine itself
 *   (worker/engine_cpu.h: the same forward that serves it, for Gemma 1, 2 and 3). Layer by layer:
 *   1. run the layer, its Linears' inputs tapped; its output is the next layer's
 *      input (the float model's activations, as AutoAWQ does);
 *   2. for each scaling group (input_layernorm -> q,k,v judged on the attention
 *      block's output (o_proj's, before any sandwich norm); the pre-MLP norm
 *      (Gemma 1: post_attention_layernorm; Gemma 2/3: pre_feedforward_layernorm) ->
 *      gate,up judged on the MLP's output; up -> down judged on down's output),
 *      the blocks re-run by the engine with candidate weights, search s = mean|x|^alpha over
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
 * --model is a safetensors directory or a GGUF (a .gguf file or a directory holding one),
 * dequantized at load. Output: config.json with quantization_config (a GGUF's built from its
 * metadata), model.safetensors (folded norms in the checkpoint's dtype, qweight/qzeros/scales for
 * every decoder Linear, every other tensor as loaded) and the tokenizer (a GGUF's serialized from
 * its vocabulary as tokenizer.model). Exit status 0 ok, 1 failure, 2 bad usage. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/clock.h"
#include "quantize_fp8.h"
#include "common/args.h"
#include "common/ckpt_meta.h"
#include "common/dtype.h"
#include "common/fsutil.h"
#include "common/gguf_model.h"
#include "common/log.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "kernels/cpu/gemm_awq.h"
#include "worker/awq.h"
#include "worker/engine_cpu.h"
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
            "usage: gemma-quantize --awq --model PATH --calib TEXTFILE --out DIR [options]\n"
            "       gemma-quantize --rtn --model PATH --out DIR [--group N]\n"
            "       gemma-quantize --fp8 --model PATH --out DIR [--calib TEXTFILE]\n"
            "Quantizes a Gemma checkpoint's decoder Linears to int4 with zero points (AutoAWQ GEMM\n"
            "layout: qweight/qzeros/scales, quantization_config in config.json).\n\n"
            "  --awq               activation-aware quantization (scale search, folding, clip search)\n"
            "  --rtn               plain round-to-nearest int4, same format (no calibration)\n"
            "  --fp8               FP8 e4m3 weights, per-tensor scales (static input scales with --calib)\n"
            "  --model PATH        input checkpoint: bf16/f16/f32 safetensors directory, or a Gemma\n"
            "                      .gguf file (or a directory holding one), dequantized at load\n"
            "  --calib FILE        calibration text (--awq)\n"
            "  --out DIR           output directory (created; not the input nor the .gguf's directory)\n"
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

/* ---- the quantization config ---- */

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
    gm_checkpoint *ck;      /* config and tokenizer; the weights too for --rtn */
    gm_engine *eng;         /* --awq: the CPU engine over the checkpoint, the float model's forward */
    gm_model_config cfg;    /* w.cfg: the tensor prefix settled */
    gm_weights w;
    int64_t n_seq, S, T;    /* calibration: n_seq sequences of S tokens */
    int32_t *tok, *bt;      /* [T] their ids, [n_seq * nb] their KV blocks */
    gm_seq_step *seqs;      /* [n_seq] */
    float *h;               /* [T, hidden] residual stream entering the current layer */
    float *cap[GM_TAP_COUNT]; /* the current layer's tapped Linear inputs (QKV_IN, O_IN, GU_IN, DOWN_IN) */
    int32_t cap_layer;
    const st_tensor **done; /* tensors the output replaces (packed Linears, folded norms) */
    int32_t n_done;
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
    float *nw[2];               /* the norms before q|k|v and gate|up: weights w (not 1 + w), folded in place */
    gm_dtype ndt[2];            /* their checkpoint dtype */
    const st_tensor *nt[2];     /* their tensors: input_layernorm; post_attention_layernorm (Gemma 1) or
                                   pre_feedforward_layernorm (Gemma 2/3) */
    const st_tensor *wt[GM_LIN_COUNT]; /* the Linears' weight tensors */
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
        L->wt[i] = v[i]->full;
    }
    const gm_wview *nv[2] = {&lw->input_norm, c->cfg.sandwich_norm ? &lw->pre_ffw_norm : &lw->post_norm};
    for (int k = 0; k < 2; k++)
        L->nw[k] = q_f32(nv[k]), L->ndt[k] = nv[k]->dtype, L->nt[k] = nv[k]->full;
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

/* The block's output for linears lin of layer l: the CPU engine's attention or MLP block (before any
 * sandwich norm), or down_proj alone. x is its input ([T, hidden], or [T, inter] for down). */
static gm_status q_block(const q_ctx *c, int32_t l, int blk, const gm_linear *lin, const float *x, float *out)
{
    if (blk == Q_BLK_DOWN)
        return gm_linear_matmul(&lin[GM_LIN_DOWN], x, c->T, c->cfg.intermediate_size, out, c->cfg.hidden_size);
    return gm_engine_cpu_block(c->eng, l, blk == Q_BLK_ATTN ? GM_CPU_BLOCK_ATTN : GM_CPU_BLOCK_MLP, lin, c->seqs,
                               (int32_t)c->n_seq, x, out);
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
    if ((st = q_block(c, L->l, blk, L->fp, x, ref)))
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
        if ((st = q_block(c, L->l, blk, lin, x, cur)))
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

/* Remember that the output replaces tensor t. */
static gm_status q_mark_done(q_ctx *c, const st_tensor *t)
{
    const st_tensor **nd = realloc(c->done, (size_t)(c->n_done + 1) * sizeof *nd);
    if (!nd)
        return gm_fail(GM_ERR_NOMEM, "no memory");
    c->done = nd;
    c->done[c->n_done++] = t;
    return GM_OK;
}

/* Quantize Linear j of L (its scaled weights) with ratio and add it to the output in place of
 * its `<m>.weight`: `<m>.qweight`, `<m>.qzeros`, `<m>.scales`. */
static gm_status q_emit_linear(q_ctx *c, const q_layer *L, int j, const float *ratio)
{
    int64_t N = L->N[j], K = L->K[j], g = c->o->group, G = K / g;
    int32_t *qw = q_keep(&c->out, malloc((size_t)(K * N / 8) * sizeof(int32_t)));
    int32_t *qz = q_keep(&c->out, malloc((size_t)(G * N / 8) * sizeof(int32_t)));
    uint16_t *sc = q_keep(&c->out, malloc((size_t)(G * N) * sizeof(uint16_t)));
    if (!qw || !qz || !sc)
        return gm_fail(GM_ERR_NOMEM, "layer %d: no memory for packed %s", (int)L->l, gm_linear_names[j]);
    cpu_awq_quantize(L->W[j], N, K, K, g, ratio, qw, qz, sc);
    const char *wn = L->wt[j]->name;
    int base = (int)strlen(wn) - (int)strlen(".weight"); /* gm_weights_bind found it as <m>.weight */
    char name[320];
    gm_status st;
    snprintf(name, sizeof name, "%.*s.qweight", base, wn);
    if ((st = q_add(&c->out, name, GM_DT_I32, K, N / 8, qw)))
        return st;
    snprintf(name, sizeof name, "%.*s.qzeros", base, wn);
    if ((st = q_add(&c->out, name, GM_DT_I32, G, N / 8, qz)))
        return st;
    snprintf(name, sizeof name, "%.*s.scales", base, wn);
    if ((st = q_add(&c->out, name, GM_DT_F16, G, N, sc)))
        return st;
    return q_mark_done(c, L->wt[j]);
}

/* A folded norm weight w [C] (float values) in place of tensor t, in t's dtype. */
static gm_status q_emit_norm(q_ctx *c, const st_tensor *t, const float *w, int64_t C)
{
    gm_dtype dt = t->dtype;
    void *p = q_keep(&c->out, malloc((size_t)C * gm_dtype_size(dt)));
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "%s: no memory", t->name);
    for (int64_t i = 0; i < C; i++) {
        if (dt == GM_DT_BF16)
            ((uint16_t *)p)[i] = gm_f32_to_bf16(w[i]);
        else if (dt == GM_DT_F16)
            ((uint16_t *)p)[i] = gm_f32_to_f16(w[i]);
        else
            ((float *)p)[i] = w[i];
    }
    gm_status st = q_add(&c->out, t->name, dt, C, 0, p);
    return st ? st : q_mark_done(c, t);
}

/* The CPU engine's tap: the inputs of layer cap_layer's Linears into c->cap (worker/engine_cpu.h). */
static gm_status q_tap(void *ctx, int32_t l, gm_cpu_tap tap, int64_t row0, const float *x, int64_t rows, int64_t cols)
{
    q_ctx *c = ctx;
    if (l != c->cap_layer || !c->cap[tap])
        return GM_OK;
    memcpy(c->cap[tap] + row0 * cols, x, (size_t)(rows * cols) * sizeof(float));
    return GM_OK;
}

/* Quantize one layer: capture, search, fold, clip, pack; advance c->h to the next layer's input. */
static gm_status q_do_layer(q_ctx *c, int32_t l)
{
    const gm_model_config *m = &c->cfg;
    int64_t T = c->T, H = m->hidden_size, I = m->intermediate_size, QW = (int64_t)m->num_heads * m->head_dim;
    bool awq = c->o->mode == Q_MODE_AWQ;
    double t0 = gm_now_s();
    q_layer L;
    gm_status st = q_layer_load(c, l, &L);
    if (st)
        return st;
    float *x_attn = NULL, *att = NULL, *x_mlp = NULL, *act = NULL;
    float *s[3] = {0}, *nwf[2] = {0};
    float *ratio[GM_LIN_COUNT] = {0};
    double alpha[3] = {0}, ea[3] = {0}, er[3] = {0};
    if (awq) {
        x_attn = malloc((size_t)(T * H) * sizeof(float));
        att = malloc((size_t)(T * QW) * sizeof(float));
        x_mlp = malloc((size_t)(T * H) * sizeof(float));
        act = malloc((size_t)(T * I) * sizeof(float));
        s[0] = malloc((size_t)H * sizeof(float)), s[1] = malloc((size_t)H * sizeof(float));
        s[2] = malloc((size_t)I * sizeof(float));
        nwf[0] = malloc((size_t)H * sizeof(float)), nwf[1] = malloc((size_t)H * sizeof(float));
        if (!x_attn || !att || !x_mlp || !act || !s[0] || !s[1] || !s[2] || !nwf[0] || !nwf[1]) {
            st = gm_fail(GM_ERR_NOMEM, "layer %d: no memory for %lld calibration tokens", (int)l, (long long)T);
            goto done;
        }
        /* 1. the float layer through the CPU engine, its Linears' inputs tapped; c->h becomes the next
         *    layer's input */
        c->cap_layer = l;
        c->cap[GM_TAP_QKV_IN] = x_attn, c->cap[GM_TAP_O_IN] = att;
        c->cap[GM_TAP_GU_IN] = x_mlp, c->cap[GM_TAP_DOWN_IN] = act;
        if ((st = gm_engine_cpu_set_tap(c->eng, q_tap, c)) ||
            (st = gm_engine_cpu_layer(c->eng, l, c->seqs, (int32_t)c->n_seq, c->h)) ||
            (st = gm_engine_cpu_set_tap(c->eng, NULL, NULL)))
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
        /* the folded norms replace the checkpoint's */
        if ((st = q_emit_norm(c, L.nt[0], L.nw[0], H)) || (st = q_emit_norm(c, L.nt[1], L.nw[1], H)))
            goto done;
    }
    /* 5. pack and emit */
    for (int j = 0; j < GM_LIN_COUNT; j++)
        if ((st = q_emit_linear(c, &L, j, ratio[j])))
            goto done;
    if (awq && !c->o->quiet)
        fprintf(stderr,
                "gemma-quantize: layer %d/%d: alpha qkv %.2f gate/up %.2f down %.2f; block mse awq/rtn "
                "%.3g/%.3g %.3g/%.3g %.3g/%.3g (%.1f s)\n",
                (int)l + 1, m->num_layers, alpha[0], alpha[1], alpha[2], ea[0], er[0], ea[1], er[1], ea[2], er[2],
                gm_now_s() - t0);
    else if (!c->o->quiet)
        fprintf(stderr, "gemma-quantize: layer %d/%d quantized (round-to-nearest)\n", (int)l + 1, m->num_layers);
done:
    memset(c->cap, 0, sizeof c->cap);
    free(x_attn), free(att), free(x_mlp), free(act);
    for (int i = 0; i < 3; i++)
        free(s[i]);
    free(nwf[0]), free(nwf[1]);
    for (int j = 0; j < GM_LIN_COUNT; j++)
        free(ratio[j]);
    q_layer_free(&L);
    return st;
}

/* Tokenize the calibration text into n_seq sequences of S tokens (BOS first), make the CPU engine
 * that runs them (c->eng; its weights become the source) and embed them into c->h. */
static gm_status q_calib(q_ctx *c)
{
    const q_opts *o = c->o;
    gm_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL, n = 0;
    gm_status st = gm_read_file(o->calib, (size_t)1 << 30, &text, &len);
    if (st || (st = gm_checkpoint_tokenizer(c->ck, &tok)) || (st = gm_tok_encode(tok, text, len, false, &ids, &n)))
        goto done;
    if (n < 1) {
        st = gm_fail(GM_ERR_INVALID_ARG, "%s: the calibration text has no tokens", o->calib);
        goto done;
    }
    const gm_model_config *m = &c->ck->cfg;
    int64_t S = o->seq_len;
    if (S > m->max_position)
        S = m->max_position;
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
    if ((st = gm_engine_cpu_create_calib(o->model, n_seq, S, &c->eng)))
        goto done;
    int64_t bs = c->eng->opts.kv_block_size, nb = (S + bs - 1) / bs; /* KV blocks of a sequence */
    c->tok = malloc((size_t)c->T * sizeof(int32_t));
    c->bt = malloc((size_t)(n_seq * nb) * sizeof(int32_t));
    c->seqs = calloc((size_t)n_seq, sizeof *c->seqs);
    c->h = malloc((size_t)(c->T * m->hidden_size) * sizeof(float));
    if (!c->tok || !c->bt || !c->seqs || !c->h) {
        st = gm_fail(GM_ERR_NOMEM, "no memory for %lld calibration tokens", (long long)c->T);
        goto done;
    }
    for (int64_t i = 0; i < n_seq * nb; i++)
        c->bt[i] = (int32_t)i;
    for (int64_t i = 0; i < n_seq; i++) {
        c->tok[i * S] = m->bos_id;
        memcpy(c->tok + i * S + 1, ids + i * (S - 1), (size_t)(S - 1) * sizeof(int32_t));
        c->seqs[i] = (gm_seq_step){(int32_t)i, c->tok + i * S, (int32_t)S, 0, c->bt + i * nb, (int32_t)nb,
                                   GM_LOGITS_NONE, GM_SAMPLING_GREEDY};
    }
    if ((st = gm_engine_cpu_embed(c->eng, c->seqs, (int32_t)n_seq, c->h)))
        goto done;
    if (!o->quiet)
        fprintf(stderr, "gemma-quantize: calibration: %lld sequences of %lld tokens from %s (%d tokens)\n",
                (long long)n_seq, (long long)S, o->calib, n);
done:
    free(text);
    free(ids);
    gm_tok_destroy(&tok);
    return st;
}

/* Every tensor of m the quantized layers do not replace (embedding, final and other norms, ...),
 * unchanged. */
static gm_status q_copy_rest(q_ctx *c, const st_model *m)
{
    for (int32_t i = 0; i < st_model_count(m); i++) {
        const st_tensor *t = st_model_at(m, i);
        int32_t k = 0;
        while (k < c->n_done && c->done[k] != t)
            k++;
        if (k == c->n_done && st_writer_add(c->out.w, t->name, t->dtype, t->ndim, t->shape, t->data) < 0)
            return gm_fail(GM_ERR_INTERNAL, "writer: %s: %s", t->name, gm_last_error());
    }
    return GM_OK;
}

/* --awq / --rtn: the whole run. */
static gm_status q_run_int4(const q_opts *o)
{
    q_ctx c;
    memset(&c, 0, sizeof c);
    c.o = o;
    gm_status st;
    double t0 = gm_now_s();
    bool awq = o->mode == Q_MODE_AWQ;
    /* --awq runs the float model on the CPU engine, whose weights then serve as the source */
    if ((st = gm_checkpoint_open(o->model, awq ? 0 : GM_CKPT_WEIGHTS, &c.ck)))
        return st;
    const gm_model_config *m = &c.ck->cfg;
    int64_t qw = (int64_t)m->num_heads * m->head_dim, kvw = (int64_t)m->num_kv_heads * m->head_dim;
    int64_t Ks[3] = {m->hidden_size, qw, m->intermediate_size}, Ns[4] = {qw, kvw, m->hidden_size,
                                                                         m->intermediate_size};
    gm_quant_config qc;
    for (int i = 0; i < 3 && !st; i++)
        if (Ks[i] % o->group != 0)
            st = gm_fail(GM_ERR_INVALID_ARG, "--group %lld does not divide in_features %lld of this model",
                         (long long)o->group, (long long)Ks[i]);
    for (int i = 0; i < 4 && !st; i++)
        if (Ns[i] % 8 != 0)
            st = gm_fail(GM_ERR_UNSUPPORTED, "out_features %lld is not a multiple of 8 (AWQ packing)",
                         (long long)Ns[i]);
    if (!st && !(st = gm_quant_config_load(o->model, &qc)) && qc.present)
        st = gm_fail(GM_ERR_INVALID_ARG, "%s is already quantized (%s); give an unquantized checkpoint", o->model,
                     qc.method);
    if (st || (awq && (st = q_calib(&c))))
        goto done;
    const st_model *src = awq ? gm_engine_cpu_model(c.eng) : c.ck->model;
    if ((st = gm_weights_bind(src, m, 0, 1, &c.w)))
        goto done;
    c.cfg = c.w.cfg;
    if (!(c.out.w = st_writer_new())) {
        st = gm_fail(GM_ERR_NOMEM, "no memory for the writer");
        goto done;
    }
    st_writer_meta(c.out.w, "format", "pt");
    st_writer_meta(c.out.w, "quantized_by", awq ? "gemma-quantize --awq" : "gemma-quantize --rtn");
    for (int32_t l = 0; l < m->num_layers; l++)
        if ((st = q_do_layer(&c, l)))
            goto done;
    if ((st = q_copy_rest(&c, src)) || (st = gm_mkdirs(o->out)))
        goto done;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    if (!o->quiet)
        fprintf(stderr, "gemma-quantize: writing %s (%.1f MB)\n", path, (double)st_writer_bytes(c.out.w) / 1e6);
    if ((st = st_writer_write(c.out.w, path, NULL, NULL)) ||
        (st = gm_checkpoint_write_meta(c.ck, o->out, q_awq_config(o->group))))
        goto done;
    if (!o->quiet)
        fprintf(stderr, "gemma-quantize: done in %.1f s: %s\n", gm_now_s() - t0, o->out);
done:
    q_out_free(&c.out);
    free(c.h), free(c.tok), free(c.bt), free(c.seqs), free(c.done);
    gm_weights_release(&c.w);
    gm_engine_destroy(&c.eng);
    gm_checkpoint_destroy(&c.ck);
    return st;
}

/* --model must exist (a directory or a .gguf file); --out must be neither it nor the directory
 * holding it (that directory would then hold two checkpoints). */
static gm_status q_check_dirs(const q_opts *o)
{
    struct stat a, b, d;
    if (stat(o->model, &a) != 0 || (!S_ISDIR(a.st_mode) && !S_ISREG(a.st_mode)))
        return gm_fail(GM_ERR_IO, "--model %s: neither a checkpoint directory nor a .gguf file", o->model);
    if (stat(o->out, &b) != 0)
        return GM_OK;
    if (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return gm_fail(GM_ERR_INVALID_ARG, "--out %s is the input %s", o->out, S_ISDIR(a.st_mode) ? "directory" : "file");
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", o->model);
    char *slash = strrchr(parent, '/');
    snprintf(slash ? slash + 1 : parent, sizeof parent - (size_t)(slash ? slash + 1 - parent : 0), ".");
    if (S_ISREG(a.st_mode) && stat(parent, &d) == 0 && d.st_dev == b.st_dev && d.st_ino == b.st_ino)
        return gm_fail(GM_ERR_INVALID_ARG, "--out %s is the directory holding --model %s; give another", o->out,
                       o->model);
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
