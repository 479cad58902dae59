/* test_engine_spec.c - speculative decoding's verify entries (GM_LOGITS_VERIFY, ctl/step.h) in the CPU and
 * null engines, on the tiny model (argv[1]):
 *   - every row of a verify entry samples exactly what plain decoding samples there, greedy and sampled
 *     (temperature, top-k, top-p, min_tokens), with a draft rejected early, late and not at all, and the
 *     rejected positions' KV overwritten by the next entry;
 *   - the output distribution is the target's: for one draft token x, over many seeds, the token the
 *     coordinator keeps at that position (x when row 0 samples x, else row 0's sample) is distributed as
 *     the model's temperature / top-k distribution there (chi-square, a false failure once in ~10^7 runs),
 *     and x is accepted with probability p(x);
 *   - the null engine's verify rows equal its plain draws. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/spec_engine_check.h"

static char g_model[1024];

static gm_engine *make_engine(gm_backend b)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = b;
    o.model_dir = b == GM_BACKEND_NULL ? NULL : g_model;
    o.kv_block_size = SPC_BS;
    o.kv_num_blocks = 2 * SPC_SLOT_BLOCKS * 16;
    o.max_seqs = 16;
    o.max_tokens = 256;
    o.max_context = SPC_SLOT_BLOCKS * SPC_BS;
    gm_engine *e = NULL;
    GOK(gm_engine_create(&o, &e));
    return e;
}

static void test_verify_matches_plain(void **state)
{
    (void)state;
    gm_engine *e = make_engine(GM_BACKEND_CPU);
    gm_sampling greedy = GM_SAMPLING_GREEDY;
    gm_sampling warm = {0.9f, 0, 1.0f, 42};
    gm_sampling nucleus = {1.3f, 40, 0.8f, 7};
    gm_sampling hot = {2.0f, 0, 1.0f, 5};
    gm_sampling *all[] = {&greedy, &warm, &nucleus, &hot};
    for (int c = 0; c < 4; c++)
        for (int32_t k = 1; k <= 8; k += 3)
            for (int32_t w = 0; w < k; w += k > 1 ? k - 1 : 1)
                assert_int_equal(spc_verify_vs_plain(e, *all[c], k, w), 0);
    gm_engine_destroy(&e);
}

/* min_tokens is judged per row: a stop set masked before the limit, not after. */
static void test_verify_min_tokens(void **state)
{
    (void)state;
    gm_engine *e = make_engine(GM_BACKEND_CPU);
    /* the greedy continuation's own tokens as stop ids: masking them changes what is sampled */
    gm_sampling s = GM_SAMPLING_GREEDY;
    int32_t bt[SPC_SLOT_BLOCKS];
    for (int32_t i = 0; i < SPC_SLOT_BLOCKS; i++)
        bt[i] = i;
    int32_t p[SPC_PROMPT + 8], tok, vt[16];
    for (int32_t i = 0; i < SPC_PROMPT; i++)
        p[i] = i == 0 ? 2 : 3 + (int32_t)((i * 7919) % (e->cfg.vocab_size - 3));
    gm_seq_step q = spc_entry(0, p, SPC_PROMPT, 0, bt, GM_LOGITS_LAST, s);
    spc_run(e, &q, &tok, NULL, 0);
    gm_stop_set stops = {1, {tok}};
    s.n_prompt = SPC_PROMPT;
    s.min_tokens = 3;
    for (int pass = 0; pass < 2; pass++) { /* the reference one token at a time, then one verify entry */
        int32_t ref[6];
        q = spc_entry(1, p, SPC_PROMPT, 0, bt + 0, GM_LOGITS_LAST, s);
        q.block_table = bt; /* slot 1 reuses slot 0's blocks: each run starts at position 0 */
        q.stops = &stops;
        spc_run(e, &q, &ref[0], NULL, 0);
        for (int32_t g = 1; g < 6; g++) {
            p[SPC_PROMPT + g - 1] = ref[g - 1];
            q = spc_entry(1, p + SPC_PROMPT + g - 1, 1, SPC_PROMPT + g - 1, bt, GM_LOGITS_LAST, s);
            q.stops = &stops;
            spc_run(e, &q, &ref[g], NULL, 0);
        }
        assert_int_not_equal(ref[0], stops.ids[0]); /* masked: fewer than 3 outputs */
        /* verify [last prompt token, ref[0..5)] from position SPC_PROMPT - 1 */
        q = spc_entry(1, p, SPC_PROMPT - 1, 0, bt, GM_LOGITS_NONE, s);
        spc_run(e, &q, &tok, NULL, 0);
        int32_t in[6] = {p[SPC_PROMPT - 1], ref[0], ref[1], ref[2], ref[3], ref[4]};
        q = spc_entry(1, in, 6, SPC_PROMPT - 1, bt, GM_LOGITS_VERIFY, s);
        q.stops = &stops;
        spc_run(e, &q, &tok, vt, 16);
        for (int32_t j = 0; j < 6; j++)
            assert_int_equal(vt[j], ref[j]);
        s.temperature = 1.0f, s.seed = 99; /* then sampled */
    }
    gm_engine_destroy(&e);
}

