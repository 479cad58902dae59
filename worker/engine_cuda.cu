/* engine_cuda.cu - the CUDA backend of gm_engine: Gemma 1, 2 and 3 (text) on one GPU (one tensor-parallel
 * rank), bf16 activations, weights in bf16, FP8 or AWQ int4. This file creates and destroys the engine, sets
 * its own options (cu_opts: the kernel choices, from rules in code) and each layer's attention options from
 * the model's family switches, and implements the gm_engine_cuda_* extras of engine_cuda.h. The rest:
 * engine_cuda_internal.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/gguf_model.h"
#include "../kernels/cuda/attn_decode.cuh"
#include "../kernels/cuda/cuda_check.h"
#include "../kernels/cuda/launch.cuh"
#include "engine_check.h"
#include "engine_cuda_internal.h"

static const char *const g_op_names[OP_COUNT] = {"embed", "norms", "qkv_proj", "rope_kv", "attention", "o_proj",
                                                 "gate_up+geglu", "down_proj", "all-reduce", "lm_head",
                                                 "sample+feed"};

static const char *attn_name(gm_cuda_attn a)
{
    return a == GM_CUDA_ATTN_XQA ? "XQA always" : a == GM_CUDA_ATTN_SPLIT ? "k_attn_decode" : "measured rule";
}

static const char *prefill_name(const cuda_engine *c)
{
    return c->opt.prefill_e4m3 ? "Hopper (wgmma, TMA), FP8 on e4m3 tensor cores"
           : c->opt.prefill_hopper ? "Hopper (wgmma, TMA)"
                                   : "mma.sync";
}

/* The engine's own options from the rules in code (docs/KERNELS.md). Needs the shapes and the stream. */
static void opts_init(cuda_engine *c)
{
    c->opt.attn = GM_CUDA_ATTN_AUTO;
    c->opt.gemv_rows = CU_GEMV_ROWS;
    /* FP8 gate|up fused with its GeGLU exactly where k_gemm_fp8 would take the FP8 GEMV v2 for the product
     * (gemma-2b: fused, 19.2 vs 20.5 us graph-timed; 7b: not, v2 is slower at K = 3072; bench/history/NOTES.md run F) */
    c->opt.gu_fused = c->wfmt == CU_W_FP8 && c->H % 16 == 0 && k_gemv_fp8_v2_for(1, c->H, 2 * c->ni);
    k_gemm_ctx_set_gemv_rows(c->gemm, c->opt.gemv_rows);
    if (c->wfmt == CU_W_FP8 && c->base.opts.verbose)
        fprintf(stderr, "cuda engine: batch-1 FP8 GEMVs: v2 where K is a power of two; gate|up %s\n",
                c->opt.gu_fused ? "fused with its GeGLU" : "then GeGLU");
}

/* Each layer's attention options from the config (after sizing: a window that covers max_context is no
 * window): Gemma 1's head_dim^-0.5 as it always was, Gemma 2/3's query_pre_attn_scalar^-0.5 (computed in
 * double, as transformers does, then used as a float); Gemma 2's soft-cap; the sliding layers' window. */
static void layers_attn_init(cuda_engine *c)
{
    const gm_model_config *m = &c->base.cfg;
    const int gemma1 = m->family != GM_FAMILY_GEMMA2 && m->family != GM_FAMILY_GEMMA3; /* or built by hand */
    const float scale =
        gemma1 ? 1.0f / sqrtf((float)m->head_dim) : (float)(1.0 / sqrt((double)m->query_pre_attn_scalar));
    const int32_t w = m->sliding_window > 0 && m->sliding_window < c->base.opts.max_context ? m->sliding_window : 0;
    c->window = 0;
    for (int32_t l = 0; l < m->num_layers; l++) {
        k_attn_opts *a = &c->layers[l].attn;
        a->scale = scale;
        a->softcap = gemma1 ? 0.0f : m->attn_softcap;
        a->window = m->layer_sliding[l] ? w : 0;
        c->window = a->window > 0 ? a->window : c->window;
    }
    c->final_softcap = gemma1 ? 0.0f : m->final_softcap;
}

