/* wire.h - hand-written protobuf encoders for the two messages gemmad sends at
 * every step: the StepPlan to the workers (proto/control.proto) and the
 * ServerMessage of stream chunks to each client (proto/gemma.proto).
 *
 * They take the same protobuf-c structs as the generated pack functions and
 * write the same bytes (fields in number order, proto3 zero values left out,
 * repeated scalars packed), in two straight passes instead of protobuf-c's
 * reflective get_packed_size + pack; tests/test_daemon_config.c checks them
 * byte for byte against protobuf-c. Everything else keeps using protobuf-c. */
#ifndef GM_WIRE_H
#define GM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/control.pb-c.h"
#include "proto/gemma.pb-c.h"

/* A ControlMessage whose body is a plan: its size, and its bytes into out
 * (size = wire_plan_size(m) bytes); returns the bytes written. */
size_t wire_plan_size(const Gemma__Control__V1__ControlMessage *m);
size_t wire_plan_pack(const Gemma__Control__V1__ControlMessage *m, size_t size, uint8_t *out);

/* A ServerMessage with chunks and no body (body_case NOT_SET). */
size_t wire_chunks_size(const Gemma__V1__ServerMessage *m);
size_t wire_chunks_pack(const Gemma__V1__ServerMessage *m, uint8_t *out);

#endif
