/* sample_scenario.h - a serving-like run of an engine's sampling extras, checked step by step against the
 * CPU twins (kernels/cpu/sample.h) applied to the engine's own raw logits:
 *   - six sequences with penalties, min_tokens, logprobs (0, 3, 5 and 20 alternatives), greedy and sampled,
 *     a chunked prompt, decode steps fed back with GM_TOKEN_PREVIOUS (run-ahead), a sequence preempted and
 *     recomputed from position 0 in another slot, a finished sequence's slot reused by a new one;
 *   - every sampled row: the log-probabilities (cpu_logprobs of the raw row), the token (cpu_sample of the
 *     row penalized from the sequence's tokens so far and masked while min_tokens is not reached), no stop
 *     id while masked;
 *   - an entry with penalties that does not continue its slot's history is refused.
 * tol says how exact: the CPU engine matches to the bit (margin 0), the CUDA engine within its float
 * tolerances (a greedy token is compared where the best two penalized logits are further apart than
 * margin; sampled tokens where the draw is not within margin of a boundary, at least 90% of them).
 * Include after <cmocka.h>; needs worker/engine.h and kernels/cpu/sample.h. */
#ifndef GM_TEST_SAMPLE_SCENARIO_H
#define GM_TEST_SAMPLE_SCENARIO_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/sample.h"
#include "worker/engine.h"

#define SC_SEQS 8    /* slots the engine needs, at least */
#define SC_BLKS 24   /* KV blocks per sequence (block size 4: 96 tokens) */
#define SC_STEPS 18  /* decode steps */

typedef struct sc_tol {
    double lp;    /* log-probabilities: absolute */
    float margin; /* logits closer than this may order differently */
} sc_tol;

typedef struct sc_seq {
    int32_t slot, n_prompt, n; /* n: tokens so far (prompt, then generated) */
    int32_t ids[128];
    int32_t bt[SC_BLKS];
    gm_sampling samp;
    gm_stop_set stops;
    int32_t fed;  /* tokens whose KV is written (the next entry starts there) */
    int live;
} sc_seq;

typedef struct sc_run {
    gm_engine *e;
    int64_t V;
    sc_tol tol;
    float *logits, *work;
    int32_t *cnt;
    int sampled_rows, sampled_same, greedy_checked;
} sc_run;

static void sc_seq_init(sc_seq *s, int32_t slot, int32_t blk0, int32_t n_prompt, int salt, gm_sampling samp)
{
    memset(s, 0, sizeof *s);
    s->slot = slot;
    s->n_prompt = s->n = n_prompt;
    for (int32_t i = 0; i < n_prompt; i++) /* repeats inside the prompt: the repetition penalty sees them */
        s->ids[i] = i == 0 ? 2 : 3 + (int32_t)((i % 5) * 131 + salt * 977) % 4000;
    for (int32_t i = 0; i < SC_BLKS; i++)
        s->bt[i] = blk0 + i;
    s->samp = samp;
    s->samp.n_prompt = n_prompt;
    s->live = 1;
}

/* The entry of s for the next step: a prompt chunk of up to `chunk` tokens (0 = the rest), or a decode of
 * the token sampled last (fed back as GM_TOKEN_PREVIOUS). */
static gm_seq_step sc_entry(const sc_seq *s, int32_t chunk)
{
    static const int32_t prev = GM_TOKEN_PREVIOUS;
    gm_seq_step q;
    memset(&q, 0, sizeof q);
    q.slot = s->slot;
    q.start_pos = s->fed;
    q.n_tokens = s->fed < s->n_prompt ? (chunk > 0 && chunk < s->n - s->fed ? chunk : s->n - s->fed) : 1;
    q.tokens = s->fed < s->n_prompt || s->fed == 0 ? s->ids + s->fed : &prev; /* a decode: fed back */
    q.block_table = s->bt;
    q.n_blocks = SC_BLKS;
    q.logits_mode = q.start_pos + q.n_tokens == s->n ? GM_LOGITS_LAST : GM_LOGITS_NONE;
    q.sampling = s->samp;
    q.stops = s->samp.min_tokens > 0 ? &s->stops : NULL;
    return q;
}

/* The k ids with the largest logits of row [V] (ties: lower id). */
static void sc_top_ids(const float *row, int64_t V, int32_t k, int32_t *ids)
{
    double lse;
    float lps[GM_MAX_TOP_LOGPROBS];
    cpu_logprobs(row, V, k, &lse, ids, lps);
}

/* The best and second-best of row [V]: their gap. */
static float sc_gap(const float *row, int64_t V)
{
    int32_t ids[2];
    sc_top_ids(row, V, 2, ids);
    return row[ids[0]] - row[ids[1]];
}

/* Check one sampled row of entry q of sequence s: the engine's token tok and log-probabilities lp against
 * the twins on the raw row. */
