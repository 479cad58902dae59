/* router.c - gemma-router: clients, request tables, dispatch, its own Health/Stats, the loop. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/router_int.h"
#include "common/log.h"
#include "common/pbscan.h"
#include "common/utf8.h"

uint64_t rt_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return rt_mix64(h);
}

static size_t cid_bucket(const rt_client *c, uint64_t cid)
{
    return rt_mix64(c->hash ^ rt_mix64(cid)) & (RT_BUCKETS - 1);
}

static rt_client *client_get(gc_router *r, const uint8_t *id, size_t n, bool create)
{
    uint64_t h = hash_bytes(id, n);
    rt_client **b = &r->clients[h & (RT_CLIENT_BUCKETS - 1)];
    for (rt_client *c = *b; c; c = c->next)
        if (c->hash == h && c->id_len == n && memcmp(c->id, id, n) == 0)
            return c;
    if (!create)
        return NULL;
    rt_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    memcpy(c->id, id, n);
    c->id_len = (uint8_t)n;
    c->hash = h;
    c->next = *b;
    *b = c;
    r->n_clients++;
    return c;
}

static void client_release(gc_router *r, rt_client *c)
{
    if (c->n_req > 0)
        return;
    rt_client **b = &r->clients[c->hash & (RT_CLIENT_BUCKETS - 1)];
    for (; *b; b = &(*b)->next)
        if (*b == c) {
            *b = c->next;
            break;
        }
    r->n_clients--;
    free(c);
}

rt_req *rt_req_by_rid(gc_router *r, uint64_t rid)
{
    for (rt_req *q = r->by_rid[rt_mix64(rid) & (RT_BUCKETS - 1)]; q; q = q->next_rid)
        if (q->rid == rid)
            return q;
    return NULL;
}

static rt_req *req_by_cid(gc_router *r, rt_client *c, uint64_t cid)
{
    for (rt_req *q = r->by_cid[cid_bucket(c, cid)]; q; q = q->next_cid)
        if (q->client == c && q->cid == cid)
            return q;
    return NULL;
}

static void queue_unlink(gc_router *r, rt_req *q)
{
    if (!q->qprev && r->q_head != q)
        return; /* not queued */
    if (q->qprev)
        q->qprev->qnext = q->qnext;
    else
        r->q_head = q->qnext;
    if (q->qnext)
        q->qnext->qprev = q->qprev;
    else
        r->q_tail = q->qprev;
    q->qprev = q->qnext = NULL;
    r->q_len--;
}

static void queue_push(gc_router *r, rt_req *q, double deadline)
{
    q->deadline = deadline;
    q->qnext = NULL;
    q->qprev = r->q_tail;
    if (r->q_tail)
        r->q_tail->qnext = q;
    else
        r->q_head = q;
    r->q_tail = q;
    r->q_len++;
}

/* Forget a request everywhere and free it. */
void rt_req_remove(gc_router *r, rt_req *q)
{
    rt_req **p = &r->by_rid[rt_mix64(q->rid) & (RT_BUCKETS - 1)];
    for (; *p; p = &(*p)->next_rid)
        if (*p == q) {
            *p = q->next_rid;
            break;
        }
    p = &r->by_cid[cid_bucket(q->client, q->cid)];
    for (; *p; p = &(*p)->next_cid)
        if (*p == q) {
            *p = q->next_cid;
            break;
        }
    queue_unlink(r, q);
    if (q->rep)
        q->rep->in_flight--;
    q->client->n_req--;
    client_release(r, q->client);
    r->n_reqs--;
    free(q->msg);
    free(q);
}

static bool tx_reserve(gc_router *r, size_t n)
{
    if (n <= r->tx_cap)
        return true;
    size_t cap = r->tx_cap ? r->tx_cap : 4096;
    while (cap < n)
        cap *= 2;
    uint8_t *t = realloc(r->tx, cap);
    if (!t)
        return false;
    r->tx = t;
    r->tx_cap = cap;
    return true;
}

