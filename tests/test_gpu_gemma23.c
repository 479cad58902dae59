/* test_gpu_gemma23.c - the Gemma 2/3 options of the CUDA kernels against their CPU twins (kernels/cpu):
 * - the sandwich norm (k_norm_add_rmsnorm; k_norm_add_rmsnorm_fp8 bit for bit against it, static and dynamic
 *   scales, one-block and many-block paths);
 * - the scaled RoPE table and the QK-norm (k_rope_table, k_rope_kv_write_qkn);
 * - soft-capped and sliding-window attention: k_attn_decode (bf16 and FP8 KV, one split and many), the RoPE
 *   fold k_attn_decode_rope with QK-norm, and k_attn_prefill_kv (bf16 and FP8 KV; prompt chunks starting
 *   before, inside and past the window), windows shorter and longer than the context, soft-caps that bend
 *   the scores (0.7) and Gemma 2's (50);
 * - the final logit soft-cap (k_logits_softcap).
 * The attention reference is cpu_attention_paged_opts (double). Blocks wholly before the earliest window start
 * of a launch are NaN in the pools (their block-table entries point at a NaN block): a kernel that reads one
 * fails. Exit 77 without a GPU. */
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

#include "common/dtype.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/quant_fp8.h"
#include "kernels/cpu/rope_kv.h"
#include "kernels/cuda/attn_decode.cuh"
#include "kernels/cuda/attn_prefill.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/rope_kv.cuh"
#include "kernels/cuda/sample.cuh"
#include "tests/test_check.h"
#include "tests/test_gpu_util.h"

#define KV_SCALE 0.0125f /* FP8 pools: |k| <= 2 -> codes up to 160 */

/* ------------------------------------------------------------------ sandwich norm */

/* w1 = 1 + w for random small w; *wf the w the CPU twin takes. */
static float *norm_weight(int64_t n, float **wf)
{
    uint16_t *wb;
    rand_bf16(n, 0.5f, wf, &wb);
    float *w1 = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        w1[i] = 1.0f + (*wf)[i];
    free(wb);
    return w1;
}

/* k_norm_add_rmsnorm against cpu_rmsnorm twice (the delta's norm rounded to bf16, the add rounded), and its FP8
 * twin bit for bit against e4m3(bf16 output / scale). */
