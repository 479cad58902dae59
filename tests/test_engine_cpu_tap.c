/* test_engine_cpu_tap.c - the CPU engine's extras for the quantizers (worker/engine_cpu.h) on a
 * tiny model of any family: one layer at a time gives the step's activations bit for bit; the
 * taps see each Linear's input (DOWN_IN assembled from its tiles); a layer is exactly
 * h + [norm](attention block) then + [norm](MLP block) with the blocks run alone, with the
 * engine's own Linears or with Linears bound by the caller; a tap's error stops the forward;
 * bad arguments are refused.
 * Usage: test_engine_cpu_tap MODEL_DIR */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/norm.h"
#include "test_check.h"
#include "worker/awq.h"
#include "worker/engine_cpu.h"
#include "worker/weights.h"

static const char *g_model;

enum { NSEQ = 2, S = 40, NB = (S + 15) / 16 }; /* two sequences, each past the tiny models' 16-token window */

typedef struct fixture {
    gm_engine *e;
    int32_t tok[NSEQ * S], bt[NSEQ * NB];
    gm_seq_step seqs[NSEQ];
    int64_t T, H, I, QW, KVW;
} fixture;

static void fx_init(fixture *f)
{
    memset(f, 0, sizeof *f);
    GOK(gm_engine_cpu_create_calib(g_model, NSEQ, S, &f->e));
    const gm_model_config *m = &f->e->cfg;
    for (int i = 0; i < NSEQ * S; i++)
        f->tok[i] = i % S == 0 ? m->bos_id : 3 + (i * 977 + 13) % (m->vocab_size - 3);
    for (int i = 0; i < NSEQ * NB; i++)
        f->bt[i] = i;
    for (int i = 0; i < NSEQ; i++)
        f->seqs[i] = (gm_seq_step){i, f->tok + i * S, S, 0, f->bt + i * NB, NB, GM_LOGITS_NONE, GM_SAMPLING_GREEDY};
    f->T = NSEQ * S, f->H = m->hidden_size, f->I = m->intermediate_size;
    f->QW = (int64_t)m->num_heads * m->head_dim, f->KVW = (int64_t)m->num_kv_heads * m->head_dim;
}

/* What a tap saw: every tap of one layer, rows placed at row0. */
typedef struct seen {
    int32_t layer;
    float *x[GM_TAP_COUNT];
    int64_t cols[GM_TAP_COUNT], rows[GM_TAP_COUNT];
    int calls[GM_TAP_COUNT];
    gm_status fail_with; /* returned by every call when set */
} seen;

static gm_status on_tap(void *ctx, int32_t layer, gm_cpu_tap tap, int64_t row0, const float *x, int64_t rows,
                        int64_t cols)
{
    seen *s = ctx;
    if (s->fail_with)
        return gm_fail(s->fail_with, "tap refused");
    if (layer != s->layer)
        return GM_OK;
    assert_true(tap >= 0 && tap < GM_TAP_COUNT);
    if (!s->x[tap]) {
        s->x[tap] = calloc((size_t)(NSEQ * S * cols), sizeof(float));
        s->cols[tap] = cols;
    }
    assert_int_equal(s->cols[tap], cols);
    assert_true(row0 + rows <= NSEQ * S);
    memcpy(s->x[tap] + row0 * cols, x, (size_t)(rows * cols) * sizeof(float));
    s->rows[tap] += rows;
    s->calls[tap]++;
    return GM_OK;
}

static void seen_free(seen *s)
{
    for (int i = 0; i < GM_TAP_COUNT; i++)
        free(s->x[i]);
    memset(s, 0, sizeof *s);
}

/* A full step's taps of layer l equal those of running embed + layers 0..l one at a time, bit for bit,
 * and every tap has the shape engine_cpu.h gives it. */
