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
