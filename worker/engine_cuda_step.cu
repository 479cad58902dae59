/* engine_cuda_step.cu - one step of the CUDA engine around its forward pass: the step's metadata, the
 * decode buckets and their CUDA graphs, the buffers (activations, scratch, KV pool), the logits dump and
 * the profile.
 *
 * A step's host-side inputs (ids, positions, KV slots, per-sequence metadata, block tables, sampling
 * parameters) are packed into one pinned buffer and copied in one transfer. Steps where every sequence
 * appends one token (decode) are padded to a batch-size bucket and, after one eager run of that bucket,
 * replayed from a CUDA graph; the graph reads everything that changes between steps from the device
 * buffers, so replays need only that copy in and the sampled tokens out. A mixed step (prompt chunks and
 * decode rows) runs eagerly, its decode sequences first: one query row each in the decode attention. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda/attn_decode.cuh"
#include "../kernels/cuda/cuda_check.h"
#include "../kernels/cuda/embed.cuh"
#include "../kernels/cuda/kv_copy.cuh"
#include "../kernels/cuda/rope_kv.cuh"
#include "engine_check.h"
#include "engine_cuda_internal.h"

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

static void meta_layout(char *base, int64_t Tc, int64_t Sc, int64_t Rc, int64_t max_blocks, meta_ptrs *m)
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
    TAKE(q_start, int32_t, Rc);
    TAKE(n_new, int32_t, Rc);
    TAKE(start_pos, int32_t, Rc);
    TAKE(ctx_len, int32_t, Rc);
    TAKE(rows, int32_t, Rc);
    TAKE(sslot, int32_t, Rc);
    TAKE(tokens, int32_t, Rc);
    TAKE(pslot, int32_t, Rc);
    TAKE(pen, int32_t, Rc);
    TAKE(mask_off, int32_t, Rc);
    TAKE(mask_n, int32_t, Rc);
    TAKE(counters, uint64_t, Rc);
    TAKE(params, gm_sampling, Rc);
    TAKE(bt, int32_t, Sc * max_blocks);
    TAKE(mask_ids, int32_t, Sc * GM_MAX_STOP_SET);
    m->mask_at = (size_t)((char *)m->mask_ids - base);
#undef TAKE
    m->bytes = (o + 15) & ~(size_t)15;
}

/* ---------------------------------------------------------------- graphs */

void cu_graphs_drop(cuda_engine *c)
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
    st = cu_forward(c, a);
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
        GM_CHECK(cu_lm_head(c, c->xs, nr));
        GM_CUDA_CHECK(cudaMemcpyAsync(out + r0 * c->V, c->logits, (size_t)(nr * c->V) * sizeof(float),
                                      cudaMemcpyDeviceToHost, s));
    }
    return GM_OK;
}

static int32_t bucket_index(const cuda_engine *c, int32_t n)
{
    for (int32_t i = 0; i < c->n_buckets; i++)
        if (c->buckets[i].size >= n)
            return i;
    return -1;
}

/* ---------------------------------------------------------------- a step */

/* The shared step check of engine.c, with a decode sequence's -1 token (the one its slot sampled on the
 * device last step) read as 0. *T, *rows as gm_engine_check_step gives them. */
static gm_status check_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out, int64_t *T,
                            int64_t *rows)
{
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
    gm_status st = gm_engine_check_step(e, chk, n_seqs, out, T, rows);
    if (tmp && tmp != local)
        free(tmp);
    return st;
}

/* The extra sampled rows Sc.. of the verify entries (meta_ptrs): row j of entry q (j < n_tokens - 1) samples
 * as a LAST entry of q's first j + 1 tokens would, from token row t0 + j; c->vrow_h gets each entry's first. */
