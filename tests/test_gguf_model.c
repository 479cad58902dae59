/* test_gguf_model.c - a Gemma GGUF as a checkpoint (common/gguf_model.c): metadata to config for
 * gemma, gemma2 and gemma3 with their defaults, tensor names and shapes, the norm +1 removed,
 * the in-memory st_model bound by gm_weights_bind, gm_checkpoint_open on files and directories,
 * the tokenizer built from GGUF vocabulary, mutated files through the whole path, and NaN or Inf data
 * refused by the engines' load check after dequantizing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/gguf_model.h"
#include "common/gguf_quants.h"
#include "gguf_build.h"
#include "gguf_tiny.h"
#include "test_check.h"
#include "worker/weights.h"

static gm_status parse(const gb *b, gguf_file **f) { return gguf_parse(b->p, b->len, "tiny.gguf", f); }

/* ------------------------------------------------------------------ config */

static void extra_g2(gb *b, const char *arch)
{
    gb_kv_f32(b, "gemma2.attn_logit_softcapping", 40.0f);
    gb_kv_f32(b, "gemma2.rope.freq_base", 20000.0f);
}

static void extra_pattern(gb *b, const char *arch)
{
    gb_kv_arr(b, "gemma3.attention.sliding_window_pattern", GGUF_VT_BOOL, NL);
    gb_le(b, 0, 1);
    gb_le(b, 1, 1);
    gb_kv_str(b, "gemma3.rope.scaling.type", "linear");
    gb_kv_f32(b, "gemma3.rope.scaling.factor", 8.0f);
    gb_kv_f32(b, "gemma3.attention.scale", 0.125f);
}

static void test_config(void **state)
{
    gm_model_config c;
    gguf_file *f = NULL;
    gb b = tiny_gguf("gemma3", NULL, 0);
    GOK(parse(&b, &f));
    GOK(gguf_model_config(f, &c));
    assert_int_equal(c.family, GM_FAMILY_GEMMA3);
    assert_int_equal(c.vocab_size, VOCAB);
    assert_int_equal(c.hidden_size, H);
    assert_int_equal(c.intermediate_size, FF);
    assert_int_equal(c.num_layers, NL);
    assert_int_equal(c.num_heads, NH);
    assert_int_equal(c.num_kv_heads, NKV);
    assert_int_equal(c.head_dim, HD);
    assert_int_equal(c.max_position, 4096);
    assert_true(c.rope_theta == 10000.0f && c.rope_theta_local == 10000.0f && c.rms_norm_eps == 1e-6f);
    assert_true(c.query_pre_attn_scalar == (float)HD && c.rope_scale == 1.0f);
    assert_true(c.attn_softcap == 0 && c.final_softcap == 0);
    assert_int_equal(c.sliding_window, 512);
    assert_int_equal(c.layer_sliding[0], 1);
    assert_int_equal(c.layer_sliding[1], 1);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.sandwich_norm, 1);
    assert_int_equal(c.start_of_turn_id, 4); /* found by name in this vocabulary */
    assert_int_equal(c.end_of_turn_id, 5);
    assert_int_equal(c.bos_id, 2);
    assert_int_equal(c.eos_id, 1);
    assert_string_equal(c.torch_dtype, "bfloat16");
    gguf_destroy(&f);
    free(b.p);

    b = tiny_gguf("gemma3", extra_pattern, 4);
    GOK(parse(&b, &f));
    GOK(gguf_model_config(f, &c));
    assert_int_equal(c.layer_sliding[0], 0);
    assert_int_equal(c.layer_sliding[1], 1);
    assert_true(c.rope_scale == 8.0f);
    assert_true(c.query_pre_attn_scalar == 64.0f); /* 0.125^-2 */
    gguf_destroy(&f);
    free(b.p);

    b = tiny_gguf("gemma2", extra_g2, 2);
    GOK(parse(&b, &f));
    GOK(gguf_model_config(f, &c));
    assert_int_equal(c.family, GM_FAMILY_GEMMA2);
    assert_true(c.attn_softcap == 40.0f && c.final_softcap == 30.0f);
    assert_true(c.rope_theta == 20000.0f && c.rope_theta_local == 20000.0f);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.layer_sliding[0], 1);
    assert_int_equal(c.layer_sliding[1], 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.sandwich_norm, 1);
    gguf_destroy(&f);
    free(b.p);

    b = tiny_gguf("gemma", NULL, 0);
    GOK(parse(&b, &f));
    GOK(gguf_model_config(f, &c));
    assert_int_equal(c.family, GM_FAMILY_GEMMA1);
    assert_int_equal(c.sandwich_norm, 0);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.layer_sliding[0], 0);
    gguf_destroy(&f);
    free(b.p);
}

