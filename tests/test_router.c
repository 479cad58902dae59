/* test_router.c - gemma-router against scripted in-process replicas: routing, id rewriting,
 * cancel, load shedding, failover (frozen and dropped replicas), comeback, registration,
 * protocol errors, CurveZMQ on the client endpoint. Waits are bounded polls on events. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "client/gemma_client.h"
#include "cluster/curve.h"
#include "cluster/register.h"
#include "cluster/router.h"
#include "common/log.h"
#include "proto/gemma.pb-c.h"
#include "tests/test_router_fake.h"

#define WAIT_MS 15000 /* upper bound of every wait: reached only when something is broken */

static double ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the router under test, on a thread ---- */

typedef struct env {
    gc_router_config cfg;
    gc_router *r;
    pthread_t th;
    void *ctx; /* the fakes' context */
    fake_replica *f[3];
    int nf;
    char ep[256];
} env;

static void *router_thread(void *arg)
{
    env *e = arg;
    gc_router_run(e->r);
    return NULL;
}

static void env_start(env *e, int n_fakes, int max_in_flight, bool with_register)
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
    gm_status st = gc_router_new(&e->cfg, NULL, &e->r);
    if (st != GM_OK)
        fail_msg("gc_router_new: %s", gm_last_error());
    snprintf(e->ep, sizeof(e->ep), "%s", gc_router_listen_endpoint(e->r));
    pthread_create(&e->th, NULL, router_thread, e);
}

static void env_stop(env *e)
{
    gc_router_stop(e->r);
    pthread_join(e->th, NULL);
    gc_router_destroy(&e->r);
    for (int i = 0; i < e->nf; i++)
        fake_stop(e->f[i]);
    gc_router_config_free(&e->cfg);
    zmq_ctx_term(e->ctx);
}

static int32_t up_count(env *e)
{
    gc_router_counts c;
    gc_router_get_counts(e->r, &c);
    return c.replicas_up;
}

static int32_t serving_count(env *e)
{
    gc_router_counts c;
    gc_router_get_counts(e->r, &c);
    return c.replicas_serving;
}

/* Wait (bounded) until n replicas are up and serving. */
static void wait_up(env *e, int n)
{
    double t0 = ms_now();
    while ((up_count(e) < n || serving_count(e) < n) && ms_now() - t0 < WAIT_MS)
        usleep(2000);
    assert_int_equal(up_count(e), n);
    assert_int_equal(serving_count(e), n);
}

/* ---- client side ---- */

typedef struct res {
    int32_t toks[64];
    int n;
    bool done;
    gmc_finish fr;
    gmc_code err;
} res;

static void pump(gmc_client *c, int timeout_ms)
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

static uint64_t submit(gmc_client *c, int32_t seed, int32_t marker, int32_t max_tokens, res *x, uint64_t id)
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

/* Pump until every res in xs[0..n) is done (bounded). */
static void wait_done(gmc_client *c, res *xs, int n)
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

