/* test_router.c - gemma-router against scripted in-process replicas: routing, id rewriting,
 * cancel, load shedding, failover (frozen and dropped replicas), comeback, replicas out of
 * rotation while their Health says not serving, registration, protocol errors, CurveZMQ on
 * the client endpoint (registration rules: test_router_reg.c). Waits are bounded polls. */
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

#include "cluster/register.h"
#include "common/log.h"
#include "common/utf8.h"
#include "tests/test_router_util.h"

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

/* Pump (bounded) until x has at least n tokens. */
static void wait_tokens(gmc_client *c, res *x, int n)
{
    double t0 = ms_now();
    while (x->n < n && !x->done && ms_now() - t0 < WAIT_MS)
        pump(c, 20);
    assert_true(x->n >= n);
}

/* A replica whose Health says not serving (say its workers hung and restart), or that
 * stops answering Health while it still answers the rest, is out of rotation until it
 * serves again: its requests that produced nothing yet are cancelled there and finish on
 * another replica, one already streaming stays, and new requests go elsewhere. */
static void test_not_serving(void **state)
{
    env e;
    env_start(&e, 2, 64, false);
    wait_up(&e, 2);
    fake_replica *A = e.f[0], *B = e.f[1];
    atomic_store(&B->serving, false); /* everything goes to A first */
    WAIT_UNTIL(serving_count(&e) == 1);
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    atomic_store(&A->hold, true);
    res xs[3], more[4];
    submit(c, 1, FAKE_MARK_FIRST, 5, &xs[0], 0); /* streams one token, then waits */
    submit(c, 2, 0, 5, &xs[1], 0);
    submit(c, 3, 0, 5, &xs[2], 0);
    WAIT_UNTIL(atomic_load(&A->n_held) == 3);
    wait_tokens(c, &xs[0], 1);
    atomic_store(&B->serving, true);
    WAIT_UNTIL(serving_count(&e) == 2);

    atomic_store(&A->serving, false);
    wait_done(c, xs + 1, 2);
    expect_tokens(&xs[1], 2, 5);
    expect_tokens(&xs[2], 3, 5);
    assert_int_equal(atomic_load(&B->n_generate), 2);
    WAIT_UNTIL(atomic_load(&A->n_cancel) == 2); /* cancelled where they waited */
    assert_false(xs[0].done);
    assert_int_equal(serving_count(&e), 1);
    assert_int_equal(up_count(&e), 2);
    int a_gen = atomic_load(&A->n_generate);
    for (int i = 0; i < 4; i++)
        submit(c, 10 + i, 0, 3, &more[i], 0);
    wait_done(c, more, 4);
    for (int i = 0; i < 4; i++)
        expect_tokens(&more[i], 10 + i, 3);
    assert_int_equal(atomic_load(&A->n_generate), a_gen);

    /* A serves again: back in rotation; its streaming request finishes there */
    atomic_store(&A->serving, true);
    WAIT_UNTIL(serving_count(&e) == 2);
    atomic_store(&A->hold, false);
    wait_done(c, xs, 1);
    expect_tokens(&xs[0], 1, 5);

    /* Health unanswered for dead_ms while Stats still come: out of rotation, not down */
    atomic_store(&A->mute_health, true);
    WAIT_UNTIL(serving_count(&e) == 1);
    assert_int_equal(up_count(&e), 2);
    a_gen = atomic_load(&A->n_generate);
    for (int i = 0; i < 4; i++)
        submit(c, 20 + i, 0, 3, &more[i], 0);
    wait_done(c, more, 4);
    for (int i = 0; i < 4; i++)
        expect_tokens(&more[i], 20 + i, 3);
    assert_int_equal(atomic_load(&A->n_generate), a_gen);
    atomic_store(&A->mute_health, false);
    WAIT_UNTIL(serving_count(&e) == 2);

    gc_router_counts k;
    gc_router_get_counts(e.r, &k);
    assert_int_equal(k.replica_failures, 0); /* never taken down: only out of rotation */
    assert_int_equal(k.resent, 2);
    gmc_close(&c);
    env_stop(&e);
}

/* A replica's strings that are not valid UTF-8 (an older gemmad cut a character in half)
 * reach the client repaired: proto3 strings must be valid, or strict clients reject the
 * whole message. */
