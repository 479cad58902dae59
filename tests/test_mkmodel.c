/* test_mkmodel.c - gemma-mkmodel: determinism, layout, config, sharding, flag errors.
 * Usage: test_mkmodel PATH/gemma-mkmodel WORKDIR */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <math.h>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/tokenizer.h"

static const char *g_bin, *g_work;

/* Run a shell command built from fmt; returns its exit status (-1 if killed). */
static int run(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    if (r == -1 || !WIFEXITED(r))
        return -1;
    return WEXITSTATUS(r);
}

/* Whole file, NUL-terminated; *n its length. NULL if unreadable. */
static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    size_t got = fread(b, 1, (size_t)sz, f);
    fclose(f);
    b[got] = 0;
    if (n)
        *n = got;
    return b;
}

static char *slurp_in(const char *dir, const char *name, size_t *n)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s/%s", g_work, dir, name);
    return slurp(p, n);
}

static int exists_in(const char *dir, const char *name)
{
    char p[4096];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s/%s", g_work, dir, name);
    return stat(p, &sb) == 0;
}

static int same_file(const char *d1, const char *d2, const char *name)
{
    size_t n1, n2;
    char *a = slurp_in(d1, name, &n1), *b = slurp_in(d2, name, &n2);
    assert_non_null(a);
    assert_non_null(b);
    int same = n1 == n2 && memcmp(a, b, n1) == 0;
    free(a);
    free(b);
    return same;
}

/* Make model DIR (under the work dir) with extra flags; asserts success. */
static void make(const char *dir, const char *flags)
{
    int rc = run("'%s' --out '%s/%s' %s 2>'%s/%s.log'", g_bin, g_work, dir, flags, g_work, dir);
    if (rc != 0)
        fprintf(stderr, "gemma-mkmodel %s failed with %d, see %s/%s.log\n", flags, rc, g_work, dir);
    assert_int_equal(rc, 0);
}

static int setup(void **state)
{
    (void)state;
    if (run("rm -rf '%s' && mkdir -p '%s'", g_work, g_work) != 0)
        return -1;
    make("a", "--preset tiny --seed 7 --threads 1");
    make("b", "--preset tiny --seed 7 --threads 3");
    make("c", "--preset tiny --seed 8");
    make("d", "--preset tiny --seed 7 --shards 3 --threads 2");
    return 0;
}

static void test_help(void **state)
{
    (void)state;
    assert_int_equal(run("'%s' --help >'%s/help.txt'", g_bin, g_work), 0);
    char p[4096];
    snprintf(p, sizeof p, "%s/help.txt", g_work);
    char *h = slurp(p, NULL);
    assert_non_null(h);
    assert_non_null(strstr(h, "usage: gemma-mkmodel"));
    assert_non_null(strstr(h, "--preset"));
    assert_non_null(strstr(h, "--seed"));
    free(h);
}

/* The command must fail (non-zero) with `want` in its stderr. */
static void expect_fail(const char *flags, const char *want)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/err.txt", g_work);
    int rc = run("'%s' %s 2>'%s'", g_bin, flags, p);
    assert_true(rc > 0);
    char *e = slurp(p, NULL);
    assert_non_null(e);
    if (!strstr(e, want))
        fprintf(stderr, "stderr of '%s' lacks '%s':\n%s\n", flags, want, e);
    assert_non_null(strstr(e, want));
    free(e);
}

static void test_bad_flags(void **state)
{
    (void)state;
    char flags[4096];
    snprintf(flags, sizeof flags, "--preset huge --out '%s/bad'", g_work);
    expect_fail(flags, "unknown preset 'huge'");
    snprintf(flags, sizeof flags, "--preset tiny --out '%s/bad' --dtype int3", g_work);
    expect_fail(flags, "int3");
    snprintf(flags, sizeof flags, "--preset tiny --out '%s/bad' --heads 3 --kv-heads 2", g_work);
    expect_fail(flags, "--kv-heads");
    snprintf(flags, sizeof flags, "--preset tiny --out '%s/bad' --layers zero", g_work);
    expect_fail(flags, "zero");
    snprintf(flags, sizeof flags, "--preset tiny --out '%s/bad' --shards 1000", g_work);
    expect_fail(flags, "--shards 1000");
    snprintf(flags, sizeof flags, "--preset tiny --out '%s/bad' --corpus /nonexistent/corpus.txt", g_work);
    expect_fail(flags, "/nonexistent/corpus.txt");
    expect_fail("--preset tiny", "--out");
    expect_fail("--out x", "--preset");
    expect_fail("--preset tiny --out x --frobnicate", "--frobnicate");
}

