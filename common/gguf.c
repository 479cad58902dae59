/* gguf.c - parse and map GGUF files. Every read is bounds-checked against the image; every
 * failure names the file and the byte offset or entry that is wrong. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAX_KEY 65535        /* the format's limit on a key's length */
#define GGUF_MAX_NAME 1024        /* tensor names are short ("blk.17.ffn_down.weight"); refuse novels */
#define GGUF_MAX_ELEMS (1ull << 62)
#define GGUF_MAX_ALIGN (1u << 30)

/* ---------------------------------------------------------------- type tables */

static const struct {
    const char *name;
    int64_t block, bytes;
} g_types[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_F32] = {"F32", 1, 4},          [GGUF_TYPE_F16] = {"F16", 1, 2},
    [GGUF_TYPE_Q4_0] = {"Q4_0", 32, 18},      [GGUF_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [GGUF_TYPE_Q5_0] = {"Q5_0", 32, 22},      [GGUF_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [GGUF_TYPE_Q8_0] = {"Q8_0", 32, 34},      [GGUF_TYPE_Q8_1] = {"Q8_1", 32, 40},
    [GGUF_TYPE_Q2_K] = {"Q2_K", 256, 84},     [GGUF_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [GGUF_TYPE_Q4_K] = {"Q4_K", 256, 144},    [GGUF_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [GGUF_TYPE_Q6_K] = {"Q6_K", 256, 210},    [GGUF_TYPE_Q8_K] = {"Q8_K", 256, 292},
    [GGUF_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [GGUF_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74},
    [GGUF_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [GGUF_TYPE_IQ1_S] = {"IQ1_S", 256, 50},
    [GGUF_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18},  [GGUF_TYPE_IQ3_S] = {"IQ3_S", 256, 110},
    [GGUF_TYPE_IQ2_S] = {"IQ2_S", 256, 82},   [GGUF_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136},
    [GGUF_TYPE_I8] = {"I8", 1, 1},            [GGUF_TYPE_I16] = {"I16", 1, 2},
    [GGUF_TYPE_I32] = {"I32", 1, 4},          [GGUF_TYPE_I64] = {"I64", 1, 8},
    [GGUF_TYPE_F64] = {"F64", 1, 8},          [GGUF_TYPE_IQ1_M] = {"IQ1_M", 256, 56},
    [GGUF_TYPE_BF16] = {"BF16", 1, 2},        [GGUF_TYPE_TQ1_0] = {"TQ1_0", 256, 54},
    [GGUF_TYPE_TQ2_0] = {"TQ2_0", 256, 66},   [GGUF_TYPE_MXFP4] = {"MXFP4", 32, 17},
};

const char *gguf_type_name(uint32_t type) { return type < GGUF_TYPE_COUNT ? g_types[type].name : NULL; }

bool gguf_type_block(uint32_t type, int64_t *block_elems, int64_t *block_bytes)
{
    if (type >= GGUF_TYPE_COUNT || !g_types[type].name)
        return false;
    if (block_elems)
        *block_elems = g_types[type].block;
    if (block_bytes)
        *block_bytes = g_types[type].bytes;
    return true;
}

/* Bytes of one element of a fixed-size value type; 0 for string, array and unknown. */
static size_t vt_size(uint32_t t)
{
    static const uint8_t sz[GGUF_VT_COUNT] = {
        [GGUF_VT_U8] = 1, [GGUF_VT_I8] = 1, [GGUF_VT_U16] = 2, [GGUF_VT_I16] = 2, [GGUF_VT_U32] = 4,
        [GGUF_VT_I32] = 4, [GGUF_VT_F32] = 4, [GGUF_VT_BOOL] = 1, [GGUF_VT_U64] = 8, [GGUF_VT_I64] = 8,
        [GGUF_VT_F64] = 8,
    };
    return t < GGUF_VT_COUNT ? sz[t] : 0;
}

static const char *vt_name(uint32_t t)
{
    static const char *const nm[GGUF_VT_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
    };
    return t < GGUF_VT_COUNT ? nm[t] : "unknown";
}

/* ---------------------------------------------------------------- the file */

struct gguf_file {
    char *name;
    void *map;              /* owned mapping (gguf_open), or NULL (gguf_parse: borrowed image) */
    size_t map_len;
    const uint8_t *base;    /* image start */
    size_t len;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_start;    /* byte offset of the data section */
    gguf_kv *kv;            /* [n_kv] */
    int64_t n_kv;
    gguf_kv **kv_sorted;    /* [n_kv] by key */
    gguf_tensor *t;         /* [n_t] */
    int64_t n_t;
    gguf_tensor **t_sorted; /* [n_t] by name */
};

/* A cursor over the image. */
typedef struct rd {
    const uint8_t *p;
    size_t len, pos;
    const char *name;
} rd;

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Read an n-byte little-endian integer; `what` names it in the error. */
static gm_status rd_uint(rd *r, int n, uint64_t *out, const char *what)
{
    *out = 0;
    if (r->len - r->pos < (size_t)n)
        return gm_fail(GM_ERR_FORMAT, "%s: file ends at byte %zu inside %s (%d bytes needed)", r->name, r->len, what, n);
    *out = le(r->p + r->pos, n);
    r->pos += (size_t)n;
    return GM_OK;
}

/* Read a string's header and skip its bytes; *s points into the image. */
static gm_status rd_str(rd *r, gguf_str *s, const char *what)
{
    size_t at = r->pos;
    uint64_t n;
    gm_status st = rd_uint(r, 8, &n, what);
    if (st)
        return st;
    if (n > r->len - r->pos)
        return gm_fail(GM_ERR_FORMAT, "%s: %s at byte %zu has length %" PRIu64 ", past the end of the %zu-byte file",
                       r->name, what, at, n, r->len);
    s->p = (const char *)r->p + r->pos;
    s->len = n;
    r->pos += (size_t)n;
    return GM_OK;
}

/* A NUL-terminated copy of a key or name: non-empty, at most max bytes, no NUL inside. */
static gm_status dup_name(const rd *r, gguf_str s, size_t max, const char *what, size_t at, char **out)
{
    if (s.len == 0)
        return gm_fail(GM_ERR_FORMAT, "%s: %s at byte %zu is empty", r->name, what, at);
    if (s.len > max)
        return gm_fail(GM_ERR_FORMAT, "%s: %s at byte %zu is %" PRIu64 " bytes long (at most %zu)", r->name, what, at,
                       s.len, max);
    if (memchr(s.p, 0, (size_t)s.len))
        return gm_fail(GM_ERR_FORMAT, "%s: %s at byte %zu contains a NUL byte", r->name, what, at);
    *out = malloc((size_t)s.len + 1);
    if (!*out)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", r->name);
    memcpy(*out, s.p, (size_t)s.len);
    (*out)[s.len] = '\0';
    return GM_OK;
}

/* The value of kv (its type already read): n elements of kv->elem. */
static gm_status rd_values(rd *r, gguf_kv *kv)
{
    if (kv->elem == GGUF_VT_STRING) {
        if (kv->n > (r->len - r->pos) / 8)
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s': %" PRIu64 " strings cannot fit in the %zu bytes left", r->name,
                           kv->key, kv->n, r->len - r->pos);
        kv->strs = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *kv->strs);
        if (!kv->strs)
            return gm_fail(GM_ERR_NOMEM, "%s: key '%s': out of memory for %" PRIu64 " strings", r->name, kv->key, kv->n);
        for (uint64_t i = 0; i < kv->n; i++) {
            char what[96];
            snprintf(what, sizeof what, "string %" PRIu64 " of key '%.48s'", i, kv->key);
            gm_status st = rd_str(r, &kv->strs[i], what);
            if (st)
                return st;
        }
        return GM_OK;
    }
    size_t sz = vt_size(kv->elem);
    if (kv->n > (r->len - r->pos) / sz)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s': %" PRIu64 " values of type %s run past the end of the file",
                       r->name, kv->key, kv->n, vt_name(kv->elem));
    kv->data = r->p + r->pos;
    r->pos += (size_t)(kv->n * sz);
    if (kv->elem == GGUF_VT_BOOL)
        for (uint64_t i = 0; i < kv->n; i++)
            if (kv->data[i] > 1)
                return gm_fail(GM_ERR_FORMAT, "%s: key '%s': bool value %u is neither 0 nor 1", r->name, kv->key,
                               kv->data[i]);
    return GM_OK;
}

/* One metadata entry. */
static gm_status rd_kv(rd *r, gguf_kv *kv, int64_t index)
{
    size_t at = r->pos;
    gguf_str key;
    uint64_t t;
    char what[48];
    snprintf(what, sizeof what, "key of metadata entry %" PRId64, index);
    gm_status st = rd_str(r, &key, what);
    if (!st)
        st = dup_name(r, key, GGUF_MAX_KEY, what, at, &kv->key);
    if (!st)
        st = rd_uint(r, 4, &t, "a metadata value type");
    if (st)
        return st;
    if (t >= GGUF_VT_COUNT)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s': unknown value type %" PRIu64, r->name, kv->key, t);
    kv->type = kv->elem = (gguf_vtype)t;
    kv->n = 1;
    if (t == GGUF_VT_ARRAY) {
        uint64_t et;
        if ((st = rd_uint(r, 4, &et, "an array element type")) || (st = rd_uint(r, 8, &kv->n, "an array length")))
            return st;
        if (et == GGUF_VT_ARRAY)
            return gm_fail(GM_ERR_UNSUPPORTED, "%s: key '%s': arrays of arrays are not supported", r->name, kv->key);
        if (et >= GGUF_VT_COUNT)
            return gm_fail(GM_ERR_FORMAT, "%s: key '%s': unknown array element type %" PRIu64, r->name, kv->key, et);
        kv->elem = (gguf_vtype)et;
    }
    return rd_values(r, kv);
}

/* One tensor info (its data is checked later, once the data section is known). */
static gm_status rd_tensor(rd *r, gguf_tensor *t, int64_t index)
{
    size_t at = r->pos;
    gguf_str name;
    uint64_t nd, v;
    char what[48];
    snprintf(what, sizeof what, "name of tensor %" PRId64, index);
    gm_status st = rd_str(r, &name, what);
    if (!st)
        st = dup_name(r, name, GGUF_MAX_NAME, what, at, &t->name);
    if (!st)
        st = rd_uint(r, 4, &nd, "a tensor's dimension count");
    if (st)
        return st;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': %" PRIu64 " dimensions (1 to %d allowed)", r->name, t->name, nd,
                       GGUF_MAX_DIMS);
    t->n_dims = (int32_t)nd;
    uint64_t nelem = 1;
    for (int i = 0; i < GGUF_MAX_DIMS; i++) {
        v = 1;
        if (i < (int)nd && (st = rd_uint(r, 8, &v, "a tensor dimension")))
            return st;
        if (v == 0 || v > GGUF_MAX_ELEMS || __builtin_mul_overflow(nelem, v, &nelem) || nelem > GGUF_MAX_ELEMS)
            return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': dimension ne[%d] = %" PRIu64 " is zero or makes more than 2^62 elements",
                           r->name, t->name, i, v);
        t->ne[i] = (int64_t)v;
    }
    t->nelem = (int64_t)nelem;
    if ((st = rd_uint(r, 4, &v, "a tensor type")))
        return st;
    int64_t blk, bb;
    if (!gguf_type_block((uint32_t)v, &blk, &bb))
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor '%s': unknown ggml type %" PRIu64, r->name, t->name, v);
    t->type = (uint32_t)v;
    if (t->ne[0] % blk != 0)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': ne[0] = %" PRId64 " is not a multiple of %s's block of %" PRId64,
                       r->name, t->name, t->ne[0], g_types[v].name, blk);
    /* bytes = ne[0]/blk*bb * (nelem/ne[0]); both factors < 2^62 and bb <= 292 */
    uint64_t row = (uint64_t)(t->ne[0] / blk) * (uint64_t)bb;
    if (__builtin_mul_overflow(row, nelem / (uint64_t)t->ne[0], &t->nbytes))
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': byte size overflows 64 bits", r->name, t->name);
    return rd_uint(r, 8, &t->offset, "a tensor offset");
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp((*(gguf_kv *const *)a)->key, (*(gguf_kv *const *)b)->key);
}

