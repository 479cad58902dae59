/* test_daemon_sched.c - the scheduler and KV block manager without processes.
 *
 * A fake engine stands in for the workers: it writes each fed token into a
 * paged "KV" store through the block table, and the token it samples is a
 * hash of (seed, everything in the sequence's KV read back through the block
 * table). So a wrong block table, a wrong start_pos, two sequences sharing a
 * block, or a recompute that feeds other tokens all change the output. Like
 * a real engine it resolves a -1 token from the slot's last sample, so the
 * run-ahead tests (two plans outstanding, the second made before the first
 * one's tokens are committed) check the same outputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sampling.h"
#include "daemon/kvblocks.h"
#include "daemon/sched.h"

#define VOCAB 1000
#define MAX_BLOCKS_FAKE 4096

#define MAX_SLOTS_FAKE 64

typedef struct fake_kv {
    int32_t block_size;
    int32_t *data;  /* [MAX_BLOCKS_FAKE, block_size] token written at each slot */
    int32_t *owner; /* [MAX_BLOCKS_FAKE] slot that last wrote the block (-1) */
    int32_t last[MAX_SLOTS_FAKE]; /* each slot's last sample, -1 = none (what -1 tokens read) */
    int n_fed;      /* -1 tokens resolved */
} fake_kv;

/* 0: never EOS. Else a sampled token is EOS when (seed + position) % g_eos_mod == 0. */
static int g_eos_mod;

static int32_t fake_token(uint64_t h, uint64_t seed, int32_t end)
{
    if (g_eos_mod && (seed + (uint64_t)end) % (uint64_t)g_eos_mod == 0)
        return 1;
    return 3 + (int32_t)(h % (VOCAB - 3));
}

static void fake_init(fake_kv *f, int32_t bs)
{
    f->block_size = bs;
    f->data = malloc(sizeof(int32_t) * MAX_BLOCKS_FAKE * bs);
    f->owner = malloc(sizeof(int32_t) * MAX_BLOCKS_FAKE);
    for (int i = 0; i < MAX_BLOCKS_FAKE * bs; i++)
        f->data[i] = -7;
    for (int i = 0; i < MAX_BLOCKS_FAKE; i++)
        f->owner[i] = -1;
    for (int i = 0; i < MAX_SLOTS_FAKE; i++)
        f->last[i] = -1;
    f->n_fed = 0;
}

static void fake_free(fake_kv *f)
{
    free(f->data);
    free(f->owner);
}

/* Run one step like an engine: the block copies first, then write every fed token, sample where asked. */
static void fake_step(fake_kv *f, const sched_plan *p, int32_t *out)
{
    int32_t bs = f->block_size;
    for (int32_t c = 0; c < p->n_copies; c++) {
        int32_t src = p->copies[c].src, dst = p->copies[c].dst;
        assert_true(src >= 0 && src < MAX_BLOCKS_FAKE && dst >= 0 && dst < MAX_BLOCKS_FAKE && src != dst);
        for (int32_t d = 0; d < c; d++) /* none written twice, none both written and read */
            assert_true(p->copies[d].dst != dst && p->copies[d].dst != src && p->copies[d].src != dst);
        memcpy(f->data + dst * bs, f->data + src * bs, sizeof(int32_t) * (size_t)bs);
    }
    /* no two entries share a slot; a block an entry writes is in no other entry's table */
    for (int32_t i = 0; i < p->n; i++)
        for (int32_t j = 0; j < p->n; j++) {
            if (i == j)
                continue;
            assert_int_not_equal(p->steps[i].slot, p->steps[j].slot);
            const gm_seq_step *w = &p->steps[i];
            for (int32_t a = w->start_pos / bs; a <= (w->start_pos + w->n_tokens - 1) / bs; a++)
                for (int32_t b = 0; b < p->steps[j].n_blocks; b++)
                    assert_int_not_equal(w->block_table[a], p->steps[j].block_table[b]);
        }
    for (int32_t i = 0; i < p->n; i++) {
        const gm_seq_step *s = &p->steps[i];
        int32_t end = s->start_pos + s->n_tokens;
        assert_true(s->n_blocks * f->block_size >= end);
        assert_true(end <= 1024); /* max_context of opts() */
        assert_true(s->slot >= 0 && s->slot < MAX_SLOTS_FAKE);
        for (int32_t k = 0; k < s->n_tokens; k++) {
            int32_t pos = s->start_pos + k;
            int32_t blk = s->block_table[pos / f->block_size];
            assert_true(blk >= 0 && blk < MAX_BLOCKS_FAKE);
            int32_t t = s->tokens[k];
            if (t == -1) { /* run-ahead: the slot's previous sample */
                assert_int_equal(s->n_tokens, 1);
                assert_true(s->start_pos > 0);
                t = f->last[s->slot];
                assert_true(t >= 0);
                f->n_fed++;
            }
            f->data[blk * f->block_size + pos % f->block_size] = t;
        }
        if (s->logits_mode == GM_LOGITS_NONE) {
            out[i] = -1;
            f->last[s->slot] = -1;
            continue;
        }
        /* "attention" over the whole KV read back through the table */
        uint64_t h = s->sampling.seed * 0x9e3779b97f4a7c15ull + (uint64_t)end;
        for (int32_t pos = 0; pos < end; pos++) {
            int32_t blk = s->block_table[pos / f->block_size];
            int32_t t = f->data[blk * f->block_size + pos % f->block_size];
            h = gm_mix64(h ^ (uint64_t)(t + 1) * 0x100000001b3ull);
        }
        out[i] = fake_token(h, s->sampling.seed, end); /* never EOS unless g_eos_mod */
        f->last[s->slot] = out[i];
    }
}

/* The output a sequence gets when it runs alone with plenty of room: up to
 * n_gen tokens, fewer when an EOS comes first (g_eos_mod). Returns the count. */
static int32_t reference(const int32_t *prompt, int32_t n_prompt, uint64_t seed, int32_t n_gen, int32_t *out)
{
    int32_t *all = malloc(sizeof(int32_t) * (size_t)(n_prompt + n_gen + 1));
    memcpy(all, prompt, sizeof(int32_t) * (size_t)n_prompt);
    int32_t g = 0;
    while (g < n_gen) {
        int32_t end = n_prompt + g;
        uint64_t h = seed * 0x9e3779b97f4a7c15ull + (uint64_t)end;
        for (int32_t pos = 0; pos < end; pos++)
            h = gm_mix64(h ^ (uint64_t)(all[pos] + 1) * 0x100000001b3ull);
        all[end] = fake_token(h, seed, end);
        out[g++] = all[end];
        if (all[end] == 1)
            break;
    }
    free(all);
    return g;
}

static sched_opts opts(int32_t max_seqs, int32_t budget, int64_t blocks, int32_t bs)
{
    sched_opts o = {0};
    o.max_seqs = max_seqs;
    o.max_tokens_per_step = budget;
    o.max_context = 1024;
    o.max_waiting = 1000;
    o.kv_blocks = blocks;
    o.kv_block_size = bs;
    o.eos_id = 1;
    o.eot_id = 107;
    return o;
}

