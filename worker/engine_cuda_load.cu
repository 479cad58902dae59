/* engine_cuda_load.cu - the CUDA engine's weights: device layout (per layer: q|k|v, o, gate|up and down
 * fused as engine_cuda_internal.h says, in the engine's one format), loading from a checkpoint (bf16/f16/f32
 * converted to bf16; FP8 quantized at load, or read as e4m3 from an FP8 checkpoint; AWQ int4 as stored),
 * the norms each family has (layer_norms: Gemma 2/3's sandwich, Gemma 3's QK-norm), random weights for
 * benchmarks, and the FP8 copy of the LM head.
 *
 * The loader converts rows on the host into two pinned 64 MiB staging buffers and copies them while the
 * next rows are converted (double buffering on the engine's stream). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/quant_fp8.h"
#include "../kernels/cuda/cuda_check.h"
#include "engine_cuda_internal.h"

#define STAGE_BYTES (64u << 20) /* each of the two pinned staging buffers of the loader */

typedef struct loader {
    void *stage[2];
    cudaEvent_t ev[2];
    int cur;
    int64_t done, total, next_report;
    int verbose;
} loader;

/* Convert n elements of a row (dtype dt) to bf16. */
static void row_to_bf16(const void *src, gm_dtype dt, int64_t n, uint16_t *dst, float *tmp)
{
    if (dt == GM_DT_BF16) {
        memcpy(dst, src, (size_t)n * 2);
        return;
    }
    gm_to_f32(dt, src, tmp, n);
    for (int64_t i = 0; i < n; i++)
        dst[i] = gm_f32_to_bf16(tmp[i]);
}

static void report(loader *L, int64_t add)
{
    L->done += add;
    if (L->verbose && (L->done >= L->next_report || L->done == L->total)) {
        fprintf(stderr, "cuda engine: weights %.2f / %.2f GB\n", (double)L->done / 1e9, (double)L->total / 1e9);
        L->next_report = L->done + (1ll << 30);
    }
}

/* Upload view v as rows [v.rows, v.cols] bf16 to dst (dense, row stride v.cols). */
static gm_status upload_view(cuda_engine *c, loader *L, const gm_wview *v, bf16 *dst)
{
    gm_status st = GM_OK;
    if (!v->data)
        return gm_fail(GM_ERR_UNSUPPORTED, "tensor %s: stored quantized (AWQ); the CUDA backend loads bf16/f16/f32 only",
                       v->full ? v->full->name : "?");
    size_t es = gm_dtype_size(v->dtype);
    int64_t row_bytes = v->cols * 2;
    int64_t rows_per = (int64_t)STAGE_BYTES / row_bytes;
    if (rows_per < 1)
        return gm_fail(GM_ERR_UNSUPPORTED, "tensor %s: a row of %lld bytes exceeds the staging buffer",
                       v->full ? v->full->name : "?", (long long)row_bytes);
    float *tmp = (float *)malloc((size_t)v->cols * sizeof(float));
    if (!tmp)
        return gm_fail(GM_ERR_NOMEM, "loader: no host memory");
    for (int64_t r0 = 0; r0 < v->rows; r0 += rows_per) {
        int64_t nr = v->rows - r0 < rows_per ? v->rows - r0 : rows_per;
        int b = L->cur;
        L->cur ^= 1;
        GM_CUDA_GOTO(cudaEventSynchronize(L->ev[b]), st, done);
        uint16_t *sg = (uint16_t *)L->stage[b];
        for (int64_t r = 0; r < nr; r++)
            row_to_bf16((const char *)v->data + (size_t)(r0 + r) * (size_t)v->ld * es, v->dtype, v->cols,
                        sg + r * v->cols, tmp);
        GM_CUDA_GOTO(cudaMemcpyAsync(dst + r0 * v->cols, sg, (size_t)(nr * row_bytes), cudaMemcpyHostToDevice,
                                     c->stream),
                     st, done);
        GM_CUDA_GOTO(cudaEventRecord(L->ev[b], c->stream), st, done);
        report(L, nr * v->cols * (int64_t)es);
    }
done:
    free(tmp);
    return st;
}