/* Each metadata variant below must make gguf_model_config fail with want and `what`. */
static void bad_cfg(void (*extra)(gb *, const char *), int n_extra, const char *arch, gm_status want,
                    const char *what)
{
    gb b = tiny_gguf(arch, extra, n_extra);
    gguf_file *f = NULL;
    GOK(parse(&b, &f));
    gm_model_config c;
    gm_status st = gguf_model_config(f, &c);
    if (st != want || !strstr(gm_last_error(), what) || !strstr(gm_last_error(), "tiny.gguf"))
        fail_msg("want %s '%s', got %s: %s", gm_status_str(want), what, gm_status_str(st), gm_last_error());
    gguf_destroy(&f);
    free(b.p);
}

static void x_vlen(gb *b, const char *a) { gb_kv_u32(b, "gemma3.attention.value_length", 64); }
static void x_yarn(gb *b, const char *a) { gb_kv_str(b, "gemma3.rope.scaling.type", "yarn"); }
static void x_split(gb *b, const char *a) { gb_kv_u32(b, "split.count", 3); }
static void x_eps(gb *b, const char *a) { gb_kv_f32(b, "gemma3.attention.layer_norm_rms_epsilon", -1.0f); }
static void x_vocab(gb *b, const char *a) { gb_kv_u32(b, "gemma3.vocab_size", 7); }
static void x_pat(gb *b, const char *a)
{
    gb_kv_arr(b, "gemma3.attention.sliding_window_pattern", GGUF_VT_BOOL, 1);
    gb_le(b, 1, 1);
}

static void test_config_errors(void **state)
{
    bad_cfg(NULL, 0, "llama", GM_ERR_UNSUPPORTED, "\"llama\" is not a Gemma");
    bad_cfg(x_vlen, 1, "gemma3", GM_ERR_UNSUPPORTED, "value_length 64 differs");
    bad_cfg(x_yarn, 1, "gemma3", GM_ERR_UNSUPPORTED, "yarn");
    bad_cfg(x_split, 1, "gemma3", GM_ERR_UNSUPPORTED, "split GGUF");
    bad_cfg(x_eps, 1, "gemma3", GM_ERR_FORMAT, "positive and finite");
    bad_cfg(x_vocab, 1, "gemma3", GM_ERR_FORMAT, "token_embd.weight has");
    bad_cfg(x_pat, 1, "gemma3", GM_ERR_FORMAT, "one bool per layer");

    /* a required key missing, a bad head ratio: hand-written headers */
    for (int ratio = 0; ratio < 2; ratio++) {
        gb b = {0};
        gb_header(&b, 3, 1, ratio ? 6 : 2);
        gb_kv_str(&b, "general.architecture", "gemma3");
        gb_kv_u32(&b, "gemma3.block_count", 1);
        if (ratio) {
            gb_kv_u32(&b, "gemma3.embedding_length", 32);
            gb_kv_u32(&b, "gemma3.feed_forward_length", 64);
            gb_kv_u32(&b, "gemma3.attention.head_count", 4);
            gb_kv_u32(&b, "gemma3.attention.head_count_kv", 3);
        }
        gb_tensor(&b, "token_embd.weight", 2, (uint64_t[]){32, 4}, GGUF_TYPE_Q8_0, 0);
        gb_align(&b, 32);
        for (int i = 0; i < 4 * 34; i++)
            gb_le(&b, 0, 1);
        gguf_file *f = NULL;
        GOK(parse(&b, &f));
        gm_model_config c;
        assert_int_equal(gguf_model_config(f, &c), GM_ERR_FORMAT);
        assert_non_null(strstr(gm_last_error(), ratio ? "head_count_kv 3 does not divide head_count 4"
                                                      : "required key 'gemma3.embedding_length'"));
        gguf_destroy(&f);
        free(b.p);
    }
    gb b = {0};
    gguf_file *f = NULL;
    gm_model_config c;
    b = (gb){0};
    gb_header(&b, 3, 0, 1);
    gb_kv_str(&b, "general.architecture", "gemma3");
    GOK(parse(&b, &f));
    assert_int_equal(gguf_model_config(f, &c), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "token_embd.weight"));
    gguf_destroy(&f);
    free(b.p);
}

