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
#define BASE_G1 BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4"

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
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"model_type\": \"llama\"}",
                GM_ERR_UNSUPPORTED, "model_type");
    expect_fail("{" BASE ", \"hidden_size\": 64, \"num_attention_heads\": 4, \"model_type\": 2}", GM_ERR_FORMAT,
                "model_type");
}

/* google/gemma-2-2b's config.json as published */
static const char *k_g2_2b =
    "{\"architectures\": [\"Gemma2ForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"attn_logit_softcapping\": 50.0, \"bos_token_id\": 2, \"cache_implementation\": \"hybrid\","
    " \"eos_token_id\": 1, \"final_logit_softcapping\": 30.0, \"head_dim\": 256, \"hidden_act\": \"gelu_pytorch_tanh\","
    " \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 2304, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 9216, \"max_position_embeddings\": 8192, \"model_type\": \"gemma2\","
    " \"num_attention_heads\": 8, \"num_hidden_layers\": 26, \"num_key_value_heads\": 4, \"pad_token_id\": 0,"
    " \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"sliding_window\": 4096,"
    " \"torch_dtype\": \"float32\", \"use_cache\": true, \"vocab_size\": 256000}";

/* google/gemma-3-1b-it's config.json as published */
static const char *k_g3_1b =
    "{\"architectures\": [\"Gemma3ForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"attn_logit_softcapping\": null, \"bos_token_id\": 2, \"cache_implementation\": \"hybrid\","
    " \"eos_token_id\": [1, 106], \"final_logit_softcapping\": null, \"head_dim\": 256,"
    " \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 1152, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 6912, \"max_position_embeddings\": 32768, \"model_type\": \"gemma3_text\","
    " \"num_attention_heads\": 4, \"num_hidden_layers\": 26, \"num_key_value_heads\": 1, \"pad_token_id\": 0,"
    " \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, \"rope_local_base_freq\": 10000,"
    " \"rope_scaling\": null, \"rope_theta\": 1000000, \"sliding_window\": 512, \"sliding_window_pattern\": 6,"
    " \"torch_dtype\": \"bfloat16\", \"use_cache\": true, \"vocab_size\": 262144}";

/* google/gemma-3-4b-it's config.json (vision_config shortened): saved configs omit keys at their defaults */
static const char *k_g3_4b =
    "{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"boi_token_index\": 255999,"
    " \"eoi_token_index\": 256000, \"eos_token_id\": [1, 106], \"image_token_index\": 262144,"
    " \"initializer_range\": 0.02, \"mm_tokens_per_image\": 256, \"model_type\": \"gemma3\","
    " \"text_config\": {\"hidden_size\": 2560, \"intermediate_size\": 10240, \"model_type\": \"gemma3_text\","
    " \"num_hidden_layers\": 34, \"rope_scaling\": {\"factor\": 8.0, \"rope_type\": \"linear\"},"
    " \"sliding_window\": 1024}, \"torch_dtype\": \"bfloat16\","
    " \"vision_config\": {\"hidden_size\": 1152, \"model_type\": \"siglip_vision_model\"}}";

