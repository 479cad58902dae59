/* test_fp8.c - the FP8 CPU twins: e4m3 rounding, per-tensor scales, the FP8 matmul and the FP8 KV cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <stdio.h>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_fp8.h"
#include "kernels/cpu/quant_fp8.h"
#include "kernels/cpu/rope_kv.h"
#include "tools/quantize_fp8.h"

static uint64_t g_state = 777;
static uint32_t rnd32(void)
{
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_state >> 32);
}
static float frand(void) /* [-1, 1) */
{
    return (float)(rnd32() >> 8) / 8388608.0f - 1.0f;
}

static double nerr(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The fast encoder agrees with the exhaustive one in common/dtype.c everywhere that matters. */
static void test_e4m3_encoder(void **st)
{
    (void)st;
    /* every code, and every midpoint between neighbouring codes (ties to even), nudged both ways */
    for (int c = 0; c < 0x7e; c++) {
        float a = gm_e4m3_to_f32((uint8_t)c), b = gm_e4m3_to_f32((uint8_t)(c + 1));
        float mid = 0.5f * (a + b);
        float probes[5] = {a, mid, nextafterf(mid, 0.0f), nextafterf(mid, 1000.0f), b};
        for (int i = 0; i < 5; i++) {
            assert_int_equal(cpu_fp8_e4m3(probes[i]), gm_f32_to_e4m3(probes[i]));
            assert_int_equal(cpu_fp8_e4m3(-probes[i]), gm_f32_to_e4m3(-probes[i]));
        }
    }
    /* random bit patterns over the whole float range, and random values near the e4m3 range */
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rnd32();
        float f;
        memcpy(&f, &u, 4);
        if (!isnan(f))
            assert_int_equal(cpu_fp8_e4m3(f), gm_f32_to_e4m3(f));
        float g = ldexpf(frand(), (int)(rnd32() % 30) - 14);
        assert_int_equal(cpu_fp8_e4m3(g), gm_f32_to_e4m3(g));
    }
    assert_int_equal(cpu_fp8_e4m3(0.0f), 0x00);
    assert_int_equal(cpu_fp8_e4m3(-0.0f), 0x80);
    assert_int_equal(cpu_fp8_e4m3(448.0f), 0x7e);
    assert_int_equal(cpu_fp8_e4m3(1e6f), 0x7e);
    assert_int_equal(cpu_fp8_e4m3(-INFINITY), 0xfe);
    assert_int_equal(cpu_fp8_e4m3(INFINITY), 0x7e);
    assert_int_equal(cpu_fp8_e4m3(NAN) & 0x7f, 0x7f);
    assert_int_equal(cpu_fp8_e4m3(1.0f), 0x38);
    assert_int_equal(cpu_fp8_e4m3(0x1p-9f), 0x01);  /* smallest subnormal */
    assert_int_equal(cpu_fp8_e4m3(0x1p-10f), 0x00); /* half of it: tie to even (0) */
    assert_int_equal(cpu_fp8_e4m3(0x1.8p-9f), 0x02); /* 1.5 ulp: tie to even (2) */
}

