/* test_oai_fmt.c - http/oai_fmt: OpenAI response bodies read back with cJSON: completion and
 * chat.completion objects, SSE chunks (framing, first chat chunk with the role, finish chunk,
 * usage: null / the usage chunk, [DONE]), logprobs in the chat and completions shapes (bytes of
 * tokens that are not UTF-8, -inf), errors, /v1/models, /tokenize, /detokenize, ids. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <cmocka.h>

#include "http/oai.h"
#include "tests/test_check.h"

static jsonw W;

/* Parse w's content (after an optional "data: " and before "\n\n") as one JSON value. */
static cJSON *read_back(const char *s, size_t n)
{
    assert_int_equal(jsonw_utf8_valid_prefix(s, n), n);
    cJSON *j = cJSON_ParseWithLength(s, n);
    if (!j)
        fail_msg("not JSON: %.*s", (int)n, s);
    return j;
}

static cJSON *event(const char *s)
{
    assert_true(strncmp(s, "data: ", 6) == 0);
    size_t n = strlen(s);
    assert_true(n >= 8 && !strcmp(s + n - 2, "\n\n"));
    assert_null(memchr(s + 6, '\n', n - 8)); /* one line */
    return read_back(s + 6, n - 8);
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(x))
        fail_msg("%s is not a string", k);
    return x->valuestring;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(x))
        fail_msg("%s is not a number", k);
    return x->valuedouble;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x)
        fail_msg("no %s", k);
    return x;
}

static const oai_resp CHAT = {OAI_CHAT, "chatcmpl-abc", 1700000000, "gemma-2b", false};
static const oai_resp CMPL = {OAI_COMPLETIONS, "cmpl-abc", 1700000000, "gemma-2b", false};

static void test_response_bodies(void **st)
{
    oai_choice c = {.index = 0, .text = "Hello \"world\"\n", .text_len = 14, .finish = OAI_FINISH_STOP};
    oai_usage u = {7, 3};
    jsonw_reset(&W);
    oai_write_response(&W, &CHAT, &c, 1, &u);
    assert_true(jsonw_ok(&W));
    cJSON *j = read_back(W.p, W.len);
    assert_string_equal(str(j, "id"), "chatcmpl-abc");
    assert_string_equal(str(j, "object"), "chat.completion");
    assert_true(num(j, "created") == 1700000000);
    assert_string_equal(str(j, "model"), "gemma-2b");
    const cJSON *ch = get(j, "choices");
    assert_int_equal(cJSON_GetArraySize(ch), 1);
    const cJSON *c0 = cJSON_GetArrayItem(ch, 0);
    assert_true(num(c0, "index") == 0);
    const cJSON *msg = get(c0, "message");
    assert_string_equal(str(msg, "role"), "assistant");
    assert_string_equal(str(msg, "content"), "Hello \"world\"\n");
    assert_true(cJSON_IsNull(get(c0, "logprobs")));
    assert_string_equal(str(c0, "finish_reason"), "stop");
    const cJSON *us = get(j, "usage");
    assert_true(num(us, "prompt_tokens") == 7 && num(us, "completion_tokens") == 3 && num(us, "total_tokens") == 10);
    cJSON_Delete(j);

    oai_choice cs[2] = {{.index = 0, .text = "a", .text_len = 1, .finish = OAI_FINISH_LENGTH},
                        {.index = 1, .text = "b\xff", .text_len = 2, .finish = OAI_FINISH_ABORT}};
    jsonw_reset(&W);
    oai_write_response(&W, &CMPL, cs, 2, NULL);
    j = read_back(W.p, W.len);
    assert_string_equal(str(j, "object"), "text_completion");
    ch = get(j, "choices");
    assert_int_equal(cJSON_GetArraySize(ch), 2);
    assert_string_equal(str(cJSON_GetArrayItem(ch, 0), "text"), "a");
    assert_string_equal(str(cJSON_GetArrayItem(ch, 0), "finish_reason"), "length");
    assert_string_equal(str(cJSON_GetArrayItem(ch, 1), "text"), "b\xef\xbf\xbd"); /* U+FFFD */
    assert_string_equal(str(cJSON_GetArrayItem(ch, 1), "finish_reason"), "abort");
    assert_true(num(cJSON_GetArrayItem(ch, 1), "index") == 1);
    assert_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(ch, 0), "message"));
    assert_true(num(get(j, "usage"), "total_tokens") == 0);
    cJSON_Delete(j);
}