static void check_sandwich(int64_t n, int64_t dim, int delta_f32)
{
    float *xf, *df, *dwf, *wf;
    uint16_t *xb, *db;
    rand_bf16(n * dim, 4.0f, &xf, &xb);
    rand_bf16(n * dim, 30.0f, &df, &db); /* a large delta: its norm matters */
    float *dw1 = norm_weight(dim, &dwf), *w1 = norm_weight(dim, &wf);
    float *ddw = dev_put(dw1, (size_t)dim * 4), *dw = dev_put(w1, (size_t)dim * 4);
    void *dx = dev_put(xb, (size_t)(n * dim * 2));
    void *dd = delta_f32 ? dev_put(df, (size_t)(n * dim * 4)) : dev_put(db, (size_t)(n * dim * 2));
    void *dout = dev_poison_bf16(n * dim);
    GOK(k_norm_add_rmsnorm(dx, dd, delta_f32, ddw, dw, n, dim, 1e-6f, dout, 0));
    float *gh = get_bf16(dx, n * dim), *g = get_bf16(dout, n * dim);
    float *h = malloc((size_t)(n * dim) * 4), *c = malloc((size_t)(n * dim) * 4);
    cpu_rmsnorm(df, dwf, GM_DT_F32, n, dim, 1e-6f, h);
    for (int64_t i = 0; i < n * dim; i++)
        h[i] = gm_round_bf16(xf[i] + gm_round_bf16(h[i]));
    cpu_rmsnorm(h, wf, GM_DT_F32, n, dim, 1e-6f, c);
    char name[96];
    snprintf(name, sizeof name, "sandwich h [%lld x %lld] delta %s", (long long)n, (long long)dim,
             delta_f32 ? "f32" : "bf16");
    expect_close(name, gh, h, n * dim, 2e-3); /* a bf16 step where the two sums round differently */
    snprintf(name, sizeof name, "sandwich out [%lld x %lld]", (long long)n, (long long)dim);
    expect_close(name, g, c, n * dim, 8e-3);

    /* FP8: the same h and e4m3 codes of the bf16 output, static scale, then dynamic (the scale written too) */
    for (int mode = 0; mode < 2; mode++) {
        CK(cudaMemcpy(dx, xb, (size_t)(n * dim * 2), cudaMemcpyHostToDevice));
        float st = 0.02f, *dsc = dev_put(&st, 4), *damax = dev_put(NULL, 4);
        void *dtmp = dev_put(NULL, (size_t)(n * dim * 2)), *dq = dev_put(NULL, (size_t)(n * dim));
        k_fp8_act a = {dsc, mode ? damax : NULL, mode ? dtmp : NULL};
        GOK(k_norm_add_rmsnorm_fp8(dx, dd, delta_f32, ddw, dw, n, dim, 1e-6f, &a, dq, 0));
        float sc = st;
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(&sc, dsc, 4, cudaMemcpyDeviceToHost));
        if (mode)
            assert_true(sc == cpu_fp8_act_scale(g, n * dim)); /* g is bf16 already */
        uint8_t *q = malloc((size_t)(n * dim));
        CK(cudaMemcpy(q, dq, (size_t)(n * dim), cudaMemcpyDeviceToHost));
        int64_t bad = 0;
        for (int64_t i = 0; i < n * dim; i++)
            bad += q[i] != cpu_fp8_e4m3(g[i] * (1.0f / sc));
        float *gh2 = get_bf16(dx, n * dim);
        int h_same = !memcmp(gh2, gh, (size_t)(n * dim) * 4);
        printf("  sandwich fp8 %-7s [%lld x %lld]: %lld codes differ, h %s\n", mode ? "dynamic" : "static",
               (long long)n, (long long)dim, (long long)bad, h_same ? "same" : "differs");
        assert_int_equal(bad, 0);
        assert_memory_equal(gh2, gh, (size_t)(n * dim) * 4);
        free(q), free(gh2);
        cudaFree(dsc), cudaFree(damax), cudaFree(dtmp), cudaFree(dq);
    }
    assert_int_equal(k_norm_add_rmsnorm(dx, dd, delta_f32, NULL, dw, n, dim, 1e-6f, dout, 0), GM_ERR_INVALID_ARG);
    free(xf), free(xb), free(df), free(db), free(dwf), free(wf), free(dw1), free(w1);
    free(gh), free(g), free(h), free(c);
    cudaFree(ddw), cudaFree(dw), cudaFree(dx), cudaFree(dd), cudaFree(dout);
}

static void test_norm_sandwich(void **state)
{
    (void)state;
    check_sandwich(5, 2304, 0);  /* gemma2-2b, few rows: the one-block dynamic path */
    check_sandwich(19, 3840, 0); /* gemma3-12b, many rows */
    check_sandwich(3, 2560, 1);  /* tensor-parallel f32 delta */
    check_sandwich(12, 640, 1);
}

/* ------------------------------------------------------------------ RoPE (scaled) + QK-norm */

/* q, k [T, n, hd] as the GPU computes them before the KV write: QK-norm (w) rounded to bf16, then RoPE of base
 * theta and linear scaling `scale`, rounded to bf16. */
static void cpu_qkn_rope(float *x, int64_t T, int32_t n, int32_t hd, const float *w, const int32_t *pos, float theta,
                         float scale)
{
    if (w) {
        cpu_head_rmsnorm(x, T, n, hd, w, GM_DT_F32, 1e-6f);
        for (int64_t i = 0; i < T * n * hd; i++)
            x[i] = gm_round_bf16(x[i]);
    }
    cpu_rope_scaled(x, T, n, hd, pos, theta, scale);
    for (int64_t i = 0; i < T * n * hd; i++)
        x[i] = gm_round_bf16(x[i]);
}

