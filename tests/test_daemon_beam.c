/* test_daemon_beam.c - beam search through gemmad's protobuf RPC, end to end on the tiny model (cpu
 * backend), against a plain reference beam search in this process: a CPU engine on the same model gives
 * the full logits of each hypothesis (recomputed from position 0, nothing shared), log_softmax in double
 * over the whole vocabulary, the same rules (daemon/beam.h) written again here. Checked:
 *   - every returned hypothesis has the reference's tokens, finish reason and cumulative log-probability
 *     (the sum of its tokens' logprobs, within 1e-4), for widths 2..8, n 1..W, length penalties 0, 1, 2,
 *     early stopping on and off, a stop id; 16 requests at once beside plain ones in a pool small enough
 *     to preempt whole groups;
 *   - cancels, a client that goes away and a worker killed mid-search leak nothing: once idle, no KV
 *     block is used (free + cached == total), and a search after the restart still matches;
 *   - what does not go with beams is INVALID_ARGUMENT. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <zmq.h>

#include "tests/test_daemon_util.h"
#include "worker/engine.h"

#define MAX_W 8
#define MAX_GEN 16
#define MAX_PROMPT 16

static char g_ep[400];
static pid_t g_pid;
static gm_engine *g_eng;

/* One hypothesis. */
typedef struct hyp {
    int32_t ids[MAX_GEN + 1], n;
    double sum, score;
    bool stopped;
} hyp;

typedef struct bcase {
    int32_t prompt[MAX_PROMPT], n_prompt;
    int32_t width, n, max_new, stop_id; /* stop_id -1: none */
    float lp;
    bool es;
    /* what gemmad sent */
    hyp got[MAX_W];
    float lps[MAX_W][MAX_GEN + 1];
    int32_t n_lp[MAX_W];
    gmc_finish fin[MAX_W];
    int32_t n_fin;
    gmc_code err;
    bool done;
} bcase;

/* ---- the reference ---- */

/* log_softmax over the whole vocabulary of the logits after prompt + ids[0..n). */
static void ref_logprobs(const int32_t *prompt, int32_t np, const int32_t *ids, int32_t n, double *out)
{
    int64_t V = g_eng->cfg.vocab_size;
    int32_t toks[MAX_PROMPT + MAX_GEN + 1], bt[64], tok;
    memcpy(toks, prompt, (size_t)np * sizeof(int32_t));
    memcpy(toks + np, ids, (size_t)n * sizeof(int32_t));
    for (int k = 0; k < 64; k++)
        bt[k] = k;
    float *lg = malloc((size_t)V * sizeof(float));
    gm_seq_step q = {0, toks, np + n, 0, bt, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY, NULL};
    gm_step_out o = {&tok, lg, 1, NULL};
    assert_int_equal(gm_engine_step(g_eng, &q, 1, &o), GM_OK);
    double mx = -INFINITY, sum = 0.0;
    for (int64_t v = 0; v < V; v++)
        mx = lg[v] > mx ? lg[v] : mx;
    for (int64_t v = 0; v < V; v++)
        sum += exp((double)lg[v] - mx);
    double lse = mx + log(sum);
    for (int64_t v = 0; v < V; v++)
        out[v] = (double)lg[v] - lse;
    free(lg);
}

typedef struct rcand {
    double sum;
    int32_t beam, tok;
} rcand;

static int rcand_cmp(const void *a, const void *b)
{
    const rcand *x = a, *y = b;
    if (x->sum != y->sum)
        return x->sum > y->sum ? -1 : 1;
    if (x->beam != y->beam)
        return x->beam - y->beam;
    return x->tok - y->tok;
}

static double ref_score(double sum, int32_t len, float lp) { return sum / pow(len > 1 ? len : 1, lp); }

static void ref_keep(hyp *hs, int32_t *nh, int32_t W, const hyp *h)
{
    int32_t w = -1;
    for (int32_t k = 0; k < *nh; k++)
        if (w < 0 || hs[k].score < hs[w].score)
            w = k;
    if (*nh < W)
        hs[(*nh)++] = *h;
    else if (h->score > hs[w].score)
        hs[w] = *h;
}

