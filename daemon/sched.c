/* sched.c - in-flight batching over the KV block manager (see sched.h for the policy). */
#include "daemon/sched.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/kvblocks.h"

typedef struct seq_list {
    sched_seq *head, *tail;
    int32_t n;
} seq_list;

struct sched {
    sched_opts o;
    kvb_pool *kv;
    seq_list running; /* admission order: head oldest */
    seq_list waiting; /* FIFO; preempted sequences go to the front */
    int32_t *free_slots; /* [max_seqs] stack */
    int32_t n_free_slots;
    int64_t preemptions;
    int64_t cap_tokens; /* most tokens one sequence can ever hold: min(context, pool) */
    /* plan buffers, a ring: [max_seqs] entries each */
    struct plan_buf {
        gm_seq_step *steps;
        sched_seq **seqs;
        uint32_t *epochs; /* each entry's sequence epoch when planned */
        uint8_t *got;
        int32_t n;
        uint64_t serial;
    } bufs[SCHED_MAX_OUTSTANDING];
    int32_t head, n_out; /* oldest outstanding buffer, outstanding count */
    uint64_t serial;     /* of the last plan made */
};

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
        ok = ok && pb->steps && pb->seqs && pb->epochs && pb->got;
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
    return s;
}

static void seq_free_mem(sched_seq *q)
{
    free(q->tokens);
    free(q->blocks);
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
    for (int b = 0; b < SCHED_MAX_OUTSTANDING; b++) {
        free(s->bufs[b].steps);
        free(s->bufs[b].seqs);
        free(s->bufs[b].epochs);
        free(s->bufs[b].got);
    }
    free(s);
    *ps = NULL;
}

sched_reject sched_add(sched *s, const sched_req *r, sched_seq **out)
{
    *out = NULL;
    if (!r->prompt || r->n_prompt <= 0) {
        gm_fail(GM_ERR_INVALID_ARG, "the prompt is empty");
        return SCHED_REJECT_INVALID;
    }
    if (r->max_tokens < 0) {
        gm_fail(GM_ERR_INVALID_ARG, "max_tokens %d is negative", r->max_tokens);
        return SCHED_REJECT_INVALID;
    }
    if (r->n_stop_ids < 0 || r->n_stop_ids > SCHED_MAX_STOP_IDS) {
        gm_fail(GM_ERR_INVALID_ARG, "%d stop token ids: at most %d", r->n_stop_ids, SCHED_MAX_STOP_IDS);
        return SCHED_REJECT_INVALID;
    }
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
    if (s->waiting.n >= s->o.max_waiting && s->o.max_waiting > 0) {
        gm_fail(GM_ERR_CAPACITY, "%d requests are already waiting", s->waiting.n);
        return SCHED_REJECT_FULL;
    }
    sched_seq *q = calloc(1, sizeof(*q));
    if (!q) {
        gm_fail(GM_ERR_NOMEM, "out of memory");
        return SCHED_REJECT_NOMEM;
    }
    /* room for everything up front: no reallocation while it runs */
    q->cap = (int32_t)(r->n_prompt + max_new);
    q->tokens = malloc((size_t)q->cap * sizeof(int32_t));
    q->blocks_cap = (int32_t)kvb_blocks_for(s->kv, q->cap);
    q->blocks = malloc((size_t)q->blocks_cap * sizeof(int32_t));
    if (!q->tokens || !q->blocks) {
        gm_fail(GM_ERR_NOMEM, "out of memory for a %d-token sequence", q->cap);
        seq_free_mem(q);
        return SCHED_REJECT_NOMEM;
    }
    memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    q->n_prompt = q->n_tokens = r->n_prompt;
    q->max_new = (int32_t)max_new;
    q->sampling = r->sampling;
    if (r->n_stop_ids)
        memcpy(q->stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof(int32_t));
    q->n_stop_ids = r->n_stop_ids;
    q->ignore_eos = r->ignore_eos;
    q->stop_at_eot = r->stop_at_eot;
    q->user = r->user;
    q->slot = -1;
    for (int b = 0; b < SCHED_MAX_OUTSTANDING; b++)
        q->plan_pos[b] = -1;
    q->state = SCHED_WAITING;
    list_push_back(&s->waiting, q);
    *out = q;
    return SCHED_ACCEPTED;
}

