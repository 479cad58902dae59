/* safetensors.c - parse, map and write safetensors files and checkpoint directories.
 *
 * Reading trusts nothing in the file: every length, offset and shape is checked
 * before it is used, and every failure names the file (and tensor). */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100ull << 20) /* the safetensors reference limit: 100 MB of JSON */
#define ST_MAX_INT 9007199254740992.0 /* 2^53: the largest integer a JSON double holds exactly */
#define ST_ALIGN 8

/* ---------------------------------------------------------------- header parsing */

/* A JSON number that is an exact integer in [0, 2^53] into *out. */
static int st_json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_INT) || d != floor(d))
        return 0;
    *out = (uint64_t)d;
    return 1;
}

static int st_cmp_name(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int st_cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* Fill t from one header entry `e` named t->name. */
static gm_status st_parse_entry(const cJSON *e, uint64_t data_len, const char *file, st_tensor *t)
{
    const char *nm = t->name;
    if (!cJSON_IsObject(e))
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", file, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': 'dtype' missing or not a string", file, nm);
    int d = gm_dtype_parse(dt->valuestring, strlen(dt->valuestring));
    if (d < 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor '%s': unknown dtype \"%.32s\"", file, nm, dt->valuestring);
    t->dtype = (gm_dtype)d;
    if (!cJSON_IsArray(sh))
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': 'shape' missing or not a list", file, nm);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': %d dimensions, at most %d supported", file, nm, nd,
                       ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0;
    int i = 0;
    for (const cJSON *c = sh->child; c; c = c->next, i++) {
        uint64_t dim;
        if (!st_json_u64(c, &dim))
            return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", file, nm, i);
        t->shape[i] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(numel, dim, &numel);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)gm_dtype_size(t->dtype), &nbytes);
    if (overflow || numel > (uint64_t)INT64_MAX)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': shape overflows 64-bit byte count", file, nm);
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' missing or not [begin, end]", file, nm);
    uint64_t b, en;
    if (!st_json_u64(off->child, &b) || !st_json_u64(off->child->next, &en))
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': data_offsets are not non-negative integers", file, nm);
    if (b > en)
        return gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': data_offsets begin %" PRIu64 " > end %" PRIu64, file, nm, b,
                       en);
    if (en > data_len)
        return gm_fail(GM_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] past the data section of %" PRIu64
                       " bytes",
                       file, nm, b, en, data_len);
    if (en - b != nbytes)
        return gm_fail(GM_ERR_FORMAT,
                       "%s: tensor '%s': shape and dtype %s need %" PRIu64 " bytes but data_offsets span %" PRIu64,
                       file, nm, gm_dtype_name(t->dtype), nbytes, en - b);
    t->offset = b;
    t->nbytes = nbytes;
    t->file = file;
    return GM_OK;
}

