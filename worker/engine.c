/* engine.c - backend dispatch, defaults, host sizing and the step check every backend runs. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/gguf_model.h"
#include "engine_check.h"

void gm_engine_opts_init(gm_engine_opts *o)
{
    gm_worker_spec s;
    ctl_spec_init(&s);
    memset(o, 0, sizeof *o);
    gm_engine_opts_set_spec(o, &s);
    o->model_dir = NULL;
}

void gm_engine_opts_set_spec(gm_engine_opts *o, const gm_worker_spec *s)
{
#define SET_(type, name, num) o->name = s->name;
    GM_SPEC_FIELDS(SET_)
#undef SET_
    o->model_dir = s->model_dir[0] ? s->model_dir : NULL;
}

gm_status gm_engine_opts_spec(const gm_engine_opts *o, gm_worker_spec *s)
{
    ctl_spec_init(s);
#define GET_(type, name, num) s->name = o->name;
    GM_SPEC_FIELDS(GET_)
#undef GET_
    return ctl_spec_set_model(s, o->model_dir);
}

/* cpu, null: the fixed defaults of ctl/sizing.h into r before the backend sizes its pool. */
static gm_status size_host(const gm_engine_opts *o, gm_engine_opts *r, gm_sizing *z)
{
    gm_worker_spec sp;
    gm_device_mem none = {0};
    gm_status st = gm_engine_opts_spec(o, &sp);
    if (st == GM_OK)
        st = gm_sizing_decide(NULL, &sp, &none, z);
    if (st != GM_OK)
        return st;
    r->max_seqs = z->max_seqs;
    r->max_tokens = z->max_tokens;
    if (r->kv_num_blocks <= 0)
        r->kv_mem_bytes = z->kv_bytes;
    return GM_OK;
}

/* What the backend made of the host sizing: its pool and context. */
static void size_host_done(gm_engine *e, const gm_sizing *z)
{
    int32_t asked = z->max_context;
    e->sizing = *z;
    e->sizing.kv_num_blocks = e->kv_num_blocks;
    e->sizing.max_context = e->opts.max_context;
    if (asked != e->opts.max_context)
        snprintf(e->sizing.why_context, sizeof e->sizing.why_context, "the model's max_position");
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
    if (o->max_seqs < 0 || o->max_tokens < 0 || o->max_context < 0 || o->kv_num_blocks < 0 || o->kv_mem_bytes < 0)
        return gm_fail(GM_ERR_INVALID_ARG, "max_seqs %d, max_tokens %d, max_context %d and the KV size must not be "
                       "negative (0 = derive)", o->max_seqs, o->max_tokens, o->max_context);
    gm_engine_opts r = *o;
    gm_sizing z;
    gm_status st = GM_OK;
    switch (o->backend) {
    case GM_BACKEND_CPU:
    case GM_BACKEND_NULL:
        if ((st = size_host(o, &r, &z)) != GM_OK)
            return st;
        st = o->backend == GM_BACKEND_CPU ? gm_engine_cpu_create(&r, out) : gm_engine_null_create(&r, out);
        if (st == GM_OK)
            size_host_done(*out, &z);
        return st;
    case GM_BACKEND_CUDA: /* sizes itself: it measures the device after loading */
#ifdef GM_HAVE_CUDA
        return gm_engine_cuda_create(&r, out);
#else
        return gm_fail(GM_ERR_NO_DEVICE, "backend cuda: built without CUDA");
#endif
    default:
        break;
    }
    return gm_fail(GM_ERR_INVALID_ARG, "unknown backend %d", (int)o->backend);
}

void gm_engine_share_limits(gm_engine *e, const ctl_limits *l)
{
    e->shared = *l;
}

ctl_limits gm_engine_limits(const gm_engine *e)
{
    ctl_limits l = {e->opts.max_seqs,      e->opts.max_tokens,  e->opts.max_context,
                    e->opts.kv_block_size, e->cfg.vocab_size,   e->kv_num_blocks};
    const ctl_limits *s = &e->shared;
    if (s->max_seqs > 0 && s->max_seqs < l.max_seqs)
        l.max_seqs = s->max_seqs;
    if (s->max_tokens > 0 && s->max_tokens < l.max_tokens)
        l.max_tokens = s->max_tokens;
    if (s->max_context > 0 && s->max_context < l.max_context)
        l.max_context = s->max_context;
    if (s->kv_blocks > 0 && s->kv_blocks < l.kv_blocks)
        l.kv_blocks = s->kv_blocks;
    return l;
}

gm_status gm_engine_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out)
{
    if (!e)
        return gm_fail(GM_ERR_INVALID_ARG, "engine is NULL");
    return e->ops->step(e, seqs, n_seqs, out);
}

gm_status gm_engine_step_copy(gm_engine *e, const gm_block_copy *copies, int32_t n_copies, const gm_seq_step *seqs,
                              int32_t n_seqs, gm_step_out *out)
{
    if (!e)
        return gm_fail(GM_ERR_INVALID_ARG, "engine is NULL");
    if (n_copies != 0) {
        ctl_limits l = gm_engine_limits(e);
        gm_status st = gm_engine_check_step(e, seqs, n_seqs, out, NULL, NULL);
        if (st == GM_OK)
            st = ctl_check_copies(&l, copies, n_copies);
        if (st == GM_OK && e->ops->copy_blocks)
            st = e->ops->copy_blocks(e, copies, n_copies);
        if (st != GM_OK)
            return st;
    }
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

gm_status gm_engine_check_step(const gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, const gm_step_out *out,
                               int64_t *total_tokens, int64_t *logit_rows)
{
    /* one set of slot marks per thread, grown to the largest max_seqs seen */
    static _Thread_local ctl_marks marks;
    ctl_limits l = gm_engine_limits(e);
    ctl_step_sums sums;
    gm_status st = ctl_check_step(&l, &marks, seqs, n_seqs, NULL, &sums);
    if (st != GM_OK)
        return st;
    if (out && out->logits && sums.logits_rows > out->logits_rows_cap)
        return gm_fail(GM_ERR_INVALID_ARG, "step produces %lld logits rows; the output holds %lld",
                       (long long)sums.logits_rows, (long long)out->logits_rows_cap);
    if (out && out->verify && sums.verify_rows > out->verify_cap)
        return gm_fail(GM_ERR_INVALID_ARG, "step verifies %lld positions; the output holds %lld",
                       (long long)sums.verify_rows, (long long)out->verify_cap);
    if (total_tokens)
        *total_tokens = sums.tokens;
    if (logit_rows)
        *logit_rows = sums.logits_rows;
    return GM_OK;
}
