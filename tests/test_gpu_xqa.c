/* test_gpu_xqa.c - the XQA decode attention against cpu_attention_paged (bf16 KV) and its FP8 twin
 * cpu_fp8_attention_paged (e4m3 KV), by normalized error ||gpu - cpu|| / ||cpu|| per sequence, at
 * Gemma's shapes (head_dim 256; MQA 8:1, MHA, GQA 2 and 4; q_len 1..4) and small ones (head_dim
 * 32/64/128), random sequence lengths (not multiples of the block size, padding rows of length 0),
 * block sizes 7/16/32/64, several split counts, long contexts with many splits, B=64 at ctx 4096,
 * query rows of very different magnitudes; at most 16 query rows per KV head (more are refused). The
 * output is poisoned (NaN) before each launch so an unwritten element fails; every launch runs twice
 * and must give the same bits (the split-merge semaphores reset themselves). Gemma 2/3's options
 * (test_xqa_gemma23): soft-capped scores and sliding windows shorter and longer than the contexts, against
 * cpu_attention_paged_opts; the blocks wholly before a sequence's first window start are NaN (their table
 * entries point at a NaN block), so reading one fails. Exit 77 without a GPU. */
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
#include "kernels/cuda/attn_decode.cuh"

#define CK(x) assert_int_equal((int)(x), 0)

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33);
}
static float frand(void) /* [-1, 1) */
{
    return (float)(rnd() & 0xffffff) / 8388608.0f - 1.0f;
}

typedef struct xcase {
    const char *name;
    int32_t nh, nkv, hd, bs, q_len, fp8, batch, nb, max_ctx;
    int32_t wide_q;   /* q and out inside a wider (fused qkv-like) row */
    int32_t q_spread; /* q magnitudes differ by head (2^-6 .. 2^2) and by dim (down to 2^-10) */
    float softcap;    /* Gemma 2's soft-cap (0: off) */
    int32_t window;   /* sliding window (0: off) */
    float qpas;       /* query_pre_attn_scalar: scale qpas^-0.5 (0: head_dim) */
} xcase;

/* Scale of q element (head h, dim i) for a q_spread case. */
static float q_mag(int64_t h, int64_t i)
{
    static const float head_scale[4] = {1.0f / 64, 1.0f / 8, 1.0f, 4.0f};
    return head_scale[h % 4] * ldexpf(1.0f, -(int)(i % 11));
}

static void *dev_put(const void *h, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 16));
    if (h)
        CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* One case; *worst = the worst per-sequence normalized error. */