/* Duplicate names and overlapping byte ranges among n parsed tensors. */
static gm_status st_check_set(st_tensor *t, int32_t n, const char *file)
{
    if (n < 2)
        return GM_OK;
    st_tensor **p = malloc((size_t)n * sizeof *p);
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory checking %d tensors", file, n);
    for (int32_t i = 0; i < n; i++)
        p[i] = &t[i];
    gm_status st = GM_OK;
    qsort(p, (size_t)n, sizeof *p, st_cmp_name);
    for (int32_t i = 1; i < n && !st; i++)
        if (strcmp(p[i - 1]->name, p[i]->name) == 0)
            st = gm_fail(GM_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", file, p[i]->name);
    if (!st) {
        qsort(p, (size_t)n, sizeof *p, st_cmp_offset);
        const st_tensor *last = NULL; /* the non-empty tensor reaching furthest so far */
        for (int32_t i = 0; i < n && !st; i++) {
            if (p[i]->nbytes == 0)
                continue;
            if (last && p[i]->offset < last->offset + last->nbytes)
                st = gm_fail(GM_ERR_FORMAT, "%s: tensor '%s' [%" PRIu64 ", %" PRIu64 ") overlaps tensor '%s' [%" PRIu64
                             ", %" PRIu64 ")",
                             file, p[i]->name, p[i]->offset, p[i]->offset + p[i]->nbytes, last->name, last->offset,
                             last->offset + last->nbytes);
            if (!last || p[i]->offset + p[i]->nbytes > last->offset + last->nbytes)
                last = p[i];
        }
    }
    free(p);
    return st;
}

gm_status st_parse_header(const char *json, size_t json_len, uint64_t data_len, const char *file, st_tensor **out,
                          int32_t *n)
{
    if (!file)
        file = "(safetensors)";
    if (!out || !n || (!json && json_len))
        return gm_fail(GM_ERR_INVALID_ARG, "%s: NULL argument to st_parse_header", file);
    *out = NULL;
    *n = 0;
    if (json_len > ST_MAX_HEADER)
        return gm_fail(GM_ERR_FORMAT, "%s: header of %zu bytes exceeds the %llu byte limit", file, json_len,
                       ST_MAX_HEADER);
    /* cJSON gets a NUL-terminated copy so no code path can read past the header. */
    char *buf = malloc(json_len + 1);
    if (!buf)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory for a %zu byte header", file, json_len);
    if (json_len)
        memcpy(buf, json, json_len);
    buf[json_len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, json_len, &end, 0);
    gm_status st = GM_OK;
    st_tensor *t = NULL;
    int32_t cnt = 0;
    if (!root) {
        size_t at = (end && end >= buf && end <= buf + json_len) ? (size_t)(end - buf) : 0;
        st = gm_fail(GM_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu of %zu)", file, at, json_len);
        goto done;
    }
    for (const char *p = end; p && p < buf + json_len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = gm_fail(GM_ERR_FORMAT, "%s: trailing bytes after the header JSON at byte %zu", file,
                         (size_t)(p - buf));
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        st = gm_fail(GM_ERR_FORMAT, "%s: header is not a JSON object", file);
        goto done;
    }
    int total = cJSON_GetArraySize(root);
    t = calloc(total ? (size_t)total : 1, sizeof *t);
    if (!t) {
        st = gm_fail(GM_ERR_NOMEM, "%s: out of memory for %d tensors", file, total);
        goto done;
    }
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!e->string) {
            st = gm_fail(GM_ERR_FORMAT, "%s: header entry without a name", file);
            goto done;
        }
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        st_tensor *x = &t[cnt];
        x->name = strdup(e->string);
        if (!x->name) {
            st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", file);
            goto done;
        }
        cnt++;
        if ((st = st_parse_entry(e, data_len, file, x)))
            goto done;
    }
    st = st_check_set(t, cnt, file);
done:
    cJSON_Delete(root);
    free(buf);
    if (st) {
        st_tensors_free(t, cnt);
        return st;
    }
    *out = t;
    *n = cnt;
    return GM_OK;
}

void st_tensors_free(st_tensor *t, int32_t n)
{
    if (!t)
        return;
    for (int32_t i = 0; i < n; i++)
        free(t[i].name);
    free(t);
}

