/* engine_cuda_forward.cu - the Gemma 1/2/3 forward pass of one step on one GPU (one tensor-parallel rank).
 *
 * cu_forward reads as the model: embed; per layer norm, q|k|v, (QK-norm,) RoPE + KV write + attention, o,
 * residual + norm, gate|up + GeGLU, down; final norm, LM head (soft-capped for Gemma 2), sample. Gemma 2/3's
 * sandwich norms ride on the residual add: the norm of o_proj's (down_proj's) output, the add and the next
 * norm are one kernel (norm()). Each layer carries its attention options (scale, soft-cap, window) and its
 * RoPE table (cu_layer); the kernels take the options' Gemma 1 code where they are off. Two helpers hide the
 * kernel choices:
 * - linear(): y = x . W^T in W's format (bf16: cuBLASLt or the GEMV; FP8: static or dynamic activation
 *   scale; AWQ: W4A16). The quantization of an FP8 product's input rides on the kernel that writes it
 *   when it can (norm(), attention(), linear_geglu()); linear() quantizes bf16 rows itself otherwise.
 * - attention(): the decode rows by the kernel the plan names (cu_decode_uses_xqa, the one measured rule),
 *   the prompt rows by the prefill kernel the rule names (cu_prefill_rule: the Hopper kernel where it serves).
 * Tensor-parallel ranks all-reduce (NCCL, float32) after o_proj and down_proj; rank 0 computes the logits
 * and samples, and broadcasts the tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../kernels/cuda/attn_decode.cuh"
#include "../kernels/cuda/attn_prefill.cuh"
#include "../kernels/cuda/attn_prefill_hopper.cuh"
#include "../kernels/cuda/cuda_check.h"
#include "../kernels/cuda/embed.cuh"
#include "../kernels/cuda/geglu.cuh"
#include "../kernels/cuda/norm.cuh"
#include "../kernels/cuda/rope_kv.cuh"
#include "../kernels/cuda/sample.cuh"
#include "engine_cuda_internal.h"

void cu_prof_mark(cuda_engine *c, int op)
{
    prof_state *p = &c->prof;
    if (!p->on || p->n >= PROF_MAX)
        return;
    if (!p->ev[p->n] && cudaEventCreate(&p->ev[p->n]) != cudaSuccess)
        return;
    /* inside a capture an event record becomes a graph node only as an "external" record */
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(c->stream, &cs);
    unsigned fl = cs == cudaStreamCaptureStatusActive ? cudaEventRecordExternal : cudaEventRecordDefault;
    if (cudaEventRecordWithFlags(p->ev[p->n], c->stream, fl) == cudaSuccess)
        p->op[p->n++] = op;
    else
        (void)cudaGetLastError(); /* a failed mark must not surface as a later kernel's error */
}

/* ---------------------------------------------------------------- the measured decode-attention rule */

/* XQA (1) or k_attn_decode (0) for a decode batch of `rows` rows. XQA reads MHA's KV at the copy rate from
 * 2 rows and MQA/GQA's from XQA_MIN_BATCH rows (bench/history/NOTES.md runs F-K, bench/RESULTS.md); below that
 * k_attn_decode (bf16, with RoPE and the KV write folded in) and k_attn_decode_fp8 answer sooner at the
 * contexts batch-1 chat sees (7b batch 1: 338 vs 328 tok/s at 128-256 tokens, runs J-K; XQA wins past ~2k
 * tokens).
 * Shapes k_attn_decode does not serve (1, 2, 4 or 8 query heads per KV head; head_dim 32..256) take XQA. */
int cu_decode_uses_xqa(const cuda_engine *c, int32_t rows)
{
    int64_t g = c->nq / c->nkv;
    int split_ok = c->nq % c->nkv == 0 && (g == 1 || g == 2 || g == 4 || g == 8) &&
                   (c->hd == 32 || c->hd == 64 || c->hd == 128 || c->hd == 256);
    if (!split_ok || c->opt.attn == GM_CUDA_ATTN_XQA)
        return 1;
    return c->opt.attn == GM_CUDA_ATTN_AUTO && (g == 1 ? rows >= 2 : rows >= XQA_MIN_BATCH);
}

/* XQA's split count for a batch of `rows` rows reading up to ctx keys. */
static int32_t xqa_splits(const cuda_engine *c, int32_t rows, int32_t ctx)
{
    k_xqa_params p;
    memset(&p, 0, sizeof p);
    p.batch = rows, p.q_len = 1, p.n_heads = (int32_t)c->nq, p.n_kv = (int32_t)c->nkv, p.head_dim = (int32_t)c->hd;
    p.kv_type = c->kv8 ? XQA_KV_FP8 : XQA_KV_BF16, p.block_size = c->base.opts.kv_block_size;
    int32_t nb = k_xqa_pick_sub_seq(&p, ctx, c->n_sm);
    return nb < 1 ? 1 : nb;
}

