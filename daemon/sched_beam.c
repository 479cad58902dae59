/* sched_beam.c - beam groups in the scheduler (sched_int.h): when a group's round is complete, and
 * re-pointing each beam at its parent's history, its blocks shared by reference. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/kvblocks.h"
#include "daemon/sched_int.h"

bool sched_beam_ready(const sched *s, const sched_seq *lead)
{
    (void)s;
    if (!lead->beams || lead->n_tokens == 0)
        return false;
    for (int32_t i = 0; i < lead->beam_width; i++) {
        const sched_seq *m = lead->beams[i];
        if (m->state != SCHED_RUNNING || (m->n_tokens > 0 && (!m->beam_ready || m->n_pending > 0)))
            return false;
    }
    return true;
}

gm_status sched_beam_reseat(sched *s, sched_seq *lead, const int32_t *parent, const int32_t *token)
{
    int32_t W = lead->beam_width;
    int32_t *nt[SCHED_MAX_BEAM] = {0}, *nb[SCHED_MAX_BEAM] = {0};
    uint64_t *nn[SCHED_MAX_BEAM] = {0};
    for (int32_t i = 0; i < W; i++) {
        if (parent[i] < 0 || parent[i] >= W || lead->beams[parent[i]]->n_tokens == 0)
            return gm_fail(GM_ERR_INVALID_ARG, "beam %d: parent %d is not a live beam", i, parent[i]);
        if (parent[i] == i)
            continue;
        sched_seq *q = lead->beams[i];
        nt[i] = malloc((size_t)q->cap * sizeof(int32_t));
        nb[i] = malloc((size_t)q->blocks_cap * sizeof(int32_t));
        nn[i] = malloc((size_t)q->blocks_cap * sizeof(uint64_t));
        if (!nt[i] || !nb[i] || !nn[i]) {
            for (int32_t j = 0; j <= i; j++)
                free(nt[j]), free(nb[j]), free(nn[j]);
            return gm_fail(GM_ERR_NOMEM, "beam search: out of memory re-pointing %d beams", W);
        }
    }
    /* 1. copies of the parents' histories, from the tables as they are (each block one more reference) */
    int32_t n_tok[SCHED_MAX_BEAM], n_blk[SCHED_MAX_BEAM], n_nam[SCHED_MAX_BEAM], n_comp[SCHED_MAX_BEAM];
    for (int32_t i = 0; i < W; i++) {
        if (!nt[i])
            continue;
        const sched_seq *p = lead->beams[parent[i]];
        memcpy(nt[i], p->tokens, (size_t)p->n_tokens * sizeof(int32_t));
        memcpy(nb[i], p->blocks, (size_t)p->n_blocks * sizeof(int32_t));
        memcpy(nn[i], p->names, (size_t)p->n_named * sizeof(uint64_t));
        for (int32_t j = 0; j < p->n_blocks; j++)
            kvb_ref(s->kv, p->blocks[j]);
        n_tok[i] = p->n_tokens, n_blk[i] = p->n_blocks, n_nam[i] = p->n_named, n_comp[i] = p->n_computed;
        s->beam_forks++;
        s->beam_shared += p->n_blocks;
    }
    /* 2. the beams that changed history drop their old one */
    for (int32_t i = 0; i < W; i++) {
        sched_seq *q = lead->beams[i];
        if (nt[i]) {
            if (q->n_blocks)
                kvb_release(s->kv, q->blocks, q->n_blocks);
            free(q->tokens), free(q->blocks), free(q->names);
            q->tokens = nt[i], q->blocks = nb[i], q->names = nn[i];
            q->n_tokens = n_tok[i], q->n_blocks = n_blk[i], q->n_computed = n_comp[i];
            sched_set_named(s, q, n_nam[i]);
            q->table_reset = true;
            q->epoch++;
        }
        q->tokens[q->n_tokens++] = token[i];
        q->beam_ready = false;
    }
    return GM_OK;
}
