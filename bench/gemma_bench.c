/* gemma_bench.c - gemma-bench: a serving load generator for gemmad.
 *
 * One thread drives every stream: a few gmc_client connections (DEALER
 * sockets), gmc_submit to start requests, gmc_poll to collect their streamed
 * tokens. Arrivals are all at once, closed loop (--concurrency) or Poisson
 * (--rate). Timings are taken on this side: TTFT from submit to the first
 * token's arrival, TPOT per request over the tokens after the first, ITL over
 * every gap between consecutive tokens of a stream. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/args.h"
#include "bench/bench_stats.h"
#include "client/gemma_client.h"

#define BENCH_MAX_CONN 64
#define BENCH_MAX_SWEEP 64
#define BENCH_EVENTS 8192

_Static_assert(sizeof(void *) >= 8, "request tags (run << 32 | index) need 64-bit pointers");

typedef struct bench_opts {
    const char *endpoint;
    int32_t isl, osl;
    int32_t shared_prefix; /* every synthetic prompt starts with these same ids (0 = none) */
    double isl_std, osl_std;
    int32_t vocab;
    const char *prompts_file;
    int64_t num_requests; /* 0: derived */
    int32_t concurrency;  /* 0: all at once (or unlimited with --rate) */
    double rate;          /* requests/s, 0 = closed loop */
    int64_t warmup;
    uint64_t seed;
    const char *json_path;
    bool markdown;
    const char *plot_path;
    int32_t sweep[BENCH_MAX_SWEEP];
    int n_sweep;
    int32_t connections;
    bool allow_errors;
    bool ignore_eos;
    double timeout_s; /* per run; 0 = none */
    int connect_timeout_ms;
    const char *server_key, *client_key; /* CurveZMQ key files, or NULL */
    bool quiet;
    const char *label;
} bench_opts;

/* The workload: prompts as ids (synthetic) or text lines. */
typedef struct bench_work {
    char **lines; /* [n_lines] prompts from --prompts, owned */
    int64_t n_lines;
    int32_t *prompt_buf; /* [max isl] scratch for a synthetic prompt */
} bench_work;

typedef struct bench_ctx {
    bench_opts o;
    bench_work w;
    gmc_client *conn[BENCH_MAX_CONN];
    int n_conn;
    gmc_event ev[BENCH_EVENTS];
} bench_ctx;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const char *code_name(int code) { return gmc_code_name((gmc_code)code); }

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-bench [options]\n"
            "Drives gemmad with synthetic or file prompts through the client library and reports\n"
            "throughput (requests/s, output and total tokens/s) and latency (TTFT, TPOT, ITL).\n\n"
            "workload:\n"
            "  --endpoint E         gemmad address (default tcp://127.0.0.1:5555)\n"
            "  --isl N --osl N      input / output tokens per request (default 128 / 128); prompts are\n"
            "                       random ids (BOS first, ids in [3, min(vocab, 4096))) and outputs are\n"
            "                       forced to osl tokens (ignore_eos, max_tokens = osl)\n"
            "  --isl-std S --osl-std S  draw lengths from Normal(N, S), rounded, at least 1 (default 0)\n"
            "  --shared-prefix N    every prompt starts with the same N ids (BOS first: a system prompt),\n"
            "                       then isl ids of its own (default 0); the prefix cache's workload\n"
            "  --vocab N            vocabulary size for prompt ids (default 256000)\n"
            "  --prompts FILE       text prompts, one per line (used in turn); max_tokens = osl\n"
            "  --stop-at-eos        let generations end at EOS (default: forced to osl)\n"
            "  --num-requests N     measured requests (default: 4 x concurrency, at least 32; or 100)\n"
            "  --concurrency N      closed loop: at most N requests in flight (default: all at once)\n"
            "  --rate R             open loop: Poisson arrivals at R requests/s (with --concurrency: a cap)\n"
            "  --warmup N           requests run first and not measured (default 0)\n"
            "  --seed N             seed of lengths, prompts and arrivals (default 0)\n"
            "  --connections N      client connections, requests spread round robin (default 1)\n"
            "  --timeout S          give up on a run after S seconds; unfinished requests fail (default none)\n"
            "  --connect-timeout MS wait this long for gemmad's health answer (default 10000)\n"
            "  --server-key F       CurveZMQ: the server's public key file NAME.key\n"
            "  --client-key F       CurveZMQ: this client's NAME.key_secret\n"
            "output:\n"
            "  --json FILE          write the results as JSON (a list of objects with --sweep)\n"
            "  --markdown           print a Markdown table row for bench/RESULTS.md\n"
            "  --label TEXT         setup name in the reports (default: the daemon's backend)\n"
            "  --sweep LIST         run once per concurrency in LIST, e.g. 1,8,64,256,1000\n"
            "  --plot FILE.png      draw output tokens/s against p99 TPOT and per-user tokens/s (gnuplot)\n"
            "  --allow-errors       exit 0 even if requests failed\n"
            "  --quiet              no progress on stderr\n"
            "  --help               this text\n"
            "Options take their value as --opt VALUE or --opt=VALUE.\n"
            "exit status: 0 ok, 1 some request failed, 2 bad arguments, 3 cannot reach gemmad or a\n"
            "transport failure.\n");
}

