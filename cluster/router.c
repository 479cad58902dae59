/* router.c - gemma-router's event loop: clients, replicas, probes, failover, registration. */
#include "cluster/router.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "cluster/curve.h"
#include "common/log.h"
#include "proto/cluster.pb-c.h"
#include "proto/gemma.pb-c.h"

#define RT_VERSION "router-0.1.0"
#define RT_PROTO_MAJOR 1
#define RT_BUCKETS 16384    /* request hash buckets (chained; fine up to ~100k in flight) */
#define RT_CLIENT_BUCKETS 4096
#define RT_POLL_MS 20
#define RT_DRAIN_BATCH 512  /* messages read from one socket per loop turn */

typedef struct rt_client {
    uint8_t id[255]; /* ZeroMQ routing id of the client's connection */
    uint8_t id_len;
    uint64_t hash;
    int64_t n_req;   /* requests in flight */
    uint64_t stamp;  /* grouping mark used while forwarding one replica message */
    int32_t group;
    bool gone;       /* a send found its connection closed */
    struct rt_client *next;
} rt_client;

typedef struct rt_replica rt_replica;

typedef struct rt_req {
    uint64_t rid;          /* router id: the request_id the replica sees */
    uint64_t cid;          /* the client's request_id */
    rt_client *client;
    rt_replica *rep;       /* where it runs; NULL while held in the queue */
    rt_replica *last_rep;  /* the replica that last failed or refused it */
    int32_t attempts;      /* replicas it was sent to */
    bool started;          /* a chunk reached the client: it can no longer move */
    bool cancelled;
    bool done;
    uint8_t *msg;          /* [msg_len] packed ClientMessage{request_id = rid, generate} */
    size_t msg_len;
    double deadline;       /* while queued */
    struct rt_req *next_rid, *next_cid;
    struct rt_req *qprev, *qnext;
} rt_req;

struct rt_replica {
    char *endpoint;
    char *name;
    char label[320];       /* "name (endpoint)" or the endpoint, for logs */
    char server_key[GC_KEY_Z85_LEN + 1];
    bool dynamic;          /* registered itself (forgotten when gone long enough) */
    bool draining;         /* unregistered: no new requests */
    bool up;               /* answered within dead_ms */
    bool serving;          /* its last HealthReply said serving */
    void *sock;            /* DEALER to its client endpoint */
    void *mon;             /* PAIR receiving the DEALER's disconnect events */
    double last_heard, last_probe, down_since, last_register;
    int32_t in_flight;     /* router requests there */
    int32_t max_in_flight;
    int32_t in_flight_at_probe;
    int32_t ext_load;      /* its running + waiting that are not ours */
    Gemma__V1__ServerMessage *health; /* last HealthReply (owned) */
    Gemma__V1__ServerMessage *stats;  /* last StatsReply (owned) */
    int64_t sent, failures;
    int serial;
};

struct gc_router {
    const gc_router_config *cfg;
    void *ctx;
    bool own_ctx;
    void *front, *reg;
    gc_zap *zap;
    gc_keypair kp;
    bool curve;
    char replica_key[GC_KEY_Z85_LEN + 1];
    char listen_ep[256], reg_ep[256];

    rt_replica **reps;
    int n_reps, cap_reps, rr, serial;

    rt_req *by_rid[RT_BUCKETS];
    rt_req *by_cid[RT_BUCKETS];
    int64_t n_reqs;
    rt_client *clients[RT_CLIENT_BUCKETS];
    int64_t n_clients;
    rt_req *q_head, *q_tail;
    int32_t q_len;

    uint64_t next_rid;
    uint64_t stamp;
    double t_start;
    _Atomic int stop_flag;
    bool stopping;

    uint8_t *tx;
    size_t tx_cap;

    _Atomic int64_t c_accepted, c_finished, c_failed, c_shed, c_resent, c_rep_fail, c_cancelled;
    _Atomic int32_t c_up, c_known, c_serving;
};

static void update_counts(gc_router *r);

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t mix64(uint64_t x)
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
    return mix64(h);
}

static size_t cid_bucket(const rt_client *c, uint64_t cid)
{
    return mix64(c->hash ^ mix64(cid)) & (RT_BUCKETS - 1);
}

/* ---- clients ---- */

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

/* ---- requests ---- */

