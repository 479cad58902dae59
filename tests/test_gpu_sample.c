/* test_gpu_sample.c - the GPU sampler's extras (k_sample_ex, kernels/cuda/sample.cuh) against their CPU
 * twins (kernels/cpu/sample.h) on the same logits, and the CUDA engine through the sampling scenario.
 *   - log-probabilities: lse-based values within 1e-5, the top-N ids equal (ties to the lower id on both
 *     sides), at Gemma's vocabulary and at an odd one (unaligned rows); the sampled token's value;
 *   - penalties: per-slot tables built over steps (a prompt in chunks, decodes, a slot reset and reused)
 *     change exactly the logits cpu_penalize changes, to the bit;
 *   - min_tokens: the masked ids are -inf and never drawn;
 *   - a row with a NaN or +inf, penalized or not, with log-probabilities or not: no token
 *     (GM_SAMPLE_NONFINITE, as cpu_sample), its log-probability -inf;
 *   - the tokens drawn equal cpu_sample's on the twins' rows for the same seeds (greedy: all; sampled: all
 *     but draws within ~1e-7 of a boundary);
 *   - the CUDA engine on the tiny model: every sampled row of tests/sample_scenario.h against the twins
 *     on the engine's own logits (decode steps through the CUDA graphs, -1 tokens fed on the device).
 * usage: test_gpu_sample [MODEL_DIR] (default $GM_BIN/models/tiny). Exit 77 without a GPU. */
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
#include "kernels/cuda/sample.cuh"
#include "tests/sample_scenario.h"
#include "tests/test_check.h"

#define CK(x) assert_int_equal((int)(x), 0)
#define MAXR 8

static char g_model[1024];
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void) /* [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void *dev_put(const void *h, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 16));
    if (h)
        CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* Device state of k_sample_ex for up to MAXR rows over n_slots penalty tables of cap entries. */
typedef struct gx {
    int64_t V;
    int32_t cap, n_slots;
    float *lg;                 /* [MAXR, V] */
    gm_sampling *params;
    uint64_t *ctr;
    int32_t *tok;
    k_sample_aux a;            /* device pointers */
    int32_t *ids, *meta;       /* ids [256]; meta: q_start, n_new, start_pos, slot, pen, mask_off, mask_n [7, MAXR] */
    int32_t *mask_ids;         /* [MAXR * GM_MAX_STOP_SET] */
} gx;

static void gx_init(gx *g, int64_t V, int32_t n_slots, int32_t max_context)
{
    memset(g, 0, sizeof *g);
    g->V = V;
    g->n_slots = n_slots;
    g->cap = gm_pen_table_cap(max_context, V);
    g->lg = dev_put(NULL, (size_t)(MAXR * V) * 4);
    g->params = dev_put(NULL, MAXR * sizeof(gm_sampling));
    g->ctr = dev_put(NULL, MAXR * 8);
    g->tok = dev_put(NULL, MAXR * 4);
    g->ids = dev_put(NULL, 256 * 4);
    g->meta = dev_put(NULL, 7 * MAXR * 4);
    g->mask_ids = dev_put(NULL, MAXR * GM_MAX_STOP_SET * 4);
    k_sample_aux *a = &g->a;
    a->ids = g->ids;
    a->q_start = g->meta, a->n_new = g->meta + MAXR, a->start_pos = g->meta + 2 * MAXR, a->slot = g->meta + 3 * MAXR;
    a->pen = g->meta + 4 * MAXR, a->mask_off = g->meta + 5 * MAXR, a->mask_n = g->meta + 6 * MAXR;
    a->mask_ids = g->mask_ids;
    size_t nt = (size_t)n_slots * (size_t)g->cap * 4;
    a->keys = dev_put(NULL, nt), a->counts = dev_put(NULL, nt), a->raw = dev_put(NULL, nt);
    CK(cudaMemset(a->keys, 0xff, nt));
    a->cap = g->cap;
    a->lp = dev_put(NULL, MAXR * 4);
    a->top_ids = dev_put(NULL, MAXR * GM_MAX_TOP_LOGPROBS * 4);
    a->top_lps = dev_put(NULL, MAXR * GM_MAX_TOP_LOGPROBS * 4);
}

static void gx_free(gx *g)
{
    cudaFree(g->lg), cudaFree(g->params), cudaFree(g->ctr), cudaFree(g->tok), cudaFree(g->ids);
    cudaFree(g->meta), cudaFree(g->mask_ids);
    cudaFree(g->a.keys), cudaFree(g->a.counts), cudaFree(g->a.raw);
    cudaFree(g->a.lp), cudaFree(g->a.top_ids), cudaFree(g->a.top_lps);
}

