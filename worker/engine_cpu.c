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
 * (run-ahead, engine.h) from its slot's last sample (engine_feed.h).
 *
 * The checkpoint is whatever --model names (common/gguf_model.h: a safetensors directory or a GGUF,
 * dequantized at load). engine_cpu.h adds what the quantizers calibrate with: one layer or one block
 * at a time, and taps on every Linear's input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/gguf_model.h"
#include "../common/log.h"
#include "../common/safetensors.h"
#include "../kernels/cpu/attn.h"
#include "../kernels/cpu/embed.h"
#include "../kernels/cpu/geglu.h"
#include "../kernels/cpu/gemm.h"
#include "../kernels/cpu/gemm_fp8.h"
#include "../kernels/cpu/kv_copy.h"
#include "../kernels/cpu/norm.h"
#include "../kernels/cpu/quant_fp8.h"
#include "../kernels/cpu/rope_kv.h"
#include "../kernels/cpu/sample.h"
#include "../parallel/comm.h"
#include "awq.h"
#include "engine.h"
#include "engine_check.h"
#include "engine_cpu.h"
#include "engine_feed.h"
#include "engine_pen.h"
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
    gm_pen_track pen;  /* which slots' histories the penalties may use (engine_pen.h) */
    uint8_t *pen_flags; /* [max_seqs] a step's GM_PEN_* per entry */
    int32_t **hist;    /* [max_seqs] rank 0: a slot's tokens by position, [max_context] int32 once it has
                        * penalties (allocated then) */
    int32_t *cnt;      /* [vocab] zero: cpu_penalize's scratch */
    float *work;       /* [vocab] a row being penalized or masked (the logits stay raw) */
    gm_cpu_tap_fn tap; /* engine_cpu.h: the calibration taps, or NULL */
    void *tap_ctx;
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

/* The tap of layer l, when one is set. */
static gm_status tap(cpu_engine *c, int32_t l, gm_cpu_tap t, int64_t row0, const float *x, int64_t rows, int64_t cols)
{
    return c->tap ? c->tap(c->tap_ctx, l, t, row0, x, rows, cols) : GM_OK;
}

/* Attention block of layer l with Linears lin: c->part [T, hidden] = o_proj(attention) of the
 * normed input c->x [T, hidden] (this rank's partial sum); writes the sequences' K/V. */
static gm_status attn_block(cpu_engine *c, int32_t l, const gm_linear *lin, const gm_seq_step *seqs, int32_t n_seqs,
                            int64_t T)
{
    const gm_model_config *m = &c->base.cfg;
    const gm_layer_weights *L = &c->w.layers[l];
    const gm_tp_layout *tp = &c->w.tp;
    int64_t H = m->hidden_size, hd = m->head_dim, bs = c->base.opts.kv_block_size;
    float *kp = c->kv + (int64_t)l * 2 * c->layer_elems, *vp = kp + c->layer_elems;
    int gemma1 = m->family == GM_FAMILY_GEMMA1, sliding = m->layer_sliding[l] && m->sliding_window > 0;
    gm_status st;
    if ((st = tap(c, l, GM_TAP_QKV_IN, 0, c->x, T, H)))
        return st;
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
    if ((st = tap(c, l, GM_TAP_K, 0, c->k, T, c->kv_w)) || (st = tap(c, l, GM_TAP_V, 0, c->v, T, c->kv_w)))
        return st;
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
    if ((st = tap(c, l, GM_TAP_O_IN, 0, c->att, T, c->q_w)))
        return st;
    return gm_linear_matmul_f64(&lin[GM_LIN_O], c->att, T, c->q_w, c->part, H);
}

/* MLP block of layer l with Linears lin, MLP_ROWS token rows at a time: c->part [T, hidden] =
 * down(gelu_tanh(gate(x)) * up(x)) of the normed input c->x [T, hidden]. */