static void cuda_destroy(gm_engine *e)
{
    cuda_engine *c = (cuda_engine *)e;
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    cu_runtime_free(c);
    cu_weights_free(c);
    k_gemm_fp8_ctx_destroy(&c->gemm8);
    k_gemm_ctx_destroy(&c->gemm);
    gm_nccl_destroy(&c->nccl);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    st_model_destroy(&c->model);
    free(c);
}

static const gm_engine_ops g_cuda_ops = {cu_step, cuda_destroy, cu_copy_blocks};

/* Options and shapes the CUDA engine refuses (a clear error before anything is allocated). */
static gm_status check_opts(const gm_engine_opts *o, const gm_model_config *cfg, int random)
{
    int n_dev = 0;
    cudaError_t ce = cudaGetDeviceCount(&n_dev);
    if (ce != cudaSuccess || n_dev < 1)
        return gm_fail(GM_ERR_NO_DEVICE, "backend cuda: no CUDA device (%s)",
                       ce != cudaSuccess ? cudaGetErrorString(ce) : "device count is 0");
    if (o->device < 0 || o->device >= n_dev)
        return gm_fail(GM_ERR_NO_DEVICE, "backend cuda: device %d does not exist (%d devices)", o->device, n_dev);
    if (o->quant == GM_QUANT_AWQ && (o->tp_size > 1 || random))
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: --quant awq runs with tp 1 from an AWQ checkpoint "
                                           "(the W4A16 kernels write bf16 partial sums)");
    if (o->kv_dtype != GM_KV_AUTO && o->kv_dtype != GM_KV_BF16 && o->kv_dtype != GM_KV_FP8)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: --kv-dtype must be auto, bf16 or fp8");
    if (o->tp_size > 1 && !o->nccl_id)
        return gm_fail(GM_ERR_INVALID_ARG, "backend cuda: tp_size %d needs the NCCL unique id", o->tp_size);
    if (cfg->hidden_size % 8 || cfg->vocab_size % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: hidden %d and vocab %d must be multiples of 8",
                       cfg->hidden_size, cfg->vocab_size);
    if (cfg->head_dim != 32 && cfg->head_dim != 64 && cfg->head_dim != 128 && cfg->head_dim != 256)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: head_dim %d (the attention kernels serve 32, 64, 128 and "
                       "256)", cfg->head_dim);
    const int g23 = cfg->family == GM_FAMILY_GEMMA2 || cfg->family == GM_FAMILY_GEMMA3;
    if (g23 && (!(cfg->query_pre_attn_scalar > 0.0f) || !(cfg->attn_softcap >= 0.0f) || !(cfg->final_softcap >= 0.0f) ||
                cfg->sliding_window < 0))
        return gm_fail(GM_ERR_INVALID_ARG, "backend cuda: query_pre_attn_scalar %g, soft-caps %g / %g, window %d",
                       (double)cfg->query_pre_attn_scalar, (double)cfg->attn_softcap, (double)cfg->final_softcap,
                       cfg->sliding_window);
    if (cfg->num_layers < 1 || cfg->num_layers > GM_MAX_LAYERS)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: %d layers (1..%d)", cfg->num_layers, GM_MAX_LAYERS);
    if ((o->quant == GM_QUANT_FP8 || o->lm_head_fp8) && cfg->hidden_size % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: FP8 GEMMs need hidden %% 16 == 0 (hidden %d)",
                       cfg->hidden_size);
    if (cfg->num_kv_heads > 0 && cfg->num_heads % cfg->num_kv_heads == 0 &&
        cfg->num_heads / cfg->num_kv_heads > XQA_MAX_ROWS)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: %d query heads per KV head (the decode attention "
                       "kernels serve at most %d)", cfg->num_heads / cfg->num_kv_heads, XQA_MAX_ROWS);
    return GM_OK;
}

/* The checkpoint's quantization (model_dir's quantization_config) against --quant: sets c->wfmt, c->fp8_ckpt
 * and binds the quantized Linears into *lin (caller frees). */
