/* safetensors.h - read (memory-mapped) and write safetensors files and checkpoint directories.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data section; offsets are relative to the data section's start. */
#ifndef GM_SAFETENSORS_H
#define GM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;                  /* owned by the tensor list */
    gm_dtype dtype;
    int32_t ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t offset;             /* byte offset in the data section */
    uint64_t nbytes;             /* = numel * dtype size, checked */
    const void *data;            /* mapped bytes; NULL until the file is mapped */
    const char *file;            /* borrowed: the file it came from */
} st_tensor;

/* Parse a header's JSON (json_len bytes, not NUL-terminated) against a data
 * section of data_len bytes. Checks: valid JSON object, known dtype, shape
 * non-negative and numel*size == end-begin, offsets within data_len, no two
 * tensors overlapping, no duplicate names. `file` names the file in errors.
 * On success *out (caller owns; free with st_tensors_free) holds *n tensors.
 * This is the fuzz target. */
gm_status st_parse_header(const char *json, size_t json_len, uint64_t data_len, const char *file,
                          st_tensor **out, int32_t *n);
void st_tensors_free(st_tensor *t, int32_t n);

/* Number of elements of a tensor. */
int64_t st_numel(const st_tensor *t);

/* A checkpoint: one model.safetensors, or the shards listed by
 * model.safetensors.index.json, all mapped read-only. */
typedef struct st_model st_model;

/* Open the safetensors of DIR. Errors name the file (and tensor). */
gm_status st_model_open(const char *dir, st_model **out);
/* Open one safetensors file. */
gm_status st_model_open_file(const char *path, st_model **out);
void st_model_destroy(st_model **m);

/* An in-memory checkpoint (a GGUF file dequantized at load, for one): start empty, add tensors
 * whose bytes the model takes over, then seal it to index the names. `source` (copied) stands in
 * for the file name in errors and in each tensor's `file`. */
st_model *st_model_new_mem(const char *source);
/* Add a tensor of dtype dt and shape [ndim] whose bytes (numel * dtype size, malloc'd) the model
 * owns from now on, even when this fails. Fails after st_model_seal. */
gm_status st_model_add_owned(st_model *m, const char *name, gm_dtype dt, int32_t ndim, const int64_t *shape,
                             void *data);
/* Index the names (a name added twice fails); st_model_find works from here on. */
gm_status st_model_seal(st_model *m);

/* Find a tensor by name; NULL if absent. Borrowed until st_model_destroy. */
const st_tensor *st_model_find(const st_model *m, const char *name);
int32_t st_model_count(const st_model *m);
const st_tensor *st_model_at(const st_model *m, int32_t i);

/* Writer: describe tensors, then write them to one file. The data pointer is
 * borrowed until st_writer_write; when it is NULL, fill(ctx, index, dst, nbytes)
 * is called at write time to produce the bytes (for multi-GB random models). */
typedef struct st_writer st_writer;
typedef gm_status (*st_fill_fn)(void *ctx, int32_t index, void *dst, uint64_t nbytes);

st_writer *st_writer_new(void);
/* Returns the tensor's index in this writer, or -1 (gm_last_error says why). */
int32_t st_writer_add(st_writer *w, const char *name, gm_dtype dt, int32_t ndim, const int64_t *shape,
                      const void *data);
/* Optional "__metadata__" string entries (e.g. "format": "pt"). */
gm_status st_writer_meta(st_writer *w, const char *key, const char *value);
gm_status st_writer_write(st_writer *w, const char *path, st_fill_fn fill, void *ctx);
/* Total data bytes added so far. */
uint64_t st_writer_bytes(const st_writer *w);
void st_writer_destroy(st_writer **w);

#ifdef __cplusplus
}
#endif
#endif
