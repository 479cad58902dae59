/* test_daemon_robust.c - gemmad answers bad input with typed errors and keeps serving;
 * a client that vanishes mid-stream has its sequences cancelled and blocks freed; a
 * SIGKILLed worker fails in-flight requests with WORKER_FAILED and is restarted;
 * SIGTERM stops intake, finishes in-flight work and exits 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <zmq.h>

#include "proto/gemma.pb-c.h"
#include "tests/test_daemon_util.h"

/* Long generations on the null backend (no model, gemma-2b shapes, context 8192). */
#define LONG_TOKENS 8000

static int32_t g_prompt[] = {2, 651, 3037, 100, 200}; /* inside the tiny vocabulary too */

static pid_t start(const char *name, const char *const *extra, char *ep, size_t epcap)
{
    char log[64];
    snprintf(log, sizeof log, "%s.log", name);
    char sock[64];
    snprintf(sock, sizeof sock, "%s.sock", name);
    td_endpoint(ep, epcap, sock);
    const char *args[32] = {"--listen", ep, "--kv-memory", "1G"};
    int n = 4;
    for (; extra && *extra; extra++)
        args[n++] = *extra;
    bool has_backend = false;
    for (int i = 0; i < n; i++)
        has_backend |= !strcmp(args[i], "--model");
    if (!has_backend) {
        args[n++] = "--backend";
        args[n++] = "null";
    }
    args[n] = NULL;
    pid_t pid = td_spawn_gemmad(args, log);
    assert_true(pid > 0);
    if (!td_wait_ready(ep, pid, 120000)) {
        td_dump_log(log);
        fail_msg("gemmad %s did not start", name);
    }
    return pid;
}

static gmc_code gen_code(gmc_client *c, const gmc_params *p)
{
    gmc_result r;
    gmc_code rc = gmc_generate(c, p, 30000, NULL, NULL, &r);
    if (rc != GMC_OK)
        assert_int_equal(r.finish_reason, GMC_FINISH_ERROR);
    gmc_result_free(&r);
    return rc;
}

static void params_ids(gmc_params *p)
{
    gmc_params_init(p);
    p->prompt_ids = g_prompt;
    p->n_prompt_ids = 5;
    p->max_tokens = 4;
}

static void assert_serving(gmc_client *c)
{
    gmc_params p;
    params_ids(&p);
    gmc_result r;
    assert_int_equal(gmc_generate(c, &p, 30000, NULL, NULL, &r), GMC_OK);
    assert_int_equal(r.n_tokens, 4);
    assert_int_equal(r.finish_reason, GMC_FINISH_LENGTH);
    gmc_result_free(&r);
}

/* ---- raw frames on a bare DEALER ---- */

static Gemma__V1__ServerMessage *raw_roundtrip(void *sock, const void *data, size_t len, bool two_frames)
{
    if (two_frames)
        assert_true(zmq_send(sock, "x", 1, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(sock, data, len, 0) >= 0);
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 10000), 1);
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, sock, 0) >= 0);
    Gemma__V1__ServerMessage *sm = gemma__v1__server_message__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    assert_non_null(sm);
    assert_int_equal(sm->protocol_version, 1);
    return sm;
}

static void expect_error(void *sock, const void *data, size_t len, bool two, Gemma__V1__ErrorCode code,
                         uint64_t rid)
{
    Gemma__V1__ServerMessage *sm = raw_roundtrip(sock, data, len, two);
    assert_int_equal(sm->body_case, GEMMA__V1__SERVER_MESSAGE__BODY_ERROR);
    assert_int_equal(sm->error->code, code);
    assert_int_equal(sm->error->request_id, rid);
    assert_true(strlen(sm->error->message) > 0);
    gemma__v1__server_message__free_unpacked(sm, NULL);
}

