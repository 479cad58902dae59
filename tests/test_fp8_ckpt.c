/* test_fp8_ckpt.c - reading FP8 checkpoints (gemma-quantize --fp8, or any checkpoint in that
 * layout) on the CPU engine, the twin of the CUDA engine's loader:
 *  - an uncalibrated FP8 checkpoint gives logits bit for bit equal to the bf16 checkpoint run
 *    with --quant fp8 (same codes, same scales, dynamic activations);
 *  - a calibrated one binds static input scales and per-layer KV scales, stays close to bf16,
 *    and --quant fp8 on it changes nothing;
 *  - fused products whose scales differ are made whole (codes requantized to the largest scale);
 *  - static input scales are all or none: one missing makes the whole model dynamic;
 *  - broken FP8 checkpoints (missing, non-positive, NaN or multi-element scales, a fused product
 *    with one member in bf16, --quant awq on FP8) are clear errors, never crashes.
 *
 * usage: test_fp8_ckpt TINY_MODEL_DIR CALIB_TEXT */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "tools/quantize_fp8.h"
#include "worker/awq.h"
#include "worker/engine.h"
#include "tests/test_check.h"

static const char *g_model, *g_calib;
static char g_tmp[256], g_dyn[300], g_stat[300];


static gm_status open_engine(const char *dir, gm_quant q, gm_engine **e)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = dir;
    o.kv_block_size = 16;
    o.kv_num_blocks = 32;
    o.max_seqs = 4;
    o.max_tokens = 128;
    o.max_context = 256;
    o.backend = GM_BACKEND_CPU;
    o.quant = q;
    return gm_engine_create(&o, e);
}

enum { NP = 20 };

/* Teacher-forced logits [NP, V] of a fixed prompt (caller frees). */
static float *logits_of(const char *dir, gm_quant q, int32_t *V)
{
    gm_engine *e = NULL;
    GOK(open_engine(dir, q, &e));
    *V = e->cfg.vocab_size;
    int32_t prompt[NP], bt[16];
    uint64_t r = 7;
    for (int i = 0; i < NP; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((r >> 33) % (uint64_t)*V);
    }
    prompt[0] = e->cfg.bos_id;
    for (int i = 0; i < 16; i++)
        bt[i] = i;
    float *l = malloc((size_t)NP * (size_t)*V * 4);
    assert_non_null(l);
    int32_t tok[1];
    gm_seq_step s = {0, prompt, NP, 0, bt, 16, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
    gm_step_out o = {tok, l, NP};
    GOK(gm_engine_step(e, &s, 1, &o));
    gm_engine_destroy(&e);
    return l;
}

static double nerr(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (double)(a[i] - b[i]) * (a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den + 1e-30));
}

static void test_dynamic_ckpt_equals_quant_fp8(void **st)
{
    (void)st;
    int32_t V = 0, V2 = 0;
    float *a = logits_of(g_model, GM_QUANT_FP8, &V), *b = logits_of(g_dyn, GM_QUANT_NONE, &V2);
    assert_int_equal(V, V2);
    assert_memory_equal(a, b, (size_t)NP * V * 4);
    float *c = logits_of(g_dyn, GM_QUANT_FP8, &V2); /* --quant fp8 on an FP8 checkpoint: the same */
    assert_memory_equal(a, c, (size_t)NP * V * 4);
    free(a), free(b), free(c);
}