static void test_chunks(void **st)
{
    /* chat: the first chunk carries the role (and content, maybe empty) */
    oai_choice c = {.index = 0, .text = "", .text_len = 0, .first = true};
    jsonw_reset(&W);
    oai_write_chunk(&W, &CHAT, &c, 1);
    cJSON *j = event(W.p);
    assert_string_equal(str(j, "object"), "chat.completion.chunk");
    assert_string_equal(str(j, "id"), "chatcmpl-abc");
    const cJSON *c0 = cJSON_GetArrayItem(get(j, "choices"), 0);
    const cJSON *d = get(c0, "delta");
    assert_string_equal(str(d, "role"), "assistant");
    assert_string_equal(str(d, "content"), "");
    assert_true(cJSON_IsNull(get(c0, "finish_reason")));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "usage")); /* not asked for */
    cJSON_Delete(j);
    /* a content delta: no role */
    c = (oai_choice){.index = 0, .text = "tok\n", .text_len = 4};
    jsonw_reset(&W);
    oai_write_chunk(&W, &CHAT, &c, 1);
    j = event(W.p);
    d = get(cJSON_GetArrayItem(get(j, "choices"), 0), "delta");
    assert_null(cJSON_GetObjectItemCaseSensitive(d, "role"));
    assert_string_equal(str(d, "content"), "tok\n");
    cJSON_Delete(j);
    /* the finish chunk: empty delta, finish_reason; with include_usage every chunk has usage: null */
    oai_resp r = CHAT;
    r.include_usage = true;
    c = (oai_choice){.index = 0, .finish = OAI_FINISH_LENGTH};
    jsonw_reset(&W);
    oai_write_chunk(&W, &r, &c, 1);
    j = event(W.p);
    c0 = cJSON_GetArrayItem(get(j, "choices"), 0);
    assert_null(get(c0, "delta")->child);
    assert_string_equal(str(c0, "finish_reason"), "length");
    assert_true(cJSON_IsNull(get(j, "usage")));
    cJSON_Delete(j);
    /* the usage chunk: empty choices */
    oai_usage u = {5, 9};
    jsonw_reset(&W);
    oai_write_usage_chunk(&W, &r, &u);
    j = event(W.p);
    assert_int_equal(cJSON_GetArraySize(get(j, "choices")), 0);
    assert_true(num(get(j, "usage"), "total_tokens") == 14);
    assert_string_equal(str(j, "object"), "chat.completion.chunk");
    cJSON_Delete(j);
    /* completions chunk */
    c = (oai_choice){.index = 2, .text = " word", .text_len = 5};
    jsonw_reset(&W);
    oai_write_chunk(&W, &CMPL, &c, 1);
    j = event(W.p);
    assert_string_equal(str(j, "object"), "text_completion");
    c0 = cJSON_GetArrayItem(get(j, "choices"), 0);
    assert_string_equal(str(c0, "text"), " word");
    assert_true(num(c0, "index") == 2);
    assert_true(cJSON_IsNull(get(c0, "logprobs")));
    cJSON_Delete(j);
    /* several events appended to one buffer frame exactly */
    jsonw_reset(&W);
    oai_write_chunk(&W, &CMPL, &c, 1);
    oai_write_chunk(&W, &CMPL, &c, 1);
    oai_write_done(&W);
    const char *second = strstr(W.p, "\n\ndata: {") + 2;
    assert_non_null(second);
    const char *done = strstr(second, "\n\ndata: [DONE]\n\n");
    assert_non_null(done);
    assert_int_equal((size_t)(done - W.p) + 16, W.len);
}