static rt_req *req_by_rid(gc_router *r, uint64_t rid)
{
    for (rt_req *q = r->by_rid[mix64(rid) & (RT_BUCKETS - 1)]; q; q = q->next_rid)
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
static void req_remove(gc_router *r, rt_req *q)
{
    rt_req **p = &r->by_rid[mix64(q->rid) & (RT_BUCKETS - 1)];
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

/* ---- sending ---- */

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
static bool send_to_client(gc_router *r, const uint8_t *id, size_t id_len, Gemma__V1__ServerMessage *m)
{
    m->protocol_version = RT_PROTO_MAJOR;
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

static void send_error(gc_router *r, const uint8_t *id, size_t id_len, uint64_t request_id,
                       Gemma__V1__ErrorCode code, const char *text)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__Error e = GEMMA__V1__ERROR__INIT;
    e.request_id = request_id;
    e.code = code;
    e.message = (char *)text;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_ERROR;
    m.error = &e;
    send_to_client(r, id, id_len, &m);
}

static void cancel_at_replica(gc_router *r, rt_req *q);

/* End request q with a final chunk made by the router and forget it. */
static void req_finish(gc_router *r, rt_req *q, Gemma__V1__FinishReason fr, Gemma__V1__ErrorCode code,
                       const char *text)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__GenerateChunk ch = GEMMA__V1__GENERATE_CHUNK__INIT;
    Gemma__V1__GenerateChunk *chp = &ch;
    ch.request_id = q->cid;
    ch.finish_reason = fr;
    ch.error_code = code;
    ch.error_message = (char *)text;
    m.n_chunks = 1;
    m.chunks = &chp;
    send_to_client(r, q->client->id, q->client->id_len, &m);
    if (fr == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED)
        atomic_fetch_add(&r->c_cancelled, 1);
    else
        atomic_fetch_add(&r->c_failed, 1);
    req_remove(r, q);
}

/* ---- replicas ---- */

static void replica_close_socket(rt_replica *p)
{
    if (p->sock) {
        zmq_socket_monitor(p->sock, NULL, 0);
        zmq_close(p->sock);
        p->sock = NULL;
    }
    if (p->mon) {
        zmq_close(p->mon);
        p->mon = NULL;
    }
}

/* (Re)create the DEALER to p's endpoint with its disconnect monitor. */
static gm_status replica_open_socket(gc_router *r, rt_replica *p)
{
    replica_close_socket(p);
    p->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    if (!p->sock)
        return gm_fail(GM_ERR_ZMQ, "zmq_socket: %s", zmq_strerror(errno));
    int zero = 0, one = 1, ivl = 100, ivl_max = 1000;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(p->sock, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(p->sock, ZMQ_RCVHWM, &zero, sizeof(zero));
    zmq_setsockopt(p->sock, ZMQ_IMMEDIATE, &one, sizeof(one)); /* never queue for a dead peer */
    zmq_setsockopt(p->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(p->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof(ivl_max));
    if (p->server_key[0]) {
        if (!r->curve)
            return gm_fail(GM_ERR_INVALID_ARG, "replica %s has a CURVE key but the router has no key pair "
                                               "(set curve = true and curve_secret_key)", p->endpoint);
        gm_status s = gc_curve_set_client(p->sock, &r->kp, p->server_key);
        if (s != GM_OK)
            return s;
    }
    char mon_ep[96];
    snprintf(mon_ep, sizeof(mon_ep), "inproc://gc-router-mon-%p-%d-%d", (void *)r, p->serial, r->serial++);
    if (zmq_socket_monitor(p->sock, mon_ep, ZMQ_EVENT_DISCONNECTED) == 0) {
        p->mon = zmq_socket(r->ctx, ZMQ_PAIR);
        zmq_setsockopt(p->mon, ZMQ_LINGER, &zero, sizeof(zero));
        if (zmq_connect(p->mon, mon_ep) != 0) {
            zmq_close(p->mon);
            p->mon = NULL;
        }
    }
    if (zmq_connect(p->sock, p->endpoint) != 0)
        return gm_fail(GM_ERR_INVALID_ARG, "replica endpoint '%s': %s", p->endpoint, zmq_strerror(errno));
    return GM_OK;
}

static void replica_set_label(rt_replica *p)
{
    if (strcmp(p->name, p->endpoint) != 0)
        snprintf(p->label, sizeof(p->label), "%s (%s)", p->name, p->endpoint);
    else
        snprintf(p->label, sizeof(p->label), "%s", p->endpoint);
}

static rt_replica *replica_add(gc_router *r, const char *endpoint, const char *name, const char *server_key,
                               bool dynamic, int32_t max_in_flight)
{
    if (r->n_reps == r->cap_reps) {
        int cap = r->cap_reps ? r->cap_reps * 2 : 8;
        rt_replica **n = realloc(r->reps, (size_t)cap * sizeof(*n));
        if (!n) {
            gm_fail(GM_ERR_NOMEM, "replica table of %d", cap);
            return NULL;
        }
        r->reps = n;
        r->cap_reps = cap;
    }
    rt_replica *p = calloc(1, sizeof(*p));
    if (!p) {
        gm_fail(GM_ERR_NOMEM, "replica '%s'", endpoint);
        return NULL;
    }
    p->endpoint = strdup(endpoint);
    p->name = strdup(name && *name ? name : endpoint);
    if (server_key)
        snprintf(p->server_key, sizeof(p->server_key), "%s", server_key);
    p->dynamic = dynamic;
    p->max_in_flight = max_in_flight > 0 ? max_in_flight : r->cfg->max_in_flight;
    p->serial = r->serial++;
    p->down_since = p->last_register = now_ms();
    if (!p->endpoint || !p->name)
        gm_fail(GM_ERR_NOMEM, "replica '%s'", endpoint);
    if (!p->endpoint || !p->name || replica_open_socket(r, p) != GM_OK) {
        replica_close_socket(p);
        free(p->endpoint);
        free(p->name);
        free(p);
        return NULL;
    }
    r->reps[r->n_reps++] = p;
    update_counts(r);
    replica_set_label(p);
    GM_INFO("replica %s added%s", p->label, dynamic ? " by registration" : "");
    return p;
}

static void replica_free(rt_replica *p)
{
    replica_close_socket(p);
    if (p->health)
        gemma__v1__server_message__free_unpacked(p->health, NULL);
    if (p->stats)
        gemma__v1__server_message__free_unpacked(p->stats, NULL);
    free(p->endpoint);
    free(p->name);
    free(p);
}

/* Drop replica i (it has no requests). */
static void replica_remove(gc_router *r, int i)
{
    rt_replica *p = r->reps[i];
    GM_INFO("replica %s removed", p->label);
    for (rt_req *q = r->q_head; q; q = q->qnext)
        if (q->last_rep == p)
            q->last_rep = NULL;
    replica_free(p);
    memmove(&r->reps[i], &r->reps[i + 1], (size_t)(r->n_reps - i - 1) * sizeof(*r->reps));
    r->n_reps--;
    update_counts(r);
}

static bool replica_usable(const gc_router *r, const rt_replica *p)
{
    return p->up && p->serving && !p->draining && p->in_flight < p->max_in_flight && p->sock;
}

/* The least-loaded usable replica other than exclude (round-robin among ties). */
static rt_replica *replica_pick(gc_router *r, const rt_replica *exclude)
{
    rt_replica *best = NULL;
    int64_t best_load = 0;
    int n = r->n_reps;
    for (int k = 0; k < n; k++) {
        rt_replica *p = r->reps[(r->rr + k) % n];
        if (p == exclude || !replica_usable(r, p))
            continue;
        int64_t load = (int64_t)p->in_flight + p->ext_load;
        if (!best || load < best_load) {
            best = p;
            best_load = load;
        }
    }
    if (best)
        r->rr = (r->rr + 1) % (n ? n : 1);
    return best;
}

static void replica_down(gc_router *r, rt_replica *p, const char *why);

/* Publish the replica counts (read by other threads through gc_router_get_counts). */
static void update_counts(gc_router *r)
{
    int32_t up = 0, serving = 0;
    for (int i = 0; i < r->n_reps; i++) {
        up += r->reps[i]->up;
        serving += r->reps[i]->up && r->reps[i]->serving && !r->reps[i]->draining;
    }
    atomic_store(&r->c_up, up);
    atomic_store(&r->c_serving, serving);
    atomic_store(&r->c_known, r->n_reps);
}

/* Send q to a replica, hold it in the queue, or end it. */
static void req_dispatch(gc_router *r, rt_req *q, bool is_new)
{
    for (;;) {
        if (q->attempts >= r->cfg->max_attempts) {
            req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED,
                       "request failed on every replica it was sent to");
            return;
        }
        rt_replica *p = replica_pick(r, q->last_rep);
        if (!p) {
            if (!is_new || r->q_len < r->cfg->max_queue) {
                /* the wait is counted from when it first found no room */
                queue_push(r, q, q->deadline > 0 ? q->deadline : now_ms() + r->cfg->queue_timeout_ms);
                return;
            }
            int up = 0;
            for (int i = 0; i < r->n_reps; i++)
                up += r->reps[i]->up && r->reps[i]->serving;
            char text[160];
            snprintf(text, sizeof(text), up ? "every replica is full (%d up, max_in_flight %d each)"
                                            : "no replica is serving (%d of %d up)",
                     up, up ? r->cfg->max_in_flight : r->n_reps);
            send_error(r, q->client->id, q->client->id_len, q->cid, GEMMA__V1__ERROR_CODE__OVERLOADED, text);
            atomic_fetch_add(&r->c_shed, 1);
            req_remove(r, q);
            return;
        }
        if (zmq_send(p->sock, q->msg, q->msg_len, ZMQ_DONTWAIT) < 0) {
            replica_down(r, p, errno == EAGAIN ? "not connected" : zmq_strerror(errno));
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
static void cancel_at_replica(gc_router *r, rt_req *q)
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

/* Take p out: fail or move its requests, and reconnect its socket from scratch
 * (so nothing queued for it is delivered when it comes back). */
static void replica_down(gc_router *r, rt_replica *p, const char *why)
{
    if (p->up)
        atomic_fetch_add(&r->c_rep_fail, 1);
    GM_WARN("replica %s taken out: %s; %d request(s) in flight there", p->label, why,
            p->in_flight);
    p->up = p->serving = false;
    p->down_since = now_ms();
    p->failures++;
    p->ext_load = 0;
    int n = 0, cap = p->in_flight > 0 ? p->in_flight : 1;
    rt_req **moved = malloc((size_t)cap * sizeof(*moved));
    for (size_t b = 0; b < RT_BUCKETS && moved && n < p->in_flight; b++)
        for (rt_req *q = r->by_rid[b]; q; q = q->next_rid)
            if (q->rep == p && n < cap)
                moved[n++] = q;
    if (replica_open_socket(r, p) != GM_OK)
        GM_ERROR("replica %s: cannot reopen its socket: %s", p->name, gm_last_error());
    update_counts(r);
    for (int i = 0; i < n; i++) {
        rt_req *q = moved[i];
        q->rep = NULL;
        p->in_flight--;
        q->last_rep = p;
        char text[300];
        if (q->cancelled) {
            req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
                       "cancelled");
        } else if (q->started) {
            snprintf(text, sizeof(text), "replica %s failed while streaming this request (%s)", p->name, why);
            req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED, text);
        } else {
            atomic_fetch_add(&r->c_resent, 1);
            req_dispatch(r, q, false);
        }
    }
    if (!moved && p->in_flight > 0)
        GM_ERROR("out of memory failing over replica %s", p->name);
    free(moved);
}

static void replica_heard(gc_router *r, rt_replica *p, double now)
{
    p->last_heard = now;
    if (!p->up) {
        p->up = true;
        GM_INFO("replica %s is up", p->label);
        update_counts(r);
    }
}

static void replica_probe(gc_router *r, rt_replica *p, double now)
{
    Gemma__V1__ClientMessage m = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__HealthRequest h = GEMMA__V1__HEALTH_REQUEST__INIT;
    Gemma__V1__StatsRequest s = GEMMA__V1__STATS_REQUEST__INIT;
    uint8_t buf[64];
    m.protocol_version = RT_PROTO_MAJOR;
    m.request_id = r->next_rid++;
    m.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    m.health = &h;
    size_t n = gemma__v1__client_message__pack(&m, buf);
    zmq_send(p->sock, buf, n, ZMQ_DONTWAIT);
    m.request_id = r->next_rid++;
    m.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_STATS;
    m.stats = &s;
    n = gemma__v1__client_message__pack(&m, buf);
    zmq_send(p->sock, buf, n, ZMQ_DONTWAIT);
    p->last_probe = now;
    p->in_flight_at_probe = p->in_flight;
}

static bool retryable(Gemma__V1__ErrorCode c)
{
    return c == GEMMA__V1__ERROR_CODE__OVERLOADED || c == GEMMA__V1__ERROR_CODE__SHUTTING_DOWN ||
           c == GEMMA__V1__ERROR_CODE__WORKER_FAILED;
}

/* q was refused by its replica before producing anything: try elsewhere. */
static void req_retry(gc_router *r, rt_req *q)
{
    rt_replica *p = q->rep;
    if (p)
        p->in_flight--;
    q->rep = NULL;
    q->last_rep = p;
    atomic_fetch_add(&r->c_resent, 1);
    req_dispatch(r, q, false);
}

/* One ServerMessage from replica p. */
static void on_replica_msg(gc_router *r, rt_replica *p, const uint8_t *data, size_t len, double now)
{
    Gemma__V1__ServerMessage *m = gemma__v1__server_message__unpack(NULL, len, data);
    if (!m) {
        GM_WARN("replica %s sent an undecodable %zu-byte frame", p->name, len);
        return;
    }
    replica_heard(r, p, now);
    bool keep = false;
    switch (m->body_case) {
    case GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH:
        if (p->serving != (m->health->serving && !m->health->shutting_down)) {
            p->serving = !p->serving;
            GM_INFO("replica %s %s serving", p->name, p->serving ? "is" : "stopped");
            update_counts(r);
        }
        if (p->health)
            gemma__v1__server_message__free_unpacked(p->health, NULL);
        p->health = m;
        keep = true;
        break;
    case GEMMA__V1__SERVER_MESSAGE__BODY_STATS: {
        int64_t theirs = (int64_t)m->stats->running + m->stats->waiting - p->in_flight_at_probe;
        p->ext_load = theirs > 0 ? (int32_t)theirs : 0;
        if (p->stats)
            gemma__v1__server_message__free_unpacked(p->stats, NULL);
        p->stats = m;
        keep = true;
        break;
    }
    case GEMMA__V1__SERVER_MESSAGE__BODY_ERROR: {
        rt_req *q = req_by_rid(r, m->error->request_id);
        if (!q || q->rep != p) {
            if (m->error->code == GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION) {
                GM_WARN("replica %s speaks another protocol version: %s", p->name, m->error->message);
                p->serving = false;
            }
            break;
        }
        if (retryable(m->error->code) && !q->started && !q->cancelled) {
            req_retry(r, q);
        } else {
            send_error(r, q->client->id, q->client->id_len, q->cid, m->error->code, m->error->message);
            atomic_fetch_add(&r->c_failed, 1);
            req_remove(r, q);
        }
        break;
    }
    default:
        break;
    }
    if (m->n_chunks == 0) {
        if (!keep)
            gemma__v1__server_message__free_unpacked(m, NULL);
        return;
    }

    /* Forward chunks, one message per client. */
    size_t nc = m->n_chunks;
    rt_req **reqs = calloc(nc, sizeof(*reqs));
    Gemma__V1__GenerateChunk **grouped = malloc(nc * sizeof(*grouped));
    rt_client **groups = malloc(nc * sizeof(*groups));
    int32_t *gstart = calloc(nc + 1, sizeof(*gstart)), *gfill = calloc(nc + 1, sizeof(*gfill));
    if (!reqs || !grouped || !groups || !gstart || !gfill) {
        GM_ERROR("out of memory forwarding %zu chunks from %s", nc, p->name);
        goto out;
    }
    uint64_t stamp = ++r->stamp;
    int ng = 0;
    for (size_t i = 0; i < nc; i++) {
        Gemma__V1__GenerateChunk *ch = m->chunks[i];
        rt_req *q = req_by_rid(r, ch->request_id);
        if (!q || q->rep != p || q->done)
            continue; /* already ended here (cancel, failover) */
        bool final = ch->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE;
        if (final && ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_ERROR && retryable(ch->error_code) &&
            !q->started && !q->cancelled && ch->n_token_ids == 0 && ch->text.len == 0) {
            req_retry(r, q);
            continue;
        }
        q->started = true;
        ch->request_id = q->cid;
        reqs[i] = q;
        if (final) {
            q->done = true;
            if (ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED)
                atomic_fetch_add(&r->c_cancelled, 1);
            else if (ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_ERROR)
                atomic_fetch_add(&r->c_failed, 1);
            else
                atomic_fetch_add(&r->c_finished, 1);
        }
        rt_client *c = q->client;
        if (c->stamp != stamp) {
            c->stamp = stamp;
            c->group = ng;
            groups[ng++] = c;
        }
        gstart[c->group + 1]++;
    }
    for (int g = 0; g < ng; g++)
        gstart[g + 1] += gstart[g];
    for (size_t i = 0; i < nc; i++)
        if (reqs[i]) {
            int g = reqs[i]->client->group;
            grouped[gstart[g] + gfill[g]++] = m->chunks[i];
        }
    for (int g = 0; g < ng; g++) {
        Gemma__V1__ServerMessage out = GEMMA__V1__SERVER_MESSAGE__INIT;
        out.n_chunks = (size_t)(gstart[g + 1] - gstart[g]);
        out.chunks = grouped + gstart[g];
        if (groups[g]->gone)
            continue;
        if (!send_to_client(r, groups[g]->id, groups[g]->id_len, &out)) {
            /* the client is gone: stop its requests here and at the replicas */
            GM_INFO("a client left with %lld request(s) in flight: cancelling them", (long long)groups[g]->n_req);
            groups[g]->gone = true;
            for (size_t b = 0; b < RT_BUCKETS; b++)
                for (rt_req *q = r->by_rid[b]; q; q = q->next_rid)
                    if (q->client == groups[g] && !q->done) {
                        q->cancelled = true;
                        cancel_at_replica(r, q);
                    }
        }
    }
    for (size_t i = 0; i < nc; i++)
        if (reqs[i] && reqs[i]->done)
            req_remove(r, reqs[i]);
out:
    free(reqs);
    free(grouped);
    free(groups);
    free(gstart);
    free(gfill);
    if (!keep)
        gemma__v1__server_message__free_unpacked(m, NULL);
}

/* ---- the router's own Health / Stats answers ---- */

static void answer_health(gc_router *r, const uint8_t *id, size_t id_len, uint64_t request_id)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__HealthReply h = GEMMA__V1__HEALTH_REPLY__INIT;
    h.request_id = request_id;
    h.shutting_down = r->stopping;
    h.version = RT_VERSION;
    h.uptime_s = (now_ms() - r->t_start) / 1e3;
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
    send_to_client(r, id, id_len, &m);
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
    s.uptime_s = (now_ms() - r->t_start) / 1e3;
    m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_STATS;
    m.stats = &s;
    send_to_client(r, id, id_len, &m);
}

/* ---- client messages ---- */

static void on_generate(gc_router *r, const uint8_t *id, size_t id_len, Gemma__V1__ClientMessage *cm)
{
    if (r->stopping) {
        send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN, "gemma-router is stopping");
        return;
    }
    rt_client *c = client_get(r, id, id_len, true);
    if (!c) {
        send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__INTERNAL, "router out of memory");
        return;
    }
    if (req_by_cid(r, c, cm->request_id)) {
        char text[96];
        snprintf(text, sizeof(text), "request id %llu is already in flight on this connection",
                 (unsigned long long)cm->request_id);
        send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__DUPLICATE_ID, text);
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
        send_error(r, id, id_len, cid, GEMMA__V1__ERROR_CODE__INTERNAL, "router out of memory");
        client_release(r, c);
        return;
    }
    gemma__v1__client_message__pack(cm, buf);
    q->rid = cm->request_id;
    q->cid = cid;
    q->client = c;
    q->msg = buf;
    q->msg_len = n;
    size_t b = mix64(q->rid) & (RT_BUCKETS - 1);
    q->next_rid = r->by_rid[b];
    r->by_rid[b] = q;
    b = cid_bucket(c, cid);
    q->next_cid = r->by_cid[b];
    r->by_cid[b] = q;
    c->n_req++;
    r->n_reqs++;
    atomic_fetch_add(&r->c_accepted, 1);
    req_dispatch(r, q, true);
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
    send_to_client(r, id, id_len, &m);
    if (!q || q->done || q->cancelled)
        return;
    q->cancelled = true;
    if (!q->rep)
        req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED, "cancelled");
    else
        cancel_at_replica(r, q);
}

