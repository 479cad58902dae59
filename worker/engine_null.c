/* engine_null.c - a backend without a model: each sequence gets a pseudo-random
 * token id in [3, vocab) (never EOS) drawn from (seed, position), so the serving
 * path can be measured and tested without weights. Every rank draws the same
 * ids, so each knows every slot's last sample (run-ahead, engine.h) without a
 * broadcast. Asked for log-probabilities, it reports those of that uniform draw; penalties and
 * min_tokens change nothing (no token is more likely than another, and EOS never comes).
 *
 * GM_NULL_STEP_US=N in the environment (gemmad passes it on to its workers)
 * makes every step also sleep N microseconds, standing in for the time a GPU
 * would spend on it: then the serving path's own cost per step shows as the
 * difference from N (bench/SERVING.md, run-ahead).
 *
 * GM_NULL_NAN_SEED=S makes every sequence sampled with seed S come out as if its logits
 * were NaN (GM_SAMPLE_NONFINITE), the others in the same step as usual: the path of a
 * numerical fault, end to end, without a broken model.
 *
 * GM_NULL_CYCLE=N makes the token at position p 3 + p % N for every sequence: an output that repeats
 * itself, so speculative decoding's prompt lookup (docs/SPECULATIVE.md) drafts it right every time and
 * its serving-path cost can be measured. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/gguf_model.h"
#include "engine.h"
#include "engine_check.h"
#include "engine_feed.h"

typedef struct null_engine {
    gm_engine base;
    gm_feed feed;
    long step_us; /* emulated device time per step (GM_NULL_STEP_US), 0 = none */
    bool nan_on;  /* GM_NULL_NAN_SEED given */
    uint32_t cycle; /* GM_NULL_CYCLE: tokens repeat with this period (0 = random) */
    uint64_t nan_seed;
} null_engine;

/* The distribution the null backend draws from: uniform over the span ids from 3 on, so every
 * drawn token has log-probability -log(span) and the most likely are 3, 4, ... (ties: lower id). */
static void null_logprobs(uint32_t span, int32_t n_top, gm_token_logprobs *lp)
{
    float l = -(float)log((double)span);
    lp->logprob = l;
    lp->n_top = n_top < (int32_t)span ? n_top : (int32_t)span;
    for (int32_t k = 0; k < lp->n_top; k++) {
        lp->top_ids[k] = 3 + k;
        lp->top_logprobs[k] = l;
    }
}

/* The token at position pos of a sequence: uniform over ids 3.. from (seed, pos), or with GM_NULL_CYCLE=N
 * 3 + pos % N (a text that repeats itself, which prompt lookup drafts exactly). */
static int32_t null_draw(const null_engine *ne, const gm_seq_step *s, uint64_t pos, uint32_t span)
{
    if (ne->cycle > 0)
        return 3 + (int32_t)(pos % (uint64_t)(ne->cycle < span ? ne->cycle : span));
    uint32_t r = (uint32_t)(gm_rng_uniform(s->sampling.seed, pos) * (float)span);
    return 3 + (int32_t)(r < span ? r : span - 1);
}

