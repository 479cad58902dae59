/* test_daemon_spec.c - speculative decoding in the scheduler (daemon/spec.h, docs/SPECULATIVE.md), without
 * processes: prompt-lookup drafting, verify entries, acceptance, and that the outputs are those of plain
 * decoding token for token - with ragged prompts, chunked prefill, run-ahead beside speculative sequences,
 * a KV pool small enough to preempt, EOS inside an accepted run, max_tokens, and the prefix cache (only
 * accepted tokens may be registered: a later request that reuses the blocks must get the same output).
 *
 * The fake engine's "model" is predictable enough for drafts to hit and miss: the next token is a fixed
 * function of the previous two (ids 3..10), perturbed wherever a hash of the WHOLE KV read back through the
 * block table says so. So drafts are often right, sometimes wrong, and any KV fault (a rejected draft left
 * where it is read, a wrong table after blocks are given back, a bad registration) changes the output. */
#include "tests/test_sched_fake.h"

#include "daemon/spec.h"

#define NS 20
#define GEN_MAX 60

/* The token that follows kv[0..end) for a sequence sampled with seed. */
static int32_t spec_model(const int32_t *kv, int32_t end, uint64_t seed)
{
    static const int32_t next[8][8] = {
        {4, 5, 3, 7, 6, 3, 9, 10}, {3, 3, 8, 4, 4, 10, 6, 5}, {9, 6, 4, 3, 10, 8, 7, 3}, {5, 10, 7, 8, 3, 4, 4, 6},
        {8, 4, 10, 5, 9, 7, 3, 4}, {6, 9, 3, 10, 5, 5, 8, 7}, {10, 7, 5, 6, 8, 9, 4, 3}, {7, 8, 6, 9, 3, 6, 5, 4},
    };
    uint64_t h = seed * 0x9e3779b97f4a7c15ull + (uint64_t)end;
    for (int32_t p = 0; p < end; p++)
        h = gm_mix64(h ^ (uint64_t)(kv[p] + 1) * 0x100000001b3ull);
    int32_t a = end >= 2 ? kv[end - 2] : 0, b = kv[end - 1];
    int32_t t = next[(a % 8 + 8) % 8][(b % 8 + 8) % 8];
    if (g_eos_mod && h % (uint64_t)g_eos_mod == 0)
        return 1; /* EOS */
    if (h % 7 == 0)
        t = 3 + (t - 3 + 1 + (int32_t)((h >> 8) % 7)) % 8; /* the KV-dependent surprise */
    return t;
}

/* The whole KV of entry s up to end, read back through its block table. */
static void read_kv(const fake_kv *f, const gm_seq_step *s, int32_t end, int32_t *kv)
{
    for (int32_t p = 0; p < end; p++)
        kv[p] = f->data[s->block_table[p / f->block_size] * f->block_size + p % f->block_size];
}

/* Run one plan: copies, writes, then a sample per LAST entry (tokens) and per verify row (vt; *n_vt). */
static void spec_step(fake_kv *f, const sched_plan *p, int32_t *tokens, int32_t *vt, int64_t *n_vt)
{
    int32_t bs = f->block_size, kv[1100];
    for (int32_t c = 0; c < p->n_copies; c++)
        memcpy(f->data + p->copies[c].dst * bs, f->data + p->copies[c].src * bs, sizeof(int32_t) * (size_t)bs);
    *n_vt = 0;
    for (int32_t i = 0; i < p->n; i++) {
        const gm_seq_step *s = &p->steps[i];
        for (int32_t k = 0; k < s->n_tokens; k++) {
            int32_t pos = s->start_pos + k, t = s->tokens[k];
            if (t == -1) {
                assert_int_equal(s->n_tokens, 1);
                t = f->last[s->slot]; /* -1 after a verify entry: never asked for */
                assert_true(t >= 0);
                f->n_fed++;
            }
            f->data[s->block_table[pos / bs] * bs + pos % bs] = t;
        }
        int32_t end = s->start_pos + s->n_tokens;
        assert_true(s->n_blocks * bs >= end);
        read_kv(f, s, end, kv);
        if (s->logits_mode == GM_LOGITS_VERIFY) {
            assert_true(s->n_tokens >= 2);
            for (int32_t j = 0; j < s->n_tokens; j++)
                vt[(*n_vt)++] = spec_model(kv, s->start_pos + j + 1, s->sampling.seed);
            tokens[i] = vt[*n_vt - 1];
            f->last[s->slot] = -1;
        } else if (s->logits_mode == GM_LOGITS_LAST) {
            tokens[i] = spec_model(kv, end, s->sampling.seed);
            f->last[s->slot] = tokens[i];
        } else {
            tokens[i] = -1;
            f->last[s->slot] = -1;
        }
    }
}

