/* test_daemon_sampling.c - the sampling extensions through gemmad's protobuf RPC, end to end on the tiny
 * model (cpu backend), with the C client:
 *   - logprobs: one per token id in every chunk, <= 0, the top-N in order with sum exp <= 1, a greedy
 *     token equal to its first alternative, and each value equal to log_softmax of the logits a CPU engine
 *     in this process computes for the same tokens (teacher forcing); 12 requests at once in a pool so
 *     small that sequences are preempted and recomputed, streamed and not;
 *   - penalties make greedy output repeat itself measurably less;
 *   - min_tokens: a stop id (or stop string) that ends the output at once cannot before min_tokens;
 *   - out-of-range values are INVALID_ARGUMENT. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <zmq.h>

#include "common/sampling.h"
#include "kernels/cpu/sample.h"
#include "tests/test_daemon_util.h"
#include "worker/engine.h"

#define N_REQ 12
#define MAX_GEN 40

static char g_ep[400];
static pid_t g_pid;
static gm_engine *g_eng; /* the reference: a CPU engine on the same model */

/* What one request got back. */
typedef struct req {
    int32_t prompt[16], n_prompt;
    int32_t ids[MAX_GEN + 1];
    float lp[MAX_GEN + 1];
    int32_t top_ids[MAX_GEN + 1][GM_MAX_TOP_LOGPROBS];
    float top_lps[MAX_GEN + 1][GM_MAX_TOP_LOGPROBS];
    int32_t n, n_lp, n_top;
    char text[4096];
    size_t text_len;
    gmc_finish finish;
    gmc_code err;
    bool done;
} req;

static void on_event(req *r, const gmc_event *ev)
{
    assert_true(ev->n_logprobs == 0 || ev->n_logprobs == ev->n_tokens);
    for (int32_t k = 0; k < ev->n_tokens && r->n <= MAX_GEN; k++)
        r->ids[r->n++] = ev->tokens[k];
    for (int32_t k = 0; k < ev->n_logprobs && r->n_lp <= MAX_GEN; k++) {
        const gmc_logprob *l = &ev->logprobs[k];
        r->lp[r->n_lp] = l->logprob;
        r->n_top = l->n_top;
        assert_true(l->n_top <= GM_MAX_TOP_LOGPROBS);
        memcpy(r->top_ids[r->n_lp], l->top_ids, (size_t)l->n_top * sizeof(int32_t));
        memcpy(r->top_lps[r->n_lp], l->top_logprobs, (size_t)l->n_top * sizeof(float));
        r->n_lp++;
    }
    if (ev->text_len && r->text_len + ev->text_len < sizeof r->text) {
        memcpy(r->text + r->text_len, ev->text, ev->text_len);
        r->text_len += ev->text_len;
    }
    if (ev->finished) {
        r->done = true;
        r->finish = ev->finish_reason;
        r->err = ev->error;
    }
}

static void on_chunk(const gmc_event *ev, void *arg) { on_event(arg, ev); }

/* One blocking request (streamed) from token ids; *r gets what came back. */
static void run_one(const gmc_params *p, req *r)
{
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    gmc_result res;
    gmc_code rc = gmc_generate(c, p, 120000, on_chunk, r, &res);
    assert_true(rc == GMC_OK || rc == res.error);
    assert_true(r->done);
    gmc_result_free(&res);
    gmc_close(&c);
}

static void prompt_of(req *r, int i)
{
    r->n_prompt = 4 + i % 9;
    r->prompt[0] = 2;
    for (int32_t k = 1; k < r->n_prompt; k++)
        r->prompt[k] = 3 + (k * 389 + i * 1013) % 4000;
}

