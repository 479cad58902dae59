/* bench_http_fake.c - an OpenAI-compatible streaming server with a fake model,
 * for gemma-bench --http (tests/test_bench_http.sh) and for measuring the
 * bench's own cost per stream event.
 *
 *   bench_http_fake [--listen HOST:PORT] [--api-key KEY] [--itl-ms M]
 *
 * http/http serves, http/oai parses the requests and writes the chunks, in
 * a poll loop like gemmad's. Prints "PORT <n>" once listening; serves until
 * POST /quit, SIGINT or SIGTERM.
 *   GET  /health, GET /v1/models     200 ("fake-model")
 *   POST /v1/completions, /v1/chat/completions (stream: true only)
 *        one "step" every --itl-ms ms (0: every loop turn) writes `pack` tokens (" tok" each) to
 *        every stream in one chunk; the last chunk has finish_reason "length", then the usage
 *        chunk (include_usage) and data: [DONE]. prompt_tokens: the ids given, or for text
 *        one per 4 bytes (rounded up). A "model" other than fake-model gets 404.
 *   POST /config?fail=F&bad=B&error=E&cut=C&pack=P&itl=M
 *        failure injection, by the request's number k (from 1, in arrival order, since the
 *        last /config): k % F == 0 answers 429; else k % B == 0 answers 400; else
 *        k % E == 0 streams 2 tokens then an error event and [DONE]; else k % C == 0
 *        streams 1 token and ends without [DONE]. 0 (the default) turns one off. Resets k.
 *   GET  /stats                      {"requests", "streams", "aborts", "connections"}
 * A stream whose client reads slowly gets no new tokens while 64 KiB wait unsent. */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench/bench_run.h"
#include "common/jsonw.h"
#include "http/http.h"
#include "http/oai.h"

#define FAKE_MODEL "fake-model"
#define FAKE_BACKLOG 65536

typedef enum job_kind { JOB_OK, JOB_ERROR, JOB_CUT } job_kind;

typedef struct job {
    http_req *r;
    int64_t pos; /* index in core.jobs */
    job_kind kind;
    oai_endpoint ep;
    bool include_usage;
    int32_t sent, max_tokens, prompt_tokens;
    char id[48];
} job;

typedef struct core {
    http_server *h;
    job **jobs; /* [n_jobs] streams in progress */
    int64_t n_jobs, cap_jobs;
    int64_t requests, streams, aborts;
    int64_t k; /* completion requests since the last /config */
    int fail, bad, error, cut, pack, itl_ms;
    double next_step;
    jsonw w;
    bool quit;
} core;

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static void job_remove(core *c, job *j)
{
    c->jobs[j->pos] = c->jobs[--c->n_jobs];
    c->jobs[j->pos]->pos = j->pos;
    free(j);
}

static void respond_json(core *c, http_req *r, int status)
{
    http_req_respond(r, status, "application/json", c->w.p, c->w.len);
    jsonw_reset(&c->w);
}

static void respond_error(core *c, http_req *r, const oai_error *e)
{
    oai_write_error(&c->w, e);
    respond_json(c, r, e->status);
}

