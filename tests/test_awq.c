/* test_awq.c - INT4 AWQ on the CPU: AutoAWQ packing and dequantization against hand-made
 * words, the quantizer's rules, the dequantizing matmul, quantization configs, and on the
 * tiny model: quantize -> write -> load round trip and AWQ's per-layer error <= RTN's.
 * With a gemma-generate path also: the CPU engine generates from the AWQ model and its
 * perplexity is finite and close to the float model's.
 * Usage: test_awq [QUANTIZE_BIN TINY_DIR CALIB_TEXT WORKDIR [GENERATE_BIN]] */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/tokenizer.h"
#include "kernels/cpu/gemm_awq.h"
#include "worker/awq.h"
#include "worker/engine_cpu.h"

static const char *g_quant, *g_tiny, *g_calib, *g_work, *g_gen;

#define GROUP 32         /* tiny: hidden 128, q width 128, intermediate 512 */
#define CAL_TOKENS 1024  /* calibration tokens (4 sequences of 256) */
#define CAL_SEQ 256

static uint64_t g_rng = 0x1234567;
static float frand(void) /* uniform [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static int run(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    if (r == -1 || !WIFEXITED(r))
        return -1;
    return WEXITSTATUS(r);
}

/* ---- packing ---- */

static void test_pack_order(void **state)
{
    (void)state;
    /* nibble i holds i: logical column n reads nibble REV[n], so the logical values are REV */
    uint8_t v[8];
    cpu_awq_unpack8(0x76543210u, v);
    const uint8_t rev[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    assert_memory_equal(v, rev, 8);
    /* logical columns 0..7 hold 0..7: nibble i holds ORDER[i] */
    const uint8_t seq[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(cpu_awq_pack8(seq), 0x75316420u);
    /* hand-made word: logical column n holds 15 - n */
    const uint8_t desc[8] = {15, 14, 13, 12, 11, 10, 9, 8};
    uint32_t w = cpu_awq_pack8(desc);
    assert_int_equal(w, 0x8ace9bdfu); /* nibbles (low first) = desc[ORDER[i]] = f d b 9 e c a 8 */
    int32_t row[2] = {(int32_t)w, (int32_t)0x76543210u};
    for (int n = 0; n < 8; n++) {
        assert_int_equal(cpu_awq_nibble(row, n), 15 - n);
        assert_int_equal(cpu_awq_nibble(row, 8 + n), rev[n]);
    }
    for (uint32_t t = 0; t < 1000; t++) { /* pack/unpack are inverse */
        uint32_t x = t * 2654435761u;
        cpu_awq_unpack8(x, v);
        assert_int_equal(cpu_awq_pack8(v), x);
    }
}

/* A hand-built AutoAWQ tensor: K 4, N 16, group 2. */
static void test_dequant_known(void **state)
{
    (void)state;
    const int32_t qweight[4 * 2] = {
        (int32_t)0x76543210u, (int32_t)0xffffffffu, /* k 0: logical REV | all 15 */
        (int32_t)0x00000000u, (int32_t)0x8ace9bdfu, /* k 1: all 0 | logical 15 - n */
        (int32_t)0x11111111u, (int32_t)0x22222222u, /* k 2 */
        (int32_t)0x0000000fu, (int32_t)0xf0000000u, /* k 3: nibble 0 = col 0 | nibble 7 = col 7 */
    };
    const int32_t qzeros[2 * 2] = {(int32_t)0x11111111u, (int32_t)0x00000008u, /* group 0: z 1 | z 8 at col 0 */
                                   (int32_t)0x00000000u, (int32_t)0x33333333u};
    uint16_t scales[2 * 16];
    for (int n = 0; n < 16; n++) {
        scales[n] = 0x3800;      /* 0.5 */
        scales[16 + n] = 0x4000; /* 2.0 */
    }
    scales[9] = 0x3c00; /* group 0, column 9: 1.0 */
    cpu_awq_w w = {qweight, qzeros, scales, 4, 16, 2, 16, 2};
    float wt[16 * 4]; /* [N, K] */
    cpu_awq_dequant(&w, 0, 16, wt);
    /* expected W[k][n], worked by hand from the nibble order of kernels/cpu/gemm_awq.h */
    const float expect[4][16] = {
        {-0.5f, 1.5f, 0.0f, 2.0f, 0.5f, 2.5f, 1.0f, 3.0f, 3.5f, 15.0f, 7.5f, 7.5f, 7.5f, 7.5f, 7.5f, 7.5f},
        {-0.5f, -0.5f, -0.5f, -0.5f, -0.5f, -0.5f, -0.5f, -0.5f, 3.5f, 14.0f, 6.5f, 6.0f, 5.5f, 5.0f, 4.5f, 4.0f},
        {2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f, -2.0f, -2.0f, -2.0f, -2.0f, -2.0f, -2.0f, -2.0f, -2.0f},
        {30.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, -6.0f, -6.0f, -6.0f, -6.0f, -6.0f, -6.0f, -6.0f, 24.0f},
    };
    for (int k = 0; k < 4; k++)
        for (int n = 0; n < 16; n++)
            assert_float_equal(wt[n * 4 + k], expect[k][n], 0.0f);
    /* a column slice starting at 8 gives the same numbers */
    cpu_awq_dequant(&w, 8, 8, wt);
    for (int k = 0; k < 4; k++)
        for (int n = 0; n < 8; n++)
            assert_float_equal(wt[n * 4 + k], expect[k][8 + n], 0.0f);
}

static void test_quant_rules(void **state)
{
    (void)state;
    const float w[4] = {-1.0f, 0.0f, 0.5f, 2.0f};
    uint8_t q[4], z;
    uint16_t s16 = cpu_awq_quant_group(w, 4, 1, -1.0f, 2.0f, q, &z);
    assert_int_equal(s16, gm_f32_to_f16(0.2f)); /* (2 - -1) / 15 in fp16 */
    assert_int_equal(z, 5);
    const uint8_t eq[4] = {0, 5, 8, 15};
    assert_memory_equal(q, eq, 4);
    /* an all-positive group: zero 0, values above 15 steps saturate */
    const float p[3] = {1.0f, 2.0f, 3.0f};
    s16 = cpu_awq_quant_group(p, 3, 1, 1.0f, 3.0f, q, &z);
    assert_int_equal(z, 0);
    assert_int_equal(q[2], 15);
    /* a constant group: range clamped to 1e-5 */
    const float c[2] = {0.0f, 0.0f};
    s16 = cpu_awq_quant_group(c, 2, 1, 0.0f, 0.0f, q, &z);
    assert_true(gm_f16_to_f32(s16) > 0.0f);
    assert_int_equal(q[0], z);
}

/* quantize -> dequantize: every element within half a step of the original. */
static void test_quantize_roundtrip(void **state)
{
    (void)state;
    enum { N = 24, K = 96, G = 32 };
    float W[N * K], wt[N * K];
    for (int i = 0; i < N * K; i++)
        W[i] = frand() * 0.05f;
    int32_t qw[K * N / 8], qz[(K / G) * N / 8];
    uint16_t sc[(K / G) * N];
    cpu_awq_quantize(W, N, K, K, G, NULL, qw, qz, sc);
    cpu_awq_w w = {qw, qz, sc, K, N, N / 8, N, G};
    cpu_awq_dequant(&w, 0, N, wt);
    float fq[N * K];
    cpu_awq_fake_quant(W, N, K, K, G, NULL, fq);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            float s = gm_f16_to_f32(sc[(k / G) * N + n]);
            assert_true(fabsf(wt[n * K + k] - W[n * K + k]) <= 0.52f * s); /* half a step; fp16 s may cost 1/64 */
            assert_float_equal(fq[n * K + k], wt[n * K + k], 0.0f);
        }
    /* clip ratios shrink the range: a clipped group's scale is smaller */
    float ratio[N * (K / G)];
    for (int i = 0; i < N * (K / G); i++)
        ratio[i] = 0.8f;
    uint16_t sc2[(K / G) * N];
    cpu_awq_quantize(W, N, K, K, G, ratio, qw, qz, sc2);
    for (int i = 0; i < (K / G) * N; i++)
        assert_true(gm_f16_to_f32(sc2[i]) < gm_f16_to_f32(sc[i]));
}

/* The clip search never does worse than ratio 1 on its own metric, and finds clipping when an
 * outlier makes the range wide while the inputs never touch it. */
static void test_clip_search(void **state)
{
    (void)state;
    enum { N = 8, K = 64, G = 32, T = 200 };
    float W[N * K], x[T * K];
    for (int i = 0; i < N * K; i++)
        W[i] = frand() * 0.05f;
    for (int n = 0; n < N; n++)
        W[n * K + 5] = 0.6f; /* outlier in column 5 of group 0 */
    for (int i = 0; i < T * K; i++)
        x[i] = frand();
    for (int t = 0; t < T; t++)
        x[t * K + 5] = 0.0f; /* which no input uses */
    double gram[(K / G) * G * G];
    cpu_awq_gram(x, T, K, K, G, gram);
    float ratio[N * (K / G)];
    cpu_awq_search_clip(W, N, K, K, G, gram, ratio);
    for (int n = 0; n < N; n++)
        assert_true(ratio[n * (K / G)] < 1.0f);
    /* output error with the chosen ratios <= with none */
    float a[N * K], b[N * K];
    cpu_awq_fake_quant(W, N, K, K, G, ratio, a);
    cpu_awq_fake_quant(W, N, K, K, G, NULL, b);
    double ea = 0, eb = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double ya = 0, yb = 0, y = 0;
            for (int k = 0; k < K; k++) {
                ya += (double)x[t * K + k] * a[n * K + k];
                yb += (double)x[t * K + k] * b[n * K + k];
                y += (double)x[t * K + k] * W[n * K + k];
            }
            ea += (ya - y) * (ya - y), eb += (yb - y) * (yb - y);
        }
    assert_true(ea <= eb);
}

