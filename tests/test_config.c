/* test_config.c - config.json parsing: Gemma presets, defaults and each kind of bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/model_config.h"

static const char *k_2b = "{\"architectures\": [\"GemmaForCausalLM\"], \"model_type\": \"gemma\","
                          " \"vocab_size\": 256000, \"hidden_size\": 2048, \"intermediate_size\": 16384,"
                          " \"num_hidden_layers\": 18, \"num_attention_heads\": 8, \"num_key_value_heads\": 1,"
                          " \"head_dim\": 256, \"max_position_embeddings\": 8192, \"rope_theta\": 10000.0,"
                          " \"rms_norm_eps\": 1e-06, \"bos_token_id\": 2, \"eos_token_id\": 1,"
                          " \"pad_token_id\": 0, \"hidden_act\": \"gelu\", \"torch_dtype\": \"bfloat16\"}";

static const char *k_7b = "{\"model_type\": \"gemma\", \"vocab_size\": 256000, \"hidden_size\": 3072,"
                          " \"intermediate_size\": 24576, \"num_hidden_layers\": 28, \"num_attention_heads\": 16,"
                          " \"num_key_value_heads\": 16, \"head_dim\": 256, \"torch_dtype\": \"float32\"}";

static gm_status parse(const char *json, gm_model_config *c)
{
    gm_clear_error();
    return gm_config_parse(json, strlen(json), "cfg/config.json", c);
}

/* Parse must fail with `want`, and the message must name the file and `key`. */
static void expect_fail(const char *json, gm_status want, const char *key)
{
    gm_model_config c;
    gm_status st = parse(json, &c);
    if (st != want)
        fail_msg("want %s, got %s (%s) for %s", gm_status_str(want), gm_status_str(st), gm_last_error(), json);
    assert_non_null(strstr(gm_last_error(), "cfg/config.json"));
    if (key && !strstr(gm_last_error(), key))
        fail_msg("error '%s' does not name '%s'", gm_last_error(), key);
}

static void test_2b(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse(k_2b, &c), GM_OK);
    assert_int_equal(c.vocab_size, 256000);
    assert_int_equal(c.hidden_size, 2048);
    assert_int_equal(c.intermediate_size, 16384);
    assert_int_equal(c.num_layers, 18);
    assert_int_equal(c.num_heads, 8);
    assert_int_equal(c.num_kv_heads, 1);
    assert_int_equal(c.head_dim, 256);
    assert_int_equal(c.max_position, 8192);
    assert_true(c.rope_theta == 10000.0f);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_int_equal(c.bos_id, 2);
    assert_int_equal(c.eos_id, 1);
    assert_int_equal(c.pad_id, 0);
    assert_string_equal(c.torch_dtype, "bfloat16");
    assert_true(gm_config_normalizer(&c) == 45.25f);
    assert_int_equal(gm_config_param_count(&c), 2506172416LL); /* published gemma-2b size */
}

static void test_7b(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse(k_7b, &c), GM_OK);
    assert_int_equal(c.num_kv_heads, 16);
    assert_int_equal(c.head_dim, 256); /* explicit: 3072/16 would be 192 */
    assert_string_equal(c.torch_dtype, "float32");
    assert_true(gm_config_normalizer(&c) == 55.5f); /* sqrt(3072) = 55.43 -> bf16 */
    assert_int_equal(gm_config_param_count(&c), 8537680896LL); /* published gemma-7b size */
}

static void test_defaults(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse("{\"vocab_size\": 300, \"hidden_size\": 64, \"intermediate_size\": 128,"
                           " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"rope_theta\": null}",
                           &c),
                     GM_OK);
    assert_int_equal(c.num_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.max_position, 8192);
    assert_true(c.rope_theta == 10000.0f);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_int_equal(c.bos_id, 2);
    assert_int_equal(c.eos_id, 1);
    assert_int_equal(c.pad_id, 0);
    assert_string_equal(c.torch_dtype, "");
    assert_true(gm_config_normalizer(&c) == 8.0f);
    /* 300*64 + 2*(2*64 + 64*64 + 2*64*64 + 64*64 + 3*64*128) + 64 */
    assert_int_equal(gm_config_param_count(&c), 300 * 64 + 2 * (128 + 4 * 4096 + 3 * 8192) + 64);
}