/* Send m to the client with routing id id. False when the client is gone. */
bool rt_send_to_client(gc_router *r, const uint8_t *id, size_t id_len, Gemma__V1__ServerMessage *m)
{
    m->protocol_version = RT_PROTO_MAJOR;
    if (rt_http_is_client(id, id_len))
        return rt_http_deliver(r, id, id_len, m);
    size_t n = gemma__v1__server_message__get_packed_size(m);
    if (!tx_reserve(r, n)) {
        GM_ERROR("out of memory packing a %zu-byte reply", n);
        return true;
    }
    gemma__v1__server_message__pack(m, r->tx);
    if (zmq_send(r->front, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        if (errno == EHOSTUNREACH)
            return false;
        GM_WARN("send to client: %s", zmq_strerror(errno));
        return true;
    }
    if (zmq_send(r->front, r->tx, n, ZMQ_DONTWAIT) < 0)
        GM_WARN("send to client: %s", zmq_strerror(errno));
    return true;
}

void rt_send_error(gc_router *r, const uint8_t *id, size_t id_len, uint64_t request_id,
                       Gemma__V1__ErrorCode code, const char *text)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__Error e = GEMMA__V1__ERROR__INIT;
    char msg[512]; /* may quote a replica or its name: valid UTF-8, cut between characters */
    gm_utf8_copy(msg, sizeof(msg), text ? text : "", text ? strlen(text) : 0);
    e.request_id = request_id;
    e.code = code;
    e.message = msg;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_ERROR;
    m.error = &e;
    rt_send_to_client(r, id, id_len, &m);
}

/* End request q with a final chunk made by the router and forget it. */
void rt_req_finish(gc_router *r, rt_req *q, Gemma__V1__FinishReason fr, Gemma__V1__ErrorCode code,
                       const char *text)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__GenerateChunk ch = GEMMA__V1__GENERATE_CHUNK__INIT;
    Gemma__V1__GenerateChunk *chp = &ch;
    char msg[512]; /* may quote a replica or its name: valid UTF-8, cut between characters */
    gm_utf8_copy(msg, sizeof(msg), text ? text : "", text ? strlen(text) : 0);
    Gemma__V1__Usage u = GEMMA__V1__USAGE__INIT; /* the request's last chunk carries usage (n > 1 clients) */
    ch.request_id = q->cid;
    ch.finish_reason = fr;
    ch.error_code = code;
    ch.error_message = msg;
    ch.usage = &u;
    m.n_chunks = 1;
    m.chunks = &chp;
    rt_send_to_client(r, q->client->id, q->client->id_len, &m);
    if (fr == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED)
        atomic_fetch_add(&r->c_cancelled, 1);
    else
        atomic_fetch_add(&r->c_failed, 1);
    rt_req_remove(r, q);
}

/* Send q to a replica, hold it in the queue, or end it. */
void rt_req_dispatch(gc_router *r, rt_req *q, bool is_new)
{
    for (;;) {
        if (q->attempts >= r->cfg->max_attempts) {
            rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED,
                       "request failed on every replica it was sent to");
            return;
        }
        rt_replica *p = rt_replica_pick(r, q->last_rep);
        if (!p) {
            if (!is_new || r->q_len < r->cfg->max_queue) {
                /* the wait is counted from when it first found no room */
                queue_push(r, q, q->deadline > 0 ? q->deadline : gm_now_ms() + r->cfg->queue_timeout_ms);
                return;
            }
            int up = 0;
            for (int i = 0; i < r->n_reps; i++)
                up += r->reps[i]->up && r->reps[i]->serving;
            char text[160];
            snprintf(text, sizeof(text), up ? "every replica is full (%d up, max_in_flight %d each)"
                                            : "no replica is serving (%d of %d up)",
                     up, up ? r->cfg->max_in_flight : r->n_reps);
            rt_send_error(r, q->client->id, q->client->id_len, q->cid, GEMMA__V1__ERROR_CODE__OVERLOADED, text);
            atomic_fetch_add(&r->c_shed, 1);
            rt_req_remove(r, q);
            return;
        }
        int64_t lim = p->health && p->health->health ? p->health->health->max_message_bytes : 0;
        if (lim > 0 && (int64_t)q->msg_len > lim) { /* the replica would drop this connection for it */
            char text[200];
            snprintf(text, sizeof(text), "the request is %zu bytes; replica %.80s reads frames of at most %lld bytes",
                     q->msg_len, p->label, (long long)lim);
            rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__PROMPT_TOO_LONG, text);
            return;
        }
        if (zmq_send(p->sock, q->msg, q->msg_len, ZMQ_DONTWAIT) < 0) {
            rt_replica_down(r, p, errno == EAGAIN ? "not connected" : zmq_strerror(errno));
            continue;
        }
        q->rep = p;
        q->deadline = 0;
        q->attempts++;
        p->in_flight++;
        p->sent++;
        return;
    }
}

