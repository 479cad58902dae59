/* test_engine_sample.c - the CPU engine's sampling extras end to end in the engine (logprobs, penalties
 * across chunked prompts, run-ahead, preemption and slot reuse, min_tokens), each sampled row checked
 * against the CPU twins on the engine's own raw logits (tests/sample_scenario.h); the null backend's
 * log-probabilities. argv[1]: the model (CTest runs it on the tiny Gemma 1 and Gemma 2 models: the
 * latter's logits are soft-capped before the log-probabilities). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/sample_scenario.h"
#include "tests/test_check.h"

static char g_model[1024];

static void test_scenario(void **state)
{
    (void)state;
    gm_engine *e = sc_engine(GM_BACKEND_CPU, g_model);
    sc_run_all(e, (sc_tol){1e-6, 0.0f});
    gm_engine_destroy(&e);
}

/* The null backend draws uniformly from ids 3..vocab-1 and says so. */
static void test_null_logprobs(void **state)
{
    (void)state;
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_NULL;
    o.kv_block_size = 4;
    o.kv_num_blocks = 64;
    gm_engine *e = NULL;
    GOK(gm_engine_create(&o, &e));
    int32_t ids[3] = {2, 10, 11}, bt[4] = {0, 1, 2, 3}, tok[2];
    gm_sampling s = GM_SAMPLING_GREEDY;
    s.logprobs = 1, s.top_logprobs = 4;
    gm_seq_step q[2] = {{0, ids, 3, 0, bt, 4, GM_LOGITS_LAST, s, NULL},
                        {1, ids, 3, 0, bt, 4, GM_LOGITS_LAST, GM_SAMPLING_GREEDY, NULL}};
    gm_token_logprobs lp[2] = {{0}, {.n_top = -1}};
    gm_step_out out = {tok, NULL, 0, lp};
    GOK(gm_engine_step(e, q, 2, &out));
    float want = -logf((float)(e->cfg.vocab_size - 3));
    assert_true(fabsf(lp[0].logprob - want) < 1e-6f);
    assert_int_equal(lp[0].n_top, 4);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(lp[0].top_ids[k], 3 + k);
        assert_true(lp[0].top_logprobs[k] == lp[0].logprob);
    }
    assert_int_equal(lp[1].n_top, -1); /* the entry that did not ask is untouched */
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
        cmocka_unit_test(test_scenario),
        cmocka_unit_test(test_null_logprobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
