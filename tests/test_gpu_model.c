/* test_gpu_model.c - the CUDA engine against the CPU engine on a whole model.
 *
 * usage: test_gpu_model MODEL_DIR [MODEL_DIR...]   (default: $GM_BIN/models/tiny)
 * For each model (Gemma 1, 2 or 3): a teacher-forced prompt (logits of every position), chunked prefill,
 * greedy decode steps through the CUDA graphs (one sequence, then three at once, padded to a bucket), a mixed
 * step, and the device-side token feed (-1 tokens), each compared with the CPU engine by normalized
 * logits error. The 40-token prompt and the chunks (starting at 0, inside a 16-token window and past it)
 * cross the tiny Gemma 2/3 checkpoints' sliding window. The GPU keeps bf16 activations (as Hugging Face does), the CPU float32, so the
 * tolerance is that of bf16 rounding through the layers. Exit 77 without a GPU.
 * GM_TEST_QUANT=fp8 runs both engines with FP8 weights and dynamic FP8 activations (the CPU engine
 * is the twin: same codes up to bf16-vs-f32 activation differences); GM_TEST_KV=fp8 gives the CUDA
 * engine an FP8 KV cache (the CPU keeps float32 KV; the tolerance widens to e4m3 rounding);
 * GM_TEST_QUANT=awq: the models are AWQ checkpoints, run by both engines (W4A16 kernels on the GPU).
 * GM_TEST_ATTN=xqa sends every decode row through the XQA kernel (gm_engine_cuda_set_decode_attn), =split
 * through k_attn_decode where it serves the shape. Models with max_position >= 2048 also run long prompts
 * (1,600 tokens in one step, chunks of 700 + 900 + 300, a mixed step with a fresh 1,000-token prompt) under each
 * prefill-attention mode (gm_engine_cuda_set_prefill_attn: the rule, mma.sync, Hopper, Hopper on e4m3 tensor
 * cores with GM_TEST_KV=fp8). GM_TEST_LM=fp8 runs both engines' FP8 LM head (e4m3
 * embedding and rows, static row scale, f32 logits). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "common/model_config.h"
#include "worker/engine.h"
#include "worker/engine_cuda.h"
#include "tests/test_check.h"
#include "tests/test_gpu_util.h"

#define TOL_BF16 6e-2 /* bf16 activations vs float32, a few layers of random weights */
#define TOL_KV8 1.5e-1 /* + e4m3 K/V (3 mantissa bits) */
#define TOL_FP8 1e-1   /* both FP8: activation codes may flip where bf16 and f32 activations differ */
static double TOL_LOGITS = TOL_BF16;
static int g_quant_fp8, g_kv_fp8, g_quant_awq, g_lm_fp8;
static gm_cuda_attn g_attn = GM_CUDA_ATTN_AUTO;

static const char *g_models[16];
static int g_n_models;


static int64_t argmax(const float *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

typedef struct pair {
    gm_engine *cpu, *gpu;
    gm_model_config cfg;
    int32_t V;
} pair;

/* Both engines on one checkpoint: max_context positions, max_tokens rows per step, blocks of 16 tokens. */
static void open_pair_sized(const char *dir, pair *p, int32_t max_context, int32_t max_tokens, int64_t blocks)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = dir;
    o.kv_block_size = 16;
    o.kv_num_blocks = blocks;
    o.max_seqs = 8;
    o.max_tokens = max_tokens;
    o.max_context = max_context;
    o.backend = GM_BACKEND_CPU;
    if (g_quant_fp8)
        o.quant = GM_QUANT_FP8;
    if (g_quant_awq)
        o.quant = GM_QUANT_AWQ;
    o.lm_head_fp8 = g_lm_fp8;
    GOK(gm_engine_create(&o, &p->cpu));
    o.backend = GM_BACKEND_CUDA;
    o.verbose = 1;
    if (g_quant_fp8)
        o.quant = GM_QUANT_FP8;
    if (g_kv_fp8)
        o.kv_dtype = GM_KV_FP8;
    GOK(gm_engine_create(&o, &p->gpu));
    assert_int_equal(gm_engine_cuda_set_decode_attn(p->gpu, (gm_cuda_attn)7), GM_ERR_INVALID_ARG);
    if (g_attn != GM_CUDA_ATTN_AUTO)
        GOK(gm_engine_cuda_set_decode_attn(p->gpu, g_attn));
    p->cfg = p->cpu->cfg;
    p->V = p->cfg.vocab_size;
    assert_int_equal(p->gpu->cfg.vocab_size, p->V);
}