static void expect_tokens(const res *x, int32_t seed, int32_t n)
{
    assert_true(x->done);
    assert_int_equal(x->err, GMC_OK);
    assert_int_equal(x->fr, GMC_FINISH_LENGTH);
    assert_int_equal(x->n, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(x->toks[i], fake_token(seed, i));
}

#define WAIT_UNTIL(cond)                                                                                        \
    do {                                                                                                        \
        double t0_ = ms_now();                                                                                  \
        while (!(cond) && ms_now() - t0_ < WAIT_MS)                                                             \
            usleep(2000);                                                                                       \
        assert_true(cond);                                                                                      \
    } while (0)

/* ---- tests ---- */

static void test_route_and_balance(void **state)
{
    env e;
    env_start(&e, 2, 64, false);
    wait_up(&e, 2);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    res xs[40];
    for (int i = 0; i < 40; i++)
        submit(c, 100 + i, 0, 1 + i % 7, &xs[i], 0);
    wait_done(c, xs, 40);
    for (int i = 0; i < 40; i++)
        expect_tokens(&xs[i], 100 + i, 1 + i % 7);
    /* both replicas took work */
    assert_true(atomic_load(&e.f[0]->n_generate) > 0);
    assert_true(atomic_load(&e.f[1]->n_generate) > 0);
    assert_int_equal(atomic_load(&e.f[0]->n_generate) + atomic_load(&e.f[1]->n_generate), 40);

    gmc_health h;
    assert_int_equal(gmc_health_check(c, WAIT_MS, &h), GMC_OK);
    assert_true(h.serving);
    assert_string_equal(h.backend, "null");
    gmc_stats s;
    assert_int_equal(gmc_stats_get(c, WAIT_MS, &s), GMC_OK);
    assert_int_equal(s.requests_total, 40);
    assert_int_equal(s.requests_finished, 40);
    assert_int_equal(s.kv_blocks_total, 200); /* 100 per fake replica, summed */

    /* non-streamed requests come back whole */
    gmc_params p;
    gmc_params_init(&p);
    int32_t ids[3] = {2, 0, 77};
    p.prompt_ids = ids;
    p.n_prompt_ids = 3;
    p.max_tokens = 9;
    p.stream = false;
    gmc_result r;
    assert_int_equal(gmc_generate(c, &p, WAIT_MS, NULL, NULL, &r), GMC_OK);
    assert_int_equal(r.n_tokens, 9);
    for (int i = 0; i < 9; i++)
        assert_int_equal(r.tokens[i], fake_token(77, i));
    gmc_result_free(&r);
    gmc_close(&c);
    env_stop(&e);
}

/* Two clients use the same request ids at once: the router keeps them apart. */
static void test_same_ids_two_clients(void **state)
{
    env e;
    env_start(&e, 1, 64, false);
    wait_up(&e, 1);
    gmc_client *a, *b;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &a), GMC_OK);
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &b), GMC_OK);
    res xa[5], xb[5];
    for (int i = 0; i < 5; i++) {
        submit(a, 10 + i, 0, 6, &xa[i], 7 + i);
        submit(b, 50 + i, 0, 6, &xb[i], 7 + i);
    }
    wait_done(a, xa, 5);
    wait_done(b, xb, 5);
    for (int i = 0; i < 5; i++) {
        expect_tokens(&xa[i], 10 + i, 6);
        expect_tokens(&xb[i], 50 + i, 6);
    }
    gmc_close(&a);
    gmc_close(&b);
    env_stop(&e);
}

static void test_cancel_relayed(void **state)
{
    env e;
    env_start(&e, 1, 64, false);
    wait_up(&e, 1);
    atomic_store(&e.f[0]->hold, true);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    res x;
    uint64_t id = submit(c, 5, FAKE_MARK_FIRST, 10, &x, 0);
    WAIT_UNTIL(atomic_load(&e.f[0]->n_held) == 1);
    while (x.n == 0 && !x.done)
        pump(c, 20);
    assert_int_equal(x.n, 1);
    assert_int_equal(gmc_cancel(c, id), GMC_OK);
    wait_done(c, &x, 1);
    assert_int_equal(x.fr, GMC_FINISH_CANCELLED);
    assert_int_equal(atomic_load(&e.f[0]->n_cancel), 1);
    assert_int_equal(atomic_load(&e.f[0]->n_held), 0);
    gmc_close(&c);
    env_stop(&e);
}

/* Every replica full: OVERLOADED at once; room again after the work ends. */
static void test_overload_shed(void **state)
{
    env e;
    env_start(&e, 2, 2, false);
    wait_up(&e, 2);
    atomic_store(&e.f[0]->hold, true);
    atomic_store(&e.f[1]->hold, true);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    res xs[5];
    for (int i = 0; i < 4; i++)
        submit(c, i, 0, 3, &xs[i], 0);
    WAIT_UNTIL(atomic_load(&e.f[0]->n_held) + atomic_load(&e.f[1]->n_held) == 4);
    assert_int_equal(atomic_load(&e.f[0]->n_held), 2); /* spread, max_in_flight 2 each */
    submit(c, 9, 0, 3, &xs[4], 0);
    wait_done(c, &xs[4], 1);
    assert_int_equal(xs[4].err, GMC_ERR_OVERLOADED);
    assert_int_equal(xs[4].fr, GMC_FINISH_ERROR);
    atomic_store(&e.f[0]->hold, false);
    atomic_store(&e.f[1]->hold, false);
    wait_done(c, xs, 4);
    for (int i = 0; i < 4; i++)
        expect_tokens(&xs[i], i, 3);
    submit(c, 9, 0, 3, &xs[4], 0);
    wait_done(c, &xs[4], 1);
    expect_tokens(&xs[4], 9, 3);
    gc_router_counts k;
    gc_router_get_counts(e.r, &k);
    assert_int_equal(k.shed, 1);
    gmc_close(&c);
    env_stop(&e);
}

