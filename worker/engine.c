/* engine.c - backend dispatch, defaults and the step checks every backend shares. */
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_check.h"

void gm_engine_opts_init(gm_engine_opts *o)
{
    memset(o, 0, sizeof *o);
    o->backend = GM_BACKEND_CPU;
    o->tp_rank = 0;
    o->tp_size = 1;
    o->kv_block_size = 16;
    o->kv_mem_bytes = 64ll << 20;
    o->max_seqs = 64;
    o->max_tokens = 2048;
    o->max_context = 0; /* the model's max_position */
    o->use_graphs = 1;
}

int gm_backend_parse(const char *s)
{
    if (!s)
        return -1;
    if (!strcmp(s, "cpu"))
        return GM_BACKEND_CPU;
    if (!strcmp(s, "cuda"))
        return GM_BACKEND_CUDA;
    if (!strcmp(s, "null"))
        return GM_BACKEND_NULL;
    return -1;
}

const char *gm_backend_name(gm_backend b)
{
    switch (b) {
    case GM_BACKEND_CPU:
        return "cpu";
    case GM_BACKEND_CUDA:
        return "cuda";
    case GM_BACKEND_NULL:
        return "null";
    }
    return "?";
}

gm_status gm_engine_create(const gm_engine_opts *o, gm_engine **out)
{
    *out = NULL;
    if (!o)
        return gm_fail(GM_ERR_INVALID_ARG, "engine options are NULL");
    if (o->tp_size < 1 || o->tp_rank < 0 || o->tp_rank >= o->tp_size)
        return gm_fail(GM_ERR_INVALID_ARG, "tensor parallel rank %d of size %d is out of range", o->tp_rank,
                       o->tp_size);
    if (o->kv_block_size < 1)
        return gm_fail(GM_ERR_INVALID_ARG, "kv block size %d must be positive", o->kv_block_size);
    if (o->max_seqs < 1 || o->max_tokens < 1)
        return gm_fail(GM_ERR_INVALID_ARG, "max_seqs %d and max_tokens %d must be positive", o->max_seqs,
                       o->max_tokens);
    switch (o->backend) {
    case GM_BACKEND_CPU:
        return gm_engine_cpu_create(o, out);
    case GM_BACKEND_CUDA:
#ifdef GM_HAVE_CUDA
        if (o->model_dir && *o->model_dir) { /* a config that does not load: the engine says why */
            /* the CUDA engine computes Gemma 1 only: it would run a Gemma 2/3 checkpoint without its
             * sandwich norms, soft-caps and windows (drop this when engine_cuda.cu switches on family) */
            gm_model_config cfg;
            if (gm_config_load_dir(o->model_dir, &cfg) == GM_OK && cfg.family != GM_FAMILY_GEMMA1)
                return gm_fail(GM_ERR_UNSUPPORTED, "backend cuda: %s is Gemma %d; the CUDA engine runs Gemma 1 only "
                               "(use --backend cpu)", o->model_dir, (int)cfg.family);
        }
        return gm_engine_cuda_create(o, out);
#else
        return gm_fail(GM_ERR_NO_DEVICE, "backend cuda: built without CUDA");
#endif
    case GM_BACKEND_NULL:
        return gm_engine_null_create(o, out);
    }
    return gm_fail(GM_ERR_INVALID_ARG, "unknown backend %d", (int)o->backend);
}

gm_status gm_engine_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out)
{
    if (!e)
        return gm_fail(GM_ERR_INVALID_ARG, "engine is NULL");
    return e->ops->step(e, seqs, n_seqs, out);
}

void gm_engine_destroy(gm_engine **e)
{
    if (!e || !*e)
        return;
    (*e)->ops->destroy(*e);
    *e = NULL;
}

void gm_engine_init_common(gm_engine *e, const gm_model_config *cfg, const gm_engine_opts *o)
{
    e->cfg = *cfg;
    e->opts = *o;
    if (e->opts.max_context <= 0 || e->opts.max_context > cfg->max_position)
        e->opts.max_context = cfg->max_position;
}

gm_status gm_engine_kv_blocks(const gm_engine_opts *o, int64_t bytes_per_block, int64_t *n_blocks)
{
    int64_t n = o->kv_num_blocks > 0 ? o->kv_num_blocks : (bytes_per_block > 0 ? o->kv_mem_bytes / bytes_per_block : 0);
    *n_blocks = n;
    if (n < 1)
        return gm_fail(GM_ERR_CAPACITY, "KV budget of %lld bytes holds no block of %lld bytes",
                       (long long)o->kv_mem_bytes, (long long)bytes_per_block);
    if (n > INT32_MAX)
        return gm_fail(GM_ERR_INVALID_ARG, "%lld KV blocks is more than block ids can address", (long long)n);
    return GM_OK;
}