static void test_layer_equals_step(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    int32_t L = f.e->cfg.num_layers, l = L / 2;
    seen a = {.layer = l}, b = {.layer = l};
    GOK(gm_engine_cpu_set_tap(f.e, on_tap, &a));
    GOK(gm_engine_step(f.e, f.seqs, NSEQ, NULL));
    const int64_t want_cols[GM_TAP_COUNT] = {f.H, f.KVW, f.KVW, f.QW, f.H, f.I};
    for (int t = 0; t < GM_TAP_COUNT; t++) {
        assert_int_equal(a.rows[t], f.T);
        assert_int_equal(a.cols[t], want_cols[t]);
    }
    assert_true(a.calls[GM_TAP_DOWN_IN] > 1); /* the MLP runs in tiles of rows */
    float *h = malloc((size_t)(f.T * f.H) * sizeof(float));
    GOK(gm_engine_cpu_set_tap(f.e, NULL, NULL));
    GOK(gm_engine_cpu_embed(f.e, f.seqs, NSEQ, h));
    for (int32_t k = 0; k < l; k++)
        GOK(gm_engine_cpu_layer(f.e, k, f.seqs, NSEQ, h));
    GOK(gm_engine_cpu_set_tap(f.e, on_tap, &b));
    GOK(gm_engine_cpu_layer(f.e, l, f.seqs, NSEQ, h));
    for (int t = 0; t < GM_TAP_COUNT; t++)
        assert_memory_equal(a.x[t], b.x[t], (size_t)(f.T * a.cols[t]) * sizeof(float));
    free(h);
    seen_free(&a), seen_free(&b);
    gm_engine_destroy(&f.e);
}

