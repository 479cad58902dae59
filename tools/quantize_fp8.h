/* quantize_fp8.h - `gemma-quantize --fp8`: a bf16 (or f16/f32) Gemma checkpoint to FP8 e4m3.
 *
 * Output directory (the vLLM/AutoFP8 "fp8" layout):
 *   model.safetensors, for every decoder Linear <m> (model.layers.N.self_attn.{q,k,v,o}_proj,
 *   model.layers.N.mlp.{gate,up,down}_proj):
 *     <m>.weight        [N, K] F8_E4M3   e4m3(w / weight_scale), round to nearest even, saturating
 *     <m>.weight_scale  []     F32       per-tensor dequant multiplier: max|w| / 448
 *     <m>.input_scale   []     F32       static activation scale (max |x| over the calibration
 *                                        text / 448); only when calibrated
 *   q, k and v share one weight_scale (the largest of the three) and one input_scale (same input),
 *   gate and up likewise, so a fused qkv or gate|up GEMM is a plain concatenation.
 *   model.layers.N.self_attn.{k_scale,v_scale} [] F32: the FP8 KV-cache scale (one value for K
 *   and V, max |k|,|v| after RoPE / 448); only when calibrated (otherwise readers use 1.0).
 *   Embedding (also the tied LM head) and norms: copied unchanged.
 *   config.json: the input's plus "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
 *   "activation_scheme": "static" | "dynamic", "weight_scheme": "per-tensor",
 *   "kv_cache_scheme": "static" (when k_scale/v_scale are written), "ignored_layers": []}.
 *   tokenizer.model and the other tokenizer/generation files: copied.
 * Quantization is bit-exact with kernels/cpu/quant_fp8.h and the GPU's k_fp8_quantize_weight. */
#ifndef GM_QUANTIZE_FP8_H
#define GM_QUANTIZE_FP8_H

#include <stdint.h>

#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gm_fp8_quant_opts {
    const char *calib_file; /* UTF-8 text; NULL = no calibration (dynamic activation scales) */
    int32_t calib_tokens;   /* most calibration tokens (default 512) */
    int32_t calib_seq;      /* tokens per calibration sequence, BOS included (default 256) */
    int32_t threads;        /* quantization threads (0 = online CPUs, at most 32) */
    int32_t verbose;        /* progress on stderr */
} gm_fp8_quant_opts;

void gm_fp8_quant_opts_init(gm_fp8_quant_opts *o);

/* Quantize model_dir into out_dir (created if missing). Errors name the file or tensor. */
gm_status gm_quantize_fp8_ex(const char *model_dir, const char *out_dir, const gm_fp8_quant_opts *o);

/* The entry point `gemma-quantize --fp8 --model DIR --out DIR [--calib TEXTFILE]` calls. */
gm_status gm_quantize_fp8(const char *model_dir, const char *out_dir, const char *calib_file_or_null);

#ifdef __cplusplus
}
#endif
#endif
