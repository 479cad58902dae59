/* test_client.c - the C client library against gemmad's null backend: 1000 streams on one
 * connection, events routed to the right request with the caller's pointer, blocking
 * calls mixed with streams, cancel, health, stats, timeouts, local checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/test_daemon_util.h"

static char g_ep[400];
static pid_t g_pid = -1;

#define N_STREAMS 1000
#define N_TOK 16

typedef struct stream {
    uint64_t id;
    int32_t tokens[N_TOK + 1];
    int32_t n;
    int events;
    bool done;
    gmc_finish finish;
    gmc_usage usage;
} stream;

static void test_connect_timeout(void **state)
{
    (void)state;
    char ep[400];
    td_endpoint(ep, sizeof ep, "nobody.sock");
    gmc_client *c = (gmc_client *)1;
    assert_int_equal(gmc_connect(ep, 300, &c), GMC_ERR_TIMEOUT);
    assert_null(c);
    assert_true(strlen(gmc_connect_error()) > 0);
    assert_int_equal(gmc_connect("bogus://x", 300, &c), GMC_ERR_TRANSPORT);
    assert_int_equal(gmc_connect("", 0, &c), GMC_ERR_INVALID_ARGUMENT);
    /* lazy connect: fine, and a blocking call then times out */
    assert_int_equal(gmc_connect(ep, 0, &c), GMC_OK);
    gmc_health h;
    assert_int_equal(gmc_health_check(c, 200, &h), GMC_ERR_TIMEOUT);
    gmc_close(&c);
    assert_null(c);
    gmc_close(&c);
    assert_string_equal(gmc_code_name(GMC_ERR_PROMPT_TOO_LONG), "PROMPT_TOO_LONG");
    assert_string_equal(gmc_finish_name(GMC_FINISH_CANCELLED), "cancelled");
}

static void test_many_streams_one_connection(void **state)
{
    (void)state;
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    static stream s[N_STREAMS];
    memset(s, 0, sizeof s);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++)
        prompt[i] = 2 + i * 13;
    double t0 = td_now_ms();
    for (int i = 0; i < N_STREAMS; i++) {
        gmc_params p;
        gmc_params_init(&p);
        p.prompt_ids = prompt;
        p.n_prompt_ids = 1 + i % 40;
        p.max_tokens = N_TOK;
        p.ignore_eos = true;
        p.seed = (uint64_t)i;
        assert_int_equal(gmc_submit(c, &p, &s[i], &s[i].id), GMC_OK);
    }
    assert_int_equal(gmc_in_flight(c), N_STREAMS);
    /* a blocking generate in the middle of it all: its events must not be
     * lost to gmc_poll, and the streams' events must not be lost to it */
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = prompt;
    p.n_prompt_ids = 1 + 7 % 40;
    p.max_tokens = N_TOK;
    p.ignore_eos = true;
    p.seed = 7;
    p.stream = false;
    gmc_result r;
    assert_int_equal(gmc_generate(c, &p, 60000, NULL, NULL, &r), GMC_OK);
    assert_int_equal(r.n_tokens, N_TOK);
    assert_int_equal(r.finish_reason, GMC_FINISH_LENGTH);
    assert_int_equal(r.usage.prompt_tokens, 8);
    assert_int_equal(r.usage.completion_tokens, N_TOK);

    int left = N_STREAMS, round = 0;
    while (left > 0) {
        gmc_event ev[64];
        /* small batches sometimes, to take messages apart across calls */
        int n = gmc_poll(c, ev, round++ % 3 ? 64 : 1, 20000);
        assert_true(n > 0);
        for (int k = 0; k < n; k++) {
            stream *x = ev[k].user;
            assert_true(x >= s && x < s + N_STREAMS);
            assert_int_equal(ev[k].request_id, x->id);
            assert_false(x->done);
            assert_true(x->n + ev[k].n_tokens <= N_TOK);
            memcpy(x->tokens + x->n, ev[k].tokens, sizeof(int32_t) * (size_t)ev[k].n_tokens);
            x->n += ev[k].n_tokens;
            x->events++;
            assert_int_equal(ev[k].text_len, 0); /* no tokenizer */
            if (ev[k].finished) {
                x->done = true;
                x->finish = ev[k].finish_reason;
                x->usage = ev[k].usage;
                assert_int_equal(ev[k].error, GMC_OK);
                left--;
            }
        }
    }
    double ms = td_now_ms() - t0;
    fprintf(stderr, "note: %d streams x %d tokens over one connection in %.0f ms (%.0f tokens/s)\n", N_STREAMS,
            N_TOK, ms, N_STREAMS * N_TOK / (ms / 1e3));
    assert_int_equal(gmc_in_flight(c), 0);
    for (int i = 0; i < N_STREAMS; i++) {
        assert_true(s[i].done);
        assert_int_equal(s[i].finish, GMC_FINISH_LENGTH);
        assert_int_equal(s[i].n, N_TOK);
        assert_int_equal(s[i].usage.completion_tokens, N_TOK);
        assert_int_equal(s[i].usage.prompt_tokens, 1 + i % 40);
        assert_true(s[i].events >= 2); /* streamed */
        assert_true(s[i].usage.total_ms >= s[i].usage.ttft_ms);
        for (int k = 0; k < N_TOK; k++)
            assert_true(s[i].tokens[k] >= 3 && s[i].tokens[k] < 256000);
    }
    /* the draw depends only on (seed, position): same seed and length, same tokens,
     * whatever the batch, streamed or not */
    assert_memory_equal(s[7].tokens, r.tokens, sizeof(int32_t) * N_TOK);
    assert_memory_not_equal(s[7].tokens, s[8].tokens, sizeof(int32_t) * N_TOK);
    gmc_result_free(&r);

    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 10000, &st), GMC_OK);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.waiting, 0);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_true(st.kv_blocks_total > 0);
    assert_int_equal(st.kv_block_size, 16);
    assert_int_equal(st.requests_total, N_STREAMS + 1);
    assert_int_equal(st.requests_finished, N_STREAMS + 1);
    assert_int_equal(st.completion_tokens, (N_STREAMS + 1) * N_TOK);
    assert_true(st.steps > 0);
    assert_true(st.ttft_p99_ms >= st.ttft_p50_ms);
    assert_true(st.tpot_p50_ms > 0);
    gmc_close(&c);
}