static int hyp_cmp(const void *a, const void *b)
{
    const hyp *x = a, *y = b;
    return x->score > y->score ? -1 : x->score < y->score;
}

/* The reference search for c; out gets the n best, best first. Returns how many. */
static int32_t ref_beam(const bcase *c, hyp *out)
{
    int64_t V = g_eng->cfg.vocab_size;
    int32_t W = c->width, n_live = 1, len = 0, nh = 0;
    int32_t live[MAX_W][MAX_GEN + 1];
    double sum[MAX_W] = {0};
    hyp hs[MAX_W];
    double *lp = malloc((size_t)V * sizeof(double));
    rcand *cands = malloc((size_t)(MAX_W * V) * sizeof(rcand));
    for (;;) {
        int64_t nc = 0;
        for (int32_t i = 0; i < n_live; i++) {
            ref_logprobs(c->prompt, c->n_prompt, live[i], len, lp);
            for (int64_t v = 0; v < V; v++)
                cands[nc++] = (rcand){sum[i] + lp[v], i, (int32_t)v};
        }
        qsort(cands, (size_t)nc, sizeof(rcand), rcand_cmp);
        int32_t nxt[MAX_W][MAX_GEN + 1], n_new = 0;
        double nsum[MAX_W];
        for (int64_t r = 0; r < nc && n_new < W; r++) {
            const rcand *k = &cands[r];
            bool stop = k->tok == 1 || k->tok == c->stop_id; /* EOS, the stop id */
            if (stop) {
                if (r < W) {
                    hyp h = {.n = len + 1, .sum = k->sum, .score = ref_score(k->sum, len, c->lp), .stopped = true};
                    memcpy(h.ids, live[k->beam], (size_t)len * sizeof(int32_t));
                    h.ids[len] = k->tok;
                    ref_keep(hs, &nh, W, &h);
                }
                continue;
            }
            memcpy(nxt[n_new], live[k->beam], (size_t)len * sizeof(int32_t));
            nxt[n_new][len] = k->tok;
            nsum[n_new++] = k->sum;
        }
        assert_int_equal(n_new, W);
        memcpy(live, nxt, sizeof live);
        memcpy(sum, nsum, sizeof nsum);
        n_live = W;
        len++;
        if (nh == W) {
            double worst = INFINITY;
            for (int32_t k = 0; k < nh; k++)
                worst = hs[k].score < worst ? hs[k].score : worst;
            if (c->es || worst >= ref_score(sum[0], len, c->lp))
                break;
        }
        if (len == c->max_new) {
            for (int32_t i = 0; i < W; i++) {
                hyp h = {.n = len, .sum = sum[i], .score = ref_score(sum[i], len, c->lp), .stopped = false};
                memcpy(h.ids, live[i], (size_t)len * sizeof(int32_t));
                ref_keep(hs, &nh, W, &h);
            }
            break;
        }
    }
    free(lp);
    free(cands);
    qsort(hs, (size_t)nh, sizeof(hyp), hyp_cmp);
    int32_t n = nh < c->n ? nh : c->n;
    memcpy(out, hs, (size_t)n * sizeof(hyp));
    return n;
}

/* ---- through gemmad ---- */

static void params_of(const bcase *c, gmc_params *p)
{
    gmc_params_init(p);
    p->prompt_ids = c->prompt;
    p->n_prompt_ids = c->n_prompt;
    p->max_tokens = c->max_new;
    p->beam_width = c->width;
    p->n = c->n;
    p->length_penalty = c->lp;
    p->early_stopping = c->es;
    p->logprobs = true;
    p->stream = false;
    if (c->stop_id >= 0) {
        p->stop_ids = &c->stop_id;
        p->n_stop_ids = 1;
    }
}

static void on_event(bcase *c, const gmc_event *ev)
{
    int32_t i = ev->index;
    assert_true(i >= 0 && i < MAX_W);
    hyp *h = &c->got[i];
    for (int32_t k = 0; k < ev->n_tokens && h->n <= MAX_GEN; k++)
        h->ids[h->n++] = ev->tokens[k];
    for (int32_t k = 0; k < ev->n_logprobs && c->n_lp[i] <= MAX_GEN; k++)
        c->lps[i][c->n_lp[i]++] = ev->logprobs[k].logprob;
    if (ev->index_finished || (ev->finished && c->n == 1)) {
        c->fin[i] = ev->finish_reason;
        c->n_fin++;
    }
    if (ev->finished) {
        c->done = true;
        c->err = ev->error;
    }
}

