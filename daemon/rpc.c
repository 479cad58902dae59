/* rpc.c - the protobuf front door (proto/gemma.proto over a ZeroMQ ROUTER): client connections, their
 * messages, and one ServerMessage per client per step carrying every chunk it is owed (server_int.h).
 * No allocation per token; one pack and one zmq_send per client per step. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/log.h"
#include "common/pbscan.h"
#include "common/utf8.h"
#include "daemon/server_int.h"
#include "daemon/wire.h"

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

typedef enum send_res {
    SEND_OK = 0,
    SEND_FULL, /* the client's queue is at its high-water mark: it is not reading */
    SEND_GONE, /* no such peer any more */
} send_res;

/* Pack m and send it to the client with routing id (id, len). */
static send_res send_to(gd_server *s, const void *id, size_t idlen, Gemma__V1__ServerMessage *m)
{
    m->protocol_version = GD_PROTOCOL_VERSION;
    bool chunks = m->body_case == GEMMA__V1__SERVER_MESSAGE__BODY__NOT_SET; /* the per-step message: by hand */
    size_t n = chunks ? wire_chunks_size(m) : gemma__v1__server_message__get_packed_size(m);
    if (!ensure_txbuf(s, n)) { /* our problem, not the client's: drop this message, keep the client */
        GM_ERROR("out of memory packing a %zu-byte reply", n);
        return SEND_OK;
    }
    if (chunks)
        wire_chunks_pack(m, s->txbuf);
    else
        gemma__v1__server_message__pack(m, s->txbuf);
    if (zmq_send(s->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = errno;
        GM_DEBUG("client %s (%s)", e == EAGAIN ? "not reading" : "gone", zmq_strerror(e));
        return e == EAGAIN ? SEND_FULL : SEND_GONE;
    }
    if (zmq_send(s->router, s->txbuf, n, ZMQ_DONTWAIT) < 0) {
        GM_WARN("send of %zu bytes failed: %s", n, zmq_strerror(errno));
        return SEND_GONE;
    }
    return SEND_OK;
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

/* ---- clients ---- */

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

void gd_rpc_mark_dirty(gd_server *s, gd_req *r)
{
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

void gd_rpc_forget(gd_server *s, gd_req *r)
{
    (void)s;
    u64map_del(&r->cl->reqs, r->rid);
    r->cl = NULL;
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

/* Room for n TokenLogprobs and n_str strings of their alternatives. */
static bool ensure_lps(gd_server *s, size_t n, size_t n_str)
{
    if (n_str > s->lp_strs_cap) {
        size_t c = n_str + n_str / 2 + 64;
        void *a = realloc(s->lp_strs, c * sizeof(*s->lp_strs));
        if (!a)
            return false;
        s->lp_strs = a;
        s->lp_strs_cap = c;
    }
    if (n <= s->lp_cap)
        return true;
    size_t cap = s->lp_cap ? s->lp_cap * 2 : 256;
    while (cap < n)
        cap *= 2;
    void *a = realloc(s->lps, cap * sizeof(*s->lps));
    if (!a)
        return false;
    s->lps = a;
    a = realloc(s->lp_ptrs, cap * sizeof(*s->lp_ptrs));
    if (!a)
        return false;
    s->lp_ptrs = a;
    s->lp_cap = cap;
    return true;
}

/* A token's string for TokenLogprobs (empty without a tokenizer). */
static ProtobufCBinaryData token_bytes(const gd_server *s, int32_t id)
{
    size_t n = 0;
    const char *p = s->tok ? gm_tok_token_str(s->tok, id, &n) : NULL;
    return (ProtobufCBinaryData){p ? n : 0, (uint8_t *)p};
}

/* Log-probabilities choice ch of r owes with its next chunk: one per token id from n_sent on (fewer only
 * when some could not be kept). */
static size_t lps_owed(const gd_req *r, int32_t ch)
{
    const gd_choice *c = ch < r->n_ch ? &r->ch[ch] : NULL;
    if (r->lp_top < 0 || !c || !c->seq)
        return 0;
    int32_t gen = sched_seq_generated(c->seq), upto = gen < c->n_lp ? gen : c->n_lp;
    return upto > c->n_sent ? (size_t)(upto - c->n_sent) : 0;
}

/* The chunk's logprobs field: TokenLogprobs messages for choice i's tokens [n_sent, n_sent + n) in
 * s->lps[at..], their alternatives' strings in s->lp_strs[*at_str..]. */
static void chunk_logprobs(gd_server *s, const gd_req *r, int32_t ci, size_t n, size_t at, size_t *at_str,
                           Gemma__V1__GenerateChunk *ch)
{
    const gd_choice *c = &r->ch[ci];
    const int32_t *gen = c->seq->tokens + c->seq->n_prompt;
    for (size_t j = 0; j < n; j++) {
        Gemma__V1__TokenLogprobs *t = &s->lps[at + j];
        *t = (Gemma__V1__TokenLogprobs)GEMMA__V1__TOKEN_LOGPROBS__INIT;
        const int32_t *ids;
        const float *lps;
        int32_t k;
        int32_t i = c->n_sent + (int32_t)j;
        t->token = token_bytes(s, gen[i]);
        if (gd_req_logprobs(r, ci, i, &t->logprob, &ids, &lps, &k)) {
            t->n_top_ids = t->n_top_logprobs = t->n_top_tokens = (size_t)k;
            t->top_ids = (int32_t *)ids;
            t->top_logprobs = (float *)lps;
            t->top_tokens = s->lp_strs + *at_str;
            for (int32_t m = 0; m < k; m++)
                s->lp_strs[(*at_str)++] = token_bytes(s, ids[m]);
        }
        s->lp_ptrs[at + j] = t;
    }
    ch->n_logprobs = n;
    ch->logprobs = n ? s->lp_ptrs + at : NULL;
}

static void finished_push(gd_server *s, gd_req *r)
{
    if (s->n_finished == s->finished_cap) {
        size_t cap = s->finished_cap ? s->finished_cap * 2 : 256;
        gd_req **f = realloc(s->finished, cap * sizeof(*f));
        if (!f) {
            gd_req_free(s, r); /* cannot defer: free now */
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
        r->cl = NULL; /* the whole table goes below */
        gd_req_free(s, r); /* its KV blocks are freed now */
    }
    u64map_free(&c->reqs);
    if (n)
        GM_INFO("client vanished: %lld request(s) cancelled, their KV blocks freed", (long long)n);
}

/* Chunk k of the flush: what choice i (cc; NULL when the request has none) of r has news of; its
 * log-probabilities go to s->lps[*at_lp..] and their strings to s->lp_strs[*at_str..]. Nothing is
 * marked sent here: gd_rpc_flush does that once the client took the message. */
static void chunk_put(gd_server *s, gd_req *r, gd_choice *cc, int32_t i, size_t k, size_t *at_lp, size_t *at_str)
{
    Gemma__V1__GenerateChunk *ch = &s->chunks[k];
    *ch = (Gemma__V1__GenerateChunk)GEMMA__V1__GENERATE_CHUNK__INIT;
    ch->request_id = r->rid;
    ch->index = i;
    if (cc && cc->seq) {
        sched_seq *q = cc->seq;
        int32_t gen = sched_seq_generated(q);
        size_t nl = lps_owed(r, i);
        chunk_logprobs(s, r, i, nl, *at_lp, at_str, ch);
        *at_lp += nl;
        ch->n_token_ids = (size_t)(gen - cc->n_sent);
        ch->token_ids = q->tokens + q->n_prompt + cc->n_sent;
    }
    if (cc && cc->tx) {
        size_t tl;
        const char *t = txo_ready(cc->tx, &tl);
        ch->text.len = tl;
        ch->text.data = (uint8_t *)t;
    }
    bool ends = cc ? cc->done && !cc->reported : r->done;
    if (ends) {
        ch->finish_reason = cc ? cc->finish : r->finish;
        if (ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_ERROR ||
            ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED) {
            ch->error_code = r->err;
            if (r->errmsg)
                ch->error_message = r->errmsg;
        }
    }
    s->chunk_ptrs[k] = ch;
    s->chunk_reqs[k] = r;
}

/* Bytes of output held for c: token ids and text of its dirty requests' choices not sent yet. */
static int64_t client_held(const gd_client *c)
{
    int64_t held = 0;
    for (const gd_req *r = c->dirty_head; r; r = r->dirty_next)
        for (int32_t i = 0; i < r->n_ch; i++) {
            const gd_choice *cc = &r->ch[i];
            if (cc->seq)
                held += 4 * (int64_t)(sched_seq_generated(cc->seq) - cc->n_sent);
            if (cc->tx) {
                size_t tl;
                txo_ready(cc->tx, &tl);
                held += (int64_t)tl;
            }
        }
    return held;
}

/* Take every request off c's dirty list. */
static void client_undirty(gd_client *c)
{
    for (gd_req *r = c->dirty_head, *next; r; r = next) {
        next = r->dirty_next;
        r->dirty = false;
        r->dirty_next = NULL;
    }
    c->dirty_head = c->dirty_tail = NULL;
}

/* c's queue is full: keep its output in its requests and retry soon, or - past client_stall_ms
 * without taking anything, past client_output_bytes held, or at the shutdown deadline - give up on
 * it: every request of it is cancelled and its KV blocks freed. true when c was dropped. */
static bool client_stalled(gd_server *s, gd_client *c, double now)
{
    const gd_config *cfg = s->cfg;
    if (c->stalled_since == 0)
        c->stalled_since = now;
    int64_t held = client_held(c);
    double stalled = now - c->stalled_since;
    if ((cfg->client_stall_ms > 0 && stalled >= cfg->client_stall_ms) ||
        (cfg->client_output_bytes > 0 && held > cfg->client_output_bytes) ||
        (s->stopping && now >= s->stop_deadline_ms)) {
        GM_WARN("a client took no reply for %.0f ms with %lld bytes of output waiting for it: its requests are "
                "cancelled (client_stall_ms %d, client_output_bytes %lld)", stalled, (long long)held,
                cfg->client_stall_ms, (long long)cfg->client_output_bytes);
        client_undirty(c);
        client_drop(s, c);
        return true;
    }
    c->retry_ms = now + GD_STALL_RETRY_MS;
    return false;
}

/* Append c to the list (*head, *tail) linked by dirty_next. */
static void client_list_push(gd_client **head, gd_client **tail, gd_client *c)
{
    c->dirty_next = NULL;
    if (*tail)
        (*tail)->dirty_next = c;
    else
        *head = c;
    *tail = c;
}

/* Send every dirty client its chunks: one message each. A client that is not reading keeps its
 * output in its requests (client_stalled has the rule). */
void gd_rpc_flush(gd_server *s)
{
    double now = gm_now_ms();
    gd_client *keep_head = NULL, *keep_tail = NULL; /* stalled, to retry later */
    while (s->dirty_head) {
        gd_client *c = s->dirty_head;
        s->dirty_head = c->dirty_next;
        if (!s->dirty_head)
            s->dirty_tail = NULL;
        c->dirty_next = NULL;
        if (c->stalled_since > 0 && now < c->retry_ms && !(s->stopping && now >= s->stop_deadline_ms)) {
            client_list_push(&keep_head, &keep_tail, c);
            continue;
        }
        c->dirty = false;
        size_t n = 0, n_lp = 0, n_str = 0;
        for (gd_req *r = c->dirty_head; r; r = r->dirty_next) {
            n += r->n_ch > 1 ? (size_t)r->n_ch : 1;
            for (int32_t i = 0; i < r->n_ch; i++) {
                size_t o = lps_owed(r, i);
                n_lp += o;
                n_str += o * (size_t)(r->lp_top > 0 ? r->lp_top : 0);
            }
        }
        if (!ensure_chunks(s, n) || !ensure_lps(s, n_lp, n_str)) {
            GM_ERROR("out of memory for %zu chunks", n);
            continue;
        }
        size_t k = 0, at_lp = 0, at_str = 0;
        for (gd_req *r = c->dirty_head; r; r = r->dirty_next) {
            size_t first = k;
            /* n > 1: a chunk per choice with news (and one for the request's end); a request refused before
             * it was scheduled ends in one chunk, whatever its n */
            int32_t nch = r->n_ch > 1 && r->ch[0].seq ? r->n_ch : 1;
            for (int32_t i = 0; i < nch; i++) {
                gd_choice *cc = r->n_ch ? &r->ch[i] : NULL;
                if (nch > 1 && !gd_choice_pending(cc) && !(r->done && i == nch - 1 && k == first))
                    continue;
                chunk_put(s, r, cc, i, k++, &at_lp, &at_str);
            }
            if (r->done) { /* the request's end: usage with its last chunk */
                Gemma__V1__Usage *u = &s->usages[k - 1];
                *u = (Gemma__V1__Usage)GEMMA__V1__USAGE__INIT;
                u->prompt_tokens = r->n_prompt;
                for (int32_t i = 0; i < r->n_ch; i++)
                    if (r->ch[i].seq) {
                        u->completion_tokens += sched_seq_generated(r->ch[i].seq);
                        u->preemptions += r->ch[i].seq->preemptions;
                    }
                u->cached_tokens = r->n_ch && r->ch[0].seq ? r->ch[0].seq->n_cached : 0;
                u->queue_ms = r->t_sched > 0 ? r->t_sched - r->t_arrival : 0;
                u->ttft_ms = r->t_first > 0 ? r->t_first - r->t_arrival : 0;
                u->total_ms = r->t_end - r->t_arrival;
                s->chunks[k - 1].usage = u;
            }
        }
        Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
        m.n_chunks = k;
        m.chunks = s->chunk_ptrs;
        send_res res = send_to(s, c->id, c->id_len, &m);
        if (res == SEND_FULL) { /* nothing was taken: the requests keep their output */
            c->dirty = true;
            if (!client_stalled(s, c, now)) {
                client_list_push(&keep_head, &keep_tail, c);
                continue;
            }
            c->dirty = false;
            client_maybe_free(s, c);
            continue;
        }
        c->stalled_since = 0;
        client_undirty(c);
        for (size_t i = 0; i < k; i++) {
            gd_req *r = s->chunk_reqs[i];
            if (r->n_ch) {
                gd_choice *cc = &r->ch[s->chunks[i].index];
                cc->n_sent += (int32_t)s->chunks[i].n_token_ids;
                if (cc->tx)
                    txo_consume(cc->tx);
                cc->reported = cc->done;
            }
            if (s->chunks[i].usage && res == SEND_OK) /* the request's last chunk */
                finished_push(s, r);
        }
        if (res == SEND_GONE) {
            client_drop(s, c);
        } else {
            for (size_t i = 0; i < s->n_finished; i++)
                gd_req_free(s, s->finished[i]);
            s->n_finished = 0;
        }
        client_maybe_free(s, c);
    }
    s->dirty_head = keep_head;
    s->dirty_tail = keep_tail;
}

long gd_rpc_poll_ms(gd_server *s, long cap)
{
    return s->dirty_head && cap > GD_STALL_RETRY_MS ? GD_STALL_RETRY_MS : cap; /* stalled clients to retry */
}

/* ---- requests in ---- */

/* A GenerateRequest: the envelope checks (request id, duplicates), then admission (admit.c). */
static void on_generate(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid, const Gemma__V1__GenerateRequest *g,
                        const uint8_t *frame, size_t frame_len)
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
    gd_req *r = gd_req_new(s, GD_FRONT_RPC, rid);
    if (r && !u64map_put(&c->reqs, rid, r)) {
        gd_req_free(s, r);
        r = NULL;
    }
    if (r)
        r->cl = c;
    if (!r) {
        reply_error(s, id, idlen, rid, GEMMA__V1__ERROR_CODE__INTERNAL, "out of memory (request)");
        client_maybe_free(s, c);
        return;
    }
    char nul[128];
    if (pbscan_find_nul(frame, frame_len, nul, sizeof nul)) {
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT, "%s",
                        nul);
        return;
    }
    gd_gen_req gg = {0};
    const char *stops[GD_MAX_STOP];
    gm_chat_msg *cm = NULL;
    if (g->sampling) {
        gg.temperature = g->sampling->temperature;
        gg.top_p = g->sampling->top_p;
        gg.top_k = g->sampling->top_k;
        gg.seed = g->sampling->seed;
        gg.presence_penalty = g->sampling->presence_penalty;
        gg.frequency_penalty = g->sampling->frequency_penalty;
        gg.repetition_penalty = g->sampling->repetition_penalty;
    }
    gg.min_tokens = g->min_tokens;
    gg.logprobs = g->logprobs;
    gg.top_logprobs = g->top_logprobs;
    gg.max_tokens = g->max_tokens;
    gg.n = g->n;
    gg.beam_width = g->beam_width;
    gg.length_penalty = g->length_penalty_set_case == GEMMA__V1__GENERATE_REQUEST__LENGTH_PENALTY_SET_LENGTH_PENALTY
                            ? g->length_penalty
                            : 1.0f;
    gg.early_stopping = g->early_stopping;
    gg.spec_k = g->speculative_tokens;
    gg.stream = g->stream;
    gg.ignore_eos = g->ignore_eos;
    gg.stop_ids = g->stop_token_ids;
    gg.n_stop_ids = g->n_stop_token_ids;
    gg.n_stops = g->n_stop;
    for (size_t i = 0; i < g->n_stop && i < GD_MAX_STOP; i++)
        stops[i] = g->stop[i];
    gg.stops = stops;
    switch (g->prompt_case) {
    case GEMMA__V1__GENERATE_REQUEST__PROMPT_TEXT:
        gg.kind = GD_PROMPT_TEXT;
        gg.text = g->text;
        gg.text_len = strlen(g->text);
        break;
    case GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS:
        gg.kind = GD_PROMPT_IDS;
        gg.ids = g->tokens ? g->tokens->ids : NULL;
        gg.n_ids = g->tokens ? g->tokens->n_ids : 0;
        break;
    case GEMMA__V1__GENERATE_REQUEST__PROMPT_CHAT:
        gg.kind = GD_PROMPT_CHAT;
        gg.n_msgs = g->chat ? g->chat->n_messages : 0;
        if (gg.n_msgs > 0 && gg.n_msgs <= GD_MAX_CHAT_MSGS) {
            cm = malloc(gg.n_msgs * sizeof(*cm));
            if (!cm) {
                gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                                "out of memory");
                return;
            }
            for (size_t i = 0; i < gg.n_msgs; i++) {
                cm[i].role = g->chat->messages[i]->role;
                cm[i].text = g->chat->messages[i]->text;
            }
        }
        gg.msgs = cm;
        break;
    default:
        gg.kind = GD_PROMPT_NONE;
        break;
    }
    gd_admit(s, r, &gg);
    free(cm);
}

static void on_cancel(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid, const Gemma__V1__CancelRequest *cr)
{
    gd_client *c = client_find(s, id, idlen, id_hash(id, idlen));
    gd_req *r = c ? u64map_get(&c->reqs, cr->target_request_id) : NULL;
    if (!r || r->done) {
        reply_error(s, id, idlen, rid, GEMMA__V1__ERROR_CODE__NOT_FOUND, "request %llu is not in flight",
                    (unsigned long long)cr->target_request_id);
        return;
    }
    gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
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
    h.uptime_s = (gm_now_ms() - s->start_ms) / 1e3;
    h.max_message_bytes = s->frame_limit;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH;
    m.health = &h;
    send_to(s, id, idlen, &m);
}

static void on_stats(gd_server *s, const uint8_t *id, size_t idlen, uint64_t rid)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__StatsReply r = GEMMA__V1__STATS_REPLY__INIT;
    double now = gm_now_ms();
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
    r.tokens_per_s = met_rate_get(&s->met.rate, now / 1e3, s->c.completion_tokens);
    r.ttft_p50_ms = met_pct(&s->met.ttft, 50);
    r.ttft_p99_ms = met_pct(&s->met.ttft, 99);
    r.tpot_p50_ms = met_pct(&s->met.tpot, 50);
    r.tpot_p99_ms = met_pct(&s->met.tpot, 99);
    r.queue_p50_ms = met_pct(&s->met.queue, 50);
    r.queue_p99_ms = met_pct(&s->met.queue, 99);
    r.step_avg_ms = met_mean(&s->met.step);
    r.clients = s->n_clients;
    r.worker_restarts = s->c.worker_restarts;
    r.uptime_s = (now - s->start_ms) / 1e3;
    r.prefix_cache = s->cfg->prefix_cache;
    r.kv_blocks_cached = sched_kv_cached(s->sch);
    r.prefix_cache_queries = sched_prefix_queries(s->sch);
    r.prefix_cache_hits = sched_prefix_hits(s->sch);
    r.prefix_cache_hit_rate = r.prefix_cache_queries ? (double)r.prefix_cache_hits / (double)r.prefix_cache_queries : 0;
    r.spec_steps = sched_spec_steps(s->sch);
    r.spec_drafted_tokens = sched_spec_drafted(s->sch);
    r.spec_accepted_tokens = sched_spec_accepted(s->sch);
    r.spec_acceptance_rate = r.spec_drafted_tokens ? (double)r.spec_accepted_tokens / (double)r.spec_drafted_tokens : 0;
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
            on_generate(s, id, idlen, cm->request_id, cm->generate, data, len);
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
void gd_rpc_read(gd_server *s)
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

/* ---- the socket ---- */

gm_status gd_rpc_open(gd_server *s)
{
    const gd_config *cfg = s->cfg;
    s->zctx = zmq_ctx_new();
    s->router = s->zctx ? zmq_socket(s->zctx, ZMQ_ROUTER) : NULL;
    if (!s->router)
        return gm_fail(GM_ERR_ZMQ, "zmq ROUTER socket: %s", zmq_strerror(errno));
    int one = 1, hwm = 100000, ivl = 2000, hto = 10000, linger = 2000, sndhwm = GD_CLIENT_SNDHWM;
    int64_t maxmsg = s->frame_limit > 0 ? s->frame_limit : -1; /* admit.c: a larger frame drops the peer */
    zmq_setsockopt(s->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    zmq_setsockopt(s->router, ZMQ_SNDHWM, &sndhwm, sizeof(sndhwm)); /* per peer; then flush holds the output */
    zmq_setsockopt(s->router, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s->router, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(s->router, ZMQ_HEARTBEAT_TIMEOUT, &hto, sizeof(hto));
    zmq_setsockopt(s->router, ZMQ_LINGER, &linger, sizeof(linger));
    gm_status st = glue_new(s->zctx, &cfg->cluster, s->router, &s->glue);
    if (st != GM_OK)
        return st;
    if (zmq_bind(s->router, cfg->listen) != 0)
        return gm_fail(GM_ERR_ZMQ, "cannot listen on %s: %s", cfg->listen, zmq_strerror(errno));
    return GM_OK;
}

void gd_rpc_close(gd_server *s)
{
    for (int64_t i = 0; i < s->clients.cap; i++) {
        if (!s->clients.ents[i].key)
            continue;
        for (gd_client *c = s->clients.ents[i].val, *n; c; c = n) {
            n = c->hnext;
            for (int64_t j = 0; j < c->reqs.cap; j++)
                if (c->reqs.ents[j].key) {
                    gd_req *r = c->reqs.ents[j].val;
                    r->cl = NULL;
                    gd_req_free(s, r);
                }
            u64map_free(&c->reqs);
            free(c);
        }
    }
    u64map_free(&s->clients);
    if (s->router)
        zmq_close(s->router);
    s->router = NULL;
    glue_destroy(&s->glue);
    if (s->zctx)
        zmq_ctx_term(s->zctx);
    s->zctx = NULL;
    free(s->chunks);
    free(s->chunk_ptrs);
    free(s->usages);
    free(s->chunk_reqs);
    free(s->lps);
    free(s->lp_ptrs);
    free(s->lp_strs);
    free(s->txbuf);
    free(s->finished);
}