static void test_malformed_frames(void **state)
{
    (void)state;
    char ep[400];
    pid_t pid = start("frames", NULL, ep, sizeof ep);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(s, ep), 0);

    /* garbage bytes */
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    expect_error(s, garbage, sizeof garbage, false, GEMMA__V1__ERROR_CODE__MALFORMED, 0);
    /* a foreign text frame */
    expect_error(s, "GET / HTTP/1.1\r\n\r\n", 18, false, GEMMA__V1__ERROR_CODE__MALFORMED, 0);
    /* two frames */
    expect_error(s, "y", 1, true, GEMMA__V1__ERROR_CODE__MALFORMED, 0);
    /* an empty frame parses as a message of version 0: a client of no known version */
    expect_error(s, "", 0, false, GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION, 0);

    /* another major version */
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__HealthRequest hr = GEMMA__V1__HEALTH_REQUEST__INIT;
    cm.protocol_version = 2;
    cm.request_id = 77;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    cm.health = &hr;
    uint8_t buf[256];
    size_t n = gemma__v1__client_message__pack(&cm, buf);
    expect_error(s, buf, n, false, GEMMA__V1__ERROR_CODE__UNSUPPORTED_VERSION, 77);

    /* version 1 with an unknown body (field 99, bytes) */
    cm.protocol_version = 1;
    cm.request_id = 78;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY__NOT_SET;
    n = gemma__v1__client_message__pack(&cm, buf);
    buf[n++] = (uint8_t)((99 << 3 | 2) & 0x7f) | 0x80;
    buf[n++] = (uint8_t)((99 << 3 | 2) >> 7);
    buf[n++] = 1;
    buf[n++] = 'x';
    expect_error(s, buf, n, false, GEMMA__V1__ERROR_CODE__UNKNOWN_TYPE, 78);

    /* a well-formed health probe still works on the same socket */
    cm.request_id = 79;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    n = gemma__v1__client_message__pack(&cm, buf);
    Gemma__V1__ServerMessage *sm = raw_roundtrip(s, buf, n, false);
    assert_int_equal(sm->body_case, GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH);
    assert_int_equal(sm->health->request_id, 79);
    assert_true(sm->health->serving);
    gemma__v1__server_message__free_unpacked(sm, NULL);

    /* generate with request id 0 */
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    cm.request_id = 0;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = &g;
    n = gemma__v1__client_message__pack(&cm, buf);
    expect_error(s, buf, n, false, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT, 0);
    /* cancel of an unknown request */
    Gemma__V1__CancelRequest cr = GEMMA__V1__CANCEL_REQUEST__INIT;
    cr.target_request_id = 12345;
    cm.request_id = 80;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL;
    cm.cancel = &cr;
    n = gemma__v1__client_message__pack(&cm, buf);
    expect_error(s, buf, n, false, GEMMA__V1__ERROR_CODE__NOT_FOUND, 80);

    /* random frames: never a crash */
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 300; i++) {
        uint8_t r[64];
        size_t len = 1 + i % 63;
        for (size_t k = 0; k < len; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            r[k] = (uint8_t)x;
        }
        assert_true(zmq_send(s, r, len, 0) >= 0);
    }
    /* drain whatever came back (errors, possibly chunks of accidental requests) */
    for (;;) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 500) <= 0)
            break;
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, s, 0);
        zmq_msg_close(&m);
    }
    zmq_close(s);

    /* a REQ socket (the first thing people try) gets an answer it can read, not silence */
    void *rq = zmq_socket(ctx, ZMQ_REQ);
    zmq_setsockopt(rq, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(rq, ep), 0);
    cm.protocol_version = 1;
    cm.request_id = 81;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    cm.health = &hr;
    n = gemma__v1__client_message__pack(&cm, buf);
    sm = raw_roundtrip(rq, buf, n, false);
    assert_int_equal(sm->body_case, GEMMA__V1__SERVER_MESSAGE__BODY_ERROR);
    assert_int_equal(sm->error->code, GEMMA__V1__ERROR_CODE__MALFORMED);
    assert_non_null(strstr(sm->error->message, "DEALER"));
    gemma__v1__server_message__free_unpacked(sm, NULL);
    zmq_close(rq);
    zmq_ctx_term(ctx);

    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    assert_serving(c);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

/* ---- bad parameters through the client library ---- */

