/* bench_run.c - the run loop and per-request accounting gemma-bench's drivers share. */
#include "bench/bench_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"

double bench_now_ms(void)
{
    return gm_now_ms();
}

static void run_free(bench_run *r)
{
    free(r->reqs);
    free(r->isl);
    free(r->osl);
    free(r->arrival);
    free(r->ids);
    free(r->prompt_buf);
    bench_vec_free(&r->itl);
}

/* Start request i through the driver; a local failure ends it at once. */
static void submit_one(const bench_driver *d, bench_run *r, int64_t i)
{
    bench_req *q = &r->reqs[i];
    q->isl = r->shared_prefix + r->isl[i];
    q->osl = r->osl[i];
    int32_t rc = d->submit(d->ctx, r, i);
    r->next++;
    if (rc != 0) {
        q->done = true;
        q->error = rc;
        q->t_last = q->t_submit;
        r->done++;
        if (rc == d->code_transport)
            r->transport_failed = true;
        return;
    }
    r->in_flight++;
}

gm_status bench_run_tokens(bench_run *r, int64_t idx, int32_t n_tokens, double t)
{
    bench_req *q = &r->reqs[idx];
    if (q->done || n_tokens <= 0)
        return GM_OK;
    gm_status st = GM_OK;
    if (q->t_first == 0) {
        q->t_first = t;
    } else {
        st = bench_vec_push(&r->itl, t - q->t_last);
    }
    for (int32_t k = 1; k < n_tokens && !st; k++) /* tokens that came together: no gap */
        st = bench_vec_push(&r->itl, 0);
    if (st)
        return st;
    q->t_last = t;
    q->out_tokens += n_tokens;
    r->out_tokens += n_tokens;
    r->events++;
    return GM_OK;
}

void bench_run_finish(bench_run *r, int64_t idx, int32_t error, const char *message, int32_t prompt_tokens,
                      int64_t completion_tokens, double t)
{
    bench_req *q = &r->reqs[idx];
    if (q->done)
        return;
    q->done = true;
    if (q->t_last == 0)
        q->t_last = t;
    q->error = error;
    int c = q->error < 0 ? 0 : q->error > 127 ? 127 : q->error;
    if (q->error && !r->code_seen[c]) {
        r->code_seen[c] = true;
        fprintf(stderr, "gemma-bench: request %lld failed: %s: %s (further %s failures not shown)\n",
                (long long)idx, r->code_name(q->error), message ? message : "", r->code_name(q->error));
    }
    if (prompt_tokens > 0)
        q->isl = prompt_tokens;
    if (completion_tokens >= 0 && completion_tokens <= INT32_MAX && completion_tokens != q->out_tokens) {
        r->out_tokens += completion_tokens - q->out_tokens;
        q->out_tokens = (int32_t)completion_tokens;
    }
    r->done++;
    r->in_flight--;
}

/* Mark every unfinished request as failed with code (timeout, transport). */
static void fail_unfinished(const bench_driver *d, bench_run *r, int32_t code, bool cancel)
{
    for (int64_t i = 0; i < r->next; i++) {
        bench_req *q = &r->reqs[i];
        if (q->done)
            continue;
        if (cancel && d->cancel)
            d->cancel(d->ctx, r, i);
        q->done = true;
        q->error = code;
        if (q->t_last == 0)
            q->t_last = q->t_submit;
        r->done++;
        r->in_flight--;
    }
    for (int64_t i = r->next; i < r->n; i++) { /* never sent */
        bench_req *q = &r->reqs[i];
        q->done = true;
        q->error = code;
        r->done++;
    }
    r->next = r->n;
}

