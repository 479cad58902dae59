/* engine_check.h - checks and sizing that every engine backend shares (implemented in engine.c). */
#ifndef GM_ENGINE_CHECK_H
#define GM_ENGINE_CHECK_H

#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fill e->cfg and e->opts from cfg and o; a max_context of 0 or past
 * cfg->max_position becomes cfg->max_position. */
void gm_engine_init_common(gm_engine *e, const gm_model_config *cfg, const gm_engine_opts *o);

/* Number of KV blocks: o->kv_num_blocks when > 0, else o->kv_mem_bytes /
 * bytes_per_block. GM_ERR_CAPACITY when that is zero. */
gm_status gm_engine_kv_blocks(const gm_engine_opts *o, int64_t bytes_per_block, int64_t *n_blocks);

/* Validate a step before anything is touched: ctl/check.h's validator against
 * gm_engine_limits(e), then the logits rows within out's capacity.
 * *total_tokens and *logit_rows (optional) get the step's sums. */
gm_status gm_engine_check_step(const gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, const gm_step_out *out,
                               int64_t *total_tokens, int64_t *logit_rows);

#ifdef __cplusplus
}
#endif
#endif
