/* engine_feed.h - run-ahead for the host-side engines (CPU, null): resolve the
 * GM_TOKEN_PREVIOUS tokens of a step (ctl/step.h: "the slot's last sample")
 * from a per-slot table, and record each step's samples into it. The CUDA
 * engine keeps the same table on the device instead. */
#ifndef GM_ENGINE_FEED_H
#define GM_ENGINE_FEED_H

#include <stdint.h>

#include "engine.h"

typedef struct gm_feed {
    int32_t max_seqs;
    int32_t *last;     /* [max_seqs] each slot's last sample; -1 = none */
    gm_seq_step *seqs; /* [max_seqs] a step's entries with -1 resolved */
    int32_t *tok;      /* [max_seqs] the resolved ids (seqs[i].tokens points here) */
    int32_t *sampled;  /* [max_seqs] a step's samples, -1 where none (broadcast buffer) */
} gm_feed;

gm_status gm_feed_init(gm_feed *f, int32_t max_seqs);
void gm_feed_free(gm_feed *f);

/* *out = seqs when no entry is {-1}; else f->seqs, a copy with each {-1}
 * replaced by its slot's last sample. GM_ERR_INVALID_ARG (ctl_check_previous)
 * when such an entry is at position 0 or its slot has no sample. Entries with
 * bad slots are left for gm_engine_check_step. */
gm_status gm_feed_resolve(gm_feed *f, const gm_seq_step *seqs, int32_t n_seqs, const gm_seq_step **out);

/* After a step: each slot's last sample becomes sampled[i] (-1 for entries
 * without logits). */
void gm_feed_record(gm_feed *f, const gm_seq_step *seqs, int32_t n_seqs, const int32_t *sampled);

#endif