/* cpu_awq_matmul against a double-precision product, and batch invariance. */
static void test_matmul(void **state)
{
    (void)state;
    enum { N = 40, K = 128, G = 64, T = 5 };
    static float W[N * K], wt[N * K], x[T * K], y[T * N], y1[N];
    static double y64[T * N];
    for (int i = 0; i < N * K; i++)
        W[i] = frand() * 0.1f;
    for (int i = 0; i < T * K; i++)
        x[i] = frand();
    static int32_t qw[K * N / 8], qz[(K / G) * N / 8];
    static uint16_t sc[(K / G) * N];
    cpu_awq_quantize(W, N, K, K, G, NULL, qw, qz, sc);
    cpu_awq_w w = {qw, qz, sc, K, N, N / 8, N, G};
    cpu_awq_dequant(&w, 0, N, wt);
    assert_int_equal(cpu_awq_matmul(x, T, K, &w, y, N), 0);
    assert_int_equal(cpu_awq_matmul_f64(x, T, K, &w, y64, N), 0);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double ref = 0;
            for (int k = 0; k < K; k++)
                ref += (double)x[t * K + k] * (double)wt[n * K + k];
            assert_true(fabs(y[t * N + n] - ref) <= 1e-4 * (1 + fabs(ref)));
            assert_true(fabs(y64[t * N + n] - ref) <= 1e-9 * (1 + fabs(ref)));
        }
    for (int t = 0; t < T; t++) { /* one row at a time: bit-identical */
        assert_int_equal(cpu_awq_matmul(x + t * K, 1, K, &w, y1, N), 0);
        assert_memory_equal(y1, y + t * N, sizeof y1);
    }
    /* a slice (rows 64.., columns 16..) equals the same part of the full product */
    cpu_awq_w s;
    assert_int_equal(gm_awq_slice(&w, 64, 64, 16, 24, &s), GM_OK);
    float ys[T * 24], wsl[24 * 64];
    cpu_awq_dequant(&s, 0, 24, wsl);
    for (int n = 0; n < 24; n++)
        for (int k = 0; k < 64; k++)
            assert_float_equal(wsl[n * 64 + k], wt[(16 + n) * K + 64 + k], 0.0f);
    assert_int_equal(cpu_awq_matmul(x + 64, T, K, &s, ys, 24), 0);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < 24; n++) {
            double ref = 0;
            for (int k = 0; k < 64; k++)
                ref += (double)x[t * K + 64 + k] * (double)wt[(16 + n) * K + 64 + k];
            assert_true(fabs(ys[t * 24 + n] - ref) <= 1e-4 * (1 + fabs(ref)));
        }
    assert_int_equal(gm_awq_slice(&w, 32, 64, 0, 8, &s), GM_ERR_UNSUPPORTED); /* not group-aligned */
    assert_int_equal(gm_awq_slice(&w, 0, 64, 4, 8, &s), GM_ERR_UNSUPPORTED);  /* not 8-aligned */
}