static void sc_check_row(sc_run *r, const sc_seq *s, const gm_seq_step *q, const float *raw, int32_t tok,
                         const gm_token_logprobs *lp)
{
    int64_t V = r->V;
    const gm_sampling *sp = &q->sampling;
    if (gm_sampling_wants_logprobs(sp)) {
        double lse;
        int32_t ids[GM_MAX_TOP_LOGPROBS];
        float lps[GM_MAX_TOP_LOGPROBS];
        cpu_logprobs(raw, V, sp->top_logprobs, &lse, ids, lps);
        assert_int_equal(lp->n_top, sp->top_logprobs);
        for (int32_t k = 0; k < lp->n_top; k++) {
            assert_true(fabs((double)lp->top_logprobs[k] - lps[k]) <= r->tol.lp);
            /* the same id where its neighbours are clearly apart */
            bool clear = (k == 0 || lps[k - 1] - lps[k] > r->tol.margin) &&
                         (k + 1 == lp->n_top || lps[k] - lps[k + 1] > r->tol.margin);
            if (clear)
                assert_int_equal(lp->top_ids[k], ids[k]);
        }
        assert_true(fabs((double)lp->logprob - ((double)raw[tok] - lse)) <= r->tol.lp);
    }
    /* the token from the twins: penalties from the sequence's tokens so far, then the mask */
    memcpy(r->work, raw, (size_t)V * sizeof *raw);
    if (gm_sampling_has_penalties(sp))
        cpu_penalize(r->work, V, s->ids, (int64_t)q->start_pos + q->n_tokens, sp, r->cnt);
    if (gm_seq_step_masks_stops(q)) {
        cpu_mask_ids(r->work, V, q->stops->ids, q->stops->n);
        for (int32_t k = 0; k < q->stops->n; k++)
            assert_int_not_equal(tok, q->stops->ids[k]);
    }
    uint64_t counter = (uint64_t)q->start_pos + (uint64_t)q->n_tokens;
    int32_t want = cpu_sample(r->work, V, sp, counter);
    if (gm_sampling_is_greedy(sp)) {
        if (sc_gap(r->work, V) > r->tol.margin) {
            if (tok != want)
                fail_msg("slot %d, position %d: greedy %d, the twins %d", (int)q->slot, (int)counter, (int)tok,
                         (int)want);
            r->greedy_checked++;
        }
    } else {
        r->sampled_rows++;
        r->sampled_same += tok == want;
        if (r->tol.margin == 0.0f && tok != want)
            fail_msg("slot %d, position %d: sampled %d, the twins %d", (int)q->slot, (int)counter, (int)tok,
                     (int)want);
    }
}

/* One step of the live sequences (prompt chunks of `chunk`); appends what they sampled. */
static void sc_step(sc_run *r, sc_seq *seqs, int n, int32_t chunk)
{
    gm_seq_step q[SC_SEQS];
    int idx[SC_SEQS], m = 0, rows = 0;
    for (int i = 0; i < n; i++)
        if (seqs[i].live) {
            q[m] = sc_entry(&seqs[i], chunk);
            rows += q[m].logits_mode != GM_LOGITS_NONE;
            idx[m++] = i;
        }
    int32_t tok[SC_SEQS];
    gm_token_logprobs lp[SC_SEQS];
    for (int i = 0; i < m; i++) /* as gemma-worker does: a step of prompt chunks only may leave them */
        tok[i] = -1, lp[i].n_top = -1, lp[i].logprob = NAN;
    gm_step_out out = {tok, r->logits, rows, lp};
    gm_status st = gm_engine_step(r->e, q, m, &out);
    if (st)
        fail_msg("step: %s: %s", gm_status_str(st), gm_last_error());
    int row = 0;
    for (int i = 0; i < m; i++) {
        sc_seq *s = &seqs[idx[i]];
        s->fed = q[i].start_pos + q[i].n_tokens;
        if (q[i].logits_mode == GM_LOGITS_NONE) {
            assert_int_equal(tok[i], -1);
            continue;
        }
        assert_true(tok[i] >= 0 && tok[i] < r->V);
        sc_check_row(r, s, &q[i], r->logits + (int64_t)row * r->V, tok[i], &lp[i]);
        if (!gm_sampling_wants_logprobs(&q[i].sampling))
            assert_int_equal(lp[i].n_top, -1); /* untouched */
        row++;
        s->ids[s->n++] = tok[i];
    }
}

/* The top k ids of a prompt's first sampled row, from a step on a spare slot (to aim the stop sets). */
static void sc_probe(sc_run *r, const sc_seq *s, int32_t spare_slot, int32_t k, gm_stop_set *out)
{
    sc_seq t = *s;
    t.slot = spare_slot;
    t.samp = GM_SAMPLING_GREEDY;
    gm_seq_step q = sc_entry(&t, 0);
    int32_t tok;
    gm_step_out o = {&tok, r->logits, 1, NULL};
    if (gm_engine_step(r->e, &q, 1, &o))
        fail_msg("probe: %s", gm_last_error());
    out->n = k;
    sc_top_ids(r->logits, r->V, k, out->ids);
}

