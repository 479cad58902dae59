/* test_engine_cpu.c - the CPU engine on the tiny model: batch invariance, chunked
 * prefill, scattered block tables, tensor parallel = single rank, input checks,
 * weight binding errors, the null backend and backend dispatch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "kernels/cpu/sample.h"
#include "parallel/comm.h"
#include "worker/engine.h"
#include "worker/weights.h"

#define BS 4      /* KV block size: small, so sequences span many blocks */
#define NBLK 256  /* pool */

static char g_model[1024];

static gm_engine *make_engine(int32_t rank, int32_t size, gm_comm *comm)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = g_model;
    o.kv_block_size = BS;
    o.kv_num_blocks = NBLK;
    o.max_seqs = 8;
    o.max_tokens = 256;
    o.max_context = 200;
    o.tp_rank = rank, o.tp_size = size, o.comm = comm;
    gm_engine *e = NULL;
    gm_status st = gm_engine_create(&o, &e);
    if (st)
        fprintf(stderr, "engine: %s: %s\n", gm_status_str(st), gm_last_error());
    assert_int_equal(st, GM_OK);
    return e;
}

static int32_t tok(int i) { return 3 + (i * 977 + 13) % 4000; }

/* A sequence's tokens [n] and a block table [nb] starting at block b0 (contiguous) or scattered. */
typedef struct seq {
    int32_t ids[160];
    int32_t n;
    int32_t bt[64];
} seq;

static void seq_init(seq *s, int32_t n, int salt, int32_t b0, int scatter)
{
    s->n = n;
    for (int i = 0; i < n; i++)
        s->ids[i] = i == 0 ? 2 : tok(i * 31 + salt);
    for (int i = 0; i < 64; i++)
        s->bt[i] = scatter ? (int32_t)((b0 + (i * 37) % 64) % NBLK) : b0 + i;
}

static gm_seq_step mk(const seq *s, int32_t slot, int32_t start, int32_t n, int mode)
{
    gm_seq_step q = {slot, s->ids + start, n, start, s->bt, 64, mode, GM_SAMPLING_GREEDY};
    return q;
}

/* Run one step, expect OK. */
static void step(gm_engine *e, const gm_seq_step *q, int32_t n, int32_t *toks, float *lg, int64_t cap)
{
    gm_step_out out = {toks, lg, cap};
    gm_status st = gm_engine_step(e, q, n, &out);
    if (st)
        fprintf(stderr, "step: %s: %s\n", gm_status_str(st), gm_last_error());
    assert_int_equal(st, GM_OK);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    gm_engine *e = make_engine(0, 1, NULL);
    int64_t V = e->cfg.vocab_size;
    seq a, b, c;
    seq_init(&a, 9, 1, 0, 0);
    seq_init(&b, 13, 2, 64, 0);
    seq_init(&c, 6, 3, 128, 0);
    float *alone = malloc((size_t)(9 * V) * 4), *mixed = malloc((size_t)(40 * V) * 4);
    int32_t t1[3], t3[3];
    gm_seq_step q = mk(&a, 0, 0, 9, GM_LOGITS_ALL);
    step(e, &q, 1, t1, alone, 9);
    /* a again (fresh blocks) in the middle of a batch of 3 with other modes */
    seq a2 = a;
    for (int i = 0; i < 64; i++)
        a2.bt[i] = 192 + (i % 64) % 64;
    gm_seq_step qs[3] = {mk(&b, 5, 0, 13, GM_LOGITS_LAST), mk(&a2, 2, 0, 9, GM_LOGITS_ALL),
                         mk(&c, 7, 0, 6, GM_LOGITS_NONE)};
    step(e, qs, 3, t3, mixed, 40);
    /* rows: b's last (1), then a's 9 */
    assert_memory_equal(mixed + V, alone, (size_t)(9 * V) * 4);
    assert_int_equal(t3[1], t1[0]);
    assert_int_equal(t3[2], -1);
    assert_int_equal(t1[0], (int32_t)cpu_argmax(alone + 8 * V, V));
    assert_int_equal(t3[0], (int32_t)cpu_argmax(mixed, V));

    /* decode: a alone vs a with b and c decoding too */
    a.ids[9] = a2.ids[9] = t1[0];
    b.ids[13] = t3[0];
    c.ids[6] = 5;
    float *d1 = malloc((size_t)V * 4), *d3 = malloc((size_t)(3 * V) * 4);
    q = mk(&a, 0, 9, 1, GM_LOGITS_LAST);
    step(e, &q, 1, t1, d1, 1);
    gm_seq_step qd[3] = {mk(&c, 1, 6, 1, GM_LOGITS_LAST), mk(&b, 5, 13, 1, GM_LOGITS_LAST),
                         mk(&a2, 2, 9, 1, GM_LOGITS_LAST)};
    step(e, qd, 3, t3, d3, 3);
    assert_memory_equal(d3 + 2 * V, d1, (size_t)V * 4);
    assert_int_equal(t3[2], t1[0]);
    free(alone), free(mixed), free(d1), free(d3);
    gm_engine_destroy(&e);
    assert_null(e);
}

