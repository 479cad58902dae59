/* http_fake_core.c - http/http in a small poll loop with a fake core, for tests/test_http.py.
 *
 *   http_fake_core [--api-key KEY] [--max-body BYTES] [--listen HOST:PORT]
 *
 * Prints "PORT <n>" once listening, then serves until POST /quit (which answers, then
 * destroys the server while any streams are still held, and exits 0):
 *   GET  /health                 200 "ok"
 *   POST /echo, POST /v1/echo    200, the body back with the request's Content-Type
 *   GET  /stream?n=N&ms=M        text/event-stream: N events `data: {"i":K}` every M ms, then [DONE]
 *   GET  /big?kb=K               a stream of K KiB written at once (slow-reader tests)
 *   GET  /later?ms=M             200 "later" after M ms (a held, suspended request)
 *   GET  /misuse                 answers, after checking that stream calls on a plain request fail,
 *                                and that a second answer is refused (misuse_ok in /stats)
 *   POST /v1/completions         {} when http/oai parses the body, else its error (status, JSON)
 *   GET  /stats                  {"aborts", "held", "connections", "streams_done", "misuse_ok"}
 *   other                        404 OpenAI-shaped error
 * The loop polls only http_server_fd() with http_server_timeout_ms() and its own timers,
 * exactly as gemmad's loop would. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "http/http.h"
#include "http/oai.h"

#define MAX_JOBS 4096

typedef struct job {
    http_req *r;
    bool stream;
    int i, n, ms;
    double next;
} job;

typedef struct core {
    http_server *h;
    job jobs[MAX_JOBS];
    int64_t aborts, streams_done;
    bool quit, misuse_ok;
} core;

static int qint(http_req *r, const char *name, int def)
{
    const char *v = http_req_query(r, name);
    return v ? atoi(v) : def;
}

static job *job_new(core *c, http_req *r)
{
    for (int i = 0; i < MAX_JOBS; i++)
        if (!c->jobs[i].r) {
            memset(&c->jobs[i], 0, sizeof(job));
            c->jobs[i].r = r;
            http_req_set_user(r, &c->jobs[i]);
            return &c->jobs[i];
        }
    return NULL;
}

static void on_request(void *cls, http_req *r)
{
    core *c = cls;
    const char *m = http_req_method(r), *p = http_req_path(r);
    if (!strcmp(p, "/health")) {
        http_req_respond(r, 200, "text/plain", "ok", 2);
    } else if ((!strcmp(p, "/echo") || !strcmp(p, "/v1/echo")) && !strcmp(m, "POST")) {
        size_t n;
        const char *b = http_req_body(r, &n);
        const char *ct = http_req_header(r, "Content-Type");
        http_req_respond(r, 200, ct ? ct : "application/octet-stream", b, n);
    } else if (!strcmp(p, "/stream")) {
        job *j = job_new(c, r);
        if (!j) {
            http_req_respond_error(r, 503, "server_error", NULL, "too many jobs");
            return;
        }
        j->stream = true;
        j->n = qint(r, "n", 3);
        j->ms = qint(r, "ms", 10);
        j->next = gm_now_ms();
        http_req_stream_begin(r, 200, "text/event-stream");
    } else if (!strcmp(p, "/big")) {
        size_t n = (size_t)qint(r, "kb", 1024) * 1024;
        char *buf = malloc(n);
        memset(buf, 'x', n);
        http_req_stream_begin(r, 200, "application/octet-stream");
        http_req_stream_write(r, buf, n);
        http_req_stream_end(r);
        free(buf);
    } else if (!strcmp(p, "/later")) {
        job *j = job_new(c, r);
        if (!j) {
            http_req_respond_error(r, 503, "server_error", NULL, "too many jobs");
            return;
        }
        j->next = gm_now_ms() + qint(r, "ms", 100);
    } else if (!strcmp(p, "/misuse")) { /* calls out of order are refused, not crashes */
        bool ok = http_req_stream_write(r, "x", 1) != GM_OK && http_req_stream_end(r) != GM_OK;
        http_req_add_header(r, "X-Test", "1");
        http_req_respond(r, 200, "text/plain", ok ? "refused" : "accepted", ok ? 7 : 8);
        ok = http_req_respond(r, 500, "text/plain", "again", 5) != GM_OK &&
             http_req_stream_begin(r, 200, "text/plain") != GM_OK && http_req_stream_write(r, "x", 1) != GM_OK;
        if (!ok)
            fprintf(stderr, "http_fake_core: a second answer was accepted\n");
        c->misuse_ok = ok;
    } else if (!strcmp(p, "/stats")) {
        char b[256];
        int n = snprintf(b, sizeof b,
                         "{\"aborts\": %lld, \"held\": %lld, \"connections\": %lld, \"streams_done\": %lld, "
                         "\"misuse_ok\": %s}",
                         (long long)c->aborts, (long long)http_server_requests_held(c->h),
                         (long long)http_server_connections(c->h), (long long)c->streams_done,
                         c->misuse_ok ? "true" : "false");
        http_req_respond(r, 200, "application/json", b, (size_t)n);
    } else if (!strcmp(p, "/quit") && !strcmp(m, "POST")) {
        http_req_respond(r, 200, "text/plain", "bye", 3);
        c->quit = true;
    } else if (!strcmp(p, "/v1/completions") && !strcmp(m, "POST")) { /* parse errors come back as they are */
        size_t n;
        const char *b = http_req_body(r, &n);
        oai_request q;
        oai_error e;
        if (oai_parse_request(OAI_COMPLETIONS, b, n, &q, &e) != GM_OK) {
            http_req_respond_oai_error(r, &e);
            return;
        }
        oai_request_free(&q);
        http_req_respond(r, 200, "application/json", "{}", 2);
    } else {
        char msg[300];
        snprintf(msg, sizeof msg, "no route %.10s %.200s", m, p);
        http_req_respond_error(r, 404, "invalid_request_error", "not_found", msg);
    }
}