static void check_rope_qkn(int32_t nh, int32_t nkv, int32_t hd, int64_t T, int32_t start, int32_t bs, float theta,
                           float scale)
{
    int64_t ld = (int64_t)(nh + 2 * nkv) * hd, qw = (int64_t)nh * hd, kw = (int64_t)nkv * hd;
    int32_t nb_seq = (start + (int32_t)T + bs - 1) / bs, pool_blocks = nb_seq + 3;
    int32_t *bt = malloc((size_t)nb_seq * 4), *pos = malloc((size_t)T * 4), *slot = malloc((size_t)T * 4);
    rand_table(bt, nb_seq, pool_blocks);
    for (int64_t t = 0; t < T; t++) {
        pos[t] = start + (int32_t)t;
        slot[t] = bt[pos[t] / bs] * bs + pos[t] % bs;
    }
    float *xf, *qwf, *kwf;
    uint16_t *xb;
    rand_bf16(T * ld, 3.0f, &xf, &xb);
    float *qw1 = norm_weight(hd, &qwf), *kw1 = norm_weight(hd, &kwf);
    float *dqw = dev_put(qw1, (size_t)hd * 4), *dkw = dev_put(kw1, (size_t)hd * 4);
    int64_t pool_elems = (int64_t)pool_blocks * nkv * bs * hd;
    void *dx = dev_put(xb, (size_t)(T * ld * 2)), *dk = dev_poison_bf16(pool_elems), *dv = dev_poison_bf16(pool_elems);
    int32_t max_pos = start + (int32_t)T;
    float *dtab = dev_put(NULL, (size_t)max_pos * (size_t)hd * 4);
    GOK(k_rope_table(dtab, max_pos, hd, theta, scale));
    int32_t *dpos = dev_put(pos, (size_t)T * 4), *dslot = dev_put(slot, (size_t)T * 4);
    const k_qk_norm qkn = {dqw, dkw, 1e-6f};
    GOK(k_rope_kv_write_qkn(dx, ld, T, nh, nkv, hd, dpos, dtab, &qkn, dslot, dk, dv, bs, 0));

    float *q = malloc((size_t)(T * qw) * 4), *k = malloc((size_t)(T * kw) * 4);
    for (int64_t t = 0; t < T; t++)
        qkv_row_split(xf + t * ld, qw, kw, q + t * qw, k + t * kw, NULL);
    cpu_qkn_rope(q, T, nh, hd, qwf, pos, theta, scale);
    cpu_qkn_rope(k, T, nkv, hd, kwf, pos, theta, scale);
    float *g = get_bf16(dx, T * ld), *gk = get_bf16(dk, pool_elems);
    float *gq = malloc((size_t)(T * qw) * 4), *ak = malloc((size_t)(T * kw) * 4);
    for (int64_t t = 0; t < T; t++) {
        memcpy(gq + t * qw, g + t * ld, (size_t)qw * 4);
        for (int32_t gi = 0; gi < nkv; gi++)
            memcpy(ak + (t * nkv + gi) * hd, gk + (((int64_t)bt[pos[t] / bs] * nkv + gi) * bs + pos[t] % bs) * hd,
                   (size_t)hd * 4);
    }
    char name[112];
    snprintf(name, sizeof name, "qk-norm+rope q [%lld x %d x %d] theta %g scale %g", (long long)T, nh, hd,
             (double)theta, (double)scale);
    expect_close(name, gq, q, T * qw, 1e-2);
    snprintf(name, sizeof name, "qk-norm+rope K pool [nkv %d]", nkv);
    expect_close(name, ak, k, T * kw, 1e-2);
    free(bt), free(pos), free(slot), free(xf), free(xb), free(qwf), free(kwf), free(qw1), free(kw1);
    free(q), free(k), free(g), free(gk), free(gq), free(ak);
    cudaFree(dqw), cudaFree(dkw), cudaFree(dx), cudaFree(dk), cudaFree(dv), cudaFree(dtab), cudaFree(dpos);
    cudaFree(dslot);
}