/* (1 + w) in float32 for a [1, H] norm weight. */
static gm_status upload_norm(cuda_engine *c, loader *L, const gm_wview *v, float *dst)
{
    if (!v->data)
        return gm_fail(GM_ERR_INVALID_ARG, "cuda engine: a norm weight of this %s checkpoint is missing",
                       c->base.cfg.family == GM_FAMILY_GEMMA1 ? "Gemma 1" : "Gemma 2/3");
    float *tmp = (float *)malloc((size_t)v->cols * sizeof(float));
    if (!tmp)
        return gm_fail(GM_ERR_NOMEM, "loader: no host memory");
    gm_to_f32(v->dtype, v->data, tmp, v->cols);
    for (int64_t i = 0; i < v->cols; i++)
        tmp[i] = 1.0f + tmp[i];
    cudaError_t e = cudaMemcpy(dst, tmp, (size_t)v->cols * sizeof(float), cudaMemcpyHostToDevice);
    free(tmp);
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "upload of %s: %s", v->full ? v->full->name : "norm", cudaGetErrorString(e));
    report(L, v->cols * (int64_t)gm_dtype_size(v->dtype));
    return GM_OK;
}

__global__ void fill_random_bf16(bf16 *p, int64_t n, uint64_t seed, float scale)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float u = gm_rng_uniform(seed, (uint64_t)i);
        p[i] = __float2bfloat16_rn((2.0f * u - 1.0f) * scale);
    }
}

__global__ void fill_random_norm(float *p, int64_t n, uint64_t seed)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = 1.0f + 0.1f * (gm_rng_uniform(seed, (uint64_t)i) - 0.5f);
}

gm_status cu_dev_alloc(void **p, size_t bytes, const char *what)
{
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        *p = NULL;
        return gm_fail(GM_ERR_NOMEM, "cuda engine: cannot allocate %.1f MiB of device memory for %s: %s",
                       (double)bytes / 1048576.0, what, cudaGetErrorString(e));
    }
    return GM_OK;
}

/* The norms of a layer in the engine's order (what is NULL for a family stays NULL), their length and the
 * checkpoint's view of each. */
enum { N_IN = 0, N_POST, N_ATTN_OUT, N_MLP_OUT, N_Q, N_K, N_COUNT };

static float **layer_norm_ptr(cu_layer *y, int i)
{
    float **p[N_COUNT] = {&y->in_norm, &y->post_norm, &y->attn_out_norm, &y->mlp_out_norm, &y->q_norm, &y->k_norm};
    return p[i];
}

/* Elements of norm i in this model (0: the family has none). */
static int64_t layer_norm_len(const cuda_engine *c, int i)
{
    const gm_model_config *m = &c->base.cfg;
    switch (i) {
    case N_IN:
    case N_POST: return c->H;
    case N_ATTN_OUT:
    case N_MLP_OUT: return m->sandwich_norm ? c->H : 0;
    default: return m->qk_norm ? c->hd : 0;
    }
}

/* The checkpoint's view of norm i (Gemma 1's pre-MLP norm is post_attention_layernorm, Gemma 2/3's
 * pre_feedforward_layernorm: worker/weights.h). */
static const gm_wview *layer_norm_view(const cuda_engine *c, const gm_layer_weights *lw, int i)
{
    const gm_wview *v[N_COUNT] = {&lw->input_norm, c->base.cfg.sandwich_norm ? &lw->pre_ffw_norm : &lw->post_norm,
                                  &lw->post_attn_norm, &lw->post_ffw_norm, &lw->q_norm, &lw->k_norm};
    return v[i];
}

/* Device memory of every norm of layer y. */
static gm_status alloc_norms(cuda_engine *c, cu_layer *y)
{
    for (int i = 0; i < N_COUNT; i++) {
        int64_t n = layer_norm_len(c, i);
        if (n == 0)
            continue;
        GM_CHECK(cu_dev_alloc((void **)layer_norm_ptr(y, i), (size_t)n * 4, "norms"));
        c->weight_bytes += n * 4;
    }
    return GM_OK;
}

/* Upload every norm of layer y from the checkpoint's views. */
static gm_status load_norms(cuda_engine *c, loader *L, const gm_layer_weights *lw, cu_layer *y)
{
    for (int i = 0; i < N_COUNT; i++)
        if (layer_norm_len(c, i) > 0)
            GM_CHECK(upload_norm(c, L, layer_norm_view(c, lw, i), *layer_norm_ptr(y, i)));
    return GM_OK;
}

