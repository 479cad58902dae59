/* beam.c - beam search bookkeeping (see beam.h for the rules). */
#include "daemon/beam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

typedef struct cand {
    double sum;    /* the beam's cumulative log-probability + the token's */
    float lp;
    int32_t beam, rank, tok; /* rank: place in the beam's own list */
} cand;

struct beam_search {
    beam_opts o;
    int32_t n_live, len;     /* live beams, their generated tokens */
    double sum[BEAM_MAX_WIDTH];
    int32_t *hist[2];        /* [2][W * max_new] generated ids of each live beam: current, next */
    float *hlp[2];           /* [2][W * max_new] their log-probabilities */
    int cur;
    beam_hyp hyp[BEAM_MAX_WIDTH + 1]; /* kept hypotheses (one spare while inserting) */
    int32_t n_hyp;
    bool done;
    beam_hyp *order[BEAM_MAX_WIDTH]; /* the result, best first */
    int32_t n_order;
    cand *cands;             /* [W * BEAM_TOP] scratch */
};

beam_search *beam_new(const beam_opts *o)
{
    if (o->width < 2 || o->width > BEAM_MAX_WIDTH || o->n_best < 1 || o->n_best > o->width || o->max_new < 1 ||
        !isfinite(o->length_penalty)) {
        gm_fail(GM_ERR_INVALID_ARG, "beam search: width %d (2..%d), n %d (1..width), max_new %d, length_penalty %g",
                o->width, BEAM_MAX_WIDTH, o->n_best, o->max_new, (double)o->length_penalty);
        return NULL;
    }
    beam_search *b = calloc(1, sizeof *b);
    if (!b)
        goto nomem;
    b->o = *o;
    b->n_live = 1;
    size_t per = (size_t)o->width * (size_t)o->max_new;
    bool ok = true;
    for (int k = 0; k < 2; k++) {
        b->hist[k] = malloc(per * sizeof(int32_t));
        b->hlp[k] = malloc(per * sizeof(float));
        ok = ok && b->hist[k] && b->hlp[k];
    }
    for (int k = 0; k <= BEAM_MAX_WIDTH && ok; k++) {
        b->hyp[k].ids = malloc((size_t)o->max_new * sizeof(int32_t));
        b->hyp[k].lps = malloc((size_t)o->max_new * sizeof(float));
        ok = b->hyp[k].ids && b->hyp[k].lps;
    }
    b->cands = malloc((size_t)o->width * BEAM_TOP * sizeof(cand));
    if (ok && b->cands)
        return b;
    beam_destroy(&b);
nomem:
    gm_fail(GM_ERR_NOMEM, "beam search: out of memory for %d beams of %d tokens", o->width, o->max_new);
    return NULL;
}

void beam_destroy(beam_search **pb)
{
    if (!pb || !*pb)
        return;
    beam_search *b = *pb;
    for (int k = 0; k < 2; k++)
        free(b->hist[k]), free(b->hlp[k]);
    for (int k = 0; k <= BEAM_MAX_WIDTH; k++)
        free(b->hyp[k].ids), free(b->hyp[k].lps);
    free(b->cands);
    free(b);
    *pb = NULL;
}

int32_t beam_live(const beam_search *b) { return b->n_live; }
int32_t beam_length(const beam_search *b) { return b->len; }

/* Best first; ties: lower beam, then the beam's own order. */
static int cand_cmp(const void *pa, const void *pb)
{
    const cand *a = pa, *c = pb;
    if (a->sum != c->sum)
        return a->sum > c->sum ? -1 : 1;
    if (a->beam != c->beam)
        return a->beam < c->beam ? -1 : 1;
    return a->rank < c->rank ? -1 : a->rank > c->rank;
}

static double hyp_score(const beam_search *b, double sum, int32_t gen_len)
{
    return sum / pow(gen_len > 1 ? (double)gen_len : 1.0, (double)b->o.length_penalty);
}

/* The kept hypothesis with the lowest score (-1 when none). */
static int32_t worst_hyp(const beam_search *b)
{
    int32_t w = -1;
    for (int32_t k = 0; k < b->n_hyp; k++)
        if (w < 0 || b->hyp[k].score < b->hyp[w].score)
            w = k;
    return w;
}

/* Keep beam `beam`'s history + (tok, lp) (tok < 0: nothing appended) as a hypothesis if it is among the W
 * best. gen_len is the L of its score. */
static void add_hyp(beam_search *b, int32_t beam, int32_t tok, float lp, double sum, int32_t gen_len, bool stopped)
{
    double score = hyp_score(b, sum, gen_len);
    if (b->n_hyp == b->o.width) {
        int32_t w = worst_hyp(b);
        if (score <= b->hyp[w].score)
            return;
        beam_hyp t = b->hyp[w]; /* recycle the worst one's buffers */
        b->hyp[w] = b->hyp[b->n_hyp - 1];
        b->hyp[b->n_hyp - 1] = t;
        b->n_hyp--;
    }
    beam_hyp *h = &b->hyp[b->n_hyp++];
    const int32_t *src = b->hist[b->cur] + (size_t)beam * (size_t)b->o.max_new;
    const float *slp = b->hlp[b->cur] + (size_t)beam * (size_t)b->o.max_new;
    memcpy(h->ids, src, (size_t)b->len * sizeof(int32_t));
    memcpy(h->lps, slp, (size_t)b->len * sizeof(float));
    h->n = b->len;
    if (tok >= 0) {
        h->ids[h->n] = tok;
        h->lps[h->n++] = lp;
    }
    h->sum = sum;
    h->score = score;
    h->stopped = stopped;
}