/* One row of a step: its sequence's new tokens (ids [n_new] at start_pos), slot, GM_PEN_* flags, mask. */
typedef struct grow {
    const int32_t *ids;
    int32_t n_new, start_pos, slot, pen;
    const int32_t *mask;
    int32_t n_mask;
    gm_sampling sp;
    uint64_t ctr;
} grow;

/* Launch k_sample_ex over rows[0..n) with logits lg [n, V] (host); back: the modified logits, the tokens and
 * the log-probabilities. */
static void gx_run(gx *g, const grow *rows, int n, const float *lg, float *lg_out, int32_t *tok, float *lp,
                   int32_t *top_ids, float *top_lps)
{
    int32_t meta[7 * MAXR] = {0}, ids[256], mask[MAXR * GM_MAX_STOP_SET];
    gm_sampling ps[MAXR];
    uint64_t ctr[MAXR];
    int32_t t = 0, nm = 0;
    for (int r = 0; r < n; r++) {
        meta[r] = t, meta[MAXR + r] = rows[r].n_new, meta[2 * MAXR + r] = rows[r].start_pos;
        meta[3 * MAXR + r] = rows[r].slot, meta[4 * MAXR + r] = rows[r].pen;
        meta[5 * MAXR + r] = nm, meta[6 * MAXR + r] = rows[r].n_mask;
        memcpy(ids + t, rows[r].ids, (size_t)rows[r].n_new * 4);
        t += rows[r].n_new;
        memcpy(mask + nm, rows[r].mask, (size_t)rows[r].n_mask * 4);
        nm += rows[r].n_mask;
        ps[r] = rows[r].sp;
        ctr[r] = rows[r].ctr;
    }
    CK(cudaMemcpy(g->meta, meta, sizeof meta, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->ids, ids, (size_t)(t ? t : 1) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->mask_ids, mask, (size_t)(nm ? nm : 1) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->params, ps, (size_t)n * sizeof *ps, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->ctr, ctr, (size_t)n * 8, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->lg, lg, (size_t)(n * g->V) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(g->a.lp, 0xff, MAXR * 4)); /* NaN: an unwritten value fails */
    GOK(k_sample_ex(g->lg, g->V, g->V, n, g->params, g->ctr, g->tok, &g->a, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(lg_out, g->lg, (size_t)(n * g->V) * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(tok, g->tok, (size_t)n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lp, g->a.lp, (size_t)n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(top_ids, g->a.top_ids, (size_t)n * GM_MAX_TOP_LOGPROBS * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(top_lps, g->a.top_lps, (size_t)n * GM_MAX_TOP_LOGPROBS * 4, cudaMemcpyDeviceToHost));
}

/* The twins on one raw row with its sequence's history hist [n_hist]: the penalized, masked row into work, the
 * log-probabilities, the token. */
static int32_t twin_row(const float *raw, int64_t V, const grow *r, const int32_t *hist, int64_t n_hist,
                        float *work, int32_t *cnt, double *lse, int32_t *ids, float *lps)
{
    cpu_logprobs(raw, V, r->sp.top_logprobs, lse, ids, lps);
    memcpy(work, raw, (size_t)V * 4);
    if (r->pen & GM_PEN_APPLY)
        cpu_penalize(work, V, hist, n_hist, &r->sp, cnt);
    cpu_mask_ids(work, V, r->mask, r->n_mask);
    return cpu_sample(work, V, &r->sp, r->ctr);
}

/* Logits rows [n, V]: normal-ish, bf16-rounded (ties), a -inf (a row with a NaN or +inf has no token:
 * the tests put one where they mean it). */
static void fill_rows(float *lg, int n, int64_t V, float scale)
{
    for (int64_t i = 0; i < n * V; i++)
        lg[i] = gm_round_bf16((frand() + frand() + frand()) * scale);
    lg[V + 9] = -INFINITY;
}

static void test_logprobs(void **state)
{
    (void)state;
    const int64_t Vs[2] = {256000, 4099};
    for (int vi = 0; vi < 2; vi++) {
        int64_t V = Vs[vi];
        gx g;
        gx_init(&g, V, 1, 64);
        int n = MAXR;
        float *lg = malloc((size_t)(n * V) * 4), *out = malloc((size_t)(n * V) * 4), *work = malloc((size_t)V * 4);
        int32_t *cnt = calloc((size_t)V, 4);
        fill_rows(lg, n, V, 3.0f);
        /* no token (GM_SAMPLE_NONFINITE): a NaN in rows 2 (greedy) and 3 (sampled), +inf in row 6 (greedy,
         * no log-probabilities: those of a row with +inf are NaN) */
        lg[2 * V + 7] = NAN, lg[3 * V + V - 1] = NAN, lg[6 * V + 100] = INFINITY;
        grow rows[MAXR];
        for (int r = 0; r < n; r++) {
            memset(&rows[r], 0, sizeof rows[r]);
            rows[r].sp = r % 2 ? (gm_sampling){0.9f, r == 3 ? 40 : 0, r == 5 ? 0.9f : 1.0f, 3 + (uint64_t)r}
                               : GM_SAMPLING_GREEDY;
            rows[r].sp.logprobs = r != 6;
            rows[r].sp.top_logprobs = (int32_t[]){0, 1, 5, 20, 20, 7, 0, 2}[r];
            rows[r].ctr = 50 + (uint64_t)r;
        }
        int32_t tok[MAXR], top_ids[MAXR * GM_MAX_TOP_LOGPROBS];
        float lp[MAXR], top_lps[MAXR * GM_MAX_TOP_LOGPROBS];
        gx_run(&g, rows, n, lg, out, tok, lp, top_ids, top_lps);
        assert_memory_equal(out, lg, (size_t)(n * V) * 4); /* nothing to penalize or mask: untouched */
        for (int r = 0; r < n; r++) {
            double lse;
            int32_t ids[GM_MAX_TOP_LOGPROBS];
            float lps[GM_MAX_TOP_LOGPROBS];
            int32_t want = twin_row(lg + r * V, V, &rows[r], NULL, 0, work, cnt, &lse, ids, lps);
            if (gm_sampling_is_greedy(&rows[r].sp))
                assert_int_equal(tok[r], want);
            else if (tok[r] != want)
                print_message("  V %lld row %d: drew %d, cpu_sample %d (a draw at a boundary)\n", (long long)V, r,
                              tok[r], want);
            assert_int_equal(tok[r] == GM_SAMPLE_NONFINITE, r == 2 || r == 3 || r == 6);
            if (!gm_sampling_wants_logprobs(&rows[r].sp))
                continue;
            if (tok[r] < 0)
                assert_true(lp[r] == -INFINITY);
            else
                assert_true(fabs((double)lp[r] - ((double)lg[r * V + tok[r]] - lse)) < 1e-5);
            for (int32_t k = 0; k < rows[r].sp.top_logprobs; k++) {
                assert_int_equal(top_ids[r * GM_MAX_TOP_LOGPROBS + k], ids[k]);
                assert_true(fabs((double)top_lps[r * GM_MAX_TOP_LOGPROBS + k] - lps[k]) < 1e-5);
            }
        }
        free(lg), free(out), free(work), free(cnt);
        gx_free(&g);
    }
}

/* A sequence on a slot: its tokens by position. */
typedef struct gseq {
    int32_t hist[256];
    int32_t n;
} gseq;

static void test_penalties_and_mask(void **state)
{
    (void)state;
    const int64_t V = 256000;
    gx g;
    gx_init(&g, V, 4, 256);
    float *lg = malloc((size_t)(MAXR * V) * 4), *out = malloc((size_t)(MAXR * V) * 4);
    float *work = malloc((size_t)V * 4);
    int32_t *cnt = calloc((size_t)V, 4);
    gseq s[4];
    memset(s, 0, sizeof s);
    gm_sampling sp[4] = {GM_SAMPLING_GREEDY, {0.8f, 0, 1.0f, 9}, GM_SAMPLING_GREEDY, {1.0f, 50, 0.95f, 4}};
    sp[0].presence_penalty = 0.7f, sp[0].frequency_penalty = 0.3f, sp[0].repetition_penalty = 1.4f;
    sp[0].logprobs = 1, sp[0].top_logprobs = 3, sp[0].n_prompt = 20;
    sp[1].frequency_penalty = 1.1f, sp[1].repetition_penalty = 0.8f, sp[1].n_prompt = 12, sp[1].logprobs = 1;
    sp[2].presence_penalty = -1.0f, sp[2].n_prompt = 5;                /* a negative penalty */
    sp[3].repetition_penalty = 2.0f, sp[3].n_prompt = 0, sp[3].top_logprobs = 20; /* every position an output */
    int32_t mask[3] = {17, 4242, 255999};
    int agree = 0, draws = 0;
    for (int step = 0; step < 12; step++) {
        grow rows[4];
        int32_t newtok[4][32];
        for (int i = 0; i < 4; i++) {
            grow *r = &rows[i];
            memset(r, 0, sizeof *r);
            r->slot = i;
            r->sp = sp[i];
            if (step == 7 && i == 2) /* slot 2 gets a new sequence: its table starts over */
                s[2].n = 0;
            r->start_pos = s[i].n;
            /* a prompt in chunks of 8 (those sample nothing: ON without APPLY), then one token a step */
            r->n_new = s[i].n < sp[i].n_prompt ? (sp[i].n_prompt - s[i].n < 8 ? sp[i].n_prompt - s[i].n : 8) : 1;
            for (int32_t k = 0; k < r->n_new; k++) { /* few distinct ids: many repeats */
                newtok[i][k] = step % 3 == 2 && k == 0 ? mask[1] : (int32_t)(((step * 7 + k * 3 + i) % 11) * 9973);
                s[i].hist[s[i].n + k] = newtok[i][k];
            }
            r->ids = newtok[i];
            r->pen = GM_PEN_ON | (r->start_pos == 0 ? GM_PEN_RESET : 0) |
                     (s[i].n + r->n_new >= sp[i].n_prompt ? GM_PEN_APPLY : 0);
            if (i % 2 == 0 && step % 2 == 0) /* min_tokens' mask on some rows */
                r->mask = mask, r->n_mask = 3;
            r->ctr = (uint64_t)(s[i].n + r->n_new);
            s[i].n += r->n_new;
        }
        fill_rows(lg, 4, V, 2.0f);
        /* make the history's tokens the likeliest, so the penalties decide the draw */
        for (int i = 0; i < 4; i++)
            for (int32_t p = 0; p < s[i].n; p++)
                lg[i * V + s[i].hist[p]] = 6.0f + (float)(p % 5) * 0.5f - (float)(i % 2) * 9.0f;
        int nan_row = step == 9 ? 1 : step == 10 ? 0 : -1; /* penalized rows with logprobs: no token */
        if (nan_row >= 0)
            lg[nan_row * V + 5] = NAN; /* 5: in no history, so the row's other logits compare bit for bit */
        int32_t tok[MAXR], top_ids[MAXR * GM_MAX_TOP_LOGPROBS];
        float lp[MAXR], top_lps[MAXR * GM_MAX_TOP_LOGPROBS];
        gx_run(&g, rows, 4, lg, out, tok, lp, top_ids, top_lps);
        for (int i = 0; i < 4; i++) {
            double lse;
            int32_t ids[GM_MAX_TOP_LOGPROBS];
            float lps[GM_MAX_TOP_LOGPROBS];
            int32_t want = twin_row(lg + i * V, V, &rows[i], s[i].hist, s[i].n, work, cnt, &lse, ids, lps);
            /* the same logits, bit for bit: penalized where the twin penalizes, -inf where masked */
            if (memcmp(out + i * V, work, (size_t)V * 4))
                fail_msg("step %d row %d: the GPU's penalized logits differ from cpu_penalize's", step, i);
            for (int k = 0; k < rows[i].n_mask; k++)
                assert_int_not_equal(tok[i], mask[k]);
            if (gm_sampling_is_greedy(&sp[i]) || i == nan_row)
                assert_int_equal(tok[i], want);
            assert_int_equal(tok[i] == GM_SAMPLE_NONFINITE, i == nan_row);
            draws++;
            agree += tok[i] == want;
            if (gm_sampling_wants_logprobs(&sp[i]) && tok[i] < 0)
                assert_true(lp[i] == -INFINITY);
            else if (gm_sampling_wants_logprobs(&sp[i])) /* of the raw logits, the penalties notwithstanding */
                assert_true(fabs((double)lp[i] - ((double)lg[i * V + tok[i]] - lse)) < 1e-5);
            for (int32_t k = 0; k < sp[i].top_logprobs; k++)
                assert_int_equal(top_ids[i * GM_MAX_TOP_LOGPROBS + k], ids[k]);
        }
    }
    print_message("  penalties: %d/%d draws as cpu_sample\n", agree, draws);
    assert_true(agree >= draws - 1);
    free(lg), free(out), free(work), free(cnt);
    gx_free(&g);
}

static void test_bad_args(void **state)
{
    (void)state;
    k_sample_aux a;
    memset(&a, 0, sizeof a);
    float *lg = dev_put(NULL, 64);
    assert_int_equal(k_sample_ex(lg, 16, 16, 1, NULL, NULL, NULL, &a, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_sample_ex(lg, 16, 16, 0, NULL, NULL, NULL, &a, 0), GM_OK); /* no rows: nothing to do */
    cudaFree(lg);
}

/* The CUDA engine through the scenario: every sampled row against the twins on its own logits. */
static void test_engine_scenario(void **state)
{
    (void)state;
    gm_engine *e = sc_engine(GM_BACKEND_CUDA, g_model);
    /* bf16 activations: the dumped logits are the sampler's to bf16-GEMM noise */
    sc_run_all(e, (sc_tol){2e-3, 0.05f});
    gm_engine_destroy(&e);
}

int main(int argc, char **argv)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *bin = getenv("GM_BIN");
    if (argc > 1)
        snprintf(g_model, sizeof g_model, "%s", argv[1]);
    else
        snprintf(g_model, sizeof g_model, "%s/models/tiny", bin ? bin : "build");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_penalties_and_mask),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_engine_scenario),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
