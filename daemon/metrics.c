/* metrics.c - rings of recent latencies, percentiles, a windowed rate. */
#include "daemon/metrics.h"

#include "common/histo.h"

#include <stdlib.h>
#include <string.h>

void met_ring_add(met_ring *r, double x)
{
    r->v[r->head] = x;
    r->head = (r->head + 1) % MET_WINDOW;
    if (r->n < MET_WINDOW)
        r->n++;
}

double met_ring_pct(const met_ring *r, double p)
{
    if (r->n == 0)
        return 0;
    double tmp[MET_WINDOW];
    memcpy(tmp, r->v, (size_t)r->n * sizeof(double)); /* the first n slots hold the samples */
    histo_sort(tmp, r->n);
    return histo_percentile_sorted(tmp, r->n, p);
}

double met_ring_mean(const met_ring *r)
{
    if (r->n == 0)
        return 0;
    double s = 0;
    for (int32_t i = 0; i < r->n; i++)
        s += r->v[i];
    return s / r->n;
}

void met_rate_tick(met_rate *r, double now, int64_t total)
{
    if (r->n > 0) {
        int32_t last = (r->head + MET_RATE_SAMPLES - 1) % MET_RATE_SAMPLES;
        if (now - r->t[last] < 1.0)
            return;
    }
    r->t[r->head] = now;
    r->v[r->head] = total;
    r->head = (r->head + 1) % MET_RATE_SAMPLES;
    if (r->n < MET_RATE_SAMPLES)
        r->n++;
}

double met_rate_get(const met_rate *r, double now, int64_t total)
{
    if (r->n == 0)
        return 0;
    int32_t oldest = r->n < MET_RATE_SAMPLES ? 0 : r->head;
    double dt = now - r->t[oldest];
    return dt > 1e-3 ? (double)(total - r->v[oldest]) / dt : 0;
}
