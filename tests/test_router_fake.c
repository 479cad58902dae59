/* test_router_fake.c - the scriptable stand-in for gemmad used by test_router. */
#include "tests/test_router_fake.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "proto/gemma.pb-c.h"

static void fake_send(fake_replica *f, const uint8_t *id, size_t id_len, Gemma__V1__ServerMessage *m)
{
    m->protocol_version = 1;
    size_t n = gemma__v1__server_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    gemma__v1__server_message__pack(m, buf);
    zmq_send(f->sock, id, id_len, ZMQ_SNDMORE);
    zmq_send(f->sock, buf, n, 0);
    free(buf);
}

/* Send tokens [h->sent, upto) of held request h, finishing when upto == max_tokens. */
static void fake_emit(fake_replica *f, fake_held *h, int32_t upto)
{
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__GenerateChunk ch = GEMMA__V1__GENERATE_CHUNK__INIT;
    Gemma__V1__GenerateChunk *chp = &ch;
    Gemma__V1__Usage u = GEMMA__V1__USAGE__INIT;
    int32_t toks[1024];
    m.n_chunks = 1;
    m.chunks = &chp;
    ch.request_id = h->rid;
    if (!h->stream) { /* everything in one final chunk */
        int32_t n = 0;
        for (int32_t i = 0; i < h->max_tokens && n < 1024; i++)
            toks[n++] = fake_token(h->seed, i);
        ch.token_ids = toks;
        ch.n_token_ids = (size_t)n;
        ch.finish_reason = GEMMA__V1__FINISH_REASON__FINISH_LENGTH;
        u.completion_tokens = n;
        ch.usage = &u;
        fake_send(f, h->id, h->id_len, &m);
        h->sent = h->max_tokens;
        return;
    }
    for (; h->sent < upto; h->sent++) {
        toks[0] = fake_token(h->seed, h->sent);
        ch.token_ids = toks;
        ch.n_token_ids = 1;
        bool last = h->sent + 1 == h->max_tokens;
        ch.finish_reason = last ? GEMMA__V1__FINISH_REASON__FINISH_LENGTH : GEMMA__V1__FINISH_REASON__FINISH_NONE;
        ch.usage = last ? &u : NULL;
        u.completion_tokens = h->max_tokens;
        fake_send(f, h->id, h->id_len, &m);
    }
}

static void fake_on_msg(fake_replica *f, const uint8_t *id, size_t id_len, const uint8_t *data, size_t len)
{
    Gemma__V1__ClientMessage *cm = gemma__v1__client_message__unpack(NULL, len, data);
    Gemma__V1__ServerMessage m = GEMMA__V1__SERVER_MESSAGE__INIT;
    if (!cm)
        return;
    switch (cm->body_case) {
    case GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH: {
        if (atomic_load(&f->mute_health))
            break;
        Gemma__V1__HealthReply h = GEMMA__V1__HEALTH_REPLY__INIT;
        h.request_id = cm->request_id;
        h.serving = atomic_load(&f->serving);
        h.model = atomic_load(&f->bad_utf8) ? "fake-\xC3" : "fake";
        h.backend = "null";
        h.tp = 1;
        h.version = "fake-1";
        m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH;
        m.health = &h;
        atomic_fetch_add(&f->n_health, 1);
        fake_send(f, id, id_len, &m);
        break;
    }
    case GEMMA__V1__CLIENT_MESSAGE__BODY_STATS: {
        Gemma__V1__StatsReply s = GEMMA__V1__STATS_REPLY__INIT;
        s.request_id = cm->request_id;
        s.running = f->nh;
        s.kv_blocks_total = 100;
        s.completion_tokens = 5;
        m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_STATS;
        m.stats = &s;
        fake_send(f, id, id_len, &m);
        break;
    }
    case GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE: {
        const Gemma__V1__GenerateRequest *g = cm->generate;
        atomic_fetch_add(&f->n_generate, 1);
        fake_held h = {.id_len = id_len, .rid = cm->request_id, .max_tokens = g->max_tokens, .stream = g->stream};
        memcpy(h.id, id, id_len);
        int32_t marker = 0;
        if (g->prompt_case == GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS && g->tokens->n_ids >= 3) {
            marker = g->tokens->ids[1];
            h.seed = g->tokens->ids[2];
        }
        if (h.max_tokens <= 0 || h.max_tokens > 1000)
            h.max_tokens = 4;
        if (atomic_load(&f->bad_utf8)) { /* an error that echoes client text cut by "%.32s" */
            Gemma__V1__GenerateChunk ch = GEMMA__V1__GENERATE_CHUNK__INIT;
            Gemma__V1__GenerateChunk *chp = &ch;
            ch.request_id = h.rid;
            ch.finish_reason = GEMMA__V1__FINISH_REASON__FINISH_ERROR;
            ch.error_code = GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT;
            ch.error_message = "unknown role \"aaa\xC3\"";
            m.n_chunks = 1;
            m.chunks = &chp;
            fake_send(f, id, id_len, &m);
            break;
        }
        if (!atomic_load(&f->hold)) {
            fake_emit(f, &h, h.max_tokens);
        } else if (f->nh < FAKE_MAX_HELD) {
            if (marker == FAKE_MARK_FIRST && h.stream)
                fake_emit(f, &h, 1);
            f->held[f->nh++] = h;
            atomic_store(&f->n_held, f->nh);
        }
        break;
    }
    case GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL: {
        atomic_fetch_add(&f->n_cancel, 1);
        Gemma__V1__CancelReply cr = GEMMA__V1__CANCEL_REPLY__INIT;
        Gemma__V1__GenerateChunk ch = GEMMA__V1__GENERATE_CHUNK__INIT;
        Gemma__V1__GenerateChunk *chp = &ch;
        cr.request_id = cm->request_id;
        cr.target_request_id = cm->cancel->target_request_id;
        m.body_case = GEMMA__V1__SERVER_MESSAGE__BODY_CANCEL;
        m.cancel = &cr;
        for (int i = 0; i < f->nh; i++)
            if (f->held[i].rid == cr.target_request_id && f->held[i].id_len == id_len &&
                !memcmp(f->held[i].id, id, id_len)) {
                cr.found = true;
                ch.request_id = cr.target_request_id;
                ch.finish_reason = GEMMA__V1__FINISH_REASON__FINISH_CANCELLED;
                ch.error_code = GEMMA__V1__ERROR_CODE__CANCELLED;
                m.n_chunks = 1;
                m.chunks = &chp;
                f->held[i] = f->held[--f->nh];
                atomic_store(&f->n_held, f->nh);
                break;
            }
        fake_send(f, id, id_len, &m);
        break;
    }
    default:
        break;
    }
    gemma__v1__client_message__free_unpacked(cm, NULL);
}