/* Run s until idle, with up to `depth` plans outstanding; returns the verify entries seen. */
static int run_spec(sched *s, fake_kv *f, int depth)
{
    sched_plan p[2];
    int32_t toks[2][256], vt[2][2048];
    int64_t nv[2];
    int n_out = 0, steps = 0, verifies = 0;
    while (!sched_idle(s) || n_out > 0) {
        while (n_out < depth) {
            if (sched_plan_step(s, &p[n_out]) == 0)
                break;
            check_kv(s);
            for (int32_t i = 0; i < p[n_out].n; i++)
                verifies += p[n_out].steps[i].logits_mode == GM_LOGITS_VERIFY;
            spec_step(f, &p[n_out], toks[n_out], vt[n_out], &nv[n_out]);
            n_out++;
        }
        assert_true(n_out > 0);
        assert_false(sched_commit_verified(s, &p[0], toks[0], vt[0], nv[0] + 1)); /* a wrong count: refused */
        assert_true(sched_commit_verified(s, &p[0], toks[0], vt[0], nv[0]));
        check_kv(s);
        p[0] = p[1];
        memcpy(toks[0], toks[1], sizeof toks[0]);
        memcpy(vt[0], vt[1], sizeof vt[0]);
        nv[0] = nv[1];
        n_out--;
        assert_true(++steps < 100000);
    }
    return verifies;
}

typedef struct spec_case {
    int depth;        /* plans outstanding: 2 = run-ahead */
    int64_t blocks;   /* KV pool */
    int32_t budget;   /* tokens per step */
    int eos_mod;
    bool prefix_cache;
} spec_case;

/* NS sequences (ragged prompts, max_tokens, k = 0..8) through one scheduler with speculation and one
 * without: the same outputs, finish reasons and lengths; every block back. Returns the sequences' ids in
 * out [NS][n_prompt + GEN_MAX] (prompt then output) and their lengths in len. */
static void run_case(const spec_case *c, int32_t out[NS][80 + GEN_MAX], int32_t *len)
{
    int32_t bs = 4;
    g_eos_mod = c->eos_mod;
    int32_t prompts[NS][80], np[NS];
    int64_t drafted = 0, accepted = 0;
    int verifies = 0;
    for (int run = 0; run < 2; run++) {
        sched_opts o = opts(8, c->budget, c->blocks, bs);
        o.prefix_cache = run == 1 && c->prefix_cache; /* the reference: plain decoding, nothing shared */
        sched *s = sched_new(&o);
        assert_non_null(s);
        fake_kv f;
        fake_init(&f, bs);
        sched_seq *q[NS];
        for (int i = 0; i < NS; i++) {
            np[i] = 2 + (i * 13) % 70;
            make_prompt(prompts[i], np[i], i % 5); /* some share a prefix (prefix cache) */
            for (int32_t k = 1; k < np[i]; k++)
                prompts[i][k] = 3 + prompts[i][k] % 8; /* the model's ids: lookups can hit in the prompt */
            sched_req r = {0};
            r.prompt = prompts[i];
            r.n_prompt = np[i];
            r.max_tokens = 1 + (i * 17) % GEN_MAX;
            r.sampling.seed = (uint64_t)i * 31 + 1;
            r.spec_k = run == 0 ? 0 : 1 + i % 8;
            assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
        }
        int v = run_spec(s, &f, c->depth);
        for (int i = 0; i < NS; i++) {
            assert_int_equal(q[i]->state, SCHED_FINISHED);
            if (run == 0) {
                len[i] = q[i]->n_tokens;
                memcpy(out[i], q[i]->tokens, sizeof(int32_t) * (size_t)len[i]);
                assert_int_equal(q[i]->finish, c->eos_mod && out[i][len[i] - 1] == 1 ? SCHED_FINISH_STOP
                                                                                      : SCHED_FINISH_LENGTH);
            } else {
                assert_int_equal(q[i]->n_tokens, len[i]);
                assert_memory_equal(q[i]->tokens, out[i], sizeof(int32_t) * (size_t)len[i]);
                assert_int_equal(q[i]->finish, c->eos_mod && out[i][len[i] - 1] == 1 ? SCHED_FINISH_STOP
                                                                                      : SCHED_FINISH_LENGTH);
            }
            sched_seq_free(s, &q[i]);
        }
        assert_int_equal(sched_kv_used(s), 0);
        assert_int_equal(sched_outstanding(s), 0);
        if (run == 1) {
            if (c->depth == 2) /* every sequence speculates: run-ahead came from the plain stretches after a miss */
                assert_true(f.n_fed > 0);
            verifies = v;
            drafted = sched_spec_drafted(s);
            accepted = sched_spec_accepted(s);
            assert_true(sched_spec_steps(s) <= v); /* a preempted sequence's verify is dropped uncounted */
            assert_true(sched_spec_steps(s) > 0);
            if (c->blocks < 100)
                assert_true(sched_preemptions(s) > 0);
        } else {
            assert_int_equal(v, 0);
            assert_int_equal(sched_spec_drafted(s), 0);
        }
        sched_destroy(&s);
        fake_free(&f);
    }
    /* drafts both hit and missed, so both paths of the commit ran */
    assert_true(verifies > 20);
    assert_true(accepted > 0 && accepted < drafted);
    g_eos_mod = 0;
}