static void test_quant_config(void **state)
{
    (void)state;
    gm_quant_config q;
    const char *a = "{\"quant_method\":\"awq\",\"zero_point\":true,\"group_size\":128,\"bits\":4,"
                    "\"version\":\"gemm\",\"modules_to_not_convert\":null}";
    assert_int_equal(gm_quant_config_parse(a, strlen(a), "a", 0, &q), GM_OK);
    assert_int_equal(q.present, 1);
    assert_string_equal(q.method, "awq");
    assert_int_equal(q.group_size, 128);
    assert_int_equal(q.bits, 4);
    const char *b = "{\"zero_point\":true,\"q_group_size\":64,\"w_bit\":4,\"version\":\"GEMM\"}";
    assert_int_equal(gm_quant_config_parse(b, strlen(b), "quant_config.json", 1, &q), GM_OK);
    assert_string_equal(q.version, "gemm");
    assert_int_equal(q.group_size, 64);
    const char *c = "{\"quant_method\":\"awq\",\"zero_point\":true,\"group_size\":128,\"bits\":4,"
                    "\"version\":\"gemv\"}";
    assert_int_equal(gm_quant_config_parse(c, strlen(c), "c", 0, &q), GM_ERR_UNSUPPORTED);
    assert_non_null(strstr(gm_last_error(), "gemv"));
    const char *d = "{\"quant_method\":\"awq\",\"group_size\":128,\"bits\":8,\"version\":\"gemm\"}";
    assert_int_equal(gm_quant_config_parse(d, strlen(d), "d", 0, &q), GM_ERR_UNSUPPORTED);
    const char *e = "{\"quant_method\":\"awq\",\"group_size\":\"x\",\"bits\":4}";
    assert_int_equal(gm_quant_config_parse(e, strlen(e), "e", 0, &q), GM_ERR_FORMAT);
    const char *f = "{\"quant_method\":\"fp8\"}";
    assert_int_equal(gm_quant_config_parse(f, strlen(f), "f", 0, &q), GM_OK);
    assert_string_equal(q.method, "fp8");
    assert_int_equal(gm_quant_config_parse("[1", 2, "g", 0, &q), GM_ERR_FORMAT);
}

