/* sched.h - in-flight batching: which tokens of which sequences run in the next step.
 *
 * Pure bookkeeping, no I/O: gemmad asks for a plan (gm_seq_step entries for
 * wk_pool_submit), runs it, and commits the sampled tokens; tests drive the
 * same calls with a fake token source.
 *
 * Every step, under max_tokens_per_step and max_seqs:
 *   1. each running sequence with one pending token decodes it (oldest first);
 *      when the KV pool has no block for it, the newest sequence not yet in
 *      this step is preempted: its blocks are freed and it goes back to the
 *      front of the waiting queue, to be recomputed later from prompt +
 *      generated tokens (sampling draws depend only on (seed, position), so
 *      its output does not change);
 *   2. running sequences still prefilling get the rest of the budget in chunks;
 *   3. waiting sequences are admitted in FIFO order while a slot and the blocks
 *      for all their known tokens are free, and start prefilling.
 * A sequence's tokens array is its prompt followed by what it generated;
 * n_computed of them are in the KV cache.
 *
 * Run-ahead: up to two plans may be outstanding (planned, not yet committed).
 * The second is planned before the first one's tokens are known: a sequence
 * whose last token is still being sampled decodes it as -1 ("the token this
 * slot sampled in its previous step", GM_TOKEN_PREVIOUS in ctl/step.h), and n_pending counts
 * such tokens. Length limits count them, so a sequence never runs past
 * max_tokens or the context; a stop token or stop string is only seen at the
 * commit, so one extra step may already be planned for a finished sequence:
 * its token is discarded at that step's commit. A sequence that finishes, is
 * cancelled or preempted gives its blocks and slot back at once: they can only
 * go to plans made later, which the workers run after the outstanding ones, so
 * no step ever sees a block that another sequence of the same or an earlier
 * step still uses. Preemption bumps the sequence's epoch, so the tokens of its
 * outstanding steps are discarded too (recompute gives the same ones).
 *
 * Shared blocks (daemon/kvblocks.h). With the prefix cache on, every full
 * block of known tokens a sequence computes is registered, and a sequence
 * being admitted takes the longest registered prefix of its tokens (whole
 * blocks, never all of its tokens: the last one is always computed, for its
 * logits), so its first entry starts at start_pos = the cached tokens. A
 * block is only found by plans made after the one that writes it. A
 * sequence with penalties (gm_sampling_has_penalties) takes nothing from the
 * cache and does not fork (n > 1): the workers build its penalty history
 * from its entries, which must start at position 0 (worker/engine_pen.h).
 *
 * n > 1 (sched_add with r->n): n sequences of one prompt, seeds seed + i.
 * The first prefills the prompt; the others wait (they are skipped, not
 * blocking the queue) until its last prompt chunk is in a plan, then fork
 * in a later plan: each takes the first one's prompt blocks by reference and
 * computes only its last prompt token (for its own sample), writing it into
 * its own copy of the block that holds it. If the first sequence ends or is
 * freed before they fork, they are admitted like any other sequence (with the
 * prefix cache, its cached blocks still serve them).
 *
 * Speculative decoding (r->spec_k > 0, daemon/spec.h, docs/SPECULATIVE.md): a running sequence whose
 * tokens are all known drafts up to k tokens by prompt lookup and decodes its last token and the drafts
 * in one GM_LOGITS_VERIFY entry, with blocks for every drafted position; the commit keeps the drafts the
 * samples confirm and the first sample that differs, sets n_computed to what is right in the KV (the
 * next entry overwrites the rejected positions) and gives back blocks that hold only rejected positions.
 * Such a sequence does not run ahead while it drafts (it is planned only when none of its steps is
 * outstanding), and only tokens it accepted are ever registered in the prefix cache. When the lookup
 * finds nothing it decodes plainly, running ahead, for SPEC_IDLE_PLANS plans, then waits one step for
 * its last token and looks again.
 *
 * Copy-on-write: before an entry writes into a block that another table also
 * holds, the writer gets a fresh block and the plan carries a copy (old ->
 * new) that the workers run before the step's forward pass; the entry then
 * resends its table (gm_seq_step.reset).
 *
 * Beam groups (sched_req.beam_width = W > 1): W sequences scheduled as one. The first holds the prompt;
 * the others start dormant (no tokens, no blocks: n_tokens == 0) and get a history by
 * sched_beam_reseat. A beam never runs ahead: a plan feeds it only the token the caller appended, and
 * at the commit the token the workers sampled is not appended; instead beam_ready says its
 * log-probabilities are in (gm_seq_step's top_logprobs: the caller asked for them in the sampling).
 * Once every non-dormant beam of the group is ready (sched_beam_ready), the caller picks the next round
 * and re-points the beams: beam i takes beam parent[i]'s blocks by reference and its tokens, plus the
 * new token; the write of that token into a shared partial block goes through copy-on-write. A group
 * is admitted whole (slots for every beam, blocks for every known token) and preempted whole, so a
 * group never waits on itself holding what its missing beams need. */