static void test_bad_params_null(void **state)
{
    (void)state;
    char ep[400];
    pid_t pid = start("params", NULL, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_params p;

    gmc_params_init(&p); /* no prompt at all */
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    gmc_params_init(&p);
    p.prompt = ""; /* empty text */
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    gmc_params_init(&p);
    p.prompt = "text needs a tokenizer";
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    gmc_chat_msg m = {"user", "hi"};
    gmc_params_init(&p);
    p.messages = &m;
    p.n_messages = 1;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);

    int32_t bad_ids[] = {2, 300000};
    gmc_params_init(&p);
    p.prompt_ids = bad_ids;
    p.n_prompt_ids = 2;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    bad_ids[1] = -3;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);

    /* longer than the context (8192) */
    int32_t *longp = malloc(9000 * sizeof(int32_t));
    for (int i = 0; i < 9000; i++)
        longp[i] = 3 + i % 1000;
    gmc_params_init(&p);
    p.prompt_ids = longp;
    p.n_prompt_ids = 9000;
    assert_int_equal(gen_code(c, &p), GMC_ERR_PROMPT_TOO_LONG);
    p.n_prompt_ids = 8000; /* fits alone, but not with 500 more */
    p.max_tokens = 500;
    assert_int_equal(gen_code(c, &p), GMC_ERR_PROMPT_TOO_LONG);
    free(longp);

    struct {
        float t, tp;
        int k, mt;
        gmc_code want;
    } cases[] = {
        {-0.5f, 1.0f, 0, 4, GMC_ERR_INVALID_ARGUMENT},
        {NAN, 1.0f, 0, 4, GMC_ERR_INVALID_ARGUMENT},
        {INFINITY, 1.0f, 0, 4, GMC_ERR_INVALID_ARGUMENT},
        {0.5f, 1.5f, 0, 4, GMC_ERR_INVALID_ARGUMENT},
        {0.5f, -0.1f, 0, 4, GMC_ERR_INVALID_ARGUMENT},
        {0.5f, NAN, 0, 4, GMC_ERR_INVALID_ARGUMENT},
        {0.5f, 1.0f, -1, 4, GMC_ERR_INVALID_ARGUMENT},
        {0.0f, 1.0f, 0, -5, GMC_ERR_INVALID_ARGUMENT},
        {0.0f, 1.0f, 0, 1 << 30, GMC_ERR_INVALID_ARGUMENT},
        {0.7f, 0.9f, 40, 4, GMC_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        params_ids(&p);
        p.temperature = cases[i].t;
        p.top_p = cases[i].tp;
        p.top_k = cases[i].k;
        p.max_tokens = cases[i].mt;
        gmc_code got = gen_code(c, &p);
        if (got != cases[i].want)
            fail_msg("case %zu: got %s, want %s", i, gmc_code_name(got), gmc_code_name(cases[i].want));
    }
    /* stop ids: too many, out of range */
    int32_t many[65];
    for (int i = 0; i < 65; i++)
        many[i] = 10 + i;
    params_ids(&p);
    p.stop_ids = many;
    p.n_stop_ids = 65;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    many[0] = 256000;
    p.n_stop_ids = 1;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    /* stop strings without a tokenizer */
    const char *stops[] = {"x"};
    params_ids(&p);
    p.stop = stops;
    p.n_stop = 1;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    /* duplicate request id: refused locally while the first is in flight */
    params_ids(&p);
    p.max_tokens = LONG_TOKENS;
    p.request_id = 4242;
    assert_int_equal(gmc_submit(c, &p, NULL, NULL), GMC_OK);
    assert_int_equal(gmc_submit(c, &p, NULL, NULL), GMC_ERR_DUPLICATE_ID);
    assert_int_equal(gmc_cancel(c, 4242), GMC_OK);
    for (bool done = false; !done;) {
        gmc_event ev[8];
        int n = gmc_poll(c, ev, 8, 10000);
        assert_true(n > 0);
        for (int i = 0; i < n; i++)
            if (ev[i].finished) {
                assert_int_equal(ev[i].finish_reason, GMC_FINISH_CANCELLED);
                done = true;
            }
    }
    assert_serving(c);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 10000, &st), GMC_OK);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_true(st.requests_failed >= 20);
    assert_int_equal(st.requests_cancelled, 1);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

