/* spec.h - speculative decoding's drafter: prompt lookup over a sequence's own tokens.
 *
 * No draft model: the k tokens proposed are those that followed the most recent earlier occurrence of
 * the sequence's last n tokens (n = SPEC_NGRAM_MAX down to 1, the longest match wins) anywhere in its
 * prompt and output. Text that copies from its input (editing, summarizing, code) or repeats itself
 * gets long runs of right guesses; free writing gets few, and costs only the verify rows
 * (docs/SPECULATIVE.md). The scheduler calls it (sched_spec.c); pure, no state. */
#ifndef GM_DAEMON_SPEC_H
#define GM_DAEMON_SPEC_H

#include <stdint.h>

#define SPEC_MAX_K 16     /* drafted tokens per step, at most (--speculative-tokens, the requests' k) */
#define SPEC_NGRAM_MAX 3  /* the longest suffix looked up */
#define SPEC_SCAN_MAX 8192 /* tokens scanned back from the end for a match, at most (a bound per step) */
#define SPEC_IDLE_PLANS 8  /* after a lookup found nothing: plans of plain decoding (with run-ahead) before
                            * the next lookup */

/* Propose up to k (<= SPEC_MAX_K) tokens to follow tok [n] into out [k]: the latest earlier occurrence,
 * within the last SPEC_SCAN_MAX tokens, of the longest suffix of tok of at most SPEC_NGRAM_MAX tokens
 * that occurs there at all; the k tokens that follow it are the draft, read on into the
 * draft itself past the end of tok (a match close to the end is a repeating text: the draft repeats
 * it). Returns k (capped), or 0 (no match, or k <= 0). */
int32_t spec_draft(const int32_t *tok, int32_t n, int32_t k, int32_t *out);

/* How many of the d drafted ids draft [d] the target's samples got [d + 1] confirm: the length of their
 * common prefix. The sequence then takes got[0 .. accepted] (the samples, the first one that differs
 * last: it is the target's own token there). */
int32_t spec_accepted(const int32_t *draft, int32_t d, const int32_t *got);

#endif