static int cmp_tname(const void *a, const void *b)
{
    return strcmp((*(gguf_tensor *const *)a)->name, (*(gguf_tensor *const *)b)->name);
}

static int cmp_toff(const void *a, const void *b)
{
    const gguf_tensor *x = *(gguf_tensor *const *)a, *y = *(gguf_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* general.alignment: a u32 power of two, default 32. */
static gm_status check_alignment(gguf_file *f)
{
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    if (!kv)
        return GM_OK;
    if (kv->type != GGUF_VT_U32)
        return gm_fail(GM_ERR_FORMAT, "%s: general.alignment is of type %s, not u32", f->name, vt_name(kv->type));
    uint64_t a = (uint64_t)gguf_kv_int_at(kv, 0);
    if (a == 0 || (a & (a - 1)) || a > GGUF_MAX_ALIGN)
        return gm_fail(GM_ERR_FORMAT, "%s: general.alignment = %" PRIu64 " is not a power of two up to 2^30", f->name, a);
    f->alignment = a;
    return GM_OK;
}

/* Place every tensor in the data section: aligned, inside the file, not overlapping another. */
static gm_status check_tensors(gguf_file *f)
{
    uint64_t data_len = f->data_start <= f->len ? f->len - f->data_start : 0;
    for (int64_t i = 0; i < f->n_t; i++) {
        gguf_tensor *t = &f->t[i];
        if (t->offset % f->alignment)
            return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                           f->name, t->name, t->offset, f->alignment);
        if (t->offset > data_len || t->nbytes > data_len - t->offset)
            return gm_fail(GM_ERR_FORMAT,
                           "%s: tensor '%s': data [%" PRIu64 ", +%" PRIu64 ") runs past the end of the %" PRIu64
                           "-byte data section (file truncated?)",
                           f->name, t->name, t->offset, t->nbytes, data_len);
        t->data = f->base + f->data_start + t->offset;
    }
    gguf_tensor **p = malloc((size_t)(f->n_t ? f->n_t : 1) * sizeof *p);
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", f->name);
    for (int64_t i = 0; i < f->n_t; i++)
        p[i] = &f->t[i];
    qsort(p, (size_t)f->n_t, sizeof *p, cmp_toff);
    gm_status st = GM_OK;
    const gguf_tensor *last = NULL; /* the tensor reaching furthest so far */
    for (int64_t i = 0; i < f->n_t && !st; i++) {
        if (last && p[i]->offset < last->offset + last->nbytes)
            st = gm_fail(GM_ERR_FORMAT, "%s: tensor '%s' [%" PRIu64 ", %" PRIu64 ") overlaps tensor '%s' [%" PRIu64
                         ", %" PRIu64 ")",
                         f->name, p[i]->name, p[i]->offset, p[i]->offset + p[i]->nbytes, last->name, last->offset,
                         last->offset + last->nbytes);
        if (!last || p[i]->offset + p[i]->nbytes > last->offset + last->nbytes)
            last = p[i];
    }
    free(p);
    return st;
}

/* Sorted indexes of keys and tensor names; a duplicate is an error. */
static gm_status build_index(gguf_file *f)
{
    f->kv_sorted = malloc((size_t)(f->n_kv ? f->n_kv : 1) * sizeof *f->kv_sorted);
    f->t_sorted = malloc((size_t)(f->n_t ? f->n_t : 1) * sizeof *f->t_sorted);
    if (!f->kv_sorted || !f->t_sorted)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", f->name);
    for (int64_t i = 0; i < f->n_kv; i++)
        f->kv_sorted[i] = &f->kv[i];
    for (int64_t i = 0; i < f->n_t; i++)
        f->t_sorted[i] = &f->t[i];
    qsort(f->kv_sorted, (size_t)f->n_kv, sizeof *f->kv_sorted, cmp_kv);
    qsort(f->t_sorted, (size_t)f->n_t, sizeof *f->t_sorted, cmp_tname);
    for (int64_t i = 1; i < f->n_kv; i++)
        if (!strcmp(f->kv_sorted[i - 1]->key, f->kv_sorted[i]->key))
            return gm_fail(GM_ERR_FORMAT, "%s: metadata key '%s' appears twice", f->name, f->kv_sorted[i]->key);
    for (int64_t i = 1; i < f->n_t; i++)
        if (!strcmp(f->t_sorted[i - 1]->name, f->t_sorted[i]->name))
            return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s' appears twice", f->name, f->t_sorted[i]->name);
    return GM_OK;
}

/* Header, metadata and tensor infos of f->base[0..len). */
static gm_status parse_image(gguf_file *f)
{
    rd r = {f->base, f->len, 0, f->name};
    if (f->len < 4 || memcmp(f->base, "GGUF", 4) != 0)
        return gm_fail(GM_ERR_FORMAT, "%s: not a GGUF file (no 'GGUF' magic at byte 0)", f->name);
    r.pos = 4;
    uint64_t v, n_t, n_kv;
    gm_status st;
    if ((st = rd_uint(&r, 4, &v, "the version")))
        return st;
    if (v == 0x02000000u || v == 0x03000000u)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: big-endian GGUF files are not supported", f->name);
    if (v != 2 && v != 3)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: GGUF version %" PRIu64 " is not supported (only 2 and 3)", f->name, v);
    f->version = (uint32_t)v;
    if ((st = rd_uint(&r, 8, &n_t, "the tensor count")) || (st = rd_uint(&r, 8, &n_kv, "the metadata count")))
        return st;
    /* an entry takes at least 12 bytes (key length, type) and a tensor info at least 24 */
    if (n_kv > (r.len - r.pos) / 12)
        return gm_fail(GM_ERR_FORMAT, "%s: metadata count %" PRIu64 " cannot fit in the %zu bytes left", f->name, n_kv,
                       r.len - r.pos);
    if (n_t > (r.len - r.pos) / 24)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor count %" PRIu64 " cannot fit in the %zu bytes left", f->name, n_t,
                       r.len - r.pos);
    f->kv = calloc((size_t)(n_kv ? n_kv : 1), sizeof *f->kv);
    f->t = calloc((size_t)(n_t ? n_t : 1), sizeof *f->t);
    if (!f->kv || !f->t)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory for %" PRIu64 " entries and %" PRIu64 " tensors", f->name, n_kv,
                       n_t);
    for (uint64_t i = 0; i < n_kv; i++) {
        f->n_kv = (int64_t)i + 1; /* so that gguf_destroy frees what this entry allocated */
        if ((st = rd_kv(&r, &f->kv[i], (int64_t)i)))
            return st;
    }
    for (uint64_t i = 0; i < n_t; i++) {
        f->n_t = (int64_t)i + 1;
        if ((st = rd_tensor(&r, &f->t[i], (int64_t)i)))
            return st;
    }
    if ((st = build_index(f)) || (st = check_alignment(f)))
        return st;
    f->data_start = ((uint64_t)r.pos + f->alignment - 1) / f->alignment * f->alignment;
    return check_tensors(f);
}