static const oai_top_logprob TOP0[] = {{"Hello", 5, -0.25f}, {"Hi", 2, -1.5f}, {"\xe6", 1, -INFINITY}};
static const oai_top_logprob TOP1[] = {{"!", 1, -0.5f}};

static void test_logprobs(void **st)
{
    oai_token_logprob lp[] = {{"Hello", 5, -0.25f, TOP0, 3, true}, {"\xe6", 1, -3.0f, TOP1, 1, false},
                              {"!", 1, -INFINITY, NULL, 0, false}};
    oai_choice c = {.index = 0, .text = "Hello!", .text_len = 6, .finish = OAI_FINISH_STOP, .has_logprobs = true,
                    .logprobs = lp, .n_logprobs = 3};
    jsonw_reset(&W);
    oai_write_response(&W, &CHAT, &c, 1, &(oai_usage){1, 3});
    cJSON *j = read_back(W.p, W.len);
    const cJSON *l = get(cJSON_GetArrayItem(get(j, "choices"), 0), "logprobs");
    const cJSON *content = get(l, "content");
    assert_int_equal(cJSON_GetArraySize(content), 3);
    assert_true(cJSON_IsNull(get(l, "refusal")));
    const cJSON *e0 = cJSON_GetArrayItem(content, 0);
    assert_string_equal(str(e0, "token"), "Hello");
    assert_true(num(e0, "logprob") == -0.25);
    const cJSON *b = get(e0, "bytes");
    assert_int_equal(cJSON_GetArraySize(b), 5);
    assert_true(cJSON_GetArrayItem(b, 0)->valuedouble == 'H');
    const cJSON *tops = get(e0, "top_logprobs");
    assert_int_equal(cJSON_GetArraySize(tops), 3);
    assert_string_equal(str(cJSON_GetArrayItem(tops, 1), "token"), "Hi");
    assert_true(num(cJSON_GetArrayItem(tops, 2), "logprob") == -9999.0);
    assert_true(cJSON_GetArrayItem(get(cJSON_GetArrayItem(tops, 2), "bytes"), 0)->valuedouble == 0xe6);
    /* a token that is part of a UTF-8 character: the text shows U+FFFD, the bytes are exact */
    const cJSON *e1 = cJSON_GetArrayItem(content, 1);
    assert_string_equal(str(e1, "token"), "\xef\xbf\xbd");
    assert_int_equal(cJSON_GetArraySize(get(e1, "bytes")), 1);
    assert_true(cJSON_GetArrayItem(get(e1, "bytes"), 0)->valuedouble == 0xe6);
    assert_true(num(cJSON_GetArrayItem(content, 2), "logprob") == -9999.0);
    assert_int_equal(cJSON_GetArraySize(get(cJSON_GetArrayItem(content, 2), "top_logprobs")), 0);
    cJSON_Delete(j);

    /* completions: parallel arrays, top_logprobs as dicts, text_offset from the echo offset */
    c.text_offset = 10;
    jsonw_reset(&W);
    oai_write_response(&W, &CMPL, &c, 1, NULL);
    j = read_back(W.p, W.len);
    l = get(cJSON_GetArrayItem(get(j, "choices"), 0), "logprobs");
    const cJSON *toks = get(l, "tokens"), *tlp = get(l, "token_logprobs"), *tl = get(l, "top_logprobs"),
                *off = get(l, "text_offset");
    assert_int_equal(cJSON_GetArraySize(toks), 3);
    assert_string_equal(cJSON_GetArrayItem(toks, 0)->valuestring, "Hello");
    assert_true(cJSON_GetArrayItem(tlp, 1)->valuedouble == -3.0);
    assert_true(cJSON_GetArrayItem(tlp, 2)->valuedouble == -9999.0);
    const cJSON *d0 = cJSON_GetArrayItem(tl, 0);
    assert_true(num(d0, "Hello") == -0.25);
    assert_true(num(d0, "Hi") == -1.5);
    assert_true(num(d0, "\xef\xbf\xbd") == -9999.0);
    assert_int_equal(cJSON_GetArraySize(d0), 3); /* the chosen token is one of them: listed once */
    assert_true(num(cJSON_GetArrayItem(tl, 1), "!") == -0.5);
    assert_true(num(cJSON_GetArrayItem(tl, 1), "\xef\xbf\xbd") == -3.0); /* the chosen one joins them */
    assert_int_equal(cJSON_GetArraySize(cJSON_GetArrayItem(tl, 2)), 1); /* no alternatives: the chosen one */
    assert_true(num(cJSON_GetArrayItem(tl, 2), "!") == -9999.0);
    assert_true(cJSON_GetArrayItem(off, 0)->valuedouble == 10);
    assert_true(cJSON_GetArrayItem(off, 1)->valuedouble == 15);
    assert_true(cJSON_GetArrayItem(off, 2)->valuedouble == 16);
    cJSON_Delete(j);

    /* in a stream chunk too */
    c.n_logprobs = 1;
    jsonw_reset(&W);
    oai_write_chunk(&W, &CHAT, &c, 1);
    j = event(W.p);
    l = get(cJSON_GetArrayItem(get(j, "choices"), 0), "logprobs");
    assert_int_equal(cJSON_GetArraySize(get(l, "content")), 1);
    cJSON_Delete(j);
}

