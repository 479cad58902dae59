/* server.c - gemmad's loop: requests in, step plans to the workers, chunks out.
 *
 * Per step (the hot path, 1000+ sequences at a time on the null backend):
 * collect tokens -> sched_commit_step -> per sequence: detokenize, stop
 * strings, mark its request dirty -> plan and submit the next step -> pack one
 * ServerMessage per client holding all its chunks -> send. No allocation per
 * token; one protobuf pack and one zmq_send per client per step.
 *
 * Run-ahead (run_ahead = true, the default): two steps are in flight, so the
 * workers always have the next plan queued when a step ends and never wait on
 * this loop; step k+1 is planned before step k's tokens are back (sched.h). */
#define _GNU_SOURCE
#include "daemon/server.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/log.h"
#include "common/tokenizer.h"
#include "common/utf8.h"
#include "daemon/cluster_glue.h"
#include "daemon/metrics.h"
#include "daemon/sched.h"
#include "daemon/textout.h"
#include "daemon/u64map.h"
#include "daemon/wire.h"
#include "daemon/workers.h"
#include "proto/gemma.pb-c.h"

#define GD_VERSION "0.1.0"
#define GD_PROTOCOL_VERSION 1
#define GD_MAX_STOP 16
#define GD_MAX_STOP_LEN 256
#define GD_MAX_STOP_IDS SCHED_MAX_STOP_IDS
#define GD_RECV_BATCH 4096
#define GD_ID_MAX 256

typedef Gemma__V1__ErrorCode err_code;
typedef Gemma__V1__FinishReason fin_reason;

typedef struct gd_client gd_client;
typedef struct gd_req gd_req;

struct gd_req {
    gd_client *cl;
    uint64_t rid;
    sched_seq *seq;   /* NULL when rejected before scheduling */
    gm_detok *dt;     /* NULL without a tokenizer */
    txo *tx;
    bool stream, done, dirty;
    int32_t n_sent;   /* generated tokens already sent */
    int32_t n_prompt;
    fin_reason finish;
    err_code err;
    char *errmsg;     /* owned, or NULL */
    double t_arrival, t_sched, t_first, t_end; /* ms, monotonic */
    gd_req *dirty_next;
};

struct gd_client {
    uint8_t id[GD_ID_MAX];
    size_t id_len;
    uint64_t hash;
    gd_client *hnext; /* same hash */
    u64map reqs;      /* request id -> gd_req */
    gd_req *dirty_head, *dirty_tail;
    bool dirty;
    gd_client *dirty_next;
};

typedef struct gd_counters {
    int64_t requests_total, requests_finished, requests_failed, requests_cancelled;
    int64_t prompt_tokens, completion_tokens, steps, worker_restarts;
} gd_counters;