/* A completions or chat request: parse, maybe fail it, else start its stream. */
static void on_completion(core *c, http_req *r, oai_endpoint ep)
{
    size_t n;
    const char *b = http_req_body(r, &n);
    oai_request q;
    oai_error e;
    if (oai_parse_request(ep, b, n, &q, &e) != GM_OK) {
        respond_error(c, r, &e);
        return;
    }
    int64_t k = ++c->k;
    c->requests++;
    int32_t prompt = 0;
    for (int32_t i = 0; i < q.n_prompts; i++)
        prompt += q.prompts[i].ids ? q.prompts[i].n_ids : (int32_t)((q.prompts[i].text_len + 3) / 4);
    for (int32_t i = 0; i < q.n_messages; i++)
        prompt += (int32_t)((q.messages[i].content_len + 3) / 4);
    bool stream = q.stream, usage = q.include_usage, wrong_model = q.model && strcmp(q.model, FAKE_MODEL);
    int32_t max_tokens = q.max_tokens < 0 ? 16 : q.max_tokens;
    char model[64];
    snprintf(model, sizeof(model), "%.60s", q.model ? q.model : "");
    oai_request_free(&q);
    if (wrong_model) {
        oai_error_model_not_found(&e, model);
        respond_error(c, r, &e);
        return;
    }
    if (!stream) {
        oai_fail(&e, 400, "invalid_request_error", "stream", NULL, "this fake server only streams");
        respond_error(c, r, &e);
        return;
    }
    if (c->fail && k % c->fail == 0) {
        oai_fail(&e, 429, "rate_limit_exceeded", NULL, NULL, "fake: request %lld refused, too many requests",
                 (long long)k);
        respond_error(c, r, &e);
        return;
    }
    if (c->bad && k % c->bad == 0) {
        oai_fail(&e, 400, "invalid_request_error", "prompt", NULL, "fake: request %lld is bad", (long long)k);
        respond_error(c, r, &e);
        return;
    }
    if (c->n_jobs == c->cap_jobs) {
        int64_t cap = c->cap_jobs ? c->cap_jobs * 2 : 1024;
        job **v = realloc(c->jobs, (size_t)cap * sizeof(*v));
        if (!v) {
            http_req_respond_error(r, 503, "server_error", NULL, "fake: no memory");
            return;
        }
        c->jobs = v;
        c->cap_jobs = cap;
    }
    job *j = calloc(1, sizeof(*j));
    if (!j) {
        http_req_respond_error(r, 503, "server_error", NULL, "fake: no memory");
        return;
    }
    j->r = r;
    j->ep = ep;
    j->include_usage = usage;
    j->max_tokens = max_tokens;
    j->prompt_tokens = prompt;
    j->kind = c->error && k % c->error == 0 ? JOB_ERROR : c->cut && k % c->cut == 0 ? JOB_CUT : JOB_OK;
    oai_make_id(j->id, sizeof(j->id), ep, (uint64_t)k);
    j->pos = c->n_jobs;
    c->jobs[c->n_jobs++] = j;
    http_req_set_user(r, j);
    http_req_stream_begin(r, 200, "text/event-stream");
    c->streams++;
}

static void on_request(void *cls, http_req *r)
{
    core *c = cls;
    const char *m = http_req_method(r), *p = http_req_path(r);
    bool post = !strcmp(m, "POST");
    if (!strcmp(p, "/health")) {
        http_req_respond(r, 200, "text/plain", "ok", 2);
    } else if (!strcmp(p, "/v1/models")) {
        oai_write_models(&c->w, FAKE_MODEL, 0, 8192);
        respond_json(c, r, 200);
    } else if (post && !strcmp(p, "/v1/completions")) {
        on_completion(c, r, OAI_COMPLETIONS);
    } else if (post && !strcmp(p, "/v1/chat/completions")) {
        on_completion(c, r, OAI_CHAT);
    } else if (post && !strcmp(p, "/config")) {
        const struct {
            const char *name;
            int *dst, def;
        } knobs[] = {{"fail", &c->fail, 0}, {"bad", &c->bad, 0},   {"error", &c->error, 0},
                     {"cut", &c->cut, 0},   {"pack", &c->pack, 1}, {"itl", &c->itl_ms, c->itl_ms}};
        for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
            const char *v = http_req_query(r, knobs[i].name);
            *knobs[i].dst = v ? atoi(v) : knobs[i].def;
        }
        if (c->pack < 1)
            c->pack = 1;
        c->k = 0;
        http_req_respond(r, 200, "text/plain", "ok", 2);
    } else if (!strcmp(p, "/stats")) {
        jsonw_printf(&c->w, "{\"requests\": %lld, \"streams\": %lld, \"aborts\": %lld, \"connections\": %lld}",
                     (long long)c->requests, (long long)c->streams, (long long)c->aborts,
                     (long long)http_server_connections(c->h));
        respond_json(c, r, 200);
    } else if (post && !strcmp(p, "/quit")) {
        http_req_respond(r, 200, "text/plain", "bye", 3);
        c->quit = true;
    } else {
        http_req_respond_error(r, 404, "invalid_request_error", "not_found", "no such route");
    }
}

static void on_abort(void *cls, http_req *r, void *user)
{
    core *c = cls;
    c->aborts++;
    if (user)
        job_remove(c, user);
}

