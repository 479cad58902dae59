/* test_gpu_prefill_hopper.c - k_attn_prefill_hopper (wgmma/TMA prefill attention) against its CPU
 * twin cpu_attention_paged_opts (double precision) by normalized error ||gpu - cpu|| / ||cpu||:
 * single prompts of T = 1 .. 4096, MQA / GQA / MHA at head_dim 256 and 128, chunked prefill
 * (start_pos 512, 1500: the earlier tokens are already in the paged cache), batches of sequences
 * of mixed lengths, soft-capping and sliding windows on and off, other softmax scales, bf16 and
 * FP8 (e4m3) pools, block sizes 8 .. 64. Every input is drawn fresh per case. FP8 pools run twice: f16
 * tensor cores after an exact conversion (against the exact reference), and e4m3 QGMMA (kv_fp8_mma:
 * against pf_ref_e4m3, the emulation of its rounding of Q and P, and loosely against the exact one).
 *
 * Poison: every pool slot no sequence has written holds NaN (bf16 0xffff, e4m3 0x7f), block-table
 * entries past a sequence's blocks name a block that is all NaN, the output is NaN before the
 * launch. The kernel must write every row of every sequence (no NaN left), no row between
 * sequences and no column past nh*hd (still NaN), never read a poisoned slot (NaN would spread),
 * and give the same bits twice. Large prompts are checked on a sample of rows (the first and last
 * 130 of each sequence and every 16th), the rest for completeness.
 *
 * GM_PREFILL_SMALL=1 keeps the small cases only (T <= 300): for compute-sanitizer. Exit 77
 * without a GPU; the cases skip (with a message) on a GPU the kernel does not support. */
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
#include "kernels/cpu/quant_fp8.h"
#include "kernels/cuda/attn_prefill_hopper.cuh"
#include "tests/test_check.h"

#define CK(x) assert_int_equal((int)(x), 0)
#define PF_MAX_SEQS 8

static int g_small;     /* GM_PREFILL_SMALL: small cases only */
static int g_supported; /* the device runs the kernel */

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static float frand(void) /* [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static uint32_t urand(uint32_t n)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33) % n;
}

typedef struct pf_case {
    const char *name;
    int32_t nh, nkv, hd, bs;
    int32_t n_seqs, start[PF_MAX_SEQS], nnew[PF_MAX_SEQS];
    float softcap;   /* 0 = off */
    int32_t window;  /* 0 = off */
    float qpas;      /* query_pre_attn_scalar; 0 = head_dim */
    int32_t fp8;     /* e4m3 pools */
    int32_t big;     /* skipped with GM_PREFILL_SMALL */
    int32_t mma8;    /* with fp8: both GEMMs on e4m3 tensor cores (k_prefill_opts.kv_fp8_mma) */
} pf_case;

/* The e4m3 QGMMA kernel's arithmetic for one query row at position pos (every head): q rounded to e4m3 per
 * head with scale amax / 448, scores from the codes, key tiles of 128 from the row's own down, P rounded to
 * e4m3 as 2^(logit - running max + 8), l summed unrounded, out = kv_scale * O / l (double). Reproduces the
 * kernel up to f32 accumulation order and the approximate exp2 / tanh: rare P codes off by one step. */
