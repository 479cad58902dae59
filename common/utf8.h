/* utf8.h - valid UTF-8 for every string a reply carries.
 *
 * proto3 `string` fields must hold valid UTF-8: Python, Go and Java protobuf
 * reject a whole message when one of them does not. Replies echo text that came
 * from outside (a client's chat role, a replica's error message, a registered
 * replica's name), and a printf precision such as "%.32s" or a full buffer can
 * cut a character in half. Text bound for a reply goes through these helpers:
 * each invalid sequence becomes U+FFFD (one per maximal invalid subpart, as
 * Unicode recommends) and output is cut only between characters. */
#ifndef GM_UTF8_H
#define GM_UTF8_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* True when s[0..n) is valid UTF-8 (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF). */
bool gm_utf8_valid(const char *s, size_t n);

/* The length of the longest prefix of s[0..n), at most max bytes, that does not
 * end inside a valid multi-byte character. */
size_t gm_utf8_clip(const char *s, size_t n, size_t max);

/* Copy src[0..n) into dst[0..cap) as valid UTF-8 with a terminating NUL: invalid
 * sequences become U+FFFD, and the copy stops before the first character that
 * does not fit. Returns the bytes written, NUL excluded. cap 0 writes nothing.
 * dst and src must not overlap. */
size_t gm_utf8_copy(char *dst, size_t cap, const char *src, size_t n);

/* vsnprintf into dst[0..cap), then made valid as by gm_utf8_copy. Returns the
 * bytes written, NUL excluded. */
size_t gm_utf8_vformat(char *dst, size_t cap, const char *fmt, va_list ap);
size_t gm_utf8_format(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
