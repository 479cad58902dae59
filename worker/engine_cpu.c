/* engine_cpu.c - the Gemma 1/2/3 forward pass on the CPU, float32 arithmetic over
 * memory-mapped bf16/f16/f32 weights, with a float32 paged KV pool.
 *
 * One pass for every family, switched by the config (common/model_config.h): Gemma 2/3 add
 * sandwich norms (post-attention and pre/post-feed-forward), the query_pre_attn_scalar^-0.5
 * attention scale, soft-capped attention scores and logits (Gemma 2), QK-norm before RoPE
 * (Gemma 3), sliding-window layers with their own RoPE base, and linear RoPE scaling on full
 * layers (Gemma 3 4B+). Gemma 1 takes exactly the operations it always did.
 *
 * A step concatenates the new tokens of all its sequences into one activation
 * matrix [T, hidden]; the matmuls are batch-invariant (kernels/cpu), and
 * attention runs per sequence over its own blocks, so a sequence's logits do
 * not depend on what else is in the batch. Tensor parallel ranks hold their
 * slice (worker/weights.h) and all-reduce float64 partial sums after o_proj and
 * down_proj; tp=1 takes the same float64 path without the communicator.
 * Rank 0 samples and broadcasts the ids, so every rank can resolve a -1 token
 * (run-ahead, engine.h) from its slot's last sample (engine_feed.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/safetensors.h"
#include "../kernels/cpu/attn.h"
#include "../kernels/cpu/embed.h"
#include "../kernels/cpu/geglu.h"
#include "../kernels/cpu/gemm.h"
#include "../kernels/cpu/gemm_fp8.h"
#include "../kernels/cpu/norm.h"
#include "../kernels/cpu/quant_fp8.h"
#include "../kernels/cpu/rope_kv.h"
#include "../kernels/cpu/sample.h"
#include "../parallel/comm.h"
#include "awq.h"
#include "engine.h"
#include "engine_check.h"
#include "engine_feed.h"
#include "weights.h"

#define MLP_ROWS 32 /* token rows per MLP tile: bounds the [rows, intermediate] scratch */

typedef struct cpu_engine {
    gm_engine base;
    st_model *model;
    gm_weights w;
    gm_linear *lin;    /* [layers][GM_LIN_COUNT] dense or AWQ Linears (worker/awq.h) */
    int64_t q_w, kv_w; /* local widths: n_heads*hd, n_kv*hd */
    float *kv;         /* all layers: [layers][2][num_blocks, n_kv, block_size, head_dim] f32 */
    int64_t layer_elems; /* elements of one layer's K (or V) pool */

    int64_t cap_t;     /* token rows the scratch below holds */
    float *h;          /* [T, hidden] residual stream */
    float *x;          /* [T, hidden] normed input */
    float *q;          /* [T, q_w] */
    float *k, *v;      /* [T, kv_w] */
    float *att;        /* [T, q_w] */
    double *part;      /* [T, hidden] partial sums to all-reduce */
    int32_t *ids, *pos; /* [T] */
    float *gate, *up;  /* [MLP_ROWS, n_inter] */

    int64_t cap_rows;  /* logits rows the scratch below holds */
    float *fin;        /* [rows, hidden] final-normed rows */
    float *logits;     /* [rows, vocab] when the caller does not want logits */
    int64_t *row_tok;  /* [rows] token index (in the step) of each logits row */
    uint8_t *embed8;   /* --lm-head fp8: [vocab, hidden] e4m3 of the embedding, scale embed8_sc */
    uint8_t *fin8;     /* [rows, hidden] e4m3 of fin, scale fin8_sc (static) */
    float embed8_sc, fin8_sc;
    gm_feed feed;      /* each slot's last sample; a step's samples */
} cpu_engine;

static void *xrealloc(void *p, size_t n, int *fail)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        *fail = 1;
    return q ? q : p;
}