static void pf_ref_e4m3(const float *q, int32_t pos, int32_t nh, int32_t nkv, int32_t hd, const uint8_t *k8,
                        const uint8_t *v8, const int32_t *bt, int32_t bs, float scale, float kv_scale, float softcap,
                        int32_t window, float *out)
{
    const float log2e = 1.4426950408889634f, sc = scale * kv_scale, score_mul = sc * log2e;
    const float cap_in = softcap > 0.0f ? sc / softcap : 0.0f;
    const int32_t lo = window > 0 ? (pos - window + 1 > 0 ? pos - window + 1 : 0) : 0;
    float qc[512];
    double o[512], x[128];
    for (int32_t h = 0; h < nh; h++) {
        const float *qh = q + (int64_t)h * hd;
        float amax = 0.0f;
        for (int32_t i = 0; i < hd; i++)
            amax = fmaxf(amax, fabsf(qh[i]));
        const float sq = amax / 448.0f, inv = amax > 0.0f ? 448.0f / amax : 0.0f;
        for (int32_t i = 0; i < hd; i++)
            qc[i] = gm_e4m3_to_f32(cpu_fp8_e4m3(qh[i] * inv));
        const float mul = score_mul * sq, cin = cap_in * sq;
        const int32_t g = h / (nh / nkv);
        double m = -INFINITY, l = 0.0;
        memset(o, 0, sizeof o);
        for (int32_t t = pos / 128; t >= lo / 128; t--) {
            const int32_t j0 = t * 128 > lo ? t * 128 : lo, j1 = t * 128 + 127 < pos ? t * 128 + 127 : pos;
            double mx = m;
            for (int32_t j = j0; j <= j1; j++) {
                const int64_t off = (((int64_t)bt[j / bs] * nkv + g) * bs + j % bs) * hd;
                double acc = 0.0;
                for (int32_t i = 0; i < hd; i++)
                    acc += (double)qc[i] * gm_e4m3_to_f32(k8[off + i]);
                x[j - j0] = softcap > 0.0f ? softcap * tanh((double)(float)acc * cin) * log2e
                                           : (double)(float)acc * mul;
                mx = x[j - j0] > mx ? x[j - j0] : mx;
            }
            const double alpha = m == -INFINITY ? 0.0 : exp2(m - mx);
            l *= alpha;
            for (int32_t d = 0; d < hd; d++)
                o[d] *= alpha;
            for (int32_t j = j0; j <= j1; j++) {
                const int64_t off = (((int64_t)bt[j / bs] * nkv + g) * bs + j % bs) * hd;
                const double e = exp2(x[j - j0] - mx + 8.0);
                const double pq = gm_e4m3_to_f32(cpu_fp8_e4m3((float)e));
                l += e;
                for (int32_t d = 0; d < hd; d++)
                    o[d] += pq * gm_e4m3_to_f32(v8[off + d]);
            }
            m = mx;
        }
        for (int32_t d = 0; d < hd; d++)
            out[(int64_t)h * hd + d] = (float)(kv_scale * o[d] / l);
    }
}

static void *dev_put(const void *h, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 16));
    if (h)
        CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* Rows of sequence i to compare with the CPU (all when short). */
static int pf_check_row(int32_t t, int32_t n)
{
    return n <= 300 || t < 130 || t >= n - 130 || t % 16 == 0;
}

