/* test_gpu_sizing.c - the CUDA engine with no sizing options: it takes 0.9 of the memory left after
 * its weights and runtime buffers for KV (ctl/sizing.h), derives max_seqs, max_tokens and
 * max_context, says why, and runs a step with them; a --kv-memory larger than the GPU fails
 * with what would fit; explicit sizes win. Label gpu; exit 77 without a GPU. Needs the whole
 * GPU (RUN_SERIAL). argv[1]: the tiny model directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "test_check.h"
#include "worker/engine.h"

static const char *g_model;

static void cuda_opts(gm_engine_opts *o)
{
    gm_engine_opts_init(o);
    o->backend = GM_BACKEND_CUDA;
    o->model_dir = g_model;
    o->verbose = 1;
}

/* A prefill of 5 tokens then one run-ahead decode in slot max_seqs - 1. */
static void run_two_steps(gm_engine *e)
{
    int32_t prompt[5] = {2, 17, 33, 5, 9}, prev = GM_TOKEN_PREVIOUS, table[1] = {(int32_t)e->kv_num_blocks - 1};
    int32_t slot = e->opts.max_seqs - 1, tok = -1;
    gm_seq_step s = {slot, prompt, 5, 0, table, 1, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    gm_step_out out = {&tok, NULL, 0};
    GOK(gm_engine_step(e, &s, 1, &out));
    assert_true(tok >= 0 && tok < e->cfg.vocab_size);
    s.tokens = &prev, s.n_tokens = 1, s.start_pos = 5;
    GOK(gm_engine_step(e, &s, 1, &out));
    assert_true(tok >= 0 && tok < e->cfg.vocab_size);
}

static void test_defaults(void **state)
{
    (void)state;
    size_t free0 = 0, total = 0;
    assert_int_equal(cudaMemGetInfo(&free0, &total), cudaSuccess);
    gm_engine_opts o;
    cuda_opts(&o);
    gm_engine *e = NULL;
    GOK(gm_engine_create(&o, &e));
    const gm_sizing *z = &e->sizing;
    size_t free1 = 0;
    assert_int_equal(cudaMemGetInfo(&free1, &total), cudaSuccess);
    printf("  KV pool: %lld blocks (%.2f GiB): %s\n  max_seqs = %d: %s\n  max_tokens = %d: %s\n"
           "  max_context = %d: %s\n  free before %.2f GiB, after %.2f GiB of %.2f GiB\n",
           (long long)z->kv_num_blocks, (double)z->kv_bytes / (1 << 30), z->why_kv, z->max_seqs, z->why_seqs,
           z->max_tokens, z->why_tokens, z->max_context, z->why_context, (double)free0 / (1 << 30),
           (double)free1 / (1 << 30), (double)total / (1 << 30));
    assert_int_equal(e->kv_num_blocks, z->kv_num_blocks);
    /* the tiny model's weights are small: the pool is most of the free memory, about a tenth stays free */
    assert_true((double)z->kv_bytes > 0.8 * 0.9 * (double)free0);
    assert_true(free1 < free0 / 5);
    assert_non_null(strstr(z->why_kv, "0.90 of the"));
    assert_int_equal(z->max_seqs, 1024);
    assert_int_equal(z->max_tokens, 8192);
    assert_int_equal(z->max_context, e->cfg.max_position);
    assert_int_equal(e->opts.max_seqs, z->max_seqs);
    assert_int_equal(e->opts.max_tokens, z->max_tokens);
    assert_int_equal(e->opts.max_context, z->max_context);
    run_two_steps(e);
    gm_engine_destroy(&e);
}

static void test_too_much_kv(void **state)
{
    (void)state;
    size_t fr = 0, total = 0;
    assert_int_equal(cudaMemGetInfo(&fr, &total), cudaSuccess);
    gm_engine_opts o;
    cuda_opts(&o);
    o.kv_mem_bytes = (int64_t)total * 2;
    gm_engine *e = NULL;
    assert_int_equal(gm_engine_create(&o, &e), GM_ERR_CAPACITY);
    assert_null(e);
    printf("  error: %s\n", gm_last_error());
    assert_non_null(strstr(gm_last_error(), "does not fit"));
    assert_non_null(strstr(gm_last_error(), "would fit"));
}

static void test_explicit(void **state)
{
    (void)state;
    gm_engine_opts o;
    cuda_opts(&o);
    o.kv_mem_bytes = 256ll << 20, o.max_seqs = 24, o.max_tokens = 300, o.max_context = 512;
    gm_engine *e = NULL;
    GOK(gm_engine_create(&o, &e));
    assert_int_equal(e->opts.max_seqs, 24);
    assert_int_equal(e->opts.max_tokens, 300);
    assert_int_equal(e->opts.max_context, 512);
    assert_int_equal(e->sizing.kv_bytes, 256ll << 20);
    assert_non_null(strstr(e->sizing.why_seqs, "set explicitly"));
    run_two_steps(e);
    gm_engine_destroy(&e);
}

int main(int argc, char **argv)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: test_gpu_sizing MODEL_DIR\n");
        return 2;
    }
    g_model = argv[1];
    gm_log_init("test_gpu_sizing", GM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_too_much_kv),
        cmocka_unit_test(test_explicit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