/* ------------------------------------------------------------------ tensors */

static void test_hf_names(void **state)
{
    char o[128];
    assert_true(gguf_model_hf_name("blk.17.ffn_down.weight", GM_FAMILY_GEMMA3, o, sizeof o));
    assert_string_equal(o, "model.layers.17.mlp.down_proj.weight");
    assert_true(gguf_model_hf_name("blk.0.ffn_norm.weight", GM_FAMILY_GEMMA3, o, sizeof o));
    assert_string_equal(o, "model.layers.0.pre_feedforward_layernorm.weight");
    assert_true(gguf_model_hf_name("blk.0.ffn_norm.weight", GM_FAMILY_GEMMA1, o, sizeof o));
    assert_string_equal(o, "model.layers.0.post_attention_layernorm.weight");
    assert_true(gguf_model_hf_name("blk.3.attn_k_norm.weight", GM_FAMILY_GEMMA3, o, sizeof o));
    assert_string_equal(o, "model.layers.3.self_attn.k_norm.weight");
    assert_true(gguf_model_hf_name("output_norm.weight", GM_FAMILY_GEMMA2, o, sizeof o));
    assert_string_equal(o, "model.norm.weight");
    const char *bad[] = {"blk.x.attn_q.weight", "blk.-1.attn_q.weight", "blk.01.attn_q.weight", "blk.256.attn_q.weight",
                         "blk.0.attn_q.bias", "blk.0.", "output.weight", "rope_freqs.weight", "blk. 1.attn_q.weight"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (gguf_model_hf_name(bad[i], GM_FAMILY_GEMMA3, o, sizeof o))
            fail_msg("%s mapped to %s", bad[i], o);
    assert_false(gguf_model_hf_name("blk.17.ffn_down.weight", GM_FAMILY_GEMMA3, o, 10)); /* does not fit */
}

static void test_load(void **state)
{
    gb b = tiny_gguf("gemma3", NULL, 0);
    gguf_file *f = NULL;
    GOK(parse(&b, &f));
    gm_model_config c;
    GOK(gguf_model_config(f, &c));
    st_model *m = NULL;
    GOK(gguf_model_load(f, &c, &m));
    assert_int_equal(st_model_count(m), gguf_tensor_count(f));
    const st_tensor *t = st_model_find(m, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, GM_DT_BF16);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], VOCAB);
    assert_int_equal(t->shape[1], H);
    assert_string_equal(t->file, "tiny.gguf");
    /* every 2-D tensor: [ne1, ne0], bf16 of the dequantized GGUF data in the same order */
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *g = gguf_tensor_at(f, i);
        char hf[128];
        assert_true(gguf_model_hf_name(g->name, GM_FAMILY_GEMMA3, hf, sizeof hf));
        const st_tensor *x = st_model_find(m, hf);
        assert_non_null(x);
        assert_int_equal(x->ndim, g->n_dims);
        if (g->n_dims == 1) {
            assert_int_equal(x->dtype, GM_DT_F32);
            for (int64_t j = 0; j < g->ne[0]; j++) /* the file's 1 + 0.01 j, less 1 */
                assert_true(((const float *)x->data)[j] == (1.0f + 0.01f * (float)j) - 1.0f);
            continue;
        }
        assert_int_equal(x->shape[0], g->ne[1]);
        assert_int_equal(x->shape[1], g->ne[0]);
        uint16_t *want = malloc((size_t)g->nelem * 2);
        assert_non_null(want);
        GOK(gguf_dequant_bf16(g->type, g->data, want, g->nelem));
        assert_memory_equal(x->data, want, (size_t)g->nelem * 2);
        free(want);
    }
    /* the existing binder takes it as it is */
    gm_weights w;
    GOK(gm_weights_bind(m, &c, 0, 1, &w));
    assert_int_equal(w.embed.rows, VOCAB);
    assert_int_equal(w.layers[1].q.rows, NH * HD);
    assert_int_equal(w.layers[1].down.cols, FF);
    gm_weights_release(&w);
    st_model_destroy(&m);
    gguf_destroy(&f);
    free(b.p);
}