static gm_status ensure_tokens(cpu_engine *c, int64_t T)
{
    if (T <= c->cap_t)
        return GM_OK;
    const gm_model_config *m = &c->base.cfg;
    size_t t = (size_t)T, H = (size_t)m->hidden_size;
    int fail = 0;
    c->h = xrealloc(c->h, t * H * sizeof(float), &fail);
    c->x = xrealloc(c->x, t * H * sizeof(float), &fail);
    c->q = xrealloc(c->q, t * (size_t)c->q_w * sizeof(float), &fail);
    c->k = xrealloc(c->k, t * (size_t)c->kv_w * sizeof(float), &fail);
    c->v = xrealloc(c->v, t * (size_t)c->kv_w * sizeof(float), &fail);
    c->att = xrealloc(c->att, t * (size_t)c->q_w * sizeof(float), &fail);
    c->part = xrealloc(c->part, t * H * sizeof(double), &fail);
    c->ids = xrealloc(c->ids, t * sizeof(int32_t), &fail);
    c->pos = xrealloc(c->pos, t * sizeof(int32_t), &fail);
    if (fail)
        return gm_fail(GM_ERR_NOMEM, "cpu engine: no memory for %lld tokens of activations", (long long)T);
    c->cap_t = T;
    return GM_OK;
}

static gm_status ensure_rows(cpu_engine *c, int64_t R)
{
    if (R <= c->cap_rows)
        return GM_OK;
    size_t r = (size_t)R;
    int fail = 0;
    c->fin = xrealloc(c->fin, r * (size_t)c->base.cfg.hidden_size * sizeof(float), &fail);
    c->logits = xrealloc(c->logits, r * (size_t)c->base.cfg.vocab_size * sizeof(float), &fail);
    c->row_tok = xrealloc(c->row_tok, r * sizeof(int64_t), &fail);
    if (c->embed8)
        c->fin8 = xrealloc(c->fin8, r * (size_t)c->base.cfg.hidden_size, &fail);
    if (fail)
        return gm_fail(GM_ERR_NOMEM, "cpu engine: no memory for %lld logits rows", (long long)R);
    c->cap_rows = R;
    return GM_OK;
}

/* y [T, out] = x [T, in] . W^T for a dense or AWQ Linear. */
static gm_status mm(const float *x, int64_t T, const gm_linear *W, float *y)
{
    return gm_linear_matmul(W, x, T, W->in, y, W->out);
}

/* Sum partial results over the tensor-parallel ranks, then add them to h. */
static gm_status reduce_add(cpu_engine *c, int64_t T)
{
    int64_t n = T * c->base.cfg.hidden_size;
    if (c->base.opts.tp_size > 1) {
        gm_status st = gm_comm_allreduce_f64(c->base.opts.comm, c->part, n);
        if (st)
            return st;
    }
    for (int64_t i = 0; i < n; i++)
        c->h[i] += (float)c->part[i];
    return GM_OK;
}

/* Gemma 2/3's sandwich: sum the partial results over the ranks, RMSNorm them with `norm`, add to h.
 * Uses x [T, hidden] as scratch. */
static gm_status reduce_norm_add(cpu_engine *c, int64_t T, const gm_wview *norm)
{
    int64_t H = c->base.cfg.hidden_size, n = T * H;
    if (c->base.opts.tp_size > 1) {
        gm_status st = gm_comm_allreduce_f64(c->base.opts.comm, c->part, n);
        if (st)
            return st;
    }
    for (int64_t i = 0; i < n; i++)
        c->x[i] = (float)c->part[i];
    cpu_rmsnorm(c->x, norm->data, norm->dtype, T, H, c->base.cfg.rms_norm_eps, c->x);
    for (int64_t i = 0; i < n; i++)
        c->h[i] += c->x[i];
    return GM_OK;
}

