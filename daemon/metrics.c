/* metrics.c - the Prometheus set, recent-latency windows and a windowed rate (metrics.h). */
#include "daemon/metrics.h"

#include <string.h>

void met_init(gd_metrics *m)
{
    memset(m, 0, sizeof(*m));
    prom_metrics_init(&m->prom);
    histo_samples_init(&m->ttft, MET_WINDOW);
    histo_samples_init(&m->tpot, MET_WINDOW);
    histo_samples_init(&m->queue, MET_WINDOW);
    histo_samples_init(&m->step, MET_WINDOW);
    histo_samples_init(&m->step_tok, MET_WINDOW);
}

void met_free(gd_metrics *m)
{
    histo_samples_free(&m->ttft);
    histo_samples_free(&m->tpot);
    histo_samples_free(&m->queue);
    histo_samples_free(&m->step);
    histo_samples_free(&m->step_tok);
}

void met_request_done(gd_metrics *m, const met_req *r, met_outcome o, int32_t code)
{
    prom_metrics *p = &m->prom;
    switch (o) {
    case MET_ERROR:
        prom_count_failure(p, code);
        return;
    case MET_CANCELLED: /* counted from the server's cancellation counter when rendered */
        return;
    case MET_STOP:
        p->finished[PROM_FINISH_STOP]++;
        break;
    case MET_LENGTH:
        p->finished[PROM_FINISH_LENGTH]++;
        break;
    }
    histo_observe(&p->prompt_len, r->n_prompt);
    histo_observe(&p->generation_len, r->n_generated);
    histo_observe(&p->e2e, (r->t_end - r->t_arrival) / 1e3);
    if (r->t_sched > 0) {
        histo_observe(&p->queue, (r->t_sched - r->t_arrival) / 1e3);
        histo_samples_add(&m->queue, r->t_sched - r->t_arrival);
    }
    if (r->t_first > 0) {
        histo_observe(&p->ttft, (r->t_first - r->t_arrival) / 1e3);
        histo_samples_add(&m->ttft, r->t_first - r->t_arrival);
        int32_t paced = r->n_longest > 0 ? r->n_longest : r->n_generated;
        if (paced > 1) {
            double tpot = (r->t_end - r->t_first) / (paced - 1);
            histo_observe(&p->tpot, tpot / 1e3);
            histo_samples_add(&m->tpot, tpot);
        }
    }
}

void met_step_done(gd_metrics *m, double ms, int32_t n_tokens)
{
    histo_samples_add(&m->step, ms);
    histo_samples_add(&m->step_tok, ms / (n_tokens > 0 ? n_tokens : 1));
}

double met_pct(histo_samples *s, double p)
{
    return histo_samples_percentile(s, p);
}

double met_mean(const histo_samples *s)
{
    return histo_samples_mean(s);
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