static void make_prompt(int32_t *p, int32_t n, int seed)
{
    p[0] = 2;
    for (int32_t i = 1; i < n; i++)
        p[i] = 3 + (int32_t)((uint32_t)(seed * 7919 + i * 104729) % (VOCAB - 3));
}

/* The pool's accounting (sched_check): refcounts = tables, free + cached + used == total. */
static void check_kv(const sched *s)
{
    char why[256];
    if (!sched_check(s, why, sizeof why))
        fail_msg("KV accounting: %s", why);
}

/* Run until idle; returns steps taken. Checks the token budget every step. */
static int run_all(sched *s, fake_kv *f, int32_t budget, int32_t max_seqs, int *max_batch)
{
    sched_plan p;
    int32_t toks[256];
    int steps = 0;
    while (!sched_idle(s)) {
        int32_t n = sched_plan_step(s, &p);
        assert_true(n > 0);
        assert_true(n <= max_seqs);
        assert_true(p.n_tokens <= budget);
        int32_t sum = 0;
        for (int32_t i = 0; i < n; i++)
            sum += p.steps[i].n_tokens;
        assert_int_equal(sum, p.n_tokens);
        if (max_batch && n > *max_batch)
            *max_batch = n;
        check_kv(s);
        fake_step(f, &p, toks);
        sched_commit_step(s, &p, toks);
        check_kv(s);
        /* finished sequences stay allocated until the test frees them */
        steps++;
        assert_true(steps < 100000);
    }
    return steps;
}

/* Run until idle with two plans outstanding (run-ahead): plan k+1 is made
 * before step k is committed. The fake workers run each plan as soon as it is
 * made (they run in order); the commit comes one step later. after_commit (may
 * be NULL) runs after each commit. Returns the steps taken. */
typedef void (*commit_hook)(sched *s, void *arg);

static int run_all_ahead(sched *s, fake_kv *f, int32_t budget, int32_t max_seqs, int *max_batch,
                         commit_hook after_commit, void *arg)
{
    sched_plan p[2];
    int32_t toks[2][256];
    int n_out = 0, steps = 0, both = 0;
    while (!sched_idle(s) || n_out > 0) {
        while (n_out < 2) {
            int32_t n = sched_plan_step(s, &p[n_out]);
            if (n == 0)
                break;
            assert_true(n <= max_seqs);
            assert_true(p[n_out].n_tokens <= budget);
            if (max_batch && n > *max_batch)
                *max_batch = n;
            check_kv(s);
            fake_step(f, &p[n_out], toks[n_out]);
            n_out++;
        }
        assert_int_equal(sched_outstanding(s), n_out);
        assert_true(n_out > 0); /* something must be runnable or outstanding */
        both += n_out == 2;
        sched_commit_step(s, &p[0], toks[0]);
        check_kv(s);
        p[0] = p[1];
        memcpy(toks[0], toks[1], sizeof toks[0]);
        n_out--;
        if (after_commit)
            after_commit(s, arg);
        check_kv(s);
        steps++;
        assert_true(steps < 100000);
    }
    assert_true(both > 0);
    return steps;
}

#define NSEQ 24

/* Many sequences, ragged prompts, chunked prefill, small budget: outputs equal
 * each sequence alone; every block comes back. With eos_mod, some stop early
 * at EOS (under run-ahead their extra step's token is dropped). */
static void inflight_matches_alone(bool ahead, int eos_mod)
{
    int32_t bs = 4;
    g_eos_mod = eos_mod;
    sched_opts o = opts(8, 24, 1024, bs);
    sched *s = sched_new(&o);
    assert_non_null(s);
    fake_kv f;
    fake_init(&f, bs);
    sched_seq *q[NSEQ];
    int32_t prompts[NSEQ][80];
    int32_t np[NSEQ], ngen[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        np[i] = 1 + (i * 13) % 70;
        ngen[i] = 1 + (i * 7) % 20;
        make_prompt(prompts[i], np[i], i);
        sched_req r = {0};
        r.prompt = prompts[i];
        r.n_prompt = np[i];
        r.max_tokens = ngen[i];
        r.sampling.seed = (uint64_t)i * 31;
        assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
    }
    assert_int_equal(sched_waiting(s), NSEQ);
    int max_batch = 0;
    if (ahead)
        run_all_ahead(s, &f, 24, 8, &max_batch, NULL, NULL);
    else
        run_all(s, &f, 24, 8, &max_batch);
    assert_true(max_batch > 1); /* sequences really shared steps */
    assert_true(ahead ? f.n_fed > 0 : f.n_fed == 0);
    int stopped = 0;
    for (int i = 0; i < NSEQ; i++) {
        int32_t want[32];
        int32_t n = reference(prompts[i], np[i], (uint64_t)i * 31, ngen[i], want);
        assert_int_equal(q[i]->state, SCHED_FINISHED);
        bool eos = n > 0 && want[n - 1] == 1;
        stopped += eos;
        assert_int_equal(q[i]->finish, eos ? SCHED_FINISH_STOP : SCHED_FINISH_LENGTH);
        assert_int_equal(q[i]->stop_token, eos);
        assert_int_equal(sched_seq_generated(q[i]), n);
        assert_memory_equal(q[i]->tokens + np[i], want, sizeof(int32_t) * (size_t)n);
        sched_seq_free(s, &q[i]);
    }
    if (eos_mod)
        assert_true(stopped > 0);
    assert_int_equal(sched_kv_used(s), 0);
    assert_int_equal(sched_preemptions(s), 0);
    assert_int_equal(sched_outstanding(s), 0);
    sched_destroy(&s);
    fake_free(&f);
    g_eos_mod = 0;
}

static void test_inflight_matches_alone(void **state)
{
    (void)state;
    inflight_matches_alone(false, 0);
}

static void test_runahead_matches_alone(void **state)
{
    (void)state;
    inflight_matches_alone(true, 0);
}

/* EOS learned one step late: the extra step's token is discarded, the outputs
 * and lengths are those of each sequence alone. */
static void test_runahead_stop_late(void **state)
{
    (void)state;
    inflight_matches_alone(true, 7);
    inflight_matches_alone(false, 7);
}

/* A KV pool far too small for everyone at once: preemption must happen and the
 * outputs must not change. */
