/* check.c - the step validator (see check.h). */
#include "ctl/check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ctl_marks_free(ctl_marks *m)
{
    free(m->seen);
    memset(m, 0, sizeof *m);
}

/* A new stamp for this step; the marks cover n slots. */
static gm_status marks_begin(ctl_marks *m, int32_t n)
{
    if (m->cap < n) {
        uint32_t *grown = calloc((size_t)n, sizeof *grown);
        if (!grown)
            return gm_fail(GM_ERR_NOMEM, "step check: %d slots", (int)n);
        free(m->seen);
        m->seen = grown;
        m->cap = n;
        m->stamp = 0;
    }
    if (++m->stamp == 0) { /* wrapped: forget every old stamp */
        memset(m->seen, 0, (size_t)m->cap * sizeof *m->seen);
        m->stamp = 1;
    }
    return GM_OK;
}

gm_status ctl_check_previous(const gm_seq_step *s, int32_t i, const int32_t *last)
{
    if (s->start_pos <= 0)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): token -1 (the previous sample) at position %d", i,
                       s->slot, s->start_pos);
    if (last && last[s->slot] < 0)
        return gm_fail(GM_ERR_INVALID_ARG,
                       "sequence %d (slot %d): token -1 asks for the slot's last sample, but it has none", i, s->slot);
    return GM_OK;
}

/* The tokens of entry i: a lone previous-sample marker, or ids in the vocabulary. */
static gm_status check_tokens(const ctl_limits *l, const gm_seq_step *s, int32_t i, const int32_t *last)
{
    if (gm_seq_step_fed(s))
        return ctl_check_previous(s, i, last);
    for (int32_t t = 0; t < s->n_tokens; t++)
        if (s->tokens[t] < 0 || s->tokens[t] >= l->vocab_size)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): token %d is id %d, vocabulary is %d", i,
                           s->slot, t, s->tokens[t], l->vocab_size);
    return GM_OK;
}

/* The sampling of entry i and its stop set. */
static gm_status check_sampling(const ctl_limits *l, const gm_seq_step *s, int32_t i)
{
    const gm_sampling *sp = &s->sampling;
    if (!(sp->temperature >= 0.0f) || isinf(sp->temperature) || sp->top_k < 0 || !(sp->top_p > 0.0f) ||
        sp->top_p > 1.0f)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): bad sampling (temperature %g, top_k %d, top_p %g)",
                       i, s->slot, (double)sp->temperature, sp->top_k, (double)sp->top_p);
    if (!isfinite(sp->presence_penalty) || !isfinite(sp->frequency_penalty) || !isfinite(sp->repetition_penalty) ||
        sp->repetition_penalty < 0.0f)
        return gm_fail(GM_ERR_INVALID_ARG,
                       "sequence %d (slot %d): bad penalties (presence %g, frequency %g, repetition %g)", i, s->slot,
                       (double)sp->presence_penalty, (double)sp->frequency_penalty, (double)sp->repetition_penalty);
    if (sp->n_prompt < 0 || sp->min_tokens < 0 || (sp->logprobs != 0 && sp->logprobs != 1) || sp->top_logprobs < 0 ||
        sp->top_logprobs > GM_MAX_TOP_LOGPROBS)
        return gm_fail(GM_ERR_INVALID_ARG,
                       "sequence %d (slot %d): bad sampling (n_prompt %d, min_tokens %d, logprobs %d, top_logprobs %d "
                       "of 0..%d)", i, s->slot, sp->n_prompt, sp->min_tokens, sp->logprobs, sp->top_logprobs,
                       GM_MAX_TOP_LOGPROBS);
    if (s->stops) {
        if (s->stops->n < 0 || s->stops->n > GM_MAX_STOP_SET)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): %d stop ids; at most %d", i, s->slot,
                           s->stops->n, GM_MAX_STOP_SET);
        for (int32_t k = 0; k < s->stops->n; k++)
            if (s->stops->ids[k] < 0 || s->stops->ids[k] >= l->vocab_size)
                return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): stop id %d, vocabulary is %d", i, s->slot,
                               s->stops->ids[k], l->vocab_size);
    }
    return GM_OK;
}