static void run_case(const pf_case *c)
{
    if (!g_supported) {
        printf("  %-58s skipped (device not supported)\n", c->name);
        return;
    }
    if (g_small && c->big)
        return;
    const int32_t nh = c->nh, nkv = c->nkv, hd = c->hd, bs = c->bs, ns = c->n_seqs;
    const float kv_scale = 0.0125f; /* |k| <= 2 -> codes up to 160 */
    const int64_t qw = (int64_t)nh * hd, ldq = (int64_t)(nh + 2 * nkv) * hd, ldo = qw + 64;
    int32_t q_start[PF_MAX_SEQS], nblk[PF_MAX_SEQS], max_new = 0, max_blocks = 0, used = 0;
    int64_t n_tokens = 2; /* two rows before the first sequence, three between sequences */
    for (int32_t i = 0; i < ns; i++) {
        q_start[i] = (int32_t)n_tokens;
        n_tokens += c->nnew[i] + 3;
        nblk[i] = (c->start[i] + c->nnew[i] + bs - 1) / bs;
        max_new = c->nnew[i] > max_new ? c->nnew[i] : max_new;
        max_blocks = nblk[i] > max_blocks ? nblk[i] : max_blocks;
        used += nblk[i];
    }
    const int32_t pool_blocks = used + 1, poison = used, bt_stride = max_blocks + 2;
    const int64_t blk = (int64_t)nkv * bs * hd, elems = (int64_t)pool_blocks * blk;

    /* block tables: a random permutation of the used blocks; unused entries -> the poison block */
    int32_t *perm = malloc((size_t)used * 4), *bt = malloc((size_t)ns * bt_stride * 4);
    assert_non_null(perm);
    assert_non_null(bt);
    for (int32_t i = 0; i < used; i++)
        perm[i] = i;
    for (int32_t i = used - 1; i > 0; i--) {
        int32_t j = (int32_t)urand((uint32_t)i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int32_t i = 0, u = 0; i < ns; i++)
        for (int32_t j = 0; j < bt_stride; j++)
            bt[i * bt_stride + j] = j < nblk[i] ? perm[u++] : poison;

    /* pools: NaN everywhere, random values at the positions each sequence has written */
    float *kf = malloc((size_t)elems * 4), *vf = malloc((size_t)elems * 4);
    uint16_t *kb = malloc((size_t)elems * 2), *vb = malloc((size_t)elems * 2);
    uint8_t *k8 = malloc((size_t)elems), *v8 = malloc((size_t)elems);
    assert_true(kf && vf && kb && vb && k8 && v8);
    for (int64_t i = 0; i < elems; i++) {
        kf[i] = vf[i] = NAN;
        kb[i] = vb[i] = 0xffff;
        k8[i] = v8[i] = 0x7f;
    }
    for (int32_t i = 0; i < ns; i++)
        for (int32_t pos = 0; pos < c->start[i] + c->nnew[i]; pos++)
            for (int32_t g = 0; g < nkv; g++) {
                int64_t off = (((int64_t)bt[i * bt_stride + pos / bs] * nkv + g) * bs + pos % bs) * hd;
                for (int32_t d = 0; d < hd; d++) {
                    float kv = 2.0f * frand(), vv = frand();
                    if (c->fp8) {
                        k8[off + d] = cpu_fp8_e4m3(kv / kv_scale);
                        v8[off + d] = cpu_fp8_e4m3(vv / kv_scale);
                        kf[off + d] = gm_e4m3_to_f32(k8[off + d]) * kv_scale;
                        vf[off + d] = gm_e4m3_to_f32(v8[off + d]) * kv_scale;
                    } else {
                        kb[off + d] = gm_f32_to_bf16(kv);
                        vb[off + d] = gm_f32_to_bf16(vv);
                        kf[off + d] = gm_bf16_to_f32(kb[off + d]);
                        vf[off + d] = gm_bf16_to_f32(vb[off + d]);
                    }
                }
            }

    /* q: every row random (rows between sequences too), inside a wider fused-qkv-like row */
    uint16_t *qb = malloc((size_t)(n_tokens * ldq) * 2);
    float *qf = malloc((size_t)(n_tokens * ldq) * 4);
    assert_true(qb && qf);
    for (int64_t i = 0; i < n_tokens * ldq; i++) {
        qb[i] = gm_f32_to_bf16(2.0f * frand());
        qf[i] = gm_bf16_to_f32(qb[i]);
    }

    void *dq = dev_put(qb, (size_t)(n_tokens * ldq) * 2);
    void *dk = c->fp8 ? dev_put(k8, (size_t)elems) : dev_put(kb, (size_t)elems * 2);
    void *dv = c->fp8 ? dev_put(v8, (size_t)elems) : dev_put(vb, (size_t)elems * 2);
    int32_t *dbt = dev_put(bt, (size_t)ns * bt_stride * 4), *dqs = dev_put(q_start, (size_t)ns * 4);
    int32_t *dnn = dev_put(c->nnew, (size_t)ns * 4), *dsp = dev_put(c->start, (size_t)ns * 4);
    void *dout = dev_put(NULL, (size_t)(n_tokens * ldo) * 2);
    const float qpas = c->qpas > 0.0f ? c->qpas : (float)hd;
    k_prefill_opts opt = {1.0f / sqrtf(qpas), c->softcap, c->window, c->fp8, kv_scale, c->fp8 && c->mma8};

    uint16_t *g[2];
    for (int run = 0; run < 2; run++) {
        CK(cudaMemset(dout, 0xff, (size_t)(n_tokens * ldo) * 2));
        GOK(k_attn_prefill_hopper(dq, ldq, n_tokens, ns, dqs, dnn, dsp, max_new, nh, nkv, hd, dk, dv, bs,
                                  pool_blocks, dbt, bt_stride, &opt, dout, ldo, 0));
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        g[run] = malloc((size_t)(n_tokens * ldo) * 2);
        assert_non_null(g[run]);
        CK(cudaMemcpy(g[run], dout, (size_t)(n_tokens * ldo) * 2, cudaMemcpyDeviceToHost));
    }

    /* completeness: rows of sequences fully written (no NaN), the rest untouched (NaN) */
    int64_t unwritten = 0, stray = 0;
    for (int64_t r = 0; r < n_tokens; r++) {
        int in_seq = 0;
        for (int32_t i = 0; i < ns; i++)
            in_seq |= r >= q_start[i] && r < q_start[i] + c->nnew[i];
        for (int64_t j = 0; j < ldo; j++) {
            int nan = isnan(gm_bf16_to_f32(g[0][r * ldo + j]));
            if (in_seq && j < qw)
                unwritten += nan;
            else
                stray += !nan;
        }
    }

    /* accuracy on the sampled rows: against the exact (double) attention, and for the QGMMA kernel against
     * the emulation of its e4m3 rounding (the tolerance applies to that one; the exact error is printed) */
    double num = 0.0, den = 0.0, num_x = 0.0, den_x = 0.0;
    int64_t n_cmp = 0;
    float *ref = malloc((size_t)qw * 4), *qrow = malloc((size_t)qw * 4), *ref8 = malloc((size_t)qw * 4);
    assert_true(ref && qrow && ref8);
    cpu_attn_opts co = {opt.scale, c->softcap, c->window};
    for (int32_t i = 0; i < ns; i++)
        for (int32_t t = 0; t < c->nnew[i]; t++) {
            if (!pf_check_row(t, c->nnew[i]))
                continue;
            const int64_t r = q_start[i] + t;
            memcpy(qrow, qf + r * ldq, (size_t)qw * 4);
            CK(cpu_attention_paged_opts(qrow, 1, c->start[i] + t, nh, nkv, hd, kf, vf, bt + i * bt_stride, bs, &co,
                                        ref));
            if (opt.kv_fp8_mma)
                pf_ref_e4m3(qrow, c->start[i] + t, nh, nkv, hd, k8, v8, bt + i * bt_stride, bs, opt.scale, kv_scale,
                            c->softcap, c->window, ref8);
            for (int64_t j = 0; j < qw; j++) {
                const double gv = (double)gm_bf16_to_f32(g[0][r * ldo + j]), d = gv - ref[j];
                num_x += isnan(d) ? INFINITY : d * d;
                den_x += (double)ref[j] * ref[j];
                const double d8 = opt.kv_fp8_mma ? gv - ref8[j] : d;
                num += isnan(d8) ? INFINITY : d8 * d8;
                den += opt.kv_fp8_mma ? (double)ref8[j] * ref8[j] : (double)ref[j] * ref[j];
            }
            n_cmp++;
        }
    const double err = sqrt(num / (den > 0.0 ? den : 1e-30)), err_x = sqrt(num_x / (den_x > 0.0 ? den_x : 1e-30));
    const double tol = 1e-2;
    const int same = memcmp(g[0], g[1], (size_t)(n_tokens * ldo) * 2) == 0;
    printf("  %-58s nerr %.2e (tol %.0e) rows %lld unwritten %lld stray %lld %s", c->name, err, tol,
           (long long)n_cmp, (long long)unwritten, (long long)stray, same ? "repeatable" : "RUNS DIFFER");
    if (opt.kv_fp8_mma) /* e4m3 Q and P against exact attention: expected a few percent on these random inputs */
        printf(" | vs exact %.2e", err_x);
    printf("\n");

    free(ref), free(ref8), free(qrow), free(g[0]), free(g[1]), free(perm), free(bt), free(kf), free(vf), free(kb);
    free(vb);
    free(k8), free(v8), free(qb), free(qf);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dbt), cudaFree(dqs), cudaFree(dnn), cudaFree(dsp);
    cudaFree(dout);
    if (unwritten || stray)
        fail_msg("%s: %lld output elements unwritten, %lld written outside the sequences", c->name,
                 (long long)unwritten, (long long)stray);
    if (!(err <= tol))
        fail_msg("%s: normalized error %.3e > %.1e", c->name, err, tol);
    if (opt.kv_fp8_mma && !(err_x <= 0.15)) /* the emulation itself could share a mistake: a loose exact bound */
        fail_msg("%s: normalized error against exact attention %.3e > 0.15", c->name, err_x);
    if (!same)
        fail_msg("%s: two runs on the same inputs differ (a race?)", c->name);
}

