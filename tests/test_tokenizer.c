/* test_tokenizer.c - common/tokenizer.h on the tiny model's tokenizer.model.
 * Usage: test_tokenizer PATH/tokenizer.model */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/tokenizer.h"

static const char *g_model_path;
static gm_tokenizer *g_tok;
static const char *g_gemma3_path; /* a tokenizer with Gemma 3's turn markers (105/106) */

/* Texts that must survive encode -> decode unchanged. */
static const char *const g_texts[] = {
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  two leading spaces, trailing one ",
    "Line one\nLine two\n\n\tTabbed 12345 67.89",
    "Café, naïve, façade, Übermäßig, señor, ¿qué tal?",
    "Ελληνικά και Русский текст",
    "日本語のテキストと中文文本",
    "Emoji: 😀🎉👍🏽 ❤️ 🦀",
    "한국어 문장입니다",              /* no Korean in the corpus: byte fallback */
    "𝄞 musical and 鱻 rare",         /* 4-byte and rare characters */
    "<start_of_turn>user\n<bos><eos><0x41><unused3>[@BOS@]<end_of_turn>",
    "",
};
#define N_TEXTS (sizeof g_texts / sizeof g_texts[0])

/* Length of the valid UTF-8 prefix of s[0..n) (n if all valid). */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return i;
        }
        if (i + len > n)
            return i;
        for (size_t k = 1; k < len; k++) {
            unsigned b = s[i + k];
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF))
                return i;
        }
        i += len;
    }
    return n;
}

static int is_valid_utf8(const char *s, size_t n)
{
    return utf8_valid_prefix((const unsigned char *)s, n) == n;
}

/* Piece names of a sentencepiece ModelProto, read straight from the protobuf
 * (field 1 = repeated SentencePiece {1: piece, 3: type}), independently of the
 * code under test. Returns the count; names[i] malloc'd, types[i] the type. */
static uint64_t pb_varint(const unsigned char *p, size_t n, size_t *i)
{
    uint64_t v = 0;
    for (int sh = 0; *i < n && sh < 64; sh += 7) {
        unsigned char b = p[(*i)++];
        v |= (uint64_t)(b & 0x7f) << sh;
        if (!(b & 0x80))
            break;
    }
    return v;
}

