/* test_weights_gemma23.c - gm_weights_bind on Gemma 2/3 layouts: sandwich norms and QK-norm bound to
 * their own fields, the Gemma3ForConditionalGeneration prefixes, and errors naming the tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/model_config.h"
#include "common/safetensors.h"
#include "tests/test_check.h"
#include "worker/weights.h"

static char g_dir[128];

/* One layer, hidden 8, 2 heads of 4, 1 KV head. Tensors named PREFIX*; `drop` (a suffix) left out,
 * `qnorm_len` the length of q_norm (4 is right). */
static void write_micro(const char *prefix, const char *drop, int64_t qnorm_len)
{
    static float zeros[1024];
    static const struct { const char *n; int64_t a, b; } t[] = {
        {"embed_tokens.weight", 16, 8},
        {"norm.weight", 8, 0},
        {"layers.0.input_layernorm.weight", 8, 0},
        {"layers.0.post_attention_layernorm.weight", 8, 0},
        {"layers.0.pre_feedforward_layernorm.weight", 8, 0},
        {"layers.0.post_feedforward_layernorm.weight", 8, 0},
        {"layers.0.self_attn.q_norm.weight", -1, 0},
        {"layers.0.self_attn.k_norm.weight", 4, 0},
        {"layers.0.self_attn.q_proj.weight", 8, 8},
        {"layers.0.self_attn.k_proj.weight", 4, 8},
        {"layers.0.self_attn.v_proj.weight", 4, 8},
        {"layers.0.self_attn.o_proj.weight", 8, 8},
        {"layers.0.mlp.gate_proj.weight", 16, 8},
        {"layers.0.mlp.up_proj.weight", 16, 8},
        {"layers.0.mlp.down_proj.weight", 8, 16},
    };
    st_writer *w = st_writer_new();
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (drop && strstr(t[i].n, drop))
            continue;
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefix, t[i].n);
        int64_t shape[2] = {t[i].a < 0 ? qnorm_len : t[i].a, t[i].b};
        assert_true(st_writer_add(w, name, GM_DT_BF16, t[i].b ? 2 : 1, shape, zeros) >= 0);
    }
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", g_dir);
    GOK(st_writer_write(w, p, NULL, NULL));
    st_writer_destroy(&w);
}

#define SHAPE "\"vocab_size\": 16, \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1," \
              " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4"

static gm_status bind(const char *json, gm_weights *w, st_model **m)
{
    gm_model_config c;
    GOK(gm_config_parse(json, strlen(json), "config.json", &c));
    GOK(st_model_open(g_dir, m));
    gm_clear_error();
    return gm_weights_bind(*m, &c, 0, 1, w);
}

static void test_gemma3_fields(void **state)
{
    (void)state;
    st_model *m = NULL;
    gm_weights w;
    write_micro("model.", NULL, 4);
    GOK(bind("{\"model_type\": \"gemma3_text\", " SHAPE "}", &w, &m));
    const gm_layer_weights *L = &w.layers[0];
    assert_null(L->post_norm.data); /* Gemma 1's meaning of post_attention_layernorm: not used */
    assert_non_null(L->post_attn_norm.data);
    assert_non_null(L->pre_ffw_norm.data);
    assert_non_null(L->post_ffw_norm.data);
    assert_non_null(L->q_norm.data);
    assert_int_equal(L->q_norm.cols, 4);
    assert_int_equal(L->k_norm.cols, 4);
    assert_string_equal(L->post_attn_norm.full->name, "model.layers.0.post_attention_layernorm.weight");
    assert_string_equal(L->pre_ffw_norm.full->name, "model.layers.0.pre_feedforward_layernorm.weight");
    gm_weights_release(&w);
    st_model_destroy(&m);
    /* Gemma 2: sandwich norms, no QK-norm (its tensors, if present, are not bound) */
    GOK(bind("{\"model_type\": \"gemma2\", " SHAPE "}", &w, &m));
    assert_non_null(w.layers[0].post_attn_norm.data);
    assert_null(w.layers[0].q_norm.data);
    gm_weights_release(&w);
    st_model_destroy(&m);
    /* Gemma 1 on the same file: post_attention_layernorm is the pre-MLP norm */
    GOK(bind("{\"model_type\": \"gemma\", " SHAPE "}", &w, &m));
    assert_non_null(w.layers[0].post_norm.data);
    assert_null(w.layers[0].post_attn_norm.data);
    assert_null(w.layers[0].pre_ffw_norm.data);
    gm_weights_release(&w);
    st_model_destroy(&m);
}

static void test_prefixes(void **state)
{
    (void)state;
    static const char *const prefixes[] = {"language_model.model.", "model.language_model."};
    for (int i = 0; i < 2; i++) {
        st_model *m = NULL;
        gm_weights w;
        write_micro(prefixes[i], NULL, 4);
        GOK(bind("{\"model_type\": \"gemma3\", \"text_config\": {" SHAPE "}}", &w, &m));
        assert_string_equal(w.cfg.tensor_prefix, prefixes[i]);
        char want[128];
        snprintf(want, sizeof want, "%slayers.0.self_attn.k_norm.weight", prefixes[i]);
        assert_string_equal(w.layers[0].k_norm.full->name, want);
        gm_weights_release(&w);
        st_model_destroy(&m);
        /* a gemma3_text config finds them too */
        GOK(bind("{\"model_type\": \"gemma3_text\", " SHAPE "}", &w, &m));
        assert_string_equal(w.cfg.tensor_prefix, prefixes[i]);
        gm_weights_release(&w);
        st_model_destroy(&m);
    }
    /* none of the known prefixes: the error names the config's own */
    st_model *m = NULL;
    gm_weights w;
    write_micro("text.", NULL, 4);
    assert_int_equal(bind("{\"model_type\": \"gemma3\", \"text_config\": {" SHAPE "}}", &w, &m), GM_ERR_NOT_FOUND);
    if (!strstr(gm_last_error(), "language_model.model.embed_tokens.weight"))
        fail_msg("%s", gm_last_error());
    st_model_destroy(&m);
}

static void test_errors(void **state)
{
    (void)state;
    static const char *const drops[] = {"pre_feedforward_layernorm", "post_feedforward_layernorm", "q_norm",
                                        "k_norm"};
    for (int i = 0; i < 4; i++) {
        st_model *m = NULL;
        gm_weights w;
        write_micro("model.", drops[i], 4);
        assert_int_equal(bind("{\"model_type\": \"gemma3_text\", " SHAPE "}", &w, &m), GM_ERR_NOT_FOUND);
        if (!strstr(gm_last_error(), drops[i]))
            fail_msg("error '%s' does not name %s", gm_last_error(), drops[i]);
        st_model_destroy(&m);
    }
    st_model *m = NULL;
    gm_weights w;
    write_micro("model.", NULL, 8); /* q_norm [hidden] instead of [head_dim] */
    assert_int_equal(bind("{\"model_type\": \"gemma3_text\", " SHAPE "}", &w, &m), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "model.layers.0.self_attn.q_norm.weight"));
    assert_non_null(strstr(gm_last_error(), "expected shape [4], got [8]"));
    st_model_destroy(&m);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/gm-test-weights23-%d", (int)getpid());
    return mkdir(g_dir, 0755);
}

static int teardown(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", g_dir);
    unlink(p);
    return rmdir(g_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemma3_fields),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