/* Ask q's replica to stop it (fire and forget; the replica ends it with a final chunk). */
void rt_cancel_at_replica(gc_router *r, rt_req *q)
{
    if (!q->rep || !q->rep->sock)
        return;
    Gemma__V1__ClientMessage m = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__CancelRequest c = GEMMA__V1__CANCEL_REQUEST__INIT;
    m.protocol_version = RT_PROTO_MAJOR;
    m.request_id = r->next_rid++;
    c.target_request_id = q->rid;
    m.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL;
    m.cancel = &c;
    uint8_t buf[64];
    size_t n = gemma__v1__client_message__pack(&m, buf);
    zmq_send(q->rep->sock, buf, n, ZMQ_DONTWAIT);
}

static void answer_health(gc_router *r, const uint8_t *id, size_t id_len, uint64_t request_id)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__HealthReply h = GEMMA__V1__HEALTH_REPLY__INIT;
    h.request_id = request_id;
    h.shutting_down = r->stopping;
    h.version = RT_VERSION;
    h.uptime_s = (gm_now_ms() - r->t_start) / 1e3;
    h.model = "";
    h.backend = "";
    for (int i = 0; i < r->n_reps; i++) {
        rt_replica *p = r->reps[i];
        if (p->up && p->serving && !p->draining) {
            if (!h.serving && p->health) {
                h.model = p->health->health->model;
                h.backend = p->health->health->backend;
                h.tp = p->health->health->tp;
            }
            h.serving = !r->stopping;
        }
    }
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH;
    m.health = &h;
    rt_send_to_client(r, id, id_len, &m);
}

static void answer_stats(gc_router *r, const uint8_t *id, size_t id_len, uint64_t request_id)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__StatsReply s = GEMMA__V1__STATS_REPLY__INIT;
    s.request_id = request_id;
    int n_step = 0;
    for (int i = 0; i < r->n_reps; i++) {
        rt_replica *p = r->reps[i];
        if (!p->stats || !p->up)
            continue;
        const Gemma__V1__StatsReply *x = p->stats->stats;
        s.running += x->running;
        s.waiting += x->waiting;
        s.kv_blocks_total += x->kv_blocks_total;
        s.kv_blocks_used += x->kv_blocks_used;
        s.kv_blocks_free += x->kv_blocks_free;
        s.kv_block_size = x->kv_block_size;
        s.preemptions += x->preemptions;
        s.prompt_tokens += x->prompt_tokens;
        s.completion_tokens += x->completion_tokens;
        s.steps += x->steps;
        s.tokens_per_s += x->tokens_per_s;
        s.worker_restarts += x->worker_restarts;
        /* percentiles cannot be merged: report the worst replica's */
#define RT_MAX(f) s.f = x->f > s.f ? x->f : s.f
        RT_MAX(ttft_p50_ms);
        RT_MAX(ttft_p99_ms);
        RT_MAX(tpot_p50_ms);
        RT_MAX(tpot_p99_ms);
        RT_MAX(queue_p50_ms);
        RT_MAX(queue_p99_ms);
#undef RT_MAX
        s.step_avg_ms += x->step_avg_ms;
        n_step++;
    }
    if (n_step)
        s.step_avg_ms /= n_step;
    s.waiting += r->q_len;
    s.requests_total = atomic_load(&r->c_accepted);
    s.requests_finished = atomic_load(&r->c_finished);
    s.requests_failed = atomic_load(&r->c_failed) + atomic_load(&r->c_shed);
    s.requests_cancelled = atomic_load(&r->c_cancelled);
    s.clients = (int32_t)r->n_clients;
    s.uptime_s = (gm_now_ms() - r->t_start) / 1e3;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_STATS;
    m.stats = &s;
    rt_send_to_client(r, id, id_len, &m);
}