static int read_pieces(const char *path, char ***names, int **types)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)sz);
    assert_int_equal(fread(buf, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    int cap = 8192, n = 0;
    *names = calloc((size_t)cap, sizeof **names);
    *types = calloc((size_t)cap, sizeof **types);
    size_t i = 0;
    while (i < (size_t)sz) {
        uint64_t key = pb_varint(buf, (size_t)sz, &i);
        int wt = (int)(key & 7), field = (int)(key >> 3);
        if (wt == 0) {
            pb_varint(buf, (size_t)sz, &i);
        } else if (wt == 5) {
            i += 4;
        } else if (wt == 1) {
            i += 8;
        } else if (wt == 2) {
            size_t len = (size_t)pb_varint(buf, (size_t)sz, &i), end = i + len;
            if (field == 1 && n < cap) {
                int type = 1; /* NORMAL is the default */
                char *name = NULL;
                size_t j = i;
                while (j < end) {
                    uint64_t k2 = pb_varint(buf, end, &j);
                    int w2 = (int)(k2 & 7), f2 = (int)(k2 >> 3);
                    if (w2 == 2) {
                        size_t l2 = (size_t)pb_varint(buf, end, &j);
                        if (f2 == 1) {
                            name = malloc(l2 + 1);
                            memcpy(name, buf + j, l2);
                            name[l2] = 0;
                        }
                        j += l2;
                    } else if (w2 == 0) {
                        uint64_t v = pb_varint(buf, end, &j);
                        if (f2 == 3)
                            type = (int)v;
                    } else if (w2 == 5) {
                        j += 4;
                    } else {
                        j += 8;
                    }
                }
                (*names)[n] = name;
                (*types)[n] = type;
                n++;
            }
            i = end;
        } else {
            break;
        }
    }
    free(buf);
    return n;
}

static void encode(const char *s, bool bos, int32_t **ids, int32_t *n)
{
    gm_status st = gm_tok_encode(g_tok, s, strlen(s), bos, ids, n);
    assert_int_equal(st, GM_OK);
}

/* Id of the byte piece <0xNN>: the id whose stream bytes are that single byte. */
static int32_t byte_id(unsigned char b)
{
    char tmp[16];
    for (int32_t id = 0; id < gm_tok_vocab_size(g_tok); id++)
        if (gm_tok_piece_bytes(g_tok, id, tmp, sizeof tmp) == 1 && (unsigned char)tmp[0] == b && b >= 0x80)
            return id;
    return -1;
}

static void test_special_layout(void **state)
{
    (void)state;
    char **names;
    int *types;
    int n = read_pieces(g_model_path, &names, &types);
    assert_int_equal(n, gm_tok_vocab_size(g_tok));
    assert_int_equal(n, 4096);
    assert_string_equal(names[GM_TOK_PAD], "<pad>");
    assert_string_equal(names[GM_TOK_EOS], "<eos>");
    assert_string_equal(names[GM_TOK_BOS], "<bos>");
    assert_string_equal(names[3], "<unk>");
    assert_string_equal(names[4], "<mask>");
    assert_string_equal(names[GM_TOK_START_OF_TURN], "<start_of_turn>");
    assert_string_equal(names[GM_TOK_END_OF_TURN], "<end_of_turn>");
    assert_int_equal(GM_TOK_START_OF_TURN, 106);
    assert_int_equal(GM_TOK_END_OF_TURN, 107);
    assert_int_equal(types[3], 2);                                /* UNKNOWN */
    for (int i = 0; i < 108; i++)
        if (i != 3)
            assert_int_equal(types[i], 3);                        /* CONTROL: never matched in text */
    assert_string_equal(names[108], "<0x00>");
    assert_int_equal(types[108], 6);                              /* BYTE */
    assert_string_equal(names[108 + 255], "<0xFF>");
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(types);

    /* control ids contribute no bytes; out-of-range ids give nothing */
    char buf[64];
    int32_t ctl[] = {0, 1, 2, 4, 50, 105, 106, 107};
    for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++)
        assert_int_equal(gm_tok_piece_bytes(g_tok, ctl[i], buf, sizeof buf), 0);
    assert_int_equal(gm_tok_piece_bytes(g_tok, -1, buf, sizeof buf), 0);
    assert_int_equal(gm_tok_piece_bytes(g_tok, 4096, buf, sizeof buf), 0);
    assert_int_equal(gm_tok_piece_bytes(g_tok, 1 << 30, buf, sizeof buf), 0);
    assert_int_equal(gm_tok_piece_bytes(g_tok, 108 + 'A', buf, sizeof buf), 1);
    assert_int_equal(buf[0], 'A');
}

/* gm_tok_token_str: a token alone as logprobs show it: text bytes, or the piece of a control token */
static void test_token_str(void **state)
{
    (void)state;
    size_t n;
    const char *p = gm_tok_token_str(g_tok, 1, &n);
    assert_non_null(p);
    assert_memory_equal(p, "<eos>", 5);
    assert_int_equal(n, 5);
    p = gm_tok_token_str(g_tok, 107, &n);
    assert_int_equal(n, 13);
    assert_memory_equal(p, "<end_of_turn>", 13);
    p = gm_tok_token_str(g_tok, 108 + 0xE2, &n); /* a byte piece: one byte, not UTF-8 alone */
    assert_int_equal(n, 1);
    assert_int_equal((unsigned char)p[0], 0xE2);
    assert_null(gm_tok_token_str(g_tok, -1, &n));
    assert_int_equal(n, 0);
    assert_null(gm_tok_token_str(g_tok, 1 << 30, &n));
    /* ordinary pieces: the bytes they add to a text ("\u2581" is a space), as gm_tok_piece_bytes */
    int32_t *ids, m;
    encode(" Hello, world", false, &ids, &m);
    assert_true(m >= 2);
    for (int32_t i = 0; i < m; i++) {
        char piece[64];
        size_t pb = gm_tok_piece_bytes(g_tok, ids[i], piece, sizeof piece);
        p = gm_tok_token_str(g_tok, ids[i], &n);
        assert_int_equal(n, pb);
        assert_memory_equal(p, piece, n);
    }
    p = gm_tok_token_str(g_tok, ids[0], &n);
    assert_int_equal(p[0], ' ');
    free(ids);
}

