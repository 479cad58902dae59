/* spec.h - the worker spec: what every rank's engine is created with, as values.
 *
 * gemmad builds one spec from its settings and sends it to each rank in the
 * control protocol (proto/control.proto: WorkerSpec, after Hello, before the
 * engine loads); the rank echoes what it received in Ready. gemma-generate
 * and the tests fill the same fields through gm_engine_opts (worker/engine.h),
 * which declares them from the same list, so no value can be dropped or
 * misread on the way: a field added to GM_SPEC_FIELDS is a compile error until
 * control.proto carries it.
 *
 * 0 means "derive it" for the sizing fields (kv_num_blocks, kv_mem_bytes,
 * kv_mem_fraction, max_seqs, max_tokens, max_context): the rank decides them
 * from the model, the device and the pool (ctl/sizing.h) and reports what it
 * chose in Ready. */
#ifndef GM_CTL_SPEC_H
#define GM_CTL_SPEC_H

#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gm_backend {
    GM_BACKEND_CPU = 0,
    GM_BACKEND_CUDA,
    GM_BACKEND_NULL, /* emits tokens without a model: measures the serving path */
    GM_BACKEND_COUNT
} gm_backend;

typedef enum gm_quant {
    GM_QUANT_NONE = 0, /* weights as stored (bf16/f16/f32) */
    GM_QUANT_FP8,
    GM_QUANT_AWQ,
    GM_QUANT_COUNT
} gm_quant;

typedef enum gm_kv_dtype {
    GM_KV_AUTO = 0, /* f32 on CPU, bf16 on CUDA */
    GM_KV_BF16,
    GM_KV_FP8,
    GM_KV_DTYPE_COUNT
} gm_kv_dtype;

/* "cpu" | "cuda" | "null" -> backend; -1 if unknown (also for NULL). */
int gm_backend_parse(const char *s);
/* "none" | "fp8" | "awq" -> quant; -1 if unknown. */
int gm_quant_parse(const char *s);
/* "auto" | "bf16" | "fp8" -> KV dtype; -1 if unknown. */
int gm_kv_dtype_parse(const char *s);
/* The names above; "?" for a value out of range. Never NULL. */
const char *gm_backend_name(gm_backend b);
const char *gm_quant_name(gm_quant q);
const char *gm_kv_dtype_name(gm_kv_dtype d);

/* The value fields of a spec, in control.proto's WorkerSpec field order:
 * X(C type, name, proto field number). model_dir, a string, is apart. */
#define GM_SPEC_FIELDS(X)                                                                                           \
    X(gm_backend, backend, 1)         /* cpu | cuda | null */                                                      \
    X(int32_t, tp_size, 3)            /* ranks; 1 when not sharded */                                              \
    X(int32_t, device, 4)             /* CUDA device ordinal of this rank */                                       \
    X(int32_t, kv_block_size, 5)      /* tokens per KV block */                                                    \
    X(int64_t, kv_num_blocks, 6)      /* > 0: exactly this many blocks; 0: from the budget below */                \
    X(int64_t, kv_mem_bytes, 7)       /* > 0: KV budget in bytes per rank; 0: derive (ctl/sizing.h) */             \
    X(double, kv_mem_fraction, 8)     /* CUDA: share of the free memory for KV (0 = 0.9) */                        \
    X(int32_t, max_seqs, 9)           /* most sequences in one step; 0: derive */                                  \
    X(int32_t, max_tokens, 10)        /* most tokens in one step; 0: derive */                                     \
    X(int32_t, max_context, 11)       /* longest sequence; 0: derive (the model's, unless the pool is smaller) */  \
    X(gm_quant, quant, 12)            /* weight format */                                                          \
    X(gm_kv_dtype, kv_dtype, 13)      /* KV cache element type */                                                  \
    X(int32_t, use_graphs, 14)        /* CUDA: capture decode steps as graphs (1) */                               \
    X(int32_t, lm_head_fp8, 15)       /* the LM head in FP8 e4m3 (worker/engine.h) */                              \
    X(int32_t, verbose, 16)           /* loading progress on stderr */

#define GM_SPEC_DECLARE_(type, name, num) type name;

#define GM_SPEC_PATH_MAX 4096

typedef struct gm_worker_spec {
    GM_SPEC_FIELDS(GM_SPEC_DECLARE_)
    char model_dir[GM_SPEC_PATH_MAX]; /* Hugging Face checkpoint directory; "" = none (null backend) */
} gm_worker_spec;

/* Defaults: cpu, tp 1, device 0, block 16, graphs on, every sizing field 0 (derive). */
void ctl_spec_init(gm_worker_spec *s);

/* Range checks of every field (names the field in gm_last_error). */
gm_status ctl_spec_check(const gm_worker_spec *s);

/* NULL when a and b are equal field by field, else the name of the first field that differs. */
const char *ctl_spec_diff(const gm_worker_spec *a, const gm_worker_spec *b);

/* Copy dir into s->model_dir; GM_ERR_INVALID_ARG when it does not fit. NULL = none. */
gm_status ctl_spec_set_model(gm_worker_spec *s, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