static void on_generate(gc_router *r, const uint8_t *id, size_t id_len, Gemma__V1__ClientMessage *cm,
                        const uint8_t *frame, size_t frame_len)
{
    char nul[128]; /* re-packing would cut the string at the NUL: refuse it as gemmad does */
    if (pbscan_find_nul(frame, frame_len, nul, sizeof nul)) {
        rt_send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT, nul);
        return;
    }
    if (r->stopping) {
        rt_send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN, "gemma-router is stopping");
        return;
    }
    rt_client *c = client_get(r, id, id_len, true);
    if (!c) {
        rt_send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__INTERNAL, "router out of memory");
        return;
    }
    if (req_by_cid(r, c, cm->request_id)) {
        char text[96];
        snprintf(text, sizeof(text), "request id %llu is already in flight on this connection",
                 (unsigned long long)cm->request_id);
        rt_send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__DUPLICATE_ID, text);
        client_release(r, c);
        return;
    }
    rt_req *q = calloc(1, sizeof(*q));
    uint64_t cid = cm->request_id;
    cm->request_id = r->next_rid++;
    size_t n = gemma__v1__client_message__get_packed_size(cm);
    uint8_t *buf = q ? malloc(n) : NULL;
    if (!buf) {
        free(q);
        rt_send_error(r, id, id_len, cid, GEMMA__V1__ERROR_CODE__INTERNAL, "router out of memory");
        client_release(r, c);
        return;
    }
    gemma__v1__client_message__pack(cm, buf);
    q->rid = cm->request_id;
    q->cid = cid;
    q->n = cm->generate ? cm->generate->n : 1;
    q->client = c;
    q->msg = buf;
    q->msg_len = n;
    size_t b = rt_mix64(q->rid) & (RT_BUCKETS - 1);
    q->next_rid = r->by_rid[b];
    r->by_rid[b] = q;
    b = cid_bucket(c, cid);
    q->next_cid = r->by_cid[b];
    r->by_cid[b] = q;
    c->n_req++;
    r->n_reqs++;
    atomic_fetch_add(&r->c_accepted, 1);
    rt_req_dispatch(r, q, true);
}

static void on_cancel(gc_router *r, const uint8_t *id, size_t id_len, const Gemma__V1__ClientMessage *cm)
{
    uint64_t target = cm->cancel->target_request_id;
    rt_client *c = client_get(r, id, id_len, false);
    rt_req *q = c ? req_by_cid(r, c, target) : NULL;
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__CancelReply cr = GEMMA__V1__CANCEL_REPLY__INIT;
    cr.request_id = cm->request_id;
    cr.target_request_id = target;
    cr.found = q && !q->done;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_CANCEL;
    m.cancel = &cr;
    rt_send_to_client(r, id, id_len, &m);
    if (!q || q->done || q->cancelled)
        return;
    q->cancelled = true;
    if (!q->rep)
        rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED, "cancelled");
    else
        rt_cancel_at_replica(r, q);
}

