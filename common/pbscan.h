/* pbscan.h - NUL bytes inside the strings of a gemma.v1 ClientMessage, found in its wire form.
 *
 * protobuf-c hands string fields over NUL-terminated, so a NUL inside one would silently cut the
 * prompt there. gemmad and gemma-router scan the frame they received for one before using it. */
#ifndef GM_PBSCAN_H
#define GM_PBSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The first NUL byte in a string of the frame's GenerateRequest (the text, a chat message's role or
 * text, a stop string), described in why (e.g. "the prompt has a NUL byte at position 2"); false
 * when there is none. Only what parses is scanned: a malformed frame is protobuf-c's to refuse. */
bool pbscan_find_nul(const uint8_t *frame, size_t n, char *why, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
