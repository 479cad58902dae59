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
    s->stops = calloc((size_t)n, sizeof *s->stops);
    if (max_blocks > 0)
        s->tables = malloc((size_t)n * (size_t)max_blocks * sizeof *s->tables);
    if (!s->len || !s->samp || !s->stops || (max_blocks > 0 && !s->tables)) {
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
    free(s->stops);
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
    return a->temperature == b->temperature && a->top_k == b->top_k && a->top_p == b->top_p && a->seed == b->seed &&
           a->presence_penalty == b->presence_penalty && a->frequency_penalty == b->frequency_penalty &&
           a->repetition_penalty == b->repetition_penalty && a->n_prompt == b->n_prompt &&
           a->min_tokens == b->min_tokens && a->logprobs == b->logprobs && a->top_logprobs == b->top_logprobs;
}

/* The stop set of an entry (NULL = empty) against the one a slot holds. */
static bool same_stops(const gm_stop_set *held, const gm_stop_set *st)
{
    int32_t n = st ? st->n : 0;
    return held->n == n && (n == 0 || !memcmp(held->ids, st->ids, (size_t)n * sizeof *st->ids));
}

static void sampling_to_pb(const gm_sampling *g, const gm_stop_set *st, Gemma__Control__V1__Sampling *sa)
{
    gemma__control__v1__sampling__init(sa);
    sa->temperature = g->temperature;
    sa->top_k = g->top_k;
    sa->top_p = g->top_p;
    sa->seed = g->seed;
    sa->presence_penalty = g->presence_penalty;
    sa->frequency_penalty = g->frequency_penalty;
    sa->repetition_penalty = g->repetition_penalty;
    sa->n_prompt = g->n_prompt;
    sa->min_tokens = g->min_tokens;
    sa->logprobs = g->logprobs != 0;
    sa->top_logprobs = g->top_logprobs;
    if (st && st->n > 0) {
        sa->stop_ids = (int32_t *)st->ids;
        sa->n_stop_ids = (size_t)st->n;
    }
}

static void sampling_from_pb(const Gemma__Control__V1__Sampling *sa, gm_sampling *g)
{
    g->temperature = sa->temperature;
    g->top_k = sa->top_k;
    g->top_p = sa->top_p;
    g->seed = sa->seed;
    g->presence_penalty = sa->presence_penalty;
    g->frequency_penalty = sa->frequency_penalty;
    g->repetition_penalty = sa->repetition_penalty;
    g->n_prompt = sa->n_prompt;
    g->min_tokens = sa->min_tokens;
    g->logprobs = sa->logprobs ? 1 : 0;
    g->top_logprobs = sa->top_logprobs;
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
    const gm_stop_set *st = step->stops;
    if (st && (st->n <= 0 || st->n > GM_MAX_STOP_SET))
        st = st->n > GM_MAX_STOP_SET ? st : NULL; /* too many: sent as they are, the ranks refuse them */
    if (reset || !same_sampling(&s->samp[step->slot], &step->sampling) || !same_stops(&s->stops[step->slot], st)) {
        sampling_to_pb(&step->sampling, st, sa);
        q->sampling = sa;
    }
    if (tracked) {
        s->len[step->slot] = step->n_blocks;
        s->samp[step->slot] = step->sampling;
        gm_stop_set *held = &s->stops[step->slot];
        held->n = st && st->n <= GM_MAX_STOP_SET ? st->n : 0;
        if (held->n)
            memcpy(held->ids, st->ids, (size_t)held->n * sizeof *held->ids);
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
    if (q->sampling && q->sampling->n_stop_ids > GM_MAX_STOP_SET)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %zu: %zu stop ids for min_tokens; at most %d", i,
                       q->sampling->n_stop_ids, GM_MAX_STOP_SET);
    int32_t *t = s->tables + (int64_t)q->slot * s->max_blocks;
    if (q->n_block_table)
        memcpy(t + have, q->block_table, q->n_block_table * sizeof *t);
    s->len[q->slot] = (int32_t)len;
    gm_sampling *sp = &s->samp[q->slot];
    gm_stop_set *ss = &s->stops[q->slot];
    if (q->sampling) {
        sampling_from_pb(q->sampling, sp);
        ss->n = (int32_t)q->sampling->n_stop_ids;
        if (ss->n)
            memcpy(ss->ids, q->sampling->stop_ids, (size_t)ss->n * sizeof *ss->ids);
    } else if (q->reset) {
        *sp = GM_SAMPLING_GREEDY;
        ss->n = 0;
    }
    o->slot = q->slot;
    o->tokens = q->tokens;
    o->n_tokens = (int32_t)q->n_tokens;
    o->start_pos = q->start_pos;
    o->block_table = t;
    o->n_blocks = (int32_t)len;
    o->logits_mode = q->logits_mode;
    o->sampling = *sp;
    o->stops = ss->n ? ss : NULL;
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
