/* engine_cuda.cu - the Gemma v1 forward pass on one GPU (one tensor-parallel rank), bf16.
 *
 * Activations are bf16 as Hugging Face computes them (residual stream, norms' outputs,
 * projections); norms, softmax and accumulations are float32; logits are float32.
 * Weights live on the device fused per layer: QKV [(nq + 2 nkv) hd, H], gate|up [2 I, H],
 * o [H, nq hd], down [H, I]; norm weights as float32 (1 + w). The KV pool holds, per layer,
 * K and V of [num_blocks, nkv, block_size, head_dim] bf16.
 *
 * A step's host-side inputs (ids, positions, KV slots, per-sequence metadata, block tables,
 * sampling parameters) are packed into one pinned buffer and copied in one transfer. Steps
 * where every sequence appends one token (decode) are padded to a batch-size bucket and,
 * after one eager run of that bucket, replayed from a CUDA graph; the graph reads everything
 * that changes between steps from the device buffers, so replays need only that copy in and
 * the sampled tokens out. Tensor parallel ranks all-reduce (NCCL, float32) after o_proj and
 * down_proj; rank 0 computes the logits and samples, and broadcasts the tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "../common/log.h"
#include "../common/safetensors.h"
#include "../kernels/cuda/attn_decode.cuh"
#include "../kernels/cuda/attn_prefill.cuh"
#include "../kernels/cuda/cuda_check.h"
#include "../kernels/cuda/cuda_util.cuh"
#include "../kernels/cuda/embed.cuh"
#include "../kernels/cuda/geglu.cuh"
#include "../kernels/cuda/gemm.cuh"
#include "../kernels/cuda/launch.cuh"
#include "../kernels/cuda/rmsnorm.cuh"
#include "../kernels/cuda/rope_kv.cuh"
#include "../kernels/cuda/sample.cuh"
#include "../kernels/cuda/fp8.cuh"
#include "../kernels/cuda/gemm_fp8.cuh"
#include "../kernels/cuda/xqa.cuh"
#include "../kernels/cpu/cpu_fp8.h"
#include "../kernels/cuda/awq.cuh"
#include "awq.h"
#include "../parallel/nccl_comm.h"
#include "engine.h"
#include "engine_check.h"
#include "engine_cuda.h"
#include "weights.h"

#define LOGIT_CHUNK 64       /* rows per LM-head pass when dumping logits */
#define STAGE_BYTES (64u << 20) /* each of the two pinned staging buffers of the loader */
#define MAX_BUCKETS 64
#define PROF_MAX 1024
#define SC_STRIDE 64          /* floats between two device scales (256 bytes: cuBLASLt scale pointers) */
#define XQA_MIN_BATCH 8       /* XQA for MQA/GQA decode batches from this size (bf16 crossover, bench/NOTES.md) */

/* Decode-step profile: events between the ops of the forward pass (recorded as graph nodes
 * when captured), summed per op kind. */
enum {
    OP_EMBED = 0, OP_NORM, OP_QKV, OP_ROPE_KV, OP_ATTN, OP_O, OP_GATE_UP, OP_DOWN, OP_ALLREDUCE, OP_LM_HEAD,
    OP_SAMPLE, OP_COUNT
};
static const char *const g_op_names[OP_COUNT] = {"embed", "norms", "qkv_proj", "rope_kv", "attention", "o_proj",
                                                 "gate_up+geglu", "down_proj", "all-reduce", "lm_head",
                                                 "sample+feed"};

typedef struct prof_state {
    int on, n;
    cudaEvent_t ev[PROF_MAX];
    int op[PROF_MAX];
    double us[OP_COUNT];
    int64_t steps;
} prof_state;

typedef struct cu_layer {
    bf16 *wqkv;       /* [(nq + 2 nkv) * hd, H] */
    bf16 *wo;         /* [H, nq * hd] */
    bf16 *wgu;        /* [2 * ni, H]: gate rows then up rows */
    bf16 *wdown;      /* [H, ni] */
    float *in_norm;   /* [H] 1 + w */
    float *post_norm; /* [H] 1 + w */
    /* --quant fp8: the same four matrices in e4m3 (the bf16 pointers above stay NULL) */
    uint8_t *wqkv8, *wo8, *wgu8, *wdown8;
    float *wsc;       /* [8 * SC_STRIDE] f32: weight scales of qkv, o, gate|up, down (SC_STRIDE apart), then
                       * the static activation scales of the same four products (an FP8 checkpoint's
                       * input_scale; used when static_act) */
    float kv_scale;   /* FP8 KV: this layer's dequant multiplier (k_scale/v_scale of an FP8 checkpoint, else 1) */
    /* --quant awq: W4A16 AutoAWQ tensors on the device, q|k|v and gate|up concatenated along N
     * (qweight [K, N/8] int32, qzeros [K/g, N/8] int32, scales [K/g, N] fp16; ldq = N/8, lds = N) */
    cpu_awq_w aw[4];  /* qkv, o, gate|up, down */
} cu_layer;

/* Device (or pinned host mirror) arrays of one step; same offsets on both sides. */
typedef struct meta_ptrs {
    int32_t *ids, *pos, *slot, *tok_slot;      /* [Tc] */
    int32_t *q_start, *n_new, *start_pos, *ctx_len, *rows, *sslot, *tokens; /* [Sc] */
    uint64_t *counters;                        /* [Sc] */
    gm_sampling *params;                       /* [Sc] */
    int32_t *bt;                               /* [Sc, max_blocks] */
    size_t bytes;
} meta_ptrs;

typedef struct cu_bucket {
    int32_t size;
    int32_t n_split;
    int32_t warm;           /* ran eagerly once (cuBLASLt algorithms chosen) */
    int32_t prof_n;         /* profile marks captured in the graph */
    cudaGraphExec_t exec;   /* NULL until captured */
    int32_t xqa;            /* decode attention through xqa_decode */
    int32_t xqa_nb;         /* its split count */
    void *xqa_scratch;      /* this bucket's own zeroed scratch (the semaphores' offsets depend on the batch) */
    size_t xqa_bytes;
} cu_bucket;

typedef struct cuda_engine {
    gm_engine base;
    gm_tp_layout tp;
    int32_t n_sm;
    cudaStream_t stream;
    gemm_ctx *gemm;
    gm_nccl *nccl;
    st_model *model;
    int64_t weight_bytes;

    int64_t H, V, hd, nq, nkv, ni, n_qkv; /* local shapes */
    int32_t max_blocks;                    /* block-table row length: ceil(max_context / bs) */
    float eps, normalizer, scale;

    bf16 *embed;        /* [V, H] also the LM head */
    uint8_t *embed8;    /* --lm-head fp8: [V, H] e4m3 of embed (the LM head reads it instead) */
    float *lm_sc;       /* [2 * SC_STRIDE]: embed8's scale, amax scratch; then the rows' static scale */
    uint8_t *lmq8;      /* [cap_rows, H] e4m3 rows into the FP8 LM head */
    float *final_norm;  /* [H] */
    cu_layer *layers;
    float *rope_tab;    /* [max_context, hd / 2, 2] cos, sin */

    void *kv;           /* [layers][2][num_blocks, nkv, bs, hd] bf16, or e4m3 with --kv-dtype fp8 */
    int64_t layer_elems;
    int kv8;            /* FP8 KV pool */
    int32_t *neg_slots; /* [cap_t] all -1: k_rope_kv_write rotates without writing a bf16 pool */

    /* --quant fp8 or an FP8 checkpoint (per-tensor activation scales: dynamic, or the checkpoint's
     * static input_scale when every product has one) */
    int fp8w;
    int fp8_ckpt;       /* weights read as e4m3 from the checkpoint (gemma-quantize --fp8) */
    int static_act;     /* activation scales from layers[l].wsc + (4 + i) * SC_STRIDE */
    gemm_fp8_ctx *gemm8;
    uint8_t *xq8, *attq8, *actq8; /* [T, H], [T, nq hd], [T, ni] e4m3 */
    float *act_sc;      /* [5 * SC_STRIDE]: activation scales of qkv, o, gate|up, down; amax scratch */
    bf16 *act_tmp;      /* [T, max(H, ni)] bf16 scratch of the fused dynamic quantizers */
    bf16 *wstage;       /* loader: one bf16 matrix before quantization */

    int awq;            /* --quant awq */
    void *awq_ws[4];    /* awq_gemv's split-K workspaces, one per fused shape (qkv, o, gate|up, down): its
                         * counters' offsets depend on N, so shapes must not share one; zeroed once */
    size_t awq_ws_bytes[4];

    int gu_fused;       /* <= 4 rows: FP8 gate|up fused with its GeGLU (pick_gate_up) */
    int xqa_mode;       /* 0: k_attn_decode(_fp8) where it serves the shape; 1: XQA for MHA from 2 rows, MQA/GQA from XQA_MIN_BATCH; 2: XQA always */
    void *xqa_scratch;  /* eager (non-graph) decode steps: sized for max_seqs; semaphores cleared per launch */
    size_t xqa_bytes, xqa_sem_bytes;

    int64_t cap_t;      /* token rows of the activations */
    bf16 *h, *xn, *qkv, *att, *gu, *act; /* [T, H], [T, H], [T, n_qkv], [T, nq hd], [T, 2 ni], [T, ni] */
    void *delta;        /* [T, H] bf16 (tp 1) or f32 (tp > 1) */
    int delta_f32;
    bf16 *xs;           /* [cap_rows, H] rows gathered for the LM head */
    float *logits;      /* [cap_rows, V] */
    int64_t cap_rows;
    int32_t *dump_rows; /* [cap_t] token rows whose logits the caller wants */
    int32_t *last_tok;  /* [max_seqs] token each slot sampled last */
    void *dec_scratch;
    size_t dec_scratch_bytes;

    char *meta_d, *meta_h; /* device buffer and pinned mirror */
    size_t meta_cap;
    int32_t *tok_h;        /* pinned [max_seqs] */
    int32_t *dump_rows_h;  /* host [cap_t] */
    int32_t *order_h;      /* host [max_seqs]: a mixed step's sequences, decode ones first (caller's indices) */
    int64_t *tstart_h;     /* host [max_seqs]: first token row of each caller's sequence */

    cu_bucket buckets[MAX_BUCKETS];
    int32_t n_buckets;
    prof_state prof;
} cuda_engine;

