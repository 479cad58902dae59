/* wire.c - protobuf encoding of the chunk ServerMessage by hand (see wire.h). */
#include "daemon/wire.h"

#include <string.h>

#include "ctl/pbwire.h"

static size_t usage_body(const Gemma__V1__Usage *u)
{
    return pb_fv(pb_i32v(u->prompt_tokens)) + pb_fv(pb_i32v(u->completion_tokens)) + (u->queue_ms != 0.0 ? 9 : 0) +
           (u->ttft_ms != 0.0 ? 9 : 0) + (u->total_ms != 0.0 ? 9 : 0) + pb_fv(pb_i32v(u->preemptions)) +
           pb_fv(pb_i32v(u->cached_tokens));
}

static size_t ids_body(const Gemma__V1__GenerateChunk *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_token_ids; i++)
        n += pb_vlen(pb_i32v(c->token_ids[i]));
    return n;
}

static size_t str_len(const char *s) { return s ? strlen(s) : 0; }

/* A TokenLogprobs message: its body, and the body of its packed top_ids in *ids_b. */
static size_t lp_body(const Gemma__V1__TokenLogprobs *t, size_t *ids_b)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n_top_ids; i++)
        n += pb_vlen(pb_i32v(t->top_ids[i]));
    *ids_b = n;
    size_t strs = t->token.len ? pb_flen(t->token.len) : 0;
    for (size_t i = 0; i < t->n_top_tokens; i++) /* repeated bytes: every one written, empty ones too */
        strs += pb_flen(t->top_tokens[i].len);
    return (t->logprob != 0.0f ? 5 : 0) + (t->n_top_ids ? pb_flen(n) : 0) +
           (t->n_top_logprobs ? pb_flen(4 * t->n_top_logprobs) : 0) + strs;
}

/* Length-delimited bytes field f (b.len bytes). */
static uint8_t *put_bytes(uint8_t *w, int f, ProtobufCBinaryData b)
{
    w = pb_plen(w, f, b.len);
    if (b.len)
        memcpy(w, b.data, b.len);
    return w + b.len;
}

static size_t lps_size(const Gemma__V1__GenerateChunk *c)
{
    size_t n = 0, ib;
    for (size_t i = 0; i < c->n_logprobs; i++)
        n += pb_flen(lp_body(c->logprobs[i], &ib));
    return n;
}

static uint8_t *lps_pack(const Gemma__V1__GenerateChunk *c, uint8_t *w)
{
    for (size_t i = 0; i < c->n_logprobs; i++) {
        const Gemma__V1__TokenLogprobs *t = c->logprobs[i];
        size_t ib;
        w = pb_plen(w, 8, lp_body(t, &ib));
        w = pb_pf32(w, 1, t->logprob);
        if (t->n_top_ids) {
            w = pb_plen(w, 2, ib);
            for (size_t j = 0; j < t->n_top_ids; j++)
                w = pb_vput(w, pb_i32v(t->top_ids[j]));
        }
        if (t->n_top_logprobs) {
            w = pb_plen(w, 3, 4 * t->n_top_logprobs);
            memcpy(w, t->top_logprobs, 4 * t->n_top_logprobs);
            w += 4 * t->n_top_logprobs;
        }
        if (t->token.len)
            w = put_bytes(w, 4, t->token);
        for (size_t j = 0; j < t->n_top_tokens; j++)
            w = put_bytes(w, 5, t->top_tokens[j]);
    }
    return w;
}

static size_t chunk_body(const Gemma__V1__GenerateChunk *c, size_t *ids_b, size_t *use_b, size_t *msg_l)
{
    *ids_b = ids_body(c);
    *use_b = c->usage ? usage_body(c->usage) : 0;
    *msg_l = str_len(c->error_message);
    return pb_fv(c->request_id) + (c->n_token_ids ? pb_flen(*ids_b) : 0) + (c->text.len ? pb_flen(c->text.len) : 0) +
           pb_fv(pb_i32v((int32_t)c->finish_reason)) + (c->usage ? pb_flen(*use_b) : 0) +
           pb_fv(pb_i32v((int32_t)c->error_code)) + (*msg_l ? pb_flen(*msg_l) : 0) + lps_size(c) +
           pb_fv(pb_i32v(c->index));
}

size_t wire_chunks_size(const Gemma__V1__ServerMessage *m)
{
    size_t n = pb_fv(m->protocol_version), a, b, c;
    for (size_t i = 0; i < m->n_chunks; i++)
        n += pb_flen(chunk_body(m->chunks[i], &a, &b, &c));
    return n;
}

size_t wire_chunks_pack(const Gemma__V1__ServerMessage *m, uint8_t *out)
{
    uint8_t *w = pb_pv(out, 1, m->protocol_version);
    for (size_t i = 0; i < m->n_chunks; i++) {
        const Gemma__V1__GenerateChunk *c = m->chunks[i];
        size_t ib, ub, ml;
        w = pb_plen(w, 2, chunk_body(c, &ib, &ub, &ml));
        w = pb_pv(w, 1, c->request_id);
        if (c->n_token_ids) {
            w = pb_plen(w, 2, ib);
            for (size_t j = 0; j < c->n_token_ids; j++)
                w = pb_vput(w, pb_i32v(c->token_ids[j]));
        }
        if (c->text.len) {
            w = pb_plen(w, 3, c->text.len);
            memcpy(w, c->text.data, c->text.len);
            w += c->text.len;
        }
        w = pb_pv(w, 4, pb_i32v((int32_t)c->finish_reason));
        if (c->usage) {
            const Gemma__V1__Usage *u = c->usage;
            w = pb_plen(w, 5, ub);
            w = pb_pv(w, 1, pb_i32v(u->prompt_tokens));
            w = pb_pv(w, 2, pb_i32v(u->completion_tokens));
            w = pb_pf64(w, 3, u->queue_ms);
            w = pb_pf64(w, 4, u->ttft_ms);
            w = pb_pf64(w, 5, u->total_ms);
            w = pb_pv(w, 6, pb_i32v(u->preemptions));
            w = pb_pv(w, 7, pb_i32v(u->cached_tokens));
        }
        w = pb_pv(w, 6, pb_i32v((int32_t)c->error_code));
        if (ml) {
            w = pb_plen(w, 7, ml);
            memcpy(w, c->error_message, ml);
            w += ml;
        }
        w = lps_pack(c, w);
        w = pb_pv(w, 9, pb_i32v(c->index));
    }
    return (size_t)(w - out);
}