static gm_status null_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out)
{
    null_engine *ne = (null_engine *)e;
    const gm_seq_step *q = NULL;
    gm_status st = gm_feed_resolve(&ne->feed, seqs, n_seqs, &q);
    if (st)
        return st;
    int64_t rows = 0;
    st = gm_engine_check_step(e, q, n_seqs, out, NULL, &rows);
    if (st)
        return st;
    if (out && out->logits && e->opts.tp_rank == 0)
        memset(out->logits, 0, (size_t)rows * (size_t)e->cfg.vocab_size * sizeof(float));
    uint32_t span = (uint32_t)e->cfg.vocab_size - 3u;
    int32_t *tok = ne->feed.sampled;
    int64_t vo = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &q[i];
        if (s->logits_mode == GM_LOGITS_NONE) {
            tok[i] = -1;
            continue;
        }
        /* a verify entry samples at each new position as a LAST entry ending there would */
        int32_t first = s->logits_mode == GM_LOGITS_VERIFY ? 1 : s->n_tokens;
        for (int32_t j = first; j <= s->n_tokens; j++) {
            tok[i] = null_draw(ne, s, (uint64_t)s->start_pos + (uint64_t)j, span);
            if (s->logits_mode == GM_LOGITS_VERIFY && out && out->verify)
                out->verify[vo++] = tok[i];
        }
        if (ne->nan_on && s->sampling.seed == ne->nan_seed)
            tok[i] = GM_SAMPLE_NONFINITE; /* as a sampler answers a NaN row; its log-probability reads -inf */
        if (out && out->logprobs && e->opts.tp_rank == 0 && gm_seq_step_wants_logprobs(s)) {
            null_logprobs(span, s->sampling.top_logprobs, &out->logprobs[i]);
            if (tok[i] < 0)
                out->logprobs[i].logprob = -INFINITY;
        }
    }
    gm_feed_record(&ne->feed, q, n_seqs, tok);
    if (ne->step_us > 0) {
        struct timespec ts = {ne->step_us / 1000000, (ne->step_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
    if (out && out->tokens)
        memcpy(out->tokens, tok, (size_t)n_seqs * sizeof *tok);
    return GM_OK;
}

static void null_destroy(gm_engine *e)
{
    null_engine *ne = (null_engine *)e;
    gm_feed_free(&ne->feed);
    free(ne);
}

static const gm_engine_ops g_null_ops = {null_step, null_destroy};

gm_status gm_engine_null_create(const gm_engine_opts *o, gm_engine **out)
{
    *out = NULL;
    gm_model_config cfg;
    if (o->model_dir && *o->model_dir) {
        gm_status st = gm_checkpoint_config(o->model_dir, &cfg); /* a directory or a GGUF: its config only */
        if (st)
            return st;
    } else { /* gemma-2b */
        memset(&cfg, 0, sizeof cfg);
        cfg.vocab_size = 256000;
        cfg.hidden_size = 2048;
        cfg.intermediate_size = 16384;
        cfg.num_layers = 18;
        cfg.num_heads = 8;
        cfg.num_kv_heads = 1;
        cfg.head_dim = 256;
        cfg.max_position = 8192;
        cfg.rope_theta = 10000.0f;
        cfg.rms_norm_eps = 1e-6f;
        cfg.bos_id = 2, cfg.eos_id = 1, cfg.pad_id = 0;
        strcpy(cfg.torch_dtype, "bfloat16");
        gm_config_set_gemma1(&cfg);
    }
    if (cfg.vocab_size <= 3)
        return gm_fail(GM_ERR_INVALID_ARG, "null backend: vocabulary of %d has no ordinary token", cfg.vocab_size);
    null_engine *ne = calloc(1, sizeof *ne);
    if (!ne)
        return gm_fail(GM_ERR_NOMEM, "null backend: no memory");
    gm_engine *e = &ne->base;
    e->ops = &g_null_ops;
    gm_engine_init_common(e, &cfg, o);
    /* size the pool as a bf16 cache of the model would be */
    int64_t per_block = 2ll * cfg.num_layers * cfg.num_kv_heads * o->kv_block_size * cfg.head_dim * 2;
    gm_status st = gm_engine_kv_blocks(o, per_block, &e->kv_num_blocks);
    if (st == GM_OK)
        st = gm_feed_init(&ne->feed, o->max_seqs);
    const char *us = getenv("GM_NULL_STEP_US");
    if (us && *us) {
        char *end = NULL;
        long v = strtol(us, &end, 10);
        if (*end || v < 0 || v > 10000000)
            st = gm_fail(GM_ERR_INVALID_ARG, "null backend: GM_NULL_STEP_US='%s' is not 0..10000000 microseconds", us);
        ne->step_us = v;
    }
    const char *cyc = getenv("GM_NULL_CYCLE");
    if (st == GM_OK && cyc && *cyc) {
        char *end = NULL;
        long v = strtol(cyc, &end, 10);
        if (*end || v < 1 || v > 1000000)
            st = gm_fail(GM_ERR_INVALID_ARG, "null backend: GM_NULL_CYCLE='%s' is not a period of 1..1000000", cyc);
        ne->cycle = (uint32_t)v;
    }
    const char *nan = getenv("GM_NULL_NAN_SEED");
    if (st == GM_OK && nan && *nan) {
        char *end = NULL;
        ne->nan_seed = strtoull(nan, &end, 10);
        ne->nan_on = true;
        if (*end)
            st = gm_fail(GM_ERR_INVALID_ARG, "null backend: GM_NULL_NAN_SEED='%s' is not a seed", nan);
    }
    if (st) {
        gm_feed_free(&ne->feed);
        free(ne);
        return st;
    }
    *out = e;
    return GM_OK;
}
