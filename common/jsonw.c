/* jsonw.c - growable buffer and streaming JSON writer. */
#include "common/jsonw.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jsonw_reset(jsonw *w)
{
    w->len = 0;
    if (w->p)
        w->p[0] = '\0';
    w->oom = false;
    w->depth = 0;
    w->after_key = false;
    w->n_items[0] = 0;
}

void jsonw_free(jsonw *w)
{
    free(w->p);
    memset(w, 0, sizeof(*w));
}

bool jsonw_ok(const jsonw *w)
{
    return !w->oom;
}

bool jsonw_reserve(jsonw *w, size_t n)
{
    if (w->oom)
        return false;
    if (w->len + n + 1 <= w->cap)
        return true;
    if (n > SIZE_MAX / 4 - w->len) {
        w->oom = true;
        return false;
    }
    size_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + n + 1)
        cap *= 2;
    char *p = realloc(w->p, cap);
    if (!p) {
        w->oom = true;
        return false;
    }
    w->p = p;
    w->cap = cap;
    return true;
}

void jsonw_raw(jsonw *w, const void *s, size_t n)
{
    if (!jsonw_reserve(w, n))
        return;
    if (n)
        memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
}

void jsonw_rawz(jsonw *w, const char *s)
{
    jsonw_raw(w, s, strlen(s));
}

void jsonw_printf(jsonw *w, const char *fmt, ...)
{
    if (w->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    size_t room = w->cap > w->len ? w->cap - w->len : 0;
    int n = vsnprintf(room ? w->p + w->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        w->oom = true;
        return;
    }
    if ((size_t)n >= room) {
        if (!jsonw_reserve(w, (size_t)n))
            return;
        va_start(ap, fmt);
        vsnprintf(w->p + w->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    w->len += (size_t)n;
}

/* Comma before a value (or key) unless it is the first at its depth or follows a key. */
static void sep(jsonw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0 && w->n_items[w->depth]++ > 0)
        jsonw_raw(w, ",", 1);
}

static void open_(jsonw *w, char c)
{
    sep(w);
    jsonw_raw(w, &c, 1);
    assert(w->depth < JSONW_MAX_DEPTH);
    if (w->depth < JSONW_MAX_DEPTH)
        w->n_items[++w->depth] = 0;
}

static void close_(jsonw *w, char c)
{
    jsonw_raw(w, &c, 1);
    assert(w->depth > 0);
    if (w->depth > 0)
        w->depth--;
}

void jsonw_obj_begin(jsonw *w) { open_(w, '{'); }
void jsonw_obj_end(jsonw *w) { close_(w, '}'); }
void jsonw_arr_begin(jsonw *w) { open_(w, '['); }
void jsonw_arr_end(jsonw *w) { close_(w, ']'); }

void jsonw_keyn(jsonw *w, const char *k, size_t n)
{
    sep(w);
    jsonw_raw(w, "\"", 1);
    jsonw_escape(w, k, n);
    jsonw_raw(w, "\":", 2);
    w->after_key = true;
}

void jsonw_key(jsonw *w, const char *k)
{
    jsonw_keyn(w, k, strlen(k));
}

/* Bytes of the UTF-8 character at s[0..n), or 0 when it is not a valid one. */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F)) /* overlong, surrogate */
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F)) /* overlong, > U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

size_t jsonw_utf8_valid_prefix(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_char_len(u + i, n - i);
        if (!k)
            break;
        i += k;
    }
    return i;
}

void jsonw_escape(jsonw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0; /* start of the pending run of bytes copied as they are */
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        size_t k = c >= 0x80 ? utf8_char_len(u + i, n - i) : 0;
        if (k > 1) { /* a valid multi-byte character goes out as it is */
            i += k;
            continue;
        }
        jsonw_raw(w, s + run, i - run);
        char e[8];
        size_t el = 2;
        e[0] = '\\';
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        default:
            if (c < 0x20) {
                memcpy(e, "\\u00", 4);
                e[4] = hex[c >> 4];
                e[5] = hex[c & 15];
                el = 6;
            } else { /* an invalid UTF-8 byte: U+FFFD */
                memcpy(e, "\xEF\xBF\xBD", 3);
                el = 3;
            }
        }
        jsonw_raw(w, e, el);
        i++;
        run = i;
    }
    jsonw_raw(w, s + run, n - run);
}

void jsonw_strn(jsonw *w, const char *s, size_t n)
{
    sep(w);
    if (!jsonw_reserve(w, n + 2))
        return;
    jsonw_raw(w, "\"", 1);
    jsonw_escape(w, s, n);
    jsonw_raw(w, "\"", 1);
}

void jsonw_str(jsonw *w, const char *s)
{
    if (!s)
        jsonw_null(w);
    else
        jsonw_strn(w, s, strlen(s));
}

/* Decimal digits of v, without printf (a chunk per token writes several integers). */
static void put_u64(jsonw *w, uint64_t v, bool neg)
{
    char buf[24];
    size_t i = sizeof buf;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        buf[--i] = '-';
    jsonw_raw(w, buf + i, sizeof buf - i);
}

void jsonw_int(jsonw *w, int64_t v)
{
    sep(w);
    put_u64(w, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0);
}

void jsonw_uint(jsonw *w, uint64_t v)
{
    sep(w);
    put_u64(w, v, false);
}

void jsonw_num(jsonw *w, double v)
{
    if (!isfinite(v)) {
        jsonw_null(w);
        return;
    }
    sep(w);
    char b[32];
    snprintf(b, sizeof b, "%.15g", v);
    if (strtod(b, NULL) != v) /* 15 digits did not round-trip: take 17 */
        snprintf(b, sizeof b, "%.17g", v);
    jsonw_rawz(w, b);
}

void jsonw_bool(jsonw *w, bool v)
{
    sep(w);
    jsonw_raw(w, v ? "true" : "false", v ? 4 : 5);
}

void jsonw_null(jsonw *w)
{
    sep(w);
    jsonw_raw(w, "null", 4);
}