static void test_scale_and_roundtrip(void **st)
{
    (void)st;
    enum { N = 4096 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    uint16_t *xb = malloc(N * 2);
    uint8_t *q = malloc(N);
    for (int i = 0; i < N; i++) {
        x[i] = frand() * 3.0f;
        xb[i] = gm_f32_to_bf16(x[i]);
    }
    x[17] = -7.25f;
    xb[17] = gm_f32_to_bf16(x[17]);
    assert_true(cpu_fp8_amax(x, GM_DT_F32, N) == 7.25f);
    assert_true(cpu_fp8_amax(xb, GM_DT_BF16, N) == 7.25f);
    float s = cpu_fp8_scale(7.25f);
    assert_true(s == 7.25f / 448.0f);
    cpu_fp8_quantize(xb, GM_DT_BF16, N, s, q);
    assert_int_equal(q[17], 0xfe); /* amax maps to -448 exactly */
    cpu_fp8_dequantize(q, N, s, y);
    /* e4m3 keeps 3 mantissa bits: relative error <= 2^-4 above the subnormal range */
    for (int i = 0; i < N; i++) {
        float xv = gm_bf16_to_f32(xb[i]);
        if (fabsf(xv) / s >= 0x1p-6f)
            assert_true(fabsf(y[i] - xv) <= fabsf(xv) * 0.0625f + 1e-7f);
        else
            assert_true(fabsf(y[i] - xv) <= 0x1p-10f * s);
    }
    assert_true(nerr(y, x, N) < 0.04);
    /* the bf16 path and the generic path agree */
    uint8_t *q2 = malloc(N);
    float *xr = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++)
        xr[i] = gm_bf16_to_f32(xb[i]);
    cpu_fp8_quantize(xr, GM_DT_F32, N, s, q2);
    assert_memory_equal(q, q2, N);
    cpu_fp8_quantize_act(x, N, s, q2); /* rounds to bf16 first: same codes */
    assert_memory_equal(q, q2, N);
    assert_true(cpu_fp8_act_scale(x, N) == s);
    /* an all-zero tensor: finite scale, zero codes */
    memset(xr, 0, N * sizeof(float));
    float z = cpu_fp8_scale(cpu_fp8_amax(xr, GM_DT_F32, N));
    assert_true(z > 0.0f && isfinite(1.0f / z));
    cpu_fp8_quantize(xr, GM_DT_F32, N, z, q2);
    for (int i = 0; i < N; i++)
        assert_int_equal(q2[i], 0);
    free(x), free(y), free(xb), free(q), free(q2), free(xr);
}

/* FP8 matmul twin: exactly the double-checked sum of e4m3 products, scaled and rounded to bf16
 * (to 1 bf16 ulp: float32 vs double summation), and close to the unquantized product. */
static void test_fp8_matmul(void **st)
{
    (void)st;
    const int64_t T = 5, K = 256, N = 48;
    float *x = malloc(T * K * sizeof(float)), *w = malloc(N * K * sizeof(float));
    float *y = malloc(T * N * sizeof(float)), *yr = malloc(T * N * sizeof(float));
    uint8_t *wq = malloc(N * K), *xq = malloc(T * K);
    for (int64_t i = 0; i < T * K; i++)
        x[i] = frand() * 4.0f;
    for (int64_t i = 0; i < N * K; i++)
        w[i] = frand() * 0.05f;
    float sw = cpu_fp8_scale(cpu_fp8_amax(w, GM_DT_F32, N * K));
    cpu_fp8_quantize(w, GM_DT_F32, N * K, sw, wq);
    float sx = cpu_fp8_act_scale(x, T * K);
    assert_int_equal(cpu_fp8_matmul(x, T, K, K, sx, wq, K, N, sw, y, N), 0);
    for (int64_t t = 0; t < T; t++)
        cpu_fp8_quantize_act(x + t * K, K, sx, xq + t * K);
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)gm_e4m3_to_f32(xq[t * K + k]) * gm_e4m3_to_f32(wq[j * K + k]);
            float ref = gm_round_bf16((float)(acc * sx * sw));
            float got = y[t * N + j];
            assert_true(got == gm_round_bf16(got));
            assert_true(fabsf(got - ref) <= fabsf(ref) * 0x1p-7f + 1e-6f);
        }
    /* f32 output: the same sums without the bf16 rounding */
    float *yf = malloc(T * N * sizeof(float));
    assert_int_equal(cpu_fp8_matmul_q_f32(xq, T, K, K, sx, wq, K, N, sw, yf, N), 0);
    for (int64_t i = 0; i < T * N; i++)
        assert_true(gm_round_bf16(yf[i]) == y[i]);
    free(yf);
    /* pre-quantized entry point gives the same bits */
    float *y2 = malloc(T * N * sizeof(float));
    assert_int_equal(cpu_fp8_matmul_q(xq, T, K, K, sx, wq, K, N, sw, y2, N), 0);
    assert_memory_equal(y, y2, T * N * sizeof(float));
    /* against the float32 product of the unquantized operands */
    cpu_matmul(x, T, K, K, w, GM_DT_F32, K, N, yr, N);
    assert_true(nerr(y, yr, T * N) < 0.06);
    /* row strides: a column slice of a wider x and y */
    float *xw = calloc(T * (K + 32), sizeof(float)), *yw = calloc(T * (N + 8), sizeof(float));
    for (int64_t t = 0; t < T; t++)
        memcpy(xw + t * (K + 32), x + t * K, K * sizeof(float));
    assert_int_equal(cpu_fp8_matmul(xw, T, K, K + 32, sx, wq, K, N, sw, yw, N + 8), 0);
    for (int64_t t = 0; t < T; t++)
        assert_memory_equal(yw + t * (N + 8), y + t * N, N * sizeof(float));
    free(x), free(w), free(y), free(yr), free(wq), free(xq), free(y2), free(xw), free(yw);
}