static void on_client_msg(gc_router *r, const uint8_t *id, size_t id_len, const uint8_t *data, size_t len)
{
    Gemma__V1__ClientMessage *cm = gemma__v1__client_message__unpack(NULL, len, data);
    if (!cm) {
        send_error(r, id, id_len, 0, GEMMA__V1__ERROR_CODE__MALFORMED, "the frame is not a gemma.v1.ClientMessage");
        return;
    }
    if (cm->protocol_version != RT_PROTO_MAJOR) {
        char text[96];
        snprintf(text, sizeof(text), "protocol version %u is not supported (this router speaks %d)",
                 cm->protocol_version, RT_PROTO_MAJOR);
        send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION, text);
    } else {
        switch (cm->body_case) {
        case GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE: on_generate(r, id, id_len, cm); break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL: on_cancel(r, id, id_len, cm); break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH: answer_health(r, id, id_len, cm->request_id); break;
        case GEMMA__V1__CLIENT_MESSAGE__BODY_STATS: answer_stats(r, id, id_len, cm->request_id); break;
        default:
            send_error(r, id, id_len, cm->request_id, GEMMA__V1__ERROR_CODE__UNKNOWN_TYPE,
                       "the message has no known body");
        }
    }
    gemma__v1__client_message__free_unpacked(cm, NULL);
}