static void test_static_ckpt(void **st)
{
    (void)st;
    st_model *m = NULL;
    GOK(st_model_open(g_stat, &m));
    gm_model_config cfg;
    GOK(gm_config_load_dir(g_stat, &cfg));
    gm_tp_layout tp;
    GOK(gm_tp_layout_make(&cfg, 0, 1, &tp));
    gm_linear *lin = NULL;
    GOK(gm_linears_bind(m, &cfg, &tp, 0, &lin));
    for (int32_t l = 0; l < cfg.num_layers; l++) {
        const gm_linear *L = lin + (int64_t)l * GM_LIN_COUNT;
        for (int i = 0; i < GM_LIN_COUNT; i++) {
            assert_int_equal(L[i].kind, GM_LINEAR_FP8);
            assert_true(L[i].w_scale > 0.0f && L[i].in_scale > 0.0f);
        }
        /* fused products share their scales */
        assert_true(L[GM_LIN_Q].w_scale == L[GM_LIN_K].w_scale && L[GM_LIN_K].w_scale == L[GM_LIN_V].w_scale);
        assert_true(L[GM_LIN_Q].in_scale == L[GM_LIN_V].in_scale);
        assert_true(L[GM_LIN_GATE].w_scale == L[GM_LIN_UP].w_scale);
        float kv = 0.0f;
        GOK(gm_fp8_kv_scale(m, l, &kv));
        assert_true(kv > 0.0f && kv != 1.0f && isfinite(kv));
    }
    gm_linears_free(lin, (int64_t)cfg.num_layers * GM_LIN_COUNT);
    free(lin);
    st_model_destroy(&m);

    int32_t V = 0, V2 = 0;
    float *bf = logits_of(g_model, GM_QUANT_NONE, &V), *dyn = logits_of(g_dyn, GM_QUANT_NONE, &V2),
          *sta = logits_of(g_stat, GM_QUANT_NONE, &V2);
    double e_dyn = nerr(dyn, bf, (int64_t)NP * V), e_sta = nerr(sta, bf, (int64_t)NP * V);
    printf("logits normalized error vs bf16: dynamic %.4g, static %.4g\n", e_dyn, e_sta);
    assert_true(e_sta < 0.1 && e_dyn < 0.1);
    assert_true(memcmp(dyn, sta, (size_t)NP * V * 4) != 0); /* the static scales are used */
    free(bf), free(dyn), free(sta);
}

/* ---- rewritten checkpoints ---- */

typedef struct edit {
    const char *drop;    /* tensor left out */
    const char *name;    /* tensor replaced by `f32` values (shape [n]) */
    float f32[2];
    int n;
    const char *scale_q; /* <prefix>: codes halved in magnitude and weight_scale doubled */
    const char *to_bf16; /* <prefix>.weight written as bf16 (dequantized) */
} edit;

typedef struct wctx {
    const st_model *m;
    const st_tensor **src; /* per writer index: source tensor or NULL (owned bytes in own[]) */
    void **own;
} wctx;

static gm_status fill(void *ctx, int32_t i, void *dst, uint64_t nbytes)
{
    wctx *c = ctx;
    memcpy(dst, c->src[i] ? c->src[i]->data : c->own[i], nbytes);
    return GM_OK;
}

static int ends_with(const char *s, const char *pre, const char *suf)
{
    size_t a = strlen(pre);
    return !strncmp(s, pre, a) && !strcmp(s + a, suf);
}