#ifndef GM_SCHED_H
#define GM_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/sampling.h"
#include "common/status.h"
#include "ctl/step.h"

#define SCHED_MAX_STOP_IDS 64
#define SCHED_MAX_OUTSTANDING 2 /* plans made and not yet committed */
#define SCHED_MAX_N 64          /* sequences of one request (n) */
#define SCHED_MAX_BEAM 8        /* beams of one request (beam_width) */

typedef enum sched_state {
    SCHED_WAITING = 0,
    SCHED_RUNNING,
    SCHED_FINISHED,
} sched_state;

typedef enum sched_finish {
    SCHED_FINISH_NONE = 0,
    SCHED_FINISH_LENGTH, /* max_tokens or the context */
    SCHED_FINISH_STOP,   /* EOS, <end_of_turn>, stop id (stop_token set) or stop string */
    SCHED_FINISH_CANCELLED,
    SCHED_FINISH_ERROR,
} sched_finish;

typedef struct sched_opts {
    int32_t max_seqs;            /* running sequences (= engine max_seqs; slots 0..max_seqs-1) */
    int32_t max_tokens_per_step; /* tokens in one step (= engine max_tokens) */
    int32_t max_context;         /* longest sequence, prompt + generated */
    int32_t max_waiting;         /* queue bound; sched_add fails with GM_ERR_CAPACITY beyond it */
    int64_t kv_blocks;           /* blocks in the workers' KV pool */
    int32_t kv_block_size;
    int32_t eos_id;              /* 1 */
    int32_t eot_id;              /* <end_of_turn> 107, a stop token in chat mode */
    bool prefix_cache;           /* register full blocks and reuse them (gemmad: on unless --prefix-cache false) */
} sched_opts;

/* What a request asks for, checked by sched_add. */
typedef struct sched_req {
    const int32_t *prompt; /* [n_prompt] copied */
    int32_t n_prompt;
    int32_t max_tokens;    /* 0 = until the context (or the KV pool) is full */
    gm_sampling sampling;
    const int32_t *stop_ids; /* [n_stop_ids] copied */
    int32_t n_stop_ids;
    bool ignore_eos;       /* do not stop at EOS / <end_of_turn> */
    bool stop_at_eot;      /* chat: <end_of_turn> stops too */
    int32_t min_tokens;    /* the engine masks the stop tokens (EOS, <end_of_turn>, stop ids) before this many
                            * outputs (sampling.min_tokens; sampling.n_prompt is set from the prompt) */
    int32_t n;             /* sequences from this prompt, 1..SCHED_MAX_N (0 = 1); sequence i samples with
                            * seed + i */
    int32_t beam_width;    /* beam search (daemon/beam.h): 2..SCHED_MAX_BEAM sequences, one group; 0 or 1 = off.
                            * n must be 1 (the group's sequences are its beams; out[] receives beam_width) */
    void *user;            /* the caller's request; never touched */
    int32_t spec_k;        /* speculative decoding: tokens drafted per step, 0..SPEC_MAX_K (daemon/spec.h);
                            * 0 = off. Ignored (off) with penalties or log-probabilities */
} sched_req;