void cu_attn_plan_splits(const cuda_engine *c, cu_attn_plan *p)
{
    const int32_t ctx = c->base.opts.max_context, ctx_w = c->window > 0 && c->window < ctx ? c->window : ctx;
    if (p->xqa) {
        p->n_split = xqa_splits(c, p->rows, ctx), p->n_split_w = xqa_splits(c, p->rows, ctx_w);
    } else {
        p->n_split = k_attn_decode_splits(p->rows, (int32_t)c->nkv, ctx, c->n_sm);
        p->n_split_w = k_attn_decode_splits(p->rows, (int32_t)c->nkv, ctx_w, c->n_sm);
    }
}

void cu_attn_plan_eager(const cuda_engine *c, int32_t rows, cu_attn_plan *p)
{
    memset(p, 0, sizeof *p);
    p->rows = rows;
    if (rows <= 0)
        return;
    p->xqa = cu_decode_uses_xqa(c, rows);
    cu_attn_plan_splits(c, p);
    if (p->xqa)
        p->scratch = c->xqa_scratch, p->scratch_bytes = c->xqa_bytes, p->clear = 1;
}

/* ---------------------------------------------------------------- the prefill-attention rule */

/* The prompt rows of every step (prompt chunks, chunked prefill, the prefill rows of mixed steps) go through
 * k_attn_prefill_hopper (wgmma + TMA, warp-specialised: the FlashAttention-3 design) wherever it serves the
 * engine: an sm_90 device, head_dim 128 or 256, a bf16 pool whose block size shares a multiple of 8 rows with
 * its key tile (FP8 pools: any), a pool of fewer than 2^31 rows per layer; else through k_attn_prefill_kv
 * (mma.sync). An FP8 pool runs both GEMMs on e4m3 tensor cores (QGMMA, twice the f16 rate: issue 18's FP8
 * target) where that variant serves (a block size sharing a multiple of 8 rows with its 128-key tile), else on
 * f16 tensor cores after an exact conversion. Why: bench/NOTES_PREFILL.md (the mma.sync kernel reached 57-108
 * TFLOP/s at head_dim 256, torch's cuDNN SDPA 371-641 on the same H100). */
gm_status cu_prefill_rule(cuda_engine *c, gm_cuda_prefill mode)
{
    if (mode != GM_CUDA_PREFILL_AUTO && mode != GM_CUDA_PREFILL_MMA && mode != GM_CUDA_PREFILL_HOPPER &&
        mode != GM_CUDA_PREFILL_HOPPER_E4M3)
        return gm_fail(GM_ERR_INVALID_ARG, "cuda engine: prefill attention mode %d (0, 1, 2 or 3)", (int)mode);
    const int32_t bs = c->base.opts.kv_block_size, hd = (int32_t)c->hd;
    const int64_t pool_rows = c->base.kv_num_blocks * c->nkv * bs;
    const int serves = k_attn_prefill_hopper_supported(hd, bs, c->kv8) && pool_rows < INT32_MAX;
    const int serves8 = serves && c->kv8 && k_attn_prefill_hopper_e4m3_supported(hd, bs);
    if ((mode == GM_CUDA_PREFILL_HOPPER && !serves) || (mode == GM_CUDA_PREFILL_HOPPER_E4M3 && !serves8))
        return gm_fail(GM_ERR_UNSUPPORTED, "cuda engine: the Hopper prefill kernel%s does not serve this engine "
                       "(needs an sm_90 device, head_dim 128 or 256 (here %d), block size %d sharing a multiple of 8 "
                       "rows with the key tile, a pool under 2^31 rows per layer (%lld)%s)",
                       mode == GM_CUDA_PREFILL_HOPPER_E4M3 ? " on e4m3 tensor cores" : "", hd, bs,
                       (long long)pool_rows, mode == GM_CUDA_PREFILL_HOPPER_E4M3 ? ", an FP8 KV cache" : "");
    c->opt.prefill = mode;
    c->opt.prefill_hopper = mode != GM_CUDA_PREFILL_MMA && serves;
    c->opt.prefill_e4m3 = (mode == GM_CUDA_PREFILL_AUTO || mode == GM_CUDA_PREFILL_HOPPER_E4M3) && serves8;
    return GM_OK;
}

/* ---------------------------------------------------------------- the steps of a layer */

/* Rows [T, K] entering a product: bf16 (x, row stride ld), or the e4m3 codes a fused producer already
 * wrote (scale: their dequant scale [1] f32). q8 [T, K] e4m3: where linear() quantizes bf16 rows. */
typedef struct cu_rows {
    const void *x;
    int64_t ld;
    const float *scale;
    uint8_t *q8;
} cu_rows;

