/* test_gpu_ops.c - every CUDA kernel against its CPU twin (kernels/cpu) on random inputs at
 * Gemma's shapes, by normalized error ||gpu - cpu|| / ||cpu||. Inputs are drawn fresh for each
 * check and rounded to bf16 so both sides see the same values; GPU outputs are poisoned
 * (NaN) before each run so an unwritten element fails. Exit 77 without a GPU. */
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
#include "common/sampling.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/embed.h"
#include "kernels/cpu/geglu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/quant_fp8.h"
#include "kernels/cpu/rope_kv.h"
#include "kernels/cpu/sample.h"
#include "kernels/cuda/attn_decode.cuh"
#include "kernels/cuda/attn_prefill.cuh"
#include "kernels/cuda/embed.cuh"
#include "kernels/cuda/geglu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/rope_kv.cuh"
#include "kernels/cuda/sample.cuh"
#include "tests/test_check.h"
#include "tests/test_gpu_util.h"

/* e4m3 codes a kernel wrote for the o_proj (out8) against k_fp8_quantize's rule applied to the bf16
 * output the same kernel wrote without out8: e4m3_satfinite(bf16 * (1 / scale)), bit for bit. */
static void expect_codes(const char *what, const void *dcodes, const float *bf16_out, int64_t n, float scale)
{
    uint8_t *codes = malloc((size_t)n);
    CK(cudaMemcpy(codes, dcodes, (size_t)n, cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    float inv = 1.0f / scale;
    for (int64_t i = 0; i < n; i++)
        bad += codes[i] != cpu_fp8_e4m3(bf16_out[i] * inv);
    printf("  %-44s %lld of %lld e4m3 codes differ\n", what, (long long)bad, (long long)n);
    assert_int_equal(bad, 0);
    free(codes);
}

/* ------------------------------------------------------------------ embed */

static void test_embed(void **state)
{
    (void)state;
    int64_t V = 4096, H = 3072, n = 37;
    float *tf;
    uint16_t *tb;
    rand_bf16(V * H, 1.0f, &tf, &tb);
    int32_t ids[37];
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((frand() + 1.0f) * 0.5f * (float)V) % (int32_t)V;
    ids[5] = (int32_t)V - 1;
    ids[6] = 0;
    void *dt = dev_put(tb, (size_t)(V * H * 2));
    int32_t *di = dev_put(ids, sizeof ids);
    void *dout = dev_poison_bf16(n * H);
    float norm = gm_round_bf16(sqrtf((float)H));
    GOK(k_embed(dt, V, H, di, n, norm, dout, 0));
    float *g = get_bf16(dout, n * H), *c = malloc((size_t)(n * H) * sizeof(float));
    cpu_embed(tf, GM_DT_F32, H, ids, n, norm, c);
    expect_close("embed [37 x 3072]", g, c, n * H, 4e-3);
    /* gather rows */
    int32_t rows[3] = {36, 0, 7};
    int32_t *dr = dev_put(rows, sizeof rows);
    void *dg = dev_poison_bf16(3 * H);
    GOK(k_gather_rows(dout, H, dr, 3, H, dg, 0));
    float *gg = get_bf16(dg, 3 * H);
    for (int r = 0; r < 3; r++)
        assert_memory_equal(gg + r * H, g + rows[r] * H, (size_t)H * sizeof(float));
    free(gg), free(g), free(c), free(tf), free(tb);
    cudaFree(dt), cudaFree(di), cudaFree(dout), cudaFree(dr), cudaFree(dg);
}

/* ------------------------------------------------------------------ rmsnorm */

static void check_rmsnorm(int64_t n, int64_t dim, int delta_f32)
{
    float *xf, *wf, *df;
    uint16_t *xb, *wb, *db;
    rand_bf16(n * dim, 4.0f, &xf, &xb);
    rand_bf16(dim, 0.5f, &wf, &wb);
    rand_bf16(n * dim, 2.0f, &df, &db);
    float *w1 = malloc((size_t)dim * sizeof(float));
    for (int64_t i = 0; i < dim; i++)
        w1[i] = 1.0f + wf[i];
    float *dw = dev_put(w1, (size_t)dim * 4);
    void *dx = dev_put(xb, (size_t)(n * dim * 2));
    void *dout = dev_poison_bf16(n * dim);
    float *c = malloc((size_t)(n * dim) * sizeof(float));
    char name[96];

    /* plain */
    GOK(k_rmsnorm(dx, dim, dw, n, dim, 1e-6f, dout, dim, 0));
    float *g = get_bf16(dout, n * dim);
    cpu_rmsnorm(xf, wf, GM_DT_F32, n, dim, 1e-6f, c);
    snprintf(name, sizeof name, "rmsnorm [%lld x %lld]", (long long)n, (long long)dim);
    expect_close(name, g, c, n * dim, 8e-3);
    free(g);

    /* fused residual add: h = bf16(h + delta), out = norm(h) */
    void *dd = delta_f32 ? dev_put(df, (size_t)(n * dim * 4)) : dev_put(db, (size_t)(n * dim * 2));
    CK(cudaMemset(dout, 0xff, (size_t)(n * dim * 2)));
    GOK(k_add_rmsnorm(dx, dd, delta_f32, dw, n, dim, 1e-6f, dout, 0));
    float *gh = get_bf16(dx, n * dim);
    g = get_bf16(dout, n * dim);
    float *h = malloc((size_t)(n * dim) * sizeof(float));
    for (int64_t i = 0; i < n * dim; i++)
        h[i] = gm_round_bf16(xf[i] + df[i]);
    assert_memory_equal(gh, h, (size_t)(n * dim) * sizeof(float)); /* the add rounds exactly once */
    cpu_rmsnorm(h, wf, GM_DT_F32, n, dim, 1e-6f, c);
    snprintf(name, sizeof name, "add+rmsnorm [%lld x %lld] delta %s", (long long)n, (long long)dim,
             delta_f32 ? "f32" : "bf16");
    expect_close(name, g, c, n * dim, 8e-3);
    free(g), free(gh), free(h), free(c), free(w1);
    free(xf), free(xb), free(wf), free(wb), free(df), free(db);
    cudaFree(dw), cudaFree(dx), cudaFree(dout), cudaFree(dd);
}

static void test_rmsnorm(void **state)
{
    (void)state;
    check_rmsnorm(33, 2048, 0);
    check_rmsnorm(5, 3072, 1);
    check_rmsnorm(3, 128, 0);
}

/* ------------------------------------------------------------------ rope + kv write */

static void check_rope_kv(int32_t nh, int32_t nkv, int32_t hd, int64_t T, int32_t start, int32_t bs)
{
    int64_t ld = (int64_t)(nh + 2 * nkv) * hd;
    int32_t nb_seq = (start + (int32_t)T + bs - 1) / bs, pool_blocks = nb_seq + 5;
    int32_t *bt = malloc((size_t)nb_seq * sizeof(int32_t));
    rand_table(bt, nb_seq, pool_blocks);
    int32_t *pos = malloc((size_t)T * 4), *slot = malloc((size_t)T * 4);
    for (int64_t t = 0; t < T; t++) {
        pos[t] = start + (int32_t)t;
        slot[t] = bt[pos[t] / bs] * bs + pos[t] % bs;
    }
    slot[T - 1] = -1; /* a padding row: rotated in place, not written to the pool */
    float *qf;
    uint16_t *qb;
    rand_bf16(T * ld, 2.0f, &qf, &qb);
    void *dq = dev_put(qb, (size_t)(T * ld * 2));
    int64_t pool_elems = (int64_t)pool_blocks * nkv * bs * hd;
    void *dk = dev_poison_bf16(pool_elems), *dv = dev_poison_bf16(pool_elems);
    int32_t max_pos = start + (int32_t)T;
    float *dinv = dev_put(NULL, (size_t)max_pos * (size_t)hd * 4);
    GOK(k_rope_table(dinv, max_pos, hd, 10000.0f, 1.0f));
    int32_t *dpos = dev_put(pos, (size_t)T * 4), *dslot = dev_put(slot, (size_t)T * 4);
    GOK(k_rope_kv_write(dq, ld, T, nh, nkv, hd, dpos, dinv, dslot, dk, dv, bs, 0));

    /* CPU: split q/k/v, rope q and k, write k and v */
    int64_t qw = (int64_t)nh * hd, kw = (int64_t)nkv * hd;
    float *q = malloc((size_t)(T * qw) * 4), *k = malloc((size_t)(T * kw) * 4), *v = malloc((size_t)(T * kw) * 4);
    for (int64_t t = 0; t < T; t++) {
        memcpy(q + t * qw, qf + t * ld, (size_t)qw * 4);
        memcpy(k + t * kw, qf + t * ld + qw, (size_t)kw * 4);
        memcpy(v + t * kw, qf + t * ld + qw + kw, (size_t)kw * 4);
    }
    cpu_rope(q, T, nh, hd, pos, 10000.0f);
    cpu_rope(k, T, nkv, hd, pos, 10000.0f);
    float *kp = calloc((size_t)pool_elems, 4), *vp = calloc((size_t)pool_elems, 4);
    cpu_kv_write(kp, vp, bt, bs, start, T - 1, nkv, hd, k, v);

    float *g = get_bf16(dq, T * ld);
    float *gq = malloc((size_t)(T * qw) * 4);
    for (int64_t t = 0; t < T; t++)
        memcpy(gq + t * qw, g + t * ld, (size_t)qw * 4);
    char name[96];
    snprintf(name, sizeof name, "rope q [%lld x %d x %d] pos %d..", (long long)T, nh, hd, start);
    expect_close(name, gq, q, T * qw, 1e-2);
    /* pool: compare the written slots only; the padding row's slot must stay poisoned */
    float *gk = get_bf16(dk, pool_elems), *gv = get_bf16(dv, pool_elems);
    int64_t nw = (T - 1) * kw;
    float *ak = malloc((size_t)nw * 4), *ck = malloc((size_t)nw * 4), *av = malloc((size_t)nw * 4),
          *cv = malloc((size_t)nw * 4);
    for (int64_t t = 0; t < T - 1; t++)
        for (int32_t gi = 0; gi < nkv; gi++) {
            int64_t off = (((int64_t)bt[pos[t] / bs] * nkv + gi) * bs + pos[t] % bs) * hd;
            memcpy(ak + (t * nkv + gi) * hd, gk + off, (size_t)hd * 4);
            memcpy(ck + (t * nkv + gi) * hd, kp + off, (size_t)hd * 4);
            memcpy(av + (t * nkv + gi) * hd, gv + off, (size_t)hd * 4);
            memcpy(cv + (t * nkv + gi) * hd, vp + off, (size_t)hd * 4);
        }
    snprintf(name, sizeof name, "rope+kv write K [nkv %d]", nkv);
    expect_close(name, ak, ck, nw, 1e-2);
    assert_memory_equal(av, cv, (size_t)nw * 4); /* V is copied exactly */
    {
        int32_t p = pos[T - 1];
        int64_t off = (((int64_t)bt[p / bs] * nkv) * bs + p % bs) * hd;
        if (p / bs < nb_seq)
            assert_true(isnan(gk[off]));
    }
    free(ak), free(ck), free(av), free(cv), free(gk), free(gv), free(g), free(gq);
    free(q), free(k), free(v), free(kp), free(vp), free(qf), free(qb), free(bt), free(pos), free(slot);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dinv), cudaFree(dpos), cudaFree(dslot);
}

static void test_rope_kv(void **state)
{
    (void)state;
    check_rope_kv(8, 1, 256, 19, 0, 16);      /* 2b */
    check_rope_kv(16, 16, 256, 7, 8100, 16);  /* 7b, far positions */
    check_rope_kv(4, 2, 32, 23, 5, 7);        /* tiny, odd block size */
}

/* ------------------------------------------------------------------ geglu */

static void test_geglu(void **state)
{
    (void)state;
    int64_t T = 7, n = 16384;
    float *f;
    uint16_t *b;
    rand_bf16(T * 2 * n, 3.0f, &f, &b);
    void *d = dev_put(b, (size_t)(T * 2 * n * 2));
    void *o = dev_poison_bf16(T * n);
    GOK(k_geglu(d, T, n, o, 0));
    float *g = get_bf16(o, T * n);
    float *gate = malloc((size_t)(T * n) * 4), *up = malloc((size_t)(T * n) * 4), *c = malloc((size_t)(T * n) * 4);
    for (int64_t t = 0; t < T; t++) {
        memcpy(gate + t * n, f + t * 2 * n, (size_t)n * 4);
        memcpy(up + t * n, f + t * 2 * n + n, (size_t)n * 4);
    }
    cpu_geglu(gate, up, T, n, c);
    expect_close("geglu [7 x 16384]", g, c, T * n, 1e-2);
    free(g), free(gate), free(up), free(c), free(f), free(b);
    cudaFree(d), cudaFree(o);
}

/* ------------------------------------------------------------------ gemm */

static void check_gemm(k_gemm_ctx *gc, int path, int64_t T, int64_t K, int64_t N, int yf32)
{
    float *xf, *wf;
    uint16_t *xb, *wb;
    rand_bf16(T * K, 1.0f, &xf, &xb);
    rand_bf16(N * K, 0.05f, &wf, &wb);
    void *dx = dev_put(xb, (size_t)(T * K * 2)), *dw = dev_put(wb, (size_t)(N * K * 2));
    void *dy = dev_put(NULL, (size_t)(T * N * (yf32 ? 4 : 2)));
    CK(cudaMemset(dy, 0xff, (size_t)(T * N * (yf32 ? 4 : 2))));
    if (path == 0)
        GOK(k_gemm_bf16(gc, dx, T, K, K, dw, K, N, dy, yf32, N, 0));
    else if (path == 1)
        GOK(k_gemm_bf16_lt(gc, dx, T, K, K, dw, K, N, dy, yf32, N, 0));
    else
        GOK(k_gemv_bf16(dx, T, K, K, dw, K, N, dy, yf32, N, 0));
    float *g = yf32 ? get_f32(dy, T * N) : get_bf16(dy, T * N);
    float *c = malloc((size_t)(T * N) * 4);
    cpu_matmul(xf, T, K, K, wb, GM_DT_BF16, K, N, c, N);
    char name[96];
    snprintf(name, sizeof name, "%s T=%lld K=%lld N=%lld -> %s", path == 0 ? "gemm" : path == 1 ? "cublasLt" : "gemv",
             (long long)T, (long long)K, (long long)N, yf32 ? "f32" : "bf16");
    expect_close(name, g, c, T * N, yf32 ? 1e-4 : 6e-3);
    free(g), free(c), free(xf), free(xb), free(wf), free(wb);
    cudaFree(dx), cudaFree(dw), cudaFree(dy);
}

static void test_gemm(void **state)
{
    (void)state;
    k_gemm_ctx *gc = NULL;
    GOK(k_gemm_ctx_new(0, &gc));
    check_gemm(gc, 2, 1, 2048, 2560, 0);    /* 2b qkv, gemv */
    check_gemm(gc, 1, 1, 2048, 2560, 0);    /* same, cuBLASLt */
    check_gemm(gc, 2, 3, 16384, 2048, 0);   /* 2b down, 3 rows */
    check_gemm(gc, 2, 8, 3072, 1024, 1);    /* 8 rows, f32 out */
    check_gemm(gc, 1, 64, 3072, 4096 + 2 * 4096, 0); /* 7b qkv, a batch */
    check_gemm(gc, 0, 200, 4096, 3072, 1);  /* 7b o_proj, f32 out (tp > 1 path) */
    check_gemm(gc, 0, 2, 2048, 32000, 1);   /* LM-head-like, f32 logits */
    check_gemm(gc, 0, 37, 24576 / 8, 3072, 0);
    check_gemm(gc, 2, 1, 24576, 3072, 0);   /* 7b down: one column per block */
    check_gemm(gc, 2, 6, 3072, 1000, 1);    /* 4 + 2 rows, N not a multiple of the block's columns */
    check_gemm(gc, 2, 2, 4096, 3072, 0);    /* 7b o_proj */
    assert_true(k_gemm_ctx_cached(gc) >= 3);
    k_gemm_ctx_destroy(&gc);
    assert_null(gc);
}

static void check_geglu_gemm(k_gemm_ctx *gc, int64_t T, int64_t K, int64_t ni)
{
    float *xf, *wf;
    uint16_t *xb, *wb;
    rand_bf16(T * K, 1.0f, &xf, &xb);
    rand_bf16(2 * ni * K, 0.05f, &wf, &wb);
    void *dx = dev_put(xb, (size_t)(T * K * 2)), *dw = dev_put(wb, (size_t)(2 * ni * K * 2));
    void *dgu = dev_put(NULL, (size_t)(T * 2 * ni * 2)), *dact = dev_poison_bf16(T * ni);
    GOK(k_gemm_bf16_geglu(gc, dx, T, K, K, dw, K, ni, dgu, dact, 0));
    float *g = get_bf16(dact, T * ni);
    float *gu = malloc((size_t)(T * 2 * ni) * 4), *gate = malloc((size_t)(T * ni) * 4), *up = malloc((size_t)(T * ni) * 4);
    float *c = malloc((size_t)(T * ni) * 4);
    cpu_matmul(xf, T, K, K, wb, GM_DT_BF16, K, 2 * ni, gu, 2 * ni);
    for (int64_t t = 0; t < T; t++) {
        memcpy(gate + t * ni, gu + t * 2 * ni, (size_t)ni * 4);
        memcpy(up + t * ni, gu + t * 2 * ni + ni, (size_t)ni * 4);
    }
    cpu_geglu(gate, up, T, ni, c);
    char name[96];
    snprintf(name, sizeof name, "gate_up+geglu T=%lld K=%lld ni=%lld", (long long)T, (long long)K, (long long)ni);
    expect_close(name, g, c, T * ni, 1e-2);
    free(g), free(gu), free(gate), free(up), free(c), free(xf), free(xb), free(wf), free(wb);
    cudaFree(dx), cudaFree(dw), cudaFree(dgu), cudaFree(dact);
}

static void test_gemm_geglu(void **state)
{
    (void)state;
    k_gemm_ctx *gc = NULL;
    GOK(k_gemm_ctx_new(0, &gc));
    check_geglu_gemm(gc, 1, 2048, 16384); /* fused GEMV epilogue */
    check_geglu_gemm(gc, 2, 3072, 24576);
    check_geglu_gemm(gc, 9, 2048, 4096);  /* cuBLASLt, then k_geglu */
    k_gemm_ctx_destroy(&gc);
}

/* ------------------------------------------------------------------ attention */

/* k_attn_decode (fp8 = 0) or k_attn_decode_fp8 (fp8 = 1: the pools hold e4m3 codes of the random values,
 * the reference reads the codes' exact values times kv_scale) against cpu_attention_paged; the FP8
 * kernel's e4m3 output (the o_proj's input) against k_fp8_quantize's rule, saturating too. */
static void check_decode(const attn_case *ac, int32_t B, const int32_t *ctx, int32_t n_split_override, int fp8)
{
    const float kv_scale = 0.0125f; /* |k| <= 2 -> codes up to 160 */
    int32_t max_ctx = 0;
    for (int32_t i = 0; i < B; i++)
        max_ctx = ctx[i] > max_ctx ? ctx[i] : max_ctx;
    int32_t max_blocks = (max_ctx + ac->bs - 1) / ac->bs + 1, pool_blocks;
    int32_t *bt = malloc((size_t)(B * max_blocks) * 4);
    float *kf, *vf, *qf;
    uint16_t *kb, *vb, *qb;
    make_pools(ac, B, ctx, max_blocks, bt, &pool_blocks, &kf, &kb, &vf, &vb);
    int64_t elems = (int64_t)pool_blocks * ac->nkv * ac->bs * ac->hd, qw = (int64_t)ac->nh * ac->hd;
    void *dk, *dv;
    if (fp8) {
        uint8_t *k8 = malloc((size_t)elems), *v8 = malloc((size_t)elems);
        for (int64_t i = 0; i < elems; i++) {
            k8[i] = cpu_fp8_e4m3(kf[i] / kv_scale);
            v8[i] = cpu_fp8_e4m3(vf[i] / kv_scale);
            kf[i] = gm_e4m3_to_f32(k8[i]) * kv_scale;
            vf[i] = gm_e4m3_to_f32(v8[i]) * kv_scale;
        }
        dk = dev_put(k8, (size_t)elems), dv = dev_put(v8, (size_t)elems);
        free(k8), free(v8);
    } else {
        dk = dev_put(kb, (size_t)elems * 2), dv = dev_put(vb, (size_t)elems * 2);
    }
    rand_bf16(B * qw, 2.0f, &qf, &qb);
    void *dq = dev_put(qb, (size_t)(B * qw * 2));
    int32_t *dbt = dev_put(bt, (size_t)(B * max_blocks) * 4), *dctx = dev_put(ctx, (size_t)B * 4);
    void *dout = dev_poison_bf16(B * qw);
    int32_t ns = n_split_override > 0 ? n_split_override : k_attn_decode_splits(B, ac->nkv, max_ctx, 132);
    size_t sbytes = k_attn_decode_scratch_bytes(B, ac->nh, ac->nkv, ac->hd, ns);
    void *scratch = dev_put(NULL, sbytes);
    CK(cudaMemset(scratch, 0, sbytes));
    float scale = 1.0f / sqrtf((float)ac->hd);
    const k_attn_opts ao = {scale, 0.0f, 0};
    for (int call = 0; call < 2; call++) { /* the same call twice, on the same scratch */
        CK(cudaMemset(dout, 0xff, (size_t)(B * qw * 2)));
        if (fp8)
            GOK(k_attn_decode_fp8(dq, qw, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx, &ao,
                                  kv_scale, ns, scratch, dout, qw, NULL, NULL, 0));
        else
            GOK(k_attn_decode(dq, qw, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx, &ao, ns,
                              scratch, dout, qw, 0));
    }
    float *g = get_bf16(dout, B * qw), *c = calloc((size_t)(B * qw), 4);
    for (int32_t i = 0; i < B; i++)
        if (ctx[i] > 0)
            cpu_attention_paged(qf + i * qw, 1, ctx[i] - 1, ac->nh, ac->nkv, ac->hd, kf, vf, bt + i * max_blocks,
                                ac->bs, scale, c + i * qw);
    char name[96];
    snprintf(name, sizeof name, "decode attn%s nh %d nkv %d hd %d B %d split %d", fp8 ? " fp8" : "", ac->nh, ac->nkv,
             ac->hd, B, ns);
    expect_close(name, g, c, B * qw, 1e-2);
    for (int32_t i = 0; i < B; i++)
        if (ctx[i] == 0)
            for (int64_t j = 0; j < qw; j++)
                assert_true(g[i * qw + j] == 0.0f);
    if (fp8) {
        float osc[2] = {0.003f, 0.0005f}; /* the second saturates: |O| / scale past 448 */
        float *dosc = dev_put(NULL, 4);
        void *d8 = dev_put(NULL, (size_t)(B * qw));
        for (int k = 0; k < 2; k++) {
            CK(cudaMemcpy(dosc, &osc[k], 4, cudaMemcpyHostToDevice));
            CK(cudaMemset(d8, 0x7f, (size_t)(B * qw)));
            GOK(k_attn_decode_fp8(dq, qw, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx, &ao,
                                  kv_scale, ns, scratch, dout, qw, d8, dosc, 0));
            expect_codes(k ? "decode attn fp8, e4m3 output, saturating" : "decode attn fp8, e4m3 output", d8, g,
                         B * qw, osc[k]);
        }
        /* an e4m3 output needs its scale; the pool's scale must be positive */
        assert_int_equal(k_attn_decode_fp8(dq, qw, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx,
                                           &ao, kv_scale, ns, scratch, dout, qw, d8, NULL, 0),
                         GM_ERR_INVALID_ARG);
        assert_int_equal(k_attn_decode_fp8(dq, qw, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx,
                                           &ao, 0.0f, ns, scratch, dout, qw, NULL, NULL, 0),
                         GM_ERR_INVALID_ARG);
        cudaFree(d8), cudaFree(dosc);
    }
    free(g), free(c), free(kf), free(kb), free(vf), free(vb), free(qf), free(qb), free(bt);
    cudaFree(dk), cudaFree(dv), cudaFree(dq), cudaFree(dbt), cudaFree(dctx), cudaFree(dout), cudaFree(scratch);
}

/* k_attn_decode_rope: the new token's q/k/v come unrotated in a qkv row; the kernel rotates,
 * writes k/v to the pool and attends. CPU: rope, kv write, then attention. */
static void check_decode_rope(const attn_case *ac, int32_t B, const int32_t *ctx)
{
    int32_t max_ctx = 0;
    for (int32_t i = 0; i < B; i++)
        max_ctx = ctx[i] > max_ctx ? ctx[i] : max_ctx;
    int32_t max_blocks = (max_ctx + ac->bs - 1) / ac->bs + 1, pool_blocks;
    int32_t *bt = malloc((size_t)(B * max_blocks) * 4);
    float *kf, *vf, *xf;
    uint16_t *kb, *vb, *xb;
    make_pools(ac, B, ctx, max_blocks, bt, &pool_blocks, &kf, &kb, &vf, &vb);
    int64_t elems = (int64_t)pool_blocks * ac->nkv * ac->bs * ac->hd, qw = (int64_t)ac->nh * ac->hd;
    int64_t kw = (int64_t)ac->nkv * ac->hd, ld = qw + 2 * kw;
    rand_bf16(B * ld, 2.0f, &xf, &xb);
    int32_t *slot = malloc((size_t)B * 4), *pos = malloc((size_t)B * 4);
    for (int32_t i = 0; i < B; i++) {
        pos[i] = ctx[i] > 0 ? ctx[i] - 1 : 0;
        slot[i] = ctx[i] > 0 ? bt[i * max_blocks + pos[i] / ac->bs] * ac->bs + pos[i] % ac->bs : -1;
    }
    void *dk = dev_put(kb, (size_t)elems * 2), *dv = dev_put(vb, (size_t)elems * 2), *dx = dev_put(xb, (size_t)(B * ld * 2));
    int32_t *dbt = dev_put(bt, (size_t)(B * max_blocks) * 4), *dctx = dev_put(ctx, (size_t)B * 4);
    int32_t *dslot = dev_put(slot, (size_t)B * 4);
    float *dtab = dev_put(NULL, (size_t)max_ctx * (size_t)ac->hd * 4);
    GOK(k_rope_table(dtab, max_ctx, ac->hd, 10000.0f, 1.0f));
    void *dout = dev_poison_bf16(B * qw);
    int32_t ns = k_attn_decode_splits(B, ac->nkv, max_ctx, 132);
    size_t sbytes = k_attn_decode_scratch_bytes(B, ac->nh, ac->nkv, ac->hd, ns);
    void *scratch = dev_put(NULL, sbytes);
    CK(cudaMemset(scratch, 0, sbytes));
    float scale = 1.0f / sqrtf((float)ac->hd);
    const k_attn_opts ao = {scale, 0.0f, 0};
    GOK(k_attn_decode_rope(dx, ld, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx, dslot, dtab,
                           NULL, &ao, ns, scratch, dout, qw, NULL, NULL, 0));
    float *g = get_bf16(dout, B * qw), *c = calloc((size_t)(B * qw), 4);
    { /* the same step with the output as e4m3 codes under a static scale (the o_proj's FP8 input) */
        float osc = 0.004f, *dosc = dev_put(&osc, 4);
        void *d8 = dev_put(NULL, (size_t)(B * qw));
        CK(cudaMemset(d8, 0x7f, (size_t)(B * qw)));
        GOK(k_attn_decode_rope(dx, ld, B, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt, max_blocks, dctx, dslot,
                               dtab, NULL, &ao, ns, scratch, dout, qw, d8, dosc, 0));
        expect_codes("decode attn+rope, e4m3 output", d8, g, B * qw, osc);
        cudaFree(d8), cudaFree(dosc);
    }
    float *q = malloc((size_t)qw * 4), *k = malloc((size_t)kw * 4), *v = malloc((size_t)kw * 4);
    for (int32_t i = 0; i < B; i++) {
        if (ctx[i] == 0)
            continue;
        qkv_row_split(xf + i * ld, qw, kw, q, k, v);
        cpu_rope(q, 1, ac->nh, ac->hd, &pos[i], 10000.0f);
        cpu_rope(k, 1, ac->nkv, ac->hd, &pos[i], 10000.0f);
        for (int64_t j = 0; j < qw; j++) /* the GPU rounds rotated q to bf16 as HF does */
            q[j] = gm_round_bf16(q[j]);
        for (int64_t j = 0; j < kw; j++)
            k[j] = gm_round_bf16(k[j]);
        cpu_kv_write(kf, vf, bt + i * max_blocks, ac->bs, pos[i], 1, ac->nkv, ac->hd, k, v);
        cpu_attention_paged(q, 1, pos[i], ac->nh, ac->nkv, ac->hd, kf, vf, bt + i * max_blocks, ac->bs, scale,
                            c + i * qw);
    }
    char name[96];
    snprintf(name, sizeof name, "decode attn+rope nh %d nkv %d hd %d B %d split %d", ac->nh, ac->nkv, ac->hd, B, ns);
    expect_close(name, g, c, B * qw, 1.5e-2);
    float *gk = get_bf16(dk, elems), *gv = get_bf16(dv, elems);
    snprintf(name, sizeof name, "decode attn+rope K pool nkv %d", ac->nkv);
    expect_close(name, gk, kf, elems, 1e-2);
    assert_memory_equal(gv, vf, (size_t)elems * 4);
    free(g), free(c), free(q), free(k), free(v), free(gk), free(gv), free(kf), free(kb), free(vf), free(vb);
    free(xf), free(xb), free(bt), free(slot), free(pos);
    cudaFree(dk), cudaFree(dv), cudaFree(dx), cudaFree(dbt), cudaFree(dctx), cudaFree(dslot), cudaFree(dtab);
    cudaFree(dout), cudaFree(scratch);
}

static void test_attn_decode(void **state)
{
    (void)state;
    attn_case mqa = {8, 1, 256, 16}, mha = {16, 16, 256, 16}, tiny = {4, 2, 32, 7}, gqa = {8, 2, 128, 32};
    int32_t ctx1[4] = {1, 37, 1100, 0};
    check_decode(&mqa, 4, ctx1, 0, 0);
    check_decode(&mqa, 4, ctx1, 1, 0);
    int32_t ctx2[3] = {300, 5, 4097};
    check_decode(&mha, 3, ctx2, 0, 0);
    check_decode(&tiny, 4, ctx1, 0, 0);
    check_decode(&gqa, 3, ctx2, 0, 0);
    int32_t ctx3[4] = {1, 70, 2000, 0};
    check_decode_rope(&mqa, 4, ctx3);
    check_decode_rope(&mha, 3, ctx2);
    check_decode_rope(&tiny, 4, ctx3);
    /* FP8 e4m3 pools: MQA, MHA (7b), GQA, tiny (hd 32, odd block size), one split and many */
    attn_case gqa64 = {8, 4, 64, 16};
    check_decode(&mqa, 4, ctx1, 0, 1);
    check_decode(&mqa, 4, ctx1, 1, 1);
    check_decode(&mha, 3, ctx2, 0, 1);
    check_decode(&mha, 3, ctx2, 1, 1);
    check_decode(&gqa, 3, ctx2, 0, 1);
    check_decode(&tiny, 4, ctx1, 0, 1);
    check_decode(&gqa64, 4, ctx3, 0, 1);
}

static void check_prefill(const attn_case *ac, int32_t n_seqs, const int32_t *start, const int32_t *nnew)
{
    int32_t ctx[8], max_ctx, max_new, T, qs[8];
    prefill_layout(n_seqs, start, nnew, ctx, qs, &max_ctx, &max_new, &T);
    int32_t max_blocks = (max_ctx + ac->bs - 1) / ac->bs, pool_blocks;
    int32_t *bt = malloc((size_t)(n_seqs * max_blocks) * 4);
    float *kf, *vf, *qf;
    uint16_t *kb, *vb, *qb;
    make_pools(ac, n_seqs, ctx, max_blocks, bt, &pool_blocks, &kf, &kb, &vf, &vb);
    int64_t elems = (int64_t)pool_blocks * ac->nkv * ac->bs * ac->hd, qw = (int64_t)ac->nh * ac->hd;
    rand_bf16((int64_t)T * qw, 2.0f, &qf, &qb);
    void *dk = dev_put(kb, (size_t)elems * 2), *dv = dev_put(vb, (size_t)elems * 2);
    void *dq = dev_put(qb, (size_t)((int64_t)T * qw * 2));
    int32_t *dbt = dev_put(bt, (size_t)(n_seqs * max_blocks) * 4);
    int32_t *dqs = dev_put(qs, (size_t)n_seqs * 4), *dnn = dev_put(nnew, (size_t)n_seqs * 4),
            *dsp = dev_put(start, (size_t)n_seqs * 4);
    void *dout = dev_poison_bf16((int64_t)T * qw);
    float scale = 1.0f / sqrtf((float)ac->hd);
    GOK(k_attn_prefill(dq, qw, n_seqs, dqs, dnn, dsp, max_new, ac->nh, ac->nkv, ac->hd, dk, dv, ac->bs, dbt,
                       max_blocks, scale, dout, qw, 0));
    float *g = get_bf16(dout, (int64_t)T * qw), *c = malloc((size_t)((int64_t)T * qw) * 4);
    for (int32_t i = 0; i < n_seqs; i++)
        cpu_attention_paged(qf + (int64_t)qs[i] * qw, nnew[i], start[i], ac->nh, ac->nkv, ac->hd, kf, vf,
                            bt + i * max_blocks, ac->bs, scale, c + (int64_t)qs[i] * qw);
    char name[96];
    snprintf(name, sizeof name, "prefill attn nh %d nkv %d hd %d T %d", ac->nh, ac->nkv, ac->hd, T);
    expect_close(name, g, c, (int64_t)T * qw, 1.5e-2);
    free(g), free(c), free(kf), free(kb), free(vf), free(vb), free(qf), free(qb), free(bt);
    cudaFree(dk), cudaFree(dv), cudaFree(dq), cudaFree(dbt), cudaFree(dqs), cudaFree(dnn), cudaFree(dsp);
    cudaFree(dout);
}

static void test_attn_prefill(void **state)
{
    (void)state;
    attn_case mqa = {8, 1, 256, 16}, mha = {16, 16, 256, 16}, tiny = {4, 2, 32, 7}, gqa = {8, 2, 128, 32};
    int32_t st1[3] = {0, 500, 3}, nn1[3] = {130, 70, 1};
    check_prefill(&mqa, 3, st1, nn1);
    check_prefill(&mha, 3, st1, nn1);
    check_prefill(&tiny, 3, st1, nn1);
    check_prefill(&gqa, 3, st1, nn1);
    int32_t st2[1] = {0}, nn2[1] = {1500}; /* a long prompt: 24 query tiles */
    check_prefill(&mqa, 1, st2, nn2);
}

/* ------------------------------------------------------------------ sampling */

static void check_sampling(const char *what, int64_t V, int ties, gm_sampling sp, int n_draws)
{
    float *lg = malloc((size_t)(n_draws * V) * 4);
    for (int64_t i = 0; i < n_draws * V; i++) {
        float x = nrand() * 3.0f;
        lg[i] = ties ? gm_round_bf16(x) : x;
    }
    gm_sampling *ps = malloc((size_t)n_draws * sizeof *ps);
    uint64_t *ctr = malloc((size_t)n_draws * 8);
    for (int i = 0; i < n_draws; i++) {
        ps[i] = sp;
        ps[i].seed = sp.seed + (uint64_t)i * 7919u;
        ctr[i] = 100 + (uint64_t)i;
    }
    float *dl = dev_put(lg, (size_t)(n_draws * V) * 4);
    gm_sampling *dp = dev_put(ps, (size_t)n_draws * sizeof *ps);
    uint64_t *dc = dev_put(ctr, (size_t)n_draws * 8);
    int32_t *dt = dev_put(NULL, (size_t)n_draws * 4);
    CK(cudaMemset(dt, 0xff, (size_t)n_draws * 4));
    GOK(k_sample(dl, V, V, n_draws, dp, dc, dt, 0));
    int32_t *tok = malloc((size_t)n_draws * 4);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(tok, dt, (size_t)n_draws * 4, cudaMemcpyDeviceToHost));
    int agree = 0;
    for (int i = 0; i < n_draws; i++) {
        int32_t c = cpu_sample(lg + i * V, V, &ps[i], ctr[i]);
        assert_true(tok[i] >= 0 && tok[i] < V);
        agree += c == tok[i];
    }
    printf("  %-44s %d/%d draws agree with cpu_sample\n", what, agree, n_draws);
    if (gm_sampling_is_greedy(&sp))
        assert_int_equal(agree, n_draws);
    else
        assert_true(agree >= n_draws - 1);
    free(lg), free(ps), free(ctr), free(tok);
    cudaFree(dl), cudaFree(dp), cudaFree(dc), cudaFree(dt);
}