/* A safetensors file with AWQ tensors of the wrong shape or dtype is refused by name. */
static void test_find_errors(void **state)
{
    (void)state;
    if (!g_work)
        skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/bad-awq.safetensors", g_work);
    run("mkdir -p %s", g_work);
    static int32_t qw[64 * 4], qz[2 * 4];
    static uint16_t sc[3 * 32]; /* big enough for the [3, 32] case too */
    st_writer *w = st_writer_new();
    int64_t s1[2] = {64, 4}, s2[2] = {2, 4}, s3[2] = {2, 32}, s4[2] = {3, 32};
    st_writer_add(w, "a.qweight", GM_DT_I32, 2, s1, qw);
    st_writer_add(w, "a.qzeros", GM_DT_I32, 2, s2, qz);
    st_writer_add(w, "a.scales", GM_DT_F16, 2, s3, sc);
    st_writer_add(w, "b.qweight", GM_DT_I32, 2, s1, qw);
    st_writer_add(w, "b.qzeros", GM_DT_I32, 2, s2, qz);
    st_writer_add(w, "b.scales", GM_DT_F16, 2, s4, sc);
    st_writer_add(w, "c.qweight", GM_DT_F16, 2, s1, qw);
    assert_int_equal(st_writer_write(w, path, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
    st_model *m = NULL;
    assert_int_equal(st_model_open_file(path, &m), GM_OK);
    cpu_awq_w aw;
    assert_int_equal(gm_awq_find(m, "a", 64, 32, 32, &aw), GM_OK);
    assert_int_equal(aw.ldq, 4);
    assert_int_equal(gm_awq_find(m, "b", 64, 32, 32, &aw), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "b.scales"));
    assert_int_equal(gm_awq_find(m, "c", 64, 32, 32, &aw), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "c.qweight"));
    assert_int_equal(gm_awq_find(m, "d", 64, 32, 32, &aw), GM_ERR_NOT_FOUND);
    assert_int_equal(gm_awq_find(m, "a", 64, 32, 48, &aw), GM_ERR_UNSUPPORTED); /* 48 does not divide 64 */
    assert_int_equal(gm_awq_find(m, "a", 64, 36, 32, &aw), GM_ERR_UNSUPPORTED); /* N % 8 */
    st_model_destroy(&m);
}