/* Block copies (copy-on-write): a sequence decoding from a copy of its partial block gives what it gives
 * from the original; a step that is refused runs none of its copies. */
static void test_block_copy(void **state)
{
    (void)state;
    gm_engine *e = make_engine(0, 1, NULL);
    int64_t V = e->cfg.vocab_size;
    seq a;
    seq_init(&a, 21, 4, 0, 0);
    int32_t t;
    gm_seq_step q = mk(&a, 0, 0, 18, GM_LOGITS_LAST); /* blocks 0..4, the last one partial (16, 17) */
    step(e, &q, 1, &t, NULL, 0);
    float *orig = malloc((size_t)V * 4), *copied = malloc((size_t)V * 4), *other = malloc((size_t)V * 4);
    /* the copy: block 4 -> 100, then the next token from the copy's table */
    seq b = a;
    b.bt[4] = 100;
    gm_block_copy cp = {4, 100};
    gm_seq_step qb = mk(&b, 1, 18, 1, GM_LOGITS_LAST);
    gm_step_out out = {&t, copied, 1};
    assert_int_equal(gm_engine_step_copy(e, &cp, 1, &qb, 1, &out), GM_OK);
    q = mk(&a, 0, 18, 1, GM_LOGITS_LAST);
    step(e, &q, 1, &t, orig, 1);
    assert_memory_equal(orig, copied, (size_t)V * 4);
    /* refused (a token outside the vocabulary): its copy 4 -> 101 does not run either */
    seq c = a;
    c.bt[4] = 101;
    c.ids[18] = (int32_t)V;
    cp.dst = 101;
    gm_seq_step qc = mk(&c, 2, 18, 1, GM_LOGITS_LAST);
    assert_int_equal(gm_engine_step_copy(e, &cp, 1, &qc, 1, &out), GM_ERR_INVALID_ARG);
    c.ids[18] = a.ids[18];
    qc = mk(&c, 2, 18, 1, GM_LOGITS_LAST);
    out.logits = other;
    assert_int_equal(gm_engine_step_copy(e, NULL, 0, &qc, 1, &out), GM_OK);
    assert_memory_not_equal(orig, other, (size_t)V * 4); /* block 101 never got positions 16, 17 */
    /* bad copies are refused before anything runs */
    gm_block_copy bad[2] = {{4, 102}, {5, 102}};
    assert_int_equal(gm_engine_step_copy(e, bad, 2, &qc, 1, &out), GM_ERR_INVALID_ARG);
    bad[0] = (gm_block_copy){4, NBLK};
    assert_int_equal(gm_engine_step_copy(e, bad, 1, &qc, 1, &out), GM_ERR_INVALID_ARG);
    free(orig), free(copied), free(other);
    gm_engine_destroy(&e);
}

