/* engine_pen.c - the slots' penalty histories, host side (see engine_pen.h). */
#include "engine_pen.h"

#include <stdlib.h>
#include <string.h>

gm_status gm_pen_init(gm_pen_track *t, int32_t n_slots)
{
    memset(t, 0, sizeof *t);
    int32_t n = n_slots > 0 ? n_slots : 1;
    t->len = malloc((size_t)n * sizeof *t->len);
    if (!t->len)
        return gm_fail(GM_ERR_NOMEM, "engine: no memory for %d slots' penalty state", (int)n);
    t->n = n;
    gm_pen_forget(t);
    return GM_OK;
}

void gm_pen_free(gm_pen_track *t)
{
    free(t->len);
    memset(t, 0, sizeof *t);
}

void gm_pen_forget(gm_pen_track *t)
{
    for (int32_t i = 0; i < t->n; i++)
        t->len[i] = -1;
}

gm_status gm_pen_step(gm_pen_track *t, const gm_seq_step *seqs, int32_t n_seqs, uint8_t *flags)
{
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (!gm_sampling_has_penalties(&s->sampling) || s->start_pos == 0)
            continue;
        if (s->slot < 0 || s->slot >= t->n || t->len[s->slot] != s->start_pos)
            return gm_fail(GM_ERR_INVALID_ARG,
                           "sequence %d (slot %d): penalties need the slot's tokens from position 0, but it starts at "
                           "%d and the slot holds %d", (int)i, (int)s->slot, (int)s->start_pos,
                           s->slot >= 0 && s->slot < t->n ? (int)t->len[s->slot] : -1);
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        uint8_t f = 0;
        flags[i] = 0;
        if (s->slot < 0 || s->slot >= t->n) /* ctl_check_step refuses these first */
            continue;
        if (gm_sampling_has_penalties(&s->sampling)) {
            f = GM_PEN_ON | (s->start_pos == 0 ? GM_PEN_RESET : 0) | (s->logits_mode != GM_LOGITS_NONE ? GM_PEN_APPLY : 0);
            t->len[s->slot] = s->start_pos + s->n_tokens;
        } else {
            t->len[s->slot] = -1;
        }
        flags[i] = f;
    }
    return GM_OK;
}
