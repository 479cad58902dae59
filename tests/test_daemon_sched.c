/* test_daemon_sched.c - the scheduler and KV block manager without processes: in-flight batching,
 * chunked prefill, preemption, run-ahead, stop conditions, admission, cancel and worker failure, driven
 * through the fake engine of test_sched_fake.h (shared blocks: test_daemon_share.c). */
#include "tests/test_sched_fake.h"

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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
