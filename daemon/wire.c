/* wire.c - protobuf encoding of StepPlan and of the chunk ServerMessage by hand (see wire.h). */
#include "daemon/wire.h"

#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static inline size_t vlen(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *vput(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* int32 and enums are sign-extended to 64 bits (a negative value takes 10 bytes) */
static inline uint64_t i32v(int32_t v) { return (uint64_t)(int64_t)v; }
static inline uint32_t zz32(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }
static inline uint32_t f32bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline uint64_t f64bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* tag of field f (all field numbers here are < 16: one byte) */
#define TAG(f, wt) ((uint8_t)(((f) << 3) | (wt)))

/* size of a varint field that is left out when zero */
static inline size_t fv(uint64_t v) { return v ? 1 + vlen(v) : 0; }
static inline uint8_t *pv(uint8_t *p, int f, uint64_t v)
{
    if (!v)
        return p;
    *p++ = TAG(f, WT_VARINT);
    return vput(p, v);
}
/* floats and doubles are left out when they compare equal to 0 (so -0.0 too, as protobuf-c does) */
static inline uint8_t *pf32(uint8_t *p, int f, float v)
{
    if (v == 0.0f)
        return p;
    uint32_t bits = f32bits(v);
    *p++ = TAG(f, WT_I32);
    memcpy(p, &bits, 4); /* little-endian hosts only (x86-64, aarch64) */
    return p + 4;
}
static inline uint8_t *pf64(uint8_t *p, int f, double v)
{
    if (v == 0.0)
        return p;
    uint64_t bits = f64bits(v);
    *p++ = TAG(f, WT_I64);
    memcpy(p, &bits, 8);
    return p + 8;
}
static inline size_t flen(size_t body) { return 1 + vlen(body) + body; } /* a LEN field */
static inline uint8_t *plen(uint8_t *p, int f, size_t body)
{
    *p++ = TAG(f, WT_LEN);
    return vput(p, body);
}

/* ---- StepPlan ---- */

static size_t sampling_body(const Gemma__Control__V1__Sampling *s)
{
    return (s->temperature != 0.0f ? 5 : 0) + fv(i32v(s->top_k)) + (s->top_p != 0.0f ? 5 : 0) + fv(s->seed);
}

static size_t tokens_body(const Gemma__Control__V1__SeqPlan *q)
{
    size_t n = 0;
    for (size_t i = 0; i < q->n_tokens; i++)
        n += vlen(zz32(q->tokens[i]));
    return n;
}

static size_t blocks_body(const Gemma__Control__V1__SeqPlan *q)
{
    size_t n = 0;
    for (size_t i = 0; i < q->n_block_table; i++)
        n += vlen(i32v(q->block_table[i]));
    return n;
}

static size_t seq_body(const Gemma__Control__V1__SeqPlan *q, size_t *tok_b, size_t *blk_b, size_t *samp_b)
{
    *tok_b = tokens_body(q);
    *blk_b = blocks_body(q);
    *samp_b = q->sampling ? sampling_body(q->sampling) : 0;
    return fv(i32v(q->slot)) + (q->n_tokens ? flen(*tok_b) : 0) + fv(i32v(q->start_pos)) +
           (q->n_block_table ? flen(*blk_b) : 0) + fv(i32v(q->logits_mode)) + (q->sampling ? flen(*samp_b) : 0) +
           (q->reset ? 2 : 0);
}

static size_t plan_body(const Gemma__Control__V1__StepPlan *p)
{
    size_t n = fv(p->step_id), a, b, c;
    for (size_t i = 0; i < p->n_seqs; i++)
        n += flen(seq_body(p->seqs[i], &a, &b, &c));
    return n;
}

size_t wire_plan_size(const Gemma__Control__V1__ControlMessage *m)
{
    return flen(plan_body(m->plan));
}

