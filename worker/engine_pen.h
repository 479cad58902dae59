/* engine_pen.h - when a slot's token history may feed the penalties, on every backend.
 *
 * The penalties (common/sampling.h) count the tokens of a sequence from position 0. Each engine
 * keeps them per slot (CPU: the tokens by position; CUDA: a count table on the device, rank 0) and
 * adds every step's new tokens, the fed-back -1 ones included once resolved. That is right only
 * when a slot's entries come in order from position 0: an entry with penalties must start at 0
 * (its history starts over) or exactly where the slot's previous entry ended. The scheduler keeps
 * to that (a new, preempted-and-recomputed or restarted sequence starts at 0); a plan that does
 * not is refused before anything runs, alike on every rank. Host-side bookkeeping only. */
#ifndef GM_ENGINE_PEN_H
#define GM_ENGINE_PEN_H

#include <stdint.h>

#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gm_pen_track {
    int32_t n;
    int32_t *len; /* [n] positions in the slot's history, -1 = none to build on */
} gm_pen_track;

gm_status gm_pen_init(gm_pen_track *t, int32_t n_slots);
void gm_pen_free(gm_pen_track *t);

/* Every history unusable (after a failed step): the next entry with penalties must start at 0. */
void gm_pen_forget(gm_pen_track *t);

/* For a step ctl_check_step accepted: GM_ERR_INVALID_ARG (naming the entry) when an entry with
 * penalties neither starts at 0 nor continues its slot's history; else flags[i] = GM_PEN_* of entry i
 * and the histories advance (an entry without penalties drops its slot's). */
gm_status gm_pen_step(gm_pen_track *t, const gm_seq_step *seqs, int32_t n_seqs, uint8_t *flags);

#ifdef __cplusplus
}
#endif
#endif