/* ---- registration ---- */

static void reg_reply(gc_router *r, const uint8_t *id, size_t id_len, bool ok, const char *err)
{
    Gemma__Cluster__V1__ClusterMessage m = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__INIT;
    Gemma__Cluster__V1__RegisterAck a = GEMMA__CLUSTER__V1__REGISTER_ACK__INIT;
    a.accepted = ok;
    a.error = (char *)(err ? err : "");
    a.router = r->listen_ep;
    a.heartbeat_ms = r->cfg->heartbeat_ms;
    m.body_case = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_ACK;
    m.ack = &a;
    uint8_t buf[1024];
    size_t n = gemma__cluster__v1__cluster_message__get_packed_size(&m);
    if (n > sizeof(buf))
        return;
    gemma__cluster__v1__cluster_message__pack(&m, buf);
    if (zmq_send(r->reg, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 || zmq_send(r->reg, buf, n, ZMQ_DONTWAIT) < 0)
        GM_WARN("cannot answer a registration: %s", zmq_strerror(errno));
}

static rt_replica *replica_find(gc_router *r, const char *name, const char *endpoint)
{
    for (int i = 0; i < r->n_reps; i++) {
        rt_replica *p = r->reps[i];
        if ((name && *name && strcmp(p->name, name) == 0) || (endpoint && *endpoint && strcmp(p->endpoint, endpoint) == 0))
            return p;
    }
    return NULL;
}

static void on_register_msg(gc_router *r, const uint8_t *id, size_t id_len, const uint8_t *data, size_t len, double now)
{
    Gemma__Cluster__V1__ClusterMessage *m = gemma__cluster__v1__cluster_message__unpack(NULL, len, data);
    if (!m) {
        reg_reply(r, id, id_len, false, "not a gemma.cluster.v1.ClusterMessage");
        return;
    }
    if (m->body_case == GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_REG) {
        const Gemma__Cluster__V1__Register *g = m->reg;
        char err[200] = "";
        if (g->version != GEMMA__CLUSTER__V1__CLUSTER_VERSION__CLUSTER_VERSION_CURRENT)
            snprintf(err, sizeof(err), "cluster protocol version %u, router speaks %d", g->version,
                     GEMMA__CLUSTER__V1__CLUSTER_VERSION__CLUSTER_VERSION_CURRENT);
        else if (!g->endpoint || !*g->endpoint)
            snprintf(err, sizeof(err), "Register without an endpoint");
        else if (g->server_key && *g->server_key && !gc_curve_valid_z85(g->server_key))
            snprintf(err, sizeof(err), "server_key is not a Z85 public key");
        else if (g->server_key && *g->server_key && !r->curve)
            snprintf(err, sizeof(err), "the replica uses CURVE but the router has no key pair");
        if (err[0]) {
            GM_WARN("registration refused: %s", err);
            reg_reply(r, id, id_len, false, err);
            gemma__cluster__v1__cluster_message__free_unpacked(m, NULL);
            return;
        }
        rt_replica *p = replica_find(r, g->name, g->endpoint);
        if (!p) {
            p = replica_add(r, g->endpoint, g->name, g->server_key, true, g->max_in_flight);
            if (!p) {
                snprintf(err, sizeof(err), "cannot connect to '%s': %s", g->endpoint, gm_last_error());
                reg_reply(r, id, id_len, false, err);
                gemma__cluster__v1__cluster_message__free_unpacked(m, NULL);
                return;
            }
        } else if (strcmp(p->endpoint, g->endpoint) != 0 ||
                   strcmp(p->server_key, g->server_key ? g->server_key : "") != 0) {
            GM_INFO("replica %s moved to %s", p->name, g->endpoint);
            char *ep = strdup(g->endpoint);
            if (ep) {
                if (p->up)
                    replica_down(r, p, "re-registered at another endpoint");
                free(p->endpoint);
                p->endpoint = ep;
                replica_set_label(p);
                snprintf(p->server_key, sizeof(p->server_key), "%s", g->server_key ? g->server_key : "");
                replica_open_socket(r, p);
            }
        }
        if (p->draining)
            GM_INFO("replica %s registered again", p->name);
        p->draining = false;
        p->last_register = now;
        update_counts(r);
        if (g->max_in_flight > 0)
            p->max_in_flight = g->max_in_flight;
        reg_reply(r, id, id_len, true, NULL);
    } else if (m->body_case == GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_UNREGISTER) {
        rt_replica *p = replica_find(r, m->unregister->name, m->unregister->endpoint);
        if (p && !p->draining) {
            GM_INFO("replica %s unregistered (%s): draining %d request(s)", p->name,
                    m->unregister->reason ? m->unregister->reason : "", p->in_flight);
            p->draining = true;
            update_counts(r);
        }
    }
    gemma__cluster__v1__cluster_message__free_unpacked(m, NULL);
}

/* ---- loop ---- */

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
            send_error(r, id, id_len, 0, GEMMA__V1__ERROR_CODE__MALFORMED, "expected one frame per message");
            continue;
        }
        on_client_msg(r, id, id_len, zmq_msg_data(&pl), zmq_msg_size(&pl));
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
        on_register_msg(r, id, id_len, zmq_msg_data(&pl), zmq_msg_size(&pl), now);
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
        on_replica_msg(r, p, zmq_msg_data(&m), zmq_msg_size(&m), now);
        zmq_msg_close(&m);
        if (p->sock != sock)
            return; /* reopened meanwhile */
    }
}