/* The shapes (and FP8 scale slots) of layer y's products in format fmt. */
static void layer_shapes(const cuda_engine *c, cu_layer *y, cu_wfmt fmt)
{
    const int64_t N[P_COUNT] = {c->n_qkv, c->H, 2 * c->ni, c->H}, K[P_COUNT] = {c->H, c->nq * c->hd, c->H, c->ni};
    for (int i = 0; i < P_COUNT; i++) {
        cu_linear *w = cu_layer_linear(y, i);
        w->fmt = fmt, w->N = N[i], w->K = K[i];
        w->act_slot = i;
    }
}

/* FP8: the products' weight scales and static activation scales point into the layer's wsc. */
static void layer_scales(cu_layer *y)
{
    for (int i = 0; i < P_COUNT; i++) {
        cu_linear *w = cu_layer_linear(y, i);
        w->w_scale = y->wsc + i * SC_STRIDE;
        w->in_scale = y->wsc + (P_COUNT + i) * SC_STRIDE;
    }
}

gm_status cu_weights_alloc(cuda_engine *c)
{
    int32_t nl = c->base.cfg.num_layers;
    c->layers = (cu_layer *)calloc((size_t)nl, sizeof(cu_layer));
    if (!c->layers)
        return gm_fail(GM_ERR_NOMEM, "cuda engine: no host memory");
    int64_t H = c->H;
    for (int32_t l = 0; l < nl; l++) {
        c->layers[l].kv_scale = 1.0f; /* an FP8 checkpoint's k_scale/v_scale replace it (load_fp8_ckpt) */
        layer_shapes(c, &c->layers[l], c->wfmt);
    }
    GM_CHECK(cu_dev_alloc((void **)&c->embed, (size_t)(c->V * H * 2), "the embedding"));
    GM_CHECK(cu_dev_alloc((void **)&c->final_norm, (size_t)H * 4, "norms"));
    c->lm.fmt = CU_W_BF16, c->lm.N = c->V, c->lm.K = H, c->lm.w = c->embed, c->lm.act_slot = -1;
    c->weight_bytes = c->V * H * 2 + H * 4;
    for (int32_t l = 0; l < nl; l++)
        GM_CHECK(alloc_norms(c, &c->layers[l]));
    if (c->wfmt == CU_W_AWQ) /* the AWQ tensors are allocated as they are uploaded */
        return GM_OK;
    if (c->wfmt == CU_W_FP8) {
        int64_t most = c->n_qkv * H;
        int64_t sizes[3] = {H * c->nq * c->hd, 2 * c->ni * H, H * c->ni};
        for (int i = 0; i < 3; i++)
            most = sizes[i] > most ? sizes[i] : most;
        if (c->fp8_ckpt)
            most = 8; /* a checkpoint's e4m3 codes need no bf16 staging */
        GM_CHECK(cu_dev_alloc((void **)&c->wstage, (size_t)most * 2, "the FP8 loader's staging"));
        for (int32_t l = 0; l < nl; l++) {
            cu_layer *y = &c->layers[l];
            GM_CHECK(cu_dev_alloc((void **)&y->qkv.w8, (size_t)(c->n_qkv * H), "q/k/v_proj (fp8)"));
            GM_CHECK(cu_dev_alloc((void **)&y->o.w8, (size_t)(H * c->nq * c->hd), "o_proj (fp8)"));
            GM_CHECK(cu_dev_alloc((void **)&y->gate_up.w8, (size_t)(2 * c->ni * H), "gate/up_proj (fp8)"));
            GM_CHECK(cu_dev_alloc((void **)&y->down.w8, (size_t)(H * c->ni), "down_proj (fp8)"));
            GM_CHECK(cu_dev_alloc((void **)&y->wsc, 8 * SC_STRIDE * sizeof(float), "fp8 scales"));
            layer_scales(y);
            c->weight_bytes += c->n_qkv * H + H * c->nq * c->hd + 3 * c->ni * H;
        }
        return GM_OK;
    }
    for (int32_t l = 0; l < nl; l++) {
        cu_layer *y = &c->layers[l];
        GM_CHECK(cu_dev_alloc((void **)&y->qkv.w, (size_t)(c->n_qkv * H * 2), "q/k/v_proj"));
        GM_CHECK(cu_dev_alloc((void **)&y->o.w, (size_t)(H * c->nq * c->hd * 2), "o_proj"));
        GM_CHECK(cu_dev_alloc((void **)&y->gate_up.w, (size_t)(2 * c->ni * H * 2), "gate/up_proj"));
        GM_CHECK(cu_dev_alloc((void **)&y->down.w, (size_t)(H * c->ni * 2), "down_proj"));
        c->weight_bytes += (c->n_qkv * H + H * c->nq * c->hd + 3 * c->ni * H) * 2;
    }
    return GM_OK;
}

