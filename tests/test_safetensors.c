/* test_safetensors.c - safetensors reading (single, sharded, each malformed case), the writer,
 * and the scalar dtype conversions of common/dtype.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/safetensors.h"

/* ------------------------------------------------------------------ helpers */

typedef struct fixture {
    char dir[64];
    char path[256]; /* dir/model.safetensors */
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/gm_st_XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof fx->path, "%s/model.safetensors", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    DIR *d = opendir(fx->dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", fx->dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(fx->dir);
    free(fx);
    return 0;
}

static void put_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Write a raw safetensors file: u64 header length `hlen` (UINT64_MAX: the real length),
 * the header text, then data_len bytes of 0xab. */
static void put_raw(const char *path, const char *hdr, uint64_t hlen, size_t data_len)
{
    size_t n = strlen(hdr), pad = 0;
    if (hlen == UINT64_MAX) {
        pad = (8 - n % 8) % 8; /* space-pad so the data section is 8-aligned, as real writers do */
        hlen = n + pad;
    }
    uint8_t *buf = malloc(8 + n + pad + data_len);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, hdr, n);
    memset(buf + 8 + n, ' ', pad);
    n += pad;
    memset(buf + 8 + n, 0xab, data_len);
    put_file(path, buf, 8 + n + data_len);
    free(buf);
}

/* The call must have failed with `want`; the message names the file and, when given, the tensor. */
static void expect_err(gm_status st, gm_status want, const char *file, const char *tensor)
{
    if (st != want)
        fail_msg("want %s, got %s: %s", gm_status_str(want), gm_status_str(st), gm_last_error());
    if (file && !strstr(gm_last_error(), file))
        fail_msg("error '%s' does not name file %s", gm_last_error(), file);
    if (tensor && !strstr(gm_last_error(), tensor))
        fail_msg("error '%s' does not name tensor %s", gm_last_error(), tensor);
}
#define EXPECT_FAIL(st_expr, want, file, tensor) (gm_clear_error(), expect_err((st_expr), (want), (file), (tensor)))

/* Write a raw file with this header and data size; opening it must fail as given. */
static void raw_case(fixture *fx, const char *hdr, size_t data_len, gm_status want, const char *tensor)
{
    put_raw(fx->path, hdr, UINT64_MAX, data_len);
    st_model *m = (st_model *)0x1;
    EXPECT_FAIL(st_model_open_file(fx->path, &m), want, fx->path, tensor);
    assert_null(m);
    m = (st_model *)0x1;
    EXPECT_FAIL(st_model_open(fx->dir, &m), want, fx->path, tensor);
    assert_null(m);
}

/* ------------------------------------------------------------------ good files */