void rt_on_client_msg(gc_router *r, const uint8_t *id, size_t id_len, const uint8_t *data, size_t len)
{
    Gemma__V1__ClientMessage *cm = gemma__v1__client_message__unpack(NULL, len, data);
    if (!cm) {
        rt_send_error(r, id, id_len, 0, GEMMA__V1__ERROR_CODE__MALFORMED, "the frame is not a gemma.v1.ClientMessage");
        return;
    }
    if (cm->protocol_version != RT_PROTO_MAJOR) {
        char text[96];
        snprintf(text, sizeof(text), "protocol version %u is not supported (this router speaks %d)",
                 cm->protocol_version, RT_PROTO_MAJOR);
        rt_send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION, text);
    } else {
        switch (cm->body_case) {
        case GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE: on_generate(r, id, id_len, cm, data, len); break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL: on_cancel(r, id, id_len, cm); break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH: answer_health(r, id, id_len, cm->request_id); break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_STATS: answer_stats(r, id, id_len, cm->request_id); break;
        default:
            rt_send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__UNKNOWN_TYPE,
                       "the message has no known body");
        }
    }
    gemma__v1__client_message__free_unpacked(cm, NULL);
}

/* Read one multipart message from a ROUTER socket: routing id + one payload.
 * Returns payload size, -1 when nothing is waiting, -2 when malformed (drained). */
static int recv_routed(void *sock, uint8_t *id, size_t *id_len, zmq_msg_t *payload)
{
    int n = zmq_recv(sock, id, 255, ZMQ_DONTWAIT);
    if (n < 0)
        return -1;
    *id_len = (size_t)(n > 255 ? 255 : n);
    int more = 0;
    size_t ms = sizeof(more);
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &ms);
    if (!more)
        return -2;
    zmq_msg_init(payload);
    zmq_msg_recv(payload, sock, 0);
    int extra = zmq_msg_more(payload);
    while (extra) { /* a client must send single frames */
        zmq_msg_t x;
        zmq_msg_init(&x);
        zmq_msg_recv(&x, sock, 0);
        extra = zmq_msg_more(&x);
        zmq_msg_close(&x);
        more = 2;
    }
    if (more == 2) {
        zmq_msg_close(payload);
        return -2;
    }
    return (int)zmq_msg_size(payload);
}

static void drain_front(gc_router *r)
{
    for (int k = 0; k < RT_DRAIN_BATCH; k++) {
        uint8_t id[255];
        size_t id_len;
        zmq_msg_t pl;
        int n = recv_routed(r->front, id, &id_len, &pl);
        if (n == -1)
            return;
        if (n == -2) {
            rt_send_error(r, id, id_len, 0, GEMMA__V1__ERROR_CODE__MALFORMED, "expected one frame per message");
            continue;
        }
        rt_on_client_msg(r, id, id_len, zmq_msg_data(&pl), zmq_msg_size(&pl));
        zmq_msg_close(&pl);
    }
}

static void drain_reg(gc_router *r, double now)
{
    for (int k = 0; k < RT_DRAIN_BATCH; k++) {
        uint8_t id[255];
        size_t id_len;
        zmq_msg_t pl;
        int n = recv_routed(r->reg, id, &id_len, &pl);
        if (n == -1)
            return;
        if (n == -2)
            continue;
        rt_peer peer;
        rt_peer_of(r, &pl, &peer);
        rt_on_register_msg(r, &peer, id, id_len, zmq_msg_data(&pl), zmq_msg_size(&pl), now);
        zmq_msg_close(&pl);
    }
}

static void drain_replica(gc_router *r, rt_replica *p, double now)
{
    for (int k = 0; k < RT_DRAIN_BATCH && p->sock; k++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        void *sock = p->sock;
        rt_on_replica_msg(r, p, zmq_msg_data(&m), zmq_msg_size(&m), now);
        zmq_msg_close(&m);
        if (p->sock != sock)
            return; /* reopened meanwhile */
    }
}