/* Replica A fails with two streaming and two not-yet-started requests on it: the
 * started ones end with WORKER_FAILED, the others finish on B with the right output,
 * and A is used again once it answers. kill = connection dropped, else frozen. */
static void failover_case(bool kill)
{
    env e;
    env_start(&e, 2, 64, false);
    wait_up(&e, 2);
    fake_replica *A = e.f[0], *B = e.f[1];
    atomic_store(&B->serving, false); /* everything goes to A first */
    WAIT_UNTIL(serving_count(&e) == 1);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    double t0;
    atomic_store(&A->hold, true);
    res xs[4], extra[6];
    submit(c, 1, FAKE_MARK_FIRST, 5, &xs[0], 0);
    submit(c, 2, FAKE_MARK_FIRST, 5, &xs[1], 0);
    submit(c, 3, 0, 5, &xs[2], 0);
    submit(c, 4, 0, 5, &xs[3], 0);
    WAIT_UNTIL(atomic_load(&A->n_held) == 4);
    assert_int_equal(atomic_load(&B->n_generate), 0);
    while (xs[0].n == 0 || xs[1].n == 0)
        pump(c, 20);
    atomic_store(&B->serving, true);
    atomic_store(&A->mode, kill ? FAKE_KILL : FAKE_FREEZE);
    wait_done(c, xs, 4);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(xs[i].fr, GMC_FINISH_ERROR);
        assert_int_equal(xs[i].err, GMC_ERR_WORKER_FAILED);
    }
    expect_tokens(&xs[2], 3, 5);
    expect_tokens(&xs[3], 4, 5);
    assert_int_equal(atomic_load(&B->n_generate), 2);
    /* the router keeps serving on B */
    for (int i = 0; i < 3; i++)
        submit(c, 20 + i, 0, 4, &extra[i], 0);
    wait_done(c, extra, 3);
    for (int i = 0; i < 3; i++)
        expect_tokens(&extra[i], 20 + i, 4);
    gc_router_counts k;
    gc_router_get_counts(e.r, &k);
    assert_int_equal(k.replica_failures, 1);
    assert_int_equal(k.resent, 2);
    /* A comes back and is used again */
    int a_before = atomic_load(&A->n_generate);
    atomic_store(&A->hold, false);
    atomic_store(&A->mode, FAKE_RUN);
    WAIT_UNTIL(serving_count(&e) == 2);
    atomic_store(&B->hold, true); /* B's load grows, so new work prefers A */
    for (int i = 3; i < 6; i++)
        submit(c, 20 + i, 0, 4, &extra[i], 0);
    t0 = ms_now();
    while (atomic_load(&A->n_generate) == a_before && ms_now() - t0 < WAIT_MS)
        pump(c, 20);
    assert_true(atomic_load(&A->n_generate) > a_before);
    atomic_store(&B->hold, false);
    wait_done(c, extra + 3, 3);
    for (int i = 3; i < 6; i++)
        expect_tokens(&extra[i], 20 + i, 4);
    gmc_close(&c);
    env_stop(&e);
}

static void test_failover_frozen(void **state)
{
    failover_case(false);
}

static void test_failover_dropped(void **state)
{
    failover_case(true);
}

/* All replicas gone: new work is refused with a typed error, nothing hangs. */
static void test_no_replica(void **state)
{
    env e;
    env_start(&e, 1, 64, false);
    wait_up(&e, 1);
    atomic_store(&e.f[0]->mode, FAKE_KILL);
    WAIT_UNTIL(up_count(&e) == 0);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    gmc_health h;
    assert_int_equal(gmc_health_check(c, WAIT_MS, &h), GMC_OK);
    assert_false(h.serving);
    res x;
    submit(c, 1, 0, 3, &x, 0);
    wait_done(c, &x, 1);
    assert_int_equal(x.err, GMC_ERR_OVERLOADED);
    gmc_close(&c);
    env_stop(&e);
}