/* Argument checks and the support query (no device work). */
static void test_pf_args(void **state)
{
    (void)state;
    k_prefill_opts ok = {0.0625f, 0.0f, 0, 0, 1.0f}, bad = ok;
    static _Alignas(16) int32_t d[4]; /* a stand-in pointer: no call below reaches the device */
    assert_int_equal(k_attn_prefill_hopper(d, 4096, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, NULL, d, 2048,
                                           0),
                     GM_ERR_INVALID_ARG);
    assert_int_equal(k_attn_prefill_hopper(d, 4096, 1, 0, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, &ok, d, 2048, 0),
                     GM_OK); /* no sequences: nothing to do */
    assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 3, 256, d, d, 16, 1, d, 1, &ok, d, 2048, 0),
                     GM_ERR_INVALID_ARG); /* nh % nkv */
    assert_int_equal(k_attn_prefill_hopper(d, 100, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, &ok, d, 2048, 0),
                     GM_ERR_INVALID_ARG); /* ldq < nh * hd */
    bad.scale = 0.0f;
    assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, &bad, d, 2048, 0),
                     GM_ERR_INVALID_ARG);
    bad = ok, bad.kv_fp8 = 1, bad.kv_scale = 0.0f;
    assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, &bad, d, 2048, 0),
                     GM_ERR_INVALID_ARG);
    bad = ok, bad.window = -1;
    assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, &bad, d, 2048, 0),
                     GM_ERR_INVALID_ARG);
    if (!g_supported) {
        assert_int_equal(k_attn_prefill_hopper_supported(256, 16, 0), 0);
        assert_int_equal(k_attn_prefill_hopper_e4m3_supported(256, 16), 0);
        assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 16, 1, d, 1, &ok, d,
                                               2048, 0),
                         GM_ERR_UNSUPPORTED);
        return;
    }
    assert_int_equal(k_attn_prefill_hopper(d, 512, 1, 1, d, d, d, 1, 8, 1, 64, d, d, 16, 1, d, 1, &ok, d, 512, 0),
                     GM_ERR_UNSUPPORTED); /* head_dim 64 */
    assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 7, 1, d, 1, &ok, d, 2048, 0),
                     GM_ERR_UNSUPPORTED); /* bf16 pages of 7 rows */
    assert_int_equal(k_attn_prefill_hopper_supported(256, 16, 0), 1);
    assert_int_equal(k_attn_prefill_hopper_supported(128, 32, 0), 1);
    assert_int_equal(k_attn_prefill_hopper_supported(256, 7, 1), 1); /* FP8 takes any block size */
    assert_int_equal(k_attn_prefill_hopper_e4m3_supported(256, 16), 1);
    assert_int_equal(k_attn_prefill_hopper_e4m3_supported(128, 8), 1);
    assert_int_equal(k_attn_prefill_hopper_e4m3_supported(256, 7), 0); /* but the QGMMA kernel's boxes do not */
    assert_int_equal(k_attn_prefill_hopper_e4m3_supported(64, 16), 0);
    bad = ok, bad.kv_fp8 = 1, bad.kv_scale = 1.0f, bad.kv_fp8_mma = 1;
    assert_int_equal(k_attn_prefill_hopper(d, 2048, 1, 1, d, d, d, 1, 8, 1, 256, d, d, 7, 1, d, 1, &bad, d, 2048, 0),
                     GM_ERR_UNSUPPORTED);
    assert_int_equal(k_attn_prefill_hopper_supported(256, 7, 0), 0);
    assert_int_equal(k_attn_prefill_hopper_supported(64, 16, 0), 0);
}