struct gd_server {
    const gd_config *cfg;
    void *zctx, *router;
    glue *glue;           /* CurveZMQ + router registration (daemon/cluster_glue.h) */
    wk_pool *pool;
    bool pool_ok;
    double next_restart_ms;
    gm_tokenizer *tok;
    gm_model_config mcfg;
    int32_t max_context;
    sched *sch;
    sched_plan plans[SCHED_MAX_OUTSTANDING]; /* submitted, oldest first */
    double plan_sent_ms[SCHED_MAX_OUTSTANDING];
    int32_t n_plans;
    int32_t depth;        /* steps in flight at most: 2 with run-ahead, else 1 */
    double last_done_ms;  /* when the last step's result came */
    int32_t *step_tokens; /* [max_seqs] */
    sched_seq **failed;   /* [max_seqs] scratch of workers_failed */
    u64map clients;       /* identity hash -> gd_client chain */
    int32_t n_clients;
    gd_client *dirty_head, *dirty_tail;
    bool stopping;
    double stop_deadline_ms;
    double start_ms;
    double next_report_ms;  /* periodic INFO line while busy */
    int64_t reported_steps;
    gd_counters c;
    met_ring ttft, tpot, queue, step_ms;
    met_rate rate;
    /* flush scratch */
    Gemma__V1__GenerateChunk *chunks;
    Gemma__V1__GenerateChunk **chunk_ptrs;
    Gemma__V1__Usage *usages;
    gd_req **chunk_reqs;
    size_t chunk_cap;
    uint8_t *txbuf;
    size_t txcap;
    gd_req **finished; /* requests to free after their final chunk went out */
    size_t n_finished, finished_cap;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- sending ---- */

static bool ensure_txbuf(gd_server *s, size_t n)
{
    if (n <= s->txcap)
        return true;
    size_t cap = s->txcap ? s->txcap : 65536;
    while (cap < n)
        cap *= 2;
    uint8_t *b = realloc(s->txbuf, cap);
    if (!b)
        return false;
    s->txbuf = b;
    s->txcap = cap;
    return true;
}

/* Pack m and send it to the client with routing id (id, len). false when the
 * client is gone (EHOSTUNREACH) or not reading (EAGAIN at the high-water mark). */
static bool send_to(gd_server *s, const void *id, size_t idlen, Gemma__V1__ServerMessage *m)
{
    m->protocol_version = GD_PROTOCOL_VERSION;
    bool chunks = m->body_case == GEMMA__V1__SERVER_MESSAGE__BODY__NOT_SET; /* the per-step message: by hand */
    size_t n = chunks ? wire_chunks_size(m) : gemma__v1__server_message__get_packed_size(m);
    if (!ensure_txbuf(s, n)) { /* our problem, not the client's: drop this message, keep the client */
        GM_ERROR("out of memory packing a %zu-byte reply", n);
        return true;
    }
    if (chunks)
        wire_chunks_pack(m, s->txbuf);
    else
        gemma__v1__server_message__pack(m, s->txbuf);
    if (zmq_send(s->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        GM_DEBUG("client gone (%s)", zmq_strerror(errno));
        return false;
    }
    if (zmq_send(s->router, s->txbuf, n, ZMQ_DONTWAIT) < 0) {
        GM_WARN("send of %zu bytes failed: %s", n, zmq_strerror(errno));
        return false;
    }
    return true;
}

static void reply_error(gd_server *s, const void *id, size_t idlen, uint64_t rid, err_code code, const char *fmt,
                        ...) __attribute__((format(printf, 6, 7)));
static void reply_error(gd_server *s, const void *id, size_t idlen, uint64_t rid, err_code code, const char *fmt,
                        ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    gm_utf8_vformat(msg, sizeof(msg), fmt, ap); /* client text in it: valid UTF-8, cut between characters */
    va_end(ap);
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__Error e = GEMMA__V1__ERROR__INIT;
    e.request_id = rid;
    e.code = code;
    e.message = msg;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_ERROR;
    m.error = &e;
    GM_DEBUG("error reply %d to request %llu: %s", (int)code, (unsigned long long)rid, msg);
    send_to(s, id, idlen, &m);
}

/* ---- clients and requests ---- */

static uint64_t id_hash(const uint8_t *id, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ id[i]) * 0x100000001b3ull;
    return h ? h : 1;
}

static gd_client *client_find(gd_server *s, const uint8_t *id, size_t n, uint64_t h)
{
    for (gd_client *c = u64map_get(&s->clients, h); c; c = c->hnext)
        if (c->id_len == n && !memcmp(c->id, id, n))
            return c;
    return NULL;
}

static gd_client *client_get(gd_server *s, const uint8_t *id, size_t n)
{
    uint64_t h = id_hash(id, n);
    gd_client *c = client_find(s, id, n, h);
    if (c || n > GD_ID_MAX)
        return c;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    memcpy(c->id, id, n);
    c->id_len = n;
    c->hash = h;
    c->hnext = u64map_get(&s->clients, h);
    if (!u64map_put(&s->clients, h, c)) {
        free(c);
        return NULL;
    }
    s->n_clients++;
    return c;
}

/* Forget a client that has no request left and nothing to send. */
static void client_maybe_free(gd_server *s, gd_client *c)
{
    if (c->reqs.n > 0 || c->dirty)
        return;
    gd_client *head = u64map_get(&s->clients, c->hash);
    if (head == c) {
        if (c->hnext)
            u64map_put(&s->clients, c->hash, c->hnext);
        else
            u64map_del(&s->clients, c->hash);
    } else {
        for (gd_client *p = head; p; p = p->hnext)
            if (p->hnext == c) {
                p->hnext = c->hnext;
                break;
            }
    }
    u64map_free(&c->reqs);
    free(c);
    s->n_clients--;
}

static void req_mark_dirty(gd_server *s, gd_req *r)
{
    if (r->dirty)
        return;
    r->dirty = true;
    r->dirty_next = NULL;
    gd_client *c = r->cl;
    if (c->dirty_tail)
        c->dirty_tail->dirty_next = r;
    else
        c->dirty_head = r;
    c->dirty_tail = r;
    if (!c->dirty) {
        c->dirty = true;
        c->dirty_next = NULL;
        if (s->dirty_tail)
            s->dirty_tail->dirty_next = c;
        else
            s->dirty_head = c;
        s->dirty_tail = c;
    }
}

static void req_free(gd_server *s, gd_req *r)
{
    if (r->seq)
        sched_seq_free(s->sch, &r->seq);
    gm_detok_destroy(&r->dt);
    txo_destroy(&r->tx);
    u64map_del(&r->cl->reqs, r->rid);
    free(r->errmsg);
    free(r);
}

/* Flush what the detokenizer holds into the text output. */
static void req_flush_text(gd_req *r)
{
    if (r->dt && r->tx && !txo_stopped(r->tx)) {
        char buf[GM_DETOK_MAX_OUT];
        size_t n = gm_detok_flush(r->dt, buf);
        if (n)
            txo_append(r->tx, buf, n);
    }
    if (r->tx)
        txo_finish(r->tx);
}

/* End a request: its KV blocks are freed now; the final chunk goes out at the next flush. */
static void req_complete(gd_server *s, gd_req *r, fin_reason fr, err_code code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void req_complete(gd_server *s, gd_req *r, fin_reason fr, err_code code, const char *fmt, ...)
{
    if (r->done)
        return;
    r->done = true;
    r->finish = fr;
    r->err = code;
    r->t_end = now_ms();
    if (fmt) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        gm_utf8_vformat(msg, sizeof(msg), fmt, ap); /* client text in it: valid UTF-8, cut between characters */
        va_end(ap);
        r->errmsg = strdup(msg);
    }
    if (r->seq && r->seq->state != SCHED_FINISHED)
        sched_finish_seq(s->sch, r->seq, fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR ? SCHED_FINISH_ERROR
                                                                                       : SCHED_FINISH_CANCELLED);
    req_flush_text(r);
    GM_DEBUG("request %llu: %s, %d prompt + %d generated tokens, queue %.1f ms, ttft %.1f ms, total %.1f ms%s%s",
             (unsigned long long)r->rid,
             fr == GEMMA__V1__FINISH_REASON__FINISH_LENGTH  ? "length"
             : fr == GEMMA__V1__FINISH_REASON__FINISH_STOP  ? "stop"
             : fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR ? "error"
                                                            : "cancelled",
             r->n_prompt, r->seq ? sched_seq_generated(r->seq) : 0, r->t_sched > 0 ? r->t_sched - r->t_arrival : 0,
             r->t_first > 0 ? r->t_first - r->t_arrival : 0, r->t_end - r->t_arrival, r->errmsg ? ": " : "",
             r->errmsg ? r->errmsg : "");
    if (fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR) {
        s->c.requests_failed++;
    } else if (fr == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED) {
        s->c.requests_cancelled++;
    } else {
        s->c.requests_finished++;
        if (r->t_sched > 0)
            met_ring_add(&s->queue, r->t_sched - r->t_arrival);
        if (r->t_first > 0) {
            met_ring_add(&s->ttft, r->t_first - r->t_arrival);
            int32_t gen = r->seq ? sched_seq_generated(r->seq) : 0;
            if (gen > 1)
                met_ring_add(&s->tpot, (r->t_end - r->t_first) / (gen - 1));
        }
    }
    req_mark_dirty(s, r);
}

/* ---- flushing chunks ---- */

static bool ensure_chunks(gd_server *s, size_t n)
{
    if (n <= s->chunk_cap)
        return true;
    size_t cap = s->chunk_cap ? s->chunk_cap * 2 : 256;
    while (cap < n)
        cap *= 2;
    void *a = realloc(s->chunks, cap * sizeof(*s->chunks));
    if (!a)
        return false;
    s->chunks = a;
    a = realloc(s->chunk_ptrs, cap * sizeof(*s->chunk_ptrs));
    if (!a)
        return false;
    s->chunk_ptrs = a;
    a = realloc(s->usages, cap * sizeof(*s->usages));
    if (!a)
        return false;
    s->usages = a;
    a = realloc(s->chunk_reqs, cap * sizeof(*s->chunk_reqs));
    if (!a)
        return false;
    s->chunk_reqs = a;
    s->chunk_cap = cap;
    return true;
}

static void finished_push(gd_server *s, gd_req *r)
{
    if (s->n_finished == s->finished_cap) {
        size_t cap = s->finished_cap ? s->finished_cap * 2 : 256;
        gd_req **f = realloc(s->finished, cap * sizeof(*f));
        if (!f) {
            req_free(s, r); /* cannot defer: free now */
            return;
        }
        s->finished = f;
        s->finished_cap = cap;
    }
    s->finished[s->n_finished++] = r;
}

/* The client is gone: cancel and free every request it had. */
static void client_drop(gd_server *s, gd_client *c)
{
    int64_t n = 0;
    for (int64_t i = 0; i < c->reqs.cap; i++) {
        if (!c->reqs.ents[i].key)
            continue;
        gd_req *r = c->reqs.ents[i].val;
        if (!r->done) {
            s->c.requests_cancelled++;
            n++;
        }
        r->done = true;
        if (r->seq)
            sched_seq_free(s->sch, &r->seq); /* blocks freed now */
        gm_detok_destroy(&r->dt);
        txo_destroy(&r->tx);
        free(r->errmsg);
        free(r);
    }
    u64map_free(&c->reqs);
    if (n)
        GM_INFO("client vanished: %lld request(s) cancelled, their KV blocks freed", (long long)n);
}

/* Send every dirty client its chunks: one message each. */
static void flush_clients(gd_server *s)
{
    while (s->dirty_head) {
        gd_client *c = s->dirty_head;
        s->dirty_head = c->dirty_next;
        if (!s->dirty_head)
            s->dirty_tail = NULL;
        c->dirty = false;
        size_t n = 0;
        for (gd_req *r = c->dirty_head; r; r = r->dirty_next)
            n++;
        if (!ensure_chunks(s, n)) {
            GM_ERROR("out of memory for %zu chunks", n);
            continue;
        }
        size_t k = 0;
        for (gd_req *r = c->dirty_head, *next; r; r = next) {
            next = r->dirty_next;
            r->dirty = false;
            r->dirty_next = NULL;
            Gemma__V1__GenerateChunk *ch = &s->chunks[k];
            *ch = (Gemma__V1__GenerateChunk)GEMMA__V1__GENERATE_CHUNK__INIT;
            ch->request_id = r->rid;
            if (r->seq) {
                sched_seq *q = r->seq;
                int32_t gen = q->n_tokens - q->n_prompt;
                ch->n_token_ids = (size_t)(gen - r->n_sent);
                ch->token_ids = q->tokens + q->n_prompt + r->n_sent;
                r->n_sent = gen;
            }
            if (r->tx) {
                size_t tl;
                const char *t = txo_ready(r->tx, &tl);
                ch->text.len = tl;
                ch->text.data = (uint8_t *)t;
            }
            if (r->done) {
                Gemma__V1__Usage *u = &s->usages[k];
                *u = (Gemma__V1__Usage)GEMMA__V1__USAGE__INIT;
                u->prompt_tokens = r->n_prompt;
                u->completion_tokens = r->seq ? sched_seq_generated(r->seq) : 0;
                u->queue_ms = r->t_sched > 0 ? r->t_sched - r->t_arrival : 0;
                u->ttft_ms = r->t_first > 0 ? r->t_first - r->t_arrival : 0;
                u->total_ms = r->t_end - r->t_arrival;
                u->preemptions = r->seq ? r->seq->preemptions : 0;
                ch->usage = u;
                ch->finish_reason = r->finish;
                ch->error_code = r->err;
                if (r->errmsg)
                    ch->error_message = r->errmsg;
            }
            s->chunk_ptrs[k] = ch;
            s->chunk_reqs[k] = r;
            k++;
        }
        c->dirty_head = c->dirty_tail = NULL;
        Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
        m.n_chunks = k;
        m.chunks = s->chunk_ptrs;
        bool ok = send_to(s, c->id, c->id_len, &m);
        for (size_t i = 0; i < k; i++) {
            gd_req *r = s->chunk_reqs[i];
            if (r->tx)
                txo_consume(r->tx);
            if (r->done && ok)
                finished_push(s, r);
        }
        if (!ok) {
            client_drop(s, c);
        } else {
            for (size_t i = 0; i < s->n_finished; i++)
                req_free(s, s->finished[i]);
            s->n_finished = 0;
        }
        client_maybe_free(s, c);
    }
}

/* ---- requests in ---- */

static bool utf8_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
        if (k == 9 || (k > 0 && i + k >= n))
            return false;
        for (size_t j = 1; j <= k; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
        i += k + 1;
    }
    return true;
}