static gm_status bind_quant(cuda_engine *c, const char *model_dir, gm_weights *w, gm_linear **lin)
{
    const gm_model_config *cfg = &c->base.cfg;
    gm_quant_config qc;
    GM_CHECK(gm_quant_config_load(model_dir, &qc));
    if (qc.present && strcmp(qc.method, "fp8") == 0) { /* e4m3 weights as stored (gemma-quantize --fp8) */
        if (c->wfmt == CU_W_AWQ)
            return gm_fail(GM_ERR_INVALID_ARG, "backend cuda: %s is an FP8 checkpoint: run it with --quant fp8 (or "
                           "none), not awq", model_dir);
        c->wfmt = CU_W_FP8, c->fp8_ckpt = 1;
        return gm_linears_bind(c->model, cfg, &w->tp, 0, lin);
    }
    if (qc.present && strcmp(qc.method, "awq") != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: %s: quantization method \"%s\" is not supported",
                       model_dir, qc.method);
    if (qc.present && c->wfmt != CU_W_AWQ)
        return gm_fail(GM_ERR_INVALID_ARG, "backend cuda: %s is an AWQ checkpoint: run it with --quant awq",
                       model_dir);
    if (c->wfmt != CU_W_AWQ)
        return GM_OK;
    if (!qc.present)
        return gm_fail(GM_ERR_INVALID_ARG, "backend cuda: --quant awq, but %s has no AWQ quantization_config",
                       model_dir);
    return gm_linears_bind(c->model, cfg, &w->tp, qc.group_size, lin);
}

static gm_status cuda_create(const gm_engine_opts *o, const gm_model_config *cfg, const char *model_dir,
                             int random, uint64_t seed, gm_engine **out)
{
    *out = NULL;
    gm_status st = GM_OK;
    GM_CHECK(check_opts(o, cfg, random));
    GM_CUDA_CHECK(cudaSetDevice(o->device));

    cuda_engine *c = (cuda_engine *)calloc(1, sizeof *c);
    if (!c)
        return gm_fail(GM_ERR_NOMEM, "backend cuda: no host memory");
    c->base.ops = &g_cuda_ops;
    gm_engine_init_common(&c->base, cfg, o);
    gm_worker_spec spec; /* the sizes as asked (0 = derive), before init_common filled them in */
    gm_device_mem mem = {0, 0, 0, 0};
    c->wfmt = o->quant == GM_QUANT_FP8 ? CU_W_FP8 : o->quant == GM_QUANT_AWQ ? CU_W_AWQ : CU_W_BF16;
    gm_linear *lin = NULL;
    c->kv8 = o->kv_dtype == GM_KV_FP8;
    gm_weights w;
    memset(&w, 0, sizeof w);
    int have_w = 0;
    GM_GOTO(gm_engine_opts_spec(o, &spec), st, fail);
    GM_GOTO(gm_tp_layout_make(cfg, o->tp_rank, o->tp_size, &c->tp), st, fail);
    if (!random) {
        GM_GOTO(gm_checkpoint_load(model_dir, NULL, &c->model), st, fail); /* a directory or a GGUF */
        GM_GOTO(gm_weights_bind(c->model, cfg, o->tp_rank, o->tp_size, &w), st, fail);
        have_w = 1;
        GM_GOTO(bind_quant(c, model_dir, &w, &lin), st, fail);
    }
    c->H = cfg->hidden_size;
    c->V = cfg->vocab_size;
    c->hd = cfg->head_dim;
    c->nq = c->tp.n_heads;
    c->nkv = c->tp.n_kv;
    c->ni = c->tp.n_inter;
    c->n_qkv = (c->nq + 2 * c->nkv) * c->hd;
    c->eps = cfg->rms_norm_eps;
    c->normalizer = gm_config_normalizer(cfg);
    {
        cudaDeviceProp prop;
        GM_CUDA_GOTO(cudaGetDeviceProperties(&prop, o->device), st, fail);
        c->n_sm = prop.multiProcessorCount;
        if (o->verbose)
            fprintf(stderr, "cuda engine: %s, %d SMs, %.1f GB; rank %d of %d\n", prop.name, c->n_sm,
                    (double)prop.totalGlobalMem / 1e9, o->tp_rank, o->tp_size);
    }
    GM_CUDA_GOTO(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), st, fail);
    GM_GOTO(k_gemm_ctx_new(0, &c->gemm), st, fail);
    if (c->wfmt == CU_W_FP8 || o->lm_head_fp8)
        GM_GOTO(k_gemm_fp8_ctx_new(0, &c->gemm8), st, fail);
    if (o->tp_size > 1)
        GM_GOTO(gm_nccl_create(o->nccl_id, o->tp_rank, o->tp_size, &c->nccl), st, fail);

    GM_GOTO(cu_weights_alloc(c), st, fail);
    if (random)
        GM_GOTO(cu_weights_random(c, seed), st, fail);
    else
        GM_GOTO(cu_weights_load(c, &w, lin), st, fail);
    if (lin)
        gm_linears_free(lin, (int64_t)cfg->num_layers * GM_LIN_COUNT);
    free(lin);
    lin = NULL;
    if (c->wfmt == CU_W_AWQ)
        GM_GOTO(cu_weights_awq_workspaces(c), st, fail);
    if (have_w)
        gm_weights_release(&w), have_w = 0;
    st_model_destroy(&c->model); /* weights are on the device now */
    cudaFree(c->wstage);
    c->wstage = NULL;
    opts_init(c);
    GM_GOTO(cu_size_limits(c, &spec, &mem), st, fail);
    layers_attn_init(c); /* before the decode plans (the sliding layers' split counts) */
    GM_GOTO(cu_runtime_alloc(c), st, fail);
    if (o->lm_head_fp8 && o->tp_rank == 0) /* only rank 0 computes logits */
        GM_GOTO(cu_lm_head_fp8_setup(c), st, fail);
    GM_GOTO(cu_kv_alloc(c, &spec, &mem), st, fail);
    GM_GOTO(cu_prefill_rule(c, GM_CUDA_PREFILL_AUTO), st, fail); /* needs the pool's size */
    GM_GOTO(cu_prefill_selfcheck(c), st, fail);
    if (o->verbose && (cfg->family == GM_FAMILY_GEMMA2 || cfg->family == GM_FAMILY_GEMMA3))
        fprintf(stderr, "cuda engine: Gemma %d: scale %g, soft-caps %g / %g, window %d%s, QK-norm %s, RoPE %g / %g "
                "(scale %g)\n", (int)cfg->family, (double)c->layers[0].attn.scale, (double)cfg->attn_softcap,
                (double)c->final_softcap, c->window,
                cfg->sliding_window > 0 && !c->window ? " (covers max_context)" : "",
                cfg->qk_norm ? "on" : "off", (double)cfg->rope_theta, (double)cfg->rope_theta_local,
                (double)cfg->rope_scale);
    if (o->verbose)
        fprintf(stderr, "cuda engine: ready: %.2f GB of weights read per step (%s, %s LM head), %d decode buckets, "
                "graphs %s, decode attention: %s, prefill attention: %s\n", (double)c->weight_bytes / 1e9,
                c->wfmt == CU_W_FP8 ? "fp8 e4m3" : c->wfmt == CU_W_AWQ ? "AWQ int4 W4A16" : "bf16",
                o->lm_head_fp8 ? "fp8" : "bf16", c->n_buckets, o->use_graphs ? "on" : "off", attn_name(c->opt.attn),
                prefill_name(c));
    *out = &c->base;
    return GM_OK;