static void run_case(const xcase *c, double *worst)
{
    const int64_t hd = c->hd, nh = c->nh, nkv = c->nkv, B = c->batch, ql = c->q_len, bs = c->bs;
    const float scale = 1.0f / sqrtf(c->qpas > 0 ? c->qpas : (float)hd);
    const float kv_scale = 0.0125f; /* |k|,|v| <= 4 -> codes up to 320: inside e4m3's range */
    const int opts = c->softcap > 0 || c->window > 0;
    int32_t *lens = malloc(B * sizeof(int32_t));
    for (int64_t b = 0; b < B; b++) {
        int32_t L;
        switch (b % 6) {
        case 0: L = c->max_ctx; break;
        case 1: L = (int32_t)ql; break;                 /* only the new tokens */
        case 2: L = B > 2 ? 0 : c->max_ctx - 1; break;  /* a padding row */
        case 3: L = (int32_t)(bs * 3 + 1); break;       /* one key into a block */
        default: L = (int32_t)ql + (int32_t)(rnd() % (uint32_t)(c->max_ctx - ql + 1)); break;
        }
        if (L > c->max_ctx)
            L = c->max_ctx;
        lens[b] = L;
    }
    const int64_t max_blocks = (c->max_ctx + bs - 1) / bs;
    const int64_t bt_stride = max_blocks + 3;
    const int64_t num_blocks = B * max_blocks + 5; /* the last one: NaN, where window cases point their past */
    /* block tables: a random permutation of the physical blocks */
    int32_t *perm = malloc(num_blocks * sizeof(int32_t));
    for (int64_t i = 0; i < num_blocks; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = num_blocks - 1; i > 0; i--) {
        int64_t j = rnd() % (uint32_t)(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *bt = malloc(B * bt_stride * sizeof(int32_t));
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < bt_stride; i++)
            bt[b * bt_stride + i] = i < max_blocks ? perm[b * max_blocks + i] : -1; /* -1: never read */
    const int32_t nan_block = c->window > 0 ? perm[num_blocks - 1] : -1; /* a block no table holds */
    for (int64_t b = 0; b < B && nan_block >= 0; b++) { /* blocks wholly before the first row's window start */
        int64_t lo = (int64_t)lens[b] - ql + 1 - c->window;
        for (int64_t i = 0; (i + 1) * bs <= lo; i++)
            bt[b * bt_stride + i] = nan_block;
    }
    /* pools: random values; bf16 bits or e4m3 codes, and the f32 values the reference reads */
    const int64_t pool_n = num_blocks * nkv * bs * hd;
    float *kf = malloc(pool_n * sizeof(float)), *vf = malloc(pool_n * sizeof(float));
    size_t es = c->fp8 ? 1 : 2;
    uint8_t *kh = malloc(pool_n * es), *vh = malloc(pool_n * es);
    for (int64_t i = 0; i < pool_n; i++) {
        const int nan = i / (nkv * bs * hd) == nan_block;
        float k = frand() * 4.0f, v = frand() * 4.0f;
        k = nan ? NAN : k, v = nan ? NAN : v;
        if (c->fp8) {
            kh[i] = nan ? 0x7f : cpu_fp8_e4m3(k / kv_scale); /* 0x7f: e4m3 NaN */
            vh[i] = nan ? 0x7f : cpu_fp8_e4m3(v / kv_scale);
            kf[i] = gm_e4m3_to_f32(kh[i]) * kv_scale;
            vf[i] = gm_e4m3_to_f32(vh[i]) * kv_scale;
        } else {
            uint16_t kb = gm_f32_to_bf16(k), vb = gm_f32_to_bf16(v);
            memcpy(kh + 2 * i, &kb, 2);
            memcpy(vh + 2 * i, &vb, 2);
            kf[i] = gm_bf16_to_f32(kb);
            vf[i] = gm_bf16_to_f32(vb);
        }
    }
    /* q: [B, q_len, nh, hd] inside rows of width ld */
    const int64_t ld = c->wide_q ? (nh + 2 * nkv) * hd : nh * hd;
    const int64_t qn = B * ql * ld;
    uint16_t *qh = malloc(qn * 2);
    float *qf = malloc(B * ql * nh * hd * sizeof(float));
    for (int64_t r = 0; r < B * ql; r++)
        for (int64_t i = 0; i < ld; i++) {
            float m = c->q_spread && i < nh * hd ? q_mag(i / hd, i % hd) : 1.0f;
            uint16_t v = gm_f32_to_bf16(frand() * 2.0f * m);
            qh[r * ld + i] = v;
            if (i < nh * hd)
                qf[r * nh * hd + i] = gm_bf16_to_f32(v);
        }

    void *dq = dev_put(qh, qn * 2), *dout = dev_put(NULL, qn * 2);
    void *dk = dev_put(kh, pool_n * es), *dv = dev_put(vh, pool_n * es);
    int32_t *dbt = dev_put(bt, B * bt_stride * sizeof(int32_t)), *dlens = dev_put(lens, B * sizeof(int32_t));
    size_t sb = k_xqa_scratch_bytes((int32_t)B, (int32_t)nkv, (int32_t)nh, (int32_t)ql, (int32_t)hd, c->nb);
    void *dscr = dev_put(NULL, sb);
    CK(cudaMemset(dscr, 0, sb));

    k_xqa_params p;
    memset(&p, 0, sizeof p);
    p.q = dq, p.ldq = ld, p.out = dout, p.ldo = ld;
    p.k_pool = dk, p.v_pool = dv, p.kv_type = c->fp8 ? XQA_KV_FP8 : XQA_KV_BF16;
    p.block_tables = dbt, p.bt_stride = (int32_t)bt_stride, p.seq_lens = dlens;
    p.batch = (int32_t)B, p.q_len = (int32_t)ql, p.n_heads = (int32_t)nh, p.n_kv = (int32_t)nkv;
    p.head_dim = (int32_t)hd, p.block_size = (int32_t)bs, p.scale = scale, p.kv_scale = kv_scale;
    p.nb_sub_seq = c->nb, p.scratch = dscr, p.scratch_bytes = sb;
    p.softcap = c->softcap, p.window = c->window;

    uint16_t *o1 = malloc(qn * 2), *o2 = malloc(qn * 2);
    for (int rep = 0; rep < 2; rep++) {
        CK(cudaMemset(dout, 0xff, qn * 2)); /* NaN poison */
        gm_status st = k_attn_decode_xqa(&p, 0);
        if (st != GM_OK)
            fail_msg("%s: k_attn_decode_xqa: %s: %s", c->name, gm_status_str(st), gm_last_error());
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(rep ? o2 : o1, dout, qn * 2, cudaMemcpyDeviceToHost));
    }
    /* the same bits both times, over the attention columns (the rest of a wide row is not ours) */
    for (int64_t r = 0; r < B * ql; r++)
        if (memcmp(o1 + r * ld, o2 + r * ld, nh * hd * 2))
            fail_msg("%s: second launch differs (row %lld)", c->name, (long long)r);

    *worst = 0.0;
    float *ref = malloc(ql * nh * hd * sizeof(float));
    for (int64_t b = 0; b < B; b++) {
        int32_t L = lens[b];
        const uint16_t *ob = o1 + b * ql * ld;
        if (L == 0) {
            for (int64_t t = 0; t < ql; t++)
                for (int64_t i = 0; i < nh * hd; i++)
                    if (ob[t * ld + i] != 0)
                        fail_msg("%s: padding row %lld not zero", c->name, (long long)b);
            continue;
        }
        if (opts) {
            const cpu_attn_opts co = {scale, c->softcap, c->window};
            assert_int_equal(cpu_attention_paged_opts(qf + b * ql * nh * hd, ql, L - (int32_t)ql, nh, nkv, hd, kf, vf,
                                                      bt + b * bt_stride, (int32_t)bs, &co, ref),
                             0);
        } else {
            cpu_attention_paged(qf + b * ql * nh * hd, ql, L - (int32_t)ql, nh, nkv, hd, kf, vf, bt + b * bt_stride,
                                (int32_t)bs, scale, ref);
        }
        {
            double num = 0, den = 0;
            int64_t bad_t = -1, bad_i = -1;
            for (int64_t t = 0; t < ql; t++)
                for (int64_t i = 0; i < nh * hd; i++) {
                    float g = gm_bf16_to_f32(ob[t * ld + i]), r = ref[t * nh * hd + i];
                    if (isnan(g) && bad_t < 0)
                        bad_t = t, bad_i = i;
                    num += ((double)g - r) * ((double)g - r);
                    den += (double)r * r;
                }
            if (bad_t >= 0)
                fail_msg("%s: seq %lld (len %d): NaN at token %lld head %lld dim %lld", c->name, (long long)b, L,
                         (long long)bad_t, (long long)(bad_i / hd), (long long)(bad_i % hd));
            double e = sqrt(num / (den > 0 ? den : 1));
            if (e > 0.02) { /* say where it goes wrong: first bad (token, head, dim) */
                for (int64_t t = 0; t < ql; t++)
                    for (int64_t i = 0; i < nh * hd; i++) {
                        float g = gm_bf16_to_f32(ob[t * ld + i]), r = ref[t * nh * hd + i];
                        if (fabsf(g - r) > 0.05f + 0.05f * fabsf(r)) {
                            print_message("%s: seq %lld len %d: first mismatch token %lld head %lld dim %lld: "
                                          "gpu %g cpu %g\n",
                                          c->name, (long long)b, L, (long long)t, (long long)(i / hd),
                                          (long long)(i % hd), g, r);
                            t = ql;
                            break;
                        }
                    }
            }
            if (e > *worst || e != e)
                *worst = e;
        }
    }
    print_message("%-36s worst normalized error %.2e\n", c->name, *worst);
    free(ref), free(o1), free(o2), free(lens), free(perm), free(bt), free(kf), free(vf), free(kh), free(vh);
    free(qh), free(qf);
    cudaFree(dq), cudaFree(dout), cudaFree(dk), cudaFree(dv), cudaFree(dbt), cudaFree(dlens), cudaFree(dscr);
}

