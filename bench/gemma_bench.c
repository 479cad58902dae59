/* gemma_bench.c - gemma-bench: a serving load generator for gemmad.
 *
 * One thread drives every stream, through one of two drivers: gemmad's RPC (a
 * few gmc_client connections, DEALER sockets; gmc_submit starts requests,
 * gmc_poll collects their streamed tokens), or with --http any
 * OpenAI-compatible server (bench/http_load.c: libcurl, a connection per
 * stream). Arrivals are all at once, closed loop (--concurrency) or Poisson
 * (--rate) (bench/bench_run.c). Timings are taken on this side: TTFT from
 * submit to the first token's arrival, TPOT per request over the tokens after
 * the first, ITL over every gap between consecutive tokens of a stream. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <zmq.h>

#include "common/args.h"
#include "bench/bench_run.h"
#include "bench/bench_stats.h"
#include "bench/http_load.h"
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
    int32_t beam_width; /* > 1: beam search (RPC only), one hypothesis back, not streamed */
    int32_t spec_tokens; /* --speculative-tokens: the requests' speculative_tokens (0 = gemmad's default) */
    double timeout_s; /* per run; 0 = none */
    int connect_timeout_ms;
    const char *server_key, *client_key; /* CurveZMQ key files, or NULL */
    bool quiet;
    const char *label;
    const char *http_url; /* --http: an OpenAI-compatible server instead of the RPC */
    const char *model, *api_key;
    bool chat;
} bench_opts;

/* The workload: prompts as ids (synthetic) or text lines. */
typedef struct bench_work {
    char **lines; /* [n_lines] prompts from --prompts, owned */
    int64_t n_lines;
} bench_work;