static void preemption_keeps_outputs(bool ahead, int eos_mod)
{
    int32_t bs = 4;
    g_eos_mod = eos_mod;
    /* each sequence needs up to ceil((40 + 30) / 4) = 18 blocks; 24 blocks in all */
    sched_opts o = opts(8, 64, 24, bs);
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, bs);
    enum { N = 10 };
    sched_seq *q[N];
    int32_t prompts[N][40];
    for (int i = 0; i < N; i++) {
        make_prompt(prompts[i], 10 + i * 3, 100 + i);
        sched_req r = {0};
        r.prompt = prompts[i];
        r.n_prompt = 10 + i * 3;
        r.max_tokens = 30;
        r.sampling.seed = 5 + (uint64_t)i;
        assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
    }
    if (ahead)
        run_all_ahead(s, &f, 64, 8, NULL, NULL, NULL);
    else
        run_all(s, &f, 64, 8, NULL);
    assert_true(sched_preemptions(s) > 0);
    int32_t total_pre = 0;
    for (int i = 0; i < N; i++) {
        int32_t want[30];
        int32_t n = reference(prompts[i], 10 + i * 3, 5 + (uint64_t)i, 30, want);
        assert_int_equal(q[i]->finish, n < 30 || want[29] == 1 ? SCHED_FINISH_STOP : SCHED_FINISH_LENGTH);
        assert_int_equal(sched_seq_generated(q[i]), n);
        assert_memory_equal(q[i]->tokens + q[i]->n_prompt, want, sizeof(int32_t) * (size_t)n);
        total_pre += q[i]->preemptions;
        sched_seq_free(s, &q[i]);
    }
    assert_int_equal(total_pre, sched_preemptions(s));
    assert_int_equal(sched_kv_used(s), 0);
    sched_destroy(&s);
    fake_free(&f);
    g_eos_mod = 0;
}

static void test_preemption_keeps_outputs(void **state)
{
    (void)state;
    preemption_keeps_outputs(false, 0);
}

static void test_runahead_preemption(void **state)
{
    (void)state;
    preemption_keeps_outputs(true, 0);
    preemption_keeps_outputs(true, 11);
}

/* EOS, stop ids, ignore_eos, <end_of_turn> in chat mode, max_tokens. */
static void test_stop_conditions(void **state)
{
    (void)state;
    sched_opts o = opts(4, 64, 64, 4);
    sched *s = sched_new(&o);
    int32_t prompt[] = {2, 5, 6};
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 3;
    r.max_tokens = 10;
    sched_seq *a, *b, *c, *d, *e;
    int32_t stop = 77;
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED); /* EOS stops */
    r.ignore_eos = true;
    assert_int_equal(sched_add(s, &r, &b), SCHED_ACCEPTED); /* EOS ignored */
    r.ignore_eos = false;
    r.stop_ids = &stop;
    r.n_stop_ids = 1;
    assert_int_equal(sched_add(s, &r, &c), SCHED_ACCEPTED); /* stop id */
    r.stop_ids = NULL;
    r.n_stop_ids = 0;
    r.stop_at_eot = true;
    assert_int_equal(sched_add(s, &r, &d), SCHED_ACCEPTED); /* EOT stops in chat */
    r.stop_at_eot = false;
    r.max_tokens = 2;
    assert_int_equal(sched_add(s, &r, &e), SCHED_ACCEPTED); /* length */

    sched_plan p;
    int32_t toks[8];
    /* step 1: prefill everyone; all sample 50 */
    assert_int_equal(sched_plan_step(s, &p), 4); /* max_seqs 4: e waits */
    for (int i = 0; i < p.n; i++)
        toks[i] = 50;
    sched_commit_step(s, &p, toks);
    /* step 2: a,b,c,d decode; then e admitted */
    assert_int_equal(sched_plan_step(s, &p), 4);
    for (int i = 0; i < p.n; i++) {
        sched_seq *q = p.seqs[i];
        toks[i] = q == a || q == b ? 1 : q == c ? 77 : q == d ? 107 : 9;
    }
    sched_commit_step(s, &p, toks);
    assert_int_equal(a->state, SCHED_FINISHED);
    assert_int_equal(a->finish, SCHED_FINISH_STOP);
    assert_true(a->stop_token);
    assert_int_equal(b->state, SCHED_RUNNING);
    assert_int_equal(c->finish, SCHED_FINISH_STOP);
    assert_true(c->stop_token);
    assert_int_equal(d->finish, SCHED_FINISH_STOP);
    /* blocks of finished sequences are free at once; slots too */
    assert_int_equal(sched_running(s), 1);
    /* e runs now and finishes by length after 2 tokens */
    for (int k = 0; k < 3 && e->state != SCHED_FINISHED; k++) {
        sched_plan_step(s, &p);
        for (int i = 0; i < p.n; i++)
            toks[i] = 9;
        sched_commit_step(s, &p, toks);
    }
    assert_int_equal(e->finish, SCHED_FINISH_LENGTH);
    assert_false(e->stop_token);
    assert_int_equal(sched_seq_generated(e), 2);
    sched_seq *all[] = {a, b, c, d, e};
    for (int i = 0; i < 5; i++)
        sched_seq_free(s, &all[i]);
    assert_int_equal(sched_kv_used(s), 0);
    assert_true(sched_idle(s));
    sched_destroy(&s);
}

/* Admission: too long for the context or the pool, empty, negative, queue full. */
static void test_admission(void **state)
{
    (void)state;
    sched_opts o = opts(4, 64, 8, 4); /* pool: 32 tokens; context 1024 */
    o.max_waiting = 2;
    sched *s = sched_new(&o);
    int32_t prompt[40];
    make_prompt(prompt, 40, 1);
    sched_req r = {0};
    r.prompt = prompt;
    sched_seq *q = NULL;
    r.n_prompt = 0;
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_INVALID);
    r.n_prompt = 5;
    r.max_tokens = -1;
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_INVALID);
    r.max_tokens = 28; /* 5 + 28 > 32 pool tokens */
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_TOO_LONG);
    r.n_prompt = 32;
    r.max_tokens = 0;
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_TOO_LONG);
    r.n_prompt = 5;
    r.max_tokens = 27; /* exactly fits */
    sched_seq *a, *b;
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED);
    r.max_tokens = 0; /* until the pool is full: 27 */
    assert_int_equal(sched_add(s, &r, &b), SCHED_ACCEPTED);
    assert_int_equal(b->max_new, 27);
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_FULL);
    /* the context limit too */
    sched_opts o2 = opts(4, 64, 1000, 4);
    o2.max_context = 16;
    sched *s2 = sched_new(&o2);
    r.n_prompt = 10;
    r.max_tokens = 7;
    assert_int_equal(sched_add(s2, &r, &q), SCHED_REJECT_TOO_LONG);
    r.max_tokens = 6;
    assert_int_equal(sched_add(s2, &r, &q), SCHED_ACCEPTED);
    sched_destroy(&s2);
    /* bad options */
    sched_opts bad = opts(0, 64, 8, 4);
    assert_null(sched_new(&bad));
    sched_seq_free(s, &a);
    sched_seq_free(s, &b);
    sched_destroy(&s);
}

/* Cancel (free) a running sequence while its step is "in flight": blocks come
 * back at once, the commit skips it, the others go on. */