static void test_gemma2(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse(k_g2_2b, &c), GM_OK);
    assert_int_equal(c.family, GM_FAMILY_GEMMA2);
    assert_int_equal(c.hidden_size, 2304);
    assert_int_equal(c.num_kv_heads, 4);
    assert_true(c.query_pre_attn_scalar == 256.0f);
    assert_true(c.attn_softcap == 50.0f);
    assert_true(c.final_softcap == 30.0f);
    assert_int_equal(c.sliding_window, 4096);
    for (int i = 0; i < 26; i++) /* alternating, layer 0 sliding */
        assert_int_equal(c.layer_sliding[i], i % 2 == 0);
    assert_true(c.rope_theta == 10000.0f && c.rope_theta_local == 10000.0f && c.rope_scale == 1.0f);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.sandwich_norm, 1);
    assert_int_equal(c.start_of_turn_id, 106);
    assert_int_equal(c.end_of_turn_id, 107);
    assert_string_equal(c.tensor_prefix, "model.");
    assert_int_equal(gm_config_param_count(&c), 2614341888LL); /* published gemma-2-2b size */
    /* every key absent: Gemma2Config's defaults (the 2b shape) */
    gm_model_config d;
    assert_int_equal(parse("{\"model_type\": \"gemma2\"}", &d), GM_OK);
    assert_int_equal(d.vocab_size, 256000);
    assert_int_equal(d.num_layers, 26);
    assert_int_equal(gm_config_param_count(&d), 2614341888LL);
    assert_true(d.attn_softcap == 50.0f && d.final_softcap == 30.0f);
    /* null soft-caps turn them off; an explicit window and query_pre_attn_scalar */
    assert_int_equal(parse("{\"model_type\": \"gemma2\", \"attn_logit_softcapping\": null,"
                           " \"final_logit_softcapping\": null, \"sliding_window\": 16,"
                           " \"query_pre_attn_scalar\": 144}",
                           &d),
                     GM_OK);
    assert_true(d.attn_softcap == 0.0f && d.final_softcap == 0.0f);
    assert_int_equal(d.sliding_window, 16);
    assert_true(d.query_pre_attn_scalar == 144.0f);
}

static void test_gemma3_text(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse(k_g3_1b, &c), GM_OK);
    assert_int_equal(c.family, GM_FAMILY_GEMMA3);
    assert_int_equal(c.vocab_size, 262144);
    assert_int_equal(c.eos_id, 1); /* [1, 106]: the first */
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.sandwich_norm, 1);
    assert_true(c.attn_softcap == 0.0f && c.final_softcap == 0.0f);
    assert_int_equal(c.sliding_window, 512);
    for (int i = 0; i < 26; i++) /* five sliding, then one full */
        assert_int_equal(c.layer_sliding[i], (i + 1) % 6 != 0);
    assert_true(c.rope_theta == 1e6f && c.rope_theta_local == 1e4f && c.rope_scale == 1.0f);
    assert_int_equal(c.start_of_turn_id, 105);
    assert_int_equal(c.end_of_turn_id, 106);
    assert_int_equal(gm_config_param_count(&c), 999885952LL); /* published gemma-3-1b size */
    /* explicit layer_types (Gemma 3 270M style) win over the pattern */
    assert_int_equal(parse("{\"model_type\": \"gemma3_text\", \"num_hidden_layers\": 3, \"layer_types\":"
                           " [\"full_attention\", \"sliding_attention\", \"full_attention\"],"
                           " \"sliding_window_pattern\": 2}",
                           &c),
                     GM_OK);
    assert_int_equal(c.layer_sliding[0], 0);
    assert_int_equal(c.layer_sliding[1], 1);
    assert_int_equal(c.layer_sliding[2], 0);
    /* transformers 5 saves the pattern as _sliding_window_pattern */
    assert_int_equal(parse("{\"model_type\": \"gemma3_text\", \"num_hidden_layers\": 3, \"_sliding_window_pattern\": 3}",
                           &c),
                     GM_OK);
    assert_int_equal(c.layer_sliding[1] * 10 + c.layer_sliding[2], 10);
    /* an older config's sliding_window_pattern */
    assert_int_equal(parse("{\"model_type\": \"gemma3_text\", \"num_hidden_layers\": 4, \"sliding_window_pattern\": 2}",
                           &c),
                     GM_OK);
    assert_int_equal(c.layer_sliding[0] * 1000 + c.layer_sliding[1] * 100 + c.layer_sliding[2] * 10 + c.layer_sliding[3],
                     1010);
    /* attn_logit_softcapping is parsed but, as in transformers' Gemma 3, not applied */
    assert_int_equal(parse("{\"model_type\": \"gemma3_text\", \"attn_logit_softcapping\": 50.0,"
                           " \"final_logit_softcapping\": 30.0}",
                           &c),
                     GM_OK);
    assert_true(c.attn_softcap == 0.0f && c.final_softcap == 30.0f);
}