/* An engine of backend b on model_dir sized for the scenario (caller destroys it). */
static gm_engine *sc_engine(gm_backend b, const char *model_dir)
{
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = b;
    o.model_dir = model_dir;
    o.kv_block_size = 4;
    o.kv_num_blocks = 8 * SC_BLKS;
    o.max_seqs = SC_SEQS;
    o.max_tokens = 256;
    o.max_context = 96;
    gm_engine *e = NULL;
    gm_status st = gm_engine_create(&o, &e);
    if (st)
        fail_msg("engine: %s: %s", gm_status_str(st), gm_last_error());
    return e;
}

static void sc_run_all(gm_engine *e, sc_tol tol)
{
    sc_run r = {e, e->cfg.vocab_size, tol, NULL, NULL, NULL, 0, 0, 0};
    r.logits = malloc((size_t)(SC_SEQS * r.V) * sizeof(float));
    r.work = malloc((size_t)r.V * sizeof(float));
    r.cnt = calloc((size_t)r.V, sizeof(int32_t));
    assert_true(r.logits && r.work && r.cnt);
    assert_true(e->opts.max_seqs >= SC_SEQS && e->kv_num_blocks >= 8 * SC_BLKS && e->opts.kv_block_size == 4);
    sc_seq s[6];
    gm_sampling pen = GM_SAMPLING_GREEDY, hot = {0.9f, 0, 1.0f, 11}, top = {1.0f, 20, 0.9f, 5};
    pen.presence_penalty = 0.5f, pen.frequency_penalty = 0.8f, pen.repetition_penalty = 1.5f;
    pen.logprobs = 1, pen.top_logprobs = 5;
    hot.frequency_penalty = 0.5f, hot.repetition_penalty = 1.2f, hot.min_tokens = 4;
    hot.logprobs = 1, hot.top_logprobs = 3;
    top.presence_penalty = -0.5f, top.logprobs = 1, top.top_logprobs = GM_MAX_TOP_LOGPROBS;
    sc_seq_init(&s[0], 0, 0, 9, 1, pen);
    sc_seq_init(&s[1], 1, SC_BLKS, 9, 1, pen); /* s[0]'s twin: never preempted */
    sc_seq_init(&s[2], 2, 2 * SC_BLKS, 11, 2, hot);
    sc_seq_init(&s[3], 3, 3 * SC_BLKS, 6, 3, GM_SAMPLING_GREEDY);
    sc_seq_init(&s[4], 4, 4 * SC_BLKS, 7, 4, top);
    sc_probe(&r, &s[2], 7, 3, &s[2].stops); /* its three likeliest first tokens are stops until 4 outputs */
    s[2].stops.ids[s[2].stops.n++] = 1;      /* and EOS */
    s[5].live = 0;
    /* prompts: s[2]'s in chunks of 4 (the first ones sample nothing), the others whole */
    while (s[2].fed < s[2].n_prompt)
        sc_step(&r, s, 5, 4);
    for (int k = 0; k < SC_STEPS; k++) {
        if (k == 6) { /* s[0] preempted: recomputed from position 0 in another slot and other blocks */
            s[0].slot = 6, s[0].fed = 0;
            for (int32_t i = 0; i < SC_BLKS; i++)
                s[0].bt[i] = 5 * SC_BLKS + i;
        }
        if (k == 8) { /* s[3] done; a new sequence with penalties and min_tokens takes its slot */
            s[3].live = 0;
            gm_sampling rep = GM_SAMPLING_GREEDY;
            rep.repetition_penalty = 2.0f, rep.presence_penalty = 1.0f, rep.min_tokens = 2, rep.logprobs = 1;
            sc_seq_init(&s[5], 3, 6 * SC_BLKS, 5, 5, rep);
            sc_probe(&r, &s[5], 7, 2, &s[5].stops);
        }
        sc_step(&r, s, 6, 0);
    }
    /* the preempted sequence sampled what its twin did (the CPU engine is batch invariant) */
    assert_int_equal(s[0].n, s[1].n);
    if (tol.margin == 0.0f)
        assert_memory_equal(s[0].ids, s[1].ids, (size_t)s[0].n * sizeof(int32_t));
    if (tol.margin > 0.0f) /* the CUDA engine's draws follow the twins' at least 9 times in 10 */
        assert_true(r.sampled_same * 10 >= r.sampled_rows * 9);
    assert_true(r.greedy_checked > SC_STEPS);
    print_message("scenario: %d greedy rows checked, %d of %d sampled rows as the twins\n", r.greedy_checked,
                  r.sampled_same, r.sampled_rows);

    /* penalties on a slot whose history the engine does not hold: refused before anything runs */
    gm_seq_step q = sc_entry(&s[4], 0);
    q.start_pos = 3; /* s[4]'s slot holds more */
    int32_t t;
    gm_step_out o = {&t, NULL, 0, NULL};
    assert_int_equal(gm_engine_step(e, &q, 1, &o), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "penalties need the slot's tokens from position 0"));
    free(r.logits), free(r.work), free(r.cnt);
}

#endif
