/* sched_int.h - what the scheduler's files share (not a public header; the API is sched.h).
 *
 *   sched.c        sequences, admission, planning, committing, the counters and sched_check
 *   sched_spec.c   speculative decoding: plan a verify entry, apply its samples
 *   sched_beam.c   beam groups: readiness and re-pointing beams at their parents' histories */
#ifndef GM_SCHED_INT_H
#define GM_SCHED_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/kvblocks.h"
#include "daemon/sched.h"

typedef struct seq_list {
    sched_seq *head, *tail;
    int32_t n;
} seq_list;

struct sched {
    sched_opts o;
    kvb_pool *kv;
    seq_list running; /* admission order: head oldest */
    seq_list waiting; /* FIFO; preempted sequences go to the front */
    int32_t *free_slots; /* [max_seqs] stack */
    int32_t n_free_slots;
    int64_t preemptions;
    int64_t cap_tokens; /* most tokens one sequence can ever hold: min(context, pool) */
    int64_t pc_queries, pc_hits; /* prefix cache: tokens looked up at admission, tokens found */
    int64_t forks;
    int64_t beam_forks, beam_shared; /* beams re-pointed, blocks they took by reference */
    int64_t spec_steps, spec_drafted, spec_accepted; /* speculative decoding */
    int32_t *hit_ids;   /* [blocks of cap_tokens] admission's lookup scratch */
    /* plan buffers, a ring: [max_seqs] entries each */
    struct plan_buf {
        gm_seq_step *steps;
        sched_seq **seqs;
        uint32_t *epochs; /* each entry's sequence epoch when planned */
        uint8_t *got;
        gm_block_copy *copies; /* [max_seqs]: at most one per entry (only the block at its write position
                                * can be shared) */
        int32_t n, n_copies;
        uint64_t serial;
    } bufs[SCHED_MAX_OUTSTANDING];
    int32_t head, n_out; /* oldest outstanding buffer, outstanding count */
    uint64_t serial;     /* of the last plan made */
};

/* q's names are its first n_named blocks': where its next registration comes. */
static inline void sched_set_named(const sched *s, sched_seq *q, int32_t n_named)
{
    q->n_named = n_named;
    q->reg_at = s->o.prefix_cache ? (n_named + 1) * s->o.kv_block_size : INT32_MAX;
}

/* Blocks q needs before it writes n_tok more tokens (new ones, and copies of shared ones). */
int64_t sched_write_need(const sched *s, const sched_seq *q, int32_t n_tok);
/* Plan n_tokens of q into plan buffer b (the caller made sure sched_write_need's blocks are available). */
void sched_plan_add(sched *s, int b, sched_seq *q, int32_t n_tokens);
/* Name q's blocks [n_named, full) in the prefix cache (sched_register_known's slow path). */
void sched_register_blocks(sched *s, sched_seq *q, int32_t full);

/* Register q's full blocks of known, computed tokens in the prefix cache, in chain order. Called for
 * every entry planned and every token committed: the test for "a block filled up" comes first. */
static inline void sched_register_known(sched *s, sched_seq *q)
{
    if (q->n_computed >= q->reg_at && q->n_tokens >= q->reg_at)
        sched_register_blocks(s, q, (q->n_tokens < q->n_computed ? q->n_tokens : q->n_computed) / s->o.kv_block_size);
}

/* ---- sched_spec.c ---- */

/* Plan speculative q's last token with its drafts as one verify entry; false: nothing planned. */
bool sched_spec_plan(sched *s, int b, sched_seq *q, int32_t *budget);
/* Apply verify entry st's sampled rows to q; returns the tokens appended. */
int32_t sched_spec_commit(sched *s, sched_seq *q, const gm_seq_step *st, const int32_t *rows);

#endif
