/* slots.h - per-slot state that step plans are deltas against, on both ends.
 *
 * Every rank keeps, per sequence slot, the slot's KV block table and its
 * sampling parameters; a plan entry (control.proto SeqPlan) carries only the
 * blocks appended since the slot's last entry and its sampling when it
 * changed. The table starts over (reset) when the entry says so
 * (gm_seq_step.reset), starts at position 0, shrinks, or follows a restart or
 * a failed step. gemmad mirrors what the ranks hold with the same type
 * (without the tables themselves) to know what to send: ctl_slots_put on the
 * sender, ctl_slots_take on the receiver.
 *
 * So a caller keeps a slot's block table append-only between entries, or
 * sets reset: the scheduler sets it whenever a slot gets a new sequence (which
 * may start past position 0, at a cached prefix) and when a block of the
 * table is replaced by its copy. */
#ifndef GM_CTL_SLOTS_H
#define GM_CTL_SLOTS_H

#include <stdint.h>

#include "common/sampling.h"
#include "common/status.h"
#include "ctl/step.h"
#include "proto/control.pb-c.h"

typedef struct ctl_slots {
    int32_t n;          /* slots */
    int32_t max_blocks; /* receiver: blocks a table holds; 0 on the sender (no tables kept) */
    int32_t *len;       /* [n] blocks in the slot's table; -1 = unknown: only a reset may name the slot */
    int32_t *tables;    /* [n, max_blocks] block ids (receiver); NULL on the sender */
    gm_sampling *samp;  /* [n] the slot's sampling */
    gm_stop_set *stops; /* [n] the slot's stop set (what min_tokens masks); n = 0: none */
} ctl_slots;

/* n slots, every one unknown; max_blocks 0 keeps no tables (the sender). */
gm_status ctl_slots_init(ctl_slots *s, int32_t n, int32_t max_blocks);
void ctl_slots_free(ctl_slots *s);

/* Every slot unknown (after a restart or a failed step): the next entry naming it must reset it. */
void ctl_slots_forget(ctl_slots *s);

/* Sender: the SeqPlan for one step entry, as a delta against what the ranks
 * hold, and remember what they will hold. q's arrays point into step (the stop
 * ids into step->stops: keep it alive until q is packed); sa is where q's
 * sampling is written when it goes out (with the stop set: they change
 * together). A slot outside 0..n-1 goes out in full (reset) and is not
 * remembered: the ranks refuse it. */
void ctl_slots_put(ctl_slots *s, const gm_seq_step *step, Gemma__Control__V1__SeqPlan *q,
                   Gemma__Control__V1__Sampling *sa);

/* Receiver: apply every entry of plan p (1..n entries; the appended block ids
 * must lie in 0..kv_blocks-1, a table within max_blocks, a stop set within
 * GM_MAX_STOP_SET ids) and describe each as a whole step entry in
 * out[0..p->n_seqs): block tables and stop sets point into s, tokens into p. Entries are applied in order, so a plan that fails part way
 * leaves tables changed: the caller forgets every slot then (the coordinator
 * resends them in full). Checks of the step itself are ctl/check.h's. */
gm_status ctl_slots_take(ctl_slots *s, const Gemma__Control__V1__StepPlan *p, int64_t kv_blocks, gm_seq_step *out);

#endif