/* ---- the tiny model ---- */

typedef struct tiny {
    gm_model_config cfg;
    st_model *m;
    gm_linear *lin; /* [layers * GM_LIN_COUNT] */
    int64_t group;
} tiny;

static void tiny_open(const char *dir, tiny *t)
{
    memset(t, 0, sizeof *t);
    assert_int_equal(gm_config_load_dir(dir, &t->cfg), GM_OK);
    gm_quant_config q;
    assert_int_equal(gm_quant_config_load(dir, &q), GM_OK);
    t->group = q.present ? q.group_size : 0;
    assert_int_equal(st_model_open(dir, &t->m), GM_OK);
    gm_tp_layout tp;
    assert_int_equal(gm_tp_layout_make(&t->cfg, 0, 1, &tp), GM_OK);
    assert_int_equal(gm_linears_bind(t->m, &t->cfg, &tp, t->group, &t->lin), GM_OK);
}

static void tiny_close(tiny *t)
{
    free(t->lin);
    st_model_destroy(&t->m);
}

static int quantize(const char *mode, const char *out)
{
    return run("%s %s --model %s --calib %s --group %d --max-tokens %d --seq-len %d --out %s/%s --quiet", g_quant,
               mode, g_tiny, g_calib, GROUP, CAL_TOKENS, CAL_SEQ, g_work, out);
}

static int setup_models(void **state)
{
    (void)state;
    if (!g_quant)
        return 0;
    run("rm -rf %s/awq %s/rtn", g_work, g_work);
    if (quantize("--awq", "awq") != 0 || quantize("--rtn", "rtn") != 0)
        return -1;
    return 0;
}

/* quantize -> write -> load: the RTN checkpoint dequantizes to exactly the fake-quantized
 * float weights, the config says AWQ GEMM, embedding and norms are carried over. */