static gm_status new_file(const char *name, gguf_file **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out || !((*out)->name = strdup(name))) {
        free(*out);
        *out = NULL;
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", name);
    }
    return GM_OK;
}

gm_status gguf_parse(const void *buf, size_t len, const char *name, gguf_file **out)
{
    if (!name)
        name = "(gguf)";
    if (!out || (!buf && len))
        return gm_fail(GM_ERR_INVALID_ARG, "%s: NULL argument to gguf_parse", name);
    *out = NULL;
    gguf_file *f;
    gm_status st = new_file(name, &f);
    if (st)
        return st;
    f->base = buf ? buf : (const void *)"";
    f->len = len;
    if ((st = parse_image(f))) {
        gguf_destroy(&f);
        return st;
    }
    *out = f;
    return GM_OK;
}

gm_status gguf_open(const char *path, gguf_file **out)
{
    if (!path || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gguf_open: NULL argument");
    *out = NULL;
    gguf_file *f;
    gm_status st = new_file(path, &f);
    if (st)
        return st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0) {
        st = gm_fail(GM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    } else if (fstat(fd, &sb) != 0) {
        st = gm_fail(GM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        st = gm_fail(GM_ERR_IO, "%s: not a regular file", path);
    } else if (sb.st_size > 0) {
        f->map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            st = gm_fail(GM_ERR_IO, "%s: mmap of %lld bytes failed: %s", path, (long long)sb.st_size, strerror(errno));
        } else {
            f->map_len = (size_t)sb.st_size;
        }
    }
    if (fd >= 0)
        close(fd);
    if (!st) {
        f->base = f->map ? f->map : (const void *)"";
        f->len = f->map_len;
        st = parse_image(f);
    }
    if (st) {
        gguf_destroy(&f);
        return st;
    }
    *out = f;
    return GM_OK;
}

void gguf_destroy(gguf_file **pf)
{
    if (!pf || !*pf)
        return;
    gguf_file *f = *pf;
    for (int64_t i = 0; i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].strs);
    }
    for (int64_t i = 0; i < f->n_t; i++)
        free(f->t[i].name);
    free(f->kv);
    free(f->t);
    free(f->kv_sorted);
    free(f->t_sorted);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->name);
    free(f);
    *pf = NULL;
}