static gm_status mlp_block(cpu_engine *c, int32_t l, const gm_linear *lin, int64_t T)
{
    int64_t H = c->base.cfg.hidden_size, ni = c->w.tp.n_inter;
    gm_status st = tap(c, l, GM_TAP_GU_IN, 0, c->x, T, H);
    for (int64_t r = 0; r < T && !st; r += MLP_ROWS) {
        int64_t nr = T - r < MLP_ROWS ? T - r : MLP_ROWS;
        if ((st = mm(c->x + r * H, nr, &lin[GM_LIN_GATE], c->gate)) ||
            (st = mm(c->x + r * H, nr, &lin[GM_LIN_UP], c->up)))
            return st;
        cpu_geglu(c->gate, c->up, nr, ni, c->gate);
        if (!(st = tap(c, l, GM_TAP_DOWN_IN, r, c->gate, nr, ni)))
            st = gm_linear_matmul_f64(&lin[GM_LIN_DOWN], c->gate, nr, ni, c->part + r * H, H);
    }
    return st;
}

static gm_status layer_forward(cpu_engine *c, int32_t l, const gm_seq_step *seqs, int32_t n_seqs, int64_t T)
{
    const gm_model_config *m = &c->base.cfg;
    const gm_layer_weights *L = &c->w.layers[l];
    const gm_linear *lin = c->lin + (int64_t)l * GM_LIN_COUNT;
    int64_t H = m->hidden_size;
    gm_status st;
    cpu_rmsnorm(c->h, L->input_norm.data, L->input_norm.dtype, T, H, m->rms_norm_eps, c->x);
    if ((st = attn_block(c, l, lin, seqs, n_seqs, T)))
        return st;
    if ((st = m->sandwich_norm ? reduce_norm_add(c, T, &L->post_attn_norm) : reduce_add(c, T)))
        return st;
    const gm_wview *mlp_norm = m->sandwich_norm ? &L->pre_ffw_norm : &L->post_norm;
    cpu_rmsnorm(c->h, mlp_norm->data, mlp_norm->dtype, T, H, m->rms_norm_eps, c->x);
    if ((st = mlp_block(c, l, lin, T)))
        return st;
    return m->sandwich_norm ? reduce_norm_add(c, T, &L->post_ffw_norm) : reduce_add(c, T);
}

/* One entry's token from its raw logits row [vocab] (not modified): log-probabilities into *lp when
 * it asks (and lp is given), then its penalties and min_tokens mask on a copy, then the draw. */
static int32_t sample_row(cpu_engine *c, const gm_seq_step *s, uint8_t pen, const float *row, gm_token_logprobs *lp,
                          uint64_t counter)
{
    int64_t V = c->base.cfg.vocab_size;
    const gm_sampling *sp = &s->sampling;
    double lse = 0.0;
    if (lp && !gm_seq_step_wants_logprobs(s))
        lp = NULL;
    if (lp) {
        lp->n_top = sp->top_logprobs < V ? sp->top_logprobs : (int32_t)V;
        cpu_logprobs(row, V, lp->n_top, &lse, lp->top_ids, lp->top_logprobs);
    }
    bool mask = gm_seq_step_masks_stops(s);
    const float *w = row;
    if ((pen & GM_PEN_APPLY) || mask) {
        memcpy(c->work, row, (size_t)V * sizeof *row);
        if (pen & GM_PEN_APPLY)
            cpu_penalize(c->work, V, c->hist[s->slot], (int64_t)s->start_pos + s->n_tokens, sp, c->cnt);
        if (mask)
            cpu_mask_ids(c->work, V, s->stops->ids, s->stops->n);
        w = c->work;
    }
    int32_t id = cpu_sample(w, V, sp, counter);
    if (lp)
        lp->logprob = id >= 0 ? (float)((double)row[id] - lse) : -INFINITY;
    return id;
}

/* Rank 0: the samples of a GM_LOGITS_VERIFY entry from its rows lg [n_tokens, vocab] into out [n_tokens]
 * (when given): row j as a LAST entry of its first j + 1 tokens samples it (ctl/step.h). Returns the
 * last row's. */
static int32_t verify_rows(cpu_engine *c, const gm_seq_step *s, const float *lg, int32_t *out)
{
    int64_t V = c->base.cfg.vocab_size;
    int32_t id = -1;
    for (int32_t j = 0; j < s->n_tokens; j++) {
        gm_seq_step row = *s;
        row.n_tokens = j + 1;
        row.logits_mode = GM_LOGITS_LAST;
        id = sample_row(c, &row, 0, lg + (int64_t)j * V, NULL, (uint64_t)s->start_pos + (uint64_t)j + 1);
        if (out)
            out[j] = id;
    }
    return id;
}

