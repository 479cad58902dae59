/* plan.h - the step plan on the wire: one encoder (gemmad) and one decoder (gemma-worker).
 *
 * The plan is the one control message sent at every step; both ends handle it
 * by hand, in straight passes, instead of protobuf-c's reflective
 * get_packed_size + pack and unpack. They work on the same protobuf-c structs
 * and are byte-compatible with it (tests/test_ctl.c checks both against it):
 *  - the encoder writes what protobuf-c writes (fields in number order, proto3
 *    zero values left out, repeated scalars packed);
 *  - the decoder takes a buffer that is exactly one plan field and accepts what
 *    any protobuf encoder may write there (packed or unpacked repeated fields,
 *    any field order, a scalar or message field given twice: the last wins, as
 *    protobuf-c decodes it; unknown fields skipped). Anything else (another
 *    message, a wire type it does not expect, a truncated buffer) goes to
 *    protobuf-c, which decodes or rejects it. */
#ifndef GM_CTL_PLAN_H
#define GM_CTL_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "proto/control.pb-c.h"

/* A ControlMessage whose body is a plan: its size, and its bytes into out
 * (size = ctl_plan_size(m) bytes); returns the bytes written. */
size_t ctl_plan_size(const Gemma__Control__V1__ControlMessage *m);
size_t ctl_plan_pack(const Gemma__Control__V1__ControlMessage *m, size_t size, uint8_t *out);

/* Any control message: a plan by hand when a is not NULL, else (or when that
 * does not apply) protobuf-c. NULL when malformed. Allocates from a (NULL =
 * malloc; free with gemma__control__v1__control_message__free_unpacked). With
 * an arena allocator, a failed fast path leaves garbage in it until its reset. */
Gemma__Control__V1__ControlMessage *ctl_msg_unpack(const uint8_t *buf, size_t len, ProtobufCAllocator *a);

/* The hand decoder alone: NULL when buf is not one plan field (tests). a must not be NULL. */
Gemma__Control__V1__ControlMessage *ctl_plan_decode(const uint8_t *buf, size_t len, ProtobufCAllocator *a);

#endif