static void test_roundtrip_tiny(void **state)
{
    (void)state;
    if (!g_quant)
        skip();
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/rtn", g_work);
    tiny f, q;
    tiny_open(g_tiny, &f);
    tiny_open(dir, &q);
    assert_int_equal(q.group, GROUP);
    gm_quant_config qc;
    assert_int_equal(gm_quant_config_load(dir, &qc), GM_OK);
    assert_string_equal(qc.method, "awq");
    assert_string_equal(qc.version, "gemm");
    for (int i = 0; i < f.cfg.num_layers * GM_LIN_COUNT; i++) {
        const gm_linear *a = &f.lin[i], *b = &q.lin[i];
        assert_int_equal(a->kind, GM_LINEAR_DENSE);
        assert_int_equal(b->kind, GM_LINEAR_AWQ);
        int64_t N = a->out, K = a->in;
        float *W = malloc((size_t)(N * K) * sizeof(float)), *fq = malloc((size_t)(N * K) * sizeof(float));
        float *dq = malloc((size_t)(N * K) * sizeof(float));
        for (int64_t n = 0; n < N; n++)
            gm_to_f32(a->dense.dtype, (const char *)a->dense.data + n * K * gm_dtype_size(a->dense.dtype), W + n * K,
                      K);
        cpu_awq_fake_quant(W, N, K, K, GROUP, NULL, fq);
        cpu_awq_dequant(&b->awq, 0, N, dq);
        assert_memory_equal(fq, dq, (size_t)(N * K) * sizeof(float));
        free(W), free(fq), free(dq);
    }
    const char *same[] = {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"};
    for (int i = 0; i < 3; i++) {
        const st_tensor *x = st_model_find(f.m, same[i]), *y = st_model_find(q.m, same[i]);
        assert_non_null(y);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    assert_null(st_model_find(q.m, "model.layers.0.self_attn.q_proj.weight"));
    char p[4200];
    snprintf(p, sizeof p, "%s/tokenizer.model", dir);
    FILE *fp = fopen(p, "rb");
    assert_non_null(fp);
    fclose(fp);
    tiny_close(&f), tiny_close(&q);
}

/* Tensor-parallel slices of the AWQ Linears: q's rank outputs are columns of the full
 * output, o's rank partial sums add up to the full product. */
static void test_tp_slices(void **state)
{
    (void)state;
    if (!g_quant)
        skip();
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/awq", g_work);
    tiny t;
    tiny_open(dir, &t);
    const gm_model_config *c = &t.cfg;
    int64_t H = c->hidden_size, QW = (int64_t)c->num_heads * c->head_dim, T = 3;
    gm_linear *part[2];
    gm_tp_layout tp[2];
    for (int r = 0; r < 2; r++) {
        assert_int_equal(gm_tp_layout_make(c, r, 2, &tp[r]), GM_OK);
        assert_int_equal(gm_linears_bind(t.m, c, &tp[r], t.group, &part[r]), GM_OK);
    }
    float *x = malloc((size_t)(T * QW) * sizeof(float)), *full = malloc((size_t)(T * QW) * sizeof(float));
    float *y = malloc((size_t)(T * QW) * sizeof(float));
    double *d0 = malloc((size_t)(T * H) * sizeof(double)), *d1 = malloc((size_t)(T * H) * sizeof(double));
    for (int64_t i = 0; i < T * QW; i++)
        x[i] = frand();
    const gm_linear *Lq = &t.lin[GM_LIN_Q], *Lo = &t.lin[GM_LIN_O];
    assert_int_equal(gm_linear_matmul(Lq, x, T, H, full, QW), GM_OK);
    for (int r = 0; r < 2; r++) {
        const gm_linear *P = &part[r][GM_LIN_Q];
        assert_int_equal(P->kind, GM_LINEAR_AWQ);
        assert_int_equal(P->out, QW / 2);
        assert_int_equal(gm_linear_matmul(P, x, T, H, y, P->out), GM_OK);
        for (int64_t i = 0; i < T; i++)
            assert_memory_equal(y + i * P->out, full + i * QW + (int64_t)tp[r].head0 * c->head_dim,
                                (size_t)P->out * sizeof(float));
    }
    assert_int_equal(gm_linear_matmul(Lo, x, T, QW, full, H), GM_OK);
    int64_t half = QW / 2;
    assert_int_equal(gm_linear_matmul_f64(&part[0][GM_LIN_O], x, T, QW, d0, H), GM_OK);
    assert_int_equal(gm_linear_matmul_f64(&part[1][GM_LIN_O], x + half, T, QW, d1, H), GM_OK);
    for (int64_t i = 0; i < T * H; i++)
        assert_true(fabs(d0[i] + d1[i] - full[i]) <= 1e-4 * (1.0 + fabs(full[i])));
    free(x), free(full), free(y), free(d0), free(d1);
    free(part[0]), free(part[1]);
    tiny_close(&t);
}

/* The calibration tokens as gemma-quantize takes them: n_seq sequences of CAL_SEQ, BOS first, as
 * engine step entries over blocks of 16 (tok, bt, seqs: caller frees). */
typedef struct calib_seqs {
    int32_t *tok, *bt;
    gm_seq_step *seqs;
    int32_t n_seq;
} calib_seqs;

static void calib_make(calib_seqs *c)
{
    char p[4096];
    assert_true(snprintf(p, sizeof p, "%s/tokenizer.model", g_tiny) < (int)sizeof p);
    gm_tokenizer *tok = NULL;
    assert_int_equal(gm_tok_load(p, &tok), GM_OK);
    FILE *f = fopen(g_calib, "rb");
    assert_non_null(f);
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof text, f);
    fclose(f);
    int32_t *ids = NULL, n = 0;
    assert_int_equal(gm_tok_encode(tok, text, len, false, &ids, &n), GM_OK);
    gm_tok_destroy(&tok);
    c->n_seq = CAL_TOKENS / CAL_SEQ;
    assert_true(n >= c->n_seq * (CAL_SEQ - 1));
    const int nb = CAL_SEQ / 16;
    c->tok = malloc((size_t)(c->n_seq * CAL_SEQ) * sizeof(int32_t));
    c->bt = malloc((size_t)(c->n_seq * nb) * sizeof(int32_t));
    c->seqs = calloc((size_t)c->n_seq, sizeof *c->seqs);
    for (int32_t i = 0; i < c->n_seq * nb; i++)
        c->bt[i] = i;
    for (int32_t i = 0; i < c->n_seq; i++) {
        c->tok[i * CAL_SEQ] = 2;
        memcpy(c->tok + i * CAL_SEQ + 1, ids + i * (CAL_SEQ - 1), (CAL_SEQ - 1) * sizeof(int32_t));
        c->seqs[i] = (gm_seq_step){i, c->tok + i * CAL_SEQ, CAL_SEQ, 0, c->bt + i * nb, nb, GM_LOGITS_NONE,
                                   GM_SAMPLING_GREEDY};
    }
    free(ids);
}

/* Relative error of a quantized layer's residual update on the float model's inputs (the CPU
 * engine eq running layer l of the quantized checkpoint). */
static double layer_err(gm_engine *eq, const calib_seqs *c, int l, const float *h_in, const float *h_out, int64_t n)
{
    float *h = malloc((size_t)n * sizeof(float));
    memcpy(h, h_in, (size_t)n * sizeof(float));
    assert_int_equal(gm_engine_cpu_layer(eq, l, c->seqs, c->n_seq, h), GM_OK);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)h[i] - h_out[i], u = (double)h_out[i] - h_in[i];
        num += d * d, den += u * u;
    }
    free(h);
    return sqrt(num / den);
}