static void prof_mark(cuda_engine *c, int op)
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

/* After a synchronized step: add the time between marks to their ops. */
static void prof_collect(cuda_engine *c)
{
    prof_state *p = &c->prof;
    if (!p->on || p->n < 2)
        return;
    for (int i = 1; i < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) == cudaSuccess && p->op[i] >= 0)
            p->us[p->op[i]] += 1e3 * (double)ms;
    }
    p->steps++;
}

static void meta_layout(char *base, int64_t Tc, int64_t Sc, int64_t max_blocks, meta_ptrs *m)
{
    size_t o = 0;
#define TAKE(field, type, n)                                                                                          \
    do {                                                                                                              \
        o = (o + 15) & ~(size_t)15;                                                                                   \
        m->field = (type *)(base + o);                                                                                \
        o += (size_t)(n) * sizeof(type);                                                                              \
    } while (0)
    TAKE(ids, int32_t, Tc);
    TAKE(pos, int32_t, Tc);
    TAKE(slot, int32_t, Tc);
    TAKE(tok_slot, int32_t, Tc);
    TAKE(q_start, int32_t, Sc);
    TAKE(n_new, int32_t, Sc);
    TAKE(start_pos, int32_t, Sc);
    TAKE(ctx_len, int32_t, Sc);
    TAKE(rows, int32_t, Sc);
    TAKE(sslot, int32_t, Sc);
    TAKE(tokens, int32_t, Sc);
    TAKE(counters, uint64_t, Sc);
    TAKE(params, gm_sampling, Sc);
    TAKE(bt, int32_t, Sc * max_blocks);
#undef TAKE
    m->bytes = (o + 15) & ~(size_t)15;
}

/* ---------------------------------------------------------------- weights */

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

static gm_status dev_alloc(void **p, size_t bytes, const char *what)
{
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        *p = NULL;
        return gm_fail(GM_ERR_NOMEM, "cuda engine: cannot allocate %.1f MiB of device memory for %s: %s",
                       (double)bytes / 1048576.0, what, cudaGetErrorString(e));
    }
    return GM_OK;
}

static gm_status alloc_weights(cuda_engine *c)
{
    int32_t nl = c->base.cfg.num_layers;
    c->layers = (cu_layer *)calloc((size_t)nl, sizeof(cu_layer));
    if (!c->layers)
        return gm_fail(GM_ERR_NOMEM, "cuda engine: no host memory");
    int64_t H = c->H;
    for (int32_t l = 0; l < nl; l++)
        c->layers[l].kv_scale = 1.0f; /* an FP8 checkpoint's k_scale/v_scale replace it (load_fp8_ckpt) */
    GM_CHECK(dev_alloc((void **)&c->embed, (size_t)(c->V * H * 2), "the embedding"));
    GM_CHECK(dev_alloc((void **)&c->final_norm, (size_t)H * 4, "norms"));
    c->weight_bytes = c->V * H * 2 + H * 4;
    if (c->awq) { /* the AWQ tensors are allocated as they are uploaded */
        for (int32_t l = 0; l < nl; l++) {
            GM_CHECK(dev_alloc((void **)&c->layers[l].in_norm, (size_t)H * 4, "norms"));
            GM_CHECK(dev_alloc((void **)&c->layers[l].post_norm, (size_t)H * 4, "norms"));
            c->weight_bytes += 2 * H * 4;
        }
        return GM_OK;
    }
    if (c->fp8w) {
        int64_t most = c->n_qkv * H;
        int64_t sizes[3] = {H * c->nq * c->hd, 2 * c->ni * H, H * c->ni};
        for (int i = 0; i < 3; i++)
            most = sizes[i] > most ? sizes[i] : most;
        if (c->fp8_ckpt)
            most = 8; /* a checkpoint's e4m3 codes need no bf16 staging */
        GM_CHECK(dev_alloc((void **)&c->wstage, (size_t)most * 2, "the FP8 loader's staging"));
        for (int32_t l = 0; l < nl; l++) {
            cu_layer *y = &c->layers[l];
            GM_CHECK(dev_alloc((void **)&y->wqkv8, (size_t)(c->n_qkv * H), "q/k/v_proj (fp8)"));
            GM_CHECK(dev_alloc((void **)&y->wo8, (size_t)(H * c->nq * c->hd), "o_proj (fp8)"));
            GM_CHECK(dev_alloc((void **)&y->wgu8, (size_t)(2 * c->ni * H), "gate/up_proj (fp8)"));
            GM_CHECK(dev_alloc((void **)&y->wdown8, (size_t)(H * c->ni), "down_proj (fp8)"));
            GM_CHECK(dev_alloc((void **)&y->wsc, 8 * SC_STRIDE * sizeof(float), "fp8 scales"));
            GM_CHECK(dev_alloc((void **)&y->in_norm, (size_t)H * 4, "norms"));
            GM_CHECK(dev_alloc((void **)&y->post_norm, (size_t)H * 4, "norms"));
            c->weight_bytes += (c->n_qkv * H + H * c->nq * c->hd + 3 * c->ni * H) + 2 * H * 4;
        }
        return GM_OK;
    }
    for (int32_t l = 0; l < nl; l++) {
        cu_layer *y = &c->layers[l];
        GM_CHECK(dev_alloc((void **)&y->wqkv, (size_t)(c->n_qkv * H * 2), "q/k/v_proj"));
        GM_CHECK(dev_alloc((void **)&y->wo, (size_t)(H * c->nq * c->hd * 2), "o_proj"));
        GM_CHECK(dev_alloc((void **)&y->wgu, (size_t)(2 * c->ni * H * 2), "gate/up_proj"));
        GM_CHECK(dev_alloc((void **)&y->wdown, (size_t)(H * c->ni * 2), "down_proj"));
        GM_CHECK(dev_alloc((void **)&y->in_norm, (size_t)H * 4, "norms"));
        GM_CHECK(dev_alloc((void **)&y->post_norm, (size_t)H * 4, "norms"));
        c->weight_bytes += (c->n_qkv * H + H * c->nq * c->hd + 3 * c->ni * H) * 2 + 2 * H * 4;
    }
    return GM_OK;
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
 * N is their sum, in that order along N. */
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
    GM_CHECK(dev_alloc(&qw, (size_t)(K * N / 2), "AWQ qweight"));
    GM_CHECK(dev_alloc(&qz, (size_t)(G * N / 2), "AWQ qzeros"));
    GM_CHECK(dev_alloc(&sc, (size_t)(G * N * 2), "AWQ scales"));
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
    size_t wsb = awq_gemv_workspace_bytes(N, K, g);
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
        GM_CHECK(upload_awq(c, qkv, 3, &y->aw[0], 0));
        GM_CHECK(upload_awq(c, o1, 1, &y->aw[1], 1));
        GM_CHECK(upload_awq(c, gu, 2, &y->aw[2], 2));
        GM_CHECK(upload_awq(c, dn, 1, &y->aw[3], 3));
        for (int i = 0; i < GM_LIN_COUNT; i++)
            report(L, gm_linear_bytes(&q[i]));
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
        struct {
            uint8_t *dst;
            int first, n;
        } prod[4] = {{y->wqkv8, GM_LIN_Q, 3}, {y->wo8, GM_LIN_O, 1}, {y->wgu8, GM_LIN_GATE, 2}, {y->wdown8, GM_LIN_DOWN, 1}};
        float sc[8 * SC_STRIDE];
        memset(sc, 0, sizeof sc);
        for (int p = 0; p < 4; p++) {
            size_t off = 0;
            for (int j = 0; j < prod[p].n; j++) {
                const gm_linear *W = &q[prod[p].first + j];
                size_t bytes = (size_t)(W->in * W->out);
                GM_CUDA_CHECK(cudaMemcpy(prod[p].dst + off, W->q8, bytes, cudaMemcpyHostToDevice));
                off += bytes;
                report(L, (int64_t)bytes);
            }
            sc[p * SC_STRIDE] = q[prod[p].first].w_scale;
            sc[(4 + p) * SC_STRIDE] = q[prod[p].first].in_scale;
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

static gm_status load_weights(cuda_engine *c, const gm_weights *w, const gm_linear *lin)
{
    gm_status st = GM_OK;
    loader L;
    memset(&L, 0, sizeof L);
    L.verbose = c->base.opts.verbose;
    int64_t H = c->H;
    /* bytes read from the checkpoint, for progress */
    L.total = w->embed.rows * w->embed.cols * (int64_t)gm_dtype_size(w->embed.dtype) + H * 4;
    for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
        const gm_layer_weights *lw = &w->layers[l];
        const gm_wview *vs[] = {&lw->q, &lw->k, &lw->v, &lw->o, &lw->gate, &lw->up, &lw->down,
                                &lw->input_norm, &lw->post_norm};
        for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++)
            L.total += vs[i]->data ? vs[i]->rows * vs[i]->cols * (int64_t)gm_dtype_size(vs[i]->dtype) : 0;
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
    if (c->fp8_ckpt) {
        GM_GOTO(load_fp8_ckpt(c, lin, &L), st, done);
        for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
            GM_GOTO(upload_norm(c, &L, &w->layers[l].input_norm, c->layers[l].in_norm), st, done);
            GM_GOTO(upload_norm(c, &L, &w->layers[l].post_norm, c->layers[l].post_norm), st, done);
        }
    }
    for (int32_t l = 0; l < c->base.cfg.num_layers && c->fp8w && !c->fp8_ckpt; l++) {
        const gm_layer_weights *lw = &w->layers[l];
        cu_layer *y = &c->layers[l];
        bf16 *sg = c->wstage;
        const gm_wview *qkv[3] = {&lw->q, &lw->k, &lw->v}, *o1[1] = {&lw->o}, *gu[2] = {&lw->gate, &lw->up},
                       *dn[1] = {&lw->down};
        GM_GOTO(upload_view(c, &L, &lw->q, sg), st, done);
        GM_GOTO(upload_view(c, &L, &lw->k, sg + c->nq * c->hd * H), st, done);
        GM_GOTO(upload_view(c, &L, &lw->v, sg + (c->nq + c->nkv) * c->hd * H), st, done);
        GM_GOTO(quant_weight(c, sg, c->n_qkv * H, host_scale(c, qkv, 3), y->wqkv8, y->wsc), st, done);
        GM_GOTO(upload_view(c, &L, &lw->o, sg), st, done);
        GM_GOTO(quant_weight(c, sg, H * c->nq * c->hd, host_scale(c, o1, 1), y->wo8, y->wsc + SC_STRIDE), st, done);
        GM_GOTO(upload_view(c, &L, &lw->gate, sg), st, done);
        GM_GOTO(upload_view(c, &L, &lw->up, sg + c->ni * H), st, done);
        GM_GOTO(quant_weight(c, sg, 2 * c->ni * H, host_scale(c, gu, 2), y->wgu8, y->wsc + 2 * SC_STRIDE), st, done);
        GM_GOTO(upload_view(c, &L, &lw->down, sg), st, done);
        GM_GOTO(quant_weight(c, sg, H * c->ni, host_scale(c, dn, 1), y->wdown8, y->wsc + 3 * SC_STRIDE), st, done);
        GM_GOTO(upload_norm(c, &L, &lw->input_norm, y->in_norm), st, done);
        GM_GOTO(upload_norm(c, &L, &lw->post_norm, y->post_norm), st, done);
    }
    if (c->awq) {
        GM_GOTO(load_awq(c, lin, &L), st, done);
        for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
            GM_GOTO(upload_norm(c, &L, &w->layers[l].input_norm, c->layers[l].in_norm), st, done);
            GM_GOTO(upload_norm(c, &L, &w->layers[l].post_norm, c->layers[l].post_norm), st, done);
        }
    }
    for (int32_t l = 0; l < c->base.cfg.num_layers && !c->fp8w && !c->awq; l++) {
        const gm_layer_weights *lw = &w->layers[l];
        cu_layer *y = &c->layers[l];
        GM_GOTO(upload_view(c, &L, &lw->q, y->wqkv), st, done);
        GM_GOTO(upload_view(c, &L, &lw->k, y->wqkv + c->nq * c->hd * H), st, done);
        GM_GOTO(upload_view(c, &L, &lw->v, y->wqkv + (c->nq + c->nkv) * c->hd * H), st, done);
        GM_GOTO(upload_view(c, &L, &lw->o, y->wo), st, done);
        GM_GOTO(upload_view(c, &L, &lw->gate, y->wgu), st, done);
        GM_GOTO(upload_view(c, &L, &lw->up, y->wgu + c->ni * H), st, done);
        GM_GOTO(upload_view(c, &L, &lw->down, y->wdown), st, done);
        GM_GOTO(upload_norm(c, &L, &lw->input_norm, y->in_norm), st, done);
        GM_GOTO(upload_norm(c, &L, &lw->post_norm, y->post_norm), st, done);
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

static gm_status random_weights(cuda_engine *c, uint64_t seed)
{
    int64_t H = c->H;
    unsigned grid = (unsigned)(c->n_sm * 8);
    float sc = 0.02f;
    fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->embed, c->V * H, seed, 1.0f);
    fill_random_norm<<<grid, 256, 0, c->stream>>>(c->final_norm, H, seed + 1);
    for (int32_t l = 0; l < c->base.cfg.num_layers && c->fp8w; l++) {
        cu_layer *y = &c->layers[l];
        uint64_t s = seed + 100 * (uint64_t)(l + 1);
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->wstage, c->n_qkv * H, s + 2, sc);
        GM_CHECK(quant_weight(c, c->wstage, c->n_qkv * H, 0.0f, y->wqkv8, y->wsc));
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->wstage, H * c->nq * c->hd, s + 3, sc);
        GM_CHECK(quant_weight(c, c->wstage, H * c->nq * c->hd, 0.0f, y->wo8, y->wsc + SC_STRIDE));
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->wstage, 2 * c->ni * H, s + 4, sc);
        GM_CHECK(quant_weight(c, c->wstage, 2 * c->ni * H, 0.0f, y->wgu8, y->wsc + 2 * SC_STRIDE));
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(c->wstage, H * c->ni, s + 5, sc);
        GM_CHECK(quant_weight(c, c->wstage, H * c->ni, 0.0f, y->wdown8, y->wsc + 3 * SC_STRIDE));
        fill_random_norm<<<grid, 256, 0, c->stream>>>(y->in_norm, H, s + 6);
        fill_random_norm<<<grid, 256, 0, c->stream>>>(y->post_norm, H, s + 7);
    }
    for (int32_t l = 0; l < c->base.cfg.num_layers && !c->fp8w; l++) {
        cu_layer *y = &c->layers[l];
        uint64_t s = seed + 100 * (uint64_t)(l + 1);
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(y->wqkv, c->n_qkv * H, s + 2, sc);
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(y->wo, H * c->nq * c->hd, s + 3, sc);
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(y->wgu, 2 * c->ni * H, s + 4, sc);
        fill_random_bf16<<<grid, 256, 0, c->stream>>>(y->wdown, H * c->ni, s + 5, sc);
        fill_random_norm<<<grid, 256, 0, c->stream>>>(y->in_norm, H, s + 6);
        fill_random_norm<<<grid, 256, 0, c->stream>>>(y->post_norm, H, s + 7);
    }
    GM_LAUNCH_CHECK();
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return GM_OK;
}

