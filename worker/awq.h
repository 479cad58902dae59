/* awq.h - INT4 AWQ checkpoints (AutoAWQ "GEMM" layout) and the linear-layer abstraction
 * the engines use: a weight that is either dense (bf16/f16/f32) or AWQ-packed.
 *
 * An AWQ checkpoint replaces each decoder Linear's `<m>.weight` by `<m>.qweight`
 * [K, N/8] int32, `<m>.qzeros` [K/g, N/8] int32 and `<m>.scales` [K/g, N] fp16
 * (kernels/cpu/gemm_awq.h has the nibble order); embeddings and norms stay dense.
 * It says so in config.json's `quantization_config` (or an older quant_config.json).
 * (The quantizer's calibration forward is the CPU engine's own: worker/engine_cpu.h.) */
#ifndef GM_AWQ_H
#define GM_AWQ_H

#include <stddef.h>
#include <stdint.h>

#include "../common/model_config.h"
#include "../common/safetensors.h"
#include "../common/status.h"
#include "../kernels/cpu/gemm_awq.h"
#include "weights.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A checkpoint's quantization config. */
typedef struct gm_quant_config {
    int32_t present;       /* 1 when config.json has quantization_config or quant_config.json exists */
    char method[16];       /* quant_method, lower-cased ("awq", "fp8", ...); "awq" for quant_config.json */
    int32_t bits;          /* AWQ: 4 */
    int32_t group_size;    /* AWQ: q_group_size / group_size */
    int32_t zero_point;    /* AWQ: 1 */
    char version[16];      /* AWQ: "gemm" (lower-cased) */
} gm_quant_config;

/* Parse a quantization config object's JSON text: `quantization_config` of config.json
 * (legacy = 0: keys group_size, bits, version) or a quant_config.json (legacy = 1: keys
 * q_group_size, w_bit, version). `name` names the file in errors. For AWQ, anything but
 * 4 bits, zero_point true, version gemm and group_size > 0 fails GM_ERR_UNSUPPORTED
 * naming the value (the GEMV/gemv_fast/Marlin layouts are not this format). */
gm_status gm_quant_config_parse(const char *json, size_t len, const char *name, int legacy, gm_quant_config *q);

/* Read DIR/config.json's quantization_config, else DIR/quant_config.json; q->present = 0
 * when neither exists, and for a GGUF checkpoint (a .gguf file or a directory holding one). */
gm_status gm_quant_config_load(const char *dir, gm_quant_config *q);

/* Find `<prefix>.qweight/.qzeros/.scales` in m and check dtypes (I32, I32, F16) and shapes
 * against K inputs, N outputs and group (K % group == 0, N % 8 == 0). Errors name the file,
 * tensor, expected and actual shape. out points at the whole tensors. */
gm_status gm_awq_find(const st_model *m, const char *prefix, int64_t K, int64_t N, int64_t group, cpu_awq_w *out);

/* Rows [k0, k0 + nk) x columns [n0, n0 + nn) of w; needs k0, nk % group == 0, n0, nn % 8 == 0. */
gm_status gm_awq_slice(const cpu_awq_w *w, int64_t k0, int64_t nk, int64_t n0, int64_t nn, cpu_awq_w *out);

/* ---- linear layers ---- */

typedef enum gm_linear_kind {
    GM_LINEAR_DENSE = 0, /* nn.Linear.weight [out, in] view */
    GM_LINEAR_AWQ,       /* AutoAWQ GEMM tensors */
    GM_LINEAR_FP8,       /* e4m3 copy [out, in] with a per-tensor scale (--quant fp8, gm_linears_to_fp8) */
} gm_linear_kind;

typedef struct gm_linear {
    gm_linear_kind kind;
    int64_t in, out;  /* K, N of this rank's slice */
    gm_wview dense;   /* DENSE: rows = out, cols = in */
    cpu_awq_w awq;    /* AWQ: K = in, N = out */
    uint8_t *q8;      /* FP8: [out, in] e4m3, owned (gm_linears_free) */
    float w_scale;    /* FP8: dequant multiplier of q8 */
    float in_scale;   /* FP8: static activation scale (a checkpoint's input_scale); 0 = dynamic */
} gm_linear;