/* AWQ's per-layer output error is no larger than round-to-nearest's with the same groups. */
static void test_awq_beats_rtn(void **state)
{
    (void)state;
    if (!g_quant)
        skip();
    char da[4096], dr[4096];
    snprintf(da, sizeof da, "%s/awq", g_work);
    snprintf(dr, sizeof dr, "%s/rtn", g_work);
    tiny a;
    tiny_open(da, &a);
    assert_int_equal(a.group, GROUP);
    tiny_close(&a);
    calib_seqs c;
    calib_make(&c);
    gm_engine *ef = NULL, *ea = NULL, *er = NULL;
    assert_int_equal(gm_engine_cpu_create_calib(g_tiny, c.n_seq, CAL_SEQ, &ef), GM_OK);
    assert_int_equal(gm_engine_cpu_create_calib(da, c.n_seq, CAL_SEQ, &ea), GM_OK);
    assert_int_equal(gm_engine_cpu_create_calib(dr, c.n_seq, CAL_SEQ, &er), GM_OK);
    int64_t n = (int64_t)c.n_seq * CAL_SEQ * ef->cfg.hidden_size;
    float *h = malloc((size_t)n * sizeof(float)), *next = malloc((size_t)n * sizeof(float));
    assert_int_equal(gm_engine_cpu_embed(ef, c.seqs, c.n_seq, h), GM_OK);
    double sa = 0, sr = 0;
    for (int l = 0; l < ef->cfg.num_layers; l++) {
        memcpy(next, h, (size_t)n * sizeof(float));
        assert_int_equal(gm_engine_cpu_layer(ef, l, c.seqs, c.n_seq, next), GM_OK);
        double xa = layer_err(ea, &c, l, h, next, n), xr = layer_err(er, &c, l, h, next, n);
        print_message("layer %d: relative error of the residual update: awq %.5f rtn %.5f\n", l, xa, xr);
        assert_true(xa > 0.0 && isfinite(xa));
        assert_true(xa <= xr);
        sa += xa, sr += xr;
        memcpy(h, next, (size_t)n * sizeof(float));
    }
    print_message("mean: awq %.5f rtn %.5f\n", sa / ef->cfg.num_layers, sr / ef->cfg.num_layers);
    free(h), free(next), free(c.tok), free(c.bt), free(c.seqs);
    gm_engine_destroy(&ef), gm_engine_destroy(&ea), gm_engine_destroy(&er);
}