static void test_gemma3_multimodal(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse(k_g3_4b, &c), GM_OK);
    assert_int_equal(c.family, GM_FAMILY_GEMMA3);
    assert_int_equal(c.vocab_size, 262208); /* Gemma3TextConfig's default */
    assert_int_equal(c.hidden_size, 2560);
    assert_int_equal(c.num_layers, 34);
    assert_int_equal(c.num_heads, 8);
    assert_int_equal(c.num_kv_heads, 4);
    assert_int_equal(c.head_dim, 256);
    assert_int_equal(c.max_position, 131072);
    assert_int_equal(c.sliding_window, 1024);
    assert_true(c.rope_theta == 1e6f && c.rope_theta_local == 1e4f && c.rope_scale == 8.0f);
    assert_true(c.query_pre_attn_scalar == 256.0f);
    assert_int_equal(c.eos_id, 1);
    assert_int_equal(c.bos_id, 2);
    assert_string_equal(c.torch_dtype, "bfloat16"); /* from the top level */
    assert_string_equal(c.tensor_prefix, "language_model.model.");
    /* no text_config at all: every text key at its default */
    assert_int_equal(parse("{\"model_type\": \"gemma3\"}", &c), GM_OK);
    assert_int_equal(c.hidden_size, 2304);
    assert_int_equal(c.num_layers, 26);
}

/* transformers 5 writes rope_parameters (per layer type for Gemma 3) and "dtype" */
static void test_rope_parameters(void **state)
{
    (void)state;
    gm_model_config c;
    assert_int_equal(parse("{\"model_type\": \"gemma3_text\", \"dtype\": \"float32\", \"rope_parameters\":"
                           " {\"full_attention\": {\"rope_type\": \"linear\", \"factor\": 4.0, \"rope_theta\": 500000.0},"
                           " \"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 20000.0}}}",
                           &c),
                     GM_OK);
    assert_true(c.rope_theta == 5e5f && c.rope_theta_local == 2e4f && c.rope_scale == 4.0f);
    assert_string_equal(c.torch_dtype, "float32");
    assert_int_equal(parse("{\"model_type\": \"gemma2\", \"rope_parameters\": {\"rope_theta\": 20000.0,"
                           " \"rope_type\": \"default\"}}",
                           &c),
                     GM_OK);
    assert_true(c.rope_theta == 2e4f && c.rope_theta_local == 2e4f && c.rope_scale == 1.0f);
    assert_int_equal(parse("{" BASE_G1 ", \"rope_parameters\": {\"rope_theta\": 30000.0}}", &c), GM_OK);
    assert_true(c.rope_theta == 3e4f && c.rope_theta_local == 3e4f);
    /* legacy rope_scaling spelled with "type" */
    assert_int_equal(parse("{\"model_type\": \"gemma3_text\", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}",
                           &c),
                     GM_OK);
    assert_true(c.rope_scale == 2.0f);
}

#define G2 "\"model_type\": \"gemma2\""
#define G3 "\"model_type\": \"gemma3_text\""