/* ---------------------------------------------------------------- forward */

typedef struct fwd_args {
    meta_ptrs m;      /* device pointers */
    int64_t T;        /* token rows */
    int32_t S;        /* sequences (rows sampled) */
    int decode;       /* every sequence appends one token: T == S, row i = sequence i */
    int32_t n_split;  /* decode attention splits */
    int32_t max_new;  /* prefill: largest n_new */
    int sample;       /* rank 0 computes logits and samples */
    int xqa;          /* decode attention through xqa_decode */
    int32_t xqa_nb;   /* its split count */
    void *xqa_scratch;
    size_t xqa_bytes;
    int xqa_clear;    /* eager step: clear the semaphores first (the scratch is shared by all batch sizes) */
    int dec_xqa;      /* mixed step: its decode rows through XQA (else k_attn_decode(_fp8) with dec_split) */
    int32_t dec_split;
    int32_t n_dec;    /* mixed step: its first n_dec sequences decode one token each (one query row each:
                       * XQA or k_attn_decode(_fp8)); the others prefill (k_attn_prefill_kv) */
} fwd_args;

/* Activation quantizer of point i (0 qkv, 1 o, 2 gate|up, 3 down) of layer y: the layer's static
 * scale, or a dynamic one computed into the shared act_sc. */
static fp8_act act_q(const cuda_engine *c, const cu_layer *y, int i)
{
    fp8_act q;
    if (c->static_act) {
        q.scale = y->wsc + (4 + i) * SC_STRIDE;
        q.amax = NULL;
        q.tmp = NULL;
        return q;
    }
    q.scale = c->act_sc + i * SC_STRIDE;
    q.amax = c->act_sc + 4 * SC_STRIDE;
    q.tmp = c->act_tmp;
    return q;
}

/* The FP8 MLP's first half: gate|up product, GeGLU and the down_proj's e4m3 input (actq8) from xq8.
 * fused (T <= 4): FP8 GEMV v2 with the GeGLU in its epilogue (writing e4m3 directly under a static
 * scale); else gemm_fp8 into gu, then k_geglu_fp8. */
static gm_status gate_up_fp8(cuda_engine *c, const cu_layer *y, int64_t T, const fp8_act *a2, const fp8_act *a3,
                             int fused)
{
    cudaStream_t s = c->stream;
    int64_t H = c->H;
    if (fused && a3->amax == NULL)
        return gemv_fp8_v2_geglu_fp8(c->xq8, T, H, H, a2->scale, y->wgu8, H, y->wsc + 2 * SC_STRIDE, c->ni,
                                     a3->scale, c->actq8, c->ni, s);
    if (fused) { /* dynamic scales: the fused GeGLU to bf16, then the dynamic quantizer */
        GM_CHECK(gemv_fp8_v2_geglu(c->xq8, T, H, H, a2->scale, y->wgu8, H, y->wsc + 2 * SC_STRIDE, c->ni, c->act,
                                   c->ni, s));
        return k_fp8_quantize(c->act, c->ni, T, c->ni, a3, c->actq8, s);
    }
    GM_CHECK(gemm_fp8(c->gemm8, c->xq8, T, H, H, a2->scale, y->wgu8, H, y->wsc + 2 * SC_STRIDE, 2 * c->ni, c->gu, 0,
                      2 * c->ni, s));
    return k_geglu_fp8(c->gu, T, c->ni, a3, c->actq8, s);
}

/* Which gate|up path a batch-1..4 step takes: fused with its GeGLU exactly when gemm_fp8 would take the
 * FP8 GEMV v2 for the product (gemma-2b: fused, 19.2 vs 20.5 us graph-timed; 7b: not, v2 is slower at
 * K = 3072; bench/NOTES.md run F); GM_FP8_GEMV forces it (2: fused, 1: not). */
static gm_status pick_gate_up(cuda_engine *c)
{
    c->gu_fused = c->fp8w && c->H % 16 == 0 && gemv_fp8_v2_for(1, c->H, 2 * c->ni);
    if (c->fp8w && c->base.opts.verbose)
        fprintf(stderr, "cuda engine: batch-1 FP8 GEMVs: v2 where K is a power of two; gate|up %s\n",
                c->gu_fused ? "fused with its GeGLU" : "then GeGLU");
    return GM_OK;
}

/* logits [nr, V] f32 = x [nr, H] bf16 . embed^T: bf16 cuBLASLt/GEMV, or with --lm-head fp8 the rows
 * quantized with the static scale and the FP8 product (the CPU engine's twin: engine_cpu.c). */