/* How the input of FP8 product w is quantized: its static scale, or a dynamic one computed into act_sc. */
static k_fp8_act act_quant(const cuda_engine *c, const cu_linear *w)
{
    k_fp8_act q;
    if (w->act_slot < 0 || c->static_act) {
        q.scale = w->in_scale, q.amax = NULL, q.tmp = NULL;
        return q;
    }
    q.scale = c->act_sc + w->act_slot * SC_STRIDE;
    q.amax = c->act_sc + 4 * SC_STRIDE;
    q.tmp = c->act_tmp;
    return q;
}

/* y [T, N] = x [T, K] . W^T in W's format; y bf16, or f32 when y_f32 (the tensor-parallel partial sums),
 * row stride ldy. */
static gm_status linear(cuda_engine *c, const cu_linear *w, const cu_rows *x, int64_t T, void *y, int y_f32,
                        int64_t ldy)
{
    cudaStream_t s = c->stream;
    if (w->fmt == CU_W_FP8) {
        const void *xq = x->x;
        int64_t ldx = x->ld;
        const float *xs = x->scale;
        if (!xs) { /* bf16 rows: quantize them for this product */
            k_fp8_act q = act_quant(c, w);
            GM_CHECK(k_fp8_quantize(x->x, x->ld, T, w->K, &q, x->q8, s));
            xq = x->q8, ldx = w->K, xs = q.scale;
        }
        return k_gemm_fp8(c->gemm8, xq, T, w->K, ldx, xs, w->w8, w->K, w->w_scale, w->N, y, y_f32, ldy, s);
    }
    if (w->fmt == CU_W_AWQ) {
        if (y_f32)
            return gm_fail(GM_ERR_UNSUPPORTED, "cuda engine: the W4A16 products write bf16 only");
        return k_gemm_awq(x->x, T, x->ld, &w->awq, y, ldy, w->ws, w->ws_bytes, s);
    }
    return k_gemm_bf16(c->gemm, x->x, T, w->K, x->ld, w->w, w->K, w->N, y, y_f32, ldy, s);
}

/* h += delta (not when delta is NULL: the first layer; Gemma 2/3: h += RMSNorm(delta) * dw1, dw1 the sandwich
 * norm of the sub-block that wrote delta), then RMSNorm(h) * (1 + w) as the input rows of product `to` (NULL:
 * the LM head): e4m3 codes under its activation scale when it runs FP8 weights (c->xq8), else bf16 (c->xn). */
static gm_status norm(cuda_engine *c, const void *delta, const float *dw1, const float *w1, const cu_linear *to,
                      int64_t T, cu_rows *x)
{
    cudaStream_t s = c->stream;
    int64_t H = c->H;
    int df = c->delta_f32;
    x->ld = H, x->q8 = c->xq8;
    if (to && to->fmt == CU_W_FP8) {
        k_fp8_act q = act_quant(c, to);
        x->x = c->xq8, x->scale = q.scale;
        if (!delta)
            return k_rmsnorm_fp8(c->h, H, w1, T, H, c->eps, &q, c->xq8, s);
        if (dw1)
            return k_norm_add_rmsnorm_fp8(c->h, delta, df, dw1, w1, T, H, c->eps, &q, c->xq8, s);
        return k_add_rmsnorm_fp8(c->h, delta, df, w1, T, H, c->eps, &q, c->xq8, s);
    }
    x->x = c->xn, x->scale = NULL;
    if (!delta)
        return k_rmsnorm(c->h, H, w1, T, H, c->eps, c->xn, H, s);
    if (dw1)
        return k_norm_add_rmsnorm(c->h, delta, df, dw1, w1, T, H, c->eps, c->xn, s);
    return k_add_rmsnorm(c->h, delta, df, w1, T, H, c->eps, c->xn, s);
}

/* The step's XQA scratch shared by all batch sizes: clear its split semaphores before the first layer. */
static gm_status attention_prepare(cuda_engine *c, const fwd_args *a)
{
    if (a->dec.xqa && a->dec.clear)
        GM_CUDA_CHECK(cudaMemsetAsync(a->dec.scratch, 0, c->xqa_sem_bytes, c->stream));
    return GM_OK;
}

