/* sched_spec.c - speculative decoding in the scheduler (sched_int.h): a verify entry of the last
 * token and its prompt-lookup drafts (spec.h), and what its sampled rows commit (docs/SPECULATIVE.md). */
#include <stdbool.h>
#include <stdint.h>

#include "daemon/kvblocks.h"
#include "daemon/sched_int.h"
#include "daemon/spec.h"

/* Speculative q (all its tokens known, the last one not fed): draft by prompt lookup and plan its last
 * token with the drafts as one verify entry when a draft exists and its blocks are free without
 * preempting anyone. The drafts go into q->tokens past n_tokens (room: cap, as the length limits below
 * keep them inside it), where the entry reads them. false: nothing planned (decode it plainly). */
bool sched_spec_plan(sched *s, int b, sched_seq *q, int32_t *budget)
{
    int32_t k = q->spec_k;
    int32_t room = q->max_new - (q->n_tokens - q->n_prompt) - 1; /* outputs past this step's sure one */
    if (room < k)
        k = room;
    if (q->cap - q->n_tokens - 1 < k)
        k = q->cap - q->n_tokens - 1;
    if (*budget - 1 < k)
        k = *budget - 1;
    int32_t d = spec_draft(q->tokens, q->n_tokens, k, q->tokens + q->n_tokens);
    if (d <= 0 || sched_write_need(s, q, 1 + d) > kvb_available(s->kv))
        return false;
    sched_plan_add(s, b, q, 1 + d);
    struct plan_buf *pb = &s->bufs[b];
    pb->steps[pb->n - 1].logits_mode = GM_LOGITS_VERIFY; /* sched_plan_add saw no sample at the end: set it */
    q->n_pending++;
    *budget -= 1 + d;
    return true;
}

/* Apply verify entry st's samples rows [n_tokens] to q (running, its step current): the accepted drafts
 * and the first differing sample, with sched_commit_step's stop and length rules per token. Returns the
 * tokens appended. */
int32_t sched_spec_commit(sched *s, sched_seq *q, const gm_seq_step *st, const int32_t *rows)
{
    int32_t d = st->n_tokens - 1;
    int32_t a = spec_accepted(st->tokens + 1, d, rows);
    s->spec_steps++;
    s->spec_drafted += d;
    s->spec_accepted += a;
    /* the KV is right for positions < start_pos + 1 + a (the fed token and the accepted drafts) */
    q->n_computed = st->start_pos + 1 + a;
    int32_t got = 0;
    for (int32_t j = 0; j <= a; j++) {
        int32_t tok = rows[j];
        if (tok < 0) {
            sched_finish_seq(s, q, SCHED_FINISH_ERROR);
            return got;
        }
        q->tokens[q->n_tokens++] = tok;
        got++;
        sched_register_known(s, q);
        if (sched_is_stop(s, q, tok)) {
            q->stop_token = true;
            sched_finish_seq(s, q, SCHED_FINISH_STOP);
            return got;
        }
        if (q->n_tokens - q->n_prompt >= q->max_new || q->n_tokens >= q->cap) {
            sched_finish_seq(s, q, SCHED_FINISH_LENGTH);
            return got;
        }
    }
    /* blocks past the one the next token goes into hold only rejected positions: give them back */
    int32_t keep = (int32_t)kvb_blocks_for(s->kv, q->n_tokens);
    if (q->n_blocks > keep) {
        kvb_release(s->kv, q->blocks + keep, q->n_blocks - keep);
        q->n_blocks = keep;
        q->table_reset = true; /* the slot's table shrank: resend it whole */
    }
    return got;
}
