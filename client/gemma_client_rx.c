/* gemma_client_rx.c - what the C client receives (gemma_client_int.h): frames unpacked into a bump
 * arena per ServerMessage, events routed to the queue or to the blocking call waiting for them,
 * replies to probes, a dropped connection failing what was in flight, and gmc_poll. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "client/gemma_client.h"
#include "client/gemma_client_int.h"
#include "common/clock.h"
#include "proto/gemma.pb-c.h"

/* ---- a bump arena for unpacking one ServerMessage (freed at once) ---- */

static void *arena_alloc(void *ad, size_t size)
{
    rx_msg *r = ad;
    size = (size + 15) & ~(size_t)15;
    arena_blk *b = r->blks;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > 32768 ? size : 32768;
        b = malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = r->blks;
        r->blks = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

static void arena_free(void *ad, void *p)
{
    (void)ad;
    (void)p;
}

void gmc_rx_msg_free(rx_msg *r)
{
    if (!r)
        return;
    for (arena_blk *b = r->blks; b;) {
        arena_blk *n = b->next;
        free(b);
        b = n;
    }
    free(r);
}

void gmc_rx_free_lent(gmc_client *c)
{
    while (c->lent) {
        rx_msg *n = c->lent->next;
        gmc_rx_msg_free(c->lent);
        c->lent = n;
    }
}

/* ---- receiving ---- */

static bool q_push(gmc_client *c, const gmc_event *ev, rx_msg *m)
{
    if (c->q_len == c->q_cap) {
        int64_t ncap = c->q_cap ? c->q_cap * 2 : 1024;
        queued_ev *nq = malloc((size_t)ncap * sizeof(*nq));
        if (!nq)
            return false;
        for (int64_t i = 0; i < c->q_len; i++)
            nq[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = nq;
        c->q_cap = ncap;
        c->q_head = 0;
    }
    c->q[(c->q_head + c->q_len) % c->q_cap] = (queued_ev){*ev, m};
    c->q_len++;
    if (m)
        m->refs++;
    return true;
}

static void usage_from(gmc_usage *u, const Gemma__V1__Usage *pu)
{
    memset(u, 0, sizeof(*u));
    if (!pu)
        return;
    u->prompt_tokens = pu->prompt_tokens;
    u->completion_tokens = pu->completion_tokens;
    u->queue_ms = pu->queue_ms;
    u->ttft_ms = pu->ttft_ms;
    u->total_ms = pu->total_ms;
    u->preemptions = pu->preemptions;
    u->cached_tokens = pu->cached_tokens;
}

/* Feed one event of the request a blocking gmc_generate waits on. */
static void capture_event(gmc_client *c, const gmc_event *ev)
{
    gmc_result *r = c->wait_result;
    if (c->wait_cb)
        c->wait_cb(ev, c->wait_arg);
    if (ev->n_tokens > 0) {
        if ((size_t)(r->n_tokens + ev->n_tokens) > c->wait_tok_cap) {
            size_t cap = c->wait_tok_cap ? c->wait_tok_cap * 2 : 256;
            while (cap < (size_t)(r->n_tokens + ev->n_tokens))
                cap *= 2;
            int32_t *t = realloc(r->tokens, cap * sizeof(int32_t));
            if (!t) {
                c->wait_err = GMC_ERR_NOMEM;
                return;
            }
            r->tokens = t;
            c->wait_tok_cap = cap;
        }
        memcpy(r->tokens + r->n_tokens, ev->tokens, (size_t)ev->n_tokens * sizeof(int32_t));
        r->n_tokens += ev->n_tokens;
    }
    if (ev->text_len > 0 || !r->text) {
        if (r->text_len + ev->text_len + 1 > c->wait_txt_cap) {
            size_t cap = c->wait_txt_cap ? c->wait_txt_cap * 2 : 256;
            while (cap < r->text_len + ev->text_len + 1)
                cap *= 2;
            char *t = realloc(r->text, cap);
            if (!t) {
                c->wait_err = GMC_ERR_NOMEM;
                return;
            }
            r->text = t;
            c->wait_txt_cap = cap;
        }
        if (ev->text_len)
            memcpy(r->text + r->text_len, ev->text, ev->text_len);
        r->text_len += ev->text_len;
        r->text[r->text_len] = 0;
    }
    if (ev->finished) {
        r->finish_reason = ev->finish_reason;
        r->error = ev->error;
        snprintf(r->error_message, sizeof(r->error_message), "%s", ev->error_message ? ev->error_message : "");
        r->usage = ev->usage;
        c->wait_done = true;
    }
}

/* Route one event: to the blocking call waiting for it, or to the queue. */
static bool deliver(gmc_client *c, const gmc_event *ev, rx_msg *m)
{
    if (c->wait_kind == 3 && ev->request_id == c->wait_id) {
        capture_event(c, ev);
        return true;
    }
    return q_push(c, ev, m);
}

static void health_from(gmc_health *h, const Gemma__V1__HealthReply *r)
{
    memset(h, 0, sizeof(*h));
    h->serving = r->serving;
    h->shutting_down = r->shutting_down;
    snprintf(h->model, sizeof(h->model), "%s", r->model ? r->model : "");
    snprintf(h->backend, sizeof(h->backend), "%s", r->backend ? r->backend : "");
    snprintf(h->version, sizeof(h->version), "%s", r->version ? r->version : "");
    h->tp = r->tp;
    h->protocol_version = GMC_PROTOCOL_VERSION;
    h->uptime_s = r->uptime_s;
}

static void stats_from(gmc_stats *s, const Gemma__V1__StatsReply *r)
{
    memset(s, 0, sizeof(*s));
    s->running = r->running;
    s->waiting = r->waiting;
    s->kv_blocks_total = r->kv_blocks_total;
    s->kv_blocks_used = r->kv_blocks_used;
    s->kv_blocks_free = r->kv_blocks_free;
    s->kv_block_size = r->kv_block_size;
    s->requests_total = r->requests_total;
    s->requests_finished = r->requests_finished;
    s->requests_failed = r->requests_failed;
    s->requests_cancelled = r->requests_cancelled;
    s->preemptions = r->preemptions;
    s->prompt_tokens = r->prompt_tokens;
    s->completion_tokens = r->completion_tokens;
    s->steps = r->steps;
    s->tokens_per_s = r->tokens_per_s;
    s->ttft_p50_ms = r->ttft_p50_ms;
    s->ttft_p99_ms = r->ttft_p99_ms;
    s->tpot_p50_ms = r->tpot_p50_ms;
    s->tpot_p99_ms = r->tpot_p99_ms;
    s->queue_p50_ms = r->queue_p50_ms;
    s->queue_p99_ms = r->queue_p99_ms;
    s->step_avg_ms = r->step_avg_ms;
    s->clients = r->clients;
    s->worker_restarts = r->worker_restarts;
    s->uptime_s = r->uptime_s;
    s->prefix_cache = r->prefix_cache;
    s->kv_blocks_cached = r->kv_blocks_cached;
    s->prefix_cache_queries = r->prefix_cache_queries;
    s->prefix_cache_hits = r->prefix_cache_hits;
    s->prefix_cache_hit_rate = r->prefix_cache_hit_rate;
    s->spec_steps = r->spec_steps;
    s->spec_drafted = r->spec_drafted_tokens;
    s->spec_accepted = r->spec_accepted_tokens;
    s->spec_acceptance_rate = r->spec_acceptance_rate;
}

/* Decode one received frame into events / replies. */
static gmc_code handle_frame(gmc_client *c, const void *data, size_t len)
{
    rx_msg *r = calloc(1, sizeof(*r));
    if (!r)
        return gmc_fail(c, GMC_ERR_NOMEM, "out of memory");
    ProtobufCAllocator al = {arena_alloc, arena_free, r};
    r->m = gemma__v1__server_message__unpack(&al, len, data);
    if (!r->m) {
        gmc_rx_msg_free(r);
        return gmc_fail(c, GMC_ERR_PROTOCOL, "undecodable %zu-byte message from gemmad", len);
    }
    Gemma__V1__ServerMessage *m = r->m;
    if (m->protocol_version != GMC_PROTOCOL_VERSION) {
        gmc_rx_msg_free(r);
        return gmc_fail(c, GMC_ERR_PROTOCOL, "gemmad speaks protocol version %u, this client %d", m->protocol_version,
                        GMC_PROTOCOL_VERSION);
    }
    r->refs = 1; /* held while we route */
    for (size_t i = 0; i < m->n_chunks; i++) {
        const Gemma__V1__GenerateChunk *ch = m->chunks[i];
        req_ent *e = gmc_tab_find(c, ch->request_id);
        if (!e)
            continue; /* stale: a request we no longer track */
        gmc_event ev = {0};
        ev.request_id = ch->request_id;
        ev.user = e->user;
        ev.tokens = ch->token_ids;
        ev.n_tokens = (int32_t)ch->n_token_ids;
        gmc_logprob *lp = ch->n_logprobs ? arena_alloc(r, ch->n_logprobs * sizeof(*lp)) : NULL; /* as long as m */
        if (lp) { /* out of memory: the event goes without them */
            for (size_t k = 0; k < ch->n_logprobs; k++) {
                const Gemma__V1__TokenLogprobs *t = ch->logprobs[k];
                size_t nt = t->n_top_ids < t->n_top_logprobs ? t->n_top_ids : t->n_top_logprobs;
                lp[k] = (gmc_logprob){t->logprob, (int32_t)nt, t->top_ids, t->top_logprobs,
                                      {(const char *)t->token.data, t->token.len}, NULL};
                gmc_bytes *tt = nt ? arena_alloc(r, nt * sizeof(*tt)) : NULL;
                for (size_t j = 0; tt && j < nt; j++) /* an older gemmad sends no strings: empty ones */
                    tt[j] = j < t->n_top_tokens ? (gmc_bytes){(const char *)t->top_tokens[j].data,
                                                              t->top_tokens[j].len}
                                                : (gmc_bytes){"", 0};
                lp[k].top_tokens = tt;
            }
            ev.logprobs = lp;
            ev.n_logprobs = (int32_t)ch->n_logprobs;
        }
        ev.text = (const char *)ch->text.data;
        ev.text_len = ch->text.len;
        ev.error_message = ch->error_message ? ch->error_message : "";
        ev.index = ch->index;
        if (ch->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE) {
            ev.index_finished = true;
            ev.finish_reason = (gmc_finish)ch->finish_reason;
            ev.error = (gmc_code)ch->error_code;
        }
        if (ev.index_finished && (e->n <= 1 || ch->usage)) { /* n > 1: the last chunk has usage */
            ev.finished = true;
            usage_from(&ev.usage, ch->usage);
            gmc_tab_remove(c, e);
        }
        if (!deliver(c, &ev, r))
            return gmc_fail(c, GMC_ERR_NOMEM, "out of memory");
    }
    switch (m->body_case) {
    case GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH:
        if (c->wait_kind == 1 && m->health->request_id == c->wait_id) {
            health_from(c->wait_health, m->health);
            c->wait_done = true;
        }
        break;
    case GEMMA__V1__SERVER_MESSAGE__BODY_STATS:
        if (c->wait_kind == 2 && m->stats->request_id == c->wait_id) {
            stats_from(c->wait_stats, m->stats);
            c->wait_done = true;
        }
        break;
    case GEMMA__V1__SERVER_MESSAGE__BODY_ERROR: {
        const Gemma__V1__Error *er = m->error;
        req_ent *e = er->request_id ? gmc_tab_find(c, er->request_id) : NULL;
        if (e) { /* the error ends a generate request of ours */
            gmc_event ev = {0};
            ev.request_id = er->request_id;
            ev.user = e->user;
            ev.finished = true;
            ev.finish_reason = GMC_FINISH_ERROR;
            ev.error = (gmc_code)er->code;
            ev.error_message = er->message ? er->message : "";
            gmc_tab_remove(c, e);
            if (!deliver(c, &ev, r))
                return gmc_fail(c, GMC_ERR_NOMEM, "out of memory");
        } else if ((c->wait_kind == 1 || c->wait_kind == 2) && er->request_id == c->wait_id) {
            c->wait_done = true;
            c->wait_err = (gmc_code)er->code;
            gmc_fail(c, (gmc_code)er->code, "gemmad: %s: %s", gmc_code_name((gmc_code)er->code),
                     er->message ? er->message : "");
        } else {
            gmc_fail(c, (gmc_code)er->code, "gemmad: %s: %s", gmc_code_name((gmc_code)er->code),
                     er->message ? er->message : "");
        }
        break;
    }
    default:
        break;
    }
    if (--r->refs == 0)
        gmc_rx_msg_free(r);
    return GMC_OK;
}

/* Receive every frame already waiting (non-blocking); -code on failure. */
static int recv_available(gmc_client *c)
{
    int got = 0;
    for (;;) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        int n = zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT);
        if (n < 0) {
            zmq_msg_close(&msg);
            if (errno == EAGAIN)
                return got;
            if (errno == EINTR)
                continue;
            return -(int)gmc_fail(c, GMC_ERR_TRANSPORT, "zmq_recv: %s", zmq_strerror(errno));
        }
        gmc_code rc = handle_frame(c, zmq_msg_data(&msg), zmq_msg_size(&msg));
        zmq_msg_close(&msg);
        if (rc == GMC_ERR_NOMEM)
            return -(int)rc;
        got++; /* an undecodable frame is skipped, its detail kept in c->err */
    }
}