/* Gemma 2b (8 query heads, 1 KV head, head_dim 256): one prompt of each length. */
static void test_pf_mqa_lengths(void **state)
{
    (void)state;
    static const int32_t T[] = {1, 7, 64, 100, 129, 1000, 2048, 4096};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "2b MQA 8/1 hd256 T %d", T[i]);
        pf_case c = {name, 8, 1, 256, 16, 1, {0}, {T[i]}, 0.0f, 0, 0.0f, 0, T[i] > 300};
        run_case(&c);
    }
}

/* Gemma 7b (MHA 16/16) and GQA groups of 2 to 8, head_dim 256 and 128. */
static void test_pf_mha_gqa(void **state)
{
    (void)state;
    pf_case cs[] = {
        {"7b MHA 16/16 hd256 T 100", 16, 16, 256, 16, 1, {0}, {100}, 0.0f, 0, 0.0f, 0, 0},
        {"7b MHA 16/16 hd256 T 1000", 16, 16, 256, 16, 1, {0}, {1000}, 0.0f, 0, 0.0f, 0, 1},
        {"7b MHA 16/16 hd256 T 2048", 16, 16, 256, 16, 1, {0}, {2048}, 0.0f, 0, 0.0f, 0, 1},
        {"GQA 8/2 hd256 T 1000 bs 32", 8, 2, 256, 32, 1, {0}, {1000}, 0.0f, 0, 0.0f, 0, 1},
        {"GQA 16/2 hd256 T 300 bs 64", 16, 2, 256, 64, 1, {0}, {300}, 0.0f, 0, 0.0f, 0, 0},
        {"GQA 8/4 hd128 T 1000", 8, 4, 128, 16, 1, {0}, {1000}, 0.0f, 0, 0.0f, 0, 1},
        {"GQA 16/2 hd128 T 200 bs 8", 16, 2, 128, 8, 1, {0}, {200}, 0.0f, 0, 0.0f, 0, 0},
        {"MQA 4/1 hd128 T 4096", 4, 1, 128, 16, 1, {0}, {4096}, 0.0f, 0, 0.0f, 0, 1},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i]);
}