static bool fake_bind(fake_replica *f, const char *ep)
{
    f->sock = zmq_socket(f->ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(f->sock, ZMQ_LINGER, &zero, sizeof(zero));
    for (int tries = 0; tries < 100; tries++) {
        if (zmq_bind(f->sock, ep) == 0) {
            size_t n = sizeof(f->ep);
            zmq_getsockopt(f->sock, ZMQ_LAST_ENDPOINT, f->ep, &n);
            atomic_store(&f->alive, true);
            return true;
        }
        usleep(20000); /* the old listener of a revived replica may still be closing */
    }
    zmq_close(f->sock);
    f->sock = NULL;
    return false;
}

static void *fake_thread(void *arg)
{
    fake_replica *f = arg;
    while (!atomic_load(&f->quit)) {
        int mode = atomic_load(&f->mode);
        if (mode == FAKE_KILL) {
            if (f->sock) {
                zmq_close(f->sock);
                f->sock = NULL;
                f->nh = 0;
                atomic_store(&f->n_held, 0);
                atomic_store(&f->alive, false);
            }
            usleep(2000);
            continue;
        }
        if (!f->sock && !fake_bind(f, f->ep))
            break;
        if (mode == FAKE_FREEZE) {
            usleep(2000);
            continue;
        }
        if (!atomic_load(&f->hold) && f->nh) { /* released: finish everything held */
            for (int i = 0; i < f->nh; i++)
                fake_emit(f, &f->held[i], f->held[i].max_tokens);
            f->nh = 0;
            atomic_store(&f->n_held, 0);
        }
        zmq_pollitem_t it = {f->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 5) <= 0)
            continue;
        for (;;) {
            uint8_t id[256];
            int n = zmq_recv(f->sock, id, sizeof(id), ZMQ_DONTWAIT);
            if (n < 0)
                break;
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_recv(&m, f->sock, 0);
            fake_on_msg(f, id, (size_t)n, zmq_msg_data(&m), zmq_msg_size(&m));
            zmq_msg_close(&m);
        }
    }
    if (f->sock)
        zmq_close(f->sock);
    return NULL;
}

fake_replica *fake_start(void *ctx, const char *ep)
{
    fake_replica *f = calloc(1, sizeof(*f));
    f->ctx = ctx;
    atomic_store(&f->serving, true);
    if (!fake_bind(f, ep)) {
        free(f);
        return NULL;
    }
    pthread_create(&f->th, NULL, fake_thread, f);
    return f;
}

void fake_stop(fake_replica *f)
{
    if (!f)
        return;
    atomic_store(&f->quit, true);
    pthread_join(f->th, NULL);
    free(f);
}