int64_t st_numel(const st_tensor *t)
{
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* ---------------------------------------------------------------- mapped files */

typedef struct st_file {
    char *path;
    void *map;     /* whole file, read-only; NULL when size is 0 */
    uint64_t size;
} st_file;

struct st_model {
    st_file *files;
    int32_t n_files;
    st_tensor *t;      /* [n] all tensors of all files */
    int32_t n;
    st_tensor **by_name; /* [n] sorted by name, for st_model_find */
    char *source;      /* in-memory model: its name; NULL for files */
    void **owned;      /* in-memory model: [n] tensor bytes it owns */
};

static char *st_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Map `path` read-only into f (f->path takes ownership of path, even on failure). */
static gm_status st_map(char *path, st_file *f)
{
    f->path = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gm_fail(GM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    gm_status st = GM_OK;
    if (fstat(fd, &sb) != 0) {
        st = gm_fail(GM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        st = gm_fail(GM_ERR_IO, "%s: not a regular file", path);
    } else {
        f->size = (uint64_t)sb.st_size;
        if (f->size > 0) {
            f->map = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (f->map == MAP_FAILED) {
                f->map = NULL;
                st = gm_fail(GM_ERR_IO, "%s: mmap of %" PRIu64 " bytes failed: %s", path, f->size, strerror(errno));
            }
        }
    }
    close(fd);
    return st;
}

static void st_unmap(st_file *f)
{
    if (f->map)
        munmap(f->map, (size_t)f->size);
    free(f->path);
    f->map = NULL;
    f->path = NULL;
}

/* Parse the header of a mapped file; tensors point into the map. */
static gm_status st_read_file(const st_file *f, st_tensor **out, int32_t *n)
{
    *out = NULL;
    *n = 0;
    if (f->size < 8)
        return gm_fail(GM_ERR_FORMAT, "%s: %" PRIu64 " bytes, shorter than the 8-byte header length", f->path,
                       f->size);
    const uint8_t *b = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | b[i];
    if (hlen > ST_MAX_HEADER)
        return gm_fail(GM_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %llu byte limit", f->path, hlen,
                       ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return gm_fail(GM_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the %" PRIu64 "-byte file",
                       f->path, hlen, f->size);
    uint64_t start = 8 + hlen;
    gm_status st = st_parse_header((const char *)b + 8, (size_t)hlen, f->size - start, f->path, out, n);
    if (st)
        return st;
    for (int32_t i = 0; i < *n; i++) {
        st_tensor *t = &(*out)[i];
        size_t al = gm_dtype_size(t->dtype);
        if ((start + t->offset) % al != 0) {
            st = gm_fail(GM_ERR_UNSUPPORTED, "%s: tensor '%s': data at file offset %" PRIu64 " is not %zu-byte aligned",
                         f->path, t->name, start + t->offset, al);
            st_tensors_free(*out, *n);
            *out = NULL;
            *n = 0;
            return st;
        }
        t->data = b + start + t->offset;
    }
    return GM_OK;
}

/* Append src[0..k) to m's tensor list (taking the names). */
static gm_status st_append(st_model *m, st_tensor *src, int32_t k)
{
    if (k == 0)
        return GM_OK;
    st_tensor *nt = realloc(m->t, ((size_t)m->n + (size_t)k) * sizeof *nt);
    if (!nt)
        return gm_fail(GM_ERR_NOMEM, "out of memory for %d tensors", m->n + k);
    m->t = nt;
    memcpy(m->t + m->n, src, (size_t)k * sizeof *src);
    m->n += k;
    return GM_OK;
}

/* Sort the name index; a name in two files is an error naming both. */
static gm_status st_index(st_model *m)
{
    m->by_name = malloc(((size_t)m->n + 1) * sizeof *m->by_name);
    if (!m->by_name)
        return gm_fail(GM_ERR_NOMEM, "out of memory indexing %d tensors", m->n);
    for (int32_t i = 0; i < m->n; i++)
        m->by_name[i] = &m->t[i];
    qsort(m->by_name, (size_t)m->n, sizeof *m->by_name, st_cmp_name);
    for (int32_t i = 1; i < m->n; i++)
        if (strcmp(m->by_name[i - 1]->name, m->by_name[i]->name) == 0)
            return gm_fail(GM_ERR_FORMAT, "tensor '%s' is in both %s and %s", m->by_name[i]->name,
                           m->by_name[i - 1]->file, m->by_name[i]->file);
    return GM_OK;
}

/* Map file `path` (owned) as file number m->n_files and add its tensors. */
static gm_status st_add_file(st_model *m, char *path)
{
    st_file *f = &m->files[m->n_files++];
    gm_status st = st_map(path, f);
    if (st)
        return st;
    st_tensor *t = NULL;
    int32_t k = 0;
    if ((st = st_read_file(f, &t, &k)))
        return st;
    if ((st = st_append(m, t, k))) {
        st_tensors_free(t, k);
        return st;
    }
    free(t); /* the names moved to m->t */
    return GM_OK;
}

gm_status st_model_open_file(const char *path, st_model **out)
{
    if (!out || !path)
        return gm_fail(GM_ERR_INVALID_ARG, "st_model_open_file: NULL argument");
    *out = NULL;
    st_model *m = calloc(1, sizeof *m);
    char *p = strdup(path);
    if (!m || !p || !(m->files = calloc(1, sizeof *m->files))) {
        free(p);
        st_model_destroy(&m);
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
    }
    gm_status st = st_add_file(m, p);
    if (!st)
        st = st_index(m);
    if (st) {
        st_model_destroy(&m);
        return st;
    }
    *out = m;
    return GM_OK;
}

/* Read a small whole file (the index JSON) into a malloc'd buffer. */
static gm_status st_slurp(const char *path, char **buf, size_t *len)
{
    st_file f = {0};
    char *p = strdup(path);
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
    gm_status st = st_map(p, &f);
    if (!st && f.size > ST_MAX_HEADER)
        st = gm_fail(GM_ERR_FORMAT, "%s: %" PRIu64 " bytes is too large for an index", path, f.size);
    if (!st) {
        *buf = malloc((size_t)f.size + 1);
        if (!*buf) {
            st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
        } else {
            if (f.size)
                memcpy(*buf, f.map, (size_t)f.size);
            (*buf)[f.size] = '\0';
            *len = (size_t)f.size;
        }
    }
    st_unmap(&f);
    return st;
}

/* A shard file name from the index: a plain name inside the directory. */
static int st_shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Open DIR/model.safetensors.index.json (at `ipath`) and every shard it lists once. */
static gm_status st_open_index(st_model *m, const char *dir, const char *ipath)
{
    char *txt = NULL;
    size_t len = 0;
    gm_status st = st_slurp(ipath, &txt, &len);
    if (st)
        return st;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!root)
        return gm_fail(GM_ERR_FORMAT, "%s: not valid JSON", ipath);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        st = gm_fail(GM_ERR_FORMAT, "%s: no \"weight_map\" object", ipath);
        goto done;
    }
    /* distinct shard names, in order of first appearance */
    int nw = cJSON_GetArraySize(wm);
    const char **shards = calloc(nw ? (size_t)nw : 1, sizeof *shards);
    int ns = 0;
    if (!shards) {
        st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", ipath);
        goto done;
    }
    for (const cJSON *e = wm->child; e && !st; e = e->next) {
        if (!cJSON_IsString(e) || !st_shard_name_ok(e->valuestring)) {
            st = gm_fail(GM_ERR_FORMAT, "%s: tensor '%s': shard must be a file name in the directory", ipath,
                         e->string ? e->string : "");
            break;
        }
        int seen = 0;
        for (int i = ns - 1; i >= 0 && !seen; i--) /* shards are few; most entries repeat the last one */
            seen = strcmp(shards[i], e->valuestring) == 0;
        if (!seen)
            shards[ns++] = e->valuestring;
    }
    if (!st && ns == 0)
        st = gm_fail(GM_ERR_FORMAT, "%s: \"weight_map\" lists no tensors", ipath);
    if (!st && !(m->files = calloc((size_t)ns, sizeof *m->files)))
        st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", ipath);
    for (int i = 0; i < ns && !st; i++) {
        char *p = st_join(dir, shards[i]);
        st = p ? st_add_file(m, p) : gm_fail(GM_ERR_NOMEM, "%s: out of memory", ipath);
    }
    free(shards);
    if (!st)
        st = st_index(m);
    /* every tensor the index lists must be in the shard it names */
    for (const cJSON *e = wm->child; e && !st; e = e->next) {
        const st_tensor *t = st_model_find(m, e->string);
        char *want = st_join(dir, e->valuestring);
        if (!want)
            st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", ipath);
        else if (!t)
            st = gm_fail(GM_ERR_NOT_FOUND, "%s: tensor '%s' is listed in %s but absent from that shard", want,
                         e->string, ipath);
        else if (strcmp(t->file, want) != 0)
            st = gm_fail(GM_ERR_NOT_FOUND, "%s: tensor '%s' is listed in %s but absent from that shard (it is in %s)",
                         want, e->string, ipath, t->file);
        free(want);
    }
done:
    cJSON_Delete(root);
    return st;
}

static int st_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

gm_status st_model_open(const char *dir, st_model **out)
{
    if (!out || !dir)
        return gm_fail(GM_ERR_INVALID_ARG, "st_model_open: NULL argument");
    *out = NULL;
    char *ipath = st_join(dir, "model.safetensors.index.json");
    char *spath = st_join(dir, "model.safetensors");
    st_model *m = calloc(1, sizeof *m);
    gm_status st = GM_OK;
    if (!ipath || !spath || !m) {
        st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", dir);
    } else if (st_exists(ipath)) {
        st = st_open_index(m, dir, ipath);
    } else if (st_exists(spath)) {
        m->files = calloc(1, sizeof *m->files);
        if (!m->files) {
            st = gm_fail(GM_ERR_NOMEM, "%s: out of memory", spath);
        } else {
            st = st_add_file(m, spath);
            spath = NULL; /* owned by m now */
            if (!st)
                st = st_index(m);
        }
    } else {
        st = gm_fail(GM_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json in this directory", dir);
    }
    free(ipath);
    free(spath);
    if (st) {
        st_model_destroy(&m);
        return st;
    }
    *out = m;
    return GM_OK;
}

st_model *st_model_new_mem(const char *source)
{
    st_model *m = calloc(1, sizeof *m);
    if (m && !(m->source = strdup(source ? source : "(memory)"))) {
        free(m);
        m = NULL;
    }
    if (!m)
        gm_fail(GM_ERR_NOMEM, "st_model_new_mem: out of memory");
    return m;
}

gm_status st_model_add_owned(st_model *m, const char *name, gm_dtype dt, int32_t ndim, const int64_t *shape,
                             void *data)
{
    gm_status st = GM_OK;
    uint64_t numel = 1;
    int of = 0;
    if (!m || !m->source || m->by_name || !name || (unsigned)dt >= GM_DT_COUNT || ndim < 0 || ndim > ST_MAX_DIMS ||
        (ndim && !shape)) {
        st = gm_fail(GM_ERR_INVALID_ARG, "st_model_add_owned: bad argument for tensor '%s'", name ? name : "(null)");
        goto fail;
    }
    for (int32_t i = 0; i < ndim; i++)
        of |= shape[i] < 0 || __builtin_mul_overflow(numel, (uint64_t)shape[i], &numel);
    if (of || numel > (uint64_t)INT64_MAX / 8 || (numel && !data)) {
        st = gm_fail(GM_ERR_INVALID_ARG, "%s: tensor '%s': bad shape or no data", m->source, name);
        goto fail;
    }
    st_tensor t = {0};
    t.dtype = dt;
    t.ndim = ndim;
    for (int32_t i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    t.nbytes = numel * gm_dtype_size(dt);
    t.data = data;
    t.file = m->source;
    void **no = realloc(m->owned, ((size_t)m->n + 1) * sizeof *no);
    if (no)
        m->owned = no;
    if (!no || !(t.name = strdup(name)) || (st = st_append(m, &t, 1))) {
        free(t.name);
        st = st ? st : gm_fail(GM_ERR_NOMEM, "%s: out of memory adding tensor '%s'", m->source, name);
        goto fail;
    }
    m->owned[m->n - 1] = data;
    return GM_OK;
fail:
    free(data);
    return st;
}

gm_status st_model_seal(st_model *m)
{
    if (!m || !m->source || m->by_name)
        return gm_fail(GM_ERR_INVALID_ARG, "st_model_seal: not an unsealed in-memory model");
    gm_status st = st_index(m);
    if (st) {
        free(m->by_name);
        m->by_name = NULL;
    }
    return st;
}

void st_model_destroy(st_model **pm)
{
    if (!pm || !*pm)
        return;
    st_model *m = *pm;
    if (m->owned)
        for (int32_t i = 0; i < m->n; i++)
            free(m->owned[i]);
    free(m->owned);
    free(m->source);
    st_tensors_free(m->t, m->n);
    free(m->by_name);
    for (int32_t i = 0; i < m->n_files; i++)
        st_unmap(&m->files[i]);
    free(m->files);
    free(m);
    *pm = NULL;
}

const st_tensor *st_model_find(const st_model *m, const char *name)
{
    if (!m || !name || !m->by_name)
        return NULL;
    size_t lo = 0, hi = (size_t)m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->by_name[mid]->name, name);
        if (c == 0)
            return m->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int32_t st_model_count(const st_model *m) { return m ? m->n : 0; }

const st_tensor *st_model_at(const st_model *m, int32_t i)
{
    return (m && i >= 0 && i < m->n) ? &m->t[i] : NULL;
}

/* ---------------------------------------------------------------- writer */

typedef struct st_wtensor {
    char *name;
    gm_dtype dtype;
    int32_t ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset; /* aligned to ST_ALIGN in the data section */
    const void *data; /* borrowed, or NULL: produced by fill */
} st_wtensor;

struct st_writer {
    st_wtensor *t;
    int32_t n, cap;
    char **meta; /* [n_meta * 2] key, value */
    int32_t n_meta;
    uint64_t bytes; /* end of the data section so far (with alignment padding) */
};

st_writer *st_writer_new(void)
{
    st_writer *w = calloc(1, sizeof *w);
    if (!w)
        gm_fail(GM_ERR_NOMEM, "st_writer_new: out of memory");
    return w;
}

void st_writer_destroy(st_writer **pw)
{
    if (!pw || !*pw)
        return;
    st_writer *w = *pw;
    for (int32_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    for (int32_t i = 0; i < 2 * w->n_meta; i++)
        free(w->meta[i]);
    free(w->meta);
    free(w);
    *pw = NULL;
}

int32_t st_writer_add(st_writer *w, const char *name, gm_dtype dt, int32_t ndim, const int64_t *shape,
                      const void *data)
{
    if (!w || !name || !name[0] || strcmp(name, "__metadata__") == 0) {
        gm_fail(GM_ERR_INVALID_ARG, "st_writer_add: bad tensor name '%s'", name ? name : "(null)");
        return -1;
    }
    if ((unsigned)dt >= GM_DT_COUNT || ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape)) {
        gm_fail(GM_ERR_INVALID_ARG, "st_writer_add: tensor '%s': bad dtype %d or ndim %d", name, (int)dt, ndim);
        return -1;
    }
    uint64_t numel = 1;
    int of = 0;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (double)shape[i] > ST_MAX_INT) {
            gm_fail(GM_ERR_INVALID_ARG, "st_writer_add: tensor '%s': shape[%d] = %lld", name, i, (long long)shape[i]);
            return -1;
        }
        of |= __builtin_mul_overflow(numel, (uint64_t)shape[i], &numel);
    }
    uint64_t nbytes = 0, off = (w->bytes + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN, end = 0;
    of |= __builtin_mul_overflow(numel, (uint64_t)gm_dtype_size(dt), &nbytes);
    of |= __builtin_add_overflow(off, nbytes, &end);
    if (of || (double)end > ST_MAX_INT || nbytes > SIZE_MAX / 2) {
        gm_fail(GM_ERR_INVALID_ARG, "st_writer_add: tensor '%s': too large", name);
        return -1;
    }
    for (int32_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) {
            gm_fail(GM_ERR_INVALID_ARG, "st_writer_add: tensor '%s' added twice", name);
            return -1;
        }
    if (w->n == w->cap) {
        int32_t nc = w->cap ? w->cap * 2 : 64;
        st_wtensor *nt = realloc(w->t, (size_t)nc * sizeof *nt);
        if (!nt) {
            gm_fail(GM_ERR_NOMEM, "st_writer_add: out of memory");
            return -1;
        }
        w->t = nt;
        w->cap = nc;
    }
    st_wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) {
        gm_fail(GM_ERR_NOMEM, "st_writer_add: out of memory");
        return -1;
    }
    t->dtype = dt;
    t->ndim = ndim;
    for (int32_t i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->nbytes = nbytes;
    t->offset = off;
    t->data = data;
    w->bytes = end;
    return w->n++;
}

gm_status st_writer_meta(st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value)
        return gm_fail(GM_ERR_INVALID_ARG, "st_writer_meta: NULL argument");
    char **nm = realloc(w->meta, ((size_t)w->n_meta + 1) * 2 * sizeof *nm);
    if (!nm)
        return gm_fail(GM_ERR_NOMEM, "st_writer_meta: out of memory");
    w->meta = nm;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return gm_fail(GM_ERR_NOMEM, "st_writer_meta: out of memory");
    }
    w->meta[2 * w->n_meta] = k;
    w->meta[2 * w->n_meta + 1] = v;
    w->n_meta++;
    return GM_OK;
}

uint64_t st_writer_bytes(const st_writer *w) { return w ? w->bytes : 0; }

/* A growable text buffer for the header. */
typedef struct st_buf {
    char *p;
    size_t len, cap;
    int oom;
} st_buf;

static void st_buf_put(st_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (b->len + n + 1 > nc)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void st_buf_str(st_buf *b, const char *s) { st_buf_put(b, s, strlen(s)); }

/* A JSON string literal for s. */
static void st_buf_json(st_buf *b, const char *s)
{
    st_buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*c;
            st_buf_put(b, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            st_buf_put(b, esc, 6);
        } else {
            st_buf_put(b, (const char *)c, 1);
        }
    }
    st_buf_put(b, "\"", 1);
}

/* The JSON header, space-padded so that 8 + its length is a multiple of 8. */
static gm_status st_header(const st_writer *w, st_buf *b)
{
    char num[64];
    st_buf_str(b, "{");
    if (w->n_meta) {
        st_buf_str(b, "\"__metadata__\":{");
        for (int32_t i = 0; i < w->n_meta; i++) {
            if (i)
                st_buf_str(b, ",");
            st_buf_json(b, w->meta[2 * i]);
            st_buf_str(b, ":");
            st_buf_json(b, w->meta[2 * i + 1]);
        }
        st_buf_str(b, "}");
    }
    for (int32_t i = 0; i < w->n; i++) {
        const st_wtensor *t = &w->t[i];
        if (i || w->n_meta)
            st_buf_str(b, ",");
        st_buf_json(b, t->name);
        st_buf_str(b, ":{\"dtype\":\"");
        st_buf_str(b, gm_dtype_name(t->dtype));
        st_buf_str(b, "\",\"shape\":[");
        for (int32_t d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            st_buf_str(b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset, t->offset + t->nbytes);
        st_buf_str(b, num);
    }
    st_buf_str(b, "}");
    while (!b->oom && b->len % ST_ALIGN != 0)
        st_buf_str(b, " ");
    return b->oom ? gm_fail(GM_ERR_NOMEM, "out of memory building a safetensors header") : GM_OK;
}

static gm_status st_put(FILE *f, const void *p, size_t n, const char *path)
{
    if (n && fwrite(p, 1, n, f) != n)
        return gm_fail(GM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return GM_OK;
}

gm_status st_writer_write(st_writer *w, const char *path, st_fill_fn fill, void *ctx)
{
    if (!w || !path)
        return gm_fail(GM_ERR_INVALID_ARG, "st_writer_write: NULL argument");
    for (int32_t i = 0; i < w->n; i++)
        if (!w->t[i].data && w->t[i].nbytes && !fill)
            return gm_fail(GM_ERR_INVALID_ARG, "%s: tensor '%s' has no data and no fill callback", path,
                           w->t[i].name);
    st_buf h = {0};
    gm_status st = st_header(w, &h);
    FILE *f = NULL;
    void *tmp = NULL;
    if (st)
        goto done;
    f = fopen(path, "wb");
    if (!f) {
        st = gm_fail(GM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto done;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    if ((st = st_put(f, len8, 8, path)) || (st = st_put(f, h.p, h.len, path)))
        goto done;
    static const uint8_t zeros[ST_ALIGN];
    uint64_t pos = 0;
    for (int32_t i = 0; i < w->n && !st; i++) {
        const st_wtensor *t = &w->t[i];
        if ((st = st_put(f, zeros, (size_t)(t->offset - pos), path)))
            break;
        pos = t->offset + t->nbytes;
        if (t->nbytes == 0)
            continue;
        const void *src = t->data;
        if (!src) {
            free(tmp);
            tmp = malloc((size_t)t->nbytes);
            if (!tmp) {
                st = gm_fail(GM_ERR_NOMEM, "%s: tensor '%s': out of memory for %" PRIu64 " bytes", path, t->name,
                             t->nbytes);
                break;
            }
            if ((st = fill(ctx, i, tmp, t->nbytes)))
                break;
            src = tmp;
        }
        st = st_put(f, src, (size_t)t->nbytes, path);
        if (tmp) {
            free(tmp);
            tmp = NULL;
        }
    }
done:
    if (f && fclose(f) != 0 && !st)
        st = gm_fail(GM_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    if (st && f)
        remove(path);
    free(tmp);
    free(h.p);
    return st;
}