static gm_status layer_forward(cpu_engine *c, int32_t l, const gm_seq_step *seqs, int32_t n_seqs, int64_t T)
{
    const gm_model_config *m = &c->base.cfg;
    const gm_layer_weights *L = &c->w.layers[l];
    const gm_linear *lin = c->lin + (int64_t)l * GM_LIN_COUNT;
    gm_status st;
    const gm_tp_layout *tp = &c->w.tp;
    int64_t H = m->hidden_size, hd = m->head_dim, bs = c->base.opts.kv_block_size;
    float *kp = c->kv + (int64_t)l * 2 * c->layer_elems, *vp = kp + c->layer_elems;
    int gemma1 = m->family == GM_FAMILY_GEMMA1, sliding = m->layer_sliding[l] && m->sliding_window > 0;

    /* attention block */
    cpu_rmsnorm(c->h, L->input_norm.data, L->input_norm.dtype, T, H, m->rms_norm_eps, c->x);
    if ((st = mm(c->x, T, &lin[GM_LIN_Q], c->q)) || (st = mm(c->x, T, &lin[GM_LIN_K], c->k)) ||
        (st = mm(c->x, T, &lin[GM_LIN_V], c->v)))
        return st;
    if (m->qk_norm) {
        cpu_head_rmsnorm(c->q, T, tp->n_heads, hd, L->q_norm.data, L->q_norm.dtype, m->rms_norm_eps);
        cpu_head_rmsnorm(c->k, T, tp->n_kv, hd, L->k_norm.data, L->k_norm.dtype, m->rms_norm_eps);
    }
    float theta = m->layer_sliding[l] ? m->rope_theta_local : m->rope_theta;
    float rscale = m->layer_sliding[l] ? 1.0f : m->rope_scale;
    cpu_rope_scaled(c->q, T, tp->n_heads, hd, c->pos, theta, rscale);
    cpu_rope_scaled(c->k, T, tp->n_kv, hd, c->pos, theta, rscale);
    /* Gemma 1: 1/sqrt(head_dim) as it always was; Gemma 2/3: query_pre_attn_scalar^-0.5, as
     * transformers computes it in double and applies it as a float32 scalar */
    float scale = gemma1 ? 1.0f / sqrtf((float)hd) : (float)(1.0 / sqrt((double)m->query_pre_attn_scalar));
    int64_t t0 = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        cpu_kv_write(kp, vp, s->block_table, (int32_t)bs, s->start_pos, s->n_tokens, tp->n_kv, hd,
                     c->k + t0 * c->kv_w, c->v + t0 * c->kv_w);
        if (gemma1)
            cpu_attention_paged(c->q + t0 * c->q_w, s->n_tokens, s->start_pos, tp->n_heads, tp->n_kv, hd, kp, vp,
                                s->block_table, (int32_t)bs, scale, c->att + t0 * c->q_w);
        else
            cpu_attention_paged_ex(c->q + t0 * c->q_w, s->n_tokens, s->start_pos, tp->n_heads, tp->n_kv, hd, kp,
                                   vp, s->block_table, (int32_t)bs, scale, m->attn_softcap,
                                   sliding ? m->sliding_window : 0, c->att + t0 * c->q_w);
        t0 += s->n_tokens;
    }
    if ((st = gm_linear_matmul_f64(&lin[GM_LIN_O], c->att, T, c->q_w, c->part, H)))
        return st;
    if ((st = m->sandwich_norm ? reduce_norm_add(c, T, &L->post_attn_norm) : reduce_add(c, T)))
        return st;

    /* MLP block, MLP_ROWS token rows at a time */
    const gm_wview *mlp_norm = m->sandwich_norm ? &L->pre_ffw_norm : &L->post_norm;
    cpu_rmsnorm(c->h, mlp_norm->data, mlp_norm->dtype, T, H, m->rms_norm_eps, c->x);
    int64_t ni = tp->n_inter;
    for (int64_t r = 0; r < T; r += MLP_ROWS) {
        int64_t nr = T - r < MLP_ROWS ? T - r : MLP_ROWS;
        if ((st = mm(c->x + r * H, nr, &lin[GM_LIN_GATE], c->gate)) ||
            (st = mm(c->x + r * H, nr, &lin[GM_LIN_UP], c->up)))
            return st;
        cpu_geglu(c->gate, c->up, nr, ni, c->gate);
        if ((st = gm_linear_matmul_f64(&lin[GM_LIN_DOWN], c->gate, nr, ni, c->part + r * H, H)))
            return st;
    }
    return m->sandwich_norm ? reduce_norm_add(c, T, &L->post_ffw_norm) : reduce_add(c, T);
}