/* With the tiny model (it has a tokenizer): stop strings, chat roles. */
static void test_bad_params_tokenizer(void **state)
{
    (void)state;
    char ep[400];
    const char *extra[] = {"--model", TINY_MODEL_DIR, NULL};
    pid_t pid = start("params-tok", extra, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_params p;
    const char *stops[17];
    for (int i = 0; i < 17; i++)
        stops[i] = "zz";
    gmc_params_init(&p);
    p.prompt = "hello";
    p.max_tokens = 4;
    p.stop = stops;
    p.n_stop = 17;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[299] = 0;
    stops[0] = big;
    p.n_stop = 1;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    stops[0] = "";
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    stops[0] = "\xff\xfe";
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    gmc_chat_msg sys[] = {{"system", "be nice"}, {"user", "hi"}};
    gmc_params_init(&p);
    p.messages = sys;
    p.n_messages = 2;
    p.max_tokens = 4;
    assert_int_equal(gen_code(c, &p), GMC_ERR_INVALID_ARGUMENT);
    gmc_params_init(&p);
    p.messages = sys + 1;
    p.n_messages = 1;
    p.max_tokens = 4;
    assert_int_equal(gen_code(c, &p), GMC_OK);

    /* a stop string cuts the text: take a real continuation and stop on a piece of it */
    gmc_result full, cut;
    gmc_params_init(&p);
    p.prompt = "Once upon a time";
    p.max_tokens = 40;
    p.temperature = 0.8f;
    p.seed = 3;
    assert_int_equal(gmc_generate(c, &p, 30000, NULL, NULL, &full), GMC_OK);
    assert_true(full.text_len > 6);
    /* the first run of 3 printable ASCII bytes after the start is the stop string */
    char stop[4] = "";
    for (size_t i = 1; i + 3 <= full.text_len && !stop[0]; i++) {
        const unsigned char *t = (const unsigned char *)full.text + i;
        if (t[0] > 32 && t[0] < 127 && t[1] > 32 && t[1] < 127 && t[2] > 32 && t[2] < 127)
            memcpy(stop, t, 3);
    }
    if (!stop[0]) {
        fprintf(stderr, "note: no ASCII run in '%s'; stop-string cut not checked\n", full.text);
    } else {
        const char *first = strstr(full.text, stop);
        const char *one[] = {stop};
        p.stop = one;
        p.n_stop = 1;
        assert_int_equal(gmc_generate(c, &p, 30000, NULL, NULL, &cut), GMC_OK);
        assert_int_equal(cut.finish_reason, GMC_FINISH_STOP);
        assert_int_equal(cut.text_len, (size_t)(first - full.text));
        assert_memory_equal(cut.text, full.text, cut.text_len);
        assert_true(cut.n_tokens < full.n_tokens);
        gmc_result_free(&cut);
    }
    gmc_result_free(&full);
    assert_serving(c);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

/* Submit n long requests and wait until each has streamed at least one token. */
static void start_long(gmc_client *c, int n, uint64_t *ids)
{
    gmc_params p;
    params_ids(&p);
    p.max_tokens = LONG_TOKENS;
    p.ignore_eos = true;
    assert_true(td_submit_started(c, &p, n, ids));
}

static void wait_stats(const char *ep, gmc_stats *st, bool (*ok)(const gmc_stats *))
{
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    double end = td_now_ms() + 30000;
    for (;;) {
        assert_int_equal(gmc_stats_get(c, 10000, st), GMC_OK);
        if (ok(st))
            break;
        assert_true(td_now_ms() < end);
        usleep(20000);
    }
    gmc_close(&c);
}

static bool all_freed(const gmc_stats *s)
{
    return s->running == 0 && s->waiting == 0 && s->kv_blocks_used == 0;
}

static const char *const NO_RUN_AHEAD[] = {"--no-run-ahead", NULL};

static void client_vanishes(const char *name, const char *const *extra)
{
    char ep[400];
    pid_t pid = start(name, extra, ep, sizeof ep);
    gmc_client *a;
    assert_int_equal(gmc_connect(ep, 10000, &a), GMC_OK);
    uint64_t ids[4];
    start_long(a, 4, ids);
    gmc_close(&a); /* gone mid-stream, no cancel sent */
    gmc_stats st;
    wait_stats(ep, &st, all_freed);
    assert_int_equal(st.requests_cancelled, 4);
    assert_int_equal(st.requests_finished, 0);
    assert_int_equal(st.kv_blocks_used, 0);
    gmc_client *b;
    assert_int_equal(gmc_connect(ep, 10000, &b), GMC_OK);
    assert_serving(b);
    gmc_close(&b);
    assert_int_equal(td_stop(pid), 0);
}

static void test_client_vanishes(void **state)
{
    (void)state;
    client_vanishes("vanish", NULL); /* two steps in flight when it goes */
    client_vanishes("vanish-serial", NO_RUN_AHEAD);
}

/* SIGKILL of the worker: with run-ahead two steps are in flight, neither comes back. */
static void worker_killed(const char *name, const char *const *extra)
{
    char ep[400];
    pid_t pid = start(name, extra, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    uint64_t ids[4];
    start_long(c, 4, ids);
    pid_t w = td_worker_pid(pid, 0);
    assert_true(w > 0);
    assert_int_equal(kill(w, SIGKILL), 0);
    int ended = 0;
    while (ended < 4) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 30000);
        assert_true(k > 0);
        for (int i = 0; i < k; i++)
            if (ev[i].finished) {
                assert_int_equal(ev[i].finish_reason, GMC_FINISH_ERROR);
                assert_int_equal(ev[i].error, GMC_ERR_WORKER_FAILED);
                ended++;
            }
    }
    /* restarted: serving again */
    assert_true(td_wait_ready(ep, pid, 60000));
    assert_serving(c);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 10000, &st), GMC_OK);
    assert_int_equal(st.worker_restarts, 1);
    assert_int_equal(st.requests_failed, 4);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_true(td_worker_pid(pid, 0) > 0);
    assert_int_not_equal(td_worker_pid(pid, 0), w);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