/* The seven Linears of a decoder layer, in this order. */
enum { GM_LIN_Q = 0, GM_LIN_K, GM_LIN_V, GM_LIN_O, GM_LIN_GATE, GM_LIN_UP, GM_LIN_DOWN, GM_LIN_COUNT };
/* "self_attn.q_proj", ..., "mlp.down_proj" */
extern const char *const gm_linear_names[GM_LIN_COUNT];

/* A dense linear over a weight view. */
gm_linear gm_linear_dense(const gm_wview *v);

/* Bind the Linears of every layer of m for tensor-parallel layout tp (worker/weights.h
 * slicing: q, k, v, gate, up by output; o, down by input); <m> is
 * cfg->tensor_prefix + "layers.N.self_attn.q_proj" etc. (pass gm_weights' cfg, whose prefix is
 * settled): `<m>.weight` when present, else
 * the AWQ tensors with groups of `group` (0 = the checkpoint has none; then a missing
 * weight is an error). out [num_layers * GM_LIN_COUNT]; caller frees (gm_linears_free, then
 * free). AWQ slices need output offsets % 8 and input offsets % group == 0
 * (GM_ERR_UNSUPPORTED otherwise).
 * An F8_E4M3 `<m>.weight` (gemma-quantize --fp8, or any checkpoint in that layout) binds as
 * GM_LINEAR_FP8: this rank's slice copied into q8, `<m>.weight_scale` (required, one finite
 * positive value) as w_scale, `<m>.input_scale` (optional) as in_scale. The Linears the engines
 * fuse into one product (q|k|v, gate|up) must then agree: where their weight scales differ, the
 * codes are requantized to the largest (e4m3(code * s_i / s_max)); their input scales become the
 * largest. Input scales are kept only when every FP8 Linear of the model has one; otherwise all
 * become 0 (dynamic), as the CUDA engine runs them. A fused product that mixes FP8 with another
 * kind is GM_ERR_UNSUPPORTED. */
gm_status gm_linears_bind(const st_model *m, const gm_model_config *cfg, const gm_tp_layout *tp, int64_t group,
                          gm_linear **out);

/* y [T, out] = x [T, in] . W^T (row strides ldx, ldy), float32; dense goes to cpu_matmul,
 * AWQ to cpu_awq_matmul. Same dot-product order for any T. */
gm_status gm_linear_matmul(const gm_linear *L, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy);
/* As gm_linear_matmul, float64 accumulation and output (tensor-parallel partial sums). */
gm_status gm_linear_matmul_f64(const gm_linear *L, const float *x, int64_t T, int64_t ldx, double *y, int64_t ldy);

/* --quant fp8 on the CPU (the twin of the CUDA engine's FP8 path): replace every dense Linear of
 * n_layers layers by an e4m3 copy. One per-tensor scale per product as the GPU fuses them (q|k|v
 * share one, gate|up share one, o, down), taken over the WHOLE tensors (every rank gets the codes
 * gemma-quantize --fp8 and the GPU get). The matmul then quantizes its input with a dynamic
 * per-tensor scale over the T rows it is given (bf16-rounded first; or with in_scale when a
 * checkpoint gave one) and rounds its output to bf16, as cuBLASLt FP8 with bf16 output does
 * (kernels/cpu/quant_fp8.h). Linears already FP8 (an FP8 checkpoint) stay as they are; AWQ
 * linears: GM_ERR_UNSUPPORTED. */
gm_status gm_linears_to_fp8(gm_linear *lin, int32_t n_layers);
/* The FP8 KV-cache scale of layer `layer` in an FP8 checkpoint: the larger of
 * model.layers.N.self_attn.k_scale and .v_scale (one finite positive value each; gemma-quantize
 * --fp8 --calib writes them), 1.0 when neither is present. */
gm_status gm_fp8_kv_scale(const st_model *m, int32_t layer, float *out);

/* Free what gm_linears_to_fp8 or gm_linears_bind allocated (the array itself stays the caller's). */
void gm_linears_free(gm_linear *lin, int64_t n);

/* Bytes of the weight as stored (packed int4 + zeros + scales for AWQ). */
int64_t gm_linear_bytes(const gm_linear *L);

#ifdef __cplusplus
}
#endif
#endif