/* A replica that registers itself is used; after Unregister it is dropped. */
static void test_registration(void **state)
{
    env e;
    env_start(&e, 0, 64, true);
    fake_replica *f = fake_start(e.ctx, "tcp://127.0.0.1:*");
    assert_non_null(f);
    gc_register_opts o = {.router = gc_router_register_endpoint(e.r), .endpoint = f->ep, .name = "fake-1",
                          .heartbeat_ms = 50, .rank = -1};
    gc_register *g;
    assert_int_equal(gc_register_start(NULL, &o, &g), GM_OK);
    WAIT_UNTIL(gc_register_accepted(g));
    wait_up(&e, 1);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    res x;
    submit(c, 42, 0, 5, &x, 0);
    wait_done(c, &x, 1);
    expect_tokens(&x, 42, 5);
    assert_int_equal(atomic_load(&f->n_generate), 1);
    gc_register_stop(&g, "test done");
    gc_router_counts k;
    double t0 = ms_now();
    do {
        usleep(5000);
        gc_router_get_counts(e.r, &k);
    } while (k.replicas_known != 0 && ms_now() - t0 < WAIT_MS);
    assert_int_equal(k.replicas_known, 0);
    submit(c, 43, 0, 5, &x, 0);
    wait_done(c, &x, 1);
    assert_int_equal(x.err, GMC_ERR_OVERLOADED);
    gmc_close(&c);
    fake_stop(f);
    env_stop(&e);
}

/* Raw frames: malformed, wrong version, unknown body, duplicate id. */
static Gemma__V1__ServerMessage *raw_call(void *s, const void *buf, size_t n)
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

static void test_protocol_errors(void **state)
{
    env e;
    env_start(&e, 1, 64, false);
    wait_up(&e, 1);
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(zmq_connect(s, e.ep), 0);
    Gemma__V1__ServerMessage *m = raw_call(s, "\xff\xff\xff", 3);
    assert_int_equal(m->body_case, GEMMA__V1__SERVER_MESSAGE__BODY_ERROR);
    assert_int_equal(m->error->code, GEMMA__V1__ERROR_CODE__MALFORMED);
    gemma__v1__server_message__free_unpacked(m, NULL);

    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__HealthRequest hr = GEMMA__V1__HEALTH_REQUEST__INIT;
    uint8_t buf[256];
    cm.protocol_version = 2;
    cm.request_id = 5;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    cm.health = &hr;
    m = raw_call(s, buf, gemma__v1__client_message__pack(&cm, buf));
    assert_int_equal(m->error->code, GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION);
    assert_int_equal(m->error->request_id, 5);
    gemma__v1__server_message__free_unpacked(m, NULL);

    cm.protocol_version = 1;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY__NOT_SET;
    m = raw_call(s, buf, gemma__v1__client_message__pack(&cm, buf));
    assert_int_equal(m->error->code, GEMMA__V1__ERROR_CODE__UNKNOWN_TYPE);
    gemma__v1__server_message__free_unpacked(m, NULL);

    /* duplicate id while the first is held */
    atomic_store(&e.f[0]->hold, true);
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    Gemma__V1__TokenIds t = GEMMA__V1__TOKEN_IDS__INIT;
    int32_t ids[3] = {2, 0, 3};
    t.ids = ids;
    t.n_ids = 3;
    g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    g.tokens = &t;
    g.max_tokens = 2;
    g.stream = true;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = &g;
    cm.request_id = 99;
    size_t n = gemma__v1__client_message__pack(&cm, buf);
    assert_true(zmq_send(s, buf, n, 0) >= 0);
    WAIT_UNTIL(atomic_load(&e.f[0]->n_held) == 1);
    m = raw_call(s, buf, n);
    assert_int_equal(m->error->code, GEMMA__V1__ERROR_CODE__DUPLICATE_ID);
    assert_int_equal(m->error->request_id, 99);
    gemma__v1__server_message__free_unpacked(m, NULL);
    atomic_store(&e.f[0]->hold, false);
    int got = 0, final = 0;
    while (!final) { /* the held one now finishes under id 99 */
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
        uint8_t rx[4096];
        int r = zmq_recv(s, rx, sizeof(rx), 0);
        m = gemma__v1__server_message__unpack(NULL, (size_t)r, rx);
        assert_non_null(m);
        for (size_t i = 0; i < m->n_chunks; i++) {
            assert_int_equal(m->chunks[i]->request_id, 99);
            got += (int)m->chunks[i]->n_token_ids;
            final |= m->chunks[i]->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE;
        }
        gemma__v1__server_message__free_unpacked(m, NULL);
    }
    assert_int_equal(got, 2);
    zmq_close(s);
    zmq_ctx_term(ctx);
    env_stop(&e);
}

