/* test_daemon_spec_e2e.c - speculative decoding through gemmad's RPC on the tiny model (cpu backend):
 * gemmad runs with --speculative-tokens 4 in a KV pool small enough to preempt; each request is sent with
 * speculation off (-1), at the default (0) and at 8, all at once, and every pair must match token for token
 * and in text: greedy and sampled, text prompts that repeat themselves (drafts hit) and ones that do not,
 * max_tokens, min_tokens, stop strings (the tokens after a stop string inside an accepted run never were)
 * and n = 2. Stats must show drafts made and accepted; speculative_tokens out of range is
 * INVALID_ARGUMENT. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/test_daemon_util.h"

#define MAX_GEN 48
#define N_CASE 8
#define N_VAR 3

static char g_ep[400];
static pid_t g_pid;

typedef struct out {
    int32_t ids[2][MAX_GEN + 1];
    int32_t n[2];
    char text[2][4096];
    size_t text_len[2];
    gmc_finish finish[2];
    gmc_code err;
    int32_t completion_tokens;
    bool done;
} out;

static void take(out *o, const gmc_event *ev)
{
    int x = ev->index == 1;
    for (int32_t k = 0; k < ev->n_tokens && o->n[x] <= MAX_GEN; k++)
        o->ids[x][o->n[x]++] = ev->tokens[k];
    if (ev->text_len && o->text_len[x] + ev->text_len < sizeof o->text[x]) {
        memcpy(o->text[x] + o->text_len[x], ev->text, ev->text_len);
        o->text_len[x] += ev->text_len;
    }
    if (ev->index_finished || ev->finished)
        o->finish[x] = ev->finish_reason;
    if (ev->finished) {
        o->done = true;
        o->err = ev->error;
        o->completion_tokens = ev->usage.completion_tokens;
    }
}

static const char *const g_prompts[] = {
    "one two three four one two three four one two three four one two",
    "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over",
    "Rewrite: alpha beta gamma delta epsilon. Rewritten: alpha beta gamma",
    "Completely unrelated words appear here without repeating anything at all",
};

/* Case c's parameters with speculative_tokens spec. stop: a stop string or NULL. */
static void params_of(int c, int32_t spec, const char *const *stop, gmc_params *p)
{
    gmc_params_init(p);
    p->prompt = g_prompts[c % 4];
    p->max_tokens = 16 + (c * 11) % (MAX_GEN - 16);
    p->temperature = c % 2 ? 0.8f : 0.0f;
    p->top_k = c == 5 ? 20 : 0;
    p->seed = 1234 + (uint64_t)c;
    p->min_tokens = c == 6 ? 5 : 0;
    p->n = c == 7 ? 2 : 1;
    p->speculative_tokens = spec;
    if (stop) {
        p->stop = stop;
        p->n_stop = 1;
    }
}

/* Every case at every speculative setting, all submitted at once. */
static void run_all(out o[N_CASE][N_VAR], const char *stops[N_CASE])
{
    static const int32_t spec[N_VAR] = {-1, 0, 8};
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    memset(o, 0, sizeof(out) * N_CASE * N_VAR);
    for (int i = 0; i < N_CASE; i++)
        for (int v = 0; v < N_VAR; v++) {
            gmc_params p;
            const char *const *st = stops && stops[i] ? &stops[i] : NULL;
            params_of(i, spec[v], st, &p);
            uint64_t id;
            assert_int_equal(gmc_submit(c, &p, &o[i][v], &id), GMC_OK);
        }
    for (int left = N_CASE * N_VAR; left > 0;) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 120000);
        assert_true(k > 0);
        for (int j = 0; j < k; j++) {
            take(ev[j].user, &ev[j]);
            left -= ev[j].finished;
        }
    }
    gmc_close(&c);
}

