/* router_replica.c - gemma-router's replicas: sockets, probes, picking, failover,
 * taking a replica that is not serving out of rotation, forwarding their replies. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/router_int.h"
#include "common/log.h"
#include "common/utf8.h"

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
gm_status rt_replica_open_socket(gc_router *r, rt_replica *p)
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

void rt_replica_set_label(rt_replica *p)
{
    if (strcmp(p->name, p->endpoint) != 0)
        snprintf(p->label, sizeof(p->label), "%s (%s)", p->name, p->endpoint);
    else
        snprintf(p->label, sizeof(p->label), "%s", p->endpoint);
}

rt_replica *rt_replica_add(gc_router *r, const char *endpoint, const char *name, const char *server_key,
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
    p->down_since = p->last_register = gm_now_ms();
    if (!p->endpoint || !p->name)
        gm_fail(GM_ERR_NOMEM, "replica '%s'", endpoint);
    if (!p->endpoint || !p->name || rt_replica_open_socket(r, p) != GM_OK) {
        replica_close_socket(p);
        free(p->endpoint);
        free(p->name);
        free(p);
        return NULL;
    }
    r->reps[r->n_reps++] = p;
    rt_update_counts(r);
    rt_replica_set_label(p);
    GM_INFO("replica %s added%s", p->label, dynamic ? " by registration" : "");
    return p;
}

void rt_replica_free(rt_replica *p)
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
void rt_replica_remove(gc_router *r, int i)
{
    rt_replica *p = r->reps[i];
    GM_INFO("replica %s removed", p->label);
    for (rt_req *q = r->q_head; q; q = q->qnext)
        if (q->last_rep == p)
            q->last_rep = NULL;
    rt_replica_free(p);
    memmove(&r->reps[i], &r->reps[i + 1], (size_t)(r->n_reps - i - 1) * sizeof(*r->reps));
    r->n_reps--;
    rt_update_counts(r);
}

static bool replica_usable(const gc_router *r, const rt_replica *p)
{
    return p->up && p->serving && !p->draining && p->in_flight < p->max_in_flight && p->sock;
}

/* The least-loaded usable replica other than exclude (round-robin among ties). */
rt_replica *rt_replica_pick(gc_router *r, const rt_replica *exclude)
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

/* Publish the replica counts (read by other threads through gc_router_get_counts). */
void rt_update_counts(gc_router *r)
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

/* The requests in flight on p (caller frees *out; NULL when out of memory). Returns
 * their number; with unstarted_only, only those that produced no output and were
 * not cancelled. */
static int replica_requests(gc_router *r, rt_replica *p, bool unstarted_only, rt_req ***out)
{
    int n = 0, cap = p->in_flight > 0 ? p->in_flight : 1;
    rt_req **list = malloc((size_t)cap * sizeof(*list));
    for (size_t b = 0; b < RT_BUCKETS && list && n < p->in_flight; b++)
        for (rt_req *q = r->by_rid[b]; q; q = q->next_rid)
            if (q->rep == p && n < cap && (!unstarted_only || (!q->started && !q->cancelled && !q->done)))
                list[n++] = q;
    if (!list && p->in_flight > 0)
        GM_ERROR("out of memory moving the requests of replica %s", p->name);
    *out = list;
    return list ? n : 0;
}

/* Take p out: fail or move its requests, and reconnect its socket from scratch
 * (so nothing queued for it is delivered when it comes back). */
void rt_replica_down(gc_router *r, rt_replica *p, const char *why)
{
    if (p->up)
        atomic_fetch_add(&r->c_rep_fail, 1);
    GM_WARN("replica %s taken out: %s; %d request(s) in flight there", p->label, why,
            p->in_flight);
    p->up = p->serving = false;
    p->down_since = gm_now_ms();
    p->failures++;
    p->ext_load = 0;
    rt_req **moved;
    int n = replica_requests(r, p, false, &moved);
    if (rt_replica_open_socket(r, p) != GM_OK)
        GM_ERROR("replica %s: cannot reopen its socket: %s", p->name, gm_last_error());
    rt_update_counts(r);
    for (int i = 0; i < n; i++) {
        rt_req *q = moved[i];
        q->rep = NULL;
        p->in_flight--;
        q->last_rep = p;
        char text[300];
        if (q->cancelled) {
            rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
                       "cancelled");
        } else if (q->started) {
            snprintf(text, sizeof(text), "replica %s failed while streaming this request (%s)", p->name, why);
            rt_req_finish(r, q, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED, text);
        } else {
            atomic_fetch_add(&r->c_resent, 1);
            rt_req_dispatch(r, q, false);
        }
    }
    free(moved);
}

/* p says it serves (or not). A replica that stops serving without shutting down
 * (its workers hung or restart) is out of rotation until it serves again; its
 * requests that produced nothing yet are cancelled there and sent elsewhere, so
 * they do not wait out its outage. A replica that is shutting down drains: what
 * it holds finishes there. */
static void replica_set_serving(gc_router *r, rt_replica *p, bool serving, bool shutting_down, const char *why)
{
    if (p->serving == serving)
        return;
    p->serving = serving;
    rt_update_counts(r);
    if (serving) {
        GM_INFO("replica %s is serving", p->label);
        return;
    }
    GM_WARN("replica %s out of rotation: %s; %d request(s) in flight there", p->label, why, p->in_flight);
    if (shutting_down)
        return;
    rt_req **moved;
    int n = replica_requests(r, p, true, &moved);
    for (int i = 0; i < n; i++) {
        rt_req *q = moved[i];
        rt_cancel_at_replica(r, q); /* its final chunk from p is dropped: q no longer runs there */
        q->rep = NULL;
        p->in_flight--;
        q->last_rep = p;
        atomic_fetch_add(&r->c_resent, 1);
        rt_req_dispatch(r, q, false);
    }
    free(moved);
}

