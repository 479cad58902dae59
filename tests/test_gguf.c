/* test_gguf.c - the GGUF reader (common/gguf.c): a valid file of every value type, each malformed
 * case with its error, typed lookups, and a deterministic mutation run (every truncation, byte
 * flips, random splices) that must never crash; plus the dequantizers on hand-made blocks
 * (tests/test_gguf_py.py checks them against the gguf Python package on random data). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/gguf.h"
#include "common/gguf_quants.h"
#include "gguf_build.h"
#include "test_check.h"

/* ------------------------------------------------------------------ a valid file */

/* 12 (13 with align) metadata entries of every type and 3 tensors (F32 [4], Q8_0 [32, 2], F16 [2, 1, 3]);
 * align 0 leaves general.alignment out (default 32). */
static gb sample(uint32_t version, uint32_t align)
{
    gb b = {0};
    uint64_t A = align ? align : 32;
    gb_header(&b, version, 3, 12 + (align != 0));
    gb_kv_str(&b, "general.architecture", "test");
    gb_kv_u32(&b, "t.u32", 4000000000u);
    gb_str(&b, "t.i8");
    gb_u32(&b, GGUF_VT_I8);
    gb_le(&b, 0x9c, 1); /* -100 */
    gb_str(&b, "t.u16");
    gb_u32(&b, GGUF_VT_U16);
    gb_le(&b, 65535, 2);
    gb_str(&b, "t.i64");
    gb_u32(&b, GGUF_VT_I64);
    gb_u64(&b, (uint64_t)-5);
    gb_str(&b, "t.u64");
    gb_u32(&b, GGUF_VT_U64);
    gb_u64(&b, UINT64_MAX);
    double d = 2.5;
    uint64_t du;
    memcpy(&du, &d, 8);
    gb_str(&b, "t.f64");
    gb_u32(&b, GGUF_VT_F64);
    gb_u64(&b, du);
    gb_kv_f32(&b, "t.f32", 0.25f);
    gb_kv_bool(&b, "t.bool", 1);
    gb_kv_arr(&b, "t.strs", GGUF_VT_STRING, 3);
    gb_str(&b, "a");
    gb_str(&b, "");
    gb_str(&b, "\xe2\x96\x81x");
    gb_kv_arr(&b, "t.i16s", GGUF_VT_I16, 2);
    gb_le(&b, (uint16_t)-2, 2);
    gb_le(&b, 7, 2);
    gb_kv_arr(&b, "t.empty", GGUF_VT_U8, 0);
    if (align)
        gb_kv_u32(&b, "general.alignment", align);
    uint64_t o1 = align_up_u64(16, A), o2 = align_up_u64(o1 + 68, A);
    gb_tensor(&b, "w.f32", 1, (uint64_t[]){4}, GGUF_TYPE_F32, 0);
    gb_tensor(&b, "w.q8", 2, (uint64_t[]){32, 2}, GGUF_TYPE_Q8_0, o1);
    gb_tensor(&b, "w.f16", 3, (uint64_t[]){2, 1, 3}, GGUF_TYPE_F16, o2);
    gb_align(&b, A);
    size_t data = b.len;
    for (int i = 1; i <= 4; i++)
        gb_f32(&b, (float)i);
    while (b.len < data + o1)
        gb_le(&b, 0, 1);
    for (int blk = 0; blk < 2; blk++) { /* d = 0.5, q = j - 16 (block 0) or 16 - j (block 1) */
        gb_le(&b, gm_f32_to_f16(0.5f), 2);
        for (int j = 0; j < 32; j++)
            gb_le(&b, (uint8_t)(int8_t)(blk ? 16 - j : j - 16), 1);
    }
    while (b.len < data + o2)
        gb_le(&b, 0, 1);
    for (int i = 0; i < 6; i++)
        gb_le(&b, gm_f32_to_f16((float)i - 2.5f), 2);
    return b;
}