static void test_worker_killed(void **state)
{
    (void)state;
    worker_killed("kill", NULL);
    worker_killed("kill-serial", NO_RUN_AHEAD);
}

static bool two_waiting(const gmc_stats *s)
{
    return s->waiting == 2;
}

/* SIGTERM: new work is refused with SHUTTING_DOWN, in-flight work finishes, exit 0. */
static void test_sigterm(void **state)
{
    (void)state;
    char ep[400];
    const char *extra[] = {"--max-seqs", "2", NULL};
    pid_t pid = start("term", extra, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    uint64_t ids[2];
    start_long(c, 2, ids);
    /* two more that wait for a slot */
    gmc_params p;
    params_ids(&p);
    p.max_tokens = 1000;
    p.stream = false;
    uint64_t queued[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(gmc_submit(c, &p, NULL, &queued[i]), GMC_OK);
    gmc_stats st;
    wait_stats(ep, &st, two_waiting); /* accepted before the signal */
    assert_int_equal(kill(pid, SIGTERM), 0);
    /* health says shutting down (poll until the signal is seen) */
    gmc_health h;
    double end = td_now_ms() + 20000;
    do {
        assert_int_equal(gmc_health_check(c, 10000, &h), GMC_OK);
        assert_true(td_now_ms() < end);
    } while (!h.shutting_down);
    assert_false(h.serving);
    params_ids(&p);
    uint64_t late;
    assert_int_equal(gmc_submit(c, &p, NULL, &late), GMC_OK);
    int ended = 0;
    bool late_refused = false;
    while (ended < 5) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 30000);
        assert_true(k > 0);
        for (int i = 0; i < k; i++) {
            if (!ev[i].finished)
                continue;
            ended++;
            if (ev[i].request_id == late) {
                assert_int_equal(ev[i].error, GMC_ERR_SHUTTING_DOWN);
                late_refused = true;
            } else {
                if (ev[i].finish_reason != GMC_FINISH_LENGTH)
                    fprintf(stderr, "request %llu: %s %s: %s\n", (unsigned long long)ev[i].request_id,
                            gmc_finish_name(ev[i].finish_reason), gmc_code_name(ev[i].error), ev[i].error_message);
                assert_int_equal(ev[i].finish_reason, GMC_FINISH_LENGTH);
                assert_int_equal(ev[i].error, GMC_OK);
                assert_int_equal(ev[i].usage.completion_tokens, ev[i].request_id == queued[0] ||
                                                                        ev[i].request_id == queued[1]
                                                                    ? 1000
                                                                    : LONG_TOKENS);
            }
        }
    }
    assert_true(late_refused);
    gmc_close(&c);
    assert_int_equal(td_wait_exit(pid, 60000), 0);
}

