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
    GM_LOGITS_VERIFY = 3, /* speculative decoding: a sample at every new position (below) */
};

/* A GM_LOGITS_VERIFY entry (docs/SPECULATIVE.md) carries the sequence's last accepted token then k
 * drafted ids, n_tokens = 1 + k, at start_pos. Row j (0..k) is sampled exactly as a GM_LOGITS_LAST
 * entry of the first j + 1 of these tokens would be: the draw for position start_pos + j + 1 with the
 * counter of that position, the min_tokens mask judged at that position. The engine returns the
 * n_tokens samples (gm_step_out.verify); the coordinator keeps the drafts that equal them and the
 * first sample that differs. Such an entry has no penalties and asks for no log-probabilities
 * (ctl/check.h refuses them), and the slot's "last sample" after it is the coordinator's to tell: it
 * never sends GM_TOKEN_PREVIOUS to a slot whose last sampling entry was a verify. */

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
    const gm_stop_set *stops;   /* the ids sampling.min_tokens masks; NULL = none; borrowed */
    bool reset;                 /* the table is not an extension of the one the slot held in its last
                                 * entry (a new sequence in the slot, a block replaced by a copy):
                                 * the plan sends it whole. Also implied by start_pos == 0. */
} gm_seq_step;

/* A sampled token's log-probabilities (common/sampling.h: of the raw logits), rank 0's answer
 * for an entry whose sampling asks for them. */
typedef struct gm_token_logprobs {
    float logprob;                            /* the sampled token's */
    int32_t n_top;                            /* alternatives below: the sampling's top_logprobs */
    int32_t top_ids[GM_MAX_TOP_LOGPROBS];     /* the most likely tokens, most likely first (ties: lower id) */
    float top_logprobs[GM_MAX_TOP_LOGPROBS];  /* theirs */
} gm_token_logprobs;

/* Copy every layer's K and V of block src into block dst (copy-on-write of a shared block). */
typedef struct gm_block_copy {
    int32_t src, dst;
} gm_block_copy;

/* True when s asks for its slot's previous sample (a lone GM_TOKEN_PREVIOUS). */
static inline bool gm_seq_step_fed(const gm_seq_step *s)
{
    return s->n_tokens == 1 && s->tokens && s->tokens[0] == GM_TOKEN_PREVIOUS;
}

/* True when the token s samples must not be a stop id: fewer than min_tokens outputs precede it
 * (the token sampled goes to position start_pos + n_tokens; outputs begin at sampling.n_prompt). */
static inline bool gm_seq_step_masks_stops(const gm_seq_step *s)
{
    return s->sampling.min_tokens > 0 && s->stops && s->stops->n > 0 && s->logits_mode != GM_LOGITS_NONE &&
           (int64_t)s->start_pos + s->n_tokens - s->sampling.n_prompt < (int64_t)s->sampling.min_tokens;
}

/* True when the entry returns log-probabilities with its sample. */
static inline bool gm_seq_step_wants_logprobs(const gm_seq_step *s)
{
    return s->logits_mode != GM_LOGITS_NONE && gm_sampling_wants_logprobs(&s->sampling);
}

#ifdef __cplusplus
}
#endif
#endif