static void check_sample(const gguf_file *f, uint32_t version, uint64_t align)
{
    assert_int_equal(gguf_version(f), version);
    assert_int_equal(gguf_alignment(f), align);
    assert_int_equal(gguf_kv_count(f), align != 32 ? 13 : 12);
    assert_int_equal(gguf_tensor_count(f), 3);
    int64_t v;
    double x;
    bool bl;
    char s[16];
    GOK(gguf_get_str(f, "general.architecture", s, sizeof s));
    assert_string_equal(s, "test");
    GOK(gguf_get_int(f, "t.u32", 0, INT64_MAX, &v));
    assert_int_equal(v, 4000000000);
    GOK(gguf_get_int(f, "t.i8", -128, 127, &v));
    assert_int_equal(v, -100);
    GOK(gguf_get_int(f, "t.u16", 0, 65535, &v));
    assert_int_equal(v, 65535);
    GOK(gguf_get_int(f, "t.i64", INT64_MIN, INT64_MAX, &v));
    assert_int_equal(v, -5);
    GOK(gguf_get_float(f, "t.f64", &x));
    assert_true(x == 2.5);
    GOK(gguf_get_float(f, "t.f32", &x));
    assert_true(x == 0.25);
    GOK(gguf_get_float(f, "t.u32", &x)); /* integers read as numbers too */
    assert_true(x == 4e9);
    GOK(gguf_get_bool(f, "t.bool", &bl));
    assert_true(bl);
    const gguf_kv *kv;
    GOK(gguf_get_array(f, "t.strs", GGUF_VT_STRING, &kv));
    assert_int_equal(kv->n, 3);
    assert_int_equal(kv->strs[0].len, 1);
    assert_memory_equal(kv->strs[0].p, "a", 1);
    assert_int_equal(kv->strs[1].len, 0);
    assert_int_equal(kv->strs[2].len, 4);
    assert_memory_equal(kv->strs[2].p, "\xe2\x96\x81x", 4);
    GOK(gguf_get_array(f, "t.i16s", GGUF_VT_I16, &kv));
    assert_int_equal(gguf_kv_int_at(kv, 0), -2);
    assert_int_equal(gguf_kv_int_at(kv, 1), 7);
    GOK(gguf_get_array(f, "t.empty", GGUF_VT_COUNT, &kv));
    assert_int_equal(kv->n, 0);
    assert_null(gguf_find_kv(f, "t.none"));

    const gguf_tensor *t = gguf_find_tensor(f, "w.f32");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->ne[1], 1);
    assert_int_equal(t->nbytes, 16);
    float y[64];
    GOK(gguf_dequant_f32(t->type, t->data, y, t->nelem));
    assert_true(y[0] == 1.0f && y[3] == 4.0f);
    t = gguf_find_tensor(f, "w.q8");
    assert_non_null(t);
    assert_int_equal(t->type, GGUF_TYPE_Q8_0);
    assert_int_equal(t->nelem, 64);
    assert_int_equal(t->nbytes, 68);
    assert_int_equal(t->offset % align, 0);
    GOK(gguf_dequant_f32(t->type, t->data, y, t->nelem));
    for (int j = 0; j < 32; j++) {
        assert_true(y[j] == 0.5f * (float)(j - 16));
        assert_true(y[32 + j] == 0.5f * (float)(16 - j));
    }
    t = gguf_find_tensor(f, "w.f16");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->ne[2], 3);
    assert_int_equal(t->nelem, 6);
    GOK(gguf_dequant_f32(t->type, t->data, y, t->nelem));
    assert_true(y[0] == -2.5f && y[5] == 2.5f);
    assert_null(gguf_find_tensor(f, "w.none"));
    assert_ptr_equal(gguf_tensor_at(f, 1), gguf_find_tensor(f, "w.q8"));
    assert_null(gguf_tensor_at(f, 3));
}

static void test_parse_good(void **state)
{
    uint32_t aligns[] = {0, 64, 1, 256};
    for (int v = 2; v <= 3; v++)
        for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
            gb b = sample((uint32_t)v, aligns[i]);
            gguf_file *f = NULL;
            GOK(gguf_parse(b.p, b.len, "sample.gguf", &f));
            check_sample(f, (uint32_t)v, aligns[i] ? aligns[i] : 32);
            assert_string_equal(gguf_name(f), "sample.gguf");
            gguf_destroy(&f);
            assert_null(f);
            free(b.p);
        }
    gguf_destroy(NULL);
}

