/* gguf_tiny.h - a tiny Gemma GGUF for the tests (header-only, after gguf_build.h): hidden 256, 2 layers,
 * 2 query heads and 1 KV head of 128, a vocabulary of 277 pieces (specials, two user-defined
 * whitespace pieces, the 256 byte pieces, a few normal pieces), every tensor type the loader
 * dequantizes; norm weights 1 + 0.01 * i (the converter's +1 included), other data random with finite
 * scales. tiny_gguf(arch, extra, n_extra) builds it; extra appends n_extra metadata entries. */
#ifndef GM_TEST_GGUF_TINY_H
#define GM_TEST_GGUF_TINY_H

#include <stdio.h>

#include "common/gguf_quants.h"
#include "gguf_build.h"

enum { H = 256, FF = 512, NH = 2, NKV = 1, HD = 128, NL = 2, NORMAL0 = 264 };

/* The vocabulary: specials, user-defined "  " and "\n", the 256 byte pieces, then normal pieces. */
static const char *const k_normal[] = {"\xe2\x96\x81", "a", "b", "c", "h", "i", "\xe2\x96\x81" "a", "ab",
                                       "\xe2\x96\x81" "ab", "abc", "\xe2\x96\x81" "b", "hi", "\xe2\x96\x81" "hi"};
#define N_NORMAL ((int)(sizeof k_normal / sizeof k_normal[0]))
#define VOCAB (NORMAL0 + N_NORMAL)

static void put_vocab(gb *b)
{
    gb_kv_str(b, "tokenizer.ggml.model", "llama");
    gb_kv_arr(b, "tokenizer.ggml.tokens", GGUF_VT_STRING, VOCAB);
    const char *first[] = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "  ", "\n"};
    for (int i = 0; i < 8; i++)
        gb_str(b, first[i]);
    for (int i = 0; i < 256; i++) {
        char p[8];
        snprintf(p, sizeof p, "<0x%02X>", i);
        gb_str(b, p);
    }
    for (int i = 0; i < N_NORMAL; i++)
        gb_str(b, k_normal[i]);
    gb_kv_arr(b, "tokenizer.ggml.scores", GGUF_VT_F32, VOCAB);
    for (int i = 0; i < VOCAB; i++)
        gb_f32(b, i < NORMAL0 ? (i < 8 ? -1000.0f : 0.0f) : (float)-i);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GGUF_VT_I32, VOCAB);
    for (int i = 0; i < VOCAB; i++)
        gb_u32(b, i < 6 ? 3 : i < 8 ? 4 : i < NORMAL0 ? 6 : 1);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", 2);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", 1);
    gb_kv_u32(b, "tokenizer.ggml.unknown_token_id", 3);
    gb_kv_u32(b, "tokenizer.ggml.padding_token_id", 0);
    gb_kv_bool(b, "tokenizer.ggml.add_space_prefix", 0);
}
#define VOCAB_KV 9

typedef struct tdesc {
    char name[64];
    uint32_t n_dims, type;
    uint64_t ne[2];
} tdesc;

/* The tensors of the tiny model; returns their count. */
static int tiny_tensors(tdesc *t)
{
    int n = 0;
#define T(NM, ND, TY, A, B) (snprintf(t[n].name, 64, "%s", NM), t[n].n_dims = ND, t[n].type = TY, t[n].ne[0] = A, t[n].ne[1] = B, n++)
    T("token_embd.weight", 2, GGUF_TYPE_Q8_0, H, VOCAB);
    T("output_norm.weight", 1, GGUF_TYPE_F32, H, 1);
    for (int l = 0; l < NL; l++) {
        char nm[64];
#define B(S, ND, TY, A, BB) (snprintf(nm, sizeof nm, "blk.%d.%s", l, S), T(nm, ND, TY, A, BB))
        B("attn_norm.weight", 1, GGUF_TYPE_F32, H, 1);
        B("attn_q.weight", 2, GGUF_TYPE_Q4_K, H, NH * HD);
        B("attn_k.weight", 2, GGUF_TYPE_Q5_0, H, NKV * HD);
        B("attn_v.weight", 2, GGUF_TYPE_Q8_0, H, NKV * HD);
        B("attn_output.weight", 2, GGUF_TYPE_Q6_K, NH * HD, H);
        B("attn_q_norm.weight", 1, GGUF_TYPE_F32, HD, 1);
        B("attn_k_norm.weight", 1, GGUF_TYPE_F32, HD, 1);
        B("post_attention_norm.weight", 1, GGUF_TYPE_F32, H, 1);
        B("ffn_norm.weight", 1, GGUF_TYPE_F32, H, 1);
        B("ffn_gate.weight", 2, GGUF_TYPE_Q5_K, H, FF);
        B("ffn_up.weight", 2, GGUF_TYPE_F16, H, FF);
        B("ffn_down.weight", 2, GGUF_TYPE_BF16, FF, H);
        B("post_ffw_norm.weight", 1, GGUF_TYPE_F32, H, 1);
#undef B
    }
#undef T
    return n;
}

static uint64_t t_bytes(const tdesc *t)
{
    int64_t be, bb;
    gguf_type_block(t->type, &be, &bb);
    return (uint64_t)(t->ne[0] / be * bb) * (t->n_dims > 1 ? t->ne[1] : 1);
}

/* A tiny Gemma file of architecture arch, with `extra` (n_extra entries) appended to its metadata.
 * Norm weights hold 1 + 0.01 * i; quantized data is random with finite scales. */
static gb tiny_gguf(const char *arch, void (*extra)(gb *, const char *), int n_extra)
{
    tdesc t[64];
    int nt = tiny_tensors(t);
    gb b = {0};
    gb_header(&b, 3, (uint64_t)nt, 8 + VOCAB_KV + (uint64_t)n_extra);
    char k[96];
#define KU(S, V) (snprintf(k, sizeof k, "%s.%s", arch, S), gb_kv_u32(&b, k, V))
    gb_kv_str(&b, "general.architecture", arch);
    KU("context_length", 4096);
    KU("embedding_length", H);
    KU("block_count", NL);
    KU("feed_forward_length", FF);
    KU("attention.head_count", NH);
    KU("attention.head_count_kv", NKV);
    KU("attention.key_length", HD);
#undef KU
    put_vocab(&b);
    if (extra)
        extra(&b, arch);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        gb_tensor(&b, t[i].name, t[i].n_dims, t[i].ne, t[i].type, off);
        off = align_up_u64(off + t_bytes(&t[i]), 32);
    }
    gb_align(&b, 32);
    uint64_t x = 12345;
    for (int i = 0; i < nt; i++) {
        size_t start = b.len;
        if (t[i].n_dims == 1) {
            for (uint64_t j = 0; j < t[i].ne[0]; j++)
                gb_f32(&b, 1.0f + 0.01f * (float)j);
        } else {
            for (uint64_t j = 0; j < t_bytes(&t[i]); j++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                gb_le(&b, (uint8_t)(x >> 24), 1);
            }
            /* finite scales: clear the f16/bf16 exponent's top bit of every 2-byte field that may be one */
            for (size_t j = start + 1; j < b.len; j += 2)
                b.p[j] &= 0x3f;
        }
        gb_align(&b, 32);
    }
    return b;
}

#endif