static void release_kv(sched *s, sched_seq *q)
{
    if (q->n_blocks)
        kvb_release(s->kv, q->blocks, q->n_blocks);
    q->n_blocks = 0;
    q->n_computed = 0;
    q->n_pending = 0;
    q->epoch++; /* what outstanding steps sample for it is dropped */
    if (q->slot >= 0)
        s->free_slots[s->n_free_slots++] = q->slot;
    q->slot = -1;
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

/* The newest running sequence that is not in the plan being built, or NULL. */
static sched_seq *pick_victim(sched *s)
{
    for (sched_seq *q = s->running.tail; q; q = q->prev)
        if (q->plan_mark != s->serial)
            return q;
    return NULL;
}

static inline int32_t virt_len(const sched_seq *q) { return q->n_tokens + q->n_pending; }

static void plan_add(sched *s, int b, sched_seq *q, int32_t n_tokens)
{
    struct plan_buf *pb = &s->bufs[b];
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
    pb->seqs[i] = q;
    pb->epochs[i] = q->epoch;
    pb->got[i] = 0;
    q->plan_mark = s->serial;
    q->plan_pos[b] = i;
    q->n_computed += n_tokens;
    q->n_pending += st->logits_mode != GM_LOGITS_NONE;
    q->scheduled = true;
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
        int64_t need = kvb_blocks_for(s->kv, q->n_computed + 1) - q->n_blocks;
        bool self = false;
        while (need > kvb_free_count(s->kv)) {
            sched_seq *victim = pick_victim(s);
            if (!victim || victim == q) {
                self = true;
                break;
            }
            if (victim == next)
                next = victim->next;
            preempt(s, victim);
            preempted++;
        }
        if (self) { /* q is the newest unplanned sequence: it yields */
            preempt(s, q);
            preempted++;
            continue;
        }
        if (need > 0) {
            kvb_alloc(s->kv, (int32_t)need, q->blocks + q->n_blocks);
            q->n_blocks += (int32_t)need;
        }
        plan_add(s, b, q, 1);
        budget--;
    }
    /* 2. prefill chunks of running sequences (their blocks were taken at admission) */
    for (sched_seq *q = s->running.head; q && budget > 0; q = q->next) {
        int32_t unfed = q->n_tokens - q->n_computed;
        if (q->plan_mark == s->serial || unfed <= 1 || q->n_pending > 0)
            continue;
        int32_t chunk = unfed < budget ? unfed : budget;
        plan_add(s, b, q, chunk);
        budget -= chunk;
    }
    /* 3. admit waiting sequences, FIFO */
    while (budget > 0 && s->n_free_slots > 0 && s->waiting.head) {
        sched_seq *q = s->waiting.head;
        int64_t need = kvb_blocks_for(s->kv, q->n_tokens);
        if (need > kvb_free_count(s->kv))
            break;
        list_remove(&s->waiting, q);
        kvb_alloc(s->kv, (int32_t)need, q->blocks);
        q->n_blocks = (int32_t)need;
        q->n_computed = 0;
        q->n_pending = 0;
        q->slot = s->free_slots[--s->n_free_slots];
        q->state = SCHED_RUNNING;
        list_push_back(&s->running, q);
        int32_t chunk = q->n_tokens < budget ? q->n_tokens : budget;
        plan_add(s, b, q, chunk);
        budget -= chunk;
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
    return plan->n;
}

int32_t sched_outstanding(const sched *s) { return s->n_out; }

static bool is_stop_token(const sched *s, const sched_seq *q, int32_t tok)
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
    if (s->n_out == 0 || plan->steps != s->bufs[s->head].steps)
        return; /* not the oldest outstanding plan: a caller bug, nothing to apply */
    struct plan_buf *pb = &s->bufs[s->head];
    s->head = (s->head + 1) % SCHED_MAX_OUTSTANDING;
    s->n_out--;
    for (int32_t i = 0; i < pb->n; i++) {
        pb->got[i] = 0;
        sched_seq *q = pb->seqs[i];
        if (!q || q->state != SCHED_RUNNING || pb->epochs[i] != q->epoch ||
            pb->steps[i].logits_mode == GM_LOGITS_NONE)
            continue; /* freed, finished (an extra run-ahead step), preempted, or no sample */
        q->n_pending--;
        int32_t tok = tokens[i];
        if (tok < 0) {
            sched_finish_seq(s, q, SCHED_FINISH_ERROR);
            continue;
        }
        q->tokens[q->n_tokens++] = tok;
        pb->got[i] = 1;
        if (is_stop_token(s, q, tok)) {
            q->stop_token = true;
            sched_finish_seq(s, q, SCHED_FINISH_STOP);
        } else if (q->n_tokens - q->n_prompt >= q->max_new || q->n_tokens >= q->cap) {
            sched_finish_seq(s, q, SCHED_FINISH_LENGTH);
        }
    }
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
    return n;
}

/* The counters take NULL (gemmad before its workers first started): nothing runs, nothing is held. */
int32_t sched_running(const sched *s) { return s ? s->running.n : 0; }
int32_t sched_waiting(const sched *s) { return s ? s->waiting.n : 0; }
int64_t sched_preemptions(const sched *s) { return s ? s->preemptions : 0; }
int64_t sched_kv_free(const sched *s) { return s ? kvb_free_count(s->kv) : 0; }
int64_t sched_kv_used(const sched *s) { return s ? kvb_used(s->kv) : 0; }
int64_t sched_kv_total(const sched *s) { return s ? kvb_total(s->kv) : 0; }
bool sched_idle(const sched *s) { return !s || (s->running.n == 0 && s->waiting.n == 0); }
sched_seq *sched_first_waiting(sched *s) { return s ? s->waiting.head : NULL; }
