/* test_cpu_fp8_engine.c - the CPU engine's --quant fp8 (e4m3 weights with per-tensor scales,
 * dynamic e4m3 activations: the twin of the CUDA engine's FP8 path) against its bf16/f32 self
 * on a model: teacher-forced logits of a prompt stay close (normalized error, top-1 agreement),
 * decode steps run, and the result does not depend on what else is in the batch for a decode
 * row's own sequence when that row is alone in its step.
 *
 * usage: test_cpu_fp8_engine MODEL_DIR */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "worker/engine.h"
#include "tests/test_check.h"

static const char *g_model;


static gm_engine *open_engine_lm(gm_quant q, int lm8)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = g_model;
    o.kv_block_size = 16;
    o.kv_num_blocks = 32;
    o.max_seqs = 4;
    o.max_tokens = 128;
    o.max_context = 256;
    o.backend = GM_BACKEND_CPU;
    o.quant = q;
    o.lm_head_fp8 = lm8;
    gm_engine *e = NULL;
    GOK(gm_engine_create(&o, &e));
    return e;
}

static gm_engine *open_engine(gm_quant q) { return open_engine_lm(q, 0); }

static void test_fp8_vs_bf16(void **state)
{
    (void)state;
    gm_engine *a = open_engine(GM_QUANT_NONE), *b = open_engine(GM_QUANT_FP8);
    int32_t V = a->cfg.vocab_size;
    enum { NP = 24 };
    int32_t prompt[NP], bt[16];
    uint64_t r = 99;
    for (int i = 0; i < NP; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }
    prompt[0] = a->cfg.bos_id;
    for (int i = 0; i < 16; i++)
        bt[i] = i;
    float *la = malloc((size_t)NP * V * 4), *lb = malloc((size_t)NP * V * 4);
    assert_non_null(la);
    assert_non_null(lb);
    int32_t ta[1], tb[1];
    gm_seq_step s = {0, prompt, NP, 0, bt, 16, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
    gm_step_out oa = {ta, la, NP}, ob = {tb, lb, NP};
    GOK(gm_engine_step(a, &s, 1, &oa));
    GOK(gm_engine_step(b, &s, 1, &ob));
    double worst = 0;
    int top1 = 0;
    for (int t = 0; t < NP; t++) {
        double num = 0, den = 0;
        int64_t ia = 0, ib = 0;
        for (int64_t j = 0; j < V; j++) {
            float x = la[(int64_t)t * V + j], y = lb[(int64_t)t * V + j];
            assert_false(isnan(y));
            num += (double)(x - y) * (x - y);
            den += (double)x * x;
            if (x > la[(int64_t)t * V + ia])
                ia = j;
            if (y > lb[(int64_t)t * V + ib])
                ib = j;
        }
        double e = sqrt(num / (den > 0 ? den : 1e-30));
        worst = e > worst ? e : worst;
        top1 += ia == ib;
    }
    printf("cpu fp8 vs bf16: %d rows, worst logits nerr %.3e, top-1 agree %d/%d\n", NP, worst, top1, NP);
    assert_true(worst < 0.15);
    assert_true(top1 >= NP * 3 / 4);
    /* a few decode steps on the FP8 engine */
    int32_t tok = tb[0];
    for (int k = 0; k < 3; k++) {
        gm_seq_step d = {0, &tok, 1, NP + k, bt, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        gm_step_out od = {tb, NULL, 0};
        GOK(gm_engine_step(b, &d, 1, &od));
        assert_true(tb[0] >= 0 && tb[0] < V);
        tok = tb[0];
    }
    free(la), free(lb);
    gm_engine_destroy(&a);
    gm_engine_destroy(&b);
}

/* Teacher-forced logits [NP, V] of prompt p on engine e (slot 0, blocks 0..15). */
static void prompt_logits(gm_engine *e, const int32_t *p, int32_t np, float *l)
{
    int32_t bt[16], tok[1];
    for (int i = 0; i < 16; i++)
        bt[i] = i;
    gm_seq_step s = {0, p, np, 0, bt, 16, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
    gm_step_out o = {tok, l, np};
    GOK(gm_engine_step(e, &s, 1, &o));
}

/* --lm-head fp8: close to the bf16 LM head, with weights bf16 or FP8, and (static row scale) a row's
 * logits do not depend on what else is in the step. */
static void test_lm_head_fp8(void **state)
{
    (void)state;
    enum { NP = 24 };
    gm_engine *a = open_engine_lm(GM_QUANT_NONE, 0), *b = open_engine_lm(GM_QUANT_NONE, 1);
    int32_t V = a->cfg.vocab_size, prompt[NP];
    uint64_t r = 5;
    for (int i = 0; i < NP; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }
    prompt[0] = a->cfg.bos_id;
    float *la = malloc((size_t)NP * V * 4), *lb = malloc((size_t)NP * V * 4), *lc = malloc((size_t)2 * V * 4);
    assert_non_null(la);
    assert_non_null(lb);
    assert_non_null(lc);
    prompt_logits(a, prompt, NP, la);
    prompt_logits(b, prompt, NP, lb);
    double num = 0, den = 0;
    int top1 = 0;
    for (int t = 0; t < NP; t++) {
        int64_t ia = 0, ib = 0;
        for (int64_t j = 0; j < V; j++) {
            float x = la[(int64_t)t * V + j], y = lb[(int64_t)t * V + j];
            assert_false(isnan(y));
            num += (double)(x - y) * (x - y), den += (double)x * x;
            ia = x > la[(int64_t)t * V + ia] ? j : ia;
            ib = y > lb[(int64_t)t * V + ib] ? j : ib;
        }
        top1 += ia == ib;
    }
    double e = sqrt(num / den);
    printf("lm-head fp8 vs bf16: logits nerr %.3e, top-1 agree %d/%d\n", e, top1, NP);
    assert_true(e > 0 && e < 0.1);
    assert_true(top1 >= NP * 3 / 4);
    /* batch invariance: the last row alone (a decode step of slot 0) equals the same row when another
     * sequence shares the step (bf16 weights: the decoder's dynamic FP8 activation scales would depend
     * on the batch; the LM head's static one does not) */
    gm_engine_destroy(&b);
    b = open_engine_lm(GM_QUANT_NONE, 1);
    int32_t bt0[16], bt1[16], tok[2];
    for (int i = 0; i < 16; i++)
        bt0[i] = i, bt1[i] = 16 + i;
    gm_seq_step s0 = {0, prompt, NP - 1, 0, bt0, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    gm_step_out o0 = {tok, NULL, 0};
    GOK(gm_engine_step(b, &s0, 1, &o0));
    gm_seq_step d = {0, &prompt[NP - 1], 1, NP - 1, bt0, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    gm_step_out od = {tok, lc, 1};
    GOK(gm_engine_step(b, &d, 1, &od));
    gm_engine_destroy(&b);
    b = open_engine_lm(GM_QUANT_NONE, 1);
    GOK(gm_engine_step(b, &s0, 1, &o0));
    gm_seq_step two[2] = {{1, prompt + 3, 9, 0, bt1, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY},
                          {0, &prompt[NP - 1], 1, NP - 1, bt0, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY}};
    gm_step_out ot = {tok, lc + V, 2};
    float *l2 = malloc((size_t)2 * V * 4);
    ot.logits = l2;
    GOK(gm_engine_step(b, two, 2, &ot));
    assert_memory_equal(lc, l2 + V, (size_t)V * 4);
    /* with FP8 weights too: a prompt's logits stay close to bf16 */
    gm_engine_destroy(&b);
    b = open_engine_lm(GM_QUANT_FP8, 1);
    prompt_logits(b, prompt, NP, lb);
    num = den = 0;
    for (int64_t i = 0; i < (int64_t)NP * V; i++)
        num += (double)(la[i] - lb[i]) * (la[i] - lb[i]), den += (double)la[i] * la[i];
    printf("fp8 weights + lm-head fp8 vs bf16: logits nerr %.3e\n", sqrt(num / den));
    assert_true(sqrt(num / den) < 0.15);
    free(la), free(lb), free(lc), free(l2);
    gm_engine_destroy(&a);
    gm_engine_destroy(&b);
}

int main(int argc, char **argv)
{
    static char def[4096];
    if (argc > 1) {
        g_model = argv[1];
    } else {
        const char *bin = getenv("GM_BIN");
        snprintf(def, sizeof def, "%s/models/tiny", bin ? bin : ".");
        g_model = def;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fp8_vs_bf16), cmocka_unit_test(test_lm_head_fp8)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
