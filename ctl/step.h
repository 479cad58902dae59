/* step.h - one sequence's share of a step: what the coordinator plans and every rank runs.
 *
 * A step runs a batch of sequences, each appending n_tokens new tokens (a
 * prefill chunk, or 1 for decode) at start_pos, with the KV of positions
 * [0, start_pos + n_tokens) in the blocks of its block table.
 *
 * Run-ahead: the coordinator sends step k+1 before it has step k's tokens. A
 * decode entry (n_tokens == 1, start_pos > 0) whose token it does not know yet
 * carries tokens[0] == GM_TOKEN_PREVIOUS (-1): "the token this slot sampled in
 * the most recent step that sampled for it". Every rank resolves it itself
 * (ctl/check.h states exactly when it is valid). -1 never appears in a
 * multi-token entry or at position 0.
 *
 * Shared by daemon/ (the scheduler builds these) and worker/ (the engine runs
 * them); nothing here depends on a backend. */
#ifndef GM_CTL_STEP_H
#define GM_CTL_STEP_H

#include <stdbool.h>
#include <stdint.h>

#include "common/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    GM_LOGITS_NONE = 0, /* no output for this sequence (a prefill chunk that is not the last) */
    GM_LOGITS_LAST = 1, /* sample a token from the last new position */
    GM_LOGITS_ALL = 2,  /* logits of every new position (teacher forcing); also samples the last */
};

/* tokens[0] of a one-token entry: the token this slot sampled last (run-ahead). A slot whose last
 * sample was GM_SAMPLE_NONFINITE (common/sampling.h: NaN logits) feeds a valid id instead; gemmad
 * has ended that sequence and drops what it produces. */
#define GM_TOKEN_PREVIOUS (-1)

typedef struct gm_seq_step {
    int32_t slot;               /* sequence slot, 0..max_seqs-1, stable while it runs */
    const int32_t *tokens;      /* [n_tokens] ids to append, or {GM_TOKEN_PREVIOUS}; borrowed */
    int32_t n_tokens;
    int32_t start_pos;          /* tokens already in this sequence's KV */
    const int32_t *block_table; /* [n_blocks] physical KV block ids, logical order */
    int32_t n_blocks;           /* >= ceil((start_pos + n_tokens) / kv_block_size) */
    int32_t logits_mode;        /* GM_LOGITS_* */
    gm_sampling sampling;
} gm_seq_step;

/* True when s asks for its slot's previous sample (a lone GM_TOKEN_PREVIOUS). */
static inline bool gm_seq_step_fed(const gm_seq_step *s)
{
    return s->n_tokens == 1 && s->tokens && s->tokens[0] == GM_TOKEN_PREVIOUS;
}

#ifdef __cplusplus
}
#endif
#endif