static void test_single_file(void **state)
{
    fixture *fx = *state;
    uint16_t a[12];
    for (int i = 0; i < 12; i++)
        a[i] = gm_f32_to_bf16((float)i - 5.5f);
    float b[3] = {1.5f, -2.0f, 3.25f};
    uint8_t c[5] = {1, 2, 3, 4, 5};
    float s = 42.0f;
    st_writer *w = st_writer_new();
    assert_non_null(w);
    assert_int_equal(st_writer_add(w, "model.embed_tokens.weight", GM_DT_BF16, 2, (int64_t[]){4, 3}, a), 0);
    assert_int_equal(st_writer_add(w, "odd \"name\"\n", GM_DT_U8, 1, (int64_t[]){5}, c), 1);
    assert_int_equal(st_writer_add(w, "b", GM_DT_F32, 1, (int64_t[]){3}, b), 2);
    assert_int_equal(st_writer_add(w, "empty", GM_DT_F32, 2, (int64_t[]){0, 7}, NULL), 3);
    assert_int_equal(st_writer_add(w, "scalar", GM_DT_F32, 0, NULL, &s), 4);
    assert_int_equal(st_writer_meta(w, "format", "pt"), GM_OK);
    /* 24 bytes, pad to 24; 5 bytes, pad to 32; 12 bytes to 44; empty at 48; scalar 48..52 */
    assert_int_equal(st_writer_bytes(w), 52);
    assert_int_equal(st_writer_write(w, fx->path, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
    assert_null(w);
    st_writer_destroy(&w); /* NULL is fine */

    FILE *f = fopen(fx->path, "rb");
    assert_non_null(f);
    uint8_t len8[8];
    assert_int_equal(fread(len8, 1, 8, f), 8);
    fseek(f, 0, SEEK_END);
    long fsize = ftell(f);
    fclose(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal((uint64_t)fsize, 8 + hlen + 52);

    st_model *m = NULL;
    assert_int_equal(st_model_open(fx->dir, &m), GM_OK);
    assert_int_equal(st_model_count(m), 5);
    const st_tensor *t = st_model_find(m, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, GM_DT_BF16);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 4);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(st_numel(t), 12);
    assert_int_equal(t->nbytes, 24);
    assert_int_equal(t->offset, 0);
    assert_string_equal(t->file, fx->path);
    assert_memory_equal(t->data, a, 24);
    assert_int_equal((uintptr_t)t->data % 8, 0);
    t = st_model_find(m, "odd \"name\"\n");
    assert_non_null(t);
    assert_memory_equal(t->data, c, 5);
    t = st_model_find(m, "b");
    assert_non_null(t);
    assert_int_equal(t->offset, 32);
    assert_memory_equal(t->data, b, 12);
    t = st_model_find(m, "empty");
    assert_non_null(t);
    assert_int_equal(st_numel(t), 0);
    assert_int_equal(t->nbytes, 0);
    t = st_model_find(m, "scalar");
    assert_non_null(t);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(st_numel(t), 1);
    assert_true(*(const float *)t->data == 42.0f);
    assert_null(st_model_find(m, "__metadata__"));
    assert_null(st_model_find(m, "nope"));
    assert_null(st_model_at(m, 5));
    assert_null(st_model_at(m, -1));
    for (int i = 0; i < 5; i++)
        assert_ptr_equal(st_model_find(m, st_model_at(m, i)->name), st_model_at(m, i));
    st_model_destroy(&m);
    assert_null(m);

    st_model *m2 = NULL;
    assert_int_equal(st_model_open_file(fx->path, &m2), GM_OK);
    assert_int_equal(st_model_count(m2), 5);
    st_model_destroy(&m2);
}

/* Fill callback: element i of tensor k is k*1000 + i (f32). */
static gm_status fill_pattern(void *ctx, int32_t index, void *dst, uint64_t nbytes)
{
    int *calls = ctx;
    (*calls)++;
    float *f = dst;
    for (uint64_t i = 0; i < nbytes / 4; i++)
        f[i] = (float)(index * 1000 + (int)i);
    return GM_OK;
}

static gm_status fill_fail(void *ctx, int32_t index, void *dst, uint64_t nbytes)
{
    return gm_fail(GM_ERR_IO, "fill refused tensor %d", index);
}

static void test_writer_fill(void **state)
{
    fixture *fx = *state;
    float given[2] = {7, 8};
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_add(w, "x", GM_DT_F32, 2, (int64_t[]){3, 5}, NULL), 0);
    assert_int_equal(st_writer_add(w, "y", GM_DT_F32, 1, (int64_t[]){2}, given), 1);
    assert_int_equal(st_writer_add(w, "z", GM_DT_F32, 1, (int64_t[]){1000}, NULL), 2);
    EXPECT_FAIL(st_writer_write(w, fx->path, NULL, NULL), GM_ERR_INVALID_ARG, fx->path, "'x'");
    EXPECT_FAIL(st_writer_write(w, fx->path, fill_fail, NULL), GM_ERR_IO, NULL, "fill refused tensor 0");
    assert_int_equal(access(fx->path, F_OK), -1); /* a failed write leaves no file */
    int calls = 0;
    assert_int_equal(st_writer_write(w, fx->path, fill_pattern, &calls), GM_OK);
    assert_int_equal(calls, 2);
    st_writer_destroy(&w);
    st_model *m = NULL;
    assert_int_equal(st_model_open_file(fx->path, &m), GM_OK);
    const float *x = st_model_find(m, "x")->data, *y = st_model_find(m, "y")->data, *z = st_model_find(m, "z")->data;
    for (int i = 0; i < 15; i++)
        assert_true(x[i] == (float)i);
    assert_true(y[0] == 7 && y[1] == 8);
    for (int i = 0; i < 1000; i++)
        assert_true(z[i] == (float)(2000 + i));
    st_model_destroy(&m);
}

static void test_writer_roundtrip(void **state)
{
    fixture *fx = *state;
    enum { N = 257 };
    float src[N];
    uint16_t bf[N], hf[N];
    for (int i = 0; i < N; i++) {
        src[i] = sinf((float)i * 0.37f) * powf(2.0f, (float)(i % 30) - 20.0f) /* |x| < 2^10: finite in f16 */;
        bf[i] = gm_f32_to_bf16(src[i]);
        hf[i] = gm_f32_to_f16(src[i]);
    }
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_add(w, "bf", GM_DT_BF16, 1, (int64_t[]){N}, bf), 0);
    assert_int_equal(st_writer_add(w, "hf", GM_DT_F16, 1, (int64_t[]){N}, hf), 1);
    assert_int_equal(st_writer_add(w, "f", GM_DT_F32, 1, (int64_t[]){N}, src), 2);
    assert_int_equal(st_writer_write(w, fx->path, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
    st_model *m = NULL;
    assert_int_equal(st_model_open(fx->dir, &m), GM_OK);
    float out[N];
    const st_tensor *t = st_model_find(m, "bf");
    assert_int_equal((uintptr_t)t->data % 2, 0);
    gm_to_f32(t->dtype, t->data, out, st_numel(t));
    for (int i = 0; i < N; i++)
        assert_true(out[i] == gm_bf16_to_f32(bf[i]) && fabsf(out[i] - src[i]) <= fabsf(src[i]) / 256);
    t = st_model_find(m, "hf");
    gm_to_f32(t->dtype, t->data, out, st_numel(t));
    for (int i = 0; i < N; i++) {
        assert_true(out[i] == gm_f16_to_f32(hf[i]));
        assert_true(fabsf(out[i] - src[i]) <= fabsf(src[i]) / 2048 + 0x1p-25f);
    }
    t = st_model_find(m, "f");
    assert_int_equal((uintptr_t)t->data % 4, 0);
    gm_to_f32(t->dtype, t->data, out, st_numel(t));
    assert_memory_equal(out, src, sizeof src);
    st_model_destroy(&m);
}

static void test_writer_errors(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    int64_t shp[1] = {4};
    assert_int_equal(st_writer_add(w, "a", GM_DT_F32, 1, shp, NULL), 0);
    assert_int_equal(st_writer_add(w, "a", GM_DT_F32, 1, shp, NULL), -1);
    assert_non_null(strstr(gm_last_error(), "'a'"));
    assert_int_equal(st_writer_add(w, "", GM_DT_F32, 1, shp, NULL), -1);
    assert_int_equal(st_writer_add(w, "__metadata__", GM_DT_F32, 1, shp, NULL), -1);
    assert_int_equal(st_writer_add(w, "neg", GM_DT_F32, 1, (int64_t[]){-1}, NULL), -1);
    assert_non_null(strstr(gm_last_error(), "'neg'"));
    assert_int_equal(st_writer_add(w, "dims", GM_DT_F32, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}, NULL), -1);
    assert_int_equal(st_writer_add(w, "dt", (gm_dtype)99, 1, shp, NULL), -1);
    assert_int_equal(st_writer_add(w, "huge", GM_DT_F32, 2, (int64_t[]){1LL << 40, 1LL << 40}, NULL), -1);
    assert_int_equal(st_writer_bytes(w), 16);
    EXPECT_FAIL(st_writer_write(w, "/nonexistent-dir/x.safetensors", fill_pattern, &(int){0}), GM_ERR_IO,
                "/nonexistent-dir/x.safetensors", NULL);
    st_writer_destroy(&w);
}

/* A sharded checkpoint: two shards and an index. */
static void write_shards(fixture *fx, const char *index_json)
{
    char p[300];
    float v[4] = {1, 2, 3, 4};
    st_writer *w = st_writer_new();
    st_writer_add(w, "model.layers.0.w", GM_DT_F32, 1, (int64_t[]){4}, v);
    st_writer_add(w, "model.embed_tokens.weight", GM_DT_F32, 2, (int64_t[]){2, 2}, v);
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", fx->dir);
    assert_int_equal(st_writer_write(w, p, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
    w = st_writer_new();
    st_writer_add(w, "model.layers.1.w", GM_DT_F32, 1, (int64_t[]){3}, v + 1);
    st_writer_add(w, "model.norm.weight", GM_DT_F32, 1, (int64_t[]){1}, v + 3);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", fx->dir);
    assert_int_equal(st_writer_write(w, p, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", fx->dir);
    put_file(p, index_json, strlen(index_json));
}

#define S1 "\"model-00001-of-00002.safetensors\""
#define S2 "\"model-00002-of-00002.safetensors\""
#define GOOD_MAP                                                                                                       \
    "\"model.layers.0.w\": " S1 ", \"model.embed_tokens.weight\": " S1 ", \"model.layers.1.w\": " S2                  \
    ", \"model.norm.weight\": " S2

static void test_sharded(void **state)
{
    fixture *fx = *state;
    write_shards(fx, "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {" GOOD_MAP "}}");
    put_raw(fx->path, "not even json", UINT64_MAX, 0); /* the index wins over model.safetensors */
    st_model *m = NULL;
    assert_int_equal(st_model_open(fx->dir, &m), GM_OK);
    assert_int_equal(st_model_count(m), 4);
    const st_tensor *t = st_model_find(m, "model.layers.1.w");
    assert_non_null(t);
    assert_non_null(strstr(t->file, "model-00002-of-00002.safetensors"));
    assert_true(((const float *)t->data)[2] == 4.0f);
    t = st_model_find(m, "model.embed_tokens.weight");
    assert_non_null(strstr(t->file, "model-00001-of-00002.safetensors"));
    assert_int_equal(t->shape[0], 2);
    assert_true(((const float *)t->data)[3] == 4.0f);
    assert_true(*(const float *)st_model_find(m, "model.norm.weight")->data == 4.0f);
    st_model_destroy(&m);
}

static void test_sharded_errors(void **state)
{
    fixture *fx = *state;
    char idx[300], s1[300], s2[300];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", fx->dir);
    snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", fx->dir);
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", fx->dir);
    st_model *m = NULL;
    /* listed in the index, absent from its shard */
    write_shards(fx, "{\"weight_map\": {" GOOD_MAP ", \"model.layers.2.w\": " S2 "}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_NOT_FOUND, s2, "model.layers.2.w");
    assert_non_null(strstr(gm_last_error(), idx));
    /* listed under the wrong shard */
    write_shards(fx, "{\"weight_map\": {\"model.layers.0.w\": " S2 ", \"model.embed_tokens.weight\": " S1
                     ", \"model.layers.1.w\": " S2 "}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_NOT_FOUND, s2, "model.layers.0.w");
    /* a shard that does not exist */
    write_shards(fx, "{\"weight_map\": {" GOOD_MAP ", \"extra\": \"model-00003-of-00003.safetensors\"}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_IO, "model-00003-of-00003.safetensors", NULL);
    /* bad index JSON, no weight_map, non-string shard, path escaping the directory */
    write_shards(fx, "{\"weight_map\": {" GOOD_MAP);
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, idx, NULL);
    write_shards(fx, "{\"weights\": {}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, idx, "weight_map");
    write_shards(fx, "{\"weight_map\": {}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, idx, NULL);
    write_shards(fx, "{\"weight_map\": {\"a\": 3}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, idx, "'a'");
    write_shards(fx, "{\"weight_map\": {\"a\": \"../model.safetensors\"}}");
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, idx, "'a'");
    /* the same tensor in two shards */
    write_shards(fx, "{\"weight_map\": {" GOOD_MAP "}}");
    float v = 1;
    st_writer *w = st_writer_new();
    st_writer_add(w, "model.layers.1.w", GM_DT_F32, 1, (int64_t[]){1}, &v);
    assert_int_equal(st_writer_write(w, s1, NULL, NULL), GM_OK);
    st_writer_destroy(&w);
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, s1, "model.layers.1.w");
    assert_non_null(strstr(gm_last_error(), s2));
    /* a malformed shard names that shard */
    put_raw(s2, "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 9]}}", UINT64_MAX, 16);
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_FORMAT, s2, "'t'");
    assert_null(m);
}

/* ------------------------------------------------------------------ malformed files */

static void test_missing(void **state)
{
    fixture *fx = *state;
    st_model *m = NULL;
    EXPECT_FAIL(st_model_open(fx->dir, &m), GM_ERR_IO, fx->dir, NULL); /* empty directory */
    EXPECT_FAIL(st_model_open("/nonexistent/gm", &m), GM_ERR_IO, "/nonexistent/gm", NULL);
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_IO, fx->path, NULL);
    EXPECT_FAIL(st_model_open_file(fx->dir, &m), GM_ERR_IO, fx->dir, NULL); /* a directory, not a file */
    assert_null(m);
}

static void test_short_file(void **state)
{
    fixture *fx = *state;
    st_model *m = NULL;
    put_file(fx->path, "", 0);
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, NULL);
    put_file(fx->path, "\x02\0\0\0\0", 5);
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, NULL);
    assert_non_null(strstr(gm_last_error(), "8"));
    put_file(fx->path, "\0\0\0\0\0\0\0\0", 8); /* empty header: not JSON */
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, NULL);
    assert_null(m);
}

static void test_header_past_end(void **state)
{
    fixture *fx = *state;
    st_model *m = NULL;
    put_raw(fx->path, "{}", 3, 0);
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, "past the end");
    put_raw(fx->path, "{}", 1000, 100);
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, "past the end");
    put_raw(fx->path, "{}", UINT64_MAX - 3, 0); /* 8 + length would wrap */
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, NULL);
    put_raw(fx->path, "{}", (100ull << 20) + 1, 0); /* past the 100 MB limit */
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, "limit");
    put_raw(fx->path, "{}", UINT64_MAX, 0);
    assert_int_equal(st_model_open_file(fx->path, &m), GM_OK); /* an empty checkpoint is well formed */
    assert_int_equal(st_model_count(m), 0);
    assert_null(st_model_find(m, "x"));
    st_model_destroy(&m);
}

