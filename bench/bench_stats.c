/* bench_stats.c - workload draws, percentiles and reports of gemma-bench. */
#include "bench/bench_stats.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- random draws ---- */

void bench_rng_init(bench_rng *r, uint64_t seed)
{
    r->s = seed ^ 0x6a09e667f3bcc909ull;
    r->has_spare = false;
    r->spare = 0;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t bench_rng_u64(bench_rng *r) { return splitmix64(&r->s); }

double bench_rng_uniform(bench_rng *r) { return (double)(bench_rng_u64(r) >> 11) * 0x1.0p-53; }

double bench_rng_normal(bench_rng *r)
{
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    double u1, u2;
    do
        u1 = bench_rng_uniform(r);
    while (u1 <= 0.0);
    u2 = bench_rng_uniform(r);
    double m = sqrt(-2.0 * log(u1));
    r->spare = m * sin(2.0 * M_PI * u2);
    r->has_spare = true;
    return m * cos(2.0 * M_PI * u2);
}

double bench_rng_exp(bench_rng *r, double rate)
{
    double u;
    do
        u = bench_rng_uniform(r);
    while (u <= 0.0);
    return -log(u) / rate;
}

void bench_draw_lengths(bench_rng *r, int32_t mean, double std, int32_t max_len, int64_t n, int32_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        double x = std > 0 ? (double)mean + std * bench_rng_normal(r) : (double)mean;
        x = nearbyint(x);
        if (x < 1)
            x = 1;
        if (max_len > 0 && x > max_len)
            x = max_len;
        if (x > INT32_MAX)
            x = INT32_MAX;
        out[i] = (int32_t)x;
    }
}

void bench_make_prompt(uint64_t seed, int64_t index, int32_t vocab, int32_t len, int32_t *out)
{
    if (len <= 0)
        return;
    uint64_t s = seed * 0x9e3779b97f4a7c15ull ^ ((uint64_t)index + 1) * 0xd1b54a32d192ed03ull;
    int32_t hi = vocab < 4096 ? vocab : 4096;
    uint32_t span = hi > 3 ? (uint32_t)(hi - 3) : 1u;
    out[0] = 2; /* BOS */
    for (int32_t i = 1; i < len; i++)
        out[i] = 3 + (int32_t)(splitmix64(&s) % span);
}

/* ---- vectors and percentiles ---- */

