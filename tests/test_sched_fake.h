/* test_sched_fake.h - the fake engine the scheduler tests drive plans through (no processes).
 *
 * It writes each fed token into a paged "KV" store through the block table (after the step's block
 * copies), and the token it samples is a hash of (seed, everything in the sequence's KV read back
 * through the block table). So a wrong block table, a wrong start_pos, two sequences writing one
 * block, a missing copy, or a recompute that feeds other tokens all change the output. Like a real
 * engine it resolves a -1 token from the slot's last sample, so run-ahead (two plans outstanding)
 * gives the same outputs. check_kv runs sched_check (the pool's whole accounting). */
#ifndef GM_TEST_SCHED_FAKE_H
#define GM_TEST_SCHED_FAKE_H

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
static __attribute__((unused)) int g_eos_mod;

static __attribute__((unused)) int32_t fake_token(uint64_t h, uint64_t seed, int32_t end)
{
    if (g_eos_mod && (seed + (uint64_t)end) % (uint64_t)g_eos_mod == 0)
        return 1;
    return 3 + (int32_t)(h % (VOCAB - 3));
}

static __attribute__((unused)) void fake_init(fake_kv *f, int32_t bs)
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

static __attribute__((unused)) void fake_free(fake_kv *f)
{
    free(f->data);
    free(f->owner);
}

/* Run one step like an engine: the block copies first, then write every fed token, sample where asked. */
static __attribute__((unused)) void fake_step(fake_kv *f, const sched_plan *p, int32_t *out)
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
static __attribute__((unused)) int32_t reference(const int32_t *prompt, int32_t n_prompt, uint64_t seed, int32_t n_gen, int32_t *out)
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

static __attribute__((unused)) sched_opts opts(int32_t max_seqs, int32_t budget, int64_t blocks, int32_t bs)
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

static __attribute__((unused)) void make_prompt(int32_t *p, int32_t n, int seed)
{
    p[0] = 2;
    for (int32_t i = 1; i < n; i++)
        p[i] = 3 + (int32_t)((uint32_t)(seed * 7919 + i * 104729) % (VOCAB - 3));
}

/* The pool's accounting (sched_check): refcounts = tables, free + cached + used == total. */
static __attribute__((unused)) void check_kv(const sched *s)
{
    char why[256];
    if (!sched_check(s, why, sizeof why))
        fail_msg("KV accounting: %s", why);
}

/* Run until idle; returns steps taken. Checks the token budget every step. */
static __attribute__((unused)) int run_all(sched *s, fake_kv *f, int32_t budget, int32_t max_seqs, int *max_batch)
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

static __attribute__((unused)) int run_all_ahead(sched *s, fake_kv *f, int32_t budget, int32_t max_seqs, int *max_batch,
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

/* The block manager's own accounting (kvb_check). */
static __attribute__((unused)) void pool_ok(const kvb_pool *p)
{
    char why[256];
    if (!kvb_check(p, why, sizeof why))
        fail_msg("pool: %s", why);
}

#endif
