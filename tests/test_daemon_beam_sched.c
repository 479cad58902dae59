/* test_daemon_beam_sched.c - beam search without processes: the search's rules on hand-made rounds
 * (candidate ranks, stop tokens passed over, length penalty, early stopping, max_new), and beam groups
 * in the scheduler driven through the fake engine (tests/test_sched_fake.h), whose "log-probabilities"
 * are a function of the KV read back through each beam's block table: every group's result must equal
 * the same search run on the plain token histories, alone, with or without run-ahead, with the prefix
 * cache on or off, in a pool small enough to preempt whole groups, with cancels and a worker restart;
 * sched_check (refcounts = tables, free + cached + used == total) after every plan and commit, and
 * nothing held at the end. */
#include <math.h>

#include "daemon/beam.h"
#include "tests/test_sched_fake.h"

/* ---- the rules, by hand ---- */

static bool stop_eos(void *arg, int32_t tok)
{
    (void)arg;
    return tok == 1;
}

typedef struct hand_round {
    int32_t n[2];
    int32_t ids[2][4];
    float lps[2][4];
} hand_round;

/* Rounds of the worked example (see test_rules). */
static const hand_round k_rounds[3] = {
    {{4, 0}, {{10, 11, 1, 12}}, {{-0.1f, -0.5f, -1.0f, -2.0f}}},
    {{4, 4}, {{1, 13, 14, 15}, {16, 1, 17, 18}}, {{-0.2f, -0.3f, -3, -4}, {-0.05f, -2, -3, -4}}},
    {{4, 4}, {{1, 19, 21, 22}, {1, 20, 23, 24}}, {{-0.1f, -0.2f, -3, -4}, {-0.01f, -1, -3, -4}}},
};

/* Run the example with these options; returns the result count, hyps in h. */
static int32_t run_hand(beam_search **pb, float lp, bool es, const beam_hyp **h)
{
    beam_opts o = {2, 2, lp, es, 3};
    beam_search *b = beam_new(&o);
    assert_non_null(b);
    int32_t parent[2], token[2];
    bool done = false;
    for (int r = 0; r < 3 && !done; r++) {
        beam_top t[2];
        for (int i = 0; i < 2; i++)
            t[i] = (beam_top){k_rounds[r].n[i], k_rounds[r].ids[i], k_rounds[r].lps[i]};
        done = beam_advance(b, t, stop_eos, NULL, parent, token);
        if (r == 0) { /* EOS at rank 2 >= W is passed over; both beams come from the prompt */
            assert_false(done);
            assert_int_equal(parent[0], 0), assert_int_equal(token[0], 10);
            assert_int_equal(parent[1], 0), assert_int_equal(token[1], 11);
        }
        if (r == 1) { /* beam 0's EOS (rank 0) is a hypothesis; 13 and 16 live on */
            assert_false(done);
            assert_int_equal(parent[0], 0), assert_int_equal(token[0], 13);
            assert_int_equal(parent[1], 1), assert_int_equal(token[1], 16);
        }
    }
    assert_true(done);
    *pb = b;
    return beam_result(b, h);
}

static void expect_hyp(const beam_hyp *h, const int32_t *ids, int32_t n, double score, bool stopped)
{
    assert_int_equal(h->n, n);
    for (int32_t i = 0; i < n; i++)
        assert_int_equal(h->ids[i], ids[i]);
    if (fabs(h->score - score) > 1e-6)
        fail_msg("score %.9g, want %.9g", h->score, score);
    assert_int_equal(h->stopped, stopped);
}