static void test_chunked_and_scattered(void **state)
{
    (void)state;
    gm_engine *e = make_engine(0, 1, NULL);
    int64_t V = e->cfg.vocab_size, n = 150; /* positions past 64 and past 128 */
    seq a, s;
    seq_init(&a, (int32_t)n, 9, 0, 0);
    seq_init(&s, (int32_t)n, 9, 70, 1); /* same tokens, scattered blocks */
    float *one = malloc((size_t)(n * V) * 4), *chunked = malloc((size_t)(n * V) * 4);
    int32_t t;
    gm_seq_step q = mk(&a, 0, 0, (int32_t)n, GM_LOGITS_ALL);
    step(e, &q, 1, &t, one, n);
    int32_t cuts[] = {0, 1, 5, 17, 64, 65, 100, 150};
    for (int i = 0; i + 1 < 8; i++) {
        gm_seq_step qc = mk(&s, 3, cuts[i], cuts[i + 1] - cuts[i], GM_LOGITS_ALL);
        step(e, &qc, 1, &t, chunked + (int64_t)cuts[i] * V, n);
    }
    assert_memory_equal(one, chunked, (size_t)(n * V) * 4);
    /* LAST gives the ALL mode's last row; without out->logits the same token comes back */
    float *last = malloc((size_t)V * 4);
    int32_t t2;
    seq_init(&a, (int32_t)n, 9, 128, 0);
    q = mk(&a, 0, 0, (int32_t)n, GM_LOGITS_LAST);
    step(e, &q, 1, &t2, last, 1);
    assert_memory_equal(last, one + (n - 1) * V, (size_t)V * 4);
    step(e, &q, 1, &t2, NULL, 0);
    assert_int_equal(t2, (int32_t)cpu_argmax(last, V));
    /* sampling draws with counter = position of the sampled token */
    q.sampling = (gm_sampling){0.8f, 0, 0.9f, 99};
    step(e, &q, 1, &t2, NULL, 0);
    assert_int_equal(t2, cpu_sample(last, V, &q.sampling, (uint64_t)n));
    free(one), free(chunked), free(last);
    gm_engine_destroy(&e);
}

static void expect_invalid(gm_engine *e, const gm_seq_step *q, int32_t n, float *lg, int64_t cap)
{
    int32_t toks[8];
    gm_step_out out = {toks, lg, cap};
    gm_status st = gm_engine_step(e, q, n, &out);
    assert_int_equal(st, GM_ERR_INVALID_ARG);
    assert_true(strlen(gm_last_error()) > 0);
}

static void test_invalid_inputs(void **state)
{
    (void)state;
    gm_engine *e = make_engine(0, 1, NULL);
    int64_t V = e->cfg.vocab_size;
    float *lg = malloc((size_t)(20 * V) * 4);
    seq a;
    seq_init(&a, 10, 4, 0, 0);
    gm_seq_step q = mk(&a, 0, 0, 10, GM_LOGITS_ALL);
    float *ref = malloc((size_t)(10 * V) * 4);
    int32_t t;
    step(e, &q, 1, &t, ref, 10);

    gm_seq_step b = q;
    b.n_blocks = 2; /* 10 tokens need 3 blocks of 4 */
    expect_invalid(e, &b, 1, lg, 20);
    b = q;
    b.start_pos = 195; /* 195 + 10 > max_context 200 */
    expect_invalid(e, &b, 1, lg, 20);
    b = q;
    b.start_pos = -1;
    expect_invalid(e, &b, 1, lg, 20);
    seq bad = a;
    bad.ids[3] = (int32_t)V;
    b = mk(&bad, 0, 0, 10, GM_LOGITS_ALL);
    expect_invalid(e, &b, 1, lg, 20);
    bad.ids[3] = -1;
    expect_invalid(e, &b, 1, lg, 20);
    b = q;
    b.slot = 8; /* max_seqs 8 */
    expect_invalid(e, &b, 1, lg, 20);
    b.slot = -1;
    expect_invalid(e, &b, 1, lg, 20);
    b = q;
    b.n_tokens = 0;
    expect_invalid(e, &b, 1, lg, 20);
    b = q;
    b.logits_mode = 7;
    expect_invalid(e, &b, 1, lg, 20);
    expect_invalid(e, &q, 1, lg, 9); /* 10 rows into 9 */
    bad = a;
    bad.bt[1] = NBLK; /* block id outside the pool */
    b = mk(&bad, 0, 0, 10, GM_LOGITS_ALL);
    expect_invalid(e, &b, 1, lg, 20);
    bad.bt[1] = -3;
    expect_invalid(e, &b, 1, lg, 20);
    gm_seq_step two[2] = {q, q}; /* the same slot twice */
    expect_invalid(e, two, 2, lg, 40);
    b = q;
    b.sampling.top_p = 0.0f;
    expect_invalid(e, &b, 1, lg, 20);
    b.sampling = (gm_sampling){-1.0f, 0, 1.0f, 0};
    expect_invalid(e, &b, 1, lg, 20);
    expect_invalid(e, &q, 9, lg, 20); /* more sequences than max_seqs... with q as a 1-array: count checked first */
    seq big;
    seq_init(&big, 150, 1, 0, 0);
    gm_seq_step many[2] = {mk(&big, 0, 0, 150, GM_LOGITS_NONE), mk(&big, 1, 0, 150, GM_LOGITS_NONE)};
    for (int i = 0; i < 64; i++)
        big.bt[i] = i;
    expect_invalid(e, many, 2, lg, 20); /* 300 tokens > max_tokens 256 */
    /* nothing above changed the KV of a: the same step gives the same logits */
    step(e, &q, 1, &t, lg, 20);
    assert_memory_equal(lg, ref, (size_t)(10 * V) * 4);
    /* an empty step is fine */
    step(e, NULL, 0, NULL, NULL, 0);
    free(lg), free(ref);
    gm_engine_destroy(&e);
}