static void test_load_errors(void **state)
{
    gb b = {0};
    gb_header(&b, 3, 2, 0);
    gb_tensor(&b, "blk.0.attn_q.weight", 2, (uint64_t[]){256, 1}, GGUF_TYPE_IQ2_XXS, 0);
    gb_tensor(&b, "blk.0.attn_q.bias", 1, (uint64_t[]){8}, GGUF_TYPE_F32, 96);
    gb_align(&b, 32);
    for (int i = 0; i < 128; i++)
        gb_le(&b, 0, 1);
    gguf_file *f = NULL;
    GOK(parse(&b, &f));
    gm_model_config c = {.family = GM_FAMILY_GEMMA3};
    st_model *m = (st_model *)0x1;
    assert_int_equal(gguf_model_load(f, &c, &m), GM_ERR_UNSUPPORTED);
    assert_non_null(strstr(gm_last_error(), "'blk.0.attn_q.weight': type IQ2_XXS"));
    assert_null(m);
    gguf_destroy(&f);
    free(b.p);
    b = (gb){0};
    gb_header(&b, 3, 1, 0);
    gb_tensor(&b, "blk.0.attn_q.bias", 1, (uint64_t[]){8}, GGUF_TYPE_F32, 0);
    gb_align(&b, 32);
    for (int i = 0; i < 32; i++)
        gb_le(&b, 0, 1);
    GOK(parse(&b, &f));
    assert_int_equal(gguf_model_load(f, &c, &m), GM_ERR_UNSUPPORTED);
    assert_non_null(strstr(gm_last_error(), "'blk.0.attn_q.bias' has no Gemma counterpart"));
    gguf_destroy(&f);
    free(b.p);
}

static void test_mem_model(void **state)
{
    st_model *m = st_model_new_mem("mem");
    assert_non_null(m);
    float *a = malloc(3 * sizeof *a);
    a[0] = 1, a[1] = 2, a[2] = 3;
    GOK(st_model_add_owned(m, "a", GM_DT_F32, 1, (int64_t[]){3}, a));
    assert_null(st_model_find(m, "a")); /* not sealed yet */
    GOK(st_model_add_owned(m, "b", GM_DT_BF16, 2, (int64_t[]){0, 4}, NULL));
    GOK(st_model_seal(m));
    const st_tensor *t = st_model_find(m, "a");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 12);
    assert_string_equal(t->file, "mem");
    assert_true(((const float *)t->data)[2] == 3.0f);
    assert_int_equal(st_model_count(m), 2);
    void *late = malloc(4);
    assert_int_equal(st_model_add_owned(m, "c", GM_DT_F32, 1, (int64_t[]){1}, late), GM_ERR_INVALID_ARG);
    assert_int_equal(st_model_seal(m), GM_ERR_INVALID_ARG);
    st_model_destroy(&m);

    m = st_model_new_mem("dup");
    GOK(st_model_add_owned(m, "x", GM_DT_F32, 1, (int64_t[]){1}, malloc(4)));
    GOK(st_model_add_owned(m, "x", GM_DT_F32, 1, (int64_t[]){1}, malloc(4)));
    assert_int_equal(st_model_seal(m), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "'x'"));
    assert_int_equal(st_model_add_owned(m, "y", GM_DT_F32, 1, (int64_t[]){-1}, malloc(4)), GM_ERR_INVALID_ARG);
    st_model_destroy(&m);
    assert_int_equal(st_model_add_owned(NULL, "y", GM_DT_F32, 0, NULL, malloc(4)), GM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------ tokenizer */

static int32_t piece_id(const char *p)
{
    for (int i = 0; i < N_NORMAL; i++)
        if (!strcmp(k_normal[i], p))
            return NORMAL0 + i;
    return -1;
}

static void expect_ids(const gm_tokenizer *t, const char *text, const int32_t *want, int32_t n_want)
{
    int32_t *ids = NULL, n = 0;
    GOK(gm_tok_encode(t, text, strlen(text), false, &ids, &n));
    if (n != n_want || memcmp(ids, want, (size_t)n * sizeof *ids) != 0) {
        char got[256] = "";
        for (int32_t i = 0; i < n && strlen(got) < 200; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), " %d", ids[i]);
        fail_msg("'%s' -> [%s ]", text, got);
    }
    char *back = gm_tok_decode(t, ids, n);
    assert_string_equal(back, text);
    free(back);
    free(ids);
}