void cu_weights_free(cuda_engine *c)
{
    if (c->layers) {
        for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
            cu_layer *y = &c->layers[l];
            for (int i = 0; i < P_COUNT; i++) {
                cu_linear *w = cu_layer_linear(y, i);
                cudaFree(w->w), cudaFree(w->w8);
                cudaFree((void *)w->awq.qweight), cudaFree((void *)w->awq.qzeros), cudaFree((void *)w->awq.scales);
            }
            for (int i = 0; i < N_COUNT; i++)
                cudaFree(*layer_norm_ptr(y, i));
            cudaFree(y->wsc);
        }
        free(c->layers);
        c->layers = NULL;
    }
    for (int i = 0; i < P_COUNT; i++)
        cudaFree(c->awq_ws[i]);
    cudaFree(c->embed), cudaFree(c->final_norm);
    cudaFree(c->embed8), cudaFree(c->lm_sc), cudaFree(c->lmq8);
    cudaFree(c->wstage);
}

/* --quant fp8 from a bf16 checkpoint: one per-tensor scale for the matrices fused into one product
 * (q|k|v, gate|up), taken over the WHOLE tensors so that every tensor-parallel rank and
 * gemma-quantize --fp8 get the same codes. One rank holds the whole tensors: 0 = compute the
 * scale on the device from the staged bf16 copy (the same amax). */
static float host_scale(const cuda_engine *c, const gm_wview *const *v, int n)
{
    if (c->base.opts.tp_size <= 1)
        return 0.0f;
    float a = 0.0f;
    for (int i = 0; i < n; i++) {
        const st_tensor *t = v[i]->full;
        if (!t || !t->data)
            return 0.0f;
        float m = cpu_fp8_amax(t->data, t->dtype, (int64_t)(t->nbytes / gm_dtype_size(t->dtype)));
        a = m > a ? m : a;
    }
    return cpu_fp8_scale(a);
}

/* stage [n] bf16 (device) -> dst [n] e4m3 with scale *sc (device): given (host_sc > 0) or max|stage| / 448. */
static gm_status quant_weight(cuda_engine *c, const bf16 *stage, int64_t n, float host_sc, uint8_t *dst, float *sc)
{
    if (host_sc > 0.0f) {
        GM_CUDA_CHECK(cudaMemcpyAsync(sc, &host_sc, sizeof host_sc, cudaMemcpyHostToDevice, c->stream));
        GM_CHECK(k_fp8_quantize_static(stage, n, sc, dst, c->stream));
        GM_CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* host_sc lives on this frame */
        return GM_OK;
    }
    return k_fp8_quantize_weight(stage, n, sc, sc + 1, dst, c->stream);
}

/* Upload the AWQ tensors of the Linears parts[0..n) (same K, group) into one device weight whose
 * N is their sum, in that order along N; size the workspace of its shape (slot). */