static void test_open_file(void **state)
{
    char path[] = "/tmp/gm_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    gb b = sample(3, 0);
    assert_int_equal(write(fd, b.p, b.len), (ssize_t)b.len);
    close(fd);
    gguf_file *f = NULL;
    GOK(gguf_open(path, &f));
    check_sample(f, 3, 32);
    assert_string_equal(gguf_name(f), path);
    gguf_destroy(&f);
    unlink(path);
    free(b.p);

    gm_status st = gguf_open(path, &f);
    assert_int_equal(st, GM_ERR_IO);
    assert_non_null(strstr(gm_last_error(), path));
    assert_null(f);
    st = gguf_open("/tmp", &f);
    assert_int_equal(st, GM_ERR_IO);
    assert_non_null(strstr(gm_last_error(), "not a regular file"));
}

/* ------------------------------------------------------------------ malformed files */

/* Parsing b must fail with `want` and a message naming the file and containing `what`. */
static void expect_bad(gb *b, gm_status want, const char *what)
{
    gguf_file *f = (gguf_file *)0x1;
    gm_clear_error();
    gm_status st = gguf_parse(b->p, b->len, "bad.gguf", &f);
    if (st != want)
        fail_msg("want %s (%s), got %s: %s", gm_status_str(want), what, gm_status_str(st), gm_last_error());
    if (!strstr(gm_last_error(), "bad.gguf") || !strstr(gm_last_error(), what))
        fail_msg("error '%s' lacks the file name or '%s'", gm_last_error(), what);
    assert_null(f);
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* A file with one tensor {n_dims, ne, type, offset} and `data` bytes after the aligned infos. */
static gb one_tensor(uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset, size_t data)
{
    gb b = {0};
    gb_header(&b, 3, 1, 1);
    gb_kv_str(&b, "general.architecture", "test");
    gb_tensor(&b, "x", n_dims, ne, type, offset);
    gb_align(&b, 32);
    for (size_t i = 0; i < data; i++)
        gb_le(&b, 0, 1);
    return b;
}

static void test_malformed_header(void **state)
{
    gb b = {0};
    expect_bad(&b, GM_ERR_FORMAT, "no 'GGUF' magic");
    gb_put(&b, "GGUX", 4);
    gb_u32(&b, 3);
    expect_bad(&b, GM_ERR_FORMAT, "magic");
    uint32_t versions[] = {1, 4, 0};
    const char *msg[] = {"version 1 is not supported", "version 4", "version 0"};
    for (int i = 0; i < 3; i++) {
        gb_header(&b, versions[i], 0, 0);
        expect_bad(&b, GM_ERR_UNSUPPORTED, msg[i]);
    }
    gb_header(&b, 0x03000000u, 0, 0);
    expect_bad(&b, GM_ERR_UNSUPPORTED, "big-endian");
    gb_put(&b, "GGUF", 4);
    gb_u32(&b, 3);
    gb_u32(&b, 0); /* the tensor count cut short */
    expect_bad(&b, GM_ERR_FORMAT, "inside the tensor count");
    gb_header(&b, 3, 0, 1ull << 40);
    expect_bad(&b, GM_ERR_FORMAT, "metadata count");
    gb_header(&b, 3, UINT64_MAX, 0);
    expect_bad(&b, GM_ERR_FORMAT, "tensor count");
    gb_header(&b, 3, 0, 0); /* the smallest valid file */
    gguf_file *f = NULL;
    GOK(gguf_parse(b.p, b.len, "empty.gguf", &f));
    assert_int_equal(gguf_kv_count(f), 0);
    assert_int_equal(gguf_tensor_count(f), 0);
    gguf_destroy(&f);
    free(b.p);
    assert_int_equal(gguf_parse(NULL, 4, "x", &f), GM_ERR_INVALID_ARG);
}

static void test_malformed_metadata(void **state)
{
    gb b = {0};
    gb_header(&b, 3, 0, 1);
    gb_u64(&b, 1000); /* key length past the end */
    gb_put(&b, "abcdefghijklmnop", 16);
    expect_bad(&b, GM_ERR_FORMAT, "past the end");
    gb_header(&b, 3, 0, 1);
    gb_str(&b, "k");
    gb_u32(&b, 13);
    expect_bad(&b, GM_ERR_FORMAT, "unknown value type 13");
    gb_header(&b, 3, 0, 1);
    gb_kv_arr(&b, "k", 13, 0);
    expect_bad(&b, GM_ERR_FORMAT, "unknown array element type 13");
    gb_header(&b, 3, 0, 1);
    gb_kv_arr(&b, "k", GGUF_VT_ARRAY, 0);
    expect_bad(&b, GM_ERR_UNSUPPORTED, "arrays of arrays");
    gb_header(&b, 3, 0, 1);
    gb_kv_arr(&b, "k", GGUF_VT_U32, 1ull << 61);
    gb_u32(&b, 0);
    expect_bad(&b, GM_ERR_FORMAT, "run past the end");
    gb_header(&b, 3, 0, 1);
    gb_kv_arr(&b, "k", GGUF_VT_STRING, 1ull << 40);
    gb_str(&b, "a");
    expect_bad(&b, GM_ERR_FORMAT, "cannot fit");
    gb_header(&b, 3, 0, 1);
    gb_kv_arr(&b, "k", GGUF_VT_STRING, 2);
    gb_str(&b, "a");
    gb_u64(&b, 99); /* second string's length past the end */
    expect_bad(&b, GM_ERR_FORMAT, "string 1 of key 'k'");
    gb_header(&b, 3, 0, 1);
    gb_kv_bool(&b, "k", 2);
    expect_bad(&b, GM_ERR_FORMAT, "neither 0 nor 1");
    gb_header(&b, 3, 0, 1);
    gb_kv_u32(&b, "", 1);
    expect_bad(&b, GM_ERR_FORMAT, "is empty");
    gb_header(&b, 3, 0, 1);
    gb_u64(&b, 3);
    gb_put(&b, "a\0b", 3);
    gb_u32(&b, GGUF_VT_U8);
    gb_le(&b, 0, 1);
    expect_bad(&b, GM_ERR_FORMAT, "NUL");
    gb_header(&b, 3, 0, 2);
    gb_kv_u32(&b, "k", 1);
    gb_kv_u32(&b, "k", 2);
    expect_bad(&b, GM_ERR_FORMAT, "key 'k' appears twice");
    uint32_t bad_align[] = {0, 48, 1u << 31};
    for (int i = 0; i < 3; i++) {
        gb_header(&b, 3, 0, 1);
        gb_kv_u32(&b, "general.alignment", bad_align[i]);
        expect_bad(&b, GM_ERR_FORMAT, "not a power of two");
    }
    gb_header(&b, 3, 0, 1);
    gb_kv_str(&b, "general.alignment", "32");
    expect_bad(&b, GM_ERR_FORMAT, "of type string, not u32");
}

static void test_malformed_tensors(void **state)
{
    gb b = one_tensor(0, NULL, GGUF_TYPE_F32, 0, 32);
    expect_bad(&b, GM_ERR_FORMAT, "0 dimensions");
    b = one_tensor(5, (uint64_t[]){1, 1, 1, 1, 1}, GGUF_TYPE_F32, 0, 32);
    expect_bad(&b, GM_ERR_FORMAT, "5 dimensions");
    b = one_tensor(2, (uint64_t[]){4, 0}, GGUF_TYPE_F32, 0, 32);
    expect_bad(&b, GM_ERR_FORMAT, "ne[1] = 0 is zero");
    b = one_tensor(3, (uint64_t[]){1ull << 31, 1ull << 31, 2}, GGUF_TYPE_F32, 0, 32);
    expect_bad(&b, GM_ERR_FORMAT, "2^62");
    b = one_tensor(1, (uint64_t[]){UINT64_MAX}, GGUF_TYPE_F32, 0, 32);
    expect_bad(&b, GM_ERR_FORMAT, "2^62");
    b = one_tensor(1, (uint64_t[]){32}, 4, 0, 32); /* a type ggml retired */
    expect_bad(&b, GM_ERR_UNSUPPORTED, "unknown ggml type 4");
    b = one_tensor(1, (uint64_t[]){32}, 1000, 0, 32);
    expect_bad(&b, GM_ERR_UNSUPPORTED, "unknown ggml type 1000");
    b = one_tensor(1, (uint64_t[]){33}, GGUF_TYPE_Q8_0, 0, 64);
    expect_bad(&b, GM_ERR_FORMAT, "not a multiple of Q8_0's block of 32");
    b = one_tensor(1, (uint64_t[]){8}, GGUF_TYPE_F32, 0, 31);
    expect_bad(&b, GM_ERR_FORMAT, "runs past the end");
    b = one_tensor(1, (uint64_t[]){8}, GGUF_TYPE_F32, 32, 63);
    expect_bad(&b, GM_ERR_FORMAT, "runs past the end");
    b = one_tensor(1, (uint64_t[]){8}, GGUF_TYPE_F32, UINT64_MAX - 31, 32);
    expect_bad(&b, GM_ERR_FORMAT, "runs past the end");
    b = one_tensor(1, (uint64_t[]){8}, GGUF_TYPE_F32, 8, 64);
    expect_bad(&b, GM_ERR_FORMAT, "not a multiple of the alignment 32");
    b = one_tensor(1, (uint64_t[]){256}, GGUF_TYPE_F32, 0, 1); /* data section ends right away */
    expect_bad(&b, GM_ERR_FORMAT, "runs past the end");

    for (int dup = 0; dup < 2; dup++) { /* two tensors: overlapping, or the same name */
        b = (gb){0};
        gb_header(&b, 3, 2, 0);
        gb_tensor(&b, "a", 1, (uint64_t[]){16}, GGUF_TYPE_F32, 0);
        gb_tensor(&b, dup ? "a" : "b", 1, (uint64_t[]){8}, GGUF_TYPE_F32, dup ? 64 : 32);
        gb_align(&b, 32);
        for (int i = 0; i < 128; i++)
            gb_le(&b, 0, 1);
        expect_bad(&b, GM_ERR_FORMAT, dup ? "tensor 'a' appears twice" : "overlaps tensor 'a'");
    }
    char longname[2000];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    b = (gb){0};
    gb_header(&b, 3, 1, 0);
    gb_tensor(&b, longname, 1, (uint64_t[]){8}, GGUF_TYPE_F32, 0);
    expect_bad(&b, GM_ERR_FORMAT, "1999 bytes long");
}

static void test_lookups(void **state)
{
    gb b = sample(3, 0);
    gguf_file *f = NULL;
    GOK(gguf_parse(b.p, b.len, "s.gguf", &f));
    int64_t v;
    double x;
    bool bl;
    char s[4];
    const gguf_kv *kv;
    assert_int_equal(gguf_get_int(f, "nope", 0, 1, &v), GM_ERR_NOT_FOUND);
    assert_non_null(strstr(gm_last_error(), "no metadata key 'nope'"));
    assert_int_equal(gguf_get_int(f, "t.f32", 0, 1, &v), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "of type f32, an integer"));
    assert_int_equal(gguf_get_int(f, "t.u32", 0, 100, &v), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "out of range"));
    assert_int_equal(gguf_get_int(f, "t.u64", 0, INT64_MAX - 1, &v), GM_ERR_FORMAT); /* 2^64-1 saturates */
    assert_int_equal(gguf_get_int(f, "t.strs", 0, 1, &v), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "is an array"));
    assert_int_equal(gguf_get_float(f, "general.architecture", &x), GM_ERR_FORMAT);
    assert_int_equal(gguf_get_bool(f, "t.u32", &bl), GM_ERR_FORMAT);
    assert_int_equal(gguf_get_str(f, "t.u32", s, sizeof s), GM_ERR_FORMAT);
    assert_int_equal(gguf_get_str(f, "general.architecture", s, sizeof s), GM_ERR_FORMAT); /* "test" needs 5 */
    assert_non_null(strstr(gm_last_error(), "too long"));
    assert_int_equal(gguf_get_array(f, "t.u32", GGUF_VT_U32, &kv), GM_ERR_FORMAT);
    assert_int_equal(gguf_get_array(f, "t.i16s", GGUF_VT_I32, &kv), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "array of i16, an array of i32"));
    assert_int_equal(gguf_get_array(f, "nope", GGUF_VT_I32, &kv), GM_ERR_NOT_FOUND);
    gguf_destroy(&f);
    free(b.p);
    assert_string_equal(gguf_type_name(GGUF_TYPE_Q4_K), "Q4_K");
    assert_null(gguf_type_name(4));
    assert_null(gguf_type_name(1u << 31));
    int64_t be, bb;
    assert_true(gguf_type_block(GGUF_TYPE_Q6_K, &be, &bb));
    assert_int_equal(be, 256);
    assert_int_equal(bb, 210);
    assert_false(gguf_type_block(5, &be, &bb));
}