static void on_abort(void *cls, http_req *r, void *user)
{
    core *c = cls;
    c->aborts++;
    if (user)
        ((job *)user)->r = NULL;
}

/* Advance timers: stream events and delayed answers. Returns ms to the next timer (-1: none). */
static long tick(core *c)
{
    double t = gm_now_ms(), next = -1;
    for (int i = 0; i < MAX_JOBS; i++) {
        job *j = &c->jobs[i];
        if (!j->r)
            continue;
        if (t >= j->next) {
            if (!j->stream) {
                http_req_respond(j->r, 200, "text/plain", "later", 5);
                j->r = NULL;
                continue;
            }
            if (j->i < j->n) {
                char ev[64];
                int n = snprintf(ev, sizeof ev, "data: {\"i\":%d}\n\n", j->i++);
                http_req_stream_write(j->r, ev, (size_t)n);
                j->next = t + j->ms;
            } else {
                http_req_stream_write(j->r, "data: [DONE]\n\n", 14);
                http_req_stream_end(j->r);
                c->streams_done++;
                j->r = NULL;
                continue;
            }
        }
        if (next < 0 || j->next < next)
            next = j->next;
    }
    return next < 0 ? -1 : (long)(next - t) + 1;
}

int main(int argc, char **argv)
{
    http_opts o;
    http_opts_init(&o);
    o.listen = "127.0.0.1:0";
    o.max_body = 65536;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--api-key"))
            o.api_key = argv[i + 1];
        else if (!strcmp(argv[i], "--max-body"))
            o.max_body = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--listen"))
            o.listen = argv[i + 1];
    }
    static core c;
    http_callbacks cb = {on_request, on_abort};
    if (http_server_new(&o, &cb, &c, &c.h) != GM_OK) {
        fprintf(stderr, "http_fake_core: %s\n", gm_last_error());
        return 2;
    }
    printf("PORT %d\n", http_server_port(c.h));
    fflush(stdout);
    while (!c.quit) {
        long t = tick(&c);
        int64_t ht = http_server_timeout_ms(c.h);
        if (ht >= 0 && (t < 0 || ht < t))
            t = (long)ht;
        struct pollfd pf = {http_server_fd(c.h), POLLIN, 0};
        if (poll(&pf, 1, t < 0 ? 1000 : (int)t) < 0)
            break;
        if (http_server_run(c.h) != GM_OK) {
            fprintf(stderr, "http_fake_core: %s\n", gm_last_error());
            return 1;
        }
    }
    /* let the goodbye out, then destroy with whatever streams are still held */
    for (int i = 0; i < 20; i++) {
        struct pollfd pf = {http_server_fd(c.h), POLLIN, 0};
        poll(&pf, 1, 10);
        http_server_run(c.h);
    }
    http_server_destroy(&c.h);
    printf("BYE\n");
    return 0;
}