/* The reference log-probabilities: one CPU step over prompt + output with the logits of every position. */
static void check_against_engine(const req *r, int32_t n_top)
{
    int64_t V = g_eng->cfg.vocab_size;
    int32_t n = r->n_prompt + r->n, toks[64], bt[64];
    assert_true(n <= 64);
    memcpy(toks, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    memcpy(toks + r->n_prompt, r->ids, (size_t)r->n * sizeof(int32_t));
    for (int k = 0; k < 64; k++)
        bt[k] = k;
    float *lg = malloc((size_t)(n * V) * sizeof(float));
    int32_t tok;
    gm_seq_step q = {0, toks, n, 0, bt, 64, GM_LOGITS_ALL, GM_SAMPLING_GREEDY, NULL};
    gm_step_out out = {&tok, lg, n, NULL};
    assert_int_equal(gm_engine_step(g_eng, &q, 1, &out), GM_OK);
    for (int32_t i = 0; i < r->n; i++) {
        const float *row = lg + (int64_t)(r->n_prompt - 1 + i) * V; /* the logits that produced output i */
        double lse;
        int32_t ids[GM_MAX_TOP_LOGPROBS];
        float lps[GM_MAX_TOP_LOGPROBS];
        cpu_logprobs(row, V, n_top, &lse, ids, lps);
        double want = (double)row[r->ids[i]] - lse;
        if (fabs(r->lp[i] - want) > 1e-4)
            fail_msg("token %d (%d): logprob %g, the engine's %g", (int)i, (int)r->ids[i], (double)r->lp[i], want);
        for (int32_t k = 0; k < n_top; k++) {
            assert_int_equal(r->top_ids[i][k], ids[k]);
            assert_true(fabs((double)r->top_lps[i][k] - lps[k]) <= 1e-4);
        }
    }
    free(lg);
}

/* Every token has its entry; each entry is a log-probability with its alternatives in order. */
static void check_shape(const req *r, int32_t n_top, bool greedy)
{
    assert_int_equal(r->err, GMC_OK);
    assert_int_equal(r->n_lp, r->n);
    assert_int_equal(r->n_top, r->n ? n_top : r->n_top);
    for (int32_t i = 0; i < r->n; i++) {
        assert_true(r->lp[i] <= 0.0f);
        double mass = 0.0;
        for (int32_t k = 0; k < n_top; k++) {
            mass += exp((double)r->top_lps[i][k]);
            if (k)
                assert_true(r->top_lps[i][k] <= r->top_lps[i][k - 1]);
            if (r->top_ids[i][k] == r->ids[i])
                assert_true(r->top_lps[i][k] == r->lp[i]); /* the sampled token, where listed, agrees */
        }
        assert_true(mass <= 1.0 + 1e-5);
        if (greedy && n_top > 0) {
            assert_int_equal(r->ids[i], r->top_ids[i][0]);
            assert_true(r->lp[i] == r->top_lps[i][0]);
        }
    }
}

static void test_logprobs(void **state)
{
    (void)state;
    static req rs[N_REQ];
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    for (int i = 0; i < N_REQ; i++) {
        req *r = &rs[i];
        memset(r, 0, sizeof *r);
        prompt_of(r, i);
        gmc_params p;
        gmc_params_init(&p);
        p.prompt_ids = r->prompt;
        p.n_prompt_ids = r->n_prompt;
        p.max_tokens = 16 + i * 2;
        p.ignore_eos = true;
        p.temperature = i % 3 == 0 ? 0.0f : 0.8f;
        p.seed = 100 + (uint64_t)i;
        p.logprobs = true;
        p.top_logprobs = (int32_t[]){0, 1, 5, GM_MAX_TOP_LOGPROBS}[i % 4];
        p.stream = i % 2 == 0;
        assert_int_equal(gmc_submit(c, &p, r, NULL), GMC_OK);
    }
    for (int left = N_REQ; left > 0;) {
        gmc_event ev[32];
        int n = gmc_poll(c, ev, 32, 60000);
        assert_true(n > 0);
        for (int k = 0; k < n; k++) {
            on_event(ev[k].user, &ev[k]);
            left -= ev[k].finished;
        }
    }
    gmc_close(&c);
    for (int i = 0; i < N_REQ; i++) {
        int32_t n_top = (int32_t[]){0, 1, 5, GM_MAX_TOP_LOGPROBS}[i % 4];
        assert_int_equal(rs[i].finish, GMC_FINISH_LENGTH);
        assert_int_equal(rs[i].n, 16 + i * 2);
        check_shape(&rs[i], n_top, i % 3 == 0);
        check_against_engine(&rs[i], n_top);
    }
    gmc_stats s;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    assert_int_equal(gmc_stats_get(c, 10000, &s), GMC_OK);
    gmc_close(&c);
    assert_true(s.preemptions > 0); /* the small pool made it recompute some: the entries stayed aligned */
}

/* Distinct tokens of ids[0..n). */
static int distinct(const int32_t *ids, int32_t n)
{
    int d = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t j = 0;
        while (j < i && ids[j] != ids[i])
            j++;
        d += j == i;
    }
    return d;
}