static void test_tokenizer(void **state)
{
    gb b = tiny_gguf("gemma3", NULL, 0);
    gguf_file *f = NULL;
    GOK(parse(&b, &f));
    gm_tokenizer *t = NULL;
    GOK(gm_tok_load_gguf(f, &t));
    assert_int_equal(gm_tok_vocab_size(t), VOCAB);
    int32_t w1[] = {piece_id("abc"), piece_id("\xe2\x96\x81" "ab")};
    expect_ids(t, "abc ab", w1, 2);
    int32_t w2[] = {piece_id("a"), 6, piece_id("b"), 7}; /* "  " and "\n" are user-defined pieces */
    expect_ids(t, "a  b\n", w2, 4);
    int32_t w3[] = {piece_id("hi"), piece_id("\xe2\x96\x81"), 8 + 0xC3, 8 + 0xA9}; /* é by byte fallback */
    expect_ids(t, "hi \xc3\xa9", w3, 4);
    int32_t *ids = NULL, n = 0;
    GOK(gm_tok_encode(t, "a", 1, true, &ids, &n));
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 2);
    free(ids);
    gm_chat_msg msg = {"user", "hi"};
    GOK(gm_tok_encode_chat(t, &msg, 1, &ids, &n));
    assert_true(n > 4);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 4); /* <start_of_turn> and <end_of_turn>, found by name */
    int sot = 0, eot = 0;
    for (int32_t i = 0; i < n; i++)
        sot += ids[i] == 4, eot += ids[i] == 5;
    assert_int_equal(sot, 2);
    assert_int_equal(eot, 1);
    free(ids);
    gm_tok_destroy(&t);
    gguf_destroy(&f);
    free(b.p);
}

/* gm_tok_load_gguf on b must fail with want and a message containing what. */
static void bad_tok(gb *b, gm_status want, const char *what)
{
    gguf_file *f = NULL;
    gm_tokenizer *t = (gm_tokenizer *)0x1;
    GOK(parse(b, &f));
    gm_status st = gm_tok_load_gguf(f, &t);
    if (st != want || !strstr(gm_last_error(), what))
        fail_msg("want %s '%s', got %s: %s", gm_status_str(want), what, gm_status_str(st), gm_last_error());
    assert_null(t);
    gguf_destroy(&f);
    free(b->p);
    *b = (gb){0};
}

static void test_tokenizer_errors(void **state)
{
    gb b = {0};
    gb_header(&b, 3, 0, 1);
    gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
    bad_tok(&b, GM_ERR_UNSUPPORTED, "\"gpt2\"");
    gb_header(&b, 3, 0, 1);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    bad_tok(&b, GM_ERR_NOT_FOUND, "tokenizer.ggml.tokens");
    gb_header(&b, 3, 0, 3);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_arr(&b, "tokenizer.ggml.tokens", GGUF_VT_STRING, 2);
    gb_str(&b, "a");
    gb_str(&b, ""); /* an empty piece */
    gb_kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    bad_tok(&b, GM_ERR_FORMAT, "not a valid SentencePiece model");
    gb_header(&b, 3, 0, 2);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_arr(&b, "tokenizer.ggml.tokens", GGUF_VT_STRING, 1);
    gb_str(&b, "a");
    bad_tok(&b, GM_ERR_FORMAT, "no unknown token");
    gb_header(&b, 3, 0, 3);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_arr(&b, "tokenizer.ggml.tokens", GGUF_VT_STRING, 1);
    gb_str(&b, "a");
    gb_kv_arr(&b, "tokenizer.ggml.scores", GGUF_VT_F32, 2);
    gb_f32(&b, 0);
    gb_f32(&b, 0);
    bad_tok(&b, GM_ERR_FORMAT, "lengths differ");
}