/* ---- argument parsing ---- */

static gm_status parse_sweep(void *ctx, const char *s)
{
    bench_opts *o = ctx;
    o->n_sweep = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > 1000000 || (*end && *end != ','))
            return gm_fail(GM_ERR_INVALID_ARG, "expected a comma-separated list of concurrencies >= 1");
        if (o->n_sweep == BENCH_MAX_SWEEP)
            return gm_fail(GM_ERR_INVALID_ARG, "at most %d points", BENCH_MAX_SWEEP);
        o->sweep[o->n_sweep++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (!o->n_sweep)
        return gm_fail(GM_ERR_INVALID_ARG, "empty list");
    return GM_OK;
}

/* 0 ok, 1 --help printed, 2 bad arguments. */
static int parse_args(int argc, char **argv, bench_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->endpoint = "tcp://127.0.0.1:5555";
    o->isl = o->osl = 128;
    o->vocab = 256000;
    o->connections = 1;
    o->ignore_eos = true;
    o->connect_timeout_ms = 10000;
    bool stop_at_eos = false;
    int32_t connect_timeout = o->connect_timeout_ms;
    args_opt opts[] = {
        {"endpoint", ARGS_STRING, &o->endpoint},
        {"isl", ARGS_INT, &o->isl, 1, 1 << 24},
        {"osl", ARGS_INT, &o->osl, 1, 1 << 24},
        {"isl-std", ARGS_DOUBLE, &o->isl_std, 0, 1e12},
        {"shared-prefix", ARGS_INT, &o->shared_prefix, 0, 1 << 24},
        {"osl-std", ARGS_DOUBLE, &o->osl_std, 0, 1e12},
        {"vocab", ARGS_INT, &o->vocab, 4, INT32_MAX},
        {"prompts", ARGS_STRING, &o->prompts_file},
        {"num-requests", ARGS_INT64, &o->num_requests, 1, 100000000},
        {"concurrency", ARGS_INT, &o->concurrency, 1, 1000000},
        {"rate", ARGS_DOUBLE, &o->rate, 1e-9, 1e12},
        {"warmup", ARGS_INT64, &o->warmup, 0, 100000000},
        {"seed", ARGS_UINT64, &o->seed},
        {"connections", ARGS_INT, &o->connections, 1, BENCH_MAX_CONN},
        {"timeout", ARGS_DOUBLE, &o->timeout_s, 0, 1e12},
        {"connect-timeout", ARGS_INT, &connect_timeout, 1, INT32_MAX},
        {"server-key", ARGS_STRING, &o->server_key},
        {"client-key", ARGS_STRING, &o->client_key},
        {"json", ARGS_STRING, &o->json_path},
        {"plot", ARGS_STRING, &o->plot_path},
        {"label", ARGS_STRING, &o->label},
        {"sweep", ARGS_CALL, .call = parse_sweep, .ctx = o},
        {"markdown", ARGS_FLAG, &o->markdown},
        {"allow-errors", ARGS_FLAG, &o->allow_errors},
        {"stop-at-eos", ARGS_FLAG, &stop_at_eos},
        {"quiet", ARGS_FLAG, &o->quiet},
        {NULL},
    };
    args_spec spec = {"gemma-bench", opts};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        usage(stdout);
        return 1;
    }
    if (rc != ARGS_OK)
        return 2;
    o->ignore_eos = !stop_at_eos;
    o->connect_timeout_ms = connect_timeout;
    if (o->n_sweep && o->concurrency) {
        fprintf(stderr, "gemma-bench: --sweep and --concurrency exclude each other\n");
        return 2;
    }
    return 0;
}