static void open_pair(const char *dir, pair *p) { open_pair_sized(dir, p, 1024, 256, 128); }

static void close_pair(pair *p)
{
    gm_engine_destroy(&p->cpu);
    gm_engine_destroy(&p->gpu);
}

/* Run one step on both engines with logits wanted; return the worst row error. */
static double step_both(pair *p, const gm_seq_step *seqs, int32_t n, int64_t rows, int32_t *tok_cpu, int32_t *tok_gpu,
                        const char *what)
{
    float *lc = malloc((size_t)(rows * p->V) * 4), *lg = malloc((size_t)(rows * p->V) * 4);
    assert_non_null(lc);
    assert_non_null(lg);
    for (int64_t i = 0; i < rows * p->V; i++)
        lg[i] = NAN;
    gm_step_out oc = {tok_cpu, lc, rows}, og = {tok_gpu, lg, rows};
    GOK(gm_engine_step(p->cpu, seqs, n, &oc));
    GOK(gm_engine_step(p->gpu, seqs, n, &og));
    double worst = 0;
    int top1 = 0;
    for (int64_t r = 0; r < rows; r++) {
        double e = nerr(lg + r * p->V, lc + r * p->V, p->V);
        worst = e > worst ? e : worst;
        top1 += argmax(lg + r * p->V, p->V) == argmax(lc + r * p->V, p->V);
    }
    /* the token the step sampled (inside the forward pass, graph-captured for decode) is the argmax
     * of the logits the engine dumped for the same row (a separate LM-head call), for greedy rows
     * whose top two logits are not within rounding of each other */
    int64_t r = 0;
    int n_same = 0, n_checked = 0;
    for (int32_t i = 0; i < n; i++) {
        const gm_seq_step *q = &seqs[i];
        if (q->logits_mode == GM_LOGITS_NONE)
            continue;
        r += q->logits_mode == GM_LOGITS_ALL ? q->n_tokens : 1;
        if (q->sampling.temperature != 0.0f)
            continue;
        const float *row = lg + (r - 1) * p->V;
        int32_t a = argmax(row, p->V);
        float second = -INFINITY;
        for (int32_t j = 0; j < p->V; j++)
            second = j != a && row[j] > second ? row[j] : second;
        if (row[a] - second <= 1e-3f * fabsf(row[a]))
            continue;
        n_checked++;
        n_same += tok_gpu[i] == a;
    }
    printf("  %-40s rows %3lld  worst logits nerr %.2e  top-1 agree %d/%lld  sampled = dumped argmax %d/%d\n", what,
           (long long)rows, worst, top1, (long long)rows, n_same, n_checked);
    assert_int_equal(n_same, n_checked);
    free(lc), free(lg);
    return worst;
}