/* Every request in flight ends with a TRANSPORT error: the connection dropped. */
static void fail_inflight(gmc_client *c)
{
    static const char msg[] = "lost the connection to gemmad";
    for (int64_t i = 0; i < c->tab_cap; i++) {
        req_ent *e = &c->tab[i];
        if (!e->id)
            continue;
        gmc_event ev = {0};
        ev.request_id = e->id;
        ev.user = e->user;
        ev.finished = true;
        ev.finish_reason = GMC_FINISH_ERROR;
        ev.error = GMC_ERR_TRANSPORT;
        ev.error_message = msg;
        gmc_tab_remove(c, e);
        deliver(c, &ev, NULL);
    }
    if (c->wait_kind == 1 || c->wait_kind == 2) {
        c->wait_done = true;
        c->wait_err = gmc_fail(c, GMC_ERR_TRANSPORT, "%s", msg);
    }
}

/* Read connection events; on a disconnect, take what arrived first, then fail the rest. */
static int read_monitor(gmc_client *c)
{
    bool lost = false;
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&event, zmq_msg_data(&ev), 2);
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            zmq_msg_recv(&addr, c->mon, ZMQ_DONTWAIT);
            zmq_msg_close(&addr);
        }
        if (event == ZMQ_EVENT_DISCONNECTED)
            lost = true;
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH || event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            c->refused = true;
    }
    if (c->refused) /* a refused key stays refused: fail now rather than time out */
        return -(int)gmc_fail(c, GMC_ERR_TRANSPORT, "the server refused the CurveZMQ handshake: "
                                                    "this client's key is not allowed there, or the keys do not match");
    if (!lost)
        return 0;
    int n = recv_available(c);
    if (n < 0)
        return n;
    fail_inflight(c);
    return 1;
}

