/* test_cpu_sample.c - the CPU twins of the sampler's extras (kernels/cpu/sample.h) against direct
 * float64 computations on small vocabularies: log-probabilities and the top-N, the penalties
 * (presence, frequency, repetition; prompt vs outputs; each token once), the min_tokens mask, and the
 * penalty formula's edge values. The GPU kernel is compared with these in tests/test_gpu_sample.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/sampling.h"
#include "kernels/cpu/sample.h"

static uint64_t g_r = 7;
static double urand(void) /* [0, 1) */
{
    g_r = g_r * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_r >> 11) * (1.0 / 9007199254740992.0);
}

/* log-sum-exp in double, NaN skipped, and the rank of (x, i) among xs: larger first, ties by lower id. */
static double lse_d(const float *x, int64_t n)
{
    double m = -INFINITY, s = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (x[i] == x[i] && x[i] > m)
            m = x[i];
    if (!isfinite(m))
        return m;
    for (int64_t i = 0; i < n; i++)
        if (x[i] == x[i])
            s += exp((double)x[i] - m);
    return m + log(s);
}

static int ranks_before(float a, int64_t ia, float b, int64_t ib)
{
    a = a == a ? a : -INFINITY;
    b = b == b ? b : -INFINITY;
    return a > b || (a == b && ia < ib);
}

static void check_logprobs(const float *x, int64_t V, int32_t n_top)
{
    double lse;
    int32_t ids[GM_MAX_TOP_LOGPROBS];
    float lps[GM_MAX_TOP_LOGPROBS];
    cpu_logprobs(x, V, n_top, &lse, ids, lps);
    double want = lse_d(x, V);
    if (isfinite(want))
        assert_true(fabs(lse - want) < 1e-6 * (1.0 + fabs(want)));
    else
        assert_true(lse == want);
    int32_t k = n_top < V ? n_top : (int32_t)V;
    for (int32_t j = 0; j < k; j++) {
        /* exactly j ids rank before ids[j] */
        int64_t before = 0;
        for (int64_t i = 0; i < V; i++)
            before += ranks_before(x[i], i, x[ids[j]], ids[j]);
        assert_int_equal(before, j);
        if (isfinite(want) && isfinite(x[ids[j]]))
            assert_true(fabs((double)lps[j] - ((double)x[ids[j]] - want)) < 1e-5);
    }
    /* the probabilities of all tokens sum to 1 */
    if (isfinite(want)) {
        double s = 0.0;
        for (int64_t i = 0; i < V; i++)
            if (x[i] == x[i])
                s += exp((double)x[i] - lse);
        assert_true(fabs(s - 1.0) < 1e-6); /* the sum is of float expf() values */
    }
}

static void test_logprobs(void **st)
{
    (void)st;
    float x[1000];
    for (int round = 0; round < 40; round++) {
        int64_t V = round < 20 ? 1 + round : 1000;
        for (int64_t i = 0; i < V; i++)
            x[i] = (float)((urand() - 0.5) * (round % 3 ? 20.0 : 0.5));
        if (round % 4 == 1 && V > 5) /* ties */
            x[V - 1] = x[2] = x[4];
        if (round % 5 == 2 && V > 3) /* NaN and -inf never rank first */
            x[0] = NAN, x[1] = -INFINITY;
        for (int32_t n_top = 0; n_top <= GM_MAX_TOP_LOGPROBS; n_top += 5)
            check_logprobs(x, V, n_top);
    }
    /* a known row: log_softmax([0, ln 3]) = [ln 1/4, ln 3/4] */
    float y[2] = {0.0f, logf(3.0f)};
    double lse;
    int32_t ids[2];
    float lps[2];
    cpu_logprobs(y, 2, 2, &lse, ids, lps);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 0);
    assert_true(fabs(lps[0] - log(0.75)) < 1e-6 && fabs(lps[1] - log(0.25)) < 1e-6);
    /* every logit -inf: lse -inf, the ids still in order */
    float z[3] = {-INFINITY, -INFINITY, -INFINITY};
    cpu_logprobs(z, 3, 2, &lse, ids, lps);
    assert_true(isinf(lse) && lse < 0);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 1);
}

/* The penalties in double, straight from their definitions (OpenAI, Hugging Face, vLLM). */
static double penalized_d(double l, int in_seq, int n_out, double pres, double freq, double rep)
{
    if (!in_seq)
        return l;
    if (rep > 0.0 && rep != 1.0)
        l = l > 0.0 ? l / rep : l * rep;
    return l - freq * n_out - (n_out > 0 ? pres : 0.0);
}