static void run_model(const char *dir)
{
    pair p;
    open_pair(dir, &p);
    printf("model %s: Gemma %d, window %d, soft-caps %g / %g, QK-norm %d, %d layers, %d:%d heads, head_dim %d, "
           "vocab %d\n", dir, (int)p.cfg.family, p.cfg.sliding_window, (double)p.cfg.attn_softcap, (double)p.cfg.final_softcap,
           p.cfg.qk_norm, p.cfg.num_layers, p.cfg.num_heads, p.cfg.num_kv_heads, p.cfg.head_dim, p.cfg.vocab_size);
    int32_t V = p.V;
    enum { NP = 40 };
    int32_t prompt[NP];
    uint64_t r = 12345;
    for (int i = 0; i < NP; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }
    prompt[0] = p.cfg.bos_id;
    int32_t bt0[64], bt1[64], bt2[64];
    for (int i = 0; i < 64; i++)
        bt0[i] = i, bt1[i] = 127 - i, bt2[i] = 64 + (i * 7) % 60;
    int32_t tc[4], tg[4];

    /* 1. teacher-forced prompt, every position's logits */
    gm_seq_step s = {0, prompt, NP, 0, bt0, 64, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
    assert_true(step_both(&p, &s, 1, NP, tc, tg, "prompt, all positions") < TOL_LOGITS);

    /* 2. greedy decode, one sequence (graph bucket 1), teacher-forced with the CPU's token */
    int32_t pos = NP, tok = tc[0];
    int agree = 0;
    for (int k = 0; k < 6; k++) {
        gm_seq_step d = {0, &tok, 1, pos, bt0, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        char what[64];
        snprintf(what, sizeof what, "decode step %d (graph)", k);
        assert_true(step_both(&p, &d, 1, 1, tc, tg, what) < TOL_LOGITS);
        agree += tc[0] == tg[0];
        tok = tc[0];
        pos++;
    }
    printf("  greedy tokens agree %d/6\n", agree);

    /* 3. chunked prefill of another sequence (slot 1): 10 tokens, 15 at start 10 (inside a 16-token window),
     * then 15 at start 25 (past it) */
    gm_seq_step c1 = {1, prompt, 10, 0, bt1, 64, GM_LOGITS_NONE, GM_SAMPLING_GREEDY};
    GOK(gm_engine_step(p.cpu, &c1, 1, &(gm_step_out){tc, NULL, 0}));
    GOK(gm_engine_step(p.gpu, &c1, 1, &(gm_step_out){tg, NULL, 0}));
    assert_int_equal(tg[0], -1);
    gm_seq_step c15 = {1, prompt + 10, 15, 10, bt1, 64, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
    assert_true(step_both(&p, &c15, 1, 15, tc, tg, "second prefill chunk (start 10)") < TOL_LOGITS);
    gm_seq_step c2 = {1, prompt + 25, 15, 25, bt1, 64, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
    assert_true(step_both(&p, &c2, 1, 15, tc, tg, "third prefill chunk (start 25)") < TOL_LOGITS);

    /* 4. a mixed step: slot 2 prefills 9 tokens while slots 0 and 1 decode (listed after the prefill:
     * the CUDA engine moves decode rows first and must hand results back in the caller's order) */
    int32_t t0 = 5, t1 = 6;
    gm_seq_step mix[3] = {
        {2, prompt + 3, 9, 0, bt2, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY},
        {0, &t0, 1, pos, bt0, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY},
        {1, &t1, 1, NP, bt1, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY},
    };
    assert_true(step_both(&p, mix, 3, 3, tc, tg, "mixed prefill + decode") < TOL_LOGITS);

    /* 5. three sequences decoding together (bucket 4, one padding row), a few steps */
    int32_t toks[3] = {tc[1], tc[2], tc[0]}, poss[3] = {pos + 1, NP + 1, 9};
    for (int k = 0; k < 3; k++) {
        gm_seq_step b3[3];
        const int32_t *bts[3] = {bt0, bt1, bt2};
        for (int i = 0; i < 3; i++)
            b3[i] = (gm_seq_step){i, &toks[i], 1, poss[i], bts[i], 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        char what[64];
        snprintf(what, sizeof what, "batch-3 decode step %d (graph)", k);
        assert_true(step_both(&p, b3, 3, 3, tc, tg, what) < TOL_LOGITS);
        for (int i = 0; i < 3; i++)
            toks[i] = tc[i], poss[i]++;
    }

    /* 6. the device-side feed: slot 0 decodes with -1 (its own last sampled token) and gives
     * the same logits as the CPU fed with the GPU's token */
    {
        gm_seq_step d = {0, &toks[0], 1, poss[0], bt0, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        float *lg = malloc((size_t)V * 4), *lc = malloc((size_t)V * 4);
        gm_step_out og = {tg, lg, 1}, oc = {tc, lc, 1};
        GOK(gm_engine_step(p.gpu, &d, 1, &og));
        GOK(gm_engine_step(p.cpu, &d, 1, &oc));
        int32_t fed = tg[0], minus1 = -1;
        gm_seq_step e1 = {0, &minus1, 1, poss[0] + 1, bt0, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        gm_seq_step e2 = {0, &fed, 1, poss[0] + 1, bt0, 64, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        GOK(gm_engine_step(p.gpu, &e1, 1, &og));
        GOK(gm_engine_step(p.cpu, &e2, 1, &oc));
        double e = nerr(lg, lc, V);
        printf("  %-40s worst logits nerr %.2e (fed token %d)\n", "device-fed token (-1)", e, fed);
        assert_true(e < TOL_LOGITS);
        free(lg), free(lc);
    }

    /* 7. sampled decoding: the GPU's pick from its own logits equals cpu_sample on those logits
     * (checked in test_gpu_ops); here only that it runs and stays in the vocabulary */
    {
        int32_t t = 7;
        int32_t bt3[1] = {100};
        gm_seq_step d = {3, &t, 1, 0, bt3, 1, GM_LOGITS_LAST, (gm_sampling){0.8f, 40, 0.9f, 42}};
        gm_step_out og = {tg, NULL, 0};
        GOK(gm_engine_step(p.gpu, &d, 1, &og));
        assert_true(tg[0] >= 0 && tg[0] < V);
    }
    close_pair(&p);
}

/* ---- long prompts through the prefill attention kernels ---- */

#define LONG_CTX 2048 /* positions per sequence (the models' max_position must reach it) */
#define LONG_SLOTS 4
#define LONG_CASES 4

/* One step of the long cases: the GPU's logits against the CPU's, kept in ref[c] from the first mode's run
 * (the CPU engine runs each case once; the GPU under every mode, rewriting the same KV positions). */
static double long_step(pair *p, const gm_seq_step *seqs, int32_t n, int64_t rows, float **ref, const char *what,
                        const char *mode)
{
    int32_t tok[8];
    float *lg = malloc((size_t)(rows * p->V) * 4);
    assert_non_null(lg);
    for (int64_t i = 0; i < rows * p->V; i++)
        lg[i] = NAN;
    if (!*ref) {
        *ref = malloc((size_t)(rows * p->V) * 4);
        assert_non_null(*ref);
        gm_step_out oc = {tok, *ref, rows};
        GOK(gm_engine_step(p->cpu, seqs, n, &oc));
    }
    gm_step_out og = {tok, lg, rows};
    GOK(gm_engine_step(p->gpu, seqs, n, &og));
    double worst = 0;
    int top1 = 0;
    for (int64_t r = 0; r < rows; r++) {
        double e = nerr(lg + r * p->V, *ref + r * p->V, p->V);
        worst = e > worst ? e : worst;
        top1 += argmax(lg + r * p->V, p->V) == argmax(*ref + r * p->V, p->V);
    }
    printf("  %-7s %-44s rows %4lld  worst logits nerr %.2e  top-1 agree %d/%lld\n", mode, what, (long long)rows,
           worst, top1, (long long)rows);
    free(lg);
    return worst;
}

/* Long prompts against the CPU engine under each prefill-attention mode the device has: the rule (on an sm_90
 * device with head_dim 128 or 256 it must pick the Hopper kernel, on e4m3 tensor cores with an FP8 pool:
 * asserted), the mma.sync kernel, the Hopper kernel forced (FP8 pools on f16 tensor cores) and forced on e4m3
 * tensor cores (FP8 KV; refused with a bf16 pool). Cases, in order (every prompt position's logits):
 *   1. slot 0: a 1,600-token prompt in one step;
 *   2. one step of two prompts: slot 1's first chunk (700 tokens), slot 3's whole 50-token prompt;
 *   3. slot 1's second chunk, 900 tokens at 700 (attending to the first chunk in the paged cache);
 *   4. a mixed step: slot 2's fresh 1,000-token prompt, slot 1's third chunk (300 at 1,600) and two decode rows
 *      (slot 0 at 1,600, slot 3 at 50), listed prompts first (the engine moves decode rows first).
 * Block tables: slot i owns blocks [i*128, i*128+128), in reverse order for odd slots. Models whose
 * max_position is under 2,048 skip it. */
static void run_long(const char *dir)
{
    gm_model_config cfg;
    GOK(gm_config_load_dir(dir, &cfg));
    if (cfg.max_position < LONG_CTX) {
        printf("model %s: long prompts skipped (max_position %d < %d)\n", dir, cfg.max_position, LONG_CTX);
        return;
    }
    printf("model %s: long prompts (head_dim %d, %d/%d heads)\n", dir, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
    pair p;
    const int32_t per = LONG_CTX / 16;
    open_pair_sized(dir, &p, LONG_CTX, LONG_CTX, (int64_t)LONG_SLOTS * per);
    int dev = 0, major = 0, minor = 0;
    assert_int_equal(cudaGetDevice(&dev), cudaSuccess);
    assert_int_equal(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
    assert_int_equal(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), cudaSuccess);
    const int hopper = major == 9 && minor == 0 && (cfg.head_dim == 128 || cfg.head_dim == 256);
    /* the rule, under the default mode: the Hopper kernel, an FP8 pool on e4m3 tensor cores (blocks of 16) */
    assert_int_equal(gm_engine_cuda_prefill_uses_hopper(p.gpu), hopper ? (g_kv_fp8 ? 2 : 1) : 0);
    assert_int_equal(gm_engine_cuda_set_prefill_attn(p.gpu, (gm_cuda_prefill)9), GM_ERR_INVALID_ARG);

    int32_t *bt = malloc((size_t)(LONG_SLOTS * per) * 4), *pr0 = malloc(1900 * 4), *pr2 = malloc(1000 * 4);
    int32_t pr3[50];
    assert_true(bt && pr0 && pr2);
    for (int32_t sl = 0; sl < LONG_SLOTS; sl++)
        for (int32_t i = 0; i < per; i++)
            bt[sl * per + i] = sl * per + (sl & 1 ? per - 1 - i : i);
    uint64_t r = 777;
    int32_t *fill[3] = {pr0, pr2, pr3}, len[3] = {1900, 1000, 50};
    for (int k = 0; k < 3; k++)
        for (int32_t i = 0; i < len[k]; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            fill[k][i] = i == 0 ? p.cfg.bos_id : (int32_t)((r >> 33) % (uint64_t)p.V);
        }
    /* slot 0 and slot 1 read the same 1,900-token text (slot 1 in chunks) */
    const int32_t *bt0 = bt, *bt1 = bt + per, *bt2 = bt + 2 * per, *bt3 = bt + 3 * per;
    int32_t t0 = 11, t3 = 12;
    const gm_seq_step c1[1] = {{0, pr0, 1600, 0, bt0, per, GM_LOGITS_ALL, GM_SAMPLING_GREEDY}};
    const gm_seq_step c2[2] = {{1, pr0, 700, 0, bt1, per, GM_LOGITS_ALL, GM_SAMPLING_GREEDY},
                               {3, pr3, 50, 0, bt3, per, GM_LOGITS_ALL, GM_SAMPLING_GREEDY}};
    const gm_seq_step c3[1] = {{1, pr0 + 700, 900, 700, bt1, per, GM_LOGITS_ALL, GM_SAMPLING_GREEDY}};
    const gm_seq_step c4[4] = {{2, pr2, 1000, 0, bt2, per, GM_LOGITS_ALL, GM_SAMPLING_GREEDY},
                               {1, pr0 + 1600, 300, 1600, bt1, per, GM_LOGITS_ALL, GM_SAMPLING_GREEDY},
                               {0, &t0, 1, 1600, bt0, per, GM_LOGITS_LAST, GM_SAMPLING_GREEDY},
                               {3, &t3, 1, 50, bt3, per, GM_LOGITS_LAST, GM_SAMPLING_GREEDY}};
    const gm_seq_step *cs[LONG_CASES] = {c1, c2, c3, c4};
    const int32_t cn[LONG_CASES] = {1, 2, 1, 4};
    const int64_t crows[LONG_CASES] = {1600, 750, 900, 1302};
    const char *cname[LONG_CASES] = {"1,600-token prompt, one step", "two prompts (700 + 50), one step",
                                     "second chunk: 900 at 700", "mixed: 1,000 + 300 at 1,600 + 2 decode rows"};
    float *ref[LONG_CASES] = {NULL, NULL, NULL, NULL};
    const gm_cuda_prefill modes[4] = {GM_CUDA_PREFILL_AUTO, GM_CUDA_PREFILL_MMA, GM_CUDA_PREFILL_HOPPER,
                                      GM_CUDA_PREFILL_HOPPER_E4M3};
    const char *mname[4] = {"auto", "mma", "hopper", "e4m3"};
    const int expect[4] = {hopper ? (g_kv_fp8 ? 2 : 1) : 0, 0, hopper, hopper && g_kv_fp8 ? 2 : -1};
    for (int mi = 0; mi < 4; mi++) {
        gm_status st = gm_engine_cuda_set_prefill_attn(p.gpu, modes[mi]);
        if (expect[mi] < 0 || (modes[mi] == GM_CUDA_PREFILL_HOPPER && !hopper)) {
            assert_int_equal(st, GM_ERR_UNSUPPORTED); /* a clear refusal where the kernel does not serve */
            printf("  %-7s forced: refused (%s)\n", mname[mi], gm_last_error());
            continue;
        }
        GOK(st);
        assert_int_equal(gm_engine_cuda_prefill_uses_hopper(p.gpu), expect[mi]);
        for (int k = 0; k < LONG_CASES; k++)
            assert_true(long_step(&p, cs[k], cn[k], crows[k], &ref[k], cname[k], mname[mi]) < TOL_LOGITS);
    }
    for (int k = 0; k < LONG_CASES; k++)
        free(ref[k]);
    free(bt), free(pr0), free(pr2);
    close_pair(&p);
}

static void test_long_prefill(void **state)
{
    (void)state;
    for (int i = 0; i < g_n_models; i++)
        run_long(g_models[i]);
}

static void test_models(void **state)
{
    (void)state;
    for (int i = 0; i < g_n_models; i++)
        run_model(g_models[i]);
}

/* More query heads per KV head than the decode attention kernels serve (16): a clear error at create,
 * before anything is allocated. */
static void test_refused_shape(void **state)
{
    (void)state;
    gm_model_config cfg;
    GOK(gm_config_load_dir(g_models[0], &cfg));
    cfg.num_kv_heads = 1, cfg.num_heads = 32;
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_CUDA;
    gm_engine *e = NULL;
    assert_int_equal(gm_engine_cuda_create_random(&o, &cfg, 1, &e), GM_ERR_UNSUPPORTED);
    assert_null(e);
}

int main(int argc, char **argv)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *q = getenv("GM_TEST_QUANT"), *kv = getenv("GM_TEST_KV");
    g_quant_fp8 = q && !strcmp(q, "fp8");
    g_kv_fp8 = kv && !strcmp(kv, "fp8");
    g_quant_awq = q && !strcmp(q, "awq"); /* MODEL_DIRs are AWQ checkpoints; both engines dequantize them */
    const char *lm = getenv("GM_TEST_LM"); /* fp8: both engines run the FP8 LM head */
    g_lm_fp8 = lm && !strcmp(lm, "fp8");
    TOL_LOGITS = g_kv_fp8 ? TOL_KV8 : g_quant_fp8 || g_lm_fp8 ? TOL_FP8 : TOL_BF16;
    const char *at = getenv("GM_TEST_ATTN"); /* xqa | split: the decode attention forced (default: the rule) */
    g_attn = at && !strcmp(at, "xqa")     ? GM_CUDA_ATTN_XQA
             : at && !strcmp(at, "split") ? GM_CUDA_ATTN_SPLIT
                                          : GM_CUDA_ATTN_AUTO;

    printf("CUDA engine: weights %s, KV %s, LM head %s, decode attention %s; tolerance %.2g\n",
           g_quant_fp8   ? "fp8"
           : g_quant_awq ? "awq"
                         : "bf16",
           g_kv_fp8 ? "fp8" : "bf16", g_lm_fp8 ? "fp8" : "bf16",
           g_attn == GM_CUDA_ATTN_XQA     ? "xqa"
           : g_attn == GM_CUDA_ATTN_SPLIT ? "split"
                                          : "auto",
           TOL_LOGITS);
    static char def[4096];
    for (int i = 1; i < argc && g_n_models < 16; i++)
        g_models[g_n_models++] = argv[i];
    if (!g_n_models) {
        const char *bin = getenv("GM_BIN");
        snprintf(def, sizeof def, "%s/models/tiny", bin ? bin : ".");
        g_models[g_n_models++] = def;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_refused_shape), cmocka_unit_test(test_models),
                                       cmocka_unit_test(test_long_prefill)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