/* ---------------------------------------------------------------- lookups */

const char *gguf_name(const gguf_file *f) { return f ? f->name : ""; }
uint32_t gguf_version(const gguf_file *f) { return f ? f->version : 0; }
uint64_t gguf_alignment(const gguf_file *f) { return f ? f->alignment : 0; }
int64_t gguf_kv_count(const gguf_file *f) { return f ? f->n_kv : 0; }
int64_t gguf_tensor_count(const gguf_file *f) { return f ? f->n_t : 0; }

const gguf_kv *gguf_kv_at(const gguf_file *f, int64_t i) { return f && i >= 0 && i < f->n_kv ? &f->kv[i] : NULL; }

const gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i)
{
    return f && i >= 0 && i < f->n_t ? &f->t[i] : NULL;
}

/* bsearch comparators: a key or name against an index entry */
static int cmp_key_kv(const void *k, const void *e) { return strcmp(k, (*(gguf_kv *const *)e)->key); }
static int cmp_key_t(const void *k, const void *e) { return strcmp(k, (*(gguf_tensor *const *)e)->name); }

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    if (!f || !key || !f->kv_sorted)
        return NULL;
    gguf_kv **p = bsearch(key, f->kv_sorted, (size_t)f->n_kv, sizeof *p, cmp_key_kv);
    return p ? *p : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (!f || !name || !f->t_sorted)
        return NULL;
    gguf_tensor **p = bsearch(name, f->t_sorted, (size_t)f->n_t, sizeof *p, cmp_key_t);
    return p ? *p : NULL;
}