static void test_determinism(void **state)
{
    (void)state;
    /* same seed, different thread counts: same bytes */
    assert_true(same_file("a", "b", "model.safetensors"));
    assert_true(same_file("a", "b", "config.json"));
    assert_true(same_file("a", "b", "tokenizer.model"));
    /* another seed: other weights, same tokenizer (it does not depend on the seed) */
    assert_false(same_file("a", "c", "model.safetensors"));
    assert_true(same_file("a", "c", "tokenizer.model"));
}

static void test_config(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/a", g_work);
    gm_model_config cfg;
    assert_int_equal(gm_config_load_dir(dir, &cfg), GM_OK);
    assert_int_equal(cfg.vocab_size, 4096);
    assert_int_equal(cfg.hidden_size, 128);
    assert_int_equal(cfg.intermediate_size, 512);
    assert_int_equal(cfg.num_layers, 4);
    assert_int_equal(cfg.num_heads, 4);
    assert_int_equal(cfg.num_kv_heads, 2);
    assert_int_equal(cfg.head_dim, 32);
    assert_int_equal(cfg.max_position, 1024);
    assert_int_equal(cfg.bos_id, 2);
    assert_int_equal(cfg.eos_id, 1);
    assert_int_equal(cfg.pad_id, 0);

    char *js = slurp_in("a", "config.json", NULL);
    cJSON *j = cJSON_Parse(js);
    assert_non_null(j);
    cJSON *arch = cJSON_GetObjectItem(j, "architectures");
    assert_true(cJSON_IsArray(arch));
    assert_string_equal(cJSON_GetArrayItem(arch, 0)->valuestring, "GemmaForCausalLM");
    assert_string_equal(cJSON_GetObjectItem(j, "model_type")->valuestring, "gemma");
    assert_string_equal(cJSON_GetObjectItem(j, "hidden_activation")->valuestring, "gelu_pytorch_tanh");
    assert_string_equal(cJSON_GetObjectItem(j, "torch_dtype")->valuestring, "bfloat16");
    const char *keys[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                          "rms_norm_eps", "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, keys[i])));
    assert_true(cJSON_GetObjectItem(j, "rms_norm_eps")->valuedouble == 1e-6);
    cJSON_Delete(j);
    free(js);
    assert_true(exists_in("a", "generation_config.json"));
    assert_true(exists_in("a", "tokenizer.model"));
    assert_false(exists_in("a", "model.safetensors.index.json"));
}

/* Every tensor of a Gemma v1 checkpoint with its [out, in] shape; norms non-zero; std about 0.02. */
static void test_tensors(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/a", g_work);
    st_model *m = NULL;
    assert_int_equal(st_model_open(dir, &m), GM_OK);
    assert_int_equal(st_model_count(m), 2 + 9 * 4);
    struct {
        const char *name;
        int64_t d0, d1;
        float std;
    } want[] = {
        {"model.embed_tokens.weight", 4096, 128, 0.02f},
        {"model.norm.weight", 128, 0, 0.1f},
        {"model.layers.0.input_layernorm.weight", 128, 0, 0.1f},
        {"model.layers.3.post_attention_layernorm.weight", 128, 0, 0.1f},
        {"model.layers.1.self_attn.q_proj.weight", 4 * 32, 128, 0.02f},
        {"model.layers.1.self_attn.k_proj.weight", 2 * 32, 128, 0.02f},
        {"model.layers.1.self_attn.v_proj.weight", 2 * 32, 128, 0.02f},
        {"model.layers.2.self_attn.o_proj.weight", 128, 4 * 32, 0.02f},
        {"model.layers.2.mlp.gate_proj.weight", 512, 128, 0.02f},
        {"model.layers.3.mlp.up_proj.weight", 512, 128, 0.02f},
        {"model.layers.3.mlp.down_proj.weight", 128, 512, 0.02f},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const st_tensor *t = st_model_find(m, want[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, GM_DT_BF16);
        assert_int_equal(t->ndim, want[i].d1 ? 2 : 1);
        assert_int_equal(t->shape[0], want[i].d0);
        if (want[i].d1)
            assert_int_equal(t->shape[1], want[i].d1);
        int64_t n = st_numel(t), zeros = 0;
        double s = 0, s2 = 0;
        const uint16_t *p = t->data;
        for (int64_t k = 0; k < n; k++) {
            double v = gm_bf16_to_f32(p[k]);
            s += v;
            s2 += v * v;
            zeros += v == 0.0;
        }
        double mean = s / n, sd = sqrt(s2 / n - mean * mean);
        assert_true(zeros < n / 50 + 2);
        assert_true(fabs(sd - want[i].std) < want[i].std * (n > 10000 ? 0.05 : 0.3));
        assert_true(fabs(mean) < want[i].std * (n > 10000 ? 0.05 : 0.3));
    }
    assert_null(st_model_find(m, "lm_head.weight"));
    st_model_destroy(&m);
}

static void test_shards(void **state)
{
    (void)state;
    assert_false(exists_in("d", "model.safetensors"));
    assert_true(exists_in("d", "model-00001-of-00003.safetensors"));
    assert_true(exists_in("d", "model-00002-of-00003.safetensors"));
    assert_true(exists_in("d", "model-00003-of-00003.safetensors"));
    char *js = slurp_in("d", "model.safetensors.index.json", NULL);
    assert_non_null(js);
    cJSON *j = cJSON_Parse(js);
    assert_non_null(j);
    cJSON *total = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size");
    assert_true(cJSON_IsNumber(total));
    cJSON *map = cJSON_GetObjectItem(j, "weight_map");
    assert_int_equal(cJSON_GetArraySize(map), 38);
    int used[3] = {0, 0, 0};
    cJSON *e;
    cJSON_ArrayForEach(e, map)
    {
        int s = 0;
        assert_int_equal(sscanf(e->valuestring, "model-%05d-of-00003.safetensors", &s), 1);
        assert_true(s >= 1 && s <= 3);
        used[s - 1] = 1;
    }
    assert_true(used[0] && used[1] && used[2]);

    /* the sharded model holds the same tensors, byte for byte, as the single file */
    char da[4096], dd[4096];
    snprintf(da, sizeof da, "%s/a", g_work);
    snprintf(dd, sizeof dd, "%s/d", g_work);
    st_model *a = NULL, *d = NULL;
    assert_int_equal(st_model_open(da, &a), GM_OK);
    assert_int_equal(st_model_open(dd, &d), GM_OK);
    assert_int_equal(st_model_count(d), 38);
    uint64_t sum = 0;
    for (int32_t i = 0; i < st_model_count(a); i++) {
        const st_tensor *ta = st_model_at(a, i), *td = st_model_find(d, ta->name);
        assert_non_null(td);
        assert_int_equal(ta->nbytes, td->nbytes);
        assert_memory_equal(ta->data, td->data, ta->nbytes);
        sum += ta->nbytes;
    }
    assert_true((uint64_t)total->valuedouble == sum);
    st_model_destroy(&a);
    st_model_destroy(&d);
    cJSON_Delete(j);
    free(js);
}

/* Shape flags on a real preset (2b is MQA: one KV head) and another dtype. */
static void test_overrides(void **state)
{
    (void)state;
    make("e", "--preset 2b --layers 1 --hidden 256 --intermediate 512 --heads 2 --head-dim 64 --vocab 2048 "
              "--dtype f32 --seed 3");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/e", g_work);
    gm_model_config cfg;
    assert_int_equal(gm_config_load_dir(dir, &cfg), GM_OK);
    assert_int_equal(cfg.num_kv_heads, 1);
    assert_int_equal(cfg.vocab_size, 2048);
    assert_int_equal(cfg.max_position, 8192);
    assert_string_equal(cfg.torch_dtype, "float32");
    st_model *m = NULL;
    assert_int_equal(st_model_open(dir, &m), GM_OK);
    const st_tensor *k = st_model_find(m, "model.layers.0.self_attn.k_proj.weight");
    assert_non_null(k);
    assert_int_equal(k->dtype, GM_DT_F32);
    assert_int_equal(k->shape[0], 64);
    assert_int_equal(k->shape[1], 256);
    const st_tensor *q = st_model_find(m, "model.layers.0.self_attn.q_proj.weight");
    assert_int_equal(q->shape[0], 128);
    const st_tensor *emb = st_model_find(m, "model.embed_tokens.weight");
    assert_int_equal(emb->shape[0], 2048);
    st_model_destroy(&m);
    /* the tokenizer vocabulary follows the model's when smaller than 4096 */
    char tp[4200];
    snprintf(tp, sizeof tp, "%s/tokenizer.model", dir);
    gm_tokenizer *t = NULL;
    assert_int_equal(gm_tok_load(tp, &t), GM_OK);
    assert_int_equal(gm_tok_vocab_size(t), 2048);
    gm_tok_destroy(&t);
}

/* The Gemma 2/3 presets: --config-only configs that parse with the published parameter counts, and a tiny
 * Gemma 3 with its extra tensors and a tokenizer whose turn markers sit at 105/106. */
static void test_gemma23_presets(void **state)
{
    (void)state;
    static const struct { const char *preset; gm_family fam; int64_t params; int32_t window, full0; } p[] = {
        {"gemma2-2b", GM_FAMILY_GEMMA2, 2614341888LL, 4096, 1},     /* published sizes */
        {"gemma2-9b", GM_FAMILY_GEMMA2, 9241705984LL, 4096, 1},
        {"gemma3-270m", GM_FAMILY_GEMMA3, 268098176LL, 512, 5},
        {"gemma3-1b", GM_FAMILY_GEMMA3, 999885952LL, 512, 5},
        {"gemma3-4b", GM_FAMILY_GEMMA3, 3880099328LL, 1024, 5},     /* text model, vocab 262144 */
        {"gemma3-12b", GM_FAMILY_GEMMA3, 11765788416LL, 1024, 5},
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        char flags[256], dir[4096];
        snprintf(flags, sizeof flags, "--preset %s --config-only", p[i].preset);
        make(p[i].preset, flags);
        assert_false(exists_in(p[i].preset, "model.safetensors"));
        assert_true(exists_in(p[i].preset, "tokenizer.model"));
        snprintf(dir, sizeof dir, "%s/%s", g_work, p[i].preset);
        gm_model_config c;
        assert_int_equal(gm_config_load_dir(dir, &c), GM_OK);
        assert_int_equal(c.family, p[i].fam);
        assert_int_equal(gm_config_param_count(&c), p[i].params);
        assert_int_equal(c.sliding_window, p[i].window);
        assert_int_equal(c.layer_sliding[p[i].full0], 0); /* the first full-attention layer */
        assert_int_equal(c.layer_sliding[0], 1);
        assert_true(c.rope_scale == (strstr(p[i].preset, "4b") || strstr(p[i].preset, "12b") ? 8.0f : 1.0f));
    }
    make("g3", "--preset tiny-gemma3 --sliding-window 7 --seed 2");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/g3", g_work);
    gm_model_config c;
    assert_int_equal(gm_config_load_dir(dir, &c), GM_OK);
    assert_int_equal(c.sliding_window, 7);
    assert_int_equal(c.qk_norm, 1);
    st_model *m = NULL;
    assert_int_equal(st_model_open(dir, &m), GM_OK);
    const st_tensor *qn = st_model_find(m, "model.layers.5.self_attn.q_norm.weight");
    assert_non_null(qn);
    assert_int_equal(qn->shape[0], 64);
    assert_non_null(st_model_find(m, "model.layers.0.pre_feedforward_layernorm.weight"));
    assert_non_null(st_model_find(m, "model.layers.0.post_feedforward_layernorm.weight"));
    st_model_destroy(&m);
    char tp[4200];
    snprintf(tp, sizeof tp, "%s/tokenizer.model", dir);
    gm_tokenizer *t = NULL;
    assert_int_equal(gm_tok_load(tp, &t), GM_OK);
    gm_chat_msg msg = {"user", "Hi"};
    gm_chat_format f3 = {105, 106, true};
    int32_t *ids = NULL, n = 0;
    assert_int_equal(gm_tok_encode_chat_fmt(t, &f3, &msg, 1, &ids, &n), GM_OK);
    free(ids);
    gm_tok_destroy(&t);
    char flags[4300];
    snprintf(flags, sizeof flags, "--preset tiny --out '%s/bad' --sliding-window 4", g_work);
    expect_fail(flags, "no sliding layers");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_mkmodel PATH/gemma-mkmodel WORKDIR\n");
        return 2;
    }
    g_bin = argv[1];
    g_work = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),   cmocka_unit_test(test_bad_flags), cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_config), cmocka_unit_test(test_tensors),   cmocka_unit_test(test_shards),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_gemma23_presets),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