/* Rank 0: each penalized entry's new tokens (ids [T], the step's resolved inputs) into its slot's history. */
static gm_status pen_record(cpu_engine *c, const gm_seq_step *seqs, int32_t n_seqs)
{
    int64_t t0 = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (c->pen_flags[i] & GM_PEN_ON) {
            int32_t **h = &c->hist[s->slot];
            if (!*h && !(*h = malloc((size_t)c->base.opts.max_context * sizeof **h)))
                return gm_fail(GM_ERR_NOMEM, "cpu engine: no memory for slot %d's token history", (int)s->slot);
            memcpy(*h + s->start_pos, c->ids + t0, (size_t)s->n_tokens * sizeof **h);
        }
        t0 += s->n_tokens;
    }
    return GM_OK;
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
            rows += seqs[i].logits_mode == GM_LOGITS_VERIFY ? seqs[i].n_tokens : seqs[i].logits_mode != GM_LOGITS_NONE;
    }
    gm_status st;
    if ((st = ensure_rows(c, rows)))
        return st;
    int64_t r = 0, t0 = 0, H = m->hidden_size;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if ((s->logits_mode == GM_LOGITS_ALL && full) || s->logits_mode == GM_LOGITS_VERIFY)
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
    int64_t vo = 0; /* the next verify sample's index in out->verify */
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->logits_mode == GM_LOGITS_NONE) {
            sampled[i] = -1;
            continue;
        }
        if (s->logits_mode == GM_LOGITS_VERIFY) {
            sampled[i] = verify_rows(c, s, lg + r * V, out && out->verify ? out->verify + vo : NULL);
            r += s->n_tokens;
            vo += s->n_tokens;
            continue;
        }
        r += s->logits_mode == GM_LOGITS_ALL && full ? s->n_tokens : 1;
        uint64_t counter = (uint64_t)s->start_pos + (uint64_t)s->n_tokens;
        sampled[i] = sample_row(c, s, c->pen_flags[i], lg + (r - 1) * V,
                                out && out->logprobs ? &out->logprobs[i] : NULL, counter);
    }
    return GM_OK;
}

/* Check a step of resolved entries and lay out its ids and positions; *T its tokens, *rows its
 * logits rows. */
static gm_status step_prep(cpu_engine *c, const gm_seq_step *seqs, int32_t n_seqs, const gm_step_out *out, int64_t *T,
                           int64_t *rows)
{
    gm_status st = gm_engine_check_step(&c->base, seqs, n_seqs, out, T, rows);
    if (st || *T == 0 || (st = ensure_tokens(c, *T)))
        return st;
    int64_t t0 = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        for (int32_t t = 0; t < seqs[i].n_tokens; t++) {
            c->ids[t0 + t] = seqs[i].tokens[t];
            c->pos[t0 + t] = seqs[i].start_pos + t;
        }
        t0 += seqs[i].n_tokens;
    }
    return GM_OK;
}

/* A checked, laid-out step (step_prep) of T tokens and `rows` logits rows: the forward pass, then rank 0
 * samples and every rank learns the samples. */
static gm_status cpu_forward_sample(cpu_engine *c, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out,
                                    int64_t T, int64_t rows)
{
    gm_engine *e = &c->base;
    const gm_model_config *m = &e->cfg;
    gm_status st;
    int64_t H = m->hidden_size;
    cpu_embed(c->w.embed.data, c->w.embed.dtype, H, c->ids, T, gm_config_normalizer(m), c->h);
    for (int32_t l = 0; l < m->num_layers; l++)
        if ((st = layer_forward(c, l, seqs, n_seqs, T)))
            return st;

    /* Only rank 0 computes logits and samples (only the sampled rows unless
     * out->logits wants more); the ids then go to every rank. Every step's tokens
     * go into the penalties' histories, those of steps that sample nothing too. */
    if (e->opts.tp_rank == 0 && (st = pen_record(c, seqs, n_seqs)))
        return st;
    if (rows == 0)
        return GM_OK;
    int32_t *sampled = c->feed.sampled;
    if (e->opts.tp_rank == 0 && (st = cpu_sample_rows(c, seqs, n_seqs, out, rows, sampled)))
        return st;
    if (e->opts.tp_size > 1 && (st = gm_comm_broadcast(e->opts.comm, sampled, (int64_t)n_seqs * 4)))
        return st;
    gm_feed_record(&c->feed, seqs, n_seqs, sampled);
    if (out && out->tokens)
        memcpy(out->tokens, sampled, (size_t)n_seqs * sizeof *sampled);
    return GM_OK;
}