static void test_gemma23_bad(void **state)
{
    (void)state;
    expect_fail("{" G2 ", \"layer_types\": \"sliding_attention\"}", GM_ERR_FORMAT, "layer_types");
    expect_fail("{" G2 ", \"num_hidden_layers\": 2, \"layer_types\": [\"full_attention\"]}", GM_ERR_FORMAT,
                "layer_types");
    expect_fail("{" G2 ", \"num_hidden_layers\": 2, \"layer_types\": [\"full_attention\", \"chunked_attention\"]}",
                GM_ERR_UNSUPPORTED, "layer_types");
    expect_fail("{" G2 ", \"num_hidden_layers\": 1, \"layer_types\": [1]}", GM_ERR_UNSUPPORTED, "layer_types");
    expect_fail("{" G3 ", \"sliding_window_pattern\": 0}", GM_ERR_FORMAT, "sliding_window_pattern");
    expect_fail("{" G2 ", \"sliding_window\": 0}", GM_ERR_FORMAT, "sliding_window");
    expect_fail("{" G2 ", \"sliding_window\": 1.5}", GM_ERR_FORMAT, "sliding_window");
    expect_fail("{" G2 ", \"attn_logit_softcapping\": -5}", GM_ERR_FORMAT, "attn_logit_softcapping");
    expect_fail("{" G2 ", \"final_logit_softcapping\": \"30\"}", GM_ERR_FORMAT, "final_logit_softcapping");
    expect_fail("{" G2 ", \"query_pre_attn_scalar\": 0}", GM_ERR_FORMAT, "query_pre_attn_scalar");
    expect_fail("{" G3 ", \"rope_local_base_freq\": -1}", GM_ERR_FORMAT, "rope_local_base_freq");
    expect_fail("{" G3 ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 8}}", GM_ERR_UNSUPPORTED, "yarn");
    expect_fail("{" G3 ", \"rope_scaling\": {\"rope_type\": \"linear\"}}", GM_ERR_FORMAT, "factor");
    expect_fail("{" G3 ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": -8}}", GM_ERR_FORMAT, "factor");
    expect_fail("{" G3 ", \"rope_scaling\": {\"rope_type\": 3}}", GM_ERR_FORMAT, "rope_type");
    expect_fail("{" G3 ", \"rope_scaling\": [8]}", GM_ERR_FORMAT, "rope_scaling");
    expect_fail("{" G2 ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 8}}", GM_ERR_UNSUPPORTED,
                "linear RoPE scaling");
    expect_fail("{" BASE_G1 ", \"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2}}", GM_ERR_UNSUPPORTED,
                "dynamic");
    expect_fail("{" G3 ", \"rope_parameters\": {\"sliding_attention\": {\"rope_type\": \"linear\", \"factor\": 2}}}",
                GM_ERR_UNSUPPORTED, "linear RoPE scaling");
    expect_fail("{" G3 ", \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000}}", GM_ERR_FORMAT,
                "rope_parameters");
    expect_fail("{" G3 ", \"rope_parameters\": 5}", GM_ERR_FORMAT, "rope_parameters");
    expect_fail("{" G3 ", \"rope_parameters\": {\"full_attention\": \"x\"}}", GM_ERR_FORMAT, "full_attention");
    expect_fail("{" G2 ", \"hidden_activation\": \"silu\"}", GM_ERR_UNSUPPORTED, "hidden_activation");
    expect_fail("{" G2 ", \"attention_bias\": true}", GM_ERR_UNSUPPORTED, "attention_bias");
    expect_fail("{" G2 ", \"attention_bias\": 1}", GM_ERR_FORMAT, "attention_bias");
    expect_fail("{" G3 ", \"use_bidirectional_attention\": true}", GM_ERR_UNSUPPORTED, "use_bidirectional_attention");
    expect_fail("{" G3 ", \"tie_word_embeddings\": false}", GM_ERR_UNSUPPORTED, "tie_word_embeddings");
    expect_fail("{" G3 ", \"num_hidden_layers\": 300}", GM_ERR_UNSUPPORTED, "num_hidden_layers");
    expect_fail("{" G3 ", \"vocab_size\": 2}", GM_ERR_FORMAT, "bos_token_id"); /* defaults are range-checked */
    expect_fail("{\"model_type\": \"gemma3\", \"text_config\": [1]}", GM_ERR_FORMAT, "text_config");
    expect_fail("{\"model_type\": \"gemma3\", \"text_config\": {\"model_type\": \"siglip_vision_model\"}}",
                GM_ERR_UNSUPPORTED, "text_config");
    expect_fail("{\"model_type\": \"gemma3\", \"text_config\": {\"hidden_size\": \"big\"}}", GM_ERR_FORMAT,
                "hidden_size");
    expect_fail("{\"model_type\": \"gemma3\", \"eos_token_id\": 300000}", GM_ERR_FORMAT, "eos_token_id");
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
        cmocka_unit_test(test_gemma2),      cmocka_unit_test(test_gemma3_text), cmocka_unit_test(test_gemma3_multimodal),
        cmocka_unit_test(test_rope_parameters), cmocka_unit_test(test_gemma23_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