/* softmax(l / T) over the top_k largest logits (ties: lower id), in double: probs [V], 0 outside. */
static void target_probs(const float *l, int32_t V, float T, int32_t top_k, double *probs)
{
    int32_t *ids = malloc((size_t)V * sizeof *ids);
    for (int32_t i = 0; i < V; i++)
        ids[i] = i;
    for (int32_t a = 0; a < top_k; a++) { /* selection of the top_k */
        int32_t b = a;
        for (int32_t i = a + 1; i < V; i++)
            if (l[ids[i]] > l[ids[b]] || (l[ids[i]] == l[ids[b]] && ids[i] < ids[b]))
                b = i;
        int32_t t = ids[a];
        ids[a] = ids[b];
        ids[b] = t;
    }
    double mx = l[ids[0]], sum = 0;
    for (int32_t i = 0; i < V; i++)
        probs[i] = 0;
    for (int32_t a = 0; a < top_k; a++)
        sum += probs[ids[a]] = exp(((double)l[ids[a]] - mx) / T);
    for (int32_t a = 0; a < top_k; a++)
        probs[ids[a]] /= sum;
    free(ids);
}

#define CHI_N 4000 /* seeds */
#define CHI_K 6    /* top_k: the categories */

static void test_verify_distribution(void **state)
{
    (void)state;
    gm_engine *e = make_engine(GM_BACKEND_CPU);
    int32_t V = e->cfg.vocab_size;
    int32_t bt[16][SPC_SLOT_BLOCKS];
    for (int32_t s = 0; s < 16; s++)
        for (int32_t i = 0; i < SPC_SLOT_BLOCKS; i++)
            bt[s][i] = s * SPC_SLOT_BLOCKS + i;
    int32_t p[SPC_PROMPT];
    for (int32_t i = 0; i < SPC_PROMPT; i++)
        p[i] = i == 0 ? 2 : 3 + (int32_t)((i * 104729) % (V - 3));
    /* the model's raw logits at position SPC_PROMPT */
    float *lg = malloc((size_t)V * sizeof *lg);
    int32_t tok;
    gm_sampling s = {1.6f, CHI_K, 1.0f, 0};
    gm_seq_step q = spc_entry(0, p, SPC_PROMPT, 0, bt[0], GM_LOGITS_LAST, s);
    gm_step_out o = {&tok, lg, 1};
    GOK(gm_engine_step(e, &q, 1, &o));
    double *pr = malloc((size_t)V * sizeof *pr);
    target_probs(lg, V, s.temperature, CHI_K, pr);
    /* the draft: the second most likely token (accepted often, rejected often) */
    int32_t first = 0, x = -1;
    for (int32_t i = 1; i < V; i++)
        first = pr[i] > pr[first] ? i : first;
    for (int32_t i = 0; i < V; i++)
        if (i != first && (x < 0 || pr[i] > pr[x]))
            x = i;
    /* every slot holds the prompt but its last token; then CHI_N verify entries [p_last, x, x], 16 a step */
    gm_seq_step qs[16];
    int32_t toks[16], vt[16 * 3];
    for (int32_t sl = 0; sl < 16; sl++)
        qs[sl] = spc_entry(sl, p, SPC_PROMPT - 1, 0, bt[sl], GM_LOGITS_NONE, s);
    gm_step_out os = {toks, NULL, 0, NULL, vt, 48};
    GOK(gm_engine_step(e, qs, 16, &os));
    int32_t in[3] = {p[SPC_PROMPT - 1], x, x};
    int64_t *count = calloc((size_t)V, sizeof *count), accepted = 0;
    for (int32_t n = 0; n < CHI_N; n += 16) {
        for (int32_t sl = 0; sl < 16; sl++) {
            s.seed = 1000 + (uint64_t)(n + sl);
            qs[sl] = spc_entry(sl, in, 3, SPC_PROMPT - 1, bt[sl], GM_LOGITS_VERIFY, s);
        }
        GOK(gm_engine_step(e, qs, 16, &os));
        for (int32_t sl = 0; sl < 16; sl++) {
            int32_t kept = vt[3 * sl]; /* the coordinator keeps x if row 0 is x, else row 0: row 0 either way */
            assert_true(kept >= 0 && kept < V);
            count[kept]++;
            accepted += kept == x;
        }
    }
    double chi = 0;
    int32_t cats = 0;
    for (int32_t i = 0; i < V; i++) {
        if (pr[i] == 0) {
            assert_int_equal(count[i], 0); /* outside the top-k: never */
            continue;
        }
        double want = pr[i] * CHI_N;
        chi += (count[i] - want) * (count[i] - want) / want;
        cats++;
    }
    assert_int_equal(cats, CHI_K);
    /* 5 degrees of freedom: P(chi2 > 45) ~ 1.5e-8 */
    if (chi > 45.0)
        fail_msg("chi-square %.1f over %d categories: the kept tokens are not the target's distribution", chi, cats);
    /* acceptance of x: binomial(CHI_N, p(x)), within 6 sigma */
    double px = pr[x], sd = sqrt(CHI_N * px * (1 - px));
    assert_true(px > 0.05 && px < 0.95);
    if (fabs((double)accepted - CHI_N * px) > 6 * sd)
        fail_msg("draft accepted %lld times of %d, expected %.1f (p = %.4f)", (long long)accepted, CHI_N, CHI_N * px,
                 px);
    free(count), free(pr), free(lg);
    gm_engine_destroy(&e);
}