static void test_cancel_frees_blocks(void **state)
{
    (void)state;
    int32_t bs = 4;
    sched_opts o = opts(4, 64, 64, bs);
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, bs);
    int32_t prompt[20];
    make_prompt(prompt, 20, 3);
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 20;
    r.max_tokens = 10;
    sched_seq *a, *b;
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED);
    assert_int_equal(sched_add(s, &r, &b), SCHED_ACCEPTED);
    sched_plan p;
    int32_t toks[4];
    sched_plan_step(s, &p);
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    sched_plan_step(s, &p);
    fake_step(&f, &p, toks); /* the workers took their copy; the step is in flight ... */
    int64_t used = sched_kv_used(s);
    assert_int_equal(used, 12); /* 2 x ceil(21 / 4) */
    sched_seq_free(s, &a);  /* ... when the cancel arrives */
    assert_null(a);
    assert_int_equal(sched_kv_used(s), used / 2);
    assert_int_equal(sched_running(s), 1);
    sched_commit_step(s, &p, toks); /* must skip the freed one */
    run_all(s, &f, 64, 4, NULL);
    assert_int_equal(sched_seq_generated(b), 10);
    sched_seq_free(s, &b);
    assert_int_equal(sched_kv_used(s), 0);
    sched_destroy(&s);
    fake_free(&f);
}

/* Worker failure: every running sequence is failed and its blocks freed;
 * waiting ones stay queued. */
static void test_fail_running(void **state)
{
    (void)state;
    sched_opts o = opts(2, 64, 64, 4);
    sched *s = sched_new(&o);
    int32_t prompt[] = {2, 3, 4};
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 3;
    r.max_tokens = 5;
    sched_seq *q[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
    sched_plan p;
    assert_int_equal(sched_plan_step(s, &p), 2);
    sched_seq *failed[2];
    assert_int_equal(sched_fail_running(s, failed), 2);
    assert_int_equal(failed[0]->finish, SCHED_FINISH_ERROR);
    assert_int_equal(sched_kv_used(s), 0);
    assert_int_equal(sched_waiting(s), 1);
    assert_int_equal(sched_running(s), 0);
    for (int i = 0; i < 3; i++)
        sched_seq_free(s, &q[i]);
    assert_true(sched_idle(s));
    sched_destroy(&s);
}

/* Run-ahead: a sequence cancelled (freed, or just finished) while it is in
 * both outstanding plans: its blocks come back at once, neither commit touches
 * it, the others' outputs do not change. */
static void test_runahead_cancel(void **state)
{
    (void)state;
    int32_t bs = 4;
    sched_opts o = opts(4, 64, 64, bs);
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, bs);
    enum { N = 3 };
    int32_t prompt[N][20];
    sched_seq *q[N];
    for (int i = 0; i < N; i++) {
        make_prompt(prompt[i], 20, 30 + i);
        sched_req r = {0};
        r.prompt = prompt[i];
        r.n_prompt = 20;
        r.max_tokens = 10;
        r.sampling.seed = 77 + (uint64_t)i;
        assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
    }
    sched_plan p1, p2;
    int32_t t1[4], t2[4];
    assert_int_equal(sched_plan_step(s, &p1), N); /* prefills */
    fake_step(&f, &p1, t1);
    assert_int_equal(sched_plan_step(s, &p2), N); /* decodes of the tokens being sampled */
    for (int i = 0; i < N; i++) {
        assert_int_equal(p2.steps[i].n_tokens, 1);
        assert_int_equal(p2.steps[i].tokens[0], -1);
        assert_int_equal(p2.steps[i].start_pos, 20);
    }
    fake_step(&f, &p2, t2);
    assert_int_equal(sched_outstanding(s), 2);
    sched_plan p3;
    assert_int_equal(sched_plan_step(s, &p3), 0); /* two outstanding at most */
    int64_t used = sched_kv_used(s);
    assert_int_equal(used, 3 * 6); /* ceil(21 / 4) blocks each: the run-ahead step's position is covered */
    sched_seq_free(s, &q[0]);      /* client gone */
    sched_finish_seq(s, q[1], SCHED_FINISH_CANCELLED); /* cancelled, freed later */
    assert_int_equal(sched_kv_used(s), used / 3);
    assert_int_equal(sched_running(s), 1);
    sched_commit_step(s, &p1, t1);
    assert_int_equal(p1.got[1], 0);
    assert_int_equal(p1.got[2], 1);
    sched_commit_step(s, &p2, t2);
    assert_int_equal(sched_seq_generated(q[1]), 0); /* nothing appended after the cancel */
    assert_int_equal(sched_seq_generated(q[2]), 2);
    run_all_ahead(s, &f, 64, 4, NULL, NULL, NULL);
    int32_t want[10];
    assert_int_equal(reference(prompt[2], 20, 79, 10, want), 10);
    assert_memory_equal(q[2]->tokens + 20, want, sizeof want);
    sched_seq_free(s, &q[1]);
    sched_seq_free(s, &q[2]);
    assert_int_equal(sched_kv_used(s), 0);
    sched_destroy(&s);
    fake_free(&f);
}

/* Run-ahead: max_tokens is never overshot (the pending token counts), and the
 * decode of a just-prefilled sequence is planned before its first token is back. */
static void test_runahead_length(void **state)
{
    (void)state;
    sched_opts o = opts(4, 64, 64, 4);
    sched *s = sched_new(&o);
    int32_t prompt[] = {2, 9, 8};
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 3;
    r.max_tokens = 2;
    sched_seq *a;
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED);
    sched_plan p1, p2, p3;
    int32_t t1[1] = {40}, t2[1] = {41};
    assert_int_equal(sched_plan_step(s, &p1), 1);
    assert_int_equal(sched_plan_step(s, &p2), 1); /* second token: decode of the pending first */
    assert_int_equal(p2.steps[0].tokens[0], -1);
    assert_int_equal(a->n_pending, 2);
    sched_commit_step(s, &p1, t1);
    assert_int_equal(sched_plan_step(s, &p3), 0); /* a third would exceed max_tokens */
    sched_commit_step(s, &p2, t2);
    assert_int_equal(a->state, SCHED_FINISHED);
    assert_int_equal(a->finish, SCHED_FINISH_LENGTH);
    assert_int_equal(sched_seq_generated(a), 2);
    assert_int_equal(a->tokens[3], 40);
    assert_int_equal(a->tokens[4], 41);
    sched_seq_free(s, &a);
    assert_true(sched_idle(s));
    sched_destroy(&s);
}

/* Run-ahead: the workers fail with two plans outstanding: running sequences
 * end with an error, the plans are abandoned, waiting ones run later on fresh
 * workers with the same outputs. */
