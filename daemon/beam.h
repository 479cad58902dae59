/* beam.h - beam search bookkeeping: which W hypotheses live on after each step, which are kept finished.
 *
 * Pure: no I/O and no scheduler. The caller (daemon/beam_run.c) feeds, once per round, the most likely
 * next tokens of every live beam with their log-probabilities (log_softmax of the raw logits, the
 * workers' top_logprobs), and gets back, for each of the W beams of the next round, the beam it
 * continues (its parent) and the token it appends. Beam i's history is then parent's history + token.
 *
 * The rules (transformers' BeamSearchScorer, the convention vLLM's beam search follows too):
 *   - a candidate is (live beam, one of its top tokens), scored by the beam's cumulative log-probability
 *     plus the token's; candidates are ranked best first (ties: lower beam, then the beam's own order);
 *   - in rank order: a candidate whose token stops the output (EOS, a stop id: the caller says) becomes a
 *     finished hypothesis when its rank is below W (else it is passed over); any other candidate becomes
 *     a beam of the next round, until W are found;
 *   - a finished hypothesis scores sum / max(L, 1) ^ length_penalty, where sum is its cumulative
 *     log-probability, the stop token's included, and L its generated tokens, the stop token excluded
 *     (transformers' generated_len); the W best are kept;
 *   - early_stopping true: the search ends once W hypotheses are kept; false (transformers' heuristic):
 *     it ends once the worst kept one scores at least the best live beam's sum / (its length ^
 *     length_penalty), i.e. no live beam stopping now would displace it;
 *   - when the live beams reach max_new tokens the search ends and each becomes a hypothesis too;
 *   - the result: the n_best hypotheses by score, best first.
 * The first round has one live beam (the prompt); from the second on, W. */
#ifndef GM_BEAM_H
#define GM_BEAM_H

#include <stdbool.h>
#include <stdint.h>

#include "common/sampling.h"

#define BEAM_MAX_WIDTH 8
#define BEAM_TOP (2 * BEAM_MAX_WIDTH) /* candidates asked of each live beam: 2W */

typedef struct beam_opts {
    int32_t width;        /* W: 2..BEAM_MAX_WIDTH */
    int32_t n_best;       /* hypotheses returned: 1..W */
    float length_penalty; /* exponent of the length in the score; 1 = average log-probability */
    bool early_stopping;
    int32_t max_new;      /* generated tokens at most (>= 1) */
} beam_opts;

/* One live beam's most likely next tokens, most likely first. */
typedef struct beam_top {
    int32_t n;
    const int32_t *ids;  /* [n] */
    const float *lps;    /* [n] log-probabilities */
} beam_top;

/* A finished hypothesis (borrowed from the search until beam_destroy). */
typedef struct beam_hyp {
    int32_t *ids;  /* [n] generated tokens, a final stop token included */
    float *lps;    /* [n] their log-probabilities */
    int32_t n;
    double sum;    /* cumulative log-probability */
    double score;  /* sum / max(L, 1) ^ length_penalty */
    bool stopped;  /* ends on a stop token (else: max_new or the search ended it) */
} beam_hyp;

typedef struct beam_search beam_search;

/* NULL on bad options (gm_last_error says which) or no memory. */
beam_search *beam_new(const beam_opts *o);
void beam_destroy(beam_search **b);

/* Beams alive in the current round: 1 before the first beam_advance, then W. */
int32_t beam_live(const beam_search *b);
/* Generated tokens of every live beam so far. */
int32_t beam_length(const beam_search *b);

/* One round. tops[0..beam_live) are the live beams' candidates; is_stop says whether a token ends the
 * output. parent[0..W) and token[0..W) get the next round's beams (beam i = beam parent[i] + token[i]).
 * Returns true when the search is over (parent/token are then unset: read the result). */
bool beam_advance(beam_search *b, const beam_top *tops, bool (*is_stop)(void *arg, int32_t tok), void *arg,
                  int32_t *parent, int32_t *token);

/* After beam_advance returned true: the n_best hypotheses, best first; returns how many (>= 1 unless
 * every candidate was a passed-over stop token). */
int32_t beam_result(const beam_search *b, const beam_hyp **out);

#endif