static gm_status upload_awq(cuda_engine *c, const gm_linear *const *parts, int n, cpu_awq_w *dw, int slot)
{
    int64_t K = parts[0]->awq.K, g = parts[0]->awq.group, N = 0;
    for (int i = 0; i < n; i++) {
        if (parts[i]->kind != GM_LINEAR_AWQ || parts[i]->awq.K != K || parts[i]->awq.group != g ||
            parts[i]->awq.N % 64)
            return gm_fail(GM_ERR_UNSUPPORTED, "cuda engine: AWQ linear %d of a fused product: K %lld, group %lld, "
                           "N %lld (need AWQ tensors, equal K and group, N %% 64 == 0)", i,
                           (long long)parts[i]->awq.K, (long long)parts[i]->awq.group, (long long)parts[i]->awq.N);
        N += parts[i]->awq.N;
    }
    int64_t G = K / g;
    memset(dw, 0, sizeof *dw);
    dw->K = K, dw->N = N, dw->group = g, dw->ldq = N / 8, dw->lds = N;
    void *qw = NULL, *qz = NULL, *sc = NULL;
    GM_CHECK(cu_dev_alloc(&qw, (size_t)(K * N / 2), "AWQ qweight"));
    GM_CHECK(cu_dev_alloc(&qz, (size_t)(G * N / 2), "AWQ qzeros"));
    GM_CHECK(cu_dev_alloc(&sc, (size_t)(G * N * 2), "AWQ scales"));
    dw->qweight = (const int32_t *)qw, dw->qzeros = (const int32_t *)qz, dw->scales = (const uint16_t *)sc;
    int64_t n0 = 0;
    for (int i = 0; i < n; i++) {
        const cpu_awq_w *a = &parts[i]->awq;
        GM_CUDA_CHECK(cudaMemcpy2D((char *)qw + n0 / 8 * 4, (size_t)(N / 8 * 4), a->qweight, (size_t)(a->ldq * 4),
                                   (size_t)(a->N / 8 * 4), (size_t)K, cudaMemcpyHostToDevice));
        GM_CUDA_CHECK(cudaMemcpy2D((char *)qz + n0 / 8 * 4, (size_t)(N / 8 * 4), a->qzeros, (size_t)(a->ldq * 4),
                                   (size_t)(a->N / 8 * 4), (size_t)G, cudaMemcpyHostToDevice));
        GM_CUDA_CHECK(cudaMemcpy2D((char *)sc + n0 * 2, (size_t)(N * 2), a->scales, (size_t)(a->lds * 2),
                                   (size_t)(a->N * 2), (size_t)G, cudaMemcpyHostToDevice));
        n0 += a->N;
    }
    size_t wsb = k_gemv_awq_workspace_bytes(N, K, g);
    c->awq_ws_bytes[slot] = wsb > c->awq_ws_bytes[slot] ? wsb : c->awq_ws_bytes[slot];
    c->weight_bytes += K * N / 2 + G * N / 2 + G * N * 2;
    return GM_OK;
}

static gm_status load_awq(cuda_engine *c, const gm_linear *lin, loader *L)
{
    for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
        const gm_linear *q = lin + (int64_t)l * GM_LIN_COUNT;
        cu_layer *y = &c->layers[l];
        const gm_linear *qkv[3] = {&q[GM_LIN_Q], &q[GM_LIN_K], &q[GM_LIN_V]}, *o1[1] = {&q[GM_LIN_O]},
                        *gu[2] = {&q[GM_LIN_GATE], &q[GM_LIN_UP]}, *dn[1] = {&q[GM_LIN_DOWN]};
        GM_CHECK(upload_awq(c, qkv, 3, &y->qkv.awq, P_QKV));
        GM_CHECK(upload_awq(c, o1, 1, &y->o.awq, P_O));
        GM_CHECK(upload_awq(c, gu, 2, &y->gate_up.awq, P_GATE_UP));
        GM_CHECK(upload_awq(c, dn, 1, &y->down.awq, P_DOWN));
        for (int i = 0; i < GM_LIN_COUNT; i++)
            report(L, gm_linear_bytes(&q[i]));
    }
    return GM_OK;
}

gm_status cu_weights_awq_workspaces(cuda_engine *c)
{
    for (int i = 0; i < P_COUNT; i++) {
        GM_CHECK(cu_dev_alloc(&c->awq_ws[i], c->awq_ws_bytes[i], "the AWQ workspace"));
        GM_CUDA_CHECK(cudaMemset(c->awq_ws[i], 0, c->awq_ws_bytes[i] ? c->awq_ws_bytes[i] : 16));
    }
    for (int32_t l = 0; l < c->base.cfg.num_layers; l++)
        for (int i = 0; i < P_COUNT; i++) {
            cu_linear *w = cu_layer_linear(&c->layers[l], i);
            w->ws = c->awq_ws[i], w->ws_bytes = c->awq_ws_bytes[i];
        }
    return GM_OK;
}