/* gemma-generate's "perplexity: X" on a model, or -1. */
static double perplexity(const char *model, const char *text, const char *quant)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s --model %s --perplexity %s --quant %s 2>/dev/null", g_gen, model, text, quant);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[512];
    double v = -1;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "perplexity: %lf", &v) == 1)
            break;
    while (fgets(line, sizeof line, p))
        ;
    if (pclose(p) != 0)
        return -1;
    return v;
}

/* The CPU engine loads the AWQ checkpoint (--quant awq and auto-detected), generates, and its
 * perplexity is finite and within a few percent of the float model's. */
static void test_engine_awq(void **state)
{
    (void)state;
    if (!g_quant || !g_gen)
        skip();
    char da[4096], dr[4096], text[4096];
    snprintf(da, sizeof da, "%s/awq", g_work);
    snprintf(dr, sizeof dr, "%s/rtn", g_work);
    snprintf(text, sizeof text, "%s/ppl.txt", g_work);
    /* held-out text: the end of the corpus, past the calibration tokens */
    assert_int_equal(run("tail -c 6000 %s > %s", g_calib, text), 0);
    assert_int_equal(run("%s --model %s --quant awq --prompt 'The build server' --max-tokens 8 > %s/gen.txt", g_gen,
                         da, g_work),
                     0);
    assert_int_equal(run("%s --model %s --prompt 'The build server' --max-tokens 8 > /dev/null", g_gen, da), 0);
    assert_int_not_equal(run("%s --model %s --quant awq --prompt x --max-tokens 1 2>/dev/null", g_gen, g_tiny), 0);
    double pf = perplexity(g_tiny, text, "none"), pa = perplexity(da, text, "awq"), pr = perplexity(dr, text, "awq");
    print_message("perplexity on held-out text: float %.3f rtn %.3f awq %.3f\n", pf, pr, pa);
    assert_true(pf > 1 && isfinite(pf));
    assert_true(pa > 1 && isfinite(pa));
    assert_true(pa < pf * 1.05);
}

int main(int argc, char **argv)
{
    if (argc >= 5) {
        g_quant = argv[1], g_tiny = argv[2], g_calib = argv[3], g_work = argv[4];
        g_gen = argc >= 6 ? argv[5] : NULL;
    }
    const struct CMUnitTest unit[] = {
        cmocka_unit_test(test_pack_order),    cmocka_unit_test(test_dequant_known),
        cmocka_unit_test(test_quant_rules),   cmocka_unit_test(test_quantize_roundtrip),
        cmocka_unit_test(test_clip_search),   cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_quant_config),  cmocka_unit_test(test_find_errors),
    };
    const struct CMUnitTest model[] = {
        cmocka_unit_test(test_roundtrip_tiny),
        cmocka_unit_test(test_tp_slices),
        cmocka_unit_test(test_awq_beats_rtn),
        cmocka_unit_test(test_engine_awq),
    };
    int r = cmocka_run_group_tests_name("awq_unit", unit, NULL, NULL);
    r += cmocka_run_group_tests_name("awq_tiny", model, setup_models, NULL);
    return r;
}