/* ---- prompts file ---- */

static gm_status load_prompts(const char *path, bench_work *w)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return gm_fail(GM_ERR_IO, "cannot open --prompts '%s': %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t lcap = 0;
    gm_status st = GM_OK;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0)
            continue;
        if (w->n_lines == lcap) {
            lcap = lcap ? lcap * 2 : 256;
            char **nl = realloc(w->lines, (size_t)lcap * sizeof(char *));
            if (!nl) {
                st = gm_fail(GM_ERR_NOMEM, "no memory for the prompts of '%s'", path);
                break;
            }
            w->lines = nl;
        }
        if (!(w->lines[w->n_lines] = strdup(line))) {
            st = gm_fail(GM_ERR_NOMEM, "no memory for the prompts of '%s'", path);
            break;
        }
        w->n_lines++;
    }
    free(line);
    fclose(f);
    if (!st && w->n_lines == 0)
        st = gm_fail(GM_ERR_INVALID_ARG, "--prompts '%s' has no non-empty line", path);
    return st;
}

/* ---- one run ---- */

typedef struct run_state {
    bench_req *reqs;   /* [n] */
    int32_t *isl;      /* [n] drawn prompt lengths */
    int32_t *osl;      /* [n] drawn output lengths */
    double *arrival;   /* [n] Poisson arrival offsets (ms) or NULL */
    uint64_t *ids;     /* [n] request ids the library gave */
    int64_t n, next, done, in_flight;
    bench_vec itl;     /* ms gaps between consecutive tokens of a stream */
    int64_t out_tokens, events;
    uint64_t seed;
    bool transport_failed;
    uint32_t gen;        /* run number, in every request's user pointer: late events of an
                            earlier run (cancelled on timeout) are recognised and dropped */
    bool code_seen[128]; /* first failure of each code is printed */
} run_state;

static void run_free(run_state *r)
{
    free(r->reqs);
    free(r->isl);
    free(r->osl);
    free(r->arrival);
    free(r->ids);
    bench_vec_free(&r->itl);
}

/* Start request i on connection i % n_conn; a local failure ends it at once. */
static void submit_one(bench_ctx *b, run_state *r, int64_t i)
{
    const bench_opts *o = &b->o;
    bench_req *q = &r->reqs[i];
    gmc_params p;
    gmc_params_init(&p);
    int32_t np = o->shared_prefix;
    if (b->w.n_lines) {
        p.prompt = b->w.lines[i % b->w.n_lines];
    } else if (np > 0) { /* the prefix (from --seed, index -1: the same for every request and run, warm-up
                            * included), then isl ids drawn for request i */
        int32_t *buf = b->w.prompt_buf;
        bench_make_prompt(o->seed, -1, o->vocab, np, buf);
        int32_t last = buf[np - 1];
        bench_make_prompt(r->seed, i, o->vocab, r->isl[i] + 1, buf + np - 1); /* its BOS lands on ... */
        buf[np - 1] = last;                                                   /* ... the prefix's last id */
        p.prompt_ids = buf;
        p.n_prompt_ids = np + r->isl[i];
    } else {
        bench_make_prompt(r->seed, i, o->vocab, r->isl[i], b->w.prompt_buf);
        p.prompt_ids = b->w.prompt_buf;
        p.n_prompt_ids = r->isl[i];
    }
    p.max_tokens = r->osl[i];
    p.ignore_eos = o->ignore_eos;
    p.seed = r->seed + (uint64_t)i;
    q->isl = np + r->isl[i];
    q->osl = r->osl[i];
    q->t_submit = now_ms();
    uintptr_t tag = ((uintptr_t)r->gen << 32) | (uintptr_t)(i + 1);
    gmc_code rc = gmc_submit(b->conn[i % b->n_conn], &p, (void *)tag, &r->ids[i]);
    r->next++;
    if (rc != GMC_OK) {
        q->done = true;
        q->error = rc;
        q->t_last = q->t_submit;
        r->done++;
        if (rc == GMC_ERR_TRANSPORT)
            r->transport_failed = true;
        return;
    }
    r->in_flight++;
}