static void test_runahead_fail_running(void **state)
{
    (void)state;
    int32_t bs = 4;
    sched_opts o = opts(2, 64, 64, bs);
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, bs);
    int32_t prompt[] = {2, 3, 4, 5, 6};
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 5;
    r.max_tokens = 6;
    sched_seq *q[3];
    for (int i = 0; i < 3; i++) {
        r.sampling.seed = 400 + (uint64_t)i;
        assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
    }
    sched_plan p1, p2;
    int32_t t1[2];
    assert_int_equal(sched_plan_step(s, &p1), 2);
    fake_step(&f, &p1, t1);
    sched_commit_step(s, &p1, t1);
    assert_int_equal(sched_plan_step(s, &p1), 2);
    assert_int_equal(sched_plan_step(s, &p2), 2);
    assert_int_equal(sched_outstanding(s), 2);
    sched_seq *failed[2];
    assert_int_equal(sched_fail_running(s, failed), 2);
    sched_abandon(s);
    assert_int_equal(sched_outstanding(s), 0);
    assert_int_equal(sched_kv_used(s), 0);
    assert_int_equal(sched_running(s), 0);
    assert_int_equal(sched_waiting(s), 1);
    fake_free(&f);
    fake_init(&f, bs); /* restarted workers: a fresh KV */
    run_all_ahead(s, &f, 64, 2, NULL, NULL, NULL);
    int32_t want[6];
    assert_int_equal(reference(prompt, 5, 402, 6, want), 6);
    assert_int_equal(q[2]->finish, SCHED_FINISH_LENGTH);
    assert_memory_equal(q[2]->tokens + 5, want, sizeof want);
    assert_int_equal(q[0]->finish, SCHED_FINISH_ERROR);
    for (int i = 0; i < 3; i++)
        sched_seq_free(s, &q[i]);
    assert_true(sched_idle(s));
    assert_int_equal(sched_kv_used(s), 0);
    sched_destroy(&s);
    fake_free(&f);
}

static void pool_ok(const kvb_pool *p)
{
    char why[256];
    if (!kvb_check(p, why, sizeof why))
        fail_msg("pool: %s", why);
}

/* The block manager alone: allocation order, refcounts, the states and their counts. */
static void test_kvblocks(void **state)
{
    (void)state;
    assert_null(kvb_new(0, 16));
    assert_null(kvb_new(4, 0));
    kvb_pool *p = kvb_new(10, 16);
    assert_int_equal(kvb_blocks_for(p, 0), 0);
    assert_int_equal(kvb_blocks_for(p, 1), 1);
    assert_int_equal(kvb_blocks_for(p, 16), 1);
    assert_int_equal(kvb_blocks_for(p, 17), 2);
    int32_t a[10], b[10];
    assert_true(kvb_alloc(p, 4, a));
    assert_int_equal(a[0], 0);
    assert_int_equal(a[3], 3);
    assert_true(kvb_alloc(p, 6, b));
    assert_int_equal(kvb_free_count(p), 0);
    assert_false(kvb_alloc(p, 1, a + 4));
    kvb_release(p, a, 4);
    assert_int_equal(kvb_free_count(p), 4);
    assert_int_equal(kvb_used(p), 6);
    int32_t c[4];
    assert_true(kvb_alloc(p, 4, c));
    assert_memory_equal(a, c, sizeof c); /* LIFO: the same blocks, same order */
    assert_false(kvb_alloc(p, -1, c));
    /* a second reference keeps a block used */
    kvb_ref(p, c[0]);
    assert_int_equal(kvb_refcount(p, c[0]), 2);
    kvb_release(p, c, 1);
    assert_int_equal(kvb_refcount(p, c[0]), 1);
    assert_int_equal(kvb_used(p), 10);
    pool_ok(p);
    kvb_release(p, b, 6);
    kvb_release(p, c, 4);
    assert_int_equal(kvb_free_count(p), 10);
    pool_ok(p);
    kvb_destroy(&p);
    assert_null(p);
    kvb_destroy(&p);
}

/* Registered blocks: found by (parent, tokens) exactly, cached in an LRU after their last
 * reference, evicted oldest first when the pool needs them, forgotten all at once. */
static void test_kvblocks_cache(void **state)
{
    (void)state;
    enum { BS = 4 };
    kvb_pool *p = kvb_new(6, BS);
    int32_t t[3][BS] = {{2, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}};
    int32_t ids[3];
    assert_true(kvb_alloc(p, 3, ids));
    uint64_t n0 = kvb_register(p, ids[0], 0, t[0], 1);
    uint64_t n1 = kvb_register(p, ids[1], n0, t[1], 1);
    uint64_t n2 = kvb_register(p, ids[2], n1, t[2], 2);
    assert_true(n0 && n1 && n2 && n0 != n1 && n1 != n2);
    uint64_t name = 0;
    /* found by plans after the registering one only */
    assert_int_equal(kvb_lookup(p, 0, t[0], 1, &name), -1);
    assert_int_equal(kvb_lookup(p, 0, t[0], 2, &name), ids[0]);
    assert_int_equal(name, n0);
    assert_int_equal(kvb_lookup(p, n1, t[2], 2, &name), -1);
    assert_int_equal(kvb_lookup(p, n1, t[2], 3, &name), ids[2]);
    /* other parent, other tokens: no */
    assert_int_equal(kvb_lookup(p, n0, t[0], 9, &name), -1);
    int32_t other[BS] = {2, 5, 6, 8};
    assert_int_equal(kvb_lookup(p, 0, other, 9, &name), -1);
    /* an equal block registered again: the first one's name, the second stays unregistered */
    int32_t dup;
    assert_true(kvb_alloc(p, 1, &dup));
    assert_int_equal(kvb_register(p, dup, 0, t[0], 3), n0);
    kvb_release(p, &dup, 1);
    assert_int_equal(kvb_free_count(p), 3); /* not cached: it was not registered */
    /* released: cached, tail block first (the oldest), still found */
    kvb_release(p, ids, 3);
    assert_int_equal(kvb_cached(p), 3);
    assert_int_equal(kvb_used(p), 0);
    assert_int_equal(kvb_available(p), 6);
    pool_ok(p);
    assert_int_equal(kvb_lookup(p, 0, t[0], 9, &name), ids[0]);
    kvb_ref(p, ids[0]); /* a hit takes it out of the LRU */
    assert_int_equal(kvb_cached(p), 2);
    pool_ok(p);
    /* the pool needs 4: 3 free, then the oldest cached block (the chain's tail) */
    int32_t more[4];
    assert_true(kvb_alloc(p, 4, more));
    assert_int_equal(more[3], ids[2]);
    assert_int_equal(kvb_evictions(p), 1);
    assert_int_equal(kvb_lookup(p, n1, t[2], 9, &name), -1);
    assert_int_equal(kvb_lookup(p, n0, t[1], 9, &name), ids[1]);
    pool_ok(p);
    assert_false(kvb_alloc(p, 2, more)); /* 1 available (cached ids[1]) */
    kvb_release(p, more, 4);
    kvb_release(p, &ids[0], 1);
    pool_ok(p);
    /* the workers restarted: nothing is cached any more */
    kvb_forget_all(p);
    assert_int_equal(kvb_cached(p), 0);
    assert_int_equal(kvb_free_count(p), 6);
    assert_int_equal(kvb_lookup(p, 0, t[0], 9, &name), -1);
    pool_ok(p);
    kvb_destroy(&p);
}

/* ---- shared blocks in the scheduler ---- */

enum { PC_N = 36, PC_MAXP = 96, PC_GEN = 12 };

typedef struct pc_case {
    bool cache, ahead;
    int32_t max_seqs, budget, bs;
    int64_t blocks;
    int eos_mod;
    uint32_t order;   /* submission order: a permutation's seed (0 = in order) */
    int per_commit;   /* 0: all queued at once; k: k more queued after every commit */
} pc_case;