/* Chunked prefill: a chunk attends to the earlier chunks already in the cache. */
static void test_pf_chunked(void **state)
{
    (void)state;
    pf_case cs[] = {
        {"2b chunk start 512 n 512", 8, 1, 256, 16, 1, {512}, {512}, 0.0f, 0, 0.0f, 0, 1},
        {"2b chunk start 1500 n 700", 8, 1, 256, 16, 1, {1500}, {700}, 0.0f, 0, 0.0f, 0, 1},
        {"7b chunk start 1500 n 1 (decode-like row)", 16, 16, 256, 16, 1, {1500}, {1}, 0.0f, 0, 0.0f, 0, 0},
        {"7b chunk start 130 n 100 bs 32", 16, 16, 256, 32, 1, {130}, {100}, 0.0f, 0, 0.0f, 0, 0},
        {"GQA 8/2 hd128 chunk start 1500 n 300", 8, 2, 128, 16, 1, {1500}, {300}, 0.0f, 0, 0.0f, 0, 1},
        {"2b chunk start 37 n 91 bs 8", 8, 1, 256, 8, 1, {37}, {91}, 0.0f, 0, 0.0f, 0, 0},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i]);
}

/* Several sequences of mixed lengths and starts in one launch (mixed prefill + decode steps). */
static void test_pf_batch(void **state)
{
    (void)state;
    pf_case cs[] = {
        {"2b batch 6 mixed", 8, 1, 256, 16, 6, {0, 500, 3, 1500, 0, 2000}, {130, 70, 1, 700, 1000, 5}, 0.0f, 0, 0.0f,
         0, 1},
        {"7b batch 4 small", 16, 16, 256, 16, 4, {0, 17, 200, 0}, {33, 1, 150, 128}, 0.0f, 0, 0.0f, 0, 0},
        {"GQA 8/2 hd128 batch 5", 8, 2, 128, 32, 5, {0, 64, 1, 300, 0}, {257, 64, 2, 40, 1}, 0.0f, 0, 0.0f, 0, 0},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i]);
}

