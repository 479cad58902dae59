/* sizing.c - the KV pool, batch and context rule (see sizing.h). */
#include "ctl/sizing.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/sampling.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)
#define RESERVE_BYTES (512ll << 20) /* cuBLAS workspaces, NCCL buffers, graph memory, allocator slack */

static void why(char *dst, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void why(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, GM_SIZING_WHY, fmt, ap);
    va_end(ap);
}

/* KV heads this rank holds: split when there are at least tp of them, else replicated. */
static int64_t kv_heads_of_rank(const gm_model_config *cfg, int32_t tp)
{
    return cfg->num_kv_heads >= tp ? cfg->num_kv_heads / tp : cfg->num_kv_heads;
}

int64_t gm_sizing_block_bytes(const gm_model_config *cfg, const gm_worker_spec *spec)
{
    if (!cfg)
        return 0;
    int64_t esz = spec->backend == GM_BACKEND_CPU ? 4 : spec->kv_dtype == GM_KV_FP8 ? 1 : 2;
    return 2 * (int64_t)cfg->num_layers * kv_heads_of_rank(cfg, spec->tp_size) * spec->kv_block_size *
           cfg->head_dim * esz;
}

/* Activation bytes per token of a step's budget, this rank. */
static int64_t bytes_per_token(const gm_model_config *cfg, const gm_worker_spec *spec)
{
    int32_t tp = spec->tp_size > 0 ? spec->tp_size : 1;
    int64_t H = cfg->hidden_size, hd = cfg->head_dim;
    int64_t nq = cfg->num_heads / tp, nkv = kv_heads_of_rank(cfg, tp), ni = cfg->intermediate_size / tp;
    /* bf16 unless noted: h, xn; qkv; attention out; gate|up; GeGLU out; the f32 all-reduce
     * delta; ids, positions, slots and dump rows (int32) */
    int64_t n = 2 * H * 2 + (nq + 2 * nkv) * hd * 2 + nq * hd * 2 + 2 * ni * 2 + ni * 2 + H * 4 + 8 * 4;
    if (spec->quant == GM_QUANT_FP8) /* e4m3 copies of the GEMM inputs and one bf16 staging row */
        n += H + nq * hd + ni + (ni > H ? ni : H) * 2;
    return n;
}

int64_t gm_sizing_runtime_bytes(const gm_model_config *cfg, const gm_worker_spec *spec, int32_t max_seqs,
                                int32_t max_tokens, int32_t max_context)
{
    int32_t tp = spec->tp_size > 0 ? spec->tp_size : 1;
    int64_t H = cfg->hidden_size, V = cfg->vocab_size, hd = cfg->head_dim, nq = cfg->num_heads / tp;
    int64_t per_tok = bytes_per_token(cfg, spec);
    /* per logits row (at least 64 rows): the final-normed row (bf16) and its float32 logits */
    int64_t rows = max_seqs > 64 ? max_seqs : 64;
    int64_t per_row = H * 2 + V * 4;
    /* per sequence: its block-table row, decode-attention and XQA partial outputs (f32), its penalty
     * table (token, count, raw logit: 12 bytes an entry) and log-probabilities */
    int64_t bs = spec->kv_block_size > 0 ? spec->kv_block_size : 16;
    int64_t per_seq = (max_context + bs - 1) / bs * 4 + 2 * nq * hd * 4 + 64 +
                      (int64_t)gm_pen_table_cap(max_context, V) * 12 + (2 * GM_MAX_TOP_LOGPROBS + 1) * 4 +
                      (GM_MAX_STOP_SET + 4) * 4;
    int64_t rope = (int64_t)max_context * hd * 4;
    return (int64_t)max_tokens * per_tok + rows * per_row + (int64_t)max_seqs * per_seq + rope + RESERVE_BYTES;
}

/* max_tokens: the spec's, a host default, or the device default halved until its activations fit an eighth of free. */
static int32_t decide_tokens(const gm_model_config *cfg, const gm_worker_spec *spec, const gm_device_mem *mem,
                             gm_sizing *z)
{
    if (spec->max_tokens > 0) {
        why(z->why_tokens, "set explicitly");
        return spec->max_tokens;
    }
    if (mem->total <= 0) {
        why(z->why_tokens, "the %s backend's default", gm_backend_name(spec->backend));
        return GM_SIZING_HOST_TOKENS;
    }
    int32_t t = GM_SIZING_DEVICE_TOKENS;
    int64_t per_tok = bytes_per_token(cfg, spec);
    while (t > GM_SIZING_DEVICE_MIN_TOKENS && t * per_tok > mem->free_weights / 8)
        t /= 2;
    if (t == GM_SIZING_DEVICE_TOKENS)
        why(z->why_tokens, "the %s default step budget", gm_backend_name(spec->backend));
    else
        why(z->why_tokens, "%d halved until the step's activations fit an eighth of the %.2f GiB free after the "
            "weights", GM_SIZING_DEVICE_TOKENS, (double)mem->free_weights / GIB);
    return t;
}