int64_t gguf_kv_int_at(const gguf_kv *kv, uint64_t i)
{
    size_t sz = vt_size(kv->elem);
    if (!kv->data || !sz || i >= kv->n)
        return 0;
    uint64_t u = le(kv->data + i * sz, (int)sz);
    switch (kv->elem) {
    case GGUF_VT_I8: return (int8_t)u;
    case GGUF_VT_I16: return (int16_t)u;
    case GGUF_VT_I32: return (int32_t)u;
    case GGUF_VT_I64: return (int64_t)u;
    case GGUF_VT_U64: return u > INT64_MAX ? INT64_MAX : (int64_t)u;
    case GGUF_VT_F32:
    case GGUF_VT_F64: return (int64_t)gguf_kv_float_at(kv, i);
    default: return (int64_t)u;
    }
}

double gguf_kv_float_at(const gguf_kv *kv, uint64_t i)
{
    if (!kv->data || i >= kv->n)
        return 0;
    if (kv->elem == GGUF_VT_F32) {
        uint32_t u = (uint32_t)le(kv->data + i * 4, 4);
        float x;
        memcpy(&x, &u, 4);
        return x;
    }
    if (kv->elem == GGUF_VT_F64) {
        uint64_t u = le(kv->data + i * 8, 8);
        double x;
        memcpy(&x, &u, 8);
        return x;
    }
    return (double)gguf_kv_int_at(kv, i);
}

