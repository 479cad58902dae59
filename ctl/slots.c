/* slots.c - the per-slot block-table and sampling deltas of step plans (see slots.h). */
#include "ctl/slots.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

gm_status ctl_slots_init(ctl_slots *s, int32_t n, int32_t max_blocks)
{
    memset(s, 0, sizeof *s);
    if (n < 1 || max_blocks < 0)
        return gm_fail(GM_ERR_INVALID_ARG, "slot state for %d slots of %d blocks", (int)n, (int)max_blocks);
    s->n = n;
    s->max_blocks = max_blocks;
    s->len = malloc((size_t)n * sizeof *s->len);
    s->samp = calloc((size_t)n, sizeof *s->samp);
    if (max_blocks > 0)
        s->tables = malloc((size_t)n * (size_t)max_blocks * sizeof *s->tables);
    if (!s->len || !s->samp || (max_blocks > 0 && !s->tables)) {
        ctl_slots_free(s);
        return gm_fail(GM_ERR_NOMEM, "slot state for %d slots of %d blocks", (int)n, (int)max_blocks);
    }
    ctl_slots_forget(s);
    return GM_OK;
}

void ctl_slots_free(ctl_slots *s)
{
    free(s->len);
    free(s->samp);
    free(s->tables);
    memset(s, 0, sizeof *s);
}

void ctl_slots_forget(ctl_slots *s)
{
    for (int32_t i = 0; i < s->n; i++)
        s->len[i] = -1;
}

static bool same_sampling(const gm_sampling *a, const gm_sampling *b)
{
    return a->temperature == b->temperature && a->top_k == b->top_k && a->top_p == b->top_p && a->seed == b->seed;
}

void ctl_slots_put(ctl_slots *s, const gm_seq_step *step, Gemma__Control__V1__SeqPlan *q,
                   Gemma__Control__V1__Sampling *sa)
{
    gemma__control__v1__seq_plan__init(q);
    q->slot = step->slot;
    q->tokens = (int32_t *)step->tokens;
    q->n_tokens = (size_t)step->n_tokens;
    q->start_pos = step->start_pos;
    q->logits_mode = step->logits_mode;
    bool tracked = step->slot >= 0 && step->slot < s->n;
    int32_t have = tracked ? s->len[step->slot] : -1;
    bool reset = have < 0 || step->reset || step->start_pos == 0 || step->n_blocks < have;
    int32_t from = reset ? 0 : have;
    q->reset = reset;
    q->block_table = (int32_t *)step->block_table + from;
    q->n_block_table = (size_t)(step->n_blocks - from);
    if (reset || !same_sampling(&s->samp[step->slot], &step->sampling)) {
        gemma__control__v1__sampling__init(sa);
        sa->temperature = step->sampling.temperature;
        sa->top_k = step->sampling.top_k;
        sa->top_p = step->sampling.top_p;
        sa->seed = step->sampling.seed;
        q->sampling = sa;
    }
    if (tracked) {
        s->len[step->slot] = step->n_blocks;
        s->samp[step->slot] = step->sampling;
    }
}

/* Apply entry i (q) to its slot and fill *o. */
static gm_status take_one(ctl_slots *s, const Gemma__Control__V1__SeqPlan *q, size_t i, int64_t kv_blocks,
                          gm_seq_step *o)
{
    if (q->slot < 0 || q->slot >= s->n)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %zu: slot %d is outside 0..%d", i, (int)q->slot, (int)s->n - 1);
    int64_t have = q->reset ? 0 : s->len[q->slot];
    if (have < 0)
        return gm_fail(GM_ERR_INVALID_ARG,
                       "sequence %zu: slot %d has no block table (a step failed since; the plan must reset it)", i,
                       (int)q->slot);
    int64_t len = have + (int64_t)q->n_block_table;
    if (len > s->max_blocks)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %zu: slot %d would hold %lld KV blocks; at most %d", i,
                       (int)q->slot, (long long)len, (int)s->max_blocks);
    for (size_t j = 0; j < q->n_block_table; j++)
        if (q->block_table[j] < 0 || q->block_table[j] >= kv_blocks)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %zu: KV block %d out of range 0..%lld", i,
                           (int)q->block_table[j], (long long)kv_blocks - 1);
    int32_t *t = s->tables + (int64_t)q->slot * s->max_blocks;
    if (q->n_block_table)
        memcpy(t + have, q->block_table, q->n_block_table * sizeof *t);
    s->len[q->slot] = (int32_t)len;
    gm_sampling *sp = &s->samp[q->slot];
    if (q->sampling) {
        sp->temperature = q->sampling->temperature;
        sp->top_k = q->sampling->top_k;
        sp->top_p = q->sampling->top_p;
        sp->seed = q->sampling->seed;
    } else if (q->reset) {
        *sp = GM_SAMPLING_GREEDY;
    }
    o->slot = q->slot;
    o->tokens = q->tokens;
    o->n_tokens = (int32_t)q->n_tokens;
    o->start_pos = q->start_pos;
    o->block_table = t;
    o->n_blocks = (int32_t)len;
    o->logits_mode = q->logits_mode;
    o->sampling = *sp;
    return GM_OK;
}

gm_status ctl_slots_take(ctl_slots *s, const Gemma__Control__V1__StepPlan *p, int64_t kv_blocks, gm_seq_step *out)
{
    if (p->n_seqs == 0)
        return gm_fail(GM_ERR_INVALID_ARG, "step %llu: no sequences", (unsigned long long)p->step_id);
    if (p->n_seqs > (size_t)s->n)
        return gm_fail(GM_ERR_INVALID_ARG, "step %llu: %zu sequences > max_seqs %d", (unsigned long long)p->step_id,
                       p->n_seqs, (int)s->n);
    for (size_t i = 0; i < p->n_seqs; i++) {
        gm_status st = take_one(s, p->seqs[i], i, kv_blocks, &out[i]);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}