/* An FP8 checkpoint's e4m3 Linears (gm_linears_bind: fused products already share one weight
 * scale and one input scale), its static activation scales and its per-layer KV scales. */
static gm_status load_fp8_ckpt(cuda_engine *c, const gm_linear *lin, loader *L)
{
    int32_t nl = c->base.cfg.num_layers;
    int all_static = 1;
    for (int32_t l = 0; l < nl; l++) {
        const gm_linear *q = lin + (int64_t)l * GM_LIN_COUNT;
        for (int i = 0; i < GM_LIN_COUNT; i++) {
            if (q[i].kind != GM_LINEAR_FP8)
                return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: layer %d %s is not F8_E4M3 in an FP8 checkpoint "
                               "(the CUDA engine runs every decoder Linear in FP8 or none)", (int)l,
                               gm_linear_names[i]);
            all_static &= q[i].in_scale > 0.0f;
        }
    }
    for (int32_t l = 0; l < nl; l++) {
        const gm_linear *q = lin + (int64_t)l * GM_LIN_COUNT;
        cu_layer *y = &c->layers[l];
        const int first[P_COUNT] = {GM_LIN_Q, GM_LIN_O, GM_LIN_GATE, GM_LIN_DOWN}, parts[P_COUNT] = {3, 1, 2, 1};
        float sc[8 * SC_STRIDE];
        memset(sc, 0, sizeof sc);
        for (int p = 0; p < P_COUNT; p++) {
            size_t off = 0;
            for (int j = 0; j < parts[p]; j++) {
                const gm_linear *W = &q[first[p] + j];
                size_t bytes = (size_t)(W->in * W->out);
                GM_CUDA_CHECK(cudaMemcpy(cu_layer_linear(y, p)->w8 + off, W->q8, bytes, cudaMemcpyHostToDevice));
                off += bytes;
                report(L, (int64_t)bytes);
            }
            sc[p * SC_STRIDE] = q[first[p]].w_scale;
            sc[(P_COUNT + p) * SC_STRIDE] = q[first[p]].in_scale;
        }
        GM_CUDA_CHECK(cudaMemcpy(y->wsc, sc, sizeof sc, cudaMemcpyHostToDevice));
        if (c->kv8)
            GM_CHECK(gm_fp8_kv_scale(c->model, l, &y->kv_scale));
    }
    c->static_act = all_static;
    if (c->base.opts.verbose)
        fprintf(stderr, "cuda engine: FP8 checkpoint, %s activation scales%s\n", all_static ? "static" : "dynamic",
                c->kv8 ? ", KV scales from k_scale/v_scale where present" : "");
    return GM_OK;
}

/* Layer y's four products from the checkpoint's bf16 views, quantized to e4m3 on the device (--quant fp8). */
static gm_status load_layer_fp8(cuda_engine *c, loader *L, const gm_layer_weights *lw, cu_layer *y)
{
    int64_t H = c->H;
    bf16 *sg = c->wstage;
    const gm_wview *qkv[3] = {&lw->q, &lw->k, &lw->v}, *o1[1] = {&lw->o}, *gu[2] = {&lw->gate, &lw->up},
                   *dn[1] = {&lw->down};
    GM_CHECK(upload_view(c, L, &lw->q, sg));
    GM_CHECK(upload_view(c, L, &lw->k, sg + c->nq * c->hd * H));
    GM_CHECK(upload_view(c, L, &lw->v, sg + (c->nq + c->nkv) * c->hd * H));
    GM_CHECK(quant_weight(c, sg, c->n_qkv * H, host_scale(c, qkv, 3), y->qkv.w8, y->qkv.w_scale));
    GM_CHECK(upload_view(c, L, &lw->o, sg));
    GM_CHECK(quant_weight(c, sg, H * c->nq * c->hd, host_scale(c, o1, 1), y->o.w8, y->o.w_scale));
    GM_CHECK(upload_view(c, L, &lw->gate, sg));
    GM_CHECK(upload_view(c, L, &lw->up, sg + c->ni * H));
    GM_CHECK(quant_weight(c, sg, 2 * c->ni * H, host_scale(c, gu, 2), y->gate_up.w8, y->gate_up.w_scale));
    GM_CHECK(upload_view(c, L, &lw->down, sg));
    GM_CHECK(quant_weight(c, sg, H * c->ni, host_scale(c, dn, 1), y->down.w8, y->down.w_scale));
    return load_norms(c, L, lw, y);
}

