/* histo.h - latency distributions: a fixed-bucket histogram and a sample set.
 *
 * histo: Prometheus-style buckets (upper bounds, cumulative when rendered,
 * +Inf implied), a sum and a count; O(log buckets) per observation, no
 * allocation, so a daemon can observe every token. Percentiles are estimated
 * by linear interpolation inside the bucket that holds the rank, as
 * Prometheus's histogram_quantile() does.
 *
 * histo_samples: the values themselves, all of them (window 0, a benchmark's
 * run) or the last `window` (a daemon's recent requests), with exact
 * percentiles (linear interpolation between order statistics, numpy's
 * default). */
#ifndef GM_HISTO_H
#define GM_HISTO_H

#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HISTO_MAX_BOUNDS 40

typedef struct histo {
    double bounds[HISTO_MAX_BOUNDS];     /* [n_bounds] finite upper bounds, strictly increasing */
    int32_t n_bounds;
    uint64_t counts[HISTO_MAX_BOUNDS + 1]; /* per bucket, not cumulative; [n_bounds] is +Inf */
    double sum;
    uint64_t count;
} histo;

/* Bucket sets in seconds, shaped like vLLM's (1 ms .. 80 s for TTFT, 10 ms ..
 * 80 s per output token and so on); pass with their _N counts. */
extern const double HISTO_BOUNDS_TTFT_S[];
extern const int32_t HISTO_BOUNDS_TTFT_N;
extern const double HISTO_BOUNDS_TPOT_S[];
extern const int32_t HISTO_BOUNDS_TPOT_N;
extern const double HISTO_BOUNDS_E2E_S[];
extern const int32_t HISTO_BOUNDS_E2E_N;
/* Token counts: 1, 2, 5, 10, 20, 50 ... up to 10^6 (prompt and output lengths). */
extern const double HISTO_BOUNDS_TOKENS[];
extern const int32_t HISTO_BOUNDS_TOKENS_N;

/* Set the bounds (copied; sorted strictly increasing, finite, 1..HISTO_MAX_BOUNDS
 * of them) and clear the counts. GM_ERR_INVALID_ARG otherwise (h untouched). */
gm_status histo_init(histo *h, const double *bounds, int32_t n);
/* Clear the counts, keep the bounds. */
void histo_clear(histo *h);
/* Count one value into the first bucket whose bound is >= x. NaN is ignored. */
void histo_observe(histo *h, double x);
/* Cumulative count of buckets 0..i (i == n_bounds: everything, the +Inf bucket). */
uint64_t histo_cumulative(const histo *h, int32_t i);
/* Estimated q-quantile, q in [0, 1]: linear inside the bucket holding rank
 * q*count, the first bucket starting at 0 (or at its bound when that is <= 0);
 * a rank in the +Inf bucket returns the largest finite bound. 0 when empty. */
double histo_quantile(const histo *h, double q);
/* Add b's counts into a (same bounds, else GM_ERR_INVALID_ARG), e.g. replicas. */
gm_status histo_merge(histo *a, const histo *b);

/* Exact samples. Zero-initialise (window 0 = keep every value) or use
 * histo_samples_init. */
typedef struct histo_samples {
    double *v;        /* [cap] values; a ring of the last `window` when window > 0 (owned) */
    int64_t n, cap;   /* kept values */
    int64_t head;     /* next slot to overwrite when the ring is full */
    int64_t window;   /* 0 = unbounded */
    int64_t total;    /* values ever added */
    double *scratch;  /* [cap] sorted copy for percentiles (owned) */
} histo_samples;

/* A sample set keeping the last window values (0 = all). */
void histo_samples_init(histo_samples *s, int64_t window);
/* Add one value; GM_ERR_NOMEM when an unbounded set cannot grow (value dropped). */
gm_status histo_samples_add(histo_samples *s, double x);
void histo_samples_clear(histo_samples *s);
void histo_samples_free(histo_samples *s);

/* Summary of a distribution. */
typedef struct histo_dist {
    double mean, p50, p90, p99, min, max;
    int64_t n;
} histo_dist;

/* The p-th percentile (p in [0, 100]) of the kept values; 0 when empty.
 * Sorts a copy (O(n log n)): call when reporting, not per token. */
double histo_samples_percentile(histo_samples *s, double p);
double histo_samples_mean(const histo_samples *s);
/* mean, p50/p90/p99, min, max, n in one sort (all 0 when empty). */
void histo_samples_dist(histo_samples *s, histo_dist *d);

/* The p-th percentile of sorted v[0..n), numpy's linear interpolation. 0 when n == 0. */
double histo_percentile_sorted(const double *v, int64_t n, double p);
/* Sort v[0..n) ascending (NaNs last). */
void histo_sort(double *v, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