static gm_status lm_head(cuda_engine *c, const bf16 *x, int64_t nr, cudaStream_t s)
{
    if (!c->embed8)
        return gemm_bf16(c->gemm, x, nr, c->H, c->H, c->embed, c->H, c->V, c->logits, 1, c->V, s);
    fp8_act q;
    q.scale = c->lm_sc + SC_STRIDE, q.amax = NULL, q.tmp = NULL;
    GM_CHECK(k_fp8_quantize(x, c->H, nr, c->H, &q, c->lmq8, s));
    return gemm_fp8(c->gemm8, c->lmq8, nr, c->H, c->H, c->lm_sc + SC_STRIDE, c->embed8, c->H, c->lm_sc, c->V,
                    c->logits, 1, c->V, s);
}

/* --lm-head fp8: embed8 = e4m3(embed / (amax / 448)) on the device, and the rows' static scale
 * sqrt(H) * max |1 + w_norm| / 448 from the uploaded final norm (cpu_fp8_lm_head_act_scale's value). */
static gm_status setup_lm_head_fp8(cuda_engine *c)
{
    int64_t H = c->H, n = c->V * H;
    GM_CHECK(dev_alloc((void **)&c->embed8, (size_t)n, "the FP8 LM head"));
    GM_CHECK(dev_alloc((void **)&c->lm_sc, 2 * SC_STRIDE * sizeof(float), "the FP8 LM head's scales"));
    GM_CHECK(dev_alloc((void **)&c->lmq8, (size_t)(c->cap_rows * H), "the FP8 LM head's rows"));
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
    c->weight_bytes -= n; /* a step reads the e4m3 copy (V H bytes), not the bf16 one (2 V H) */
    return GM_OK;
}

static gm_status forward(cuda_engine *c, const fwd_args *a)
{
    cudaStream_t s = c->stream;
    const meta_ptrs *m = &a->m;
    int64_t T = a->T, H = c->H, hd = c->hd, qw = c->nq * c->hd;
    int32_t bs = c->base.opts.kv_block_size;
    int df = c->delta_f32;
    size_t esz = c->kv8 ? 1 : 2;
    fp8_act aq[4];
    /* <= 4 rows: the gate|up product fused with its GeGLU where pick_gate_up found that faster */
    const int gv2 = c->fp8w && T <= 4 && c->gu_fused;
    c->prof.n = 0;
    prof_mark(c, -1);
    GM_CHECK(k_resolve_ids(m->ids, m->tok_slot, T, c->last_tok, s));
    GM_CHECK(k_embed(c->embed, c->V, H, m->ids, T, c->normalizer, c->h, s));
    prof_mark(c, OP_EMBED);
    if (a->xqa && a->xqa_clear)
        GM_CUDA_CHECK(cudaMemsetAsync(a->xqa_scratch, 0, c->xqa_sem_bytes, s));
    for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
        const cu_layer *y = &c->layers[l];
        char *kp = (char *)c->kv + (size_t)l * 2 * (size_t)c->layer_elems * esz, *vp = kp + (size_t)c->layer_elems * esz;
        const float kvs = y->kv_scale;
        for (int i = 0; i < 4 && c->fp8w; i++)
            aq[i] = act_q(c, y, i);
        if (c->awq) {
            if (l == 0)
                GM_CHECK(k_rmsnorm(c->h, H, y->in_norm, T, H, c->eps, c->xn, H, s));
            else
                GM_CHECK(k_add_rmsnorm(c->h, c->delta, df, y->in_norm, T, H, c->eps, c->xn, s));
            prof_mark(c, OP_NORM);
            GM_CHECK(awq_matmul(c->xn, T, H, &y->aw[0], c->qkv, c->n_qkv, c->awq_ws[0], c->awq_ws_bytes[0], s));
        } else if (c->fp8w) {
            if (l == 0)
                GM_CHECK(k_rmsnorm_fp8(c->h, H, y->in_norm, T, H, c->eps, &aq[0], c->xq8, s));
            else
                GM_CHECK(k_add_rmsnorm_fp8(c->h, c->delta, df, y->in_norm, T, H, c->eps, &aq[0], c->xq8, s));
            prof_mark(c, OP_NORM);
            GM_CHECK(gemm_fp8(c->gemm8, c->xq8, T, H, H, aq[0].scale, y->wqkv8, H, y->wsc, c->n_qkv, c->qkv, 0,
                              c->n_qkv, s));
        } else {
            if (l == 0)
                GM_CHECK(k_rmsnorm(c->h, H, y->in_norm, T, H, c->eps, c->xn, H, s));
            else
                GM_CHECK(k_add_rmsnorm(c->h, c->delta, df, y->in_norm, T, H, c->eps, c->xn, s));
            prof_mark(c, OP_NORM);
            GM_CHECK(gemm_bf16(c->gemm, c->xn, T, H, H, y->wqkv, H, c->n_qkv, c->qkv, 0, c->n_qkv, s));
        }
        prof_mark(c, OP_QKV);
        /* a decode step's k_attn_decode(_fp8) under static activation scales writes the o_proj's e4m3
         * input itself (no k_fp8_quantize) */
        int att8 = c->fp8w && aq[1].amax == NULL && a->decode && !a->xqa;
        if (a->decode && !a->xqa && !c->kv8) { /* RoPE and the KV write happen inside the attention kernel */
            GM_CHECK(k_attn_decode_rope(c->qkv, c->n_qkv, (int32_t)T, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)hd,
                                        kp, vp, bs, m->bt, c->max_blocks, m->ctx_len, m->slot, c->rope_tab, c->scale,
                                        a->n_split, c->dec_scratch, c->att, qw, att8 ? c->attq8 : NULL,
                                        att8 ? aq[1].scale : NULL, s));
        } else {
            /* RoPE on q and k; the bf16 pool is written here, the FP8 one by k_kv_write_fp8 */
            GM_CHECK(k_rope_kv_write(c->qkv, c->n_qkv, T, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)hd, m->pos,
                                     c->rope_tab, c->kv8 ? c->neg_slots : m->slot, kp, vp, bs, s));
            if (c->kv8)
                GM_CHECK(k_kv_write_fp8(c->qkv, c->n_qkv, T, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)hd, m->slot,
                                        kvs, kp, vp, bs, s));
            prof_mark(c, OP_ROPE_KV);
            if (a->decode && !a->xqa) {
                GM_CHECK(k_attn_decode_fp8(c->qkv, c->n_qkv, (int32_t)T, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)hd,
                                           kp, vp, bs, m->bt, c->max_blocks, m->ctx_len, c->scale, kvs, a->n_split,
                                           c->dec_scratch, c->att, qw, att8 ? c->attq8 : NULL,
                                           att8 ? aq[1].scale : NULL, s));
            } else if (a->decode) {
                xqa_params p;
                memset(&p, 0, sizeof p);
                p.q = c->qkv, p.ldq = c->n_qkv, p.out = c->att, p.ldo = qw;
                p.k_pool = kp, p.v_pool = vp, p.kv_type = c->kv8 ? XQA_KV_FP8 : XQA_KV_BF16;
                p.block_tables = m->bt, p.bt_stride = c->max_blocks, p.seq_lens = m->ctx_len;
                p.batch = (int32_t)T, p.q_len = 1, p.n_heads = (int32_t)c->nq, p.n_kv = (int32_t)c->nkv;
                p.head_dim = (int32_t)hd, p.block_size = bs, p.scale = c->scale, p.kv_scale = kvs;
                p.nb_sub_seq = a->xqa_nb, p.scratch = a->xqa_scratch, p.scratch_bytes = a->xqa_bytes;
                GM_CHECK(xqa_decode(&p, s));
            } else {
                int32_t nd = a->n_dec;
                if (nd > 0 && !a->dec_xqa) { /* the decode rows of a mixed step: one query row each */
                    if (c->kv8)
                        GM_CHECK(k_attn_decode_fp8(c->qkv, c->n_qkv, nd, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)hd,
                                                   kp, vp, bs, m->bt, c->max_blocks, m->ctx_len, c->scale, kvs,
                                                   a->dec_split, c->dec_scratch, c->att, qw, NULL, NULL, s));
                    else
                        GM_CHECK(k_attn_decode(c->qkv, c->n_qkv, nd, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)hd, kp,
                                               vp, bs, m->bt, c->max_blocks, m->ctx_len, c->scale, a->dec_split,
                                               c->dec_scratch, c->att, qw, s));
                } else if (nd > 0) { /* through XQA: one query row each, not a 64-row prefill tile */
                    xqa_params p;
                    memset(&p, 0, sizeof p);
                    p.q = c->qkv, p.ldq = c->n_qkv, p.out = c->att, p.ldo = qw;
                    p.k_pool = kp, p.v_pool = vp, p.kv_type = c->kv8 ? XQA_KV_FP8 : XQA_KV_BF16;
                    p.block_tables = m->bt, p.bt_stride = c->max_blocks, p.seq_lens = m->ctx_len;
                    p.batch = nd, p.q_len = 1, p.n_heads = (int32_t)c->nq, p.n_kv = (int32_t)c->nkv;
                    p.head_dim = (int32_t)hd, p.block_size = bs, p.scale = c->scale, p.kv_scale = kvs;
                    p.nb_sub_seq = a->xqa_nb, p.scratch = a->xqa_scratch, p.scratch_bytes = a->xqa_bytes;
                    GM_CHECK(xqa_decode(&p, s));
                }
                GM_CHECK(k_attn_prefill_kv(c->qkv, c->n_qkv, a->S - nd, m->q_start + nd, m->n_new + nd,
                                           m->start_pos + nd, a->max_new, (int32_t)c->nq, (int32_t)c->nkv,
                                           (int32_t)hd, kp, vp, bs, m->bt + (int64_t)nd * c->max_blocks,
                                           c->max_blocks, c->scale, c->att, qw, c->kv8, kvs, s));
            }
        }
        prof_mark(c, OP_ATTN);
        if (c->awq) {
            GM_CHECK(awq_matmul(c->att, T, qw, &y->aw[1], c->delta, H, c->awq_ws[1], c->awq_ws_bytes[1], s));
        } else if (c->fp8w) {
            if (!att8)
                GM_CHECK(k_fp8_quantize(c->att, qw, T, qw, &aq[1], c->attq8, s));
            GM_CHECK(gemm_fp8(c->gemm8, c->attq8, T, qw, qw, aq[1].scale, y->wo8, qw, y->wsc + SC_STRIDE, H, c->delta,
                              df, H, s));
        } else {
            GM_CHECK(gemm_bf16(c->gemm, c->att, T, qw, qw, y->wo, qw, H, c->delta, df, H, s));
        }
        prof_mark(c, OP_O);
        if (c->nccl) {
            GM_CHECK(gm_nccl_allreduce_f32(c->nccl, (float *)c->delta, T * H, s));
            prof_mark(c, OP_ALLREDUCE);
        }
        if (c->awq) {
            GM_CHECK(k_add_rmsnorm(c->h, c->delta, df, y->post_norm, T, H, c->eps, c->xn, s));
            prof_mark(c, OP_NORM);
            GM_CHECK(awq_matmul(c->xn, T, H, &y->aw[2], c->gu, 2 * c->ni, c->awq_ws[2], c->awq_ws_bytes[2], s));
            GM_CHECK(k_geglu(c->gu, T, c->ni, c->act, s));
            prof_mark(c, OP_GATE_UP);
            GM_CHECK(awq_matmul(c->act, T, c->ni, &y->aw[3], c->delta, H, c->awq_ws[3], c->awq_ws_bytes[3], s));
        } else if (c->fp8w) {
            GM_CHECK(k_add_rmsnorm_fp8(c->h, c->delta, df, y->post_norm, T, H, c->eps, &aq[2], c->xq8, s));
            prof_mark(c, OP_NORM);
            GM_CHECK(gate_up_fp8(c, y, T, &aq[2], &aq[3], gv2));
            prof_mark(c, OP_GATE_UP);
            GM_CHECK(gemm_fp8(c->gemm8, c->actq8, T, c->ni, c->ni, aq[3].scale, y->wdown8, c->ni,
                              y->wsc + 3 * SC_STRIDE, H, c->delta, df, H, s));
        } else {
            GM_CHECK(k_add_rmsnorm(c->h, c->delta, df, y->post_norm, T, H, c->eps, c->xn, s));
            prof_mark(c, OP_NORM);
            GM_CHECK(gemm_bf16_geglu(c->gemm, c->xn, T, H, H, y->wgu, H, c->ni, c->gu, c->act, s));
            prof_mark(c, OP_GATE_UP);
            GM_CHECK(gemm_bf16(c->gemm, c->act, T, c->ni, c->ni, y->wdown, c->ni, H, c->delta, df, H, s));
        }
        prof_mark(c, OP_DOWN);
        if (c->nccl) {
            GM_CHECK(gm_nccl_allreduce_f32(c->nccl, (float *)c->delta, T * H, s));
            prof_mark(c, OP_ALLREDUCE);
        }
    }
    GM_CHECK(k_add_rmsnorm(c->h, c->delta, df, c->final_norm, T, H, c->eps, c->xn, s));
    prof_mark(c, OP_NORM);
    if (a->sample) {
        const bf16 *x = c->xn;
        if (!a->decode) {
            GM_CHECK(k_gather_rows(c->xn, H, m->rows, a->S, H, c->xs, s));
            x = c->xs;
        }
        GM_CHECK(lm_head(c, x, a->S, s));
        prof_mark(c, OP_LM_HEAD);
        GM_CHECK(k_sample(c->logits, c->V, c->V, a->S, m->params, m->counters, m->tokens, s));
    }
    if (c->nccl)
        GM_CHECK(gm_nccl_broadcast_i32(c->nccl, m->tokens, a->S, 0, s));
    GM_CHECK(k_feed_tokens(m->tokens, m->sslot, a->S, c->last_tok, s));
    prof_mark(c, OP_SAMPLE);
    return GM_OK;
}