static void test_bad_json(void **state)
{
    fixture *fx = *state;
    raw_case(fx, "{\"a\": {\"dtype\": \"F32\", ", 0, GM_ERR_FORMAT, "JSON");
    raw_case(fx, "[1, 2, 3]", 0, GM_ERR_FORMAT, "object");
    raw_case(fx, "\"str\"", 0, GM_ERR_FORMAT, "object");
    raw_case(fx, "{} {}", 0, GM_ERR_FORMAT, "trailing");
    put_file(fx->path, "\x04\0\0\0\0\0\0\0{}\0 ", 12); /* a NUL inside the header */
    st_model *m = NULL;
    EXPECT_FAIL(st_model_open_file(fx->path, &m), GM_ERR_FORMAT, fx->path, "trailing");
    raw_case(fx, "{\"a\": 5}", 0, GM_ERR_FORMAT, "'a'");
}

#define T(dt, shape, off) "{\"dtype\": \"" dt "\", \"shape\": " shape ", \"data_offsets\": " off "}"

static void test_unknown_dtype(void **state)
{
    fixture *fx = *state;
    raw_case(fx, "{\"w\": " T("Q4_K", "[2]", "[0, 2]") "}", 8, GM_ERR_UNSUPPORTED, "'w'");
    assert_non_null(strstr(gm_last_error(), "Q4_K"));
    raw_case(fx, "{\"w\": " T("f32", "[2]", "[0, 8]") "}", 8, GM_ERR_UNSUPPORTED, "'w'");
    raw_case(fx, "{\"w\": {\"dtype\": 3, \"shape\": [2], \"data_offsets\": [0, 8]}}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8, GM_ERR_FORMAT, "'w'");
}

static void test_bad_shape(void **state)
{
    fixture *fx = *state;
    raw_case(fx, "{\"w\": " T("F32", "[-2]", "[0, 8]") "}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[2.5]", "[0, 8]") "}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[\"2\"]", "[0, 8]") "}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "2", "[0, 8]") "}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[1,1,1,1,1,1,1,1,2]", "[0, 8]") "}", 8, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[3]", "[0, 8]") "}", 16, GM_ERR_FORMAT, "'w'"); /* 12 != 8 */
    raw_case(fx, "{\"w\": " T("BF16", "[2, 3]", "[0, 8]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[4294967296, 4294967296]", "[0, 0]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[9007199254740992, 3, 5, 7]", "[0, 0]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[1e300]", "[0, 0]") "}", 16, GM_ERR_FORMAT, "'w'");
    /* at most ST_MAX_DIMS dims is fine */
    put_raw(fx->path, "{\"w\": " T("F32", "[1,1,1,1,1,1,1,2]", "[0, 8]") "}", UINT64_MAX, 8);
    st_model *m = NULL;
    assert_int_equal(st_model_open_file(fx->path, &m), GM_OK);
    assert_int_equal(st_model_find(m, "w")->ndim, 8);
    st_model_destroy(&m);
}