typedef struct sched_seq sched_seq;
struct sched_seq {
    void *user;
    int32_t *tokens;    /* [cap] prompt then generated ids */
    int32_t n_prompt, n_tokens, cap;
    int32_t n_computed; /* tokens whose KV is (being) written, pending ones included */
    int32_t n_pending;  /* tokens outstanding steps are sampling for it (not in tokens yet) */
    uint32_t epoch;     /* bumped at each preemption: older steps' tokens are discarded */
    int32_t *blocks;    /* [blocks_cap] block table, logical order */
    int32_t n_blocks, blocks_cap;
    int32_t slot;       /* 0..max_seqs-1 while running, else -1 */
    int32_t max_new;    /* generated tokens allowed (resolved max_tokens) */
    gm_sampling sampling; /* n_prompt, min_tokens filled in */
    gm_stop_set stops;    /* min_tokens > 0: what the engine masks before then (every entry carries it) */
    int32_t stop_ids[SCHED_MAX_STOP_IDS];
    int32_t n_stop_ids;
    bool ignore_eos, stop_at_eot;
    sched_state state;
    sched_finish finish;
    bool stop_token;    /* finished on a stop token (EOS / EOT / stop id): the last id is not text */
    int32_t preemptions;
    bool scheduled;     /* has been in a step at least once */
    uint64_t plan_mark; /* serial of the last plan that took it */
    int32_t plan_pos[SCHED_MAX_OUTSTANDING]; /* its entry in each plan buffer, -1 if none */
    sched_seq *prev, *next; /* in the running or waiting list */
    /* shared blocks */
    int32_t index;        /* its place among the n sequences of its request (0 when n = 1) */
    uint64_t *names;      /* [blocks_cap] prefix-cache names of its first n_named blocks */
    int32_t n_named;
    int32_t reg_at;       /* known and computed tokens at which its next block registers (INT32_MAX: never) */
    int32_t n_cached;     /* tokens found in the prefix cache at its last admission */
    bool forked;          /* started from another sequence's prompt blocks (n > 1) */
    bool table_reset;     /* its next entry resends its block table */
    uint64_t ready_serial; /* the plan that fed its last prompt token (0: not yet, or preempted since) */
    sched_seq *fork_of;   /* n > 1, not forked yet: the sequence whose prompt blocks it will share */
    sched_seq *kids, *kid_next; /* the sequences waiting to fork from this one */
    /* beam search (see "Beam groups" above) */
    sched_seq *beam_lead; /* the group's first sequence (itself for the first); NULL: not a beam */
    sched_seq **beams;    /* first sequence only: [beam_width] the group, beams[i]->index == i */
    int32_t beam_width;
    bool beam_ready;      /* its last token's log-probabilities came back (and nothing since changed it) */
    int32_t spec_k;       /* tokens to draft per step (speculative decoding), 0 = off */
    int32_t spec_idle;    /* plans left in which it decodes plainly (and may run ahead) after a failed lookup */
};

typedef struct sched sched;

/* One step: entries for wk_pool_submit and the sequence behind each entry
 * (NULL after the sequence was freed while the step was in flight). Owned by
 * the scheduler, valid until its commit (or sched_abandon). */
typedef struct sched_plan {
    gm_seq_step *steps; /* [n] */
    sched_seq **seqs;   /* [n] */
    uint8_t *got;       /* [n] set by sched_commit_step: how many tokens were appended to the sequence (1, or
                         * up to 1 + k for a verify entry) */
    int32_t n;
    int32_t n_tokens;   /* sum of steps[i].n_tokens */
    int32_t n_preempted; /* sequences preempted while planning this step */
    uint64_t serial;    /* 1, 2, ... in planning order */
    const gm_block_copy *copies; /* [n_copies] run before the step (copy-on-write), in order */
    int32_t n_copies;
} sched_plan;

/* NULL on bad options (names the value in gm_last_error) or no memory. */
sched *sched_new(const sched_opts *o);
void sched_destroy(sched **s); /* frees every sequence still held */

/* Why sched_add refused a request (detail in gm_last_error()). */
typedef enum sched_reject {
    SCHED_ACCEPTED = 0,
    SCHED_REJECT_INVALID,  /* empty prompt, max_tokens < 0, too many stop ids -> INVALID_ARGUMENT */
    SCHED_REJECT_TOO_LONG, /* prompt + max_tokens can never fit the context or the KV pool */
    SCHED_REJECT_FULL,     /* the waiting queue is full -> OVERLOADED */
    SCHED_REJECT_NOMEM,
} sched_reject;

/* Check a request and queue it (ids are not checked against the vocabulary:
 * the caller knows it). out[0..n) receives its new sequences (n = r->n, or 1),
 * each owned by the scheduler until sched_seq_free. */
sched_reject sched_add(sched *s, const sched_req *r, sched_seq **out);

/* Build the next step into *plan; returns plan->n (0 = nothing runnable, and
 * nothing outstanding added). With a plan already outstanding this is the
 * run-ahead step; at most SCHED_MAX_OUTSTANDING (else returns 0). */
int32_t sched_plan_step(sched *s, sched_plan *plan);