/* Rank 0: logits of the rows asked for (out->logits gets them when given) and a
 * sample per entry with logits into sampled[] (-1 for the others). */
static gm_status cpu_sample_rows(cpu_engine *c, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out,
                                 int64_t rows, int32_t *sampled)
{
    const gm_model_config *m = &c->base.cfg;
    int full = out && out->logits;
    if (!full) {
        rows = 0;
        for (int32_t i = 0; i < n_seqs; i++)
            rows += seqs[i].logits_mode != GM_LOGITS_NONE;
    }
    gm_status st;
    if ((st = ensure_rows(c, rows)))
        return st;
    int64_t r = 0, t0 = 0, H = m->hidden_size;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->logits_mode == GM_LOGITS_ALL && full)
            for (int32_t t = 0; t < s->n_tokens; t++)
                c->row_tok[r++] = t0 + t;
        else if (s->logits_mode != GM_LOGITS_NONE)
            c->row_tok[r++] = t0 + s->n_tokens - 1;
        t0 += s->n_tokens;
    }
    for (int64_t i = 0; i < rows; i++)
        cpu_rmsnorm(c->h + c->row_tok[i] * H, c->w.final_norm.data, c->w.final_norm.dtype, 1, H, m->rms_norm_eps,
                    c->fin + i * H);
    int64_t V = m->vocab_size;
    float *lg = full ? out->logits : c->logits; /* [rows, V] */
    if (c->embed8) { /* the CUDA engine's --lm-head fp8: e4m3 rows (static scale) . e4m3 embedding, f32 out */
        cpu_fp8_quantize_act(c->fin, rows * H, c->fin8_sc, c->fin8);
        if (cpu_fp8_matmul_q_f32(c->fin8, rows, H, H, c->fin8_sc, c->embed8, H, V, c->embed8_sc, lg, V))
            return gm_fail(GM_ERR_NOMEM, "cpu engine: no memory for the FP8 LM head");
    } else {
        cpu_matmul(c->fin, rows, H, H, c->w.embed.data, c->w.embed.dtype, c->w.embed.ld, V, lg, V);
    }
    if (m->final_softcap > 0.0f) /* Gemma 2 */
        cpu_softcap(lg, rows * V, m->final_softcap);
    r = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->logits_mode == GM_LOGITS_NONE) {
            sampled[i] = -1;
            continue;
        }
        r += s->logits_mode == GM_LOGITS_ALL && full ? s->n_tokens : 1;
        uint64_t counter = (uint64_t)s->start_pos + (uint64_t)s->n_tokens;
        sampled[i] = cpu_sample(lg + (r - 1) * V, V, &s->sampling, counter);
    }
    return GM_OK;
}

static gm_status cpu_step(gm_engine *e, const gm_seq_step *seqs_in, int32_t n_seqs, gm_step_out *out)
{
    cpu_engine *c = (cpu_engine *)e;
    const gm_model_config *m = &e->cfg;
    const gm_seq_step *seqs = NULL;
    gm_status st = gm_feed_resolve(&c->feed, seqs_in, n_seqs, &seqs);
    if (st)
        return st;
    int64_t T = 0, rows = 0;
    st = gm_engine_check_step(e, seqs, n_seqs, out, &T, &rows);
    if (st)
        return st;
    if (T == 0)
        return GM_OK;
    if ((st = ensure_tokens(c, T)))
        return st;
    int64_t t0 = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        for (int32_t t = 0; t < seqs[i].n_tokens; t++) {
            c->ids[t0 + t] = seqs[i].tokens[t];
            c->pos[t0 + t] = seqs[i].start_pos + t;
        }
        t0 += seqs[i].n_tokens;
    }
    int64_t H = m->hidden_size;
    cpu_embed(c->w.embed.data, c->w.embed.dtype, H, c->ids, T, gm_config_normalizer(m), c->h);
    for (int32_t l = 0; l < m->num_layers; l++)
        if ((st = layer_forward(c, l, seqs, n_seqs, T)))
            return st;

    /* Only rank 0 computes logits and samples (only the sampled rows unless
     * out->logits wants more); the ids then go to every rank. */
    if (rows == 0)
        return GM_OK;
    int32_t *sampled = c->feed.sampled;
    if (e->opts.tp_rank == 0) {
        if ((st = cpu_sample_rows(c, seqs, n_seqs, out, rows, sampled)))
            return st;
    }
    if (e->opts.tp_size > 1 && (st = gm_comm_broadcast(e->opts.comm, sampled, (int64_t)n_seqs * 4)))
        return st;
    gm_feed_record(&c->feed, seqs, n_seqs, sampled);
    if (out && out->tokens)
        memcpy(out->tokens, sampled, (size_t)n_seqs * sizeof *sampled);
    return GM_OK;
}