gm_status bench_vec_push(bench_vec *a, double x)
{
    if (a->n == a->cap) {
        int64_t cap = a->cap ? a->cap * 2 : 4096;
        double *v = realloc(a->v, (size_t)cap * sizeof(double));
        if (!v)
            return gm_fail(GM_ERR_NOMEM, "bench: no memory for %lld samples", (long long)cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return GM_OK;
}

void bench_vec_free(bench_vec *a)
{
    free(a->v);
    memset(a, 0, sizeof(*a));
}

void bench_dist_of(double *v, int64_t n, bench_dist *d)
{
    memset(d, 0, sizeof(*d));
    d->n = n;
    if (n <= 0)
        return;
    histo_sort(v, n);
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += v[i];
    d->mean = sum / (double)n;
    d->p50 = histo_percentile_sorted(v, n, 50);
    d->p90 = histo_percentile_sorted(v, n, 90);
    d->p99 = histo_percentile_sorted(v, n, 99);
    d->min = v[0];
    d->max = v[n - 1];
}

/* ---- summary ---- */

void bench_summarize(const bench_req *reqs, int64_t n, double *itl, int64_t n_itl, bench_summary *s)
{
    /* keep the caller's run description (concurrency, rate, isl, osl, label) */
    int32_t conc = s->concurrency, isl = s->isl, osl = s->osl;
    int64_t events = s->stream_events, d_steps = s->daemon_steps, d_pre = s->daemon_preemptions;
    double d_batch = s->daemon_mean_batch, d_step = s->daemon_step_avg_ms;
    double rate = s->rate, isl_std = s->isl_std, osl_std = s->osl_std;
    char label[sizeof(s->label)];
    memcpy(label, s->label, sizeof(label));
    memset(s, 0, sizeof(*s));
    s->concurrency = conc, s->isl = isl, s->osl = osl;
    s->stream_events = events;
    s->daemon_steps = d_steps, s->daemon_preemptions = d_pre;
    s->daemon_mean_batch = d_batch, s->daemon_step_avg_ms = d_step;
    s->rate = rate, s->isl_std = isl_std, s->osl_std = osl_std;
    memcpy(s->label, label, sizeof(label));

    s->num_requests = n;
    double *ttft = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    double *tpot = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    double *e2e = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    int64_t n_ttft = 0, n_tpot = 0, n_e2e = 0;
    double t0 = INFINITY, t1 = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        const bench_req *r = &reqs[i];
        if (r->t_submit > 0 && r->t_submit < t0)
            t0 = r->t_submit;
        double end = r->t_last > r->t_submit ? r->t_last : r->t_submit;
        if (r->done && end > t1)
            t1 = end;
        s->output_tokens += r->out_tokens;
        if (!r->done || r->error) {
            s->failed++;
            int code = r->done ? r->error : 100; /* never finished: counted as a timeout */
            s->errors[code < 0 ? 0 : code > 127 ? 127 : code]++;
            continue;
        }
        s->completed++;
        s->input_tokens += r->isl;
        if (r->out_tokens < r->osl)
            s->short_outputs++;
        if (r->t_first > 0) {
            if (ttft && tpot && e2e) {
                ttft[n_ttft++] = r->t_first - r->t_submit;
                e2e[n_e2e++] = r->t_last - r->t_submit;
                if (r->out_tokens > 1)
                    tpot[n_tpot++] = (r->t_last - r->t_first) / (double)(r->out_tokens - 1);
            }
        }
    }
    s->duration_s = t1 > t0 ? (t1 - t0) / 1000.0 : 0;
    if (s->duration_s > 0) {
        s->request_throughput = (double)s->completed / s->duration_s;
        s->output_tokens_per_s = (double)s->output_tokens / s->duration_s;
        s->total_tokens_per_s = (double)(s->input_tokens + s->output_tokens) / s->duration_s;
    }
    if (ttft && tpot && e2e) {
        bench_dist_of(ttft, n_ttft, &s->ttft_ms);
        bench_dist_of(tpot, n_tpot, &s->tpot_ms);
        bench_dist_of(e2e, n_e2e, &s->e2e_ms);
    }
    bench_dist_of(itl, n_itl, &s->itl_ms);
    s->per_user_tokens_per_s = s->tpot_ms.mean > 0 ? 1000.0 / s->tpot_ms.mean : 0;
    free(ttft);
    free(tpot);
    free(e2e);
}

/* ---- output ---- */

static double fin(double x) { return isfinite(x) ? x : 0; }

static void json_dist(FILE *f, const char *name, const bench_dist *d)
{
    fprintf(f, "  \"%s_mean\": %.6g,\n", name, fin(d->mean));
    fprintf(f, "  \"%s_p50\": %.6g,\n", name, fin(d->p50));
    fprintf(f, "  \"%s_p90\": %.6g,\n", name, fin(d->p90));
    fprintf(f, "  \"%s_p99\": %.6g,\n", name, fin(d->p99));
    fprintf(f, "  \"%s_max\": %.6g,\n", name, fin(d->max));
}

gm_status bench_write_json(FILE *f, const bench_summary *s, const char *(*name_of)(int code))
{
    fprintf(f, "{\n");
    fprintf(f, "  \"label\": \"");
    for (const char *p = s->label; *p; p++)
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            fputc(*p, f);
    fprintf(f, "\",\n");
    fprintf(f, "  \"num_requests\": %lld,\n", (long long)s->num_requests);
    fprintf(f, "  \"completed\": %lld,\n", (long long)s->completed);
    fprintf(f, "  \"failed\": %lld,\n", (long long)s->failed);
    fprintf(f, "  \"short_outputs\": %lld,\n", (long long)s->short_outputs);
    fprintf(f, "  \"concurrency\": %d,\n", s->concurrency);
    fprintf(f, "  \"rate\": %.6g,\n", fin(s->rate));
    fprintf(f, "  \"isl\": %d,\n", s->isl);
    fprintf(f, "  \"osl\": %d,\n", s->osl);
    fprintf(f, "  \"isl_std\": %.6g,\n", fin(s->isl_std));
    fprintf(f, "  \"osl_std\": %.6g,\n", fin(s->osl_std));
    fprintf(f, "  \"duration_s\": %.6g,\n", fin(s->duration_s));
    fprintf(f, "  \"input_tokens\": %lld,\n", (long long)s->input_tokens);
    fprintf(f, "  \"output_tokens\": %lld,\n", (long long)s->output_tokens);
    fprintf(f, "  \"stream_events\": %lld,\n", (long long)s->stream_events);
    fprintf(f, "  \"request_throughput\": %.6g,\n", fin(s->request_throughput));
    fprintf(f, "  \"output_tokens_per_s\": %.6g,\n", fin(s->output_tokens_per_s));
    fprintf(f, "  \"total_tokens_per_s\": %.6g,\n", fin(s->total_tokens_per_s));
    fprintf(f, "  \"per_user_tokens_per_s\": %.6g,\n", fin(s->per_user_tokens_per_s));
    json_dist(f, "ttft_ms", &s->ttft_ms);
    json_dist(f, "tpot_ms", &s->tpot_ms);
    json_dist(f, "itl_ms", &s->itl_ms);
    json_dist(f, "e2e_ms", &s->e2e_ms);
    fprintf(f, "  \"daemon_steps\": %lld,\n", (long long)s->daemon_steps);
    fprintf(f, "  \"daemon_mean_batch\": %.6g,\n", fin(s->daemon_mean_batch));
    fprintf(f, "  \"daemon_step_avg_ms\": %.6g,\n", fin(s->daemon_step_avg_ms));
    fprintf(f, "  \"daemon_preemptions\": %lld,\n", (long long)s->daemon_preemptions);
    fprintf(f, "  \"errors\": {");
    bool first = true;
    for (int c = 0; c < 128; c++) {
        if (!s->errors[c])
            continue;
        fprintf(f, "%s\"%s\": %lld", first ? "" : ", ", name_of ? name_of(c) : "error", (long long)s->errors[c]);
        first = false;
    }
    fprintf(f, "}\n}\n");
    return ferror(f) ? gm_fail(GM_ERR_IO, "bench: writing the JSON report failed") : GM_OK;
}

gm_status bench_write_json_file(const char *path, const bench_summary *s, const char *(*name_of)(int code))
{
    FILE *f = fopen(path, "w");
    if (!f)
        return gm_fail(GM_ERR_IO, "bench: cannot write '%s': %s", path, strerror(errno));
    gm_status st = bench_write_json(f, s, name_of);
    if (fclose(f) != 0 && !st)
        st = gm_fail(GM_ERR_IO, "bench: closing '%s' failed: %s", path, strerror(errno));
    if (st)
        gm_fail(st, "bench: writing '%s' failed", path);
    return st;
}

void bench_markdown_header(FILE *f)
{
    fprintf(f, "| setup | isl/osl | conc | rate | requests | req/s | out tok/s | total tok/s | TTFT p50/p99 ms "
               "| TPOT p50/p99 ms | ITL p99 ms | tok/s/user | errors |\n");
    fprintf(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
}

void bench_markdown_row(FILE *f, const bench_summary *s)
{
    char rate[32];
    if (s->rate > 0)
        snprintf(rate, sizeof(rate), "%.4g", s->rate);
    else
        snprintf(rate, sizeof(rate), "-");
    fprintf(f, "| %s | %d/%d | %d | %s | %lld | %.1f | %.0f | %.0f | %.1f / %.1f | %.2f / %.2f | %.2f | %.1f | %lld |\n",
            s->label[0] ? s->label : "-", s->isl, s->osl, s->concurrency, rate, (long long)s->num_requests,
            s->request_throughput, s->output_tokens_per_s, s->total_tokens_per_s, s->ttft_ms.p50, s->ttft_ms.p99,
            s->tpot_ms.p50, s->tpot_ms.p99, s->itl_ms.p99, s->per_user_tokens_per_s, (long long)s->failed);
}

static void print_dist(FILE *f, const char *name, const bench_dist *d)
{
    fprintf(f, "  %-10s mean %9.2f  p50 %9.2f  p90 %9.2f  p99 %9.2f  max %9.2f  (n=%lld)\n", name, d->mean, d->p50,
            d->p90, d->p99, d->max, (long long)d->n);
}

void bench_print_report(FILE *f, const bench_summary *s, const char *(*name_of)(int code))
{
    fprintf(f, "gemma-bench %s: %lld requests (%lld ok, %lld failed), isl %d osl %d, ", s->label,
            (long long)s->num_requests, (long long)s->completed, (long long)s->failed, s->isl, s->osl);
    if (s->rate > 0)
        fprintf(f, "rate %.4g req/s%s", s->rate, s->concurrency ? "" : "\n");
    if (s->concurrency)
        fprintf(f, "%sconcurrency %d\n", s->rate > 0 ? ", " : "", s->concurrency);
    if (!s->rate && !s->concurrency)
        fprintf(f, "all at once\n");
    fprintf(f, "  duration   %.3f s\n", s->duration_s);
    fprintf(f, "  requests/s %.2f\n", s->request_throughput);
    fprintf(f, "  output     %.1f tokens/s  (%lld tokens in %lld stream events)\n", s->output_tokens_per_s,
            (long long)s->output_tokens, (long long)s->stream_events);
    fprintf(f, "  total      %.1f tokens/s  (%lld input tokens)\n", s->total_tokens_per_s,
            (long long)s->input_tokens);
    fprintf(f, "  per user   %.1f tokens/s  (1000 / mean TPOT)\n", s->per_user_tokens_per_s);
    fprintf(f, "  latency (ms):\n");
    print_dist(f, "TTFT", &s->ttft_ms);
    print_dist(f, "TPOT", &s->tpot_ms);
    print_dist(f, "ITL", &s->itl_ms);
    print_dist(f, "E2E", &s->e2e_ms);
    if (s->daemon_steps)
        fprintf(f, "  daemon     %lld steps, %.1f tokens per step, step %.3f ms, %lld preemptions\n",
                (long long)s->daemon_steps, s->daemon_mean_batch, s->daemon_step_avg_ms,
                (long long)s->daemon_preemptions);
    if (s->short_outputs)
        fprintf(f, "  %lld requests ended with fewer tokens than asked\n", (long long)s->short_outputs);
    for (int c = 0; c < 128; c++)
        if (s->errors[c])
            fprintf(f, "  errors %-20s %lld\n", name_of ? name_of(c) : "", (long long)s->errors[c]);
}