static void test_load_errors(void **state)
{
    (void)state;
    gm_tokenizer *t = (gm_tokenizer *)0x1;
    assert_int_equal(gm_tok_load("/nonexistent/tokenizer.model", &t), GM_ERR_IO);
    assert_null(t);
    assert_non_null(strstr(gm_last_error(), "/nonexistent/tokenizer.model"));

    char path[] = "/tmp/gm_tok_junkXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    fputs("this is not a protobuf \xff\xff\xff\xff", f);
    fclose(f);
    assert_int_equal(gm_tok_load(path, &t), GM_ERR_FORMAT);
    assert_null(t);
    assert_non_null(strstr(gm_last_error(), path));
    remove(path);
    gm_tok_destroy(&t);
    gm_tok_destroy(NULL);
}

static void test_round_trip(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_TEXTS; k++) {
        for (int bos = 0; bos < 2; bos++) {
            int32_t *ids, n;
            encode(g_texts[k], bos, &ids, &n);
            if (bos) {
                assert_true(n >= 1);
                assert_int_equal(ids[0], GM_TOK_BOS);
            }
            for (int32_t i = bos; i < n; i++) {
                /* user text never yields a control id */
                assert_true(ids[i] >= 108 && ids[i] < 4096);
            }
            char *s = gm_tok_decode(g_tok, ids, n);
            assert_non_null(s);
            assert_string_equal(s, g_texts[k]);
            free(s);
            free(ids);
        }
    }
}

static void test_streaming(void **state)
{
    (void)state;
    int saw_split = 0;
    for (size_t k = 0; k < N_TEXTS; k++) {
        int32_t *ids, n;
        encode(g_texts[k], true, &ids, &n);
        gm_detok *d = gm_detok_new(g_tok);
        assert_non_null(d);
        char acc[4096] = "";
        size_t len = 0;
        char out[GM_DETOK_MAX_OUT];
        for (int32_t i = 0; i < n; i++) {
            char piece[64];
            size_t pb = gm_tok_piece_bytes(g_tok, ids[i], piece, sizeof piece);
            size_t m = gm_detok_push(d, ids[i], out);
            assert_int_equal(strlen(out), m);
            assert_true(is_valid_utf8(out, m)); /* never half a character */
            if (pb == 1 && (unsigned char)piece[0] >= 0x80 && m == 0)
                saw_split = 1; /* a byte-fallback token held back */
            memcpy(acc + len, out, m);
            len += m;
        }
        size_t m = gm_detok_flush(d, out);
        assert_int_equal(m, 0);
        acc[len] = 0;
        assert_string_equal(acc, g_texts[k]);
        gm_detok_destroy(&d);
        assert_null(d);
        free(ids);
    }
    assert_true(saw_split); /* the Korean / rare-character texts went through byte pieces */
}

/* Push a list of ids; the concatenated output plus flush must equal want. */
static void check_bytes(const int32_t *ids, int32_t n, const char *want)
{
    gm_detok *d = gm_detok_new(g_tok);
    char acc[512] = "", out[GM_DETOK_MAX_OUT];
    size_t len = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t m = gm_detok_push(d, ids[i], out);
        assert_true(is_valid_utf8(out, m));
        memcpy(acc + len, out, m);
        len += m;
    }
    size_t m = gm_detok_flush(d, out);
    assert_true(is_valid_utf8(out, m));
    memcpy(acc + len, out, m);
    len += m;
    acc[len] = 0;
    assert_string_equal(acc, want);
    char *s = gm_tok_decode(g_tok, ids, n);
    assert_string_equal(s, want);
    free(s);
    gm_detok_destroy(&d);
}

#define FFFD "\xEF\xBF\xBD"