/* ------------------------------------------------------------------ --model */

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void test_checkpoint_open(void **state)
{
    char dir[] = "/tmp/gm_ggufm_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p1[128], p2[128], st[128], cj[128];
    snprintf(p1, sizeof p1, "%s/tiny.gguf", dir);
    snprintf(p2, sizeof p2, "%s/other.gguf", dir);
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    snprintf(cj, sizeof cj, "%s/config.json", dir);
    gm_checkpoint *c = (gm_checkpoint *)0x1;
    assert_int_equal(gm_checkpoint_open(dir, 0, &c), GM_ERR_IO);
    assert_non_null(strstr(gm_last_error(), "no model.safetensors"));
    assert_null(c);
    gb b = tiny_gguf("gemma3", NULL, 0);
    write_file(p1, b.p, b.len);
    for (int by_dir = 0; by_dir < 2; by_dir++) {
        GOK(gm_checkpoint_open(by_dir ? dir : p1, GM_CKPT_WEIGHTS, &c));
        assert_string_equal(c->path, p1);
        assert_null(c->dir);
        assert_int_equal(c->cfg.family, GM_FAMILY_GEMMA3);
        assert_non_null(st_model_find(c->model, "model.layers.1.mlp.up_proj.weight"));
        gm_tokenizer *t = NULL;
        GOK(gm_checkpoint_tokenizer(c, &t));
        assert_int_equal(gm_tok_vocab_size(t), VOCAB);
        gm_tok_destroy(&t);
        gm_checkpoint_destroy(&c);
        assert_null(c);
    }
    GOK(gm_checkpoint_open(p1, 0, &c)); /* config only */
    assert_null(c->model);
    gm_checkpoint_destroy(&c);
    write_file(p2, b.p, 10);
    assert_int_equal(gm_checkpoint_open(dir, 0, &c), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "holds 2 .gguf files"));
    assert_int_equal(gm_checkpoint_open(p2, 0, &c), GM_ERR_FORMAT); /* a truncated GGUF, named */
    assert_non_null(strstr(gm_last_error(), p2));
    free(b.p);

    /* safetensors present: the directory is a Hugging Face checkpoint, whatever else it holds */
    uint16_t e[4] = {0};
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_add(w, "model.embed_tokens.weight", GM_DT_BF16, 2, (int64_t[]){2, 2}, e), 0);
    GOK(st_writer_write(w, st, NULL, NULL));
    st_writer_destroy(&w);
    const char *json = "{\"vocab_size\": 2, \"hidden_size\": 2, \"intermediate_size\": 4, \"num_hidden_layers\": 1,"
                       " \"num_attention_heads\": 1, \"head_dim\": 2, \"bos_token_id\": 0, \"eos_token_id\": 1,"
                       " \"pad_token_id\": 0}";
    write_file(cj, json, strlen(json));
    GOK(gm_checkpoint_open(dir, GM_CKPT_WEIGHTS, &c));
    assert_string_equal(c->dir, dir);
    assert_null(c->gguf);
    assert_int_equal(c->cfg.hidden_size, 2);
    assert_non_null(st_model_find(c->model, "model.embed_tokens.weight"));
    gm_tokenizer *t = NULL;
    assert_int_equal(gm_checkpoint_tokenizer(c, &t), GM_ERR_IO); /* no tokenizer.model here */
    gm_checkpoint_destroy(&c);
    assert_int_equal(gm_checkpoint_open("/nonexistent/x.gguf", 0, &c), GM_ERR_IO);
    assert_non_null(strstr(gm_last_error(), "/nonexistent/x.gguf"));
    unlink(p1), unlink(p2), unlink(st), unlink(cj);
    rmdir(dir);
}

/* ------------------------------------------------------------------ mutations, end to end */

