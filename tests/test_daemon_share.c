/* test_daemon_share.c - shared KV blocks without processes: the block manager's cache (names, LRU,
 * eviction, forgetting), automatic prefix caching (outputs unchanged in any order and concurrency, with
 * run-ahead, under eviction and preemption; the first entry at a cached prefix; a worker restart), and
 * n > 1 (forks from the first sequence's prompt blocks with one block copy each, seeds seed + i, the
 * first sequence gone before the fork, cancels); sequences with penalties share nothing. Every plan and
 * commit is checked by sched_check. */
#include "tests/test_sched_fake.h"

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

/* Penalties count a slot's tokens from position 0 (worker/engine_pen.h): a sequence that uses them
 * neither starts at a cached prefix nor forks (its n > 1 siblings prefill the prompt each), and its
 * admission is no prefix-cache query. */
static void test_penalties_share_nothing(void **state)
{
    (void)state;
    sched_opts o = opts(8, 96, 64, 4);
    o.prefix_cache = true;
    sched *s = sched_new(&o);
    fake_kv f;
    fake_init(&f, 4);
    int32_t prompt[24];
    make_prompt(prompt, 24, 43);
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 24;
    r.max_tokens = 3;
    sched_seq *a, *q[3];
    assert_int_equal(sched_add(s, &r, &a), SCHED_ACCEPTED);
    run_all(s, &f, 96, 1, NULL); /* 20 of its tokens are cached now */
    assert_int_equal(sched_prefix_queries(s), 24);
    r.n = 3;
    r.sampling.presence_penalty = 0.5f;
    assert_int_equal(sched_add(s, &r, q), SCHED_ACCEPTED);
    sched_plan p;
    int32_t toks[8];
    assert_int_equal(sched_plan_step(s, &p), 3); /* all three at once, each from position 0 */
    assert_int_equal(p.n_copies, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p.seqs[i], q[i]);
        assert_int_equal(p.steps[i].start_pos, 0);
        assert_int_equal(p.steps[i].n_tokens, 24);
        assert_int_equal(q[i]->n_cached, 0);
    }
    check_kv(s);
    fake_step(&f, &p, toks);
    sched_commit_step(s, &p, toks);
    run_all(s, &f, 96, 8, NULL);
    assert_int_equal(sched_forks(s), 0);
    assert_int_equal(sched_prefix_queries(s), 24);
    assert_int_equal(sched_prefix_hits(s), 0);
    for (int i = 0; i < 3; i++) {
        int32_t want[3];
        reference(prompt, 24, (uint64_t)i, 3, want); /* seed + i all the same */
        assert_memory_equal(q[i]->tokens + 24, want, sizeof want);
        sched_seq_free(s, &q[i]);
    }
    sched_seq_free(s, &a);
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
        cmocka_unit_test(test_kvblocks_cache),
        cmocka_unit_test(test_prefix_cache_outputs),
        cmocka_unit_test(test_prefix_cache_eviction),
        cmocka_unit_test(test_prefix_cache_first_entry),
        cmocka_unit_test(test_penalties_share_nothing),
        cmocka_unit_test(test_prefix_cache_worker_restart),
        cmocka_unit_test(test_n_shares_prompt),
        cmocka_unit_test(test_n_fork_plan),
        cmocka_unit_test(test_n_first_gone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