/* A replica that answers but not to Health (for dead_ms) is out of rotation too. */
void rt_replica_health_tick(gc_router *r, rt_replica *p, double now)
{
    if (p->up && p->serving && now - p->last_health > r->cfg->dead_ms) {
        char why[64];
        snprintf(why, sizeof(why), "no Health answer for %.0f ms", now - p->last_health);
        replica_set_serving(r, p, false, false, why);
    }
}

static void replica_heard(gc_router *r, rt_replica *p, double now)
{
    p->last_heard = now;
    if (!p->up) {
        p->up = true;
        p->last_health = now; /* its Health deadline starts now */
        GM_INFO("replica %s is up", p->label);
        rt_update_counts(r);
    }
}

/* Make every string field of m (nested messages included) valid UTF-8 in place: a
 * replica may be an older gemmad that cut a character in half, and strict protobuf
 * clients would reject the whole message the router forwards. */
static void msg_fix_utf8(ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *(uint32_t *)((char *)m + f->quantifier_offset) != f->id)
            continue;
        void **items = (void **)((char *)m + f->offset); /* [n] char * or ProtobufCMessage * */
        size_t n = 1;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(size_t *)((char *)m + f->quantifier_offset);
            items = *(void ***)items;
        }
        for (size_t k = 0; k < n; k++) {
            if (!items[k])
                continue;
            if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                msg_fix_utf8(items[k]);
                continue;
            }
            char *str = items[k];
            size_t len = strlen(str);
            if (gm_utf8_valid(str, len))
                continue;
            char *fixed = malloc(3 * len + 1); /* each bad byte may become U+FFFD (3 bytes) */
            if (fixed) {
                gm_utf8_copy(fixed, 3 * len + 1, str, len);
                if (str != f->default_value)
                    free(str); /* protobuf-c's default allocator: malloc/free */
                items[k] = fixed;
            } else {
                str[0] = 0; /* no memory: empty beats invalid */
            }
        }
    }
}

void rt_replica_probe(gc_router *r, rt_replica *p, double now)
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
           c == GEMMA__V1__ERROR_CODE__WORKER_FAILED || c == GEMMA__V1__ERROR_CODE__UNAVAILABLE;
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
    rt_req_dispatch(r, q, false);
}

/* One ServerMessage from replica p. */
void rt_on_replica_msg(gc_router *r, rt_replica *p, const uint8_t *data, size_t len, double now)
{
    Gemma__V1__ServerMessage *m = gemma__v1__server_message__unpack(NULL, len, data);
    if (!m) {
        GM_WARN("replica %s sent an undecodable %zu-byte frame", p->name, len);
        return;
    }
    msg_fix_utf8(&m->base);
    replica_heard(r, p, now);
    bool keep = false;
    switch (m->body_case) {
    case GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH:
        p->last_health = now;
        replica_set_serving(r, p, m->health->serving && !m->health->shutting_down, m->health->shutting_down,
                            m->health->shutting_down ? "it is shutting down" : "its Health says not serving");
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
        rt_req *q = rt_req_by_rid(r, m->error->request_id);
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
            rt_send_error(r, q->client->id, q->client->id_len, q->cid, m->error->code, m->error->message);
            atomic_fetch_add(&r->c_failed, 1);
            rt_req_remove(r, q);
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
    uint8_t *ends = calloc(nc, 1); /* chunk i is its request's last (n > 1: a request has several here) */
    if (!reqs || !grouped || !groups || !gstart || !gfill || !ends) {
        GM_ERROR("out of memory forwarding %zu chunks from %s", nc, p->name);
        goto out;
    }
    uint64_t stamp = ++r->stamp;
    int ng = 0;
    for (size_t i = 0; i < nc; i++) {
        Gemma__V1__GenerateChunk *ch = m->chunks[i];
        rt_req *q = rt_req_by_rid(r, ch->request_id);
        if (!q || q->rep != p || q->done)
            continue; /* already ended here (cancel, failover) */
        /* a request's last chunk; with n > 1 each sequence's last chunk has a finish_reason, and only
         * the request's last one carries usage */
        bool final = ch->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE && (q->n <= 1 || ch->usage);
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
            ends[i] = 1;
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
        if (!rt_send_to_client(r, groups[g]->id, groups[g]->id_len, &out)) {
            /* the client is gone: stop its requests here and at the replicas */
            GM_INFO("a client left with %lld request(s) in flight: cancelling them", (long long)groups[g]->n_req);
            groups[g]->gone = true;
            for (size_t b = 0; b < RT_BUCKETS; b++)
                for (rt_req *q = r->by_rid[b]; q; q = q->next_rid)
                    if (q->client == groups[g] && !q->done) {
                        q->cancelled = true;
                        rt_cancel_at_replica(r, q);
                    }
        }
    }
    for (size_t i = 0; i < nc; i++)
        if (ends[i])
            rt_req_remove(r, reqs[i]);
out:
    free(ends);
    free(reqs);
    free(grouped);
    free(groups);
    free(gstart);
    free(gfill);
    if (!keep)
        gemma__v1__server_message__free_unpacked(m, NULL);
}

/* True when the monitor reported that p's connection dropped. */
bool rt_drain_monitor(rt_replica *p)
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