/* Copy the static checkpoint into dir with one edit. */
static void rewrite(const char *dir, const edit *e)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp '%s/config.json' '%s/tokenizer.model' '%s/'", dir,
             dir, g_stat, g_stat, dir);
    assert_int_equal(system(cmd), 0);
    st_model *m = NULL;
    GOK(st_model_open(g_stat, &m));
    int32_t n = st_model_count(m);
    st_writer *w = st_writer_new();
    wctx c = {m, calloc((size_t)n + 1, sizeof(void *)), calloc((size_t)n + 1, sizeof(void *))};
    float wsc_q = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        const st_tensor *t = st_model_at(m, i);
        if (e->scale_q && ends_with(t->name, e->scale_q, ".weight_scale"))
            wsc_q = *(const float *)t->data;
    }
    for (int32_t i = 0; i < n; i++) {
        const st_tensor *t = st_model_at(m, i);
        if (e->drop && !strcmp(t->name, e->drop))
            continue;
        int32_t k;
        if (e->name && !strcmp(t->name, e->name)) {
            int64_t shape[1] = {e->n};
            float *v = malloc(sizeof e->f32);
            memcpy(v, e->f32, sizeof e->f32);
            k = st_writer_add(w, t->name, GM_DT_F32, 1, shape, NULL);
            c.own[k] = v;
        } else if (e->scale_q && ends_with(t->name, e->scale_q, ".weight")) {
            uint8_t *q = malloc((size_t)t->nbytes);
            for (uint64_t j = 0; j < t->nbytes; j++)
                q[j] = gm_f32_to_e4m3(gm_e4m3_to_f32(((const uint8_t *)t->data)[j]) * 0.5f);
            k = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, NULL);
            c.own[k] = q;
        } else if (e->scale_q && ends_with(t->name, e->scale_q, ".weight_scale")) {
            float *v = malloc(4);
            *v = 2.0f * wsc_q;
            k = st_writer_add(w, t->name, GM_DT_F32, t->ndim, t->shape, NULL);
            c.own[k] = v;
        } else if (e->to_bf16 && ends_with(t->name, e->to_bf16, ".weight")) {
            char sn[256];
            snprintf(sn, sizeof sn, "%s.weight_scale", e->to_bf16);
            float s = *(const float *)st_model_find(m, sn)->data;
            uint16_t *b = malloc((size_t)t->nbytes * 2);
            for (uint64_t j = 0; j < t->nbytes; j++)
                b[j] = gm_f32_to_bf16(gm_e4m3_to_f32(((const uint8_t *)t->data)[j]) * s);
            k = st_writer_add(w, t->name, GM_DT_BF16, t->ndim, t->shape, NULL);
            c.own[k] = b;
        } else {
            k = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, NULL);
            c.src[k] = t;
        }
        assert_true(k >= 0);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    GOK(st_writer_write(w, path, fill, &c));
    for (int32_t i = 0; i <= n; i++)
        free(c.own[i]);
    free(c.own), free(c.src);
    st_writer_destroy(&w);
    st_model_destroy(&m);
}

static void test_requantize_to_shared_scale(void **st)
{
    (void)st;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/rq", g_tmp);
    /* k_proj of layer 0 stored at half the code magnitude with twice the scale: the same values */
    edit e = {.scale_q = "model.layers.0.self_attn.k_proj"};
    rewrite(dir, &e);
    st_model *m = NULL;
    GOK(st_model_open(dir, &m));
    gm_model_config cfg;
    GOK(gm_config_load_dir(dir, &cfg));
    gm_tp_layout tp;
    GOK(gm_tp_layout_make(&cfg, 0, 1, &tp));
    gm_linear *lin = NULL;
    GOK(gm_linears_bind(m, &cfg, &tp, 0, &lin));
    const gm_linear *L = lin;
    assert_true(L[GM_LIN_Q].w_scale == L[GM_LIN_K].w_scale && L[GM_LIN_K].w_scale == L[GM_LIN_V].w_scale);
    const st_tensor *qs = st_model_find(m, "model.layers.0.self_attn.k_proj.weight_scale");
    assert_true(L[GM_LIN_K].w_scale == *(const float *)qs->data); /* the largest: k's doubled one */
    gm_linears_free(lin, (int64_t)cfg.num_layers * GM_LIN_COUNT);
    free(lin);
    st_model_destroy(&m);
    int32_t V = 0;
    float *a = logits_of(g_stat, GM_QUANT_NONE, &V), *b = logits_of(dir, GM_QUANT_NONE, &V);
    double err = nerr(b, a, (int64_t)NP * V);
    printf("requantized q/v of layer 0: logits normalized error %.4g vs the original\n", err);
    assert_true(err < 0.05);
    free(a), free(b);
}

/* One Linear without an input_scale: the whole model runs dynamic scales (as the CUDA engine can),
 * so its logits equal the uncalibrated checkpoint's bit for bit (same weight codes). */