/* ------------------------------------------------------------------ mutations */

/* What a successful parse of buf[0..len) promises: every tensor inside the image, whole blocks,
 * readable (dequantized when supported) and findable; every string inside the image. */
static void check_promises(const gguf_file *f, const uint8_t *buf, size_t len, float *scratch, size_t cap)
{
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        const uint8_t *p = t->data;
        assert_true(p >= buf && t->nbytes <= len && p - buf <= (ptrdiff_t)(len - t->nbytes));
        assert_ptr_equal(gguf_find_tensor(f, t->name), t);
        assert_int_equal(t->offset % gguf_alignment(f), 0);
        if (gguf_can_dequant(t->type) && (size_t)t->nelem <= cap)
            GOK(gguf_dequant_f32(t->type, t->data, scratch, t->nelem));
    }
    for (int64_t i = 0; i < gguf_kv_count(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        assert_ptr_equal(gguf_find_kv(f, kv->key), kv);
        for (uint64_t j = 0; kv->strs && j < kv->n; j++)
            assert_true((const uint8_t *)kv->strs[j].p >= buf &&
                        (const uint8_t *)kv->strs[j].p + kv->strs[j].len <= buf + len);
        if (kv->data && kv->n)
            (void)gguf_kv_float_at(kv, kv->n - 1);
    }
}