static void test_invalid_bytes(void **state)
{
    (void)state;
    int32_t A = 108 + 'A';
    int32_t e2 = byte_id(0xE2), x82 = byte_id(0x82), xac = byte_id(0xAC), x80 = byte_id(0x80),
            c0 = byte_id(0xC0), af = byte_id(0xAF), ed = byte_id(0xED), a0 = byte_id(0xA0), f4 = byte_id(0xF4),
            x90 = byte_id(0x90), ff = byte_id(0xFF), f0 = byte_id(0xF0), x9f = byte_id(0x9F), x98 = byte_id(0x98);
    assert_true(e2 > 0 && x82 > 0 && xac > 0 && x80 > 0 && c0 > 0 && af > 0 && ed > 0 && a0 > 0 && f4 > 0 &&
                x90 > 0 && ff > 0 && f0 > 0 && x9f > 0 && x98 > 0);

    /* € = E2 82 AC across three byte tokens, then a truncated one */
    int32_t euro[] = {e2, x82, xac, A};
    check_bytes(euro, 4, "\xE2\x82\xAC" "A");
    int32_t trunc[] = {e2, x82, A};
    check_bytes(trunc, 3, FFFD "A");
    int32_t lone[] = {x80, A, ff};
    check_bytes(lone, 3, FFFD "A" FFFD);
    int32_t overlong[] = {c0, af};
    check_bytes(overlong, 2, FFFD FFFD);
    int32_t surrogate[] = {ed, a0, x80};
    check_bytes(surrogate, 3, FFFD FFFD FFFD);
    int32_t too_big[] = {f4, x90, x80, x80};
    check_bytes(too_big, 4, FFFD FFFD FFFD FFFD);
    /* pending unfinished character at the end: flushed as one U+FFFD */
    int32_t tail[] = {A, f0, x9f, x98};
    check_bytes(tail, 4, "A" FFFD);
    /* controls between bytes do not break a character */
    int32_t ctl[] = {f0, GM_TOK_BOS, x9f, GM_TOK_END_OF_TURN, x98, 9999999, byte_id(0x80)};
    check_bytes(ctl, 7, "\xF0\x9F\x98\x80");

    /* push returns nothing until the character completes */
    gm_detok *d = gm_detok_new(g_tok);
    char out[GM_DETOK_MAX_OUT];
    assert_int_equal(gm_detok_push(d, e2, out), 0);
    assert_string_equal(out, "");
    assert_int_equal(gm_detok_push(d, x82, out), 0);
    assert_int_equal(gm_detok_push(d, xac, out), 3);
    assert_string_equal(out, "\xE2\x82\xAC");
    assert_int_equal(gm_detok_flush(d, out), 0);
    assert_int_equal(gm_detok_push(d, e2, out), 0);
    assert_int_equal(gm_detok_flush(d, out), 3);
    assert_string_equal(out, FFFD);
    assert_int_equal(gm_detok_flush(d, out), 0);
    gm_detok_destroy(&d);
}

static void test_special_text_not_parsed(void **state)
{
    (void)state;
    const char *s = "<start_of_turn>model\n<end_of_turn><bos><eos><pad><unk><mask>";
    int32_t *ids, n;
    encode(s, false, &ids, &n);
    for (int32_t i = 0; i < n; i++)
        assert_true(ids[i] >= 108);
    free(ids);
}

static void test_invalid_input_text(void **state)
{
    (void)state;
    const char bad[] = "ok \xff\xfe \xE2\x82 end";
    int32_t *ids, n;
    assert_int_equal(gm_tok_encode(g_tok, bad, sizeof bad - 1, true, &ids, &n), GM_OK);
    char *s = gm_tok_decode(g_tok, ids, n);
    assert_non_null(s);
    assert_true(is_valid_utf8(s, strlen(s)));
    assert_non_null(strstr(s, "ok "));
    assert_non_null(strstr(s, " end"));
    free(s);
    free(ids);
    /* empty text with BOS is just BOS; NULL with zero length is fine */
    assert_int_equal(gm_tok_encode(g_tok, NULL, 0, true, &ids, &n), GM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], GM_TOK_BOS);
    free(ids);
    assert_int_equal(gm_tok_encode(g_tok, NULL, 5, true, &ids, &n), GM_ERR_INVALID_ARG);
}

