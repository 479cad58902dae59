/* test_utf8.c - common/utf8: validation (RFC 3629 edge cases), clipping between characters,
 * repair with U+FFFD, and formatting that never cuts a character (the "%.32s" defect). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

#define FFFD "\xEF\xBF\xBD"

static bool valid(const char *s)
{
    return gm_utf8_valid(s, strlen(s));
}

static void test_valid(void **state)
{
    (void)state;
    assert_true(valid(""));
    assert_true(valid("plain ASCII"));
    assert_true(valid("\xC3\xA9"));                 /* U+00E9 */
    assert_true(valid("\xE2\x82\xAC"));             /* U+20AC */
    assert_true(valid("\xF0\x9F\x98\x80"));         /* U+1F600 */
    assert_true(valid("\xF4\x8F\xBF\xBF"));         /* U+10FFFF, the last one */
    assert_true(valid("\xED\x9F\xBF"));             /* U+D7FF, just below the surrogates */
    assert_false(valid("\xC3"));                    /* cut short */
    assert_false(valid("a\xE2\x82"));               /* cut short */
    assert_false(valid("\x80"));                    /* a continuation alone */
    assert_false(valid("\xC0\xAF"));                /* overlong '/' */
    assert_false(valid("\xE0\x80\xAF"));            /* overlong */
    assert_false(valid("\xF0\x80\x80\xAF"));        /* overlong */
    assert_false(valid("\xED\xA0\x80"));            /* U+D800, a surrogate */
    assert_false(valid("\xF4\x90\x80\x80"));        /* above U+10FFFF */
    assert_false(valid("\xF5\x80\x80\x80"));
    assert_false(valid("\xFF"));
    assert_false(valid("\xC3\x28"));                /* lead byte, then not a continuation */
}

static void test_clip(void **state)
{
    (void)state;
    const char *s = "ab\xC3\xA9" "c\xF0\x9F\x98\x80";  /* a b é c 😀: 9 bytes */
    size_t n = strlen(s);
    assert_int_equal(gm_utf8_clip(s, n, 100), n);
    assert_int_equal(gm_utf8_clip(s, n, 2), 2);
    assert_int_equal(gm_utf8_clip(s, n, 3), 2);       /* inside é */
    assert_int_equal(gm_utf8_clip(s, n, 4), 4);
    assert_int_equal(gm_utf8_clip(s, n, 6), 5);       /* inside 😀 */
    assert_int_equal(gm_utf8_clip(s, n, 8), 5);
    assert_int_equal(gm_utf8_clip(s, n, 0), 0);
    assert_int_equal(gm_utf8_clip("\x80\x80\x80\x80", 4, 2), 2); /* junk is not a character: cut anywhere */
}

static void test_copy(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(gm_utf8_copy(out, sizeof(out), "h\xC3\xA9llo", 6), 6);
    assert_string_equal(out, "h\xC3\xA9llo");
    /* each maximal invalid subpart becomes one U+FFFD */
    gm_utf8_copy(out, sizeof(out), "a\xE2\x82" "b", 4);
    assert_string_equal(out, "a" FFFD "b");
    gm_utf8_copy(out, sizeof(out), "\x80\x80", 2);
    assert_string_equal(out, FFFD FFFD);
    gm_utf8_copy(out, sizeof(out), "\xED\xA0\x80", 3); /* surrogate: E D then A0 is out of range */
    assert_string_equal(out, FFFD FFFD FFFD);
    gm_utf8_copy(out, sizeof(out), "x\xC3", 2);
    assert_string_equal(out, "x" FFFD);
    /* the output is cut before a character that does not fit, never inside one */
    assert_int_equal(gm_utf8_copy(out, 4, "ab\xC3\xA9", 4), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(gm_utf8_copy(out, 5, "ab\xC3\xA9", 4), 4);
    assert_int_equal(gm_utf8_copy(out, 4, "a\xFF", 2), 1); /* U+FFFD needs 3 bytes + NUL */
    assert_string_equal(out, "a");
    assert_int_equal(gm_utf8_copy(out, 1, "abc", 3), 0);
    assert_string_equal(out, "");
    assert_int_equal(gm_utf8_copy(out, 0, "abc", 3), 0);
    /* whatever the input, the output is valid */
    unsigned seed = 14;
    for (int t = 0; t < 20000; t++) {
        char in[16];
        size_t n = (size_t)(rand_r(&seed) % 16);
        for (size_t i = 0; i < n; i++)
            in[i] = (char)(1 + rand_r(&seed) % 255); /* no NUL: the output is a C string */
        size_t cap = 1 + (size_t)(rand_r(&seed) % 40);
        size_t w = gm_utf8_copy(out, cap, in, n);
        assert_true(w < cap);
        assert_int_equal(strlen(out), w);
        assert_true(gm_utf8_valid(out, w));
    }
}

static void test_format(void **state)
{
    (void)state;
    /* the reproducer: role = 31 x "a" + "é", echoed with "%.32s" cuts the é in half */
    char role[40];
    memset(role, 'a', 31);
    memcpy(role + 31, "\xC3\xA9", 3);
    char out[128];
    gm_utf8_format(out, sizeof(out), "unknown role \"%.32s\"", role);
    assert_true(valid(out));
    assert_string_equal(out + strlen(out) - 4, FFFD "\"");
    /* a buffer that ends inside a character */
    char small[16];
    gm_utf8_format(small, sizeof(small), "%s", "0123456789abc\xE2\x82\xAC");
    assert_true(valid(small));
    assert_string_equal(small, "0123456789abc");
    /* long output (beyond the stack scratch) still comes out whole and valid */
    size_t big = 5000;
    char *text = malloc(big + 1), *dst = malloc(big + 16);
    for (size_t i = 0; i < big; i += 2)
        memcpy(text + i, "\xC3\xA9", 2);
    text[big] = 0;
    assert_int_equal(gm_utf8_format(dst, big + 16, "[%s]", text), big + 2);
    assert_true(valid(dst));
    assert_int_equal(gm_utf8_format(dst, 1001, "%s", text), 1000);
    free(text);
    free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