/* Decode rows [0, p->rows) of layer y through XQA (one query row each). */
static gm_status attention_xqa(cuda_engine *c, const fwd_args *a, const cu_layer *y, const void *kp, const void *vp,
                               float kvs)
{
    const cu_attn_plan *p = &a->dec;
    k_xqa_params x;
    memset(&x, 0, sizeof x);
    x.q = c->qkv, x.ldq = c->n_qkv, x.out = c->att, x.ldo = c->nq * c->hd;
    x.k_pool = kp, x.v_pool = vp, x.kv_type = c->kv8 ? XQA_KV_FP8 : XQA_KV_BF16;
    x.block_tables = a->m.bt, x.bt_stride = c->max_blocks, x.seq_lens = a->m.ctx_len;
    x.batch = p->rows, x.q_len = 1, x.n_heads = (int32_t)c->nq, x.n_kv = (int32_t)c->nkv;
    x.head_dim = (int32_t)c->hd, x.block_size = c->base.opts.kv_block_size, x.kv_scale = kvs;
    x.scale = y->attn.scale, x.softcap = y->attn.softcap, x.window = y->attn.window;
    x.nb_sub_seq = y->attn.window > 0 ? p->n_split_w : p->n_split;
    x.scratch = p->scratch, x.scratch_bytes = p->scratch_bytes;
    return k_attn_decode_xqa(&x, c->stream);
}

/* The prompt chunks of a step (its sequences after the a->dec.rows decode rows; q rows c->qkv, positions
 * start_pos.., their K/V already in the pool) into c->att: the kernel the rule names (c->opt.prefill_hopper),
 * with the layer's options po (scale, soft-cap, window; the KV format). */
static gm_status attention_prefill(cuda_engine *c, const fwd_args *a, const void *kp, const void *vp,
                                   const k_prefill_opts *po)
{
    const meta_ptrs *m = &a->m;
    const int32_t nd = a->dec.rows, ns = a->S - nd, nq = (int32_t)c->nq, nkv = (int32_t)c->nkv, hd = (int32_t)c->hd;
    const int32_t bs = c->base.opts.kv_block_size, *bt = m->bt + (int64_t)nd * c->max_blocks;
    const int64_t qw = c->nq * c->hd;
    if (c->opt.prefill_hopper) {
        k_prefill_opts o = *po;
        o.kv_fp8_mma = c->opt.prefill_e4m3;
        return k_attn_prefill_hopper(c->qkv, c->n_qkv, a->T, ns, m->q_start + nd, m->n_new + nd, m->start_pos + nd,
                                     a->max_new, nq, nkv, hd, kp, vp, bs, (int32_t)c->base.kv_num_blocks, bt,
                                     c->max_blocks, &o, c->att, qw, c->stream);
    }
    const k_attn_opts ko = {po->scale, po->softcap, po->window};
    return k_attn_prefill_kv(c->qkv, c->n_qkv, ns, m->q_start + nd, m->n_new + nd, m->start_pos + nd, a->max_new, nq,
                             nkv, hd, kp, vp, bs, bt, c->max_blocks, &ko, c->att, qw, po->kv_fp8, po->kv_scale,
                             c->stream);
}

/* Layer l's attention over the step's T query rows: (Gemma 3: QK-norm,) RoPE on q and k (c->qkv [T, n_qkv];
 * the layer's table), the new K and V into the pool, then softmax(s) V into c->att [T, nq hd] bf16, s = the
 * layer's scaled (soft-capped) scores over its causal (sliding) window. The first a->dec.rows rows decode one
 * token each (XQA, or k_attn_decode / _fp8; a decode step on a bf16 pool folds QK-norm, RoPE and the KV write
 * into k_attn_decode_rope); the others are prompt chunks (attention_prefill). *out: o_proj's input rows,
 * already e4m3 when a decode kernel wrote them under o's static activation scale. */