static void test_spec_matches_plain(void **state)
{
    (void)state;
    int32_t out[NS][80 + GEN_MAX], len[NS];
    spec_case c = {1, 4096, 64, 0, false};
    run_case(&c, out, len);
}

static void test_spec_runahead_eos(void **state)
{
    (void)state;
    int32_t out[NS][80 + GEN_MAX], len[NS];
    spec_case c = {2, 4096, 24, 23, false};
    run_case(&c, out, len);
}

/* A pool so small that sequences are preempted (with verify entries outstanding) and recomputed. */
static void test_spec_preempt(void **state)
{
    (void)state;
    int32_t out[NS][80 + GEN_MAX], len[NS];
    spec_case c = {2, 70, 32, 0, false};
    run_case(&c, out, len);
}

/* The prefix cache: sequences register their blocks as they go; then requests whose prompts are the first
 * round's prompt + output reuse them and must continue exactly as plain decoding of those prompts. */
static void test_spec_prefix_cache(void **state)
{
    (void)state;
    int32_t out[NS][80 + GEN_MAX], len[NS];
    spec_case c = {2, 4096, 48, 0, true};
    run_case(&c, out, len);
    int32_t bs = 4;
    int32_t want[NS][80 + 2 * GEN_MAX], wlen[NS];
    for (int run = 0; run < 2; run++) {
        sched_opts o = opts(8, 48, 4096, bs);
        o.prefix_cache = run == 1;
        sched *s = sched_new(&o);
        fake_kv f;
        fake_init(&f, bs);
        sched_seq *q[NS];
        /* run 0: plain decoding, no cache (the reference); run 1: a first round with speculation registers
         * what it computes, then a second round takes it from the cache */
        for (int i = 0; i < NS; i++) {
            sched_req r = {0};
            r.prompt = out[i];
            r.n_prompt = len[i];
            r.max_tokens = 20;
            r.sampling.seed = 77;
            r.spec_k = run == 0 ? 0 : 5;
            assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
        }
        run_spec(s, &f, 2);
        for (int i = 0; i < NS; i++) {
            sched_seq_free(s, &q[i]);
            sched_req r = {0};
            r.prompt = out[i];
            r.n_prompt = len[i];
            r.max_tokens = 20;
            r.sampling.seed = 77;
            r.spec_k = run == 0 ? 0 : 3;
            assert_int_equal(sched_add(s, &r, &q[i]), SCHED_ACCEPTED);
        }
        run_spec(s, &f, 2);
        assert_true(run == 0 || sched_prefix_hits(s) > 0);
        for (int i = 0; i < NS; i++) {
            if (run == 0) {
                wlen[i] = q[i]->n_tokens;
                memcpy(want[i], q[i]->tokens, sizeof(int32_t) * (size_t)wlen[i]);
            } else {
                assert_int_equal(q[i]->n_tokens, wlen[i]);
                assert_memory_equal(q[i]->tokens, want[i], sizeof(int32_t) * (size_t)wlen[i]);
            }
            sched_seq_free(s, &q[i]);
        }
        sched_destroy(&s);
        fake_free(&f);
    }
}

/* The drafter's definition, the slow way: for g = 3 down to 1, the latest start of the last g tokens
 * earlier in tok; the k tokens after it, reading on into the draft. */
static int32_t draft_ref(const int32_t *tok, int32_t n, int32_t k, int32_t *out)
{
    for (int32_t g = SPEC_NGRAM_MAX < n - 1 ? SPEC_NGRAM_MAX : n - 1; g >= 1; g--)
        for (int32_t i = n - g - 1; i >= 0; i--) {
            if (memcmp(tok + i, tok + n - g, sizeof(int32_t) * (size_t)g))
                continue;
            for (int32_t j = 0; j < k; j++)
                out[j] = i + g + j < n ? tok[i + g + j] : out[i + g + j - n];
            return k;
        }
    return 0;
}