static void fill_verify_rows(cuda_engine *c, const gm_seq_step *seqs, int32_t n_seqs, int32_t Sc, meta_ptrs *mh)
{
    int32_t r = Sc;
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t k = c->order_h[i];
        const gm_seq_step *q = &seqs[k];
        c->vrow_h[k] = -1;
        if (q->logits_mode != GM_LOGITS_VERIFY)
            continue;
        c->vrow_h[k] = r;
        for (int32_t j = 0; j < q->n_tokens - 1; j++, r++) {
            gm_seq_step row = *q;
            row.n_tokens = j + 1;
            row.logits_mode = GM_LOGITS_LAST;
            mh->q_start[r] = mh->q_start[i], mh->n_new[r] = mh->n_new[i], mh->start_pos[r] = q->start_pos;
            mh->ctx_len[r] = q->start_pos + j + 1;
            mh->rows[r] = (int32_t)c->tstart_h[k] + j;
            mh->sslot[r] = -1; /* the slot's last sample is its last row's */
            mh->counters[r] = (uint64_t)q->start_pos + (uint64_t)j + 1;
            mh->params[r] = q->sampling;
            mh->pslot[r] = q->slot, mh->pen[r] = 0; /* a verify entry has no penalties (ctl/check.h) */
            mh->mask_off[r] = mh->mask_off[i];
            mh->mask_n[r] = gm_seq_step_masks_stops(&row) ? q->stops->n : 0;
        }
    }
}

/* The step's metadata in the pinned mirror (mh) for Sc sequences (n_seqs real ones, in c->order_h's order,
 * then bucket padding) and the verify entries' extra rows, c->tstart_h of each caller's sequence. Returns the
 * min_tokens ids written to mh->mask_ids. */
static int32_t fill_meta(cuda_engine *c, const gm_seq_step *seqs, int32_t n_seqs, int32_t Sc, meta_ptrs *mh)
{
    int32_t n_mask = 0;
    int32_t bs = c->base.opts.kv_block_size;
    int64_t t = 0;
    for (int32_t i = 0; i < Sc; i++) {
        int32_t *bt = mh->bt + (int64_t)i * c->max_blocks;
        if (i >= n_seqs) { /* padding row of a bucket */
            mh->ids[t] = 0, mh->pos[t] = 0, mh->slot[t] = -1, mh->tok_slot[t] = 0;
            mh->q_start[i] = (int32_t)t, mh->n_new[i] = 1, mh->start_pos[i] = 0, mh->ctx_len[i] = 0;
            mh->rows[i] = (int32_t)t, mh->sslot[i] = -1, mh->counters[i] = 0;
            mh->pslot[i] = 0, mh->pen[i] = 0, mh->mask_off[i] = 0, mh->mask_n[i] = 0;
            mh->params[i] = GM_SAMPLING_GREEDY;
            bt[0] = 0;
            t++;
            continue;
        }
        const gm_seq_step *q = &seqs[c->order_h[i]];
        c->tstart_h[c->order_h[i]] = t;
        mh->q_start[i] = (int32_t)t;
        mh->n_new[i] = q->n_tokens;
        mh->start_pos[i] = q->start_pos;
        mh->ctx_len[i] = q->start_pos + q->n_tokens;
        mh->rows[i] = (int32_t)(t + q->n_tokens - 1);
        mh->sslot[i] = q->logits_mode != GM_LOGITS_NONE ? q->slot : -1;
        mh->counters[i] = (uint64_t)q->start_pos + (uint64_t)q->n_tokens;
        mh->params[i] = q->sampling;
        mh->pslot[i] = q->slot;
        mh->pen[i] = c->pen_flags_h[c->order_h[i]];
        mh->mask_off[i] = n_mask;
        mh->mask_n[i] = 0;
        c->spos_h[c->order_h[i]] = i;
        bool masks = gm_seq_step_masks_stops(q);
        if (masks || (q->logits_mode == GM_LOGITS_VERIFY && q->stops && q->sampling.min_tokens > 0)) {
            /* a verify entry's earlier rows may be masked where its last is not: they share these ids */
            memcpy(mh->mask_ids + n_mask, q->stops->ids, (size_t)q->stops->n * sizeof(int32_t));
            mh->mask_n[i] = masks ? q->stops->n : 0;
            n_mask += q->stops->n;
        }
        int32_t nb = q->n_blocks < c->max_blocks ? q->n_blocks : c->max_blocks;
        memcpy(bt, q->block_table, (size_t)nb * sizeof(int32_t));
        for (int32_t j = 0; j < q->n_tokens; j++, t++) {
            int32_t p = q->start_pos + j;
            mh->ids[t] = q->tokens[j];
            mh->pos[t] = p;
            mh->slot[t] = q->block_table[p / bs] * bs + p % bs;
            mh->tok_slot[t] = q->slot;
        }
    }
    fill_verify_rows(c, seqs, n_seqs, Sc, mh);
    return n_mask;
}