static void prompt_of(bcase *c, int i)
{
    c->n_prompt = 3 + (i * 5) % 12;
    c->prompt[0] = 2;
    for (int32_t k = 1; k < c->n_prompt; k++)
        c->prompt[k] = 3 + (k * 389 + i * 1013) % 4000;
}

static void check_case(const bcase *c)
{
    if (c->err != GMC_OK)
        fail_msg("beam request failed with code %d", (int)c->err);
    hyp want[MAX_W];
    int32_t n = ref_beam(c, want);
    assert_int_equal(n, c->n);
    for (int32_t i = 0; i < n; i++) {
        const hyp *g = &c->got[i];
        if (g->n != want[i].n || memcmp(g->ids, want[i].ids, (size_t)g->n * sizeof(int32_t)))
            fail_msg("W %d n %d lp %g es %d stop %d: hypothesis %d has %d tokens (first %d), the reference %d "
                     "(first %d)", c->width, c->n, (double)c->lp, c->es, c->stop_id, i, g->n, g->n ? g->ids[0] : -1,
                     want[i].n, want[i].ids[0]);
        assert_int_equal(c->n_lp[i], g->n);
        double s = 0.0;
        for (int32_t k = 0; k < g->n; k++)
            s += c->lps[i][k];
        if (fabs(s - want[i].sum) > 1e-4)
            fail_msg("hypothesis %d: cumulative logprob %.7f, the reference %.7f", i, s, want[i].sum);
        assert_true(fabs(ref_score(s, g->n - want[i].stopped, c->lp) - want[i].score) < 1e-4);
        assert_int_equal(c->fin[i], want[i].stopped ? GMC_FINISH_STOP : GMC_FINISH_LENGTH);
    }
}

/* Run cases at once on one client (with `plain` ordinary requests beside them). */
static void run_cases(bcase *cs, int n, int plain)
{
    gmc_client *cl;
    assert_int_equal(gmc_connect(g_ep, 10000, &cl), GMC_OK);
    int32_t pp[4] = {2, 40, 41, 42};
    for (int i = 0; i < plain; i++) {
        gmc_params p;
        gmc_params_init(&p);
        p.prompt_ids = pp, p.n_prompt_ids = 4, p.max_tokens = 20, p.ignore_eos = true;
        assert_int_equal(gmc_submit(cl, &p, NULL, NULL), GMC_OK);
    }
    for (int i = 0; i < n; i++) {
        gmc_params p;
        params_of(&cs[i], &p);
        assert_int_equal(gmc_submit(cl, &p, &cs[i], NULL), GMC_OK);
    }
    for (int left = n + plain; left > 0;) {
        gmc_event ev[32];
        int k = gmc_poll(cl, ev, 32, 60000);
        assert_true(k > 0);
        for (int j = 0; j < k; j++) {
            if (ev[j].user)
                on_event(ev[j].user, &ev[j]);
            left -= ev[j].finished;
        }
    }
    gmc_close(&cl);
}

/* Wait until gemmad runs nothing, then: no KV block held. */
static void expect_no_blocks_held(void)
{
    gmc_client *cl;
    assert_int_equal(gmc_connect(g_ep, 10000, &cl), GMC_OK);
    gmc_stats s;
    for (int t = 0; t < 300; t++) {
        assert_int_equal(gmc_stats_get(cl, 10000, &s), GMC_OK);
        if (s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0)
            break;
        usleep(20000);
    }
    gmc_close(&cl);
    assert_int_equal(s.running, 0);
    assert_int_equal(s.kv_blocks_used, 0);
    assert_int_equal(s.kv_blocks_free + s.kv_blocks_cached, s.kv_blocks_total);
}