static void tick(gc_router *r, double now)
{
    for (int i = 0; i < r->n_reps; i++) {
        rt_replica *p = r->reps[i];
        if (p->up && now - p->last_heard > r->cfg->dead_ms) {
            char why[64];
            snprintf(why, sizeof(why), "silent for %.0f ms", now - p->last_heard);
            rt_replica_down(r, p, why);
        }
        rt_replica_health_tick(r, p, now);
        /* a replica that is down is asked more often, so that it is used again soon */
        double ivl = p->up ? r->cfg->heartbeat_ms : (r->cfg->heartbeat_ms < 100 ? r->cfg->heartbeat_ms : 100);
        if (now - p->last_probe >= ivl)
            rt_replica_probe(r, p, now);
    }
    for (int i = r->n_reps - 1; i >= 0; i--) {
        rt_replica *p = r->reps[i];
        if (!p->dynamic || p->in_flight > 0)
            continue;
        double since = p->down_since > p->last_register ? p->down_since : p->last_register;
        if (p->draining || (!p->up && now - since > r->cfg->forget_ms))
            rt_replica_remove(r, i);
    }
    /* held requests: send those that fit now, end those that waited too long */
    for (rt_req *q = r->q_head, *next; q; q = next) {
        next = q->qnext; /* stays valid: dispatching q only appends to the queue */
        if (!rt_replica_pick(r, q->last_rep) && q->last_rep && rt_replica_pick(r, NULL))
            q->last_rep = NULL; /* the only one with room is the one that refused it: try it again */
        if (rt_replica_pick(r, q->last_rep)) {
            queue_unlink(r, q);
            rt_req_dispatch(r, q, false);
            continue;
        }
        if (now > q->deadline) {
            bool moved = q->attempts > 0;
            char text[128];
            snprintf(text, sizeof(text), "no replica had room within %d ms%s", r->cfg->queue_timeout_ms,
                     moved ? " after its replica failed" : "");
            rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR,
                       moved ? GEMMA__V1__ERROR_CODE__WORKER_FAILED : GEMMA__V1__ERROR_CODE__OVERLOADED, text);
        }
    }
}

gm_status gc_router_run(gc_router *r)
{
    double stop_deadline = 0;
    zmq_pollitem_t *items = NULL;
    rt_replica **owners = NULL;
    int cap = 0;
    gm_status st = GM_OK;
    for (;;) {
        double now = gm_now_ms();
        if (atomic_load(&r->stop_flag) && !r->stopping) {
            r->stopping = true;
            stop_deadline = now + r->cfg->shutdown_timeout_ms;
            GM_INFO("stopping: %lld request(s) in flight", (long long)r->n_reqs);
        }
        if (r->stopping && (r->n_reqs == 0 || now >= stop_deadline))
            break;
        tick(r, now);
        int need = 3 + 2 * r->n_reps;
        if (need > cap) {
            zmq_pollitem_t *ni = realloc(items, (size_t)need * sizeof(*ni));
            rt_replica **no = ni ? realloc(owners, (size_t)need * sizeof(*no)) : NULL;
            if (ni)
                items = ni;
            if (!no) {
                st = gm_fail(GM_ERR_NOMEM, "router poll set");
                break;
            }
            owners = no;
            cap = need;
        }
        int n = 0;
        items[n] = (zmq_pollitem_t){r->front, 0, ZMQ_POLLIN, 0};
        owners[n++] = NULL;
        if (r->reg) {
            items[n] = (zmq_pollitem_t){r->reg, 0, ZMQ_POLLIN, 0};
            owners[n++] = NULL;
        }
        if (rt_http_fd(r) >= 0) {
            items[n] = (zmq_pollitem_t){NULL, rt_http_fd(r), ZMQ_POLLIN, 0};
            owners[n++] = NULL;
        }
        int first_rep = n;
        for (int i = 0; i < r->n_reps; i++) {
            rt_replica *p = r->reps[i];
            if (p->sock) {
                items[n] = (zmq_pollitem_t){p->sock, 0, ZMQ_POLLIN, 0};
                owners[n++] = p;
            }
            if (p->mon) {
                items[n] = (zmq_pollitem_t){p->mon, 0, ZMQ_POLLIN, 0};
                owners[n++] = p;
            }
        }
        int rc = zmq_poll(items, n, rt_http_timeout_ms(r, RT_POLL_MS));
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            st = gm_fail(GM_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        now = gm_now_ms();
        /* replicas first: their answers free room for new requests */
        for (int i = first_rep; i < n; i++) {
            rt_replica *p = owners[i];
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            bool still = false; /* the replica may have been removed by an earlier item */
            for (int k = 0; k < r->n_reps; k++)
                still |= r->reps[k] == p;
            if (!still)
                continue;
            if (items[i].socket == p->sock)
                drain_replica(r, p, now);
            else if (items[i].socket == p->mon && rt_drain_monitor(p) && p->up)
                rt_replica_down(r, p, "connection lost");
        }
        if (items[0].revents & ZMQ_POLLIN)
            drain_front(r);
        if (r->reg && (items[1].revents & ZMQ_POLLIN))
            drain_reg(r, now);
        rt_http_run(r); /* always: cheap when idle, and the HTTP server's timeouts need it */
    }
    free(items);
    free(owners);
    /* whatever is left ends now */
    for (size_t b = 0; b < RT_BUCKETS; b++)
        while (r->by_rid[b]) {
            rt_req *q = r->by_rid[b];
            rt_cancel_at_replica(r, q);
            rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN,
                       "gemma-router stopped before the request finished");
        }
    rt_http_run(r); /* the last HTTP answers out */
    GM_INFO("stopped");
    return st;
}