static gm_status attention(cuda_engine *c, const fwd_args *a, int32_t l, const cu_linear *o, cu_rows *out)
{
    cudaStream_t s = c->stream;
    const meta_ptrs *m = &a->m;
    const cu_attn_plan *p = &a->dec;
    const cu_layer *y = &c->layers[l];
    const k_attn_opts *ao = &y->attn;
    const int32_t nq = (int32_t)c->nq, nkv = (int32_t)c->nkv, hd = (int32_t)c->hd, bs = c->base.opts.kv_block_size;
    const int32_t ns = ao->window > 0 ? p->n_split_w : p->n_split; /* the decode kernels' splits */
    const int64_t qw = c->nq * c->hd;
    const size_t esz = c->kv8 ? 1 : 2;
    char *kp = (char *)c->kv + (size_t)l * 2 * (size_t)c->layer_elems * esz, *vp = kp + (size_t)c->layer_elems * esz;
    const float kvs = y->kv_scale;
    const k_qk_norm qkn = {y->q_norm, y->k_norm, c->eps}, *qn = y->q_norm ? &qkn : NULL;
    /* a decode step's split kernel writes o_proj's e4m3 input itself under a static activation scale */
    const k_fp8_act oq = o->fmt == CU_W_FP8 ? act_quant(c, o) : k_fp8_act{NULL, NULL, NULL};
    const int att8 = o->fmt == CU_W_FP8 && oq.amax == NULL && a->decode && !p->xqa;
    out->x = att8 ? (const void *)c->attq8 : (const void *)c->att, out->ld = qw;
    out->scale = att8 ? oq.scale : NULL, out->q8 = c->attq8;
    if (a->decode && !p->xqa && !c->kv8) /* QK-norm, RoPE and the KV write happen inside the attention kernel */
        return k_attn_decode_rope(c->qkv, c->n_qkv, p->rows, nq, nkv, hd, kp, vp, bs, m->bt, c->max_blocks,
                                  m->ctx_len, m->slot, y->rope, qn, ao, ns, c->dec_scratch, c->att, qw,
                                  att8 ? c->attq8 : NULL, att8 ? oq.scale : NULL, s);
    /* (QK-norm,) RoPE on q and k; the bf16 pool is written here, the FP8 one by k_kv_write_fp8 */
    const int32_t *slots = c->kv8 ? c->neg_slots : m->slot;
    if (qn)
        GM_CHECK(k_rope_kv_write_qkn(c->qkv, c->n_qkv, a->T, nq, nkv, hd, m->pos, y->rope, qn, slots, kp, vp, bs, s));
    else
        GM_CHECK(k_rope_kv_write(c->qkv, c->n_qkv, a->T, nq, nkv, hd, m->pos, y->rope, slots, kp, vp, bs, s));
    if (c->kv8)
        GM_CHECK(k_kv_write_fp8(c->qkv, c->n_qkv, a->T, nq, nkv, hd, m->slot, kvs, kp, vp, bs, s));
    cu_prof_mark(c, OP_ROPE_KV);
    if (p->rows > 0 && p->xqa)
        GM_CHECK(attention_xqa(c, a, y, kp, vp, kvs));
    else if (p->rows > 0 && c->kv8)
        GM_CHECK(k_attn_decode_fp8(c->qkv, c->n_qkv, p->rows, nq, nkv, hd, kp, vp, bs, m->bt, c->max_blocks,
                                   m->ctx_len, ao, kvs, ns, c->dec_scratch, c->att, qw, att8 ? c->attq8 : NULL,
                                   att8 ? oq.scale : NULL, s));
    else if (p->rows > 0)
        GM_CHECK(k_attn_decode(c->qkv, c->n_qkv, p->rows, nq, nkv, hd, kp, vp, bs, m->bt, c->max_blocks, m->ctx_len,
                               ao, ns, c->dec_scratch, c->att, qw, s));
    if (a->decode)
        return GM_OK;
    const k_prefill_opts po = {ao->scale, ao->softcap, ao->window, c->kv8, kvs, 0}; /* the layer's options, KV format */
    return attention_prefill(c, a, kp, vp, &po);
}

/* act = GeGLU(x . Wgu^T) (gate rows, then up rows) as the input rows of product `to` (down): for FP8 weights
 * e4m3 (at <= CU_GU_FUSED_ROWS rows where opt.gu_fused, the GeGLU in the FP8 GEMV v2's epilogue; else the
 * FP8 product into c->gu, then k_geglu_fp8), else bf16 (k_gemm_bf16_geglu: the GeGLU in the bf16 GEMV's
 * epilogue at few rows; AWQ: the product into c->gu, then k_geglu). */
static gm_status linear_geglu(cuda_engine *c, const cu_linear *gu, const cu_rows *x, const cu_linear *to, int64_t T,
                              cu_rows *act)
{
    cudaStream_t s = c->stream;
    const int64_t ni = c->ni, K = gu->K;
    act->x = c->act, act->ld = ni, act->scale = NULL, act->q8 = c->actq8;
    if (gu->fmt == CU_W_FP8) {
        if (!x->scale)
            return gm_fail(GM_ERR_INTERNAL, "cuda engine: FP8 gate|up needs e4m3 rows");
        const k_fp8_act aq = act_quant(c, to);
        act->x = c->actq8, act->scale = aq.scale;
        const int fused = T <= CU_GU_FUSED_ROWS && c->opt.gu_fused;
        if (fused && aq.amax == NULL)
            return k_gemv_fp8_v2_geglu_fp8(x->x, T, K, x->ld, x->scale, gu->w8, K, gu->w_scale, ni, aq.scale,
                                           c->actq8, ni, s);
        if (fused) { /* dynamic scales: the fused GeGLU to bf16, then the dynamic quantizer */
            GM_CHECK(k_gemv_fp8_v2_geglu(x->x, T, K, x->ld, x->scale, gu->w8, K, gu->w_scale, ni, c->act, ni, s));
            return k_fp8_quantize(c->act, ni, T, ni, &aq, c->actq8, s);
        }
        GM_CHECK(k_gemm_fp8(c->gemm8, x->x, T, K, x->ld, x->scale, gu->w8, K, gu->w_scale, 2 * ni, c->gu, 0, 2 * ni,
                            s));
        return k_geglu_fp8(c->gu, T, ni, &aq, c->actq8, s);
    }
    if (gu->fmt == CU_W_AWQ) {
        GM_CHECK(linear(c, gu, x, T, c->gu, 0, 2 * ni));
        return k_geglu(c->gu, T, ni, c->act, s);
    }
    return k_gemm_bf16_geglu(c->gemm, x->x, T, K, x->ld, gu->w, K, ni, c->gu, c->act, s);
}