static void cpu_destroy(gm_engine *e)
{
    cpu_engine *c = (cpu_engine *)e;
    if (!c)
        return;
    free(c->kv);
    free(c->h), free(c->x), free(c->q), free(c->k), free(c->v), free(c->att), free(c->part);
    free(c->ids), free(c->pos), free(c->gate), free(c->up);
    free(c->fin), free(c->logits), free(c->row_tok), free(c->embed8), free(c->fin8);
    gm_feed_free(&c->feed);
    gm_linears_free(c->lin, c->lin ? (int64_t)c->base.cfg.num_layers * GM_LIN_COUNT : 0);
    free(c->lin);
    gm_weights_release(&c->w);
    st_model_destroy(&c->model);
    free(c);
}

static const gm_engine_ops g_cpu_ops = {cpu_step, cpu_destroy};

gm_status gm_engine_cpu_create(const gm_engine_opts *o, gm_engine **out)
{
    *out = NULL;
    if (!o->model_dir || !*o->model_dir)
        return gm_fail(GM_ERR_INVALID_ARG, "cpu backend: no model directory given");
    if (o->kv_dtype != GM_KV_AUTO)
        return gm_fail(GM_ERR_UNSUPPORTED, "cpu backend: the KV cache is float32 (--kv-dtype auto only)");
    if (o->tp_size > 1) {
        if (!o->comm)
            return gm_fail(GM_ERR_INVALID_ARG, "cpu backend: tp_size %d needs a communicator", o->tp_size);
        if (gm_comm_size(o->comm) != o->tp_size || gm_comm_rank(o->comm) != o->tp_rank)
            return gm_fail(GM_ERR_INVALID_ARG, "cpu backend: communicator is rank %d of %d, engine is rank %d of %d",
                           gm_comm_rank(o->comm), gm_comm_size(o->comm), o->tp_rank, o->tp_size);
    }
    gm_model_config cfg;
    gm_status st = gm_config_load_dir(o->model_dir, &cfg);
    if (st)
        return st;
    gm_quant_config qc; /* an AWQ checkpoint is recognised by its quantization config */
    if ((st = gm_quant_config_load(o->model_dir, &qc)))
        return st;
    int ck_awq = qc.present && !strcmp(qc.method, "awq"), ck_fp8 = qc.present && !strcmp(qc.method, "fp8");
    if (qc.present && !ck_awq && !ck_fp8)
        return gm_fail(GM_ERR_UNSUPPORTED, "cpu backend: %s: quantization method \"%s\" is not supported",
                       o->model_dir, qc.method);
    if (o->quant == GM_QUANT_FP8 && ck_awq)
        return gm_fail(GM_ERR_UNSUPPORTED, "cpu backend: --quant fp8 needs a bf16/f16/f32 or FP8 checkpoint; %s is %s",
                       o->model_dir, qc.method);
    if (o->quant == GM_QUANT_AWQ && !ck_awq)
        return gm_fail(GM_ERR_INVALID_ARG, "cpu backend: --quant awq, but %s has no AWQ quantization_config",
                       o->model_dir);
    cpu_engine *c = calloc(1, sizeof *c);
    if (!c)
        return gm_fail(GM_ERR_NOMEM, "cpu backend: no memory");
    c->base.ops = &g_cpu_ops;
    gm_engine_init_common(&c->base, &cfg, o);
    if ((st = st_model_open(o->model_dir, &c->model)))
        goto fail;
    if ((st = gm_weights_check_finite(c->model, o->tp_rank, o->tp_size))) /* NaN weights: refuse, do not serve */
        goto fail;
    if ((st = gm_weights_bind(c->model, &cfg, o->tp_rank, o->tp_size, &c->w)))
        goto fail;
    if ((st = gm_linears_bind(c->model, &c->w.cfg, &c->w.tp, ck_awq ? qc.group_size : 0, &c->lin)))
        goto fail; /* an FP8 checkpoint's Linears bind as e4m3 with their scales (worker/awq.h) */
    if (o->quant == GM_QUANT_FP8 && (st = gm_linears_to_fp8(c->lin, cfg.num_layers)))
        goto fail; /* e4m3 weights, dynamic e4m3 activations: the CUDA engine's FP8 twin (worker/awq.h) */
    if (o->lm_head_fp8 && o->tp_rank == 0) { /* only rank 0 computes logits */
        int64_t n = (int64_t)cfg.vocab_size * cfg.hidden_size;
        c->embed8 = malloc((size_t)n);
        if (!c->embed8) {
            st = gm_fail(GM_ERR_NOMEM, "cpu backend: no memory for the FP8 LM head (%lld bytes)", (long long)n);
            goto fail;
        }
        c->embed8_sc = cpu_fp8_scale(cpu_fp8_amax(c->w.embed.data, c->w.embed.dtype, n));
        cpu_fp8_quantize(c->w.embed.data, c->w.embed.dtype, n, c->embed8_sc, c->embed8);
        c->fin8_sc = cpu_fp8_lm_head_act_scale(c->w.final_norm.data, c->w.final_norm.dtype, cfg.hidden_size);
    }
    const gm_tp_layout *tp = &c->w.tp;
    c->q_w = (int64_t)tp->n_heads * cfg.head_dim;
    c->kv_w = (int64_t)tp->n_kv * cfg.head_dim;
    int64_t block_elems = c->kv_w * o->kv_block_size; /* one block of one layer's K */
    if ((st = gm_engine_kv_blocks(o, 2 * cfg.num_layers * block_elems * (int64_t)sizeof(float),
                                  &c->base.kv_num_blocks)))
        goto fail;
    c->layer_elems = c->base.kv_num_blocks * block_elems;
    c->kv = calloc((size_t)(2 * cfg.num_layers) * (size_t)c->layer_elems, sizeof(float));
    c->gate = malloc((size_t)MLP_ROWS * (size_t)tp->n_inter * sizeof(float));
    c->up = malloc((size_t)MLP_ROWS * (size_t)tp->n_inter * sizeof(float));
    if ((st = gm_feed_init(&c->feed, o->max_seqs)))
        goto fail;
    if (!c->kv || !c->gate || !c->up) {
        st = gm_fail(GM_ERR_NOMEM, "cpu backend: no memory for %lld KV blocks (%lld MiB)",
                     (long long)c->base.kv_num_blocks,
                     (long long)(2 * cfg.num_layers * c->layer_elems * (int64_t)sizeof(float) >> 20));
        goto fail;
    }
    if (o->verbose) {
        const gm_linear *l0 = c->lin;
        const char *wq = !l0                            ? "?"
                         : l0->kind == GM_LINEAR_AWQ   ? "AWQ int4"
                         : l0->kind != GM_LINEAR_FP8   ? "dense"
                         : l0->in_scale > 0.0f         ? "FP8, static activation scales"
                                                       : "FP8, dynamic activation scales";
        GM_INFO("cpu engine: %s, %d layers, rank %d/%d, %lld KV blocks of %d tokens; weights %s, LM head %s",
                o->model_dir, cfg.num_layers, o->tp_rank, o->tp_size, (long long)c->base.kv_num_blocks,
                o->kv_block_size, wq, c->embed8 ? "fp8" : "as stored");
    }
    *out = &c->base;
    return GM_OK;
fail:
    cpu_destroy(&c->base);
    return st;
}