/* Parse a private copy of m[0..n) (so ASan sees any read past it); 1 when it parsed. */
static int try_parse(const uint8_t *m, size_t n, float *scratch, size_t cap)
{
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, m, n);
    gguf_file *f = NULL;
    gm_status st = gguf_parse(copy, n, "mut.gguf", &f);
    if (!st) {
        check_promises(f, copy, n, scratch, cap);
        gguf_destroy(&f);
    } else {
        assert_null(f);
        assert_true(gm_last_error()[0] != '\0');
    }
    free(copy);
    return st == GM_OK;
}

static void test_mutations(void **state)
{
    gb b = sample(3, 64);
    float *scratch = malloc(4096 * sizeof *scratch);
    assert_non_null(scratch);
    /* every truncation: only the whole file parses (the last tensor ends the file) */
    int ok = 0;
    for (size_t n = 0; n <= b.len; n++)
        ok += try_parse(b.p, n, scratch, 4096);
    assert_int_equal(ok, 1);
    /* every byte flipped four ways */
    static const uint8_t flips[] = {0x01, 0x80, 0xff, 0x10};
    uint8_t *m = malloc(b.len);
    assert_non_null(m);
    for (size_t i = 0; i < b.len; i++)
        for (size_t k = 0; k < sizeof flips; k++) {
            memcpy(m, b.p, b.len);
            m[i] ^= flips[k];
            try_parse(m, b.len, scratch, 4096);
        }
    /* random splices of 1-4 bytes with values parsers trip over, from a fixed seed */
    static const uint8_t vals[] = {0x00, 0x01, 0x02, 0x07, 0x08, 0x09, 0x0c, 0x20, 0x40, 0x7f, 0x80, 0xfe, 0xff};
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int it = 0; it < 20000; it++) {
        memcpy(m, b.p, b.len);
        int k = 1 + (int)(x % 4);
        for (int j = 0; j < k; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            m[(x >> 8) % b.len] = (x >> 3) % 2 ? vals[(x >> 40) % sizeof vals] : (uint8_t)(x >> 48);
        }
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        try_parse(m, (x >> 20) % 8 ? b.len : (size_t)((x >> 24) % b.len), scratch, 4096);
    }
    free(m);
    free(scratch);
    free(b.p);
}