fail:
    if (lin)
        gm_linears_free(lin, (int64_t)cfg->num_layers * GM_LIN_COUNT);
    free(lin);
    if (have_w)
        gm_weights_release(&w);
    cuda_destroy(&c->base);
    return st;
}

extern "C" gm_status gm_engine_cuda_create(const gm_engine_opts *o, gm_engine **out)
{
    *out = NULL;
    int n_dev = 0;
    cudaError_t ce = cudaGetDeviceCount(&n_dev);
    if (ce != cudaSuccess || n_dev < 1)
        return gm_fail(GM_ERR_NO_DEVICE, "backend cuda: no CUDA device (%s)",
                       ce != cudaSuccess ? cudaGetErrorString(ce) : "device count is 0");
    if (!o->model_dir || !*o->model_dir)
        return gm_fail(GM_ERR_INVALID_ARG, "backend cuda: no model directory given");
    gm_model_config cfg;
    GM_CHECK(gm_checkpoint_config(o->model_dir, &cfg));
    return cuda_create(o, &cfg, o->model_dir, 0, 0, out);
}

extern "C" gm_status gm_engine_cuda_create_random(const gm_engine_opts *o, const gm_model_config *cfg, uint64_t seed,
                                                  gm_engine **out)
{
    return cuda_create(o, cfg, NULL, 1, seed, out);
}