static void test_matches_reference(void **state)
{
    (void)state;
    enum { N = 16 };
    static bcase cs[N];
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < N; i++) {
        bcase *c = &cs[i];
        prompt_of(c, i);
        c->width = (int32_t[]){2, 3, 4, 8}[i % 4];
        c->n = 1 + (i / 4) % c->width;
        c->max_new = 5 + i % 8;
        c->lp = (float[]){1.0f, 0.0f, 2.0f}[i % 3];
        c->es = i % 2 == 1;
        c->stop_id = -1;
    }
    run_cases(cs, N, 3);
    for (int i = 0; i < N; i++)
        check_case(&cs[i]);
    gmc_client *cl;
    gmc_stats s;
    assert_int_equal(gmc_connect(g_ep, 10000, &cl), GMC_OK);
    assert_int_equal(gmc_stats_get(cl, 10000, &s), GMC_OK);
    gmc_close(&cl);
    print_message("preemptions so far: %lld\n", (long long)s.preemptions);
    expect_no_blocks_held();
}

/* A stop id taken from an earlier result ends hypotheses early: they are kept and ranked like EOS ones. */
static void test_stop_id(void **state)
{
    (void)state;
    bcase cs[4];
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < 4; i++) {
        prompt_of(&cs[i], 40 + i);
        cs[i].width = 4, cs[i].n = 4, cs[i].max_new = 10, cs[i].lp = 1.0f, cs[i].es = i % 2, cs[i].stop_id = -1;
    }
    run_cases(cs, 4, 0);
    int stopped = 0;
    for (int i = 0; i < 4; i++) {
        check_case(&cs[i]);
        bcase again = cs[i];
        memset(again.got, 0, sizeof again.got);
        memset(again.n_lp, 0, sizeof again.n_lp);
        again.n_fin = 0, again.done = false;
        again.stop_id = cs[i].got[1].ids[2]; /* the second best's third token */
        run_cases(&again, 1, 0);
        check_case(&again);
        for (int32_t k = 0; k < again.n; k++)
            stopped += again.fin[k] == GMC_FINISH_STOP;
    }
    assert_true(stopped > 0);
}

/* Wait for n requests of c to finish; count the cancelled and the failed ones. */
static void drain(gmc_client *c, int n, int *cancelled, int *failed)
{
    for (int left = n; left > 0;) {
        gmc_event ev[16];
        int k = gmc_poll(c, ev, 16, 60000);
        assert_true(k > 0);
        for (int j = 0; j < k; j++) {
            left -= ev[j].finished;
            *cancelled += ev[j].finished && ev[j].finish_reason == GMC_FINISH_CANCELLED;
            *failed += ev[j].finished && ev[j].error != GMC_OK && ev[j].finish_reason != GMC_FINISH_CANCELLED;
        }
    }
}

/* Cancelled searches, a client gone and a worker killed mid-search hold no block afterwards. */
static void test_no_leaks(void **state)
{
    (void)state;
    static bcase cs[8];
    memset(cs, 0, sizeof cs);
    gmc_client *a, *b;
    assert_int_equal(gmc_connect(g_ep, 10000, &a), GMC_OK);
    assert_int_equal(gmc_connect(g_ep, 10000, &b), GMC_OK);
    uint64_t ids[8];
    for (int i = 0; i < 8; i++) {
        prompt_of(&cs[i], 60 + i);
        cs[i].width = 4, cs[i].n = 2, cs[i].max_new = MAX_GEN, cs[i].lp = 1.0f, cs[i].stop_id = -1;
        gmc_params p;
        params_of(&cs[i], &p);
        p.ignore_eos = true;
        assert_int_equal(gmc_submit(i % 2 ? b : a, &p, &cs[i], &ids[i]), GMC_OK);
    }
    usleep(100000);
    for (int i = 0; i < 8; i += 2)
        assert_int_equal(gmc_cancel(a, ids[i]), GMC_OK);
    gmc_close(&b); /* its requests lose their client */
    int cancelled = 0, failed = 0;
    drain(a, 4, &cancelled, &failed);
    gmc_close(&a);
    expect_no_blocks_held();

    /* a worker killed while searches run: they fail, the new workers serve */
    assert_int_equal(gmc_connect(g_ep, 10000, &a), GMC_OK);
    enum { N_KILL = 24 }; /* W 8, 16 tokens: two or three groups fit at a time, the kill lands mid-search */
    for (int i = 0; i < N_KILL; i++) {
        bcase c = {.width = 8, .n = 1, .max_new = MAX_GEN, .lp = 1.0f, .stop_id = -1};
        prompt_of(&c, 80 + i);
        gmc_params p;
        params_of(&c, &p);
        p.ignore_eos = true;
        assert_int_equal(gmc_submit(a, &p, NULL, NULL), GMC_OK);
    }
    usleep(50000);
    pid_t w = td_worker_pid(g_pid, 0);
    assert_true(w > 0);
    kill(w, SIGKILL);
    int dummy = 0;
    drain(a, N_KILL, &dummy, &failed);
    gmc_close(&a);
    print_message("cancelled mid-search: %d of 4; failed by the worker's death: %d of %d\n", cancelled, failed, N_KILL);
    assert_true(td_wait_ready(g_ep, g_pid, 120000));
    expect_no_blocks_held();
    bcase after;
    memset(&after, 0, sizeof after);
    prompt_of(&after, 77);
    after.width = 3, after.n = 2, after.max_new = 8, after.lp = 1.0f, after.stop_id = -1;
    run_cases(&after, 1, 0);
    check_case(&after);
    expect_no_blocks_held();
}