static void test_rules(void **state)
{
    (void)state;
    const beam_hyp *h[2];
    beam_search *b;
    /* length_penalty 1, no early stop: round 3 keeps [10 13 EOS] (-0.5/2) and [11 16 EOS] (-0.56/2), drops
     * [10 EOS] (-0.3/1); then max_new: [10 13 19] (-0.6/3 = -0.2) displaces [11 16 EOS] */
    assert_int_equal(run_hand(&b, 1.0f, false, h), 2);
    expect_hyp(h[0], (int32_t[]){10, 13, 19}, 3, -0.6 / 3, false);
    expect_hyp(h[1], (int32_t[]){10, 13, 1}, 3, -0.5 / 2, true);
    assert_true(fabs(h[0]->lps[2] - -0.2f) < 1e-7);
    beam_destroy(&b);
    /* early stopping: done as soon as two hypotheses are kept */
    assert_int_equal(run_hand(&b, 1.0f, true, h), 2);
    expect_hyp(h[0], (int32_t[]){10, 13, 1}, 3, -0.5 / 2, true);
    expect_hyp(h[1], (int32_t[]){11, 16, 1}, 3, -0.56 / 2, true);
    beam_destroy(&b);
    /* length_penalty 0 (plain sums): the worst kept (-0.5) beats the best live beam (-0.6): done */
    assert_int_equal(run_hand(&b, 0.0f, false, h), 2);
    expect_hyp(h[0], (int32_t[]){10, 1}, 2, -0.3, true);
    expect_hyp(h[1], (int32_t[]){10, 13, 1}, 3, -0.5, true);
    beam_destroy(&b);
    /* bad options */
    beam_opts bad[] = {{1, 1, 1, false, 4}, {9, 1, 1, false, 4}, {4, 5, 1, false, 4}, {4, 1, NAN, false, 4},
                       {4, 1, 1, false, 0}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(beam_new(&bad[i]));
}

/* ---- beam groups in the scheduler ---- */

enum { BG_MAXW = 8, BG_GEN = 10, BG_MAXP = 64 };
static int g_stop_mod; /* 0: no stop token among the candidates; else about 1 in g_stop_mod rows has one */

/* The fake model's top-2W for a sequence whose KV hashes to h: distinct ids, decreasing log-probabilities. */
static void fake_top(uint64_t h, int32_t k, int32_t *ids, float *lps)
{
    float lp = -0.01f - (float)(h % 1000) * 0.0005f;
    int32_t stop_at = g_stop_mod && (h >> 40) % (uint64_t)g_stop_mod == 0 ? (int32_t)((h >> 50) % 3) : -1;
    for (int32_t i = 0; i < k; i++) {
        ids[i] = i == stop_at ? 1 : 3 + (int32_t)((h + (uint64_t)i * 131) % (VOCAB - 3));
        lps[i] = lp;
        lp -= 0.05f + (float)((h >> (8 + 3 * i)) % 100) * 0.01f;
    }
}

static uint64_t hash_tokens(const int32_t *t, int32_t n)
{
    uint64_t h = 0x5eed;
    for (int32_t i = 0; i < n; i++)
        h = gm_mix64(h ^ (uint64_t)(t[i] + 1) * 0x100000001b3ull);
    return h;
}

/* The same hash over an entry's KV, read back through its block table (after fake_step wrote it). */
static uint64_t hash_kv(const fake_kv *f, const gm_seq_step *s)
{
    int32_t end = s->start_pos + s->n_tokens, t[BG_MAXP + BG_GEN + 2];
    assert_true(end <= BG_MAXP + BG_GEN + 1);
    for (int32_t pos = 0; pos < end; pos++)
        t[pos] = f->data[s->block_table[pos / f->block_size] * f->block_size + pos % f->block_size];
    return hash_tokens(t, end);
}

typedef struct group {
    int32_t prompt[BG_MAXP], n_prompt, width, n_best, max_new;
    float lp;
    bool es;
    sched_seq *seqs[BG_MAXW];
    beam_search *bs;
    int32_t top_ids[BG_MAXW][BEAM_TOP];
    float top_lps[BG_MAXW][BEAM_TOP];
    bool done, cancelled;
    uint32_t fed; /* beams whose candidates of this round are in */
    int32_t n_res, res_n[BG_MAXW], res[BG_MAXW][BG_GEN + 1];
    double res_score[BG_MAXW];
} group;

static bool stop_of(void *arg, int32_t tok) { return sched_is_stop(((void **)arg)[0], ((void **)arg)[1], tok); }

static void group_result(group *g)
{
    const beam_hyp *h[BG_MAXW];
    g->n_res = beam_result(g->bs, h);
    for (int32_t i = 0; i < g->n_res; i++) {
        g->res_n[i] = h[i]->n;
        memcpy(g->res[i], h[i]->ids, (size_t)h[i]->n * sizeof(int32_t));
        g->res_score[i] = h[i]->score;
    }
    g->done = true;
}

static beam_search *group_search(const group *g)
{
    beam_opts o = {g->width, g->n_best, g->lp, g->es, g->max_new};
    beam_search *b = beam_new(&o);
    assert_non_null(b);
    return b;
}

/* The reference: the same search on the plain histories, nothing shared, nothing scheduled. */
static void group_reference(group *g, group *out)
{
    *out = *g;
    out->bs = group_search(g);
    int32_t hist[BG_MAXW][BG_MAXP + BG_GEN + 1], nh = g->n_prompt;
    memcpy(hist[0], g->prompt, (size_t)g->n_prompt * sizeof(int32_t));
    sched_opts so = opts(4, 64, 64, 4); /* only for sched_is_stop: EOS 1 */
    sched *s = sched_new(&so);
    sched_req r = {g->prompt, g->n_prompt, 0, GM_SAMPLING_GREEDY, NULL, 0, false, false, 0, 1, 0, NULL};
    sched_seq *q[1];
    assert_int_equal(sched_add(s, &r, q), SCHED_ACCEPTED);
    void *arg[2] = {s, q[0]};
    for (;;) {
        beam_top t[BG_MAXW];
        for (int32_t i = 0; i < beam_live(out->bs); i++) {
            fake_top(hash_tokens(hist[i], nh), 2 * g->width, out->top_ids[i], out->top_lps[i]);
            t[i] = (beam_top){2 * g->width, out->top_ids[i], out->top_lps[i]};
        }
        int32_t parent[BG_MAXW], token[BG_MAXW], next[BG_MAXW][BG_MAXP + BG_GEN + 1];
        if (beam_advance(out->bs, t, stop_of, arg, parent, token))
            break;
        for (int32_t i = 0; i < g->width; i++) {
            memcpy(next[i], hist[parent[i]], (size_t)nh * sizeof(int32_t));
            next[i][nh] = token[i];
        }
        memcpy(hist, next, sizeof next);
        nh++;
    }
    group_result(out);
    beam_destroy(&out->bs);
    sched_seq_free(s, &q[0]);
    sched_destroy(&s);
}

typedef struct bg_case {
    bool ahead, cache;
    int64_t blocks;
    int32_t max_seqs, n_groups, n_plain; /* plain: ordinary sequences beside the groups */
    int cancel_every;                   /* 0: none; else cancel group i when i % cancel_every == 1 */
    bool restart;                       /* fail every running sequence once, midway (a worker restart) */
} bg_case;

/* Feed the committed entries of plan p (hashes: each entry's KV hash, taken when it ran) to their groups;
 * advance the ready ones. */
static void feed(sched *s, group *gs, int32_t n_groups, const uint64_t *hashes, const sched_plan *p)
{
    for (int32_t i = 0; i < p->n; i++) {
        sched_seq *q = p->seqs[i];
        if (!q || !p->got[i] || !q->beam_lead)
            continue;
        group *g = NULL;
        for (int32_t k = 0; k < n_groups && !g; k++)
            if (gs[k].seqs[0] == q->beam_lead)
                g = &gs[k];
        assert_non_null(g);
        assert_false(g->done);
        fake_top(hashes[i], 2 * g->width, g->top_ids[q->index], g->top_lps[q->index]);
        g->fed |= 1u << q->index;
        if (g->fed != (1u << beam_live(g->bs)) - 1 || !sched_beam_ready(s, g->seqs[0]))
            continue;
        g->fed = 0;
        beam_top t[BG_MAXW];
        for (int32_t b = 0; b < beam_live(g->bs); b++)
            t[b] = (beam_top){2 * g->width, g->top_ids[b], g->top_lps[b]};
        int32_t parent[BG_MAXW], token[BG_MAXW];
        void *arg[2] = {s, g->seqs[0]};
        if (beam_advance(g->bs, t, stop_of, arg, parent, token)) {
            group_result(g);
            for (int32_t b = 0; b < g->width; b++)
                sched_finish_seq(s, g->seqs[b], SCHED_FINISH_STOP);
        } else {
            assert_int_equal(sched_beam_reseat(s, g->seqs[0], parent, token), GM_OK);
        }
    }
}

static void bg_run(const bg_case *c)
{
    enum { BS = 4 };
    sched_opts so = opts(c->max_seqs, 48, c->blocks, BS);
    so.prefix_cache = c->cache;
    sched *s = sched_new(&so);
    assert_non_null(s);
    fake_kv f;
    fake_init(&f, BS);
    group gs[16], ref;
    sched_seq *plain[16];
    int32_t pprompt[16][BG_MAXP];
    assert_true(c->n_groups <= 16 && c->n_plain <= 16);
    for (int32_t k = 0; k < c->n_groups; k++) {
        group *g = &gs[k];
        memset(g, 0, sizeof *g);
        g->n_prompt = 3 + (k * 7) % 13;
        make_prompt(g->prompt, g->n_prompt, 100 + k);
        g->width = 2 + k % 4;
        g->n_best = 1 + k % g->width;
        g->max_new = 4 + k % 7;
        g->lp = (float[]){1.0f, 0.0f, 2.0f, 0.5f}[k % 4];
        g->es = k % 3 == 1;
        sched_req r = {g->prompt, g->n_prompt, g->max_new, GM_SAMPLING_GREEDY, NULL, 0, false, false, 0, 1,
                       g->width, g};
        assert_int_equal(sched_add(s, &r, g->seqs), SCHED_ACCEPTED);
        g->bs = group_search(g);
    }
    for (int32_t k = 0; k < c->n_plain; k++) {
        make_prompt(pprompt[k], 5 + k, 900 + k);
        sched_req r = {pprompt[k], 5 + k, 8, GM_SAMPLING_GREEDY, NULL, 0, false, false, 0, 1, 0, NULL};
        assert_int_equal(sched_add(s, &r, &plain[k]), SCHED_ACCEPTED);
    }
    sched_plan p[2];
    int32_t toks[2][256];
    uint64_t hashes[2][256];
    int n_out = 0, steps = 0, depth = c->ahead ? 2 : 1;
    bool restarted = false;
    int64_t preempt0 = sched_preemptions(s);
    while (!sched_idle(s) || n_out > 0) {
        while (n_out < depth) {
            if (sched_plan_step(s, &p[n_out]) == 0)
                break;
            check_kv(s);
            fake_step(&f, &p[n_out], toks[n_out]);
            for (int32_t i = 0; i < p[n_out].n; i++) /* what the entry read, before later tables change */
                hashes[n_out][i] = p[n_out].steps[i].logits_mode ? hash_kv(&f, &p[n_out].steps[i]) : 0;
            n_out++;
        }
        assert_true(n_out > 0);
        sched_commit_step(s, &p[0], toks[0]);
        check_kv(s);
        feed(s, gs, c->n_groups, hashes[0], &p[0]);
        check_kv(s);
        p[0] = p[1];
        memcpy(toks[0], toks[1], sizeof toks[0]);
        memcpy(hashes[0], hashes[1], sizeof hashes[0]);
        n_out--;
        steps++;
        if (c->cancel_every && steps == 6) /* cancel some groups midway, every beam of them */
            for (int32_t k = 1; k < c->n_groups; k += c->cancel_every) {
                if (gs[k].done)
                    continue;
                gs[k].cancelled = gs[k].done = true;
                for (int32_t b = 0; b < gs[k].width; b++)
                    sched_finish_seq(s, gs[k].seqs[b], SCHED_FINISH_CANCELLED);
                check_kv(s);
            }
        if (c->restart && !restarted && steps == 9) { /* the workers are gone: every running sequence fails */
            sched_seq *failed[64];
            int32_t nf = sched_fail_running(s, failed);
            sched_abandon(s);
            n_out = 0;
            for (sched_seq *q; (q = sched_first_waiting(s));) /* and the waiting ones are refused */
                sched_finish_seq(s, q, SCHED_FINISH_ERROR);
            for (int32_t k = 0; k < c->n_groups; k++)
                if (!gs[k].done && gs[k].seqs[0]->state == SCHED_FINISHED) {
                    gs[k].cancelled = gs[k].done = true;
                    for (int32_t b = 0; b < gs[k].width; b++)
                        sched_finish_seq(s, gs[k].seqs[b], SCHED_FINISH_ERROR);
                }
            assert_true(nf > 0);
            restarted = true;
            check_kv(s);
        }
        assert_true(steps < 20000);
    }
    check_kv(s);
    assert_int_equal(sched_kv_used(s), 0); /* nothing held: every block free or cached */
    assert_int_equal(sched_kv_free(s) + sched_kv_cached(s), sched_kv_total(s));
    assert_int_equal(sched_running(s), 0);
    for (int32_t k = 0; k < c->n_groups; k++) {
        group *g = &gs[k];
        assert_true(g->done);
        if (!g->cancelled) {
            group_reference(g, &ref);
            assert_int_equal(g->n_res, ref.n_res);
            for (int32_t i = 0; i < g->n_res; i++) {
                assert_int_equal(g->res_n[i], ref.res_n[i]);
                assert_memory_equal(g->res[i], ref.res[i], (size_t)g->res_n[i] * sizeof(int32_t));
                assert_true(g->res_score[i] == ref.res_score[i]);
            }
        }
        for (int32_t b = 0; b < g->width; b++)
            sched_seq_free(s, &g->seqs[b]);
        beam_destroy(&g->bs);
    }
    if (c->blocks < 64)
        assert_true(sched_preemptions(s) > preempt0); /* the small pool preempted groups */
    assert_true(sched_beam_forks(s) > 0 || c->restart);
    for (int32_t k = 0; k < c->n_plain; k++)
        sched_seq_free(s, &plain[k]);
    check_kv(s);
    sched_destroy(&s);
    fake_free(&f);
}

static void test_groups(void **state)
{
    (void)state;
    for (int stop = 0; stop < 2; stop++) {
        g_stop_mod = stop ? 4 : 0;
        for (int ahead = 0; ahead < 2; ahead++)
            for (int cache = 0; cache < 2; cache++) {
                bg_case big = {ahead, cache, 1024, 48, 10, 4, 0, false};
                bg_run(&big);
                bg_case small = {ahead, cache, 26, 16, 10, 4, 0, false}; /* preemption of whole groups */
                bg_run(&small);
            }
    }
    g_stop_mod = 0;
}

static void test_cancel_restart(void **state)
{
    (void)state;
    for (int ahead = 0; ahead < 2; ahead++) {
        bg_case cancel = {ahead, true, 26, 16, 10, 3, 3, false};
        bg_run(&cancel);
        bg_case restart = {ahead, true, 1024, 48, 10, 3, 0, true};
        bg_run(&restart);
    }
}

/* A group that can never fit the slots or the pool is refused (no partial group waiting forever). */
static void test_refused(void **state)
{
    (void)state;
    sched_opts so = opts(4, 48, 64, 4);
    sched *s = sched_new(&so);
    int32_t prompt[5] = {2, 5, 6, 7, 8};
    sched_seq *q[SCHED_MAX_N];
    sched_req r = {prompt, 5, 4, GM_SAMPLING_GREEDY, NULL, 0, false, false, 0, 1, SCHED_MAX_BEAM + 1, NULL};
    assert_int_equal(sched_add(s, &r, q), SCHED_REJECT_INVALID);
    r.beam_width = 4;
    r.n = 2;
    assert_int_equal(sched_add(s, &r, q), SCHED_REJECT_INVALID);
    r.n = 1;
    r.sampling.presence_penalty = 1.0f;
    assert_int_equal(sched_add(s, &r, q), SCHED_REJECT_INVALID);
    r.sampling.presence_penalty = 0.0f;
    r.beam_width = 5; /* more beams than slots */
    assert_int_equal(sched_add(s, &r, q), SCHED_REJECT_TOO_LONG);
    r.beam_width = 4, r.max_tokens = 60; /* 4 x 17 blocks > 64 */
    assert_int_equal(sched_add(s, &r, q), SCHED_REJECT_TOO_LONG);
    sched_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_cancel_restart),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