static gm_status cpu_step(gm_engine *e, const gm_seq_step *seqs_in, int32_t n_seqs, gm_step_out *out)
{
    cpu_engine *c = (cpu_engine *)e;
    const gm_seq_step *seqs = NULL;
    gm_status st = gm_feed_resolve(&c->feed, seqs_in, n_seqs, &seqs);
    if (st)
        return st;
    int64_t T = 0, rows = 0;
    if ((st = step_prep(c, seqs, n_seqs, out, &T, &rows))) /* the checks, and the ids and positions */
        return st;
    if ((st = gm_pen_step(&c->pen, seqs, n_seqs, c->pen_flags)))
        return st;
    if (T == 0)
        return GM_OK;
    st = cpu_forward_sample(c, seqs, n_seqs, out, T, rows);
    if (st)
        gm_pen_forget(&c->pen); /* a step that failed part way: no history is trusted */
    return st;
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
    gm_pen_free(&c->pen);
    if (c->hist)
        for (int32_t i = 0; i < c->base.opts.max_seqs; i++)
            free(c->hist[i]);
    free(c->hist), free(c->pen_flags), free(c->cnt), free(c->work);
    gm_linears_free(c->lin, c->lin ? (int64_t)c->base.cfg.num_layers * GM_LIN_COUNT : 0);
    free(c->lin);
    gm_weights_release(&c->w);
    st_model_destroy(&c->model);
    free(c);
}

/* Copy-on-write: each copy moves one block of every layer's K and V (f32). */
static gm_status cpu_copy_blocks(gm_engine *e, const gm_block_copy *copies, int32_t n)
{
    cpu_engine *c = (cpu_engine *)e;
    int64_t block_bytes = c->kv_w * e->opts.kv_block_size * (int64_t)sizeof(float);
    cpu_kv_copy_blocks(c->kv, 2 * (int64_t)e->cfg.num_layers, c->layer_elems * (int64_t)sizeof(float), block_bytes,
                       &copies[0].src, n);
    return GM_OK;
}

static const gm_engine_ops g_cpu_ops = {cpu_step, cpu_destroy, cpu_copy_blocks};

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
    gm_quant_config qc; /* an AWQ checkpoint is recognised by its quantization config (a GGUF has none) */
    gm_status st = gm_checkpoint_config(o->model_dir, &cfg);
    if (st || (st = gm_quant_config_load(o->model_dir, &qc)))
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
    if ((st = gm_checkpoint_load(o->model_dir, &cfg, &c->model))) /* a directory, or a GGUF dequantized */
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
    if ((st = gm_feed_init(&c->feed, o->max_seqs)) || (st = gm_pen_init(&c->pen, o->max_seqs)))
        goto fail;
    c->pen_flags = calloc((size_t)(o->max_seqs > 0 ? o->max_seqs : 1), 1);
    c->hist = calloc((size_t)(o->max_seqs > 0 ? o->max_seqs : 1), sizeof *c->hist);
    c->cnt = calloc((size_t)cfg.vocab_size, sizeof *c->cnt);
    c->work = malloc((size_t)cfg.vocab_size * sizeof *c->work);
    if (!c->pen_flags || !c->hist || !c->cnt || !c->work) {
        st = gm_fail(GM_ERR_NOMEM, "cpu backend: no memory for the sampler's state");
        goto fail;
    }
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

/* ---------------------------------------------------------------- extras (engine_cpu.h) */

/* e as a CPU engine of one rank, or NULL after gm_fail. */
static cpu_engine *as_cpu(gm_engine *e, const char *what)
{
    if (!e || e->ops != &g_cpu_ops || e->opts.tp_size != 1) {
        gm_fail(GM_ERR_INVALID_ARG, "%s: needs a CPU engine of one rank", what);
        return NULL;
    }
    return (cpu_engine *)e;
}

