/* plan_decode.h - a hand-written decoder for the one message a worker gets at
 * every step: a ControlMessage holding a StepPlan (proto/control.proto).
 *
 * It fills the same protobuf-c structs that gemma__control__v1__control_message__unpack
 * would, allocating from the caller's ProtobufCAllocator (gemma-worker's bump
 * arena), in one pass per level instead of protobuf-c's reflective unpack. It
 * takes only the shape gemmad sends - a buffer that is exactly one plan field -
 * and accepts what any protobuf encoder may write there (packed or unpacked
 * repeated fields, any field order, a scalar or message field given twice: the
 * last wins, as protobuf-c decodes it; unknown fields skipped); for anything else (another message, a wire type it does not
 * expect, a truncated buffer) it returns NULL and the caller falls back to
 * protobuf-c, which decodes or rejects it. Header-only (static functions) so
 * that tests can compare it with protobuf-c. Needs proto/control.pb-c.h. */
#ifndef GM_PLAN_DECODE_H
#define GM_PLAN_DECODE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "proto/control.pb-c.h"

typedef struct pd_rd {
    const uint8_t *p, *end;
} pd_rd;

static inline bool pd_varint(pd_rd *r, uint64_t *out)
{
    if (r->p < r->end && *r->p < 0x80) { /* one byte: most tags and values */
        *out = *r->p++;
        return true;
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && r->p < r->end; shift += 7) {
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Next field: number and wire type; for LEN fields *sub is the payload. */
static inline bool pd_field(pd_rd *r, uint32_t *num, int *wt, pd_rd *sub, uint64_t *v)
{
    uint64_t tag;
    if (!pd_varint(r, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return false;
    *num = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    switch (*wt) {
    case 0:
        return pd_varint(r, v);
    case 1:
        if (r->end - r->p < 8)
            return false;
        memcpy(v, r->p, 8);
        r->p += 8;
        return true;
    case 2: {
        uint64_t n;
        if (!pd_varint(r, &n) || n > (uint64_t)(r->end - r->p))
            return false;
        sub->p = r->p;
        sub->end = r->p + n;
        r->p += n;
        return true;
    }
    case 5: {
        uint32_t u;
        if (r->end - r->p < 4)
            return false;
        memcpy(&u, r->p, 4);
        r->p += 4;
        *v = u;
        return true;
    }
    default: /* groups: not in proto3 */
        return false;
    }
}

/* Values of a repeated varint field: a packed run (wt 2) or one value (wt 0). */
static bool pd_count_varints(pd_rd sub, size_t *n)
{
    uint64_t v;
    while (sub.p < sub.end) {
        if (!pd_varint(&sub, &v))
            return false;
        (*n)++;
    }
    return true;
}

/* sint32: the low 32 bits of the varint, zigzag-decoded */
static int32_t pd_unzigzag(uint64_t v)
{
    uint32_t u = (uint32_t)v;
    return (int32_t)((u >> 1) ^ (0u - (u & 1)));
}

static void *pd_alloc(ProtobufCAllocator *a, size_t n)
{
    return a->alloc(a->allocator_data, n ? n : 1);
}

/* Append m values (a packed run, or the one unpacked value v when run is NULL)
 * to a repeated int32 field; sint decodes zigzag. A field given once (what
 * gemmad sends) costs one allocation; a split one is copied over. */
static bool pd_append(int32_t **arr, size_t *n, const pd_rd *run, uint64_t v, bool sint, ProtobufCAllocator *a)
{
    size_t m = 1;
    if (run) {
        m = 0;
        if (!pd_count_varints(*run, &m))
            return false;
        if (m == 0)
            return true;
    }
    int32_t *dst = pd_alloc(a, (*n + m) * sizeof *dst);
    if (!dst)
        return false;
    if (*n)
        memcpy(dst, *arr, *n * sizeof *dst);
    int32_t *w = dst + *n;
    if (!run) {
        *w = sint ? pd_unzigzag(v) : (int32_t)v;
    } else {
        pd_rd r = *run;
        for (size_t i = 0; i < m; i++) {
            pd_varint(&r, &v); /* counted above: cannot fail */
            w[i] = sint ? pd_unzigzag(v) : (int32_t)v;
        }
    }
    *arr = dst;
    *n += m;
    return true;
}

static bool pd_seq(pd_rd r, Gemma__Control__V1__SeqPlan *q, ProtobufCAllocator *a)
{
    gemma__control__v1__seq_plan__init(q);
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        pd_rd sub;
        uint64_t v;
        if (!pd_field(&r, &f, &wt, &sub, &v))
            return false;
        switch (f) {
        case 1:
        case 3:
        case 5:
        case 7:
            if (wt != 0)
                return false;
            if (f == 1)
                q->slot = (int32_t)v;
            else if (f == 3)
                q->start_pos = (int32_t)v;
            else if (f == 5)
                q->logits_mode = (int32_t)v;
            else
                q->reset = v != 0;
            break;
        case 2:
        case 4:
            if (wt != 0 && wt != 2)
                return false;
            if (!(f == 2 ? pd_append(&q->tokens, &q->n_tokens, wt == 2 ? &sub : NULL, v, true, a)
                         : pd_append(&q->block_table, &q->n_block_table, wt == 2 ? &sub : NULL, v, false, a)))
                return false;
            break;
        case 6: {
            if (wt != 2)
                return false;
            /* a message field given twice: the last one, as protobuf-c 1.4 decodes it */
            q->sampling = pd_alloc(a, sizeof *q->sampling);
            if (!q->sampling)
                return false;
            gemma__control__v1__sampling__init(q->sampling);
            Gemma__Control__V1__Sampling *s = q->sampling;
            while (sub.p < sub.end) {
                uint32_t g;
                int gwt;
                pd_rd x;
                uint64_t w;
                if (!pd_field(&sub, &g, &gwt, &x, &w))
                    return false;
                if ((g == 1 || g == 3) && gwt == 5) {
                    uint32_t u = (uint32_t)w;
                    memcpy(g == 1 ? &s->temperature : &s->top_p, &u, 4);
                } else if (g == 2 && gwt == 0) {
                    s->top_k = (int32_t)w;
                } else if (g == 4 && gwt == 0) {
                    s->seed = w;
                } else if (g <= 4) {
                    return false;
                }
            }
            break;
        }
        default: /* unknown field: skipped */
            break;
        }
    }
    return true;
}

/* The plan in buf, or NULL: not this shape (fall back to protobuf-c). */
static Gemma__Control__V1__ControlMessage *pd_decode_plan(const uint8_t *buf, size_t len, ProtobufCAllocator *a)
{
    pd_rd top = {buf, buf + len}, body;
    uint32_t f;
    int wt;
    uint64_t v;
    if (!pd_field(&top, &f, &wt, &body, &v) || f != 4 || wt != 2 || top.p != top.end)
        return NULL;
    size_t n = 0;
    for (pd_rd c = body; c.p < c.end;) {
        pd_rd sub;
        if (!pd_field(&c, &f, &wt, &sub, &v))
            return NULL;
        if (f == 2) {
            if (wt != 2)
                return NULL;
            n++;
        }
    }
    Gemma__Control__V1__ControlMessage *m = pd_alloc(a, sizeof *m);
    Gemma__Control__V1__StepPlan *p = pd_alloc(a, sizeof *p);
    Gemma__Control__V1__SeqPlan *qs = pd_alloc(a, n * sizeof *qs);
    Gemma__Control__V1__SeqPlan **qp = pd_alloc(a, n * sizeof *qp);
    if (!m || !p || !qs || !qp)
        return NULL;
    gemma__control__v1__control_message__init(m);
    gemma__control__v1__step_plan__init(p);
    m->body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN;
    m->plan = p;
    p->seqs = qp;
    while (body.p < body.end) {
        pd_rd sub;
        if (!pd_field(&body, &f, &wt, &sub, &v))
            return NULL;
        if (f == 1) {
            if (wt != 0)
                return NULL;
            p->step_id = v;
        } else if (f == 2) {
            qp[p->n_seqs] = &qs[p->n_seqs];
            if (!pd_seq(sub, qp[p->n_seqs], a))
                return NULL;
            p->n_seqs++;
        }
    }
    return m;
}

#endif