typedef struct pc_feed {
    sched *s;
    sched_seq **q;
    int32_t (*prompts)[PC_MAXP];
    int32_t *np, *perm;
    int next, per_commit;
} pc_feed;

static void pc_add(pc_feed *fd, int k)
{
    int i = fd->perm[k];
    sched_req r = {0};
    r.prompt = fd->prompts[i];
    r.n_prompt = fd->np[i];
    r.max_tokens = PC_GEN - i % 5;
    r.sampling.seed = 1000 + (uint64_t)i * 7;
    assert_int_equal(sched_add(fd->s, &r, &fd->q[i]), SCHED_ACCEPTED);
}

static void pc_more(sched *s, void *arg)
{
    (void)s;
    pc_feed *fd = arg;
    for (int k = 0; k < fd->per_commit && fd->next < PC_N; k++)
        pc_add(fd, fd->next++);
}

/* Prompts that share prefixes: 4 system prompts (0, 9, 16 and 40 tokens) and short questions,
 * several of them equal in full (one of 32 tokens: a whole number of blocks). */
static void pc_prompts(int32_t (*pr)[PC_MAXP], int32_t *np)
{
    int32_t sys[4][40];
    int32_t sys_len[4] = {0, 9, 16, 40};
    for (int k = 0; k < 4; k++)
        make_prompt(sys[k], 40, 500 + k);
    for (int i = 0; i < PC_N; i++) {
        int k = i % 4, qlen = 1 + (i * 5) % 13;
        if (i % 9 == 8) /* the same as prompt i - 4 */
            k = (i - 4) % 4, qlen = 1 + ((i - 4) * 5) % 13;
        int32_t n = 0;
        for (int32_t j = 0; j < sys_len[k]; j++)
            pr[i][n++] = sys[k][j];
        if (n == 0)
            pr[i][n++] = 2;
        int qseed = i % 9 == 8 ? i - 4 : i;
        for (int32_t j = 0; j < qlen; j++)
            pr[i][n++] = 3 + (qseed * 31 + j * 17) % (VOCAB - 3);
        np[i] = n;
    }
    np[PC_N - 1] = 32; /* equal to prompt PC_N - 5 cut to 32 tokens below */
    memcpy(pr[PC_N - 1], pr[PC_N - 5], 32 * sizeof(int32_t));
    np[PC_N - 5] = 32;
}

/* Runs the shared-prefix workload; every output equals the sequence's own reference (alone, no
 * cache). Returns the prefix hits (tokens). */
static int64_t prefix_run(const pc_case *c)
{
    g_eos_mod = c->eos_mod;
    sched_opts o = opts(c->max_seqs, c->budget, c->blocks, c->bs);
    o.prefix_cache = c->cache;
    sched *s = sched_new(&o);
    assert_non_null(s);
    fake_kv f;
    fake_init(&f, c->bs);
    static int32_t prompts[PC_N][PC_MAXP];
    int32_t np[PC_N], perm[PC_N];
    sched_seq *q[PC_N];
    pc_prompts(prompts, np);
    for (int i = 0; i < PC_N; i++)
        perm[i] = i;
    uint64_t h = c->order;
    for (int i = PC_N - 1; c->order && i > 0; i--) { /* Fisher-Yates */
        h = gm_mix64(h);
        int j = (int)(h % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    pc_feed fd = {s, q, prompts, np, perm, 0, c->per_commit};
    int first = c->per_commit ? c->per_commit : PC_N;
    for (; fd.next < first; fd.next++)
        pc_add(&fd, fd.next);
    if (c->ahead)
        run_all_ahead(s, &f, c->budget, c->max_seqs, NULL, pc_more, &fd);
    else
        while (!sched_idle(s) || fd.next < PC_N) {
            run_all(s, &f, c->budget, c->max_seqs, NULL);
            pc_more(s, &fd);
        }
    for (int i = 0; i < PC_N; i++) {
        int32_t want[PC_GEN];
        int32_t gen = PC_GEN - i % 5;
        int32_t n = reference(prompts[i], np[i], 1000 + (uint64_t)i * 7, gen, want);
        assert_int_equal(q[i]->state, SCHED_FINISHED);
        assert_int_equal(sched_seq_generated(q[i]), n);
        assert_memory_equal(q[i]->tokens + np[i], want, sizeof(int32_t) * (size_t)n);
        sched_seq_free(s, &q[i]);
    }
    check_kv(s);
    assert_int_equal(sched_kv_used(s), 0);
    int64_t hits = sched_prefix_hits(s);
    if (!c->cache)
        assert_int_equal(hits, 0);
    assert_true(hits <= sched_prefix_queries(s));
    sched_destroy(&s);
    fake_free(&f);
    g_eos_mod = 0;
    return hits;
}

/* The prefix cache changes no output, in any order, any concurrency, with or without run-ahead,
 * and it hits. */
static void test_prefix_cache_outputs(void **state)
{
    (void)state;
    for (int ahead = 0; ahead < 2; ahead++)
        for (uint32_t order = 0; order < 3; order++)
            for (int per = 0; per < 3; per += 2) {
                pc_case c = {true, ahead, 8, 48, 4, 1024, order == 2 ? 5 : 0, order * 77, per};
                int64_t hits = prefix_run(&c);
                assert_true(hits > 0);
                c.cache = false;
                prefix_run(&c);
            }
    /* one at a time: each finds everything the others registered */
    pc_case one = {true, false, 1, 64, 4, 1024, 0, 3, 0};
    assert_true(prefix_run(&one) > 0);
    one.ahead = true;
    assert_true(prefix_run(&one) > 0);
}

/* A pool too small for everything: cached blocks are evicted, sequences preempted, outputs the same. */
static void test_prefix_cache_eviction(void **state)
{
    (void)state;
    for (int ahead = 0; ahead < 2; ahead++) {
        pc_case c = {true, ahead, 6, 64, 4, 40, 0, 11, 2};
        sched_opts o = opts(6, 64, 40, 4);
        (void)o;
        assert_true(prefix_run(&c) > 0);
    }
    /* evictions happen: a pool of 24 blocks with 36 prompts of up to 14 blocks */
    sched_opts o = opts(2, 64, 24, 4);
    o.prefix_cache = true;
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, 4);
    static int32_t prompts[PC_N][PC_MAXP];
    int32_t np[PC_N];
    pc_prompts(prompts, np);
    for (int i = 0; i < PC_N; i++) {
        sched_req r = {0};
        r.prompt = prompts[i];
        r.n_prompt = np[i];
        r.max_tokens = 6;
        r.sampling.seed = 9 + (uint64_t)i;
        sched_seq *q;
        assert_int_equal(sched_add(s, &r, &q), SCHED_ACCEPTED);
        run_all(s, &f, 64, 2, NULL);
        int32_t want[6];
        int32_t n = reference(prompts[i], np[i], 9 + (uint64_t)i, 6, want);
        assert_memory_equal(q->tokens + np[i], want, sizeof(int32_t) * (size_t)n);
        sched_seq_free(s, &q);
        check_kv(s);
        assert_true(sched_kv_cached(s) <= 24);
    }
    assert_true(sched_evictions(s) > 0);
    assert_true(sched_prefix_hits(s) > 0);
    sched_destroy(&s);
    fake_free(&f);
}

/* A cached prefix: the first entry starts past 0, never at the whole prompt, and says reset. */
static void test_prefix_cache_first_entry(void **state)
{
    (void)state;
    sched_opts o = opts(1, 64, 64, 4);
    o.prefix_cache = true;
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, 4);
    int32_t prompt[24];
    make_prompt(prompt, 24, 42);
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 20;
    r.max_tokens = 3;
    sched_seq *a, *b, *c;
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED);
    run_all(s, &f, 64, 1, NULL);
    /* b: 24 tokens, the first 20 cached: starts at 20 */
    r.n_prompt = 24;
    assert_int_equal(sched_add(s, &r, &b), SCHED_ACCEPTED);
    sched_plan p;
    int32_t toks[4];
    assert_int_equal(sched_plan_step(s, &p), 1);
    assert_int_equal(p.steps[0].start_pos, 20);
    assert_int_equal(p.steps[0].n_tokens, 4);
    assert_true(p.steps[0].reset);
    assert_int_equal(b->n_cached, 20);
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    assert_int_equal(sched_plan_step(s, &p), 1);
    assert_false(p.steps[0].reset); /* a decode extends the table */
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    run_all(s, &f, 64, 1, NULL);
    /* c: the same 24 tokens: 24 cached, but the last block is computed again for the logits */
    assert_int_equal(sched_add(s, &r, &c), SCHED_ACCEPTED);
    assert_int_equal(sched_plan_step(s, &p), 1);
    assert_int_equal(p.steps[0].start_pos, 20);
    assert_int_equal(p.steps[0].n_tokens, 4);
    assert_int_equal(p.steps[0].logits_mode, GM_LOGITS_LAST);
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    run_all(s, &f, 64, 1, NULL);
    int32_t want[3];
    reference(prompt, 24, 0, 3, want);
    assert_memory_equal(b->tokens + 24, want, sizeof want);
    assert_memory_equal(c->tokens + 24, want, sizeof want);
    assert_int_equal(sched_prefix_queries(s), 20 + 24 + 24);
    assert_int_equal(sched_prefix_hits(s), 20 + 20);
    sched_seq_free(s, &a);
    sched_seq_free(s, &b);
    sched_seq_free(s, &c);
    check_kv(s);
    sched_destroy(&s);
    fake_free(&f);
}