/* True when the monitor reported that p's connection dropped. */
static bool drain_monitor(rt_replica *p)
{
    bool lost = false;
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, p->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return lost;
        }
        if (zmq_msg_size(&ev) >= 2) {
            uint16_t e;
            memcpy(&e, zmq_msg_data(&ev), 2);
            if (e == ZMQ_EVENT_DISCONNECTED)
                lost = true;
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        while (more) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            zmq_msg_recv(&x, p->mon, 0);
            more = zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
    }
}

static void tick(gc_router *r, double now)
{
    for (int i = 0; i < r->n_reps; i++) {
        rt_replica *p = r->reps[i];
        if (p->up && now - p->last_heard > r->cfg->dead_ms) {
            char why[64];
            snprintf(why, sizeof(why), "silent for %.0f ms", now - p->last_heard);
            replica_down(r, p, why);
        }
        /* a replica that is down is asked more often, so that it is used again soon */
        double ivl = p->up ? r->cfg->heartbeat_ms : (r->cfg->heartbeat_ms < 100 ? r->cfg->heartbeat_ms : 100);
        if (now - p->last_probe >= ivl)
            replica_probe(r, p, now);
    }
    for (int i = r->n_reps - 1; i >= 0; i--) {
        rt_replica *p = r->reps[i];
        if (!p->dynamic || p->in_flight > 0)
            continue;
        double since = p->down_since > p->last_register ? p->down_since : p->last_register;
        if (p->draining || (!p->up && now - since > r->cfg->forget_ms))
            replica_remove(r, i);
    }
    /* held requests: send those that fit now, end those that waited too long */
    for (rt_req *q = r->q_head, *next; q; q = next) {
        next = q->qnext; /* stays valid: dispatching q only appends to the queue */
        if (!replica_pick(r, q->last_rep) && q->last_rep && replica_pick(r, NULL))
            q->last_rep = NULL; /* the only one with room is the one that refused it: try it again */
        if (replica_pick(r, q->last_rep)) {
            queue_unlink(r, q);
            req_dispatch(r, q, false);
            continue;
        }
        if (now > q->deadline) {
            bool moved = q->attempts > 0;
            char text[128];
            snprintf(text, sizeof(text), "no replica had room within %d ms%s", r->cfg->queue_timeout_ms,
                     moved ? " after its replica failed" : "");
            req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR,
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
        double now = now_ms();
        if (atomic_load(&r->stop_flag) && !r->stopping) {
            r->stopping = true;
            stop_deadline = now + r->cfg->shutdown_timeout_ms;
            GM_INFO("stopping: %lld request(s) in flight", (long long)r->n_reqs);
        }
        if (r->stopping && (r->n_reqs == 0 || now >= stop_deadline))
            break;
        tick(r, now);
        int need = 2 + 2 * r->n_reps;
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
        int rc = zmq_poll(items, n, RT_POLL_MS);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            st = gm_fail(GM_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        now = now_ms();
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
            else if (items[i].socket == p->mon && drain_monitor(p) && p->up)
                replica_down(r, p, "connection lost");
        }
        if (items[0].revents & ZMQ_POLLIN)
            drain_front(r);
        if (r->reg && (items[1].revents & ZMQ_POLLIN))
            drain_reg(r, now);
    }
    free(items);
    free(owners);
    /* whatever is left ends now */
    for (size_t b = 0; b < RT_BUCKETS; b++)
        while (r->by_rid[b]) {
            rt_req *q = r->by_rid[b];
            cancel_at_replica(r, q);
            req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN,
                       "gemma-router stopped before the request finished");
        }
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

static void *server_socket(gc_router *r)
{
    void *s = zmq_socket(r->ctx, ZMQ_ROUTER);
    if (!s)
        return NULL;
    int zero = 0, one = 1, linger = 200;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    if (r->curve && gc_curve_set_server(s, &r->kp, "gemma-router") != GM_OK) {
        zmq_close(s);
        return NULL;
    }
    return s;
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
    r->t_start = now_ms();
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
        gc_allowlist *allow = gc_allowlist_new();
        if (!allow) {
            st = gm_fail(GM_ERR_NOMEM, "allow-list");
            goto fail;
        }
        for (int i = 0; i < c->n_curve_allow && st == GM_OK; i++)
            st = gc_allowlist_add_path(allow, c->curve_allow[i]);
        if (st == GM_OK)
            st = gc_zap_start(r->ctx, allow, &r->zap);
        GM_INFO("CURVE on: %d allowed client key(s)", gc_allowlist_count(allow));
        gc_allowlist_destroy(&allow);
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
    r->front = server_socket(r);
    if (!r->front) {
        st = gm_fail(GM_ERR_ZMQ, "client socket: %s", zmq_strerror(errno));
        goto fail;
    }
    st = bind_socket(r->front, c->listen, r->listen_ep, sizeof(r->listen_ep));
    if (st != GM_OK)
        goto fail;
    if (c->register_ep) {
        r->reg = server_socket(r);
        if (!r->reg) {
            st = gm_fail(GM_ERR_ZMQ, "register socket: %s", zmq_strerror(errno));
            goto fail;
        }
        st = bind_socket(r->reg, c->register_ep, r->reg_ep, sizeof(r->reg_ep));
        if (st != GM_OK)
            goto fail;
    }
    for (int i = 0; i < c->n_replicas; i++)
        if (!replica_add(r, c->replicas[i], NULL, r->replica_key[0] ? r->replica_key : NULL, false, 0)) {
            st = GM_ERR_INVALID_ARG; /* replica_add said why */
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
    for (size_t b = 0; b < RT_BUCKETS; b++)
        while (r->by_rid[b])
            req_remove(r, r->by_rid[b]);
    for (int i = 0; i < r->n_reps; i++)
        replica_free(r->reps[i]);
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
