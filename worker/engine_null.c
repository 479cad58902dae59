/* engine_null.c - a backend without a model: each sequence gets a pseudo-random
 * token id in [3, vocab) (never EOS) drawn from (seed, position), so the serving
 * path can be measured and tested without weights. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_check.h"

static gm_status null_step(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, gm_step_out *out)
{
    int64_t rows = 0;
    gm_status st = gm_engine_check_step(e, seqs, n_seqs, out, NULL, &rows);
    if (st)
        return st;
    if (!out || e->opts.tp_rank != 0)
        return GM_OK;
    if (out->logits)
        memset(out->logits, 0, (size_t)rows * (size_t)e->cfg.vocab_size * sizeof(float));
    if (!out->tokens)
        return GM_OK;
    uint32_t span = (uint32_t)e->cfg.vocab_size - 3u;
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->logits_mode == GM_LOGITS_NONE) {
            out->tokens[i] = -1;
            continue;
        }
        uint64_t pos = (uint64_t)s->start_pos + (uint64_t)s->n_tokens;
        uint32_t r = (uint32_t)(gm_rng_uniform(s->sampling.seed, pos) * (float)span);
        out->tokens[i] = 3 + (int32_t)(r < span ? r : span - 1);
    }
    return GM_OK;
}

static void null_destroy(gm_engine *e) { free(e); }

static const gm_engine_ops g_null_ops = {null_step, null_destroy};

gm_status gm_engine_null_create(const gm_engine_opts *o, gm_engine **out)
{
    *out = NULL;
    gm_model_config cfg;
    if (o->model_dir && *o->model_dir) {
        gm_status st = gm_config_load_dir(o->model_dir, &cfg);
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
    }
    if (cfg.vocab_size <= 3)
        return gm_fail(GM_ERR_INVALID_ARG, "null backend: vocabulary of %d has no ordinary token", cfg.vocab_size);
    gm_engine *e = calloc(1, sizeof *e);
    if (!e)
        return gm_fail(GM_ERR_NOMEM, "null backend: no memory");
    e->ops = &g_null_ops;
    gm_engine_init_common(e, &cfg, o);
    /* size the pool as a bf16 cache of the model would be */
    int64_t per_block = 2ll * cfg.num_layers * cfg.num_kv_heads * o->kv_block_size * cfg.head_dim * 2;
    gm_status st = gm_engine_kv_blocks(o, per_block, &e->kv_num_blocks);
    if (st) {
        free(e);
        return st;
    }
    *out = e;
    return GM_OK;
}