static void test_eos_list(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse("{\"vocab_size\": 300, \"hidden_size\": 64, \"intermediate_size\": 128,"
                           " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"eos_token_id\": [107, 1]}",
                           &c),
                     GM_OK);
    assert_int_equal(c.eos_id, 107);
}

#define BASE "\"vocab_size\": 300, \"intermediate_size\": 128, \"num_hidden_layers\": 2"

static void test_missing_key(void **state)
{
    (void)state;
    expect_fail("{" BASE ", \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": 64}", GM_ERR_FORMAT, "num_attention_heads");
    expect_fail("{\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
                " \"num_attention_heads\": 4}",
                GM_ERR_FORMAT, "vocab_size");
}

static void test_wrong_type(void **state)
{
    (void)state;
    expect_fail("{" BASE ", \"hidden_size\": \"64\", \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": 64.5, \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": true, \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_theta\": \"x\"}", GM_ERR_FORMAT,
                "rope_theta");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"torch_dtype\": 16}", GM_ERR_FORMAT,
                "torch_dtype");
}

static void test_bad_values(void **state)
{
    (void)state;
    expect_fail("{" BASE ", \"hidden_size\": 0, \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": -64, \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": 1e12, \"num_attention_heads\": 4}", GM_ERR_FORMAT, "hidden_size");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": 3}",
                GM_ERR_FORMAT, "num_key_value_heads");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": 0}",
                GM_ERR_FORMAT, "num_key_value_heads");
    expect_fail("{" BASE ", \"hidden_size\": 2, \"num_attention_heads\": 4}", GM_ERR_FORMAT, "head_dim");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rms_norm_eps\": -1}", GM_ERR_FORMAT,
                "rms_norm_eps");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_theta\": 0}", GM_ERR_FORMAT,
                "rope_theta");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"bos_token_id\": 300}", GM_ERR_FORMAT,
                "bos_token_id");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"eos_token_id\": -1}", GM_ERR_FORMAT,
                "eos_token_id");
    /* defaults are range-checked too (found by the fuzzer: eos default 1 with vocab_size 1) */
    expect_fail("{\"vocab_size\": 1, \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
                " \"num_attention_heads\": 4, \"bos_token_id\": 0, \"pad_token_id\": 0}",
                GM_ERR_FORMAT, "eos_token_id");
    expect_fail("{\"vocab_size\": 2, \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"
                " \"num_attention_heads\": 4}",
                GM_ERR_FORMAT, "bos_token_id");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"torch_dtype\": \"int8\"}",
                GM_ERR_UNSUPPORTED, "torch_dtype");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"model_type\": \"gemma2\"}",
                GM_ERR_UNSUPPORTED, "model_type");
}

static void test_bad_json(void **state)
{
    (void)state;
    expect_fail("{\"vocab_size\": 3", GM_ERR_FORMAT, "JSON");
    expect_fail("", GM_ERR_FORMAT, "JSON");
    expect_fail("[1, 2]", GM_ERR_FORMAT, "object");
    /* the length bounds the parse: a valid prefix of a longer buffer */
    gm_model_config c;
    const char *j = "{\"vocab_size\": 300, \"hidden_size\": 64, \"intermediate_size\": 128,"
                    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4}";
    assert_int_equal(gm_config_parse(j, strlen(j) - 1, "cut.json", &c), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "cut.json"));
}

static void test_load_dir(void **state)
{
    (void)state;
    char dir[] = "/tmp/gm_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    gm_model_config c;
    assert_int_equal(gm_config_load_dir(dir, &c), GM_ERR_IO); /* no config.json yet */
    assert_non_null(strstr(gm_last_error(), path));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(k_2b, f);
    fclose(f);
    assert_int_equal(gm_config_load_dir(dir, &c), GM_OK);
    assert_int_equal(c.hidden_size, 2048);
    f = fopen(path, "w");
    fputs("{\"vocab_size\": ", f);
    fclose(f);
    assert_int_equal(gm_config_load_dir(dir, &c), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), path));
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_2b),          cmocka_unit_test(test_7b),         cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_eos_list),    cmocka_unit_test(test_missing_key), cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_bad_values),  cmocka_unit_test(test_bad_json),   cmocka_unit_test(test_load_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
