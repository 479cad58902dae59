/* pbscan.c - a minimal protobuf reader for pbscan_find_nul (pbscan.h); field numbers from
 * proto/gemma.proto: ClientMessage.generate 10; GenerateRequest.text 1, .chat 3, .stop 6;
 * ChatPrompt.messages 1; ChatMessage.role 1, .text 2. */
#include "common/pbscan.h"

#include <stdio.h>
#include <string.h>

typedef struct pb_rd {
    const uint8_t *p, *end;
} pb_rd;

static bool rd_varint(pb_rd *r, uint64_t *v)
{
    *v = 0;
    for (int sh = 0; sh < 64 && r->p < r->end; sh += 7) {
        uint8_t b = *r->p++;
        *v |= (uint64_t)(b & 0x7f) << sh;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* The next field: its number, and for a LEN field its bytes (*data, *len); false at the end or when
 * malformed (protobuf-c has judged the frame already; whatever it accepted is scanned). */
static bool rd_field(pb_rd *r, uint32_t *field, const uint8_t **data, size_t *len)
{
    uint64_t key, v;
    if (r->p >= r->end || !rd_varint(r, &key))
        return false;
    *field = (uint32_t)(key >> 3);
    *data = NULL;
    *len = 0;
    switch (key & 7) {
    case 0:
        return rd_varint(r, &v);
    case 1:
        if (r->end - r->p < 8)
            return false;
        r->p += 8;
        return true;
    case 5:
        if (r->end - r->p < 4)
            return false;
        r->p += 4;
        return true;
    case 2:
        if (!rd_varint(r, &v) || v > (uint64_t)(r->end - r->p))
            return false;
        *data = r->p;
        *len = (size_t)v;
        r->p += v;
        return true;
    default:
        return false;
    }
}

bool pbscan_find_nul(const uint8_t *frame, size_t n, char *why, size_t cap)
{
    pb_rd cm = {frame, frame + n};
    uint32_t f;
    const uint8_t *d;
    size_t l;
    while (rd_field(&cm, &f, &d, &l)) {
        if (f != 10 || !d) /* ClientMessage.generate */
            continue;
        pb_rd g = {d, d + l};
        int n_stop = 0, n_msg = 0;
        while (rd_field(&g, &f, &d, &l)) {
            const uint8_t *z = d ? memchr(d, 0, l) : NULL;
            if (f == 1 && z) {
                snprintf(why, cap, "the prompt has a NUL byte at position %zu", (size_t)(z - d));
                return true;
            }
            if (f == 6 && d && z) {
                snprintf(why, cap, "stop string %d has a NUL byte at position %zu", n_stop, (size_t)(z - d));
                return true;
            }
            n_stop += f == 6;
            if (f != 3 || !d) /* GenerateRequest.chat */
                continue;
            pb_rd c = {d, d + l};
            while (rd_field(&c, &f, &d, &l)) {
                if (f != 1 || !d) /* ChatPrompt.messages */
                    continue;
                pb_rd m = {d, d + l};
                while (rd_field(&m, &f, &d, &l)) {
                    z = d ? memchr(d, 0, l) : NULL;
                    if ((f == 1 || f == 2) && z) {
                        snprintf(why, cap, "chat message %d's %s has a NUL byte at position %zu", n_msg,
                                 f == 1 ? "role" : "text", (size_t)(z - d));
                        return true;
                    }
                }
                n_msg++;
            }
        }
    }
    return false;
}