static void expect_invalid(const char *what, void (*spoil)(gmc_params *), gmc_code want)
{
    int32_t ids[3] = {2, 10, 11};
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = ids;
    p.n_prompt_ids = 3;
    p.max_tokens = 4;
    p.beam_width = 4;
    p.stream = false;
    spoil(&p);
    gmc_client *c;
    assert_int_equal(gmc_connect(g_ep, 10000, &c), GMC_OK);
    gmc_result res;
    gmc_code rc = gmc_generate(c, &p, 60000, NULL, NULL, &res);
    if (res.error != want)
        fail_msg("%s: code %d (rc %d), want %d", what, (int)res.error, (int)rc, (int)want);
    gmc_result_free(&res);
    gmc_close(&c);
}

static void bad_width(gmc_params *p) { p->beam_width = 9; }
static void bad_width_neg(gmc_params *p) { p->beam_width = -2; }
static void bad_temp(gmc_params *p) { p->temperature = 0.7f; }
static void bad_top_p(gmc_params *p) { p->top_p = 0.5f; }
static void bad_stream(gmc_params *p) { p->stream = true; }
static void bad_n(gmc_params *p) { p->n = 5; }
static void bad_top_lp(gmc_params *p) { p->top_logprobs = 2; }
static void bad_min(gmc_params *p) { p->min_tokens = 2; }
static void bad_pen(gmc_params *p) { p->frequency_penalty = 0.5f; }
static void bad_lp(gmc_params *p) { p->length_penalty = NAN; }
static void bad_stop(gmc_params *p)
{
    static const char *s[1] = {"x"};
    p->stop = s, p->n_stop = 1;
}
static void too_big(gmc_params *p) { p->beam_width = 8, p->max_tokens = 200; } /* 8 x 13 blocks > 40 */

static void test_invalid(void **state)
{
    (void)state;
    expect_invalid("beam_width 9", bad_width, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("beam_width -2", bad_width_neg, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("temperature", bad_temp, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("top_p", bad_top_p, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("stream", bad_stream, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("n > beam_width", bad_n, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("top_logprobs", bad_top_lp, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("min_tokens", bad_min, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("penalty", bad_pen, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("length_penalty NaN", bad_lp, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("stop strings", bad_stop, GMC_ERR_INVALID_ARGUMENT);
    expect_invalid("beams past the pool", too_big, GMC_ERR_PROMPT_TOO_LONG);
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
    td_endpoint(g_ep, sizeof g_ep, "beam.sock");
    /* 40 blocks of 16 tokens: two or three groups at a time, the rest wait or are preempted */
    const char *args[] = {"--model", TINY_MODEL_DIR, "--backend", "cpu", "--listen", g_ep, "--kv-blocks", "40",
                          "--max-tokens-per-step", "64", NULL};
    g_pid = td_spawn_gemmad(args, "gemmad-beam.log");
    if (g_pid <= 0 || !td_wait_ready(g_ep, g_pid, 120000)) {
        td_dump_log("gemmad-beam.log");
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
        td_dump_log("gemmad-beam.log");
    td_kill_leftovers();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_stop_id),
        cmocka_unit_test(test_no_leaks),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