static void drop_graphs(cuda_engine *c)
{
    for (int32_t i = 0; i < c->n_buckets; i++) {
        if (c->buckets[i].exec)
            cudaGraphExecDestroy(c->buckets[i].exec);
        c->buckets[i].exec = NULL;
        c->buckets[i].warm = 0;
    }
}

static gm_status capture(cuda_engine *c, const fwd_args *a, cudaGraphExec_t *exec)
{
    gm_status st = GM_OK;
    cudaGraph_t g = NULL;
    *exec = NULL;
    GM_CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    st = forward(c, a);
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (st)
        goto done;
    if (e != cudaSuccess) {
        st = gm_fail(GM_ERR_CUDA, "cuda graph capture of a decode step: %s", cudaGetErrorString(e));
        goto done;
    }
    GM_CUDA_GOTO(cudaGraphInstantiate(exec, g, 0), st, done);
done:
    if (g)
        cudaGraphDestroy(g);
    return st;
}

/* Dump logits of the wanted rows (GM_LOGITS_ALL rows, then one per LAST sequence, batch order). */
static gm_status dump_logits(cuda_engine *c, int64_t n_rows, float *out)
{
    cudaStream_t s = c->stream;
    GM_CUDA_CHECK(cudaMemcpyAsync(c->dump_rows, c->dump_rows_h, (size_t)n_rows * 4, cudaMemcpyHostToDevice, s));
    for (int64_t r0 = 0; r0 < n_rows; r0 += c->cap_rows) {
        int64_t nr = n_rows - r0 < c->cap_rows ? n_rows - r0 : c->cap_rows;
        GM_CHECK(k_gather_rows(c->xn, c->H, c->dump_rows + r0, nr, c->H, c->xs, s));
        GM_CHECK(lm_head(c, c->xs, nr, s));
        GM_CUDA_CHECK(cudaMemcpyAsync(out + r0 * c->V, c->logits, (size_t)(nr * c->V) * sizeof(float),
                                      cudaMemcpyDeviceToHost, s));
    }
    return GM_OK;
}

/* Decode attention through XQA for this batch size? XQA (v2) reads MHA's KV at the copy rate from 2 rows
 * and MQA/GQA's from XQA_MIN_BATCH rows (bench/RESULTS.md, run F); below that k_attn_decode (bf16, with
 * RoPE and the KV write folded in) and k_attn_decode_fp8 (1, 2, 4 or 8 query heads per KV head) answer
 * sooner at the contexts batch-1 chat sees (7b batch 1: 343 vs 328 tok/s at 128-256 tokens; XQA wins
 * past ~2k tokens). */
static int use_xqa(const cuda_engine *c, int32_t batch)
{
    int64_t g = c->nq / c->nkv;
    int dec_ok = c->nq % c->nkv == 0 && (g == 1 || g == 2 || g == 4 || g == 8) &&
                 (c->hd == 32 || c->hd == 64 || c->hd == 128 || c->hd == 256);
    if (!dec_ok || c->xqa_mode == 2)
        return 1;
    return c->xqa_mode == 1 && (g == 1 ? batch >= 2 : batch >= XQA_MIN_BATCH);
}

static int32_t xqa_nb_for(const cuda_engine *c, int32_t batch)
{
    xqa_params p;
    memset(&p, 0, sizeof p);
    p.batch = batch, p.q_len = 1, p.n_heads = (int32_t)c->nq, p.n_kv = (int32_t)c->nkv, p.head_dim = (int32_t)c->hd;
    p.kv_type = c->kv8 ? XQA_KV_FP8 : XQA_KV_BF16, p.block_size = c->base.opts.kv_block_size;
    int32_t nb = xqa_pick_sub_seq(&p, c->base.opts.max_context, c->n_sm);
    return nb < 1 ? 1 : nb;
}

static int32_t bucket_index(const cuda_engine *c, int32_t n)
{
    for (int32_t i = 0; i < c->n_buckets; i++)
        if (c->buckets[i].size >= n)
            return i;
    return -1;
}