static void test_replica_utf8_repaired(void **state)
{
    env e;
    env_start(&e, 1, 64, false);
    wait_up(&e, 1);
    atomic_store(&e.f[0]->bad_utf8, true);
    void *ctx = zmq_ctx_new(), *s = raw_dealer(ctx, e.ep);
    uint8_t buf[256];
    Gemma__V1__ServerMessage *m = raw_call(s, buf, pack_generate(buf, 5, 3, 2, false));
    assert_int_equal(m->n_chunks, 1);
    const char *em = m->chunks[0]->error_message;
    assert_true(gm_utf8_valid(em, strlen(em)));
    assert_string_equal(em, "unknown role \"aaa\xEF\xBF\xBD\""); /* the cut character became U+FFFD */
    gemma__v1__server_message__free_unpacked(m, NULL);
    /* Health's model comes from the replica's last Health: once that is the bad one, it is repaired too */
    WAIT_UNTIL(atomic_load(&e.f[0]->n_health) > 2);
    int before = atomic_load(&e.f[0]->n_health);
    WAIT_UNTIL(atomic_load(&e.f[0]->n_health) > before + 1);
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__HealthRequest hr = GEMMA__V1__HEALTH_REQUEST__INIT;
    cm.protocol_version = 1;
    cm.request_id = 6;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    cm.health = &hr;
    m = raw_call(s, buf, gemma__v1__client_message__pack(&cm, buf));
    assert_int_equal(m->body_case, GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH);
    assert_string_equal(m->health->model, "fake-\xEF\xBF\xBD");
    gemma__v1__server_message__free_unpacked(m, NULL);
    zmq_close(s);
    zmq_ctx_term(ctx);
    env_stop(&e);
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
static void test_protocol_errors(void **state)
{
    env e;
    env_start(&e, 1, 64, false);
    wait_up(&e, 1);
    void *ctx = zmq_ctx_new(), *s = raw_dealer(ctx, e.ep);
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
    size_t n = pack_generate(buf, 99, 3, 2, true);
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
    env_init(&e, 1, 64, false);
    e.cfg.curve = true;
    snprintf(path, sizeof(path), "%s/router.key_secret", dir);
    e.cfg.curve_secret_key = strdup(path);
    e.cfg.curve_allow = calloc(1, sizeof(char *));
    snprintf(path, sizeof(path), "%s/clients", dir);
    e.cfg.curve_allow[e.cfg.n_curve_allow++] = strdup(path);
    env_run(&e);
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

    /* the HTTP front door's settings, from the file and from flags; the key from a key file */
    char key[] = "/tmp/gm_router_keyXXXXXX";
    fd = mkstemp(key);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, " k3y \n", 6), 6);
    close(fd);
    f = fopen(path, "w");
    fprintf(f, "replicas = [\"tcp://a:1\"];\nhttp_listen = \"127.0.0.1:8001\";\nhttp_max_requests = 5;\n"
               "api_key_file = \"%s\";\n", key);
    fclose(f);
    char *argv5[] = {"gemma-router", "--config", path, "--served-model-name", "gemma", "--http-max-body", "4096"};
    assert_int_equal(gc_router_config_from_args(7, argv5, &c, &act, &prefix, &force), GM_OK);
    assert_int_equal(gc_router_config_validate(&c), GM_OK);
    assert_string_equal(c.http_listen, "127.0.0.1:8001");
    assert_string_equal(c.api_key, "k3y");
    assert_string_equal(c.served_model_name, "gemma");
    assert_int_equal(c.http_max_requests, 5);
    assert_int_equal(c.http_max_body, 4096);
    assert_int_equal(c.http_max_connections, 4096);
    gc_router_config_free(&c);
    char *argv6[] = {"gemma-router", "--replica", "tcp://a:1", "--http-listen", "http://127.0.0.1:8001"};
    assert_int_equal(gc_router_config_from_args(5, argv6, &c, &act, &prefix, &force), GM_OK);
    assert_int_equal(gc_router_config_validate(&c), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "http_listen"));
    gc_router_config_free(&c);
    char *argv7[] = {"gemma-router", "--replica", "tcp://a:1", "--api-key-file", "/nonexistent/key"};
    assert_int_not_equal(gc_router_config_from_args(5, argv7, &c, &act, &prefix, &force), GM_OK);
    gc_router_config_free(&c);
    char *argv8[] = {"gemma-router", "--replica", "tcp://a:1", "--http-bogus", "1"};
    assert_int_equal(gc_router_config_from_args(5, argv8, &c, &act, &prefix, &force), GM_ERR_INVALID_ARG);
    gc_router_config_free(&c);
    unlink(key);
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
        cmocka_unit_test(test_not_serving),
        cmocka_unit_test(test_replica_utf8_repaired),
        cmocka_unit_test(test_no_replica),
        cmocka_unit_test(test_registration),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_router_curve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
