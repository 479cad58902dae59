/* bench_run.h - one measured run of gemma-bench, whatever carries the requests.
 *
 * A driver (gemmad's RPC through the client library, or an OpenAI-compatible
 * HTTP server through libcurl) starts requests and reports what comes back
 * with bench_run_tokens / bench_run_finish. The loop here decides when each
 * request starts (all at once, closed loop at a concurrency, or Poisson
 * arrivals), enforces the run's timeout, prints progress and fills the
 * summary, so both front doors are measured the same way. One thread. */
#ifndef GM_BENCH_RUN_H
#define GM_BENCH_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include "bench/bench_stats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The state of one run (n requests). */
typedef struct bench_run {
    bench_req *reqs;     /* [n] */
    int32_t *isl;        /* [n] drawn prompt lengths */
    int32_t *osl;        /* [n] drawn output lengths */
    double *arrival;     /* [n] Poisson arrival offsets (ms) or NULL */
    uint64_t *ids;       /* [n] the driver's handle of each request (RPC request id, HTTP slot) */
    int32_t *prompt_buf; /* [shared_prefix + max isl + 1] scratch for a synthetic prompt */
    int64_t n, next, done, in_flight;
    bench_vec itl;       /* ms gaps between consecutive tokens of a stream */
    int64_t out_tokens, events;
    uint64_t seed;
    int32_t shared_prefix; /* bench_load's */
    bool transport_failed;
    uint32_t gen;        /* run number: drivers tag requests with it, so late events of an
                            earlier run (cancelled on timeout) are recognised and dropped */
    bool code_seen[128]; /* first failure of each code is printed */
    const char *(*code_name)(int code);
} bench_run;

/* What carries the requests. */
typedef struct bench_driver {
    void *ctx;
    /* Send request i (r->isl[i] / r->osl[i], prompt from r->seed and i), setting
     * r->reqs[i].t_submit (bench_now_ms) just before it leaves. Returns 0 when it
     * is in flight, else the error code that ends it at once. */
    int32_t (*submit)(void *ctx, bench_run *r, int64_t i);
    /* Wait up to timeout_ms for answers and report them; false on a failure that
     * ends the run (printed; the driver has let go of its requests in flight). */
    bool (*pump)(void *ctx, bench_run *r, int timeout_ms);
    /* Stop in-flight request i (the run timed out); NULL: nothing to do. */
    void (*cancel)(void *ctx, bench_run *r, int64_t i);
    /* Why the last submit failed. */
    const char *(*last_error)(void *ctx);
    const char *(*code_name)(int code);
    int32_t code_transport; /* a submit failing with this ends the run */
    int32_t code_timeout;   /* requests unfinished at the run's timeout */
} bench_driver;

/* The workload's shape (the same for every run of an invocation). */
typedef struct bench_load {
    int32_t isl, osl;
    int32_t shared_prefix; /* ids every synthetic prompt starts with, before its isl own (the driver builds
                            * them into prompt_buf, which has room); counted in each request's isl */
    double isl_std, osl_std;
    double timeout_s;  /* per run; 0 = none */
    bool quiet;        /* no progress lines on stderr */
    bool text_prompts; /* prompts from a file: report the mean prompt length the server counted */
} bench_load;

/* Milliseconds on the monotonic clock. */
double bench_now_ms(void);

/* Run n requests at concurrency conc (0 = unlimited) and rate (0 = closed
 * loop), seeded by seed; fills s when not NULL. Returns false when the driver
 * failed (the requests left are counted as failed). */
bool bench_run_point(const bench_driver *d, const bench_load *l, int64_t n, int32_t conc, double rate,
                     uint64_t seed, const char *what, bench_summary *s);

/* n_tokens generated tokens of request idx arrived at time t (ms). Calls for a
 * request that already finished are ignored. */
gm_status bench_run_tokens(bench_run *r, int64_t idx, int32_t n_tokens, double t);
/* Request idx ended at time t: error 0 = fine, else the code (its first
 * failure is printed with message). prompt_tokens > 0: the server's prompt
 * count; completion_tokens >= 0: the server's exact output count, which
 * replaces the count of tokens seen (a chunk may carry several). */
void bench_run_finish(bench_run *r, int64_t idx, int32_t error, const char *message, int32_t prompt_tokens,
                      int64_t completion_tokens, double t);

#ifdef __cplusplus
}
#endif
#endif
