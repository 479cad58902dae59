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
    /* the current plan: [max_seqs] each */
    gm_seq_step *steps;
    sched_seq **plan_seqs;
    int32_t plan_n;
};

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
    s->steps = calloc((size_t)o->max_seqs, sizeof(gm_seq_step));
    s->plan_seqs = calloc((size_t)o->max_seqs, sizeof(sched_seq *));
    if (!s->kv || !s->free_slots || !s->steps || !s->plan_seqs) {
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
    free(s->steps);
    free(s->plan_seqs);
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
    q->plan_idx = -1;
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
        if (q->plan_idx < 0)
            return q;
    return NULL;
}

static void plan_add(sched *s, sched_seq *q, int32_t n_tokens)
{
    int32_t i = s->plan_n++;
    gm_seq_step *st = &s->steps[i];
    st->slot = q->slot;
    st->tokens = q->tokens + q->n_computed;
    st->n_tokens = n_tokens;
    st->start_pos = q->n_computed;
    st->block_table = q->blocks;
    st->n_blocks = q->n_blocks;
    st->logits_mode = q->n_computed + n_tokens == q->n_tokens ? GM_LOGITS_LAST : GM_LOGITS_NONE;
    st->sampling = q->sampling;
    s->plan_seqs[i] = q;
    q->plan_idx = i;
    q->n_computed += n_tokens;
    q->scheduled = true;
}

int32_t sched_plan_step(sched *s, sched_plan *plan)
{
    /* forget the previous plan */
    for (int32_t i = 0; i < s->plan_n; i++)
        if (s->plan_seqs[i])
            s->plan_seqs[i]->plan_idx = -1;
    s->plan_n = 0;
    int32_t budget = s->o.max_tokens_per_step;
    int32_t preempted = 0;

    /* 1. decodes, oldest first */
    for (sched_seq *q = s->running.head, *next; q && budget > 0; q = next) {
        next = q->next;
        if (q->n_tokens - q->n_computed != 1)
            continue;
        int64_t need = kvb_blocks_for(s->kv, q->n_tokens) - q->n_blocks;
        bool self = false;
        while (need > kvb_free_count(s->kv)) {
            sched_seq *v = pick_victim(s);
            if (!v || v == q) {
                self = true;
                break;
            }
            if (v == next)
                next = v->next;
            preempt(s, v);
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
        plan_add(s, q, 1);
        budget--;
    }
    /* 2. prefill chunks of running sequences (their blocks were taken at admission) */
    for (sched_seq *q = s->running.head; q && budget > 0; q = q->next) {
        int32_t pending = q->n_tokens - q->n_computed;
        if (q->plan_idx >= 0 || pending <= 1)
            continue;
        int32_t chunk = pending < budget ? pending : budget;
        plan_add(s, q, chunk);
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
        q->slot = s->free_slots[--s->n_free_slots];
        q->state = SCHED_RUNNING;
        list_push_back(&s->running, q);
        int32_t chunk = q->n_tokens < budget ? q->n_tokens : budget;
        plan_add(s, q, chunk);
        budget -= chunk;
    }
    plan->steps = s->steps;
    plan->seqs = s->plan_seqs;
    plan->n = s->plan_n;
    plan->n_tokens = s->o.max_tokens_per_step - budget;
    plan->n_preempted = preempted;
    return plan->n;
}

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
    for (int32_t i = 0; i < plan->n; i++) {
        sched_seq *q = plan->seqs[i];
        if (!q || q->state != SCHED_RUNNING || plan->steps[i].logits_mode == GM_LOGITS_NONE)
            continue;
        int32_t tok = tokens[i];
        if (tok < 0) {
            sched_finish_seq(s, q, SCHED_FINISH_ERROR);
            continue;
        }
        q->tokens[q->n_tokens++] = tok;
        if (is_stop_token(s, q, tok)) {
            q->stop_token = true;
            sched_finish_seq(s, q, SCHED_FINISH_STOP);
        } else if (q->n_tokens - q->n_prompt >= q->max_new || q->n_tokens >= q->cap) {
            sched_finish_seq(s, q, SCHED_FINISH_LENGTH);
        }
    }
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
    if (q->plan_idx >= 0 && q->plan_idx < s->plan_n && s->plan_seqs[q->plan_idx] == q)
        s->plan_seqs[q->plan_idx] = NULL;
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

int32_t sched_running(const sched *s) { return s->running.n; }
int32_t sched_waiting(const sched *s) { return s->waiting.n; }
int64_t sched_preemptions(const sched *s) { return s->preemptions; }
int64_t sched_kv_free(const sched *s) { return kvb_free_count(s->kv); }
int64_t sched_kv_used(const sched *s) { return kvb_used(s->kv); }
int64_t sched_kv_total(const sched *s) { return kvb_total(s->kv); }
bool sched_idle(const sched *s) { return s->running.n == 0 && s->waiting.n == 0; }
sched_seq *sched_first_waiting(sched *s) { return s->waiting.head; }