/* Tokens the pool will hold, as far as step 1 can tell (0 on the host: not needed). */
static int64_t estimate_pool_tokens(const gm_model_config *cfg, const gm_worker_spec *spec, const gm_device_mem *mem,
                                    int64_t block_bytes, int32_t seqs, int32_t tokens, int32_t ctx)
{
    if (spec->kv_num_blocks > 0)
        return spec->kv_num_blocks * spec->kv_block_size;
    if (spec->kv_mem_bytes > 0)
        return spec->kv_mem_bytes / block_bytes * spec->kv_block_size;
    double f = spec->kv_mem_fraction > 0 ? spec->kv_mem_fraction : GM_SIZING_FRACTION;
    int64_t left = mem->free_weights - gm_sizing_runtime_bytes(cfg, spec, seqs, tokens, ctx);
    return left > 0 ? (int64_t)((double)left * f) / block_bytes * spec->kv_block_size : 0;
}

static int32_t seqs_rule(int64_t pool_tokens, int32_t tokens)
{
    int64_t n = pool_tokens / GM_SIZING_TOKENS_PER_SEQ;
    n = n < GM_SIZING_MIN_SEQS ? GM_SIZING_MIN_SEQS : n > GM_SIZING_MAX_SEQS ? GM_SIZING_MAX_SEQS : n;
    return (int32_t)(n > tokens ? tokens : n);
}

/* Step 1: max_tokens, max_seqs, max_context. */
static gm_status decide_limits(const gm_model_config *cfg, const gm_worker_spec *spec, const gm_device_mem *mem,
                               int64_t block_bytes, gm_sizing *z)
{
    int32_t model_ctx = cfg ? cfg->max_position : 0;
    int32_t ctx_guess = spec->max_context > 0 && (model_ctx <= 0 || spec->max_context < model_ctx) ? spec->max_context
                                                                                                    : model_ctx;
    if (mem->total <= 0) { /* host backends: fixed defaults */
        z->max_tokens = decide_tokens(cfg, spec, mem, z);
        z->max_seqs = spec->max_seqs > 0 ? spec->max_seqs : GM_SIZING_HOST_SEQS;
        if (spec->max_seqs > 0)
            why(z->why_seqs, "set explicitly");
        else
            why(z->why_seqs, "the %s backend's default", gm_backend_name(spec->backend));
        z->max_context = ctx_guess;
        if (spec->max_context > 0 && spec->max_context == ctx_guess)
            why(z->why_context, "set explicitly");
        else
            why(z->why_context, "the model's max_position");
        return GM_OK;
    }
    if (mem->free_weights <= 0)
        return gm_fail(GM_ERR_CAPACITY, "the weights leave no device memory free (%.2f GiB of %.2f GiB free)",
                       (double)mem->free_weights / GIB, (double)mem->total / GIB);
    int32_t seqs = spec->max_seqs > 0 ? spec->max_seqs : GM_SIZING_MAX_SEQS;
    z->max_tokens = decide_tokens(cfg, spec, mem, z);
    int64_t pool = estimate_pool_tokens(cfg, spec, mem, block_bytes, seqs, z->max_tokens, ctx_guess);
    if (spec->max_seqs <= 0) { /* twice: the logits rows of fewer sequences leave more for the pool */
        seqs = seqs_rule(pool, z->max_tokens);
        pool = estimate_pool_tokens(cfg, spec, mem, block_bytes, seqs, z->max_tokens, ctx_guess);
        int32_t again = seqs_rule(pool, z->max_tokens);
        seqs = again < seqs ? again : seqs;
        why(z->why_seqs, "the KV pool holds about %lld tokens: %lld sequences of %d, within [%d, %d]%s",
            (long long)pool, (long long)(pool / GM_SIZING_TOKENS_PER_SEQ), GM_SIZING_TOKENS_PER_SEQ,
            GM_SIZING_MIN_SEQS, GM_SIZING_MAX_SEQS, seqs == z->max_tokens ? " and the step budget" : "");
    } else {
        why(z->why_seqs, "set explicitly");
    }
    z->max_seqs = seqs;
    if (spec->max_context > 0 && spec->max_context == ctx_guess) {
        z->max_context = ctx_guess;
        why(z->why_context, "set explicitly");
    } else if (pool >= ctx_guess) {
        z->max_context = ctx_guess;
        why(z->why_context, "the model's max_position");
    } else {
        int64_t c = pool / spec->kv_block_size * spec->kv_block_size;
        if (c < spec->kv_block_size)
            return gm_fail(GM_ERR_CAPACITY,
                           "the KV pool would not hold one block of %d tokens (%.2f GiB free after the weights)",
                           spec->kv_block_size, (double)mem->free_weights / GIB);
        z->max_context = (int32_t)c;
        why(z->why_context, "the KV pool holds only about %lld tokens (the model's max_position is %d)",
            (long long)pool, ctx_guess);
    }
    return GM_OK;
}

