/* test_gpu_kv_copy.c - copy-on-write of shared KV blocks on the GPU.
 *
 * usage: test_gpu_kv_copy [MODEL_DIR]   (default: $GM_BIN/models/tiny)
 * k_kv_copy_blocks against its CPU twin cpu_kv_copy_blocks, byte for byte, on bf16-sized and
 * e4m3-sized blocks (every byte of the pool compared: what is not copied must not change); then the
 * CUDA engine (bf16 and FP8 KV): a sequence decoding from a copy of its partial block gets the logits
 * it gets from the original, bit for bit (both through the batch-1 decode graph: the same kernels read
 * the same bytes),
 * and a refused step runs none of its copies. Exit 77 without a GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "kernels/cpu/kv_copy.h"
#include "kernels/cuda/kv_copy.cuh"
#include "worker/engine.h"

static char g_model[1024];

static void twin(int64_t planes, int64_t blocks, int64_t block_bytes, const int32_t *pairs, int32_t n)
{
    int64_t plane = blocks * block_bytes, total = planes * plane;
    uint8_t *h = malloc((size_t)total), *want = malloc((size_t)total), *got = malloc((size_t)total);
    uint64_t r = 12345;
    for (int64_t i = 0; i < total; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (uint8_t)(r >> 56);
    }
    memcpy(want, h, (size_t)total);
    cpu_kv_copy_blocks(want, planes, plane, block_bytes, pairs, n);
    void *d = NULL;
    int32_t *dp = NULL;
    assert_int_equal(cudaMalloc(&d, (size_t)total), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&dp, (size_t)n * 8 + 8), cudaSuccess);
    assert_int_equal(cudaMemcpy(d, h, (size_t)total, cudaMemcpyHostToDevice), cudaSuccess);
    assert_int_equal(cudaMemcpy(dp, pairs, (size_t)n * 8, cudaMemcpyHostToDevice), cudaSuccess);
    assert_int_equal(k_kv_copy_blocks(d, planes, plane, block_bytes, dp, n, 0), GM_OK);
    assert_int_equal(cudaMemcpy(got, d, (size_t)total, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_memory_equal(got, want, (size_t)total);
    assert_memory_not_equal(want, h, (size_t)total);
    cudaFree(d);
    cudaFree(dp);
    free(h), free(want), free(got);
}

static void test_kernel_twin(void **state)
{
    (void)state;
    int32_t pairs[] = {3, 0, 3, 7, 5, 6, 1, 2};
    twin(2 * 18, 8, 1 * 16 * 256 * 2, pairs, 4); /* gemma-2b, bf16 KV: [1 kv head, 16 tokens, 256] */
    twin(2 * 4, 8, 2 * 16 * 256 * 1, pairs, 4);  /* e4m3 KV, two heads */
    twin(2, 8, 16, pairs, 1);
    assert_int_equal(k_kv_copy_blocks(NULL, 2, 24, 8, NULL, 1, 0), GM_ERR_UNSUPPORTED); /* not 16-byte blocks */
}

static gm_engine *make_cuda(int kv8)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_CUDA;
    o.model_dir = g_model;
    o.kv_block_size = 16;
    o.kv_num_blocks = 64;
    o.max_seqs = 4;
    o.max_tokens = 128;
    o.max_context = 256;
    o.kv_dtype = kv8 ? GM_KV_FP8 : GM_KV_AUTO;
    gm_engine *e = NULL;
    gm_status st = gm_engine_create(&o, &e);
    if (st)
        fprintf(stderr, "engine: %s: %s\n", gm_status_str(st), gm_last_error());
    assert_int_equal(st, GM_OK);
    return e;
}

static void engine_cow(int kv8)
{
    gm_engine *e = make_cuda(kv8);
    int64_t V = e->cfg.vocab_size;
    int32_t ids[40], bt_a[16], bt_b[16], bt_c[16], t;
    for (int i = 0; i < 40; i++)
        ids[i] = i == 0 ? 2 : 3 + (i * 977 + 13) % (int32_t)(V - 3);
    for (int i = 0; i < 16; i++)
        bt_a[i] = bt_b[i] = bt_c[i] = i;
    bt_b[2] = 40; /* the copy of block 2 (positions 32..) */
    bt_c[2] = 41; /* never written */
    float *orig = malloc((size_t)V * 4), *copied = malloc((size_t)V * 4), *other = malloc((size_t)V * 4);
    gm_seq_step q = {0, ids, 37, 0, bt_a, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    gm_step_out out = {&t, NULL, 0};
    assert_int_equal(gm_engine_step(e, &q, 1, &out), GM_OK);
    gm_seq_step qa = {0, ids + 37, 1, 37, bt_a, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    assert_int_equal(gm_engine_step(e, &qa, 1, &out), GM_OK); /* the batch-1 decode graph is captured here */
    gm_block_copy cp = {2, 40};
    gm_seq_step qb = {1, ids + 37, 1, 37, bt_b, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    out.logits = copied, out.logits_rows_cap = 1;
    assert_int_equal(gm_engine_step_copy(e, &cp, 1, &qb, 1, &out), GM_OK);
    out.logits = orig; /* the same decode again: a replay, like the one from the copy */
    assert_int_equal(gm_engine_step(e, &qa, 1, &out), GM_OK);
    assert_memory_equal(orig, copied, (size_t)V * 4);
    /* a refused step (token outside the vocabulary) runs none of its copies */
    int32_t bad = (int32_t)V;
    cp.dst = 41;
    gm_seq_step qc = {2, &bad, 1, 37, bt_c, 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    assert_int_equal(gm_engine_step_copy(e, &cp, 1, &qc, 1, &out), GM_ERR_INVALID_ARG);
    qc.tokens = ids + 37;
    out.logits = other;
    assert_int_equal(gm_engine_step(e, &qc, 1, &out), GM_OK);
    assert_memory_not_equal(orig, other, (size_t)V * 4);
    free(orig), free(copied), free(other);
    gm_engine_destroy(&e);
}

static void test_engine_cow(void **state)
{
    (void)state;
    engine_cow(0);
    engine_cow(1);
}

int main(int argc, char **argv)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *bin = getenv("GM_BIN");
    snprintf(g_model, sizeof g_model, "%s", argc > 1 ? argv[1] : "");
    if (!g_model[0])
        snprintf(g_model, sizeof g_model, "%s/models/tiny", bin ? bin : "build");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_twin),
        cmocka_unit_test(test_engine_cow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