/* h [T, H] += [norm](y) (norm NULL: plain add), as the engine adds a block's output. */
static void add_block(float *h, const float *y, const gm_wview *norm, const gm_model_config *m, int64_t T)
{
    int64_t n = T * m->hidden_size;
    float *t = malloc((size_t)n * sizeof(float));
    if (norm)
        cpu_rmsnorm(y, norm->data, norm->dtype, T, m->hidden_size, m->rms_norm_eps, t);
    else
        memcpy(t, y, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        h[i] += t[i];
    free(t);
}

/* Layer l = residual adds of its two blocks run alone on the tapped inputs, with the engine's Linears
 * and with Linears the caller bound (the quantizer's candidates); down_proj of the tapped DOWN_IN is
 * the MLP block's output. */
static void test_blocks_compose_layer(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    const gm_model_config *m = &f.e->cfg;
    int32_t l = m->num_layers - 1;
    int64_t n = f.T * f.H;
    float *h0 = malloc((size_t)n * sizeof(float)), *h = malloc((size_t)n * sizeof(float));
    float *att = malloc((size_t)n * sizeof(float)), *att2 = malloc((size_t)n * sizeof(float));
    float *mlp = malloc((size_t)n * sizeof(float)), *mlp2 = malloc((size_t)n * sizeof(float));
    double *down = malloc((size_t)n * sizeof(double));
    GOK(gm_engine_cpu_embed(f.e, f.seqs, NSEQ, h0));
    memcpy(h, h0, (size_t)n * sizeof(float));
    seen s = {.layer = l};
    GOK(gm_engine_cpu_set_tap(f.e, on_tap, &s));
    GOK(gm_engine_cpu_layer(f.e, l, f.seqs, NSEQ, h));
    GOK(gm_engine_cpu_set_tap(f.e, NULL, NULL));

    gm_weights w;
    gm_linear *lin = NULL;
    GOK(gm_weights_bind(gm_engine_cpu_model(f.e), m, 0, 1, &w));
    GOK(gm_linears_bind(gm_engine_cpu_model(f.e), &w.cfg, &w.tp, 0, &lin));
    const gm_linear *ll = lin + (int64_t)l * GM_LIN_COUNT;
    GOK(gm_engine_cpu_block(f.e, l, GM_CPU_BLOCK_ATTN, NULL, f.seqs, NSEQ, s.x[GM_TAP_QKV_IN], att));
    GOK(gm_engine_cpu_block(f.e, l, GM_CPU_BLOCK_ATTN, ll, f.seqs, NSEQ, s.x[GM_TAP_QKV_IN], att2));
    GOK(gm_engine_cpu_block(f.e, l, GM_CPU_BLOCK_MLP, NULL, f.seqs, NSEQ, s.x[GM_TAP_GU_IN], mlp));
    GOK(gm_engine_cpu_block(f.e, l, GM_CPU_BLOCK_MLP, ll, f.seqs, NSEQ, s.x[GM_TAP_GU_IN], mlp2));
    assert_memory_equal(att, att2, (size_t)n * sizeof(float));
    assert_memory_equal(mlp, mlp2, (size_t)n * sizeof(float));
    GOK(gm_linear_matmul_f64(&ll[GM_LIN_DOWN], s.x[GM_TAP_DOWN_IN], f.T, f.I, down, f.H));
    for (int64_t i = 0; i < n; i++)
        assert_true((float)down[i] == mlp[i]);

    const gm_layer_weights *L = &w.layers[l];
    add_block(h0, att, m->sandwich_norm ? &L->post_attn_norm : NULL, m, f.T);
    add_block(h0, mlp, m->sandwich_norm ? &L->post_ffw_norm : NULL, m, f.T);
    assert_memory_equal(h0, h, (size_t)n * sizeof(float));

    gm_linears_free(lin, (int64_t)m->num_layers * GM_LIN_COUNT);
    free(lin);
    gm_weights_release(&w);
    free(h0), free(h), free(att), free(att2), free(mlp), free(mlp2), free(down);
    seen_free(&s);
    gm_engine_destroy(&f.e);
}

/* A tap's error stops the step (and the layer) and comes back; bad arguments are refused. */
static void test_errors(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    seen s = {.layer = 0, .fail_with = GM_ERR_CANCELLED};
    GOK(gm_engine_cpu_set_tap(f.e, on_tap, &s));
    assert_int_equal(gm_engine_step(f.e, f.seqs, NSEQ, NULL), GM_ERR_CANCELLED);
    float *h = calloc((size_t)(f.T * f.H), sizeof(float));
    assert_int_equal(gm_engine_cpu_layer(f.e, 0, f.seqs, NSEQ, h), GM_ERR_CANCELLED);
    GOK(gm_engine_cpu_set_tap(f.e, NULL, NULL));
    assert_int_equal(gm_engine_cpu_layer(f.e, f.e->cfg.num_layers, f.seqs, NSEQ, h), GM_ERR_INVALID_ARG);
    assert_int_equal(gm_engine_cpu_layer(f.e, -1, f.seqs, NSEQ, h), GM_ERR_INVALID_ARG);
    assert_int_equal(gm_engine_cpu_block(f.e, 0, (gm_cpu_block)7, NULL, f.seqs, NSEQ, h, h), GM_ERR_INVALID_ARG);
    gm_seq_step bad = f.seqs[0];
    bad.n_tokens = S + 1; /* past max_context */
    assert_int_not_equal(gm_engine_cpu_layer(f.e, 0, &bad, 1, h), GM_OK);
    assert_int_not_equal(gm_engine_cpu_create_calib(g_model, 0, S, &(gm_engine *){NULL}), GM_OK);
    free(h);

    gm_engine_opts o; /* another backend */
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_NULL;
    gm_engine *ne = NULL;
    GOK(gm_engine_create(&o, &ne));
    assert_int_equal(gm_engine_cpu_set_tap(ne, on_tap, &s), GM_ERR_INVALID_ARG);
    assert_null(gm_engine_cpu_model(ne));
    gm_engine_destroy(&ne);
    assert_int_equal(gm_engine_cpu_set_tap(NULL, NULL, NULL), GM_ERR_INVALID_ARG);
    gm_engine_destroy(&f.e);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    g_model = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_equals_step),
        cmocka_unit_test(test_blocks_compose_layer),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