/* Account one event received at time t. */
static gm_status on_event(run_state *r, const gmc_event *ev, double t)
{
    uintptr_t tag = (uintptr_t)ev->user;
    int64_t idx = (int64_t)(tag & 0xffffffffu) - 1;
    if ((uint32_t)(tag >> 32) != r->gen || idx < 0 || idx >= r->n)
        return GM_OK; /* a late event of an earlier run */
    bench_req *q = &r->reqs[idx];
    if (q->done)
        return GM_OK;
    if (ev->n_tokens > 0) {
        gm_status st = GM_OK;
        if (q->t_first == 0) {
            q->t_first = t;
        } else {
            st = bench_vec_push(&r->itl, t - q->t_last);
        }
        for (int32_t k = 1; k < ev->n_tokens && !st; k++) /* tokens that came together: no gap */
            st = bench_vec_push(&r->itl, 0);
        if (st)
            return st;
        q->t_last = t;
        q->out_tokens += ev->n_tokens;
        r->out_tokens += ev->n_tokens;
        r->events++;
    }
    if (ev->finished) {
        q->done = true;
        if (q->t_last == 0)
            q->t_last = t;
        if (ev->finish_reason == GMC_FINISH_ERROR)
            q->error = ev->error ? ev->error : GMC_ERR_INTERNAL;
        else if (ev->finish_reason == GMC_FINISH_CANCELLED)
            q->error = ev->error ? ev->error : GMC_ERR_CANCELLED;
        else if (ev->error)
            q->error = ev->error;
        int c = q->error < 0 ? 0 : q->error > 127 ? 127 : q->error;
        if (q->error && !r->code_seen[c]) {
            r->code_seen[c] = true;
            fprintf(stderr, "gemma-bench: request %lld failed: %s: %s (further %s failures not shown)\n",
                    (long long)idx, gmc_code_name((gmc_code)q->error), ev->error_message ? ev->error_message : "",
                    gmc_code_name((gmc_code)q->error));
        }
        if (ev->usage.prompt_tokens > 0)
            q->isl = ev->usage.prompt_tokens;
        r->done++;
        r->in_flight--;
    }
    return GM_OK;
}

/* Wait up to timeout_ms for events on any connection and account them.
 * Returns false on a transport failure (printed). */
static bool pump(bench_ctx *b, run_state *r, int timeout_ms)
{
    int wait = timeout_ms;
    if (b->n_conn > 1) {
        bool pending = false;
        for (int c = 0; c < b->n_conn; c++)
            pending |= gmc_pending(b->conn[c]) > 0;
        if (!pending) {
            zmq_pollitem_t items[BENCH_MAX_CONN];
            for (int c = 0; c < b->n_conn; c++)
                items[c] = (zmq_pollitem_t){gmc_socket(b->conn[c]), 0, ZMQ_POLLIN, 0};
            if (zmq_poll(items, b->n_conn, wait) < 0 && errno != EINTR) {
                fprintf(stderr, "gemma-bench: zmq_poll: %s\n", zmq_strerror(errno));
                return false;
            }
        }
        wait = 0;
    }
    for (int c = 0; c < b->n_conn; c++) {
        int got = gmc_poll(b->conn[c], b->ev, BENCH_EVENTS, wait);
        if (got < 0) {
            fprintf(stderr, "gemma-bench: connection %d: %s (%s)\n", c, gmc_code_name((gmc_code)-got),
                    gmc_last_error(b->conn[c]));
            return false;
        }
        double t = now_ms();
        for (int k = 0; k < got; k++) {
            gm_status st = on_event(r, &b->ev[k], t);
            if (st) {
                fprintf(stderr, "gemma-bench: %s\n", gm_last_error());
                return false;
            }
        }
    }
    return true;
}

