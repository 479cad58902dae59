/* test_daemon_e2e.c - gemmad on the tiny model (cpu backend) against gemma-generate:
 * 32 concurrent streaming clients at tp=1 and tp=2, with run-ahead (two steps in
 * flight) and without, get byte-identical text; a KV pool so small that sequences
 * are preempted and recomputed changes nothing (both modes, tp=1 and tp=2);
 * gemma-cli prints exactly what gemma-generate prints (plain and chat). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <zmq.h>

#include "tests/test_daemon_util.h"

#define N_CLIENTS 32
#define MAX_TOKENS 24

typedef struct job {
    char prompt[256];
    float temperature;
    uint64_t seed;
    int max_tokens;
    char *expected; /* gemma-generate's stdout */
    size_t expected_len;
    char *got;      /* streamed text + "\n" */
    size_t got_len, got_cap;
    int n_events;
    bool done;
    gmc_finish finish;
    gmc_code err;
} job;

static job g_jobs[N_CLIENTS];

static const char *const WORDS[] = {"the", "river", "of", "stars", "quietly", "folds", "into", "morning", "light",
                                    "and", "a", "small", "robot", "dreams", "über", "café", "日本", "🙂"};

static void make_jobs(void)
{
    for (int i = 0; i < N_CLIENTS; i++) {
        job *j = &g_jobs[i];
        memset(j, 0, sizeof *j);
        int n = snprintf(j->prompt, sizeof j->prompt, "Prompt %d:", i);
        for (int w = 0; w < 1 + (i * 7) % 23; w++)
            n += snprintf(j->prompt + n, sizeof j->prompt - (size_t)n, " %s",
                          WORDS[(i * 5 + w * 3) % (sizeof WORDS / sizeof WORDS[0])]);
        j->temperature = i % 2 ? 0.0f : 0.9f; /* half greedy, half sampled */
        j->seed = 1000 + (uint64_t)i;
        j->max_tokens = 4 + (i * 11) % MAX_TOKENS;
    }
}

static void expected_outputs(void)
{
    for (int i = 0; i < N_CLIENTS; i++) {
        job *j = &g_jobs[i];
        if (j->expected)
            continue;
        char mt[16], temp[32], seed[32];
        snprintf(mt, sizeof mt, "%d", j->max_tokens);
        snprintf(temp, sizeof temp, "%g", (double)j->temperature);
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)j->seed);
        const char *argv[] = {GEMMA_GENERATE_BIN, "--model", TINY_MODEL_DIR, "--prompt", j->prompt, "--max-tokens",
                              mt, "--temperature", temp, "--seed", seed, NULL};
        int st;
        j->expected = td_run_capture(argv, &st, &j->expected_len);
        assert_int_equal(st, 0);
        assert_true(j->expected_len >= 1);
    }
}

static void append(job *j, const char *t, size_t n)
{
    if (j->got_len + n + 1 > j->got_cap) {
        j->got_cap = (j->got_len + n + 1) * 2 + 64;
        j->got = realloc(j->got, j->got_cap);
    }
    if (n)
        memcpy(j->got + j->got_len, t, n);
    j->got_len += n;
    j->got[j->got_len] = 0;
}

/* 32 clients, one request each, all in flight at once; compare with gemma-generate. */
static void run_clients(const char *endpoint)
{
    gmc_client *cl[N_CLIENTS];
    for (int i = 0; i < N_CLIENTS; i++) {
        job *j = &g_jobs[i];
        free(j->got);
        j->got = NULL;
        j->got_len = j->got_cap = 0;
        j->n_events = 0;
        j->done = false;
        assert_int_equal(gmc_connect(endpoint, 10000, &cl[i]), GMC_OK);
    }
    for (int i = 0; i < N_CLIENTS; i++) {
        job *j = &g_jobs[i];
        gmc_params p;
        gmc_params_init(&p);
        p.prompt = j->prompt;
        p.max_tokens = j->max_tokens;
        p.temperature = j->temperature;
        p.seed = j->seed;
        p.stream = true;
        assert_int_equal(gmc_submit(cl[i], &p, j, NULL), GMC_OK);
    }
    int left = N_CLIENTS;
    double deadline = td_now_ms() + 120000;
    while (left > 0) {
        assert_true(td_now_ms() < deadline);
        zmq_pollitem_t items[N_CLIENTS];
        long timeout = 1000;
        for (int i = 0; i < N_CLIENTS; i++) {
            items[i] = (zmq_pollitem_t){gmc_socket(cl[i]), 0, ZMQ_POLLIN, 0};
            if (gmc_pending(cl[i]))
                timeout = 0;
        }
        assert_true(zmq_poll(items, N_CLIENTS, timeout) >= 0);
        for (int i = 0; i < N_CLIENTS; i++) {
            gmc_event ev[16];
            int n = gmc_poll(cl[i], ev, 16, 0);
            assert_true(n >= 0);
            for (int k = 0; k < n; k++) {
                job *j = ev[k].user;
                assert_ptr_equal(j, &g_jobs[i]);
                j->n_events++;
                append(j, ev[k].text, ev[k].text_len);
                if (ev[k].finished) {
                    j->done = true;
                    j->finish = ev[k].finish_reason;
                    j->err = ev[k].error;
                    append(j, "\n", 1);
                    left--;
                }
            }
        }
    }
    for (int i = 0; i < N_CLIENTS; i++) {
        job *j = &g_jobs[i];
        assert_int_equal(j->err, GMC_OK);
        assert_true(j->finish == GMC_FINISH_LENGTH || j->finish == GMC_FINISH_STOP);
        if (j->got_len != j->expected_len || memcmp(j->got, j->expected, j->got_len)) {
            fprintf(stderr, "client %d prompt '%s':\n  gemmad:         '%s'\n  gemma-generate: '%s'\n", i, j->prompt,
                    j->got, j->expected);
            fail();
        }
        gmc_close(&cl[i]);
    }
    /* streamed: more than one event for requests with several tokens */
    int multi = 0;
    for (int i = 0; i < N_CLIENTS; i++)
        multi += g_jobs[i].n_events > 1;
    assert_true(multi > N_CLIENTS / 2);
}

