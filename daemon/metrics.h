/* metrics.h - latency windows and a token rate for the Stats RPC. */
#ifndef GM_METRICS_H
#define GM_METRICS_H

#include <stdint.h>

#define MET_WINDOW 1024

/* The last MET_WINDOW samples of one latency, in milliseconds. */
typedef struct met_ring {
    double v[MET_WINDOW];
    int32_t n, head;
} met_ring;

void met_ring_add(met_ring *r, double x);
/* p in [0, 100]; 0 when empty. Sorts a copy: call on Stats, not per token. */
double met_ring_pct(const met_ring *r, double p);
double met_ring_mean(const met_ring *r);

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

#endif
