/* utf8.c - UTF-8 validation, clipping on character boundaries, and repair with U+FFFD. */
#include "common/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */
#define UTF8_FORMAT_STACK 1024          /* formatted text up to this size needs no malloc */

/* The sequence at s[0..n) (n >= 1): its length (1..4) when valid, else minus the
 * length of its maximal invalid subpart (-1..-3). *short_input is set when the
 * sequence was valid so far but s ended before it did. */
static int utf8_seq(const unsigned char *s, size_t n, bool *short_input)
{
    unsigned c = s[0];
    *short_input = false;
    if (c < 0x80)
        return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF; /* the second byte's range (RFC 3629 table) */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        return -1; /* a continuation byte, C0, C1 or F5..FF */
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) {
            *short_input = true;
            return -i;
        }
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return -i;
    }
    return len;
}

bool gm_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    bool short_input;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) { /* ASCII runs are the common case */
            i++;
            continue;
        }
        int k = utf8_seq(u + i, n - i, &short_input);
        if (k < 0)
            return false;
        i += (size_t)k;
    }
    return true;
}

size_t gm_utf8_clip(const char *s, size_t n, size_t max)
{
    if (max >= n)
        return n;
    const unsigned char *u = (const unsigned char *)s;
    size_t j = max;
    while (j > 0 && max - j < 3 && (u[j] & 0xC0) == 0x80)
        j--; /* back to the byte that may start the character holding s[max] */
    bool short_input;
    int k = utf8_seq(u + j, n - j, &short_input);
    return k > 0 && j + (size_t)k > max ? j : max;
}

/* gm_utf8_copy's body; cut_tail drops an unfinished character at the end of src
 * (src was itself truncated) instead of replacing it. */
static size_t utf8_copy(char *dst, size_t cap, const char *src, size_t n, bool cut_tail)
{
    if (cap == 0)
        return 0;
    const unsigned char *u = (const unsigned char *)src;
    size_t o = 0;
    bool short_input;
    for (size_t i = 0; i < n;) {
        int k = u[i] < 0x80 ? 1 : utf8_seq(u + i, n - i, &short_input);
        if (k < 0 && short_input && cut_tail)
            break;
        const char *piece = k > 0 ? src + i : UTF8_REPLACEMENT;
        size_t len = k > 0 ? (size_t)k : sizeof(UTF8_REPLACEMENT) - 1;
        if (o + len > cap - 1)
            break;
        memcpy(dst + o, piece, len);
        o += len;
        i += (size_t)(k > 0 ? k : -k);
    }
    dst[o] = 0;
    return o;
}

size_t gm_utf8_copy(char *dst, size_t cap, const char *src, size_t n)
{
    return utf8_copy(dst, cap, src, n, false);
}

size_t gm_utf8_vformat(char *dst, size_t cap, const char *fmt, va_list ap)
{
    if (cap == 0)
        return 0;
    char small[UTF8_FORMAT_STACK];
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    const char *text = small;
    char *big = NULL;
    bool truncated = false;
    if (n < 0) {
        n = 0;
        small[0] = 0;
    } else if ((size_t)n >= sizeof(small)) {
        big = malloc((size_t)n + 1);
        if (big && vsnprintf(big, (size_t)n + 1, fmt, again) == n) {
            text = big;
        } else {
            n = (int)sizeof(small) - 1; /* keep what fitted, without a half character at its end */
            truncated = true;
        }
    }
    va_end(again);
    size_t w = utf8_copy(dst, cap, text, (size_t)n, truncated);
    free(big);
    return w;
}

size_t gm_utf8_format(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t w = gm_utf8_vformat(dst, cap, fmt, ap);
    va_end(ap);
    return w;
}