static int hyp_cmp(const void *pa, const void *pb)
{
    const beam_hyp *a = *(beam_hyp *const *)pa, *c = *(beam_hyp *const *)pb;
    return a->score > c->score ? -1 : a->score < c->score;
}

static void finish(beam_search *b)
{
    b->done = true;
    for (int32_t k = 0; k < b->n_hyp; k++)
        b->order[k] = &b->hyp[k];
    qsort(b->order, (size_t)b->n_hyp, sizeof b->order[0], hyp_cmp);
    b->n_order = b->n_hyp < b->o.n_best ? b->n_hyp : b->o.n_best;
}

bool beam_advance(beam_search *b, const beam_top *tops, bool (*is_stop)(void *arg, int32_t tok), void *arg,
                  int32_t *parent, int32_t *token)
{
    if (b->done)
        return true;
    int32_t W = b->o.width, n = 0;
    for (int32_t i = 0; i < b->n_live; i++)
        for (int32_t k = 0; k < tops[i].n && k < BEAM_TOP; k++) {
            if (!isfinite(b->sum[i]) || !isfinite(tops[i].lps[k]) || tops[i].ids[k] < 0)
                continue;
            b->cands[n++] = (cand){b->sum[i] + (double)tops[i].lps[k], tops[i].lps[k], i, k, tops[i].ids[k]};
        }
    qsort(b->cands, (size_t)n, sizeof(cand), cand_cmp);
    int nxt = 1 - b->cur;
    size_t M = (size_t)b->o.max_new;
    int32_t n_new = 0;
    double new_sum[BEAM_MAX_WIDTH];
    for (int32_t r = 0; r < n && n_new < W; r++) {
        const cand *c = &b->cands[r];
        if (is_stop(arg, c->tok)) {
            if (r < W) /* a stop token of the first W candidates ends a hypothesis; later ones are passed over */
                add_hyp(b, c->beam, c->tok, c->lp, c->sum, b->len, true);
            continue;
        }
        parent[n_new] = c->beam;
        token[n_new] = c->tok;
        new_sum[n_new] = c->sum;
        int32_t *dst = b->hist[nxt] + (size_t)n_new * M;
        float *dlp = b->hlp[nxt] + (size_t)n_new * M;
        memcpy(dst, b->hist[b->cur] + (size_t)c->beam * M, (size_t)b->len * sizeof(int32_t));
        memcpy(dlp, b->hlp[b->cur] + (size_t)c->beam * M, (size_t)b->len * sizeof(float));
        dst[b->len] = c->tok;
        dlp[b->len] = c->lp;
        n_new++;
    }
    /* fewer than W continuations (a tiny vocabulary, or many stop ids): the rest are dead copies of the best,
     * with a sum of -inf, never chosen again and never kept */
    for (int32_t i = n_new; i < W; i++) {
        int32_t from = n_new > 0 ? 0 : -1;
        parent[i] = from >= 0 ? parent[from] : 0;
        token[i] = from >= 0 ? token[from] : 0;
        new_sum[i] = -INFINITY;
        memcpy(b->hist[nxt] + (size_t)i * M, b->hist[nxt], (size_t)(b->len + 1) * sizeof(int32_t));
        memcpy(b->hlp[nxt] + (size_t)i * M, b->hlp[nxt], (size_t)(b->len + 1) * sizeof(float));
    }
    if (n_new == 0) { /* nothing lives on */
        finish(b);
        return true;
    }
    b->cur = nxt;
    b->len++;
    b->n_live = W;
    memcpy(b->sum, new_sum, sizeof new_sum);
    double best = new_sum[0]; /* candidates were ranked: the first continuation is the best live beam */
    if (b->n_hyp == W) {
        double worst = b->hyp[worst_hyp(b)].score;
        if (b->o.early_stopping || worst >= hyp_score(b, best, b->len)) {
            finish(b);
            return true;
        }
    }
    if (b->len >= b->o.max_new) { /* out of room: every live beam is a hypothesis */
        for (int32_t i = 0; i < W; i++)
            if (isfinite(b->sum[i]))
                add_hyp(b, i, -1, 0.0f, b->sum[i], b->len, false);
        finish(b);
        return true;
    }
    return false;
}

int32_t beam_result(const beam_search *b, const beam_hyp **out)
{
    if (!b->done)
        return 0;
    for (int32_t k = 0; k < b->n_order; k++)
        out[k] = b->order[k];
    return b->n_order;
}