/* Poll a client socket's monitor for a handshake outcome. */
static int handshake_result(void *mon)
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

/* A DEALER with key pair kp (NULL: plain) that trusts server_pub; returns its monitor. */
static void *curve_dealer(void *ctx, const char *ep, const gc_keypair *kp, const char *server_pub, void **mon,
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

static void test_router_curve(void **state)
{
    char dir[] = "/tmp/gm_router_curveXXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[512], allow[512];
    gc_keypair server, good, bad;
    assert_int_equal(gc_curve_generate(&server), GM_OK);
    assert_int_equal(gc_curve_generate(&good), GM_OK);
    assert_int_equal(gc_curve_generate(&bad), GM_OK);
    snprintf(path, sizeof(path), "%s/router", dir);
    assert_int_equal(gc_curve_write_keypair(&server, path, false), GM_OK);
    snprintf(path, sizeof(path), "%s/clients", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(allow, sizeof(allow), "%s/clients/good", dir);
    assert_int_equal(gc_curve_write_keypair(&good, allow, false), GM_OK);

    env e;
    memset(&e, 0, sizeof(e));
    e.ctx = zmq_ctx_new();
    gc_router_config_defaults(&e.cfg);
    free(e.cfg.listen);
    e.cfg.listen = strdup("tcp://127.0.0.1:*");
    e.cfg.heartbeat_ms = 50;
    e.cfg.dead_ms = 1000;
    e.cfg.log_level = GM_LOG_WARN;
    e.f[0] = fake_start(e.ctx, "tcp://127.0.0.1:*");
    e.nf = 1;
    e.cfg.replicas = calloc(1, sizeof(char *));
    e.cfg.replicas[e.cfg.n_replicas++] = strdup(e.f[0]->ep);
    e.cfg.curve = true;
    snprintf(path, sizeof(path), "%s/router.key_secret", dir);
    e.cfg.curve_secret_key = strdup(path);
    e.cfg.curve_allow = calloc(1, sizeof(char *));
    snprintf(path, sizeof(path), "%s/clients", dir);
    e.cfg.curve_allow[e.cfg.n_curve_allow++] = strdup(path);
    if (gc_router_new(&e.cfg, NULL, &e.r) != GM_OK)
        fail_msg("gc_router_new: %s", gm_last_error());
    snprintf(e.ep, sizeof(e.ep), "%s", gc_router_listen_endpoint(e.r));
    pthread_create(&e.th, NULL, router_thread, &e);
    WAIT_UNTIL(up_count(&e) == 1);

    void *ctx = zmq_ctx_new();
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__HealthRequest hr = GEMMA__V1__HEALTH_REQUEST__INIT;
    uint8_t buf[64];
    cm.protocol_version = 1;
    cm.request_id = 1;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    cm.health = &hr;
    size_t n = gemma__v1__client_message__pack(&cm, buf);

    /* the allowed key: handshake succeeds and Health is answered */
    void *mon, *s = curve_dealer(ctx, e.ep, &good, server.public_z85, &mon, "inproc://mon-good");
    assert_int_equal(handshake_result(mon), ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    Gemma__V1__ServerMessage *m = raw_call(s, buf, n);
    assert_int_equal(m->body_case, GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH);
    gemma__v1__server_message__free_unpacked(m, NULL);
    zmq_close(s);
    zmq_close(mon);

    /* a key not in the allow-list: refused by ZAP, nothing comes back */
    s = curve_dealer(ctx, e.ep, &bad, server.public_z85, &mon, "inproc://mon-bad");
    assert_int_equal(handshake_result(mon), ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    zmq_send(s, buf, n, ZMQ_DONTWAIT);
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 300), 0);
    zmq_close(s);
    zmq_close(mon);

    /* a plain client: no handshake at all */
    s = curve_dealer(ctx, e.ep, NULL, NULL, &mon, "inproc://mon-plain");
    int ev = handshake_result(mon);
    assert_int_not_equal(ev, ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    zmq_close(s);
    zmq_close(mon);
    zmq_ctx_term(ctx);

    /* registration is behind CURVE too: an allowed replica key registers, another never does */
    gc_router_stop(e.r);
    pthread_join(e.th, NULL);
    gc_router_destroy(&e.r);
    e.cfg.register_ep = strdup("tcp://127.0.0.1:*");
    if (gc_router_new(&e.cfg, NULL, &e.r) != GM_OK)
        fail_msg("gc_router_new: %s", gm_last_error());
    pthread_create(&e.th, NULL, router_thread, &e);
    gc_register_opts o = {.router = gc_router_register_endpoint(e.r), .endpoint = e.f[0]->ep, .name = "bad",
                          .heartbeat_ms = 50, .rank = -1, .key = &bad, .router_key = server.public_z85};
    gc_register *rb, *rg;
    assert_int_equal(gc_register_start(NULL, &o, &rb), GM_OK);
    o.name = "good";
    o.key = &good;
    assert_int_equal(gc_register_start(NULL, &o, &rg), GM_OK);
    WAIT_UNTIL(gc_register_accepted(rg));
    assert_false(gc_register_accepted(rb));
    gc_register_stop(&rb, NULL);
    gc_register_stop(&rg, NULL);
    env_stop(&e);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_config_checks(void **state)
{
    gc_router_config c;
    gc_router_action act;
    const char *prefix;
    bool force;
    char *argv1[] = {"gemma-router", "--replica", "tcp://127.0.0.1:1", "--dead-ms", "100", "--heartbeat-ms", "200"};
    assert_int_equal(gc_router_config_from_args(7, argv1, &c, &act, &prefix, &force), GM_OK);
    assert_int_equal(gc_router_config_validate(&c), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "dead_ms"));
    gc_router_config_free(&c);
    char *argv2[] = {"gemma-router", "--replica", "tcp://127.0.0.1:1", "--curve"};
    assert_int_equal(gc_router_config_from_args(4, argv2, &c, &act, &prefix, &force), GM_OK);
    assert_int_equal(gc_router_config_validate(&c), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "curve_secret_key"));
    gc_router_config_free(&c);
    char *argv3[] = {"gemma-router", "--bogus", "1"};
    assert_int_equal(gc_router_config_from_args(3, argv3, &c, &act, &prefix, &force), GM_ERR_INVALID_ARG);
    gc_router_config_free(&c);

    char path[] = "/tmp/gm_router_cfgXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "listen = \"tcp://127.0.0.1:7000\";\nreplicas = [\"tcp://a:1\", \"tcp://b:2\"];\n"
                       "max_in_flight = 8;\nmax_queue = 4;\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char *argv4[] = {"gemma-router", "--config", path, "--max-in-flight", "9"};
    assert_int_equal(gc_router_config_from_args(5, argv4, &c, &act, &prefix, &force), GM_OK);
    assert_string_equal(c.listen, "tcp://127.0.0.1:7000");
    assert_int_equal(c.n_replicas, 2);
    assert_string_equal(c.replicas[1], "tcp://b:2");
    assert_int_equal(c.max_in_flight, 9); /* the flag wins */
    assert_int_equal(c.max_queue, 4);
    gc_router_config_free(&c);
    FILE *f = fopen(path, "w");
    fputs("listen = \"x\";\nmax_inflight = 3;\n", f);
    fclose(f);
    gc_router_config_defaults(&c);
    assert_int_equal(gc_router_config_load_file(&c, path), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), ":2: unknown setting 'max_inflight'"));
    gc_router_config_free(&c);
    unlink(path);
}

int main(void)
{
    gm_log_init("test_router", getenv("GM_TEST_LOG") ? GM_LOG_DEBUG : GM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_route_and_balance),
        cmocka_unit_test(test_same_ids_two_clients),
        cmocka_unit_test(test_cancel_relayed),
        cmocka_unit_test(test_overload_shed),
        cmocka_unit_test(test_failover_frozen),
        cmocka_unit_test(test_failover_dropped),
        cmocka_unit_test(test_no_replica),
        cmocka_unit_test(test_registration),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_router_curve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