typedef struct bench_ctx {
    bench_opts o;
    bench_work w;
    gmc_client *conn[BENCH_MAX_CONN];
    int n_conn;
    http_load *http;
    gmc_event ev[BENCH_EVENTS];
} bench_ctx;

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
            "                       then isl ids of its own (default 0); the prefix cache's workload (RPC only)\n"
            "  --vocab N            vocabulary size for prompt ids (default 256000)\n"
            "  --prompts FILE       text prompts, one per line (used in turn); max_tokens = osl\n"
            "  --stop-at-eos        let generations end at EOS (default: forced to osl)\n"
            "  --beam-width W       beam search over W (2..8) beams, the best hypothesis back whole (not\n"
            "                       streamed: TTFT is the whole request); output tokens count that one\n"
            "                       hypothesis, so tokens/s compares with --beam-width 1 (RPC only)\n"
            "  --speculative-tokens K  speculative decoding by prompt lookup: K (1..16) tokens drafted per\n"
            "                       step, -1 = off, 0 = gemmad's default (RPC only; docs/SPECULATIVE.md);\n"
            "                       the acceptance is printed after each run\n"
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
            "HTTP (an OpenAI-compatible server instead of gemmad's RPC):\n"
            "  --http URL           e.g. http://127.0.0.1:8000: streaming POST /v1/completions with the\n"
            "                       prompt as token ids (text with --prompts), max_tokens = osl,\n"
            "                       temperature 0, ignore_eos, stream_options.include_usage; one\n"
            "                       keep-alive connection per request in flight\n"
            "  --model NAME         the requests' model (default: the first of GET /v1/models)\n"
            "  --api-key KEY        sent as Authorization: Bearer KEY\n"
            "  --chat               POST /v1/chat/completions, one user message (synthetic prompts\n"
            "                       become isl - 1 common words)\n"
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
            "exit status: 0 ok, 1 some request failed, 2 bad arguments, 3 cannot reach gemmad (or the\n"
            "HTTP server) or a transport failure.\n");
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
    bool stop_at_eos = false, endpoint_seen = false, conn_seen = false;
    int32_t connect_timeout = o->connect_timeout_ms;
    args_opt opts[] = {
        {"endpoint", ARGS_STRING, &o->endpoint, .seen = &endpoint_seen},
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
        {"connections", ARGS_INT, &o->connections, 1, BENCH_MAX_CONN, .seen = &conn_seen},
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
        {"beam-width", ARGS_INT, &o->beam_width, 0, 8},
        {"speculative-tokens", ARGS_INT, &o->spec_tokens, -1, 16},
        {"quiet", ARGS_FLAG, &o->quiet},
        {"http", ARGS_STRING, &o->http_url},
        {"model", ARGS_STRING, &o->model},
        {"api-key", ARGS_STRING, &o->api_key},
        {"chat", ARGS_FLAG, &o->chat},
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
    const char *rpc_only = endpoint_seen ? "--endpoint" : conn_seen ? "--connections"
                           : o->server_key ? "--server-key" : o->client_key ? "--client-key"
                           : o->shared_prefix ? "--shared-prefix" : o->spec_tokens ? "--speculative-tokens" : NULL;
    if (o->http_url && rpc_only) {
        fprintf(stderr, "gemma-bench: %s is for gemmad's RPC, not --http\n", rpc_only);
        return 2;
    }
    const char *http_only = o->chat ? "--chat" : o->model ? "--model" : o->api_key ? "--api-key" : NULL;
    if (o->http_url && o->beam_width > 1) {
        fprintf(stderr, "gemma-bench: --beam-width is for the RPC (not --http)\n");
        return 2;
    }
    if (!o->http_url && http_only) {
        fprintf(stderr, "gemma-bench: %s needs --http\n", http_only);
        return 2;
    }
    if (o->http_url && (strncasecmp(o->http_url, "http://", 7) != 0 || !o->http_url[7])) {
        fprintf(stderr, "gemma-bench: --http '%s': expected http://HOST:PORT (https is not supported)\n",
                o->http_url);
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

/* ---- the RPC driver: gmc_client connections ---- */

/* Send request i on connection i % n_conn. */
static int32_t rpc_submit(void *ctx, bench_run *r, int64_t i)
{
    bench_ctx *b = ctx;
    const bench_opts *o = &b->o;
    gmc_params p;
    gmc_params_init(&p);
    int32_t np = o->shared_prefix;
    if (b->w.n_lines) {
        p.prompt = b->w.lines[i % b->w.n_lines];
    } else if (np > 0) { /* the prefix (from --seed, index -1: the same for every request and run, warm-up
                            * included), then isl ids drawn for request i */
        int32_t *buf = r->prompt_buf; /* bench_run.c sizes it for the prefix */
        bench_make_prompt(o->seed, -1, o->vocab, np, buf);
        int32_t last = buf[np - 1];
        bench_make_prompt(r->seed, i, o->vocab, r->isl[i] + 1, buf + np - 1); /* its BOS lands on ... */
        buf[np - 1] = last;                                                   /* ... the prefix's last id */
        p.prompt_ids = buf;
        p.n_prompt_ids = np + r->isl[i];
    } else {
        bench_make_prompt(r->seed, i, o->vocab, r->isl[i], r->prompt_buf);
        p.prompt_ids = r->prompt_buf;
        p.n_prompt_ids = r->isl[i];
    }
    p.max_tokens = r->osl[i];
    p.ignore_eos = o->ignore_eos;
    p.seed = r->seed + (uint64_t)i;
    if (o->beam_width > 1) { /* the hypothesis comes back whole, in the final event */
        p.beam_width = o->beam_width;
        p.stream = false;
    }
    p.speculative_tokens = o->spec_tokens;
    r->reqs[i].t_submit = bench_now_ms();
    uintptr_t tag = ((uintptr_t)r->gen << 32) | (uintptr_t)(i + 1);
    return gmc_submit(b->conn[i % b->n_conn], &p, (void *)tag, &r->ids[i]);
}

/* Account one event received at time t. */
static gm_status rpc_on_event(bench_run *r, const gmc_event *ev, double t)
{
    uintptr_t tag = (uintptr_t)ev->user;
    int64_t idx = (int64_t)(tag & 0xffffffffu) - 1;
    if ((uint32_t)(tag >> 32) != r->gen || idx < 0 || idx >= r->n)
        return GM_OK; /* a late event of an earlier run */
    if (r->reqs[idx].done)
        return GM_OK;
    if (ev->n_tokens > 0) {
        gm_status st = bench_run_tokens(r, idx, ev->n_tokens, t);
        if (st)
            return st;
    }
    if (ev->finished) {
        int32_t error = 0;
        if (ev->finish_reason == GMC_FINISH_ERROR)
            error = ev->error ? ev->error : GMC_ERR_INTERNAL;
        else if (ev->finish_reason == GMC_FINISH_CANCELLED)
            error = ev->error ? ev->error : GMC_ERR_CANCELLED;
        else if (ev->error)
            error = ev->error;
        bench_run_finish(r, idx, error, ev->error_message, ev->usage.prompt_tokens, -1, t);
    }
    return GM_OK;
}

/* Wait up to timeout_ms for events on any connection and account them.
 * Returns false on a transport failure (printed). */
static bool rpc_pump(void *ctx, bench_run *r, int timeout_ms)
{
    bench_ctx *b = ctx;
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
        double t = bench_now_ms();
        for (int k = 0; k < got; k++) {
            gm_status st = rpc_on_event(r, &b->ev[k], t);
            if (st) {
                fprintf(stderr, "gemma-bench: %s\n", gm_last_error());
                return false;
            }
        }
    }
    return true;
}

static void rpc_cancel(void *ctx, bench_run *r, int64_t i)
{
    bench_ctx *b = ctx;
    (void)gmc_cancel(b->conn[i % b->n_conn], r->ids[i]);
}

static const char *rpc_last_error(void *ctx)
{
    bench_ctx *b = ctx;
    return gmc_last_error(b->conn[0]);
}

static void rpc_driver(bench_ctx *b, bench_driver *d)
{
    *d = (bench_driver){.ctx = b, .submit = rpc_submit, .pump = rpc_pump, .cancel = rpc_cancel,
                        .last_error = rpc_last_error, .code_name = code_name,
                        .code_transport = GMC_ERR_TRANSPORT, .code_timeout = GMC_ERR_TIMEOUT};
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

/* Connect to gemmad and check that it serves; 0 or exit status 3 (printed). */
static int rpc_open(bench_ctx *b, gmc_health *h)
{
    const bench_opts *o = &b->o;
    b->n_conn = o->connections;
    for (int c = 0; c < b->n_conn; c++) {
        gmc_connect_opts co;
        gmc_connect_opts_init(&co);
        co.timeout_ms = o->connect_timeout_ms;
        co.server_key_file = o->server_key;
        co.client_key_file = o->client_key;
        gmc_code cr = gmc_connect_with(o->endpoint, &co, &b->conn[c]);
        if (cr != GMC_OK) {
            fprintf(stderr, "gemma-bench: cannot reach gemmad at %s: %s\n", o->endpoint, gmc_connect_error());
            return 3;
        }
    }
    if (gmc_health_check(b->conn[0], o->connect_timeout_ms, h) != GMC_OK) {
        fprintf(stderr, "gemma-bench: health check failed: %s\n", gmc_last_error(b->conn[0]));
        return 3;
    }
    if (!h->serving) {
        fprintf(stderr, "gemma-bench: gemmad at %s is not serving%s\n", o->endpoint,
                h->shutting_down ? " (shutting down)" : "");
        return 3;
    }
    if (!o->quiet)
        fprintf(stderr, "gemma-bench: gemmad %s, backend %s, model '%s', tp %d\n", h->version, h->backend, h->model,
                h->tp);
    return 0;
}

/* Set up the HTTP driver and check the server; 0 or exit status 3 (printed). */
static int http_open(bench_ctx *b)
{
    const bench_opts *o = &b->o;
    http_load_opts ho = {.url = o->http_url,
                         .model = o->model,
                         .api_key = o->api_key,
                         .chat = o->chat,
                         .prompts = b->w.lines,
                         .n_prompts = b->w.n_lines,
                         .vocab = o->vocab,
                         .ignore_eos = o->ignore_eos,
                         .connect_timeout_ms = o->connect_timeout_ms};
    if (!(b->http = http_load_new(&ho))) {
        fprintf(stderr, "gemma-bench: %s\n", gm_last_error());
        return 3;
    }
    if (http_load_check(b->http) != GM_OK) {
        fprintf(stderr, "gemma-bench: %s\n", gm_last_error());
        return 3;
    }
    if (!o->quiet)
        fprintf(stderr, "gemma-bench: %s, model '%s'\n", o->http_url, http_load_model(b->http));
    return 0;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

/* Run one measured point; the RPC adds the daemon's own view (Stats before
 * and after), HTTP this process's CPU time per stream event (stderr, also
 * with --quiet: it tells whether the bench or the server was the limit). */
static bool measure_point(bench_ctx *b, const bench_driver *d, const bench_load *l, int64_t n, int32_t conc,
                          const char *what, bench_summary *s)
{
    const bench_opts *o = &b->o;
    if (b->http) {
        double c0 = cpu_seconds();
        int64_t k0 = http_load_connects(b->http);
        bool ok = bench_run_point(d, l, n, conc, o->rate, o->seed, what, s);
        double cpu = cpu_seconds() - c0;
        fprintf(stderr,
                "gemma-bench: %s: this process used %.3f s CPU for %lld stream events (%.2f us each, "
                "%.0f events per CPU second); %lld connections opened\n",
                what, cpu, (long long)s->stream_events, s->stream_events ? cpu * 1e6 / (double)s->stream_events : 0.0,
                cpu > 0 ? (double)s->stream_events / cpu : 0.0, (long long)(http_load_connects(b->http) - k0));
        return ok;
    }
    gmc_stats st0, st1;
    bool have0 = gmc_stats_get(b->conn[0], o->connect_timeout_ms, &st0) == GMC_OK;
    bool ok = bench_run_point(d, l, n, conc, o->rate, o->seed, what, s);
    if (ok && have0 && gmc_stats_get(b->conn[0], o->connect_timeout_ms, &st1) == GMC_OK) {
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
        int64_t dn = st1.spec_drafted - st0.spec_drafted, an = st1.spec_accepted - st0.spec_accepted;
        int64_t vn = st1.spec_steps - st0.spec_steps;
        if (vn > 0 && !o->quiet)
            fprintf(stderr, "gemma-bench: speculative decoding: %lld verify steps, %lld of %lld drafted tokens "
                    "accepted (%.1f%%), %.2f tokens per verify step\n", (long long)vn, (long long)an, (long long)dn,
                    dn ? 100.0 * (double)an / (double)dn : 0.0, (double)(an + vn) / (double)vn);
    }
    return ok;
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
    gmc_health h = {0};
    bench_driver d;
    if (o->http_url) {
        if ((rc = http_open(&b)))
            goto done;
        http_load_driver(b.http, &d);
    } else {
        if ((rc = rpc_open(&b, &h)))
            goto done;
        rpc_driver(&b, &d);
    }
    const char *label = o->label ? o->label : o->http_url ? "http" : h.backend;
    bench_load load = {.isl = o->isl,
                       .shared_prefix = b.w.n_lines ? 0 : o->shared_prefix,
                       .osl = o->osl,
                       .isl_std = o->isl_std,
                       .osl_std = o->osl_std,
                       .timeout_s = o->timeout_s,
                       .quiet = o->quiet,
                       .text_prompts = b.w.n_lines > 0};

    if (o->warmup > 0) {
        int32_t wc = o->concurrency > 0 ? o->concurrency : (o->n_sweep ? o->sweep[o->n_sweep - 1] : 0);
        if (!bench_run_point(&d, &load, o->warmup, wc, 0, o->seed ^ 0x5eed5eedull, "warmup", NULL)) {
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
        snprintf(s->label, sizeof(s->label), "%s", label);
        char what[48];
        snprintf(what, sizeof(what), "concurrency %d", conc);
        bool ok = measure_point(&b, &d, &load, n, conc, conc ? what : "all at once", s);
        if (!conc)
            s->concurrency = (int32_t)(o->rate > 0 ? 0 : n); /* all at once: n in flight */
        bench_print_report(stdout, s, d.code_name);
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
                bench_write_json(f, &pts[k], d.code_name);
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
    http_load_destroy(&b.http);
    for (int64_t i = 0; i < b.w.n_lines; i++)
        free(b.w.lines[i]);
    free(b.w.lines);
    free(pts);
    return rc;
}