/* Check sampling parameters; message into msg on failure. */
static bool check_sampling(const Gemma__V1__SamplingParams *sp, gm_sampling *out, char *msg, size_t cap)
{
    *out = GM_SAMPLING_GREEDY;
    if (!sp)
        return true;
    if (!isfinite(sp->temperature) || sp->temperature < 0) {
        snprintf(msg, cap, "temperature %g must be finite and >= 0", (double)sp->temperature);
        return false;
    }
    if (sp->top_k < 0) {
        snprintf(msg, cap, "top_k %d must be >= 0", sp->top_k);
        return false;
    }
    float tp = sp->top_p == 0.0f ? 1.0f : sp->top_p;
    if (!(tp > 0.0f && tp <= 1.0f)) {
        snprintf(msg, cap, "top_p %g must be in (0, 1]", (double)sp->top_p);
        return false;
    }
    out->temperature = sp->temperature;
    out->top_k = sp->top_k;
    out->top_p = tp;
    out->seed = sp->seed;
    return true;
}

static gd_req *req_new(gd_server *s, gd_client *c, uint64_t rid)
{
    gd_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->cl = c;
    r->rid = rid;
    r->t_arrival = now_ms();
    if (!u64map_put(&c->reqs, rid, r)) {
        free(r);
        return NULL;
    }
    return r;
}