static gm_status cuda_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out)
{
    cuda_engine *c = (cuda_engine *)e;
    const gm_engine_opts *o = &e->opts;
    int32_t bs = o->kv_block_size;
    gm_status st;

    /* -1 in a one-token sequence = the token sampled on the device last step: check it as 0 */
    gm_seq_step local[64];
    int32_t zero = 0;
    const gm_seq_step *chk = seqs;
    int any_feed = 0;
    for (int32_t i = 0; i < n_seqs && seqs; i++)
        if (seqs[i].n_tokens == 1 && seqs[i].tokens && seqs[i].tokens[0] == -1)
            any_feed = 1;
    gm_seq_step *tmp = NULL;
    if (any_feed) {
        tmp = n_seqs <= 64 ? local : (gm_seq_step *)malloc((size_t)n_seqs * sizeof *tmp);
        if (!tmp)
            return gm_fail(GM_ERR_NOMEM, "cuda step: no host memory");
        for (int32_t i = 0; i < n_seqs; i++) {
            tmp[i] = seqs[i];
            if (seqs[i].n_tokens == 1 && seqs[i].tokens && seqs[i].tokens[0] == -1)
                tmp[i].tokens = &zero;
        }
        chk = tmp;
    }
    int64_t T = 0, rows = 0;
    st = gm_engine_check_step(e, chk, n_seqs, out, &T, &rows);
    if (tmp && tmp != local)
        free(tmp);
    if (st)
        return st;
    if (T == 0)
        return GM_OK;

    int decode = 1;
    int32_t max_new = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        if (seqs[i].n_tokens != 1)
            decode = 0;
        if (seqs[i].n_tokens > max_new)
            max_new = seqs[i].n_tokens;
    }
    /* a mixed step runs its decode sequences first (one query row each in the decode attention) */
    int32_t nd = 0;
    for (int32_t i = 0; i < n_seqs; i++)
        if (decode || seqs[i].n_tokens == 1)
            c->order_h[nd++] = i;
    if (!decode)
        for (int32_t i = 0, k = nd; i < n_seqs; i++)
            if (seqs[i].n_tokens != 1)
                c->order_h[k++] = i;
    int32_t bi = decode && o->use_graphs ? bucket_index(c, n_seqs) : -1;
    int use_bucket = bi >= 0;
    int32_t Sc = use_bucket ? c->buckets[bi].size : n_seqs;
    int64_t Tc = use_bucket ? Sc : T;

    meta_ptrs mh, md;
    meta_layout(c->meta_h, Tc, Sc, c->max_blocks, &mh);
    meta_layout(c->meta_d, Tc, Sc, c->max_blocks, &md);
    if (mh.bytes > c->meta_cap)
        return gm_fail(GM_ERR_INTERNAL, "cuda step: metadata of %zu bytes exceeds %zu", mh.bytes, c->meta_cap);
    int64_t t = 0;
    for (int32_t i = 0; i < Sc; i++) {
        int32_t *bt = mh.bt + (int64_t)i * c->max_blocks;
        if (i >= n_seqs) { /* padding row of a bucket */
            mh.ids[t] = 0, mh.pos[t] = 0, mh.slot[t] = -1, mh.tok_slot[t] = 0;
            mh.q_start[i] = (int32_t)t, mh.n_new[i] = 1, mh.start_pos[i] = 0, mh.ctx_len[i] = 0;
            mh.rows[i] = (int32_t)t, mh.sslot[i] = -1, mh.counters[i] = 0;
            mh.params[i] = GM_SAMPLING_GREEDY;
            bt[0] = 0;
            t++;
            continue;
        }
        const gm_seq_step *q = &seqs[c->order_h[i]];
        c->tstart_h[c->order_h[i]] = t;
        mh.q_start[i] = (int32_t)t;
        mh.n_new[i] = q->n_tokens;
        mh.start_pos[i] = q->start_pos;
        mh.ctx_len[i] = q->start_pos + q->n_tokens;
        mh.rows[i] = (int32_t)(t + q->n_tokens - 1);
        mh.sslot[i] = q->logits_mode != GM_LOGITS_NONE ? q->slot : -1;
        mh.counters[i] = (uint64_t)q->start_pos + (uint64_t)q->n_tokens;
        mh.params[i] = q->sampling;
        int32_t nb = q->n_blocks < c->max_blocks ? q->n_blocks : c->max_blocks;
        memcpy(bt, q->block_table, (size_t)nb * sizeof(int32_t));
        for (int32_t j = 0; j < q->n_tokens; j++, t++) {
            int32_t p = q->start_pos + j;
            mh.ids[t] = q->tokens[j];
            mh.pos[t] = p;
            mh.slot[t] = q->block_table[p / bs] * bs + p % bs;
            mh.tok_slot[t] = q->slot;
        }
    }
    GM_CUDA_CHECK(cudaMemcpyAsync(c->meta_d, c->meta_h, mh.bytes, cudaMemcpyHostToDevice, c->stream));

    fwd_args a;
    memset(&a, 0, sizeof a);
    a.m = md;
    a.T = Tc;
    a.S = Sc;
    a.decode = decode;
    a.max_new = max_new;
    a.sample = o->tp_rank == 0;
    if (!decode && nd > 0 && !use_xqa(c, nd)) {
        a.n_dec = nd;
        a.dec_split = k_attn_decode_splits(nd, (int32_t)c->nkv, o->max_context, c->n_sm);
    } else if (!decode && nd > 0 && c->xqa_scratch) {
        a.n_dec = nd;
        a.dec_xqa = 1;
        a.xqa = 1; /* for the semaphore clear */
        a.xqa_nb = xqa_nb_for(c, nd);
        a.xqa_scratch = c->xqa_scratch, a.xqa_bytes = c->xqa_bytes, a.xqa_clear = 1;
    }
    if (decode) {
        if (use_bucket) {
            const cu_bucket *b = &c->buckets[bi];
            a.n_split = b->n_split;
            a.xqa = b->xqa, a.xqa_nb = b->xqa_nb, a.xqa_scratch = b->xqa_scratch, a.xqa_bytes = b->xqa_bytes;
        } else {
            a.n_split = k_attn_decode_splits(Sc, (int32_t)c->nkv, o->max_context, c->n_sm);
            a.xqa = use_xqa(c, Sc);
            if (a.xqa) {
                a.xqa_nb = xqa_nb_for(c, Sc);
                a.xqa_scratch = c->xqa_scratch, a.xqa_bytes = c->xqa_bytes, a.xqa_clear = 1;
            }
        }
    }
    if (use_bucket) {
        cu_bucket *b = &c->buckets[bi];
        if (b->exec) {
            GM_CUDA_CHECK(cudaGraphLaunch(b->exec, c->stream));
            c->prof.n = b->prof_n; /* the marks recorded by this graph's event nodes */
        } else {
            /* first sight of this bucket: run it eagerly (cuBLASLt picks its algorithms), then
             * capture it for the next steps */
            GM_CHECK(forward(c, &a));
            b->warm = 1;
            c->prof.n = 0; /* the profile counts graph replays only */
            GM_CHECK(capture(c, &a, &b->exec));
            b->prof_n = c->prof.n;
            c->prof.n = 0; /* nothing ran yet */
        }
    } else {
        GM_CHECK(forward(c, &a));
    }

    if (out && out->tokens && o->tp_rank == 0)
        GM_CUDA_CHECK(cudaMemcpyAsync(c->tok_h, md.tokens, (size_t)n_seqs * 4, cudaMemcpyDeviceToHost, c->stream));
    int64_t n_dump = 0;
    if (out && out->logits && o->tp_rank == 0 && rows > 0) {
        for (int32_t i = 0; i < n_seqs; i++) {
            const gm_seq_step *q = &seqs[i];
            int64_t tt = c->tstart_h[i];
            if (q->logits_mode == GM_LOGITS_ALL)
                for (int32_t j = 0; j < q->n_tokens; j++)
                    c->dump_rows_h[n_dump++] = (int32_t)(tt + j);
            else if (q->logits_mode == GM_LOGITS_LAST)
                c->dump_rows_h[n_dump++] = (int32_t)(tt + q->n_tokens - 1);
        }
        GM_CHECK(dump_logits(c, n_dump, out->logits));
    }
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (decode)
        prof_collect(c); /* the profile covers decode steps */
    c->prof.n = 0;
    if (out && out->tokens && o->tp_rank == 0)
        for (int32_t i = 0; i < n_seqs; i++)
            out->tokens[c->order_h[i]] = seqs[c->order_h[i]].logits_mode == GM_LOGITS_NONE ? -1 : c->tok_h[i];
    return GM_OK;
}

/* ---------------------------------------------------------------- create / destroy */

static void cuda_destroy(gm_engine *e)
{
    cuda_engine *c = (cuda_engine *)e;
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    drop_graphs(c);
    if (c->layers) {
        for (int32_t l = 0; l < c->base.cfg.num_layers; l++) {
            cu_layer *y = &c->layers[l];
            cudaFree(y->wqkv), cudaFree(y->wo), cudaFree(y->wgu), cudaFree(y->wdown);
            cudaFree(y->in_norm), cudaFree(y->post_norm);
            cudaFree(y->wqkv8), cudaFree(y->wo8), cudaFree(y->wgu8), cudaFree(y->wdown8), cudaFree(y->wsc);
            for (int i = 0; i < 4; i++) {
                cudaFree((void *)y->aw[i].qweight), cudaFree((void *)y->aw[i].qzeros);
                cudaFree((void *)y->aw[i].scales);
            }
        }
        free(c->layers);
    }
    cudaFree(c->embed), cudaFree(c->final_norm), cudaFree(c->rope_tab), cudaFree(c->kv);
    cudaFree(c->embed8), cudaFree(c->lm_sc), cudaFree(c->lmq8);
    for (int i = 0; i < PROF_MAX; i++)
        if (c->prof.ev[i])
            cudaEventDestroy(c->prof.ev[i]);
    cudaFree(c->h), cudaFree(c->xn), cudaFree(c->qkv), cudaFree(c->att), cudaFree(c->gu), cudaFree(c->act);
    cudaFree(c->delta), cudaFree(c->xs), cudaFree(c->logits), cudaFree(c->dump_rows), cudaFree(c->last_tok);
    cudaFree(c->dec_scratch), cudaFree(c->meta_d);
    cudaFree(c->neg_slots), cudaFree(c->xq8), cudaFree(c->attq8), cudaFree(c->actq8), cudaFree(c->act_tmp);
    cudaFree(c->act_sc), cudaFree(c->wstage), cudaFree(c->xqa_scratch);
    for (int i = 0; i < 4; i++)
        cudaFree(c->awq_ws[i]);
    for (int32_t i = 0; i < c->n_buckets; i++)
        cudaFree(c->buckets[i].xqa_scratch);
    gemm_fp8_ctx_destroy(&c->gemm8);
    if (c->meta_h)
        cudaFreeHost(c->meta_h);
    if (c->tok_h)
        cudaFreeHost(c->tok_h);
    free(c->dump_rows_h), free(c->order_h), free(c->tstart_h);
    gemm_ctx_destroy(&c->gemm);
    gm_nccl_destroy(&c->nccl);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    st_model_destroy(&c->model);
    free(c);
}

static const gm_engine_ops g_cuda_ops = {cuda_step, cuda_destroy};

