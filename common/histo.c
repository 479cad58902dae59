/* histo.c - bucketed histogram with interpolated quantiles; exact sample sets. */
#include "common/histo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const double HISTO_BOUNDS_TTFT_S[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                      1.0,   2.5,    5.0,   7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const int32_t HISTO_BOUNDS_TTFT_N = sizeof(HISTO_BOUNDS_TTFT_S) / sizeof(double);
const double HISTO_BOUNDS_TPOT_S[] = {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03,
                                      0.04,  0.05,   0.075, 0.1,    0.15, 0.2,   0.3,  0.4,   0.5,
                                      0.75,  1.0,    2.5,   5.0,    10.0, 20.0,  40.0, 80.0};
const int32_t HISTO_BOUNDS_TPOT_N = sizeof(HISTO_BOUNDS_TPOT_S) / sizeof(double);
const double HISTO_BOUNDS_E2E_S[] = {0.01, 0.025, 0.05, 0.1,  0.25, 0.5,  1.0,   1.5,   2.0,   2.5,    5.0,   10.0,
                                     15.0, 20.0,  30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const int32_t HISTO_BOUNDS_E2E_N = sizeof(HISTO_BOUNDS_E2E_S) / sizeof(double);
const double HISTO_BOUNDS_TOKENS[] = {1,     2,     5,     10,     20,     50,     100,    200,   500,
                                      1000,  2000,  5000,  10000,  20000,  50000,  100000, 200000, 500000,
                                      1000000};
const int32_t HISTO_BOUNDS_TOKENS_N = sizeof(HISTO_BOUNDS_TOKENS) / sizeof(double);

gm_status histo_init(histo *h, const double *bounds, int32_t n)
{
    if (n < 1 || n > HISTO_MAX_BOUNDS)
        return gm_fail(GM_ERR_INVALID_ARG, "histogram: %d bounds, 1..%d allowed", n, HISTO_MAX_BOUNDS);
    for (int32_t i = 0; i < n; i++) {
        if (!isfinite(bounds[i]))
            return gm_fail(GM_ERR_INVALID_ARG, "histogram: bound %d is not finite", i);
        if (i > 0 && !(bounds[i] > bounds[i - 1]))
            return gm_fail(GM_ERR_INVALID_ARG, "histogram: bounds must increase (bound %d is %g after %g)", i,
                           bounds[i], bounds[i - 1]);
    }
    memset(h, 0, sizeof(*h));
    memcpy(h->bounds, bounds, (size_t)n * sizeof(double));
    h->n_bounds = n;
    return GM_OK;
}

void histo_clear(histo *h)
{
    memset(h->counts, 0, sizeof(h->counts));
    h->sum = 0;
    h->count = 0;
}

void histo_observe(histo *h, double x)
{
    if (isnan(x))
        return;
    int32_t lo = 0, hi = h->n_bounds; /* first bound >= x, n_bounds when none */
    while (lo < hi) {
        int32_t mid = (lo + hi) / 2;
        if (h->bounds[mid] >= x)
            hi = mid;
        else
            lo = mid + 1;
    }
    h->counts[lo]++;
    h->sum += x;
    h->count++;
}

uint64_t histo_cumulative(const histo *h, int32_t i)
{
    if (i > h->n_bounds)
        i = h->n_bounds;
    uint64_t c = 0;
    for (int32_t k = 0; k <= i; k++)
        c += h->counts[k];
    return c;
}

double histo_quantile(const histo *h, double q)
{
    if (h->count == 0 || h->n_bounds == 0 || isnan(q))
        return 0;
    q = q < 0 ? 0 : q > 1 ? 1 : q;
    double rank = q * (double)h->count;
    uint64_t below = 0;
    for (int32_t i = 0; i < h->n_bounds; i++) {
        uint64_t c = h->counts[i];
        if (c > 0 && (double)(below + c) >= rank) {
            double lo = i > 0 ? h->bounds[i - 1] : (h->bounds[0] > 0 ? 0 : h->bounds[0]);
            double hi = h->bounds[i];
            double f = (rank - (double)below) / (double)c;
            return lo + (hi - lo) * (f < 0 ? 0 : f);
        }
        below += c;
    }
    return h->bounds[h->n_bounds - 1]; /* the rank lies in +Inf */
}

gm_status histo_merge(histo *a, const histo *b)
{
    if (a->n_bounds != b->n_bounds ||
        memcmp(a->bounds, b->bounds, (size_t)a->n_bounds * sizeof(double)) != 0)
        return gm_fail(GM_ERR_INVALID_ARG, "histogram: merging histograms with different bounds");
    for (int32_t i = 0; i <= a->n_bounds; i++)
        a->counts[i] += b->counts[i];
    a->sum += b->sum;
    a->count += b->count;
    return GM_OK;
}

/* ---- exact samples ---- */

void histo_samples_init(histo_samples *s, int64_t window)
{
    memset(s, 0, sizeof(*s));
    s->window = window > 0 ? window : 0;
}

static gm_status samples_grow(histo_samples *s, int64_t need)
{
    if (need <= s->cap)
        return GM_OK;
    int64_t cap = s->cap ? s->cap * 2 : 1024;
    if (s->window > 0 && cap > s->window)
        cap = s->window;
    if (cap < need)
        cap = need;
    double *v = realloc(s->v, (size_t)cap * sizeof(double));
    if (!v)
        return gm_fail(GM_ERR_NOMEM, "histogram: no memory for %lld samples", (long long)cap);
    s->v = v;
    double *sc = realloc(s->scratch, (size_t)cap * sizeof(double));
    if (!sc)
        return gm_fail(GM_ERR_NOMEM, "histogram: no memory for %lld samples", (long long)cap);
    s->scratch = sc;
    s->cap = cap;
    return GM_OK;
}

gm_status histo_samples_add(histo_samples *s, double x)
{
    if (s->window > 0 && s->n == s->window) { /* full ring: overwrite the oldest */
        s->v[s->head] = x;
        s->head = (s->head + 1) % s->window;
        s->total++;
        return GM_OK;
    }
    gm_status st = samples_grow(s, s->n + 1);
    if (st != GM_OK)
        return st;
    s->v[s->n++] = x;
    s->total++;
    return GM_OK;
}

void histo_samples_clear(histo_samples *s)
{
    s->n = s->head = s->total = 0;
}

void histo_samples_free(histo_samples *s)
{
    free(s->v);
    free(s->scratch);
    int64_t w = s->window;
    memset(s, 0, sizeof(*s));
    s->window = w;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    if (isnan(x) || isnan(y))
        return isnan(x) - isnan(y);
    return (x > y) - (x < y);
}

void histo_sort(double *v, int64_t n)
{
    if (n > 1)
        qsort(v, (size_t)n, sizeof(double), cmp_double);
}

double histo_percentile_sorted(const double *v, int64_t n, double p)
{
    if (n <= 0)
        return 0;
    if (!(p > 0))
        return v[0];
    if (p >= 100)
        return v[n - 1];
    double rank = p / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(rank);
    int64_t hi = lo + 1 < n ? lo + 1 : lo;
    double frac = rank - (double)lo;
    return v[lo] + (v[hi] - v[lo]) * frac;
}

/* The kept values, sorted, in s->scratch. */
static const double *sorted(histo_samples *s)
{
    memcpy(s->scratch, s->v, (size_t)s->n * sizeof(double));
    histo_sort(s->scratch, s->n);
    return s->scratch;
}

double histo_samples_percentile(histo_samples *s, double p)
{
    if (s->n == 0)
        return 0;
    return histo_percentile_sorted(sorted(s), s->n, p);
}

double histo_samples_mean(const histo_samples *s)
{
    if (s->n == 0)
        return 0;
    double sum = 0;
    for (int64_t i = 0; i < s->n; i++)
        sum += s->v[i];
    return sum / (double)s->n;
}

void histo_samples_dist(histo_samples *s, histo_dist *d)
{
    memset(d, 0, sizeof(*d));
    if (s->n == 0)
        return;
    const double *v = sorted(s);
    d->n = s->n;
    d->mean = histo_samples_mean(s);
    d->p50 = histo_percentile_sorted(v, s->n, 50);
    d->p90 = histo_percentile_sorted(v, s->n, 90);
    d->p99 = histo_percentile_sorted(v, s->n, 99);
    d->min = v[0];
    d->max = v[s->n - 1];
}