size_t wire_plan_pack(const Gemma__Control__V1__ControlMessage *m, size_t size, uint8_t *out)
{
    const Gemma__Control__V1__StepPlan *p = m->plan;
    size_t body = 0; /* size = 1 + vlen(body) + body */
    for (size_t k = 1; k <= 10 && size > k; k++)
        if (vlen(size - 1 - k) == k) {
            body = size - 1 - k;
            break;
        }
    uint8_t *w = plen(out, 4, body);
    w = pv(w, 1, p->step_id);
    for (size_t i = 0; i < p->n_seqs; i++) {
        const Gemma__Control__V1__SeqPlan *q = p->seqs[i];
        size_t tb, bb, sb;
        w = plen(w, 2, seq_body(q, &tb, &bb, &sb));
        w = pv(w, 1, i32v(q->slot));
        if (q->n_tokens) {
            w = plen(w, 2, tb);
            for (size_t j = 0; j < q->n_tokens; j++)
                w = vput(w, zz32(q->tokens[j]));
        }
        w = pv(w, 3, i32v(q->start_pos));
        if (q->n_block_table) {
            w = plen(w, 4, bb);
            for (size_t j = 0; j < q->n_block_table; j++)
                w = vput(w, i32v(q->block_table[j]));
        }
        w = pv(w, 5, i32v(q->logits_mode));
        if (q->sampling) {
            const Gemma__Control__V1__Sampling *s = q->sampling;
            w = plen(w, 6, sb);
            w = pf32(w, 1, s->temperature);
            w = pv(w, 2, i32v(s->top_k));
            w = pf32(w, 3, s->top_p);
            w = pv(w, 4, s->seed);
        }
        w = pv(w, 7, q->reset ? 1 : 0);
    }
    return (size_t)(w - out);
}

/* ---- ServerMessage of chunks ---- */

static size_t usage_body(const Gemma__V1__Usage *u)
{
    return fv(i32v(u->prompt_tokens)) + fv(i32v(u->completion_tokens)) + (u->queue_ms != 0.0 ? 9 : 0) +
           (u->ttft_ms != 0.0 ? 9 : 0) + (u->total_ms != 0.0 ? 9 : 0) + fv(i32v(u->preemptions));
}

static size_t ids_body(const Gemma__V1__GenerateChunk *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_token_ids; i++)
        n += vlen(i32v(c->token_ids[i]));
    return n;
}

static size_t str_len(const char *s) { return s ? strlen(s) : 0; }

static size_t chunk_body(const Gemma__V1__GenerateChunk *c, size_t *ids_b, size_t *use_b, size_t *msg_l)
{
    *ids_b = ids_body(c);
    *use_b = c->usage ? usage_body(c->usage) : 0;
    *msg_l = str_len(c->error_message);
    return fv(c->request_id) + (c->n_token_ids ? flen(*ids_b) : 0) + (c->text.len ? flen(c->text.len) : 0) +
           fv(i32v((int32_t)c->finish_reason)) + (c->usage ? flen(*use_b) : 0) +
           fv(i32v((int32_t)c->error_code)) + (*msg_l ? flen(*msg_l) : 0);
}

size_t wire_chunks_size(const Gemma__V1__ServerMessage *m)
{
    size_t n = fv(m->protocol_version), a, b, c;
    for (size_t i = 0; i < m->n_chunks; i++)
        n += flen(chunk_body(m->chunks[i], &a, &b, &c));
    return n;
}

size_t wire_chunks_pack(const Gemma__V1__ServerMessage *m, uint8_t *out)
{
    uint8_t *w = pv(out, 1, m->protocol_version);
    for (size_t i = 0; i < m->n_chunks; i++) {
        const Gemma__V1__GenerateChunk *c = m->chunks[i];
        size_t ib, ub, ml;
        w = plen(w, 2, chunk_body(c, &ib, &ub, &ml));
        w = pv(w, 1, c->request_id);
        if (c->n_token_ids) {
            w = plen(w, 2, ib);
            for (size_t j = 0; j < c->n_token_ids; j++)
                w = vput(w, i32v(c->token_ids[j]));
        }
        if (c->text.len) {
            w = plen(w, 3, c->text.len);
            memcpy(w, c->text.data, c->text.len);
            w += c->text.len;
        }
        w = pv(w, 4, i32v((int32_t)c->finish_reason));
        if (c->usage) {
            const Gemma__V1__Usage *u = c->usage;
            w = plen(w, 5, ub);
            w = pv(w, 1, i32v(u->prompt_tokens));
            w = pv(w, 2, i32v(u->completion_tokens));
            w = pf64(w, 3, u->queue_ms);
            w = pf64(w, 4, u->ttft_ms);
            w = pf64(w, 5, u->total_ms);
            w = pv(w, 6, i32v(u->preemptions));
        }
        w = pv(w, 6, i32v((int32_t)c->error_code));
        if (ml) {
            w = plen(w, 7, ml);
            memcpy(w, c->error_message, ml);
            w += ml;
        }
    }
    return (size_t)(w - out);
}
