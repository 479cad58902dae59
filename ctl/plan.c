/* plan.c - the step plan's encoder and decoder by hand (see plan.h). */
#include "ctl/plan.h"

#include <stdbool.h>
#include <string.h>

#include "ctl/pbwire.h"

/* ---- encoder ---- */

/* a packed repeated int32 field's payload */
static size_t int32s_body(const int32_t *v, size_t n)
{
    size_t b = 0;
    for (size_t i = 0; i < n; i++)
        b += pb_vlen(pb_i32v(v[i]));
    return b;
}

static size_t sampling_body(const Gemma__Control__V1__Sampling *s, size_t *stop_b)
{
    *stop_b = int32s_body(s->stop_ids, s->n_stop_ids);
    return (s->temperature != 0.0f ? 5 : 0) + pb_fv(pb_i32v(s->top_k)) + (s->top_p != 0.0f ? 5 : 0) + pb_fv(s->seed) +
           (s->presence_penalty != 0.0f ? 5 : 0) + (s->frequency_penalty != 0.0f ? 5 : 0) +
           (s->repetition_penalty != 0.0f ? 5 : 0) + pb_fv(pb_i32v(s->n_prompt)) + pb_fv(pb_i32v(s->min_tokens)) +
           (s->n_stop_ids ? pb_flen(*stop_b) : 0) + (s->logprobs ? 2 : 0) + pb_fv(pb_i32v(s->top_logprobs));
}

static size_t tokens_body(const Gemma__Control__V1__SeqPlan *q)
{
    size_t n = 0;
    for (size_t i = 0; i < q->n_tokens; i++)
        n += pb_vlen(pb_zz32(q->tokens[i]));
    return n;
}

static size_t seq_body(const Gemma__Control__V1__SeqPlan *q, size_t *tok_b, size_t *blk_b, size_t *samp_b,
                       size_t *stop_b)
{
    *tok_b = tokens_body(q);
    *blk_b = int32s_body(q->block_table, q->n_block_table);
    *samp_b = q->sampling ? sampling_body(q->sampling, stop_b) : 0;
    return pb_fv(pb_i32v(q->slot)) + (q->n_tokens ? pb_flen(*tok_b) : 0) + pb_fv(pb_i32v(q->start_pos)) +
           (q->n_block_table ? pb_flen(*blk_b) : 0) + pb_fv(pb_i32v(q->logits_mode)) +
           (q->sampling ? pb_flen(*samp_b) : 0) + (q->reset ? 2 : 0);
}

static size_t plan_body(const Gemma__Control__V1__StepPlan *p)
{
    size_t n = pb_fv(p->step_id), a, b, c, d;
    for (size_t i = 0; i < p->n_seqs; i++)
        n += pb_flen(seq_body(p->seqs[i], &a, &b, &c, &d));
    if (p->n_block_copies)
        n += pb_flen(int32s_body(p->block_copies, p->n_block_copies));
    return n;
}

size_t ctl_plan_size(const Gemma__Control__V1__ControlMessage *m)
{
    return pb_flen(plan_body(m->plan));
}