static void test_cancel_and_health(void **state)
{
    (void)state;
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    gmc_health h;
    assert_int_equal(gmc_health_check(c, 10000, &h), GMC_OK);
    assert_true(h.serving);
    assert_false(h.shutting_down);
    assert_string_equal(h.backend, "null");
    assert_int_equal(h.tp, 1);
    assert_int_equal(h.protocol_version, GMC_PROTOCOL_VERSION);

    int32_t prompt[] = {2, 10, 11};
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = prompt;
    p.n_prompt_ids = 3;
    p.max_tokens = 8000;
    p.ignore_eos = true;
    p.request_id = 99;
    int tag = 5;
    uint64_t id;
    assert_int_equal(gmc_submit(c, &p, &tag, &id), GMC_OK);
    assert_int_equal(id, 99);
    gmc_event ev[64];
    int n = gmc_poll(c, ev, 64, 10000);
    assert_true(n > 0);
    assert_ptr_equal(ev[0].user, &tag);
    assert_int_equal(gmc_cancel(c, 99), GMC_OK);
    bool done = false;
    int32_t got = 0;
    for (int k = 0; k < n; k++)
        got += ev[k].n_tokens;
    while (!done) {
        n = gmc_poll(c, ev, 64, 10000);
        assert_true(n > 0);
        for (int k = 0; k < n; k++) {
            got += ev[k].n_tokens;
            if (ev[k].finished) {
                assert_int_equal(ev[k].finish_reason, GMC_FINISH_CANCELLED);
                assert_int_equal(ev[k].error, GMC_ERR_CANCELLED);
                assert_int_equal(ev[k].usage.completion_tokens, got);
                done = true;
            }
        }
    }
    assert_true(got < 8000);
    assert_int_equal(gmc_in_flight(c), 0);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 10000, &st), GMC_OK);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_true(st.requests_cancelled >= 1);
    /* nothing pending: poll returns 0 after its timeout */
    assert_int_equal(gmc_poll(c, ev, 64, 50), 0);
    /* a daemon error ends the request with one finished event */
    gmc_params_init(&p);
    p.prompt_ids = prompt;
    p.n_prompt_ids = 3;
    p.temperature = -1;
    assert_int_equal(gmc_submit(c, &p, &tag, &id), GMC_OK);
    n = gmc_poll(c, ev, 64, 10000);
    assert_int_equal(n, 1);
    assert_true(ev[0].finished);
    assert_int_equal(ev[0].finish_reason, GMC_FINISH_ERROR);
    assert_int_equal(ev[0].error, GMC_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ev[0].error_message, "temperature"));
    gmc_close(&c);
}

/* gemmad killed under a stream: the request ends with a TRANSPORT error, no hang. */
static void test_daemon_dies(void **state)
{
    (void)state;
    char ep[400];
    td_endpoint(ep, sizeof ep, "dies.sock");
    const char *args[] = {"--backend", "null", "--listen", ep, "--kv-memory", "1G", NULL};
    pid_t pid = td_spawn_gemmad(args, "gemmad-dies.log");
    assert_true(td_wait_ready(ep, pid, 60000));
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    int32_t prompt[] = {2, 10, 11};
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = prompt;
    p.n_prompt_ids = 3;
    p.max_tokens = 8000;
    p.ignore_eos = true;
    uint64_t id;
    assert_int_equal(gmc_submit(c, &p, NULL, &id), GMC_OK);
    gmc_event ev[64];
    int first = gmc_poll(c, ev, 64, 10000);
    assert_true(first > 0);
    assert_false(ev[0].finished);
    kill(pid, SIGKILL);
    assert_int_equal(td_wait_exit(pid, 10000), 128 + SIGKILL);
    bool done = false;
    while (!done) {
        int n = gmc_poll(c, ev, 64, 20000);
        assert_true(n > 0);
        for (int k = 0; k < n; k++)
            if (ev[k].finished) {
                assert_int_equal(ev[k].finish_reason, GMC_FINISH_ERROR);
                assert_int_equal(ev[k].error, GMC_ERR_TRANSPORT);
                done = true;
            }
    }
    assert_int_equal(gmc_in_flight(c), 0);
    gmc_close(&c);
}

static int setup(void **state)
{
    (void)state;
    if (!td_make_dir())
        return -1;
    td_endpoint(g_ep, sizeof g_ep, "client.sock");
    const char *args[] = {"--backend", "null", "--listen", g_ep, "--kv-memory", "1G", "--max-seqs", "256", NULL};
    g_pid = td_spawn_gemmad(args, "gemmad-client.log");
    if (g_pid <= 0 || !td_wait_ready(g_ep, g_pid, 60000)) {
        td_dump_log("gemmad-client.log");
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc = g_pid > 0 ? td_stop(g_pid) : 0;
    td_kill_leftovers();
    td_remove_dir();
    return rc == 0 ? 0 : -1;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_many_streams_one_connection),
        cmocka_unit_test(test_cancel_and_health),
        cmocka_unit_test(test_daemon_dies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