static void test_partial_input_scales(void **st)
{
    (void)st;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/partial", g_tmp);
    edit e = {.drop = "model.layers.1.mlp.down_proj.input_scale"};
    rewrite(dir, &e);
    int32_t V = 0;
    float *a = logits_of(g_dyn, GM_QUANT_NONE, &V), *b = logits_of(dir, GM_QUANT_NONE, &V);
    assert_memory_equal(a, b, (size_t)NP * V * 4);
    free(a), free(b);
}

static void expect_error(const edit *e, const char *dir_name, gm_quant q, gm_status want, const char *needle)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", g_tmp, dir_name);
    rewrite(dir, e);
    gm_engine *eng = NULL;
    gm_status s = open_engine(dir, q, &eng);
    printf("%s: %s: %s\n", dir_name, gm_status_str(s), s ? gm_last_error() : "");
    assert_int_equal(s, want);
    assert_null(eng);
    if (needle)
        assert_non_null(strstr(gm_last_error(), needle));
}

static void test_broken_ckpts(void **st)
{
    (void)st;
    edit e1 = {.drop = "model.layers.1.mlp.down_proj.weight_scale"};
    expect_error(&e1, "noscale", GM_QUANT_NONE, GM_ERR_NOT_FOUND, "model.layers.1.mlp.down_proj.weight_scale");
    edit e2 = {.name = "model.layers.0.self_attn.o_proj.weight_scale", .f32 = {-1.0f}, .n = 1};
    expect_error(&e2, "negscale", GM_QUANT_NONE, GM_ERR_FORMAT, "o_proj.weight_scale");
    edit e3 = {.name = "model.layers.0.mlp.up_proj.input_scale", .f32 = {NAN}, .n = 1};
    expect_error(&e3, "nanscale", GM_QUANT_NONE, GM_ERR_FORMAT, "up_proj.input_scale");
    edit e4 = {.name = "model.layers.0.self_attn.q_proj.weight_scale", .f32 = {0.1f, 0.2f}, .n = 2};
    expect_error(&e4, "twoscales", GM_QUANT_NONE, GM_ERR_FORMAT, "one value");
    edit e5 = {.to_bf16 = "model.layers.0.mlp.gate_proj"};
    expect_error(&e5, "mixed", GM_QUANT_NONE, GM_ERR_UNSUPPORTED, "only some");
    edit e6 = {0};
    expect_error(&e6, "asawq", GM_QUANT_AWQ, GM_ERR_INVALID_ARG, "awq");
    edit e7 = {.name = "model.layers.1.self_attn.k_scale", .f32 = {0.0f}, .n = 1};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/kv0", g_tmp);
    rewrite(dir, &e7);
    st_model *m = NULL;
    GOK(st_model_open(dir, &m));
    float kv = 0.0f;
    assert_int_equal(gm_fp8_kv_scale(m, 1, &kv), GM_ERR_FORMAT);
    st_model_destroy(&m);
}

static int setup(void **st)
{
    (void)st;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/gm-fp8ckpt-%d", (int)getpid());
    snprintf(g_dyn, sizeof g_dyn, "%s/dyn", g_tmp);
    snprintf(g_stat, sizeof g_stat, "%s/static", g_tmp);
    mkdir(g_tmp, 0755);
    gm_fp8_quant_opts o;
    gm_fp8_quant_opts_init(&o);
    o.verbose = 0;
    if (gm_quantize_fp8_ex(g_model, g_dyn, &o) != GM_OK)
        return -1;
    o.calib_file = g_calib;
    return gm_quantize_fp8_ex(g_model, g_stat, &o) == GM_OK ? 0 : -1;
}

static int teardown(void **st)
{
    (void)st;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TINY_MODEL_DIR CALIB_TEXT\n", argv[0]);
        return 2;
    }
    g_model = argv[1];
    g_calib = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dynamic_ckpt_equals_quant_fp8),
        cmocka_unit_test(test_static_ckpt),
        cmocka_unit_test(test_requantize_to_shared_scale),
        cmocka_unit_test(test_partial_input_scales),
        cmocka_unit_test(test_broken_ckpts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