/* After the step synchronized: each caller's entry that asked gets its log-probabilities from lp_h. */
static void lp_deliver(cuda_engine *c, const gm_seq_step *seqs, int32_t n_seqs, gm_token_logprobs *out)
{
    float *lp, *top;
    int32_t *ids;
    cu_lp_layout(c->lp_h, c->base.opts.max_seqs, &lp, &ids, &top);
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t k = c->order_h[i];
        const gm_seq_step *q = &seqs[k];
        if (!gm_seq_step_wants_logprobs(q))
            continue;
        gm_token_logprobs *o = &out[k];
        o->logprob = lp[i];
        o->n_top = q->sampling.top_logprobs < c->V ? q->sampling.top_logprobs : (int32_t)c->V;
        memcpy(o->top_ids, ids + (int64_t)i * GM_MAX_TOP_LOGPROBS, (size_t)o->n_top * sizeof(int32_t));
        memcpy(o->top_logprobs, top + (int64_t)i * GM_MAX_TOP_LOGPROBS, (size_t)o->n_top * sizeof(float));
    }
}

/* A checked step of T tokens and `rows` logits rows. */
static gm_status step_run(cuda_engine *c, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out, int64_t T,
                          int64_t rows)
{
    gm_engine *e = &c->base;
    const gm_engine_opts *o = &e->opts;

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
    int32_t Rc = Sc; /* sampled rows: one per sequence, and a verify entry's earlier ones */
    for (int32_t i = 0; i < n_seqs; i++)
        Rc += seqs[i].logits_mode == GM_LOGITS_VERIFY ? seqs[i].n_tokens - 1 : 0;

    meta_ptrs mh, md;
    meta_layout(c->meta_h, Tc, Sc, Rc, c->max_blocks, &mh);
    meta_layout(c->meta_d, Tc, Sc, Rc, c->max_blocks, &md);
    if (mh.bytes > c->meta_cap)
        return gm_fail(GM_ERR_INTERNAL, "cuda step: metadata of %zu bytes exceeds %zu", mh.bytes, c->meta_cap);
    int32_t n_mask = fill_meta(c, seqs, n_seqs, Sc, &mh);
    GM_CUDA_CHECK(cudaMemcpyAsync(c->meta_d, c->meta_h, mh.mask_at + (size_t)n_mask * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, c->stream));

    fwd_args a;
    memset(&a, 0, sizeof a);
    a.m = md;
    a.T = Tc;
    a.S = Sc;
    a.R = Rc;
    a.decode = decode;
    a.max_new = max_new;
    a.sample = o->tp_rank == 0;
    if (use_bucket)
        a.dec = c->buckets[bi].attn;
    else
        cu_attn_plan_eager(c, decode ? Sc : nd, &a.dec);
    if (use_bucket) {
        cu_bucket *b = &c->buckets[bi];
        if (b->exec) {
            GM_CUDA_CHECK(cudaGraphLaunch(b->exec, c->stream));
            c->prof.n = b->prof_n; /* the marks recorded by this graph's event nodes */
        } else {
            /* first sight of this bucket: run it eagerly (cuBLASLt picks its algorithms), then
             * capture it for the next steps */
            GM_CHECK(cu_forward(c, &a));
            b->warm = 1;
            c->prof.n = 0; /* the profile counts graph replays only */
            GM_CHECK(capture(c, &a, &b->exec));
            b->prof_n = c->prof.n;
            c->prof.n = 0; /* nothing ran yet */
        }
    } else {
        GM_CHECK(cu_forward(c, &a));
    }

    if (out && out->tokens && o->tp_rank == 0)
        GM_CUDA_CHECK(cudaMemcpyAsync(c->tok_h, md.tokens, (size_t)(Rc > n_seqs ? Rc : n_seqs) * 4,
                                      cudaMemcpyDeviceToHost, c->stream));
    bool want_lp = false;
    for (int32_t i = 0; i < n_seqs && out && out->logprobs && o->tp_rank == 0; i++)
        want_lp = want_lp || gm_seq_step_wants_logprobs(&seqs[i]);
    if (want_lp) {
        float *lp_d, *top_d, *lp_h, *top_h;
        int32_t *ids_d, *ids_h;
        cu_lp_layout(c->lp_d, o->max_seqs, &lp_d, &ids_d, &top_d);
        cu_lp_layout(c->lp_h, o->max_seqs, &lp_h, &ids_h, &top_h);
        size_t nb = (size_t)n_seqs * 4, nt = nb * GM_MAX_TOP_LOGPROBS;
        GM_CUDA_CHECK(cudaMemcpyAsync(lp_h, lp_d, nb, cudaMemcpyDeviceToHost, c->stream));
        GM_CUDA_CHECK(cudaMemcpyAsync(ids_h, ids_d, nt, cudaMemcpyDeviceToHost, c->stream));
        GM_CUDA_CHECK(cudaMemcpyAsync(top_h, top_d, nt, cudaMemcpyDeviceToHost, c->stream));
    }
    int64_t n_dump = 0;
    if (out && out->logits && o->tp_rank == 0 && rows > 0) {
        for (int32_t i = 0; i < n_seqs; i++) {
            const gm_seq_step *q = &seqs[i];
            int64_t tt = c->tstart_h[i];
            if (q->logits_mode == GM_LOGITS_ALL || q->logits_mode == GM_LOGITS_VERIFY)
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
    if (out && out->tokens && o->tp_rank == 0) {
        for (int32_t i = 0; i < n_seqs; i++)
            out->tokens[c->order_h[i]] = seqs[c->order_h[i]].logits_mode == GM_LOGITS_NONE ? -1 : c->tok_h[i];
        int64_t vo = 0; /* the verify samples, entries in the caller's order: extra rows, then the entry's own */
        for (int32_t k = 0; k < n_seqs && out->verify && Rc > Sc; k++) {
            if (seqs[k].logits_mode != GM_LOGITS_VERIFY)
                continue;
            for (int32_t j = 0; j < seqs[k].n_tokens - 1; j++)
                out->verify[vo++] = c->tok_h[c->vrow_h[k] + j];
            out->verify[vo++] = c->tok_h[c->spos_h[k]];
        }
    }
    if (want_lp)
        lp_deliver(c, seqs, n_seqs, out->logprobs);
    return GM_OK;
}

gm_status cu_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out)
{
    cuda_engine *c = (cuda_engine *)e;
    int64_t T = 0, rows = 0;
    GM_CHECK(check_step(e, seqs, n_seqs, out, &T, &rows));
    GM_CHECK(gm_pen_step(&c->pen, seqs, n_seqs, c->pen_flags_h));
    if (T == 0)
        return GM_OK;
    gm_status st = step_run(c, seqs, n_seqs, out, T, rows);
    if (st != GM_OK)
        gm_pen_forget(&c->pen); /* a table may be half built: the next entry of each slot must reset it */
    return st;
}

/* Copy-on-write of shared blocks: the pairs go in with the pinned mirror (free again: every step ends
 * synchronized), then one launch copies every layer's K and V; the step's forward follows on the stream. */
gm_status cu_copy_blocks(gm_engine *e, const gm_block_copy *copies, int32_t n)
{
    cuda_engine *c = (cuda_engine *)e;
    if (n <= 0)
        return GM_OK;
    if (n > e->opts.max_seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "cuda engine: %d block copies; at most %d", n, e->opts.max_seqs);
    memcpy(c->copy_h, copies, (size_t)n * 8);
    GM_CUDA_CHECK(cudaMemcpyAsync(c->copy_d, c->copy_h, (size_t)n * 8, cudaMemcpyHostToDevice, c->stream));
    int64_t esz = c->kv8 ? 1 : 2, block_bytes = c->nkv * e->opts.kv_block_size * c->hd * esz;
    return k_kv_copy_blocks(c->kv, 2 * (int64_t)e->cfg.num_layers, c->layer_elems * esz, block_bytes, c->copy_d, n,
                            c->stream);
}

/* ---------------------------------------------------------------- buffers */

gm_status cu_buckets_plan(cuda_engine *c)
{
    for (int32_t i = 0; i < c->n_buckets; i++) {
        cu_bucket *b = &c->buckets[i];
        cu_attn_plan *p = &b->attn;
        p->rows = b->size;
        p->xqa = cu_decode_uses_xqa(c, b->size);
        p->clear = 0;
        cu_attn_plan_splits(c, p);
        if (!p->xqa)
            continue;
        /* XQA: a zeroed scratch of its own (its split semaphores sit at offsets that depend on the batch); the
         * sliding layers' split count is at most n_split */
        size_t need = k_xqa_scratch_bytes(b->size, (int32_t)c->nkv, (int32_t)c->nq, 1, (int32_t)c->hd, p->n_split);
        if (p->scratch && p->scratch_bytes >= need)
            continue;
        cudaFree(p->scratch);
        p->scratch = NULL, p->scratch_bytes = need;
        GM_CHECK(cu_dev_alloc(&p->scratch, need, "XQA scratch"));
        GM_CUDA_CHECK(cudaMemset(p->scratch, 0, need));
    }
    return GM_OK;
}

/* The sampler's extras: penalty tables and log-probability rows (rank 0 samples), the host bookkeeping. */
static gm_status sampler_alloc(cuda_engine *c)
{
    const gm_engine_opts *o = &c->base.opts;
    GM_CHECK(gm_pen_init(&c->pen, o->max_seqs));
    c->pen_flags_h = (uint8_t *)calloc((size_t)o->max_seqs, 1);
    if (!c->pen_flags_h)
        return gm_fail(GM_ERR_NOMEM, "cuda engine: no host memory");
    if (o->tp_rank != 0)
        return GM_OK;
    c->pen_cap = gm_pen_table_cap(o->max_context, c->V);
    size_t n = (size_t)o->max_seqs * (size_t)c->pen_cap;
    GM_CHECK(cu_dev_alloc((void **)&c->pen_keys, n * 4, "penalty tables"));
    GM_CHECK(cu_dev_alloc((void **)&c->pen_counts, n * 4, "penalty tables"));
    GM_CHECK(cu_dev_alloc((void **)&c->pen_raw, n * 4, "penalty tables"));
    GM_CUDA_CHECK(cudaMemset(c->pen_keys, 0xff, n * 4));
    GM_CUDA_CHECK(cudaMemset(c->pen_counts, 0, n * 4));
    GM_CHECK(cu_dev_alloc((void **)&c->lp_d, cu_lp_bytes(o->max_seqs), "log-probabilities"));
    GM_CUDA_CHECK(cudaMallocHost((void **)&c->lp_h, cu_lp_bytes(o->max_seqs)));
    return GM_OK;
}

gm_status cu_runtime_alloc(cuda_engine *c)
{
    const gm_engine_opts *o = &c->base.opts;
    int64_t T = o->max_tokens, H = c->H;
    c->cap_t = T;
    c->delta_f32 = o->tp_size > 1;
    GM_CHECK(cu_dev_alloc((void **)&c->h, (size_t)(T * H * 2), "activations"));
    GM_CHECK(cu_dev_alloc((void **)&c->xn, (size_t)(T * H * 2), "activations"));
    GM_CHECK(cu_dev_alloc((void **)&c->qkv, (size_t)(T * c->n_qkv * 2), "activations"));
    GM_CHECK(cu_dev_alloc((void **)&c->att, (size_t)(T * c->nq * c->hd * 2), "activations"));
    GM_CHECK(cu_dev_alloc((void **)&c->gu, (size_t)(T * 2 * c->ni * 2), "activations"));
    GM_CHECK(cu_dev_alloc((void **)&c->act, (size_t)(T * c->ni * 2), "activations"));
    GM_CHECK(cu_dev_alloc(&c->delta, (size_t)(T * H * 4), "activations"));
    GM_CHECK(cu_dev_alloc((void **)&c->neg_slots, (size_t)T * 4, "activations"));
    GM_CUDA_CHECK(cudaMemset(c->neg_slots, 0xff, (size_t)T * 4));
    if (c->wfmt == CU_W_FP8) {
        int64_t wide = c->ni > H ? c->ni : H;
        GM_CHECK(cu_dev_alloc((void **)&c->xq8, (size_t)(T * H), "fp8 activations"));
        GM_CHECK(cu_dev_alloc((void **)&c->attq8, (size_t)(T * c->nq * c->hd), "fp8 activations"));
        GM_CHECK(cu_dev_alloc((void **)&c->actq8, (size_t)(T * c->ni), "fp8 activations"));
        GM_CHECK(cu_dev_alloc((void **)&c->act_tmp, (size_t)(T * wide * 2), "fp8 activations"));
        GM_CHECK(cu_dev_alloc((void **)&c->act_sc, 5 * SC_STRIDE * sizeof(float), "fp8 scales"));
        GM_CUDA_CHECK(cudaMemset(c->act_sc, 0, 5 * SC_STRIDE * sizeof(float)));
    }
    c->cap_rows = o->max_seqs > LOGIT_CHUNK ? o->max_seqs : LOGIT_CHUNK;
    GM_CHECK(cu_dev_alloc((void **)&c->xs, (size_t)(c->cap_rows * H * 2), "logits"));
    GM_CHECK(cu_dev_alloc((void **)&c->logits, (size_t)(c->cap_rows * c->V * 4), "logits"));
    GM_CHECK(cu_dev_alloc((void **)&c->dump_rows, (size_t)T * 4, "logits"));
    GM_CHECK(cu_dev_alloc((void **)&c->last_tok, (size_t)o->max_seqs * 4, "tokens"));
    GM_CUDA_CHECK(cudaMemset(c->last_tok, 0, (size_t)o->max_seqs * 4));
    GM_CHECK(sampler_alloc(c));
    c->dump_rows_h = (int32_t *)malloc((size_t)T * 4);
    c->order_h = (int32_t *)malloc((size_t)o->max_seqs * 4);
    c->tstart_h = (int64_t *)malloc((size_t)o->max_seqs * 8);
    c->vrow_h = (int32_t *)malloc((size_t)o->max_seqs * 4);
    c->spos_h = (int32_t *)malloc((size_t)o->max_seqs * 4);
    if (!c->dump_rows_h || !c->order_h || !c->tstart_h || !c->vrow_h || !c->spos_h)
        return gm_fail(GM_ERR_NOMEM, "cuda engine: no host memory");

    /* metadata: the largest of an eager step (T tokens, max_seqs) and any bucket */
    meta_ptrs m;
    char dummy[16];
    int64_t most_rows = T > o->max_seqs ? T : o->max_seqs; /* sampled rows: at most one per token */
    meta_layout(dummy, most_rows, o->max_seqs, most_rows, c->max_blocks, &m);
    c->meta_cap = m.bytes;
    GM_CHECK(cu_dev_alloc((void **)&c->meta_d, c->meta_cap, "step metadata"));
    GM_CUDA_CHECK(cudaMallocHost((void **)&c->meta_h, c->meta_cap));
    GM_CUDA_CHECK(cudaMallocHost((void **)&c->tok_h, (size_t)most_rows * 4));
    GM_CUDA_CHECK(cudaMallocHost((void **)&c->copy_h, (size_t)o->max_seqs * 8));
    GM_CHECK(cu_dev_alloc((void **)&c->copy_d, (size_t)o->max_seqs * 8, "block copies"));
    memset(c->meta_h, 0, c->meta_cap);

    /* decode buckets: 1, 2, 4, 8, then steps of 8 up to 128, then of 16 up to 256, 32 up to 512, ...
     * (<= 12.5% padding) up to max_seqs (and max_tokens) */
    int32_t most = o->max_seqs < o->max_tokens ? o->max_seqs : o->max_tokens;
    c->n_buckets = 0;
    for (int32_t b = 1; c->n_buckets < MAX_BUCKETS;) {
        int32_t sz = b < most ? b : most;
        c->buckets[c->n_buckets].size = sz;
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
    /* k_attn_decode's scratch: the largest split plan of any batch up to max_seqs (buckets included) */
    size_t scratch = 0;
    for (int32_t B = 1; B <= o->max_seqs; B++) {
        int32_t ns = k_attn_decode_splits(B, (int32_t)c->nkv, o->max_context, c->n_sm);
        size_t sb = k_attn_decode_scratch_bytes(B, (int32_t)c->nq, (int32_t)c->nkv, (int32_t)c->hd, ns);
        if (sb > scratch)
            scratch = sb;
    }
    c->dec_scratch_bytes = scratch;
    GM_CHECK(cu_dev_alloc(&c->dec_scratch, scratch, "decode attention scratch"));
    GM_CUDA_CHECK(cudaMemset(c->dec_scratch, 0, scratch));

    /* XQA: a zeroed scratch per bucket that takes it, and one for eager steps of any batch (mixed steps'
     * decode rows included), whose semaphores are cleared before each step */
    GM_CHECK(cu_buckets_plan(c));
    size_t xs = 0;
    for (int32_t B = 1; B <= o->max_seqs; B++) {
        cu_attn_plan pl;
        memset(&pl, 0, sizeof pl);
        pl.rows = B, pl.xqa = 1;
        cu_attn_plan_splits(c, &pl);
        size_t sb = k_xqa_scratch_bytes(B, (int32_t)c->nkv, (int32_t)c->nq, 1, (int32_t)c->hd, pl.n_split);
        xs = sb > xs ? sb : xs;
    }
    c->xqa_bytes = xs;
    c->xqa_sem_bytes = ((size_t)o->max_seqs * (size_t)c->nkv * 4 + 255) & ~(size_t)255;
    if (c->xqa_sem_bytes > xs)
        c->xqa_sem_bytes = xs;
    GM_CHECK(cu_dev_alloc(&c->xqa_scratch, xs, "XQA scratch"));
    GM_CUDA_CHECK(cudaMemset(c->xqa_scratch, 0, xs ? xs : 16));

    /* RoPE: the full layers' table (rope_theta, linear scaling); the sliding layers' own where its base or
     * scaling differs (Gemma 3: rope_theta_local, unscaled) */
    const gm_model_config *mc = &c->base.cfg;
    int32_t mp = o->max_context;
    size_t tab_bytes = (size_t)mp * (size_t)c->hd * 4;
    float scale = mc->rope_scale > 0.0f ? mc->rope_scale : 1.0f;
    GM_CHECK(cu_dev_alloc((void **)&c->rope_tab, tab_bytes, "the RoPE table"));
    GM_CHECK(k_rope_table(c->rope_tab, mp, (int32_t)c->hd, mc->rope_theta, scale));
    int any_sliding = 0;
    for (int32_t l = 0; l < mc->num_layers; l++)
        any_sliding |= mc->layer_sliding[l];
    if (any_sliding && (mc->rope_theta_local != mc->rope_theta || scale != 1.0f)) {
        GM_CHECK(cu_dev_alloc((void **)&c->rope_local, tab_bytes, "the sliding layers' RoPE table"));
        GM_CHECK(k_rope_table(c->rope_local, mp, (int32_t)c->hd, mc->rope_theta_local, 1.0f));
    }
    for (int32_t l = 0; l < mc->num_layers; l++)
        c->layers[l].rope = mc->layer_sliding[l] && c->rope_local ? c->rope_local : c->rope_tab;
    return GM_OK;
}

void cu_runtime_free(cuda_engine *c)
{
    cu_graphs_drop(c);
    for (int i = 0; i < PROF_MAX; i++)
        if (c->prof.ev[i])
            cudaEventDestroy(c->prof.ev[i]);
    cudaFree(c->rope_tab), cudaFree(c->rope_local), cudaFree(c->kv);
    cudaFree(c->h), cudaFree(c->xn), cudaFree(c->qkv), cudaFree(c->att), cudaFree(c->gu), cudaFree(c->act);
    cudaFree(c->delta), cudaFree(c->xs), cudaFree(c->logits), cudaFree(c->dump_rows), cudaFree(c->last_tok);
    cudaFree(c->dec_scratch), cudaFree(c->meta_d);
    cudaFree(c->neg_slots), cudaFree(c->xq8), cudaFree(c->attq8), cudaFree(c->actq8), cudaFree(c->act_tmp);
    cudaFree(c->act_sc), cudaFree(c->xqa_scratch), cudaFree(c->copy_d);
    if (c->copy_h)
        cudaFreeHost(c->copy_h);
    cudaFree(c->pen_keys), cudaFree(c->pen_counts), cudaFree(c->pen_raw), cudaFree(c->lp_d);
    if (c->lp_h)
        cudaFreeHost(c->lp_h);
    gm_pen_free(&c->pen);
    free(c->pen_flags_h);
    for (int32_t i = 0; i < c->n_buckets; i++)
        cudaFree(c->buckets[i].attn.scratch);
    if (c->meta_h)
        cudaFreeHost(c->meta_h);
    if (c->tok_h)
        cudaFreeHost(c->tok_h);
    free(c->dump_rows_h), free(c->order_h), free(c->tstart_h), free(c->vrow_h), free(c->spos_h);
}

/* The sizes the spec leaves unset (ctl/sizing.h), from the memory left after the weights;
 * at tp > 1 every rank takes rank 0's, since graph buckets and collectives must match. */
gm_status cu_size_limits(cuda_engine *c, const gm_worker_spec *spec, gm_device_mem *mem)
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
        GM_CHECK(cu_dev_alloc((void **)&d, sizeof v, "sizing"));
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
gm_status cu_kv_alloc(cuda_engine *c, const gm_worker_spec *spec, gm_device_mem *mem)
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
    c->base.sizing.kv_num_blocks = n, c->base.sizing.kv_bytes = z.kv_bytes, c->base.sizing.kv_block_bytes = per_block;
    memcpy(c->base.sizing.why_kv, z.why_kv, sizeof z.why_kv);
    c->base.kv_num_blocks = n;
    c->layer_elems = n * block_elems;
    GM_CHECK(cu_dev_alloc((void **)&c->kv, (size_t)(2 * c->base.cfg.num_layers) * (size_t)c->layer_elems * (size_t)esz,
                          "the KV cache"));
    if (o->verbose)
        fprintf(stderr, "cuda engine: KV cache %lld blocks of %d tokens (%.2f GB, %s)\n", (long long)n,
                o->kv_block_size, (double)n * (double)per_block / 1e9, c->kv8 ? "fp8 e4m3" : "bf16");
    return GM_OK;
}