/* Workers restart: the cache forgets everything (their new pools hold nothing), and what comes
 * next computes its prompt again. */
static void test_prefix_cache_worker_restart(void **state)
{
    (void)state;
    sched_opts o = opts(2, 64, 64, 4);
    o.prefix_cache = true;
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, 4);
    int32_t prompt[30];
    make_prompt(prompt, 30, 7);
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 30;
    r.max_tokens = 4;
    sched_seq *a, *b, *c;
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED);
    run_all(s, &f, 64, 2, NULL);
    assert_true(sched_kv_cached(s) > 0);
    assert_int_equal(sched_add(s, &r, &b), SCHED_ACCEPTED); /* hits, then the workers fail */
    sched_plan p;
    assert_int_equal(sched_plan_step(s, &p), 1);
    assert_int_equal(p.steps[0].start_pos, 28);
    sched_seq *failed[2];
    assert_int_equal(sched_fail_running(s, failed), 1);
    sched_abandon(s);
    assert_int_equal(sched_kv_cached(s), 0);
    assert_int_equal(sched_kv_used(s), 0);
    check_kv(s);
    fake_free(&f);
    fake_init(&f, 4); /* the new workers' pools: nothing in them */
    assert_int_equal(sched_add(s, &r, &c), SCHED_ACCEPTED);
    assert_int_equal(sched_plan_step(s, &p), 1);
    assert_int_equal(p.steps[0].start_pos, 0);
    int32_t toks[2];
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    run_all(s, &f, 64, 2, NULL);
    int32_t want[4];
    reference(prompt, 30, 0, 4, want);
    assert_memory_equal(c->tokens + 30, want, sizeof want);
    sched_seq_free(s, &a);
    sched_seq_free(s, &b);
    sched_seq_free(s, &c);
    check_kv(s);
    assert_int_equal(sched_kv_used(s), 0);
    sched_destroy(&s);
    fake_free(&f);
}

/* n > 1: sequence i of a group samples with seed + i and its output is what it gets alone; the
 * others fork from the first one's prompt blocks (one copy each of the block they write). */
static void n_group_run(int32_t n_prompt, bool ahead, bool cache, int64_t blocks, int groups)
{
    enum { NG = 4, MAXG = 3 };
    int32_t bs = 4;
    sched_opts o = opts(16, 64, blocks, bs);
    o.prefix_cache = cache;
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, bs);
    int32_t prompt[MAXG][64];
    sched_seq *q[MAXG][NG];
    for (int g = 0; g < groups; g++) {
        make_prompt(prompt[g], n_prompt + g, 80 + g);
        sched_req r = {0};
        r.prompt = prompt[g];
        r.n_prompt = n_prompt + g;
        r.max_tokens = 10;
        r.sampling.seed = 300 + (uint64_t)g * 10;
        r.n = NG;
        assert_int_equal(sched_add(s, &r, q[g]), SCHED_ACCEPTED);
        for (int i = 0; i < NG; i++) {
            assert_int_equal(q[g][i]->index, i);
            assert_int_equal(q[g][i]->sampling.seed, 300 + (uint64_t)g * 10 + (uint64_t)i);
        }
    }
    if (ahead)
        run_all_ahead(s, &f, 64, 16, NULL, NULL, NULL);
    else
        run_all(s, &f, 64, 16, NULL);
    for (int g = 0; g < groups; g++) {
        int32_t first[10];
        for (int i = 0; i < NG; i++) {
            int32_t want[10];
            int32_t n = reference(prompt[g], n_prompt + g, 300 + (uint64_t)g * 10 + (uint64_t)i, 10, want);
            assert_int_equal(sched_seq_generated(q[g][i]), n);
            assert_memory_equal(q[g][i]->tokens + n_prompt + g, want, sizeof(int32_t) * (size_t)n);
            if (i == 0)
                memcpy(first, want, sizeof first);
            else
                assert_memory_not_equal(first, want, sizeof first); /* distinct seeds, distinct draws */
        }
        for (int i = 0; i < NG; i++)
            sched_seq_free(s, &q[g][i]);
    }
    if (sched_preemptions(s) == 0)
        assert_int_equal(sched_forks(s), groups * (NG - 1));
    check_kv(s);
    assert_int_equal(sched_kv_used(s), 0);
    sched_destroy(&s);
    fake_free(&f);
}