static gm_status alloc_runtime(cuda_engine *c)
{
    const gm_engine_opts *o = &c->base.opts;
    int64_t T = o->max_tokens, H = c->H;
    c->cap_t = T;
    c->delta_f32 = o->tp_size > 1;
    GM_CHECK(dev_alloc((void **)&c->h, (size_t)(T * H * 2), "activations"));
    GM_CHECK(dev_alloc((void **)&c->xn, (size_t)(T * H * 2), "activations"));
    GM_CHECK(dev_alloc((void **)&c->qkv, (size_t)(T * c->n_qkv * 2), "activations"));
    GM_CHECK(dev_alloc((void **)&c->att, (size_t)(T * c->nq * c->hd * 2), "activations"));
    GM_CHECK(dev_alloc((void **)&c->gu, (size_t)(T * 2 * c->ni * 2), "activations"));
    GM_CHECK(dev_alloc((void **)&c->act, (size_t)(T * c->ni * 2), "activations"));
    GM_CHECK(dev_alloc(&c->delta, (size_t)(T * H * 4), "activations"));
    GM_CHECK(dev_alloc((void **)&c->neg_slots, (size_t)T * 4, "activations"));
    GM_CUDA_CHECK(cudaMemset(c->neg_slots, 0xff, (size_t)T * 4));
    if (c->fp8w) {
        int64_t wide = c->ni > H ? c->ni : H;
        GM_CHECK(dev_alloc((void **)&c->xq8, (size_t)(T * H), "fp8 activations"));
        GM_CHECK(dev_alloc((void **)&c->attq8, (size_t)(T * c->nq * c->hd), "fp8 activations"));
        GM_CHECK(dev_alloc((void **)&c->actq8, (size_t)(T * c->ni), "fp8 activations"));
        GM_CHECK(dev_alloc((void **)&c->act_tmp, (size_t)(T * wide * 2), "fp8 activations"));
        GM_CHECK(dev_alloc((void **)&c->act_sc, 5 * SC_STRIDE * sizeof(float), "fp8 scales"));
        GM_CUDA_CHECK(cudaMemset(c->act_sc, 0, 5 * SC_STRIDE * sizeof(float)));
    }
    c->cap_rows = o->max_seqs > LOGIT_CHUNK ? o->max_seqs : LOGIT_CHUNK;
    GM_CHECK(dev_alloc((void **)&c->xs, (size_t)(c->cap_rows * H * 2), "logits"));
    GM_CHECK(dev_alloc((void **)&c->logits, (size_t)(c->cap_rows * c->V * 4), "logits"));
    GM_CHECK(dev_alloc((void **)&c->dump_rows, (size_t)T * 4, "logits"));
    GM_CHECK(dev_alloc((void **)&c->last_tok, (size_t)o->max_seqs * 4, "tokens"));
    GM_CUDA_CHECK(cudaMemset(c->last_tok, 0, (size_t)o->max_seqs * 4));
    c->dump_rows_h = (int32_t *)malloc((size_t)T * 4);
    c->order_h = (int32_t *)malloc((size_t)o->max_seqs * 4);
    c->tstart_h = (int64_t *)malloc((size_t)o->max_seqs * 8);
    if (!c->dump_rows_h || !c->order_h || !c->tstart_h)
        return gm_fail(GM_ERR_NOMEM, "cuda engine: no host memory");

    /* metadata: the largest of an eager step (T tokens, max_seqs) and any bucket */
    meta_ptrs m;
    char dummy[16];
    meta_layout(dummy, T > o->max_seqs ? T : o->max_seqs, o->max_seqs, c->max_blocks, &m);
    c->meta_cap = m.bytes;
    GM_CHECK(dev_alloc((void **)&c->meta_d, c->meta_cap, "step metadata"));
    GM_CUDA_CHECK(cudaMallocHost((void **)&c->meta_h, c->meta_cap));
    GM_CUDA_CHECK(cudaMallocHost((void **)&c->tok_h, (size_t)o->max_seqs * 4));
    memset(c->meta_h, 0, c->meta_cap);

    /* decode buckets: 1, 2, 4, 8, then steps of 8 up to 128, then of 16 up to 256, 32 up to 512, ...
     * (<= 12.5% padding) up to max_seqs (and max_tokens) */
    int32_t most = o->max_seqs < o->max_tokens ? o->max_seqs : o->max_tokens;
    c->n_buckets = 0;
    for (int32_t b = 1; c->n_buckets < MAX_BUCKETS;) {
        int32_t sz = b < most ? b : most;
        c->buckets[c->n_buckets].size = sz;
        c->buckets[c->n_buckets].n_split = k_attn_decode_splits(sz, (int32_t)c->nkv, o->max_context, c->n_sm);
        c->n_buckets++;
        if (sz >= most)
            break;
        int32_t step = 8;
        if (b >= 128)
            for (step = 16; step * 16 <= b; step *= 2) {
            }
        b = b < 8 ? 2 * b : b + step;
        if (c->n_buckets == MAX_BUCKETS - 1)
            b = most;
    }
    size_t scratch = 0;
    for (int32_t B = 1; B <= o->max_seqs; B++) {
        int32_t ns = k_attn_decode_splits(B, (int32_t)c->nkv, o->max_context, c->n_sm);
        size_t sb = k_attn_decode_scratch_bytes(B, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)c->hd, ns);
        if (sb > scratch)
            scratch = sb;
    }
    for (int32_t i = 0; i < c->n_buckets; i++) {
        size_t sb = k_attn_decode_scratch_bytes(c->buckets[i].size, (int32_t)c->nq, (int32_t)c->nkv,
                                                (int32_t)c->hd, c->buckets[i].n_split);
        if (sb > scratch)
            scratch = sb;
    }
    c->dec_scratch_bytes = scratch;
    GM_CHECK(dev_alloc(&c->dec_scratch, scratch, "decode attention scratch"));
    GM_CUDA_CHECK(cudaMemset(c->dec_scratch, 0, scratch));

    /* XQA: a zeroed scratch per bucket (its split semaphores sit at offsets that depend on the batch),
     * and one for eager steps of any batch, whose semaphores are cleared before each step */
    {
        const char *xm = getenv("GM_CUDA_XQA");
        c->xqa_mode = xm && *xm ? atoi(xm) : 1;
    }
    size_t xs = 0;
    for (int32_t i = 0; i < c->n_buckets; i++) {
        cu_bucket *b = &c->buckets[i];
        b->xqa = use_xqa(c, b->size);
        if (!b->xqa)
            continue;
        b->xqa_nb = xqa_nb_for(c, b->size);
        b->xqa_bytes = xqa_scratch_bytes(b->size, (int32_t)c->nkv, (int32_t)c->nq, 1, (int32_t)c->hd, b->xqa_nb);
        GM_CHECK(dev_alloc(&b->xqa_scratch, b->xqa_bytes, "XQA scratch"));
        GM_CUDA_CHECK(cudaMemset(b->xqa_scratch, 0, b->xqa_bytes));
    }
    for (int32_t B = 1; B <= o->max_seqs; B++) { /* eager steps, mixed steps' decode rows included */
        size_t sb = xqa_scratch_bytes(B, (int32_t)c->nkv, (int32_t)c->nq, 1, (int32_t)c->hd, xqa_nb_for(c, B));
        xs = sb > xs ? sb : xs;
    }
    if (xs) {
        c->xqa_bytes = xs;
        c->xqa_sem_bytes = ((size_t)o->max_seqs * (size_t)c->nkv * 4 + 255) & ~(size_t)255;
        if (c->xqa_sem_bytes > xs)
            c->xqa_sem_bytes = xs;
        GM_CHECK(dev_alloc(&c->xqa_scratch, xs, "XQA scratch"));
        GM_CUDA_CHECK(cudaMemset(c->xqa_scratch, 0, xs));
    }

    int32_t mp = o->max_context;
    GM_CHECK(dev_alloc((void **)&c->rope_tab, (size_t)mp * (size_t)c->hd * 4, "the RoPE table"));
    GM_CHECK(k_rope_table(c->rope_tab, mp, (int32_t)c->hd, c->base.cfg.rope_theta));
    return GM_OK;
}

/* The sizes the spec leaves unset (ctl/sizing.h), from the memory left after the weights;
 * at tp > 1 every rank takes rank 0's, since graph buckets and collectives must match. */
static gm_status size_limits(cuda_engine *c, const gm_worker_spec *spec, gm_device_mem *mem)
{
    gm_engine_opts *o = &c->base.opts;
    size_t fr = 0, tot = 0;
    GM_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    mem->total = (int64_t)tot, mem->free_weights = (int64_t)fr;
    mem->kv_block_bytes = 2 * (int64_t)c->base.cfg.num_layers * c->nkv * o->kv_block_size * c->hd * (c->kv8 ? 1 : 2);
    gm_sizing *z = &c->base.sizing;
    GM_CHECK(gm_sizing_decide(&c->base.cfg, spec, mem, z));
    if (c->nccl) {
        int32_t v[3] = {z->max_seqs, z->max_tokens, z->max_context}, *d = NULL;
        gm_status st = GM_OK;
        GM_CHECK(dev_alloc((void **)&d, sizeof v, "sizing"));
        GM_CUDA_GOTO(cudaMemcpy(d, v, sizeof v, cudaMemcpyHostToDevice), st, done);
        GM_GOTO(gm_nccl_broadcast_i32(c->nccl, d, 3, 0, c->stream), st, done);
        GM_CUDA_GOTO(cudaMemcpyAsync(v, d, sizeof v, cudaMemcpyDeviceToHost, c->stream), st, done);
        GM_CUDA_GOTO(cudaStreamSynchronize(c->stream), st, done);
        z->max_seqs = v[0], z->max_tokens = v[1], z->max_context = v[2];
    done:
        cudaFree(d);
        GM_CHECK(st);
    }
    o->max_seqs = z->max_seqs, o->max_tokens = z->max_tokens, o->max_context = z->max_context;
    c->max_blocks = (o->max_context + o->kv_block_size - 1) / o->kv_block_size;
    return GM_OK;
}