void gc_router_stop(gc_router *r)
{
    if (r)
        atomic_store(&r->stop_flag, 1);
}

/* Bind sock to ep and report the resolved endpoint in out. */
static gm_status bind_socket(void *sock, const char *ep, char *out, size_t cap)
{
    if (zmq_bind(sock, ep) != 0)
        return gm_fail(GM_ERR_ZMQ, "cannot bind '%s': %s", ep, zmq_strerror(errno));
    size_t n = cap;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, out, &n) != 0)
        snprintf(out, cap, "%s", ep);
    return GM_OK;
}

/* A ROUTER socket for clients or registrations; with CURVE, zap_domain picks its allow-list. */
static void *server_socket(gc_router *r, const char *zap_domain)
{
    void *s = zmq_socket(r->ctx, ZMQ_ROUTER);
    if (!s)
        return NULL;
    int zero = 0, one = 1, linger = 200;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    if (r->curve && gc_curve_set_server(s, &r->kp, zap_domain) != GM_OK) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* An allow-list of the keys found in paths[0..n). Caller owns *out. */
static gm_status allowlist_load(char **paths, int32_t n, gc_allowlist **out)
{
    *out = gc_allowlist_new();
    if (!*out)
        return gm_fail(GM_ERR_NOMEM, "allow-list");
    gm_status st = GM_OK;
    for (int32_t i = 0; i < n && st == GM_OK; i++)
        st = gc_allowlist_add_path(*out, paths[i]);
    return st;
}

gm_status gc_router_new(const gc_router_config *c, void *zmq_ctx, gc_router **out)
{
    *out = NULL;
    gm_status st = gc_router_config_validate(c);
    if (st != GM_OK)
        return st;
    gc_router *r = calloc(1, sizeof(*r));
    if (!r)
        return gm_fail(GM_ERR_NOMEM, "router");
    r->cfg = c;
    r->t_start = gm_now_ms();
    r->next_rid = 1;
    r->ctx = zmq_ctx;
    if (!r->ctx) {
        r->ctx = zmq_ctx_new();
        r->own_ctx = true;
        if (!r->ctx) {
            free(r);
            return gm_fail(GM_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
        }
    }
    if (c->curve) {
        r->curve = true;
        st = gc_curve_load_secret(c->curve_secret_key, &r->kp);
        if (st != GM_OK)
            goto fail;
        /* two allow-lists: client keys for the client socket, replica keys for the register socket */
        gc_allowlist *clients = NULL, *replicas = NULL;
        st = allowlist_load(c->curve_allow, c->n_curve_allow, &clients);
        if (st == GM_OK)
            st = allowlist_load(c->replica_allow, c->n_replica_allow, &replicas);
        if (st == GM_OK)
            st = gc_zap_start(r->ctx, clients, &r->zap);
        if (st == GM_OK)
            st = gc_zap_set_domain(r->zap, RT_ZAP_REPLICAS, replicas);
        if (st == GM_OK)
            GM_INFO("CURVE on: %d client key(s)%s, %d replica key(s) may register", gc_allowlist_count(clients),
                    c->register_ep ? "" : " (no register endpoint)", gc_allowlist_count(replicas));
        gc_allowlist_destroy(&clients);
        gc_allowlist_destroy(&replicas);
        if (st != GM_OK)
            goto fail;
        if (c->curve_replica_key) {
            gc_keypair rk;
            st = gc_curve_load(c->curve_replica_key, &rk);
            if (st != GM_OK)
                goto fail;
            memcpy(r->replica_key, rk.public_z85, sizeof(r->replica_key));
        }
    }
    r->front = server_socket(r, RT_ZAP_CLIENTS);
    if (!r->front) {
        st = gm_fail(GM_ERR_ZMQ, "client socket: %s", zmq_strerror(errno));
        goto fail;
    }
    st = bind_socket(r->front, c->listen, r->listen_ep, sizeof(r->listen_ep));
    if (st != GM_OK)
        goto fail;
    if (c->register_ep) {
        r->reg = server_socket(r, RT_ZAP_REPLICAS);
        int64_t max_frame = RT_REG_MAX_FRAME; /* a Register is a few hundred bytes; a peer sending more is dropped */
        if (!r->reg || zmq_setsockopt(r->reg, ZMQ_MAXMSGSIZE, &max_frame, sizeof(max_frame)) != 0) {
            st = gm_fail(GM_ERR_ZMQ, "register socket: %s", zmq_strerror(errno));
            goto fail;
        }
        st = bind_socket(r->reg, c->register_ep, r->reg_ep, sizeof(r->reg_ep));
        if (st != GM_OK)
            goto fail;
    }
    if ((st = rt_http_open(r)) != GM_OK)
        goto fail;
    for (int i = 0; i < c->n_replicas; i++)
        if (!rt_replica_add(r, c->replicas[i], NULL, r->replica_key[0] ? r->replica_key : NULL, false, 0)) {
            st = GM_ERR_INVALID_ARG; /* rt_replica_add said why */
            goto fail;
        }
    GM_INFO("listening on %s%s%s, %d static replica(s), max_in_flight %d", r->listen_ep,
            r->reg ? ", registrations on " : "", r->reg ? r->reg_ep : "", r->n_reps, c->max_in_flight);
    *out = r;
    return GM_OK;
fail:
    gc_router_destroy(&r);
    return st;
}

void gc_router_destroy(gc_router **rp)
{
    if (!rp || !*rp)
        return;
    gc_router *r = *rp;
    rt_http_close(r);
    for (size_t b = 0; b < RT_BUCKETS; b++)
        while (r->by_rid[b])
            rt_req_remove(r, r->by_rid[b]);
    for (int i = 0; i < r->n_reps; i++)
        rt_replica_free(r->reps[i]);
    free(r->reps);
    if (r->front)
        zmq_close(r->front);
    if (r->reg)
        zmq_close(r->reg);
    gc_zap_destroy(&r->zap);
    if (r->own_ctx)
        zmq_ctx_term(r->ctx);
    free(r->tx);
    memset(&r->kp, 0, sizeof(r->kp));
    free(r);
    *rp = NULL;
}

const char *gc_router_listen_endpoint(const gc_router *r)
{
    return r->listen_ep;
}

const char *gc_router_register_endpoint(const gc_router *r)
{
    return r->reg ? r->reg_ep : "";
}

void gc_router_get_counts(const gc_router *r, gc_router_counts *o)
{
    gc_router *m = (gc_router *)r;
    o->accepted = atomic_load(&m->c_accepted);
    o->finished = atomic_load(&m->c_finished);
    o->failed = atomic_load(&m->c_failed);
    o->shed = atomic_load(&m->c_shed);
    o->resent = atomic_load(&m->c_resent);
    o->replica_failures = atomic_load(&m->c_rep_fail);
    o->replicas_up = atomic_load(&m->c_up);
    o->replicas_known = atomic_load(&m->c_known);
    o->replicas_serving = atomic_load(&m->c_serving);
}