size_t ctl_plan_pack(const Gemma__Control__V1__ControlMessage *m, size_t size, uint8_t *out)
{
    const Gemma__Control__V1__StepPlan *p = m->plan;
    size_t body = 0; /* size = 1 + pb_vlen(body) + body */
    for (size_t k = 1; k <= 10 && size > k; k++)
        if (pb_vlen(size - 1 - k) == k) {
            body = size - 1 - k;
            break;
        }
    uint8_t *w = pb_plen(out, 4, body);
    w = pb_pv(w, 1, p->step_id);
    for (size_t i = 0; i < p->n_seqs; i++) {
        const Gemma__Control__V1__SeqPlan *q = p->seqs[i];
        size_t tb, bb, sb, xb = 0;
        w = pb_plen(w, 2, seq_body(q, &tb, &bb, &sb, &xb));
        w = pb_pv(w, 1, pb_i32v(q->slot));
        if (q->n_tokens) {
            w = pb_plen(w, 2, tb);
            for (size_t j = 0; j < q->n_tokens; j++)
                w = pb_vput(w, pb_zz32(q->tokens[j]));
        }
        w = pb_pv(w, 3, pb_i32v(q->start_pos));
        if (q->n_block_table) {
            w = pb_plen(w, 4, bb);
            for (size_t j = 0; j < q->n_block_table; j++)
                w = pb_vput(w, pb_i32v(q->block_table[j]));
        }
        w = pb_pv(w, 5, pb_i32v(q->logits_mode));
        if (q->sampling) {
            const Gemma__Control__V1__Sampling *s = q->sampling;
            w = pb_plen(w, 6, sb);
            w = pb_pf32(w, 1, s->temperature);
            w = pb_pv(w, 2, pb_i32v(s->top_k));
            w = pb_pf32(w, 3, s->top_p);
            w = pb_pv(w, 4, s->seed);
            w = pb_pf32(w, 5, s->presence_penalty);
            w = pb_pf32(w, 6, s->frequency_penalty);
            w = pb_pf32(w, 7, s->repetition_penalty);
            w = pb_pv(w, 8, pb_i32v(s->n_prompt));
            w = pb_pv(w, 9, pb_i32v(s->min_tokens));
            if (s->n_stop_ids) {
                w = pb_plen(w, 10, xb);
                for (size_t j = 0; j < s->n_stop_ids; j++)
                    w = pb_vput(w, pb_i32v(s->stop_ids[j]));
            }
            w = pb_pv(w, 11, s->logprobs ? 1 : 0);
            w = pb_pv(w, 12, pb_i32v(s->top_logprobs));
        }
        w = pb_pv(w, 7, q->reset ? 1 : 0);
    }
    if (p->n_block_copies) {
        w = pb_plen(w, 3, int32s_body(p->block_copies, p->n_block_copies));
        for (size_t j = 0; j < p->n_block_copies; j++)
            w = pb_vput(w, pb_i32v(p->block_copies[j]));
    }
    return (size_t)(w - out);
}

/* ---- decoder: a reader over one buffer ---- */

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

/* A Sampling message's fields into s (initialised); false on a wire type it does not expect. */
static bool pd_sampling(pd_rd sub, Gemma__Control__V1__Sampling *s, ProtobufCAllocator *a)
{
    while (sub.p < sub.end) {
        uint32_t g;
        int gwt;
        pd_rd x;
        uint64_t w;
        if (!pd_field(&sub, &g, &gwt, &x, &w))
            return false;
        float *f32 = g == 1 ? &s->temperature : g == 3 ? &s->top_p : g == 5 ? &s->presence_penalty
                   : g == 6 ? &s->frequency_penalty : g == 7 ? &s->repetition_penalty : NULL;
        int32_t *i32 = g == 2 ? &s->top_k : g == 8 ? &s->n_prompt : g == 9 ? &s->min_tokens
                     : g == 12 ? &s->top_logprobs : NULL;
        if (f32 && gwt == 5) {
            uint32_t u = (uint32_t)w;
            memcpy(f32, &u, 4);
        } else if (i32 && gwt == 0) {
            *i32 = (int32_t)w;
        } else if (g == 4 && gwt == 0) {
            s->seed = w;
        } else if (g == 11 && gwt == 0) {
            s->logprobs = w != 0;
        } else if (g == 10 && (gwt == 0 || gwt == 2)) {
            if (!pd_append(&s->stop_ids, &s->n_stop_ids, gwt == 2 ? &x : NULL, w, false, a))
                return false;
        } else if (g <= 12) {
            return false;
        }
    }
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
            if (!pd_sampling(sub, q->sampling, a))
                return false;
            break;
        }
        default: /* unknown field: skipped */
            break;
        }
    }
    return true;
}

/* ---- decoder ---- */

/* The plan in buf, or NULL: not this shape (fall back to protobuf-c). */
Gemma__Control__V1__ControlMessage *ctl_plan_decode(const uint8_t *buf, size_t len, ProtobufCAllocator *a)
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
        } else if (f == 3) {
            if ((wt != 0 && wt != 2) ||
                !pd_append(&p->block_copies, &p->n_block_copies, wt == 2 ? &sub : NULL, v, false, a))
                return NULL;
        }
    }
    return m;
}

Gemma__Control__V1__ControlMessage *ctl_msg_unpack(const uint8_t *buf, size_t len, ProtobufCAllocator *a)
{
    Gemma__Control__V1__ControlMessage *m = a ? ctl_plan_decode(buf, len, a) : NULL;
    return m ? m : gemma__control__v1__control_message__unpack(a, len, buf);
}