static void test_penalties(void **st)
{
    (void)st;
    enum { V = 64, N = 40 };
    float x[V], y[V];
    int32_t hist[N], cnt[V];
    memset(cnt, 0, sizeof cnt);
    const float reps[] = {0.0f, 1.0f, 1.3f, 0.7f};
    for (int round = 0; round < 32; round++) {
        gm_sampling s = GM_SAMPLING_GREEDY;
        s.presence_penalty = (float)((urand() - 0.5) * 4.0);
        s.frequency_penalty = (float)((urand() - 0.5) * 4.0);
        s.repetition_penalty = reps[round % 4];
        s.n_prompt = round % 5 * 7; /* 0: every position an output; up to 28 */
        int32_t n = round % 3 == 0 ? N : 1 + round % N;
        for (int64_t i = 0; i < V; i++)
            x[i] = (float)((urand() - 0.5) * 10.0);
        x[5] = 0.0f; /* l == 0: multiplied by the repetition penalty, stays 0 */
        for (int32_t p = 0; p < n; p++)
            hist[p] = (int32_t)(urand() * 12.0) * 3; /* few distinct tokens, many repeats */
        hist[0] = 5;
        memcpy(y, x, sizeof x);
        cpu_penalize(y, V, hist, n, &s, cnt);
        for (int64_t i = 0; i < V; i++)
            assert_int_equal(cnt[i], 0); /* the scratch is left clean */
        for (int32_t t = 0; t < V; t++) {
            int in_seq = 0, n_out = 0;
            for (int32_t p = 0; p < n; p++)
                if (hist[p] == t) {
                    in_seq = 1;
                    n_out += p >= s.n_prompt;
                }
            double want = penalized_d(x[t], in_seq, n_out, s.presence_penalty, s.frequency_penalty,
                                      s.repetition_penalty);
            if (!in_seq)
                assert_true(y[t] == x[t]); /* untouched, bit for bit */
            else
                assert_true(fabs((double)y[t] - want) < 1e-5 * (1.0 + fabs(want)));
            /* and gm_penalize_logit is the same float computation */
            if (in_seq)
                assert_true(y[t] == gm_penalize_logit(x[t], n_out, &s));
        }
    }
    /* neutral values change nothing */
    gm_sampling s = GM_SAMPLING_GREEDY;
    assert_false(gm_sampling_has_penalties(&s));
    s.repetition_penalty = 1.0f;
    assert_false(gm_sampling_has_penalties(&s));
    assert_true(gm_penalize_logit(1.5f, 3, &s) == 1.5f);
    s.presence_penalty = 0.5f;
    assert_true(gm_sampling_has_penalties(&s));
    assert_true(gm_penalize_logit(1.5f, 0, &s) == 1.5f); /* prompt-only tokens: presence does not apply */
    assert_true(gm_penalize_logit(1.5f, 2, &s) == 1.0f);
}

static void test_mask_and_sample(void **st)
{
    (void)st;
    enum { V = 10 };
    float x[V] = {0.1f, 3.0f, 0.2f, 2.9f, -1.0f, 0.0f, 0.5f, 2.0f, 1.0f, 0.3f};
    int32_t ids[3] = {1, 3, 99}; /* 99: outside the vocabulary, skipped */
    float y[V];
    memcpy(y, x, sizeof x);
    cpu_mask_ids(y, V, ids, 3);
    for (int i = 0; i < V; i++)
        if (i == 1 || i == 3)
            assert_true(isinf(y[i]) && y[i] < 0);
        else
            assert_true(y[i] == x[i]);
    /* greedy now picks the best unmasked id; sampling never draws a masked one, and the others keep their
     * relative odds (7 vs 8: exp(2.0) : exp(1.0)) */
    gm_sampling s = GM_SAMPLING_GREEDY;
    assert_int_equal(cpu_sample(y, V, &s, 0), 7);
    s = (gm_sampling){1.0f, 0, 1.0f, 5};
    int c7 = 0, c8 = 0;
    for (uint64_t c = 0; c < 20000; c++) {
        int32_t t = cpu_sample(y, V, &s, c);
        assert_true(t != 1 && t != 3);
        c7 += t == 7, c8 += t == 8;
    }
    double r = (double)c7 / (double)c8;
    assert_true(fabs(r - exp(1.0)) < 0.25);
    /* a repetition penalty and a presence penalty together turn the argmax */
    float z[4] = {2.0f, 1.9f, 1.0f, 0.0f};
    int32_t h[3] = {2, 0, 0}, cnt[4] = {0};
    gm_sampling p = GM_SAMPLING_GREEDY;
    p.repetition_penalty = 1.2f;
    p.presence_penalty = 0.1f;
    p.n_prompt = 1;
    cpu_penalize(z, 4, h, 3, &p, cnt);
    assert_true(fabs(z[0] - (2.0 / 1.2 - 0.1)) < 1e-6);
    assert_int_equal(cpu_sample(z, 4, &p, 0), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_mask_and_sample),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