/* Append the ids of s (no BOS) to v. */
static void append(int32_t *v, int32_t *nv, const char *s)
{
    int32_t *ids, n;
    encode(s, false, &ids, &n);
    memcpy(v + *nv, ids, (size_t)n * sizeof *ids);
    *nv += n;
    free(ids);
}

static void test_chat_template(void **state)
{
    (void)state;
    gm_chat_msg msgs[] = {
        {"user", "Hi there"},
        {"assistant", "Hello! How can I help?"},
        {"user", "Tell me about <end_of_turn> tokens."},
    };
    int32_t *ids, n;
    assert_int_equal(gm_tok_encode_chat(g_tok, msgs, 3, &ids, &n), GM_OK);

    int32_t want[1024], nw = 0;
    want[nw++] = GM_TOK_BOS;
    want[nw++] = GM_TOK_START_OF_TURN;
    append(want, &nw, "user\nHi there");
    want[nw++] = GM_TOK_END_OF_TURN;
    append(want, &nw, "\n");
    want[nw++] = GM_TOK_START_OF_TURN;
    append(want, &nw, "model\nHello! How can I help?");
    want[nw++] = GM_TOK_END_OF_TURN;
    append(want, &nw, "\n");
    want[nw++] = GM_TOK_START_OF_TURN;
    append(want, &nw, "user\nTell me about <end_of_turn> tokens.");
    want[nw++] = GM_TOK_END_OF_TURN;
    append(want, &nw, "\n");
    want[nw++] = GM_TOK_START_OF_TURN;
    append(want, &nw, "model\n");
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, (size_t)n * sizeof *ids);

    int starts = 0, ends = 0;
    for (int32_t i = 0; i < n; i++) {
        starts += ids[i] == GM_TOK_START_OF_TURN;
        ends += ids[i] == GM_TOK_END_OF_TURN;
    }
    assert_int_equal(starts, 4);
    assert_int_equal(ends, 3); /* the literal "<end_of_turn>" in user text is not one */
    assert_int_equal(ids[n - 1] == GM_TOK_START_OF_TURN, 0);
    char *s = gm_tok_decode(g_tok, ids, n);
    assert_string_equal(s, "user\nHi there\nmodel\nHello! How can I help?\nuser\nTell me about <end_of_turn> tokens.\n"
                           "model\n");
    free(s);
    free(ids);

    /* a single user turn is the minimal prompt */
    gm_chat_msg one[] = {{"user", ""}};
    assert_int_equal(gm_tok_encode_chat(g_tok, one, 1, &ids, &n), GM_OK);
    assert_true(n >= 5);
    assert_int_equal(ids[0], GM_TOK_BOS);
    assert_int_equal(ids[1], GM_TOK_START_OF_TURN);
    free(ids);
}

static void test_chat_errors(void **state)
{
    (void)state;
    int32_t *ids = NULL, n = 0;
    gm_chat_msg sys[] = {{"system", "Be brief."}, {"user", "Hi"}};
    assert_int_equal(gm_tok_encode_chat(g_tok, sys, 2, &ids, &n), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "system"));
    gm_chat_msg last_model[] = {{"user", "Hi"}, {"model", "Hello"}};
    assert_int_equal(gm_tok_encode_chat(g_tok, last_model, 2, &ids, &n), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "last message"));
    gm_chat_msg odd[] = {{"narrator", "Once"}};
    assert_int_equal(gm_tok_encode_chat(g_tok, odd, 1, &ids, &n), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "narrator"));
    gm_chat_msg null_text[] = {{"user", NULL}};
    assert_int_equal(gm_tok_encode_chat(g_tok, null_text, 1, &ids, &n), GM_ERR_INVALID_ARG);
    assert_int_equal(gm_tok_encode_chat(g_tok, sys, 0, &ids, &n), GM_ERR_INVALID_ARG);
    assert_null(ids);
}