/* Check one sequence of a step (slot uniqueness is the caller's); adds its logits rows. */
static gm_status check_seq(const gm_engine *e, const gm_seq_step *s, int32_t i, int64_t *rows)
{
    const gm_engine_opts *o = &e->opts;
    if (s->n_tokens < 1 || !s->tokens)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): %d tokens", i, s->slot, s->n_tokens);
    if (s->start_pos < 0 || (int64_t)s->start_pos + s->n_tokens > o->max_context)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): positions %d..%lld exceed the context of %d",
                       i, s->slot, s->start_pos, (long long)s->start_pos + s->n_tokens - 1, o->max_context);
    int64_t need = ((int64_t)s->start_pos + s->n_tokens + o->kv_block_size - 1) / o->kv_block_size;
    if (s->n_blocks < need || !s->block_table)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): block table has %d blocks, %lld needed", i,
                       s->slot, s->n_blocks, (long long)need);
    for (int64_t b = 0; b < need; b++)
        if (s->block_table[b] < 0 || s->block_table[b] >= e->kv_num_blocks)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): block %lld is id %d, pool has %lld", i,
                           s->slot, (long long)b, s->block_table[b], (long long)e->kv_num_blocks);
    for (int32_t t = 0; t < s->n_tokens; t++)
        if (s->tokens[t] < 0 || s->tokens[t] >= e->cfg.vocab_size)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): token %d is id %d, vocabulary is %d", i,
                           s->slot, t, s->tokens[t], e->cfg.vocab_size);
    const gm_sampling *sp = &s->sampling;
    if (!(sp->temperature >= 0.0f) || isinf(sp->temperature) || sp->top_k < 0 || !(sp->top_p > 0.0f) ||
        sp->top_p > 1.0f)
        return gm_fail(GM_ERR_INVALID_ARG,
                       "sequence %d (slot %d): bad sampling (temperature %g, top_k %d, top_p %g)", i, s->slot,
                       (double)sp->temperature, sp->top_k, (double)sp->top_p);
    switch (s->logits_mode) {
    case GM_LOGITS_NONE:
        break;
    case GM_LOGITS_LAST:
        *rows += 1;
        break;
    case GM_LOGITS_ALL:
        *rows += s->n_tokens;
        break;
    default:
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): unknown logits mode %d", i, s->slot,
                       s->logits_mode);
    }
    return GM_OK;
}

gm_status gm_engine_check_step(const gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, const gm_step_out *out,
                               int64_t *total_tokens, int64_t *logit_rows)
{
    const gm_engine_opts *o = &e->opts;
    if (n_seqs < 0 || n_seqs > o->max_seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %d sequences; the engine takes 0..%d", n_seqs, o->max_seqs);
    if (n_seqs > 0 && !seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %d sequences but no array", n_seqs);
    int64_t total = 0, rows = 0;
    /* slot -> the step stamp that last used it: linear in n_seqs, no clearing, no per-step
     * allocation (one buffer per thread, grown to the largest max_seqs seen) */
    static _Thread_local uint32_t *seen, stamp;
    static _Thread_local int32_t seen_cap;
    if (seen_cap < o->max_seqs) {
        uint32_t *grown = calloc((size_t)o->max_seqs, sizeof *grown);
        if (!grown)
            return gm_fail(GM_ERR_NOMEM, "step check: %d slots", o->max_seqs);
        free(seen);
        seen = grown;
        seen_cap = o->max_seqs;
        stamp = 0;
    }
    if (++stamp == 0) { /* wrapped: forget every old stamp */
        memset(seen, 0, (size_t)seen_cap * sizeof *seen);
        stamp = 1;
    }
    gm_status st = GM_OK;
    for (int32_t i = 0; i < n_seqs && st == GM_OK; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->slot < 0 || s->slot >= o->max_seqs)
            st = gm_fail(GM_ERR_INVALID_ARG, "sequence %d: slot %d is outside 0..%d", i, s->slot, o->max_seqs - 1);
        else if (seen[s->slot] == stamp)
            st = gm_fail(GM_ERR_INVALID_ARG, "sequence %d reuses slot %d of an earlier sequence", i, s->slot);
        else {
            seen[s->slot] = stamp;
            st = check_seq(e, s, i, &rows);
            total += s->n_tokens;
        }
    }
    if (st != GM_OK)
        return st;
    if (total > o->max_tokens)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %lld tokens; the engine takes at most %d", (long long)total,
                       o->max_tokens);
    if (out && out->logits && rows > out->logits_rows_cap)
        return gm_fail(GM_ERR_INVALID_ARG, "step produces %lld logits rows; the output holds %lld", (long long)rows,
                       (long long)out->logits_rows_cap);
    if (total_tokens)
        *total_tokens = total;
    if (logit_rows)
        *logit_rows = rows;
    return GM_OK;
}