static int vt_is_int(gguf_vtype t)
{
    return t == GGUF_VT_U8 || t == GGUF_VT_I8 || t == GGUF_VT_U16 || t == GGUF_VT_I16 || t == GGUF_VT_U32 ||
           t == GGUF_VT_I32 || t == GGUF_VT_U64 || t == GGUF_VT_I64;
}

/* The scalar entry for key, or an error naming file and key. */
static gm_status get_scalar(const gguf_file *f, const char *key, const gguf_kv **out)
{
    if (!f || !key)
        return gm_fail(GM_ERR_INVALID_ARG, "gguf: NULL argument");
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return gm_fail(GM_ERR_NOT_FOUND, "%s: no metadata key '%s'", f->name, key);
    if (kv->type == GGUF_VT_ARRAY)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is an array, a single value was expected", f->name, key);
    *out = kv;
    return GM_OK;
}

gm_status gguf_get_int(const gguf_file *f, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    const gguf_kv *kv;
    gm_status st = get_scalar(f, key, &kv);
    if (st)
        return st;
    if (!vt_is_int(kv->type))
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is of type %s, an integer was expected", f->name, key,
                       vt_name(kv->type));
    int64_t v = gguf_kv_int_at(kv, 0); /* a u64 past INT64_MAX saturates, so it fails the range check */
    if (v < lo || v > hi)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' = %" PRId64 " is out of range [%" PRId64 ", %" PRId64 "]", f->name,
                       key, v, lo, hi);
    *out = v;
    return GM_OK;
}