/* Mark every unfinished request as failed with code (timeout, transport). */
static void fail_unfinished(bench_ctx *b, run_state *r, int code, bool cancel)
{
    for (int64_t i = 0; i < r->next; i++) {
        bench_req *q = &r->reqs[i];
        if (q->done)
            continue;
        if (cancel)
            (void)gmc_cancel(b->conn[i % b->n_conn], r->ids[i]);
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

/* Run n requests at concurrency conc (0 = unlimited) and rate (0 = closed
 * loop); fills s. Returns false on a transport failure. */
static bool run_point(bench_ctx *b, int64_t n, int32_t conc, double rate, uint64_t seed, const char *what,
                      bench_summary *s)
{
    const bench_opts *o = &b->o;
    static uint32_t runs;
    run_state r = {0};
    r.gen = ++runs;
    r.n = n;
    r.seed = seed;
    r.reqs = calloc((size_t)n, sizeof(bench_req));
    r.isl = malloc((size_t)n * sizeof(int32_t));
    r.osl = malloc((size_t)n * sizeof(int32_t));
    r.ids = calloc((size_t)n, sizeof(uint64_t));
    if (rate > 0)
        r.arrival = malloc((size_t)n * sizeof(double));
    if (!r.reqs || !r.isl || !r.osl || !r.ids || (rate > 0 && !r.arrival)) {
        fprintf(stderr, "gemma-bench: no memory for %lld requests\n", (long long)n);
        run_free(&r);
        return false;
    }
    bench_rng rng;
    bench_rng_init(&rng, seed);
    bench_draw_lengths(&rng, o->isl, o->isl_std, 0, n, r.isl);
    bench_draw_lengths(&rng, o->osl, o->osl_std, 0, n, r.osl);
    int32_t max_isl = 1;
    for (int64_t i = 0; i < n; i++)
        if (r.isl[i] > max_isl)
            max_isl = r.isl[i];
    free(b->w.prompt_buf);
    b->w.prompt_buf = malloc((size_t)(max_isl + o->shared_prefix + 1) * sizeof(int32_t));
    if (!b->w.prompt_buf) {
        fprintf(stderr, "gemma-bench: no memory for a %d-token prompt\n", max_isl);
        run_free(&r);
        return false;
    }
    if (rate > 0) {
        double t = 0;
        for (int64_t i = 0; i < n; i++) {
            t += bench_rng_exp(&rng, rate) * 1000.0;
            r.arrival[i] = t;
        }
    }

    double t0 = now_ms(), last_report = t0;
    int64_t last_tokens = 0;
    bool ok = true;
    while (r.done < r.n) {
        double t = now_ms();
        while (r.next < r.n && (conc <= 0 || r.in_flight < conc) && (rate <= 0 || r.arrival[r.next] <= t - t0)) {
            submit_one(b, &r, r.next);
            if (r.transport_failed)
                break;
        }
        if (r.transport_failed) {
            fprintf(stderr, "gemma-bench: submit failed: %s\n", gmc_last_error(b->conn[0]));
            fail_unfinished(b, &r, GMC_ERR_TRANSPORT, false);
            ok = false;
            break;
        }
        if (r.done >= r.n)
            break;
        int wait = 100;
        if (rate > 0 && r.next < r.n && (conc <= 0 || r.in_flight < conc)) {
            double due = r.arrival[r.next] - (now_ms() - t0);
            wait = due <= 0 ? 0 : (int)ceil(due < 100 ? due : 100);
        }
        if (r.in_flight == 0 && wait > 0 && r.next < r.n) {
            struct timespec ts = {0, (long)wait * 1000000L};
            nanosleep(&ts, NULL);
        } else if (!pump(b, &r, wait)) {
            fail_unfinished(b, &r, GMC_ERR_TRANSPORT, false);
            ok = false;
            break;
        }
        t = now_ms();
        if (o->timeout_s > 0 && t - t0 > o->timeout_s * 1000.0) {
            fprintf(stderr, "gemma-bench: %s: timeout after %g s, %lld of %lld requests unfinished\n", what,
                    o->timeout_s, (long long)(r.n - r.done), (long long)r.n);
            fail_unfinished(b, &r, GMC_ERR_TIMEOUT, true);
            break;
        }
        if (!o->quiet && t - last_report >= 1000.0) {
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
        s->isl = o->shared_prefix + o->isl; /* what a prompt holds */
        s->osl = o->osl;
        s->isl_std = o->isl_std;
        s->osl_std = o->osl_std;
        s->stream_events = r.events;
        bench_summarize(r.reqs, r.n, r.itl.v, r.itl.n, s);
        if (b->w.n_lines) /* text prompts: report the mean prompt length the daemon counted */
            s->isl = s->completed ? (int32_t)(s->input_tokens / s->completed) : 0;
    }
    run_free(&r);
    return ok;
}

/* ---- plot ---- */

/* Draw the sweep with gnuplot: output tokens/s against p99 TPOT and against
 * per-user tokens/s, each point labelled with its concurrency. */
static int write_plot(const char *png, const bench_summary *pts, int n)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "gemma-bench: gnuplot not found (Debian: apt-get install gnuplot-nox); no plot written\n");
        return 0;
    }
    char dat[4096];
    snprintf(dat, sizeof(dat), "%s.dat", png);
    FILE *f = fopen(dat, "w");
    if (!f) {
        fprintf(stderr, "gemma-bench: cannot write '%s': %s\n", dat, strerror(errno));
        return 1;
    }
    fprintf(f, "# concurrency output_tokens_per_s tpot_p99_ms per_user_tokens_per_s\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "%d %.6g %.6g %.6g\n", pts[i].concurrency, pts[i].output_tokens_per_s, pts[i].tpot_ms.p99,
                pts[i].per_user_tokens_per_s);
    fclose(f);
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(stderr, "gemma-bench: cannot start gnuplot: %s\n", strerror(errno));
        return 1;
    }
    fprintf(g,
            "set terminal png size 1200,500\n"
            "set output '%s'\n"
            "set multiplot layout 1,2 title 'gemma-bench %s, isl %d / osl %d (labels: concurrency)'\n"
            "set grid\nset key off\n"
            "set xlabel 'p99 TPOT (ms)'\nset ylabel 'output tokens/s'\n"
            "plot '%s' using 3:2 with linespoints pt 7, '' using 3:2:1 with labels offset 1,1\n"
            "set xlabel 'per-user tokens/s (1000 / mean TPOT)'\n"
            "plot '%s' using 4:2 with linespoints pt 7, '' using 4:2:1 with labels offset 1,1\n"
            "unset multiplot\n",
            png, pts[0].label, pts[0].isl, pts[0].osl, dat, dat);
    int rc = pclose(g);
    if (rc != 0) {
        fprintf(stderr, "gemma-bench: gnuplot failed (status %d); data in '%s'\n", rc, dat);
        return 1;
    }
    fprintf(stderr, "gemma-bench: plot written to %s (data %s)\n", png, dat);
    return 0;
}