/* The KV pool: the spec's, or kv_mem_fraction of what the runtime buffers left (ctl/sizing.h). */
static gm_status alloc_kv(cuda_engine *c, const gm_worker_spec *spec, gm_device_mem *mem)
{
    const gm_engine_opts *o = &c->base.opts;
    int64_t block_elems = c->nkv * o->kv_block_size * c->hd;
    int64_t esz = c->kv8 ? 1 : 2;
    int64_t per_block = 2 * (int64_t)c->base.cfg.num_layers * block_elems * esz; /* bytes, all layers, K and V */
    size_t fr = 0, tot = 0;
    GM_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    mem->free_runtime = (int64_t)fr > 0 ? (int64_t)fr : 1;
    gm_sizing z;
    GM_CHECK(gm_sizing_decide(&c->base.cfg, spec, mem, &z));
    int64_t n = z.kv_num_blocks;
    c->base.kv_num_blocks = n;
    c->base.sizing.kv_num_blocks = n, c->base.sizing.kv_bytes = z.kv_bytes, c->base.sizing.kv_block_bytes = per_block;
    memcpy(c->base.sizing.why_kv, z.why_kv, sizeof z.why_kv);
    c->layer_elems = n * block_elems;
    GM_CHECK(dev_alloc((void **)&c->kv, (size_t)(2 * c->base.cfg.num_layers) * (size_t)c->layer_elems * (size_t)esz,
                       "the KV cache"));
    if (o->verbose)
        fprintf(stderr, "cuda engine: KV cache %lld blocks of %d tokens (%.2f GB, %s)\n", (long long)n,
                o->kv_block_size, (double)n * (double)per_block / 1e9, c->kv8 ? "fp8 e4m3" : "bf16");
    return GM_OK;
}

static gm_status cuda_create(const gm_engine_opts *o, const gm_model_config *cfg, const char *model_dir,
                             int random, uint64_t seed, gm_engine **out)
{
    *out = NULL;
    gm_status st = GM_OK;
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
    if (cfg->hidden_size % 8 || cfg->vocab_size % 8 || cfg->head_dim > 512)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: hidden %d and vocab %d must be multiples of 8",
                       cfg->hidden_size, cfg->vocab_size);
    if ((o->quant == GM_QUANT_FP8 || o->lm_head_fp8) && cfg->hidden_size % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: FP8 GEMMs need hidden %% 16 == 0 (hidden %d)",
                       cfg->hidden_size);
    GM_CUDA_CHECK(cudaSetDevice(o->device));

    cuda_engine *c = (cuda_engine *)calloc(1, sizeof *c);
    if (!c)
        return gm_fail(GM_ERR_NOMEM, "backend cuda: no host memory");
    c->base.ops = &g_cuda_ops;
    gm_engine_init_common(&c->base, cfg, o);
    gm_worker_spec spec; /* the sizes as asked (0 = derive), before init_common filled them in */
    gm_device_mem mem = {0, 0, 0, 0};
    c->fp8w = o->quant == GM_QUANT_FP8;
    c->awq = o->quant == GM_QUANT_AWQ;
    gm_linear *lin = NULL;
    c->kv8 = o->kv_dtype == GM_KV_FP8;
    gm_weights w;
    memset(&w, 0, sizeof w);
    int have_w = 0;
    GM_GOTO(gm_engine_opts_spec(o, &spec), st, fail);
    GM_GOTO(gm_tp_layout_make(cfg, o->tp_rank, o->tp_size, &c->tp), st, fail);
    if (!random) {
        GM_GOTO(st_model_open(model_dir, &c->model), st, fail);
        GM_GOTO(gm_weights_bind(c->model, cfg, o->tp_rank, o->tp_size, &w), st, fail);
        have_w = 1;
        gm_quant_config qc;
        GM_GOTO(gm_quant_config_load(model_dir, &qc), st, fail);
        if (qc.present && strcmp(qc.method, "fp8") == 0) { /* e4m3 weights as stored (gemma-quantize --fp8) */
            if (c->awq) {
                st = gm_fail(GM_ERR_INVALID_ARG, "backend cuda: %s is an FP8 checkpoint: run it with --quant fp8 (or "
                             "none), not awq", model_dir);
                goto fail;
            }
            c->fp8w = c->fp8_ckpt = 1;
            GM_GOTO(gm_linears_bind(c->model, cfg, &w.tp, 0, &lin), st, fail);
        } else if (qc.present && strcmp(qc.method, "awq") != 0) {
            st = gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: %s: quantization method \"%s\" is not supported",
                         model_dir, qc.method);
            goto fail;
        }
        if (qc.present && strcmp(qc.method, "awq") == 0 && !c->awq) {
            st = gm_fail(GM_ERR_INVALID_ARG, "backend cuda: %s is an AWQ checkpoint: run it with --quant awq",
                         model_dir);
            goto fail;
        }
        if (c->awq) {
            if (!qc.present || strcmp(qc.method, "awq") != 0) {
                st = gm_fail(GM_ERR_INVALID_ARG, "backend cuda: --quant awq, but %s has no AWQ quantization_config",
                             model_dir);
                goto fail;
            }
            GM_GOTO(gm_linears_bind(c->model, cfg, &w.tp, qc.group_size, &lin), st, fail);
        }
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
    c->scale = 1.0f / sqrtf((float)cfg->head_dim);
    {
        cudaDeviceProp prop;
        GM_CUDA_GOTO(cudaGetDeviceProperties(&prop, o->device), st, fail);
        c->n_sm = prop.multiProcessorCount;
        if (o->verbose)
            fprintf(stderr, "cuda engine: %s, %d SMs, %.1f GB; rank %d of %d\n", prop.name, c->n_sm,
                    (double)prop.totalGlobalMem / 1e9, o->tp_rank, o->tp_size);
    }
    GM_CUDA_GOTO(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), st, fail);
    GM_GOTO(gemm_ctx_new(0, &c->gemm), st, fail);
    if (c->fp8w || o->lm_head_fp8)
        GM_GOTO(gemm_fp8_ctx_new(0, &c->gemm8), st, fail);
    {
        const char *gv = getenv("GM_CUDA_GEMV_ROWS");
        if (gv && *gv)
            gemm_ctx_set_gemv_rows(c->gemm, atoi(gv));
        const char *pdl = getenv("GM_CUDA_PDL");
        if (pdl && *pdl)
            k_set_pdl(atoi(pdl));
    }
    if (o->tp_size > 1)
        GM_GOTO(gm_nccl_create(o->nccl_id, o->tp_rank, o->tp_size, &c->nccl), st, fail);

    GM_GOTO(alloc_weights(c), st, fail);
    if (random)
        GM_GOTO(random_weights(c, seed), st, fail);
    else
        GM_GOTO(load_weights(c, &w, lin), st, fail);
    if (lin)
        gm_linears_free(lin, (int64_t)cfg->num_layers * GM_LIN_COUNT);
    free(lin);
    lin = NULL;
    for (int i = 0; i < 4 && c->awq; i++) {
        GM_GOTO(dev_alloc(&c->awq_ws[i], c->awq_ws_bytes[i], "the AWQ workspace"), st, fail);
        GM_CUDA_GOTO(cudaMemset(c->awq_ws[i], 0, c->awq_ws_bytes[i] ? c->awq_ws_bytes[i] : 16), st, fail);
    }
    if (have_w)
        gm_weights_release(&w), have_w = 0;
    st_model_destroy(&c->model); /* weights are on the device now */
    cudaFree(c->wstage);
    c->wstage = NULL;
    GM_GOTO(size_limits(c, &spec, &mem), st, fail);
    GM_GOTO(alloc_runtime(c), st, fail);
    if (o->lm_head_fp8 && o->tp_rank == 0) /* only rank 0 computes logits */
        GM_GOTO(setup_lm_head_fp8(c), st, fail);
    GM_GOTO(alloc_kv(c, &spec, &mem), st, fail);
    GM_GOTO(pick_gate_up(c), st, fail);
    if (o->verbose)
        fprintf(stderr, "cuda engine: ready: %.2f GB of weights read per step (%s, %s LM head), %d decode buckets, "
                "graphs %s, XQA mode %d\n", (double)c->weight_bytes / 1e9,
                c->fp8w ? "fp8 e4m3" : c->awq ? "AWQ int4 W4A16" : "bf16", o->lm_head_fp8 ? "fp8" : "bf16",
                c->n_buckets,
                o->use_graphs ? "on" : "off", c->xqa_mode);
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
    GM_CHECK(gm_config_load_dir(o->model_dir, &cfg));
    return cuda_create(o, &cfg, o->model_dir, 0, 0, out);
}

extern "C" gm_status gm_engine_cuda_create_random(const gm_engine_opts *o, const gm_model_config *cfg, uint64_t seed,
                                                  gm_engine **out)
{
    return cuda_create(o, cfg, NULL, 1, seed, out);
}

extern "C" void gm_engine_cuda_set_gemv_rows(gm_engine *e, int32_t n)
{
    cuda_engine *c = (cuda_engine *)e;
    cudaStreamSynchronize(c->stream);
    drop_graphs(c);
    gemm_ctx_set_gemv_rows(c->gemm, n);
}

extern "C" gm_status gm_engine_cuda_set_static_act(gm_engine *e, float scale)
{
    cuda_engine *c = (cuda_engine *)e;
    if (!c->fp8w)
        return gm_fail(GM_ERR_UNSUPPORTED, "cuda engine: static activation scales need FP8 weights");
    if (!(scale >= 0.0f) || !isfinite(scale))
        return gm_fail(GM_ERR_INVALID_ARG, "cuda engine: activation scale %g", (double)scale);
    GM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    drop_graphs(c);
    c->static_act = 0; /* dynamic until every layer holds the new scale */
    for (int32_t l = 0; l < c->base.cfg.num_layers && scale > 0.0f; l++)
        for (int i = 0; i < 4; i++)
            GM_CUDA_CHECK(cudaMemcpy(c->layers[l].wsc + (4 + i) * SC_STRIDE, &scale, sizeof scale,
                                     cudaMemcpyHostToDevice));
    c->static_act = scale > 0.0f;
    return GM_OK;
}

extern "C" int64_t gm_engine_cuda_weight_bytes(const gm_engine *e) { return ((const cuda_engine *)e)->weight_bytes; }

extern "C" void gm_engine_cuda_set_pdl(gm_engine *e, int on)
{
    cuda_engine *c = (cuda_engine *)e;
    cudaStreamSynchronize(c->stream);
    drop_graphs(c);
    k_set_pdl(on);
}

extern "C" void gm_engine_cuda_profile(gm_engine *e, int on)
{
    cuda_engine *c = (cuda_engine *)e;
    cudaStreamSynchronize(c->stream);
    drop_graphs(c); /* recapture with (or without) the event nodes */
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