/* The null backend: row j of a verify entry is its plain draw for that position. */
static void test_null_verify(void **state)
{
    (void)state;
    gm_engine *e = make_engine(GM_BACKEND_NULL);
    int32_t bt[SPC_SLOT_BLOCKS], p[4] = {2, 10, 11, 12}, tok, vt[4], ref;
    for (int32_t i = 0; i < SPC_SLOT_BLOCKS; i++)
        bt[i] = i;
    gm_sampling s = {1.0f, 0, 1.0f, 3};
    gm_seq_step q = spc_entry(0, p, 4, 0, bt, GM_LOGITS_VERIFY, s);
    spc_run(e, &q, &tok, vt, 4);
    for (int32_t j = 0; j < 4; j++) {
        q = spc_entry(1, p, j + 1, 0, bt, GM_LOGITS_LAST, s);
        spc_run(e, &q, &ref, NULL, 0);
        assert_int_equal(vt[j], ref);
    }
    assert_int_equal(tok, vt[3]);
    /* too small an output for the verify samples: refused before anything runs */
    gm_step_out o = {&tok, NULL, 0, NULL, vt, 3};
    assert_int_equal(gm_engine_step(e, &q, 1, &o), GM_OK); /* a LAST entry needs none */
    q = spc_entry(0, p, 4, 0, bt, GM_LOGITS_VERIFY, s);
    assert_int_equal(gm_engine_step(e, &q, 1, &o), GM_ERR_INVALID_ARG);
    gm_engine_destroy(&e);
}

int main(int argc, char **argv)
{
    const char *bin = getenv("GM_BIN");
    if (argc > 1)
        snprintf(g_model, sizeof g_model, "%s", argv[1]);
    else
        snprintf(g_model, sizeof g_model, "%s/models/tiny", bin ? bin : "build");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_matches_plain),
        cmocka_unit_test(test_verify_min_tokens),
        cmocka_unit_test(test_verify_distribution),
        cmocka_unit_test(test_null_verify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