/* Plans made and not committed. */
int32_t sched_outstanding(const sched *s);

/* Apply the oldest outstanding plan's sampled tokens (tokens[i] for entry i;
 * -1 where no logits were asked); plans are committed in planning order. A
 * sequence that reaches a stop condition becomes SCHED_FINISHED with its
 * blocks and slot freed. Tokens of finished or preempted sequences are
 * dropped. The caller then walks plan->seqs where plan->got[i] to stream what
 * changed (and finished ones to end them). */
void sched_commit_step(sched *s, const sched_plan *plan, const int32_t *tokens);

/* sched_commit_step for a plan with verify entries (speculative decoding): verify [n_verify] holds their
 * samples, n_tokens per such entry in plan order (wk_pool_verify). A verify entry appends its accepted
 * drafts and the target's next token (daemon/spec.h), stopping at a stop token or the length limit;
 * false (nothing applied) when n_verify does not match the plan. */
bool sched_commit_verified(sched *s, const sched_plan *plan, const int32_t *tokens, const int32_t *verify,
                           int64_t n_verify);

/* Forget every outstanding plan (the workers failed; call after
 * sched_fail_running, which ends every sequence they held). */
void sched_abandon(sched *s);

/* End a sequence now (stop string, cancel, error): frees its blocks and slot at
 * once; it stays allocated until sched_seq_free. No-op if already finished. */
void sched_finish_seq(sched *s, sched_seq *q, sched_finish why);

/* Free a sequence (finishing it first if needed). Nulls *q. */
void sched_seq_free(sched *s, sched_seq **q);

/* Drop every running sequence's KV (the workers lost it): each is finished
 * with SCHED_FINISH_ERROR; out[0..n) receives them (caller frees them after
 * replying), and the prefix cache forgets every block. Returns n. out must
 * hold max_seqs entries. */
int32_t sched_fail_running(sched *s, sched_seq **out);

/* True when the group of beam lead can take its next round: every beam running, every non-dormant one
 * ready. */
bool sched_beam_ready(const sched *s, const sched_seq *lead);

/* The next round of lead's group: beam i becomes beam parent[i]'s history + token[i] (read from the
 * histories before any changes), for i in 0..beam_width; its ready flag clears and its next plan feeds
 * token[i]. GM_ERR_NOMEM leaves the group as it was. */
gm_status sched_beam_reseat(sched *s, sched_seq *lead, const int32_t *parent, const int32_t *token);

/* True when tok ends q's output: EOS (unless ignore_eos), <end_of_turn> in chat, a stop id. */
bool sched_is_stop(const sched *s, const sched_seq *q, int32_t tok);

/* Generated tokens of q so far. */
static inline int32_t sched_seq_generated(const sched_seq *q) { return q->n_tokens - q->n_prompt; }

int32_t sched_running(const sched *s);
int32_t sched_waiting(const sched *s);
int64_t sched_preemptions(const sched *s);
int64_t sched_kv_free(const sched *s);
int64_t sched_kv_used(const sched *s);
int64_t sched_kv_total(const sched *s);
int64_t sched_kv_cached(const sched *s);     /* blocks kept for the prefix cache, no reference */
int64_t sched_prefix_queries(const sched *s); /* tokens of admitted sequences looked up in the cache */
int64_t sched_prefix_hits(const sched *s);    /* of those, tokens found (prefill skipped) */
int64_t sched_forks(const sched *s);          /* sequences started from another's prompt blocks (n > 1) */
int64_t sched_beam_forks(const sched *s);     /* beams re-pointed at another beam's history */
int64_t sched_beam_shared(const sched *s);    /* blocks those took by reference instead of computing them */
int64_t sched_evictions(const sched *s);      /* cached blocks reused for other content */
int64_t sched_spec_steps(const sched *s);     /* verify entries committed (speculative decoding) */
int64_t sched_spec_drafted(const sched *s);   /* tokens they drafted */
int64_t sched_spec_accepted(const sched *s);  /* of those, tokens the target confirmed */
/* The whole accounting, for tests: kvb_check, every block's refcount = the
 * tables holding it, no sequence about to write a block another holds, slots.
 * false with the first problem in why. */
bool sched_check(const sched *s, char *why, size_t cap);
/* True when there is nothing to run or wait for. */
bool sched_idle(const sched *s);
/* The oldest waiting sequence, or NULL (for shutdown: cancel what never started). */
sched_seq *sched_first_waiting(sched *s);

#endif