/* Reject r before it reaches the scheduler. */
#define REJECT(code, ...)                                                                                              \
    do {                                                                                                               \
        req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__##code, __VA_ARGS__);       \
        goto out;                                                                                                      \
    } while (0)

static void on_generate(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid, const Gemma__V1__GenerateRequest *g)
{
    if (rid == 0) {
        reply_error(s, id, idlen, 0, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT, "request_id must be non-zero");
        return;
    }
    gd_client *c = client_get(s, id, idlen);
    if (!c) {
        reply_error(s, id, idlen, rid, GEMMA__V1__ERROR_CODE__INTERNAL, "out of memory (client table)");
        return;
    }
    if (u64map_get(&c->reqs, rid)) {
        reply_error(s, id, idlen, rid, GEMMA__V1__ERROR_CODE__DUPLICATE_ID,
                    "request id %llu is already in flight on this connection", (unsigned long long)rid);
        return;
    }
    gd_req *r = req_new(s, c, rid);
    if (!r) {
        reply_error(s, id, idlen, rid, GEMMA__V1__ERROR_CODE__INTERNAL, "out of memory (request)");
        client_maybe_free(s, c);
        return;
    }
    r->stream = g->stream;
    int32_t *ids = NULL;
    int32_t n_ids = 0;
    bool chat = false;
    char msg[512];
    gm_sampling samp;
    const char *stops[GD_MAX_STOP];
    size_t stop_lens[GD_MAX_STOP];

    if (s->stopping)
        REJECT(SHUTTING_DOWN, "gemmad is shutting down and accepts no new requests");
    if (!check_sampling(g->sampling, &samp, msg, sizeof(msg)))
        REJECT(INVALID_ARGUMENT, "%s", msg);
    if (g->max_tokens < 0)
        REJECT(INVALID_ARGUMENT, "max_tokens %d is negative", g->max_tokens);
    if (g->max_tokens > s->max_context)
        REJECT(INVALID_ARGUMENT, "max_tokens %d exceeds the context of %d tokens", g->max_tokens, s->max_context);
    if (g->n_stop > GD_MAX_STOP)
        REJECT(INVALID_ARGUMENT, "%zu stop strings: at most %d", g->n_stop, GD_MAX_STOP);
    if (g->n_stop > 0 && !s->tok)
        REJECT(INVALID_ARGUMENT, "stop strings need a tokenizer; this gemmad has none (start it with --model)");
    for (size_t i = 0; i < g->n_stop; i++) {
        size_t L = strlen(g->stop[i]);
        if (L == 0 || L > GD_MAX_STOP_LEN)
            REJECT(INVALID_ARGUMENT, "stop string %zu has %zu bytes: 1..%d allowed", i, L, GD_MAX_STOP_LEN);
        if (!utf8_valid((const uint8_t *)g->stop[i], L))
            REJECT(INVALID_ARGUMENT, "stop string %zu is not valid UTF-8", i);
        stops[i] = g->stop[i];
        stop_lens[i] = L;
    }
    if (g->n_stop_token_ids > GD_MAX_STOP_IDS)
        REJECT(INVALID_ARGUMENT, "%zu stop token ids: at most %d", g->n_stop_token_ids, GD_MAX_STOP_IDS);
    for (size_t i = 0; i < g->n_stop_token_ids; i++)
        if (g->stop_token_ids[i] < 0 || g->stop_token_ids[i] >= s->mcfg.vocab_size)
            REJECT(INVALID_ARGUMENT, "stop token id %d is outside the vocabulary [0, %d)", g->stop_token_ids[i],
                   s->mcfg.vocab_size);

    switch (g->prompt_case) {
    case GEMMA__V1__GENERATE_REQUEST__PROMPT_TEXT: {
        size_t len = strlen(g->text);
        if (len == 0)
            REJECT(INVALID_ARGUMENT, "the prompt is empty");
        if (!s->tok)
            REJECT(INVALID_ARGUMENT, "text prompts need a tokenizer; this gemmad has none: send token ids");
        if (gm_tok_encode(s->tok, g->text, len, true, &ids, &n_ids) != GM_OK)
            REJECT(INVALID_ARGUMENT, "cannot tokenize the prompt: %s", gm_last_error());
        break;
    }
    case GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS: {
        const Gemma__V1__TokenIds *t = g->tokens;
        if (!t || t->n_ids == 0)
            REJECT(INVALID_ARGUMENT, "the prompt is empty");
        if (t->n_ids > (size_t)s->max_context)
            REJECT(PROMPT_TOO_LONG, "the prompt has %zu tokens; the context is %d", t->n_ids, s->max_context);
        for (size_t i = 0; i < t->n_ids; i++)
            if (t->ids[i] < 0 || t->ids[i] >= s->mcfg.vocab_size)
                REJECT(INVALID_ARGUMENT, "prompt token %zu is %d, outside the vocabulary [0, %d)", i, t->ids[i],
                       s->mcfg.vocab_size);
        ids = malloc(t->n_ids * sizeof(int32_t));
        if (!ids)
            REJECT(INTERNAL, "out of memory");
        memcpy(ids, t->ids, t->n_ids * sizeof(int32_t));
        n_ids = (int32_t)t->n_ids;
        break;
    }
    case GEMMA__V1__GENERATE_REQUEST__PROMPT_CHAT: {
        const Gemma__V1__ChatPrompt *cp = g->chat;
        if (!cp || cp->n_messages == 0)
            REJECT(INVALID_ARGUMENT, "the chat has no messages");
        if (!s->tok)
            REJECT(INVALID_ARGUMENT, "chat prompts need a tokenizer; this gemmad has none: send token ids");
        if (cp->n_messages > 1024)
            REJECT(INVALID_ARGUMENT, "%zu chat messages: at most 1024", cp->n_messages);
        gm_chat_msg *cm = malloc(cp->n_messages * sizeof(*cm));
        if (!cm)
            REJECT(INTERNAL, "out of memory");
        for (size_t i = 0; i < cp->n_messages; i++) {
            cm[i].role = cp->messages[i]->role;
            cm[i].text = cp->messages[i]->text;
        }
        gm_status st = gm_tok_encode_chat(s->tok, cm, (int32_t)cp->n_messages, &ids, &n_ids);
        free(cm);
        if (st != GM_OK)
            REJECT(INVALID_ARGUMENT, "bad chat: %s", gm_last_error());
        chat = true;
        break;
    }
    default:
        REJECT(INVALID_ARGUMENT, "the prompt is empty (no text, tokens or chat given)");
    }
    r->n_prompt = n_ids;

    sched_req sr = {0};
    sr.prompt = ids;
    sr.n_prompt = n_ids;
    sr.max_tokens = g->max_tokens;
    sr.sampling = samp;
    sr.stop_ids = g->stop_token_ids;
    sr.n_stop_ids = (int32_t)g->n_stop_token_ids;
    sr.ignore_eos = g->ignore_eos;
    sr.stop_at_eot = chat;
    sr.user = r;
    switch (sched_add(s->sch, &sr, &r->seq)) {
    case SCHED_ACCEPTED:
        break;
    case SCHED_REJECT_INVALID:
        REJECT(INVALID_ARGUMENT, "%s", gm_last_error());
    case SCHED_REJECT_TOO_LONG:
        REJECT(PROMPT_TOO_LONG, "%s", gm_last_error());
    case SCHED_REJECT_FULL:
        REJECT(OVERLOADED, "%s", gm_last_error());
    default:
        REJECT(INTERNAL, "%s", gm_last_error());
    }
    r->tx = txo_new(stops, stop_lens, (int)g->n_stop);
    if (s->tok)
        r->dt = gm_detok_new(s->tok);
    if (!r->tx || (s->tok && !r->dt))
        REJECT(INTERNAL, "out of memory");
    s->c.requests_total++;
    s->c.prompt_tokens += n_ids;
out:
    free(ids);
}
#undef REJECT