/* Gemma 2/3 options: soft-capping, sliding windows, query_pre_attn_scalar != head_dim. */
static void test_pf_options(void **state)
{
    (void)state;
    pf_case cs[] = {
        {"2b softcap 50 T 200", 8, 1, 256, 16, 1, {0}, {200}, 50.0f, 0, 0.0f, 0, 0},
        {"2b softcap 3 T 300 (tanh bites)", 8, 1, 256, 16, 1, {0}, {300}, 3.0f, 0, 0.0f, 0, 0},
        {"2b window 128 T 300", 8, 1, 256, 16, 1, {0}, {300}, 0.0f, 128, 0.0f, 0, 0},
        {"2b window 100 chunk start 250 n 200", 8, 1, 256, 16, 1, {250}, {200}, 0.0f, 100, 0.0f, 0, 0},
        {"7b window 1000 T 2048", 16, 16, 256, 16, 1, {0}, {2048}, 0.0f, 1000, 0.0f, 0, 1},
        {"2b window 4096 softcap 50 T 4096", 8, 1, 256, 16, 1, {0}, {4096}, 50.0f, 4096, 0.0f, 0, 1},
        {"GQA 16/8 qpas 144 softcap 50 window 512 batch", 16, 8, 256, 16, 3, {0, 1500, 600}, {700, 300, 1}, 50.0f,
         512, 144.0f, 0, 1},
        {"GQA 8/4 hd128 window 64 softcap 30 T 250", 8, 4, 128, 16, 1, {0}, {250}, 30.0f, 64, 0.0f, 0, 0},
        {"2b window 1 T 100 (self only)", 8, 1, 256, 16, 1, {0}, {100}, 0.0f, 1, 0.0f, 0, 0},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i]);
}

/* FP8 (e4m3) pools with one kv_scale: any block size. */
static void test_pf_fp8(void **state)
{
    (void)state;
    pf_case cs[] = {
        {"fp8 2b T 100", 8, 1, 256, 16, 1, {0}, {100}, 0.0f, 0, 0.0f, 1, 0},
        {"fp8 2b T 2048", 8, 1, 256, 16, 1, {0}, {2048}, 0.0f, 0, 0.0f, 1, 1},
        {"fp8 7b chunk start 1500 n 700", 16, 16, 256, 16, 1, {1500}, {700}, 0.0f, 0, 0.0f, 1, 1},
        {"fp8 2b batch 6 mixed bs 7", 8, 1, 256, 7, 6, {0, 500, 3, 1500, 0, 2000}, {130, 70, 1, 700, 1000, 5}, 0.0f,
         0, 0.0f, 1, 1},
        {"fp8 7b batch 4 small bs 32", 16, 16, 256, 32, 4, {0, 17, 200, 0}, {33, 1, 150, 128}, 0.0f, 0, 0.0f, 1, 0},
        {"fp8 GQA 16/8 softcap 50 window 512", 16, 8, 256, 16, 2, {0, 700}, {1000, 300}, 50.0f, 512, 144.0f, 1, 1},
        {"fp8 GQA 8/2 hd128 T 250 window 100", 8, 2, 128, 16, 1, {0}, {250}, 0.0f, 100, 0.0f, 1, 0},
        {"fp8 MQA 4/1 hd128 T 4096", 4, 1, 128, 16, 1, {0}, {4096}, 0.0f, 0, 0.0f, 1, 1},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i]);
}

