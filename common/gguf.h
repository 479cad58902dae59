/* gguf.h - read GGUF files (the single-file checkpoint format of llama.cpp / ggml), memory-mapped.
 *
 * Layout (all little-endian): "GGUF", u32 version (2 or 3), u64 tensor_count, u64 kv_count,
 * kv_count metadata entries {string key, u32 value type, value}, tensor_count tensor infos
 * {string name, u32 n_dims, u64 ne[n_dims] (ne[0] innermost), u32 ggml type, u64 offset},
 * padding to `general.alignment` (default 32), then the data section; tensor offsets are
 * relative to its start. A string is u64 length + bytes (no NUL); an array is u32 element
 * type + u64 count + elements.
 *
 * The reader trusts nothing in the file: every count, length, type, shape and offset is checked
 * before use, and every error names the file and what is wrong. */
#ifndef GM_GGUF_H
#define GM_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* Metadata value types (numbering of the format). */
typedef enum gguf_vtype {
    GGUF_VT_U8 = 0,
    GGUF_VT_I8 = 1,
    GGUF_VT_U16 = 2,
    GGUF_VT_I16 = 3,
    GGUF_VT_U32 = 4,
    GGUF_VT_I32 = 5,
    GGUF_VT_F32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_U64 = 10,
    GGUF_VT_I64 = 11,
    GGUF_VT_F64 = 12,
    GGUF_VT_COUNT
} gguf_vtype;

/* Tensor element types (ggml's numbering; gaps are types ggml retired). */
typedef enum gguf_type {
    GGUF_TYPE_F32 = 0,
    GGUF_TYPE_F16 = 1,
    GGUF_TYPE_Q4_0 = 2,
    GGUF_TYPE_Q4_1 = 3,
    GGUF_TYPE_Q5_0 = 6,
    GGUF_TYPE_Q5_1 = 7,
    GGUF_TYPE_Q8_0 = 8,
    GGUF_TYPE_Q8_1 = 9,
    GGUF_TYPE_Q2_K = 10,
    GGUF_TYPE_Q3_K = 11,
    GGUF_TYPE_Q4_K = 12,
    GGUF_TYPE_Q5_K = 13,
    GGUF_TYPE_Q6_K = 14,
    GGUF_TYPE_Q8_K = 15,
    GGUF_TYPE_IQ2_XXS = 16,
    GGUF_TYPE_IQ2_XS = 17,
    GGUF_TYPE_IQ3_XXS = 18,
    GGUF_TYPE_IQ1_S = 19,
    GGUF_TYPE_IQ4_NL = 20,
    GGUF_TYPE_IQ3_S = 21,
    GGUF_TYPE_IQ2_S = 22,
    GGUF_TYPE_IQ4_XS = 23,
    GGUF_TYPE_I8 = 24,
    GGUF_TYPE_I16 = 25,
    GGUF_TYPE_I32 = 26,
    GGUF_TYPE_I64 = 27,
    GGUF_TYPE_F64 = 28,
    GGUF_TYPE_IQ1_M = 29,
    GGUF_TYPE_BF16 = 30,
    GGUF_TYPE_TQ1_0 = 34,
    GGUF_TYPE_TQ2_0 = 35,
    GGUF_TYPE_MXFP4 = 39,
    GGUF_TYPE_COUNT = 40 /* one past the largest known id */
} gguf_type;

/* Name of a tensor type ("Q4_K"), or NULL for an id no ggml version defines. */
const char *gguf_type_name(uint32_t type);
/* Elements per block and bytes per block of a tensor type; false for an unknown id. */
bool gguf_type_block(uint32_t type, int64_t *block_elems, int64_t *block_bytes);

/* A string inside the mapped file: len bytes at p, not NUL-terminated. */
typedef struct gguf_str {
    const char *p;
    uint64_t len;
} gguf_str;

/* One metadata entry. Scalars are arrays of one element (n = 1, elem = type). */
typedef struct gguf_kv {
    char *key;            /* NUL-terminated copy, owned by the file */
    gguf_vtype type;      /* GGUF_VT_ARRAY for arrays */
    gguf_vtype elem;      /* element type (= type for a scalar) */
    uint64_t n;           /* element count */
    const uint8_t *data;  /* fixed-size elements, little-endian, maybe unaligned; NULL for strings */
    gguf_str *strs;       /* [n] for strings, owned by the file (they point into the map) */
} gguf_kv;

typedef struct gguf_tensor {
    char *name;                /* NUL-terminated copy, owned by the file */
    int32_t n_dims;            /* 1..GGUF_MAX_DIMS */
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] innermost (contiguous); dims past n_dims are 1 */
    uint32_t type;             /* gguf_type */
    uint64_t offset;           /* in the data section; a multiple of the alignment */
    uint64_t nbytes;           /* ne[0]/block * block_bytes * ne[1] * ... */
    int64_t nelem;             /* product of ne */
    const void *data;          /* borrowed from the mapped file */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Map `path` read-only and parse it. Caller owns *out (gguf_destroy). */
gm_status gguf_open(const char *path, gguf_file **out);
/* Parse a GGUF image of len bytes at buf (borrowed: must outlive *out). `name` names it in errors.
 * This is the fuzz target. */
gm_status gguf_parse(const void *buf, size_t len, const char *name, gguf_file **out);
void gguf_destroy(gguf_file **f);

const char *gguf_name(const gguf_file *f); /* the path or name given at open */
uint32_t gguf_version(const gguf_file *f);
uint64_t gguf_alignment(const gguf_file *f);

int64_t gguf_kv_count(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, int64_t i);
/* The entry for key, or NULL when absent. Borrowed until gguf_destroy. */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);

/* Element i of an entry (caller checks i < n and the element type):
 * any integer or bool type as int64 (a u64 above INT64_MAX saturates), F32/F64 or integers as double. */
int64_t gguf_kv_int_at(const gguf_kv *kv, uint64_t i);
double gguf_kv_float_at(const gguf_kv *kv, uint64_t i);

/* Typed scalar lookups. Absent key: GM_ERR_NOT_FOUND (message names file and key); present but of
 * another type, out of range, or an array: GM_ERR_FORMAT. */
gm_status gguf_get_int(const gguf_file *f, const char *key, int64_t lo, int64_t hi, int64_t *out);
gm_status gguf_get_float(const gguf_file *f, const char *key, double *out); /* F32, F64 or integer */
gm_status gguf_get_bool(const gguf_file *f, const char *key, bool *out);
/* A string value copied into buf (cap bytes, NUL-terminated); too long for buf is GM_ERR_FORMAT. */
gm_status gguf_get_str(const gguf_file *f, const char *key, char *buf, size_t cap);
/* An array whose elements are of type elem (GGUF_VT_COUNT: any); *out borrowed. */
gm_status gguf_get_array(const gguf_file *f, const char *key, gguf_vtype elem, const gguf_kv **out);

int64_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i);
/* The tensor named name, or NULL. Borrowed until gguf_destroy. */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

#ifdef __cplusplus
}
#endif
#endif