static void on_cancel(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid, const Gemma__V1__CancelRequest *cr)
{
    gd_client *c = client_find(s, id, idlen, id_hash(id, idlen));
    gd_req *r = c ? u64map_get(&c->reqs, cr->target_request_id) : NULL;
    if (!r || r->done) {
        reply_error(s, id, idlen, rid, GEMMA__V1__ERROR_CODE__NOT_FOUND, "request %llu is not in flight",
                    (unsigned long long)cr->target_request_id);
        return;
    }
    req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
                 "cancelled by the client");
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__CancelReply rep = GEMMA__V1__CANCEL_REPLY__INIT;
    rep.request_id = rid;
    rep.target_request_id = cr->target_request_id;
    rep.found = true;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_CANCEL;
    m.cancel = &rep;
    send_to(s, id, idlen, &m);
}

static void on_health(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__HealthReply h = GEMMA__V1__HEALTH_REPLY__INIT;
    h.request_id = rid;
    h.serving = s->pool_ok && !s->stopping;
    h.shutting_down = s->stopping;
    char model[512]; /* a path from the operator: made valid UTF-8 like every reply string */
    gm_utf8_format(model, sizeof(model), "%s", s->cfg->model ? s->cfg->model : "");
    h.model = model;
    h.backend = (char *)gm_backend_name(s->cfg->backend);
    h.tp = s->cfg->tp;
    h.version = GD_VERSION;
    h.uptime_s = (now_ms() - s->start_ms) / 1e3;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH;
    m.health = &h;
    send_to(s, id, idlen, &m);
}

static void on_stats(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__StatsReply r = GEMMA__V1__STATS_REPLY__INIT;
    double now = now_ms();
    r.request_id = rid;
    r.running = sched_running(s->sch);
    r.waiting = sched_waiting(s->sch);
    r.kv_blocks_total = sched_kv_total(s->sch);
    r.kv_blocks_used = sched_kv_used(s->sch);
    r.kv_blocks_free = sched_kv_free(s->sch);
    r.kv_block_size = s->cfg->kv_block_size;
    r.requests_total = s->c.requests_total;
    r.requests_finished = s->c.requests_finished;
    r.requests_failed = s->c.requests_failed;
    r.requests_cancelled = s->c.requests_cancelled;
    r.preemptions = sched_preemptions(s->sch);
    r.prompt_tokens = s->c.prompt_tokens;
    r.completion_tokens = s->c.completion_tokens;
    r.steps = s->c.steps;
    r.tokens_per_s = met_rate_get(&s->rate, now / 1e3, s->c.completion_tokens);
    r.ttft_p50_ms = met_ring_pct(&s->ttft, 50);
    r.ttft_p99_ms = met_ring_pct(&s->ttft, 99);
    r.tpot_p50_ms = met_ring_pct(&s->tpot, 50);
    r.tpot_p99_ms = met_ring_pct(&s->tpot, 99);
    r.queue_p50_ms = met_ring_pct(&s->queue, 50);
    r.queue_p99_ms = met_ring_pct(&s->queue, 99);
    r.step_avg_ms = met_ring_mean(&s->step_ms);
    r.clients = s->n_clients;
    r.worker_restarts = s->c.worker_restarts;
    r.uptime_s = (now - s->start_ms) / 1e3;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_STATS;
    m.stats = &r;
    send_to(s, id, idlen, &m);
}

/* One message from a client: [routing id][payload] (+ anything else = malformed). */
static void on_client_message(gd_server *s, const uint8_t *id, size_t idlen, const uint8_t *data, size_t len,
                              bool extra)
{
    if (extra) {
        reply_error(s, id, idlen, 0, GEMMA__V1__ERROR_CODE__MALFORMED,
                    "expected one frame holding a gemma.v1.ClientMessage, got several");
        return;
    }
    Gemma__V1__ClientMessage *cm = gemma__v1__client_message__unpack(NULL, len, data);
    if (!cm) {
        reply_error(s, id, idlen, 0, GEMMA__V1__ERROR_CODE__MALFORMED,
                    "the %zu-byte frame is not a gemma.v1.ClientMessage", len);
        return;
    }
    if (cm->protocol_version != GD_PROTOCOL_VERSION) {
        reply_error(s, id, idlen, cm->request_id, GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION,
                    "client speaks protocol version %u; gemmad speaks %d (gemma.v1)", cm->protocol_version,
                    GD_PROTOCOL_VERSION);
    } else {
        switch (cm->body_case) {
        case GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE:
            on_generate(s, id, idlen, cm->request_id, cm->generate);
            break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL:
            on_cancel(s, id, idlen, cm->request_id, cm->cancel);
            break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH:
            on_health(s, id, idlen, cm->request_id);
            break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_STATS:
            on_stats(s, id, idlen, cm->request_id);
            break;
        default:
            reply_error(s, id, idlen, cm->request_id, GEMMA__V1__ERROR_CODE__UNKNOWN_TYPE,
                        "the message has no body gemmad knows (generate, cancel, health, stats)");
            break;
        }
    }
    gemma__v1__client_message__free_unpacked(cm, NULL);
}