static void test_penalties(void **state)
{
    (void)state;
    int base = 0, freq = 0, rep = 0, pres = 0;
    for (int i = 0; i < 4; i++) {
        req r[4];
        memset(r, 0, sizeof r);
        for (int k = 0; k < 4; k++) {
            prompt_of(&r[k], 20 + i);
            gmc_params p;
            gmc_params_init(&p);
            p.prompt_ids = r[k].prompt;
            p.n_prompt_ids = r[k].n_prompt;
            p.max_tokens = MAX_GEN;
            p.ignore_eos = true;
            if (k == 1)
                p.frequency_penalty = 1.5f;
            if (k == 2)
                p.repetition_penalty = 3.0f;
            if (k == 3)
                p.presence_penalty = 2.0f;
            run_one(&p, &r[k]);
            assert_int_equal(r[k].n, MAX_GEN);
        }
        base += distinct(r[0].ids, r[0].n), freq += distinct(r[1].ids, r[1].n);
        rep += distinct(r[2].ids, r[2].n), pres += distinct(r[3].ids, r[3].n);

    }
    print_message("distinct tokens in 4 greedy outputs of %d: no penalty %d, frequency 1.5: %d, repetition 3: %d, "
                  "presence 2: %d\n", MAX_GEN, base, freq, rep, pres);
    assert_true(base <= 8); /* the tiny model repeats itself */
    assert_true(freq >= 4 * base);
    assert_true(pres >= 4 * base);
    assert_true(rep > base);
}

static void test_min_tokens(void **state)
{
    (void)state;
    req free_run, stopped, held;
    memset(&free_run, 0, sizeof free_run);
    prompt_of(&free_run, 3);
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = free_run.prompt;
    p.n_prompt_ids = free_run.n_prompt;
    p.max_tokens = 12;
    p.ignore_eos = true;
    run_one(&p, &free_run);
    assert_int_equal(free_run.n, 12);
    /* the first token as a stop id ends the output at once ... */
    int32_t stop = free_run.ids[0];
    p.stop_ids = &stop;
    p.n_stop_ids = 1;
    stopped = free_run;
    stopped.n = stopped.n_lp = 0, stopped.done = false;
    run_one(&p, &stopped);
    assert_int_equal(stopped.finish, GMC_FINISH_STOP);
    assert_int_equal(stopped.n, 1);
    /* ... but not before min_tokens: it is never sampled before the 5th token */
    p.min_tokens = 5;
    held = free_run;
    held.n = held.n_lp = 0, held.done = false;
    run_one(&p, &held);
    assert_int_equal(held.err, GMC_OK);
    assert_true(held.n >= 5);
    for (int32_t i = 0; i < 5; i++)
        assert_int_not_equal(held.ids[i], stop);
    if (held.finish == GMC_FINISH_STOP)
        assert_int_equal(held.ids[held.n - 1], stop);
    /* stop strings wait for min_tokens too: the text of the first output token as a stop string */
    p.stop_ids = NULL, p.n_stop_ids = 0, p.min_tokens = 0;
    p.max_tokens = 12;
    assert_true(free_run.text_len > 0);
    char first[8];
    size_t fl = free_run.text_len < 3 ? free_run.text_len : 3;
    memcpy(first, free_run.text, fl);
    first[fl] = 0;
    const char *stops[1] = {first};
    p.stop = stops, p.n_stop = 1;
    req s0 = free_run, s1 = free_run;
    s0.n = s0.n_lp = 0, s0.done = false, s0.text_len = 0;
    s1 = s0;
    run_one(&p, &s0);
    assert_int_equal(s0.finish, GMC_FINISH_STOP);
    assert_int_equal(s0.text_len, 0);
    p.min_tokens = 6;
    run_one(&p, &s1);
    assert_true(s1.n >= 6);
    assert_true(s1.text_len > 0);
}