static bool five_waiting(const gmc_stats *s)
{
    return s->waiting == 5;
}

/* SIGTERM with a short deadline: what cannot finish in time is cancelled; exit 0. */
static void test_sigterm_deadline(void **state)
{
    (void)state;
    char ep[400];
    const char *extra[] = {"--max-seqs", "1", "--shutdown-timeout-ms", "200", NULL};
    pid_t pid = start("term2", extra, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_params p;
    params_ids(&p);
    p.max_tokens = LONG_TOKENS;
    p.ignore_eos = true;
    uint64_t ids[6];
    start_long(c, 1, ids);
    for (int i = 1; i < 6; i++) /* 5 x 8000 tokens queued behind: far more than 200 ms */
        assert_int_equal(gmc_submit(c, &p, NULL, &ids[i]), GMC_OK);
    gmc_stats st;
    wait_stats(ep, &st, five_waiting);
    assert_int_equal(kill(pid, SIGTERM), 0);
    int ended = 0, cancelled = 0;
    while (ended < 6) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 30000);
        assert_true(k > 0);
        for (int i = 0; i < k; i++)
            if (ev[i].finished) {
                ended++;
                if (ev[i].finish_reason == GMC_FINISH_CANCELLED) {
                    assert_int_equal(ev[i].error, GMC_ERR_SHUTTING_DOWN);
                    cancelled++;
                }
            }
    }
    assert_true(cancelled >= 1);
    gmc_close(&c);
    assert_int_equal(td_wait_exit(pid, 60000), 0);
}

/* Config errors: exit 2 with the file and line; --check-config (which also checks the model); --help. */
static void test_config_cli(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/bad.conf", td_dir);
    FILE *f = fopen(path, "w");
    fputs("backend = \"null\";\nmax_seqs = \"many\";\n", f);
    fclose(f);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s --config %s 2>&1", GEMMAD_BIN, path);
    const char *sh[] = {"/bin/sh", "-c", cmd, NULL};
    int st;
    char *out = td_run_capture(sh, &st, NULL);
    assert_int_equal(st, 2);
    assert_non_null(strstr(out, "bad.conf:2:"));
    free(out);
    f = fopen(path, "w");
    fputs("backend = \"null\";\nmax_seqs = 8;\nkv_memory = \"128M\";\n", f);
    fclose(f);
    const char *chk[] = {GEMMAD_BIN, "--config", path, "--max-seqs", "16", "--check-config", NULL};
    out = td_run_capture(chk, &st, NULL);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "max_seqs = 16;"));
    assert_non_null(strstr(out, "kv_memory = 134217728L;"));
    free(out);
    /* the shipped example is valid */
    char example[1024];
    snprintf(example, sizeof example, "%s/daemon/gemmad.conf.example", getenv("GM_SRC") ? getenv("GM_SRC") : ".");
    if (access(example, R_OK) == 0) {
        const char *ex[] = {GEMMAD_BIN, "--config", example, "--model", TINY_MODEL_DIR, "--check-config", NULL};
        out = td_run_capture(ex, &st, NULL);
        assert_int_equal(st, 0);
        assert_non_null(strstr(out, "max_waiting = 100000;"));
        assert_null(strstr(out, "kv_memory")); /* sizes left to the workers */
        free(out);
    }
    const char *help[] = {GEMMAD_BIN, "--help", NULL};
    out = td_run_capture(help, &st, NULL);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "--kv-memory"));
    free(out);
    /* a model directory that does not exist: clean failure, exit 1 */
    const char *bad[] = {GEMMAD_BIN, "--model", "/nonexistent/model", "--listen", "ipc:///tmp/never", NULL};
    out = td_run_capture(bad, &st, NULL);
    assert_int_equal(st, 1);
    free(out);
}

static int setup(void **state)
{
    (void)state;
    return td_make_dir() ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    td_kill_leftovers();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_cli),
        cmocka_unit_test(test_malformed_frames),
        cmocka_unit_test(test_bad_params_null),
        cmocka_unit_test(test_bad_params_tokenizer),
        cmocka_unit_test(test_client_vanishes),
        cmocka_unit_test(test_worker_killed),
        cmocka_unit_test(test_sigterm),
        cmocka_unit_test(test_sigterm_deadline),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
