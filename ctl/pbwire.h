/* pbwire.h - protobuf wire-format primitives for the hand-written codecs
 * (ctl/plan.c: the StepPlan; daemon/wire.c: the client's stream chunks).
 *
 * Writers leave proto3 zero values out and write fields in the order they are
 * called, so a codec that calls them in field-number order writes the same
 * bytes as protobuf-c. Little-endian hosts only (x86-64, aarch64). */
#ifndef GM_CTL_PBWIRE_H
#define GM_CTL_PBWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { PB_VARINT = 0, PB_I64 = 1, PB_LEN = 2, PB_I32 = 5 };

static inline size_t pb_vlen(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *pb_vput(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* int32 and enums are sign-extended to 64 bits (a negative value takes 10 bytes) */
static inline uint64_t pb_i32v(int32_t v) { return (uint64_t)(int64_t)v; }
/* sint32: zigzag */
static inline uint32_t pb_zz32(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }

/* tag of field f (every field number used here is < 16: one byte) */
#define PB_TAG(f, wt) ((uint8_t)(((f) << 3) | (wt)))

/* size of a varint field that is left out when zero */
static inline size_t pb_fv(uint64_t v) { return v ? 1 + pb_vlen(v) : 0; }
static inline uint8_t *pb_pv(uint8_t *p, int f, uint64_t v)
{
    if (!v)
        return p;
    *p++ = PB_TAG(f, PB_VARINT);
    return pb_vput(p, v);
}
/* floats and doubles are left out when they compare equal to 0 (so -0.0 too, as protobuf-c does) */
static inline uint8_t *pb_pf32(uint8_t *p, int f, float v)
{
    if (v == 0.0f)
        return p;
    *p++ = PB_TAG(f, PB_I32);
    memcpy(p, &v, 4);
    return p + 4;
}
static inline uint8_t *pb_pf64(uint8_t *p, int f, double v)
{
    if (v == 0.0)
        return p;
    *p++ = PB_TAG(f, PB_I64);
    memcpy(p, &v, 8);
    return p + 8;
}
/* a LEN field of body bytes: its size, and its tag and length */
static inline size_t pb_flen(size_t body) { return 1 + pb_vlen(body) + body; }
static inline uint8_t *pb_plen(uint8_t *p, int f, size_t body)
{
    *p++ = PB_TAG(f, PB_LEN);
    return pb_vput(p, body);
}

#endif
