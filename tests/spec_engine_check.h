/* spec_engine_check.h - an engine's GM_LOGITS_VERIFY entries (speculative decoding, ctl/step.h) against
 * plain decoding of the same tokens, for any backend: test_engine_spec.c runs it on the CPU engine (exact);
 * test_gpu_spec.c uses the helpers and judges the CUDA engine by its logits instead.
 *
 * Slot 0 decodes a prompt one token at a time (the reference). Slot 1 computes the prompt but its last
 * token, then verifies drafts that are the reference's tokens with one of them wrong: every row up to and
 * including the wrong one must sample what the reference sampled there; then it continues from the
 * accepted length (the rejected positions' KV is overwritten) with another verify entry. Include after
 * <cmocka.h>. */
#ifndef GM_TEST_SPEC_ENGINE_CHECK_H
#define GM_TEST_SPEC_ENGINE_CHECK_H

#include <stdint.h>
#include <string.h>

#include "tests/test_check.h"
#include "worker/engine.h"

#define SPC_BS 4      /* KV block size the engine must be made with */
#define SPC_SLOT_BLOCKS 16
#define SPC_PROMPT 9
#define SPC_GEN 14

/* Run one entry alone; tokens into tok [1], verify samples into vt. */
static void spc_run(gm_engine *e, const gm_seq_step *q, int32_t *tok, int32_t *vt, int64_t vt_cap)
{
    gm_step_out out = {tok, NULL, 0, NULL, vt, vt_cap};
    GOK(gm_engine_step(e, q, 1, &out));
}

static gm_seq_step spc_entry(int32_t slot, const int32_t *tokens, int32_t n, int32_t start, const int32_t *bt,
                             int32_t mode, gm_sampling s)
{
    gm_seq_step q;
    memset(&q, 0, sizeof q);
    q.slot = slot;
    q.tokens = tokens;
    q.n_tokens = n;
    q.start_pos = start;
    q.block_table = bt;
    q.n_blocks = SPC_SLOT_BLOCKS;
    q.logits_mode = mode;
    q.sampling = s;
    q.reset = start == 0;
    return q;
}

/* Returns the rows (of both verify entries, up to their first mismatch) that differ from the reference;
 * 0 on an exact engine. wrong_at: the draft index (0..k-1) made wrong in the first entry. */
static inline int spc_verify_vs_plain(gm_engine *e, gm_sampling s, int32_t k, int32_t wrong_at)
{
    int32_t V = e->cfg.vocab_size;
    int32_t bt0[SPC_SLOT_BLOCKS], bt1[SPC_SLOT_BLOCKS];
    for (int32_t i = 0; i < SPC_SLOT_BLOCKS; i++)
        bt0[i] = i, bt1[i] = SPC_SLOT_BLOCKS + i;
    int32_t seq[SPC_PROMPT + SPC_GEN + 1]; /* prompt, then the reference's tokens */
    for (int32_t i = 0; i < SPC_PROMPT; i++)
        seq[i] = i == 0 ? 2 : 3 + (int32_t)((i * 7919) % (V - 3));
    int32_t tok = -1, vt[32];
    /* the reference: prompt, then one token at a time */
    gm_seq_step q = spc_entry(0, seq, SPC_PROMPT, 0, bt0, GM_LOGITS_LAST, s);
    spc_run(e, &q, &tok, NULL, 0);
    seq[SPC_PROMPT] = tok;
    for (int32_t g = 1; g < SPC_GEN; g++) {
        q = spc_entry(0, seq + SPC_PROMPT + g - 1, 1, SPC_PROMPT + g - 1, bt0, GM_LOGITS_LAST, s);
        spc_run(e, &q, &tok, NULL, 0);
        seq[SPC_PROMPT + g] = tok;
    }
    /* slot 1: the prompt but its last token */
    q = spc_entry(1, seq, SPC_PROMPT - 1, 0, bt1, GM_LOGITS_NONE, s);
    spc_run(e, &q, &tok, NULL, 0);
    int bad = 0;
    /* first verify: [last prompt token, ref[0..k) with ref[wrong_at] replaced] */
    int32_t in[17];
    in[0] = seq[SPC_PROMPT - 1];
    for (int32_t j = 0; j < k; j++)
        in[1 + j] = seq[SPC_PROMPT + j];
    in[1 + wrong_at] = 3 + (seq[SPC_PROMPT + wrong_at] - 3 + 1) % (V - 3);
    q = spc_entry(1, in, 1 + k, SPC_PROMPT - 1, bt1, GM_LOGITS_VERIFY, s);
    spc_run(e, &q, &tok, vt, 32);
    for (int32_t j = 0; j <= wrong_at; j++)
        bad += vt[j] != seq[SPC_PROMPT + j];
    if (tok != vt[k]) /* tokens[i] of a verify entry: its last row's */
        bad++;
    /* accepted: wrong_at drafts, then the target's token at the mismatch; continue from there with the
     * right drafts over the rejected positions */
    int32_t at = SPC_PROMPT + wrong_at; /* the next token to feed is seq[at] */
    in[0] = seq[at];
    int32_t k2 = SPC_GEN - 1 - (at - SPC_PROMPT) - 1;
    k2 = k2 > k ? k : k2;
    for (int32_t j = 0; j < k2; j++)
        in[1 + j] = seq[at + 1 + j];
    q = spc_entry(1, in, 1 + k2, at, bt1, GM_LOGITS_VERIFY, s);
    spc_run(e, &q, &tok, vt, 32);
    for (int32_t j = 0; j <= k2; j++)
        bad += vt[j] != seq[at + 1 + j];
    return bad;
}

#endif