/* text_offset counts characters as JSON shows them; oai_lpbuf keeps copies of the token bytes */
static void test_logprob_offsets(void **st)
{
    (void)st;
    assert_int_equal(oai_text_chars("abc", 3), 3);
    assert_int_equal(oai_text_chars("\xc3\xa9t\xc3\xa9", 5), 3);       /* "\u00e9t\u00e9" */
    assert_int_equal(oai_text_chars("\xf0\x9f\x98\x80", 4), 1);        /* one emoji */
    assert_int_equal(oai_text_chars("\xe2\x80", 2), 2);                /* half a character: two U+FFFD */
    assert_int_equal(oai_text_chars("a\xff" "b", 3), 3);
    assert_int_equal(oai_text_chars("", 0), 0);

    oai_lpbuf b = {0};
    char tok[8] = "caf";
    assert_true(oai_lpbuf_add(&b, tok, 3, -0.5f, true));
    assert_true(oai_lpbuf_add_top(&b, tok, 3, -0.5f));
    strcpy(tok, "xx");                                              /* the buffer keeps its own copy */
    assert_true(oai_lpbuf_add_top(&b, "\xc3", 1, -1.0f));
    assert_true(oai_lpbuf_add(&b, "\xc3\xa9!", 3, -2.0f, false));
    for (int i = 0; i < 100; i++) /* growth moves the strings; view() points at them again */
        assert_true(oai_lpbuf_add(&b, "z", 1, -3.0f, false));
    assert_int_equal(b.n, 102);
    assert_int_equal(b.chars, 3 + 2 + 100);
    const oai_token_logprob *v = oai_lpbuf_view(&b);
    assert_memory_equal(v[0].token, "caf", 3);
    assert_int_equal(v[0].n_top, 2);
    assert_memory_equal(v[0].top[0].token, "caf", 3);
    assert_int_equal(v[0].top[1].token_len, 1);
    assert_true(v[0].top[1].logprob == -1.0f);
    assert_int_equal(v[1].n_top, 0);
    assert_null(v[1].top);
    assert_memory_equal(v[1].token, "\xc3\xa9!", 3);
    assert_memory_equal(v[101].token, "z", 1);
    oai_choice c = {.index = 0, .text = "caf\xc3\xa9!", .text_len = 6, .has_logprobs = true, .logprobs = v,
                    .n_logprobs = 3, .text_offset = 4};
    jsonw_reset(&W);
    oai_write_response(&W, &CMPL, &c, 1, NULL);
    cJSON *j = read_back(W.p, W.len);
    const cJSON *off = get(get(cJSON_GetArrayItem(get(j, "choices"), 0), "logprobs"), "text_offset");
    assert_true(cJSON_GetArrayItem(off, 0)->valuedouble == 4);
    assert_true(cJSON_GetArrayItem(off, 1)->valuedouble == 7);
    assert_true(cJSON_GetArrayItem(off, 2)->valuedouble == 9); /* "\u00e9!" is two characters */
    cJSON_Delete(j);
    oai_lpbuf_clear(&b);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.chars, 0);
    assert_false(oai_lpbuf_add_top(&b, "a", 1, 0.0f)); /* no entry to add it to */
    oai_lpbuf_free(&b);
    assert_null(b.tok);
    char idb[32];
    assert_int_equal(oai_token_id_str(1234, idb, sizeof idb), 13);
    assert_string_equal(idb, "token_id:1234");
}