/* A REQ client: answer MALFORMED in the REQ envelope [id][empty][ServerMessage], which it can read. */
static void reply_req_socket(gd_server *s, const void *id, size_t idlen)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__Error e = GEMMA__V1__ERROR__INIT;
    e.code = GEMMA__V1__ERROR_CODE__MALFORMED;
    e.message = "gemmad speaks to DEALER sockets (one frame per message, many requests in flight); "
                "this message came from a REQ socket: connect a ZMQ_DEALER instead";
    m.protocol_version = GD_PROTOCOL_VERSION;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_ERROR;
    m.error = &e;
    size_t n = gemma__v1__server_message__get_packed_size(&m);
    if (!ensure_txbuf(s, n))
        return;
    gemma__v1__server_message__pack(&m, s->txbuf);
    if (zmq_send(s->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(s->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 || zmq_send(s->router, s->txbuf, n, ZMQ_DONTWAIT) < 0)
        GM_DEBUG("REQ client gone (%s)", zmq_strerror(errno));
}

/* Read up to GD_RECV_BATCH client messages without blocking. */
static void read_clients(gd_server *s)
{
    for (int i = 0; i < GD_RECV_BATCH; i++) {
        zmq_msg_t idm, body;
        zmq_msg_init(&idm);
        if (zmq_msg_recv(&idm, s->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&idm);
            return;
        }
        if (!zmq_msg_more(&idm)) { /* cannot happen on a ROUTER; ignore */
            zmq_msg_close(&idm);
            continue;
        }
        zmq_msg_init(&body);
        if (zmq_msg_recv(&body, s->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&body);
            zmq_msg_close(&idm);
            return;
        }
        bool extra = zmq_msg_more(&body);
        /* [id][empty][payload]: a REQ socket's envelope. A reply without the empty delimiter would be
         * dropped by the REQ socket unseen, so this one answers in the REQ shape. */
        bool req_envelope = extra && zmq_msg_size(&body) == 0;
        for (bool more = extra; more;) { /* drop the extra frames */
            zmq_msg_t x;
            zmq_msg_init(&x);
            int rc = zmq_msg_recv(&x, s->router, ZMQ_DONTWAIT);
            more = rc >= 0 && zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
        if (req_envelope)
            reply_req_socket(s, zmq_msg_data(&idm), zmq_msg_size(&idm));
        else if (zmq_msg_size(&idm) <= GD_ID_MAX)
            on_client_message(s, zmq_msg_data(&idm), zmq_msg_size(&idm), zmq_msg_data(&body), zmq_msg_size(&body),
                              extra);
        zmq_msg_close(&body);
        zmq_msg_close(&idm);
    }
}

/* ---- steps ---- */

/* The workers failed: every running request ends with WORKER_FAILED; restart them. */
static void workers_failed(gd_server *s, const char *why)
{
    GM_ERROR("workers failed: %s; restarting them", why);
    int32_t n = sched_fail_running(s->sch, s->failed);
    for (int32_t i = 0; i < n; i++) {
        gd_req *r = s->failed[i]->user;
        req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED,
                     "a worker failed (%s); gemmad is restarting its workers", why);
    }
    sched_abandon(s->sch);
    s->n_plans = 0;
    flush_clients(s); /* tell them before the (slow) restart */
    s->c.worker_restarts++;
    gm_status st = wk_pool_restart(s->pool);
    if (st != GM_OK) {
        GM_ERROR("worker restart failed: %s: %s; retrying in 5 s", gm_status_str(st), gm_last_error());
        s->pool_ok = false;
        s->next_restart_ms = now_ms() + 5000;
    } else {
        GM_INFO("workers restarted");
        s->pool_ok = true;
    }
}

/* The oldest step in flight is done: commit its tokens, stream them. */
static void on_step_done(gd_server *s)
{
    double now = now_ms();
    sched_plan *plan = &s->plans[0];
    double began = s->plan_sent_ms[0] > s->last_done_ms ? s->plan_sent_ms[0] : s->last_done_ms;
    met_ring_add(&s->step_ms, now - began); /* pipelined: the time since the previous step ended */
    s->last_done_ms = now;
    s->c.steps++;
    sched_commit_step(s->sch, plan, s->step_tokens);
    char buf[GM_DETOK_MAX_OUT];
    for (int32_t i = 0; i < plan->n; i++) {
        sched_seq *q = plan->seqs[i];
        if (!q)
            continue;
        gd_req *r = q->user;
        if (r->done)
            continue;
        bool got = plan->got[i];
        if (got) {
            if (r->t_first == 0)
                r->t_first = now;
            s->c.completion_tokens++;
            if (r->dt && !(q->state == SCHED_FINISHED && q->stop_token)) {
                size_t n = gm_detok_push(r->dt, q->tokens[q->n_tokens - 1], buf);
                if (n && txo_append(r->tx, buf, n) && q->state != SCHED_FINISHED)
                    sched_finish_seq(s->sch, q, SCHED_FINISH_STOP);
            }
        }
        if (q->state == SCHED_FINISHED) {
            switch (q->finish) {
            case SCHED_FINISH_LENGTH:
                req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_LENGTH, GEMMA__V1__ERROR_CODE__ERROR_CODE_NONE,
                             NULL);
                break;
            case SCHED_FINISH_STOP:
                req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_STOP, GEMMA__V1__ERROR_CODE__ERROR_CODE_NONE,
                             NULL);
                break;
            case SCHED_FINISH_CANCELLED:
                req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
                             "cancelled");
                break;
            default:
                req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                             "the engine returned no token");
                break;
            }
        } else if (got && r->stream) {
            req_mark_dirty(s, r);
        }
    }
    s->n_plans--;
    for (int32_t k = 0; k < s->n_plans; k++) {
        s->plans[k] = s->plans[k + 1];
        s->plan_sent_ms[k] = s->plan_sent_ms[k + 1];
    }
}