/* One step for stream j: its next chunk, or its end. Returns false when j is done. */
static bool job_step(core *c, job *j)
{
    oai_resp rs = {.endpoint = j->ep, .id = j->id, .model = FAKE_MODEL, .include_usage = j->include_usage};
    int32_t stop_at = j->kind == JOB_ERROR ? 2 : j->kind == JOB_CUT ? 1 : j->max_tokens;
    if (j->sent < stop_at) {
        int32_t n = stop_at - j->sent < c->pack ? stop_at - j->sent : c->pack;
        char text[4 * 64];
        int32_t len = 0;
        for (int32_t i = 0; i < n && len + 4 <= (int32_t)sizeof(text); i++, len += 4)
            memcpy(text + len, " tok", 4);
        oai_choice ch = {.text = text, .text_len = (size_t)len, .first = j->sent == 0};
        j->sent += n;
        if (j->sent == j->max_tokens)
            ch.finish = OAI_FINISH_LENGTH;
        oai_write_chunk(&c->w, &rs, &ch, 1);
        http_req_stream_write(j->r, c->w.p, c->w.len);
        jsonw_reset(&c->w);
        return true;
    }
    if (j->kind == JOB_ERROR) {
        oai_error e;
        oai_fail(&e, 500, "server_error", NULL, NULL, "fake: generation failed after %d tokens", j->sent);
        oai_write_error_event(&c->w, &e);
    } else if (j->kind == JOB_OK && j->include_usage) {
        oai_usage u = {j->prompt_tokens, j->sent};
        oai_write_usage_chunk(&c->w, &rs, &u);
    }
    if (j->kind != JOB_CUT)
        oai_write_done(&c->w);
    if (c->w.len)
        http_req_stream_write(j->r, c->w.p, c->w.len);
    jsonw_reset(&c->w);
    http_req_stream_end(j->r);
    return false;
}

static void step(core *c)
{
    for (int64_t i = 0; i < c->n_jobs;) {
        job *j = c->jobs[i];
        if (http_req_stream_pending(j->r) > FAKE_BACKLOG) { /* a slow reader: wait for it */
            i++;
            continue;
        }
        if (job_step(c, j))
            i++;
        else
            job_remove(c, j); /* the last job moved into slot i */
    }
}

int main(int argc, char **argv)
{
    http_opts o;
    http_opts_init(&o);
    o.listen = "127.0.0.1:0";
    o.max_connections = 65536;
    static core c;
    c.pack = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--api-key"))
            o.api_key = argv[i + 1];
        else if (!strcmp(argv[i], "--listen"))
            o.listen = argv[i + 1];
        else if (!strcmp(argv[i], "--itl-ms"))
            c.itl_ms = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_http_fake: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    http_callbacks cb = {on_request, on_abort};
    if (http_server_new(&o, &cb, &c, &c.h) != GM_OK) {
        fprintf(stderr, "bench_http_fake: %s\n", gm_last_error());
        return 2;
    }
    printf("PORT %d\n", http_server_port(c.h));
    fflush(stdout);
    int rc = 0;
    while (!c.quit && !stop_signal) {
        double t = bench_now_ms();
        long wait = 1000;
        if (c.n_jobs)
            wait = t >= c.next_step ? 0 : (long)(c.next_step - t) + 1;
        int64_t ht = http_server_timeout_ms(c.h);
        if (ht >= 0 && ht < wait)
            wait = (long)ht;
        struct pollfd pf = {http_server_fd(c.h), POLLIN, 0};
        if (poll(&pf, 1, (int)wait) < 0 && !stop_signal)
            break;
        if (http_server_run(c.h) != GM_OK) {
            fprintf(stderr, "bench_http_fake: %s\n", gm_last_error());
            rc = 1;
            break;
        }
        t = bench_now_ms();
        if (c.n_jobs && t >= c.next_step) {
            step(&c);
            c.next_step = t + c.itl_ms;
        }
    }
    for (int i = 0; i < 20 && c.quit; i++) { /* let the goodbye out */
        struct pollfd pf = {http_server_fd(c.h), POLLIN, 0};
        poll(&pf, 1, 10);
        http_server_run(c.h);
    }
    http_server_destroy(&c.h);
    for (int64_t i = 0; i < c.n_jobs; i++)
        free(c.jobs[i]);
    free(c.jobs);
    jsonw_free(&c.w);
    return rc;
}
