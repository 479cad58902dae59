/* gguf_build.h - write GGUF images byte by byte for the tests (valid ones, and broken ones by
 * writing whatever field is asked for). Header-only; every function appends to a gb buffer.
 *
 *   gb b = {0};
 *   gb_header(&b, 3, n_tensors, n_kv);
 *   gb_kv_str(&b, "general.architecture", "gemma3");
 *   gb_tensor(&b, "x", 2, (uint64_t[]){32, 2}, GGUF_TYPE_Q8_0, 0);
 *   gb_align(&b, 32);  then the data: gb_put(&b, bytes, n) ... ; free(b.p) */
#ifndef GM_TEST_GGUF_BUILD_H
#define GM_TEST_GGUF_BUILD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"

typedef struct gb {
    uint8_t *p;
    size_t len, cap;
} gb;

static inline void gb_put(gb *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n)
            nc *= 2;
        uint8_t *np = (uint8_t *)realloc(b->p, nc);
        if (!np)
            abort();
        b->p = np;
        b->cap = nc;
    }
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
}

static inline void gb_le(gb *b, uint64_t v, int n)
{
    uint8_t x[8];
    for (int i = 0; i < n; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    gb_put(b, x, (size_t)n);
}

static inline uint64_t align_up_u64(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static inline void gb_u32(gb *b, uint32_t v) { gb_le(b, v, 4); }
static inline void gb_u64(gb *b, uint64_t v) { gb_le(b, v, 8); }

static inline void gb_f32(gb *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    gb_u32(b, u);
}

static inline void gb_str(gb *b, const char *s)
{
    gb_u64(b, strlen(s));
    gb_put(b, s, strlen(s));
}

static inline void gb_header(gb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gb_put(b, "GGUF", 4);
    gb_u32(b, version);
    gb_u64(b, n_tensors);
    gb_u64(b, n_kv);
}

static inline void gb_kv_u32(gb *b, const char *key, uint32_t v)
{
    gb_str(b, key);
    gb_u32(b, GGUF_VT_U32);
    gb_u32(b, v);
}

static inline void gb_kv_f32(gb *b, const char *key, float v)
{
    gb_str(b, key);
    gb_u32(b, GGUF_VT_F32);
    gb_f32(b, v);
}

static inline void gb_kv_bool(gb *b, const char *key, int v)
{
    gb_str(b, key);
    gb_u32(b, GGUF_VT_BOOL);
    uint8_t x = (uint8_t)v;
    gb_put(b, &x, 1);
}

static inline void gb_kv_str(gb *b, const char *key, const char *v)
{
    gb_str(b, key);
    gb_u32(b, GGUF_VT_STRING);
    gb_str(b, v);
}

/* An array header; the caller appends n elements of type elem. */
static inline void gb_kv_arr(gb *b, const char *key, gguf_vtype elem, uint64_t n)
{
    gb_str(b, key);
    gb_u32(b, GGUF_VT_ARRAY);
    gb_u32(b, elem);
    gb_u64(b, n);
}

static inline void gb_tensor(gb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                             uint64_t offset)
{
    gb_str(b, name);
    gb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++)
        gb_u64(b, ne[i]);
    gb_u32(b, type);
    gb_u64(b, offset);
}

/* Zero-pad to a multiple of align. */
static inline void gb_align(gb *b, size_t align)
{
    static const uint8_t z[64];
    while (b->len % align)
        gb_put(b, z, 1);
}

#endif