/* ------------------------------------------------------------------ dequantizers */

static void test_dequant_blocks(void **state)
{
    /* Q4_0: d = 2, nibbles 0..15 in the low halves, 15..0 in the high: y = 2 * (q - 8) */
    uint8_t q40[18];
    uint16_t h2 = gm_f32_to_f16(2.0f);
    q40[0] = (uint8_t)h2, q40[1] = (uint8_t)(h2 >> 8);
    for (int j = 0; j < 16; j++)
        q40[2 + j] = (uint8_t)(j | (15 - j) << 4);
    float y[256];
    uint16_t h[256];
    GOK(gguf_dequant_f32(GGUF_TYPE_Q4_0, q40, y, 32));
    GOK(gguf_dequant_bf16(GGUF_TYPE_Q4_0, q40, h, 32));
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == 2.0f * (float)(j - 8));
        assert_true(y[16 + j] == 2.0f * (float)(7 - j));
        assert_int_equal(h[j], gm_f32_to_bf16(y[j]));
    }
    /* Q6_K with all-zero bits: q = -32, scale 0 -> 0; scales 1 and d = 1 -> -32 */
    uint8_t q6[210] = {0};
    uint16_t one = gm_f32_to_f16(1.0f);
    for (int k = 0; k < 16; k++)
        q6[192 + k] = 1;
    q6[208] = (uint8_t)one, q6[209] = (uint8_t)(one >> 8);
    GOK(gguf_dequant_f32(GGUF_TYPE_Q6_K, q6, y, 256));
    for (int i = 0; i < 256; i++)
        assert_true(y[i] == -32.0f);
    /* bf16 passes through; f32 rounds to nearest even */
    uint16_t bf[2] = {0x3f81, 0xc000};
    GOK(gguf_dequant_bf16(GGUF_TYPE_BF16, bf, h, 2));
    assert_int_equal(h[0], 0x3f81);
    assert_int_equal(h[1], 0xc000);
    float f[1] = {1.00390625f}; /* 1 + 2^-8: a tie, rounds to even 1.0 */
    GOK(gguf_dequant_bf16(GGUF_TYPE_F32, f, h, 1));
    assert_int_equal(h[0], 0x3f80);

    assert_int_equal(gguf_dequant_f32(GGUF_TYPE_Q8_0, q40, y, 31), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "32-element blocks"));
    assert_int_equal(gguf_dequant_f32(GGUF_TYPE_IQ2_XXS, q40, y, 256), GM_ERR_UNSUPPORTED);
    assert_non_null(strstr(gm_last_error(), "IQ2_XXS"));
    assert_int_equal(gguf_dequant_bf16(77, q40, h, 32), GM_ERR_UNSUPPORTED);
    assert_false(gguf_can_dequant(GGUF_TYPE_Q8_K));
    assert_true(gguf_can_dequant(GGUF_TYPE_Q5_K));
    GOK(gguf_dequant_f32(GGUF_TYPE_Q4_K, NULL, NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_open_file),
        cmocka_unit_test(test_malformed_header),
        cmocka_unit_test(test_malformed_metadata),
        cmocka_unit_test(test_malformed_tensors),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_dequant_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