static void expect_invalid(const char *what, void (*spoil)(gmc_params *))
{
    int32_t ids[3] = {2, 10, 11};
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = ids;
    p.n_prompt_ids = 3;
    p.max_tokens = 4;
    spoil(&p);
    req r;
    memset(&r, 0, sizeof r);
    run_one(&p, &r);
    if (r.err != GMC_ERR_INVALID_ARGUMENT)
        fail_msg("%s: finished %d with code %d", what, (int)r.finish, (int)r.err);
}

static void bad_top(gmc_params *p) { p->top_logprobs = GM_MAX_TOP_LOGPROBS + 1; }
static void bad_top_neg(gmc_params *p) { p->top_logprobs = -1; }
static void bad_presence(gmc_params *p) { p->presence_penalty = 2.5f; }
static void bad_frequency(gmc_params *p) { p->frequency_penalty = -3.0f; }
static void bad_freq_nan(gmc_params *p) { p->frequency_penalty = NAN; }
static void bad_rep(gmc_params *p) { p->repetition_penalty = -1.0f; }
static void bad_rep_inf(gmc_params *p) { p->repetition_penalty = INFINITY; }
static void bad_min(gmc_params *p) { p->min_tokens = -1; }
static void bad_min_max(gmc_params *p) { p->min_tokens = 5; }

static void test_bad_values(void **state)
{
    (void)state;
    expect_invalid("top_logprobs 21", bad_top);
    expect_invalid("top_logprobs -1", bad_top_neg);
    expect_invalid("presence 2.5", bad_presence);
    expect_invalid("frequency -3", bad_frequency);
    expect_invalid("frequency NaN", bad_freq_nan);
    expect_invalid("repetition -1", bad_rep);
    expect_invalid("repetition inf", bad_rep_inf);
    expect_invalid("min_tokens -1", bad_min);
    expect_invalid("min_tokens > max_tokens", bad_min_max);
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
    td_endpoint(g_ep, sizeof g_ep, "sampling.sock");
    /* 10 blocks of 16 tokens for 12 requests of up to 52 tokens: preemption */
    const char *args[] = {"--model", TINY_MODEL_DIR, "--backend", "cpu", "--listen", g_ep, "--kv-blocks", "10",
                          "--max-tokens-per-step", "64", NULL};
    g_pid = td_spawn_gemmad(args, "gemmad-sampling.log");
    if (g_pid <= 0 || !td_wait_ready(g_ep, g_pid, 120000)) {
        td_dump_log("gemmad-sampling.log");
        return -1;
    }
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = TINY_MODEL_DIR;
    o.kv_block_size = 4;
    o.kv_num_blocks = 64;
    o.max_seqs = 1;
    o.max_tokens = 256;
    return gm_engine_create(&o, &g_eng) == GM_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    gm_engine_destroy(&g_eng);
    if (g_pid > 0 && td_stop(g_pid) != 0)
        td_dump_log("gemmad-sampling.log");
    td_kill_leftovers();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_min_tokens),
        cmocka_unit_test(test_bad_values),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