static void check_same(out o[N_CASE][N_VAR])
{
    if (getenv("SPEC_DUMP"))
        for (int i = 0; i < N_CASE; i++)
            for (int v = 0; v < N_VAR; v++) {
                fprintf(stderr, "case %d var %d finish %d err %d ct %d:", i, v, o[i][v].finish[0], o[i][v].err,
                        o[i][v].completion_tokens);
                for (int k = 0; k < o[i][v].n[0]; k++)
                    fprintf(stderr, " %d", o[i][v].ids[0][k]);
                fprintf(stderr, " | %.*s\n", (int)o[i][v].text_len[0], o[i][v].text[0]);
            }
    for (int i = 0; i < N_CASE; i++) {
        assert_int_equal(o[i][0].err, GMC_OK);
        for (int v = 1; v < N_VAR; v++) {
            assert_int_equal(o[i][v].err, GMC_OK);
            if (o[i][v].completion_tokens != o[i][0].completion_tokens)
            {
                for (int x = 0; x < 2; x++) {
                    fprintf(stderr, "spec %d finish %d:", x, o[i][v].finish[x]);
                    for (int k = 0; k < o[i][v].n[x]; k++) fprintf(stderr, " %d", o[i][v].ids[x][k]);
                    fprintf(stderr, "\nplain %d finish %d:", x, o[i][0].finish[x]);
                    for (int k = 0; k < o[i][0].n[x]; k++) fprintf(stderr, " %d", o[i][0].ids[x][k]);
                    fprintf(stderr, "\n");
                }
                fail_msg("case %d, setting %d: %d completion tokens, %d without speculation (%d, %d tokens)", i, v,
                         o[i][v].completion_tokens, o[i][0].completion_tokens, o[i][v].n[0], o[i][0].n[0]);
            }
            for (int x = 0; x < 2; x++) {
                if (o[i][v].n[x] != o[i][0].n[x] ||
                    memcmp(o[i][v].ids[x], o[i][0].ids[x], sizeof(int32_t) * (size_t)o[i][0].n[x]))
                    fail_msg("case %d, setting %d, sequence %d: %d tokens differ from the %d without speculation",
                             i, v, x, o[i][v].n[x], o[i][0].n[x]);
                assert_int_equal(o[i][v].text_len[x], o[i][0].text_len[x]);
                assert_memory_equal(o[i][v].text[x], o[i][0].text[x], o[i][0].text_len[x]);
                assert_int_equal(o[i][v].finish[x], o[i][0].finish[x]);
            }
        }
    }
}

static void test_spec_same_output(void **state)
{
    (void)state;
    static out o[N_CASE][N_VAR];
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    gmc_stats s0, s1;
    assert_int_equal(gmc_stats_get(c, 10000, &s0), GMC_OK);
    run_all(o, NULL);
    check_same(o);
    assert_int_equal(gmc_stats_get(c, 10000, &s1), GMC_OK);
    assert_true(s1.spec_steps > s0.spec_steps);
    assert_true(s1.spec_accepted > s0.spec_accepted);
    assert_true(s1.spec_accepted - s0.spec_accepted <= s1.spec_drafted - s0.spec_drafted);
    /* stop strings: a piece from the middle of each plain output text */
    static char pieces[N_CASE][16];
    const char *stops[N_CASE];
    for (int i = 0; i < N_CASE; i++) {
        size_t n = o[i][0].text_len[0];
        stops[i] = NULL;
        if (n < 12)
            continue;
        memcpy(pieces[i], o[i][0].text[0] + n / 2, 4);
        pieces[i][4] = 0;
        if (strlen(pieces[i]) == 4)
            stops[i] = pieces[i];
    }
    static out w[N_CASE][N_VAR];
    run_all(w, stops);
    check_same(w);
    int stopped = 0;
    for (int i = 0; i < N_CASE; i++)
        stopped += stops[i] && w[i][0].finish[0] == GMC_FINISH_STOP && w[i][0].n[0] < o[i][0].n[0];
    assert_true(stopped > 0);
    gmc_close(&c);
}

static void test_spec_bad_value(void **state)
{
    (void)state;
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    for (int k = 0; k < 2; k++) {
        gmc_params p;
        params_of(0, k ? 17 : -2, NULL, &p);
        gmc_result res;
        gmc_code rc = gmc_generate(c, &p, 30000, NULL, NULL, &res);
        assert_int_equal(rc, GMC_ERR_INVALID_ARGUMENT);
        gmc_result_free(&res);
    }
    gmc_close(&c);
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
    td_endpoint(g_ep, sizeof g_ep, "spec.sock");
    /* 14 blocks of 16 tokens for 27 sequences of up to ~70 tokens: preemption */
    const char *args[] = {"--model", TINY_MODEL_DIR, "--backend", "cpu", "--listen", g_ep, "--kv-blocks", "14",
                          "--max-tokens-per-step", "64", "--speculative-tokens", "4", NULL};
    g_pid = td_spawn_gemmad(args, "gemmad-spec.log");
    if (g_pid <= 0 || !td_wait_ready(g_ep, g_pid, 120000)) {
        td_dump_log("gemmad-spec.log");
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc = td_stop(g_pid);
    td_remove_dir();
    return rc == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_same_output),
        cmocka_unit_test(test_spec_bad_value),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    td_kill_leftovers();
    return rc;
}