/* ---- tensor parallel: two ranks in threads over the shm communicator ---- */

typedef struct tp_job {
    int32_t rank;
    const char *shm;
    float *logits; /* rank 0 */
    int32_t toks[4];
    gm_status st;
} tp_job;

static void tp_run(gm_engine *e, float *lg, int32_t *toks)
{
    seq a, b;
    seq_init(&a, 70, 5, 0, 0);
    seq_init(&b, 12, 6, 64, 1);
    int64_t V = e->cfg.vocab_size;
    gm_seq_step q[2] = {mk(&a, 0, 0, 70, GM_LOGITS_ALL), mk(&b, 1, 0, 12, GM_LOGITS_LAST)};
    gm_step_out out = {toks, lg, 71};
    gm_status st = gm_engine_step(e, q, 2, &out);
    assert_int_equal(st, GM_OK);
    a.ids[70] = 77; /* only rank 0 knows the sampled token; every rank feeds the same fixed one */
    gm_seq_step d = mk(&a, 0, 70, 1, GM_LOGITS_LAST);
    gm_step_out out2 = {toks + 2, lg ? lg + 71 * V : NULL, lg ? 1 : 0};
    st = gm_engine_step(e, &d, 1, &out2);
    assert_int_equal(st, GM_OK);
}

static void *tp_thread(void *p)
{
    tp_job *j = p;
    gm_comm *c = NULL;
    j->st = gm_shm_comm_open(j->shm, j->rank, 2, &c);
    if (j->st)
        return NULL;
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = g_model;
    o.kv_block_size = BS;
    o.kv_num_blocks = NBLK;
    o.max_seqs = 8;
    o.max_tokens = 256;
    o.max_context = 200;
    o.tp_rank = j->rank, o.tp_size = 2, o.comm = c;
    gm_engine *e = NULL;
    j->st = gm_engine_create(&o, &e);
    if (!j->st)
        tp_run(e, j->logits, j->toks);
    gm_engine_destroy(&e);
    gm_comm_destroy(&c);
    return NULL;
}