/* ---------------------------------------------------------------- extras (engine_cuda.h) */

extern "C" void gm_engine_cuda_set_gemv_rows(gm_engine *e, int32_t n)
{
    cuda_engine *c = (cuda_engine *)e;
    cudaStreamSynchronize(c->stream);
    cu_graphs_drop(c);
    c->opt.gemv_rows = n;
    k_gemm_ctx_set_gemv_rows(c->gemm, n);
}

extern "C" gm_status gm_engine_cuda_set_decode_attn(gm_engine *e, gm_cuda_attn mode)
{
    cuda_engine *c = (cuda_engine *)e;
    if (mode != GM_CUDA_ATTN_SPLIT && mode != GM_CUDA_ATTN_AUTO && mode != GM_CUDA_ATTN_XQA)
        return gm_fail(GM_ERR_INVALID_ARG, "cuda engine: decode attention mode %d (0, 1 or 2)", (int)mode);
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    cu_graphs_drop(c);
    c->opt.attn = mode;
    if (c->base.opts.verbose)
        fprintf(stderr, "cuda engine: decode attention: %s\n", attn_name(mode));
    return cu_buckets_plan(c);
}

extern "C" gm_status gm_engine_cuda_set_prefill_attn(gm_engine *e, gm_cuda_prefill mode)
{
    cuda_engine *c = (cuda_engine *)e;
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* prefill steps run eagerly: no graph holds the choice */
    GM_CHECK(cu_prefill_rule(c, mode));
    if (c->base.opts.verbose)
        fprintf(stderr, "cuda engine: prefill attention: %s\n", prefill_name(c));
    return GM_OK;
}

extern "C" int gm_engine_cuda_prefill_uses_hopper(const gm_engine *e)
{
    const cuda_engine *c = (const cuda_engine *)e;
    return c->opt.prefill_e4m3 ? 2 : c->opt.prefill_hopper;
}

extern "C" gm_status gm_engine_cuda_set_static_act(gm_engine *e, float scale)
{
    cuda_engine *c = (cuda_engine *)e;
    if (c->wfmt != CU_W_FP8)
        return gm_fail(GM_ERR_UNSUPPORTED, "cuda engine: static activation scales need FP8 weights");
    if (!(scale >= 0.0f) || !isfinite(scale))
        return gm_fail(GM_ERR_INVALID_ARG, "cuda engine: activation scale %g", (double)scale);
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    cu_graphs_drop(c);
    c->static_act = 0; /* dynamic until every layer holds the new scale */
    for (int32_t l = 0; l < c->base.cfg.num_layers && scale > 0.0f; l++)
        for (int i = 0; i < P_COUNT; i++)
            GM_CUDA_CHECK(cudaMemcpy(cu_layer_linear(&c->layers[l], i)->in_scale, &scale, sizeof scale,
                                     cudaMemcpyHostToDevice));
    c->static_act = scale > 0.0f;
    return GM_OK;
}

extern "C" int64_t gm_engine_cuda_weight_bytes(const gm_engine *e) { return ((const cuda_engine *)e)->weight_bytes; }

extern "C" void gm_engine_cuda_set_pdl(gm_engine *e, int on)
{
    cuda_engine *c = (cuda_engine *)e;
    cudaStreamSynchronize(c->stream);
    cu_graphs_drop(c);
    k_set_pdl(on);
}

extern "C" void gm_engine_cuda_profile(gm_engine *e, int on)
{
    cuda_engine *c = (cuda_engine *)e;
    cudaStreamSynchronize(c->stream);
    cu_graphs_drop(c); /* recapture with (or without) the event nodes */
    memset(c->prof.us, 0, sizeof c->prof.us);
    c->prof.steps = 0;
    c->prof.n = 0;
    c->prof.on = on;
}

extern "C" int gm_engine_cuda_profile_get(const gm_engine *e, const char **names, double *us_per_step, int max)
{
    const cuda_engine *c = (const cuda_engine *)e;
    int n = 0;
    for (int i = 0; i < OP_COUNT && n < max; i++, n++) {
        names[n] = g_op_names[i];
        us_per_step[n] = c->prof.steps ? c->prof.us[i] / (double)c->prof.steps : 0.0;
    }
    return n;
}