static void on_workers_readable(gd_server *s)
{
    for (;;) {
        bool done = false;
        if (s->n_plans == 0) { /* nothing expected: let the pool drop stale messages */
            wk_pool_collect(s->pool, NULL, 0, &done);
            return;
        }
        gm_status st = wk_pool_collect(s->pool, s->step_tokens, s->plans[0].n, &done);
        if (st != GM_OK) {
            char why[512];
            snprintf(why, sizeof(why), "%s: %s", gm_status_str(st), gm_last_error());
            workers_failed(s, why);
            return;
        }
        if (!done)
            return;
        on_step_done(s);
    }
}

/* Plan and submit steps while fewer than depth are in flight. */
static void maybe_submit(gd_server *s)
{
    while (s->pool_ok && s->n_plans < s->depth) {
        sched_plan *plan = &s->plans[s->n_plans];
        int32_t n = sched_plan_step(s->sch, plan);
        if (n == 0)
            return;
        double now = now_ms();
        for (int32_t i = 0; i < n; i++) {
            gd_req *r = plan->seqs[i]->user;
            if (r->t_sched == 0)
                r->t_sched = now;
        }
        if (plan->n_preempted)
            GM_DEBUG("step %llu: %d sequence(s) preempted", (unsigned long long)plan->serial, plan->n_preempted);
        s->plan_sent_ms[s->n_plans] = now;
        s->n_plans++; /* outstanding in the scheduler now: workers_failed abandons it */
        gm_status st = wk_pool_submit(s->pool, plan->steps, n);
        if (st != GM_OK) {
            char why[512];
            snprintf(why, sizeof(why), "submit: %s: %s", gm_status_str(st), gm_last_error());
            workers_failed(s, why);
            return;
        }
    }
}

/* Cancel everything still queued or running (shutdown deadline). */
static void cancel_all(gd_server *s, err_code code, const char *why)
{
    for (int64_t i = 0; i < s->clients.cap; i++) {
        if (!s->clients.ents[i].key)
            continue;
        for (gd_client *c = s->clients.ents[i].val; c; c = c->hnext)
            for (int64_t j = 0; j < c->reqs.cap; j++)
                if (c->reqs.ents[j].key) {
                    gd_req *r = c->reqs.ents[j].val;
                    if (!r->done)
                        req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, code, "%s", why);
                }
    }
}

/* ---- lifecycle ---- */