static void test_tensor_parallel(void **state)
{
    (void)state;
    gm_engine *e = make_engine(0, 1, NULL);
    int64_t V = e->cfg.vocab_size;
    float *ref = malloc((size_t)(72 * V) * 4), *got = malloc((size_t)(72 * V) * 4);
    int32_t rt[4];
    tp_run(e, ref, rt);
    gm_engine_destroy(&e);

    char name[64];
    snprintf(name, sizeof name, "/gemmad-test-cpu-%d", (int)getpid());
    assert_int_equal(gm_shm_comm_create(name, 2, 1 << 16), GM_OK);
    tp_job j[2] = {{0, name, got, {0}, GM_OK}, {1, name, NULL, {0}, GM_OK}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, tp_thread, &j[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    gm_shm_comm_unlink(name);
    assert_int_equal(j[0].st, GM_OK);
    assert_int_equal(j[1].st, GM_OK);
    /* f64 partial sums: tp=2 rounds like tp=1 (allow the rare last-bit tie) */
    int64_t differ = 0;
    double maxd = 0;
    for (int64_t i = 0; i < 72 * V; i++) {
        differ += got[i] != ref[i];
        maxd = fmax(maxd, fabs(got[i] - ref[i]));
    }
    if (differ)
        fprintf(stderr, "tp=2 vs tp=1: %lld of %lld logits differ, max %g\n", (long long)differ, (long long)(72 * V),
                maxd);
    assert_true(maxd < 1e-5);
    assert_true(differ < 72 * V / 1000 + 1);
    assert_int_equal(j[0].toks[0], rt[0]);
    assert_int_equal(j[0].toks[1], rt[1]);
    assert_int_equal(j[0].toks[2], rt[2]);
    free(ref), free(got);
}

/* ---- weights: layout and binding errors ---- */

static void test_tp_layout(void **state)
{
    (void)state;
    gm_model_config c2 = {0}, c7 = {0};
    c2.num_heads = 8, c2.num_kv_heads = 1, c2.intermediate_size = 16384;
    c7.num_heads = 16, c7.num_kv_heads = 16, c7.intermediate_size = 24576;
    gm_tp_layout l;
    assert_int_equal(gm_tp_layout_make(&c2, 3, 4, &l), GM_OK);
    assert_int_equal(l.n_heads, 2);
    assert_int_equal(l.head0, 6);
    assert_int_equal(l.n_kv, 1);
    assert_int_equal(l.kv0, 0);
    assert_true(l.kv_replicated);
    assert_int_equal(l.n_inter, 4096);
    assert_int_equal(l.inter0, 12288);
    assert_int_equal(gm_tp_layout_make(&c7, 1, 2, &l), GM_OK);
    assert_int_equal(l.n_kv, 8);
    assert_int_equal(l.kv0, 8);
    assert_false(l.kv_replicated);
    gm_model_config g = c7;
    g.num_kv_heads = 2; /* GQA with tp 4: each rank holds the one KV head its queries read */
    assert_int_equal(gm_tp_layout_make(&g, 3, 4, &l), GM_OK);
    assert_int_equal(l.n_kv, 1);
    assert_int_equal(l.kv0, 1);
    assert_int_not_equal(gm_tp_layout_make(&c7, 0, 3, &l), GM_OK); /* 16 heads over 3 */
    assert_int_not_equal(gm_tp_layout_make(&c7, 2, 2, &l), GM_OK);
}

/* Write a 1-layer model (hidden 8, 2 heads of 4, 1 KV head) with q_proj shaped q_rows x 8. */
static void write_micro(const char *dir, int64_t q_rows, int drop_down)
{
    mkdir(dir, 0755);
    char p[1100];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "{\"vocab_size\": 16, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4,"
               " \"max_position_embeddings\": 32}");
    fclose(f);
    static float zeros[1024];
    st_writer *w = st_writer_new();
    struct { const char *n; int64_t a, b; } t[] = {
        {"model.embed_tokens.weight", 16, 8}, {"model.norm.weight", 8, 0},
        {"model.layers.0.input_layernorm.weight", 8, 0}, {"model.layers.0.post_attention_layernorm.weight", 8, 0},
        {"model.layers.0.self_attn.q_proj.weight", q_rows, 8}, {"model.layers.0.self_attn.k_proj.weight", 4, 8},
        {"model.layers.0.self_attn.v_proj.weight", 4, 8}, {"model.layers.0.self_attn.o_proj.weight", 8, 8},
        {"model.layers.0.mlp.gate_proj.weight", 16, 8}, {"model.layers.0.mlp.up_proj.weight", 16, 8},
        {"model.layers.0.mlp.down_proj.weight", 8, 16},
    };
    for (int i = 0; i < 11 - (drop_down ? 1 : 0); i++) {
        int64_t shape[2] = {t[i].a, t[i].b};
        assert_true(st_writer_add(w, t[i].n, GM_DT_F32, t[i].b ? 2 : 1, shape, zeros) >= 0);
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(st_writer_write(w, p, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
}

static void test_weight_errors(void **state)
{
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/gm-test-engine-cpu-%d", (int)getpid());
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.model_dir = dir;
    o.kv_num_blocks = 4;
    gm_engine *e = NULL;

    write_micro(dir, 8, 0); /* good */
    assert_int_equal(gm_engine_create(&o, &e), GM_OK);
    int32_t ids[3] = {2, 5, 15}, bt[1] = {3}, t = -1;
    gm_seq_step q = {0, ids, 3, 0, bt, 1, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    gm_step_out out = {&t, NULL, 0};
    assert_int_equal(gm_engine_step(e, &q, 1, &out), GM_OK);
    assert_int_equal(t, 0); /* all-zero weights: uniform logits, argmax ties to id 0 */
    gm_engine_destroy(&e);

    write_micro(dir, 6, 0); /* q_proj [6, 8] instead of [8, 8] */
    assert_int_equal(gm_engine_create(&o, &e), GM_ERR_FORMAT);
    assert_null(e);
    const char *m = gm_last_error();
    assert_non_null(strstr(m, "model.layers.0.self_attn.q_proj.weight"));
    assert_non_null(strstr(m, "model.safetensors"));
    assert_non_null(strstr(m, "[8, 8]"));
    assert_non_null(strstr(m, "[6, 8]"));

    write_micro(dir, 8, 1); /* no down_proj */
    assert_int_equal(gm_engine_create(&o, &e), GM_ERR_NOT_FOUND);
    assert_non_null(strstr(gm_last_error(), "model.layers.0.mlp.down_proj.weight"));

    o.model_dir = "/nonexistent/gemma";
    assert_int_not_equal(gm_engine_create(&o, &e), GM_OK);
    assert_null(e);
    char p[300];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    rmdir(dir);
}

static void test_dispatch_and_null(void **state)
{
    (void)state;
    assert_int_equal(gm_backend_parse("cpu"), GM_BACKEND_CPU);
    assert_int_equal(gm_backend_parse("cuda"), GM_BACKEND_CUDA);
    assert_int_equal(gm_backend_parse("null"), GM_BACKEND_NULL);
    assert_int_equal(gm_backend_parse("tpu"), -1);
    assert_string_equal(gm_backend_name(GM_BACKEND_NULL), "null");
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    assert_int_equal(o.kv_block_size, 16);
    assert_int_equal(o.tp_size, 1);
    gm_engine *e = NULL;
#ifndef GM_HAVE_CUDA
    o.backend = GM_BACKEND_CUDA;
    o.model_dir = g_model;
    assert_int_equal(gm_engine_create(&o, &e), GM_ERR_NO_DEVICE);
    assert_non_null(strstr(gm_last_error(), "without CUDA"));
#endif
    o.backend = GM_BACKEND_NULL;
    o.model_dir = NULL; /* gemma-2b shapes */
    assert_int_equal(gm_engine_create(&o, &e), GM_OK);
    assert_int_equal(e->cfg.vocab_size, 256000);
    assert_true(e->kv_num_blocks > 0);
    int32_t ids[4] = {2, 10, 11, 12}, bt[4] = {0, 1, 2, 3}, t1[2], t2[2];
    gm_seq_step q[2] = {{0, ids, 4, 0, bt, 1, GM_LOGITS_LAST, {1.0f, 0, 1.0f, 5}},
                        {1, ids, 1, 20, bt, 4, GM_LOGITS_LAST, {1.0f, 0, 1.0f, 5}}};
    gm_step_out out = {t1, NULL, 0};
    assert_int_equal(gm_engine_step(e, q, 2, &out), GM_OK);
    out.tokens = t2;
    assert_int_equal(gm_engine_step(e, q, 1, &out), GM_OK);
    assert_int_equal(t1[0], t2[0]); /* a function of (seed, position) only */
    for (int i = 0; i < 2; i++)
        assert_true(t1[i] >= 3 && t1[i] < 256000);
    for (int32_t p = 0; p < 2000; p++) {
        gm_seq_step d = {0, ids, 1, p % 60, bt, 4, GM_LOGITS_LAST, {1.0f, 0, 1.0f, (uint64_t)p}};
        assert_int_equal(gm_engine_step(e, &d, 1, &out), GM_OK);
        assert_true(t2[0] >= 3 && t2[0] < 256000);
    }
    q[0].n_blocks = 0;
    assert_int_equal(gm_engine_step(e, q, 1, &out), GM_ERR_INVALID_ARG);
    gm_engine_destroy(&e);
    o.model_dir = g_model; /* config from the model directory */
    assert_int_equal(gm_engine_create(&o, &e), GM_OK);
    assert_int_equal(e->cfg.vocab_size, 4096);
    gm_engine_destroy(&e);
}

/* argv[1]: the model (default GM_BIN/models/tiny); CTest runs this on the Gemma 2 and 3 tiny models too. */
int main(int argc, char **argv)
{
    const char *bin = getenv("GM_BIN");
    if (argc > 1)
        snprintf(g_model, sizeof g_model, "%s", argv[1]);
    else
        snprintf(g_model, sizeof g_model, "%s/models/tiny", bin ? bin : "build");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_invariance), cmocka_unit_test(test_chunked_and_scattered),
        cmocka_unit_test(test_invalid_inputs),   cmocka_unit_test(test_tensor_parallel),
        cmocka_unit_test(test_tp_layout),        cmocka_unit_test(test_weight_errors),
        cmocka_unit_test(test_dispatch_and_null), cmocka_unit_test(test_block_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