/* Step 2 (device) or the host budget: the pool. */
static gm_status decide_pool(const gm_worker_spec *spec, const gm_device_mem *mem, int64_t block_bytes, gm_sizing *z)
{
    double f = spec->kv_mem_fraction > 0 ? spec->kv_mem_fraction : GM_SIZING_FRACTION;
    int64_t free_rt = mem->free_runtime;
    if (spec->kv_num_blocks > 0) {
        z->kv_num_blocks = spec->kv_num_blocks;
        z->kv_bytes = spec->kv_num_blocks * block_bytes;
        why(z->why_kv, "the number of blocks was set explicitly");
    } else if (spec->kv_mem_bytes > 0 || mem->total <= 0) {
        z->kv_bytes = spec->kv_mem_bytes > 0 ? spec->kv_mem_bytes : GM_SIZING_HOST_KV_BYTES;
        z->kv_num_blocks = block_bytes > 0 ? z->kv_bytes / block_bytes : 0;
        if (spec->kv_mem_bytes > 0)
            why(z->why_kv, "a budget of %.1f MiB set explicitly", (double)z->kv_bytes / MIB);
        else
            why(z->why_kv, "the %s backend's default budget of %.0f MiB", gm_backend_name(spec->backend),
                (double)z->kv_bytes / MIB);
    } else {
        z->kv_bytes = (int64_t)((double)free_rt * f);
        z->kv_num_blocks = z->kv_bytes / block_bytes;
        why(z->why_kv, "%.2f of the %.2f GiB free after the weights and runtime buffers", f, (double)free_rt / GIB);
    }
    if (mem->total > 0 && z->kv_num_blocks * block_bytes > free_rt) {
        int64_t fit = (int64_t)((double)free_rt * f);
        return gm_fail(GM_ERR_CAPACITY,
                       "a KV pool of %.2f GiB (%lld blocks) does not fit: %.2f GiB are free after the weights and "
                       "runtime buffers; at most %lld MiB (%lld blocks) would fit with kv_mem_fraction %.2f (or "
                       "leave the KV size unset)",
                       (double)z->kv_num_blocks * (double)block_bytes / GIB, (long long)z->kv_num_blocks,
                       (double)free_rt / GIB, (long long)(fit >> 20), (long long)(fit / block_bytes), f);
    }
    if (block_bytes > 0 && z->kv_num_blocks < 1)
        return gm_fail(GM_ERR_CAPACITY, "a KV budget of %lld bytes holds no block of %lld bytes",
                       (long long)z->kv_bytes, (long long)block_bytes);
    if (z->kv_num_blocks > INT32_MAX / spec->kv_block_size)
        return gm_fail(GM_ERR_INVALID_ARG, "%lld KV blocks of %d tokens is more than positions can address",
                       (long long)z->kv_num_blocks, spec->kv_block_size);
    return GM_OK;
}

gm_status gm_sizing_decide(const gm_model_config *cfg, const gm_worker_spec *spec, const gm_device_mem *mem,
                           gm_sizing *out)
{
    memset(out, 0, sizeof *out);
    if (!spec || !mem)
        return gm_fail(GM_ERR_INVALID_ARG, "sizing: no spec or memory figures");
    if (spec->kv_block_size < 1)
        return gm_fail(GM_ERR_INVALID_ARG, "sizing: kv block size %d", spec->kv_block_size);
    if (mem->total > 0 && !cfg)
        return gm_fail(GM_ERR_INVALID_ARG, "sizing: a device needs the model's config");
    int64_t block_bytes = mem->kv_block_bytes > 0 ? mem->kv_block_bytes : gm_sizing_block_bytes(cfg, spec);
    out->kv_block_bytes = block_bytes;
    gm_status st = decide_limits(cfg, spec, mem, block_bytes, out);
    if (st == GM_OK && (mem->total <= 0 || mem->free_runtime > 0))
        st = decide_pool(spec, mem, block_bytes, out);
    return st;
}