gm_status gd_server_new(const gd_config *cfg, gd_server **out)
{
    *out = NULL;
    gd_server *s = calloc(1, sizeof(*s));
    if (!s)
        return gm_fail(GM_ERR_NOMEM, "server");
    s->cfg = cfg;
    s->start_ms = now_ms();
    gm_status st;

    /* the listen endpoint first: a port in use fails now, not after a model load of minutes */
    s->zctx = zmq_ctx_new();
    s->router = s->zctx ? zmq_socket(s->zctx, ZMQ_ROUTER) : NULL;
    if (!s->router) {
        st = gm_fail(GM_ERR_ZMQ, "zmq ROUTER socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int one = 1, hwm = 100000, ivl = 2000, hto = 10000, linger = 2000;
    zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    zmq_setsockopt(s->router, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s->router, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s->router, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(s->router, ZMQ_HEARTBEAT_TIMEOUT, &hto, sizeof(hto));
    zmq_setsockopt(s->router, ZMQ_LINGER, &linger, sizeof(linger));
    if ((st = glue_new(s->zctx, &cfg->cluster, s->router, &s->glue)) != GM_OK)
        goto fail;
    if (zmq_bind(s->router, cfg->listen) != 0) {
        st = gm_fail(GM_ERR_ZMQ, "cannot listen on %s: %s", cfg->listen, zmq_strerror(errno));
        goto fail;
    }
    if (cfg->model && *cfg->model) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/tokenizer.model", cfg->model);
        if (access(path, R_OK) == 0) {
            st = gm_tok_load(path, &s->tok);
            if (st != GM_OK)
                goto fail;
        } else {
            GM_WARN("%s not found: only token-id prompts are accepted and text deltas are empty", path);
        }
    } else {
        GM_INFO("no model: null backend with gemma-2b's shapes; only token-id prompts are accepted");
    }

    wk_pool_opts wo;
    memset(&wo, 0, sizeof(wo));
    wo.worker_bin = cfg->worker_bin;
    wo.log_level = cfg->log_level;
    wo.ready_timeout_ms = cfg->ready_timeout_ms;
    if ((st = gd_config_spec(cfg, &wo.spec)) != GM_OK)
        goto fail;
    GM_INFO("starting %d %s worker(s)%s%s", cfg->tp, gm_backend_name(cfg->backend), wo.spec.model_dir[0] ? " for " : "",
            wo.spec.model_dir);
    st = wk_pool_start(&wo, &s->pool);
    if (st != GM_OK)
        goto fail;
    s->pool_ok = true;
    s->mcfg = *wk_pool_config(s->pool);
    const gm_sizing *sz = wk_pool_sizing(s->pool); /* what the workers decided (ctl/sizing.h) */
    s->max_context = sz->max_context;
    sched_opts so = {0};
    so.max_seqs = sz->max_seqs;
    so.max_tokens_per_step = sz->max_tokens;
    so.max_context = s->max_context;
    so.max_waiting = cfg->max_waiting;
    so.kv_blocks = wk_pool_kv_blocks(s->pool);
    so.kv_block_size = cfg->kv_block_size;
    so.eos_id = s->mcfg.eos_id > 0 ? s->mcfg.eos_id : GM_TOK_EOS;
    so.eot_id = GM_TOK_END_OF_TURN;
    s->sch = sched_new(&so);
    if (!s->sch) {
        st = GM_ERR_INVALID_ARG;
        goto fail;
    }
    s->depth = cfg->run_ahead ? 2 : 1;
    s->step_tokens = calloc((size_t)so.max_seqs, sizeof(int32_t));
    s->failed = calloc((size_t)so.max_seqs, sizeof(sched_seq *));
    if (!s->step_tokens || !s->failed) {
        st = gm_fail(GM_ERR_NOMEM, "step buffers");
        goto fail;
    }

    if ((st = glue_start(s->glue, s->router)) != GM_OK)
        goto fail;
    GM_INFO("serving %s on %s: %lld KV blocks of %d tokens, %d seqs, %d tokens/step, context %d, vocab %d%s%s",
            cfg->model ? cfg->model : "(no model)", cfg->listen, (long long)so.kv_blocks, so.kv_block_size,
            so.max_seqs, so.max_tokens_per_step, so.max_context, s->mcfg.vocab_size,
            s->tok ? "" : ", no tokenizer", cfg->run_ahead ? "" : ", no run-ahead");
    *out = s;
    return GM_OK;
fail:
    {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", gm_last_error());
        gd_server_destroy(&s);
        return gm_fail(st ? st : GM_ERR_INTERNAL, "%s", msg);
    }
}

void gd_server_destroy(gd_server **ps)
{
    if (!ps || !*ps)
        return;
    gd_server *s = *ps;
    for (int64_t i = 0; i < s->clients.cap; i++) {
        if (!s->clients.ents[i].key)
            continue;
        for (gd_client *c = s->clients.ents[i].val, *n; c; c = n) {
            n = c->hnext;
            for (int64_t j = 0; j < c->reqs.cap; j++)
                if (c->reqs.ents[j].key) {
                    gd_req *r = c->reqs.ents[j].val;
                    if (r->seq)
                        sched_seq_free(s->sch, &r->seq);
                    gm_detok_destroy(&r->dt);
                    txo_destroy(&r->tx);
                    free(r->errmsg);
                    free(r);
                }
            u64map_free(&c->reqs);
            free(c);
        }
    }
    u64map_free(&s->clients);
    if (s->router)
        zmq_close(s->router);
    glue_destroy(&s->glue);
    if (s->zctx)
        zmq_ctx_term(s->zctx);
    wk_pool_destroy(&s->pool);
    sched_destroy(&s->sch);
    gm_tok_destroy(&s->tok);
    free(s->step_tokens);
    free(s->failed);
    free(s->chunks);
    free(s->chunk_ptrs);
    free(s->usages);
    free(s->chunk_reqs);
    free(s->txbuf);
    free(s->finished);
    free(s);
    *ps = NULL;
}

static void begin_shutdown(gd_server *s, int sig)
{
    if (s->stopping) {
        GM_WARN("second signal %d: cancelling in-flight work now", sig);
        s->stop_deadline_ms = now_ms();
        return;
    }
    s->stopping = true;
    glue_unregister(s->glue, "shutdown");
    s->stop_deadline_ms = now_ms() + s->cfg->shutdown_timeout_ms;
    GM_INFO("signal %d: shutting down; finishing %d running and %d waiting request(s) (at most %d ms)", sig,
            sched_running(s->sch), sched_waiting(s->sch), s->cfg->shutdown_timeout_ms);
}

gm_status gd_server_run(gd_server *s, int signal_fd)
{
    for (;;) {
        double now = now_ms();
        /* before sleep: plan the next step, send what the last one produced */
        if (!s->pool_ok && now >= s->next_restart_ms) {
            gm_status st = wk_pool_restart(s->pool);
            if (st == GM_OK) {
                GM_INFO("workers restarted");
                s->pool_ok = true;
            } else {
                GM_ERROR("worker restart failed: %s; retrying in 5 s", gm_last_error());
                s->next_restart_ms = now + 5000;
            }
        }
        if (s->stopping && now >= s->stop_deadline_ms && !sched_idle(s->sch))
            cancel_all(s, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN, "gemmad shut down before the request finished");
        maybe_submit(s);
        flush_clients(s);
        met_rate_tick(&s->rate, now / 1e3, s->c.completion_tokens);
        if (now >= s->next_report_ms) {
            if (s->c.steps != s->reported_steps)
                GM_INFO("running %d, waiting %d, KV %lld/%lld blocks, %.0f tokens/s, %lld done, %lld failed, "
                        "%lld cancelled, %lld preempted",
                        sched_running(s->sch), sched_waiting(s->sch), (long long)sched_kv_used(s->sch),
                        (long long)sched_kv_total(s->sch),
                        met_rate_get(&s->rate, now / 1e3, s->c.completion_tokens),
                        (long long)s->c.requests_finished, (long long)s->c.requests_failed,
                        (long long)s->c.requests_cancelled, (long long)sched_preemptions(s->sch));
            s->reported_steps = s->c.steps;
            s->next_report_ms = now + 10000;
        }
        if (s->stopping && sched_idle(s->sch) && !s->dirty_head) {
            GM_INFO("shutdown complete: %lld requests served", (long long)s->c.requests_finished);
            return GM_OK;
        }

        zmq_pollitem_t items[3] = {
            {s->router, 0, ZMQ_POLLIN, 0},
            {wk_pool_socket(s->pool), 0, ZMQ_POLLIN, 0},
            {NULL, signal_fd, ZMQ_POLLIN, 0},
        };
        int nitems = signal_fd >= 0 ? 3 : 2;
        long timeout = 1000;
        if (s->stopping) {
            double left = s->stop_deadline_ms - now;
            timeout = left < 1 ? 1 : left < 1000 ? (long)left : 1000;
        }
        if (!s->pool_ok)
            timeout = 500;
        int rc = zmq_poll(items, nitems, timeout);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return gm_fail(GM_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
        }
        if (nitems == 3 && (items[2].revents & ZMQ_POLLIN)) {
            unsigned char sigs[64];
            ssize_t n = read(signal_fd, sigs, sizeof(sigs));
            bool child = false;
            for (ssize_t i = 0; i < n; i++) {
                if (sigs[i] == SIGCHLD)
                    child = true;
                else
                    begin_shutdown(s, sigs[i]);
            }
            if (child && s->pool_ok && !wk_pool_alive(s->pool))
                workers_failed(s, "a worker process exited");
        }
        if (s->pool_ok && (items[1].revents & ZMQ_POLLIN))
            on_workers_readable(s);
        if (items[0].revents & ZMQ_POLLIN)
            read_clients(s);
        if (rc == 0 && s->pool_ok && !wk_pool_alive(s->pool)) /* periodic check, in case SIGCHLD was missed */
            workers_failed(s, "a worker process exited");
    }
}
