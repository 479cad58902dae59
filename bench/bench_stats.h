/* bench_stats.h - the measuring half of gemma-bench: seeded workload draws,
 * per-request records, the summary (throughput, TTFT/TPOT/ITL percentiles),
 * and its JSON / Markdown / text forms. Pure functions over plain arrays, so
 * they can be tested on synthetic data without a daemon. */
#ifndef GM_BENCH_STATS_H
#define GM_BENCH_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/histo.h"
#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- seeded random draws (splitmix64; same seed, same workload) ---- */

typedef struct bench_rng {
    uint64_t s;
    double spare; /* cached second normal of the Box-Muller pair */
    bool has_spare;
} bench_rng;

void bench_rng_init(bench_rng *r, uint64_t seed);
uint64_t bench_rng_u64(bench_rng *r);
/* Uniform in [0, 1), 53 bits. */
double bench_rng_uniform(bench_rng *r);
/* Standard normal (Box-Muller). */
double bench_rng_normal(bench_rng *r);
/* Exponential with the given rate (> 0): a Poisson process's gap. */
double bench_rng_exp(bench_rng *r, double rate);

/* n lengths ~ round(Normal(mean, std)) clamped to [1, max_len] (max_len <= 0:
 * no upper bound); std 0 gives mean everywhere. out: [n] int32. */
void bench_draw_lengths(bench_rng *r, int32_t mean, double std, int32_t max_len, int64_t n, int32_t *out);

/* A synthetic prompt of len ids: BOS (2) first, then ids uniform in
 * [3, min(vocab, 4096)), drawn from (seed, index) alone, so request i gets the
 * same prompt whatever order requests are sent in. out: [len] int32. */
void bench_make_prompt(uint64_t seed, int64_t index, int32_t vocab, int32_t len, int32_t *out);

/* ---- growable double array ---- */

typedef struct bench_vec {
    double *v;
    int64_t n, cap;
} bench_vec;

gm_status bench_vec_push(bench_vec *a, double x);
void bench_vec_free(bench_vec *a);

/* Percentiles: common/histo.h (histo_sort, histo_percentile_sorted). */

/* ---- per-request record ---- */

typedef struct bench_req {
    int32_t isl;          /* prompt tokens (daemon's count when it reports one) */
    int32_t osl;          /* output tokens asked for (max_tokens) */
    int32_t out_tokens;   /* output tokens received */
    int32_t error;        /* gmc_code; 0 = finished fine */
    double t_submit;      /* ms, monotonic clock */
    double t_first;       /* ms, first token's arrival; 0 = none yet */
    double t_last;        /* ms, last token's arrival */
    bool done;
} bench_req;

/* Latency distribution of one metric. */
typedef struct bench_dist {
    double mean, p50, p90, p99, min, max;
    int64_t n;
} bench_dist;

/* Summary of a run; what --json writes. */
typedef struct bench_summary {
    int64_t num_requests; /* measured requests */
    int64_t completed;    /* finished without error */
    int64_t failed;
    int64_t short_outputs; /* finished fine with fewer tokens than asked */
    int32_t concurrency;   /* closed-loop limit, 0 = none */
    double rate;           /* Poisson requests/s, 0 = closed loop / all at once */
    int32_t isl, osl;      /* requested means */
    double isl_std, osl_std;
    double duration_s;     /* first submit -> last finish */
    int64_t input_tokens, output_tokens;
    int64_t stream_events;      /* events that carried tokens (set by the caller) */
    double request_throughput;  /* completed requests / s */
    double output_tokens_per_s;
    double total_tokens_per_s;  /* (input + output) / s */
    double per_user_tokens_per_s; /* 1000 / mean TPOT */
    bench_dist ttft_ms, tpot_ms, itl_ms, e2e_ms;
    /* the daemon's own view over the run (Stats before and after; 0 if unknown) */
    int64_t daemon_steps;        /* engine steps run */
    double daemon_mean_batch;    /* completion tokens / steps */
    double daemon_step_avg_ms;   /* its mean step time at the end */
    int64_t daemon_preemptions;
    int64_t errors[128]; /* count per gmc_code (index clamped to 127) */
    char label[64];      /* e.g. backend name for the Markdown row */
} bench_summary;

/* Build the summary from n request records and the inter-token gaps (ms) of
 * all requests (itl: [n_itl], sorted in place). */
void bench_summarize(const bench_req *reqs, int64_t n, double *itl, int64_t n_itl, bench_summary *s);

/* Fill a distribution from values (sorted in place). */
void bench_dist_of(double *v, int64_t n, bench_dist *d);

/* Write the summary as one JSON object (flat keys, one per line). name_of
 * maps an error code to its name for the "errors" object. */
gm_status bench_write_json(FILE *f, const bench_summary *s, const char *(*name_of)(int code));
/* Same, to a file path. */
gm_status bench_write_json_file(const char *path, const bench_summary *s, const char *(*name_of)(int code));

/* Markdown table header (two lines) and one row for bench/RESULTS.md. */
void bench_markdown_header(FILE *f);
void bench_markdown_row(FILE *f, const bench_summary *s);

/* Human-readable report. */
void bench_print_report(FILE *f, const bench_summary *s, const char *(*name_of)(int code));

#ifdef __cplusplus
}
#endif
#endif
