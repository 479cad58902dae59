/* engine_cpu.h - the CPU engine's extras for the offline tools: its forward pass, one layer or one
 * block at a time, with taps that hand each Linear's input rows to a caller.
 *
 * The quantizers calibrate on the float model through these (tools/quantize_fp8.c: max |x| of
 * every Linear's input and of K/V; tools/gemma-quantize.c --awq: the inputs of one layer's Linears,
 * then that layer's attention or MLP block re-run with candidate weights), so every family the
 * engine runs (Gemma 1/2/3: sandwich norms, QK-norm, soft-caps, sliding windows, per-layer RoPE)
 * is calibrated with the same model math that serves it. tp 1 only. */
#ifndef GM_ENGINE_CPU_H
#define GM_ENGINE_CPU_H

#include <stdint.h>

#include "../common/safetensors.h"
#include "awq.h"
#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where a tap sees the activations of a layer (T = the step's tokens, in batch order). */
typedef enum gm_cpu_tap {
    GM_TAP_QKV_IN = 0, /* [T, hidden] the normed input of q, k and v */
    GM_TAP_K,          /* [T, kv width] keys after QK-norm and RoPE, as the cache stores them */
    GM_TAP_V,          /* [T, kv width] values */
    GM_TAP_O_IN,       /* [T, q width] attention output: o_proj's input */
    GM_TAP_GU_IN,      /* [T, hidden] the normed input of gate and up */
    GM_TAP_DOWN_IN,    /* [rows, intermediate] gelu_tanh(gate) * up: down_proj's input, in tiles */
    GM_TAP_COUNT
} gm_cpu_tap;

/* Rows [row0, row0 + rows) of tap `tap` of layer `layer`: x [rows, cols] f32, borrowed for the
 * call. A status other than GM_OK stops the forward and is returned by it. */
typedef gm_status (*gm_cpu_tap_fn)(void *ctx, int32_t layer, gm_cpu_tap tap, int64_t row0, const float *x,
                                   int64_t rows, int64_t cols);

/* A CPU engine of one rank for calibration: n_seq sequences of S tokens in one step (KV blocks for
 * all of them, max_context S), over the checkpoint `model` (a directory or a GGUF), as stored. */
gm_status gm_engine_cpu_create_calib(const char *model, int64_t n_seq, int64_t S, gm_engine **out);

/* Call fn at every tap of every step, layer and block from now on (NULL: none). GM_ERR_INVALID_ARG
 * when e is not a CPU engine of one rank. */
gm_status gm_engine_cpu_set_tap(gm_engine *e, gm_cpu_tap_fn fn, void *ctx);

/* The engine's weights (borrowed for its life): the checkpoint it loaded. */
const st_model *gm_engine_cpu_model(const gm_engine *e);

/* h [T, hidden] = the embedding rows of the step's tokens times sqrt(hidden), as a step begins. */
gm_status gm_engine_cpu_embed(gm_engine *e, const gm_seq_step *seqs, int32_t n_seqs, float *h);

/* Decoder layer `layer` in place on the residual stream h [T, hidden] of the step's tokens
 * (positions start_pos.., their blocks; writes their K/V; taps called). */
gm_status gm_engine_cpu_layer(gm_engine *e, int32_t layer, const gm_seq_step *seqs, int32_t n_seqs, float *h);

typedef enum gm_cpu_block {
    GM_CPU_BLOCK_ATTN = 0, /* q, k, v, (QK-norm), RoPE, attention, o_proj */
    GM_CPU_BLOCK_MLP,      /* gate, up, gelu_tanh, down */
} gm_cpu_block;

/* One block of layer `layer`: out [T, hidden] = the block's output (o_proj's or down_proj's, before
 * any sandwich norm and the residual add) for its normed input x [T, hidden], computed with lin
 * (that layer's GM_LIN_COUNT Linears; NULL = the engine's own). ATTN writes the step's K/V. */
gm_status gm_engine_cpu_block(gm_engine *e, int32_t layer, gm_cpu_block blk, const gm_linear *lin,
                              const gm_seq_step *seqs, int32_t n_seqs, const float *x, float *out);

#ifdef __cplusplus
}
#endif
#endif