/* Layer y's four products from the checkpoint's views as bf16. */
static gm_status load_layer_bf16(cuda_engine *c, loader *L, const gm_layer_weights *lw, cu_layer *y)
{
    int64_t H = c->H;
    GM_CHECK(upload_view(c, L, &lw->q, y->qkv.w));
    GM_CHECK(upload_view(c, L, &lw->k, y->qkv.w + c->nq * c->hd * H));
    GM_CHECK(upload_view(c, L, &lw->v, y->qkv.w + (c->nq + c->nkv) * c->hd * H));
    GM_CHECK(upload_view(c, L, &lw->o, y->o.w));
    GM_CHECK(upload_view(c, L, &lw->gate, y->gate_up.w));
    GM_CHECK(upload_view(c, L, &lw->up, y->gate_up.w + c->ni * H));
    GM_CHECK(upload_view(c, L, &lw->down, y->down.w));
    return load_norms(c, L, lw, y);
}

gm_status cu_weights_load(cuda_engine *c, const gm_weights *w, const gm_linear *lin)
{
    gm_status st = GM_OK;
    loader L;
    memset(&L, 0, sizeof L);
    L.verbose = c->base.opts.verbose;
    /* NaN/Inf weights are refused here, naming the tensor: served, they give token 0 forever */
    if ((st = gm_weights_check_finite(c->model, c->tp.rank, c->tp.size)) != GM_OK)
        return st; /* nothing allocated yet */
    int64_t H = c->H;
    int32_t nl = c->base.cfg.num_layers;
    /* bytes read from the checkpoint, for progress */
    L.total = w->embed.rows * w->embed.cols * (int64_t)gm_dtype_size(w->embed.dtype) + H * 4;
    for (int32_t l = 0; l < nl; l++) {
        const gm_layer_weights *lw = &w->layers[l];
        const gm_wview *vs[] = {&lw->q, &lw->k, &lw->v, &lw->o, &lw->gate, &lw->up, &lw->down};
        for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++)
            L.total += vs[i]->data ? vs[i]->rows * vs[i]->cols * (int64_t)gm_dtype_size(vs[i]->dtype) : 0;
        for (int i = 0; i < N_COUNT; i++) {
            const gm_wview *v = layer_norm_view(c, lw, i);
            L.total += layer_norm_len(c, i) > 0 && v->data ? v->cols * (int64_t)gm_dtype_size(v->dtype) : 0;
        }
        for (int i = 0; lin && i < GM_LIN_COUNT; i++) /* quantized Linears (their views are empty) */
            L.total += lin[(int64_t)l * GM_LIN_COUNT + i].kind != GM_LINEAR_DENSE
                           ? gm_linear_bytes(&lin[(int64_t)l * GM_LIN_COUNT + i]) : 0;
    }
    for (int i = 0; i < 2; i++) {
        GM_CUDA_GOTO(cudaMallocHost(&L.stage[i], STAGE_BYTES), st, done);
        GM_CUDA_GOTO(cudaEventCreateWithFlags(&L.ev[i], cudaEventDisableTiming), st, done);
        GM_CUDA_GOTO(cudaEventRecord(L.ev[i], c->stream), st, done);
    }
    GM_GOTO(upload_view(c, &L, &w->embed, c->embed), st, done);
    GM_GOTO(upload_norm(c, &L, &w->final_norm, c->final_norm), st, done);
    if (c->fp8_ckpt || c->wfmt == CU_W_AWQ) { /* quantized Linears as stored, then the norms */
        if (c->fp8_ckpt)
            GM_GOTO(load_fp8_ckpt(c, lin, &L), st, done);
        else
            GM_GOTO(load_awq(c, lin, &L), st, done);
        for (int32_t l = 0; l < nl; l++)
            GM_GOTO(load_norms(c, &L, &w->layers[l], &c->layers[l]), st, done);
    } else {
        for (int32_t l = 0; l < nl; l++)
            GM_GOTO(c->wfmt == CU_W_FP8 ? load_layer_fp8(c, &L, &w->layers[l], &c->layers[l])
                                        : load_layer_bf16(c, &L, &w->layers[l], &c->layers[l]),
                    st, done);
    }
    GM_CUDA_GOTO(cudaStreamSynchronize(c->stream), st, done);