/* One entry, its slot already checked; adds its logits rows. */
static gm_status check_seq(const ctl_limits *l, const gm_seq_step *s, int32_t i, const int32_t *last, int64_t *rows,
                           int64_t *verify)
{
    if (s->n_tokens < 1 || !s->tokens)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): %d tokens", i, s->slot, s->n_tokens);
    if (s->start_pos < 0 || (int64_t)s->start_pos + s->n_tokens > l->max_context)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): positions %d..%lld exceed the context of %d", i,
                       s->slot, s->start_pos, (long long)s->start_pos + s->n_tokens - 1, l->max_context);
    int64_t need = ((int64_t)s->start_pos + s->n_tokens + l->kv_block_size - 1) / l->kv_block_size;
    if (s->n_blocks < need || !s->block_table)
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): block table has %d blocks, %lld needed", i, s->slot,
                       s->n_blocks, (long long)need);
    for (int64_t b = 0; b < need; b++)
        if (s->block_table[b] < 0 || s->block_table[b] >= l->kv_blocks)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): block %lld is id %d, pool has %lld", i, s->slot,
                           (long long)b, s->block_table[b], (long long)l->kv_blocks);
    gm_status st = check_tokens(l, s, i, last);
    if (st != GM_OK)
        return st;
    if ((st = check_sampling(l, s, i)) != GM_OK)
        return st;
    switch (s->logits_mode) {
    case GM_LOGITS_NONE:
        break;
    case GM_LOGITS_LAST:
        *rows += 1;
        break;
    case GM_LOGITS_ALL:
        *rows += s->n_tokens;
        break;
    case GM_LOGITS_VERIFY:
        if (gm_sampling_has_penalties(&s->sampling) || gm_sampling_wants_logprobs(&s->sampling) ||
            gm_seq_step_fed(s))
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): a verify entry takes no penalties, "
                           "log-probabilities or fed-back token", i, s->slot);
        *rows += s->n_tokens;
        *verify += s->n_tokens;
        break;
    default:
        return gm_fail(GM_ERR_INVALID_ARG, "sequence %d (slot %d): unknown logits mode %d", i, s->slot,
                       s->logits_mode);
    }
    return GM_OK;
}

gm_status ctl_check_step(const ctl_limits *l, ctl_marks *marks, const gm_seq_step *seqs, int32_t n_seqs,
                         const int32_t *last, ctl_step_sums *sums)
{
    if (n_seqs < 0 || n_seqs > l->max_seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %d sequences; the engine takes 0..%d", n_seqs, l->max_seqs);
    if (n_seqs > 0 && !seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %d sequences but no array", n_seqs);
    gm_status st = marks_begin(marks, l->max_seqs);
    if (st != GM_OK)
        return st;
    int64_t total = 0, rows = 0, verify = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->slot < 0 || s->slot >= l->max_seqs)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d: slot %d is outside 0..%d", i, s->slot, l->max_seqs - 1);
        if (marks->seen[s->slot] == marks->stamp)
            return gm_fail(GM_ERR_INVALID_ARG, "sequence %d reuses slot %d of an earlier sequence", i, s->slot);
        marks->seen[s->slot] = marks->stamp;
        if ((st = check_seq(l, s, i, last, &rows, &verify)) != GM_OK)
            return st;
        total += s->n_tokens;
    }
    if (total > l->max_tokens)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %lld tokens; the engine takes at most %d", (long long)total,
                       l->max_tokens);
    if (sums) {
        sums->tokens = total;
        sums->logits_rows = rows;
        sums->verify_rows = verify;
    }
    return GM_OK;
}

gm_status ctl_check_copies(const ctl_limits *l, const gm_block_copy *c, int32_t n)
{
    if (n < 0 || n > l->max_seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %d block copies; at most %d", n, l->max_seqs);
    if (n > 0 && !c)
        return gm_fail(GM_ERR_INVALID_ARG, "step has %d block copies but no array", n);
    for (int32_t i = 0; i < n; i++) {
        if (c[i].src < 0 || c[i].src >= l->kv_blocks || c[i].dst < 0 || c[i].dst >= l->kv_blocks)
            return gm_fail(GM_ERR_INVALID_ARG, "block copy %d: %d -> %d, pool has %lld blocks", i, c[i].src, c[i].dst,
                           (long long)l->kv_blocks);
        if (c[i].src == c[i].dst)
            return gm_fail(GM_ERR_INVALID_ARG, "block copy %d: block %d onto itself", i, c[i].src);
        /* copies are few (one per sequence that writes a shared block): pairwise is cheap */
        for (int32_t j = 0; j < i; j++)
            if (c[j].dst == c[i].dst || c[j].dst == c[i].src || c[j].src == c[i].dst)
                return gm_fail(GM_ERR_INVALID_ARG, "block copies %d and %d overlap (%d -> %d, %d -> %d)", j, i,
                               c[j].src, c[j].dst, c[i].src, c[i].dst);
    }
    return GM_OK;
}