/* Tensor-parallel ranks: delta [T, H] f32 summed over the ranks. */
static gm_status all_reduce(cuda_engine *c, int64_t T)
{
    if (!c->nccl)
        return GM_OK;
    GM_CHECK(gm_nccl_allreduce_f32(c->nccl, (float *)c->delta, T * c->H, c->stream));
    cu_prof_mark(c, OP_ALLREDUCE);
    return GM_OK;
}

gm_status cu_lm_head(cuda_engine *c, const bf16 *x, int64_t nr)
{
    cu_rows r = {x, c->H, NULL, c->lmq8};
    GM_CHECK(linear(c, &c->lm, &r, nr, c->logits, 1, c->V));
    if (c->final_softcap > 0.0f) /* Gemma 2: before sampling, and in the logits a step dumps */
        return k_logits_softcap(c->logits, c->V, c->V, (int32_t)nr, c->final_softcap, c->stream);
    return GM_OK;
}

/* Rank 0: the token of a's sampled rows r0 .. r0 + n from c->logits [n, V], with the rows' penalties,
 * min_tokens masks and log-probabilities (k_sample_aux; rows that ask for none of them cost nothing more).
 * Rows past the sequences' (verify entries' extra rows) ask for no penalties or log-probabilities. */
static gm_status sample(cuda_engine *c, const fwd_args *a, int32_t r0, int32_t n, cudaStream_t s)
{
    const meta_ptrs *m = &a->m;
    k_sample_aux x;
    memset(&x, 0, sizeof x);
    x.ids = m->ids, x.q_start = m->q_start + r0, x.n_new = m->n_new + r0, x.start_pos = m->start_pos + r0;
    x.slot = m->pslot + r0, x.pen = m->pen + r0;
    x.keys = c->pen_keys, x.counts = c->pen_counts, x.raw = c->pen_raw, x.cap = c->pen_cap;
    x.mask_off = m->mask_off + r0, x.mask_n = m->mask_n + r0, x.mask_ids = m->mask_ids;
    cu_lp_layout(c->lp_d, c->base.opts.max_seqs, &x.lp, &x.top_ids, &x.top_lps);
    x.lp += r0, x.top_ids += (int64_t)r0 * GM_MAX_TOP_LOGPROBS, x.top_lps += (int64_t)r0 * GM_MAX_TOP_LOGPROBS;
    return k_sample_ex(c->logits, c->V, c->V, n, m->params + r0, m->counters + r0, m->tokens + r0, &x, s);
}

/* ---------------------------------------------------------------- the forward pass */