gm_status gm_engine_cpu_create_calib(const char *model, int64_t n_seq, int64_t S, gm_engine **out)
{
    *out = NULL;
    if (n_seq < 1 || S < 1 || n_seq * S > INT32_MAX || n_seq > INT32_MAX)
        return gm_fail(GM_ERR_INVALID_ARG, "calibration engine: %lld sequences of %lld tokens", (long long)n_seq,
                       (long long)S);
    gm_engine_opts eo;
    gm_engine_opts_init(&eo);
    eo.backend = GM_BACKEND_CPU;
    eo.model_dir = model;
    eo.kv_num_blocks = n_seq * ((S + eo.kv_block_size - 1) / eo.kv_block_size);
    eo.max_seqs = (int32_t)n_seq;
    eo.max_tokens = (int32_t)(n_seq * S);
    eo.max_context = (int32_t)S;
    return gm_engine_create(&eo, out);
}

gm_status gm_engine_cpu_set_tap(gm_engine *e, gm_cpu_tap_fn fn, void *ctx)
{
    cpu_engine *c = as_cpu(e, "gm_engine_cpu_set_tap");
    if (!c)
        return GM_ERR_INVALID_ARG;
    c->tap = fn;
    c->tap_ctx = ctx;
    return GM_OK;
}

const st_model *gm_engine_cpu_model(const gm_engine *e)
{
    return e && e->ops == &g_cpu_ops ? ((const cpu_engine *)e)->model : NULL;
}

gm_status gm_engine_cpu_embed(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, float *h)
{
    cpu_engine *c = as_cpu(e, "gm_engine_cpu_embed");
    int64_t T = 0, rows = 0;
    gm_status st = c ? step_prep(c, seqs, n_seqs, NULL, &T, &rows) : GM_ERR_INVALID_ARG;
    if (!st && T > 0)
        cpu_embed(c->w.embed.data, c->w.embed.dtype, e->cfg.hidden_size, c->ids, T, gm_config_normalizer(&e->cfg),
                  h);
    return st;
}

/* A layer index in range, or GM_ERR_INVALID_ARG. */
static gm_status check_layer(const gm_engine *e, int32_t layer)
{
    if (layer < 0 || layer >= e->cfg.num_layers)
        return gm_fail(GM_ERR_INVALID_ARG, "cpu engine: layer %d of %d", (int)layer, (int)e->cfg.num_layers);
    return GM_OK;
}

gm_status gm_engine_cpu_layer(gm_engine *e, int32_t layer, const gm_seq_step *seqs, int32_t n_seqs, float *h)
{
    cpu_engine *c = as_cpu(e, "gm_engine_cpu_layer");
    int64_t T = 0, rows = 0;
    gm_status st = c ? check_layer(e, layer) : GM_ERR_INVALID_ARG;
    if (st || (st = step_prep(c, seqs, n_seqs, NULL, &T, &rows)) || T == 0)
        return st;
    size_t n = (size_t)(T * e->cfg.hidden_size);
    memcpy(c->h, h, n * sizeof(float));
    if (!(st = layer_forward(c, layer, seqs, n_seqs, T)))
        memcpy(h, c->h, n * sizeof(float));
    return st;
}

gm_status gm_engine_cpu_block(gm_engine *e, int32_t layer, gm_cpu_block blk, const gm_linear *lin,
                              const gm_seq_step *seqs, int32_t n_seqs, const float *x, float *out)
{
    cpu_engine *c = as_cpu(e, "gm_engine_cpu_block");
    int64_t T = 0, rows = 0;
    gm_status st = c ? check_layer(e, layer) : GM_ERR_INVALID_ARG;
    if (!st && blk != GM_CPU_BLOCK_ATTN && blk != GM_CPU_BLOCK_MLP)
        st = gm_fail(GM_ERR_INVALID_ARG, "gm_engine_cpu_block: block %d", (int)blk);
    if (st || (st = step_prep(c, seqs, n_seqs, NULL, &T, &rows)) || T == 0)
        return st;
    if (!lin)
        lin = c->lin + (int64_t)layer * GM_LIN_COUNT;
    int64_t n = T * e->cfg.hidden_size;
    memcpy(c->x, x, (size_t)n * sizeof(float));
    st = blk == GM_CPU_BLOCK_ATTN ? attn_block(c, layer, lin, seqs, n_seqs, T) : mlp_block(c, layer, lin, T);
    for (int64_t i = 0; !st && i < n; i++)
        out[i] = (float)c->part[i];
    return st;
}