/* FP8 pools with both GEMMs on e4m3 tensor cores (QGMMA): the shapes of test_pf_fp8 and the options, block
 * sizes that share a multiple of 8 rows with the 128-key tile; against the emulation of the kernel's rounding. */
static void test_pf_fp8_mma(void **state)
{
    (void)state;
    pf_case cs[] = {
        {"e4m3 2b T 7", 8, 1, 256, 16, 1, {0}, {7}, 0.0f, 0, 0.0f, 1, 0, 1},
        {"e4m3 2b T 100", 8, 1, 256, 16, 1, {0}, {100}, 0.0f, 0, 0.0f, 1, 0, 1},
        {"e4m3 2b T 129 bs 8", 8, 1, 256, 8, 1, {0}, {129}, 0.0f, 0, 0.0f, 1, 0, 1},
        {"e4m3 2b T 2048", 8, 1, 256, 16, 1, {0}, {2048}, 0.0f, 0, 0.0f, 1, 1, 1},
        {"e4m3 7b T 1000", 16, 16, 256, 16, 1, {0}, {1000}, 0.0f, 0, 0.0f, 1, 1, 1},
        {"e4m3 7b chunk start 1500 n 700", 16, 16, 256, 16, 1, {1500}, {700}, 0.0f, 0, 0.0f, 1, 1, 1},
        {"e4m3 7b chunk start 130 n 100 bs 32", 16, 16, 256, 32, 1, {130}, {100}, 0.0f, 0, 0.0f, 1, 0, 1},
        {"e4m3 2b batch 6 mixed bs 64", 8, 1, 256, 64, 6, {0, 500, 3, 1500, 0, 2000}, {130, 70, 1, 700, 1000, 5}, 0.0f,
         0, 0.0f, 1, 1, 1},
        {"e4m3 7b batch 4 small bs 24", 16, 16, 256, 24, 4, {0, 17, 200, 0}, {33, 1, 150, 128}, 0.0f, 0, 0.0f, 1, 0,
         1},
        {"e4m3 GQA 16/8 softcap 50 window 512", 16, 8, 256, 16, 2, {0, 700}, {1000, 300}, 50.0f, 512, 144.0f, 1, 1, 1},
        {"e4m3 2b softcap 3 T 300", 8, 1, 256, 16, 1, {0}, {300}, 3.0f, 0, 0.0f, 1, 0, 1},
        {"e4m3 2b window 100 chunk start 250 n 200", 8, 1, 256, 16, 1, {250}, {200}, 0.0f, 100, 0.0f, 1, 0, 1},
        {"e4m3 GQA 8/2 hd128 T 250 window 100", 8, 2, 128, 16, 1, {0}, {250}, 0.0f, 100, 0.0f, 1, 0, 1},
        {"e4m3 MQA 4/1 hd128 T 4096", 4, 1, 128, 16, 1, {0}, {4096}, 0.0f, 0, 0.0f, 1, 1, 1},
        {"e4m3 GQA 8/4 hd128 batch 3 bs 32", 8, 4, 128, 32, 3, {0, 64, 300}, {257, 64, 40}, 0.0f, 0, 0.0f, 1, 0, 1},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i]);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        fprintf(stderr, "test_gpu_prefill_hopper: no CUDA device, skipping\n");
        return 77;
    }
    const char *small = getenv("GM_PREFILL_SMALL");
    g_small = small && *small && strcmp(small, "0") != 0;
    g_supported = k_attn_prefill_hopper_supported(256, 16, 0);
    if (!g_supported)
        fprintf(stderr, "test_gpu_prefill_hopper: not an sm_90 device: only the argument checks run\n");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pf_args),    cmocka_unit_test(test_pf_mqa_lengths), cmocka_unit_test(test_pf_mha_gqa),
        cmocka_unit_test(test_pf_chunked), cmocka_unit_test(test_pf_batch),       cmocka_unit_test(test_pf_options),
        cmocka_unit_test(test_pf_fp8),     cmocka_unit_test(test_pf_fp8_mma),
    };
    const char *only = getenv("GM_TEST_FILTER"); /* e.g. 'test_pf_fp8' */
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
