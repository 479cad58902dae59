/* engine_feed.c - run-ahead token feedback for the CPU and null engines (see engine_feed.h). */
#include "engine_feed.h"

#include <stdlib.h>
#include <string.h>

gm_status gm_feed_init(gm_feed *f, int32_t max_seqs)
{
    memset(f, 0, sizeof *f);
    size_t n = (size_t)(max_seqs > 0 ? max_seqs : 1);
    f->max_seqs = (int32_t)n;
    f->last = malloc(n * sizeof *f->last);
    f->seqs = malloc(n * sizeof *f->seqs);
    f->tok = malloc(n * sizeof *f->tok);
    f->sampled = malloc(n * sizeof *f->sampled);
    if (!f->last || !f->seqs || !f->tok || !f->sampled) {
        gm_feed_free(f);
        return gm_fail(GM_ERR_NOMEM, "engine: no memory for %zu slots' last tokens", n);
    }
    for (size_t i = 0; i < n; i++)
        f->last[i] = -1;
    return GM_OK;
}

void gm_feed_free(gm_feed *f)
{
    free(f->last);
    free(f->seqs);
    free(f->tok);
    free(f->sampled);
    memset(f, 0, sizeof *f);
}

gm_status gm_feed_resolve(gm_feed *f, const gm_seq_step *seqs, int32_t n_seqs, const gm_seq_step **out)
{
    *out = seqs;
    if (!seqs || n_seqs <= 0 || n_seqs > f->max_seqs) /* nothing to resolve, or a step the check refuses */
        return GM_OK;
    int32_t i = 0;
    while (i < n_seqs && !gm_seq_step_fed(&seqs[i]))
        i++;
    if (i == n_seqs)
        return GM_OK;
    memcpy(f->seqs, seqs, (size_t)n_seqs * sizeof *seqs);
    for (; i < n_seqs; i++) {
        if (!gm_seq_step_fed(&seqs[i]))
            continue;
        int32_t slot = seqs[i].slot;
        if (slot < 0 || slot >= f->max_seqs)
            continue;
        gm_status st = ctl_check_previous(&seqs[i], i, f->last);
        if (st != GM_OK)
            return st;
        f->tok[i] = f->last[slot];
        f->seqs[i].tokens = &f->tok[i];
    }
    *out = f->seqs;
    return GM_OK;
}

void gm_feed_record(gm_feed *f, const gm_seq_step *seqs, int32_t n_seqs, const int32_t *sampled)
{
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t slot = seqs[i].slot;
        if (slot >= 0 && slot < f->max_seqs)
            f->last[slot] = seqs[i].logits_mode == GM_LOGITS_NONE ? -1
                            : sampled[i] == GM_SAMPLE_NONFINITE ? 0 /* any valid id: gemmad ends the request */
                                                                 : sampled[i];
    }
}