/* FP8 KV: the write lands where cpu_kv_write would put it, and attention over the FP8 pool equals
 * f32 attention over the dequantized values and stays close to attention over the originals. */
static void test_fp8_kv(void **st)
{
    (void)st;
    const int64_t nh = 8, nkv = 2, hd = 64, bs = 16, ctx = 75, T = 3;
    const int64_t nblk = 12;
    int32_t bt[6] = {7, 2, 9, 0, 11, 4};
    int64_t pool = nblk * nkv * bs * hd;
    float *kf = calloc(pool, sizeof(float)), *vf = calloc(pool, sizeof(float));
    uint8_t *k8 = calloc(pool, 1), *v8 = calloc(pool, 1);
    float *k = malloc(ctx * nkv * hd * sizeof(float)), *v = malloc(ctx * nkv * hd * sizeof(float));
    for (int64_t i = 0; i < ctx * nkv * hd; i++) {
        k[i] = frand() * 6.0f;
        v[i] = frand() * 2.0f;
    }
    float kvs = 0.03f;
    /* written in two pieces, as a prefill and a decode would */
    cpu_fp8_kv_write(k8, v8, bt, bs, 0, ctx - T, nkv, hd, k, v, kvs);
    cpu_fp8_kv_write(k8, v8, bt, bs, (int32_t)(ctx - T), T, nkv, hd, k + (ctx - T) * nkv * hd,
                     v + (ctx - T) * nkv * hd, kvs);
    /* reference pools: the dequantized values, written by the f32 writer */
    float *kd = malloc(ctx * nkv * hd * sizeof(float)), *vd = malloc(ctx * nkv * hd * sizeof(float));
    for (int64_t i = 0; i < ctx * nkv * hd; i++) {
        kd[i] = gm_e4m3_to_f32(cpu_fp8_e4m3(gm_round_bf16(k[i]) * (1.0f / kvs))) * kvs;
        vd[i] = gm_e4m3_to_f32(cpu_fp8_e4m3(gm_round_bf16(v[i]) * (1.0f / kvs))) * kvs;
    }
    cpu_kv_write(kf, vf, bt, (int32_t)bs, 0, ctx, nkv, hd, kd, vd);
    for (int64_t i = 0; i < pool; i++) {
        assert_true(gm_e4m3_to_f32(k8[i]) * kvs == kf[i]);
        assert_true(gm_e4m3_to_f32(v8[i]) * kvs == vf[i]);
    }
    float *q = malloc(T * nh * hd * sizeof(float));
    for (int64_t i = 0; i < T * nh * hd; i++)
        q[i] = frand();
    float *o8 = malloc(T * nh * hd * sizeof(float)), *od = malloc(T * nh * hd * sizeof(float));
    float *oo = malloc(T * nh * hd * sizeof(float));
    assert_int_equal(cpu_fp8_attention_paged(q, T, (int32_t)(ctx - T), nh, nkv, hd, k8, v8, bt, (int32_t)bs, 0.125f,
                                             kvs, o8),
                     0);
    cpu_attention_paged(q, T, (int32_t)(ctx - T), nh, nkv, hd, kf, vf, bt, (int32_t)bs, 0.125f, od);
    assert_memory_equal(o8, od, T * nh * hd * sizeof(float));
    /* against the unquantized cache */
    float *ko = calloc(pool, sizeof(float)), *vo = calloc(pool, sizeof(float));
    cpu_kv_write(ko, vo, bt, (int32_t)bs, 0, ctx, nkv, hd, k, v);
    cpu_attention_paged(q, T, (int32_t)(ctx - T), nh, nkv, hd, ko, vo, bt, (int32_t)bs, 0.125f, oo);
    double e = nerr(o8, oo, T * nh * hd);
    assert_true(e < 0.08);
    free(kf), free(vf), free(k8), free(v8), free(k), free(v), free(kd), free(vd), free(q), free(o8), free(od);
    free(oo), free(ko), free(vo);
}