static void test_mutations(void **state)
{
    gb b = tiny_gguf("gemma3", NULL, 0);
    uint8_t *m = malloc(b.len);
    assert_non_null(m);
    uint64_t x = 0x2545f4914f6cdd1dull;
    int parsed = 0, loaded = 0;
    for (int it = 0; it < 600; it++) {
        memcpy(m, b.p, b.len);
        size_t len = b.len;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (it % 10 == 0) {
            len = (size_t)(x % b.len); /* truncated */
        } else {
            /* the header and metadata are where the interesting bytes are: mutate mostly there */
            size_t span = it % 3 ? 6000 : b.len;
            for (int j = 0; j < 1 + (int)(x % 3); j++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                m[(x >> 8) % span] = (uint8_t)(x >> 40);
            }
        }
        gguf_file *f = NULL;
        if (gguf_parse(m, len, "mut.gguf", &f) != GM_OK)
            continue;
        parsed++;
        gm_model_config c;
        gm_tokenizer *t = NULL;
        if (gm_tok_load_gguf(f, &t) == GM_OK) {
            int32_t *ids = NULL, n = 0;
            if (gm_tok_encode(t, "abc hi", 6, true, &ids, &n) == GM_OK)
                free(ids);
            gm_tok_destroy(&t);
        }
        if (gguf_model_config(f, &c) == GM_OK) {
            st_model *sm = NULL;
            if (gguf_model_load(f, &c, &sm) == GM_OK) {
                gm_weights w;
                if (gm_weights_bind(sm, &c, 0, 1, &w) == GM_OK)
                    gm_weights_release(&w);
                loaded++;
                st_model_destroy(&sm);
            }
        }
        gguf_destroy(&f);
    }
    assert_true(parsed > 0 && loaded > 0); /* both paths were exercised */
    free(m);
    free(b.p);
}

/* ------------------------------------------------------------------ NaN and Inf (issue 14) */

/* A GGUF whose data holds a NaN or Inf - a float16 tensor's element, or a Q8_0 block's scale that
 * dequantizes a whole block to NaN - loads (dequantized), and the engines' load check then refuses it
 * naming the Hugging Face tensor; the clean file passes. */
static void test_nonfinite_weights(void **state)
{
    gb b = tiny_gguf("gemma3", NULL, 0);
    gguf_file *f = NULL;
    GOK(parse(&b, &f));
    size_t up = (size_t)((const uint8_t *)gguf_find_tensor(f, "blk.1.ffn_up.weight")->data - b.p); /* F16 */
    size_t emb = (size_t)((const uint8_t *)gguf_find_tensor(f, "token_embd.weight")->data - b.p); /* Q8_0 */
    gguf_destroy(&f);
    struct {
        size_t at;     /* byte of the file poisoned (-1: none) */
        uint16_t bits; /* float16 bits written there */
        const char *want;
    } cases[] = {
        {(size_t)-1, 0, NULL},
        {up + 2 * 5, 0x7c00, "model.layers.1.mlp.up_proj.weight: element 5 is NaN or Inf"},
        {emb + 34, 0x7e00, "model.embed_tokens.weight: element 32 is NaN or Inf"}, /* the second block's scale */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        gb x = {malloc(b.len), b.len, b.len};
        assert_non_null(x.p);
        memcpy(x.p, b.p, b.len);
        if (cases[k].at != (size_t)-1)
            memcpy(x.p + cases[k].at, &cases[k].bits, 2);
        GOK(parse(&x, &f));
        gm_model_config c;
        GOK(gguf_model_config(f, &c));
        st_model *m = NULL;
        GOK(gguf_model_load(f, &c, &m)); /* dequantizing does not judge the values */
        gm_status st = gm_weights_check_finite(m, 0, 1);
        if (!cases[k].want) {
            GOK(st);
        } else {
            assert_int_equal(st, GM_ERR_FORMAT);
            if (!strstr(gm_last_error(), cases[k].want) || !strstr(gm_last_error(), "tiny.gguf"))
                fail_msg("case %zu: '%s', want '%s'", k, gm_last_error(), cases[k].want);
        }
        st_model_destroy(&m);
        gguf_destroy(&f);
        free(x.p);
    }
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),       cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_hf_names),     cmocka_unit_test(test_load),
        cmocka_unit_test(test_load_errors),  cmocka_unit_test(test_mem_model),
        cmocka_unit_test(test_tokenizer),    cmocka_unit_test(test_tokenizer_errors),
        cmocka_unit_test(test_checkpoint_open), cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_nonfinite_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