/* The drafter alone. */
static void test_spec_draft(void **state)
{
    (void)state;
    int32_t out[SPEC_MAX_K], ref[SPEC_MAX_K], seq[48];
    uint64_t h = 5;
    for (int t = 0; t < 3000; t++) { /* random texts over 2..5 ids: every kind of match */
        h = gm_mix64(h);
        int32_t n = 1 + (int32_t)(h % 47), alpha = 2 + (int32_t)((h >> 8) % 4), k = 1 + (int32_t)((h >> 16) % 8);
        for (int32_t i = 0; i < n; i++)
            seq[i] = (int32_t)((h = gm_mix64(h)) % (uint64_t)alpha);
        int32_t d = spec_draft(seq, n, k, out);
        assert_int_equal(d, draft_ref(seq, n, k, ref));
        assert_memory_equal(out, ref, sizeof(int32_t) * (size_t)d);
    }
    /* the longest suffix wins, its latest occurrence: "7 8 9" at 1 and 6; the later one is followed by 5 */
    int32_t a[] = {2, 7, 8, 9, 4, 1, 7, 8, 9, 5, 6, 3, 7, 8, 9};
    assert_int_equal(spec_draft(a, 15, 3, out), 3);
    assert_int_equal(out[0], 5);
    assert_int_equal(out[1], 6);
    assert_int_equal(out[2], 3);
    /* a match near the end reads on into the draft: a repeating text repeats */
    int32_t b[] = {2, 4, 5, 4, 5, 4};
    assert_int_equal(spec_draft(b, 6, 5, out), 5);
    int32_t want_b[] = {5, 4, 5, 4, 5};
    assert_memory_equal(out, want_b, sizeof want_b);
    /* only a 1-gram matches */
    int32_t c[] = {2, 9, 3, 4, 9};
    assert_int_equal(spec_draft(c, 5, 2, out), 2);
    assert_int_equal(out[0], 3);
    assert_int_equal(out[1], 4);
    /* nothing repeats, too short, no k */
    int32_t d[] = {2, 3, 4, 5};
    assert_int_equal(spec_draft(d, 4, 4, out), 0);
    assert_int_equal(spec_draft(d, 1, 4, out), 0);
    assert_int_equal(spec_draft(b, 6, 0, out), 0);
    assert_int_equal(spec_draft(b, 6, 100, out), SPEC_MAX_K); /* capped */
    /* acceptance: the common prefix */
    int32_t dr[] = {5, 6, 7}, g1[] = {5, 6, 9, 1}, g2[] = {5, 6, 7, 8}, g3[] = {4, 6, 7, 8};
    assert_int_equal(spec_accepted(dr, 3, g1), 2);
    assert_int_equal(spec_accepted(dr, 3, g2), 3);
    assert_int_equal(spec_accepted(dr, 3, g3), 0);
}

/* Requests that cannot speculate: k out of range is refused; penalties and log-probabilities turn it off. */
static void test_spec_request(void **state)
{
    (void)state;
    sched_opts o = opts(4, 64, 256, 4);
    sched *s = sched_new(&o);
    int32_t prompt[] = {2, 5, 6, 5, 6, 5};
    sched_seq *q = NULL;
    sched_req r = {0};
    r.prompt = prompt;
    r.n_prompt = 6;
    r.max_tokens = 4;
    r.spec_k = SPEC_MAX_K + 1;
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_INVALID);
    r.spec_k = -1;
    assert_int_equal(sched_add(s, &r, &q), SCHED_REJECT_INVALID);
    r.spec_k = 4;
    r.sampling.presence_penalty = 0.5f;
    assert_int_equal(sched_add(s, &r, &q), SCHED_ACCEPTED);
    assert_int_equal(q->spec_k, 0);
    sched_seq_free(s, &q);
    r.sampling.presence_penalty = 0;
    r.sampling.logprobs = 1;
    assert_int_equal(sched_add(s, &r, &q), SCHED_ACCEPTED);
    assert_int_equal(q->spec_k, 0);
    sched_seq_free(s, &q);
    r.sampling.logprobs = 0;
    assert_int_equal(sched_add(s, &r, &q), SCHED_ACCEPTED);
    assert_int_equal(q->spec_k, 4);
    sched_seq_free(s, &q);
    sched_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_draft),
        cmocka_unit_test(test_spec_request),
        cmocka_unit_test(test_spec_matches_plain),
        cmocka_unit_test(test_spec_runahead_eos),
        cmocka_unit_test(test_spec_preempt),
        cmocka_unit_test(test_spec_prefix_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