/* Read a whole small file (caller frees); NULL if missing. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    size_t r = fread(b, 1, (size_t)n, f);
    b[r] = 0;
    fclose(f);
    return b;
}

static char path_dummy[4096];

static float scalar(const st_model *m, const char *name)
{
    const st_tensor *t = st_model_find(m, name);
    if (!t)
        fail_msg("missing tensor %s", name);
    assert_int_equal(t->dtype, GM_DT_F32);
    assert_int_equal(st_numel(t), 1);
    float v;
    memcpy(&v, t->data, 4);
    return v;
}

/* gm_quantize_fp8 on the tiny model, with and without calibration: layout, shared scales,
 * bit-exact codes, untouched embedding/norms, config.json, tokenizer copied. */
static void check_quantized(const char *src_dir, const char *out_dir, int calibrated)
{
    char path[4096];
    gm_model_config cfg;
    assert_int_equal(gm_config_load_dir(src_dir, &cfg), GM_OK);
    st_model *a = NULL, *b = NULL;
    assert_int_equal(st_model_open(src_dir, &a), GM_OK);
    assert_int_equal(st_model_open(out_dir, &b), GM_OK);
    static const char *mods[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
    for (int32_t l = 0; l < cfg.num_layers; l++) {
        float ws[7], is[7];
        for (int k = 0; k < 7; k++) {
            snprintf(path, sizeof path, "model.layers.%d.%s.weight", l, mods[k]);
            const st_tensor *ta = st_model_find(a, path), *tb = st_model_find(b, path);
            assert_non_null(ta);
            assert_non_null(tb);
            assert_int_equal(tb->dtype, GM_DT_F8_E4M3);
            assert_int_equal(tb->ndim, 2);
            assert_true(tb->shape[0] == ta->shape[0] && tb->shape[1] == ta->shape[1]);
            snprintf(path, sizeof path, "model.layers.%d.%s.weight_scale", l, mods[k]);
            ws[k] = scalar(b, path);
            int64_t n = st_numel(ta);
            uint8_t *q = malloc((size_t)n);
            cpu_fp8_quantize(ta->data, ta->dtype, n, ws[k], q);
            assert_memory_equal(q, tb->data, (size_t)n);
            float *orig = malloc((size_t)n * 4), *deq = malloc((size_t)n * 4);
            gm_to_f32(ta->dtype, ta->data, orig, n);
            cpu_fp8_dequantize(tb->data, n, ws[k], deq);
            assert_true(nerr(deq, orig, n) < 0.06);
            free(q), free(orig), free(deq);
            snprintf(path, sizeof path, "model.layers.%d.%s.input_scale", l, mods[k]);
            if (calibrated) {
                is[k] = scalar(b, path);
                assert_true(is[k] > 0.0f && isfinite(is[k]));
            } else {
                assert_null(st_model_find(b, path));
            }
        }
        assert_true(ws[0] == ws[1] && ws[1] == ws[2]); /* q, k, v share */
        assert_true(ws[4] == ws[5]);                   /* gate, up share */
        if (calibrated) {
            assert_true(is[0] == is[1] && is[1] == is[2] && is[4] == is[5]);
            snprintf(path, sizeof path, "model.layers.%d.self_attn.k_scale", l);
            float ks = scalar(b, path);
            snprintf(path, sizeof path, "model.layers.%d.self_attn.v_scale", l);
            assert_true(ks > 0.0f && ks == scalar(b, path));
        }
    }
    /* everything else is copied bit for bit */
    for (int32_t i = 0; i < st_model_count(a); i++) {
        const st_tensor *ta = st_model_at(a, i);
        if (strstr(ta->name, "_proj."))
            continue;
        const st_tensor *tb = st_model_find(b, ta->name);
        assert_non_null(tb);
        assert_int_equal(tb->dtype, ta->dtype);
        assert_true(tb->nbytes == ta->nbytes);
        assert_memory_equal(tb->data, ta->data, (size_t)ta->nbytes);
    }
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    char *js = slurp(path);
    assert_non_null(js);
    cJSON *root = cJSON_Parse(js);
    assert_non_null(root);
    cJSON *q = cJSON_GetObjectItem(root, "quantization_config");
    assert_non_null(q);
    assert_string_equal(cJSON_GetObjectItem(q, "quant_method")->valuestring, "fp8");
    assert_string_equal(cJSON_GetObjectItem(q, "activation_scheme")->valuestring, calibrated ? "static" : "dynamic");
    gm_model_config c2;
    assert_int_equal(gm_config_parse(js, strlen(js), path, &c2), GM_OK); /* still a valid Gemma config */
    assert_int_equal(c2.num_layers, cfg.num_layers);
    cJSON_Delete(root);
    free(js);
    snprintf(path, sizeof path, "%s/tokenizer.model", out_dir);
    char *tk = slurp(path);
    assert_non_null(tk);
    free(tk);
    st_model_destroy(&a);
    st_model_destroy(&b);
}

static void test_quantize_tool(void **st)
{
    (void)st;
    const char *bin = getenv("GM_BIN"), *srcd = getenv("GM_SRC");
    char model[2048], out[4096], calib[4096];
    snprintf(model, sizeof model, "%s/models/tiny", bin ? bin : ".");
    snprintf(path_dummy, sizeof path_dummy, "%s/config.json", model);
    FILE *f = fopen(path_dummy, "r");
    if (!f) {
        print_message("no tiny model at %s (run via ctest for the fixture): skipped\n", model);
        skip();
    }
    fclose(f);
    snprintf(out, sizeof out, "%s/models/tiny_fp8_dyn", bin ? bin : ".");
    assert_int_equal(gm_quantize_fp8(model, out, NULL), GM_OK);
    check_quantized(model, out, 0);
    snprintf(calib, sizeof calib, "%s/data/corpus.txt", srcd ? srcd : ".");
    snprintf(out, sizeof out, "%s/models/tiny_fp8", bin ? bin : ".");
    gm_fp8_quant_opts o;
    gm_fp8_quant_opts_init(&o);
    o.calib_file = calib;
    o.calib_tokens = 200;
    o.calib_seq = 64;
    gm_status s = gm_quantize_fp8_ex(model, out, &o);
    if (s != GM_OK)
        fail_msg("gm_quantize_fp8_ex: %s", gm_last_error());
    check_quantized(model, out, 1);
    /* quantizing an FP8 checkpoint again is refused; a missing model is an error */
    snprintf(calib, sizeof calib, "%s/models/tiny_fp8_again", bin ? bin : ".");
    assert_int_not_equal(gm_quantize_fp8(out, calib, NULL), GM_OK);
    assert_int_not_equal(gm_quantize_fp8("/nonexistent/model", calib, NULL), GM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_encoder),
        cmocka_unit_test(test_scale_and_roundtrip),
        cmocka_unit_test(test_fp8_matmul),
        cmocka_unit_test(test_fp8_kv),
        cmocka_unit_test(test_quantize_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