gm_status cu_forward(cuda_engine *c, const fwd_args *a)
{
    cudaStream_t s = c->stream;
    const meta_ptrs *m = &a->m;
    const int64_t T = a->T, H = c->H;
    const int df = c->delta_f32;
    cu_rows x, att, act;
    c->prof.n = 0;
    cu_prof_mark(c, -1);
    /* h [T, H] = embed[id] * normalizer; an id < 0 is the token its slot sampled on the device last step */
    GM_CHECK(k_resolve_ids(m->ids, m->tok_slot, T, c->last_tok, s));
    GM_CHECK(k_embed(c->embed, c->V, H, m->ids, T, c->normalizer, c->h, s));
    cu_prof_mark(c, OP_EMBED);
    GM_CHECK(attention_prepare(c, a));
    for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
        const cu_layer *y = &c->layers[l];
        /* attention block: h += o_proj(attention(rope(q), rope(k), v)), q|k|v = qkv_proj(norm(h)); the add of
         * the previous layer's down_proj output first (Gemma 2/3: normed by its post-feed-forward norm) */
        GM_CHECK(norm(c, l == 0 ? NULL : c->delta, l == 0 ? NULL : c->layers[l - 1].mlp_out_norm, y->in_norm,
                      &y->qkv, T, &x));
        cu_prof_mark(c, OP_NORM);
        GM_CHECK(linear(c, &y->qkv, &x, T, c->qkv, 0, c->n_qkv));
        cu_prof_mark(c, OP_QKV);
        GM_CHECK(attention(c, a, l, &y->o, &att));
        cu_prof_mark(c, OP_ATTN);
        GM_CHECK(linear(c, &y->o, &att, T, c->delta, df, H));
        cu_prof_mark(c, OP_O);
        GM_CHECK(all_reduce(c, T));
        /* MLP block: h += down(gelu_tanh(gate(x)) * up(x)), x = norm(h) (the add of o_proj's output first;
         * Gemma 2/3: normed by the post-attention norm) */
        GM_CHECK(norm(c, c->delta, y->attn_out_norm, y->post_norm, &y->gate_up, T, &x));
        cu_prof_mark(c, OP_NORM);
        GM_CHECK(linear_geglu(c, &y->gate_up, &x, &y->down, T, &act));
        cu_prof_mark(c, OP_GATE_UP);
        GM_CHECK(linear(c, &y->down, &act, T, c->delta, df, H));
        cu_prof_mark(c, OP_DOWN);
        GM_CHECK(all_reduce(c, T));
    }
    const float *last_out = c->layers[c->base.cfg.num_layers - 1].mlp_out_norm;
    GM_CHECK(norm(c, c->delta, last_out, c->final_norm, NULL, T, &x)); /* h += down's output; final norm -> c->xn */
    cu_prof_mark(c, OP_NORM);
    if (a->sample && a->decode) {
        /* a decode step: logits of every row, then the sampled tokens */
        GM_CHECK(cu_lm_head(c, c->xn, a->S));
        cu_prof_mark(c, OP_LM_HEAD);
        GM_CHECK(sample(c, a, 0, a->S, s));
    } else if (a->sample) {
        /* each sequence's last row, then the verify entries' earlier rows (meta_ptrs), cap_rows at a time */
        for (int32_t r0 = 0; r0 < a->R; r0 += (int32_t)c->cap_rows) {
            int32_t n = a->R - r0 < c->cap_rows ? a->R - r0 : (int32_t)c->cap_rows;
            GM_CHECK(k_gather_rows(c->xn, H, m->rows + r0, n, H, c->xs, s));
            GM_CHECK(cu_lm_head(c, c->xs, n));
            GM_CHECK(sample(c, a, r0, n, s));
        }
        cu_prof_mark(c, OP_LM_HEAD);
    }
    if (c->nccl)
        GM_CHECK(gm_nccl_broadcast_i32(c->nccl, m->tokens, a->R, 0, s));
    GM_CHECK(k_feed_tokens(m->tokens, m->sslot, a->R, c->last_tok, s));
    cu_prof_mark(c, OP_SAMPLE);
    return GM_OK;
}

/* ---------------------------------------------------------------- the prefill kernel's check at load */

/* Host bf16 of a float, round to nearest even. */
static uint16_t sc_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float sc_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* One prompt chunk (T rows at start_pos S0, so it attends to earlier rows in the pool too) through the kernel
 * the rule picked and through the mma.sync kernel, on this engine's head counts, block size, KV format and
 * layer 0's score options, with random inputs; *nerr = ||hopper - mma|| / ||mma||, NaN when either wrote NaN. */