/* Wait up to timeout_ms (-1 forever) for the socket to become readable, then
 * receive. Returns 0 on timeout, > 0 frames, < 0 error. */
static int wait_recv(gmc_client *c, int timeout_ms)
{
    int n = recv_available(c);
    if (n != 0)
        return n;
    zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    int pr = zmq_poll(it, c->mon ? 2 : 1, timeout_ms);
    if (pr < 0) {
        if (errno == EINTR)
            return 0;
        return -(int)gmc_fail(c, GMC_ERR_TRANSPORT, "zmq_poll: %s", zmq_strerror(errno));
    }
    if (pr == 0)
        return 0;
    n = recv_available(c);
    if (n < 0)
        return n;
    if (c->mon && (it[1].revents & ZMQ_POLLIN)) {
        int m = read_monitor(c);
        if (m < 0)
            return m;
        n += m;
    }
    return n;
}

int gmc_poll(gmc_client *c, gmc_event *events, int max_events, int timeout_ms)
{
    gmc_rx_free_lent(c);
    if (c->q_len == 0) {
        double deadline = timeout_ms > 0 ? gm_now_ms() + timeout_ms : 0;
        for (;;) {
            int left = timeout_ms < 0 ? -1 : timeout_ms == 0 ? 0 : (int)(deadline - gm_now_ms());
            if (timeout_ms > 0 && left < 0)
                left = 0;
            int n = wait_recv(c, left);
            if (n < 0)
                return n;
            if (c->q_len > 0 || left == 0)
                break;
        }
    } else {
        int n = recv_available(c);
        if (n >= 0 && c->mon)
            n = read_monitor(c);
        if (n < 0)
            return n;
    }
    int k = 0;
    while (k < max_events && c->q_len > 0) {
        queued_ev *qe = &c->q[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        events[k++] = qe->ev;
        if (qe->msg && --qe->msg->refs == 0) {
            qe->msg->next = c->lent;
            c->lent = qe->msg;
        }
    }
    return k;
}

/* Wait until c->wait_done or the timeout; GMC_OK or the failure. */
gmc_code gmc_rx_wait(gmc_client *c, int timeout_ms)
{
    int t = timeout_ms == 0 ? c->timeout_ms : timeout_ms;
    double deadline = t > 0 ? gm_now_ms() + t : 0;
    while (!c->wait_done) {
        int left = t < 0 ? -1 : (int)(deadline - gm_now_ms());
        if (t > 0 && left <= 0)
            return gmc_fail(c, GMC_ERR_TIMEOUT, "no answer from gemmad within %d ms", t);
        int n = wait_recv(c, left);
        if (n < 0)
            return (gmc_code)-n;
    }
    return c->wait_err;
}
