/* wire.h - a hand-written protobuf encoder for the message gemmad sends each
 * client at every step: the ServerMessage of stream chunks (proto/gemma.proto).
 * (The other per-step message, the StepPlan to the workers, is ctl/plan.h's.)
 *
 * It takes the same protobuf-c structs as the generated pack function and
 * writes the same bytes (fields in number order, proto3 zero values left out,
 * repeated scalars packed), in two straight passes instead of protobuf-c's
 * reflective get_packed_size + pack; tests/test_daemon_config.c checks it
 * byte for byte against protobuf-c. Everything else keeps using protobuf-c. */
#ifndef GM_WIRE_H
#define GM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/gemma.pb-c.h"

/* A ServerMessage with chunks and no body (body_case NOT_SET). */
size_t wire_chunks_size(const Gemma__V1__ServerMessage *m);
size_t wire_chunks_pack(const Gemma__V1__ServerMessage *m, uint8_t *out);

#endif
