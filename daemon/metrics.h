/* metrics.h - what gemmad measures: the Prometheus metric set served at /metrics (http/prom.h),
 * the recent latencies the Stats RPC gives percentiles of, and a windowed token rate.
 *
 * Requests are observed once, when they end (met_request_done, from admit.c); counters the server
 * keeps anyway (tokens, steps, restarts, cancellations) and the gauges are copied into the
 * Prometheus set when it is rendered, so nothing is counted twice. */
#ifndef GM_METRICS_H
#define GM_METRICS_H

#include <stdint.h>

#include "common/histo.h"
#include "common/status.h"
#include "http/prom.h"

#define MET_WINDOW 1024 /* recent values kept for the Stats RPC's percentiles */

/* A counter's rate over the last few seconds, from one sample per second. */
#define MET_RATE_SAMPLES 8
typedef struct met_rate {
    double t[MET_RATE_SAMPLES]; /* seconds */
    int64_t v[MET_RATE_SAMPLES];
    int32_t n, head;
} met_rate;

/* Record total at time now (s); keeps at most one sample per second. */
void met_rate_tick(met_rate *r, double now, int64_t total);
/* Units per second between the oldest kept sample and (now, total). */
double met_rate_get(const met_rate *r, double now, int64_t total);

/* How a request ended. */
typedef enum met_outcome {
    MET_STOP,      /* EOS, a stop string or token */
    MET_LENGTH,    /* max_tokens or the context */
    MET_CANCELLED, /* by its client, a disconnect or shutdown */
    MET_ERROR,     /* rejected or failed: counted under its ErrorCode */
} met_outcome;

/* One ended request's times (ms, monotonic; 0 = never reached) and sizes. */
typedef struct met_req {
    double t_arrival, t_sched, t_first, t_end;
    int32_t n_prompt, n_generated; /* n_generated: summed over the request's choices (n > 1) */
    int32_t n_longest;             /* the most one choice generated (they run side by side: the time per
                                    * output token is the longest one's pace); 0 = n_generated */
} met_req;

typedef struct gd_metrics {
    prom_metrics prom;                  /* cumulative, for /metrics (seconds and tokens) */
    histo_samples ttft, tpot, queue;    /* ms, the last MET_WINDOW finished requests (Stats) */
    histo_samples step;                 /* ms, the last MET_WINDOW steps */
    histo_samples step_tok;             /* ms per token of the same steps (the step watchdog's per-token term) */
    met_rate rate;                      /* generated tokens per second */
} gd_metrics;

void met_init(gd_metrics *m);
void met_free(gd_metrics *m);

/* A request ended with outcome o (code: its ErrorCode when o is MET_ERROR). Latencies are observed
 * for requests that finished (stop or length), as vLLM does. */
void met_request_done(gd_metrics *m, const met_req *r, met_outcome o, int32_t code);
/* A step's time (ms) and how many tokens it computed. */
void met_step_done(gd_metrics *m, double ms, int32_t n_tokens);

/* Stats helpers: the p-th percentile / mean of a window (0 when empty). */
double met_pct(histo_samples *s, double p);
double met_mean(const histo_samples *s);

#endif