static void test_bad_offsets(void **state)
{
    fixture *fx = *state;
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[8, 16]") "}", 12, GM_ERR_FORMAT, "'w'"); /* past the data */
    assert_non_null(strstr(gm_last_error(), "past the data"));
    raw_case(fx, "{\"w\": " T("F32", "[0]", "[16, 16]") "}", 12, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[8, 0]") "}", 16, GM_ERR_FORMAT, "'w'"); /* begin > end */
    assert_non_null(strstr(gm_last_error(), "begin"));
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[-8, 0]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[0]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[0, 8, 16]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[0.5, 8.5]") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[2]", "{}") "}", 16, GM_ERR_FORMAT, "'w'");
    raw_case(fx, "{\"w\": " T("F32", "[0]", "[18446744073709551615, 18446744073709551615]") "}", 16, GM_ERR_FORMAT,
             "'w'");
    /* misaligned data for the dtype */
    raw_case(fx, "{\"w\": " T("F32", "[2]", "[2, 10]") "}", 16, GM_ERR_UNSUPPORTED, "'w'");
}

static void test_overlap(void **state)
{
    fixture *fx = *state;
    raw_case(fx, "{\"a\": " T("F32", "[4]", "[0, 16]") ", \"b\": " T("F32", "[2]", "[8, 16]") "}", 16, GM_ERR_FORMAT,
             "'a'");
    assert_non_null(strstr(gm_last_error(), "'b'"));
    raw_case(fx,
             "{\"a\": " T("F32", "[1]", "[0, 4]") ", \"b\": " T("F32", "[4]", "[4, 20]") ", \"c\": " T(
                 "F32", "[1]", "[8, 12]") "}",
             24, GM_ERR_FORMAT, "'c'");
    raw_case(fx, "{\"a\": " T("F32", "[2]", "[0, 8]") ", \"b\": " T("F32", "[2]", "[0, 8]") "}", 16, GM_ERR_FORMAT,
             "overlaps");
    /* touching ranges and empty tensors anywhere are fine; holes are allowed */
    put_raw(fx->path,
            "{\"a\": " T("F32", "[2]", "[0, 8]") ", \"e\": " T("F32", "[0]", "[4, 4]") ", \"b\": " T(
                "F32", "[2]", "[8, 16]") ", \"c\": " T("U8", "[1]", "[20, 21]") "}",
            UINT64_MAX, 24);
    st_model *m = NULL;
    assert_int_equal(st_model_open_file(fx->path, &m), GM_OK);
    assert_int_equal(st_model_count(m), 4);
    st_model_destroy(&m);
}