done:
    for (int i = 0; i < 2; i++) {
        if (L.ev[i])
            cudaEventDestroy(L.ev[i]);
        if (L.stage[i])
            cudaFreeHost(L.stage[i]);
    }
    return st;
}

gm_status cu_weights_random(cuda_engine *c, uint64_t seed)
{
    int64_t H = c->H;
    unsigned grid = (unsigned)(c->n_sm * 8);
    float sc = 0.02f;
    fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->embed, c->V * H, seed, 1.0f);
    fill_random_norm<<<grid, 256, 0, c->stream>>>(c->final_norm, H, seed + 1);
    const int64_t n[P_COUNT] = {c->n_qkv * H, H * c->nq * c->hd, 2 * c->ni * H, H * c->ni};
    for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
        cu_layer *y = &c->layers[l];
        uint64_t s = seed + 100 * (uint64_t)(l + 1);
        for (int i = 0; i < P_COUNT; i++) {
            cu_linear *w = cu_layer_linear(y, i);
            if (c->wfmt == CU_W_FP8) {
                fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->wstage, n[i], s + 2 + i, sc);
                GM_CHECK(quant_weight(c, c->wstage, n[i], 0.0f, w->w8, w->w_scale));
            } else {
                fill_random_bf16<<<grid, 256, 0, c->stream>>>(w->w, n[i], s + 2 + i, sc);
            }
        }
        for (int i = 0; i < N_COUNT; i++)
            if (layer_norm_len(c, i) > 0)
                fill_random_norm<<<grid, 256, 0, c->stream>>>(*layer_norm_ptr(y, i), layer_norm_len(c, i),
                                                              s + 6 + (uint64_t)i);
    }
    GM_LAUNCH_CHECK();
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return GM_OK;
}

/* --lm-head fp8: embed8 = e4m3(embed / (amax / 448)) on the device, and the rows' static scale
 * sqrt(H) * max |1 + w_norm| / 448 from the uploaded final norm (cpu_fp8_lm_head_act_scale's value). */
gm_status cu_lm_head_fp8_setup(cuda_engine *c)
{
    int64_t H = c->H, n = c->V * H;
    GM_CHECK(cu_dev_alloc((void **)&c->embed8, (size_t)n, "the FP8 LM head"));
    GM_CHECK(cu_dev_alloc((void **)&c->lm_sc, 2 * SC_STRIDE * sizeof(float), "the FP8 LM head's scales"));
    GM_CHECK(cu_dev_alloc((void **)&c->lmq8, (size_t)(c->cap_rows * H), "the FP8 LM head's rows"));
    GM_CHECK(k_fp8_quantize_weight(c->embed, n, c->lm_sc, c->lm_sc + 1, c->embed8, c->stream));
    float *w1 = (float *)malloc((size_t)H * sizeof(float));
    if (!w1)
        return gm_fail(GM_ERR_NOMEM, "cuda engine: no host memory");
    cudaError_t e = cudaMemcpy(w1, c->final_norm, (size_t)H * sizeof(float), cudaMemcpyDeviceToHost);
    float m = 0.0f;
    for (int64_t i = 0; i < H; i++)
        m = fabsf(w1[i]) > m ? fabsf(w1[i]) : m;
    free(w1);
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "cuda engine: reading the final norm back: %s", cudaGetErrorString(e));
    float sc = cpu_fp8_scale(sqrtf((float)H) * m);
    GM_CUDA_CHECK(cudaMemcpy(c->lm_sc + SC_STRIDE, &sc, sizeof sc, cudaMemcpyHostToDevice));
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    c->lm.fmt = CU_W_FP8, c->lm.w8 = c->embed8, c->lm.w_scale = c->lm_sc, c->lm.in_scale = c->lm_sc + SC_STRIDE;
    c->lm.act_slot = -1; /* always the static row scale */
    c->weight_bytes -= n; /* a step reads the e4m3 copy (V H bytes), not the bf16 one (2 V H) */
    return GM_OK;
}
