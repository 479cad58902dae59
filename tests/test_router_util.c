/* test_router_util.c - the gemma-router tests' shared harness (see test_router_util.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"

#include "common/log.h"
#include "tests/test_router_util.h"

double ms_now(void)
{
    return gm_now_ms();
}

static void *router_thread(void *arg)
{
    env *e = arg;
    gc_router_run(e->r);
    return NULL;
}

void env_init(env *e, int n_fakes, int max_in_flight, bool with_register)
{
    memset(e, 0, sizeof(*e));
    e->ctx = zmq_ctx_new();
    gc_router_config_defaults(&e->cfg);
    free(e->cfg.listen);
    e->cfg.listen = strdup("tcp://127.0.0.1:*");
    e->cfg.heartbeat_ms = 50;
    e->cfg.dead_ms = 1000; /* generous: a loaded CI host must not starve a fake replica into a false failover */
    e->cfg.max_in_flight = max_in_flight;
    e->cfg.queue_timeout_ms = 3000;
    e->cfg.shutdown_timeout_ms = 2000;
    e->cfg.log_level = getenv("GM_TEST_LOG") ? GM_LOG_DEBUG : GM_LOG_WARN;
    if (with_register)
        e->cfg.register_ep = strdup("tcp://127.0.0.1:*");
    e->cfg.replicas = calloc(3, sizeof(char *));
    for (int i = 0; i < n_fakes; i++) {
        e->f[i] = fake_start(e->ctx, "tcp://127.0.0.1:*");
        assert_non_null(e->f[i]);
        e->cfg.replicas[e->cfg.n_replicas++] = strdup(e->f[i]->ep);
    }
    e->nf = n_fakes;
}

void env_run(env *e)
{
    gm_status st = gc_router_new(&e->cfg, NULL, &e->r);
    if (st != GM_OK)
        fail_msg("gc_router_new: %s", gm_last_error());
    snprintf(e->ep, sizeof(e->ep), "%s", gc_router_listen_endpoint(e->r));
    pthread_create(&e->th, NULL, router_thread, e);
}

void env_start(env *e, int n_fakes, int max_in_flight, bool with_register)
{
    env_init(e, n_fakes, max_in_flight, with_register);
    env_run(e);
}

void env_halt(env *e)
{
    if (!e->r)
        return;
    gc_router_stop(e->r);
    pthread_join(e->th, NULL);
    gc_router_destroy(&e->r);
}

void env_stop(env *e)
{
    env_halt(e);
    for (int i = 0; i < e->nf; i++)
        fake_stop(e->f[i]);
    gc_router_config_free(&e->cfg);
    zmq_ctx_term(e->ctx);
}

int32_t up_count(env *e)
{
    gc_router_counts c;
    gc_router_get_counts(e->r, &c);
    return c.replicas_up;
}

int32_t serving_count(env *e)
{
    gc_router_counts c;
    gc_router_get_counts(e->r, &c);
    return c.replicas_serving;
}

void wait_up(env *e, int n)
{
    double t0 = ms_now();
    while ((up_count(e) < n || serving_count(e) < n) && ms_now() - t0 < WAIT_MS)
        usleep(2000);
    assert_int_equal(up_count(e), n);
    assert_int_equal(serving_count(e), n);
}

void pump(gmc_client *c, int timeout_ms)
{
    gmc_event ev[64];
    int n = gmc_poll(c, ev, 64, timeout_ms);
    assert_true(n >= 0);
    for (int i = 0; i < n; i++) {
        res *x = ev[i].user;
        for (int k = 0; k < ev[i].n_tokens && x->n < 64; k++)
            x->toks[x->n++] = ev[i].tokens[k];
        if (ev[i].finished) {
            x->done = true;
            x->fr = ev[i].finish_reason;
            x->err = ev[i].error;
        }
    }
}

uint64_t submit(gmc_client *c, int32_t seed, int32_t marker, int32_t max_tokens, res *x, uint64_t id)
{
    int32_t ids[3] = {2, marker, seed};
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = ids;
    p.n_prompt_ids = 3;
    p.max_tokens = max_tokens;
    p.request_id = id;
    memset(x, 0, sizeof(*x));
    uint64_t got = 0;
    assert_int_equal(gmc_submit(c, &p, x, &got), GMC_OK);
    return got;
}

void wait_done(gmc_client *c, res *xs, int n)
{
    double t0 = ms_now();
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += xs[i].done;
        if (done == n)
            return;
        if (ms_now() - t0 > WAIT_MS)
            fail_msg("%d of %d requests finished within %d ms", done, n, WAIT_MS);
        pump(c, 20);
    }
}

void expect_tokens(const res *x, int32_t seed, int32_t n)
{
    assert_true(x->done);
    assert_int_equal(x->err, GMC_OK);
    assert_int_equal(x->fr, GMC_FINISH_LENGTH);
    assert_int_equal(x->n, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(x->toks[i], fake_token(seed, i));
}

void *raw_dealer(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}

size_t pack_generate(uint8_t *buf, uint64_t rid, int32_t seed, int32_t max_tokens, bool stream)
{
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    Gemma__V1__TokenIds t = GEMMA__V1__TOKEN_IDS__INIT;
    int32_t ids[3] = {2, 0, seed};
    t.ids = ids;
    t.n_ids = 3;
    g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    g.tokens = &t;
    g.max_tokens = max_tokens;
    g.stream = stream;
    cm.protocol_version = 1;
    cm.request_id = rid;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = &g;
    assert_true(gemma__v1__client_message__get_packed_size(&cm) <= 256);
    return gemma__v1__client_message__pack(&cm, buf);
}

Gemma__V1__ServerMessage *raw_call(void *s, const void *buf, size_t n)
{
    assert_true(zmq_send(s, buf, n, 0) >= 0);
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
    uint8_t rx[4096];
    int r = zmq_recv(s, rx, sizeof(rx), 0);
    assert_true(r > 0);
    Gemma__V1__ServerMessage *m = gemma__v1__server_message__unpack(NULL, (size_t)r, rx);
    assert_non_null(m);
    return m;
}

int handshake_result(void *mon)
{
    for (;;) {
        zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, WAIT_MS) != 1)
            return 0;
        zmq_msg_t a, b;
        zmq_msg_init(&a);
        zmq_msg_init(&b);
        zmq_msg_recv(&a, mon, 0);
        zmq_msg_recv(&b, mon, 0);
        uint16_t ev;
        memcpy(&ev, zmq_msg_data(&a), 2);
        zmq_msg_close(&a);
        zmq_msg_close(&b);
        if (ev & (ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                  ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL))
            return ev;
    }
}

void *curve_dealer(void *ctx, const char *ep, const gc_keypair *kp, const char *server_pub, void **mon,
                   const char *mon_ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    if (kp)
        assert_int_equal(gc_curve_set_client(s, kp, server_pub), GM_OK);
    zmq_socket_monitor(s, mon_ep, ZMQ_EVENT_ALL);
    *mon = zmq_socket(ctx, ZMQ_PAIR);
    zmq_connect(*mon, mon_ep);
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}