static void test_error_bodies(void **st)
{
    oai_error e;
    oai_fail(&e, 400, "invalid_request_error", "messages[0].role", "invalid_value", "Invalid value: '%s'.", "r\"x");
    jsonw_reset(&W);
    oai_write_error(&W, &e);
    cJSON *j = read_back(W.p, W.len);
    const cJSON *er = get(j, "error");
    assert_string_equal(str(er, "message"), "Invalid value: 'r\"x'.");
    assert_string_equal(str(er, "type"), "invalid_request_error");
    assert_string_equal(str(er, "param"), "messages[0].role");
    assert_string_equal(str(er, "code"), "invalid_value");
    assert_int_equal(cJSON_GetArraySize(j), 1);
    assert_int_equal(cJSON_GetArraySize(er), 4);
    cJSON_Delete(j);
    oai_fail(&e, 500, "server_error", NULL, NULL, "boom");
    jsonw_reset(&W);
    oai_write_error_event(&W, &e);
    j = event(W.p);
    er = get(j, "error");
    assert_true(cJSON_IsNull(get(er, "param")));
    assert_true(cJSON_IsNull(get(er, "code")));
    cJSON_Delete(j);
}

static void test_misc_bodies(void **st)
{
    jsonw_reset(&W);
    oai_write_models(&W, "gemma-2b-it", 1700000000, 8192);
    cJSON *j = read_back(W.p, W.len);
    assert_string_equal(str(j, "object"), "list");
    const cJSON *m = cJSON_GetArrayItem(get(j, "data"), 0);
    assert_string_equal(str(m, "id"), "gemma-2b-it");
    assert_string_equal(str(m, "object"), "model");
    assert_string_equal(str(m, "owned_by"), "gemmad");
    assert_true(num(m, "max_model_len") == 8192);
    cJSON_Delete(j);

    int32_t ids[] = {2, 651, 6037};
    jsonw_reset(&W);
    oai_write_tokenize(&W, ids, 3, 8192);
    j = read_back(W.p, W.len);
    assert_true(num(j, "count") == 3);
    assert_true(num(j, "max_model_len") == 8192);
    assert_true(cJSON_GetArrayItem(get(j, "tokens"), 2)->valuedouble == 6037);
    cJSON_Delete(j);
    jsonw_reset(&W);
    oai_write_tokenize(&W, NULL, 0, 8192);
    j = read_back(W.p, W.len);
    assert_int_equal(cJSON_GetArraySize(get(j, "tokens")), 0);
    cJSON_Delete(j);

    jsonw_reset(&W);
    oai_write_detokenize(&W, "caf\xc3\xa9\x01", 6);
    j = read_back(W.p, W.len);
    assert_string_equal(str(j, "prompt"), "caf\xc3\xa9\x01");
    cJSON_Delete(j);

    char a[48], b[48];
    oai_make_id(a, sizeof a, OAI_CHAT, 1);
    oai_make_id(b, sizeof b, OAI_CHAT, 2);
    assert_true(strncmp(a, "chatcmpl-", 9) == 0);
    assert_int_equal(strlen(a), 9 + 24);
    assert_string_not_equal(a, b);
    oai_make_id(a, sizeof a, OAI_COMPLETIONS, 1);
    assert_true(strncmp(a, "cmpl-", 5) == 0);
    assert_int_equal(strlen(a), 5 + 24);
    jsonw_free(&W);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_response_bodies), cmocka_unit_test(test_chunks),  cmocka_unit_test(test_logprobs), cmocka_unit_test(test_logprob_offsets),
        cmocka_unit_test(test_error_bodies),    cmocka_unit_test(test_misc_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