static gm_status prefill_compare(cuda_engine *c, int e4m3, double *nerr)
{
    const int32_t nq = (int32_t)c->nq, nkv = (int32_t)c->nkv, hd = (int32_t)c->hd, bs = c->base.opts.kv_block_size;
    const int32_t T = 150, S0 = 90, n_tok = S0 + T, nb = (n_tok + bs - 1) / bs;
    const int64_t qw = (int64_t)nq * hd, pool_elems = (int64_t)nb * nkv * bs * hd, esz = c->kv8 ? 1 : 2;
    const k_attn_opts *ao = &c->layers[0].attn;
    const float kvs = 0.5f;
    uint16_t *qh = (uint16_t *)malloc((size_t)(T * qw) * 2);
    uint8_t *poolh = (uint8_t *)malloc((size_t)(2 * pool_elems * esz));
    uint16_t *o1 = (uint16_t *)malloc((size_t)(T * qw) * 2), *o2 = (uint16_t *)malloc((size_t)(T * qw) * 2);
    int32_t meta[3 + 64];
    void *d = NULL;
    gm_status st = GM_OK;
    if (!qh || !poolh || !o1 || !o2 || nb > 64) {
        st = gm_fail(GM_ERR_NOMEM, "cuda engine: prefill check buffers");
        goto done;
    }
    {
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (int64_t i = 0; i < T * qw; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            qh[i] = sc_bf16(((float)(x >> 40) / 16777216.0f - 0.5f) * 4.0f);
        }
        for (int64_t i = 0; i < 2 * pool_elems; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            float v = ((float)(x >> 40) / 16777216.0f - 0.5f) * 2.0f;
            if (c->kv8) { /* a finite e4m3 code: sign, exponent 0..14, any mantissa */
                uint8_t code = (uint8_t)((x >> 8) & 0x77u);
                poolh[i] = (uint8_t)((v < 0 ? 0x80u : 0u) | code);
            } else {
                ((uint16_t *)poolh)[i] = sc_bf16(v);
            }
        }
        meta[0] = 0, meta[1] = T, meta[2] = S0; /* q_start, n_new, start_pos */
        for (int32_t b = 0; b < nb; b++)
            meta[3 + b] = nb - 1 - b; /* a scattered table */
    }
    {
        const size_t qb = (size_t)(T * qw) * 2, pb = (size_t)(2 * pool_elems * esz), mb = sizeof meta;
        GM_CUDA_GOTO(cudaMalloc(&d, qb + pb + 2 * qb + mb + 256), st, done);
        char *q = (char *)d, *pool = q + qb, *out1 = pool + pb, *out2 = out1 + qb, *md = out2 + qb;
        const int32_t *dm = (const int32_t *)md;
        GM_CUDA_GOTO(cudaMemcpy(q, qh, qb, cudaMemcpyHostToDevice), st, done);
        GM_CUDA_GOTO(cudaMemcpy(pool, poolh, pb, cudaMemcpyHostToDevice), st, done);
        GM_CUDA_GOTO(cudaMemcpy(md, meta, mb, cudaMemcpyHostToDevice), st, done);
        GM_CUDA_GOTO(cudaMemset(out1, 0xff, 2 * qb), st, done); /* NaN: unwritten rows fail the check */
        const void *kp = pool, *vp = pool + pool_elems * esz;
        k_prefill_opts po = {ao->scale, ao->softcap, ao->window, c->kv8, kvs, e4m3};
        GM_GOTO(k_attn_prefill_hopper(q, qw, T, 1, dm, dm + 1, dm + 2, T, nq, nkv, hd, kp, vp, bs, nb, dm + 3, nb, &po,
                                      out1, qw, c->stream), st, done);
        GM_GOTO(k_attn_prefill_kv(q, qw, 1, dm, dm + 1, dm + 2, T, nq, nkv, hd, kp, vp, bs, dm + 3, nb, ao, out2, qw,
                                  c->kv8, kvs, c->stream), st, done);
        GM_CUDA_GOTO(cudaStreamSynchronize(c->stream), st, done);
        GM_CUDA_GOTO(cudaMemcpy(o1, out1, qb, cudaMemcpyDeviceToHost), st, done);
        GM_CUDA_GOTO(cudaMemcpy(o2, out2, qb, cudaMemcpyDeviceToHost), st, done);
        double num = 0, den = 0;
        for (int64_t i = 0; i < T * qw; i++) {
            double a = sc_from_bf16(o1[i]), b = sc_from_bf16(o2[i]);
            num += (a - b) * (a - b), den += b * b;
        }
        *nerr = den > 0 ? sqrt(num / den) : NAN; /* NaN anywhere makes num NaN */
    }
done:
    cudaFree(d);
    free(qh), free(poolh), free(o1), free(o2);
    if (st != GM_OK)
        cudaGetLastError(); /* a failed launch must not poison the engine's later checks */
    return st;
}

/* The Hopper prefill kernels are new: before the engine serves with them, check each variant the rule picked
 * against the mma.sync kernel on this device and this model's shapes, and fall back (with a warning) when one
 * fails to launch or disagrees (normalized error above 3e-2 on f16/bf16 tensor cores, 1.5e-1 with e4m3 Q and
 * P). Costs two small launches at load. */
gm_status cu_prefill_selfcheck(cuda_engine *c)
{
    if (!c->opt.prefill_hopper || c->opt.prefill != GM_CUDA_PREFILL_AUTO)
        return GM_OK; /* nothing new in use, or a test/bench forced a kernel on purpose */
    double e = NAN;
    if (c->opt.prefill_e4m3) {
        gm_status st = prefill_compare(c, 1, &e);
        if (st != GM_OK || !(e < 1.5e-1)) {
            GM_WARN("cuda engine: the e4m3 Hopper prefill kernel %s (error %.3g against mma.sync): using f16 tensor "
                    "cores for FP8 pools", st != GM_OK ? gm_last_error() : "disagrees", e);
            c->opt.prefill_e4m3 = 0;
            gm_clear_error();
        } else if (c->base.opts.verbose) {
            fprintf(stderr, "cuda engine: e4m3 Hopper prefill checked against mma.sync: error %.3g\n", e);
        }
    }
    if (!c->opt.prefill_e4m3) {
        e = NAN;
        gm_status st = prefill_compare(c, 0, &e);
        if (st != GM_OK || !(e < 3e-2)) {
            GM_WARN("cuda engine: the Hopper prefill kernel %s (error %.3g against mma.sync): prefill stays on "
                    "mma.sync", st != GM_OK ? gm_last_error() : "disagrees", e);
            c->opt.prefill_hopper = 0;
            gm_clear_error();
        } else if (c->base.opts.verbose) {
            fprintf(stderr, "cuda engine: Hopper prefill checked against mma.sync: error %.3g\n", e);
        }
    }
    return GM_OK;
}
