/* check.h - the one validator of a step: every backend's engine runs it before
 * touching anything (worker/engine.c: gm_engine_check_step), so a plan that
 * reaches a worker is judged by the same rules on every rank and every backend.
 *
 * A step is valid when: it has 0..max_seqs entries, slots in 0..max_seqs-1 and
 * distinct; each entry has n_tokens >= 1 and the step at most max_tokens in
 * all; positions [start_pos, start_pos + n_tokens) lie in [0, max_context);
 * the block table covers them and every block it uses is in the pool; the
 * logits mode is known (a VERIFY entry without penalties, log-probabilities
 * or a fed-back token); the sampling is sane (temperature finite and >= 0,
 * top_k >= 0, top_p in (0, 1], penalties finite, repetition >= 0, n_prompt and
 * min_tokens >= 0, logprobs 0 or 1, top_logprobs 0..GM_MAX_TOP_LOGPROBS, at most
 * GM_MAX_STOP_SET stop ids, each in the vocabulary); and every token is in the vocabulary, except a
 * lone GM_TOKEN_PREVIOUS (ctl/step.h) at start_pos > 0, which is valid when
 * the slot has a previous sample (checked when the caller passes last[]). */
#ifndef GM_CTL_CHECK_H
#define GM_CTL_CHECK_H

#include <stdint.h>

#include "common/status.h"
#include "ctl/step.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The limits every rank checks a step against (Start makes them equal on all ranks). */
typedef struct ctl_limits {
    int32_t max_seqs;      /* entries in a step; slots are 0..max_seqs-1 */
    int32_t max_tokens;    /* tokens in a step */
    int32_t max_context;   /* positions are < max_context */
    int32_t kv_block_size; /* tokens per KV block */
    int32_t vocab_size;
    int64_t kv_blocks;     /* block ids are < kv_blocks */
} ctl_limits;

/* Slot marks for the duplicate check: linear in the step, no clearing, no
 * allocation per step. Zero-initialise; ctl_marks_free releases it. */
typedef struct ctl_marks {
    uint32_t *seen; /* [cap] the stamp of the step that last named the slot */
    int32_t cap;
    uint32_t stamp;
} ctl_marks;

void ctl_marks_free(ctl_marks *m);

/* What a valid step produces. */
typedef struct ctl_step_sums {
    int64_t tokens;      /* sum of n_tokens */
    int64_t logits_rows; /* rows of logits: 1 per LAST entry, n_tokens per ALL or VERIFY entry */
    int64_t verify_rows; /* samples of VERIFY entries: n_tokens each */
} ctl_step_sums;

/* Validate seqs[0..n_seqs) (above). last (optional, [max_seqs]): each slot's
 * previous sample, -1 = none. sums (optional) gets the totals. The first
 * problem is reported with GM_ERR_INVALID_ARG and a message naming the entry
 * and its slot; GM_ERR_NOMEM when marks cannot grow. */
gm_status ctl_check_step(const ctl_limits *l, ctl_marks *marks, const gm_seq_step *seqs, int32_t n_seqs,
                         const int32_t *last, ctl_step_sums *sums);

/* A step's block copies (ctl/step.h): at most max_seqs of them, ids in the
 * pool, src != dst, and no block written twice or both written and read by
 * the copies (so that running them in any order, or at once, gives the same
 * pool). GM_ERR_INVALID_ARG naming the copy otherwise. */
gm_status ctl_check_copies(const ctl_limits *l, const gm_block_copy *c, int32_t n);

/* The GM_TOKEN_PREVIOUS rule alone, for entry i that gm_seq_step_fed(s) holds
 * for: start_pos > 0 and, when last is given, a previous sample in the slot
 * (slot already in range). Host engines call it where they resolve the token. */
gm_status ctl_check_previous(const gm_seq_step *s, int32_t i, const int32_t *last);

#ifdef __cplusplus
}
#endif
#endif