static void run_cases(const xcase *cs, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        double e;
        run_case(&cs[i], &e);
        if (!(e < 0.02)) {
            print_message("FAIL %s: %.3e\n", cs[i].name, e);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* name, nh, nkv, hd, bs, q_len, fp8, batch, nb, max_ctx, wide_q */
static void test_xqa_gemma2b(void **st)
{
    (void)st;
    static const xcase cs[] = {
        {"2b mqa bf16 bs16 nb1", 8, 1, 256, 16, 1, 0, 7, 1, 700, 0},
        {"2b mqa bf16 bs16 nb4", 8, 1, 256, 16, 1, 0, 7, 4, 3000, 1},
        {"2b mqa fp8 bs32 nb4", 8, 1, 256, 32, 1, 1, 7, 4, 3000, 0},
        {"2b mqa fp8 bs64 nb16", 8, 1, 256, 64, 1, 1, 9, 16, 2100, 1},
        {"2b mqa bf16 q2 bs32", 8, 1, 256, 32, 2, 0, 6, 3, 1500, 0},
        {"2b mqa fp8 q2 bs64 nb1", 8, 1, 256, 64, 2, 1, 5, 1, 900, 0},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_xqa_gemma7b(void **st)
{
    (void)st;
    static const xcase cs[] = {
        {"7b mha bf16 bs64 nb1", 16, 16, 256, 64, 1, 0, 4, 1, 1200, 1},
        {"7b mha bf16 bs16 nb3", 16, 16, 256, 16, 1, 0, 4, 3, 1500, 0},
        {"7b mha fp8 bs32 nb2", 16, 16, 256, 32, 1, 1, 4, 2, 1500, 0},
        {"7b mha fp8 q4 bs64", 16, 16, 256, 64, 4, 1, 3, 2, 800, 1},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_xqa_gqa(void **st)
{
    (void)st;
    static const xcase cs[] = {
        {"gqa2 bf16 q2 bs16", 8, 4, 256, 16, 2, 0, 5, 2, 1000, 0},
        {"gqa2 fp8 q1 bs32", 8, 4, 256, 32, 1, 1, 5, 3, 1000, 0},
        {"gqa4 bf16 q4 bs32", 16, 4, 256, 32, 4, 0, 5, 2, 900, 0},
        {"gqa4 fp8 q3 bs16", 16, 4, 256, 16, 3, 1, 5, 2, 900, 1},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_xqa_small_heads(void **st)
{
    (void)st;
    static const xcase cs[] = {
        {"tiny hd32 bf16 bs7", 4, 2, 32, 7, 1, 0, 6, 3, 300, 1},
        {"tiny hd32 fp8 bs7 q2", 4, 2, 32, 7, 2, 1, 6, 3, 300, 0},
        {"hd64 bf16 bs16 q1", 8, 2, 64, 16, 1, 0, 6, 2, 500, 0},
        {"hd64 fp8 bs16 q4", 8, 2, 64, 16, 4, 1, 6, 2, 500, 0},
        {"hd128 bf16 bs32 mqa", 8, 1, 128, 32, 1, 0, 6, 4, 800, 0},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

/* Long contexts with many splits, B=64 at ctx 4096, 16-row tiles (q_len 2-4), odd block sizes,
 * tiny contexts (partial 16-key chunks), and query rows of very different magnitudes (the FP8
 * hi/lo split of Q). */
static void test_xqa_paths(void **st)
{
    (void)st;
    static const xcase cs[] = {
        {"2b bf16 B64 ctx4096 bs32 nb2", 8, 1, 256, 32, 1, 0, 64, 2, 4096, 0, 0},
        {"2b fp8 B64 ctx4096 bs32 nb4", 8, 1, 256, 32, 1, 1, 64, 4, 4096, 0, 0},
        {"2b bf16 ctx8192 bs16 nb64", 8, 1, 256, 16, 1, 0, 3, 64, 8192, 0, 0},
        {"2b fp8 ctx8192 bs64 nb128", 8, 1, 256, 64, 1, 1, 3, 128, 8192, 1, 0},
        {"2b fp8 q2 (16 rows) bs7 nb5", 8, 1, 256, 7, 2, 1, 5, 5, 1500, 0, 0},
        {"2b bf16 q2 (16 rows) bs64 nb1", 8, 1, 256, 64, 2, 0, 4, 1, 700, 1, 0},
        {"gqa4 fp8 q4 (16 rows) bs32", 16, 4, 256, 32, 4, 1, 4, 3, 900, 0, 0},
        {"gqa2 bf16 q1 bs7 nb7", 8, 4, 256, 7, 1, 0, 4, 7, 1100, 0, 0},
        {"2b fp8 q spread bs16", 8, 1, 256, 16, 1, 1, 6, 3, 1200, 0, 1},
        {"2b bf16 q spread bs32", 8, 1, 256, 32, 1, 0, 6, 3, 1200, 0, 1},
        {"7b fp8 q3 q spread bs16", 16, 16, 256, 16, 3, 1, 3, 2, 600, 0, 1},
        {"hd128 fp8 q2 (16 rows) bs16", 16, 2, 128, 16, 2, 1, 4, 4, 700, 0, 0},
        {"hd64 fp8 q1 bs64 nb3", 8, 1, 64, 64, 1, 1, 5, 3, 900, 0, 0},
        {"hd32 bf16 q4 (16 rows) bs16", 8, 2, 32, 16, 4, 0, 5, 2, 400, 0, 0},
        {"hd32 fp8 ctx40 bs32 nb1", 4, 4, 32, 32, 1, 1, 6, 1, 40, 0, 0},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

/* Gemma 2/3: soft-caps (0.7 bends the scores of these inputs, 50 is Gemma 2's), windows shorter than most
 * contexts, crossing the split boundaries, and longer than every context, with the shapes of gemma2-9b (16:8),
 * gemma3-1b (4:1), gemma3-4b (8:4) and Gemma 2 27B (head_dim 128, query_pre_attn_scalar 144), q_len 1..3. */
static void test_xqa_gemma23(void **st)
{
    (void)st;
    static const xcase cs[] = {
        /* name, nh, nkv, hd, bs, q_len, fp8, batch, nb, max_ctx, wide_q, q_spread, softcap, window, qpas */
        {"g2-9b bf16 cap50 win100", 16, 8, 256, 16, 1, 0, 6, 4, 1500, 1, 0, 50.0f, 100, 256},
        {"g2-9b fp8 cap0.7 win100", 16, 8, 256, 16, 1, 1, 6, 4, 1500, 0, 0, 0.7f, 100, 256},
        {"g2-9b bf16 cap0.7", 16, 8, 256, 32, 1, 0, 6, 3, 900, 0, 0, 0.7f, 0, 256},
        {"g3-1b bf16 win512 nb8", 4, 1, 256, 16, 1, 0, 7, 8, 3000, 0, 0, 0.0f, 512, 256},
        {"g3-1b fp8 win512 nb8", 4, 1, 256, 16, 1, 1, 7, 8, 3000, 0, 0, 0.0f, 512, 256},
        {"g3-4b bf16 win1024 > ctx", 8, 4, 256, 16, 1, 0, 6, 2, 700, 1, 0, 0.0f, 1024, 256},
        {"g3-4b bf16 q3 win37 bs7", 8, 4, 256, 7, 3, 0, 6, 3, 800, 0, 0, 0.0f, 37, 256},
        {"g3-4b fp8 q2 win16", 8, 4, 256, 16, 2, 1, 6, 2, 600, 0, 0, 0.0f, 16, 256},
        {"g2-27b hd128 bf16 cap50 win64", 32, 16, 128, 32, 1, 0, 4, 4, 2000, 0, 0, 50.0f, 64, 144},
        {"g2-27b hd128 fp8 cap0.7 win64 q2", 32, 16, 128, 32, 2, 1, 4, 4, 2000, 0, 0, 0.7f, 64, 144},
        {"tiny hd32 bf16 cap0.7 win16 bs7", 4, 2, 32, 7, 1, 0, 6, 3, 300, 1, 0, 0.7f, 16, 48},
        {"hd64 fp8 win16 q4 (16 rows)", 16, 4, 64, 16, 4, 1, 5, 2, 500, 0, 0, 0.0f, 16, 64},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

/* Bad parameters are errors, not crashes. */
static void test_xqa_args(void **st)
{
    (void)st;
    k_xqa_params p;
    memset(&p, 0, sizeof p);
    assert_int_not_equal(k_attn_decode_xqa(&p, 0), GM_OK);
    assert_int_not_equal(k_attn_decode_xqa(NULL, 0), GM_OK);
    void *d = dev_put(NULL, 4096);
    p.q = d, p.out = d, p.k_pool = d, p.v_pool = d;
    p.block_tables = p.seq_lens = d;
    p.batch = 1, p.q_len = 1, p.n_heads = 8, p.n_kv = 1, p.head_dim = 96, p.block_size = 16, p.bt_stride = 1;
    p.nb_sub_seq = 1, p.ldq = p.ldo = 8 * 96, p.scale = 0.1f;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_UNSUPPORTED); /* head_dim 96 */
    p.head_dim = 256, p.ldq = p.ldo = 8 * 256, p.q_len = 3;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_UNSUPPORTED); /* 24 rows (at most 16) */
    p.q_len = 1, p.nb_sub_seq = 4;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_INVALID_ARG); /* no scratch */
    p.nb_sub_seq = 1, p.kv_type = XQA_KV_FP8, p.kv_scale = 0.0f;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_INVALID_ARG); /* kv_scale */
    p.n_heads = 7, p.n_kv = 2;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_INVALID_ARG); /* 7 heads over 2 */
    p.n_heads = 8, p.n_kv = 1, p.kv_type = XQA_KV_BF16, p.window = -1;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_INVALID_ARG); /* negative window */
    p.window = 0, p.softcap = -1.0f;
    assert_int_equal(k_attn_decode_xqa(&p, 0), GM_ERR_INVALID_ARG); /* negative soft-cap */
    p.softcap = 0.0f, p.n_heads = 7, p.n_kv = 2, p.kv_type = XQA_KV_FP8;
    p.kv_type = XQA_KV_BF16, p.n_heads = 8, p.n_kv = 1, p.batch = 64;
    assert_true(k_xqa_ctas_per_sm(&p) >= 1);
    assert_true(k_xqa_pick_sub_seq(&p, 4096, 132) >= 2); /* 64 sequences x 1 KV head: split */
    p.n_heads = 16, p.n_kv = 16, p.batch = 4096;
    assert_int_equal(k_xqa_pick_sub_seq(&p, 4096, 132), 1);
    p.n_heads = 8, p.n_kv = 1, p.batch = 64; /* the kernel's occupancy and shared memory */
    assert_true(k_xqa_ctas_per_sm(&p) >= 1);
    assert_true(k_xqa_smem_bytes(256, 8, 1) > 0 && k_xqa_smem_bytes(256, 8, 0) > 0);
    assert_int_equal(k_xqa_smem_bytes(256, 24, 0), 0); /* more rows than a CTA holds */
    cudaFree(d);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        fprintf(stderr, "test_gpu_xqa: no CUDA device, skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xqa_args), cmocka_unit_test(test_xqa_gemma2b),     cmocka_unit_test(test_xqa_gemma7b),
        cmocka_unit_test(test_xqa_gqa),  cmocka_unit_test(test_xqa_small_heads), cmocka_unit_test(test_xqa_paths),
        cmocka_unit_test(test_xqa_gemma23),
    };
    const char *only = getenv("GM_TEST_FILTER"); /* e.g. 'test_xqa_paths' (compute-sanitizer runs) */
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