static void test_n_shares_prompt(void **state)
{
    (void)state;
    for (int ahead = 0; ahead < 2; ahead++)
        for (int cache = 0; cache < 2; cache++) {
            n_group_run(37, ahead, cache, 1024, 1); /* the copy-on-write of a partial block */
            n_group_run(36, ahead, cache, 1024, 1); /* of a full one (the last prompt token is in it) */
            n_group_run(1, ahead, cache, 1024, 1);
            n_group_run(20, ahead, cache, 1024, 3);
            n_group_run(20, ahead, cache, 40, 3); /* a small pool: preemptions */
        }
}

/* The plan of a fork: the first sequence prefills alone, the others compute one token each from a
 * copy of the block holding it; the pool holds the prompt once. */
static void test_n_fork_plan(void **state)
{
    (void)state;
    sched_opts o = opts(8, 64, 64, 4);
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, 4);
    int32_t prompt[10];
    make_prompt(prompt, 10, 5);
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 10;
    r.max_tokens = 5;
    r.n = 3;
    sched_seq *q[3];
    assert_int_equal(sched_add(s, &r, q), SCHED_ACCEPTED);
    assert_int_equal(sched_waiting(s), 3);
    sched_plan p;
    int32_t toks[8];
    assert_int_equal(sched_plan_step(s, &p), 1); /* the others wait for the prompt */
    assert_int_equal(p.seqs[0], q[0]);
    assert_int_equal(p.n_copies, 0);
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    assert_int_equal(sched_plan_step(s, &p), 3);
    assert_int_equal(p.n_copies, 2); /* block 2 (tokens 8, 9) copied for each of them */
    for (int i = 1; i < 3; i++) {
        assert_int_equal(p.seqs[i], q[i]);
        assert_int_equal(p.steps[i].start_pos, 9);
        assert_int_equal(p.steps[i].n_tokens, 1);
        assert_int_equal(p.steps[i].tokens[0], prompt[9]);
        assert_true(p.steps[i].reset);
        assert_int_equal(p.steps[i].block_table[0], q[0]->blocks[0]);
        assert_int_equal(p.steps[i].block_table[1], q[0]->blocks[1]);
        assert_int_equal(p.copies[i - 1].src, q[0]->blocks[2]);
        assert_int_equal(p.copies[i - 1].dst, p.steps[i].block_table[2]);
    }
    assert_int_equal(sched_kv_used(s), 3 + 2);
    assert_int_equal(sched_forks(s), 2);
    check_kv(s);
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    run_all(s, &f, 64, 8, NULL);
    for (int i = 0; i < 3; i++) {
        int32_t want[5];
        reference(prompt, 10, (uint64_t)i, 5, want);
        assert_memory_equal(q[i]->tokens + 10, want, sizeof want);
        sched_seq_free(s, &q[i]);
    }
    check_kv(s);
    sched_destroy(&s);
    fake_free(&f);
}

/* n > 1 when the first sequence goes away before the others fork: they run on their own (with the
 * cache, from its cached blocks); cancelled sequences of a group free exactly their references. */
static void test_n_first_gone(void **state)
{
    (void)state;
    for (int cache = 0; cache < 2; cache++) {
        sched_opts o = opts(8, 64, 64, 4);
        o.prefix_cache = cache;
        sched *s = sched_new(&o);
        fake_kv f;
        fake_init(&f, 4);
        int32_t prompt[18];
        make_prompt(prompt, 18, 6);
        sched_req r = {0};
        r.prompt = prompt;
        r.n_prompt = 18;
        r.max_tokens = 1; /* the first one ends at its first token: before the others fork */
        r.n = 3;
        sched_seq *q[3];
        assert_int_equal(sched_add(s, &r, q), SCHED_ACCEPTED);
        run_all(s, &f, 64, 8, NULL);
        assert_int_equal(sched_forks(s), 0);
        assert_int_equal(sched_prefix_hits(s), cache ? 2 * 16 : 0);
        for (int i = 0; i < 3; i++) {
            int32_t want[1];
            reference(prompt, 18, (uint64_t)i, 1, want);
            assert_int_equal(q[i]->tokens[18], want[0]);
            sched_seq_free(s, &q[i]);
        }
        /* cancelled before the fork: the first one freed, the others go on alone */
        r.max_tokens = 4;
        assert_int_equal(sched_add(s, &r, q), SCHED_ACCEPTED);
        sched_plan p;
        int32_t toks[8];
        assert_int_equal(sched_plan_step(s, &p), 1);
        fake_step(&f, &p, toks);
        sched_seq_free(s, &q[0]); /* client gone while its prefill is in flight */
        check_kv(s);
        sched_commit_step(s, &p, toks);
        run_all(s, &f, 64, 8, NULL);
        for (int i = 1; i < 3; i++) {
            int32_t want[4];
            reference(prompt, 18, (uint64_t)i, 4, want);
            assert_memory_equal(q[i]->tokens + 18, want, sizeof want);
            sched_seq_free(s, &q[i]);
        }
        /* cancelled after the fork: one of the others, then the first */
        assert_int_equal(sched_add(s, &r, q), SCHED_ACCEPTED);
        for (int k = 0; k < 2; k++) {
            assert_true(sched_plan_step(s, &p) > 0);
            fake_step(&f, &p, toks);
            sched_commit_step(s, &p, toks);
        }
        assert_int_equal(sched_running(s), 3);
        sched_seq_free(s, &q[1]);
        check_kv(s);
        sched_finish_seq(s, q[0], SCHED_FINISH_CANCELLED);
        check_kv(s);
        run_all(s, &f, 64, 8, NULL);
        int32_t want[4];
        reference(prompt, 18, 2, 4, want);
        assert_memory_equal(q[2]->tokens + 18, want, sizeof want);
        sched_seq_free(s, &q[0]);
        sched_seq_free(s, &q[2]);
        check_kv(s);
        assert_int_equal(sched_kv_used(s), 0);
        /* refused: n beyond the limit, or beyond the queue */
        r.n = SCHED_MAX_N + 1;
        assert_int_equal(sched_add(s, &r, q), SCHED_REJECT_INVALID);
        sched_destroy(&s);
        fake_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kvblocks),
        cmocka_unit_test(test_inflight_matches_alone),
        cmocka_unit_test(test_preemption_keeps_outputs),
        cmocka_unit_test(test_stop_conditions),
        cmocka_unit_test(test_admission),
        cmocka_unit_test(test_cancel_frees_blocks),
        cmocka_unit_test(test_fail_running),
        cmocka_unit_test(test_runahead_matches_alone),
        cmocka_unit_test(test_runahead_stop_late),
        cmocka_unit_test(test_runahead_preemption),
        cmocka_unit_test(test_runahead_cancel),
        cmocka_unit_test(test_runahead_length),
        cmocka_unit_test(test_runahead_fail_running),
        cmocka_unit_test(test_kvblocks_cache),
        cmocka_unit_test(test_prefix_cache_outputs),
        cmocka_unit_test(test_prefix_cache_eviction),
        cmocka_unit_test(test_prefix_cache_first_entry),
        cmocka_unit_test(test_prefix_cache_worker_restart),
        cmocka_unit_test(test_n_shares_prompt),
        cmocka_unit_test(test_n_fork_plan),
        cmocka_unit_test(test_n_first_gone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