static void test_rope_qkn(void **state)
{
    (void)state;
    check_rope_qkn(8, 4, 256, 21, 0, 16, 1e6f, 8.0f);     /* gemma3-4b full layer: base 1e6, factor 8 */
    check_rope_qkn(8, 4, 256, 9, 5000, 16, 1e4f, 1.0f);   /* its sliding layers */
    check_rope_qkn(4, 1, 64, 17, 3, 7, 1e6f, 8.0f);       /* tiny-gemma3 */
    check_rope_qkn(16, 8, 128, 5, 100, 32, 1e4f, 1.0f);   /* head_dim 128 */
    assert_int_equal(k_rope_table(NULL, 8, 64, 1e4f, 0.0f), GM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------ KV pools with a NaN block */

/* Random pools for n_seqs sequences (make_pools) plus a last block of NaN; bf16, or e4m3 codes (fp8: kf/vf then
 * hold the codes' values times KV_SCALE, what the reference reads). */
typedef struct pools {
    int32_t blocks; /* including the NaN block, the last one */
    int64_t used;   /* elements before the NaN block */
    float *kf, *vf;
    void *dk, *dv;
} pools;

static void pools_make(const attn_case *ac, int32_t n_seqs, const int32_t *ctx, int32_t max_blocks, int32_t *bt,
                       int fp8, pools *p)
{
    uint16_t *kb, *vb;
    int32_t nb;
    make_pools(ac, n_seqs, ctx, max_blocks, bt, &nb, &p->kf, &kb, &p->vf, &vb);
    int64_t blk = (int64_t)ac->nkv * ac->bs * ac->hd, all = (nb + 1) * blk;
    p->blocks = nb + 1, p->used = nb * blk;
    p->kf = realloc(p->kf, (size_t)all * 4), p->vf = realloc(p->vf, (size_t)all * 4);
    for (int64_t i = p->used; i < all; i++)
        p->kf[i] = p->vf[i] = NAN;
    if (fp8) {
        uint8_t *k8 = malloc((size_t)all), *v8 = malloc((size_t)all);
        for (int64_t i = 0; i < p->used; i++) {
            k8[i] = cpu_fp8_e4m3(p->kf[i] / KV_SCALE), v8[i] = cpu_fp8_e4m3(p->vf[i] / KV_SCALE);
            p->kf[i] = gm_e4m3_to_f32(k8[i]) * KV_SCALE, p->vf[i] = gm_e4m3_to_f32(v8[i]) * KV_SCALE;
        }
        memset(k8 + p->used, 0x7f, (size_t)blk), memset(v8 + p->used, 0x7f, (size_t)blk); /* e4m3 NaN */
        p->dk = dev_put(k8, (size_t)all), p->dv = dev_put(v8, (size_t)all);
        free(k8), free(v8);
    } else {
        kb = realloc(kb, (size_t)all * 2), vb = realloc(vb, (size_t)all * 2);
        for (int64_t i = p->used; i < all; i++)
            kb[i] = vb[i] = 0x7fc0; /* bf16 NaN */
        p->dk = dev_put(kb, (size_t)all * 2), p->dv = dev_put(vb, (size_t)all * 2);
    }
    free(kb), free(vb);
}

static void pools_free(pools *p)
{
    free(p->kf), free(p->vf);
    cudaFree(p->dk), cudaFree(p->dv);
}

/* Point the block-table entries of blocks wholly before position lo at the NaN block. */
static void poison_before(const pools *p, int32_t *bt_row, int32_t bs, int32_t lo)
{
    for (int32_t j = 0; (j + 1) * bs <= lo; j++)
        bt_row[j] = p->blocks - 1;
}

/* ------------------------------------------------------------------ decode attention */

/* A decode launch's pools and block tables (B sequences of ctx[i] keys, the blocks before each one's window
 * pointed at the NaN block); *max_ctx, *max_blocks; *bt [B, max_blocks] (caller frees). */
static void decode_setup(const attn_case *ac, int32_t B, const int32_t *ctx, const k_attn_opts *opt, int fp8,
                         int32_t *max_ctx, int32_t *max_blocks, int32_t **bt, pools *p)
{
    *max_ctx = 0;
    for (int32_t i = 0; i < B; i++)
        *max_ctx = ctx[i] > *max_ctx ? ctx[i] : *max_ctx;
    *max_blocks = (*max_ctx + ac->bs - 1) / ac->bs + 1;
    *bt = malloc((size_t)(B * *max_blocks) * 4);
    pools_make(ac, B, ctx, *max_blocks, *bt, fp8, p);
    for (int32_t i = 0; i < B; i++)
        if (opt->window > 0)
            poison_before(p, *bt + i * *max_blocks, ac->bs, ctx[i] - opt->window);
}

/* k_attn_decode / k_attn_decode_fp8 with opt against cpu_attention_paged_opts. */
static void check_decode_opts(const attn_case *ac, int32_t B, const int32_t *ctx, k_attn_opts opt, int fp8, int ns1)
{
    int32_t max_ctx, max_blocks, *bt;
    pools p;
    decode_setup(ac, B, ctx, &opt, fp8, &max_ctx, &max_blocks, &bt, &p);
    int64_t qw = (int64_t)ac->nh * ac->hd;
    float *qf;
    uint16_t *qb;
    rand_bf16(B * qw, 2.0f, &qf, &qb);
    void *dq = dev_put(qb, (size_t)(B * qw * 2)), *dout = dev_poison_bf16(B * qw);
    int32_t *dbt = dev_put(bt, (size_t)(B * max_blocks) * 4), *dctx = dev_put(ctx, (size_t)B * 4);
    int32_t keys = opt.window > 0 && opt.window < max_ctx ? opt.window : max_ctx;
    int32_t ns = ns1 ? 1 : k_attn_decode_splits(B, ac->nkv, keys, 132);
    size_t sbytes = k_attn_decode_scratch_bytes(B, ac->nh, ac->nkv, ac->hd, ns);
    void *scratch = dev_put(NULL, sbytes);
    if (fp8)
        GOK(k_attn_decode_fp8(dq, qw, B, ac->nh, ac->nkv, ac->hd, p.dk, p.dv, ac->bs, dbt, max_blocks, dctx, &opt,
                              KV_SCALE, ns, scratch, dout, qw, NULL, NULL, 0));
    else
        GOK(k_attn_decode(dq, qw, B, ac->nh, ac->nkv, ac->hd, p.dk, p.dv, ac->bs, dbt, max_blocks, dctx, &opt, ns,
                          scratch, dout, qw, 0));
    float *g = get_bf16(dout, B * qw), *c = calloc((size_t)(B * qw), 4);
    const cpu_attn_opts co = {opt.scale, opt.softcap, opt.window};
    for (int32_t i = 0; i < B; i++)
        if (ctx[i] > 0)
            assert_int_equal(cpu_attention_paged_opts(qf + i * qw, 1, ctx[i] - 1, ac->nh, ac->nkv, ac->hd, p.kf, p.vf,
                                                      bt + i * max_blocks, ac->bs, &co, c + i * qw),
                             0);
    char name[128];
    snprintf(name, sizeof name, "decode%s nh %d nkv %d hd %d cap %g win %d split %d", fp8 ? " fp8" : "", ac->nh,
             ac->nkv, ac->hd, (double)opt.softcap, opt.window, ns);
    expect_close(name, g, c, B * qw, 1e-2);
    free(bt), free(qf), free(qb), free(g), free(c);
    pools_free(&p);
    cudaFree(dq), cudaFree(dout), cudaFree(dbt), cudaFree(dctx), cudaFree(scratch);
}

/* k_attn_decode_rope with QK-norm (Gemma 3) or without, and opt: against the QK-norm, RoPE, KV write and
 * cpu_attention_paged_opts on the CPU; the pool's new K too. */
static void check_decode_rope_opts(const attn_case *ac, int32_t B, const int32_t *ctx, k_attn_opts opt, int qk_norm)
{
    const float theta = 1e6f, rscale = 8.0f;
    int32_t max_ctx, max_blocks, *bt;
    pools p;
    decode_setup(ac, B, ctx, &opt, 0, &max_ctx, &max_blocks, &bt, &p);
    int64_t qw = (int64_t)ac->nh * ac->hd, kw = (int64_t)ac->nkv * ac->hd, ld = qw + 2 * kw;
    float *xf, *qwf, *kwf;
    uint16_t *xb;
    rand_bf16(B * ld, 2.0f, &xf, &xb);
    float *qw1 = norm_weight(ac->hd, &qwf), *kw1 = norm_weight(ac->hd, &kwf);
    int32_t *slot = malloc((size_t)B * 4), *pos = malloc((size_t)B * 4);
    for (int32_t i = 0; i < B; i++) {
        pos[i] = ctx[i] > 0 ? ctx[i] - 1 : 0;
        slot[i] = ctx[i] > 0 ? bt[i * max_blocks + pos[i] / ac->bs] * ac->bs + pos[i] % ac->bs : -1;
    }
    void *dx = dev_put(xb, (size_t)(B * ld * 2)), *dout = dev_poison_bf16(B * qw);
    float *dqw = dev_put(qw1, (size_t)ac->hd * 4), *dkw = dev_put(kw1, (size_t)ac->hd * 4);
    int32_t *dbt = dev_put(bt, (size_t)(B * max_blocks) * 4), *dctx = dev_put(ctx, (size_t)B * 4);
    int32_t *dslot = dev_put(slot, (size_t)B * 4);
    float *dtab = dev_put(NULL, (size_t)max_ctx * (size_t)ac->hd * 4);
    GOK(k_rope_table(dtab, max_ctx, ac->hd, theta, rscale));
    int32_t keys = opt.window > 0 && opt.window < max_ctx ? opt.window : max_ctx;
    int32_t ns = k_attn_decode_splits(B, ac->nkv, keys, 132);
    void *scratch = dev_put(NULL, k_attn_decode_scratch_bytes(B, ac->nh, ac->nkv, ac->hd, ns));
    const k_qk_norm qkn = {dqw, dkw, 1e-6f};
    GOK(k_attn_decode_rope(dx, ld, B, ac->nh, ac->nkv, ac->hd, p.dk, p.dv, ac->bs, dbt, max_blocks, dctx, dslot, dtab,
                           qk_norm ? &qkn : NULL, &opt, ns, scratch, dout, qw, NULL, NULL, 0));
    float *g = get_bf16(dout, B * qw), *c = calloc((size_t)(B * qw), 4);
    float *q = malloc((size_t)qw * 4), *k = malloc((size_t)kw * 4), *v = malloc((size_t)kw * 4);
    const cpu_attn_opts co = {opt.scale, opt.softcap, opt.window};
    for (int32_t i = 0; i < B; i++) {
        if (ctx[i] == 0)
            continue;
        qkv_row_split(xf + i * ld, qw, kw, q, k, v);
        cpu_qkn_rope(q, 1, ac->nh, ac->hd, qk_norm ? qwf : NULL, &pos[i], theta, rscale);
        cpu_qkn_rope(k, 1, ac->nkv, ac->hd, qk_norm ? kwf : NULL, &pos[i], theta, rscale);
        cpu_kv_write(p.kf, p.vf, bt + i * max_blocks, ac->bs, pos[i], 1, ac->nkv, ac->hd, k, v);
        assert_int_equal(cpu_attention_paged_opts(q, 1, pos[i], ac->nh, ac->nkv, ac->hd, p.kf, p.vf,
                                                  bt + i * max_blocks, ac->bs, &co, c + i * qw),
                         0);
    }
    char name[128];
    snprintf(name, sizeof name, "decode+rope%s nh %d nkv %d hd %d cap %g win %d", qk_norm ? "+qk-norm" : "", ac->nh,
             ac->nkv, ac->hd, (double)opt.softcap, opt.window);
    expect_close(name, g, c, B * qw, 1.5e-2);
    float *gk = get_bf16(p.dk, p.used);
    snprintf(name, sizeof name, "decode+rope%s K pool", qk_norm ? "+qk-norm" : "");
    expect_close(name, gk, p.kf, p.used, 1e-2);
    free(bt), free(xf), free(xb), free(qwf), free(kwf), free(qw1), free(kw1), free(slot), free(pos);
    free(g), free(c), free(q), free(k), free(v), free(gk);
    pools_free(&p);
    cudaFree(dx), cudaFree(dout), cudaFree(dqw), cudaFree(dkw), cudaFree(dbt), cudaFree(dctx), cudaFree(dslot);
    cudaFree(dtab), cudaFree(scratch);
}

static void test_decode_opts(void **state)
{
    (void)state;
    const float s256 = 1.0f / 16.0f, s144 = 1.0f / 12.0f; /* query_pre_attn_scalar 256, 144 (Gemma 2 27B) */
    attn_case g2 = {8, 4, 256, 16}, g4 = {4, 1, 256, 16}, tiny = {4, 2, 32, 7}, g128 = {16, 8, 128, 32};
    int32_t ctx1[5] = {1, 37, 1100, 0, 300}, ctx2[3] = {16, 17, 4097};
    /* windows shorter than some contexts, longer than all; soft-caps that bend (0.7), Gemma 2's (50) */
    check_decode_opts(&g2, 5, ctx1, (k_attn_opts){s256, 0.7f, 0}, 0, 0);
    check_decode_opts(&g2, 5, ctx1, (k_attn_opts){s256, 0.0f, 100}, 0, 0);
    check_decode_opts(&g2, 5, ctx1, (k_attn_opts){s256, 50.0f, 100}, 0, 1);
    check_decode_opts(&g2, 5, ctx1, (k_attn_opts){s256, 0.7f, 5000}, 0, 0);
    check_decode_opts(&g4, 3, ctx2, (k_attn_opts){s256, 0.7f, 16}, 0, 0);
    check_decode_opts(&g4, 3, ctx2, (k_attn_opts){s256, 0.0f, 1024}, 0, 0);
    check_decode_opts(&tiny, 5, ctx1, (k_attn_opts){0.125f, 0.7f, 16}, 0, 0);
    check_decode_opts(&g128, 3, ctx2, (k_attn_opts){s144, 50.0f, 33}, 0, 0);
    /* FP8 KV */
    check_decode_opts(&g2, 5, ctx1, (k_attn_opts){s256, 0.7f, 100}, 1, 0);
    check_decode_opts(&g2, 5, ctx1, (k_attn_opts){s256, 0.0f, 100}, 1, 1);
    check_decode_opts(&g4, 3, ctx2, (k_attn_opts){s256, 50.0f, 16}, 1, 0);
    check_decode_opts(&tiny, 5, ctx1, (k_attn_opts){0.125f, 0.7f, 0}, 1, 0);
    /* the RoPE fold: Gemma 3's QK-norm with and without a window, Gemma 2's options without QK-norm */
    int32_t ctx3[4] = {1, 70, 2000, 0};
    check_decode_rope_opts(&g2, 4, ctx3, (k_attn_opts){s256, 0.0f, 0}, 1);
    check_decode_rope_opts(&g2, 4, ctx3, (k_attn_opts){s256, 0.0f, 64}, 1);
    check_decode_rope_opts(&g4, 4, ctx3, (k_attn_opts){s256, 0.7f, 100}, 0);
    check_decode_rope_opts(&tiny, 4, ctx3, (k_attn_opts){0.125f, 0.0f, 16}, 1);
    /* bad options are errors */
    const k_attn_opts bad[3] = {{0.0f, 0.0f, 0}, {s256, -1.0f, 0}, {s256, 0.0f, -2}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(k_attn_decode(NULL, 256, 1, 8, 1, 256, NULL, NULL, 16, NULL, 1, NULL, &bad[i], 1, NULL, NULL,
                                       256, 0),
                         GM_ERR_INVALID_ARG);
    assert_int_equal(k_attn_decode(NULL, 256, 1, 8, 1, 256, NULL, NULL, 16, NULL, 1, NULL, NULL, 1, NULL, NULL, 256, 0),
                     GM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------ prefill attention */

static void check_prefill_opts(const attn_case *ac, int32_t n_seqs, const int32_t *start, const int32_t *nnew,
                               k_attn_opts opt, int fp8)
{
    int32_t ctx[8], max_ctx, max_new, T, qs[8];
    prefill_layout(n_seqs, start, nnew, ctx, qs, &max_ctx, &max_new, &T);
    int32_t max_blocks = (max_ctx + ac->bs - 1) / ac->bs;
    int32_t *bt = malloc((size_t)(n_seqs * max_blocks) * 4);
    pools p;
    pools_make(ac, n_seqs, ctx, max_blocks, bt, fp8, &p);
    for (int32_t i = 0; i < n_seqs; i++)
        if (opt.window > 0) /* the chunk's first query sees keys from start - window + 1 */
            poison_before(&p, bt + i * max_blocks, ac->bs, start[i] - opt.window + 1);
    int64_t qw = (int64_t)ac->nh * ac->hd;
    float *qf;
    uint16_t *qb;
    rand_bf16((int64_t)T * qw, 2.0f, &qf, &qb);
    void *dq = dev_put(qb, (size_t)((int64_t)T * qw * 2)), *dout = dev_poison_bf16((int64_t)T * qw);
    int32_t *dbt = dev_put(bt, (size_t)(n_seqs * max_blocks) * 4);
    int32_t *dqs = dev_put(qs, (size_t)n_seqs * 4), *dnn = dev_put(nnew, (size_t)n_seqs * 4),
            *dsp = dev_put(start, (size_t)n_seqs * 4);
    GOK(k_attn_prefill_kv(dq, qw, n_seqs, dqs, dnn, dsp, max_new, ac->nh, ac->nkv, ac->hd, p.dk, p.dv, ac->bs, dbt,
                          max_blocks, &opt, dout, qw, fp8, fp8 ? KV_SCALE : 1.0f, 0));
    float *g = get_bf16(dout, (int64_t)T * qw), *c = malloc((size_t)((int64_t)T * qw) * 4);
    const cpu_attn_opts co = {opt.scale, opt.softcap, opt.window};
    for (int32_t i = 0; i < n_seqs; i++)
        assert_int_equal(cpu_attention_paged_opts(qf + (int64_t)qs[i] * qw, nnew[i], start[i], ac->nh, ac->nkv,
                                                  ac->hd, p.kf, p.vf, bt + i * max_blocks, ac->bs, &co,
                                                  c + (int64_t)qs[i] * qw),
                         0);
    char name[128];
    snprintf(name, sizeof name, "prefill%s nh %d nkv %d hd %d T %d cap %g win %d", fp8 ? " fp8" : "", ac->nh, ac->nkv,
             ac->hd, T, (double)opt.softcap, opt.window);
    expect_close(name, g, c, (int64_t)T * qw, 1.5e-2);
    free(bt), free(qf), free(qb), free(g), free(c);
    pools_free(&p);
    cudaFree(dq), cudaFree(dout), cudaFree(dbt), cudaFree(dqs), cudaFree(dnn), cudaFree(dsp);
}

static void test_prefill_opts(void **state)
{
    (void)state;
    const float s256 = 1.0f / 16.0f;
    attn_case g2 = {8, 4, 256, 16}, g4 = {4, 1, 256, 16}, tiny = {4, 2, 32, 7}, g128 = {16, 8, 128, 32};
    /* chunks starting at 0, inside the window (start < window) and past it (start > window), one of 1 token */
    int32_t st1[4] = {0, 90, 500, 3}, nn1[4] = {130, 70, 45, 1};
    check_prefill_opts(&g2, 4, st1, nn1, (k_attn_opts){s256, 0.7f, 0}, 0);
    check_prefill_opts(&g2, 4, st1, nn1, (k_attn_opts){s256, 0.0f, 100}, 0);
    check_prefill_opts(&g2, 4, st1, nn1, (k_attn_opts){s256, 50.0f, 100}, 0);
    check_prefill_opts(&g4, 4, st1, nn1, (k_attn_opts){s256, 0.0f, 2000}, 0); /* longer than every context */
    check_prefill_opts(&tiny, 4, st1, nn1, (k_attn_opts){0.125f, 0.7f, 16}, 0);
    check_prefill_opts(&g128, 4, st1, nn1, (k_attn_opts){1.0f / 12.0f, 50.0f, 64}, 0);
    int32_t st2[1] = {0}, nn2[1] = {1500}; /* a long prompt over a short window: most tiles skip most keys */
    check_prefill_opts(&g4, 1, st2, nn2, (k_attn_opts){s256, 0.0f, 512}, 0);
    /* FP8 KV */
    check_prefill_opts(&g2, 4, st1, nn1, (k_attn_opts){s256, 0.7f, 100}, 1);
    check_prefill_opts(&tiny, 4, st1, nn1, (k_attn_opts){0.125f, 0.0f, 16}, 1);
    const k_attn_opts bad = {s256, 0.0f, -1};
    assert_int_equal(k_attn_prefill_kv(NULL, 256, 1, NULL, NULL, NULL, 1, 8, 1, 256, NULL, NULL, 16, NULL, 1, &bad,
                                       NULL, 256, 0, 1.0f, 0),
                     GM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------ final soft-cap */

static void test_logits_softcap(void **state)
{
    (void)state;
    const int32_t n = 3;
    const int64_t V = 1000, ld = 1024;
    float *x = malloc((size_t)(n * ld) * 4), *c = malloc((size_t)(n * V) * 4);
    for (int64_t i = 0; i < n * ld; i++)
        x[i] = nrand() * 40.0f;
    float *dx = dev_put(x, (size_t)(n * ld) * 4);
    GOK(k_logits_softcap(dx, ld, V, n, 30.0f, 0));
    float *g = get_f32(dx, n * ld), *gr = malloc((size_t)(n * V) * 4);
    for (int32_t r = 0; r < n; r++) {
        memcpy(c + r * V, x + r * ld, (size_t)V * 4);
        memcpy(gr + r * V, g + r * ld, (size_t)V * 4);
        for (int64_t i = V; i < ld; i++) /* the row's tail is not touched */
            assert_true(g[r * ld + i] == x[r * ld + i]);
    }
    cpu_softcap(c, n * V, 30.0f);
    expect_close("logits soft-cap 30 [3 x 1000]", gr, c, n * V, 1e-6);
    assert_int_equal(k_logits_softcap(dx, ld, V, n, 0.0f, 0), GM_ERR_INVALID_ARG);
    free(x), free(c), free(g), free(gr);
    cudaFree(dx);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *filter = getenv("GM_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_norm_sandwich), cmocka_unit_test(test_rope_qkn),       cmocka_unit_test(test_decode_opts),
        cmocka_unit_test(test_prefill_opts),  cmocka_unit_test(test_logits_softcap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