static void get_stats(const char *endpoint, gmc_stats *s)
{
    gmc_client *c;
    assert_int_equal(gmc_connect(endpoint, 10000, &c), GMC_OK);
    assert_int_equal(gmc_stats_get(c, 10000, s), GMC_OK);
    gmc_close(&c);
}

/* gemmad at tp with extra flags (NULL-terminated, may be NULL); 32 clients; all
 * blocks back afterwards. */
static void run_tp(int tp, const char *const *extra, bool expect_preempt, const char *tag)
{
    char ep[400], tps[8], log[64], sock[64];
    snprintf(tps, sizeof tps, "%d", tp);
    snprintf(log, sizeof log, "gemmad-tp%d-%s.log", tp, tag);
    snprintf(sock, sizeof sock, "tp%d-%s.sock", tp, tag);
    td_endpoint(ep, sizeof ep, sock);
    const char *args[32] = {"--model", TINY_MODEL_DIR, "--backend", "cpu", "--tp", tps, "--listen", ep,
                            "--max-tokens-per-step", "64"};
    int n = 10;
    for (; extra && *extra && n < 31; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    pid_t pid = td_spawn_gemmad(args, log);
    assert_true(pid > 0);
    if (!td_wait_ready(ep, pid, 120000)) {
        td_dump_log(log);
        fail_msg("gemmad did not become ready");
    }
    run_clients(ep);
    gmc_stats s;
    get_stats(ep, &s);
    assert_int_equal(s.running, 0);
    assert_int_equal(s.waiting, 0);
    assert_int_equal(s.kv_blocks_used, 0);
    assert_int_equal(s.requests_finished, N_CLIENTS);
    assert_int_equal(s.requests_failed, 0);
    assert_true(s.completion_tokens > 0);
    if (expect_preempt) {
        if (s.preemptions == 0)
            td_dump_log(log);
        assert_true(s.preemptions > 0);
    }
    int rc = td_stop(pid);
    if (rc != 0)
        td_dump_log(log);
    assert_int_equal(rc, 0);
}

static const char *const NO_RUN_AHEAD[] = {"--no-run-ahead", NULL};

/* run-ahead (the default): two steps in flight, decodes fed back on the workers */
static void test_tp1(void **state)
{
    (void)state;
    run_tp(1, NULL, false, "ahead");
}

static void test_tp2(void **state)
{
    (void)state;
    run_tp(2, NULL, false, "ahead");
}

static void test_tp1_no_run_ahead(void **state)
{
    (void)state;
    run_tp(1, NO_RUN_AHEAD, false, "serial");
}

static void test_tp2_no_run_ahead(void **state)
{
    (void)state;
    run_tp(2, NO_RUN_AHEAD, false, "serial");
}

/* 8 blocks of 16 tokens: a handful of sequences at a time, so decode runs out of blocks. */
static void test_preemption(void **state)
{
    (void)state;
    const char *const ahead[] = {"--kv-blocks", "8", NULL};
    const char *const serial[] = {"--kv-blocks", "8", "--no-run-ahead", NULL};
    run_tp(1, ahead, true, "pre-ahead");
    run_tp(1, serial, true, "pre-serial");
    const char *const tp2[] = {"--kv-blocks", "8", "--max-seqs", "6", NULL};
    run_tp(2, tp2, true, "pre-ahead");
}

/* gemma-cli prints byte for byte what gemma-generate prints. */
static void test_cli_matches_generate(void **state)
{
    (void)state;
    char ep[400];
    td_endpoint(ep, sizeof ep, "cli.sock");
    const char *args[] = {"--model", TINY_MODEL_DIR, "--listen", ep, NULL};
    pid_t pid = td_spawn_gemmad(args, "gemmad-cli.log");
    assert_true(td_wait_ready(ep, pid, 120000));
    const char *prompts[] = {"Hello world", "über café 日本 🙂", "a"};
    for (int chat = 0; chat < 2; chat++)
        for (size_t i = 0; i < 3; i++) {
            const char *gen[16] = {GEMMA_GENERATE_BIN, "--model", TINY_MODEL_DIR, "--prompt", prompts[i],
                                   "--max-tokens", "40", "--temperature", "0.7", "--seed", "5"};
            const char *cli[16] = {GEMMA_CLI_BIN, "--endpoint", ep, "--max-tokens", "40", "--temperature", "0.7",
                                   "--seed", "5"};
            int ng = 11, nc = 9;
            if (chat) {
                gen[ng++] = "--chat";
                cli[nc++] = "--chat";
            }
            cli[nc++] = prompts[i];
            gen[ng] = cli[nc] = NULL;
            int s1, s2;
            size_t l1, l2;
            char *a = td_run_capture(gen, &s1, &l1);
            char *b = td_run_capture(cli, &s2, &l2);
            assert_int_equal(s1, 0);
            assert_int_equal(s2, 0);
            if (l1 != l2 || memcmp(a, b, l1)) {
                fprintf(stderr, "chat %d prompt '%s':\n  gemma-cli: '%s'\n  gemma-generate: '%s'\n", chat,
                        prompts[i], b, a);
                fail();
            }
            /* non-streamed: the same bytes */
            cli[nc] = "--no-stream";
            cli[nc + 1] = NULL;
            char *c = td_run_capture(cli, &s2, &l2);
            assert_int_equal(s2, 0);
            assert_int_equal(l1, l2);
            assert_memory_equal(a, c, l1);
            free(a);
            free(b);
            free(c);
        }
    /* stdin prompt */
    {
        const char *gen[] = {GEMMA_GENERATE_BIN, "--model", TINY_MODEL_DIR, "--prompt", "from stdin", "--max-tokens",
                             "10", NULL};
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "printf 'from stdin' | %s --endpoint %s --max-tokens 10", GEMMA_CLI_BIN, ep);
        const char *sh[] = {"/bin/sh", "-c", cmd, NULL};
        int s1, s2;
        size_t l1, l2;
        char *a = td_run_capture(gen, &s1, &l1);
        char *b = td_run_capture(sh, &s2, &l2);
        assert_int_equal(s2, 0);
        assert_int_equal(l1, l2);
        assert_memory_equal(a, b, l1);
        free(a);
        free(b);
    }
    /* --health exits 0; --stats prints */
    const char *h[] = {GEMMA_CLI_BIN, "--endpoint", ep, "--health", NULL};
    int st;
    char *out = td_run_capture(h, &st, NULL);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "serving"));
    free(out);
    const char *sa[] = {GEMMA_CLI_BIN, "--endpoint", ep, "--stats", NULL};
    out = td_run_capture(sa, &st, NULL);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "kv_blocks_free:"));
    free(out);
    /* an error: typed code on stderr, non-zero exit */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s --endpoint %s --temperature -1 hi 2>&1 >/dev/null", GEMMA_CLI_BIN, ep);
    const char *sh[] = {"/bin/sh", "-c", cmd, NULL};
    out = td_run_capture(sh, &st, NULL);
    assert_int_not_equal(st, 0);
    assert_non_null(strstr(out, "INVALID_ARGUMENT"));
    free(out);
    assert_int_equal(td_stop(pid), 0);
    /* nobody listening: --health fails */
    out = td_run_capture((const char *[]){GEMMA_CLI_BIN, "--endpoint", ep, "--health", "--timeout", "300", NULL},
                         &st, NULL);
    assert_int_not_equal(st, 0);
    free(out);
}

static int setup(void **state)
{
    (void)state;
    if (!td_have_tiny()) {
        fprintf(stderr, "no tiny model at %s (fixture tiny_model)\n", TINY_MODEL_DIR);
        return -1;
    }
    if (!td_make_dir())
        return -1;
    make_jobs();
    expected_outputs();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_CLIENTS; i++) {
        free(g_jobs[i].expected);
        free(g_jobs[i].got);
    }
    td_kill_leftovers();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tp1),
        cmocka_unit_test(test_tp2),
        cmocka_unit_test(test_tp1_no_run_ahead),
        cmocka_unit_test(test_tp2_no_run_ahead),
        cmocka_unit_test(test_preemption),
        cmocka_unit_test(test_cli_matches_generate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
