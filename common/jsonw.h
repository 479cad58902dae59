/* jsonw.h - a growable byte buffer and a streaming JSON writer on top of it.
 *
 * Made for hot output paths (one server-sent event per generated token) where
 * building a cJSON tree per message costs more than the message. The writer
 * places commas itself, escapes strings so the output is always valid UTF-8
 * JSON (bytes that are not UTF-8 become U+FFFD), and writes non-finite
 * numbers as null. Allocation failure is sticky: every later call is a no-op
 * and jsonw_ok() turns false, so a caller checks once at the end.
 *
 *     jsonw w = {0};
 *     jsonw_obj_begin(&w);
 *     jsonw_key(&w, "text"); jsonw_strn(&w, s, n);
 *     jsonw_obj_end(&w);
 *     if (!jsonw_ok(&w)) ...;  send(w.p, w.len); jsonw_free(&w);
 */
#ifndef GM_JSONW_H
#define GM_JSONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define JSONW_MAX_DEPTH 32

typedef struct jsonw {
    char *p;          /* [len] bytes written, NUL-terminated when len > 0 (owned) */
    size_t len, cap;
    bool oom;         /* an allocation failed: the content is incomplete */
    int32_t depth;    /* open objects/arrays; deeper than JSONW_MAX_DEPTH is a programmer error */
    bool after_key;   /* a key was written, its value comes next */
    uint32_t n_items[JSONW_MAX_DEPTH + 1]; /* values written at each depth (commas) */
} jsonw;

/* Empty the buffer, keep its memory. */
void jsonw_reset(jsonw *w);
/* Free the memory; w is empty and usable afterwards. */
void jsonw_free(jsonw *w);
/* False once an allocation failed. */
bool jsonw_ok(const jsonw *w);
/* Make room for n more bytes; false when out of memory. */
bool jsonw_reserve(jsonw *w, size_t n);

/* Raw bytes, appended verbatim (SSE framing, Prometheus text). No comma logic. */
void jsonw_raw(jsonw *w, const void *s, size_t n);
void jsonw_rawz(jsonw *w, const char *s);
void jsonw_printf(jsonw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Structure. A value at depth 0 gets no comma, so several top-level documents
 * can be written one after another with raw text between them. */
void jsonw_obj_begin(jsonw *w);
void jsonw_obj_end(jsonw *w);
void jsonw_arr_begin(jsonw *w);
void jsonw_arr_end(jsonw *w);
/* An object key (a NUL-terminated ASCII literal in practice; escaped anyway). */
void jsonw_key(jsonw *w, const char *k);
/* A key from any bytes (invalid UTF-8 becomes U+FFFD, as in values). */
void jsonw_keyn(jsonw *w, const char *k, size_t n);

/* Values. */
void jsonw_strn(jsonw *w, const char *s, size_t n); /* any bytes; invalid UTF-8 becomes U+FFFD */
void jsonw_str(jsonw *w, const char *s);             /* NULL writes null */
void jsonw_int(jsonw *w, int64_t v);
void jsonw_uint(jsonw *w, uint64_t v);
void jsonw_num(jsonw *w, double v); /* shortest round-trip form; NaN and +-Inf write null */
void jsonw_bool(jsonw *w, bool v);
void jsonw_null(jsonw *w);

/* Append s[0..n) to w escaped as the inside of a JSON string (no quotes). */
void jsonw_escape(jsonw *w, const char *s, size_t n);

/* Length of the longest prefix of s[0..n) that is valid UTF-8 (complete
 * characters, no overlongs, no surrogates, <= U+10FFFF). */
size_t jsonw_utf8_valid_prefix(const char *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif
