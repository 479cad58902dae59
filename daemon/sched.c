/* sched.c - in-flight batching over the KV block manager (see sched.h for the policy): sequences,
 * admission, planning, committing, the counters and sched_check; speculative decoding is in
 * sched_spec.c, beam groups in sched_beam.c (what they share: sched_int.h). */
#include "daemon/sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/kvblocks.h"
#include "daemon/sched_int.h"
#include "daemon/spec.h"

/* The token of a decode whose input is still being sampled (ctl/step.h). */
static const int32_t k_fed_back = GM_TOKEN_PREVIOUS;

static void list_push_back(seq_list *l, sched_seq *q)
{
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

static void list_push_front(seq_list *l, sched_seq *q)
{
    q->prev = NULL;
    q->next = l->head;
    if (l->head)
        l->head->prev = q;
    else
        l->tail = q;
    l->head = q;
    l->n++;
}

static void list_remove(seq_list *l, sched_seq *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->prev = q->next = NULL;
    l->n--;
}

sched *sched_new(const sched_opts *o)
{
    if (o->max_seqs <= 0 || o->max_tokens_per_step <= 0 || o->max_context <= 1 || o->kv_blocks <= 0 ||
        o->kv_block_size <= 0 || o->max_waiting < 0) {
        gm_fail(GM_ERR_INVALID_ARG,
                "scheduler: max_seqs %d, max_tokens_per_step %d, max_context %d, kv_blocks %lld, "
                "kv_block_size %d, max_waiting %d: all must be positive",
                o->max_seqs, o->max_tokens_per_step, o->max_context, (long long)o->kv_blocks, o->kv_block_size,
                o->max_waiting);
        return NULL;
    }
    sched *s = calloc(1, sizeof(*s));
    if (!s) {
        gm_fail(GM_ERR_NOMEM, "scheduler: out of memory");
        return NULL;
    }
    s->o = *o;
    s->kv = kvb_new(o->kv_blocks, o->kv_block_size);
    s->free_slots = malloc((size_t)o->max_seqs * sizeof(int32_t));
    bool ok = s->kv && s->free_slots;
    for (int b = 0; b < SCHED_MAX_OUTSTANDING; b++) {
        struct plan_buf *pb = &s->bufs[b];
        pb->steps = calloc((size_t)o->max_seqs, sizeof(gm_seq_step));
        pb->seqs = calloc((size_t)o->max_seqs, sizeof(sched_seq *));
        pb->epochs = calloc((size_t)o->max_seqs, sizeof(uint32_t));
        pb->got = calloc((size_t)o->max_seqs, 1);
        pb->copies = calloc((size_t)o->max_seqs, sizeof(gm_block_copy));
        ok = ok && pb->steps && pb->seqs && pb->epochs && pb->got && pb->copies;
    }
    if (!ok) {
        sched_destroy(&s);
        gm_fail(GM_ERR_NOMEM, "scheduler: out of memory for %d sequences, %lld blocks", o->max_seqs,
                (long long)o->kv_blocks);
        return NULL;
    }
    for (int32_t i = 0; i < o->max_seqs; i++)
        s->free_slots[i] = o->max_seqs - 1 - i;
    s->n_free_slots = o->max_seqs;
    int64_t pool_tokens = o->kv_blocks * o->kv_block_size;
    s->cap_tokens = pool_tokens < o->max_context ? pool_tokens : o->max_context;
    s->hit_ids = malloc((size_t)(kvb_blocks_for(s->kv, s->cap_tokens) + 1) * sizeof(int32_t));
    if (!s->hit_ids) {
        sched_destroy(&s);
        gm_fail(GM_ERR_NOMEM, "scheduler: out of memory");
        return NULL;
    }
    return s;
}

static void seq_free_mem(sched_seq *q)
{
    free(q->tokens);
    free(q->blocks);
    free(q->names);
    free(q->beams);
    free(q);
}

void sched_destroy(sched **ps)
{
    if (!ps || !*ps)
        return;
    sched *s = *ps;
    seq_list *ls[2] = {&s->running, &s->waiting};
    for (int k = 0; k < 2; k++)
        while (ls[k]->head) {
            sched_seq *q = ls[k]->head;
            list_remove(ls[k], q);
            seq_free_mem(q);
        }
    kvb_destroy(&s->kv);
    free(s->free_slots);
    free(s->hit_ids);
    for (int b = 0; b < SCHED_MAX_OUTSTANDING; b++) {
        free(s->bufs[b].steps);
        free(s->bufs[b].seqs);
        free(s->bufs[b].epochs);
        free(s->bufs[b].got);
        free(s->bufs[b].copies);
    }
    free(s);
    *ps = NULL;
}

/* What min_tokens masks: every token that would end r (sched_is_stop's list), each once. */
static void stop_set_build(const sched *s, const sched_req *r, gm_stop_set *ss)
{
    int32_t cand[SCHED_MAX_STOP_IDS + 2], n = 0;
    if (!r->ignore_eos) {
        cand[n++] = s->o.eos_id;
        if (r->stop_at_eot)
            cand[n++] = s->o.eot_id;
    }
    for (int32_t i = 0; i < r->n_stop_ids; i++)
        cand[n++] = r->stop_ids[i];
    ss->n = 0;
    for (int32_t i = 0; i < n; i++) {
        bool dup = cand[i] < 0;
        for (int32_t k = 0; k < ss->n && !dup; k++)
            dup = ss->ids[k] == cand[i];
        if (!dup)
            ss->ids[ss->n++] = cand[i];
    }
}

/* A new waiting sequence of r (its place i among r's n), not yet queued; NULL when out of memory. */
static sched_seq *seq_new(const sched *s, const sched_req *r, int64_t max_new, int32_t i)
{
    sched_seq *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    /* room for everything up front: no reallocation while it runs */
    q->cap = (int32_t)(r->n_prompt + max_new);
    q->tokens = malloc((size_t)q->cap * sizeof(int32_t));
    q->blocks_cap = (int32_t)kvb_blocks_for(s->kv, q->cap);
    q->blocks = malloc((size_t)q->blocks_cap * sizeof(int32_t));
    q->names = malloc((size_t)q->blocks_cap * sizeof(uint64_t));
    if (!q->tokens || !q->blocks || !q->names) {
        seq_free_mem(q);
        return NULL;
    }
    memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    q->n_prompt = q->n_tokens = r->n_prompt;
    q->max_new = (int32_t)max_new;
    q->sampling = r->sampling;
    q->sampling.seed = r->sampling.seed + (uint64_t)i; /* distinct, reproducible draws per sequence */
    q->sampling.n_prompt = r->n_prompt;
    q->sampling.min_tokens = r->min_tokens;
    q->index = i;
    /* penalties and log-probabilities are per sampled row in the engines: speculation stays off for them */
    q->spec_k = gm_sampling_has_penalties(&r->sampling) || gm_sampling_wants_logprobs(&r->sampling) ? 0 : r->spec_k;
    if (r->n_stop_ids)
        memcpy(q->stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof(int32_t));
    q->n_stop_ids = r->n_stop_ids;
    if (r->min_tokens > 0)
        stop_set_build(s, r, &q->stops);
    q->ignore_eos = r->ignore_eos;
    q->stop_at_eot = r->stop_at_eot;
    q->user = r->user;
    q->slot = -1;
    for (int b = 0; b < SCHED_MAX_OUTSTANDING; b++)
        q->plan_pos[b] = -1;
    sched_set_named(s, q, 0);
    q->state = SCHED_WAITING;
    return q;
}

sched_reject sched_add(sched *s, const sched_req *r, sched_seq **out)
{
    int32_t n = r->n > 0 ? r->n : 1;
    out[0] = NULL;
    if (!r->prompt || r->n_prompt <= 0) {
        gm_fail(GM_ERR_INVALID_ARG, "the prompt is empty");
        return SCHED_REJECT_INVALID;
    }
    if (r->max_tokens < 0) {
        gm_fail(GM_ERR_INVALID_ARG, "max_tokens %d is negative", r->max_tokens);
        return SCHED_REJECT_INVALID;
    }
    if (r->min_tokens < 0) {
        gm_fail(GM_ERR_INVALID_ARG, "min_tokens %d is negative", r->min_tokens);
        return SCHED_REJECT_INVALID;
    }
    if (r->n_stop_ids < 0 || r->n_stop_ids > SCHED_MAX_STOP_IDS) {
        gm_fail(GM_ERR_INVALID_ARG, "%d stop token ids: at most %d", r->n_stop_ids, SCHED_MAX_STOP_IDS);
        return SCHED_REJECT_INVALID;
    }
    if (r->spec_k < 0 || r->spec_k > SPEC_MAX_K) {
        gm_fail(GM_ERR_INVALID_ARG, "%d speculative tokens: 0..%d", r->spec_k, SPEC_MAX_K);
        return SCHED_REJECT_INVALID;
    }
    if (n > SCHED_MAX_N) {
        gm_fail(GM_ERR_INVALID_ARG, "n = %d sequences: at most %d", r->n, SCHED_MAX_N);
        return SCHED_REJECT_INVALID;
    }
    int32_t beams = r->beam_width > 1 ? r->beam_width : 0;
    if (beams && (beams > SCHED_MAX_BEAM || n > 1 || r->min_tokens > 0 || gm_sampling_has_penalties(&r->sampling))) {
        gm_fail(GM_ERR_INVALID_ARG, "beam_width %d: at most %d, with one sequence, no min_tokens and no penalties",
                r->beam_width, SCHED_MAX_BEAM);
        return SCHED_REJECT_INVALID;
    }
    if (beams)
        n = beams;
    int64_t limit = s->cap_tokens;
    if (r->n_prompt >= limit) {
        gm_fail(GM_ERR_CAPACITY, "the prompt has %d tokens; at most %lld fit (%s %lld)", r->n_prompt,
                (long long)limit - 1, limit == s->o.max_context ? "max_context" : "KV pool tokens",
                (long long)limit);
        return SCHED_REJECT_TOO_LONG;
    }
    int64_t max_new = r->max_tokens ? r->max_tokens : limit - r->n_prompt;
    if (r->n_prompt + max_new > limit) {
        gm_fail(GM_ERR_CAPACITY, "prompt (%d tokens) + max_tokens (%d) = %lld exceeds the %s of %lld tokens",
                r->n_prompt, r->max_tokens, (long long)(r->n_prompt + max_new),
                limit == s->o.max_context ? "context" : "KV pool", (long long)limit);
        return SCHED_REJECT_TOO_LONG;
    }
    if (beams && (beams > s->o.max_seqs || beams * kvb_blocks_for(s->kv, r->n_prompt + max_new) > s->o.kv_blocks)) {
        /* a group runs whole: it must fit alone, even with nothing shared */
        gm_fail(GM_ERR_CAPACITY, "beam_width %d: %d beams of %lld tokens need more than the %d slots or %lld KV "
                "blocks there are", beams, beams, (long long)(r->n_prompt + max_new), s->o.max_seqs,
                (long long)s->o.kv_blocks);
        return SCHED_REJECT_TOO_LONG;
    }
    if (s->o.max_waiting > 0 && s->waiting.n + n > s->o.max_waiting) {
        gm_fail(GM_ERR_CAPACITY, "%d requests are already waiting", s->waiting.n);
        return SCHED_REJECT_FULL;
    }
    for (int32_t i = 0; i < n; i++) {
        out[i] = seq_new(s, r, max_new, i);
        if (!out[i]) {
            for (int32_t j = 0; j < i; j++)
                seq_free_mem(out[j]);
            out[0] = NULL;
            gm_fail(GM_ERR_NOMEM, "out of memory for %d sequences of %lld tokens", n,
                    (long long)(r->n_prompt + max_new));
            return SCHED_REJECT_NOMEM;
        }
    }
    /* penalties count a slot's tokens from position 0 (worker/engine_pen.h): such sequences neither fork
     * nor start at a cached prefix, each computes its whole prompt */
    bool share = !gm_sampling_has_penalties(&r->sampling);
    if (beams && !(out[0]->beams = malloc((size_t)n * sizeof(sched_seq *)))) {
        for (int32_t j = 0; j < n; j++)
            seq_free_mem(out[j]);
        out[0] = NULL;
        gm_fail(GM_ERR_NOMEM, "out of memory for %d beams", n);
        return SCHED_REJECT_NOMEM;
    }
    for (int32_t i = 0; i < n; i++) {
        if (beams) { /* one group; beams past the first are dormant until sched_beam_reseat */
            out[0]->beams[i] = out[i];
            out[i]->beam_lead = out[0];
            out[i]->beam_width = n;
            if (i > 0)
                out[i]->n_tokens = 0;
        } else if (i > 0 && share) { /* waits for sequence 0's prompt, then shares its blocks */
            out[i]->fork_of = out[0];
            out[i]->kid_next = out[0]->kids;
            out[0]->kids = out[i];
        }
        list_push_back(&s->waiting, out[i]);
    }
    return SCHED_ACCEPTED;
}

static void release_kv(sched *s, sched_seq *q)
{
    if (q->n_blocks)
        kvb_release(s->kv, q->blocks, q->n_blocks);
    q->n_blocks = 0;
    sched_set_named(s, q, 0);
    q->n_computed = 0;
    q->n_pending = 0;
    q->ready_serial = 0;
    q->beam_ready = false;
    q->epoch++; /* what outstanding steps sample for it is dropped */
    if (q->slot >= 0)
        s->free_slots[s->n_free_slots++] = q->slot;
    q->slot = -1;
}

/* q no longer waits to fork from its first sequence (it forked, or either one ended). */
static void unfork(sched_seq *q)
{
    sched_seq *p = q->fork_of;
    if (!p)
        return;
    for (sched_seq **k = &p->kids; *k; k = &(*k)->kid_next)
        if (*k == q) {
            *k = q->kid_next;
            break;
        }
    q->fork_of = q->kid_next = NULL;
}

/* Send q back to the front of the queue; it is recomputed from its tokens. */
static void preempt(sched *s, sched_seq *q)
{
    list_remove(&s->running, q);
    release_kv(s, q);
    q->state = SCHED_WAITING;
    q->preemptions++;
    s->preemptions++;
    list_push_front(&s->waiting, q);
}

/* True when a beam of q's group other than skip is in the plan being built. */
static bool group_planned(const sched *s, const sched_seq *q, const sched_seq *skip)
{
    const sched_seq *l = q->beam_lead;
    for (int32_t i = 0; l && i < l->beam_width; i++)
        if (l->beams[i] != skip && l->beams[i]->state == SCHED_RUNNING && l->beams[i]->plan_mark == s->serial)
            return true;
    return false;
}

/* Preempt q, or its whole group when q is a beam (back to the queue's front in group order); *next
 * (the caller's place in the running list) moves past every sequence removed. */
static void preempt_seqs(sched *s, sched_seq *q, sched_seq **next)
{
    if (!q->beam_lead) {
        if (*next == q)
            *next = q->next;
        preempt(s, q);
        return;
    }
    sched_seq *l = q->beam_lead;
    for (int32_t i = l->beam_width - 1; i >= 0; i--) { /* pushed to the front: the last first */
        sched_seq *m = l->beams[i];
        if (m->state != SCHED_RUNNING)
            continue;
        if (*next == m)
            *next = m->next;
        preempt(s, m);
    }
}

/* The newest running sequence that is not in the plan being built (nor is a beam of its group), or NULL. */
static sched_seq *pick_victim(sched *s)
{
    for (sched_seq *q = s->running.tail; q; q = q->prev)
        if (q->plan_mark != s->serial && !group_planned(s, q, NULL))
            return q;
    return NULL;
}

static inline int32_t virt_len(const sched_seq *q) { return q->n_tokens + q->n_pending; }

/* ---- shared blocks ---- */

/* Blocks q needs before it writes n_tok more tokens: the new ones past its
 * table, and a copy of each block in the written range that another table
 * holds too. */
int64_t sched_write_need(const sched *s, const sched_seq *q, int32_t n_tok)
{
    int64_t end = kvb_blocks_for(s->kv, q->n_computed + n_tok);
    int64_t need = end > q->n_blocks ? end - q->n_blocks : 0;
    if (kvb_shared(s->kv) == 0) /* nothing shared anywhere: the common case, no table to walk */
        return need;
    int64_t last = end < q->n_blocks ? end : q->n_blocks;
    for (int64_t j = q->n_computed / s->o.kv_block_size; j < last; j++)
        need += kvb_refcount(s->kv, q->blocks[j]) > 1;
    return need;
}

/* Give q what sched_write_need counted (the caller made sure it is available):
 * shared blocks in the written range are replaced by copies that plan buffer
 * pb carries, new blocks are appended. */
static void write_prepare(sched *s, struct plan_buf *pb, sched_seq *q, int32_t n_tok)
{
    int64_t end = kvb_blocks_for(s->kv, q->n_computed + n_tok);
    int64_t last = kvb_shared(s->kv) == 0 ? 0 : end < q->n_blocks ? end : q->n_blocks;
    for (int64_t j = q->n_computed / s->o.kv_block_size; j < last; j++) {
        int32_t old = q->blocks[j], fresh;
        if (kvb_refcount(s->kv, old) <= 1 || !kvb_alloc(s->kv, 1, &fresh))
            continue; /* alone, or (never: sched_write_need counted it) no block; sched_check reports a shared write */
        pb->copies[pb->n_copies++] = (gm_block_copy){old, fresh};
        kvb_release(s->kv, &old, 1); /* still held by the others */
        q->blocks[j] = fresh;
        q->table_reset = true;
    }
    if (end > q->n_blocks && kvb_alloc(s->kv, (int32_t)(end - q->n_blocks), q->blocks + q->n_blocks))
        q->n_blocks = (int32_t)end;
}

__attribute__((noinline)) void sched_register_blocks(sched *s, sched_seq *q, int32_t full)
{
    int32_t bs = s->o.kv_block_size;
    for (int32_t j = q->n_named; j < full; j++) {
        uint64_t parent = j ? q->names[j - 1] : 0;
        q->names[j] = kvb_register(s->kv, q->blocks[j], parent, q->tokens + (int64_t)j * bs, s->serial);
    }
    q->n_named = full;
    q->reg_at = (full + 1) * bs;
}

/* The longest cached prefix of q's tokens, in whole blocks and short of its
 * last token: ids into s->hit_ids, names into q->names. Returns the blocks. */
static int32_t cache_lookup(sched *s, sched_seq *q)
{
    if (!s->o.prefix_cache || gm_sampling_has_penalties(&q->sampling))
        return 0; /* penalties: from position 0 (sched_add) */
    int32_t bs = s->o.kv_block_size, max = (q->n_tokens - 1) / bs, n = 0;
    uint64_t parent = 0;
    while (n < max) {
        int32_t id = kvb_lookup(s->kv, parent, q->tokens + (int64_t)n * bs, s->serial, &q->names[n]);
        if (id < 0)
            break;
        s->hit_ids[n] = id;
        parent = q->names[n++];
    }
    return n;
}

/* ---- planning ---- */

void sched_plan_add(sched *s, int b, sched_seq *q, int32_t n_tokens)
{
    struct plan_buf *pb = &s->bufs[b];
    write_prepare(s, pb, q, n_tokens);
    int32_t i = pb->n++;
    gm_seq_step *st = &pb->steps[i];
    st->slot = q->slot;
    /* a decode of a token still being sampled feeds the slot's last sample */
    st->tokens = q->n_computed < q->n_tokens ? q->tokens + q->n_computed : &k_fed_back;
    st->n_tokens = n_tokens;
    st->start_pos = q->n_computed;
    st->block_table = q->blocks;
    st->n_blocks = q->n_blocks;
    st->logits_mode = q->n_computed + n_tokens == virt_len(q) ? GM_LOGITS_LAST : GM_LOGITS_NONE;
    st->sampling = q->sampling;
    st->stops = q->sampling.min_tokens > 0 ? &q->stops : NULL;
    st->reset = q->table_reset;
    q->table_reset = false;
    pb->seqs[i] = q;
    pb->epochs[i] = q->epoch;
    pb->got[i] = 0;
    q->plan_mark = s->serial;
    q->plan_pos[b] = i;
    q->n_computed += n_tokens;
    q->n_pending += st->logits_mode != GM_LOGITS_NONE;
    q->scheduled = true;
    if (!q->ready_serial && q->n_computed >= q->n_prompt)
        q->ready_serial = s->serial;
    sched_register_known(s, q);
}

/* q leaves the waiting queue for a slot; its table (n_blocks) is set. */
static void start_running(sched *s, sched_seq *q)
{
    list_remove(&s->waiting, q);
    q->n_pending = 0;
    q->slot = s->free_slots[--s->n_free_slots];
    q->state = SCHED_RUNNING;
    q->table_reset = true; /* a new table for the slot, whatever its first position */
    list_push_back(&s->running, q);
}

/* Admit waiting q with its cached prefix and its first chunk; false when the pool lacks room. */
static bool admit(sched *s, int b, sched_seq *q, int32_t *budget)
{
    int32_t hits = cache_lookup(s, q);
    int64_t fresh = kvb_blocks_for(s->kv, q->n_tokens) - hits, idle = 0;
    for (int32_t j = 0; j < hits; j++)
        idle += kvb_refcount(s->kv, s->hit_ids[j]) == 0; /* taking them shrinks what is available */
    if (fresh > kvb_available(s->kv) - idle)
        return false;
    int32_t bs = s->o.kv_block_size;
    for (int32_t j = 0; j < hits; j++) {
        kvb_ref(s->kv, s->hit_ids[j]);
        q->blocks[j] = s->hit_ids[j];
    }
    kvb_alloc(s->kv, (int32_t)fresh, q->blocks + hits);
    q->n_blocks = hits + (int32_t)fresh;
    sched_set_named(s, q, hits);
    q->n_computed = hits * bs;
    q->n_cached = hits * bs;
    if (s->o.prefix_cache && !gm_sampling_has_penalties(&q->sampling)) {
        s->pc_queries += q->n_tokens;
        s->pc_hits += (int64_t)hits * bs;
    }
    start_running(s, q);
    int32_t left = q->n_tokens - q->n_computed;
    int32_t chunk = left < *budget ? left : *budget;
    if (chunk > 0) /* none: a beam of a group admitted past the budget; a later plan feeds it */
        sched_plan_add(s, b, q, chunk);
    *budget -= chunk;
    return true;
}

/* Admit every waiting beam of lead's group, or none (no slots or blocks for all of them). */
static bool admit_group(sched *s, int b, sched_seq *lead, int32_t *budget)
{
    int32_t slots = 0;
    int64_t blocks = 0;
    for (int32_t i = 0; i < lead->beam_width; i++) {
        const sched_seq *m = lead->beams[i];
        if (m->state != SCHED_WAITING)
            continue;
        slots++;
        blocks += kvb_blocks_for(s->kv, m->n_tokens); /* at most: the prefix cache may serve some */
    }
    if (slots > s->n_free_slots || blocks > kvb_available(s->kv))
        return false;
    for (int32_t i = 0; i < lead->beam_width; i++) {
        sched_seq *m = lead->beams[i];
        if (m->state != SCHED_WAITING)
            continue;
        if (m->n_tokens == 0) /* dormant: a slot and nothing to compute */
            start_running(s, m);
        else
            admit(s, b, m, budget);
    }
    return true;
}

/* Fork waiting q from p, whose prompt is in its blocks: q shares them and
 * computes its last prompt token into a copy of the block holding it. false
 * when the pool has no block for that copy. */
static bool fork_from(sched *s, int b, sched_seq *q, sched_seq *p, int32_t *budget)
{
    if (kvb_available(s->kv) < 1)
        return false;
    int32_t k = (int32_t)kvb_blocks_for(s->kv, q->n_prompt);
    for (int32_t j = 0; j < k; j++) {
        kvb_ref(s->kv, p->blocks[j]);
        q->blocks[j] = p->blocks[j];
    }
    q->n_blocks = k;
    sched_set_named(s, q, p->n_named < k ? p->n_named : k);
    memcpy(q->names, p->names, (size_t)q->n_named * sizeof(uint64_t));
    q->n_computed = q->n_prompt - 1;
    q->forked = true;
    s->forks++;
    unfork(q);
    start_running(s, q);
    sched_plan_add(s, b, q, 1);
    (*budget)--;
    return true;
}

int32_t sched_plan_step(sched *s, sched_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    if (s->n_out >= SCHED_MAX_OUTSTANDING)
        return 0;
    int b = (s->head + s->n_out) % SCHED_MAX_OUTSTANDING;
    struct plan_buf *pb = &s->bufs[b];
    /* forget what this buffer held before */
    for (int32_t i = 0; i < pb->n; i++)
        if (pb->seqs[i] && pb->seqs[i]->plan_pos[b] == i)
            pb->seqs[i]->plan_pos[b] = -1;
    pb->n = 0;
    pb->n_copies = 0;
    s->serial++;
    int32_t budget = s->o.max_tokens_per_step;
    int32_t preempted = 0;

    /* 1. decodes, oldest first: exactly one token (known, or being sampled) not fed yet,
     *    and room for another under max_tokens and the context */
    for (sched_seq *q = s->running.head, *next; q && budget > 0; q = next) {
        next = q->next;
        int32_t v = virt_len(q);
        if (v - q->n_computed != 1 || v >= q->cap || v - q->n_prompt >= q->max_new)
            continue;
        if (q->spec_k > 0 && q->spec_idle == 0) {
            if (q->n_pending > 0 || sched_spec_plan(s, b, q, &budget))
                continue; /* speculative: no run-ahead; drafted and planned */
            q->spec_idle = SPEC_IDLE_PLANS; /* nothing to draft: decode plainly, running ahead, a while */
        }
        if (q->beam_lead && q->n_pending > 0) /* a beam's next token is the caller's choice */
            continue;
        bool self = false;
        /* a victim may share blocks with q: count again after each */
        while (sched_write_need(s, q, 1) > kvb_available(s->kv)) {
            sched_seq *victim = pick_victim(s);
            if (!victim || victim == q || (q->beam_lead && victim->beam_lead == q->beam_lead)) {
                self = true;
                break;
            }
            preempt_seqs(s, victim, &next);
            preempted++;
        }
        if (self) { /* q is the newest unplanned sequence: it yields (a beam with planned mates waits) */
            if (!group_planned(s, q, q)) {
                preempt_seqs(s, q, &next);
                preempted++;
            }
            continue;
        }
        sched_plan_add(s, b, q, 1);
        budget--;
        q->spec_idle -= q->spec_idle > 0;
    }
    /* 2. prefill chunks of running sequences (their blocks were taken at admission) */
    for (sched_seq *q = s->running.head; q && budget > 0; q = q->next) {
        int32_t unfed = q->n_tokens - q->n_computed;
        if (q->plan_mark == s->serial || unfed <= 1 || q->n_pending > 0)
            continue;
        int32_t chunk = unfed < budget ? unfed : budget;
        if (sched_write_need(s, q, chunk) > kvb_available(s->kv))
            continue;
        sched_plan_add(s, b, q, chunk);
        budget -= chunk;
    }
    /* 3. admit waiting sequences, FIFO; a sequence of n > 1 waiting for its first one's prompt is
     *    passed over, and forks once that prompt is in an earlier plan */
    for (sched_seq *q = s->waiting.head, *next; q && budget > 0 && s->n_free_slots > 0; q = next) {
        next = q->next;
        sched_seq *p = q->fork_of;
        if (q->beam_lead) {
            if (!admit_group(s, b, q->beam_lead, &budget))
                break;
            next = s->waiting.head; /* the group left the queue, wherever its beams were */
        } else if (p) {
            if (p->state != SCHED_RUNNING || !p->ready_serial || p->ready_serial >= s->serial)
                continue;
            if (!fork_from(s, b, q, p, &budget))
                break;
        } else if (!admit(s, b, q, &budget)) {
            break;
        }
    }
    pb->serial = s->serial;
    if (pb->n > 0)
        s->n_out++;
    plan->steps = pb->steps;
    plan->seqs = pb->seqs;
    plan->got = pb->got;
    plan->n = pb->n;
    plan->n_tokens = s->o.max_tokens_per_step - budget;
    plan->n_preempted = preempted;
    plan->serial = s->serial;
    plan->copies = pb->copies;
    plan->n_copies = pb->n_copies;
    return plan->n;
}

/* ---- committing and ending ---- */

int32_t sched_outstanding(const sched *s) { return s->n_out; }

bool sched_is_stop(const sched *s, const sched_seq *q, int32_t tok)
{
    if (!q->ignore_eos && (tok == s->o.eos_id || (q->stop_at_eot && tok == s->o.eot_id)))
        return true;
    for (int32_t i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] == tok)
            return true;
    return false;
}

void sched_commit_step(sched *s, const sched_plan *plan, const int32_t *tokens)
{
    sched_commit_verified(s, plan, tokens, NULL, 0);
}

bool sched_commit_verified(sched *s, const sched_plan *plan, const int32_t *tokens, const int32_t *verify,
                           int64_t n_verify)
{
    if (s->n_out == 0 || plan->steps != s->bufs[s->head].steps)
        return false; /* not the oldest outstanding plan: a caller bug, nothing to apply */
    struct plan_buf *pb = &s->bufs[s->head];
    int64_t want = 0;
    for (int32_t i = 0; i < pb->n; i++)
        want += pb->steps[i].logits_mode == GM_LOGITS_VERIFY ? pb->steps[i].n_tokens : 0;
    if (want != n_verify || (want > 0 && !verify))
        return false;
    s->head = (s->head + 1) % SCHED_MAX_OUTSTANDING;
    s->n_out--;
    const int32_t *vt = verify;
    for (int32_t i = 0; i < pb->n; i++) {
        pb->got[i] = 0;
        sched_seq *q = pb->seqs[i];
        const int32_t *rows = NULL;
        if (pb->steps[i].logits_mode == GM_LOGITS_VERIFY) {
            rows = vt;
            vt += pb->steps[i].n_tokens;
        }
        if (!q || q->state != SCHED_RUNNING || pb->epochs[i] != q->epoch ||
            pb->steps[i].logits_mode == GM_LOGITS_NONE)
            continue; /* freed, finished (an extra run-ahead step), preempted, or no sample */
        q->n_pending--;
        if (rows) {
            pb->got[i] = (uint8_t)sched_spec_commit(s, q, &pb->steps[i], rows);
            continue;
        }
        int32_t tok = tokens[i];
        if (tok < 0) {
            sched_finish_seq(s, q, SCHED_FINISH_ERROR);
            continue;
        }
        if (q->beam_lead) { /* a beam keeps its log-probabilities, not the sample (sched_beam_reseat) */
            q->beam_ready = true;
            pb->got[i] = 1;
            continue;
        }
        q->tokens[q->n_tokens++] = tok;
        pb->got[i] = 1;
        sched_register_known(s, q); /* a block whose last token was being sampled */
        if (sched_is_stop(s, q, tok)) {
            q->stop_token = true;
            sched_finish_seq(s, q, SCHED_FINISH_STOP);
        } else if (q->n_tokens - q->n_prompt >= q->max_new || q->n_tokens >= q->cap) {
            sched_finish_seq(s, q, SCHED_FINISH_LENGTH);
        }
    }
    return true;
}

void sched_abandon(sched *s)
{
    for (int32_t k = 0; k < s->n_out; k++) {
        int b = (s->head + k) % SCHED_MAX_OUTSTANDING;
        struct plan_buf *pb = &s->bufs[b];
        for (int32_t i = 0; i < pb->n; i++)
            if (pb->seqs[i]) {
                if (pb->seqs[i]->plan_pos[b] == i)
                    pb->seqs[i]->plan_pos[b] = -1;
                pb->seqs[i] = NULL;
            }
    }
    s->n_out = 0;
}

void sched_finish_seq(sched *s, sched_seq *q, sched_finish why)
{
    if (q->state == SCHED_FINISHED)
        return;
    list_remove(q->state == SCHED_RUNNING ? &s->running : &s->waiting, q);
    release_kv(s, q);
    unfork(q);
    while (q->kids) /* they are admitted on their own now */
        unfork(q->kids);
    q->state = SCHED_FINISHED;
    q->finish = why;
}

void sched_seq_free(sched *s, sched_seq **pq)
{
    if (!pq || !*pq)
        return;
    sched_seq *q = *pq;
    sched_finish_seq(s, q, SCHED_FINISH_CANCELLED);
    for (int b = 0; b < SCHED_MAX_OUTSTANDING; b++) {
        int32_t i = q->plan_pos[b];
        if (i >= 0 && i < s->bufs[b].n && s->bufs[b].seqs[i] == q)
            s->bufs[b].seqs[i] = NULL; /* its outstanding steps skip it at commit */
    }
    seq_free_mem(q);
    *pq = NULL;
}

int32_t sched_fail_running(sched *s, sched_seq **out)
{
    int32_t n = 0;
    while (s->running.head) {
        sched_seq *q = s->running.head;
        sched_finish_seq(s, q, SCHED_FINISH_ERROR);
        out[n++] = q;
    }
    kvb_forget_all(s->kv); /* the new workers' pools hold nothing */
    return n;
}

/* The counters take NULL (gemmad before its workers first started): nothing runs, nothing is held. */
int32_t sched_running(const sched *s) { return s ? s->running.n : 0; }
int32_t sched_waiting(const sched *s) { return s ? s->waiting.n : 0; }
int64_t sched_preemptions(const sched *s) { return s ? s->preemptions : 0; }
int64_t sched_kv_free(const sched *s) { return s ? kvb_free_count(s->kv) : 0; }
int64_t sched_kv_used(const sched *s) { return s ? kvb_used(s->kv) : 0; }
int64_t sched_kv_total(const sched *s) { return s ? kvb_total(s->kv) : 0; }
int64_t sched_kv_cached(const sched *s) { return s ? kvb_cached(s->kv) : 0; }
int64_t sched_prefix_queries(const sched *s) { return s ? s->pc_queries : 0; }
int64_t sched_prefix_hits(const sched *s) { return s ? s->pc_hits : 0; }
int64_t sched_forks(const sched *s) { return s ? s->forks : 0; }
int64_t sched_beam_forks(const sched *s) { return s ? s->beam_forks : 0; }
int64_t sched_beam_shared(const sched *s) { return s ? s->beam_shared : 0; }
int64_t sched_evictions(const sched *s) { return s ? kvb_evictions(s->kv) : 0; }
int64_t sched_spec_steps(const sched *s) { return s ? s->spec_steps : 0; }
int64_t sched_spec_drafted(const sched *s) { return s ? s->spec_drafted : 0; }
int64_t sched_spec_accepted(const sched *s) { return s ? s->spec_accepted : 0; }
bool sched_idle(const sched *s) { return !s || (s->running.n == 0 && s->waiting.n == 0); }
sched_seq *sched_first_waiting(sched *s) { return s ? s->waiting.head : NULL; }

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            snprintf(why, cap, __VA_ARGS__);                                                                           \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

bool sched_check(const sched *s, char *why, size_t cap)
{
    if (!kvb_check(s->kv, why, cap))
        return false;
    bool ok = false;
    int64_t total = kvb_total(s->kv);
    int32_t *refs = calloc((size_t)total, sizeof(int32_t));
    uint8_t *slots = calloc((size_t)s->o.max_seqs, 1);
    CHECK(refs && slots, "out of memory");
    for (const sched_seq *q = s->waiting.head; q; q = q->next)
        CHECK(q->n_blocks == 0 && q->slot < 0, "waiting sequence holds %d blocks, slot %d", q->n_blocks, q->slot);
    int32_t bs = s->o.kv_block_size;
    for (const sched_seq *q = s->running.head; q; q = q->next) {
        CHECK(q->slot >= 0 && q->slot < s->o.max_seqs && !slots[q->slot], "running sequence in slot %d", q->slot);
        slots[q->slot] = 1;
        CHECK(q->n_blocks >= kvb_blocks_for(s->kv, q->n_computed) && q->n_blocks <= q->blocks_cap,
              "slot %d: %d blocks for %d computed tokens", q->slot, q->n_blocks, q->n_computed);
        CHECK(q->n_named <= (q->n_tokens < q->n_computed ? q->n_tokens : q->n_computed) / bs,
              "slot %d: %d named blocks, %d tokens known, %d computed", q->slot, q->n_named, q->n_tokens,
              q->n_computed);
        for (int32_t j = 0; j < q->n_blocks; j++) {
            int32_t id = q->blocks[j];
            CHECK(id >= 0 && id < total, "slot %d: block %d out of range", q->slot, id);
            refs[id]++;
        }
    }
    for (int64_t i = 0; i < total; i++)
        CHECK(refs[i] == kvb_refcount(s->kv, (int32_t)i), "block %lld: refcount %d, held by %d tables",
              (long long)i, kvb_refcount(s->kv, (int32_t)i), refs[i]);
    /* what a sequence writes next is its alone */
    for (const sched_seq *q = s->running.head; q; q = q->next)
        for (int32_t j = q->n_computed / bs; j < q->n_blocks && !(q->beam_lead && !q->n_pending); j++)
            CHECK(refs[q->blocks[j]] == 1, "slot %d will write block %d (index %d), which %d tables hold", q->slot,
                  q->blocks[j], j, refs[q->blocks[j]]);
    CHECK(s->n_free_slots + s->running.n == s->o.max_seqs, "%d free slots + %d running != %d", s->n_free_slots,
          s->running.n, s->o.max_seqs);
    ok = true;
fail:
    free(refs);
    free(slots);
    return ok;
}
#undef CHECK
