/* sample.c - greedy / temperature / top-k / top-p sampling with the counter-based draw.
 *
 * Kept tokens are walked in descending probability (ties: lower id first) and
 * the draw picks the first whose cumulative mass exceeds u * kept_mass, where
 * u = gm_rng_uniform(seed, counter). Probabilities are float32 exp() values,
 * summed in double. */
#include "sample.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

typedef struct cand {
    float p; /* unnormalised probability exp((l - max) / T) */
    int32_t id;
} cand;

/* Descending p, then ascending id. */
static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* True when a ranks before b. */
static inline int cand_before(const cand *a, const cand *b)
{
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

/* Min-heap on rank (the worst kept candidate at the root). */
static void heap_down(cand *h, int64_t n, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && cand_before(&h[w], &h[l]))
            w = l;
        if (r < n && cand_before(&h[w], &h[r]))
            w = r;
        if (w == i)
            return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* True when x [n] has a NaN or +Inf, or nothing but -Inf (-Inf alone is a masked token). */
static int row_nonfinite(const float *x, int64_t n)
{
    int bad = 0;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        bad |= !(x[i] <= FLT_MAX);
        mx = x[i] > mx ? x[i] : mx;
    }
    return bad || mx == -INFINITY;
}

int32_t cpu_sample(const float *logits, int64_t vocab, const gm_sampling *s, uint64_t counter)
{
    if (vocab <= 0)
        return -1;
    if (row_nonfinite(logits, vocab))
        return GM_SAMPLE_NONFINITE;
    if (gm_sampling_is_greedy(s))
        return (int32_t)cpu_argmax(logits, vocab);
    float mx = logits[cpu_argmax(logits, vocab)];
    float invt = 1.0f / s->temperature;
    int64_t k = s->top_k > 0 && s->top_k < vocab ? s->top_k : vocab;
    cand *c = malloc((size_t)k * sizeof *c);
    if (!c) /* no memory to rank candidates: fall back to the most likely token */
        return (int32_t)cpu_argmax(logits, vocab);
    int64_t n = 0;
    for (int64_t i = 0; i < vocab; i++) {
        cand x = {expf((logits[i] - mx) * invt), (int32_t)i};
        if (x.p != x.p) /* NaN logits never win */
            x.p = 0.0f;
        if (n < k) {
            c[n++] = x;
            if (n == k && k < vocab) /* heapify once full */
                for (int64_t j = k / 2 - 1; j >= 0; j--)
                    heap_down(c, k, j);
        } else if (cand_before(&x, &c[0])) {
            c[0] = x;
            heap_down(c, k, 0);
        }
    }
    qsort(c, (size_t)n, sizeof *c, cand_cmp);
    double total = 0.0;
    for (int64_t i = 0; i < n; i++)
        total += c[i].p;
    /* smallest prefix whose (top-k renormalised) mass reaches top_p */
    int64_t keep = n;
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        double need = (double)s->top_p * total, cum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= need) {
                keep = i + 1;
                break;
            }
        }
    }
    double mass = 0.0;
    for (int64_t i = 0; i < keep; i++)
        mass += c[i].p;
    double target = (double)gm_rng_uniform(s->seed, counter) * mass, cum = 0.0;
    int32_t id = c[keep - 1].id;
    for (int64_t i = 0; i < keep; i++) {
        cum += c[i].p;
        if (cum > target) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    return id;
}

int64_t cpu_argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

void cpu_logprobs(const float *logits, int64_t vocab, int32_t n_top, double *lse, int32_t *top_ids, float *top_lps)
{
    float mx = -INFINITY;
    for (int64_t i = 0; i < vocab; i++)
        if (logits[i] > mx) /* NaN never compares greater */
            mx = logits[i];
    double sum = 0.0;
    if (isfinite(mx))
        for (int64_t i = 0; i < vocab; i++) {
            float e = expf(logits[i] - mx);
            if (e == e)
                sum += (double)e;
        }
    double z = isfinite(mx) ? (double)mx + log(sum) : (double)mx;
    *lse = z;
    if (n_top > vocab)
        n_top = (int32_t)vocab;
    int32_t n = 0; /* top_ids[0..n) sorted: larger logit first, then lower id */
    for (int64_t i = 0; i < vocab && n_top > 0; i++) {
        float x = logits[i] == logits[i] ? logits[i] : -INFINITY;
        if (n == n_top && !(x > top_lps[n - 1]))
            continue; /* ids grow: an equal logit ranks after the ones kept */
        int32_t at = n < n_top ? n++ : n - 1;
        while (at > 0 && x > top_lps[at - 1]) {
            top_lps[at] = top_lps[at - 1];
            top_ids[at] = top_ids[at - 1];
            at--;
        }
        top_lps[at] = x; /* the raw logit until the end */
        top_ids[at] = (int32_t)i;
    }
    for (int32_t k = 0; k < n; k++)
        top_lps[k] = (float)((double)top_lps[k] - z);
}

void cpu_penalize(float *logits, int64_t vocab, const int32_t *hist, int64_t n_hist, const gm_sampling *s,
                  int32_t *cnt)
{
    /* cnt[t] = 1 + the outputs that are t, for every t of the history; then each once, and back to 0 */
    for (int64_t p = 0; p < n_hist; p++) {
        int32_t t = hist[p];
        if (t < 0 || t >= vocab)
            continue;
        if (cnt[t] == 0)
            cnt[t] = 1;
        if (p >= s->n_prompt)
            cnt[t]++;
    }
    for (int64_t p = 0; p < n_hist; p++) {
        int32_t t = hist[p];
        if (t < 0 || t >= vocab || cnt[t] == 0)
            continue;
        logits[t] = gm_penalize_logit(logits[t], cnt[t] - 1, s);
        cnt[t] = 0;
    }
}

void cpu_mask_ids(float *logits, int64_t vocab, const int32_t *ids, int32_t n)
{
    for (int32_t k = 0; k < n; k++)
        if (ids[k] >= 0 && ids[k] < vocab)
            logits[ids[k]] = -INFINITY;
}