/* Gemma 3's template: turn markers 105/106, a leading system message folded into the first user turn. */
static void test_chat_gemma3(void **state)
{
    (void)state;
    gm_tokenizer *t3 = NULL;
    assert_int_equal(gm_tok_load(g_gemma3_path, &t3), GM_OK);
    const gm_chat_format g3 = {105, 106, true}, g1 = {106, 107, false};
    gm_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
    int32_t *ids = NULL, n = 0;
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g3, msgs, 4, &ids, &n), GM_OK);
    int sot = 0, eot = 0;
    for (int32_t i = 0; i < n; i++)
        sot += ids[i] == 105, eot += ids[i] == 106;
    assert_int_equal(sot, 4); /* user, model, user, and the generation prompt: no system turn */
    assert_int_equal(eot, 3);
    assert_int_equal(ids[0], GM_TOK_BOS);
    assert_int_equal(ids[1], 105);
    char *s = gm_tok_decode(t3, ids, n);
    assert_string_equal(s, "user\nBe brief.\n\nHi\nmodel\nHello\nuser\nBye\nmodel\n");
    free(s);
    free(ids);
    ids = NULL;
    /* the same messages without the system one: only the prefix differs */
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g3, msgs + 1, 3, &ids, &n), GM_OK);
    s = gm_tok_decode(t3, ids, n);
    assert_string_equal(s, "user\nHi\nmodel\nHello\nuser\nBye\nmodel\n");
    free(s);
    free(ids);
    ids = NULL;
    /* errors: Gemma 1's ids on this tokenizer, system elsewhere, system alone, system without the flag */
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g1, msgs + 1, 1, &ids, &n), GM_ERR_UNSUPPORTED);
    assert_non_null(strstr(gm_last_error(), "106/107"));
    /* the id-less form finds the markers by name: 105/106 on this tokenizer */
    assert_int_equal(gm_tok_encode_chat(t3, msgs + 1, 1, &ids, &n), GM_OK);
    assert_int_equal(ids[1], 105);
    free(ids);
    ids = NULL;
    gm_chat_msg late[] = {{"user", "Hi"}, {"system", "x"}, {"user", "Hi"}};
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g3, late, 3, &ids, &n), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "first"));
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g3, msgs, 1, &ids, &n), GM_ERR_INVALID_ARG);
    gm_chat_msg sys_model[] = {{"system", "x"}, {"model", "y"}, {"user", "z"}};
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g3, sys_model, 3, &ids, &n), GM_ERR_INVALID_ARG);
    const gm_chat_format g3_nosys = {105, 106, false};
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &g3_nosys, msgs, 2, &ids, &n), GM_ERR_INVALID_ARG);
    const gm_chat_format bad = {105, 5000, true};
    assert_int_equal(gm_tok_encode_chat_fmt(t3, &bad, msgs + 1, 1, &ids, &n), GM_ERR_UNSUPPORTED);
    assert_int_equal(gm_tok_encode_chat_fmt(t3, NULL, msgs + 1, 1, &ids, &n), GM_ERR_INVALID_ARG);
    assert_null(ids);
    /* and the Gemma 1 tokenizer refuses Gemma 3's ids */
    assert_int_equal(gm_tok_encode_chat_fmt(g_tok, &g3, msgs + 1, 1, &ids, &n), GM_ERR_UNSUPPORTED);
    gm_tok_destroy(&t3);
}

static int setup(void **state)
{
    (void)state;
    if (gm_tok_load(g_model_path, &g_tok) != GM_OK) {
        fprintf(stderr, "cannot load %s: %s\n", g_model_path, gm_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    gm_tok_destroy(&g_tok);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_tokenizer PATH/tokenizer.model GEMMA3_PATH/tokenizer.model\n");
        return 2;
    }
    g_model_path = argv[1];
    g_gemma3_path = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_special_layout),  cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_round_trip),      cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_invalid_bytes),   cmocka_unit_test(test_special_text_not_parsed),
        cmocka_unit_test(test_invalid_input_text), cmocka_unit_test(test_chat_template),
        cmocka_unit_test(test_chat_errors),     cmocka_unit_test(test_chat_gemma3),
        cmocka_unit_test(test_token_str),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