/* one row whose answer is known (a flat row picks id 0; a row with a NaN or +inf, or all -inf, has no
 * token: GM_SAMPLE_NONFINITE), sampled with sp */
static void check_row(const char *what, const float *row, int64_t V, gm_sampling sp, int32_t expect)
{
    uint64_t ctr = 0;
    float *dl = dev_put(row, (size_t)V * 4);
    gm_sampling *dp = dev_put(&sp, sizeof sp);
    uint64_t *dc = dev_put(&ctr, 8);
    int32_t *dt = dev_put(NULL, 4), tok = -7;
    GOK(k_sample(dl, V, V, 1, dp, dc, dt, 0));
    CK(cudaMemcpy(&tok, dt, 4, cudaMemcpyDeviceToHost));
    printf("  %-44s token %d (expected %d; cpu_sample %d)\n", what, tok, expect, cpu_sample(row, V, &sp, 0));
    assert_int_equal(tok, expect);
    assert_int_equal(cpu_sample(row, V, &sp, 0), expect);
    cudaFree(dl), cudaFree(dp), cudaFree(dc), cudaFree(dt);
}

static void test_sampling(void **state)
{
    (void)state;
    int64_t V = 256000;
    {
        int64_t n = 70001;
        float *row = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++)
            row[i] = 1.0f;
        gm_sampling g = GM_SAMPLING_GREEDY, hot = {0.9f, 40, 0.95f, 5};
        check_row("greedy, flat row", row, n, g, 0);
        for (int64_t i = 0; i < n; i++)
            row[i] = -INFINITY;
        check_row("greedy, all -inf: no token", row, n, g, GM_SAMPLE_NONFINITE);
        check_row("sampled, all -inf: no token", row, n, hot, GM_SAMPLE_NONFINITE);
        row[n - 1] = 0.0f, row[4097] = 0.0f;
        check_row("greedy, two equal maxima", row, n, g, 4097);
        row[70000] = NAN; /* the scalar tail of an odd row */
        check_row("greedy, a NaN: no token", row, n, g, GM_SAMPLE_NONFINITE);
        check_row("sampled, a NaN: no token", row, n, hot, GM_SAMPLE_NONFINITE);
        row[70000] = -INFINITY, row[8] = INFINITY; /* the float4 body */
        check_row("greedy, +inf: no token", row, n, g, GM_SAMPLE_NONFINITE);
        check_row("sampled, +inf: no token", row, n, hot, GM_SAMPLE_NONFINITE);
        free(row);
    }
    /* vocabularies smaller than the block: threads without elements */
    check_sampling("greedy, V = 3", 3, 0, GM_SAMPLING_GREEDY, 8);
    check_sampling("greedy, V = 300, bf16 ties", 300, 1, GM_SAMPLING_GREEDY, 8);
    /* rows of an odd vocabulary are not 16-byte aligned: the scalar walk */
    check_sampling("greedy, odd vocabulary, bf16 ties", 4099, 1, GM_SAMPLING_GREEDY, 16);
    check_sampling("temp 1 top-k 50, odd vocabulary", 4099, 0, (gm_sampling){1.0f, 50, 1.0f, 19}, 20);
    check_sampling("greedy", V, 0, GM_SAMPLING_GREEDY, 16);
    check_sampling("greedy, bf16 ties", V, 1, GM_SAMPLING_GREEDY, 16);
    check_sampling("temperature 1", V, 0, (gm_sampling){1.0f, 0, 1.0f, 11}, 40);
    check_sampling("temperature 0.7 top-k 50", V, 0, (gm_sampling){0.7f, 50, 1.0f, 12}, 40);
    check_sampling("temperature 1 top-p 0.9", V, 0, (gm_sampling){1.0f, 0, 0.9f, 13}, 40);
    check_sampling("temp 0.8 top-k 1000 top-p 0.95, ties", V, 1, (gm_sampling){0.8f, 1000, 0.95f, 14}, 40);
    check_sampling("temp 2 top-k 40 top-p 0.5, small vocab", 4096, 1, (gm_sampling){2.0f, 40, 0.5f, 15}, 40);
    /* flat distributions: too many candidates for the fast path, the radix path decides */
    check_sampling("temp 8 top-p 0.99 (radix path)", V, 0, (gm_sampling){8.0f, 0, 0.99f, 16}, 20);
    check_sampling("temp 8 top-k 20000 (radix path)", V, 0, (gm_sampling){8.0f, 20000, 1.0f, 17}, 20);
    check_sampling("temp 6, no cut (radix path)", V, 0, (gm_sampling){6.0f, 0, 1.0f, 18}, 20);
}