static void test_duplicate(void **state)
{
    fixture *fx = *state;
    raw_case(fx, "{\"a\": " T("F32", "[1]", "[0, 4]") ", \"a\": " T("F32", "[1]", "[4, 8]") "}", 8, GM_ERR_FORMAT,
             "'a'");
    assert_non_null(strstr(gm_last_error(), "twice"));
}

static void test_metadata_skipped(void **state)
{
    fixture *fx = *state;
    put_raw(fx->path,
            "  {\"__metadata__\": {\"format\": \"pt\"}, \"w\": " T("BF16", "[2, 2]", "[0, 8]") "}  \n  ",
            UINT64_MAX, 8);
    st_model *m = NULL;
    assert_int_equal(st_model_open_file(fx->path, &m), GM_OK);
    assert_int_equal(st_model_count(m), 1);
    assert_null(st_model_find(m, "__metadata__"));
    st_model_destroy(&m);
}

static void test_parse_header_direct(void **state)
{
    (void)state;
    st_tensor *t = (st_tensor *)0x1;
    int32_t n = -1;
    const char *h = "{\"x\": " T("F16", "[3, 1]", "[2, 8]") "} ";
    assert_int_equal(st_parse_header(h, strlen(h), 8, "mem", &t, &n), GM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(t[0].name, "x");
    assert_int_equal(t[0].offset, 2);
    assert_int_equal(t[0].nbytes, 6);
    assert_null(t[0].data);
    assert_string_equal(t[0].file, "mem");
    st_tensors_free(t, n);
    /* the length bounds the parse */
    EXPECT_FAIL(st_parse_header(h, 10, 8, "mem", &t, &n), GM_ERR_FORMAT, "mem", NULL);
    assert_null(t);
    assert_int_equal(n, 0);
    EXPECT_FAIL(st_parse_header(h, strlen(h), 7, "mem", &t, &n), GM_ERR_FORMAT, "mem", "'x'");
    EXPECT_FAIL(st_parse_header("", 0, 0, "mem", &t, &n), GM_ERR_FORMAT, "mem", NULL);
    EXPECT_FAIL(st_parse_header("{}", (100u << 20) + 1, 0, "mem", &t, &n), GM_ERR_FORMAT, "mem", "limit");
    assert_int_equal(st_parse_header("{}", 2, 0, "mem", &t, &n), GM_OK);
    assert_int_equal(n, 0);
    st_tensors_free(t, n);
    st_tensors_free(NULL, 0);
}

/* ------------------------------------------------------------------ dtype.c */

static float f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_dtype_table(void **state)
{
    (void)state;
    for (int i = 0; i < GM_DT_COUNT; i++) {
        const char *nm = gm_dtype_name((gm_dtype)i);
        assert_int_equal(gm_dtype_parse(nm, strlen(nm)), i);
        assert_true(gm_dtype_size((gm_dtype)i) >= 1);
    }
    assert_int_equal(gm_dtype_size(GM_DT_BF16), 2);
    assert_int_equal(gm_dtype_size(GM_DT_F64), 8);
    assert_int_equal(gm_dtype_parse("F8_E4M3", 7), GM_DT_F8_E4M3);
    assert_int_equal(gm_dtype_parse("F3", 2), -1);
    assert_int_equal(gm_dtype_parse("F32", 2), -1);
    assert_int_equal(gm_dtype_size(GM_DT_COUNT), 0);
}

static void test_bf16(void **state)
{
    (void)state;
    assert_int_equal(gm_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(gm_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(gm_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);       /* tie -> even (down) */
    assert_int_equal(gm_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);   /* tie -> even (up) */
    assert_int_equal(gm_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81); /* above the tie */
    assert_int_equal(gm_f32_to_bf16(f32_bits(0x3f80ffffu)), 0x3f81);
    assert_int_equal(gm_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(gm_f32_to_bf16(-INFINITY), 0xff80);
    assert_true(isnan(gm_bf16_to_f32(gm_f32_to_bf16(NAN))));
    assert_true(isnan(gm_bf16_to_f32(gm_f32_to_bf16(f32_bits(0x7f800001u))))); /* low-payload NaN stays NaN */
    assert_true(isnan(gm_bf16_to_f32(gm_f32_to_bf16(f32_bits(0xff800001u)))));
    assert_int_equal(gm_f32_to_bf16(f32_bits(0x00000001u)), 0x0000); /* tiny subnormal rounds to 0 */
    assert_int_equal(gm_f32_to_bf16(f32_bits(0x00008000u)), 0x0000); /* tie -> even */
    assert_int_equal(gm_f32_to_bf16(f32_bits(0x00018000u)), 0x0002);
    /* every bf16 value round-trips */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = gm_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            assert_true(isnan(gm_bf16_to_f32(gm_f32_to_bf16(f))));
        else
            assert_int_equal(gm_f32_to_bf16(f), h);
    }
    assert_true(gm_round_bf16(sqrtf(2048.0f)) == 45.25f);
}

static void test_f16(void **state)
{
    (void)state;
    assert_int_equal(gm_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(gm_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(gm_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(gm_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(gm_f32_to_f16(65520.0f), 0x7c00); /* tie -> even = overflow to inf */
    assert_int_equal(gm_f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(gm_f32_to_f16(-INFINITY), 0xfc00);
    assert_true(isnan(gm_f16_to_f32(gm_f32_to_f16(NAN))));
    assert_int_equal(gm_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie -> even */
    assert_int_equal(gm_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie -> even */
    assert_int_equal(gm_f32_to_f16(0x1p-14f), 0x0400);            /* smallest normal */
    assert_int_equal(gm_f32_to_f16(0x1p-14f - 0x1p-26f), 0x0400); /* rounds up into the normals */
    assert_int_equal(gm_f32_to_f16(0x1p-24f), 0x0001);            /* smallest subnormal */
    assert_int_equal(gm_f32_to_f16(0x1p-25f), 0x0000);            /* tie -> even (0) */
    assert_int_equal(gm_f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
    assert_int_equal(gm_f32_to_f16(3 * 0x1p-25f), 0x0002);        /* tie -> even (2) */
    assert_int_equal(gm_f32_to_f16(-1023 * 0x1p-24f), 0x83ff);    /* largest subnormal */
    assert_int_equal(gm_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(gm_f32_to_f16(1e-30f), 0x0000);
    assert_true(gm_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(gm_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
    assert_true(gm_f16_to_f32(0x8200) == -0x1p-15f);
    assert_true(gm_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(isinf(gm_f16_to_f32(0x7c00)));
    for (uint32_t h = 0; h < 0x10000; h++) { /* every half round-trips */
        float f = gm_f16_to_f32((uint16_t)h);
        if (isnan(f))
            assert_true(isnan(gm_f16_to_f32(gm_f32_to_f16(f))));
        else
            assert_int_equal(gm_f32_to_f16(f), h);
    }
    /* midpoints between neighbouring halves round to the even one */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float lo = gm_f16_to_f32((uint16_t)h), hi = gm_f16_to_f32((uint16_t)(h + 1));
        float mid = lo + (hi - lo) / 2; /* exact in f32 */
        assert_int_equal(gm_f32_to_f16(mid), (h & 1) ? h + 1 : h);
    }
}

static void test_e4m3(void **state)
{
    (void)state;
    assert_true(gm_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(gm_e4m3_to_f32(0xfe) == -448.0f);
    assert_true(gm_e4m3_to_f32(0x38) == 1.0f);
    assert_true(gm_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(gm_e4m3_to_f32(0x08) == 0x1p-6f);
    assert_true(gm_e4m3_to_f32(0x80) == 0.0f && signbit(gm_e4m3_to_f32(0x80)));
    assert_true(isnan(gm_e4m3_to_f32(0x7f)));
    assert_true(isnan(gm_e4m3_to_f32(0xff)));
    assert_int_equal(gm_f32_to_e4m3(448.0f), 0x7e);
    assert_int_equal(gm_f32_to_e4m3(449.0f), 0x7e); /* saturate */
    assert_int_equal(gm_f32_to_e4m3(1e30f), 0x7e);
    assert_int_equal(gm_f32_to_e4m3(INFINITY), 0x7e);
    assert_int_equal(gm_f32_to_e4m3(-1000.0f), 0xfe);
    assert_int_equal(gm_f32_to_e4m3(-INFINITY), 0xfe);
    assert_int_equal(gm_f32_to_e4m3(NAN) & 0x7f, 0x7f);
    assert_int_equal(gm_f32_to_e4m3(416.0f), 0x7d);
    assert_int_equal(gm_f32_to_e4m3(432.0f), 0x7e); /* tie 416/448 -> even code 0x7e */
    assert_int_equal(gm_f32_to_e4m3(1.0f + 1.0f / 16), 0x38); /* tie -> even */
    assert_int_equal(gm_f32_to_e4m3(1.0f + 3.0f / 16), 0x3a); /* tie -> even */
    assert_int_equal(gm_f32_to_e4m3(0x1p-10f), 0x00);         /* half the smallest subnormal -> 0 */
    assert_int_equal(gm_f32_to_e4m3(0x1p-10f + 0x1p-20f), 0x01);
    assert_int_equal(gm_f32_to_e4m3(3 * 0x1p-10f), 0x02);     /* tie -> even */
    assert_int_equal(gm_f32_to_e4m3(15 * 0x1p-10f), 0x08);    /* tie between 7*2^-9 and 2^-6 -> even */
    assert_int_equal(gm_f32_to_e4m3(-0.0f), 0x80);
    assert_int_equal(gm_f32_to_e4m3(1e-30f), 0x00);
    for (int c = 0; c < 256; c++) { /* every finite code round-trips */
        if ((c & 0x7f) == 0x7f)
            continue;
        assert_int_equal(gm_f32_to_e4m3(gm_e4m3_to_f32((uint8_t)c)), c);
    }
    for (int c = 0; c < 0x7e; c++) { /* midpoints go to the even code */
        float mid = (gm_e4m3_to_f32((uint8_t)c) + gm_e4m3_to_f32((uint8_t)(c + 1))) / 2;
        assert_int_equal(gm_f32_to_e4m3(mid), (c & 1) ? c + 1 : c);
        assert_int_equal(gm_f32_to_e4m3(-mid), 0x80 | ((c & 1) ? c + 1 : c));
    }
}

static void test_to_f32(void **state)
{
    (void)state;
    uint16_t bf[3] = {0x3f80, 0xc000, 0x0000};
    uint16_t hf[3] = {0x3c00, 0xc000, 0x0001};
    uint8_t e8[3] = {0x38, 0xfe, 0x7f};
    float f[3] = {1, -2, 0.5f}, out[3];
    gm_to_f32(GM_DT_BF16, bf, out, 3);
    assert_true(out[0] == 1 && out[1] == -2 && out[2] == 0);
    gm_to_f32(GM_DT_F16, hf, out, 3);
    assert_true(out[0] == 1 && out[1] == -2 && out[2] == 0x1p-24f);
    gm_to_f32(GM_DT_F8_E4M3, e8, out, 3);
    assert_true(out[0] == 1 && out[1] == -448 && isnan(out[2]));
    gm_to_f32(GM_DT_F32, f, out, 3);
    assert_memory_equal(out, f, sizeof f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_single_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_fill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_roundtrip, setup, teardown),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test_setup_teardown(test_sharded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sharded_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_past_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_offsets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metadata_skipped, setup, teardown),
        cmocka_unit_test(test_parse_header_direct),
        cmocka_unit_test(test_dtype_table),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_e4m3),
        cmocka_unit_test(test_to_f32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