/* Allocate the run's arrays and draw its lengths and arrivals. */
static bool run_init(bench_run *r, const bench_load *l, int64_t n, double rate, uint64_t seed)
{
    r->n = n;
    r->seed = seed;
    r->shared_prefix = l->shared_prefix;
    r->reqs = calloc((size_t)n, sizeof(bench_req));
    r->isl = malloc((size_t)n * sizeof(int32_t));
    r->osl = malloc((size_t)n * sizeof(int32_t));
    r->ids = calloc((size_t)n, sizeof(uint64_t));
    if (rate > 0)
        r->arrival = malloc((size_t)n * sizeof(double));
    if (!r->reqs || !r->isl || !r->osl || !r->ids || (rate > 0 && !r->arrival)) {
        fprintf(stderr, "gemma-bench: no memory for %lld requests\n", (long long)n);
        return false;
    }
    bench_rng rng;
    bench_rng_init(&rng, seed);
    bench_draw_lengths(&rng, l->isl, l->isl_std, 0, n, r->isl);
    bench_draw_lengths(&rng, l->osl, l->osl_std, 0, n, r->osl);
    int32_t max_isl = 1;
    for (int64_t i = 0; i < n; i++)
        if (r->isl[i] > max_isl)
            max_isl = r->isl[i];
    r->prompt_buf = malloc((size_t)(l->shared_prefix + max_isl + 1) * sizeof(int32_t));
    if (!r->prompt_buf) {
        fprintf(stderr, "gemma-bench: no memory for a %d-token prompt\n", max_isl);
        return false;
    }
    if (rate > 0) {
        double t = 0;
        for (int64_t i = 0; i < n; i++) {
            t += bench_rng_exp(&rng, rate) * 1000.0;
            r->arrival[i] = t;
        }
    }
    return true;
}

bool bench_run_point(const bench_driver *d, const bench_load *l, int64_t n, int32_t conc, double rate,
                     uint64_t seed, const char *what, bench_summary *s)
{
    static uint32_t runs;
    bench_run r = {0};
    r.gen = ++runs;
    r.code_name = d->code_name;
    if (!run_init(&r, l, n, rate, seed)) {
        run_free(&r);
        return false;
    }

    double t0 = bench_now_ms(), last_report = t0;
    int64_t last_tokens = 0;
    bool ok = true;
    while (r.done < r.n) {
        double t = bench_now_ms();
        while (r.next < r.n && (conc <= 0 || r.in_flight < conc) && (rate <= 0 || r.arrival[r.next] <= t - t0)) {
            submit_one(d, &r, r.next);
            if (r.transport_failed)
                break;
        }
        if (r.transport_failed) {
            fprintf(stderr, "gemma-bench: submit failed: %s\n", d->last_error(d->ctx));
            fail_unfinished(d, &r, d->code_transport, false);
            ok = false;
            break;
        }
        if (r.done >= r.n)
            break;
        int wait = 100;
        if (rate > 0 && r.next < r.n && (conc <= 0 || r.in_flight < conc)) {
            double due = r.arrival[r.next] - (bench_now_ms() - t0);
            wait = due <= 0 ? 0 : (int)ceil(due < 100 ? due : 100);
        }
        if (r.in_flight == 0 && wait > 0 && r.next < r.n) {
            struct timespec ts = {0, (long)wait * 1000000L};
            nanosleep(&ts, NULL);
        } else if (!d->pump(d->ctx, &r, wait)) {
            fail_unfinished(d, &r, d->code_transport, false);
            ok = false;
            break;
        }
        t = bench_now_ms();
        if (l->timeout_s > 0 && t - t0 > l->timeout_s * 1000.0) {
            fprintf(stderr, "gemma-bench: %s: timeout after %g s, %lld of %lld requests unfinished\n", what,
                    l->timeout_s, (long long)(r.n - r.done), (long long)r.n);
            fail_unfinished(d, &r, d->code_timeout, true);
            break;
        }
        if (!l->quiet && t - last_report >= 1000.0) {
            fprintf(stderr, "[%7.1f s] %s: %lld/%lld done, %lld in flight, %.0f output tok/s\n", (t - t0) / 1000.0,
                    what, (long long)r.done, (long long)r.n, (long long)r.in_flight,
                    (double)(r.out_tokens - last_tokens) * 1000.0 / (t - last_report));
            last_report = t;
            last_tokens = r.out_tokens;
        }
    }
    if (s) {
        s->concurrency = conc;
        s->rate = rate;
        s->isl = l->shared_prefix + l->isl; /* what a prompt holds */
        s->osl = l->osl;
        s->isl_std = l->isl_std;
        s->osl_std = l->osl_std;
        s->stream_events = r.events;
        bench_summarize(r.reqs, r.n, r.itl.v, r.itl.n, s);
        if (l->text_prompts) /* text prompts: report the mean prompt length the server counted */
            s->isl = s->completed ? (int32_t)(s->input_tokens / s->completed) : 0;
    }
    run_free(&r);
    return ok;
}