/* ---- main ---- */

static int64_t default_requests(const bench_opts *o, int32_t conc)
{
    if (o->num_requests > 0)
        return o->num_requests;
    return conc > 0 ? (conc >= 8 ? 4 * (int64_t)conc : 32) : 100;
}

int main(int argc, char **argv)
{
    static bench_ctx b; /* large: the event buffer */
    int prc = parse_args(argc, argv, &b.o);
    if (prc)
        return prc == 1 ? 0 : 2;
    bench_opts *o = &b.o;
    if (o->prompts_file && load_prompts(o->prompts_file, &b.w)) {
        fprintf(stderr, "gemma-bench: %s\n", gm_last_error());
        return 2;
    }

    int rc = 0;
    bench_summary *pts = calloc(BENCH_MAX_SWEEP, sizeof(bench_summary));
    if (!pts) {
        fprintf(stderr, "gemma-bench: no memory\n");
        return 3;
    }
    b.n_conn = o->connections;
    for (int c = 0; c < b.n_conn; c++) {
        gmc_connect_opts co;
        gmc_connect_opts_init(&co);
        co.timeout_ms = o->connect_timeout_ms;
        co.server_key_file = o->server_key;
        co.client_key_file = o->client_key;
        gmc_code cr = gmc_connect_with(o->endpoint, &co, &b.conn[c]);
        if (cr != GMC_OK) {
            fprintf(stderr, "gemma-bench: cannot reach gemmad at %s: %s\n", o->endpoint, gmc_connect_error());
            rc = 3;
            goto done;
        }
    }
    gmc_health h;
    if (gmc_health_check(b.conn[0], o->connect_timeout_ms, &h) != GMC_OK) {
        fprintf(stderr, "gemma-bench: health check failed: %s\n", gmc_last_error(b.conn[0]));
        rc = 3;
        goto done;
    }
    if (!h.serving) {
        fprintf(stderr, "gemma-bench: gemmad at %s is not serving%s\n", o->endpoint,
                h.shutting_down ? " (shutting down)" : "");
        rc = 3;
        goto done;
    }
    if (!o->quiet)
        fprintf(stderr, "gemma-bench: gemmad %s, backend %s, model '%s', tp %d\n", h.version, h.backend, h.model,
                h.tp);

    if (o->warmup > 0) {
        int32_t wc = o->concurrency > 0 ? o->concurrency : (o->n_sweep ? o->sweep[o->n_sweep - 1] : 0);
        if (!run_point(&b, o->warmup, wc, 0, o->seed ^ 0x5eed5eedull, "warmup", NULL)) {
            rc = 3;
            goto done;
        }
    }

    int npts = o->n_sweep ? o->n_sweep : 1;
    int64_t failed = 0;
    for (int k = 0; k < npts; k++) {
        int32_t conc = o->n_sweep ? o->sweep[k] : o->concurrency;
        int64_t n = o->n_sweep ? default_requests(o, conc) : default_requests(o, o->concurrency);
        bench_summary *s = &pts[k];
        snprintf(s->label, sizeof(s->label), "%s", o->label ? o->label : h.backend);
        char what[48];
        snprintf(what, sizeof(what), "concurrency %d", conc);
        gmc_stats st0, st1;
        bool have0 = gmc_stats_get(b.conn[0], o->connect_timeout_ms, &st0) == GMC_OK;
        bool ok = run_point(&b, n, conc, o->rate, o->seed, conc ? what : "all at once", s);
        if (ok && have0 && gmc_stats_get(b.conn[0], o->connect_timeout_ms, &st1) == GMC_OK) {
            s->daemon_steps = st1.steps - st0.steps;
            s->daemon_mean_batch = s->daemon_steps > 0 ? (double)(st1.completion_tokens - st0.completion_tokens) /
                                                             (double)s->daemon_steps
                                                       : 0;
            s->daemon_step_avg_ms = st1.step_avg_ms;
            s->daemon_preemptions = st1.preemptions - st0.preemptions;
            int64_t qn = st1.prefix_cache_queries - st0.prefix_cache_queries;
            if (qn > 0 && !o->quiet)
                fprintf(stderr, "gemma-bench: prefix cache: %lld of %lld prompt tokens found (%.1f%%)\n",
                        (long long)(st1.prefix_cache_hits - st0.prefix_cache_hits), (long long)qn,
                        100.0 * (double)(st1.prefix_cache_hits - st0.prefix_cache_hits) / (double)qn);
        }
        if (!conc)
            s->concurrency = (int32_t)(o->rate > 0 ? 0 : n); /* all at once: n in flight */
        bench_print_report(stdout, s, code_name);
        failed += s->failed;
        if (!ok) {
            rc = 3;
            npts = k + 1;
            break;
        }
    }
    if (o->markdown) {
        bench_markdown_header(stdout);
        for (int k = 0; k < npts; k++)
            bench_markdown_row(stdout, &pts[k]);
    }
    if (o->json_path) {
        FILE *f = fopen(o->json_path, "w");
        if (!f) {
            fprintf(stderr, "gemma-bench: cannot write '%s': %s\n", o->json_path, strerror(errno));
            rc = rc ? rc : 2;
        } else {
            if (o->n_sweep)
                fprintf(f, "[\n");
            for (int k = 0; k < npts; k++) {
                if (k)
                    fprintf(f, ",\n");
                bench_write_json(f, &pts[k], code_name);
            }
            if (o->n_sweep)
                fprintf(f, "]\n");
            if (fclose(f) != 0) {
                fprintf(stderr, "gemma-bench: writing '%s' failed: %s\n", o->json_path, strerror(errno));
                rc = rc ? rc : 2;
            }
        }
    }
    if (o->plot_path && write_plot(o->plot_path, pts, npts) != 0 && !rc)
        rc = 2;
    if (!rc && failed > 0 && !o->allow_errors) {
        fprintf(stderr, "gemma-bench: %lld requests failed (use --allow-errors to accept)\n", (long long)failed);
        rc = 1;
    }
done:
    for (int c = 0; c < b.n_conn; c++)
        gmc_close(&b.conn[c]);
    for (int64_t i = 0; i < b.w.n_lines; i++)
        free(b.w.lines[i]);
    free(b.w.lines);
    free(b.w.prompt_buf);
    free(pts);
    return rc;
}