gm_status gguf_get_float(const gguf_file *f, const char *key, double *out)
{
    const gguf_kv *kv;
    gm_status st = get_scalar(f, key, &kv);
    if (st)
        return st;
    if (kv->type != GGUF_VT_F32 && kv->type != GGUF_VT_F64 && !vt_is_int(kv->type))
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is of type %s, a number was expected", f->name, key,
                       vt_name(kv->type));
    *out = gguf_kv_float_at(kv, 0);
    return GM_OK;
}

gm_status gguf_get_bool(const gguf_file *f, const char *key, bool *out)
{
    const gguf_kv *kv;
    gm_status st = get_scalar(f, key, &kv);
    if (st)
        return st;
    if (kv->type != GGUF_VT_BOOL)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is of type %s, a bool was expected", f->name, key,
                       vt_name(kv->type));
    *out = kv->data[0] != 0;
    return GM_OK;
}

gm_status gguf_get_str(const gguf_file *f, const char *key, char *buf, size_t cap)
{
    const gguf_kv *kv;
    gm_status st = get_scalar(f, key, &kv);
    if (st)
        return st;
    if (kv->type != GGUF_VT_STRING)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is of type %s, a string was expected", f->name, key,
                       vt_name(kv->type));
    gguf_str s = kv->strs[0];
    if (!buf || s.len >= cap)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s': string of %" PRIu64 " bytes is too long (at most %zu)", f->name, key,
                       s.len, cap ? cap - 1 : 0);
    memcpy(buf, s.p, (size_t)s.len);
    buf[s.len] = '\0';
    return GM_OK;
}

gm_status gguf_get_array(const gguf_file *f, const char *key, gguf_vtype elem, const gguf_kv **out)
{
    if (!f || !key || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gguf: NULL argument");
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return gm_fail(GM_ERR_NOT_FOUND, "%s: no metadata key '%s'", f->name, key);
    if (kv->type != GGUF_VT_ARRAY)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is a single %s, an array was expected", f->name, key,
                       vt_name(kv->type));
    if (elem != GGUF_VT_COUNT && kv->elem != elem)
        return gm_fail(GM_ERR_FORMAT, "%s: key '%s' is an array of %s, an array of %s was expected", f->name, key,
                       vt_name(kv->elem), vt_name(elem));
    *out = kv;
    return GM_OK;
}