static void test_token_feed(void **state)
{
    (void)state;
    int32_t toks[4] = {11, 22, 33, GM_SAMPLE_NONFINITE}, slots[4] = {2, -1, 0, 3}, last[4] = {-5, -5, -5, -5};
    int32_t *dt = dev_put(toks, sizeof toks), *ds = dev_put(slots, sizeof slots), *dl = dev_put(last, sizeof last);
    GOK(k_feed_tokens(dt, ds, 4, dl, 0));
    int32_t ids[4] = {7, -1, -1, -1}, tslot[4] = {1, 2, 0, 3};
    int32_t *di = dev_put(ids, sizeof ids), *dts = dev_put(tslot, sizeof tslot);
    GOK(k_resolve_ids(di, dts, 4, dl, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(ids, di, sizeof ids, cudaMemcpyDeviceToHost));
    assert_int_equal(ids[0], 7);
    assert_int_equal(ids[1], 11);
    assert_int_equal(ids[2], 33);
    assert_int_equal(ids[3], 0); /* a NaN row's slot feeds a valid id */
    cudaFree(dt), cudaFree(ds), cudaFree(dl), cudaFree(di), cudaFree(dts);
}

static void test_bad_args(void **state)
{
    (void)state;
    assert_int_equal(k_rmsnorm(NULL, 8, NULL, 1, 12, 1e-6f, NULL, 8, 0), GM_ERR_UNSUPPORTED);
    const k_attn_opts ao = {1.0f, 0.0f, 0};
    assert_int_equal(k_attn_decode(NULL, 256, 1, 8, 3, 256, NULL, NULL, 16, NULL, 1, NULL, &ao, 1, NULL, NULL, 256, 0),
                     GM_ERR_INVALID_ARG);
    assert_int_equal(k_attn_decode(NULL, 256, 1, 8, 1, 256, NULL, NULL, 16, NULL, 1, NULL, &ao, ATTN_DECODE_MAX_SPLIT + 1,
                                   NULL, NULL, 256, 0),
                     GM_ERR_INVALID_ARG);
    assert_int_equal(k_attn_prefill(NULL, 96, 1, NULL, NULL, NULL, 1, 2, 1, 48, NULL, NULL, 16, NULL, 1, 1.0f, NULL,
                                    96, 0),
                     GM_ERR_UNSUPPORTED);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *filter = getenv("GM_TEST_FILTER"); /* e.g. "test_attn*" (compute-sanitizer runs) */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed),        cmocka_unit_test(test_rmsnorm),     cmocka_unit_test(test_rope_kv),
        cmocka_unit_test(test_geglu),        cmocka_unit_test(test_gemm),        cmocka_unit_test(test_gemm_geglu),
        cmocka_unit_test(test_attn_decode),
        cmocka_unit_test(test_attn_prefill), cmocka_unit_test(test_sampling),    cmocka_unit_test(test_token_feed),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
